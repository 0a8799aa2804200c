"""Time the Numba chunked core under several tile settings in ONE GPU process (fwd+bwd, CUDA events).

Each setting is a set of ``kernels.numba._chunked.CONFIG`` overrides (``SETTINGS`` below: threads per block,
chunks per segment); a thread count is part of the chunk kernel's compile key (and its closure, so of Numba's
disk-cache key), so every setting runs its own kernels in the same process.  For each op and setting this
prints the median CUDA-event time of ``numba:chunked`` fwd+bwd (as ``bench``: L2 flushed, ``time_gpu``), the
same with the host's launch gaps hidden (a spin kernel holds the GPU while the call is queued: the kernels'
own time), the ratio to ``cupy:chunked`` timed in the same process, and one call's per-launch breakdown (CUDA
events around every launch, summed per kernel: which kernels of the fwd+bwd dominate) with the chunk
kernel's registers per thread.  Settings are timed in interleaved rounds, so clock drifts fall on all alike.

    python scripts/numba_chunk_tiles.py                          # linear, decayed, zeros; every setting
    python scripts/numba_chunk_tiles.py --op linear --setting default --setting bv32

docs/kernels/linear.md ("Numba chunked core: why 3x") holds the predictions.  Exits 1 if nothing ran.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kernels.numba import _chunked  # noqa: E402
from workbench import registry  # noqa: E402
from workbench.bench.harness import _HeadStart  # noqa: E402
from workbench.bench.lines import prepare_variant  # noqa: E402
from workbench.bench.timing import gpu_clock, time_gpu  # noqa: E402
from workbench.inputs import default_options, random_inputs  # noqa: E402

# name -> CONFIG overrides (the rest as CONFIG has them: tiles() picks C, BK, BV from the bucket)
SETTINGS = {
    "default": {},                                  # BV = 64 at bucket 64 (plain, decay), 4 chunks per segment
    "seg8": {"segment_chunks": 8},                  # the default tiles, 8 chunks per segment (half the blocks)
    "bv32": {"block_v": 32},                        # one block per 32 value columns (the tiles before), 4 chunks
    "bv32seg8": {"block_v": 32, "segment_chunks": 8},   # the tiles and segments before (the loader change only)
}


class _Setting:
    def __init__(self, over: dict):
        self.over = over

    def __enter__(self):
        self.saved = dict(_chunked.CONFIG)
        _chunked.CONFIG.update(self.over)

    def __exit__(self, *exc):
        _chunked.CONFIG.clear()
        _chunked.CONFIG.update(self.saved)


def breakdown(fn, clock) -> tuple:
    """One call of fn with CUDA events around every Numba launch: ({kernel xcount: ms summed}, {kernel: regs}).
    With the head-start clock the host has queued the call before the GPU reaches it, so an event pair times
    its kernel, not the host's launch gap."""
    from numba.cuda.dispatcher import _LaunchConfiguration
    launch = _LaunchConfiguration.__call__
    marks, regs = [], {}

    def timed_launch(self, *args):
        name = self.dispatcher.py_func.__qualname__.replace(".<locals>", "")
        a, b = clock.event(), clock.event()
        clock.record(a)
        out = launch(self, *args)
        clock.record(b)
        marks.append((name, a, b))
        if name not in regs:
            try:
                regs[name] = max(o.regs_per_thread for o in self.dispatcher.overloads.values())
            except Exception:                                  # noqa: BLE001 (older Numba: no such attribute)
                regs[name] = -1
        return out

    _LaunchConfiguration.__call__ = timed_launch
    try:
        clock.flush()                       # (the head-start clock: the call is queued before its kernels run)
        fn()
    finally:
        _LaunchConfiguration.__call__ = launch
    clock.sync()
    per = collections.defaultdict(float)
    for name, a, b in marks:
        per[f"{name}"] += clock.elapsed_ms(a, b)
    count = collections.Counter(n for n, _, _ in marks)
    return {f"{k} x{count[k]}": v for k, v in per.items()}, regs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", action="append", choices=("linear", "decayed", "zeros"))
    ap.add_argument("--setting", action="append", choices=tuple(SETTINGS))
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target-ms", type=float, default=60.0)
    args = ap.parse_args(argv)
    registry.load_all()
    clock = gpu_clock("cupy")
    held = _HeadStart(gpu_clock("cupy"), 20.0)
    settings = args.setting or list(SETTINGS)
    rows = []
    t_start = time.time()
    for op in args.op or ("linear", "decayed", "zeros"):
        nb = next(v for v in registry.variants(op, "numba") if v.name == "chunked")
        cp = next(v for v in registry.variants(op, "cupy") if v.name == "chunked")
        arrays = random_inputs(op, (args.B, args.H), args.T, args.D, args.D, "float32", seed=0)
        dout = np.random.default_rng(1).standard_normal((args.B, args.H, args.T, args.D)).astype("float32")
        opts = default_options(op, causal=True)
        ref = prepare_variant(cp, arrays, dout, opts)
        preps = {}
        for s in settings:
            t0 = time.time()
            with _Setting(SETTINGS[s]):
                preps[s] = prepare_variant(nb, arrays, dout, opts)     # compiles (or loads) this setting's kernels
                preps[s].fwdbwd()
            print(f"{op} {s}: ready in {time.time() - t0:.1f} s", flush=True)
        ms = {k: [] for k in ["cupy"] + [f"{s}{m}" for s in settings for m in ("", "/k")]}
        for _ in range(args.rounds):
            ms["cupy"].append(time_gpu(ref.fwdbwd, flush_l2=True, target_ms=args.target_ms, clock=clock).ms_median)
            for s in settings:
                with _Setting(SETTINGS[s]):
                    for m, c in (("", clock), ("/k", held)):
                        ms[f"{s}{m}"].append(time_gpu(preps[s].fwdbwd, flush_l2=True, target_ms=args.target_ms,
                                                      clock=c).ms_median)
        med = {k: statistics.median(v) for k, v in ms.items()}
        print(f"\n{op}: cupy:chunked {med['cupy']:.3f} ms")
        for s in settings:
            with _Setting(SETTINGS[s]):
                per, regs = breakdown(preps[s].fwdbwd, held)
            print(f"  {s:6} {SETTINGS[s]}: numba:chunked {med[s]:.3f} ms ({med[s] / med['cupy']:.2f}x cupy), "
                  f"kernels only {med[s + '/k']:.3f} ms; regs {regs}")
            for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
                print(f"      {v:7.3f} ms  {k}")
            rows.append((op, s, med[s], med["cupy"]))
    print(f"\nfwd+bwd B={args.B} H={args.H} T={args.T} D={args.D} float32 causal, median of {args.rounds} rounds "
          f"({time.time() - t_start:.0f} s)")
    for op, s, t, c in rows:
        print(f"{op:8} {s:6} numba {t:7.3f} ms  cupy {c:7.3f} ms  {t / c:5.2f}x")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
