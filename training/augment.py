"""Training-time augmentation: what real inputs vary in that a small training set does not show.

`digits`: people's handwriting, scanned or drawn in the playground, is slanted, rotated, larger or
smaller, off-centre by a pixel or two, and written with thicker or thinner pens than the 5,000
scans the digit models learn from. Each batch gets a random small affine map (rotation within
+-12 degrees, scale within +-12%, shear within +-0.15, shift within +-1.4 pixels) and, for half of
its images, a thicker or a thinner stroke. Validation and test data are never augmented.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F


def _uniform(n: int, half_width: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * 2 - 1) * half_width


def digits(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) ink-bright digits in [0, 1] -> the same, randomly transformed."""
    b = x.shape[0]
    angle, scale = _uniform(b, math.radians(12), gen), 1 + _uniform(b, 0.12, gen)
    shear, tx, ty = _uniform(b, 0.15, gen), _uniform(b, 0.1, gen), _uniform(b, 0.1, gen)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid maps output coordinates to input ones: the inverse of the transform applied
    theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    pen = torch.rand(b, generator=gen).to(x.device)[:, None, None, None]
    thicker = torch.maximum(out, 0.75 * F.max_pool2d(out, 3, 1, 1))
    thinner = torch.clamp(out * 1.5 - 0.5, 0.0, 1.0)  # the stroke's faint edges go
    out = torch.where(pen < 0.25, thicker, torch.where(pen < 0.5, thinner, out))
    return out.clamp(0.0, 1.0)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {"digits": digits}
