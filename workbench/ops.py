"""The public ops (docs/spec.md section 2): validation, backend choice, and ``vjp``.

Each public op checks its inputs, picks a registered variant, flattens the leading dims to one (unless the
variant takes them: ``registry.Variant.leading_dims``), calls ``variant.forward``, and reshapes the result
back where its shape differs.  ``vjp`` does the same and returns a pullback that calls
``variant.backward``.

The host path is planned once per call signature.  A ``_Plan`` -- the validated options, the variant, the
flat shapes the variant sees and the output shape -- is cached per (op, backend, type, dtype and shape of
every array, options); a later call with the same signature skips validation and variant choice and only
does what depends on the values: value checks (positive log decays), reshapes, and the copies a variant
needs (non-contiguous or byte-swapped inputs, NumPy <-> CuPy for variants of the other kind).

Input contract (every error names the op and the argument):
  * arrays: ``numpy.ndarray`` or ``cupy.ndarray``, all of one kind; ``numpy.matrix`` and masked arrays are
    refused (their semantics would be dropped silently);
  * dtypes: float16, float32 or float64 (bfloat16 where a backend takes it), all arrays alike; non-native
    byte order (``'>f4'`` on a little-endian machine) is accepted and converted (one copy per call);
  * ``log_decay <= 0`` (``-inf`` allowed: an exact reset of the state).  NumPy inputs are always checked;
    CuPy inputs only under ``backends.device_checked()`` / ``WORKBENCH_DEVICE_CHECKS=1``, because the check
    is a device reduction plus a host sync on every call;
  * the pullback's ``dout``: the output's kind, shape and dtype (no silent cast);
  * ``cu_seqlens`` (every op) and ``initial_state`` / ``return_state`` (linear, decayed, zeros; causal
    only): see workbench/state.py.  The state's fields have the leading dims (plus the sequence dim with
    cu_seqlens) and the state dtype (float32, float64 for float64 inputs); a variant must declare the
    feature (``registry.Variant.features``).  cu_seqlens as a tuple, list or NumPy array is cached with the
    plan; a CuPy array costs a device-to-host copy per call.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import operator
from dataclasses import dataclass

import numpy as np

from . import backends, registry
from . import state as _st
from .opspec import FEATURE_MAPS, N_GATES, SPECS, check_options  # noqa: F401  (FEATURE_MAPS: the ops' names)

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# Backends ``backend="auto"`` tries, per array kind, in order: NumPy arrays stay on the host; CuPy arrays get
# a CuPy kernel, or a Numba one (it takes CuPy arrays without a copy) for dtypes no CuPy kernel takes.
AUTO_BACKENDS = {"numpy": ("numpy",), "cupy": ("cupy", "numba")}
_MAX_PLANS = 4096


# ----------------------------------------------------------------------------- validation


def _check_kinds_and_dtypes(where: str, arrays: dict) -> tuple:
    """(array kind, dtype name) shared by every array, else a TypeError naming the argument."""
    kinds = {}
    for name, x in arrays.items():
        try:
            kinds[name] = backends.array_kind(x)
        except TypeError as e:
            raise TypeError(f"{where}: argument {name!r}: {e}") from None
    if len(set(kinds.values())) > 1:
        raise TypeError(f"{where}: mixed array kinds {kinds}; pass all NumPy or all CuPy arrays")
    dts = {name: backends.dtype_name(x.dtype) for name, x in arrays.items()}
    for name, dt in dts.items():
        if dt not in _FLOAT_DTYPES:
            raise TypeError(f"{where}: argument {name!r} has dtype {dt}; expected a floating dtype "
                            f"(float16, float32 or float64; bfloat16 on the backends that take it)")
    if len(set(dts.values())) > 1:
        raise TypeError(f"{where}: mixed dtypes {dts}; all arrays must share one dtype")
    return kinds["q"], dts["q"]


def _check_arrays(op: str, arrays: dict) -> tuple:
    """Validate shapes and dtypes; return (array kind, dtype name, leading shape, T, Dk, Dv)."""
    kind, dtype = _check_kinds_and_dtypes(f"{op}_attention", arrays)
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    if q.ndim < 2:
        raise ValueError(f"{op}_attention: argument 'q' must have shape (..., T, Dk), got {q.shape}")
    lead, T, Dk = q.shape[:-2], q.shape[-2], q.shape[-1]
    if k.shape != q.shape:
        raise ValueError(f"{op}_attention: argument 'k' must have shape {q.shape} (same as q: (..., T, Dk)), "
                         f"got {k.shape}")
    if v.ndim != q.ndim or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"{op}_attention: argument 'v' must have shape {(*lead, T, 'Dv')} "
                         f"((..., T, Dv) with q's leading dims and T), got {v.shape}")
    Dv = v.shape[-1]
    if T < 1 or Dk < 1 or Dv < 1:
        raise ValueError(f"{op}_attention: T, Dk and Dv must be >= 1, got q {q.shape}, v {v.shape}")
    for a in SPECS[op].arrays[3:]:               # per-token arrays after q, k, v (workbench/opspec.py)
        x = arrays[a.name]
        if a.dims == ("T",) and x.shape != (*lead, T):
            raise ValueError(f"{op}_attention: argument {a.name!r} must have shape {(*lead, T)} ((..., T)), "
                             f"got {x.shape}")
        if a.dims == ("T", "G") and (x.shape[:-1] != (*lead, T) or x.ndim != q.ndim or x.shape[-1] not in N_GATES):
            raise ValueError(f"{op}_attention: argument {a.name!r} must have shape "
                             f"{' or '.join(str((*lead, T, g)) for g in N_GATES)} "
                             f"((..., T, {'|'.join(map(str, N_GATES))})), got {x.shape}")
    return kind, dtype, tuple(lead), T, Dk, Dv


_check_options = check_options        # the options' validation lives with the op table (workbench/opspec.py)


def _takers(op: str, dtype: str) -> str:
    """The variants of ``op`` that take ``dtype``, for error messages."""
    keys = [v.key for v in registry.variants(op) if dtype in v.dtypes]
    return f"variants taking {dtype}: {', '.join(keys)}" if keys else f"no variant takes {dtype}"


def _auto_variant(op: str, kind: str, dtype: str):
    """``backend="auto"``: the first backend of ``AUTO_BACKENDS[kind]`` with a usable variant for dtype (its
    default for the dtype, else its first variant that takes it)."""
    unusable = []
    for name in AUTO_BACKENDS[kind]:
        cands = registry.variants(op, name)
        if not any(dtype in v.dtypes for v in cands):
            continue
        ok, why = backends.status(name)
        if name == "numba" and backends.numba_simulator():
            ok, why = False, "the CUDA simulator cannot take CuPy arrays"
        if not ok:
            unusable.append(f"{name}: {why}")
            continue
        best = registry.get(op, name, dtype=dtype)
        return best if dtype in best.dtypes else next(v for v in cands if dtype in v.dtypes)
    tried = "/".join(AUTO_BACKENDS[kind])
    raise TypeError(f"{op}_attention: no {tried} variant can take {kind} arrays of dtype {dtype} here "
                    f"({_takers(op, dtype)}{'; unusable: ' + '; '.join(unusable) if unusable else ''}); "
                    f"pass backend=... with arrays of the kind that variant takes, or another dtype")


_FEATURE_OPTIONS = {"state": "initial_state/return_state", "packed": "cu_seqlens"}


def _pick_variant(op: str, backend: str, kind: str, dtype: str, options: dict, shapes: dict,
                  features: frozenset = frozenset()):
    if not isinstance(backend, str):
        raise TypeError(f"{op}_attention: backend must be a string, got {backend!r}")
    if backend == "auto":
        variant = _auto_variant(op, kind, dtype)
    else:
        backend_name, _, variant_name = backend.partition(":")
        try:
            variant = registry.get(op, backend_name, variant_name or None, dtype=dtype)
        except ValueError as e:
            raise ValueError(f"{op}_attention: {e}") from None
    if not features <= variant.features:
        # auto and a bare backend name pick a variant that has the features; a named variant must have them
        named = backend != "auto" and ":" in backend
        alt = None if named else _variant_with(op, AUTO_BACKENDS[kind] if backend == "auto" else (variant.backend,),
                                               dtype, options, shapes, features)
        if alt is None:
            missing = sorted(features - variant.features)
            have = [v.key for v in registry.variants(op) if features <= v.features]
            raise ValueError(f"{op}_attention: backend {variant.key} does not support "
                             f"{', '.join(_FEATURE_OPTIONS[f] for f in missing)}; variants of {op} that support "
                             f"{', '.join(_FEATURE_OPTIONS[f] for f in sorted(features))}: "
                             f"{', '.join(have) if have else 'none'}")
        variant = alt
    _require(op, variant)
    if dtype not in variant.dtypes:
        raise TypeError(f"{op}_attention: backend {variant.key} does not support dtype {dtype}; "
                        f"it supports {', '.join(variant.dtypes)} ({_takers(op, dtype)})")
    why = variant.unsupported_reason(options, shapes)
    if why and not (backend != "auto" and ":" in backend):
        # a default that cannot take these inputs (head dims, options): the backend's next variant that can
        alt = _variant_with(op, AUTO_BACKENDS[kind] if backend == "auto" else (variant.backend,), dtype, options,
                            shapes, features)
        if alt is not None:
            variant, why = alt, None
    if why:
        raise ValueError(f"{op}_attention: backend {variant.key} does not support these inputs: {why}")
    return variant


def _variant_with(op: str, backend_names, dtype: str, options: dict, shapes: dict, features: frozenset):
    """The first usable variant of the backends that takes dtype, these inputs and every feature (a backend's
    defaults for the dtype first), or None."""
    for name in backend_names:
        if not backends.status(name)[0]:
            continue
        for v in sorted(registry.variants(op, name), key=lambda v: (dtype not in v.default_for, not v.default)):
            if dtype in v.dtypes and features <= v.features and v.unsupported_reason(options, shapes) is None:
                return v
    return None


def _require(op: str, variant) -> None:
    if variant.gpu:
        try:
            backends.require(variant.backend)
        except backends.BackendUnavailable as e:
            raise backends.BackendUnavailable(f"{op}_attention: {e}") from None


# ----------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class _Plan:
    """Everything about a call that depends only on its signature, computed once (see the module doc)."""
    op: str
    variant: registry.Variant
    kind: str                   # the caller's array kind
    dtype: np.dtype             # the inputs' dtype in native byte order (outputs and gradients have it)
    arg_shapes: tuple           # the caller's shape of every array argument (the gradients get them back)
    flat_shapes: tuple          # the shapes the variant sees: leading dims flattened to one (unless the
                                # variant takes leading dims: registry.Variant.leading_dims)
    out_shape: tuple            # (*lead, T, Dv)
    flat_out_shape: tuple       # (N, T, Dv), or out_shape for a variant that takes leading dims
    options: dict               # validated options passed to the variant
    to_kind: str                # the kind the variant takes when it differs from the caller's, else ""
    native: bool                # every argument in native byte order
    decay_index: int            # position of log_decay among the arrays (-1: none)
    # state and packing (workbench/state.py); options above include return_state/cu_seqlens when used
    return_state: bool = False
    has_state: bool = False     # an initial state is passed (the gradients get one more: its gradient)
    state_lead: tuple = ()      # the caller's leading dims of state fields (lead, plus nseq when packed)
    flat_state_lead: tuple = () # (N, nseq): what the variant sees
    normalize: bool = False     # linear: the state carries z
    Dk: int = 0
    Dv: int = 0
    passthrough: bool = False   # flatten hands the caller's arrays on (variant takes leading dims, arrays of
                                # native byte order and the variant's kind): only C-contiguity to check
    array_type: type = None     # the type of the caller's first array (every array's kind is its kind)
    # set by __post_init__, for the cached path: the variant's forward (its options bound) and backward, or the
    # pair its ``prepare`` bound to this plan (registry.Variant.prepare; not with a state), the backend to re-check
    # (a GPU variant: "" for the others), whether the pullback has a fast case (no state, no kind change, the
    # variant takes dout in the output's shape: a dout of the caller's type, the output's shape and dtype,
    # C-contiguous, is handed on as it is) and whether the gradients may come back in the caller's shapes
    # (a variant that takes leading dims: each is checked, no reshape when it has its argument's shape)
    fwd: object = None
    bwd: object = None
    gpu_backend: str = ""
    dout_direct: bool = False
    grads_direct: bool = False
    grads_exact: bool = False   # a prepared pair's gradients are in the caller's shapes already (passthrough)

    def __post_init__(self):
        f = lambda k, v: object.__setattr__(self, k, v)     # noqa: E731  (a frozen dataclass)
        f("passthrough", self.flat_shapes == self.arg_shapes and self.native and not self.to_kind)
        run = None
        if self.variant.prepare is not None and not self.return_state and not self.has_state:
            run = self.variant.prepare(self.options, self.flat_shapes, self.dtype)     # (forward, backward) bound
        if run is not None:
            f("fwd", run[0])
            f("bwd", run[1])
        else:
            f("fwd", functools.partial(self.variant.forward, **self.options) if self.options else self.variant.forward)
            f("bwd", self.variant.backward)
        f("gpu_backend", self.variant.backend if self.variant.gpu else "")
        f("dout_direct", self.flat_out_shape == self.out_shape and not self.to_kind and not self.return_state
                         and not self.has_state)
        f("grads_direct", self.passthrough)
        f("grads_exact", self.passthrough and run is not None)

    def flatten(self, arrays):
        if self.passthrough:                    # the caller's arrays as they are, when C-contiguous
            for x in arrays:
                if not x.flags.c_contiguous:
                    break
            else:
                return arrays
        flat = []
        for x, shape in zip(arrays, self.flat_shapes):
            if x.shape != shape:
                x = x.reshape(shape)
            if not self.native and not x.dtype.isnative:
                x = x.astype(self.dtype)
            if self.to_kind:
                x = backends.to_kind(x, self.to_kind)
            flat.append(x if x.flags.c_contiguous else _contiguous(x))
        return flat

    def back(self, x, shape):
        """A result of the variant as the caller's kind and shape."""
        if self.to_kind:
            x = backends.to_kind(x, self.kind)
        return x if x.shape == shape else x.reshape(shape)

    def flatten_state(self, state):
        """A (validated) state of the caller's layout as the variant takes it: fields (N, nseq, ...)."""
        def flat(x):
            x = x.reshape(self.flat_state_lead + x.shape[len(self.state_lead):])
            if self.to_kind:
                x = backends.to_kind(x, self.to_kind)
            return x if x.flags.c_contiguous else _contiguous(x)
        return _st.map_state(flat, state)

    def back_state(self, state):
        """A state from the variant in the caller's kind and layout."""
        return _st.map_state(lambda x: self.back(x, self.state_lead + x.shape[2:]), state)

    def check_state(self, state, name: str, allow_none_fields: bool = False, where: str = ""):
        return _st.check_state(where or f"{self.op}_attention", self.op, state, lead=self.state_lead, Dk=self.Dk, Dv=self.Dv,
                               dtype=str(self.dtype), kind=self.kind, normalize=self.normalize, name=name,
                               allow_none_fields=allow_none_fields)

    def check_values(self, arrays) -> None:
        if self.decay_index < 0:
            return
        g = arrays[self.decay_index]
        if self.kind == "cupy" and not backends.device_checks():
            return
        if self.kind == "numpy" and g.size == 1 and not g.item() > 0:     # one token: no array temporaries
            return
        positive = g > 0
        if positive.any():
            raise ValueError(f"{self.op}_attention: argument 'log_decay' must be <= 0 everywhere (a log decay: "
                             f"0 keeps the state, -inf resets it), got values up to {float(g[positive].max())}")


