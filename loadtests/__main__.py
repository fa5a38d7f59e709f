"""python -m loadtests [--host URL] [--users N] [--spawn-rate R] [--run-time 30s]
[--slo-p95-ms MS] [--slo-fail-ratio F] [--per-user-rps R] [--out DIR]

Headless Locust run against a running service: writes CSV and HTML reports under
runs/loadtest/<time>/ and exits 1 when an SLO is broken, 2 when the run is void because Locust
itself went above 90% CPU (its latencies would measure the load generator).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from core.paths import runs_dir

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="http://127.0.0.1:3000")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--spawn-rate", type=float, default=8)
    p.add_argument("--run-time", default="30s")
    p.add_argument("--slo-p95-ms", type=float, default=500.0)
    p.add_argument("--slo-fail-ratio", type=float, default=0.01)
    p.add_argument("--per-user-rps", type=float, default=0.0, help="pace each user (0: unpaced)")
    p.add_argument("--out", type=Path, help="report folder (default: runs/loadtest/<time>)")
    args = p.parse_args(argv)
    out = args.out or runs_dir() / "loadtest" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
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
        "--html",
        str(out / "report.html"),
        "--slo-p95-ms",
        str(args.slo_p95_ms),
        "--slo-fail-ratio",
        str(args.slo_fail_ratio),
        "--per-user-rps",
        str(args.per_user_rps),
    ]
    print(" ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=Path(__file__).resolve().parent.parent)
    print(f"reports: {out}/report_stats.csv, {out}/report.html; exit code {rc}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
