"""ZeroS's contrastive claim: one ZeroS layer outputs ``o = v_1 - v_2``; softmax and non-negative
linear attention cannot.

Task: a causal sequence of T tokens with fixed random values ``v_i`` (Dv = T, so the v_i are linearly
independent and the only weights that give the target are (1, -1, 0, ...)); the target is the last row's
output ``o_T = v_1 - v_2``.  For every op the free inputs (q, k; ZeroS also s and the two gate logits; decayed
also its log decay, kept <= 0 as ``-softplus``) are fitted by Adam (written here) with gradients from the
library's own ``vjp``; several restarts, the best kept.

Why convex weights fail: softmax (and normalised non-negative linear attention) outputs
``o_T = sum_i p_i v_i`` with ``p_i >= 0, sum p_i = 1`` -- a point of the convex hull of the v_i -- so the error
can never fall below the distance from the target to that hull, computed here exactly (projected-gradient
quadratic programme).  Un-normalised non-negative linear attention outputs a point of the convex cone of the
v_i, bounded by the distance to the cone.  ZeroS's weights ``r_Ti (q_T.k_i)`` are signed and, with two
gates, ``sum_i r_Ti = 0``: the weights (1, -1, 0, ...) are in its reach.
"""
from __future__ import annotations

import math
import os

import numpy as np

import workbench as wb
from ._common import DEFAULT_OUT, last_row_weights, progress, pyplot, save_fig, table, write_json
from workbench.reference.common import sigmoid

NAME = "zeros-contrastive"
FILE = "zeros_contrastive"

EXPLANATION = (
    "Softmax weights p_Ti are >= 0 and sum to 1, so o_T = sum_i p_Ti v_i lies in the convex hull of the "
    "values v_i; v_1 - v_2 lies outside it (Dv = T: the v_i are independent, and the only weights giving "
    "v_1 - v_2 are (1, -1, 0, ...), which are not convex), so the error of softmax -- and of normalised "
    "non-negative linear attention, whose weights are convex too -- is at least the distance from the target "
    "to the hull. Without normalisation, non-negative weights reach only the convex cone of the v_i. ZeroS "
    "removes the zero-order term 1/t: with two gates its weights r_Ti sum to zero and take either sign "
    "(r_Ti (q.k_i) even more so), so a single layer can output v_1 - v_2. Identity-map linear and decayed "
    "attention also have signed weights (q.k_i can be negative) and can fit it, but without any "
    "normalisation (their weights are unbounded inner products, not a reweighted softmax).")


# ----------------------------------------------------------------------------- Adam
def adam(params: dict, grad_fn, steps: int, lr: float, b1=0.9, b2=0.999, eps=1e-8, record=None):
    """Minimise with Adam.  ``grad_fn(params) -> (loss, grads dict)``.  Returns (best params, loss history)."""
    m = {k: np.zeros_like(v) for k, v in params.items()}
    s = {k: np.zeros_like(v) for k, v in params.items()}
    hist, best, best_p = [], np.inf, params
    for it in range(1, steps + 1):
        loss, g = grad_fn(params)
        hist.append(loss)
        if loss < best:
            best, best_p = loss, {k: v.copy() for k, v in params.items()}
        new = {}
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            s[k] = b2 * s[k] + (1 - b2) * g[k] ** 2
            new[k] = params[k] - lr * (m[k] / (1 - b1 ** it)) / (np.sqrt(s[k] / (1 - b2 ** it)) + eps)
        params = new
    loss, _ = grad_fn(params)
    hist.append(loss)
    if loss < best:
        best_p = params
    return best_p, np.asarray(hist)


# ----------------------------------------------------------------------------- the models
def _softplus(u):
    return np.logaddexp(0.0, u)


def _normalise(x):
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / n, n


def _normalise_back(y, n, g):
    """Gradient through y = x / |x| (rowwise)."""
    return (g - y * (y * g).sum(-1, keepdims=True)) / n


MODELS = {  # name -> (op, options, weight class)
    "softmax": ("softmax", dict(causal=True), "convex"),
    "linear elu1, normalised": ("linear", dict(causal=True, feature_map="elu1", normalize=True), "convex"),
    "linear relu, unnormalised": ("linear", dict(causal=True, feature_map="relu"), "non-negative (cone)"),
    "linear identity": ("linear", dict(causal=True), "signed"),
    "decayed": ("decayed", dict(), "signed"),
    "ZeroS (2 gates)": ("zeros", dict(causal=True), "signed, zero-sum"),
}


def _init(op, T, Dk, rng):
    p = dict(q=0.5 * rng.standard_normal((1, T, Dk)), k=0.5 * rng.standard_normal((1, T, Dk)))
    if op == "decayed":
        p["u"] = rng.uniform(-3, 0, (1, T))                 # log_decay = -softplus(u)
    if op == "zeros":
        p["s"] = rng.standard_normal((1, T))
        p["gates"] = np.zeros((1, T, 2))
    return p


