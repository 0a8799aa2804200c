"""CuPy softmax attention: seven variants over kernels/cuda/softmax.cu (read its header for the math).

  cupy:naive      one warp per row; forward = online softmax over keys; backward = a warp per query row
                  (dq, and D_t = do_t.o_t) then a warp per key row (dk, dv).  Any head dim <= 256.
  cupy:flash      FlashAttention-2 tiling on CUDA cores (float32 FMAs): 64x64 tiles (32x32 above head dim
                  128) in shared memory, online softmax, float32 log-sum-exp saved for the backward.
                  Backward: D_t pre-pass, a kernel over key tiles (dk, dv), a kernel over query tiles (dq).
  cupy:flash_mma  the same tiling on tensor cores (mma.sync m16n8k16, float16/bfloat16 in, float32
                  accumulate), forward and backward; head dims above 128 run cupy:flash's kernels.
  cupy:fa2        FlashAttention-2's schedule on tensor cores (float16/bfloat16):
                  cp.async-pipelined K/V tiles, 128-query blocks, one-pass backward with dq by float32 atomics.
  cupy:fa2_det    fa2's forward with flash_mma's deterministic backward.
  cupy:fa2_3xtf32, cupy:fa2_tf32   fa2 for float32 on TF32 tensor cores, split 3xTF32 (float32 accuracy) or
                  one TF32 product (tagged "tf32": TF32 accuracy).  Host side in the "fa2" section at the end.

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
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from workbench import backends
from workbench.registry import Variant, register

from . import _packing as packing
from ._module import (CTYPE, Prepared, as_contiguous, declare_groups, dtype_name, f32, flat3, get_kernel, launch,
                      lead_size, memset_async)

SOURCE = "softmax.cu"
LOG2E = 1.0 / math.log(2.0)
MAX_HEAD_DIM = 256
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
# the query tile of dkdv and the key tile of dq (the forward's is 64).  TILES holds what runs (the tiles
# measured against them and not kept: docs/kernels/softmax.md).
TILES = {("flash", D, kind): ((64, 64) if D <= 128 else (32, 32)) for D in FLASH_BUCKETS
         for kind in ("fwd", "dkdv", "dq")}
TILES.update({("mma", D, kind): (64, 64 if (D <= 64 or kind != "dq") else 32) for D in MMA_BUCKETS
              for kind in ("fwd", "dkdv", "dq")})
# measured on the H100 (docs/kernels/softmax.md): 128-query forward tiles win at D <= 64 (fp32 D=64
# T=4096: 3.00 -> 2.58 ms), lose at D=128; 128-key dkdv tiles lose (5.7 -> 8.4 ms); the tensor-core
# dkdv wins with a 64-query tile at D=128 (25.7 -> 23.8 ms at T=16384), its dq loses (14.9 -> 17.1 ms).
TILES.update({("flash", D, "fwd"): (128, 64) for D in (32, 64)})

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
    for (fam, D, kind), t in sorted(TILES.items()):
        if fam == family:
            out.append(_expr(family, ctype, D, kind, t))
    return tuple(dict.fromkeys(out))


_FAMILY_DTYPES = {"naive": ("float32", "float16", "bfloat16"), "flash": ("float32", "float16", "bfloat16"),
                  "mma": ("float16", "bfloat16")}
# (source, name expression) of every kernel this module can launch: read by the NVRTC compile test.
INSTANTIATIONS = [(SOURCE, e) for fam, dts in _FAMILY_DTYPES.items() for dt in dts
                  for e in expressions(fam, CTYPE[dt])]
# the fa2 kernels (section "fa2" at the end of this file) are appended there


declare_groups(SOURCE, [expressions(fam, CTYPE[dt]) for fam, dts in _FAMILY_DTYPES.items() for dt in dts])


@functools.lru_cache(maxsize=None)
def _kernel(family: str, ctype: str, expr: str):
    return get_kernel(SOURCE, expr, group=expressions(family, ctype))


def _ctype(dtype) -> str:
    return CTYPE[dtype_name(dtype)]


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


@dataclass
class _Context:
    """What the backward of cupy:naive / flash / flash_mma needs."""
    family: str             # the kernel family asked for: "naive", "flash" or "mma"
    q: object
    k: object
    v: object
    o: object
    lse: object             # (N, T) float32 log-sum-exp of every row
    causal: bool
    scale: float
    cu: Optional[tuple] = None   # packed sequences (cu_seqlens; the mma backward kernels of cupy:fa2_det), or None


def _forward(family, q, k, v, causal=True, scale=1.0):
    import cupy as cp
    N, T, Dk = q.shape
    Dv = v.shape[-1]
    ct = _ctype(q.dtype)
    fam, D = _plan(family, Dk, Dv)
    o = backends.new_output(cp, (N, T, Dv), q.dtype)
    lse = backends.new_output(cp, (N, T), cp.float32)
    args = (q, k, v, o, lse, np.int32(N), np.int32(T), np.int32(Dk), np.int32(Dv),
            np.float32(scale * LOG2E), np.int32(bool(causal)))
    if fam == "naive":
        rows = N * T
        launch(_kernel(fam, ct, f"naive_fwd<{ct}>"), (-(-rows // (NAIVE_THREADS // 32)),), (NAIVE_THREADS,), args)
    else:
        t = tiles(fam, D, "fwd")
        smem = smem_flash("fwd", D) if fam == "flash" else smem_mma("fwd", D)
        launch(_kernel(fam, ct, _expr(fam, ct, D, "fwd", t)), (-(-T // t[0]) * N,),
               (FLASH_THREADS if fam == "flash" else MMA_THREADS,), args, smem)
    return o, _Context(family, q, k, v, o, lse, bool(causal), float(scale))


def _backward(ctx: _Context, do):
    import cupy as cp
    q, k, v, o, lse, scale = ctx.q, ctx.k, ctx.v, ctx.o, ctx.lse, ctx.scale
    do = as_contiguous(do, q.dtype)
    N, T, Dk = q.shape
    Dv = v.shape[-1]
    ct = _ctype(q.dtype)
    fam, D = _plan(ctx.family, Dk, Dv)
    dq, dk, dv = (backends.new_output(cp, x.shape, x.dtype) for x in (q, k, v))
    Dbuf = backends.new_output(cp, (N, T), cp.float32)
    dims = (np.int32(N), np.int32(T), np.int32(Dk), np.int32(Dv), np.float32(scale * LOG2E),
            np.float32(scale), np.int32(ctx.causal))
    if fam == "naive":
        grid = (-(-N * T // (NAIVE_THREADS // 32)),)
        launch(_kernel(fam, ct, f"naive_bwd_dq<{ct}>"), grid, (NAIVE_THREADS,),
               (q, k, v, o, lse, do, dq, Dbuf) + dims)
        launch(_kernel(fam, ct, f"naive_bwd_dkdv<{ct}>"), grid, (NAIVE_THREADS,),
               (q, k, v, lse, Dbuf, do, dk, dv) + dims)
        return dq, dk, dv
    launch(_kernel(fam, ct, f"bwd_dot<{ct}>"), (-(-N * T // 8),), (256,), (o, do, Dbuf, np.int64(N * T), np.int32(Dv)))
    threads = FLASH_THREADS if fam == "flash" else MMA_THREADS
    smem = smem_flash if fam == "flash" else smem_mma
    seqs = packing.kernel_args(ctx.cu) if fam == "mma" else ()
    for kind, outs in (("dkdv", (dk, dv)), ("dq", (dq,))):
        t = tiles(fam, D, kind)
        launch(_kernel(fam, ct, _expr(fam, ct, D, kind, t)), (-(-T // t[0]) * N,), (threads,),
               (q, k, v, lse, Dbuf, do) + outs + dims + seqs, smem(kind, D))
    return dq, dk, dv


def _supports(options, shapes):
    dk, dv = shapes["q"][-1], shapes["v"][-1]
    if max(dk, dv) > MAX_HEAD_DIM:
        return f"head dims up to {MAX_HEAD_DIM} (got Dk={dk}, Dv={dv})"
    return None


register(Variant("softmax", "cupy", "naive", functools.partial(_forward, "naive"), _backward,
                 dtypes=_FAMILY_DTYPES["naive"], array_kind="cupy", gpu=True, supports=_supports,
                 description="one warp per row, online softmax; backward warp per query row (dq) and per "
                             "key row (dk, dv), recomputing p from the saved lse",
                 tol={"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}))
register(Variant("softmax", "cupy", "flash", functools.partial(_forward, "flash"), _backward,
                 dtypes=_FAMILY_DTYPES["flash"], array_kind="cupy", gpu=True, default=True, supports=_supports,
                 description="FlashAttention-2 tiles on CUDA cores (fp32 FMA), saved lse; backward: D pre-pass, "
                             "key-tile kernel (dk, dv), query-tile kernel (dq)",
                 tol={"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}))
register(Variant("softmax", "cupy", "flash_mma", functools.partial(_forward, "mma"), _backward,
                 dtypes=_FAMILY_DTYPES["mma"], array_kind="cupy", gpu=True, supports=_supports,
                 description="flash tiling on tensor cores (mma.sync m16n8k16, fp32 accumulate), forward and "
                             "backward; head dims > 128 run cupy:flash's kernels",
                 tol={"float16": 2e-3, "bfloat16": 2e-2}))


# ============================================================================= fa2 (softmax.cu section 3)
# Host side of cupy:fa2, fa2_det, fa2_tf32 and fa2_3xtf32, kept apart from the launch path above.  Whatever
# does not depend on N or T (kernels, tiles, shared-memory sizes, int32 head dims) is computed once per
# (operand policy, dtype, dk, dv) by _fa2_plan; a call allocates its outputs and, in the backward above
# FA2_KEY_BLOCK tokens, one float32 buffer holding D and (float16/bfloat16) the dq accumulator.  Up to
# FA2_KEY_BLOCK tokens the backward is one launch of fa2_bwd (direct mode: one key block per sequence forms D and
# stores dq itself).  Above it, up to a spec's one_launch_max_t tokens (float16 / bfloat16 at head dims up to 64),
# the backward is one launch of fa2_bwd_one (key blocks for dk, dv and query blocks for dq, each forming D: no
# float32 buffer, no pre / post kernels); up to tail_max_t tokens (float16 / bfloat16 at head dims up to 64, no
# packed sequences) fa2_bwd_pre and fa2_bwd_tail (dq added atomically and cast by the key blocks that complete a
# query tile); other calls run fa2_bwd_pre, fa2_bwd (dq added atomically) and fa2_dq_post.  Head dims above
# FA2_BUCKETS[-1] run cupy:flash's kernels.
FA2_BUCKETS = (32, 64, 128)
FA_THREADS = 128
FA2_KEY_BLOCK = 64                  # keys per backward block (BK in softmax.cu); T up to it: direct mode
FA2_ONE_BUCKETS = (32, 64)          # head-dim buckets of fa2_bwd_one and fa2_bwd_cast (tile family "h")
# cupy:fa2's one-launch backward up to this many tokens (docs/kernels/softmax.md "The backward in one launch"): 0,
# none -- slower than the atomic backward at every T measured (H200, 2026-12-04: first form 3.0-5.1x in callJ, the
# re-pipelined second form 1.23-1.34x in callK at T 1k-16k)
FA2_ONE_LAUNCH_MAX_T = 0
# cupy:fa2's backward as fa2_bwd_cast (the atomic schedule in one launch after one memset: D_t in the key blocks, the
# dq cast by the last key block of each query tile) up to this many tokens, calls without packed sequences
# (docs/kernels/softmax.md "One launch with the atomic schedule"; 0 until measured on a GPU)
FA2_CAST_MAX_T = 0
# cupy:fa2's backward as fa2_bwd_pre + fa2_bwd_tail (the atomic schedule with the dq cast by the key blocks whose
# arrivals complete a query tile: no fa2_dq_post launch) up to this many tokens, calls without packed sequences
# (docs/kernels/softmax.md "The dq cast in the key blocks' tail": H200 callN, float16 D = 64, the backward 0.9-3.4%
# faster than the three-launch form at every T measured, 1k-16k; above 16k not measured, the three launches)
FA2_TAIL_MAX_T = 16384


@dataclass(frozen=True)
class Fa2Tiles:
    """Template arguments of fa2_fwd<P, D, MT, QREG, BC> and fa2_bwd<P, D, BQ, KVREG>."""
    mt: int          # forward: m16 tiles per warp (block = 64 mt query rows)
    qreg: bool       # forward: Q fragments in registers for the whole block (else re-read per key tile)
    bc: int          # forward: keys per tile
    bq: int          # backward: query rows per tile
    kvreg: bool      # backward: K and V fragments in registers for the whole block


# (tile family, head-dim bucket) -> tiles.  Families: "h" float16/bfloat16 (m16n8k16); "tf1", "tf3" float32
# through TF32 with 1 or 3 products per operand pair.  Chosen from ptxas's sm_90 report (scripts/ptxas_report.py;
# numbers in docs/kernels/softmax.md): no spill, except 4 bytes in tf3's D=128 backward.  At D=128 the forward
# keeps 128-row blocks with 32-key tiles (64-key tiles spill 100 bytes) and the backward 32-query tiles (64
# spill 8 bytes).
FA2_TILES = {
    ("h", 32): Fa2Tiles(2, True, 64, 64, True),
    ("h", 64): Fa2Tiles(2, True, 64, 64, True),
    ("h", 128): Fa2Tiles(2, False, 32, 32, False),
    ("tf1", 32): Fa2Tiles(2, False, 64, 64, False),
    ("tf1", 64): Fa2Tiles(2, False, 64, 64, False),
    ("tf1", 128): Fa2Tiles(2, False, 32, 32, False),
    ("tf3", 32): Fa2Tiles(2, False, 64, 64, False),
    ("tf3", 64): Fa2Tiles(2, False, 64, 64, False),
    ("tf3", 128): Fa2Tiles(2, False, 32, 16, False),
}
# element size in bytes and row paddings (PAD_R, PAD_C, PAD_X) of the shared tiles, as fa_h / fa_tf declare them
_FA2_SMEM_LAYOUT = {"h": (2, 8, 8, 8), "tf1": (4, 8, 4, 4), "tf3": (4, 8, 4, 4)}


@dataclass(frozen=True)
class Fa2Spec:
    """One registered fa2 variant."""
    name: str
    dtypes: tuple
    kind: str                 # "h" or "tf"
    split: int = 0            # TF32 split: 1 (TF32 accuracy) or 3 (float32 accuracy); 0 for "h"
    deterministic: bool = False   # True: section 2's two-kernel backward instead of atomics
    one_launch_max_t: Optional[int] = None   # fa2_bwd_one up to this T (family "h"); None: FA2_ONE_LAUNCH_MAX_T
    cast_max_t: Optional[int] = None         # fa2_bwd_cast up to this T (family "h"); None: FA2_CAST_MAX_T
    tail_max_t: Optional[int] = None         # fa2_bwd_tail up to this T (family "h"); None: FA2_TAIL_MAX_T
    default_for: tuple = ()       # dtypes for which "cupy" alone picks this variant
    tags: tuple = ()
    tol: dict = None          # check's tolerance per dtype (4x the worst error of the H200 sweep; derive_tolerances)
    description: str = ""

    def policy(self, dtype: str) -> str:
        return f"fa_h<{CTYPE[dtype]}>" if self.kind == "h" else f"fa_tf<{self.split}>"

    @property
    def family(self) -> str:
        """Key of FA2_TILES."""
        return "h" if self.kind == "h" else f"tf{self.split}"

    def _h_form(self, bound: Optional[int], default: int, T: int) -> bool:
        """Whether a backward of T tokens runs one of the family-"h" forms bounded by ``bound`` (the spec's own,
        or ``default`` where it has none): never for the TF32 families or the deterministic backward."""
        return self.family == "h" and not self.deterministic and T <= (default if bound is None else bound)

    def one_launch(self, T: int) -> bool:
        """Whether a backward of T tokens (above FA2_KEY_BLOCK) runs fa2_bwd_one (where the head dims allow)."""
        return self._h_form(self.one_launch_max_t, FA2_ONE_LAUNCH_MAX_T, T)

    def cast(self, T: int) -> bool:
        """Whether a backward of T tokens (above FA2_KEY_BLOCK, not one_launch) without packed sequences runs
        fa2_bwd_cast (where the head dims allow)."""
        return self._h_form(self.cast_max_t, FA2_CAST_MAX_T, T)

    def tail(self, T: int) -> bool:
        """Whether a backward of T tokens (above FA2_KEY_BLOCK, neither one_launch nor cast) without packed
        sequences runs fa2_bwd_pre + fa2_bwd_tail (where the head dims allow)."""
        return self._h_form(self.tail_max_t, FA2_TAIL_MAX_T, T)


FA2_SPECS = (
    Fa2Spec("fa2", ("float16", "bfloat16"), "h", default_for=("float16", "bfloat16"),
            tol={"float16": 2e-3, "bfloat16": 2e-2},
            description="FlashAttention-2 schedule on tensor cores (mma.sync m16n8k16): cp.async K/V pipeline, "
                        "128-query blocks, masks on diagonal tiles only; one-pass backward, dq by float32 "
                        "atomics (not bitwise deterministic)"),
    Fa2Spec("fa2_det", ("float16", "bfloat16"), "h", deterministic=True, tol={"float16": 2e-3, "bfloat16": 2e-2},
            description="cupy:fa2's forward with flash_mma's deterministic two-kernel backward"),
    Fa2Spec("fa2_one", ("float16", "bfloat16"), "h", one_launch_max_t=1 << 30, tol={"float16": 2e-3, "bfloat16": 2e-2},
            description="cupy:fa2 with the one-launch backward at every T (fa2_bwd_one: key blocks form dk, dv, "
                        "query blocks dq, each its own D; no atomics, no pre / post kernels; head dims <= 64): a "
                        "measured rung"),
    Fa2Spec("fa2_cast", ("float16", "bfloat16"), "h", one_launch_max_t=0, cast_max_t=1 << 30,
            tol={"float16": 2e-3, "bfloat16": 2e-2},
            description="cupy:fa2 with the atomic backward in one launch at every T above 64 (fa2_bwd_cast: D_t "
                        "formed in the key blocks, dq cast by the last key block of each query tile, the float32 "
                        "buffer zeroed by one memset; head dims <= 64, no packed sequences): a measured rung"),
    Fa2Spec("fa2_tail", ("float16", "bfloat16"), "h", one_launch_max_t=0, cast_max_t=0, tail_max_t=1 << 30,
            tol={"float16": 2e-3, "bfloat16": 2e-2},
            description="cupy:fa2 with the atomic backward in two launches at every T above 64 (fa2_bwd_pre, "
                        "fa2_bwd_tail: the key blocks whose arrivals complete a query tile cast its dq, no "
                        "fa2_dq_post; head dims <= 64, no packed sequences)"),
    Fa2Spec("fa2_atomic", ("float16", "bfloat16"), "h", one_launch_max_t=0, cast_max_t=0, tail_max_t=0,
            tol={"float16": 2e-3, "bfloat16": 2e-2},
            description="cupy:fa2 with the atomic three-launch backward at every T above 64 (fa2_bwd_pre, fa2_bwd, "
                        "fa2_dq_post): a measured rung"),
    Fa2Spec("fa2_3xtf32", ("float32",), "tf", split=3, default_for=("float32",), tol={"float32": 1e-4},
            description="cupy:fa2 for float32 on TF32 tensor cores (m16n8k8), every product split 3xTF32 "
                        "(hi.hi + hi.lo + lo.hi): float32 accuracy"),
    Fa2Spec("fa2_tf32", ("float32",), "tf", split=1, tags=("tf32",), tol={"float32": 1e-3},
            description="cupy:fa2 for float32 on TF32 tensor cores, one product per operand pair: TF32 "
                        "accuracy (checked at the tf32 tolerance)"),
)


def fa2_smem(family: str, D: int, t: Fa2Tiles, pass_: str) -> int:
    """Dynamic shared memory (bytes) of fa2_fwd / fa2_bwd, as laid out in softmax.cu."""
    size, pad_r, pad_c, pad_x = _FA2_SMEM_LAYOUT[family]
    if pass_ == "fwd":
        return size * (64 * t.mt * (D + pad_r) + t.bc * (D + pad_r) + t.bc * (D + pad_c))
    bk = FA2_KEY_BLOCK
    return size * (bk * (D + pad_x) + bk * (D + pad_r) + 3 * t.bq * (D + pad_x) + t.bq * (bk + pad_r)) + 8 * t.bq


def fa2_one_smem(family: str, D: int, t: Fa2Tiles) -> int:
    """Dynamic shared memory (bytes) of fa2_bwd_one: the larger of its key blocks' (K, V, two buffers each of Q,
    dO and o, two lse and two D vectors) and its query blocks' (Q, dO, two K and two V tiles of 64 rows, lse, D)."""
    size, pad_r, _, pad_x = _FA2_SMEM_LAYOUT[family]
    bk = FA2_KEY_BLOCK
    keys = size * (bk * (D + pad_x) + bk * (D + pad_r) + 6 * t.bq * (D + pad_x)) + 16 * t.bq
    queries = size * (2 * 64 * (D + pad_r) + 2 * 64 * (D + pad_x) + 2 * 64 * (D + pad_r)) + 8 * 64
    return max(keys, queries)


