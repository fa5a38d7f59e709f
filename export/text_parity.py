"""The decoding parity check of text step graphs: greedy decoding through ONNX Runtime, with the
service's own state handling (service/textgen.py: caches, left padding, batched steps), gives the
very tokens that PyTorch gives by re-running the whole sequence at every step, with no cache."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.ort_runtime import make_session
from service.textgen import TextModel, greedy

from .spec import ExportSpec

PROMPT_LENGTHS = (8, 16, 24, 32, 40)  # five prompts of different lengths: batched steps need left padding
NEW_TOKENS = 200


def onnx_text_model(spec: ExportSpec, onnx_path: Path, labels: list[str]) -> TextModel:
    session, _, _ = make_session(onnx_path, "cpu")
    names = [o.name for o in spec.outputs]
    card = {"generation": spec.generation, "labels": labels, "inputs": [asdict(t) for t in spec.inputs]}
    return TextModel(card, lambda feeds: dict(zip(names, session.run(names, feeds))))


def torch_text_model(model: nn.Module, spec: ExportSpec, labels: list[str]) -> TextModel:
    """The service's state handling (caches, padding, batching) over PyTorch instead of ONNX Runtime."""
    names, order = [o.name for o in spec.outputs], [t.name for t in spec.inputs]
    card = {"generation": spec.generation, "labels": labels, "inputs": [asdict(t) for t in spec.inputs]}

    @torch.no_grad()
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: o.numpy() for n, o in zip(names, model(*(torch.from_numpy(feeds[k]) for k in order)))}

    return TextModel(card, run)


@torch.no_grad()
def uncached_greedy(model: nn.Module, prompt: list[int], new_tokens: int, context: int | None) -> list[int]:
    """PyTorch, whole sequence every step, with the service's window rule (TextModel._slide)."""
    tokens, start = list(prompt), 0
    for _ in range(new_tokens):
        if context is not None and len(tokens) - start > context:
            start = len(tokens) - context // 2
        logits = model.sequence_logits(torch.tensor([tokens[start:]]))[0, -1]
        tokens.append(int(logits.argmax()))
    return tokens[len(prompt):]


def greedy_parity(name: str, spec: ExportSpec, model: nn.Module, onnx_path: Path, labels: list[str],
                  held_out: np.ndarray) -> dict[str, Any]:
    from .onnx_export import ParityError

    prompts = [held_out[i, :n].tolist() for i, n in enumerate(PROMPT_LENGTHS)]
    ort_model = onnx_text_model(spec, onnx_path, labels)
    reference = [uncached_greedy(model.eval(), p, NEW_TOKENS, spec.generation.get("context")) for p in prompts]
    result: dict[str, Any] = {"prompts": len(prompts), "prompt_lengths": list(PROMPT_LENGTHS), "new_tokens": NEW_TOKENS,
                              "reference": "PyTorch, uncached (whole sequence every step)"}
    for mode, batched in (("batched", True), ("unbatched", False)):
        got = greedy(ort_model, prompts, NEW_TOKENS, batched)
        same = [g == r for g, r in zip(got, reference)]
        result[f"identical_{mode}"] = all(same)
        if not all(same):
            i = same.index(False)
            at = next(k for k, (a, b) in enumerate(zip(got[i], reference[i])) if a != b)
            raise ParityError(f"{name}: greedy decoding ({mode}, ONNX Runtime with the cache) leaves PyTorch's "
                              f"uncached tokens at token {at} of prompt {i}")
    result["sample"] = "".join(labels[t] for t in prompts[0]) + " -> " + "".join(labels[t] for t in reference[0][:60])
    return result
