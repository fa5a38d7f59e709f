"""JSON-schema pieces for the OpenAPI document (service/openapi.py) and the task classes that
declare their request fields and answers with them."""

from __future__ import annotations

from typing import Any

INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
ANY_ARRAY = {"type": "array", "items": {}}
BINARY = {"type": "string", "format": "binary"}


def arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def obj(properties: dict[str, Any], required: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), **extra}
