"""Declarative export specs (torch-free), one per registered model, in the spirit of Optimum's
ONNX configs: tensor names, named dynamic axes, opset and the parity tolerance."""

from __future__ import annotations

from dataclasses import dataclass, field

# Opset 18 is the newest that torch.onnx's exporter and every ONNX Runtime >= 1.14 both cover
# fully; pinning it keeps graphs identical across re-exports.
OPSET = 18
BATCH_AXIS = "batch_size"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # str entries are named dynamic axes
    dtype: str = "float32"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


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


def image_classifier_spec(shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                          cam: bool = False) -> ExportSpec:
    """Logits; with cam=True also the class activation map of the predicted class (B, H, W)."""
    outputs = (TensorSpec("logits", (BATCH_AXIS, num_classes)),)
    if cam:
        outputs += (TensorSpec("cam", (BATCH_AXIS, *shape[1:])),)
    return ExportSpec(
        inputs=(TensorSpec("image", (BATCH_AXIS, *shape)),),
        outputs=outputs,
        check_top1=("logits",),
        method="explain" if cam else "forward",
    )


def segmenter_spec(shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 5) -> ExportSpec:
    """Per-pixel logits (B, classes, H, W)."""
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
        outputs=(TensorSpec("reconstruction", (BATCH_AXIS, *shape)), TensorSpec("mean", (BATCH_AXIS, latent)),
                 TensorSpec("logvar", (BATCH_AXIS, latent))),
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
