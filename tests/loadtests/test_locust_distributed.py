"""Locust's distributed mode against the real server: a master and two workers on loopback, the
same locustfile and SLO gate, one report with every worker's requests."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

from loadtests.__main__ import main
from loadtests.servers import free_port

from ..blocked_imports import blocking_env
from ..conftest import serving

ROOT = Path(__file__).resolve().parents[2]
SHARES = re.compile(r"(\d+) workers sent the (\d+) requests of this report: (.*)")


def master_said(output: str) -> tuple[int, list[int]]:
    """The master's count of requests, and each worker's share of it (its last log line)."""
    [(n_workers, total, shares)] = SHARES.findall(output)
    counts = [int(share.rsplit(" ", 1)[1]) for share in shares.split(", ")]
    assert len(counts) == int(n_workers)
    return int(total), counts


def test_master_and_two_workers_report_once_and_meet_slo(server, tmp_path: Path, monkeypatch, capfd):
    # the workers, like a load-generating machine, can import neither torch nor the project's
    # training, export or service code
    for key, value in blocking_env(tmp_path, ("torch", "training", "export", "service"), dict(os.environ)).items():
        monkeypatch.setenv(key, value)
    port = free_port()
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    # started before their master, as on machines of their own: they connect once it listens
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "loadtests", "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            cwd=ROOT,
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    try:
        master = "--master --expect-workers 2 --expect-workers-max-wait 60 --master-bind-port".split()
        load = "--users 4 --spawn-rate 4 --run-time 4s --per-user-rps 25".split()
        rc = main([*master, str(port), "--host", server, *load, "--out", str(tmp_path)])
        # the master tells its workers to quit
        assert [w.wait(timeout=30) for w in workers] == [0, 0]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    master = capfd.readouterr()
    output = master.out + master.err
    assert rc == 0
    assert "2 workers connected" in output
    # the gate ran once, on the master; each worker ran users, and its requests are in the report
    assert output.count("SLO met") == 1 and "SLO broken" not in output
    for log in logs:
        text = log.read_text()
        assert "load for" in text and "SLO" not in text, text[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "report_stats.csv")))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    reported, shares = master_said(output)
    assert len(shares) == 2 and min(shares) > 0, shares
    assert int(total["Request Count"]) == reported == sum(shares) and int(total["Failure Count"]) == 0
    names = {r["Name"] for r in rows}
    for route in ("/classify", "/segment", "/generate", "/generate_text"):
        assert any(n.startswith(route + " ") for n in names), (route, names)
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_local_workers_send_the_token_and_break_an_impossible_slo_once(exported, tmp_path: Path, monkeypatch, capfd):
    # a server that requires a token, as any server beyond loopback does: every worker sends it
    token = "load-test-token"
    monkeypatch.setenv("EE559_API_TOKEN", token)
    with serving({"EE559_MODELS": "lenet", "EE559_API_TOKEN": token}, log=tmp_path / "serve.log") as url:
        load = "--users 2 --spawn-rate 2 --run-time 3s --slo-p95-ms 0.001 --per-user-rps 25".split()
        rc = main(["--workers", "2", "--host", url, *load, "--out", str(tmp_path)])
    captured = capfd.readouterr()
    output = captured.out + captured.err
    assert rc == 1
    assert "2 workers connected" in output
    # broken by its p95 alone: no request was refused
    assert output.count("SLO broken: p95") == 1 and "SLO met" not in output and "failure ratio" not in output
    reported, shares = master_said(output)
    assert len(shares) == 2 and reported == sum(shares) > 0
    total = next(r for r in csv.DictReader(open(tmp_path / "report_stats.csv")) if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) == reported and int(total["Failure Count"]) == 0
    assert "workers' exit codes: [0, 0]" in output
