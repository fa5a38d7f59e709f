"""Pieces shared by the image models."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std inside the graph, so the exported ONNX file takes raw [0, 1] pixels."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_down(channels: int, width: int = 32) -> list[nn.Module]:
    """28x28 -> 7x7 in two strided convolutions: (B, c, 28, 28) -> (B, 2 * width, 7, 7)."""
    return [
        nn.Conv2d(channels, width, 3, 2, 1),
        nn.ReLU(),  # (B, width, 14, 14)
        nn.Conv2d(width, 2 * width, 3, 2, 1),
        nn.ReLU(),
    ]  # (B, 2 * width, 7, 7)


def conv_up(channels: int, width: int = 32) -> list[nn.Module]:
    """The mirror of conv_down: (B, 2 * width, 7, 7) -> (B, c, 28, 28), without a final activation."""
    return [
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
        nn.ReLU(),  # (B, width, 14, 14)
        nn.ConvTranspose2d(width, channels, 4, 2, 1),
    ]  # (B, c, 28, 28)
