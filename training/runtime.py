"""The one place where seeds and devices are decided (the run directory: core/paths.py)."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from core.paths import runs_dir

__all__ = ["DEFAULT_SEED", "PRECISIONS", "autocast", "pick_device", "resolve_precision", "runs_dir", "seed_everything"]

DEFAULT_SEED = 1234


def seed_everything(seed: int = DEFAULT_SEED) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# Training's arithmetic (TrainConfig.precision, `python -m training --precision`). bf16: mixed
# precision under torch.autocast, as on GPUs: matrix products and convolutions in bfloat16, the
# weights, gradients and optimiser state in float32 (no loss scaling: bfloat16 has float32's
# range). On the CPU, autocast also leaves elementwise ops and normalisations (layer norm, softmax,
# the VAE's KL term) in bfloat16 where their inputs are, and computes the losses (cross-entropy,
# MSE, BCE with logits) in float32. Validation, the test figures, the generators' scores and the
# exported graphs are computed in float32 either way; the per-epoch train loss is bf16's.
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware: a CPU with AMX or AVX512-BF16 (oneDNN uses
    them), a CUDA GPU of compute capability 8.0 or more. Elsewhere bfloat16 may be emulated, and
    slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private: absent is "no"
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision to train in, fp32 or bf16: auto is bf16 where the device computes it natively
    (native_bf16), else fp32. On this project's 2-core CPU (AMX), a training step took 1.3 to 2.1
    times less time in bf16 than in fp32 on one thread for the convolutional and text models, 1.06
    times for the MLP (`make stepbench`, 2026-11-27)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision is {precision!r}; it takes one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step's forward pass and loss run in, for a resolved precision."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
