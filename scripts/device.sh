#!/usr/bin/env bash
# Check that this machine can run the GPU work, then (optionally) run a command:
#
#   bash scripts/device.sh                                     # report only; exit 1 if no usable GPU
#   bash scripts/device.sh python cli.py check --backend cupy  # report, then run the command
#
# The report: the GPU (nvidia-smi: name, driver, the CUDA version the driver supports), the CuPy wheel
# that fits it (cupy-cuda12x for a CUDA 12 driver, cupy-cuda13x for CUDA 13; install with
# `python -m pip install -e ".[gpu-cuda12]"` or `".[gpu-cuda13]"`), and whether numpy, numba.cuda and cupy
# import and see the device.  docs/gpu.md walks through the whole GPU session.
#
# Environment:
#   PYTHON=python3        the interpreter to use
#   DEVICE_INFO=FILE      also write the report to FILE (gpu_session.sh keeps it with its results)
#   WHEELS=DIR            a GPU machine without network: install the wheels in DIR first (pip --no-index
#                         --target, put first on PYTHONPATH); download them elsewhere, e.g. with
#                         scripts/fetch_wheels.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

if [ -n "${WHEELS:-}" ]; then
  site="${TMPDIR:-/tmp}/workbench-site"
  "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl \
    || { echo "device.sh: installing the wheels in $WHEELS failed" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

report() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    local cuda
    cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\..*/\1/p' | head -n 1)
    echo "driver supports CUDA ${cuda:-?}: the CuPy wheel for it is cupy-cuda${cuda:-<12|13>}x" \
         "(pip install -e \".[gpu-cuda${cuda:-<12|13>}]\")"
  else
    echo "nvidia-smi not found: no NVIDIA driver on this machine"
  fi
  "$PY" - <<'EOF'
import importlib
for name in ("numpy", "numba", "cupy", "torch", "triton", "fla"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__})")
try:
    from workbench import backends
    for b in ("numba", "cupy"):
        ok, why = backends.status(b)
        print(f"backend {b}: {'usable' if ok else 'NOT usable'} ({why})")
    print("gpu:", "yes" if backends.gpu_available() else "no")
except Exception as e:
    print(f"workbench does not import: {type(e).__name__}: {e}")
EOF
}

if [ -n "${DEVICE_INFO:-}" ]; then
  mkdir -p "$(dirname "$DEVICE_INFO")"
  report 2>&1 | tee "$DEVICE_INFO"
else
  report 2>&1
fi
if [ "$#" -gt 0 ]; then
  "$@"
else
  "$PY" -c "from workbench.backends import gpu_available; raise SystemExit(0 if gpu_available() else 1)"
fi
