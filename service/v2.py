"""Open Inference Protocol (KServe v2, as Triton serves it over HTTP) for every served model,
with the binary tensor data extension (Inference-Header-Content-Length, binary_data_output).

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
binary_data extension. Errors are {"error": "..."}: 400 for bad requests, 404 for unknown models.
"""

from __future__ import annotations

import math
from typing import Any

import bentoml
import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.card import ModelCard, TensorSpec

from .answers import json_response
from .errors import ClientError, shown
from .inputs import media_type, read_body
from .observe import current

SERVER_NAME = "ee559"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "inference-header-content-length"

# v2 datatype <-> numpy dtype (little-endian, as the binary extension requires)
DATATYPES = {
    "FP32": "<f4",
    "FP64": "<f8",
    "FP16": "<f2",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "BOOL": "?",
}
NUMPY_TO_V2 = {
    "float32": "FP32",
    "float64": "FP64",
    "float16": "FP16",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "bool": "BOOL",
}


def _svc() -> Any:
    return bentoml.get_current_service()


def _card(request: Request) -> ModelCard:
    return _svc().catalog.graph(request.path_params["model"], request.path_params.get("version"))


def _dims(shape: tuple[int | str, ...]) -> list[int]:
    return [-1 if isinstance(d, str) else int(d) for d in shape]


def _tensor_meta(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "datatype": NUMPY_TO_V2[t.dtype], "shape": _dims(t.shape)}


async def server_metadata(request: Request) -> Response:
    return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if await _svc().__is_ready__() else 503)


async def model_metadata(request: Request) -> Response:
    card = _card(request)
    return json_response(
        {
            "name": card.name,
            "versions": _svc().catalog.versions(card.name),
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor_meta(t) for t in card.inputs],
            "outputs": [_tensor_meta(t) for t in card.outputs],
        }
    )


async def model_ready(request: Request) -> Response:
    _card(request)
    if await _svc().__is_ready__():
        return Response(status_code=200)
    return Response(status_code=503, headers={"Retry-After": "1"})


