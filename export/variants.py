"""python -m export.variants <model>|all [--precisions fp16,int8] [--version V] [--provider cpu|cuda|auto]
                                       [--runs DIR] [--data-dir DIR]

FP16 and INT8 variants of a stored fp32 graph, each behind its own gate, saved as further versions
of the same model in the store. The default selection never serves them (core/store.py);
EE559_PRECISION or a request's `precision` does (docs/operations.md, docs/api.md).

- fp16 (for CUDA): onnxruntime.transformers.float16.convert_float_to_float16, the graph's inputs
  and outputs kept float32 (keep_io_types), so clients send and get what they did.
- int8 (for CPUs): onnxruntime.quantization.quantize_static in the QDQ format after
  quant_pre_process (shape inference, graph optimisation): weights int8 per output channel,
  activations uint8 with ranges fitted (MinMax) on CALIBRATION_EXAMPLES inputs of the TRAINING
  split, fed as evaluation feeds them (the denoiser's noisy inputs). Never the test split.

The gate. The fp32 graph and the variant both go through training.train.evaluate on the test
split, the function training reports its figures with (the ONNX Runtime session standing in for
the PyTorch forward), each figure with its 95% interval and n. The variant must keep (GATES, by
the serving task whose quality it is judged on):
- top-1 agreement with the fp32 graph of at least 99% (per example for classifiers, per pixel for
  the segmenter), where the graph has class outputs (the export spec's check_top1);
- its task figure no more than the margin below fp32's: accuracy 0.5 points, mean IoU 1 point,
  denoised PSNR 0.5 dB.
A variant that misses is not stored: the command prints model, precision, metric, values and
margin and exits 1. One that passes is saved with `precision`, `variant` = {"of": the fp32
version, "gate": what was measured, "recipe": how it was made}, its test figures in `metrics`,
its own temperature and out-of-distribution rule for classifiers (fitted on its logits, as
export does for fp32), and a golden check: the fp32 version's golden inputs and PyTorch outputs,
with the tolerance widened to GOLDEN_SLACK times the variant's own error on them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.card import PRECISIONS
from core.paths import runs_dir

if TYPE_CHECKING:
    from torch import nn

    from core.spec import ExportSpec
    from core.store import StoredModel
    from training.data import Split

VARIANTS = PRECISIONS[1:]  # fp16, int8
CALIBRATION_EXAMPLES = 512  # training inputs the INT8 activation ranges are fitted on
GOLDEN_SLACK = 4.0  # a variant's golden tolerance: this times its own error on the golden inputs
GOLDEN_FLOOR = 1e-3  # ... and never below this (fp16 on CUDA rounds differently from fp16 on the CPU)


@dataclass(frozen=True)
class Gate:
    """What a variant must keep: `metric` (a figure of training.train.evaluate) no more than
    `margin` below fp32's, in the metric's own units (accuracy and IoU as fractions), and top-1
    agreement with fp32 of at least `min_agreement` on the graph's class outputs."""

    metric: str
    margin: float
    unit: str  # how values and the margin are printed: "points" (x 100) or "dB"
    min_agreement: float = 0.99

    def shown(self, value: float) -> str:
        return f"{100 * value:.2f}%" if self.unit == "points" else f"{value:.2f} dB"

    def shown_margin(self) -> str:
        return f"{100 * self.margin:g} points" if self.unit == "points" else f"{self.margin:g} dB"


# By serving task: the task whose quality a variant of a graph serving it is judged on, in this
# order (the ResNet classifies and explains: judged on classification).
GATES: dict[str, Gate] = {
    "classify": Gate("accuracy", 0.005, "points"),
    "segment": Gate("mean_iou", 0.01, "points"),
    "denoise": Gate("psnr_denoised_db", 0.5, "dB"),
}


class VariantError(RuntimeError):
    """A variant cannot be made or judged (no fp32 version, no checkpoint, no gate for the model)."""


def gate_for(tasks: Sequence[str], gates: dict[str, Gate] = GATES) -> Gate | None:
    return next((gates[t] for t in gates if t in tasks), None)


def variant_models(gates: dict[str, Gate] = GATES) -> list[str]:
    """The registered models whose main graph has a gate: those that get variants."""
    from training.registry import REGISTRY

    return [name for name, entry in REGISTRY.items() if gate_for(entry.graphs[0].tasks, gates)]


