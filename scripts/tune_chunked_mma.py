"""Time the tensor-core chunk core over segment lengths L (chunks per segment; 0 = whole sequences) to set
``kernels.cupy._chunked_mma.choose_segments``.  GPU only; CUDA events, median of --reps runs.

    python scripts/tune_chunked_mma.py --dtype float16 --T 4096 --T 16384 --T 65536 --json out/tune.json

Prints one row per (dtype, decay, T, L): forward and forward+backward milliseconds, and marks the L that
choose_segments picks, so the table shows what the heuristic costs against the best L measured.

    python scripts/tune_chunked_mma.py --zeros chunked_mma_fused2 --zeros chunked_mma_fused3 --dtype float16 \
        --T 4096 --T 16384 --L 4 --L 8 --L 11 --L 15 --L 16

times ZeroS's fused variants (cupy:<impl>, 3 gates) over L instead, marking the L each one's own rule picks
(fused, fused2: choose_segments; fused3: zeros.wave_segments; docs/kernels/zeros.md).
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
    ap.add_argument("--zeros", action="append", metavar="IMPL",
                    help="time this ZeroS variant (cupy:IMPL, e.g. chunked_mma_fused3) instead of the core")
    ap.add_argument("--dkdv", default="dqrev",
                    help="the core's dk/dv mode (kernels/cupy/_chunked_mma.py DKDV_MODES; default dqrev, the mode of "
                         "the default variants cupy:chunked_mma_dqr)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    import cupy as cp
    import numpy as np
    from kernels.cupy import _chunked_mma as mma
    if a.dkdv not in mma.DKDV_MODES:
        ap.error(f"--dkdv must be one of {', '.join(mma.DKDV_MODES)} (got {a.dkdv!r})")

    from workbench.inputs import numpy_dtype
    rows = []
    for dtype in a.dtype or ["float16"]:
        for T in a.T or [4096, 16384, 65536]:
            nch = -(-T // mma.C)
            Ls = a.L or sorted({0, 1, 2, 4, 8, 16, 32, 64, 128, 256} & set(range(nch + 1)) | {0})
            rng = cp.random.default_rng(0)
            # scaled before the cast: CuPy promotes bfloat16 * 0.5 to float32 (a bfloat16 sweep timed float32)
            q, k, v, do = ((rng.standard_normal((a.N, T, a.D), dtype=cp.float32) * 0.5).astype(numpy_dtype(dtype))
                           for _ in range(4))
            if q.dtype.name != dtype:
                raise SystemExit(f"tune_chunked_mma: inputs came out {q.dtype.name}, not {dtype}")
            g = -rng.random((a.N, T), dtype=cp.float32) if a.decay else None
            picked = mma.choose_segments(a.N, T, -(-a.D // mma.BV))
            for impl, L in [(z, L) for z in a.zeros for L in Ls] if a.zeros else [(None, L) for L in Ls]:
                if impl:                                       # a ZeroS fused variant (its own L rule marked)
                    from kernels.cupy import zeros
                    from workbench import registry
                    var = registry.get("zeros", "cupy", impl)
                    zs, zg = (rng.standard_normal(shape, dtype=cp.float32).astype(dtype)   # s, 3 gates
                              for shape in ((a.N, T), (a.N, T, 3)))
                    tiles = -(-a.D // zeros.FUSED_BW)
                    slots = zeros.fused_blocks_per_sm(dtype, a.D, a.D) * mma._sm_count()
                    picked = (zeros.wave_segments(a.N, T, tiles, slots) if zeros.FUSED_KINDS[impl].waves
                              else mma.choose_segments(a.N, T, tiles))

                    def fwd():
                        return var.forward(q, k, v, zs, zg, causal=True, L=L)

                    def fwdbwd():
                        _, ctx = fwd()
                        var.backward(ctx, do)
                else:
                    def fwd():
                        return mma.forward(q, k, v, g, scale=0.125, causal=True, split=3, L=L, dkdv=a.dkdv)

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
                what = impl or ('decayed' if a.decay else 'linear')
                row = dict(dtype=dtype, decay=a.decay, op=what, T=T, N=a.N, D=a.D, L=L, picked=L == picked,
                           dkdv=None if impl else a.dkdv, **times)
                rows.append(row)
                print(f"{dtype:9s} {what:8s} T={T:6d} L={L:4d}{' *' if L == picked else '  '}"
                      f" fwd {times['fwd']:8.3f} ms  fwd+bwd {times['fwdbwd']:8.3f} ms", flush=True)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
