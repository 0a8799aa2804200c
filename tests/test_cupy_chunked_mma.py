"""The tensor-core chunk core (kernels/cupy/_chunked_mma.py) against a plain float64 recurrence.

Written independently of workbench/reference: the recurrence S_t = e^{g_t} S_{t-1} + k_t v_t^T,
o_t = scale q_t^T S_t and its adjoint, token by token, with an initial state, a final-state gradient and
packed sequences.  Every case runs every segment length the core can pick (whole sequences, 1 and 2
chunks per segment), so the segment-state and scan kernels are checked too, and both load pipelines of the
chunk walk (stages 1: cupy:chunked_mma, 2: cupy:chunked_mma_db).  GPU only.
"""
import itertools

import numpy as np
import pytest

from workbench.check import rel_error

pytestmark = pytest.mark.gpu

# The core alone, on its own (larger, unrounded) inputs: tolerances of its own, per storage dtype and TF32 split.
TOL = {("float32", 3): 2e-5, ("float32", 1): 1e-2, ("float16", 1): 5e-3, ("bfloat16", 1): 3e-2}
# d log_decay = reverse cumsum of q.dq - k.dk: two terms of like size cancel, so on plain TF32 its error relative to
# its own largest value runs 10-25x the other gradients': 2.2e-3 .. 1.01e-2 at T = 300 over seeds 0-3 (H200, callY,
# the default fused walker and the dq fold alike, 3xTF32 2e-6); the bound keeps 3x over the worst seen.
TOL_DG = {("float32", 1): 3e-2}


def recurrence(q, k, v, g, scale, causal, S0=None, dST=None, do=None):
    """float64 forward (o, final) and, with do, backward (dq, dk, dv, dg, dS0) of one sequence."""
    T, dk = q.shape
    dv = v.shape[-1]
    a = np.exp(np.maximum(g, -1e4)) if g is not None else np.ones(T)
    S = np.zeros((dk, dv)) if S0 is None else S0.copy()
    if not causal:
        S = S + k.T @ v
        o = scale * q @ S
        if do is None:
            return o, S
        dS = scale * q.T @ do
        return o, S, (scale * do @ S.T, v @ dS.T, k @ dS, None, None)
    states = [S]
    o = np.empty((T, dv))
    for t in range(T):
        S = a[t] * S + np.outer(k[t], v[t])
        states.append(S)
        o[t] = scale * q[t] @ S
    if do is None:
        return o, S
    dS = np.zeros((dk, dv)) if dST is None else dST.copy()
    dq, dkk, dvv, dg = np.empty_like(q), np.empty_like(k), np.empty_like(v), np.empty(T)
    for t in range(T - 1, -1, -1):
        dS = dS + scale * np.outer(q[t], do[t])
        dq[t] = scale * states[t + 1] @ do[t]
        dkk[t] = dS @ v[t]
        dvv[t] = dS.T @ k[t]
        dg[t] = a[t] * np.sum(dS * states[t])
        dS = a[t] * dS
    return o, S, (dq, dkk, dvv, dg, dS)


def _where(x, ref):
    err = np.abs(np.asarray(x, np.float64) - ref)
    i = np.unravel_index(np.nanargmax(np.where(np.isnan(err), np.inf, err)), err.shape)
    return f"worst at {tuple(int(j) for j in i)}: {np.asarray(x).flat[np.ravel_multi_index(i, err.shape)]} vs {ref[i]}"


