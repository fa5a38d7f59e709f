"""Serving tasks, one file each, keyed by the `task` a model card declares. A task says which
fields it accepts, what the model's input is and how its outputs become the answer; adding a
model of an existing task needs no change here."""

from __future__ import annotations

from .base import Task
from .classify import Classify
from .denoise import Denoise
from .embed import Embed
from .explain import Explain
from .generate_text import GenerateText
from .reconstruct import Reconstruct
from .samples import Samples
from .segment import Segment

TASKS: dict[str, Task] = {
    t.name: t for t in (Classify(), Explain(), Segment(), Denoise(), Embed(), Reconstruct(), Samples(), GenerateText())
}

__all__ = ["TASKS", "Task"]
