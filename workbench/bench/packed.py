"""Packed sequences against padding and against one sequence (``PackedGrid``, kind "packed").

Per cell (op, mix, D, dtype): the mix's B sequences of lengths L_1..L_B (``grid.heads`` heads each) are drawn
once, as a padded batch ``(B, heads, max L, D)`` (random values in the padding too: never zeros); the packed
layout concatenates each sequence's tokens, ``(heads, sum L, D)``, with ``cu_seqlens``.  Per variant of the
grid's backends that declares the "packed" feature (registry order) and each pass, three rows:

    layout "packed"   one call on the packed tokens with cu_seqlens (T = sum L)
    layout "padded"   one call on the padded batch (T = max L, B * heads rows; causal, so the padding after a
                      sequence does not change its outputs)
    layout "single"   one call on the packed tokens without cu_seqlens: one sequence of the same total length

timed as the ops' variants are (``lines.prepare_variant``, ``harness._time``).  The packed row carries
``vs_single = t_single / t_packed`` (the goal: packed within 1.1x of one sequence, vs_single >= 1/1.1) and
``vs_padded = t_padded / t_packed`` (> 1: packing is faster than padding), and ``rel_err``: its output
against the padded call's outputs at the sequences' positions (they compute the same thing).  Rows have the
cost model of their own layout (FLOPs and bytes of the tokens they process; T and B as run).
"""
from __future__ import annotations

import numpy as np

from .. import registry
from ..inputs import default_options, random_inputs
from . import costs, lines
from .decode import numpy_dtype
from .harness import _error_text, _free_device_memory, _time

LAYOUTS = ("packed", "padded", "single")


def packed_variants(grid, op: str) -> list:
    return [v for v in lines.our_lines(op, grid.backends) if "packed" in v.features]


def line_keys(grid) -> dict:
    return {op: [v.key for v in packed_variants(grid, op)] for op in grid.ops}


def _gather(x, lengths):
    """(B, heads, max L, ...) -> (heads, sum L, ...): each sequence's first L_b positions, in order."""
    return np.concatenate([x[b, :, :n] for b, n in enumerate(lengths)], axis=1)


def layouts(op: str, lengths: tuple, heads: int, D: int, dtype: str, seed: int, n_gates: int) -> dict:
    """layout -> (arrays, dout, cu_seqlens or None), NumPy arrays of ``dtype``: the padded batch and the
    packed tokens gathered from it (the single-sequence layout is the packed tokens without offsets)."""
    B, Tmax = len(lengths), max(lengths)
    dt = numpy_dtype(dtype)
    padded = random_inputs(op, (B, heads), Tmax, D, D, "float32", seed=seed, n_gates=n_gates)
    dout = np.random.default_rng(seed + 10_000).standard_normal((B, heads, Tmax, D)).astype(np.float32)
    packed = [_gather(a, lengths) for a in padded]
    cu = tuple(int(c) for c in np.concatenate([[0], np.cumsum(lengths)]))
    cast = (lambda xs: tuple(x.astype(dt) for x in xs))
    return {"packed": (cast(packed), _gather(dout, lengths).astype(dt), cu),
            "padded": (cast(padded), dout.astype(dt), None),
            "single": (cast(packed), _gather(dout, lengths).astype(dt), None)}


def run_cell(grid, cell, ceil: dict, seed: int, clocks) -> list:
    op, D, dtype = cell.op, cell.D, cell.dtype
    lengths = tuple(grid.mixes[cell.mix])
    H = grid.heads
    base = dict(op=op, Dk=D, Dv=D, dtype=dtype, causal=True, mix=cell.mix, table="packed",
                lengths=",".join(map(str, lengths)), H=H)
    try:
        data = layouts(op, lengths, H, D, dtype, seed, grid.n_gates)
    except Exception as e:
        return [dict(base, T=sum(lengths), line="inputs", kind="-", status="error", note=_error_text(e),
                     **{"pass": p}) for p in grid.passes]
    options = default_options(op, causal=True)
    rows = []
    for v in packed_variants(grid, op):
        shapes = {"packed": (H, sum(lengths)), "padded": (len(lengths) * H, max(lengths)),
                  "single": (H, sum(lengths))}
        vrows, outs = [], {}
        for layout in LAYOUTS:
            arrays, dout, cu = data[layout]
            N, T = shapes[layout]
            row = dict(base, line=v.key, kind="ours", layout=layout, T=T, N=N, B=N // H,
                       form=costs.form_of(op, v.name, getattr(v, "form", "")))
            vopts = lines.validated_options(op, options, D)
            why = lines.why_not(v, dtype, vopts, {n: a.shape for n, a in zip(registry.ARRAY_ARGS[op], arrays)})
            if why:
                vrows += [dict(row, status="skip", note=why, **{"pass": p}) for p in grid.passes]
                continue
            try:
                prep = lines.prepare_variant(v, arrays, dout, dict(options, cu_seqlens=cu) if cu else options)
                outs[layout] = lines.to_numpy(prep.output)
            except Exception as e:
                vrows += [dict(row, status="error", note="prepare: " + _error_text(e), **{"pass": p})
                          for p in grid.passes]
                _free_device_memory()
                continue
            shape = costs.Shape(N, T, D, D, grid.n_gates)
            compute = prep.compute or dtype
            for pass_ in grid.passes:
                r = dict(row, compute=compute, **{"pass": pass_})
                try:
                    t, _ = _time(prep, pass_, grid, clocks)
                except Exception as e:
                    vrows.append(dict(r, status="error", note=_error_text(e)))
                    continue
                peak_flops, peak_bw = (ceil.get("flops") or {}).get(compute), ceil.get("bw")
                r.update(t.as_dict(), status="ok", peak_flops=peak_flops, peak_bw=peak_bw,
                         **costs.achieved(costs.flops(op, r["form"], shape, True, pass_),
                                          costs.min_bytes(op, shape, dtype, pass_), t.ms_median * 1e-3,
                                          peak_flops, peak_bw))
                vrows.append(r)
            del prep
            _free_device_memory()
        _compare(vrows, outs, lengths, H)
        rows += vrows
    return rows


def _compare(rows: list, outs: dict, lengths: tuple, H: int) -> None:
    """The packed rows' ratios against the other layouts (same pass) and their output against the padded
    call's outputs at the sequences' positions."""
    rel = None
    if "packed" in outs and "padded" in outs:
        ref = _gather(outs["padded"].reshape(len(lengths), H, max(lengths), -1), lengths)
        got = outs["packed"].reshape(ref.shape)
        rel = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-300))
    ok = {(r["layout"], r["pass"]): r for r in rows if r.get("status") == "ok"}
    for (layout, pass_), r in ok.items():
        if layout != "packed":
            continue
        r["rel_err"] = rel
        for other, name in (("single", "vs_single"), ("padded", "vs_padded")):
            o = ok.get((other, pass_))
            if o is not None:
                r[name] = o["ms_median"] / r["ms_median"]
