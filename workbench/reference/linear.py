"""Linear attention references: explicit O(T^2) and chunked linear-time.

Forward, with Q = phi(q), K = phi(k) and A_ti = scale Q_t.K_i (i <= t when causal):
    num_t = sum_i A_ti v_i,   den_t = sum_i A_ti + eps,   o_t = num_t / den_t  (normalize)  or  num_t.
Causal state form: S_t = sum_{i<=t} K_i v_i^T,  z_t = sum_{i<=t} K_i,
    num_t = scale S_t^T Q_t,  den_t = scale z_t.Q_t + eps.

Backward (hand-derived).  Without normalize, dnum = do and dden = 0.  With normalize,
    dnum_t = do_t / den_t,        dden_t = -(do_t . num_t) / den_t^2 = -(do_t . o_t) / den_t.
Then dA_ti = dnum_t.v_i + dden_t (masked), and
    dv = A^T dnum,   dQ = scale dA K,   dK = scale dA^T Q,   dq = dQ * phi'(q),   dk = dK * phi'(k).
The chunked form derives dden through o instead: dden_t = -(dnum_t . o_t).
Chunked: within a chunk the masked C x C block is explicit; across chunks
    dQ_t += scale (S_prev dnum_t + z_prev dden_t)                    (forward sweep, prefix states)
    dK_i += scale (dS v_i + dz),  dv_i += scale dS^T K_i              (reverse sweep)
with the suffix states dS = sum_{t in later chunks} Q_t dnum_t^T and dz = sum_{t later} Q_t dden_t.
"""
from __future__ import annotations

import numpy as np

from .common import CHUNK, as_work, causal_mask, chunks, feature_map as _phi, feature_map_grad, mT


def _scores(Q, K, causal, scale):
    T = Q.shape[-2]
    return np.where(causal_mask(T, causal), scale * (Q @ mT(K)), 0)


def explicit_forward(q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6):
    dt = q.dtype
    q, k, v = as_work(q, k, v, dtype=np.float64)
    A = _scores(_phi(q, feature_map), _phi(k, feature_map), causal, scale)
    o = A @ v
    if normalize:
        o = o / (A.sum(-1, keepdims=True) + eps)
    return o.astype(dt), (q, k, v, causal, feature_map, normalize, scale, eps, dt)


def explicit_backward(ctx, do):
    q, k, v, causal, fmap, normalize, scale, eps, dt = ctx
    do = do.astype(np.float64)
    Q, K = _phi(q, fmap), _phi(k, fmap)
    A = _scores(Q, K, causal, scale)
    dnum, dden = _dnum_dden(do, A @ v, A.sum(-1) + eps if normalize else None)
    mask = causal_mask(q.shape[-2], causal)
    dA = np.where(mask, dnum @ mT(v) + (0 if dden is None else dden[..., None]), 0)
    dv = mT(A) @ dnum
    dq = scale * (dA @ K) * feature_map_grad(q, fmap)
    dk = scale * (mT(dA) @ Q) * feature_map_grad(k, fmap)
    return tuple(g.astype(dt) for g in (dq, dk, dv))


def _dnum_dden(do, num, den):
    """(dnum, dden) from do; dden is None without normalisation."""
    if den is None:
        return do, None
    return do / den[..., None], -(do * num).sum(-1) / den ** 2


def chunked_forward(q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6,
                    chunk=CHUNK):
    dt = q.dtype
    q, k, v = as_work(q, k, v)
    num, den = _chunked_num_den(_phi(q, feature_map), _phi(k, feature_map), v, causal, scale, eps, normalize,
                                chunk)
    o = num / den[..., None] if normalize else num
    return o.astype(dt), (q, k, v, num, den, causal, feature_map, normalize, scale, chunk, dt)


