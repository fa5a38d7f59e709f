"""A short headless Locust run against the real server, on a load generator without torch or our
training and serving code, and its SLO gate."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from PIL import Image

from loadtests.__main__ import main

from ..blocked_imports import blocking_env


def test_short_run_without_torch_meets_slo_and_writes_reports(server, tmp_path: Path, monkeypatch):
    # the Locust process can import neither torch nor the project's training, export or service code
    for key, value in blocking_env(tmp_path, ("torch", "training", "export", "service"), dict(os.environ)).items():
        monkeypatch.setenv(key, value)
    rc = main(
        [
            "--host",
            server,
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--run-time",
            "5s",
            "--per-user-rps",
            "25",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "report_stats.csv")))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 20 and int(total["Failure Count"]) == 0
    # the users found every served task from the server's cards
    names = {r["Name"] for r in rows}
    for route in (
        "/classify",
        "/explain",
        "/segment",
        "/denoise",
        "/embed",
        "/reconstruct",
        "/generate",
        "/generate_text",
    ):
        assert any(n.startswith(route + " ") for n in names), (route, names)
    assert (tmp_path / "report.html").stat().st_size > 1000
    with Image.open(tmp_path / "latency.png") as picture:  # latency and throughput over the run
        assert picture.size == (1280, 420)


def test_broken_slo_exits_nonzero(server, tmp_path: Path):
    rc = main(
        [
            "--host",
            server,
            "--users",
            "2",
            "--spawn-rate",
            "2",
            "--run-time",
            "3s",
            "--slo-p95-ms",
            "0.001",
            "--per-user-rps",
            "25",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 1