_PLANS: dict = {}
_PLANS_VERSION = [-1]          # registry.VERSION the cached plans were made under


def _opt_key(v):
    """A hashable key for an option value that tells apart values the validation treats differently."""
    t = type(v)
    if t is str or v is None:
        return v
    if t is bool or t is int:                   # True == 1: the type tells them apart
        return t, v
    return t, (v.hex() if t is float else repr(v))


@dataclass(frozen=True)
class _Extras:
    """The state and packing arguments of one call, as the caller passed them."""
    initial_state: object = None
    return_state: object = False
    cu_seqlens: object = None

    def key(self):
        """Hashable: the state's type and the type, dtype and shape of its fields; cu_seqlens' values (a CuPy
        array raises TypeError: no plan is cached, it is validated every call)."""
        st, cu = self.initial_state, self.cu_seqlens
        if st is not None:
            st = (type(st), *[None if x is None else (type(x), x.dtype, x.shape)
                              for x in (getattr(st, f.name) for f in dataclasses.fields(st))])
        if isinstance(cu, np.ndarray):
            cu = (cu.dtype.str, cu.shape, cu.tobytes())
        elif isinstance(cu, (tuple, list)):
            cu = (type(cu), *[(type(c), c) for c in cu])
        elif cu is not None:
            raise TypeError("cu_seqlens: not cached")
        return st, _opt_key(self.return_state), cu


