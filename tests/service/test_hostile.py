"""Hostile input, second round (issue #16, in part): field and header parsers never raise anything
but a client error, .npy headers are parsed under strict rules before anything is allocated,
images are sized from their header before they are decoded, decoding leaves the worker
answering, and clients that leave are neither counted as server errors nor served for nothing."""

from __future__ import annotations

import io
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from core.images import ImageTooLarge, decode_image, png_bytes
from service.errors import ClientError, int_field, shown
from service.inputs import array_from_npy, array_from_raw

from ..conftest import start_server, stop_server, wait_ready

DIGIT = np.zeros((28, 28), dtype=np.float32)
DIGIT[6:22, 12:16] = 1.0  # a "1"

UNICODE_DIGITS = ["²", "①", "١٢", "𝟙", "٣", "⁵", "1²", "0" * 5000, "9" * 30, " 3 4", "+3", "-1", "3.0", "0x10"]


@pytest.mark.parametrize("value", UNICODE_DIGITS)
def test_integer_fields_refuse_anything_but_ascii_digits_with_a_client_error(value: str):
    with pytest.raises(ClientError) as info:
        int_field({"top_k": value}, "top_k", 1, 10, 3)
    assert info.value.status == 400 and len(info.value.message) < 200


@given(st.text(max_size=50))
def test_integer_fields_never_raise_anything_else(value: str):
    try:
        got = int_field({"n": value}, "n", 0, 10**6, 1)
    except ClientError as exc:
        assert exc.status == 400
    else:
        assert value.strip().isascii() and str(got) == value.strip().lstrip("0").rjust(1, "0")


def test_a_deeply_nested_value_is_shown_without_walking_it():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert shown(deep) == "a JSON array of 1 item(s)"
    assert len(shown("x" * 10**6)) < 50


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@given(
    st.sampled_from(["<f4", "<f8", "<f2", "|u1", "<i4", "<i8", "<u2"]),
    st.sampled_from([(1, 28, 28), (28, 28)]),
    st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_npy_written_by_numpy_reads_back(dtype: str, shape: tuple[int, ...], fortran: bool):
    arr = (np.random.default_rng(0).random(shape) * (255 if dtype[1] in "iu" else 1)).astype(dtype)
    arr = np.asfortranarray(arr) if fortran else arr
    if dtype[1] in "iu":
        arr = (arr > 128).astype(dtype)  # integers in [0, 1]
    got = array_from_npy(_npy(arr), (1, 28, 28))
    assert got.shape == (1, 28, 28) and np.allclose(got[0], arr.reshape(28, 28).astype(np.float32), atol=1e-3)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_npy_garbage_after_the_magic_is_a_client_error(tail: bytes):
    for data in (b"\x93NUMPY" + tail, b"\x93NUMPY\x01\x00" + tail, tail):
        with pytest.raises(ClientError) as info:
            array_from_npy(data, (1, 28, 28))
        assert info.value.status == 400


def _npy_with_header(header: bytes, version: int = 1, data: bytes = b"") -> bytes:
    size = len(header).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + data


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"PK\x03\x04" + b"\0" * 100, "no .npy magic"),  # a zip (.npz) archive
        (_npy_with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (400000, 400000, 1), }"), "shape"),
        (_npy_with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (True, 28), }"), "header entry"),
        (
            _npy_with_header(b"{'descr': '|b1', 'fortran_order': False, 'shape': (1, 28, 28), }", data=b"\0" * 784),
            "'b'",
        ),
        (_npy_with_header(b"{'descr': '>f4', 'fortran_order': False, 'shape': (1, 28, 28), }"), "dtype"),
        (_npy_with_header(b"{'descr': '|O', 'fortran_order': False, 'shape': (1, 28, 28), }"), "dtype"),
        (_npy_with_header(b"{'descr': '<f4', 'shape': (" + b"(" * 3000 + b")}"), "header entry"),
        (_npy_with_header(b"{" + b" " * 70000 + b"}", version=2), "at most 4096"),
        (
            _npy_with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 28, 28), }", data=b"\0" * 8),
            "bytes",
        ),
    ],
)
def test_hostile_npy_headers_are_refused_before_anything_is_allocated(body: bytes, expected: str):
    with pytest.raises(ClientError) as info:
        array_from_npy(body, (1, 28, 28))
    assert info.value.status == 400 and expected in info.value.message


@pytest.mark.parametrize("header", ["4294967296,4294967296,1", "99999999999999999999,1", "1,28,28," + "9" * 400])
def test_raw_tensor_shapes_whose_product_overflows_are_refused(header: str):
    with pytest.raises(ClientError) as info:
        array_from_raw(b"", header, (1, 28, 28))
    assert info.value.status == 400