def fa2_cast_smem(family: str, D: int, t: Fa2Tiles) -> int:
    """Dynamic shared memory (bytes) of fa2_bwd_cast: K, V, two buffers each of Q, dO and o, the dS tile, two lse and
    two D vectors, and the last-arrival flag (16 bytes)."""
    size, pad_r, _, pad_x = _FA2_SMEM_LAYOUT[family]
    bk = FA2_KEY_BLOCK
    return size * (bk * (D + pad_x) + bk * (D + pad_r) + 6 * t.bq * (D + pad_x) + t.bq * (bk + pad_r)) + 16 * t.bq + 16


def _cpp_bool(b: bool) -> str:
    return "true" if b else "false"


def fa2_bwd_expr(policy: str, family: str, D: int, direct: bool) -> str:
    t = FA2_TILES[(family, D)]
    return f"fa2_bwd<{policy}, {D}, {t.bq}, {_cpp_bool(t.kvreg)}, {_cpp_bool(direct)}>"


def fa2_expressions(policy: str, family: str, ctype: str) -> tuple:
    """Every fa2 instantiation of one operand policy (compiled together): fwd and bwd per bucket, pre, post."""
    out = []
    for D in FA2_BUCKETS:
        t = FA2_TILES[(family, D)]
        out.append(f"fa2_fwd<{policy}, {D}, {t.mt}, {_cpp_bool(t.qreg)}, {t.bc}>")
        out.append(fa2_bwd_expr(policy, family, D, False))
    return tuple(out) + (f"fa2_bwd_pre<{ctype}>", f"fa2_dq_post<{ctype}>")


