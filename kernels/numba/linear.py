"""Linear attention in Numba CUDA: a plain "naive" rung and a chunked rung (fla's chunk form).

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
Chunked (chunks of C rows, c = 0..nC-1; intra-chunk terms use the masked C x C blocks A and dA):
    forward:   h_c = K_c^T v~_c  (Dk x Dw, every chunk in parallel);  S_c = sum_{c' < c} h_c'  (exclusive scan)
               num~_t = sum_{i in c, i <= t} A_ti v~_i + scale Q_t^T S_c
    backward:  dQ_t = scale (sum_{i in c, i<=t} dA_ti K_i + S_c dnum~_t)            (S_c saved by the forward)
               g_c = Q_c^T dnum~_c;  dS_c = sum_{c' > c} g_c'                         (reverse exclusive scan)
               dK_i = scale (sum_{t in c, t>=i} dA_ti Q_t + dS_c v~_i)
               dv_i = sum_{t in c, t>=i} A_ti dnum_t + scale (dS_c^T K_i)[:Dv]
Non-causal: no intra-chunk term, and the "previous" state is the total sum_c h_c (stored in slot 0).
Memory: O(T (Dk + Dv)) plus the per-chunk states (N, nC, Dk, Dw) -- T/C states, never one per token.

Layout: q, k (N, T, Dk); v, o, do (N, T, Dv); den (N, T); dnum~ (N, T, Dw); states (N, nC, Dk, Dw); all
C-contiguous.  Grids put the leading index n on blockIdx.x and the chunk (or row tile) on blockIdx.y.

naive   -- one thread per output row: forward num~_t accumulated over keys in a local array; backward one
           thread per query row (dq) and one per key row (dk, dv), everything read from global memory.
chunked -- kernels: chunk_states (one block per (n, chunk), each thread owns a strided set of the Dk x Dw
           state entries in a local array; Q/K/v tiles staged through shared memory DB columns at a time),
           scan_states (one thread per (n, state entry), walking the chunks), chunk_forward / chunk_dq /
           chunk_dkdv (one block per (n, chunk): the masked C x C blocks A, dA built in shared memory by a
           staged "gram" product, then every output entry of the chunk is a strided work item).
           The naive forward keeps den - eps (the extra column of num~) in a scalar beside num[Dv].

Accumulation float32 for float32 inputs, float64 for float64.  Kernels are compiled once per head-dim bucket DB,
feature map and dtype (kernels/numba/_jit.py).  Head dims, causal and normalize are run-time arguments; the
feature map stays compile-time because phi sits inside the unrolled per-thread loops (a run-time switch there
stopped their full unrolling and moved the per-thread rows to local memory).  Per-thread arrays are sized by
the bucket (DB + 1 where they hold a column of v~); loops over head dims run over the bucket in skip groups,
and work items are laid out with the bucket's strides (constant divisors), masked past the actual dims.
``CONFIG`` holds chunk/tile sizes (tests shrink them for the simulator).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import cuda

from ._arrays import DeviceIO, Saved, register_variant
from ._jit import bucket, cdiv, device, group, kernel, nb_type, row_axpy, row_dot, row_store, work_dtype

# Tiles: chunk length per accumulation dtype, columns staged per step of the C x C products, threads per
# chunk block, rows per block of the row kernels.  Tests shrink them for the simulator.
CONFIG = {"chunk_float32": 64, "chunk_float64": 32, "block_cols": 16, "threads": 128, "rows": 64}
SHARED_BYTES = 46 * 1024
PLAIN, PHI, AUG = 0, 1, 2          # how a kernel reads an operand: as stored, through phi, or as [x, 1]


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
def _loader(mode, fmap, acc):
    """load(X, n, row, col) -> X[n, row, col] as stored (PLAIN), through phi (PHI), or with an extra
    column of ones at col == X.shape[2] (AUG: the augmented value v~)."""
    phi, _ = _phi(fmap, acc)
    ONE = acc(1)
    if mode == PLAIN:
        def load(X, n, r, c):
            return acc(X[n, r, c])
    elif mode == PHI:
        def load(X, n, r, c):
            return phi(acc(X[n, r, c]))
    else:
        def load(X, n, r, c):
            return acc(X[n, r, c]) if c < X.shape[2] else ONE
    return device(load)


@functools.lru_cache(maxsize=None)
def _state_dots(DB, ymode, fmap, acc):
    """Device functions over one state S[n, cs] (Dk x Dw) and one row, unrolled over the bucket in skip groups:
    col(X, n, r, S, cs, e, D) = sum_{d < D} phi(X[n, r, d]) S[n, cs, d, e]   (a query/key row times column e)
    row(Y, n, r, S, cs, d, W) = sum_{e < W} LY(Y[n, r, e]) S[n, cs, d, e]     (row d times a value-side row,
    read as LY = ymode: PLAIN dnum~, AUG v~)."""
    phi, _ = _phi(fmap, acc)
    LY = _loader(ymode, fmap, acc)
    G = group(DB)
    ZERO = acc(0)

    def col(X, n, r, S, cs, e, D):
        s = ZERO
        for d0 in range(0, DB, G):
            if d0 < D:
                for d in range(d0, d0 + G):
                    if d < D:
                        s += phi(acc(X[n, r, d])) * S[n, cs, d, e]
        return s

    def row(Y, n, r, S, cs, d, W):
        s = ZERO
        for e0 in range(0, DB + 1, G):
            if e0 < W:
                for e in range(e0, e0 + G):
                    if e < W:
                        s += LY(Y, n, r, e) * S[n, cs, d, e]
        return s
    return device(col), device(row)


@functools.lru_cache(maxsize=None)
def _gram(C, BC, NT, PER, xmode, ymode, fmap, acc):
    """Device fn gram(X, Y, n, c0, T, W, sx, sy, out): for the work items x = tid + s*NT < C*C (s < PER),
    with t = x // C, i = x % C:  out[s] = sum_{col < W} LX(X[n, c0+t, col]) * LY(Y[n, c0+i, col]).
    Columns are staged BC at a time in the shared tiles sx, sy (C x BC each); rows past T read as 0.
    Every thread of the block must call it (it synchronises)."""
    LX, LY = _loader(xmode, fmap, acc), _loader(ymode, fmap, acc)
    ZERO = acc(0)

    def gram(X, Y, n, c0, T, W, sx, sy, out):
        tid = cuda.threadIdx.x
        for s in range(PER):
            out[s] = ZERO
        for b0 in range(0, W, BC):
            cuda.syncthreads()
            for x in range(tid, C * BC, NT):
                r = x // BC
                col = b0 + x - r * BC
                ok = c0 + r < T and col < W
                sx[r, col - b0] = LX(X, n, c0 + r, col) if ok else ZERO
                sy[r, col - b0] = LY(Y, n, c0 + r, col) if ok else ZERO
            cuda.syncthreads()
            for s in range(PER):
                x = tid + s * NT
                if x < C * C:
                    t = x // C
                    i = x - t * C
                    a = ZERO
                    for j in range(BC):
                        a += sx[t, j] * sy[i, j]
                    out[s] += a
        cuda.syncthreads()
    return device(gram)


# ============================================================================ naive
@functools.lru_cache(maxsize=None)
def _naive_fwd(DB, fmap, acc):
    """One thread per query row t: num_t = sum_i scale Q_t.K_i v_i and den_t - eps = sum_i scale Q_t.K_i over
    keys i (i <= t when causal)."""
    phi, _ = _phi(fmap, acc)
    dot, axpy, store = row_dot(DB, acc, phi), row_axpy(DB, acc), row_store(DB)
    ZERO, ONE = acc(0), acc(1)

    @kernel
    def kern(q, k, v, scale, eps, causal, normalize, o, den):
        n = cuda.blockIdx.x
        t = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        T, Dk, Dv = q.shape[1], q.shape[2], v.shape[2]
        if t >= T:
            return
        num = cuda.local.array(DB, acc)
        for e in range(DB):
            num[e] = ZERO
        nden = ZERO
        iend = t + 1 if causal else T
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
def _dnum_kernel(acc):
    """Augmented output gradient with normalize: dnum~_t = [do_t / den_t, -(do_t.o_t) / den_t]."""
    @kernel
    def kern(do, o, den, dnum):
        n = cuda.blockIdx.x
        t = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        Dv = do.shape[2]
        if t >= do.shape[1]:
            return
        inv = acc(1) / den[n, t]
        s = acc(0)
        for e in range(Dv):
            g = acc(do[n, t, e])
            s += g * acc(o[n, t, e])
            dnum[n, t, e] = g * inv
        dnum[n, t, Dv] = -s * inv
    return kern


@functools.lru_cache(maxsize=None)
def _naive_dq(DB, fmap, acc):
    """One thread per query row t: dq_t = phi'(q_t) * scale sum_i (dnum~_t.v~_i) K_i."""
    phi, dphi = _phi(fmap, acc)
    dot, axpy = row_dot(DB, acc), row_axpy(DB, acc, phi)
    ZERO = acc(0)

    @kernel
    def kern(q, k, v, dnum, scale, causal, normalize, dq):
        n = cuda.blockIdx.x
        t = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        T, Dk, Dv = q.shape[1], q.shape[2], v.shape[2]
        if t >= T:
            return
        g = cuda.local.array(DB, acc)
        for d in range(DB):
            g[d] = ZERO
        dden = acc(dnum[n, t, Dv]) if normalize else ZERO          # the extra column of dnum~ (v~ = 1 there)
        iend = t + 1 if causal else T
        for i in range(iend):
            axpy(g, dot(dnum, n, t, v, i, Dv) + dden, k, n, i, Dk)
        for d in range(DB):
            qd = acc(q[n, t, d]) if d < Dk else ZERO
            val = g[d] * scale * dphi(qd)
            if d < Dk:
                dq[n, t, d] = val
    return kern


