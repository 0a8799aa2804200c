#!/usr/bin/env python
"""What checking ``log_decay <= 0`` on CuPy inputs costs per call of the public API (a device reduction and a
host sync; off by default, on under ``workbench.backends.device_checked()`` / ``WORKBENCH_DEVICE_CHECKS=1``).

    python scripts/device_check_cost.py [--T 64 --T 4096] [--reps 1000]

Per T: the median wall time of ``decayed_attention`` (forward) and of ``vjp`` + pullback, each call followed
by a device sync, with the check off and on, and the host time of one forward call alone (no sync: what a
training loop that does not sync pays).  Needs CuPy and a GPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_us(fn, reps: int, sync) -> float:
    for _ in range(20):
        fn()
    if sync is not None:
        sync()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append(time.perf_counter() - t0)
    if sync is None:
        import cupy
        cupy.cuda.Device().synchronize()
    return statistics.median(samples) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, action="append")
    ap.add_argument("--reps", type=int, default=1000)
    args = ap.parse_args()
    import cupy as cp
    import workbench as wb
    from workbench import backends
    from workbench.inputs import random_inputs
    sync = cp.cuda.Device().synchronize
    print(f"{'T':>6} {'check':>5} {'fwd us':>8} {'fwd+bwd us':>11} {'fwd host-only us':>17}")
    for T in args.T or (64, 4096):
        xs = [cp.asarray(a) for a in random_inputs("decayed", (1, 4), T, 64, 64, "float32", seed=0)]
        do = cp.ones((1, 4, T, 64), cp.float32)
        for on in (False, True):
            with backends.device_checked(on):
                fwd = _median_us(lambda: wb.decayed_attention(*xs), args.reps, sync)
                fb = _median_us(lambda: wb.vjp(wb.decayed_attention, *xs)[1](do), args.reps, sync)
                host = _median_us(lambda: wb.decayed_attention(*xs), args.reps, None)
            print(f"{T:>6} {'on' if on else 'off':>5} {fwd:8.1f} {fb:11.1f} {host:17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
