"""POST /generate: samples of a generative model (vae through its decoder graph, dcgan)."""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from starlette.responses import Response

from core.card import ModelCard
from core.images import MAX_SEED, latent_noise

from .. import render
from ..errors import int_field
from ..schema import ANY_ARRAY, INT
from .base import FORMAT, Options, Outputs, Task


class Samples(Task):
    """Samples of a generative model: the service draws n latent codes from a generator seeded with
    `seed` (core.images.latent_noise, as training does), so a seed always gives the same images."""

    name = "generate"
    accepted = ("model", "n", "seed", "format")
    takes_image = False
    example = '{"model": "dcgan", "n": 16, "seed": 0}'
    request_schema = {
        "n": {**INT, "minimum": 1, "description": "how many samples (default 1, at most the model's batch)"},
        "seed": {**INT, "minimum": 0, "maximum": MAX_SEED, "description": "the same seed, the same images"},
        "format": FORMAT,
    }
    answer_schema = {"seed": INT, "n": INT, "images": ANY_ARRAY}

    def options(self, card: ModelCard, fields: dict[str, Any]) -> Options:
        options = super().options(card, fields)
        options["n"] = int_field(fields, "n", 1, card.max_batch_size, 1)
        options["seed"] = int_field(fields, "seed", 0, MAX_SEED, secrets.randbelow(MAX_SEED + 1))  # returned, to replay
        return options

    def model_input(self, card: ModelCard, pixels: np.ndarray | None, options: Options) -> np.ndarray:
        return latent_noise(options["n"], card.row_shape[0], options["seed"])

    def answer(
        self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options
    ) -> dict[str, Any] | Response:
        images = np.clip(outputs["image"], 0, 1)  # (n, C, H, W)
        if options["fmt"] == "png":
            return Response(render.grid(images), media_type="image/png", headers={"X-Seed": str(options["seed"])})
        shown = images[:, 0] if images.shape[1] == 1 else images
        return {"seed": options["seed"], "n": options["n"], "images": np.round(shown.astype(np.float64), 4).tolist()}
