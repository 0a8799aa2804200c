"""A/B of the pairs walkers' choices (XS_PAIR_LOWREG, XS_PAIR_SEG_STAGES): fwd+bwd of the core through
_chunked_mma.forward / backward (xscale 2, conversions included), CUDA events, interleaved rounds, medians; results
compared with the first configuration's."""
import json, sys, itertools
import numpy as np, cupy as cp
from kernels.cupy import _chunked_mma as mma
out = sys.argv[1]
res = {}
for T in (65536, 16384):
    rng = np.random.default_rng(0)
    q, k, v, do = (cp.asarray(rng.standard_normal((32, T, 64)), cp.float32) for _ in range(4))
    cfgs = list(itertools.product((True, False), (2, 3)))
    ref = None
    def run():
        o, ctx = mma.forward(q, k, v, None, scale=0.125, dkdv=mma.XS_MODE, xscale=2)
        dq, dk, dv, _, _ = mma.backward(ctx, do)
        return o, dq, dk, dv
    times = {c: [] for c in cfgs}
    diffs = {}
    for c in cfgs:
        mma.XS_PAIR_LOWREG, mma.XS_PAIR_SEG_STAGES = c
        mma._PLANS.clear()
        got = run(); cp.cuda.Device().synchronize()
        if ref is None:
            ref = [x.copy() for x in got]
        diffs[str(c)] = [float(cp.abs(a - b).max() / cp.abs(b).max()) for a, b in zip(got, ref)]
    for rnd in range(12):
        for c in cfgs:
            mma.XS_PAIR_LOWREG, mma.XS_PAIR_SEG_STAGES = c
            mma._PLANS.clear()
            run()
            s, e = cp.cuda.Event(), cp.cuda.Event()
            s.record(); run(); e.record(); e.synchronize()
            times[c].append(cp.cuda.get_elapsed_time(s, e))
    res[T] = {str(c): dict(median_ms=float(np.median(times[c])), min_ms=float(np.min(times[c])), diff=diffs[str(c)]) for c in cfgs}
    print(T, json.dumps(res[T], indent=1), flush=True)
json.dump(res, open(out, "w"), indent=1)
