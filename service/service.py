"""The BentoML service.

    clients --HTTP--> EE559: task routes (/classify, /explain, /segment, /denoise, /embed,
                     /reconstruct, /generate, /generate_text with streaming), /models,
                     Open Inference Protocol (/v2), /readyz, /metrics
                        app.py routes -> inputs.py -> catalog.py -> tasks/ -> engine.py (adaptive
                        batcher, ONNX Runtime sessions) -> answers.py

Routes are a Starlette app mounted into the service (BentoML's documented ASGI integration), so
request bodies are read raw: size limits, content types and error messages are ours. Batching is
ours too by default (engine.py), in the worker that parsed the request: the hop to a separate
BentoML batchable service cost half the throughput on a 2-core machine (docs/benchmarks.md).
`EE559_BATCHER=bentoml` restores that design: an `Inference` service behind `bentoml.depends`,
batching with `@bentoml.api(batchable=True)`.

Models come from the BentoML model store (core/store.py), described by their cards; nothing here
imports torch, training or export.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from typing import Any

import bentoml
import numpy as np
from bentoml.models import BentoModel

from core import store
from core.card import ModelCard
from core.session import preflight

from . import lane, logs, metrics, patches
from .app import http_app
from .auth import TokenAuth
from .catalog import Catalog
from .engine import Engine
from .errors import ClientError
from .observe import Observe, note_model
from .playground import Playground
from .scheduler import TextScheduler
from .settings import REQUEST_TIMEOUT_S, SETTINGS, Settings

log = logging.getLogger("ee559.service")
logging.getLogger("ee559").setLevel(logging.INFO)  # models ready, reloads, calibration: the operator's lines
logs.configure(SETTINGS.log_format)  # in a worker, after BentoML configured its handlers
metrics.own_directory()  # a second server on this BENTOML_HOME must not wipe our metrics
patches.apply()
if SETTINGS.reuseport:
    patches.reuseport()  # one listening socket per worker: connections spread over every worker
preflight(SETTINGS.provider)  # provider=cuda without CUDA: `bentoml serve` exits now instead of retrying workers
SERVED = store.select(SETTINGS.models, SETTINGS.precision)  # tags (name:version), each name's default first
if not SERVED:  # fail `bentoml serve` / `bentoml build` at once rather than restart workers forever
    raise store.ModelStoreError(f"no exported models in the model store ({store.home()}); run: python -m export all")
# Every card read and every file checked against its sha256 here, in the process that starts the
# workers: a tampered or unreadable model stops `bentoml serve` with the reason, instead of
# failing each worker at start-up for the arbiter to restart forever. The workers reuse these.
STORED = {tag: store.load(tag) for tag in SERVED}


def _with_models(cls: type) -> type:
    """Declare every served model at class level, so `bentoml build` packs them into the Bento."""
    for tag in SERVED:
        setattr(cls, "model_" + tag.replace(":", "_"), BentoModel(tag))
    return cls


def _quiet_gc() -> None:
    """Full garbage collections pause the event loop under load while freeing almost nothing
    (request data is acyclic, refcounted): freezing the start-up heap and collecting far less
    often keeps cycles reclaimed while making those pauses rare."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _drain_on_sigterm(svc: Any, drain_s: float) -> None:
    """SIGTERM: readiness answers 503 at once, and the worker goes on serving for `drain_s` (so load
    balancers polling readiness stop sending traffic) before it stops answering new requests and finishes
    what is in flight. Our handler goes in front of uvicorn's (installed before the service is
    built), only in a server's main thread, where a Python handler is already there to hand it to."""
    if threading.current_thread() is not threading.main_thread():
        return
    server_handler = signal.getsignal(signal.SIGTERM)
    if not callable(server_handler):
        return

    def on_term(sig: int, frame: Any) -> None:
        if svc.draining:  # the arbiter forwards the signal the process group already got
            return
        svc.start_draining()
        timer = threading.Timer(drain_s, server_handler, (sig, None))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_term)


