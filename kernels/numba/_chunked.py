"""The one chunked core of the Numba backend: linear, decayed and ZeroS attention are thin parameterisations
of it (kernels/cupy/_chunked_mma.py and kernels/cuda/chunked_mma.cu are its tensor-core counterpart: the same
segments, segment states, scan and output pass).

The problem.  For every leading index n and every sequence [sa, sb) of the packed T axis (``cu_seqlens``;
one sequence [0, T) without), over the *processed* positions p of the sequence (p = t - sa, or p = sb-1-t
when the core runs in reverse), with a (N, T, Da) "queries", b (N, T, Da) "keys", c (N, T, >= Dc) "values":

    out_p = sum_x [ w^x_p (a_p^T S0^x)  +  sum_{i <= p} w^x_{p,i} (a_p . b_i) c_i ]        (intra: causal)
    out_p = sum_x w^x_p a_p^T S_total^x                                                     (non-causal)

S0 the state before the sequence (the initial state, or 0), S_total the sum over the whole sequence.  The
weight family is chosen at compile time:

  plain (linear attention, NS = 1):  w_{p,i} = scale,  w_p = scale.  The state is S = S0 + sum_i b_i c_i^T.
  decay (NS = 1):  w_{p,i} = scale exp(B_p - B_i),  w_p = scale exp(B_p),  B_p = sum_{p' <= p} g''_p', a
                   cumulative log decay.  Forward g''_p = g[sa + p]; reverse g''_p = g[sb - p] (p >= 1),
                   g''_0 = 0, so that sum_{i' < p' <= t'} g''_p' = G_t - G_i with t' = p of i, i' = p of t
                   (decayed.py).  The state is S = exp(B_last) S0 + sum_i exp(B_last - B_i) b_i c_i^T.
                   Every g'' is read as max(g'', LOG_FLOOR) (NaN passes through).  That is exact: a weight
                   whose window holds a floored position has exponent <= LOG_FLOOR (the other log decays are
                   <= 0), and exp(LOG_FLOOR) is exactly 0 in the accumulation type (float32: exp(-128) =
                   2.6e-56, below the smallest subnormal 1.4e-45; float64: exp(-1024), below 4.9e-324), as
                   exp(-inf) and exp(-1e4) are: log_decay = -inf is an exact reset.  The floor keeps the
                   within-chunk cumsums finite (-inf - -inf would be NaN) and small (|b| <= C |LOG_FLOOR|),
                   where the hi + lo sum below stays exact.
  coef  (NS <= 3): w^x_{p,i} = cq^x_p ck^x_i exp(lq^x_p + lk^x_i), from per-position coefficient arrays
                   qco[n, t, x] = (cq, lq) (query role) and kco[n, t, x] = (ck, lk) (key role).  The caller
                   guarantees lq_p + lk_i <= 0 whenever i is in p's window (ZeroS: lq = -m_t, the running
                   max of s, and lk = s_i; or the reverse), so every exponential is <= 1.  Its state S^x is
                   kept relative to a log reference r^x (below); S0 and the state outputs carry r^x alongside.

``scale_in_state`` (plain, decay): the state accumulates scale b_i c_i^T and its output term is not scaled
(w_p = exp(B_p)).  The backward's reverse runs use it: their state is then exactly the gradient of the
forward state (dS, below), so the gradient of the final state enters as their S0 and dS0 is their final state.

Chunked form.  The processed positions are cut into chunks of C (a chunk never crosses a sequence: chunks
restart at every sequence's start, so a sequence that starts or ends inside a chunk of the T axis is just a
shorter chunk here).  Per chunk of L <= C positions starting at p0, with the state S before it:

  plain/decay:  b_p = sum_{p0 <= p' <= p} g''_p' (within-chunk, never a large number; plain: b = 0)
                out_p = w exp(b_p) a_p^T S + sum_{p0 <= i <= p} scale exp(b_p - b_i) (a_p.b_i) c_i
                S    <- exp(b_last) S + sk sum_i exp(b_last - b_i) b_i c_i^T       (sk = scale_in_state ? scale : 1)
  coef:         S^x = sum_{i < p0} ck_i exp(lk_i - r^x) b_i c_i^T, r^x = max of lk so far (online softmax:
                every exp(lk_i - r) <= 1, and exp(lq_p + r) <= 1 because r = lk_i for some visible i)
                out_p = sum_x cq_p exp(lq_p + r^x) a_p^T S^x + sum_{p0 <= i <= p} w^x_{p,i} (a_p.b_i) c_i
                r'    = max(r, max_i lk_i);  S^x <- exp(r - r') S^x + sum_i ck_i exp(lk_i - r') b_i c_i^T

Segments (the parallel form; chunked_mma.cu's).  Each sequence's processed positions are cut into segments
of ``L`` chunks (L = 0: one segment per sequence); one block walks one segment, so the grid is (N, column
tiles, segments).  The walker needs the state before its segment; three launches provide it:
  1. segment states (``emit=False``): every segment, in parallel, folds its chunks into a zero state and
     writes it (E_s) and, decay family, its total log decay gam_s = sum of its g'' (floored);
  2. the scan (``scan_kernel``, one thread per state entry and sequence): H_s = the state before segment s,
     H <- exp(gam_s) H + E_s in processed order from S0; the final state after the sequence;
  3. the output pass: every segment's walker from H_s.
Non-causal (plain, coef): 1 and 2 give the sequence totals; 3 runs with ``intra=False``, ``fold=False`` from
the total.  With one segment per sequence (causal) the walker starts from S0 directly and writes the final
state itself (``has_fin``).  ZeroS (coef) uses one segment per sequence (its scan would need the references).

Backward.  With dnum the output gradient, the gradients are the same core on other operands (linear.py,
decayed.py, zeros.py give each op's mapping), e.g. for decayed attention
    dq = core(do, v, k)                 forward, S0 -> S0^T (the forward's H_s, read transposed)
    dk = core(v, do, q) reversed        scale in state: its state is dS^T; S0 = dS_final^T; final = dS0^T
    dv = core(k, q, do) reversed        scale in state: its state is dS;   S0 = dS_final
with dS the gradient of the state after a position, carried backwards; its segment states and scan are the
reverse runs' steps 1-2 (``scan_kernel(rev=True)``).  ``st_trans`` reads S0 (and writes the final state)
transposed, so one layout (Da_fwd x Dc_fwd) serves every run.

Compiled once per (head-dim bucket DB, weight family, NS, accumulation type) -- tiles follow from those --
and cached on disk (kernels/numba/_jit.py).  Da, Dc come from the arrays' shapes (Dc = out0's width: c may
be wider, e.g. [dnum, dden]); the direction, causal/intra, emit/fold, parts, the state flags and
scale_in_state are run-time arguments (uniform branches).

Layout and work split.  NT threads per block; shared memory: S (NS, DB, BV) (rows past Da stay 0), the
chunk's a and b rows one Da-tile of BK columns at a time (C, BK+1: padded rows so column reads do not
bank-conflict), c (C, BV), the weighted C x C score block W (C, C+1), the chunk's per-row coefficients.  Every
product is register-tiled as the CUDA-core rung's rt_mm (kernels/cuda/chunked.cuh): in each of the C x C score
block, the C x BV output tile and the BK x BV state tile a thread owns MR x MC elements (ty + TY m, tx + TX j)
(_jit.micro_tile; at C = BK = 32, BV = 64, NT = 256: 2 x 2 scores, 2 x 4 output and state) with the
accumulators in registers, and a k step reads MR + MC shared values for MR MC FMAs.  Per chunk:
  A  (emit) for each Da tile: load a, b tiles; scores (a_p.b_i) for the whole block; inter-chunk a_p.S^x[:, j]
  B  W[p, i] = weight * score (masked pairs: a select, never 0 * x), load the c tile
  C  out_p = inter + sum_{i <= p} W[p, i] c_i  (the i a row cannot see are skipped, so a NaN or inf in a later
     c row never reaches it; parts: B and C once per state x, written to out_x)
  D  (fold) new reference r', key weights; for each Da tile: reload b, S <- decay S + sum_i w_i b_i c_i^T
The score block is recomputed by every value-column tile (cost C Da / (2 BV) per position and column).
The hot loops over k are ``while`` loops from 0 (Numba's range iterator over a run-time bound, or nested in
this kernel, was neither unrolled nor proven non-negative: every shared index paid the negative-index
wrap-around, ~20 SASS instructions per FMA; docs/kernels/linear.md, "Numba chunked core: why 11x").
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from numba import cuda

from .._segments import Segmentation, segment_rows
from ._jit import bucket, cdiv, kernel, micro_tile, nb_type, tile_loader

PLAIN, DECAY, COEF = "plain", "decay", "coef"     # weight families (module doc)

# Tile sizes; None means "choose from the head-dim bucket and dtype" (tiles()).  Tests set small values.
# segment_chunks: chunks per segment (None: choose_segments; 0: one segment per sequence).
CONFIG = {"chunk": None, "block_k": None, "block_v": None, "threads": None, "segment_chunks": None}
# chunks per segment when the grid is full anyway (choose_segments).  4, not the tensor-core core's 8: with one
# block per 64 value columns (BV = 64) the reference shape (N = 32, T = 4096) has 1024 blocks at 4 (7.8 per SM,
# 3 resident: the last wave's tail is a quarter of a block's time) against 512 at 8 (3.9 per SM: one lone
# block per SM after three); the walk's last chunk skips its fold, 1 in 4 instead of 1 in 8
# (docs/kernels/linear.md, "why 3x"; scripts/numba_chunk_tiles.py times 8 as the setting seg8)
SEGMENT_CHUNKS = 4
SCAN_THREADS = 128                # threads per block of the segment scan
SHARED_BYTES = 46 * 1024          # static shared-memory budget per block (device limit 48 KB)
LOG_FLOOR = {4: -128.0, 8: -1024.0}   # per accumulation itemsize: exp(LOG_FLOOR) == 0 exactly (docstring)
# registers per thread of the chunk kernel, per accumulation itemsize (None: as ptxas likes).  Unasked, ptxas
# takes ~250 (float32, bucket 64): one block of 256 threads per SM, idle at every barrier.  At 80 the register
# tiles' loops keep all their operands in registers (the spills are loop-invariant addresses outside them;
# docs/kernels/linear.md, "Numba chunked core: why 11x"): 3 blocks per SM.  Fixed here, not in CONFIG: the disk
# cache key does not hold it (_jit.kernel).
MAX_REGISTERS = {4: 80, 8: None}
# tiles() starts from START (each capped at the bucket) and halves the tiles in the order SHRINK, each down to its
# floor, until the shared memory fits.  BV = 64 first: at bucket 64 (plain, decay; float32) one block covers all
# value columns, so the chunk's scores, its a/b tile loads and the per-chunk scalar work are done once instead
# of once per 32 columns, and the output/state register tiles are 2 x 4 (docs/kernels/linear.md, "why 3x");
# the coef family (NS = 3), bucket 128 and float64 drop back to BV = 32 at the first step, as before.
START = {"C": 32, "BK": 32, "BV": 64}
SHRINK = (("BV", 32), ("BK", 16), ("BV", 8), ("C", 16), ("BV", 1), ("BK", 1), ("C", 1))


def state_rows(DB: int, BK: int, family: str) -> int:
    """Rows of the shared state: the bucket, plus one Da tile for the plain family, whose Da may be the bucket
    + 1 (linear attention's normalised value [v, 1] as an operand: the backward's a = v~, b = dnum~)."""
    return DB + BK if family == PLAIN else DB


def shared_bytes(DB, NS, C, BK, BV, itemsize, family=DECAY) -> int:
    return itemsize * (NS * state_rows(DB, BK, family) * BV + 2 * C * (BK + 1) + C * BV + C * (C + 1) + 4 * NS * C
                       + 2 * NS + 2)


def tiles(DB: int, NS: int, itemsize: int, family: str = DECAY) -> tuple:
    """(C, BK, BV, NT): chunk length, Da tile, value-column tile, threads per block, for head-dim bucket DB.

    Start from START (C = 32, BK = 32, BV = 64; BK, BV capped at the bucket), then halve in the order SHRINK
    (BV to 32, BK to 16, BV down to 8, C to 16, the rest down to 1) until the static shared memory fits
    SHARED_BYTES.  BK stays a power of two <= DB (so it divides the bucket)."""
    C = CONFIG["chunk"] or START["C"]
    BK = CONFIG["block_k"] or min(START["BK"], DB)
    BV = CONFIG["block_v"] or min(START["BV"], DB)
    NT = CONFIG["threads"] or 256
    fixed = CONFIG["chunk"] and CONFIG["block_k"] and CONFIG["block_v"]
    size = {"C": C, "BK": BK, "BV": BV}
    while not fixed and shared_bytes(DB, NS, size["C"], size["BK"], size["BV"], itemsize, family) > SHARED_BYTES:
        tile = next((t for t, floor in SHRINK if size[t] > floor), None)
        if tile is None:
            break
        size[tile] //= 2
    return size["C"], size["BK"], size["BV"], NT


# ============================================================================ device code
@functools.lru_cache(maxsize=None)
def chunk_kernel(DB, NS, family, C, BK, BV, NT, acc):
    """Compile the chunk kernel for one (head-dim bucket, states, weight family, tiles, accumulation type).
    Arguments: (a, b, c, qco, kco, g, out0, out1, out2, seg, S0, R0, Sfin, Rfin, gam, scale, scale_in_state,
    rev, intra, emit, fold, parts, has_init, has_fin, st_trans).  seg (nseg, 3) int32: t0, t1 of each segment
    and the end sb of its sequence.  S0/Sfin (N, nseg NS, Da, Dc) (st_trans: (.., Dc, Da)), R0/Rfin (N,
    nseg NS) the coef references, gam (N, nseg) the decay family's segment log decays (written when
    has_fin)."""
    decay, coef = family == DECAY, family == COEF
    # register tiles (_jit.micro_tile) of the C x C score block, the C x BV output tile, the BK x BV state tile
    SY, SX, SR, SC = micro_tile(C, C, NT)
    OY, OX, OR, OC = micro_tile(C, BV, NT)
    TY, TX, TR, TC = micro_tile(BK, BV, NT)
    SRC, ORC, TRC = SR * SC, OR * OC, TR * TC
    NSO = NS * ORC
    RA, RB = max(SR, OR, TR), max(SC, OC, TC)     # a thread's column / row operands of one k step
    BKP, CP = BK + 1, C + 1           # padded rows of the a, b tiles and of W (column reads avoid bank conflicts)
    R = state_rows(DB, BK, family)    # rows of the state (>= every Da this kernel takes)
    ZERO, ONE = acc(0), acc(1)
    NEG_INF = acc(-math.inf)
    FLOOR = acc(LOG_FLOOR[np.dtype(acc.name).itemsize])
    load_ab = tile_loader(C, BK, NT, acc)    # a or b rows of the chunk, one Da tile (padded tiles)
    load_c = tile_loader(C, BV, NT, acc)     # c rows of the chunk, this block's columns

    @kernel(max_registers=MAX_REGISTERS[np.dtype(acc.name).itemsize])
    def kern(a, b, c, qco, kco, g, out0, out1, out2, seg, S0, R0, Sfin, Rfin, gam, scale, scale_in_state, rev,
             intra, emit, fold, parts, has_init, has_fin, st_trans):
        n = cuda.blockIdx.x
        j0 = cuda.blockIdx.y * BV
        sg = cuda.blockIdx.z
        tid = cuda.threadIdx.x
        Da, Dc = b.shape[2], out0.shape[2]            # (the state pass passes c as out0: never written)
        t0, t1, sb = seg[sg, 0], seg[sg, 1], seg[sg, 2]
        Ls = t1 - t0
        S = cuda.shared.array((NS, R, BV), acc)         # states, one value-column tile
        As = cuda.shared.array((C, BKP), acc)           # a rows of the chunk, one Da tile
        Bs = cuda.shared.array((C, BKP), acc)           # b rows of the chunk, one Da tile
        Cs = cuda.shared.array((C, BV), acc)            # c rows of the chunk, this block's columns
        W = cuda.shared.array((C, CP), acc)             # weighted masked scores (padded rows)
        qw = cuda.shared.array((NS, 2, C), acc)         # (cq, lq) per row; decay: b = qw[0,0] + qw[0,1]
        kw = cuda.shared.array((NS, 2, C), acc)         # (ck, lk) per row; then the state-update weights
        ref = cuda.shared.array(NS, acc)                # r^x: log reference of each state
        rnew = cuda.shared.array(NS, acc)               # r'^x, or the decay of S (decay family)
        tot = cuda.shared.array(2, acc)                 # decay: the segment's log decay, hi + lo
        accB = cuda.local.array(SRC, acc)               # the thread's score tile
        accO = cuda.local.array(NSO, acc)               # its inter-chunk output tiles, one per state
        ro = cuda.local.array(ORC, acc)                 # its output tile
        sacc = cuda.local.array(TRC, acc)               # its state-update tile
        ra = cuda.local.array(RA, acc)                  # one k step's operands
        rb = cuda.local.array(RB, acc)
        sy = tid // SX                                  # the thread's place in each register tiling
        sx = tid - sy * SX
        oy = tid // OX
        ox = tid - oy * OX
        ty = tid // TX
        tx = tid - ty * TX
        s_live = sy < min(SY, C)
        o_live = oy < min(OY, C)
        t_live = ty < min(TY, BK)
        sq = ONE if scale_in_state else scale           # the output's state term
        sk = scale if scale_in_state else ONE           # the state update

        for e in range(tid, NS * R * BV, NT):
            x = e // (R * BV)
            rem = e - x * R * BV
            d = rem // BV
            jj = rem - d * BV
            val = ZERO
            if has_init and d < Da and j0 + jj < Dc:
                val = S0[n, sg * NS + x, j0 + jj, d] if st_trans else S0[n, sg * NS + x, d, j0 + jj]
            S[x, d, jj] = val
        if tid < NS:
            ref[tid] = (R0[n, sg * NS + tid] if has_init else NEG_INF) if coef else ZERO
        if tid < 2:
            tot[tid] = ZERO
        cuda.syncthreads()
        nout = NS if parts else 1                       # outputs written per chunk
        nch = (Ls + C - 1) // C
        for ch in range(nch):
            p0 = ch * C
            L = min(C, Ls - p0)
            # ---- per-row coefficients of the chunk
            if decay:
                if tid == 0:
                    # b as an unevaluated sum hi + lo (TwoSum): a float32 cumsum of log decays of -30
                    # reaches -2000 within a chunk, where one rounding (~1e-4) would already be a 1e-4
                    # relative error of exp(b_p - b_i) for nearby p, i.
                    bhi = ZERO
                    blo = ZERO
                    for p in range(L):
                        if rev:
                            t = t1 - 1 - (p0 + p)
                            gv = acc(g[n, t + 1]) if t + 1 < sb else ZERO
                        else:
                            gv = acc(g[n, t0 + p0 + p])
                        if gv < FLOOR:                  # -inf, -1e4, ...: exact (docstring); NaN stays
                            gv = FLOOR
                        sh = bhi + gv
                        bv = sh - bhi
                        blo += (bhi - (sh - bv)) + (gv - bv)
                        bhi = sh
                        qw[0, 0, p] = bhi
                        qw[0, 1, p] = blo
                    tot[0] += bhi
                    tot[1] += blo
            elif coef:
                for e in range(tid, NS * C, NT):
                    x = e // C
                    p = e - x * C
                    if p < L:
                        t = t1 - 1 - (p0 + p) if rev else t0 + p0 + p
                        qw[x, 0, p] = qco[n, t, x, 0]
                        qw[x, 1, p] = qco[n, t, x, 1]
                        kw[x, 0, p] = kco[n, t, x, 0]
                        kw[x, 1, p] = kco[n, t, x, 1]
            cuda.syncthreads()

            if emit:
                # ---- A: scores a_p.b_i and inter-chunk a_p.S^x, one Da tile at a time, in register tiles
                for r in range(SRC):
                    accB[r] = ZERO
                for r in range(NSO):
                    accO[r] = ZERO
                d0 = 0
                while d0 < Da:                      # (while loops: indices Numba/LLVM can prove >= 0)
                    load_ab(As, a, n, t0, t1, p0, d0, Da, rev, ONE)
                    if intra:
                        load_ab(Bs, b, n, t0, t1, p0, d0, Da, rev, ONE)
                    cuda.syncthreads()
                    if intra and s_live:        # the whole block: masked pairs are dropped in B
                        d = 0
                        while d < BK:               # (while: Numba's range iterator is not unrolled here)
                            for m in range(SR):
                                ra[m] = As[sy + SY * m, d]
                            for j in range(SC):
                                rb[j] = Bs[sx + SX * j, d]
                            for m in range(SR):
                                for j in range(SC):
                                    accB[m * SC + j] += ra[m] * rb[j]
                            d += 1
                    if o_live:
                        d = 0
                        while d < BK:
                            for m in range(OR):
                                ra[m] = As[oy + OY * m, d]
                            for x in range(NS):
                                for j in range(OC):
                                    rb[j] = S[x, d0 + d, ox + OX * j]
                                for m in range(OR):
                                    for j in range(OC):
                                        accO[(x * OR + m) * OC + j] += ra[m] * rb[j]
                            d += 1
                    cuda.syncthreads()
                    d0 += BK
                if intra:                                   # the chunk's c rows
                    load_c(Cs, c, n, t0, t1, p0, j0, Dc, rev, ONE)
                for xo in range(nout):
                    # ---- B: weighted, masked scores of the states summed into output xo
                    if intra and s_live:
                        for m in range(SR):
                            p = sy + SY * m
                            for j in range(SC):
                                i = sx + SX * j
                                sc = accB[m * SC + j]
                                wv = ZERO
                                if i <= p and p < L:        # a select: a masked pair never enters
                                    if decay:
                                        lw = (qw[0, 0, p] - qw[0, 0, i]) + (qw[0, 1, p] - qw[0, 1, i])
                                        wv = scale * math.exp(lw) * sc
                                    elif coef:
                                        for x in range(NS):
                                            if x == xo or not parts:
                                                wv += (qw[x, 0, p] * kw[x, 0, i]
                                                       * math.exp(qw[x, 1, p] + kw[x, 1, i]) * sc)
                                    else:
                                        wv = scale * sc
                                W[p, i] = wv
                    cuda.syncthreads()
                    # ---- C: out_p = inter-chunk + intra-chunk terms, in a register tile
                    if o_live:
                        for m in range(OR):
                            p = oy + OY * m
                            pw = ZERO                               # the state term's row weight
                            if decay and p < L:
                                pw = sq * math.exp(qw[0, 0, p] + qw[0, 1, p])
                            for j in range(OC):
                                o = ZERO
                                if decay:
                                    o = pw * accO[m * OC + j]
                                elif coef:
                                    for x in range(NS):
                                        if (x == xo or not parts) and ref[x] != NEG_INF and p < L:  # else S^x = 0
                                            o += (qw[x, 0, p] * math.exp(qw[x, 1, p] + ref[x])
                                                  * accO[(x * OR + m) * OC + j])
                                else:
                                    o = sq * accO[m * OC + j]
                                ro[m * OC + j] = o
                        if intra:
                            # i <= p only: masked pairs are skipped, not multiplied by 0 (a NaN in a later c row
                            # must not leak).  Rows p = oy + OY m: the i of (oy + OY (k-1), oy + OY k] are seen
                            # by the rows m >= k, a compile-time test once k and m are unrolled.
                            for k in range(OR):
                                i = 0 if k == 0 else max(0, oy + OY * (k - 1) + 1)    # (max: i >= 0 known)
                                iend = min(L, oy + OY * k + 1)
                                while i < iend:
                                    for j in range(OC):
                                        rb[j] = Cs[i, ox + OX * j]
                                    for m in range(OR):
                                        if m >= k:
                                            wv = W[oy + OY * m, i]
                                            for j in range(OC):
                                                ro[m * OC + j] += wv * rb[j]
                                    i += 1
                        for m in range(OR):
                            p = oy + OY * m
                            if p < L:
                                t = t1 - 1 - (p0 + p) if rev else t0 + p0 + p
                                for j in range(OC):
                                    jj = j0 + ox + OX * j
                                    if jj < Dc:
                                        if xo == 0:
                                            out0[n, t, jj] = ro[m * OC + j]
                                        elif xo == 1:
                                            out1[n, t, jj] = ro[m * OC + j]
                                        else:
                                            out2[n, t, jj] = ro[m * OC + j]
                    cuda.syncthreads()      # W is rewritten next (next output, D, or the next chunk)
            if fold and (has_fin or ch < nch - 1):        # (the last fold matters only to the final state)
                # ---- D: fold the chunk into the states
                if tid == 0:
                    if decay:
                        rnew[0] = math.exp(qw[0, 0, L - 1] + qw[0, 1, L - 1])    # decay of S across the chunk
                    elif coef:
                        for x in range(NS):
                            mx = ref[x]
                            for i in range(L):
                                if kw[x, 1, i] > mx:
                                    mx = kw[x, 1, i]
                            rnew[x] = mx
                    else:
                        rnew[0] = ONE
                if not (emit and intra):                                # c rows not loaded by A-C
                    load_c(Cs, c, n, t0, t1, p0, j0, Dc, rev, ONE)
                cuda.syncthreads()
                for e in range(tid, NS * C, NT):                        # key weights of the update
                    x = e // C
                    i = e - x * C
                    wk = ZERO
                    if i < L:
                        if decay:
                            wk = sk * math.exp((qw[0, 0, L - 1] - qw[0, 0, i]) + (qw[0, 1, L - 1] - qw[0, 1, i]))
                        elif coef:
                            if rnew[x] != NEG_INF:
                                wk = kw[x, 0, i] * math.exp(kw[x, 1, i] - rnew[x])
                        else:
                            wk = sk
                    kw[x, 0, i] = wk
                cuda.syncthreads()
                d0 = 0
                while d0 < Da:
                    load_ab(Bs, b, n, t0, t1, p0, d0, Da, rev, ONE)
                    cuda.syncthreads()
                    if t_live:
                        for x in range(NS):
                            if not coef:
                                dec = rnew[0]
                            elif ref[x] == NEG_INF:
                                dec = ZERO
                            else:
                                dec = math.exp(ref[x] - rnew[x])
                            for r in range(TRC):
                                sacc[r] = ZERO
                            i = 0
                            while i < L:                    # S <- dec S + sum_i w_i b_i c_i^T, a register tile
                                wk = kw[x, 0, i]
                                for m in range(TR):
                                    ra[m] = wk * Bs[i, ty + TY * m]
                                for j in range(TC):
                                    rb[j] = Cs[i, tx + TX * j]
                                for m in range(TR):
                                    for j in range(TC):
                                        sacc[m * TC + j] += ra[m] * rb[j]
                                i += 1
                            for m in range(TR):
                                d = d0 + ty + TY * m
                                if d < Da:
                                    for j in range(TC):
                                        jj = tx + TX * j
                                        S[x, d, jj] = dec * S[x, d, jj] + sacc[m * TC + j]
                    cuda.syncthreads()
                    d0 += BK
                if coef and tid < NS:
                    ref[tid] = rnew[tid]
                cuda.syncthreads()
        if has_fin:
            # a reverse walker's state is relative to its last position t0; the sequence's dS0 is relative to
            # the position before it: one more decay, by g[t0] (the state pass leaves that to the scan's gam)
            last = ONE
            if decay and rev and emit:
                gv = acc(g[n, t0])
                last = math.exp(FLOOR if gv < FLOOR else gv)
            for e in range(tid, NS * R * BV, NT):
                x = e // (R * BV)
                rem = e - x * R * BV
                d = rem // BV
                jj = rem - d * BV
                if d < Da and j0 + jj < Dc:
                    if st_trans:
                        Sfin[n, sg * NS + x, j0 + jj, d] = last * S[x, d, jj]
                    else:
                        Sfin[n, sg * NS + x, d, j0 + jj] = last * S[x, d, jj]
            if coef and tid < NS and cuda.blockIdx.y == 0:
                Rfin[n, sg * NS + tid] = ref[tid]
            if decay and not emit and tid == 0 and cuda.blockIdx.y == 0:     # the state pass
                gam[n, sg] = tot[0] + tot[1]
    return kern


@functools.lru_cache(maxsize=None)
def scan_kernel(acc):
    """The segment scan (NS = 1 families), one thread per (n, state entry, sequence j):
        H = S0[n, j] (or 0);  for the sequence's segments s in processed order:  H_s = H;  H <- e^{gam_s} H + E_s
    writes Hs[n, s] = H_s (non-causal ``total``: the sequence's total for every segment) and fin[n, j] = H.
    Processed order is time order, or reversed (``rev``: the backward's dS; its final value, dS0, is decayed
    once more by the sequence's first log decay, as the reverse walker's).  gam: (N, nseg) or a dummy
    (``decay`` False: every factor 1)."""
    ZERO = acc(0)
    FLOOR = acc(LOG_FLOOR[np.dtype(acc.name).itemsize])

    @kernel
    def kern(E, gam, g, S0, Hs, fin, seg, seq_seg, decay, rev, has_init, total):
        n = cuda.blockIdx.x
        x = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        j = cuda.blockIdx.z
        X, Y = E.shape[2], E.shape[3]
        if x >= X * Y:
            return
        d = x // Y
        e = x - d * Y
        H = S0[n, j, d, e] if has_init else ZERO
        s0, s1 = seq_seg[j], seq_seg[j + 1]
        for w in range(s1 - s0):
            s = s1 - 1 - w if rev else s0 + w
            if not total:
                Hs[n, s, d, e] = H
            H = (math.exp(gam[n, s]) * H if decay else H) + E[n, s, d, e]
        if decay and rev:
            gv = acc(g[n, seg[s0, 0]])
            H *= math.exp(FLOOR if gv < FLOOR else gv)
        fin[n, j, d, e] = H
        if total:
            for s in range(s0, s1):
                Hs[n, s, d, e] = H
    return kern


# ============================================================================ host side
@dataclass(frozen=True)
class Segments(Segmentation):
    """The segment table (kernels/_segments.py) on the device: ``seg`` (nseg, 3) int32 rows (t0, t1, end of the
    sequence); ``seq_seg`` (nseq + 1,) int32 offsets of each sequence's segments; ``cu_dev`` the offsets."""
    seg: object
    seq_seg: object
    cu_dev: object


def segments(io, T: int, C: int, L: int, cu: Optional[tuple] = None) -> Segments:
    r = segment_rows(T, C, L, cu)
    seg = np.ascontiguousarray(r.rows[:, [0, 1, 3]])
    return Segments(r.cu, L, len(seg), *(io.to_device(x) for x in (seg, r.seq_seg, np.asarray(r.cu, np.int32))))


@functools.lru_cache(maxsize=None)
def _sm_count() -> int:
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:                                       # the simulator, or tracing without a driver
        return 132


def choose_segments(N: int, longest: int, C: int, tiles_: int) -> int:
    """Chunks per segment: SEGMENT_CHUNKS (its comment: why 4), shortened when that leaves fewer than
    about two blocks per SM; 0 (one segment per sequence) when the sequences are that short anyway."""
    if CONFIG["segment_chunks"] is not None:
        return CONFIG["segment_chunks"]
    nch = cdiv(longest, C)
    if nch <= 1:
        return 0
    L = min(SEGMENT_CHUNKS, max(1, cdiv(nch * N * tiles_, 2 * _sm_count())))
    return 0 if L >= nch else L


@functools.lru_cache(maxsize=None)
def _dummy(acc, ndim):
    """A one-element device array standing in for an argument the call does not use."""
    return cuda.to_device(np.zeros((1,) * ndim, dtype=np.dtype(acc.name)))


@dataclass(frozen=True)
class Core:
    """One compiled core and its launch geometry for arrays of one shape (``plan``)."""
    kern: object
    acc: object
    family: str
    NS: int
    C: int
    BV: int
    NT: int
    N: int


def plan(a, family: str, dims: tuple, NS: int = 1) -> Core:
    """The core for operands like ``a`` (N, T, .), compiled for the bucket of the op's head dims ``dims``
    (every run of one op shares it; the plain family takes Da up to the bucket + 1)."""
    N = a.shape[0]
    acc = nb_type(a.dtype)
    DB = bucket(*dims)
    C, BK, BV, NT = tiles(DB, NS, np.dtype(a.dtype).itemsize, family)
    return Core(chunk_kernel(DB, NS, family, C, BK, BV, NT, acc), acc, family, NS, C, BV, NT, N)


def run(core: Core, segs: Segments, a, b, c, out0, out1=None, out2=None, *, qco=None, kco=None, g=None,
        scale=1.0, scale_in_state=False, rev=False, intra=True, emit=True, fold=True, parts=False, S0=None,
        R0=None, st_trans=False, Sfin=None, Rfin=None, gam=None):
    """One launch of the chunk kernel over every (n, column tile, segment) (module doc for the arguments)."""
    acc = core.acc
    d4, d2 = _dummy(acc, 4), _dummy(acc, 2)
    Dc = out0.shape[2]
    core.kern[(core.N, cdiv(Dc, core.BV), segs.nseg), core.NT](
        a, b, c, d4 if qco is None else qco, d4 if kco is None else kco, d2 if g is None else g, out0,
        out0 if out1 is None else out1, out0 if out2 is None else out2, segs.seg, d4 if S0 is None else S0,
        d2 if R0 is None else R0, d4 if Sfin is None else Sfin, d2 if Rfin is None else Rfin,
        d2 if gam is None else gam, np.dtype(a.dtype).type(scale), bool(scale_in_state), bool(rev), bool(intra),
        bool(emit), bool(fold), bool(parts), S0 is not None, Sfin is not None, bool(st_trans))


@dataclass
class Pass:
    """The states one pass of the core (forward, or the backward's reverse) starts its segments from:
    ``starts`` (N, nseg, X, Y) (None: the sequences' S0, or zeros, with one segment per sequence) and
    ``final`` (N, nseq, X, Y), the state after each sequence (None where not asked for)."""
    starts: object
    final: object


def states(io, core: Core, segs: Segments, b, c, X: int, Y: int, *, g=None, S0=None, want_final=False,
           scale=1.0, scale_in_state=False, rev=False, causal=True) -> Pass:
    """Steps 1-2 of the module doc: the state before every segment (and after every sequence) of the state
    S = sum b c^T (X = b's width, Y = c's), in (N, ., X, Y) layout.  With one segment per sequence and causal,
    nothing runs: the walker starts from S0 (``starts`` None) and writes the final state itself."""
    N = core.N
    wdt = np.dtype(core.acc.name)
    if causal and segs.single:
        return Pass(S0, io.empty((N, segs.nseq, X, Y), wdt) if want_final else None)
    E = io.empty((N, segs.nseg, X, Y), wdt)
    gam = io.empty((N, segs.nseg), wdt) if core.family == DECAY else None
    run(core, segs, b, b, c, c, g=g, scale=scale, scale_in_state=scale_in_state, rev=rev, emit=False, Sfin=E,
        gam=gam)
    starts = io.empty((N, segs.nseg, X, Y), wdt)
    final = io.empty((N, segs.nseq, X, Y), wdt)
    acc = core.acc
    scan_kernel(acc)[(N, cdiv(X * Y, SCAN_THREADS), segs.nseq), SCAN_THREADS](
        E, _dummy(acc, 2) if gam is None else gam, _dummy(acc, 2) if g is None else g,
        _dummy(acc, 4) if S0 is None else S0, starts, final, segs.seg, segs.seq_seg, gam is not None, bool(rev),
        S0 is not None, not causal)
    return Pass(starts, final)

