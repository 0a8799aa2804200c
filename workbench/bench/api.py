"""What the ``bench``, ``roofline`` and ``scaling`` commands call: run a grid (or read a result), write the
files, print the tables."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from ..backends import gpu_available
from ..cli_params import make_parent
from . import ceilings, plots, report
from .grid import get_grid
from .harness import run_grid
from .timing import NOISY_IQR, describe_threads, host_threads, iqr_fraction, is_noisy


class NothingToPlot(ValueError):
    """No ok measurement matches the plot's filters (nothing is written)."""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


def default_grid_name() -> str:
    return "headline" if gpu_available() else "cpu"


def run_bench(grid: str = None, ops=(), backends=(), dtypes=(), Ts=(), Ds=(), passes=(), budget_s=None,
              no_flush: bool = False, no_peers: bool = False, peak_bw_gbs: float = None, peak_flops=(),
              remeasure: bool = False, json_path: str = None, csv_path: str = None, md_path: str = None,
              seed: int = 0, full: bool = False, blas_threads: int = 1, echo=print) -> dict:
    """Run a named grid with the command line's filters; write JSON/CSV/Markdown; print the tables.
    Host grids run with the BLAS pools pinned to ``blas_threads`` threads (0: as they are); the result's
    ``meta.host_threads`` says what was in force."""
    g = get_grid(grid or default_grid_name())
    g = g.filtered(ops=ops, backends=backends, dtypes=dtypes, Ts=Ts, Ds=Ds, passes=passes, budget_s=budget_s,
                   flush_l2=False if no_flush else None, peers=False if no_peers else None)
    if g.device == "gpu" and not gpu_available():
        raise RuntimeError(f"grid {g.name!r} needs a CUDA GPU (CuPy or Numba with a device); "
                           f"use --grid cpu on this machine")
    ceil = ceilings.get_ceilings(gpu=g.device == "gpu", remeasure=remeasure,
                                 peak_bw=peak_bw_gbs * 1e9 if peak_bw_gbs else None,
                                 peak_flops=ceilings.parse_peak_flops(peak_flops), echo=echo)
    echo(ceilings.describe(ceil))
    echo(f"grid {g.name}: {len(g.cells())} cells x lines x {len(g.passes)} passes, budget {g.budget_s:.0f} s")
    on_cell = (lambda partial: report.write_json(partial, json_path)) if json_path else None
    make_parent(json_path)
    with host_threads(blas_threads if g.device == "host" else 0) as threads:
        if g.device == "host":
            echo(describe_threads(threads))
        result = run_grid(g, ceil, seed=seed, echo=echo, on_cell=on_cell)
    result["meta"]["host_threads"] = threads
    flag_noisy(result)
    save(result, json_path, csv_path, md_path)
    show(result, full=full, echo=echo)
    return result


def save(result: dict, json_path: Optional[str], csv_path: Optional[str], md_path: Optional[str]) -> None:
    for path, write in ((json_path, report.write_json), (csv_path, report.write_csv)):
        if path:
            make_parent(path)
            write(result, path)
    if md_path:
        make_parent(md_path)
        noisy = noisy_report(result)
        with open(md_path, "w") as f:
            f.write(report.markdown(result) + (f"\n## Noisy timings\n\n```\n{noisy}\n```\n" if noisy else ""))


def show(result: dict, full: bool = True, echo=print) -> None:
    """Print the header, the full table (when ``full``), problems, and the short headline table last."""
    echo(report.header(result))
    ops_rows = any(not r.get("table") for r in result["results"])      # decode and packed rows: own tables
    if full and ops_rows:
        echo(report.full_table(result, fmt="simple"))
    p = report.problems(result)
    if p:
        echo("problems:\n" + p)
    api = report.api_table(result, fmt="simple")
    if api:
        echo(f"host overhead of the public API ({report.API_NOTE}):\n{api}")
    dec = report.decode_table(result, fmt="simple")
    if dec:
        echo(f"decode throughput ({report.DECODE_NOTE}):\n{dec}")
    pk = report.packed_table(result, fmt="simple")
    if pk:
        echo(f"packed sequences:\n{pk}")
    noisy = noisy_report(result)
    if noisy:
        echo(noisy)
    if ops_rows:
        echo(report.short_table(result, fmt="simple"))


