"""The one table of op facts: what each public op takes, its options, and what the tools need to know about it.

Every fact about an op that is not its math is written here once, in ``SPECS``:

  arrays        the array arguments in order, each with its trailing dims (``T`` positions, head dims ``Dk``
                and ``Dv``, ``G`` gates per token); their order is the order of the gradients (``dq, dk, ...``);
  options       the public op's keyword options and their defaults, in signature order (the public functions
                in workbench/ops.py write the same signature; importing ops checks that they agree);
  choices       options with a finite set of values (validation and ``warmup``);
  causal_only   why ``causal=False`` is refused ("" when both masks exist); a causal-only op's variants never
                see ``causal``;
  features      the optional features of registry.FEATURES its variants may declare (no state for softmax);
  linear_states Dk x Dv states of its linear-time form: the bench cost model's hook (0: only the quadratic
                form exists);
  check_cells   the option cells ``check`` sweeps (the first ``quick_cells`` in a quick sweep): op options and
                input-generator arguments together;
  make_inputs   the random-input generator (``inputs.random_inputs``) and the names of its arguments.

Readers: the public ops (validation, ``vjp``'s options), the registry (``OPS``, ``ARRAY_ARGS``, features),
``inputs``, ``check``, ``bench`` (cells, costs, plots, reports), ``warmup``, the Numba PTX check and the
command line (``--op``).  The math of each op is in docs/spec.md and workbench/reference/.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np

FEATURE_MAPS = ("identity", "elu1", "relu")      # linear attention's phi
N_GATES = (2, 3)                                   # ZeroS gates per token: first/higher order (+ zero order)


@dataclass(frozen=True)
class Array:
    """One array argument: its name and its dims after the leading ones."""
    name: str
    dims: tuple                     # ("T", "Dk"), ("T", "Dv"), ("T",) or ("T", "G")
    nonpositive: bool = False       # every value must be <= 0 (a log decay; -inf allowed)

    @property
    def gradient(self) -> str:
        return "d" + self.name


Q, K, V = Array("q", ("T", "Dk")), Array("k", ("T", "Dk")), Array("v", ("T", "Dv"))


@dataclass(frozen=True)
class OpSpec:
    name: str
    title: str                                  # "decayed attention": how messages name the op
    arrays: tuple                               # Array, in argument order
    options: Mapping                            # keyword option -> default, in signature order
    make_inputs: Callable                       # make_inputs(rng, q, k, v, **input_args) -> arrays (float64)
    input_args: tuple = ()                      # make_inputs' keyword arguments (check cells may set them)
    choices: Mapping = field(default_factory=dict)
    causal_only: str = ""
    features: tuple = ("state", "packed")
    linear_states: int = 0
    scaled_qk: bool = False                     # q, k (and the states' Dk x Dv fields) drawn N(0, 1/Dk)
    check_cells: tuple = (("", {}),)
    quick_cells: int = 1
    check: Optional[Callable] = None            # check(options, Dk): op-specific validation, in place

    @property
    def array_names(self) -> tuple:
        return tuple(a.name for a in self.arrays)

    def shapes(self, lead: tuple, T: int, Dk: int, Dv: int, G: int = N_GATES[0]) -> dict:
        """Each array argument's shape for these sizes (G: ZeroS gates per token), as the public ops hand them
        to ``Variant.unsupported_reason``."""
        size = {"T": T, "Dk": Dk, "Dv": Dv, "G": G}
        return {a.name: (*lead, *(size[d] for d in a.dims)) for a in self.arrays}

    @property
    def gradients(self) -> tuple:
        """Names of the pullback's gradients, in order: ``dq, dk, dv, ...``."""
        return tuple(a.gradient for a in self.arrays)

    @property
    def causal_values(self) -> tuple:
        """The masks a sweep runs: (True,) for a causal-only op, else (True, False)."""
        return (True,) if self.causal_only else (True, False)

    def default_options(self, causal: bool = True, **extra) -> dict:
        """Every keyword option with its default (``causal`` as given; none for a causal-only op), updated
        with ``extra``."""
        opts = {k: (causal if k == "causal" else d) for k, d in self.options.items()
                if not (k == "causal" and self.causal_only)}
        opts.update(extra)
        return opts

    def cells(self, quick: bool) -> list:
        """``check``'s option cells: (label, options and input arguments)."""
        return list(self.check_cells[:self.quick_cells] if quick else self.check_cells)