def _split_body(request: Request, body: bytes) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary part that follows it (binary tensor data extension)."""
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        header, rest = body, memoryview(b"")
    else:
        # ASCII digits, at most as many as the body's length has: str.isdigit() admits '²', which
        # int() refuses, and thousands of digits would make int() itself refuse the conversion.
        digits = raw.strip()
        if not (
            digits.isascii() and digits.isdigit() and len(digits) <= len(str(len(body))) and int(digits) <= len(body)
        ):
            raise ClientError(
                400,
                "bad_header",
                f"Inference-Header-Content-Length {shown(raw, 32)} must be an "
                f"integer no larger than the body ({len(body)} bytes)",
            )
        n = int(digits)
        header, rest = body[:n], memoryview(body)[n:]
    try:
        req = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise ClientError(400, "bad_json", "malformed JSON inference request header") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise ClientError(400, "bad_json", "the inference request must be a JSON object with an 'inputs' list")
    return req, rest


def _parameters(entry: dict[str, Any], where: str) -> dict[str, Any]:
    params = entry.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ClientError(400, "bad_parameters", f"'parameters' of {where} must be a JSON object")
    return params


def _input_tensor(
    spec: TensorSpec, given: dict[str, Any], binary: memoryview, offset: int, max_batch: int
) -> tuple[np.ndarray, int]:
    name = spec.name
    want_type = NUMPY_TO_V2[spec.dtype]
    if given.get("datatype") != want_type:
        raise ClientError(
            400, "bad_dtype", f"input {name!r} has datatype {shown(given.get('datatype'))}; accepted: {want_type}"
        )
    shape = given.get("shape")
    model_shape = _dims(spec.shape)
    if (
        not isinstance(shape, list)
        or len(shape) != len(model_shape)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or any(m != -1 and d != m for d, m in zip(shape, model_shape))
        or not 1 <= shape[0] <= max_batch
    ):
        raise ClientError(
            400,
            "bad_shape",
            f"input {name!r} has shape {shown(shape, 80)}; accepted: {model_shape} "
            f"with the batch dimension from 1 to {max_batch}",
        )
    count = math.prod(shape)
    dtype = np.dtype(DATATYPES[want_type])
    params = _parameters(given, f"input {name!r}")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(binary):
            raise ClientError(
                400,
                "bad_binary",
                f"input {name!r}: binary_data_size {shown(size)} must be "
                f"{count * dtype.itemsize} bytes for shape {shape} {want_type}, "
                f"within the {len(binary) - offset} binary bytes left",
            )
        arr = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        return arr.astype(dtype.newbyteorder("="), copy=False), offset + size
    data = given.get("data")
    if not isinstance(data, list):
        raise ClientError(
            400,
            "missing_field",
            f"input {name!r} needs 'data' (a list) or a binary_data_size "
            "parameter with the tensor in the body's binary part",
        )
    try:
        arr = np.array(data)
    except (ValueError, TypeError):
        raise ClientError(400, "bad_shape", f"input {name!r}: 'data' is a ragged list") from None
    if arr.size != count or (arr.size and arr.dtype.kind not in "iuf"):
        raise ClientError(
            400,
            "bad_shape",
            f"input {name!r}: 'data' holds {arr.size} "
            f"{'numbers' if arr.dtype.kind in 'iuf' else 'non-numbers'}; "
            f"shape {shape} needs {count} numbers",
        )
    return arr.reshape(shape).astype(dtype.newbyteorder("=")), offset


def _flag(params: dict[str, Any], name: str, default: bool) -> bool:
    """A boolean parameter, as the protocol types it: the string "false" is not false."""
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise ClientError(400, "bad_parameters", f"parameter {name!r} must be true or false, got {shown(value)}")
    return value


def _check_finite(name: str, x: np.ndarray) -> None:
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ClientError(400, "not_finite", f"input {name!r} holds NaN or infinite values")


async def infer(request: Request) -> Response:
    svc = _svc()
    card = _card(request)
    kind = media_type(request)
    if kind not in ("application/json", "application/octet-stream"):
        raise ClientError(
            415,
            "unsupported_media_type",
            f"content type {kind[:64]!r} is not accepted; accepted: "
            "application/json, application/octet-stream "
            "(JSON header + binary tensors)",
        )
    req, binary = _split_body(request, await read_body(request, svc.settings))
    if card.is_text:  # the server keeps a text model's state between steps
        raise ClientError(400, "stateful_model", f"model {card.name!r} generates text: use POST /generate_text")
    spec = card.input
    if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in req["inputs"]):
        raise ClientError(
            400,
            "bad_input",
            "each entry of 'inputs' must be an object with a string 'name', "
            "'shape', 'datatype' and 'data' (or parameters.binary_data_size)",
        )
    given = {t["name"]: t for t in req["inputs"]}
    if set(given) != {spec.name} or len(req["inputs"]) != 1:
        raise ClientError(
            400,
            "bad_input_name",
            f"inputs {', '.join(shown(n, 32) for n in sorted(given)[:5])}; model {card.name!r} "
            f"takes exactly one input: {spec.name!r}",
        )
    x, used = _input_tensor(spec, given[spec.name], binary, 0, card.max_batch_size)
    if used != len(binary):
        raise ClientError(400, "bad_binary", f"{len(binary) - used} binary bytes are not claimed by any input")
    _check_finite(spec.name, x)
    out_names = card.output_names
    wanted = req.get("outputs")
    if wanted is None:
        wanted = [{"name": n} for n in out_names]
    if not isinstance(wanted, list) or not all(isinstance(w, dict) and w.get("name") in out_names for w in wanted):
        raise ClientError(400, "bad_output_name", f"requested outputs must be among {out_names}")
    default_binary = _flag(_parameters(req, "the request"), "binary_data_output", False)
    binary_out = [_flag(_parameters(w, f"output {w['name']!r}"), "binary_data", default_binary) for w in wanted]
    request_id = req.get("id")
    if request_id is not None and not (isinstance(request_id, str) and len(request_id) <= 256):
        raise ClientError(400, "bad_id", f"'id' must be a string of at most 256 characters, got {shown(request_id)}")
    outputs, _ = await svc.infer(card, np.ascontiguousarray(x))
    by_name = dict(zip(out_names, outputs))

    blobs: list[bytes] = []
    result = []
    for w, as_binary in zip(wanted, binary_out):
        arr = by_name[w["name"]]
        entry: dict[str, Any] = {"name": w["name"], "datatype": NUMPY_TO_V2[str(arr.dtype)], "shape": list(arr.shape)}
        if as_binary:
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel()
        result.append(entry)
    body: dict[str, Any] = {"model_name": card.name, "model_version": card.version, "outputs": result}
    timing = current()
    if request_id is None and timing is not None:
        request_id = timing.id  # X-Request-ID, the client's or ours
    if request_id is not None:
        body["id"] = request_id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def _model_routes(suffix: str, endpoint, methods: list[str]) -> list[Route]:
    return [
        Route(f"/v2/models/{{model}}{suffix}", endpoint, methods=methods),
        Route(f"/v2/models/{{model}}/versions/{{version}}{suffix}", endpoint, methods=methods),
    ]


V2_ROUTES = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    *_model_routes("", model_metadata, ["GET"]),
    *_model_routes("/ready", model_ready, ["GET"]),
    *_model_routes("/infer", infer, ["POST"]),
]
