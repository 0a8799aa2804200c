"""Random inputs for every op, shared by ``check``, ``bench``, the tests and the experiments.

Never zeros: zeros hide unwritten outputs and wrong indexing.  ZeroS q and k are normalised to unit length,
as the layer does before the op.
"""
from __future__ import annotations

import numpy as np

from .opspec import LOG_DECAY_RANGE, spec


def numpy_dtype(dtype) -> np.dtype:
    """The NumPy dtype of a dtype name; "bfloat16" through ml_dtypes (NumPy has none), imported here so that its
    name is known however the caller got here."""
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("bfloat16 inputs need ml_dtypes (NumPy has no bfloat16)") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def default_options(op: str, causal: bool = True, **extra) -> dict:
    """Options of the public op (all of them, with defaults) for one check/bench cell (workbench/opspec.py)."""
    return spec(op).default_options(causal, **extra)


def random_inputs(op: str, lead=(2,), T=16, Dk=8, Dv=None, dtype="float64", seed=0, n_gates=2,
                  log_decay_range=LOG_DECAY_RANGE, feature_map="identity") -> tuple:
    """NumPy arrays (q, k, v[, log_decay | s, gates]) of the given shape and dtype: q, k, v drawn N(0, 1),
    then shaped and completed by the op's generator (``OpSpec.make_inputs``)."""
    Dv = Dk if Dv is None else Dv
    sp = spec(op)
    rng = np.random.default_rng(seed)
    lead = tuple(lead)
    q = rng.standard_normal((*lead, T, Dk))
    k = rng.standard_normal((*lead, T, Dk))
    v = rng.standard_normal((*lead, T, Dv))
    given = dict(n_gates=n_gates, log_decay_range=log_decay_range, feature_map=feature_map)
    arrays = sp.make_inputs(rng, q, k, v, **{a: given[a] for a in sp.input_args})
    assert len(arrays) == len(sp.arrays)
    dt = numpy_dtype(dtype)
    return tuple(a.astype(dt) for a in arrays)


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
        elif spec(op).scaled_qk:
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
