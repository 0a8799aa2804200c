"""ZeroS (zero-sum linear) attention in Numba CUDA: a plain "naive" rung and a "chunked" rung.

Math (docs/spec.md section 3.4, workbench/reference/zeros.py; window W(t) = {i <= t} causal, n_t = t, else all T):
    m_t = max_{W(t)} s,  E_t = sum_{W(t)} e^{s_i - m_t},  P_t = sum_{W(t)} s_i,  p_ti = e^{s_i - m_t} / E_t
    r_ti = sigh_t p_ti + beta_t s_i + gamma_t,   beta = (sig1 - sigh) / n,  gamma = (tz - sigh - beta P) / n
    o_t  = sum_{W(t)} r_ti (q_t.k_i) v_i
Backward (the reference's linear-time derivation), dR_ti = (q_t.k_i)(do_t.v_i):
    dq_t = sum_i r_ti (do_t.v_i) k_i,   dv_i = sum_t r_ti (q_t.k_i) do_t,   dk_i = sum_t r_ti (do_t.v_i) q_t
    U_t = sum_i p_ti dR_ti = do_t.oF_t,  V_t = sum_i s_i dR_ti = do_t.oG_t,  Z_t = sum_i dR_ti = do_t.oH_t
          with the three parts of the output  oF_t = sum_i p_ti B_ti v_i,  oG_t = sum_i s_i B_ti v_i,
          oH_t = sum_i B_ti v_i  (B_ti = q_t.k_i)
    dgates_t = (dsig1 sig1 (1-sig1), dsigh sigh (1-sigh)[, Z/n (1-tz^2)]),
          dsig1 = V/n - P Z/n^2,  dsigh = U - dsig1 - Z/n
    ds_j = sum_{t: j in W(t)} [sigh_t p_tj (dR_tj - U_t) + beta_t dR_tj - beta_t Z_t / n_t]
         = k_j.(dkF_j + dkG_j) - e^{s_j - m_j} X_j - Y_j
          with dk = dkF + s dkG + dkH split as  dkF_j = sum_t sigh_t p_tj (do_t.v_j) q_t,
          dkG_j = sum_t beta_t (do_t.v_j) q_t,  dkH_j = sum_t gamma_t (do_t.v_j) q_t,
          X_j = sum_{t>=j} sigh_t U_t e^{m_j - m_t} / E_t  (a reverse scan X_j = sigh_j U_j / E_j
                + e^{m_j - m_{j+1}} X_{j+1}; m is non-decreasing, so every factor is <= 1)
          Y_j = sum_{t>=j} beta_t Z_t / n_t.   Non-causal: m, E, P, n constant, X and Y plain totals.
Stability for any s: every exponential is e^{s_i - m_t} with s_i <= m_t (i in W(t)) or e^{m_j - m_t}, t >= j.

naive    one thread per output row, everything from global memory, O(T^2): forward (each thread finds its own
         m_t, E_t, P_t); backward kernel 1, one thread per query row: dq, U, V, Z, dgates, saves (m, E, P, U, Z);
         kernel 2, one thread per key row j: dk, dv, ds straight from the formulas above.
chunked  1. stats: one block per (n, sequence), a scan over runs (each thread a contiguous run of rows,
            summarised as (max, sum e^{s - max}, sum s); thread 0 combines the NT run summaries -- no loop over
            T in one thread -- and each thread rescans its run from its prefix) writes m, E, P and, per position
            and state x in (F, G, H), coefficient pairs (mult, log) in four (N, T, 3, 2) arrays:
               Qf  = (sigh/E, -m), (beta, 0), (gamma, 0)      query role of o, dq; key role of dk, dv (rev)
               Kf  = (1, s), (s, 0), (1, 0)                    key role of o, dq, parts; query role of dv
               Qp  = (1/E, -m), (1, 0), (1, 0)                 query role of the output parts oF, oG, oH
               Qdk = (1, s), (1, 0), (1, 0)                    query role of the dk parts
         2. the one chunked core, kernels/numba/_chunked.py (coef family, 3 states F, G, H, each Dk x BV in
            shared memory with its own running-max reference; one segment per sequence): o; backward: parts
            (oF, oG, oH); dq; dk parts in reverse; dv in reverse.  Non-causal: a state pass writes each
            sequence's total states and references, then the output pass reads them.
         3. finish: one block per (n, sequence), the same scan over runs in reverse: U, V, Z, dgates,
            dk = dkF + s dkG + dkH, ds.
         Packed sequences (cu_seqlens): every scan and the core run per sequence, the window and n_t are the
         sequence's.  (No initial/final state yet: the ZeroS state's backward -- dm0 through the max, dE0,
         dn0 -- is not written for this rung yet; the NumPy references have it.)
         Memory O(T (Dk + Dv)): coefficient arrays (N, T, 3, 2) and the output/dk parts, no per-token state.
Layout: q, k (N, T, Dk); v, o, do (N, T, Dv); s (N, T); gates (N, T, 2|3); C-contiguous.  Accumulation in
float32 for float32 inputs, float64 for float64.  Kernels are compiled per head-dim bucket and dtype
(kernels/numba/_jit.py); head dims, causal, direction and output parts are run-time values.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from numba import cuda

from workbench.state import ZeroSState

from . import _chunked
from ._arrays import DeviceIO, Saved, grid_1d, register_variant
from ._jit import (bucket, device, kernel, nb_type, row_axpy, row_dot, row_store, row_thread, row_zero,
                   sequence_run)

SCAN_THREADS = 128        # threads per block of the stats and finish scans (tests shrink it)


@functools.lru_cache(maxsize=None)
def _gate_fn(acc):
    """Device function: (sig1, sigh, tz, beta, gamma) of row t, given its window's P and size nt."""
    ZERO, HALF, ONE = acc(0), acc(0.5), acc(1)

    @device
    def gate(gates, n, t, P, nt):
        sig1 = HALF * (ONE + math.tanh(HALF * acc(gates[n, t, 0])))      # stable sigmoid
        sigh = HALF * (ONE + math.tanh(HALF * acc(gates[n, t, 1])))
        tz = ZERO
        if gates.shape[2] == 3:
            tz = math.tanh(acc(gates[n, t, 2]))
        beta = (sig1 - sigh) / nt
        gamma = (tz - sigh - beta * P) / nt
        return sig1, sigh, tz, beta, gamma
    return gate


