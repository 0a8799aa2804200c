"""CLI: ``python cli.py experiment NAME [--out DIR] [--quick] [--backend B] [--seed N]`` (and ``experiment all``)."""
from __future__ import annotations

import importlib
import time

import click

from . import EXPERIMENTS
from ._common import DEFAULT_OUT


def _check_backend(backend: str) -> None:
    from workbench import backends, registry
    name = backend.split(":", 1)[0]
    if name not in registry.BACKENDS:
        raise click.BadParameter(f"unknown backend {backend!r}; choose one of {', '.join(registry.BACKENDS)} "
                                 f"(or backend:variant)", param_hint="--backend")
    ok, why = backends.status(name)
    if not ok:
        raise click.BadParameter(f"backend {name} is not usable here: {why}", param_hint="--backend")


def _run_one(name, out, quick, backend, seed, quiet):
    mod = importlib.import_module(EXPERIMENTS[name])
    t0 = time.time()
    res = mod.run(out=out, quick=quick, backend=backend, seed=seed, progress_bar=not quiet)
    click.echo(f"== experiment {name} ({time.time() - t0:.1f} s, backend {backend}{', quick' if quick else ''})")
    click.echo(mod.summary(res))
    click.echo("wrote " + ", ".join(res["files"]))
    return res


@click.command("experiment", context_settings=dict(help_option_names=["-h", "--help"]))
@click.argument("name", type=click.Choice(sorted(EXPERIMENTS) + ["all"]))
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
              help="folder for NAME.json and NAME*.png")
@click.option("--quick", is_flag=True, help="small settings (seconds), for smoke tests")
@click.option("--backend", default="numpy", show_default=True,
              help="backend of the ops that produce the measured rows: numpy, numba, cupy or backend:variant")
@click.option("--seed", default=0, show_default=True, help="seed of the random draws")
@click.option("--quiet", is_flag=True, help="no progress bars")
def experiment(name, out, quick, backend, seed, quiet):
    """Run an experiment that reproduces a seed: sparsity, zeros-contrastive, zeros-dilution, mqar (or all).

    Writes NAME.json (every number) and NAME*.png under --out and prints a short table."""
    _check_backend(backend)
    for n in (sorted(EXPERIMENTS) if name == "all" else [name]):
        _run_one(n, out, quick, backend, seed, quiet)


COMMANDS = [experiment]
