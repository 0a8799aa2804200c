"""Timing one callable: CUDA events on the GPU, ``time.perf_counter`` on the host.

What is measured.  ``fn`` is run ``warmup`` times (compiles, autotuning, allocator warm-up; at least once),
then ``reps`` times, each between two events (GPU) or two ``perf_counter`` reads after a device sync
(host).  The first warm-up call also compiles (JIT) and is never a sample.  On the GPU the events of all repetitions are recorded on the current stream and read after one
final synchronize, so the host does not stall the queue; each sample is the GPU time from the start event
to the end event (launch gaps included when the host is slower than the kernels).  With ``flush_l2`` a
buffer larger than the L2 cache is overwritten *before* each start event, so every sample starts from a
cold cache and the flush itself is not timed.  ``reps=None`` picks the count from a first estimate so that
the samples take about ``target_ms`` (between ``min_reps`` and ``max_reps``), estimated from the last
warm-up call (timed alone).  Reported: median, first and
third quartiles, min and max, in milliseconds, and ``noisy``: the interquartile range exceeds ``NOISY_IQR``
(25%) of the median, so the median is not to be trusted (on the host, usually other processes or BLAS
threads competing for the cores).

Host timings run with the BLAS thread pools pinned (``host_threads``, through threadpoolctl): on a machine
with few cores an unpinned OpenBLAS swings one cell by 10x between runs.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Optional

L2_FLUSH_BYTES = 256 << 20         # larger than any current L2 (H100: 50 MiB)
NOISY_IQR = 0.25                   # IQR / median above this: the timing is flagged as noisy
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def iqr_fraction(q1: Optional[float], q3: Optional[float], median: Optional[float]) -> Optional[float]:
    """(q3 - q1) / median, or None when the median is missing or zero."""
    if q1 is None or q3 is None or not median:
        return None
    return (q3 - q1) / median


def is_noisy(q1, q3, median) -> bool:
    f = iqr_fraction(q1, q3, median)
    return f is not None and f > NOISY_IQR


@dataclass
class Timing:
    ms_median: float
    ms_q1: float
    ms_q3: float
    ms_min: float
    ms_max: float
    reps: int
    clock: str

    @property
    def noisy(self) -> bool:
        return is_noisy(self.ms_q1, self.ms_q3, self.ms_median)

    def as_dict(self) -> dict:
        return dict(asdict(self), noisy=self.noisy)


def summarize(samples_ms: list, clock: str) -> Timing:
    s = sorted(samples_ms)
    if len(s) >= 4:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1, q3 = s[0], s[-1]
    return Timing(statistics.median(s), q1, q3, s[0], s[-1], len(s), clock)


def _reps_for(estimate_ms: float, target_ms: float, min_reps: int, max_reps: int) -> int:
    if estimate_ms <= 0:
        return max_reps
    return int(max(min_reps, min(max_reps, target_ms / estimate_ms)))


# ----------------------------------------------------------------------------- GPU clocks
class _CupyClock:
    name = "cuda-event(cupy)"

    def __init__(self):
        import cupy
        self.cp = cupy

    def event(self):
        return self.cp.cuda.Event()

    def record(self, ev):
        ev.record()

    def elapsed_ms(self, a, b):
        return self.cp.cuda.get_elapsed_time(a, b)

    def sync(self):
        self.cp.cuda.get_current_stream().synchronize()
        self.cp.cuda.Device().synchronize()

    def flush(self):
        """Overwrite a buffer larger than L2 (allocated once per clock)."""
        if getattr(self, "_scratch", None) is None:
            self._scratch = self.cp.empty(L2_FLUSH_BYTES // 4, dtype=self.cp.float32)
        self._scratch.fill(1.0)


class _TorchClock:
    name = "cuda-event(torch)"

    def __init__(self):
        import torch
        self.torch = torch

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, ev):
        ev.record()

    def elapsed_ms(self, a, b):
        return a.elapsed_time(b)

    def sync(self):
        self.torch.cuda.synchronize()

    def flush(self):
        """Overwrite a buffer larger than L2 (allocated once per clock)."""
        if getattr(self, "_scratch", None) is None:
            self._scratch = self.torch.empty(L2_FLUSH_BYTES // 4, dtype=self.torch.float32, device="cuda")
        self._scratch.fill_(1.0)


def gpu_clock(prefer: str = "cupy"):
    """A CUDA-event clock through CuPy (or torch, for torch peers or when CuPy is missing)."""
    order = ("cupy", "torch") if prefer == "cupy" else ("torch", "cupy")
    errors = []
    for name in order:
        try:
            return _CupyClock() if name == "cupy" else _TorchClock()
        except Exception as e:        # not installed, no GPU
            errors.append(f"{name}: {type(e).__name__}: {e}")
    raise RuntimeError("no CUDA event clock: " + "; ".join(errors))


def time_gpu(fn: Callable, warmup: int = 2, reps: Optional[int] = None, flush_l2: bool = True,
             target_ms: float = 100.0, min_reps: int = 3, max_reps: int = 200, clock=None) -> Timing:
    """Median GPU time of ``fn()`` over many repetitions, by CUDA events (see the module doc)."""
    clock = clock or gpu_clock()
    est = None
    for _ in range(max(1, warmup)):       # the last warm-up call, timed alone, is the estimate
        a, b = clock.event(), clock.event()
        clock.record(a)
        fn()
        clock.record(b)
        clock.sync()
        est = clock.elapsed_ms(a, b)
    if reps is None:
        reps = _reps_for(est, target_ms, min_reps, max_reps)
    events = [(clock.event(), clock.event()) for _ in range(reps)]
    for start, end in events:
        if flush_l2:
            clock.flush()                 # overwrite > L2 so the timed call starts cold (not timed)
        clock.record(start)
        fn()
        clock.record(end)
    clock.sync()
    return summarize([clock.elapsed_ms(s, e) for s, e in events], clock.name)


def time_host(fn: Callable, warmup: int = 1, reps: Optional[int] = None, target_ms: float = 200.0,
              min_reps: int = 3, max_reps: int = 50, sync: Optional[Callable] = None) -> Timing:
    """Median wall time of ``fn()`` measured with ``time.perf_counter`` (NumPy backend, host work)."""
    for _ in range(max(1, warmup)):
        fn()
    samples = []
    deadline = None
    n = reps if reps is not None else max_reps
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append((time.perf_counter() - t0) * 1e3)
        if reps is None:
            if deadline is None:
                deadline = _reps_for(samples[0], target_ms, min_reps, max_reps)
            if i + 1 >= deadline:
                break
    return summarize(samples, "perf_counter")


# ----------------------------------------------------------------------------- host threads
@contextmanager
def host_threads(n: int):
    """Limit the BLAS and OpenMP thread pools to ``n`` threads inside the block (``n=0``: leave them).

    Yields what the result's meta records: ``requested``, ``pinned`` (whether the limit is in force) and
    ``pools`` (each library's name, version and thread count as seen inside the block).  Without
    threadpoolctl nothing is pinned and the thread environment variables are reported instead."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        env = {k: os.environ.get(k) for k in THREAD_ENV}
        yield dict(requested=n, pinned=False, pools=[], cpu_count=os.cpu_count(), env=env,
                   note="threadpoolctl is not installed: BLAS threads not pinned")
        return

    def pools():
        return [dict(library=p.get("internal_api"), version=p.get("version"), threads=p.get("num_threads"))
                for p in threadpool_info()]

    if n:
        with threadpool_limits(limits=n):
            yield dict(requested=n, pinned=True, pools=pools(), cpu_count=os.cpu_count())
    else:
        yield dict(requested=0, pinned=False, pools=pools(), cpu_count=os.cpu_count())


def describe_threads(info: dict) -> str:
    """One line for the console: the thread count of every pool, pinned or not."""
    pools = ", ".join(f"{p['library']} {p['version']}: {p['threads']}" for p in info.get("pools", ())) or "none found"
    how = f"pinned to {info['requested']}" if info.get("pinned") else (info.get("note") or "not pinned")
    return f"host threads: {how} (pools: {pools}; {info.get('cpu_count')} CPUs)"
