"""The Python cost of the public API's CuPy fast path, without a GPU: microseconds per call of each op's public
forward and of ``wb.vjp`` + pullback, with a stand-in ``cupy`` whose allocations, views and launches do no
device work (a thin array object carrying a shape, a dtype and a fake address; kernels with a function handle
and a no-op ``cupy.cuda.driver.launchKernel``, so launches go through the packed-parameter launcher of
kernels/cupy/_module.py as on a GPU).  It also counts, per call, what reaches the stand-in: allocations
(``empty``/``full``/``cuda.alloc``), launches, reshapes/views, and CuPy array operations (casts, copies: each an
elementwise kernel on a GPU).

What it measures is the Python between the API and the driver on this CPU; on a GPU each allocation (~3 us),
view (~1 us), launch (~2 us in the driver) and CuPy array operation (~8 us) costs more than the stand-in's, and
the GPU host's CPU is faster than this one: compare two trees on the same machine (docs/kernels/host.md).

    python scripts/host_cost.py                     # every op, float16, T = 64, D = 64
    python scripts/host_cost.py --op softmax --dtype float32 --profile 25
"""
from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import pstats
import sys
import time
import types
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COUNTS: Counter = Counter()
_ADDR = itertools.count(1 << 20)


class _Flags:
    __slots__ = ("c_contiguous",)

    def __init__(self, c):
        self.c_contiguous = c


_CONTIGUOUS = _Flags(True)


class _MemoryPointer:
    """cupy.cuda.MemoryPointer's face: ``ptr``, and ``+ bytes`` for a pointer into the same memory."""
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr

    def __add__(self, offset):
        return _MemoryPointer(self.ptr + offset)


class ndarray:
    """A device array's host-side face: shape, dtype, flags, ``data.ptr``; views and casts make new objects.
    ``ndarray(shape, dtype, memptr=p)``: an array on existing memory (a view: counted as one)."""
    __slots__ = ("shape", "dtype", "data", "flags", "__weakref__")

    def __init__(self, shape, dtype=float, memptr=None):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        if memptr is None:
            memptr = _MemoryPointer(next(_ADDR) * 256)
        else:
            COUNTS["view"] += 1
        self.data = memptr
        self.flags = _CONTIGUOUS

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))
    itemsize = property(lambda self: self.dtype.itemsize)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        return ndarray(shape, self.dtype, self.data)

    def astype(self, dtype, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        COUNTS["cupy op"] += 1
        return ndarray(self.shape, dtype)

    def copy(self):
        COUNTS["cupy op"] += 1
        return ndarray(self.shape, self.dtype)

    def __getitem__(self, key):
        COUNTS["view"] += 1
        return ndarray(np.empty(self.shape, np.bool_)[key].shape, self.dtype)

    def __setitem__(self, key, value):
        COUNTS["cupy op"] += 1

    def get(self):
        return np.zeros(self.shape, self.dtype)


ndarray.__module__ = "cupy._core.core"


class _Function:
    ptr = 0xF00


class RawKernel:
    """A compiled kernel: the function handle the packed launcher needs; its own call does nothing."""
    kernel = _Function()

    def __init__(self, name):
        self.name, self.max_dynamic_shared_size_bytes = name, 0

    def __call__(self, grid, block, args, shared_mem=0):
        COUNTS["launch"] += 1


class RawModule:
    def __init__(self, code, options=(), name_expressions=()):
        self.names = tuple(name_expressions)

    def compile(self):
        pass

    def get_function(self, name):
        return RawKernel(name)


def _launch_kernel(*args):
    COUNTS["launch"] += 1


def _alloc(shape, dtype=np.float64):
    COUNTS["alloc"] += 1
    return ndarray((shape,) if isinstance(shape, (int, np.integer)) else shape, dtype)


def _device_alloc(nbytes):
    """cupy.cuda.alloc: device memory without an array (backends.new_outputs' one allocation)."""
    COUNTS["alloc"] += 1
    return _MemoryPointer(next(_ADDR) * 256)


def _elementwise(x, dtype=None, **_):
    """asarray / ascontiguousarray: the array itself when nothing changes, else a copy (a kernel on a GPU)."""
    if isinstance(x, ndarray) and (dtype is None or np.dtype(dtype) == x.dtype) and x.flags.c_contiguous:
        return x
    COUNTS["cupy op"] += 1
    return ndarray(np.shape(x), dtype or x.dtype)


def stand_in_cupy() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.__version__ = "host-cost stand-in"
    cp.ndarray, cp.RawModule = ndarray, RawModule
    cp.RawKernel = lambda code, name, options=(), **_: RawKernel(name)
    cp.empty = _alloc
    cp.full = lambda shape, value, dtype=None: _alloc(shape, dtype)
    cp.zeros = cp.ones = cp.empty
    cp.asarray = cp.ascontiguousarray = _elementwise
    for name in ("float16", "float32", "float64", "int32", "int64", "uint8", "nan"):
        setattr(cp, name, getattr(np, name))
    stream = types.SimpleNamespace(ptr=0x5EA)
    device = types.SimpleNamespace(id=0, synchronize=lambda: None, attributes={"MultiProcessorCount": 132})
    cp.cuda = types.SimpleNamespace(
        driver=types.SimpleNamespace(launchKernel=_launch_kernel), get_current_stream=lambda: stream,
        alloc=_device_alloc,
        Device=lambda *_: device,
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0))
    return cp


