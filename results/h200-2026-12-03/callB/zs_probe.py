"""ZeroS fused3 at T = 64 through the API: host time per call (no sync, as bench's "API host us") per dtype, and
each prepared launch's host time (Prepared.__call__ wrapped), then again with every tz / scan kernel's preferred
shared-memory carveout at the maximum."""
import json, statistics, sys, time
import numpy as np, cupy as cp
sys.path.insert(0, ".")
import workbench as wb
from workbench.inputs import random_inputs
from kernels.cupy import _module, zeros as Z
op = wb.PUBLIC_OPS["zeros"]
dev = cp.cuda.Device()
res = {}

def host_per_call(fn, n=1000):
    for _ in range(50):
        fn()
    dev.synchronize()
    s = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); s.append(time.perf_counter() - t0)
    dev.synchronize()
    return statistics.median(s) * 1e6

def launches(fn, n=300):
    """median host us of each Prepared call, by kernel name, over n calls of fn."""
    rec, orig = {}, _module.Prepared.__call__
    def timed(self, args):
        t0 = time.perf_counter(); orig(self, args)
        rec.setdefault(getattr(self.kernel, "name", "?")[:60], []).append((time.perf_counter() - t0) * 1e6)
    _module.Prepared.__call__ = timed
    try:
        for _ in range(n):
            fn()
        dev.synchronize()
    finally:
        _module.Prepared.__call__ = orig
    return {k: round(statistics.median(v), 2) for k, v in rec.items()}

for dt in ("float16", "float32"):
    xs = [cp.asarray(a) for a in random_inputs("zeros", (1, 1), 64, 64, 64, dt, seed=0)]
    do = cp.ones((1, 1, 64, 64), dtype=xs[0].dtype)
    fwd = lambda: op(*xs, backend="cupy:chunked_mma_fused3")
    fb = lambda: wb.vjp(op, *xs, backend="cupy:chunked_mma_fused3")[1](do)
    r = res[dt] = dict(fwd_host_us=host_per_call(fwd), fwdbwd_host_us=host_per_call(fb))
    r["fwd_launch_us"] = launches(fwd)
    r["fwdbwd_launch_us"] = launches(fb)
    # the same with sync after each call: is any launch slow only when the GPU is idle/busy?
    r["fwd_launch_us_synced"] = launches(lambda: (fwd(), dev.synchronize()))
# carveout at max for every kernel the plans hold
n = 0
for P in list(Z._FUSED_PLANS.values()):
    objs = [P] + list(P.backward.values())
    for o in objs:
        for a in dir(o):
            p = getattr(o, a, None)
            if isinstance(p, _module.Prepared):
                try:
                    p.kernel.preferred_shared_memory_carveout = 100; n += 1
                except Exception as e:
                    res.setdefault("carveout_errors", []).append(f"{a}: {e}")
res["carveout_set"] = n
for dt in ("float16", "float32"):
    xs = [cp.asarray(a) for a in random_inputs("zeros", (1, 1), 64, 64, 64, dt, seed=0)]
    do = cp.ones((1, 1, 64, 64), dtype=xs[0].dtype)
    fwd = lambda: op(*xs, backend="cupy:chunked_mma_fused3")
    fb = lambda: wb.vjp(op, *xs, backend="cupy:chunked_mma_fused3")[1](do)
    res[dt]["carveout100"] = dict(fwd_host_us=host_per_call(fwd), fwdbwd_host_us=host_per_call(fb),
                                  fwd_launch_us=launches(fwd))
print(json.dumps(res, indent=1))
