"""The BentoML service.

    clients --HTTP--> EE559: task endpoints (/classify, /explain, /segment, /denoise, /embed,
                     /reconstruct, /generate, /generate_text with streaming),
                     Open Inference Protocol (/v2), /readyz, /metrics
                        parsing and validation -> adaptive batcher -> ONNX Runtime sessions

Routes are a Starlette app mounted into the service (BentoML's documented ASGI integration), so
request bodies are read raw: size limits, content types and error messages are ours. Batching is
ours too by default (service/engine.py), in the worker that parsed the request: measured on this
2-core machine, the hop to a separate BentoML batchable service cost half the throughput (711 vs
1,462 req/s at 32 connections, one worker each). `EE559_BATCHER=bentoml` restores that design:
an `Inference` service behind `bentoml.depends`, batching with `@bentoml.api(batchable=True)`.

Models come from the BentoML model store (see store.py); nothing here imports torch or the
training code.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
from typing import Any

import bentoml
import numpy as np
from bentoml.models import BentoModel

from . import patches, store
from .api import http_app
from .auth import TokenAuth
from .engine import Engine
from .errors import ClientError
from .ort_runtime import preflight

log = logging.getLogger("ee559.service")
patches.apply()

MAX_BATCH_SIZE = int(os.environ.get("EE559_MAX_BATCH_SIZE", "64"))
# Generous on purpose: a request still queued after this long is answered 503 (BentoML's
# dispatcher does so for requests it expects to miss it), and a tight value turns load into errors.
MAX_LATENCY_MS = int(os.environ.get("EE559_MAX_LATENCY_MS", "2000"))
MAX_QUEUE_ROWS = int(os.environ.get("EE559_MAX_QUEUE", "512"))  # per worker and model; beyond: 503
WORKERS = int(os.environ.get("EE559_WORKERS", str(min(os.cpu_count() or 1, 4))))
BATCHER = os.environ.get("EE559_BATCHER", "ee559").lower()
if BATCHER not in ("ee559", "bentoml"):
    raise ValueError(f"EE559_BATCHER={BATCHER!r}; accepted: ee559 (in-process, default), bentoml")
# Per-request INFO access logs cost ~13% of the throughput (615 vs 711 req/s measured);
# EE559_ACCESS_LOG=1 turns them on.
ACCESS_LOG = os.environ.get("EE559_ACCESS_LOG", "0") == "1"
PROVIDER = os.environ.get("EE559_PROVIDER", "auto").lower()
preflight(PROVIDER)  # provider=cuda without CUDA: `bentoml serve` exits now instead of retrying workers
SERVED = store.discover(store.requested_names())  # name -> tag; a directory listing, nothing loaded
if not SERVED:  # fail `bentoml serve` / `bentoml build` at once rather than restart workers forever
    raise store.ModelStoreError("no exported models in the model store "
                                f"({os.environ.get('BENTOML_HOME', '~/bentoml')}); run: python -m export all")


def _with_models(cls: type) -> type:
    """Declare every served model at class level, so `bentoml build` packs them into the Bento."""
    for name, tag in SERVED.items():
        setattr(cls, f"model_{name}", BentoModel(tag))
    return cls


def _quiet_gc() -> None:
    """Full garbage collections paused the event loop for 30-70 ms every ~0.5 s under load (each
    scanned ~100k live objects and freed almost nothing): p99 of a single connection was 120 ms
    against 2 ms with the collector off. Freezing the start-up heap and collecting far less often
    keeps cycles reclaimed while making those pauses rare. Request data is acyclic (refcounted).
    (Most of those live objects turned out to be kept by BentoML's uncancelled request timers,
    fixed in service/patches.py; a worker's live heap is now a few thousand objects.)"""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


# SIGTERM: readiness answers 503 at once, and the worker goes on serving for this long (so load
# balancers polling readiness stop sending traffic) before it closes its listener and finishes
# what is in flight. BentoML's arbiter kills a worker 30 s after SIGTERM: keep it well below.
DRAIN_S = float(os.environ.get("EE559_DRAIN_SECONDS", "2"))


def _drain_on_sigterm(svc: Any) -> None:
    """Put our handler in front of uvicorn's SIGTERM handler (installed before the service is
    built): start `svc` draining, then hand the signal to uvicorn after DRAIN_S. Only in a
    server's main thread, where a Python handler is already there to hand it to."""
    if threading.current_thread() is not threading.main_thread():
        return
    server_handler = signal.getsignal(signal.SIGTERM)
    if not callable(server_handler):
        return

    def on_term(sig: int, frame: Any) -> None:
        if svc.draining:  # the arbiter forwards the signal the process group already got
            return
        svc.start_draining()
        timer = threading.Timer(DRAIN_S, server_handler, (sig, None))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_term)


# Text generation (POST /generate_text): caps on what one request may ask for.
MAX_NEW_TOKENS = int(os.environ.get("EE559_MAX_NEW_TOKENS", "512"))
MAX_PROMPT_CHARS = int(os.environ.get("EE559_MAX_PROMPT_CHARS", "2048"))


def _engine(served: dict[str, str]) -> Engine:
    return Engine(served, PROVIDER, MAX_BATCH_SIZE, MAX_LATENCY_MS, MAX_QUEUE_ROWS)


