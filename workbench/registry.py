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

Optional features (``Variant.features``, a subset of ``FEATURES``; semantics in workbench/state.py and
docs/spec.md).  A variant declares the features it implements.  The public ops refuse a call that needs a
feature the chosen variant lacks (the error names the options and the variants that have them; ``auto``
and a bare backend name pick a variant that has them), and pass a feature's keywords only when the caller
used it, so a variant without the feature never sees them and its signature stays as above.

``"packed"``: ``cu_seqlens`` (every op).
    out, ctx = variant.forward(*arrays, **options, cu_seqlens=cu)
  ``cu`` is a tuple of Python ints, ``0 = cu[0] < cu[1] < ... < cu[-1] = T`` (validated: no empty
  sequence); sequence j is positions ``[cu[j], cu[j+1])`` of the T axis of every array, the same for every
  leading index n.  No token attends across a boundary (causal or not); ZeroS's window and count n_t are
  the sequence's.  The backward gets nothing extra.

``"state"``: ``initial_state`` and ``return_state`` (linear, decayed, zeros; causal calls only -- the ops
refuse ``causal=False``).  Each keyword is passed only when used (initial_state not None, return_state
True), alone or together, with or without ``cu_seqlens``:
    result, ctx = variant.forward(*arrays, **options, initial_state=S0, return_state=True, cu_seqlens=cu)
  ``S0``: the op's state object (``workbench.state``: ``LinearState``, ``DecayedState``, ``ZeroSState``)
  with every field flattened to ``(N, nseq, *field)``, ``nseq = len(cu) - 1`` with cu_seqlens, else 1;
  C-contiguous, of the variant's array kind, dtype float32 for float16/bfloat16/float32 inputs and
  float64 for float64 inputs (``state.state_dtype``).  Fields (``state.layout``): LinearState ``S (Dk, Dv)``
  and ``z (Dk,)`` exactly when normalize=True (else None); DecayedState ``S (Dk, Dv)``; ZeroSState ``m, E,
  P, n ()`` and ``F, G, H (Dk, Dv)`` (E and F relative to m).  Sequence j starts from ``S0[:, j]``.
  With ``return_state=True``, ``result`` is the pair ``(out, final)``: ``final`` the state after each
  sequence's last token, same type, layout and dtype as S0 (whether or not S0 was given); else ``result``
  is ``out``.
    grads = variant.backward(ctx, dout)              # the call had no return_state
    grads = variant.backward(ctx, dout, dfinal)      # the call had return_state=True
  ``dfinal``: None (a zero gradient) or a state object, same layout, every field set: the gradient of the
  loss with respect to ``final``.  ``grads`` holds one gradient per array argument and, when the call had
  an initial state, one more, last: a state object with the gradient of every field of ``S0`` (same type,
  layout and dtype).
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from .opspec import ARRAY_ARGS, OPS, SPECS  # noqa: F401  (the ops, their array arguments: workbench/opspec.py)

BACKENDS = ("numpy", "numba", "cupy")