@functools.lru_cache(maxsize=None)
def _gate_grads_fn(acc):
    """Device function: write dgates[n, t, :] from U, V, Z, P, nt (reference _gate_grads)."""
    ONE = acc(1)
    gate = _gate_fn(acc)

    @device
    def gate_grads(gates, n, t, U, V, Z, P, nt, dgates):
        sig1, sigh, tz, beta, gamma = gate(gates, n, t, P, nt)
        dsig1 = V / nt - P * Z / (nt * nt)
        dsigh = U - dsig1 - Z / nt
        dgates[n, t, 0] = dsig1 * sig1 * (ONE - sig1)
        dgates[n, t, 1] = dsigh * sigh * (ONE - sigh)
        if gates.shape[2] == 3:
            dgates[n, t, 2] = Z / nt * (ONE - tz * tz)
    return gate_grads


# ============================================================================ naive
@functools.lru_cache(maxsize=None)
def _window_stats_fn(acc):
    """Device function: (m, E, P) over s[n, i0:i1] -- max, sum e^{s - max}, sum (two passes)."""
    ZERO, NEG_INF = acc(0), acc(-math.inf)

    @device
    def stats(s, n, i0, i1):
        m = NEG_INF
        P = ZERO
        for i in range(i0, i1):
            x = acc(s[n, i])
            if x > m:
                m = x
            P += x
        E = ZERO
        for i in range(i0, i1):
            E += math.exp(acc(s[n, i]) - m)
        return m, E, P
    return stats


@functools.lru_cache(maxsize=None)
def _naive_fwd(DB, acc):
    """One thread per query row t: o_t = sum_{i in W(t)} r_ti (q_t.k_i) v_i."""
    ONE = acc(1)
    rows, stats, gate = row_thread(), _window_stats_fn(acc), _gate_fn(acc)
    dot, axpy, store, zero = row_dot(DB, acc), row_axpy(DB, acc), row_store(DB), row_zero(DB, acc)

    @kernel
    def kern(q, k, v, s, gates, causal, o):
        n, t, T, Dk, Dv = rows(q, v)
        if t >= T:
            return
        i1 = t + 1 if causal else T
        m, E, P = stats(s, n, 0, i1)
        sig1, sigh, tz, beta, gamma = gate(gates, n, t, P, acc(i1))
        row = cuda.local.array(DB, acc)
        zero(row)
        for i in range(i1):
            si = acc(s[n, i])
            w = (sigh * math.exp(si - m) / E + beta * si + gamma) * dot(q, n, t, k, i, Dk)
            axpy(row, w, v, n, i, Dv)
        store(o, n, t, row, Dv, ONE)
    return kern


