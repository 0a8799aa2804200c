"""Where the host time of one synced call goes at long T: every launch (Prepared.__call__), allocation
(cupy.empty / cupy.cuda.alloc / OutputLayout.new) timed on the host, per call, medians of 300 calls; plus the
GPU span.  argv: op dtype T [variant]."""
import statistics, sys, time, json, collections, os
import numpy as np, cupy as cp
sys.path.insert(0, os.environ.get("TREE", "."))
import workbench as wb
from workbench import registry, backends
from kernels.cupy import _module
op, dt, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
name = sys.argv[4] if len(sys.argv) > 4 else None
B, H, D = 2, 16, 64
rng = np.random.default_rng(0)
from workbench.opspec import SPECS
var = registry.get(op, "cupy", name) if name else registry.get(op, "cupy", dtype=dt)
print("variant", var.key if hasattr(var, "key") else var, "tree", os.path.dirname(wb.__file__))
arrs = []
for a in SPECS[op].arrays:
    if a.name in ("q", "k", "v"):
        x = rng.standard_normal((B, H, T, D)) * 0.3
    elif a.name == "log_decay":
        x = -rng.uniform(0.01, 0.1, (B, H, T))
    elif a.name == "s":
        x = rng.standard_normal((B, H, T))
    elif a.name == "gates":
        x = rng.standard_normal((B, H, T, 2))
    else:
        raise SystemExit(f"unknown array {a.name}")
    arrs.append(cp.asarray(x.astype(dt)))
do = cp.asarray(rng.standard_normal((B, H, T, D)).astype(dt))
EV = []            # (label, t) events within one call
def stamp(label):
    EV.append((label, time.perf_counter()))
def wrap(obj, attr, label):
    f = getattr(obj, attr)
    def g(*a, **k):
        t0 = time.perf_counter(); r = f(*a, **k); EV.append((label, t0, time.perf_counter())); return r
    setattr(obj, attr, g)
wrap(cp, "empty", "cp.empty"); wrap(cp, "full", "cp.full"); wrap(cp.cuda, "alloc", "cp.cuda.alloc")
orig_call = _module.Prepared.__call__
def pcall(self, args):
    t0 = time.perf_counter(); r = orig_call(self, args)
    EV.append(("launch " + getattr(self.kernel, "name", "?")[:40], t0, time.perf_counter())); return r
_module.Prepared.__call__ = pcall
orig_new = backends.OutputLayout.new
def onew(self, xp):
    t0 = time.perf_counter(); r = orig_new(self, xp); EV.append((f"OutputLayout.new {self.nbytes>>10} KB", t0, time.perf_counter())); return r
backends.OutputLayout.new = onew
fwd_kw = {}
def direct():
    out = wb.vjp(wb.PUBLIC_OPS[op], *arrs, backend=var.key if hasattr(var, "key") else f"cupy:{var.name}")
    return out[1](do)
dev = cp.cuda.Device()
e0, e1 = cp.cuda.Event(), cp.cuda.Event()
for _ in range(20):
    direct(); dev.synchronize()
rows = collections.defaultdict(list); host, span, wall = [], [], []
for _ in range(300):
    EV.clear()
    t0 = time.perf_counter(); e0.record(); direct(); t1 = time.perf_counter(); e1.record(); dev.synchronize(); t2 = time.perf_counter()
    host.append((t1 - t0) * 1e6); wall.append((t2 - t0) * 1e6); span.append(cp.cuda.get_elapsed_time(e0, e1) * 1e3)
    for i, (lab, a, b) in enumerate(EV):
        rows[f"{i:02d} {lab}"].append(((a - t0) * 1e6, (b - a) * 1e6))
print(json.dumps(dict(host_us=statistics.median(host), wall_us=statistics.median(wall), span_us=statistics.median(span))))
for k in sorted(rows):
    v = rows[k]
    print(f"{k:60s} starts at {statistics.median([x[0] for x in v]):8.1f} us, takes {statistics.median([x[1] for x in v]):8.1f} us (max {max(x[1] for x in v):8.1f}) n={len(v)}")