_NO_EXTRAS = _Extras()


def _options_key(op: str, options: dict):
    """The options' part of a plan key: None when every value is the very object of the op's default (the
    public functions and ``vjp`` called without options: no per-value key to build), else the names and
    ``_opt_key`` of every value."""
    if options is _OPTIONS[op]:                 # vjp without options: the defaults themselves
        return None
    names, defaults = _DEFAULT_OPTIONS[op]
    if len(options) == len(defaults) and all(map(operator.is_, options.values(), defaults)) \
            and tuple(options) == names:
        return None
    return tuple(options), tuple(map(_opt_key, options.values()))


def _plan(op: str, arrays: tuple, options: dict, backend, extras: _Extras = _NO_EXTRAS) -> _Plan:
    """The cached plan of this call's signature (made and cached on a miss), its value checks done.  The key
    holds everything a plan depends on: op, backend, the type, dtype and shape of every array, the options
    (``_options_key``) and the state/packing arguments (``_Extras.key``); plans made before the registry
    last changed are dropped (``registry.VERSION``).  A hit re-checks only what can change without the
    key changing: the GPU backend's availability and the values (``_Plan.check_values``)."""
    try:
        key = (op, backend, tuple([(type(x), x.dtype, x.shape) for x in arrays]), _options_key(op, options),
               extras.key() if extras is not _NO_EXTRAS else None)
        plan = _PLANS.get(key)
    except (TypeError, AttributeError):         # unhashable or not an array: validation says what is wrong
        key = plan = None
    if plan is None or _PLANS_VERSION[0] != registry.VERSION[0]:
        plan = _make_plan(op, arrays, options, backend, extras)
        if key is not None:
            if len(_PLANS) >= _MAX_PLANS or _PLANS_VERSION[0] != registry.VERSION[0]:
                _PLANS.clear()
                _PLANS_VERSION[0] = registry.VERSION[0]
            _PLANS[key] = plan
    elif plan.gpu_backend and not backends.usable(plan.gpu_backend):
        _require(op, plan.variant)              # raises BackendUnavailable with the op's name
    if plan.decay_index >= 0:
        plan.check_values(arrays)
    return plan


