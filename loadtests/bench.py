"""python -m loadtests.bench [--model lenet] [--duration 5] [--connections 1,8,32]
python -m loadtests.bench --device cuda|cpu [--quick] ...   (the device micro-benchmark, below)

Measures, in one run and on one machine, for one exported model:
  1. in-process: bare ONNX Runtime at batch 1 (the physical limit), and ORT vs PyTorch eager at
     batch 1 for every registered model, on the CPU;
  2. over HTTP with wrk at each connection count: a minimal FastAPI+ORT server, Triton through
     PyTriton (if .venv-triton exists: `make bench` creates it), and this project's service
     (friendly JSON /classify, v2 JSON, v2 binary): req/s, p50, p99, errors, server and client CPU,
     and the ratios to Triton and to bare ORT;
  3. the service's cold start (process start to /readyz 200) and resident memory per process.
Writes the HTTP runs as a picture too (--plot, default runs/bench/throughput-latency.png): per
endpoint, req/s against p50 and p99 latency over the connection counts, one line per server.
With --baseline REF, the service as it was at git commit REF (a worktree of it, the same model
store and interpreter) is measured in the same run, before this checkout's, and each row of ours
gets its ratio to it: what a change costs or gains on the hot path. --no-fastapi skips that server.
A run whose load generator was CPU-bound is printed as VOID rather than trusted.

With --device cuda|cpu it runs the device micro-benchmark instead (loadtests/devicebench.py, no
HTTP, no wrk): ORT with IO binding, ORT with numpy I/O and PyTorch on that device, at batch 1, 8,
64 and 256 for LeNet, ResNet and U-Net, with the ratio ORT IO binding / PyTorch per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil

from loadtests import devicebench
from loadtests.servers import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
TRITON_PY = ROOT / ".venv-triton" / "bin" / "python"
if TYPE_CHECKING:
    from core.card import ModelCard

CPU_BOUND = 0.9  # wrk runs one thread: above 90% of a core it measures itself


@dataclass
class Run:
    target: str
    endpoint: str
    connections: int
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def void(self) -> bool:
        return self.client_cpu >= CPU_BOUND


def tree(proc: subprocess.Popen) -> list[psutil.Process]:
    p = psutil.Process(proc.pid)
    return [p, *p.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(
    url: str,
    body_file: Path,
    headers: dict[str, str],
    connections: int,
    duration: float,
    server: subprocess.Popen,
    target: str,
    endpoint: str,
    workdir: Path,
) -> Run:
    lua = workdir / f"{abs(hash((url, str(body_file))))}.lua"
    lines = ['wrk.method = "POST"', f'local f = io.open("{body_file}", "rb")', 'wrk.body = f:read("*a")', "f:close()"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lua.write_text("\n".join(lines) + "\n")
    procs = tree(server)
    cpu0, ru0, t0 = cpu_seconds(procs), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = Run(target, endpoint, connections)
    run.server_cpu = (cpu_seconds(procs) - cpu0) / wall
    run.client_cpu = ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall
    run.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)", out, re.M))
    for key, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.match(r"([\d.]+)(\w+)", lat[key])
        setattr(run, attr, _ms(*m.groups()))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    run.errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return run


def bodies(model: str, x: np.ndarray, workdir: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """Request bodies per endpoint kind, all carrying the same held-out image."""
    flat = x.ravel().tolist()
    v2_json = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, *x.shape], "data": flat}]}
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [1, *x.shape],
                    "parameters": {"binary_data_size": x.size * 4},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    files = {
        "friendly JSON": (
            json.dumps({"model": model, "image": x[0].tolist()}).encode(),
            {"Content-Type": "application/json"},
        ),
        "fastapi JSON": (json.dumps({"image": x[0].tolist()}).encode(), {"Content-Type": "application/json"}),
        "v2 JSON": (json.dumps(v2_json).encode(), {"Content-Type": "application/json"}),
        "v2 binary": (
            header + x.astype("<f4").tobytes(),
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        ),
    }
    out = {}
    for kind, (data, headers) in files.items():
        path = workdir / (kind.replace(" ", "_") + ".body")
        path.write_bytes(data)
        out[kind] = (path, headers)
    return out


def in_process(bench_model, seconds: float = 2.0) -> dict[str, float]:
    """Bare ORT calls/s at batch 1 on one thread, and ORT vs PyTorch eager for every model."""
    import onnxruntime as ort
    import torch

    from core import store
    from training.registry import REGISTRY
    from training.train import load_checkpoint

    def rate(fn) -> float:
        for _ in range(20):
            fn()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        return n / (time.perf_counter() - t0)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    torch.set_num_threads(1)
    results: dict[str, float] = {}

    def sample(card: ModelCard, batch: int) -> np.ndarray:
        return np.random.default_rng(0).random((batch, *card.row_shape), dtype=np.float32)

    sess = ort.InferenceSession(str(bench_model.onnx_path), so, providers=["CPUExecutionProvider"])
    x1 = sample(bench_model.card, 1)
    results["bare ORT batch 1 (calls/s)"] = rate(lambda: sess.run(None, {"image": x1}))
    for name, tag in store.discover(tuple(REGISTRY)).items():
        served = store.load(tag)  # the exported model and the checkpoint it came from
        if served.card.is_text:
            continue  # text step graphs: python -m loadtests.textbench
        feed = served.card.input.name
        model, _ = load_checkpoint(Path(served.card.checkpoint["path"]), REGISTRY[name])
        graph_fn = getattr(model, REGISTRY[name].export.method)  # what the ONNX graph computes
        s = ort.InferenceSession(str(served.onnx_path), so, providers=["CPUExecutionProvider"])
        x = sample(served.card, 1)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            t = rate(lambda: graph_fn(xt))
        o = rate(lambda: s.run(None, {feed: x}))
        results[f"{name}: ORT / PyTorch eager, batch 1, CPU"] = o / t
    return results


def serve_ours(model: str, port: int, log: Path, root: Path = ROOT) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "EE559_MODELS": model}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service.service:EE559", "--host", "127.0.0.1", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="lenet")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--connections", default="1,8,32")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), help="run the device micro-benchmark on it (no HTTP; see below)"
    )
    # One worker: with --workers N, uvicorn 0.54 leaves Nagle on for accepted connections (stalls of
    # Linux's delayed-ACK timer, TCP_DELACK_MIN = 40 ms, at low concurrency), which would make the
    # baseline look worse than it is.
    p.add_argument("--fastapi-workers", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2, help="runs per configuration (each is reported)")
    p.add_argument("--no-triton", action="store_true")
    p.add_argument("--no-fastapi", action="store_true")
    p.add_argument("--baseline", metavar="REF", help="also measure the service at this git commit, for ratios")
    p.add_argument("--plot", type=Path, help="the picture's path (default runs/bench/throughput-latency.png)")
    devicebench.add_arguments(p)
    args = p.parse_args(argv)
    if args.device:
        os.environ.setdefault("BENTOML_HOME", str(ROOT / "runs" / "bentoml"))
        return devicebench.run(args)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk; `make bench` does it)", file=sys.stderr)
        return 2
    os.environ.setdefault("BENTOML_HOME", str(ROOT / "runs" / "bentoml"))
    sys.path.insert(0, str(ROOT))
    from core import store

    tag = store.discover((args.model,))[args.model]
    served = store.load(tag)
    x = np.asarray(served.card.examples["inputs"][0], dtype=np.float32)  # (1, 28, 28), a held-out digit
    conns = [int(c) for c in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="ee559-bench-"))
    body = bodies(args.model, x, workdir)
    print(f"model {tag}, {psutil.cpu_count()} CPUs, wrk -t1, {args.duration:g} s per run", flush=True)

    static = in_process(served)
    runs: list[Run] = []

    def measure(target: str, proc: subprocess.Popen, url: str, kinds: list[tuple[str, str]]) -> None:
        for endpoint, kind in kinds:
            path, headers = body[kind]
            for c in sorted(conns * args.repeat):
                r = wrk(url + endpoint, path, headers, c, args.duration, proc, target, kind, workdir)
                runs.append(r)
                print(
                    f"  {target:8s} {kind:14s} c={c:<3d} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
                    f"p99 {r.p99_ms:7.2f} ms  errors {r.errors}  server CPU {r.server_cpu:.2f}  "
                    f"client CPU {r.client_cpu:.2f}{'  VOID' if r.void else ''}",
                    flush=True,
                )

    # FastAPI + ORT
    if not args.no_fastapi:
        port = free_port()
        fa = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "loadtests.baselines.fastapi_app:app",
                "--port",
                str(port),
                "--workers",
                str(args.fastapi_workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env={**os.environ, "EE559_BENCH_ONNX": str(served.onnx_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/docs", fa)
            measure("fastapi", fa, f"http://127.0.0.1:{port}/classify", [("", "fastapi JSON")])
        finally:
            stop(fa)

    # Triton via PyTriton
    if not args.no_triton and TRITON_PY.exists():
        port = free_port()
        tr = subprocess.Popen(
            [
                str(TRITON_PY),
                str(ROOT / "loadtests" / "baselines" / "pytriton_server.py"),
                args.model,
                str(served.onnx_path),
                str(port),
            ],
            cwd=ROOT,
            stdout=open(workdir / "triton.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/models/{args.model}/ready", tr, timeout=180)
            measure(
                "triton",
                tr,
                f"http://127.0.0.1:{port}/v2/models/{args.model}/infer",
                [("", "v2 JSON"), ("", "v2 binary")],
            )
        finally:
            stop(tr)
    else:
        print("  triton: skipped (no .venv-triton; `make bench` creates it)", flush=True)

    ours_endpoints = [
        ("/classify", "friendly JSON"),
        (f"/v2/models/{args.model}/infer", "v2 JSON"),
        (f"/v2/models/{args.model}/infer", "v2 binary"),
    ]
    if args.baseline:
        tree_dir = workdir / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree_dir), args.baseline], cwd=ROOT, check=True)
        try:
            port = free_port()
            base, _ = serve_ours(args.model, port, workdir / "baseline.log", root=tree_dir)
            try:
                measure("baseline", base, f"http://127.0.0.1:{port}", ours_endpoints)
            finally:
                stop(base)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree_dir)], cwd=ROOT, check=False)

    # This project's service
    port = free_port()
    ours, cold = serve_ours(args.model, port, workdir / "serve.log")
    try:
        rss = {p.name() + f"[{p.pid}]": p.memory_info().rss / 2**20 for p in tree(ours)}
        measure("ee559", ours, f"http://127.0.0.1:{port}", ours_endpoints)
    finally:
        stop(ours)

    report(static, runs, cold, rss, args)
    from core.paths import runs_dir

    picture = plot(runs, args.plot or runs_dir() / "bench" / "throughput-latency.png", args.model)
    print(f"picture: {picture}")
    return 0


# The panels of the picture: each of our endpoints with the servers that answer the same request.
PANELS = {
    "friendly JSON": ("friendly JSON", "fastapi JSON"),
    "v2 JSON": ("v2 JSON",),
    "v2 binary": ("v2 binary",),
}


def plot(runs: list[Run], path: Path, model: str) -> Path:
    """Per endpoint, req/s (x) against p50 (solid) and p99 (dashed) latency (y, log), a point per
    connection count (the median of its repeats), one colour per server; VOID runs left out."""
    from core.plots import PALETTE, Line, chart, save

    targets = list(dict.fromkeys(r.target for r in runs))
    colour = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(targets)}
    panels = []
    for panel, endpoints in PANELS.items():
        lines = []
        for target in targets:
            mine = [r for r in runs if r.target == target and r.endpoint in endpoints and not r.void]
            if target == "triton" and panel == "friendly JSON":  # the reference for JSON bodies
                mine = [r for r in runs if r.target == target and r.endpoint == "v2 JSON" and not r.void]
            conns = sorted({r.connections for r in mine})
            if not conns:
                continue
            med = {c: _median_run([r for r in mine if r.connections == c]) for c in conns}
            name = f"{target} ({mine[0].endpoint})" if panel == "friendly JSON" else target
            marks = [f"c={c}" for c in conns]
            lines.append(
                Line(f"{name} p50", [(med[c].rps, med[c].p50_ms) for c in conns], colour[target], False, marks)
            )
            lines.append(Line(f"{name} p99", [(med[c].rps, med[c].p99_ms) for c in conns], colour[target], True))
        panels.append(
            chart(lines, f"{model}, {panel}: latency against throughput", "requests/s", "ms (log)", log_y=True)
        )
    return save(panels, path, columns=3)


def _median_run(runs: list[Run]) -> Run:
    """The repeat with the median req/s (its own p50 and p99, not a mix of runs)."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def report(static: dict[str, float], runs: list[Run], cold: float, rss: dict[str, float], args) -> None:
    bare = static["bare ORT batch 1 (calls/s)"]
    triton = {(r.endpoint, r.connections): r for r in runs if r.target == "triton"}
    baseline: dict[tuple[str, int], list[float]] = {}
    for r in runs:
        if r.target == "baseline" and not r.void:
            baseline.setdefault((r.endpoint, r.connections), []).append(r.rps)
    twin = {"friendly JSON": "v2 JSON", "v2 JSON": "v2 JSON", "v2 binary": "v2 binary", "fastapi JSON": "v2 JSON"}
    print("\n## In-process (one thread)")
    for k, v in static.items():
        print(f"- {k}: {v:,.1f}{'x' if '/' in k and 'calls/s' not in k else ''}")
    print("\n## HTTP (wrk -t1; ratios measured in this run)")
    print(
        "| target | endpoint | conns | req/s | p50 ms | p99 ms | errors | server CPU | client CPU | vs Triton | "
        "vs bare ORT | vs baseline |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        t = triton.get((twin[r.endpoint], r.connections))
        vs_t = f"{r.rps / t.rps:.2f}x" if t and t.rps and r.target != "triton" else "-"
        flag = " VOID (client CPU-bound)" if r.void else ""
        base = baseline.get((r.endpoint, r.connections))
        vs_b = f"{r.rps / (sum(base) / len(base)):.2f}x" if base and r.target == "ee559" else "-"
        print(
            f"| {r.target} | {r.endpoint}{flag} | {r.connections} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.errors} | {r.server_cpu:.2f} | {r.client_cpu:.2f} | {vs_t} | {r.rps / bare:.2f}x | {vs_b} |"
        )
    print(f"\n- cold start (process start to /readyz 200): {cold:.1f} s")
    print("- resident memory: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items()))
    print(
        f"\nreproduce: make bench BENCH_ARGS='--model {args.model} --duration {args.duration:g} "
        f"--connections {args.connections} --repeat {args.repeat}"
        + (f" --baseline {args.baseline}" if args.baseline else "")
        + (" --no-fastapi" if args.no_fastapi else "")
        + (" --no-triton" if args.no_triton else "")
        + "'"
    )


if __name__ == "__main__":
    sys.exit(main())
