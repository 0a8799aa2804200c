"""Click commands ``bench``, ``roofline`` and ``scaling`` (added to cli.py through ``COMMANDS``).  Thin: every
command calls one function of ``workbench.bench.api``."""
from __future__ import annotations

import sys

import click

from .costs import PASSES
from .grid import GRIDS

_PASS = click.Choice(PASSES)


@click.command()
@click.option("--grid", "grid", type=click.Choice(sorted(GRIDS)), default=None,
              help="named grid (default: headline with a GPU, cpu without)")
@click.option("--op", "ops", multiple=True, help="only these ops (repeatable)")
@click.option("--backend", "backends", multiple=True,
              help="only these line groups: numpy, numba, cupy, peer (repeatable)")
@click.option("--dtype", "dtypes", multiple=True, help="only these dtypes (repeatable)")
@click.option("--T", "Ts", type=int, multiple=True, help="sequence lengths instead of the grid's (repeatable)")
@click.option("--D", "Ds", type=int, multiple=True, help="head dims instead of the grid's (repeatable)")
@click.option("--pass", "passes", type=_PASS, multiple=True, help="only these passes (repeatable)")
@click.option("--budget", "budget_s", type=float, default=None, help="stop starting cells after this many seconds")
@click.option("--no-flush", is_flag=True, help="do not flush the L2 cache before each timed run")
@click.option("--no-peers", is_flag=True, help="time our variants only")
@click.option("--peak-bw", type=float, default=None, help="override the measured bandwidth (GB/s)")
@click.option("--peak-flops", multiple=True, help="override a compute ceiling: dtype=TFLOPS (repeatable)")
@click.option("--remeasure", is_flag=True, help="measure the ceilings again instead of using the cache")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the result JSON here")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="write one CSV row per measurement")
@click.option("--md", "md_path", type=click.Path(dir_okay=False), help="write the Markdown tables here")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="do not run: print (and with --json/--csv/--md save) earlier results; several are merged")
@click.option("--full/--short", default=True, help="print every measurement, or the headline table only")
@click.option("--seed", default=0, show_default=True, help="seed of the random inputs")
def bench(grid, ops, backends, dtypes, Ts, Ds, passes, budget_s, no_flush, no_peers, peak_bw, peak_flops,
          remeasure, json_path, csv_path, md_path, from_json, full, seed):
    """Time ops x variants (and peers) x dtypes x T x D on a named grid; report against the roofline."""
    from . import api
    if from_json:
        try:
            api.show_json(from_json, full=full, echo=click.echo, json_path=json_path, csv_path=csv_path,
                          md_path=md_path)
        except ValueError as e:
            click.echo(f"bench: {e}", err=True)
            sys.exit(2)
        return
    try:
        api.run_bench(grid=grid, ops=ops, backends=backends, dtypes=dtypes, Ts=Ts, Ds=Ds, passes=passes,
                      budget_s=budget_s, no_flush=no_flush, no_peers=no_peers, peak_bw_gbs=peak_bw,
                      peak_flops=peak_flops, remeasure=remeasure, json_path=json_path, csv_path=csv_path,
                      md_path=md_path, seed=seed, full=full, echo=click.echo)
    except (ValueError, RuntimeError) as e:
        click.echo(f"bench: {e}", err=True)
        sys.exit(2)


@click.command()
@click.argument("result_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="roofline.png", show_default=True, type=click.Path(dir_okay=False))
@click.option("--pass", "pass_", type=_PASS, default=None, help="only this pass (default: all)")
@click.option("--dtype", default=None, help="only this dtype")
@click.option("--op", default=None, help="only this op")
def roofline(result_json, out, pass_, dtype, op):
    """Roofline PNG from a bench JSON: TFLOP/s against FLOP/byte, bandwidth slope and compute ceilings."""
    from . import api
    click.echo(api.plot_roofline(result_json, out, pass_=pass_, dtype=dtype, op=op))


@click.command()
@click.option("--json", "json_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="plot this bench JSON (default: run the scaling grid first)")
@click.option("--grid", default=None, type=click.Choice(sorted(GRIDS)),
              help="grid to run without --json (default: scaling with a GPU, cpu-scaling without)")
@click.option("--out", default="scaling.png", show_default=True, type=click.Path(dir_okay=False))
@click.option("--pass", "pass_", type=_PASS, default="fwd", show_default=True)
@click.option("--dtype", default=None, help="dtype to plot (default: the first in the result)")
@click.option("--op", "ops", multiple=True, help="only these ops when running")
@click.option("--backend", "backends", multiple=True, help="only these line groups when running")
def scaling(json_path, grid, out, pass_, dtype, ops, backends):
    """Time against T for every op (log-log, with O(T) and O(T^2) guides), from a JSON or by running."""
    from . import api
    click.echo(api.plot_scaling(out, json_path=json_path, grid=grid, pass_=pass_, dtype=dtype, ops=ops,
                                backends=backends, echo=click.echo))


COMMANDS = [bench, roofline, scaling]
