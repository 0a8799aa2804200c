"""Device run for the CuPy linear / decayed / ZeroS kernels: precompile, check, time against peers.

    python -m kernels.cupy._bench_chunked OUT_DIR [check_seconds]

1. compiles every INSTANTIATIONS entry (16 processes, filling CuPy's disk cache);
2. workbench.check.compare on the GPU sweep shapes for every cupy variant of the three ops (chunked
   first; stops starting new cells after check_seconds);
3. times fwd+bwd (CUDA events, 5 warm-ups, median of 20) at B=2, H=16, D=64, causal against
   fla 0.6 chunk_linear_attn (normalize=False) / chunk_simple_gla (g_gamma) and, for ZeroS, the paper's
   PyTorch prefix-sum form (a Dk x Dv state per token, cumsum), and prints a table last.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

OPS = ("linear", "decayed", "zeros")


def _compile(item):
    from kernels.cupy._module import get_kernel
    src, expr = item
    try:
        get_kernel(src, expr)
        return None
    except Exception as e:                                    # report, keep going
        return f"{src} {expr}: {type(e).__name__}: {str(e)[:400]}"


def precompile(log):
    from kernels.cupy import decayed, linear, zeros
    items = list(dict.fromkeys(linear.INSTANTIATIONS + decayed.INSTANTIATIONS + zeros.INSTANTIATIONS))
    t0 = time.time()
    with ProcessPoolExecutor(16) as ex:
        errs = [e for e in ex.map(_compile, items) if e]
    log(f"compiled {len(items)} instantiations in {time.time() - t0:.1f}s, {len(errs)} errors")
    for e in errs:
        log("  COMPILE ERROR " + e)


def check(log, seconds, out_dir):
    from workbench import check as wc
    cells = []
    for impl in ("naive", "chunked"):
        for op in OPS:
            for shape in wc.SHAPES["gpu" if impl == "naive" else "gpu-quick"]:
                for dtype in ("float32", "float16"):
                    for causal in wc.causal_values(op):
                        for label, extra in wc.option_grid(op, quick=False):
                            cells.append((impl, op, shape, dtype, causal, label, extra))
    t0, rows, bad = time.time(), [], 0
    for impl, op, shape, dtype, causal, label, extra in cells:
        if time.time() - t0 > seconds:
            log(f"check: time box reached after {len(rows)} of {len(cells)} cells")
            break
        opts = {k: v for k, v in extra.items() if k in ("feature_map", "normalize")}
        kw = {k: v for k, v in extra.items() if k in ("n_gates", "log_decay_range")}
        if op == "linear" and opts.get("normalize") and shape.T < 2:
            continue
        try:
            r = wc.compare(op, f"cupy:{impl}", lead=shape.lead, T=shape.T, Dk=shape.Dk, Dv=shape.Dv, dtype=dtype,
                           options=opts or None, causal=causal if op != "decayed" else None, **kw)
        except Exception as e:
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        errs = {k: v for k, v in r.items() if k not in ("ok", "tol", "seconds", "error")
                and isinstance(v, float)}
        worst = max(errs.values()) if errs else float("nan")
        rows.append(dict(impl=impl, op=op, shape=str(shape), dtype=dtype, causal=causal, opt=label,
                         ok=bool(r.get("ok")), worst=worst, errs=errs, error=r.get("error")))
        if not r.get("ok"):
            bad += 1
            log(f"FAIL {impl} {op} {shape} {dtype} causal={causal} {label}: {r.get('error') or errs}")
    with open(os.path.join(out_dir, "check_chunked.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    log(f"check: {len(rows)} cells, {bad} failing, {time.time() - t0:.0f}s")
    summary = {}
    for r in rows:
        key = (r["op"], r["impl"], r["dtype"])
        ok, n, worst = summary.get(key, (0, 0, 0.0))
        summary[key] = (ok + r["ok"], n + 1, max(worst, r["worst"] if np.isfinite(r["worst"]) else 9.9))
    log("op       variant  dtype    cells ok  worst rel err")
    for (op, impl, dt), (ok, n, worst) in sorted(summary.items()):
        log(f"{op:8s} {impl:8s} {dt:8s} {n:5d} {ok:3d}  {worst:.2e}")


def _time(fn, reps=20, warm=5):
    import cupy as cp
    for _ in range(warm):
        fn()
    cp.cuda.Device().synchronize()
    ts = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(cp.cuda.get_elapsed_time(a, b))
    return float(np.median(ts))


def _time_torch(fn, reps=20, warm=5):
    import torch
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return float(np.median(ts))


def _ours(op, T, dtype, B=2, H=16, D=64, impl="chunked"):
    import cupy as cp
    import workbench as wb
    rng = np.random.default_rng(0)
    q, k, v = (cp.asarray(rng.standard_normal((B, H, T, D)) / math.sqrt(D)).astype(dtype) for _ in range(3))
    do = cp.asarray(rng.standard_normal((B, H, T, D))).astype(dtype)
    if op == "linear":
        f, args, kw = wb.linear_attention, (q, k, v), {}
    elif op == "decayed":
        gam = np.log(1 - 2.0 ** (-5 - np.arange(H)))                     # RetNet-style per-head decay
        ld = cp.asarray(np.broadcast_to(gam[None, :, None], (B, H, T)).copy()).astype(dtype)
        f, args, kw = wb.decayed_attention, (q, k, v, ld), {}
    else:
        qn, kn = q / cp.linalg.norm(q, axis=-1, keepdims=True), k / cp.linalg.norm(k, axis=-1, keepdims=True)
        s = cp.asarray(rng.standard_normal((B, H, T))).astype(dtype)
        gates = cp.asarray(rng.standard_normal((B, H, T, 2))).astype(dtype)
        f, args, kw = wb.zeros_attention, (qn, kn, v, s, gates), {}

    def fwd():
        return f(*args, backend=f"cupy:{impl}", **kw)

    def fwdbwd():
        _, pb = wb.vjp(f, *args, backend=f"cupy:{impl}", **kw)
        return pb(do)

    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    fwdbwd()
    tf, tfb = _time(fwd), _time(fwdbwd)
    pool.free_all_blocks()
    base = pool.used_bytes()
    _, pb = wb.vjp(f, *args, backend=f"cupy:{impl}", **kw)
    held = pool.used_bytes() - base                                      # forward output + saved context
    del pb
    return tf, tfb, held


def _fla(op, T, dtype, B=2, H=16, D=64):
    import torch
    dt = getattr(torch, dtype)
    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=dt).div(math.sqrt(D)).requires_grad_() for _ in range(3))
    do = torch.randn(B, T, H, D, device="cuda", dtype=dt)
    if op == "linear":
        from fla.ops.linear_attn import chunk_linear_attn

        def f():
            return chunk_linear_attn(q, k, v, scale=1.0, normalize=False)[0]
    else:
        from fla.ops.simple_gla import chunk_simple_gla
        g_gamma = torch.tensor(np.log(1 - 2.0 ** (-5 - np.arange(H))), device="cuda", dtype=torch.float32)

        def f():
            return chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0)[0]

    def fb():
        o = f()
        torch.autograd.backward(o, do)
        q.grad = k.grad = v.grad = None

    with torch.no_grad():
        tf = _time_torch(f)
    return tf, _time_torch(fb)


def _zeros_torch(T, B=2, H=16, D=64):
    """The published prefix-sum form: a Dk x Dv state per token through cumsum (SPEC section 3)."""
    import torch
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    q, k = (torch.nn.functional.normalize(torch.randn(B, H, T, D, device="cuda"), dim=-1).requires_grad_()
            for _ in range(2))
    v = torch.randn(B, H, T, D, device="cuda", requires_grad=True)
    s = torch.randn(B, H, T, device="cuda", requires_grad=True)
    gates = torch.randn(B, H, T, 2, device="cuda", requires_grad=True)
    do = torch.randn(B, H, T, D, device="cuda")

    def f():
        n = torch.arange(1, T + 1, device="cuda", dtype=torch.float32)
        m = s.max(-1, keepdim=True).values.detach()
        es = torch.exp(s - m)
        E, P = es.cumsum(-1), s.cumsum(-1)
        kv = k.unsqueeze(-1) * v.unsqueeze(-2)                         # (B, H, T, Dk, Dv)
        F = (es[..., None, None] * kv).cumsum(2)
        G = (s[..., None, None] * kv).cumsum(2)
        Hs = kv.cumsum(2)
        sig1, sigh = torch.sigmoid(gates[..., 0]), torch.sigmoid(gates[..., 1])
        alpha, beta = sigh / E, (sig1 - sigh) / n
        gamma = -(beta * P + sigh) / n
        S = alpha[..., None, None] * F + beta[..., None, None] * G + gamma[..., None, None] * Hs
        return torch.einsum("bhtk,bhtkv->bhtv", q, S)

    def fb():
        torch.autograd.backward(f(), do)
        for x in (q, k, v, s, gates):
            x.grad = None

    t = _time_torch(fb, reps=5, warm=2)
    return t, torch.cuda.max_memory_allocated() / 2 ** 30


def bench(log):
    rows = []
    tf, tfb, held = _ours("zeros", 2048, "float32")
    log(f"zeros float32 T=2048: ours fwd {tf:.3f} fwd+bwd {tfb:.3f} ms (held {held / 2**20:.0f} MiB)")
    try:
        zt, zmem = _zeros_torch(2048)
    except Exception as e:
        log(f"zeros torch: {type(e).__name__}: {str(e)[:300]}")
        zt = zmem = float("nan")
    zrow = (tf, tfb, held, zt, zmem)
    log(f"zeros torch prefix-sum fwd+bwd {zt:.2f} ms, peak {zmem:.2f} GiB")
    for op, dtype, T in (("decayed", "float32", 4096), ("linear", "float16", 4096), ("decayed", "float16", 4096),
                         ("linear", "float32", 4096), ("linear", "float32", 1024), ("decayed", "float32", 1024),
                         ("linear", "float16", 1024), ("decayed", "float16", 1024)):
        tf, tfb, held = _ours(op, T, dtype)
        try:
            pf, pfb = _fla(op, T, dtype)
        except Exception as e:
            log(f"fla {op} {dtype} T={T}: {type(e).__name__}: {str(e)[:300]}")
            pf = pfb = float("nan")
        rows.append((op, dtype, T, tf, tfb, pf, pfb, pfb / tfb))
        log(f"{op} {dtype} T={T}: ours fwd {tf:.3f} fwd+bwd {tfb:.3f} ms (held {held / 2**20:.0f} MiB); "
            f"fla fwd {pf:.3f} fwd+bwd {pfb:.3f} ms")
        log("\nop       dtype     T     ours fwd  ours f+b  peer fwd  peer f+b  speedup(f+b)")
        for op_, dt, T_, a, b, c, d, sp in rows:
            log(f"{op_:8s} {dt:8s} {T_:5d} {a:9.3f} {b:9.3f} {c:9.3f} {d:9.3f} {sp:8.2f}x")
        tf_, tfb_, held_, zt_, zmem_ = zrow
        log(f"zeros    float32   2048 {tf_:9.3f} {tfb_:9.3f}        -- {zt_:9.2f} {zt_ / tfb_:8.1f}x  (peer = torch "
            f"prefix-sum, {zmem_:.1f} GiB peak; ours holds {held_ / 2**20:.0f} MiB)")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 90
    logf = open(os.path.join(out_dir, "bench_chunked.txt"), "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    precompile(log)
    check(log, seconds, out_dir)
    try:
        bench(log)
    except Exception as e:
        import traceback
        log("bench failed: " + traceback.format_exc())


if __name__ == "__main__":
    main()
