"""The shape sweep of a user exploring head dims, timed in a fresh process: the four ops through the public API
(``wb.vjp`` + pullback), float32, head dims (8, 8), (16, 5), (32, 24), (48, 80), (64, 64), causal and not
(decayed: causal only), T from 1 to 130, on one backend.  It prints the time of each op's first call (its
kernels' compile, or their load from the disk cache), each op's total, and the whole sweep's wall time.

    python scripts/shape_sweep.py --backend numba --fresh-cache      # cold: an empty kernel cache
    python scripts/shape_sweep.py --backend numba                    # warm: the cache of earlier runs
    python scripts/shape_sweep.py --backend cupy --fresh-cache
    NUMBA_ENABLE_CUDASIM=1 python scripts/shape_sweep.py --quick     # tiny, on the CUDA simulator

``--fresh-cache`` points Numba's and CuPy's kernel caches at a new empty folder (removed afterwards), so the
run pays every compile, as a first run on a new machine does.  Exit status: 0 when every call returned
finite outputs, 1 when one failed, 2 for a usage error or a backend that cannot run here.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from workbench.opspec import OPS, SPECS  # noqa: E402  (imports neither Numba nor CuPy)

HEAD_DIMS = ((8, 8), (16, 5), (32, 24), (48, 80), (64, 64))
QUICK_HEAD_DIMS = ((8, 8), (16, 5))


@dataclass
class OpTimes:
    op: str
    calls: int = 0
    first_call_s: float = 0.0     # the op's first vjp + pullback in this process
    total_s: float = 0.0          # all its calls (outside the finiteness checks)
    failures: list = field(default_factory=list)


@dataclass
class SweepResult:
    backend: str
    arrays: str
    head_dims: list
    T_max: int
    ops: list = field(default_factory=list)     # OpTimes
    wall_s: float = 0.0
    compiled: int = -1                            # numba: kernels compiled here; -1: not known
    loaded: int = -1                              # numba: kernels loaded from the disk cache

    @property
    def failures(self) -> int:
        return sum(len(o.failures) for o in self.ops)


def sweep(backend="numba", ops=OPS, head_dims=HEAD_DIMS, T_max=130, arrays="numpy", lead=(2,), echo=print):
    """Run the sweep in this process and return a SweepResult (see the module docstring)."""
    import numpy as np

    import workbench as wb
    from workbench.inputs import random_inputs

    xp = np
    if arrays == "cupy":
        import cupy as xp
    res = SweepResult(backend, arrays, [list(p) for p in head_dims], T_max)
    t_start = time.perf_counter()
    for op in ops:
        times = OpTimes(op)
        res.ops.append(times)
        for Dk, Dv in head_dims:
            for causal in SPECS[op].causal_values:
                for T in range(1, T_max + 1):
                    ins = [xp.asarray(a) for a in random_inputs(op, lead, T, Dk, Dv, "float32", seed=T)]
                    dout = xp.asarray(np.random.default_rng(T).standard_normal((*lead, T, Dv)).astype("float32"))
                    t0 = time.perf_counter()
                    try:
                        out, pull = wb.vjp(wb.PUBLIC_OPS[op], *ins, backend=backend, causal=causal)
                        grads = pull(dout)
                        if arrays == "cupy":
                            xp.cuda.runtime.deviceSynchronize()
                    except Exception as e:                      # record it, keep sweeping
                        times.failures.append(f"Dk={Dk} Dv={Dv} causal={causal} T={T}: {type(e).__name__}: {e}")
                        continue
                    finally:
                        dt = time.perf_counter() - t0
                        times.total_s += dt
                        if times.calls == 0:
                            times.first_call_s = dt
                        times.calls += 1
                    if not all(bool(xp.isfinite(x).all()) for x in (out, *grads)):
                        times.failures.append(f"Dk={Dk} Dv={Dv} causal={causal} T={T}: non-finite output")
        echo(f"{op:8s} first call {times.first_call_s:7.2f} s   {times.calls:5d} calls {times.total_s:7.2f} s"
             + (f"   {len(times.failures)} FAILED" if times.failures else ""))
    res.wall_s = time.perf_counter() - t_start
    if backend.split(":")[0] == "numba":
        from kernels.numba import _jit
        stats = _jit.compile_stats()
        res.compiled, res.loaded = stats.misses, stats.hits
    return res


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--backend", default="numba", show_default=True, help="numba or cupy (or backend:variant)")
@click.option("--ops", "ops", multiple=True, type=click.Choice(OPS), help="ops to sweep (default: all four)")
@click.option("--T-max", "T_max", type=click.IntRange(1, 100000), default=None,
              help="sweep T = 1 .. T_max (default 130; --quick: 2)")
@click.option("--arrays", type=click.Choice(["numpy", "cupy"]), default="numpy", show_default=True,
              help="the array kind passed to the ops")
@click.option("--fresh-cache", is_flag=True, help="compile everything: empty Numba and CuPy kernel caches")
@click.option("--quick", is_flag=True, help="head dims (8, 8) and (16, 5), T up to 2 (runs on the simulator)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the result as JSON")
def main(backend, ops, T_max, arrays, fresh_cache, quick, json_path):
    cache = None
    if fresh_cache:                              # before numba / cupy are imported: they read it at import
        if "numba" in sys.modules or "cupy" in sys.modules:
            raise click.UsageError("--fresh-cache must be set before numba or cupy is imported")
        cache = tempfile.mkdtemp(prefix="wb-kernel-cache-")
        os.environ["NUMBA_CACHE_DIR"] = os.environ["CUPY_CACHE_DIR"] = cache
    from workbench import backends
    ok, why = backends.status(backend.split(":")[0])
    if not ok:
        raise click.UsageError(f"backend {backend!r} cannot run here: {why}")
    head_dims = QUICK_HEAD_DIMS if quick else HEAD_DIMS
    T_max = T_max or (2 if quick else 130)
    ops = ops or OPS
    n_calls = sum(len(head_dims) * len(SPECS[op].causal_values) * T_max for op in ops)
    click.echo(f"shape sweep: backend {backend}, float32, {arrays} arrays, head dims "
               f"{' '.join(f'({a},{b})' for a, b in head_dims)}, T 1..{T_max}, causal and not: {n_calls} calls"
               + (f"; fresh kernel cache {cache}" if cache else ""))
    try:
        res = sweep(backend, ops, head_dims, T_max, arrays, echo=click.echo)
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    click.echo(f"total wall {res.wall_s:.1f} s"
               + (f"; kernels compiled {res.compiled}, loaded from the disk cache {res.loaded}"
                  if res.compiled >= 0 else ""))
    for o in res.ops:
        for f in o.failures[:5]:
            click.echo(f"FAILED {o.op} {f}", err=True)
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as fh:
            json.dump(dict(asdict(res), failures=res.failures), fh, indent=1)
    sys.exit(1 if res.failures else 0)


if __name__ == "__main__":
    main()
