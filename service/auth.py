"""Bearer-token authentication for every route of the service, on by default where it is exposed.

Who needs a token (EE559_AUTH):
- `auto` (default): when EE559_API_TOKEN is set, or when the server listens on an address other
  than loopback (`--host 0.0.0.0`, as in the container). With no EE559_API_TOKEN there, the first
  worker generates one into the key file (EE559_API_TOKEN_FILE, default
  $BENTOML_HOME/ee559_api_token, mode 600; reused on restart, shared by every worker) and the log
  says where it is, as TorchServe does. `make run` on 127.0.0.1 stays open.
- `token`: always (EE559_API_TOKEN, else the key file), loopback included.
- `off`: never, wherever it listens: the operator says so explicitly.

Clients send `Authorization: Bearer <token>` (Triton clients pass it with `headers=`). Probes
(/livez, /readyz, /healthz, /v2/health/*) and /metrics stay open unless EE559_AUTH_PROBES=1, so
orchestrators and Prometheus keep working. No route loads or uploads models, authenticated or not.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from core import store

from .settings import Settings

log = logging.getLogger("ee559.auth")
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/v2/health/live", "/v2/health/ready")


def listening_address(argv: Sequence[str] = sys.argv) -> str | None:
    """The address this BentoML worker listens on: the socket its arbiter handed it (`--fd N`).
    None outside a worker (nothing listens)."""
    try:
        fd = int(argv[list(argv).index("--fd") + 1])
        with socket.socket(fileno=os.dup(fd)) as sock:
            name = sock.getsockname()
    except (ValueError, IndexError, OSError):
        return None
    return name[0] if isinstance(name, tuple) else "unix:" + str(name)


def exposed(address: str | None) -> bool:
    """Reachable from other machines: any IP address but loopback (a Unix socket is local)."""
    if address is None or address.startswith("unix:"):
        return False
    try:
        return not ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return True


def token_file(settings: Settings) -> Path:
    return Path(settings.api_token_file or Path(store.home()).expanduser() / "ee559_api_token")


def key_file_token(path: Path) -> tuple[str, bool]:
    """The token in `path`, generated there (mode 600) if the file is missing; True if this call
    wrote it. Workers starting together agree: the file appears whole (written, flushed to disk,
    then hard-linked into place), once. A key file others can read is refused."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(draft, path)
            return path.read_text().strip(), True
        except FileExistsError:  # another worker was first
            pass
        finally:
            draft.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        raise ValueError(f"the API key file {path} can be read by others than its owner: chmod 600 it")
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"the API key file {path} is empty: delete it to have a token generated")
    return token, False


def required_token(settings: Settings, address: str | None) -> str:
    """The token every request must bring, or "" when the service is open."""
    if settings.auth == "off":
        if exposed(address):
            log.warning("EE559_AUTH=off: every route is open to anyone who reaches %s", address)
        return ""
    if settings.api_token:
        return settings.api_token
    if address is None and settings.auth == "auto":
        log.warning(
            "could not tell where this server listens (not a BentoML worker?): serving without a token; "
            "set EE559_AUTH=token or EE559_API_TOKEN where it is exposed"
        )
    if settings.auth == "token" or exposed(address):
        path = token_file(settings)
        token, generated = key_file_token(path)
        log.warning(
            "listening on %s: every route but the probes and /metrics needs Authorization: Bearer <token>; "
            "the token is in %s%s (set EE559_API_TOKEN to choose it, EE559_AUTH=off to serve without one)",
            address,
            path,
            " (generated now)" if generated else "",
        )
        return token
    return ""


class TokenAuth:
    """ASGI middleware; the token is decided when the worker builds its app (see the module)."""

    def __init__(self, app: ASGIApp, settings: Settings, address: str | None = None) -> None:
        self.app = app
        self.token = required_token(settings, address or listening_address()).encode()
        self.open = () if settings.auth_probes else OPEN_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.token or scope["type"] not in ("http", "websocket") or scope.get("path") in self.open:
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, value = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token):
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return await send({"type": "websocket.close", "code": 1008})
        body = b'{"error":"missing or wrong bearer token: send Authorization: Bearer <token>"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
