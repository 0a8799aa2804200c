"""Launch code of kernels/cuda/wgmma_check.cu: 64 x 64 x 64 products through Hopper's warpgroup MMA (wgmma.cuh), so
that tests compare the instruction on a GPU, and the emulator's model of it on the CPU, with NumPy on the same
tiles (tests/test_wgmma.py).  Registers no variant.

    c = product(a, b, ta=False, tb=True, rs=False)      # a, b: (n, 64, 64) float16 / bfloat16 CuPy arrays

``ta`` / ``tb`` choose how the tiles are read (wgmma_check.cu): A = a[i] (K-major) or a[i]^T (ta: M-major); B =
b[i]^T (K-major) or b[i] (tb: N-major); ``rs``: A from registers.  ``c0`` (n, 64, 64) float32: accumulated into.
"""
from __future__ import annotations

from ._module import CTYPE, declare_groups, get_kernel, launch, sm90a

SOURCE = "wgmma_check.cu"
FORMS = tuple((ta, tb, rs) for ta in (False, True) for tb in (False, True) for rs in (False, True))
SMEM = 2 * 64 * 64 * 2 + 1024          # two swizzled tiles and the slack that aligns them to 1024 bytes


def _expr(ctype: str, ta: bool, tb: bool, rs: bool) -> str:
    return f"wgmma_product<{ctype}, {str(ta).lower()}, {str(tb).lower()}, {str(rs).lower()}>"


GROUPS = {dt: tuple(_expr(CTYPE[dt], *f) for f in FORMS) for dt in ("float16", "bfloat16")}
INSTANTIATIONS = [(SOURCE, e) for grp in GROUPS.values() for e in grp]
declare_groups(SOURCE, GROUPS.values())


def product(a, b, *, ta: bool = False, tb: bool = False, rs: bool = False, c0=None):
    """(n, 64, 64) float32: A B of each pair of tiles (see the module docstring)."""
    import cupy as cp
    if not sm90a():
        raise RuntimeError("wgmma needs a compute capability 9.0 GPU (sm_90a)")
    dt = str(a.dtype)
    if dt not in GROUPS or b.dtype != a.dtype:
        raise TypeError(f"a and b: float16 or bfloat16 of one dtype, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape or a.ndim != 3 or a.shape[1:] != (64, 64):
        raise ValueError(f"a and b: (n, 64, 64) each, got {a.shape} and {b.shape}")
    a, b = cp.ascontiguousarray(a), cp.ascontiguousarray(b)
    c = cp.array(c0, dtype=cp.float32) if c0 is not None else cp.full(a.shape, cp.nan, cp.float32)
    kern = get_kernel(SOURCE, _expr(CTYPE[dt], ta, tb, rs), group=GROUPS[dt])
    launch(kern, (a.shape[0],), (128,), (a, b, c, cp.int32(c0 is not None)), shared_mem=SMEM)
    return c
