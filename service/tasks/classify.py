"""POST /classify: image classification (mlp, lenet, resnet)."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.card import Calibration, ModelCard
from core.images import roughness

from .. import metrics
from ..errors import check_fields, int_field
from ..schema import BOOL, INT, NUM, STR, arr, obj
from .base import Options, Outputs, Task, softmax


class Classify(Task):
    """Image classification: label, calibrated probabilities, top-k and an out-of-distribution flag.

    Probabilities are softmax(logits / T) with the temperature of the card's calibration section
    (T = 1 for a card without one); the v2 routes keep serving the graph's raw logits. Where the
    card has an out-of-distribution rule, the answer says whether the input is flagged and gives
    both scores the rule reads; flagged answers are counted per model (a drift signal)."""

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
        "out_of_distribution": {
            **BOOL,
            "description": "whether the input looks unlike the model's training data (the card's "
            "calibration.ood rule: its logits' score, its pixels' score or their roughness beyond what was fitted on "
            "validation); present when the card has a calibration section",
        },
        "ood_score": {
            **NUM,
            "description": "the logits' out-of-distribution score named by the card's calibration.ood.score "
            "(energy: flagged above the threshold; max_softmax: below)",
        },
        "pixel_score": {
            **NUM,
            "description": "mean squared z-score of the input's pixels against the training inputs "
            "(calibration.ood.pixels; flagged above its threshold)",
        },
        "roughness": {
            **NUM,
            "description": "mean squared difference of the input's neighbouring pixels (calibration.ood.roughness; "
            "flagged outside the range of the validation inputs: noise is rougher, a blank canvas smoother); "
            "present when the card's rule has a range",
        },
    }
    optional_answer = ("out_of_distribution", "ood_score", "pixel_score", "roughness")

    def options(self, card: ModelCard, fields: dict[str, Any]) -> Options:
        check_fields(fields, self.accepted)
        n = len(card.labels)
        return {"top_k": int_field(fields, "top_k", 1, n, min(3, n))}

    def answer(self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options) -> dict[str, Any]:
        probs = softmax(outputs["logits"] / card.temperature)
        order = np.argsort(-probs)[: options["top_k"]]
        best = int(order[0])
        answer: dict[str, Any] = {
            "label": card.labels[best],
            "class_index": best,
            "probabilities": [round(float(p), 6) for p in probs],
            "top_k": [
                {"label": card.labels[i], "class_index": int(i), "probability": round(float(probs[i]), 6)}
                for i in order
            ],
        }
        cal = card.calibration
        if cal is not None:
            score = cal.score(outputs["logits"].tolist())
            pixel_score = _pixel_score(cal, pixels) if pixels is not None else 0.0
            rough = roughness(pixels.reshape(card.row_shape)) if pixels is not None and cal.roughness_range else None
            flagged = cal.flags(score, pixel_score, rough)
            # The series exists from the model's first answer: a share of 0 flagged is a reading too.
            counter = metrics.flagged_answers().labels(model=card.name)
            if flagged:
                counter.inc()
            answer.update(out_of_distribution=flagged, ood_score=round(score, 6), pixel_score=round(pixel_score, 6))
            if rough is not None:
                answer["roughness"] = round(rough, 6)
        return answer


# id(card's calibration) -> (that calibration, mean, scale); holding it keeps its id from being reused.
_PIXEL_MODELS: dict[int, tuple[Calibration, np.ndarray, np.ndarray]] = {}


def _pixel_score(cal: Calibration, pixels: np.ndarray) -> float:
    """Calibration.pixel_score with numpy: the card's per-pixel mean and scale as arrays, built
    once per card (a few microseconds per answer instead of a Python loop over every pixel)."""
    if not cal.pixel_mean:
        return 0.0
    model = _PIXEL_MODELS.get(id(cal))
    if model is None or model[0] is not cal:
        model = cal, np.asarray(cal.pixel_mean, np.float32), np.asarray(cal.pixel_scale, np.float32)
        if len(_PIXEL_MODELS) > 256:  # cards come and go with reloads
            _PIXEL_MODELS.clear()
        _PIXEL_MODELS[id(cal)] = model
    z = (pixels.reshape(-1).astype(np.float32, copy=False) - model[1]) / model[2]
    return float(np.dot(z, z)) / z.size
