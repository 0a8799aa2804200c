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

Stability: every exponent is a difference B_p - B_i (i <= p) of cumulative sums of log decays <= 0, so <= 0;
the chunked rung uses within-chunk cumulative sums only (never G_t of the whole sequence, which reaches
-30 T), the naive rung accumulates sum_{i<j<=t} g_j along its loop.  Any log decay in [-inf, 0] works:
log_decay_t = -inf is an exact reset (every token before t drops out of o_t' for t' >= t).  The naive rung's
running sum becomes -inf and exp(-inf) = 0; the chunked rung floors log decays at a finite value whose exp
is exactly 0 (kernels/numba/_chunked.py says why that is exact), so its within-chunk sums stay finite.

Layout: q, k (N, T, Dk); v, o, do (N, T, Dv); log_decay, dg (N, T); C-contiguous.  Accumulation in float32 for
float32 inputs, float64 for float64.  Kernels are compiled per head-dim bucket and dtype (kernels/numba/_jit.py):
head dims and the direction are run-time values.

naive    one thread per output row (forward and dq: query row t, loop i = t..0; dk, dv: key row i, loop
         t = i..T-1), dot products and the row accumulator (local array) from global memory.
         dg: one thread per row for do_t.o_t - v_t.dv_t, then one thread per n for the reverse cumsum.
chunked  kernels/numba/_chunked.py (decay family): grid (N, Dc/BV), the block walks the chunks with a Da x BV
         state in shared memory; O(T (Dk + Dv)) memory, 4 launches of the same kernel (o; dq; dk, dv in
         reverse).  dg: one block per n, each thread a contiguous segment of rows (row dots, segment sum), a
         suffix sum over the segments, then each thread's reverse cumsum.
Both rungs save o in the forward (needed by dg).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import cuda

from . import _chunked
from ._arrays import DeviceIO, Saved, grid_1d, register_variant
from ._jit import bucket, kernel, nb_type, row_axpy, row_dot, row_store

SCAN_THREADS = 128        # threads per block of the dg scan (tests shrink it)


# ============================================================================ naive
@functools.lru_cache(maxsize=None)
def _naive_kernel(DB, acc):
    """One thread per row p: out_p = sum scale exp(G_t - G_i) (a_p.b_j) c_j over j <= p (forward: t = p, i = j)
    or j >= p (rev: i = p, t = j); the log decay L = G_t - G_i is summed along the loop (always <= 0)."""
    ZERO, ONE = acc(0), acc(1)
    dot, axpy, store = row_dot(DB, acc), row_axpy(DB, acc), row_store(DB)

    @kernel
    def kern(a, b, c, g, scale, rev, out):
        n = cuda.blockIdx.x
        p = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        T, Da, Dc = a.shape[1], a.shape[2], c.shape[2]
        if p >= T:
            return
        row = cuda.local.array(DB, acc)
        for e in range(DB):
            row[e] = ZERO
        L = ZERO
        j = p
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
    @kernel
    def kern(do, o, v, dv, dG):
        n = cuda.blockIdx.x
        t = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        if t >= o.shape[1]:
            return
        s = acc(0)
        for e in range(o.shape[2]):
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
    """One block per n, NT threads; thread u owns rows [u SEG, (u+1) SEG).  Pass 1: dG_t into dg, segment
    sums into tot[u]; thread 0 turns tot into suffix sums over later segments; pass 2: each thread's reverse
    cumulative sum of its rows, starting from the sum of all later segments."""
    ZERO = acc(0)

    @kernel
    def kern(do, o, v, dv, dg):
        n = cuda.blockIdx.x
        u = cuda.threadIdx.x
        T, Dv = o.shape[1], o.shape[2]
        SEG = (T + NT - 1) // NT
        lo = min(u * SEG, T)
        hi = min(lo + SEG, T)
        tot = cuda.shared.array(NT, acc)
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
            for w in range(NT - 1, -1, -1):
                seg = tot[w]
                tot[w] = after                 # sum over segments after w
                after += seg
        cuda.syncthreads()
        s = tot[u]
        for t in range(hi - 1, lo - 1, -1):
            s += dg[n, t]
            dg[n, t] = s
        if lo == 0 and hi > 0:
            dg[n, 0] = ZERO            # exact: g_0 never enters a difference G_t - G_i (i <= t)
    return kern


def _chunked_dg(io, do, o, v, dv):
    N, T, Dv = o.shape
    dg = io.empty((N, T), o.dtype)
    _scan_dg(SCAN_THREADS, nb_type(o.dtype))[N, SCAN_THREADS](do, o, v, dv, dg)
    return dg


# ============================================================================ variants
def _run(impl, a, b, c, g, scale, out, rev):
    if impl == "chunked":
        _chunked.launch(a, b, c, out, g=g, scale=scale, decay=True, rev=rev)
    else:
        _naive_launch(a, b, c, g, scale, out, rev)


@dataclass
class _Context(Saved):
    """What the backward needs (impl: "naive" or "chunked"; o for dg)."""
    log_decay: object
    o: object
    scale: float


def _forward(impl, q, k, v, log_decay, scale=1.0):
    io = DeviceIO(q)
    q, k, v, g = (io.to_device(x) for x in (q, k, v, log_decay))
    N, T, _ = q.shape
    o = io.empty((N, T, v.shape[2]), q.dtype)
    _run(impl, q, k, v, g, scale, o, rev=False)
    return io.to_caller(o), _Context(io, impl, q, k, v, g, o, scale)


def _backward(ctx: _Context, do):
    io, q, k, v, g, scale = ctx.io, ctx.q, ctx.k, ctx.v, ctx.log_decay, ctx.scale
    do = io.to_device(do)
    dq, dk, dv = io.empty(q.shape, q.dtype), io.empty(k.shape, k.dtype), io.empty(v.shape, v.dtype)
    _run(ctx.impl, do, v, k, g, scale, dq, rev=False)        # dq_t = sum_{i<=t} w (do_t.v_i) k_i
    _run(ctx.impl, v, do, q, g, scale, dk, rev=True)         # dk_i = sum_{t>=i} w (v_i.do_t) q_t
    _run(ctx.impl, k, q, do, g, scale, dv, rev=True)         # dv_i = sum_{t>=i} w (k_i.q_t) do_t
    dg = (_chunked_dg if ctx.impl == "chunked" else _naive_dg)(io, do, ctx.o, v, dv)
    return tuple(io.to_caller(x) for x in (dq, dk, dv, dg))


register_variant("decayed", "naive", _forward, _backward,
                 "one thread per output row (query row for o, dq; key row for dk, dv), O(T^2), "
                 "decay summed along the loop; dg by row dots + a per-n reverse cumsum",
                 {"float32": 1e-4, "float64": 5e-13})
register_variant("decayed", "chunked", _forward, _backward,
                 "chunked: C x C intra-chunk block with within-chunk log-decay cumsums, Dk x BV "
                 "state in shared memory carried across chunks; backward = the same kernel for dq "
                 "and, run in reverse, for dk and dv; dg by a block segmented reverse scan",
                 {"float32": 1e-4, "float64": 2e-13}, default=True)
