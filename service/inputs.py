"""Reading requests: size-limited bodies, content types, and image inputs (JSON arrays, PNG/JPEG
uploads, .npy, raw float32) validated into float32 arrays of the model's shape."""

from __future__ import annotations

import asyncio
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request

from core.images import PreprocessError, decode_image

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


@dataclass
class ImageRequest:
    """An image request, read but not decoded: `fields` (model, top_k, ...) choose the model, whose
    input shape `pixels(shape)` then checks the image against."""

    fields: dict[str, Any]
    kind: str  # the media type the image came as
    payload: Any  # the JSON value of 'image', or the body / uploaded file's bytes
    tensor_shape: str | None = None  # X-Tensor-Shape, for raw float32

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


def array_from_npy(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ClientError(
            400, "bad_npy", f"not a readable .npy array without pickled objects ({type(exc).__name__})"
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
