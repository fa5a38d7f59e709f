"""Reading requests: size-limited bodies, content types, and image inputs (JSON arrays, PNG/JPEG
uploads) validated into float32 arrays before anything is allocated for the model."""

from __future__ import annotations

import asyncio
import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request

from .errors import ClientError
from .preprocess import PreprocessError, decode_image

JSON = "application/json"
MULTIPART = "multipart/form-data"
IMAGE_TYPES = ("image/png", "image/jpeg")
NPY = "application/x-npy"
RAW = "application/octet-stream"
ACCEPTED_TYPES = (f"{JSON}, {MULTIPART} (field 'image' with a PNG/JPEG file), {', '.join(IMAGE_TYPES)}, "
                  f"{NPY} (.npy, no pickles), {RAW} (little-endian float32 with an X-Tensor-Shape header)")


def max_body_bytes() -> int:
    return int(os.environ.get("EE559_MAX_BODY_BYTES", 4 * 1024 * 1024))


# A client that stalls or trickles its body would hold a connection and a coroutine: the whole
# body must arrive within this time.
BODY_TIMEOUT_S = float(os.environ.get("EE559_BODY_TIMEOUT_S", "10"))


@dataclass
class ImageRequest:
    fields: dict[str, Any]  # the other fields (model, top_k, ...), as sent
    pixels: np.ndarray  # (C, H, W) float32 in [0, 1], shape checked against the model


def media_type(request: Request) -> str:
    return request.headers.get("content-type", JSON).split(";")[0].strip().lower()


def check_headers(request: Request, limit: int) -> None:
    """Refuse, before reading anything, a compressed body (415) or one declared over `limit` (413)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ClientError(415, "unsupported_encoding", f"Content-Encoding {encoding[:32]!r} is not accepted; "
                                                       "send the body uncompressed")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ClientError(400, "bad_header", "Content-Length is not a number") from None
        if size > limit:
            raise ClientError(413, "too_large", f"request body of {size} bytes is over the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes, with 415 when it
    is compressed, and with 408 when it has not fully arrived within BODY_TIMEOUT_S."""
    check_headers(request, limit)
    chunks, total = [], 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise ClientError(413, "too_large", f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ClientError(408, "body_timeout", f"request body not received within {BODY_TIMEOUT_S:g} s") from None
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise ClientError(400, "bad_json", "empty body; send a JSON object such as "
                                           '{"model": "lenet", "image": [[...28 numbers...], ...]}')
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
        raise ClientError(400, "bad_dtype", f"'image' holds {arr.dtype.kind!r}-kind values (strings, booleans or "
                                            f"nulls); it must be {accepted}")
    if c == 1 and arr.shape == (h, w):
        arr = arr[None]
    if arr.shape != shape:
        raise ClientError(400, "bad_shape", f"'image' has shape {list(arr.shape)}; it must be {accepted}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ClientError(400, "not_finite", f"'image' holds NaN or infinite values; it must be {accepted}")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ClientError(400, "out_of_range", f"'image' values span [{arr.min():g}, {arr.max():g}]; "
                                               f"it must be {accepted}")
    return arr


def array_from_npy(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ClientError(400, "bad_npy", f"not a readable .npy array without pickled objects ({type(exc).__name__})"
                          ) from None
    if not isinstance(arr, np.ndarray):
        raise ClientError(400, "bad_npy", "send one .npy array, not an .npz archive")
    return checked_array(arr, shape)


def array_from_raw(data: bytes, header: str | None, shape: tuple[int, int, int]) -> np.ndarray:
    """Raw little-endian float32 bytes with the shape in X-Tensor-Shape (e.g. "1,28,28")."""
    try:
        dims = tuple(int(d) for d in (header or "").split(","))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims) or len(dims) > 4:
        raise ClientError(400, "bad_header", f"{RAW} bodies need an X-Tensor-Shape header such as "
                                             f"\"{','.join(map(str, shape))}\"")
    if len(data) != 4 * int(np.prod(dims)):
        raise ClientError(400, "bad_shape", f"X-Tensor-Shape {list(dims)} needs {4 * int(np.prod(dims))} bytes of "
                                            f"float32, the body has {len(data)}")
    return checked_array(np.frombuffer(data, dtype="<f4").reshape(dims), shape)


def array_from_upload(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    try:
        return decode_image(data, (h, w), channels=c)
    except PreprocessError as exc:
        raise ClientError(415, "bad_image", str(exc)) from None


async def read_image_request(request: Request, shape_of) -> ImageRequest:
    """Parse a JSON, multipart or raw-image request. `shape_of(fields)` gives the (C, H, W) the
    chosen model takes, or raises ClientError for an unknown model."""
    kind = media_type(request)
    limit = max_body_bytes()
    if kind == JSON:
        data = parse_json_object(await read_body(request, limit))
        if "image" not in data:
            raise ClientError(400, "missing_field", "missing field 'image' (a JSON array, or send a PNG/JPEG as "
                                                    f"{MULTIPART} or {', '.join(IMAGE_TYPES)})")
        image = data.pop("image")
        return ImageRequest(data, array_from_json(image, shape_of(data)))
    if kind in (*IMAGE_TYPES, NPY, RAW):  # binary bodies: the other fields come as query parameters
        fields = dict(request.query_params)
        shape = shape_of(fields)
        body = await read_body(request, limit)
        if kind == NPY:
            return ImageRequest(fields, array_from_npy(body, shape))
        if kind == RAW:
            return ImageRequest(fields, array_from_raw(body, request.headers.get("x-tensor-shape"), shape))
        return ImageRequest(fields, array_from_upload(body, shape))
    if kind == MULTIPART:
        check_headers(request, limit)
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                form = await request.form(max_files=1, max_fields=16, max_part_size=limit)
        except TimeoutError:
            raise ClientError(408, "body_timeout", f"request body not received within {BODY_TIMEOUT_S:g} s") from None
        except Exception as exc:  # starlette raises several types for malformed multipart bodies
            raise ClientError(400, "bad_multipart", f"malformed multipart body ({type(exc).__name__}); send "
                                                    "fields 'model' and 'image' (a PNG/JPEG file)") from None
        fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ClientError(400, "missing_field", "multipart request without a file field 'image' (PNG or JPEG)")
        shape = shape_of(fields)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ClientError(413, "too_large", f"uploaded image is over the limit of {limit} bytes")
        return ImageRequest(fields, array_from_upload(data, shape))
    raise ClientError(415, "unsupported_media_type", f"content type {kind!r} is not accepted; accepted: {ACCEPTED_TYPES}")
