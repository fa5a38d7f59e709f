"""Client errors, and the checks of request fields that raise them.

A ClientError carries a status, a reason label for the metrics and a message that says what was
wrong and what is accepted: never a stack trace, a path or an internal name, and never more of
what the client sent than `shown(value)`, a short, flat rendering of it.
"""

from __future__ import annotations

import re
from typing import Any


class ClientError(Exception):
    def __init__(self, status: int, reason: str, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # a fixed label for ee559_rejected_requests_total
        self.message = message
        self.retry_after = retry_after  # seconds, sent as Retry-After with a 429 or 503


def shown(value: Any, limit: int = 40) -> str:
    """What a client sent, for an error message: its type for containers (never walked: a value
    nested a thousand levels deep must not cost a recursion), a truncated repr for scalars."""
    if isinstance(value, (dict, list, tuple)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)} item(s)"
    text = repr(value) if isinstance(value, str) else str(value)
    return text[:limit] + ("..." if len(text) > limit else "")


def check_fields(fields: dict[str, Any], accepted: tuple[str, ...], image: bool = True) -> None:
    unknown = sorted(str(k) for k in set(fields) - set(accepted))
    if unknown:
        names = ", ".join(shown(k, 32) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ClientError(
            400,
            "unknown_field",
            f"unknown field(s) {names}; accepted: {', '.join((*(('image',) if image else ()), *accepted))}",
        )


_DECIMAL = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() admits '²' and '①', int() does not


def int_field(fields: dict[str, Any], name: str, lo: int, hi: int, default: int) -> int:
    """An integer option from lo to hi; form and query fields arrive as strings of digits."""
    value = fields.get(name, default)
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ClientError(400, "bad_field", f"'{name}' must be an integer from {lo} to {hi}, got {shown(value)}")
    return value


def choice_field(fields: dict[str, Any], name: str, accepted: tuple[str, ...], default: str) -> str:
    value = fields.get(name, default)
    if value not in accepted:
        raise ClientError(400, "bad_field", f"'{name}' must be one of {', '.join(accepted)}, got {shown(value)}")
    return str(value)
