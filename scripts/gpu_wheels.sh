#!/usr/bin/env bash
# `make gpu-wheels`: download, on a machine with a package registry, the wheels `make gpu-check` installs on a GPU
# machine without internet (Python 3.12, linux x86_64) that has torch, transformers, accelerate, peft,
# safetensors, tokenizers, pandas, pyarrow but not TRL, datasets and their small dependencies.
# Versions come from requirements.lock; --no-deps: the list below IS the closure the stages import (checked by
# tests/scripts/test_gpu_check.py against a Python that has only the GPU machine's packages). pyarrow (~45 MB)
# rides along because datasets wants pyarrow>=21 and the GPU machine's may be older; gpu_check installs it only then.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_WHEELS_DIR:-.gpu-wheels}
PYVER=${GPU_WHEELS_PYTHON:-3.12}  # 3.11 here gives wheels for a dry run of gpu_check in this venv
ABI=cp${PYVER/./}
PIP=${PIP:-.venv/bin/python -m pip}
PACKAGES="trl datasets dill multiprocess xxhash jsonlines attrs fsspec pyarrow hjson py-cpuinfo msgpack ninja einops
pydantic pydantic-core annotated-types typing-inspection typing-extensions"
BUILT="deepspeed"  # the ZeRO-2 stage; an sdist on PyPI: built here into a py3-none-any wheel without compiled ops
pin_of() {  # the requirements.lock line of a distribution (- and _ alike)
  local pin
  pin=$(grep -i -E "^${1//-/[-_]}==" requirements.lock || true)
  [ -n "$pin" ] || { echo "gpu-wheels: $1 is not pinned in requirements.lock" >&2; exit 1; }
  echo "$pin"
}
pins=()
for p in $PACKAGES; do pins+=("$(pin_of "$p")"); done
mkdir -p "$OUT"
$PIP download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 \
  --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$OUT" "${pins[@]}"
for p in $BUILT; do  # --no-build-isolation: its setup.py imports the installed torch (an isolated build would fetch one)
  DS_BUILD_OPS=0 $PIP wheel --quiet --no-deps --no-build-isolation -w "$OUT" "$(pin_of "$p")"
done
size=$(du -sm "$OUT" | cut -f1)
echo "gpu-wheels: $(ls "$OUT" | wc -l) wheels, ${size} MiB in $OUT"
[ "$size" -le 64 ] || { echo "gpu-wheels: $OUT is ${size} MiB, over the 64 MiB limit" >&2; exit 1; }
