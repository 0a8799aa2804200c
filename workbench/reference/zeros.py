"""ZeroS (zero-sum linear attention) references: explicit O(T^2) and chunked linear-time.

Forward (docs/spec.md section 3.4), window W(t) = {i <= t} (causal, n_t = t) or all T positions (n_t = T):
    p_ti = exp(s_i) / E_t,  E_t = sum_{j in W(t)} exp(s_j),  P_t = sum_{j in W(t)} s_j
    r_ti = sig1_t first_ti + sigh_t rest_ti (+ tz_t zero_ti),   zero = 1/n,  first = s_i/n - P/n^2,
           rest = p - zero - first;  sig1 = sigmoid(gates0), sigh = sigmoid(gates1), tz = tanh(gates2)
    o_t  = sum_{i in W(t)} r_ti (q_t.k_i) v_i
Collecting terms,  r_ti = alpha_t e^{s_i} + beta_t s_i + gamma_t  with
    alpha = sigh / E,   beta = (sig1 - sigh) / n,   gamma = (tz - sigh - beta P) / n,
so o_t = q_t^T (alpha_t F_t + beta_t G_t + gamma_t H_t) over the three Dk x Dv prefix states
F = sum e^{s_i} k_i v_i^T, G = sum s_i k_i v_i^T, H = sum k_i v_i^T.  For stability e^{s_i} is always taken
relative to the running maximum m_t = max_{j in W(t)} s_j: E_t, alpha_t and F are stored relative to m_t
and rescaled by exp(m_old - m_new) <= 1 when the maximum grows.

Backward (hand-derived).  Let B_ti = q_t.k_i, dR_ti = B_ti (do_t.v_i) (the gradient reaching r_ti).
  q, k, v:  dv_i = sum_t r_ti B_ti do_t,  dq_t = sum_i r_ti (do_t.v_i) k_i,  dk_i = sum_t r_ti (do_t.v_i) q_t.
  Row sums  U_t = sum_i dR_ti p_ti,  V_t = sum_i dR_ti s_i,  Z_t = sum_i dR_ti  (U = q^T F do / E, etc.)
  gates:    dsig1 = V/n - P Z/n^2                (= sum_i dR_ti first_ti)
            dsigh = U - V/n + P Z/n^2 - Z/n      (= sum_i dR_ti rest_ti)
            dtz   = Z/n                          (= sum_i dR_ti zero_ti)
            dgates = (dsig1 sig1 (1-sig1), dsigh sigh (1-sigh), dtz (1 - tz^2))
  s:        s_j enters p_t. (softmax Jacobian p_ti(delta_ij - p_tj)), first_tj (s_j/n) and P_t (-s_j/n^2 in
            every first_ti), so
            ds_j = sum_{t: j in W(t)} [ sigh_t p_tj (dR_tj - U_t) + beta_t dR_tj - beta_t Z_t / n_t ].
  Linear time: with reverse (suffix) states  A = sum_t alpha_t q_t do_t^T (relative to a running max),
  Bs = sum_t beta_t q_t do_t^T, Cs = sum_t gamma_t q_t do_t^T and scalars a2 = sum_t alpha_t U_t,
  c4 = sum_t beta_t Z_t / n_t over the t that see position i:
            dv_i = e^{s_i} A^T k_i + s_i Bs^T k_i + Cs^T k_i,   dk_i = e^{s_i} A v_i + s_i Bs v_i + Cs v_i,
            ds_i = e^{s_i} (k_i^T A v_i - a2) + k_i^T Bs v_i - c4.
  The chunked form does the same with the C x C block of each chunk explicit.

Packed sequences (``cu_seqlens``): the window W(t) is cut to t's sequence (n_t counts within it).

State (causal only).  The initial state of a sequence is what the tokens before it left: the running max m0,
E0 = sum e^{s - m0}, P0 = sum s, the count n0 and F0 = sum e^{s - m0} k v^T, G0, H0 (F0, E0 relative to
m0).  The sums over the window then start from it:
    n_t = n0 + (position in the sequence),   P_t = P0 + sum_{i<=t} s_i,   m_t = max(m0, s_i: i <= t),
    E_t = e^{m0 - m_t} E0 + sum_{i<=t} e^{s_i - m_t},   o_t += q_t^T (alpha_t e^{m0 - m_t} F0 + beta_t G0 + gamma_t H0)
(the previous tokens' weights r_t. in coefficient form, alpha, beta, gamma from these n_t, P_t, E_t).  The final
state of a sequence [a, b) is the same sums over every token of it: m_b = max(m0, s_i), E_b, P_b, n_b = n0 + b - a,
F_b (relative to m_b), G_b, H_b.

Their gradients.  The output rows: the row sums gain the state's part,
    U_t += e^{m0-m_t} q_t^T F0 do_t / E_t,   V_t += q_t^T G0 do_t,   Z_t += q_t^T H0 do_t,
after which dgates and ds are the formulas above (they are derived through alpha, beta, gamma, E_t, P_t,
n_t, which now include the state), dq_t += (alpha_t e^{m0-m_t} F0 + beta_t G0 + gamma_t H0) do_t, and
    dF0 = sum_t alpha_t e^{m0-m_t} q_t do_t^T,   dE0 = -sum_t alpha_t e^{m0-m_t} U_t,
    dG0 = sum_t beta_t q_t do_t^T,   dH0 = sum_t gamma_t q_t do_t^T,   dP0 = -sum_t beta_t Z_t / n_t,
    dn0 = sum_t dn_t,   dn_t = -(beta_t (V_t - Z_t P_t / n_t) + gamma_t Z_t) / n_t
(E_t = ... + e^{m0-m_t} E0 gives dL/dE_t = -alpha_t U_t; P_t enters gamma_t as -beta_t P_t / n_t; n_t enters
beta_t = (..)/n_t and gamma_t).  The final state, with gradient (dm, dE, dP, dn, dF, dG, dH) and
w_i = e^{s_i - m_b}, c = e^{m0 - m_b}:
    ds_i += w_i (dE + k_i^T dF v_i) + dP + k_i^T dG v_i,   dk_i += (w_i dF + s_i dG + dH) v_i,
    dv_i += (w_i dF + s_i dG + dH)^T k_i,   dE0 += c dE,  dF0 += c dF,  dP0 += dP,  dn0 += dn,  dG0 += dG,
    dH0 += dH,
and the max itself: m_b = max(m0, s_i) enters E_b and F_b as e^{-m_b}, so mu = dm - E_b dE - <F_b, dF> goes
to whichever of m0, s_i is the maximum (m0 on a tie, then the first s_i).  Last, the output and the final
state depend on (m0, E0, F0) through e^{m0} E0 and e^{m0} F0 only (besides that maximum), so
    dm0 = E0 dE0 + <F0, dF0>  (+ mu when m0 is the maximum).
The chunked form runs each sequence from the initial state (the prefix states start at it, n at n0), seeds
its reverse sweep with the final state's gradient (A = dF, Bs = dG, Cs = dH, a2 = -dE, c4 = -dP at the
final max) and folds the first chunk too: the suffix states then are dF0, dG0, dH0, -dE0, -dP0.
"""
from __future__ import annotations