# Optional features a variant may implement (see the module doc).
FEATURES = ("state", "packed")

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
    gpu: bool = False               # needs a CUDA device (or the Numba simulator)
    tags: tuple = field(default_factory=tuple)
    # Cost model used by ``bench`` (workbench/bench/costs.py): "quadratic" (explicit T x T pairs),
    # "linear" (state / chunked linear-time form) or "" to infer it from the op and the variant's name.
    form: str = ""
    # Tolerance per dtype from this variant's measured error (about 4x the worst relative error of a GPU
    # sweep, rounded up to 1, 2 or 5 x 10^k; scripts/derive_tolerances.py derives it from check JSONs), at
    # most TOLERANCE[dtype]; a dtype not listed gets TOLERANCE[dtype].
    tol: Mapping[str, float] = field(default_factory=dict, hash=False)
    # The optional features of the module doc this variant implements: "state", "packed".
    features: frozenset = frozenset()
    # Former names (deprecated): ``get`` and ``canonical_key`` still accept them, with a FutureWarning.
    aliases: tuple = ()
    # forward/backward take the arrays with any leading dims ((..., T, D), C-contiguous) and return outputs
    # and gradients with them (or flattened to one leading dim): the public ops then pass the caller's arrays
    # without reshaping them (a view per array and per result saved on the host path).  False: every array
    # arrives with its leading dims flattened to one, (N, T, ...).
    leading_dims: bool = False
    # Optional: ``prepare(options, shapes, dtype)`` -> (forward, backward) bound to one call signature (the public
    # ops' plan calls it once per plan, keyed on every array's shape and dtype and every option: ``options`` the
    # validated options the variant would get, ``shapes`` the arrays' shapes as it sees them, in argument order,
    # ``dtype`` their NumPy dtype), or None for the general path.  ``forward(*arrays)`` and ``backward(ctx, dout)``
    # must do what ``self.forward(*arrays, **options)`` and ``self.backward`` do for arrays of that signature
    # (C-contiguous, native byte order; dout C-contiguous in dtype), with every choice and lookup made once; the
    # backward returns a tuple of the gradients in ``shapes`` (the ops hand it on as it is).  Not used with an
    # initial state or return_state.
    prepare: Optional[Callable] = None

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
_IMPORTED: set = set()     # providers imported (or tried: a failure is in _FAILED)
_LOADED: set = set()       # (op, backend) lookups whose providers all imported (None: every op / backend)
_FAILED: list = []         # (provider, exception) of every provider that did not import
_PARTIAL_OK = [False]      # load_all(allow_failures=True) was called: serve the providers that imported
_VIEWS: dict = {}          # (op, backend) -> sorted list of variants; rebuilt after every register()
_LOADING: list = []        # the _PROVIDERS entries being imported (register checks a variant against it)
VERSION = [0]              # bumped by every register(): choices cached elsewhere (ops' plans) are stale

# Modules that register variants when imported, each with the backend and op of every variant it registers
# (None: any): a lookup imports only the modules of its (op, backend) -- a first Numba call of one op
# imports neither the CuPy kernels nor Numba's other ops (kernels/numba/__init__.py imports no submodule) --
# and ``register`` refuses a variant its importing module does not declare, so a lazy lookup misses nothing.
# GPU modules must import without a GPU (and without CuPy installed): they import CuPy lazily, inside
# forward/backward (Numba's modules import numba at import).
_PROVIDERS = (
    ("workbench.reference", "numpy", None),
    ("kernels.numba.softmax", "numba", "softmax"),
    ("kernels.numba.linear", "numba", "linear"),
    ("kernels.numba.decayed", "numba", "decayed"),
    ("kernels.numba.zeros", "numba", "zeros"),
    ("kernels.cupy", "cupy", None),
)


def register(variant: Variant) -> Variant:
    if variant.op not in OPS:
        raise ValueError(f"unknown op {variant.op!r}")
    if variant.backend not in BACKENDS:
        raise ValueError(f"unknown backend {variant.backend!r}")
    bad = set(variant.features) - set(FEATURES)
    if bad or not set(variant.features) <= set(SPECS[variant.op].features):
        raise ValueError(f"variant {variant.op} {variant.key}: features {sorted(variant.features)}; expected a "
                         f"subset of {FEATURES} (no state for "
                         f"{', '.join(o for o, sp in SPECS.items() if 'state' not in sp.features)})")
    for dtype, tol in variant.tol.items():
        if dtype not in variant.dtypes or dtype not in TOLERANCE or not 0 < tol <= variant.ceiling(dtype):
            raise ValueError(f"variant {variant.op} {variant.key}: tol[{dtype!r}] = {tol!r}; expected a dtype "
                             f"of the variant ({', '.join(variant.dtypes)}) and 0 < tol <= "
                             f"{variant.ceiling(dtype) if dtype in TOLERANCE else None}")
    if _LOADING:
        mod, backend, op = _LOADING[-1]
        if (backend or variant.backend) != variant.backend or (op or variant.op) != variant.op:
            raise ValueError(f"variant {variant.op} {variant.key} registered by provider {mod}, which registry."
                             f"_PROVIDERS declares for backend {backend or 'any'}, op {op or 'any'}: declare it "
                             f"there (a lookup of {variant.op} {variant.backend} would miss it)")
    key = (variant.op, variant.backend, variant.name)
    if key in _TABLE and _TABLE[key] is not variant:
        raise ValueError(f"variant {variant.op} {variant.key} registered twice")
    if any((variant.op, variant.backend, a) in _TABLE for a in variant.aliases):
        raise ValueError(f"variant {variant.op} {variant.key}: a former name {variant.aliases} is a variant's name")
    _TABLE[key] = variant
    _changed()
    return variant


