"""The chunked kernel shared by decayed and ZeroS attention: weighted causal linear attention over chunks.

One kernel computes, for every leading index n and every processed position p (p = t, or p = T-1-t when the
kernel runs in reverse),

    out_p = sum_{x < NS} sum_{i <= p} w^x_{p,i} (a_p . b_i) c_i                       (causal)
    out_p = sum_{x < NS} sum_{all i} w^x_{p,i} (a_p . b_i) c_i                        (non-causal)

with a: (N, T, Da) the "queries", b: (N, T, Da) the "keys", c: (N, T, Dc) the "values", and one of two
weight families, chosen at compile time:

  decay (NS = 1):  w_{p,i} = scale exp(B_p - B_i),  B the cumulative sum of a log decay g'' (<= 0).
                   Forward: g'' = g.  Reverse: g''_p = g[T - p] (p >= 1), g''_0 = 0, so that
                   sum_{i' < p' <= t'} g''_p' = G_t - G_i with t' = T-1-i, i' = T-1-t (see decayed.py).
                   Every g'' is read as max(g'', LOG_FLOOR) (NaN passes through).  That is exact: a weight
                   whose window (i, p] holds a floored position has exponent <= LOG_FLOOR (the other log
                   decays are <= 0), and exp(LOG_FLOOR) is exactly 0 in the accumulation type (float32:
                   exp(-128) = 2.6e-56, below the smallest subnormal 1.4e-45; float64: exp(-1024), below
                   4.9e-324), as exp(-inf) and exp(-1e4) are: log_decay = -inf is an exact reset (every earlier
                   token drops out).  The floor keeps the within-chunk cumsums finite (-inf - -inf would be
                   NaN) and small (|b| <= C |LOG_FLOOR|), where the hi + lo sum below stays exact.
  coef  (NS <= 3): w^x_{p,i} = cq^x_p ck^x_i exp(lq^x_p + lk^x_i), from per-position coefficient arrays
                   qco[n, t, x] = (cq, lq) (query role) and kco[n, t, x] = (ck, lk) (key role).  The caller
                   guarantees lq_p + lk_i <= 0 whenever position i is in p's window (ZeroS: lq = -m_t, the
                   running max of s, and lk = s_i; or the reverse), so every exponential is <= 1.

Chunked form (chunk of C positions starting at p0, L <= C of them valid).  The state S^x (Da x BV, one value
column tile j0..j0+BV per block) holds the contribution of all earlier chunks:

  decay:  S = sum_{i < p0} exp(B_{p0-1} - B_i) b_i c_i^T (relative to the chunk start; B restarts at 0 in each
          chunk: b_p = sum_{p0 <= p' <= p} g''_p', a within-chunk cumulative sum, never a large number)
          out_p = scale exp(b_p) a_p^T S + sum_{p0 <= i <= p} scale exp(b_p - b_i) (a_p.b_i) c_i
          S    <- exp(b_last) S + sum_i exp(b_last - b_i) b_i c_i^T
  coef:   S^x = sum_{i < p0} ck_i exp(lk_i - r^x) b_i c_i^T, r^x = max of lk over earlier chunks (running max,
          as online softmax: every exp(lk_i - r) <= 1, and exp(lq_p + r) <= 1 because r = lk_i for some
          visible i)
          out_p = sum_x cq_p exp(lq_p + r^x) a_p^T S^x + sum_{p0 <= i <= p} w^x_{p,i} (a_p.b_i) c_i
          r'    = max(r, max_i lk_i);  S^x <- exp(r - r') S^x + sum_i ck_i exp(lk_i - r') b_i c_i^T
  non-causal (coef only): a first sweep folds every chunk into S (r = the global max), a second sweep
          writes out_p = sum_x cq_p exp(lq_p + r^x) a_p^T S^x.

``parts=True`` writes each state's term to its own output (out0, out1, out2) instead of their sum.

Compiled once per (head-dim bucket DB, weight family, accumulation type) -- tiles follow from those --
and cached on disk (kernels/numba/_jit.py).  Da, Dc come from the arrays' shapes; the direction ``rev``,
``causal`` and ``parts`` are run-time arguments (they change indices, loop counts and which states a phase
sums, behind uniform branches).

Layout and work split.  Grid (N, ceil(Dc / BV)), NT threads per block; the block walks the chunks in order.
Shared memory: S (NS, DB, BV) (rows past Da stay 0), the chunk's a and b rows one Da-tile of BK columns at a
time (C, BK+1: padded rows so column reads do not bank-conflict), c (C, BV), the weighted C x C score block
W (C, C), and the chunk's per-row coefficients.  Each thread owns the
elements e = tid + r NT of the C x C score block, of the C x BV output tile and of each BK x BV state tile,
with accumulators in per-thread local arrays.  Per chunk:
  A  for each Da tile: load a, b tiles; scores (a_p.b_i) for i <= p; inter-chunk a_p.S^x[:, j]
  B  W[p, i] = weight * score (masked), load the c tile
  C  out_p = inter + sum_i W[p, i] c_i
     (parts: B and C once per state x, W holding that state's weights, out_x written)
  D  new reference r', key weights; for each Da tile: reload b, S <- decay S + sum_i w_i b_i c_i^T
The score block is recomputed by every value-column tile (cost C Da / (2 BV) per position and column);
BV is kept as large as shared memory allows for that reason.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from ._jit import bucket, cdiv, kernel, nb_type, tile_loader

# Tile sizes; None means "choose from the head-dim bucket and dtype" (tiles()).  Tests set small values.
CONFIG = {"chunk": None, "block_k": None, "block_v": None, "threads": None}
SHARED_BYTES = 46 * 1024          # static shared-memory budget per block (device limit 48 KB)
LOG_FLOOR = {4: -128.0, 8: -1024.0}   # per accumulation itemsize: exp(LOG_FLOOR) == 0 exactly (docstring)


def shared_bytes(DB, NS, C, BK, BV, itemsize) -> int:
    return itemsize * (NS * DB * BV + 2 * C * (BK + 1) + C * BV + C * C + 4 * NS * C + 2 * NS)


def tiles(DB: int, NS: int, itemsize: int) -> tuple:
    """(C, BK, BV, NT): chunk length, Da tile, value-column tile, threads per block, for head-dim bucket DB.

    Start from C = 32, BK = 32, BV = 32 (capped at the bucket), then shrink BK to 16, BV down to 8, C to 16,
    and the rest down to 1, until the static shared memory fits SHARED_BYTES.  BK stays a power of two <= DB
    (so it divides the bucket)."""
    C = CONFIG["chunk"] or 32
    BK = CONFIG["block_k"] or min(32, DB)
    BV = CONFIG["block_v"] or min(32, DB)
    NT = CONFIG["threads"] or 256
    fixed = CONFIG["chunk"] and CONFIG["block_k"] and CONFIG["block_v"]
    while not fixed and shared_bytes(DB, NS, C, BK, BV, itemsize) > SHARED_BYTES:
        if BK > 16:
            BK //= 2
        elif BV > 8:
            BV //= 2
        elif C > 16:
            C //= 2
        elif BV > 1:
            BV //= 2
        elif BK > 1:
            BK //= 2
        elif C > 1:
            C //= 2
        else:
            break
    return C, BK, BV, NT


@functools.lru_cache(maxsize=None)
def chunk_kernel(DB, NS, decay, C, BK, BV, NT, acc):
    """Compile the chunk kernel for one (head-dim bucket, states, weight family, tiles, accumulation type).
    Arguments: (a, b, c, qco, kco, g, out0, out1, out2, scale, rev, causal, parts)."""
    EB = cdiv(C * C, NT)              # score elements per thread
    EO = cdiv(C * BV, NT)             # output elements per thread
    ES = cdiv(BK * BV, NT)            # state elements per thread (per Da tile)
    NSEO = NS * EO
    BKP = BK + 1                      # padded row of the a, b tiles (column reads avoid bank conflicts)
    ZERO, ONE = acc(0), acc(1)
    NEG_INF = acc(-math.inf)
    FLOOR = acc(LOG_FLOOR[np.dtype(acc.name).itemsize])
    load_ab = tile_loader(C, BK, NT, acc)    # a or b rows of the chunk, one Da tile (into the padded tiles)
    load_c = tile_loader(C, BV, NT, acc)     # c rows of the chunk, this block's columns

    @kernel
    def kern(a, b, c, qco, kco, g, out0, out1, out2, scale, rev, causal, parts):
        n = cuda.blockIdx.x
        j0 = cuda.blockIdx.y * BV
        tid = cuda.threadIdx.x
        T, Da, Dc = a.shape[1], a.shape[2], c.shape[2]
        S = cuda.shared.array((NS, DB, BV), acc)        # states, one value-column tile
        As = cuda.shared.array((C, BKP), acc)           # a rows of the chunk, one Da tile
        Bs = cuda.shared.array((C, BKP), acc)           # b rows of the chunk, one Da tile
        Cs = cuda.shared.array((C, BV), acc)            # c rows of the chunk, this block's columns
        W = cuda.shared.array((C, C), acc)              # weighted masked scores
        qw = cuda.shared.array((NS, 2, C), acc)         # (cq, lq) per row; decay: b = qw[0,0] + qw[0,1]
        kw = cuda.shared.array((NS, 2, C), acc)         # (ck, lk) per row; then the state-update weights
        ref = cuda.shared.array(NS, acc)                # r^x: log reference of each state
        rnew = cuda.shared.array(NS, acc)               # r'^x, or the decay of S (decay family)
        accB = cuda.local.array(EB, acc)
        accO = cuda.local.array(NSEO, acc)

        for e in range(tid, NS * DB * BV, NT):
            x = e // (DB * BV)
            rem = e - x * DB * BV
            S[x, rem // BV, rem % BV] = ZERO
        if tid < NS:
            ref[tid] = ZERO if decay else NEG_INF
        cuda.syncthreads()
        nch = (T + C - 1) // C
        nout = NS if parts else 1                       # outputs written per chunk
        for sweep in range(1 if causal else 2):
            for ch in range(nch):
                p0 = ch * C
                L = min(C, T - p0)
                # ---- per-row coefficients of the chunk
                if decay:
                    if tid == 0:
                        # b as an unevaluated sum hi + lo (TwoSum): a float32 cumsum of log decays of
                        # -30 reaches -2000 within a chunk, where one rounding (~1e-4) would already be
                        # a 1e-4 relative error of exp(b_p - b_i) for nearby p, i.
                        bhi = ZERO
                        blo = ZERO
                        for p in range(L):
                            pp = p0 + p
                            if rev:
                                gv = acc(g[n, T - pp]) if pp > 0 else ZERO
                            else:
                                gv = acc(g[n, pp])
                            if gv < FLOOR:                  # -inf, -1e4, ...: exact (docstring); NaN stays
                                gv = FLOOR
                            sh = bhi + gv
                            bv = sh - bhi
                            blo += (bhi - (sh - bv)) + (gv - bv)
                            bhi = sh
                            qw[0, 0, p] = bhi
                            qw[0, 1, p] = blo
                else:
                    for e in range(tid, NS * C, NT):
                        x = e // C
                        p = e - x * C
                        if p < L:
                            t = T - 1 - (p0 + p) if rev else p0 + p
                            qw[x, 0, p] = qco[n, t, x, 0]
                            qw[x, 1, p] = qco[n, t, x, 1]
                            kw[x, 0, p] = kco[n, t, x, 0]
                            kw[x, 1, p] = kco[n, t, x, 1]
                cuda.syncthreads()

                if causal or sweep == 1:
                    # ---- A: scores a_p.b_i (i <= p) and inter-chunk a_p.S^x, one Da tile at a time
                    for r in range(EB):
                        accB[r] = ZERO
                    for r in range(NSEO):
                        accO[r] = ZERO
                    for d0 in range(0, Da, BK):
                        load_ab(As, a, n, p0, d0, T, Da, rev, ONE)
                        load_ab(Bs, b, n, p0, d0, T, Da, rev, ONE)
                        cuda.syncthreads()
                        if causal:
                            for r in range(EB):
                                e = tid + r * NT
                                if e < C * C:
                                    p = e // C
                                    i = e - p * C
                                    if i <= p:
                                        sacc = ZERO
                                        for d in range(BK):
                                            sacc += As[p, d] * Bs[i, d]
                                        accB[r] += sacc
                        for r in range(EO):
                            e = tid + r * NT
                            if e < C * BV:
                                p = e // BV
                                jj = e - p * BV
                                for x in range(NS):
                                    sacc = ZERO
                                    for d in range(BK):
                                        sacc += As[p, d] * S[x, d0 + d, jj]
                                    accO[x * EO + r] += sacc
                        cuda.syncthreads()
                    if causal:                                  # the chunk's c rows
                        load_c(Cs, c, n, p0, j0, T, Dc, rev, ONE)
                    for xo in range(nout):
                        # ---- B: weighted, masked scores of the states summed into output xo
                        if causal:
                            for r in range(EB):
                                e = tid + r * NT
                                if e < C * C:
                                    p = e // C
                                    i = e - p * C
                                    wv = ZERO
                                    if i <= p and p < L:
                                        if decay:
                                            lw = (qw[0, 0, p] - qw[0, 0, i]) + (qw[0, 1, p] - qw[0, 1, i])
                                            wv = scale * math.exp(lw) * accB[r]
                                        else:
                                            for x in range(NS):
                                                if x == xo or not parts:
                                                    wv += (qw[x, 0, p] * kw[x, 0, i]
                                                           * math.exp(qw[x, 1, p] + kw[x, 1, i]) * accB[r])
                                    W[p, i] = wv
                        cuda.syncthreads()
                        # ---- C: out_p = inter-chunk + intra-chunk terms
                        for r in range(EO):
                            e = tid + r * NT
                            if e < C * BV:
                                p = e // BV
                                jj = e - p * BV
                                if p < L and j0 + jj < Dc:
                                    t = T - 1 - (p0 + p) if rev else p0 + p
                                    o = ZERO
                                    if decay:
                                        o = scale * math.exp(qw[0, 0, p] + qw[0, 1, p]) * accO[r]
                                    else:
                                        for x in range(NS):
                                            if (x == xo or not parts) and ref[x] != NEG_INF:  # else S^x = 0
                                                o += qw[x, 0, p] * math.exp(qw[x, 1, p] + ref[x]) * accO[x * EO + r]
                                    if causal:
                                        for i in range(p + 1):
                                            o += W[p, i] * Cs[i, jj]
                                    if xo == 0:
                                        out0[n, t, j0 + jj] = o
                                    elif xo == 1:
                                        out1[n, t, j0 + jj] = o
                                    else:
                                        out2[n, t, j0 + jj] = o
                        cuda.syncthreads()      # W is rewritten next (next output, D, or the next chunk)
                if causal or sweep == 0:
                    # ---- D: fold the chunk into the states
                    if tid == 0:
                        if decay:
                            rnew[0] = math.exp(qw[0, 0, L - 1] + qw[0, 1, L - 1])    # decay of S across the chunk
                        else:
                            for x in range(NS):
                                mx = ref[x]
                                for i in range(L):
                                    if kw[x, 1, i] > mx:
                                        mx = kw[x, 1, i]
                                rnew[x] = mx
                    if not causal:                                          # c rows not loaded by A-C
                        load_c(Cs, c, n, p0, j0, T, Dc, rev, ONE)
                    cuda.syncthreads()
                    for e in range(tid, NS * C, NT):                        # key weights of the update
                        x = e // C
                        i = e - x * C
                        if decay:
                            lw = (qw[0, 0, L - 1] - qw[0, 0, i]) + (qw[0, 1, L - 1] - qw[0, 1, i]) if i < L else ZERO
                            kw[0, 0, i] = math.exp(lw) if i < L else ZERO
                        else:
                            wk = ZERO
                            if i < L and rnew[x] != NEG_INF:
                                wk = kw[x, 0, i] * math.exp(kw[x, 1, i] - rnew[x])
                            kw[x, 0, i] = wk
                    cuda.syncthreads()
                    for d0 in range(0, Da, BK):
                        load_ab(Bs, b, n, p0, d0, T, Da, rev, ONE)
                        cuda.syncthreads()
                        for r in range(ES):
                            e = tid + r * NT
                            if e < BK * BV:
                                d = e // BV
                                jj = e - d * BV
                                if d0 + d < Da:
                                    for x in range(NS):
                                        if decay:
                                            dec = rnew[0]
                                        elif ref[x] == NEG_INF:
                                            dec = ZERO
                                        else:
                                            dec = math.exp(ref[x] - rnew[x])
                                        sacc = ZERO
                                        for i in range(L):
                                            sacc += kw[x, 0, i] * Bs[i, d] * Cs[i, jj]
                                        S[x, d0 + d, jj] = dec * S[x, d0 + d, jj] + sacc
                        cuda.syncthreads()
                    if not decay and tid < NS:
                        ref[tid] = rnew[tid]
                    cuda.syncthreads()
    return kern


@functools.lru_cache(maxsize=None)
def _dummy(acc, ndim):
    """A one-element device array standing in for an argument the weight family does not read."""
    return cuda.to_device(np.zeros((1,) * ndim, dtype=np.dtype(acc.name)))


def launch(a, b, c, out0, out1=None, out2=None, *, qco=None, kco=None, g=None, scale=1.0, NS=1, decay=False,
           rev=False, causal=True, parts=False):
    """Run the chunk kernel on device arrays (see the module docstring for the arguments' meaning)."""
    N, T, Da = a.shape
    Dc = c.shape[2]
    acc = nb_type(a.dtype)
    DB = bucket(Da, Dc)
    C, BK, BV, NT = tiles(DB, NS, np.dtype(a.dtype).itemsize)
    kern = chunk_kernel(DB, NS, bool(decay), C, BK, BV, NT, acc)
    qco = _dummy(acc, 4) if qco is None else qco
    kco = _dummy(acc, 4) if kco is None else kco
    g = _dummy(acc, 2) if g is None else g
    out1 = out0 if out1 is None else out1
    out2 = out0 if out2 is None else out2
    kern[(N, cdiv(Dc, BV)), NT](a, b, c, qco, kco, g, out0, out1, out2, np.dtype(a.dtype).type(scale),
                                bool(rev), bool(causal), bool(parts))
