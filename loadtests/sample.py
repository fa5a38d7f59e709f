"""python -m loadtests.sample [--index I] [--json PATH] [--png PATH]

Writes one held-out test digit (never seen in training) as a /classify JSON body and as a PNG,
for trying the API with curl. Prints the true label.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loadtests.tasks import held_out, png_bytes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--model", default="lenet")
    p.add_argument("--json", type=Path, default=Path("digit.json"))
    p.add_argument("--png", type=Path, default=Path("digit.png"))
    args = p.parse_args(argv)
    x, y = held_out("digits")
    i = args.index % len(y)
    args.json.write_text(json.dumps({"model": args.model, "image": x[i, 0].round(4).tolist()}))
    args.png.write_bytes(png_bytes(x[i]))
    print(f"held-out digit #{i}, true label {y[i]}: wrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
