"""POST /explain: the class activation map of the predicted class (resnet)."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.responses import Response

from core.card import ModelCard

from .. import render
from ..schema import INT, NUM, STR, arr
from .base import FORMAT, Options, Outputs, Task, softmax


class Explain(Task):
    """Class activation map of the predicted class: where in the image the evidence was."""

    name = "explain"
    accepted = ("model", "format")
    request_schema = {"format": FORMAT}
    answer_schema = {"label": STR, "class_index": INT, "probability": NUM, "heatmap": arr(arr(NUM))}

    def answer(
        self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options
    ) -> dict[str, Any] | Response:
        assert pixels is not None
        probs, cam = softmax(outputs["logits"]), outputs["cam"]
        best = int(probs.argmax())
        if options["fmt"] == "png":  # the heat map over the input, side by side with it
            image = render.as_rgb(pixels)
            return Response(
                render.side_by_side(image, 0.5 * image + 0.5 * render.heat_colours(cam)),
                media_type="image/png",
                headers={"X-Label": card.labels[best], "X-Probability": f"{probs[best]:.6f}"},
            )
        return {
            "label": card.labels[best],
            "class_index": best,
            "probability": round(float(probs[best]), 6),
            "heatmap": np.round(cam.astype(np.float64), 4).tolist(),  # (H, W) in [0, 1], aligned with the input
        }
