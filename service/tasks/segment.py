"""POST /segment: a class per pixel (unet)."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.responses import Response

from core.card import ModelCard

from .. import render
from ..schema import INT, STR, arr
from .base import FORMAT, Options, Outputs, Task


class Segment(Task):
    """Semantic segmentation: a class per pixel."""

    name = "segment"
    accepted = ("model", "format")
    request_schema = {"format": FORMAT}
    answer_schema = {
        "classes": arr(STR),
        "mask": arr(arr(INT)),
        "pixel_counts": {"type": "object", "additionalProperties": INT},
    }

    def answer(
        self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options
    ) -> dict[str, Any] | Response:
        assert pixels is not None
        mask = outputs["logits"].argmax(axis=0)  # (classes, H, W) logits -> (H, W) class indices
        if options["fmt"] == "png":  # the input and its mask, side by side
            return Response(
                render.side_by_side(render.as_rgb(pixels), render.mask_colours(mask)), media_type="image/png"
            )
        counts = np.bincount(mask.ravel(), minlength=len(card.labels))
        return {
            "classes": list(card.labels),
            "mask": mask.tolist(),  # (H, W) indices into "classes"
            "pixel_counts": {label: int(n) for label, n in zip(card.labels, counts)},
        }
