"""Numba decayed attention (naive and chunked) against the float64 explicit NumPy reference, through the public
API.  On a CPU machine the kernels run on Numba's CUDA simulator (tests/conftest.py), so shapes and tiles are
tiny: chunk 8 with T = 19 (three chunks, the last one partial), Da/Dc tiles of 4 with Dk = 5, Dv = 7 (two tiles
each, the last one partial).  The simulator never type-checks a kernel, so one test compiles every kernel to
PTX with libNVVM (no GPU needed).  GPU-only tests use the real tile sizes."""

import numpy as np
import pytest

import workbench as wb
from workbench import registry
from workbench.check import rel_error
from workbench.inputs import random_inputs
from workbench.reference import decayed as ref
from numba_cases import assert_matches

nd = pytest.importorskip("kernels.numba.decayed")
from kernels.numba import _chunked, _jit  # noqa: E402

pytestmark = pytest.mark.slow      # Numba CUDA simulator: minutes; -m "not slow" leaves them out
TOL = registry.TOLERANCE          # the library's relative-error tolerance per dtype
MULTI_TILE = {"chunk": 8, "block_k": 4, "block_v": 4, "threads": 8}
ONE_TILE = {"chunk": 8, "block_k": 8, "block_v": 8, "threads": 8}
NAMES = ("o", "dq", "dk", "dv", "dlog_decay")


def numba_vjp(variant, q, k, v, g, do, scale=1.0):
    """(o, dq, dk, dv, dlog_decay) of one numba variant through the public API."""
    out, pull = wb.vjp(wb.decayed_attention, q, k, v, g, backend=f"numba:{variant}", scale=scale)
    return (out,) + tuple(pull(do))


def run(variant, q, k, v, g, do, scale=1.0):
    got = numba_vjp(variant, q, k, v, g, do, scale)
    T = q.shape[-2]        # the reference takes one leading dim: flatten, then restore the shapes
    flat = [x.astype(np.float64).reshape((-1, T) + x.shape[len(q.shape) - 1:]) for x in (q, k, v, g, do)]
    o_ref, ctx = ref.explicit_forward(*flat[:4], scale=scale)
    want = (o_ref,) + tuple(ref.explicit_backward(ctx, flat[4]))
    return got, tuple(w.reshape(x.shape) for w, x in zip(want, (got[0], q, k, v, g)))


def check_case(variant, lead, T, Dk, Dv, dtype, scale=1.0, decay_range=(-1.0, -0.01), seed=0):
    q, k, v, g = random_inputs("decayed", lead=lead, T=T, Dk=Dk, Dv=Dv, dtype=dtype, seed=seed,
                               log_decay_range=decay_range)
    do = np.random.default_rng(seed + 1).standard_normal((*lead, T, Dv)).astype(dtype)
    got, want = run(variant, q, k, v, g, do, scale)
    assert_matches(variant, NAMES, got, want, dtype)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_awkward_shape_several_tiles(variant, tiles):
    """T = 19 over chunks of 8; Dk = 5, Dv = 7 over tiles of 4 (partial chunk and tiles everywhere)."""
    tiles(MULTI_TILE)
    check_case(variant, (2,), 19, 5, 7, "float64", scale=0.7)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_float32_two_leading_dims(variant, tiles):
    tiles(ONE_TILE, scan_threads=2)
    check_case(variant, (2, 3), 10, 3, 2, "float32", seed=3)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_single_position(variant, tiles):
    tiles(ONE_TILE)
    check_case(variant, (3,), 1, 4, 3, "float64")


@pytest.mark.parametrize("variant,dtype", [("chunked", "float32"), ("chunked", "float64"), ("naive", "float32")])
def test_strong_decay_is_stable(variant, dtype, tiles):
    """log decays in [-30, 0]: the whole-sequence cumsum reaches ~-300, exp(-G) would overflow float32."""
    tiles(ONE_TILE)
    check_case(variant, (1,), 19, 4, 4, dtype, decay_range=(-30.0, 0.0), seed=5)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_nan_propagates_forward_only(variant, tiles):
    """A NaN in v[5, 1] reaches column 1 of the rows t >= 5 that see it, and nothing else."""
    tiles(ONE_TILE)
    q, k, v, g = random_inputs("decayed", lead=(1,), T=13, Dk=4, Dv=3, dtype="float64")
    v[0, 5, 1] = np.nan
    o = wb.decayed_attention(q, k, v, g, backend=f"numba:{variant}")
    # (the explicit reference's masked matmul turns 0 * NaN into NaN in rows t < 5 too: not compared)
    assert np.isnan(o[0, 5:, 1]).all() and np.isfinite(o[0, :5]).all() and np.isfinite(o[0, :, [0, 2]]).all()


