"""Compile every Numba kernel the ``numba:*`` variants launch to PTX, without a GPU.

The CUDA simulator runs kernels as Python, so it never type-checks them: a shared-array shape that is not
a compile-time constant, a float64 constant leaking into a float32 kernel, or a tile that overflows the
48 KB static shared-memory limit all pass the simulator and fail (or slow down) on a GPU.
``cuda.compile_ptx`` needs only libNVVM, not a driver, so this runs on a CPU machine.

It drives the *real* host code of each variant (its bucket and tile choice, its kernel factories, its
launch arguments) with fake device arrays (``_trace.trace``) and compiles each distinct (kernel, argument
types) launched.  Kernels are compiled per head-dim bucket, so ``--D 64`` and ``--D 48/16`` check the same
kernels (and print them once).  For each distinct kernel it reports the PTX size and fails on

* a compile error,
* static shared memory above 48 KB,
* float64 arithmetic in a kernel whose accumulation type is float32;

and notes local memory (a per-thread array indexed at run time, or register spills).

    NUMBA_ENABLE_CUDASIM=0 python -m kernels.numba.ptx_check [--op softmax ...] [--dtype float32 ...]
                                                             [--D 64 --D 80/48] [--quick]

It prints one line per kernel, then "N failing", and exits 1 if N > 0.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time

import click

from workbench.opspec import OPS

from ._trace import trace

CC = (9, 0)                                     # H100
STATIC_SHARED_LIMIT = 48 * 1024


def _shared_bytes(ptx: str) -> int:
    return sum(int(n) for n in re.findall(r"\.shared\s+\.align\s+\d+\s+\.b8\s+\S+?\[(\d+)\]", ptx))


def _f64_ops(ptx: str) -> int:
    """float64 arithmetic instructions (not loads/stores of .f64 params, which float32 kernels never have)."""
    return len(re.findall(r"^\s*(?:add|sub|mul|fma|div|cvt\.f64|max|min|ex2|lg2|sqrt|rcp)[.\w]*\.f64\b", ptx,
                          flags=re.M))


class Recorder:
    """Compiles each traced launch to PTX once and checks the PTX."""

    def __init__(self, echo=print):
        self.seen: dict = {}
        self.failing = 0
        self.echo = echo
        self.t0 = time.time()

    def compile(self, launch, acc_is_f32: bool):
        from numba import cuda
        key = (id(launch.kernel), launch.sig)
        if key in self.seen:
            return
        try:
            ptx, _ = cuda.compile_ptx(launch.kernel.py_func, launch.sig, cc=CC)
        except Exception as e:                      # report every failure, keep going
            self.failing += 1
            self.seen[key] = "FAIL"
            self.echo(f"FAIL {launch.name} {launch.sig}: {type(e).__name__}: {str(e)[:1500]}")
            return
        problems = []
        shared = _shared_bytes(ptx)
        if shared > STATIC_SHARED_LIMIT:
            problems.append(f"static shared {shared} B > {STATIC_SHARED_LIMIT}")
        notes = ["local memory"] if re.search(r"\.local\s", ptx) else []   # per-thread arrays: a note
        f64 = _f64_ops(ptx)
        if acc_is_f32 and f64:
            problems.append(f"{f64} float64 instructions in a float32 kernel")
        self.seen[key] = "FAIL" if problems else "ok"
        self.failing += bool(problems)
        status = "FAIL" if problems else "ok  "
        self.echo(f"{status} {launch.name}: {len(ptx)} B PTX, {shared} B shared"
                  + "".join(f"; {p}" for p in notes + problems) + f" ({time.time() - self.t0:.0f}s)"
                  + f"  [{launch.where}]")


@contextlib.contextmanager
def _no_driver():
    """Device functions are compiled for the current device's compute capability, which asks the driver:
    answer CC instead."""
    from numba.cuda import dispatcher as disp

    class _FakeDevice:
        compute_capability = CC

    saved = disp.get_current_device
    disp.get_current_device = lambda: _FakeDevice()
    try:
        yield
    finally:
        disp.get_current_device = saved


def run(ops=OPS, dtypes=("float32", "float64"), dims=((64, 64), (80, 48)), quick=False, echo=print) -> int:
    """Compile every kernel the numba variants of ``ops`` launch; returns the number of failing kernels."""
    rec = Recorder(echo)
    with _no_driver():
        for dtype in dtypes:
            for launch in trace(ops, (dtype,), dims, quick=quick):
                rec.compile(launch, acc_is_f32=dtype != "float64")
    echo(f"{len(rec.seen)} kernels compiled, {rec.failing} failing")
    return rec.failing


@click.command()
@click.option("--op", "ops", multiple=True, type=click.Choice(OPS), help="ops to check (default: all)")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["float32", "float64"]))
@click.option("--D", "dims", multiple=True, help="head dims 'Dk' or 'Dk/Dv' (default: 64 and 80/48)")
@click.option("--quick", is_flag=True, help="skip option cells that differ only in run-time arguments")
def main(ops, dtypes, dims, quick):
    pairs = []
    for d in dims or ("64", "80/48"):
        a, _, b = d.partition("/")
        pairs.append((int(a), int(b or a)))
    n = run(ops or OPS, dtypes or ("float32", "float64"), tuple(pairs), quick)
    sys.exit(1 if n else 0)


if __name__ == "__main__":
    main()
