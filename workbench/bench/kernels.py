"""The GPU time of every kernel one call through the public API launches (``cli.py kernels``): where a variant's
time goes, kernel by kernel.

Per call (``wb.vjp`` + pullback for fwd+bwd, the public op for fwd, one ``vjp``'s pullback for bwd), every launch of
the CuPy variant is bracketed by two CUDA events on the stream (``kernels.cupy._module.traced_launches``); the
median over ``calls`` calls of each launch's event pair is its time.  That is a kernel's GPU time where the host runs
ahead of the GPU (long T: the host's tens of microseconds per call hide under milliseconds of kernels); at short T,
where the GPU waits for the host, a pair also holds the launch's own latency.  ``span_us``, from an event before the
call to one after it, holds everything the GPU ran in between: kernels CuPy launched itself (casts, copies), which
the tracer does not see, show as ``span - sum``.  The call is the bench's API line on the bench's inputs
(``lines.prepare_api``, ``harness.cell_inputs``: the same seed, B x H heads of T x D).  CuPy variants only: Numba's launches go through Numba's dispatcher."""
from __future__ import annotations

import importlib
import math
import statistics
from dataclasses import asdict, dataclass
from typing import Optional

from .. import registry
from ..inputs import default_options
from .costs import PASSES

MAX_LAUNCHES = 256          # launches one traced call may make (events are preallocated for them)


@dataclass(frozen=True)
class KernelTime:
    index: int              # the launch's place in the call
    kernel: str             # its name expression (kernels.cupy._module.kernel_label)
    us: float               # median GPU time over the calls


@dataclass(frozen=True)
class KernelSplit:
    op: str
    variant: str
    dtype: str
    B: int
    H: int
    T: int
    D: int
    pass_: str
    calls: int
    kernels: tuple          # KernelTime, in launch order
    span_us: float          # median of the whole call on the GPU (an event before it to one after it)
    log_decay_range: Optional[tuple] = None     # decayed: the inputs' log decays (None: the bench's)

    @property
    def sum_us(self) -> float:
        return sum(k.us for k in self.kernels)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        d.update(sum_us=round(self.sum_us, 3), untraced_us=round(self.span_us - self.sum_us, 3))
        return d

    def table(self) -> list:
        """Rows: launch, kernel, us, share of the span."""
        rows = [[k.index, k.kernel, f"{k.us:.1f}", f"{100 * k.us / self.span_us:.1f}%" if self.span_us else ""]
                for k in self.kernels]
        rows.append(["", "sum of the kernels", f"{self.sum_us:.1f}",
                     f"{100 * self.sum_us / self.span_us:.1f}%" if self.span_us else ""])
        rows.append(["", "the call's GPU span (gaps and untraced work: span - sum)", f"{self.span_us:.1f}",
                     f"{self.span_us - self.sum_us:+.1f} us"])
        return rows


def check_log_decay_range(op: str, r) -> tuple:
    """(lo, hi) as floats where ``op`` takes log decays and lo <= hi <= 0 are finite; ValueError naming what is wrong
    otherwise."""
    if op != "decayed":
        raise ValueError(f"--log-decay-range: only the decayed op takes log decays (got --op {op})")
    lo, hi = (float(x) for x in r)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi <= 0.0):
        raise ValueError(f"--log-decay-range: expected finite LO <= HI <= 0 (got {lo:g} {hi:g})")
    return lo, hi


def cupy_variant(op: str, key: str, dtype: str) -> registry.Variant:
    """The CuPy variant ``key`` (``cupy`` or ``cupy:NAME``) of ``op`` that runs ``dtype``; ValueError naming what
    is wrong otherwise."""
    backend, _, name = key.partition(":")
    if backend != "cupy":
        raise ValueError(f"--backend {key}: kernels traces CuPy variants only (expected cupy or cupy:NAME)")
    v = registry.get(op, "cupy", name or None, dtype=dtype)
    if dtype not in v.dtypes:
        raise ValueError(f"--backend {key}: {v.key} does not run {dtype} (its dtypes: {', '.join(v.dtypes)})")
    return v


def kernel_split(op: str, key: str, dtype: str = "float16", B: int = 2, H: int = 16, T: int = 4096, D: int = 64,
                 pass_: str = "fwdbwd", calls: int = 15, warmup: int = 3, seed: int = 0,
                 log_decay_range: Optional[tuple] = None) -> KernelSplit:
    """Trace ``calls`` calls (after ``warmup`` untraced ones) of the public API running CuPy variant ``key``;
    log_decay_range (decayed only): the (lo, hi) of the uniform log decays instead of the bench's."""
    from kernels.cupy._module import traced_launches

    from .harness import cell_inputs
    from .lines import prepare_api
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {PASSES} (got {pass_!r})")
    if calls < 1:
        raise ValueError(f"calls must be >= 1 (got {calls})")
    v = cupy_variant(op, key, dtype)
    cp = importlib.import_module("cupy")
    # the bench's API line on the bench's inputs: the arrays on the device, one vjp whose pullback "bwd" reuses
    extra = {} if log_decay_range is None else dict(log_decay_range=check_log_decay_range(op, log_decay_range))
    call = prepare_api(v, *cell_inputs(op, B, H, T, D, dtype, seed, **extra),
                       default_options(op, causal=True)).pass_fn(pass_)
    for _ in range(warmup):
        call()
    cp.cuda.Device().synchronize()
    times, names, spans = {}, {}, []
    start, end = cp.cuda.Event(), cp.cuda.Event()
    pool = [cp.cuda.Event() for _ in range(2 * MAX_LAUNCHES)]    # made once: no event is created inside a call
    for _ in range(calls):
        seen, handed = [], iter(pool)

        def new_event():
            try:
                return next(handed)
            except StopIteration:
                raise RuntimeError(f"{v.key}: more than {MAX_LAUNCHES} launches in one call") from None
        with traced_launches(lambda label, a, b: seen.append((label, a, b)), new_event):
            start.record()
            call()
            end.record()
        end.synchronize()
        spans.append(cp.cuda.get_elapsed_time(start, end) * 1e3)
        for i, (label, a, b) in enumerate(seen):
            if names.setdefault(i, label) != label:
                raise RuntimeError(f"{v.key}: launch {i} was {names[i]} in an earlier call, {label} in this one")
            times.setdefault(i, []).append(cp.cuda.get_elapsed_time(a, b) * 1e3)
    ks = tuple(KernelTime(i, names[i], statistics.median(times[i])) for i in sorted(times))
    return KernelSplit(op, v.key, dtype, B, H, T, D, pass_, calls, ks, statistics.median(spans),
                       extra.get("log_decay_range"))
