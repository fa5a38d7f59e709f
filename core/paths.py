"""Where artifacts go: one runs directory for checkpoints, ONNX files, cards, the model store and
reports, never the source tree."""

from __future__ import annotations

import os
from pathlib import Path


def runs_dir() -> Path:
    """`EE559_RUNS`, or `runs/` beside the sources (git-ignored)."""
    return Path(os.environ.get("EE559_RUNS", Path(__file__).resolve().parent.parent / "runs"))