def run_case(dtype, split, N, cu, dk, dv, decay, causal, L, with_state, seed=0, stages=1, dkdv="fused",
             mags=(0.5, 0.5, 0.5, 0.5), scale=0.7, g_lo=-1.0, resets=True, xscale=False, slices=None, reset_at=()):
    """The core against the recurrence on random inputs: q, k, v, do standard normal times mags (a negative
    magnitude: |x| times -m, all positive), log decays uniform in [g_lo, 0) (resets: with resets and drops every
    17 and 23 tokens; reset_at: exact resets at these tokens).
    xscale: float32 inputs through ``forward(..., xscale=True)``; slices: per operand (q, k, v, do) a factor per
    leading index, and each result's error is the largest of its slices' (each against its own scale)."""
    import cupy as cp
    from kernels.cupy import _chunked_mma as mma
    from workbench.backends import poisoned
    rng = np.random.default_rng(seed)
    T = cu[-1]
    nseq = len(cu) - 1
    q, k, v, do = (rng.standard_normal((N, T, d)) * m if m > 0 else np.abs(rng.standard_normal((N, T, d))) * -m
                   for d, m in zip((dk, dk, dv, dv), mags))
    g = None
    if decay:
        g = rng.uniform(g_lo, 0.0, (N, T))
        if resets:
            g[:, 3::17] = -np.inf                 # exact resets
            g[:, 5::23] = -50.0
        g[:, list(reset_at)] = -np.inf
    S0 = rng.standard_normal((N, nseq, dk, dv)) * 0.3 if with_state else None
    dST = rng.standard_normal((N, nseq, dk, dv)) * 0.3 if with_state else None
    if slices is not None:
        f = [np.asarray(x, np.float64).reshape(N, 1, 1) for x in slices]
        q, k, v, do = q * f[0], k * f[1], v * f[2], do * f[3]
        S0 = None if S0 is None else S0 * (f[1] * f[2])[:, None]          # states in proportion
        dST = None if dST is None else dST * (f[0] * f[3])[:, None]
    cast = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}[dtype]
    if dtype == "bfloat16":
        import ml_dtypes  # noqa: F401
    # the kernels see rounded inputs: the reference gets the same rounded values
    q, k, v, do = (x.astype(cast).astype(np.float64) for x in (q, k, v, do))
    dev = lambda x: cp.asarray(x.astype(cast))                        # noqa: E731
    with poisoned():
        o, ctx = mma.forward(dev(q), dev(k), dev(v), None if g is None else cp.asarray(g, cp.float32),
                             scale=scale, causal=causal, split=split,
                             S0=None if S0 is None else cp.asarray(S0, cp.float32), want_final=with_state,
                             cu=tuple(cu) if nseq > 1 else None, L=L, stages=stages, dkdv=dkdv, xscale=xscale)
        dq, dkk, dvv, dg, dS0 = mma.backward(ctx, dev(do), None if dST is None else cp.asarray(dST, cp.float32))
    got = dict(o=o, dq=dq, dk=dkk, dv=dvv)
    if decay:
        got["dg"] = dg
    if with_state:
        got["final"], got["dS0"] = mma.final_state(ctx), dS0
    got = {n: cp.asnumpy(x).astype(np.float64) for n, x in got.items()}
    ref = {n: np.empty_like(x) for n, x in got.items()}
    for n_, (a, b) in itertools.product(range(N), zip(cu[:-1], cu[1:])):
        s = cu.index(a)
        out = recurrence(q[n_, a:b], k[n_, a:b], v[n_, a:b], None if g is None else g[n_, a:b], scale, causal,
                         None if S0 is None else S0[n_, s], None if dST is None else dST[n_, s], do[n_, a:b])
        o_r, fin, (dq_r, dk_r, dv_r, dg_r, dS0_r) = out
        ref["o"][n_, a:b], ref["dq"][n_, a:b], ref["dk"][n_, a:b], ref["dv"][n_, a:b] = o_r, dq_r, dk_r, dv_r
        if decay:
            ref["dg"][n_, a:b] = dg_r
        if with_state:
            ref["final"][n_, s], ref["dS0"][n_, s] = fin, dS0_r
    if slices is not None:
        worst = lambda r: np.inf if np.isnan(r[0]) else r[0]              # noqa: E731 (NaN: a failure)
        return {n: max(((rel_error(got[n][i], ref[n][i]), f"slice {i}: {_where(got[n][i], ref[n][i])}")
                        for i in range(N)), key=worst) for n in got}
    return {n: (rel_error(got[n], ref[n]), _where(got[n], ref[n])) for n in got}


CASES = [  # (dtype, split)
    ("float16", 1), ("bfloat16", 1), ("float32", 3), ("float32", 1)]
SHAPES = [  # (N, cu, dk, dv)
    (2, (0, 1), 64, 64), (2, (0, 200), 64, 64), (1, (0, 130), 32, 48), (2, (0, 129), 128, 128),
    (1, (0, 97), 80, 72), (2, (0, 1, 64, 65, 130, 200), 64, 64), (1, (0, 63, 191), 96, 40)]


@pytest.mark.parametrize("dtype,split", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}-cu{'_'.join(map(str, s[1]))}-{s[2]}x{s[3]}")
@pytest.mark.parametrize("mode", ["linear", "decayed", "noncausal"])
@pytest.mark.parametrize("L", [0, 1, 2])
@pytest.mark.parametrize("stages", [1, 2], ids=["mma", "mma_db"])
def test_core_matches_recurrence(dtype, split, shape, mode, L, stages):
    _check_case(dtype, split, shape, mode, L, stages=stages)


@pytest.mark.parametrize("dtype,split", [("float16", 1), ("bfloat16", 1), ("float32", 3)])
@pytest.mark.parametrize("mode", ["linear", "decayed"])
@pytest.mark.parametrize("dkdv", ["fused", "dqrev", "dqfold"])
@pytest.mark.parametrize("group", [0, 1 << 30], ids=["apart", "grouped"])
def test_core_above_the_merge_bound_matches_recurrence(dtype, split, mode, dkdv, group):
    """Every pass as above backends.OUTPUTS_MERGE_MAX (bound 0): each output its own allocation (group 0; the
    gradients in one of their own with group > 0, as calls of 4-32 MiB take them), the forward's
    segment sums a per-call temporary outside its saved block (what calls of more than 4 MiB take, 64k benches
    among them) -- results against the float64 recurrence as at any size (packed sequences, one of several
    segments: their scan reads the temporary; states).
    (No monkeypatch fixture: the CUDA emulator calls this function as it is.)"""
    from workbench import backends
    with backends.merge_bound(0, group):
        _check_case(dtype, split, (2, (0, 1, 64, 65, 300), 64, 64), mode, 1, dkdv=dkdv)     # 4 segments in one


def _check_case(dtype, split, shape, mode, L, **kw):
    """run_case on one (N, cu, dk, dv) shape and mode, every result within TOL (kw: stages, dkdv)."""
    N, cu, dk, dv = shape
    decay, causal = mode == "decayed", mode != "noncausal"
    res = run_case(dtype, split, N, list(cu), dk, dv, decay, causal, L, with_state=causal, seed=L, **kw)
    tol = TOL[(dtype, split)]
    bad = {n: r for n, r in res.items() if not r[0] <= (TOL_DG.get((dtype, split), tol) if n == "dg" else tol)}
    assert not bad, f"{dtype}/{split} {kw} {shape} {mode} L={L}: " + "; ".join(f"{n} {e:.2e} ({w})" for n, (e, w) in bad.items())


