"""Export a trained model to ONNX, gate it on parity with PyTorch and write its model card.

The gate checks names, then shapes, then values (as Optimum's `validate_model_outputs` does),
collects every failure of every output and batch size, and fails the export instead of warning.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from core import golden
from core.card import ModelCard
from core.images import latent_noise
from core.session import make_session
from core.spec import PAST_AXIS, TEXT_PARITY_STEPS, ExportSpec
from core.store import sha256_file
from training.registry import CourseModel, Graph

ONNX_FILE = "model.onnx"
EXAMPLES = 16  # held-out inputs recorded in the card (core/card.py: ModelCard.examples)
GOLDEN_ROWS = 4  # rows of the golden inputs every serving session must reproduce (core/golden.py)


@dataclass(frozen=True)
class ParityFailure:
    """One check the graph failed: `kind` is names, shape, value, top1, golden or decoding (text models)."""

    kind: str
    output: str
    batch_size: int | None
    detail: str

    def __str__(self) -> str:
        at = f" at batch size {self.batch_size}" if self.batch_size is not None else ""
        return f"{self.kind}: {self.output}{at}: {self.detail}"


class ParityError(RuntimeError):
    """ONNX Runtime does not reproduce PyTorch within the model's tolerance; `failures` lists every
    failed check (each output at each batch size), not only the first."""

    def __init__(self, model: str, failures: list[ParityFailure]) -> None:
        self.model, self.failures = model, failures
        super().__init__(
            f"{model}: {len(failures)} parity check(s) failed:\n" + "\n".join(f"  - {f}" for f in failures)
        )


class ExportView(nn.Module):
    """The model seen through the method its export spec names (forward, explain, ...)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs: torch.Tensor):
        return getattr(self.model, self.method)(*inputs)


def export_onnx(model: nn.Module, spec: ExportSpec, sample: tuple[torch.Tensor, ...], path: Path) -> Path:
    """torch.export-based ONNX export with named inputs/outputs and named dynamic axes."""
    model = ExportView(model, spec.method).eval()
    # The exporter warns about every torchvision op it cannot register; we use none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # Positional, one entry per input: torch.export keys dicts by forward()'s argument names. One
    # Dim per name, shared by every input that has that axis; a cache may be empty (past_length 0).
    dims = {
        d: torch.export.Dim(d, min=0 if d == PAST_AXIS else 1, max=4096)
        for t in spec.inputs
        for d in t.dynamic_axes.values()
    }
    # ExportView.forward takes *inputs: torch.export sees one argument holding them all.
    dynamic_shapes = (tuple({i: dims[d] for i, d in t.dynamic_axes.items()} for t in spec.inputs),)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        model,
        sample,
        dynamo=True,
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        opset_version=spec.opset,
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        optimize=True,
        verbose=False,
    )
    program.save(str(path))
    _name_output_axes(path, spec)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _name_output_axes(path: Path, spec: ExportSpec) -> None:
    """Give the outputs' dynamic axes the spec's names: the exporter writes derived ones such as
    "past + seq", or a number where it saw one example size, which would make ONNX Runtime warn."""
    model = onnx.load(str(path))
    for out, t in zip(model.graph.output, spec.outputs):
        for d, want in zip(out.type.tensor_type.shape.dim, t.shape):
            if isinstance(want, str):
                d.dim_param = want
    onnx.save(model, str(path))


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim)


