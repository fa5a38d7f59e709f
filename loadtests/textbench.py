"""python -m loadtests.textbench [--models gpt char_lstm] [--new-tokens 256] [--repeats 3]

Greedy decoding of N new tokens at batch 1, measured side by side in one run for each text model:
ONNX Runtime with the cache (the served path: core/textgen.py), ONNX Runtime re-running the
whole sequence for every token, and the same two loops in PyTorch eager. Prints tokens/s and the
ratios the README quotes (cache vs re-run; ORT vs PyTorch). Uses the latest checkpoint and the
stored ONNX file of each model ($EE559_RUNS, $BENTOML_HOME).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from core.textgen import greedy, window_start


def decode_loop(model, prompt: list[int], new_tokens: int, cached: bool) -> list[int]:
    """Greedy decoding with a TextModel: one step per token with the cache (the served loop,
    textgen.greedy), or (cached=False) every token from a fresh state over the whole window (the
    same window rule as the cache)."""
    if cached:
        return greedy(model, [prompt], new_tokens, batched=True)[0]
    tokens, start = list(prompt), 0
    for _ in range(new_tokens):
        start = window_start(len(tokens), start, model.context)
        tokens.append(int(np.argmax(model.step([model.new(tokens[start:])])[0])))
    return tokens[len(prompt) :]


def best_rate(fn, new_tokens: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return new_tokens / best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.textbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="*", help="default: every text model")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt", default="Return the ")
    args = p.parse_args(argv)

    from core.paths import runs_dir
    from training.registry import REGISTRY

    os.environ.setdefault("BENTOML_HOME", str(runs_dir() / "bentoml"))
    import bentoml
    import torch

    from core import store
    from export.text_parity import onnx_text_model, torch_text_model
    from training.train import latest_checkpoint, load_checkpoint

    torch.set_num_threads(1)  # the service runs ONNX Runtime with one intra-op thread per session
    names = args.models or [n for n, e in REGISTRY.items() if "generate_text" in e.tasks]
    rows = []
    for name in names:
        entry = REGISTRY[name]
        stored = Path(bentoml.models.get(f"{name}:latest").path)
        card = store.read_card(stored / store.CARD_FILE)
        ckpt_path = latest_checkpoint(name)
        if ckpt_path is None:
            print(f"textbench: no checkpoint for {name}; run: python -m training {name}", file=sys.stderr)
            return 2
        model, ckpt = load_checkpoint(ckpt_path, entry)
        spec = entry.export.resolve(ckpt["config"])
        ort_model = onnx_text_model(spec, stored / card.file, card.labels)
        pt_model = torch_text_model(model.eval(), spec, card.labels)
        prompt = ort_model.encode(args.prompt)
        same = decode_loop(ort_model, prompt, args.new_tokens, True) == decode_loop(
            pt_model, prompt, args.new_tokens, False
        )
        rates = {
            (engine, cached): best_rate(
                lambda m=m, c=cached: decode_loop(m, prompt, args.new_tokens, c), args.new_tokens, args.repeats
            )
            for engine, m in (("onnxruntime", ort_model), ("pytorch", pt_model))
            for cached in (True, False)
        }
        rows.append((name, rates, same))
    print(
        f"\ngreedy decoding, {args.new_tokens} new tokens at batch 1, prompt {args.prompt!r}, best of "
        f"{args.repeats}, tokens/s (one thread each):\n"
    )
    print(
        "| model | ORT, cache | ORT, re-run | PyTorch, cache | PyTorch, re-run | cache / re-run (ORT) | "
        "ORT / PyTorch (cache) | same tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r, same in rows:
        print(
            f"| {name} | {r['onnxruntime', True]:,.0f} | {r['onnxruntime', False]:,.0f} | {r['pytorch', True]:,.0f} | "
            f"{r['pytorch', False]:,.0f} | {r['onnxruntime', True] / r['onnxruntime', False]:.1f}x | "
            f"{r['onnxruntime', True] / r['pytorch', True]:.1f}x | {'yes' if same else 'NO'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
