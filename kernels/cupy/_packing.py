"""Packed sequences (``cu_seqlens``) as the CuPy kernels take them: device int32 arrays of the sequence of
every position and of the offsets, cached per offsets tuple (workbench/state.py defines cu_seqlens)."""
from __future__ import annotations

import functools

import numpy as np

NULL = np.uint64(0)


@functools.lru_cache(maxsize=256)
def sequence_arrays(cu: tuple) -> tuple:
    """(tseq, cu_dev): the sequence of each of the T = cu[-1] positions (T,) and the offsets (nseq + 1,),
    int32 device arrays."""
    import cupy as cp
    ids = np.repeat(np.arange(len(cu) - 1, dtype=np.int32), np.diff(np.asarray(cu)))
    return cp.asarray(ids), cp.asarray(np.asarray(cu, np.int32))


def kernel_args(cu) -> tuple:
    """tseq, cu_dev for a launch: null pointers for one sequence (cu None)."""
    return (NULL, NULL) if cu is None else sequence_arrays(tuple(cu))
