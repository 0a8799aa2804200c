"""Helpers shared by the NumPy references: working dtypes, masks, feature maps, stable sigmoid."""
from __future__ import annotations

import numpy as np

CHUNK = 64          # chunk length of the linear-time (chunked) references
BLOCK = 128         # tile size of the chunked (flash-style) softmax reference


def work_dtype(x) -> np.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return np.float64 if x.dtype == np.float64 else np.float32


def as_work(*arrays, dtype=None):
    dt = dtype or work_dtype(arrays[0])
    return tuple(np.asarray(a, dtype=dt) for a in arrays)


def causal_mask(T: int, causal: bool, offset_q: int = 0, offset_k: int = 0, Tq: int = None, Tk: int = None):
    """Boolean (Tq, Tk) mask: key i visible from query t when i <= t (causal) or always."""
    Tq = T if Tq is None else Tq
    Tk = T if Tk is None else Tk
    if not causal:
        return np.ones((Tq, Tk), dtype=bool)
    t = np.arange(offset_q, offset_q + Tq)[:, None]
    i = np.arange(offset_k, offset_k + Tk)[None, :]
    return i <= t


def feature_map(x, name: str):
    """phi(x) for identity, elu1 (elu(x)+1) and relu."""
    if name == "identity":
        return x
    if name == "relu":
        return np.maximum(x, 0)
    if name == "elu1":
        return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))
    raise ValueError(f"unknown feature_map {name!r}")


def feature_map_grad(x, name: str):
    """phi'(x): identity 1; relu [x>0]; elu1 1 for x>0, exp(x) otherwise."""
    if name == "identity":
        return np.ones_like(x)
    if name == "relu":
        return (x > 0).astype(x.dtype)
    if name == "elu1":
        return np.where(x > 0, 1, np.exp(np.minimum(x, 0))).astype(x.dtype)
    raise ValueError(f"unknown feature_map {name!r}")


def sigmoid(x):
    """Stable for any x (no exp overflow)."""
    return 0.5 * (1 + np.tanh(0.5 * x))


def chunks(T: int, C: int):
    for start in range(0, T, C):
        yield start, min(start + C, T)


def mT(x):
    return np.swapaxes(x, -1, -2)
