#!/usr/bin/env bash
# For a GPU machine without network: download, on a networked machine, the wheels it lacks into .whl/
# (git-ignored): numpy 2.4 (numba-cuda needs numpy < 2.5), fla-core and einops (the flash-linear-attention
# peer), for CPython 3.12 on x86-64 Linux.  Copy .whl/ over and run `WHEELS=.whl bash scripts/gpu_session.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "numpy==2.4.*" fla-core==0.6.0 einops
