"""service/deploy/compose.yaml, checked offline (its images are not reachable here): the files it
mounts exist, Prometheus scrapes the service by its compose name and port and loads the rules,
Grafana reaches Prometheus where the provisioned data source says, the token is required and
every port is published on loopback only."""

from __future__ import annotations

from pathlib import Path

import yaml

from . import ops

COMPOSE = ops.DEPLOY / "compose.yaml"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_mounted_file_is_in_the_repository():
    for name, service in services().items():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            assert (COMPOSE.parent / host).exists(), f"{name}: {host}"


def test_prometheus_scrapes_the_service_and_loads_the_rules():
    prom = services()["prometheus"]
    mounts = {v.split(":")[1]: Path(v.split(":")[0]).name for v in prom["volumes"]}
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    config = yaml.safe_load((ops.DEPLOY / "prometheus" / mounts[config_path]).read_text())
    assert [mounts[f] for f in config["rule_files"]] == [ops.RULES.name]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == ops.JOB
    (static,) = job["static_configs"]
    host, port = static["targets"][0].split(":")
    assert host in services() and services()[host]["ports"][0].endswith(f":{port}")
    assert static["labels"]["requested_provider"] == services()[host]["environment"]["EE559_PROVIDER"]


def test_grafana_reaches_prometheus_where_the_data_source_says():
    grafana = services()["grafana"]
    source = yaml.safe_load(ops.DATASOURCES.read_text())["datasources"][0]
    assert source["url"] == "${PROMETHEUS_URL}"
    assert grafana["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert "--web.listen-address" not in " ".join(services()["prometheus"]["command"])  # 9090, the default
    assert any(v.endswith(":/etc/grafana/provisioning:ro") for v in grafana["volumes"])


def test_the_token_is_required_and_ports_stay_on_loopback():
    assert services()["ee559"]["environment"]["EE559_API_TOKEN"].startswith("${EE559_API_TOKEN:?")
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
