"""train(...), evaluate(...), fit(...): the training loop shared by every registered model."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.images import latent_noise

from .augment import AUGMENTATIONS
from .data import Split, Splits, load_dataset
from .plots import loss_curve_png
from .registry import CourseModel, TrainConfig
from .runtime import DEFAULT_SEED, autocast, pick_device, resolve_precision, runs_dir, seed_everything
from .stats import BLOCK, bootstrap, described, summed, wilson

CHECKPOINT = "checkpoint.pt"
LOSS_CURVE = "loss.png"


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None):
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size].numpy()
        yield torch.from_numpy(split.x[idx]), torch.from_numpy(split.y[idx])


def train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, tc: TrainConfig, precision: str
) -> torch.Tensor:
    """One optimiser step on a batch, the forward pass and loss in `precision` (resolved: fp32 or
    bf16); returns the loss (detached)."""
    with autocast(precision, x.device):
        loss = model.loss(x, y) if hasattr(model, "loss") else nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    if hasattr(model, "after_step"):  # e.g. the DCGAN's moving average of its generator
        model.after_step()
    return loss.detach()


def train_epoch(
    model: nn.Module,
    split: Split,
    opt: torch.optim.Optimizer,
    tc: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
    desc: str,
    step_sched=None,
) -> float:
    model.train()
    total, count = 0.0, 0
    bar = tqdm(
        batches(split, tc.batch_size, gen),
        total=-(-len(split) // tc.batch_size),
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        disable=None,
    )
    augment = AUGMENTATIONS[tc.augment] if tc.augment else None
    precision = resolve_precision(tc.precision, device)  # auto: what it means on this device
    for x, y in bar:
        x, y = x.to(device), y.to(device)
        if augment is not None:
            x = augment(x, gen)
        loss = train_step(model, x, y, opt, tc, precision)
        if step_sched is not None:
            step_sched.step()
        total += loss.item() * len(y)
        count += len(y)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, device: torch.device, batch_size: int = 512, intervals: bool = False
) -> dict[str, float]:
    """Loss and accuracy per example, or per pixel for dense targets (then also mean IoU); models
    with their own objective report their own averages (evaluate_batch). With `intervals`, also
    each figure's 95% interval (`<name>_ci95_lo`, `<name>_ci95_hi`, training/stats.py) and the
    number of examples (`examples`): the batches are then blocks of stats.BLOCK examples."""
    model.eval()
    size = BLOCK if intervals else batch_size
    blocks: list[dict[str, Any]] = []
    for x, y in batches(split, size):
        x, y = x.to(device), y.to(device)
        if hasattr(model, "evaluate_batch"):
            blocks.append({**model.evaluate_batch(x, y), "count": len(y)})
            continue
        logits = model(x)
        pred = logits.argmax(1)
        block: dict[str, Any] = {
            "loss": nn.functional.cross_entropy(logits, y, reduction="sum").item(),
            "correct": (pred == y).sum().item(),
            "count": y.numel(),
        }
        if y.dim() > 1:
            k = logits.shape[1]
            p1, y1 = nn.functional.one_hot(pred, k).bool(), nn.functional.one_hot(y, k).bool()
            block["inter"] = (p1 & y1).flatten(0, -2).sum(0).cpu().numpy()
            block["union"] = (p1 | y1).flatten(0, -2).sum(0).cpu().numpy()
        blocks.append(block)
    stats = _statistics(blocks)
    total = summed(blocks)
    out = {name: fn(total) for name, fn in stats.items()} if blocks else {"loss": 0.0}
    if intervals and blocks:
        for name, fn in stats.items():
            if name == "accuracy" and "inter" not in total:  # independent examples: Wilson
                lo, hi = wilson(float(total["correct"]), float(total["count"]))
            else:
                lo, hi = bootstrap(blocks, fn)
            out[f"{name}_ci95_lo"], out[f"{name}_ci95_hi"] = lo, hi
        out["examples"] = float(len(split))
    return out


def _statistics(blocks: list[dict[str, Any]]) -> dict[str, Callable[[Mapping[str, Any]], float]]:
    """Each reported figure as a function of summed block fields."""
    if not blocks:
        return {}
    fields = set(blocks[0]) - {"count"}
    if "correct" not in fields:  # evaluate_batch: sums over examples, reported as means
        return {k: (lambda t, k=k: float(t[k] / max(t["count"], 1))) for k in sorted(fields)}
    stats: dict[str, Callable[[Mapping[str, Any]], float]] = {
        "loss": lambda t: float(t["loss"] / max(t["count"], 1)),
        "accuracy": lambda t: float(t["correct"] / max(t["count"], 1)),
    }
    if "inter" in fields:

        def mean_iou(t: Mapping[str, Any]) -> float:
            present = np.asarray(t["union"]) > 0
            return float((np.asarray(t["inter"])[present] / np.asarray(t["union"])[present]).mean())

        stats["mean_iou"] = mean_iou
    return stats


def fit(
    entry: CourseModel,
    splits: Splits,
    tc: TrainConfig,
    seed: int = DEFAULT_SEED,
    device: str = "auto",
    config: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `entry`'s model (its config with `config`'s overrides); keep the weights of the best
    validation epoch."""
    gen = seed_everything(seed)
    dev = pick_device(device)
    model = entry.build({**(config or {}), "num_classes": splits.num_classes}).to(dev)
    train = (
        splits.train
        if tc.limit_train is None
        else Split(splits.train.x[: tc.limit_train], splits.train.y[: tc.limit_train])
    )
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=tc.betas)
    if tc.warmup_steps:  # transformers: linear warm-up, then cosine decay, per step
        total = max(tc.epochs * -(-len(train) // tc.batch_size), tc.warmup_steps + 1)
        step_sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / tc.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
        sched = None
    else:  # cosine decay per epoch
        step_sched = None
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(tc.epochs, 1))
    history: list[dict[str, float]] = []
    best_score, best_state = float("-inf"), None
    start = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        train_loss = train_epoch(model, train, opt, tc, gen, dev, f"{entry.name} {epoch}/{tc.epochs}", step_sched)
        if sched is not None:
            sched.step()
        val = evaluate(model, splits.val, dev)
        history.append({"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}})
        print(
            f"{entry.name} epoch {epoch:3d}/{tc.epochs}  train loss {train_loss:.4f}  "
            + "  ".join(f"val {k} {v:.4f}" for k, v in val.items()),
            flush=True,
        )
        score = val["accuracy"] if "accuracy" in val else -val["loss"]  # keep the best validation epoch
        if not getattr(model, "select_best_epoch", True):  # a GAN's losses do not rank its epochs
            score = float(epoch)
        if score > best_score:
            best_score, best_state = score, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    test = evaluate(model, splits.test, dev, intervals=True)  # reported only: the epoch was chosen on validation
    metrics = {
        **{f"test_{k}": v for k, v in test.items()},
        "best_val_score": best_score,
        "train_seconds": round(time.perf_counter() - start, 2),
        "history": history,
    }
    return model.cpu(), metrics


def canvas_upload(digit: np.ndarray, scale: int = 12, margin: int = 40) -> bytes:
    """A (28, 28) ink-bright digit as a person's upload: enlarged `scale` times (bilinear), dark ink
    on white paper, off-centre on a larger canvas, PNG-encoded."""
    from PIL import Image

    from core.images import png_bytes

    side = digit.shape[0] * scale
    big = np.asarray(Image.fromarray(digit.astype(np.float32), mode="F").resize((side, side)), dtype=np.float32)
    paper = np.zeros((side + 2 * margin, side + 3 * margin), np.float32)
    paper[margin : margin + side, 2 * margin : 2 * margin + side] = big
    return png_bytes(1.0 - np.clip(paper, 0, 1)[None])


def canvas_uploads(x: np.ndarray) -> np.ndarray:
    """One-channel inputs (N, 1, H, W) as people send them: canvas_upload each, decoded by the
    service's own upload path (core/images.py decode_image); float32 (N, 1, H, W)."""
    from core.images import decode_image

    return np.stack([decode_image(canvas_upload(d[0]), d.shape[-2:]) for d in x]).astype(np.float32)


@torch.no_grad()
def canvas_accuracy(model: nn.Module, split: Split) -> dict[str, float]:
    """Accuracy on the test digits sent as large dark-on-light PNG canvases through the service's
    own upload path (canvas_uploads), with its Wilson interval."""
    x = canvas_uploads(split.x)
    correct = int((model.eval()(torch.from_numpy(x)).argmax(1).numpy() == split.y).sum())
    lo, hi = wilson(correct, len(split))
    return {
        "test_canvas_accuracy": correct / max(len(split), 1),
        "test_canvas_accuracy_ci95_lo": lo,
        "test_canvas_accuracy_ci95_hi": hi,
    }


@torch.no_grad()
def sample_quality(
    entry: CourseModel, model: nn.Module, root: Path | None = None, n: int = 100, seed: int = 0
) -> dict[str, float]:
    """A generator's n samples (the service's noise for `seed`) scored by the latest checkpoint of
    the judge classifier: how many of its classes appear, and the mean top-1 confidence."""
    from .registry import get

    judge_ckpt = latest_checkpoint(entry.judge, root) if entry.judge else None
    if judge_ckpt is None:
        print(f"{entry.name}: no {entry.judge} checkpoint to score samples with; train it first", flush=True)
        return {}
    judge, _ = load_checkpoint(judge_ckpt, get(entry.judge))
    graph = next(g for g in entry.graphs if "generate" in g.tasks)
    noise = torch.from_numpy(latent_noise(n, graph.spec.inputs[0].shape[1], seed))
    images = getattr(model.eval(), graph.spec.method)(noise)
    conf, cls = judge(images).softmax(1).max(1)
    lo, hi = bootstrap([{"conf": float(c), "count": 1.0} for c in conf], lambda t: float(t["conf"] / t["count"]))
    return {
        "test_judge_classes": float(len(cls.unique())),
        "test_judge_mean_confidence": float(conf.mean()),
        "test_judge_mean_confidence_ci95_lo": lo,
        "test_judge_mean_confidence_ci95_hi": hi,
        "judge_samples": float(n),
    }


def save_checkpoint(
    run_dir: Path,
    entry: CourseModel,
    model: nn.Module,
    tc: TrainConfig,
    dataset: str,
    source: str,
    labels: tuple[str, ...],
    seed: int,
    metrics: dict[str, Any],
) -> Path:
    """A self-describing checkpoint: state_dict + config, enough to rebuild the model alone."""
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": entry.name,
        "config": asdict(model.cfg),
        "train": asdict(tc),
        "dataset": dataset,
        "data_source": source,
        "labels": list(labels),
        "seed": seed,
        "metrics": metrics,
    }
    torch.save({"model": model.state_dict(), **meta}, run_dir / CHECKPOINT)
    (run_dir / "metrics.json").write_text(json.dumps(meta, indent=2))
    loss_curve_png(metrics.get("history", []), run_dir / LOSS_CURVE, f"{entry.name}: loss per epoch")
    return run_dir / CHECKPOINT


def checkpoint_of(card: Any, runs: Path) -> Path:
    """The checkpoint a model card was exported from: its recorded path, or the same run under
    `runs` when the runs directory moved (a copy on another machine). Raises FileNotFoundError
    when neither exists, ValueError when the file is not the one the card records (sha256)."""
    from core import store

    recorded = Path(card.checkpoint.get("path", ""))
    path = recorded
    if not path.is_file() and "train" in recorded.parts:
        path = runs.joinpath(*recorded.parts[recorded.parts.index("train") :])
    if not path.is_file():
        raise FileNotFoundError(f"{card.name}: checkpoint {recorded} not found (nor {path})")
    if store.sha256_file(path) != card.checkpoint.get("sha256"):
        raise ValueError(f"{card.name}: {path} is not the checkpoint {card.tag} was exported from (sha256)")
    return path


def load_checkpoint(path: Path, entry: CourseModel) -> tuple[nn.Module, dict[str, Any]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    if ckpt.get("name") != entry.name:
        raise ValueError(f"{path} holds a {ckpt.get('name')!r} checkpoint, not {entry.name!r}")
    config, state = ckpt["config"], ckpt["model"]
    if hasattr(entry.model_cls, "upgrade"):  # a checkpoint of an older layout of the model
        config, state = entry.model_cls.upgrade(config, state)
    model = entry.build(config)
    model.load_state_dict(state)
    return model.eval(), ckpt


def model_runs(name: str, root: Path | None = None) -> Path:
    return (root or runs_dir()) / "train" / name


def latest_checkpoint(name: str, root: Path | None = None) -> Path | None:
    runs = sorted(p for p in model_runs(name, root).glob(f"*/{CHECKPOINT}"))
    return runs[-1] if runs else None


def preset_config(
    entry: CourseModel, preset: str, epochs: int | None = None, precision: str | None = None, device: str = "auto"
) -> TrainConfig:
    """The entry's preset, with `epochs` and `precision` instead of its own when given, and the
    precision resolved to what it means on `device` (fp32 or bf16, training/runtime.py): what a
    checkpoint or an ablation table records."""
    tc = entry.presets[preset]
    tc = tc if epochs is None else replace(tc, epochs=epochs)
    return replace(tc, precision=resolve_precision(precision or tc.precision, pick_device(device)))


def new_run_dir(parent: Path) -> Path:
    """A folder under `parent` named by the time (not yet created): a second run within the same
    second gets an `x` appended."""
    run_dir = parent / time.strftime("%Y%m%d-%H%M%S")
    while run_dir.exists():
        run_dir = run_dir.with_name(run_dir.name + "x")
    return run_dir


def train_model(
    entry: CourseModel,
    dataset: str | None = None,
    data_dir: Path | None = None,
    preset: str = "full",
    epochs: int | None = None,
    out: Path | None = None,
    seed: int = DEFAULT_SEED,
    device: str = "auto",
    precision: str | None = None,
) -> Path:
    """Train one registered model end to end and write its checkpoint; return the checkpoint path.
    `precision` (training/runtime.py PRECISIONS) replaces the preset's; the checkpoint records
    what it meant on this device (fp32 or bf16)."""
    dataset = dataset or entry.dataset
    tc = preset_config(entry, preset, epochs, precision, device)
    splits = load_dataset(dataset, seed, data_dir)
    print(
        f"{entry.name}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test "
        f"from {splits.source}; trains in {tc.precision}",
        flush=True,
    )
    model, metrics = fit(entry, splits, tc, seed, device)
    if entry.judge:
        metrics.update(sample_quality(entry, model, out))
    if "classify" in entry.tasks and splits.test.x.shape[1:] == (1, 28, 28):  # digits: also as uploads
        metrics.update(canvas_accuracy(model, splits.test))
    shown = {
        "test_accuracy": "test accuracy",
        "test_canvas_accuracy": "as dark-on-light PNG canvases",
        "test_mean_iou": "mean IoU",
        "test_psnr_noisy_db": "PSNR noisy (dB)",
        "test_psnr_denoised_db": "PSNR denoised (dB)",
        "test_elbo_nats": "ELBO (nats/image)",
        "test_nats_per_char": "test loss (nats/char)",
        "test_bits_per_char": "bits/char",
        "test_judge_classes": f"classes among 100 samples ({entry.judge})",
        "test_judge_mean_confidence": f"mean {entry.judge} confidence",
    }
    figures = ", ".join(
        f"{label} {described(metrics[k], metrics.get(k + '_ci95_lo'), metrics.get(k + '_ci95_hi'))}"
        for k, label in shown.items()
        if k in metrics
    )
    print(
        f"{entry.name}: {figures} (n = {len(splits.test)} held-out examples; [95% interval]: Wilson for an "
        f"accuracy over examples, else a bootstrap over blocks of {BLOCK} examples; judge: over its samples)",
        flush=True,
    )
    run_dir = new_run_dir(model_runs(entry.name, out))
    return save_checkpoint(run_dir, entry, model, tc, dataset, splits.source, splits.labels, seed, metrics)