# The 16-bit walkers' decay of a chunk whose log decays span at most 64 (tc::FAST_MIN = e^-64) is factored into a
# row and a column value (tc::intra_frags FAST, no exp per element); a chunk of wider span takes the exps.
# run_case's default resets (every 17 tokens) put every chunk on the exps, so here: mild decays and no resets (every
# chunk factored) and one exact reset at token 130 (chunk 2 takes the exps, the rest are factored), in every walker
# that forms the intra-chunk tile: mma.sync (fused, dqrev, dqfold, anchor) and wgmma (dqrev_wgb, dqrev_wgk).
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("dkdv", ["fused", "dqrev", "dqfold", "anchor", "dqrev_wgb", "dqrev_wgk"])
@pytest.mark.parametrize("reset_at", [(), (130,)], ids=["factored", "one-reset"])
def test_decays_of_small_span_match_recurrence(dtype, dkdv, reset_at):
    res = run_case(dtype, 1, 2, [0, 300], 64, 64, True, True, 2, with_state=True, seed=5, dkdv=dkdv, resets=False,
                   reset_at=reset_at)
    bad = {n: r for n, r in res.items() if not r[0] <= TOL[(dtype, 1)]}
    assert not bad, f"{dtype} {dkdv} {reset_at}: " + "; ".join(f"{n} {e:.2e} ({w})" for n, (e, w) in bad.items())


# States beyond float16's range: the walkers hand their float32 state to the products as float16 divided by a power of
# two sigma (tc::state_to_smem, from the block's max |H| each chunk), which no other test reaches (|H| <= 2^14 keeps
# sigma 1).  "state": positive k, v of size ~30 (the forward's and dq's H pass 2^14 within a chunk and float16's 65504
# within two; a small scale keeps o and dq in range); "dstate": positive q, dO (dk/dv's dS likewise), small k, v.
# Slow decays without resets (the sums grow as without decay) or none; walks of 5 chunks in one segment, in segments
# of 1 chunk (each starts from a scanned state) and of 3 (dqrev: the dq walker with ESUM), the dq-folded walkers, the
# walkers on warpgroup MMA (dqrev_wg: tg_fwd's own sigma; dqrev_wgb: every walker's; dqrev_wgk: tg_bwd_dkdv's).
BIG = {"state": dict(mags=(0.5, -30.0, -30.0, 0.5), scale=1e-3),
       "dstate": dict(mags=(-30.0, 0.005, 0.005, -30.0), scale=1.0)}


@pytest.mark.parametrize("big", sorted(BIG))
@pytest.mark.parametrize("mode", ["linear", "decayed"])
@pytest.mark.parametrize("L, dkdv", [(0, "fused"), (1, "fused"), (3, "dqrev"), (0, "dqfold"), (0, "dqrev_wg"),
                                     (3, "dqrev_wg"), (0, "dqrev_wgb"), (3, "dqrev_wgb"),
                                     (3, "dqrev_wgk")])
def test_float16_states_beyond_the_16bit_range(big, mode, L, dkdv):
    res = run_case("float16", 1, 1, [0, 300], 64, 64, mode == "decayed", True, L, with_state=False, seed=3, dkdv=dkdv,
                   g_lo=-0.002, resets=False, **BIG[big])
    bad = {n: r for n, r in res.items() if not r[0] <= TOL[("float16", 1)]}
    assert not bad, f"{big} {mode} L={L} {dkdv}: " + "; ".join(f"{n} {e:.2e} ({w})" for n, (e, w) in bad.items())


@pytest.mark.parametrize("dtype,split", CASES)
@pytest.mark.parametrize("shape", [s for s in SHAPES if max(s[2], s[3]) <= 64],
                         ids=lambda s: f"N{s[0]}-cu{'_'.join(map(str, s[1]))}-{s[2]}x{s[3]}")
@pytest.mark.parametrize("mode", ["linear", "decayed", "noncausal"])
@pytest.mark.parametrize("L", [0, 2])
@pytest.mark.parametrize("dkdv", ["split", "wide", "roles", "dqfold", "dqrev", "dqrev_roles"])
def test_dkdv_modes_match_recurrence(dtype, split, shape, mode, L, dkdv):
    """The dk/dv walkers of the other modes at head dims (64, 64) (_chunked_mma.DKDV_MODES: the dk and dv
    kernels apart, the two 8-warp fused kernels, dq folded into the fused walk, the REV sums in the dq walker),
    one load stage."""
    _check_case(dtype, split, shape, mode, L, dkdv=dkdv)


@pytest.mark.parametrize("dtype,split", CASES)
@pytest.mark.parametrize("shape", [(2, (0, 1), 64, 64), (1, (0, 300), 64, 64), (1, (0, 150), 48, 24),
                                   (2, (0, 1, 64, 65, 130, 200), 64, 64), (1, (0, 63, 191), 64, 40),
                                   (1, (0, 70), 5, 7), (1, (0, 97), 80, 72), (1, (0, 200), 64, 128)],
                         ids=lambda s: f"N{s[0]}-cu{'_'.join(map(str, s[1]))}-{s[2]}x{s[3]}")
