"""Correctness sweep: every registered variant against the float64 explicit NumPy reference, and that reference
against finite differences.

A *cell* is (op, variant, shape, dtype, options).  For each cell the inputs are drawn fresh, the variant's
forward and backward run through the public API (``vjp``), and the relative error
``||x - ref|| / ||ref||`` of the output and of every gradient is compared with the variant's tolerance for
that dtype (``registry.Variant.tolerance``: declared per variant from its measured error, at most the dtype's
``registry.TOLERANCE``; docs/spec.md section 4).  Inputs are rounded to float16-representable values first, so every dtype computes
the same function of the same inputs and one float64 reference serves them all.

Variants that declare the optional features of ``registry.FEATURES`` get more cells (labels ``+state``,
``+packed``, ``+state+packed``): an initial state in, the final state out and its gradient back in
(``state``), sequences packed into T with ``inputs.packed_lengths`` (lengths 1, 63, 64, 65, ...;
``packed``); the errors then include the final state's fields (``final.S``, ...) and the initial state's
gradient (``dinit.S``, ...).

The explicit reference (``numpy:explicit``) is the reference row, never compared with itself.  It is checked
on its own, every run, by *finite-difference cells*: per op and option, at one small shape, every element of
its hand-derived gradients against float64 central differences of its forward.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from . import backends, registry
from .inputs import default_options, numpy_dtype, packed_lengths, random_inputs, random_state
from .opspec import SPECS, spec
from .ops import PUBLIC_OPS, vjp
from .state import fields, map_state, state_dtype

REFERENCE = "numpy:explicit"        # what every cell is compared with


@dataclass(frozen=True)
class Shape:
    lead: tuple
    T: int
    Dk: int
    Dv: int

    def __str__(self):
        return f"{'x'.join(map(str, self.lead))}x{self.T}x{self.Dk}" + (f"/{self.Dv}" if self.Dv != self.Dk else "")


# ----------------------------------------------------------------------------- the sweep, as data
# Finite-difference cells: one small shape, central differences with step FD_STEP in float64 (truncation
# error ~ h^2 times the third derivative, rounding ~ 1e-16 |f| / h: both ~1e-10 relative), pass at FD_TOLERANCE.
FD_SHAPE = Shape((2,), 6, 3, 4)
FD_STEP = 1e-5
FD_TOLERANCE = 1e-6

SHAPES = {
    # CPU: NumPy references (default sweep must finish in well under a minute on 2 cores)
    "cpu": [Shape((2,), 1, 8, 8), Shape((2, 3), 37, 5, 7), Shape((2,), 130, 16, 16), Shape((1,), 257, 32, 24)],
    "cpu-quick": [Shape((2,), 1, 8, 8), Shape((2, 3), 37, 5, 7)],
    # Numba's CUDA simulator runs every thread in Python: tiny shapes only
    "simulator": [Shape((2,), 1, 4, 4), Shape((2,), 19, 4, 6)],
    "simulator-quick": [Shape((1,), 19, 4, 6)],
    # a real GPU (T = 1, 127, 1024, 4097; head dims 32, 64, 80, 128; several leading dims)
    "gpu": [Shape((2,), 1, 64, 64), Shape((2, 2), 127, 64, 64), Shape((1, 2), 1024, 64, 64),
            Shape((1,), 4097, 64, 64), Shape((2,), 127, 128, 128), Shape((1,), 1024, 128, 128),
            Shape((2,), 127, 32, 32), Shape((2,), 127, 80, 80), Shape((2, 3), 67, 16, 24)],
    "gpu-quick": [Shape((2,), 1, 64, 64), Shape((2, 2), 127, 64, 64), Shape((2,), 127, 80, 80)],
}


def option_grid(op: str, quick: bool) -> list:
    """Extra options (beyond causal) swept per op: (label, options-for-the-op and input arguments); the op
    table's ``check_cells`` (workbench/opspec.py)."""
    return SPECS[op].cells(quick)


def causal_values(op: str) -> tuple:
    return SPECS[op].causal_values


# State and packing cells: (label suffix, flags).  state: an initial state in, the final state out and its
# gradient back in (causal only); packed: cu_seqlens from inputs.packed_lengths(T).
FEATURE_GRID = [("+state", dict(state=True)), ("+packed", dict(packed=True)),
                ("+state+packed", dict(state=True, packed=True))]