def _make_plan(op: str, arrays: tuple, options: dict, backend, extras: _Extras = _NO_EXTRAS) -> _Plan:
    names = registry.ARRAY_ARGS[op]
    named = dict(zip(names, arrays))
    kind, dtype, lead, T, Dk, Dv = _check_arrays(op, named)
    options = _check_options(op, options, Dk)
    where = f"{op}_attention"
    cu = _st.check_cu_seqlens(where, extras.cu_seqlens, T)
    if not isinstance(extras.return_state, (bool, np.bool_)):
        raise TypeError(f"{where}: 'return_state' must be True or False, got {extras.return_state!r}")
    stateful = extras.initial_state is not None or bool(extras.return_state)
    if stateful and not options.get("causal", True):
        raise ValueError(f"{where}: initial_state and return_state need causal=True (a state summarises the "
                         f"tokens before a position; with causal=False every token sees its whole sequence)")
    features = frozenset(({"state"} if stateful else set()) | ({"packed"} if cu is not None else set()))
    shapes = {n: tuple(a.shape) for n, a in named.items()}
    variant = _pick_variant(op, backend, kind, dtype, options, shapes, features)
    N = math.prod(lead)
    if variant.leading_dims:                    # the variant takes the caller's arrays as they are
        flat_shapes, flat_out = tuple(shapes.values()), (*lead, T, Dv)
    else:
        flat_shapes, flat_out = tuple((N,) + s[len(lead):] for s in shapes.values()), (N, T, Dv)
    to_kind = variant.array_kind if variant.array_kind not in ("any", kind) else ""
    first = arrays[0].dtype
    nseq = () if cu is None else (len(cu) - 1,)
    variant_options = dict(options, **({"return_state": True} if extras.return_state else {}),
                           **({"cu_seqlens": cu} if cu is not None else {}))
    plan = _Plan(op, variant, kind, first if first.isnative else first.newbyteorder("="), tuple(shapes.values()),
                 flat_shapes, (*lead, T, Dv), flat_out, variant_options, to_kind,
                 all(a.dtype.isnative for a in arrays),
                 next((i for i, a in enumerate(SPECS[op].arrays) if a.nonpositive), -1),
                 bool(extras.return_state), extras.initial_state is not None, (*lead, *nseq), (N, len(cu) - 1 if cu else 1),
                 bool(options.get("normalize", False)), Dk, Dv, array_type=type(arrays[0]))
    if extras.initial_state is not None:
        plan.check_state(extras.initial_state, "initial_state")
    return plan


