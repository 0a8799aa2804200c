"""CuPy ZeroS attention (kernels/cuda/zeros.cu: the scalar scans; the shared skeleton for the states).

Maps the reference derivation (workbench/reference/zeros.py) onto two core calls and two scans, all in
float32 (float16 inputs are widened):
  scan_fwd  m (running max), E (relative to m), P, alpha/beta/gamma, u = e^{s - m}, chunk-local log
            decays bF = m_ref - m_t (per-token gF = m_{t-1} - m_t for the naive core);
  state F   oF = core(q, k, u v) with decays exp(m_i - m_t):  oF_t = sum e^{s_i - m_t} (q_t.k_i) v_i;
  states GH [oG, oH] = core(q, k, [s v, v]) (no decay; split in two calls when 2 Dv > 256);
  o = alpha oF + beta oG + gamma oH (memory O(T (Dk + Dv)) plus per-chunk states).
Backward: a = do.oF, V = do.oG, Z = do.oH (row dots; U = a / E); the core backward with
do_F = alpha do and do_GH = [beta do, gamma do] gives dq, dk and the gradients of the values
(dv = u dvF + s dvG + dvH; the value path of ds: (u v).dvF + v.dvG, i.e. sum_t sigh p (dR) + beta dR);
scan_bwd adds the path through E and P (-e^{s_j - m_j} sum_{t>=j} alpha U e^{m_j - m_t} - sum beta Z / n)
and dgates.  The running max m is held fixed in the backward: o does not depend on it, so this is exact.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from workbench.registry import Variant, register

from workbench.backends import new_output

from . import _chunked as core
from ._module import declare_groups, get_kernel

SOURCE = "zeros.cu"
SCANS = tuple(f"zeros_scan_{d}<float, {c}>" for d in ("fwd", "bwd") for c in ("true", "false"))
INSTANTIATIONS = (core.instantiations(SOURCE, decay_values=(False, True), dtypes=("float32",))
                  + [(SOURCE, e) for e in SCANS])
declare_groups(SOURCE, core.compile_groups(decay_values=(False, True), dtypes=("float32",)) + [SCANS])


def _scan_fwd(s, gates, causal, C):
    import cupy as cp
    N, T = s.shape
    NC = -(-T // C)
    outs = [new_output(cp, (N, T), cp.float32) for _ in range(3)]           # m, E, P
    coef = new_output(cp, (N, T, 3), cp.float32)
    u = new_output(cp, (N, T), cp.float32)
    bF = new_output(cp, (N, NC * C), cp.float32)
    gF = new_output(cp, (N, T), cp.float32)
    kern = get_kernel(SOURCE, f"zeros_scan_fwd<float, {'true' if causal else 'false'}>")
    kern((-(-N // 64),), (64,), (s, gates, np.int32(gates.shape[-1]), np.int32(N), np.int32(T), np.int32(C),
                                 np.int32(NC), *outs, coef, u, bF, gF))
    return (*outs, coef, u, bF, gF)


def _scan_bwd(s, gates, causal, m, E, P, a, V, Z):
    import cupy as cp
    N, T = s.shape
    ds = new_output(cp, (N, T), cp.float32)
    dgates = new_output(cp, gates.shape, cp.float32)
    kern = get_kernel(SOURCE, f"zeros_scan_bwd<float, {'true' if causal else 'false'}>")
    kern((-(-N // 64),), (64,), (s, gates, np.int32(gates.shape[-1]), np.int32(N), np.int32(T), m, E, P,
                                 a, V, Z, ds, dgates))
    return ds, dgates


def _groups(Dv):
    """Value groups of the undecayed call: [s v, v] together when 2 Dv fits the kernels, else apart."""
    return [("G", "H")] if 2 * Dv <= core.MAX_DIM else [("G",), ("H",)]


@dataclass
class _CoreCall:
    """One call of the core: the value streams it computed together, their values and the core's states."""
    streams: tuple           # ("F",), ("G", "H") or ("G",), ("H",)
    values: object           # the streams' values side by side (N, T, len(streams) Dv)
    states: object           # the core's forward states (chunked), else None
    decays: dict             # the decay argument of the call (F: b or g), else {}


@dataclass
class _Context(core.Saved):
    """What the backward of cupy:naive / chunked / chunked_seg needs (everything float32)."""
    s: object
    gates: object
    causal: bool
    m: object                # running max, E relative to it, P: scan_fwd's per-token statistics
    E: object
    P: object
    coef: object             # (N, T, 3) alpha, beta, gamma
    u: object                # e^{s - m}
    outs: dict               # stream -> its output oF, oG, oH
    calls: list              # _CoreCall, F first
    dtype: object            # the inputs' dtype (the gradients have it)


def _forward(impl, q, k, v, s, gates, causal=True):
    import cupy as cp
    dtype = q.dtype
    q, k, v, s, gates = (x.astype(cp.float32, copy=False) for x in (q, k, v, s, gates))
    Dk, Dv = q.shape[-1], v.shape[-1]
    C = core.chunk_size(Dk, Dv)
    m, E, P, coef, u, bF, gF = _scan_fwd(s, gates, causal, C)
    vals = {"F": u[..., None] * v, "G": s[..., None] * v, "H": v}
    dec = {}
    if causal:
        dec = dict(b=bF) if impl != "naive" else dict(g=gF)
    oF, HF = core.core_forward(SOURCE, impl, q, k, vals["F"], causal, 1.0, **dec)
    outs, calls = {"F": oF}, [_CoreCall(("F",), vals["F"], HF, dec)]
    for grp in _groups(Dv):
        V = cp.concatenate([vals[x] for x in grp], axis=-1) if len(grp) > 1 else vals[grp[0]]
        o_g, H_g = core.core_forward(SOURCE, impl, q, k, V, causal, 1.0)
        calls.append(_CoreCall(grp, V, H_g, {}))
        for j, x in enumerate(grp):
            outs[x] = o_g[..., j * Dv:(j + 1) * Dv]
    alpha, beta, gamma = coef[..., 0:1], coef[..., 1:2], coef[..., 2:3]
    o = alpha * outs["F"] + beta * outs["G"] + gamma * outs["H"]
    return o.astype(dtype, copy=False), _Context(impl, q, k, v, s, gates, causal, m, E, P, coef, u, outs, calls,
                                                 dtype)


def _backward(ctx: _Context, do):
    import cupy as cp
    q, k, v, s, coef, u = ctx.q, ctx.k, ctx.v, ctx.s, ctx.coef, ctx.u
    do = do.astype(cp.float32, copy=False)
    a, Vr, Zr = ((do * ctx.outs[x]).sum(-1) for x in ("F", "G", "H"))
    ds, dgates = _scan_bwd(s, ctx.gates, ctx.causal, ctx.m, ctx.E, ctx.P, a, Vr, Zr)
    dos = {x: coef[..., j:j + 1] * do for j, x in enumerate("FGH")}
    dq = dk = 0
    dvals = {}
    Dv = v.shape[-1]
    for call in ctx.calls:
        grp = call.streams
        dO = cp.concatenate([dos[x] for x in grp], axis=-1) if len(grp) > 1 else dos[grp[0]]
        gq, gk, gV = core.core_backward(SOURCE, ctx.impl, q, k, call.values, call.states, dO, ctx.causal, 1.0,
                                        **call.decays)
        dq, dk = dq + gq, dk + gk
        for j, x in enumerate(grp):
            dvals[x] = gV[..., j * Dv:(j + 1) * Dv]
    dv = u[..., None] * dvals["F"] + s[..., None] * dvals["G"] + dvals["H"]
    ds = ds + (dvals["F"] * (u[..., None] * v)).sum(-1) + (dvals["G"] * v).sum(-1)
    return tuple(x.astype(ctx.dtype, copy=False) for x in (dq, dk, dv, ds, dgates))


core.register_variants("zeros", _forward, _backward, {
    "naive": "scans + the naive core (one thread per output row), O(T^2 D)",
    "chunked": "scans + the chunked core: states F (running max), G, H, one chain over the chunks; the "
               "fallback above head dim 128",
    "chunked_seg": "scans + the chunked core with the state chains cut into segments run in parallel",
}, tol={"float32": 5e-5, "float16": 2e-3})


# ----------------------------------------------------------------------------- tensor cores
# cupy:chunked_mma (float16, bfloat16; float32 as 3xTF32) and cupy:chunked_mma_tf32: the parallel scans and
# row kernels of zeros.cu (namespace zs) around two calls of the tensor-core chunk core
# (kernels/cuda/chunked_mma.cu): F = core(q, k, u v; log decays gF), [G, H] = core(q, k, [((s - c)/sigma) v, v])
# (two calls when 2 Dv > 128), o = (alpha oF + beta sigma oG + gamma oH) / s_o.  Read the zeros.cu section
# header for the derivation, the shift c and the scales s_o (stream outputs) and sigma (per head), packed
# sequences (segmented scans) and states (initial statistics joined to each sequence's first token; F0, G0, H0
# as the core calls' initial states; the gradient formulas of workbench/reference/zeros.py).
import math  # noqa: E402
from dataclasses import dataclass as _dataclass  # noqa: E402
from typing import Optional  # noqa: E402

