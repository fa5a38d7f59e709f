"""The inference lane: what a POST to a task route or to /v2/.../infer runs through.

BentoML builds one Starlette app per worker with its own middlewares around ours: its request
metrics (`bentoml_service_*`), an OpenTelemetry span per request (recording or not), its timeout,
its request context, Starlette's error and exception layers and two routers (its own, then the
mount of ours). For the service's inference routes those cost more CPU than everything the
service does for the request (profiled with py-spy under wrk: docs/benchmarks.md). BentoML keeps
the lifecycle, workers, probes, /metrics and every other route; the inference routes go straight
to the service's own app through the layers whose behaviour they need:

    timeout (BentoML's, with service/patches.py's fix: 504 after REQUEST_TIMEOUT_S)
      -> Observe (request id, Server-Timing, the ee559_* request metrics, the access log)
        -> TokenAuth (the bearer token, decided per worker as on every route)
          -> service/app.py's Starlette app (its routing, error handlers and ClientError answers)

What they go without: BentoML's `bentoml_service_request_*` series (ours, `ee559_http_*`, count
every route; dashboards and rules read ours) and BentoML's OpenTelemetry spans (no exporter is
configured; a deployment that configures one sets EE559_LANE=0 to have spans for every route).
The playground's pages and GPU readings are not on these routes. EE559_LANE=0 sends every request
through BentoML's whole stack, as before.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .observe import route_label
from .settings import REQUEST_TIMEOUT_S

log = logging.getLogger("ee559.lane")


@cache
def _post_routes() -> frozenset[str]:
    """The templates of the service's POST routes: the tasks and v2 infer, its only ones."""
    from .app import http_app

    return frozenset(
        str(getattr(r, "path", "")) for r in http_app.routes if "POST" in (getattr(r, "methods", None) or ())
    )


def in_lane(scope: Scope) -> bool:
    """A POST to one of the service's inference routes; everything else, unknown paths
    included, goes through BentoML's stack."""
    return scope["type"] == "http" and scope["method"] == "POST" and route_label(scope["path"]) in _post_routes()


class Lane:
    """The worker's ASGI app: `lane` for in_lane requests, BentoML's `full` app for the rest
    (lifespan included)."""

    def __init__(self, full: ASGIApp, lane: ASGIApp) -> None:
        self.full, self.lane = full, lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if in_lane(scope):
            return await self.lane(scope, receive, send)
        return await self.full(scope, receive, send)


def bypassed(service: Any) -> list[str]:
    """The BentoML settings in force that only BentoML's stack applies (CORS, a concurrency
    limit): with any of them the lane stays off, so that they hold on every route."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    found = ["http.cors"] if BentoMLContainer.http.cors.enabled.get() else []
    if (service.config.get("traffic") or {}).get("max_concurrency"):
        found.append("traffic.max_concurrency")
    return found


def install(service: Any, build: Any) -> None:
    """Make `service`'s worker app a Lane: BentoML's app for it, and `build(timeout_s)`'s app
    (called once per worker, when the worker builds its app, with the service's traffic timeout)
    for the inference routes. Other services (the batching service of EE559_BATCHER=bentoml) keep
    BentoML's app, and so does `service` where `bypassed` finds a setting only BentoML applies."""
    from _bentoml_sdk.service.factory import Service

    original = Service.to_asgi
    if getattr(original, "ee559_lane", False):  # installed already (a test importing twice)
        original = original.__wrapped__

    def to_asgi(self: Any, is_main: bool = True) -> ASGIApp:
        app = original(self, is_main)
        if self is not service:
            return app
        if found := bypassed(self):
            log.warning("EE559_LANE: off, so that %s hold on the inference routes too", ", ".join(found))
            return app
        return Lane(app, build(float((self.config.get("traffic") or {}).get("timeout") or REQUEST_TIMEOUT_S)))

    to_asgi.ee559_lane = True  # type: ignore[attr-defined]
    to_asgi.__wrapped__ = original  # type: ignore[attr-defined]
    Service.to_asgi = to_asgi


def timeout(app: ASGIApp, seconds: float) -> ASGIApp:
    """BentoML's TimeoutMiddleware (its __call__ fixed by service/patches.py) around `app`."""
    return TimeoutMiddleware(app, timeout=seconds)
