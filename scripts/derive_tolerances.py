#!/usr/bin/env python
"""Per-variant tolerances from the measured error of `check` sweeps.

For every (op, variant, dtype) in the given `check --json` files: the worst relative error seen over every
cell and every output/gradient, times HEADROOM, rounded up to 1, 2 or 5 x 10^k, and capped by the dtype's
tolerance (``workbench.registry.TOLERANCE``).  Prints the table (with the tolerance each variant declares
now, ``registry.Variant.tol``) and the ``tol={...}`` argument of each variant's ``register(...)``.

    python scripts/derive_tolerances.py                       # the committed GPU sweep (SOURCES)
    python scripts/derive_tolerances.py out/check_*.json      # a new one, after the next GPU session

Exits 1 when a file has no comparison cells.  Finite-difference cells and cells of the reference itself are
not measurements of a variant and are left out; failed cells are counted (their finite errors still count,
so a failing sweep never lowers a tolerance).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from workbench import registry  # noqa: E402

HEADROOM = 4.0
# The sweeps the registered tolerances come from (change together with the register(...) tol arguments): a
# file, or a file and the (op, variant) pairs taken from it ("*": every op), for variants that a later sweep
# measured (the H200 sweeps: callC, every cupy variant of that day; callD, chunked_mma for linear and ZeroS
# after their fixes -- callC's cells of it predate those fixes).
_FA2 = tuple(("softmax", f"cupy:{n}") for n in ("fa2", "fa2_det", "fa2_3xtf32", "fa2_tf32"))
SOURCES = (
    "results/h100-2026-11-23/check_numba.json",
    "results/h100-2026-11-23/check_cupy.json",
    ("results/h200-2026-12-02/callC/check_cupy.json",
     _FA2 + (("zeros", "cupy:chunked_mma_fused"), ("decayed", "cupy:chunked_mma"))),
    ("results/h200-2026-12-02/callD/check_cupy_mma.json", (("*", "cupy:chunked_mma"),)),
)


def default_sources() -> list:
    """SOURCES with their paths made absolute (the argument ``derive`` takes)."""
    return [os.path.join(ROOT, e) if isinstance(e, str) else (os.path.join(ROOT, e[0]), e[1]) for e in SOURCES]


def _source(entry) -> tuple:
    """(path, keep): keep is None (every variant) or a set of (op, variant) pairs, op "*" for any."""
    return (entry, None) if isinstance(entry, str) else (entry[0], set(entry[1]))


@dataclass(frozen=True)
class Derived:
    op: str
    variant: str            # backend:name
    dtype: str
    cells: int
    failed: int
    worst: float            # worst finite relative error over every output and gradient
    tol: float              # the derived tolerance


def round_up_125(x: float) -> float:
    """The smallest 1, 2 or 5 x 10^k that is >= x (x > 0)."""
    k = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        t = float(f"{m}e{k}")
        if t >= x * (1 - 1e-12):
            return t
    raise AssertionError(x)


def derive_tolerance(worst: float, dtype: str, headroom: float = HEADROOM, ceiling: float = None) -> float:
    """HEADROOM x the worst error, rounded up to 1, 2 or 5 x 10^k, at most ``ceiling`` (default: the dtype's
    tolerance; the variant's own, ``Variant.ceiling``, for a registered variant: TF32 variants get the tf32
    one) -- also when nothing was measured (worst = 0)."""
    ceiling = registry.TOLERANCE[dtype] if ceiling is None else ceiling
    return ceiling if worst <= 0 else min(round_up_125(headroom * worst), ceiling)


def _ceiling(op: str, variant: str, dtype: str) -> float:
    backend, name = variant.split(":")
    try:
        return registry.get(op, backend, name).ceiling(dtype)
    except (ValueError, KeyError):
        return registry.TOLERANCE[dtype]


def comparison_cells(data: dict) -> list:
    """The cells of variants compared with the reference (the reference's own cells, finite differences
    among them, measure no variant)."""
    reference = data.get("reference", "numpy:explicit")
    return [c for c in data["cells"] if c["variant"] != reference]


def derive(paths, headroom: float = HEADROOM) -> list:
    groups: dict = {}
    for entry in paths:
        path, keep = _source(entry)
        with open(path) as f:
            cells = comparison_cells(json.load(f))
        if not cells:
            raise ValueError(f"{path}: no comparison cells (not a `check --json` file of a variant sweep?)")
        for c in cells:          # variants under their current names (sweeps recorded before a rename)
            key = registry.canonical_key(c["variant"], warn=False)
            if keep is not None and (c["op"], key) not in keep and ("*", key) not in keep:
                continue
            groups.setdefault((c["op"], key, c["dtype"]), []).append(c)
    out = []
    for (op, variant, dtype), cells in sorted(groups.items()):
        # outputs judged against their rounding floor (check.rounding_floors) measure the reference's own
        # conditioning, not the variant: left out
        errs = [e for c in cells for n, e in c["errors"].items()
                if e is not None and math.isfinite(e) and n not in c.get("floors", {})]
        worst = max(errs, default=0.0)
        out.append(Derived(op, variant, dtype, len(cells), sum(not c["ok"] for c in cells), worst,
                           derive_tolerance(worst, dtype, headroom, _ceiling(op, variant, dtype))))
    return out


def registered(op: str, variant: str, dtype: str):
    backend, name = variant.split(":")
    try:
        return registry.get(op, backend, name).tolerance(dtype)
    except (ValueError, KeyError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="check --json files (default: the committed sweeps, SOURCES)")
    ap.add_argument("--headroom", type=float, default=HEADROOM, help="factor on the worst error seen")
    args = ap.parse_args(argv)
    paths = args.paths or default_sources()
    try:
        rows = derive(paths, args.headroom)
    except (OSError, ValueError, KeyError) as e:
        print(f"derive_tolerances: {e}", file=sys.stderr)
        return 1
    from tabulate import tabulate
    table = []
    for d in rows:
        now = registered(d.op, d.variant, d.dtype)
        table.append([d.op, d.variant, d.dtype, d.cells, d.failed, f"{d.worst:.2e}", f"{args.headroom * d.worst:.2e}",
                      f"{d.tol:.0e}", f"{_ceiling(d.op, d.variant, d.dtype):.0e}", "-" if now is None else f"{now:.0e}",
                      "" if now == d.tol else "differs"])
    print(tabulate(table, headers=["op", "variant", "dtype", "cells", "failed", "worst err", f"{args.headroom:g}x",
                                   "tol", "dtype tol", "registered", ""], disable_numparse=True))
    print("\nregister(...) arguments:")
    by_variant: dict = {}
    for d in rows:
        by_variant.setdefault((d.op, d.variant), {})[d.dtype] = d.tol
    for (op, variant), tols in by_variant.items():
        print(f"  {op:8s} {variant:18s} tol={{{', '.join(f'{k!r}: {v:g}' for k, v in tols.items())}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