def _split_text_models(cards: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(tensor models, text generators): the Inference service batches only the first kind.
    `cards`, when the caller has read them already, saves reading every stored model again."""
    cards = cards or {n: store.load(t).card for n, t in SERVED.items()}
    text = {n: t for n, t in SERVED.items() if cards[n].get("generation")}
    return {n: t for n, t in SERVED.items() if n not in text}, text


# runner_connection: BentoML's client refreshes its connection pool every 100 requests (or 300 s)
# by closing the old pool under in-flight requests, which fails them under load; we keep one pool.
@bentoml.service(name="ee559_inference", workers=1, traffic={"timeout": 30},
                 runner_connection={"max_requests": 2**62, "max_age": 10.0**9},
                 logging={"access": {"enabled": ACCESS_LOG}})
class Inference:
    """EE559_BATCHER=bentoml: the sessions in their own service, batched by BentoML's dispatcher."""

    def __init__(self) -> None:
        self.engine = _engine(_split_text_models()[0])

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    async def infer(self, items: list[Any]) -> list[Any]:
        """items: (model name, one input row) pairs from any number of requests; each model's rows
        run as one batch. Returns (output rows in card order, provider) per item, in order."""
        groups: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(items):
            groups.setdefault(name, []).append(i)
        results: list[Any] = [None] * len(items)
        loop = asyncio.get_running_loop()
        for name, idx in groups.items():
            x = np.stack([items[i][1] for i in idx])
            outs = await loop.run_in_executor(self.engine.executor, self.engine.run, name, x)
            for j, i in enumerate(idx):
                results[i] = ([o[j] for o in outs], self.engine.providers[name])
        return results


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(name="ee559", workers=WORKERS, traffic={"timeout": 30}, logging={"access": {"enabled": ACCESS_LOG}})
@_with_models
class EE559:
    """The public service: one endpoint per serving task (service/tasks.py) and the Open Inference Protocol (/v2)
    over every exported model."""

    if BATCHER == "bentoml":
        inference = bentoml.depends(Inference)

    def __init__(self) -> None:
        if BATCHER == "bentoml":
            self.engine = None
            self.cards = {name: store.load(tag).card for name, tag in SERVED.items()}
            text = _split_text_models(self.cards)[1]
            self.text = _engine(text).text if text else {}  # generation keeps its state in this worker
        else:
            self.engine = _engine(SERVED)  # loaded and warmed up before the worker reports ready
            self.cards, self.text = self.engine.cards, self.engine.text
        self.draining = False
        _drain_on_sigterm(self)
        _quiet_gc()  # runs at the worker's start-up, after BentoML built the app around us

    def card_for(self, name: Any, task_name: str) -> dict[str, Any]:
        """The card of the graph that serves `task_name` for the model `name` (a registered model,
        whose graphs share its name as their family, or one graph by its own name)."""
        served = sorted({c.get("family", n) for n, c in self.cards.items() if task_name in c["tasks"]})
        if not isinstance(name, str) or not name:
            raise ClientError(400, "missing_field", f"field 'model' must name a model; served for "
                                                    f"{task_name}: {', '.join(served)}")
        family = [c for n, c in self.cards.items() if name in (n, c.get("family"))]
        if not family:
            raise ClientError(404, "unknown_model", f"model {name[:64]!r} is not served; served for {task_name}: "
                                                    f"{', '.join(served)}")
        card = next((c for c in family if task_name in c["tasks"]), None)
        if card is None:
            tasks = sorted({t for c in family for t in c["tasks"]})
            raise ClientError(400, "wrong_task", f"model {name!r} serves {', '.join('/' + t for t in tasks)}, "
                                                 f"not /{task_name}; models for /{task_name}: {', '.join(served)}")
        return card

    async def run(self, name: str, x: np.ndarray) -> tuple[list[np.ndarray], str]:
        """Run a batch `x` (N, ...) of `name`; the rows join other requests' in adaptive batches.
        Returns every output (N, ...) in model-card order, and the provider used."""
        if self.engine is not None:
            return await self.engine.infer(name, x)
        try:
            rows = await self.inference.infer([(name, row) for row in x])
        except bentoml.exceptions.ServiceUnavailable:
            raise ClientError(503, "overloaded", "the server is at capacity; retry after a second") from None
        outputs = [np.stack([r[0][k] for r in rows]) for k in range(len(rows[0][0]))]
        return outputs, rows[0][1]

    def bentoml_openapi(self) -> dict[str, Any]:
        """BentoML's own OpenAPI document of this service (its probes and metrics)."""
        return EE559.openapi_spec.asdict()

    def start_draining(self) -> None:
        self.draining = True
        log.info("SIGTERM: readiness is 503 from now; serving %g s more, then finishing what is in flight", DRAIN_S)

    async def __is_ready__(self) -> bool:
        """GET /readyz (BentoML) and /v2/health/ready: false once SIGTERM arrived."""
        if self.draining:
            return False
        if self.engine is not None:
            return True  # the engine is built in __init__, before the worker serves
        proxy = self.inference
        return await proxy.is_ready(2) if hasattr(proxy, "is_ready") else True


EE559.add_asgi_middleware(TokenAuth)  # a no-op unless EE559_API_TOKEN is set
