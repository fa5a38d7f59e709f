#!/usr/bin/env bash
# On the GPU machine, in the last `run` call (docs/gpu.md): joins the pieces of `make gpu-pack`
# (those earlier calls copied to /tmp/ee559/carry/, and this call's under .gpu-carry/), unpacks
# them, installs the wheels into /tmp/ee559/site (no index: nothing can be fetched there), and runs
# `make gpu-check`'s driver on CUDA with the carried runs/. Its three files go to $OUT.
# Usage: bash loadtests/gpu_run.sh [more python -m loadtests.gpu_check arguments, which win]
# PYTHON (default python3) names the interpreter: CPython 3.12, as the pieces are built for it.
set -euo pipefail
cd "$(dirname "$0")/.."
base=/tmp/ee559
py=${PYTHON:-python3}
mkdir -p "$base/carry" "$base/pack"
cp .gpu-carry/piece_* "$base/carry/" 2>/dev/null || true
echo "gpu-run: pieces $(cd "$base/carry" && ls piece_* | tr '\n' ' ')"
cat $(ls "$base"/carry/piece_* | sort) | xz -d -T0 | tar -C "$base/pack" -xf -
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$base/site" "$base"/pack/wheels/*.whl
export PYTHONPATH="$base/pack/ort:$base/site:$PWD" PATH="$base/site/bin:$PATH" PYTHONUNBUFFERED=1
export EE559_RUNS="$base/pack/runs" BENTOML_HOME="$base/pack/runs/bentoml" BENTOML_DO_NOT_TRACK=true
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
"$py" -m loadtests.gpu_check --device cuda --runs "$base/pack/runs" --out "${OUT:-$base/out}" "$@"