def _arrays(op, p, v):
    """The op's arrays from the free parameters, and a function mapping the op's gradients back to them."""
    if op in ("softmax", "linear"):
        return (p["q"], p["k"], v), lambda g: dict(q=g[0], k=g[1])
    if op == "decayed":
        return (p["q"], p["k"], v, -_softplus(p["u"])), lambda g: dict(q=g[0], k=g[1], u=-g[3] * sigmoid(p["u"]))
    q, nq = _normalise(p["q"])                               # the layer normalises q and k before the op
    k, nk = _normalise(p["k"])
    return (q, k, v, p["s"], p["gates"]), lambda g: dict(q=_normalise_back(q, nq, g[0]),
                                                        k=_normalise_back(k, nk, g[1]), s=g[3], gates=g[4])


def fit(model: str, v, target, steps, lr, rng, backend="numpy"):
    """One Adam run; returns (params, relative-error history ||o_T - y|| / ||y||)."""
    op, opts, _ = MODELS[model]
    T, Dk = v.shape[-2], v.shape[-2]
    ny2 = float(target @ target)

    def grad_fn(p):
        arrays, back = _arrays(op, p, v)
        out, pullback = wb.vjp(wb.PUBLIC_OPS[op], *arrays, backend=backend, **opts)
        err = out[0, -1] - target
        dout = np.zeros_like(out)
        dout[0, -1] = 2 * err / ny2
        return float(err @ err / ny2), back(pullback(dout))

    p, hist = adam(_init(op, T, Dk, rng), grad_fn, steps, lr)
    return p, np.sqrt(np.maximum(hist, 0))


def fitted_weights(model, p, v, backend="numpy"):
    """The last row's weights w_Ti of the fitted model (o_T = sum_i w_Ti v_i)."""
    op, opts, _ = MODELS[model]
    arrays, _ = _arrays(op, p, np.ones(v.shape[:-1] + (1,)))
    return last_row_weights(op, arrays, backend, **opts)[0]


# ----------------------------------------------------------------------------- the floors
def _project_simplex(w):
    u = np.sort(w)[::-1]
    css = np.cumsum(u) - 1
    idx = np.nonzero(u - css / np.arange(1, len(w) + 1) > 0)[0][-1]
    return np.maximum(w - css[idx] / (idx + 1), 0)


def best_combination(V, y, kind: str, iters=20000):
    """min_w ||V^T w - y|| over the simplex (``kind="hull"``) or w >= 0 (``"cone"``), by accelerated projected
    gradient (FISTA) -- a convex quadratic programme, solved to ~1e-12.  Returns (distance, w)."""
    proj = _project_simplex if kind == "hull" else (lambda w: np.maximum(w, 0))
    A = V @ V.T
    b = V @ y
    L = np.linalg.eigvalsh(A)[-1]
    w = proj(np.full(len(V), 1.0 / len(V)))
    z, t = w.copy(), 1.0
    for _ in range(iters):
        w_new = proj(z - (A @ z - b) / L)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = w_new + (t - 1) / t_new * (w_new - w)
        w, t = w_new, t_new
    return float(np.linalg.norm(V.T @ w - y)), w


# ----------------------------------------------------------------------------- the experiment
def settings(quick):
    return dict(T=6, steps=300, restarts=2, lr=0.05) if quick else dict(T=8, steps=1500, restarts=5, lr=0.05)


