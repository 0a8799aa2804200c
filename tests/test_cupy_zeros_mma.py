"""ZeroS on tensor cores: cupy:chunked_mma (kernels/cupy/zeros.py, kernels/cuda/zeros.cu namespace zs).

CPU: the scan algebra of zeros.cu emulated in NumPy (the same combine operators, the same two-tokens-per-lane
shuffle scans, carries and empties, chunks of 64) against direct float64 statistics; the stream decomposition
with its power-of-two scales (s_o, sigma, the 4 sigma of the backward) against the explicit reference; the
variant table and the instantiation list.
GPU (marked gpu): every scan and row kernel against NumPy float64 (T = 1, 63, 64, 65, 130, 4097; s of +-1e3;
ties in the running max; NaN), and the variant against the float64 explicit reference, forward and every
gradient, in float32 (3xTF32 and TF32), float16 and bfloat16; initial and final states and packed sequences
(lengths 1, 63, 64, 65) against the reference, two calls against one, a packed call against one call per
sequence.
"""
import dataclasses
import math

import numpy as np
import pytest

import workbench as wb
from workbench import check, registry
from workbench import state as wst
from workbench.check import rel_error
from workbench.inputs import random_inputs, random_state
from workbench.reference import zeros as ref_zeros

from kernels.cupy import zeros

gpu = pytest.mark.gpu
C = zeros.SCAN_CHUNK


# ----------------------------------------------------------------------------- NumPy: direct statistics
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def pow2_at_least(a):
    """The least power of two >= max(1, a)."""
    a = np.maximum(np.asarray(a, np.float64), 1.0)
    return 2.0 ** np.ceil(np.log2(a))


def head_shift(s):
    """c = (min s + max s) / 2 per head (NaN ignored)."""
    return 0.5 * (np.nanmin(s, -1) + np.nanmax(s, -1))


def direct_stats(s, gates, causal, c=None):
    """float64 per-token statistics of zeros_ftoken from their definitions (fmax ignores NaN), with the
    first-order path shifted by c (default: head_shift): P is sum (s - c), sigma >= max |s - c|."""
    N, T = s.shape
    c = head_shift(s) if c is None else c
    sig1, sigh = _sigmoid(gates[..., 0]), _sigmoid(gates[..., 1])
    tz = np.tanh(gates[..., 2]) if gates.shape[-1] == 3 else np.zeros_like(sig1)
    with np.errstate(invalid="ignore"):
        if causal:
            m = np.fmax.accumulate(s, -1)
            E = np.empty_like(s)
            E[:, 0] = np.exp(s[:, 0] - m[:, 0])
            for t in range(1, T):                                   # float64 recurrence, exponents <= 0
                E[:, t] = E[:, t - 1] * np.exp(m[:, t - 1] - m[:, t]) + np.exp(s[:, t] - m[:, t])
            P, n = np.cumsum(s, -1), np.arange(1, T + 1.0)
            gF = np.concatenate([np.zeros((N, 1)), m[:, :-1] - m[:, 1:]], -1)
        else:
            m = np.repeat(np.fmax.reduce(s, -1, keepdims=True), T, -1)
            E = np.repeat(np.exp(s - m).sum(-1, keepdims=True), T, -1)
            P, n, gF = np.repeat(s.sum(-1, keepdims=True), T, -1), np.full(T, float(T)), np.zeros_like(s)
    P = P - n * c[:, None]
    beta = (sig1 - sigh) / n
    return dict(m=m, E=E, P=P, alpha=sigh / E, beta=beta, gamma=(tz - sigh - beta * P) / n, u=np.exp(s - m),
                gF=gF, n=np.broadcast_to(n, s.shape), c=c, sigma=pow2_at_least(np.nanmax(np.abs(s - c[:, None]), -1)),
                sig1=sig1, sigh=sigh, tz=tz)


def direct_backward(st, a, V, Z, causal):
    """x, y, the scalar part of ds (-u R - Q) and dgates from the row dots a, V, Z (float64)."""
    U = a / st["E"]
    x, y = st["alpha"] * U, st["beta"] * Z / st["n"]
    m = st["m"]
    if causal:
        R = np.empty_like(x)
        R[:, -1] = x[:, -1]
        for j in range(x.shape[-1] - 2, -1, -1):                    # float64 recurrence, exponents <= 0
            R[:, j] = x[:, j] + np.exp(m[:, j] - m[:, j + 1]) * R[:, j + 1]
        Q = np.cumsum(y[:, ::-1], -1)[:, ::-1]
    else:
        R, Q = x.sum(-1, keepdims=True), y.sum(-1, keepdims=True)
    n, P = st["n"], st["P"]
    dsig1 = V / n - P * Z / n ** 2
    dsigh = U - dsig1 - Z / n
    dg = np.stack([dsig1 * st["sig1"] * (1 - st["sig1"]), dsigh * st["sigh"] * (1 - st["sigh"]),
                   Z / n * (1 - st["tz"] ** 2)], -1)
    return x, y, -st["u"] * R - Q, dg


# ----------------------------------------------------------------------------- NumPy: the kernels' scan algebra
def _rescale(x, frm, to):
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where((x == 0) | (frm == to), x, x * np.exp(frm - to))


def fwd_add(a, b):                       # zs::operator+(Fwd, Fwd)
    M = np.fmax(a[0], b[0])
    return M, _rescale(a[1], a[0], M) + _rescale(b[1], b[0], M), a[2] + b[2]


def bwd_add(a, b):                       # zs::operator+(Bwd, Bwd): a precedes b
    return a[0], a[1] + _rescale(b[1], a[0], b[0]), a[2] + b[2]


def _shift(x, o, fill, up):
    """shfl_up (up) or shfl_down by o over the last axis (32 lanes); lanes without a source get fill."""
    pad = np.full(x.shape[:-1] + (o,), fill, x.dtype)
    return np.concatenate([pad, x[..., :-o]], -1) if up else np.concatenate([x[..., o:], pad], -1)


def _lanes(op, x, up, empty):
    """Inclusive shuffle scan of a tuple of (..., 32) arrays: prefix (up) or suffix, as the kernels do it."""
    lane = np.arange(32)
    for o in (1, 2, 4, 8, 16):
        y = tuple(_shift(a, o, f, up) for a, f in zip(x, empty))
        z = op(y, x) if up else op(x, y)
        keep = (lane >= o) if up else (lane + o < 32)
        x = tuple(np.where(keep, zz, xx) for zz, xx in zip(z, x))
    return x


