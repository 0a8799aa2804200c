"""CuPy linear attention (kernels/cuda/linear.cu on the shared skeleton kernels/cuda/chunked.cuh).

Maps the reference derivation (workbench/reference/linear.py) onto the core of ``_chunked``:
  forward   num = core(phi(q), phi(k), v_aug): v_aug = v, or [v, 1] with normalize (den = the last
            column + eps, o = num / den);
  backward  dnum = do (or do / den), dden = -(do . o) / den; do_aug = [dnum, dden] (normalize);
            dQ, dK, dv_aug = core backward (dq = (dA) K + state term, dk/dv from the suffix states);
            dq = dQ phi'(q), dk = dK phi'(k), dv = dv_aug[..., :Dv].
Variants: "naive" (one thread per output row) and "chunked" (states + C x C blocks).  The identity map
without normalize runs the kernels on the input dtype (float16 loads, float32 math); the other options
work in float32 (phi and the ones column are formed by CuPy elementwise ops).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from workbench.registry import Variant, register

from . import _chunked as core
from ._module import declare_groups

SOURCE = "linear.cu"
INSTANTIATIONS = core.instantiations(SOURCE, decay_values=(False,))
declare_groups(SOURCE, core.compile_groups(decay_values=(False,)))


def _phi(x, name):
    import cupy as cp
    if name == "identity":
        return x
    if name == "relu":
        return cp.maximum(x, 0)
    return cp.where(x > 0, x + 1, cp.exp(cp.minimum(x, 0)))


def _dphi(x, name):
    import cupy as cp
    if name == "relu":
        return (x > 0).astype(cp.float32)
    return cp.where(x > 0, 1, cp.exp(cp.minimum(x, 0))).astype(cp.float32)


@dataclass
class _Context(core.Saved):
    """What the backward of cupy:naive / chunked / chunked_seg needs (phi' is taken of q and k)."""
    Q: object                # the core's operands: phi(q), phi(k) and v or [v, 1]
    K: object
    Va: object
    states: object           # the core's forward states (chunked), else None
    o: object                # the output, float32 (normalize: divided by den)
    den: object              # (N, T) float32 denominators with normalize, else None
    causal: bool
    feature_map: str
    normalize: bool
    scale: float


def _forward(impl, q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6):
    import cupy as cp
    dtype = q.dtype
    plain = feature_map == "identity" and not normalize
    if plain:
        Q, K, Va = q, k, v
    else:
        Q, K = (_phi(x.astype(cp.float32, copy=False), feature_map) for x in (q, k))
        Va = v.astype(cp.float32, copy=False)
        if normalize:
            Va = cp.concatenate([Va, cp.ones(v.shape[:-1] + (1,), cp.float32)], axis=-1)
    num, H = core.core_forward(SOURCE, impl, Q, K, Va, causal, scale)
    if normalize:
        den = num[..., -1] + eps
        o = num[..., :-1] / den[..., None]
    else:
        den, o = None, num
    ctx = _Context(impl, q, k, v, Q, K, Va, H, o, den, causal, feature_map, normalize, scale)
    return o.astype(dtype, copy=False), ctx


def _backward(ctx: _Context, do):
    import cupy as cp
    dtype = ctx.q.dtype
    if ctx.normalize:
        do32 = do.astype(cp.float32, copy=False)
        dnum = do32 / ctx.den[..., None]
        dden = -(do32 * ctx.o).sum(-1) / ctx.den
        doa = cp.concatenate([dnum, dden[..., None]], axis=-1)
    else:
        doa = do.astype(ctx.Q.dtype, copy=False)
    dQ, dK, dVa = core.core_backward(SOURCE, ctx.impl, ctx.Q, ctx.K, ctx.Va, ctx.states, doa, ctx.causal, ctx.scale)
    dv = dVa[..., :-1] if ctx.normalize else dVa
    if ctx.feature_map != "identity":
        dQ = dQ * _dphi(ctx.q.astype(cp.float32, copy=False), ctx.feature_map)
        dK = dK * _dphi(ctx.k.astype(cp.float32, copy=False), ctx.feature_map)
    return tuple(x.astype(dtype, copy=False) for x in (dQ, dK, dv))


def supports(options, shapes):
    dk, dv = shapes["q"][-1], shapes["v"][-1]
    if max(dk, dv + bool(options.get("normalize"))) > core.MAX_DIM:
        return f"head dims up to {core.MAX_DIM} (Dk={dk}, Dv={dv}{' + 1 for normalize' if options.get('normalize') else ''})"
    return None


core.register_variants("linear", _forward, _backward, {
    "naive": "one thread per output row (and per key row in the backward), O(T^2 D)",
    "chunked": "chunked: carried Dk x Dv states (one chain over the chunks per state tile) + C x C "
               "blocks in shared memory (C = 64); the fallback above head dim 128",
    "chunked_seg": "chunked, the state chain cut into segments of 8 chunks run in parallel, then joined",
}, tol={"float32": 1e-4, "float16": 1e-3}, supports=supports)


# ----------------------------------------------------------------------------- tensor cores
# cupy:chunked_mma (float16, bfloat16; float32 as 3xTF32), cupy:chunked_mma_db (the same with double-buffered
# chunk tiles) and cupy:chunked_mma_tf32 (float32 as TF32): the tensor-core chunk core of
# kernels/cuda/chunked_mma.cu (kernels/cupy/_chunked_mma.py).  phi and the
# normalising column of ones are formed around it in the input dtype, as above.
from workbench.state import LinearState  # noqa: E402

from . import _chunked_mma as mma  # noqa: E402
from ._module import as_contiguous, as_dtype, dtype_name  # noqa: E402

INSTANTIATIONS = INSTANTIATIONS + mma.INSTANTIATIONS     # the kernels this module's variants launch


@dataclass
class _MMAContext:
    core: mma.CoreContext
    q: object
    k: object
    o: object                # normalised output (float32), normalize only
    den: object              # (N, T) float32 denominators, normalize only
    feature_map: str
    normalize: bool
    has_initial: bool        # an initial state was passed: the backward returns its gradient


def _state_to_core(st, normalize):
    """A LinearState (fields (N, nseq, ...)) as the core's (N, nseq, Dk, Dv[+1]) float32 state: with
    normalize, z is the state's column for the ones appended to v."""
    import cupy as cp
    S = st.S if not normalize else cp.concatenate([st.S, st.z[..., None]], axis=-1)
    return cp.ascontiguousarray(S, dtype=cp.float32)


def _state_from_core(S, normalize):
    import cupy as cp
    if not normalize:
        return LinearState(S)
    return LinearState(cp.ascontiguousarray(S[..., :-1]), cp.ascontiguousarray(S[..., -1]))


def _mma_forward(split, stages, q, k, v, causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6,
                 initial_state=None, return_state=False, cu_seqlens=None, dkdv="fused", xscale=False):
    import cupy as cp
    # normalize runs the core in float32 for 16-bit inputs: with bfloat16 the backward's [do/den, -(do.o)/den]
    # against [v, 1] cancels to ~1/10 of its terms, beyond bfloat16's 8 bits (dq 3.5e-2 on the emulated
    # kernels); with float16 the denominator column (a sum of phi(q).phi(k) over the window, 7.6e4 at T = 1024
    # with elu1 and unit-normal inputs) overflows the float16 output (H200 check: errors 0.1-1.0 at T >= 1024)
    dt = np.dtype(np.float32) if (normalize and dtype_name(q.dtype) in ("bfloat16", "float16")) else q.dtype
    if feature_map == "identity":
        Q, K = (q, k) if dt is q.dtype else (as_dtype(q, dt), as_dtype(k, dt))
    else:
        Q = as_dtype(_phi(as_dtype(q, cp.float32), feature_map), dt)
        K = as_dtype(_phi(as_dtype(k, cp.float32), feature_map), dt)
    Va = cp.concatenate([as_dtype(v, dt), cp.ones(v.shape[:-1] + (1,), dt)], axis=-1) if normalize else v
    split, dkdv, xscale = mma.pairs_or_fallback(split, dkdv, xscale, Q.shape[-1], Va.shape[-1], causal, refuse=normalize)
    S0 = None if initial_state is None else _state_to_core(initial_state, normalize)
    num, cctx = mma.forward(Q, K, Va, None, scale=scale, causal=causal, split=split, S0=S0,
                            want_final=return_state, cu=cu_seqlens, stages=stages, dkdv=dkdv, xscale=xscale)
    o = den = None
    if normalize:
        den = num[..., -1].astype(cp.float32) + eps
        o = num[..., :-1].astype(cp.float32) / den[..., None]
        out = o.astype(q.dtype)
    else:
        out = num
    ctx = _MMAContext(cctx, q, k, o, den, feature_map, bool(normalize), initial_state is not None)
    return ((out, _state_from_core(mma.final_state(cctx), normalize)) if return_state else out), ctx


def _mma_backward(ctx: _MMAContext, do, dfinal=None):
    import cupy as cp
    dt = ctx.q.dtype
    if ctx.normalize:
        do32 = do.astype(cp.float32, copy=False)
        doa = cp.concatenate([do32 / ctx.den[..., None], (-(do32 * ctx.o).sum(-1) / ctx.den)[..., None]],
                             axis=-1).astype(mma.operand_dtype(ctx.core))
    else:
        doa = as_contiguous(do, dt)
    dST = None if dfinal is None else _state_to_core(dfinal, ctx.normalize)
    dQ, dK, dVa, _, dS0 = mma.backward(ctx.core, doa, dST)
    if not ctx.normalize and ctx.feature_map == "identity" and dQ.dtype is dt:    # the core's gradients as they are
        return (dQ, dK, dVa) + ((_state_from_core(dS0, False),) if ctx.has_initial else ())
    dv = dVa[..., :-1] if ctx.normalize else dVa
    if ctx.feature_map != "identity":
        dQ = (dQ.astype(cp.float32, copy=False) * _dphi(ctx.q.astype(cp.float32, copy=False), ctx.feature_map)
              ).astype(dt, copy=False)
        dK = (dK.astype(cp.float32, copy=False) * _dphi(ctx.k.astype(cp.float32, copy=False), ctx.feature_map)
              ).astype(dt, copy=False)
    grads = (as_dtype(dQ, dt), as_dtype(dK, dt), as_contiguous(dv, dt) if ctx.normalize else as_dtype(dv, dt))
    return grads + ((_state_from_core(dS0, ctx.normalize),) if ctx.has_initial else ())


# cupy:chunked_mma_wgp (xscale 2) and _wgpw (3) run 3xTF32 where the pairs walkers refuse a call (_chunked_mma.
# pairs_or_fallback) and with normalize: its backward's [do / den, -(do.o) / den] spans the slice's range with den (its
# early rows' entries 1/T of the late ones' at T = 67), and a pair's lo part of an entry far under its slice's max
# falls into float16's subnormals: dq 9.0e-5 on the check's elu1 cell on the CPU emulator (3xTF32 8.6e-7; the
# variant's tolerance 5e-5), 1.2e-3 - 2.2e-3 on the H200 (callW, before the cotangent was handed on in float32).


def _mma_prepare(split, stages, options, shapes, dtype, dkdv="fused", xscale=False):
    """registry.Variant.prepare: _mma_forward / _mma_backward for one call signature where they hand the core's
    results on as they are (identity feature map, no normalize): a _chunked_mma.CoreRun (plan and scale resolved
    once); else None (the general path)."""
    if not options.keys() <= {"causal", "feature_map", "normalize", "scale", "eps", "cu_seqlens"} or \
            options.get("feature_map", "identity") != "identity" or options.get("normalize", False):
        return None
    split, dkdv, xscale = mma.pairs_or_fallback(split, dkdv, xscale, shapes[0][-1], shapes[2][-1],
                                                options.get("causal", True))
    run = mma.CoreRun(dtype_name(dtype), shapes[0], shapes[2][-1], None, scale=options.get("scale", 1.0),
                      causal=options.get("causal", True), split=split, stages=stages, dkdv=dkdv,
                      cu=options.get("cu_seqlens"), n_grads=3, xscale=xscale)
    return run.forward, run.backward


def _supports_mma(options, shapes):
    dk, dv = shapes["q"][-1], shapes["v"][-1] + bool(options.get("normalize"))
    if max(dk, dv) > mma.MAX_DIM:
        return f"head dims up to {mma.MAX_DIM} on tensor cores (Dk={dk}, Dv={dv}{' incl. the normaliser' if options.get('normalize') else ''})"
    return None


register(Variant("linear", "cupy", "chunked_mma", functools.partial(_mma_forward, 3, 1), _mma_backward,
                 leading_dims=True, prepare=functools.partial(_mma_prepare, 3, 1),
                 dtypes=("float32", "float16", "bfloat16"), array_kind="cupy", gpu=True, default=True, supports=_supports_mma, form="linear",
                 features=frozenset({"state", "packed"}), tol={"float32": 5e-5, "float16": 5e-3, "bfloat16": 2e-2},
                 description="tensor cores (mma.sync): chunks of 64, segment-carried states; float32 as 3xTF32"))


def _supports_mma_tf32(options, shapes):
    if options.get("normalize"):
        return ("normalize=True needs cupy:chunked_mma (measured on an H200: TF32 rounding of the normaliser "
                "column gives 5e-3 gradient errors, above the tf32 tolerance)")
    return _supports_mma(options, shapes)


register(Variant("linear", "cupy", "chunked_mma_db", functools.partial(_mma_forward, 3, 2), _mma_backward,
                 leading_dims=True, prepare=functools.partial(_mma_prepare, 3, 2),
                 dtypes=("float32", "float16", "bfloat16"), array_kind="cupy", gpu=True, supports=_supports_mma,
                 form="linear", features=frozenset({"state", "packed"}),
                 description=mma.DOUBLE_BUFFERED))
for _mode, (_name, _desc) in mma.DKDV_DESCRIPTION.items():      # measured rungs of the dk/dv walkers
    register(Variant("linear", "cupy", _name, functools.partial(_mma_forward, 3, 1, dkdv=_mode), _mma_backward,
                     leading_dims=True, prepare=functools.partial(_mma_prepare, 3, 1, dkdv=_mode),
                     dtypes=("float32", "float16", "bfloat16"), array_kind="cupy", gpu=True, supports=_supports_mma,
                     form="linear", features=frozenset({"state", "packed"}), description=_desc,
                     default_for=mma.DKDV_DEFAULT_FOR.get(("linear", _mode), ())))
register(Variant("linear", "cupy", "chunked_mma_tf32", functools.partial(_mma_forward, 1, 1), _mma_backward,
                 leading_dims=True, prepare=functools.partial(_mma_prepare, 1, 1),
                 dtypes=("float32",), array_kind="cupy", gpu=True,
                 supports=_supports_mma_tf32, features=frozenset({"state", "packed"}), form="linear", tags=("tf32",),
                 description="cupy:chunked_mma with float32 products on TF32 (1e-3 accuracy, opt-in)"))


def _supports_mma_wgx(options, shapes):
    if options.get("normalize"):
        return "normalize=True needs cupy:chunked_mma (its ones column makes Dv + 1, and the walkers take Dv <= 64)"
    return mma.xscale_refusal(shapes["q"][-1], shapes["v"][-1], options.get("causal", True))


def _xscale_variant(name: str, xscale: int, supports, description: str, **fields) -> Variant:
    """A float32 variant of the warpgroup-MMA walkers' xscale storage (``_chunked_mma.forward``'s xscale): 1 float16
    copies (tag tf32), 2 hi + lo planes, 3 / 4 hi + lo split as the tiles land (plain loads / staged by cp.async), 5
    as 4 under each chunk tile's own power of two."""
    return Variant("linear", "cupy", name, functools.partial(_mma_forward, 1, 1, dkdv=mma.XS_MODE, xscale=xscale),
                   _mma_backward, leading_dims=True,
                   prepare=functools.partial(_mma_prepare, 1, 1, dkdv=mma.XS_MODE, xscale=xscale),
                   dtypes=("float32",), array_kind="cupy", gpu=True, supports=supports,
                   features=frozenset({"state", "packed"}), form="linear", description=description, **fields)


register(_xscale_variant("chunked_mma_wgx", 1, _supports_mma_wgx,
                         "float32 on the float16 warpgroup-MMA walkers of cupy:chunked_mma_wgb: q, k, v and do rounded "
                         "to float16 under a power-of-two scale per leading index (TF32's 11 significant bits), float32 "
                         "accumulation and results; causal, head dims <= 64, compute capability 9.0 (opt-in, tf32 "
                         "tolerance)", tags=("tf32",)))
register(_xscale_variant("chunked_mma_wgp", 2, _supports_mma,
                         "float32 on the float16 warpgroup-MMA walkers as hi + lo pairs (three products each: float32 "
                         "accuracy) under a power-of-two scale per leading index; causal, head dims <= 64, compute "
                         "capability 9.0, else cupy:chunked_mma_dqr's kernels (3xTF32)", tol={"float32": 5e-5}))
register(_xscale_variant("chunked_mma_wgpa", 4, _supports_mma,
                         "cupy:chunked_mma_wgp with the walkers' float32 tiles staged by cp.async where each hi + lo pair "
                         "will lie and split in place by the thread that copied it (no planes pass)", tol={"float32": 5e-5}))
register(_xscale_variant("chunked_mma_wgpt", 5, _supports_mma,
                         "cupy:chunked_mma_wgpa with each chunk tile split under its own power of two, found by the "
                         "walkers (no exponent pass; the accumulators scaled around each product)", tol={"float32": 5e-5}))
register(_xscale_variant("chunked_mma_wgpw", 3, _supports_mma,
                         "cupy:chunked_mma_wgp with the walkers reading float32 and splitting each tile into its hi + lo "
                         "pair as it lands (no planes pass; measured rung: H200 5.74 ms at 64k against the planes' "
                         "4.41)", tol={"float32": 5e-5}))
