"""softmax fp16 T=1024 through the API: wall with a sync, the GPU span of the call (events before/after), the
kernels' span alone (variant called directly), the host time to the first launch; medians of 400."""
import statistics, sys, time, json
import numpy as np, cupy as cp
sys.path.insert(0, ".")
import workbench as wb
from workbench import registry
B, H, T, D = 2, 16, int(sys.argv[1]) if len(sys.argv) > 1 else 1024, 64
rng = np.random.default_rng(0)
q, k, v, do = (cp.asarray(rng.standard_normal((B, H, T, D)).astype(np.float16)) for _ in range(4))
op = wb.PUBLIC_OPS["softmax"]
dev = cp.cuda.Device()
e0, e1 = cp.cuda.Event(), cp.cuda.Event()
def api():
    out, pb = wb.vjp(op, q, k, v, backend="cupy:fa2")
    return pb(do)
var = registry.get("softmax", "cupy", "fa2")
def direct():
    o, ctx = var.forward(q, k, v, causal=True, scale=D ** -0.5)
    return var.backward(ctx, do)
res = {}
for name, fn in (("api", api), ("direct", direct)):
    for _ in range(20):
        fn(); dev.synchronize()
    wall, span, host = [], [], []
    for _ in range(400):
        t0 = time.perf_counter(); e0.record(); fn(); t1 = time.perf_counter(); e1.record(); dev.synchronize()
        t2 = time.perf_counter()
        wall.append((t2 - t0) * 1e6); host.append((t1 - t0) * 1e6); span.append(cp.cuda.get_elapsed_time(e0, e1) * 1e3)
    res[name] = dict(wall_us=statistics.median(wall), gpu_span_us=statistics.median(span), host_us=statistics.median(host))
# the kernels back to back: 20 calls between two events
for name, fn in (("api", api), ("direct", direct)):
    dev.synchronize(); e0.record()
    for _ in range(50):
        fn()
    e1.record(); dev.synchronize()
    res[name]["pipelined_us_per_call"] = cp.cuda.get_elapsed_time(e0, e1) * 1e3 / 50
print(json.dumps(res, indent=1))
