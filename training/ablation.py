"""`python -m training <model> --ablate`: train the variants of a model that its chapter compares
(registry: `CourseModel.ablations`, e.g. the ResNet without batch norm, without skip connections,
without dropout, with N(0, 1) weights) with the same data, preset and seed, and write a markdown
table and a PNG of their validation curves into one run folder.

Only validation data ranks epochs and fills the table and the curves; the test figure is that of
the best validation epoch's weights, reported and never used to choose. No variant is saved as a
checkpoint or exported: the served model stays the full one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.plots import PALETTE, Line, chart, save

from .data import load_dataset
from .registry import CourseModel
from .runtime import DEFAULT_SEED, runs_dir
from .train import fit, new_run_dir, preset_config

TABLE = "ablation.md"
PLOT = "ablation.png"
RESULTS = "ablation.json"


@dataclass
class Outcome:
    variant: str
    overrides: dict[str, Any]
    history: list[dict[str, float]]  # fit's: epoch, train_loss, val_loss, val_accuracy
    test_accuracy: float  # of the best validation epoch's weights
    train_seconds: float
    test_ci95: tuple[float, float] = (0.0, 1.0)  # Wilson's 95% interval of test_accuracy (training/stats.py)

    @property
    def best(self) -> dict[str, float]:
        """The epoch of highest validation accuracy (the first of equals), as fit keeps it."""
        return max(self.history, key=lambda r: (r["val_accuracy"], -r["epoch"]))


def ablation_dir(name: str, root: Path | None = None) -> Path:
    return (root or runs_dir()) / "ablation" / name


def run_ablation(
    entry: CourseModel,
    dataset: str | None = None,
    preset: str = "full",
    epochs: int | None = None,
    out: Path | None = None,
    seed: int = DEFAULT_SEED,
    device: str = "auto",
    precision: str | None = None,
) -> Path:
    """Train every variant of `entry` on `dataset` (default: its own), in `precision` (default: the
    preset's; training/runtime.py); return the run folder, which holds the table (ablation.md),
    the curves (ablation.png) and every epoch's figures (ablation.json)."""
    if not entry.ablations:
        raise ValueError(f"{entry.name} has no ablation variants (CourseModel.ablations)")
    tc = preset_config(entry, preset, epochs, precision, device)
    splits = load_dataset(dataset or entry.dataset, seed)
    print(
        f"{entry.name} ablation: {len(entry.ablations)} variants, {tc.epochs} epochs each ({preset} preset), "
        f"{len(splits.train) if tc.limit_train is None else tc.limit_train} train / {len(splits.val)} val "
        f"from {splits.source}",
        flush=True,
    )
    outcomes = []
    for variant, overrides in entry.ablations.items():
        print(f"{entry.name} ablation: {variant} {overrides or ''}", flush=True)
        _, metrics = fit(entry, splits, tc, seed, device, config=overrides)
        outcomes.append(
            Outcome(
                variant,
                overrides,
                metrics["history"],
                metrics["test_accuracy"],
                metrics["train_seconds"],
                (metrics["test_accuracy_ci95_lo"], metrics["test_accuracy_ci95_hi"]),
            )
        )
    run_dir = new_run_dir(ablation_dir(entry.name, out))
    run_dir.mkdir(parents=True)
    caption = (
        f"{entry.name}, {splits.source}: {len(splits.val)} validation images, {len(splits.test)} test images "
        f"(test accuracy with its 95% Wilson interval); {tc.epochs} epochs ({preset} preset), seed {seed}, "
        f"trained in {tc.precision}"
    )
    (run_dir / TABLE).write_text(table(outcomes, caption))
    plot(outcomes, run_dir / PLOT, entry.name)
    (run_dir / RESULTS).write_text(
        json.dumps({"caption": caption, "train": asdict(tc), "variants": [asdict(o) for o in outcomes]}, indent=2)
    )
    return run_dir


def table(outcomes: list[Outcome], caption: str) -> str:
    """A markdown table: one row per variant, its last and best validation epochs."""
    rows = [
        "| variant | final val accuracy | best val accuracy (epoch) | final train loss | final val loss "
        "| test accuracy (best val epoch) | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        last, best = o.history[-1], o.best
        rows.append(
            f"| {o.variant} | {last['val_accuracy']:.2%} | {best['val_accuracy']:.2%} ({best['epoch']:.0f}) "
            f"| {last['train_loss']:.4f} | {last['val_loss']:.4f} | {o.test_accuracy:.2%} "
            f"[{o.test_ci95[0]:.1%}, {o.test_ci95[1]:.1%}] | {o.train_seconds:.1f} |"
        )
    return "\n".join([*rows, "", caption, ""])


def curves(outcomes: list[Outcome], key: str) -> list[Line]:
    """One line per variant: `key` (e.g. val_accuracy) per epoch."""
    return [
        Line(o.variant, [(r["epoch"], r[key]) for r in o.history], PALETTE[i % len(PALETTE)])
        for i, o in enumerate(outcomes)
    ]


def plot(outcomes: list[Outcome], path: Path, name: str) -> Path:
    """Validation accuracy and validation loss (log scale: a poor initialisation starts far off)
    per epoch, side by side."""
    size = (640, 460)
    return save(
        [
            chart(curves(outcomes, "val_accuracy"), f"{name}: validation accuracy", "epoch", "accuracy", size),
            chart(curves(outcomes, "val_loss"), f"{name}: validation loss", "epoch", "loss", size, log_y=True),
        ],
        path,
        columns=2,
    )