def calls(op: str, dtype: str, T: int, D: int, B: int = 1, H: int = 1) -> dict:
    import workbench as wb
    from workbench.opspec import SPECS
    size = {"T": T, "Dk": D, "Dv": D, "G": 3}
    arrays = [ndarray((B, H, *(size[d] for d in a.dims)), dtype) for a in SPECS[op].arrays]
    fn = getattr(wb, f"{op}_attention")
    do = ndarray((B, H, T, D), dtype)

    def fwd():
        fn(*arrays)

    def fwdbwd():
        out, pb = wb.vjp(fn, *arrays)
        pb(do)
    return {"fwd": fwd, "fwdbwd": fwdbwd}


def per_call(f, n: int, repeats: int, clock=time.process_time) -> float:
    """Microseconds per call: the least process CPU time (or ``clock``'s) of ``repeats`` runs of ``n`` calls."""
    for _ in range(50):
        f()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        for _ in range(n):
            f()
        best = min(best, clock() - t0)
    return best / n * 1e6


def main(argv=None) -> int:
    from workbench.opspec import SPECS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", action="append", choices=sorted(SPECS))
    p.add_argument("--dtype", action="append", help="float16, float32, bfloat16 (repeatable; default float16)")
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--B", type=int, default=1, help="batch (B = 2, H = 16 at T = 1024: every pass above "
                   "backends.OUTPUTS_MERGE_MAX, one allocation per output)")
    p.add_argument("--H", type=int, default=1)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--profile", type=int, default=0, help="print cProfile's top N functions (own time)")
    a = p.parse_args(argv)
    if "bfloat16" in (a.dtype or ()):
        import ml_dtypes  # noqa: F401  (NumPy's bfloat16)
    sys.modules["cupy"] = stand_in_cupy()
    os.environ.pop("WORKBENCH_POISON", None)
    import kernels.cupy  # noqa: F401  (registers the cupy variants against the stand-in)
    from kernels.cupy import _module
    ran = 0
    for op in a.op or sorted(SPECS):
        for dtype in a.dtype or ("float16",):
            for name, f in calls(op, dtype, a.T, a.D, a.B, a.H).items():
                us = per_call(f, a.calls, a.repeats)
                COUNTS.clear()
                f()
                counts = ", ".join(f"{COUNTS[k]} {k}" for k in ("launch", "alloc", "view", "cupy op"))
                print(f"{op:8s} {dtype} {name:7s} {us:6.1f} us per call  ({counts})", flush=True)
                if a.profile:
                    prof = cProfile.Profile()
                    prof.enable()
                    for _ in range(a.calls):
                        f()
                    prof.disable()
                    pstats.Stats(prof).sort_stats("tottime").print_stats(a.profile)
                ran += 1
    if _module.FALLBACKS:
        print(f"packed launches that fell back to the RawKernel call: {_module.FALLBACKS}")
        return 1
    return 0 if ran else 1


if __name__ == "__main__":
    sys.exit(main())
