"""The harness: runs a ``Grid`` cell by cell, times every line and pass, and returns one result dict.

Per cell (op, T, D, dtype, causal): inputs are drawn fresh (``workbench.inputs.random_inputs``, a new seed
per cell, never zeros) together with a random output gradient ``do``; each line (our variants, then peers)
is prepared on those inputs -- moved to the device, one forward run whose ctx the backward timing reuses --
and each pass is timed (``timing.py``: CUDA events on the GPU, perf_counter on the host).  Every line and
every pass runs in its own try/except: a failure is a row with ``status="error"`` and the message, a line
that cannot run the cell is a row with ``status="skip"`` and the reason; nothing aborts the run.
Each ok row carries the cost model (``costs.py``), the achieved rates against the ceilings, the relative
difference of its forward output from the cell's first line of ours (``rel_err``), and the speed-up of the
row over the cell's baseline (``vs_baseline = t_baseline / t_row``; > 1: this row is faster).

API lines (``api:<variant>``, kind "api", see ``lines.prepare_api`` and ``Grid.api``) are wall-clocked per
call (median of up to ``grid.api_reps`` calls, a device sync after each on the GPU); their rows carry the
variant's own time of the same pass (``kernel_ms``: CUDA events on the GPU, L2 flushed before each run when
the grid flushes; on the host, in grids with API lines, the same wall-clock loop as the API lines),
``overhead_ms = ms_median - kernel_ms`` (the host cost of the public API), and on the GPU
``host_ms``, the median host time of one call without the sync.  They have no cost model (no rates).
A GPU grid with API lines also measures the host's floor once, before its cells and after them
(``meta.host_floor``, ``host_floor``): the same wall-clock loop around the least a library call can do --
one launch of an empty kernel, with and without allocating a small output first -- so a table of overheads
says how fast the host that measured it was (the same code's overhead has differed 2x between H200 hosts).
The bench times the user's path: output poisoning (``backends.poisoned``) is off while it runs.
"""
from __future__ import annotations

import gc
import importlib
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, replace
from typing import Optional

import numpy as np

from .. import backends, registry
from ..inputs import default_options, random_inputs
from ..opspec import SPECS
from . import costs, lines, peers
from .grid import Grid
from .timing import gpu_clock, time_gpu, time_host

ROW_FIELDS = ("op", "T", "Dk", "Dv", "dtype", "causal", "pass", "line", "kind", "status", "note",
              "ms_median", "ms_q1", "ms_q3", "ms_min", "ms_max", "reps", "clock", "form", "flops", "bytes",
              "intensity", "tflops", "gbps", "compute", "peak_flops", "peak_bw", "bound_ms", "roof_frac",
              "rel_err", "peak_mem_bytes", "baseline", "vs_baseline", "vs_peers", "B", "H", "N",
              "api_of", "kernel_ms", "overhead_ms", "host_ms", "table", "tokens_per_s", "read_bound_ms",
              "read_bound_x", "layout", "mix", "lengths", "vs_single", "vs_padded")
API_WARMUP = 10             # untimed calls of an API line before its samples (fewer when slow: API_WARMUP_MS)
API_WARMUP_MS = 50.0
HOST_ONLY_MS = 1.0          # the host-only loop runs for calls shorter than this (where host time matters)
FLOOR_REPS = 2000           # calls per host-floor sample (host_floor)


