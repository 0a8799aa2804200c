"""CuPy decayed linear attention (kernels/cuda/decayed.cu: the shared skeleton with DECAY = true).

Maps the reference derivation (workbench/reference/decayed.py) onto the core of ``_chunked``:
  forward   o = core(q, k, v) with D_ti = scale exp(G_t - G_i): the chunked variant passes the
            within-chunk cumulative log decays b (every exponent it forms is <= 0), the naive variant the
            per-token g (it accumulates sum_{j=i+1..t} g_j while walking the row);
  backward  dq = (dA o D) k + e^{b} do S^T, dk = (dA o D)^T q + u dS v, dv = A^T do + u dS^T k
            (chunk_state REV carries dS), then dG_t = do_t.o_t - v_t.dv_t (row dots, float32) and
            dlog_decay = the reverse cumulative sum of dG (its first entry is exactly 0: g_0 cancels).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from workbench.registry import Variant, register

from . import _chunked as core
from ._module import declare_groups

SOURCE = "decayed.cu"
LOG_DECAY_FLOOR = -30.0     # the chunked CUDA-core variants' accurate range (docs/kernels/decayed.md)
INSTANTIATIONS = core.instantiations(SOURCE, decay_values=(True,))
declare_groups(SOURCE, core.compile_groups(decay_values=(True,)))


@dataclass
class _Context(core.Saved):
    """What the backward of cupy:naive / chunked / chunked_seg needs."""
    g: object                # (N, T) float32 log decays (naive core)
    b: object                # (N, NC*C) within-chunk cumulative log decays (chunked cores), else None
    states: object           # the core's forward states (chunked), else None
    o: object                # float32 output (for d log_decay)
    scale: float


def _forward(impl, q, k, v, log_decay, scale=1.0):
    import cupy as cp
    g = log_decay.astype(cp.float32, copy=False)
    if impl != "naive":
        # float32 differences of within-chunk cumsums: accurate for log decays >= LOG_DECAY_FLOOR only,
        # and -inf would give inf - inf; refuse rather than return something silently wrong
        if g.size and float(g.min()) < LOG_DECAY_FLOOR:
            raise ValueError(f"decayed_attention: backend cupy:{impl} is accurate for log_decay >= "
                             f"{LOG_DECAY_FLOOR} only (got {float(g.min())}); cupy:chunked_mma (the default) "
                             f"and cupy:naive take any value in [-inf, 0]")
        b = core.chunk_cumsum(g, core.chunk_size(q.shape[-1], v.shape[-1]))
        o, H = core.core_forward(SOURCE, impl, q, k, v, True, scale, b=b)
    else:
        b = None
        o, H = core.core_forward(SOURCE, impl, q, k, v, True, scale, g=g)
    return o.astype(q.dtype, copy=False), _Context(impl, q, k, v, g, b, H, o, scale)


def _backward(ctx: _Context, do):
    import cupy as cp
    q, v = ctx.q, ctx.v
    decays = dict(b=ctx.b) if ctx.impl != "naive" else dict(g=ctx.g)
    dq, dk, dv = core.core_backward(SOURCE, ctx.impl, q, ctx.k, v, ctx.states, do, True, ctx.scale, **decays)
    dG = (do.astype(cp.float32, copy=False) * ctx.o).sum(-1) - (v.astype(cp.float32, copy=False) * dv).sum(-1)
    dg = cp.cumsum(dG[:, ::-1], axis=1)[:, ::-1]
    dg[:, 0] = 0          # exact: g_0 never enters a difference G_t - G_i (i <= t)
    return tuple(x.astype(q.dtype, copy=False) for x in (dq, dk, dv, dg))


core.register_variants("decayed", _forward, _backward, {
    "naive": "one thread per output row, decay accumulated along the row, O(T^2 D)",
    "chunked": "chunked: carried decayed Dk x Dv states (one chain over the chunks per state tile) "
               "+ C x C blocks, chunk-local log-decay cumsums; the fallback above head dim 128",
    "chunked_seg": "chunked, the decayed state chain cut into segments of 8 chunks run in parallel, then "
                   "joined",
}, tol={"float32": 1e-4, "float16": 2e-3})


# ----------------------------------------------------------------------------- tensor cores
# cupy:chunked_mma (float16, bfloat16; float32 as 3xTF32), cupy:chunked_mma_db (double-buffered chunk tiles)
# and cupy:chunked_mma_tf32: the tensor-core chunk core (kernels/cuda/chunked_mma.cu); d log_decay = reverse cumsum of q.dq - k.dk, formed in the kernels.
from workbench.state import DecayedState  # noqa: E402

from . import _chunked_mma as mma  # noqa: E402
from ._module import as_contiguous, as_dtype, dtype_name  # noqa: E402

INSTANTIATIONS = INSTANTIATIONS + mma.INSTANTIATIONS     # the kernels this module's variants launch


@dataclass
class _MMAContext:
    core: mma.CoreContext
    has_initial: bool        # an initial state was passed: the backward returns its gradient
    dtype: object            # the inputs' dtype (the gradients are returned in it)


# bfloat16: with bfloat16 operands the reverse cumsum of q.dq - k.dk (d log_decay) cancels beyond bfloat16's 8 bits
# (2.4e-2 - 3.0e-2 on the check cells, H200 callO; 3e-2 - 4e-2 at T = 16k in scripts/bf16_dg_model.py), so bfloat16
# runs the 16-bit core only with d log_decay from chunk anchors (_chunked_mma.ANCHORED) and its state operands as
# bfloat16 hi + lo pairs (_chunked_mma.STATE_PAIRS): where the dq-folded walk runs (padded head dims (64, 64)) and
# the variant's dk/dv mode is in BF16_ANCHORED_FROM (a mode listed there other than "anchor" is taken over by
# "anchor"); elsewhere, and with bf16_core="float32" (cupy:chunked_mma_bf16f32), the core runs in float32 (3xTF32).
# The default's mode ("fused": cupy:chunked_mma, _db) and "anchor" (cupy:chunked_mma_dqa): the anchors alone missed
# d log_decay with an initial state and log decays in [-30, 0] on the H200 (callH, callI: 2.3e-2 - 4.0e-2), the hi +
# lo state operands bring those cells to 1.5e-3 - 3.1e-3 (model and CPU emulator; decayed.md "Anchor +
# split-state").  To go back to the float32 core by default: ("anchor",).
BF16_ANCHORED_FROM = ("fused", "anchor")
BF16_CORES = ("anchored", "float32")


def _bf16_mode(dkdv: str, dk: int, dv: int, bf16_core: str):
    """The dk/dv mode a bfloat16 call runs its 16-bit core with ("anchor"), or None: the core in float32."""
    if bf16_core not in BF16_CORES:
        raise ValueError(f"bf16_core must be one of {BF16_CORES} (got {bf16_core!r})")
    if bf16_core == "anchored" and dkdv in BF16_ANCHORED_FROM and mma.folded(mma.pad_dim(dk), mma.pad_dim(dv),
                                                                              "anchor", True):
        return "anchor"
    return None


def _mma_forward(split, stages, q, k, v, log_decay, scale=1.0, initial_state=None, return_state=False, cu_seqlens=None,
                 dkdv="fused", bf16_core="anchored", xscale=False):
    import cupy as cp
    dt = q.dtype
    if dtype_name(dt) == "bfloat16":
        mode = _bf16_mode(dkdv, q.shape[-1], v.shape[-1], bf16_core)
        if mode is None:
            q, k, v = (x.astype(cp.float32) for x in (q, k, v))
        else:
            dkdv = mode
    # float16 and bfloat16 log decays go to the kernels as they are (read and converted exactly there, the walkers'
    # g_kind: no cast launch); others as float32
    g = as_contiguous(log_decay, log_decay.dtype if dtype_name(log_decay.dtype) in mma.LOG_DECAY_DTYPES
                      else cp.float32)
    S0 = None if initial_state is None else as_contiguous(initial_state.S, cp.float32)
    split, dkdv, xscale = mma.pairs_or_fallback(split, dkdv, xscale, q.shape[-1], v.shape[-1], decay=True)
    o, cctx = mma.forward(q, k, v, g, scale=scale, causal=True, split=split, S0=S0, want_final=return_state,
                          cu=cu_seqlens, stages=stages, dkdv=dkdv, xscale=xscale)
    o = as_dtype(o, dt)
    ctx = _MMAContext(cctx, initial_state is not None, dt)
    return ((o, DecayedState(mma.final_state(cctx))) if return_state else o), ctx


def _mma_backward(ctx: _MMAContext, do, dfinal=None):
    import cupy as cp
    dST = None if dfinal is None else as_contiguous(dfinal.S, cp.float32)
    dq, dk, dv, dg, dS0 = mma.backward(ctx.core, as_contiguous(do, mma.operand_dtype(ctx.core)), dST,
                                       dg_dtype=ctx.dtype)                  # tc_dg writes the caller's dtype
    dt = ctx.dtype
    grads = (as_dtype(dq, dt), as_dtype(dk, dt), as_dtype(dv, dt), as_dtype(dg, dt))
    return grads + ((DecayedState(dS0),) if ctx.has_initial else ())


def _mma_prepare(split, stages, options, shapes, dtype, dkdv="fused", bf16_core="anchored", xscale=False):
    """registry.Variant.prepare: _mma_forward / _mma_backward for one call signature (a _chunked_mma.CoreRun: plan,
    scale and d log_decay's dtype resolved once), or None: options this does not know, and bfloat16 where its core
    runs in float32 (the casts of q, k, v), take the general path.  bfloat16 on the anchored 16-bit core runs the
    core's mode for it (``_bf16_mode``), its log decays read as they are."""
    dt = dtype_name(dtype)
    if not options.keys() <= {"scale", "cu_seqlens"}:
        return None
    if dt == "bfloat16":
        dkdv = _bf16_mode(dkdv, shapes[0][-1], shapes[2][-1], bf16_core)
        if dkdv is None:
            return None
    split, dkdv, xscale = mma.pairs_or_fallback(split, dkdv, xscale, shapes[0][-1], shapes[2][-1], decay=True)
    run = mma.CoreRun(dt, shapes[0], shapes[2][-1], dtype, scale=options.get("scale", 1.0), split=split,
                      stages=stages, dkdv=dkdv, cu=options.get("cu_seqlens"), dg_dtype=dtype, n_grads=4, xscale=xscale)
    return run.forward, run.backward


def _mma_variant(name: str, split: int, stages: int, description: str, **kw):
    """A chunked_mma variant of decayed: ``_mma_forward`` with the split, stages and keywords ``kw`` (dkdv, bf16_core),
    its ``prepare`` alike; ``variant`` the Variant's other fields."""
    variant = kw.pop("variant", {})
    return Variant("decayed", "cupy", name, functools.partial(_mma_forward, split, stages, **kw), _mma_backward,
                   prepare=functools.partial(_mma_prepare, split, stages, **kw), leading_dims=True,
                   array_kind="cupy", gpu=True, form="linear",
                   features=frozenset({"state", "packed"}), description=description,
                   **{"dtypes": ("float32", "float16", "bfloat16"), "supports": _supports_mma, **variant})


def _supports_mma(options, shapes):
    dk, dv = shapes["q"][-1], shapes["v"][-1]
    if max(dk, dv) > mma.MAX_DIM:
        return f"head dims up to {mma.MAX_DIM} on tensor cores (Dk={dk}, Dv={dv})"
    return None


register(_mma_variant("chunked_mma", 3, 1, "tensor cores (mma.sync): chunks of 64, segment-carried states, "
                                           "in-kernel float64 log-decay cumsums; float32 as 3xTF32",
                      variant=dict(tol={"float32": 1e-4, "float16": 2e-2, "bfloat16": 2e-2}, default=True)))
register(_mma_variant("chunked_mma_db", 3, 2, mma.DOUBLE_BUFFERED))
for _mode, (_name, _desc) in mma.DKDV_DESCRIPTION.items():      # measured rungs of the dk/dv walkers
    if _mode in mma.WG_SEG_MODES:                                 # tg_seg_state takes no log decays: chunked_mma_dqr
        continue
    register(_mma_variant(_name, 3, 1, _desc, dkdv=_mode,
                          variant=dict(default_for=mma.DKDV_DEFAULT_FOR.get(("decayed", _mode), ()))))
register(_mma_variant("chunked_mma_dqa", 3, 1, "cupy:chunked_mma with dq folded into the dk/dv walk and d log_decay "
                                               "from chunk anchors at head dims <= 64 (dkdv='anchor'; bfloat16 on "
                                               "the 16-bit core there, its state operands as hi + lo pairs)",
                      dkdv="anchor"))
register(_mma_variant("chunked_mma_bf16f32", 3, 1, "cupy:chunked_mma for bfloat16 with the core in float32 (3xTF32) "
                                                   "at every head dim in every dk/dv mode (the default runs the "
                                                   "anchored 16-bit core at head dims <= 64; this keeps the float32 "
                                                   "core as a measured rung)",
                      bf16_core="float32", variant=dict(dtypes=("bfloat16",))))
register(_mma_variant("chunked_mma_tf32", 1, 1, "cupy:chunked_mma with float32 products on TF32 (1e-3 accuracy, "
                                                "opt-in)", variant=dict(dtypes=("float32",), tags=("tf32",))))


def _supports_mma_wgx(options, shapes):
    return mma.xscale_refusal(shapes["q"][-1], shapes["v"][-1], True)


register(_mma_variant("chunked_mma_wgx", 1, 1, "float32 on the float16 warpgroup-MMA walkers of cupy:chunked_mma_wgb: "
                                               "q, k, v and do rounded to float16 under a power-of-two scale per "
                                               "leading index (TF32's 11 significant bits), float32 accumulation and "
                                               "results; head dims <= 64, compute capability 9.0 (opt-in, tf32 "
                                               "tolerance)", dkdv=mma.XS_MODE, xscale=True,
                      variant=dict(dtypes=("float32",), tags=("tf32",), supports=_supports_mma_wgx)))
register(_mma_variant("chunked_mma_wgp", 1, 1, "float32 on the float16 warpgroup-MMA walkers with log decays as hi + lo "
                                               "pairs (three products each: float32 accuracy) under a power-of-two "
                                               "scale per leading index; head dims <= 64, compute capability 9.0, else "
                                               "cupy:chunked_mma_dqr's kernels (3xTF32)", dkdv=mma.XS_MODE, xscale=2,
                      variant=dict(dtypes=("float32",), tol={"float32": 1e-4})))
register(_mma_variant("chunked_mma_wgpa", 1, 1, "cupy:chunked_mma_wgp with the walkers' float32 tiles staged by cp.async "
                                                "where each hi + lo pair will lie and split in place by the thread "
                                                "that copied them (no planes pass)", dkdv=mma.XS_MODE, xscale=4,
                      variant=dict(dtypes=("float32",), tol={"float32": 1e-4})))
register(_mma_variant("chunked_mma_wgpt", 1, 1, "cupy:chunked_mma_wgpa with each chunk tile split under its own power "
                                                "of two, found by the walkers (no exponent pass)", dkdv=mma.XS_MODE,
                      xscale=5, variant=dict(dtypes=("float32",), tol={"float32": 1e-4})))
