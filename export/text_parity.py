"""The decoding parity check of text step graphs: greedy decoding through ONNX Runtime, with the
service's own state handling (core/textgen.py: caches, left padding, batched steps), gives the
very tokens that PyTorch gives by re-running the whole sequence at every step, with no cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.session import make_session
from core.spec import ExportSpec
from core.textgen import TextModel, greedy, window_start

PROMPT_LENGTHS = (8, 16, 24, 32, 40)  # five prompts of different lengths: batched steps need left padding
NEW_TOKENS = 200


def onnx_text_model(spec: ExportSpec, onnx_path: Path, labels: Sequence[str]) -> TextModel:
    session, _, _ = make_session(onnx_path, "cpu")
    names = [o.name for o in spec.outputs]
    assert spec.generation is not None, "a text spec"
    return TextModel(spec.generation, labels, spec.inputs, lambda feeds: dict(zip(names, session.run(names, feeds))))


def torch_text_model(model: nn.Module, spec: ExportSpec, labels: Sequence[str]) -> TextModel:
    """The service's state handling (caches, padding, batching) over PyTorch instead of ONNX Runtime."""
    names, order = [o.name for o in spec.outputs], [t.name for t in spec.inputs]

    @torch.no_grad()
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: o.numpy() for n, o in zip(names, model(*(torch.from_numpy(feeds[k]) for k in order)))}

    assert spec.generation is not None, "a text spec"
    return TextModel(spec.generation, labels, spec.inputs, run)


@torch.no_grad()
def uncached_greedy(model: nn.Module, prompt: list[int], new_tokens: int, context: int | None) -> list[int]:
    """PyTorch, whole sequence every step, with the service's window rule (window_start)."""
    tokens, start = list(prompt), 0
    for _ in range(new_tokens):
        start = window_start(len(tokens), start, context)
        logits = model.sequence_logits(torch.tensor([tokens[start:]]))[0, -1]
        tokens.append(int(logits.argmax()))
    return tokens[len(prompt) :]


def greedy_parity(
    name: str, spec: ExportSpec, model: nn.Module, onnx_path: Path, labels: list[str], held_out: np.ndarray
) -> dict[str, Any]:
    from .onnx_export import ParityError, ParityFailure

    assert spec.generation is not None and not isinstance(spec.generation.context, str), "a resolved text spec"
    prompts = [held_out[i, :n].tolist() for i, n in enumerate(PROMPT_LENGTHS)]
    ort_model = onnx_text_model(spec, onnx_path, labels)
    reference = [uncached_greedy(model.eval(), p, NEW_TOKENS, spec.generation.context) for p in prompts]
    result: dict[str, Any] = {
        "prompts": len(prompts),
        "prompt_lengths": list(PROMPT_LENGTHS),
        "new_tokens": NEW_TOKENS,
        "reference": "PyTorch, uncached (whole sequence every step)",
    }
    failures = []
    for mode, batched in (("batched", True), ("unbatched", False)):
        got = greedy(ort_model, prompts, NEW_TOKENS, batched)
        same = [g == r for g, r in zip(got, reference)]
        result[f"identical_{mode}"] = all(same)
        for i, (g, r) in enumerate(zip(got, reference)):
            if g != r:
                at = next(k for k, (a, b) in enumerate(zip(g, r)) if a != b)
                failures.append(
                    ParityFailure(
                        "decoding",
                        f"prompt {i}",
                        None,
                        f"greedy decoding ({mode}, ONNX "
                        f"Runtime with the cache) leaves PyTorch's uncached tokens at token {at}",
                    )
                )
    if failures:
        raise ParityError(name, failures)
    result["sample"] = "".join(labels[t] for t in prompts[0]) + " -> " + "".join(labels[t] for t in reference[0][:60])
    return result
