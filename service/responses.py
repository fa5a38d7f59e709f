"""JSON responses and client-error responses (counted in ee559_rejected_requests_total)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from . import metrics
from .errors import ClientError


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json", headers=headers)


def error_response(exc: ClientError) -> Response:
    metrics.rejected_requests().labels(reason=exc.reason).inc()
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return json_response({"error": exc.message}, exc.status, headers)