def fa2_direct_expressions(policy: str, family: str) -> tuple:
    """fa2_bwd's DIRECT instantiations (T <= FA2_KEY_BLOCK) of one policy: their own compile group, built on the
    first such backward (a long-T caller never compiles them)."""
    return tuple(fa2_bwd_expr(policy, family, D, True) for D in FA2_BUCKETS)


# The backward kernels of family "h" at head dims <= 64 only (FA2_ONE_BUCKETS), each a template
# <P, D, BQ, KVREG> with the bucket's backward tiles, each kernel's instantiations their own compile group (built on
# the first backward that runs it): fa2_bwd_one, fa2_bwd_cast, fa2_bwd_tail.
FA2_H_KERNELS = ("fa2_bwd_one", "fa2_bwd_cast", "fa2_bwd_tail")


def fa2_h_expr(kernel: str, policy: str, family: str, D: int) -> str:
    """kernel<P, D, BQ, KVREG> (one of FA2_H_KERNELS) with the bucket's backward tiles (as fa2_bwd_expr)."""
    t = FA2_TILES[(family, D)]
    return f"{kernel}<{policy}, {D}, {t.bq}, {_cpp_bool(t.kvreg)}>"


def fa2_h_expressions(kernel: str, policy: str, family: str) -> tuple:
    """One of FA2_H_KERNELS' instantiations of one policy: () but for family "h"."""
    return tuple(fa2_h_expr(kernel, policy, family, D) for D in FA2_ONE_BUCKETS) if family == "h" else ()