def feature_grid(variant: registry.Variant, causal: bool, quick: bool) -> list:
    """The feature cells a variant gets for one causal value: every applicable combination, or with
    ``quick`` only the most inclusive one.  They run over the op's quick option grid."""
    grid = [(label, flags) for label, flags in FEATURE_GRID
            if all(f in variant.features for f in flags) and (causal or not flags.get("state"))]
    return grid[-1:] if quick else grid


def shapes_for(variant: registry.Variant, quick: bool, full: bool) -> list:
    if variant.backend == "numba" and backends.numba_simulator():
        return SHAPES["simulator-quick" if quick else "simulator"]
    if variant.gpu:
        return SHAPES["gpu-quick" if quick else "gpu"]
    if full:
        return SHAPES["cpu"] + [s for s in SHAPES["gpu"] if s.T <= 1024]
    return SHAPES["cpu-quick" if quick else "cpu"]


def dtypes_for(variant: registry.Variant) -> list:
    """float32 and float64 for NumPy; float32 and float16 (and float64 where supported) for GPU kernels."""
    if variant.gpu:
        return [d for d in ("float32", "float16", "bfloat16", "float64") if d in variant.dtypes]
    return [d for d in ("float32", "float64") if d in variant.dtypes]


# ----------------------------------------------------------------------------- one cell
def rel_error(x, ref) -> float:
    x = np.asarray(x, dtype=np.float64)
    den = np.linalg.norm(ref)
    num = np.linalg.norm(x - ref)
    if not np.isfinite(num):
        return float("nan")
    return float(num / den) if den > 0 else float(num)


def _split_input_options(op: str, extra: dict) -> tuple:
    """(input-generator arguments, op options) of a cell's options; an option of both (feature_map) is in
    both."""
    sp = SPECS[op]
    input_kw = {k: extra[k] for k in sp.input_args if k in extra}
    return input_kw, {k: x for k, x in extra.items() if k not in input_kw or k in sp.options}


_REF_CACHE: dict = {}


def _reference(op, cin):
    """Float64 explicit reference (out, grads) of a cell, cached per cell key (shared by variants and dtypes)."""
    if cin.key not in _REF_CACHE:
        if len(_REF_CACHE) > 64:
            _REF_CACHE.clear()
        out, pb = vjp(PUBLIC_OPS[op], *cin.arrays, backend=REFERENCE, **cin.options, **cin.extras())
        _REF_CACHE[cin.key] = (out, pb(cin.dout, *([cin.dstate] if cin.dstate is not None else [])))
    return _REF_CACHE[cin.key]


@dataclass(frozen=True)
class CellInputs:
    """The float64 inputs of one cell (rounded to float16-representable values), its ``dout`` and the public
    op's options; ``key`` identifies them (the reference cache's key).  State cells: an initial state and the
    final state's gradient ``dstate`` (float64, float16-representable); packed cells: ``cu_seqlens``."""
    arrays: tuple
    dout: np.ndarray
    options: dict
    key: tuple
    initial_state: object = None
    dstate: object = None
    cu_seqlens: tuple = None

    def extras(self, dtype: str = "float64") -> dict:
        """The public op's state and packing keywords, the state in the state dtype of ``dtype``."""
        out = {}
        if self.initial_state is not None:
            out.update(initial_state=_cast_state(self.initial_state, dtype), return_state=True)
        if self.cu_seqlens is not None:
            out["cu_seqlens"] = self.cu_seqlens
        return out


def _cast_state(st, dtype: str):
    sdt = state_dtype(dtype)
    return map_state(lambda a: a.astype(sdt), st)


def cell_inputs(op: str, lead=(2,), T=16, Dk=8, Dv=None, options=None, seed=0, n_gates=2, log_decay_range=None,
                causal=None, state=False, packed=False) -> CellInputs:
    """``options`` are the public op's keyword options (defaults filled in); ``causal`` overrides options'."""
    Dv = Dk if Dv is None else Dv
    options = dict(options or {})
    if causal is not None:
        options["causal"] = causal
    opts = default_options(op, **options)           # a causal-only op's options hold no causal
    input_kw = dict(n_gates=n_gates, feature_map=opts.get("feature_map", "identity"))
    if log_decay_range is not None:
        input_kw["log_decay_range"] = log_decay_range
    arrays64 = tuple(_half_exact(a) for a in random_inputs(op, lead, T, Dk, Dv, "float64", seed, **input_kw))
    rng = np.random.default_rng(seed + 7919)
    dout64 = _half_exact(rng.standard_normal((*lead, T, Dv)))
    cu = packed_lengths(T) if packed else None
    init = dstate = None
    if state:
        slead = (*lead, len(cu) - 1) if packed else tuple(lead)
        normalize = bool(opts.get("normalize", False))
        init = map_state(_half_exact, random_state(op, slead, Dk, Dv, seed=seed, normalize=normalize))
        dstate = map_state(lambda a: _half_exact(rng.standard_normal(a.shape)), init)
    key = (op, tuple(lead), T, Dk, Dv, seed, json.dumps(opts, sort_keys=True, default=str),
           json.dumps(input_kw, sort_keys=True, default=str), bool(state), bool(packed))
    return CellInputs(arrays64, dout64, opts, key, init, dstate, cu)


