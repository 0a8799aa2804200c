#!/usr/bin/env bash
# The GPU machine's NVRTC (12.9.86, the nvidia-cuda-nvrtc-cu12 wheel cupy-cuda12x brings) for the CPU machines:
# downloads the wheel and unpacks its libraries into .nvrtc12/ (git-ignored), for
#   python scripts/ptxas_report.py --nvrtc .nvrtc12/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 ...
# Register counts quoted in docs/kernels/*.md come from this version (see docs/testing.md, "Registers").
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE="$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)"   # a worktree's too
grep -qx '/.nvrtc12/' "$EXCLUDE" 2>/dev/null || { mkdir -p "$(dirname "$EXCLUDE")"; echo '/.nvrtc12/' >> "$EXCLUDE"; }
VERSION="${NVRTC_VERSION:-12.9.86}"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .nvrtc12 "nvidia-cuda-nvrtc-cu12==$VERSION"
python3 -m zipfile -e .nvrtc12/nvidia_cuda_nvrtc_cu12-"$VERSION"-*.whl .nvrtc12/
ls .nvrtc12/nvidia/cuda_nvrtc/lib/libnvrtc.so.12
