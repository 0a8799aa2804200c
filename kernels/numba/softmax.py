"""Softmax attention in Numba CUDA: a plain "naive" rung and a FlashAttention-2 style "flash" rung (the algorithm
of cupy:flash; this variant was called numba:tiled, a name still accepted with a FutureWarning).

Math (workbench/reference/softmax.py; per leading index n, rows t, keys i, i <= t when causal):
    a_ti = scale q_t.k_i,   lse_t = log sum_i exp(a_ti),   p_ti = exp(a_ti - lse_t),   o_t = sum_i p_ti v_i.
Backward (derived in the reference's docstring), with do = dL/do:
    D_t  = do_t.o_t                       (= sum_i p_ti dp_ti, the softmax Jacobian's diagonal term)
    dp_ti = do_t.v_i,   da_ti = p_ti (dp_ti - D_t)
    dv_i = sum_t p_ti do_t,   dk_i = scale sum_t da_ti q_t,   dq_t = scale sum_i da_ti k_i.
Both rungs save lse (accumulation dtype) in the forward and recompute p_ti from it in the backward; no T x T
matrix is ever stored.

Layout: q, k (N, T, Dk), v, o, do (N, T, Dv), lse and D (N, T), all C-contiguous.  Every kernel runs one
thread per row (a query row t, or a key row i in the dk/dv kernels), grid = (N, ceil(T / rows per block)):
blockIdx.x is the leading index n (up to 2^31-1), blockIdx.y the row tile.

naive  -- forward: each thread streams k_i, v_i from global memory with an online softmax (running max m,
          running sum l, accumulator acc[Dv] in a per-thread local array).  Backward: D kernel, then one
          thread per query row for dq, and one thread per key row for dk, dv, all reading global memory.
flash  -- forward: a block of BQ threads (BQ query rows) stages key/value tiles of BK rows in shared memory;
          every thread reads the same k_j / v_j element at once (a shared-memory broadcast).  Causal: the key
          loop stops at the block's last query row (tiles above the diagonal are never loaded); inside the
          diagonal tile each thread's own bound j <= t applies.  Backward: D kernel; a dk/dv kernel over key
          tiles (thread = key row, its k_i, v_i in padded shared rows, dk_i, dv_i in local arrays) that
          streams query tiles (q, do, lse, D staged in shared; causal: starting at the block's first key
          row); and a separate dq kernel over query tiles that streams key tiles.  Why a second kernel rather
          than atomics for dq: deterministic results, no float64 atomics contention, and each kernel writes
          its rows once; the price is recomputing q.k and do.v once more (7 instead of 5 T^2 D products).

Packed sequences (``cu_seqlens``, offsets into the T axis; registry feature "packed").  Every kernel gets
three run-time arguments: ``tseq`` (T,) int32, the sequence of each position, ``cu`` (nseq + 1,) int32, the
offsets, and ``packed`` (False: one sequence, the arrays are one-element stand-ins never read).  Row t of
sequence [a, b) attends to the keys [a, t + 1) (causal) or [a, b); key i is seen by the query rows [i, b) or
[a, b) (``_windows``).  The math above holds unchanged inside each window (the gradients are the usual ones
with p_ti = 0 outside it).  naive: each thread loops over its own window.  flash: a block loads only the
tiles between its first row's window start and its last row's window end (both grow with the row), the
tiles starting at that first position; each thread cuts the first and last tiles to its own window, so a
block of rows from several sequences masks per thread, and tiles outside every row's sequence are never
loaded.  One sequence (no cu_seqlens, or cu = (0, T)) runs the same kernels with ``packed`` False.

Accumulation is float32 for float32 inputs, float64 for float64.  Kernels are compiled once per head-dim
bucket DB (``_jit.BUCKETS``: 64, 128, 256) and dtype, cached on disk (kernels/numba/_jit.py): the head
dims are read from the arrays at run time, shared tiles are zero-filled past them, the per-thread rows
(q row, accumulators) are sized by the bucket and walked in skip groups, and ``causal`` is a run-time
argument (it only sets loop bounds).  Tile sizes are a function of the bucket and shrink so static shared
memory stays under 48 KB.  ``CONFIG`` holds the tile sizes (tests shrink them to run under the simulator).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import cuda

from ._arrays import DeviceIO, Saved, register_variant
from . import _chunked
from ._jit import (bucket, cdiv, device, group, kernel, nb_type, row_axpy, row_dot, row_store, row_thread,
                   row_zero, tile_axpy, tile_dot, tile_loader, tile_thread, work_dtype)

CONFIG = {"block_q": 64, "block_k": 64, "block_kv": 32, "block_q_bwd": 32}
SHARED_BYTES = 46 * 1024          # static shared memory budget per block (device limit 48 KB)


def _fit(rows: int, row_bytes: int, fixed_bytes: int = 0, budget: int = None) -> int:
    """Halve a tile's row count until rows * row_bytes + fixed_bytes fits the shared-memory budget."""
    budget = SHARED_BYTES if budget is None else budget
    while rows > 1 and rows * row_bytes + fixed_bytes > budget:
        rows //= 2
    return rows


