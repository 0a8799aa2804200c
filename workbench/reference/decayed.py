"""Decayed linear attention references (always causal): explicit O(T^2) and chunked linear-time.

Forward, with g = log_decay in [-inf, 0] and L_ti = sum_{i<j<=t} g_j (the log decay from key i to query t):
    A_ti = scale exp(L_ti) q_t.k_i   (i <= t),   o_t = sum_i A_ti v_i
i.e.  S_t = exp(g_t) S_{t-1} + k_t v_t^T,  o_t = scale S_t^T q_t.  g_t = -inf is an exact reset: every key
before t drops out of every output from t on (exp(-inf) = 0, and nothing here ever forms -inf - -inf).

Backward (hand-derived).  With D_ti = scale exp(L_ti) [i <= t], dA_ti = do_t.v_i and W = dA * A:
    dv = A^T do,   dq = (dA * D) k,   dk = (dA * D)^T q.
For the decay, dA_ti/dL_ti = A_ti and L_ti contains g_j exactly when i < j <= t, so
    dg_j = sum_{t >= j} sum_{i < j} W_ti           (the pairs (t, i) whose decay spans position j).
It is a sum over pairs, never a difference, so dg_j = 0 exactly across a reset (every such A_ti is 0).

Accuracy for any g in [-inf, 0]: every exponent is a sum of the g_j it spans (all <= 0, no cancellation),
never a difference of cumulative sums G_t - G_i: with g ~ -1e4 the cumulative sums reach -1e6, where one
float32 rounding step is already 0.06, while the decays that matter (L_ti near 0) span only small g_j.

Chunked form, per chunk of positions [cs, ce) with the carried state S = sum_{i<cs} exp(L_{cs-1,i}) k_i v_i^T:
    pre_t  = sum_{cs<=j<=t} g_j (from the chunk start),  post_i = sum_{i<j<ce} g_j (to the chunk end),
    tot    = sum_{cs<=j<ce} g_j,                          L_ti within the chunk as above (C x C),
    o_t = scale [exp(pre_t) q_t^T S + sum_{cs<=i<=t} exp(L_ti) q_t.k_i v_i]
    S  <- exp(tot) S + sum_i exp(post_i) k_i v_i^T.
The reverse sweep carries dS = scale sum_{t >= ce} exp(L_{t,ce-1}) q_t do_t^T:
    dk_i += exp(post_i) dS v_i,   dv_i += exp(post_i) dS^T k_i,   dS <- exp(tot) dS + scale sum_t exp(pre_t) q_t do_t^T.
Its decay gradient splits the pairs spanning j (in chunk c) by where t and i lie, a derivation of its own:
    both in c:                 the C x C pair sum above;
    i before c, t in c, t>=j:  sum_{t>=j} x_t,   x_t = scale exp(pre_t) q_t^T S do_t;
    i in c, i<j, t after c:    sum_{i<j} y_i,    y_i = exp(post_i) k_i^T dS v_i;
    i before c, t after c:     exp(tot) <S, dS>  (the same for every j in c).

Packed sequences (``cu_seqlens``): pairs (t, i) in different sequences are masked (L_ti = -inf).
Initial state S0 per sequence [a, b) and the final state S_b:
    o_t += scale exp(pre_t) q_t^T S0,          pre_t  = sum_{a<=j<=t} g_j  (S0 decays into row t by G_t)
    S_b  = exp(tot) S0 + sum_i exp(post_i) k_i v_i^T,   post_i = sum_{i<j<b} g_j,  tot = sum_{a<=j<b} g_j.
Their gradients, with D = dS_b the gradient of the final state:
    dq_t += scale exp(pre_t) S0 do_t,     dk_i += exp(post_i) D v_i,     dv_i += exp(post_i) D^T k_i,
    dS0   = scale sum_t exp(pre_t) q_t do_t^T + exp(tot) D,
and for the decay the new pairs are (row t, the state S0) and (the final state, key i) and (the final
state, S0), which span position j when j <= t, when i < j, and always:
    dg_j += sum_{t>=j} x_t + sum_{i<j} y_i + exp(tot) <S0, D>,
    x_t = scale exp(pre_t) q_t^T S0 do_t,   y_i = exp(post_i) k_i^T D v_i.
These are the chunked form's cross-chunk terms below with the state before the first chunk (S0) and the
gradient after the last (D) in place of zeros: the chunked form runs each sequence from S = S0 and its
reverse sweep from dS = D, and dS after the first chunk is dS0.
"""
from __future__ import annotations

import numpy as np

from ..state import DecayedState, state_dtype
from .common import (CHUNK, as_work, causal_mask, chunks, mT, packed_backward, packed_forward, packed_mask, sequences,
                     state_as)


