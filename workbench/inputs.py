"""Random inputs for every op, shared by ``check``, ``bench``, the tests and the experiments.

Never zeros: zeros hide unwritten outputs and wrong indexing.  ZeroS q and k are normalised to unit length,
as the layer does before the op.
"""
from __future__ import annotations

import numpy as np

from .registry import ARRAY_ARGS


def default_options(op: str, causal: bool = True, **extra) -> dict:
    """Options of the public op (all of them, with defaults) for one check/bench cell."""
    base = {
        "softmax": dict(causal=causal, scale=None),
        "linear": dict(causal=causal, feature_map="identity", normalize=False, scale=1.0, eps=1e-6),
        "decayed": dict(scale=1.0),
        "zeros": dict(causal=causal),
    }[op]
    base.update(extra)
    return base


def random_inputs(op: str, lead=(2,), T=16, Dk=8, Dv=None, dtype="float64", seed=0, n_gates=2,
                  log_decay_range=(-1.0, -0.01), feature_map="identity") -> tuple:
    """NumPy arrays (q, k, v[, log_decay | s, gates]) of the given shape and dtype."""
    Dv = Dk if Dv is None else Dv
    rng = np.random.default_rng(seed)
    lead = tuple(lead)
    q = rng.standard_normal((*lead, T, Dk))
    k = rng.standard_normal((*lead, T, Dk))
    v = rng.standard_normal((*lead, T, Dv))
    if op == "linear" and feature_map != "identity":
        q, k = q + 0.5, k + 0.5          # keep features mostly positive so normalisation is well posed
    if op in ("linear", "decayed"):
        q, k = q / np.sqrt(Dk), k / np.sqrt(Dk)
    arrays = [q, k, v]
    if op == "decayed":
        lo, hi = log_decay_range
        arrays.append(rng.uniform(lo, hi, (*lead, T)))
    if op == "zeros":
        arrays[0] = q / np.linalg.norm(q, axis=-1, keepdims=True)
        arrays[1] = k / np.linalg.norm(k, axis=-1, keepdims=True)
        arrays.append(rng.standard_normal((*lead, T)))
        arrays.append(rng.standard_normal((*lead, T, n_gates)))
    assert len(arrays) == len(ARRAY_ARGS[op])
    return tuple(a.astype(dtype) for a in arrays)


def random_state(op: str, lead=(2,), Dk=8, Dv=None, dtype="float64", seed=0, normalize=False):
    """A random state of ``op`` (workbench.state) with NumPy fields of ``lead`` + the field's shape (``lead``
    includes the sequence dim when packing), in the state dtype of ``dtype``.  Valid values: a positive
    denominator state z, ZeroS E >= 1 (the running max m is one of the sums' terms) and counts n >= 1."""
    from .state import STATE_TYPES, layout, state_dtype
    Dv = Dk if Dv is None else Dv
    rng = np.random.default_rng(seed + 104729)
    lead = tuple(lead)
    out = {}
    for name, shape in layout(op, Dk, Dv, normalize).items():
        x = rng.standard_normal(lead + shape)
        if name == "z":
            x = np.abs(x) + 0.5
        elif name == "E":
            x = 1 + np.abs(x)
        elif name == "n":
            x = rng.integers(1, 20, lead).astype(np.float64)
        elif name == "P":
            x = 3 * x
        elif op in ("linear", "decayed"):
            x = x / np.sqrt(Dk)
        out[name] = x.astype(state_dtype(dtype))
    return STATE_TYPES[op](**out)


def packed_lengths(T: int, pattern=(1, 63, 64, 65, 2, 127, 129)) -> tuple:
    """Offsets ``cu_seqlens`` cutting T positions into sequences of awkward lengths: the pattern's lengths
    in turn while they fit, then the remainder (sequences start and end inside chunks of 64)."""
    cu, i = [0], 0
    while cu[-1] < T:
        n = pattern[i % len(pattern)]
        i += 1
        left = T - cu[-1]
        cu.append(cu[-1] + (n if n < left else left))
    return tuple(cu)
