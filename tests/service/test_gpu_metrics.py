"""GPU metrics from NVML (service/metrics.py): with a fake `pynvml` the gauges carry each device's
values and labels, refreshed as /metrics is answered; several workers' copies show the freshest
reading once per device (not a sum); without NVML or without a GPU nothing is written and nothing
fails; a real server on this machine shows GPU series exactly when NVML sees a GPU."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY

from service import metrics

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30

# A stand-in for nvidia-ml-py's module: two GPUs (names as bytes, as older bindings return them,
# and as str), values set per test. Source text, so subprocesses build the same one.
FAKE_NVML = textwrap.dedent(
    """
    import types

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    def fake_nvml(used, total, util, names=(b"NVIDIA H100 80GB HBM3", "NVIDIA H200"), broken=False, absent=False):
        nvml = types.ModuleType("pynvml")
        nvml.NVMLError, nvml.NVMLError_LibraryNotFound = NVMLError, NVMLError_LibraryNotFound
        nvml.calls = {"memory": 0}

        def init():
            if absent:
                raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

        def memory(h):
            nvml.calls["memory"] += 1
            if broken:
                raise NVMLError("GPU is lost")
            return types.SimpleNamespace(used=used[h], total=total[h], free=total[h] - used[h])

        nvml.nvmlInit = init
        nvml.nvmlDeviceGetCount = lambda: len(names)
        nvml.nvmlDeviceGetHandleByIndex = lambda i: i
        nvml.nvmlDeviceGetName = lambda h: names[h]
        nvml.nvmlDeviceGetMemoryInfo = memory
        nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=util[h], memory=0)
        return nvml
    """
)
_space: dict[str, Any] = {}
exec(FAKE_NVML, _space)
fake_nvml = _space["fake_nvml"]


def _value(name: str, gpu: str, product: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"gpu": gpu, "name": product})


def test_gauges_carry_each_devices_memory_and_utilisation(monkeypatch: pytest.MonkeyPatch):
    nvml = fake_nvml(used=[3 * GIB, 5 * GIB], total=[80 * GIB, 141 * GIB], util=[37, 100])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpus = metrics.Gpus.open()
    assert gpus is not None
    assert [(i, name) for i, name, _ in gpus.devices] == [("0", "NVIDIA H100 80GB HBM3"), ("1", "NVIDIA H200")]
    gpus.refresh()
    assert _value("ee559_gpu_memory_used_bytes", "0", "NVIDIA H100 80GB HBM3") == 3 * GIB
    assert _value("ee559_gpu_memory_used_bytes", "1", "NVIDIA H200") == 5 * GIB
    assert _value("ee559_gpu_memory_total_bytes", "1", "NVIDIA H200") == 141 * GIB
    assert _value("ee559_gpu_utilization_ratio", "0", "NVIDIA H100 80GB HBM3") == pytest.approx(0.37)
    assert _value("ee559_gpu_utilization_ratio", "1", "NVIDIA H200") == 1.0
    assert _value("ee559_gpu_memory_used_bytes", "1", "NVIDIA H100 80GB HBM3") is None  # labels belong together


def test_a_failed_read_is_logged_once_and_keeps_the_last_values(monkeypatch, caplog):
    good = fake_nvml(used=[1 * GIB, 2 * GIB], total=[8 * GIB, 8 * GIB], util=[10, 20], names=("GPU A", "GPU B"))
    monkeypatch.setitem(sys.modules, "pynvml", good)
    gpus = metrics.Gpus.open()
    assert gpus is not None
    gpus.refresh()
    gpus.nvml = fake_nvml(used=[0, 0], total=[0, 0], util=[0, 0], names=("GPU A", "GPU B"), broken=True)
    with caplog.at_level(logging.ERROR, logger="ee559.metrics"):
        gpus.refresh()
        gpus.refresh()
    assert len([r for r in caplog.records if "GPU is lost" in r.getMessage()]) == 1
    assert _value("ee559_gpu_memory_used_bytes", "1", "GPU B") == 2 * GIB


@pytest.mark.parametrize("why", ["not installed", "no driver", "no device"])
def test_without_nvml_or_a_gpu_nothing_is_exported_and_one_line_says_why(monkeypatch, caplog, why: str):
    if why == "not installed":
        monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    else:
        nvml = fake_nvml(used=[], total=[], util=[], names=(), absent=why == "no driver")
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with caplog.at_level(logging.INFO, logger="ee559.metrics"):
        assert metrics.Gpus.open() is None
    lines = [r.getMessage() for r in caplog.records if r.name == "ee559.metrics"]
    assert len(lines) == 1 and lines[0].startswith("GPU metrics off")


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "path": path, "method": "GET", "headers": []}


def test_the_middleware_reads_nvml_only_for_metrics(monkeypatch: pytest.MonkeyPatch):
    nvml = fake_nvml(used=[1, 2], total=[4, 4], util=[0, 0])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["path"])

    middleware = metrics.GpuMetrics(app)
    for path in ("/classify", "/readyz", "/metrics", "/metrics"):
        asyncio.run(middleware(_scope(path), None, None))
    assert seen == ["/classify", "/readyz", "/metrics", "/metrics"]
    assert nvml.calls["memory"] == 2 * 2  # two scrapes, two devices each
    quiet = metrics.GpuMetrics(app, gpus=None)  # no GPU: a pass-through
    asyncio.run(quiet(_scope("/metrics"), None, None))
    assert seen[-1] == "/metrics"


WORKER = """
import sys
sys.path.insert(0, {root!r})
{fake}
sys.modules["pynvml"] = fake_nvml(used=[{used}, 7], total=[100, 100], util=[{util}, 0], names=("GPU A", "GPU B"))
from service import metrics
metrics.Gpus.open().refresh()
"""


def test_several_workers_show_the_freshest_reading_once_per_device(tmp_path: Path):
    """As in a server: each worker writes its own file; /metrics merges them (BentoML's
    MultiProcessCollector). Device-wide values must not be summed over workers."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def worker(used: int, util: int) -> None:
        code = WORKER.format(root=str(ROOT), fake=FAKE_NVML, used=used, util=util)
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)

    def scraped() -> dict[tuple[str, str], float]:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(tmp_path))
        return {
            (s.name, s.labels["gpu"]): s.value
            for family in registry.collect()
            if family.name.startswith("ee559_gpu_")
            for s in family.samples
        }

    worker(used=30, util=50)
    worker(used=40, util=80)  # a second worker answers the next scrape
    assert scraped() == {
        ("ee559_gpu_memory_used_bytes", "0"): 40,
        ("ee559_gpu_memory_used_bytes", "1"): 7,
        ("ee559_gpu_memory_total_bytes", "0"): 100,
        ("ee559_gpu_memory_total_bytes", "1"): 100,
        ("ee559_gpu_utilization_ratio", "0"): 0.8,
        ("ee559_gpu_utilization_ratio", "1"): 0.0,
    }
    assert len(list(tmp_path.glob("gauge_mostrecent_*.db"))) == 2  # one file per worker, merged on scrape
    worker(used=35, util=10)  # the first worker again: its newer reading wins
    assert scraped()[("ee559_gpu_memory_used_bytes", "0")] == 35


def test_a_real_server_shows_gpu_series_exactly_where_nvml_sees_a_gpu(server: str):
    text = requests.get(f"{server}/metrics", timeout=10).text
    assert "ee559_requests_total" in text or "ee559_model_info" in text  # the scrape itself worked
    assert requests.get(f"{server}/readyz", timeout=10).status_code == 200
    gpu_lines = [line for line in text.splitlines() if line.startswith("ee559_gpu_")]
    if metrics.Gpus.open() is None:  # this machine (and CI): no NVML or no GPU
        assert gpu_lines == []
    else:
        assert any(line.startswith("ee559_gpu_memory_total_bytes{") for line in gpu_lines)