@pytest.mark.parametrize("mode", ["linear", "decayed", "noncausal"])
@pytest.mark.parametrize("L", [0, 1, 2, 4])
@pytest.mark.parametrize("dkdv", ["dqrev_wgs", "dqrev_wg", "dqrev_wgb", "dqrev_wgk"])
def test_wg_matches_recurrence(dtype, split, shape, mode, L, dkdv):
    """The kernels on warpgroup MMA (chunked_wgmma.cu, where a call qualifies): the forward's segment sums
    (dkdv="dqrev_wgs", cupy:chunked_mma_wgs; tg_seg_state), the causal forward walker (dkdv="dqrev_wg",
    cupy:chunked_mma_wg; tg_fwd), with it the backward's walkers (dkdv="dqrev_wgb", cupy:chunked_mma_wgb; tg_bwd_dq
    with and without the REV sums, tg_bwd_dkdv), and the dk/dv walker alone (dkdv="dqrev_wgk", cupy:chunked_mma_wgk):
    walks of 1 to 5 chunks per segment with a partial last chunk (whole sequences at L = 0), one token, packed
    chunk-edge lengths, Dk != Dv and odd dims inside the 64-wide tiles (element-wise loads at 5 x 7), two dv tiles
    (64 x 128), initial and final states, with log decays (the walkers' DECAY instantiations; the segment sums run
    tc_seg_state) and without; float32, not causal and 80 x 72 run the mma.sync kernels (the modes' fallback)."""
    _check_case(dtype, split, shape, mode, L, dkdv=dkdv)


# xscale (kernels/cupy/_xscale.py): float32 inputs rounded to float16 under a power-of-two scale per leading index, on
# the "dqrev_wgb" walkers with float32 results (parts 1: cupy:chunked_mma_wgx; parts 2, linear: each operand a float16
# hi + lo pair, three products each: cupy:chunked_mma_wgp from two float16 planes, parts 3 cupy:chunked_mma_wgpw split
# from float32 as the walkers' tiles land, parts 4 cupy:chunked_mma_wgpa staged by cp.async and split in place, parts 5
# cupy:chunked_mma_wgpt as 4 under each chunk tile's own power of two).  Slices: "unit" inputs (every slice keeps exponent 0),
# "scaled" (slice 1 of q x 1e3, of k x 1e-3, of v x 2e-5 -- float16 subnormals unless rescaled -- of do x 7e4 --
# beyond float16 -- each slice against its own scale): tolerance the tf32 tag's (workbench.registry), d log_decay
# TF32's (TOL_DG: the cancelling sum); pairs 3xTF32's, d log_decay included (emulator: 0.9e-6 - 4.2e-6).
XS_TOL = {1: 5e-3, **{p: TOL[("float32", 3)] for p in (2, 3, 4, 5)}}
XS_TOL_DG = {1: TOL_DG[("float32", 1)], **{p: TOL[("float32", 3)] for p in (2, 3, 4, 5)}}
XS_SLICES = {"unit": None, "scaled": ((1.0, 1e3), (1.0, 1e-3), (1.0, 2e-5), (1.0, 7e4))}


@pytest.mark.parametrize("shape", [(2, (0, 1), 64, 64), (2, (0, 300), 64, 64), (2, (0, 150), 48, 24),
                                   (2, (0, 1, 64, 65, 130, 200), 64, 64), (2, (0, 70), 5, 7)],
                         ids=lambda s: f"N{s[0]}-cu{'_'.join(map(str, s[1]))}-{s[2]}x{s[3]}")
@pytest.mark.parametrize("mode, parts", [("linear", 1), ("decayed", 1), ("linear", 2), ("decayed", 2), ("linear", 3),
                                         ("linear", 4), ("decayed", 4), ("linear", 5), ("decayed", 5)])
@pytest.mark.parametrize("L", [0, 2])
@pytest.mark.parametrize("slices", sorted(XS_SLICES))
def test_xscale_matches_recurrence(shape, mode, parts, L, slices):
    from kernels.cupy import _chunked_mma as mma
    N, cu, dk, dv = shape
    res = run_case("float32", 1, N, list(cu), dk, dv, mode == "decayed", True, L, with_state=True, seed=L,
                   dkdv=mma.XS_MODE, xscale=parts, slices=XS_SLICES[slices])
    bad = {n: r for n, r in res.items() if not r[0] <= (XS_TOL_DG if n == "dg" else XS_TOL)[parts]}
    assert not bad, f"{shape} {mode} parts={parts} L={L} {slices}: " + "; ".join(
        f"{n} {e:.2e} ({w})" for n, (e, w) in bad.items())