def validate(
    name: str,
    spec: ExportSpec,
    model: nn.Module,
    onnx_path: Path,
    inputs: list[tuple[np.ndarray, ...]],
    provider: str = "cpu",
) -> list[dict[str, Any]]:
    """Compare ORT on `provider` (core/session.py: cpu, cuda, auto) with PyTorch on `inputs`
    (per batch, one array per graph input).

    Returns one record per batch size, each naming the provider the session really ran on; raises
    ParityError listing every failed check (names and declared shapes first: values are compared
    only when those hold).
    """
    graph = onnx.load(str(onnx_path)).graph
    want_in, want_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    got_in = [i.name for i in graph.input]
    got_out = [o.name for o in graph.output]
    failures = []
    if got_in != want_in or got_out != want_out:
        failures.append(
            ParityFailure("names", "graph", None, f"inputs/outputs {got_in}/{got_out}, spec says {want_in}/{want_out}")
        )
    else:
        failures += [
            ParityFailure("shape", t.name, None, f"{_dims(vi)} in the graph, spec says {t.shape}")
            for vi, t in zip([*graph.input, *graph.output], [*spec.inputs, *spec.outputs])
            if _dims(vi) != t.shape
        ]
    if failures:
        raise ParityError(name, failures)

    session, used, _ = make_session(onnx_path, provider)
    model = ExportView(model, spec.method).eval()
    records: list[dict[str, Any]] = []
    for x in inputs:
        x = x if isinstance(x, tuple) else (x,)
        batch = len(x[0])
        with torch.no_grad():
            ref = model(*(torch.from_numpy(a) for a in x))
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = session.run(want_out, dict(zip(want_in, x)))
        record: dict[str, Any] = {"batch_size": batch, "provider": used, "outputs": {}}
        for out_name, r, g in zip(want_out, ref, got):
            r = r.numpy()
            if r.shape != g.shape:
                failures.append(ParityFailure("shape", out_name, batch, f"ONNX Runtime {g.shape}, PyTorch {r.shape}"))
                continue
            err = float(np.max(np.abs(r - g))) if r.size else 0.0
            entry: dict[str, Any] = {"max_abs_error": err, "tolerance": spec.atol}
            if out_name in spec.check_top1:
                axis = spec.top1_axis
                entry["top1_agreement"] = float(np.mean(r.argmax(axis) == g.argmax(axis)))
            record["outputs"][out_name] = entry
            if not np.isfinite(err) or err > spec.atol:
                failures.append(
                    ParityFailure("value", out_name, batch, f"max abs error {err:.3g} > tolerance {spec.atol:g}")
                )
            if entry.get("top1_agreement", 1.0) < spec.min_top1_agreement:
                failures.append(
                    ParityFailure(
                        "top1", out_name, batch, f"agreement {entry['top1_agreement']:.6f} < {spec.min_top1_agreement}"
                    )
                )
        records.append(record)
    if failures:
        raise ParityError(name, failures)
    return records


def parity_inputs(
    spec: ExportSpec, held_out: np.ndarray, model: nn.Module | None = None
) -> list[tuple[np.ndarray, ...]] | list[np.ndarray]:
    """Real held-out inputs at each parity batch size (cycled if the split is small); for
    generators the latent noise the service would draw; for text step graphs held-out text with
    the model's real state after a prefix (TEXT_PARITY_STEPS)."""
    if spec.input_data == "steps":
        return [step_inputs(model, held_out, b, past, new) for b, past, new in TEXT_PARITY_STEPS]
    out = []
    for b in spec.parity_batch_sizes:
        if spec.input_data == "normal":
            out.append(latent_noise(b, spec.inputs[0].shape[1], seed=b))
            continue
        idx = np.arange(b) % len(held_out)
        out.append(np.ascontiguousarray(held_out[idx], dtype=np.float32))
    return out


def step_inputs(model: nn.Module, held_out: np.ndarray, batch: int, past: int, new: int) -> tuple[np.ndarray, ...]:
    """A text step graph's inputs: `new` held-out tokens per row after the state of `past` ones."""
    tokens = torch.from_numpy(held_out[np.arange(batch) % len(held_out), : past + new])
    with torch.no_grad():
        return tuple(np.ascontiguousarray(t.numpy()) for t in model.eval().step_inputs(tokens, past))


def golden_inputs(spec: ExportSpec, inputs: list) -> dict[str, np.ndarray]:
    """The golden inputs, by graph input name: the first GOLDEN_ROWS rows of the odd-sized parity
    batch (held-out images, or the generators' seeded noise); for text step graphs the first
    parity step whole (its state tensors do not all keep the batch on axis 0)."""
    if spec.input_data == "steps":
        return {t.name: a for t, a in zip(spec.inputs, inputs[0])}
    x = inputs[1] if len(inputs) > 1 else inputs[0]
    return {spec.inputs[0].name: np.ascontiguousarray(x[:GOLDEN_ROWS])}


