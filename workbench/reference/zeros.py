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
"""
from __future__ import annotations

import numpy as np

from .common import CHUNK, as_work, causal_mask, chunks, mT, sigmoid


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


def _positions(T, causal, dtype, cs=0, ce=None):
    ce = T if ce is None else ce
    return np.arange(cs + 1, ce + 1, dtype=dtype) if causal else np.full(ce - cs, T, dtype=dtype)


# ----------------------------------------------------------------------------- explicit O(T^2)
def _explicit_weights(s, gates, causal):
    """r (N,T,T), p (N,T,T), P (N,T), n (T,) of the explicit form (zero outside the window)."""
    N, T = s.shape
    mask = causal_mask(T, causal)
    n = _positions(T, causal, s.dtype)
    a = np.where(mask, s[:, None, :], -np.inf)
    e = np.exp(a - a.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    P = np.cumsum(s, -1) if causal else np.repeat(s.sum(-1, keepdims=True), T, -1)
    first = np.where(mask, s[:, None, :] / n[:, None] - (P / n ** 2)[..., None], 0)
    zero = mask / n[:, None]
    sig1, sigh, tz = _gate_values(gates)
    r = sig1[..., None] * first + sigh[..., None] * (p - zero - first) + tz[..., None] * zero
    return r, p, P, n


def explicit_forward(q, k, v, s, gates, causal=True):
    dt = q.dtype
    q, k, v, s, gates = as_work(q, k, v, s, gates, dtype=np.float64)
    r, _, _, _ = _explicit_weights(s, gates, causal)
    o = (r * (q @ mT(k))) @ v
    return o.astype(dt), (q, k, v, s, gates, causal, dt)


def explicit_backward(ctx, do):
    q, k, v, s, gates, causal, dt = ctx
    do = do.astype(np.float64)
    r, p, P, n = _explicit_weights(s, gates, causal)
    mask = causal_mask(q.shape[-2], causal)
    B = q @ mT(k)
    dA = np.where(mask, do @ mT(v), 0)
    dR, dB = dA * B, dA * r
    dv = mT(r * B) @ do
    dq, dk = dB @ k, mT(dB) @ q
    U, V, Z = (dR * p).sum(-1), dR @ s[..., None], dR.sum(-1)
    V = V[..., 0]
    sig1, sigh, _ = _gate_values(gates)
    beta = (sig1 - sigh) / n
    ds = ((sigh[..., None] * p * (dR - U[..., None]) + beta[..., None] * dR).sum(-2)
          - (mask * (beta * Z / n)[..., None]).sum(-2))
    dgates = _gate_grads(gates, U, V, Z, P, n)
    return tuple(x.astype(dt) for x in (dq, dk, dv, ds, dgates))


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


def _causal_chunks(k, v, s, gates, C):
    """Walk the chunks causally.  Yields one dict per chunk with the chunk's row coefficients and the prefix
    states over all earlier chunks (F relative to the running max before the chunk), then folds the chunk
    into the states when resumed."""
    N, T, Dk = k.shape
    Dv = v.shape[-1]
    dtype = k.dtype
    F = np.zeros((N, Dk, Dv), dtype)
    G = np.zeros_like(F)
    H = np.zeros_like(F)
    E = np.zeros(N, dtype)
    P = np.zeros(N, dtype)
    m = np.full(N, -np.inf, dtype)
    sig1, sigh, tz = _gate_values(gates)
    for cs, ce in chunks(T, C):
        sc, kc, vc = s[:, cs:ce], k[:, cs:ce], v[:, cs:ce]
        mask = causal_mask(ce - cs, True)
        mt = np.maximum(m[:, None], np.maximum.accumulate(sc, -1))        # running max per row
        W = np.exp(np.where(mask, sc[:, None, :] - mt[:, :, None], -np.inf))
        carry = np.exp(m[:, None] - mt)                                    # rescales earlier e^{s}
        Et = carry * E[:, None] + W.sum(-1)
        Pt = P[:, None] + np.cumsum(sc, -1)
        n = _positions(T, True, dtype, cs, ce)
        alpha = sigh[:, cs:ce] / Et
        beta = (sig1[:, cs:ce] - sigh[:, cs:ce]) / n
        gamma = (tz[:, cs:ce] - sigh[:, cs:ce] - beta * Pt) / n
        r = alpha[..., None] * W + np.where(mask, beta[..., None] * sc[:, None, :] + gamma[..., None], 0)
        yield dict(cs=cs, ce=ce, mask=mask, m=mt, W=W, carry=carry, E=Et, P=Pt, n=n, alpha=alpha, beta=beta,
                   gamma=gamma, r=r, F=F, G=G, H=H)
        m_new = mt[:, -1]
        F = np.exp(m - m_new)[:, None, None] * F + mT(kc * np.exp(sc - m_new[:, None])[..., None]) @ vc
        G = G + mT(kc * sc[..., None]) @ vc
        H = H + mT(kc) @ vc
        E, P, m = Et[:, -1], Pt[:, -1], m_new


def chunked_forward(q, k, v, s, gates, causal=True, chunk=CHUNK):
    dt = q.dtype
    q, k, v, s, gates = as_work(q, k, v, s, gates)
    if not causal:
        w, alpha, beta, gamma, _, _ = _noncausal_coeffs(s, gates)
        F, G, H = mT(k * w[..., None]) @ v, mT(k * s[..., None]) @ v, mT(k) @ v
        o = alpha[..., None] * (q @ F) + beta[..., None] * (q @ G) + gamma[..., None] * (q @ H)
    else:
        o = np.empty(q.shape[:-1] + v.shape[-1:], q.dtype)
        for c in _causal_chunks(k, v, s, gates, chunk):
            cs, ce = c["cs"], c["ce"]
            qc = q[:, cs:ce]
            o[:, cs:ce] = ((c["r"] * (qc @ mT(k[:, cs:ce]))) @ v[:, cs:ce]
                           + (c["alpha"] * c["carry"])[..., None] * (qc @ c["F"])
                           + c["beta"][..., None] * (qc @ c["G"]) + c["gamma"][..., None] * (qc @ c["H"]))
    return o.astype(dt), (q, k, v, s, gates, causal, chunk, dt)


def chunked_backward(ctx, do):
    q, k, v, s, gates, causal, C, dt = ctx
    do = do.astype(q.dtype)
    grads = _noncausal_backward(q, k, v, s, gates, do) if not causal else _causal_backward(q, k, v, s, gates,
                                                                                           do, C)
    return tuple(x.astype(dt) for x in grads)


def _noncausal_backward(q, k, v, s, gates, do):
    w, alpha, beta, gamma, P, n = _noncausal_coeffs(s, gates)
    F, G, H = mT(k * w[..., None]) @ v, mT(k * s[..., None]) @ v, mT(k) @ v
    dq = alpha[..., None] * (do @ mT(F)) + beta[..., None] * (do @ mT(G)) + gamma[..., None] * (do @ mT(H))
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


def _causal_backward(q, k, v, s, gates, do, C):
    N, T, _ = q.shape
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    ds = np.empty_like(s)
    U, V, Z, P = (np.empty_like(s) for _ in range(4))
    m_run = np.maximum.accumulate(s, -1)
    n = np.broadcast_to(np.arange(1, T + 1, dtype=q.dtype), s.shape)
    saved = []
    for c in _causal_chunks(k, v, s, gates, C):                      # forward sweep: dq, U, V, Z
        cs, ce = c["cs"], c["ce"]
        qc, kc, vc, doc, sc = q[:, cs:ce], k[:, cs:ce], v[:, cs:ce], do[:, cs:ce], s[:, cs:ce]
        Bd = np.where(c["mask"], doc @ mT(vc), 0)
        M = np.where(c["mask"], qc @ mT(kc), 0) * Bd
        qF = (qc @ c["F"] * doc).sum(-1)
        U[:, cs:ce] = ((M * c["W"]).sum(-1) + c["carry"] * qF) / c["E"]
        V[:, cs:ce] = (M @ sc[..., None])[..., 0] + (qc @ c["G"] * doc).sum(-1)
        Z[:, cs:ce] = M.sum(-1) + (qc @ c["H"] * doc).sum(-1)
        P[:, cs:ce] = c["P"]
        dq[:, cs:ce] = ((c["r"] * Bd) @ kc + (c["alpha"] * c["carry"])[..., None] * (doc @ mT(c["F"]))
                        + c["beta"][..., None] * (doc @ mT(c["G"])) + c["gamma"][..., None] * (doc @ mT(c["H"])))
        saved.append({key: c[key] for key in ("cs", "ce", "mask", "m", "W", "alpha", "beta", "gamma", "r")})
    Dk, Dv = q.shape[-1], v.shape[-1]
    A = np.zeros((N, Dk, Dv), q.dtype)             # suffix states, relative to the max at the chunk's end
    Bs, Cs = np.zeros_like(A), np.zeros_like(A)
    a2, c4 = np.zeros(N, q.dtype), np.zeros(N, q.dtype)
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
        if cs > 0:                                                    # fold the chunk into the suffix states
            m_before = m_run[:, cs - 1]                               # the new reference max
            rescale = np.exp(m_before - mt[:, -1])
            wa = alpha * np.exp(m_before[:, None] - mt)
            A = rescale[:, None, None] * A + mT(qc * wa[..., None]) @ doc
            a2 = rescale * a2 + (wa * Uc).sum(-1)
            Bs = Bs + mT(qc * beta[..., None]) @ doc
            Cs = Cs + mT(qc * gamma[..., None]) @ doc
            c4 = c4 + bZn.sum(-1)
    return dq, dk, dv, ds, _gate_grads_by_coefficients(gates, U, V, Z, P, n)
