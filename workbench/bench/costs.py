"""FLOP and minimum-byte models of every op, per pass, as functions of shape and options (docs/spec.md section 5).

Conventions (the README's bench section repeats them):

* FLOPs count the contractions only -- the dot products and outer products that dominate the work --
  at 2 FLOPs per multiply-add.  Elementwise work (exp, max, scaling, feature maps, decay factors, gates,
  row sums) is O(T) or O(pairs) with a small constant and is not counted.
* Everything is counted per leading index and multiplied by ``N`` (batch x heads).
* ``pairs`` is the number of (query t, key i) pairs an explicit form touches: ``T^2`` non-causal and
  ``T (T + 1) / 2`` causal (the pairs i <= t, exactly; about half of T^2 at large T).
* Two algorithm forms, chosen per variant (``Variant.form``, else inferred, see ``form_of``):

  - ``quadratic``: the explicit pairwise form (softmax always; the explicit / parallel forms of the
    others).  Forward per pair: the score ``q_t.k_i`` (Dk MACs) and the weighted sum into ``o_t``
    (Dv MACs): ``2 pairs (Dk + Dv)``.  Backward per pair (flash-style, scores recomputed):
    score ``q.k`` (Dk), ``dP = do v^T`` (Dv), ``dv += P^T do`` (Dv), ``dq += dS k`` (Dk),
    ``dk += dS^T q`` (Dk): ``2 pairs (3 Dk + 2 Dv)``.
  - ``linear``: the "algorithmic" FLOPs of the recurrent state form, whatever the chunk size a kernel
    uses (so variants with different chunkings are compared on the same work).  Per token and per
    ``Dk x Dv`` state: one state update ``k_t v_t^T`` and one read-out ``q_t^T S_t``: ``2 Dk Dv`` MACs
    per state forward; backward recomputes the state, reads out ``dq``, accumulates the reverse state
    ``sum q do^T`` and reads out ``dk`` and ``dv``: ``5 Dk Dv`` MACs per state.  Linear and decayed
    attention have one state, ZeroS three (F, G, H): ``OpSpec.linear_states`` (workbench/opspec.py), 0 for an
    op with no linear-time form (softmax).  Causal or not, the count is the same.
    A chunked kernel executes more than this (the C x C diagonal blocks add ``~C (Dk + Dv)`` MACs per
    token): its time against this count is what the reader wants to compare.

  Backward / forward is therefore 2.5 in both forms when Dk = Dv (the FlashAttention convention).
* Steps (decode, ``step_*``): one token per state.  FLOPs: the update ``k v^T`` and the read-out ``q^T S``,
  ``4 Dk Dv`` per state matrix (ZeroS: three).  Bytes: the state read and written once (its dtype: float32,
  float64 for float64 inputs; with the linear denominator's ``z`` and ZeroS's four scalars), the token's
  arrays read and ``o`` written once.  The decode goal is stated against the state's read alone
  (``step_state_bytes``).
* Minimum bytes (docs/spec.md section 5): each input read once and each output written once, in the dtype's
  itemsize.  Forward: the op's arrays in, ``o`` out.  Backward: the op's arrays and ``do`` in, one gradient
  per array out.  Forward+backward: the op's arrays and ``do`` in, ``o`` and the gradients out (the
  output is written once; it is not read back).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..opspec import SPECS

PASSES = ("fwd", "bwd", "fwdbwd")
FORMS = ("quadratic", "linear")

# Variant names that mean the explicit pairwise form when a variant does not set ``form``.
_QUADRATIC_NAMES = ("explicit", "naive", "quadratic", "parallel", "pairwise", "dense")


@dataclass(frozen=True)
class Shape:
    """One cell's shape: N leading (batch x heads), T positions, head dims Dk and Dv, gates per token."""
    N: int
    T: int
    Dk: int
    Dv: int
    n_gates: int = 2


def form_of(op: str, name: str = "", form: str = "") -> str:
    """The cost form of a variant: its declared ``form``; an op with no linear-time form (softmax) is always
    quadratic; otherwise "quadratic" when the name says explicit/naive/parallel..., else "linear"."""
    if form:
        if form not in FORMS:
            raise ValueError(f"unknown cost form {form!r}; expected one of {FORMS}")
        return form
    if not SPECS[op].linear_states:
        return "quadratic"
    return "quadratic" if any(w in name.lower() for w in _QUADRATIC_NAMES) else "linear"