@functools.lru_cache(maxsize=None)
def _naive_dkdv(DB, fmap, acc):
    """One thread per key row i: dk_i = phi'(k_i) * scale sum_t dA_ti Q_t,  dv_i = sum_t A_ti dnum_t."""
    phi, dphi = _phi(fmap, acc)
    pdot, dot = row_dot(DB, acc, phi), row_dot(DB, acc)
    axpy, paxpy, store = row_axpy(DB, acc), row_axpy(DB, acc, phi), row_store(DB)
    ZERO, ONE = acc(0), acc(1)

    @kernel
    def kern(q, k, v, dnum, scale, causal, normalize, dk, dv):
        n = cuda.blockIdx.x
        i = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        T, Dk, Dv = q.shape[1], q.shape[2], v.shape[2]
        if i >= T:
            return
        gk = cuda.local.array(DB, acc)
        gv = cuda.local.array(DB, acc)
        for d in range(DB):
            gk[d] = ZERO
            gv[d] = ZERO
        t0 = i if causal else 0
        for t in range(t0, T):
            a = pdot(q, n, t, k, i, Dk) * scale
            da = dot(dnum, n, t, v, i, Dv)
            if normalize:
                da += acc(dnum[n, t, Dv])
            axpy(gv, a, dnum, n, t, Dv)
            paxpy(gk, da, q, n, t, Dk)
        for d in range(DB):
            kd = acc(k[n, i, d]) if d < Dk else ZERO
            val = gk[d] * scale * dphi(kd)
            if d < Dk:
                dk[n, i, d] = val
        store(dv, n, i, gv, Dv, ONE)
    return kern