def test_xscale_refuses_what_its_walkers_do_not_take():
    """xscale calls need every walker on warpgroup MMA: causal, head dims <= 64, float32 operands; xscale 3 takes no log
    decays."""
    import cupy as cp
    from kernels.cupy import _chunked_mma as mma
    x = cp.zeros((1, 70, 64), cp.float32)
    with pytest.raises(ValueError, match="causal"):
        mma.forward(x, x, x, causal=False, dkdv=mma.XS_MODE, xscale=True)
    w = cp.zeros((1, 70, 80), cp.float32)
    with pytest.raises(ValueError, match="head dims up to 64"):
        mma.forward(w, w, w, dkdv=mma.XS_MODE, xscale=True)
    with pytest.raises(ValueError, match="float32"):
        mma.forward(x.astype(cp.float16), x.astype(cp.float16), x.astype(cp.float16), dkdv=mma.XS_MODE, xscale=True)
    with pytest.raises(ValueError, match="log decays"):              # (the split by plain loads: linear only)
        mma.forward(x, x, x, cp.zeros((1, 70), cp.float32), dkdv=mma.XS_MODE, xscale=3)


def test_xscale_pair_choices_change_the_schedule_not_the_results():
    """scripts/tune_xscale.py over every XS_PAIR choice at a small T, linear and decayed, for the planes (xscale 2) and
    the pairs staged by cp.async (xscale 4): every configuration's results equal the first's (the choices are load
    stages and waits; the two storages split the same float32 products the same way), and XS_PAIR is put back.  (No
    tmp_path fixture: the CUDA emulator calls this function as it is.)"""
    import itertools
    import json
    import pathlib
    import tempfile
    from kernels.cupy import _chunked_mma as mma
    from script_modules import load_script
    tune = load_script("tune_xscale")
    before = dict(mma.XS_PAIR)
    with tempfile.TemporaryDirectory() as tmp:
        for decay in (False, True):
            out = pathlib.Path(tmp) / f"t{decay}.json"
            assert tune.main(["--T", "700", "--N", "2", "--rounds", "1", "--xscale", "2", "--xscale", "4", "--json",
                              str(out)] + ["--decay"] * decay) == 0
            rows = json.loads(out.read_text())
            assert len(rows) == 2 * len(list(itertools.product(*mma.XS_PAIR_CHOICES.values())))
            assert {r["xscale"] for r in rows} == {2, 4}
            assert all(r["max_rel_diff"] == 0.0 for r in rows), [(r["config"], r["max_rel_diff"]) for r in rows]
    assert mma.XS_PAIR == before