def _half_exact(a):
    """float64 values that float16 (and so float32 and float64) represents exactly; bfloat16 (8 significant
    bits) does not: ``_as_seen``."""
    return a.astype(np.float16).astype(np.float64)


def _as_seen(cin: CellInputs, cast, dtype: str) -> CellInputs:
    """The cell's inputs as a variant run in ``dtype`` receives them: the arrays and ``dout`` rounded through
    ``cast`` (bfloat16 rounds float16's 11 significant bits to 8), so the reference is computed on the very
    inputs the variant gets and the errors measure the variant, not the input rounding (a sum with
    cancellation, like ZeroS's P = P0 + sum s, would otherwise show the rounding many times magnified).
    ``cin`` itself when ``dtype`` represents them exactly.  The state is float32 (``state_dtype``): exact."""
    seen = tuple(_to_float64(cast(a)) for a in cin.arrays)
    dout = _to_float64(cast(cin.dout))
    if all(np.array_equal(x, a) for x, a in zip(seen, cin.arrays)) and np.array_equal(dout, cin.dout):
        return cin
    return dataclasses.replace(cin, arrays=seen, dout=dout, key=cin.key + (dtype,))


def _variant(op: str, backend_key: str, dtype: str) -> registry.Variant:
    backend, _, name = backend_key.partition(":")
    return registry.get(op, backend, name or None, dtype=dtype)


def _named(op: str, out, grads, has_state: bool) -> dict:
    """name -> array of a cell's results: out, final.<field> (state cells), d<arg>, dinit.<field>."""
    o, final = out if has_state else (out, None)
    res = {"out": o}
    if final is not None:
        res.update({f"final.{n}": x for n, x in fields(final).items()})
    res.update(dict(zip(SPECS[op].gradients, grads)))
    if has_state:
        res.update({f"dinit.{n}": x for n, x in fields(grads[-1]).items()})
    return res


def compare(op: str, backend_key: str, lead=(2,), T=16, Dk=8, Dv=None, dtype="float32", options=None, seed=0,
            n_gates=2, log_decay_range=None, causal=None, state=False, packed=False) -> dict:
    """Relative errors of one variant on one cell against the float64 explicit reference.

    Returns ``{"out": e, "dq": e, ..., "tol": tol, "ok": bool, "seconds": s}``, tol the variant's tolerance
    for ``dtype`` (state cells add ``final.<field>`` and ``dinit.<field>``).  ``options`` are the public op's
    keyword options (defaults filled in); ``causal`` overrides options'.  ``state``: an initial state in, the
    final state out and its gradient back; ``packed``: sequences packed with ``inputs.packed_lengths(T)``.
    """
    cast = _caster(dtype)
    cin = _as_seen(cell_inputs(op, lead, T, Dk, Dv, options, seed, n_gates, log_decay_range, causal, state, packed),
                   cast, dtype)
    ref_out, ref_grads = _reference(op, cin)

    t0 = time.perf_counter()
    with backends.poisoned():          # unwritten output elements show up as NaN
        out, pullback = vjp(PUBLIC_OPS[op], *[cast(a) for a in cin.arrays], backend=backend_key, **cin.options,
                            **cin.extras(dtype))
        grads = pullback(cast(cin.dout), *([_cast_state(cin.dstate, dtype)] if state else []))
    seconds = time.perf_counter() - t0
    ref = _named(op, ref_out, ref_grads, state)
    got = _named(op, out, grads, state)
    if got.keys() != ref.keys():
        raise ValueError(f"{backend_key} returned {sorted(got)}; the reference returns {sorted(ref)}")
    errors = {n: rel_error(_to_float64(got[n]), ref[n]) for n in ref}
    tol = _variant(op, backend_key, dtype).tolerance(dtype)
    over = [n for n, e in errors.items() if not e <= tol]
    floors = rounding_floors(op, cin, dtype, over) if over else {}
    ok = all(e <= tol or e <= FLOOR_FACTOR * floors.get(n, np.nan) for n, e in errors.items())  # NaN: fails
    return dict(errors, tol=tol, ok=bool(ok), seconds=seconds, floors=floors)


