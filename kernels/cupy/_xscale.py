"""float32 tensors carried as float16 under a power-of-two scale per leading index (kernels/cuda/xscale.cu): the
storage of the tensor-core chunk core's ``xscale`` calls (kernels/cupy/_chunked_mma.py), which run float32 inputs
through the 16-bit warpgroup-MMA walkers and write float32 results (docs/kernels/linear.md "float32 through the float16
walkers").

An operand x (..., T, d) of N slices (its leading dims flattened) becomes y = float16(x 2^-e[n]) with one integer
e[n] per slice (``parts`` 2: y and its residual lo = float16(x 2^-e[n] - y), two planes, 22 significant bits
together; ``parts`` 0, the exact calls: the exponents alone, the walkers split x 2^-e[n] into such pairs as their
tiles land): 0 where the slice's max |x| lies in [XS_SAFE_LO, XS_SAFE_HI] (one pass over x), else the exponent
that brings the max into [1, 2) (a second pass over that slice).  The exponents of q, k, v and dO are the rows of
one (N_OPERANDS, N) int32 array (``exponents``, ``OPERAND``); the walkers read it and scale each result back
(chunked_wgmma.cu ``tg::xmul``), the host scales the states (``ldexp``)."""
from __future__ import annotations

import functools
import math

import numpy as np

from workbench.backends import data_ptr, new_output

from ._module import Prepared, declare_groups, get_kernel, lead_size

SOURCE = "xscale.cu"
TO_HALF, RESCALE = "xs_to_half", "xs_rescale"
GROUP = (TO_HALF, RESCALE)
INSTANTIATIONS = [(SOURCE, e) for e in GROUP]
declare_groups(SOURCE, [GROUP])

THREADS = 256               # XS_THREADS
PER_THREAD = 16             # elements each thread converts (four float4) when the grid is as wide as the slice asks
RESCALE_BLOCKS = 64         # xs_rescale's blocks per slice: its blocks of safe slices only return, and 1024 of them
                            # per slice cost 63 us at 64k (H200 callV: 3 x 32 slices); 64 a slice still fill the GPU
                            # where every slice is rescaled
SAFE = (0.125, 8.0)         # XS_SAFE_LO, XS_SAFE_HI: slices whose max |x| lies here keep e = 0
OPERAND = {"q": 0, "k": 1, "v": 2, "do": 3}     # rows of the exponent array (tg::xmul's operand indices)
N_OPERANDS = len(OPERAND)
_GRID_X_MAX = 65535


def exponents(N: int, zero: bool = False):
    """The (N_OPERANDS, N) int32 exponent array of one call (rows written by ``to_half``; zero: all 0, for walkers that
    scale each chunk tile themselves -- the chunk core's xscale 5 -- with no pass)."""
    import cupy as cp
    return (cp.zeros if zero else cp.empty)((N_OPERANDS, N), np.int32)


@functools.lru_cache(maxsize=None)
def _kernel(name: str):
    return get_kernel(SOURCE, name)


@functools.lru_cache(maxsize=256)
def _launches(shapes: tuple) -> tuple:
    """(to_half, rescale, per args, the amax shape) of a conversion of arrays of ``shapes`` (same leading dims)."""
    N = lead_size(shapes[0], 2)
    pers = [math.prod(s) // N for s in shapes]
    bx = max(1, min(-(-max(pers) // (THREADS * PER_THREAD)), _GRID_X_MAX))
    per_args = tuple(np.int64(p) for p in pers + [0] * (3 - len(pers)))
    return (Prepared(_kernel(TO_HALF), (bx, N, len(shapes)), (THREADS,)),
            Prepared(_kernel(RESCALE), (min(bx, RESCALE_BLOCKS), N, len(shapes)), (THREADS,)), per_args,
            (len(shapes), N))


def _aligned(x):
    """x (C-contiguous float32) starting on 16 bytes (the kernels' float4 loads), copied if a view starts elsewhere."""
    return x if data_ptr(x) % 16 == 0 else x.copy()


PARTS = (0, 1, 2)            # the exponents alone; float16 copies; hi + lo pairs


def to_half(xs: tuple, ex, first: str, parts: int = 1) -> tuple:
    """float16 copies of the C-contiguous float32 arrays ``xs`` (up to three, same leading dims), their exponents
    written to the rows of ``ex`` from operand ``first`` (OPERAND) on.  parts 2: each copy is the hi plane of a
    (2, ...) array whose lo plane follows it in memory.  parts 0: the exponents alone; returns ``xs`` (16-byte
    aligned: copied where a view starts elsewhere)."""
    import cupy as cp
    if parts not in PARTS:
        raise ValueError(f"parts must be one of {PARTS} (got {parts!r})")
    to, rescale, pers, amax_shape = _launches(tuple(x.shape for x in xs))
    xs = tuple(_aligned(x) for x in xs)
    ys = tuple(new_output(cp, ((2,) if parts == 2 else ()) + x.shape, cp.float16) for x in xs) if parts else ()
    amax = cp.zeros(amax_shape, np.uint32)
    pad = (None,) * (3 - len(xs))
    p32 = np.int32(parts)
    ypad = ys + pad if parts else (None,) * 3
    to(xs + pad + ypad + pers + (amax, p32))
    rescale(xs + pad + ypad + pers + (amax, ex, np.int32(OPERAND[first]), p32))
    return xs if parts == 0 else ys if parts == 1 else tuple(y[0] for y in ys)


def ldexp(S, ex, plus: tuple = (), minus: tuple = ()):
    """S (N, ...) float32 times 2^(sum of the exponent rows ``plus`` - those of ``minus``) per leading index (a state
    into or out of the walkers' scaled units), or None for None."""
    if S is None:
        return None
    import cupy as cp
    e = sum(ex[OPERAND[o]] for o in plus) - sum(ex[OPERAND[o]] for o in minus)
    return cp.ldexp(S, e.reshape((-1,) + (1,) * (S.ndim - 1))).astype(np.float32, copy=False)