import numpy as np

from ..state import ZeroSState, select, stack, state_dtype
from .common import (CHUNK, as_work, causal_mask, chunks, mT, packed_backward, packed_forward, packed_mask, sequence_ids,
                     sequences, sigmoid, state_as)


def _gate_values(gates):
    sig1, sigh = sigmoid(gates[..., 0]), sigmoid(gates[..., 1])
    tz = np.tanh(gates[..., 2]) if gates.shape[-1] == 3 else np.zeros_like(sig1)
    return sig1, sigh, tz


def _gate_grads(gates, U, V, Z, P, n):
    """dgates from the row sums U, V, Z (the explicit reference's derivation, in the module docstring)."""
    sig1, sigh, tz = _gate_values(gates)
    dsig1 = V / n - P * Z / n ** 2
    dsigh = U - dsig1 - Z / n
    cols = [dsig1 * sig1 * (1 - sig1), dsigh * sigh * (1 - sigh)]
    if gates.shape[-1] == 3:
        cols.append(Z / n * (1 - tz ** 2))
    return np.stack(cols, -1)


def _gate_grads_by_coefficients(gates, U, V, Z, P, n):
    """dgates derived (independently of ``_gate_grads``) through the row coefficients: the gates reach the
    output only through alpha, beta, gamma, with dL/dalpha_t = E_t U_t, dL/dbeta_t = V_t, dL/dgamma_t = Z_t,
    and gamma depends on beta (-P/n), so dL/dbeta (total) = V - Z P / n and, with alpha = sigh / E,
        dsig1 = dbeta / n,   dsigh = (E U) / E - dbeta / n - Z / n,   dtz = Z / n;
    sigmoid'(x) = sigmoid(x) sigmoid(-x), tanh'(x) = 1 - tanh(x)^2."""
    dbeta = V - Z * P / n
    dsig = (dbeta / n, U - dbeta / n - Z / n)
    cols = [d * sigmoid(gates[..., i]) * sigmoid(-gates[..., i]) for i, d in enumerate(dsig)]
    if gates.shape[-1] == 3:
        cols.append(Z / n * (1 - np.tanh(gates[..., 2]) ** 2))
    return np.stack(cols, -1)