# ----------------------------------------------------------------------------- ill-conditioned outputs
# A 16-bit variant rounds its intermediates to the dtype's unit roundoff (UNIT_ROUNDOFF).  Some outputs move
# far more than that when their inputs move by it: a gradient that is a sum with cancellation, like ZeroS's
# d init.E (terms of both signs, each scaled by e^{m0 - m_t}), can change by 100% in the float64 reference
# itself under bfloat16-sized input noise.  No bfloat16 kernel can be judged on such an output below that
# level, so an output over the tolerance is measured against its *rounding floor*: the relative change of the
# float64 reference when every input array and ``dout`` is multiplied by (1 + u r), r uniform in [-1, 1], u the
# dtype's unit roundoff (the worst of FLOOR_DRAWS draws).  It passes at FLOOR_FACTOR times its floor (the
# factor the tolerances take over measured errors), and the cell reports the floor (``Cell.floors``), so the
# sweep says which outputs passed this way.  Only outputs over the tolerance are measured (nothing is spent on
# passing cells); float32 and float64 have no floor (their roundoff is far below every tolerance).
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
FLOOR_FACTOR = 4
FLOOR_DRAWS = 2


def rounding_floors(op: str, cin: "CellInputs", dtype: str, names) -> dict:
    """name -> the float64 reference's relative change under input noise of ``dtype``'s unit roundoff, for
    ``names`` (outputs as ``_named`` names them); {} for dtypes without a floor (``UNIT_ROUNDOFF``)."""
    u = UNIT_ROUNDOFF.get(dtype)
    if u is None:
        return {}
    state = cin.initial_state is not None
    ref = _named(op, *_reference(op, cin), state)
    rng = np.random.default_rng(zlib.crc32(repr(cin.key).encode()))
    floors = {n: 0.0 for n in names}
    for draw in range(FLOOR_DRAWS):
        def jiggle(a):
            return a * (1 + u * rng.uniform(-1.0, 1.0, np.shape(a)))
        moved = dataclasses.replace(cin, arrays=tuple(jiggle(a) for a in cin.arrays), dout=jiggle(cin.dout),
                                    key=cin.key + ("rounding floor", draw))
        got = _named(op, *_reference(op, moved), state)
        for n in names:
            floors[n] = max(floors[n], rel_error(got[n], ref[n]))
    return floors


def finite_differences(op: str, lead=FD_SHAPE.lead, T=FD_SHAPE.T, Dk=FD_SHAPE.Dk, Dv=FD_SHAPE.Dv, options=None,
                       seed=0, n_gates=2, log_decay_range=None, causal=None, step=FD_STEP, state=False,
                       packed=False) -> dict:
    """Relative errors of the explicit reference's gradients against float64 central differences.

    With ``f(x) = sum(out(x) * dout)`` (state cells: plus ``<final state, dstate>`` over its fields), every
    element j of every array argument x (and of every field of the initial state) gets
    ``(f(x + h e_j) - f(x - h e_j)) / 2h``; all perturbed copies of one argument run as one batched call of
    the reference's forward (a leading dim of 2 x size(x) independent problems).  Returns
    ``{"dq": e, ..., "tol": FD_TOLERANCE, "ok": bool, "seconds": s}`` (state cells add ``dinit.<field>``).
    """
    cin = cell_inputs(op, lead, T, Dk, Dv, options, seed, n_gates, log_decay_range, causal, state, packed)
    fn = PUBLIC_OPS[op]
    t0 = time.perf_counter()
    _, pullback = vjp(fn, *cin.arrays, backend=REFERENCE, **cin.options, **cin.extras())
    grads = pullback(cin.dout, *([cin.dstate] if state else []))
    targets = [(n, grads[i], i, None) for i, n in enumerate(SPECS[op].gradients)]
    if state:
        targets += [(f"dinit.{n}", x, None, n) for n, x in fields(grads[-1]).items()]
    errors = {}
    for label, grad, i, field_name in targets:
        x = cin.arrays[i] if i is not None else getattr(cin.initial_state, field_name)
        m = x.size
        steps = step * np.eye(m).reshape((m,) + x.shape)
        batch = [np.broadcast_to(a, (2 * m,) + a.shape) for a in cin.arrays]
        extras = cin.extras()
        if state:
            extras["initial_state"] = map_state(lambda a: np.broadcast_to(a, (2 * m,) + a.shape), cin.initial_state)
        plus_minus = np.concatenate([x + steps, x - steps])
        if i is not None:
            batch[i] = plus_minus
        else:
            extras["initial_state"] = dataclasses.replace(extras["initial_state"], **{field_name: plus_minus})
        res = fn(*batch, backend=REFERENCE, **cin.options, **extras)
        o, final = res if state else (res, None)
        f = (o * cin.dout).reshape(2 * m, -1).sum(-1)
        if state:
            for n, y in fields(final).items():
                f = f + (y * getattr(cin.dstate, n)).reshape(2 * m, -1).sum(-1)
        errors[label] = rel_error(grad, ((f[:m] - f[m:]) / (2 * step)).reshape(x.shape))
    ok = all(e <= FD_TOLERANCE for e in errors.values())
    return dict(errors, tol=FD_TOLERANCE, ok=bool(ok), seconds=time.perf_counter() - t0)


