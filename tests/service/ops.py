"""The operations files under service/deploy/ and every PromQL query they hold, read from the files
themselves (never copied into tests): the rules' expressions, the dashboard panels' targets, and
the Prometheus adapter's query with its templates filled in."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "service" / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "ee559.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "ee559.yml"
KUBERNETES = DEPLOY / "kubernetes"
ADAPTER = KUBERNETES / "prometheus-adapter" / "config.yaml"
JOB = "ee559"  # the scrape job the rules select (rules.yml)


def promtool() -> str | None:
    return shutil.which("promtool")


def prometheus() -> str | None:
    return shutil.which("prometheus")


NO_PROMTOOL = "promtool/prometheus are not installed (Debian's prometheus package: `make test` installs it as root)"


def require_prometheus() -> None:
    """Skip where Debian's prometheus package is missing, or fail where it must be there (CI sets
    EE559_REQUIRE_OPS_TOOLS=1: its `make test` installed the package, so a skip would hide a gap)."""
    if promtool() is None or prometheus() is None:
        if os.environ.get("EE559_REQUIRE_OPS_TOOLS") == "1":
            pytest.fail(NO_PROMTOOL + "; EE559_REQUIRE_OPS_TOOLS=1 requires it")
        pytest.skip(NO_PROMTOOL)


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_queries() -> dict[str, str]:
    """Rule name (record or alert) -> its expression."""
    return {rule.get("record") or rule["alert"]: rule["expr"].strip() for rule in rules()}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in rows included."""
    for panel in (board or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> dict[str, str]:
    """'panel title / refId' -> the target's expression, for every panel's every target."""
    return {
        f"{panel['title']} / {target['refId']}": target["expr"].strip()
        for panel in panels()
        for target in panel.get("targets", [])
    }


def adapter_queries(matchers: str = f'job="{JOB}"', group_by: str = "instance") -> dict[str, str]:
    """The Prometheus adapter's metricsQuery per exposed metric, with its Go templates filled in as
    the adapter does for one object (here: every target of the job, grouped by instance)."""
    out = {}
    for rule in yaml.safe_load(ADAPTER.read_text())["rules"]:
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
        query = rule["metricsQuery"]
        for key, value in {"Series": series, "LabelMatchers": matchers, "GroupBy": group_by}.items():
            query = query.replace(f"<<.{key}>>", value)
        assert "<<" not in query, f"a template the adapter fills that this helper does not: {query}"
        out[f"adapter {rule['name']['as']}"] = query
    return out


def all_queries() -> dict[str, str]:
    return {**{f"rule {k}": v for k, v in rule_queries().items()}, **dashboard_queries(), **adapter_queries()}
