"""The one table of kernel variants.

Every implementation of an op -- NumPy reference, Numba kernel, CuPy kernel -- is a ``Variant`` registered
here once.  The public ops, ``check``, ``bench``, the tests and the CLI all read this table; nothing else
lists variants.

A variant's contract (arrays are already validated, flattened to one leading dim and contiguous):

    out, ctx = variant.forward(*arrays, **options)   # arrays in the op's argument order
    grads    = variant.backward(ctx, dout)           # tuple, one gradient per array argument

Shapes seen by a variant: q, k ``(N, T, Dk)``; v ``(N, T, Dv)``; log_decay and s ``(N, T)``;
gates ``(N, T, 2|3)``.  ``array_kind`` says which arrays the variant takes: ``"numpy"``, ``"cupy"`` or
``"any"`` (the variant accepts both and returns the kind it was given).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

OPS = ("softmax", "linear", "decayed", "zeros")
BACKENDS = ("numpy", "numba", "cupy")

# Array arguments of each op, in order (also the order of the gradients).
ARRAY_ARGS = {
    "softmax": ("q", "k", "v"),
    "linear": ("q", "k", "v"),
    "decayed": ("q", "k", "v", "log_decay"),
    "zeros": ("q", "k", "v", "s", "gates"),
}

# Relative-error tolerance per dtype (``||x - ref|| / ||ref||`` against the float64 reference): what ``check``
# applies to a variant that declares none, and the ceiling of any tolerance a variant declares.
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "tf32": 5e-3, "float16": 2e-2, "bfloat16": 2e-2}


@dataclass(frozen=True)
class Variant:
    op: str
    backend: str
    name: str
    forward: Callable
    backward: Callable
    dtypes: tuple = ("float32", "float64")
    array_kind: str = "numpy"
    description: str = ""
    # supports(options, shapes) -> None when fine, else a reason string.  shapes: dict name -> shape.
    supports: Optional[Callable] = None
    default: bool = False           # the variant that "<backend>" alone picks
    default_for: tuple = ()         # dtypes for which "<backend>" alone picks this one instead
    is_reference: bool = False      # an exact NumPy reference (checked against the explicit float64 one)
    gpu: bool = False               # needs a CUDA device (or the Numba simulator)
    tags: tuple = field(default_factory=tuple)
    # Cost model used by ``bench`` (workbench/bench/costs.py): "quadratic" (explicit T x T pairs),
    # "linear" (state / chunked linear-time form) or "" to infer it from the op and the variant's name.
    form: str = ""
    # Tolerance per dtype from this variant's measured error (about 4x the worst relative error of a GPU
    # sweep, rounded up to 1, 2 or 5 x 10^k; scripts/derive_tolerances.py derives it from check JSONs), at
    # most TOLERANCE[dtype]; a dtype not listed gets TOLERANCE[dtype].
    tol: Mapping[str, float] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.name}"

    def ceiling(self, dtype: str) -> float:
        """The dtype's tolerance; float32 variants tagged "tf32" compute in TF32 and get the tf32 one."""
        return TOLERANCE["tf32" if dtype == "float32" and "tf32" in self.tags else dtype]

    def tolerance(self, dtype: str) -> float:
        """The relative-error tolerance ``check`` applies to this variant's ``dtype`` cells."""
        return min(self.tol.get(dtype, self.ceiling(dtype)), self.ceiling(dtype))

    def unsupported_reason(self, options: dict, shapes: dict) -> Optional[str]:
        return self.supports(options, shapes) if self.supports else None


_TABLE: dict = {}          # (op, backend, name) -> Variant
_LOADED = False
_VIEWS: dict = {}          # (op, backend) -> sorted list of variants; rebuilt after every register()
VERSION = [0]              # bumped by every register(): choices cached elsewhere (ops' plans) are stale

# Modules that register variants when imported.  GPU modules must import without a GPU (and without
# CuPy installed): they import their GPU libraries lazily, inside forward/backward.
_PROVIDERS = (
    "workbench.reference",
    "kernels.numba",
    "kernels.cupy",
)


def register(variant: Variant) -> Variant:
    if variant.op not in OPS:
        raise ValueError(f"unknown op {variant.op!r}")
    if variant.backend not in BACKENDS:
        raise ValueError(f"unknown backend {variant.backend!r}")
    for dtype, tol in variant.tol.items():
        if dtype not in variant.dtypes or dtype not in TOLERANCE or not 0 < tol <= variant.ceiling(dtype):
            raise ValueError(f"variant {variant.op} {variant.key}: tol[{dtype!r}] = {tol!r}; expected a dtype "
                             f"of the variant ({', '.join(variant.dtypes)}) and 0 < tol <= "
                             f"{variant.ceiling(dtype) if dtype in TOLERANCE else None}")
    key = (variant.op, variant.backend, variant.name)
    if key in _TABLE and _TABLE[key] is not variant:
        raise ValueError(f"variant {variant.op} {variant.key} registered twice")
    _TABLE[key] = variant
    _VIEWS.clear()
    VERSION[0] += 1
    return variant


def load_all() -> None:
    """Import every provider module once (each registers its variants)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in _PROVIDERS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:    # a provider package not written yet: skip it
            if e.name != mod and not mod.startswith(e.name or "\0"):
                raise


def variants(op: Optional[str] = None, backend: Optional[str] = None) -> list:
    load_all()
    view = _VIEWS.get((op, backend))
    if view is None:
        view = _VIEWS[(op, backend)] = [v for (o, b, _), v in sorted(_TABLE.items())
                                        if (op is None or o == op) and (backend is None or b == backend)]
    return list(view)


def get(op: str, backend: str, name: Optional[str] = None, dtype: Optional[str] = None) -> Variant:
    """The variant ``backend:name`` of ``op``; when name is None the backend's default for ``dtype`` (a
    variant listing it in ``default_for``), else its default."""
    load_all()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(available_keys(op))}")
    cands = variants(op, backend)
    if not cands:
        raise ValueError(f"no {backend} variant of {op} is registered; available: "
                         f"{', '.join(available_keys(op))}")
    if name is None:
        defaults = ([v for v in cands if dtype is not None and dtype in v.default_for]
                    or [v for v in cands if v.default] or cands)
        return defaults[0]
    for v in cands:
        if v.name == name:
            return v
    raise ValueError(f"unknown variant {backend}:{name} for op {op}; available: "
                     f"{', '.join(available_keys(op))}")


def available_keys(op: Optional[str] = None) -> list:
    return [f"{v.key}" if op else f"{v.op}/{v.key}" for v in variants(op)]