def test_tiles_fit_device_limits():
    """Every head-dim bucket (and smaller test buckets), both dtypes: static shared memory <= 48 KB, threads
    <= 1024, tiles >= 1, and the Da tile divides the bucket."""
    for itemsize in (4, 8):
        for DB in (8, 16, 32) + _jit.BUCKETS:
            C, BK, BV, NT = _chunked.tiles(DB, 1, itemsize)
            assert _chunked.shared_bytes(DB, 1, C, BK, BV, itemsize) <= 48 * 1024
            assert min(C, BK, BV) >= 1 and NT <= 1024 and DB % BK == 0


def pairwise_truth(q, k, v, g, do, scale=1.0):
    """Float64 outputs and gradients straight from the definition, for log decays anywhere in [-inf, 0]:
    w_ti = exp(sum_{i < j <= t} g_j) summed pair by pair (-inf gives exp(-inf) = 0, never a NaN; no cumsum G
    whose differences would cancel), then o, dq, dk, dv from w and dg_j = sum_{t >= j} (do_t.o_t - v_t.dv_t),
    dg_0 = 0.  One leading dim."""
    q, k, v, g, do = (np.asarray(x, np.float64) for x in (q, k, v, g, do))
    N, T, _ = q.shape
    outs = [np.zeros_like(x) for x in (v, q, k, v, g)]
    for n in range(N):
        W = np.zeros((T, T))
        for t in range(T):
            for i in range(t + 1):
                W[t, i] = np.exp(g[n, i + 1:t + 1].sum()) if i < t else 1.0
        A = scale * W * (q[n] @ k[n].T)                 # o = A v
        dA = scale * W * (do[n] @ v[n].T)
        o = A @ v[n]
        dv = A.T @ do[n]
        dg = np.cumsum((np.sum(do[n] * o, 1) - np.sum(v[n] * dv, 1))[::-1])[::-1]
        dg[0] = 0.0
        for x, val in zip(outs, (o, dA @ k[n], dA.T @ q[n], dv, dg)):
            x[n] = val
    return outs


