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
    base: int = 16  # channels at full resolution; doubled at each downsampling
    # Downsamplings: 3 takes a 32x32 scene to 4x4, where the receptive field spans the whole image,
    # which naming a pixel's shape needs (with 2, a pixel saw about 29x29 around it).
    depth: int = 3
    num_classes: int = 9  # background + one per shape
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


# Checkpoints before 2026-11-27: two downsamplings, no `depth` in the config, layers named thus.
FIRST_LAYOUT = {"enc1.": "encoders.0.", "enc2.": "encoders.1.", "up2.": "ups.0.", "dec2.": "decoders.0."}
FIRST_LAYOUT |= {"up1.": "ups.1.", "dec1.": "decoders.1."}


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.base * 2**i for i in range(cfg.depth + 1)]  # per resolution, full first
        self.norm = Normalize(cfg.mean, cfg.std)
        self.encoders = nn.ModuleList(
            double_conv(c_in, c_out) for c_in, c_out in zip([cfg.in_channels, *widths[:-2]], widths[:-1])
        )
        self.pool = nn.MaxPool2d(2)
        self.mid = double_conv(widths[-2], widths[-1])
        self.ups = nn.ModuleList(nn.ConvTranspose2d(2 * w, w, 2, stride=2) for w in reversed(widths[:-1]))
        self.decoders = nn.ModuleList(double_conv(2 * w, w) for w in reversed(widths[:-1]))
        self.head = nn.Conv2d(cfg.base, cfg.num_classes, 1)

    @classmethod
    def upgrade(cls, config: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
        """A checkpoint of the first layout as this one (training/train.py load_checkpoint)."""
        if "depth" in config or "enc1.0.weight" not in state:
            return config, state
        renamed = {}
        for key, value in state.items():
            old = next((o for o in FIRST_LAYOUT if key.startswith(o)), None)
            renamed[FIRST_LAYOUT[old] + key[len(old) :] if old else key] = value
        return {**config, "depth": 2}, renamed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, skips = self.norm(x), []
        for encode in self.encoders:  # (B, w, H / 2**i, W / 2**i), kept for the skip connection
            h = encode(h)
            skips.append(h)
            h = self.pool(h)
        h = self.mid(h)  # (B, base * 2**depth, H / 2**depth, W / 2**depth)
        for up, decode, skip in zip(self.ups, self.decoders, reversed(skips)):
            h = decode(torch.cat([up(h), skip], dim=1))
        return self.head(h)  # (B, classes, H, W) logits per pixel
