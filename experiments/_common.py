"""Small helpers shared by the experiments: the sparsity measure, attention rows taken from the workbench's
own ops (by ``vjp``) or computed directly for a few query rows, JSON/PNG output, progress bars, tables."""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

import workbench as wb
from workbench.inputs import default_options
from workbench.reference.common import feature_map as _phi, sigmoid

DEFAULT_OUT = os.path.join("out", "experiments")        # scratch (git-ignored); results/experiments is committed
COMMITTED_OUT = os.path.join("results", "experiments")    # the figures README shows: written only when asked
DPI = 100


# ----------------------------------------------------------------------------- the measure
def sparsity(x, axis=-1):
    """``S(x) = mean|x| / sqrt(mean x^2)`` along ``axis`` (docs/spec.md section 6); in [1/sqrt(n), 1], small = sparse.
    Signed rows (ZeroS) are measured through |x|, which the formula does anyway."""
    x = np.asarray(x, dtype=np.float64)
    return np.abs(x).mean(axis) / np.sqrt((x * x).mean(axis))


def mean_se(values):
    """(mean, standard error of the mean) of a 1-d sample."""
    v = np.asarray(values, dtype=np.float64).ravel()
    se = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return float(v.mean()), float(se)


# ----------------------------------------------------------------------------- rows from the ops
def last_row_weights(op: str, arrays, backend: str = "numpy", **options):
    """Weights of the last query row over all T keys, for every leading index, from the public op's ``vjp``.

    The op's output is ``o_t = sum_i w_ti v_i``, so ``dL/dv_i = sum_t w_ti dout_t``; with ``dout`` one at
    the last row (and Dv = 1) the gradient ``dv`` is exactly the last row ``w_T.``: the attention
    probabilities for softmax, ``scale phi(q).phi(k_i)`` (divided by the normaliser when ``normalize``)
    for linear, ``scale exp(G_T - G_i) q.k_i`` for decayed and ``r_Ti (q.k_i)`` for ZeroS.  The
    op runs on the chosen backend (linear-time variants by default), so no T x T matrix is formed
    (softmax's tiled form is O(T^2) time, O(T) memory).  Returns float64 ``(N, T)``.
    """
    arrays = list(arrays)
    v = arrays[2]
    if v.shape[-1] != 1:
        raise ValueError("last_row_weights: pass v with Dv = 1")
    out, pullback = wb.vjp(wb.PUBLIC_OPS[op], *arrays, backend=backend, **options)
    dout = np.zeros_like(out)
    dout[..., -1, :] = 1.0
    dv = pullback(dout)[2]
    return np.asarray(dv[..., 0], dtype=np.float64)


def direct_row_weights(op: str, arrays, t: int, options=None):
    """Weights ``w_t.`` of query row ``t`` (0-based, causal: keys 0..t) for every leading index, computed
    directly in float64 from the docs/spec.md section 3 formulas in O(t Dk) -- for long T, where neither a T x T matrix
    nor all T rows are affordable.  ``arrays`` are the op's arrays with one leading dim ``(N, T, ...)``.
    Tested against the references' explicit weight matrices."""
    o = default_options(op, **(options or {}))
    q, k = (np.asarray(a, dtype=np.float64) for a in arrays[:2])
    qt, kw = q[:, t], k[:, :t + 1]
    if op == "softmax":
        scale = o.get("scale") or 1.0 / math.sqrt(q.shape[-1])
        a = scale * np.einsum("nid,nd->ni", kw, qt)
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if op == "linear":
        fm = o["feature_map"]
        A = o["scale"] * np.einsum("nid,nd->ni", _phi(kw, fm), _phi(qt, fm))
        if o["normalize"]:
            A = A / (A.sum(-1, keepdims=True) + o["eps"])
        return A
    B = np.einsum("nid,nd->ni", kw, qt)
    if op == "decayed":
        G = np.cumsum(np.asarray(arrays[3], dtype=np.float64)[:, :t + 1], -1)
        return o["scale"] * np.exp(G[:, -1:] - G) * B
    if op == "zeros":
        s = np.asarray(arrays[3], dtype=np.float64)[:, :t + 1]
        gates = np.asarray(arrays[4], dtype=np.float64)[:, t]
        r = zeros_row_coefficients(s, gates)
        return r * B
    raise ValueError(f"unknown op {op!r}")


def zeros_row_coefficients(s, gates, parts=False):
    """ZeroS coefficients ``r_i`` of one row whose window holds the radial logits ``s`` ``(N, n)``, with gate
    logits ``gates`` ``(N, 2|3)``.  With ``parts=True`` also returns softmax's Taylor parts
    ``p, zero, first, rest`` (p = zero + first + rest)."""
    s = np.asarray(s, dtype=np.float64)
    n = s.shape[-1]
    e = np.exp(s - s.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    P = s.sum(-1, keepdims=True)
    zero = np.full_like(s, 1.0 / n)
    first = s / n - P / n ** 2
    rest = p - zero - first
    sig1, sigh = sigmoid(gates[:, :1]), sigmoid(gates[:, 1:2])
    r = sig1 * first + sigh * rest
    if gates.shape[-1] == 3:
        r = r + np.tanh(gates[:, 2:3]) * zero
    if parts:
        return r, dict(p=p, zero=zero, first=first, rest=rest)
    return r


# ----------------------------------------------------------------------------- output
def to_builtin(x):
    """JSON-safe copy: numpy scalars/arrays to Python numbers/lists; NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): to_builtin(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_builtin(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_builtin(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def write_json(path: str, obj) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(to_builtin(obj), f, indent=1)
        f.write("\n")
    return path


def save_fig(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def progress(iterable, desc: str, enabled: bool = True, total=None):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def table(rows, headers) -> str:
    from tabulate import tabulate
    return tabulate(rows, headers=headers, floatfmt=".4g")
