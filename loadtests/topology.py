"""python -m loadtests.topology [--model resnet] [--provider auto|cuda|cpu] [--workers 4]
                              [--connections 64] [--duration 10] [--client-procs 2] [--json PATH]

Where should batches form on a GPU? Two topologies of the same service, served one after the other
and loaded the same way (closed-loop HTTP clients sending the model's held-out images to
POST /classify, keep-alive connections):
  - ee559: EE559_BATCHER=ee559, in-process batching in every HTTP worker (one ONNX Runtime session
    and one copy of the model per worker; batches split between workers);
  - bentoml: EE559_BATCHER=bentoml, the HTTP workers feeding one batching service
    (`bentoml.depends`, one session), where the rows of all workers meet.
Reports for each: req/s, p50 and p99 latency, errors, the mean batch size (the servers' own
`ee559_inference_batch_size` histogram, its sum over its count across the load) and the GPU memory
in use while serving (the servers' `ee559_gpu_memory_used_bytes`; n/a without a GPU), with the
ratio bentoml / ee559. The load generator is Python (asyncio, raw HTTP/1.1), in --client-procs
processes; a client process busy over 90% of a core measures itself and its run is flagged VOID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.servers import free_port, prometheus_samples, stop, wait_http

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ("ee559", "bentoml")
CLIENT_BUSY = 0.9


@dataclass
class Result:
    topology: str
    model: str
    provider: str  # what the server's models really run on (ee559_model_info)
    workers: int
    connections: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None
    gpu_memory_used_bytes: float | None
    client_cpu: float  # the busiest client process, cores

    @property
    def void(self) -> bool:
        return self.client_cpu >= CLIENT_BUSY


# --- the load generator -------------------------------------------------------------------------


async def _connection(host: str, port: int, request: bytes, until: float, latencies: list[float]) -> int:
    """One keep-alive connection sending `request` back to back until `until`; returns the
    errors (non-200 answers, broken connections)."""
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if length is None:  # the routes measured answer with a length; anything else is broken
                raise ConnectionError(f"answer without Content-Length: {head[:200]!r}")
            await reader.readexactly(int(length.group(1)))
            latencies.append(time.perf_counter() - t0)
            errors += status != 200
    except (OSError, asyncio.IncompleteReadError, ConnectionError):
        errors += 1
    finally:
        writer.close()
    return errors


def _client(args: tuple[str, int, bytes, int, float]) -> tuple[list[float], int, float]:
    """A client process: `connections` connections for `duration` s. Returns latencies (s),
    errors and the CPU this process used per second of wall time."""
    host, port, request, connections, duration = args

    async def main() -> tuple[list[float], int]:
        latencies: list[float] = []
        until = time.perf_counter() + duration
        errors = await asyncio.gather(*(_connection(host, port, request, until, latencies) for _ in range(connections)))
        return latencies, sum(errors)

    cpu0, t0 = time.process_time(), time.perf_counter()
    latencies, errors = asyncio.run(main())
    return latencies, errors, (time.process_time() - cpu0) / (time.perf_counter() - t0)


def http_request(path: str, body: bytes, headers: dict[str, str], host: str = "127.0.0.1") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def load(port: int, request: bytes, connections: int, duration: float, procs: int) -> dict[str, Any]:
    """Closed-loop load from `procs` processes sharing `connections`; counts, rate and percentiles."""
    shares = [connections // procs + (i < connections % procs) for i in range(procs)]
    jobs = [("127.0.0.1", port, request, n, duration) for n in shares if n]
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_client, jobs)
    wall = time.perf_counter() - t0
    latencies = np.array([x for p in parts for x in p[0]]) * 1e3
    done = len(latencies)
    return {
        "requests": done,
        "errors": sum(p[1] for p in parts),
        "seconds": duration,
        "rps": done / duration if duration else 0.0,
        "p50_ms": float(np.percentile(latencies, 50)) if done else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if done else float("nan"),
        "client_cpu": max(p[2] for p in parts),
        "wall_s": wall,
    }


# --- the servers --------------------------------------------------------------------------------


def serve(env_extra: dict[str, str], log: Path, root: Path = ROOT) -> tuple[subprocess.Popen, int]:
    """`bentoml serve` of this checkout with `env_extra`, ready (/readyz 200)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service.service:EE559", "--host", "127.0.0.1", "--port", str(port)],
        cwd=root,
        env={**os.environ, **env_extra},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=300)
    except BaseException:
        stop(proc)
        raise
    return proc, port


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of the server's /metrics: (name, labels, value)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return prometheus_samples(r.read().decode())