def test_wg_launches():
    """Which kernels a call launches: tg_seg_state for 16-bit linear calls of several segments at Dk <= 64 in the
    "dqrev_wgs" mode; tg_fwd for 16-bit causal calls at Dk <= 64 in the "dqrev_wg" and "dqrev_wgb" modes; tg_bwd_dq
    (Dv <= 64; with the REV sums where several segments) for those calls in "dqrev_wgb", tg_bwd_dkdv (Dk, Dv <= 64) in
    "dqrev_wgb" and "dqrev_wgk"; log decays through the walkers' DECAY instantiations; all on a compute capability 9.0
    device.  The mma.sync kernels for float32, wider heads, not causal, the segment sums of decayed calls, the other
    modes and other devices."""
    import cupy as cp
    from kernels.cupy import _chunked_mma as mma
    from kernels.cupy._module import kernel_label, sm90a

    def plan(dt, dk, decayed, dkdv, causal=True, dv=64):
        g = cp.zeros((1, 300), cp.float32) if decayed else None
        return mma._plan(dt, (1, 300, dk), dv, 3 if dt == "float32" else 1, 1, causal, None, 1, g, False, False, dkdv)

    def seg(*a, **kw):
        return kernel_label(plan(*a, **kw).seg_state.kernel)

    def fwd(*a, **kw):
        return kernel_label(plan(*a, **kw).fwd.kernel)

    def bwd(*a, **kw):
        P = plan(*a, **kw)
        B = P.backward_plan(a[3], a[2], "float32" if a[2] else None)
        return kernel_label(B.dq.kernel), tuple(kernel_label(x.kernel) for x in B.dkdv)

    wg = sm90a()
    assert seg("float16", 64, False, "dqrev_wgs") == (f"tg_seg_state<wb_half, {mma.WG_SEG_STAGES}>" if wg else
                                                      "tc_seg_state<wb_half, 64, false, 1, 2>")
    assert seg("bfloat16", 48, False, "dqrev_wgs").startswith("tg_seg_state<wb_bf16" if wg else "tc_seg_state<")
    assert fwd("float16", 64, False, "dqrev_wg") == (f"tg_fwd<wb_half, {mma.WG_FWD_STAGES}, false>" if wg else
                                                     "tc_fwd<wb_half, 64, 1, 1>")
    assert fwd("bfloat16", 40, False, "dqrev_wg").startswith("tg_fwd<wb_bf16" if wg else "tc_fwd<")
    assert fwd("float16", 64, False, "dqrev_wgb").startswith("tg_fwd<" if wg else "tc_fwd<")
    dq, dkdv = bwd("float16", 64, False, "dqrev_wgb")
    lr = str(mma.WG_DKDV_LOWREG).lower()
    assert (dq, dkdv) == ((f"tg_bwd_dq<wb_half, {mma.WG_DQ_STAGES}, true, false>",
                           (f"tg_bwd_dkdv<wb_half, {mma.WG_DKDV_STAGES}, {lr}, false>",)) if wg else
                          ("tc_bwd_dq<wb_half, 64, 1, 1, true>", ("tc_bwd_dkdv<wb_half, 64, 64, 1, 0, 0, 1>",)))
    dq, dkdv = bwd("bfloat16", 96, False, "dqrev_wgb", dv=40)           # dq at Dk 96: two dk tiles; dk/dv: wide
    assert dq.startswith("tg_bwd_dq<wb_bf16" if wg else "tc_bwd_dq<") and all(x.startswith("tc_") for x in dkdv)
    dq, dkdv = bwd("float16", 64, False, "dqrev_wg")                     # the forward walker only
    assert dq.startswith("tc_bwd_dq<") and dkdv[0].startswith("tc_bwd_dkdv<")
    assert seg("float16", 64, False, "dqrev_wg").startswith("tc_seg_state<")        # the forward walker only
    assert fwd("float16", 64, False, "dqrev_wgs").startswith("tc_fwd<")             # the segment sums only
    # log decays: the walkers' DECAY instantiations (two stages, tc::Walk), never the segment sums' pass
    assert seg("float16", 64, True, "dqrev_wgs").startswith("tc_seg_state<")
    assert fwd("float16", 64, True, "dqrev_wg") == ("tg_fwd<wb_half, 2, true>" if wg else "tc_fwd<wb_half, 64, 1, 1>")
    dq, dkdv = bwd("float16", 64, True, "dqrev_wgb")
    assert (dq, dkdv) == (("tg_bwd_dq<wb_half, 2, true, true>", (f"tg_bwd_dkdv<wb_half, 2, {lr}, true>",)) if wg else
                          ("tc_bwd_dq<wb_half, 64, 1, 1, true>", ("tc_bwd_dkdv<wb_half, 64, 64, 1, 0, 0, 1>",)))
    # the dk/dv walker alone (decayed float16's default): tc_fwd, tc_bwd_dq, tg_bwd_dkdv
    for decayed in (False, True):
        assert fwd("float16", 64, decayed, "dqrev_wgk").startswith("tc_fwd<")
        dq, dkdv = bwd("float16", 64, decayed, "dqrev_wgk")
        d = str(decayed).lower()
        assert (dq, dkdv) == (("tc_bwd_dq<wb_half, 64, 1, 1, true>",
                               ((f"tg_bwd_dkdv<wb_half, {2 if decayed else mma.WG_DKDV_STAGES}, {lr}, {d}>",) if wg
                                else ("tc_bwd_dkdv<wb_half, 64, 64, 1, 0, 0, 1>",)))), decayed
    assert bwd("float16", 64, True, "dqrev_wgk", False)[1][0].startswith("tc_bwd_dkdv<")      # not causal
    for args in (("float32", 64, False), ("float16", 80, False)):
        assert seg(*args, "dqrev_wgs").startswith("tc_seg_state<"), args
        assert fwd(*args, "dqrev_wg").startswith("tc_fwd<"), args
        dq, dkdv = bwd(*args, "dqrev_wgb")
        wide_dk_only = wg and args == ("float16", 80, False)                # dq's walker takes any Dk at Dv 64
        assert dq.startswith("tg_bwd_dq<" if wide_dk_only else "tc_bwd_dq<"), args
        assert all(x.startswith("tc_") for x in dkdv), args
    assert fwd("float16", 64, False, "dqrev_wg", False).startswith("tc_fwd<")       # not causal
    dq, dkdv = bwd("float16", 64, False, "dqrev_wgb", False)
    assert dq.startswith("tc_bwd_dq<") and dkdv[0].startswith("tc_bwd_dkdv<")
    assert seg("float16", 64, False, "dqrev").startswith("tc_seg_state<")
    assert fwd("float16", 64, False, "dqrev").startswith("tc_fwd<")


@pytest.mark.parametrize("dtype,split", CASES)
@pytest.mark.parametrize("shape", [(2, (0, 1), 64, 64), (1, (0, 300), 64, 64), (1, (0, 150), 48, 24),
                                   (2, (0, 1, 64, 65, 130, 200), 64, 64), (1, (0, 63, 191), 96, 40),
                                   (1, (0, 70), 5, 7), (1, (0, 97), 80, 72)],
                         ids=lambda s: f"N{s[0]}-cu{'_'.join(map(str, s[1]))}-{s[2]}x{s[3]}")
@pytest.mark.parametrize("mode", ["linear", "decayed"])
@pytest.mark.parametrize("L", [1, 2, 4])
@pytest.mark.parametrize("stages", [1, 2], ids=["mma", "mma_db"])
def test_dqrev_matches_recurrence(dtype, split, shape, mode, L, stages):
    """The REV segment sums formed in the dq walker (dkdv="dqrev", cupy:chunked_mma_dqr; tc_bwd_dq's ESUM): segments
    of 1, 2 and 4 chunks with a partial last chunk, one token (one segment: the unchained path), packed sequences,
    Dk != Dv and odd dims, two dk tiles (96 x 40), both load pipelines; 80 x 72 keeps the REV pass (dv above
    REV_IN_DQ_DIMS)."""
    _check_case(dtype, split, shape, mode, L, stages=stages, dkdv="dqrev")


# dqrev against the fused mode on the same inputs (log decays down to -80, a reset, an initial state and a final-state
# gradient, segments of 3 chunks): the REV sums are the same terms summed in another association, so o, the
# final state and dq (which never see them) are bit-identical, and dk, dv, dS0, d log_decay agree to rounding
# (the fragment weights differ -- e^{B_c + b_t - beta} against e^{b_t - b_0} -- so they round differently to the 16-bit
# type or to TF32: emulator, every cell: float16 <= 1.8e-5, bfloat16 <= 1.2e-4, 3xTF32 <= 2.4e-7, TF32 <= 1.8e-5)
DQREV_DIFF = {("float32", 3): 2e-6, ("float32", 1): 1e-4, ("float16", 1): 5e-4, ("bfloat16", 1): 1e-3}


