"""What CuPy's allocations and views cost on the host (GPU machine): microseconds per call of each way to make
the outputs of one kernel pass, the choices of ``workbench.backends.new_outputs`` (docs/kernels/host.md, sixth
pass).  Each call's objects die before the next call, so a pool allocation's free is counted with it.

    python scripts/cupy_alloc_cost.py                 # T = 64, D = 64, float16: linear's backward outputs
    python scripts/cupy_alloc_cost.py --T 1024 --calls 50000
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from host_cost import per_call  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--calls", type=int, default=20000)
    a = p.parse_args(argv)
    import cupy as cp
    from workbench import backends
    shape, dt = (1, 1, a.T, a.D), np.dtype(np.float16)
    part = a.T * a.D * dt.itemsize
    step = -(-part // backends.SCRATCH_ALIGN) * backends.SCRATCH_ALIGN
    nbytes = 3 * step
    buf, mem = cp.empty(nbytes, np.uint8), cp.cuda.alloc(nbytes)
    nd = cp.ndarray
    layout = backends.outputs_layout(((shape, dt),) * 3)
    cases = {
        "cupy.empty(shape, float16)": lambda: cp.empty(shape, dt),
        "cupy.empty(nbytes, uint8)": lambda: cp.empty(nbytes, np.uint8),
        "cupy.cuda.alloc(nbytes)": lambda: cp.cuda.alloc(nbytes),
        "ndarray(shape, dtype, memptr=mem)": lambda: nd(shape, dt, memptr=mem),
        "ndarray(shape, dtype, mem)": lambda: nd(shape, dt, mem),
        "ndarray(shape, dtype, mem + offset)": lambda: nd(shape, dt, mem + step),
        "buf[a:b].view(dtype).reshape(shape)": lambda: buf[step:step + part].view(dt).reshape(shape),
        "np.uint64(address)": lambda: np.uint64(mem.ptr + step),
        "3 outputs: 3 x cupy.empty (before the fifth pass)": lambda: [cp.empty(shape, dt) for _ in range(3)],
        "3 outputs: new_outputs (one allocation, 3 views)": lambda: layout.new(cp),
    }
    print(f"cupy {cp.__version__}, {a.calls} calls each, outputs {shape} {dt}, us per call")
    for name, f in cases.items():
        print(f"{per_call(f, a.calls, 5, time.perf_counter):7.2f}  {name}", flush=True)   # wall time: the GPU's host
    return 0


if __name__ == "__main__":
    sys.exit(main())
