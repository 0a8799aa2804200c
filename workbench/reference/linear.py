"""Linear attention references: explicit O(T^2) and chunked linear-time.

Forward, with Q = phi(q), K = phi(k) and A_ti = scale Q_t.K_i (i <= t when causal):
    num_t = sum_i A_ti v_i,   den_t = sum_i A_ti + eps,   o_t = num_t / den_t  (normalize)  or  num_t.
Causal state form: S_t = sum_{i<=t} K_i v_i^T,  z_t = sum_{i<=t} K_i,
    num_t = scale S_t^T Q_t,  den_t = scale z_t.Q_t + eps.

Packed sequences (``cu_seqlens``): i and t range over one sequence (A_ti = 0 across a boundary).
Initial state (S0, z0) per sequence (causal only): S_t and z_t start from it, so
    num_t += scale S0^T Q_t,   den_t += scale z0.Q_t;
the final state of a sequence [a, b) is S_b = S0 + sum_{a<=i<b} K_i v_i^T, z_b = z0 + sum_i K_i.

Backward (hand-derived).  Without normalize, dnum = do and dden = 0.  With normalize,
    dnum_t = do_t / den_t,        dden_t = -(do_t . num_t) / den_t^2 = -(do_t . o_t) / den_t.
Then dA_ti = dnum_t.v_i + dden_t (masked), and
    dv = A^T dnum,   dQ = scale dA K,   dK = scale dA^T Q,   dq = dQ * phi'(q),   dk = dK * phi'(k).
The initial state adds  dQ_t += scale (S0 dnum_t + z0 dden_t)  and has the gradient
    dS0 = scale sum_t Q_t dnum_t^T + dS_b,   dz0 = scale sum_t Q_t dden_t + dz_b,
where (dS_b, dz_b) is the gradient of the final state, which also adds  dK_i += dS_b v_i + dz_b,
dv_i += dS_b^T K_i  (S_b is linear in K_i v_i^T and z_b in K_i).
The chunked form derives dden through o instead: dden_t = -(dnum_t . o_t), and writes phi its own way
(``feature_map_by_parts``), so comparing the two forms also checks the feature map.
Chunked (one sequence at a time): within a chunk the masked C x C block is explicit; across chunks
    dQ_t += scale (S_prev dnum_t + z_prev dden_t)                    (forward sweep, prefix states from S0)
    dK_i += dS v_i + dz,  dv_i += dS^T K_i                            (reverse sweep)
with the suffix states dS = dS_b + scale sum_{t in later chunks} Q_t dnum_t^T and
dz = dz_b + scale sum_{t later} Q_t dden_t; after the first chunk they are (dS0, dz0).
"""
from __future__ import annotations

import numpy as np

from ..state import LinearState, state_dtype
from .common import (CHUNK, as_work, causal_mask, chunks, feature_map as _phi, feature_map_by_parts, feature_map_grad,
                     mT, packed_backward, packed_forward, packed_mask, sequences, state_as)


def _scores(Q, K, causal, scale, cu=None):
    T = Q.shape[-2]
    return np.where(packed_mask(T, causal, cu), scale * (Q @ mT(K)), 0)


# ----------------------------------------------------------------------------- explicit O(T^2)
def explicit_forward(q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6,
                     initial_state=None, return_state=False, cu_seqlens=None):
    dt = q.dtype
    q, k, v = as_work(q, k, v, dtype=np.float64)
    st = state_as(initial_state, np.float64)
    Q, K = _phi(q, feature_map), _phi(k, feature_map)
    num, den = _explicit_num_den(Q, K, v, causal, scale, eps, normalize, cu_seqlens, st)
    o = num / den[..., None] if normalize else num
    out = o.astype(dt)
    if return_state:
        out = (out, _final_state(K, v, normalize, cu_seqlens, st, dt))
    return out, (q, k, v, causal, feature_map, normalize, scale, eps, cu_seqlens, st, dt)


