"""python -m loadtests.gpu_check --device cuda|cpu [--out DIR] [--runs DIR] [--quick] [--budget 420]
(`make gpu-check`, `make gpu-check DEVICE=cpu`)

The whole GPU proof in one command, for the few minutes a GPU machine is at hand (docs/gpu.md says
how to get this checkout and what it needs there). In order, each step timed and recorded:
  1. environment: Python, torch (and whether it sees CUDA), ONNX Runtime and its providers, NVML;
  2. export: `python -m export all --provider <device> --variants none`, the parity gates checked
     on that provider;
  3. serve: `bentoml serve` with EE559_PROVIDER=<device>, every model: /readyz 200 (the readiness
     check), every task route called with held-out inputs and its answer checked (the load test's
     own checks, loadtests/tasks.py), /v2/models/{m}/infer for every tensor model, every model on
     the provider asked for (ee559_model_info), the GPU series on /metrics where NVML sees a GPU;
  4. bench: `python -m loadtests.bench --device <device>` (ORT IO binding / numpy I/O / PyTorch);
  5. topology: `python -m loadtests.topology` (EE559_BATCHER=ee559 against =bentoml);
  6. fp16: the FP16 variants' gates (`python -m export.variants all --precisions fp16 --provider
     <device>`), then their speed against FP32 (`loadtests.variantbench`).
Writes DIR/gpu-check.json (every step's status, timings and results), DIR/gpu-check.md (a short
table, then the bench's and the topology's) and DIR/logs.tar.gz (servers', exporter's output).
With --device cpu the same steps run on the CPU provider: the dry run (tests/loadtests/
test_gpu_check.py). A step that would start past --budget seconds is skipped and says so. Exits 1
if any step failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
ROUTES = ("/classify", "/explain", "/segment", "/denoise", "/embed", "/reconstruct", "/generate", "/generate_text")
FP16_MODELS = ("lenet", "resnet", "unet")
OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass
class Step:
    name: str
    status: str = OK
    seconds: float = 0.0
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Check:
    """The run: its settings, the steps done, the logs kept, the deadline."""

    def __init__(self, device: str, out: Path, runs: Path, quick: bool, budget: float) -> None:
        self.device, self.out, self.runs, self.quick = device, out, runs, quick
        self.deadline = time.monotonic() + budget
        self.steps: list[Step] = []
        # Logs and the steps' own files, packed into out/logs.tar.gz at the end: `out` holds three
        # files (a GPU machine's $OUT gives back at most 8).
        self.logs = Path(tempfile.mkdtemp(prefix="ee559-gpu-check-"))
        out.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "EE559_RUNS": str(runs),
            "BENTOML_HOME": str(runs / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONUNBUFFERED": "1",
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, fn: Callable[[Check, Step], None], needs_s: float) -> Step:
        step = Step(name)
        if self.left() < needs_s:
            step.status, step.summary = SKIPPED, f"out of time ({self.left():.0f} s left, needs about {needs_s:.0f} s)"
        else:
            t0 = time.monotonic()
            try:
                fn(self, step)
            except Exception as exc:  # a step's failure is recorded; the next steps still run
                step.status, step.summary = FAILED, f"{type(exc).__name__}: {exc}"
                step.details["traceback"] = traceback.format_exc()
            step.seconds = round(time.monotonic() - t0, 1)
        print(f"[gpu-check] {name}: {step.status} ({step.seconds:g} s) {step.summary}", flush=True)
        self.steps.append(step)
        return step

    def command(self, name: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """A child process of this checkout with the run's environment; its output kept as a log."""
        r = subprocess.run(
            argv,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=max(10.0, min(timeout, self.left())),
        )
        (self.logs / f"{name}.log").write_text(f"$ {' '.join(argv)}\n{r.stdout}\n{r.stderr}")
        return r


# --- 1. environment -----------------------------------------------------------------------------


