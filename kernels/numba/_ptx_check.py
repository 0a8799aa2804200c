"""Compile every Numba kernel the ``numba:*`` variants launch to PTX, without a GPU.

The CUDA simulator runs kernels as Python, so it never type-checks them: a shared-array shape that is not
a compile-time constant, a float64 constant leaking into a float32 kernel, or a tile that overflows the
48 KB static shared-memory limit all pass the simulator and fail (or slow down) on a GPU.
``cuda.compile_ptx`` needs only libNVVM, not a driver, so this runs on a CPU machine.

It drives the *real* host code of each variant (its tile choice, its kernel factories, its launch
arguments) with fake device arrays: ``DeviceIO`` hands out shape/dtype-only arrays and every
``kernel[grid, block](*args)`` compiles ``kernel`` for the argument types instead of launching.  For each
distinct kernel it reports the PTX size and fails on

* a compile error,
* static shared memory above 48 KB,
* float64 arithmetic in a kernel whose accumulation type is float32;

and notes local memory (per-thread arrays in the naive rungs, or register spills).

    NUMBA_ENABLE_CUDASIM=0 python -m kernels.numba._ptx_check [--op softmax ...] [--dtype float32 ...]
                                                             [--D 64 --D 80/48] [--quick]

It prints one line per kernel, then "N failing", and exits 1 if N > 0.
"""
from __future__ import annotations

import re
import sys
import time

import click
import numpy as np

CC = (9, 0)                                     # H100
STATIC_SHARED_LIMIT = 48 * 1024
OPS = ("softmax", "linear", "decayed", "zeros")


class FakeDeviceArray:
    """Shape and dtype only: what type inference needs."""

    def __init__(self, shape, dtype):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))

    def copy_to_host(self):
        return np.zeros(self.shape, self.dtype)


def _fake(x):
    return x if isinstance(x, FakeDeviceArray) else FakeDeviceArray(np.shape(x), np.asarray(x).dtype)


def _numba_type(arg):
    import numba
    if isinstance(arg, FakeDeviceArray):
        return numba.types.Array(numba.from_dtype(arg.dtype), arg.ndim, "C")
    return numba.typeof(arg)


def _shared_bytes(ptx: str) -> int:
    return sum(int(n) for n in re.findall(r"\.shared\s+\.align\s+\d+\s+\.b8\s+\S+?\[(\d+)\]", ptx))


def _f64_ops(ptx: str) -> int:
    """float64 arithmetic instructions (not loads/stores of .f64 params, which float32 kernels never have)."""
    return len(re.findall(r"^\s*(?:add|sub|mul|fma|div|cvt\.f64|max|min|ex2|lg2|sqrt|rcp)[.\w]*\.f64\b", ptx,
                          flags=re.M))


class Recorder:
    """Stands in for launches: compiles each distinct (kernel, argument types) once and checks the PTX."""

    def __init__(self, echo=print):
        self.seen: dict = {}
        self.failing = 0
        self.echo = echo
        self.t0 = time.time()
        self.acc_is_f32 = True

    def launch(self, dispatcher, args):
        from numba import cuda
        sig = tuple(_numba_type(a) for a in args)
        key = (id(dispatcher.py_func), sig)
        if key in self.seen:
            return
        name = dispatcher.py_func.__qualname__.replace(".<locals>", "")
        try:
            ptx, _ = cuda.compile_ptx(dispatcher.py_func, sig, cc=CC)
        except Exception as e:                      # report every failure, keep going
            self.failing += 1
            self.seen[key] = "FAIL"
            self.echo(f"FAIL {name} {sig}: {type(e).__name__}: {str(e)[:1500]}")
            return
        problems = []
        shared = _shared_bytes(ptx)
        if shared > STATIC_SHARED_LIMIT:
            problems.append(f"static shared {shared} B > {STATIC_SHARED_LIMIT}")
        notes = ["local memory"] if re.search(r"\.local\s", ptx) else []   # per-thread arrays: a note
        f64 = _f64_ops(ptx)
        if self.acc_is_f32 and f64:
            problems.append(f"{f64} float64 instructions in a float32 kernel")
        self.seen[key] = "FAIL" if problems else "ok"
        self.failing += bool(problems)
        status = "FAIL" if problems else "ok  "
        self.echo(f"{status} {name}: {len(ptx)} B PTX, {shared} B shared"
                  + "".join(f"; {p}" for p in notes + problems) + f" ({time.time() - self.t0:.0f}s)")


