"""Limits beyond the parser: compressed, trickled or oversized bodies, token authentication, and
models whose files do not match their cards."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from ..conftest import processes, start_server, stop_server, wait_ready

DIGIT = [[0.0] * 28 for _ in range(28)]


def test_compressed_bodies_are_refused_with_415(server):
    import gzip

    bomb = gzip.compress(b"[" * 10_000_000)  # ~10 KB that would inflate to 10 MB
    r = requests.post(
        f"{server}/classify",
        data=bomb,
        timeout=10,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 415 and "uncompressed" in r.json()["error"]


def test_body_just_under_the_limit_is_served(server):
    body = json.dumps({"model": "lenet", "image": DIGIT}).encode()
    padded = body[:-1] + b" " * (4 * 1024 * 1024 - len(body) - 1) + b"}"
    assert len(padded) <= 4 * 1024 * 1024
    r = requests.post(f"{server}/classify", data=padded, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text[:200]


def test_chunked_body_over_the_limit_is_413_without_content_length(server):
    def gen():
        for _ in range(80):
            yield b" " * 65536  # 5 MB, no Content-Length: judged by the bytes streamed

    r = requests.post(f"{server}/classify", data=gen(), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413


def test_a_million_one_byte_chunks_are_read_and_refused_before_the_body_deadline(server):
    """With httptools the million chunks are parsed in C, and the body of spaces is refused as
    malformed JSON: a 400, not the 408 of the body deadline (EE559_BODY_TIMEOUT_S, 3 s in these
    tests) that uvicorn's pure-Python parser (h11) ran into: this test fails with it."""
    import socket
    import threading

    url = urlparse(server)
    sock = socket.create_connection((url.hostname, url.port), timeout=5)
    head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"1\r\n \r\n" * 1_000_000 + b"0\r\n\r\n"

    def send() -> None:
        try:
            sock.sendall(head + body)
        except OSError:  # the server answered and closed before the million chunks were sent
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sock.settimeout(30)
    reply = b""
    while b"}" not in reply and (part := sock.recv(4096)):  # the status line, then the JSON error
        reply += part
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400") and b"malformed JSON" in reply, reply[:300]
    assert requests.post(f"{server}/classify", json={"model": "lenet", "image": DIGIT}, timeout=10).status_code == 200


