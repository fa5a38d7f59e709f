"""Fuzzing every mounted route over HTTP (issue #16, in part): Hypothesis draws requests for each
route the app mounts (service.app.http_app, the v2 routes included) and each way of sending a body
there (JSON, .npy, raw tensors with X-Tensor-Shape, PNG/JPEG bytes, multipart uploads, the v2
binary tensor extension, odd content types, path parameters and query strings) and sends them to
the suite's real server. Every answer must be under 500, every 4xx a short JSON {"error": ...},
and the server must still answer /livez afterwards.

Reproducible: each (route, body kind) has a fixed Hypothesis seed and no example database.
EE559_FUZZ_EXAMPLES sets the examples per route and body kind (100 in the default suite, 1000 in
the slow variant that `make fuzz` runs); a failure prints the shrunk request that caused it.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from PIL import Image

from service.app import http_app
from service.tasks import TASKS
from service.v2 import V2_ROUTES

EXAMPLES = int(os.environ.get("EE559_FUZZ_EXAMPLES", "100"))  # per route and body kind
EXAMPLES_AT_SCALE = int(os.environ.get("EE559_FUZZ_EXAMPLES", "1000"))  # the slow variant (`make fuzz`)
MAX_ERROR_BYTES = 2000

# -- the requests ------------------------------------------------------------------------------


@dataclass
class FuzzRequest:
    """One HTTP request, as sent: its repr is what a failure prints (the shrunk example)."""

    method: str
    url: str  # path and query string, percent-encoded
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __repr__(self) -> str:
        shown = self.body if len(self.body) <= 600 else self.body[:600] + b"...(%d bytes)" % len(self.body)
        return f"FuzzRequest({self.method} {self.url!r}, headers={self.headers!r}, body={shown!r})"


@dataclass(frozen=True)
class Served:
    """What the server serves, from GET /models: the strategies draw valid names and shapes from it."""

    cards: dict[str, dict[str, Any]]  # served graph name -> public card
    pickle_marker: Path  # a file that only an unpickled .npy body would create

    def names_for(self, task: str) -> list[str]:
        graphs = [c for c in self.cards.values() if task in c["tasks"]]
        return sorted({c["name"] for c in graphs} | {c["family"] for c in graphs})

    def row_shapes(self, task: str) -> list[tuple[int, ...]]:
        return sorted({tuple(c["inputs"][0]["shape"][1:]) for c in self.cards.values() if task in c["tasks"]})

    def vocabulary(self) -> str:
        return "".join(sorted({ch for c in self.cards.values() if "generate_text" in c["tasks"] for ch in c["labels"]}))


# -- values ------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "²",
        "①",
        "١٢",
        "𝟙",
        "٣",
        "⁵",
        "1²",
        "0" * 5000,
        "9" * 30,
        " 3 4",
        "+3",
        "-1",
        "3.0",
        "0x10",
        "1_0",
        "NaN",
        "inf",
        "-0",
        "true",
        "null",
        "\x00",
        "é",
        "🙂",
        "%00",
        "%ZZ",
        "a" * 300,
        "json ",
        "PNG",
        "png\n",
    ]
) | st.text(max_size=12)
# Nesting past numpy's 64 dimensions (deeper, past orjson's 1024 levels, in ODD_BODIES).
DEEP = st.sampled_from([65, 500]).map(lambda depth: json.loads("[" * depth + "]" * depth))
ODD_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities are written as NaN/Infinity: not JSON
    ODD_TEXT,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    DEEP,
)
FILLS = ["uniform", "zeros", "ones", "binary", "nan", "inf", "negative", "over", "huge"]


def tensor(shape: tuple[int, ...], fill: str, seed_: int) -> np.ndarray:
    """float64 values of `shape`: in [0, 1] for the first fills, out of range or not finite after."""
    rng = np.random.default_rng(seed_)
    x = rng.random(shape)
    if fill == "zeros":
        return np.zeros(shape)
    if fill == "ones":
        return np.ones(shape)
    if fill == "binary":
        return (x > 0.5).astype(np.float64)
    if x.size and fill in ("nan", "inf", "negative", "over", "huge"):
        x.flat[rng.integers(x.size)] = {"nan": np.nan, "inf": np.inf, "negative": -0.5, "over": 1.5, "huge": 1e300}[
            fill
        ]
    return x


@st.composite
def tensors(draw, shape: tuple[int, ...]) -> np.ndarray:
    return tensor(shape, draw(st.sampled_from(FILLS)), draw(st.integers(0, 2**16)))


def shapes(row: tuple[int, ...]) -> SearchStrategy[tuple[int, ...]]:
    """The model's row shape, the forms it accepts, and near misses and odd shapes."""
    c, h, w = row
    return st.one_of(
        st.just(row),
        st.just((h, w)),
        st.sampled_from([(1, *row), (h, w, c), (c, h, w + 1), (c, w, h), (0,), (), (0, h, w)]),
        st.lists(st.integers(0, 40), max_size=4).map(tuple),
    )


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    """`x` as `dtype`, NaN and out-of-range values wrapping as they may: odd bytes are the point."""
    with np.errstate(all="ignore"):
        return x.astype(dtype)


