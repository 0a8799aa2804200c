"""How much of a Numba variant's CUDA-event time is the GPU waiting for the host (GPU, CuPy arrays).

The bench times a Numba fwd+bwd with CUDA events around the whole call; the events also count every stretch
in which the GPU sits idle while Python prepares the next launch.  Such stretches follow every host wait:
Numba's ``as_cuda_array`` synchronised the stream a CuPy array exports on every ``DeviceIO.to_device`` /
``empty`` (18 times per linear fwd+bwd), so each kernel after one of them started only after the host had
run the dispatcher (tens of microseconds per launch) and the Python between.  kernels/numba/_arrays.py now
skips that wait for the legacy default stream.  For each op this times the variant exactly as ``bench``
does (``lines.prepare_variant``, ``time_gpu``: L2 flushed, median of CUDA-event runs) in three modes, in
interleaved rounds so that drifts of the clocks or the host fall on every mode alike:

    wait        every CuPy import synchronised (Numba's default: the behaviour before the change)
    no-wait     the current code
    kernels     no-wait after a spin kernel holds the GPU (``--head-start-ms``), so the host has queued the
                whole call before the first kernel starts: the kernels' own time, no host gaps

and prints, per op, the median over rounds of each mode, host gaps (mode - kernels) and the launches and
CuPy imports per fwd+bwd.  Exits 1 when nothing was measured.

    python scripts/numba_host_gaps.py                       # linear, decayed, zeros; B=2 H=16 T=4096 D=64
    python scripts/numba_host_gaps.py --op linear --rounds 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kernels.numba import _arrays  # noqa: E402
from workbench import registry  # noqa: E402
from workbench.bench.harness import _HeadStart  # noqa: E402
from workbench.bench.lines import prepare_variant  # noqa: E402
from workbench.bench.timing import gpu_clock, time_gpu  # noqa: E402
from workbench.inputs import default_options, random_inputs  # noqa: E402

MODES = ("wait", "no-wait", "kernels")


def counts(fn) -> tuple:
    """(kernel launches, CuPy imports) of one call of fn."""
    from numba.cuda.dispatcher import _LaunchConfiguration
    n = {"launch": 0, "import": 0}
    launch, view = _LaunchConfiguration.__call__, _arrays._view

    def counted_launch(self, *args):
        n["launch"] += 1
        return launch(self, *args)

    def counted_view(x):
        n["import"] += 1
        return view(x)

    _LaunchConfiguration.__call__, _arrays._view = counted_launch, counted_view
    try:
        fn()
    finally:
        _LaunchConfiguration.__call__, _arrays._view = launch, view
    return n["launch"], n["import"]


def timed(fn, mode: str, clock, held, target_ms: float) -> float:
    needs_sync = _arrays.import_needs_sync
    if mode == "wait":
        _arrays.import_needs_sync = lambda desc: True
    try:
        t = time_gpu(fn, warmup=2, flush_l2=True, target_ms=target_ms, min_reps=3,
                     clock=held if mode == "kernels" else clock)
    finally:
        _arrays.import_needs_sync = needs_sync
    return t.ms_median


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", action="append", choices=("softmax", "linear", "decayed", "zeros"))
    ap.add_argument("--variant", default="chunked", help="numba variant name (softmax: flash)")
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target-ms", type=float, default=80.0, help="time per measurement (as the headline grid)")
    ap.add_argument("--head-start-ms", type=float, default=20.0, help="spin before each 'kernels' run")
    args = ap.parse_args(argv)
    registry.load_all()
    clock = gpu_clock("cupy")
    held = _HeadStart(gpu_clock("cupy"), args.head_start_ms)
    rows = []
    for op in args.op or ("linear", "decayed", "zeros"):
        name = "flash" if op == "softmax" and args.variant == "chunked" else args.variant
        variant = next(v for v in registry.variants(op, "numba") if v.name == name)
        arrays = random_inputs(op, (args.B, args.H), args.T, args.D, args.D, args.dtype, seed=0)
        dout = np.random.default_rng(1).standard_normal((args.B, args.H, args.T, args.D)).astype(args.dtype)
        prep = prepare_variant(variant, arrays, dout, default_options(op, causal=True))
        launches, imports = counts(prep.fwdbwd)
        ms = {m: [] for m in MODES}
        for r in range(args.rounds):
            for m in MODES:
                ms[m].append(timed(prep.fwdbwd, m, clock, held, args.target_ms))
            print(f"{variant.key} {op} round {r + 1}: " + "  ".join(f"{m} {ms[m][-1]:.3f}" for m in MODES),
                  flush=True)
        med = {m: statistics.median(v) for m, v in ms.items()}
        rows.append((op, variant.key, launches, imports, med,
                     {m: (min(v), max(v)) for m, v in ms.items()}))
    print(f"\nfwd+bwd, B={args.B} H={args.H} T={args.T} D={args.D} {args.dtype} causal, CUDA-event ms, median of "
          f"{args.rounds} rounds (min-max); host gap = mode - kernels")
    print(f"{'op':8} {'line':14} {'launches':>8} {'imports':>7}  " + "  ".join(f"{m:>20}" for m in MODES)
          + f"  {'gap wait':>9} {'gap no-wait':>11}")
    for op, key, launches, imports, med, span in rows:
        cells = "  ".join(f"{med[m]:8.3f} ({span[m][0]:.2f}-{span[m][1]:.2f})" for m in MODES)
        print(f"{op:8} {key:14} {launches:8d} {imports:7d}  {cells}  {med['wait'] - med['kernels']:9.3f} "
              f"{med['no-wait'] - med['kernels']:11.3f}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
