"""95% intervals for the quality figures training prints and the model cards record.

An accuracy over n independent examples gets Wilson's score interval. Everything else (mean IoU,
per-pixel accuracy, PSNR, ELBO, nats per character, a judge's confidence) is a statistic of sums
over examples: it gets a percentile bootstrap that resamples blocks of examples (BLOCK per
block), so pixels of one image, and neighbouring text windows, stay together. Only held-out test
data goes through here; validation picks epochs, the test split is only reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054
BLOCK = 10  # examples per resampled block
RESAMPLES = 2000


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for k successes out of n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(
    blocks: Sequence[Mapping[str, np.ndarray | float]],
    statistic: Callable[[Mapping[str, np.ndarray | float]], float],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of `statistic` over resamples (with replacement) of the
    blocks; `statistic` takes the blocks' summed fields."""
    if len(blocks) < 2:
        value = statistic(summed(blocks))
        return value, value
    keys = list(blocks[0])
    table = {k: np.stack([np.asarray(b[k], dtype=np.float64) for b in blocks]) for k in keys}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(blocks), len(blocks))
        values.append(statistic({k: table[k][pick].sum(0) for k in keys}))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def summed(blocks: Sequence[Mapping[str, np.ndarray | float]]) -> dict[str, np.ndarray | float]:
    """Each field summed over the blocks (float64)."""
    return {k: sum(np.asarray(b[k], dtype=np.float64) for b in blocks) for k in (blocks[0] if blocks else {})}


def described(value: float, lo: float | None, hi: float | None) -> str:
    return f"{value:.4f}" if lo is None or hi is None else f"{value:.4f} [{lo:.4f}, {hi:.4f}]"
