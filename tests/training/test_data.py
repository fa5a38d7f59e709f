"""Data loaders: the embedded digits and MNIST IDX files written by the test."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from training.data import IDX_IMAGES_MAGIC, load_dataset, read_idx


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    magic = (0x08 << 8) | array.ndim  # 0x08: unsigned byte
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def write_mnist(folder: Path, gz: bool, n_train: int = 50, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz)


def test_digits_are_mnist_shaped_and_split_deterministically():
    a, b = load_dataset("digits", seed=7), load_dataset("digits", seed=7)
    assert a.train.x.shape[1:] == (1, 28, 28) and a.train.x.dtype == np.float32
    assert 0.0 <= a.train.x.min() and a.train.x.max() <= 1.0
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    np.testing.assert_array_equal(a.test.y, b.test.y)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert not np.array_equal(load_dataset("digits", seed=8).test.y, a.test.y)
    # The digit sits in the central 20x20 box, as in MNIST: the border is blank.
    assert a.train.x[:, :, :4].max() == 0 and a.train.x[:, :, 24:].max() == 0


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_load(tmp_path: Path, gz: bool):
    write_mnist(tmp_path, gz)
    s = load_dataset("mnist", seed=1, data_dir=tmp_path)
    assert len(s.train) + len(s.val) == 50 and len(s.test) == 20
    assert s.test.x.shape == (20, 1, 28, 28) and s.test.x.max() <= 1.0
    np.testing.assert_array_equal(s.test.y, np.arange(20) % 10)


def test_idx_with_wrong_magic_or_truncated_body_is_refused(tmp_path: Path):
    labels = tmp_path / "labels"
    write_idx(labels, np.arange(5), gz=False)
    with pytest.raises(ValueError, match="magic"):
        read_idx(labels, IDX_IMAGES_MAGIC)
    images = tmp_path / "images"
    write_idx(images, np.zeros((3, 28, 28)), gz=False)
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(ValueError, match="header says"):
        read_idx(images, IDX_IMAGES_MAGIC)


def test_mnist_needs_a_folder_and_the_files(tmp_path: Path):
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("mnist", seed=1)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", seed=1, data_dir=tmp_path)
