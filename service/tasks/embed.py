"""POST /embed: the model's embedding of the image, its bottleneck (autoencoder)."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.card import ModelCard

from ..schema import INT, NUM, arr
from .base import Options, Outputs, Task


class Embed(Task):
    """The model's embedding of the image (its bottleneck), for search and clustering."""

    name = "embed"
    answer_schema = {"embedding": arr(NUM), "dim": INT}

    def answer(self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options) -> dict[str, Any]:
        z = outputs["embedding"].astype(np.float64)
        return {"embedding": z.round(6).tolist(), "dim": len(z)}
