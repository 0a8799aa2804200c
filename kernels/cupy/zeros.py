"""CuPy ZeroS attention (kernels/cuda/zeros.cu: the scalar scans; the shared skeleton for the states).

Maps the reference derivation (workbench/reference/zeros.py) onto two core calls and two scans, all in
float32 (float16 inputs are widened):
  scan_fwd  m (running max), E (relative to m), P, alpha/beta/gamma, u = e^{s - m}, chunk-local log
            decays bF = m_ref - m_t (per-token gF = m_{t-1} - m_t for the naive core);
  state F   oF = core(q, k, u v) with decays exp(m_i - m_t):  oF_t = sum e^{s_i - m_t} (q_t.k_i) v_i;
  states GH [oG, oH] = core(q, k, [s v, v]) (no decay; split in two calls when 2 Dv > 256);
  o = alpha oF + beta oG + gamma oH (memory O(T (Dk + Dv)) plus per-chunk states).
Backward: a = do.oF, V = do.oG, Z = do.oH (row dots; U = a / E); the core backward with
do_F = alpha do and do_GH = [beta do, gamma do] gives dq, dk and the gradients of the values
(dv = u dvF + s dvG + dvH; the value path of ds: (u v).dvF + v.dvG, i.e. sum_t sigh p (dR) + beta dR);
scan_bwd adds the path through E and P (-e^{s_j - m_j} sum_{t>=j} alpha U e^{m_j - m_t} - sum beta Z / n)
and dgates.  The running max m is held fixed in the backward: o does not depend on it, so this is exact.
"""
from __future__ import annotations

import numpy as np

from workbench.registry import Variant, register

from workbench.backends import new_output

from . import _chunked as core
from ._module import declare_groups, get_kernel

SOURCE = "zeros.cu"
SCANS = tuple(f"zeros_scan_{d}<float, {c}>" for d in ("fwd", "bwd") for c in ("true", "false"))
INSTANTIATIONS = (core.instantiations(SOURCE, decay_values=(False, True), dtypes=("float32",))
                  + [(SOURCE, e) for e in SCANS])
declare_groups(SOURCE, core.compile_groups(decay_values=(False, True), dtypes=("float32",)) + [SCANS])


