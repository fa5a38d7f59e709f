"""A short headless Locust run against the real server, and its SLO gate."""

from __future__ import annotations

import csv
from pathlib import Path

from loadtests.__main__ import main


def test_short_run_meets_slo_and_writes_reports(server, tmp_path: Path):
    rc = main(["--host", server, "--users", "4", "--spawn-rate", "4", "--run-time", "5s", "--per-user-rps", "25",
               "--out", str(tmp_path)])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "report_stats.csv")))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 20 and int(total["Failure Count"]) == 0
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_broken_slo_exits_nonzero(server, tmp_path: Path):
    rc = main(["--host", server, "--users", "2", "--spawn-rate", "2", "--run-time", "3s", "--slo-p95-ms", "0.001",
               "--per-user-rps", "25", "--out", str(tmp_path)])
    assert rc == 1
