"""Tables and files from a bench result: the full table, the short headline table, the API overhead table,
JSON and CSV.

Speed-up columns are ``t_baseline / t_line`` (> 1: the line is faster than the baseline); the baseline of
each cell is named in its own column.
"""
from __future__ import annotations

import copy
import csv
import json
import math
from typing import Optional

from tabulate import tabulate

from ..opspec import OPS
from .harness import ROW_FIELDS

SPEEDUP_NOTE = "speed-up = t_baseline / t_line (> 1: the line is faster than the baseline)"


def _f(x, fmt="{:.3g}"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return fmt.format(x)


def _pct(x):
    return "" if x is None else f"{100 * x:.0f}%"


def _roof(x):
    """The roofline column; above 100% the ceiling is no bound for the row (``ceilings_beaten`` says which)."""
    return _pct(x) + ("?" if x is not None and x > 1.0 else "")


def _short_peer(key: Optional[str]) -> str:
    return (key or "").replace("peer:", "")


def full_table(result: dict, fmt: str = "github", include_skips: bool = False) -> str:
    """One row per (cell, line, pass): time, spread, rates, roofline fraction, speed-up vs the baseline."""
    rows = []
    for r in result["results"]:
        if (r.get("status") != "ok" and not include_skips) or r.get("table"):
            continue
        iqr = (r["ms_q3"] - r["ms_q1"]) / r["ms_median"] if r.get("ms_median") else None
        rows.append([r["op"], r["T"], r["Dk"], r["dtype"], "c" if r.get("causal") else "nc", r["pass"],
                     r["line"], _f(r.get("ms_median"), "{:.4g}"), _pct(iqr), _f(r.get("tflops")),
                     _f(r.get("gbps")), _f(r.get("intensity"), "{:.1f}"), _roof(r.get("roof_frac")),
                     _short_peer(r.get("baseline")), _f(r.get("vs_baseline"), "{:.2f}"),
                     _f(r.get("rel_err"), "{:.1e}"),
                     r["status"] if r.get("status") != "ok" else "", (r.get("note") or "")[:60]])
    head = ["op", "T", "D", "dtype", "causal", "pass", "line", "ms (median)", "IQR/med", "TFLOP/s", "GB/s",
            "FLOP/B", "roofline", "baseline", "speed-up", "rel err", "status", "note"]
    return tabulate(rows, headers=head, tablefmt=fmt, disable_numparse=True)


def short_table(result: dict, fmt: str = "github") -> str:
    """The headline: per (op, T, D, dtype, pass) our fastest line (other than the baseline) against the
    baseline."""
    cells = {}
    for r in result["results"]:
        if r.get("status") != "ok" or r.get("table"):     # decode and packed rows: their own tables
            continue
        key = (r["op"], r["T"], r["Dk"], r["dtype"], r.get("causal"), r["pass"])
        c = cells.setdefault(key, {"ours": None, "base": None})
        is_base = r.get("baseline") == r["line"]        # on the host the baseline is one of ours
        if r["kind"] == "ours" and not is_base and (c["ours"] is None or r["ms_median"] < c["ours"]["ms_median"]):
            c["ours"] = r
        if r.get("baseline") == r["line"]:
            c["base"] = r
    rows = []
    order = {"fwd": 0, "bwd": 1, "fwdbwd": 2}
    ops = {op: i for i, op in enumerate(OPS)}
    for key in sorted(cells, key=lambda k: (ops.get(k[0], 9), k[3], k[1], k[2], str(k[4]), order.get(k[5], 3))):
        o, b = cells[key]["ours"], cells[key]["base"]
        op, T, D, dtype, causal, pass_ = key
        rows.append([op, T, D, dtype, pass_, o["line"] if o else "-", _f(o and o["ms_median"], "{:.4g}"),
                     _roof(o and o.get("roof_frac")), _short_peer(b and b["line"]) or "-",
                     _f(b and b["ms_median"], "{:.4g}"),
                     _f(b["ms_median"] / o["ms_median"], "{:.2f}") if (o and b) else ""])
    head = ["op", "T", "D", "dtype", "pass", "our best", "ms", "roofline", "baseline", "baseline ms",
            "speed-up (t_base/t_ours)"]
    return tabulate(rows, headers=head, tablefmt=fmt, disable_numparse=True)


def api_table(result: dict, fmt: str = "github") -> str:
    """The public API next to the variant it runs, per cell and pass: the variant's own time, the API's wall
    time per call, their difference (the host overhead of the API) and, on the GPU, the host time of one call
    alone.  Empty when the result has no API rows."""
    rows = []
    for r in result["results"]:
        if r.get("kind") != "api" or r.get("status") != "ok":
            continue
        rows.append([r["op"], r["T"], r["Dk"], r["dtype"], r["pass"], r.get("api_of") or r["line"],
                     _f(r.get("kernel_ms"), "{:.4g}"), _f(r.get("ms_median"), "{:.4g}"),
                     _f(r["overhead_ms"] * 1e3 if r.get("overhead_ms") is not None else None, "{:.1f}"),
                     _f(r["host_ms"] * 1e3 if r.get("host_ms") is not None else None, "{:.1f}"),
                     r.get("reps", "")])
    if not rows:
        return ""
    head = ["op", "T", "D", "dtype", "pass", "variant", "variant ms", "API ms", "API overhead us",
            "API host us", "calls"]
    table = tabulate(rows, headers=head, tablefmt=fmt, disable_numparse=True)
    floor = host_floor_line(result)
    return f"{table}\n\n{floor}" if floor else table


def host_floor_line(result: dict) -> str:
    """One line: the host floor measured before and after the grid (``harness.host_floor``); '' if none."""
    hf = (result.get("meta") or {}).get("host_floor")
    if not hf:
        return ""

    def one(f):
        if not f:
            return "-"
        if "error" in f:
            return f"failed ({f['error']})"
        return (f"empty launch + sync {f['launch']:.1f} us, with a cupy.empty {f['alloc_launch']:.1f} us, "
                f"launch alone (host) {f['launch_host']:.1f} us")
    return (f"host floor of this run (the least a synced call through CuPy costs on this host): "
            f"before the cells: {one(hf.get('before'))}; after: {one(hf.get('after'))}")


def decode_table(result: dict, fmt: str = "github") -> str:
    """Decode rows (``table`` "decode"): per op, dtype, batch and line the time of one step, tokens/s, the
    bandwidth achieved, the roofline fraction (state read + write at the copy bandwidth) and the time over
    the state-read bound.  Empty when there are none."""
    rows = []
    for r in result["results"]:
        if r.get("table") != "decode" or r.get("status") != "ok":
            continue
        rows.append([r["op"], r["dtype"], r["B"], r["H"], r["Dk"], r["line"], _f(r.get("ms_median") * 1e3, "{:.4g}"),
                     _f(r.get("tokens_per_s"), "{:.4g}"), _f(r.get("gbps")), _roof(r.get("roof_frac")),
                     _f(r.get("read_bound_x"), "{:.2f}"), _f(r.get("above_floor_x"), "{:.2f}"),
                     _f(r.get("rel_err"), "{:.1e}"), (r.get("note") or "")[:50]])
    if not rows:
        return ""
    head = ["op", "dtype", "B", "heads", "D", "line", "us / step", "tokens/s", "GB/s", "roofline",
            "x read bound", "x read bound above floor", "rel err", "note"]
    return tabulate(rows, headers=head, tablefmt=fmt, disable_numparse=True)


DECODE_NOTE = ("one token for B sequences (B x heads states of D x D); step lines: CUDA events, L2 flushed, the host's "
               "launch time hidden (the kernel's own time); api:step: the public step's wall time per call; roofline: "
               "state read + write at the copy bandwidth / time; x read bound: time / (state read at the copy "
               "bandwidth), the goal is <= 2 at B = 64; floor: an empty kernel timed the same way (GPU); x read bound "
               "above floor: (time - floor) / read bound")


def packed_table(result: dict, fmt: str = "github") -> str:
    """Packed rows (``table`` "packed"): per op, mix, dtype, pass and variant the times of the packed, padded
    and single-sequence layouts, packed / single (the goal: <= 1.1) and the speed-up of packing over
    padding.  Empty when there are none."""
    cells = {}
    for r in result["results"]:
        if r.get("table") != "packed" or r.get("status") != "ok":
            continue
        key = (r["op"], r["mix"], r["dtype"], r["Dk"], r["pass"], r["line"])
        cells.setdefault(key, {})[r["layout"]] = r
    rows = []
    for (op, mix, dtype, D, pass_, line), c in cells.items():
        p = c.get("packed")
        vs_single = p.get("vs_single") if p else None
        rows.append([op, mix, dtype, D, pass_, line] + [_f(c[x]["ms_median"], "{:.4g}") if x in c else ""
                                                        for x in ("packed", "padded", "single")]
                    + [_f(1 / vs_single if vs_single else None, "{:.2f}"), _f(p and p.get("vs_padded"), "{:.2f}"),
                       _f(p and p.get("rel_err"), "{:.1e}")])
    if not rows:
        return ""
    head = ["op", "mix", "dtype", "D", "pass", "line", "packed ms", "padded ms", "single ms",
            "packed / single (goal <= 1.1)", "padded / packed", "rel err (packed vs padded)"]
    return tabulate(rows, headers=head, tablefmt=fmt, disable_numparse=True)


API_NOTE = ("API ms: wall time of one call of the public op (fwd), of wb.vjp + pullback (fwdbwd) or of the "
            "pullback (bwd), device synced after each call, median; API overhead = API ms - variant ms (the "
            "variant timed directly, CUDA events on the GPU); API host us: the call's host time alone (GPU)")


def problems(result: dict, limit: int = 20) -> str:
    """Errors (and the time-budget skips) in a few lines."""
    errs = [r for r in result["results"] if r.get("status") == "error"]
    out = []
    seen = set()
    for r in errs:
        k = (r["line"], r.get("note"))
        if k in seen:
            continue
        seen.add(k)
        out.append(f"  error {r['op']} {r['line']} T={r['T']} {r['dtype']} {r['pass']}: {r.get('note')}")
    if len(out) > limit:
        out = out[:limit] + [f"  ... {len(out) - limit} more distinct errors in the JSON"]
    skips = {}
    for r in result["results"]:
        if r.get("status") == "skip":
            skips.setdefault((r["line"], (r.get("note") or "")[:120]), []).append(r)
    for (line, note), rs in list(skips.items())[:limit]:
        out.append(f"  skip  {line} ({len(rs)} rows): {note}")
    if len(skips) > limit:
        out.append(f"  ... {len(skips) - limit} more distinct skips in the JSON")
    sk = result.get("skipped_cells") or []
    if sk:
        out.append(f"  {len(sk)} cells not run: {sk[0]['reason']}")
    out += [f"  ceiling {line}" for line in ceilings_beaten(result)]
    return "\n".join(out)


def ceilings_beaten(result: dict) -> list:
    """A line per ceiling that some ok row ran faster than (roofline above 100%): the bound max(FLOPs / peak,
    bytes / bw) is then no bound for those rows -- the ceiling was measured low (a busy or throttled GPU) or the line
    beats the library matmul the ceiling was taken from (float32 on 16-bit tensor cores against a float32 one) --
    so their roofline column overstates them."""
    worst = {}                                                  # (ceiling, its value) -> (rows, top fraction)
    for r in result.get("results", ()):
        f = r.get("roof_frac")
        if r.get("status") == "ok" and f is not None and f > 1.0:      # the ceiling of the term that set the bound
            t_bytes = r["bytes"] / r["peak_bw"] if r.get("bytes") and r.get("peak_bw") else 0.0
            t_flops = r["flops"] / r["peak_flops"] if r.get("flops") and r.get("peak_flops") else 0.0
            key = ("bw", r["peak_bw"]) if t_bytes >= t_flops else (r.get("compute"), r["peak_flops"])
            n, top = worst.get(key, (0, 0.0))
            worst[key] = (n + 1, max(top, f))
    when = ((result.get("meta") or {}).get("ceilings") or {}).get("measured_at")
    out = []
    for (name, peak), (n, top) in worst.items():
        what = f"copy {peak / 1e9:.4g} GB/s" if name == "bw" else f"{name} {peak / 1e12:.3g} TFLOP/s"
        out.append(f"{what}{f' (measured {when})' if when else ''} is under the rate of {n} row(s) (roofline up to "
                   f"{100 * top:.0f}%): their roofline column is no bound; measure again on an idle GPU (--remeasure) "
                   f"or give the peak (--peak-flops / --peak-bw)")
    return out


def header(result: dict) -> str:
    m = result["meta"]
    c = m.get("ceilings") or {}
    peaks = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in (c.get("flops") or {}).items())
    bw = f"{c['bw'] / 1e9:.4g} GB/s" if c.get("bw") else "?"
    return (f"device: {m.get('device')} | grid {m['grid']['name']} | {m.get('date')} | commit {m.get('commit')}\n"
            f"ceilings ({c.get('source', '?')}): copy {bw}; matmul TFLOP/s: {peaks}\n"
            f"timing: median of many runs after warm-up ({'CUDA events, L2 flushed before each run' if m['grid']['device'] == 'gpu' else 'perf_counter'}); "
            f"{SPEEDUP_NOTE}; roofline = max(FLOPs/peak, bytes/bw) / time ('?': above 100%, the ceiling is no bound)")


