"""Time the pairs walkers' choices (``kernels.cupy._chunked_mma.XS_PAIR``, the values ``XS_PAIR_CHOICES`` lists)
against each other in one process: fwd+bwd through ``_chunked_mma.forward`` / ``backward`` with xscale 2 (the planes
pass included; --xscale: the other pairs storages too), every configuration in each of --rounds interleaved rounds (CUDA events, medians), its results
compared with the first configuration's (the choices change the schedule, not the arithmetic: differences should be
0).  GPU only (compute capability 9.0).

    python scripts/tune_xscale.py --T 16384 --T 65536 --vary fwd_stages --json out/tune_xscale.json
    python scripts/tune_xscale.py --vary lowreg --vary seg_stages --decay
    python scripts/tune_xscale.py --xscale 2 --xscale 4 --vary fwd_stages     # the planes against the staged split

Prints one row per (T, configuration): median and best ms, the largest relative difference from the first
configuration's o, dq, dk, dv (and d log_decay with --decay), and marks the configuration XS_PAIR holds now.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    from kernels.cupy import _chunked_mma as mma
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", action="append", type=int, help="sequence lengths (default 16384, 65536)")
    ap.add_argument("--vary", action="append", choices=sorted(mma.XS_PAIR_CHOICES),
                    help="the choices to vary (default: all); the others keep XS_PAIR's value")
    ap.add_argument("--decay", action="store_true", help="with log decays (uniform in [-1, 0))")
    ap.add_argument("--xscale", action="append", type=int, choices=(2, 3, 4, 5),
                    help="the pairs' storage (repeatable; default 2, the planes): 3 split by plain loads (linear "
                         "only), 4 staged by cp.async -- results compared across them too (the same arithmetic) --, "
                         "5 staged under each chunk tile's own exponent (its results differ in the last bits)")
    ap.add_argument("--N", type=int, default=32, help="leading dims flattened (default 32 = B 2 x H 16)")
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    from kernels.cupy._module import sm90a
    if not sm90a():
        print("tune_xscale: needs a compute capability 9.0 GPU (the pairs walkers are sm_90a kernels)", file=sys.stderr)
        return 1
    import cupy as cp
    import numpy as np
    vary = a.vary or sorted(mma.XS_PAIR_CHOICES)
    default = dict(mma.XS_PAIR)
    configs = [(xs, dict(default, **dict(zip(vary, values)))) for xs in (a.xscale or [2])
               for values in itertools.product(*(mma.XS_PAIR_CHOICES[v] for v in vary))]
    if a.decay and any(xs in mma.XS_LINEAR_ONLY for xs, _ in configs):
        print(f"tune_xscale: --decay takes no --xscale {' or '.join(map(str, mma.XS_LINEAR_ONLY))} (linear only)",
              file=sys.stderr)
        return 2
    rows = []
    try:
        for T in a.T or (16384, 65536):
            rng = np.random.default_rng(0)
            q, k, v, do = (cp.asarray(rng.standard_normal((a.N, T, a.D)), cp.float32) for _ in range(4))
            g = cp.asarray(rng.uniform(-1.0, 0.0, (a.N, T)), cp.float32) if a.decay else None

            def run(xs):
                o, ctx = mma.forward(q, k, v, g, scale=a.D ** -0.5, dkdv=mma.XS_MODE, xscale=xs)
                dq, dk, dv, dg, _ = mma.backward(ctx, do)
                return [x for x in (o, dq, dk, dv, dg) if x is not None]

            def use(c):
                mma.XS_PAIR.update(c)
                mma._PLANS.clear()                  # plans hold their launches: made again with the choice

            ref, diff, times = None, [], [[] for _ in configs]
            for xs, c in configs:
                use(c)
                got = run(xs)
                ref = ref or [x.copy() for x in got]
                diff.append(max(float(cp.abs(x - r).max() / max(float(cp.abs(r).max()), 1e-30))
                                for x, r in zip(got, ref)))
            for _ in range(a.rounds):
                for i, (xs, c) in enumerate(configs):
                    use(c)
                    run(xs)
                    start, end = cp.cuda.Event(), cp.cuda.Event()
                    start.record()
                    run(xs)
                    end.record()
                    end.synchronize()
                    times[i].append(cp.cuda.get_elapsed_time(start, end))
            for (xs, c), t, d in zip(configs, times, diff):
                rows.append(dict(T=T, decay=a.decay, xscale=xs, config=c, median_ms=float(np.median(t)),
                                 min_ms=float(np.min(t)), max_rel_diff=d, current=c == default))
                print(f"T={T:6d} xscale {xs} {c}  median {np.median(t):.4f} ms  best {np.min(t):.4f}  diff {d:.1e}"
                      + ("   <- XS_PAIR now" if c == default else ""), flush=True)
    finally:
        mma.XS_PAIR.update(default)
        mma._PLANS.clear()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