@pytest.mark.parametrize("dtype,split", CASES)
@pytest.mark.parametrize("mode", ["linear", "decayed"])
@pytest.mark.parametrize("cu", [(0, 500), (0, 1, 200, 263, 400)], ids=["T500", "packed"])
def test_dqrev_equals_fused_to_rounding(dtype, split, mode, cu):
    import cupy as cp
    from kernels.cupy import _chunked_mma as mma
    rng = np.random.default_rng(5)
    N, T, d, nseq = 2, cu[-1], 64, len(cu) - 1
    cast = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}[dtype]
    if dtype == "bfloat16":
        import ml_dtypes  # noqa: F401
    q, k, v, do = (cp.asarray((rng.standard_normal((N, T, d)) * 0.5).astype(cast)) for _ in range(4))
    g = None
    if mode == "decayed":       # slow decays (the sums reach every chunk), some drops, a reset near the end; in row 1
        gg = rng.uniform(-0.02, 0.0, (N, T))            # segments (of 192 tokens in one sequence) starting at -30 (a
        gg[:, 37::97] = -5.0                            # base e^{-30}) and at -80 (below weight_base's 1e-30: base 1)
        gg[1, 192], gg[1, 384], gg[:, T - 50] = -30.0, -80.0, -np.inf
        g = cp.asarray(gg.astype(np.float32))
    S0, dST = (cp.asarray((rng.standard_normal((N, nseq, d, d)) * 0.3).astype(np.float32)) for _ in range(2))
    res = []
    for dkdv in ("fused", "dqrev"):
        o, ctx = mma.forward(q, k, v, g, scale=0.7, split=split, S0=S0, want_final=True, cu=cu if nseq > 1 else None,
                             L=3, dkdv=dkdv)
        dq, dk, dv, dg, dS0 = mma.backward(ctx, do, dST)
        res.append(dict(o=o, final=ctx.final, dq=dq, dk=dk, dv=dv, dS0=dS0, **({"dg": dg} if g is not None else {})))
    fused, dqrev = ({n: cp.asnumpy(x).astype(np.float64) for n, x in r.items()} for r in res)
    for n in ("o", "final", "dq"):
        assert np.array_equal(fused[n], dqrev[n]), n
    diff = {n: rel_error(dqrev[n], fused[n]) for n in ("dk", "dv", "dS0") + (("dg",) if g is not None else ())}
    assert all(e <= DQREV_DIFF[(dtype, split)] for e in diff.values()), diff


def test_dqrev_launches():
    """Where the dq walker forms the REV sums: causal calls of several segments at dv <= 64 (REV_IN_DQ_DIMS), the
    dq walker launched (not folded); the REV pass elsewhere (one segment: no chained sums at all)."""
    from kernels.cupy import _chunked_mma as mma
    mma._PLANS.clear()
    for T, dv, causal, esum in ((300, 64, True, True), (300, 48, True, True), (64, 64, True, False),
                                (300, 64, False, False), (300, 80, True, False)):
        P = mma._plan("float16", (1, T, 64), dv, 1, 1, causal, None, 1, None, False, False, "dqrev")
        B = P.backward_plan("dqrev", False, None)
        assert B.esum == esum and (B.rseg is None) == (esum or (causal and P.table.single)), (T, dv, causal)
        assert B.dq.kernel is mma._kern("float16", 1, 1, mma._dq("float16", 1, 1, P.dvp, esum).expr)


@pytest.mark.parametrize("dtype,split", CASES)
@pytest.mark.parametrize("shape", [(2, (0, 1), 64, 64), (1, (0, 300), 64, 64), (1, (0, 150), 48, 24),
                                   (2, (0, 1, 64, 65, 130, 200), 64, 64), (1, (0, 97), 80, 72)],
                         ids=lambda s: f"N{s[0]}-cu{'_'.join(map(str, s[1]))}-{s[2]}x{s[3]}")
@pytest.mark.parametrize("L", [0, 1, 2])
@pytest.mark.parametrize("stages", [1, 2], ids=["mma", "mma_db"])
def test_anchor_matches_recurrence(dtype, split, shape, L, stages):
    """d log_decay from chunk anchors (dkdv="anchor", cupy:chunked_mma_dqa, bfloat16's default core): the anchors
    of every chunk (a segment's first chunk included: its dS update is done for it), a sequence's last chunk from
    <dS_T, S_T>, packed sequences, Dk != Dv, both load pipelines; 80 x 72 runs the unfolded kernels and the
    reverse cumsum (no anchors above head dim 64)."""
    _check_case(dtype, split, shape, "decayed", L, stages=stages, dkdv="anchor")