def versions() -> dict:
    """Versions of Python and of every library a line may use (None: not importable)."""
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("cupy", "numba", "torch", "triton", "fla"):
        try:
            out[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except Exception:
            out[mod] = None
    return out


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except Exception:
        return None


# CUDA errors after which the context is unusable: the remaining cells are not started.
_STICKY = ("illegal memory access", "illegal address", "unspecified launch failure", "misaligned address",
           "illegal instruction", "hardware stack error", "cudaErrorLaunchFailure", "CUDA_ERROR_LAUNCH_FAILED")


def sticky_error(rows: list) -> Optional[str]:
    """The note of the first row whose error leaves the CUDA context unusable, else None."""
    for r in rows:
        note = r.get("note") or ""
        if r.get("status") == "error" and any(p.lower() in note.lower() for p in _STICKY):
            return f"{r['line']} {r['op']} T={r['T']} {r['pass']}: {note}"
    return None


def _error_text(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}{where}"


class _Clocks:
    """One CUDA-event clock per library, made on first use (with a head start, see ``_HeadStart``); ``setup_s``: the
    seconds the cells spent setting lines up -- ``prepare`` and one untimed first call per pass, where compiles and a
    peer's autotuning happen -- which the grid's time budget does not count."""

    def __init__(self, head_start_ms: float = 0.0):
        self._c = {}
        self.head_start_ms = head_start_ms
        self.setup_s = 0.0

    def get(self, name: str):
        if name not in self._c:
            clock = gpu_clock(prefer=name)
            self._c[name] = _HeadStart(clock, self.head_start_ms) if self.head_start_ms > 0 else clock
        return self._c[name]


_SPIN_SOURCE = r"""extern "C" __global__ void wb_spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) {}
}"""


class _HeadStart:
    """A CUDA-event clock whose ``flush`` (called before every timed run) also keeps the GPU busy for ``ms``
    milliseconds with a one-thread spin kernel: the host queues the whole timed call meanwhile, so the
    events measure the kernels' own time, not the host's launch gaps."""

    def __init__(self, clock, ms: float):
        self._clock = clock
        self.name = f"{clock.name}, {ms:g} ms head start"
        self._spin = None
        self._ms = ms

    def __getattr__(self, name):                 # event, record, elapsed_ms, sync
        return getattr(self._clock, name)

    def flush(self):
        self._clock.flush()
        if self._spin is None:
            self._spin = self._make_spin()
        self._spin()

    def _make_spin(self):
        if "torch" in self._clock.name:
            import torch
            khz = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "clock_rate", 2_000_000)
            return lambda: torch.cuda._sleep(int(self._ms * khz))
        import cupy as cp
        khz = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())["clockRate"]
        kern = cp.RawKernel(_SPIN_SOURCE, "wb_spin")
        cycles = np.int64(self._ms * khz)
        return lambda: kern((1,), (1,), (cycles,))


def _first_call(prep: lines.Prepared, pass_: str, clocks: _Clocks) -> float:
    """Seconds of one untimed, synchronised call of the pass (0 when the line has none): the compiles and autotuning
    of a line's first call, kept out of the grid's budget (``_Clocks.setup_s``)."""
    fn = prep.pass_fn(pass_)
    if fn is None:
        return 0.0
    t0 = time.perf_counter()
    fn()
    if prep.clock == "wall":
        if prep.sync is not None:
            prep.sync()
    elif prep.clock != "host":
        clocks.get(prep.clock).sync()
    return time.perf_counter() - t0


def _time(prep: lines.Prepared, pass_: str, grid: Grid, clocks: _Clocks):
    """(Timing, extra row fields) of one pass."""
    fn = prep.pass_fn(pass_)
    if fn is None:
        raise lines.Skip(f"no {pass_} pass")
    if prep.clock == "wall" or (prep.clock == "host" and grid.api != "off"):
        return _time_wall(fn, prep.sync, grid)      # host lines: timed like the API lines they are compared to
    if prep.clock == "host":
        return time_host(fn, target_ms=grid.target_ms), {}
    return time_gpu(fn, warmup=2, flush_l2=grid.flush_l2, target_ms=grid.target_ms, min_reps=3,
                    clock=clocks.get(prep.clock)), {}


def _time_wall(fn, sync, grid: Grid):
    """Wall time per call of an API line: ``fn()`` then ``sync()`` per sample, as many samples as fit
    ``grid.api_budget_ms`` (3 .. ``grid.api_reps``); with a sync and calls under HOST_ONLY_MS, also the median
    host time of a call alone."""
    def call():
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        return (time.perf_counter() - t0) * 1e3
    spent, est_ms = 0.0, None
    for i in range(API_WARMUP):
        est_ms = call()
        spent += est_ms
        if i >= 1 and spent > API_WARMUP_MS:
            break
    reps = int(max(3, min(grid.api_reps, grid.api_budget_ms / max(est_ms, 1e-6))))
    t = time_host(fn, warmup=1, reps=reps, sync=sync)
    extra = {}
    if sync is not None and t.ms_median < HOST_ONLY_MS:
        t = replace(t, clock="wall+sync")
        extra["host_ms"] = _median_s(fn, reps) * 1e3
        sync()
    return t, extra


def _median_s(fn, reps: int, sync=None) -> float:
    """Median seconds of ``reps`` calls of ``fn`` (each followed by ``sync()`` inside the timing if given)."""
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


_EMPTY_SOURCE = r"""extern "C" __global__ void wb_empty(float* out, int n) {
    if (n < 0) out[0] = 0.f;
}"""


