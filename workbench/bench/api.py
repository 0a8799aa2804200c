"""What the ``bench``, ``roofline`` and ``scaling`` commands call: run a grid (or read a result), write the
files, print the tables."""
from __future__ import annotations

import os
from typing import Optional

from ..backends import gpu_available
from . import ceilings, plots, report
from .grid import get_grid
from .harness import run_grid


def default_grid_name() -> str:
    return "headline" if gpu_available() else "cpu"


def run_bench(grid: str = None, ops=(), backends=(), dtypes=(), Ts=(), Ds=(), passes=(), budget_s=None,
              no_flush: bool = False, no_peers: bool = False, peak_bw_gbs: float = None, peak_flops=(),
              remeasure: bool = False, json_path: str = None, csv_path: str = None, md_path: str = None,
              seed: int = 0, full: bool = False, echo=print) -> dict:
    """Run a named grid with the command line's filters; write JSON/CSV/Markdown; print the tables."""
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
    if json_path:
        _mkdir(json_path)
    result = run_grid(g, ceil, seed=seed, echo=echo, on_cell=on_cell)
    save(result, json_path, csv_path, md_path)
    show(result, full=full, echo=echo)
    return result


def save(result: dict, json_path: Optional[str], csv_path: Optional[str], md_path: Optional[str]) -> None:
    for path, write in ((json_path, report.write_json), (csv_path, report.write_csv)):
        if path:
            _mkdir(path)
            write(result, path)
    if md_path:
        _mkdir(md_path)
        with open(md_path, "w") as f:
            f.write(report.markdown(result))


def show(result: dict, full: bool = True, echo=print) -> None:
    """Print the header, the full table (when ``full``), problems, and the short headline table last."""
    echo(report.header(result))
    if full:
        echo(report.full_table(result, fmt="simple"))
    p = report.problems(result)
    if p:
        echo("problems:\n" + p)
    api = report.api_table(result, fmt="simple")
    if api:
        echo(f"host overhead of the public API ({report.API_NOTE}):\n{api}")
    echo(report.short_table(result, fmt="simple"))


def show_json(paths, full: bool = False, echo=print, json_path: str = None, csv_path: str = None,
              md_path: str = None) -> dict:
    """Print the tables of earlier results (several: merged, see ``report.merge``) and optionally save them."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    result = report.merge([report.read_json(p) for p in paths])
    save(result, json_path, csv_path, md_path)
    show(result, full=full, echo=echo)
    return result


def plot_roofline(json_path: str, out: str, pass_: str = None, dtype: str = None, op: str = None) -> str:
    result = report.read_json(json_path)
    _mkdir(out)
    return plots.roofline(result, out, pass_=pass_, dtype=dtype, op=op)


def plot_scaling(out: str, json_path: str = None, grid: str = None, pass_: str = "fwd", dtype: str = None,
                 ops=(), backends=(), echo=print) -> str:
    """Time against T from a bench JSON, or by running a scaling grid first (``scaling`` on a GPU,
    ``cpu-scaling`` on the host)."""
    if json_path:
        result = report.read_json(json_path)
    else:
        name = grid or ("scaling" if gpu_available() else "cpu-scaling")
        g = get_grid(name)
        passes = tuple(p for p in g.passes if p == pass_) or (pass_,)
        result = run_bench(grid=name, ops=ops, backends=backends, passes=passes, echo=echo,
                           json_path=os.path.splitext(out)[0] + ".json")
    _mkdir(out)
    return plots.scaling(result, out, pass_=pass_, dtype=dtype)


def _mkdir(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