def emulate_forward(s, causal):
    """m, E, P per token through zeros_fchunk / zeros_fscan / zeros_ftoken's algebra."""
    N, T = s.shape
    NC = -(-T // C)
    sp = np.full((N, NC * C), np.nan)
    sp[:, :T] = s
    valid = np.arange(NC * C) < T
    tok = (np.where(valid, sp, -np.inf), np.broadcast_to(np.where(valid, 1.0, 0.0), sp.shape), np.where(valid, sp, 0.0))
    lanes = [tuple(a.reshape(N, NC, 32, 2)[..., h] for a in tok) for h in (0, 1)]   # token 2L + h
    pair = fwd_add(lanes[0], lanes[1])
    totals = [tuple(a[:, c].copy() for a in pair) for c in range(NC)]
    part = []
    for c in range(NC):                                        # zeros_fchunk: the chunk's triple
        acc = tuple(a[:, 0] for a in totals[c])
        for L in range(1, 32):
            acc = fwd_add(acc, tuple(a[:, L] for a in totals[c]))
        part.append(acc)
    empty = (np.full(N, -np.inf), np.zeros(N), np.zeros(N))
    carry, run = [], empty                                     # zeros_fscan
    for c in range(NC):
        carry.append(run)
        run = fwd_add(run, part[c])
    out = np.zeros((3, N, NC * C))
    for c in range(NC):                                        # zeros_ftoken
        if causal:
            inc = _lanes(fwd_add, tuple(a[:, c] for a in pair), True, (-np.inf, 0.0, 0.0))
            ex = tuple(_shift(a, 1, f, True) for a, f in zip(inc, (-np.inf, 0.0, 0.0)))
            before = fwd_add(tuple(a[:, None] for a in carry[c]), ex)
            at0 = fwd_add(before, tuple(a[:, c] for a in lanes[0]))
            at1 = fwd_add(at0, tuple(a[:, c] for a in lanes[1]))
        else:
            at0 = at1 = tuple(np.repeat(a[:, None], 32, -1) for a in run)
        for j in range(3):
            out[j, :, c * C:(c + 1) * C] = np.stack([at0[j], at1[j]], -1).reshape(N, C)
    return out[..., :T]


def emulate_backward(m, x, y, causal):
    """R and Q per token through zeros_bchunk / zeros_bscan / zeros_bfinish's algebra."""
    N, T = m.shape
    NC = -(-T // C)

    def pad(a):
        p = np.zeros((N, NC * C))
        p[:, :T] = a
        return p
    valid = np.arange(NC * C) < T
    el = (pad(m), np.where(valid, pad(x), 0.0), np.where(valid, pad(y), 0.0))    # empty = (0, 0, 0)
    part = []
    for c in range(NC):                                        # zeros_bchunk: relative to m at the first token
        sl = slice(c * C, (c + 1) * C)
        mu = el[0][:, c * C]
        part.append((mu, (_rescale(el[1][:, sl], mu[:, None], el[0][:, sl])).sum(-1), el[2][:, sl].sum(-1)))
    after, carry = (np.zeros(N), np.zeros(N), np.zeros(N)), [None] * NC       # zeros_bscan
    for c in reversed(range(NC)):
        carry[c] = after
        after = bwd_add(part[c], after)
    if not causal:
        return np.repeat(after[1][:, None], T, -1), np.repeat(after[2][:, None], T, -1)
    R, Q = np.zeros((N, NC * C)), np.zeros((N, NC * C))
    for c in range(NC):                                        # zeros_bfinish
        e = [tuple(a[:, c * C:(c + 1) * C].reshape(N, 32, 2)[..., h] for a in el) for h in (0, 1)]
        inc = _lanes(bwd_add, bwd_add(e[0], e[1]), False, (0.0, 0.0, 0.0))
        ex = tuple(_shift(a, 1, 0.0, False) for a in inc)
        nxt = m[:, (c + 1) * C] if c + 1 < NC else np.zeros(N)
        cr = (nxt[:, None], carry[c][1][:, None], carry[c][2][:, None])
        aft = tuple(np.where(np.arange(32) < 31, a, b) for a, b in zip(bwd_add(ex, cr), (np.broadcast_to(v, (N, 32))
                                                                                        for v in cr)))
        r1 = bwd_add(e[1], aft)
        r0 = bwd_add(e[0], r1)
        R[:, c * C:(c + 1) * C] = np.stack([r0[1], r1[1]], -1).reshape(N, C)
        Q[:, c * C:(c + 1) * C] = np.stack([r0[2], r1[2]], -1).reshape(N, C)
    return R[:, :T], Q[:, :T]


def logits(kind, N, T, seed):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal((N, T))
    if kind == "1e3":                                          # +-1e3 with long runs of tied maxima
        return np.where(rng.random((N, T)) < 0.3, 1e3, -1e3) * np.where(np.arange(T) % 97 < 50, 1, -1)
    return rng.integers(-3, 4, (N, T)).astype(np.float64)     # "ties": many equal running maxima


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", ["normal", "1e3", "ties"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 130, 300])
def test_scan_algebra(T, kind, causal):
    """The chunked scans (operators, carries, empties, lane pattern) reproduce the direct statistics."""
    rng = np.random.default_rng(T)
    s = logits(kind, 3, T, T)
    gates = rng.standard_normal((3, T, 3))
    st = direct_stats(s, gates, causal)
    m, E, P = emulate_forward(s, causal)
    np.testing.assert_array_equal(m, st["m"])
    np.testing.assert_allclose(E, st["E"], rtol=1e-12)
    np.testing.assert_allclose(P - st["n"] * st["c"][:, None], st["P"], rtol=1e-12, atol=1e-9)
    x, y = rng.standard_normal((2, 3, T))
    R, Q = emulate_backward(st["m"], x, y, causal)
    _, _, dsS, _ = direct_backward(st, x * st["E"] / st["alpha"], 0 * x, y * st["n"] / st["beta"], causal)
    np.testing.assert_allclose(-st["u"] * R - Q, dsS, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- NumPy: the stream decomposition
def _core(q, k, V, g, scale, causal):
    """float64 o = scale sum_i e^{G_t - G_i} (q_t.k_i) V_i (i <= t when causal) and its pullback."""
    T = q.shape[1]
    D = np.ones((1, T, T))
    if causal:
        G = np.cumsum(g, -1) if g is not None else np.zeros(q.shape[:2])
        D = np.exp(np.minimum(G[:, :, None] - G[:, None, :], 0)) * np.tril(D[0])
    W = scale * (q @ k.transpose(0, 2, 1)) * D

    def pullback(dO):
        dW = scale * (dO @ V.transpose(0, 2, 1)) * D
        return dW @ k, dW.transpose(0, 2, 1) @ q, W.transpose(0, 2, 1) @ dO
    return W @ V, pullback


def decomposition(q, k, v, s, gates, do, causal):
    """kernels/cupy/zeros.py's chunked_mma data flow in float64 (streams, scales, row kernels)."""
    st = direct_stats(s, gates, causal)
    so, sg = zeros.output_scale(q.shape[1]), st["sigma"][:, None, None]
    al, be, ga = (st[x][..., None] for x in ("alpha", "beta", "gamma"))
    Dv = v.shape[-1]
    oF, pF = _core(q, k, st["u"][..., None] * v, st["gF"] if causal else None, so, causal)
    sc = (s - st["c"][:, None])[..., None]                                     # s - c
    oGH, pGH = _core(q, k, np.concatenate([sc / sg * v, v], -1), None, so, causal)
    oG, oH = oGH[..., :Dv], oGH[..., Dv:]
    o = (al * oF + be * sg * oG + ga * oH) / so                                # zeros_combine
    a, V, Z = ((do * oF).sum(-1) / so, (do * oG).sum(-1) * st["sigma"][:, None] / so, (do * oH).sum(-1) / so)
    _, _, dsS, dgates = direct_backward(st, a, V, Z, causal)                   # zeros_bchunk/bscan
    dqF, dkF, dvF = pF(al / so * do)
    dqG, dkG, dvGH = pGH(np.concatenate([be / (4 * so) * do, ga / (4 * sg * so) * do], -1))
    dvG, dvH, u = dvGH[..., :Dv], dvGH[..., Dv:], st["u"][..., None]
    grads = (dqF + 4 * sg * dqG, dkF + 4 * sg * dkG, u * dvF + 4 * sc * dvG + 4 * sg * dvH,  # zeros_bfinish
             dsS + st["u"] * (v * dvF).sum(-1) + 4 * (v * dvG).sum(-1), dgates[..., :gates.shape[-1]])
    return o, grads


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T,scale_s,offset", [(37, 1.0, 0.0), (300, 1.0, 0.0), (300, 1e3, 0.0), (600, 30.0, 500.0)])
def test_decomposition_matches_reference(T, scale_s, offset, causal):
    q, k, v, s, gates = random_inputs("zeros", (2,), T, 16, 8, "float64", seed=T, n_gates=3)
    s = s * scale_s + offset
    s[:, 7::11] = s[:, 5:6]                                   # ties
    do = np.random.default_rng(1).standard_normal(v.shape)
    o, grads = decomposition(q, k, v, s, gates, do, causal)
    ro, ctx = ref_zeros.explicit_forward(q, k, v, s, gates, causal=causal)
    for name, x, r in zip(("o", "dq", "dk", "dv", "ds", "dgates"), (o,) + grads,
                          (ro,) + ref_zeros.explicit_backward(ctx, do)):
        assert np.linalg.norm(x - r) <= 1e-12 * np.linalg.norm(r), name


# ----------------------------------------------------------------------------- CPU: table and lists
def test_registered():
    v = registry.get("zeros", "cupy", "chunked_mma")
    assert set(v.dtypes) == {"float32", "float16", "bfloat16"} and v.gpu and v.form == "linear"
    t = registry.get("zeros", "cupy", "chunked_mma_tf32")
    assert t.dtypes == ("float32",) and "tf32" in t.tags
    assert v.unsupported_reason({}, {"q": (2, 8, 64), "v": (2, 8, 129)})
    assert v.unsupported_reason({}, {"q": (2, 8, 128), "v": (2, 8, 128)}) is None
    f = registry.get("zeros", "cupy", "chunked_mma_fused")
    assert set(f.dtypes) == {"float32", "float16", "bfloat16"} and f.gpu and f.form == "linear" and not f.tags
    assert f.unsupported_reason({}, {"q": (2, 8, 129), "v": (2, 8, 64)})
    assert f.unsupported_reason({}, {"q": (2, 8, 128), "v": (2, 8, 1)}) is None
    f2 = registry.get("zeros", "cupy", "chunked_mma_fused2")
    assert f2.dtypes == f.dtypes and f2.gpu and f2.form == "linear" and not f2.tags and f2.forward is f.forward
    assert f2.unsupported_reason({}, {"q": (2, 8, 129), "v": (2, 8, 64)})
    f3 = registry.get("zeros", "cupy", "chunked_mma_fused3")
    assert f3.dtypes == f.dtypes and f3.gpu and f3.form == "linear" and not f3.tags and f3.backward is f2.backward
    assert f3.unsupported_reason({}, {"q": (2, 8, 129), "v": (2, 8, 64)})
    assert not f2.default_for and "float16" in f3.default_for       # fused3 the default since callH (1.07-1.32x)
    f4 = registry.get("zeros", "cupy", "chunked_mma_fused4")
    assert f4.dtypes == f.dtypes and f4.gpu and f4.form == "linear" and not f4.tags and f4.backward is f2.backward
    assert not f4.default_for and f4.forward is not f3.forward
    k3, k4 = zeros.FUSED_KINDS["chunked_mma_fused3"], zeros.FUSED_KINDS["chunked_mma_fused4"]
    assert k4.dq_states and not k3.dq_states and k4 == dataclasses.replace(k3, dq_states=True)


def test_every_scan_kernel_is_listed():
    listed = {e for src, e in zeros.INSTANTIATIONS if src == zeros.SOURCE}
    for ct in ("float", "wb_half", "wb_bf16"):
        group = zeros.scan_exprs(ct)
        assert set(group) <= listed and len(group) == 18
        assert {"zeros_fchunk", "zeros_fscan", "zeros_ftoken", "zeros_combine", "zeros_bchunk", "zeros_bscan",
                "zeros_bfinish", "zeros_fused_bscalar", "zeros_fused_bds",
                "zeros_fused_bscalar_ds"} == {e.split("<")[0] for e in group}


def test_every_fused_kernel_is_listed_and_declared():
    """Each dtype's tz group holds the four tensor-core kernels at both padded head dims with the dtype's split,
    every expression is an NVRTC instantiation of chunked_mma.cu, and every group is declared for warmup."""
    from kernels.cupy import _module
    listed = {e for src, e in zeros.INSTANTIATIONS if src == zeros.mma.SOURCE}
    declared = {g for src, g in _module.groups() if src == zeros.mma.SOURCE}
    for dt, ct in (("float32", "float"), ("float16", "wb_half"), ("bfloat16", "wb_bf16")):
        group = zeros.FUSED_GROUPS[dt]
        split = 3 if dt == "float32" else 1
        assert set(group) == {f"{k}<{ct}, {p}, {split}>" for k in ("tz_fwd", "tz_bwd_dq", "tz_bwd_dv", "tz_bwd_dk")
                              for p in (64, 128)}
        assert set(group) <= listed and group in declared
    assert set(zeros.FUSED_COMMON) <= listed and zeros.FUSED_COMMON in declared
    for dt, ct in (("float32", "float"), ("float16", "wb_half"), ("bfloat16", "wb_bf16")):   # chunked_mma_fused2
        group = zeros.FUSED2_GROUPS[dt]
        assert set(group) == {f"tz_bwd_dv<{ct}, {p}, {3 if dt == 'float32' else 1}, true>" for p in (64, 128)}
        assert set(group) <= listed and group in declared
    for dt, ct in (("float32", "float"), ("float16", "wb_half"), ("bfloat16", "wb_bf16")):   # chunked_mma_fused3
        group = zeros.FUSED3_GROUPS[dt]
        assert set(group) == {f"{k}<{ct}, 64, {3 if dt == 'float32' else 1}, true>" for k in ("tz_fwd", "tz_bwd_dq")}
        assert set(group) <= listed and group in declared
    for dt, ct in (("float32", "float"), ("float16", "wb_half"), ("bfloat16", "wb_bf16")):   # chunked_mma_fused4
        group, sp = zeros.FUSED4_GROUPS[dt], 3 if dt == "float32" else 1
        assert set(group) == ({f"tz_fwd<{ct}, 64, {sp}, true, true>", f"tz_fwd<{ct}, 128, {sp}, false, true>"}
                              | {f"tz_bwd_dq<{ct}, {p}, {sp}, false, true>" for p in (64, 128)})
        assert set(group) <= listed and group in declared


def test_stat_rows_match_the_kernels():
    """zeros.STAT_ROWS names the rows of zs's per-token statistics in the kernels' order."""
    import os
    import re
    text = open(os.path.join(os.path.dirname(zeros.__file__), "..", "cuda", "zeros.cu")).read()
    enum = re.search(r"enum \{ (ST_M[^}]*) \};", text).group(1)
    names = [x.strip() for x in enum.split(",")]
    assert names[-1] == "NST" and len(names) - 1 == zeros.NST
    assert [n[3:].lower() for n in names[:-1]] == [r.lower() for r in zeros.STAT_ROWS]


def test_fused_shared_memory_fits():
    """Every tz kernel's dynamic shared memory fits an sm_80 / sm_90 block (opt-in limits 163 / 227 KiB) at
    both padded head dims; float16 and bfloat16 fit sm_80."""
    for name in ("tz_fwd", "tz_bwd_dq", "tz_bwd_dv", "tz_bwd_dk"):
        for dp in (64, 128):
            assert zeros.smem_fused(name, 4, dp) <= 227 * 1024
            assert zeros.smem_fused(name, 2, dp) <= 163 * 1024
    for dp in (64, 128):                                   # chunked_mma_fused2's dv walker (fewer narrow tiles at 64)
        narrow = zeros.FUSED2_DV_NARROW[dp]
        assert narrow <= 5 and zeros.smem_fused("tz_bwd_dv", 4, dp, narrow) <= 227 * 1024
    assert 2 * zeros.smem_fused("tz_bwd_dv", 4, 64, zeros.FUSED2_DV_NARROW[64]) <= 228 * 1024   # 2 blocks per SM
    for name, narrow in zeros.FUSED3_KW_NARROW.items():     # chunked_mma_fused3's KW forward and dq walkers (64)
        assert narrow < zeros._FUSED_KERNELS[name][1] and 2 * zeros.smem_fused(name, 4, 64, narrow) <= 228 * 1024
    for dp in (64, 128):                     # chunked_mma_fused4's dq walker (CST): no fold, 2 narrow tiles (q, k)
        assert zeros.smem_fused("tz_bwd_dq", 4, dp, zeros.FUSED3_KW_NARROW["tz_bwd_dq"]) < zeros.smem_fused(
            "tz_bwd_dq", 4, dp)


def test_wave_segments(monkeypatch):
    """cupy:chunked_mma_fused3's segment length (zeros.wave_segments): whole waves of the walkers' blocks at the
    benchmark shape (N = 32, D = 64, 132 SMs; float16 3 blocks per SM, float32 2), one segment up to one chunk,
    never longer than FUSED_MAX_SEGMENT_CHUNKS, and never more modelled steps than choose_segments' length."""
    assert zeros.fused_blocks_per_sm("float16", 64, 64) == 3 and zeros.fused_blocks_per_sm("bfloat16", 64, 64) == 3
    assert zeros.fused_blocks_per_sm("float32", 64, 64) == 2 and zeros.fused_blocks_per_sm("float32", 128, 128) == 1
    ws = zeros.wave_segments
    monkeypatch.setattr(zeros.mma, "_sm_count", lambda: 132)          # choose_segments' (no device here)
    assert [ws(32, T, 2, 396) for T in (1, 64, 65, 4096, 16384)] == [0, 0, 1, 11, 15]
    assert [ws(32, T, 2, 264) for T in (4096, 16384)] == [16, 16]

    def waves_steps(N, T, tiles, slots, L):
        nch = -(-T // 64)
        nseg = -(-nch // L) if L else 1
        return -(-nseg * tiles * N // slots) * ((L or nch) + 1)
    for N in (1, 3, 32, 64):
        for T in (100, 1000, 4096, 16384, 65536):
            for slots in (264, 396):
                L = ws(N, T, 2, slots)
                assert 0 <= L <= zeros.FUSED_MAX_SEGMENT_CHUNKS
                Lc = zeros.mma.choose_segments(N, T, 2)
                assert waves_steps(N, T, 2, slots, L) <= waves_steps(N, T, 2, slots, Lc) or L == 0, (N, T, slots)


def test_output_scale():
    assert [zeros.output_scale(T) for T in (1, 2, 256, 257, 4096, 65536)] == [1, 1, 1, 0.5, 1 / 16, 1 / 256]
    for T in (257, 4097, 70000, 10 ** 6):                   # stored sums of T terms: between 128 and 256 terms' worth
        assert 128 < zeros.output_scale(T) * T <= 256


# ----------------------------------------------------------------------------- GPU helpers
CAST = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}


def _cast(x, dtype):
    if dtype == "bfloat16":
        import ml_dtypes  # noqa: F401
    return np.asarray(x).astype(CAST[dtype])


def _dev(x, dtype):
    import cupy as cp
    return cp.asarray(_cast(x, dtype))


def _host(x):
    import cupy as cp
    return cp.asnumpy(x).astype(np.float64)


def _close(name, got, ref, rtol, floor=0.0):
    """|got - ref| <= rtol (|ref| + floor) elementwise (NaN only where ref is NaN)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{name}: NaN pattern differs"
    ok = np.isnan(ref) | (np.abs(got - ref) <= rtol * (np.abs(ref) + floor))
    if not ok.all():
        i = np.argwhere(~ok)[0]
        raise AssertionError(f"{name}: {(~ok).sum()} bad, first at {tuple(i)}: {got[tuple(i)]} vs {ref[tuple(i)]}")


def _streams(cp, arrays, one_call):
    """Streams over (F, G, H) host arrays: G, H side by side in one array when one_call."""
    F, G, H = arrays
    Dv = F.shape[-1]
    if one_call:
        GH = cp.ascontiguousarray(cp.concatenate([G, H], -1))
        return zeros.Streams(F, GH, 0, 2 * Dv, GH, Dv, 2 * Dv)
    return zeros.Streams(F, G, 0, Dv, H, 0, Dv)


def _gh_host(st, Dv):
    """(G, H) host arrays of a Streams."""
    a = lambda x: _host(x)                                      # noqa: E731
    if st.G is st.H:
        gh = a(st.G)
        return gh[..., :Dv], gh[..., Dv:]
    return a(st.G), a(st.H)


def _run_stats(s, gates, v, causal, dtype, one_call=True):
    import cupy as cp
    from workbench.backends import poisoned
    N, T, Dv = v.shape
    sd, gd, vd = _dev(s, dtype), _dev(gates, dtype), _dev(v, dtype)
    with poisoned():
        vals = zeros._stream_arrays(cp, N, T, Dv, vd.dtype, one_call, h_given=vd)
        stats = zeros.forward_stats(sd, gd, vd, causal, vals.F, vals.g(), vals.g_ld,
                                    vals.h() if one_call else None, vals.h_ld)
        cp.cuda.Device().synchronize()
    return stats, vals


STAT_ROWS = zeros.STAT_ROWS


# ----------------------------------------------------------------------------- GPU: scans and row kernels
@gpu
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", ["normal", "1e3", "ties"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 130, 4097])
def test_forward_stats(T, kind, causal):
    N, Dv = 3, 24
    rng = np.random.default_rng(T)
    dtype = "float16" if kind == "ties" else "float32"
    s = _cast(logits(kind, N, T, T), dtype).astype(np.float64)
    gates = _cast(rng.standard_normal((N, T, 2 + T % 2)), dtype).astype(np.float64)
    v = _cast(rng.standard_normal((N, T, Dv)), dtype).astype(np.float64)
    stats, vals = _run_stats(s, gates, v, causal, dtype)
    got = dict(zip(STAT_ROWS, _host(stats.st)))
    sigma, c = _host(stats.head)
    lo, hi = np.nanmin(s, -1).astype(np.float32), np.nanmax(s, -1).astype(np.float32)
    np.testing.assert_array_equal(c, (lo + hi) * np.float32(0.5))
    r = direct_stats(s, gates, causal, c)
    n = r["n"]
    np.testing.assert_array_equal(got["m"], r["m"])
    np.testing.assert_array_equal(got["n"], r["n"])
    np.testing.assert_array_equal(sigma, r["sigma"])
    _close("E", got["E"], r["E"], 2e-5)
    _close("P", got["P"], r["P"], 1e-6, np.cumsum(np.abs(s), -1) if causal else np.abs(s).sum(-1, keepdims=True))
    _close("alpha", got["alpha"], r["alpha"], 2e-5)
    _close("beta", got["beta"], r["beta"], 1e-5, 1 / n)
    _close("gamma", got["gamma"], r["gamma"], 1e-5, (1 + np.abs(r["beta"] * r["P"])) / n)
    _close("u", got["u"], r["u"], 2e-5, 1e-30)
    _close("gF", got["gF"], r["gF"], 1e-6, 1e-30)
    vtol, vfloor = (2e-5, 1e-30) if dtype == "float32" else (1e-3, 6e-5)     # float16: subnormals below 6e-5
    G, H = _gh_host(vals, Dv)
    _close("vF", _host(vals.F), r["u"][..., None] * v, vtol, vfloor)
    _close("vG", G, (s - c[:, None])[..., None] / sigma[:, None, None] * v, vtol, vfloor)
    np.testing.assert_array_equal(H, v)


@gpu
def test_forward_stats_nan():
    """A NaN in s: the statistics of earlier tokens are untouched; E, P (so alpha, gamma) are NaN from it
    on; the running max and sigma ignore it."""
    N, T, t0 = 2, 150, 70
    rng = np.random.default_rng(0)
    s, gates, v = rng.standard_normal((N, T)), rng.standard_normal((N, T, 2)), rng.standard_normal((N, T, 8))
    s[0, t0] = np.nan
    stats, _ = _run_stats(s, gates, v, True, "float32")
    got = dict(zip(STAT_ROWS, _host(stats.st)))
    clean = direct_stats(s[:, :t0], gates[:, :t0], True, _host(stats.head)[1])
    floors = dict(P=np.cumsum(np.abs(s[:, :t0]), -1), beta=1.0, gamma=10.0, u=1e-30, gF=1e-30)
    for name in STAT_ROWS:
        _close(name, got[name][:, :t0], clean[name], 2e-5, floors.get(name, 0.0))
    for name in ("E", "P", "alpha", "gamma"):
        assert np.isnan(got[name][0, t0:]).all() and np.isfinite(got[name][1]).all(), name
    assert np.isfinite(got["m"]).all() and np.isfinite(_host(stats.head)).all()


@gpu
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Dv", [24, 80])
@pytest.mark.parametrize("T,kind", [(1, "normal"), (65, "ties"), (130, "1e3"), (4097, "normal")])
def test_backward_rows(T, kind, Dv, causal):
    """zeros_combine, zeros_bchunk, zeros_bscan and zeros_bfinish against their formulas, on the GPU's own
    statistics and synthetic stream outputs and core gradients (G and H in one array or two)."""
    import cupy as cp
    from workbench.backends import poisoned
    N, Dk, one_call = 2, 40, Dv == 24
    rng = np.random.default_rng(T + Dv)
    f32 = lambda x: x.astype(np.float32).astype(np.float64)   # noqa: E731  (what the kernels see)
    s, gates = f32(logits(kind, N, T, T) + 7.25), f32(rng.standard_normal((N, T, 3)))   # an offset: c != 0
    v = f32(rng.standard_normal((N, T, Dv)))
    stats, _ = _run_stats(s, gates, v, causal, "float32", one_call)
    st = dict(zip(STAT_ROWS, _host(stats.st)))
    sg = _host(stats.head[0])[:, None]
    so = zeros.output_scale(T)
    r = direct_stats(s, gates, causal)
    st.update(n=r["n"], sig1=r["sig1"], sigh=r["sigh"], tz=r["tz"])
    oF, oG, oH, do = (f32(rng.standard_normal((N, T, Dv))) for _ in range(4))
    core = [f32(rng.standard_normal((N, T, d))) for d in (Dk,) * 6 + (Dv,) * 3]
    with poisoned():
        outs = _streams(cp, [_dev(x, "float32") for x in (oF, oG, oH)], one_call)
        o = zeros.combine("float32", stats, outs, 1 / so)
        douts = zeros._stream_arrays(cp, N, T, Dv, cp.float32, one_call)
        dgates, xy, yR, yQ = zeros.backward_scalars("float32", _dev(do, "float32"), outs, _dev(gates, "float32"),
                                                    stats, causal, 1 / so, douts)
        dqF, dkF, dqG, dkG, dqH, dkH, dvF, dvG, dvH = (_dev(x, "float32") for x in core)
        dvs = _streams(cp, [dvF, dvG, dvH], one_call)
        grads = zeros.CoreGrads(dqF, dkF, dqG, dkG, None if one_call else dqH, None if one_call else dkH, dvs)
        dq, dk, dv, ds = zeros.finish("float32", _dev(s, "float32"), _dev(v, "float32"), stats, xy, yR, yQ, grads,
                                      causal)
    al, be, ga = (st[x][..., None] for x in ("alpha", "beta", "gamma"))
    sg3, sc = sg[..., None], (s - _host(stats.head)[1][:, None])[..., None]         # sigma, s - c
    terms = [al * oF / so, be * sg3 * oG / so, ga * oH / so]
    _close("o", _host(o), sum(terms), 1e-5, sum(np.abs(t) for t in terms))
    G, H = _gh_host(douts, Dv)
    _close("dOF", _host(douts.F), al / so * do, 1e-6, 1e-30)
    _close("dOG", G, be / (4 * so) * do, 1e-6, 1e-30)
    _close("dOH", H, ga / (4 * sg3 * so) * do, 1e-6, 1e-30)
    a, V, Z = (do * oF).sum(-1) / so, (do * oG).sum(-1) * sg / so, (do * oH).sum(-1) / so
    fa, fv, fz = np.abs(do * oF).sum(-1) / so, np.abs(do * oG).sum(-1) * sg / so, np.abs(do * oH).sum(-1) / so
    x, y, _, dg = direct_backward(st, a, V, Z, causal)
    n, P, E = st["n"], np.abs(st["P"]), st["E"]
    _close("x", _host(xy[0]), x, 2e-5, st["alpha"] * fa / E)
    _close("y", _host(xy[1]), y, 2e-5, np.abs(st["beta"]) * fz / n)
    s1, sh = st["sig1"] * (1 - st["sig1"]), st["sigh"] * (1 - st["sigh"])
    dg_floor = np.stack([(fv / n + P * fz / n ** 2) * s1, (fa / E + fv / n + P * fz / n ** 2 + fz / n) * sh,
                         fz / n * (1 - st["tz"] ** 2)], -1)
    _close("dgates", _host(dgates), dg, 2e-5, dg_floor)
    xg, yg = _host(xy[0]), _host(xy[1])                   # the scan on the GPU's own x, y
    _, _, dsS, _ = direct_backward(st, xg * E / st["alpha"], 0 * Z, yg * n / st["beta"], causal)
    _, _, dsS_abs, _ = direct_backward(st, np.abs(xg) * E / st["alpha"], 0 * Z, np.abs(yg) * n / st["beta"], causal)
    g4, u = 4 * sg3, st["u"][..., None]
    dqF, dkF, dqG, dkG, dqH, dkH, dvF, dvG, dvH = core
    if one_call:
        dqH, dkH = 0 * dqG, 0 * dkG
    _close("dq", _host(dq), dqF + g4 * (dqG + dqH), 1e-6, np.abs(dqF) + g4 * (np.abs(dqG) + np.abs(dqH)))
    _close("dk", _host(dk), dkF + g4 * (dkG + dkH), 1e-6, np.abs(dkF) + g4 * (np.abs(dkG) + np.abs(dkH)))
    dv_terms = [u * dvF, 4 * sc * dvG, g4 * dvH]
    _close("dv", _host(dv), sum(dv_terms), 1e-6, sum(np.abs(t) for t in dv_terms))
    value_path = st["u"] * (v * dvF).sum(-1) + 4 * (v * dvG).sum(-1)
    value_abs = st["u"] * np.abs(v * dvF).sum(-1) + 4 * np.abs(v * dvG).sum(-1)
    _close("ds", _host(ds), dsS + value_path, 2e-5, -dsS_abs + value_abs)


# ----------------------------------------------------------------------------- GPU: the variant
def _inputs(lead, T, Dk, Dv, n_gates, seed, s_fn, prep=None):
    """float64 inputs (float16 values: exact in every dtype) and do; s_fn(s) replaces s, prep(q, k, v) the
    three (before the rounding)."""
    arrays = list(random_inputs("zeros", lead, T, Dk, Dv, "float64", seed, n_gates=n_gates))
    if prep is not None:
        arrays[:3] = prep(*arrays[:3])
    arrays = [a.astype(np.float16).astype(np.float64) for a in arrays]
    if s_fn is not None:
        arrays[3] = s_fn(arrays[3])
    do = np.random.default_rng(seed + 3).standard_normal((*lead, T, Dv)).astype(np.float16).astype(np.float64)
    return arrays, do


def _errors(arrays, do, causal, form, out, grads):
    """Relative errors of the output and every gradient against the float64 reference (explicit O(T^2), or
    the chunked linear-time form for long T); absolute where the reference is exactly 0 (T = 1)."""
    T, Dv = do.shape[-2:]
    flat = [a.reshape((-1,) + a.shape[do.ndim - 2:]) for a in arrays]
    fwd, bwd = getattr(ref_zeros, f"{form}_forward"), getattr(ref_zeros, f"{form}_backward")
    ro, ctx = fwd(*flat, causal=causal)
    rg = bwd(ctx, do.reshape((-1, T, Dv)))
    def rel(x, r):                                            # absolute where the reference is exactly 0 (T = 1)
        return rel_error(np.asarray(x, np.float64).reshape(r.shape), r)
    return dict(zip(("o", "dq", "dk", "dv", "ds", "dgates"), [rel(out, ro)] + [rel(g, r) for g, r in zip(grads, rg)]))


def _vjp_errors(impl, dtype, lead, T, Dk, Dv, causal, n_gates, seed=0, s_fn=None, form="explicit"):
    """The variant through the public API (wb.vjp) against the float64 reference."""
    arrays, do = _inputs(lead, T, Dk, Dv, n_gates, seed, s_fn)
    out, pull = wb.vjp(wb.zeros_attention, *[_cast(a, dtype) for a in arrays], causal=causal,
                       backend=f"cupy:{impl}")
    grads = pull(_cast(do, dtype))
    assert str(out.dtype) == dtype and out.shape == (*lead, T, Dv)
    return _errors(arrays, do, causal, form, out, grads)


def run_case(impl, dtype, N, T, Dk, Dv, causal, n_gates, seed=0, s_fn=None, prep=None, form="explicit", **kw):
    """The variant's own forward and backward (its registry entry, on (N, T, D) device arrays, poisoned
    outputs; kw goes to the forward, e.g. L) against the float64 reference: {name: relative error}.  Also what
    the CPU emulator (scripts/cuda_emulate.py) runs."""
    import cupy as cp
    from workbench.backends import poisoned
    arrays, do = _inputs((N,), T, Dk, Dv, n_gates, seed, s_fn, prep)
    var = registry.get("zeros", "cupy", impl)
    dev = [cp.ascontiguousarray(_dev(a, dtype)) for a in arrays + [do]]
    with poisoned():
        out, ctx = var.forward(*dev[:5], causal=causal, **kw)
        grads = var.backward(ctx, dev[5])
    assert str(out.dtype) == dtype and out.shape == (N, T, Dv)
    return _errors(arrays, do, causal, form, cp.asnumpy(out), [cp.asnumpy(g) for g in grads])


SHAPES = [((2, 3), 37, 5, 7), ((1,), 1, 64, 64), ((2,), 130, 64, 64), ((1,), 200, 80, 48), ((1,), 70, 128, 80),
          ((2,), 65, 32, 128), ((1,), 4097, 64, 64)]
CASES = [("chunked_mma", "float32", 1e-4), ("chunked_mma", "float16", 2e-2), ("chunked_mma", "bfloat16", 3e-2),
         ("chunked_mma_tf32", "float32", 5e-3), ("chunked_mma_fused", "float32", 1e-4),
         ("chunked_mma_fused", "float16", 2e-2), ("chunked_mma_fused", "bfloat16", 2e-2),
         ("chunked_mma_fused2", "float32", 1e-4), ("chunked_mma_fused2", "float16", 2e-2),
         ("chunked_mma_fused2", "bfloat16", 2e-2), ("chunked_mma_fused3", "float32", 1e-4),
         ("chunked_mma_fused3", "float16", 2e-2), ("chunked_mma_fused3", "bfloat16", 2e-2),
         ("chunked_mma_fused4", "float32", 1e-4), ("chunked_mma_fused4", "float16", 2e-2),
         ("chunked_mma_fused4", "bfloat16", 2e-2)]


@gpu
@pytest.mark.parametrize("impl,dtype,tol", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"-T{s[1]}-{s[2]}x{s[3]}")
def test_variant_matches_reference(impl, dtype, tol, shape):
    for causal in (True, False):
        for n_gates in (2, 3):
            errs = _vjp_errors(impl, dtype, *shape, causal, n_gates)
            bad = {k: e for k, e in errs.items() if not e < tol}
            assert not bad, (causal, n_gates, bad)


@gpu
@pytest.mark.parametrize("impl,dtype,tol", [c for c in CASES if c[0] in ("chunked_mma", "chunked_mma_fused3")])
@pytest.mark.parametrize("group", [0, 1 << 30], ids=["apart", "grouped"])
def test_variant_above_the_merge_bound(impl, dtype, tol, group):
    """Every pass as above backends.OUTPUTS_MERGE_MAX (bound 0), what calls of more than 4 MiB take: outputs in
    their own allocations unless the side ones are small (OutputLayout; group > 0: the outputs in one allocation
    apart from the scratch, as calls of 4-32 MiB take them), the core's segment sums a per-call temporary --
    results against the float64 reference as at any size.  (No monkeypatch fixture: the CUDA emulator calls this
    function as it is.)"""
    from workbench import backends
    with backends.merge_bound(0, group):
        errs = _vjp_errors(impl, dtype, (2,), 300, 64, 64, True, 3)
    bad = {k: e for k, e in errs.items() if not e < tol}
    assert not bad, bad


MMA_IMPLS = ("chunked_mma", "chunked_mma_fused", "chunked_mma_fused2", "chunked_mma_fused3", "chunked_mma_fused4")
FUSED_IMPLS = ("chunked_mma_fused", "chunked_mma_fused2", "chunked_mma_fused3", "chunked_mma_fused4")


@gpu
@pytest.mark.parametrize("impl", MMA_IMPLS)
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 2e-2), ("bfloat16", 3e-2)])
@pytest.mark.parametrize("T", [150, 1000])
def test_variant_extreme_logits(impl, dtype, tol, T):
    """s of +-1e3 with tied maxima (e^s overflows without the running max; sigma = 1024)."""
    def s_fn(s):
        return np.where(np.arange(T) % 3 == 0, 1e3, -1e3) * np.sign(s)
    for causal in (True, False):
        errs = _vjp_errors(impl, dtype, (2,), T, 16, 16, causal, 3, seed=4, s_fn=s_fn)
        assert all(e < tol for e in errs.values()), (causal, errs)


@gpu
@pytest.mark.parametrize("impl", MMA_IMPLS)
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 2e-2)])
@pytest.mark.parametrize("max_chunks", [0, 2])
def test_scans_in_block_or_apart(impl, dtype, tol, max_chunks):
    """Both ways of running the scans over chunks (zeros.IN_BLOCK_SCAN_MAX_CHUNKS: inside the per-chunk blocks
    up to that many chunks, else separate launches) against the reference, at T = 1 (one chunk) and T = 150
    (three); max_chunks 0: always separate, 2: T = 150 separate."""
    saved = zeros.IN_BLOCK_SCAN_MAX_CHUNKS
    zeros.IN_BLOCK_SCAN_MAX_CHUNKS = max_chunks
    try:
        for T, causal in ((1, True), (150, True), (150, False)):
            errs = _vjp_errors(impl, dtype, (2,), T, 24, 40, causal, 3, seed=T)
            assert all(e < tol for e in errs.values()), (T, causal, errs)
    finally:
        zeros.IN_BLOCK_SCAN_MAX_CHUNKS = saved


@gpu
@pytest.mark.parametrize("impl", MMA_IMPLS)
def test_variant_long_sequence_float16(impl):
    """T = 16k in float16: sums over up to T tokens stay in range (the composition's stream outputs through
    s_o; the one-pass kernel's fp16 state operands through their power-of-two scales)."""
    errs = _vjp_errors(impl, "float16", (1,), 16384, 64, 64, True, 2, seed=5, form="chunked")
    assert all(e < 2e-2 for e in errs.values()), errs


@gpu
@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 2e-2)])
@pytest.mark.parametrize("L", [0, 1, 3, None])
@pytest.mark.parametrize("causal", [True, False])
def test_fused_segment_lengths(impl, dtype, tol, L, causal):
    """cupy:chunked_mma_fused(2) with every kind of segmentation (one segment per head, one chunk per segment,
    3 chunks, the automatic choice): the segment passes and scans (forwards and in reverse) against the
    chunked float64 reference at T = 1000, Dk != Dv, 3 heads."""
    errs = run_case(impl, dtype, 3, 1000, 48, 40, causal, 3, seed=7, form="chunked", L=L)
    assert all(e < tol for e in errs.values()), errs


@gpu
@pytest.mark.parametrize("impl", ["chunked_mma_fused2", "chunked_mma_fused3", "chunked_mma_fused4"])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 2e-2)])
def test_fused2_wide_walks(impl, dtype, tol):
    """cupy:chunked_mma_fused2 (and fused3) at head dims 128 x 80 (its dv walker folds through weighted copies of dO
    there, not the fragment weights of head dim 64; dk from 3 dv tiles' parts) with walks of 2 chunks (L = 2)."""
    errs = run_case(impl, dtype, 1, 300, 128, 80, True, 3, seed=3, form="chunked", L=2)
    assert all(e < tol for e in errs.values()), errs


@gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 2e-2)])
@pytest.mark.parametrize("impl", ["chunked_mma_fused3", "chunked_mma_fused4"])
def test_fused3_wave_segments(dtype, tol, impl):
    """cupy:chunked_mma_fused3 (and fused4) with its own segment length (zeros.wave_segments, no L given) where that
    makes walks of several chunks: as if the GPU had 8 SMs, T = 1000 (16 chunks), 3 heads, 48 x 40 take 2 segments of
    8 chunks (float32, 16 slots) or 4 of 4 (16-bit, 24 slots)."""
    saved, plans = zeros.mma._sm_count, dict(zeros._FUSED_PLANS)
    zeros.mma._sm_count = lambda: 8
    zeros._FUSED_PLANS.clear()                        # (a plan of the same key made with the real SM count)
    try:
        L = zeros.wave_segments(3, 1000, 2, 8 * zeros.fused_blocks_per_sm(dtype, 48, 40))
        assert L == (8 if dtype == "float32" else 4)
        errs = run_case(impl, dtype, 3, 1000, 48, 40, True, 3, seed=7, form="chunked")
        assert all(e < tol for e in errs.values()), errs
        assert [P.table.L for P in zeros._FUSED_PLANS.values()] == [L]
    finally:
        zeros.mma._sm_count = saved
        zeros._FUSED_PLANS.clear()
        zeros._FUSED_PLANS.update(plans)


