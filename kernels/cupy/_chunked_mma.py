"""Launch code of the tensor-core chunk core, kernels/cuda/chunked_mma.cu (read its header for the math).

One core serves linear attention (no decay), decayed attention (per-token log decays) and the streams of
ZeroS: ``forward`` and ``backward`` below take q, k, v of one storage dtype (float16, bfloat16, or
float32 run as 3xTF32 / TF32 products), optional per-token log decays g, an optional initial state per
sequence and optional packed sequences (``cu_seqlens``), and return the output and every gradient
(initial state included).

Work split: sequences are cut into segments of ``L`` chunks of 64 (``segment_table``); a block walks one
segment carrying its state tile in registers.  With one segment per sequence (``L = 0``) the forward is
one launch; with more, a parallel pass sums each segment's state (``tc_seg_state``) and a scan chains
them (``tc_seg_scan``).  ``choose_segments`` picks L so that the grid fills the GPU.

Stages: the chunk-walking kernels take ``STAGES`` (1, or 2 = double-buffered tiles: chunk c + 1's loads in
flight while chunk c is computed; ``stages=2`` is cupy:chunked_mma_db).  A kernel whose two stages would not
fit in ``SMEM_MAX`` runs with one (``staged``).

dk/dv at head dims (64, 64) (``DKDV_MODES``, ``dkdv=`` of ``forward``, kept for the backward): "fused" (the
default: one 4-warp kernel for dk and dv), "split" (the dk kernel and the dv kernel of the wider head dims, each
recomputing the dS walk; cupy:chunked_mma_dkdv2), "wide" (the fused kernel with 8 warps, each owning half the
columns of the dS, dk and dv tiles; cupy:chunked_mma_dkdv8), "roles" (8 warps: each a quarter of dS, warps
0-3 form dv, 4-7 dk; cupy:chunked_mma_dkdv8r) or "dqfold" (dq folded into the fused 4-warp dk/dv walk, WHICH
tc::DKDV_DQ: the forward writes the state before every chunk (``tc_fwd``'s STORE, in the storage type as the
products read it, with its power-of-two sigma), the reverse walk reads it back and forms dq beside dk and dv,
and ``tc_bwd_dq`` is not launched; cupy:chunked_mma_dqf; causal calls only, not causal runs "fused") or "anchor"
(``ANCHORED``: the "dqfold" walkers, and d log_decay from chunk anchors: the walker writes <H, dS'> of every chunk,
``tc_dg`` sums at most one chunk's tokens from the next chunk's anchor instead of the whole suffix -- what lets
bfloat16 decayed run the 16-bit core, docs/kernels/decayed.md "d log_decay from chunk anchors") or "dqrev" (the "fused"
walkers; ``REV_IN_DQ``: ``tc_bwd_dq`` (its ESUM) also forms the REV segment sums, so the reverse ``tc_seg_state`` pass
is not launched -- causal calls of several segments, at every dk and dv <= 64; cupy:chunked_mma_dqr) or "dqrev_roles"
(the "roles" walker after the "dqrev" dq walker; cupy:chunked_mma_dqr8r, a rung measured at long T).  Above 64
the separate kernels (and ``tc_bwd_dq``) run in every mode.

Warpgroup MMA (kernels/cuda/chunked_wgmma.cu, sm_90a: ``wg_kernel`` decides per kernel): "dqrev_wgs" sums the
forward's segment states with ``tg_seg_state`` (cupy:chunked_mma_wgs, a rung), "dqrev_wg" walks the causal forward
with ``tg_fwd`` (cupy:chunked_mma_wg), "dqrev_wgb" also the backward with ``tg_bwd_dq`` and ``tg_bwd_dkdv``
(cupy:chunked_mma_wgb, linear's 16-bit default), "dqrev_wgk" the fused dk/dv walker ``tg_bwd_dkdv`` alone
(cupy:chunked_mma_wgk, decayed's float16 default); every other kernel of these modes, and every kernel of a call they do
not take (float32, wider heads, another device; log decays for the segment sums), is the "dqrev" mode's.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from workbench import backends
from workbench.backends import new_output, outputs_layout

from .._segments import Segmentation, segment_rows
from . import _xscale
from ._module import (CTYPE, ITEMSIZE, Prepared, as_contiguous, declare_groups, dtype_name, f32, get_kernel, lead_size,
                      padded_dim)

SOURCE = "chunked_mma.cu"
C = 64                      # chunk length          (chunked_mma.cu: tc::C)
BV = 64                     # column tile           (tc::BV)
THREADS = 128               # block size            (tc::THREADS)
DG_THREADS = 256            # block size of tc_dg_part, tc_dg (tc::DG_THREADS)
PAD = 8                     # shared row padding    (tc::PAD)
TRAILER_BYTES = 4 * (7 * C + 32)                    # sizeof(tc::Trailer): b (bh, bl pairs) [C], e, u [C], red [32], gnext [3][C]
DIMS = (64, 128)            # padded head dims (DKP, DVP)
MAX_DIM = DIMS[-1]
SEGMENT_CHUNKS = 8          # chunks per segment when the grid is full anyway (choose_segments)
SMEM_MAX = 227 * 1024       # the most dynamic shared memory one block may opt in to (sm_90)
STAGES = (1, 2)             # the kernels' load pipelines (tc::Walk): plain, double-buffered
DOUBLE_BUFFERED = ("cupy:chunked_mma with double-buffered chunk tiles (stages=2): chunk c+1's cp.async loads in "
                   "flight while chunk c is computed")     # the description of the ops' chunked_mma_db variants
# The dk/dv walkers launched at head dims (64, 64), per mode: ((WHICH, LAYOUT), ...) of tc_bwd_dkdv, in order;
# LAYOUT: tc::DKDV_ROWS 0 (4 warps), DKDV_COLS 1 and DKDV_ROLES 2 (8 warps), DKDV_WARPS per layout
DKDV_MODES = {"fused": ((0, 0),), "split": ((1, 0), (2, 0)), "wide": ((0, 1),), "roles": ((0, 2),),
              "dqfold": ((3, 0),), "anchor": ((3, 0),), "dqrev": ((0, 0),), "dqrev_roles": ((0, 2),),
              "dqrev_wgs": ((0, 0),), "dqrev_wg": ((0, 0),), "dqrev_wgb": ((0, 0),), "dqrev_wgk": ((0, 0),)}
DKDV_DQ = 3                             # tc::DKDV_DQ: the WHICH of the walker that forms dq, dk and dv
ANCHORED = ("anchor",)                  # modes whose d log_decay comes from the folded walker's chunk anchors
ANC_PARTS = 4                           # tc::ANC_PARTS: floats per chunk anchor (one per warp of the walker)
DKDV_WARPS = (4, 8, 8)
# Modes whose backward forms the REV segment sums (the gradient of each segment's start state from its own chunks)
# in tc_bwd_dq (its ESUM) instead of the tc_seg_state<.., REV = true, ..> pass: causal calls of several segments, at
# padded head dims in REV_IN_DQ_DIMS (dv; wider ones keep the pass: 64 more accumulator registers would not fit);
# dq launched before the REV scan (docs/kernels/linear.md "The REV sums in the dq walker")
REV_IN_DQ = ("dqrev", "dqrev_roles", "dqrev_wgs", "dqrev_wg", "dqrev_wgb", "dqrev_wgk")
# Modes that run kernels of chunked_wgmma.cu (Hopper's warpgroup MMA) where a call qualifies: 16-bit, the head dims
# each kernel takes, a compute capability 9.0 device (``wg_kernel``); the rest of the call is the "dqrev" mode's
# (docs/kernels/linear.md "Warpgroup MMA").
#   WG_SEG_MODES  the forward's segment sums (tg_seg_state; measured slower than tc_seg_state: callD of 2026-12-04)
#   WG_FWD_MODES  the forward walker of causal calls (tg_fwd; Dk <= 64; log decays or none)
#   WG_DQ_MODES   the backward's dq walker of causal calls (tg_bwd_dq; Dv <= 64; log decays or none)
#   WG_DKDV_MODES the backward's fused dk/dv walker of causal calls (tg_bwd_dkdv; Dk, Dv <= 64; log decays or none)
# "dqrev_wgk" takes the dk/dv walker alone: with log decays tg_fwd and tg_bwd_dq measured slower than tc_fwd and
# tc_bwd_dq, tg_bwd_dkdv faster than tc_bwd_dkdv (H200 callH of 2026-12-04, decayed float16 64k: 525 / 744 / 801 us
# against 505 / 724 / 956; docs/kernels/decayed.md "The walkers with log decays on wgmma").
WG_SEG_MODES = ("dqrev_wgs",)
WG_FWD_MODES = ("dqrev_wg", "dqrev_wgb")
WG_DQ_MODES = ("dqrev_wgb",)
WG_DKDV_MODES = ("dqrev_wgb", "dqrev_wgk")
REV_IN_DQ_DIMS = (64,)
# Storage dtypes whose dq-folded decayed walk takes the state operands as hi + lo pairs (tc::state_pairs: bfloat16;
# docs/kernels/decayed.md "anchor + split-state"): tc_fwd's STORE also writes H's lo tiles (after the hi tiles: the
# per-chunk states take twice the memory in decayed calls) and the STORE forward and the DKDV_DQ walker hold a lo
# tile beside each state tile in shared memory
STATE_PAIRS = ("bfloat16",)
DKDV_WIDE = ((1, 0), (2, 0))            # above 64: the dk kernel per 64-column dk tile, the dv kernel per dv tile
DKDV_DESCRIPTION = {   # the ops' measured-rung variants of the dk/dv modes: (variant name, description)
    "split": ("chunked_mma_dkdv2", "cupy:chunked_mma with dk and dv in two kernels at head dim 64 (dkdv='split': "
                                   "fewer registers each, the dS walk done twice)"),
    "wide": ("chunked_mma_dkdv8", "cupy:chunked_mma with an 8-warp dk/dv kernel at head dim 64 (dkdv='wide': each "
                                  "warp half the columns of the dS, dk and dv tiles)"),
    "roles": ("chunked_mma_dkdv8r", "cupy:chunked_mma with an 8-warp dk/dv kernel at head dim 64 (dkdv='roles': "
                                    "each warp a quarter of dS; warps 0-3 form dv, 4-7 dk)"),
    "dqfold": ("chunked_mma_dqf", "cupy:chunked_mma with dq folded into the dk/dv walk at head dim 64, causal "
                                  "(dkdv='dqfold': the forward stores each chunk's state, no dq walker)"),
    "dqrev": ("chunked_mma_dqr", "cupy:chunked_mma with the backward's REV segment sums formed in the dq walker "
                                 "(dkdv='dqrev': no reverse segment-state pass; causal, several segments, dv <= 64)"),
    "dqrev_roles": ("chunked_mma_dqr8r", "cupy:chunked_mma_dqr with the 8-warp dk/dv walker of chunked_mma_dkdv8r "
                                         "(dkdv='dqrev_roles': the REV sums in the dq walker, warps 0-3 form dv, 4-7 dk)"),
    "dqrev_wgs": ("chunked_mma_wgs", "cupy:chunked_mma_dqr with the forward's segment sums on Hopper's warpgroup MMA "
                                     "(dkdv='dqrev_wgs': float16 / bfloat16, Dk <= 64, compute capability 9.0; else "
                                     "chunked_mma_dqr's kernels)"),
    "dqrev_wg": ("chunked_mma_wg", "cupy:chunked_mma_dqr with the causal forward walker on Hopper's warpgroup MMA "
                                   "(dkdv='dqrev_wg': float16 / bfloat16, Dk <= 64, compute capability 9.0; else "
                                   "chunked_mma_dqr's kernels)"),
    "dqrev_wgb": ("chunked_mma_wgb", "cupy:chunked_mma_wg with the backward's walkers on warpgroup MMA too (dkdv="
                                     "'dqrev_wgb': dq at Dv <= 64, dk/dv at Dk, Dv <= 64; float16 / bfloat16, "
                                     "compute capability 9.0; else chunked_mma_dqr's kernels)"),
    "dqrev_wgk": ("chunked_mma_wgk", "cupy:chunked_mma_dqr with the fused dk/dv walker alone on Hopper's warpgroup "
                                     "MMA (dkdv='dqrev_wgk': causal, Dk, Dv <= 64, float16 / bfloat16, compute "
                                     "capability 9.0; the forward and dq walkers mma.sync)"),
}
# The dk/dv modes whose variant "cupy" alone picks, per op: the dtypes (registry's default_for).  dqrev: H200 callB of
# 2026-12-03, fwd+bwd 2-8% under the fused mode (cupy:chunked_mma) at T 4k-64k in every dtype measured (linear.md,
# "The REV sums in the dq walker"); decayed bfloat16 keeps the anchored 16-bit core of cupy:chunked_mma (dqrev runs
# it on the float32 core).
# dqrev_wgb (linear 16-bit: the forward and backward walkers on warpgroup MMA where the device and call allow, else
# dqrev's kernels): H200 callF of 2026-12-04, fwd+bwd 14-18% under dqrev_wg (which was 1-2.5% under dqrev in callE) at
# T 4k-64k, float16 and bfloat16 (linear.md, "The backward walkers on wgmma").
# dqrev_wgk (decayed float16): H200 callH of 2026-12-04, the sum of the kernels' split medians 2.36 ms at 64k against
# dqrev_wgb's 2.41 and dqrev's 2.52 (decayed.md "The walkers with log decays on wgmma"); bfloat16 keeps the anchored
# core (its dqrev runs the float32 core).
DKDV_DEFAULT_FOR = {("linear", "dqrev"): ("float32",), ("linear", "dqrev_wgb"): ("float16", "bfloat16"),
                    ("decayed", "dqrev"): ("float32",), ("decayed", "dqrev_wgk"): ("float16",)}


def pad_dim(d: int) -> int:
    return padded_dim(d, DIMS)


# ----------------------------------------------------------------------------- shared memory (bytes)
# Each kernel: ``stages`` copies of the tiles a chunk loads, then the state tile, then the Trailer.
def smem_fwd(item: int, dkp: int, stages: int = 1, pairs: bool = False) -> int:
    """pairs: the STORE forward of a STATE_PAIRS dtype (the state tile's lo tile after it)."""
    return item * (stages * (2 * C * (dkp + PAD) + C * (BV + PAD)) + (1 + pairs) * dkp * (BV + PAD)) + TRAILER_BYTES


def smem_seg_state(item: int, dxp: int, stages: int = 1) -> int:
    return item * stages * (C * (dxp + PAD) + C * (BV + PAD)) + TRAILER_BYTES


def smem_dq(item: int, dvp: int, stages: int = 1) -> int:
    return item * (stages * (2 * C * (dvp + PAD) + 2 * C * (BV + PAD)) + BV * (dvp + PAD)) + TRAILER_BYTES


def smem_dkdv(item: int, dkp: int, dvp: int, which: int, stages: int = 1, layout: int = 0,
              pairs: bool = False) -> int:
    """pairs: the DKDV_DQ walker of a STATE_PAIRS dtype (H's and dS's lo tiles beside them)."""
    rows = BV if which == 1 else dkp
    cols = BV if which == 2 else dvp
    part = 4 * C if layout == 1 else 0                 # DKDV_COLS: the row-dot halves, after the Trailer
    dq = which == DKDV_DQ
    npair = 2 if dq and pairs else 1
    state = npair * dkp * (dvp + PAD) if dq else 0     # DKDV_DQ: the state tile of each stage ...
    sig = 16 if dq else 0                              # ... and its sigma (a float per stage), after the Trailer
    return (item * (stages * (2 * C * (dkp + PAD) + 2 * C * (dvp + PAD) + state) + npair * rows * (cols + PAD))
            + TRAILER_BYTES + part + sig)


# ----------------------------------------------------------------------------- instantiations
@dataclass(frozen=True)
class Launchable:
    """One chunk-walking kernel as launched: its name expression, dynamic shared memory (bytes), block size."""
    expr: str
    smem: int
    threads: int = THREADS


def staged(name: str, targs: tuple, stages: int, smem, threads: int = THREADS, tail: tuple = ()) -> Launchable:
    """``name<targs..., S, tail...>`` with S = ``stages`` where ``smem(S)`` (bytes) fits in SMEM_MAX, else 1."""
    s = stages if smem(stages) <= SMEM_MAX else 1
    return Launchable(f"{name}<{', '.join(map(str, targs + (s,) + tail))}>", smem(s), threads)


@functools.lru_cache(maxsize=None)          # per launch: the expression and smem once per key
def _fwd(dtype, split, stages, dkp, store=False):
    """tc_fwd; store: STORE 1, the state before every chunk written for the dq-folded backward (DKDV_DQ)."""
    pairs = store and dtype in STATE_PAIRS
    return staged("tc_fwd", (CTYPE[dtype], dkp, split), stages, lambda s: smem_fwd(ITEMSIZE[dtype], dkp, s, pairs),
                  tail=(1,) if store else ())


# tc_seg_state's load pipeline for 16-bit inputs without log decays, whatever the walk's: its one product per chunk
# leaves the loads exposed, and at two stages it keeps 5 blocks per SM (19 -> 37 KB).  H200: linear float16 16k
# 68.5 -> 62-64 us, 64k 200 -> 184-200, bfloat16 64k 203 -> 187; decayed float16 64k 210-213 -> 224, so decayed calls
# and float32 (73 KB at two stages: 3 blocks per SM, not measured alone) take the walk's (docs/kernels/linear.md
# "Segment states at two stages").
SEG_STATE_STAGES_LINEAR_16BIT = 2


def seg_stages(dtype: str, stages: int, decay: bool) -> int:
    """The load stages of the segment-state passes (tc_seg_state) of a walk of ``stages``."""
    return max(stages, SEG_STATE_STAGES_LINEAR_16BIT) if ITEMSIZE[dtype] == 2 and not decay else stages


@functools.lru_cache(maxsize=None)
def _seg_state(dtype, split, stages, dxp, rev, decay):
    return staged("tc_seg_state", (CTYPE[dtype], dxp, str(rev).lower(), split), seg_stages(dtype, stages, decay),
                  lambda s: smem_seg_state(ITEMSIZE[dtype], dxp, s))


# The kernels of chunked_wgmma.cu: their load stages; one stage's swizzled tiles take 8 KB each (tg_seg_state: X, Y;
# tg_fwd: Q, K, V; tg_bwd_dq: dO, V, K, Q; tg_bwd_dkdv: Q, K, V, dO; the walkers' state tile beside the stages), plus
# 1 KB of slack that aligns them to 1024 bytes.
WG_SOURCE = "chunked_wgmma.cu"
WG_SEG_STAGES = 3           # H200 callE: 64k 170 / 169 us (float16 / bfloat16) at 3 stages, 175 / 179 at 2
WG_FWD_STAGES = 2           # H200 callE: 64k float16 390 us at 2 stages (3 blocks/SM), 449 at 3 (2 blocks/SM)
WG_DQ_STAGES = 2            # H200 callF: 64k float16 tg_bwd_dq 506 us at 2 stages, 584 at 3
WG_DKDV_STAGES = 2          # ... tg_bwd_dkdv 650 at 2, 771 at 3
WG_DKDV_LOWREG = True       # tg_bwd_dkdv's batch 2 in two: 158 registers, 3 blocks per SM (else 182, 2 blocks); callF:
                            # 650 us against 733
WG_STAGE_CHOICES = (2, 3)
WG_DTYPES = ("float16", "bfloat16")
WG_TILE_BYTES = C * 64 * 2


TILE_MAX_BYTES = 64    # FS 3 (tile exponents): 4 operands x 4 warps of posted maxima (tg::tile_exponents), after red


def smem_wg_seg_state(stages: int, np_: int = 1, decay: bool = False, tmax: bool = False) -> int:
    """tmax: the tile exponents' posts (in the Trailer's red with log decays)."""
    return stages * 2 * np_ * WG_TILE_BYTES + (TRAILER_BYTES if decay else TILE_MAX_BYTES if tmax else 0) + 1024


def smem_wg_walk(tiles: int, stages: int, decay: bool, np_: int = 1, red_in_slack: bool = False,
                 tmax: bool = False) -> int:
    """A chunked_wgmma.cu walker's: ``tiles`` tiles a stage, the state tile (each np_ tiles: hi + lo pairs), 4 floats or
    (decay) the Trailer, and the slack that aligns the tiles to 1024 bytes; red_in_slack: the 4 floats inside that
    slack's room (tg::red_slot: tg_fwd's pairs at two stages, 113 KB: two blocks per SM); tmax: the tile exponents'
    posts after the 4 floats (in the Trailer's red with log decays)."""
    red = TRAILER_BYTES if decay else 0 if red_in_slack else 16 + (TILE_MAX_BYTES if tmax else 0)
    return (tiles * stages + 1) * np_ * WG_TILE_BYTES + red + 1024


def wg_kernel(modes: tuple, dkdv: str, dtype: str, decay: bool, ok_dims: bool = True) -> bool:
    """Whether a call of mode ``dkdv`` runs the chunked_wgmma.cu kernel of ``modes`` (WG_SEG_MODES, WG_FWD_MODES,
    WG_DQ_MODES, WG_DKDV_MODES), given that the kernel takes the call's head dims (``ok_dims``); calls with log decays only where the
    mode's walkers take them (not WG_SEG_MODES: tg_seg_state has no decay)."""
    if dkdv not in modes or dtype not in WG_DTYPES or (decay and modes is WG_SEG_MODES) or not ok_dims:
        return False
    from ._module import sm90a
    return sm90a()


def _b(x: bool) -> str:
    return str(bool(x)).lower()


# xscale calls (``forward(..., xscale=True)``, kernels/cupy/_xscale.py): float32 operands carried as float16 under a
# power-of-two scale per leading index run the 16-bit walkers, instantiated with float32 results (TO = float: each
# result scaled back by its operands' exponents, tg::xmul).  Every walker of such a call is a chunked_wgmma.cu one:
# causal, head dims <= 64, the "dqrev_wgb" mode's kernels, a compute capability 9.0 device (``xscale_refusal``).
XS_STORAGE = "float16"
XS_MODE = "dqrev_wgb"
# xscale 2 (float32 accuracy, cupy:chunked_mma_wgp): each operand two float16 planes, hi and lo (_xscale.to_half's
# parts 2), loaded as tile pairs; every product three (tg::gemm_ss / gemm_rs NP = 2); one load stage (a stage's pairs
# take twice the tiles: one stage keeps two or three blocks per SM); the forward's segment sums on tg_seg_state's
# pairs.  xscale 3 (cupy:chunked_mma_wgpw, a measured rung): the same walkers reading the caller's float32 and
# splitting each tile, times its slice's 2^-e (parts 0: the exponents alone), as it lands (tg::load_tile_pair, FS):
# H200 callX 5.736 ms at 64k against the planes' 4.413 (callW), its plain loads at each chunk's top left exposed.
# xscale 4 (cupy:chunked_mma_wgpa): the caller's float32 staged by cp.async where each pair will lie and split in place
# by the thread that copied it, after its wait (tg::stage_tile_f32, land_tile_pair): no planes, no plain loads.
# xscale 5 (cupy:chunked_mma_wgpt): as 4, each chunk tile split under its own power of two, found by the walker
# (tg::tile_exponents: one barrier), the accumulators scaled around each product by the operand tiles' exponents
# (tg::scale_pow2): no exponent pass; the exponents array all zeros, the states in the caller's units.
XS_PARTS = {1: 1, 2: 2, 3: 0, 4: 0}                     # xscale -> _xscale.to_half's parts (5: no pass)
XS_FS = {3: 1, 4: 2, 5: 3}                              # xscale -> the walkers' FS (0: the planes, or no pairs)
XS_LINEAR_ONLY = (3,)        # the storages without log decays (the split by plain loads)
XS_FWD_STAGED = (2, 4)       # the storages whose forward walker takes XS_PAIR["fwd_stages"] (FS 3: one stage only)
XS_PAIR_STAGES = 1          # the dq and dk/dv pairs walkers' load stages (two would leave one block per SM)
# The pairs walkers' choices (xscale 2 - 5), one table; XS_PAIR_CHOICES instantiates every value for a measurement
# (scripts/tune_xscale.py, which sets XS_PAIR's entries in one process).
#   fwd_stages  tg_fwd's pairs (linear): 1 (3 blocks per SM by its 155 registers) or 2 (112 KB of tiles and the block
#               max fitted into 113 KB, tg::red_slot: 2 blocks per SM); H200 callAB of 2026-12-04: 2 +1.6% at 64k
#   seg_stages  tg_seg_state's pairs: 2 or 3 (H200 callZ of 2026-12-04: within 0.6%, 2 the faster at 64k)
#   lowreg      tg_bwd_dkdv's pairs: dv stored before dk's products (True) or one wait fewer (False; 211 registers
#               either way, 2 blocks per SM; callZ: within 0.6%)
XS_PAIR = {"fwd_stages": 1, "seg_stages": 2, "lowreg": True}
XS_PAIR_DECAY_SEG_STAGES = 2    # tg_seg_state's pairs with log decays (its tc::Walk takes one or two stages)
XS_PAIR_CHOICES = {"fwd_stages": (1, 2), "seg_stages": (2, 3), "lowreg": (True, False)}
XS_GROUPS = {1: "xscale", 2: "xpair", 3: "xpairw", 4: "xpaira", 5: "xpairt"}    # xscale -> its compile group (WG_GROUPS)


def _to(out: Optional[str], np_: int = 1, fs: int = 0) -> str:
    """A walker's trailing template arguments TO, NP, FS: none (the storage type, one part), float (xscale), 2
    (pairs), FS 1 / 2 / 3 (split from float32 as the tiles land: plain loads / staged by cp.async / staged under each
    tile's own exponent, XS_FS)."""
    return ("" if out is None else f", {CTYPE[out]}") + (f", {np_}" if np_ != 1 else "") + (f", {fs}" if fs else "")


@functools.lru_cache(maxsize=None)
def _wg_seg_state(dtype: str, stages: Optional[int] = None, np_: int = 1, fs: int = 0,
                  decay: bool = False) -> Launchable:
    """decay: the pairs' segment sums with log decays (NP 2; fs 0, 2 or 3)."""
    stages = WG_SEG_STAGES if stages is None else stages
    tail = _to(None, np_, fs) + ((", 0" if not fs else "") + ", true" if decay else "")   # (.., NP, FS, DECAY)
    return Launchable(f"tg_seg_state<{CTYPE[dtype]}, {stages}{tail}>", smem_wg_seg_state(stages, np_, decay, fs == 3))


@functools.lru_cache(maxsize=None)
def _wg_dq(dtype: str, esum: bool, decay: bool = False, stages: Optional[int] = None, out: Optional[str] = None,
           np_: int = 1, fs: int = 0) -> Launchable:
    """out: the results' type where it is not the storage type (xscale: "float32"); np_ 2: hi + lo operands (fs:
    split from float32 as the tiles land, XS_FS)."""
    stages = WG_DQ_STAGES if stages is None else stages
    return Launchable(f"tg_bwd_dq<{CTYPE[dtype]}, {stages}, {_b(esum)}, {_b(decay)}{_to(out, np_, fs)}>",
                      smem_wg_walk(4, stages, decay, np_, tmax=fs == 3))


@functools.lru_cache(maxsize=None)
def _wg_dkdv(dtype: str, decay: bool = False, stages: Optional[int] = None, lowreg: Optional[bool] = None,
             out: Optional[str] = None, np_: int = 1, fs: int = 0) -> Launchable:
    stages = WG_DKDV_STAGES if stages is None else stages
    lowreg = WG_DKDV_LOWREG if lowreg is None else lowreg
    return Launchable(f"tg_bwd_dkdv<{CTYPE[dtype]}, {stages}, {_b(lowreg)}, {_b(decay)}{_to(out, np_, fs)}>",
                      smem_wg_walk(4, stages, decay, np_, tmax=fs == 3))


@functools.lru_cache(maxsize=None)
def _wg_fwd(dtype: str, decay: bool = False, stages: Optional[int] = None, out: Optional[str] = None,
            np_: int = 1, fs: int = 0) -> Launchable:
    stages = WG_FWD_STAGES if stages is None else stages
    return Launchable(f"tg_fwd<{CTYPE[dtype]}, {stages}, {_b(decay)}{_to(out, np_, fs)}>",
                      smem_wg_walk(3, stages, decay, np_, red_in_slack=np_ == 2 and stages == 2 and not decay,
                                   tmax=fs == 3))


def _wg_walkers(xscale: int) -> dict:
    """The keywords of _wg_fwd, _wg_dq, _wg_dkdv for an ``xscale`` (0: none)."""
    if xscale >= 2:
        return dict(out="float32", np_=2, stages=XS_PAIR_STAGES, fs=XS_FS.get(xscale, 0))
    return dict(out="float32") if xscale == 1 else {}


def _wg_fwd_keywords(xscale: int, decay: bool) -> dict:
    """_wg_walkers plus the linear pairs' forward stages choice."""
    return dict(_wg_walkers(xscale), **({"stages": XS_PAIR["fwd_stages"]} if xscale in XS_FWD_STAGED and not decay else {}))


def _wg_dkdv_keywords(xscale: int) -> dict:
    """_wg_walkers plus the pairs' dk/dv LOWREG choice."""
    return dict(_wg_walkers(xscale), **({"lowreg": XS_PAIR["lowreg"]} if xscale >= 2 else {}))


@functools.lru_cache(maxsize=None)
def _dq(dtype, split, stages, dvp, esum=False):
    """tc_bwd_dq; esum: ESUM true, the walker also writes the REV segment sums (dk/dv modes in REV_IN_DQ)."""
    return staged("tc_bwd_dq", (CTYPE[dtype], dvp, split), stages, lambda s: smem_dq(ITEMSIZE[dtype], dvp, s),
                  tail=("true",) if esum else ())


@functools.lru_cache(maxsize=None)
def _dkdv(dtype, split, stages, dkp, dvp, which, layout=0):
    return staged("tc_bwd_dkdv", (CTYPE[dtype], dkp, dvp, split, which, layout), stages,
                  lambda s: smem_dkdv(ITEMSIZE[dtype], dkp, dvp, which, s, layout, dtype in STATE_PAIRS),
                  32 * DKDV_WARPS[layout])


def dkdv_launches(dkp: int, dvp: int, dkdv: str, causal: bool = True) -> tuple:
    """((WHICH, LAYOUT), ...) of the dk/dv walkers one backward launches (padded head dims, mode, causal: the
    dq-folded walker runs causal calls only, others take the fused kernel and tc_bwd_dq)."""
    if (dkp, dvp) != (64, 64):
        return DKDV_WIDE
    if not causal and folds(dkdv):
        return DKDV_MODES["fused"]
    return DKDV_MODES[dkdv]


def folds(dkdv: str) -> bool:
    """Whether the mode's walkers form dq too (DKDV_DQ)."""
    return any(which == DKDV_DQ for which, _ in DKDV_MODES[dkdv])


def folded(dkp: int, dvp: int, dkdv: str, causal: bool) -> bool:
    """Whether a call's backward forms dq in the dk/dv walk (so its forward stores the per-chunk states)."""
    return any(which == DKDV_DQ for which, _ in dkdv_launches(dkp, dvp, dkdv, causal))


def _group(dtype: str, split: int, stages: int) -> tuple:
    """Every kernel of one storage type, split and stage count, compiled together (one NVRTC run, one
    disk-cache entry)."""
    out = []
    for p in DIMS:
        out += [_fwd(dtype, split, stages, p), _dq(dtype, split, stages, p)]
        out += [_dq(dtype, split, stages, p, esum=True)] if p in REV_IN_DQ_DIMS else []
        out += [_seg_state(dtype, split, stages, p, rev, decay) for rev in (False, True) for decay in (False, True)]
    out += [_fwd(dtype, split, stages, 64, store=True)]          # the dq-folded mode's forward (head dims 64)
    for dkp in DIMS:
        for dvp in DIMS:
            for mode in DKDV_MODES:
                out += [_dkdv(dtype, split, stages, dkp, dvp, *ww) for ww in dkdv_launches(dkp, dvp, mode)]
    out = list(dict.fromkeys(out))
    return tuple(k.expr for k in out)


_DG = {dt: f"tc_dg<{c}>" for dt, c in CTYPE.items()}          # d log_decay written in the caller's dtype
COMMON = ("tc_seg_scan<false>", "tc_seg_scan<true>", "tc_dg_part") + tuple(_DG.values())
GROUPS = {(dt, split, st): _group(dt, split, st)
          for st in STAGES for dt, split in (("float16", 1), ("bfloat16", 1), ("float32", 3), ("float32", 1))}
WG_GROUPS = {dt: tuple([_wg_seg_state(dt, s).expr for s in WG_STAGE_CHOICES]     # (log decays: tc::Walk, 2 stages)
                       + [_wg_fwd(dt, d, s).expr for d in (False, True) for s in WG_STAGE_CHOICES if not d or s == 2]
                       + [_wg_dq(dt, e, d, s).expr for e in (False, True) for d in (False, True) for s in WG_STAGE_CHOICES
                          if not d or s == 2]
                       + [_wg_dkdv(dt, d, s, lr).expr for d in (False, True) for s in WG_STAGE_CHOICES
                          for lr in (False, True) if not d or s == 2])
             for dt in WG_DTYPES}
WG_GROUPS["xscale"] = tuple([_wg_fwd(XS_STORAGE, d, out="float32").expr for d in (False, True)]     # the defaults'
                            + [_wg_dq(XS_STORAGE, e, d, out="float32").expr for e in (False, True) for d in (False, True)]
                            + [_wg_dkdv(XS_STORAGE, d, out="float32").expr for d in (False, True)])
for _x in (2, 3, 4, 5):                            # log decays: the planes' and the staged walkers (xscale 2, 4, 5)
    _ds = (False,) if _x in XS_LINEAR_ONLY else (False, True)
    WG_GROUPS[XS_GROUPS[_x]] = tuple([_wg_fwd(XS_STORAGE, d, **_wg_walkers(_x)).expr for d in _ds]
                                     + [_wg_fwd(XS_STORAGE, **dict(_wg_walkers(_x), stages=2)).expr] * (_x in XS_FWD_STAGED)
                                     + [_wg_dq(XS_STORAGE, e, d, **_wg_walkers(_x)).expr for e in (False, True)
                                        for d in _ds]
                                     + [_wg_dkdv(XS_STORAGE, d, **dict(_wg_walkers(_x), lowreg=lr)).expr for d in _ds
                                        for lr in XS_PAIR_CHOICES["lowreg"]]
                                     + [_wg_seg_state(XS_STORAGE, st, 2, XS_FS.get(_x, 0)).expr
                                        for st in XS_PAIR_CHOICES["seg_stages"]]
                                     + [_wg_seg_state(XS_STORAGE, XS_PAIR_DECAY_SEG_STAGES, 2, XS_FS.get(_x, 0),
                                                      decay=True).expr] * (_x not in XS_LINEAR_ONLY))
INSTANTIATIONS = list(dict.fromkeys((SOURCE, e) for grp in list(GROUPS.values()) + [COMMON] for e in grp))
INSTANTIATIONS += [(WG_SOURCE, e) for grp in WG_GROUPS.values() for e in grp]
INSTANTIATIONS += _xscale.INSTANTIATIONS
declare_groups(SOURCE, list(GROUPS.values()) + [COMMON])      # what cli.py warmup compiles
declare_groups(WG_SOURCE, list(WG_GROUPS.values()))


@functools.lru_cache(maxsize=None)      # a launch looks its kernel up by four short keys, not by the group
def _kern(dtype: str, split: int, stages: int, expr: str):
    return get_kernel(SOURCE, expr, group=GROUPS[(dtype, split, stages)])


@functools.lru_cache(maxsize=None)
def _common(expr: str):
    return get_kernel(SOURCE, expr, group=COMMON)


@functools.lru_cache(maxsize=None)
def _wg_kern(group: str, expr: str):
    return get_kernel(WG_SOURCE, expr, group=WG_GROUPS[group])


def _wg_prepared(dt: str, k: Launchable, grid, xscale: int = 0):
    """A chunked_wgmma.cu kernel's launch at ``grid`` (as ``_prepared`` for chunked_mma.cu's); xscale 1 / 2: of the
    float32-result instantiations (XS_GROUPS)."""
    return Prepared(_wg_kern(XS_GROUPS[xscale] if xscale else dt, k.expr), grid, (k.threads,), k.smem)


PAIRS_FALLBACK_MODE = "dqrev"    # what a pairs call (xscale 2, 3) the walkers refuse runs: the float32 default's kernels


def pairs_or_fallback(split: int, dkdv: str, xscale: int, dk: int, dv: int, causal: bool = True, decay: bool = False,
                      refuse: bool = False) -> tuple:
    """(split, dkdv, xscale) a call of a pairs variant runs: its own, or 3xTF32 in PAIRS_FALLBACK_MODE where
    ``xscale_refusal`` (or the caller: ``refuse``) says so -- float32 accuracy either way."""
    if xscale >= 2 and (refuse or xscale_refusal(dk, dv, causal, decay, xscale)):
        return 3, PAIRS_FALLBACK_MODE, 0
    return split, dkdv, xscale


def xscale_refusal(dk: int, dv: int, causal: bool, decay: bool = False, parts: int = 1) -> Optional[str]:
    """Why a call cannot run as xscale of ``parts`` (every walker a chunked_wgmma.cu one), or None."""
    if parts in XS_LINEAR_ONLY and decay:
        return "log decays (the split as the tiles land is linear attention's)"
    if not causal:
        return "causal=False (the warpgroup-MMA walkers are causal)"
    if max(dk, dv) > 64:
        return f"head dims up to 64 (Dk={dk}, Dv={dv})"
    from ._module import sm90a
    if not sm90a():
        return "a compute capability 9.0 device (H100, H200: warpgroup MMA)"
    return None


# ----------------------------------------------------------------------------- segments
@dataclass(frozen=True)
class SegmentTable(Segmentation):
    """The segment table (kernels/_segments.py) on the device, int32 arrays: t0, t1 (token range of each
    segment), seq (its sequence), seq_seg (offsets of each sequence's segments), cu_dev."""
    T: int
    t0: object
    t1: object
    seq: object
    seq_seg: object
    cu_dev: object


@functools.lru_cache(maxsize=256)
def segment_table(T: int, L: int, cu: Optional[tuple] = None) -> SegmentTable:
    import cupy as cp
    r = segment_rows(T, C, L, cu)
    cols = (r.rows[:, 0], r.rows[:, 1], r.rows[:, 2], r.seq_seg, np.asarray(r.cu, np.int32))
    return SegmentTable(r.cu, L, len(r.rows), T, *(cp.asarray(np.ascontiguousarray(x)) for x in cols))


@functools.lru_cache(maxsize=256)
def chunk_offsets(T: int, L: int, cu: Optional[tuple] = None):
    """(offsets, total): the index of each segment's first chunk among all chunks of the packed T axis (int32,
    nseg + 1 entries on the device, the last one the total), where the dq-folded mode keeps the per-chunk states."""
    import cupy as cp
    r = segment_rows(T, C, L, cu)
    nch = -(-(r.rows[:, 1] - r.rows[:, 0]) // C)
    off = np.concatenate([[0], np.cumsum(nch)]).astype(np.int32)
    return cp.asarray(off), int(off[-1])


@functools.lru_cache(maxsize=None)
def _sm_count() -> int:
    import cupy as cp
    return int(cp.cuda.Device().attributes["MultiProcessorCount"])


def choose_segments(N: int, longest: int, tiles: int) -> int:
    """Chunks per segment.  Measured on an H200 (scripts/tune_chunked_mma.py; N = 32, D = 64, float16,
    docs/kernels/linear.md): segments of 4-16 chunks are fastest at every T from 4k to 64k (fwd+bwd at 64k:
    2.32 ms at 8 against 2.99 at 128 and 16.1 with whole sequences), so take SEGMENT_CHUNKS, shortened when
    that leaves fewer than about two blocks per SM."""
    nch = math.ceil(longest / C)
    if nch <= 1:
        return 0
    L = min(SEGMENT_CHUNKS, max(1, math.ceil(nch * N * tiles / (2 * _sm_count()))))
    return 0 if L >= nch else L


# ----------------------------------------------------------------------------- forward / backward
@dataclass
class CoreContext:
    """What the backward of one core call needs (kept by the op's context)."""
    q: object
    k: object
    v: object
    g: object                 # (N, T) float32, float16 or bfloat16 log decays, or None
    table: SegmentTable
    Hstart: object            # causal: (N, nseg, dk, dv) state before each segment (None: zeros); else totals
    gam: object               # (N, nseg) segment log-decay totals, or None
    final: object             # (N, nseq, dk, dv) state after each sequence, or None
    S0: object                # (N, nseq, dk, dv) initial state, or None
    scale: float
    causal: bool
    split: int
    stages: int               # the kernels' load pipeline (STAGES)
    dkdv: str = "fused"       # the dk/dv walkers at head dims (64, 64) (DKDV_MODES)
    plan: object = None       # the forward's _CorePlan (the backward's launches are cached on it)
    scale32: object = None    # the scale as the kernels take it (np.float32)
    states: object = None     # dq-folded mode: the allocation of the per-chunk states (kept until the backward) and
    state_args: tuple = ()    #   the kernels' Hst, Hsig: the state before every chunk ((N, chunks, ntv, 64, 64) in
                              #   q's dtype, as its products read it; bfloat16 decayed: (2, N, ..), hi then lo tiles,
                              #   STATE_PAIRS) and its power-of-two scale ((N, chunks, ntv) float32)
    xexp: object = None       # xscale calls: the operands' exponents (_xscale.exponents); q, k, v as the walkers
                              #   read them (float16 copies, the hi planes of pairs, or float32: XS_PARTS), S0 and
                              #   final in the walkers' units


@functools.lru_cache(maxsize=1024)
def _scalars(T: int, dk: int, dv: int, nseg: int, nseq: int, causal: bool) -> tuple:
    """The walkers' int32 arguments, made once per geometry: (T, dk, dv, nseg, nseq) and causal.  (The scale
    is not cached: a float key would take -0.0 for 0.0.)"""
    i32 = np.int32
    return (i32(T), i32(dk), i32(dv), i32(nseg), i32(nseq)), i32(causal)


_NULL = np.uint64(0)
_ONE32 = np.float32(1.0)


def _ptr(x):
    """An optional array argument: the array, or a null pointer (one constant: no NumPy scalar made per call)."""
    return _NULL if x is None else x


G_KIND = {"float32": 0, "float16": 1, "bfloat16": 2}    # g_kind: tc::G_F32, G_F16, G_BF16 (chunked_mma.cu)
LOG_DECAY_DTYPES = tuple(G_KIND)                        # the walkers read each (their g_kind argument)


def _prepared(dt: str, split: int, stages: int, k: Launchable, grid):
    """A walker's launch (``_module.Prepared``) at ``grid``."""
    return Prepared(_kern(dt, split, stages, k.expr), grid, (k.threads,), k.smem)


class _CorePlan:
    """Everything of one core call that depends only on its geometry, made once per (storage dtype, shape, head
    dims, split, stages, causal, packing, segments, log-decay dtype, initial state given, final state wanted):
    the segment table, the kernels' scalar arguments and each launch prepared (``_module.Prepared``: kernel,
    grid, block, shared memory).  The backward's launches are made on its first use (``backward_plan``)."""

    def __init__(self, dt, shape, dv, split, stages, causal, cu, L, g_name, has_S0, want_final, dkdv="fused",
                 xscale=False):
        N, T, dk = lead_size(shape, 2), shape[-2], shape[-1]
        self.N, self.T, self.dk, self.dv, self.dt, self.split, self.stages = N, T, dk, dv, dt, split, stages
        xscale = int(xscale)                                    # 1: float16 operands, 2 - 5: hi + lo pairs
        self.xscale = xscale                                    # (float32 results of XS_STORAGE operands)
        self.out_dtype = np.dtype(np.float32) if xscale else None     # None: the operands' dtype
        refusal = xscale_refusal(dk, dv, causal, g_name is not None, xscale) if xscale else None
        if xscale and (dt != XS_STORAGE or dkdv != XS_MODE or refusal):
            raise ValueError(f"xscale calls take {XS_STORAGE} operands in mode {XS_MODE!r} and need "
                             f"{refusal or 'those'}")
        self.causal, self.has_S0 = causal, has_S0
        self.dkp, self.dvp = pad_dim(dk), pad_dim(dv)
        self.ntk, self.ntv = -(-dk // BV), -(-dv // BV)
        if L is None:
            longest = T if cu is None else max(b - a for a, b in zip(cu[:-1], cu[1:]))
            L = choose_segments(N, longest, self.ntv)
        tab = self.table = segment_table(T, L, cu)
        self.single = tab.single
        self.E = dk * dv
        self.o_shape = tuple(shape[:-1]) + (dv,)
        self.state_shape = (N, tab.nseq, dk, dv)
        self.seg_shape = (N, tab.nseg, dk, dv)
        self.dims, self.causal32 = _scalars(T, dk, dv, tab.nseg, tab.nseq, causal)
        self.g_kind = np.int32(G_KIND.get(g_name, 0))
        self.decay = g_name is not None
        self.segs = (tab.t0, tab.t1)
        self.head = self.segs + (tab.seq,) + self.dims          # the walkers' arguments after the pointers
        self.want_final = want_final
        i32 = np.int32
        self.seg_args = (i32(T), i32(dk), i32(dv), i32(tab.nseg))
        self.scan_args = (tab.seq_seg, i32(tab.nseg), i32(tab.nseq), np.int64(self.E))
        grid = (tab.nseg * self.ntv, N)
        self.seg_state = self.seg_scan = None
        self.seg_wg = False                # a chunked_wgmma.cu launch: takes the exponents after tc's arguments
        if not (causal and tab.single):
            if xscale >= 2:                                     # pairs: the segment sums of tg_seg_state's pairs
                seg = _wg_seg_state(dt, XS_PAIR_DECAY_SEG_STAGES if self.decay else XS_PAIR["seg_stages"], 2,
                                    XS_FS.get(xscale, 0), self.decay)
                self.seg_state, self.seg_wg = _wg_prepared(dt, seg, grid, xscale), True
            elif wg_kernel(WG_SEG_MODES, dkdv, dt, self.decay, self.dkp == 64):
                self.seg_state, self.seg_wg = _wg_prepared(dt, _wg_seg_state(dt), grid), True
            else:
                seg = _seg_state(dt, split, stages, self.dkp, False, self.decay)
                self.seg_state = _prepared(dt, split, stages, seg, grid)
            if causal or not tab.single:
                self.seg_scan = Prepared(_common("tc_seg_scan<false>"), (-(-self.E // 256), tab.nseq, N), (256,))
        # dq folded into the dk/dv walk (DKDV_DQ): the forward writes the state before every chunk
        self.fold = folded(self.dkp, self.dvp, dkdv, causal)
        self.fwd_wg = causal and not self.fold and wg_kernel(WG_FWD_MODES, dkdv, dt, self.decay, self.dkp == 64)
        if self.fwd_wg:      # (its launch takes the exponents of xscale calls after tc_fwd's arguments)
            self.fwd = _wg_prepared(dt, _wg_fwd(dt, self.decay, **_wg_fwd_keywords(xscale, self.decay)), grid, xscale)
        else:
            self.fwd = _prepared(dt, split, stages, _fwd(dt, split, stages, self.dkp, store=self.fold), grid)
        self.fold_args = (_ptr(None),) * 3                      # tc_fwd's Hst, Hsig, seg_c0 without STORE
        self.anchored = self.fold and self.decay and dkdv in ANCHORED     # d log_decay from chunk anchors
        if self.fold:                                           # by address, in the saved arrays' allocation
            self.chunk0, nch = chunk_offsets(T, L, cu)
            self.nch = nch
            npair = 2 if self.decay and dt in STATE_PAIRS else 1   # hi tiles (, then lo tiles: STATE_PAIRS)
            self.states_layout = (((npair, N, nch, self.ntv, self.dkp, BV), np.dtype(f"u{ITEMSIZE[dt]}")),  # T
                                  ((N, nch, self.ntv), np.float32))
        # the arrays the forward keeps for the backward (log-decay totals, the states before each segment, an internal
        # final state; the segment sums where they are the totals) and the per-chunk states of the fold: one
        # allocation at any size (they live and die with the context).  The segment sums the scan reads join it
        # while the block stays within backends.OUTPUTS_MERGE_MAX; above, kept with the context they would hold
        # N nseg dk dv floats from the forward to the backward, so they are a per-call allocation.  o, and a final
        # state the caller gets, have their own.
        parts = {}
        if self.seg_state is not None:
            parts["Eseg"] = (self.seg_shape, np.float32)
            if self.decay:
                parts["gam"] = ((N, tab.nseg), np.float32)
            if self.seg_scan is not None:
                parts["Hstart"] = (self.seg_shape, np.float32)
                if not want_final:
                    parts["final"] = (self.state_shape, np.float32)
        states = self.states_layout if self.fold else ()
        saved = outputs_layout(tuple(parts.values()), states, together=True) if parts or self.fold else None
        self.eseg_temp = self.seg_scan is not None and saved.nbytes > backends.OUTPUTS_MERGE_MAX
        if self.eseg_temp:
            del parts["Eseg"]
            saved = outputs_layout(tuple(parts.values()), states, together=True)
        self.saved_at = {name: i for i, name in enumerate(parts)}        # each part's place in the block
        self.saved = saved
        self._backward: dict = {}
        self.tails = (None, (), ())     # (scale32, tc_fwd's tail, + the null fold arguments): run

    def run(self, q, k, v, g, S0, scale32, xexp=None) -> tuple:
        """One forward's allocations and launches: (o, Hstart -- the state the backward's walkers start from:
        causal, the state before each segment (None: zeros); else the totals --, gam, final, states, state_args)
        (CoreContext's fields).  xexp: the operands' exponents of an xscale call (_xscale.exponents), else None."""
        import cupy as cp
        o = new_output(cp, self.o_shape, self.out_dtype or q.dtype)
        saved, state_args, states = ((), (), None) if self.saved is None else self.saved.new(cp)
        Hstart = gam = final = None
        if self.seg_state is None:                     # causal, one segment per sequence
            Hstart = S0
            final = new_output(cp, self.state_shape, cp.float32) if self.want_final else None
        else:
            at = self.saved_at
            Eseg = new_output(cp, self.seg_shape, cp.float32) if self.eseg_temp else saved[at["Eseg"]]
            gam = saved[at["gam"]] if self.decay else None
            self.seg_state((k, v, g, Eseg, gam) + self.segs + self.seg_args
                           + ((_ONE32, self.g_kind, xexp) if self.seg_wg else (_ONE32, self.g_kind)))
            if self.seg_scan is None:
                final = Eseg                                 # one segment per sequence: its sum is the total
            else:
                Hstart = saved[at["Hstart"]]
                final = new_output(cp, self.state_shape, cp.float32) if self.want_final else saved[at["final"]]
                self.seg_scan((Eseg, gam, S0, Hstart, final) + self.scan_args)
        tails = self.tails                             # the tail of the last scale object, as _BackwardPlan's
        if tails[0] is not scale32:
            tail = self.head + (scale32, self.causal32, self.g_kind)
            tails = self.tails = (scale32, tail, tail + self.fold_args)
        if self.fold:                                  # the state before every chunk, for the backward's dq
            state_args = tuple(state_args)             # (its addresses in the saved arrays' allocation)
            tail = tails[1] + state_args + (self.chunk0,)
        else:
            tail = tails[2]
        args = (q, k, v, g, o, Hstart if self.causal else final, final if self.seg_state is None else None) + tail
        self.fwd(args + (xexp,) if self.fwd_wg else args)
        return o, (Hstart if self.causal else final), gam, final, states, state_args

    def backward_plan(self, dkdv: str, want_dg: bool, dg_name: str):
        key = (dkdv, want_dg, dg_name)
        b = self._backward.get(key)
        if b is None:
            b = self._backward[key] = _BackwardPlan(self, dkdv, want_dg, dg_name)
        return b


class _BackwardPlan:
    """The backward's launches of one _CorePlan, dk/dv mode and d log_decay choice."""

    def __init__(self, cp_: _CorePlan, dkdv: str, want_dg: bool, dg_name: str):
        dt, split, stages, tab, N = cp_.dt, cp_.split, cp_.stages, cp_.table, cp_.N
        wgk = _wg_walkers(cp_.xscale)                           # the walkers' instantiation keywords
        i32 = np.int32
        self.rseg = self.rscan = None
        # the REV segment sums from tc_bwd_dq (ESUM): causal, several segments, the dq walker run (not folded)
        self.esum = (dkdv in REV_IN_DQ and cp_.causal and not tab.single and not cp_.fold
                     and cp_.dvp in REV_IN_DQ_DIMS)
        self.chained = not (cp_.causal and tab.single)        # the backward chains segment sums (REV pass or ESUM)
        if self.chained and not self.esum:
            self.rseg = _prepared(dt, split, stages, _seg_state(dt, split, stages, cp_.dkp, True, cp_.decay),
                                  (tab.nseg * cp_.ntv, N))
        if not tab.single:                                    # several segments: their sums chained
            self.rscan = Prepared(_common("tc_seg_scan<true>"), (-(-cp_.E // 256), tab.nseq, N), (256,))
        self.dq_wg = not cp_.fold and cp_.causal and wg_kernel(WG_DQ_MODES, dkdv, dt, cp_.decay, cp_.dvp == 64)
        if cp_.fold:
            self.dq = None
        elif self.dq_wg:
            self.dq = _wg_prepared(dt, _wg_dq(dt, self.esum, cp_.decay, **wgk), (tab.nseg * cp_.ntk, N), cp_.xscale)
        else:
            self.dq = _prepared(dt, split, stages, _dq(dt, split, stages, cp_.dvp, self.esum), (tab.nseg * cp_.ntk, N))
        launches = dkdv_launches(cp_.dkp, cp_.dvp, dkdv, cp_.causal)
        # the chunked_wgmma.cu walkers' launches take the exponents of xscale calls after tc_*'s arguments
        self.dkdv_wg = launches == ((0, 0),) and cp_.causal and wg_kernel(WG_DKDV_MODES, dkdv, dt, cp_.decay)
        if self.dkdv_wg:
            self.dkdv = (_wg_prepared(dt, _wg_dkdv(dt, cp_.decay, **_wg_dkdv_keywords(cp_.xscale)), (tab.nseg, N),
                                      cp_.xscale),)
        else:
            self.dkdv = tuple(_prepared(dt, split, stages, _dkdv(dt, split, stages, cp_.dkp, cp_.dvp, which, layout),
                                        (tab.nseg * (cp_.ntk if which == 1 else cp_.ntv if which == 2 else 1), N))
                              for which, layout in launches)
        self.want_dg = want_dg
        self.anchored = want_dg and cp_.anchored
        self.layout = None              # the outputs' backends.OutputLayout, from the first call's arrays
        self.tails = (None, (), (), ())  # (scale32, the walkers' tail, + the dk/dv walker's nulls, + dq's): run
        self.scratch = ()
        if want_dg:
            self.scratch = (((cp_.ntk, N, cp_.T), np.float32),) * 2     # the row dots of q.dq and k.dk
            if self.anchored:                                           # ... and the chunk anchors' parts
                self.scratch += (((N, cp_.nch, ANC_PARTS), np.float32),)
            self.dg_part = (None if tab.single or self.anchored
                            else Prepared(_common("tc_dg_part"), (tab.nseg, N), (DG_THREADS,)))
            self.dg = Prepared(_common(_DG[dg_name]), (tab.nseg, N), (DG_THREADS,))
            ntk = i32(cp_.ntk)
            self.part_tail = cp_.segs + (i32(cp_.T), i32(tab.nseg))
            self.dg_tail = (cp_.segs + (tab.seq, tab.seq_seg))
            self.dg_scalars = (i32(not cp_.has_S0), i32(cp_.T), i32(tab.nseg), i32(tab.nseq))
            self.dg_chunks = cp_.chunk0 if self.anchored else _NULL     # tc_dg's seg_c0 (with its anc)
            self.ntk32 = ntk
        # the backward's own arrays (the REV segment sums, their scan's outputs but a dS0 the caller gets, the
        # segments' dG sums): one allocation at any size, alive for this call only
        tmp = []
        if self.chained:
            tmp.append((cp_.seg_shape, np.float32))                           # Rseg
            if self.rscan is not None:
                tmp.append((cp_.seg_shape, np.float32))                       # dSend
                if not cp_.has_S0:
                    tmp.append((cp_.state_shape, np.float32))                 # dS0 (dropped by the caller)
        if want_dg and self.dg_part is not None:
            tmp.append(((N, tab.nseg), np.float64))                           # part
        self.temps = outputs_layout(tuple(tmp), together=True) if tmp else None


    def run(self, P: "_CorePlan", q, k, v, g, do, Hstart, gam, final, S0, dST, scale32, state_args, dg_dtype,
            xexp=None) -> tuple:
        """One backward's allocations and launches (the forward's CoreContext fields as arguments): (dq, dk, dv, dg,
        dS0) as ``backward`` describes (dS0 whatever the walk made: the caller drops it without an initial
        state).  xexp: an xscale call's exponents (dO's row written; states, dST included, in the walkers' units)."""
        import cupy as cp
        B, want_dg = self, self.want_dg
        layout = B.layout
        if layout is None:               # dq, dk, dv (and d log_decay) as one allocation (backends.new_outputs)
            od = P.out_dtype
            layout = B.layout = outputs_layout(((q.shape, od or q.dtype), (k.shape, od or k.dtype),
                                                (v.shape, od or v.dtype))
                                               + (((g.shape, dg_dtype),) if want_dg else ()), B.scratch)
        # the row dots of q.dq and k.dk per dk tile (want_dg), by address, in the same allocation (held by `keep`
        # until tc_dg is queued)
        outs, rows, keep = layout.new(cp)
        dq, dk, dv = outs[0], outs[1], outs[2]
        rq, rk = rows[:2] if want_dg else (None, None)
        anc = rows[2] if B.anchored else None              # the chunk anchors (dk/dv mode "anchor")
        tails = B.tails                                    # the walkers' tails of the last scale object (one
        if tails[0] is not scale32:                        # tuple: no thread sees a scale with another's tail)
            tail = P.head + (scale32, P.causal32, P.g_kind)
            tails = B.tails = (scale32, tail, tail + (_NULL,) * 6,   # + tc_bwd_dkdv's dq, rq, Hst, Hsig, seg_c0, anc
                               tail + (_NULL,))                     # + tc_bwd_dq's Eout (no REV sums)
        _, tail, tail_nulls, tail_dq = tails
        temps = () if B.temps is None else B.temps.new(cp)[0]
        dS0 = dSend = None
        if not B.chained:                                   # causal, one segment per sequence
            dSend = dST
            dS0 = new_output(cp, P.state_shape, cp.float32) if S0 is not None else None
        else:
            Rseg = temps[0]
            if B.esum:                                     # dq first: it writes the REV sums the scan chains
                B.dq((q, k, v, g, do, dq, rq, Hstart) + tail + ((Rseg, xexp) if B.dq_wg else (Rseg,)))
            else:
                B.rseg((q, do, g, Rseg, None) + P.segs + P.seg_args + (scale32, P.g_kind))
            if B.rscan is None:
                dSend = Rseg                                     # the total gradient of each sequence's state
            else:
                dSend = temps[1]
                dS0 = new_output(cp, P.state_shape, cp.float32) if P.has_S0 else temps[2]
                B.rscan((Rseg, gam, dST, dSend, dS0) + P.scan_args)
                if not P.causal:
                    dSend = dS0                                  # not causal: the gradient of the total
        if B.dq is not None:
            if not B.esum:
                B.dq((q, k, v, g, do, dq, rq, Hstart) + (tail_dq + (xexp,) if B.dq_wg else tail_dq))
            tail = tail_nulls
        else:                                              # dq folded into the dk/dv walk
            tail += (dq, _ptr(rq)) + state_args + (P.chunk0, _ptr(anc))
        dS0_out = dS0 if not B.chained else None
        if B.dkdv_wg:
            tail += (xexp,)
        for launch_dkdv in B.dkdv:
            launch_dkdv((q, k, v, g, do, dk, dv, rk, dSend, dS0_out) + tail)
        dg = None
        if want_dg:
            dg = outs[3]
            cst = None
            if dST is not None:
                cst = cp.ascontiguousarray((dST * final).sum(axis=(-2, -1)), dtype=cp.float32)
                if xexp is not None:                   # <dST, final> in the caller's units, as rq and rk are
                    cst = _xscale.ldexp(cst, xexp, plus=tuple(_xscale.OPERAND))
            part = None
            if B.dg_part is not None:   # the segments' sums of dG, for the carries of the earlier segments
                part = temps[-1]
                B.dg_part((rq, B.ntk32, rk, B.ntk32, part) + B.part_tail)
            B.dg((rq, B.ntk32, rk, B.ntk32, dg, part, *B.dg_tail, cst, *B.dg_scalars, _ptr(anc), B.dg_chunks))
        return dq, dk, dv, dg, dS0


_PLANS: dict = {}
_MAX_PLANS = 1024


def _plan_key(dt, shape, dv, split, stages, causal, cu, L, g_name, g_shape, has_S0, want_final, dkdv,
              xscale=False) -> tuple:
    """The key of a _CorePlan in _PLANS (``_plan`` and ``CoreRun``): the call's signature, and the merge bound the
    plan weighs its saved block against (eseg_temp)."""
    return (dt, shape, dv, split, stages, causal, cu, L, g_name, g_shape, has_S0, want_final, dkdv, xscale,
            backends.OUTPUTS_MERGE_MAX)


def _plan(dt, shape, dv, split, stages, causal, cu, L, g, has_S0, want_final, dkdv="fused", xscale=False) -> _CorePlan:
    g_name = g_shape = None
    if g is not None:
        g_name, g_shape = dtype_name(g.dtype), g.shape
    key = _plan_key(dt, shape, dv, split, stages, causal, cu, L, g_name, g_shape, has_S0, want_final, dkdv, xscale)
    p = _PLANS.get(key)
    return p if p is not None else _plan_of(key)


def _plan_of(key: tuple) -> _CorePlan:
    """The cached _CorePlan of ``_plan``'s key (made on a miss, after the log decays' dtype is checked)."""
    p = _PLANS.get(key)
    if p is None:
        dt, shape, dv, split, stages, causal, cu, L, g_name, _, has_S0, want_final, dkdv, xscale, _ = key
        if g_name is not None and g_name not in LOG_DECAY_DTYPES:
            raise ValueError(f"log decays must be one of {LOG_DECAY_DTYPES} (got {g_name})")
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        p = _PLANS[key] = _CorePlan(dt, shape, dv, split, stages, causal, cu, L, g_name, has_S0, want_final, dkdv,
                                    xscale)
    return p


def _check_modes(dt: str, split: int, stages: int, dkdv: str) -> int:
    """``forward``'s checks of its modes; the split the kernels take (the 3xTF32 split applies to float32 products
    only)."""
    if stages not in STAGES:
        raise ValueError(f"stages must be one of {STAGES} (got {stages!r})")
    if dkdv not in DKDV_MODES:
        raise ValueError(f"dkdv must be one of {tuple(DKDV_MODES)} (got {dkdv!r})")
    return split if dt == "float32" else 1


def _xs_operands(xscale: int, q, k, v) -> tuple:
    """(q, k, v, xexp) of an xscale call: the operands as its walkers read them (_xscale.to_half of XS_PARTS) and the
    exponents they were scaled by; the arrays as they are and None without xscale."""
    if not xscale:
        return q, k, v, None
    if xscale not in XS_PARTS:                                  # tile exponents: no pass, every exponent 0
        return q, k, v, _xscale.exponents(lead_size(q.shape, 2), zero=True)
    xexp = _xscale.exponents(lead_size(q.shape, 2))
    return _xscale.to_half((q, k, v), xexp, "q", XS_PARTS[xscale]) + (xexp,)


def _xs_cotangent(xscale: int, xexp, do):
    """do as an xscale call's walkers read it (its exponents written to xexp's dO row); as it is without xscale (and
    for the tile exponents' walkers)."""
    return do if xexp is None or xscale not in XS_PARTS else _xscale.to_half((do,), xexp, "do", XS_PARTS[xscale])[0]


class CoreRun:
    """``forward`` and ``backward`` of one call signature with every choice made once (a variant's ``prepare``, kept
    by the public ops' plan, which keys it on every array's shape and dtype and every option): the _CorePlan, the
    scale as the kernels take it, the backward's plan (made at the first backward).  No initial or final state
    (those calls take the general path).  ``forward(q, k, v, g)`` -> (o, ctx) and ``backward(ctx, do)`` -> the
    first ``n_grads`` of (dq, dk, dv, dg): the arrays as ``forward`` takes them (C-contiguous, q's dtype; g
    float32 or float16), do C-contiguous in q's dtype.  ctx: (q, k, v, g, Hstart, gam, final, states,
    state_args, xexp), no CoreContext built.  xscale: float32 q, k, v and do as ``forward``'s xscale runs them."""
    __slots__ = ("P", "scale32", "dkdv", "want_dg", "dg_dtype", "dg_name", "n_grads", "B", "xscale")

    def __init__(self, dt: str, shape, dv: int, g_dtype, *, scale, causal=True, split=1, stages=1, dkdv="fused",
                 cu=None, L=None, want_dg=True, dg_dtype=None, n_grads=4, xscale=False):
        dt = XS_STORAGE if xscale else dt
        split = _check_modes(dt, split, stages, dkdv)
        g_name = None if g_dtype is None else dtype_name(g_dtype)
        g_shape = None if g_dtype is None else tuple(shape[:-1])
        self.P = _plan_of(_plan_key(dt, tuple(shape), dv, split, stages, bool(causal), cu, L, g_name, g_shape, False,
                                    False, dkdv, xscale))
        self.scale32 = np.float32(scale)
        self.dkdv, self.want_dg, self.n_grads, self.B = dkdv, want_dg and g_name is not None, n_grads, None
        self.dg_dtype = (np.dtype(np.float32) if dg_dtype is None else np.dtype(dg_dtype)) if self.want_dg else None
        self.dg_name = dtype_name(self.dg_dtype) if self.want_dg else None
        self.xscale = int(xscale)

    def forward(self, q, k, v, g=None):
        q, k, v, xexp = _xs_operands(self.xscale, q, k, v)
        o, Hstart, gam, final, states, state_args = self.P.run(q, k, v, g, None, self.scale32, xexp)
        return o, (q, k, v, g, Hstart, gam, final, states, state_args, xexp)

    def backward(self, ctx, do):
        B = self.B
        if B is None:
            B = self.B = self.P.backward_plan(self.dkdv, self.want_dg, self.dg_name)
        q, k, v, g, Hstart, gam, final, _, state_args, xexp = ctx
        return B.run(self.P, q, k, v, g, _xs_cotangent(self.xscale, xexp, do), Hstart, gam, final, None, None, self.scale32, state_args,
                     self.dg_dtype, xexp)[:self.n_grads]


def forward(q, k, v, g=None, *, scale=1.0, causal=True, split=1, S0=None, want_final=False, cu=None,
            L=None, stages=1, dkdv="fused", xscale=False):
    """o (..., T, dv) in q's dtype, and the CoreContext.  q, k, v: (..., T, d), any leading dims (N: their
    product); g: (..., T) float32, float16 or None; S0: (N, nseq, dk, dv)
    float32 or None; cu: sequence offsets (tuple) or None; stages: 1 or 2 (STAGES), also for the backward;
    dkdv: the backward's dk/dv walkers at head dims (64, 64) (DKDV_MODES).  xscale: float32 q, k, v (C-contiguous)
    run as float16 (1: TF32-class) or float16 hi + lo pairs (2: float32-class, from two planes; 3: split as the
    walkers' tiles land, linear only) under a power-of-two scale per leading index (kernels/cupy/_xscale.py) on the
    XS_MODE walkers
    (``xscale_refusal`` says which calls can), results in float32; ctx.final and ctx.S0 stay in the walkers' units
    (the returned final state is ``final_state(ctx)``)."""
    xscale = int(xscale)
    if xscale and dtype_name(q.dtype) != "float32":
        raise ValueError(f"xscale takes float32 q, k, v (got {dtype_name(q.dtype)})")
    q, k, v, xexp = _xs_operands(xscale, q, k, v)
    if xexp is not None:
        S0 = _xscale.ldexp(S0, xexp, minus=("k", "v"))
    dt = XS_STORAGE if xscale else dtype_name(q.dtype)
    split = _check_modes(dt, split, stages, dkdv)
    causal = bool(causal)
    P = _plan(dt, q.shape, v.shape[-1], split, stages, causal, cu, L, g, S0 is not None, bool(want_final), dkdv,
              xscale)
    scale32 = f32(scale)
    o, Hstart, gam, final, states, state_args = P.run(q, k, v, g, S0, scale32, xexp)
    ctx = CoreContext(q, k, v, g, P.table, Hstart, gam, final, S0, float(scale), causal,
                      split, stages, dkdv, P, scale32, states, state_args, xexp)
    return o, ctx


def operand_dtype(ctx: CoreContext):
    """The dtype ``backward`` takes do in: the forward's operands' (float32 for xscale calls, whose ctx.q is the
    float16 copy)."""
    return np.dtype(np.float32) if ctx.xexp is not None else ctx.q.dtype


def final_state(ctx: CoreContext):
    """The state after each sequence (N, nseq, dk, dv) float32 in the caller's units, or None."""
    if ctx.final is None or ctx.xexp is None:
        return ctx.final
    return _xscale.ldexp(ctx.final, ctx.xexp, plus=("k", "v"))


def backward(ctx: CoreContext, do, dST=None, want_dg=True, dg_dtype=None):
    """(dq, dk, dv, dg, dS0): gradients in q's dtype except dg and dS0.  dg: in ``dg_dtype`` (a float32,
    float16 or bfloat16 dtype, written so by ``tc_dg``; None: float32), None without decay or when not
    ``want_dg``.  dS0: float32, None without an initial state.  dST: (N, nseq, dk, dv) gradient of the final
    state, or None.  The dk/dv walkers at head dims (64, 64) are the forward's ``dkdv`` mode (DKDV_MODES)."""
    q, g, P, xexp = ctx.q, ctx.g, ctx.plan, ctx.xexp
    want_dg = g is not None and want_dg
    if want_dg:
        dg_dtype = np.dtype(np.float32) if dg_dtype is None else dg_dtype
    if xexp is not None:                         # do and dST into the walkers' units
        do = _xs_cotangent(P.xscale, xexp, as_contiguous(do, np.float32))
        dST = _xscale.ldexp(dST, xexp, minus=("q", "do"))
    B = P.backward_plan(ctx.dkdv, want_dg, dtype_name(dg_dtype) if want_dg else None)
    dq, dk, dv, dg, dS0 = B.run(P, q, ctx.k, ctx.v, g, do, ctx.Hstart, ctx.gam, ctx.final, ctx.S0, dST, ctx.scale32,
                                ctx.state_args, dg_dtype, xexp)
    if ctx.S0 is None:
        return dq, dk, dv, dg, None
    return dq, dk, dv, dg, (dS0 if xexp is None else _xscale.ldexp(dS0, xexp, plus=("q", "do")))