def _coefficients(gates, E, P, n):
    """alpha = sigh / E, beta = (sig1 - sigh) / n, gamma = (tz - sigh - beta P) / n, row by row."""
    sig1, sigh, tz = _gate_values(gates)
    beta = (sig1 - sigh) / n
    return sigh / E, beta, (tz - sigh - beta * P) / n


def _dcount(gates, V, Z, P, n):
    """dL/dn_t = -(beta_t (V_t - Z_t P_t / n_t) + gamma_t Z_t) / n_t (n_t through beta_t and gamma_t)."""
    _, beta, gamma = _coefficients(gates, 1.0, P, n)
    return -(beta * (V - Z * P / n) + gamma * Z) / n


# ----------------------------------------------------------------------------- explicit O(T^2)
def _window(s, causal, cu, st):
    """Per row t of the packed axis: mask (T, T), the window's max m_t (N, T) (with the state's m0),
    e^{m0 - m_t} (N, T) (None without a state), E_t, P_t, n_t (N, T) (with the state's sums)."""
    N, T = s.shape
    mask = packed_mask(T, causal, cu)
    a = np.where(mask, s[:, None, :], -np.inf)
    m = a.max(-1)
    E_add = P_add = n_add = 0
    c0 = None
    if st is not None:
        ids = sequence_ids(T, cu)
        m = np.maximum(m, st.m[:, ids])
        c0 = np.exp(st.m[:, ids] - m)
        E_add, P_add, n_add = c0 * st.E[:, ids], st.P[:, ids], st.n[:, ids]
    E = np.exp(a - m[..., None]).sum(-1) + E_add
    P = np.where(mask, s[:, None, :], 0).sum(-1) + P_add
    n = np.broadcast_to(mask.sum(-1).astype(s.dtype) + n_add, (N, T))
    return mask, m, c0, E, P, n


def _explicit_weights(s, gates, causal, cu=None, st=None):
    """r (N,T,T), p (N,T,T), P (N,T), n (N,T) of the explicit form (zero outside the window)."""
    mask, m, _, E, P, n = _window(s, causal, cu, st)
    p = np.exp(np.where(mask, s[:, None, :], -np.inf) - m[..., None]) / E[..., None]
    first = np.where(mask, s[:, None, :] / n[..., None] - (P / n ** 2)[..., None], 0)
    zero = mask / n[..., None]
    sig1, sigh, tz = _gate_values(gates)
    r = sig1[..., None] * first + sigh[..., None] * (p - zero - first) + tz[..., None] * zero
    return r, p, P, n


def explicit_forward(q, k, v, s, gates, causal=True, initial_state=None, return_state=False, cu_seqlens=None):
    dt = q.dtype
    q, k, v, s, gates = as_work(q, k, v, s, gates, dtype=np.float64)
    st = state_as(initial_state, np.float64)
    r, _, _, _ = _explicit_weights(s, gates, causal, cu_seqlens, st)
    o = (r * (q @ mT(k))) @ v
    if st is not None:
        _, _, c0, E, P, n = _window(s, causal, cu_seqlens, st)
        alpha, beta, gamma = _coefficients(gates, E, P, n)
        for j, a, b in sequences(q.shape[1], cu_seqlens):
            s0 = select(st, j)
            o[:, a:b] += _state_rows(q[:, a:b], (alpha * c0)[:, a:b], beta[:, a:b], gamma[:, a:b], s0.F, s0.G, s0.H)
    out = o.astype(dt)
    if return_state:
        finals = [_sequence_final(k[:, a:b], v[:, a:b], s[:, a:b], b - a, None if st is None else select(st, j))
                  for j, a, b in sequences(q.shape[1], cu_seqlens)]
        out = (out, state_as(stack(finals), state_dtype(dt)))
    return out, (q, k, v, s, gates, causal, cu_seqlens, st, dt)


