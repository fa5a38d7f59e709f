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


def test_shapes_are_deterministic_balanced_and_match_their_masks():
    from training.data import SHAPES, make_shapes

    a, b = load_dataset("shapes", seed=3), load_dataset("shapes", seed=3)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert a.train.x.shape[1:] == (3, 32, 32) and a.labels == SHAPES
    assert np.bincount(a.train.y, minlength=4).min() > len(a.train) // 8
    x, _y, masks = make_shapes(50, seed=1)
    assert masks.shape == (50, 32, 32) and masks.any(axis=(1, 2)).all()
    inside = np.array([x[i][:, masks[i]].mean() for i in range(50)])
    outside = np.array([x[i][:, ~masks[i]].mean() for i in range(50)])
    assert (np.abs(inside - outside) > 0.1).all()  # every shape stands out from its background


def _write_cifar(folder: Path, n: int = 20) -> None:
    import pickle

    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch))


def test_cifar10_python_batches_load(tmp_path: Path):
    _write_cifar(tmp_path)
    s = load_dataset("cifar10", seed=0, data_dir=tmp_path)
    assert len(s.train) + len(s.val) == 40 and len(s.test) == 20
    assert s.test.x.shape == (20, 3, 32, 32) and s.test.x.max() <= 1.0 and s.labels[0] == "airplane"


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path: Path):
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    _write_cifar(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="never needs"):
        load_dataset("cifar10", seed=0, data_dir=tmp_path)
    assert not marker.exists()
