"""The server's log lines: BentoML's text format, or JSON lines for a log pipeline.

EE559_LOG_FORMAT=json turns every line of a worker (BentoML's, uvicorn's, the service's) into one
JSON object: time, level, logger, message, the worker, and the request id (the `X-Request-ID` the
answer carries) when the line was written while answering a request; an exception's traceback in
`exception`. EE559_ACCESS_LOG=1 adds one line per request (logger `ee559.access`, INFO): method,
route template, status, model, queue/compute/total milliseconds and the request id. It is off by
default: a line per request costs throughput. No line holds request data beyond the route's
template (a scanner's random URLs do not reach the log).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from .observe import RequestTiming, current

ACCESS = logging.getLogger("ee559.access")
# The loggers BentoML's server configuration gives handlers (bentoml/_internal/log.py).
_CONFIGURED = ("", "bentoml", "uvicorn.error", "circus")


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process or os.getpid(),
        }
        component = getattr(record, "component", None)  # BentoML's filter: "[entry_service:EE559:1]"
        if component:
            doc["component"] = str(component).strip("[]")
        timing = current()
        if timing is not None:
            doc["request_id"] = timing.id
        fields = getattr(record, "ee559", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def configure(fmt: str) -> None:
    """Give every handler BentoML configured the JSON formatter (fmt "json"); "text" keeps its own."""
    if fmt != "json":
        return
    formatter = JsonLines()
    for name in _CONFIGURED:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)


def access(method: str, route: str, status: int, timing: RequestTiming, total_s: float) -> None:
    fields = {
        "method": method,
        "route": route,
        "status": status,
        "model": timing.model,
        "queue_ms": round(timing.queue * 1e3, 3),
        "compute_ms": round(timing.compute * 1e3, 3),
        "total_ms": round(total_s * 1e3, 3),
        "request_id": timing.id,
    }
    ACCESS.info(
        "%s %s %d model=%s queue_ms=%.3f compute_ms=%.3f total_ms=%.3f id=%s",
        method,
        route,
        status,
        timing.model or "-",
        fields["queue_ms"],
        fields["compute_ms"],
        fields["total_ms"],
        timing.id,
        extra={"ee559": fields},
    )