def _contiguous(x):
    if x.flags.c_contiguous:
        return x
    return x.copy(order="C")        # NumPy and CuPy alike (keeps an ndarray subclass: the CUDA emulator's arrays)


# ----------------------------------------------------------------------------- dispatch
def _forward(op: str, arrays: tuple, options: dict, backend, extras: _Extras = _NO_EXTRAS):
    """(out, plan, ctx); out is (o, final state) with return_state."""
    plan = _plan(op, arrays, options, backend, extras)
    if extras.initial_state is None:
        res, ctx = plan.fwd(*plan.flatten(arrays))
    else:
        res, ctx = plan.variant.forward(*plan.flatten(arrays), initial_state=plan.flatten_state(extras.initial_state),
                                        **plan.options)
    if plan.return_state:
        return (plan.back(res[0], plan.out_shape), plan.back_state(res[1])), plan, ctx
    if plan.to_kind or res.shape != plan.out_shape:
        res = plan.back(res, plan.out_shape)
    return res, plan, ctx


def _full_state(plan: _Plan, dstate):
    """A validated final-state gradient with every field set (None fields: zeros)."""
    plan.check_state(dstate, "dstate", allow_none_fields=True, where=f"{plan.op}_attention pullback")
    xp = np if plan.kind == "numpy" else backends.cupy_module()
    want = _st.layout(plan.op, plan.Dk, plan.Dv, plan.normalize)
    dt = _st.state_dtype(str(plan.dtype))
    return type(dstate)(**{n: getattr(dstate, n) if getattr(dstate, n) is not None
                           else xp.zeros(plan.state_lead + shape, dt) for n, shape in want.items()})


