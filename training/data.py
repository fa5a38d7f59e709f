"""Datasets: scikit-learn's digits (default, on every machine) and MNIST IDX files from a folder.

Both give float32 images of shape (N, 1, 28, 28) in [0, 1], ink bright, and int64 labels; the
split into train/validation/test is deterministic for a given seed.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.preprocess import resize_unit_image

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


def _split(x: np.ndarray, y: np.ndarray, seed: int, val: float, test: float) -> tuple[Split, Split, Split]:
    order = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = int(round(len(y) * test)), int(round(len(y) * val))
    te, va, tr = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te])


def digits_to_mnist_frame(images: np.ndarray) -> np.ndarray:
    """8x8 digits (0..16) -> 28x28 in [0, 1], the digit in the central 20x20 box as in MNIST."""
    out = np.zeros((len(images), 1, *IMAGE_SIZE), dtype=np.float32)
    for i, img in enumerate(images):
        out[i, 0, 4:24, 4:24] = resize_unit_image(img.astype(np.float32) / 16.0, (20, 20))
    return out


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
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
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
    return Splits(Split(x[tr], y[tr]), Split(x[va], y[va]), Split(*parts["t10k"]), num_classes=10,
                  source=f"MNIST IDX files in {data_dir}")


def load_dataset(name: str, seed: int, data_dir: Path | None = None) -> Splits:
    if name == "digits":
        return load_digits(seed)
    if name == "mnist":
        if data_dir is None:
            raise ValueError("--dataset mnist needs --data-dir DIR with the IDX files (no download is done)")
        return load_mnist(data_dir, seed)
    raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")


DATASETS = ("digits", "mnist")