def _state_rows(x, a, b, c, F, G, H):
    """Rows x_t^T (a_t F + b_t G + c_t H) for x (N, L, Dk) and per-row a, b, c (N, L)."""
    return a[..., None] * (x @ F) + b[..., None] * (x @ G) + c[..., None] * (x @ H)


def _sequence_final(k, v, s, length, s0):
    """The state after one sequence (k, v, s: its tokens; s0: its initial state or None), each sum written
    out relative to the final max m_b = max(m0, s_i)."""
    N = len(s)
    m0 = np.full(N, -np.inf) if s0 is None else s0.m
    mb = np.maximum(s.max(-1), m0)
    w, c = np.exp(s - mb[:, None]), np.exp(m0 - mb)
    fin = ZeroSState(mb, w.sum(-1), s.sum(-1), np.full(N, float(length)), mT(k * w[..., None]) @ v,
                     mT(k * s[..., None]) @ v, mT(k) @ v)
    if s0 is None:
        return fin
    return ZeroSState(mb, fin.E + c * s0.E, fin.P + s0.P, fin.n + s0.n, fin.F + c[:, None, None] * s0.F,
                      fin.G + s0.G, fin.H + s0.H)


def explicit_backward(ctx, do, dstate=None):
    q, k, v, s, gates, causal, cu, st, dt = ctx
    do = do.astype(np.float64)
    dfin = state_as(dstate, np.float64)
    r, p, P, n = _explicit_weights(s, gates, causal, cu, st)
    mask = packed_mask(q.shape[-2], causal, cu)
    B = q @ mT(k)
    dA = np.where(mask, do @ mT(v), 0)
    dR, dB = dA * B, dA * r
    dv = mT(r * B) @ do
    dq, dk = dB @ k, mT(dB) @ q
    U, V, Z = (dR * p).sum(-1), (dR @ s[..., None])[..., 0], dR.sum(-1)
    _, _, c0, E, _, _ = _window(s, causal, cu, st)
    alpha, beta, gamma = _coefficients(gates, E, P, n)
    seqs = sequences(q.shape[1], cu)
    for j, a, b in seqs if st is not None else ():                  # the state's part of every output row
        s0, qs, dos = select(st, j), q[:, a:b], do[:, a:b]
        U[:, a:b] += c0[:, a:b] * ((qs @ s0.F) * dos).sum(-1) / E[:, a:b]
        V[:, a:b] += ((qs @ s0.G) * dos).sum(-1)
        Z[:, a:b] += ((qs @ s0.H) * dos).sum(-1)
        dq[:, a:b] += _state_rows(dos, (alpha * c0)[:, a:b], beta[:, a:b], gamma[:, a:b], mT(s0.F), mT(s0.G),
                                  mT(s0.H))
    sig1, sigh, _ = _gate_values(gates)
    ds = ((sigh[..., None] * p * (dR - U[..., None]) + beta[..., None] * dR).sum(-2)
          - (mask * (beta * Z / n)[..., None]).sum(-2))
    dgates = _gate_grads(gates, U, V, Z, P, n)
    dn = _dcount(gates, V, Z, P, n)
    d0 = []
    for j, a, b in seqs:
        s0 = None if st is None else select(st, j)
        d = None
        if st is not None:                                            # the output rows' part
            sl, qs, dos = slice(a, b), q[:, a:b], do[:, a:b]
            d = dict(m=0.0, E=-(alpha * c0 * U)[:, sl].sum(-1), P=-(beta * Z / n)[:, sl].sum(-1),
                     n=dn[:, sl].sum(-1), **{name: mT(qs * c[:, sl, None]) @ dos
                                             for name, c in (("F", alpha * c0), ("G", beta), ("H", gamma))})
        if dfin is not None:
            _final_state_backward(k[:, a:b], v[:, a:b], s[:, a:b], s0, select(dfin, j), ds[:, a:b], dk[:, a:b],
                                  dv[:, a:b], d)
        if st is not None:
            d["m"] = d["m"] + s0.E * d["E"] + (s0.F * d["F"]).sum((-2, -1))
            d0.append(ZeroSState(**d))
    grads = tuple(x.astype(dt) for x in (dq, dk, dv, ds, dgates))
    if st is None:
        return grads
    return grads + (state_as(stack(d0), state_dtype(dt)),)


