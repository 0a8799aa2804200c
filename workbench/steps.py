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

Two forms compute a step (``step(..., path=)``).  CuPy arrays of float16, bfloat16 and float32 take the
step kernel (kernels/cupy/steps.py, kernels/cuda/steps.cu): every head of the batch advanced in one
launch, each state element read and written once; the new state is written to new arrays (the old one
stays valid).  NumPy arrays, float64, and head dims the kernel does not take run the array form below: a
handful of array operations on the arrays' own module (NumPy, or many small CuPy launches), which is also
the float64 reference the kernel is tested against.  The steps take no backend and have no vjp (they are
for generation).  A call's validation is cached per signature (the arrays' and the state's types, dtypes
and shapes, and the options), as the ops' plans are.  The softmax cache grows by one concatenation per
step (a copy of the cache: O(Tc) per token), a comparison point rather than a serving design.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backends
from .ops import _check_kinds_and_dtypes, _check_options, _opt_key
from .opspec import ARRAY_ARGS, STATE_OPS
from .state import KVCache, DecayedState, LinearState, ZeroSState, check_state, empty_state, state_dtype

PATHS = ("auto", "kernel", "array")
_ARGS = {op: ARRAY_ARGS[op] for op in STATE_OPS}
_MAX_PLANS = 1024


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


@dataclass(frozen=True)
class _Plan:
    """What a step call's signature decides, validated once (cached per signature, as the ops' plans)."""
    op: str
    kind: str
    dtype: str
    lead: tuple
    Dk: int
    Dv: int
    options: dict             # validated options (linear: feature_map, normalize, scale, eps; decayed: scale)
    kernel: bool              # the CuPy step kernel runs it (kernels/cupy/steps.py), else the array form


_PLANS: dict = {}


def _state_key(state):
    if state is None:
        return None
    return (type(state), *[None if x is None else (type(x), x.dtype, x.shape) for x in vars(state).values()])


def _plan(op: str, arrays: dict, state, options: dict, path: str) -> _Plan:
    try:
        key = (op, path, *[(type(x), x.dtype, x.shape) for x in arrays.values()], _state_key(state),
               *[(k, _opt_key(v)) for k, v in options.items()])
        plan = _PLANS.get(key)
    except (TypeError, AttributeError):         # not arrays: validation says what is wrong
        key = plan = None
    if plan is None:
        plan = _make_plan(op, arrays, state, options, path)
        if key is not None:
            if len(_PLANS) >= _MAX_PLANS:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan


def validated_options(op: str, options: dict, Dk: int) -> dict:
    """The options a step form takes (linear: feature_map, normalize, scale, eps; decayed: scale; zeros:
    none), validated as the op validates them; missing ones get the op's defaults."""
    defaults = {"linear": dict(feature_map="identity", normalize=False, scale=1.0, eps=1e-6),
                "decayed": dict(scale=1.0), "zeros": {}}[op]
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"{op}_attention_step got unexpected option(s) {', '.join(sorted(map(repr, unknown)))}; "
                        f"its options are {', '.join(defaults) or 'none'}")
    out = _check_options(op, dict(defaults, **options, causal=True), Dk)
    out.pop("causal", None)
    return out


def _make_plan(op: str, arrays: dict, state, options: dict, path: str) -> _Plan:
    where = f"{op}_attention_step"
    if path not in PATHS:
        raise ValueError(f"{where}: unknown path {path!r}; expected one of {', '.join(PATHS)}")
    kind, dtype, lead, Dk, Dv = _check_token(op, arrays)
    options = validated_options(op, options, Dk)
    if state is not None:
        check_state(where, op, state, lead=lead, Dk=Dk, Dv=Dv, dtype=dtype, kind=kind,
                    normalize=bool(options.get("normalize", False)), name="state")
    why = "the arrays are NumPy arrays" if kind == "numpy" else None
    if why is None:
        from kernels.cupy import steps as kernel_steps
        why = kernel_steps.unsupported(dtype, Dk)
    if path == "kernel" and why:
        raise ValueError(f"{where}: path='kernel' needs the CuPy step kernel, which cannot take this step: {why}")
    return _Plan(op, kind, dtype, lead, Dk, Dv, options, kernel=why is None and path != "array")


