"""Compile every kernel for the local GPU ahead of use (``cli.py warmup``), so later processes load binaries
from the on-disk caches instead of compiling on their first call.

CuPy: every declared compile group of the sources the op's CuPy variants launch (``kernels/cupy/_module.py``;
expressions listed in a module's ``INSTANTIATIONS`` but in no declared group are compiled alone, as
``get_kernel`` would), one NVRTC run each, spread over processes; CuPy stores each binary under
``CUPY_CACHE_DIR`` (default ``~/.cupy/kernel_cache``).  Then one tiny fwd+bwd through the public API per
variant, dtype and option set, which compiles (and caches) CuPy's own elementwise and reduction kernels the
launch code uses.

Numba: ``kernels.numba.warmup_tasks(ops)`` (a list of ``(label, callable)``) or ``kernels.numba.warmup(ops=...)``
when the Numba backend provides one; otherwise Numba is skipped with a message (its kernels are compiled on
first use in every process).
"""
from __future__ import annotations

import importlib
import itertools
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from . import backends, registry
from .inputs import default_options, random_inputs
from .opspec import spec

GPU_BACKENDS = ("cupy", "numba")
TINY_Ts = (64, 70)              # a whole number of chunks, and a padded last chunk (two launch paths)
TINY_D = 64


@dataclass(frozen=True)
class Task:
    """One unit of warm-up work: ``run()`` compiles (or loads) something; ``group`` is set for a CuPy
    compile group (run in a worker process), else the task runs in this process."""
    backend: str
    label: str
    run: Optional[Callable[[], None]] = None
    group: Optional[tuple] = None             # (source, expressions)


# ----------------------------------------------------------------------------- CuPy
def _module_of(variant):
    fn = getattr(variant.forward, "func", variant.forward)        # functools.partial or a function
    return sys.modules.get(getattr(fn, "__module__", ""), None)


def cupy_groups(ops) -> list:
    """[(source, expressions)]: every compile group the CuPy variants of ``ops`` and their step kernels
    (kernels/cupy/steps.py) can launch."""
    from kernels.cupy import _module, steps
    wanted = {}
    for op in ops:
        for v in registry.variants(op, "cupy"):
            for src, expr in getattr(_module_of(v), "INSTANTIATIONS", ()):
                wanted.setdefault((src, _module.group_of(src, expr)), None)
    for src, expr in steps.instantiations(ops):
        wanted.setdefault((src, _module.group_of(src, expr)), None)
    return [(src, g) for src, g in wanted if src not in _module.SM90A_SOURCES or _module.sm90a()]


def compile_cupy_group(source: str, expressions: tuple) -> float:
    """Compile one group for the current device (worker processes call this); returns the seconds taken."""
    from kernels.cupy import _module
    t0 = time.perf_counter()
    _module.compile_group(source, tuple(expressions))
    return time.perf_counter() - t0


def _options(op: str) -> list:
    """Every mask and every combination of the op's finite option values (``OpSpec.choices``)."""
    sp = spec(op)
    extra = [dict(zip(sp.choices, values)) for values in itertools.product(*sp.choices.values())]
    return [default_options(op, causal=c, **x) for c, x in itertools.product(sp.causal_values, extra)]


def _api_call(variant, dtype: str, T: int, options: dict):
    def run():
        import cupy as cp
        from . import ops
        arrays = random_inputs(variant.op, (1,), T, TINY_D, TINY_D, dtype if dtype != "bfloat16" else "float32",
                               seed=0, feature_map=options.get("feature_map", "identity"))
        xs = [cp.asarray(a.astype(_np_dtype(dtype))) for a in arrays]
        out, pullback = ops.vjp(ops.PUBLIC_OPS[variant.op], *xs, backend=variant.key, **options)
        pullback(cp.ones_like(out))
        cp.cuda.Device().synchronize()
    return run


def _np_dtype(dtype: str):
    from .inputs import numpy_dtype
    return numpy_dtype(dtype)


def _step_call(op: str, dtype: str):
    def run():
        import cupy as cp
        from . import steps
        arrays = random_inputs(op, (2,), 1, TINY_D, TINY_D, dtype if dtype != "bfloat16" else "float32", seed=0)
        tok = [cp.asarray(a[:, 0].astype(_np_dtype(dtype))) for a in arrays]
        steps.step(op, *tok, path="kernel")
        cp.cuda.Device().synchronize()
    return run