def _final_state_backward(k, v, s, s0, f, ds, dk, dv, d0):
    """One sequence's final-state gradient ``f`` added (in place) to its ds, dk, dv and, when it started
    from a state, to that state's gradient ``d0`` (a dict of fields); the derivation is in the module doc."""
    fin = _sequence_final(k, v, s, s.shape[1], s0)
    m0 = np.full(len(s), -np.inf) if s0 is None else s0.m
    w, c = np.exp(s - fin.m[:, None]), np.exp(m0 - fin.m)
    coef = w[..., None, None] * f.F[:, None] + s[..., None, None] * f.G[:, None] + f.H[:, None]   # (N, L, Dk, Dv)
    dk += np.einsum("nlkv,nlv->nlk", coef, v)
    dv += np.einsum("nlkv,nlk->nlv", coef, k)
    ds += w * (f.E[:, None] + np.einsum("nlk,nkv,nlv->nl", k, f.F, v)) + f.P[:, None] + np.einsum(
        "nlk,nkv,nlv->nl", k, f.G, v)
    mu = f.m - fin.E * f.E - (fin.F * f.F).sum((-2, -1))             # through the max m_b
    state_max = m0 >= s.max(-1)                                       # m0 wins a tie, then the first s_i
    ds[np.arange(len(s)), s.argmax(-1)] += np.where(state_max, 0, mu)
    if d0 is not None:
        for name, factor in (("E", c), ("F", c[:, None, None]), ("P", 1), ("n", 1), ("G", 1), ("H", 1)):
            d0[name] = d0[name] + factor * getattr(f, name)
        d0["m"] = d0["m"] + np.where(state_max, mu, 0)


# ----------------------------------------------------------------------------- chunked linear time
def _noncausal_coeffs(s, gates):
    T = s.shape[-1]
    m = s.max(-1, keepdims=True)
    w = np.exp(s - m)                       # e^{s_i - m}
    E, P = w.sum(-1, keepdims=True), s.sum(-1, keepdims=True)
    sig1, sigh, tz = _gate_values(gates)
    alpha = sigh / E
    beta = (sig1 - sigh) / T
    gamma = (tz - sigh - beta * P) / T
    return w, alpha, beta, gamma, np.broadcast_to(P, s.shape), np.full(T, T, dtype=s.dtype)


def _empty(N, Dk, Dv, dtype):
    z = np.zeros((N, Dk, Dv), dtype)
    return ZeroSState(np.full(N, -np.inf, dtype), np.zeros(N, dtype), np.zeros(N, dtype), np.zeros(N, dtype), z, z, z)


def _chunk_rows(carry, sc, gates_c):
    """The rows of one chunk after the prefix ``carry`` (a ZeroSState, F and E relative to carry.m): mask,
    running max m, W_ti = e^{s_i - m_t} (masked), carry = e^{m_prev - m_t}, E, P, n, alpha, beta, gamma, r."""
    L = sc.shape[-1]
    mask = causal_mask(L, True)
    mt = np.maximum(carry.m[:, None], np.maximum.accumulate(sc, -1))        # running max per row
    W = np.exp(np.where(mask, sc[:, None, :] - mt[:, :, None], -np.inf))
    rescale = np.exp(carry.m[:, None] - mt)                                  # rescales earlier e^{s}
    Et = rescale * carry.E[:, None] + W.sum(-1)
    Pt = carry.P[:, None] + np.cumsum(sc, -1)
    n = carry.n[:, None] + np.arange(1, L + 1, dtype=sc.dtype)
    alpha, beta, gamma = _coefficients(gates_c, Et, Pt, n)
    r = alpha[..., None] * W + np.where(mask, beta[..., None] * sc[:, None, :] + gamma[..., None], 0)
    return dict(mask=mask, m=mt, W=W, carry=rescale, E=Et, P=Pt, n=n, alpha=alpha, beta=beta, gamma=gamma, r=r)


def _fold(carry, c, kc, vc, sc):
    """The prefix state after the chunk whose rows are ``c``."""
    m_new = c["m"][:, -1]
    F = np.exp(carry.m - m_new)[:, None, None] * carry.F + mT(kc * np.exp(sc - m_new[:, None])[..., None]) @ vc
    return ZeroSState(m_new, c["E"][:, -1], c["P"][:, -1], c["n"][:, -1], F, carry.G + mT(kc * sc[..., None]) @ vc,
                      carry.H + mT(kc) @ vc)


