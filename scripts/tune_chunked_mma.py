"""Time the tensor-core chunk core over segment lengths L (chunks per segment; 0 = whole sequences) to set
``kernels.cupy._chunked_mma.choose_segments``.  GPU only; CUDA events, median of --reps runs.

    python scripts/tune_chunked_mma.py --dtype float16 --T 4096 --T 16384 --T 65536 --json out/tune.json

Prints one row per (dtype, decay, T, L): forward and forward+backward milliseconds, and marks the L that
choose_segments picks, so the table shows what the heuristic costs against the best L measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", action="append", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--T", action="append", type=int)
    ap.add_argument("--L", action="append", type=int, help="segment lengths to try (default: a sweep)")
    ap.add_argument("--N", type=int, default=32, help="leading dims flattened (default 32 = B 2 x H 16)")
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--decay", action="store_true", help="time the decayed core (default: linear)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    import cupy as cp
    import numpy as np
    from kernels.cupy import _chunked_mma as mma

    rows = []
    for dtype in a.dtype or ["float16"]:
        for T in a.T or [4096, 16384, 65536]:
            nch = -(-T // mma.C)
            Ls = a.L or sorted({0, 1, 2, 4, 8, 16, 32, 64, 128, 256} & set(range(nch + 1)) | {0})
            rng = cp.random.default_rng(0)
            q, k, v, do = (rng.standard_normal((a.N, T, a.D), dtype=cp.float32).astype(dtype) * 0.5
                           for _ in range(4))
            g = -rng.random((a.N, T), dtype=cp.float32) if a.decay else None
            picked = mma.choose_segments(a.N, T, -(-a.D // mma.BV))
            for L in Ls:
                def fwd():
                    return mma.forward(q, k, v, g, scale=0.125, causal=True, split=3, L=L)

                def fwdbwd():
                    _, ctx = fwd()
                    mma.backward(ctx, do)
                times = {}
                for name, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
                    fn()
                    ev = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(a.reps)]
                    for s, e in ev:
                        s.record()
                        fn()
                        e.record()
                    ev[-1][1].synchronize()
                    times[name] = float(np.median([cp.cuda.get_elapsed_time(s, e) for s, e in ev]))
                row = dict(dtype=dtype, decay=a.decay, T=T, N=a.N, D=a.D, L=L, picked=L == picked, **times)
                rows.append(row)
                print(f"{dtype:9s} {'decayed' if a.decay else 'linear':8s} T={T:6d} L={L:4d}{' *' if L == picked else '  '}"
                      f" fwd {times['fwd']:8.3f} ms  fwd+bwd {times['fwdbwd']:8.3f} ms", flush=True)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
