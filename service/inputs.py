"""Reading requests: size-limited bodies, content types, and image inputs (JSON arrays, PNG/JPEG
uploads, .npy, raw float32) validated into float32 arrays of the model's shape."""

from __future__ import annotations

import asyncio
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from core.images import ImageTooLarge, PreprocessError, decode_image

from .errors import ClientError
from .settings import Settings

JSON = "application/json"
MULTIPART = "multipart/form-data"
IMAGE_TYPES = ("image/png", "image/jpeg")
NPY = "application/x-npy"
RAW = "application/octet-stream"
ACCEPTED_TYPES = (
    f"{JSON}, {MULTIPART} (field 'image' with a PNG/JPEG file), {', '.join(IMAGE_TYPES)}, "
    f"{NPY} (.npy, no pickles), {RAW} (little-endian float32 with an X-Tensor-Shape header)"
)


# Image decoding runs in these threads (Pillow releases the GIL while it decodes), at most
# DECODE_THREADS at once per worker; the others wait their turn within the decode deadline.
DECODE_THREADS = 2
_DECODER = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode")
_SLOTS: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _decoding() -> asyncio.Semaphore:
    """This event loop's decoding slots (one loop per worker; tests may run several)."""
    loop = asyncio.get_running_loop()
    return _SLOTS.setdefault(loop, asyncio.Semaphore(DECODE_THREADS))


@dataclass
class ImageRequest:
    """An image request, read but not decoded: `fields` (model, top_k, ...) choose the model, whose
    input shape `pixels(shape)` then checks the image against."""

    fields: dict[str, Any]
    kind: str  # the media type the image came as
    payload: Any  # the JSON value of 'image', or the body / uploaded file's bytes
    tensor_shape: str | None = None  # X-Tensor-Shape, for raw float32

    async def decode(self, shape: tuple[int, ...], settings: Settings) -> np.ndarray:
        """`pixels(shape)`; compressed images are decoded off the event loop, a few at a time and
        within settings.decode_timeout_s (waiting included), so that a flood of uploads leaves the
        worker answering its probes and other requests (503 + Retry-After past the deadline)."""
        if self.kind not in (*IMAGE_TYPES, "upload"):
            return self.pixels(shape)  # arrays: checked in place, no decoding
        try:
            async with asyncio.timeout(settings.decode_timeout_s):
                async with _decoding():
                    loop = asyncio.get_running_loop()
                    return await loop.run_in_executor(_DECODER, self.pixels, shape)
        except TimeoutError:
            raise ClientError(
                503,
                "decode_timeout",
                f"the image was not decoded within {settings.decode_timeout_s:g} s "
                "(the server is busy decoding); retry after a second",
            ) from None

    def pixels(self, shape: tuple[int, ...]) -> np.ndarray:
        """(C, H, W) float32 in [0, 1] of exactly `shape`, or a ClientError saying what is accepted."""
        c, h, w = shape
        if self.kind == JSON:
            return array_from_json(self.payload, (c, h, w))
        if self.kind == NPY:
            return array_from_npy(self.payload, (c, h, w))
        if self.kind == RAW:
            return array_from_raw(self.payload, self.tensor_shape, (c, h, w))
        return array_from_upload(self.payload, (c, h, w))


def media_type(request: Request) -> str:
    return request.headers.get("content-type", JSON).split(";")[0].strip().lower()