@pytest.mark.parametrize("header", ["1,2_8,28", "+1,28,28", "1,２８,28", "1,28,28.0", "1,,28", "0x1,28,28", "1;28;28"])
def test_raw_tensor_shapes_are_ascii_digits_only(header: str):
    body = np.zeros((1, 28, 28), "<f4").tobytes()
    with pytest.raises(ClientError) as info:
        array_from_raw(body, header, (1, 28, 28))
    assert info.value.status == 400 and "X-Tensor-Shape" in info.value.message
    assert array_from_raw(body, " 1, 28,28 ", (1, 28, 28)).shape == (1, 28, 28)  # spaces around commas are fine


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 255).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("width", "height"), [(5000, 5000), (10_000_000, 1), (1, 5000), (4097, 4096)])
def test_images_over_the_limit_are_refused_from_their_header(width: int, height: int):
    data = _png(width, height)
    assert len(data) < 200_000  # a few KB that would decode to many MB
    with pytest.raises(ImageTooLarge, match="at most 4096x4096"):
        decode_image(data, (28, 28))


def test_a_jpeg_over_the_limit_is_refused_too():
    buf = io.BytesIO()
    Image.new("RGB", (5000, 4000), (255, 255, 255)).save(buf, format="JPEG", quality=10)
    with pytest.raises(ImageTooLarge):
        decode_image(buf.getvalue(), (28, 28))


def test_an_image_at_the_limit_is_decoded():
    assert decode_image(_png(4096, 64), (28, 28)).shape == (1, 28, 28)


# Over HTTP, against the suite's real server.


