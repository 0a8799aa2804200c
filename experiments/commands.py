"""CLI: ``python cli.py experiment NAME [--out DIR] [--quick] [--backend B] [--seed N] [--jobs N] [--time-limit S]``
(and ``experiment all``)."""
from __future__ import annotations

import importlib
import inspect
import sys
import time

import click

from workbench.cli_params import SEED, Backend

from . import EXPERIMENTS
from ._common import COMMITTED_OUT, DEFAULT_OUT


SWEEP_OPTIONS = ("jobs", "time_limit")        # taken by the experiments whose run() accepts them (mqar)


def _run_one(name, out, quick, backend, seed, quiet, **sweep) -> bool:
    """Run one experiment; a failure is reported in one line (the other experiments of ``all`` still run)."""
    mod = importlib.import_module(EXPERIMENTS[name])
    t0 = time.time()
    try:
        res = mod.run(out=out, quick=quick, backend=backend, seed=seed, progress_bar=not quiet, **sweep)
    except Exception as e:
        click.echo(f"== experiment {name} failed after {time.time() - t0:.1f} s: {type(e).__name__}: {e}", err=True)
        return False
    click.echo(f"== experiment {name} ({time.time() - t0:.1f} s, backend {backend}{', quick' if quick else ''})")
    click.echo(mod.summary(res))
    click.echo("wrote " + ", ".join(res["files"]))
    return True


@click.command("experiment", context_settings=dict(help_option_names=["-h", "--help"]))
@click.argument("name", type=click.Choice(sorted(EXPERIMENTS) + ["all"]))
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help=f"folder for NAME.json and NAME*.png (created)  [default: {DEFAULT_OUT}, a scratch folder]")
@click.option("--update-results", is_flag=True,
              help=f"write into {COMMITTED_OUT}/, refreshing the committed figures README shows")
@click.option("--quick", is_flag=True, help="small settings (seconds), for smoke tests")
@click.option("--backend", default="numpy", show_default=True, type=Backend(every_op=True),
              help="backend of the ops that produce the measured rows: numpy, numba, cupy or backend:variant")
@click.option("--seed", type=SEED, default=0, show_default=True, help="seed of the random draws")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="mqar: runs trained at once, in worker processes sharing the device  [default: 1]")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="mqar: end within about SECONDS (runs stop 20 s before it; rerun the command to continue)")
def experiment(name, out, update_results, quick, backend, seed, quiet, jobs, time_limit):
    """Run an experiment that reproduces a claim: sparsity, zeros-contrastive, zeros-dilution, mqar (or all).

    Writes NAME.json (every number) and NAME*.png under --out and prints a short table.  Exits 1 if any
    experiment failed."""
    sweep = {k: v for k, v in dict(jobs=jobs, time_limit=time_limit).items() if v is not None}
    if sweep:
        takers = [n for n in sorted(EXPERIMENTS) if set(SWEEP_OPTIONS) <= set(
            inspect.signature(importlib.import_module(EXPERIMENTS[n]).run).parameters)]
        if name not in takers:
            raise click.UsageError(f"--jobs and --time-limit apply to: {', '.join(takers)} (not {name})")
    if update_results and out:
        raise click.UsageError("--out and --update-results exclude each other")
    if update_results and quick:
        raise click.UsageError("--update-results with --quick would replace the committed figures by quick ones")
    out = COMMITTED_OUT if update_results else (out or DEFAULT_OUT)
    ok = [_run_one(n, out, quick, backend, seed, quiet, **sweep)
          for n in (sorted(EXPERIMENTS) if name == "all" else [name])]
    if not all(ok):
        sys.exit(1)


COMMANDS = [experiment]
