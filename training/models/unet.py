"""Small U-Net (course chapter: deep models for computer vision): an encoder-decoder with skip
connections between matching resolutions, giving a class per pixel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import Normalize


@dataclass
class UNetConfig:
    in_channels: int = 3
    base: int = 16  # channels at full resolution; doubled at each of the two downsamplings
    num_classes: int = 5  # background + one per shape
    mean: float = 0.4
    std: float = 0.3


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        b = cfg.base
        self.norm = Normalize(cfg.mean, cfg.std)
        self.enc1, self.enc2, self.mid = (
            double_conv(cfg.in_channels, b),
            double_conv(b, 2 * b),
            double_conv(2 * b, 4 * b),
        )
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * b, 2 * b, 2, stride=2), double_conv(4 * b, 2 * b)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * b, b, 2, stride=2), double_conv(2 * b, b)
        self.head = nn.Conv2d(b, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(self.norm(x))  # (B, b, H, W)
        e2 = self.enc2(self.pool(e1))  # (B, 2b, H/2, W/2)
        m = self.mid(self.pool(e2))  # (B, 4b, H/4, W/4)
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))  # (B, 2b, H/2, W/2)
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))  # (B, b, H, W)
        return self.head(d1)  # (B, classes, H, W) logits per pixel
