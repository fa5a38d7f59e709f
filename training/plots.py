"""The loss curve of a training run as a PNG (core/plots.py: Pillow only)."""

from __future__ import annotations

from pathlib import Path

from core.plots import PALETTE, Line, chart, save

SERIES = ("train_loss", "val_loss")


def loss_curve_png(history: list[dict[str, float]], path: Path, title: str, size: tuple[int, int] = (640, 400)) -> Path:
    """Training and validation loss per epoch, on shared axes."""
    lines = [
        Line(key.replace("_", " "), [(i + 1, r[key]) for i, r in enumerate(history) if key in r], PALETTE[n])
        for n, key in enumerate(SERIES)
    ]
    return save([chart([line for line in lines if line.points], title, "epoch", "loss", size)], path)