def check_headers(request: Request, limit: int) -> None:
    """Refuse, before reading anything, a compressed body (415) or one declared over `limit` (413)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ClientError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding[:32]!r} is not accepted; send the body uncompressed",
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ClientError(400, "bad_header", "Content-Length is not a number") from None
        if size > limit:
            raise ClientError(413, "too_large", f"request body of {size} bytes is over the limit of {limit} bytes")


async def read_body(request: Request, settings: Settings) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed the size limit, with 415 when it
    is compressed, and with 408 when it has not fully arrived within the body timeout."""
    limit = settings.max_body_bytes
    check_headers(request, limit)
    chunks, total = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise ClientError(413, "too_large", f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ClientError(
            408, "body_timeout", f"request body not received within {settings.body_timeout_s:g} s"
        ) from None
    except ClientDisconnect:  # nobody will read the answer: counted as its own outcome, not as a 5xx
        raise ClientError(499, "client_closed", "the client closed the connection before its body arrived") from None
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise ClientError(
            400,
            "bad_json",
            'empty body; send a JSON object such as {"model": "lenet", "image": [[...28 numbers...], ...]}',
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ClientError(400, "bad_json", f"malformed JSON: {exc.args[0] if exc.args else 'parse error'}") from None
    if not isinstance(data, dict):
        raise ClientError(400, "bad_json", f"the body must be a JSON object, not a JSON {type(data).__name__}")
    return data


def _accepted(shape: tuple[int, int, int]) -> str:
    c, h, w = shape
    return f"a {h}x{w}" + (f" (or {c}x{h}x{w})" if c == 1 else f" {c}x{h}x{w}") + " array of numbers in [0, 1]"


def array_from_json(value: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """A nested list of numbers -> (C, H, W) float32 in [0, 1]; (H, W) is accepted when C == 1."""
    accepted = _accepted(shape)
    if not isinstance(value, list):
        raise ClientError(400, "bad_shape", f"'image' must be {accepted}, not a JSON {type(value).__name__}")
    try:
        arr = np.array(value)
    except (ValueError, TypeError):
        raise ClientError(400, "bad_shape", f"'image' is a ragged nested list; it must be {accepted}") from None
    return checked_array(arr, shape)


def checked_array(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Dtype, shape, finiteness and range checks shared by every way of sending an array."""
    c, h, w = shape
    accepted = _accepted(shape)
    if arr.dtype.kind not in "iuf":
        raise ClientError(
            400,
            "bad_dtype",
            f"'image' holds {arr.dtype.kind!r}-kind values (strings, booleans or nulls); it must be {accepted}",
        )
    if c == 1 and arr.shape == (h, w):
        arr = arr[None]
    if arr.shape != shape:
        raise ClientError(400, "bad_shape", f"'image' has shape {list(arr.shape)}; it must be {accepted}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ClientError(400, "not_finite", f"'image' holds NaN or infinite values; it must be {accepted}")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ClientError(
            400, "out_of_range", f"'image' values span [{arr.min():g}, {arr.max():g}]; it must be {accepted}"
        )
    return arr


NPY_MAGIC = b"\x93NUMPY"
# np.save's preamble and header take 128 bytes for a (1, 28, 28) or (3, 32, 32) float32 image (numpy
# 2.4.6, 2026-11-26: len(buf) - 4 * pixels after np.save(buf, np.zeros(shape, np.float32))); numpy's
# own reader allows headers up to 10,000 bytes (np.lib.format.read_array's max_header_size).
NPY_MAX_HEADER = 4096
# One entry of the header's dict, as numpy writes it (any order, either quote): nothing else is
# parsed, so a crafted header costs one linear regex pass over at most NPY_MAX_HEADER bytes.
_NPY_ENTRY = re.compile(
    r"""\s*(['"])(descr|fortran_order|shape)\1\s*:\s*"""
    r"""('[^'"]{1,8}'|"[^'"]{1,8}"|True|False|\((?:\s*\d{1,9}\s*,)*(?:\s*\d{1,9})?\s*\))\s*(?:,|$)"""
)
_NPY_DTYPE = re.compile(r"[<|=]?[fiu][1248]|[<|=]?b1")  # little-endian numbers (and booleans, refused later)


def _npy_error(what: str) -> ClientError:
    return ClientError(
        400,
        "bad_npy",
        f"not an accepted .npy array: {what}; send numpy.save() of one float32 array (no pickles, no .npz archive)",
    )


def npy_header(data: bytes) -> tuple[np.dtype, bool, tuple[int, ...], int]:
    """(dtype, fortran_order, shape, offset of the data) from a .npy file's header, parsed under
    the format's own rules before anything is allocated: versions 1 to 3, a bounded header, the
    three keys numpy writes and nothing else, little-endian numeric dtypes."""
    if data[:6] != NPY_MAGIC:
        raise _npy_error("no .npy magic (a .npz or other archive, or raw bytes: see X-Tensor-Shape)")
    if len(data) < 10 or data[6] not in (1, 2, 3):
        raise _npy_error(f"format version {data[6] if len(data) > 6 else '?'}; accepted: 1, 2, 3")
    size_bytes = 2 if data[6] == 1 else 4
    length = int.from_bytes(data[8 : 8 + size_bytes], "little")
    start = 8 + size_bytes
    if length > NPY_MAX_HEADER or start + length > len(data):
        raise _npy_error(f"a header of {length} bytes (at most {NPY_MAX_HEADER}, within the body)")
    text = data[start : start + length].decode("latin-1").strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise _npy_error("the header is not a dict")
    body, entries, pos = text[1:-1], {}, 0
    while pos < len(body.rstrip()):
        match = _NPY_ENTRY.match(body, pos)
        if match is None or match.group(2) in entries:
            raise _npy_error("a header entry other than 'descr', 'fortran_order' and 'shape'")
        entries[match.group(2)] = match.group(3)
        pos = match.end()
    if set(entries) != {"descr", "fortran_order", "shape"}:
        raise _npy_error("a header without 'descr', 'fortran_order' and 'shape'")
    descr = entries["descr"][1:-1]
    if "O" in descr:
        raise _npy_error(f"dtype {descr!r}: pickled Python objects are never read")
    if not _NPY_DTYPE.fullmatch(descr):
        raise _npy_error(f"dtype {descr!r}; accepted: little-endian floats or integers")
    shape = tuple(int(d) for d in re.findall(r"\d+", entries["shape"]))
    return np.dtype(descr), entries["fortran_order"] == "True", shape, start + length


def array_from_npy(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    dtype, fortran, dims, offset = npy_header(data)
    c, h, w = shape
    if dims != shape and not (c == 1 and dims == (h, w)):
        raise ClientError(400, "bad_shape", f"'image' has shape {list(dims)[:8]}; it must be {_accepted(shape)}")
    if len(data) - offset != math.prod(dims) * dtype.itemsize:
        raise _npy_error(f"{len(data) - offset} data bytes for shape {list(dims)} of {dtype}")
    arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims, order="F" if fortran else "C")
    return checked_array(arr, shape)


_DIMENSION = re.compile(r"[0-9]{1,9}")


def array_from_raw(data: bytes, header: str | None, shape: tuple[int, int, int]) -> np.ndarray:
    """Raw little-endian float32 bytes with the shape in X-Tensor-Shape (e.g. "1,28,28")."""
    parts = [d.strip(" ") for d in (header or "").split(",")]
    # ASCII digits only: int() would also take "2_8", "+28" and full-width or other Unicode digits
    dims = tuple(int(d) for d in parts) if all(_DIMENSION.fullmatch(d) for d in parts) else ()
    if not dims or any(d <= 0 for d in dims) or len(dims) > 4:
        raise ClientError(
            400, "bad_header", f'{RAW} bodies need an X-Tensor-Shape header such as "{",".join(map(str, shape))}"'
        )
    needed = 4 * math.prod(dims)  # Python integers: a product of huge dimensions must not wrap to 0
    if len(data) != needed:
        raise ClientError(
            400,
            "bad_shape",
            f"X-Tensor-Shape {str(list(dims))[:80]} needs {str(needed)[:24]} bytes "
            f"of float32, the body has {len(data)}",
        )
    return checked_array(np.frombuffer(data, dtype="<f4").reshape(dims), shape)


def array_from_upload(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    try:
        return decode_image(data, (h, w), channels=c)
    except ImageTooLarge as exc:
        raise ClientError(413, "image_too_large", str(exc)) from None
    except PreprocessError as exc:
        raise ClientError(415, "bad_image", str(exc)) from None


async def json_fields(request: Request, settings: Settings, route: str, example: str) -> dict[str, Any]:
    """The JSON object of a route that takes no image; 415 for any other body, naming an example."""
    if media_type(request) != JSON:
        raise ClientError(415, "unsupported_media_type", f"/{route} takes a JSON object such as {example}")
    return parse_json_object(await read_body(request, settings))


async def read_image_request(request: Request, settings: Settings) -> ImageRequest:
    """Read a JSON, multipart, image, .npy or raw request: its fields and its undecoded image."""
    kind = media_type(request)
    limit = settings.max_body_bytes
    if kind == JSON:
        data = parse_json_object(await read_body(request, settings))
        if "image" not in data:
            raise ClientError(
                400,
                "missing_field",
                f"missing field 'image' (a JSON array, or send a PNG/JPEG as {MULTIPART} or {', '.join(IMAGE_TYPES)})",
            )
        return ImageRequest(data, kind, data.pop("image"))
    if kind in (*IMAGE_TYPES, NPY, RAW):  # binary bodies: the other fields come as query parameters
        fields = dict(request.query_params)
        return ImageRequest(fields, kind, await read_body(request, settings), request.headers.get("x-tensor-shape"))
    if kind == MULTIPART:
        check_headers(request, limit)
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                form = await request.form(max_files=1, max_fields=16, max_part_size=limit)
        except TimeoutError:
            raise ClientError(
                408, "body_timeout", f"request body not received within {settings.body_timeout_s:g} s"
            ) from None
        except ClientDisconnect:
            raise ClientError(
                499, "client_closed", "the client closed the connection before its body arrived"
            ) from None
        except Exception as exc:  # starlette raises several types for malformed multipart bodies
            raise ClientError(
                400,
                "bad_multipart",
                f"malformed multipart body ({type(exc).__name__}); send fields 'model' and 'image' (a PNG/JPEG file)",
            ) from None
        fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ClientError(400, "missing_field", "multipart request without a file field 'image' (PNG or JPEG)")
        uploaded = await upload.read(limit + 1)
        if len(uploaded) > limit:
            raise ClientError(413, "too_large", f"uploaded image is over the limit of {limit} bytes")
        return ImageRequest(fields, "upload", uploaded)
    raise ClientError(
        415, "unsupported_media_type", f"content type {kind[:64]!r} is not accepted; accepted: {ACCEPTED_TYPES}"
    )