def environment(check: Check, step: Step) -> None:
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    import onnxruntime as ort

    info["onnxruntime"] = ort.__version__
    info["ort_providers"] = ort.get_available_providers()
    info["nvml"] = nvml_devices()
    try:
        import bentoml

        info["bentoml"] = bentoml.__version__
    except ImportError:
        info["bentoml"] = None
    step.details = info
    step.summary = (
        f"Python {info['python']}, torch {info['torch']} (CUDA {info.get('torch_cuda')}), "
        f"onnxruntime {info['onnxruntime']}, bentoml {info['bentoml']}, GPU {info.get('gpu') or 'none'}"
    )
    missing = [k for k in ("torch", "bentoml") if not info[k]]
    if check.device == "cuda":
        if not info.get("torch_cuda"):
            missing.append("CUDA in torch")
        if PROVIDER_NAMES["cuda"] not in info["ort_providers"]:
            missing.append("onnxruntime's CUDA provider (onnxruntime-gpu)")
    if missing:
        step.status, step.summary = FAILED, f"missing: {', '.join(missing)}; " + step.summary


def nvml_devices() -> list[dict[str, Any]] | str:
    """What NVML sees (index, name, memory), or why it cannot be read."""
    try:
        import pynvml

        pynvml.nvmlInit()
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            found.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_used_bytes": mem.used,
                    "memory_total_bytes": mem.total,
                }
            )
        return found
    except Exception as exc:  # ImportError, NVMLError: reported, not fatal
        return f"NVML not available: {exc}"


# --- 2. export with the parity gates on the provider --------------------------------------------

# What `python -m export` prints per graph (export/__main__.py), the provider where it names one.
GATE = re.compile(r"^(\w+): parity OK (?:on (\w+) )?at batch sizes ([\d, ]+) \(max abs error (\S+) <= (\S+)\)", re.M)


def export(check: Check, step: Step) -> None:
    # the fp32 gates here; FP16 has its own step, INT8 is for CPUs
    argv = [sys.executable, "-m", "export", "all", "--provider", check.device, "--variants", "none"]
    r = check.command("export", argv, 420)
    wanted = PROVIDER_NAMES[check.device]
    gates = [
        {"graph": g, "provider": p or None, "batches": b, "max_abs_error": float(e), "tolerance": float(t)}
        for g, p, b, e, t in GATE.findall(r.stdout)
    ]
    step.details = {"returncode": r.returncode, "gates": gates}
    failed = re.findall(r"parity gate FAILED: (.*)", r.stderr)
    elsewhere = [f"{g['graph']} ran on {g['provider']}" for g in gates if g["provider"] not in (None, wanted)]
    if r.returncode != 0:
        step.status = FAILED
        step.summary = failed[0] if failed else f"exit {r.returncode}: {(r.stderr or r.stdout)[-300:]}"
    elif not gates or elsewhere:
        step.status = FAILED
        step.summary = "; ".join(elsewhere) or "the exporter printed no parity gate"
    else:
        step.summary = f"{len(gates)} graphs passed their parity gate on {wanted}"


# --- 3. serve: readiness, every task route, v2, providers, GPU metrics -------------------------


class _Answer:
    """A requests.Response seen through Locust's catch_response interface (loadtests/tasks.py)."""

    def __init__(self, response: Any) -> None:
        self.response, self.status_code, self.text = response, response.status_code, response.text
        self.problem: str | None = None
        self.passed = False

    def json(self) -> Any:
        return self.response.json()

    def failure(self, message: Any) -> None:
        self.problem = str(message)

    def success(self) -> None:
        self.passed = True

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Client:
    def __init__(self, base: str) -> None:
        import requests

        self.base, self.session = base, requests.Session()
        self.answers: list[tuple[str, str, _Answer]] = []  # (route, request name, answer)

    def post(self, path: str, name: str | None = None, catch_response: bool = True, **kw: Any) -> _Answer:
        answer = _Answer(self.session.post(self.base + path, timeout=120, **kw))
        self.answers.append((path, name or path, answer))
        return answer