def _chunked_num_den(Q, K, v, causal, scale, eps, normalize, C):
    N, T, Dk = Q.shape
    if not causal:
        num = scale * (Q @ (mT(K) @ v))
        den = scale * (Q @ K.sum(1)[..., None])[..., 0] + eps if normalize else None
        return num, den
    num = np.empty((N, T, v.shape[-1]), dtype=Q.dtype)
    den = np.empty((N, T), dtype=Q.dtype) if normalize else None
    S = np.zeros((N, Dk, v.shape[-1]), dtype=Q.dtype)
    z = np.zeros((N, Dk), dtype=Q.dtype)
    for cs, ce in chunks(T, C):
        Qc, Kc, vc = Q[:, cs:ce], K[:, cs:ce], v[:, cs:ce]
        A = _scores(Qc, Kc, True, scale)
        num[:, cs:ce] = A @ vc + scale * (Qc @ S)
        if normalize:
            den[:, cs:ce] = A.sum(-1) + scale * (Qc @ z[..., None])[..., 0] + eps
        S += mT(Kc) @ vc
        z += Kc.sum(1)
    return num, den


def chunked_backward(ctx, do):
    q, k, v, num, den, causal, fmap, normalize, scale, C, dt = ctx
    do = do.astype(q.dtype)
    Q, K = _phi(q, fmap), _phi(k, fmap)
    # its own derivation of (dnum, dden), through the output o = num / den: dden = -(do / den).o
    dnum = do / den[..., None] if normalize else do
    dden = -(dnum * num / den[..., None]).sum(-1) if normalize else None
    N, T, Dk = Q.shape
    if not causal:
        S, dS = mT(K) @ v, mT(Q) @ dnum                       # (N, Dk, Dv)
        dQ = scale * (dnum @ mT(S))
        dK = scale * (v @ mT(dS))
        dv = scale * (K @ dS)
        if normalize:
            dQ += scale * dden[..., None] * K.sum(1)[:, None, :]
            dK += scale * (mT(Q) @ dden[..., None])[..., 0][:, None, :]
    else:
        dQ, dK, dv = np.empty_like(Q), np.empty_like(K), np.empty_like(v)
        S = np.zeros((N, Dk, v.shape[-1]), dtype=Q.dtype)
        z = np.zeros((N, Dk), dtype=Q.dtype)
        for cs, ce in chunks(T, C):                               # forward sweep: dQ
            dA = _chunk_dA(dnum, dden, v, cs, ce)
            dQ[:, cs:ce] = scale * (dA @ K[:, cs:ce] + dnum[:, cs:ce] @ mT(S))
            if normalize:
                dQ[:, cs:ce] += scale * dden[:, cs:ce, None] * z[:, None, :]
            S += mT(K[:, cs:ce]) @ v[:, cs:ce]
            z += K[:, cs:ce].sum(1)
        dS = np.zeros_like(S)
        dz = np.zeros_like(z)
        for cs, ce in reversed(list(chunks(T, C))):              # reverse sweep: dK, dv
            Qc, Kc, vc = Q[:, cs:ce], K[:, cs:ce], v[:, cs:ce]
            A = _scores(Qc, Kc, True, scale)
            dA = _chunk_dA(dnum, dden, v, cs, ce)
            dK[:, cs:ce] = scale * (mT(dA) @ Qc + vc @ mT(dS) + dz[:, None, :])
            dv[:, cs:ce] = mT(A) @ dnum[:, cs:ce] + scale * (Kc @ dS)
            dS += mT(Qc) @ dnum[:, cs:ce]
            if normalize:
                dz += (mT(Qc) @ dden[:, cs:ce, None])[..., 0]
    dq = dQ * feature_map_grad(q, fmap)
    dk = dK * feature_map_grad(k, fmap)
    return tuple(g.astype(dt) for g in (dq, dk, dv))


def _chunk_dA(dnum, dden, v, cs, ce):
    """dA on the diagonal block of chunk [cs, ce), masked causally."""
    dA = dnum[:, cs:ce] @ mT(v[:, cs:ce])
    if dden is not None:
        dA = dA + dden[:, cs:ce, None]
    return np.where(causal_mask(ce - cs, True), dA, 0)
