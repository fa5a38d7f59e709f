"""python -m export <model>|all [--checkpoint PATH] [--data-dir DIR] [--if-missing] [--provider cpu|cuda|auto]
                              [--variants fp16,int8|none]

Exports the latest training run of each model (or --checkpoint) to ONNX, checks parity with
PyTorch at batch sizes 1, an odd size and the maximum batch on the provider named (the CPU by
default; `--provider cuda` is the GPU check's), records golden inputs with PyTorch's outputs for
them (every serving worker must reproduce those before it is ready: core/golden.py), writes the
model card and saves the model into the BentoML model store ($BENTOML_HOME, default runs/bentoml).
Exits non-zero, naming the model, output, batch size and error, when the parity gate fails.
Then the FP16 and INT8 variants of the image models, each behind its own gate (export/variants.py;
a variant that misses its gate is not stored, which does not fail the export of the fp32 graphs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from core.paths import runs_dir


def main(argv: list[str] | None = None) -> int:
    from training import registry

    p = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", help=f"one of: {', '.join(registry.REGISTRY)}, or 'all'")
    p.add_argument("--checkpoint", type=Path, help="default: the latest training run of the model")
    p.add_argument("--data-dir", type=Path, help="MNIST IDX folder, for checkpoints trained on it")
    p.add_argument("--runs", type=Path, help="runs directory (default: $EE559_RUNS or ./runs)")
    p.add_argument(
        "--if-missing", action="store_true", help="skip models whose latest checkpoint is already in the model store"
    )
    p.add_argument(
        "--provider",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="where ONNX Runtime runs the parity gate and the golden check (cuda: fails without a GPU; default cpu)",
    )
    p.add_argument(
        "--variants",
        default="fp16,int8",
        help="then the variants of the image models, each behind its gate (export/variants.py): comma-separated "
        "precisions of fp16, int8, or 'none' (default fp16,int8)",
    )
    args = p.parse_args(argv)
    if args.model != "all" and args.model not in registry.REGISTRY:
        p.error(f"unknown model {args.model!r}; registered: {', '.join(registry.REGISTRY)}")
    if args.checkpoint and args.model == "all":
        p.error("--checkpoint needs a single model name")
    from .variants import VARIANTS

    precisions = tuple(v.strip() for v in args.variants.split(",") if v.strip() and v.strip() != "none")
    if any(v not in VARIANTS for v in precisions):
        p.error(f"--variants {args.variants[:40]!r}: comma-separated precisions of {', '.join(VARIANTS)}, or 'none'")
    runs = args.runs or runs_dir()
    os.environ.setdefault("BENTOML_HOME", str(runs / "bentoml"))

    from core import golden, store
    from core.session import ProviderError, preflight
    from training.data import load_dataset
    from training.train import LOSS_CURVE, latest_checkpoint, load_checkpoint

    from .calibration import calibrate, graph_logits, summary
    from .onnx_export import (
        ONNX_FILE,
        ParityError,
        build_card,
        check_golden,
        export_onnx,
        export_sample,
        parity_inputs,
        record_golden,
        validate,
    )
    from .text_parity import greedy_parity

    try:  # before any work: a GPU asked for where none can be used
        preflight(args.provider)
    except ProviderError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    names = list(registry.REGISTRY) if args.model == "all" else [args.model]
    for name in names:
        entry = registry.get(name)
        ckpt_path = args.checkpoint or latest_checkpoint(name, runs)
        if ckpt_path is None:
            print(f"export: no checkpoint for {name!r}; train it first: python -m training {name}", file=sys.stderr)
            return 2
        digest = store.sha256_file(ckpt_path)
        if args.if_missing and all(
            (card := store.newest_card(g.name))
            and card.checkpoint.get("sha256") == digest
            and (card.examples or card.sampling)  # cards from before examples were recorded are redone
            and (card.artifacts or not (ckpt_path.parent / LOSS_CURVE).exists())  # and those without the curve
            and (card.calibration or "classify" not in g.tasks)  # and classifiers' without calibration
            and card.golden  # and those without golden inputs
            for g in entry.graphs
        ):
            print(f"{name}: {', '.join(g.name for g in entry.graphs)} in the model store for {ckpt_path}; skipping")
            continue
        model, ckpt = load_checkpoint(ckpt_path, entry)
        splits = load_dataset(ckpt["dataset"], ckpt["seed"], args.data_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        # The training run's pictures, carried into the store beside each of its graphs.
        curve = ckpt_path.parent / LOSS_CURVE
        artifacts = {"loss_curve": curve} if curve.exists() else {}
        for graph in entry.graphs:
            graph = replace(graph, spec=graph.spec.resolve(ckpt["config"]))
            folder = runs / "export" / graph.name / stamp
            folder.mkdir(parents=True, exist_ok=True)
            inputs = parity_inputs(graph.spec, splits.test.x, model)
            sample = export_sample(graph.spec, inputs, model, splits.test.x)
            onnx_path = export_onnx(model, graph.spec, sample, folder / ONNX_FILE)
            golden_file = folder / golden.FILE
            golden_field = record_golden(graph.spec, model, inputs, golden_file)
            try:
                parity = validate(graph.name, graph.spec, model, onnx_path, inputs, args.provider)
                golden_field["export_check"] = check_golden(
                    graph.name, graph.spec, onnx_path, golden_file, args.provider
                )
                decoding = (
                    greedy_parity(graph.name, graph.spec, model, onnx_path, ckpt["labels"], splits.test.x)
                    if graph.spec.generation
                    else None
                )
            except ParityError as exc:
                print(f"export: parity gate FAILED: {exc}", file=sys.stderr)
                return 1
            card = build_card(entry, graph, ckpt, ckpt_path, onnx_path, parity, (splits.test.x, splits.test.y))
            if decoding:
                card.parity["greedy_decoding"] = decoding
            files = {**artifacts, golden.ARTIFACT: golden_file}
            card = replace(
                card,
                golden=golden_field,
                artifacts={
                    k: store.describe_artifact(p, golden.FILE, golden.MEDIA_TYPE)
                    if k == golden.ARTIFACT
                    else store.describe_artifact(p, f"{k}.png", "image/png")
                    for k, p in files.items()
                },
            )
            if "classify" in graph.tasks:  # temperature and out-of-distribution rule, from validation
                logits = graph_logits(onnx_path, graph.spec.inputs[0].name, graph.spec.max_batch_size)
                val, test = (splits.val.x, splits.val.y), (splits.test.x, splits.test.y)
                card = replace(
                    card, calibration=calibrate(logits, splits.train.x, val, test, card.row_shape, ckpt["seed"])
                )
            (folder / store.CARD_FILE).write_text(json.dumps(card.to_json(), indent=2))
            tag = store.save(card, onnx_path, files)
            worst = max(o["max_abs_error"] for r in parity for o in r["outputs"].values())
            sizes = ", ".join(str(r["batch_size"]) for r in parity)
            print(
                f"{graph.name}: parity OK on {parity[0]['provider']} at batch sizes {sizes} (max abs error "
                f"{worst:.2e} <= {graph.spec.atol:g}); golden inputs reproduced; "
                + "; ".join(
                    f"{k.removeprefix('test_')} {v:.4f}"
                    for k, v in card.metrics.items()
                    if k.startswith("test_") and k != "test_loss"
                )
                + f"; saved {tag} ({folder / ONNX_FILE})"
            )
            if card.calibration:
                print(summary(graph.name, card.calibration))
    return _variants(names, precisions, runs, args)


def _variants(names: list[str], precisions: tuple[str, ...], runs: Path, args: argparse.Namespace) -> int:
    """The FP16 and INT8 variants of the fp32 versions just exported (or found in the store), for
    the models with a variant gate; with --if-missing, those already stored are not made again."""
    from core import store

    from .variants import export_variants, variant_models

    for name in names:
        if not precisions or name not in variant_models():
            continue
        tag = store.discover((name,))[name]
        if args.if_missing and set(precisions) <= store.variants_of(tag):
            print(f"{name}: {', '.join(precisions)} variants of {tag} in the model store; skipping")
            continue
        # A variant that misses its gate is not stored (said on stderr); the fp32 graphs are, and
        # are what a server serves by default: the export goes on.
        if export_variants(name, precisions, runs, args.data_dir, provider=args.provider):
            print(f"export: {name}: not every variant was stored (above); the fp32 graph is", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
