"""One token at a time: the recurrent step of each linear-time op, and softmax over a key/value cache.

    o_t, state = wb.decayed_attention_step(q_t, k_t, v_t, log_decay_t, state)

Shapes per token: q_t, k_t ``(..., Dk)``; v_t ``(..., Dv)``; log_decay_t and s_t ``(...,)``; gates_t
``(..., 2|3)``; o_t ``(..., Dv)`` in the inputs' dtype.  The state (workbench/state.py) has the same
leading dims and the state dtype (float32; float64 for float64 inputs); ``state=None`` starts from the
empty state.  A step is the recurrence of the op for one token, so running T steps from a state gives the
op's outputs and final state from that state (``linear_attention(..., initial_state=S0,
return_state=True)``), to round-off.

    linear:   S += phi(k) v^T,  z += phi(k);    o = scale phi(q)^T S  (/ (scale phi(q).z + eps))
    decayed:  S = e^g S + k v^T;                o = scale q^T S
    zeros:    m' = max(m, s), E = e^{m-m'} E + e^{s-m'}, F = e^{m-m'} F + e^{s-m'} k v^T, P += s, n += 1,
              G += s k v^T, H += k v^T;          o = q^T (alpha F + beta G + gamma H)   (docs/spec.md 3.4)
    softmax:  the cache gains (k, v);           o = softmax(scale K q)^T V over the whole cache

The steps run on the arrays' own module (NumPy or CuPy) with a handful of array operations each; they
take no backend and have no vjp (they are for generation).  The softmax cache grows by one concatenation
per step (a copy of the cache: O(Tc) per token), a comparison point rather than a serving design.
"""
from __future__ import annotations

import numpy as np

from . import backends
from .ops import _check_kinds_and_dtypes, _check_options
from .state import KVCache, DecayedState, LinearState, ZeroSState, check_state, empty_state, state_dtype


def _xp(kind):
    return np if kind == "numpy" else backends.cupy_module()


def _check_token(op: str, arrays: dict) -> tuple:
    """Validate one token's arrays; return (kind, dtype name, lead, Dk, Dv)."""
    where = f"{op}_attention_step"
    kind, dtype = _check_kinds_and_dtypes(where, arrays)
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    if q.ndim < 1 or q.shape[-1] < 1:
        raise ValueError(f"{where}: argument 'q' must have shape (..., Dk) (one token), got {q.shape}")
    lead = tuple(q.shape[:-1])
    if k.shape != q.shape:
        raise ValueError(f"{where}: argument 'k' must have shape {q.shape} (same as q: (..., Dk)), got {k.shape}")
    if v.ndim != q.ndim or tuple(v.shape[:-1]) != lead or v.shape[-1] < 1:
        raise ValueError(f"{where}: argument 'v' must have shape {(*lead, 'Dv')} ((..., Dv) with q's leading "
                         f"dims), got {v.shape}")
    for name in ("log_decay", "s"):
        if name in arrays and tuple(arrays[name].shape) != lead:
            raise ValueError(f"{where}: argument {name!r} must have shape {lead} ((...,): one value per token), "
                             f"got {arrays[name].shape}")
    if "gates" in arrays:
        g = arrays["gates"]
        if tuple(g.shape[:-1]) != lead or g.ndim != q.ndim or g.shape[-1] not in (2, 3):
            raise ValueError(f"{where}: argument 'gates' must have shape {(*lead, 2)} or {(*lead, 3)} "
                             f"((..., 2|3)), got {g.shape}")
    return kind, dtype, lead, q.shape[-1], v.shape[-1]


def _prepare(op: str, arrays: dict, state, options: dict):
    """(xp, work dtype, the arrays in it, the validated state (or the empty one), validated options)."""
    kind, dtype, lead, Dk, Dv = _check_token(op, arrays)
    options = _check_options(op, options, Dk) if options else {}
    normalize = bool(options.get("normalize", False))
    xp = _xp(kind)
    if state is None:
        state = empty_state(op, lead, Dk, Dv, dtype, xp, normalize)
    else:
        check_state(f"{op}_attention_step", op, state, lead=lead, Dk=Dk, Dv=Dv, dtype=dtype, kind=kind,
                    normalize=normalize, name="state")
    wd = state_dtype(dtype)
    return xp, wd, {n: x.astype(wd) for n, x in arrays.items()}, state, options


def _phi(xp, x, name):
    if name == "identity":
        return x
    if name == "relu":
        return xp.maximum(x, 0)
    return xp.where(x > 0, x + 1, xp.exp(xp.minimum(x, 0)))         # elu1


def _outer(k, v):
    return k[..., :, None] * v[..., None, :]


def _read(q, S):
    """q^T S per leading index: (..., Dk) x (..., Dk, Dv) -> (..., Dv)."""
    return (q[..., None, :] @ S)[..., 0, :]


