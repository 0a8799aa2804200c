"""Softmax attention references: explicit O(T^2) and tiled online-softmax (flash style).

Forward (per leading index):  a_ti = scale q_t.k_i (i <= t when causal),  p = softmax_i(a),  o = p v.

Backward (hand-derived).  With do = dL/do:
    dv   = p^T do
    dp   = do v^T
    da   = p * (dp - D),         D_t = sum_i p_ti dp_ti = do_t . o_t      (softmax Jacobian)
    dq   = scale * da k
    dk   = scale * da^T q
The tiled form saves the per-row log-sum-exp  lse_t = log sum_i exp(a_ti)  in the forward and recomputes
p_ti = exp(a_ti - lse_t) block by block in the backward, so neither pass holds a T x T matrix.

Packed sequences (``cu_seqlens``): keys of other sequences are masked out of every row (the explicit form
masks the T x T matrix; the tiled form runs each sequence on its own).  The gradients are the formulas
above per sequence.
"""
from __future__ import annotations

import numpy as np

from .common import BLOCK, as_work, causal_mask, mT, packed_backward, packed_forward, packed_mask


def explicit_forward(q, k, v, causal=True, scale=1.0, cu_seqlens=None):
    dt = q.dtype
    q, k, v = as_work(q, k, v, dtype=np.float64)
    p = _probs(q, k, causal, scale, cu_seqlens)
    o = p @ v
    return o.astype(dt), (q, k, v, causal, scale, cu_seqlens, dt)


def _probs(q, k, causal, scale, cu=None):
    T = q.shape[-2]
    a = scale * (q @ mT(k))
    a = np.where(packed_mask(T, causal, cu), a, -np.inf)
    m = a.max(-1, keepdims=True)
    p = np.exp(a - m)
    return p / p.sum(-1, keepdims=True)


def explicit_backward(ctx, do):
    q, k, v, causal, scale, cu, dt = ctx
    do = do.astype(np.float64)
    p = _probs(q, k, causal, scale, cu)
    o = p @ v
    dv = mT(p) @ do
    dp = do @ mT(v)
    da = p * (dp - (do * o).sum(-1, keepdims=True))
    dq = scale * (da @ k)
    dk = scale * (mT(da) @ q)
    return tuple(g.astype(dt) for g in (dq, dk, dv))


def _key_blocks(qs, qe, T, causal, B):
    """Key blocks a query block [qs, qe) sees; blocks wholly above the diagonal are skipped."""
    end = qe if causal else T
    return [(ks, min(ks + B, T)) for ks in range(0, end, B)]


def tiled_forward(q, k, v, causal=True, scale=1.0, block=BLOCK, cu_seqlens=None):
    dt = q.dtype
    q, k, v = as_work(q, k, v)
    return packed_forward(_tiled_forward_one, (q, k, v), dt, cu_seqlens, None, False, causal=causal, scale=scale,
                          block=block)


def _tiled_forward_one(q, k, v, state, causal, scale, block):
    """One sequence: (o, None, ctx)."""
    N, T, _ = q.shape
    o = np.empty((N, T, v.shape[-1]), dtype=q.dtype)
    lse = np.empty((N, T), dtype=q.dtype)
    for qs in range(0, T, block):
        qe = min(qs + block, T)
        qb = q[:, qs:qe]
        m = np.full((N, qe - qs, 1), -np.inf, dtype=q.dtype)
        l = np.zeros((N, qe - qs, 1), dtype=q.dtype)
        acc = np.zeros((N, qe - qs, v.shape[-1]), dtype=q.dtype)
        for ks, ke in _key_blocks(qs, qe, T, causal, block):
            a = scale * (qb @ mT(k[:, ks:ke]))
            if causal and ke > qs:          # block crosses the diagonal
                a = np.where(causal_mask(0, True, qs, ks, qe - qs, ke - ks), a, -np.inf)
            m_new = np.maximum(m, a.max(-1, keepdims=True))
            corr = np.exp(m - m_new)
            p = np.exp(a - m_new)
            l = l * corr + p.sum(-1, keepdims=True)
            acc = acc * corr + p @ v[:, ks:ke]
            m = m_new
        o[:, qs:qe] = acc / l
        lse[:, qs:qe] = (m + np.log(l))[..., 0]
    return o, None, (q, k, v, o, lse, causal, scale, block)


def tiled_backward(ctx, do):
    return packed_backward(_tiled_backward_one, ctx, do, None)


def _tiled_backward_one(ctx, do, dfinal):
    """One sequence: ((dq, dk, dv), None)."""
    q, k, v, o, lse, causal, scale, block = ctx
    N, T, _ = q.shape
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    D = (do * o).sum(-1, keepdims=True)
    for qs in range(0, T, block):
        qe = min(qs + block, T)
        qb, dob, Db, lb = q[:, qs:qe], do[:, qs:qe], D[:, qs:qe], lse[:, qs:qe, None]
        for ks, ke in _key_blocks(qs, qe, T, causal, block):
            a = scale * (qb @ mT(k[:, ks:ke]))
            if causal and ke > qs:
                a = np.where(causal_mask(0, True, qs, ks, qe - qs, ke - ks), a, -np.inf)
            p = np.exp(a - lb)
            dv[:, ks:ke] += mT(p) @ dob
            da = p * (dob @ mT(v[:, ks:ke]) - Db)
            dq[:, qs:qe] += scale * (da @ k[:, ks:ke])
            dk[:, ks:ke] += scale * (mT(da) @ qb)
    return (dq, dk, dv), None