@functools.lru_cache(maxsize=None)
def _naive_bwd_rows(DB, acc):
    """One thread per query row t: dq_t, U_t, V_t, Z_t, dgates_t; saves (m, E, P, U, Z) of the row."""
    ZERO, ONE = acc(0), acc(1)
    rows, stats, gate, gate_grads = row_thread(), _window_stats_fn(acc), _gate_fn(acc), _gate_grads_fn(acc)
    dot, axpy, store, zero = row_dot(DB, acc), row_axpy(DB, acc), row_store(DB), row_zero(DB, acc)

    @kernel
    def kern(q, k, v, s, gates, do, causal, dq, dgates, saved):
        n, t, T, Dk, Dv = rows(q, v)
        if t >= T:
            return
        i1 = t + 1 if causal else T
        nt = acc(i1)
        m, E, P = stats(s, n, 0, i1)
        sig1, sigh, tz, beta, gamma = gate(gates, n, t, P, nt)
        g = cuda.local.array(DB, acc)
        zero(g)
        U = ZERO
        V = ZERO
        Z = ZERO
        for i in range(i1):
            si = acc(s[n, i])
            p = math.exp(si - m) / E
            r = sigh * p + beta * si + gamma
            dA = dot(do, n, t, v, i, Dv)
            dR = dot(q, n, t, k, i, Dk) * dA
            U += dR * p
            V += dR * si
            Z += dR
            axpy(g, r * dA, k, n, i, Dk)
        store(dq, n, t, g, Dk, ONE)
        gate_grads(gates, n, t, U, V, Z, P, nt, dgates)
        saved[n, t, 0] = m
        saved[n, t, 1] = E
        saved[n, t, 2] = P
        saved[n, t, 3] = U
        saved[n, t, 4] = Z
    return kern


@functools.lru_cache(maxsize=None)
def _naive_bwd_keys(DB, acc):
    """One thread per key row j: dk_j, dv_j, ds_j summed over the query rows t whose window holds j."""
    ZERO, ONE = acc(0), acc(1)
    rows, gate = row_thread(), _gate_fn(acc)
    dot, axpy, store, zero = row_dot(DB, acc), row_axpy(DB, acc), row_store(DB), row_zero(DB, acc)

    @kernel
    def kern(q, k, v, s, gates, do, saved, causal, dk, dv, ds):
        n, j, T, Dk, Dv = rows(q, v)
        if j >= T:
            return
        sj = acc(s[n, j])
        dsj = ZERO
        gk = cuda.local.array(DB, acc)
        gv = cuda.local.array(DB, acc)
        zero(gk)
        zero(gv)
        for t in range(j if causal else 0, T):
            nt = acc(t + 1) if causal else acc(T)
            m, E, P, U, Z = saved[n, t, 0], saved[n, t, 1], saved[n, t, 2], saved[n, t, 3], saved[n, t, 4]
            sig1, sigh, tz, beta, gamma = gate(gates, n, t, P, nt)
            p = math.exp(sj - m) / E
            r = sigh * p + beta * sj + gamma
            B = dot(q, n, t, k, j, Dk)
            dA = dot(do, n, t, v, j, Dv)
            dR = B * dA
            axpy(gv, r * B, do, n, t, Dv)
            axpy(gk, r * dA, q, n, t, Dk)
            dsj += sigh * p * (dR - U) + beta * (dR - Z / nt)
        store(dk, n, j, gk, Dk, ONE)
        store(dv, n, j, gv, Dv, ONE)
        ds[n, j] = dsj
    return kern


def _rows_grid(N, T):
    blocks, threads = grid_1d(T, 64)
    return (N, blocks), threads


def _naive_forward(io, q, k, v, s, gates, causal):
    N, T, Dk = q.shape
    Dv = v.shape[2]
    o = io.empty((N, T, Dv), q.dtype)
    _naive_fwd(bucket(Dk, Dv), nb_type(q.dtype))[_rows_grid(N, T)](q, k, v, s, gates, causal, o)
    return o, None


