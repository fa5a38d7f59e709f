"""The inference lane (service/lane.py): POSTs to the inference routes skip BentoML's middlewares
but keep the service's (request id, Server-Timing, our metrics, the token, the timeout); every
other request, unknown paths included, goes through BentoML's whole app."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import requests

from service.lane import Lane, bypassed, in_lane

from .test_http import held_out  # noqa: F401  (the fixture)


@pytest.mark.parametrize(
    "method, path, lane",
    [
        ("POST", "/classify", True),
        ("POST", "/generate_text", True),
        ("POST", "/v2/models/lenet/infer", True),
        ("POST", "/v2/models/lenet/versions/abc/infer", True),
        ("GET", "/classify", False),  # a 405, answered by BentoML's stack
        ("GET", "/models", False),
        ("GET", "/readyz", False),
        ("GET", "/metrics", False),
        ("POST", "/metrics", False),
        ("POST", "/wp-login.php", False),  # unknown: BentoML's 404
        ("POST", "/", False),
    ],
)
def test_only_posts_to_the_services_routes_take_the_lane(method: str, path: str, lane: bool):
    assert in_lane({"type": "http", "method": method, "path": path}) is lane


def test_the_lane_and_the_full_app_each_get_their_requests_and_lifespan_goes_to_bentoml():
    seen: list[tuple[str, str]] = []

    def app(name: str) -> Any:
        async def call(scope: Any, receive: Any, send: Any) -> None:
            seen.append((name, scope.get("path", scope["type"])))

        return call

    lane = Lane(app("full"), app("lane"))
    for scope in (
        {"type": "http", "method": "POST", "path": "/classify"},
        {"type": "http", "method": "GET", "path": "/models"},
        {"type": "lifespan"},
    ):
        asyncio.run(lane(scope, None, None))
    assert seen == [("lane", "/classify"), ("full", "/models"), ("full", "lifespan")]


def _bentoml_count(text: str, endpoint: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(rf'bentoml_service_request_total\{{endpoint="{re.escape(endpoint)}"[^}}]*\}} (\S+)', text)
    )


def test_inference_answers_keep_the_services_layers_and_skip_bentomls(server, held_out):  # noqa: F811
    before = requests.get(f"{server}/metrics", timeout=5).text
    body = {"model": "lenet", "image": held_out[0][0, 0].tolist()}
    r = requests.post(f"{server}/classify", json=body, headers={"X-Request-ID": "lane-1"}, timeout=30)
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "lane-1" and "compute;dur=" in r.headers["server-timing"]
    bad = requests.post(f"{server}/classify", json={"model": "lenet"}, timeout=5)  # a 400 from the lane
    assert bad.status_code == 400 and "image" in bad.json()["error"] and bad.headers["x-request-id"]
    requests.get(f"{server}/models", timeout=5)
    after = requests.get(f"{server}/metrics", timeout=5).text
    ours = re.findall(r'ee559_requests_total\{model="[^"]*",outcome="(\dxx)",route="/classify"\} (\S+)', after)
    assert {o for o, _ in ours} >= {"2xx", "4xx"}
    # BentoML's request counter saw /models, not the lane's /classify
    assert _bentoml_count(after, "/models") > _bentoml_count(before, "/models")
    assert _bentoml_count(after, "/classify") == _bentoml_count(before, "/classify") == 0


def test_the_lane_stays_off_where_a_bentoml_setting_only_its_stack_applies_is_set():
    class Svc:
        def __init__(self, traffic: dict) -> None:
            self.config = {"traffic": traffic}

    assert bypassed(Svc({"timeout": 30})) == []
    assert bypassed(Svc({"timeout": 30, "max_concurrency": 8})) == ["traffic.max_concurrency"]
