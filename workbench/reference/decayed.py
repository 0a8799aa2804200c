"""Decayed linear attention references (always causal): explicit O(T^2) and chunked linear-time.

Forward, with g = log_decay <= 0 and G_t = sum_{j<=t} g_j:
    A_ti = scale exp(G_t - G_i) q_t.k_i   (i <= t),   o_t = sum_i A_ti v_i
i.e.  S_t = exp(g_t) S_{t-1} + k_t v_t^T,  o_t = scale S_t^T q_t.

Backward (hand-derived).  With D_ti = scale exp(G_t - G_i) [i <= t] and dA_ti = do_t.v_i:
    dv = A^T do,   dq = (dA * D) k,   dk = (dA * D)^T q.
For the decay, A_ti depends on G_t (+1) and G_i (-1); with W = dA * A:
    dG_t = sum_i W_ti - sum_t' W_t't = do_t.o_t - v_t.dv_t
(row sum: do_t.o_t = sum_i A_ti do_t.v_i;  column sum: v_t.dv_t = sum_t' A_t't do_t'.v_t), and since
G_t = sum_{j<=t} g_j,  dg_j = sum_{t>=j} dG_t  (a reverse cumulative sum).

Stability: only differences G_t - G_i with i <= t are exponentiated, so every exponent is <= 0.  The chunked
form uses within-chunk cumulative sums b_t = sum_{j in chunk, j<=t} g_j, so it never forms large G_t either:
    o_t = scale [exp(b_t) q_t^T S + sum_{i in chunk, i<=t} exp(b_t - b_i) q_t.k_i v_i]
    S  <- exp(b_last) S + sum_{i in chunk} exp(b_last - b_i) k_i v_i^T
and the reverse sweep carries dS = sum_{t in later chunks} scale exp(G_t - G_chunk_end) q_t do_t^T:
    dk_i += exp(b_last - b_i) dS v_i,   dv_i += exp(b_last - b_i) dS^T k_i,
    dS   <- exp(b_last) dS + scale sum_{t in chunk} exp(b_t) q_t do_t^T.
"""
from __future__ import annotations

import numpy as np

from .common import CHUNK, as_work, causal_mask, chunks, mT


def _decay_matrix(b, Tq=None):
    """exp(b_t - b_i) for i <= t, else 0; b: (N, C) cumulative log decays."""
    C = b.shape[-1]
    diff = b[:, :, None] - b[:, None, :]
    return np.exp(np.where(causal_mask(C, True), diff, -np.inf))


def explicit_forward(q, k, v, log_decay, scale=1.0):
    dt = q.dtype
    q, k, v, g = as_work(q, k, v, log_decay, dtype=np.float64)
    A = scale * (q @ mT(k)) * _decay_matrix(np.cumsum(g, -1))
    o = A @ v
    return o.astype(dt), (q, k, v, g, scale, dt)


def explicit_backward(ctx, do):
    q, k, v, g, scale, dt = ctx
    do = do.astype(np.float64)
    D = scale * _decay_matrix(np.cumsum(g, -1))
    A = (q @ mT(k)) * D
    o = A @ v
    dA = do @ mT(v)
    dv = mT(A) @ do
    dq = (dA * D) @ k
    dk = mT(dA * D) @ q
    dg = _dlog_decay(do, o, v, dv)
    return tuple(x.astype(dt) for x in (dq, dk, dv, dg))


def _dlog_decay(do, o, v, dv):
    dG = (do * o).sum(-1) - (v * dv).sum(-1)
    return np.cumsum(dG[:, ::-1], -1)[:, ::-1]


def chunked_forward(q, k, v, log_decay, scale=1.0, chunk=CHUNK):
    dt = q.dtype
    q, k, v, g = as_work(q, k, v, log_decay)
    N, T, Dk = q.shape
    o = np.empty((N, T, v.shape[-1]), dtype=q.dtype)
    S = np.zeros((N, Dk, v.shape[-1]), dtype=q.dtype)
    for cs, ce in chunks(T, chunk):
        qc, kc, vc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce]
        b = np.cumsum(g[:, cs:ce], -1)
        A = scale * (qc @ mT(kc)) * _decay_matrix(b)
        o[:, cs:ce] = A @ vc + scale * np.exp(b)[..., None] * (qc @ S)
        blast = b[:, -1:]
        S = np.exp(blast)[..., None] * S + mT(kc * np.exp(blast - b)[..., None]) @ vc
    return o.astype(dt), (q, k, v, g, o, scale, chunk, dt)


def chunked_backward(ctx, do):
    q, k, v, g, o, scale, C, dt = ctx
    do = do.astype(q.dtype)
    N, T, Dk = q.shape
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    S = np.zeros((N, Dk, v.shape[-1]), dtype=q.dtype)
    for cs, ce in chunks(T, C):                                    # forward sweep: dq
        qc, kc, vc, doc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce], do[:, cs:ce]
        b = np.cumsum(g[:, cs:ce], -1)
        dAD = (doc @ mT(vc)) * (scale * _decay_matrix(b))
        dq[:, cs:ce] = dAD @ kc + scale * np.exp(b)[..., None] * (doc @ mT(S))
        blast = b[:, -1:]
        S = np.exp(blast)[..., None] * S + mT(kc * np.exp(blast - b)[..., None]) @ vc
    dS = np.zeros_like(S)
    for cs, ce in reversed(list(chunks(T, C))):                   # reverse sweep: dk, dv
        qc, kc, vc, doc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce], do[:, cs:ce]
        b = np.cumsum(g[:, cs:ce], -1)
        D = scale * _decay_matrix(b)
        A = (qc @ mT(kc)) * D
        dAD = (doc @ mT(vc)) * D
        blast = b[:, -1:]
        w = np.exp(blast - b)[..., None]
        dk[:, cs:ce] = mT(dAD) @ qc + w * (vc @ mT(dS))
        dv[:, cs:ce] = mT(A) @ doc + w * (kc @ dS)
        dS = np.exp(blast)[..., None] * dS + scale * (mT(qc * np.exp(b)[..., None]) @ doc)
    dg = _dlog_decay(do, o, v, dv)
    return tuple(x.astype(dt) for x in (dq, dk, dv, dg))
