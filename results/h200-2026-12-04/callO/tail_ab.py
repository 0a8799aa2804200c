"""A/B of softmax float16 (B=2, H=16, D=64, causal) through the API: cupy:fa2_atomic against cupy:fa2_tail in one
process, alternating rounds; per round the median wall of synced wb.vjp + pullback calls, the median host time to
the call's return, and the kernels back to back (the variant called directly, 50 calls between two events).
Prints JSON: per form the median over rounds and every round's numbers."""
import statistics, sys, time, json
import numpy as np, cupy as cp
sys.path.insert(0, ".")
import workbench as wb
from workbench import registry
T = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
ROUNDS, CALLS = int(sys.argv[2]) if len(sys.argv) > 2 else 8, 300
B, H, D = 2, 16, 64
rng = np.random.default_rng(0)
q, k, v, do = (cp.asarray(rng.standard_normal((B, H, T, D)).astype(np.float16)) for _ in range(4))
op = wb.PUBLIC_OPS["softmax"]
dev = cp.cuda.Device()
e0, e1 = cp.cuda.Event(), cp.cuda.Event()
forms = ("fa2_atomic", "fa2_tail")
def api(name):
    out, pb = wb.vjp(op, q, k, v, backend=f"cupy:{name}")
    return pb(do)
def direct(var):
    o, ctx = var.forward(q, k, v, causal=True, scale=D ** -0.5)
    return var.backward(ctx, do)
rounds = {f: [] for f in forms}
for f in forms:
    for _ in range(30):
        api(f); dev.synchronize()
for r in range(ROUNDS):
    for f in (forms if r % 2 == 0 else forms[::-1]):
        wall, host = [], []
        for _ in range(CALLS):
            t0 = time.perf_counter(); api(f); t1 = time.perf_counter(); dev.synchronize(); t2 = time.perf_counter()
            wall.append((t2 - t0) * 1e6); host.append((t1 - t0) * 1e6)
        var = registry.get("softmax", "cupy", f)
        dev.synchronize(); e0.record()
        for _ in range(50):
            direct(var)
        e1.record(); dev.synchronize()
        rounds[f].append(dict(wall_us=statistics.median(wall), host_us=statistics.median(host),
                              kernels_us=cp.cuda.get_elapsed_time(e0, e1) * 1e3 / 50))
res = {f: {key: statistics.median(x[key] for x in rounds[f]) for key in rounds[f][0]} for f in forms}
res["rounds"] = rounds
res["T"] = T
print(json.dumps(res, indent=1))