# ============================================================================ packed sequences
@functools.lru_cache(maxsize=None)
def _windows():
    """Device functions keys(tseq, cu, packed, causal, t, T) -> [lo, hi), the keys query row t attends to,
    and queries(..., i, T) -> [lo, hi), the query rows that attend to key i.  Row t's sequence is [a, b)
    (packed: s = tseq[t], [cu[s], cu[s + 1]); else [0, T)); keys: [a, t + 1) causal, [a, b) not; queries:
    [i, b) causal, [a, b) not.  Both bounds grow with the row, so the rows r0..r1 of a block together need
    [window(r0).lo, window(r1).hi)."""
    def span(tseq, cu, packed, t, T):
        a = 0
        b = T
        if packed:
            s = tseq[t]
            a = cu[s]
            b = cu[s + 1]
        return a, b
    span = device(span)

    def keys(tseq, cu, packed, causal, t, T):
        a, b = span(tseq, cu, packed, t, T)
        return a, (t + 1 if causal else b)

    def queries(tseq, cu, packed, causal, i, T):
        a, b = span(tseq, cu, packed, i, T)
        return (i if causal else a), b
    return device(keys), device(queries)


@functools.lru_cache(maxsize=None)
def _block_windows(ROWS):
    """Device functions block_keys(tseq, cu, packed, causal, r0, r, T) -> (lo, hi, a, b) for a block of ROWS
    query rows from r0: [lo, hi) the keys of all its rows, from its first row's first key to its last row's
    last (causal: no key beyond its last row; packed: none outside its rows' sequences), and [a, b) the keys
    of the thread's own row r (clamped to T - 1); block_queries(...) the same for a block of key rows."""
    keys, queries = _windows()

    def over(window):
        def block(tseq, cu, packed, causal, r0, r, T):
            lo = window(tseq, cu, packed, causal, r0, T)[0]
            hi = window(tseq, cu, packed, causal, min(T, r0 + ROWS) - 1, T)[1]
            a, b = window(tseq, cu, packed, causal, min(r, T - 1), T)
            return lo, hi, a, b
        return device(block)
    return over(keys), over(queries)


# ============================================================================ device helpers
@functools.lru_cache(maxsize=None)
def _online(DB, acc):
    """Device functions of a row's online softmax (running max m, running sum l, accumulator accv[:Dv]):
    start(accv) -> (m, l) zeroes accv and returns (-inf, 0); step(s, m, l, accv, Dv) -> (m, l, p) takes score
    s in: a new maximum rescales l and accv by exp(m_old - m_new); p = exp(s - m), already added to l, is the
    weight of s's value row, which the caller adds to accv."""
    G = group(DB)
    NEG_INF, ZERO = acc(-math.inf), acc(0)
    zero = row_zero(DB, acc)

    def start(accv):
        zero(accv)
        return NEG_INF, ZERO

    def step(s, m, l, accv, Dv):
        if s > m:
            corr = math.exp(m - s)
            l *= corr
            for e0 in range(0, DB, G):
                if e0 < Dv:
                    for e in range(e0, e0 + G):
                        accv[e] *= corr
            m = s
        p = math.exp(s - m)
        return m, l + p, p
    return device(start), device(step)


@functools.lru_cache(maxsize=None)
def _pair(DB, acc):
    """Device function pair(q, k, v, do, lse, D, n, t, i, scale, Dk, Dv) -> (p, ds) of query row t and key i,
    from global memory: p_ti = exp(scale q_t.k_i - lse_t), ds_ti = p_ti (do_t.v_i - D_t)."""
    dot = row_dot(DB, acc)

    def pair(q, k, v, do, lse, D, n, t, i, scale, Dk, Dv):
        p = math.exp(dot(q, n, t, k, i, Dk) * scale - lse[n, t])
        return p, p * (dot(do, n, t, v, i, Dv) - D[n, t])
    return device(pair)