def test_stalled_body_is_answered_408_and_the_server_goes_on(server):
    url = urlparse(server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/classify")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b'5\r\n{"mod\r\n')  # ...and never the rest (the server runs with a 3 s body timeout)
    resp = conn.getresponse()
    assert resp.status == 408 and b"not received within" in resp.read()
    conn.close()
    assert requests.post(f"{server}/classify", json={"model": "lenet", "image": DIGIT}, timeout=10).status_code == 200


def test_model_whose_file_differs_from_its_card_is_refused(exported, tmp_path: Path, monkeypatch):
    import bentoml

    from core import store

    tag = store.discover(("lenet",))["lenet"]
    src = Path(bentoml.models.get(tag).path)
    home = tmp_path / "home"
    dst = home / "models" / "lenet" / src.name
    shutil.copytree(src, dst)
    (home / "models" / "lenet" / "latest").write_text(src.name)
    onnx_file = dst / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    from bentoml._internal.models import ModelStore

    monkeypatch.setattr(bentoml.models, "get", lambda t: ModelStore(home / "models").get(t))
    with pytest.raises(store.ModelStoreError) as info:
        store.load(tag)
    msg = str(info.value)
    card = json.loads((dst / "model_card.json").read_text())
    assert str(onnx_file) in msg and card["sha256"] in msg and store.sha256_file(onnx_file) in msg


def test_a_server_on_a_tampered_store_stops_with_the_reason_and_never_serves(exported, tmp_path: Path):
    """A real `bentoml serve` over a store where one model file no longer matches its card: it exits
    at once, non-zero, naming the model and the checksum (no worker restarted forever), and never
    answers ready."""
    import bentoml

    from core import store

    home = tmp_path / "home"
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models", home / "models")
    tag = store.discover(("lenet",))["lenet"]
    onnx_file = home / "models" / "lenet" / Path(bentoml.models.get(tag).path).name / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    log = tmp_path / "serve.log"
    url, proc = start_server({"BENTOML_HOME": str(home)}, log=log)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        ready = requests.get(f"{url}/readyz", timeout=5).status_code if proc.poll() is None else None
        stop_server(proc)
        raise AssertionError(f"still running after 90 s (readyz {ready}): {log.read_text()[-2000:]}") from None
    text = log.read_text()
    assert proc.returncode != 0 and "lenet" in text and "sha256" in text, text[-2000:]


def test_token_authentication(exported, runs):
    url, proc = start_server({"EE559_API_TOKEN": "s3cret", "EE559_WORKERS": "1"}, log=runs / "serve-auth.log")
    try:
        wait_ready(url, proc)
        body = {"model": "lenet", "image": DIGIT}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = requests.post(f"{url}/classify", json=body, headers=headers, timeout=10)
            assert r.status_code == 401 and "bearer token" in r.json()["error"]
            assert requests.get(f"{url}/v2/models/lenet", headers=headers, timeout=10).status_code == 401
            assert (
                requests.post(f"{url}/v2/models/lenet/infer", json={}, headers=headers, timeout=10).status_code == 401
            )
        good = {"Authorization": "Bearer s3cret"}
        assert requests.post(f"{url}/classify", json=body, headers=good, timeout=10).status_code == 200
        assert requests.get(f"{url}/v2/models/lenet", headers=good, timeout=10).status_code == 200
        for probe in ("/readyz", "/livez", "/metrics", "/v2/health/ready"):
            assert requests.get(f"{url}{probe}", timeout=10).status_code == 200, probe
    finally:
        stop_server(proc)


class _Marker:
    """A pickle payload whose unpickling would create `path` (it must never run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("route", ["/classify", "/v2/models/lenet/infer"])
def test_pickle_payloads_are_refused_and_never_run(server, tmp_path: Path, route: str):
    import pickle

    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Marker(marker))
    for ctype in ("application/vnd.bentoml+pickle", "application/python-pickle", "application/octet-stream"):
        r = requests.post(
            f"{server}{route}", params={"model": "lenet"}, data=payload, headers={"Content-Type": ctype}, timeout=10
        )
        assert 400 <= r.status_code < 500, (route, ctype, r.status_code)
    assert not marker.exists()


@pytest.mark.parametrize(
    "image", ["http://127.0.0.1:1/digit.png", "file:///etc/passwd", {"url": "http://example.invalid/x.png"}]
)
def test_url_inputs_are_refused_not_fetched(server, image):
    r = requests.post(f"{server}/classify", json={"model": "lenet", "image": image}, timeout=10)
    assert r.status_code == 400 and "28x28" in r.json()["error"]


def test_multipart_with_a_long_boundary_tail_gets_a_4xx(server):
    boundary = "b" * 70
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nlenet\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\r"
        + b"-" * 100_000
    )
    r = requests.post(
        f"{server}/classify",
        data=body,
        timeout=10,  # a parser stuck on the tail times out
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize("route", ["/classify", "/v2/models/lenet/infer"])
def test_deeply_nested_json_is_a_400_and_the_server_goes_on(server, route: str):
    depth = 150_000
    body = b'{"model": "lenet", "inputs": ' + b"[" * depth + b"]" * depth + b', "image": 0}'
    r = requests.post(f"{server}{route}", data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    assert requests.post(f"{server}/classify", json={"model": "lenet", "image": DIGIT}, timeout=10).status_code == 200


def _worker_pids(root: int) -> list[int]:
    """The serving workers under `bentoml serve` (processes running the service, not the arbiter)."""
    return [
        pid
        for pid, fields in processes().items()
        if int(fields.get("PPid", "0")) == root and "worker" in fields["cmdline"]
    ]


def test_killed_worker_comes_back_and_only_its_requests_fail(exported, runs):
    import os
    import signal
    import threading
    import time

    url, proc = start_server({"EE559_WORKERS": "2"}, log=runs / "serve-kill.log")
    try:
        wait_ready(url, proc)
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2, workers
        results: list[int] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    r = requests.post(f"{url}/classify", json={"model": "lenet", "image": DIGIT}, timeout=10)
                    results.append(r.status_code)
                except requests.RequestException:
                    results.append(-1)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        while len(results) < 50:
            time.sleep(0.01)
        os.kill(workers[0], signal.SIGKILL)
        killed_at = len(results)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(_worker_pids(proc.pid)) < 2:
            time.sleep(0.2)
        back = _worker_pids(proc.pid)
        assert len(back) == 2 and workers[0] not in back, f"worker not replaced within 10 s: {back}"
        wait_ready(url, proc, timeout=10)
        served_after = len(results)
        while len(results) < served_after + 100:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
        failed = [c for c in results if c != 200]
        assert len(failed) <= 4, f"{len(failed)} failures: more than the 4 requests in flight at the kill"
        assert all(c == 200 for c in results[served_after:]), "requests kept failing after recovery"
        assert killed_at >= 50
    finally:
        stop_server(proc)


def _model_with_external_data(folder: Path, location: str) -> Path:
    """A one-node ONNX file whose single initializer takes its bytes from `location`."""
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [weight],
    )
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())  # as is: onnx.save would rewrite the data
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "link.bin"])
def test_external_data_outside_the_model_directory_is_refused(tmp_path: Path, location: str):
    from core import store

    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 16)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(outside)  # inside by name, outside by target
    with pytest.raises(store.ModelStoreError, match="outside the model's directory"):
        store.check_external_data(_model_with_external_data(folder, location))


def test_external_data_inside_the_model_directory_is_accepted(tmp_path: Path):
    from core import store

    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    store.check_external_data(_model_with_external_data(tmp_path, "weights.bin"))


def test_overload_is_shed_with_503_and_retry_after_never_500(exported, runs):
    """A queue of 8 rows per worker and model, one worker, 64 clients at once, each request a batch
    of 8 U-Net images (so one waiting request fills the queue, however fast the server is against
    these Python clients): the excess is answered 503 with Retry-After (not queued, not failed),
    the rest 200."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    url, proc = start_server({"EE559_WORKERS": "1", "EE559_MAX_QUEUE": "8"}, log=runs / "serve-overload.log")
    try:
        wait_ready(url, proc)
        batch = np.random.default_rng(0).random((8, 3, 32, 32)).round(3)
        body = json.dumps(
            {
                "inputs": [
                    {"name": "image", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
                ]
            }
        ).encode()

        def one(_):
            return requests.post(
                f"{url}/v2/models/unet/infer", data=body, timeout=30, headers={"Content-Type": "application/json"}
            )

        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(one, range(256)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503}, sorted(set(codes))
        shed = [a for a in answers if a.status_code == 503]
        print(f"overload: {len(shed)} of {len(codes)} shed")
        assert shed and codes.count(200) > 0, f"{len(shed)} shed of {len(codes)}"
        assert all(a.headers.get("Retry-After") == "1" and "capacity" in a.json()["error"] for a in shed)
        assert one(0).status_code == 200
        text = requests.get(f"{url}/metrics", timeout=5).text
        assert 'ee559_rejected_requests_total{reason="overloaded"}' in text
    finally:
        stop_server(proc)


def test_sigterm_turns_readiness_503_finishes_in_flight_requests_and_exits_0(exported, runs):
    """SIGTERM to the `bentoml serve` process alone (what an orchestrator signals: PID 1 of the
    container), timed: readiness answers 503 within a second; requests sent during the drain
    window (EE559_DRAIN_SECONDS) are all served; the listener closes only once the window is
    over; the generation in flight then completes; and the process exits 0 soon after it, not
    before the drain and not at an orchestrator's 30 s kill."""
    import signal
    import threading
    import time

    drain = 2.0
    url, proc = start_server(
        {"EE559_WORKERS": "1", "EE559_MAX_NEW_TOKENS": "100000", "EE559_DRAIN_SECONDS": f"{drain:g}"},
        log=runs / "serve-term.log",
    )

    def generate(n: int) -> requests.Response:
        return requests.post(
            f"{url}/generate_text", json={"model": "gpt", "prompt": "Return ", "max_new_tokens": n}, timeout=60
        )

    def readiness() -> int | str:
        """/readyz's status, or why there is none: once the worker stops serving, the arbiter's socket
        (BentoML's circus arbiter holds the listening socket until it exits) may still take the
        connection and never answer, or the connection is refused."""
        try:
            return requests.get(f"{url}/readyz", timeout=2).status_code
        except requests.ConnectionError:
            return "refused"
        except requests.Timeout:
            return "no answer"

    try:
        wait_ready(url, proc)
        assert readiness() == 200
        # A generation long enough to outlast the drain window: the rate of this machine, measured.
        start = time.monotonic()
        assert generate(2000).status_code == 200
        tokens = min(100_000, int(2000 / (time.monotonic() - start) * (drain + 4)))
        result: dict = {}

        def in_flight() -> None:
            r = generate(tokens)
            result.update(status=r.status_code, tokens=r.json().get("tokens"), done=time.monotonic())

        t = threading.Thread(target=in_flight)
        t.start()
        time.sleep(0.3)  # the generation is running
        os.kill(proc.pid, signal.SIGTERM)  # the server process only, not its process group
        signalled = time.monotonic()

        readiness_503 = None
        while time.monotonic() - signalled < 1.0 and readiness_503 is None:
            if readiness() == 503:
                readiness_503 = time.monotonic() - signalled
            time.sleep(0.02)
        v2_ready = requests.get(f"{url}/v2/health/ready", timeout=5).status_code

        during_drain: list = []  # (seconds after SIGTERM, status or the transport error)
        while time.monotonic() - signalled < drain - 0.3:
            sent = time.monotonic() - signalled
            try:  # a new connection each time, as a client not yet told of the drain would open
                status = requests.post(
                    f"{url}/classify", json={"model": "lenet", "image": DIGIT}, timeout=5
                ).status_code
            except requests.RequestException as e:
                status = type(e).__name__
            during_drain.append((round(sent, 2), status))
            time.sleep(0.1)

        seen = []  # readiness from the end of the drain window until the worker stops answering
        while time.monotonic() - signalled < drain + 5:
            closed = time.monotonic() - signalled
            seen.append(readiness())
            if not isinstance(seen[-1], int):
                break
            time.sleep(0.05)
        in_flight_when_closed = t.is_alive()

        exited = None
        while time.monotonic() - signalled < 30:
            if proc.poll() is not None:
                exited = time.monotonic() - signalled
                break
            time.sleep(0.05)
        t.join(30)
        done = result["done"] - signalled if "done" in result else None
        timeline = (
            f"SIGTERM at 0: readiness 503 at {readiness_503} s, drain {drain} s, not answered ({seen[-1]}) from {closed:.2f} s, "
            f"in-flight ({tokens} tokens) answered at {done} s, exit {proc.returncode} at {exited} s"
        )
        print(timeline)

        assert readiness_503 is not None and v2_ready == 503, timeline
        assert len(during_drain) >= 5 and all(s == 200 for _, s in during_drain), during_drain
        assert not isinstance(seen[-1], int) and set(seen[:-1]) <= {503}, f"readiness after SIGTERM: {seen}"
        assert seen[0] == 503 and closed <= drain + 5, timeline  # still serving at the window's end, not forever
        assert in_flight_when_closed and result.get("status") == 200 and result.get("tokens") == tokens, timeline
        assert exited is not None and proc.returncode == 0, timeline  # not at a 30 s kill
        assert done is not None and done <= exited <= done + 5, timeline  # drain + in-flight, then out
    finally:
        stop_server(proc)
