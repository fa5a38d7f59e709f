"""The Grafana dashboard (service/deploy/grafana), checked offline: Grafana does not install here.
Its structure, its data source against the provisioning file, the topics the issue asks for, every
query valid PromQL (promtool parses it) and among those tests/service/test_prometheus.py runs
against a real Prometheus."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import ops

PANEL_TYPES = {"row", "timeseries", "stat", "table"}


def _exprs_anywhere(node: Any) -> list[str]:
    """Every "expr" value in the JSON, wherever it sits: independent of how ops walks panels."""
    if isinstance(node, dict):
        return [v.strip() for k, v in node.items() if k == "expr"] + [
            e for k, v in node.items() if k != "expr" for e in _exprs_anywhere(v)
        ]
    if isinstance(node, list):
        return [e for v in node for e in _exprs_anywhere(v)]
    return []


def test_the_dashboard_is_a_provisionable_grafana_dashboard():
    board = ops.dashboard()
    assert board["uid"] == "ee559-serving" and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in ops.panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in ops.panels(board):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["description"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]


def test_no_two_panels_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in ops.panels():
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_uses_the_provisioned_data_source():
    (source,) = yaml.safe_load(ops.DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    for panel in ops.panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def test_the_provisioned_folder_holds_the_dashboard():
    (provider,) = yaml.safe_load(ops.DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards/ee559"
    compose = ops.DEPLOY / "compose.yaml"
    if compose.exists():  # the compose file mounts the dashboards where the provider reads them
        grafana = yaml.safe_load(compose.read_text())["services"]["grafana"]
        assert any(v.endswith(":/var/lib/grafana/dashboards/ee559:ro") for v in grafana["volumes"])


@pytest.mark.parametrize(
    "topic, needle",
    [
        ("request rate", "rate(ee559_requests_total"),
        ("error ratio", 'ee559_requests_total{outcome!~"2xx|3xx|4xx"}'),
        ("p50/p95/p99 per model", "histogram_quantile(0.99, sum by (model, le) (rate(ee559_request_compute_seconds"),
        ("p50 per model", "histogram_quantile(0.5, sum by (model, le) (rate(ee559_request_compute_seconds"),
        ("queue per model", "histogram_quantile(0.95, sum by (model, le) (rate(ee559_request_queue_seconds"),
        ("queue vs compute", "rate(ee559_request_queue_seconds_sum"),
        ("batch size", "ee559_inference_batch_size"),
        ("provider", "by (instance, model, version, provider) (ee559_model_info == 1)"),
        ("tokens per second", "rate(ee559_generated_tokens_total"),
        ("time to first token", "ee559_time_to_first_token_seconds_bucket"),
        ("in flight", "ee559_requests_in_flight"),
        ("GPU", "DCGM_FI_DEV_GPU_UTIL"),
        ("GPU memory, from the service", "ee559_gpu_memory_used_bytes"),
        ("GPU utilisation, from the service", "ee559_gpu_utilization_ratio"),
    ],
)
def test_the_dashboard_shows(topic: str, needle: str):
    assert any(needle in expr for expr in ops.dashboard_queries().values()), topic


def test_every_panel_query_is_among_those_run_against_a_real_prometheus():
    """test_prometheus.py runs ops.all_queries(); this finds the dashboard's queries on its own."""
    found = _exprs_anywhere(json.loads(ops.DASHBOARD.read_text()))
    assert found and set(found) <= set(ops.all_queries().values())
    assert len(found) == len(ops.dashboard_queries())  # each query once, under its own panel/refId


def test_every_query_is_valid_promql(tmp_path: Path):
    """promtool parses each as a recording rule's expression: a syntax error fails with its name."""
    ops.require_prometheus()
    rules = [{"record": f"check:q{i}", "expr": expr} for i, expr in enumerate(ops.all_queries().values())]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    r = subprocess.run(
        [ops.promtool(), "check", "rules", str(tmp_path / "queries.yml")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "broken.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "check:x", "expr": "sum(rate(x[1m])"}]}]})
    )
    broken = subprocess.run([ops.promtool(), "check", "rules", str(tmp_path / "broken.yml")], capture_output=True)
    assert broken.returncode != 0  # the check can fail
