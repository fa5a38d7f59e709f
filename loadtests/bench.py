"""python -m loadtests.bench [--model lenet] [--duration 5] [--connections 1,8,32]
                            [--batch-models resnet,unet] [--batch-connections 8,32]
python -m loadtests.bench --device cuda|cpu [--quick] ...   (the device micro-benchmark, below)

Measures, in one run and on one machine:
  1. in-process: bare ONNX Runtime at batch 1 (the physical limit) for --model, and ORT vs PyTorch
     eager at batch 1 for every registered model, on the CPU;
  2. over HTTP with wrk, for --model at each connection count: a minimal FastAPI+ORT server, the
     Triton baseline (if .venv-triton exists: `make bench` creates it) and this project's service
     (friendly JSON /classify, v2 JSON, v2 binary): req/s, p50, p99, errors, server and client CPU,
     and the ratios to Triton and to bare ORT;
  3. the heavier models (--batch-models, served together) with v2 binary bodies at
     --batch-connections, the Triton baseline against this service, both batching with the same
     largest batch (--max-batch-size);
  4. the service's cold start (process start to /readyz 200) and resident memory per process.
Every run of Triton and of the service also reports the mean batch the server formed (rows run /
batches run during the run, from its own metrics: ee559_inference_batch_size on /metrics, and
Triton's nv_inference_count / nv_inference_exec_count), and every run of the service each worker
process's share of the requests it answered (from the per-process files behind /metrics).
The Triton baseline ("triton-pytriton") is Triton's HTTP front end and dynamic batcher with
PyTriton's Python backend, which hands each batch to a Python process where ONNX Runtime runs it
(loadtests/baselines/pytriton_server.py); not Triton's native ONNX Runtime backend, which cannot
run here (docs/benchmarks.md).
Writes every run as JSON (--json, default runs/bench/bench.json) and as a picture (--plot,
default runs/bench/throughput-latency.png): per endpoint of --model, req/s against p50 and p99
latency over the connection counts, one line per server.
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
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil

from loadtests import devicebench
from loadtests.servers import free_port, prometheus_samples, stop, wait_http

ROOT = Path(__file__).resolve().parent.parent
TRITON_PY = ROOT / ".venv-triton" / "bin" / "python"
if TYPE_CHECKING:
    from core.card import ModelCard

CPU_BOUND = 0.9  # wrk runs one thread: above 90% of a core it measures itself
TRITON = "triton-pytriton"  # the baseline's name in tables and JSON (the module docstring says what it is)
# Where each server counts, per model label, the rows and the batches it ran: rows / batches over a
# run is the mean batch it formed.
OURS_BATCHES = ("ee559_inference_batch_size_sum", "ee559_inference_batch_size_count")
TRITON_BATCHES = ("nv_inference_count", "nv_inference_exec_count")
# A worker's answered requests: the service's own counter, or BentoML's at commits without it (--baseline).
REQUEST_COUNTERS = ("ee559_requests_total", "bentoml_service_request_total")


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
    model: str = ""
    mean_batch: float | None = None  # rows per batch the server ran during this run, from its metrics
    worker_requests: list[float] | None = None  # requests each worker process of ours answered in it

    @property
    def void(self) -> bool:
        return self.client_cpu >= CPU_BOUND

    @property
    def shares(self) -> str:
        """Each worker's share of the requests, largest first ("52/48%"), or "-"."""
        total = sum(self.worker_requests or ())
        if not total:
            return "-"
        return "/".join(f"{100 * n / total:.0f}" for n in sorted(self.worker_requests or (), reverse=True)) + "%"


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


