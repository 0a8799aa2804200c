#!/usr/bin/env bash
# Run a command on the lent GPU machine with this project's environment, in one call:
#   device tool:  run(command="bash scripts/device.sh python cli.py check --backend cupy", carry=[".whl"])
# It installs the carried wheels (.whl/: numpy 2.4.x, because the image's numpy 2.5 breaks numba.cuda;
# fla-core and einops, the flash-linear-attention peer) into /tmp/site, puts them and the repo first on
# PYTHONPATH, records the GPU under $OUT, then runs the command.  Fetch the wheels once, here:
#   bash scripts/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "scripts/device.sh: no wheels in .whl/ (run scripts/fetch_wheels.sh here and carry .whl)" >&2
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1 || true
python3 -c "import numpy, numba, cupy; from numba import cuda; print('numpy', numpy.__version__, 'numba', numba.__version__, 'cupy', cupy.__version__, 'gpu', cuda.get_current_device().name)" || true
if [ "$#" -gt 0 ]; then "$@"; fi