def large_states(q, k, v):
    """Positive q, k and v of about 2000: the states F, G, H grow like T |k| |v| and pass the float16 range
    (65504) within a few hundred tokens, so the fp16 state operands must be scaled (tz::states_to_smem)."""
    return np.abs(q), np.abs(k), 2000 * np.abs(v)


@gpu
@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("causal", [True, False])
def test_fused_float16_large_states(impl, causal):
    errs = run_case(impl, "float16", 2, 1000, 32, 32, causal, 3, seed=9, prep=large_states, form="chunked")
    assert all(e < 2e-2 for e in errs.values()), errs


@gpu
def test_variant_nan_in_s_reaches_later_rows_only():
    """A NaN in s at t = 80 (a multiple of 16: the core's tensor-core products mix NaN across the 16-row
    band of a warp, see docs/kernels/zeros.md) makes every output row from 80 on NaN and no earlier one."""
    q, k, v, s, gates = random_inputs("zeros", (2,), 200, 32, 32, "float32", seed=2)
    s[0, 80] = np.nan
    out = wb.zeros_attention(q, k, v, s, gates, backend="cupy:chunked_mma")
    assert np.isfinite(out[0, :80]).all() and np.isnan(out[0, 80:]).any(-1).all() and np.isfinite(out[1]).all()