def run(out=DEFAULT_OUT, quick=False, backend="numpy", seed=0, progress_bar=True, plots=True):
    cfg = settings(quick)
    T = cfg["T"]
    if backend == "numpy":          # T is tiny: the explicit float64 reference is the fastest NumPy variant
        backend = "numpy:explicit"
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((1, T, T))                       # Dv = T: independent values
    target = v[0, 0] - v[0, 1]
    ny = float(np.linalg.norm(target))
    hull, w_hull = best_combination(v[0], target, "hull")
    cone, w_cone = best_combination(v[0], target, "cone")
    floors = {"convex": hull / ny, "non-negative (cone)": cone / ny}
    results = {}
    jobs = [(m, r) for m in MODELS for r in range(cfg["restarts"])]
    for model, r in progress(jobs, "zeros-contrastive: fits", progress_bar):
        p, hist = fit(model, v, target, cfg["steps"], cfg["lr"], np.random.default_rng(1000 * seed + r), backend)
        d = results.setdefault(model, dict(histories=[], finals=[], params=[]))
        d["histories"].append(hist)
        d["finals"].append(float(hist.min()))
        d["params"].append(p)
    summary_rows = {}
    for model, d in results.items():
        i = int(np.argmin(d["finals"]))
        op, opts, kind = MODELS[model]
        w = fitted_weights(model, d["params"][i], v, backend)
        summary_rows[model] = dict(op=op, options=opts, weights=kind, best_rel_error=d["finals"][i],
                                   restart_rel_errors=d["finals"], floor=floors.get(kind),
                                   fitted_last_row_weights=w, weight_sum=float(w.sum()),
                                   loss_curve_best=d["histories"][i][::max(1, cfg["steps"] // 500)])
    res = dict(experiment=NAME, quick=quick, backend=backend, seed=seed, settings=cfg,
               task=f"causal T={T}, Dk={T}, values v_i ~ N(0, I_{T}) (fixed), target o_T = v_1 - v_2; "
                    "error = ||o_T - target|| / ||target||, best over restarts",
               explanation=EXPLANATION, target_weights=[1.0, -1.0] + [0.0] * (T - 2),
               convex_hull_floor=hull / ny, convex_hull_weights=w_hull, cone_floor=cone / ny, cone_weights=w_cone,
               models=summary_rows)
    os.makedirs(out, exist_ok=True)
    files = [os.path.join(out, f"{FILE}.json")]
    if plots:
        files.append(_plot(res, results, os.path.join(out, f"{FILE}.png")))
    res["files"] = files
    write_json(files[0], res)
    return res


def _plot(res, results, path):
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw=dict(width_ratios=[1.2, 1, 1]))
    names = list(results)
    for i, m in enumerate(names):
        d = results[m]
        b = int(np.argmin(d["finals"]))
        for j, h in enumerate(d["histories"]):
            ax[0].semilogy(np.maximum(h, 1e-11), color=f"C{i}", lw=2 if j == b else 0.7, alpha=1 if j == b else 0.3,
                           label=m if j == b else None)
    ax[0].axhline(res["convex_hull_floor"], color="k", ls="--", lw=1, label="convex-hull floor (softmax, normalised)")
    ax[0].axhline(res["cone_floor"], color="k", ls=":", lw=1, label="cone floor (non-negative, unnormalised)")
    ax[0].set(title="Adam fits of o_T = v_1 - v_2 (thick: best restart)", xlabel="Adam step",
              ylabel="relative error ||o_T - target|| / ||target||", ylim=(1e-10, 3))
    ax[0].legend(fontsize=8)
    best = [res["models"][m]["best_rel_error"] for m in names]
    shown = np.maximum(best, 1e-10)
    bars = ax[1].bar(range(len(names)), shown, color=[f"C{i}" for i in range(len(names))])
    ax[1].set_yscale("log")
    for bar, val, y in zip(bars, best, shown):
        ax[1].text(bar.get_x() + bar.get_width() / 2, y * 1.5, f"{val:.2g}" if val >= 1e-10 else "<1e-10",
                   ha="center", fontsize=9)
    ax[1].axhline(res["convex_hull_floor"], color="k", ls="--", lw=1, label="convex-hull floor")
    ax[1].axhline(res["cone_floor"], color="k", ls=":", lw=1, label="cone floor")
    ax[1].set_xticks(range(len(names)), names, fontsize=8, rotation=20, ha="right")
    ax[1].set(title="Best error per op (lower is better)", ylabel="relative error (log)", ylim=(3e-11, 5))
    ax[1].legend(fontsize=8)
    T = len(res["target_weights"])
    x = np.arange(1, T + 1)
    wid = 0.27
    ax[2].bar(x - wid, res["target_weights"], wid, color="lightgray", edgecolor="k", label="target (1, -1, 0, ...)")
    ax[2].bar(x, res["models"]["softmax"]["fitted_last_row_weights"], wid, color="C0", label="softmax fit")
    ax[2].bar(x + wid, res["models"]["ZeroS (2 gates)"]["fitted_last_row_weights"], wid, color=f"C{names.index('ZeroS (2 gates)')}",
              label="ZeroS fit: r_Ti (q.k_i)")
    ax[2].axhline(0, color="k", lw=0.8)
    ax[2].set(title="Last-row weights on the T tokens", xlabel="token i", ylabel="weight w_Ti  (o_T = sum_i w_Ti v_i)")
    ax[2].set_xticks(x)
    ax[2].legend(fontsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    fig.suptitle("Contrastive output v_1 - v_2: convex weights (softmax) stall at the hull distance; ZeroS fits it",
                 fontsize=13)
    fig.tight_layout()
    return save_fig(fig, path)


def summary(res) -> str:
    rows = [[m, d["weights"], d["best_rel_error"], d["floor"] if d["floor"] is not None else "-", d["weight_sum"]]
            for m, d in res["models"].items()]
    return table(rows, ["op", "weights", "best rel. error", "floor (theory)", "sum of fitted weights"])
