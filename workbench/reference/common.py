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


def feature_map_by_parts(x, name: str):
    """phi(x) written another way, for the linear-time reference: identity x, relu clip(x, 0), elu1
    max(x, 0) + exp(min(x, 0)) (the same values, bit for bit).  The explicit reference uses ``feature_map``,
    so ``check``'s comparison of the two references catches a wrong feature map in either (a wrong value that
    keeps the derivative, such as a constant added, passes the finite-difference cells)."""
    if name == "identity":
        return x
    if name == "relu":
        return np.clip(x, 0, None)
    if name == "elu1":
        return np.maximum(x, 0) + np.exp(np.minimum(x, 0))
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


# ----------------------------------------------------------------------------- packed sequences and states
def sequences(T: int, cu=None) -> list:
    """[(j, start, end)] of the sequences packed into T positions (``cu``: offsets; None: one sequence)."""
    cu = (0, T) if cu is None else cu
    return [(j, a, b) for j, (a, b) in enumerate(zip(cu[:-1], cu[1:]))]


def sequence_ids(T: int, cu=None) -> np.ndarray:
    """(T,) the sequence of every position."""
    ids = np.empty(T, dtype=np.int64)
    for j, a, b in sequences(T, cu):
        ids[a:b] = j
    return ids


def packed_mask(T: int, causal: bool, cu=None) -> np.ndarray:
    """Boolean (T, T): key i visible from query t when both are in one sequence (and i <= t when causal)."""
    ids = sequence_ids(T, cu)
    return causal_mask(T, causal) & (ids[:, None] == ids[None, :])


def state_as(state, dtype):
    """The state with every field as a ``dtype`` NumPy array (None stays None)."""
    from ..state import map_state
    return None if state is None else map_state(lambda a: np.asarray(a, dtype=dtype), state)


def packed_forward(one, arrays, dt, cu, state, return_state, **options):
    """A linear-time reference's forward over packed sequences: ``one(*arrays_j, state=state_j, **options)
    -> (out_j, final_j, ctx_j)`` on each sequence (arrays (N, T, ...) in the work dtype, sliced along T;
    ``state`` (N, nseq, ...) indexed along the sequence dim, or None).  Returns the variant's ``(result,
    ctx)``: result ``out`` (cast to ``dt``), or ``(out, final state (N, nseq, ...))`` with return_state."""
    from ..state import select, stack
    T = arrays[0].shape[1]
    outs, finals, ctxs = [], [], []
    for j, a, b in sequences(T, cu):
        o, fin, c = one(*(x[:, a:b] for x in arrays), state=None if state is None else select(state, j), **options)
        outs.append(o)
        finals.append(fin)
        ctxs.append(c)
    out = np.concatenate(outs, axis=1).astype(dt)
    return ((out, stack(finals)) if return_state else out), (ctxs, cu, state is not None, dt, arrays[0].dtype)


def packed_backward(one, ctx, dout, dstate):
    """The backward of ``packed_forward``: ``one(ctx_j, dout_j, dfinal_j) -> (grads_j, dstate0_j)`` per
    sequence, in the work dtype; returns the array gradients joined along T in the input dtype, plus the
    initial state's gradient (N, nseq, ...) when the forward had one."""
    from ..state import select, stack
    ctxs, cu, has_state, dt, wdt = ctx
    dout, dstate = dout.astype(wdt), state_as(dstate, wdt)
    grads, dstates = [], []
    for (j, a, b), c in zip(sequences(dout.shape[1], cu), ctxs):
        g, d0 = one(c, dout[:, a:b], None if dstate is None else select(dstate, j))
        grads.append(g)
        dstates.append(d0)
    joined = tuple(np.concatenate(gs, axis=1).astype(dt) for gs in zip(*grads))
    return joined + ((stack(dstates),) if has_state else ())