@functools.lru_cache(maxsize=None)
def _stage(ROWS, DB, NT, acc):
    """Device function stage(sa, a, Da, sb, b, Db, n, r0, T): the next pair of tiles of the flash loops, the
    rows r0.. of a and b into the shared tiles sa and sb, zero past T and past the head dims Da, Db; every
    thread of the block calls it (it waits until the previous tiles are consumed, and until these are in)."""
    load = tile_loader(ROWS, DB, NT, acc)
    ONE = acc(1)

    def stage(sa, a, Da, sb, b, Db, n, r0, T):
        cuda.syncthreads()
        load(sa, a, n, 0, T, r0, 0, Da, False, ONE)
        load(sb, b, n, 0, T, r0, 0, Db, False, ONE)
        cuda.syncthreads()
    return device(stage)


# ============================================================================ naive
@functools.lru_cache(maxsize=None)
def _naive_fwd(DB, acc):
    """One thread per query row t: online softmax over keys i (i <= t when causal), all reads global."""
    ONE = acc(1)
    dot, axpy, store = row_dot(DB, acc), row_axpy(DB, acc), row_store(DB)
    rows, (start, step), keys = row_thread(), _online(DB, acc), _windows()[0]

    @kernel
    def kern(q, k, v, scale, causal, tseq, cu, packed, o, lse):
        n, t, T, Dk, Dv = rows(q, v)
        if t >= T:
            return
        ia, ib = keys(tseq, cu, packed, causal, t, T)
        accv = cuda.local.array(DB, acc)
        m, l = start(accv)
        for i in range(ia, ib):
            m, l, p = step(dot(q, n, t, k, i, Dk) * scale, m, l, accv, Dv)
            axpy(accv, p, v, n, i, Dv)
        store(o, n, t, accv, Dv, ONE / l)
        lse[n, t] = m + math.log(l)
    return kern


@functools.lru_cache(maxsize=None)
def _rowdot(acc):
    """D_t = do_t . o_t, one thread per row (shared by both rungs' backward); a plain run-time loop."""
    rows = row_thread()

    @kernel
    def kern(do, o, D):
        n, t, T, _, Dv = rows(o, o)
        if t >= T:
            return
        s = acc(0)
        for e in range(Dv):
            s += acc(do[n, t, e]) * acc(o[n, t, e])
        D[n, t] = s
    return kern


@functools.lru_cache(maxsize=None)
def _naive_backward(DB, acc):
    """The naive backward's kernels (dq, dkdv), all reads global:
    dq:   one thread per query row t: dq_t = scale sum_{i} p_ti (do_t.v_i - D_t) k_i;
    dkdv: one thread per key row i: dv_i = sum_t p_ti do_t,  dk_i = scale sum_t p_ti (do_t.v_i - D_t) q_t."""
    axpy, store, zero = row_axpy(DB, acc), row_store(DB), row_zero(DB, acc)
    rows, pair, (keys, queries) = row_thread(), _pair(DB, acc), _windows()

    @kernel
    def kern_dq(q, k, v, do, lse, D, scale, causal, tseq, cu, packed, dq):
        n, t, T, Dk, Dv = rows(q, v)
        if t >= T:
            return
        ia, ib = keys(tseq, cu, packed, causal, t, T)
        g = cuda.local.array(DB, acc)
        zero(g)
        for i in range(ia, ib):
            axpy(g, pair(q, k, v, do, lse, D, n, t, i, scale, Dk, Dv)[1], k, n, i, Dk)
        store(dq, n, t, g, Dk, scale)

    @kernel
    def kern_dkdv(q, k, v, do, lse, D, scale, causal, tseq, cu, packed, dk, dv):
        n, i, T, Dk, Dv = rows(q, v)
        if i >= T:
            return
        ta, tb = queries(tseq, cu, packed, causal, i, T)
        gk = cuda.local.array(DB, acc)
        gv = cuda.local.array(DB, acc)
        zero(gk)
        zero(gv)
        for t in range(ta, tb):
            p, ds = pair(q, k, v, do, lse, D, n, t, i, scale, Dk, Dv)
            axpy(gv, p, do, n, t, Dv)
            axpy(gk, ds, q, n, t, Dk)
        store(dk, n, i, gk, Dk, scale)
        store(dv, n, i, gv, Dv, acc(1))
    return kern_dq, kern_dkdv