def _caster(dtype: str):
    dt = numpy_dtype(dtype)
    return lambda a: a.astype(dt)


def _to_float64(x):
    if not isinstance(x, np.ndarray):
        x = x.get()
    return x.astype(np.float64)


# ----------------------------------------------------------------------------- the sweep
@dataclass
class Cell:
    op: str
    variant: str
    shape: str
    dtype: str
    causal: bool
    options: str
    # "compare": the variant against the reference; "fd": the reference's gradients against finite differences
    kind: str = "compare"
    errors: dict = field(default_factory=dict)
    tol: float = 0.0
    ok: bool = False
    error: str = ""
    seconds: float = 0.0
    # outputs over the tolerance -> their rounding floor (rounding_floors); such an output passed if its
    # error is at most FLOOR_FACTOR times its floor
    floors: dict = field(default_factory=dict)


def select_variants(ops=(), backends_=()) -> tuple:
    """(variants to check, notes about skipped ones).  Default: every variant whose backend is usable here.
    A backend named explicitly must be usable: otherwise BackendUnavailable, naming why."""
    for op in ops:
        spec(op)                        # ValueError naming the known ops
    known = set(registry.BACKENDS) | {v.key for v in registry.variants()}
    backends_ = tuple(registry.canonical_key(b) for b in backends_)
    for b in backends_:
        if b not in known:
            raise ValueError(f"unknown backend or variant {b!r}; available: {', '.join(sorted(known))}")
    chosen, notes = [], []
    for v in registry.variants():
        if (ops and v.op not in ops) or (backends_ and not any(b in (v.backend, v.key) for b in backends_)):
            continue
        usable, why = backends.status(v.backend)
        if not usable:
            if backends_:
                raise backends.BackendUnavailable(f"backend {v.backend!r} cannot run here: {why}")
            notes.append(f"skipped {v.op} {v.key}: {why}")
            continue
        chosen.append(v)
    if backends_ and not chosen:
        raise ValueError(f"no registered variant matches backend {', '.join(backends_)}"
                         + (f" for op {', '.join(ops)}" if ops else "")
                         + f"; registered: {', '.join(sorted(known))}")
    return chosen, notes


def plan(ops=(), backends_=(), quick=False, full=False, dtypes=()) -> tuple:
    """(cells, notes); a cell is (variant, shape, dtype, causal, option label, options, kind).  Per op: the
    reference's finite-difference cells first (every option, quick or not, whatever the dtypes asked for: they
    cost milliseconds and every cell rests on the reference), then every chosen variant but the reference
    against it.  No cells when nothing but the
    finite differences would run and the reference itself was not chosen."""
    variants, notes = select_variants(ops, backends_)
    cells, fd, refused = [], [], {}
    for op in dict.fromkeys(v.op for v in variants):
        reference = _variant(op, REFERENCE, "float64")
        fd += [(reference, FD_SHAPE, "float64", causal, label, extra, "fd")
               for causal in causal_values(op) for label, extra in option_grid(op, quick=False)]
        fd += [(reference, FD_SHAPE, "float64", causal, f"{label} {suffix}".strip(), dict(extra, **flags), "fd")
               for causal in causal_values(op) for label, extra in option_grid(op, quick=True)
               for suffix, flags in feature_grid(reference, causal, quick=False)]
    for v in variants:
        if v.key == REFERENCE:
            continue
        for shape in shapes_for(v, quick, full):
            for dtype in ([d for d in dtypes if d in v.dtypes] if dtypes else dtypes_for(v)):
                for causal in causal_values(v.op):
                    grid = option_grid(v.op, quick) + [
                        (f"{label} {suffix}".strip(), dict(extra, **flags))
                        for label, extra in option_grid(v.op, quick=True)
                        for suffix, flags in feature_grid(v, causal, quick)]
                    for label, extra in grid:
                        if extra.get("normalize") and shape.T < 2:
                            # o = A v / (A + eps) at T=1: dq, dk vanish up to eps, relative error is noise
                            continue
                        why = v.unsupported_reason(dict(extra, causal=causal), spec(v.op).shapes(
                            tuple(shape.lead), shape.T, shape.Dk, shape.Dv if shape.Dv is not None else shape.Dk))
                        if why:                  # the op refuses these inputs for this variant: nothing to check
                            refused[why] = refused.get(why, 0) + 1
                            continue
                        cells.append((v, shape, dtype, causal, label, extra, "compare"))
    notes += [f"not checked: {n} cell(s) the variant refuses: {why}" for why, n in refused.items()]
    if not cells and not any(v.key == REFERENCE for v in variants):
        return [], notes
    return sorted(fd + cells, key=lambda c: c[0].op), notes        # stable: per op, fd cells first


