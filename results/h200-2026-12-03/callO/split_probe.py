"""GPU time of every kernel of one fwd+bwd through the public API (CUDA events around each launch: the host is far
ahead of the GPU at long T, so each pair brackets one kernel), medians of R calls.  argv: op dtype T variant
[variant ...]; prints one JSON line per variant: {"variant", "T", "dtype", "total_us", "span_us", "kernels": [[label, us], ...]}."""
import statistics, sys, json, collections, os
import numpy as np, cupy as cp
import workbench as wb
from workbench.opspec import SPECS
from kernels.cupy import _module
op, dt, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = sys.argv[4:]
R = int(os.environ.get("REPS", "15"))
B, H, D = 2, 16, 64
rng = np.random.default_rng(0)
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
EV = []
POOL = [cp.cuda.Event() for _ in range(256)]
orig_call = _module.Prepared.__call__
def pcall(self, args):
    a, b = POOL[2 * len(EV)], POOL[2 * len(EV) + 1]
    a.record(); r = orig_call(self, args); b.record()
    EV.append((getattr(self.kernel, "name", "?"), a, b)); return r
_module.Prepared.__call__ = pcall
e0, e1 = cp.cuda.Event(), cp.cuda.Event()
dev = cp.cuda.Device()
for name in names:
    key = f"cupy:{name}"
    def call():
        out = wb.vjp(wb.PUBLIC_OPS[op], *arrs, backend=key)
        return out[1](do)
    try:
        for _ in range(3):
            EV.clear(); call(); dev.synchronize()
    except Exception as e:
        print(json.dumps(dict(variant=key, T=T, dtype=dt, error=f"{type(e).__name__}: {e}"[:300]))); continue
    per = collections.defaultdict(list); spans = []
    for _ in range(R):
        EV.clear(); e0.record(); call(); e1.record(); dev.synchronize()
        spans.append(cp.cuda.get_elapsed_time(e0, e1) * 1e3)
        for i, (lab, a, b) in enumerate(EV):
            per[(i, lab)].append(cp.cuda.get_elapsed_time(a, b) * 1e3)
    ks = [[f"{i:02d} {lab}", round(statistics.median(v), 1)] for (i, lab), v in sorted(per.items())]
    print(json.dumps(dict(variant=key, T=T, dtype=dt, total_us=round(sum(x[1] for x in ks), 1),
                          span_us=round(statistics.median(spans), 1), kernels=ks)), flush=True)
