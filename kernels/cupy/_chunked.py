"""Launch code shared by the linear, decayed and ZeroS CuPy kernels: the decayed linear-attention core.

The core (kernels/cuda/chunked.cuh) computes, per leading index,

    out_r = scale * sum_{c visible from r} exp(L_r - L_c) (X_r . Y_c) Z_c

and its backward is three more calls of itself (dq = core(do, v, k), dk = core_rev(v, do, q),
dv = core_rev(k, q, do)).  Two implementations:
  "naive":   naive_out, one thread per output row, O(T^2 (dx + dz)), per-token log decays ``g``.
  "chunked": chunk_state (carried Dk x Dv states, one sequential pass over chunks per state tile) and
             chunk_out (one block per chunk x 64 output columns: C x C block + state), chunk-local
             cumulative log decays ``b`` (N, NC*C).
  "chunked_seg": the same, with the state pass cut into segments of SEGMENT chunks run in parallel and
             joined by state_combine (see ``states``).
All outputs are float32 (``backends.new_output``: NaN-filled while poisoning); the op modules cast to the
input dtype.

Compile groups (``compile_groups``, declared by each op module): per storage type, the state kernels of both
chunk lengths and the naive kernels; per storage type, chunk length and padded head dim, the chunk_out
kernels; state_combine alone.  A call at one head dim compiles only its bucket.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from workbench.backends import new_output

from ._module import CTYPE, get_kernel, launch, padded_dim

DIMS = (32, 64, 128, 256)          # padded contraction dims (template DXP)
MAX_DIM = DIMS[-1]
THREADS = 256
BV = 64                            # output-column tile of chunk_out
BS = 32                            # state tile of chunk_state
SEGMENT = 8                        # chunks per segment of the segmented state pass (states())
# impl -> chunks per segment of the state pass: "chunked" walks all chunks in one chain per state tile;
# "chunked_seg" cuts the chain into segments run in parallel.  Measured on the H100 (docs/kernels/linear.md):
# chunked_seg is 0-20% slower at T = 4k..64k except fp16 backward -- the chain was not the bottleneck.
SEGMENTS = {"chunked": 0, "chunked_seg": SEGMENT}

_TI = {dt: CTYPE[dt] for dt in ("float32", "float16")}


def pad_dim(d: int) -> int:
    return padded_dim(d, DIMS)


def chunk_size(dk: int, dv: int) -> int:
    """Chunk length: 64 while both head dims fit 128 (shared memory), else 32."""
    return 64 if max(dk, dv) <= 128 else 32


def _b(x):
    return "true" if x else "false"


def out_smem_bytes(dxp: int, C: int) -> int:
    return 4 * (C * (dxp + 1) + max(C * (dxp + 1), dxp * (BV + 1)) + C * (C + 1) + C * (BV + 1) + C)


def state_expr(ti, C, decay, rev):
    return f"chunk_state<{ti}, {C}, {_b(decay)}, {_b(rev)}>"


def combine_expr(decay, rev):
    return f"state_combine<{_b(decay)}, {_b(rev)}>"


def out_expr(ti, dxp, C, decay, causal, rev):
    return f"chunk_out<{ti}, {dxp}, {C}, {_b(decay)}, {_b(causal)}, {_b(rev)}>"


def naive_expr(ti, decay, causal, rev):
    return f"naive_out<{ti}, {_b(decay)}, {_b(causal)}, {_b(rev)}>"


def compile_groups(decay_values=(False,), dtypes=("float32", "float16")) -> list:
    """The name expressions the core can launch for the given decay flags, as compile groups (module doc)."""
    decays = sorted(set(decay_values))
    combos = [(d, True, r) for d in decays for r in (False, True)]
    if False in decays:
        combos += [(False, False, r) for r in (False, True)]
    groups = [tuple(combine_expr(d, rev) for d in decays for rev in (False, True))]
    for dt in dtypes:
        ti = _TI[dt]
        groups.append(tuple([state_expr(ti, C, d, rev) for C in (64, 32) for d in decays for rev in (False, True)]
                            + [naive_expr(ti, d, causal, rev) for d, causal, rev in combos]))
        for C in (64, 32):
            for dxp in DIMS:
                if C == 64 and dxp > 128:
                    continue
                groups.append(tuple(out_expr(ti, dxp, C, d, causal, rev) for d, causal, rev in combos))
    return groups


def instantiations(source: str, decay_values=(False,), dtypes=("float32", "float16")) -> list:
    """Every (source, name_expression) the core can launch for the given decay flags."""
    return [(source, e) for g in compile_groups(decay_values, dtypes) for e in g]


# ----------------------------------------------------------------------------- launches
@functools.lru_cache(maxsize=None)
def _ti_of(dtype) -> str:
    name = str(dtype)
    if name not in _TI:
        raise TypeError(f"CuPy core kernels take float32 or float16, got {name}")
    return _TI[name]


def _ti(x):
    return _ti_of(x.dtype)


_DUMMIES: dict = {}       # device id -> a one-element float32 array passed for the unused decay pointer


def _dummy():
    import cupy as cp
    dev = cp.cuda.runtime.getDevice()
    d = _DUMMIES.get(dev)
    if d is None:
        d = _DUMMIES[dev] = cp.zeros(1, cp.float32)
    return d


@functools.lru_cache(maxsize=None)
def _kernel(source: str, expr: str):
    return get_kernel(source, expr)


def states(source, A, B, b, C, decay, rev, segment=None):
    """(N, NC+1, da, db) float32: forward prefix states (H[c] = chunks < c, H[NC] = total) or, with rev,
    suffix states (H[c] = chunks >= c, H[0] = total).

    chunk_state walks the chunks one after another in (da/32)(db/32) N blocks -- 128 blocks at N = 32,
    D = 64, a latency-bound chain of NC steps.  When T = NC C with NC a multiple of ``segment`` (default
    SEGMENT) and at least two segments, the chain is cut: chunk_state runs on every segment at once (the
    inputs viewed as N NSEG sequences of ``segment`` chunks) and state_combine adds the carried states."""
    import cupy as cp
    N, T, da = A.shape
    db = B.shape[-1]
    NC = -(-T // C)
    L = SEGMENT if segment is None else segment
    seg = L > 0 and T == NC * C and NC % L == 0 and NC >= 2 * L
    n_seq, T_seq, NC_seq = (N * (NC // L), L * C, L) if seg else (N, T, NC)
    Hs = new_output(cp, (n_seq, NC_seq + 1, da, db), cp.float32)
    kern = _kernel(source, state_expr(_ti(A), C, decay, rev))
    grid = (-(-db // BS), -(-da // BS), n_seq)
    kern(grid, (THREADS,), (A, B, b if decay else _dummy(), Hs, np.int32(T_seq), np.int32(da), np.int32(db),
                            np.int32(NC_seq)))
    if not seg:
        return Hs
    H = new_output(cp, (N, NC + 1, da, db), cp.float32)
    E = da * db
    _kernel(source, combine_expr(decay, rev))((-(-E // 256), N), (256,),
                                              (Hs, b if decay else _dummy(), H, np.int32(NC), np.int32(L),
                                               np.int32(C), np.int32(E)))
    return H


def out(source, X, Y, Z, b, H, hs, slot_off, C, decay, causal, rev, scale):
    """(N, T, dz) float32: the chunk_out launch; hs = (stride of H's X index, stride of its Z index)."""
    import cupy as cp
    N, T, dx = X.shape
    dz = Z.shape[-1]
    NC = -(-T // C)
    dxp = pad_dim(dx)
    o = new_output(cp, (N, T, dz), cp.float32)
    kern = _kernel(source, out_expr(_ti(X), dxp, C, decay, causal, rev))
    launch(kern, (NC, N, -(-dz // BV)), (THREADS,),
           (X, Y, Z, b if decay else _dummy(), H, o, np.int32(T), np.int32(dx), np.int32(dz), np.int32(NC),
            np.int32(slot_off), np.int64(hs[0]), np.int64(hs[1]), np.float32(scale)), out_smem_bytes(dxp, C))
    return o


def naive(source, X, Y, Z, g, decay, causal, rev, scale):
    import cupy as cp
    N, T, dx = X.shape
    dz = Z.shape[-1]
    o = new_output(cp, (N, T, dz), cp.float32)
    kern = _kernel(source, naive_expr(_ti(X), decay, causal, rev))
    kern((-(-T // 128), N), (128,), (X, Y, Z, g if decay else _dummy(), o, np.int32(T), np.int32(dx),
                                    np.int32(dz), np.float32(scale)))
    return o


# ----------------------------------------------------------------------------- the core, fwd + bwd
def core_forward(source, impl, q, k, v, causal, scale, b=None, g=None):
    """o (float32) and what the backward needs.  impl "chunked" takes b (chunk-local cumulative log
    decays, (N, NC*C) float32, or None), impl "naive" takes g (per-token log decays, (N, T), or None)."""
    decay = (b is not None) if impl != "naive" else (g is not None)
    if decay and not causal:
        raise ValueError("a decayed core must be causal")
    if impl == "naive":
        return naive(source, q, k, v, g, decay, causal, False, scale), None
    N, T, dk = q.shape
    dv = v.shape[-1]
    C = chunk_size(dk, dv)
    NC = -(-T // C)
    H = states(source, k, v, b, C, decay, False, segment=SEGMENTS[impl])
    o = out(source, q, k, v, b, H, (dv, 1), 0 if causal else NC, C, decay, causal, False, scale)
    return o, H


def core_backward(source, impl, q, k, v, H, do, causal, scale, b=None, g=None):
    """(dq, dk, dv) float32.  do must have q's dtype."""
    decay = (b is not None) if impl != "naive" else (g is not None)
    if impl == "naive":
        dq = naive(source, do, v, k, g, decay, causal, False, scale)
        Dk = naive(source, v, do, q, g, decay, causal, True, scale)
        Dv = naive(source, k, q, do, g, decay, causal, True, scale)
        return dq, Dk, Dv
    N, T, dk = q.shape
    dv = v.shape[-1]
    C = chunk_size(dk, dv)
    NC = -(-T // C)
    dH = states(source, q, do, b, C, decay, True, segment=SEGMENTS[impl])
    dq = out(source, do, v, k, b, H, (1, dv), 0 if causal else NC, C, decay, causal, False, scale)
    Dk = out(source, v, do, q, b, dH, (1, dv), 1 if causal else 0, C, decay, causal, True, scale)
    Dv = out(source, k, q, do, b, dH, (dv, 1), 1 if causal else 0, C, decay, causal, True, scale)
    return dq, Dk, Dv


# ----------------------------------------------------------------------------- the variants on this core
@dataclass
class Saved:
    """The first fields of the context of every variant on this core: the implementation that ran ("naive",
    "chunked" or "chunked_seg") and the forward's q, k, v."""
    impl: str
    q: object
    k: object
    v: object


def supports(options, shapes):
    """Head dims up to MAX_DIM (the padded contraction dims of chunk_out)."""
    dk, dv = shapes["q"][-1], shapes["v"][-1]
    if max(dk, dv) > MAX_DIM:
        return f"head dims up to {MAX_DIM} (Dk={dk}, Dv={dv})"
    return None


def register_variants(op: str, forward, backward, descriptions: dict, tol: dict, supports=supports) -> None:
    """Register an op's cupy:naive, cupy:chunked and cupy:chunked_seg (float32 and float16 on CUDA cores):
    ``forward(impl, *arrays, **options)`` with the implementation bound per variant, one ``backward``
    (the context records the implementation); descriptions: impl -> text."""
    from workbench.registry import Variant, register
    for impl, description in descriptions.items():
        register(Variant(op, "cupy", impl, functools.partial(forward, impl), backward, dtypes=("float32", "float16"),
                         array_kind="cupy", gpu=True, supports=supports, description=description,
                         form="quadratic" if impl == "naive" else "linear", tol=tol))


def chunk_cumsum(g, C):
    """b: (N, NC*C) float32 within-chunk cumulative sums of g (N, T), padded with zeros past T (so the
    padded positions repeat the chunk's last value)."""
    import cupy as cp
    N, T = g.shape
    NC = -(-T // C)
    if T == NC * C:
        gp = g if g.dtype == cp.float32 else g.astype(cp.float32)
    else:
        gp = cp.zeros((N, NC * C), cp.float32)
        gp[:, :T] = g
    return cp.cumsum(gp.reshape(N, NC, C), axis=2).reshape(N, NC * C)
