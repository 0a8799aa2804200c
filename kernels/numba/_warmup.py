"""Compile every Numba kernel for the local GPU ahead of use, into Numba's on-disk cache.

Kernels are compiled once per (head-dim bucket, dtype) (kernels/numba/_jit.py) and cached on disk, so each
is compiled once per machine: by the first call that needs it, or all at once by ``warmup``.  After a warm-up
no later process compiles a kernel of the warmed ops/dtypes/buckets (it loads the cubin: ~10 ms a kernel).

``warmup`` traces every launch of the ``numba:*`` variants (``_trace.trace``: every variant, option cell and
bucket, nothing run), groups the launches by kernel function (one Numba cache index per function and source
file) and compiles the groups, each in one process: ``jobs`` worker processes in parallel (compiling is
single-threaded), so two processes never write the same cache index at once (Numba's index update is a
read-modify-write).  Groups already in the cache load in milliseconds.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from dataclasses import dataclass, field

from workbench.opspec import OPS

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class GroupResult:
    name: str               # kernel function, e.g. "_tiled_fwd.kern"
    source: str             # its file
    kernels: int            # (bucket, dtype, signature) entries compiled or loaded
    compiled: int           # fresh compiles (saved to the cache)
    cached: int             # loaded from the cache
    seconds: float


@dataclass
class WarmupReport:
    groups: list = field(default_factory=list)     # GroupResult, in completion order
    seconds: float = 0.0

    @property
    def kernels(self) -> int:
        return sum(g.kernels for g in self.groups)

    @property
    def compiled(self) -> int:
        return sum(g.compiled for g in self.groups)

    @property
    def cached(self) -> int:
        return sum(g.cached for g in self.groups)


def _dims(buckets) -> tuple:
    """One (Dk, Dv) pair per bucket: every pair of a bucket launches the same kernels."""
    return tuple((b, b) for b in buckets)


def _plan(ops, dtypes, buckets) -> dict:
    """{group: [Launch, ...]} for every kernel launch, grouped by kernel function (see the module doc)."""
    from ._trace import trace
    groups: dict = {}
    for launch in trace(ops, dtypes, _dims(buckets)):
        groups.setdefault(launch.group, []).append(launch)
    return groups


def _compile_group(group, launches) -> GroupResult:
    t0 = time.perf_counter()
    compiled = cached = 0
    for launch in launches:
        stats = launch.kernel.stats
        before = sum(stats.cache_misses.values())
        launch.kernel.compile(launch.sig)
        if sum(launch.kernel.stats.cache_misses.values()) > before:
            compiled += 1
        else:
            cached += 1
    return GroupResult(launches[0].name, os.path.basename(group[0]), len(launches), compiled, cached,
                       time.perf_counter() - t0)


def _worker(group, ops, dtypes, buckets) -> GroupResult:
    """In a worker process: trace again (cheap), compile one group."""
    return _compile_group(group, _plan(ops, dtypes, buckets)[group])


def warmup(ops=None, dtypes=DTYPES, buckets=None, jobs=None, echo=print) -> WarmupReport:
    """Compile every kernel of the ``numba:*`` variants of ``ops`` (default: all four) for ``dtypes`` and
    head-dim ``buckets`` (default: all, ``_jit.BUCKETS``) for the local GPU, into Numba's disk cache.

    ``jobs`` worker processes compile in parallel (default: CPU count, at most the number of kernel
    groups; 1 compiles in this process).  ``echo`` gets one progress line per kernel group.  Raises
    ``workbench.backends.BackendUnavailable`` without a CUDA GPU (the simulator has nothing to compile)."""
    from workbench import backends
    from . import _jit
    if backends.numba_simulator():
        raise backends.BackendUnavailable("warmup compiles for a CUDA GPU; the CUDA simulator "
                                          "(NUMBA_ENABLE_CUDASIM=1) runs kernels as Python")
    backends.require("numba")
    ops = tuple(ops or OPS)
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise ValueError(f"warmup: unknown op(s) {', '.join(map(repr, bad))}; expected some of {', '.join(OPS)}")
    buckets = tuple(buckets or _jit.BUCKETS)
    bad = [b for b in buckets if b not in _jit.BUCKETS]
    if bad:
        raise ValueError(f"warmup: unknown bucket(s) {', '.join(map(str, bad))}; the head-dim buckets are "
                         f"{', '.join(map(str, _jit.BUCKETS))}")
    t0 = time.perf_counter()
    plan = _plan(ops, dtypes, buckets)
    order = sorted(plan, key=lambda g: -len(plan[g]))       # longest groups first
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(order)))
    report = WarmupReport()
    total = sum(len(v) for v in plan.values())
    echo(f"warmup: {total} kernels in {len(order)} groups ({', '.join(ops)}; {', '.join(dtypes)}; "
         f"buckets {', '.join(map(str, buckets))}), {jobs} process{'es' if jobs > 1 else ''}")

    def done(res: GroupResult):
        report.groups.append(res)
        echo(f"warmup: [{len(report.groups)}/{len(order)}] {res.name} ({res.source}): {res.kernels} kernels, "
             f"{res.compiled} compiled, {res.cached} from cache, {res.seconds:.1f} s")

    if jobs == 1:
        for g in order:
            done(_compile_group(g, plan[g]))
    else:
        ctx = multiprocessing.get_context("spawn")          # CUDA contexts do not survive fork
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_worker, g, ops, tuple(dtypes), buckets) for g in order]
            for fut in cf.as_completed(futures):
                done(fut.result())
    report.seconds = time.perf_counter() - t0
    echo(f"warmup: {report.kernels} kernels ready ({report.compiled} compiled, {report.cached} from cache) "
         f"in {report.seconds:.1f} s")
    return report