def _pullback(plan: _Plan, ctx):
    where = f"{plan.op}_attention pullback"

    def pullback(dout, dstate=None):
        if (plan.dout_direct and dstate is None and type(dout) is plan.array_type and dout.dtype is plan.dtype
                and dout.shape == plan.out_shape and dout.flags.c_contiguous):
            # the common case (the output's type, shape and dtype, C-contiguous): every check below passes
            grads = plan.bwd(ctx, dout)
            if plan.grads_exact:                # a prepared pair: a tuple of the gradients in the variant's shapes
                return grads
            if plan.grads_direct:
                for g, s in zip(grads, plan.arg_shapes):
                    if g.shape != s:
                        break
                else:
                    return tuple(grads)
            return tuple([g if g.shape == s else g.reshape(s) for g, s in zip(grads, plan.arg_shapes)])
        try:
            kind = backends.array_kind(dout)
        except TypeError as e:
            raise TypeError(f"{where}: argument 'dout': {e}") from None
        if dout.shape != plan.out_shape:
            raise ValueError(f"{where}: argument 'dout' must have the output's shape {plan.out_shape}, "
                             f"got {tuple(dout.shape)}")
        if kind != plan.kind:
            raise TypeError(f"{where}: 'dout' is a {kind} array but the op's inputs were {plan.kind}")
        dt = dout.dtype
        if dt is not plan.dtype and dt != plan.dtype:
            if dt.isnative or dt.newbyteorder("=") != plan.dtype:
                raise TypeError(f"{where}: argument 'dout' has dtype {backends.dtype_name(dt)}; expected "
                                f"{plan.dtype} (the output's dtype): cast it with dout.astype(out.dtype)")
            dout = dout.astype(plan.dtype)
        d = dout if dout.shape == plan.flat_out_shape else dout.reshape(plan.flat_out_shape)
        if plan.to_kind:
            d = backends.to_kind(d, plan.to_kind)
        d = d if d.flags.c_contiguous else _contiguous(d)
        if plan.return_state:
            dfinal = None if dstate is None else plan.flatten_state(_full_state(plan, dstate))
            grads = plan.variant.backward(ctx, d, dfinal)
        elif dstate is not None:
            raise TypeError(f"{where}: argument 'dstate' (the final state's gradient) needs return_state=True "
                            f"in the call")
        else:
            grads = plan.bwd(ctx, d)                # the forward's pair (a prepared ctx is the prepared backward's)
        if plan.to_kind:
            out = tuple(plan.back(g, s) for g, s in zip(grads, plan.arg_shapes))
        else:
            out = tuple([g if g.shape == s else g.reshape(s) for g, s in zip(grads, plan.arg_shapes)])
        return out + (plan.back_state(grads[-1]),) if plan.has_state else out
    return pullback


