"""Locust tasks per serving task, built from what the server serves: its model cards (GET /models)
and the held-out examples each card carries (GET /models/{name}). Kept apart from locustfile.py
so that importing them does not import Locust (whose gevent monkey-patching must not run inside
other processes, e.g. pytest). Imports nothing of the project but core: a load-generating
machine needs no torch (requirements-loadtest.txt)."""

from __future__ import annotations

import itertools
import json
import os
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np

from core.card import ModelCard
from core.images import png_bytes


def auth_headers() -> dict[str, str]:
    """EE559_API_TOKEN as the bearer token, if set (a server beyond loopback requires one)."""
    token = os.environ.get("EE559_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def fetch(url: str) -> Any:
    """GET a JSON document of the service (with the bearer token, if set)."""
    with urllib.request.urlopen(urllib.request.Request(url, headers=auth_headers()), timeout=30) as r:
        return json.loads(r.read())


def served_cards(host: str) -> list[ModelCard]:
    """Every graph the server at `host` serves, with its examples."""
    listing = fetch(f"{host.rstrip('/')}/models")["models"]
    return [ModelCard.from_json(fetch(f"{host.rstrip('/')}/models/{c['name']}")) for c in listing]


def examples(card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """The card's held-out inputs (N, C, H, W) float32 and their targets."""
    return (np.asarray(card.examples.get("inputs", []), dtype=np.float32), np.asarray(card.examples.get("targets", [])))


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


def classify_task(card: ModelCard, as_png: bool) -> Callable[[Any], None]:
    """One Locust task: POST /classify for the card's model with its next held-out image."""
    counter = itertools.count()
    model, n_classes = card.family, len(card.labels)
    x, y = examples(card)
    stats = ACCURACY.setdefault(model, {"answered": 0, "correct": 0, "examples": len(y)})

    def run(user: Any) -> None:  # a Locust HttpUser
        i = next(counter) % len(y)
        name = f"/classify [{model}, {'png' if as_png else 'json'}]"
        if as_png:
            req = dict(data=png_bytes(x[i]), headers={"Content-Type": "image/png"}, params={"model": model})
        else:
            req = dict(
                data=json.dumps({"model": model, "image": x[i].tolist()}), headers={"Content-Type": "application/json"}
            )
        with user.client.post("/classify", name=name, catch_response=True, **req) as resp:
            check_classification(resp, int(y[i]), n_classes, stats)

    run.__name__ = f"classify_{model}_{'png' if as_png else 'json'}"
    return run


def json_task(
    route: str, card: ModelCard, check: Callable[[dict, np.ndarray, Any], str | None]
) -> Callable[[Any], None]:
    """One Locust task: POST /<route> for the card's model with its next held-out image;
    `check(body, x, y)` returns what is wrong with a 200 answer, or None."""
    counter = itertools.count()
    model = card.family
    x, y = examples(card)

    def run(user: Any) -> None:  # a Locust HttpUser
        i = next(counter) % len(x)
        with user.client.post(
            f"/{route}",
            name=f"/{route} [{model}]",
            catch_response=True,
            data=json.dumps({"model": model, "image": x[i].tolist()}),
            headers={"Content-Type": "application/json"},
        ) as resp:
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


def _mask_checker(model: str, n_classes: int, n_examples: int):
    """Checks a mask's shape and range, and counts an image right when 95% of its pixels are."""
    stats = ACCURACY.setdefault(model, {"answered": 0, "correct": 0, "examples": n_examples})

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


def generate_task(model: str, n: int = 4) -> Callable[[Any], None]:
    """One Locust task: POST /generate for `model`, n samples, a new seed each time; checks the
    number, shape and range of the images and that the seed is echoed."""
    seeds = itertools.count()

    def run(user: Any) -> None:  # a Locust HttpUser
        seed = next(seeds)
        with user.client.post(
            "/generate",
            name=f"/generate [{model}]",
            catch_response=True,
            data=json.dumps({"model": model, "n": n, "seed": seed}),
            headers={"Content-Type": "application/json"},
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            body = resp.json()
            images = np.asarray(body.get("images", []), dtype=np.float32)
            ok = images.ndim >= 3 and len(images) == n and images.min() >= 0 and images.max() <= 1
            resp.success() if ok and body.get("seed") == seed else resp.failure(f"malformed samples {images.shape}")

    run.__name__ = f"generate_{model}_json"
    return run


def prompts(card: ModelCard) -> list[str]:
    """Held-out text from the card (characters the model knows)."""
    return [p for p in card.examples.get("prompts", []) if p] or [card.labels[0]]


def generate_text_task(card: ModelCard, max_new_tokens: int = 32) -> Callable[[Any], None]:
    """One Locust task: POST /generate_text (not streamed) for the card's model; checks the token count."""
    counter = itertools.count()
    model, texts = card.family, prompts(card)

    def run(user: Any) -> None:  # a Locust HttpUser
        i = next(counter)
        body = {"model": model, "prompt": texts[i % len(texts)], "max_new_tokens": max_new_tokens, "seed": i}
        with user.client.post(
            "/generate_text",
            name=f"/generate_text [{model}]",
            catch_response=True,
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            got = resp.json()
            ok = got.get("tokens") == max_new_tokens and len(got.get("text", "")) == max_new_tokens
            resp.success() if ok else resp.failure(f"malformed generation: {str(got)[:200]}")

    run.__name__ = f"generate_text_{model}_json"
    return run


# Serving task -> Locust tasks with weights, for one served graph: JSON arrays are the common
# client, PNG the rarer one.
TASK_LOADS: dict[str, Callable[[ModelCard], dict[Callable[[Any], None], int]]] = {
    "denoise": lambda card: {json_task("denoise", card, _denoised_ok): 1},
    "embed": lambda card: {json_task("embed", card, _embedding_ok): 1},
    "segment": lambda card: {
        json_task("segment", card, _mask_checker(card.family, len(card.labels), len(examples(card)[1]))): 1
    },
    "explain": lambda card: {json_task("explain", card, _heatmap_ok): 1},
    "reconstruct": lambda card: {json_task("reconstruct", card, _reconstruction_ok): 1},
    "generate": lambda card: {generate_task(card.family): 1},
    "generate_text": lambda card: {generate_text_task(card): 1},
    "classify": lambda card: {classify_task(card, False): 3, classify_task(card, True): 1},
}


def weighted_tasks(cards: list[ModelCard]) -> list[Callable[[Any], None]]:
    """Every served graph's Locust tasks, each repeated by its weight (Locust picks at random)."""
    stale = [c.name for c in cards if c.input.dtype == "float32" and len(c.row_shape) == 3 and not c.examples]
    if stale:
        raise RuntimeError(
            f"the served cards of {', '.join(stale)} carry no held-out examples (exported by an "
            "older exporter): export them again (make export RETRAIN=1, or python -m export all)"
        )
    return [fn for card in cards for task in card.tasks for fn, w in TASK_LOADS[task](card).items() for _ in range(w)]