# ============================================================================ flash
@functools.lru_cache(maxsize=None)
def _flash_fwd(DB, BQ, BK, acc):
    """Block = BQ threads = BQ query rows of one n; K/V tiles of BK rows in shared memory (sk, sv, zero past
    the head dims); each thread keeps its pre-scaled query row qr[DB] and its accumulator accv[DB] in
    registers."""
    ZERO, ONE = acc(0), acc(1)
    stage, (start, step), block_keys = _stage(BK, DB, BQ, acc), _online(DB, acc), _block_windows(BQ)[0]
    dot, axpy, store = tile_dot(DB, acc), tile_axpy(DB), row_store(DB)
    rows = tile_thread(BQ)

    @kernel
    def kern(q, k, v, scale, causal, tseq, cu, packed, o, lse):
        sk = cuda.shared.array((BK, DB), acc)
        sv = cuda.shared.array((BK, DB), acc)
        qr = cuda.local.array((1, DB), acc)                # the thread's pre-scaled query row
        accv = cuda.local.array(DB, acc)
        n, q0, tid, t, T, Dk, Dv, live = rows(q, v)
        for d in range(DB):
            qr[0, d] = acc(q[n, t, d]) * scale if live and d < Dk else ZERO
        m, l = start(accv)
        # the block's key tiles; each thread's own window cuts the first and last tiles short
        kstart, kend, ia, ib = block_keys(tseq, cu, packed, causal, q0, t, T)
        for k0 in range(kstart, kend, BK):
            stage(sk, k, Dk, sv, v, Dv, n, k0, T)
            if live:
                for j in range(max(0, ia - k0), min(BK, ib - k0)):
                    m, l, p = step(dot(qr, 0, sk, j, Dk), m, l, accv, Dv)
                    axpy(accv, p, sv, j, Dv)
        if live:
            store(o, n, t, accv, Dv, ONE / l)
            lse[n, t] = m + math.log(l)
    return kern


@functools.lru_cache(maxsize=None)
def _flash_dkdv(DB, BKV, BQ, acc):
    """Block = BKV threads = BKV key rows i of one n; its own k_i, v_i in padded shared rows (odd stride:
    no bank conflicts when every thread reads its own row at the same column); dk_i, dv_i in registers.
    Query tiles of BQ rows (q, do, lse, D) are staged in shared memory and read as broadcasts."""
    ZERO, ONE = acc(0), acc(1)
    DB1 = DB + 1                        # padded row stride of the threads' own rows
    G = group(DB)
    load_own = tile_loader(BKV, DB, BKV, acc)
    load = tile_loader(BQ, DB, BKV, acc)
    dot, axpy, store, zero = tile_dot(DB, acc), tile_axpy(DB), row_store(DB), row_zero(DB, acc)
    rows, block_queries = tile_thread(BKV), _block_windows(BKV)[1]

    @kernel
    def kern(q, k, v, do, lse, D, scale, causal, tseq, cu, packed, dk, dv):
        kr = cuda.shared.array((BKV, DB1), acc)
        vr = cuda.shared.array((BKV, DB1), acc)
        sq = cuda.shared.array((BQ, DB), acc)
        sdo = cuda.shared.array((BQ, DB), acc)
        slse = cuda.shared.array(BQ, acc)
        sD = cuda.shared.array(BQ, acc)
        gk = cuda.local.array(DB, acc)
        gv = cuda.local.array(DB, acc)
        n, k0, tid, i, T, Dk, Dv, live = rows(q, v)
        load_own(kr, k, n, 0, T, k0, 0, Dk, False, scale)          # pre-scaled k
        load_own(vr, v, n, 0, T, k0, 0, Dv, False, ONE)
        zero(gk)
        zero(gv)
        # the block's query tiles (causal: none before k0; packed: none outside its keys' sequences)
        tstart, tend, ta, tb = block_queries(tseq, cu, packed, causal, k0, i, T)
        for t0 in range(tstart, tend, BQ):
            cuda.syncthreads()
            load(sq, q, n, 0, T, t0, 0, Dk, False, ONE)
            load(sdo, do, n, 0, T, t0, 0, Dv, False, ONE)
            for r in range(tid, BQ, BKV):
                slse[r] = lse[n, t0 + r] if t0 + r < T else ZERO
                sD[r] = D[n, t0 + r] if t0 + r < T else ZERO
            cuda.syncthreads()
            if live:
                for r in range(max(0, ta - t0), min(BQ, tb - t0)):
                    p = math.exp(dot(sq, r, kr, tid, Dk) - slse[r])
                    dp = ZERO
                    for e0 in range(0, DB, G):              # dp and dv in one pass over the do row
                        if e0 < Dv:
                            for e in range(e0, e0 + G):
                                dp += sdo[r, e] * vr[tid, e]
                                gv[e] += p * sdo[r, e]
                    axpy(gk, p * (dp - sD[r]), sq, r, Dk)
        if live:
            store(dk, n, i, gk, Dk, scale)
            store(dv, n, i, gv, Dv, ONE)
    return kern


