"""python -m loadtests.variantbench [--device cpu|cuda] [--models lenet,mlp,resnet,unet,autoencoder]
                                  [--precisions fp32,int8,fp16] [--batches 1,64] [--seconds 1]
                                  [--rounds 3] [--threads 1] [--quick] [--json PATH]

The speed of each model's stored variants against its fp32 graph, on one device, side by side in
one process: for each precision the version a server started with EE559_PRECISION=<precision>
would serve (core/store.py select: the newest variant derived from the fp32 version served),
`session.run` with numpy arrays in and out at each batch size, ONNX Runtime with `--threads`
intra-op threads (the service's default is 1). The rounds alternate the precisions, so that other
load on the machine falls on all of them alike; each cell is the median calls/s of its rounds,
with its ratio to fp32's. INT8 is the CPU variant, FP16 the CUDA one: FP16 on a CPU says what it
costs there, not what it is for. Writes the table as JSON (default
runs/bench/variants-<device>.json). Ratios are measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .devicebench import rate

MODELS = ("lenet", "mlp", "resnet", "unet", "autoencoder")
PRECISIONS = ("fp32", "int8", "fp16")
BATCHES = (1, 64)


def versions(name: str, precisions: tuple[str, ...]) -> dict[str, str]:
    """precision -> the tag served for it; a precision with no variant of the served fp32 version
    is left out (select would serve fp32 for it)."""
    from core import store

    fp32 = store.select((name,))[0]
    chosen = {p: store.select((name,), (p,))[0] for p in precisions}
    return {p: tag for p, tag in chosen.items() if p == "fp32" or tag != fp32}


def measure(
    models: tuple[str, ...],
    precisions: tuple[str, ...],
    batches: tuple[int, ...],
    device: str,
    seconds: float,
    rounds: int,
    threads: int,
) -> dict[str, Any]:
    import onnxruntime as ort

    from core import store
    from core.session import make_session

    result: dict[str, Any] = {
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "onnxruntime": ort.__version__,
        "seconds_per_call_rate": seconds,
        "rounds": rounds,
        "cells": [],
        "models": {},
    }
    for name in models:
        tags = versions(name, ("fp32", *(p for p in precisions if p != "fp32")))
        sessions = {}
        for precision, tag in tags.items():
            stored = store.load(tag)
            sessions[precision] = (make_session(stored.onnx_path, device, intra_op_threads=threads), stored.card)
        result["models"][name] = {p: {"version": card.version, "provider": s[1]} for p, (s, card) in sessions.items()}
        for batch in batches:
            card = sessions["fp32"][1]
            x = np.random.default_rng(batch).random((batch, *card.row_shape), dtype=np.float32)
            calls = {p: (lambda s=s, c=c, x=x: s[0].run(None, {c.input.name: x})) for p, (s, c) in sessions.items()}
            rates: dict[str, list[float]] = {p: [] for p in calls}
            for _ in range(rounds):
                for p, fn in calls.items():
                    rates[p].append(rate(fn, seconds, warmup=2))
            median = {p: statistics.median(r) for p, r in rates.items()}
            cell = {
                "model": name,
                "batch": batch,
                "calls_per_s": median,
                "images_per_s": {p: v * batch for p, v in median.items()},
                "over_fp32": {p: v / median["fp32"] for p, v in median.items()},
                "missing": [p for p in precisions if p not in calls],
            }
            result["cells"].append(cell)
            print(row(cell, precisions), flush=True)
    return result


def header(precisions: tuple[str, ...]) -> str:
    cols = " | ".join(f"{p} calls/s (images/s){'' if p == 'fp32' else ', x fp32'}" for p in precisions)
    return f"| model | batch | {cols} |\n|---|---|{'---|' * len(precisions)}"


def row(cell: dict[str, Any], precisions: tuple[str, ...]) -> str:
    cols = []
    for p in precisions:
        if p not in cell["calls_per_s"]:
            cols.append("not stored")
            continue
        text = f"{cell['calls_per_s'][p]:,.1f} ({cell['images_per_s'][p]:,.0f})"
        cols.append(text if p == "fp32" else f"{text}, {cell['over_fp32'][p]:.2f}x")
    return f"| {cell['model']} | {cell['batch']} | {' | '.join(cols)} |"


def main(argv: list[str] | None = None) -> int:
    from core.paths import runs_dir

    p = argparse.ArgumentParser(
        prog="python -m loadtests.variantbench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated; fp32 is always measured")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes, comma-separated")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per precision, cell and round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell (the median is reported)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--quick", action="store_true", help="batch 1, one round of 0.05 s: a check, not figures")
    p.add_argument("--json", type=Path, help="default runs/bench/variants-<device>.json")
    args = p.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    precisions = tuple(dict.fromkeys(("fp32", *(x for x in args.precisions.split(",") if x))))
    unknown = [x for x in precisions if x not in PRECISIONS]
    if unknown:
        p.error(f"--precisions: {', '.join(unknown)[:40]}; accepted: {', '.join(PRECISIONS)}")
    batches = (1,) if args.quick else tuple(int(b) for b in args.batches.split(","))
    seconds, rounds = (0.05, 1) if args.quick else (args.seconds, args.rounds)
    print(f"variants on {args.device}: {', '.join(models)} at batch {batches}, {rounds} x {seconds:g} s per cell")
    print(header(precisions), flush=True)
    try:
        result = measure(models, precisions, batches, args.device, seconds, rounds, args.threads)
    except Exception as exc:  # CUDA missing, a model not exported: said in one line
        print(f"variantbench --device {args.device}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    path = args.json or runs_dir() / "bench" / f"variants-{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.device} ({result['cpu']}), onnxruntime {result['onnxruntime']}, {args.threads} thread(s)")
    print(f"json: {path}")
    print(
        f"reproduce: python -m loadtests.variantbench --device {args.device} --models {','.join(models)} "
        f"--precisions {','.join(precisions)} "
        + ("--quick" if args.quick else f"--batches {args.batches} --seconds {args.seconds:g} --rounds {args.rounds}")
        + f" --threads {args.threads}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
