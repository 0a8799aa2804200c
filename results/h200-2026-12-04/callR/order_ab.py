"""A/B of softmax float16 (B=2, H=16, D=64, causal, cupy:fa2) through the API in one process, alternating rounds:
  new      the prepared pair (softmax.Fa2Run), fa2_bwd_pre queued before the gradients are allocated, the gradients
           in one allocation (OUTPUTS_GROUP_MAX)
  apart    as new, the gradients in three allocations (OUTPUTS_GROUP_MAX = 0: callQ's tree)
  merged   as apart, the gradients allocated before fa2_bwd_pre (OutputLayout.separate -> False: the order of the
           tree before callQ)
  general  the general path (no prepared pair: _fa2_forward / _fa2_backward through the plan's partial), new order
Per round: the median wall of synced wb.vjp + pullback calls, the median host time to the call's return, and the
kernels back to back (the variant called directly, 50 calls between two events).  Prints JSON."""
import json, statistics, sys, time
import numpy as np, cupy as cp
sys.path.insert(0, ".")
import workbench as wb
from workbench import backends, ops, registry
T = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
ROUNDS, CALLS = int(sys.argv[2]) if len(sys.argv) > 2 else 8, 300
B, H, D = 2, 16, 64
rng = np.random.default_rng(0)
q, k, v, do = (cp.asarray(rng.standard_normal((B, H, T, D)).astype(np.float16)) for _ in range(4))
op = wb.PUBLIC_OPS["softmax"]
dev = cp.cuda.Device()
e0, e1 = cp.cuda.Event(), cp.cuda.Event()
var = registry.get("softmax", "cupy", "fa2")
prep, sep, group = var.prepare, backends.OutputLayout.separate, backends.OUTPUTS_GROUP_MAX
def setup(form):
    object.__setattr__(var, "prepare", None if form == "general" else prep)
    backends.OutputLayout.separate = (lambda self: False) if form == "merged" else sep
    backends.OUTPUTS_GROUP_MAX = 0 if form in ("apart", "merged") else group
    ops._PLANS.clear()
    for _ in range(30):
        api(); dev.synchronize()
    plan = next(iter(ops._PLANS.values()))
    assert (plan.bwd is var.backward) == (form == "general"), form
def api():
    out, pb = wb.vjp(op, q, k, v)
    return pb(do)
forms = ("new", "apart", "merged", "general")
rounds = {f: [] for f in forms}
for r in range(ROUNDS):
    for f in (forms if r % 2 == 0 else forms[::-1]):
        setup(f)
        wall, host = [], []
        for _ in range(CALLS):
            t0 = time.perf_counter(); api(); t1 = time.perf_counter(); dev.synchronize(); t2 = time.perf_counter()
            wall.append((t2 - t0) * 1e6); host.append((t1 - t0) * 1e6)
        dev.synchronize(); e0.record()
        for _ in range(50):
            o, ctx = var.forward(q, k, v, causal=True, scale=D ** -0.5)
            var.backward(ctx, do)
        e1.record(); dev.synchronize()
        rounds[f].append(dict(wall_us=statistics.median(wall), host_us=statistics.median(host),
                              kernels_us=cp.cuda.get_elapsed_time(e0, e1) * 1e3 / 50))
res = {f: {key: statistics.median(x[key] for x in rounds[f]) for key in rounds[f][0]} for f in forms}
for f in forms:
    res[f]["wall_over_kernels"] = res[f]["wall_us"] / res[f]["kernels_us"]
res["wins_new_vs_apart"] = sum(a["wall_us"] < b["wall_us"] for a, b in zip(rounds["new"], rounds["apart"]))
res["wins_new_vs_merged"] = sum(a["wall_us"] < b["wall_us"] for a, b in zip(rounds["new"], rounds["merged"]))
res["rounds"] = rounds
res["T"] = T
print(json.dumps(res, indent=1))