def batch_totals(text: str, model: str, series: tuple[str, str]) -> tuple[float, float]:
    """(rows, batches) a server has run for `model` so far, from its metrics page: the sums of the
    samples named by `series` (OURS_BATCHES, TRITON_BATCHES) that carry the model's label. A counter's
    "_total" is ignored: the parser adds it where the page (Triton's) has none."""
    samples = [(n.removesuffix("_total"), labels, v) for n, labels, v in prometheus_samples(text)]
    rows, batches = (
        sum(v for n, labels, v in samples if n == name.removesuffix("_total") and labels.get("model") == model)
        for name in series
    )
    return rows, batches


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def workers(server: subprocess.Popen) -> list[int]:
    """The pids of a `bentoml serve` process's workers: its children."""
    return [p.pid for p in psutil.Process(server.pid).children()]


def worker_counters(pids: list[int], home: Path) -> dict[int, dict[str, float]]:
    """Each worker's counters so far (name -> value summed over labels), by pid. /metrics adds the
    workers up (prometheus_client's multiprocess mode); the per-process files it adds up,
    counter_<pid>.db in the server's metrics directory under BENTOML_HOME `home`
    (service/metrics.py own_directory; at older commits prometheus_multiproc_dir), are read here one
    by one. A worker that has answered nothing has no file yet and counts nothing."""
    from prometheus_client.mmap_dict import MmapedDict

    out: dict[int, dict[str, float]] = {}
    for pid in pids:
        counts: dict[str, float] = {}
        pattern = f"counter_{pid}.db"
        for path in [*home.glob(f"ee559_metrics/*/{pattern}"), *home.glob(f"prometheus_multiproc_dir/{pattern}")]:
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
                name = json.loads(key)[1]
                counts[name] = counts.get(name, 0.0) + value
        out[pid] = counts
    return out