# ============================================================================ chunked
@functools.lru_cache(maxsize=None)
def _chunk_states(DB, C, NT, fmap, acc):
    """h[n, c, d, e] = sum_{r in chunk c} phi(X[n, r, d]) * Y~[n, r, e] for d < Dk, e < Dw = h.shape[3], with
    Y~ = [Y, 1] when h is one column wider than Y (Y = v with normalize) and Y itself otherwise (v, or dnum~,
    already Dw wide).
    Block = NT threads for one (n, c); thread tid owns entries x = tid + s*NT of the DB x (DB + 1) bucket
    layout of the state (entries past Dk, Dw are skipped).  Rows of the chunk are staged in shared memory RB
    at a time: X rows (RB x DB), Y~ rows (RB x (DB + 1)), zero past the actual widths."""
    phi, _ = _phi(fmap, acc)
    DW1 = DB + 1
    PER = cdiv(DB * DW1, NT)
    RB = max(1, min(C, (SHARED_BYTES // 2) // ((DB + DW1) * np.dtype(acc.name).itemsize)))
    ZERO, ONE = acc(0), acc(1)

    @kernel
    def kern(X, Y, h):
        sx = cuda.shared.array((RB, DB), acc)
        sy = cuda.shared.array((RB, DW1), acc)
        hl = cuda.local.array(PER, acc)
        n = cuda.blockIdx.x
        c = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T, Dk, Dw = X.shape[1], X.shape[2], h.shape[3]
        Dy = Y.shape[2]
        c0 = c * C
        for s in range(PER):
            hl[s] = ZERO
        for r0 in range(c0, min(c0 + C, T), RB):
            cuda.syncthreads()
            for x in range(tid, RB * DB, NT):
                r = x // DB
                d = x - r * DB
                val = ZERO
                if r0 + r < T and r0 + r < c0 + C and d < Dk:
                    val = phi(acc(X[n, r0 + r, d]))
                sx[r, d] = val
            for x in range(tid, RB * DW1, NT):
                r = x // DW1
                e = x - r * DW1
                val = ZERO
                if r0 + r < T and r0 + r < c0 + C and e < Dw:
                    val = ONE if e == Dy else acc(Y[n, r0 + r, e])
                sy[r, e] = val
            cuda.syncthreads()
            for s in range(PER):
                x = tid + s * NT
                if x < DB * DW1:
                    d = x // DW1
                    e = x - d * DW1
                    a = ZERO
                    for r in range(RB):
                        a += sx[r, d] * sy[r, e]
                    hl[s] += a
        for s in range(PER):
            x = tid + s * NT
            d = x // DW1
            e = x - d * DW1
            if x < DB * DW1 and d < Dk and e < Dw:
                h[n, c, d, e] = hl[s]
    return kern


@functools.lru_cache(maxsize=None)
def _scan_states(acc):
    """In place over the chunk axis of h (N, nC, Dk, Dw), one thread per (n, d, e):
    causal: exclusive prefix (reverse=False: sum over earlier chunks; True: over later chunks);
    non-causal: the total over all chunks, written to slot 0 (the other slots are left as they are)."""
    @kernel
    def kern(h, causal, reverse):
        n = cuda.blockIdx.x
        x = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        nC, Dk, Dw = h.shape[1], h.shape[2], h.shape[3]
        if x >= Dk * Dw:
            return
        d = x // Dw
        e = x - d * Dw
        run = acc(0)
        for j in range(nC):
            c = nC - 1 - j if reverse else j
            val = h[n, c, d, e]
            if causal:
                h[n, c, d, e] = run
            run += val
        if not causal:
            h[n, 0, d, e] = run
    return kern


@functools.lru_cache(maxsize=None)
def _chunk_forward(DB, C, BC, NT, fmap, acc):
    """One block per (n, chunk c).  Causal: A = scale Q_c K_c^T masked (i <= t) into shared memory.  Work items
    (t, e) over C x (DB + 1) (e < Dw live): num~[t, e] = sum_{i<=t} A[t, i] v~[i, e] + scale sum_d Q[t, d]
    S[n, c|0, d, e]."""
    DW1 = DB + 1
    PER_A = cdiv(C * C, NT)
    PER_O = cdiv(C * DW1, NT)
    gram = _gram(C, BC, NT, PER_A, PHI, PHI, fmap, acc)
    col, _ = _state_dots(DB, AUG, fmap, acc)
    vload = _loader(AUG, fmap, acc)
    ZERO = acc(0)

    @kernel
    def kern(q, k, v, S, scale, eps, causal, normalize, o, den):
        sA = cuda.shared.array((C, C), acc)
        sx = cuda.shared.array((C, BC), acc)
        sy = cuda.shared.array((C, BC), acc)
        sden = cuda.shared.array(C, acc)
        al = cuda.local.array(PER_A, acc)
        ol = cuda.local.array(PER_O, acc)
        n = cuda.blockIdx.x
        c = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T, Dk, Dv = q.shape[1], q.shape[2], v.shape[2]
        Dw = S.shape[3]
        c0 = c * C
        cs = c if causal else 0
        if causal:
            gram(q, k, n, c0, T, Dk, sx, sy, al)
            for s in range(PER_A):
                x = tid + s * NT
                if x < C * C:
                    t = x // C
                    i = x - t * C
                    sA[t, i] = al[s] * scale if i <= t else ZERO
            cuda.syncthreads()
        for s in range(PER_O):
            x = tid + s * NT
            t = x // DW1
            e = x - t * DW1
            val = ZERO
            if x < C * DW1 and e < Dw and c0 + t < T:
                val = col(q, n, c0 + t, S, cs, e, Dk) * scale
                if causal:
                    for i in range(t + 1):
                        val += sA[t, i] * vload(v, n, c0 + i, e)
                if normalize and e == Dv:
                    sden[t] = val + eps
            ol[s] = val
        if normalize:
            cuda.syncthreads()
        for s in range(PER_O):
            x = tid + s * NT
            t = x // DW1
            e = x - t * DW1
            if x < C * DW1 and e < Dw and c0 + t < T:
                if normalize:
                    if e == Dv:
                        den[n, c0 + t] = sden[t]
                    else:
                        o[n, c0 + t, e] = ol[s] / sden[t]
                else:
                    o[n, c0 + t, e] = ol[s]
    return kern


@functools.lru_cache(maxsize=None)
def _chunk_dq(DB, C, BC, NT, fmap, acc):
    """One block per (n, chunk c).  Causal: dA = dnum~_c v~_c^T masked (i <= t) in shared memory.  Work items
    (t, d) over C x DB (d < Dk live): dq[t, d] = phi'(q[t, d]) scale (sum_{i<=t} dA[t, i] K[i, d]
    + sum_e S[c|0, d, e] dnum~[t, e])."""
    PER_A = cdiv(C * C, NT)
    gram = _gram(C, BC, NT, PER_A, PLAIN, AUG, fmap, acc)
    phi, dphi = _phi(fmap, acc)
    _, row = _state_dots(DB, PLAIN, fmap, acc)
    ZERO = acc(0)

    @kernel
    def kern(q, k, v, dnum, S, scale, causal, dq):
        sdA = cuda.shared.array((C, C), acc)
        sx = cuda.shared.array((C, BC), acc)
        sy = cuda.shared.array((C, BC), acc)
        al = cuda.local.array(PER_A, acc)
        n = cuda.blockIdx.x
        c = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T, Dk, Dw = q.shape[1], q.shape[2], dnum.shape[2]
        c0 = c * C
        cs = c if causal else 0
        if causal:
            gram(dnum, v, n, c0, T, Dw, sx, sy, al)
            for s in range(PER_A):
                x = tid + s * NT
                if x < C * C:
                    t = x // C
                    i = x - t * C
                    sdA[t, i] = al[s] if i <= t else ZERO
            cuda.syncthreads()
        for x in range(tid, C * DB, NT):
            t = x // DB
            d = x - t * DB
            if d < Dk and c0 + t < T:
                val = row(dnum, n, c0 + t, S, cs, d, Dw)
                if causal:
                    for i in range(t + 1):
                        val += sdA[t, i] * phi(acc(k[n, c0 + i, d]))
                dq[n, c0 + t, d] = val * scale * dphi(acc(q[n, c0 + t, d]))
    return kern


@functools.lru_cache(maxsize=None)
def _chunk_dkdv(DB, C, BC, NT, fmap, acc):
    """One block per (n, chunk c).  Causal: A (scale Q K^T) and dA (dnum~ v~^T), both masked (i <= t), in shared
    memory.  Work items (i, d) and (i, e) over C x DB (d < Dk, e < Dv live):
        dk[i, d] = phi'(k[i, d]) scale (sum_{t>=i} dA[t, i] Q[t, d] + sum_e dS[d, e] v~[i, e])
        dv[i, e] = sum_{t>=i} A[t, i] dnum[t, e] + scale sum_d K[i, d] dS[d, e]
    with dS = dS_c (reverse-scanned suffix state) when causal, the total (slot 0) otherwise."""
    PER_A = cdiv(C * C, NT)
    gram_a = _gram(C, BC, NT, PER_A, PHI, PHI, fmap, acc)
    gram_da = _gram(C, BC, NT, PER_A, PLAIN, AUG, fmap, acc)
    phi, dphi = _phi(fmap, acc)
    col, row = _state_dots(DB, AUG, fmap, acc)
    ZERO = acc(0)

    @kernel
    def kern(q, k, v, dnum, dS, scale, causal, dk, dv):
        sA = cuda.shared.array((C, C), acc)
        sdA = cuda.shared.array((C, C), acc)
        sx = cuda.shared.array((C, BC), acc)
        sy = cuda.shared.array((C, BC), acc)
        al = cuda.local.array(PER_A, acc)
        n = cuda.blockIdx.x
        c = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T, Dk, Dv, Dw = q.shape[1], q.shape[2], v.shape[2], dnum.shape[2]
        c0 = c * C
        cs = c if causal else 0
        nrow = min(C, T - c0)
        if causal:
            gram_a(q, k, n, c0, T, Dk, sx, sy, al)
            for s in range(PER_A):
                x = tid + s * NT
                if x < C * C:
                    t = x // C
                    i = x - t * C
                    sA[t, i] = al[s] * scale if i <= t else ZERO
            gram_da(dnum, v, n, c0, T, Dw, sx, sy, al)
            for s in range(PER_A):
                x = tid + s * NT
                if x < C * C:
                    t = x // C
                    i = x - t * C
                    sdA[t, i] = al[s] if i <= t else ZERO
            cuda.syncthreads()
        for x in range(tid, C * DB, NT):
            i = x // DB
            d = x - i * DB
            if i < nrow and d < Dk:
                val = row(v, n, c0 + i, dS, cs, d, Dw)
                if causal:
                    for t in range(i, nrow):
                        val += sdA[t, i] * phi(acc(q[n, c0 + t, d]))
                dk[n, c0 + i, d] = val * scale * dphi(acc(k[n, c0 + i, d]))
        for x in range(tid, C * DB, NT):
            i = x // DB
            e = x - i * DB
            if i < nrow and e < Dv:
                val = col(k, n, c0 + i, dS, cs, e, Dk) * scale
                if causal:
                    for t in range(i, nrow):
                        val += sA[t, i] * acc(dnum[n, c0 + t, e])
                dv[n, c0 + i, e] = val
    return kern


# ============================================================================ host side
def _chunk_size(wdt):
    """Chunk length C and column-tile BC for the accumulation dtype, within the shared budget
    (chunk_dkdv holds two C x C blocks and two C x BC staging tiles)."""
    C = CONFIG[f"chunk_{wdt.name}"]
    BC = CONFIG["block_cols"]
    while C > 1 and (2 * C * C + 2 * C * BC) * wdt.itemsize > SHARED_BYTES:
        C //= 2
    return C, BC


def _launch_rows(T):
    b = CONFIG["rows"]
    return cdiv(T, b), b


@dataclass
class _Context(Saved):
    """What the backward needs (impl: "naive" or "chunked")."""
    o: object
    den: object                 # (N, T) denominators with normalize, else a (1, 1) placeholder
    states: object              # chunked: the forward's prefix states (N, nC, Dk, Dw), for dq; else None
    causal: bool
    normalize: bool
    feature_map: str
    scale: object               # in the accumulation dtype
    dtype: np.dtype             # the inputs' dtype (the gradients have it)


def _forward(impl, q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6):
    io = DeviceIO(q)
    N, T, Dk = q.shape
    Dv = v.shape[2]
    DB = bucket(Dk, Dv)
    Dw = Dv + 1 if normalize else Dv
    wdt = work_dtype(q.dtype)
    acc = nb_type(wdt)
    causal, normalize, fm = bool(causal), bool(normalize), feature_map
    qd, kd, vd = io.to_device(q), io.to_device(k), io.to_device(v)
    o = io.empty((N, T, Dv), q.dtype)
    den = io.empty((N, T) if normalize else (1, 1), wdt)
    sc, ep = wdt.type(scale), wdt.type(eps)
    S = None
    if impl == "chunked":
        C, BC = _chunk_size(wdt)
        NT = CONFIG["threads"]
        nC = cdiv(T, C)
        S = io.empty((N, nC, Dk, Dw), wdt)
        _chunk_states(DB, C, NT, fm, acc)[(N, nC), NT](kd, vd, S)
        _scan_states(acc)[(N, cdiv(Dk * Dw, 128)), 128](S, causal, False)
        _chunk_forward(DB, C, BC, NT, fm, acc)[(N, nC), NT](qd, kd, vd, S, sc, ep, causal, normalize, o, den)
    else:
        nb, b = _launch_rows(T)
        _naive_fwd(DB, fm, acc)[(N, nb), b](qd, kd, vd, sc, ep, causal, normalize, o, den)
    return io.to_caller(o), _Context(io, impl, qd, kd, vd, o, den, S, causal, normalize, fm, sc, q.dtype)


def _backward(ctx: _Context, do):
    io, q, k, v, fm, dtype = ctx.io, ctx.q, ctx.k, ctx.v, ctx.feature_map, ctx.dtype
    N, T, Dk = q.shape
    Dv = v.shape[2]
    DB = bucket(Dk, Dv)
    Dw = Dv + 1 if ctx.normalize else Dv
    wdt = work_dtype(dtype)
    acc = nb_type(wdt)
    do = io.to_device(do)
    nb, b = _launch_rows(T)
    if ctx.normalize:
        dnum = io.empty((N, T, Dw), wdt)
        _dnum_kernel(acc)[(N, nb), b](do, ctx.o, ctx.den, dnum)
    else:
        dnum = do
    dq = io.empty((N, T, Dk), dtype)
    dk = io.empty((N, T, Dk), dtype)
    dv = io.empty((N, T, Dv), dtype)
    if ctx.impl == "chunked":
        C, BC = _chunk_size(wdt)
        NT = CONFIG["threads"]
        nC = cdiv(T, C)
        dS = io.empty((N, nC, Dk, Dw), wdt)
        _chunk_dq(DB, C, BC, NT, fm, acc)[(N, nC), NT](q, k, v, dnum, ctx.states, ctx.scale, ctx.causal, dq)
        _chunk_states(DB, C, NT, fm, acc)[(N, nC), NT](q, dnum, dS)
        _scan_states(acc)[(N, cdiv(Dk * Dw, 128)), 128](dS, ctx.causal, True)
        _chunk_dkdv(DB, C, BC, NT, fm, acc)[(N, nC), NT](q, k, v, dnum, dS, ctx.scale, ctx.causal, dk, dv)
    else:
        _naive_dq(DB, fm, acc)[(N, nb), b](q, k, v, dnum, ctx.scale, ctx.causal, ctx.normalize, dq)
        _naive_dkdv(DB, fm, acc)[(N, nb), b](q, k, v, dnum, ctx.scale, ctx.causal, ctx.normalize, dk, dv)
    return io.to_caller(dq), io.to_caller(dk), io.to_caller(dv)


register_variant("linear", "naive", _forward, _backward,
                 "one thread per output row (O(T^2)); naive backward (thread per query row for "
                 "dq, per key row for dk/dv)",
                 {"float32": 1e-4, "float64": 2e-13})
register_variant("linear", "chunked", _forward, _backward,
                 "chunked: per-chunk Dk x Dv states in parallel, scan over chunks, masked C x C "
                 "blocks in shared memory; backward chunked (forward states for dq, reverse-scanned "
                 "states for dk/dv)",
                 {"float32": 5e-5, "float64": 1e-13}, default=True)