def mostly(good: SearchStrategy[Any], odd: SearchStrategy[Any], one_in: int = 6) -> SearchStrategy[Any]:
    """`good`, and `odd` about once in `one_in`: a request with several parts stays valid often enough
    to reach the model, with one or two parts wrong in the others."""
    return st.integers(1, one_in).flatmap(lambda roll: odd if roll == 1 else good)


# Header values that are legal HTTP (no control characters, no leading whitespace): uvicorn's parser
# refuses the others before any route sees them, with a plain-text 400 of its own.
HEADER_TEXT = st.text(st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\x7f"), max_size=16).map(
    str.lstrip
)


def utf8_header(value: str) -> str | bytes:
    """Header values go as latin-1 on the wire; anything else is sent as its UTF-8 bytes."""
    try:
        value.encode("latin-1")
        return value
    except UnicodeEncodeError:
        return value.encode()


# -- request fields (JSON, form fields, query strings) -----------------------------------------


@st.composite
def interpolations(draw) -> dict[str, Any]:
    """/generate's `interpolate` object: two seeds and a number of steps, now and then a part odd,
    missing or unknown."""
    seed_ = mostly(st.integers(0, 2**32 - 1), ODD_JSON | st.sampled_from([-1, 2**32]))
    out = {"from_seed": draw(seed_), "to_seed": draw(seed_)}
    if draw(st.booleans()):
        out["steps"] = draw(mostly(st.integers(2, 12), ODD_JSON | st.sampled_from([0, 1, 65, 101, 10**6])))
    if draw(st.integers(0, 9)) == 0:
        out.pop(draw(st.sampled_from(["from_seed", "to_seed"])))
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.sampled_from(["steps_", "n", "seed"]) | st.text(max_size=6))] = draw(ODD_JSON)
    return out


def good_values(name: str, served: Served, task: str) -> SearchStrategy[Any]:
    return {
        "interpolate": interpolations(),
        "model": st.sampled_from(served.names_for(task) or ["lenet"]),
        "top_k": st.integers(1, 12),
        "format": st.sampled_from(["json", "png"]),
        "n": st.sampled_from([1, 2, 3, 100]),
        "seed": st.integers(0, 2**32 - 1),
        "prompt": st.text(alphabet=served.vocabulary() or "ab", min_size=1, max_size=40),
        "max_new_tokens": st.integers(1, 24),
        "temperature": st.floats(0.05, 10),
        "stream": st.booleans(),
    }.get(name, st.nothing())


@st.composite
def request_fields(draw, served: Served, task: str, as_text: bool) -> dict[str, Any]:
    """The fields a task accepts, most valid, some odd, sometimes missing or unknown; `as_text`:
    as strings, as form fields and query parameters arrive."""
    accepted = TASKS[task].accepted
    out: dict[str, Any] = {}
    for name in accepted:
        if name == "model" and draw(st.integers(0, 9)) == 0:
            continue
        if name != "model" and draw(st.booleans()):
            continue
        good = good_values(name, served, task)
        value = draw(st.one_of(good, good, good.map(str), ODD_TEXT if as_text else ODD_JSON))
        out[name] = value
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.text(max_size=8))] = draw(ODD_TEXT)
    if as_text:
        out = {
            k: v if isinstance(v, str) else json.dumps(v) if not isinstance(v, bool) else str(v) for k, v in out.items()
        }
    return out


@st.composite
def query_string(draw, fields: dict[str, str]) -> str:
    """`fields` percent-encoded, with repeated keys, keys without values and raw odd escapes."""
    pairs = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields.items()]
    extras = draw(
        st.lists(st.sampled_from(["", "=", "model", "model=", "=x", "%ZZ=1", "a=%", "top_k=1&top_k=2"]), max_size=2)
    )
    pairs += extras
    pairs = draw(st.permutations(pairs))
    return "?" + "&".join(pairs) if pairs else ""


# -- image-route bodies ------------------------------------------------------------------------