def _fa2_groups() -> dict:
    """policy -> (tile family, ctype) for every policy some spec uses (deduplicated)."""
    return {s.policy(dt): (s.family, CTYPE[dt]) for s in FA2_SPECS for dt in s.dtypes}


INSTANTIATIONS += [(SOURCE, e) for pol, (fam, ct) in _fa2_groups().items()
                   for e in (fa2_expressions(pol, fam, ct) + fa2_direct_expressions(pol, fam)
                             + sum((fa2_h_expressions(kn, pol, fam) for kn in FA2_H_KERNELS), ()))]
declare_groups(SOURCE, [fa2_expressions(pol, fam, ct) for pol, (fam, ct) in _fa2_groups().items()]
               + [fa2_direct_expressions(pol, fam) for pol, (fam, ct) in _fa2_groups().items()]
               + [g for pol, (fam, ct) in _fa2_groups().items() for kn in FA2_H_KERNELS
                  if (g := fa2_h_expressions(kn, pol, fam))])


@dataclass(frozen=True)
class Fa2Plan:
    """Everything a launch needs that does not depend on N or T."""
    fwd: Any
    bwd: Any
    direct: tuple          # (expression, group) of fa2_bwd<..., DIRECT = true>: compiled by the first Fa2Call using it
    one: Optional[tuple]   # (expression, group) of fa2_bwd_one, as direct; None where its buckets do not reach
    one_smem: int
    cast: Optional[tuple]  # (expression, group) of fa2_bwd_cast, as one
    cast_smem: int
    tail: Optional[tuple]  # (expression, group) of fa2_bwd_tail, as one (shared memory: bwd_smem)
    pre: Any
    post: Any
    rows: int              # query rows per forward block
    fwd_smem: int
    bwd_smem: int
    Dk: np.int32           # the head dims
    Dv: np.int32


