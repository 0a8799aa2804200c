"""Time every registered Numba variant (forward, and forward + backward) on a GPU, beside fla's chunk kernels.

    python -m kernels.numba.bench_numba --out DIR [--op softmax --op linear ...] [--T 4096] [--reps 20]

Shape: B=2, H=16, T=4096, Dk=Dv=64, float32, causal, the op's default options (linear: identity map, no
normalisation, scale 1; decayed: log decay in [-1, -0.01)).  Inputs are CuPy arrays already on the device;
each cell runs through the public API (``wb.<op>(..., backend="numba:<variant>")`` and ``wb.vjp``), so the
time includes the thin host dispatch, which is small beside these kernels.  Output poisoning (the NaN fill
that the checks use) is switched off here.  Timing: CUDA events around each call, 3 warm-up calls (the
first compiles), the median of ``--reps`` calls (default 20).  A cell whose warm call takes longer than
``--max-call-s`` (the O(T^2) naive rungs) is reported from 2 warm calls alone, to keep the whole run near
90 s (``reps_*`` in the JSON says how many calls each median holds).

Peers, when importable, in the same run on torch tensors of the same shape ([B, T, H, D] layout):
fla ``chunk_linear_attn`` (fla.ops.linear_attn; normalize=False, scale=1) and ``chunk_simple_gla``
(fla.ops.simple_gla; g = log decay), in float32 and bfloat16.

Every cell is wrapped in try/except: a failure is recorded (``error``) and the run goes on.  Prints a table
and writes DIR/bench_numba.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

B, H, D = 2, 16, 64


def _median_ms(fn, elapsed_ms, reps, max_call_s):
    """Median milliseconds of fn() over reps calls after 3 warm-up calls (the first compiles).
    elapsed_ms(fn) times one call with CUDA events.  A call slower than max_call_s after warm-up is reported
    from warm-up calls 2 and 3 only.  Returns (median ms, number of calls in the median)."""
    warm = [elapsed_ms(fn) for _ in range(3)][1:]
    if warm[-1] > 1000 * max_call_s:
        return statistics.median(warm), len(warm)
    times = [elapsed_ms(fn) for _ in range(reps)]
    return statistics.median(times), len(times)


def _cupy_elapsed(fn):
    import cupy
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop)


def _torch_elapsed(fn):
    import torch
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop)


def _flops(op, T, causal=True):
    """Matmul FLOPs of the forward (2 per multiply-add); backward counted as 2x the forward where noted."""
    N = B * H
    if op == "softmax":                  # q k^T and p v, halved when causal
        return 4 * N * T * T * D * (0.5 if causal else 1.0)
    return 4 * N * T * D * D             # linear-time ops: k v^T states and q S, per token, chunked form


def bench_numba(ops, T, reps, max_call_s, results):
    import cupy
    import workbench as wb
    from workbench import registry
    from workbench.inputs import default_options, random_inputs
    from kernels.numba import _arrays
    _arrays.POISON = False
    for op in ops:
        fn = wb.PUBLIC_OPS[op]
        for variant in registry.variants(op, "numba"):
            cell = dict(op=op, impl=f"numba:{variant.name}", dtype="float32", B=B, H=H, T=T, D=D,
                        flops_fwd=_flops(op, T))
            try:
                arrays = [cupy.asarray(a) for a in random_inputs(op, lead=(B, H), T=T, Dk=D, Dv=D,
                                                                  dtype="float32", seed=0)]
                opts = default_options(op, causal=True)
                if op == "decayed":
                    opts.pop("causal", None)
                do = cupy.asarray(np.random.default_rng(1).standard_normal((B, H, T, D)).astype(np.float32))
                key = f"numba:{variant.name}"
                cell["fwd_ms"], cell["reps_fwd"] = _median_ms(
                    lambda: fn(*arrays, backend=key, **opts), _cupy_elapsed, reps, max_call_s)

                def fwd_bwd():
                    _, pull = wb.vjp(fn, *arrays, backend=key, **opts)
                    pull(do)
                cell["fwd_bwd_ms"], cell["reps_fwd_bwd"] = _median_ms(fwd_bwd, _cupy_elapsed, reps, max_call_s)
            except Exception as e:          # noqa: BLE001 -- one failing cell must not stop the run
                cell["error"] = f"{type(e).__name__}: {e}"
                cell["traceback"] = traceback.format_exc(limit=4)
            results.append(cell)
            _print_row(cell)


def bench_fla(ops, T, reps, max_call_s, results):
    peers = []
    if "linear" in ops:
        peers.append(("linear", "fla.ops.linear_attn", "chunk_linear_attn"))
    if "decayed" in ops:
        peers.append(("decayed", "fla.ops.simple_gla", "chunk_simple_gla"))
    if not peers:
        return
    try:
        import importlib
        import torch
    except Exception as e:                  # noqa: BLE001
        results.append(dict(op="-", impl="fla", error=f"torch does not import: {e}"))
        return
    for op, module, name in peers:
        for dt_name in ("float32", "bfloat16"):
            cell = dict(op=op, impl=f"fla:{name}", dtype=dt_name, B=B, H=H, T=T, D=D, flops_fwd=_flops(op, T))
            try:
                fn = getattr(importlib.import_module(module), name)
                dt = getattr(torch, dt_name)
                g = torch.Generator(device="cuda").manual_seed(0)
                shape = (B, T, H, D)
                q = (torch.randn(shape, device="cuda", generator=g) / D ** 0.5).to(dt).requires_grad_()
                k = (torch.randn(shape, device="cuda", generator=g) / D ** 0.5).to(dt).requires_grad_()
                v = torch.randn(shape, device="cuda", generator=g).to(dt).requires_grad_()
                do = torch.randn(shape, device="cuda", generator=g).to(dt)
                if op == "linear":
                    kwargs = dict(scale=1.0, normalize=False)
                else:
                    ld = -(torch.rand((B, T, H), device="cuda", generator=g) * 0.99 + 0.01)
                    kwargs = dict(g=ld.float().requires_grad_(), scale=1.0)

                def call():
                    out = fn(q=q, k=k, v=v, **kwargs)
                    return out[0] if isinstance(out, tuple) else out

                def fwd():
                    with torch.no_grad():
                        call()

                def fwd_bwd():
                    o = call()
                    o.backward(do)
                cell["fwd_ms"], cell["reps_fwd"] = _median_ms(fwd, _torch_elapsed, reps, max_call_s)
                cell["fwd_bwd_ms"], cell["reps_fwd_bwd"] = _median_ms(fwd_bwd, _torch_elapsed, reps, max_call_s)
            except Exception as e:          # noqa: BLE001
                cell["error"] = f"{type(e).__name__}: {e}"
            results.append(cell)
            _print_row(cell)


def _print_row(c):
    if "error" in c:
        print(f"{c['op']:8s} {c['impl']:24s} {c.get('dtype', ''):9s} ERROR {c['error'][:120]}", flush=True)
        return
    tf = c["flops_fwd"] / (c["fwd_ms"] * 1e-3) / 1e12
    print(f"{c['op']:8s} {c['impl']:24s} {c['dtype']:9s} fwd {c['fwd_ms']:9.3f} ms ({tf:6.2f} TFLOP/s)   "
          f"fwd+bwd {c['fwd_bwd_ms']:9.3f} ms   reps {c['reps_fwd']}/{c['reps_fwd_bwd']}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Time the Numba variants of every op (and fla peers) on a GPU.")
    ap.add_argument("--out", required=True, help="directory for bench_numba.json")
    ap.add_argument("--op", action="append", choices=("softmax", "linear", "decayed", "zeros"))
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--max-call-s", type=float, default=0.5,
                    help="a cell whose warm call takes longer is timed from its warm-up calls only")
    ap.add_argument("--no-fla", action="store_true")
    args = ap.parse_args(argv)
    ops = args.op or ["softmax", "linear", "decayed", "zeros"]
    os.makedirs(args.out, exist_ok=True)
    results, t0 = [], time.time()
    print(f"B={B} H={H} T={args.T} D={D} float32 causal; median of {args.reps} (CUDA events)", flush=True)
    try:
        bench_numba(ops, args.T, args.reps, args.max_call_s, results)
    except Exception as e:                  # noqa: BLE001 (e.g. no CuPy / no GPU)
        results.append(dict(op="-", impl="numba", error=f"{type(e).__name__}: {e}"))
        _print_row(results[-1])
    if not args.no_fla:
        bench_fla(ops, args.T, args.reps, args.max_call_s, results)
    meta = dict(python=sys.version.split()[0], platform=platform.platform(), seconds=time.time() - t0)
    try:
        from numba import cuda
        meta["device"] = str(cuda.get_current_device().name)
    except Exception:                       # noqa: BLE001
        pass
    path = os.path.join(args.out, "bench_numba.json")
    with open(path, "w") as f:
        json.dump(dict(meta=meta, results=results), f, indent=1, default=str)
    print(f"wrote {path} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