def host_floor(reps: int = FLOOR_REPS) -> dict:
    """The host's floor for one synced call through CuPy, in microseconds (medians of ``reps`` calls, timed
    as the API lines are: the call, then a device sync): ``launch``: one launch of an empty kernel (a pointer
    and an int argument, one block); ``alloc_launch``: a 64-float ``cupy.empty`` first, as an op allocates
    its output; ``launch_host``: the launch alone, no sync (the host's share).  No kernel compiles here:
    the empty kernel is built by NVRTC once per process, before the samples."""
    import cupy as cp
    kern = cp.RawKernel(_EMPTY_SOURCE, "wb_empty")
    buf = cp.empty(64, cp.float32)
    n = np.int32(64)
    sync = cp.cuda.Device().synchronize

    def launch():
        kern((1,), (32,), (buf, n))

    def alloc_launch():
        kern((1,), (32,), (cp.empty(64, cp.float32), n))

    out = {}
    for name, fn in (("launch", launch), ("alloc_launch", alloc_launch)):
        _median_s(fn, 50, sync)                                 # warm-up: the module loaded, the pool primed
        out[name] = _median_s(fn, reps, sync) * 1e6
    out["launch_host"] = _median_s(launch, reps) * 1e6
    sync()
    return out


def _free_device_memory():
    gc.collect()
    peers.free_torch_memory()
    cp = sys.modules.get("cupy")
    if cp is not None:
        try:
            cp.cuda.Device().synchronize()
            cp.get_default_memory_pool().free_all_blocks()
        except Exception:
            pass


def _cell_lines(grid: Grid, op: str, dtype: str, options: dict, shape: costs.Shape, arrays_shapes: dict):
    """[(key, kind, form, prepare(arrays, dout, options) or None, why_not, comparable, compute_fp32)]."""
    out = []
    vopts = None
    try:
        vopts = lines.validated_options(op, options, shape.Dk)
    except Exception as e:
        vopts_err = _error_text(e)
    else:
        vopts_err = None
    for v in lines.our_lines(op, grid.backends, grid.exclude):
        if not grid.wants(v.key):
            continue
        why = vopts_err or grid.too_long(v.key, shape.T) or lines.why_not(v, dtype, vopts, arrays_shapes)
        form = costs.form_of(op, v.name, getattr(v, "form", ""))
        prep = (lambda a, d, o, v=v: lines.prepare_variant(v, a, d, o))
        out.append((v.key, "ours", form, prep, why, True, None))
    ours = [v for v in lines.our_lines(op, grid.backends, grid.exclude) if grid.wants(v.key)]
    for v in lines.api_variants(op, dtype, grid.api, ours):
        why = vopts_err or grid.too_long(v.key, shape.T) or lines.why_not(v, dtype, vopts, arrays_shapes)
        prep = (lambda a, d, o, v=v: lines.prepare_api(v, a, d, o))
        out.append((f"api:{v.key}", "api", costs.form_of(op, v.name, getattr(v, "form", "")), prep, why, True,
                    None))
    if grid.peers:
        torch_why = peers.torch_cuda_ok() if grid.device == "gpu" else "peers run on the GPU only"
        for p in peers.peers_for(op):
            if not grid.wants(p.key):
                continue
            why = torch_why or p.why_not(dtype, options, shape)
            form = "linear" if SPECS[op].linear_states else "quadratic"
            out.append((p.key, "peer", form, p.prepare, why, p.comparable, p.compute_fp32))
    return out


def cell_inputs(op: str, B: int, H: int, T: int, D: int, dtype: str, seed: int, n_gates: int = 2,
                **input_args) -> tuple:
    """(arrays, dout) of one cell: the op's inputs (``random_inputs``, B x H heads of T x D; input_args: its
    generator's other keywords, e.g. log_decay_range) and the output's gradient (its own seed, ``seed + 10 000``),
    NumPy arrays in ``dtype``."""
    arrays = random_inputs(op, lead=(B, H), T=T, Dk=D, Dv=D, dtype=dtype, seed=seed, n_gates=n_gates, **input_args)
    dout = np.random.default_rng(seed + 10_000).standard_normal((B, H, T, D)).astype(dtype)
    return arrays, dout


