"""Click parameter types shared by the command line (``cli.py``, ``workbench/bench/commands.py``,
``experiments/commands.py``).

Every option is validated before anything runs: a bad value stops the command with exit status 2 and one
line that names the option and the value (click's ``Invalid value for '--op': ...``).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import click

from . import backends, registry

DTYPES = ("float64", "float32", "float16", "bfloat16")
SCRATCH = "out"                                  # default folder of everything a command writes (git-ignored)



class Named(click.Choice):
    """A choice whose refusal reads "unknown <what> 'x'; choose one of a, b, c"."""

    def __init__(self, what: str, choices):
        super().__init__(choices)
        self.what = what
        self.name = what

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        self.fail(f"unknown {self.what} {value!r}; choose one of {', '.join(self.choices)}", param, ctx)


OP = Named("op", registry.OPS)
DTYPE = Named("dtype", DTYPES)
POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
SEED = click.IntRange(min=0)


def scratch(*parts: str) -> str:
    """A path under the scratch output folder (``out/``, relative to the current directory)."""
    return os.path.join(SCRATCH, *parts)


def make_parent(path: Optional[str]) -> None:
    """Create the folder a file ``path`` goes into (nothing for None)."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


class Backend(click.ParamType):
    """``backend`` or ``backend:variant``: a known backend, a registered variant, usable on this machine.

    ``groups``: extra names accepted besides the registry's backends (``peer`` for ``bench``, whose line keys
    ``peer:NAME`` name the peers).  ``every_op``: a ``backend:variant`` must be registered for every op (the
    experiments call all four ops with one backend string).  ``timed``: the backend must be timeable here
    (not Numba's CUDA simulator; peers need torch with a CUDA GPU).
    """
    name = "backend"

    def __init__(self, groups: tuple = (), every_op: bool = False, timed: bool = False):
        self.groups = tuple(registry.BACKENDS) + tuple(groups)
        self.every_op = every_op
        self.timed = timed

    def convert(self, value, param, ctx):
        if str(value).partition(":")[0] in registry.BACKENDS:
            value = registry.canonical_key(value)         # a renamed variant's former name: its new one
        group, _, variant = str(value).partition(":")
        if group not in self.groups:
            self.fail(f"unknown backend or variant {value!r}; choose one of {', '.join(self.groups)} "
                      f"(or backend:variant)", param, ctx)
        if variant:
            known = self._keys(group)
            if value not in known:
                what = ("is not registered for every op (the command runs all of them)" if self.every_op
                        and value in self._keys(group, every_op=False) else "is not a registered variant")
                self.fail(f"{value!r} {what}; {self._scope} {group}: {', '.join(known) or 'none'}", param, ctx)
        why = self._unusable(group)
        if why:
            self.fail(f"{value!r} cannot run on this machine: {why}", param, ctx)
        return value

    @property
    def _scope(self) -> str:
        return "the variants of every op in" if self.every_op else "registered in"

    def _keys(self, group: str, every_op: Optional[bool] = None) -> list:
        if group == "peer":
            from .bench.peers import PEERS
            return [p.key for p in PEERS]
        registry.load_all()
        if self.every_op if every_op is None else every_op:
            per_op = [{v.key for v in registry.variants(op, group)} for op in registry.OPS]
            return sorted(set.intersection(*per_op))
        return sorted({v.key for v in registry.variants(backend=group)})

    def _unusable(self, group: str) -> Optional[str]:
        if group == "peer":
            if not backends.gpu_available():
                return "peers are timed on a CUDA GPU only"
            from .bench.peers import torch_cuda_ok
            return torch_cuda_ok()
        ok, why = backends.status(group)
        if not ok:
            return why
        if self.timed and group == "numba" and backends.numba_simulator():
            return "Numba runs on its CUDA simulator here (NUMBA_ENABLE_CUDASIM=1), which is not timed"
        return None


class BenchJSON(click.Path):
    """An existing JSON file written by ``bench --json`` (a ``check`` JSON or any other file is refused)."""
    name = "bench_json"

    def __init__(self):
        super().__init__(exists=True, dir_okay=False)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            self.fail(f"{path!r} is not readable JSON ({type(e).__name__}: {e})", param, ctx)
        if not (isinstance(data, dict) and isinstance(data.get("results"), list) and "meta" in data):
            hint = " (that is a `check` result)" if isinstance(data, dict) and "cells" in data else ""
            self.fail(f"{path!r} is not a bench result (written by `bench --json`){hint}", param, ctx)
        return path