# -- making the variants ---------------------------------------------------------------------------
def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """The fp32 graph `src` with float16 weights and arithmetic, float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return {"tool": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True}


def to_int8(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The fp32 graph `src` statically quantised (QDQ), its activation ranges fitted on `feeds`
    (input name -> batch)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rest, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(
            str(src), str(pre), skip_symbolic_shape=True
        )  # ONNX shape inference suffices for these CNNs; the symbolic one fails on the CAM
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "tool": "onnxruntime.quantization.quantize_static after quant_pre_process",
        "format": "QDQ",
        "weights": "int8, symmetric, per channel",
        "activations": "uint8, MinMax ranges",
        "calibration": {"split": "train", "examples": int(sum(len(next(iter(f.values()))) for f in feeds))},
    }


# -- judging them ----------------------------------------------------------------------------------
def graph_module(
    model: nn.Module, onnx_path: Path, spec: ExportSpec, record: list[list[np.ndarray]], provider: str = "cpu"
) -> tuple[nn.Module, str]:
    """`model` with its forward computed by the ONNX graph on `provider` (core/session.py), for
    training.train.evaluate: what evaluate measures (its loss, metrics and, for models with their
    own evaluate_batch, their corruption of the inputs) stays the training code's. The graph's
    inputs and outputs of every call are appended to `record` ([input, *outputs]). A graph
    computing another method than forward (the ResNet's explain: logits and CAM) answers
    forward's outputs, the first ones. Also the provider the session really runs on."""
    import torch

    from core.session import make_session

    session, used, _ = make_session(onnx_path, provider)
    feed, names = spec.inputs[0].name, [o.name for o in spec.outputs]
    with torch.no_grad():
        probe = model.eval()(torch.zeros((1, *(int(d) for d in spec.inputs[0].shape[1:]))))
    n_forward = len(probe) if isinstance(probe, tuple | list) else 1

    def forward(x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        outs = session.run(names, {feed: batch})
        record.append([batch, *outs])
        tensors = tuple(torch.from_numpy(o) for o in outs[:n_forward])
        return tensors[0] if n_forward == 1 else tensors

    stand_in = copy.copy(model)  # shares the weights (unused) and whatever evaluate_batch needs
    stand_in.forward = forward
    return stand_in, used


@dataclass
class Measured:
    """One graph evaluated on a split: evaluate's figures and what the graph saw and answered."""

    figures: dict[str, float]
    inputs: np.ndarray
    outputs: dict[str, np.ndarray]
    provider: str = "CPUExecutionProvider"


def measure(
    model: nn.Module, onnx_path: Path, spec: ExportSpec, split: Split, intervals: bool = True, provider: str = "cpu"
) -> Measured:
    import torch

    from training.train import evaluate

    record: list[list[np.ndarray]] = []
    stand_in, used = graph_module(model, onnx_path, spec, record, provider)
    figures = evaluate(stand_in, split, torch.device("cpu"), intervals=intervals)
    outputs = {o.name: np.concatenate([r[1 + i] for r in record]) for i, o in enumerate(spec.outputs)}
    return Measured(figures, np.concatenate([r[0] for r in record]), outputs, used)


def judge(
    name: str, precision: str, spec: ExportSpec, gate: Gate, fp32: Measured, variant: Measured
) -> tuple[dict[str, Any], list[str]]:
    """The gate's record (for the card) and the reasons it failed (none: passed)."""
    f, v = fp32.figures, variant.figures
    record: dict[str, Any] = {
        "split": "test",
        "examples": int(f.get("examples", len(fp32.inputs))),
        "metric": gate.metric,
        "fp32": f[gate.metric],
        precision: v[gate.metric],
        "difference": v[gate.metric] - f[gate.metric],
        "margin": gate.margin,
        "unit": gate.unit,
        "provider": variant.provider,
    }
    for who, figures in (("fp32", f), (precision, v)):
        if f"{gate.metric}_ci95_lo" in figures:
            record[f"{who}_ci95"] = [figures[f"{gate.metric}_ci95_lo"], figures[f"{gate.metric}_ci95_hi"]]
    failures = []
    if v[gate.metric] < f[gate.metric] - gate.margin:
        failures.append(
            f"{gate.metric} {gate.shown(f[gate.metric])} (fp32) -> {gate.shown(v[gate.metric])} ({precision}): "
            f"more than the margin of {gate.shown_margin()} below fp32"
        )
    record["max_abs_error"] = {
        k: float(np.abs(variant.outputs[k].astype(np.float64) - fp32.outputs[k]).max()) for k in fp32.outputs
    }
    if spec.check_top1:
        agree = [
            variant.outputs[k].argmax(axis=spec.top1_axis) == fp32.outputs[k].argmax(axis=spec.top1_axis)
            for k in spec.check_top1
        ]
        share = float(np.mean(np.concatenate([a.ravel() for a in agree])))
        record.update(
            top1_agreement=share,
            min_top1_agreement=gate.min_agreement,
            agreement_over=int(sum(a.size for a in agree)),
            agreement_unit="pixels" if spec.top1_axis != -1 else "examples",
        )
        if share < gate.min_agreement:
            failures.append(
                f"top-1 agreement with fp32 {100 * share:.2f}% over {record['agreement_over']} "
                f"{record['agreement_unit']}: under the {100 * gate.min_agreement:g}% required"
            )
    record["passed"] = not failures
    return record, failures


def summary(name: str, precision: str, gate: Gate, record: dict[str, Any]) -> str:
    """One line of the gate's record, for the export's printout."""
    parts = []
    if "top1_agreement" in record:
        parts.append(
            f"top-1 agreement {100 * record['top1_agreement']:.2f}% (n={record['agreement_over']} "
            f"{record['agreement_unit']}, >= {100 * record['min_top1_agreement']:g}%)"
        )
    parts.append(
        f"{gate.metric} {gate.shown(record['fp32'])} -> {gate.shown(record[precision])} "
        f"(n={record['examples']}, margin {gate.shown_margin()} below fp32)"
    )
    parts.append("max abs error " + ", ".join(f"{k} {v:.2e}" for k, v in record["max_abs_error"].items()))
    return f"{name} {precision}: gate {'passed' if record['passed'] else 'FAILED'}: " + "; ".join(parts)


# -- the whole path --------------------------------------------------------------------------------
def golden_field(fp32: StoredModel, variant_path: Path, provider: str = "cpu") -> dict[str, Any]:
    """The variant's golden check: fp32's golden file (PyTorch's outputs), a tolerance that admits
    the variant's own error on it (measured here, on `provider`: the one it is gated on) with room
    for another provider."""
    from core import golden
    from core.session import make_session

    if not fp32.card.golden:
        return {}
    data = (fp32.path / fp32.card.artifacts[golden.ARTIFACT]["file"]).read_bytes()
    session, used, _ = make_session(variant_path, provider)
    names = [o.name for o in fp32.card.outputs]
    error = golden.check(golden.session_runner(session, names), data, float("inf"), "variant")
    tolerance = max(float(fp32.card.golden.get("tolerance_abs", 0.0)), GOLDEN_SLACK * error, GOLDEN_FLOOR)
    return {
        **fp32.card.golden,
        "tolerance_abs": tolerance,
        "export_check": {"provider": used, "max_abs_error": error},
        "tolerance_rule": f"max(fp32's, {GOLDEN_SLACK:g} x this variant's error on {used}, {GOLDEN_FLOOR:g})",
    }


def export_variants(
    name: str,
    precisions: Sequence[str] = VARIANTS,
    runs: Path | str | None = None,
    data_dir: Path | None = None,
    version: str | None = None,
    gates: dict[str, Gate] = GATES,
    provider: str = "cpu",
) -> int:
    """Make, judge and store the variants `precisions` of the model `name`'s fp32 version
    `version` (default: the newest stored), both graphs judged on `provider` (cpu, cuda: the
    GPU check's, where FP16 is meant to run; auto); 0 when every one passed its gate and is stored, 1 when
    one missed (not stored; the others are), 2 when none can be made (printed on stderr)."""
    from core import store
    from core.session import ProviderError
    from training import registry
    from training.data import Split, load_dataset
    from training.train import checkpoint_of, load_checkpoint

    from .calibration import calibrate, graph_logits
    from .onnx_export import ONNX_FILE, library_versions

    runs = Path(runs) if runs else runs_dir()
    bad = [p for p in precisions if p not in VARIANTS]
    if bad or not precisions:
        print(f"export: variant precision {', '.join(bad)[:40]!r}; accepted: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    try:
        entry = registry.get(name)
        graph = entry.graphs[0]
        gate = gate_for(graph.tasks, gates)
        if gate is None:
            raise VariantError(
                f"{name}: no variant gate for its tasks ({', '.join(graph.tasks)}); "
                f"models with one: {', '.join(variant_models(gates))}"
            )
        tag = f"{name}:{version}" if version else store.discover((name,))[name]
        fp32 = store.load(tag)
        if fp32.card.precision != store.FP32:
            raise VariantError(f"{tag} is itself a {fp32.card.precision} variant; name an fp32 version")
        model, ckpt = load_checkpoint(checkpoint_of(fp32.card, runs), entry)
    except (KeyError, VariantError, store.ModelStoreError, ValueError, FileNotFoundError) as exc:
        print(f"export: variants of {name}: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 2
    spec = graph.spec.resolve(ckpt["config"])
    splits = load_dataset(ckpt["dataset"], ckpt["seed"], data_dir)
    try:
        reference = measure(model, fp32.onnx_path, spec, splits.test, provider=provider)
    except ProviderError as exc:  # --provider cuda without CUDA
        print(f"export: variants of {name}: {exc}", file=sys.stderr)
        return 2
    # The calibration inputs: training examples, as evaluation feeds them to the graph.
    pick = np.random.default_rng(ckpt["seed"]).permutation(len(splits.train))[:CALIBRATION_EXAMPLES]
    seen = measure(model, fp32.onnx_path, spec, Split(splits.train.x[pick], splits.train.y[pick]), False).inputs
    feeds = [{spec.inputs[0].name: seen[i : i + spec.max_batch_size]} for i in range(0, len(seen), spec.max_batch_size)]
    artifacts = {k: fp32.path / e["file"] for k, e in fp32.card.artifacts.items()}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    status = 0
    for precision in precisions:
        folder = runs / "export" / name / "variants" / f"{stamp}-{precision}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ONNX_FILE
        recipe = to_fp16(fp32.onnx_path, path) if precision == "fp16" else to_int8(fp32.onnx_path, path, feeds)
        measured = measure(model, path, spec, splits.test, provider=provider)
        record, failures = judge(name, precision, spec, gate, reference, measured)
        print(summary(name, precision, gate, record))
        if failures:
            print(
                f"export: {name} {precision}: variant gate FAILED, not stored: {'; '.join(failures)}", file=sys.stderr
            )
            (folder / "gate.json").write_text(json.dumps(record, indent=2))
            status = 1
            continue
        digest = store.sha256_file(path)
        figures = {f"test_{k}": v for k, v in measured.figures.items()}
        card = replace(
            fp32.card,
            version=digest[:16],
            sha256=digest,
            file=ONNX_FILE,
            precision=precision,
            variant={"of": fp32.card.version, "gate": record, "recipe": recipe, "gate_rule": asdict(gate)},
            parity={
                "reference": f"the fp32 graph {fp32.card.version}",
                "provider": measured.provider,
                "split": "test",
                "max_abs_error": record["max_abs_error"],
            },
            metrics={**{k: v for k, v in fp32.card.metrics.items() if not k.startswith("test_")}, **figures},
            golden=golden_field(fp32, path, provider),
            libraries=library_versions(),
        )
        if card.calibration is not None:  # its own temperature and out-of-distribution rule
            logits = graph_logits(path, spec.inputs[0].name, spec.max_batch_size)
            val, test = (splits.val.x, splits.val.y), (splits.test.x, splits.test.y)
            card = replace(card, calibration=calibrate(logits, splits.train.x, val, test, card.row_shape, ckpt["seed"]))
        (folder / store.CARD_FILE).write_text(json.dumps(card.to_json(), indent=2))
        print(f"{name} {precision}: saved {store.save(card, path, artifacts)} ({path})")
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.variants", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", help="a model with a variant gate (lenet, mlp, resnet, unet, autoencoder), or 'all'")
    p.add_argument("--precisions", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--version", help="the fp32 version to derive them from (default: the newest stored)")
    p.add_argument("--runs", type=Path, help="runs directory (default: $EE559_RUNS or ./runs)")
    p.add_argument("--data-dir", type=Path, help="MNIST IDX folder, for checkpoints trained on it")
    p.add_argument(
        "--provider",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="where ONNX Runtime runs both graphs for the gate (cuda: fails without a GPU; default cpu)",
    )
    args = p.parse_args(argv)
    if args.version and args.model == "all":
        p.error("--version needs a single model name")
    runs = args.runs or runs_dir()
    os.environ.setdefault("BENTOML_HOME", str(runs / "bentoml"))
    precisions = tuple(x.strip() for x in args.precisions.split(",") if x.strip())
    names = variant_models() if args.model == "all" else [args.model]
    status = 0
    for name in names:
        status = max(status, export_variants(name, precisions, runs, args.data_dir, args.version, GATES, args.provider))
    return status


if __name__ == "__main__":
    sys.exit(main())