@pytest.mark.parametrize("variant", ["naive", "chunked"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_minus_inf_log_decay_is_an_exact_reset(variant, dtype, tiles):
    """log_decay = -inf at positions 5 (mid-chunk), 8 (a chunk's first row), 9 (right after) and 0: every
    earlier token drops out of the later rows, no NaN anywhere, and each segment between resets is the
    op on that segment alone."""
    tiles(MULTI_TILE)
    q, k, v, g = random_inputs("decayed", lead=(2,), T=19, Dk=5, Dv=7, dtype="float64", seed=11)
    g[:, [0, 5, 8, 9]] = -np.inf
    do = np.random.default_rng(12).standard_normal((2, 19, 7))
    got = numba_vjp(variant, *(x.astype(dtype) for x in (q, k, v, g, do)), scale=0.7)
    want = pairwise_truth(q, k, v, g, do, scale=0.7)
    seg_o, _ = ref.explicit_forward(q[:, 9:], k[:, 9:], v[:, 9:], np.where(np.isinf(g[:, 9:]), 0.0, g[:, 9:]),
                                    scale=0.7)
    np.testing.assert_allclose(want[0][:, 9:], seg_o, rtol=1e-12, atol=1e-12)      # the truth is a reset
    for name, x, r in zip(NAMES, got, want):
        assert np.isfinite(x).all(), name
        err = rel_error(x, r)
        assert err < TOL[dtype], (variant, name, err)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_any_log_decay_in_minus_inf_to_zero_is_accurate_in_float32(variant, tiles):
    """Log decays drawn from -inf, -1e30, -1e4, -200, -60, [-30, 0] and -1e-3, in float32, against the pairwise
    float64 truth: within float32 rounding (the chunked rung floors them at a finite value whose exp is 0)."""
    tiles(dict(ONE_TILE, chunk=16))
    rng = np.random.default_rng(21)
    T = 40
    q, k, v, _ = random_inputs("decayed", lead=(1,), T=T, Dk=4, Dv=3, dtype="float64", seed=20)
    pool = np.array([-np.inf, -1e30, -1e4, -200.0, -60.0, -1e-3])
    g = np.where(rng.random((1, T)) < 0.4, rng.choice(pool, (1, T)), rng.uniform(-30.0, 0.0, (1, T)))
    g = np.where(rng.random((1, T)) < 0.3, rng.uniform(-0.05, 0.0, (1, T)), g)     # long-lived stretches too
    q, k, v, g = (x.astype(np.float32).astype(np.float64) for x in (q, k, v, g))
    do = rng.standard_normal((1, T, 3)).astype(np.float32).astype(np.float64)
    got = numba_vjp(variant, *(x.astype(np.float32) for x in (q, k, v, g, do)))
    want = pairwise_truth(q, k, v, g, do)
    errs = {n: rel_error(x, r) for n, x, r in zip(NAMES, got, want)}
    assert all(np.isfinite(x).all() for x in got), errs
    assert max(errs.values()) < 1e-5, errs


# ----------------------------------------------------------------------------- real GPU, real tile sizes
@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["naive", "chunked"])
@pytest.mark.parametrize("lead,T,Dk,Dv,dtype", [
    ((2, 3), 300, 64, 64, "float32"), ((2,), 257, 128, 128, "float32"), ((2,), 130, 64, 128, "float64"),
    ((1,), 100, 256, 256, "float64"), ((3,), 1, 80, 48, "float32"), ((1,), 1000, 32, 16, "float32")])
def test_gpu_shapes(variant, lead, T, Dk, Dv, dtype):
    check_case(variant, lead, T, Dk, Dv, dtype, decay_range=(-30.0, 0.0) if T == 1000 else (-1.0, -0.01))


@pytest.mark.gpu
def test_gpu_cupy_in_cupy_out():
    cp = pytest.importorskip("cupy")
    q, k, v, g = random_inputs("decayed", lead=(2,), T=100, Dk=64, Dv=64, dtype="float32")
    o = wb.decayed_attention(*(cp.asarray(x) for x in (q, k, v, g)), backend="numba:chunked")
    assert isinstance(o, cp.ndarray)
    assert rel_error(cp.asnumpy(o), ref.explicit_forward(q, k, v, g)[0]) < 1e-4


def test_chunked_weights_stay_accurate_when_the_chunk_cumsum_is_large(tiles):
    """Log decays down to -30: a float32 within-chunk cumsum reaches -1000 in a chunk of 64, where one rounding
    is ~3e-5 -- a 1e-5 relative error of exp(b_p - b_i) for nearby rows.  The kernel carries b as hi + lo (TwoSum),
    so the output stays at float32 rounding (on the GPU check at T=4097 the plain cumsum put dlog_decay at 1.4e-4)."""
    tiles(dict(ONE_TILE, chunk=64))
    lead, T, D = (1,), 100, 4
    q, k, v, g = random_inputs("decayed", lead=lead, T=T, Dk=D, Dv=D, dtype="float64", seed=3,
                               log_decay_range=(-30.0, 0.0))
    q, k, v = (x.astype(np.float16).astype(np.float64) for x in (q, k, v))         # exact in float32
    g = g.astype(np.float32).astype(np.float64)        # full float32 mantissas: their sums round
    do = np.random.default_rng(4).standard_normal((*lead, T, D)).astype(np.float16).astype(np.float64)
    got, want = run("chunked", *(x.astype(np.float32) for x in (q, k, v, g, do)))
    _, want = run("naive", q, k, v, g, do)                                          # float64: the truth
    errs = {n: rel_error(x, r) for n, x, r in zip(NAMES, got, want)}
    # measured: 4e-8 (o, dq, dk, dv) and 1e-6 (dlog_decay); 3e-7..4e-7 and 8e-6 with a plain float32 cumsum
    assert max(errs[n] for n in ("o", "dq", "dk", "dv")) < 1.5e-7 and errs["dlog_decay"] < 4e-6, errs