from workbench.backends import data_ptr, new_output, new_scratch, outputs_layout  # noqa: E402
from workbench.state import ZeroSState  # noqa: E402

from . import _chunked_mma as mma  # noqa: E402
from . import _packing as packing  # noqa: E402

INSTANTIATIONS = INSTANTIATIONS + mma.INSTANTIATIONS     # the kernels this module's variants launch
from ._module import Prepared, as_contiguous, dtype_name, launch, lead_size  # noqa: E402
from .decayed import _supports_mma  # noqa: E402  (head dims up to the core's MAX_DIM, the same rule)

SCAN_CHUNK = 64             # tokens per scan chunk (zeros.cu: zs::C)
SCAN_WARPS = 4              # warps per block of the per-chunk kernels (zs::WARPS)
SCAN_THREADS = 256          # block of the scans over chunks (zs::SCAN)
STAT_ROWS = ("m", "E", "P", "alpha", "beta", "gamma", "u", "gF", "n")   # per-token statistics (zs::ST_*; P - n c)
NST = len(STAT_ROWS)        # zs::NST
ST = {name: i for i, name in enumerate(STAT_ROWS)}
ST_GF = ST["gF"]
NHEAD = 2                   # per-head rows (zs::NHEAD): sigma, c
STATE_SCALARS = ("m", "E", "P", "n")   # rows of the initial state's scalars the token kernels take (zs::S0_*)
# Up to this many scan chunks (T <= 256) the scans over chunks run inside the per-chunk blocks, each block
# joining the chunks it needs itself (O(NC) per block): zeros_ftoken without zeros_fchunk / zeros_fscan (one
# launch for the forward statistics, no carries), zeros_fused_bscalar_ds for zeros_fused_bscalar + zeros_bscan
# + zeros_fused_bds (whose blocks walk the later chunks one after another: NC - 1 steps of two barriers for the
# first, so the bound is kept low).  Above it, the separate scan launches (O(1) per block).  0: always apart.
IN_BLOCK_SCAN_MAX_CHUNKS = 4
_CT = {"float32": "float", "float16": "wb_half", "bfloat16": "wb_bf16"}


def _flag(x):
    return "true" if x else "false"


@functools.lru_cache(maxsize=None)
def scan_exprs(ctype: str) -> tuple:
    """Every zs kernel of one storage type, compiled together (one NVRTC run per dtype)."""
    out = [f"zeros_fchunk<{ctype}>", f"zeros_combine<{ctype}>"]
    out += [f"zeros_{k}<{ctype}, {_flag(c)}>" for k in ("ftoken", "bchunk", "bfinish") for c in (True, False)]
    out += [f"zeros_{k}<{_flag(c)}>" for k in ("fscan", "bscan") for c in (True, False)]
    out += [f"zeros_fused_{k}<{ctype}, {_flag(c)}>" for k in ("bscalar", "bds", "bscalar_ds") for c in (True, False)]
    return tuple(out)


INSTANTIATIONS += [(SOURCE, e) for ct in _CT.values() for e in scan_exprs(ct)]
declare_groups(SOURCE, [scan_exprs(ct) for ct in _CT.values()])


@functools.lru_cache(maxsize=None)      # per launch: one short-key lookup, not the group rebuilt
def _zs(dtype: str, expr: str):
    return get_kernel(SOURCE, expr, group=scan_exprs(_CT[dtype]))


@functools.lru_cache(maxsize=None)
def _scan(dtype: str, name: str, flag=None):
    """The zs kernel ``zeros_<name>`` of a storage type: templated on the type, on ``flag`` (a bool), or on
    both (as scan_exprs lists them); one lookup per key instead of a name formatted per launch."""
    targs = ((_CT[dtype],) if name not in ("fscan", "bscan") else ()) + (() if flag is None else (_flag(flag),))
    return _zs(dtype, f"zeros_{name}<{', '.join(targs)}>")


def output_scale(T: int) -> float:
    """s_o: the power of two the stream outputs are stored at (<= 256 / T, at most 1)."""
    return 2.0 ** -max(0, math.ceil(math.log2(max(T, 1))) - 8)


def _at(a, offset: int = 0):
    """Device address of element ``offset`` of a contiguous array (columns of a shared stream array)."""
    return np.uint64(data_ptr(a) + offset * a.itemsize)


@_dataclass(frozen=True)
class Sequences:
    """The packed sequences of one call and its initial state's scalars, as the token kernels take them:
    ``cu`` (offsets, None: one sequence), ``st0`` (len(STATE_SCALARS), N, nseq) float32 or None."""
    cu: Optional[tuple] = None
    st0: object = None

    @property
    def nseq(self) -> int:
        return 1 if self.cu is None else len(self.cu) - 1

    def args(self) -> tuple:
        """tseq, cu, nseq (the kernels' sequence arguments; null pointers for one sequence)."""
        return packing.kernel_args(self.cu) + (np.int32(self.nseq),)

    def sums(self, x):
        """(..., T) -> (..., nseq) float64: x summed over each sequence."""
        import cupy as cp
        T = x.shape[-1]
        ends = np.asarray(self.cu[1:] if self.cu is not None else (T,), np.int64) - 1
        tot = cp.cumsum(x.astype(cp.float64), axis=-1)[..., cp.asarray(ends)]
        return cp.concatenate([tot[..., :1], tot[..., 1:] - tot[..., :-1]], axis=-1)


ONE_SEQUENCE = Sequences()


@_dataclass
class FinalStats:
    """The statistics after each sequence's last token (N, nseq): running max M, E (relative to M), P (float64,
    of s itself) and the count n."""
    M: object
    E: object
    P: object
    n: object


@_dataclass
class ForwardStats:
    """Per-token statistics (zeros_ftoken): st (NST, N, T) float32 rows m, E, P - n c, alpha, beta, gamma, u, gF, n;
    head (NHEAD, N) float32 rows sigma (the power of two >= max(1, max |s - c|)) and c ((min s + max s) / 2);
    fin: FinalStats or None.  By address (forward_stats(by_address=True)): st and head are the np.uint64
    addresses of their first elements in one allocation, buf."""
    st: object
    head: object
    fin: Optional[FinalStats] = None
    buf: object = None


def _final_stats(cp, N, nseq) -> FinalStats:
    return FinalStats(*(new_output(cp, (N, nseq), dt) for dt in (cp.float32, cp.float32, cp.float64, cp.float32)))


def _carry_layout(N: int, NC: int) -> tuple:
    """new_scratch layout of zeros_fchunk / zeros_fscan's chunk summaries and carries: cM, cE, cLo, cHi, cP, cR,
    xM, xE, xP."""
    f32, f64 = ((N, NC), np.float32), ((N, NC), np.float64)
    return (f32, f32, f32, f32, f64, ((N, NC), np.int32), f32, f32, f64)


@functools.lru_cache(maxsize=256)
def _stats_layout(N: int, T: int, NC: int, carries: bool) -> tuple:
    """new_scratch layout of forward_stats(by_address=True): st, head, and (carries) _carry_layout."""
    return (((NST, N, T), np.float32), ((NHEAD, N), np.float32)) + (_carry_layout(N, NC) if carries else ())