def worker_requests(before: dict[int, dict[str, float]], after: dict[int, dict[str, float]]) -> list[float] | None:
    """Requests each worker answered between two readings of worker_counters, in pid order; the
    first counter of REQUEST_COUNTERS that any worker has is used for all. None if none has one."""
    name = next((n for n in REQUEST_COUNTERS if any(n in c for c in after.values())), None)
    if name is None:
        return None
    return [after[pid].get(name, 0.0) - before.get(pid, {}).get(name, 0.0) for pid in sorted(after)]


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
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    lat = {pct: (value, unit) for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(\w+)", out, re.M)}
    if rps is None or not {"50", "99"} <= lat.keys():
        raise RuntimeError(f"wrk printed no rate or latency distribution:\n{out}")
    run.rps = float(rps.group(1))
    run.p50_ms, run.p99_ms = _ms(*lat["50"]), _ms(*lat["99"])
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    run.errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return run


def bodies(model: str, x: np.ndarray, workdir: Path, feed: str = "image") -> dict[str, tuple[Path, dict[str, str]]]:
    """Request bodies per endpoint kind, all carrying the same held-out image (`feed`: the graph's
    input name), written under workdir/model."""
    flat = x.ravel().tolist()
    v2_json = {"inputs": [{"name": feed, "datatype": "FP32", "shape": [1, *x.shape], "data": flat}]}
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": feed,
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
    (workdir / model).mkdir(parents=True, exist_ok=True)
    for kind, (data, headers) in files.items():
        path = workdir / model / (kind.replace(" ", "_") + ".body")
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


def serve_ours(
    models: str, port: int, log: Path, root: Path = ROOT, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, float]:
    """`bentoml serve` of this service (at `root`) serving `models` (EE559_MODELS); the seconds to ready."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service.service:EE559", "--host", "127.0.0.1", "--port", str(port)],
        cwd=root,
        env={**os.environ, **(env or {}), "EE559_MODELS": models},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, time.monotonic() - t0


def serve_triton(graphs: dict[str, tuple[Path, int]], port: int, log: Path, instances: int) -> subprocess.Popen:
    """The Triton baseline serving each model of `graphs` (name -> ONNX path, largest batch) on
    `port`, its metrics on port + 2; returns once every model is ready."""
    proc = subprocess.Popen(
        [str(TRITON_PY), str(ROOT / "loadtests" / "baselines" / "pytriton_server.py"), str(port), str(instances)]
        + [f"{name}={path}={batch}" for name, (path, batch) in graphs.items()],
        cwd=ROOT,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for name in graphs:
            wait_http(f"http://127.0.0.1:{port}/v2/models/{name}/ready", proc, timeout=180)
    except BaseException:
        stop(proc)
        raise
    return proc


def onnxruntime_version(python: Path | str) -> str:
    """The ONNX Runtime version that `python` imports."""
    return subprocess.run(
        [str(python), "-c", "import onnxruntime; print(onnxruntime.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="lenet")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--connections", default="1,8,32")
    p.add_argument(
        "--batch-models",
        default="resnet,unet",
        help="heavier models measured with v2 binary bodies against Triton, both batching ('' skips them)",
    )
    p.add_argument("--batch-connections", default="8,32", help="connection counts for --batch-models")
    p.add_argument(
        "--max-batch-size", type=int, default=64, help="largest batch on both servers (also capped by each card's)"
    )
    p.add_argument(
        "--triton-instances",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="Triton model instances per model, each an ORT session of one thread (default: one per core, "
        "as the service runs one worker per core)",
    )
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
    devicebench.add_arguments(p)  # its --json is also the HTTP bench's (default runs/bench/bench.json)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.device:
        os.environ.setdefault("BENTOML_HOME", str(ROOT / "runs" / "bentoml"))
        return devicebench.run(args)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk; `make bench` does it)", file=sys.stderr)
        return 2
    os.environ.setdefault("BENTOML_HOME", str(ROOT / "runs" / "bentoml"))
    home = Path(os.environ["BENTOML_HOME"])
    sys.path.insert(0, str(ROOT))
    import onnxruntime

    from core import store

    batch_models = [m for m in args.batch_models.split(",") if m]
    served = {m: store.load(tag) for m, tag in store.discover((args.model, *batch_models)).items()}
    missing = [m for m in (args.model, *batch_models) if m not in served]
    if missing:
        print(f"bench: no exported model {', '.join(missing)} in {home} (`make export`)", file=sys.stderr)
        return 2
    conns = [int(c) for c in args.connections.split(",")]
    batch_conns = [int(c) for c in args.batch_connections.split(",") if c]
    workdir = Path(tempfile.mkdtemp(prefix="ee559-bench-"))
    body = {}
    for m, s in served.items():
        x = np.asarray(s.card.examples["inputs"][0], dtype=np.float32)  # one held-out input, e.g. (1, 28, 28)
        body[m] = bodies(m, x, workdir, s.card.input.name)
    largest = {m: min(args.max_batch_size, s.card.max_batch_size) for m, s in served.items()}
    ours_env = {"EE559_MAX_BATCH_SIZE": str(args.max_batch_size)}  # the service caps it by each card too
    print(
        f"model {served[args.model].card.name}:{served[args.model].card.version}"
        + (f", batching models {', '.join(batch_models)}" if batch_models else "")
        + f", {psutil.cpu_count()} CPUs, wrk -t1, {args.duration:g} s per run",
        flush=True,
    )
    triton_ok = not args.no_triton and TRITON_PY.exists()
    versions = {"ee559": onnxruntime.__version__, TRITON: onnxruntime_version(TRITON_PY) if triton_ok else None}
    if triton_ok:
        print(
            f"{TRITON}: Triton's HTTP front end and dynamic batcher, PyTriton's Python backend, ONNX Runtime "
            f"{versions[TRITON]} in its Python process, {args.triton_instances} instance(s) per model; "
            f"the service: ONNX Runtime {versions['ee559']}",
            flush=True,
        )
        if versions[TRITON] != versions["ee559"]:
            print("  WARNING: not the same ONNX Runtime (`make bench` installs requirements-triton.txt)", flush=True)

    static = in_process(served[args.model])
    runs: list[Run] = []

    def measure(
        target: str,
        proc: subprocess.Popen,
        url: str,
        model: str,
        kinds: list[tuple[str, str]],
        counts: list[int],
        metrics: tuple[str, tuple[str, str]] | None = None,
        per_worker: bool = False,
    ) -> None:
        """wrk against url + endpoint for each (endpoint, body kind) and connection count; with
        `metrics` (its page's URL and series) the mean batch of each run, with `per_worker` each worker's
        requests (read before and after each run, outside it)."""
        for endpoint, kind in kinds:
            path, headers = body[model][kind]
            for c in sorted(counts * args.repeat):
                page0 = batch_totals(scrape(metrics[0]), model, metrics[1]) if metrics else None
                w0 = worker_counters(workers(proc), home) if per_worker else None
                r = wrk(url + endpoint, path, headers, c, args.duration, proc, target, kind, workdir)
                r.model = model
                if w0 is not None:
                    r.worker_requests = worker_requests(w0, worker_counters(workers(proc), home))
                if metrics and page0:
                    rows, batches = (a - b for a, b in zip(batch_totals(scrape(metrics[0]), model, metrics[1]), page0))
                    r.mean_batch = rows / batches if batches else None
                runs.append(r)
                print(
                    f"  {target:15s} {model:7s} {kind:14s} c={c:<3d} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
                    f"p99 {r.p99_ms:7.2f} ms  errors {r.errors}  server CPU {r.server_cpu:.2f}  "
                    f"client CPU {r.client_cpu:.2f}"
                    + (f"  mean batch {r.mean_batch:.2f}" if r.mean_batch is not None else "")
                    + (f"  workers {r.shares}" if per_worker else "")
                    + ("  VOID" if r.void else ""),
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
            env={**os.environ, "EE559_BENCH_ONNX": str(served[args.model].onnx_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/docs", fa)
            measure("fastapi", fa, f"http://127.0.0.1:{port}/classify", args.model, [("", "fastapi JSON")], conns)
        finally:
            stop(fa)

    def triton(models: list[str], kinds: list[str], counts: list[int], log: str) -> None:
        port = free_port()
        graphs = {m: (served[m].onnx_path, largest[m]) for m in models}
        tr = serve_triton(graphs, port, workdir / log, args.triton_instances)
        try:
            for m in models:
                url = f"http://127.0.0.1:{port}/v2/models/{m}/infer"
                page = (f"http://127.0.0.1:{port + 2}/metrics", TRITON_BATCHES)
                measure(TRITON, tr, url, m, [("", k) for k in kinds], counts, metrics=page)
        finally:
            stop(tr)

    def ours(target: str, models: list[str], endpoints, counts: list[int], log: str, root: Path = ROOT) -> float:
        """Serve `models` with the service at `root`, measure them; its cold start in seconds."""
        port = free_port()
        # name:version: the fp32 graph the others serve, also for a --baseline commit whose store
        # selection predates the variants (it would take the newest version, an INT8 one)
        tags = ",".join(f"{m}:{served[m].card.version}" for m in models)
        proc, cold = serve_ours(tags, port, workdir / log, root=root, env=ours_env)
        try:
            if target == "ee559" and models == [args.model]:
                rss.update({p.name() + f"[{p.pid}]": p.memory_info().rss / 2**20 for p in tree(proc)})
            page = (f"http://127.0.0.1:{port}/metrics", OURS_BATCHES)
            for m in models:
                measure(
                    target, proc, f"http://127.0.0.1:{port}", m, endpoints(m), counts, metrics=page, per_worker=True
                )
        finally:
            stop(proc)
        return cold

    if triton_ok:
        triton([args.model], ["v2 JSON", "v2 binary"], conns, "triton.log")
    else:
        why = "--no-triton" if args.no_triton else "no .venv-triton; `make bench` creates it"
        print(f"  {TRITON}: skipped ({why})", flush=True)

    def ours_endpoints(m: str) -> list[tuple[str, str]]:
        return [
            ("/classify", "friendly JSON"),
            (f"/v2/models/{m}/infer", "v2 JSON"),
            (f"/v2/models/{m}/infer", "v2 binary"),
        ]

    rss: dict[str, float] = {}
    if args.baseline:
        tree_dir = workdir / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree_dir), args.baseline], cwd=ROOT, check=True)
        try:
            ours("baseline", [args.model], ours_endpoints, conns, "baseline.log", root=tree_dir)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree_dir)], cwd=ROOT, check=False)

    # This project's service
    cold = ours("ee559", [args.model], ours_endpoints, conns, "serve.log")

    # The heavier models: v2 binary on both servers, both batching
    if batch_models and batch_conns:
        if triton_ok:
            triton(batch_models, ["v2 binary"], batch_conns, "triton-batch.log")
        ours("ee559", batch_models, lambda m: [(f"/v2/models/{m}/infer", "v2 binary")], batch_conns, "serve-batch.log")

    report(static, runs, cold, rss, args)
    from core.paths import runs_dir

    out = args.json or runs_dir() / "bench" / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": reproduce(args),
                "cpus": psutil.cpu_count(),
                "duration_s": args.duration,
                "models": {m: f"{s.card.name}:{s.card.version}" for m, s in served.items()},
                "max_batch_size": largest,
                "triton": {
                    "name": TRITON,
                    "what": "Triton's HTTP front end and dynamic batcher (no queue delay), PyTriton's Python backend, "
                    "ONNX Runtime in PyTriton's Python process",
                    "instances_per_model": args.triton_instances,
                },
                "onnxruntime": versions,
                "in_process": static,
                "cold_start_s": cold,
                "rss_mib": rss,
                "runs": [asdict(r) for r in runs],
            },
            indent=1,
        )
    )
    print(f"json: {out}")
    picture = plot(
        [r for r in runs if r.model == args.model],
        args.plot or runs_dir() / "bench" / "throughput-latency.png",
        args.model,
    )
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
            if target == TRITON and panel == "friendly JSON":  # the reference for JSON bodies
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


def reproduce(args) -> str:
    return (
        f"make bench BENCH_ARGS='--model {args.model} --duration {args.duration:g} "
        f"--connections {args.connections} --repeat {args.repeat} --batch-models={args.batch_models} "
        f"--batch-connections {args.batch_connections} --max-batch-size {args.max_batch_size}"
        + (f" --baseline {args.baseline}" if args.baseline else "")
        + (" --no-fastapi" if args.no_fastapi else "")
        + (" --no-triton" if args.no_triton else "")
        + "'"
    )


def cpu_per_request_ms(r: Run) -> str:
    """Server CPU milliseconds per request: the server's processes' CPU seconds over the run (its
    `server_cpu` cores times the run's length) divided by the requests answered."""
    return f"{1e3 * r.server_cpu / r.rps:.3f}" if r.rps else "-"


def _batch(r: Run) -> str:
    return f"{r.mean_batch:.2f}" if r.mean_batch is not None else "-"


# Which Triton endpoint answers the same request as each of ours (friendly JSON: Triton's JSON).
TWIN = {"friendly JSON": "v2 JSON", "v2 JSON": "v2 JSON", "v2 binary": "v2 binary", "fastapi JSON": "v2 JSON"}


def http_table(runs: list[Run], bare: dict[str, float]) -> str:
    """Every run, one row each, with its ratios to Triton (its last repeat of the same request),
    to bare ORT (`bare`: calls/s by model, where measured) and to the baseline commit (the mean)."""
    triton = {(r.model, r.endpoint, r.connections): r for r in runs if r.target == TRITON}
    baseline: dict[tuple[str, str, int], list[float]] = {}
    for r in runs:
        if r.target == "baseline" and not r.void:
            baseline.setdefault((r.model, r.endpoint, r.connections), []).append(r.rps)
    lines = [
        "| target | model | endpoint | conns | req/s | p50 ms | p99 ms | errors | server CPU | server CPU ms/req "
        "| client CPU | mean batch | workers (share of requests) | vs Triton | vs bare ORT | vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        t = triton.get((r.model, TWIN[r.endpoint], r.connections))
        vs_t = f"{r.rps / t.rps:.2f}x" if t and t.rps and r.target != TRITON else "-"
        flag = " VOID (client CPU-bound)" if r.void else ""
        base = baseline.get((r.model, r.endpoint, r.connections))
        vs_b = f"{r.rps / (sum(base) / len(base)):.2f}x" if base and r.target == "ee559" else "-"
        vs_bare = f"{r.rps / bare[r.model]:.2f}x" if r.model in bare else "-"
        lines.append(
            f"| {r.target} | {r.model} | {r.endpoint}{flag} | {r.connections} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.errors} | {r.server_cpu:.2f} | {cpu_per_request_ms(r)} | {r.client_cpu:.2f} | "
            f"{_batch(r)} | {r.shares} | "
            f"{vs_t} | {vs_bare} | {vs_b} |"
        )
    return "\n".join(lines)


def batching_table(runs: list[Run], models: list[str]) -> str:
    """The heavier models side by side: per model and connection count, each repeat's req/s, p99
    and mean batch for this service and the Triton baseline ("a / b" over the repeats, in order),
    the ratio of the mean req/s, and the share of requests each of our workers answered."""
    lines = [
        "| model | conns | ee559 req/s | triton-pytriton req/s | ee559 / triton | ee559 p99 ms | triton p99 ms "
        "| ee559 mean batch | triton mean batch | ee559 workers (share of requests) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        for c in sorted({r.connections for r in runs if r.model == m}):
            ours = [r for r in runs if r.model == m and r.connections == c and r.target == "ee559"]
            theirs = [r for r in runs if r.model == m and r.connections == c and r.target == TRITON]

            def each(rs: list[Run], f) -> str:
                return " / ".join(f(r) + (" VOID" if r.void else "") for r in rs) or "-"

            def mean(rs: list[Run]) -> float:
                ok = [r.rps for r in rs if not r.void]
                return sum(ok) / len(ok) if ok else 0.0

            ratio = f"{mean(ours) / mean(theirs):.2f}x" if mean(ours) and mean(theirs) else "-"
            lines.append(
                f"| {m} | {c} | {each(ours, lambda r: f'{r.rps:,.0f}')} | {each(theirs, lambda r: f'{r.rps:,.0f}')} | "
                f"{ratio} | {each(ours, lambda r: f'{r.p99_ms:.1f}')} | {each(theirs, lambda r: f'{r.p99_ms:.1f}')} | "
                f"{each(ours, _batch)} | {each(theirs, _batch)} | {each(ours, lambda r: r.shares)} |"
            )
    return "\n".join(lines)


def report(static: dict[str, float], runs: list[Run], cold: float, rss: dict[str, float], args) -> None:
    print("\n## In-process (one thread)")
    for k, v in static.items():
        print(f"- {k}: {v:,.1f}{'x' if '/' in k and 'calls/s' not in k else ''}")
    print("\n## HTTP (wrk -t1; ratios measured in this run)")
    print(http_table(runs, {args.model: static["bare ORT batch 1 (calls/s)"]}))
    batch_models = [m for m in args.batch_models.split(",") if m]
    if any(r.model in batch_models for r in runs):
        print(f"\n## Heavier models, v2 binary, both servers batching (largest batch {args.max_batch_size})")
        print(batching_table(runs, batch_models))
    print(f"\n- cold start (process start to /readyz 200): {cold:.1f} s")
    print("- resident memory: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items()))
    print(f"\nreproduce: {reproduce(args)}")


if __name__ == "__main__":
    sys.exit(main())