def _log_decay_matrix(g):
    """L_ti = sum_{i<j<=t} g_j for i <= t, -inf above the diagonal; g: (N, C) -> (N, C, C).  Each entry is
    summed from the g_j it spans (a cumulative sum down each column), never a difference of prefix sums."""
    C = g.shape[-1]
    below = causal_mask(C, True) & ~np.eye(C, dtype=bool)              # [t, i]: i < t
    L = np.cumsum(np.where(below, g[:, :, None], 0), axis=-2)
    return np.where(causal_mask(C, True), L, -np.inf)


def _prefix_sums(g):
    """pre_t = sum_{j<=t} g_j (inclusive)."""
    return np.cumsum(g, -1)


def _suffix_sums(g):
    """post_i = sum_{j>i} g_j (exclusive, 0 at the last position)."""
    post = np.zeros_like(g)
    post[:, :-1] = np.cumsum(g[:, :0:-1], -1)[:, ::-1]
    return post


def _dlog_decay(W):
    """dg_j = sum_{t >= j} sum_{i < j} W_ti for W: (N, C, C) = dA * A (zero above the diagonal)."""
    before = np.zeros_like(W)                                          # before[t, j] = sum_{i<j} W_ti
    before[..., 1:] = np.cumsum(W[..., :-1], -1)
    spans = np.cumsum(before[:, ::-1], -2)[:, ::-1]                    # spans[j', j] = sum_{t>=j'} before[t, j]
    return np.diagonal(spans, axis1=-2, axis2=-1).copy()


def _packed_log_decay_matrix(g, cu):
    """``_log_decay_matrix`` over the packed T axis, -inf across sequence boundaries."""
    return np.where(packed_mask(g.shape[-1], True, cu), _log_decay_matrix(g), -np.inf)


def _sequence_decays(g, a, b):
    """exp(pre) (N, b-a), exp(post) (N, b-a), exp(tot) (N,) of the sequence [a, b)."""
    ga = g[:, a:b]
    return np.exp(_prefix_sums(ga)), np.exp(_suffix_sums(ga)), np.exp(ga.sum(-1))


# ----------------------------------------------------------------------------- explicit O(T^2)
def explicit_forward(q, k, v, log_decay, scale=1.0, initial_state=None, return_state=False, cu_seqlens=None):
    dt = q.dtype
    q, k, v, g = as_work(q, k, v, log_decay, dtype=np.float64)
    st = state_as(initial_state, np.float64)
    A = scale * (q @ mT(k)) * np.exp(_packed_log_decay_matrix(g, cu_seqlens))
    o = A @ v
    finals = []
    for j, a, b in sequences(q.shape[1], cu_seqlens):
        e_pre, e_post, e_tot = _sequence_decays(g, a, b)
        if st is not None:
            o[:, a:b] += scale * e_pre[..., None] * (q[:, a:b] @ st.S[:, j])
        if return_state:
            finals.append(mT(k[:, a:b] * e_post[..., None]) @ v[:, a:b]
                          + (0 if st is None else e_tot[:, None, None] * st.S[:, j]))
    out = o.astype(dt)
    if return_state:
        out = (out, DecayedState(np.stack(finals, 1).astype(state_dtype(dt))))
    return out, (q, k, v, g, scale, cu_seqlens, st, dt)


def explicit_backward(ctx, do, dstate=None):
    q, k, v, g, scale, cu, st, dt = ctx
    do = do.astype(np.float64)
    D = None if dstate is None else state_as(dstate, np.float64).S
    Dm = scale * np.exp(_packed_log_decay_matrix(g, cu))
    A = (q @ mT(k)) * Dm
    dA = do @ mT(v)
    dv = mT(A) @ do
    dq = (dA * Dm) @ k
    dk = mT(dA * Dm) @ q
    dg = _dlog_decay(dA * A)
    dS0 = []
    for j, a, b in sequences(q.shape[1], cu):
        e_pre, e_post, e_tot = _sequence_decays(g, a, b)
        qs, ks, vs, dos = q[:, a:b], k[:, a:b], v[:, a:b], do[:, a:b]
        if st is not None:
            S0 = st.S[:, j]
            dq[:, a:b] += scale * e_pre[..., None] * (dos @ mT(S0))
            x = scale * e_pre * ((qs @ S0) * dos).sum(-1)
            dg[:, a:b] += np.cumsum(x[:, ::-1], -1)[:, ::-1]                   # sum_{t >= j} x_t
            dS0.append(scale * (mT(qs * e_pre[..., None]) @ dos))
        if D is not None:
            Dj = D[:, j]
            dk[:, a:b] += e_post[..., None] * (vs @ mT(Dj))
            dv[:, a:b] += e_post[..., None] * (ks @ Dj)
            y = e_post * ((ks @ Dj) * vs).sum(-1)
            dg[:, a + 1:b] += np.cumsum(y[:, :-1], -1)                           # sum_{i < j} y_i
            if st is not None:
                dg[:, a:b] += (e_tot * (st.S[:, j] * Dj).sum((-2, -1)))[:, None]
                dS0[-1] = dS0[-1] + e_tot[:, None, None] * Dj
    grads = tuple(x.astype(dt) for x in (dq, dk, dv, dg))
    if st is None:
        return grads
    return grads + (DecayedState(np.stack(dS0, 1).astype(state_dtype(dt))),)