class Reloader:
    """EE559_RELOAD_S: the store is read again every `every_s` and what EE559_MODELS selects in
    it is served without a restart (the selection itself is read once, at start). New versions are
    checked (sha256) and warmed up before they are added; the catalog, which requests read to pick
    a version, is then replaced in one assignment; a version no longer selected is unloaded
    REQUEST_TIMEOUT_S + 5 s later, when every request that picked it has finished. A version that
    fails to load is refused with one log line (tried again once its store entry changes) and its
    name keeps the version it had. Everything happens in this one thread of each worker."""

    def __init__(self, svc: Any, every_s: float) -> None:
        self.svc, self.every_s = svc, every_s
        self.refused: dict[str, float] = {}  # tag -> modification time of its store entry then
        self.retiring: dict[str, float] = {}  # tag -> when to unload it (time.monotonic)

    def forever(self) -> None:
        failed = ""
        while True:
            time.sleep(self.every_s)
            try:
                self.once()
                failed = ""
            except store.ModelStoreError as exc:  # e.g. a pinned version deleted: said once
                if str(exc) != failed:
                    failed = str(exc)
                    log.error("reload: %s; still serving %s", exc, list(self.svc.catalog.cards))
            except Exception:  # the store could not be read: the served set stays, next round tries again
                log.exception(
                    "reload: the model store could not be read; still serving %s", list(self.svc.catalog.cards)
                )

    def once(self) -> None:
        svc, engine = self.svc, self.svc.engine
        served = dict(svc.catalog.cards)
        tags: list[str] = []
        for tag in store.select(svc.settings.models, svc.settings.precision):
            if tag in engine.cards or self._add(tag):
                tags.append(tag)
            else:  # refused: its name keeps what it served
                name = tag.partition(":")[0]
                tags += [t for t, c in served.items() if c.name == name and t not in tags]
        if tags != list(served):
            svc.catalog = Catalog({tag: engine.cards[tag] for tag in tags})
            log.info("reload: serving %s", ", ".join(tags))
        # A version that failed its golden check at start keeps the worker unready only while it
        # is still selected and not served: a fixed export (loaded above) or a deselection clears it.
        for tag in [t for t in engine.unready if t in engine.cards or t not in tags]:
            log.info(
                "reload: %s no longer fails its golden check (%s)",
                tag,
                "served" if tag in engine.cards else "not selected",
            )
            del engine.unready[tag]
        now = time.monotonic()
        for tag in list(engine.cards):
            if tag in tags:
                self.retiring.pop(tag, None)
            elif now >= self.retiring.setdefault(tag, now + REQUEST_TIMEOUT_S + 5):
                engine.remove(tag)
                del self.retiring[tag]
                log.info("reload: %s unloaded", tag)

    def _add(self, tag: str) -> bool:
        changed = store.modified(tag)
        if self.refused.get(tag) == changed:
            return False
        try:
            self.svc.engine.add(tag, store.load(tag))
        except Exception as exc:  # a checksum, an unreadable card, a graph ONNX Runtime cannot load
            self.refused[tag] = changed
            log.error("reload: %s refused (%s); still serving %s", tag, exc, list(self.svc.catalog.cards))
            return False
        return True