def call_every_task(url: str) -> tuple[list[dict[str, Any]], set[str]]:
    """Each served model's every task, once, through the load test's own task functions and checks."""
    from loadtests.tasks import TASK_LOADS, served_cards

    client = _Client(url)
    user = type("User", (), {"client": client})()
    for card in served_cards(url):
        for task in card.tasks:
            for fn in TASK_LOADS[task](card):
                fn(user)
    calls, providers = [], set()
    for route, name, answer in client.answers:
        ok = answer.passed and answer.problem is None
        calls.append(
            {"route": route, "request": name, "status": answer.status_code, "ok": ok, "problem": answer.problem}
        )
        if ok and answer.response.headers.get("content-type", "").startswith("application/json"):
            provider = answer.json().get("provider")
            if provider:
                providers.add(provider)
    return calls, providers


def call_v2(url: str) -> list[dict[str, Any]]:
    """POST /v2/models/{m}/infer for every tensor model: two rows (held-out inputs where the card has
    them, else Gaussian noise, e.g. latents), every output named by the card, batch 2."""
    import requests

    from loadtests.tasks import examples, served_cards

    results = []
    for card in served_cards(url):
        if card.is_text:
            continue  # stateful: /generate_text
        held_out = examples(card)[0]
        x = held_out[:2] if len(held_out) >= 2 else np.random.default_rng(0).standard_normal((2, *card.row_shape))
        x = np.asarray(x, dtype=np.float32)
        body = {
            "inputs": [
                {"name": card.input.name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
            ]
        }
        r = requests.post(f"{url}/v2/models/{card.name}/infer", json=body, timeout=120)
        problem = None
        if r.status_code != 200:
            problem = f"HTTP {r.status_code}: {r.text[:200]}"
        else:
            outs = {o["name"]: o for o in r.json()["outputs"]}
            if sorted(outs) != sorted(card.output_names) or any(o["shape"][0] != 2 for o in outs.values()):
                problem = f"outputs {sorted(outs)} (card: {card.output_names}) or their batch is not 2"
            elif not all(np.isfinite(np.asarray(o["data"], dtype=np.float64)).all() for o in outs.values()):
                problem = "non-finite outputs"
        results.append({"model": card.name, "status": r.status_code, "ok": problem is None, "problem": problem})
    return results


def serve(check: Check, step: Step) -> None:
    import requests

    from loadtests import topology

    env = {"EE559_PROVIDER": check.device, "EE559_WORKERS": "2", "EE559_AUTH": "off"}
    env |= {k: check.env[k] for k in ("EE559_RUNS", "BENTOML_HOME", "BENTOML_DO_NOT_TRACK")}
    t0 = time.monotonic()
    proc, port = topology.serve(env, check.logs / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        ready_s = time.monotonic() - t0
        readyz = requests.get(f"{url}/readyz", timeout=10).status_code
        calls, providers = call_every_task(url)
        v2 = call_v2(url)
        samples = topology.scrape(port)
    finally:
        topology.stop(proc)
    info = {
        (ls["model"], ls["provider"]) for name, ls, v in samples if name == "ee559_model_info" and v and "model" in ls
    }
    gpu_series = {f"{name}{{gpu={ls.get('gpu')}}}": v for name, ls, v in samples if name.startswith("ee559_gpu_")}
    routes = {c["route"] for c in calls}
    wanted = PROVIDER_NAMES[check.device]
    problems = [f"/readyz answered {readyz}"] if readyz != 200 else []
    problems += [f"{c['request']}: {c['problem'] or 'HTTP ' + str(c['status'])}" for c in calls if not c["ok"]]
    problems += [f"/v2/models/{r['model']}/infer: {r['problem']}" for r in v2 if not r["ok"]]
    problems += [f"route {r} not called (no served model has its task)" for r in ROUTES if r not in routes]
    problems += [f"{m} runs on {p}, not {wanted}" for m, p in sorted(info) if p != wanted]
    problems += [f"an answer says provider {p}" for p in providers if p != wanted]
    if not info:
        problems.append("no ee559_model_info on /metrics")
    nvml = nvml_devices()
    if isinstance(nvml, list) and nvml and not gpu_series:
        problems.append("NVML sees a GPU but /metrics has no ee559_gpu_ series")
    if not (isinstance(nvml, list) and nvml) and gpu_series:
        problems.append("ee559_gpu_ series on /metrics where NVML sees no GPU")
    step.details = {
        "ready_s": round(ready_s, 1),
        "readyz": readyz,
        "routes": sorted(routes),
        "calls": calls,
        "v2": v2,
        "providers": sorted({p for _, p in info} | providers),
        "gpu_metrics": gpu_series,
    }
    ok_calls = sum(c["ok"] for c in calls) + sum(r["ok"] for r in v2)
    step.summary = (
        f"ready in {ready_s:.0f} s; {ok_calls}/{len(calls) + len(v2)} calls answered and checked "
        f"({len(routes)} task routes, {len(v2)} v2 models); models on {', '.join(step.details['providers'])}; "
        f"{len(gpu_series)} GPU series"
    )
    if problems:
        step.status, step.summary = FAILED, "; ".join(problems[:6]) + f" ({len(problems)} problems); " + step.summary


# --- 4. the device micro-benchmark, 5. the topologies -------------------------------------------


def bench(check: Check, step: Step) -> None:
    out = check.logs / "device-bench.json"
    argv = [sys.executable, "-m", "loadtests.bench", "--device", check.device, "--json", str(out)]
    argv += ["--quick"] if check.quick else ["--seconds", "0.5"]
    r = check.command("bench", argv, 240)
    if r.returncode != 0:
        step.status, step.summary = FAILED, (r.stderr or r.stdout).strip()[-300:]
        return
    result = json.loads(out.read_text())
    step.details = result
    step.details["table"] = r.stdout[r.stdout.index("| model |") :].split("\n\n")[0]
    worst = max(max(c["max_abs_diff"].values()) for c in result["cells"])
    ratios = [c["iobinding_over_pytorch"] for c in result["cells"]]
    step.summary = (
        f"{len(result['cells'])} cells; ORT IO binding / PyTorch {min(ratios):.2f}x to {max(ratios):.2f}x; "
        f"largest difference from PyTorch {worst:.1e}"
    )


def topologies(check: Check, step: Step) -> None:
    out = check.logs / "topology.json"
    quick = ["--workers", "2", "--connections", "8", "--duration", "2", "--client-procs", "1"]
    full = ["--workers", "4", "--connections", "64", "--duration", "10", "--client-procs", "4"]
    argv = [sys.executable, "-m", "loadtests.topology", "--model", "resnet", "--provider", check.device]
    r = check.command("topology", [*argv, *(quick if check.quick else full), "--json", str(out)], 300)
    if r.returncode != 0:
        step.status, step.summary = FAILED, (r.stderr or r.stdout).strip()[-300:]
        return
    results = json.loads(out.read_text())
    step.details = {"results": results, "table": r.stdout[r.stdout.rindex("| topology |") :].split("\njson:")[0]}
    by = {x["topology"]: x for x in results}
    step.summary = "; ".join(
        f"{t} {x['rps']:,.0f} req/s, p99 {x['p99_ms']:.1f} ms, mean batch "
        + (f"{x['mean_batch']:.1f}" if x["mean_batch"] is not None else "n/a")
        for t, x in by.items()
    )
    bad = [f"{t}: {x['errors']} errors" for t, x in by.items() if x["errors"]]
    bad += [f"{t}: provider {x['provider']}" for t, x in by.items() if x["provider"] != PROVIDER_NAMES[check.device]]
    if bad:
        step.status, step.summary = FAILED, "; ".join(bad) + "; " + step.summary


# --- 6. the FP16 variants' gates ----------------------------------------------------------------


def fp16(check: Check, step: Step) -> None:
    """The FP16 variants' gates (python -m export.variants), then their speed against FP32 on the
    device (python -m loadtests.variantbench), where the project has them."""
    argv = [sys.executable, "-m", "export.variants", "all", "--precisions", "fp16", "--provider", check.device]
    r = check.command("fp16", argv, 300)
    saved = re.findall(r"^(\w+) fp16: saved (\S+)", r.stdout, re.M)
    step.details.update({"returncode": r.returncode, "saved": [tag for _, tag in saved], "output": r.stdout[-3000:]})
    if r.returncode != 0:
        step.status = FAILED
        step.summary = f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}"
        return
    step.summary = f"FP16 gates passed and stored: {', '.join(m for m, _ in saved) or 'none'}"
    if (ROOT / "loadtests" / "variantbench.py").exists():
        out = check.logs / "variants-bench.json"
        argv = [sys.executable, "-m", "loadtests.variantbench", "--device", check.device, "--precisions", "fp16"]
        argv += ["--models", ",".join(FP16_MODELS), "--json", str(out)] + (["--quick"] if check.quick else [])
        b = check.command("variants-bench", argv, 180)
        if b.returncode != 0:
            step.status, step.summary = FAILED, f"variantbench: {(b.stderr or b.stdout).strip()[-300:]}"
            return
        step.details["table"] = b.stdout[b.stdout.index("|") :].strip() if "|" in b.stdout else b.stdout[-2000:]
        step.summary += "; FP16 against FP32 speed measured (table below)"


# --- the report ---------------------------------------------------------------------------------

# (name, function, seconds it needs at least to be worth starting)
STEPS: tuple[tuple[str, Callable[[Check, Step], None], float], ...] = (
    ("environment", environment, 0),
    ("export", export, 60),
    ("serve", serve, 60),
    ("bench", bench, 30),
    ("topology", topologies, 60),
    ("fp16", fp16, 30),
)


def markdown(check: Check, total_s: float) -> str:
    env = check.steps[0].details if check.steps and check.steps[0].name == "environment" else {}
    lines = [
        f"# make gpu-check --device {check.device}" + (" (quick)" if check.quick else ""),
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; GPU: {env.get('gpu') or 'none'}; "
        f"Python {env.get('python')}, torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
        f"bentoml {env.get('bentoml')}; {total_s:.0f} s in all.",
        "",
        "| step | status | seconds | summary |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s.name} | {s.status} | {s.seconds:g} | {s.summary.replace('|', '/')} |" for s in check.steps]
    for s in check.steps:
        if s.status == OK and "table" in s.details:
            lines += ["", f"## {s.name}", "", s.details["table"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, help="where the results go (default runs/gpu-check)")
    p.add_argument(
        "--runs", type=Path, help="runs directory with checkpoints and the model store (default $EE559_RUNS)"
    )
    p.add_argument("--quick", action="store_true", help="short bench and topology runs: a check, not figures")
    p.add_argument("--budget", type=float, default=420.0, help="seconds; a step that cannot fit is skipped")
    p.add_argument("--steps", default=",".join(n for n, _, _ in STEPS), help="steps to run, comma-separated")
    args = p.parse_args(argv)
    from core.paths import runs_dir

    runs = (args.runs or runs_dir()).resolve()
    out = (args.out or runs / "gpu-check").resolve()
    check = Check(args.device, out, runs, args.quick, args.budget)
    wanted = set(args.steps.split(","))
    t0 = time.monotonic()
    for name, fn, needs in STEPS:
        if name in wanted:
            check.run(name, fn, needs)
    total = time.monotonic() - t0
    report = {
        "device": args.device,
        "quick": args.quick,
        "seconds": round(total, 1),
        "ok": all(s.status == OK for s in check.steps),
        "steps": [s.__dict__ for s in check.steps],
    }
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu-check.md").write_text(markdown(check, total))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(check.logs, arcname="logs")
    (out / "logs.tar.gz").write_bytes(buffer.getvalue())
    shutil.rmtree(check.logs, ignore_errors=True)
    print(markdown(check, total))
    print(f"[gpu-check] {out / 'gpu-check.json'}, {out / 'gpu-check.md'}, {out / 'logs.tar.gz'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
