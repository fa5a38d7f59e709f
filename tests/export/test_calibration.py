"""Calibration at export (export/calibration.py): the temperature fit, the ECE, the threshold and
the generated out-of-distribution sets on synthetic data; every exported classifier's card
carries the section with sane values; old cards (without it) still load."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from core.card import Calibration, CardError, ModelCard
from export.calibration import (
    OOD_RATE,
    auroc,
    expected_calibration_error,
    fit_temperature,
    fit_threshold,
    nll,
    ood_inputs,
)
from training.data import load_dataset
from training.registry import served_graphs

CLASSIFIERS = [name for name, (_, graph) in served_graphs().items() if "classify" in graph.tasks]


def synthetic(temperature: float, n: int = 20000, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): the NLL's minimum is there."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, k))
    p = np.exp(logits / temperature - (logits / temperature).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.uniform(size=(n, 1))).argmax(1)
    return logits, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_fit_recovers_a_known_temperature(true_t: float):
    logits, y = synthetic(true_t)
    t = fit_temperature(logits, y)
    assert abs(t - true_t) / true_t < 0.05, (t, true_t)
    assert nll(logits, y, t) <= min(nll(logits, y, true_t * 0.8), nll(logits, y, true_t * 1.25))


def test_temperature_fit_lowers_the_ece_of_an_overconfident_model():
    logits, y = synthetic(2.5)  # a model whose logits are 2.5 times too sharp
    t = fit_temperature(logits, y)

    def probs(temp: float) -> np.ndarray:
        e = np.exp(logits / temp - (logits / temp).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    before, after = expected_calibration_error(probs(1.0), y), expected_calibration_error(probs(t), y)
    assert before > 0.05 and after < 0.02, (before, after)


def test_ece_by_hand():
    # Bin [0.8, 0.867): two predictions at 0.8, one right (gap 0.3); bin [0.933, 1]: two at 1.0,
    # both right (gap 0). ECE = 2/4 * 0.3 + 2/4 * 0 = 0.15.
    probs = np.array([[0.8, 0.2], [0.8, 0.2], [0.0, 1.0], [1.0, 0.0]])
    y = np.array([0, 1, 1, 0])
    assert expected_calibration_error(probs, y) == pytest.approx(0.15)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0  # sure and right


def test_threshold_flags_the_asked_share_on_either_side():
    scores = np.random.default_rng(1).normal(size=10000)
    above, below = fit_threshold(scores, "above", 0.05), fit_threshold(scores, "below", 0.05)
    assert np.mean(scores > above) == pytest.approx(0.05, abs=0.002)
    assert np.mean(scores < below) == pytest.approx(0.05, abs=0.002)


def test_auroc_orientation_and_ties():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0]), "above") == 1.0
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0]), "below") == 0.0
    assert auroc(np.ones(5), np.ones(7), "above") == 0.5


@pytest.mark.parametrize("row_shape", [(1, 28, 28), (3, 32, 32)])
def test_generated_sets_are_deterministic_and_in_range(row_shape):
    a, b, c = ood_inputs(row_shape, 7, n=12), ood_inputs(row_shape, 7, n=12), ood_inputs(row_shape, 8, n=12)
    assert a.keys() == b.keys() and {"noise_uniform", "noise_gaussian", "blank"} <= a.keys()
    assert ("letters" in a) == (row_shape[0] == 1) and ("digits_rgb" in a) == (row_shape[0] == 3)
    for k, x in a.items():
        assert x.shape == (12, *row_shape) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1, k
        assert np.array_equal(x, b[k]), k
        if k != "blank":
            assert not np.array_equal(x, c[k]), k
        assert x.reshape(12, -1).std(1).min() > 0 or k == "blank", k  # something is drawn


def test_calibration_rule_and_its_json():
    rule = Calibration(2.0, "energy", -3.0, (0.0, 0.5), (1.0, 0.5), 4.0, {"ece_before": 0.1})
    logits = [4.0, 0.0]
    assert rule.score(logits) == pytest.approx(-2.0 * math.log(math.exp(2.0) + 1.0))
    assert rule.pixel_score([1.0, 1.5]) == pytest.approx((1.0 + 4.0) / 2)
    assert not rule.flags(-3.5, 4.0) and rule.flags(-2.5, 0.0) and rule.flags(-3.5, 4.5)
    msp = Calibration(1.0, "max_softmax", 0.9)
    assert msp.score([0.0, 0.0]) == pytest.approx(0.5) and msp.flags(0.5) and not msp.flags(0.95)
    assert not msp.flags(0.95, 0.0, 123.0)  # no roughness range: roughness never flags
    rough = replace(rule, roughness_range=(0.01, 0.05))
    assert not rough.flags(-3.5, 0.0, 0.03) and not rough.flags(-3.5, 0.0, None)
    assert rough.flags(-3.5, 0.0, 0.0) and rough.flags(-3.5, 0.0, 0.2)  # blank, noise
    assert Calibration.from_json(json.loads(json.dumps(rough.to_json()))) == rough
    assert rough.to_json()["ood"]["roughness"]["range"] == [0.01, 0.05]
    for bad in ([0.05, 0.01], [0.01], [0.01, float("inf")], "0.01,0.05"):
        data = rough.to_json()
        data["ood"]["roughness"]["range"] = bad
        with pytest.raises(CardError, match="roughness"):
            Calibration.from_json(data)
    assert msp.pixel_score([9.0, 9.0]) == 0.0  # no pixel model: pixels never flag
    again = Calibration.from_json(json.loads(json.dumps(rule.to_json())))
    assert again == rule
    for bad in (
        {**rule.to_json(), "temperature": 0},
        {**rule.to_json(), "ood": {"score": "entropy", "threshold": 1.0}},
        {**rule.to_json(), "ood": {"score": "energy"}},
    ):
        with pytest.raises(CardError):
            Calibration.from_json(bad)


def test_roughness_tells_noise_and_blank_canvases_from_pictures():
    from core.images import roughness

    rng = np.random.default_rng(0)
    assert roughness(np.full((3, 32, 32), 0.4)) == 0.0
    noise = roughness(rng.uniform(0, 1, (3, 32, 32)))
    assert noise == pytest.approx(1 / 6, rel=0.1)  # 2 * var(U(0, 1)) for independent neighbours
    scenes = load_dataset("scenes", 1234).test.x[:50]
    assert max(roughness(x) for x in scenes) < noise / 4
    x = rng.random((2, 3, 4))
    want = (np.square(np.diff(x, axis=-1)).sum() + np.square(np.diff(x, axis=-2)).sum()) / (2 * 3 * 3 + 2 * 2 * 4)
    assert roughness(x) == pytest.approx(want)


def test_cards_without_calibration_still_load(exported):
    data = json.loads(exported[CLASSIFIERS[0]].read_text())
    data.pop("calibration", None)
    card = ModelCard.from_json(data)
    assert card.calibration is None and card.temperature == 1.0
    assert ModelCard.from_json(card.to_json()) == card


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_cards_carry_a_sane_calibration(exported, name: str):
    card = ModelCard.from_json(json.loads(exported[name].read_text()))
    cal = card.calibration
    assert cal is not None, f"{name}: no calibration section"
    r, ood = cal.report, cal.report["ood"]
    assert 0.05 <= cal.temperature <= 20
    assert r["fitted_on"] == ood["fitted_on"] == "validation"
    assert r["ece_examples"] == ood["in_distribution_examples"] > 0
    # Fitted on validation: the NLL there cannot rise, and the ECE barely.
    fit = r["validation"]
    assert fit["nll_after"] <= fit["nll_before"] + 1e-6
    assert fit["ece_after"] <= fit["ece_before"] + 0.01
    assert 0 <= r["ece_after"] <= 1 and 0 <= r["ece_before"] <= 1
    # About OOD_RATE of validation flagged (by construction, a few inputs of slack), and the rule
    # says what it flags: real test inputs rarely, noise mostly.
    assert ood["flagged_validation"] <= OOD_RATE + 3 / ood["fit_examples"] + 1e-9
    assert ood["flagged_in_distribution"] <= 0.15
    assert ood["noise_examples"] >= 100 and ood["flagged_noise"] >= 0.9, ood
    assert cal.roughness_range and ood["flagged_blank"] >= 0.9, ood  # the scenes' noise and blanks: roughness
    assert all(s["examples"] > 0 and 0 <= s["share"] <= 1 for s in ood["flagged"].values())
    assert len(cal.pixel_mean) == math.prod(card.row_shape)
    if card.row_shape[0] == 1:  # the digit models: letters and shapes framed as uploads are
        assert ood["non_digits_examples"] >= 100 and ood["flagged_non_digits"] > ood["flagged_in_distribution"]