def _explicit_num_den(Q, K, v, causal, scale, eps, normalize, cu, st):
    A = _scores(Q, K, causal, scale, cu)
    num = A @ v
    den = A.sum(-1) + eps if normalize else None
    if st is not None:
        for j, a, b in sequences(Q.shape[1], cu):
            num[:, a:b] += scale * (Q[:, a:b] @ st.S[:, j])
            if normalize:
                den[:, a:b] += scale * (Q[:, a:b] @ st.z[:, j, :, None])[..., 0]
    return num, den


def _final_state(K, v, normalize, cu, st, dt):
    """(S_b, z_b) of every sequence, in the state dtype of ``dt``."""
    S, z = [], []
    for j, a, b in sequences(K.shape[1], cu):
        S.append(mT(K[:, a:b]) @ v[:, a:b] + (0 if st is None else st.S[:, j]))
        z.append(K[:, a:b].sum(1) + (0 if st is None else st.z[:, j]) if normalize else None)
    sdt = state_dtype(dt)
    return LinearState(np.stack(S, 1).astype(sdt), np.stack(z, 1).astype(sdt) if normalize else None)


def explicit_backward(ctx, do, dstate=None):
    q, k, v, causal, fmap, normalize, scale, eps, cu, st, dt = ctx
    do = do.astype(np.float64)
    ds = state_as(dstate, np.float64)
    Q, K = _phi(q, fmap), _phi(k, fmap)
    A = _scores(Q, K, causal, scale, cu)
    num, den = _explicit_num_den(Q, K, v, causal, scale, eps, normalize, cu, st)
    dnum, dden = _dnum_dden(do, num, den)
    mask = packed_mask(q.shape[-2], causal, cu)
    dA = np.where(mask, dnum @ mT(v) + (0 if dden is None else dden[..., None]), 0)
    dv = mT(A) @ dnum
    dQ = scale * (dA @ K)
    dK = scale * (mT(dA) @ Q)
    dS0, dz0 = [], []
    for j, a, b in sequences(q.shape[1], cu):
        if st is not None:
            dQ[:, a:b] += scale * (dnum[:, a:b] @ mT(st.S[:, j]))
            dS0.append(scale * (mT(Q[:, a:b]) @ dnum[:, a:b]))
            if normalize:
                dQ[:, a:b] += scale * dden[:, a:b, None] * st.z[:, j, None, :]
                dz0.append(scale * (mT(Q[:, a:b]) @ dden[:, a:b, None])[..., 0])
        if ds is not None:
            dK[:, a:b] += v[:, a:b] @ mT(ds.S[:, j])
            dv[:, a:b] += K[:, a:b] @ ds.S[:, j]
            if normalize:
                dK[:, a:b] += ds.z[:, j, None, :]
    grads = tuple(g.astype(dt) for g in (dQ * feature_map_grad(q, fmap), dK * feature_map_grad(k, fmap), dv))
    if st is None:
        return grads
    dS0 = np.stack(dS0, 1) + (0 if ds is None else ds.S)
    dz0 = (np.stack(dz0, 1) + (0 if ds is None else ds.z)) if normalize else None
    return grads + (state_as(LinearState(dS0, dz0), state_dtype(dt)),)


def _dnum_dden(do, num, den):
    """(dnum, dden) from do; dden is None without normalisation."""
    if den is None:
        return do, None
    return do / den[..., None], -(do * num).sum(-1) / den ** 2


# ----------------------------------------------------------------------------- chunked linear time
def chunked_forward(q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6,
                    chunk=CHUNK, initial_state=None, return_state=False, cu_seqlens=None):
    dt = q.dtype
    q, k, v = as_work(q, k, v)
    st = state_as(initial_state, q.dtype)
    return packed_forward(_chunked_forward_one, (q, k, v), dt, cu_seqlens, st, return_state, causal=causal,
                          feature_map=feature_map, normalize=normalize, scale=scale, eps=eps, C=chunk)


def _chunked_forward_one(q, k, v, state, causal, feature_map, normalize, scale, eps, C):
    """One sequence: (o, final LinearState, ctx)."""
    Q, K = feature_map_by_parts(q, feature_map), feature_map_by_parts(k, feature_map)
    num, den, S, z = _chunked_num_den(Q, K, v, causal, scale, eps, normalize, C, state)
    o = num / den[..., None] if normalize else num
    return o, LinearState(S, z if normalize else None), (q, k, v, num, den, causal, feature_map, normalize,
                                                          scale, C, state)


