"""python -m loadtests.bench --device cuda|cpu [--models lenet,resnet,unet] [--batches 1,8,64,256]
                            [--seconds 1] [--threads 1] [--quick] [--json PATH]

The device micro-benchmark: for each image model (the newest version in the model store) and batch
size, three ways of running the same graph on one device, measured side by side in one process:
  - ORT IO binding: the input bound once to a buffer on the device, each batch copied into it and
    the outputs fetched to the host once per batch (what the serving engine does on CUDA);
  - ORT numpy I/O: `session.run` with numpy arrays in and out (ORT copies on every call);
  - PyTorch: the module of the checkpoint the graph was exported from, on the same device, each
    batch copied to it and its outputs back to the host.
Every timed call includes the host -> device copy of its batch and the device -> host copy of its
outputs, so the three answer the same question. Each cell prints calls/s, images/s and the ratio
ORT IO binding / PyTorch, and checks the three agree (max abs difference to PyTorch's outputs).
CUDA runs in strict float32 on both sides (ORT's use_tf32=0, PyTorch's TF32 switched off). On the
CPU the same steps run with the CPU provider (IO binding works there too): that is the dry run of
`make gpu-check`. Writes the table as JSON (default runs/bench/device-<device>.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("lenet", "resnet", "unet")
BATCHES = (1, 8, 64, 256)
WAYS = ("ort_iobinding", "ort_numpy", "pytorch")


@dataclass
class Cell:
    model: str
    version: str
    batch: int
    calls_per_s: dict[str, float] = field(default_factory=dict)  # way -> calls/s
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # ORT way -> against PyTorch's outputs

    @property
    def images_per_s(self) -> dict[str, float]:
        return {way: rate * self.batch for way, rate in self.calls_per_s.items()}

    @property
    def ratio(self) -> float:
        """ORT with IO binding over PyTorch, calls/s (above 1: ORT is faster)."""
        return self.calls_per_s["ort_iobinding"] / self.calls_per_s["pytorch"]


def rate(fn: Callable[[], Any], seconds: float, warmup: int) -> float:
    """Calls per second of `fn` over at least `seconds` (and at least one call), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n / elapsed


class Ways:
    """One model on one device, ready to run a batch each of the three ways; `x` is the host batch."""

    def __init__(self, name: str, device: str, threads: int) -> None:
        import torch

        from core import store
        from core.paths import runs_dir
        from core.session import CUDA, make_session
        from training.registry import REGISTRY
        from training.train import checkpoint_of, load_checkpoint

        self.served = store.load(store.discover((name,))[name])
        self.card = self.served.card
        self.session, provider, _ = make_session(self.served.onnx_path, device, intra_op_threads=threads)
        if device == "cuda" and provider != CUDA:  # make_session raises first; kept as the contract
            raise RuntimeError(f"{name}: the session runs on {provider}, not CUDA")
        self.provider = provider
        self.ort_device = "cuda" if device == "cuda" else "cpu"
        self.torch_device = torch.device(self.ort_device)
        model, _ = load_checkpoint(checkpoint_of(self.card, runs_dir()), REGISTRY[name])
        self.module = model.to(self.torch_device)
        self.graph_fn = getattr(self.module, REGISTRY[name].export.method)  # what the ONNX graph computes
        self.feed = self.card.input.name
        self.outputs = [o.name for o in self.card.outputs]

    def sample(self, batch: int) -> np.ndarray:
        return np.random.default_rng(batch).random((batch, *self.card.row_shape), dtype=np.float32)

    def iobinding(self, x: np.ndarray) -> Callable[[], list[np.ndarray]]:
        import onnxruntime as ort

        buffer = ort.OrtValue.ortvalue_from_numpy(x, self.ort_device, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.feed, buffer)  # bound once
        for name in self.outputs:
            binding.bind_output(name, self.ort_device)

        def call() -> list[np.ndarray]:
            buffer.update_inplace(x)  # this batch's data, copied to the device
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()  # every output, fetched once

        return call

    def numpy(self, x: np.ndarray) -> Callable[[], list[np.ndarray]]:
        return lambda: self.session.run(self.outputs, {self.feed: x})

    def pytorch(self, x: np.ndarray) -> Callable[[], list[np.ndarray]]:
        import torch

        def call() -> list[np.ndarray]:
            with torch.inference_mode():
                out = self.graph_fn(torch.from_numpy(x).to(self.torch_device))
            outs = out if isinstance(out, tuple | list) else (out,)
            return [o.cpu().numpy() for o in outs]  # .cpu() waits for the device

        return call