@gpu
@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_fused_nan_in_s_reaches_later_rows_only(impl):
    """The same for cupy:chunked_mma_fused(2) at t = 77, off the 16-row bands: it keeps v as it is (the NaN is only
    in the weights, which are selected to zero where masked), so exactly the rows from 77 on are NaN."""
    q, k, v, s, gates = random_inputs("zeros", (2,), 200, 32, 32, "float32", seed=2)
    s[0, 77] = np.nan
    out = wb.zeros_attention(q, k, v, s, gates, backend=f"cupy:{impl}")
    assert np.isfinite(out[0, :77]).all() and np.isnan(out[0, 77:]).any(-1).all() and np.isfinite(out[1]).all()


# ----------------------------------------------------------------------------- GPU: states and packed sequences
STATE_IMPLS = [("chunked_mma", "float32"), ("chunked_mma", "float16"), ("chunked_mma", "bfloat16"),
               ("chunked_mma_tf32", "float32")]
# T = 130 packs lengths 1, 63, 64, 2 (inputs.packed_lengths), T = 200 adds 65 and Dv = 80 runs G and H apart
STATE_SHAPES = [(1, 64, 64), (130, 64, 64), (200, 32, 80), (67, 5, 7)]
STATE_FLAGS = [(True, True, False), (True, False, True), (True, True, True), (False, False, True)]