def _chunked_num_den(Q, K, v, causal, scale, eps, normalize, C, state):
    """num, den (None without normalize) and the state after the sequence (S, z)."""
    N, T, Dk = Q.shape
    if not causal:
        S, z = mT(K) @ v, K.sum(1)
        num = scale * (Q @ S)
        den = scale * (Q @ z[..., None])[..., 0] + eps if normalize else None
        return num, den, S, z
    num = np.empty((N, T, v.shape[-1]), dtype=Q.dtype)
    den = np.empty((N, T), dtype=Q.dtype) if normalize else None
    S = np.zeros((N, Dk, v.shape[-1]), dtype=Q.dtype) if state is None else state.S.copy()
    z = np.zeros((N, Dk), dtype=Q.dtype) if state is None or state.z is None else state.z.copy()
    for cs, ce in chunks(T, C):
        Qc, Kc, vc = Q[:, cs:ce], K[:, cs:ce], v[:, cs:ce]
        A = _scores(Qc, Kc, True, scale)
        num[:, cs:ce] = A @ vc + scale * (Qc @ S)
        if normalize:
            den[:, cs:ce] = A.sum(-1) + scale * (Qc @ z[..., None])[..., 0] + eps
        S += mT(Kc) @ vc
        z += Kc.sum(1)
    return num, den, S, z


def chunked_backward(ctx, do, dstate=None):
    return packed_backward(_chunked_backward_one, ctx, do, dstate)


def _chunked_backward_one(ctx, do, dfinal):
    """One sequence: ((dq, dk, dv), initial state's gradient or None)."""
    q, k, v, num, den, causal, fmap, normalize, scale, C, state = ctx
    Q, K = feature_map_by_parts(q, fmap), feature_map_by_parts(k, fmap)
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
        d0 = None
    else:
        dQ, dK, dv = np.empty_like(Q), np.empty_like(K), np.empty_like(v)
        S = np.zeros((N, Dk, v.shape[-1]), dtype=Q.dtype) if state is None else state.S.copy()
        z = np.zeros((N, Dk), dtype=Q.dtype) if state is None or state.z is None else state.z.copy()
        for cs, ce in chunks(T, C):                               # forward sweep: dQ
            dA = _chunk_dA(dnum, dden, v, cs, ce)
            dQ[:, cs:ce] = scale * (dA @ K[:, cs:ce] + dnum[:, cs:ce] @ mT(S))
            if normalize:
                dQ[:, cs:ce] += scale * dden[:, cs:ce, None] * z[:, None, :]
            S += mT(K[:, cs:ce]) @ v[:, cs:ce]
            z += K[:, cs:ce].sum(1)
        dS = np.zeros_like(S) if dfinal is None else dfinal.S.copy()
        dz = np.zeros_like(z) if dfinal is None or dfinal.z is None else dfinal.z.copy()
        for cs, ce in reversed(list(chunks(T, C))):              # reverse sweep: dK, dv
            Qc, Kc, vc = Q[:, cs:ce], K[:, cs:ce], v[:, cs:ce]
            A = _scores(Qc, Kc, True, scale)
            dA = _chunk_dA(dnum, dden, v, cs, ce)
            dK[:, cs:ce] = scale * (mT(dA) @ Qc) + vc @ mT(dS) + dz[:, None, :]
            dv[:, cs:ce] = mT(A) @ dnum[:, cs:ce] + Kc @ dS
            dS += scale * (mT(Qc) @ dnum[:, cs:ce])
            if normalize:
                dz += scale * (mT(Qc) @ dden[:, cs:ce, None])[..., 0]
        d0 = None if state is None else LinearState(dS, dz if normalize else None)
    return (dQ * feature_map_grad(q, fmap), dK * feature_map_grad(k, fmap), dv), d0


def _chunk_dA(dnum, dden, v, cs, ce):
    """dA on the diagonal block of chunk [cs, ce), masked causally."""
    dA = dnum[:, cs:ce] @ mT(v[:, cs:ce])
    if dden is not None:
        dA = dA + dden[:, cs:ce, None]
    return np.where(causal_mask(ce - cs, True), dA, 0)