def measure(
    models: tuple[str, ...], batches: tuple[int, ...], device: str, seconds: float, threads: int, warmup: int = 3
) -> tuple[list[Cell], dict[str, Any]]:
    """Every (model, batch) cell, and what ran them (versions, provider, libraries)."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: PyTorch sees no CUDA device")
        torch.backends.cudnn.allow_tf32 = False  # strict float32, as ORT's use_tf32=0
        torch.backends.cuda.matmul.allow_tf32 = False
    cells: list[Cell] = []
    env: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "seconds_per_cell": seconds,
        "models": {},
    }
    for name in models:
        ways = Ways(name, device, threads)
        env["models"][name] = {"version": ways.card.version, "provider": ways.provider}
        for batch in batches:
            x = ways.sample(batch)
            calls = {"ort_iobinding": ways.iobinding(x), "ort_numpy": ways.numpy(x), "pytorch": ways.pytorch(x)}
            reference = calls["pytorch"]()
            cell = Cell(name, ways.card.version, batch)
            for way, fn in calls.items():
                if way != "pytorch":
                    cell.max_abs_diff[way] = max(float(np.abs(a - b).max()) for a, b in zip(fn(), reference))
                cell.calls_per_s[way] = rate(fn, seconds, warmup)
            cells.append(cell)
            print(_row(cell), flush=True)
    return cells, env


HEADER = (
    "| model | batch | ORT IO binding calls/s (images/s) | ORT numpy calls/s (images/s) | "
    "PyTorch calls/s (images/s) | IO binding / PyTorch | max abs diff (binding, numpy) |\n"
    "|---|---|---|---|---|---|---|"
)


def _row(c: Cell) -> str:
    ips = c.images_per_s
    cols = " | ".join(f"{c.calls_per_s[w]:,.1f} ({ips[w]:,.0f})" for w in WAYS)
    diffs = f"{c.max_abs_diff['ort_iobinding']:.1e}, {c.max_abs_diff['ort_numpy']:.1e}"
    return f"| {c.model} | {c.batch} | {cols} | {c.ratio:.2f}x | {diffs} |"


def table(cells: list[Cell]) -> str:
    return "\n".join([HEADER, *(_row(c) for c in cells)])


def to_json(cells: list[Cell], env: dict[str, Any]) -> dict[str, Any]:
    return {
        **env,
        "cells": [{**asdict(c), "images_per_s": c.images_per_s, "iobinding_over_pytorch": c.ratio} for c in cells],
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device micro-benchmark (--device)")
    g.add_argument("--models", default=",".join(MODELS), help="image models, comma-separated")
    g.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes, comma-separated")
    g.add_argument("--seconds", type=float, default=1.0, help="timed seconds per cell and way")
    g.add_argument("--threads", type=int, default=1, help="CPU threads for ORT (intra-op) and PyTorch")
    g.add_argument("--quick", action="store_true", help="batches 1 and 8, 0.05 s per cell: a check, not figures")
    g.add_argument("--json", type=Path, help="where to write the results (default runs/bench/device-<device>.json)")


def run(args: argparse.Namespace) -> int:
    """`python -m loadtests.bench --device ...` (loadtests/bench.py hands over here)."""
    from core.paths import runs_dir

    models = tuple(m for m in args.models.split(",") if m)
    batches = (1, 8) if args.quick else tuple(int(b) for b in args.batches.split(","))
    seconds, warmup = (0.05, 1) if args.quick else (args.seconds, 3)
    print(f"device micro-benchmark on {args.device}: {', '.join(models)} at batch {batches}, {seconds:g} s per cell")
    print(HEADER, flush=True)
    try:
        cells, env = measure(models, batches, args.device, seconds, args.threads, warmup)
    except Exception as exc:  # CUDA missing, a model not exported: said in one line
        print(f"bench --device {args.device}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    path = args.json or runs_dir() / "bench" / f"device-{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(cells, env), indent=2) + "\n")
    print(
        f"\n{env['device']}{' (' + env['gpu'] + ')' if env['gpu'] else ''}, onnxruntime {env['onnxruntime']}, "
        f"torch {env['torch']}, {args.threads} CPU thread(s); every call includes the host<->device copies"
    )
    print(f"json: {path}")
    print(
        f"reproduce: python -m loadtests.bench --device {args.device} --models {','.join(models)} "
        + ("--quick" if args.quick else f"--batches {args.batches} --seconds {args.seconds:g}")
        + f" --threads {args.threads}"
    )
    return 0