def run_cell(grid: Grid, op: str, T: int, D: int, dtype: str, causal: bool, ceil: dict, seed: int,
             clocks: _Clocks) -> list:
    B, H = grid.lead
    shape = costs.Shape(B * H, T, D, D, grid.n_gates)
    options = default_options(op, causal=causal)
    base = dict(op=op, T=T, Dk=D, Dv=D, dtype=dtype, causal=causal or bool(SPECS[op].causal_only),
                B=B, H=H, N=B * H)
    try:
        arrays, dout = cell_inputs(op, B, H, T, D, dtype, seed, grid.n_gates)
    except Exception as e:
        return [dict(base, line="inputs", kind="-", status="error", note=_error_text(e), **{"pass": p})
                for p in grid.passes]
    arrays_shapes = {n: a.shape for n, a in zip(SPECS[op].array_names, arrays)}
    rows, ref_out = [], None
    for key, kind, form, prepare, why, comparable, compute_fp32 in _cell_lines(
            grid, op, dtype, options, shape, arrays_shapes):
        line_base = dict(base, line=key, kind=kind, form=form)
        if why:
            rows += [dict(line_base, status="skip", note=why, **{"pass": p}) for p in grid.passes]
            continue
        t_setup = time.perf_counter()
        try:
            prep = prepare(arrays, dout, options)
        except lines.Skip as e:
            rows += [dict(line_base, status="skip", note=str(e), **{"pass": p}) for p in grid.passes]
            continue
        except Exception as e:
            rows += [dict(line_base, status="error", note="prepare: " + _error_text(e), **{"pass": p})
                     for p in grid.passes]
            _free_device_memory()
            continue
        clocks.setup_s += time.perf_counter() - t_setup
        rel_err, notes = None, [prep.note] if prep.note else []
        try:
            out = lines.to_numpy(prep.output).reshape(-1)
            if ref_out is None and kind == "ours":
                ref_out = out
            if ref_out is not None and comparable:
                rel_err = float(np.linalg.norm(out - ref_out) / max(np.linalg.norm(ref_out), 1e-300))
        except Exception as e:
            notes.append("output check: " + _error_text(e))
        peak_mem = None
        if prep.peak_mem is not None and grid.device == "gpu" and "fwdbwd" in grid.passes:
            try:
                peak_mem = prep.peak_mem()
            except Exception as e:
                notes.append("peak_mem: " + _error_text(e))
        compute = prep.compute or (compute_fp32 if dtype == "float32" else None) or dtype
        for pass_ in grid.passes:
            row = dict(line_base, rel_err=rel_err, peak_mem_bytes=peak_mem, compute=compute,
                       note="; ".join(notes), **{"pass": pass_})
            try:
                clocks.setup_s += _first_call(prep, pass_, clocks)
                t, extra = _time(prep, pass_, grid, clocks)
            except lines.Skip as e:
                rows.append(dict(row, status="skip", note=str(e)))
                continue
            except Exception as e:
                rows.append(dict(row, status="error", note=_error_text(e)))
                continue
            if kind == "api":
                rows.append(dict(row, **t.as_dict(), **extra, status="ok", api_of=prep.extra["api_of"]))
                continue
            flop = costs.flops(op, form, shape, causal, pass_)
            nbytes = costs.min_bytes(op, shape, dtype, pass_)
            peak_flops = (ceil.get("flops") or {}).get(compute)
            peak_bw = ceil.get("bw")
            row.update(t.as_dict(), status="ok", peak_flops=peak_flops, peak_bw=peak_bw,
                       **costs.achieved(flop, nbytes, t.ms_median * 1e-3, peak_flops, peak_bw))
            rows.append(row)
        del prep
        _free_device_memory()
    _add_ratios(rows, grid.baseline.get(op, ()))
    _add_overheads(rows)
    return rows


def _add_overheads(rows: list) -> None:
    """Every ok API row: the time of its variant's row in the same pass (kernel_ms) and the difference."""
    own = {(r["line"], r["pass"]): r["ms_median"] for r in rows if r.get("status") == "ok" and r["kind"] == "ours"}
    for r in rows:
        if r.get("status") == "ok" and r["kind"] == "api":
            k = own.get((r["api_of"], r["pass"]))
            if k is not None:
                r["kernel_ms"] = k
                r["overhead_ms"] = r["ms_median"] - k


def _add_ratios(rows: list, preference: tuple) -> None:
    """Per pass: the baseline (first preferred line measured ok), vs_baseline for every ok row, and for our
    rows the speed-up over each peer measured (vs_peers: {peer: t_peer / t_ours})."""
    for pass_ in {r["pass"] for r in rows}:
        ok = {r["line"]: r for r in rows if r["pass"] == pass_ and r.get("status") == "ok"}
        base = next((k for k in preference if k in ok), None)
        for r in ok.values():
            if base is not None:
                r["baseline"] = base
                r["vs_baseline"] = ok[base]["ms_median"] / r["ms_median"]
            if r["kind"] == "ours":
                r["vs_peers"] = {k: p["ms_median"] / r["ms_median"] for k, p in ok.items() if p["kind"] == "peer"}


