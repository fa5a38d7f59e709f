"""python -m training.stepbench [MODEL ...] [--steps N] [--rounds R] [--threads T]

The time of one training step of each model in fp32 and in bf16 mixed precision (training/
runtime.py), side by side in one run: the same model, batch and optimiser, the two precisions'
rounds interleaved so that both see the same machine; prints a markdown table with the ratio.
A step is train_step (training/train.py) on the preset's batch size, without augmentation."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import registry
from .data import load_dataset
from .runtime import DEFAULT_SEED, native_bf16, seed_everything
from .train import train_step


def step_times(name: str, steps: int, rounds: int, device: torch.device, data: dict) -> dict[str, float]:
    """Median over `rounds` of the mean milliseconds per step of `name`, per precision."""
    entry = registry.get(name)
    tc = entry.presets["full"]
    if entry.dataset not in data:
        data[entry.dataset] = load_dataset(entry.dataset, DEFAULT_SEED)
    splits = data[entry.dataset]
    x = torch.from_numpy(splits.train.x[: tc.batch_size]).to(device)
    y = torch.from_numpy(splits.train.y[: tc.batch_size]).to(device)
    runs: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {}
    for precision in ("fp32", "bf16"):
        seed_everything(DEFAULT_SEED)
        model = entry.build({"num_classes": splits.num_classes}).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=tc.betas)
        for _ in range(2):  # warm-up: oneDNN picks and caches its kernels
            train_step(model, x, y, opt, tc, precision)
        runs[precision] = model, opt
    times: dict[str, list[float]] = {p: [] for p in runs}
    for _ in range(rounds):
        for precision, (model, opt) in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                train_step(model, x, y, opt, tc, precision)
            times[precision].append((time.perf_counter() - start) / steps * 1000)
    return {p: sorted(t)[len(t) // 2] for p, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.stepbench", description=__doc__)
    p.add_argument("models", nargs="*", help=f"default: all of {', '.join(registry.REGISTRY)}")
    p.add_argument("--steps", type=int, default=5, help="steps per round (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per precision, interleaved (default 3)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, as make run's jobs)")
    args = p.parse_args(argv)
    for name in args.models:
        if name not in registry.REGISTRY:
            p.error(f"unknown model {name!r}; registered: {', '.join(registry.REGISTRY)}")
    if args.steps < 1 or args.rounds < 1 or args.threads < 1:
        p.error("--steps, --rounds and --threads take 1 or more")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(
        f"training step, ms (median of {args.rounds} rounds of {args.steps} steps), {args.threads} thread(s), "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {'yes' if native_bf16(device) else 'no'}\n"
    )
    print("| model | batch | fp32 | bf16 | fp32 / bf16 |\n|---|---|---|---|---|", flush=True)
    data: dict = {}
    for name in args.models or list(registry.REGISTRY):
        t = step_times(name, args.steps, args.rounds, device, data)
        batch = registry.get(name).presets["full"].batch_size
        print(f"| `{name}` | {batch} | {t['fp32']:.2f} | {t['bf16']:.2f} | {t['fp32'] / t['bf16']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
