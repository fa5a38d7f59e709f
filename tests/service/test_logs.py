"""Logs: JSON lines with the request id on demand (EE559_LOG_FORMAT=json), a line per request only
when asked (EE559_ACCESS_LOG=1), and never a request's data beyond its route's template."""

from __future__ import annotations

import json
import logging
import secrets
import sys
from pathlib import Path

import pytest
import requests

from service.logs import JsonLines
from service.observe import CURRENT, RequestTiming
from service.settings import Settings, SettingsError

from ..conftest import serving

DIGIT = [[0.0] * 28 for _ in range(28)]


def _record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("ee559.test", logging.WARNING, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]


def test_a_json_line_carries_the_request_id_of_the_request_being_answered():
    token = CURRENT.set(RequestTiming("req-7", start=0.0))
    try:
        line = JsonLines().format(_record("queue %s full", "lenet"))
    finally:
        CURRENT.reset(token)
    doc = json.loads(line)
    assert "\n" not in line
    assert doc["message"] == "queue lenet full" and doc["level"] == "WARNING" and doc["request_id"] == "req-7"
    assert doc["logger"] == "ee559.test" and doc["time"].endswith("Z")
    assert "request_id" not in json.loads(JsonLines().format(_record("outside a request")))


def test_an_exception_stays_inside_its_json_line():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = _record("failed", exc_info=sys.exc_info())
    line = JsonLines().format(record)
    assert "\n" not in line and "ValueError: bad\nvalue" in json.loads(line)["exception"]


def test_the_log_format_setting_is_checked():
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"EE559_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(SettingsError, match=r"EE559_LOG_FORMAT.*accepted: text, json"):
        Settings.from_env({"EE559_LOG_FORMAT": "xml"})


def _lines(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_a_json_server_logs_one_line_per_request_with_its_id(exported, runs: Path):
    log = runs / "serve-json.log"
    env = {"EE559_MODELS": "lenet", "EE559_WORKERS": "1", "EE559_LOG_FORMAT": "json", "EE559_ACCESS_LOG": "1"}
    scan = f"/scan-{secrets.token_hex(8)}"
    with serving(env, log) as url:
        ok = requests.post(
            f"{url}/classify", json={"model": "lenet", "image": DIGIT}, headers={"X-Request-ID": "json-ok-1"}
        )
        bad = requests.post(f"{url}/classify", json={"model": "lenet"}, headers={"X-Request-ID": "json-bad-2"})
        lost = requests.get(url + scan, headers={"X-Request-ID": "json-scan-3"})
        assert (ok.status_code, bad.status_code, lost.status_code) == (200, 400, 404)
    lines = _lines(log)
    assert any(d["logger"] == "ee559.service" for d in lines), "the service's own lines are JSON too"
    access = {d["request_id"]: d for d in lines if d["logger"] == "ee559.access"}
    assert access["json-ok-1"]["route"] == "/classify" and access["json-ok-1"]["status"] == 200
    assert access["json-ok-1"]["model"] == "lenet" and access["json-ok-1"]["compute_ms"] > 0
    assert access["json-bad-2"]["status"] == 400
    assert access["json-scan-3"]["route"] == "other" and access["json-scan-3"]["status"] == 404
    assert scan not in log.read_text()  # a path a client made up reaches no line
    assert len(access) == 3  # the probes the test client polled are not logged


def test_the_default_server_writes_no_line_per_request(server, runs: Path):
    marker = f"quiet-{secrets.token_hex(6)}"
    for _ in range(3):
        assert requests.post(
            f"{server}/classify", json={"model": "lenet", "image": DIGIT}, headers={"X-Request-ID": marker}
        ).ok
    text = (runs / "serve.log").read_text(errors="replace")
    assert marker not in text and "/classify" not in text