class _OpsCells:
    """The cells of a ``Grid`` (kind "ops"); decode.py and packed.py run the other kinds the same way."""

    @staticmethod
    def line_keys(grid) -> dict:
        return {op: [v.key for v in lines.our_lines(op, grid.backends, grid.exclude)] for op in grid.ops}

    @staticmethod
    def run_cell(grid, cell, ceil: dict, seed: int, clocks: _Clocks) -> list:
        return run_cell(grid, *cell, ceil, seed, clocks)


def _runner(grid):
    """What runs the cells of ``grid``: a module or class with ``line_keys(grid)`` and ``run_cell(grid, cell,
    ceil, seed, clocks)`` (kind "decode": decode.py, "packed": packed.py)."""
    return _OpsCells if grid.kind == "ops" else importlib.import_module(f".{grid.kind}", __package__)


def _cell_fields(cell) -> dict:
    """A cell as a dict, op first (skipped-cell records, progress lines)."""
    if isinstance(cell, tuple):
        return dict(zip(("op", "T", "D", "dtype", "causal"), cell))
    return asdict(cell)


def _cell_label(fields: dict) -> str:
    return f"{fields['op']} " + " ".join(f"{k}={v}" if k not in ("dtype", "mix") else str(v)
                                         for k, v in fields.items() if k != "op")


def run_grid(grid, ceil: dict, seed: int = 0, echo=print, progress: bool = True, on_cell=None) -> dict:
    """Run every cell of ``grid`` (within its time budget); returns {"meta", "results", "skipped_cells"}.
    ``on_cell(partial_result)`` is called after every cell (the command writes the JSON each time, so a run
    killed from outside keeps what it measured; ``meta.complete`` is False until the end)."""
    from tqdm import tqdm
    failures = registry.load_all(allow_failures=True)       # a provider that does not import: time the rest
    load_error = "; ".join(_error_text(e) for _, e in failures) or None
    if load_error and echo:
        echo(f"bench: registry.load_all failed ({load_error}); timing the variants registered so far")
    runner = _runner(grid)
    meta = dict(grid=asdict(grid), device=ceil.get("device"), ceilings=ceil, versions=versions(),
                commit=git_commit(), date=time.strftime("%Y-%m-%d %H:%M:%S"), seed=seed,
                poisoning=False, registry_error=load_error, lines=runner.line_keys(grid))
    meta["grid"]["kind"] = grid.kind
    cells = grid.cells()
    rows, skipped = [], []
    meta["complete"] = False
    partial = {"meta": meta, "results": rows, "skipped_cells": skipped}
    clocks = _Clocks(grid.head_start_ms)
    floors = grid.device == "gpu" and grid.api != "off"
    if floors:
        meta["host_floor"] = {"before": _floor_or_error()}
    t0 = time.perf_counter()
    tty = sys.stderr.isatty()
    bar = tqdm(cells, desc=f"bench {grid.name}", unit="cell", disable=not (progress and tty))
    lost = None
    for i, cell in enumerate(bar):
        fields = _cell_fields(cell)
        label = _cell_label(fields)
        elapsed = time.perf_counter() - t0 - clocks.setup_s          # the lines' first calls not counted
        if lost or (i > 0 and elapsed > grid.budget_s):          # the first cell always runs
            reason = f"CUDA context lost: {lost}" if lost else f"time budget of {grid.budget_s:.0f} s spent"
            skipped.append(dict(fields, reason=reason))
            continue
        bar.set_postfix_str(label)
        with backends.poisoned(False):             # time the user's path: no NaN fills of outputs
            cell_rows = runner.run_cell(grid, cell, ceil, seed + 7919 * i, clocks)
        rows += cell_rows
        if grid.device == "gpu":
            lost = sticky_error(cell_rows)
            if lost and echo:
                echo(f"bench: stopping: the CUDA context is unusable after {lost}")
        if progress and not tty and echo:
            n_ok = sum(r["status"] == "ok" for r in cell_rows)
            n_err = sum(r["status"] == "error" for r in cell_rows)
            echo(f"[{i + 1}/{len(cells)}] {label}: {n_ok} ok, {n_err} errors ({time.perf_counter() - t0:.0f} s)")
        if on_cell is not None:
            meta["wall_s"] = time.perf_counter() - t0
            try:
                on_cell(partial)
            except Exception as e:
                if echo:
                    echo(f"bench: saving the partial result failed: {_error_text(e)}")
    meta["wall_s"] = time.perf_counter() - t0
    meta["setup_s"] = clocks.setup_s
    if floors:
        meta["host_floor"]["after"] = _floor_or_error()
    meta["complete"] = True
    return partial


def _floor_or_error() -> dict:
    try:
        return host_floor()
    except Exception as e:                      # a grid's timing never fails because of its floor
        return {"error": _error_text(e)}
