"""Dilution by the uniform zero-order term (ZeroS's second limitation, docs/spec.md section 6) as the context grows.

Softmax's weights over a window of n = T radial logits split as ``p = zero + first + rest`` (docs/spec.md section 3.4):
``zero_i = 1/T`` (uniform, content-free), ``first_i = (s_i - mean s) / T`` and the higher orders
``rest = p - zero - first``.  One relevant token j has logit ``s* = S_STAR``; the T - 1 others have logits
``N(0, SIGMA_BG^2)``; the query is the last (causal) row.

(a) Weight on the relevant token: softmax's p_j and its three parts, and ZeroS's reweighted residual
    ``r_j = sig1 first_j + sigh rest_j`` for a few gate settings -- every one of them is O(1/T).
(b) What the output does with it.  Relevant value ``v_j = e_1``, every other value ``v_i = e_2`` (a shared
    background component).  Softmax gives ``o = p_j e_1 + (1 - p_j) e_2``: the background collects the whole
    uniform mass, so signal/background ``p_j / (1 - p_j)`` falls like 1/T -- the relevant token is diluted.
    ZeroS (two gates) gives ``o = r_j (e_1 - e_2)`` because its weights sum to zero: signal/background is
    exactly 1 at every T (the shared background cancels; a following norm restores the scale).  Putting the
    zero-order term back (third gate, ``tanh(g3) / T`` per token) brings the dilution back.
Lines: direct float64 weights (``experiments._common.zeros_row_coefficients``); markers: outputs of the
workbench's own ``softmax_attention`` (T <= SOFTMAX_OP_MAX_T; its tiled form is O(T^2)) and
``zeros_attention`` (linear-time) on the same inputs.
"""
from __future__ import annotations

import os

import numpy as np

import workbench as wb
from ._common import DEFAULT_OUT, progress, pyplot, save_fig, table, write_json, zeros_row_coefficients
from workbench.reference.common import sigmoid

NAME = "zeros-dilution"
FILE = "zeros_dilution"
S_STAR = 3.0
SIGMA_BG = 1.0
SOFTMAX_OP_MAX_T = 4096
GATES = {   # label -> gate logits (sig1, sigh[, tanh zero-gate])
    "ZeroS sig1=sigh=0.5": (0.0, 0.0),
    "ZeroS sig1=sigh=0.95": (2.944, 2.944),
    "ZeroS sig1=0.95, sigh=0.5": (2.944, 0.0),
    "ZeroS + zero gate tanh(1)=0.76": (0.0, 0.0, 1.0),
}


def logits(T, seed):
    """Radial logits of one row: s_0 = S_STAR (the relevant token), the rest N(0, SIGMA_BG^2)."""
    s = SIGMA_BG * np.random.default_rng(seed).standard_normal(T)
    s[0] = S_STAR
    return s


def row_quantities(s):
    """Direct float64 weights of the last row for one window of logits ``s`` (T,)."""
    s2 = s[None, :]
    _, parts = zeros_row_coefficients(s2, np.zeros((1, 2)), parts=True)
    out = {k: float(v[0, 0]) for k, v in parts.items()}
    p = parts["p"][0]
    out["softmax_sbr"] = p[0] / p[1:].sum()
    out["softmax_share"] = p[0]                                    # |w_j| / sum |w_i| (p sums to 1)
    for lab, g in GATES.items():
        r = zeros_row_coefficients(s2, np.asarray(g, float)[None, :])[0]
        out[f"{lab}: r_j"] = float(r[0])
        out[f"{lab}: sbr"] = float(abs(r[0]) / abs(r[1:].sum()))
        out[f"{lab}: share"] = float(abs(r[0]) / np.abs(r).sum())
    return out


def op_sbr(s, backend="numpy"):
    """Signal/background of the outputs of the workbench's ops: o_T . e_1 / o_T . e_2 with v_0 = e_1, v_i = e_2."""
    T = s.size
    v = np.zeros((1, T, 2))
    v[0, 0, 0] = 1.0
    v[0, 1:, 1] = 1.0
    one = np.ones((1, T, 1))
    res = {}
    if T <= SOFTMAX_OP_MAX_T:      # logits q.k_i = s_i: Dk = 1, q = 1, k_i = s_i, scale 1
        o = wb.softmax_attention(one, s[None, :, None].copy(), v, causal=True, scale=1.0, backend=backend)[0, -1]
        res["softmax_sbr"] = abs(o[0] / o[1])
    for lab, g in GATES.items():   # unit q = k = 1 (Dk = 1): weights are r_Ti
        gates = np.broadcast_to(np.asarray(g, float), (1, T, len(g))).copy()
        o = wb.zeros_attention(one, one, v, s[None].copy(), gates, causal=True, backend=backend)[0, -1]
        res[f"{lab}: sbr"] = abs(o[0] / o[1])
    return res


def settings(quick):
    return dict(Ts=[2 ** e for e in range(4, 11)], seeds=2) if quick else dict(Ts=[2 ** e for e in range(4, 17)],
                                                                              seeds=5)


