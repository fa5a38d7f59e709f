"""Input validation, without a server: JSON arrays and image uploads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.errors import ClientError
from service.inputs import array_from_json, array_from_upload, parse_json_object

SHAPE = (1, 28, 28)


def png(array: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def test_accepts_hw_and_chw_arrays():
    x = np.random.default_rng(0).random((28, 28))
    for value in (x.tolist(), x[None].tolist()):
        out = array_from_json(value, SHAPE)
        assert out.shape == SHAPE and out.dtype == np.float32
        np.testing.assert_allclose(out[0], x, rtol=1e-6)


@pytest.mark.parametrize(
    "value, reason",
    [
        ([[0.5] * 28] * 27, "bad_shape"),
        ([[0.5] * 27] * 28, "bad_shape"),
        ([[[0.5] * 28] * 28] * 3, "bad_shape"),
        ([[0.5] * 28] * 27 + [[0.5] * 5], "bad_shape"),  # ragged
        ([["0.5"] * 28] * 28, "bad_dtype"),
        ([[True] * 28] * 28, "bad_dtype"),
        ([[None] * 28] * 28, "bad_dtype"),
        ([[1.5] * 28] * 28, "out_of_range"),
        ([[-0.1] * 28] * 28, "out_of_range"),
        ("not an array", "bad_shape"),
        ({"a": 1}, "bad_shape"),
    ],
)
def test_rejects_bad_arrays_with_a_message_saying_what_is_accepted(value, reason):
    with pytest.raises(ClientError) as info:
        array_from_json(value, SHAPE)
    assert info.value.status == 400 and info.value.reason == reason
    assert "28x28" in info.value.message


def test_rejects_nan_and_inf():
    for bad in (float("nan"), float("inf")):
        x = [[0.0] * 28 for _ in range(28)]
        x[3][4] = bad
        with pytest.raises(ClientError) as info:
            array_from_json(x, SHAPE)
        assert info.value.reason == "not_finite"


@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_rejects_empty_malformed_or_non_object_json(body):
    with pytest.raises(ClientError) as info:
        parse_json_object(body)
    assert info.value.status == 400


def test_png_and_jpeg_uploads_decode_to_model_input():
    digit = np.zeros((56, 56), dtype=np.uint8)
    digit[10:46, 25:31] = 255  # a "1", bright on dark
    for data in (png(digit), png(digit, fmt="JPEG")):
        out = array_from_upload(data, SHAPE)
        assert out.shape == SHAPE and out.dtype == np.float32
        assert out.max() > 0.5 and out[0, :, :5].max() < 0.1


def test_dark_ink_on_light_paper_is_inverted():
    paper = np.full((28, 28), 255, dtype=np.uint8)
    paper[5:23, 13:15] = 0
    out = array_from_upload(png(paper), SHAPE)
    assert out[0, 10, 13] > 0.9 and out[0, 0, 0] < 0.1


@pytest.mark.parametrize("data", [b"", b"hello", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"GIF89a" + b"\0" * 30])
def test_non_images_are_refused_with_415(data):
    with pytest.raises(ClientError) as info:
        array_from_upload(data, SHAPE)
    assert info.value.status == 415 and "PNG" in info.value.message


def test_other_image_formats_are_refused():
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="BMP")
    with pytest.raises(ClientError, match="PNG or JPEG"):
        array_from_upload(buf.getvalue(), SHAPE)


def test_rgb_uploads_keep_their_colours():
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[..., 0] = 255  # pure red
    out = array_from_upload(png(img, mode="RGB"), (3, 32, 32))
    assert out.shape == (3, 32, 32)
    assert out[0].min() > 0.99 and out[1:].max() < 0.01


def test_rgb_json_arrays_must_have_three_channels():
    with pytest.raises(ClientError, match="3x32x32"):
        array_from_json([[0.5] * 32] * 32, (3, 32, 32))
    assert array_from_json([[[0.5] * 32] * 32] * 3, (3, 32, 32)).shape == (3, 32, 32)
