"""Decode throughput (``DecodeGrid``, kind "decode"): one token of a linear-time op for a batch of sequences.

Per cell (op, B, D, dtype): a random token for B sequences of ``grid.heads`` heads and a random state of
N = B * heads heads (``workbench.inputs``), on the device for GPU grids.  Lines:

    step:<path>   ``workbench.steps.step(..., path=<path>)``: "kernel" (the CuPy step kernel, one launch) or
                  "array" (the array form: NumPy on the host, many small CuPy operations on the GPU); timed
                  like the ops' variants (CUDA events with the grid's head start, so the host's launch time
                  is hidden, and the L2 cache flushed before every sample, so the state comes from DRAM as
                  it does between a model's layers; perf_counter on the host)
    api:step      the public ``*_attention_step`` wall-clocked per call with a device sync (what a Python
                  decode loop gets per token: validation, allocation and launch included)

Every call starts from the same state (the new state is dropped).  Each ok row has, besides the timing:
``tokens_per_s = B / time``, the cost model of a step (``costs.step_flops``, ``costs.step_bytes``: state read
and written, token in, output out) with ``bound_ms`` (that traffic at the device's copy bandwidth) and
``roof_frac`` (bound / time), ``read_bound_ms`` (the state's read alone at that bandwidth) and
``read_bound_x = time / read_bound_ms`` (the decode goal: at most 2 at B = 64, one 64 x 64 head each), and
``rel_err`` of its output against the cell's first line.  On the GPU a row ``floor`` times an empty kernel the
same way (the launch and the events alone), and the kernel rows get ``above_floor_x = (time - floor) /
read_bound_ms``: how far the step's own work is from the bound once the floor every launch pays is taken off.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import state as wst
from .. import steps
from ..inputs import random_inputs, random_state
from . import costs, lines
from .harness import _add_overheads, _error_text, _time_wall
from .timing import time_gpu, time_host


@functools.lru_cache(maxsize=1)
def _empty_launch():
    """A launch of an empty kernel (one block of one thread): what a step costs before it does anything."""
    import cupy as cp
    k = cp.RawKernel('extern "C" __global__ void wb_empty() {}', "wb_empty")
    return lambda: k((1,), (1,), ())


def line_keys(grid) -> dict:
    keys = [f"step:{p}" for p in grid.paths] + (["api:step"] if grid.api != "off" else [])
    return {op: keys for op in grid.ops}


def numpy_dtype(dtype: str):
    """The NumPy dtype of a dtype name (bfloat16 through ml_dtypes)."""
    if dtype == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _token(x):
    return x[..., 0, :] if x.ndim == 4 else x[..., 0]


def run_cell(grid, cell, ceil: dict, seed: int, clocks) -> list:
    op, B, D, dtype = cell.op, cell.B, cell.D, cell.dtype
    H = grid.heads
    N = B * H
    options = dict(grid.options.get(op, {}))
    base = dict(op=op, T=1, Dk=D, Dv=D, dtype=dtype, causal=True, B=B, H=H, N=N, table="decode",
                **{"pass": "step"})
    gpu = grid.device == "gpu"
    try:
        vopts = steps.validated_options(op, options, D)
        arrays = random_inputs(op, (B, H), 1, D, D, "float32", seed=seed, n_gates=grid.n_gates,
                               feature_map=vopts.get("feature_map", "identity"))
        tok = [_token(a).astype(numpy_dtype(dtype)) for a in arrays]
        st = random_state(op, (B, H), D, D, dtype, seed=seed, normalize=vopts.get("normalize", False))
        sync = None
        if gpu:
            import cupy as cp
            tok = [cp.asarray(a) for a in tok]
            st = wst.map_state(cp.asarray, st)
            sync = cp.cuda.Device().synchronize
    except Exception as e:
        return [dict(base, line="inputs", kind="-", status="error", note=_error_text(e))]
    normalize = vopts.get("normalize", False)
    nbytes = costs.step_bytes(op, N, D, D, dtype, normalize, grid.n_gates)
    read_bytes = costs.step_state_bytes(op, N, D, D, dtype, normalize)
    flop = costs.step_flops(op, N, D, D)
    peak_bw, peak_flops = ceil.get("bw"), (ceil.get("flops") or {}).get(dtype)
    public = steps.STEPS[op]
    todo = [(f"step:{p}", "ours", (lambda p=p: steps.step(op, *tok, state=st, path=p, **options)))
            for p in grid.paths]
    if grid.api != "off":
        todo.append(("api:step", "api", lambda: public(*tok, st, **options)))
    rows, ref_out = [], None
    floor_ms = None
    if gpu:                                        # the harness's floor: an empty kernel, timed the same way
        t = time_gpu(_empty_launch(), warmup=2, flush_l2=grid.flush_l2, target_ms=grid.target_ms, min_reps=3,
                     clock=clocks.get("cupy"))
        floor_ms = t.ms_median
        rows.append(dict(base, line="floor", kind="floor", status="ok", **t.as_dict(),
                         tokens_per_s=B / (floor_ms * 1e-3), note="an empty kernel: the launch + event floor"))
    for key, kind, fn in todo:
        row = dict(base, line=key, kind=kind)
        try:
            out = fn()[0]                          # compiles; checks the path can take the cell
        except ValueError as e:                    # path="kernel" refused (the host, a dtype, a head dim)
            rows.append(dict(row, status="skip", note=str(e)))
            continue
        except Exception as e:
            rows.append(dict(row, status="error", note=_error_text(e)))
            continue
        try:
            out = lines.to_numpy(out).reshape(-1)
            ref_out = out if ref_out is None else ref_out
            row["rel_err"] = float(np.linalg.norm(out - ref_out) / max(np.linalg.norm(ref_out), 1e-300))
            if kind == "api":
                t, extra = _time_wall(fn, sync, grid)
                extra["api_of"] = "step:kernel" if gpu and "kernel" in grid.paths else "step:array"
            elif gpu:
                t, extra = time_gpu(fn, warmup=2, flush_l2=grid.flush_l2, target_ms=grid.target_ms, min_reps=3,
                                    clock=clocks.get("cupy")), {}
            else:
                t, extra = time_host(fn, target_ms=grid.target_ms), {}
        except Exception as e:
            rows.append(dict(row, status="error", note=_error_text(e)))
            continue
        s = t.ms_median * 1e-3
        row.update(t.as_dict(), **extra, status="ok", tokens_per_s=B / s, peak_bw=peak_bw, peak_flops=peak_flops,
                   compute=dtype)
        if kind == "ours":
            row.update(costs.achieved(flop, nbytes, s, peak_flops, peak_bw))
            if peak_bw:
                row["read_bound_ms"] = read_bytes / peak_bw * 1e3
                row["read_bound_x"] = t.ms_median / row["read_bound_ms"]
                if floor_ms is not None:
                    row["above_floor_x"] = max(t.ms_median - floor_ms, 0.0) / row["read_bound_ms"]
        rows.append(row)
    _add_overheads(rows)
    return rows
