"""Locust tasks per serving task, kept apart from locustfile.py so that importing them does not
import Locust (whose gevent monkey-patching must not run inside other processes, e.g. pytest)."""

from __future__ import annotations

import io
import itertools
import json
from functools import cache

import numpy as np
from PIL import Image

from training.data import load_dataset
from training.runtime import DEFAULT_SEED


@cache
def held_out(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Test-split images the models never saw in training (same seed and split as training)."""
    split = load_dataset(dataset, DEFAULT_SEED).test
    return split.x, split.y


def png_bytes(pixels: np.ndarray) -> bytes:
    """(C, H, W) in [0, 1] -> PNG (grayscale for one channel, RGB for three)."""
    u8 = (pixels * 255).round().astype(np.uint8)
    img = Image.fromarray(u8[0], mode="L") if len(u8) == 1 else Image.fromarray(u8.transpose(1, 2, 0), mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
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


def classify_task(model: str, dataset: str, n_classes: int, as_png: bool):
    """One Locust task: POST /classify for `model` with the next held-out image."""
    counter = itertools.count()
    stats = ACCURACY.setdefault(model, {"answered": 0, "correct": 0})

    def run(user) -> None:  # a Locust HttpUser
        x, y = held_out(dataset)
        i = next(counter) % len(y)
        name = f"/classify [{model}, {'png' if as_png else 'json'}]"
        if as_png:
            req = dict(data=png_bytes(x[i]), headers={"Content-Type": "image/png"}, params={"model": model})
        else:
            req = dict(data=json.dumps({"model": model, "image": x[i].tolist()}),
                       headers={"Content-Type": "application/json"})
        with user.client.post("/classify", name=name, catch_response=True, **req) as resp:
            check_classification(resp, int(y[i]), n_classes, stats)

    run.__name__ = f"classify_{model}_{'png' if as_png else 'json'}"
    return run


def json_task(route: str, model: str, dataset: str, check):
    """One Locust task: POST /<route> for `model` with the next held-out image; `check(body, x, y)`
    returns what is wrong with a 200 answer, or None."""
    counter = itertools.count()

    def run(user) -> None:  # a Locust HttpUser
        x, y = held_out(dataset)
        i = next(counter) % len(x)
        with user.client.post(f"/{route}", name=f"/{route} [{model}]", catch_response=True,
                              data=json.dumps({"model": model, "image": x[i].tolist()}),
                              headers={"Content-Type": "application/json"}) as resp:
            if resp.status_code != 200:
                problem = f"HTTP {resp.status_code}: {resp.text[:200]}"
            else:
                problem = check(resp.json(), x[i], y[i])
            resp.failure(problem) if problem else resp.success()

    run.__name__ = f"{route}_{model}_json"
    return run


def _heatmap_ok(body: dict, x: np.ndarray, y) -> str | None:
    heat = np.asarray(body.get("heatmap", []), dtype=np.float32)
    ok = heat.shape == x.shape[1:] and heat.min() >= 0 and heat.max() <= 1 and body.get("label") is not None
    return None if ok else f"malformed explanation: heat map {heat.shape}"


def _mask_checker(model: str, n_classes: int):
    """Checks a mask's shape and range, and counts an image right when 95% of its pixels are."""
    stats = ACCURACY.setdefault(model, {"answered": 0, "correct": 0})

    def check(body: dict, x: np.ndarray, y: np.ndarray) -> str | None:
        mask = np.asarray(body.get("mask", []))
        if mask.shape != y.shape or mask.min() < 0 or mask.max() >= n_classes:
            return f"malformed mask: {mask.shape}"
        stats["answered"] += 1
        stats["correct"] += int((mask == y).mean() >= 0.95)
        return None

    return check


def _denoised_ok(body: dict, x: np.ndarray, y) -> str | None:
    out = np.asarray(body.get("denoised", []), dtype=np.float32)
    return None if out.size == x.size and 0 <= out.min() and out.max() <= 1 else f"malformed denoised image {out.shape}"


def _embedding_ok(body: dict, x: np.ndarray, y) -> str | None:
    z = np.asarray(body.get("embedding", []), dtype=np.float64)
    return None if z.ndim == 1 and len(z) == body.get("dim") and np.isfinite(z).all() else "malformed embedding"


def _reconstruction_ok(body: dict, x: np.ndarray, y) -> str | None:
    out = np.asarray(body.get("reconstruction", []), dtype=np.float32)
    mean = np.asarray(body.get("mean", []), dtype=np.float64)
    ok = out.size == x.size and 0 <= out.min() and out.max() <= 1 and mean.ndim == 1 and np.isfinite(mean).all()
    return None if ok else f"malformed reconstruction {out.shape}"


def generate_task(model: str, n: int = 4):
    """One Locust task: POST /generate for `model`, n samples, a new seed each time; checks the
    number, shape and range of the images and that the seed is echoed."""
    seeds = itertools.count()

    def run(user) -> None:  # a Locust HttpUser
        seed = next(seeds)
        with user.client.post("/generate", name=f"/generate [{model}]", catch_response=True,
                              data=json.dumps({"model": model, "n": n, "seed": seed}),
                              headers={"Content-Type": "application/json"}) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            body = resp.json()
            images = np.asarray(body.get("images", []), dtype=np.float32)
            ok = images.ndim >= 3 and len(images) == n and images.min() >= 0 and images.max() <= 1
            resp.success() if ok and body.get("seed") == seed else resp.failure(f"malformed samples {images.shape}")

    run.__name__ = f"generate_{model}_json"
    return run


PROMPTS = ("Return the ", "This module ", "If the ", "Create a new ")


def generate_text_task(model: str, max_new_tokens: int = 32):
    """One Locust task: POST /generate_text (not streamed) for `model`; checks the token count."""
    counter = itertools.count()

    def run(user) -> None:  # a Locust HttpUser
        i = next(counter)
        body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": max_new_tokens, "seed": i}
        with user.client.post("/generate_text", name=f"/generate_text [{model}]", catch_response=True,
                              data=json.dumps(body), headers={"Content-Type": "application/json"}) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            got = resp.json()
            ok = got.get("tokens") == max_new_tokens and len(got.get("text", "")) == max_new_tokens
            resp.success() if ok else resp.failure(f"malformed generation: {str(got)[:200]}")

    run.__name__ = f"generate_text_{model}_json"
    return run


# Serving task -> Locust tasks with weights: JSON arrays are the common client, PNG the rarer one.
TASK_LOADS = {
    "denoise": lambda entry: {json_task("denoise", entry.name, entry.dataset, _denoised_ok): 1},
    "embed": lambda entry: {json_task("embed", entry.name, entry.dataset, _embedding_ok): 1},
    "segment": lambda entry: {json_task("segment", entry.name, entry.dataset,
                                        _mask_checker(entry.name, entry.export.outputs[0].shape[1])): 1},
    "explain": lambda entry: {json_task("explain", entry.name, entry.dataset, _heatmap_ok): 1},
    "reconstruct": lambda entry: {json_task("reconstruct", entry.name, entry.dataset, _reconstruction_ok): 1},
    "generate": lambda entry: {generate_task(entry.name): 1},
    "generate_text": lambda entry: {generate_text_task(entry.name): 1},
    "classify": lambda entry: {
        classify_task(entry.name, entry.dataset, entry.export.outputs[0].shape[-1], False): 3,
        classify_task(entry.name, entry.dataset, entry.export.outputs[0].shape[-1], True): 1,
    },
}
