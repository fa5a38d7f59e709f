"""The one place where seeds, devices and the run directory are decided."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

DEFAULT_SEED = 1234


def seed_everything(seed: int = DEFAULT_SEED) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def runs_dir() -> Path:
    """Root of every artifact (checkpoints, ONNX files, model cards, the BentoML store).

    `EE559_RUNS` overrides it; the default is `runs/` beside the sources (git-ignored).
    """
    return Path(os.environ.get("EE559_RUNS", Path(__file__).resolve().parent.parent / "runs"))