@gpu
@pytest.mark.parametrize("impl,dtype", STATE_IMPLS)
@pytest.mark.parametrize("T,Dk,Dv", STATE_SHAPES)
@pytest.mark.parametrize("causal,state,packed", STATE_FLAGS)
def test_state_and_packed_match_the_reference(impl, dtype, T, Dk, Dv, causal, state, packed):
    """A check cell (the float64 explicit reference, the variant's tolerance): output, final state, every
    gradient and the initial state's gradient; packed sequences causal and not."""
    r = check.compare("zeros", f"cupy:{impl}", (2,), T, Dk, Dv, dtype, causal=causal, state=state, packed=packed)
    assert r["ok"], {k: e for k, e in r.items() if isinstance(e, float) and e > r["tol"]}


def _stateful_run(cp, impl, arrays, init, dout, dfin, cu=None):
    """(out, final state, gradients incl. the initial state's) of one call through wb.vjp, as float64 NumPy."""
    (o, fin), pull = wb.vjp(wb.zeros_attention, *arrays, initial_state=init, return_state=True, cu_seqlens=cu,
                            backend=f"cupy:{impl}")
    grads = pull(dout, dfin)
    host = lambda x: cp.asnumpy(x).astype(np.float64)    # noqa: E731
    return host(o), wst.map_state(host, fin), [host(g) for g in grads[:-1]], wst.map_state(host, grads[-1])


