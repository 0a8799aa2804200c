"""Numba softmax attention (naive and flash) against the float64 explicit NumPy reference, through the public
API.  On a CPU machine this runs on Numba's CUDA simulator (tests/conftest.py), so shapes and tiles are tiny;
the tile sizes are shrunk so T crosses several tiles and one tile boundary falls mid-tile."""
import numpy as np
import pytest

import workbench as wb
from workbench import registry
from workbench.check import rel_error
from workbench.inputs import random_inputs
from workbench.reference import softmax as ref
from numba_cases import assert_matches

numba_softmax = pytest.importorskip("kernels.numba.softmax")

pytestmark = pytest.mark.slow      # Numba CUDA simulator: minutes; -m "not slow" leaves them out
TOL = registry.TOLERANCE          # the library's relative-error tolerance per dtype
SMALL_TILES = {"block_q": 8, "block_k": 4, "block_kv": 4, "block_q_bwd": 8}
DEFAULT_TILES = dict(numba_softmax.CONFIG)   # the GPU tiles (read before any test shrinks them)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch, small_buckets):
    """Tiny tiles and, on the simulator, small head-dim buckets (tests/conftest.py)."""
    for key, val in SMALL_TILES.items():
        monkeypatch.setitem(numba_softmax.CONFIG, key, val)



@pytest.fixture
def default_tiles(monkeypatch):
    """The GPU's tile sizes again (after small_tiles, an autouse fixture, shrank them)."""
    for key, val in DEFAULT_TILES.items():
        monkeypatch.setitem(numba_softmax.CONFIG, key, val)


def run_case(variant, lead, T, Dk, Dv, dtype, causal, scale=None, seed=0):
    q, k, v = random_inputs("softmax", lead=lead, T=T, Dk=Dk, Dv=Dv, dtype=dtype, seed=seed)
    do = np.random.default_rng(seed + 1).standard_normal((*lead, T, Dv)).astype(dtype)
    out, pull = wb.vjp(wb.softmax_attention, q, k, v, backend=f"numba:{variant}", causal=causal, scale=scale)
    grads = pull(do)
    sc = 1 / np.sqrt(Dk) if scale is None else scale
    o_ref, ctx = ref.explicit_forward(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                      causal=causal, scale=sc)
    g_ref = ref.explicit_backward(ctx, do.astype(np.float64))
    assert out.shape == (*lead, T, Dv)
    assert_matches(variant, ("o", "dq", "dk", "dv"), (out, *grads), (o_ref, *g_ref), dtype)


# T=19 crosses several 8-/4-row tiles and ends mid-tile; Dk != Dv and odd; two leading dims.
@pytest.mark.parametrize("variant", ["naive", "flash"])
@pytest.mark.parametrize("causal", [True, False])
def test_awkward_shape_float64(variant, causal):
    run_case(variant, (2, 3), 19, 5, 7, "float64", causal)


@pytest.mark.parametrize("variant", ["naive", "flash"])
def test_float32_and_scale(variant):
    run_case(variant, (2,), 13, 6, 4, "float32", True, scale=0.7)


@pytest.mark.parametrize("variant", ["naive", "flash"])
@pytest.mark.parametrize("causal", [True, False])
def test_single_position(variant, causal):
    run_case(variant, (3,), 1, 4, 3, "float64", causal)


def test_flash_longer_sequence_matches_naive():
    """T=37: several key tiles per query tile, and query tiles that skip key tiles (causal)."""
    run_case("flash", (1,), 37, 4, 4, "float64", True, seed=3)


@pytest.mark.parametrize("D,itemsize", [(64, 4), (128, 4), (64, 8), (256, 8)])
def test_tiles_fit_static_shared_memory(D, itemsize, default_tiles):
    """With the default tiles, every flash kernel's static shared memory stays under the 48 KB limit."""
    tl = numba_softmax._tiles(D, itemsize)
    own, tile = (2 * D + 2) * itemsize, 2 * D * itemsize
    limit = numba_softmax.SHARED_BYTES
    assert tl["bk"] * tile <= limit                                               # forward
    assert tl["bkv"] * own + tl["bqb"] * (tile + 2 * itemsize) <= limit           # dk/dv
    assert tl["bq_dq"] * own + tl["bk_dq"] * tile <= limit                        # dq
    assert min(tl.values()) >= 1