def forward_stats(s, gates, v, causal, vF=None, vG=None, ldG=0, vH=None, ldH=0, seqs: Sequences = ONE_SEQUENCE,
                  want_final=False, by_address=False) -> ForwardStats:
    """The forward scan kernels (zeros_ftoken alone up to IN_BLOCK_SCAN_MAX_CHUNKS chunks, after zeros_fchunk and
    zeros_fscan above); when vF is given, also writes the stream values vF = u v, vG = ((s - c)/sigma) v and
    (when vH is given) vH = v, at leading dimensions Dv, ldG, ldH.  ``seqs``: packed sequences and the initial
    state's scalars; want_final (causal): the statistics after each sequence.  Not causal with packed sequences,
    a causal statistics pass gives each sequence's totals first.  by_address: st and head (and any carries) in
    one allocation, handed back as addresses (ForwardStats.buf holds it).  s: (..., T), any leading dims (N:
    their product)."""
    import cupy as cp
    T = s.shape[-1]
    N = lead_size(s.shape, 1)
    dt = dtype_name(s.dtype)
    NC = -(-T // SCAN_CHUNK)
    i32 = np.int32
    sq = seqs.args()
    st0 = mma._ptr(seqs.st0)
    null = np.uint64(0)
    by_sequence = not causal and seqs.cu is not None          # not causal, packed: each sequence's totals
    separate = by_sequence or NC > IN_BLOCK_SCAN_MAX_CHUNKS
    buf = chunks = None
    if by_address:
        buf, parts = new_scratch(cp, _stats_layout(N, T, NC, separate))
        st, head, chunks = parts[0], parts[1], parts[2:]
    else:
        st = new_output(cp, (NST, N, T), cp.float32)
        head = new_output(cp, (NHEAD, N), cp.float32)
        if separate:      # the chunk summaries and carries, by address (held until the launches are queued)
            scratch, chunks = new_scratch(cp, _carry_layout(N, NC))
    carries = (null,) * 3                                     # zeros_ftoken scans the chunks itself
    if separate:
        cM, cE, cLo, cHi, cP, cR, xM, xE, xP = chunks
        launch(_scan(dt, "fchunk"), (-(-NC // SCAN_WARPS), N), (32 * SCAN_WARPS,),
               (s, i32(T), i32(NC)) + sq + (st0, cM, cE, cP, cR, cLo, cHi))
        launch(_scan(dt, "fscan", causal or by_sequence), (N,), (SCAN_THREADS,),
               (cM, cE, cP, cR, cLo, cHi, i32(NC), xM, xE, xP, head))
        carries = (xM, xE, xP)
    Dv = v.shape[-1]

    def token_pass(causal_pass, carries, st, fin, vF, vG, vH):
        fin_args = (fin.M, fin.E, fin.P, fin.n) if fin is not None else (null,) * 4
        launch(_scan(dt, "ftoken", causal_pass), (NC, N), (32 * SCAN_WARPS,),
               (s, gates, v, i32(gates.shape[-1]), i32(T), i32(Dv), i32(NC)) + sq + (st0,) + carries
               + (head, st, mma._ptr(vF), mma._ptr(vG), i32(ldG), mma._ptr(vH), i32(ldH)) + fin_args)

    fin = _final_stats(cp, N, seqs.nseq) if (want_final and causal) or by_sequence else None
    if by_sequence:
        token_pass(True, carries, new_output(cp, (NST, N, T), cp.float32), fin, None, None, None)
        carries, fin = (fin.M, fin.E, fin.P), None
    token_pass(causal, carries, st, fin, vF, vG, vH)
    return ForwardStats(st, head, fin, buf)


@_dataclass
class Streams:
    """The stream arrays of one op call: F (N, T, Dv) and G, H as (array, column offset, leading dim)."""
    F: object
    G: object
    g_off: int
    g_ld: int
    H: object
    h_off: int
    h_ld: int

    def g(self):
        return _at(self.G, self.g_off)

    def h(self):
        return _at(self.H, self.h_off)


def _gh_one_call(Dv: int) -> bool:
    return 2 * Dv <= mma.MAX_DIM


def backward_scalars(dt, do, outs: Streams, gates, stats: ForwardStats, causal, inv_s, douts: Streams,
                     seqs: Sequences = ONE_SEQUENCE, dfin=None, dn=None):
    """zeros_bchunk + zeros_bscan: the streams' output gradients (into douts), dgates, and the per-token
    x, y with the chunk carries that zeros_bfinish needs (not causal with packed sequences: each sequence's
    totals of x and y).  dfin: rows dE, dP (2, N, nseq) of the final state's gradient, or None; dn (N, T): the
    per-token gradients of the count, written when given.  Returns (dgates, xy, yR, yQ)."""
    import cupy as cp
    N, T, Dv = do.shape
    NC = -(-T // SCAN_CHUNK)
    i32 = np.int32
    xy = new_output(cp, (2, N, T), cp.float32)
    dgates = new_output(cp, gates.shape, gates.dtype)
    cR = new_output(cp, (N, NC), cp.float32)
    cQ = new_output(cp, (N, NC), cp.float64)
    cF = new_output(cp, (N, NC), cp.int32)
    launch(_zs(dt, f"zeros_bchunk<{_CT[dt]}, {_flag(causal)}>"), (NC, N), (32 * SCAN_WARPS,),
           (do, outs.F, outs.g(), i32(outs.g_ld), outs.h(), i32(outs.h_ld), gates, i32(gates.shape[-1]), stats.st,
            stats.head, i32(T), i32(Dv), i32(NC), np.float32(inv_s)) + seqs.args() + (mma._ptr(dfin),)
           + (douts.F, douts.g(), i32(douts.g_ld), douts.h(), i32(douts.h_ld), xy, dgates, mma._ptr(dn), cR, cQ, cF))
    if not causal and seqs.cu is not None:
        tot = seqs.sums(xy)                                        # (2, N, nseq)
        return dgates, xy, cp.ascontiguousarray(tot[0], dtype=cp.float32), cp.ascontiguousarray(tot[1])
    yR = new_output(cp, (N, NC), cp.float32)
    yQ = new_output(cp, (N, NC), cp.float64)
    launch(_zs(dt, f"zeros_bscan<{_flag(causal)}>"), (N,), (SCAN_THREADS,),
           (cR, cQ, cF, stats.st[0], i32(T), i32(NC), yR, yQ))
    return dgates, xy, yR, yQ


def combine(dt, stats: ForwardStats, outs: Streams, inv_s: float):
    """zeros_combine: o = inv_s (alpha oF' + beta sigma oG' + gamma oH') in the input dtype."""
    import cupy as cp
    N, T, Dv = outs.F.shape
    o = new_output(cp, (N, T, Dv), outs.F.dtype)
    launch(_zs(dt, f"zeros_combine<{_CT[dt]}>"), (-(-T // SCAN_CHUNK), N), (32 * SCAN_WARPS,),
           (stats.st, stats.head, outs.F, outs.g(), np.int32(outs.g_ld), outs.h(), np.int32(outs.h_ld), o,
            np.int32(T), np.int32(Dv), np.float32(inv_s)))
    return o


@_dataclass
class CoreGrads:
    """Gradients from the core calls: F exact; G and H divided by 4 sigma (dqH, dkH None when G and H were
    one call); dvG, dvH as (array, column offset, leading dim) through a Streams-like pair."""
    dqF: object
    dkF: object
    dqG: object
    dkG: object
    dqH: object
    dkH: object
    dv: Streams


@_dataclass
class StateGrads:
    """What zeros_bfinish needs for states: the final state's gradient rows dE, dP (2, N, nseq) and the
    gradient mu of each final max (N, nseq) with the final maxima (or None: no final-state gradient); d0
    (2, N, nseq) receives dE0, dP0 of the initial state (or None: none)."""
    dfin: object = None
    mu: object = None
    finM: object = None
    d0: object = None


def finish(dt, s, v, stats: ForwardStats, xy, yR, yQ, g: CoreGrads, causal, seqs: Sequences = ONE_SEQUENCE,
           sg: StateGrads = StateGrads()):
    """zeros_bfinish: dq, dk, dv, ds in the input dtype (and sg.d0 when given)."""
    import cupy as cp
    N, T, Dv = v.shape
    Dk = g.dqF.shape[-1]
    NC = -(-T // SCAN_CHUNK)
    i32 = np.int32
    dq = new_output(cp, (N, T, Dk), s.dtype)
    dk = new_output(cp, (N, T, Dk), s.dtype)
    dv = new_output(cp, (N, T, Dv), s.dtype)
    ds = new_output(cp, (N, T), s.dtype)
    p = mma._ptr
    launch(_zs(dt, f"zeros_bfinish<{_CT[dt]}, {_flag(causal)}>"), (NC, N), (32 * SCAN_WARPS,),
           (stats.st, stats.head, xy, yR, yQ, s, v, g.dqF, g.dqG, p(g.dqH), g.dkF, g.dkG, p(g.dkH),
            g.dv.F, g.dv.g(), i32(g.dv.g_ld), g.dv.h(), i32(g.dv.h_ld), i32(T), i32(Dk), i32(Dv), i32(NC))
           + seqs.args() + (p(seqs.st0), p(sg.dfin), p(sg.mu), p(sg.finM), dq, dk, dv, ds, p(sg.d0)))
    return dq, dk, dv, ds


def _stream_arrays(cp, N, T, Dv, dtype, one_call, h_given=None) -> Streams:
    """Fresh F, G, H arrays: G and H side by side in one (N, T, 2 Dv) array when one_call, else apart (H may
    be given: the values of H are v itself)."""
    F = new_output(cp, (N, T, Dv), dtype)
    if one_call:
        GH = new_output(cp, (N, T, 2 * Dv), dtype)
        return Streams(F, GH, 0, 2 * Dv, GH, Dv, 2 * Dv)
    H = h_given if h_given is not None else new_output(cp, (N, T, Dv), dtype)
    return Streams(F, new_output(cp, (N, T, Dv), dtype), 0, Dv, H, 0, Dv)


@_dataclass
class _MMAContext:
    s: object
    v: object
    gates: object
    causal: bool
    inv_s: float
    stats: ForwardStats
    outs: Streams            # the stored stream outputs oF', oG', oH'
    cores: tuple             # CoreContext of F, then of GH (one call) or of G and H
    seqs: Sequences
    state: Optional[ZeroSState]   # the initial state, or None
    finF: object             # the final state's F (N, nseq, Dk, Dv), or None


def _head(stats: ForwardStats):
    """sigma and c of every head, shaped to scale (N, nseq, Dk, Dv) states."""
    return stats.head[0][:, None, None, None], stats.head[1][:, None, None, None]


def _f32(x):
    import cupy as cp
    return cp.ascontiguousarray(x, dtype=cp.float32)


def _gh_operands(cp, g, h, one_call: bool) -> list:
    """A G-call and an H-call state operand (N, nseq, Dk, Dv) as the core calls take them: side by side in one
    array when G and H are one call, else apart."""
    pair = [_f32(g), _f32(h)]
    return [cp.concatenate(pair, axis=-1)] if one_call else pair


def _state_scalars(cp, state):
    return None if state is None else _f32(cp.stack([getattr(state, x) for x in STATE_SCALARS]))


def _make_mma(split):
    def forward(q, k, v, s, gates, causal=True, initial_state=None, return_state=False, cu_seqlens=None):
        import cupy as cp
        N, T, Dv = v.shape
        dt = dtype_name(q.dtype)
        one_call = _gh_one_call(Dv)
        seqs = Sequences(cu_seqlens, _state_scalars(cp, initial_state))
        vals = _stream_arrays(cp, N, T, Dv, q.dtype, one_call, h_given=v)
        stats = forward_stats(s, gates, v, causal, vals.F, vals.g(), vals.g_ld,
                              vals.h() if one_call else None, vals.h_ld, seqs=seqs, want_final=return_state)
        so = output_scale(T)
        gF = stats.st[ST_GF] if causal else None
        S0 = [None] * 3
        if initial_state is not None:
            sigma, c = _head(stats)
            G0, H0 = initial_state.G, initial_state.H                # the G call runs on (s - c) / sigma
            S0 = [_f32(initial_state.F)] + _gh_operands(cp, (G0 - c * H0) / sigma, H0, one_call)
        call = dict(scale=so, causal=causal, split=split, want_final=return_state, cu=cu_seqlens)
        oF, cF = mma.forward(q, k, vals.F, gF, S0=S0[0], **call)
        if one_call:
            oGH, cGH = mma.forward(q, k, vals.G, None, S0=S0[1], **call)
            outs, cores = Streams(oF, oGH, 0, 2 * Dv, oGH, Dv, 2 * Dv), (cF, cGH)
        else:
            oG, cG = mma.forward(q, k, vals.G, None, S0=S0[1], **call)
            oH, cH = mma.forward(q, k, v, None, S0=S0[2], **call)
            outs, cores = Streams(oF, oG, 0, Dv, oH, 0, Dv), (cF, cG, cH)
        o = combine(dt, stats, outs, 1.0 / so)
        ctx = _MMAContext(s, v, gates, bool(causal), 1.0 / so, stats, outs, cores, seqs, initial_state,
                          cF.final if return_state else None)
        if not return_state:
            return o, ctx
        return (o, _final_state(stats, cores, Dv)), ctx

    def backward(ctx, do, dfinal=None):
        import cupy as cp
        v = ctx.v
        N, T, Dv = v.shape
        dt = dtype_name(v.dtype)
        do = as_contiguous(do, v.dtype)
        one_call = len(ctx.cores) == 2
        seqs, stats, st0 = ctx.seqs, ctx.stats, ctx.state
        douts = _stream_arrays(cp, N, T, Dv, v.dtype, one_call)
        sg = StateGrads(d0=new_output(cp, (2, N, seqs.nseq), cp.float32) if st0 is not None else None)
        dST = [None] * 3
        if dfinal is not None:
            sigma, c = _head(stats)
            # G = sigma S_G + c S_H, H = S_H: dS_G = sigma dG, dS_H = c dG + dH, divided by 4 sigma as the core's
            # G and H gradients are (zeros_bchunk)
            dST = [_f32(dfinal.F)] + _gh_operands(cp, dfinal.G / 4, (c * dfinal.G + dfinal.H) / (4 * sigma), one_call)
            mu = dfinal.m - stats.fin.E * dfinal.E - (ctx.finF * dfinal.F).sum(axis=(-2, -1))
            sg = StateGrads(_f32(cp.stack([dfinal.E, dfinal.P])), _f32(mu), stats.fin.M, sg.d0)
        dn = new_output(cp, (N, T), cp.float32) if st0 is not None else None
        dgates, xy, yR, yQ = backward_scalars(dt, do, ctx.outs, ctx.gates, stats, ctx.causal, ctx.inv_s, douts,
                                              seqs=seqs, dfin=sg.dfin, dn=dn)
        dqF, dkF, dvF, _, dS0F = mma.backward(ctx.cores[0], douts.F, dST[0], want_dg=False)  # d gF: m held fixed
        if one_call:
            dqG, dkG, dvGH, _, dS0GH = mma.backward(ctx.cores[1], douts.G, dST[1])
            grads = CoreGrads(dqF, dkF, dqG, dkG, None, None, Streams(dvF, dvGH, 0, 2 * Dv, dvGH, Dv, 2 * Dv))
            dS0G, dS0H = (None, None) if dS0GH is None else (dS0GH[..., :Dv], dS0GH[..., Dv:])
        else:
            dqG, dkG, dvG, _, dS0G = mma.backward(ctx.cores[1], douts.G, dST[1])
            dqH, dkH, dvH, _, dS0H = mma.backward(ctx.cores[2], douts.H, dST[2])
            grads = CoreGrads(dqF, dkF, dqG, dkG, dqH, dkH, Streams(dvF, dvG, 0, Dv, dvH, 0, Dv))
        dq, dk, dv, ds = finish(dt, ctx.s, v, stats, xy, yR, yQ, grads, ctx.causal, seqs, sg)
        out = (dq, dk, dv, ds, dgates)
        if st0 is None:
            return out
        return out + (_initial_state_grad(cp, ctx, dfinal, sg, dn, dS0F, dS0G, dS0H),)

    return forward, backward


def _final_state(stats: ForwardStats, cores, Dv) -> ZeroSState:
    """The state after each sequence: the statistics, F from the F call, G = sigma S_G + c S_H and H = S_H from
    the G and H calls."""
    fin = stats.fin
    SG, SH = (cores[1].final[..., :Dv], cores[1].final[..., Dv:]) if len(cores) == 2 else (cores[1].final,
                                                                                          cores[2].final)
    sigma, c = _head(stats)
    return ZeroSState(*(_f32(x) for x in (fin.M, fin.E, fin.P, fin.n, cores[0].final, sigma * SG + c * SH, SH)))


def _initial_state_grad(cp, ctx: _MMAContext, dfinal, sg: StateGrads, dn, dS0F, dS0G, dS0H) -> ZeroSState:
    """The initial state's gradient (the reference's formulas, workbench/reference/zeros.py): dE0, dP0 from
    zeros_bfinish; dF0 from the F call; dG0 = 4 dS_G and dH0 = 4 sigma dS_H - 4 c dS_G from the G and H calls
    (their gradients are divided by 4 sigma, and S_G = (G - c H) / sigma); dn0 = the sequence's sum of dn_t
    (+ dn); dm0 = E0 dE0 + <F0, dF0>, plus the final max's gradient when the initial max is the final one."""
    st0 = ctx.state
    sigma, c = _head(ctx.stats)
    dE0, dP0 = sg.d0[0], sg.d0[1]
    dF0 = dS0F
    dG0 = 4 * dS0G
    dH0 = 4 * sigma * dS0H - 4 * c * dS0G
    dn0 = ctx.seqs.sums(dn)
    dm0 = st0.E * dE0 + (st0.F * dF0).sum(axis=(-2, -1))
    if dfinal is not None:
        dn0 = dn0 + dfinal.n
        dm0 = dm0 + cp.where(st0.m == sg.finM, sg.mu, 0)
    return ZeroSState(*(_f32(x) for x in (dm0, dE0, dP0, dn0, dF0, dG0, dH0)))


_f, _bw = _make_mma(3)
register(Variant("zeros", "cupy", "chunked_mma", _f, _bw, dtypes=("float32", "float16", "bfloat16"),
                 tol={"float32": 2e-5, "float16": 1e-2, "bfloat16": 2e-2},
                 array_kind="cupy", gpu=True, default=True, supports=_supports_mma, form="linear",
                 features=frozenset({"state", "packed"}),
                 description="parallel scans + the tensor-core chunk core: F (decayed by the running max) and "
                             "[G, H] in two core calls; float32 as 3xTF32"))
_f, _bw = _make_mma(1)
register(Variant("zeros", "cupy", "chunked_mma_tf32", _f, _bw, dtypes=("float32",), array_kind="cupy", gpu=True,
                 supports=_supports_mma, form="linear", tags=("tf32",), features=frozenset({"state", "packed"}),
                 description="cupy:chunked_mma with float32 products on TF32 (1e-3 accuracy, opt-in)"))


# ----------------------------------------------------------------------------- one pass on tensor cores
# cupy:chunked_mma_fused: the forward scans above (statistics only), then the tz_* kernels at the end of
# chunked_mma.cu (each block holds the three states F, G', H or A, Bs, Cs of a 32-column tile; the ZeroS
# weights are formed in registers; one Q K^T and one dO V^T per chunk serve all three streams) and the
# scalar kernels zeros_fused_bscalar / zeros_bscan / zeros_fused_bds.  Derivation, tiles, costs: the tz
# section of chunked_mma.cu and docs/kernels/zeros.md.
FUSED_BW = 32               # columns of the wide side per block (chunked_mma.cu: tz::BW)
FUSED_ROWS_BYTES = 4 * (9 * mma.C + 32 + 2)      # sizeof(tz::Rows): 9 rows of C floats, red[32], mref, mend
SPLIT = {"float32": 3, "float16": 1, "bfloat16": 1}           # float32 runs 3xTF32 products
# per kernel: the padded head dim its wide tiles use ("k": DKP, "v": DVP), whether its states are key-major
# (DKP x 32) or value-major (32 x DVP), and how many 32-column C-row tiles it keeps in shared memory
_FUSED_KERNELS = {"tz_fwd": ("k", 3), "tz_bwd_dq": ("v", 4), "tz_bwd_dv": ("k", 5), "tz_bwd_dk": ("v", 4)}


def fused_exprs(ctype: str, split: int) -> tuple:
    """Every tz kernel of one storage type (one NVRTC run per dtype)."""
    return tuple(f"{name}<{ctype}, {p}, {split}>" for p in mma.DIMS for name in _FUSED_KERNELS)


FUSED_COMMON = ("tz_seg_scan<false>", "tz_seg_scan<true>")
FUSED_GROUPS = {dt: fused_exprs(ct, SPLIT[dt]) for dt, ct in _CT.items()}
INSTANTIATIONS += [(mma.SOURCE, e) for grp in list(FUSED_GROUPS.values()) + [FUSED_COMMON] for e in grp]
declare_groups(mma.SOURCE, list(FUSED_GROUPS.values()) + [FUSED_COMMON])


def smem_fused(kernel: str, item: int, dp: int, narrow=None) -> int:
    """Dynamic shared memory (bytes) of a tz kernel with padded wide head dim dp (DKP or DVP, as templated);
    narrow: its count of 32-column tiles when not the kernel's usual (tz_bwd_dv<..., DKF>: FUSED2_DV_NARROW)."""
    C, PAD, W = mma.C, mma.PAD, FUSED_BW
    side, usual = _FUSED_KERNELS[kernel]
    narrow = usual if narrow is None else narrow
    states = 3 * dp * (W + PAD) if side == "k" else 3 * W * (dp + PAD)
    return item * (2 * C * (dp + PAD) + narrow * C * (W + PAD) + states) + FUSED_ROWS_BYTES


@_dataclass(frozen=True)
class _FusedKind:
    """What tells the fused variants apart (they share every kernel; registered below as FUSED_KINDS)."""
    dk_in_dv: bool           # dk formed in the dv walker (tz_bwd_dv<..., DKF = true>; no tz_bwd_dk).  The backward
                             # function passes it (fused and fused2 share one forward plan, made with fused's kind)
    waves: bool = False      # chunks per segment from the walkers' waves (wave_segments), not choose_segments
    kw_sums: bool = False    # the backward's segment-sum pass on the DKF instantiation (at head dim 64 its fold
                             # weighs A fragments: no weighted copies of dO; float32 2 blocks per SM, not 1)
    kw_folds: bool = False   # tz_fwd and tz_bwd_dq at head dim 64 with KW = true (their folds weigh A fragments: no
                             # weighted copies, no copy pass, one barrier fewer per chunk; FUSED3_GROUPS)
    dq_states: bool = False  # causal with several chunks: tz_fwd stores the states before every chunk and tz_bwd_dq
                             # reads them instead of folding (CST = true, FUSED4_GROUPS; the forward at head dim 64
                             # with KW as kw_folds' -- the kinds with it have kw_folds)


FUSED_KINDS = {
    "chunked_mma_fused": _FusedKind(dk_in_dv=False),
    "chunked_mma_fused2": _FusedKind(dk_in_dv=True),
    "chunked_mma_fused3": _FusedKind(dk_in_dv=True, waves=True, kw_sums=True, kw_folds=True),
    "chunked_mma_fused4": _FusedKind(dk_in_dv=True, waves=True, kw_sums=True, kw_folds=True, dq_states=True),
}

# wave_segments' model (docs/kernels/zeros.md, "Segments by waves: cupy:chunked_mma_fused3"): a walker's time is
# its waves (ceil(blocks / (SMs x blocks per SM)): a partial last wave costs about a full one, the walk being
# latency-bound) times its chunk steps per block (L, + 1 for the block's state load and store); with several
# segments per head the two segment-sum passes add their fold-only steps (FUSED_SUMS_STEP of the walkers' chunk
# step) and the four launches of the passes and the scans FUSED_SEG_LAUNCHES steps.
FUSED_MAX_SEGMENT_CHUNKS = 16   # longest segment tried (linear's measured range: 4-16 chunks, _chunked_mma)
FUSED_SUMS_STEP = 0.2           # fold-only step of the segment passes / the walkers' (units 6 of 34 per chunk)
FUSED_SEG_LAUNCHES = 0.5        # the passes' and scans' launches, in walker chunk steps
SM_SMEM = 228 * 1024            # shared memory per SM (sm_90), of which 1 KB per resident block is reserved


def wave_segments(N: int, T: int, tiles: int, slots: int) -> int:
    """Chunks per segment (0: one segment per head) for the fused walkers (grid (segments x tiles, N)) when slots
    of their blocks are resident at once: the L in 1..FUSED_MAX_SEGMENT_CHUNKS of least modelled time (above),
    the longest of equal ones.  At N = 32, D = 64 on 132 SMs: float16 (3 blocks per SM) L = 11 at T = 4k (1 wave;
    choose_segments' 8: 2) and 15 at 16k (3 waves; 8: 6), float32 (2) 16 at both (1 and 4 waves; 8: 2 and 8)."""
    nch = -(-T // mma.C)
    if nch <= 1:
        return 0

    def cost(L):
        nseg = -(-nch // L)
        steps = -(-nseg * tiles * N // slots) * (min(L, nch) + 1)
        return steps if nseg == 1 else steps * (1 + FUSED_SUMS_STEP) + FUSED_SEG_LAUNCHES

    L = min(range(1, min(FUSED_MAX_SEGMENT_CHUNKS, nch) + 1), key=lambda L: (cost(L), -L))
    return 0 if L >= nch else L


def fused_blocks_per_sm(dt: str, dk: int, dv: int, kw: bool = True) -> int:
    """The fewest blocks per SM among cupy:chunked_mma_fused3's walkers (tz_fwd, tz_bwd_dq, with KW = kw where the
    head dim pads to 64, and tz_bwd_dv<..., DKF>): each kernel's tz::min_blocks (its launch bound: registers) and
    what its shared memory leaves."""
    item, dkp, dvp = mma.ITEMSIZE[dt], mma.pad_dim(dk), mma.pad_dim(dv)
    f32 = dt == "float32"

    def per_sm(name, dp, narrow=None):
        if kw and dp == 64 and name in FUSED3_KW_NARROW:
            narrow = FUSED3_KW_NARROW[name]
        return min(3 if dp == 64 and not f32 else 2, SM_SMEM // (smem_fused(name, item, dp, narrow) + 1024))
    return min(per_sm("tz_fwd", dkp), per_sm("tz_bwd_dq", dvp), per_sm("tz_bwd_dv", dkp, FUSED2_DV_NARROW[dkp]))


@_dataclass
class _FusedContext:
    q: object
    k: object
    v: object
    s: object
    gates: object
    causal: bool
    stats: ForwardStats
    table: object            # _chunked_mma.SegmentTable (one sequence per head)
    H: object                # causal: (N, nseg, 3, Dk, Dv) states before each segment (None: one segment);
                             # not causal: (N, 1, 3, Dk, Dv) totals; float32, the np.uint64 address of its
                             # first element (a part of stats.buf)
    tok: tuple = ()          # s and the statistics' rows by address, as the forward launched them (_FusedPlan)
    plan: object = None      # the forward's _FusedPlan (its backward plans: _FusedBackwardPlan)
    Hc: object = None        # dq_states (causal, several chunks): the states before every chunk (N, chunks, 3, Dk,
                             # Dv) float32 by address, for tz_bwd_dq<..., CST> (a part of stats.buf); else None


@functools.lru_cache(maxsize=None)
def _fused_kernel(dt: str, name: str, dp: int):
    return get_kernel(mma.SOURCE, f"{name}<{_CT[dt]}, {dp}, {SPLIT[dt]}>", group=FUSED_GROUPS[dt])


@functools.lru_cache(maxsize=None)
def _fused_kernel_of(dt: str, name: str, dims: tuple) -> tuple:
    """(kernel, dynamic shared memory) of a tz kernel for head dims (dk, dv), once per key."""
    dp = mma.pad_dim(dims[0] if _FUSED_KERNELS[name][0] == "k" else dims[1])
    return _fused_kernel(dt, name, dp), smem_fused(name, mma.ITEMSIZE[dt], dp)


class _FusedPlan:
    """Everything of one fused forward that depends only on its geometry, made once per (storage dtype, q's
    shape, v's shape, gates' shape, causal, L, IN_BLOCK_SCAN_MAX_CHUNKS): the segment table, the argument
    tails, one layout for o and the statistics (backends.OutputLayout: o a view; st, head, the chunk carries
    above IN_BLOCK_SCAN_MAX_CHUNKS and the states H by address; one allocation up to OUTPUTS_MERGE_MAX) and
    every launch prepared (``_module.Prepared``).  Per call: one allocation, the addresses added to its base,
    the launches."""

    def __init__(self, dtype, q_shape, v_shape, g_shape, causal: bool, L, kind: "_FusedKind"):
        dt = dtype_name(dtype)                     # the kernels' storage type; o has the dtype object itself
        N, T, Dk, Dv = lead_size(q_shape, 2), q_shape[-2], q_shape[-1], v_shape[-1]
        i32, null = np.int32, np.uint64(0)
        NC = -(-T // SCAN_CHUNK)
        self.separate = separate = NC > IN_BLOCK_SCAN_MAX_CHUNKS      # the scans over chunks in their own launches
        ntw = -(-Dv // FUSED_BW)
        self.kind = kind
        if L is None:
            tiles = max(ntw, -(-Dk // FUSED_BW))
            L = (wave_segments(N, T, tiles, fused_blocks_per_sm(dt, Dk, Dv, kind.kw_folds) * mma._sm_count())
                 if kind.waves else mma.choose_segments(N, T, tiles))
        tab = self.table = mma.segment_table(T, L)
        # H: causal with one segment none (the walkers start from zeros); not causal with one segment the segment
        # sums themselves (the totals); else the scan of the segment sums (a per-call `part` before it)
        self.h_mode = None if causal and tab.single else "sums" if tab.single else "scan"
        nh = tab.nseg if causal else 1
        self.h_shape = (N, tab.nseg, 3, Dk, Dv)
        # dq_states: the states before every chunk (N, chunks, 3, Dk, Dv) float32, after H (tz_fwd<..., CST>)
        nch = -(-T // mma.C)
        self.cst = kind.dq_states and causal and nch > 1
        scratch = (_stats_layout(N, T, NC, separate) + ((((N, nh, 3, Dk, Dv), np.float32),) if self.h_mode else ())
                   + ((((N, nch, 3, Dk, Dv), np.float32),) if self.cst else ()))
        self.layout = outputs_layout(((tuple(q_shape[:-1]) + (Dv,), dtype),), scratch)   # (bfloat16: no NumPy name)
        row = 4 * N * T                                            # bytes of one statistics row (float32)
        self.rows = tuple(ST[r] * row for r in ("m", "alpha", "beta", "gamma"))
        self.shift = 4 * N                                         # the head rows: sigma, then c
        # zeros_ftoken (the statistics; no stream values, one sequence, no state); above the bound after
        # zeros_fchunk and zeros_fscan (carries by address)
        sq = ONE_SEQUENCE.args() + (null,)                         # tseq, cu, nseq, st0
        self.ft_head = (i32(g_shape[-1]), i32(T), i32(Dv), i32(NC)) + sq
        self.ft_tail = (null, null, i32(0), null, i32(0)) + (null,) * 4
        self.ft_head_nulls = self.ft_head + (null,) * 3            # + the carries' null addresses (scans in block)
        self.ftoken = Prepared(_scan(dt, "ftoken", causal), (NC, N), (32 * SCAN_WARPS,))
        if separate:
            self.fchunk = Prepared(_scan(dt, "fchunk"), (-(-NC // SCAN_WARPS), N), (32 * SCAN_WARPS,))
            self.fscan = Prepared(_scan(dt, "fscan", causal), (N,), (SCAN_THREADS,))
            self.fchunk_head, self.fscan_nc = (i32(T), i32(NC)) + sq, i32(NC)
        kernel, smem = _fused_walker_of(dt, "tz_fwd", (Dk, Dv), kind.kw_folds, kind.dq_states)
        self.fwd = Prepared(kernel, (tab.nseg * ntw, N), (mma.THREADS,), smem)
        self.sums = Prepared(kernel, (tab.nseg * ntw, N), (mma.THREADS,), smem)   # its own parameter layout
        self.tail = (tab.t0, tab.t1, i32(T), i32(Dk), i32(Dv), i32(tab.nseg), i32(causal))
        if self.h_mode == "scan":
            E = Dk * Dv
            self.seg_scan = Prepared(get_kernel(mma.SOURCE, "tz_seg_scan<false>", group=FUSED_COMMON),
                                     (-(-3 * E // 256), N), (256,))
            self.scan_args = (tab.t0, tab.t1, i32(T), i32(tab.nseg), np.int64(E))
        self.causal, self.dt, self.NC = causal, dt, NC
        self.backward = {}                                         # dk_in_dv -> _FusedBackwardPlan

    def __call__(self, q, k, v, s, gates):
        """o, ForwardStats (by address), H (np.uint64 address or None), the token arguments, the per-chunk states
        (np.uint64 address; None without dq_states)."""
        o, st, head, keep, H, tok, Hc = self.run(q, k, v, s, gates)
        return o, ForwardStats(st, head, None, keep), H, tok, Hc

    def run(self, q, k, v, s, gates):
        """The forward's allocation and launches: o, the statistics' st and head (np.uint64 addresses), the
        allocation to keep, H, the token arguments, the per-chunk states (as ``__call__``)."""
        import cupy as cp
        u64, null = np.uint64, _NULL
        (o,), addrs, keep = self.layout.new(cp)
        st, head = addrs[0], addrs[1]
        b, (rm, ra, rb, rg) = int(st), self.rows
        tok = (s, u64(b + rm), u64(b + ra), u64(b + rb), u64(b + rg), head, u64(int(head) + self.shift))
        if self.separate:
            cM, cE, cLo, cHi, cP, cR, xM, xE, xP = addrs[2:11]
            self.fchunk((s,) + self.fchunk_head + (cM, cE, cP, cR, cLo, cHi))
            self.fscan((cM, cE, cP, cR, cLo, cHi, self.fscan_nc, xM, xE, xP, head))
            self.ftoken((s, gates, v, *self.ft_head, xM, xE, xP, head, st, *self.ft_tail))
        else:                                                  # zeros_ftoken scans the chunks itself
            self.ftoken((s, gates, v, *self.ft_head_nulls, head, st, *self.ft_tail))
        H = addrs[-1 - self.cst] if self.h_mode else None
        Hc = addrs[-1] if self.cst else None
        if self.h_mode == "sums":                              # not causal, one segment: the totals
            self.sums((null, k, v) + tok + (null, null, H) + self.tail)
        elif self.h_mode == "scan":
            part = new_output(cp, self.h_shape, cp.float32)   # each segment's own sum, until the scan is queued
            self.sums((null, k, v) + tok + (null, null, part) + self.tail)
            self.seg_scan((part, tok[1]) + self.scan_args + ((H, null) if self.causal else (null, H)))
        self.fwd((q, k, v, *tok, o, null if H is None else H, null if Hc is None else Hc, *self.tail))
        return o, st, head, keep, H, tok, Hc


_FUSED_PLANS: dict = {}
_MAX_FUSED_PLANS = 256


def _fused_plan(dtype, q_shape, v_shape, g_shape, causal: bool, L, kind) -> _FusedPlan:
    """The cached _FusedPlan of this geometry (made on a miss); keyed also on IN_BLOCK_SCAN_MAX_CHUNKS."""
    key = (dtype, q_shape, v_shape, g_shape, causal, L, IN_BLOCK_SCAN_MAX_CHUNKS, kind)
    P = _FUSED_PLANS.get(key)
    if P is None:
        if len(_FUSED_PLANS) >= _MAX_FUSED_PLANS:
            _FUSED_PLANS.clear()
        P = _FUSED_PLANS[key] = _FusedPlan(dtype, q_shape, v_shape, g_shape, causal, L, kind)
    return P


def _fused_forward(q, k, v, s, gates, causal=True, L=None, kind=None):
    """L: chunks per segment (None: the kind's rule, _chunked_mma.choose_segments or wave_segments; 0: one segment
    per head).  kind: the variant's _FusedKind (None: FUSED_KINDS["chunked_mma_fused"], whose forward fused2
    shares)."""
    causal = bool(causal)
    kind = kind or FUSED_KINDS["chunked_mma_fused"]
    # (a test moves IN_BLOCK_SCAN_MAX_CHUNKS)
    P = _fused_plan(q.dtype, q.shape, v.shape, gates.shape, causal, L, kind)
    o, stats, H, tok, Hc = P(q, k, v, s, gates)
    return o, _FusedContext(q, k, v, s, gates, causal, stats, P.table, H, tok, P, Hc)


# cupy:chunked_mma_fused2: the backward folds dk into the dv walker (tz_bwd_dv<..., DKF = true>): each dv tile's
# block also forms its part of dk ((r o dP_tile)^T Q + V_tile X_tile^T, the tile's dP and suffix states being in
# its registers and shared memory already), so tz_bwd_dk is not launched.  One dv tile (Dv <= 32): dk directly;
# else parts (ntv, N, T, Dk) in the input dtype that the last scalar kernel sums into dk (in float32).  Forward:
# cupy:chunked_mma_fused's.
FUSED2_GROUPS = {dt: tuple(f"tz_bwd_dv<{ct}, {p}, {SPLIT[dt]}, true>" for p in mma.DIMS) for dt, ct in _CT.items()}
FUSED2_DV_NARROW = {64: 2, 128: 5}   # tz_bwd_dv<..., DKF>'s 32-column tiles per DKP (64: do, v; the fold weighs
                                     # its A fragments, chunked_mma.cu KW)
INSTANTIATIONS += [(mma.SOURCE, e) for grp in FUSED2_GROUPS.values() for e in grp]
declare_groups(mma.SOURCE, list(FUSED2_GROUPS.values()))


@functools.lru_cache(maxsize=None)
def _fused2_dv_kernel_of(dt: str, dk: int) -> tuple:
    """(kernel, dynamic shared memory) of tz_bwd_dv<..., true> (the dv walker that also forms dk) for head dim dk."""
    dp = mma.pad_dim(dk)
    return (get_kernel(mma.SOURCE, f"tz_bwd_dv<{_CT[dt]}, {dp}, {SPLIT[dt]}, true>", group=FUSED2_GROUPS[dt]),
            smem_fused("tz_bwd_dv", mma.ITEMSIZE[dt], dp, FUSED2_DV_NARROW[dp]))


# cupy:chunked_mma_fused3's forward and dq walkers at head dim 64: tz_fwd and tz_bwd_dq with KW = true (their folds
# weigh the A fragments, as the DKF dv walker's: no weighted copies of v or k in shared memory)
FUSED3_KW_NARROW = {"tz_fwd": 1, "tz_bwd_dq": 2}     # their 32-column tiles with KW (v; q, k), not 3 and 4
FUSED3_GROUPS = {dt: tuple(f"{name}<{ct}, 64, {SPLIT[dt]}, true>" for name in FUSED3_KW_NARROW)
                 for dt, ct in _CT.items()}
INSTANTIATIONS += [(mma.SOURCE, e) for grp in FUSED3_GROUPS.values() for e in grp]
declare_groups(mma.SOURCE, list(FUSED3_GROUPS.values()))


# cupy:chunked_mma_fused4 (dq_states): tz_fwd and tz_bwd_dq with CST = true at every head dim: the forward (KW at 64,
# as fused3's) stores the states before every chunk, tz_bwd_dq reads them (no fold, 2 narrow tiles: q, k)
def _fused4_expr(ctype: str, name: str, dp: int, split: int) -> str:
    return f"{name}<{ctype}, {dp}, {split}, {_flag(name == 'tz_fwd' and dp == 64)}, true>"


FUSED4_GROUPS = {dt: tuple(_fused4_expr(ct, name, p, SPLIT[dt]) for p in mma.DIMS for name in FUSED3_KW_NARROW)
                 for dt, ct in _CT.items()}
INSTANTIATIONS += [(mma.SOURCE, e) for grp in FUSED4_GROUPS.values() for e in grp]
declare_groups(mma.SOURCE, list(FUSED4_GROUPS.values()))


@functools.lru_cache(maxsize=None)
def _fused_walker_of(dt: str, name: str, dims: tuple, kw: bool, cst: bool = False) -> tuple:
    """(kernel, dynamic shared memory) of tz_fwd or tz_bwd_dq for head dims (dk, dv): with cst (dq_states) the CST
    instantiation (FUSED4_GROUPS); else with kw (fused3) the KW instantiation where the head dim pads to 64, else
    _fused_kernel_of's."""
    dp = mma.pad_dim(dims[0] if _FUSED_KERNELS[name][0] == "k" else dims[1])
    if cst:
        kwf = name == "tz_fwd" and dp == 64                    # the forward's fold as fused3's; dq has no fold
        return (get_kernel(mma.SOURCE, _fused4_expr(_CT[dt], name, dp, SPLIT[dt]), group=FUSED4_GROUPS[dt]),
                smem_fused(name, mma.ITEMSIZE[dt], dp, FUSED3_KW_NARROW[name] if kwf or name == "tz_bwd_dq" else None))
    if not (kw and dp == 64):
        return _fused_kernel_of(dt, name, dims)
    return (get_kernel(mma.SOURCE, f"{name}<{_CT[dt]}, 64, {SPLIT[dt]}, true>", group=FUSED3_GROUPS[dt]),
            smem_fused(name, mma.ITEMSIZE[dt], 64, FUSED3_KW_NARROW[name]))


def _fused2_backward(ctx: _FusedContext, do):
    return _fused_backward(ctx, do, dk_in_dv=True)


def _fused3_forward(q, k, v, s, gates, causal=True, L=None):
    return _fused_forward(q, k, v, s, gates, causal, L, FUSED_KINDS["chunked_mma_fused3"])


def _fused4_forward(q, k, v, s, gates, causal=True, L=None):
    return _fused_forward(q, k, v, s, gates, causal, L, FUSED_KINDS["chunked_mma_fused4"])


def _fused_backward(ctx: _FusedContext, do, dk_in_dv=False):
    """dk_in_dv: cupy:chunked_mma_fused2's backward (dk from the dv walker, no tz_bwd_dk).  The plan is the
    forward plan's (one per variant kind), made at its first backward."""
    B = ctx.plan.backward.get(dk_in_dv)
    if B is None:
        B = _backward_plan(ctx.plan, tuple((x.shape, x.dtype) for x in (ctx.q, ctx.k, ctx.v, ctx.s, ctx.gates)),
                           dk_in_dv)
    return B.run(ctx.q, ctx.k, ctx.v, ctx.gates, ctx.tok, ctx.H, ctx.Hc, ctx.stats.st, as_contiguous(do, ctx.v.dtype))


def _backward_plan(P: _FusedPlan, specs: tuple, dk_in_dv: bool) -> "_FusedBackwardPlan":
    """The forward plan's backward plan for dk_in_dv (made on a miss); specs: (shape, dtype) of q, k, v, s, gates."""
    B = P.backward.get(dk_in_dv)
    if B is None:
        B = P.backward[dk_in_dv] = _FusedBackwardPlan(P, specs, dk_in_dv)
    return B


class _FusedBackwardPlan:
    """Everything of one fused backward that depends only on its geometry, made once per forward plan
    (_FusedPlan) and dk_in_dv: one layout for dq, dk, dv, ds, dgates and the scratch (backends.OutputLayout:
    the gradients views; by address the row dots a, V, Z per dk tile, the direct part of ds per dv tile, x and
    y, (scans apart) the chunk carries cR, cQ, cF and their scans yR, yQ, (fused2 with several dv tiles) dk's
    parts, (states chained) the segment sums and their scan; one allocation up to OUTPUTS_MERGE_MAX), the
    argument tails and every launch prepared (``_module.Prepared``; a launch whose arguments differ in kind
    from another's on the same kernel -- tz_bwd_dv's segment-sum pass -- has its own).  Per call: one
    allocation, the launches."""

    def __init__(self, P: _FusedPlan, specs: tuple, dk_in_dv: bool):
        (q_shape, _), _, (v_shape, _), _, (g_shape, _) = specs         # (shape, dtype) of q, k, v, s, gates
        tab = P.table
        N, T, Dk, Dv = lead_size(q_shape, 2), q_shape[-2], q_shape[-1], v_shape[-1]
        dt, causal, NC, separate = P.dt, P.causal, P.NC, P.separate
        i32 = np.int32
        ntk, ntv = -(-Dk // FUSED_BW), -(-Dv // FUSED_BW)
        self.dk_in_dv = dk_in_dv
        self.dk_parts = dk_parts = dk_in_dv and ntv > 1                 # dk summed from parts (else direct)
        self.separate, self.causal = separate, causal
        # the states the dv (and dk) walkers start from, chained as the forward's (_FusedPlan.h_mode): causal with
        # one segment none (zeros); not causal with one segment the segment sums themselves (the totals); else the
        # reverse scan of the segment sums
        self.s_mode = P.h_mode
        seg = (((N, tab.nseg, 3, Dk, Dv), np.float32),) if self.s_mode else ()
        if self.s_mode == "scan":
            seg += (((N, tab.nseg if causal else 1, 3, Dk, Dv), np.float32),)
        scratch = _bwd_layout(N, T, NC, ntk, ntv, separate, (Dk, mma.ITEMSIZE[dt]) if dk_parts else None) + seg
        self.layout = outputs_layout(tuple(specs), scratch)
        self.n_carries = 5 if separate else 0
        self.tail = (tab.t0, tab.t1, i32(T), i32(Dk), i32(Dv), i32(tab.nseg), i32(causal))

        def walker(found, tiles):                                       # found: (kernel, dynamic shared memory)
            return Prepared(found[0], (tab.nseg * tiles, N), (mma.THREADS,), found[1])
        dkf = _fused2_dv_kernel_of(dt, Dk) if dk_in_dv or P.kind.kw_sums else None   # the DKF dv walker
        self.dq_states = P.cst                                          # dq from the forward's per-chunk states
        self.dq = walker(_fused_walker_of(dt, "tz_bwd_dq", (Dk, Dv), P.kind.kw_folds, P.kind.dq_states), ntk)
        if self.s_mode:                                                 # the segment sums: no dv, ds or dk
            self.sums = walker(dkf if P.kind.kw_sums else _fused_kernel_of(dt, "tz_bwd_dv", (Dk, Dv)), ntv)
        if self.s_mode == "scan":
            E = Dk * Dv
            self.seg_scan = Prepared(get_kernel(mma.SOURCE, "tz_seg_scan<true>", group=FUSED_COMMON),
                                     (-(-3 * E // 256), N), (256,))
            self.scan_args = (tab.t0, tab.t1, i32(T), i32(tab.nseg), np.int64(E))
        if dk_in_dv:                                                    # dv, ds parts and dk (or its parts)
            self.dv = walker(dkf, ntv)
        else:
            self.dv = walker(_fused_kernel_of(dt, "tz_bwd_dv", (Dk, Dv)), ntv)
            self.dk = walker(_fused_kernel_of(dt, "tz_bwd_dk", (Dk, Dv)), ntk)
        # the scalars: dgates and the scalar part of ds (and dk from its parts)
        self.ntk, self.ntv, self.G, self.Dk, self.T, self.NC = (i32(x) for x in (ntk, ntv, g_shape[-1], Dk, T, NC))
        blocks = ((NC, N), (32 * SCAN_WARPS,))
        if not separate:
            self.bscalar_ds = Prepared(_scan(dt, "fused_bscalar_ds", causal), *blocks)
        else:
            self.bscalar = Prepared(_scan(dt, "fused_bscalar", causal), *blocks)
            self.bscan = Prepared(_scan(dt, "bscan", causal), (N,), (SCAN_THREADS,))
            self.bds = Prepared(_scan(dt, "fused_bds", causal), *blocks)

    def run(self, q, k, v, gates, tok, H, Hc, st, do):
        """dq, dk, dv, ds, dgates (the forward's context's fields as arguments: tok, H, Hc and st, the statistics'
        address)."""
        import cupy as cp
        tail, null = self.tail, _NULL
        (dq, dk, dv, ds, dgates), addrs, keep = self.layout.new(cp)   # keep: held until the launches are queued
        rd, dsp, xy = addrs[0], addrs[1], addrs[2]
        i = 3 + self.n_carries
        dkp = addrs[i] if self.dk_parts else null
        i += self.dk_parts
        qkv = (q, k, v) + tok
        Hq = Hc if self.dq_states else H                           # (CST, not causal: the totals H)
        self.dq(qkv + (do, dq, rd, null if Hq is None else Hq) + tail)
        S = null
        if self.s_mode:
            S = part = addrs[i]
            self.sums(qkv + (do, null, null, null, part, null, null) + tail)
            if self.s_mode == "scan":
                S = addrs[i + 1]
                self.seg_scan((part, tok[1]) + self.scan_args + ((S, null) if self.causal else (null, S)))
        dk_direct = null if self.dk_parts else dk
        if self.dk_in_dv:
            self.dv(qkv + (do, dv, dsp, S, null, dk_direct, dkp) + tail)
        else:
            self.dv(qkv + (do, dv, dsp, S, null, null, null) + tail)
            self.dk((q, v) + tok + (do, dk, S) + tail)
        T, NC = self.T, self.NC
        scalars = (rd, self.ntk, gates, self.G, st, T, NC, xy, dgates)
        dk_sum = (dkp, self.Dk, dk if self.dk_parts else null)
        if not self.separate:
            self.bscalar_ds(scalars + (dsp, self.ntv, ds) + dk_sum)
            return dq, dk, dv, ds, dgates
        cR, cQ, cF, yR, yQ = addrs[3:8]
        self.bscalar(scalars + (cR, cQ, cF))
        self.bscan((cR, cQ, cF, tok[1], T, NC, yR, yQ))
        self.bds((st, xy, yR, yQ, dsp, self.ntv, T, NC, ds) + dk_sum)
        return dq, dk, dv, ds, dgates


_NULL = np.uint64(0)


class _FusedRun:
    """registry.Variant.prepare of the fused variants: their forward and backward for one call signature (the public
    ops' plan keeps it, keyed on every array's shape and dtype and causal), the forward plan looked up once (again
    where IN_BLOCK_SCAN_MAX_CHUNKS moved: a test moves it) and the context a tuple (P, q, k, v, gates, tok, H, Hc,
    st, the allocation), no _FusedContext or ForwardStats built.  The arrays as the variant takes them (C-contiguous,
    one dtype); do C-contiguous in it."""
    __slots__ = ("args", "specs", "dk_in_dv", "P", "nc_max")

    def __init__(self, dtype, shapes, causal: bool, kind: "_FusedKind", dk_in_dv: bool):
        self.args = (dtype, shapes[0], shapes[2], shapes[4], bool(causal), None, kind)
        self.specs = tuple((shape, dtype) for shape in shapes)
        self.dk_in_dv = dk_in_dv
        self.P, self.nc_max = _fused_plan(*self.args), IN_BLOCK_SCAN_MAX_CHUNKS

    def forward(self, q, k, v, s, gates):
        P = self.P
        if self.nc_max != IN_BLOCK_SCAN_MAX_CHUNKS:
            P = self.P = _fused_plan(*self.args)
            self.nc_max = IN_BLOCK_SCAN_MAX_CHUNKS
        o, st, _, keep, H, tok, Hc = P.run(q, k, v, s, gates)
        return o, (P, q, k, v, gates, tok, H, Hc, st, keep)

    def backward(self, ctx, do):
        P, q, k, v, gates, tok, H, Hc, st, _ = ctx
        B = P.backward.get(self.dk_in_dv)
        if B is None:
            B = _backward_plan(P, self.specs, self.dk_in_dv)
        return B.run(q, k, v, gates, tok, H, Hc, st, do)


def _fused_prepare(kind: str, dk_in_dv: bool, options, shapes, dtype):
    """registry.Variant.prepare of the fused variant whose forward runs FUSED_KINDS[kind] and whose backward forms dk
    in the dv walker when dk_in_dv: a _FusedRun's (forward, backward), or None for options it does not know."""
    if not options.keys() <= {"causal"}:
        return None
    run = _FusedRun(dtype, shapes, options.get("causal", True), FUSED_KINDS[kind], dk_in_dv)
    return run.forward, run.backward


@functools.lru_cache(maxsize=256)
def _bwd_layout(N: int, T: int, NC: int, ntk: int, ntv: int, separate: bool, dk_parts=None) -> tuple:
    """new_scratch layout of the fused backward: rd, dsp, xy, (separate) cR, cQ, cF, yR, yQ and (dk_parts = (Dk,
    itemsize), cupy:chunked_mma_fused2 with several dv tiles) the parts of dk (ntv, N, T, Dk) in the input dtype."""
    f32 = np.float32
    return (((3, ntk, N, T), f32), ((ntv, N, T), f32), ((2, N, T), f32)) + (
        (((N, NC), f32), ((N, NC), np.float64), ((N, NC), np.int32), ((N, NC), f32), ((N, NC), np.float64))
        if separate else ()) + ((((ntv, N, T, dk_parts[0]), np.float32 if dk_parts[1] == 4 else np.uint16),)
                                 if dk_parts else ())


# what the two fused variants share (they differ in the backward)
_FUSED_VARIANT = dict(leading_dims=True, tol={"float32": 5e-6, "float16": 5e-3, "bfloat16": 2e-2},
                      dtypes=("float32", "float16", "bfloat16"), array_kind="cupy", gpu=True, supports=_supports_mma,
                      form="linear")
register(Variant("zeros", "cupy", "chunked_mma_fused", _fused_forward, _fused_backward, **_FUSED_VARIANT,
                 prepare=functools.partial(_fused_prepare, "chunked_mma_fused", False),
                 # the default until callY (H200: 1.2-1.5x chunked_mma), fused2 since
                 description="parallel scans + one tensor-core pass: the three states per block, the ZeroS weights "
                             "in registers, one Q K^T and dO V^T per chunk; float32 as 3xTF32"))
register(Variant("zeros", "cupy", "chunked_mma_fused2", _fused_forward, _fused2_backward, **_FUSED_VARIANT,
                 prepare=functools.partial(_fused_prepare, "chunked_mma_fused", True),
                 # the default from callY (H200: 1.09-1.20x fused) until callH, fused3 since
                 description="cupy:chunked_mma_fused with dk formed in the dv walker (per dv tile: (r o dP)^T Q and "
                             "the suffix states' V X^T), no separate dk walk: one launch and the dk side's "
                             "recomputed dP and state folds fewer"))
# cupy:chunked_mma_fused3: fused2's kernels and launches with the segment length chosen from the walkers' waves
# (wave_segments) and the backward's segment-sum pass on the DKF dv walker (FUSED_KINDS); forward through
# _fused_forward with its kind (its own plans: another L), backward fused2's (the kind read from the plan)
register(Variant("zeros", "cupy", "chunked_mma_fused3", _fused3_forward, _fused2_backward, **_FUSED_VARIANT,
                 prepare=functools.partial(_fused_prepare, "chunked_mma_fused3", True),
                 default_for=("float32", "float16", "bfloat16"),   # H200 callH: 1.07-1.32x fused2
                 description="cupy:chunked_mma_fused2 with segments sized to whole waves of the walkers' blocks "
                             "(fewer chunk steps per SM at T >= 4k) and the backward's segment sums on the dv "
                             "walker that weighs its fold in registers"))
# cupy:chunked_mma_fused4: fused3 with dq_states (FUSED_KINDS): the forward stores the states before every chunk
# (N, chunks, 3, Dk, Dv) float32 and tz_bwd_dq reads them instead of folding the chunk's keys (docs/kernels/zeros.md,
# "dq from the forward's per-chunk states")
register(Variant("zeros", "cupy", "chunked_mma_fused4", _fused4_forward, _fused2_backward, **_FUSED_VARIANT,
                 prepare=functools.partial(_fused_prepare, "chunked_mma_fused4", True),
                 description="cupy:chunked_mma_fused3 with the states before every chunk stored by the forward and "
                             "read by the dq pass (no fold in dq; +48 KB per chunk and head, float32)"))