def _state_inputs(cp, dtype, T, slead, seed):
    arrays = [cp.asarray(_cast(a, dtype)) for a in random_inputs("zeros", (2,), T, 32, 40, "float64", seed)]
    init = random_state("zeros", slead, 32, 40, "float32", seed=seed)
    rng = np.random.default_rng(seed)
    dout = cp.asarray(_cast(rng.standard_normal((2, T, 40)), dtype))
    dfin = wst.map_state(lambda a: rng.standard_normal(a.shape).astype(np.float32), init)
    return arrays, wst.map_state(cp.asarray, init), dout, wst.map_state(cp.asarray, dfin)


def _assert_close(pairs, tol):
    bad = {name: rel_error(a, b) for name, a, b in pairs if not rel_error(a, b) < tol}
    assert not bad, bad


def _pairs(a, b):
    """(name, x, y) over out, final state, gradients and the initial state's gradient of two runs."""
    out = [("out", a[0], b[0])] + [(f"final.{n}", x, getattr(b[1], n)) for n, x in wst.fields(a[1]).items()]
    out += [(f"d{i}", x, y) for i, (x, y) in enumerate(zip(a[2], b[2]))]
    return out + [(f"dinit.{n}", x, getattr(b[3], n)) for n, x in wst.fields(a[3]).items()]


