"""The HTTP benchmark's own accounting (loadtests/bench.py): the mean batch each server formed, read
from its metrics page, each worker's requests, read from the per-process files behind /metrics,
and the tables that set the service beside the Triton baseline. No server, no wrk: the pages and
files are made by the libraries that make them in a real run."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from loadtests.bench import (
    OURS_BATCHES,
    TRITON,
    TRITON_BATCHES,
    Run,
    batch_totals,
    batching_table,
    http_table,
    parser,
    reproduce,
    worker_counters,
    worker_requests,
)

# Triton's own page (its format as tritonserver 2.x writes it: counters without "_total").
TRITON_PAGE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="unet",version="1"} 64
nv_inference_request_success{model="resnet",version="1"} 10
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="unet",version="1"} 64
nv_inference_count{model="resnet",version="1"} 10
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="unet",version="1"} 16
nv_inference_exec_count{model="resnet",version="1"} 10
"""


def test_the_mean_batch_is_read_from_each_servers_own_counters():
    registry = CollectorRegistry()
    h = Histogram("ee559_inference_batch_size", "rows per batch", ["model"], registry=registry, buckets=(1, 8, 64))
    for rows in (1, 3, 8):
        h.labels(model="resnet").observe(rows)
    h.labels(model="unet").observe(64)
    page = generate_latest(registry).decode()
    assert batch_totals(page, "resnet", OURS_BATCHES) == (12, 3)
    assert batch_totals(page, "unet", OURS_BATCHES) == (64, 1)
    assert batch_totals(page, "lenet", OURS_BATCHES) == (0, 0)
    assert batch_totals(TRITON_PAGE, "unet", TRITON_BATCHES) == (64, 16)
    assert batch_totals(TRITON_PAGE, "resnet", TRITON_BATCHES) == (10, 10)


WORKER = """
import os, sys, time
from pathlib import Path
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import Counter
answered = Counter("ee559_requests", "answered", ["route"])
for i in range(int(sys.argv[2])):
    answered.labels(route="/classify" if i % 2 else "/v2/models/{name}/infer").inc()
Path(sys.argv[3]).touch()
time.sleep(60)
"""


def test_each_workers_requests_come_from_its_own_file(tmp_path: Path):
    """Three processes write prometheus_client's multiprocess files as three workers would (one of
    them answers nothing and so writes none); each is counted apart, in pid order."""
    directory = tmp_path / "ee559_metrics" / "123-456"
    directory.mkdir(parents=True)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    answered = (7, 0, 30)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(directory), str(n), str(tmp_path / f"done{i}")])
        for i, n in enumerate(answered)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"done{i}").exists() for i in range(3)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        pids = [p.pid for p in procs]
        after = worker_counters(pids, tmp_path)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sorted(after) == sorted(pids)
    expected = [n for _, n in sorted(zip(pids, answered))]
    assert worker_requests({}, after) == expected
    before = {pid: {"ee559_requests_total": 2.0} for pid in pids if after[pid]}
    assert worker_requests(before, after) == [n - 2 if n else 0 for n in expected]


def test_one_request_counter_is_used_for_every_worker():
    """BentoML's counter also counts probes: where the service's own counter exists it is used for
    all workers, even one that has only BentoML's so far; with neither there are no shares."""
    before = {1: {"bentoml_service_request_total": 5.0}, 2: {}}
    after = {
        1: {"bentoml_service_request_total": 9.0, "ee559_requests_total": 100.0},
        2: {"bentoml_service_request_total": 3.0},
    }
    assert worker_requests(before, after) == [100.0, 0.0]
    assert worker_requests(before, {1: {"bentoml_service_request_total": 9.0}}) == [4.0]
    assert worker_requests({}, {1: {"ee559_rejected_requests_total": 1.0}}) is None