@functools.lru_cache(maxsize=None)
def _flash_dq(DB, BQ, BK, acc):
    """Block = BQ threads = BQ query rows t; own q_t, do_t in padded shared rows, dq_t in registers; key
    tiles (k, v) of BK rows staged in shared memory; causal: no key tile beyond the block's last row."""
    ZERO, ONE = acc(0), acc(1)
    DB1 = DB + 1
    load_own = tile_loader(BQ, DB, BQ, acc)
    stage, block_keys = _stage(BK, DB, BQ, acc), _block_windows(BQ)[0]
    dot, axpy, store, zero = tile_dot(DB, acc), tile_axpy(DB), row_store(DB), row_zero(DB, acc)
    rows = tile_thread(BQ)

    @kernel
    def kern(q, k, v, do, lse, D, scale, causal, tseq, cu, packed, dq):
        qr = cuda.shared.array((BQ, DB1), acc)
        dor = cuda.shared.array((BQ, DB1), acc)
        sk = cuda.shared.array((BK, DB), acc)
        sv = cuda.shared.array((BK, DB), acc)
        g = cuda.local.array(DB, acc)
        n, q0, tid, t, T, Dk, Dv, live = rows(q, v)
        load_own(qr, q, n, 0, T, q0, 0, Dk, False, scale)         # pre-scaled q
        load_own(dor, do, n, 0, T, q0, 0, Dv, False, ONE)
        zero(g)
        lt = lse[n, t] if live else ZERO
        Dt = D[n, t] if live else ZERO
        kstart, kend, ia, ib = block_keys(tseq, cu, packed, causal, q0, t, T)     # as the forward's
        for k0 in range(kstart, kend, BK):
            stage(sk, k, Dk, sv, v, Dv, n, k0, T)
            if live:
                for j in range(max(0, ia - k0), min(BK, ib - k0)):
                    p = math.exp(dot(qr, tid, sk, j, Dk) - lt)
                    axpy(g, p * (dot(dor, tid, sv, j, Dv) - Dt), sk, j, Dk)
        if live:
            store(dq, n, t, g, Dk, scale)
    return kern