@functools.lru_cache(maxsize=None)
def _fa2_plan(policy: str, family: str, ctype: str, dk: int, dv: int) -> Optional[Fa2Plan]:
    """The plan for these head dims, or None when they exceed FA2_BUCKETS (cupy:flash's kernels run)."""
    d = max(dk, dv)
    if d > FA2_BUCKETS[-1]:
        return None
    D = _bucket(d, FA2_BUCKETS)
    t = FA2_TILES[(family, D)]
    group = fa2_expressions(policy, family, ctype)
    h = family == "h" and D in FA2_ONE_BUCKETS

    def kern(expr):
        return get_kernel(SOURCE, expr, group=group)

    def h_kernel(kernel):
        return (fa2_h_expr(kernel, policy, family, D), fa2_h_expressions(kernel, policy, family)) if h else None

    return Fa2Plan(fwd=kern(f"fa2_fwd<{policy}, {D}, {t.mt}, {_cpp_bool(t.qreg)}, {t.bc}>"),
                   bwd=kern(fa2_bwd_expr(policy, family, D, False)),
                   direct=(fa2_bwd_expr(policy, family, D, True), fa2_direct_expressions(policy, family)),
                   one=h_kernel("fa2_bwd_one"), one_smem=fa2_one_smem(family, D, t) if h else 0,
                   cast=h_kernel("fa2_bwd_cast"), cast_smem=fa2_cast_smem(family, D, t) if h else 0,
                   tail=h_kernel("fa2_bwd_tail"),
                   pre=kern(f"fa2_bwd_pre<{ctype}>"), post=kern(f"fa2_dq_post<{ctype}>"),
                   rows=64 * t.mt, fwd_smem=fa2_smem(family, D, t, "fwd"), bwd_smem=fa2_smem(family, D, t, "bwd"),
                   Dk=np.int32(dk), Dv=np.int32(dv))


