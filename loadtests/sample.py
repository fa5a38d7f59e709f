"""python -m loadtests.sample [--host URL] [--model lenet] [--index I] [--json PATH] [--png PATH] [--noise STD]

Writes one held-out example of the model (from its card, as the running server gives it:
GET /models/{model}; never seen in training) as a JSON body for the model, a PNG, a .npy and raw
float32 (beside the JSON), for trying the API with curl. Prints the true label.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from core.card import ModelCard
from core.images import png_bytes
from loadtests.tasks import examples, fetch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="http://127.0.0.1:3000", help="the running service")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--model", default="lenet")
    p.add_argument("--json", type=Path, default=Path("digit.json"))
    p.add_argument("--png", type=Path, default=Path("digit.png"))
    p.add_argument("--noise", type=float, default=0.0, help="add Gaussian noise of this std (for /denoise)")
    args = p.parse_args(argv)
    card = ModelCard.from_json(fetch(f"{args.host.rstrip('/')}/models/{args.model}"))
    x, y = examples(card)
    if not len(x):
        print(f"sample: {args.model} takes no image (its card has no held-out images)", file=sys.stderr)
        return 2
    if args.noise > 0:
        x = np.clip(x + np.random.default_rng(0).normal(0, args.noise, x.shape), 0, 1).astype(np.float32)
    i = args.index % len(y)
    image = x[i, 0] if x.shape[1] == 1 else x[i]
    args.json.write_text(json.dumps({"model": args.model, "image": image.round(4).tolist()}))
    args.png.write_bytes(png_bytes(x[i]))
    npy, raw = args.json.with_suffix(".npy"), args.json.with_suffix(".f32")
    np.save(npy, x[i])  # (C, H, W) float32, for Content-Type application/x-npy
    x[i].astype("<f4").tofile(raw)  # for application/octet-stream with X-Tensor-Shape
    truth = f"true label {card.labels[int(y[i])]!r}" if np.ndim(y[i]) == 0 else "per-pixel target"
    print(
        f"held-out image #{i}, {truth}: wrote {args.json}, {args.png}, {npy} and {raw} "
        f"(X-Tensor-Shape: {','.join(map(str, x[i].shape))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