def chunked_forward(q, k, v, s, gates, causal=True, chunk=CHUNK, initial_state=None, return_state=False,
                    cu_seqlens=None):
    dt = q.dtype
    q, k, v, s, gates = as_work(q, k, v, s, gates)
    st = state_as(initial_state, q.dtype)
    return packed_forward(_chunked_forward_one, (q, k, v, s, gates), dt, cu_seqlens, st, return_state,
                          causal=causal, C=chunk)


def _chunked_forward_one(q, k, v, s, gates, state, causal, C):
    """One sequence: (o, final ZeroSState (causal; else None), ctx)."""
    ctx = (q, k, v, s, gates, causal, C, state)
    if not causal:
        w, alpha, beta, gamma, _, _ = _noncausal_coeffs(s, gates)
        F, G, H = mT(k * w[..., None]) @ v, mT(k * s[..., None]) @ v, mT(k) @ v
        return _state_rows(q, alpha, beta, gamma, F, G, H), None, ctx
    N, T, Dk = q.shape
    o = np.empty(q.shape[:-1] + v.shape[-1:], q.dtype)
    carry = _empty(N, Dk, v.shape[-1], q.dtype) if state is None else state
    for cs, ce in chunks(T, C):
        qc, kc, vc, sc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce], s[:, cs:ce]
        c = _chunk_rows(carry, sc, gates[:, cs:ce])
        o[:, cs:ce] = (c["r"] * (qc @ mT(kc))) @ vc + _state_rows(qc, c["alpha"] * c["carry"], c["beta"], c["gamma"],
                                                                  carry.F, carry.G, carry.H)
        carry = _fold(carry, c, kc, vc, sc)
    return o, carry, ctx


def chunked_backward(ctx, do, dstate=None):
    return packed_backward(_chunked_backward_one, ctx, do, dstate)


def _chunked_backward_one(ctx, do, dfinal):
    q, k, v, s, gates, causal, C, state = ctx
    if not causal:
        return _noncausal_backward(q, k, v, s, gates, do), None
    return _causal_backward(q, k, v, s, gates, do, C, state, dfinal)


def _noncausal_backward(q, k, v, s, gates, do):
    w, alpha, beta, gamma, P, n = _noncausal_coeffs(s, gates)
    F, G, H = mT(k * w[..., None]) @ v, mT(k * s[..., None]) @ v, mT(k) @ v
    dq = _state_rows(do, alpha, beta, gamma, mT(F), mT(G), mT(H))
    U = ((q @ F) * do).sum(-1) * alpha / _gate_values(gates)[1]          # q^T F do / E
    V, Z = ((q @ G) * do).sum(-1), ((q @ H) * do).sum(-1)
    A, Bs, Cs = (mT(q * c[..., None]) @ do for c in (alpha, beta, gamma))
    kA = k @ A
    dv = w[..., None] * kA + s[..., None] * (k @ Bs) + k @ Cs
    dk = w[..., None] * (v @ mT(A)) + s[..., None] * (v @ mT(Bs)) + v @ mT(Cs)
    a2 = (alpha * U).sum(-1, keepdims=True)
    c4 = (beta * Z / n).sum(-1, keepdims=True)
    ds = w * ((kA * v).sum(-1) - a2) + ((k @ Bs) * v).sum(-1) - c4
    return dq, dk, dv, ds, _gate_grads_by_coefficients(gates, U, V, Z, P, n)


