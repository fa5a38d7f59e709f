"""Serving tasks, keyed by the `task` a model card declares. A task turns the model's raw output
into the HTTP answer; adding a model of an existing task needs no change here."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ClientError


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Classify:
    """Image classification: label, probabilities and top-k."""

    name = "classify"
    fields = ("model", "top_k")

    @staticmethod
    def options(card: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(fields) - set(Classify.fields))
        if unknown:
            raise ClientError(400, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))}; accepted: "
                                                    "model, image, top_k")
        n = len(card["labels"])
        top_k = fields.get("top_k", min(3, n))
        if isinstance(top_k, str) and top_k.strip().isdigit():  # form and query fields are strings
            top_k = int(top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n:
            raise ClientError(400, "bad_field", f"'top_k' must be an integer from 1 to {n}, got {top_k!r}")
        return {"top_k": top_k}

    @staticmethod
    def respond(card: dict[str, Any], logits: np.ndarray, provider: str, top_k: int) -> dict[str, Any]:
        probs = _softmax(logits.astype(np.float64))
        order = np.argsort(-probs)[:top_k]
        labels = card["labels"]
        best = int(order[0])
        return {
            "model": card["name"],
            "version": card["version"],
            "label": labels[best],
            "class_index": best,
            "probabilities": [round(float(p), 6) for p in probs],
            "top_k": [{"label": labels[i], "class_index": int(i), "probability": round(float(probs[i]), 6)}
                      for i in order],
            "provider": provider,
        }


TASKS = {t.name: t for t in (Classify,)}