def run(out=DEFAULT_OUT, quick=False, backend="numpy", seed=0, progress_bar=True, plots=True):
    cfg = settings(quick)
    per_T = []
    jobs = [(T, k) for T in cfg["Ts"] for k in range(cfg["seeds"])]
    acc = {}
    for T, k in progress(jobs, "zeros-dilution", progress_bar):
        s = logits(T, 1000 * seed + k)
        d = acc.setdefault(T, dict(direct=[], ops=[]))
        d["direct"].append(row_quantities(s))
        d["ops"].append(op_sbr(s, backend))
    for T in cfg["Ts"]:
        d = acc[T]
        row = dict(T=T)
        for key in d["direct"][0]:
            row[key] = float(np.mean([x[key] for x in d["direct"]]))
        for key in d["ops"][0]:
            row["op " + key] = float(np.mean([x[key] for x in d["ops"]]))
        per_T.append(row)
    Ts = np.array(cfg["Ts"], float)
    sb = np.array([r["softmax_sbr"] for r in per_T])
    slope = float(np.polyfit(np.log(Ts[Ts >= 256]), np.log(sb[Ts >= 256]), 1)[0])
    res = dict(experiment=NAME, quick=quick, backend=backend, seed=seed, settings=cfg, s_star=S_STAR,
               sigma_background=SIGMA_BG, gates={k: dict(logits=g, sig1=float(sigmoid(g[0])),
                                                          sigh=float(sigmoid(g[1])),
                                                          zero_gate=float(np.tanh(g[2])) if len(g) > 2 else 0.0)
                                                 for k, g in GATES.items()},
               setup="one relevant token (logit s*), T-1 background tokens (logits N(0, sigma^2)), last causal "
                     "row; values v_relevant = e_1, v_background = e_2; sbr = |o.e_1| / |o.e_2|; share = "
                     "|w_j| / sum_i |w_i|; means over seeds",
               finding="Every per-token weight is O(1/T) (p_j, zero_j = 1/T, first_j, rest_j and ZeroS's r_j). "
                       "What differs is the background: softmax's weights sum to 1, so the T-1 background "
                       "tokens collect 1 - p_j -> 1 (mostly the uniform zero-order mass (T-1)/T) and the "
                       "output's signal/background p_j/(1-p_j) falls like 1/T (fitted slope "
                       f"{slope:.3f} in log-log for T >= 256). ZeroS's two-gate weights sum to zero, so the "
                       "background's net weight is exactly -r_j: signal/background = 1 at every T. The third "
                       "(zero-order) gate puts the 1/T term back and the dilution returns. The share |w_j| / "
                       "sum|w| still falls with T for every rule when the background logits are spread "
                       "(sigma > 0): ZeroS removes the uniform bias, not the 1/T size of each weight.",
               softmax_sbr_loglog_slope=slope, per_T=per_T)
    os.makedirs(out, exist_ok=True)
    files = [os.path.join(out, f"{FILE}.json")]
    if plots:
        files.append(_plot(res, os.path.join(out, f"{FILE}.png")))
    res["files"] = files
    write_json(files[0], res)
    return res


def _plot(res, path):
    plt = pyplot()
    rows = res["per_T"]
    T = np.array([r["T"] for r in rows], float)
    col = lambda k: np.array([r.get(k, np.nan) for r in rows], float)      # noqa: E731
    fig, ax = plt.subplots(1, 2, figsize=(15, 5.6))
    a = ax[0]
    a.loglog(T, col("p"), "k-", lw=2.5, label="softmax p_j = zero + first + rest")
    a.loglog(T, col("zero"), "k--", lw=1.5, label="zero-order 1/T (uniform)")
    a.loglog(T, col("first"), "k-.", lw=1.5, label="first order (s_j - mean s)/T")
    a.loglog(T, col("rest"), "k:", lw=1.5, label="higher orders (rest)")
    for i, lab in enumerate(GATES):
        a.loglog(T, np.abs(col(f"{lab}: r_j")), f"C{i}", lw=2, label=f"{lab}: r_j")
    a.set(title=f"(a) Weight on the one relevant token (s* = {S_STAR:g}, background N(0, {SIGMA_BG:g}))",
          xlabel="context length T", ylabel="weight on the relevant token (log)")
    a.legend(fontsize=8)
    a = ax[1]
    a.loglog(T, col("softmax_sbr"), "k-", lw=2.5, label="softmax: p_j / (1 - p_j)")
    m = ~np.isnan(col("op softmax_sbr"))
    a.loglog(T[m], col("op softmax_sbr")[m], "ko", ms=7, mfc="none", label="softmax_attention output")
    a.loglog(T, 1 / (T - 1), "k--", lw=1.2, label="zero-order term alone: 1/(T-1)")
    for i, lab in enumerate(GATES):           # the 2-gate lines coincide at 1: draw them thick-to-thin
        two = len(GATES[lab]) == 2
        a.loglog(T, col(f"{lab}: sbr"), f"C{i}", lw=7 - 2 * i if two else 2, alpha=0.9,
                 label=lab + (" (2 gates: exactly 1)" if two else ""))
        a.loglog(T, col(f"op {lab}: sbr"), f"C{i}o", ms=5, mfc="none")
    a.plot([], [], "o", color="gray", mfc="none", label="markers: zeros_attention outputs")
    a.set(title="(b) Output: relevant value vs the accumulated background",
          xlabel="context length T", ylabel="signal / background  |o.e_1| / |o.e_2|  (log)")
    a.legend(fontsize=8)
    for a in ax:
        a.grid(alpha=0.3, which="both")
    fig.suptitle("Dilution: softmax's uniform 1/T mass swamps a relevant token as T grows; ZeroS's zero-sum "
                 "weights cancel the background", fontsize=13)
    fig.tight_layout()
    return save_fig(fig, path)


def summary(res) -> str:
    keys = ["p", "zero", "softmax_sbr"] + [f"{lab}: sbr" for lab in GATES]
    heads = ["T", "softmax p_j", "1/T", "softmax sig/bg"] + [lab.replace("ZeroS ", "") + " sig/bg" for lab in GATES]
    rows = [[r["T"]] + [r[k] for k in keys] for r in res["per_T"]]
    return table(rows, heads)
