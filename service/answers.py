"""What every answer looks like: JSON bodies, the envelope of task answers, and client errors
(counted in ee559_rejected_requests_total)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from core.card import ModelCard

from . import metrics
from .errors import ClientError


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def envelope(card: ModelCard, provider: str, body: dict[str, Any]) -> dict[str, Any]:
    """Every task answer: the model clients named (the family), the version that answered, the
    task's fields, and the execution provider."""
    return {"model": card.family, "version": card.version, **body, "provider": provider}


def task_answer(card: ModelCard, provider: str, body: dict[str, Any] | Response) -> Response:
    """A task's answer in its envelope; pictures (format=png) go as they are."""
    return body if isinstance(body, Response) else json_response(envelope(card, provider, body))


def error_response(exc: ClientError) -> Response:
    metrics.rejected_requests().labels(reason=exc.reason).inc()
    headers = {"Retry-After": str(exc.retry_after)} if exc.status in (429, 503) else None
    return json_response({"error": exc.message}, exc.status, headers)


async def client_error_handler(request: Request, exc: Exception) -> Response:
    """The one place a ClientError raised anywhere in a route becomes its answer."""
    assert isinstance(exc, ClientError)
    return error_response(exc)
