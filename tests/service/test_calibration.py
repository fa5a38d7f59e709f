"""/classify's answer from the card's calibration (service/tasks/classify.py), called directly: the
temperature divides the logits, the out-of-distribution rule flags and counts, a card without the
section answers as before (T = 1, no flag); the answer schema documents the new fields."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.card import Calibration, ModelCard, TensorSpec
from service.openapi import _answer
from service.tasks.classify import Classify


def card(calibration: Calibration | None) -> ModelCard:
    return ModelCard(
        name="tiny",
        version="0" * 16,
        tasks=("classify",),
        file="model.onnx",
        sha256="0" * 64,
        opset=18,
        inputs=(TensorSpec("image", ("batch_size", 1, 1, 2)),),
        outputs=(TensorSpec("logits", ("batch_size", 3)),),
        max_batch_size=8,
        labels=("a", "b", "c"),
        calibration=calibration,
    )


RULE = Calibration(2.0, "max_softmax", 0.5, (0.0, 0.0), (1.0, 1.0), 9.0)
LOGITS = np.array([2.0, 0.0, -2.0], dtype=np.float32)


def answer(c: ModelCard, logits: np.ndarray, pixels: np.ndarray) -> dict:
    task = Classify()
    return task.answer(c, {"logits": logits}, pixels, task.options(c, {}))


def test_without_calibration_the_answer_is_as_before():
    body = answer(card(None), LOGITS, np.zeros((1, 1, 2), np.float32))
    e = np.exp(LOGITS - LOGITS.max())
    assert body["probabilities"] == pytest.approx(e / e.sum(), abs=1e-6)
    assert not {"out_of_distribution", "ood_score", "pixel_score"} & body.keys()


def test_temperature_softens_and_the_rule_flags():
    body = answer(card(RULE), LOGITS, np.zeros((1, 1, 2), np.float32))
    z = LOGITS / 2.0
    e = np.exp(z - z.max())
    assert body["probabilities"] == pytest.approx(e / e.sum(), abs=1e-6)
    assert body["class_index"] == 0 and body["top_k"][0]["probability"] == pytest.approx(e[0] / e.sum(), abs=1e-6)
    assert body["out_of_distribution"] is False and body["ood_score"] == pytest.approx(e[0] / e.sum(), abs=1e-6)
    flat = answer(card(RULE), np.zeros(3, np.float32), np.zeros((1, 1, 2), np.float32))
    assert flat["out_of_distribution"] is True  # max softmax 1/3 < 0.5
    odd = answer(card(RULE), LOGITS, np.full((1, 1, 2), 4.0, np.float32))  # pixel score 16 > 9
    assert odd["out_of_distribution"] is True and odd["pixel_score"] == pytest.approx(16.0)
    assert "roughness" not in odd  # the rule has no roughness range


def test_roughness_outside_the_cards_range_flags():
    rule = replace(RULE, roughness_range=(0.01, 0.5))
    smooth = answer(card(rule), LOGITS, np.zeros((1, 1, 2), np.float32))  # blank: roughness 0
    assert smooth["out_of_distribution"] is True and smooth["roughness"] == 0.0
    ordinary = answer(card(rule), LOGITS, np.array([[[0.0, 0.3]]], np.float32))  # 0.09
    assert ordinary["out_of_distribution"] is False and ordinary["roughness"] == pytest.approx(0.09)
    rough = answer(card(rule), LOGITS, np.array([[[0.0, 1.0]]], np.float32))  # 1.0
    assert rough["out_of_distribution"] is True and rough["roughness"] == pytest.approx(1.0)


def test_answer_schema_documents_the_flag_as_optional():
    schema = _answer(Classify())["200"]["content"]["application/json"]["schema"]
    for f in ("out_of_distribution", "ood_score", "pixel_score", "roughness"):
        assert f in schema["properties"] and f not in schema["required"]
        assert schema["properties"][f]["description"]
    assert schema["properties"]["out_of_distribution"]["type"] == "boolean"


def test_the_served_pixel_score_equals_the_cards_own():
    """service/tasks/classify.py computes the card's pixel score with numpy, once per card."""
    import numpy as np

    from core.card import Calibration
    from service.tasks.classify import _pixel_score

    rng = np.random.default_rng(0)
    mean, scale = rng.random(784), rng.random(784) + 0.1
    cal = Calibration(1.0, "energy", 0.0, tuple(mean.tolist()), tuple(scale.tolist()), 5.0)
    x = rng.random((1, 28, 28)).astype(np.float32)
    assert _pixel_score(cal, x) == pytest.approx(cal.pixel_score(x.ravel().tolist()), rel=1e-5)
    assert _pixel_score(cal, x) == pytest.approx(_pixel_score(cal, x))  # from the cache
