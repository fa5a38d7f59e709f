"""Optional bearer-token authentication for every route of the service.

Set EE559_API_TOKEN to require `Authorization: Bearer <token>` (Triton clients pass it with
`headers=`). Probes (/livez, /readyz, /healthz, /v2/health/*) and /metrics stay open unless
EE559_AUTH_PROBES=1, so orchestrators and Prometheus keep working. No route loads or uploads
models, authenticated or not.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/v2/health/live", "/v2/health/ready")


class TokenAuth:
    def __init__(self, app: ASGIApp, token: str = "", auth_probes: bool = False) -> None:
        self.app = app
        self.token = token.encode()
        self.open = () if auth_probes else OPEN_PATHS

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