def test_nan_propagates_without_crash():
    q, k, v = random_inputs("softmax", lead=(1,), T=6, Dk=4, Dv=4, dtype="float64")
    v[0, 2, 1] = np.nan
    out = wb.softmax_attention(q, k, v, backend="numba:flash", causal=True)
    assert np.isfinite(out[0, :2]).all()         # rows before position 2 never see it
    assert np.isnan(out[0, 2:, 1]).all()


def test_unsupported_head_dim_is_a_clear_error():
    q, k, v = random_inputs("softmax", lead=(1,), T=2, Dk=300, Dv=4, dtype="float32")
    with pytest.raises(ValueError, match="head dims"):
        wb.softmax_attention(q, k, v, backend="numba:flash")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["naive", "flash"])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_real_tiles(variant, causal, default_tiles):
    """On a GPU: default tiles, T not a multiple of 64, head dims 64 and 128 and odd."""
    for T, Dk, Dv in [(127, 64, 64), (200, 128, 128), (65, 80, 48)]:
        run_case(variant, (2,), T, Dk, Dv, "float32", causal)


# ---------------------------------------------------------------------------- packed sequences (cu_seqlens)


def packed_case(variant, lengths, causal, Dk, Dv, dtype, lead=(2,), seed=0):
    """Sequences of ``lengths`` packed into one T axis: output and every gradient against the float64 explicit
    reference (packed mask), and against one call per sequence of the same variant (which may differ from
    the packed call by the dtype's round-off only)."""
    cu = tuple(int(c) for c in np.cumsum((0,) + tuple(lengths)))
    T = cu[-1]
    q, k, v = random_inputs("softmax", lead=lead, T=T, Dk=Dk, Dv=Dv, dtype=dtype, seed=seed)
    do = np.random.default_rng(seed + 1).standard_normal((*lead, T, Dv)).astype(dtype)
    backend = f"numba:{variant}"
    out, pull = wb.vjp(wb.softmax_attention, q, k, v, backend=backend, causal=causal, cu_seqlens=cu)
    got = (out, *pull(do))
    f64 = [x.astype(np.float64) for x in (q, k, v)]
    o_ref, ctx = ref.explicit_forward(*f64, causal=causal, scale=1 / np.sqrt(Dk), cu_seqlens=cu)
    want = (o_ref, *ref.explicit_backward(ctx, do.astype(np.float64)))
    names = ("o", "dq", "dk", "dv")
    errs = {n: rel_error(g, w) for n, g, w in zip(names, got, want)}
    for a, b in zip(cu[:-1], cu[1:]):            # one call per sequence (cu_seqlens of one sequence)
        piece = [x[..., a:b, :] for x in (q, k, v)]
        o_j, pull_j = wb.vjp(wb.softmax_attention, *piece, backend=backend, causal=causal, cu_seqlens=(0, b - a))
        for n, g, w in zip(names, got, (o_j, *pull_j(do[..., a:b, :]))):
            errs[f"{n}[{a}:{b}] vs one call"] = rel_error(g[..., a:b, :], w)
    for name, err in errs.items():
        assert np.isfinite(err) and err < TOL[dtype], (variant, lengths, causal, name, err)


@pytest.mark.parametrize("variant", ["naive", "flash"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lengths", [(1, 3, 4, 5), (2, 7)])
def test_packed_equals_one_call_per_sequence(variant, causal, lengths):
    """Tiles of 8 query and 4 key rows: query blocks hold several sequences, sequences start and end inside
    tiles, a length-1 sequence; Dk != Dv, float64."""
    packed_case(variant, lengths, causal, 5, 7, "float64")


@pytest.mark.parametrize("variant", ["naive", "flash"])
def test_packed_float32(variant):
    packed_case(variant, (3, 1, 6), True, 4, 4, "float32", lead=(2, 2), seed=5)


def test_packed_is_declared():
    for name in ("naive", "flash"):
        assert "packed" in registry.get("softmax", "numba", name).features


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["naive", "flash"])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_packed_real_tiles(variant, causal, default_tiles):
    """On a GPU: default tiles, lengths 1, 63, 64, 65 at D = 64, float32."""
    packed_case(variant, (1, 63, 64, 65), causal, 64, 64, "float32")
