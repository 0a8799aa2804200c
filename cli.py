"""Command line of the attention workbench (also installed as the console script ``workbench``).

The commands are thin: every piece of logic lives in the library (``workbench/``) or in ``experiments/``.
Command modules other than ``info`` and ``check`` add themselves through ``_COMMAND_MODULES``.
"""
from __future__ import annotations

import importlib
import sys
import time

import click

import workbench
from workbench.cli_params import DTYPE, NON_NEGATIVE_INT, OP, SEED, Backend, make_parent

# Modules that each define click commands in a ``COMMANDS`` list.
_COMMAND_MODULES = (
    "workbench.bench.commands",      # bench, roofline, scaling
    "experiments.commands",          # experiment NAME
)


@click.group(context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(workbench.__version__, "--version", prog_name="workbench")
def main():
    """Attention workbench: softmax, linear, decayed and ZeroS attention kernels, checked and timed."""


@main.command()
def info():
    """Backends found, GPU or not, versions, and every registered variant."""
    from workbench.check import info_report
    click.echo(info_report())


@main.command()
@click.option("--op", "ops", type=OP, multiple=True, help="op(s) to check (repeatable; default all)")
@click.option("--backend", "backends", type=Backend(), multiple=True,
              help="backend or backend:variant (repeatable); default: every backend usable here")
@click.option("--quick", is_flag=True, help="a small sweep (seconds)")
@click.option("--full", is_flag=True, help="the large GPU sweep (T up to 4097, head dims 32..128)")
@click.option("--dtype", "dtypes", type=DTYPE, multiple=True,
              help="only these dtypes (repeatable; default: each variant's usual dtypes)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="write every cell to this JSON file (its folder is created)")
@click.option("--seed", type=SEED, default=0, show_default=True, help="seed of the random inputs")
@click.option("--jobs", "-j", type=NON_NEGATIVE_INT, default=1, show_default=True,
              help="processes to run cells in (0: one per CPU core); GPU sweeps are bound by JIT compiles")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="start no cell after this many seconds; the cells that ran are reported and written, the rest "
                   "counted as not run, and the command exits 1 (default: no limit)")
@click.option("--skip-passed", "skip_passed", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="an earlier run's --json file (repeatable; same --seed): its passed cells are not run again, "
                   "so a sweep cut by --time-limit continues where it stopped; exits 0 when every planned cell "
                   "passed here or there")
def check(ops, backends, quick, full, dtypes, json_path, seed, jobs, time_limit, skip_passed):
    """Sweep ops x variants x shapes x dtypes x causal against the float64 explicit reference, forward and
    every gradient.  Exits 1 if any cell fails or nothing was checked (cells skipped by --skip-passed count as
    checked: they passed in the files given)."""
    from workbench import BackendUnavailable
    from workbench.check import run_check
    if quick and full:
        raise click.UsageError("--quick and --full exclude each other")
    make_parent(json_path)
    try:
        ok = run_check(ops=ops, backends=backends, quick=quick, full=full, dtypes=dtypes, json_path=json_path,
                       seed=seed, echo=click.echo, jobs=jobs, time_limit=time_limit, skip_passed=skip_passed)
    except (ValueError, BackendUnavailable) as e:
        raise click.UsageError(str(e)) from None
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--op", "ops", multiple=True, type=click.Choice(workbench.registry.OPS),
              help="only these ops (repeatable; default all)")
@click.option("--backend", "backends_", multiple=True, type=click.Choice(("cupy", "numba")),
              help="only these GPU backends (repeatable; default every one usable here)")
@click.option("--jobs", "-j", default=0, show_default=True, type=click.IntRange(min=0),
              help="processes compiling CuPy groups (0: one per CPU core)")
@click.option("--list", "list_only", is_flag=True, help="print what would be compiled; compile nothing")
def warmup(ops, backends_, jobs, list_only):
    """Compile every kernel for the local GPU (CuPy: every compile group, then one tiny call per variant,
    dtype and option set; Numba: its precompile step, if it has one), so later processes load them from the
    on-disk caches.  Exits 1 if anything failed, 2 if no requested backend can run here."""
    from workbench import warmup as wu
    chosen = backends_ or wu.GPU_BACKENDS
    if not list_only:
        usable = [b for b in chosen if wu.usable(b)[0]]
        if not usable:
            why = "; ".join(f"{b}: {wu.usable(b)[1]}" for b in chosen)
            raise click.UsageError(f"nothing to warm up: no requested GPU backend can run here ({why})")
        for b in chosen:
            if b not in usable:
                click.echo(f"warmup: skipping {b}: {wu.usable(b)[1]}", err=True)
        chosen = tuple(usable)
    tasks, notes = wu.plan(ops, chosen)
    for note in notes:
        click.echo(f"warmup: {note}", err=True)
    if list_only:
        for t in tasks:
            click.echo(f"{t.backend:6s} {t.label}")
        click.echo(f"{len(tasks)} tasks")
        return
    if not tasks:
        click.echo("warmup: nothing to do", err=True)
        sys.exit(1)
    t0 = time.perf_counter()
    failures = wu.run(tasks, jobs=jobs, echo=click.echo)
    click.echo(f"warmup: {len(tasks) - len(failures)}/{len(tasks)} tasks done in {time.perf_counter() - t0:.0f} s"
               f"{f'; {len(failures)} failed' if failures else ''}")
    sys.exit(1 if failures else 0)


def _add_command_modules():
    for name in _COMMAND_MODULES:
        for cmd in importlib.import_module(name).COMMANDS:
            main.add_command(cmd)


_add_command_modules()

if __name__ == "__main__":
    main()