def record_golden(spec: ExportSpec, model: nn.Module, inputs: list, path: Path) -> dict[str, Any]:
    """Write the golden inputs and PyTorch's float32 outputs for them to `path` (core/golden.py);
    the card's `golden` field."""
    feeds = golden_inputs(spec, inputs)
    with torch.no_grad():
        ref = ExportView(model, spec.method).eval()(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    golden.write(path, feeds, {t.name: r.numpy() for t, r in zip(spec.outputs, ref)})
    return {
        "artifact": golden.ARTIFACT,
        "tolerance_abs": spec.atol,
        "reference": f"PyTorch {torch.__version__} float32 on CPU",
        "inputs": {k: list(v.shape) for k, v in feeds.items()},
    }


def check_golden(name: str, spec: ExportSpec, onnx_path: Path, path: Path, provider: str = "cpu") -> dict[str, Any]:
    """What a serving worker will check at start-up, checked now on `provider`: an export whose
    graph cannot pass its own golden check is not stored. Raises ParityError."""
    session, used, _ = make_session(onnx_path, provider)
    names = [t.name for t in spec.outputs]
    try:
        err = golden.check(
            golden.session_runner(session, names),
            path.read_bytes(),
            spec.atol,
            f"{name} on {used}",
        )
    except golden.GoldenError as exc:
        raise ParityError(name, [ParityFailure("golden", "graph", None, str(exc))]) from None
    return {"provider": used, "max_abs_error": err}


def export_sample(spec: ExportSpec, inputs: list, model: nn.Module, held_out: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Example inputs for torch.export: no dynamic axis of size 0 or 1, which it would specialise."""
    if spec.input_data == "steps":
        return tuple(torch.from_numpy(a) for a in step_inputs(model, held_out, 2, 3, 5))
    return (torch.from_numpy(inputs[1][:2]),)


def library_versions() -> dict[str, str]:
    import onnxruntime

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def _preprocessing(spec: ExportSpec, cfg: dict[str, Any]) -> dict[str, Any] | None:
    image = spec.inputs[0]
    if len(image.shape) != 4:  # latent noise (preprocess.latent_noise) or text (the labels are the vocabulary)
        return None
    return {
        "image_size": list(image.shape[-2:]),
        "channels": image.shape[1],
        "pixel_range": [0.0, 1.0],
        "ink": "bright on dark (MNIST convention)",
        # core/images.py decode_image: what an upload goes through before the graph
        "uploads": (
            "grayscale; bright ink on black whatever the polarity (ink_on_dark); the digit's box scaled to 20x20 "
            "and its centre of mass at the centre (mnist_frame)"
            if image.shape[1] == 1
            else "RGB, resized"
        ),
        "normalisation": f"in graph: (x - {cfg.get('mean')}) / {cfg.get('std')}" if "mean" in cfg else "none",
    }


def examples(spec: ExportSpec, test_x: np.ndarray, test_y: np.ndarray, labels: list[str]) -> dict[str, list[Any]]:
    """The first EXAMPLES held-out inputs and their targets, for the card (generators: none; text:
    prompts of 16 characters)."""
    if spec.input_data == "normal":
        return {}
    if spec.input_data == "steps":
        return {"prompts": ["".join(labels[t] for t in row[:16]) for row in test_x[:EXAMPLES]]}
    x = test_x[:EXAMPLES]
    return {"inputs": np.round(x.astype(np.float64), 4).tolist(), "targets": test_y[:EXAMPLES].tolist()}


def build_card(
    entry: CourseModel,
    graph: Graph,
    ckpt: dict[str, Any],
    ckpt_path: Path,
    onnx_path: Path,
    parity: list[dict[str, Any]],
    held_out: tuple[np.ndarray, np.ndarray],
) -> ModelCard:
    """The card of one exported graph; `parity` as `validate` returned it (its records name the
    provider the gate ran on)."""
    spec = graph.spec
    cfg = ckpt["config"]
    digest = sha256_file(onnx_path)
    labels = ckpt.get("labels") or [str(i) for i in range(cfg.get("num_classes", 10))]
    return ModelCard(
        name=graph.name,
        family=entry.name,  # the registered model; clients name it in task requests
        version=digest[:16],
        chapter=entry.chapter,
        tasks=graph.tasks,
        format="onnx",
        file=ONNX_FILE,
        sha256=digest,
        opset=spec.opset,
        inputs=spec.inputs,
        outputs=spec.outputs,
        max_batch_size=spec.max_batch_size,
        labels=tuple(labels),
        preprocessing=_preprocessing(spec, cfg),
        sampling={"noise": "numpy.random.default_rng(seed).standard_normal((n, dim), dtype=float32)"}
        if spec.input_data == "normal"
        else None,
        parity={
            "tolerance_abs": spec.atol,
            "provider": parity[0].get("provider", "CPUExecutionProvider") if parity else "CPUExecutionProvider",
            "batches": parity,
        },
        generation=spec.generation,
        metrics={k: v for k, v in ckpt["metrics"].items() if k != "history"},
        dataset={"name": ckpt["dataset"], "source": ckpt["data_source"], "seed": ckpt["seed"]},
        # the arithmetic the weights were trained in (training/runtime.py); fp32 before it was recorded
        checkpoint={
            "path": str(ckpt_path),
            "sha256": sha256_file(ckpt_path),
            "trained_in": ckpt.get("train", {}).get("precision", "fp32"),
        },
        config=cfg,
        libraries=library_versions(),
        examples=examples(spec, *held_out, labels),
    )
