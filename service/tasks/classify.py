"""POST /classify: image classification (mlp, lenet, resnet)."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.card import ModelCard

from ..errors import check_fields, int_field
from ..schema import INT, NUM, STR, arr, obj
from .base import Options, Outputs, Task, softmax


class Classify(Task):
    """Image classification: label, probabilities and top-k."""

    name = "classify"
    accepted = ("model", "top_k")
    request_schema = {"top_k": {**INT, "minimum": 1, "description": "how many of the best classes to list (default 3)"}}
    answer_schema = {
        "label": STR,
        "class_index": INT,
        "probabilities": arr(NUM),
        "top_k": arr(
            obj({"label": STR, "class_index": INT, "probability": NUM}, ("label", "class_index", "probability"))
        ),
    }

    def options(self, card: ModelCard, fields: dict[str, Any]) -> Options:
        check_fields(fields, self.accepted)
        n = len(card.labels)
        return {"top_k": int_field(fields, "top_k", 1, n, min(3, n))}

    def answer(self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options) -> dict[str, Any]:
        probs = softmax(outputs["logits"])
        order = np.argsort(-probs)[: options["top_k"]]
        best = int(order[0])
        return {
            "label": card.labels[best],
            "class_index": best,
            "probabilities": [round(float(p), 6) for p in probs],
            "top_k": [
                {"label": card.labels[i], "class_index": int(i), "probability": round(float(probs[i]), 6)}
                for i in order
            ],
        }
