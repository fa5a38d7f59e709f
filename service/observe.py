"""Which request it was and where its time went, on every answer and in the metrics.

Every answer of the service but the probes' and /metrics' carries (not BentoML's own 504 at its
timeout, sent from outside the middlewares a service may add):
- `X-Request-ID`: the client's when it sent a sane one (1 to 128 of A-Z a-z 0-9 . _ : + / = -),
  else one generated here; a v2 answer's `id` defaults to it.
- `Server-Timing: queue;dur=..., compute;dur=..., total;dur=...` in milliseconds: waiting for a
  batch, the batch's run (the split Triton reports), and everything until the answer started.

Metrics (service/metrics.py): requests by route, model and outcome (status class), requests in
flight, duration by route, queue and compute seconds per request by model, rows queued by model.
`route` is the matched route's template (`/models/{name}`) or "other": no label takes request
data, so a scanner's random URLs add no series. BentoML's own request metrics label by raw path;
service/patches.py maps their label the same way.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .auth import OPEN_PATHS

# Probes and /metrics: answered as they are, uncounted (as BentoML's metrics skip them).
UNOBSERVED = frozenset(OPEN_PATHS)
# BentoML's own routes besides the probes, kept as labels.
BENTOML_ROUTES = frozenset(("/", "/docs", "/docs.json", "/schema.json"))
_SANE_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
_labels: dict[str, str] = {}


@dataclass(slots=True)
class RequestTiming:
    id: str
    start: float
    queue: float = 0.0  # seconds waiting for a batch (or, for text generation, for a slot)
    compute: float = 0.0  # seconds of the batch it ran in
    model: str = ""  # the graph that served it


CURRENT: ContextVar[RequestTiming | None] = ContextVar("ee559_request", default=None)


def current() -> RequestTiming | None:
    """The request being answered in this task (None outside a request)."""
    return CURRENT.get()


def note_model(name: str) -> None:
    timing = CURRENT.get()
    if timing is not None:
        timing.model = name


def route_label(path: str) -> str:
    """The template of the route that serves `path`, or "other"; at most a few thousand paths are
    remembered (a flood of random paths only empties the memo)."""
    label = _labels.get(path)
    if label is None:
        label = _match(path)
        if len(_labels) >= 4096:
            _labels.clear()
        _labels[path] = label
    return label


def _match(path: str) -> str:
    from .app import http_app  # the routes import the tasks, which import this module

    if path in UNOBSERVED or path in BENTOML_ROUTES:
        return path
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    for route in http_app.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:  # PARTIAL: the path is right, the method is not
            return str(getattr(route, "path", "other"))
    return "other"


def request_id(scope: Scope) -> str:
    for key, value in scope.get("headers") or ():
        if key == b"x-request-id":
            return value.decode("ascii") if _SANE_ID.fullmatch(value) else uuid.uuid4().hex
    return uuid.uuid4().hex


def server_timing(timing: RequestTiming, now: float) -> bytes:
    return (
        f"queue;dur={timing.queue * 1e3:.3f}, compute;dur={timing.compute * 1e3:.3f}, "
        f"total;dur={(now - timing.start) * 1e3:.3f}"
    ).encode()


class Observe:
    """ASGI middleware: the request id, Server-Timing and the request metrics; `access` (if given)
    is called once per request, after its answer, with (method, route, status, timing, seconds)."""

    def __init__(
        self, app: ASGIApp, access: Callable[[str, str, int, RequestTiming, float], None] | None = None
    ) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNOBSERVED:
            return await self.app(scope, receive, send)
        route = route_label(scope["path"])
        timing = RequestTiming(request_id(scope), time.perf_counter())
        token = CURRENT.set(timing)
        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [
                    (b"x-request-id", timing.id.encode()),
                    (b"server-timing", server_timing(timing, time.perf_counter())),
                ]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        in_flight = metrics.requests_in_flight()
        in_flight.inc()
        outcome = "error"
        try:
            await self.app(scope, receive, observed_send)
            outcome = f"{status // 100}xx" if status else "none"
        except asyncio.CancelledError:  # the server's timeout (answered 504 outside) or shutdown
            outcome = "cancelled"
            raise
        finally:
            in_flight.dec()
            elapsed = time.perf_counter() - timing.start
            metrics.requests().labels(route=route, model=timing.model, outcome=outcome).inc()
            metrics.request_seconds().labels(route=route).observe(elapsed)
            if self.access is not None:
                self.access(scope["method"], route, status, timing, elapsed)
            CURRENT.reset(token)