def step(op: str, *arrays, state=None, path: str = "auto", **options):
    """One token of ``op`` (linear, decayed or zeros): the arrays as the op's step function takes them, then
    ``state`` and the options.  ``path``: "auto" (the CuPy step kernel for CuPy arrays of float16, bfloat16
    and float32, else the array form), "kernel" (the kernel or a ValueError) or "array" (the array form on
    the arrays' own module: NumPy, or many small CuPy operations).  Returns ``(o, state)``."""
    if op not in _ARGS:
        raise ValueError(f"step: unknown op {op!r}; steps with a state exist for {', '.join(_ARGS)} "
                         f"(softmax_attention_step takes a KVCache)")
    names = _ARGS[op]
    if len(arrays) != len(names):
        raise TypeError(f"{op}_attention_step takes {len(names)} arrays ({', '.join(names)}), got {len(arrays)}")
    named = dict(zip(names, arrays))
    plan = _plan(op, named, state, options, path)
    if op == "decayed" and (plan.kind == "numpy" or backends.device_checks()):
        g = named["log_decay"]
        if (g > 0).any():
            raise ValueError(f"decayed_attention_step: argument 'log_decay' must be <= 0 everywhere, got values "
                             f"up to {float(g.max())}")
    if state is None:
        state = empty_state(op, plan.lead, plan.Dk, plan.Dv, plan.dtype, _xp(plan.kind),
                            bool(plan.options.get("normalize", False)))
    if plan.kernel:
        from kernels.cupy import steps as kernel_steps
        return getattr(kernel_steps, f"{op}_step")(*arrays, state, **plan.options)
    xp, wd = _xp(plan.kind), state_dtype(plan.dtype)
    o, new = _ARRAY_FORMS[op](xp, *(x.astype(wd) for x in arrays), state, **plan.options)
    return o.astype(arrays[0].dtype), new


# ----------------------------------------------------------------------------- the array form
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


def _linear_array(xp, q, k, v, state, feature_map, normalize, scale, eps):
    Q, K = _phi(xp, q, feature_map), _phi(xp, k, feature_map)
    S = state.S + _outer(K, v)
    o = scale * _read(Q, S)
    z = None
    if normalize:
        z = state.z + K
        o = o / (scale * (Q * z).sum(-1) + eps)[..., None]
    return o, LinearState(S, z)


def _decayed_array(xp, q, k, v, log_decay, state, scale):
    S = xp.exp(log_decay)[..., None, None] * state.S + _outer(k, v)
    return scale * _read(q, S), DecayedState(S)


def _zeros_array(xp, q, k, v, s, gates, state):
    st = state
    m = xp.maximum(st.m, s)
    c, w = xp.exp(st.m - m), xp.exp(s - m)
    kv = _outer(k, v)
    new = ZeroSState(m, c * st.E + w, st.P + s, st.n + 1, c[..., None, None] * st.F + w[..., None, None] * kv,
                     st.G + s[..., None, None] * kv, st.H + kv)
    sig1, sigh = 0.5 * (1 + xp.tanh(0.5 * gates[..., 0])), 0.5 * (1 + xp.tanh(0.5 * gates[..., 1]))
    tz = xp.tanh(gates[..., 2]) if gates.shape[-1] == 3 else 0
    alpha = sigh / new.E
    beta = (sig1 - sigh) / new.n
    gamma = (tz - sigh - beta * new.P) / new.n
    o = alpha[..., None] * _read(q, new.F) + beta[..., None] * _read(q, new.G) + gamma[..., None] * _read(q, new.H)
    return o, new


_ARRAY_FORMS = {"linear": _linear_array, "decayed": _decayed_array, "zeros": _zeros_array}


# ----------------------------------------------------------------------------- the public steps
def linear_attention_step(q, k, v, state=None, feature_map="identity", normalize=False, scale=1.0, eps=1e-6):
    """One token of causal linear attention from ``state`` (a LinearState, or None: empty); returns
    ``(o, state)``.  Options as ``linear_attention``."""
    return step("linear", q, k, v, state=state, feature_map=feature_map, normalize=normalize, scale=scale, eps=eps)


def decayed_attention_step(q, k, v, log_decay, state=None, scale=1.0):
    """One token of decayed linear attention from ``state`` (a DecayedState, or None: empty): ``S = e^g S +
    k v^T``, ``o = scale q^T S``; returns ``(o, state)``.  ``log_decay <= 0`` (checked as in
    ``decayed_attention``)."""
    return step("decayed", q, k, v, log_decay, state=state, scale=scale)


def zeros_attention_step(q, k, v, s, gates, state=None):
    """One token of causal ZeroS attention from ``state`` (a ZeroSState, or None: empty); returns
    ``(o, state)``."""
    return step("zeros", q, k, v, s, gates, state=state)


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
