"""CuPy softmax kernels (naive, flash, flash_mma) against the float64 explicit NumPy reference, through the
public API.  GPU only (marked ``gpu``; skipped without CuPy and a device).  The CPU-side parts (the
instantiation list, shared-memory budgets, registration) run everywhere."""
import numpy as np
import pytest

import workbench as wb
from workbench import backends, registry
from workbench.inputs import random_inputs
from workbench.reference import softmax as ref

from kernels.cupy import softmax as cs

TOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 2e-2}
VARIANTS = ["naive", "flash", "flash_mma"]
H100_SMEM = 227 * 1024


def rel(x, r):
    """||x - r|| / ||r||; the absolute error where the reference is zero (dq, dk at T=1 causal)."""
    err, nr = np.linalg.norm(np.asarray(x, np.float64) - r), np.linalg.norm(r)
    return err / nr if nr > 0 else err


def run_case(variant, lead, T, Dk, Dv, dtype, causal, scale=None, seed=0):
    q, k, v = random_inputs("softmax", lead=lead, T=T, Dk=Dk, Dv=Dv, dtype="float64", seed=seed)
    do = np.random.default_rng(seed + 1).standard_normal((*lead, T, Dv))
    # round through float16 (as workbench.check does): every dtype then computes the same function as the
    # float64 reference, and at T=1 causal the reference's dq, dk come out exactly 0 (p = 1, dp = D exactly)
    # instead of 1e-17 round-off that no kernel reproduces
    q, k, v, do = (a.astype(np.float16).astype(np.float64) for a in (q, k, v, do))
    out, pull = wb.vjp(wb.softmax_attention, *(a.astype(dtype) for a in (q, k, v)),
                       backend=f"cupy:{variant}", causal=causal, scale=scale)
    grads = pull(do.astype(dtype))
    sc = 1 / np.sqrt(Dk) if scale is None else scale
    o_ref, ctx = ref.explicit_forward(q, k, v, causal=causal, scale=sc)
    g_ref = ref.explicit_backward(ctx, do)
    assert out.dtype == np.dtype(dtype) and out.shape == (*lead, T, Dv)
    errs = {"o": rel(out, o_ref)}
    errs.update({n: rel(g, r) for n, g, r in zip(("dq", "dk", "dv"), grads, g_ref)})
    for name, err in errs.items():
        assert np.isfinite(err) and err < TOL[dtype], (variant, name, err, errs)
    return errs


# --------------------------------------------------------------------------- CPU-side
def test_registered_and_default():
    keys = {v.name for v in registry.variants("softmax", "cupy")}
    assert set(VARIANTS) <= keys
    assert registry.get("softmax", "cupy").name == "flash"


def test_instantiations_cover_every_launch():
    exprs = {e for _, e in cs.INSTANTIATIONS}
    for fam, dts in cs._FAMILY_DTYPES.items():
        for dt in dts:
            assert set(cs.expressions(fam, cs.CTYPE[dt])) <= exprs


def test_shared_memory_fits():
    for table in (cs.TILES, cs.CANDIDATES):
        for (fam, D, kind), t in table.items():
            smem = cs.smem_flash(kind, D, t) if fam == "flash" else cs.smem_mma(kind, D, t)
            assert 0 < smem <= H100_SMEM, (fam, D, kind, t, smem)


def test_tiles_cover_every_bucket():
    for D in cs.FLASH_BUCKETS:
        for kind in ("fwd", "dkdv", "dq"):
            br, bc = cs.tiles("flash", D, kind)
            assert br % 16 == 0 and bc % 16 == 0
            if D in cs.MMA_BUCKETS:
                assert cs.tiles("mma", D, kind)[0] == 64


def test_head_dim_limit_is_a_clear_error():
    v = registry.get("softmax", "cupy", "flash")
    assert v.unsupported_reason({}, {"q": (1, 4, 300), "k": (1, 4, 300), "v": (1, 4, 8)})
    assert v.unsupported_reason({}, {"q": (1, 4, 80), "k": (1, 4, 80), "v": (1, 4, 256)}) is None


# --------------------------------------------------------------------------- GPU
gpu = pytest.mark.gpu
needs_cupy = pytest.mark.skipif(backends.cupy_module() is None, reason="needs CuPy and a CUDA GPU")


def _dtypes(variant):
    return ["float16"] if variant == "flash_mma" else ["float32", "float16"]


@gpu
@needs_cupy
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [((2,), 1, 64, 64), ((2, 3), 67, 16, 24), ((2,), 127, 80, 80),
                                   ((1,), 200, 128, 128), ((2,), 130, 32, 32), ((1,), 70, 200, 256)])
def test_against_reference(variant, causal, shape):
    lead, T, Dk, Dv = shape
    for dtype in _dtypes(variant):
        run_case(variant, lead, T, Dk, Dv, dtype, causal)


@gpu
@needs_cupy
@pytest.mark.parametrize("variant", VARIANTS)
def test_large_logits(variant):
    """Logits of order 1e4: online max / log-sum-exp keep the output finite and right (forward only: the
    gradients of a one-hot softmax are ~0 and a relative error against ~0 means nothing)."""
    for dtype in _dtypes(variant):
        q, k, v = random_inputs("softmax", lead=(1,), T=96, Dk=64, Dv=64, dtype="float64", seed=3)
        q = (q * (1e3 if dtype == "float32" else 60.0)).astype(dtype).astype(np.float64)
        k, v = (a.astype(dtype).astype(np.float64) for a in (k, v))
        o = wb.softmax_attention(*(a.astype(dtype) for a in (q, k, v)), causal=True, scale=1.0,
                                 backend=f"cupy:{variant}")
        o_ref, _ = ref.explicit_forward(q, k, v, causal=True, scale=1.0)
        assert np.abs(q @ np.swapaxes(k, -1, -2)).max() > 300
        assert np.isfinite(o).all() and rel(o, o_ref) < TOL[dtype]


@gpu
@needs_cupy
@pytest.mark.parametrize("variant", VARIANTS)
def test_nan_propagates(variant):
    cp = backends.cupy_module()
    q, k, v = (cp.asarray(a) for a in random_inputs("softmax", lead=(1,), T=70, Dk=64, Dv=64, dtype="float32"))
    dtype = "float16" if variant == "flash_mma" else "float32"
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    q[0, 5, 3] = cp.nan
    o = wb.softmax_attention(q, k, v, causal=True, backend=f"cupy:{variant}")
    bad = cp.isnan(o).any(axis=-1)[0].get()
    assert bad[5] and not bad[:5].any() and not bad[6:].any()
