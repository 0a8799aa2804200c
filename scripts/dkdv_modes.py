"""Time fwd+bwd of cupy:chunked_mma against its dk/dv rungs (kernels/cupy/_chunked_mma.py DKDV_MODES: chunked_mma_dkdv2,
chunked_mma_dkdv8, chunked_mma_dkdv8r, chunked_mma_dqf) on one GPU, and check each rung's output and gradients against the default's
(max relative error, max |a - b| / max |b| per array).  B = 2, H = 16, D = 64, causal; CUDA events (the bench's
time_gpu: L2 flushed before each call), median of 20.

    python scripts/dkdv_modes.py                      # linear and decayed, float16 and bfloat16, T = 16384, 65536
    python scripts/dkdv_modes.py --T 16384 --ops decayed --dtypes float16
    python scripts/dkdv_modes.py --variants chunked_mma chunked_mma_dqf
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = ("chunked_mma", "chunked_mma_dkdv2", "chunked_mma_dkdv8", "chunked_mma_dkdv8r", "chunked_mma_dqf")


def main(argv=None) -> int:
    import cupy as cp
    import ml_dtypes
    import kernels.cupy  # noqa: F401  (registers the variants)
    from workbench import registry
    from workbench.bench.timing import time_gpu
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--ops", nargs="+", default=["linear", "decayed"])
    ap.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="cupy variants; the first is the reference")
    a = ap.parse_args(argv)
    B, H, D = 2, 16, 64
    print("op       dtype     T      " + "  ".join(f"{v:>20s}" for v in a.variants) + f"   (fwd+bwd ms; max rel err vs {a.variants[0]})")
    for op in a.ops:
        for dt in a.dtypes:
            npdt = ml_dtypes.bfloat16 if dt == "bfloat16" else np.dtype(dt)
            for T in a.T:
                rng = np.random.default_rng(0)
                arr = [(rng.standard_normal((B, H, T, D)) * 0.5).astype(np.float32) for _ in range(4)]
                q, k, v, do = (cp.asarray(x.astype(npdt)) for x in arr)
                extra = ()
                if op == "decayed":
                    extra = (cp.asarray(rng.uniform(-1.0, -0.01, (B, H, T)).astype(np.float32)),)   # log decays
                res, ref = [], None
                for name in a.variants:
                    var = registry.get(op, "cupy", name)

                    def step():
                        out, ctx = var.forward(q, k, v, *extra)
                        return (out,) + tuple(var.backward(ctx, do))
                    outs = step()                                  # warm-up (compiles), and the values
                    ms = time_gpu(step, reps=a.reps).ms_median
                    got = [cp.asnumpy(x).astype(np.float64) for x in outs]
                    if ref is None:
                        ref, err = got, 0.0
                    else:
                        err = max(float(np.max(np.abs(x - r)) / max(np.max(np.abs(r)), 1e-30)) for x, r in zip(got, ref))
                    res.append(f"{ms:8.3f} ms {err:8.1e}")
                print(f"{op:8s} {dt:9s} {T:6d} " + "  ".join(f"{r:>20s}" for r in res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
