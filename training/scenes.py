"""Procedural 32x32 RGB scenes for the vision chapters (resnet classifies, unet segments).

Each scene holds one target shape of eight classes, rotated (up to 23 degrees) and scaled at random, on a textured
background (a grating and smooth colour blobs), among up to two clutter objects (bars and small
blobs, which belong to no class) drawn behind or in front of it, so that they may occlude it. The
pixels are flat colours plus sensor noise, and a pixel's label is whatever is drawn on top there:
the target's visible pixels carry its class, occluded ones belong to the occluder (background for
segmentation). Generated offline with numpy only, deterministic for a seed, and vectorised over
the batch (4,000 scenes in well under a second).

Hard enough that the course's techniques show: rotation and scale change, clutter that looks like
parts of shapes (a bar across a bar makes a cross), occlusion and textures; a plain CNN trained as
briefly as the ResNet lags far behind it (`python -m training resnet --ablate`). The served
`resnet` (`scenes`) and `unet` (`scene_masks`) learn them by default (training/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .data import Splits

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring", "crescent", "ell")
SIZE = 32


@dataclass(frozen=True)
class SceneConfig:
    size: int = SIZE
    scale: tuple[float, float] = (0.3, 0.45)  # the target's radius, as a fraction of the size
    rotation: float = 0.4  # the target turns by up to this angle either way (radians, about 23 degrees)
    max_clutter: int = 2  # clutter objects per scene: 0..max_clutter
    front: float = 0.5  # probability that a clutter object is drawn in front of the target
    min_visible: float = 0.55  # a clutter object in front goes behind where it hides more of the target
    texture: float = 0.1  # amplitude of the background's grating and blobs
    min_contrast: float = 0.5  # RGB distance between the target's colour and the background's mean
    noise: tuple[float, float] = (0.02, 0.08)  # std of per-pixel Gaussian noise, per scene


@dataclass
class Scenes:
    x: np.ndarray  # (N, 3, H, W) float32 in [0, 1]
    y: np.ndarray  # (N,) int64, index into SHAPES
    masks: np.ndarray  # (N, H, W) bool: the target's visible pixels
    full_masks: np.ndarray  # (N, H, W) bool: the target's pixels, occluded or not
    colours: np.ndarray  # (N, 3) float32: the target's colour before noise


def shape_masks(
    kind: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray, angle: np.ndarray, size: int = SIZE
) -> np.ndarray:
    """Boolean masks (N, size, size) of one shape each, centred at (cy, cx), radius r, rotated by
    `angle` (radians); each shape is defined in unit coordinates (u, v) of its own frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    c, s, r = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None], r[:, None, None]
    u, v = (c * dx + s * dy) / r, (-s * dx + c * dy) / r
    rho2, phi = u**2 + v**2, np.arctan2(v, u)
    # Triangle: inside all three half-planes whose normals point 120 degrees apart (apex at -v).
    tri = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = np.pi / 2 + 2 * np.pi * k / 3
        tri &= u * np.cos(a) + v * np.sin(a) <= 0.5
    masks = np.stack(
        [
            rho2 <= 1.0,  # circle
            (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8),  # square
            tri,  # triangle
            ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0)),  # cross
            np.sqrt(rho2) <= 0.6 + 0.4 * np.cos(5 * phi),  # star: five rounded points
            (rho2 <= 1.0) & (rho2 >= 0.55**2),  # ring
            (rho2 <= 1.0) & ((u - 0.5) ** 2 + v**2 > 0.8**2),  # crescent
            ((u >= -0.9) & (u <= -0.25) & (np.abs(v) <= 0.9)) | ((v >= 0.25) & (v <= 0.9) & (np.abs(u) <= 0.9)),  # ell
        ]
    )
    return masks[kind, np.arange(len(kind))]


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int = 4) -> np.ndarray:
    """(N, 3, size, size) smooth random fields in [-1, 1]: a cells x cells grid, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, (n, 3, cells, cells)).astype(np.float32)
    pos = np.linspace(0, cells - 1, size, dtype=np.float32)
    lo = np.minimum(pos.astype(int), cells - 2)
    t = pos - lo
    m = np.zeros((size, cells), dtype=np.float32)  # the interpolation matrix: (size, cells)
    m[np.arange(size), lo] = 1 - t
    m[np.arange(size), lo + 1] = t
    return np.einsum("yi,ncij,xj->ncyx", m, grid, m)


def _background(rng: np.random.Generator, n: int, cfg: SceneConfig) -> np.ndarray:
    size = cfg.size
    base = rng.uniform(0.15, 0.75, (n, 3, 1, 1)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    freq = rng.uniform(0.3, 1.6, n).astype(np.float32)[:, None, None]
    theta = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    grating = np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)  # (N, H, W)
    tint = rng.uniform(-1, 1, (n, 3, 1, 1)).astype(np.float32)  # the grating's colour
    strength = rng.uniform(0.2, 1.0, (n, 1, 1, 1)).astype(np.float32)
    texture = strength * (tint * grating[:, None] + _smooth_noise(rng, n, size)) / 2
    return base + cfg.texture * texture


def _colours_apart(rng: np.random.Generator, reference: np.ndarray, min_distance: float) -> np.ndarray:
    """Random RGB colours (N, 3), each at least min_distance from its row of `reference`."""
    colours = rng.uniform(0, 1, reference.shape).astype(np.float32)
    for _ in range(50):  # rejection sampling: a few rounds suffice
        close = np.linalg.norm(colours - reference, axis=1) < min_distance
        if not close.any():
            break
        colours[close] = rng.uniform(0, 1, (int(close.sum()), 3))
    return colours


def _clutter_masks(rng: np.random.Generator, n: int, cfg: SceneConfig) -> np.ndarray:
    """(N, H, W) one clutter object each: a long thin bar or a small elongated blob."""
    size = cfg.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = (rng.uniform(2, size - 3, n).astype(np.float32)[:, None, None] for _ in range(2))
    angle = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * (xx - cx) + s * (yy - cy), -s * (xx - cx) + c * (yy - cy)
    length = rng.uniform(0.2, 0.5, n).astype(np.float32)[:, None, None] * size
    thick = rng.uniform(1.0, 2.2, n).astype(np.float32)[:, None, None]
    bar = (np.abs(u) <= length / 2) & (np.abs(v) <= thick / 2)
    a = rng.uniform(1.5, 3.5, n).astype(np.float32)[:, None, None]
    blob = (u / (a * 1.8)) ** 2 + (v / 1.8) ** 2 <= 1.0  # elongated: never a circle
    return np.where(rng.random(n)[:, None, None] < 0.6, bar, blob)


def make_scenes(n: int, seed: int, cfg: SceneConfig | None = None) -> Scenes:
    """n scenes, deterministic for `seed`; classes drawn uniformly."""
    cfg = cfg or SceneConfig()
    rng = np.random.default_rng(seed)
    size = cfg.size
    kind = rng.integers(0, len(SHAPES), n)
    r = rng.uniform(*cfg.scale, n).astype(np.float32) * size
    cy = rng.uniform(r * 0.8, size - 1 - r * 0.8).astype(np.float32)  # may touch the border a little
    cx = rng.uniform(r * 0.8, size - 1 - r * 0.8).astype(np.float32)
    angle = rng.uniform(-cfg.rotation, cfg.rotation, n).astype(np.float32)
    full = shape_masks(kind, cy, cx, r, angle, size)

    x = _background(rng, n, cfg)  # (N, 3, H, W)
    colour = _colours_apart(rng, x.mean(axis=(2, 3)), cfg.min_contrast)
    n_clutter = rng.integers(0, cfg.max_clutter + 1, n)
    clutter = [_clutter_masks(rng, n, cfg) & (k < n_clutter)[:, None, None] for k in range(cfg.max_clutter)]
    clutter_colour = [rng.uniform(0, 1, (n, 3)).astype(np.float32) for _ in range(cfg.max_clutter)]
    in_front = [rng.random(n) < cfg.front for _ in range(cfg.max_clutter)]
    # Keep the target recognisable: a clutter object in front that would leave less than
    # min_visible of it uncovered is drawn behind instead.
    area = full.sum(axis=(1, 2))
    hidden = np.zeros_like(full)
    for k in range(cfg.max_clutter):
        covers = hidden | (clutter[k] & full)
        ok = (area - covers.sum(axis=(1, 2))) >= cfg.min_visible * area
        in_front[k] &= ok
        hidden = np.where(in_front[k][:, None, None], covers, hidden)

    def paint(canvas: np.ndarray, mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        return np.where(mask[:, None], rgb[:, :, None, None], canvas)

    for k in range(cfg.max_clutter):  # behind the target
        x = paint(x, clutter[k] & ~in_front[k][:, None, None], clutter_colour[k])
    x = paint(x, full, colour)
    visible = full.copy()
    for k in range(cfg.max_clutter):  # in front: the occluder owns the pixels it covers
        front = clutter[k] & in_front[k][:, None, None]
        x = paint(x, front, clutter_colour[k])
        visible &= ~front
    sigma = rng.uniform(*cfg.noise, n).astype(np.float32)[:, None, None, None]
    x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    return Scenes(np.clip(x, 0, 1).astype(np.float32), kind.astype(np.int64), visible, full, colour)


def load_scenes(seed: int, n: int = 4000, masks: bool = False) -> Splits:
    """`--dataset scenes` (the class of each scene's target) or `scene_masks` (per-pixel targets:
    0 background and clutter, 1 + class on the target's visible pixels), split 70/15/15."""
    from .data import Splits, _split

    s = make_scenes(n, seed)
    y = np.where(s.masks, s.y[:, None, None] + 1, 0).astype(np.int64) if masks else s.y
    train, val, test = _split(s.x, y, seed, val=0.15, test=0.15)
    what = "with masks " if masks else ""
    labels = ("background", *SHAPES) if masks else SHAPES
    return Splits(train, val, test, len(labels), f"procedural scenes {what}(n={n}, seed={seed})", labels)
