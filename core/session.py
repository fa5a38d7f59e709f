"""ONNX Runtime sessions with an honest execution provider.

`auto` uses CUDA only when a session really runs on it, else the CPU with one log line;
`cuda` refuses to start without it; `cpu` never tries. ORT's own behaviour, asking for CUDA
where its libraries are missing, is to log errors and silently run on the CPU: we check
`session.get_providers()` instead of trusting the request.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import onnxruntime as ort

PROVIDERS = ("auto", "cuda", "cpu")
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


# use_tf32=0: TF32 rounds matmul and convolution inputs to a 10-bit mantissa (NVIDIA's format): a
# max abs error of ~3e-4 on a small CNN against float32 PyTorch (../shared/gpu/README.md), far
# coarser than the parity gate's and the golden check's tolerance (1e-5). No user compute stream:
# each session's CUDA provider creates its own stream, and do_copy_in_default_stream=1 (ONNX
# Runtime's default, written out) keeps the host<->device copies on it, so one session's copies
# and kernels are ordered and sessions in other threads or workers do not wait on one another.
CUDA_OPTIONS = {"use_tf32": "0", "do_copy_in_default_stream": "1"}


class ProviderError(RuntimeError):
    """CUDA was required but cannot be used."""


def _cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def cuda_unavailable_reason() -> str | None:
    """Why CUDA certainly cannot be used here (cheap checks, no session), or None."""
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}) has no CUDA execution provider"
    if not _cuda_driver_present():
        return "no NVIDIA driver (libcuda.so.1) on this machine"
    return None


def preflight(provider: str) -> None:
    """Fail fast, before any worker starts, when the provider setting cannot be honoured."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown execution provider {provider!r}; accepted: {', '.join(PROVIDERS)}")
    if provider == "cuda" and (why := cuda_unavailable_reason()):
        raise ProviderError(f"CUDA was required (provider=cuda) but cannot be used: {why}")


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """One thread per session by default: the service runs one session per worker and core, and
    batches requests rather than splitting one across threads."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only; provider fallbacks are reported by us
    return so


def make_session(
    path: Path | str, provider: str = "auto", intra_op_threads: int = 1
) -> tuple[ort.InferenceSession, str, str | None]:
    """Open `path` on the requested provider.

    Returns the session, the provider really used, and why CUDA was not used (None if it was,
    or if it was not asked for), for the caller to report once.
    """
    preflight(provider)
    so = session_options(intra_op_threads)
    why = None
    if provider != "cpu":
        why = cuda_unavailable_reason()
        if why is None:
            try:
                ort.preload_dlls()
            except Exception as exc:
                why = f"onnxruntime.preload_dlls() failed: {exc}"  # kept if the session falls back
            sess = ort.InferenceSession(str(path), so, providers=[(CUDA, CUDA_OPTIONS), CPU])
            if sess.get_providers()[0] == CUDA:
                return sess, CUDA, None
            why = why or "the CUDA execution provider did not initialise (CUDA 13 / cuDNN 9 libraries missing?)"
        if provider == "cuda":
            raise ProviderError(f"CUDA was required (provider=cuda) but cannot be used: {why}")
    sess = ort.InferenceSession(str(path), so, providers=[CPU])
    return sess, CPU, why
