"""python -m loadtests [--host URL] [--users N] [--spawn-rate R] [--run-time 30s]
[--slo-p95-ms MS] [--slo-fail-ratio F] [--per-user-rps R] [--out DIR]
[--master [--expect-workers N] [--master-bind-host IP] [--master-bind-port 5557] | --workers N]
python -m loadtests --worker [--master-host HOST] [--master-port 5557]

Headless Locust run against a running service: writes CSV and HTML reports under
runs/loadtest/<time>/, and latency.png: p50/p95/p99 latency and requests/s over the run, second by
second (Locust's percentiles over its last 10 s); exits 1 when an SLO is broken, 2 when the run
is void because Locust itself went above 90% CPU (its latencies would measure the load generator).

Distributed: `--master` runs no users; it waits for --expect-workers workers, tells them the host,
users, run time and SLOs, aggregates their stats into the one report and applies the SLO gate once.
`--worker` connects to a master (started on one machine, workers on others: bind the master with
--master-bind-host on an address they reach). `--workers N` starts a master on loopback and N
worker processes beside it, for more cores of one machine.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

from core.paths import runs_dir
from loadtests.servers import free_port

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
ROOT = Path(__file__).resolve().parent.parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="http://127.0.0.1:3000", help="the service, as the workers reach it")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--spawn-rate", type=float, default=8)
    p.add_argument("--run-time", default="30s")
    p.add_argument("--slo-p95-ms", type=float, default=500.0)
    p.add_argument("--slo-fail-ratio", type=float, default=0.01)
    p.add_argument("--per-user-rps", type=float, default=0.0, help="pace each user (0: unpaced)")
    p.add_argument("--out", type=Path, help="report folder (default: runs/loadtest/<time>)")
    role = p.add_argument_group("distributed (Locust's master and workers)").add_mutually_exclusive_group()
    role.add_argument("--master", action="store_true", help="run no users: drive workers, report, apply the SLOs")
    role.add_argument("--worker", action="store_true", help="run users for the master at --master-host")
    role.add_argument("--workers", type=int, default=0, metavar="N", help="a master and N local workers")
    p.add_argument("--expect-workers", type=int, default=1, metavar="N", help="--master: start when N are connected")
    p.add_argument(
        "--expect-workers-max-wait",
        type=int,
        default=120,
        metavar="S",
        help="--master, --workers: give up (exit 1) if the workers are not connected within S seconds (0: wait forever)",
    )
    p.add_argument("--master-bind-host", default="127.0.0.1", help="--master: the address workers connect to")
    p.add_argument("--master-bind-port", type=int, default=5557)
    p.add_argument("--master-host", default="127.0.0.1", help="--worker: the master's address")
    p.add_argument("--master-port", type=int, default=5557)
    args = p.parse_args(argv)
    if args.workers < 0 or args.expect_workers < 1:
        p.error("--workers and --expect-workers take a positive number")
    return args


def locust(*options: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *options]


def worker_cmd(master_host: str, master_port: int) -> list[str]:
    """A worker takes everything else (host, users, run time, SLOs) from its master."""
    return locust("--worker", "--master-host", master_host, "--master-port", str(master_port))


def headless_cmd(args: argparse.Namespace, out: Path, master: tuple[str, int, int] | None) -> list[str]:
    """The run that reports and applies the SLO gate: alone, or as the master of
    `master` = (bind address, port, workers to wait for)."""
    distributed = []
    if master is not None:
        bind, port, expect = master
        distributed = ["--master", "--master-bind-host", bind, "--master-bind-port", str(port)]
        distributed += ["--expect-workers", str(expect), "--expect-workers-max-wait", str(args.expect_workers_max_wait)]
    return locust(
        "--headless",
        *distributed,
        "--host",
        args.host,
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.run_time,
        "--only-summary",
        "--csv",
        str(out / "report"),
        "--csv-full-history",  # the history's percentiles over Locust's last 10 s, not since the start
        "--html",
        str(out / "report.html"),
        "--slo-p95-ms",
        str(args.slo_p95_ms),
        "--slo-fail-ratio",
        str(args.slo_fail_ratio),
        "--per-user-rps",
        str(args.per_user_rps),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        cmd = worker_cmd(args.master_host, args.master_port)
        print(" ".join(cmd), flush=True)
        return subprocess.call(cmd, cwd=ROOT)
    out = args.out or runs_dir() / "loadtest" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    master = None
    if args.master:
        master = (args.master_bind_host, args.master_bind_port, args.expect_workers)
    elif args.workers:
        master = ("127.0.0.1", free_port(), args.workers)
    cmd = headless_cmd(args, out, master)
    print(" ".join(cmd), flush=True)
    if not args.workers:
        rc = subprocess.call(cmd, cwd=ROOT)
    else:
        run = subprocess.Popen(cmd, cwd=ROOT)
        wcmd = worker_cmd("127.0.0.1", master[1])
        print(f"{args.workers} x {' '.join(wcmd)}", flush=True)
        workers = [subprocess.Popen(wcmd, cwd=ROOT) for _ in range(args.workers)]
        rc = run.wait()
        for w in workers:  # the master tells them to quit; a worker that never connected is stopped here
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.terminate()
                w.wait()
        print(f"workers' exit codes: {[w.returncode for w in workers]}", flush=True)
    picture = plot_history(out / "report_stats_history.csv", out / "latency.png", args.host)
    print(f"reports: {out}/report_stats.csv, {out}/report.html, {picture}; exit code {rc}", flush=True)
    return rc


def plot_history(history: Path, path: Path, host: str) -> Path | None:
    """Latency percentiles and throughput over the run, from Locust's history (all requests)."""
    from core.plots import PALETTE, Line, chart, save

    if not history.exists():
        return None
    rows = [r for r in csv.DictReader(open(history)) if r["Name"] == "Aggregated" and r["50%"] not in ("N/A", "")]
    while rows and all(float(rows[0][f"{q}%"]) == 0 for q in ("50", "95", "99")):
        rows.pop(0)  # Locust's window before its first answers
    if not rows:
        return None
    t0 = int(rows[0]["Timestamp"])

    def series(column: str) -> list[tuple[float, float]]:
        return [(int(r["Timestamp"]) - t0, float(r[column])) for r in rows]

    latency = [Line(f"p{q}", series(f"{q}%"), PALETTE[i]) for i, q in enumerate(("50", "95", "99"))]
    rate = [
        Line("requests/s", series("Requests/s"), PALETTE[0]),
        Line("failures/s", series("Failures/s"), PALETTE[3]),
        Line("users", series("User Count"), PALETTE[7], dashed=True),
    ]
    return save(
        [
            chart(latency, f"latency over the run ({host}, last 10 s)", "seconds", "ms"),
            chart(rate, "throughput over the run", "seconds", "per second / users"),
        ],
        path,
        columns=2,
    )


if __name__ == "__main__":
    sys.exit(main())