@gpu
@pytest.mark.parametrize("impl,dtype", STATE_IMPLS)
@pytest.mark.parametrize("split", [1, 63, 64, 65])
def test_two_calls_equal_one_call(impl, dtype, split):
    """T = 130 run as [0, split) and [split, 130) with the state handed over (and the final state's gradient
    handed back) equals one call: output, final state, every gradient, the initial state's gradient."""
    import cupy as cp
    T = 130
    arrays, init, dout, dfin = _state_inputs(cp, dtype, T, (2,), split)
    one = _stateful_run(cp, impl, arrays, init, dout, dfin)
    (o1, fin1), pb1 = wb.vjp(wb.zeros_attention, *[x[:, :split] for x in arrays], initial_state=init,
                             return_state=True, backend=f"cupy:{impl}")
    (o2, fin2), pb2 = wb.vjp(wb.zeros_attention, *[x[:, split:] for x in arrays], initial_state=fin1,
                             return_state=True, backend=f"cupy:{impl}")
    g2 = pb2(dout[:, split:], dfin)
    g1 = pb1(dout[:, :split], g2[-1])
    host = lambda x: cp.asnumpy(x).astype(np.float64)    # noqa: E731
    two = (np.concatenate([host(o1), host(o2)], 1), wst.map_state(host, fin2),
           [np.concatenate([host(a), host(b)], 1) for a, b in zip(g1[:-1], g2[:-1])], wst.map_state(host, g1[-1]))
    _assert_close(_pairs(two, one), registry.get("zeros", "cupy", impl).tolerance(dtype))


@gpu
@pytest.mark.parametrize("impl,dtype", STATE_IMPLS)
def test_packed_equals_one_call_per_sequence(impl, dtype):
    """Sequences of 1, 63, 64 and 65 tokens packed into one call, each from its own initial state, equal four
    calls: output, final states, every gradient, the initial states' gradients."""
    import cupy as cp
    cu = (0, 1, 64, 128, 193)
    arrays, init, dout, dfin = _state_inputs(cp, dtype, cu[-1], (2, len(cu) - 1), 11)
    packed = _stateful_run(cp, impl, arrays, init, dout, dfin, cu)
    runs = [_stateful_run(cp, impl, [x[:, a:b] for x in arrays], wst.select(init, j), dout[:, a:b],
                          wst.select(dfin, j)) for j, (a, b) in enumerate(zip(cu[:-1], cu[1:]))]
    apart = (np.concatenate([r[0] for r in runs], 1), wst.stack([r[1] for r in runs]),
             [np.concatenate(g, 1) for g in zip(*(r[2] for r in runs))], wst.stack([r[3] for r in runs]))
    _assert_close(_pairs(packed, apart), registry.get("zeros", "cupy", impl).tolerance(dtype))


@gpu
def test_zero_length_sequence_is_refused():
    import cupy as cp
    arrays = [cp.asarray(a) for a in random_inputs("zeros", (2,), 10, 16, 16, "float32", 0)]
    with pytest.raises(ValueError, match="zero-length sequence"):
        wb.zeros_attention(*arrays, cu_seqlens=(0, 4, 4, 10), backend="cupy:chunked_mma")


def test_math_helpers():
    assert list(pow2_at_least([0.3, 1.0, 1.5, 2.0, 1000.0])) == [1, 1, 2, 2, 1024]
    assert math.isclose(_sigmoid(0.0), 0.5)
