"""Linear attention in Numba CUDA: a plain "naive" rung and a chunked rung on the one chunked core.

Math (workbench/reference/linear.py; derivation of the backward in its docstring).  Q = phi(q), K = phi(k),
A_ti = scale Q_t.K_i (i <= t when causal), num_t = sum_i A_ti v_i, den_t = sum_i A_ti + eps,
o_t = num_t / den_t (normalize) or num_t.

One trick carries normalize through every kernel: the *augmented value* v~_i = [v_i, 1] (width Dw = Dv + 1
when normalize, else Dw = Dv).  Then den - eps is the extra column of num, the states S~ = sum K_i v~_i^T
hold z = sum K_i as their last column, and with the augmented output gradient
    dnum~_t = [dnum_t, dden_t],   dnum_t = do_t / den_t,   dden_t = -(do_t.o_t) / den_t   (normalize)
    dnum~_t = do_t                                                                          (otherwise)
the whole backward is
    dA_ti = dnum~_t . v~_i  (i <= t),      dv_i = sum_t A_ti dnum_t,
    dQ_t = scale sum_i dA_ti K_i,          dK_i = scale sum_t dA_ti Q_t,
    dq = dQ * phi'(q),   dk = dK * phi'(k).

State and packed sequences (workbench/state.py; causal).  The core's state is S~ = [S, z] (Dk x Dw): an initial
state (S0, z0) enters as S~0 = [S0, z0], so num~_t += scale S~0^T Q_t (the reference's num and den terms at
once), and the final state is S~ after the sequence.  With D~ = [dS_b, dz_b] the final state's gradient:
    dQ_t += scale S~0 dnum~_t                       (= scale (S0 dnum_t + z0 dden_t))
    dK_i += D~ v~_i,   dv_i += (D~^T K_i)[:Dv]        (= dS_b v_i + dz_b, dS_b^T K_i)
    dS~0  = scale sum_t Q_t dnum~_t^T + D~          (= [dS0, dz0])
Every term is the core's (kernels/numba/_chunked.py, plain family: linear = decayed with g = 0):
    num~ = core(Q, K, v~)                                  from S~0; final state S~_b
    dQ   = core(dnum~, v~, K)                              from S~0^T (the forward's segment starts, transposed)
    dK   = core(v~, dnum~, Q) reversed, scale in state     from D~^T; its state is dS~^T, its final dS~0^T
    dv   = core(K, Q, dnum~[:Dv]) reversed, scale in state from D~
where dS~ = D~ + scale sum_{t later} Q_t dnum~_t^T is the state's gradient carried backwards.  Sequences packed
along T (cu_seqlens) are the core's: chunks restart at every sequence start, no pair crosses a boundary.
Non-causal: no intra-chunk term, and every row reads its sequence's total state (the core's state pass and
scan), forward and backward.

naive   -- one thread per output row: forward num~_t accumulated over keys in a local array; backward one
           thread per query row (dq) and one per key row (dk, dv), everything read from global memory.
           The naive forward keeps den - eps (the extra column of num~) in a scalar beside num[Dv].
chunked -- elementwise passes form phi(q), phi(k) and v~ (none for identity without normalize), then the
           core; the normalised output o = num~[:Dv] / den, and dq, dk get their phi' factor, in passes after.

Accumulation float32 for float32 inputs, float64 for float64.  Kernels are compiled once per head-dim bucket DB,
feature map and dtype (kernels/numba/_jit.py); the core's kernels once per bucket and dtype (every feature map
and normalize share them: the bucket is that of (Dk, Dv), the plain family's state has room for Dv + 1).  Head
dims, causal and normalize are run-time arguments; the naive kernels' feature map stays compile-time because
phi sits inside the unrolled per-thread loops.  ``CONFIG`` holds the naive kernels' rows per block.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import cuda

from workbench.state import LinearState

from . import _chunked
from ._arrays import DeviceIO, Saved, register_variant
from ._jit import (bucket, cdiv, device, kernel, nb_type, row_axpy, row_dot, row_store, row_thread, row_zero,
                   work_dtype)

CONFIG = {"rows": 64}        # rows per block of the naive (row) kernels; tests shrink it


# ============================================================================ device helpers
@functools.lru_cache(maxsize=None)
def _phi(fmap, acc):
    """(phi, phi') as device functions.  NaN propagates through phi (relu(NaN) = NaN, as np.maximum)."""
    ONE, ZERO = acc(1), acc(0)
    if fmap == "identity":
        def f(x):
            return x

        def df(x):
            return ONE
    elif fmap == "relu":
        def f(x):
            return ZERO if x <= ZERO else x

        def df(x):
            return ONE if x > ZERO else ZERO
    elif fmap == "elu1":
        def f(x):
            return x + ONE if x > ZERO else math.exp(x)

        def df(x):
            return ONE if x > ZERO else math.exp(x)
    else:
        raise ValueError(fmap)
    return device(f), device(df)


@functools.lru_cache(maxsize=None)
def _store_grad(DB, fmap, acc):
    """Device function store(out, x, n, t, row, D, scale): out[n, t, d] = scale row[d] phi'(x[n, t, d]) for
    d < D (dq from dQ, dk from dK)."""
    _, dphi = _phi(fmap, acc)
    ZERO = acc(0)

    def store(out, x, n, t, row, D, scale):
        for d in range(DB):
            xd = acc(x[n, t, d]) if d < D else ZERO
            val = row[d] * scale * dphi(xd)
            if d < D:
                out[n, t, d] = val
    return device(store)


# ============================================================================ naive
@functools.lru_cache(maxsize=None)
def _naive_fwd(DB, fmap, acc):
    """One thread per query row t: num_t = sum_i scale Q_t.K_i v_i and den_t - eps = sum_i scale Q_t.K_i over
    keys i (i <= t when causal)."""
    phi, _ = _phi(fmap, acc)
    dot, axpy, store, zero = row_dot(DB, acc, phi), row_axpy(DB, acc), row_store(DB), row_zero(DB, acc)
    rows = row_thread()
    ZERO, ONE = acc(0), acc(1)

    @kernel
    def kern(q, k, v, scale, eps, causal, normalize, o, den):
        n, t, T, Dk, Dv = rows(q, v)
        if t >= T:
            return
        iend = t + 1 if causal else T
        num = cuda.local.array(DB, acc)
        zero(num)
        nden = ZERO
        for i in range(iend):
            a = dot(q, n, t, k, i, Dk) * scale
            nden += a
            axpy(num, a, v, n, i, Dv)
        dn = nden + eps
        if normalize:
            den[n, t] = dn
        store(o, n, t, num, Dv, ONE / dn if normalize else ONE)
    return kern


@functools.lru_cache(maxsize=None)
def _naive_backward(DB, fmap, acc):
    """The naive backward's kernels (dq, dkdv), everything read from global memory:
    dq:   one thread per query row t: dq_t = phi'(q_t) * scale sum_i (dnum~_t.v~_i) K_i;
    dkdv: one thread per key row i: dk_i = phi'(k_i) * scale sum_t dA_ti Q_t,  dv_i = sum_t A_ti dnum_t."""
    phi, _ = _phi(fmap, acc)
    pdot, dot = row_dot(DB, acc, phi), row_dot(DB, acc)
    axpy, paxpy, store, zero = row_axpy(DB, acc), row_axpy(DB, acc, phi), row_store(DB), row_zero(DB, acc)
    rows, store_grad = row_thread(), _store_grad(DB, fmap, acc)
    ZERO, ONE = acc(0), acc(1)

    @kernel
    def kern_dq(q, k, v, dnum, scale, causal, normalize, dq):
        n, t, T, Dk, Dv = rows(q, v)
        if t >= T:
            return
        dden = acc(dnum[n, t, Dv]) if normalize else ZERO          # the extra column of dnum~ (v~ = 1 there)
        g = cuda.local.array(DB, acc)
        zero(g)
        iend = t + 1 if causal else T
        for i in range(iend):
            paxpy(g, dot(dnum, n, t, v, i, Dv) + dden, k, n, i, Dk)
        store_grad(dq, q, n, t, g, Dk, scale)

    @kernel
    def kern_dkdv(q, k, v, dnum, scale, causal, normalize, dk, dv):
        n, i, T, Dk, Dv = rows(q, v)
        if i >= T:
            return
        gk = cuda.local.array(DB, acc)
        gv = cuda.local.array(DB, acc)
        zero(gk)
        zero(gv)
        t0 = i if causal else 0
        for t in range(t0, T):
            a = pdot(q, n, t, k, i, Dk) * scale
            da = dot(dnum, n, t, v, i, Dv)
            if normalize:
                da += acc(dnum[n, t, Dv])
            axpy(gv, a, dnum, n, t, Dv)
            paxpy(gk, da, q, n, t, Dk)
        store_grad(dk, k, n, i, gk, Dk, scale)
        store(dv, n, i, gv, Dv, ONE)
    return kern_dq, kern_dkdv


# ============================================================================ the normaliser's row passes
class _Normaliser(NamedTuple):
    augment: object
    normalize: object
    dnum: object


@functools.lru_cache(maxsize=None)
def _normaliser(acc):
    """The row passes of normalize (both rungs), one thread per row (n, t):
    augment(v, va):            va[n, t] = [v[n, t], 1] (the normalised value v~);
    normalize(num, eps, o, den): den_t = num~[t, Dv] + eps, o_t = num~[t, :Dv] / den_t;
    dnum(do, o, den, dnum):    the augmented output gradient dnum~_t = [do_t / den_t, -(do_t.o_t) / den_t]."""
    rows = row_thread()
    ONE = acc(1)

    @kernel
    def augment(v, va):
        n, t, T, _, Dv = rows(v, v)
        if t >= T:
            return
        for e in range(Dv):
            va[n, t, e] = v[n, t, e]
        va[n, t, Dv] = ONE

    @kernel
    def normalize(num, eps, o, den):
        n, t, T, _, Dv = rows(o, o)
        if t >= T:
            return
        dn = num[n, t, Dv] + eps
        den[n, t] = dn
        inv = ONE / dn
        for e in range(Dv):
            o[n, t, e] = num[n, t, e] * inv

    @kernel
    def dnum(do, o, den, dnum):
        n, t, T, _, Dv = rows(do, do)
        if t >= T:
            return
        inv = ONE / den[n, t]
        s = acc(0)
        for e in range(Dv):
            g = acc(do[n, t, e])
            s += g * acc(o[n, t, e])
            dnum[n, t, e] = g * inv
        dnum[n, t, Dv] = -s * inv
    return _Normaliser(augment, normalize, dnum)


# ============================================================================ chunked: elementwise passes
# The chunked rung runs the one core (kernels/numba/_chunked.py, plain family) on Q = phi(q), K = phi(k) and
# v~ = [v, 1] (normalize); these passes form them, and the gradients' phi' factors, one thread per element.
@functools.lru_cache(maxsize=None)
def _phi_pass(fmap, acc, grad):
    """Elementwise over (N, T, D), one thread per element: out = phi(x) (grad False), or out *= phi'(x) in
    place (grad True: the gradients' factor)."""
    phi, dphi = _phi(fmap, acc)

    @kernel
    def kern(x, out):
        i = cuda.grid(1)
        T, D = x.shape[1], x.shape[2]
        if i >= x.shape[0] * T * D:
            return
        nt = i // D
        d = i - nt * D
        n = nt // T
        t = nt - n * T
        if grad:
            out[n, t, d] = out[n, t, d] * dphi(acc(x[n, t, d]))
        else:
            out[n, t, d] = phi(acc(x[n, t, d]))
    return kern


# ============================================================================ host side
def _launch_rows(T):
    b = CONFIG["rows"]
    return cdiv(T, b), b


def _elementwise(x):
    n = x.shape[0] * x.shape[1] * x.shape[2]
    return max(1, cdiv(n, 256)), 256


def _operands(io, q, k, v, fm, normalize, acc):
    """The core's Q = phi(q), K = phi(k), v~ = v or [v, 1] (no pass where they are the inputs)."""
    N, T, Dv = v.shape
    if fm == "identity":
        Q, K = q, k
    else:
        Q, K = io.empty(q.shape, q.dtype), io.empty(k.shape, k.dtype)
        for x, out in ((q, Q), (k, K)):
            _phi_pass(fm, acc, False)[_elementwise(x)](x, out)
    Va = v
    if normalize:
        Va = io.empty((N, T, Dv + 1), v.dtype)
        _normaliser(acc).augment[(N, cdiv(T, 64)), 64](v, Va)
    return Q, K, Va


def _state_to_core(io, st, normalize):
    """A LinearState (fields (N, nseq, ...)) as the core's (N, nseq, Dk, Dw) state: with normalize, z is the
    column of the ones appended to v."""
    xp = io.xp
    S = st.S if not normalize else xp.concatenate([st.S, st.z[..., None]], axis=-1)
    return io.to_device(xp.ascontiguousarray(S))


def _state_from_core(io, S, normalize):
    S = io.to_caller(S)
    if not normalize:
        return LinearState(S)
    xp = io.xp
    return LinearState(xp.ascontiguousarray(S[..., :-1]), xp.ascontiguousarray(S[..., -1]))


@dataclass
class _Context(Saved):
    """What the backward needs (impl: "naive" or "chunked")."""
    o: object
    den: object                 # (N, T) denominators with normalize, else a (1, 1) placeholder
    causal: bool
    normalize: bool
    feature_map: str
    scale: object               # in the accumulation dtype
    dtype: np.dtype             # the inputs' dtype (the gradients have it)
    Q: object = None            # chunked: the core's operands phi(q), phi(k), v~
    K: object = None
    Va: object = None
    segs: object = None         # chunked: the segments and the forward pass's states
    fw: object = None
    has_init: bool = False


def _forward(impl, q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6,
             initial_state=None, return_state=False, cu_seqlens=None):
    io = DeviceIO(q)
    N, T, Dk = q.shape
    Dv = v.shape[2]
    Dw = Dv + 1 if normalize else Dv
    wdt = work_dtype(q.dtype)
    acc = nb_type(wdt)
    causal, normalize, fm = bool(causal), bool(normalize), feature_map
    qd, kd, vd = io.to_device(q), io.to_device(k), io.to_device(v)
    o = io.empty((N, T, Dv), q.dtype)
    den = io.empty((N, T) if normalize else (1, 1), wdt)
    sc, ep = wdt.type(scale), wdt.type(eps)
    if impl != "chunked":
        nb, b = _launch_rows(T)
        _naive_fwd(bucket(Dk, Dv), fm, acc)[(N, nb), b](qd, kd, vd, sc, ep, causal, normalize, o, den)
        return io.to_caller(o), _Context(io, impl, qd, kd, vd, o, den, causal, normalize, fm, sc, q.dtype)
    Q, K, Va = _operands(io, qd, kd, vd, fm, normalize, acc)
    core = _chunked.plan(Q, _chunked.PLAIN, (Dk, Dv))
    cu = tuple(cu_seqlens) if cu_seqlens is not None else (0, T)
    L = _chunked.choose_segments(N, max(b - a for a, b in zip(cu[:-1], cu[1:])), core.C, cdiv(Dw, core.BV))
    segs = _chunked.segments(io, T, core.C, L, cu)
    S0 = None if initial_state is None else _state_to_core(io, initial_state, normalize)
    fw = _chunked.states(io, core, segs, K, Va, Dk, Dw, S0=S0, want_final=bool(return_state), scale=scale,
                         causal=causal)
    num = io.empty((N, T, Dw), wdt) if normalize else o
    _chunked.run(core, segs, Q, K, Va, num, scale=scale, S0=fw.starts, intra=causal, fold=causal,
                 Sfin=fw.final if (causal and segs.single) else None)
    if normalize:
        _normaliser(acc).normalize[(N, cdiv(T, 64)), 64](num, ep, o, den)
    ctx = _Context(io, impl, qd, kd, vd, o, den, causal, normalize, fm, sc, q.dtype, Q, K, Va, segs, fw,
                   S0 is not None)
    out = io.to_caller(o)
    return ((out, _state_from_core(io, fw.final, normalize)) if return_state else out), ctx


def _backward(ctx: _Context, do, dfinal=None):
    """Linear attention's backward (module doc) on the core: dQ from dnum~ against the forward's states
    (transposed), dK and dv from the reverse runs carrying dS (from dfinal), dS0 the dK run's final state."""
    io, q, k, v, fm, dtype = ctx.io, ctx.q, ctx.k, ctx.v, ctx.feature_map, ctx.dtype
    N, T, Dk = q.shape
    Dv = v.shape[2]
    Dw = Dv + 1 if ctx.normalize else Dv
    wdt = work_dtype(dtype)
    acc = nb_type(wdt)
    do = io.to_device(do)
    nb, b = _launch_rows(T)
    if ctx.normalize:
        dnum = io.empty((N, T, Dw), wdt)
        _normaliser(acc).dnum[(N, nb), b](do, ctx.o, ctx.den, dnum)
    else:
        dnum = do
    dq = io.empty((N, T, Dk), dtype)
    dk = io.empty((N, T, Dk), dtype)
    dv = io.empty((N, T, Dv), dtype)
    if ctx.impl != "chunked":
        naive_dq, naive_dkdv = _naive_backward(bucket(Dk, Dv), fm, acc)
        naive_dq[(N, nb), b](q, k, v, dnum, ctx.scale, ctx.causal, ctx.normalize, dq)
        naive_dkdv[(N, nb), b](q, k, v, dnum, ctx.scale, ctx.causal, ctx.normalize, dk, dv)
        return io.to_caller(dq), io.to_caller(dk), io.to_caller(dv)
    causal, sc, segs, fw = ctx.causal, ctx.scale, ctx.segs, ctx.fw
    Q, K, Va = ctx.Q, ctx.K, ctx.Va
    D = None if dfinal is None else _state_to_core(io, dfinal, ctx.normalize)
    core = _chunked.plan(Q, _chunked.PLAIN, (Dk, Dv))
    _chunked.run(core, segs, dnum, Va, K, dq, scale=sc, S0=fw.starts, st_trans=True, intra=causal, fold=causal)
    bw = _chunked.states(io, core, segs, Q, dnum, Dk, Dw, S0=D, want_final=ctx.has_init, scale=sc,
                         scale_in_state=True, rev=True, causal=causal)
    _chunked.run(core, segs, Va, dnum, Q, dk, scale=sc, scale_in_state=True, rev=True, S0=bw.starts, st_trans=True,
                 intra=causal, fold=causal, Sfin=bw.final if (causal and segs.single and ctx.has_init) else None)
    _chunked.run(core, segs, K, Q, dnum, dv, scale=sc, scale_in_state=True, rev=True, S0=bw.starts, intra=causal,
                 fold=causal)
    if fm != "identity":
        for x, grad in ((q, dq), (k, dk)):
            _phi_pass(fm, acc, True)[_elementwise(x)](x, grad)
    grads = (io.to_caller(dq), io.to_caller(dk), io.to_caller(dv))
    return grads + ((_state_from_core(io, bw.final, ctx.normalize),) if ctx.has_init else ())


register_variant("linear", "naive", _forward, _backward,
                 "one thread per output row (O(T^2)); naive backward (thread per query row for "
                 "dq, per key row for dk/dv)",
                 {"float32": 1e-4, "float64": 2e-13})
register_variant("linear", "chunked", _forward, _backward,
                 "chunked core (kernels/numba/_chunked.py, plain family) on phi(q), phi(k), [v, 1]: masked "
                 "C x C blocks and a Dk x BV state in shared memory carried across a segment's chunks, "
                 "segment states + scan; backward = the same core (dq forward, dk and dv in reverse); "
                 "initial/final state, cu_seqlens",
                 {"float32": 5e-5, "float64": 1e-13}, default=True, features=frozenset({"state", "packed"}))