def _install(recorder):
    """Patch DeviceIO, cuda.to_device and kernel launches; returns an undo function."""
    from numba import cuda
    from numba.cuda import dispatcher as disp

    from . import _arrays

    class _FakeDevice:
        compute_capability = CC

    class _Configured:
        def __init__(self, d):
            self.d = d

        def __call__(self, *args):
            recorder.launch(self.d, args)

    saved = dict(to_device=_arrays.DeviceIO.to_device, empty=_arrays.DeviceIO.empty,
                 to_caller=_arrays.DeviceIO.to_caller, getitem=disp.CUDADispatcher.__getitem__,
                 cuda_to_device=cuda.to_device, current=disp.get_current_device)
    _arrays.DeviceIO.to_device = lambda self, x: _fake(x)
    _arrays.DeviceIO.empty = lambda self, shape, dtype, fill=None: FakeDeviceArray(shape, dtype)
    _arrays.DeviceIO.to_caller = lambda self, d: d
    disp.CUDADispatcher.__getitem__ = lambda self, cfg: _Configured(self)
    cuda.to_device = lambda x, *a, **k: _fake(x)
    # device functions are compiled for the current device's compute capability, which asks the driver
    disp.get_current_device = lambda: _FakeDevice()

    def undo():
        _arrays.DeviceIO.to_device = saved["to_device"]
        _arrays.DeviceIO.empty = saved["empty"]
        _arrays.DeviceIO.to_caller = saved["to_caller"]
        disp.CUDADispatcher.__getitem__ = saved["getitem"]
        cuda.to_device = saved["cuda_to_device"]
        disp.get_current_device = saved["current"]
    return undo


def _cells(op: str, quick: bool):
    """(label, options, input kwargs, causal values) covering every kernel configuration of an op."""
    from workbench.check import _split_input_options, causal_values, option_grid
    for label, extra in option_grid(op, quick=False):
        input_kw, extra = _split_input_options(op, extra)
        if quick and op == "linear" and extra.get("feature_map") == "relu":
            continue
        yield label, extra, input_kw, causal_values(op)


def run(ops=OPS, dtypes=("float32", "float64"), dims=((64, 64), (80, 48)), quick=False, echo=print) -> int:
    """Compile every kernel the numba variants of ``ops`` launch; returns the number of failing kernels."""
    from workbench import registry
    from workbench.inputs import default_options, random_inputs
    from workbench.ops import _check_options
    registry.load_all()
    rec = Recorder(echo)
    undo = _install(rec)
    try:
        for op in ops:
            for v in registry.variants(op, "numba"):
                for dtype in dtypes:
                    if dtype not in v.dtypes:
                        continue
                    rec.acc_is_f32 = dtype != "float64"
                    for Dk, Dv in dims:
                        for label, extra, input_kw, causals in _cells(op, quick):
                            for causal in causals:
                                arrays = random_inputs(op, (2,), 70, Dk, Dv, dtype, **input_kw)
                                opts = default_options(op, causal=causal, **extra)
                                if op == "decayed":
                                    opts["causal"] = True
                                opts = _check_options(op, opts, Dk)
                                echo(f"# {v.key} {dtype} Dk={Dk} Dv={Dv} {label} causal={causal}")
                                _, ctx = v.forward(*[_fake(a) for a in arrays], **opts)
                                v.backward(ctx, FakeDeviceArray((2, 70, Dv), dtype))
    finally:
        undo()
    echo(f"{len(rec.seen)} kernels compiled, {rec.failing} failing")
    return rec.failing


@click.command()
@click.option("--op", "ops", multiple=True, type=click.Choice(OPS), help="ops to check (default: all)")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["float32", "float64"]))
@click.option("--D", "dims", multiple=True, help="head dims 'Dk' or 'Dk/Dv' (default: 64 and 80/48)")
@click.option("--quick", is_flag=True, help="skip option cells that add no new kernel shape")
def main(ops, dtypes, dims, quick):
    pairs = []
    for d in dims or ("64", "80/48"):
        a, _, b = d.partition("/")
        pairs.append((int(a), int(b or a)))
    n = run(ops or OPS, dtypes or ("float32", "float64"), tuple(pairs), quick)
    sys.exit(1 if n else 0)


if __name__ == "__main__":
    main()
