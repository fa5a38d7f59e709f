"""Every answer says which request it was (X-Request-ID) and where its time went (Server-Timing),
the metrics split queue from compute time per model, and no metric label takes request data: a
scanner's random URLs add no series, BentoML's own request metrics included."""

from __future__ import annotations

import re
import secrets

import pytest
import requests

from service import observe
from service.app import http_app
from service.observe import RequestTiming, request_id, route_label, server_timing

DIGIT = [[0.0] * 28 for _ in range(28)]


@pytest.mark.parametrize("sent", ["abc-123", "0f8c3e2a-55b1-4c1e-9d3b-6c1f2a9e7d10", "trace:42/7+x=", "a" * 128])
def test_a_sane_client_request_id_is_kept(sent: str):
    assert request_id({"headers": [(b"x-request-id", sent.encode())]}) == sent


@pytest.mark.parametrize("sent", [b"", b"a b", b"a" * 129, "é".encode(), b"a\r\nSet-Cookie: x", b"<script>", b"a,b"])
def test_an_odd_client_request_id_is_replaced(sent: bytes):
    generated = request_id({"headers": [(b"x-request-id", sent)]})
    assert re.fullmatch("[0-9a-f]{32}", generated)


def test_a_request_id_is_generated_when_none_is_sent():
    first, second = request_id({"headers": []}), request_id({})
    assert re.fullmatch("[0-9a-f]{32}", first) and first != second


@pytest.mark.parametrize(
    "path, label",
    [
        ("/classify", "/classify"),
        ("/generate_text", "/generate_text"),
        ("/models/lenet", "/models/{name}"),
        ("/v2/models/lenet/infer", "/v2/models/{model}/infer"),
        ("/v2/models/nobody/versions/7/infer", "/v2/models/{model}/versions/{version}/infer"),
        ("/livez", "/livez"),
        ("/wp-login.php", "other"),
        ("/classify/../../etc/passwd", "other"),
        ("/" + "x" * 5000, "other"),
    ],
)
def test_route_labels_are_templates_or_other(path: str, label: str):
    assert route_label(path) == label


def test_the_route_memo_stays_bounded_under_random_paths():
    for _ in range(10_000):
        route_label(f"/{secrets.token_hex(8)}")
    assert len(observe._labels) <= 4096


def test_server_timing_is_in_milliseconds():
    timing = RequestTiming("x", start=10.0, queue=0.0015, compute=0.0002)
    assert server_timing(timing, now=10.004) == b"queue;dur=1.500, compute;dur=0.200, total;dur=4.000"


def _timings(header: str) -> dict[str, float]:
    return {name: float(dur) for name, dur in re.findall(r"(\w+);dur=([0-9.]+)", header)}


def test_answers_carry_the_request_id_and_where_the_time_went(server):
    r = requests.post(f"{server}/classify", json={"model": "lenet", "image": DIGIT}, headers={"X-Request-ID": "abc-1"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "abc-1"
    t = _timings(r.headers["Server-Timing"])
    assert set(t) == {"queue", "compute", "total"}
    assert t["compute"] > 0 and t["total"] >= t["queue"] + t["compute"]
    odd = requests.post(f"{server}/classify", json={"model": "lenet"}, headers={"X-Request-ID": "a b\t<c>"})
    assert odd.status_code == 400 and re.fullmatch("[0-9a-f]{32}", odd.headers["X-Request-ID"])
    assert requests.get(f"{server}/no/such/route").headers["X-Request-ID"]  # a 404 too


def test_a_v2_answer_id_defaults_to_the_request_id(server):
    body = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    r = requests.post(f"{server}/v2/models/lenet/infer", json=body, headers={"X-Request-ID": "v2-call-9"})
    assert r.status_code == 200 and r.json()["id"] == "v2-call-9", r.text[:300]
    r = requests.post(f"{server}/v2/models/lenet/infer", json={**body, "id": "mine"}, headers={"X-Request-ID": "x"})
    assert r.json()["id"] == "mine"  # the protocol's own id wins


def _series(text: str, metric: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(metric + "{")]


def test_metrics_split_queue_and_compute_and_take_no_request_data(server):
    for _ in range(3):
        assert requests.post(f"{server}/classify", json={"model": "lenet", "image": DIGIT}).status_code == 200
    scanned = [f"/scan-{secrets.token_hex(6)}" for _ in range(40)] + [f"/v2/models/{secrets.token_hex(6)}/infer"]
    for path in scanned:
        assert requests.post(f"{server}{path}", json={}).status_code in (404, 405)
    text = requests.get(f"{server}/metrics").text
    for path in scanned:
        assert path not in text  # no label holds a path a client made up
    routes = {str(getattr(r, "path", "")) for r in http_app.routes}  # the templates: all earlier tests' routes
    endpoints = set(re.findall(r'endpoint="([^"]*)"', text))
    assert "other" in endpoints and endpoints <= routes | observe.BENTOML_ROUTES | observe.UNOBSERVED | {"other"}, (
        endpoints
    )
    count = re.search(r'^ee559_request_queue_seconds_count\{model="lenet"\} (\S+)$', text, re.M)
    assert count and float(count.group(1)) >= 3
    assert _series(text, "ee559_request_compute_seconds_bucket")
    assert re.search(r'^ee559_requests_total\{model="lenet",outcome="2xx",route="/classify"\} ', text, re.M)
    assert re.search(r'^ee559_requests_total\{model="",outcome="4xx",route="other"\} ', text, re.M)
    assert re.search(r"^ee559_requests_in_flight ", text, re.M)
    assert re.search(r'^ee559_queue_rows\{model="lenet"\} ', text, re.M)


def _mounted() -> list[tuple[str, str]]:
    """(method, path) of every mounted route, templates filled in with a served model, and
    BentoML's and the playground's own pages."""
    fill = {"{name}": "lenet", "{model}": "lenet", "{version}": "no-such-version"}
    out = []
    for route in http_app.routes:
        path = str(getattr(route, "path", ""))
        for key, value in fill.items():
            path = path.replace(key, value)
        method = sorted(m for m in getattr(route, "methods", ()) or ("GET",) if m != "HEAD")[0]
        out.append((method, path))
    return out + [("GET", p) for p in ("/", "/ui", "/docs", "/docs.json", "/schema.json")]


def test_every_route_answers_with_a_request_id_and_server_timing(server):
    """Whatever the answer (200, 400 for the empty body, 404 for the unknown version), every route
    but the probes says which request it was and where its time went."""
    checked = 0
    for method, path in _mounted():
        if path in observe.UNOBSERVED:
            continue
        sent = f"every-route-{checked}"
        r = requests.request(
            method, f"{server}{path}", json={} if method == "POST" else None, headers={"X-Request-ID": sent}
        )
        assert r.headers.get("X-Request-ID") == sent, (method, path, r.status_code)
        assert set(_timings(r.headers.get("Server-Timing", ""))) == {"queue", "compute", "total"}, (method, path)
        checked += 1
    assert checked >= 20