def _naive_backward(ctx, do):
    io, q, k, v, s, gates, causal = ctx.io, ctx.q, ctx.k, ctx.v, ctx.s, ctx.gates, ctx.causal
    N, T, Dk = q.shape
    Dv = v.shape[2]
    acc = nb_type(q.dtype)
    dq, dk, dv = io.empty(q.shape, q.dtype), io.empty(k.shape, q.dtype), io.empty(v.shape, q.dtype)
    ds, dgates = io.empty(s.shape, q.dtype), io.empty(gates.shape, q.dtype)
    saved = io.empty((N, T, 5), q.dtype)
    DB = bucket(Dk, Dv)
    _naive_bwd_rows(DB, acc)[_rows_grid(N, T)](q, k, v, s, gates, do, causal, dq, dgates, saved)
    _naive_bwd_keys(DB, acc)[_rows_grid(N, T)](q, k, v, s, gates, do, saved, causal, dk, dv, ds)
    return dq, dk, dv, ds, dgates


# ============================================================================ chunked: scans
@functools.lru_cache(maxsize=None)
def _initial_fn(acc):
    """Device function initial(init, n, j, has_init) -> (m0, E0, P0, n0): the scalars of sequence j's initial
    state, or those of no state (-inf, 0, 0, 0)."""
    ZERO, NEG_INF = acc(0), acc(-math.inf)

    @device
    def initial(init, n, j, has_init):
        if has_init:
            return init[n, j, 0], init[n, j, 1], init[n, j, 2], init[n, j, 3]
        return NEG_INF, ZERO, ZERO, ZERO
    return initial


@functools.lru_cache(maxsize=None)
def _stats_kernel(NT, acc):
    """One block per n.  Pass 1: each thread's run [lo, hi) summarised as (max, sum e^{s - max}, sum s);
    thread 0 turns the runs into exclusive prefixes (causal) or the totals (non-causal); pass 2: each thread
    rescans its run from its prefix and writes m, E, P and the coefficient arrays of every row."""
    ZERO, ONE, NEG_INF = acc(0), acc(1), acc(-math.inf)
    gate, initial, run = _gate_fn(acc), _initial_fn(acc), sequence_run(NT)

    @device
    def merge(m1, E1, m2, E2):
        """(max, sum e^{s - max}) of the union of two sets, each given relative to its own max."""
        m = m2 if m2 > m1 else m1
        E = ZERO
        if m1 != NEG_INF:
            E += E1 * math.exp(m1 - m)
        if m2 != NEG_INF:
            E += E2 * math.exp(m2 - m)
        return m, E

    @kernel
    def kern(s, gates, cu, init, has_init, causal, Qf, Kf, Qp, Qdk, st, fin):
        n = cuda.blockIdx.x
        u = cuda.threadIdx.x
        j, a, b, lo, hi = run(cu, u)
        m0, E0, P0, n0 = initial(init, n, j, has_init)
        sm = cuda.shared.array(NT, acc)
        sE = cuda.shared.array(NT, acc)
        sP = cuda.shared.array(NT, acc)
        m = NEG_INF
        E = ZERO
        P = ZERO
        for t in range(lo, hi):
            x = acc(s[n, t])
            m, E = merge(m, E, x, ONE)
            P += x
        sm[u] = m
        sE[u] = E
        sP[u] = P
        cuda.syncthreads()
        if u == 0:
            m, E, P = m0, E0, P0               # the initial state's come first (none: -inf, 0, 0)
            for w in range(NT):
                mw, Ew, Pw = sm[w], sE[w], sP[w]
                if causal:                     # exclusive prefix of run w
                    sm[w] = m
                    sE[w] = E
                    sP[w] = P
                m, E = merge(m, E, mw, Ew)
                P += Pw
            if not causal:                     # totals, for every run
                for w in range(NT):
                    sm[w] = m
                    sE[w] = E
                    sP[w] = P
        cuda.syncthreads()
        m, E, P = sm[u], sE[u], sP[u]
        for t in range(lo, hi):
            x = acc(s[n, t])
            if causal:
                m, E = merge(m, E, x, ONE)
                P += x
            nt = n0 + acc(t - a + 1) if causal else acc(b - a)
            sig1, sigh, tz, beta, gamma = gate(gates, n, t, P, nt)
            if t == b - 1:                     # the sequence's final (m, E, P, n)
                fin[n, j, 0] = m
                fin[n, j, 1] = E
                fin[n, j, 2] = P
                fin[n, j, 3] = nt
            st[n, t, 0] = m
            st[n, t, 1] = E
            st[n, t, 2] = P
            Qf[n, t, 0, 0] = sigh / E
            Qf[n, t, 0, 1] = -m
            Qf[n, t, 1, 0] = beta
            Qf[n, t, 1, 1] = ZERO
            Qf[n, t, 2, 0] = gamma
            Qf[n, t, 2, 1] = ZERO
            Kf[n, t, 0, 0] = ONE
            Kf[n, t, 0, 1] = x
            Kf[n, t, 1, 0] = x
            Kf[n, t, 1, 1] = ZERO
            Kf[n, t, 2, 0] = ONE
            Kf[n, t, 2, 1] = ZERO
            Qp[n, t, 0, 0] = ONE / E
            Qp[n, t, 0, 1] = -m
            Qdk[n, t, 0, 0] = ONE
            Qdk[n, t, 0, 1] = x
            for y in range(1, 3):
                Qp[n, t, y, 0] = ONE
                Qp[n, t, y, 1] = ZERO
                Qdk[n, t, y, 0] = ONE
                Qdk[n, t, y, 1] = ZERO
    return kern


