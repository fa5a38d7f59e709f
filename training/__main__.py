"""python -m training <model>|all [--dataset NAME] [--data-dir DIR] [--corpus FILE] [--epochs N]
[--preset quick|ci|full|ablation] [--out DIR] [--seed S] [--precision auto|fp32|bf16] [--if-missing] [--jobs N]
[--ablate]

--ablate trains the variants of the model that its chapter compares (e.g. the ResNet without batch
norm, skip connections or dropout, or with N(0, 1) weights) and writes a table and a plot of their
validation curves to <out>/ablation/<model>/<time>/; no checkpoint is written, nothing is exported.
For the ResNet: python -m training resnet --ablate (its ablation preset, on its scenes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import registry
from .data import DATASETS
from .runtime import DEFAULT_SEED, PRECISIONS


def main(argv: list[str] | None = None) -> int:
    ablatable = [n for n, e in registry.REGISTRY.items() if e.ablations]
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    p.add_argument("model", help=f"one of: {', '.join(registry.REGISTRY)}, or 'all'")
    p.add_argument("--dataset", choices=DATASETS, help="default: the model's own (real digits, scenes or text)")
    p.add_argument("--data-dir", type=Path, help="folder with MNIST IDX files (for --dataset mnist)")
    p.add_argument(
        "--corpus",
        type=Path,
        help="a UTF-8 text file for the text models (instead of the stdlib's "
        "docstrings); the same as --dataset text --data-dir FILE",
    )
    p.add_argument("--epochs", type=int, help="override the preset's epoch count")
    p.add_argument(
        "--preset",
        choices=sorted({name for e in registry.REGISTRY.values() for name in e.presets}),
        help="quick: seconds; ci: what the tests train (fewer epochs, text models on a subset); full: the "
        "default; ablation: what --ablate trains, and its default (where a model has it)",
    )
    p.add_argument("--out", type=Path, help="runs directory (default: $EE559_RUNS or ./runs)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="training arithmetic: bf16 is mixed precision (products in bfloat16, weights in float32); "
        "auto (the presets' default): bf16 where the CPU or GPU computes it natively, else fp32. "
        "Validation, test figures and the exported graphs are float32 either way",
    )
    p.add_argument("--if-missing", action="store_true", help="skip models that already have a checkpoint")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="models trained at once, each in its own process with an equal share of the CPU's threads "
        "(a generator starts once its judge is trained); make run uses 2",
    )
    p.add_argument(
        "--ablate",
        action="store_true",
        help="train the model's ablation variants on its own dataset and write a table and a plot of "
        f"their validation curves (models with variants: {', '.join(ablatable)}; 'all': each of them)",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs is {args.jobs}; it takes 1 or more")

    from .parallel import train_in_parallel, train_one
    from .train import latest_checkpoint

    if args.corpus is not None:
        args.dataset, args.data_dir = "text", args.corpus
    train_args = dict(
        dataset=args.dataset,
        data_dir=args.data_dir,
        preset=args.preset or "full",
        epochs=args.epochs,
        out=args.out,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )
    names = (ablatable if args.ablate else list(registry.REGISTRY)) if args.model == "all" else [args.model]
    to_train: list[str] = []
    for name in names:
        try:
            entry = registry.get(name)
        except KeyError as exc:
            p.error(str(exc.args[0]))
        if args.ablate:
            if not entry.ablations:
                p.error(f"{name} has no ablation variants; models with some: {', '.join(ablatable)}")
            from .ablation import PLOT, TABLE, run_ablation

            preset = args.preset or ("ablation" if "ablation" in entry.presets else "full")
            run_dir = run_ablation(
                entry, args.dataset, preset, args.epochs, args.out, args.seed, args.device, args.precision
            )
            print((run_dir / TABLE).read_text())
            print(f"{name}: ablation table {run_dir / TABLE}, validation curves {run_dir / PLOT}")
            continue
        if args.if_missing and (ckpt := latest_checkpoint(name, args.out)) is not None:
            print(f"{name}: reusing {ckpt} (to retrain: make run RETRAIN=1, or drop --if-missing)")
            continue
        if train_args["preset"] not in entry.presets:
            p.error(f"{name} has no preset {train_args['preset']!r}; its presets: {', '.join(entry.presets)}")
        to_train.append(name)
    if args.jobs > 1 and len(to_train) > 1:
        train_in_parallel(to_train, args.jobs, train_args)
    else:
        for name in to_train:
            print(f"{name}: checkpoint {train_one(name, train_args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
