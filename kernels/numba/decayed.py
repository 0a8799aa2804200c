"""Decayed linear attention in Numba CUDA: a plain "naive" rung and a "chunked" rung.

Math (workbench/reference/decayed.py; per leading index n, g = log_decay <= 0, G_t = sum_{j<=t} g_j):
    o_t = sum_{i<=t} scale exp(G_t - G_i) (q_t.k_i) v_i.
Backward (derived in the reference's docstring):
    dq_t = sum_{i<=t} scale exp(G_t - G_i) (do_t.v_i) k_i        -- the forward with (q, k, v) -> (do, v, k)
    dk_i = sum_{t>=i} scale exp(G_t - G_i) (v_i.do_t) q_t        -- the forward run backwards in time with
    dv_i = sum_{t>=i} scale exp(G_t - G_i) (k_i.q_t) do_t           (q, k, v) -> (v, do, q) and (k, q, do)
    dg_j = sum_{t>=j} (do_t.o_t - v_t.dv_t)                      -- a reverse cumulative sum;
    dg_0 = 0 exactly (g_0 never enters a difference G_t - G_i), and is written as 0: summed, it is the
    rounding noise of T cancelling terms, which at g in [-30, 0] alone exceeded float32's 1e-4 tolerance
So one forward kernel, run in either direction, computes o, dq, dk and dv.  Run backwards (processed position
p = T-1-t), the decay between processed positions i' < p is exp(G_t - G_i) = exp(sum_{i<j<=t} g_j), i.e. the
forward decay of the shifted reversed sequence g''_p = g[T-p] (g''_0 = 0; it only ever multiplies an empty
state).

State and packed sequences (chunked rung; workbench/state.py).  Per sequence [a, b) (cu_seqlens; one sequence
[0, T) without), pre_t = sum_{a<=j<=t} g_j, post_i = sum_{i<j<b} g_j, tot = sum_{a<=j<b} g_j, S0 the initial
state and D = dS_b the final state's gradient (zero when not given):
    o_t  += scale exp(pre_t) q_t^T S0,            S_b = exp(tot) S0 + sum_i exp(post_i) k_i v_i^T
    dq_t += scale exp(pre_t) S0 do_t               -- dq's forward run starts from S0^T
    dk_i += exp(post_i) D v_i,  dv_i += exp(post_i) D^T k_i
                                                   -- the reverse runs start from D (dk's as D^T)
    dS0   = scale sum_t exp(pre_t) q_t do_t^T + exp(tot) D
                                                   -- dk's reverse run's final state (transposed)
The reverse runs keep the scale inside their state (``scale_in_state``), so their state is exactly
dS_t = exp(G_{b-1} - G_t) D + scale sum_{t' > t} exp(G_t' - G_t) q_t' do_t'^T, the gradient of the state
after position t: D enters unscaled and its value at the sequence start is dS0 (one more decay by g_a: the reverse
walker ends relative to position a, dS0 is relative to the position before it).
The decay gradient.  g_j -> g_j + e changes o and S_b exactly as scaling the rows o_t (t >= j) and S_b by e^e
and the values v_i (i >= j) by e^-e does (check each pair (t, i), the S0 term, and S_b's terms), so with the
full gradients (state terms included)
    dg_j = sum_{a<=t, t>=j} do_t.o_t - sum_{i>=j} v_i.dv_i + <D, S_b>       (j in [a, b))
-- the reverse cumulative sum above plus one constant per sequence (the reference's x_t, y_i and
exp(tot) <S0, D> terms, summed).  Without S0 the sum at j = a vanishes exactly (g_a then never enters a
difference G_t - G_i, nor S_b) and is written as 0; with S0 it is g_a's gradient through S0's decay.

Stability: every exponent is a difference B_p - B_i (i <= p) of cumulative sums of log decays <= 0, so <= 0;
the chunked rung uses within-chunk cumulative sums only (never G_t of the whole sequence, which reaches
-30 T), the naive rung accumulates sum_{i<j<=t} g_j along its loop.  Any log decay in [-inf, 0] works:
log_decay_t = -inf is an exact reset (every token before t drops out of o_t' for t' >= t).  The naive rung's
running sum becomes -inf and exp(-inf) = 0; the chunked rung floors log decays at a finite value whose exp
is exactly 0 (kernels/numba/_chunked.py says why that is exact), so its within-chunk sums stay finite.

Layout: q, k (N, T, Dk); v, o, do (N, T, Dv); log_decay, dg (N, T); states (N, nseq, Dk, Dv); C-contiguous.
Accumulation in float32 for float32 inputs, float64 for float64.  Kernels are compiled per head-dim bucket and
dtype (kernels/numba/_jit.py): head dims and the direction are run-time values.

naive    one thread per output row (forward and dq: query row t, loop i = t..0; dk, dv: key row i, loop
         t = i..T-1), dot products and the row accumulator (local array) from global memory.
         dg: one thread per row for do_t.o_t - v_t.dv_t, then one thread per n for the reverse cumsum.
chunked  the one chunked core, kernels/numba/_chunked.py (decay family): segments of chunks, each walked by one
         block per (n, value-column tile) with a Da x BV state in shared memory; a state pass and a scan give
         each segment its starting state.  O(T (Dk + Dv)) memory plus one state per segment.  Forward: state
         pass, scan, o; backward: dq (from the forward's segment states), reverse state pass and scan (dS),
         dk and dv in reverse.  dg: one block per (n, sequence), each thread a contiguous run of rows (row
         dots, run sum), a suffix sum over the runs from <D, S_b>, then each thread's reverse cumsum.
Both rungs save o in the forward (needed by dg).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import cuda

from workbench.state import DecayedState

from . import _chunked
from ._arrays import DeviceIO, Saved, grid_1d, register_variant
from ._jit import bucket, cdiv, kernel, nb_type, row_axpy, row_dot, row_store, row_thread, row_zero, sequence_run

SCAN_THREADS = 128        # threads per block of the dg scan (tests shrink it)


# ============================================================================ naive
@functools.lru_cache(maxsize=None)
def _naive_kernel(DB, acc):
    """One thread per row p: out_p = sum scale exp(G_t - G_i) (a_p.b_j) c_j over j <= p (forward: t = p, i = j)
    or j >= p (rev: i = p, t = j); the log decay L = G_t - G_i is summed along the loop (always <= 0)."""
    ZERO, ONE = acc(0), acc(1)
    dot, axpy, store, zero = row_dot(DB, acc), row_axpy(DB, acc), row_store(DB), row_zero(DB, acc)
    rows = row_thread()

    @kernel
    def kern(a, b, c, g, scale, rev, out):
        n, p, T, Da, Dc = rows(a, c)
        if p >= T:
            return
        L = ZERO                             # the log decay between rows p and j
        j = p
        row = cuda.local.array(DB, acc)
        zero(row)
        while True:
            axpy(row, scale * math.exp(L) * dot(a, n, p, b, j, Da), c, n, j, Dc)
            if rev:
                if j == T - 1:
                    break
                j += 1
                L += acc(g[n, j])            # exp(G_j - G_p) = exp(sum_{p < j' <= j} g_j')
            else:
                if j == 0:
                    break
                L += acc(g[n, j])            # exp(G_p - G_{j-1}) = exp(sum_{j-1 < j' <= p} g_j')
                j -= 1
        store(out, n, p, row, Dc, ONE)
    return kern


@functools.lru_cache(maxsize=None)
def _row_dG(acc):
    """dG_t = do_t.o_t - v_t.dv_t, one thread per row."""
    rows = row_thread()

    @kernel
    def kern(do, o, v, dv, dG):
        n, t, T, _, Dv = rows(o, o)
        if t >= T:
            return
        s = acc(0)
        for e in range(Dv):
            s += acc(do[n, t, e]) * acc(o[n, t, e]) - acc(v[n, t, e]) * acc(dv[n, t, e])
        dG[n, t] = s
    return kern


@functools.lru_cache(maxsize=None)
def _reverse_cumsum(acc):
    """dg_t = sum_{t' >= t} dG_t', one thread per n, in place."""
    @kernel
    def kern(dg):
        n = cuda.grid(1)
        if n >= dg.shape[0]:
            return
        s = acc(0)
        for t in range(dg.shape[1] - 1, -1, -1):
            s += dg[n, t]
            dg[n, t] = s
        if dg.shape[1] > 0:
            dg[n, 0] = acc(0)          # exact: g_0 never enters a difference G_t - G_i (i <= t)
    return kern


def _naive_launch(a, b, c, g, scale, out, rev):
    N, T, Da = a.shape
    blocks, threads = grid_1d(T, 64)
    kern = _naive_kernel(bucket(Da, c.shape[2]), nb_type(a.dtype))
    kern[(N, blocks), threads](a, b, c, g, np.dtype(a.dtype).type(scale), bool(rev), out)


def _naive_dg(io, do, o, v, dv):
    N, T, Dv = o.shape
    acc = nb_type(o.dtype)
    dg = io.empty((N, T), o.dtype)
    blocks, threads = grid_1d(T, 64)
    _row_dG(acc)[(N, blocks), threads](do, o, v, dv, dg)
    _reverse_cumsum(acc)[grid_1d(N, 64)](dg)
    return dg


# ============================================================================ chunked dg
@functools.lru_cache(maxsize=None)
def _scan_dg(NT, acc):
    """One block per (n, sequence j) of [a, b), NT threads; thread u owns rows [a + u SEG, a + (u+1) SEG).
    Pass 1: dG_t = do_t.o_t - v_t.dv_t into dg, segment sums into tot[u], and the block's partial sums of
    <D, S_T> (the final state's gradient and the final state, when given); thread 0 turns tot into suffix sums
    over later segments, starting from <D, S_T>; pass 2: each thread's reverse cumulative sum of its rows."""
    ZERO = acc(0)
    run = sequence_run(NT)

    @kernel
    def kern(do, o, v, dv, cu, D, Sfin, has_D, has_init, dg):
        n = cuda.blockIdx.x
        u = cuda.threadIdx.x
        j, a, b, lo, hi = run(cu, u)
        Dv = o.shape[2]
        tot = cuda.shared.array(NT, acc)
        red = cuda.shared.array(NT, acc)
        c = ZERO
        if has_D:
            X, Y = D.shape[2], D.shape[3]
            for x in range(u, X * Y, NT):
                d = x // Y
                e = x - d * Y
                c += D[n, j, d, e] * Sfin[n, j, d, e]
        red[u] = c
        s = ZERO
        for t in range(lo, hi):
            r = ZERO
            for e in range(Dv):
                r += acc(do[n, t, e]) * acc(o[n, t, e]) - acc(v[n, t, e]) * acc(dv[n, t, e])
            dg[n, t] = r
            s += r
        tot[u] = s
        cuda.syncthreads()
        if u == 0:
            after = ZERO
            for w in range(NT):
                after += red[w]                # <D, S_T>: every position's decay scales the final state
            for w in range(NT - 1, -1, -1):
                seg = tot[w]
                tot[w] = after                 # sum over segments after w
                after += seg
        cuda.syncthreads()
        s = tot[u]
        for t in range(hi - 1, lo - 1, -1):
            s += dg[n, t]
            dg[n, t] = s
        if lo == a and hi > lo and not has_init:
            dg[n, a] = ZERO            # exact: without S0, g_a never enters a difference G_t - G_i (i <= t)
    return kern


def _chunked_dg(io, do, o, v, dv, segs, D, Sfin, has_init):
    N, T, Dv = o.shape
    acc = nb_type(o.dtype)
    dg = io.empty((N, T), o.dtype)
    d4 = _chunked._dummy(acc, 4)
    _scan_dg(SCAN_THREADS, acc)[(N, segs.nseq), SCAN_THREADS](
        do, o, v, dv, segs.cu_dev, d4 if D is None else D, d4 if Sfin is None else Sfin, D is not None, has_init, dg)
    return dg


# ============================================================================ variants
@dataclass
class _Context(Saved):
    """What the backward needs (impl: "naive" or "chunked"; o for dg; chunked: the segments and the forward
    pass's states, whether an initial state was given)."""
    log_decay: object
    o: object
    scale: float
    segs: object = None
    fw: object = None
    has_init: bool = False


def _naive_forward(io, q, k, v, g, scale):
    o = io.empty((q.shape[0], q.shape[1], v.shape[2]), q.dtype)
    _naive_launch(q, k, v, g, scale, o, rev=False)
    return o


def _naive_backward(ctx, do):
    io, q, k, v, g, scale = ctx.io, ctx.q, ctx.k, ctx.v, ctx.log_decay, ctx.scale
    dq, dk, dv = io.empty(q.shape, q.dtype), io.empty(k.shape, k.dtype), io.empty(v.shape, v.dtype)
    _naive_launch(do, v, k, g, scale, dq, rev=False)        # dq_t = sum_{i<=t} w (do_t.v_i) k_i
    _naive_launch(v, do, q, g, scale, dk, rev=True)         # dk_i = sum_{t>=i} w (v_i.do_t) q_t
    _naive_launch(k, q, do, g, scale, dv, rev=True)         # dv_i = sum_{t>=i} w (k_i.q_t) do_t
    return dq, dk, dv, _naive_dg(io, do, ctx.o, v, dv)


def _forward(impl, q, k, v, log_decay, scale=1.0, initial_state=None, return_state=False, cu_seqlens=None):
    io = DeviceIO(q)
    q, k, v, g = (io.to_device(x) for x in (q, k, v, log_decay))
    if impl != "chunked":
        o = _naive_forward(io, q, k, v, g, scale)
        return io.to_caller(o), _Context(io, impl, q, k, v, g, o, scale)
    N, T, Dk = q.shape
    Dv = v.shape[2]
    core = _chunked.plan(q, _chunked.DECAY, (Dk, Dv))
    cu = tuple(cu_seqlens) if cu_seqlens is not None else (0, T)
    L = _chunked.choose_segments(N, max(b - a for a, b in zip(cu[:-1], cu[1:])), core.C, cdiv(Dv, core.BV))
    segs = _chunked.segments(io, T, core.C, L, cu)
    S0 = None if initial_state is None else io.to_device(initial_state.S)
    fw = _chunked.states(io, core, segs, k, v, Dk, Dv, g=g, S0=S0, want_final=bool(return_state), scale=scale)
    o = io.empty((N, T, Dv), q.dtype)
    _chunked.run(core, segs, q, k, v, o, g=g, scale=scale, S0=fw.starts,
                 Sfin=fw.final if segs.single else None)
    ctx = _Context(io, impl, q, k, v, g, o, scale, segs, fw, S0 is not None)
    out = io.to_caller(o)
    return ((out, DecayedState(io.to_caller(fw.final))) if return_state else out), ctx


def _backward(ctx: _Context, do, dfinal=None):
    """Decayed attention's backward (module doc); with states (kernels/numba/_chunked.py): dq's run starts
    from the forward's states transposed; dk's and dv's reverse runs carry dS = the state's gradient from
    dfinal; dS0 is dk's run's final state (transposed); dg adds <dS_T, S_T> (the reference's derivation)."""
    io = ctx.io
    do = io.to_device(do)
    if ctx.impl != "chunked":
        return tuple(io.to_caller(x) for x in _naive_backward(ctx, do))
    q, k, v, g, scale, segs, fw = ctx.q, ctx.k, ctx.v, ctx.log_decay, ctx.scale, ctx.segs, ctx.fw
    N, T, Dk = q.shape
    Dv = v.shape[2]
    D = None if dfinal is None else io.to_device(dfinal.S)
    dq, dk, dv = io.empty(q.shape, q.dtype), io.empty(k.shape, k.dtype), io.empty(v.shape, v.dtype)
    core = _chunked.plan(q, _chunked.DECAY, (Dk, Dv))
    _chunked.run(core, segs, do, v, k, dq, g=g, scale=scale, S0=fw.starts, st_trans=True)
    bw = _chunked.states(io, core, segs, q, do, Dk, Dv, g=g, S0=D, want_final=ctx.has_init, scale=scale,
                         scale_in_state=True, rev=True)
    _chunked.run(core, segs, v, do, q, dk, g=g, scale=scale, scale_in_state=True, rev=True, S0=bw.starts,
                 st_trans=True, Sfin=bw.final if segs.single else None)
    _chunked.run(core, segs, k, q, do, dv, g=g, scale=scale, scale_in_state=True, rev=True, S0=bw.starts)
    dg = _chunked_dg(io, do, ctx.o, v, dv, segs, D, fw.final if D is not None else None, ctx.has_init)
    grads = tuple(io.to_caller(x) for x in (dq, dk, dv, dg))
    return grads + ((DecayedState(io.to_caller(bw.final)),) if ctx.has_init else ())


register_variant("decayed", "naive", _forward, _backward,
                 "one thread per output row (query row for o, dq; key row for dk, dv), O(T^2), "
                 "decay summed along the loop; dg by row dots + a per-n reverse cumsum",
                 {"float32": 1e-4, "float64": 5e-13})
register_variant("decayed", "chunked", _forward, _backward,
                 "chunked core (kernels/numba/_chunked.py, decay family): C x C intra-chunk block with "
                 "within-chunk log-decay cumsums, Dk x BV state in shared memory carried across the chunks of "
                 "a segment, segment states + scan; backward = the same core for dq and, in reverse, for dk "
                 "and dv; dg by a block segmented reverse scan per sequence; initial/final state, cu_seqlens",
                 {"float32": 1e-4, "float64": 2e-13}, default=True, features=frozenset({"state", "packed"}))