def cell_options(label: str, kind: str) -> str:
    """A cell's options column (Cell.options) from its plan label and kind."""
    return "finite differences" + (f", {label}" if label else "") if kind == "fd" else label


def cell_identity(op, variant, shape, dtype, causal, options, kind) -> tuple:
    """What names one cell across runs (a planned cell and a cell read back from a check JSON alike): op, variant
    key, shape text, dtype, causal, options text, kind."""
    return (str(op), str(variant), str(shape), str(dtype), bool(causal), str(options), str(kind))


def json_cell_identity(c: dict) -> tuple:
    """``cell_identity`` of a cell as a check JSON holds it (``asdict(Cell)``)."""
    return cell_identity(c["op"], c["variant"], c["shape"], c["dtype"], c["causal"], c["options"],
                         c.get("kind", "compare"))


def _planned_identity(c) -> tuple:
    v, shape, dtype, causal, label, _extra, kind = c
    return cell_identity(v.op, v.key, shape, dtype, causal, cell_options(label, kind), kind)


def passed_in(paths, seed: int) -> tuple:
    """(identities, counts): the cells that passed in earlier check JSON files (``--skip-passed``) and how many
    each file gave.  A file written with another seed (its inputs were other random draws) is refused; files
    written before the JSON recorded its seed count as seed 0 (the default)."""
    found, counts = set(), {}
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"--skip-passed {path}: not a readable check JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
            raise ValueError(f"--skip-passed {path}: not a check JSON (no 'cells' list)")
        if data.get("seed", 0) != seed:
            raise ValueError(f"--skip-passed {path}: written with --seed {data.get('seed')}, this sweep runs "
                             f"--seed {seed} (expected the same seed)")
        ids = {json_cell_identity(c) for c in data["cells"] if c.get("ok") and not c.get("error")}
        counts[str(path)] = len(ids)
        found |= ids
    return found, counts


def run_cell(v, shape, dtype, causal, label, extra, kind="compare", seed=0) -> Cell:
    fd = kind == "fd"
    cell = Cell(v.op, v.key, str(shape), dtype, causal, cell_options(label, kind), kind,
                tol=FD_TOLERANCE if fd else v.tolerance(dtype))
    kw = dict(extra)
    n_gates = kw.pop("n_gates", 2)
    ldr = kw.pop("log_decay_range", None)
    flags = dict(state=kw.pop("state", False), packed=kw.pop("packed", False))
    try:
        if fd:
            res = finite_differences(v.op, shape.lead, shape.T, shape.Dk, shape.Dv, options=kw, seed=seed,
                                     n_gates=n_gates, log_decay_range=ldr, causal=causal, **flags)
        else:
            res = compare(v.op, v.key, shape.lead, shape.T, shape.Dk, shape.Dv, dtype, options=kw, seed=seed,
                          n_gates=n_gates, log_decay_range=ldr, causal=causal, **flags)
        cell.tol, cell.ok, cell.seconds = res.pop("tol"), res.pop("ok"), res.pop("seconds")
        cell.floors = res.pop("floors", {})
        cell.errors = res
    except Exception as e:              # a crash is a failing cell, reported, not a dead sweep
        cell.error = f"{type(e).__name__}: {e}"
    return cell


