"""Fixes to BentoML, applied before the service's app is built (service.service imports it), and
only to the BentoML versions they were checked against: an upgrade fails loudly here until someone
checks whether the new version still needs them (and adds the version to CHECKED_VERSIONS).

BentoML's TimeoutMiddleware (`traffic.timeout`) schedules `loop.call_later(timeout, ...)` for every
request and never cancels it: each timer keeps the request's context (its OpenTelemetry span,
futures, closures) alive for the whole timeout after the answer went out, so resident memory
follows the request rate (the soak's figures: docs/benchmarks.md), and an application error waits
for the timeout before surfacing. Here the timer is cancelled as soon as the response starts or the
application returns, which lets asyncio drop it.

BentoML's HTTP workers share one listening socket, made by its arbiter: whichever worker's event
loop is free takes the next connection, and a client that opens a few persistent connections at
once (a proxy, a load generator) can find all of them on one worker while the others idle (issue
#17: runs of `make bench` with every connection on one worker). The API server's socket is made
with SO_REUSEPORT here, which circus (BentoML's process manager) supports: each worker then gets a
listening socket of its own on the same port, bound as circus spawns it, and the kernel spreads new
connections over them by a hash of their addresses, whichever worker is busy. (Linux lets only
processes of the same user join such a group.) EE559_REUSEPORT=0 keeps the shared socket.

BentoML's request metrics (`bentoml_service_request_*`, RunnerTrafficMetricsMiddleware) label each
request with its raw path: every distinct URL a client or a scanner sends (`/v2/models/<random>`,
`/wp-login.php`) adds series that live as long as the server. Their `endpoint` label becomes the
route's template or "other" (service/observe.py's `route_label`), as ours.
"""

from __future__ import annotations

import asyncio
import socket
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


API_SERVER_SOCKET = "_bento_api_server"  # _bentoml_impl/server/serving.py API_SERVER_NAME


def _reuseport_init(init: Any) -> Any:
    """CircusSocket.__init__, the API server's socket made with so_reuseport and the config
    circus's processes rebuild it from (`_cfg`, which only sockets read from a config file have)."""

    def __init__(self: Any, name: str = "", *args: Any, **kwargs: Any) -> None:
        if (
            name != API_SERVER_SOCKET
            or args
            or kwargs.get("path") is not None
            or not kwargs.get("port")  # port 0 (any free port): one port needs the shared socket
            or "so_reuseport" in kwargs  # a worker's own socket, made by circus from `_cfg`
        ):
            return init(self, name, *args, **kwargs)
        init(self, name, **{**kwargs, "so_reuseport": True})
        if self.so_reuseport:  # False where the platform has no SO_REUSEPORT: the shared socket, as before
            # circus does not bind a SO_REUSEPORT socket in the arbiter: nothing would notice a
            # port already taken until each worker failed to start, and a stale server of ours
            # (same user, SO_REUSEPORT too) would silently share the traffic. A plain bind finds both.
            with socket.socket(self.family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, self.port))
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
            self._cfg = {
                "name": name,
                "host": self.host,
                "port": self.port,
                "family": socket.AddressFamily(self.family).name,
                "backlog": self.backlog,
                "so_reuseport": True,
            }

    return __init__


def _sockets_fds(self: Any) -> dict[str, int] | None:
    """circus's Process._get_sockets_fds, which makes a SO_REUSEPORT socket per process only when
    the watcher's `cmd` names it: BentoML names it in `args` (`--fd $(circus.sockets.NAME)`), so
    circus would hand every worker the arbiter's socket, unbound. Here `cmd` or `args` may name it."""
    from circus.sockets import CircusSocket

    fds = None
    if self.watcher is not None and self.watcher.sockets is not None:
        fds = self.watcher._get_sockets_fds()
        command = f"{self.watcher.cmd} {self.watcher.args}"
        for name, sock in self.watcher.sockets.items():
            if sock.so_reuseport and f"circus.sockets.{name}" in command:
                own = CircusSocket.load_from_config(sock._cfg)
                own.bind_and_listen()
                fds[name] = own.fileno()
                self._sockets.append(own)  # kept until the process is spawned, as circus does
    return fds


def reuseport() -> None:
    """Make BentoML's API server socket one SO_REUSEPORT socket per worker (see the module)."""
    from circus.process import Process
    from circus.sockets import CircusSocket

    if CircusSocket not in _PATCHED:
        CircusSocket.__init__ = _reuseport_init(CircusSocket.__init__)
        Process._get_sockets_fds = _sockets_fds
        _PATCHED.add(CircusSocket)


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
