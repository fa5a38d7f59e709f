"""The one place where seeds and devices are decided (the run directory: core/paths.py)."""

from __future__ import annotations

import random

import numpy as np
import torch

from core.paths import runs_dir

__all__ = ["DEFAULT_SEED", "pick_device", "runs_dir", "seed_everything"]

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
