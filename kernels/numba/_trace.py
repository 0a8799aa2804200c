"""Every kernel launch of the ``numba:*`` variants, with its argument types, found without running anything.

``trace`` drives the *real* host code of each variant (its bucket and tile choice, its kernel factories, its
launch arguments) with fake device arrays: ``DeviceIO`` hands out shape/dtype-only arrays and every
``kernel[grid, block](*args)`` records (kernel, argument types) instead of launching.  Nothing is compiled.
Two users: ``ptx_check`` compiles each traced kernel to PTX (no GPU needed), ``_warmup`` compiles each for
the local GPU into Numba's disk cache.  Works on the CUDA simulator too (the tests compare the kernels two
shapes launch).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from workbench.opspec import OPS


class FakeDeviceArray:
    """Shape and dtype only: what type inference needs."""

    def __init__(self, shape, dtype):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))

    def copy_to_host(self):
        return np.zeros(self.shape, self.dtype)


def fake(x):
    return x if isinstance(x, FakeDeviceArray) else FakeDeviceArray(np.shape(x), np.asarray(x).dtype)


def numba_type(arg):
    """The Numba type a launch argument has (fake arrays: C-contiguous arrays of their dtype)."""
    import numba
    if isinstance(arg, FakeDeviceArray):
        return numba.types.Array(numba.from_dtype(arg.dtype), arg.ndim, "C")
    return numba.typeof(arg)


def py_func(kernel):
    """The Python function behind a kernel (a CUDA dispatcher, or the simulator's fake kernel)."""
    return getattr(kernel, "py_func", None) or kernel.fn


@dataclass(frozen=True)
class Launch:
    kernel: object          # the dispatcher (one per bucket, dtype and tiles)
    sig: tuple              # Numba argument types
    where: str              # the first traced cell that launched it

    @property
    def name(self) -> str:
        """The kernel function's name, e.g. "_tiled_fwd.kern" (one name per factory)."""
        return py_func(self.kernel).__qualname__.replace(".<locals>", "")

    @property
    def group(self) -> tuple:
        """(source file, first line): one Numba cache index per group (every bucket of one factory)."""
        code = py_func(self.kernel).__code__
        return code.co_filename, code.co_firstlineno


@contextlib.contextmanager
def _intercepted(record):
    """Fake DeviceIO arrays, record launches instead of running them."""
    from workbench.backends import numba_simulator

    from . import _arrays, _chunked

    if numba_simulator():
        from numba.cuda.simulator.kernel import FakeCUDAKernel as Dispatcher
    else:
        from numba.cuda.dispatcher import CUDADispatcher as Dispatcher

    class _Configured:
        def __init__(self, kernel):
            self.kernel = kernel

        def __call__(self, *args):
            record(self.kernel, args)

    saved = dict(to_device=_arrays.DeviceIO.to_device, empty=_arrays.DeviceIO.empty,
                 to_caller=_arrays.DeviceIO.to_caller, getitem=Dispatcher.__getitem__, dummy=_chunked._dummy)
    _arrays.DeviceIO.to_device = lambda self, x: fake(x)
    _arrays.DeviceIO.empty = lambda self, shape, dtype, fill=None: FakeDeviceArray(shape, dtype)
    _arrays.DeviceIO.to_caller = lambda self, d: d
    Dispatcher.__getitem__ = lambda self, cfg: _Configured(self)
    _chunked._dummy = lambda acc, ndim: FakeDeviceArray((1,) * ndim, np.dtype(acc.name))
    try:
        yield
    finally:
        _arrays.DeviceIO.to_device = saved["to_device"]
        _arrays.DeviceIO.empty = saved["empty"]
        _arrays.DeviceIO.to_caller = saved["to_caller"]
        Dispatcher.__getitem__ = saved["getitem"]
        _chunked._dummy = saved["dummy"]


def cells(op: str, quick: bool = False):
    """(label, options, input kwargs, causal values) covering every option of an op (``quick``: the option
    cells that differ only in a run-time argument of the kernels are dropped)."""
    from workbench.check import _split_input_options
    from workbench.opspec import SPECS
    for label, extra in SPECS[op].cells(quick):
        input_kw, extra = _split_input_options(op, extra)
        yield label, extra, input_kw, SPECS[op].causal_values


def trace(ops=OPS, dtypes=("float32", "float64"), dims=((64, 64),), variants=None, quick=False,
          echo=None) -> list:
    """Every distinct (kernel, argument types) that forward + backward of the numba variants of ``ops``
    launch, for each dtype, head-dim pair (Dk, Dv) and option cell, in first-launch order.  ``variants``:
    only these variant names (e.g. ``("flash", "chunked")``); ``echo`` gets one line per traced cell."""
    from workbench import registry
    from workbench.inputs import default_options, random_inputs
    from workbench.opspec import check_options
    registry.load_all()
    seen: dict = {}
    where = [""]

    def record(kernel, args):
        sig = tuple(numba_type(a) for a in args)
        seen.setdefault((id(kernel), sig), Launch(kernel, sig, where[0]))

    with _intercepted(record):
        for op in ops:
            for v in registry.variants(op, "numba"):
                if variants and v.name not in variants:
                    continue
                for dtype in dtypes:
                    if dtype not in v.dtypes:
                        continue
                    for Dk, Dv in dims:
                        for label, extra, input_kw, causals in cells(op, quick):
                            for causal in causals:
                                arrays = random_inputs(op, (2,), 70, Dk, Dv, dtype, **input_kw)
                                opts = check_options(op, default_options(op, causal=causal, **extra), Dk)
                                where[0] = f"{v.key} {dtype} Dk={Dk} Dv={Dv} {label} causal={causal}".replace("  ", " ")
                                if echo:
                                    echo(f"# {where[0]}")
                                _, ctx = v.forward(*[fake(a) for a in arrays], **opts)
                                v.backward(ctx, FakeDeviceArray((2, 70, Dv), dtype))
    return list(seen.values())