def _post_v2(server: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{server}/v2/models/lenet/infer", data=body, headers=headers, timeout=30)


V2_TENSOR = {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": DIGIT.ravel().tolist()}


@pytest.mark.parametrize(
    ("name", "call", "status"),
    [
        (
            "header length in superscript digits",
            lambda s: _post_v2(s, b"{}", {"Inference-Header-Content-Length": "²"}),
            400,
        ),
        (
            "header length of 5000 digits",
            lambda s: _post_v2(s, b"{}", {"Inference-Header-Content-Length": "9" * 5000}),
            400,
        ),
        (
            "binary_data_output as a string",
            lambda s: requests.post(
                f"{s}/v2/models/lenet/infer",
                timeout=30,
                json={"inputs": [V2_TENSOR], "parameters": {"binary_data_output": "false"}},
            ),
            400,
        ),
        (
            "binary_data as a number",
            lambda s: requests.post(
                f"{s}/v2/models/lenet/infer",
                timeout=30,
                json={"inputs": [V2_TENSOR], "outputs": [{"name": "logits", "parameters": {"binary_data": 0}}]},
            ),
            400,
        ),
        (
            "deeply nested id",
            lambda s: _post_v2(
                s, b'{"id": ' + b"[" * 3000 + b"]" * 3000 + b', "inputs": []}', {"Content-Type": "application/json"}
            ),
            400,
        ),
        (
            "top_k in circled digits",
            lambda s: requests.post(
                f"{s}/classify",
                timeout=30,
                params={"model": "lenet", "top_k": "③"},
                data=png_bytes(DIGIT[None]),
                headers={"Content-Type": "image/png"},
            ),
            400,
        ),
        (
            "n deeply nested",
            lambda s: requests.post(
                f"{s}/generate",
                timeout=30,
                data=b'{"model": "dcgan", "n": ' + b"[" * 900 + b"]" * 900 + b"}",
                headers={"Content-Type": "application/json"},
            ),
            400,
        ),
        (
            "raw shape overflowing",
            lambda s: requests.post(
                f"{s}/classify?model=lenet",
                timeout=30,
                data=b"",
                headers={"Content-Type": "application/octet-stream", "X-Tensor-Shape": "4294967296,4294967296"},
            ),
            400,
        ),
        (
            "npy with a huge shape",
            lambda s: requests.post(
                f"{s}/classify?model=lenet",
                timeout=30,
                data=_npy_with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (400000, 400000, 400000), }"),
                headers={"Content-Type": "application/x-npy"},
            ),
            400,
        ),
        (
            "5000x5000 PNG",
            lambda s: requests.post(
                f"{s}/classify?model=lenet", timeout=30, data=_png(5000, 5000), headers={"Content-Type": "image/png"}
            ),
            413,
        ),
        (
            "a row of ten million pixels, multipart",
            lambda s: requests.post(
                f"{s}/classify",
                timeout=30,
                data={"model": "lenet"},
                files={"image": ("x.png", _png(10_000_000, 1), "image/png")},
            ),
            413,
        ),
    ],
)
def test_hostile_requests_get_a_client_error(server, name: str, call, status: int):
    r = call(server)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    assert len(r.content) < 2000 and "error" in r.json()
    assert requests.post(f"{server}/classify", json={"model": "lenet", "image": DIGIT.tolist()}, timeout=30).ok


def _server_errors(server: str) -> float:
    text = requests.get(f"{server}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r'http_response_code="5\d\d"[^}]*\} ([0-9.e+]+)', text))


def test_a_client_that_leaves_mid_body_is_not_a_server_error(server):
    before = _server_errors(server)
    host = urlparse(server)
    for _ in range(4):
        with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
            sock.sendall(
                b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n" + b'{"model": "lenet", "image": ['
            )
            time.sleep(0.1)
    time.sleep(1.0)
    assert _server_errors(server) == before


def _degenerate_uploads() -> list[bytes]:
    """Sixteen uploads that cost decoding for nothing: at the size limit (16 million pixels, a few
    hundred KB of PNG each), and over it with a degenerate shape (one row of ten million pixels,
    a 5000x5000 JPEG), which must be refused from the header without being decoded."""
    rows = np.random.default_rng(0).integers(0, 256, (4096, 64), dtype=np.uint8)
    at_limit = png_bytes(np.tile(rows, (1, 64))[None] / np.float32(255))
    one_row = png_bytes(np.zeros((1, 1, 10_000_000), np.float32))
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="JPEG")
    uploads = [at_limit] * 10 + [one_row] * 3 + [buf.getvalue()] * 3
    assert max(len(u) for u in uploads) < 4 * 1024 * 1024
    return uploads


def test_an_upload_flood_against_one_worker_leaves_liveness_and_other_requests_answering(exported, runs):
    """One worker, sixteen degenerate uploads at once: decoding happens off the event loop, a few at
    a time, within EE559_DECODE_TIMEOUT_S, so /livez answers within a second and a JSON
    classification within its usual latency plus that bound (and in fact within a second); every
    upload gets an answer (200, 413 from the header, or 503 past the decode deadline)."""
    uploads = _degenerate_uploads()
    url, proc = start_server({"EE559_WORKERS": "1", "EE559_MODELS": "lenet"}, log=runs / "upload-flood.log")

    def upload(body: bytes) -> int:
        kind = "image/jpeg" if body[:2] == b"\xff\xd8" else "image/png"
        return requests.post(
            f"{url}/classify?model=lenet", data=body, headers={"Content-Type": kind}, timeout=60
        ).status_code

    def classify() -> float:
        t0 = time.monotonic()
        r = requests.post(f"{url}/classify", json={"model": "lenet", "image": DIGIT.tolist()}, timeout=10)
        assert r.status_code == 200
        return time.monotonic() - t0

    try:
        wait_ready(url, proc)
        usual = sorted(classify() for _ in range(10))[5]
        with ThreadPoolExecutor(16) as pool:
            flood = [pool.submit(upload, body) for body in uploads]
            time.sleep(1.0)  # the bodies are in, decoding has begun
            live, answered = 0.0, 0.0
            for _ in range(5):
                t0 = time.monotonic()
                assert requests.get(f"{url}/livez", timeout=5).status_code == 200
                live = max(live, time.monotonic() - t0)
                answered = max(answered, classify())
                time.sleep(0.2)
            statuses = [f.result() for f in flood]
    finally:
        stop_server(proc)
    assert live < 1.0, f"/livez took {live:.2f} s during the flood"
    assert answered < 1.0, f"a classification took {answered:.2f} s during the flood (usually {usual:.3f} s)"
    assert set(statuses) <= {200, 413, 503} and statuses.count(413) == 6, statuses


def test_a_non_streamed_generation_stops_when_its_client_leaves(server):
    from tests.service.test_http import TEXT_MODELS, _active, _generated

    name = TEXT_MODELS[-1]
    before = _generated(server, name)
    host = urlparse(server)
    body = b'{"model": "%s", "prompt": "Return ", "max_new_tokens": 20000}' % name.encode()
    with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
        sock.sendall(
            b"POST /generate_text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        for _ in range(100):
            if _generated(server, name) > before:
                break
            time.sleep(0.02)
    for _ in range(100):  # the scheduler drops it at its next step
        if _active(server, name) == 0:
            break
        time.sleep(0.05)
    assert _active(server, name) == 0, "the generation went on after its client left"
    stopped_at = _generated(server, name) - before
    assert stopped_at < 20000, "every token was generated for a client that had left"
    time.sleep(0.5)
    assert _generated(server, name) - before == stopped_at
