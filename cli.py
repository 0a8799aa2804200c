"""Command line of the attention workbench (also installed as the console script ``workbench``).

The commands are thin: every piece of logic lives in the library (``workbench/``) or in ``experiments/``.
Command modules other than ``info`` and ``check`` add themselves through ``_COMMAND_MODULES``.
"""
from __future__ import annotations

import importlib
import sys

import click

import workbench
from workbench.cli_params import DTYPE, NON_NEGATIVE_INT, OP, SEED, Backend, make_parent

# Modules that each define click commands in a ``COMMANDS`` list (added when the module exists).
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
def check(ops, backends, quick, full, dtypes, json_path, seed, jobs):
    """Sweep ops x variants x shapes x dtypes x causal against the float64 explicit reference, forward and
    every gradient.  Exits 1 if any cell fails or nothing was checked."""
    from workbench import BackendUnavailable
    from workbench.check import run_check
    if quick and full:
        raise click.UsageError("--quick and --full exclude each other")
    make_parent(json_path)
    try:
        ok = run_check(ops=ops, backends=backends, quick=quick, full=full, dtypes=dtypes, json_path=json_path,
                       seed=seed, echo=click.echo, jobs=jobs)
    except (ValueError, BackendUnavailable) as e:
        raise click.UsageError(str(e)) from None
    sys.exit(0 if ok else 1)


def _add_command_modules():
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if name.startswith(e.name or "\0"):      # that module not written yet
                continue
            raise
        for cmd in getattr(mod, "COMMANDS", ()):
            main.add_command(cmd)


_add_command_modules()

if __name__ == "__main__":
    main()