def unregister(op: str, backend: str, name: str) -> None:
    """Remove a variant (tests that register temporary ones); cached views and plans are dropped."""
    _TABLE.pop((op, backend, name))
    _changed()


def _changed() -> None:
    _VIEWS.clear()
    VERSION[0] += 1


class ProviderImportError(ImportError):
    """A provider module of ``_PROVIDERS`` failed to import: its variants are not registered."""


def load(op: Optional[str] = None, backend: Optional[str] = None) -> None:
    """Import, once, the provider modules of ``op``'s variants of ``backend`` (None: every op / backend).

    A provider that fails to import raises ``ProviderImportError`` (its error chained) from this call and
    from every later one that needs it -- every lookup calls this -- so nothing works on a table that
    silently lacks a backend (``load_all(allow_failures=True)`` turns that off)."""
    if (op, backend) in _LOADED:
        return
    mine = [p for p in _PROVIDERS
            if (backend is None or p[1] in (None, backend)) and (op is None or p[2] in (None, op))]
    for p in mine:
        if p[0] not in _IMPORTED:
            _IMPORTED.add(p[0])         # before the import: a provider's import may look variants up
            _LOADING.append(p)
            try:
                importlib.import_module(p[0])
            except Exception as e:
                _FAILED.append((p[0], e))
            finally:
                _LOADING.pop()
    failed = [(m, e) for m, e in _FAILED if any(m == p[0] for p in mine)]
    if failed and not _PARTIAL_OK[0]:
        mod, e = failed[0]
        raise ProviderImportError(f"variant provider {mod} failed to import ({type(e).__name__}: {e}); its "
                                  f"variants are not registered") from e
    _LOADED.add((op, backend))


def load_all(allow_failures: bool = False) -> list:
    """Import every provider module once (each registers its variants): ``load()`` of everything.
    ``allow_failures=True`` (``bench``: time what did register) returns the failures instead of raising, as
    (provider, exception) pairs, and from then on the table serves the providers that imported."""
    if allow_failures:
        _PARTIAL_OK[0] = True
    load()
    return list(_FAILED)


def variants(op: Optional[str] = None, backend: Optional[str] = None) -> list:
    load(op, backend)
    view = _VIEWS.get((op, backend))
    if view is None:
        view = _VIEWS[(op, backend)] = [v for (o, b, _), v in sorted(_TABLE.items())
                                        if (op is None or o == op) and (backend is None or b == backend)]
    return list(view)


def get(op: str, backend: str, name: Optional[str] = None, dtype: Optional[str] = None) -> Variant:
    """The variant ``backend:name`` of ``op``; when name is None the backend's default for ``dtype`` (a
    variant listing it in ``default_for``), else its default."""
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
    for v in cands:
        if name in v.aliases:
            _warn_renamed(f"{backend}:{name}", v.key)
            return v
    raise ValueError(f"unknown variant {backend}:{name} for op {op}; available: "
                     f"{', '.join(available_keys(op))}")


def _warn_renamed(old: str, new: str) -> None:
    warnings.warn(f"variant {old} is now {new}; the old name is deprecated and will be removed", FutureWarning,
                  stacklevel=3)


def canonical_key(key: str, warn: bool = True) -> str:
    """``key`` ("backend:name") with a deprecated variant name replaced by the current one (a FutureWarning
    unless ``warn=False``: results recorded before the rename); anything else unchanged."""
    backend, _, name = str(key).partition(":")
    for v in variants(backend=backend) if name and backend in BACKENDS else ():
        if name in v.aliases and not any(w.name == name for w in variants(backend=backend)):
            if warn:
                _warn_renamed(key, v.key)
            return v.key
    return key


def available_keys(op: Optional[str] = None) -> list:
    return [f"{v.key}" if op else f"{v.op}/{v.key}" for v in variants(op)]
