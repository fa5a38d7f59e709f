"""The shape every serving task has: the fields it accepts, its options, its model input and its
answer. A task's route reads the request, lets the catalog pick the graph, runs the model through
the service's batcher and puts the answer in the envelope (answers.task_answer); a ClientError
raised anywhere on the way becomes the client's answer in app.py, in one place."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from core.card import ModelCard

from ..answers import task_answer
from ..catalog import Catalog
from ..errors import check_fields, choice_field
from ..inputs import json_fields, read_image_request
from ..scheduler import TextScheduler
from ..schema import ANY_ARRAY
from ..settings import Settings

Options = dict[str, Any]
Outputs = dict[str, np.ndarray]  # output name -> array

FORMATS = ("json", "png")
FORMAT = {"type": "string", "enum": list(FORMATS), "description": "json (default) or png (a rendered picture)"}
IMAGE_FIELD = {
    "description": "pixels in [0, 1], nested arrays (H, W) or (C, H, W) of the model's input shape",
    **ANY_ARRAY,
}


class Server(Protocol):
    """What a task needs of the service (service.EE559)."""

    catalog: Catalog
    settings: Settings
    text: dict[str, TextScheduler]  # served text version (card.tag) -> its scheduler in this worker

    async def infer(self, card: ModelCard, x: np.ndarray) -> tuple[list[np.ndarray], str]: ...


class Task:
    """A serving task with one row per request: an image in (takes_image) or a JSON request that
    says what to make (e.g. samples), the model's outputs to an answer."""

    name: ClassVar[str]
    accepted: ClassVar[tuple[str, ...]] = ("model",)  # request fields, besides 'image'
    required: ClassVar[tuple[str, ...]] = ()  # required fields besides 'model' (and 'image')
    request_schema: ClassVar[dict[str, Any]] = {}  # JSON schema of each field but 'model' and 'image'
    answer_schema: ClassVar[dict[str, Any]] = {}  # JSON schema of the answer's fields (in the envelope)
    optional_answer: ClassVar[tuple[str, ...]] = ()  # answer fields present only with some options
    takes_image: ClassVar[bool] = True
    example: ClassVar[str] = ""  # a JSON request, for the 415 of a task without an image

    @property
    def summary(self) -> str:
        return (type(self).__doc__ or self.name).strip().splitlines()[0]

    @property
    def renders_png(self) -> bool:
        return "format" in self.accepted

    def options(self, card: ModelCard, fields: dict[str, Any]) -> Options:
        """The request's fields, checked against what the card serves."""
        check_fields(fields, self.accepted, image=self.takes_image)
        return {"fmt": choice_field(fields, "format", FORMATS, "json")} if self.renders_png else {}

    def model_input(self, card: ModelCard, pixels: np.ndarray | None, options: Options) -> np.ndarray:
        """The batch the graph runs: the image as one row by default."""
        assert pixels is not None
        return pixels[None]

    def answer(
        self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options
    ) -> dict[str, Any] | Response:
        """The answer's fields (the envelope is added by the route), or a picture."""
        raise NotImplementedError

    async def handle(self, server: Server, request: Request) -> Response:
        pixels: np.ndarray | None = None
        if self.takes_image:
            req = await read_image_request(request, server.settings)
            card = server.catalog.for_task(
                req.fields.get("model"), self.name, req.fields.pop("version", None), req.fields.pop("precision", None)
            )
            options = self.options(card, req.fields)
            pixels = await req.decode(card.row_shape, server.settings)
        else:
            fields = await json_fields(request, server.settings, self.name, self.example)
            card = server.catalog.for_task(
                fields.get("model"), self.name, fields.pop("version", None), fields.pop("precision", None)
            )
            options = self.options(card, fields)
        outputs, provider = await server.infer(card, self.model_input(card, pixels, options))
        rows = outputs if not self.takes_image else [o[0] for o in outputs]
        return task_answer(card, provider, self.answer(card, dict(zip(card.output_names, rows)), pixels, options))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
