"""Open Inference Protocol (KServe v2) checked with Triton's own client, against ONNX Runtime
called directly; plus the protocol's error answers and the compact binary forms of /classify."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from core.session import CUDA, make_session
from training.registry import served_graphs

GRAPHS = {n: g for n, g in served_graphs().items() if g[1].spec.generation is None}  # tensor in, tensor out
TEXT = [n for n, g in served_graphs().items() if g[1].spec.generation is not None]


@pytest.fixture(scope="module")
def client(server):
    return th.InferenceServerClient(server.removeprefix("http://"), network_timeout=30)


def session(exported, name: str, provider: str) -> ort.InferenceSession:
    """ONNX Runtime called directly, on the provider the server runs the model on (with its options)."""
    return make_session(exported[name].with_name("model.onnx"), "cuda" if provider == CUDA else "cpu")[0]


def direct(exported, name: str, x: np.ndarray, provider: str) -> np.ndarray:
    sess = session(exported, name, provider)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "ee559" and "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("name", list(GRAPHS))
def test_model_metadata_from_the_card(client, exported, name: str):
    card = json.loads(exported[name].read_text())
    assert client.is_model_ready(name) and client.is_model_ready(name, card["version"])
    meta = client.get_model_metadata(name)
    assert meta["versions"] == [card["version"]]
    spec = GRAPHS[name][1].spec.resolve(card["config"])  # dimensions named by the config: the checkpoint's
    assert meta["inputs"] == [{"name": t.name, "datatype": "FP32", "shape": [-1, *t.shape[1:]]} for t in spec.inputs]
    assert meta["outputs"] == [{"name": t.name, "datatype": "FP32", "shape": [-1, *t.shape[1:]]} for t in spec.outputs]
    assert client.get_model_metadata(name, card["version"])["name"] == name


@pytest.mark.parametrize("binary_in, binary_out", [(False, False), (True, True), (True, False), (False, True)])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_infer_matches_onnx_runtime(client, exported, served_provider, name: str, binary_in: bool, binary_out: bool):
    spec = GRAPHS[name][1].spec.resolve(json.loads(exported[name].read_text())["config"])
    x = np.random.default_rng(0).random((5, *spec.inputs[0].shape[1:]), dtype=np.float32)
    inp = th.InferInput(spec.inputs[0].name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out_name = spec.outputs[0].name
    result = client.infer(
        name, [inp], outputs=[th.InferRequestedOutput(out_name, binary_data=binary_out)], request_id="req-7"
    )
    got = result.as_numpy(out_name)
    assert got.shape == (5, *spec.outputs[0].shape[1:]) and got.dtype == np.float32
    np.testing.assert_allclose(got, direct(exported, name, x, served_provider), rtol=0, atol=1e-5)
    assert result.get_response()["id"] == "req-7"


MULTI = [n for n, g in GRAPHS.items() if len(g[1].spec.outputs) > 1]  # resnet (logits, cam), vae, autoencoder


@pytest.mark.parametrize("name", MULTI)
def test_every_output_in_binary_at_its_offset_through_the_versioned_route(client, exported, served_provider, name: str):
    """All outputs as binary tensors, one after the other in the body (each at the offset the sizes
    before it give), through /v2/models/{name}/versions/{version}/infer, against ONNX Runtime."""
    card = json.loads(exported[name].read_text())
    spec = GRAPHS[name][1].spec
    x = np.random.default_rng(1).random((3, *spec.inputs[0].shape[1:]), dtype=np.float32)
    inp = th.InferInput(spec.inputs[0].name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    wanted = [th.InferRequestedOutput(o.name, binary_data=True) for o in reversed(spec.outputs)]  # any order
    result = client.infer(name, [inp], outputs=wanted, model_version=card["version"])
    sess = session(exported, name, served_provider)
    expected = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    sizes = [o["parameters"]["binary_data_size"] for o in result.get_response()["outputs"]]
    assert [o["name"] for o in result.get_response()["outputs"]] == [o.name for o in reversed(spec.outputs)]
    assert sizes == [expected[o.name].nbytes for o in reversed(spec.outputs)]
    for o in spec.outputs:
        np.testing.assert_allclose(result.as_numpy(o.name), expected[o.name], rtol=0, atol=1e-5)
    with pytest.raises(InferenceServerException, match="no version"):
        client.infer(name, [inp], model_version="0000000000000000")


@pytest.mark.parametrize("name", TEXT)
def test_text_models_are_described_and_point_to_generate_text(client, server, name: str):
    meta = client.get_model_metadata(name)
    assert meta["inputs"][0] == {"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}
    r = requests.post(
        f"{server}/v2/models/{name}/infer",
        timeout=10,
        json={"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 1], "data": [0]}]},
    )
    assert r.status_code == 400 and "/generate_text" in r.json()["error"]


def test_unknown_model_and_version_are_404(client, server):
    with pytest.raises(InferenceServerException, match="not served"):
        client.get_model_metadata("resnet152")
    with pytest.raises(InferenceServerException, match="no version"):
        client.get_model_metadata("lenet", "0")
    assert not client.is_model_ready("resnet152")
    r = requests.post(f"{server}/v2/models/nope/infer", json={"inputs": []}, timeout=10)
    assert r.status_code == 404 and "error" in r.json()


V2_BAD = [
    ("not JSON", b"{", {}),
    ("no inputs", json.dumps({"x": 1}).encode(), {}),
    (
        "wrong input name",
        json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0] * 784}]}
        ).encode(),
        {},
    ),
    (
        "wrong datatype",
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "INT64", "shape": [1, 1, 28, 28], "data": [0] * 784}]}
        ).encode(),
        {},
    ),
    (
        "wrong shape",
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28], "data": [0] * 784}]}
        ).encode(),
        {},
    ),
    (
        "batch over max",
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [10**6, 1, 28, 28], "data": [0]}]}
        ).encode(),
        {},
    ),
    (
        "data count",
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0] * 10}]}
        ).encode(),
        {},
    ),
    (
        "strings",
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": ["a"] * 784}]}
        ).encode(),
        {},
    ),
    (
        "binary size lies",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "FP32",
                        "shape": [1, 1, 28, 28],
                        "parameters": {"binary_data_size": 4 * 784},
                    }
                ]
            }
        ).encode()
        + b"\0" * 8,
        {"Inference-Header-Content-Length": "X"},
    ),
    (
        "unknown output",
        json.dumps(
            {
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0] * 784}],
                "outputs": [{"name": "probs"}],
            }
        ).encode(),
        {},
    ),
    # found by schemathesis (500s before): a name that is not a string, parameters that are not objects
    (
        "object as name",
        json.dumps({"inputs": [{"name": {}, "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0] * 784}]}).encode(),
        {},
    ),
    (
        "list as parameters",
        json.dumps(
            {
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0] * 784}],
                "parameters": [],
            }
        ).encode(),
        {},
    ),
    (
        "string as input parameters",
        json.dumps(
            {
                "inputs": [
                    {"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0] * 784, "parameters": "x"}
                ]
            }
        ).encode(),
        {},
    ),
    (
        "list as output parameters",
        json.dumps(
            {
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0] * 784}],
                "outputs": [{"name": "logits", "parameters": [1]}],
            }
        ).encode(),
        {},
    ),
]


@pytest.mark.parametrize("desc, body, headers", V2_BAD, ids=[b[0] for b in V2_BAD])
def test_bad_infer_requests_are_400(server, desc, body, headers):
    if headers.get("Inference-Header-Content-Length") == "X":
        headers = {"Inference-Header-Content-Length": str(body.index(b"\0"))}
    r = requests.post(
        f"{server}/v2/models/lenet/infer",
        data=body,
        timeout=10,
        headers={"Content-Type": "application/json", **headers},
    )
    assert r.status_code == 400, f"{desc}: {r.status_code} {r.text[:200]}"
    assert set(r.json()) == {"error"} and r.json()["error"]


def test_classify_accepts_npy_and_raw_float32(server, exported, served_provider):
    x = np.random.default_rng(1).random((1, 28, 28), dtype=np.float32)
    expected = int(direct(exported, "lenet", x[None], served_provider).argmax())
    buf = io.BytesIO()
    np.save(buf, x)
    r1 = requests.post(
        f"{server}/classify",
        params={"model": "lenet"},
        data=buf.getvalue(),
        headers={"Content-Type": "application/x-npy"},
        timeout=10,
    )
    r2 = requests.post(
        f"{server}/classify",
        params={"model": "lenet"},
        data=x.astype("<f4").tobytes(),
        headers={"Content-Type": "application/octet-stream", "X-Tensor-Shape": "1,28,28"},
        timeout=10,
    )
    assert r1.status_code == r2.status_code == 200
    assert r1.json()["class_index"] == r2.json()["class_index"] == expected


def test_npy_with_pickled_objects_is_refused(server, tmp_path):
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
    r = requests.post(
        f"{server}/classify",
        params={"model": "lenet"},
        data=buf.getvalue(),
        headers={"Content-Type": "application/x-npy"},
        timeout=10,
    )
    assert r.status_code == 400 and "pickled" in r.json()["error"]
    assert not marker.exists()


def test_raw_float32_needs_a_matching_shape_header(server):
    body = np.zeros(784, dtype="<f4").tobytes()
    for headers in ({}, {"X-Tensor-Shape": "28,29"}, {"X-Tensor-Shape": "a,b"}, {"X-Tensor-Shape": "2,28,28"}):
        r = requests.post(
            f"{server}/classify",
            params={"model": "lenet"},
            data=body,
            timeout=10,
            headers={"Content-Type": "application/octet-stream", **headers},
        )
        assert r.status_code == 400, headers