def _scan_fwd(s, gates, causal, C):
    import cupy as cp
    N, T = s.shape
    NC = -(-T // C)
    outs = [new_output(cp, (N, T), cp.float32) for _ in range(3)]           # m, E, P
    coef = new_output(cp, (N, T, 3), cp.float32)
    u = new_output(cp, (N, T), cp.float32)
    bF = new_output(cp, (N, NC * C), cp.float32)
    gF = new_output(cp, (N, T), cp.float32)
    kern = get_kernel(SOURCE, f"zeros_scan_fwd<float, {'true' if causal else 'false'}>")
    kern((-(-N // 64),), (64,), (s, gates, np.int32(gates.shape[-1]), np.int32(N), np.int32(T), np.int32(C),
                                 np.int32(NC), *outs, coef, u, bF, gF))
    return (*outs, coef, u, bF, gF)


def _scan_bwd(s, gates, causal, m, E, P, a, V, Z):
    import cupy as cp
    N, T = s.shape
    ds = new_output(cp, (N, T), cp.float32)
    dgates = new_output(cp, gates.shape, cp.float32)
    kern = get_kernel(SOURCE, f"zeros_scan_bwd<float, {'true' if causal else 'false'}>")
    kern((-(-N // 64),), (64,), (s, gates, np.int32(gates.shape[-1]), np.int32(N), np.int32(T), m, E, P,
                                 a, V, Z, ds, dgates))
    return ds, dgates


def _groups(Dv):
    """Value groups of the undecayed call: [s v, v] together when 2 Dv fits the kernels, else apart."""
    return [("G", "H")] if 2 * Dv <= core.MAX_DIM else [("G",), ("H",)]


def _make(impl):
    def forward(q, k, v, s, gates, causal=True):
        import cupy as cp
        dtype = q.dtype
        q, k, v, s, gates = (x.astype(cp.float32, copy=False) for x in (q, k, v, s, gates))
        Dk, Dv = q.shape[-1], v.shape[-1]
        C = core.chunk_size(Dk, Dv)
        m, E, P, coef, u, bF, gF = _scan_fwd(s, gates, causal, C)
        vals = {"F": u[..., None] * v, "G": s[..., None] * v, "H": v}
        dec = {}
        if causal:
            dec = dict(b=bF) if impl != "naive" else dict(g=gF)
        oF, HF = core.core_forward(SOURCE, impl, q, k, vals["F"], causal, 1.0, **dec)
        outs, calls = {"F": oF}, [(("F",), vals["F"], HF, dec)]
        for grp in _groups(Dv):
            V = cp.concatenate([vals[x] for x in grp], axis=-1) if len(grp) > 1 else vals[grp[0]]
            o_g, H_g = core.core_forward(SOURCE, impl, q, k, V, causal, 1.0)
            calls.append((grp, V, H_g, {}))
            for j, x in enumerate(grp):
                outs[x] = o_g[..., j * Dv:(j + 1) * Dv]
        alpha, beta, gamma = coef[..., 0:1], coef[..., 1:2], coef[..., 2:3]
        o = alpha * outs["F"] + beta * outs["G"] + gamma * outs["H"]
        return o.astype(dtype, copy=False), (q, k, v, s, gates, causal, m, E, P, coef, u, outs, calls, dtype)

    def backward(ctx, do):
        import cupy as cp
        q, k, v, s, gates, causal, m, E, P, coef, u, outs, calls, dtype = ctx
        do = do.astype(cp.float32, copy=False)
        a, Vr, Zr = ((do * outs[x]).sum(-1) for x in ("F", "G", "H"))
        ds, dgates = _scan_bwd(s, gates, causal, m, E, P, a, Vr, Zr)
        dos = {x: coef[..., j:j + 1] * do for j, x in enumerate("FGH")}
        dq = dk = 0
        dvals = {}
        for grp, V, H, dec in calls:
            dO = cp.concatenate([dos[x] for x in grp], axis=-1) if len(grp) > 1 else dos[grp[0]]
            gq, gk, gV = core.core_backward(SOURCE, impl, q, k, V, H, dO, causal, 1.0, **dec)
            dq, dk = dq + gq, dk + gk
            for j, x in enumerate(grp):
                dvals[x] = gV[..., j * v.shape[-1]:(j + 1) * v.shape[-1]]
        dv = u[..., None] * dvals["F"] + s[..., None] * dvals["G"] + dvals["H"]
        ds = ds + (dvals["F"] * (u[..., None] * v)).sum(-1) + (dvals["G"] * v).sum(-1)
        return tuple(x.astype(dtype, copy=False) for x in (dq, dk, dv, ds, dgates))

    return forward, backward


def supports(options, shapes):
    dk, dv = shapes["q"][-1], shapes["v"][-1]
    if max(dk, dv) > core.MAX_DIM:
        return f"head dims up to {core.MAX_DIM} (Dk={dk}, Dv={dv})"
    return None


for _impl, _desc, _default in (
        ("naive", "scans + the naive core (one thread per output row), O(T^2 D)", False),
        ("chunked", "scans + the chunked core: states F (running max), G, H, one chain over the chunks", True),
        ("chunked_seg", "scans + the chunked core with the state chains cut into segments run in parallel",
         False)):
    _f, _b = _make(_impl)
    register(Variant("zeros", "cupy", _impl, _f, _b, dtypes=("float32", "float16"), array_kind="cupy",
                     gpu=True, default=_default, supports=supports, description=_desc,
                     form="quadratic" if _impl == "naive" else "linear", tol={"float32": 5e-5, "float16": 2e-3}))
