"""A second server started on the same BENTOML_HOME leaves the first one's metrics alone (each
server's workers write to a directory of their own), and directories of servers that are gone
are removed."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import requests

from service.metrics import _started, own_directory

from ..conftest import new_home, start_server, stop_server, wait_ready

DIGIT = {"model": "mlp", "image": [[0.0] * 28 for _ in range(28)]}


def _batches(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = re.search(r'^ee559_inference_batch_size_count\{model="mlp"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_second_server_on_the_same_home_keeps_the_first_ones_metrics(exported, runs: Path):
    home = new_home()
    env = {"EE559_MODELS": "mlp", "EE559_WORKERS": "2"}
    first_url, first = start_server(env, log=runs / "metrics-first.log", home=home)
    second = None
    try:
        wait_ready(first_url, first)
        for _ in range(8):
            assert requests.post(f"{first_url}/classify", json=DIGIT, timeout=10).status_code == 200
        before = _batches(first_url)
        assert before >= 8
        second_url, second = start_server(env, log=runs / "metrics-second.log", home=home)
        wait_ready(second_url, second)
        assert _batches(first_url) >= before  # what the first server counted is still there
        assert _batches(second_url) == 0  # and the second counts its own
        owners = sorted(p.name.partition("-")[0] for p in (home / "ee559_metrics").iterdir())
        assert owners == sorted([str(first.pid), str(second.pid)])
    finally:
        stop_server(first)
        if second is not None:
            stop_server(second)


def test_directories_of_servers_that_are_gone_are_removed(tmp_path: Path):
    shared = tmp_path / "prometheus_multiproc_dir"
    shared.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    base = tmp_path / "ee559_metrics"
    running = base / f"{os.getpid()}-{_started(os.getpid())}"  # a server still running
    for name in (f"{gone.pid}-12345", f"{os.getpid()}-1", "stray"):  # gone; the same pid restarted; junk
        (base / name).mkdir(parents=True)
    running.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    mine = own_directory(env, server=os.getppid())
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(mine) and mine.is_dir()
    assert sorted(p.name for p in base.iterdir()) == sorted([running.name, mine.name])
    assert own_directory({}) is None  # not a BentoML worker: nothing to do


def test_gauges_of_dead_workers_are_dropped(tmp_path: Path):
    """A worker killed mid-request left its in-flight gauge at 1: its restarted successor must not
    show it (prometheus_client's multi-process gauges are files per pid)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    shared = str(tmp_path / "prometheus_multiproc_dir")
    mine = own_directory({"PROMETHEUS_MULTIPROC_DIR": shared}, server=os.getppid())
    live = [mine / f"gauge_livesum_{dead.pid}.db", mine / f"gauge_livesum_{os.getpid()}.db"]
    kept = [mine / f"counter_{dead.pid}.db", mine / f"histogram_{dead.pid}.db"]  # cumulative: they stay
    for f in live + kept:
        f.write_bytes(b"")
    own_directory({"PROMETHEUS_MULTIPROC_DIR": shared}, server=os.getppid())  # the restarted worker
    assert not live[0].exists() and live[1].exists() and all(f.exists() for f in kept)
