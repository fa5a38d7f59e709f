"""POST /reconstruct: a VAE's reconstruction of the image, with the posterior (vae)."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.responses import Response

from core.card import ModelCard

from ..schema import ANY_ARRAY, NUM, arr
from .base import FORMAT, Options, Outputs, Task
from .denoise import image_answer


class Reconstruct(Task):
    """A VAE's reconstruction of the image (decoded from the posterior mean), with the posterior."""

    name = "reconstruct"
    accepted = ("model", "format")
    request_schema = {"format": FORMAT}
    answer_schema = {"reconstruction": ANY_ARRAY, "mean": arr(NUM), "logvar": arr(NUM)}

    def answer(
        self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options
    ) -> dict[str, Any] | Response:
        assert pixels is not None
        body = image_answer(pixels, outputs["reconstruction"], "reconstruction", options["fmt"])
        if isinstance(body, Response):
            return body
        return {**body, **{k: outputs[k].astype(np.float64).round(6).tolist() for k in ("mean", "logvar")}}