# ----------------------------------------------------------------------------- validation
def check_options(op: str, options: dict, Dk: int) -> dict:
    """The public op's options as its variants receive them, else an error naming the op and the option:
    ``causal`` a bool (dropped for a causal-only op, which refuses False), ``scale`` a float (softmax: None
    means 1/sqrt(Dk)), the op's own checks."""
    spec = SPECS[op]
    o = dict(options)
    if "causal" in o and not isinstance(o["causal"], (bool, np.bool_)):
        raise TypeError(f"{op}_attention: 'causal' must be True or False, got {o['causal']!r}")
    if spec.check is not None:
        spec.check(o, Dk)
    if spec.causal_only and not o.pop("causal", True):
        raise ValueError(f"{op}_attention: causal=False is not supported; {spec.title} is always causal "
                         f"({spec.causal_only})")
    if "scale" in o:
        try:
            o["scale"] = float(o["scale"])
        except (TypeError, ValueError):
            raise TypeError(f"{op}_attention: 'scale' must be a number, got {o['scale']!r}") from None
    return o


def _softmax_check(o: dict, Dk: int) -> None:
    if o.get("scale") is None:
        o["scale"] = 1.0 / math.sqrt(Dk)


def _linear_check(o: dict, Dk: int) -> None:
    if o["feature_map"] not in FEATURE_MAPS:
        raise ValueError(f"linear_attention: unknown feature_map {o['feature_map']!r}; "
                         f"expected one of {FEATURE_MAPS}")
    o["normalize"] = bool(o["normalize"])
    o["eps"] = float(o["eps"])
    if not o["eps"] >= 0:
        raise ValueError(f"linear_attention: 'eps' must be >= 0, got {o['eps']}")


# ----------------------------------------------------------------------------- random inputs
# Never zeros (they hide unwritten outputs and wrong indexing).  q, k, v are drawn N(0, 1) first, in that
# order, by inputs.random_inputs; each op's generator shapes them and draws its other arrays.
def _scaled(q, k):
    d = math.sqrt(q.shape[-1])
    return q / d, k / d


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax_inputs(rng, q, k, v):
    return q, k, v


def _linear_inputs(rng, q, k, v, feature_map="identity"):
    if feature_map != "identity":
        q, k = q + 0.5, k + 0.5          # keep features mostly positive so normalisation is well posed
    return (*_scaled(q, k), v)


LOG_DECAY_RANGE = (-1.0, -0.01)      # the decayed op's random log decays (bench, kernels, the first check cell)


def _decayed_inputs(rng, q, k, v, log_decay_range=LOG_DECAY_RANGE):
    lo, hi = log_decay_range
    return (*_scaled(q, k), v, rng.uniform(lo, hi, q.shape[:-1]))


def _zeros_inputs(rng, q, k, v, n_gates=2):
    """q and k of unit length, as the layer normalises them before the op."""
    return _unit(q), _unit(k), v, rng.standard_normal(q.shape[:-1]), rng.standard_normal(q.shape[:-1] + (n_gates,))


# ----------------------------------------------------------------------------- the table
SPECS = {s.name: s for s in (
    OpSpec("softmax", "softmax attention", (Q, K, V), dict(causal=True, scale=None),
           _softmax_inputs, features=("packed",), check=_softmax_check),
    OpSpec("linear", "linear attention", (Q, K, V),
           dict(causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6),
           _linear_inputs, input_args=("feature_map",),
           choices=dict(feature_map=FEATURE_MAPS, normalize=(False, True)),
           linear_states=1, scaled_qk=True, check=_linear_check,
           check_cells=(("identity", dict(feature_map="identity", normalize=False)),
                        ("elu1,norm", dict(feature_map="elu1", normalize=True)),
                        ("relu,norm", dict(feature_map="relu", normalize=True)),
                        ("elu1", dict(feature_map="elu1", normalize=False))), quick_cells=2),
    OpSpec("decayed", "decayed attention", (Q, K, V, Array("log_decay", ("T",), nonpositive=True)),
           dict(scale=1.0, causal=True), _decayed_inputs, input_args=("log_decay_range",),
           causal_only="the decay runs forward in time", linear_states=1, scaled_qk=True,
           check_cells=(("g in [-1,0)", dict(log_decay_range=LOG_DECAY_RANGE)),
                        ("g in [-30,0]", dict(log_decay_range=(-30.0, 0.0)))), quick_cells=1),
    OpSpec("zeros", "ZeroS attention", (Q, K, V, Array("s", ("T",)), Array("gates", ("T", "G"))),
           dict(causal=True), _zeros_inputs, input_args=("n_gates",), linear_states=3,
           check_cells=(("2 gates", dict(n_gates=2)), ("3 gates", dict(n_gates=3))), quick_cells=2),
)}

OPS = tuple(SPECS)                                                  # the ops, in the order every table lists them
ARRAY_ARGS = {name: s.array_names for name, s in SPECS.items()}     # op -> its array arguments, in order
STATE_OPS = tuple(op for op in OPS if SPECS[op].linear_states)     # ops with a recurrent state (steps, decode)


def spec(op: str) -> OpSpec:
    """The op's spec; ValueError naming the known ops for anything else."""
    try:
        return SPECS[op]
    except (KeyError, TypeError):
        raise ValueError(f"unknown op {op!r}; available: {', '.join(OPS)}") from None