# ============================================================================ host side
def _tiles(DB, itemsize):
    """Tile sizes of the flash rung for head-dim bucket DB, shrunk to the shared-memory budget.  The
    per-thread padded rows (k_i, v_i in dk/dv; q_t, do_t in dq) get at most half the budget, the streamed
    tiles the rest."""
    own = (2 * DB + 2) * itemsize                        # one thread's padded rows
    tile = 2 * DB * itemsize                             # one staged row of the streamed operands
    bq = CONFIG["block_q"]
    bk = _fit(CONFIG["block_k"], tile)                   # forward: K/V tile only
    bkv = _fit(CONFIG["block_kv"], own, budget=SHARED_BYTES // 2)
    bqb = _fit(CONFIG["block_q_bwd"], tile + 2 * itemsize, fixed_bytes=bkv * own)
    bq_dq = _fit(bq, own, budget=SHARED_BYTES // 2)
    bk_dq = _fit(CONFIG["block_k"], tile, fixed_bytes=bq_dq * own)
    return dict(bq=bq, bk=bk, bkv=bkv, bqb=bqb, bq_dq=bq_dq, bk_dq=bk_dq)


@dataclass(frozen=True)
class _Packing:
    """The kernels' run-time sequence arguments (tseq, cu, packed): packed, device int32 arrays of the
    sequence of every position (T,) and of the offsets (nseq + 1,); one sequence, one-element stand-ins
    (never read)."""
    tseq: object
    cu: object
    packed: bool

    @classmethod
    def of(cls, io, cu_seqlens) -> "_Packing":
        if cu_seqlens is None or len(cu_seqlens) == 2:
            dummy = _chunked._dummy(numba.int32, 1)          # (traced: _trace fakes it)
            return cls(dummy, dummy, False)
        cu = np.asarray(cu_seqlens, np.int32)
        tseq = np.repeat(np.arange(len(cu) - 1, dtype=np.int32), np.diff(cu))
        return cls(io.to_device(tseq), io.to_device(cu), True)

    @property
    def args(self) -> tuple:
        return self.tseq, self.cu, self.packed


@dataclass
class _Context(Saved):
    """What the backward needs (impl: "naive" or "flash")."""
    o: object
    lse: object                 # (N, T) log-sum-exp of every row, accumulation dtype
    causal: bool
    scale: object               # in the accumulation dtype
    dtype: np.dtype             # the inputs' dtype (the gradients have it)
    packing: _Packing


def _forward(impl, q, k, v, causal=True, scale=1.0, cu_seqlens=None):
    io = DeviceIO(q)
    N, T, Dk = q.shape
    Dv = v.shape[2]
    DB = bucket(Dk, Dv)
    wdt = work_dtype(q.dtype)
    acc = nb_type(wdt)
    ctx = _Context(io, impl, io.to_device(q), io.to_device(k), io.to_device(v), io.empty((N, T, Dv), q.dtype),
                   io.empty((N, T), wdt), bool(causal), wdt.type(scale), q.dtype, _Packing.of(io, cu_seqlens))
    args = (ctx.q, ctx.k, ctx.v, ctx.scale, ctx.causal, *ctx.packing.args, ctx.o, ctx.lse)
    if impl == "flash":
        tl = _tiles(DB, wdt.itemsize)
        bq = tl["bq"]
        _flash_fwd(DB, bq, tl["bk"], acc)[(N, cdiv(T, bq)), bq](*args)
    else:
        bq = CONFIG["block_q"]
        _naive_fwd(DB, acc)[(N, cdiv(T, bq)), bq](*args)
    return io.to_caller(ctx.o), ctx


def _backward(ctx: _Context, do):
    io, q, k, v = ctx.io, ctx.q, ctx.k, ctx.v
    N, T, Dk = q.shape
    Dv = v.shape[2]
    DB = bucket(Dk, Dv)
    wdt = work_dtype(ctx.dtype)
    acc = nb_type(wdt)
    do = io.to_device(do)
    D = io.empty((N, T), wdt)
    dq = io.empty((N, T, Dk), ctx.dtype)
    dk = io.empty((N, T, Dk), ctx.dtype)
    dv = io.empty((N, T, Dv), ctx.dtype)
    rows = 128
    _rowdot(acc)[(N, cdiv(T, rows)), rows](do, ctx.o, D)
    args = (q, k, v, do, ctx.lse, D, ctx.scale, ctx.causal, *ctx.packing.args)
    if ctx.impl == "flash":
        tl = _tiles(DB, wdt.itemsize)
        bkv, bqb, bq, bk = tl["bkv"], tl["bqb"], tl["bq_dq"], tl["bk_dq"]
        _flash_dkdv(DB, bkv, bqb, acc)[(N, cdiv(T, bkv)), bkv](*args, dk, dv)
        _flash_dq(DB, bq, bk, acc)[(N, cdiv(T, bq)), bq](*args, dq)
    else:
        b = CONFIG["block_q"]
        naive_dq, naive_dkdv = _naive_backward(DB, acc)
        naive_dkdv[(N, cdiv(T, b)), b](*args, dk, dv)
        naive_dq[(N, cdiv(T, b)), b](*args, dq)
    return io.to_caller(dq), io.to_caller(dk), io.to_caller(dv)


register_variant("softmax", "naive", _forward, _backward,
                 "one thread per query row, online softmax from global memory; naive backward "
                 "(one thread per query row for dq, per key row for dk/dv)",
                 {"float32": 1e-5, "float64": 2e-14}, features=frozenset({"packed"}))
register_variant("softmax", "flash", _forward, _backward,
                 "FlashAttention-2 style: K/V tiles in shared memory, online softmax, causal tile "
                 "skipping, saved LSE; backward recomputes P per tile (dk/dv kernel + dq kernel)",
                 {"float32": 1e-5, "float64": 2e-14}, default=True, aliases=("tiled",),
                 features=frozenset({"packed"}))