def markdown(result: dict) -> str:
    parts = ["# Bench results", "", "```", header(result), "```", "", "## Headline: our fastest line vs the baseline",
             "", short_table(result), "", "## Every measurement", "", full_table(result)]
    api = api_table(result)
    if api:
        parts += ["", "## Host overhead of the public API", "", API_NOTE + ".", "", api]
    dec = decode_table(result)
    if dec:
        parts += ["", "## Decode throughput", "", DECODE_NOTE + ".", "", dec]
    pk = packed_table(result)
    if pk:
        parts += ["", "## Packed against padded and one sequence", "", pk]
    p = problems(result)
    if p:
        parts += ["", "## Errors and skips", "", "```", p, "```"]
    return "\n".join(parts) + "\n"


def merge(results: list) -> dict:
    """One result from several runs (a GPU session split over device calls): rows concatenated and ordered by
    op, dtype, T, D; meta of the first run, with ``merged_from`` naming every run's grid, date and commit.
    Ratios stay as measured: each row's baseline was timed in the same run, on the same inputs."""
    if not results:
        raise ValueError("nothing to merge")
    if len(results) == 1:
        return results[0]
    devices = {r["meta"].get("device") for r in results}
    if len(devices) > 1:
        raise ValueError(f"results from different devices cannot be merged: {sorted(map(str, devices))}")
    order = {op: i for i, op in enumerate(OPS)}
    rows = [row for r in results for row in r["results"]]
    rows.sort(key=lambda row: (order.get(row["op"], 9), str(row["dtype"]), row["T"], row["Dk"]))
    meta = copy.deepcopy(results[0]["meta"])
    meta["grid"] = dict(meta["grid"], name="+".join(dict.fromkeys(r["meta"]["grid"]["name"] for r in results)))
    meta["merged_from"] = [dict(grid=r["meta"]["grid"]["name"], date=r["meta"].get("date"),
                                commit=r["meta"].get("commit"), wall_s=r["meta"].get("wall_s")) for r in results]
    meta["complete"] = all(r["meta"].get("complete", False) for r in results)
    return dict(meta=meta, results=rows,
                skipped_cells=[c for r in results for c in (r.get("skipped_cells") or [])])


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=_json_default)


def _json_default(x):
    try:
        return float(x)
    except Exception:
        return str(x)


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def write_csv(result: dict, path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
        w.writeheader()
        for r in result["results"]:
            r = dict(r)
            if isinstance(r.get("vs_peers"), dict):
                r["vs_peers"] = ";".join(f"{k}={v:.3f}" for k, v in r["vs_peers"].items())
            w.writerow(r)
