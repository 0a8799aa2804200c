"""tc_seg_state (dqr) against tg_seg_state at 2 and 3 stages: the segment sums of one linear forward, per-launch CUDA
events (medians of 30), and the sums' agreement."""
import sys
import numpy as np
import cupy as cp
from kernels.cupy import _chunked_mma as mma

N, D = 32, 64
for T in map(int, sys.argv[1:]):
    for dt in ("float16", "bfloat16"):
        npdt = cp.float16 if dt == "float16" else __import__("ml_dtypes").bfloat16
        rng = cp.random.default_rng(0)
        k = rng.standard_normal((N, T, D), dtype=cp.float32).astype(npdt) if dt == "float16" else \
            cp.asarray(np.random.default_rng(0).standard_normal((N, T, D)).astype(npdt))
        v = rng.standard_normal((N, T, D), dtype=cp.float32).astype(cp.float16) if dt == "float16" else \
            cp.asarray(np.random.default_rng(1).standard_normal((N, T, D)).astype(npdt))
        res = {}
        for label, mode, st in (("tc (dqr)", "dqrev", None), ("tg 2 stages", "dqrev_wgs", 2), ("tg 3 stages", "dqrev_wgs", 3)):
            if st:
                mma.WG_SEG_STAGES = st
                mma._wg_seg_state.cache_clear()
            mma._PLANS.clear()
            P = mma._plan(dt, (N, T, D), D, 1, 1, True, None, None, None, False, False, mode)
            E = cp.full(P.seg_shape, cp.nan, cp.float32)
            args = (k, v, None, E, None) + P.segs + P.seg_args + (np.float32(1), P.g_kind)
            for _ in range(3):
                P.seg_state(args)
            ts = []
            for _ in range(30):
                a, b = cp.cuda.Event(), cp.cuda.Event()
                a.record(); P.seg_state(args); b.record(); b.synchronize()
                ts.append(cp.cuda.get_elapsed_time(a, b) * 1e3)
            res[label] = cp.asnumpy(E).astype(np.float64)
            ref = res["tc (dqr)"]
            err = np.abs(res[label] - ref).max() / np.abs(ref).max()
            from kernels.cupy._module import kernel_label
            print(f"T={T} {dt} {label:12s} {kernel_label(P.seg_state.kernel):40s} median {np.median(ts):8.1f} us "
                  f"min {np.min(ts):8.1f}  rel diff vs tc {err:.2e}  finite {np.isfinite(res[label]).all()}", flush=True)
