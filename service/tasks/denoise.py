"""POST /denoise: the image with its noise removed (autoencoder); also the image-to-image answer
that /reconstruct shares."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.responses import Response

from core.card import ModelCard

from .. import render
from ..schema import ANY_ARRAY
from .base import FORMAT, Options, Outputs, Task


def image_answer(pixels: np.ndarray, image: np.ndarray, key: str, fmt: str) -> dict[str, Any] | Response:
    """An image-to-image answer: input and output side by side as a PNG, or the output as an
    (H, W) (one channel) or (C, H, W) array in [0, 1]."""
    image = np.clip(image, 0, 1)  # (C, H, W)
    if fmt == "png":
        return Response(render.side_by_side(render.as_rgb(pixels), render.as_rgb(image)), media_type="image/png")
    image = image[0] if len(image) == 1 else image
    return {key: np.round(image.astype(np.float64), 4).tolist()}


class Denoise(Task):
    """The image with its noise removed (same shape as the input)."""

    name = "denoise"
    accepted = ("model", "format")
    request_schema = {"format": FORMAT}
    answer_schema = {"denoised": ANY_ARRAY}

    def answer(
        self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options
    ) -> dict[str, Any] | Response:
        assert pixels is not None
        return image_answer(pixels, outputs["denoised"], "denoised", options["fmt"])
