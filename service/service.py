"""The BentoML services.

    clients --HTTP--> EE559 (front: parsing, validation, tasks, /classify)
                        --bentoml.depends--> Inference (ONNX Runtime sessions, adaptive batching)

The front reads raw request bodies through a mounted Starlette app (BentoML's documented ASGI
integration), so size limits, content types and error messages are ours; the inference service
batches concurrent requests with `@bentoml.api(batchable=True)` and runs each model's group as
one ONNX Runtime call. Models come from the BentoML model store (see store.py); the service never
imports torch or the training code.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import anyio
import bentoml
import numpy as np
from bentoml.models import BentoModel

from . import metrics, store
from .api import http_app
from .errors import ClientError
from .ort_runtime import make_session, preflight

log = logging.getLogger("ee559.service")

MAX_BATCH_SIZE = int(os.environ.get("EE559_MAX_BATCH_SIZE", "64"))
# Generous on purpose: the dispatcher answers 503 to requests it expects to miss this deadline,
# and a tight value turns ordinary load into errors.
MAX_LATENCY_MS = int(os.environ.get("EE559_MAX_LATENCY_MS", "2000"))
PROVIDER = os.environ.get("EE559_PROVIDER", "auto").lower()
preflight(PROVIDER)  # provider=cuda without CUDA: `bentoml serve` exits now instead of retrying workers
SERVED = store.discover(store.requested_names())  # name -> tag; a directory listing, nothing loaded


def _with_models(cls: type) -> type:
    """Declare every served model at class level, so `bentoml build` packs them into the Bento."""
    for name, tag in SERVED.items():
        setattr(cls, f"model_{name}", BentoModel(tag))
    return cls


# runner_connection: BentoML's client refreshes its connection pool every 100 requests (or 300 s)
# by closing the old pool under in-flight requests, which fails them under load; we keep one pool.
@bentoml.service(name="ee559_inference", workers=1, traffic={"timeout": 30},
                 runner_connection={"max_requests": 2**62, "max_age": 10.0**9})
@_with_models
class Inference:
    """ONNX Runtime sessions for every served model, warmed up before the worker reports ready."""

    def __init__(self) -> None:
        if not SERVED:
            raise store.ModelStoreError("no exported models in the model store; run: python -m export all")
        self.sessions: dict[str, Any] = {}
        self.providers: dict[str, str] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        fallback_reasons = set()
        for name, tag in SERVED.items():
            model = store.load(tag)
            session, provider, why = make_session(model.onnx_path, PROVIDER)
            if why:
                fallback_reasons.add(why)
            self.sessions[name], self.providers[name], self.cards[name] = session, provider, model.card
            self._warm_up(name)
            metrics.model_info().labels(model=name, version=model.card["version"], opset=str(model.card["opset"]),
                                        provider=provider).set(1)
        for why in fallback_reasons:
            log.warning("execution provider: CPU (CUDA not used: %s)", why)
        log.info("serving %s", ", ".join(f"{n} on {p}" for n, p in self.providers.items()))

    def _warm_up(self, name: str) -> None:
        spec = self.cards[name]["inputs"][0]
        for batch in (1, min(MAX_BATCH_SIZE, self.cards[name]["max_batch_size"])):
            x = np.zeros((batch, *spec["shape"][1:]), dtype=spec["dtype"])
            self.sessions[name].run(None, {spec["name"]: x})

    def _run(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        """Every output of `name` for the batch `x`, in model-card order."""
        card = self.cards[name]
        start = time.perf_counter()
        outs = self.sessions[name].run([o["name"] for o in card["outputs"]], {card["inputs"][0]["name"]: x})
        metrics.inference_seconds().labels(model=name, provider=self.providers[name]).observe(
            time.perf_counter() - start)
        metrics.batch_size().labels(model=name).observe(len(x))
        return outs

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    async def infer(self, items: list[Any]) -> list[Any]:
        """items: (model name, one input row) pairs from any number of requests; each model's rows
        run as one batch. Returns (output rows in card order, provider) per item, in order."""
        groups: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(items):
            groups.setdefault(name, []).append(i)
        results: list[Any] = [None] * len(items)
        for name, idx in groups.items():
            x = np.stack([items[i][1] for i in idx])
            outs = await anyio.to_thread.run_sync(self._run, name, x)
            for j, i in enumerate(idx):
                results[i] = ([o[j] for o in outs], self.providers[name])
        return results


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(name="ee559", workers=int(os.environ.get("EE559_WORKERS", "1")), traffic={"timeout": 30})
class EE559:
    """The public service: task endpoints (POST /classify) and the Open Inference Protocol (/v2)
    over every exported model."""

    inference = bentoml.depends(Inference)

    def __init__(self) -> None:
        self.cards = {name: store.load(tag).card for name, tag in SERVED.items()}

    def card_for(self, name: Any, task_name: str) -> dict[str, Any]:
        served = [n for n, c in self.cards.items() if c["task"] == task_name]
        if not isinstance(name, str) or not name:
            raise ClientError(400, "missing_field", f"field 'model' must name a model; served for "
                                                    f"{task_name}: {', '.join(served)}")
        card = self.cards.get(name)
        if card is None:
            raise ClientError(404, "unknown_model", f"model {name[:64]!r} is not served; served for {task_name}: "
                                                    f"{', '.join(served)}")
        if card["task"] != task_name:
            raise ClientError(400, "wrong_task", f"model {name!r} serves /{card['task']}, not /{task_name}")
        return card

    async def run(self, name: str, x: np.ndarray) -> tuple[list[np.ndarray], str]:
        """Run a batch `x` (N, ...) of `name`; the rows join other requests' in adaptive batches.
        Returns every output (N, ...) in model-card order, and the provider used."""
        try:
            rows = await self.inference.infer([(name, row) for row in x])
        except bentoml.exceptions.ServiceUnavailable:
            raise ClientError(503, "overloaded", "the server is at capacity; retry after a second") from None
        outputs = [np.stack([r[0][k] for r in rows]) for k in range(len(rows[0][0]))]
        return outputs, rows[0][1]

    async def is_ready(self) -> bool:
        proxy = self.inference
        return await proxy.is_ready(2) if hasattr(proxy, "is_ready") else True