@functools.lru_cache(maxsize=None)
def _finish_kernel(NT, acc):
    """One block per n.  Pass 1 (each thread a run [lo, hi) of rows): U, V, Z, dgates, dk, and per row
    a_t = sigh U / E, b_t = beta Z / n, K_t = k.(dkF + dkG) into scratch; the run's reverse composition
    X_lo = A + e^{m_lo - m_hi} X_hi, Y_lo = Yrun + Y_hi.  Thread 0 turns the runs into X, Y at each run's end;
    pass 2: each thread's reverse scan and ds_t = K_t - e^{s_t - m_t} X_t - Y_t."""
    ZERO = acc(0)
    gate, gate_grads, initial, run = _gate_fn(acc), _gate_grads_fn(acc), _initial_fn(acc), sequence_run(NT)

    @kernel
    def kern(do, oF, oG, oH, k, dkF, dkG, dkH, s, gates, st, cu, init, has_init, seed, mu, has_seed, causal, dk, ds,
             dgates, scratch, sc):
        n = cuda.blockIdx.x
        u = cuda.threadIdx.x
        j, a, T, lo, hi = run(cu, u)                                # the sequence [a, T), this thread's rows
        m0, _, _, n0 = initial(init, n, j, has_init)
        Dk, Dv = k.shape[2], do.shape[2]
        sX = cuda.shared.array(NT, acc)
        sY = cuda.shared.array(NT, acc)
        sN = cuda.shared.array(NT, acc)
        dn = ZERO
        for t in range(lo, hi):
            U = ZERO
            V = ZERO
            Z = ZERO
            for e in range(Dv):
                dov = acc(do[n, t, e])
                U += dov * acc(oF[n, t, e])
                V += dov * acc(oG[n, t, e])
                Z += dov * acc(oH[n, t, e])
            st_ = acc(s[n, t])
            K = ZERO
            for d in range(Dk):
                f = acc(dkF[n, t, d])
                gG = acc(dkG[n, t, d])
                dk[n, t, d] = f + st_ * gG + acc(dkH[n, t, d])
                K += acc(k[n, t, d]) * (f + gG)
            E, P = st[n, t, 1], st[n, t, 2]
            nt = n0 + acc(t - a + 1) if causal else acc(T - a)
            sig1, sigh, tz, beta, gamma = gate(gates, n, t, P, nt)
            gate_grads(gates, n, t, U, V, Z, P, nt, dgates)
            dn -= (beta * (V - Z * P / nt) + gamma * Z) / nt              # dL/dn_t (through beta, gamma)
            scratch[n, t, 0] = sigh * U / E
            scratch[n, t, 1] = beta * Z / nt
            scratch[n, t, 2] = K
        X = ZERO
        Y = ZERO
        for t in range(hi - 1, lo - 1, -1):
            if causal and t + 1 < T:
                X *= math.exp(st[n, t, 0] - st[n, t + 1, 0])
            X += scratch[n, t, 0]
            Y += scratch[n, t, 1]
        sX[u] = X
        sY[u] = Y
        sN[u] = dn
        cuda.syncthreads()
        if u == 0:
            X = ZERO
            Y = ZERO
            if has_seed:                           # the final state's gradient: a2 = -dE, c4 = -dP at m_T
                X = -seed[n, j, 0]
                Y = -seed[n, j, 1]
            for w in range(NT - 1, -1, -1):
                Xw, Yw = sX[w], sY[w]
                _, _, _, wlo, whi = run(cu, w)
                if causal:
                    sX[w] = X                      # X, Y at the first row after run w
                    sY[w] = Y
                    if wlo < whi:                  # X at whi is relative to m_whi (the seed's: to m_{T-1})
                        X *= math.exp(st[n, wlo, 0] - st[n, min(whi, T - 1), 0])
                        X += Xw
                        Y += Yw
                else:
                    X += Xw
                    Y += Yw
            if not causal:
                for w in range(NT):
                    sX[w] = X
                    sY[w] = Y
            dn = ZERO
            for w in range(NT):
                dn += sN[w]
            if has_init:                           # the initial state's dE0 (X at row a is relative to m_a), dP0, dn0
                sc[n, j, 0] = -math.exp(m0 - st[n, a, 0]) * X
                sc[n, j, 1] = -Y
                sc[n, j, 2] = dn
        cuda.syncthreads()
        X = sX[u]
        Y = sY[u]
        for t in range(hi - 1, lo - 1, -1):
            m = st[n, t, 0]
            if causal:
                if t + 1 < T:
                    X *= math.exp(m - st[n, t + 1, 0])
                X += scratch[n, t, 0]
                Y += scratch[n, t, 1]
            val = scratch[n, t, 2] - math.exp(acc(s[n, t]) - m) * X - Y
            if has_seed:                           # the final max's gradient goes to its first s_t (m0 wins ties)
                prev = st[n, t - 1, 0] if t > a else m0
                if acc(s[n, t]) == st[n, T - 1, 0] and prev < st[n, T - 1, 0]:
                    val += mu[n, j]
            ds[n, t] = val
    return kern