_FA2_SPEC_OF = {s.name: s for s in FA2_SPECS}


@functools.lru_cache(maxsize=None)
def _fa2_plan_of(name: str, dtype: str, dk: int, dv: int) -> Optional[Fa2Plan]:
    """_fa2_plan of the spec named ``name`` for a storage dtype (one short-key lookup per call)."""
    spec = _FA2_SPEC_OF[name]
    return _fa2_plan(spec.policy(dtype), spec.family, CTYPE[dtype], dk, dv)


@dataclass
class Fa2Ctx:
    spec: Fa2Spec
    plan: Optional[Fa2Plan]        # None: the forward ran cupy:flash's kernels (head dim > 128)
    saved: tuple                   # (q, k, v, o, lse) as the fa2 kernels saw them
    causal: bool
    scale: float
    fallback: Any = None           # cupy:flash's ctx when plan is None
    cu: Optional[tuple] = None     # packed sequences (cu_seqlens), or None
    call: Any = None               # the Fa2Call of the forward (plan not None)
    scalars: tuple = ()            # every fa2 backward kernel's scalar parameters (plan not None)


def _aligned16(x):
    """x itself when its data is 16-byte aligned (cp.async copies 16-byte chunks), else an aligned copy."""
    return x if backends.data_ptr(x) % 16 == 0 else x.copy()


@dataclass(frozen=True)
class Fa2Call:
    """Everything of one call geometry that is not an array or the scale, made once per (spec, dtype, q's shape,
    Dv, causal): each launch prepared (``_module.Prepared``: kernel, grid, block, shared memory), the int
    scalars, and the outputs of the forward (o, lse) and of the backward (dq, dk, dv, and its float32 buffer)
    each laid out in one allocation (``backends.OutputLayout``).  (The scale's float32 values are made per
    call: a float key would take -0.0 for 0.0.)

    Backward: direct (T <= FA2_KEY_BLOCK): fa2_bwd alone (it forms D and stores dq).  one (``Fa2Spec.one_launch``,
    head dims <= 64): fa2_bwd_one alone (key blocks and query blocks, each forming D; dq stored).  cast
    (``Fa2Spec.cast``, head dims <= 64, calls without packed sequences): one memset of the float32 buffer and the
    arrival counters, then fa2_bwd_cast (D formed in the key blocks, dq cast by each query tile's last).  tail
    (``Fa2Spec.tail``, head dims <= 64, calls without packed sequences): fa2_bwd_pre (D, the accumulator and the
    arrival counters zeroed), then fa2_bwd_tail (dq added atomically, each query tile cast by the key block whose
    arrival completes it).  Otherwise fa2_bwd_pre (D, the accumulator zeroed), fa2_bwd (scaled dq added
    atomically), and for float16/bfloat16 fa2_dq_post (the cast); a float32 dq is its own accumulator
    (dq_in_place)."""
    plan: Fa2Plan
    ints: tuple               # N, T, Dk, Dv (int32)
    causal: np.int32
    direct: bool
    one: bool
    dq_in_place: bool
    pre_tail: tuple           # rows, Dv, Dk
    post_size: np.int64       # rows Dk
    acc_D_offset: int         # bytes from the buffer's start to D (0 in place; the accumulator stays 8-byte aligned)
    fwd: Prepared
    bwd: Prepared             # plan.bwd, its DIRECT instantiation, or fa2_bwd_one
    cast: Optional[Prepared]  # fa2_bwd_cast (calls without packed sequences), else None
    tail: Optional[Prepared]  # fa2_bwd_tail (calls without packed sequences), else None
    ncnt: np.int64            # cast, tail: the arrival counters (int32 per (row, query tile)) after the buffer; else 0
    pre: Prepared
    post: Prepared
    fwd_out: backends.OutputLayout      # o, lse
    bwd_out: backends.OutputLayout      # dq, dk, dv; scratch: the dq accumulator (not in place) and D (not direct)


