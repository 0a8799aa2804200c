"""The state a linear-time op carries from one token to the next, and packed sequences (``cu_seqlens``).

Linear, decayed and ZeroS attention are recurrences: whatever a call has seen so far is summarised in a
fixed-size state, so a sequence can be run in pieces (state in, state out), one token at a time (the
``*_step`` functions) or as one of many sequences packed into one T axis.

State objects (frozen dataclasses; the fields are NumPy or CuPy arrays, one kind per object):

    LinearState(S, z=None)                 linear_attention
        S (..., Dk, Dv)   sum_i phi(k_i) v_i^T
        z (..., Dk)       sum_i phi(k_i): the denominator's state, present exactly when normalize=True
    DecayedState(S)                        decayed_attention
        S (..., Dk, Dv)   S_t = exp(g_t) S_{t-1} + k_t v_t^T
    ZeroSState(m, E, P, n, F, G, H)        zeros_attention
        m (...,)          running maximum of the radial logits s seen so far (-inf: none yet)
        E (...,)          sum_i exp(s_i - m)
        P (...,)          sum_i s_i
        n (...,)          number of tokens seen (a float array: the op divides by it)
        F (..., Dk, Dv)   sum_i exp(s_i - m) k_i v_i^T
        G (..., Dk, Dv)   sum_i s_i k_i v_i^T
        H (..., Dk, Dv)   sum_i k_i v_i^T
    KVCache(k, v)                          softmax_attention_step (softmax has no fixed-size state)
        k (..., Tc, Dk), v (..., Tc, Dv)   the keys and values so far

``...`` are the op's leading dims; with ``cu_seqlens`` a state holds one entry per sequence:
``(..., nseq, Dk, Dv)``.  State arrays are float64 for float64 inputs and float32 for float16, bfloat16
and float32 inputs (``state_dtype``): a state sums over every token so far, more than a half-precision
number holds.

An initial state S0 enters every output of its sequence: for decayed attention it reaches row t decayed by
``exp(G_t)``, ``G_t`` the sum of the sequence's log decays up to and including t; for linear attention
with ``normalize`` the denominator starts from ``z0``; ZeroS continues its running max, sums and count.
The returned (final) state is the state after the last token of each sequence, exactly what a later call
needs to continue: running a sequence in two calls, the state handed over, equals one call (forward and
every gradient).  States exist for causal calls only.

Gradients have the same type: the gradient of the initial state is a state object whose fields hold
dL/d(field); a pullback takes the final state's gradient as such an object (fields may be None: zero).

``cu_seqlens``: offsets of the sequences packed into the T axis, ``0 = c_0 < c_1 < ... < c_nseq = T``
(1-D integers; a NumPy/CuPy array, list or tuple); sequence j is positions ``[c_j, c_{j+1})``.  No token
attends across a boundary; every sequence starts from its own initial state (or zeros).  Sequences of
length 0 are refused.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class LinearState:
    """State of linear attention: ``S`` (..., Dk, Dv); ``z`` (..., Dk) with normalize=True, else None."""
    S: Any
    z: Any = None


@dataclass(frozen=True)
class DecayedState:
    """State of decayed linear attention: ``S`` (..., Dk, Dv)."""
    S: Any


@dataclass(frozen=True)
class ZeroSState:
    """State of ZeroS attention: running max ``m``, ``E = sum e^{s-m}``, ``P = sum s``, count ``n`` (all
    (...,)), and ``F = sum e^{s-m} k v^T``, ``G = sum s k v^T``, ``H = sum k v^T`` (..., Dk, Dv)."""
    m: Any
    E: Any
    P: Any
    n: Any
    F: Any
    G: Any
    H: Any


@dataclass(frozen=True)
class KVCache:
    """Softmax attention's "state" for ``softmax_attention_step``: the keys (..., Tc, Dk) and values
    (..., Tc, Dv) seen so far (Tc may be 0)."""
    k: Any
    v: Any


STATE_TYPES = {"linear": LinearState, "decayed": DecayedState, "zeros": ZeroSState}
STATE_OPS = tuple(STATE_TYPES)


def layout(op: str, Dk: int, Dv: int, normalize: bool = False) -> dict:
    """The trailing shape of every field of ``op``'s state (after the leading and sequence dims)."""
    if op == "linear":
        return {"S": (Dk, Dv), "z": (Dk,)} if normalize else {"S": (Dk, Dv)}
    if op == "decayed":
        return {"S": (Dk, Dv)}
    if op == "zeros":
        return {"m": (), "E": (), "P": (), "n": (), "F": (Dk, Dv), "G": (Dk, Dv), "H": (Dk, Dv)}
    raise ValueError(f"{op} attention has no state; states exist for {', '.join(STATE_OPS)}")


def state_dtype(dtype) -> str:
    """The dtype of state arrays for inputs of ``dtype``: float64 stays float64, anything else float32."""
    return "float64" if str(dtype) == "float64" else "float32"


