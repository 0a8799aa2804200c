"""A target for Nsight Compute: one fwd+bwd through the public API on CuPy arrays, after two warm-up calls,
between cudaProfilerStart and Stop (so `ncu --profile-from-start off` sees that call's kernels only).
B = 2, H = 16, D = 64, causal (the bench's headline shape).

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy --section LaunchStats \\
        python scripts/ncu_target.py linear float32 cupy:chunked_mma 16384
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("op", choices=("softmax", "linear", "decayed", "zeros"))
    ap.add_argument("dtype", choices=("float16", "bfloat16", "float32", "float64"))
    ap.add_argument("backend", help="backend or backend:variant, e.g. cupy:chunked_mma")
    ap.add_argument("T", type=int)
    a = ap.parse_args(argv)
    import numpy as np
    import cupy as cp
    import workbench as wb
    from workbench.inputs import random_inputs
    arrays = [cp.asarray(x) for x in random_inputs(a.op, (2, 16), a.T, 64, 64, "float32", 0)]
    arrays = [x.astype(a.dtype) if i < 3 else x for i, x in enumerate(arrays)]     # q, k, v; decays stay float32
    do = cp.asarray(np.random.default_rng(5).standard_normal((2, 16, a.T, 64))).astype(a.dtype)
    fn = wb.PUBLIC_OPS[a.op]

    def fwdbwd():
        _, pullback = wb.vjp(fn, *arrays, backend=a.backend)
        pullback(do)
    fwdbwd()
    fwdbwd()
    cp.cuda.Device().synchronize()
    cp.cuda.profiler.start()
    fwdbwd()
    cp.cuda.Device().synchronize()
    cp.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
