"""Click commands ``bench``, ``roofline``, ``scaling`` and ``kernels`` (added to cli.py through ``COMMANDS``).  Thin:
every command calls one function of ``workbench.bench.api`` (``kernels``: of ``workbench.bench.kernels``)."""
from __future__ import annotations

import sys

import click

from ..cli_params import DTYPE, OP, POSITIVE_FLOAT, POSITIVE_INT, SEED, Backend, BenchJSON, scratch
from ..opspec import LOG_DECAY_RANGE
from .ceilings import parse_peak_flops
from .costs import PASSES
from .grid import GRIDS

_PASS = click.Choice(PASSES)
_LINES = Backend(groups=("peer",), timed=True)


def _peak_flops(ctx, param, value):
    try:
        parse_peak_flops(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None
    return value


def _finish(outcome) -> None:
    """Exit 1 with the outcome's one-line reason when nothing was measured or anything failed."""
    if not outcome.ok:
        click.echo(f"bench: {outcome.message}", err=True)
        sys.exit(1)


@click.command()
@click.option("--grid", "grid", type=click.Choice(sorted(GRIDS)), default=None,
              help="named grid (default: headline with a GPU, cpu without)")
@click.option("--op", "ops", type=OP, multiple=True, help="only these ops (repeatable)")
@click.option("--backend", "backends", type=_LINES, multiple=True,
              help="only these line groups (numpy, numba, cupy, peer) or lines (cupy:flash, peer:sdpa-flash)")
@click.option("--dtype", "dtypes", type=DTYPE, multiple=True, help="only these dtypes (repeatable)")
@click.option("--T", "Ts", type=POSITIVE_INT, multiple=True,
              help="sequence lengths instead of the grid's (repeatable)")
@click.option("--D", "Ds", type=POSITIVE_INT, multiple=True, help="head dims instead of the grid's (repeatable)")
@click.option("--pass", "passes", type=_PASS, multiple=True, help="only these passes (repeatable)")
@click.option("--budget", "budget_s", type=POSITIVE_FLOAT, default=None,
              help="stop starting cells after this many seconds of timing (the lines' set-up and first calls -- compiles, a peer's autotuning -- not counted)")
@click.option("--no-flush", is_flag=True, help="do not flush the L2 cache before each timed run")
@click.option("--no-peers", is_flag=True, help="time our variants only")
@click.option("--peak-bw", type=POSITIVE_FLOAT, default=None, help="override the measured bandwidth (GB/s)")
@click.option("--peak-flops", multiple=True, callback=_peak_flops,
              help="override a compute ceiling: dtype=TFLOPS (repeatable)")
@click.option("--blas-threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="BLAS threads while timing on the host (0: leave the library's own count; reported either way)")
@click.option("--remeasure", is_flag=True, help="measure the ceilings again instead of using the cache")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="write the result JSON here (its folder is created)")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="write one CSV row per measurement")
@click.option("--md", "md_path", type=click.Path(dir_okay=False), help="write the Markdown tables here")
@click.option("--from-json", "from_json", type=BenchJSON(), multiple=True,
              help="do not run: print (and with --json/--csv/--md save) earlier results; several are merged")
@click.option("--full/--short", default=True, help="print every measurement, or the headline table only")
@click.option("--seed", type=SEED, default=0, show_default=True, help="seed of the random inputs")
def bench(grid, ops, backends, dtypes, Ts, Ds, passes, budget_s, no_flush, no_peers, peak_bw, peak_flops,
          blas_threads, remeasure, json_path, csv_path, md_path, from_json, full, seed):
    """Time ops x variants (and peers) x dtypes x T x D on a named grid; report against the roofline.
    Exits 1 when nothing was measured or any measurement failed."""
    from . import api
    if from_json:
        try:
            result = api.show_json(from_json, full=full, echo=click.echo, json_path=json_path,
                                   csv_path=csv_path, md_path=md_path)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        _finish(api.outcome(result, ran=False))
        return
    try:
        result = api.run_bench(grid=grid, ops=ops, backends=backends, dtypes=dtypes, Ts=Ts, Ds=Ds,
                               passes=passes, budget_s=budget_s, no_flush=no_flush, no_peers=no_peers,
                               peak_bw_gbs=peak_bw, peak_flops=peak_flops, remeasure=remeasure,
                               json_path=json_path, csv_path=csv_path, md_path=md_path, seed=seed, full=full,
                               blas_threads=blas_threads, echo=click.echo)
    except (ValueError, RuntimeError) as e:
        raise click.UsageError(str(e)) from None
    _finish(api.outcome(result))


@click.command()
@click.argument("result_json", type=BenchJSON())
@click.option("--out", default=scratch("roofline.png"), show_default=True, type=click.Path(dir_okay=False),
              help="PNG to write (its folder is created)")
@click.option("--pass", "pass_", type=_PASS, default=None, help="only this pass (default: all)")
@click.option("--dtype", type=DTYPE, default=None, help="only this dtype")
@click.option("--op", type=OP, default=None, help="only this op")
def roofline(result_json, out, pass_, dtype, op):
    """Roofline PNG from a bench JSON: TFLOP/s against FLOP/byte, bandwidth slope and compute ceilings.
    Exits 1 (writing nothing) when no measurement matches."""
    from . import api
    try:
        click.echo(api.plot_roofline(result_json, out, pass_=pass_, dtype=dtype, op=op))
    except api.NothingToPlot as e:
        click.echo(f"roofline: {e}", err=True)
        sys.exit(1)


@click.command()
@click.option("--json", "json_path", type=BenchJSON(), default=None,
              help="plot this bench JSON (default: run the scaling grid first)")
@click.option("--grid", default=None, type=click.Choice(sorted(GRIDS)),
              help="grid to run without --json (default: scaling with a GPU, cpu-scaling without)")
@click.option("--out", default=scratch("scaling.png"), show_default=True, type=click.Path(dir_okay=False),
              help="PNG to write (its folder is created); a run also writes its JSON beside it")
@click.option("--pass", "pass_", type=_PASS, default="fwd", show_default=True)
@click.option("--dtype", type=DTYPE, default=None, help="dtype to plot (default: the first in the result)")
@click.option("--op", "ops", type=OP, multiple=True, help="only these ops when running")
@click.option("--backend", "backends", type=_LINES, multiple=True, help="only these line groups when running")
def scaling(json_path, grid, out, pass_, dtype, ops, backends):
    """Time against T for every op (log-log, with O(T) and O(T^2) guides), from a JSON or by running.
    Exits 1 when nothing was measured or (running) any measurement failed."""
    from . import api
    try:
        result = None if json_path else api.run_scaling(out, grid, pass_, ops, backends, echo=click.echo)
        click.echo(api.plot_scaling(out, json_path=json_path, pass_=pass_, dtype=dtype, result=result))
    except api.NothingToPlot as e:
        click.echo(f"scaling: {e}", err=True)
        sys.exit(1)
    except (ValueError, RuntimeError) as e:
        raise click.UsageError(str(e)) from None
    if result is not None:
        _finish(api.outcome(result))


@click.command()
@click.option("--op", type=OP, required=True, help="the op")
@click.option("--backend", "keys", type=Backend(), multiple=True, required=True,
              help="cupy or cupy:VARIANT (repeatable: one split each)")
@click.option("--dtype", type=DTYPE, default="float16", show_default=True)
@click.option("--T", "T", type=POSITIVE_INT, default=4096, show_default=True, help="sequence length")
@click.option("--D", "D", type=POSITIVE_INT, default=64, show_default=True, help="head dim (Dk = Dv)")
@click.option("--B", "B", type=POSITIVE_INT, default=2, show_default=True, help="batch")
@click.option("--H", "H", type=POSITIVE_INT, default=16, show_default=True, help="heads")
@click.option("--pass", "pass_", type=_PASS, default="fwdbwd", show_default=True)
@click.option("--calls", type=POSITIVE_INT, default=15, show_default=True, help="traced calls (medians over them)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="write the splits here (its folder is created)")
@click.option("--seed", type=SEED, default=0, show_default=True, help="seed of the random inputs")
@click.option("--log-decay-range", "log_decay_range", type=(float, float), default=None, metavar="LO HI",
              help="decayed: log decays uniform in [LO, HI] (LO <= HI <= 0) instead of the bench's "
                   f"[{LOG_DECAY_RANGE[0]:g}, {LOG_DECAY_RANGE[1]:g}]")
def kernels(op, keys, dtype, T, D, B, H, pass_, calls, json_path, seed, log_decay_range):
    """The GPU time of every kernel one call through the public API launches (CUDA events around each launch;
    CuPy variants), with the call's whole GPU span beside their sum.  Exits 1 if any variant failed."""
    import json
    from tabulate import tabulate
    from ..cli_params import make_parent
    from .kernels import check_log_decay_range, cupy_variant, kernel_split
    try:
        for key in keys:
            cupy_variant(op, key, dtype)
        if log_decay_range is not None:
            check_log_decay_range(op, log_decay_range)
    except (ValueError, KeyError) as e:
        raise click.UsageError(str(e)) from None
    out, failed = [], 0
    for key in keys:
        try:
            split = kernel_split(op, key, dtype, B=B, H=H, T=T, D=D, pass_=pass_, calls=calls, seed=seed,
                                 log_decay_range=log_decay_range)
        except Exception as e:          # a failing variant is reported, the others still run
            click.echo(f"kernels: {key}: {type(e).__name__}: {e}", err=True)
            failed += 1
            continue
        gs = "" if log_decay_range is None else f"  log decays in [{log_decay_range[0]:g}, {log_decay_range[1]:g}]"
        click.echo(f"\n{split.variant}  {op} {dtype} {pass_}  B={B} H={H} T={T} D={D}{gs}  (medians of {calls} calls, us)")
        click.echo(tabulate(split.table(), headers=["#", "kernel", "us", "share"], disable_numparse=True))
        out.append(split.as_dict())
    if json_path and out:
        make_parent(json_path)
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)
        click.echo(f"wrote {json_path}")
    sys.exit(1 if failed or not out else 0)


COMMANDS = [bench, roofline, scaling, kernels]