def test_shares_are_largest_first_and_absent_without_counts():
    assert Run("ee559", "v2 binary", 8, worker_requests=[30.0, 70.0]).shares == "70/30%"
    assert Run("ee559", "v2 binary", 8, worker_requests=[0.0, 50.0]).shares == "100/0%"
    assert Run("ee559", "v2 binary", 8).shares == "-"
    assert Run(TRITON, "v2 binary", 8, worker_requests=[0.0, 0.0]).shares == "-"


def _run(target: str, model: str, c: int, rps: float, p99: float, batch: float | None, **kw) -> Run:
    return Run(target, "v2 binary", c, rps, p99 / 3, p99, model=model, mean_batch=batch, **kw)


def test_the_batching_table_sets_both_servers_side_by_side():
    runs = [
        _run(TRITON, "resnet", 8, 1000.0, 20.0, 3.5),
        _run(TRITON, "resnet", 8, 1200.0, 22.0, 3.25),
        _run("ee559", "resnet", 8, 1500.0, 12.0, 4.0, worker_requests=[600.0, 400.0]),
        _run("ee559", "resnet", 8, 1700.0, 11.0, 4.5, worker_requests=[500.0, 500.0]),
        _run("ee559", "resnet", 8, 99.0, 90.0, 1.0, client_cpu=0.95),  # VOID: shown, not averaged
        _run(TRITON, "unet", 32, 800.0, 40.0, 12.0),
        _run("ee559", "unet", 32, 400.0, 80.0, 9.0, worker_requests=[100.0, 0.0]),
    ]
    lines = batching_table(runs, ["resnet", "unet"]).splitlines()
    assert len(lines) == 4 and "triton-pytriton req/s" in lines[0]
    resnet = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert resnet[:5] == ["resnet", "8", "1,500 / 1,700 / 99 VOID", "1,000 / 1,200", f"{1600 / 1100:.2f}x"]
    assert resnet[7:] == ["4.00 / 4.50 / 1.00 VOID", "3.50 / 3.25", "60/40% / 50/50% / - VOID"]
    unet = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert unet[4] == "0.50x" and unet[5:7] == ["80.0", "40.0"] and unet[9] == "100/0%"


def test_each_run_is_compared_with_triton_on_the_same_model():
    runs = [
        _run(TRITON, "lenet", 8, 2000.0, 5.0, 2.0),
        _run(TRITON, "resnet", 8, 1000.0, 20.0, 3.0),
        _run("ee559", "resnet", 8, 1500.0, 12.0, 4.0, worker_requests=[1.0, 1.0]),
        _run("ee559", "lenet", 8, 3000.0, 4.0, None, server_cpu=1.5),
    ]
    rows = [
        [c.strip() for c in line.split("|")[1:-1]] for line in http_table(runs, {"lenet": 30000.0}).splitlines()[2:]
    ]
    ours_resnet, ours_lenet = rows[2], rows[3]
    assert ours_resnet[11:15] == ["4.00", "50/50%", "1.50x", "-"]  # vs resnet's Triton; no bare ORT for it
    assert ours_lenet[11:15] == ["-", "-", "1.50x", "0.10x"]
    assert ours_lenet[8:10] == ["1.50", "0.500"]  # 1.5 cores at 3,000 req/s: 0.5 ms of server CPU per request


def test_the_reproduce_line_parses_back_to_the_same_options():
    options = "--duration 2 --connections 1,8 --repeat 1 --max-batch-size 16 --no-fastapi --baseline abc123"
    args = parser().parse_args([*options.split(), "--batch-models", ""])
    given = shlex.split(reproduce(args).split("BENCH_ARGS=", 1)[1])[0].split()
    again = parser().parse_args(given)
    for option in ("model", "duration", "connections", "repeat", "batch_models", "batch_connections"):
        assert getattr(again, option) == getattr(args, option), option
    assert (again.max_batch_size, again.baseline, again.no_fastapi, again.no_triton) == (16, "abc123", True, False)