def linear_attention_step(q, k, v, state=None, feature_map="identity", normalize=False, scale=1.0, eps=1e-6):
    """One token of causal linear attention from ``state`` (a LinearState, or None: empty); returns
    ``(o, state)``.  Options as ``linear_attention``."""
    xp, _, a, state, o_ = _prepare("linear", dict(q=q, k=k, v=v), state,
                                   dict(causal=True, feature_map=feature_map, normalize=normalize, scale=scale,
                                        eps=eps))
    Q, K = _phi(xp, a["q"], o_["feature_map"]), _phi(xp, a["k"], o_["feature_map"])
    S = state.S + _outer(K, a["v"])
    o = o_["scale"] * _read(Q, S)
    z = None
    if o_["normalize"]:
        z = state.z + K
        o = o / (o_["scale"] * (Q * z).sum(-1) + o_["eps"])[..., None]
    return o.astype(q.dtype), LinearState(S, z)


def decayed_attention_step(q, k, v, log_decay, state=None, scale=1.0):
    """One token of decayed linear attention from ``state`` (a DecayedState, or None: empty): ``S = e^g S +
    k v^T``, ``o = scale q^T S``; returns ``(o, state)``.  ``log_decay <= 0`` (checked as in
    ``decayed_attention``)."""
    xp, _, a, state, o_ = _prepare("decayed", dict(q=q, k=k, v=v, log_decay=log_decay), state,
                                   dict(causal=True, scale=scale))
    if backends.array_kind(log_decay) == "numpy" or backends.device_checks():
        if (log_decay > 0).any():
            raise ValueError(f"decayed_attention_step: argument 'log_decay' must be <= 0 everywhere, got values "
                             f"up to {float(log_decay.max())}")
    S = xp.exp(a["log_decay"])[..., None, None] * state.S + _outer(a["k"], a["v"])
    return (o_["scale"] * _read(a["q"], S)).astype(q.dtype), DecayedState(S)


def zeros_attention_step(q, k, v, s, gates, state=None):
    """One token of causal ZeroS attention from ``state`` (a ZeroSState, or None: empty); returns
    ``(o, state)``."""
    xp, _, a, st, _ = _prepare("zeros", dict(q=q, k=k, v=v, s=s, gates=gates), state, {})
    s_, g = a["s"], a["gates"]
    m = xp.maximum(st.m, s_)
    c, w = xp.exp(st.m - m), xp.exp(s_ - m)
    kv = _outer(a["k"], a["v"])
    new = ZeroSState(m, c * st.E + w, st.P + s_, st.n + 1, c[..., None, None] * st.F + w[..., None, None] * kv,
                     st.G + s_[..., None, None] * kv, st.H + kv)
    sig1, sigh = 0.5 * (1 + xp.tanh(0.5 * g[..., 0])), 0.5 * (1 + xp.tanh(0.5 * g[..., 1]))
    tz = xp.tanh(g[..., 2]) if g.shape[-1] == 3 else 0
    alpha = sigh / new.E
    beta = (sig1 - sigh) / new.n
    gamma = (tz - sigh - beta * new.P) / new.n
    o = (alpha[..., None] * _read(a["q"], new.F) + beta[..., None] * _read(a["q"], new.G)
         + gamma[..., None] * _read(a["q"], new.H))
    return o.astype(q.dtype), new


def softmax_attention_step(q, k, v, cache=None, scale=None):
    """One token of causal softmax attention over a key/value cache (a KVCache of the inputs' dtype with
    k ``(..., Tc, Dk)``, v ``(..., Tc, Dv)``, or None: empty): the cache gains (k, v) and the token attends
    to all of it.  Returns ``(o, cache)``; scale defaults to 1/sqrt(Dk)."""
    where = "softmax_attention_step"
    kind, dtype, lead, Dk, Dv = _check_token("softmax", dict(q=q, k=k, v=v))
    sc = _check_options("softmax", dict(causal=True, scale=scale), Dk)["scale"]
    xp = _xp(kind)
    if cache is None:
        cache = KVCache(xp.zeros(lead + (0, Dk), q.dtype), xp.zeros(lead + (0, Dv), q.dtype))
    if not isinstance(cache, KVCache):
        raise TypeError(f"{where}: argument 'cache' must be a workbench.KVCache (k, v), got {type(cache).__name__}")
    for name, x, D in (("k", cache.k, Dk), ("v", cache.v, Dv)):
        if backends.array_kind(x) != kind or str(x.dtype) != dtype:
            raise TypeError(f"{where}: cache field {name!r} must be a {kind} array of dtype {dtype}, got "
                            f"{backends.array_kind(x)} {x.dtype}")
        if x.ndim != len(lead) + 2 or tuple(x.shape[:-2]) != lead or x.shape[-1] != D \
                or x.shape[-2] != cache.k.shape[-2]:
            raise ValueError(f"{where}: cache field {name!r} must have shape {(*lead, 'Tc', D)} (Tc keys so far, "
                             f"the same for k and v), got {x.shape}")
    new = KVCache(xp.concatenate([cache.k, k[..., None, :]], axis=-2),
                  xp.concatenate([cache.v, v[..., None, :]], axis=-2))
    wd = state_dtype(dtype)
    K, V, Q = new.k.astype(wd), new.v.astype(wd), q.astype(wd)
    a = sc * (K @ Q[..., :, None])[..., 0]
    p = xp.exp(a - a.max(-1, keepdims=True))
    o = (p[..., None, :] @ V)[..., 0, :] / p.sum(-1)[..., None]
    return o.astype(q.dtype), new


STEPS = {"softmax": softmax_attention_step, "linear": linear_attention_step, "decayed": decayed_attention_step,
         "zeros": zeros_attention_step}
