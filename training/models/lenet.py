"""LeNet-5 style convolutional network (course chapter: convolutional networks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import Normalize


@dataclass
class LeNetConfig:
    in_channels: int = 1
    conv_channels: tuple[int, int] = (16, 32)
    hidden: int = 120
    num_classes: int = 10
    dropout: float = 0.25
    mean: float = 0.1307
    std: float = 0.3081


class LeNet(nn.Module):
    def __init__(self, cfg: LeNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c1, c2 = cfg.conv_channels
        self.features = nn.Sequential(
            Normalize(cfg.mean, cfg.std),
            nn.Conv2d(cfg.in_channels, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 5 * 5, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, 1, 28, 28) -> (B, num_classes) logits
