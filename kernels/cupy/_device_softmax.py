"""One batched device run for the CuPy softmax kernels (the GPU is scarce: everything in one command).

    bash scripts/device.sh python -m kernels.cupy._device_softmax

1. compiles every instantiation group in parallel processes (fills CuPy's disk cache);
2. checks every cupy softmax variant x dtype x causal on the GPU sweep shapes (workbench.check.compare);
3. times fwd and fwd+bwd against torch SDPA (flash / efficient / cuDNN) with CUDA events (median);
4. prints the tables; JSON under $OUT.  Phases can be picked: WB_PHASES=compile,check,time.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import traceback

import numpy as np

OUT = os.environ.get("OUT", "out")
T0 = time.time()
RESULTS = {"check": [], "time": [], "notes": []}


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "softmax_device.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)


# ----------------------------------------------------------------------------- 1. compile
def _compile(group):
    fam, ct = group
    from kernels.cupy import softmax as cs
    t = time.time()
    try:
        cs._kernel(fam, ct, cs.expressions(fam, ct)[0])
        return fam, ct, round(time.time() - t, 1), "ok"
    except Exception as e:                     # noqa: BLE001
        return fam, ct, round(time.time() - t, 1), f"{type(e).__name__}: {e}"[:3000]


def compile_all():
    import multiprocessing as mp
    from kernels.cupy import softmax as cs
    groups = [(f, cs.CTYPE[d]) for f, dts in cs._FAMILY_DTYPES.items() for d in dts]
    with mp.get_context("spawn").Pool(len(groups)) as pool:
        for r in pool.imap_unordered(_compile, groups):
            log("compile", r)
            RESULTS["notes"].append(("compile",) + r)


# ----------------------------------------------------------------------------- 2. check
def bf16_ok() -> bool:
    try:
        import cupy as cp
        import ml_dtypes
        x = cp.asarray(np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16))
        return str(x.dtype) == "bfloat16"
    except Exception as e:                     # noqa: BLE001
        RESULTS["notes"].append(("bfloat16 unavailable", f"{type(e).__name__}: {e}"))
        log("bfloat16 unavailable:", type(e).__name__, e)
        return False


SMALL = [((2,), 1, 64, 64), ((2, 2), 127, 64, 64), ((2,), 127, 128, 128), ((2,), 127, 32, 32),
         ((2,), 127, 80, 80), ((2, 3), 67, 16, 24), ((1,), 300, 200, 256), ((1,), 129, 96, 40)]
LARGE = [((1, 2), 1024, 64, 64), ((1,), 1024, 128, 128), ((1,), 4097, 64, 64), ((1,), 4097, 128, 128)]


def check(shapes):
    from workbench.check import compare
    variants = {"naive": ["float32", "float16"], "flash": ["float32", "float16"], "flash_mma": ["float16"]}
    if bf16_ok():
        for v in variants.values():
            v.append("bfloat16")
    for lead, T, Dk, Dv in shapes:
        for name, dts in variants.items():
            for dt in dts:
                for causal in (True, False):
                    try:
                        r = compare("softmax", f"cupy:{name}", lead, T, Dk, Dv, dt, causal=causal)
                    except Exception as e:     # noqa: BLE001
                        r = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
                        traceback.print_exc()
                    row = dict(variant=name, shape=f"{lead}x{T}x{Dk}/{Dv}", dtype=dt, causal=causal, **r)
                    RESULTS["check"].append(row)
                    if not r.get("ok"):
                        log("FAIL", row)
        log("checked", lead, T, Dk, Dv)
        save()


# ----------------------------------------------------------------------------- 3. time
def _median_ms(fn, reps, warm=1, torch_events=False):
    if torch_events:
        import torch
        ev = lambda: torch.cuda.Event(enable_timing=True)    # noqa: E731
        sync = torch.cuda.synchronize
        el = lambda a, b: a.elapsed_time(b)                  # noqa: E731
    else:
        import cupy as cp
        ev = cp.cuda.Event
        sync = cp.cuda.Device().synchronize
        el = cp.cuda.get_elapsed_time
    for _ in range(warm):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        a, b = ev(), ev()
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(el(a, b))
    return statistics.median(ts)


def time_cell(dtype, D, T, reps, ours=("flash_mma",), peers=("FLASH_ATTENTION", "EFFICIENT_ATTENTION",
                                                                    "CUDNN_ATTENTION"), B=2, H=16):
    import cupy as cp
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from workbench import registry
    N, scale = B * H, 1.0 / math.sqrt(D)
    fl_fwd = 4.0 * N * T * T * D / 2             # causal: half the score matrix
    tdt = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    g = torch.Generator(device="cuda").manual_seed(0)
    tq, tk, tv, tdo = (torch.randn(B, H, T, D, device="cuda", dtype=tdt, generator=g) for _ in range(4))
    q, k, v, do = (cp.asarray(x.reshape(N, T, D)) for x in (tq, tk, tv, tdo))
    rows = []
    for name in ours:
        var = registry.get("softmax", "cupy", name)
        try:
            f = lambda: var.forward(q, k, v, causal=True, scale=scale)                       # noqa: E731
            fb = lambda: var.backward(var.forward(q, k, v, causal=True, scale=scale)[1], do)  # noqa: E731
            rows.append((f"cupy:{name}", _median_ms(f, reps), _median_ms(fb, reps)))
        except Exception as e:                 # noqa: BLE001
            rows.append((f"cupy:{name}", float("nan"), float("nan")))
            log("time fail", name, e)
    tq.requires_grad_(True); tk.requires_grad_(True); tv.requires_grad_(True)
    for peer in peers:
        try:
            with sdpa_kernel(getattr(SDPBackend, peer)):
                f = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)    # noqa: E731
                fb = lambda: torch.autograd.grad(f(), (tq, tk, tv), tdo)                  # noqa: E731
                rows.append((f"sdpa:{peer.split('_')[0].lower()}", _median_ms(f, reps, torch_events=True),
                             _median_ms(fb, reps, torch_events=True)))
        except Exception as e:                 # noqa: BLE001
            log("sdpa", peer, "unavailable:", str(e)[:200])
    for who, tf, tfb in rows:
        row = dict(dtype=dtype, D=D, T=T, B=B, H=H, who=who, fwd_ms=tf, fwdbwd_ms=tfb,
                   fwd_tflops=fl_fwd / tf / 1e9, fwdbwd_tflops=3.5 * fl_fwd / tfb / 1e9)
        RESULTS["time"].append(row)
        log(f"{dtype:8s} D={D:3d} T={T:5d} {who:18s} fwd {tf:8.3f} ms ({row['fwd_tflops']:6.1f} TF/s)  "
            f"fwd+bwd {tfb:8.3f} ms ({row['fwdbwd_tflops']:6.1f} TF/s)")
    save()
    del q, k, v, do, tq, tk, tv, tdo
    cp.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()


def timing():
    for D in (64, 128):
        for T in (4096, 16384):
            time_cell("float16", D, T, 20, ours=("flash_mma",) + (("flash",) if T == 4096 else ()))
    for D in (64, 128):
        time_cell("float32", D, 4096, 5, ours=("flash",), peers=("EFFICIENT_ATTENTION",))
    time_cell("float32", 64, 16384, 3, ours=("flash",), peers=("EFFICIENT_ATTENTION",))
    time_cell("float16", 64, 4096, 3, ours=("naive",), peers=())


# ----------------------------------------------------------------------------- 3b. tile candidates
TILE_SHAPES = [((2,), 1, 64, 64), ((2, 3), 67, 16, 24), ((2,), 300, 64, 64), ((1,), 1024, 128, 128),
               ((2,), 127, 32, 32), ((1,), 129, 96, 40)]


def per_kernel_ms(var, q, k, v, do, reps=3):
    """Median ms of each launch in one fwd + bwd (launch wrapped with events)."""
    import cupy as cp
    from kernels.cupy import softmax as cs
    real = cs.launch
    rec = []

    def timed(kernel, grid, block, args, shared_mem=0):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        real(kernel, grid, block, args, shared_mem)
        b.record()
        rec.append((kernel.name if hasattr(kernel, "name") else str(kernel), a, b))
    cs.launch = timed
    try:
        out = {}
        for _ in range(reps):
            rec.clear()
            o, ctx = var.forward(q, k, v, causal=True, scale=1.0 / math.sqrt(q.shape[-1]))
            var.backward(ctx, do)
            cp.cuda.Device().synchronize()
            for i, (nm, a, b) in enumerate(rec):
                out.setdefault(f"{i}:{nm}", []).append(cp.cuda.get_elapsed_time(a, b))
        return {nm: round(statistics.median(ts), 3) for nm, ts in out.items()}
    finally:
        cs.launch = real


def tile_experiment():
    import cupy as cp
    from kernels.cupy import softmax as cs
    base = dict(cs.TILES)
    from workbench.check import compare
    for label, table in (("base", base), ("candidates", {**base, **cs.CANDIDATES})):
        cs.TILES.clear()
        cs.TILES.update(table)
        for lead, T, Dk, Dv in TILE_SHAPES:
            for name, dts in (("flash", ("float32", "float16")), ("flash_mma", ("float16", "bfloat16"))):
                for dt in dts:
                    for causal in (True, False):
                        try:
                            r = compare("softmax", f"cupy:{name}", lead, T, Dk, Dv, dt, causal=causal)
                        except Exception as e:     # noqa: BLE001
                            r = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
                        row = dict(variant=name + "@" + label, shape=f"{lead}x{T}x{Dk}/{Dv}", dtype=dt,
                                   causal=causal, **r)
                        RESULTS["check"].append(row)
                        if not r.get("ok"):
                            log("FAIL", row)
        log("tiles", label, "checked")
        for dt, D, T, name, reps in (("float32", 64, 4096, "flash", 5), ("float32", 128, 4096, "flash", 5),
                                     ("float16", 128, 4096, "flash_mma", 10), ("float16", 128, 16384, "flash_mma", 5),
                                     ("float16", 64, 16384, "flash_mma", 5)):
            peers = ("EFFICIENT_ATTENTION",) if dt == "float32" else ("FLASH_ATTENTION",)
            n0 = len(RESULTS["time"])
            time_cell(dt, D, T, reps, ours=(name,), peers=peers if label == "base" else ())
            for r in RESULTS["time"][n0:]:
                r["who"] += "@" + label
            from workbench import registry
            rng = cp.random.default_rng(0)
            q, k, v, do = (rng.standard_normal((32, T, D), dtype=cp.float32).astype(dt) for _ in range(4))
            bd = per_kernel_ms(registry.get("softmax", "cupy", name), q, k, v, do)
            RESULTS["notes"].append(("per-kernel ms", label, dt, D, T, name, bd))
            log("per-kernel", label, dt, D, T, name, bd)
            del q, k, v, do
        save()
    cs.TILES.clear()
    cs.TILES.update(base)


# ----------------------------------------------------------------------------- 4. report
def report():
    bad = [r for r in RESULTS["check"] if not r.get("ok")]
    print("\n=== check: %d cells, %d failing" % (len(RESULTS["check"]), len(bad)))
    worst = {}
    for r in RESULTS["check"]:
        key = (r["variant"], r["dtype"])
        errs = [r.get(n, float("nan")) for n in ("out", "dq", "dk", "dv")]
        worst[key] = max(worst.get(key, 0.0), max(errs) if all(np.isfinite(errs)) else float("inf"))
    for (v, dt), e in sorted(worst.items()):
        n = sum(1 for r in RESULTS["check"] if (r["variant"], r["dtype"]) == (v, dt))
        nb = sum(1 for r in bad if (r["variant"], r["dtype"]) == (v, dt))
        print(f"  cupy:{v:10s} {dt:9s} cells {n:3d}  failing {nb:3d}  worst rel err {e:.2e}")
    for r in bad[:40]:
        print("  FAIL", {k: r.get(k) for k in ("variant", "shape", "dtype", "causal", "out", "dq", "dk", "dv",
                                                "error")})
    print("\n=== time (B=2, H=16, causal; median ms; TF/s with fwd+bwd = 3.5 x fwd FLOPs)")
    for r in RESULTS["time"]:
        print(f"  {r['dtype']:8s} D={r['D']:3d} T={r['T']:5d} {r['who']:18s} fwd {r['fwd_ms']:9.3f} "
              f"({r['fwd_tflops']:6.1f})  fwd+bwd {r['fwdbwd_ms']:9.3f} ({r['fwdbwd_tflops']:6.1f})")


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    phases = os.environ.get("WB_PHASES", "compile,check,time,check_large").split(",")
    try:
        if "compile" in phases:
            compile_all()
        if "tiles" in phases:
            tile_experiment()
        if "check" in phases:
            check(SMALL)
        if "time" in phases:
            timing()
        if "check_large" in phases:
            check(LARGE)
    except (Exception, KeyboardInterrupt):     # noqa: BLE001
        traceback.print_exc()
    finally:
        save()
        report()
    sys.exit(0)