def _op(name: str):
    def deco(fn):
        fn._wb_op = name
        return fn
    return deco


# ----------------------------------------------------------------------------- public ops
_STATE_DOC = """
    State and packing (workbench/state.py; docs/spec.md): ``cu_seqlens`` packs sequences into the T axis
    (offsets ``0 = c_0 < ... < c_nseq = T``; no token attends across a boundary); ``initial_state`` (a
    ``{cls}``, causal only) continues each sequence from a state; ``return_state=True`` returns
    ``(o, final_state)``.  With cu_seqlens the state fields have the sequence dim: ``(..., nseq, ...)``."""


def _extras(initial_state=None, return_state=False, cu_seqlens=None) -> _Extras:
    if initial_state is None and return_state is False and cu_seqlens is None:
        return _NO_EXTRAS
    return _Extras(initial_state, return_state, cu_seqlens)


@_op("softmax")
def softmax_attention(q, k, v, causal=True, scale=None, backend="auto", cu_seqlens=None):
    """Softmax attention ``o_t = sum_i softmax_i(scale * q_t.k_i) v_i`` (sums over i <= t when causal).

    q, k: ``(..., T, Dk)``; v: ``(..., T, Dv)``; returns ``(..., T, Dv)``.  scale defaults to 1/sqrt(Dk).
    ``cu_seqlens``: offsets of sequences packed into the T axis (workbench/state.py); keys of other
    sequences are masked out.
    """
    return _forward("softmax", (q, k, v), dict(causal=causal, scale=scale), backend,
                    _extras(cu_seqlens=cu_seqlens))[0]


@_op("linear")
def linear_attention(q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6,
                     backend="auto", initial_state=None, return_state=False, cu_seqlens=None):
    """Linear attention ``o_t = sum_i scale * phi(q_t).phi(k_i) v_i``, divided by
    ``sum_i scale * phi(q_t).phi(k_i) + eps`` when ``normalize``.  phi: identity, elu1 (elu+1) or relu.
    """
    return _forward("linear", (q, k, v),
                    dict(causal=causal, feature_map=feature_map, normalize=normalize, scale=scale, eps=eps),
                    backend, _extras(initial_state, return_state, cu_seqlens))[0]


@_op("decayed")
def decayed_attention(q, k, v, log_decay, scale=1.0, backend="auto", causal=True, initial_state=None,
                      return_state=False, cu_seqlens=None):
    """Decayed linear attention (always causal): ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``,
    ``o_t = scale * q_t^T S_t``, with ``g = log_decay <= 0`` of shape ``(..., T)``; ``g_t = -inf`` resets
    the state (every earlier token drops out).  Positive log decays are refused with a ValueError (CuPy
    inputs only under ``workbench.backends.device_checked()``: the check syncs the device).
    """
    return _forward("decayed", (q, k, v, log_decay), dict(scale=scale, causal=causal), backend,
                    _extras(initial_state, return_state, cu_seqlens))[0]


@_op("zeros")
def zeros_attention(q, k, v, s, gates, causal=True, backend="auto", initial_state=None, return_state=False,
                    cu_seqlens=None):
    """ZeroS (zero-sum linear) attention, docs/spec.md section 3.4.  s: ``(..., T)`` radial logits; gates:
    ``(..., T, 2)`` (first-order and higher-order gates) or ``(..., T, 3)`` (plus a zero-order gate).
    """
    return _forward("zeros", (q, k, v, s, gates), dict(causal=causal), backend,
                    _extras(initial_state, return_state, cu_seqlens))[0]


for _f, _cls in ((linear_attention, "LinearState"), (decayed_attention, "DecayedState"),
                 (zeros_attention, "ZeroSState")):
    _f.__doc__ = _f.__doc__.rstrip() + "\n" + _STATE_DOC.format(cls=_cls) + "\n"


