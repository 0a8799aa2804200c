"""The public ops (docs/spec.md section 2): validation, backend choice, and ``vjp``.

Each public op checks its inputs, picks a registered variant, flattens the leading dims to one, calls
``variant.forward``, and reshapes the result back.  ``vjp`` does the same and returns a pullback that calls
``variant.backward``.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np

from . import backends, registry

FEATURE_MAPS = ("identity", "elu1", "relu")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ----------------------------------------------------------------------------- validation
def _dtype_name(x) -> str:
    return str(x.dtype)


def _check_arrays(op: str, arrays: dict) -> tuple:
    """Validate shapes and dtypes; return (array kind, dtype name, leading shape, T, Dk, Dv)."""
    kinds = {}
    for name, x in arrays.items():
        try:
            kinds[name] = backends.array_kind(x)
        except TypeError as e:
            raise TypeError(f"{op}_attention: argument {name!r}: {e}") from None
    if len(set(kinds.values())) > 1:
        raise TypeError(f"{op}_attention: mixed array kinds {kinds}; pass all NumPy or all CuPy arrays")
    dts = {name: _dtype_name(x) for name, x in arrays.items()}
    for name, dt in dts.items():
        if dt not in _FLOAT_DTYPES:
            raise TypeError(f"{op}_attention: argument {name!r} has dtype {dt}; expected a floating dtype "
                            f"(float32 or float64; float16/bfloat16 on GPU backends)")
    if len(set(dts.values())) > 1:
        raise TypeError(f"{op}_attention: mixed dtypes {dts}; all arrays must share one dtype")
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    if q.ndim < 2:
        raise ValueError(f"{op}_attention: argument 'q' must have shape (..., T, Dk), got {q.shape}")
    lead, T, Dk = q.shape[:-2], q.shape[-2], q.shape[-1]
    if k.shape != q.shape:
        raise ValueError(f"{op}_attention: argument 'k' must have shape {q.shape} (same as q: (..., T, Dk)), "
                         f"got {k.shape}")
    if v.ndim != q.ndim or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"{op}_attention: argument 'v' must have shape {(*lead, T, 'Dv')} "
                         f"((..., T, Dv) with q's leading dims and T), got {v.shape}")
    Dv = v.shape[-1]
    if T < 1 or Dk < 1 or Dv < 1:
        raise ValueError(f"{op}_attention: T, Dk and Dv must be >= 1, got q {q.shape}, v {v.shape}")
    for name in ("log_decay", "s"):
        if name in arrays and arrays[name].shape != (*lead, T):
            raise ValueError(f"{op}_attention: argument {name!r} must have shape {(*lead, T)} ((..., T)), "
                             f"got {arrays[name].shape}")
    if "gates" in arrays:
        g = arrays["gates"]
        if g.shape[:-1] != (*lead, T) or g.ndim != q.ndim or g.shape[-1] not in (2, 3):
            raise ValueError(f"{op}_attention: argument 'gates' must have shape {(*lead, T, 2)} or "
                             f"{(*lead, T, 3)} ((..., T, 2|3)), got {g.shape}")
    return kinds["q"], dts["q"], tuple(lead), T, Dk, Dv


def _check_options(op: str, options: dict, Dk: int) -> dict:
    o = dict(options)
    if "causal" in o and not isinstance(o["causal"], (bool, np.bool_)):
        raise TypeError(f"{op}_attention: 'causal' must be True or False, got {o['causal']!r}")
    if op == "softmax":
        if o.get("scale") is None:
            o["scale"] = 1.0 / math.sqrt(Dk)
    if op == "linear":
        if o["feature_map"] not in FEATURE_MAPS:
            raise ValueError(f"linear_attention: unknown feature_map {o['feature_map']!r}; "
                             f"expected one of {FEATURE_MAPS}")
        o["normalize"] = bool(o["normalize"])
        o["eps"] = float(o["eps"])
        if not o["eps"] >= 0:
            raise ValueError(f"linear_attention: 'eps' must be >= 0, got {o['eps']}")
    if op == "decayed":
        if not o.pop("causal"):
            raise ValueError("decayed_attention: causal=False is not supported; decayed attention is "
                             "always causal (the decay runs forward in time)")
    if "scale" in o:
        try:
            o["scale"] = float(o["scale"])
        except (TypeError, ValueError):
            raise TypeError(f"{op}_attention: 'scale' must be a number, got {o['scale']!r}") from None
    return o


def _pick_variant(op: str, backend: str, kind: str, dtype: str, options: dict, shapes: dict):
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {backend!r}")
    if backend == "auto":
        backend_name, variant_name = ("cupy" if kind == "cupy" else "numpy"), None
    elif ":" in backend:
        backend_name, variant_name = backend.split(":", 1)
    else:
        backend_name, variant_name = backend, None
    variant = registry.get(op, backend_name, variant_name, dtype=dtype)
    if variant.gpu:
        backends.require(variant.backend)
    if dtype not in variant.dtypes:
        raise TypeError(f"{op}_attention: backend {variant.key} does not support dtype {dtype}; "
                        f"it supports {', '.join(variant.dtypes)}")
    why = variant.unsupported_reason(options, shapes)
    if why:
        raise ValueError(f"{op}_attention: backend {variant.key} does not support these inputs: {why}")
    return variant


# ----------------------------------------------------------------------------- dispatch
@dataclass
class _Call:
    op: str
    variant: registry.Variant
    kind: str               # the caller's array kind
    lead: tuple
    arg_shapes: tuple
    out_shape: tuple
    ctx: object = None


def _prepare(op: str, arrays: dict, options: dict, backend: str):
    kind, dtype, lead, T, Dk, Dv = _check_arrays(op, arrays)
    options = _check_options(op, options, Dk)
    shapes = {n: tuple(a.shape) for n, a in arrays.items()}
    variant = _pick_variant(op, backend, kind, dtype, options, shapes)
    N = int(np.prod(lead)) if lead else 1
    flat = []
    for name, x in arrays.items():
        x = x.reshape((N,) + tuple(x.shape[len(lead):]))
        if variant.array_kind != "any":
            x = backends.to_kind(x, variant.array_kind)
        flat.append(_contiguous(x))
    call = _Call(op, variant, kind, lead, tuple(shapes.values()), (*lead, T, Dv))
    return call, flat, options


def _contiguous(x):
    if x.flags.c_contiguous:
        return x
    return x.copy() if not isinstance(x, np.ndarray) else np.ascontiguousarray(x)


def _back(call: _Call, x, shape):
    return backends.to_kind(x, call.kind).reshape(shape)


def _forward(op: str, arrays: dict, options: dict, backend: str):
    call, flat, options = _prepare(op, arrays, options, backend)
    out, call.ctx = call.variant.forward(*flat, **options)
    return _back(call, out, call.out_shape), call


def _pullback(call: _Call):
    def pullback(dout):
        try:
            kind = backends.array_kind(dout)
        except TypeError as e:
            raise TypeError(f"pullback: argument 'dout': {e}") from None
        if tuple(dout.shape) != call.out_shape:
            raise ValueError(f"pullback: argument 'dout' must have the output's shape {call.out_shape}, "
                             f"got {tuple(dout.shape)}")
        if kind != call.kind:
            raise TypeError(f"pullback: 'dout' is a {kind} array but the op's inputs were {call.kind}")
        N = int(np.prod(call.lead)) if call.lead else 1
        d = dout.reshape((N,) + call.out_shape[len(call.lead):])
        if call.variant.array_kind != "any":
            d = backends.to_kind(d, call.variant.array_kind)
        grads = call.variant.backward(call.ctx, _contiguous(d))
        return tuple(_back(call, g, s) for g, s in zip(grads, call.arg_shapes))
    return pullback


def _op(name: str):
    def deco(fn):
        fn._wb_op = name
        return fn
    return deco


# ----------------------------------------------------------------------------- public ops
@_op("softmax")
def softmax_attention(q, k, v, causal=True, scale=None, backend="auto"):
    """Softmax attention ``o_t = sum_i softmax_i(scale * q_t.k_i) v_i`` (sums over i <= t when causal).

    q, k: ``(..., T, Dk)``; v: ``(..., T, Dv)``; returns ``(..., T, Dv)``.  scale defaults to 1/sqrt(Dk).
    """
    out, _ = _forward("softmax", dict(q=q, k=k, v=v), dict(causal=causal, scale=scale), backend)
    return out


@_op("linear")
def linear_attention(q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6,
                     backend="auto"):
    """Linear attention ``o_t = sum_i scale * phi(q_t).phi(k_i) v_i``, divided by
    ``sum_i scale * phi(q_t).phi(k_i) + eps`` when ``normalize``.  phi: identity, elu1 (elu+1) or relu."""
    out, _ = _forward("linear", dict(q=q, k=k, v=v),
                      dict(causal=causal, feature_map=feature_map, normalize=normalize, scale=scale, eps=eps),
                      backend)
    return out


@_op("decayed")
def decayed_attention(q, k, v, log_decay, scale=1.0, backend="auto", causal=True):
    """Decayed linear attention (always causal): ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``,
    ``o_t = scale * q_t^T S_t``, with ``g = log_decay <= 0`` of shape ``(..., T)``."""
    out, _ = _forward("decayed", dict(q=q, k=k, v=v, log_decay=log_decay), dict(scale=scale, causal=causal),
                      backend)
    return out


@_op("zeros")
def zeros_attention(q, k, v, s, gates, causal=True, backend="auto"):
    """ZeroS (zero-sum linear) attention, docs/spec.md section 3.4.  s: ``(..., T)`` radial logits; gates:
    ``(..., T, 2)`` (first-order and higher-order gates) or ``(..., T, 3)`` (plus a zero-order gate)."""
    out, _ = _forward("zeros", dict(q=q, k=k, v=v, s=s, gates=gates), dict(causal=causal), backend)
    return out


PUBLIC_OPS = {f._wb_op: f for f in (softmax_attention, linear_attention, decayed_attention, zeros_attention)}


def vjp(op, *arrays, **options):
    """``out, pullback = vjp(op, *arrays, **options)``; ``pullback(dout)`` returns one gradient per array
    argument, in argument order (softmax/linear: dq, dk, dv; decayed: + dlog_decay; zeros: + ds, dgates)."""
    name = getattr(op, "_wb_op", None)
    if name is None:
        raise TypeError(f"vjp: {op!r} is not a workbench op; pass one of "
                        f"{', '.join(f.__name__ for f in PUBLIC_OPS.values())}")
    arg_names = registry.ARRAY_ARGS[name]
    if len(arrays) != len(arg_names):
        raise TypeError(f"vjp: {op.__name__} takes {len(arg_names)} arrays ({', '.join(arg_names)}), "
                        f"got {len(arrays)}")
    backend = options.pop("backend", "auto")
    bound = inspect.signature(op).bind(*arrays, **options, backend=backend)
    bound.apply_defaults()
    opts = {k: v for k, v in bound.arguments.items() if k not in arg_names and k != "backend"}
    out, call = _forward(name, dict(zip(arg_names, arrays)), opts, backend)
    return out, _pullback(call)