def fields(state) -> dict:
    """name -> array for the fields that are set (None fields left out)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if getattr(state, f.name) is not None}


def map_state(fn, *states):
    """A state of the same type with ``fn(field of each state, ...)`` per set field of the first."""
    first = states[0]
    return type(first)(**{name: fn(*(getattr(s, name) for s in states)) for name in fields(first)})


def empty_state(op: str, lead, Dk: int, Dv: int, dtype="float64", xp=np, normalize: bool = False):
    """The state before any token: zeros, and ``m = -inf`` for ZeroS.  ``lead``: the leading dims (with the
    sequence dim last when packing)."""
    lead = tuple(lead)
    out = {name: xp.zeros(lead + shape, dtype=state_dtype(dtype)) for name, shape in layout(op, Dk, Dv,
                                                                                          normalize).items()}
    if op == "zeros":
        out["m"] = xp.full(lead, -np.inf, dtype=state_dtype(dtype))
    return STATE_TYPES[op](**out)


def select(state, index):
    """The state of one sequence: every field indexed by ``index`` along axis 1 (layout (N, nseq, ...))."""
    return map_state(lambda a: a[:, index], state)


def stack(states, xp=np):
    """Per-sequence states (fields (N, ...)) -> one state with fields (N, nseq, ...)."""
    return map_state(lambda *a: xp.stack(a, axis=1), *states)


# ----------------------------------------------------------------------------- validation
def check_cu_seqlens(where: str, cu_seqlens, T: int) -> Optional[tuple]:
    """``cu_seqlens`` as a tuple of Python ints, checked: 1-D integers, 0 first, T last, strictly
    increasing (no zero-length sequence).  None stays None.  A CuPy array is copied to the host (a device
    sync: pass a tuple, list or NumPy array on the fast path)."""
    if cu_seqlens is None:
        return None
    x = cu_seqlens.get() if type(cu_seqlens).__module__.startswith("cupy") else cu_seqlens
    if isinstance(x, np.ndarray):
        ok = x.ndim == 1 and np.issubdtype(x.dtype, np.integer)
        cu = tuple(x.tolist()) if ok else ()
    else:
        ok = isinstance(x, (list, tuple)) and all(isinstance(c, numbers.Integral) and not isinstance(c, bool)
                                                   for c in x)
        cu = tuple(int(c) for c in x) if ok else ()
    if not ok or len(cu) < 2:
        raise ValueError(f"{where}: argument 'cu_seqlens' must be a 1-D sequence of at least 2 integers "
                         f"(offsets 0 = c_0 < c_1 < ... < c_nseq = T of the packed sequences), got "
                         f"{_short(cu_seqlens)}")
    if cu[0] != 0 or cu[-1] != T:
        raise ValueError(f"{where}: argument 'cu_seqlens' must start at 0 and end at T = {T} (the packed "
                         f"length), got {_short(cu)}")
    for j, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        if b <= a:
            what = "a zero-length sequence" if a == b else "decreasing offsets"
            raise ValueError(f"{where}: argument 'cu_seqlens' must be strictly increasing; sequence {j} has "
                             f"length {b - a} ({what}: c[{j}] = {a}, c[{j + 1}] = {b})")
    return cu


def _short(x) -> str:
    s = repr(x)
    return s if len(s) <= 80 else s[:77] + "..."


def check_state(where: str, op: str, state, *, lead: tuple, Dk: int, Dv: int, dtype: str, kind: str,
                normalize: bool = False, name: str = "initial_state", allow_none_fields: bool = False):
    """Validate a state (or a state's gradient) for a call: its type, which fields are set, every field's
    array kind, dtype (``state_dtype(dtype)``) and shape (``lead`` + the field's trailing shape; ``lead``
    includes the sequence dim when packing).  ``allow_none_fields``: None fields stand for zeros (a
    gradient).  Returns the state."""
    from .backends import array_kind
    cls = STATE_TYPES[op]
    if not isinstance(state, cls):
        raise TypeError(f"{where}: argument {name!r} must be a workbench.{cls.__name__} "
                        f"({', '.join(f.name for f in dataclasses.fields(cls))}), got {type(state).__name__}")
    want = layout(op, Dk, Dv, normalize)
    sdt = state_dtype(dtype)
    for f in dataclasses.fields(cls):
        x = getattr(state, f.name)
        if f.name not in want:
            if x is not None:
                raise ValueError(f"{where}: argument {name!r} has field {f.name!r} set, but this call has no "
                                 f"such state (z is the denominator's state: normalize=True only); pass None")
            continue
        if x is None:
            if allow_none_fields:
                continue
            extra = " (normalize=True carries the denominator's state z)" if f.name == "z" else ""
            raise ValueError(f"{where}: argument {name!r} needs field {f.name!r}{extra}")
        try:
            k = array_kind(x)
        except TypeError as e:
            raise TypeError(f"{where}: argument {name!r}, field {f.name!r}: {e}") from None
        if k != kind:
            raise TypeError(f"{where}: argument {name!r}, field {f.name!r} is a {k} array but the op's inputs "
                            f"are {kind} arrays")
        shape = tuple(lead) + want[f.name]
        if tuple(x.shape) != shape:
            raise ValueError(f"{where}: argument {name!r}, field {f.name!r} must have shape {shape}, got "
                             f"{tuple(x.shape)}")
        if str(x.dtype) != sdt:
            raise TypeError(f"{where}: argument {name!r}, field {f.name!r} has dtype {x.dtype}; states of "
                            f"{dtype} inputs are {sdt}")
    return state
