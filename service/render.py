"""Pictures for answers with format=png: an input beside what the model made of it, or a grid of
samples. Arrays are (H, W, 3) in [0, 1] here; core.images.png_bytes encodes them."""

from __future__ import annotations

import numpy as np

from core.images import png_bytes

# One colour per class for rendered masks: background black, then distinct hues.
PALETTE = (
    np.array(
        [
            [0, 0, 0],
            [230, 25, 75],
            [60, 180, 75],
            [255, 225, 25],
            [0, 130, 200],
            [245, 130, 48],
            [145, 30, 180],
            [70, 240, 240],
            [240, 50, 230],
            [210, 245, 60],
        ],
        dtype=np.float32,
    )
    / 255
)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(C, H, W) model input or output -> (H, W, 3) for display."""
    return pixels.transpose(1, 2, 0) if len(pixels) == 3 else np.repeat(pixels[0][..., None], 3, axis=-1)


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) in [0, 1], black -> red -> yellow -> white."""
    return np.stack([np.clip(3 * heat, 0, 1), np.clip(3 * heat - 1, 0, 1), np.clip(3 * heat - 2, 0, 1)], axis=-1)


def mask_colours(mask: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3)."""
    return PALETTE[mask % len(PALETTE)]


def side_by_side(left: np.ndarray, right: np.ndarray, scale: int = 4) -> bytes:
    """Two (H, W, 3) images as one PNG, enlarged `scale` times."""
    return png_bytes(np.concatenate([left, right], axis=1).transpose(2, 0, 1), scale)


def grid(images: np.ndarray, scale: int = 2, pad: int = 2) -> bytes:
    """(N, C, H, W) images as one PNG grid, ceil(sqrt(N)) columns, on a grey background."""
    n, _, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 0.5, dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = as_rgb(img)
    return png_bytes(canvas.transpose(2, 0, 1), scale)