@functools.lru_cache(maxsize=1024)
def _fa2_call(name: str, dtype: np.dtype, shape: tuple, Dv: int, causal: bool):
    T, Dk = shape[-2], shape[-1]
    plan = _fa2_plan_of(name, dtype_name(dtype), Dk, Dv)
    if plan is None:
        return None
    i32, N = np.int32, lead_size(shape, 2)
    rows = N * T
    in_place, direct = dtype_name(dtype) == "float32", T <= FA2_KEY_BLOCK
    one = not direct and plan.one is not None and _FA2_SPEC_OF[name].one_launch(T)
    cast = not direct and not one and plan.cast is not None and _FA2_SPEC_OF[name].cast(T)
    tail = not direct and not one and not cast and plan.tail is not None and _FA2_SPEC_OF[name].tail(T)
    acc = 0 if in_place else rows * Dk
    ntiles = -(-T // FA2_KEY_BLOCK)
    if one:
        bwd = Prepared(get_kernel(SOURCE, plan.one[0], group=plan.one[1]), (2 * ntiles * N,), (FA_THREADS,),
                       plan.one_smem)
    else:
        bwd = Prepared(get_kernel(SOURCE, plan.direct[0], group=plan.direct[1]) if direct else plan.bwd,
                       (ntiles * N,), (FA_THREADS,), plan.bwd_smem)
    v_shape = shape[:-1] + (Dv,)
    return Fa2Call(plan, (i32(N), i32(T), plan.Dk, plan.Dv), i32(causal), direct, one, in_place,
                   (np.int64(rows), plan.Dv, plan.Dk), np.int64(rows * Dk), 4 * acc,
                   Prepared(plan.fwd, (-(-T // plan.rows) * N,), (FA_THREADS,), plan.fwd_smem),
                   bwd,
                   Prepared(get_kernel(SOURCE, plan.cast[0], group=plan.cast[1]), (ntiles * N,), (FA_THREADS,),
                            plan.cast_smem) if cast else None,
                   Prepared(get_kernel(SOURCE, plan.tail[0], group=plan.tail[1]), (ntiles * N,), (FA_THREADS,),
                            plan.bwd_smem) if tail else None,
                   np.int64(N * ntiles if cast or tail else 0),
                   Prepared(plan.pre, (-(-rows // 8),), (256,)),
                   Prepared(plan.post, (-(-rows * Dk // 256),), (256,)),
                   backends.outputs_layout(((v_shape, dtype), ((N, T), np.float32))),
                   backends.outputs_layout(((shape, dtype), (shape, dtype), (v_shape, dtype)),
                                           () if direct or one else (((acc + rows,), np.float32),)
                                           + ((((N * ntiles,), np.int32),) if cast or tail else ())))


def _fa2_scalars(call: Fa2Call, scale, cu) -> tuple:
    """(fa2_fwd's parameters after its arrays, every fa2 backward kernel's scalar parameters) for a call of this
    scale and packing (fa2_bwd and fa2_bwd_one add the packed-sequence arrays after the latter)."""
    scale2 = f32(scale, LOG2E)
    return call.ints + (scale2, call.causal) + _packed(cu), call.ints + (scale2, f32(scale), call.causal)


def _fa2_fwd_launch(call: Fa2Call, q, k, v, tail: tuple) -> tuple:
    """fa2_fwd on q, k, v (copies of any not 16-byte aligned: cp.async copies 16-byte chunks) with the scalar and
    packed-sequence parameters ``tail``: launched on o's and lse's addresses in one allocation, their arrays made
    after the launch while the GPU runs.  Returns (q, k, v, o, lse) as the kernel saw them."""
    import cupy as cp
    ptr = backends.data_ptr
    if (ptr(q) | ptr(k) | ptr(v)) % 16:
        q, k, v = _aligned16(q), _aligned16(k), _aligned16(v)
    keep, (po, plse) = call.fwd_out.new_by_address(cp)
    call.fwd((q, k, v, po, plse) + tail)
    return (q, k, v) + call.fwd_out.views(cp, keep)


def _fa2_forward(spec: Fa2Spec, q, k, v, causal=True, scale=1.0, cu_seqlens=None):
    """q, k, v: (..., T, D) (any leading dims: Variant.leading_dims); o has them."""
    shape = q.shape
    call = _fa2_call(spec.name, q.dtype, shape, v.shape[-1], bool(causal))
    if call is None and cu_seqlens is not None:
        raise ValueError(f"softmax_attention: backend cupy:{spec.name} packs sequences (cu_seqlens) for head dims "
                         f"up to {FA2_BUCKETS[-1]} only, got Dk={shape[-1]}, Dv={v.shape[-1]}")
    if call is None:
        o, ctx = _forward("flash", flat3(q), flat3(k), flat3(v), causal=causal, scale=scale)
        return o, Fa2Ctx(spec, None, (), bool(causal), float(scale), fallback=ctx)
    fwd_tail, scalars = _fa2_scalars(call, scale, cu_seqlens)     # (the backward's too: made before the launch)
    saved = _fa2_fwd_launch(call, q, k, v, fwd_tail)
    return saved[3], Fa2Ctx(spec, call.plan, saved, bool(causal), float(scale), cu=cu_seqlens, call=call,
                            scalars=scalars)


def _packed(cu) -> tuple:
    """The packed-sequence arguments of a prepared launch: None (null pointers) for one sequence.  Not
    ``packing.kernel_args``: its np.uint64 nulls would fix those parameters as scalars in the Prepared's
    parameter layout (``param_format``), which one Fa2Call shares between packed and unpacked calls."""
    return (None, None) if cu is None else packing.sequence_arrays(tuple(cu))


_NO_COUNTERS = (np.uint64(0), np.int64(0))    # fa2_bwd_pre's cnt, ncnt without counters (an address, as the tail's)


def _fa2_backward(ctx: Fa2Ctx, do):
    if ctx.plan is None:
        return _backward(ctx.fallback, flat3(do))
    q, k, v, o, lse = ctx.saved
    if ctx.spec.deterministic:
        return _backward(_Context("mma", flat3(q), flat3(k), flat3(v), flat3(o), lse, ctx.causal, ctx.scale,
                                  cu=ctx.cu), flat3(do))
    import cupy as cp
    call, scalars = ctx.call, ctx.scalars
    do = as_contiguous(do, q.dtype)
    if backends.data_ptr(do) % 16:
        do = _aligned16(do)
    lay = call.bwd_out
    if call.direct or call.one or (call.cast is not None and ctx.cu is None):
        (dq, dk, dv), buf, keep = lay.new(cp)          # one allocation: the gradients, and the buffer by address
        if call.direct:                                # one key block per sequence: D and dq in fa2_bwd
            call.bwd((q, k, v, o, lse, None, do, None, dq, dk, dv) + scalars + _packed(ctx.cu))
        elif call.one:                                 # key blocks and query blocks in one launch
            call.bwd((q, k, v, o, lse, do, dq, dk, dv) + scalars + _packed(ctx.cu))
        else:                                          # one memset, one launch
            memset_async(buf[0], int(buf[1]) - int(buf[0]) + 4 * int(call.ncnt))
            call.cast((q, k, v, o, lse, do, buf[0], buf[1], dq, dk, dv) + scalars)
        return dq, dk, dv
    if call.tail is not None and ctx.cu is None:       # the counters zeroed with the accumulator; no fa2_dq_post
        # dq, dk, dv by address: fa2_bwd_tail is queued before their arrays are made; above the merge bound the
        # accumulator, D and the counters alone first, fa2_bwd_pre running while the gradients are allocated
        apart = lay.separate()
        if apart:
            keep, (acc, cnt) = backends.new_scratch(cp, lay.scratch)
        else:                                          # one allocation: dq, dk, dv, the buffer, the counters
            keep, (*grads, acc, cnt) = lay.new_by_address(cp)
        Dbuf = np.uint64(acc + call.acc_D_offset)
        call.pre((o, do, Dbuf, acc) + call.pre_tail + (cnt, call.ncnt))
        if apart:
            kept, grads = lay.outputs_by_address(cp)
        call.tail((q, k, v, o, lse, Dbuf, do, acc, cnt) + tuple(grads) + scalars)
        return lay.outputs_views(cp, kept) if apart else lay.views(cp, keep)
    if call.dq_in_place or not lay.separate():
        grads, buf, keep = lay.new(cp)
    else:   # above the merge bound: the accumulator and D alone first, fa2_bwd_pre running while dq, dk, dv are made
        grads, (keep, buf) = None, backends.new_scratch(cp, lay.scratch)
    acc = buf[0]                                       # dq accumulator (zeroed by fa2_bwd_pre) unless in place, D
    Dbuf = np.uint64(acc + call.acc_D_offset)
    dqacc = grads[0] if call.dq_in_place else acc
    call.pre((o, do, Dbuf, dqacc) + call.pre_tail + _NO_COUNTERS)
    dq, dk, dv = grads or lay.outputs_apart(cp)
    call.bwd((q, k, v, o, lse, Dbuf, do, dqacc, None, dk, dv) + scalars + _packed(ctx.cu))
    if not call.dq_in_place:
        call.post((dqacc, dq, call.post_size, f32(ctx.scale)))
    return dq, dk, dv                                  # (`keep` holds the buffer until the launches are queued)


class Fa2Run:
    """registry.Variant.prepare's pair for one call signature of a cupy:fa2* variant (the fa2 kernels, not
    deterministic): the Fa2Call, the forward's scalar parameters and the backward's resolved once per plan, so
    that a call runs the alignment check, one allocation and the launch.  ``forward(q, k, v)`` does what
    _fa2_forward does for arrays of the signature (C-contiguous, native byte order); its context carries the
    backward's scalars, so _fa2_backward itself is the pair's backward."""
    __slots__ = ("spec", "call", "causal", "scale", "cu", "fwd_tail", "scalars")

    def __init__(self, spec: Fa2Spec, call: Fa2Call, causal: bool, scale, cu):
        self.spec, self.call, self.causal, self.scale, self.cu = spec, call, causal, float(scale), cu
        self.fwd_tail, self.scalars = _fa2_scalars(call, self.scale, cu)

    def forward(self, q, k, v):
        saved = _fa2_fwd_launch(self.call, q, k, v, self.fwd_tail)
        return saved[3], Fa2Ctx(self.spec, self.call.plan, saved, self.causal, self.scale, cu=self.cu,
                                call=self.call, scalars=self.scalars)


def _fa2_prepare(spec: Fa2Spec, options, shapes, dtype):
    """registry.Variant.prepare: a Fa2Run where the fa2 kernels run this signature (head dims <= FA2_BUCKETS[-1],
    not deterministic: their gradients come back in the arrays' shapes); else None (the general path)."""
    if spec.deterministic or not options.keys() <= {"causal", "scale", "cu_seqlens"}:
        return None
    causal = bool(options.get("causal", True))
    call = _fa2_call(spec.name, np.dtype(dtype), tuple(shapes[0]), shapes[2][-1], causal)
    if call is None:
        return None
    run = Fa2Run(spec, call, causal, options.get("scale", 1.0), options.get("cu_seqlens"))
    return run.forward, _fa2_backward                  # the backward needs nothing the context does not carry


for _spec in FA2_SPECS:
    register(Variant("softmax", "cupy", _spec.name, functools.partial(_fa2_forward, _spec), _fa2_backward,
                     prepare=functools.partial(_fa2_prepare, _spec),
                     dtypes=_spec.dtypes,
                     array_kind="cupy", gpu=True, supports=_supports, tags=_spec.tags, features=frozenset({"packed"}),
                     leading_dims=True,
                     default_for=_spec.default_for, tol=dict(_spec.tol or {}), description=_spec.description))
