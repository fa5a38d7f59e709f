"""Fixes to BentoML, applied before the service's app is built (service.service imports it), and
only to the BentoML versions they were checked against: an upgrade fails loudly here until someone
checks whether the new version still needs them (and adds the version to CHECKED_VERSIONS).

BentoML's TimeoutMiddleware (`traffic.timeout`) schedules `loop.call_later(timeout, ...)` for every
request and never cancels it: each timer keeps the request's context (its OpenTelemetry span,
futures, closures) alive for the whole timeout after the answer went out, so resident memory
follows the request rate (the soak's figures: docs/benchmarks.md), and an application error waits
for the timeout before surfacing. Here the timer is cancelled as soon as the response starts or the
application returns, which lets asyncio drop it.

BentoML's request metrics (`bentoml_service_request_*`, RunnerTrafficMetricsMiddleware) label each
request with its raw path: every distinct URL a client or a scanner sends (`/v2/models/<random>`,
`/wp-login.php`) adds series that live as long as the server. Their `endpoint` label becomes the
route's template or "other" (service/observe.py's `route_label`), as ours.
"""

from __future__ import annotations

import asyncio
from typing import Any

import bentoml
from bentoml._internal.server.http.instruments import HTTPTrafficMetricsMiddleware, RunnerTrafficMetricsMiddleware
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from .observe import route_label

# The versions whose TimeoutMiddleware.__call__ was read and found to leak its timer, and whose
# traffic metrics middlewares were read and found to label by raw path.
CHECKED_VERSIONS = ("1.4.40",)


async def _timeout_call(self: TimeoutMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    started = loop.create_future()  # done when the response starts, the app returns, or time is up
    timer = loop.call_later(self.timeout, self._set_timer_out, started)

    def settle(*_: Any) -> None:
        if not started.done():
            started.set_result(None)
        timer.cancel()

    async def _send(message: Message) -> None:
        settle()
        await send(message)

    app = asyncio.ensure_future(self.app(scope, receive, _send))
    app.add_done_callback(settle)
    try:
        await started
    except asyncio.CancelledError:
        app.cancel()
        timer.cancel()
        raise
    except TimeoutError:
        if app.cancel():
            await JSONResponse({"error": f"not answered within {self.timeout:g} s"}, status_code=504)(
                scope, receive, send
            )
            return
    await app


class _RouteLabels:
    """One of BentoML's request metrics, its `endpoint` label bounded to the route templates."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric

    def labels(self, *args: Any, **kwargs: Any) -> Any:
        if "endpoint" in kwargs:
            kwargs["endpoint"] = route_label(str(kwargs["endpoint"]))
        return self._metric.labels(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


_PATCHED: set[type] = set()
_LABELLED = (
    "metrics_request_duration",
    "metrics_request_total",
    "metrics_request_in_progress",
    "metrics_websocket_connections",  # a WebSocket handshake to any path is labelled too
    "metrics_websocket_data_received",
    "metrics_websocket_data_sent",
)


def _bounded(setup: Any) -> Any:
    def _setup(self: Any) -> None:
        setup(self)
        for name in _LABELLED:
            if hasattr(self, name):  # the WebSocket ones are RunnerTrafficMetricsMiddleware's only
                setattr(self, name, _RouteLabels(getattr(self, name)))

    return _setup


class UncheckedVersion(RuntimeError):
    """The installed BentoML is not one the patch was checked against."""


def apply(version: str = bentoml.__version__) -> None:
    if version not in CHECKED_VERSIONS:
        raise UncheckedVersion(
            f"service/patches.py replaces BentoML's TimeoutMiddleware.__call__, checked against BentoML "
            f"{', '.join(CHECKED_VERSIONS)}; this is {version}. Read bentoml/_internal/server/http/traffic.py: if "
            "its call_later timer is still never cancelled, add the version to CHECKED_VERSIONS; else drop the patch."
        )
    TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]
    for cls in (HTTPTrafficMetricsMiddleware, RunnerTrafficMetricsMiddleware):
        if cls not in _PATCHED:  # once, though tests apply() again
            cls._setup = _bounded(cls._setup)  # type: ignore[method-assign]
            _PATCHED.add(cls)