def json_body(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()


@st.composite
def image_json(draw, served: Served, task: str, path: str) -> FuzzRequest:
    fields = draw(request_fields(served, task, as_text=False))
    row = draw(st.sampled_from(served.row_shapes(task)))
    if draw(st.integers(0, 9)) > 0:
        shape = draw(shapes(row))
        if np.prod(shape) <= 20_000:
            image = draw(tensors(shape)).round(4).tolist()
            fields["image"] = image if draw(st.integers(0, 4)) else draw(st.just(image) | st.just([image, [0.5]]))
        else:
            fields["image"] = []
    if draw(st.integers(0, 5)) == 0:
        fields["image"] = draw(
            ODD_JSON | st.lists(st.one_of(st.floats(0, 1), st.text(max_size=2), st.none()), max_size=30)
        )
    ctype = draw(st.sampled_from(["application/json", "application/json; charset=utf-8", "Application/JSON "]))
    return FuzzRequest("POST", path, {"Content-Type": ctype}, json_body(fields))


NPY_MAGIC = b"\x93NUMPY"
NPY_DTYPES = ["<f4", "<f8", "<f2", "|u1", "<i4", "<i8", "<u2", "|i1", "<u8", "|b1", ">f4", ">i4", "<c8"]
NPY_DESCRS = [*NPY_DTYPES, "|O", "O", "<U4", "|S3", "|V4", "<M8[s]", "f4", "=f4", "<f16", "<f4 ", "'<f4'"]
NPY_SHAPES = ["()", "(0,)", "(-1, 28, 28)", "(True,)", "(1.0, 28, 28)", "(400000, 400000, 400000)", "(2147483648,)"]
NPY_SHAPES += ["((1, 2),)", "[1, 28, 28]", "(1,28,28,)", "(" * 50 + ")" * 50, "(999999999, 0)", "(1, 1, 1, 1, 1)"]


class _Marker:
    """Pickled into an object-dtype .npy: unpickling it would create the marker file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def npy_bytes(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


@st.composite
def npy_file(draw, served: Served, task: str) -> bytes:
    """numpy.save() of arrays of every dtype, order and shape; crafted headers; pickles; garbage."""
    row = draw(st.sampled_from(served.row_shapes(task)))
    how = draw(st.sampled_from(["numpy", "numpy", "crafted", "crafted", "pickle", "garbage"]))
    if how == "numpy":
        shape = draw(shapes(row))
        if np.prod(shape) > 20_000:
            shape = row
        arr = draw(tensors(shape))
        dtype = draw(st.sampled_from(NPY_DTYPES))
        if dtype[1] in "iub":
            arr = np.nan_to_num(arr * draw(st.sampled_from([1, 255])), posinf=0, neginf=0)
        arr = cast(arr, dtype)
        data = npy_bytes(np.asfortranarray(arr) if draw(st.booleans()) else arr)
    elif how == "pickle":
        payload = draw(st.sampled_from(["marker", "list", "strings"]))
        obj = np.empty(row, dtype=object)
        obj.flat[0] = {"marker": _Marker(served.pickle_marker), "list": [0.5], "strings": "0.5"}[payload]
        data = npy_bytes(obj, allow_pickle=True)
    elif how == "garbage":
        return NPY_MAGIC + draw(st.binary(max_size=300))
    else:
        descr = draw(st.sampled_from(NPY_DESCRS) | st.text(max_size=8))
        fortran = draw(st.sampled_from(["False", "True", "0", "None", "'False'"]))
        shape_text = draw(st.one_of(st.just(str(row)), st.just(str(row[1:])), st.sampled_from(NPY_SHAPES)))
        q = draw(st.sampled_from(["'", '"']))
        entries = [f"{q}descr{q}: {descr!r}", f"{q}fortran_order{q}: {fortran}", f"{q}shape{q}: {shape_text}"]
        entries = draw(st.permutations(entries))
        if draw(st.integers(0, 5)) == 0:
            entries = entries[: draw(st.integers(0, 2))] + draw(
                st.sampled_from([[], ["'extra': 1"], ["'descr': '<f4'"]])
            )
        text = "{" + ", ".join(entries) + draw(st.sampled_from([", }", "}", ",}", " , } "]))
        text += " " * (-(len(text) + 11) % 64) + "\n"
        version = draw(st.sampled_from([1, 2, 3]) | st.integers(0, 255))
        header = text.encode("latin-1", errors="replace")
        size = len(header) if draw(st.integers(0, 5)) else draw(st.integers(0, 2**16))
        width = 2 if version == 1 else 4
        prefix = NPY_MAGIC + bytes([version, 0]) + (size % 2 ** (8 * width)).to_bytes(width, "little")
        try:
            itemsize = np.dtype(descr).itemsize
        except (TypeError, ValueError, SyntaxError):
            itemsize = 4
        dims = [int(d) for d in re.findall(r"\d+", shape_text)]
        count = int(np.prod(dims)) if dims else 1
        nbytes = count * itemsize if count * itemsize <= 100_000 else draw(st.integers(0, 4096))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        if descr in ("<f4", "f4", "=f4"):
            blob = cast(tensor((nbytes // 4,), draw(st.sampled_from(FILLS)), 0), "<f4").tobytes()
        else:
            blob = rng.bytes(nbytes)
        data = prefix + header + blob
    cut = draw(st.sampled_from([0, 0, 0, 1, -1, 7]))  # truncated or with bytes to spare
    return data[:-cut] if cut > 0 else data + b"\0" * -cut


@st.composite
def npy_request(draw, served: Served, task: str, path: str) -> FuzzRequest:
    fields = draw(request_fields(served, task, as_text=True))
    ctype = draw(st.sampled_from(["application/x-npy", "application/x-npy; charset=binary", "APPLICATION/X-NPY"]))
    return FuzzRequest("POST", path + draw(query_string(fields)), {"Content-Type": ctype}, draw(npy_file(served, task)))


RAW_SHAPES = ["", "0", "-1", "1,,28", "1.0,28,28", "١,٢٨,٢٨", "²,28,28", "4294967296,4294967296", "1,1,1,1,1"]
RAW_SHAPES += ["+1,28,28", "1_0,28,28", "28 , 28 ", "28,28,", "(1,28,28)", "1 28 28", "9" * 500, "28x28", "-28,-28"]


@st.composite
def raw_request(draw, served: Served, task: str, path: str) -> FuzzRequest:
    """Little-endian float32 with X-Tensor-Shape: the right shapes, odd ones, and wrong lengths."""
    fields = draw(request_fields(served, task, as_text=True))
    row = draw(st.sampled_from(served.row_shapes(task)))
    dims = draw(shapes(row) | st.lists(st.integers(-2, 3000), min_size=1, max_size=5).map(tuple))
    header = draw(st.one_of(st.just(",".join(map(str, dims))), st.sampled_from(RAW_SHAPES), HEADER_TEXT))
    count = int(np.prod(dims)) if dims and min(dims) >= 0 and np.prod(dims, dtype=object) <= 100_000 else 16
    data = cast(draw(tensors((count,))), draw(st.sampled_from(["<f4", "<f4", "<f8", ">f4", "|u1"]))).tobytes()
    cut = draw(st.sampled_from([0, 0, 0, 1, 3, 4, -4]))
    data = data[:-cut] if cut > 0 else data + b"\0" * -cut
    headers: dict[str, Any] = {"Content-Type": "application/octet-stream"}
    if draw(st.integers(0, 9)):
        headers["X-Tensor-Shape"] = utf8_header(header)
    if draw(st.integers(0, 3)) == 0:  # not read by the service: must change nothing
        headers["X-Tensor-Dtype"] = draw(st.sampled_from(["float32", "float64", "int8", "bogus", ""]))
    return FuzzRequest("POST", path + draw(query_string(fields)), headers, data)


IMAGE_MODES = {"PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"], "JPEG": ["L", "RGB", "CMYK"]}


@st.composite
def pillow_image(draw) -> tuple[bytes, str]:
    """A small valid image (odd modes and sizes) and its format."""
    fmt = draw(st.sampled_from(["PNG", "JPEG"]))
    mode = draw(st.sampled_from(IMAGE_MODES[fmt]))
    width, height = draw(
        st.sampled_from([(28, 28), (32, 32), (1, 1), (1, 500), (300, 1), (7, 3)])
        | st.tuples(st.integers(1, 64), st.integers(1, 64))
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue(), fmt


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


@st.composite
def image_file(draw) -> bytes:
    """Valid small images, truncated ones, image magic followed by garbage, declared sizes from 0 to
    2**32 - 1, and formats other than PNG and JPEG."""
    how = draw(st.sampled_from(["pillow", "pillow", "truncated", "magic", "declared", "other"]))
    if how == "pillow":
        return draw(pillow_image())[0]
    if how == "truncated":
        data = draw(pillow_image())[0]
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "magic":
        return draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\0\x10JFIF\0"])) + draw(
            st.binary(max_size=300)
        )
    if how == "declared":
        width, height = draw(st.tuples(*[st.sampled_from([0, 1, 28, 4096, 4097, 65535, 2**31 - 1, 2**32 - 1])] * 2))
        if draw(st.booleans()):  # a PNG whose header declares the size, with one small IDAT
            ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
            idat = zlib.compress(b"\0" * draw(st.integers(0, 100)))
            return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
        data = bytearray(small_jpeg(draw(st.integers(0, 2**16))))  # a JPEG whose SOF0 declares the size
        sof = data.find(b"\xff\xc0")
        data[sof + 5 : sof + 9] = (height % 65536).to_bytes(2, "big") + (width % 65536).to_bytes(2, "big")
        return bytes(data)
    fmt = draw(st.sampled_from(["GIF", "BMP", "WEBP", "TIFF", "ICO", "PPM"]))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, fmt)
    return buf.getvalue()


def small_jpeg(seed_: int) -> bytes:
    rng = np.random.default_rng(seed_)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(buf, "JPEG")
    return buf.getvalue()


IMAGE_TYPES = ["image/png", "image/jpeg", "IMAGE/PNG", "image/jpeg; q=1", "image/png;charset=utf-8"]


@st.composite
def image_request(draw, served: Served, task: str, path: str) -> FuzzRequest:
    fields = draw(request_fields(served, task, as_text=True))
    ctype = draw(st.sampled_from(IMAGE_TYPES))
    return FuzzRequest("POST", path + draw(query_string(fields)), {"Content-Type": ctype}, draw(image_file()))


BOUNDARIES = ["", "a" * 71, "a" * 200, "é", "--", '"quoted"', "a b", "x;y", "boundary "]


@st.composite
def multipart_request(draw, served: Served, task: str, path: str) -> FuzzRequest:
    """multipart/form-data with odd boundaries, missing or several files, too many fields, fields in
    Unicode digits, parts without a name or a filename, and endings missing."""
    boundary = draw(
        mostly(
            st.text(alphabet="abcdefXYZ0123456789-_'()+,./:=?", min_size=1, max_size=70), st.sampled_from(BOUNDARIES)
        )
    )
    declared = boundary if draw(st.integers(0, 9)) else draw(st.sampled_from(["other", "", '"' + boundary + '"']))
    ctype = draw(
        mostly(
            st.just(f"multipart/form-data; boundary={declared}"),
            st.sampled_from(["multipart/form-data", f"Multipart/Form-Data;boundary={declared};charset=utf-8"]),
        )
    )
    parts = []
    fields = draw(request_fields(served, task, as_text=True))
    fields |= draw(
        mostly(
            st.just({}),
            st.sampled_from([{"top_k": "٣"}, {"n": "①"}, {f"f{i}": "x" for i in range(20)}, {"_charset_": "utf-16"}]),
        )
    )
    for name, value in fields.items():
        parts.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
    for _ in range(draw(mostly(st.just(1), st.sampled_from([0, 2, 3])))):
        filename = draw(
            st.sampled_from(
                [
                    '; filename="x.png"',
                    '; filename="../../etc/passwd"',
                    "",
                    '; filename=""',
                    "; filename*=UTF-8''%C3%A9.png",
                ]
            )
        )
        name = draw(mostly(st.just("image"), st.sampled_from(["Image", "", "image[]"])))
        ptype = draw(st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "text/plain", ""]))
        content = draw(
            mostly(
                pillow_image().map(lambda made: made[0]),
                image_file() | npy_file(served, task) | st.binary(max_size=100),
                3,
            )
        )
        head = f'Content-Disposition: form-data; name="{name}"{filename}' + (
            f"\r\nContent-Type: {ptype}" if ptype else ""
        )
        parts.append(head.encode() + b"\r\n\r\n" + content)
    if draw(st.integers(0, 9)) == 0:
        parts.append(
            draw(st.sampled_from([b"no headers at all", b"Content-Disposition: attachment\r\n\r\nx", b"\r\n\r\n"]))
        )
    parts = draw(st.permutations(parts))
    sep = b"--" + boundary.encode()
    newline = b"\r\n" if draw(st.integers(0, 9)) else b"\n"
    body = b"".join(sep + newline + p + newline for p in parts)
    body += draw(mostly(st.just(sep + b"--\r\n"), st.sampled_from([b"", sep, sep + b"--garbage"])))
    return FuzzRequest("POST", path + draw(query_string({})), {"Content-Type": utf8_header(ctype)}, body)


ODD_TYPES = [None, "", "text/plain", "application/xml", "application/x-www-form-urlencoded", "*/*", "image/gif"]
ODD_TYPES += ["APPLICATION/JSON", "application/json; charset=utf-16", "application/json;;;", "application/x-npz"]
ODD_TYPES += ["application/octet-stream", "multipart/mixed; boundary=x", "application/python-pickle", "image/webp"]
ODD_BODIES = [b"", b"null", b"[]", b"{}", b"\xef\xbb\xbf{}", '{"model": "lenet"}'.encode("utf-16"), b"1e400"]
ODD_BODIES += [
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 1100 + b"1" + b"}" * 1100,
    b'{"model": NaN}',
    b'{"model": "lenet", "model": 1}',
]
ODD_BODIES += [
    b'{"model": "lenet", "image": "AAAA"}',
    b"\x80\x04\x95",
    b"PK\x03\x04",
    b'{"model": 1e999}',
    b'{"model": "\\ud800"}',
]


@st.composite
def odd_request(draw, served: Served, task: str, path: str) -> FuzzRequest:
    """Odd content types and encodings, empty, non-UTF-8, deeply nested and non-JSON bodies."""
    headers: dict[str, Any] = {}
    ctype = draw(st.sampled_from(ODD_TYPES) | HEADER_TEXT)
    if ctype is not None:
        headers["Content-Type"] = utf8_header(ctype)
    if draw(st.integers(0, 4)) == 0:
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "br", "identity", "GZIP", ", ", "deflate, gzip"]))
    body = draw(st.sampled_from(ODD_BODIES) | st.binary(max_size=300))
    query = draw(
        query_string(draw(st.dictionaries(st.sampled_from(["model", "top_k", "format", "n"]), ODD_TEXT, max_size=3)))
    )
    return FuzzRequest("POST", path + query, headers, body)


# -- JSON-only task bodies ---------------------------------------------------------------------


@st.composite
def task_json(draw, served: Served, task: str, path: str) -> FuzzRequest:
    """The fields of a task that takes a JSON object only (samples, text generation)."""
    fields = draw(request_fields(served, task, as_text=False))
    if "interpolate" in fields and draw(st.integers(0, 3)):  # mostly alone: with n or seed it is a 400
        fields = {k: v for k, v in fields.items() if k not in ("n", "seed")}
    if "prompt" in fields and draw(st.integers(0, 9)) == 0:
        fields["prompt"] = draw(st.sampled_from(["x" * 100_000, "\ud7ff", "é" * 3000, "\x00", "a\nb"]))
    return FuzzRequest("POST", path, {"Content-Type": "application/json"}, json_body(fields))


# -- the Open Inference Protocol (v2) ----------------------------------------------------------

V2_TYPES = ["FP32", "FP64", "FP16", "INT8", "INT64", "UINT8", "BOOL", "BYTES", "fp32", "", "FP32 "]


def path_with(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: quote(values[m.group(1)], safe="").replace(".", "%2E"), path)


@st.composite
def path_values(draw, served: Served, path: str) -> tuple[str, dict[str, Any] | None]:
    """The route's path with its parameters filled: served names and versions, and odd text. Not
    '/' nor a newline: this route never sees those paths (one is another path, and BentoML's mount
    does not match the other, answering its own plain-text 404)."""
    text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/\n"), min_size=1, max_size=20)
    name = draw(mostly(st.sampled_from(sorted(served.cards)), text, 3))
    card = served.cards.get(name)
    version = card["version"] if card and draw(st.integers(0, 5)) else draw(text)
    values = {"model": name, "name": name, "version": version}
    return path_with(path, values), card


@st.composite
def v2_request(draw, served: Served, path: str, binary: bool) -> FuzzRequest:
    """An inference request: JSON tensors, or a JSON header followed by binary tensors (binary
    tensor data extension) with odd header lengths, binary_data_size mismatches, and outputs
    asking binary_data with parameters of the wrong type."""
    url, card = draw(path_values(served, path))
    spec = card["inputs"][0] if card else {"name": "image", "shape": ["batch_size", 1, 28, 28]}
    rest = [d for d in spec["shape"][1:] if isinstance(d, int)] or [4]
    batch = draw(mostly(st.sampled_from([1, 2, 3]), st.sampled_from([0, -1, 65, 101, 2**40])))
    shape = draw(
        mostly(st.just([batch, *rest]), st.lists(st.integers(-2, 40) | st.booleans() | st.floats(0, 2), max_size=5))
    )
    count = (
        int(np.prod(shape))
        if all(isinstance(d, int) and 0 <= d < 1000 for d in shape) and np.prod(shape) <= 40_000
        else 16
    )
    values = draw(tensors((max(count, 0),)))
    entry: dict[str, Any] = {
        "name": draw(mostly(st.just(spec["name"]), st.sampled_from(["input", "", "IMAGE"]) | ODD_JSON)),
        "datatype": draw(mostly(st.just("FP32"), st.sampled_from(V2_TYPES) | ODD_JSON)),
        "shape": draw(mostly(st.just(shape), ODD_JSON)),
    }
    blob = b""
    if binary:
        blob = cast(values, "<f4").tobytes()
        entry["parameters"] = {"binary_data_size": draw(mostly(st.just(len(blob)), ODD_JSON | st.integers(-8, 2**20)))}
        blob += draw(mostly(st.just(b""), st.sampled_from([b"\0", b"\0" * 4])))
        blob = blob[: draw(mostly(st.none(), st.sampled_from([0, 3])))]
    else:
        data = values.round(4).tolist()
        entry["data"] = draw(
            st.just(data)
            | st.just([data])
            | st.just(data[:-1])
            | ODD_JSON
            | st.lists(st.one_of(st.booleans(), st.text(max_size=2), st.none()), max_size=8)
        )
        if draw(st.integers(0, 9)) == 0:
            entry["parameters"] = draw(ODD_JSON | st.just({"binary_data_size": 0}))
    req: dict[str, Any] = {
        "inputs": draw(mostly(st.just([entry]), st.sampled_from([[entry, entry], [entry, {}], ["image"]])))
    }
    outs = card["outputs"] if card else [{"name": "logits"}]
    flag = mostly(st.booleans(), ODD_JSON | st.sampled_from(["true", "false", 0, 1]))
    if draw(st.booleans()):
        output = st.builds(
            lambda name, params: {"name": name, **params},
            mostly(st.sampled_from([o["name"] for o in outs]), ODD_JSON),
            st.just({}) | flag.map(lambda v: {"parameters": {"binary_data": v}}),
        )
        req["outputs"] = draw(mostly(st.lists(output, max_size=4), ODD_JSON))
    if draw(st.integers(0, 3)) == 0:
        req["parameters"] = draw(mostly(st.builds(lambda v: {"binary_data_output": v}, flag), ODD_JSON))
    if draw(st.integers(0, 3)) == 0:
        req["id"] = draw(st.text(max_size=300) | ODD_JSON)
    header = json_body(req)
    headers: dict[str, Any] = {
        "Content-Type": draw(
            st.sampled_from(
                ["application/json", "application/octet-stream", "application/json; charset=utf-8", "text/plain"]
            )
        )
    }
    if binary and draw(st.integers(0, 9)):
        length = draw(
            st.sampled_from(
                [str(len(header))] * 4
                + [
                    "",
                    "-1",
                    "+5",
                    "12 ",
                    "0",
                    "²",
                    "١٢",
                    "1e3",
                    "9" * 50,
                    str(len(header) + len(blob) + 1),
                    str(len(header) - 1),
                ]
            )
        )
        headers["Inference-Header-Content-Length"] = utf8_header(length)
    return FuzzRequest("POST", url, headers, header + blob)


# -- GET routes --------------------------------------------------------------------------------


@st.composite
def get_request(draw, served: Served, path: str) -> FuzzRequest:
    url, _ = draw(path_values(served, path))
    fields = draw(
        st.dictionaries(
            st.sampled_from(["model", "version", "format", "q"]) | st.text(max_size=6), ODD_TEXT, max_size=3
        )
    )
    return FuzzRequest("GET", url + draw(query_string(fields)), {})


# -- which generators fuzz which route -----------------------------------------------------------

Generator = Callable[[Served, str], SearchStrategy[FuzzRequest]]
IMAGE_KINDS: dict[str, Callable[[Served, str, str], SearchStrategy[FuzzRequest]]] = {
    "json": image_json,
    "npy": npy_request,
    "raw": raw_request,
    "image": image_request,
    "multipart": multipart_request,
    "odd": odd_request,
}
JSON_KINDS = {"json": task_json, "odd": odd_request}
V2_KINDS: dict[str, Generator] = {
    "json": lambda served, path: v2_request(served, path, binary=False),
    "binary": lambda served, path: v2_request(served, path, binary=True),
    "odd": lambda served, path: odd_request(served, "classify", path_with(path, {"model": "lenet", "version": "1"})),
}
PATH_PARAMS = {"model", "name", "version"}  # what path_values fills


def mounted() -> set[tuple[str, str]]:
    """(method, path) of every route the app mounts (HEAD is Starlette's echo of GET; a Mount, which
    declares no methods, is fuzzed with GET at its path)."""
    routes = [*http_app.routes, *V2_ROUTES]
    return {(m, route.path) for route in routes for m in getattr(route, "methods", None) or ["GET"] if m != "HEAD"}


def _task_kinds(name: str) -> dict[str, Generator]:
    kinds = IMAGE_KINDS if TASKS[name].takes_image else JSON_KINDS if name in ("generate", "generate_text") else {}
    return {kind: (lambda served, path, make=make: make(served, name, path)) for kind, make in kinds.items()}


GENERATORS: dict[tuple[str, str], dict[str, Generator]] = {
    # Every task that takes an image reads it with service.inputs.read_image_request: every form.
    # A task that takes JSON only needs its own fields listed above (else the meta-test fails).
    **{("POST", f"/{name}"): _task_kinds(name) for name in TASKS},
    **{("POST", path): V2_KINDS for method, path in mounted() if path.startswith("/v2/") and path.endswith("/infer")},
    **{("GET", path): {"get": get_request} for method, path in mounted() if method == "GET"},
}
CASES = [(method, path, kind) for (method, path), kinds in sorted(GENERATORS.items()) for kind in kinds]


def test_every_mounted_route_has_a_generator():
    missing = sorted(route for route in mounted() if not GENERATORS.get(route))
    assert not missing, f"mounted routes without a request generator in {__name__}: {missing}"
    for _, path in mounted():
        assert set(re.findall(r"\{(\w+)\}", path)) <= PATH_PARAMS, path
    assert {("POST", "/classify"), ("POST", "/v2/models/{model}/infer")} <= set(GENERATORS)


def test_every_field_a_task_accepts_has_valid_values_to_draw():
    """A field added to a task (e.g. /generate's interpolate) is fuzzed with values that reach the
    model, not only with odd ones."""
    served = Served({}, Path("unused"))
    missing = [f"/{t}: {f}" for t, task in TASKS.items() for f in task.accepted if good_values(f, served, t).is_empty]
    assert not missing, f"fields without valid values in good_values(): {missing}"


# -- running them ------------------------------------------------------------------------------

SEEN: Counter[tuple[str, str, int]] = Counter()  # (route, kind, status) -> requests
ELAPSED: dict[str, float] = {}


@pytest.fixture(scope="module")
def served(server, tmp_path_factory) -> Served:
    models = requests.get(f"{server}/models", timeout=10).json()["models"]
    return Served({c["name"]: c for c in models}, tmp_path_factory.mktemp("fuzz") / "unpickled")


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Requests sent, statuses seen and time taken, printed at the end of the module."""
    yield
    if not SEEN:
        return
    statuses = Counter()
    for (_, _, status), n in SEEN.items():
        statuses[status] += n
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(
            f"\nfuzz: {sum(SEEN.values())} requests in {sum(ELAPSED.values()):.0f} s over {len(ELAPSED)} "
            "(route, body kind) cases; statuses " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
        )
    SEEN.clear()
    ELAPSED.clear()


def check(server: str, session: requests.Session, req: FuzzRequest, case: str) -> None:
    try:
        r = session.request(req.method, server + req.url, headers=req.headers, data=req.body, timeout=60)
    except requests.RequestException as exc:
        pytest.fail(f"no answer ({type(exc).__name__}: {exc}) to {req!r}")
    path, kind = case.rsplit(" ", 1)
    SEEN[(path, kind, r.status_code)] += 1
    assert r.status_code < 500, f"{r.status_code} {r.text[:300]!r} for {req!r}"
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:200], req)
        assert len(r.content) < MAX_ERROR_BYTES, (r.status_code, len(r.content), req)
        error = r.json().get("error")
        assert isinstance(error, str) and error, (r.status_code, r.text[:200], req)


def fuzz(
    server: str, session: requests.Session, served: Served, case: tuple[str, str, str], examples: int, variant: str
):
    method, path, kind = case
    strategy = GENERATORS[(method, path)][kind](served, path)
    name = f"{path} {kind}"

    @seed(zlib.crc32(f"{variant} {method} {path} {kind}".encode()))
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(req=strategy)
    def send(req: FuzzRequest) -> None:
        check(server, session, req, name)

    start = time.perf_counter()
    try:
        send()
    finally:
        ELAPSED[f"{variant} {name}"] = time.perf_counter() - start
    assert session.get(f"{server}/livez", timeout=10).status_code == 200
    assert not served.pickle_marker.exists(), "a .npy body was unpickled"


@pytest.mark.parametrize("case", CASES, ids=[f"{m} {p} {k}" for m, p, k in CASES])
def test_fuzzed_requests_get_no_server_error(server, session, served, case):
    fuzz(server, session, served, case, EXAMPLES, "default")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[f"{m} {p} {k}" for m, p, k in CASES])
def test_fuzzed_requests_get_no_server_error_at_scale(server, session, served, case):
    fuzz(server, session, served, case, EXAMPLES_AT_SCALE, "at_scale")
