"""Declarative export specs, one per registered model, in the spirit of Optimum's ONNX configs:
tensor names, named dynamic axes, opset and the parity tolerance. Standard library only: the
training registry declares them, the exporter follows them, the card records what they resolved to."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .card import Generation, TensorSpec

# Opset 18 is the newest that torch.onnx's exporter and every ONNX Runtime >= 1.14 both cover
# fully; pinning it keeps graphs identical across re-exports.
OPSET = 18
BATCH_AXIS = "batch_size"


def config_value(value: Any, cfg: dict[str, Any]) -> Any:
    """A field of the model's config ("hidden"), a quotient of two ("dim/heads"), or `value` itself."""
    if isinstance(value, str):
        if value in cfg:
            return cfg[value]
        a, _, b = value.partition("/")
        if b and a in cfg and b in cfg:
            return cfg[a] // cfg[b]
    return value


@dataclass(frozen=True)
class ExportSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = OPSET
    atol: float = 1e-5  # max |ORT - torch| on every output, fp32 CPU
    parity_batch_sizes: tuple[int, ...] = (1, 7, 64)  # one, an odd size, the maximum batch
    max_batch_size: int = 64
    # The task's top-1 must agree on every parity input (classification outputs only).
    check_top1: tuple[str, ...] = field(default=())
    top1_axis: int = -1  # the class axis of those outputs (1 for per-pixel logits)
    # Dense outputs have pixels where two classes tie to within float error; there ORT and
    # PyTorch may pick different ones, so agreement is required up to this share.
    min_top1_agreement: float = 1.0
    method: str = "forward"  # the model method the graph computes (e.g. "explain": logits + CAM)
    # What the parity gate feeds the graph: held-out images of the model's dataset, or latent noise
    # drawn from N(0, I) with a fixed seed (generators).
    input_data: str = "held_out"
    # Text generators: how the service carries state from one step to the next (see
    # core/textgen.py); a str context names a config field, filled in by resolve().
    generation: Generation | None = None

    def resolve(self, cfg: dict[str, Any]) -> ExportSpec:
        """The spec of one trained model: dimensions and values that name config fields (the
        vocabulary size, layers, hidden units) replaced by the checkpoint's numbers."""

        def tensors(ts: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
            return tuple(replace(t, shape=tuple(config_value(d, cfg) for d in t.shape)) for t in ts)

        generation = (
            None
            if self.generation is None
            else replace(self.generation, context=config_value(self.generation.context, cfg))
        )
        return replace(self, inputs=tensors(self.inputs), outputs=tensors(self.outputs), generation=generation)


def image_classifier_spec(
    shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int | str = "num_classes",
    cam: bool = False,
    atol: float = 1e-5,
) -> ExportSpec:
    """Logits; with cam=True also the class activation map of the predicted class (B, H, W). The
    number of classes is the checkpoint's (its dataset's) unless given."""
    outputs: tuple[TensorSpec, ...] = (TensorSpec("logits", (BATCH_AXIS, num_classes)),)
    if cam:
        outputs += (TensorSpec("cam", (BATCH_AXIS, *shape[1:])),)
    return ExportSpec(
        inputs=(TensorSpec("image", (BATCH_AXIS, *shape)),),
        outputs=outputs,
        check_top1=("logits",),
        method="explain" if cam else "forward",
        atol=atol,
    )


def segmenter_spec(shape: tuple[int, int, int] = (3, 32, 32), num_classes: int | str = "num_classes") -> ExportSpec:
    """Per-pixel logits (B, classes, H, W); the number of classes is the checkpoint's unless given."""
    return ExportSpec(
        inputs=(TensorSpec("image", (BATCH_AXIS, *shape)),),
        outputs=(TensorSpec("logits", (BATCH_AXIS, num_classes, *shape[1:])),),
        check_top1=("logits",),
        top1_axis=1,
        min_top1_agreement=0.9999,
    )


def autoencoder_spec(shape: tuple[int, int, int] = (1, 28, 28), latent: int = 16) -> ExportSpec:
    """A (noisy) image in; the denoised image and the bottleneck embedding out."""
    return ExportSpec(
        inputs=(TensorSpec("image", (BATCH_AXIS, *shape)),),
        outputs=(TensorSpec("denoised", (BATCH_AXIS, *shape)), TensorSpec("embedding", (BATCH_AXIS, latent))),
    )


def vae_spec(shape: tuple[int, int, int] = (1, 28, 28), latent: int = 16) -> ExportSpec:
    """An image in; its reconstruction and the posterior's mean and log-variance out."""
    return ExportSpec(
        inputs=(TensorSpec("image", (BATCH_AXIS, *shape)),),
        outputs=(
            TensorSpec("reconstruction", (BATCH_AXIS, *shape)),
            TensorSpec("mean", (BATCH_AXIS, latent)),
            TensorSpec("logvar", (BATCH_AXIS, latent)),
        ),
    )


def generator_spec(latent: int, shape: tuple[int, int, int] = (1, 28, 28), method: str = "forward") -> ExportSpec:
    """Latent noise in (drawn by the service from a seeded generator), images in [0, 1] out. Up to
    100 samples per request: the sample size by which the course's GAN is judged."""
    return ExportSpec(
        inputs=(TensorSpec("noise", (BATCH_AXIS, latent)),),
        outputs=(TensorSpec("image", (BATCH_AXIS, *shape)),),
        method=method,
        input_data="normal",
        parity_batch_sizes=(1, 7, 100),
        max_batch_size=100,
    )


SEQ_AXIS, PAST_AXIS, TOTAL_AXIS = "sequence_length", "past_length", "total_length"
# Text step graphs are checked with the real state after a prefix: (batch, prefix, new tokens) per
# parity batch size: a whole prompt from nothing, one decode step after 40 characters, 8 after 20.
TEXT_PARITY_STEPS = ((1, 0, 16), (7, 40, 1), (64, 20, 8))
# Logits of about +-10 and an LSTM cell state that accumulates over the prefix: fp32 rounding
# reaches ~1e-5 absolute there (9.5e-6 for the LSTM's logits and c_out at batch 64: `python -m export
# char_lstm`, 2026-11-26, commit 17b9498), so the per-tensor gate allows 1e-4; the stricter
# check for text is that greedy decoding gives the very same tokens (export/text_parity.py).
TEXT_ATOL = 1e-4


def recurrent_lm_spec() -> ExportSpec:
    """(tokens, h, c) -> (logits, h, c): the LSTM state as explicit inputs and outputs."""
    state = ("layers", BATCH_AXIS, "hidden")
    return ExportSpec(
        inputs=(TensorSpec("tokens", (BATCH_AXIS, SEQ_AXIS), "int64"), TensorSpec("h", state), TensorSpec("c", state)),
        outputs=(
            TensorSpec("logits", (BATCH_AXIS, SEQ_AXIS, "num_classes")),
            TensorSpec("h_out", state),
            TensorSpec("c_out", state),
        ),
        check_top1=("logits",),
        atol=TEXT_ATOL,
        input_data="steps",
        generation=Generation(cache="recurrent", state={"h": "h_out", "c": "c_out"}, batch_axis=1),
    )


def kv_cache_lm_spec() -> ExportSpec:
    """(tokens, positions, past_mask, past_keys, past_values) -> (logits, present_keys, present_values)
    with a dynamic past length (see training/models/gpt.py)."""

    def cache(length: str) -> tuple[int | str, ...]:
        return ("layers", BATCH_AXIS, "heads", length, "dim/heads")

    return ExportSpec(
        inputs=(
            TensorSpec("tokens", (BATCH_AXIS, SEQ_AXIS), "int64"),
            TensorSpec("positions", (BATCH_AXIS, SEQ_AXIS), "int64"),
            TensorSpec("past_mask", (BATCH_AXIS, PAST_AXIS), "int64"),
            TensorSpec("past_keys", cache(PAST_AXIS)),
            TensorSpec("past_values", cache(PAST_AXIS)),
        ),
        outputs=(
            TensorSpec("logits", (BATCH_AXIS, SEQ_AXIS, "num_classes")),
            TensorSpec("present_keys", cache(TOTAL_AXIS)),
            TensorSpec("present_values", cache(TOTAL_AXIS)),
        ),
        check_top1=("logits",),
        atol=TEXT_ATOL,
        input_data="steps",
        generation=Generation(
            cache="kv",
            state={"past_keys": "present_keys", "past_values": "present_values"},
            batch_axis=1,
            length_axis=3,
            positions="positions",
            past_mask="past_mask",
            context="block",
        ),
    )