def metric(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float | None:
    """The sum of `name`'s samples whose labels include `labels`; None when there is none."""
    found = [v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())]
    return sum(found) if found else None


def providers(samples: list[tuple[str, dict[str, str], float]], model: str) -> set[str]:
    return {ls["provider"] for n, ls, v in samples if n == "ee559_model_info" and ls.get("model") == model and v}


# --- one topology, then both --------------------------------------------------------------------


def body_for(model: str) -> bytes:
    """POST /classify with the card's first held-out image (JSON), from the model store."""
    from core import store

    card = store.load(store.discover((model,))[model]).card
    x = np.asarray(card.examples["inputs"][0], dtype=np.float32)
    return json.dumps({"model": model, "image": x.tolist()}).encode()


def measure(
    topology: str,
    model: str,
    provider: str,
    workers: int,
    connections: int,
    duration: float,
    procs: int,
    log: Path,
) -> Result:
    env = {
        "EE559_MODELS": model,
        "EE559_BATCHER": topology,
        "EE559_PROVIDER": provider,
        "EE559_WORKERS": str(workers),
        "EE559_AUTH": "off",
    }
    request = http_request("/classify", body_for(model), {"Content-Type": "application/json"})
    proc, port = serve(env, log)
    try:
        load(port, request, connections, min(duration, 2.0), procs)  # warm-up: connections, allocators
        before = scrape(port)
        run = load(port, request, connections, duration, procs)
        after = scrape(port)
    finally:
        stop(proc)
    batches = {
        k: (metric(after, f"ee559_inference_batch_size_{k}", model=model) or 0.0)
        - (metric(before, f"ee559_inference_batch_size_{k}", model=model) or 0.0)
        for k in ("sum", "count")
    }
    used = providers(after, model)
    return Result(
        topology=topology,
        model=model,
        provider=",".join(sorted(used)) or "unknown",
        workers=workers,
        connections=connections,
        seconds=run["seconds"],
        requests=run["requests"],
        errors=run["errors"],
        rps=run["rps"],
        p50_ms=run["p50_ms"],
        p99_ms=run["p99_ms"],
        mean_batch=batches["sum"] / batches["count"] if batches["count"] else None,
        gpu_memory_used_bytes=metric(after, "ee559_gpu_memory_used_bytes"),
        client_cpu=run["client_cpu"],
    )


def table(results: list[Result]) -> str:
    rows = [
        "| topology | model | provider | workers | conns | req/s | p50 ms | p99 ms | errors | mean batch | GPU memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        gpu = f"{r.gpu_memory_used_bytes / 2**20:,.0f} MiB" if r.gpu_memory_used_bytes is not None else "n/a"
        batch = f"{r.mean_batch:.2f}" if r.mean_batch is not None else "n/a"
        rows.append(
            f"| {r.topology}{' VOID (client CPU-bound)' if r.void else ''} | {r.model} | {r.provider} | "
            f"{r.workers} | {r.connections} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | "
            f"{batch} | {gpu} |"
        )
    by = {r.topology: r for r in results}
    if set(TOPOLOGIES) <= set(by) and by["ee559"].rps:
        rows.append(f"\nbentoml / ee559: {by['bentoml'].rps / by['ee559'].rps:.2f}x req/s")
    return "\n".join(rows)


def compare(
    model: str, provider: str, workers: int, connections: int, duration: float, procs: int, logs: Path
) -> list[Result]:
    """Both topologies, one after the other, loaded the same way."""
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for topology in TOPOLOGIES:
        r = measure(topology, model, provider, workers, connections, duration, procs, logs / f"serve-{topology}.log")
        print(table([r]).splitlines()[-1], flush=True)
        results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.topology", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet", help="an image classifier (POST /classify)")
    p.add_argument("--provider", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--workers", type=int, default=4, help="HTTP workers (EE559_WORKERS) in both topologies")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per topology")
    p.add_argument("--client-procs", type=int, default=2, help="load-generating processes")
    p.add_argument("--json", type=Path, help="default runs/bench/topology.json")
    args = p.parse_args(argv)
    os.environ.setdefault("BENTOML_HOME", str(ROOT / "runs" / "bentoml"))
    from core.paths import runs_dir

    out = args.json or runs_dir() / "bench" / "topology.json"
    print(
        f"{args.model} on {args.provider}, {args.workers} workers, {args.connections} connections, {args.duration:g} s"
    )
    print("\n".join(table([]).splitlines()[:2]), flush=True)
    results = compare(
        args.model, args.provider, args.workers, args.connections, args.duration, args.client_procs, out.parent
    )
    print("\n" + table(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) | {"void": r.void} for r in results], indent=2) + "\n")
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