PUBLIC_OPS = {f._wb_op: f for f in (softmax_attention, linear_attention, decayed_attention, zeros_attention)}
# The keywords of each optional feature (registry.FEATURES), in signature order.
_FEATURE_KEYWORDS = {"state": ("initial_state", "return_state"), "packed": ("cu_seqlens",)}
# op -> its keyword options and their defaults (workbench/opspec.py), and its state/packing keywords
_OPTIONS = {name: dict(sp.options) for name, sp in SPECS.items()}
_OP_EXTRAS = {name: tuple(k for f in registry.FEATURES if f in sp.features for k in _FEATURE_KEYWORDS[f])
              for name, sp in SPECS.items()}


def _check_signatures() -> None:
    """Each public op's signature is the op table's: its arrays, its options with their defaults in order,
    ``backend`` and its feature keywords (a mismatch is a programming error, raised at import)."""
    for name, f in PUBLIC_OPS.items():
        params = inspect.signature(f).parameters.values()
        extras = _OP_EXTRAS[name]
        arrays = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
        options = [(p.name, p.default) for p in params
                   if p.default is not inspect.Parameter.empty and p.name != "backend" and p.name not in extras]
        if (arrays != SPECS[name].array_names or options != list(_OPTIONS[name].items())
                or tuple(p.name for p in params if p.name in extras) != extras
                or "backend" not in inspect.signature(f).parameters):
            raise RuntimeError(f"{f.__name__}{inspect.signature(f)} disagrees with the op table "
                               f"(workbench/opspec.py): arrays {SPECS[name].array_names}, options "
                               f"{_OPTIONS[name]}, backend, feature keywords {extras}")


_check_signatures()
# The defaults as the very objects of the public functions' signatures (equal to the op table's, checked above),
# so that a call with default options -- the public function's or vjp's -- has the plan key's short form
# (_options_key): op -> (option names, default values).
for _name, _f in PUBLIC_OPS.items():
    _params = inspect.signature(_f).parameters
    _OPTIONS[_name] = {k: _params[k].default for k in _OPTIONS[_name]}
_DEFAULT_OPTIONS = {name: (tuple(o), tuple(o.values())) for name, o in _OPTIONS.items()}
_N_ARRAYS = {name: len(registry.ARRAY_ARGS[name]) for name in _OPTIONS}


def vjp(op, *arrays, **options):
    """``out, pullback = vjp(op, *arrays, **options)``; ``pullback(dout)`` returns one gradient per array
    argument, in argument order (softmax/linear: dq, dk, dv; decayed: + dlog_decay; zeros: + ds, dgates).
    ``dout`` must have the output's kind, shape and dtype.

    State and packing: with ``return_state=True``, ``out`` is ``(o, final_state)`` and the pullback is
    ``pullback(dout, dstate=None)``, ``dstate`` the final state's gradient (a state object; None, or None
    fields, mean zero).  With an ``initial_state``, the gradients end with one more: a state object holding
    the gradient of every field of the initial state."""
    name = getattr(op, "_wb_op", None)
    if name is None:
        raise TypeError(f"vjp: {op!r} is not a workbench op; pass one of "
                        f"{', '.join(f.__name__ for f in PUBLIC_OPS.values())}")
    if not options:                             # no options: the defaults, backend "auto"
        if len(arrays) == _N_ARRAYS[name]:
            out, plan, ctx = _forward(name, arrays, _OPTIONS[name], "auto", _NO_EXTRAS)
            return out, _pullback(plan, ctx)
    arg_names = registry.ARRAY_ARGS[name]
    if len(arrays) != len(arg_names):
        raise TypeError(f"vjp: {op.__name__} takes {len(arg_names)} arrays ({', '.join(arg_names)}), "
                        f"got {len(arrays)}")
    backend = options.pop("backend", "auto")
    extras = {k: options.pop(k) for k in _OP_EXTRAS[name] if k in options}
    defaults = _OPTIONS[name]
    if not options.keys() <= defaults.keys():
        bad = ", ".join(repr(k) for k in options if k not in defaults)
        raise TypeError(f"vjp: {op.__name__} got unexpected keyword argument(s) {bad}; its options are "
                        f"{', '.join(list(defaults) + list(_OP_EXTRAS[name]))} and backend (arrays are "
                        f"positional)")
    opts = {k: options.get(k, d) for k, d in defaults.items()} if options else defaults
    out, plan, ctx = _forward(name, arrays, opts, backend, _extras(**extras) if extras else _NO_EXTRAS)
    return out, _pullback(plan, ctx)