def flag_noisy(result: dict) -> dict:
    """Mark every ok row whose IQR exceeds ``NOISY_IQR`` of its median: ``noisy`` True/False in the row, and
    "noisy: IQR N% of median" at the head of its note (shown in the tables).  Idempotent; also applied to
    results read back, which may predate the flag."""
    for r in result["results"]:
        if r.get("status") != "ok":
            continue
        r["noisy"] = is_noisy(r.get("ms_q1"), r.get("ms_q3"), r.get("ms_median"))
        note = r.get("note") or ""
        if r["noisy"] and not note.startswith("noisy"):
            frac = iqr_fraction(r["ms_q1"], r["ms_q3"], r["ms_median"])
            r["note"] = f"noisy: IQR {100 * frac:.0f}% of median" + (f"; {note}" if note else "")
    return result


def noisy_report(result: dict) -> str:
    """The noisy rows in a few lines ('' when none)."""
    rows = [r for r in result["results"] if r.get("noisy")]
    if not rows:
        return ""
    lines = [f"noisy timings (IQR > {100 * NOISY_IQR:.0f}% of the median; rerun on a quiet machine): {len(rows)}"]
    for r in rows[:20]:
        frac = iqr_fraction(r["ms_q1"], r["ms_q3"], r["ms_median"])
        lines.append(f"  {r['op']} T={r['T']} D={r['Dk']} {r['dtype']} {r['pass']} {r['line']}: "
                     f"median {r['ms_median']:.4g} ms, IQR {100 * frac:.0f}%")
    if len(rows) > 20:
        lines.append(f"  ... {len(rows) - 20} more in the JSON")
    return "\n".join(lines)


def outcome(result: dict, ran: bool = True) -> Outcome:
    """Whether a bench command succeeded: at least one ok measurement and (for a run) no error row."""
    rows = result["results"]
    n_ok = sum(r.get("status") == "ok" for r in rows)
    n_err = sum(r.get("status") == "error" for r in rows)
    if n_ok == 0:
        kinds = sorted({r.get("status") for r in rows})
        return Outcome(False, "nothing was measured" + (f" (rows: {', '.join(map(str, kinds))}; see the "
                                                         f"problems above)" if rows else " (no cell selected)"))
    if ran and n_err:
        return Outcome(False, f"{n_err} measurements failed ({n_ok} ok); see the problems above")
    return Outcome(True, f"{n_ok} measurements")


def show_json(paths, full: bool = False, echo=print, json_path: str = None, csv_path: str = None,
              md_path: str = None) -> dict:
    """Print the tables of earlier results (several: merged, see ``report.merge``) and optionally save them."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    result = flag_noisy(report.merge([report.read_json(p) for p in paths]))
    save(result, json_path, csv_path, md_path)
    show(result, full=full, echo=echo)
    return result


def _require_rows(result: dict, pass_=None, dtype=None, op=None) -> None:
    rows = [r for r in result["results"] if r.get("status") == "ok" and (pass_ is None or r["pass"] == pass_)
            and (dtype is None or r["dtype"] == dtype) and (op is None or r["op"] == op)]
    if not rows:
        sel = ", ".join(f"{k} {v}" for k, v in (("pass", pass_), ("dtype", dtype), ("op", op)) if v)
        raise NothingToPlot(f"no ok measurement to plot{' with ' + sel if sel else ''}; nothing written")


def plot_roofline(json_path: str, out: str, pass_: str = None, dtype: str = None, op: str = None) -> str:
    result = report.read_json(json_path)
    _require_rows(result, pass_=pass_, dtype=dtype, op=op)
    make_parent(out)
    return plots.roofline(result, out, pass_=pass_, dtype=dtype, op=op)


def run_scaling(out: str, grid: str = None, pass_: str = "fwd", ops=(), backends=(), echo=print) -> dict:
    """Run a scaling grid (``scaling`` on a GPU, ``cpu-scaling`` on the host) for one pass; its JSON is
    written beside the PNG ``out``."""
    name = grid or ("scaling" if gpu_available() else "cpu-scaling")
    return run_bench(grid=name, ops=ops, backends=backends, passes=(pass_,), echo=echo,
                     json_path=os.path.splitext(out)[0] + ".json")


def plot_scaling(out: str, json_path: str = None, grid: str = None, pass_: str = "fwd", dtype: str = None,
                 ops=(), backends=(), echo=print, result: dict = None) -> str:
    """Time against T from ``result``, a bench JSON, or else by running a scaling grid (``run_scaling``)."""
    if result is None:
        result = report.read_json(json_path) if json_path else run_scaling(out, grid, pass_, ops, backends, echo)
    _require_rows(result, pass_=pass_, dtype=dtype)
    make_parent(out)
    return plots.scaling(result, out, pass_=pass_, dtype=dtype)
