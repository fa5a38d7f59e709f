"""Golden inputs: a few inputs each exported graph must turn into the outputs PyTorch gave for them.

The exporter writes them (`write`, an .npz stored beside the graph, named by the card's `golden`
field); every worker runs them through each session it opened, on whatever provider it got, before
it reports ready (`check`). A graph that loads but computes something else (a CUDA kernel with TF32
left on, a wrong cuDNN, a corrupted variant) is caught there instead of in answers, as Triton's
model warm-up with sample data would. numpy only, so the check runs wherever a session does.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

FILE = "golden.npz"
ARTIFACT = "golden"  # the key of the file in ModelCard.artifacts
MEDIA_TYPE = "application/octet-stream"


class GoldenError(RuntimeError):
    """A session did not reproduce its graph's golden outputs within the card's tolerance."""


def write(path: Path, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> Path:
    """Store the inputs and the reference outputs (by graph tensor name) in one .npz file."""
    arrays = {f"input/{k}": np.ascontiguousarray(v) for k, v in inputs.items()}
    arrays.update({f"output/{k}": np.ascontiguousarray(v) for k, v in outputs.items()})
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
    return path


def read(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, outputs) of a golden file's bytes, each by graph tensor name."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    inputs = {k.removeprefix("input/"): v for k, v in arrays.items() if k.startswith("input/")}
    outputs = {k.removeprefix("output/"): v for k, v in arrays.items() if k.startswith("output/")}
    if not inputs or not outputs:
        raise GoldenError("the golden file holds no inputs or no outputs")
    return inputs, outputs


def session_runner(session: Any, names: list[str]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """`check`'s `run` for an ONNX Runtime session whose outputs `names` are compared."""
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


def check(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    data: bytes,
    tolerance: float,
    where: str,
) -> float:
    """Run the golden inputs through `run` (feeds -> outputs by name) and compare every reference
    output; the largest absolute error. Raises GoldenError naming `where` (model and provider),
    the output and the error when one is missing, of another shape, not finite or off by more
    than `tolerance`."""
    inputs, want = read(data)
    got = run(inputs)
    worst = 0.0
    for name, ref in want.items():
        if name not in got:
            raise GoldenError(f"{where}: golden check failed: no output {name!r}")
        out = np.asarray(got[name])
        if out.shape != ref.shape:
            raise GoldenError(f"{where}: golden check failed: {name} has shape {out.shape}, expected {ref.shape}")
        if ref.dtype.kind in "iub":  # token ids, masks: exact, whatever the tolerance
            wrong = int(np.count_nonzero(out != ref))
            if wrong:
                raise GoldenError(f"{where}: golden check failed: {name} differs in {wrong} of {ref.size} values")
            continue
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        err = float(diff.max()) if diff.size else 0.0
        if not np.isfinite(err) or err > tolerance:
            raise GoldenError(f"{where}: golden check failed: {name} max abs error {err:.3g} > tolerance {tolerance:g}")
        worst = max(worst, err)
    return worst
