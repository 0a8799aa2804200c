"""CuPy softmax attention: three variants over kernels/cuda/softmax.cu (read its header for the math).

  cupy:naive      one warp per row; forward = online softmax over keys; backward = a warp per query row
                  (dq, and D_t = do_t.o_t) then a warp per key row (dk, dv).  Any head dim <= 256.
  cupy:flash      FlashAttention-2 tiling on CUDA cores (float32 FMAs): 64x64 tiles (32x32 above head dim
                  128) in shared memory, online softmax, float32 log-sum-exp saved for the backward.
                  Backward: D_t pre-pass, a kernel over key tiles (dk, dv), a kernel over query tiles (dq).
  cupy:flash_mma  the same tiling on tensor cores (mma.sync m16n8k16, float16/bfloat16 in, float32
                  accumulate), forward and backward; head dims above 128 run cupy:flash's kernels.

Mapping onto the derivation in workbench/reference/softmax.py: every forward saves lse (float32); every
backward recomputes p = exp(a - lse) tile by tile, forms D = rowsum(do * o), dv = p^T do,
ds = p (do v^T - D), dq = scale ds k, dk = scale ds^T q.  No T x T matrix is stored.

Head dims: the tiled kernels are templates over a head-dim bucket D (32, 64, 128, 256; mma: 32, 64, 128)
with the actual dk, dv passed at run time; loads zero-fill the padding, so dk != dv and odd head dims
are exact.  Outputs are allocated with ``backends.new_output`` (NaN-filled while poisoning, so an unwritten
element shows in the checks; uninitialised otherwise).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from workbench.backends import new_output
from workbench.registry import Variant, register

from ._module import declare_groups, get_kernel, launch

SOURCE = "softmax.cu"
LOG2E = 1.0 / math.log(2.0)
MAX_HEAD_DIM = 256
CTYPE = {"float32": "float", "float16": "wb_half", "bfloat16": "wb_bf16"}
FLASH_BUCKETS = (32, 64, 128, 256)
MMA_BUCKETS = (32, 64, 128)
NAIVE_THREADS, FLASH_THREADS, MMA_THREADS = 128, 256, 128


def _bucket(d: int, buckets) -> int:
    for b in buckets:
        if d <= b:
            return b
    raise ValueError(f"head dim {d} > {buckets[-1]}")


# Tile shapes, per kernel kind ("fwd", "dkdv", "dq") and head-dim bucket: (rows per block, inner tile).
# CUDA-core kernels: rows = queries (fwd, dq) or keys (dkdv), 16 rows per thread group of 16 lanes, so a
# thread owns rows / 16 rows.  Tensor-core kernels: 64 rows per block (4 warps x 16); the inner tile is
# the query tile of dkdv and the key tile of dq (the forward's is 64).  TILES holds what runs;
# CANDIDATES are compiled too so a device run can time them against TILES (kernels/cupy/_device_softmax.py).
TILES = {("flash", D, kind): ((64, 64) if D <= 128 else (32, 32)) for D in FLASH_BUCKETS
         for kind in ("fwd", "dkdv", "dq")}
TILES.update({("mma", D, kind): (64, 64 if (D <= 64 or kind != "dq") else 32) for D in MMA_BUCKETS
              for kind in ("fwd", "dkdv", "dq")})
# measured on the H100 (docs/kernels/softmax.md): 128-query forward tiles win at D <= 64 (fp32 D=64
# T=4096: 3.00 -> 2.58 ms), lose at D=128; 128-key dkdv tiles lose (5.7 -> 8.4 ms); the tensor-core
# dkdv wins with a 64-query tile at D=128 (25.7 -> 23.8 ms at T=16384), its dq loses (14.9 -> 17.1 ms).
TILES.update({("flash", D, "fwd"): (128, 64) for D in (32, 64)})
CANDIDATES = {("flash", D, "fwd"): (64, 64) for D in (32, 64)}
CANDIDATES[("flash", 128, "fwd")] = (128, 64)
CANDIDATES.update({("flash", D, kind): (128, 64) for D in (32, 64) for kind in ("dkdv", "dq")})
CANDIDATES.update({("mma", 128, "dq"): (64, 64), ("mma", 128, "dkdv"): (64, 32)})

def tiles(family: str, D: int, kind: str) -> tuple:
    return TILES[(family, D, kind)]


def _expr(family: str, ctype: str, D: int, kind: str, t: tuple) -> str:
    if family == "flash":
        return f"flash_{'bwd_' if kind != 'fwd' else ''}{kind}<{ctype}, {D}, {t[0]}, {t[1]}>"
    return f"mma_fwd<{ctype}, {D}>" if kind == "fwd" else f"mma_bwd_{kind}<{ctype}, {D}, {t[1]}>"


@functools.lru_cache(maxsize=None)
def expressions(family: str, ctype: str) -> tuple:
    """Every template instantiation of one family for one storage type (compiled together)."""
    if family == "naive":
        return tuple(f"{k}<{ctype}>" for k in ("naive_fwd", "naive_bwd_dq", "naive_bwd_dkdv"))
    out = [f"bwd_dot<{ctype}>"]
    for table in (TILES, CANDIDATES):
        for (fam, D, kind), t in sorted(table.items()):
            if fam == family:
                out.append(_expr(family, ctype, D, kind, t))
    return tuple(dict.fromkeys(out))


_FAMILY_DTYPES = {"naive": ("float32", "float16", "bfloat16"), "flash": ("float32", "float16", "bfloat16"),
                  "mma": ("float16", "bfloat16")}
# (source, name expression) of every kernel this module can launch: read by the NVRTC compile test.
INSTANTIATIONS = [(SOURCE, e) for fam, dts in _FAMILY_DTYPES.items() for dt in dts
                  for e in expressions(fam, CTYPE[dt])]


declare_groups(SOURCE, [expressions(fam, CTYPE[dt]) for fam, dts in _FAMILY_DTYPES.items() for dt in dts])


@functools.lru_cache(maxsize=None)
def _kernel(family: str, ctype: str, expr: str):
    return get_kernel(SOURCE, expr, group=expressions(family, ctype))


@functools.lru_cache(maxsize=None)
def _ctype(dtype) -> str:
    return CTYPE[str(dtype)]


# ----------------------------------------------------------------------------- shared memory (bytes)
def smem_flash(kind: str, D: int, t: tuple = None) -> int:
    br, bc = t or tiles("flash", D, kind)
    ld = D + 1
    if kind == "fwd":
        return 4 * ((br + 2 * bc) * ld + br * (bc + 1))
    if kind == "dkdv":
        return 4 * (2 * (br + bc) * ld + 2 * br * (bc + 1) + 2 * bc)
    return 4 * (2 * (br + bc) * ld + br * (bc + 1))          # dq


def smem_mma(kind: str, D: int, t: tuple = None) -> int:
    ldh, inner = D + 8, (t or tiles("mma", D, kind))[1]
    if kind == "fwd":
        return 2 * 3 * 64 * ldh
    if kind == "dkdv":
        return 2 * (2 * 64 + 2 * inner) * ldh + 8 * inner
    return 2 * (2 * 64 + 2 * inner) * ldh                     # dq


# ----------------------------------------------------------------------------- forward / backward
def _plan(family: str, dk: int, dv: int) -> tuple:
    """(family actually run, head-dim bucket): flash_mma above head dim 128 runs the flash kernels."""
    d = max(dk, dv)
    if family == "mma" and d <= MMA_BUCKETS[-1]:
        return "mma", _bucket(d, MMA_BUCKETS)
    if family == "naive":
        return "naive", 0
    return "flash", _bucket(d, FLASH_BUCKETS)


def _forward(family, q, k, v, causal=True, scale=1.0):
    import cupy as cp
    N, T, dk = q.shape
    dv = v.shape[-1]
    ct = _ctype(q.dtype)
    fam, D = _plan(family, dk, dv)
    o = new_output(cp, (N, T, dv), q.dtype)
    lse = new_output(cp, (N, T), cp.float32)
    args = (q, k, v, o, lse, np.int32(N), np.int32(T), np.int32(dk), np.int32(dv),
            np.float32(scale * LOG2E), np.int32(bool(causal)))
    if fam == "naive":
        rows = N * T
        launch(_kernel(fam, ct, f"naive_fwd<{ct}>"), (-(-rows // (NAIVE_THREADS // 32)),), (NAIVE_THREADS,), args)
    else:
        t = tiles(fam, D, "fwd")
        smem = smem_flash("fwd", D) if fam == "flash" else smem_mma("fwd", D)
        launch(_kernel(fam, ct, _expr(fam, ct, D, "fwd", t)), (-(-T // t[0]) * N,),
               (FLASH_THREADS if fam == "flash" else MMA_THREADS,), args, smem)
    return o, (family, q, k, v, o, lse, bool(causal), float(scale))


def _backward(ctx, do):
    import cupy as cp
    family, q, k, v, o, lse, causal, scale = ctx
    if do.dtype != q.dtype or not do.flags.c_contiguous:
        do = cp.ascontiguousarray(do, dtype=q.dtype)
    N, T, dk = q.shape
    dv = v.shape[-1]
    ct = _ctype(q.dtype)
    fam, D = _plan(family, dk, dv)
    dq, dk_, dv_ = (new_output(cp, x.shape, x.dtype) for x in (q, k, v))
    Dbuf = new_output(cp, (N, T), cp.float32)
    dims = (np.int32(N), np.int32(T), np.int32(dk), np.int32(dv), np.float32(scale * LOG2E),
            np.float32(scale), np.int32(causal))
    if fam == "naive":
        grid = (-(-N * T // (NAIVE_THREADS // 32)),)
        launch(_kernel(fam, ct, f"naive_bwd_dq<{ct}>"), grid, (NAIVE_THREADS,),
               (q, k, v, o, lse, do, dq, Dbuf) + dims)
        launch(_kernel(fam, ct, f"naive_bwd_dkdv<{ct}>"), grid, (NAIVE_THREADS,),
               (q, k, v, lse, Dbuf, do, dk_, dv_) + dims)
        return dq, dk_, dv_
    launch(_kernel(fam, ct, f"bwd_dot<{ct}>"), (-(-N * T // 8),), (256,), (o, do, Dbuf, np.int64(N * T), np.int32(dv)))
    threads = FLASH_THREADS if fam == "flash" else MMA_THREADS
    smem = smem_flash if fam == "flash" else smem_mma
    for kind, outs in (("dkdv", (dk_, dv_)), ("dq", (dq,))):
        t = tiles(fam, D, kind)
        launch(_kernel(fam, ct, _expr(fam, ct, D, kind, t)), (-(-T // t[0]) * N,), (threads,),
               (q, k, v, lse, Dbuf, do) + outs + dims, smem(kind, D))
    return dq, dk_, dv_


def _supports(options, shapes):
    dk, dv = shapes["q"][-1], shapes["v"][-1]
    if max(dk, dv) > MAX_HEAD_DIM:
        return f"head dims up to {MAX_HEAD_DIM} (got Dk={dk}, Dv={dv})"
    return None


def _make(family):
    def forward(q, k, v, causal=True, scale=1.0):
        return _forward(family, q, k, v, causal=causal, scale=scale)
    return forward


register(Variant("softmax", "cupy", "naive", _make("naive"), _backward, dtypes=_FAMILY_DTYPES["naive"],
                 array_kind="cupy", gpu=True, supports=_supports,
                 description="one warp per row, online softmax; backward warp per query row (dq) and per "
                             "key row (dk, dv), recomputing p from the saved lse",
                 tol={"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}))
register(Variant("softmax", "cupy", "flash", _make("flash"), _backward, dtypes=_FAMILY_DTYPES["flash"],
                 array_kind="cupy", gpu=True, default=True, supports=_supports,
                 description="FlashAttention-2 tiles on CUDA cores (fp32 FMA), saved lse; backward: D pre-pass, "
                             "key-tile kernel (dk, dv), query-tile kernel (dq)",
                 tol={"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}))
register(Variant("softmax", "cupy", "flash_mma", _make("mma"), _backward, dtypes=_FAMILY_DTYPES["mma"],
                 array_kind="cupy", gpu=True, supports=_supports, default_for=("float16", "bfloat16"),
                 description="flash tiling on tensor cores (mma.sync m16n8k16, fp32 accumulate), forward and "
                             "backward; head dims > 128 run cupy:flash's kernels",
                 tol={"float16": 2e-3, "bfloat16": 2e-2}))
