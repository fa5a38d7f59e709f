"""The loss curve of a training run as a PNG (Pillow only: no plotting library to install)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = {"train_loss": (31, 119, 180), "val_loss": (255, 127, 14)}


def loss_curve_png(history: list[dict[str, float]], path: Path, title: str, size: tuple[int, int] = (640, 400)) -> Path:
    """Training and validation loss per epoch, on shared axes with their ranges written out."""
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    series = {k: [r[k] for r in history if k in r] for k in COLOURS}
    values = [v for vs in series.values() for v in vs]
    draw.text((left, 10), title, fill="black", font=font)
    if not values:
        img.save(path)
        return path
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    epochs = max(len(vs) for vs in series.values())

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (w - left - right) * (i / max(epochs - 1, 1))
        return x, top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        y = xy(0, v)[1]
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((5, y - 6), f"{v:.4g}", fill="black", font=font)
    draw.text((left, h - bottom + 8), "epoch 1", fill="black", font=font)
    draw.text((w - right - 60, h - bottom + 8), f"epoch {epochs}", fill="black", font=font)
    for n, (key, colour) in enumerate(COLOURS.items()):
        vs = series[key]
        if len(vs) > 1:
            draw.line([xy(i, v) for i, v in enumerate(vs)], fill=colour, width=2)
        elif vs:
            x, y = xy(0, vs[0])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((left + 160 * n + 200, h - bottom + 24), key.replace("_", " "), fill=colour, font=font)
    img.save(path)
    return path