# ============================================================================ chunked
@dataclass
class _Coefficients:
    """The chunk kernel's per-position coefficient arrays (N, T, 3, 2) from the stats scan (module doc), the
    statistics st (N, T, 3): m, E, P, and the sequences (the core's segments, one per sequence) as offsets
    (device cu) and as the core's Segments."""
    Qf: object
    Kf: object
    Qp: object
    Qdk: object
    st: object
    cu: object
    segs: object


def _coef_run(io, core, segs, a, b, c, outs, qco, kco, causal, rev=False, parts=False, **states):
    """One output of the core's coef family (three states F, G, H; ``states``: S0, R0, st_trans, Sfin, Rfin,
    causal only).  Non-causal: the state pass writes each sequence's total states and their references, then
    the output pass reads them (no intra-chunk term)."""
    if causal:
        _chunked.run(core, segs, a, b, c, *outs, qco=qco, kco=kco, rev=rev, parts=parts, **states)
        return
    N, _, Da = b.shape
    wdt = np.dtype(core.acc.name)
    S = io.empty((N, segs.nseg * core.NS, Da, c.shape[2]), wdt)
    R = io.empty((N, segs.nseg * core.NS), wdt)
    _chunked.run(core, segs, b, b, c, c, qco=qco, kco=kco, rev=rev, emit=False, Sfin=S, Rfin=R)
    _chunked.run(core, segs, a, b, c, *outs, qco=qco, kco=kco, rev=rev, parts=parts, intra=False, fold=False,
                 S0=S, R0=R)


@dataclass
class _CoreState:
    """A ZeroS state (or its final gradient) as the core and the scans take it, on the device: S (N, nseq 3,
    Dk, Dv) the F, G, H fields interleaved per sequence, R (N, nseq 3) their log references, scalars (N, nseq,
    k) per sequence (the initial state: m0, E0, P0, n0; a final gradient: dE, dP)."""
    S: object
    R: object
    scalars: object


def _core_state(io, F, G, H, ref, scalars):
    xp = io.xp
    N, nseq = ref.shape
    zero = xp.zeros_like(ref)
    S = xp.stack([F, G, H], axis=2).reshape((N, nseq * 3) + F.shape[2:])
    R = xp.stack([ref, zero, zero], axis=2).reshape(N, nseq * 3)
    return _CoreState(*(io.to_device(xp.ascontiguousarray(x)) for x in (S, R, xp.stack(scalars, axis=2))))


def _fields(io, S, R, shift):
    """(F, G, H) of a core state (N, nseq 3, Dk, Dv) with references R, each rescaled to the log reference
    ``-shift`` (F: shift[0] (N, nseq); G, H: 0), as the caller's arrays."""
    xp = io.xp
    S, R = io.to_caller(S), io.to_caller(R)
    N = R.shape[0]
    S = S.reshape((N, -1, 3) + S.shape[2:])
    R = R.reshape(N, -1, 3)
    return tuple(xp.ascontiguousarray(S[:, :, x] * xp.exp(R[..., x] + (shift if x == 0 else 0))[..., None, None])
                 for x in range(3))