def cupy_tasks(ops) -> list:
    from kernels.cupy import steps as step_kernels
    tasks = [Task("cupy", f"compile {src}: {len(exprs)} kernels ({exprs[0]}{', ...' if len(exprs) > 1 else ''})",
                  group=(src, exprs)) for src, exprs in cupy_groups(ops)]
    for op in ops:
        for v in registry.variants(op, "cupy"):
            for dtype in v.dtypes:
                if dtype == "bfloat16" and importlib.util.find_spec("ml_dtypes") is None:
                    continue
                for T, opts in itertools.product(TINY_Ts, _options(op)):
                    if v.unsupported_reason(opts, spec(op).shapes((1,), T, TINY_D, TINY_D)) is not None:
                        continue                # e.g. normalize=True on a tf32 variant: the op refuses it
                    shown = ", ".join(f"{k}={val}" for k, val in opts.items() if val is not None)
                    tasks.append(Task("cupy", f"call {v.key} {dtype} T={T} {shown}", run=_api_call(v, dtype, T, opts)))
    for op in (o for o in ops if o in step_kernels.OPS):
        for dtype in step_kernels.CTYPE:
            if dtype != "bfloat16" or importlib.util.find_spec("ml_dtypes") is not None:
                tasks.append(Task("cupy", f"step {op} {dtype} (the step kernel)", run=_step_call(op, dtype)))
    return tasks


# ----------------------------------------------------------------------------- Numba
def numba_tasks(ops) -> tuple:
    """(tasks, note): the Numba backend's own warm-up, or no tasks and why."""
    try:
        mod = importlib.import_module("kernels.numba")
    except Exception as e:
        return [], f"numba: kernels.numba does not import ({type(e).__name__}: {e}); skipped"
    if callable(getattr(mod, "warmup_tasks", None)):
        return [Task("numba", label, run=fn) for label, fn in mod.warmup_tasks(tuple(ops))], ""
    for name in ("warmup", "precompile"):
        fn = getattr(mod, name, None)
        if callable(fn):
            return [Task("numba", f"kernels.numba.{name}({', '.join(ops)})", run=lambda fn=fn: fn(ops=tuple(ops)))], ""
    return [], ("numba: skipped -- the Numba backend has no precompile step yet (kernels.numba.warmup_tasks or "
                "warmup); its kernels compile on first use in every process")


# ----------------------------------------------------------------------------- plan and run
def usable(backend: str) -> tuple:
    """(ok, why) for warming ``backend`` up here: a real GPU is needed (the simulator compiles nothing)."""
    if backend == "numba" and backends.numba_simulator():
        return False, "the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1) compiles nothing"
    return backends.status(backend)


def plan(ops=(), backends_=()) -> tuple:
    """(tasks, notes) for the given ops (default all) and GPU backends (default all)."""
    ops = tuple(ops) or registry.OPS
    tasks, notes = [], []
    for b in tuple(backends_) or GPU_BACKENDS:
        if b == "cupy":
            tasks += cupy_tasks(ops)
        elif b == "numba":
            t, note = numba_tasks(ops)
            tasks += t
            if note:
                notes.append(note)
        else:
            raise ValueError(f"unknown GPU backend {b!r}; expected one of {', '.join(GPU_BACKENDS)}")
    return tasks, notes


def run(tasks: list, jobs: int = 0, echo=print, progress: bool = True) -> list:
    """Run the tasks: CuPy compile groups in ``jobs`` worker processes (0: one per CPU core), then the
    others here, in order.  Returns the failures as ``[(label, error text)]``."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing
    from tqdm import tqdm
    failures = []
    bar = tqdm(total=len(tasks), desc="warmup", unit="task", disable=not progress, file=sys.stderr)
    if echo and progress:
        echo = bar.write                      # messages above the bar, not through it
    groups = [t for t in tasks if t.group is not None]
    jobs = jobs or os.cpu_count() or 1
    if groups and jobs > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(groups)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(compile_cupy_group, *t.group): t for t in groups}
            for f in as_completed(futures):
                _done(futures[f], f.exception(), failures, bar, echo)
    else:
        for t in groups:
            _done(t, _attempt(lambda t=t: compile_cupy_group(*t.group)), failures, bar, echo)
    for t in tasks:
        if t.group is None:
            bar.set_postfix_str(t.label[:60])
            _done(t, _attempt(t.run), failures, bar, echo)
    bar.close()
    return failures


def _attempt(fn) -> Optional[BaseException]:
    try:
        fn()
    except Exception as e:            # reported per task; the others still run
        return e
    return None


def _done(task: Task, error, failures: list, bar, echo) -> None:
    bar.update(1)
    if error is not None:
        msg = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"
        failures.append((task.label, msg))
        if echo:
            echo(f"warmup: FAILED {task.label}: {msg}")
