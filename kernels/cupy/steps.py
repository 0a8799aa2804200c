"""CuPy step kernels (kernels/cuda/steps.cu): one token of linear, decayed or ZeroS attention for every head
of a batch in one launch.  ``workbench/steps.py`` calls these for CuPy arrays of float16, bfloat16 and
float32 (``unsupported`` says when it cannot); they are not registry variants (a step has no backward).

    o, new_state = linear_step(q, k, v, state, feature_map, normalize, scale, eps)
    o, new_state = decayed_step(q, k, v, log_decay, state, scale)
    o, new_state = zeros_step(q, k, v, s, gates, state)

Shapes as the public steps: q, k ``(..., Dk)``, v ``(..., Dv)``, log_decay and s ``(...,)``, gates
``(..., 2|3)``, one storage dtype; the state (workbench/state.py) has float32 fields with the same leading
dims.  The arguments are taken as validated (workbench/steps.py validates).  Non-contiguous arrays are
copied first.  The new state is written to new arrays (the kernel is double-buffered: the old state stays
valid); o has the inputs' dtype.  Launch: ``N * ceil(Dv / 32)`` blocks of 256 threads, 8 Dk bytes of
dynamic shared memory; 16-byte state accesses (width 4) when Dv % 4 == 0 and every state matrix is
16-byte aligned, else 4-byte ones (width 1).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from workbench.backends import data_ptr, new_output
from workbench.state import DecayedState, LinearState, ZeroSState, map_state

from ._module import CTYPE, STATIC_SMEM_LIMIT, declare_groups, get_kernel, launch

SOURCE = "steps.cu"
OPS = ("linear", "decayed", "zeros")
WIDTHS = (4, 1)                     # state columns per thread (16-byte or 4-byte accesses)
THREADS = 256                       # block size     (steps.cu: wbstep::THREADS)
SLAB = 32                           # columns per block (wbstep::SLAB)
FEATURE_MAPS = {"identity": 0, "elu1": 1, "relu": 2}
MAX_DK = STATIC_SMEM_LIMIT // 8     # q and k staged in shared memory as 2 Dk floats, without the opt-in


def expression(op: str, dtype: str, width: int) -> str:
    return f"{op}_step<{CTYPE[dtype]}, {width}>"


def instantiations(ops=OPS) -> list:
    """[(source, expression)] of the step kernels of ``ops`` (those without steps are left out)."""
    return [(SOURCE, expression(op, dt, w)) for op in OPS if op in ops for dt in CTYPE for w in WIDTHS]


INSTANTIATIONS = instantiations()
# one compile group per op: a decode loop of one op compiles (or loads) only that op's six kernels
declare_groups(SOURCE, [[expression(op, dt, w) for dt in CTYPE for w in WIDTHS] for op in OPS])


def unsupported(dtype: str, Dk: int) -> Optional[str]:
    """Why the kernels cannot take a step of this dtype and key dim (None: they can)."""
    if dtype not in CTYPE:
        return f"dtype {dtype} (the step kernels take {', '.join(CTYPE)})"
    if Dk > MAX_DK:
        return f"Dk = {Dk} above {MAX_DK} (q and k are staged in 48 KiB of shared memory)"
    return None


def _contiguous(cp, x):
    return x if x.flags.c_contiguous else cp.ascontiguousarray(x)


def _width(Dv: int, matrices) -> int:
    """4 when every state matrix's rows start on 16 bytes, else 1."""
    return 4 if Dv % 4 == 0 and all(data_ptr(x) % 16 == 0 for x in matrices) else 1


def _new_like(cp, x):
    return new_output(cp, x.shape, cp.float32)


def _launch(op: str, dtype: str, width: int, v, Dk: int, args: tuple) -> None:
    """One block per head (N = v's leading size) and 32 state columns."""
    N, Dv = math.prod(v.shape[:-1]), v.shape[-1]
    if N == 0:
        return
    launch(get_kernel(SOURCE, expression(op, dtype, width)), (N * math.ceil(Dv / SLAB),), (THREADS,), args,
           shared_mem=8 * Dk)


def linear_step(q, k, v, state: LinearState, feature_map: str, normalize: bool, scale: float, eps: float):
    """One token of linear attention (``state.z`` set exactly when ``normalize``)."""
    import cupy as cp
    q, k, v = (_contiguous(cp, x) for x in (q, k, v))
    S = _contiguous(cp, state.S)
    z = _contiguous(cp, state.z) if normalize else None
    Dk, Dv = q.shape[-1], v.shape[-1]
    o = new_output(cp, v.shape, v.dtype)
    S_out = _new_like(cp, S)
    z_out = _new_like(cp, z) if normalize else None
    null = np.uint64(0)
    _launch("linear", str(q.dtype), _width(Dv, (S, S_out)), v, Dk,
            (q, k, v, S, null if z is None else z, S_out, null if z_out is None else z_out, o, np.int32(Dk),
             np.int32(Dv), np.int32(FEATURE_MAPS[feature_map]), np.float32(scale), np.float32(eps)))
    return o, LinearState(S_out, z_out)


def decayed_step(q, k, v, log_decay, state: DecayedState, scale: float):
    """One token of decayed linear attention."""
    import cupy as cp
    q, k, v, g = (_contiguous(cp, x) for x in (q, k, v, log_decay))
    S = _contiguous(cp, state.S)
    Dk, Dv = q.shape[-1], v.shape[-1]
    o = new_output(cp, v.shape, v.dtype)
    S_out = _new_like(cp, S)
    _launch("decayed", str(q.dtype), _width(Dv, (S, S_out)), v, Dk,
            (q, k, v, g, S, S_out, o, np.int32(Dk), np.int32(Dv), np.float32(scale)))
    return o, DecayedState(S_out)


def zeros_step(q, k, v, s, gates, state: ZeroSState):
    """One token of ZeroS attention."""
    import cupy as cp
    q, k, v, s, gates = (_contiguous(cp, x) for x in (q, k, v, s, gates))
    st = map_state(lambda x: _contiguous(cp, x), state)
    Dk, Dv = q.shape[-1], v.shape[-1]
    o = new_output(cp, v.shape, v.dtype)
    new = map_state(lambda x: _new_like(cp, x), st)
    mats = (st.F, st.G, st.H, new.F, new.G, new.H)
    _launch("zeros", str(q.dtype), _width(Dv, mats), v, Dk,
            (q, k, v, s, gates, np.int32(gates.shape[-1]), st.F, st.G, st.H, st.m, st.E, st.P, st.n,
             new.F, new.G, new.H, new.m, new.E, new.P, new.n, o, np.int32(Dk), np.int32(Dv)))
    return o, new