# bfloat16 decayed through the public API at the check's inputs (workbench.check.compare): the default (the 16-bit
# core with chunk anchors and hi + lo state operands, as cupy:chunked_mma_dqa) and the float32 core
# (cupy:chunked_mma_bf16f32); d log_decay at most
# BF16_DG_MAX, at T = 4096 and 4097 where the reverse cumsum of the 16-bit core reached 2.4e-2 - 3.0e-2 (callO), and
# with an initial state and log decays down to -30, where the anchors alone reached 2.3e-2 - 4.0e-2 (callH, callI).
# The model (scripts/bf16_dg_model.py, "anchor + split-state, anchor hi+lo"): 1.3e-3 - 2.9e-3 on every cell here; the
# float32 core ~1e-3 - 2e-3
BF16_DG_MAX = 1e-2


@pytest.mark.parametrize("variant", ["chunked_mma", "chunked_mma_bf16f32"])
@pytest.mark.parametrize("T, lead", [(4096, (2,)), (4097, (1,)), (1024, (1, 2))])
@pytest.mark.parametrize("rng", [(-1.0, -0.01), (-30.0, 0.0)], ids=["g-1", "g-30"])
@pytest.mark.parametrize("state", [False, True], ids=["", "state"])
def test_bfloat16_decayed_long(variant, T, lead, rng, state):
    from workbench.check import compare
    errs = []
    for seed in range(2):
        res = compare("decayed", f"cupy:{variant}", lead, T, 64, 64, "bfloat16", seed=seed, log_decay_range=rng,
                      state=state)
        assert res["ok"], res
        errs.append(res["dlog_decay"])
    assert max(errs) <= BF16_DG_MAX, errs


@pytest.mark.parametrize("variant", ["chunked_mma", "chunked_mma_dqa", "chunked_mma_dqr"])
def test_float16_initial_state_gradient_behind_a_strong_decay(variant):
    """float16 decayed, an initial state, log decays down to -30 (seed 1: a chunk whose first log decay is near -30):
    the backward's dS update and REV pass weigh rows by e^{b_t - b_0} and apply e^{b_0} in float32 (tc weight_base);
    with e^{b_t} rounded to float16 every weight was 0 and d init.S came out 0 (relative error 1.0, H200 callI)."""
    from workbench.check import compare
    res = compare("decayed", f"cupy:{variant}", (1, 2), 1024, 64, 64, "float16", seed=1, log_decay_range=(-30.0, 0.0),
                  state=True)
    assert res["ok"] and res["dinit.S"] < 1e-2, res


def test_dqfold_launches():
    """Which kernels the dq-folded mode runs: no tc_bwd_dq and the STORE forward at head dims 64 when causal;
    the fused mode's kernels otherwise (not causal, wider head dims)."""
    from kernels.cupy import _chunked_mma as mma
    assert mma.folded(64, 64, "dqfold", True) and not mma.folded(64, 64, "dqfold", False)
    assert not mma.folded(128, 64, "dqfold", True) and not mma.folded(64, 64, "fused", True)
    assert mma.dkdv_launches(64, 64, "dqfold", False) == mma.DKDV_MODES["fused"]


@pytest.mark.parametrize("N,cu,L,stages,dkdv", [
    (1, (0, 1, 64, 65, 130), 0, 1, "fused"), (1, (0, 1, 64, 65, 130), 2, 2, "split"),
    (2, (0, 129), 0, 1, "fused"), (2, (0, 193), 2, 2, "wide"), (1, (0, 1, 64, 65, 130), 1, 1, "dqfold"),
    (2, (0, 1, 64, 65, 300), 2, 1, "dqrev")],
    ids=lambda x: "_".join(map(str, x)) if isinstance(x, tuple) else str(x))
@pytest.mark.parametrize("gdtype", ["float16", "bfloat16"])
def test_16bit_log_decays_equal_their_float32_cast(N, cu, L, stages, dkdv, gdtype):
    """float16 and bfloat16 log decays read by the walkers (g_kind: no cast launch) give the bits of the same
    values cast to float32 first: chunks starting 2-byte aligned (packed sequences at odd tokens, odd T), -inf,
    values below tc::G_MIN, a NaN, segments of 0 and 2 chunks, both load pipelines."""
    import cupy as cp
    from kernels.cupy import _chunked_mma as mma
    if gdtype == "bfloat16":
        pytest.importorskip("ml_dtypes")            # registers numpy's "bfloat16"
    rng = np.random.default_rng(7)
    T, nseq, d = cu[-1], len(cu) - 1, 64
    q, k, v, do = (cp.asarray(rng.standard_normal((N, T, d)).astype(np.float16)) for _ in range(4))
    g = rng.uniform(-1.0, 0.0, (N, T))
    g[:, 3::17], g[:, 5::23], g[:, 7::29], g[:, 100] = -np.inf, -50.0, -2.0e4, np.nan
    g16 = g.astype(gdtype)
    S0, dST = (cp.asarray((rng.standard_normal((N, nseq, d, d)) * 0.3).astype(np.float32)) for _ in range(2))
    outs = []
    for gg in (g16, g16.astype(np.float32)):
        o, ctx = mma.forward(q, k, v, cp.asarray(gg), scale=0.7, S0=S0, want_final=True,
                             cu=cu if nseq > 1 else None, L=L, stages=stages, dkdv=dkdv)
        grads = mma.backward(ctx, do, dST, dg_dtype=np.dtype(np.float16))
        outs.append([cp.asnumpy(x).tobytes() for x in (o, ctx.final) + tuple(grads)])
    names = ("o", "final", "dq", "dk", "dv", "dg", "dS0")
    assert [n for n, a, b in zip(names, *outs) if a != b] == []
