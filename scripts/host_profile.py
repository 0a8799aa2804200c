"""Where the public API's host time goes: cProfile of many small calls per op (GPU, CuPy arrays).

For each op, one shape where the kernels take microseconds (B = H = 1, T = 64, D = 64 by default), the
public forward and ``wb.vjp`` + pullback are called ``--calls`` times under cProfile after a warm-up, and the
functions with the most own time are printed (and written to ``--out``/<op>-<dtype>-<pass>.txt), with the
wall time per call without the profiler beside it, through the packed-parameter launcher and through CuPy's
RawKernel call (kernels/cupy/_module.py ``slow_launch``).  What it shows is the host path of today's default
variant: validation, planning, allocation and each kernel launch.  ``summary.txt`` in ``--out``: one line per
op, dtype and pass.

    python scripts/host_profile.py --out out/host-profile            # every op, float16 and float32
    python scripts/host_profile.py --op linear --dtype float16 --top 30
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import workbench as wb  # noqa: E402
from kernels.cupy._module import FALLBACKS, slow_launch  # noqa: E402
from workbench.inputs import random_inputs  # noqa: E402
from workbench.opspec import SPECS  # noqa: E402


def calls(op: str, dtype: str, T: int, D: int):
    import cupy as cp
    arrays = random_inputs(op, (1, 1), T, D, D, "float32", seed=0)
    arrays = [cp.asarray(a.astype(dtype)) for a in arrays]
    fn = getattr(wb, f"{op}_attention")
    do = cp.asarray(np.random.default_rng(1).standard_normal((1, 1, T, D)).astype(dtype))
    sync = cp.cuda.Device().synchronize

    def fwd():
        fn(*arrays)

    def fwdbwd():
        out, pb = wb.vjp(fn, *arrays)
        pb(do)
    return {"fwd": fwd, "fwdbwd": fwdbwd}, sync


def wall_per_call(f, sync, calls: int) -> float:
    """Microseconds per call of ``f`` after a warm-up, the device synchronised before and after."""
    for _ in range(20):
        f()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        f()
    sync()
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", action="append", choices=sorted(SPECS), help="op (repeatable; default: all)")
    p.add_argument("--dtype", action="append", help="float16, float32 (repeatable; default: both)")
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", help="folder for one text file per op, dtype and pass (must not exist)")
    a = p.parse_args(argv)
    if a.out:
        os.makedirs(a.out, exist_ok=False)
    ran, summary = 0, []
    for op in a.op or sorted(SPECS):
        for dtype in a.dtype or ("float16", "float32"):
            fns, sync = calls(op, dtype, a.T, a.D)
            for name, f in fns.items():
                walls = {}
                for slow in (True, False):            # the profiled path (fast) last: its kernels are warm
                    with slow_launch(slow):
                        walls[slow] = wall_per_call(f, sync, a.calls)
                wall_us, slow_us = walls[False], walls[True]
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(a.calls):
                    f()
                sync()
                prof.disable()
                s = io.StringIO()
                st = pstats.Stats(prof, stream=s)
                st.sort_stats("tottime").print_stats(a.top)
                st.sort_stats("cumulative").print_stats(a.top)
                line = (f"{op} {dtype} {name}: {wall_us:.1f} us per call (no profiler; {slow_us:.1f} us through "
                        f"CuPy's RawKernel call), {a.calls} calls")
                summary.append(line)
                head = f"== {line}\n"
                print(head + "\n".join(s.getvalue().splitlines()[:a.top + 12]), flush=True)
                if a.out:
                    with open(os.path.join(a.out, f"{op}-{dtype}-{name}.txt"), "w") as fh:
                        fh.write(head + s.getvalue())
                ran += 1
    print("\n".join(["summary (wall per call):"] + summary))
    if a.out:
        with open(os.path.join(a.out, "summary.txt"), "w") as fh:
            fh.write("\n".join(summary) + "\n")
    if FALLBACKS:
        print(f"packed-parameter launches that failed and went through CuPy's call instead: {FALLBACKS}")
        return 1
    return 0 if ran else 1


if __name__ == "__main__":
    sys.exit(main())