def _chunked_forward(io, q, k, v, s, gates, causal, cu_seqlens=None, initial_state=None, return_state=False):
    N, T, Dk = q.shape
    Dv = v.shape[2]
    dt = q.dtype
    acc = nb_type(dt)
    core = _chunked.plan(q, _chunked.COEF, (Dk, Dv), NS=3)
    cu = tuple(cu_seqlens) if cu_seqlens is not None else (0, T)
    segs = _chunked.segments(io, T, core.C, 0, cu)
    co = _Coefficients(*(io.empty((N, T, 3, 2), dt) for _ in range(4)), io.empty((N, T, 3), dt), segs.cu_dev,
                       segs)
    st0 = initial_state
    init = None if st0 is None else _core_state(io, st0.F, st0.G, st0.H, st0.m, (st0.m, st0.E, st0.P, st0.n))
    fin = io.empty((N, segs.nseq, 4), dt)
    _stats_kernel(SCAN_THREADS, acc)[(N, segs.nseq), SCAN_THREADS](
        s, gates, co.cu, _chunked._dummy(acc, 3) if init is None else init.scalars, init is not None, causal,
        co.Qf, co.Kf, co.Qp, co.Qdk, co.st, fin)
    o = io.empty((N, T, Dv), dt)
    states = {} if init is None else dict(S0=init.S, R0=init.R)
    if return_state:
        states.update(Sfin=io.empty((N, segs.nseq * 3, Dk, Dv), dt), Rfin=io.empty((N, segs.nseq * 3), dt))
    _coef_run(io, core, segs, q, k, v, (o,), co.Qf, co.Kf, causal, **states)
    final = None
    if return_state:
        f = io.to_caller(fin)
        m = io.xp.ascontiguousarray(f[..., 0])
        F, G, H = _fields(io, states["Sfin"], states["Rfin"], -m)
        final = ZeroSState(m, *(io.xp.ascontiguousarray(f[..., x]) for x in (1, 2, 3)), F, G, H)
    return o, co, init, final


def _chunked_backward(ctx, do, dfinal=None):
    """The chunked backward (module doc).  With an initial state: the output parts and dq start from it; with
    the final state's gradient (dm, dE, dP, dn, dF, dG, dH): the reverse runs of the dk parts and dv start from
    (dF, dG, dH) at the final max (log reference -m_b), the finish scan's X and Y from -dE and -dP, and mu =
    dm - E_b dE - <F_b, dF> goes to the first s_t reaching the final max m_b (or to m0, which wins a tie);
    the initial state's gradient is dv's run's final state (dF0 = e^{m0 + r} S^F, dG0, dH0), the finish
    scan's -e^{m0 - m_a} X_a (dE0), -Y_a (dP0) and sum_t dn_t (+ dn: dn0), and dm0 = E0 dE0 + <F0, dF0>
    (+ mu when m0 is the maximum) (workbench/reference/zeros.py derives every term)."""
    io, q, k, v, s, gates, causal, co = ctx.io, ctx.q, ctx.k, ctx.v, ctx.s, ctx.gates, ctx.causal, ctx.coefficients
    N, T, Dk = q.shape
    Dv = v.shape[2]
    acc = nb_type(q.dtype)
    dt = q.dtype
    xp = io.xp
    core, segs = _chunked.plan(q, _chunked.COEF, (Dk, Dv), NS=3), co.segs
    init, fin = ctx.init, ctx.final
    fwd = {} if init is None else dict(S0=init.S, R0=init.R)
    seed = mu = None
    if dfinal is not None:
        seed = _core_state(io, dfinal.F, dfinal.G, dfinal.H, -fin.m, (dfinal.E, dfinal.P))
        mu = io.to_device(xp.ascontiguousarray(dfinal.m - fin.E * dfinal.E - (fin.F * dfinal.F).sum((-2, -1))))
    rev = {} if seed is None else dict(S0=seed.S, R0=seed.R)
    oF, oG, oH = (io.empty((N, T, Dv), dt) for _ in range(3))
    _coef_run(io, core, segs, q, k, v, (oF, oG, oH), co.Qp, co.Kf, causal, parts=True, **fwd)
    dq = io.empty(q.shape, dt)
    _coef_run(io, core, segs, do, v, k, (dq,), co.Qf, co.Kf, causal, **fwd, **({"st_trans": True} if fwd else {}))
    dkF, dkG, dkH = (io.empty((N, T, Dk), dt) for _ in range(3))
    _coef_run(io, core, segs, v, do, q, (dkF, dkG, dkH), co.Qdk, co.Qf, causal, rev=True, parts=True, **rev,
              **({"st_trans": True} if rev else {}))
    dv = io.empty(v.shape, dt)
    if init is not None:
        rev.update(Sfin=io.empty((N, segs.nseq * 3, Dk, Dv), dt), Rfin=io.empty((N, segs.nseq * 3), dt))
    _coef_run(io, core, segs, k, q, do, (dv,), co.Kf, co.Qf, causal, rev=True, **rev)
    dk, ds, dgates = io.empty(k.shape, dt), io.empty(s.shape, dt), io.empty(gates.shape, dt)
    scratch = io.empty((N, T, 3), dt)
    sc = io.empty((N, segs.nseq, 3), dt)
    d2, d3 = _chunked._dummy(acc, 2), _chunked._dummy(acc, 3)
    _finish_kernel(SCAN_THREADS, acc)[(N, segs.nseq), SCAN_THREADS](
        do, oF, oG, oH, k, dkF, dkG, dkH, s, gates, co.st, co.cu, d3 if init is None else init.scalars,
        init is not None, d3 if seed is None else seed.scalars, d2 if mu is None else mu, seed is not None, causal,
        dk, ds, dgates, scratch, sc)
    grads = (dq, dk, dv, ds, dgates)
    if init is None:
        return grads, None
    st0 = ctx.initial_state
    dF0, dG0, dH0 = _fields(io, rev["Sfin"], rev["Rfin"], st0.m)
    scv = io.to_caller(sc)
    dE0, dP0, dn0 = (xp.ascontiguousarray(scv[..., x]) for x in range(3))
    dm0 = st0.E * dE0 + (st0.F * dF0).sum((-2, -1))
    if dfinal is not None:
        dn0 = dn0 + dfinal.n
        dm0 = dm0 + xp.where(st0.m >= fin.m, io.to_caller(mu), 0)
    return grads, ZeroSState(dm0, dE0, dP0, dn0, dF0, dG0, dH0)


