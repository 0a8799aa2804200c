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
