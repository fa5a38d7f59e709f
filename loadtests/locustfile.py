"""Locust users for every registered model, with real held-out inputs and content checks.

Run headless through `python -m loadtests` (CSV + HTML reports, SLO gate), or by hand:
    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000
The SLOs (--slo-p95-ms, --slo-fail-ratio) set the exit code when Locust quits.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from functools import cache

import numpy as np
from locust import FastHttpUser, events, task  # noqa: F401 - task kept for hand-written users
from PIL import Image

from training.data import load_dataset
from training.registry import REGISTRY
from training.runtime import DEFAULT_SEED

log = logging.getLogger("ee559.locust")


@events.init_command_line_parser.add_listener
def _slo_options(parser) -> None:
    parser.add_argument("--slo-p95-ms", type=float, default=500.0, help="fail the run if p95 latency exceeds this")
    parser.add_argument("--slo-fail-ratio", type=float, default=0.01, help="fail the run above this failure ratio")


@cache
def held_out(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Test-split images the models never saw in training (same seed and split as training)."""
    split = load_dataset(dataset, DEFAULT_SEED).test
    return split.x, split.y


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((pixels[0] * 255).round().astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def check_classification(resp, expected_label: int, n_classes: int, stats: dict) -> None:
    try:
        body = resp.json()
    except (ValueError, json.JSONDecodeError):
        resp.failure(f"HTTP {resp.status_code}, not JSON")
        return
    if resp.status_code != 200:
        resp.failure(f"HTTP {resp.status_code}: {body.get('error', body) if isinstance(body, dict) else body}")
        return
    probs = body.get("probabilities", [])
    if len(probs) != n_classes or abs(sum(probs) - 1.0) > 1e-3 or body.get("label") is None:
        resp.failure(f"malformed classification: {str(body)[:200]}")
        return
    resp.success()
    stats["answered"] += 1
    stats["correct"] += int(body["class_index"] == expected_label)


ACCURACY: dict[str, dict[str, int]] = {}


def classify_task(model: str, dataset: str, as_png: bool):
    """One Locust task: POST /classify for `model` with the next held-out image."""
    counter = itertools.count()
    stats = ACCURACY.setdefault(model, {"answered": 0, "correct": 0})

    def run(user: FastHttpUser) -> None:
        x, y = held_out(dataset)
        i = next(counter) % len(y)
        name = f"/classify [{model}, {'png' if as_png else 'json'}]"
        if as_png:
            req = dict(data=png_bytes(x[i]), headers={"Content-Type": "image/png"}, params={"model": model})
        else:
            req = dict(data=json.dumps({"model": model, "image": x[i, 0].tolist()}),
                       headers={"Content-Type": "application/json"})
        with user.client.post("/classify", name=name, catch_response=True, **req) as resp:
            check_classification(resp, int(y[i]), 10, stats)

    run.__name__ = f"classify_{model}_{'png' if as_png else 'json'}"
    return run


# Serving task -> Locust tasks with weights: JSON arrays are the common client, PNG the rarer one.
TASK_LOADS = {
    "classify": lambda entry: {classify_task(entry.name, entry.dataset, False): 3,
                               classify_task(entry.name, entry.dataset, True): 1},
}


class CourseModelUser(FastHttpUser):
    """Every registered model, each with its serving task's requests."""

    tasks = {fn: w for entry in REGISTRY.values() for fn, w in TASK_LOADS[entry.task](entry).items()}


@events.quitting.add_listener
def _slo_gate(environment, **_kw) -> None:
    opts = environment.parsed_options
    total = environment.stats.total
    if opts is None or total.num_requests == 0:
        return
    p95 = total.get_response_time_percentile(0.95)
    for model, s in ACCURACY.items():
        if s["answered"]:
            log.info("%s: %d/%d held-out images classified correctly (%.2f%%)", model, s["correct"],
                     s["answered"], 100 * s["correct"] / s["answered"])
    broken = []
    if total.fail_ratio > opts.slo_fail_ratio:
        broken.append(f"failure ratio {total.fail_ratio:.4f} > {opts.slo_fail_ratio}")
    if p95 > opts.slo_p95_ms:
        broken.append(f"p95 {p95:.0f} ms > {opts.slo_p95_ms:g} ms")
    if broken:
        log.error("SLO broken: %s", "; ".join(broken))
        environment.process_exit_code = 1
    else:
        log.info("SLO met: failure ratio %.4f <= %g, p95 %.0f ms <= %g ms", total.fail_ratio,
                 opts.slo_fail_ratio, p95, opts.slo_p95_ms)