# runner_connection: BentoML's client refreshes its connection pool every 100 requests (or 300 s)
# by closing the old pool under in-flight requests, which fails them under load; we keep one pool.
@bentoml.service(
    name="ee559_inference",
    workers=1,
    traffic={"timeout": REQUEST_TIMEOUT_S},
    runner_connection={"max_requests": 2**62, "max_age": 10.0**9},
    logging={"access": {"enabled": False}},
)
class Inference:
    """EE559_BATCHER=bentoml: the tensor models' sessions in their own service, batched by BentoML's
    dispatcher (text generation keeps its state in the front worker)."""

    def __init__(self) -> None:
        self.engine = Engine({n: m for n, m in STORED.items() if not m.card.is_text}, SETTINGS)

    async def __is_ready__(self) -> bool:
        """Not ready while a session failed its golden check (logged by the engine)."""
        return not self.engine.unready

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    async def infer(self, items: list[Any]) -> list[Any]:
        """items: (model tag, one input row) pairs from any number of requests; each model's rows
        run as one batch. Returns (output rows in card order, provider) per item, in order."""
        groups: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(items):
            groups.setdefault(name, []).append(i)
        results: list[Any] = [None] * len(items)
        loop = asyncio.get_running_loop()
        for name, idx in groups.items():
            x = np.stack([items[i][1] for i in idx])
            outs = await loop.run_in_executor(self.engine.executor, self.engine.run_batch, name, x)
            for j, i in enumerate(idx):
                results[i] = ([o[j] for o in outs], self.engine.providers[name])
        return results


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    name="ee559",
    workers=SETTINGS.workers,
    traffic={"timeout": REQUEST_TIMEOUT_S},
    logging={"access": {"enabled": False}},  # ours (EE559_ACCESS_LOG, service/logs.py) has the request id
)
@_with_models
class EE559:
    """The public service: one route per serving task (service/tasks/), the model cards and the Open
    Inference Protocol (/v2) over every exported model."""

    if SETTINGS.batcher == "bentoml":
        inference = bentoml.depends(Inference)

    def __init__(self) -> None:
        self.settings: Settings = SETTINGS
        self.engine: Engine | None = None
        self.text: dict[str, TextScheduler]
        self.unready: dict[str, str] = {}  # tag -> why its golden check failed (engine.py)
        if SETTINGS.batcher == "bentoml":
            text = {n: m for n, m in STORED.items() if m.card.is_text}
            text_engine = Engine(text, SETTINGS) if text else None  # generation state stays here
            self.text = text_engine.text if text_engine else {}
            self.unready = text_engine.unready if text_engine else {}
            self.catalog = Catalog({n: m.card for n, m in STORED.items()})
        else:
            self.engine = Engine(STORED, SETTINGS)  # loaded and warmed up before the worker reports ready
            self.catalog, self.text = Catalog(self.engine.cards), self.engine.text
            self.unready = self.engine.unready
        self.draining = False
        if SETTINGS.reload_s > 0:
            if self.engine is None:
                log.warning("EE559_RELOAD_S is ignored with EE559_BATCHER=bentoml: restart to serve new models")
            else:
                threading.Thread(target=Reloader(self, SETTINGS.reload_s).forever, daemon=True).start()
        _drain_on_sigterm(self, SETTINGS.drain_s)
        _quiet_gc()  # runs at the worker's start-up, after BentoML built the app around us

    async def infer(self, card: ModelCard, x: np.ndarray) -> tuple[list[np.ndarray], str]:
        """Run a batch `x` (N, ...) of the served version `card`; the rows join other requests' in
        adaptive batches. Returns every output (N, ...) in model-card order, and the provider used."""
        note_model(card.name)
        if self.engine is not None:
            return await self.engine.infer(card.tag, x)
        try:
            rows = await self.inference.infer([(card.tag, row) for row in x])
        except bentoml.exceptions.ServiceUnavailable:
            raise ClientError(503, "overloaded", "the server is at capacity; retry after a second") from None
        outputs = [np.stack([r[0][k] for r in rows]) for k in range(len(rows[0][0]))]
        return outputs, rows[0][1]

    def bentoml_openapi(self) -> dict[str, Any]:
        """BentoML's own OpenAPI document of this service (its probes and metrics)."""
        return EE559.openapi_spec.asdict()  # type: ignore[attr-defined]  # added by @bentoml.service

    def start_draining(self) -> None:
        self.draining = True
        log.info(
            "SIGTERM: readiness is 503 from now; serving %g s more, then finishing what is in flight",
            self.settings.drain_s,
        )

    async def __is_ready__(self) -> bool:
        """GET /readyz (BentoML) and /v2/health/ready: false once SIGTERM arrived."""
        if self.draining:
            return False
        # A version whose session failed its golden check (core/golden.py) keeps the worker
        # unready, as Triton's strict readiness does for a model that failed to load.
        if self.unready:
            return False
        if self.engine is not None:
            return True  # the engine is built in __init__, before the worker serves
        proxy = self.inference
        return await proxy.is_ready(2) if hasattr(proxy, "is_ready") else True


# Request ids, Server-Timing and request metrics on every answer, 401s included (outermost of ours).
EE559.add_asgi_middleware(Observe, access=logs.access if SETTINGS.access_log else None)  # type: ignore[attr-defined]
# The playground's page and files (/, /ui, /docs) in front of the token check: public, they hold no data.
EE559.add_asgi_middleware(Playground)  # type: ignore[attr-defined]
# Built in each worker with its app: the worker's listening socket decides whether a token is needed.
EE559.add_asgi_middleware(TokenAuth, settings=SETTINGS)  # type: ignore[attr-defined]
# GPU memory and utilisation (NVML) read as this worker answers /metrics; nothing where there is no GPU.
EE559.add_asgi_middleware(metrics.GpuMetrics)  # type: ignore[attr-defined]
# The inference routes skip BentoML's middlewares (service/lane.py), keeping ours; EE559_LANE=0: not.
if SETTINGS.lane:
    access = logs.access if SETTINGS.access_log else None
    lane.install(
        EE559,
        lambda timeout_s: lane.timeout(Observe(TokenAuth(http_app, settings=SETTINGS), access=access), timeout_s),
    )
