"""The Kubernetes manifests (service/deploy/kubernetes): every overlay renders with
`kubectl kustomize`, every rendered built-in object passes the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields fail) of the oldest and newest versions we support,
the ServiceMonitor (a CRD, which kubernetes-validate does not carry) passes the schema written
below, and the objects agree with each other and with the service: probes, the drain, where
the server writes, the token, the provider."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import REQUEST_TIMEOUT_S

from . import ops

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate: make install")
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: no `kubectl kustomize` to render")

OVERLAYS = {"base": "base", "cpu": "overlays/cpu", "gpu": "overlays/gpu"}
VERSIONS = ("1.29.0", "1.37.0")  # the oldest Kubernetes supported, the newest kubernetes-validate knows
BUILT_IN = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}

# The fields of monitoring.coreos.com/v1 ServiceMonitor used here, as the Prometheus Operator's CRD
# types them (its openAPIV3Schema), closed to unknown fields so that a typo fails.
_LABEL_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABEL_MAP},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABEL_MAP, "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
                            },
                            "scrapeTimeout": {"type": "string"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                        },
                                        "separator": {"type": "string"},
                                        "targetLabel": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "action": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def render(overlay: str) -> list[dict[str, Any]]:
    r = subprocess.run(
        [KUBECTL, "kustomize", str(ops.KUBERNETES / OVERLAYS[overlay])], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return [doc for doc in yaml.safe_load_all(r.stdout) if doc]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects), "one object of each kind"
    return kinds


@pytest.fixture(scope="module", params=list(OVERLAYS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, Any]]]:
    return request.param, by_kind(render(request.param))


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (main,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return main


def env(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objects)["env"]}


def test_every_overlay_renders_the_same_kinds(rendered):
    _, objects = rendered
    assert set(objects) == BUILT_IN | {"ServiceMonitor"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_built_in_object_passes_the_kubernetes_schemas(rendered, version: str):
    _, objects = rendered
    for kind in BUILT_IN:
        kubernetes_validate.validate(objects[kind], version, strict=True)


def test_the_schemas_catch_a_wrong_object(rendered):
    """Guards the guard: a misspelt field, and a wrong type, fail validation."""
    _, objects = rendered
    typo = copy.deepcopy(objects["Deployment"])
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = typo["spec"]["template"]["spec"]["containers"][
        0
    ].pop("readinessProbe")
    wrong_type = copy.deepcopy(objects["HorizontalPodAutoscaler"])
    wrong_type["spec"]["maxReplicas"] = "ten"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def test_the_service_monitor_passes_its_schema(rendered):
    from jsonschema import Draft202012Validator, ValidationError

    _, objects = rendered
    monitor = objects["ServiceMonitor"]
    Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(monitor)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # why it needs a schema of its own
        kubernetes_validate.validate(monitor, VERSIONS[-1], strict=True)
    typo = copy.deepcopy(monitor)
    typo["spec"]["endpoints"][0]["relabellings"] = typo["spec"]["endpoints"][0].pop("relabelings")
    with pytest.raises(ValidationError):
        Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(typo)


def test_selectors_ports_and_targets_agree(rendered):
    _, objects = rendered
    deployment, service = objects["Deployment"], objects["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["endpoints"]} <= port_names
    assert [e["path"] for e in monitor["endpoints"]] == ["/metrics"]
    assert {p["name"]: p["containerPort"] for p in container(objects)["ports"]} == {"http": 3000}
    # The scrape job is named after the Service: the one the rules select.
    assert service["metadata"]["name"] == ops.JOB and "jobLabel" not in monitor
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_autoscaler_scales_on_a_metric_the_adapter_serves(rendered):
    _, objects = rendered
    served = {rule["name"]["as"] for rule in yaml.safe_load(ops.ADAPTER.read_text())["rules"]}
    metrics = objects["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metrics and {m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"} <= served
    assert all(m["type"] == "Pods" for m in metrics)
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] > objects["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1


def test_probes_use_readiness_and_liveness(rendered):
    _, objects = rendered
    main = container(objects)
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert main["startupProbe"]["httpGet"]["path"] == "/livez"


def test_the_grace_period_covers_the_pre_stop_wait_the_drain_and_the_longest_request(rendered):
    """Pod deletion: preStop (endpoints drop the pod), then SIGTERM: EE559_DRAIN_SECONDS of
    serving with readiness 503, then requests in flight finish, at most the server's timeout."""
    _, objects = rendered
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    command = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = float(command[1])
    drain = float(env(objects)["EE559_DRAIN_SECONDS"])
    assert pre_stop > 0 and drain > 0
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + REQUEST_TIMEOUT_S
    # BentoML's arbiter kills a worker 30 s after its SIGTERM: the drain must end well before.
    assert drain < REQUEST_TIMEOUT_S / 2


def _mounts(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container(objects)["volumeMounts"]}


def test_non_root_read_only_and_the_writable_directories_mounted(rendered):
    _, objects = rendered
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    main = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1034
    ctx = main["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    mounts = _mounts(objects)
    assert all("emptyDir" in v for v in mounts.values())
    home = Path(env(objects)["BENTOML_HOME"])
    # What the server writes: BentoML's metrics directory, the service's ee559_metrics/ beside it
    # (service/metrics.py), the token key file if one were generated (service/auth.py), temp files.
    from service.auth import token_file
    from service.settings import Settings

    written = [home / "prometheus_multiproc_dir", home / "ee559_metrics" / "1", Path("/tmp/x")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(home))
        written.append(token_file(Settings()))
    for path in written:
        assert any(path.is_relative_to(m) for m in mounts), f"{path} is on the read-only root filesystem"
    # The Bento (code, models) is not hidden under a mount: BentoML's image keeps it in /home/bentoml/bento.
    assert not any(Path("/home/bentoml/bento").is_relative_to(m) for m in mounts)


def test_the_api_token_comes_from_a_secret(rendered):
    _, objects = rendered
    assert env(objects)["EE559_API_TOKEN"] == {"secretKeyRef": {"name": "ee559", "key": "token"}}
    assert "EE559_AUTH" not in env(objects)  # the server listens on 0.0.0.0: a token is required


def test_the_overlays_choose_the_provider_and_label_the_pods_with_it(rendered):
    overlay, objects = rendered
    wanted = {"base": "auto", "cpu": "cpu", "gpu": "cuda"}[overlay]
    assert env(objects)["EE559_PROVIDER"] == wanted
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["ee559.epfl.ch/requested-provider"] == wanted
    gpus = container(objects)["resources"]["limits"].get("nvidia.com/gpu")
    assert gpus == (1 if overlay == "gpu" else None)
    # The ServiceMonitor turns the pod label into the requested_provider label that the alert
    # EE559CudaRequestedButCpu reads (Prometheus's meta label: the key with [^a-zA-Z0-9_] as _).
    (relabel,) = objects["ServiceMonitor"]["spec"]["endpoints"][0]["relabelings"]
    key = "ee559.epfl.ch/requested-provider"
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)]
    assert relabel["targetLabel"] == "requested_provider"
    assert 'requested_provider="cuda"' in ops.rule_queries()["EE559CudaRequestedButCpu"]