def _causal_backward(q, k, v, s, gates, do, C, state, dfinal):
    N, T, Dk = q.shape
    Dv = v.shape[-1]
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    ds = np.empty_like(s)
    U, V, Z, P, n = (np.empty_like(s) for _ in range(5))
    carry = start = _empty(N, Dk, Dv, q.dtype) if state is None else state
    saved = []
    for cs, ce in chunks(T, C):                                       # forward sweep: dq, U, V, Z
        qc, kc, vc, doc, sc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce], do[:, cs:ce], s[:, cs:ce]
        c = _chunk_rows(carry, sc, gates[:, cs:ce])
        Bd = np.where(c["mask"], doc @ mT(vc), 0)
        M = np.where(c["mask"], qc @ mT(kc), 0) * Bd
        qF = (qc @ carry.F * doc).sum(-1)
        U[:, cs:ce] = ((M * c["W"]).sum(-1) + c["carry"] * qF) / c["E"]
        V[:, cs:ce] = (M @ sc[..., None])[..., 0] + (qc @ carry.G * doc).sum(-1)
        Z[:, cs:ce] = M.sum(-1) + (qc @ carry.H * doc).sum(-1)
        P[:, cs:ce], n[:, cs:ce] = c["P"], c["n"]
        dq[:, cs:ce] = (c["r"] * Bd) @ kc + _state_rows(doc, c["alpha"] * c["carry"], c["beta"], c["gamma"],
                                                        mT(carry.F), mT(carry.G), mT(carry.H))
        saved.append(dict(c, cs=cs, ce=ce))
        carry = _fold(carry, c, kc, vc, sc)
    final = carry
    m_before_all = np.concatenate([start.m[:, None], np.maximum(start.m[:, None], np.maximum.accumulate(s, -1))], -1)
    # suffix states, relative to the max at the chunk's end; seeded with the final state's gradient
    if dfinal is None:
        A, Bs, Cs = (np.zeros((N, Dk, Dv), q.dtype) for _ in range(3))
        a2, c4 = np.zeros(N, q.dtype), np.zeros(N, q.dtype)
    else:
        A, Bs, Cs, a2, c4 = dfinal.F, dfinal.G, dfinal.H, -dfinal.E, -dfinal.P
    for c in reversed(saved):                                         # reverse sweep: dk, dv, ds
        cs, ce, mask, mt = c["cs"], c["ce"], c["mask"], c["m"]
        qc, kc, vc, doc, sc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce], do[:, cs:ce], s[:, cs:ce]
        alpha, beta, gamma, r = c["alpha"], c["beta"], c["gamma"], c["r"]
        Bq = np.where(mask, qc @ mT(kc), 0)
        Bd = np.where(mask, doc @ mT(vc), 0)
        M = Bq * Bd
        e = np.exp(sc - mt[:, -1:])                                   # e^{s_i - m_ref}
        kA = kc @ A
        dv[:, cs:ce] = mT(r * Bq) @ doc + e[..., None] * kA + sc[..., None] * (kc @ Bs) + kc @ Cs
        dk[:, cs:ce] = (mT(r * Bd) @ qc + e[..., None] * (vc @ mT(A)) + sc[..., None] * (vc @ mT(Bs))
                        + vc @ mT(Cs))
        Uc, Zc, nc = U[:, cs:ce], Z[:, cs:ce], n[:, cs:ce]
        bZn = beta * Zc / nc
        intra = ((alpha[..., None] * c["W"] * (M - Uc[..., None])).sum(-2) + (beta[..., None] * M).sum(-2)
                 - np.cumsum(bZn[:, ::-1], -1)[:, ::-1])
        ds[:, cs:ce] = intra + e * ((kA * vc).sum(-1) - a2[:, None]) + ((kc @ Bs) * vc).sum(-1) - c4[:, None]
        if cs > 0 or state is not None:                               # fold the chunk into the suffix states
            m_before = m_before_all[:, cs]                            # the new reference max
            rescale = np.exp(m_before - mt[:, -1])
            wa = alpha * np.exp(m_before[:, None] - mt)
            A = rescale[:, None, None] * A + mT(qc * wa[..., None]) @ doc
            a2 = rescale * a2 + (wa * Uc).sum(-1)
            Bs = Bs + mT(qc * beta[..., None]) @ doc
            Cs = Cs + mT(qc * gamma[..., None]) @ doc
            c4 = c4 + bZn.sum(-1)
    grads = (dq, dk, dv, ds, _gate_grads_by_coefficients(gates, U, V, Z, P, n))
    mu = None
    if dfinal is not None:                                            # the final max's gradient, to its argmax
        mu = dfinal.m - final.E * dfinal.E - (final.F * dfinal.F).sum((-2, -1))
        state_max = start.m >= s.max(-1)
        ds[np.arange(N), s.argmax(-1)] += np.where(state_max, 0, mu)
    if state is None:
        return grads, None
    dE0, dF0 = -a2, A
    dm0 = state.E * dE0 + (state.F * dF0).sum((-2, -1))
    if mu is not None:
        dm0 = dm0 + np.where(state_max, mu, 0)
    dn0 = _dcount(gates, V, Z, P, n).sum(-1) + (0 if dfinal is None else dfinal.n)
    return grads, ZeroSState(dm0, dE0, -c4, dn0, dF0, Bs, Cs)