def pairs(T: int, causal: bool) -> int:
    """(query, key) pairs an explicit form touches: T^2, or T(T+1)/2 causal (i <= t)."""
    return T * (T + 1) // 2 if causal else T * T


def flops(op: str, form: str, shape: Shape, causal: bool, pass_: str) -> float:
    """Contraction FLOPs (2 per multiply-add) of one pass over all N leading indices."""
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
    causal = causal or bool(SPECS[op].causal_only)
    N, T, Dk, Dv = shape.N, shape.T, shape.Dk, shape.Dv
    if form == "quadratic":
        P = pairs(T, causal)
        fwd = 2 * P * (Dk + Dv)
        bwd = 2 * P * (3 * Dk + 2 * Dv)
    elif form == "linear":
        S = SPECS[op].linear_states
        if not S:
            raise ValueError(f"{SPECS[op].title} has no linear-time form")
        fwd = 2 * T * S * 2 * Dk * Dv
        bwd = 2 * T * S * 5 * Dk * Dv
    else:
        raise ValueError(f"unknown cost form {form!r}")
    per = {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[pass_]
    return float(N * per)


def array_elements(op: str, shape: Shape) -> dict:
    """Elements of each array argument of the op (in argument order) for one cell."""
    size = dict(T=shape.T, Dk=shape.Dk, Dv=shape.Dv, G=shape.n_gates)
    return {a.name: shape.N * math.prod(size[d] for d in a.dims) for a in SPECS[op].arrays}


def min_bytes(op: str, shape: Shape, dtype: str, pass_: str) -> float:
    """Minimum bytes moved: each input read once, each output written once (see the module doc)."""
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; expected one of {PASSES}")
    item = itemsize(dtype)
    inputs = sum(array_elements(op, shape).values())
    out = shape.N * shape.T * shape.Dv                  # o, and also do
    if pass_ == "fwd":
        elements = inputs + out
    elif pass_ == "bwd":
        elements = inputs + out + inputs                # arrays + do in, one gradient per array out
    else:
        elements = inputs + out + out + inputs          # arrays + do in, o + gradients out
    return float(elements * item)


def itemsize(dtype: str) -> int:
    if dtype == "bfloat16":
        return 2
    if dtype == "tf32":
        return 4
    return np.dtype(dtype).itemsize


def achieved(flop: float, nbytes: float, seconds: float, peak_flops: float = None, peak_bw: float = None) -> dict:
    """Achieved rates and the roofline fraction of one measurement.

    tflops, gbps: FLOPs and minimum bytes per second; intensity: FLOP / byte; bound_ms: the roofline's
    lower bound max(FLOPs / peak_flops, bytes / peak_bw); roof_frac = bound / measured time (1 = at the
    roof).  Peaks in FLOP/s and byte/s; a missing peak leaves the bound out.
    """
    r = {"flops": flop, "bytes": nbytes, "intensity": flop / nbytes if nbytes else None,
         "tflops": flop / seconds / 1e12 if seconds else None,
         "gbps": nbytes / seconds / 1e9 if seconds else None, "bound_ms": None, "roof_frac": None}
    terms = []
    if peak_flops:
        terms.append(flop / peak_flops)
    if peak_bw:
        terms.append(nbytes / peak_bw)
    if terms and seconds:
        bound = max(terms)
        r["bound_ms"] = bound * 1e3
        r["roof_frac"] = bound / seconds
    return r


# ----------------------------------------------------------------------------- steps (decode)
def step_state_bytes(op: str, N: int, Dk: int, Dv: int, dtype: str, normalize: bool = False) -> float:
    """Bytes of the state of N heads (read once per step; written once too)."""
    extra = {"linear": Dk if normalize else 0, "decayed": 0, "zeros": 4}[op]
    state_item = 8 if dtype == "float64" else 4
    return float(N * (SPECS[op].linear_states * Dk * Dv + extra) * state_item)


def step_bytes(op: str, N: int, Dk: int, Dv: int, dtype: str, normalize: bool = False, n_gates: int = 2) -> float:
    """Minimum bytes of one step of N heads: the state read and written, the token's arrays read, o written."""
    el = array_elements(op, Shape(N, 1, Dk, Dv, n_gates))
    return 2 * step_state_bytes(op, N, Dk, Dv, dtype, normalize) + (sum(el.values()) + N * Dv) * itemsize(dtype)


def step_flops(op: str, N: int, Dk: int, Dv: int) -> float:
    """Contraction FLOPs of one step of N heads: update and read-out of every state matrix."""
    return float(N * SPECS[op].linear_states * 4 * Dk * Dv)
