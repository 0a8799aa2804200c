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
valid); o has the inputs' dtype.  16-byte state accesses (width 4) when Dv % 4 == 0 and every state matrix
is 16-byte aligned, else 4-byte ones (width 1).  Launch: ``N * ceil(Dv / slab)`` blocks of ``threads``, no
dynamic shared memory, the block geometry (``GEOMETRIES``) picked by ``RULE`` from the width, Dk and the
number of blocks; ``geometry=`` (a key of ``GEOMETRIES``) overrides the rule (for measuring).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from workbench.backends import data_ptr, new_output
from workbench.state import DecayedState, LinearState, ZeroSState, map_state

from ._module import CTYPE, declare_groups, get_kernel, launch

SOURCE = "steps.cu"
OPS = ("linear", "decayed", "zeros")
WIDTHS = (4, 1)                     # state columns per thread (16-byte or 4-byte accesses)
FEATURE_MAPS = {"identity": 0, "elu1": 1, "relu": 2}


@dataclass(frozen=True)
class Geometry:
    """A block of steps.cu (its template arguments after the width): ``slab`` state columns of one head, all
    its rows, ``threads`` threads, each loading ``rows`` rows of ``width`` columns per pass before using any."""
    slab: int
    threads: int
    rows: int

    def rows_per_pass(self, width: int) -> int:
        return self.threads // (self.slab // width) * self.rows

    def check(self, width: int) -> None:
        cg = self.slab // width
        if self.slab % width or 32 % cg or self.threads % 32 or self.rows < 1:
            raise ValueError(f"step geometry {self} with width {width}: slab must be a multiple of the width, "
                             f"slab / width divide 32 and threads be a multiple of 32")


GEOMETRIES = {
    "narrow": Geometry(16, 128, 2),  # width 4: 64 rows per pass, 64-byte row segments, twice the blocks of wide
    "wide": Geometry(32, 256, 2),    # width 4: 64 rows per pass (2 x 4 floats per matrix and thread)
    "deep": Geometry(32, 256, 4),    # width 4: 128 rows per pass; width 1: 32
}
# The geometry of a call: the first line it meets -- (width, Dk at most, blocks at most, geometry), None: any.
# Every pass of rows is a dependent DRAM round trip, so a geometry covers Dk in one pass where it can; few
# heads take narrow slabs (twice the blocks, so twice the SMs share the state's traffic: up to 128 blocks,
# one per SM of an H100 / H200), more take wide ones (fewer threads per state byte: the registers of every
# block fit at once up to N = 256 heads of 64 x 64, ZeroS included).
RULE = (
    (4, 64, 128, "narrow"),
    (4, 64, None, "wide"),
    (4, None, None, "deep"),
    (1, None, None, "deep"),
)


def pick_geometry(width: int, N: int, Dk: int, Dv: int) -> str:
    """The name of the geometry ``RULE`` gives a call of ``N`` heads of Dk x Dv with this access width."""
    for w, max_dk, max_blocks, name in RULE:
        blocks = N * math.ceil(Dv / GEOMETRIES[name].slab)
        if w == width and (max_dk is None or Dk <= max_dk) and (max_blocks is None or blocks <= max_blocks):
            return name
    raise ValueError(f"no step geometry for width {width} (RULE lists widths {sorted({r[0] for r in RULE})})")


def expression(op: str, dtype: str, width: int, geometry: str) -> str:
    g = GEOMETRIES[geometry]
    return f"{op}_step<{CTYPE[dtype]}, {width}, {g.slab}, {g.threads}, {g.rows}>"


# the (width, geometry) pairs the rule can pick, in its order (checked once here, not per step)
RULE_SHAPES = tuple(dict.fromkeys((w, name) for w, _, _, name in RULE))
for _w, _name in RULE_SHAPES:
    GEOMETRIES[_name].check(_w)


def instantiations(ops=OPS) -> list:
    """[(source, expression)] of the step kernels of ``ops`` (those without steps are left out)."""
    return [(SOURCE, expression(op, dt, w, g)) for op in OPS if op in ops for dt in CTYPE for w, g in RULE_SHAPES]


INSTANTIATIONS = instantiations()
# one compile group per op: a decode loop of one op compiles (or loads) only that op's kernels
declare_groups(SOURCE, [[expression(op, dt, w, g) for dt in CTYPE for w, g in RULE_SHAPES] for op in OPS])


def unsupported(dtype: str, Dk: int) -> Optional[str]:
    """Why the kernels cannot take a step of this dtype and key dim (None: they can; any Dk: rows beyond
    one pass take more passes)."""
    if dtype not in CTYPE:
        return f"dtype {dtype} (the step kernels take {', '.join(CTYPE)})"
    return None


def _contiguous(cp, x):
    return x if x.flags.c_contiguous else cp.ascontiguousarray(x)


def _width(Dv: int, matrices) -> int:
    """4 when every state matrix's rows start on 16 bytes, else 1."""
    return 4 if Dv % 4 == 0 and all(data_ptr(x) % 16 == 0 for x in matrices) else 1


def _new_like(cp, x):
    return new_output(cp, x.shape, cp.float32)


def _launch(op: str, dtype: str, width: int, v, Dk: int, args: tuple, geometry: Optional[str]) -> None:
    """One block per head (N = v's leading size) and slab of state columns."""
    N, Dv = math.prod(v.shape[:-1]), v.shape[-1]
    if geometry is None:
        geometry = pick_geometry(width, N, Dk, Dv)            # RULE's geometries: checked at import
    elif geometry not in GEOMETRIES:
        raise ValueError(f"unknown step geometry {geometry!r}; expected one of {', '.join(GEOMETRIES)}")
    else:
        GEOMETRIES[geometry].check(width)
    g = GEOMETRIES[geometry]
    if N == 0:
        return
    launch(get_kernel(SOURCE, expression(op, dtype, width, geometry)), (N * math.ceil(Dv / g.slab),),
           (g.threads,), args)


def linear_step(q, k, v, state: LinearState, feature_map: str, normalize: bool, scale: float, eps: float,
                geometry: Optional[str] = None):
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
             np.int32(Dv), np.int32(FEATURE_MAPS[feature_map]), np.float32(scale), np.float32(eps)), geometry)
    return o, LinearState(S_out, z_out)


def decayed_step(q, k, v, log_decay, state: DecayedState, scale: float, geometry: Optional[str] = None):
    """One token of decayed linear attention."""
    import cupy as cp
    q, k, v, g = (_contiguous(cp, x) for x in (q, k, v, log_decay))
    S = _contiguous(cp, state.S)
    Dk, Dv = q.shape[-1], v.shape[-1]
    o = new_output(cp, v.shape, v.dtype)
    S_out = _new_like(cp, S)
    _launch("decayed", str(q.dtype), _width(Dv, (S, S_out)), v, Dk,
            (q, k, v, g, S, S_out, o, np.int32(Dk), np.int32(Dv), np.float32(scale)), geometry)
    return o, DecayedState(S_out)


def zeros_step(q, k, v, s, gates, state: ZeroSState, geometry: Optional[str] = None):
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
             new.F, new.G, new.H, new.m, new.E, new.P, new.n, o, np.int32(Dk), np.int32(Dv)), geometry)
    return o, new
