"""Client errors: a status, a reason label for the metrics, and a message that says what was
wrong and what is accepted. Never a stack trace, a path or an internal name."""

from __future__ import annotations


class ClientError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # a fixed label for ee559_rejected_requests_total
        self.message = message