def _run_group(keys_and_cells, seed) -> list:
    """Worker side of ``jobs > 1``: cells name their variant by (op, key) (Variant objects hold closures)."""
    registry.load_all()
    out = []
    for op, key, shape, dtype, causal, label, extra, kind in keys_and_cells:
        backend, name = key.split(":")
        out.append(run_cell(registry.get(op, backend, name), shape, dtype, causal, label, extra, kind, seed))
    return out


class _Progress:
    """The sweep's progress: a bar on a terminal.  Without one (a log file, a GPU batch job; the bar is off) a
    line per finished group, and each failed cell at once, so a sweep cut short by a time limit still says
    how far it got and what failed."""

    def __init__(self, bar, total: int):
        self.bar, self.total, self.done, self.failed = bar, total, 0, 0

    def advance(self, cells: list) -> None:
        self.bar.update(len(cells))
        self.done += len(cells)
        self.failed += sum(not c.ok for c in cells)
        if not self.bar.disable:
            return
        for c in cells:
            if not c.ok:
                print(f"check: FAIL {c.op} {c.variant} {c.shape} {c.dtype} {'causal' if c.causal else 'full'} "
                      f"{c.options}: {_verdict(c)} {c.errors}", file=sys.stderr, flush=True)
        print(f"check: {self.done}/{self.total} cells, {self.failed} failed", file=sys.stderr, flush=True)


