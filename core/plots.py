"""Line charts as PNG with Pillow only (no plotting library to install): training's loss curves,
the benchmark's throughput against latency, the load test's latency over time.

`chart` draws one panel: lines of (x, y) points on linear or logarithmic axes with ticks, a
legend, and an optional label at each point; `save` lays panels out in a grid and writes the PNG.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Matplotlib's "tab10": distinguishable, and familiar from the course's notebooks.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)


@dataclass
class Line:
    label: str
    points: list[tuple[float, float]]
    colour: tuple[int, int, int] = PALETTE[0]
    dashed: bool = False
    marks: list[str] = field(default_factory=list)  # a label at each point ("c=8"), or none


def ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Round values spanning [lo, hi]: 1-2-5 steps on a linear axis, 1-2-5 per decade on a log one."""
    if log:
        out = []
        for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
            out += [m * 10.0**e for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
        return out or [lo, hi]
    raw = (hi - lo) / 5
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _bounds(values: list[float], log: bool) -> tuple[float, float]:
    if log:
        values = [v for v in values if v > 0] or [1.0]
        lo, hi = min(values), max(values)
        return (lo / 1.25, hi * 1.25) if hi > lo else (lo / 2, hi * 2)
    lo, hi = min(values), max(values)
    if hi == lo:
        return lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    return (0.0 if lo >= 0 and lo - pad < 0 else lo - pad), hi + pad


def chart(
    lines: Sequence[Line],
    title: str,
    x_label: str,
    y_label: str,
    size: tuple[int, int] = (640, 420),
    log_x: bool = False,
    log_y: bool = False,
) -> Image.Image:
    w, h = size
    left, right, top, bottom = 72, 16, 34, 58 + 14 * ((len(lines) + 1) // 2)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=13)
    draw.text((left, 10), title, fill="black", font=font)
    points = [p for line in lines for p in line.points]
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    if not points:
        draw.text((left + 10, top + 10), "no data", fill="black", font=font)
        return img
    (x0, x1), (y0, y1) = _bounds([p[0] for p in points], log_x), _bounds([p[1] for p in points], log_y)

    def scale(v: float, lo: float, hi: float, log: bool) -> float:
        if log:
            v, lo, hi = math.log10(max(v, lo)), math.log10(lo), math.log10(hi)
        return (v - lo) / (hi - lo)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            left + (w - left - right) * scale(x, x0, x1, log_x),
            h - bottom - (h - top - bottom) * scale(y, y0, y1, log_y),
        )

    for v in ticks(y0, y1, log_y):
        y = xy(x0, v)[1]
        draw.line([left, y, w - right, y], fill=(230, 230, 230))
        draw.text((4, y - 6), _fmt(v), fill="black", font=font)
    for v in ticks(x0, x1, log_x):
        x = xy(v, y0)[0]
        draw.line([x, top, x, h - bottom], fill=(230, 230, 230))
        draw.text((x - 12, h - bottom + 4), _fmt(v), fill="black", font=font)
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.text((left, h - bottom + 18), x_label, fill="black", font=font)
    draw.text((left + 4, top + 4), y_label, fill=(90, 90, 90), font=font)
    for n, line in enumerate(lines):
        pts = [xy(*p) for p in line.points]
        if line.dashed:
            for a, b in itertools.pairwise(pts):
                for t in range(0, 10, 2):
                    draw.line([_lerp(a, b, t / 10), _lerp(a, b, (t + 1) / 10)], fill=line.colour, width=2)
        elif len(pts) > 1:
            draw.line(pts, fill=line.colour, width=2)
        for i, (x, y) in enumerate(pts):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=line.colour)
            if i < len(line.marks) and line.marks[i]:
                draw.text((x + 4, y - 12), line.marks[i], fill=line.colour, font=font)
        lx, ly = left + (n % 2) * (w - left - right) // 2, h - bottom + 34 + 14 * (n // 2)
        if line.dashed:
            for t in range(0, 20, 6):
                draw.line([lx + t, ly + 6, lx + t + 3, ly + 6], fill=line.colour, width=2)
        else:
            draw.line([lx, ly + 6, lx + 20, ly + 6], fill=line.colour, width=2)
        draw.text((lx + 26, ly), line.label, fill="black", font=font)
    return img


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def save(panels: Sequence[Image.Image], path: Path, columns: int = 3) -> Path:
    """The panels in a grid, left to right then top to bottom, as one PNG."""
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    pw, ph = max(p.width for p in panels), max(p.height for p in panels)
    sheet = Image.new("RGB", (pw * columns, ph * rows), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % columns) * pw, (i // columns) * ph))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path