# ============================================================================ variants
@dataclass
class _Context(Saved):
    """What the backward needs (impl: "naive" or "chunked"; chunked: the initial state as given and as the core
    takes it, and the final state when it was returned)."""
    s: object
    gates: object
    causal: bool
    coefficients: Optional[_Coefficients] = None
    initial_state: object = None
    init: Optional[_CoreState] = None
    final: object = None


def _forward(impl, q, k, v, s, gates, causal=True, initial_state=None, return_state=False, cu_seqlens=None):
    io = DeviceIO(q)
    q, k, v, s, gates = (io.to_device(x) for x in (q, k, v, s, gates))
    causal = bool(causal)
    if impl != "chunked":
        o, _ = _naive_forward(io, q, k, v, s, gates, causal)
        return io.to_caller(o), _Context(io, impl, q, k, v, s, gates, causal)
    o, co, init, final = _chunked_forward(io, q, k, v, s, gates, causal, cu_seqlens, initial_state, return_state)
    ctx = _Context(io, impl, q, k, v, s, gates, causal, co, initial_state, init, final)
    out = io.to_caller(o)
    return ((out, final) if return_state else out), ctx


def _backward(ctx: _Context, do, dfinal=None):
    do = ctx.io.to_device(do)
    if ctx.impl != "chunked":
        return tuple(ctx.io.to_caller(x) for x in _naive_backward(ctx, do))
    grads, d0 = _chunked_backward(ctx, do, dfinal)
    return tuple(ctx.io.to_caller(x) for x in grads) + ((d0,) if d0 is not None else ())


register_variant("zeros", "naive", _forward, _backward,
                 "one thread per output row, O(T^2), each row's softmax stats recomputed; backward: "
                 "one thread per query row (dq, U, V, Z, dgates), one per key row (dk, dv, ds)",
                 {"float32": 2e-5, "float64": 5e-14})
register_variant("zeros", "chunked", _forward, _backward,
                 "chunked: F, G, H states (Dk x BV each, shared memory) with a running-max "
                 "reference for e^s; segmented-scan stats; backward = the same kernel for the output "
                 "parts, dq, dk parts and dv (reverse), then a segmented reverse scan for ds, dgates; "
                 "initial/final state, cu_seqlens (the scans and the core per sequence)",
                 {"float32": 5e-6, "float64": 2e-14}, default=True, features=frozenset({"state", "packed"}))