def _run_parallel(cells, seed, jobs, progress: _Progress, deadline=None) -> list:
    """Run cells in ``jobs`` processes (spawned: CUDA contexts do not survive fork).  Cells that share a
    variant, head dims and dtype go to one process, so each JIT/NVRTC compilation happens once; on a GPU
    machine the compiles, not the kernels, dominate the sweep's time.  At ``deadline`` (``time.monotonic()``)
    the groups not finished are dropped and the workers stopped: their cells stay ``None``."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    import multiprocessing as mp
    groups: dict = {}
    for i, (v, shape, dtype, causal, label, extra, kind) in enumerate(cells):
        groups.setdefault((v.key, v.op, shape.Dk, shape.Dv, dtype), []).append(
            (i, (v.op, v.key, shape, dtype, causal, label, extra, kind)))
    results = [None] * len(cells)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
    try:
        futures = {pool.submit(_run_group, [c for _, c in g], seed): [i for i, _ in g]
                   for g in sorted(groups.values(), key=len, reverse=True)}
        pending = set(futures)
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            finished, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
            for fut in finished:
                done = fut.result()
                for i, cell in zip(futures[fut], done):
                    results[i] = cell
                progress.advance(done)
    finally:
        if any(r is None for r in results):         # cut short: stop the workers still compiling or running
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
        else:
            pool.shutdown()
    return results


def run_check(ops=(), backends=(), quick=False, full=False, dtypes=(), json_path=None, seed=0, echo=print,
              jobs=1, time_limit=None, skip_passed=()):
    """Run the sweep; ``jobs`` > 1 runs cell groups in that many processes (0: one per CPU core).  With
    ``time_limit`` (seconds) no cell starts after that long (with jobs > 1 the unfinished groups are stopped):
    the table, the totals and the JSON then hold the cells that ran and count the rest as not run, and the
    sweep fails (an incomplete sweep is not a pass).  ``skip_passed``: earlier check JSON files (same seed) whose
    passed cells are not run again -- a sweep cut by its time limit continues where it stopped; the summary and
    the JSON count them as skipped.  Returns True when every planned cell passed, here or in those files."""
    import os

    from tabulate import tabulate
    from tqdm import tqdm

    cells, notes = plan(ops, backends, quick, full, dtypes)
    for n in notes:
        echo(n)
    if not cells:
        echo("nothing to check")
        return False
    planned, skipped = len(cells), 0
    if skip_passed:
        done, counts = passed_in(skip_passed, seed)
        cells = [c for c in cells if _planned_identity(c) not in done]
        skipped = planned - len(cells)
        echo(f"skipped {skipped} of {planned} planned cells: passed in "
             + ", ".join(f"{p} ({n} passed cells)" for p, n in counts.items()))
        if not cells:
            echo(f"all {planned} planned cells passed in the files given; nothing left to run")
            if json_path:
                _write_json(json_path, planned, 0, [], seed, skipped, skip_passed)
            return True
    jobs = (os.cpu_count() or 1) if jobs == 0 else int(jobs)
    with tqdm(total=len(cells), desc="check", unit="cell", file=sys.stderr, disable=None) as bar:
        progress = _Progress(bar, len(cells))
        deadline = None if time_limit is None else time.monotonic() + float(time_limit)
        if jobs > 1:
            results = _run_parallel(cells, seed, jobs, progress, deadline)
        else:
            results = []
            for args in cells:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                results.append(run_cell(*args, seed=seed))
                progress.advance(results[-1:])
    not_run = len(cells) - sum(r is not None for r in results)
    results = [r for r in results if r is not None]
    rows = []
    for c in results:
        if not rows or rows[-1][0] != c.op:          # the op's reference row: what its cells are compared with
            rows.append([c.op, REFERENCE, "", "float64", "", "", "", "", "", "reference"])
        grads = {k: e for k, e in c.errors.items() if k != "out"}
        worst = max(grads, key=lambda k: (np.nan_to_num(grads[k], nan=np.inf))) if grads else ""
        rows.append([c.op, c.variant, c.shape, c.dtype, "causal" if c.causal else "full", c.options,
                     _fmt(c.errors.get("out")), f"{_fmt(grads.get(worst))} ({worst})" if worst else "",
                     f"{c.tol:.0e}" if c.tol else "", _verdict(c)])
    echo(tabulate(rows, headers=["op", "variant", "shape", "dtype", "mask", "options", "out err",
                                 "worst grad err", "tol", "result"], disable_numparse=True))
    n_fail = sum(not c.ok for c in results)
    n_fd = sum(c.kind == "fd" for c in results)
    n_floor = sum(bool(c.ok and c.floors) for c in results)
    if n_floor:
        echo(f"\n{n_floor} cell(s) passed with outputs over the tolerance but within {FLOOR_FACTOR}x their rounding "
             "floor (ill-conditioned outputs: the float64 reference itself moves that much under the dtype's "
             "input rounding; 'floor' in the table, rounding_floors)")
    echo(f"\n{len(results) - n_fail} passed, {n_fail} failed ({len(results)} cells: {len(results) - n_fd} "
         f"against the reference {REFERENCE}, {n_fd} of its gradients against finite differences)")
    if skipped:
        echo(f"{skipped} cell(s) skipped: passed in {', '.join(map(str, skip_passed))}")
    if not_run:
        echo(f"NOT RUN: {not_run} of {planned} cells (the time limit of {time_limit:g} s ran out): "
             "the sweep is incomplete" + (" (rerun with --skip-passed and this run's JSON to continue)"
                                          if json_path else ""))
    if json_path:
        _write_json(json_path, planned, not_run, results, seed, skipped, skip_passed)
        echo(f"wrote {json_path}")
    return n_fail == 0 and not_run == 0


def _write_json(path, planned, not_run, results, seed, skipped, skip_passed) -> None:
    with open(path, "w") as f:
        json.dump(dict(environment=environment(), reference=REFERENCE, seed=seed, planned=planned, not_run=not_run,
                       skipped=skipped, skipped_from=[str(p) for p in skip_passed],
                       cells=[asdict(c) for c in results]), f, indent=1, default=str)


def _verdict(c: Cell) -> str:
    if c.error:
        return "ERROR: " + c.error[:60]
    over = ", ".join(f"{n} {c.errors.get(n, float('nan')):.1e} floor {f:.1e}" for n, f in c.floors.items())
    return ("ok" if c.ok else "FAIL") + (f" ({over})" if over else "")


def _fmt(e):
    return "" if e is None else f"{e:.1e}"


# ----------------------------------------------------------------------------- info
def environment() -> dict:
    env = dict(python=platform.python_version(), numpy=np.__version__, machine=platform.machine())
    for name in ("numba", "cupy"):
        try:
            env[name] = __import__(name).__version__
        except Exception:
            env[name] = None
    env["backends"] = {b: backends.status(b)[1] for b in registry.BACKENDS}
    return env


def info_report() -> str:
    from tabulate import tabulate
    lines = ["Backends:"]
    for b in registry.BACKENDS:
        ok, why = backends.status(b)
        lines.append(f"  {b:6s} {'yes' if ok else 'no ':3s}  {why}")
    lines.append(f"GPU: {'yes' if backends.gpu_available() else 'no'}")
    env = environment()
    lines.append(f"Versions: python {env['python']}, numpy {env['numpy']}, numba {env['numba']}, "
                 f"cupy {env['cupy']}")
    rows = [[v.op, v.key + (" *" if v.default else ""), ",".join(v.dtypes),
             "yes" if backends.status(v.backend)[0] else "no", v.description] for v in registry.variants()]
    lines.append("\nRegistered variants (* = the backend's default):")
    lines.append(tabulate(rows, headers=["op", "variant", "dtypes", "usable here", "what it does"]))
    return "\n".join(lines)