# ----------------------------------------------------------------------------- chunked linear time
def _chunk_decays(g, scale):
    """Within-chunk decays: (scale exp(L) (N,C,C), exp(pre) (N,C), exp(post) (N,C), exp(tot) (N,))."""
    return (scale * np.exp(_log_decay_matrix(g)), np.exp(_prefix_sums(g)), np.exp(_suffix_sums(g)),
            np.exp(g.sum(-1)))


def chunked_forward(q, k, v, log_decay, scale=1.0, chunk=CHUNK, initial_state=None, return_state=False,
                    cu_seqlens=None):
    dt = q.dtype
    q, k, v, g = as_work(q, k, v, log_decay)
    st = state_as(initial_state, q.dtype)
    return packed_forward(_chunked_forward_one, (q, k, v, g), dt, cu_seqlens, st, return_state, scale=scale,
                          C=chunk)


def _chunked_forward_one(q, k, v, g, state, scale, C):
    """One sequence: (o, final DecayedState, ctx)."""
    N, T, Dk = q.shape
    o = np.empty((N, T, v.shape[-1]), dtype=q.dtype)
    S = np.zeros((N, Dk, v.shape[-1]), dtype=q.dtype) if state is None else state.S
    for cs, ce in chunks(T, C):
        qc, kc, vc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce]
        D, e_pre, e_post, e_tot = _chunk_decays(g[:, cs:ce], scale)
        o[:, cs:ce] = ((qc @ mT(kc)) * D) @ vc + scale * e_pre[..., None] * (qc @ S)
        S = e_tot[:, None, None] * S + mT(kc * e_post[..., None]) @ vc
    return o, DecayedState(S), (q, k, v, g, scale, C, state)


def chunked_backward(ctx, do, dstate=None):
    return packed_backward(_chunked_backward_one, ctx, do, dstate)


def _chunked_backward_one(ctx, do, dfinal):
    """One sequence: ((dq, dk, dv, dg), the initial state's gradient or None)."""
    q, k, v, g, scale, C, state = ctx
    N, T, Dk = q.shape
    dq, dk, dv, dg = np.empty_like(q), np.empty_like(k), np.empty_like(v), np.empty_like(g)
    S = np.zeros((N, Dk, v.shape[-1]), dtype=q.dtype) if state is None else state.S
    S_before, x = [], np.empty_like(g)
    for cs, ce in chunks(T, C):                                    # forward sweep: dq, x
        qc, kc, vc, doc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce], do[:, cs:ce]
        D, e_pre, e_post, e_tot = _chunk_decays(g[:, cs:ce], scale)
        dq[:, cs:ce] = ((doc @ mT(vc)) * D) @ kc + scale * e_pre[..., None] * (doc @ mT(S))
        x[:, cs:ce] = scale * e_pre * ((qc @ S) * doc).sum(-1)
        S_before.append(S)
        S = e_tot[:, None, None] * S + mT(kc * e_post[..., None]) @ vc
    dS = np.zeros_like(S) if dfinal is None else dfinal.S
    for (cs, ce), S in reversed(list(zip(chunks(T, C), S_before))):  # reverse sweep: dk, dv, dg
        qc, kc, vc, doc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce], do[:, cs:ce]
        D, e_pre, e_post, e_tot = _chunk_decays(g[:, cs:ce], scale)
        A = (qc @ mT(kc)) * D
        dA = doc @ mT(vc)
        dk[:, cs:ce] = mT(dA * D) @ qc + e_post[..., None] * (vc @ mT(dS))
        dv[:, cs:ce] = mT(A) @ doc + e_post[..., None] * (kc @ dS)
        y = e_post * ((kc @ dS) * vc).sum(-1)
        y_before = np.zeros_like(y)                                # sum_{i<j} y_i
        y_before[:, 1:] = np.cumsum(y[:, :-1], -1)
        x_after = np.cumsum(x[:, cs:ce][:, ::-1], -1)[:, ::-1]      # sum_{t>=j} x_t
        dg[:, cs:ce] = (_dlog_decay(dA * A) + x_after + y_before
                        + (e_tot * (S * dS).sum((-2, -1)))[:, None])
        dS = e_tot[:, None, None] * dS + scale * (mT(qc * e_pre[..., None]) @ doc)
    return (dq, dk, dv, dg), (None if state is None else DecayedState(dS))
