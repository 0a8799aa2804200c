"""CuPy linear / decayed / ZeroS kernels (kernels/cupy/{linear,decayed,zeros}.py on kernels/cuda/chunked.cuh).

CPU tests check the launch bookkeeping (every template instantiation the launch code can ask for is listed
in INSTANTIATIONS, which tests/test_nvrtc_compile.py compiles); GPU tests check every variant against the
float64 explicit NumPy reference on awkward shapes, and NaN / extreme-input behaviour."""
import numpy as np
import pytest

import workbench as wb
from workbench import registry
from workbench.backends import cupy_module
from workbench.check import rel_error
from workbench.inputs import random_inputs
from workbench.reference import decayed as ref_decayed, linear as ref_linear, zeros as ref_zeros

from kernels.cupy import _chunked as core, decayed, linear, zeros

gpu = pytest.mark.gpu
TOL = registry.TOLERANCE          # the library's relative-error tolerance per dtype
OPS = {"linear": (wb.linear_attention, ref_linear), "decayed": (wb.decayed_attention, ref_decayed),
       "zeros": (wb.zeros_attention, ref_zeros)}


# ----------------------------------------------------------------------------- CPU: bookkeeping
@pytest.mark.parametrize("op", ["linear", "decayed", "zeros"])
def test_variants_registered(op):
    names = {v.name for v in registry.variants(op, "cupy")}
    assert {"naive", "chunked", "chunked_mma"} <= names
    assert registry.get(op, "cupy").name == "chunked_mma"          # the tensor-core core is the default


def test_pad_and_chunk():
    assert [core.pad_dim(d) for d in (1, 32, 33, 64, 80, 128, 129, 256)] == [32, 32, 64, 64, 128, 128, 256, 256]
    assert core.chunk_size(128, 128) == 64 and core.chunk_size(64, 129) == 32
    with pytest.raises(ValueError):
        core.pad_dim(257)


@pytest.mark.parametrize("module,decay,dtypes", [(linear, False, ("float", "wb_half")),
                                                  (decayed, True, ("float", "wb_half")),
                                                  (zeros, None, ("float",))])
def test_every_launch_is_instantiated(module, decay, dtypes):
    """Every expression the launch code can form for head dims 1..256 is in INSTANTIATIONS."""
    listed = {e for src, e in module.INSTANTIATIONS if src == module.SOURCE}
    assert {src for src, _ in module.INSTANTIATIONS} <= {module.SOURCE, "chunked_mma.cu", "chunked_wgmma.cu", "xscale.cu"}
    decays = (False, True) if decay is None else (decay,)
    for ti in dtypes:
        for dk in range(1, 257, 7):
            for dv in (1, 24, 64, 80, 128, 200, 256):
                C = core.chunk_size(dk, dv)
                for d in decays:
                    for causal in ((True,) if d else (True, False)):
                        for rev in (False, True):
                            assert core.state_expr(ti, C, d, rev) in listed
                            assert core.naive_expr(ti, d, causal, rev) in listed
                            for dx in (dk, dv):
                                assert core.out_expr(ti, core.pad_dim(dx), C, d, causal, rev) in listed


def test_supports_rejects_big_heads():
    v = registry.get("linear", "cupy", "chunked")
    assert v.unsupported_reason(dict(normalize=True), {"q": (2, 8, 64), "v": (2, 8, 256)})
    assert v.unsupported_reason(dict(normalize=False), {"q": (2, 8, 64), "v": (2, 8, 256)}) is None
    z = registry.get("zeros", "cupy", "chunked")
    assert z.unsupported_reason({}, {"q": (2, 8, 300), "v": (2, 8, 8)})


# ----------------------------------------------------------------------------- GPU: against the reference
def _run(op, impl, lead, T, Dk, Dv, dtype, seed=0, **kw):
    fn, ref = OPS[op]
    input_kw = {k: kw.pop(k) for k in ("n_gates", "log_decay_range") if k in kw}
    if kw.get("feature_map"):
        input_kw["feature_map"] = kw["feature_map"]
    arrays = [a.astype(np.float16).astype(np.float64)
              for a in random_inputs(op, lead, T, Dk, Dv, "float64", seed, **input_kw)]
    do = np.random.default_rng(seed + 3).standard_normal((*lead, T, Dv)).astype(np.float16).astype(np.float64)
    out, pull = wb.vjp(fn, *[a.astype(dtype) for a in arrays], backend=f"cupy:{impl}", **kw)
    grads = pull(do.astype(dtype))
    assert out.dtype == np.dtype(dtype) and out.shape == (*lead, T, Dv)
    flat = [a.reshape((-1,) + a.shape[len(lead):]) for a in arrays]
    ro, ctx = ref.explicit_forward(*flat, **kw)
    rg = ref.explicit_backward(ctx, do.reshape((-1, T, Dv)))
    errs = [rel_error(out.reshape(ro.shape), ro)] + [rel_error(g.reshape(r.shape), r) for g, r in zip(grads, rg)]
    return errs


SHAPES = [((2, 3), 37, 5, 7), ((1,), 1, 64, 64), ((2,), 130, 64, 64), ((1,), 200, 80, 48), ((1,), 70, 160, 24)]


def every_case(test):
    """A GPU test over both kernels, both dtypes and every shape."""
    for mark in (pytest.mark.parametrize("shape", SHAPES), pytest.mark.parametrize("dtype", ["float32", "float16"]),
                 pytest.mark.parametrize("impl", ["naive", "chunked"]), gpu):
        test = mark(test)
    return test


@every_case
def test_linear(impl, dtype, shape):
    for causal in (True, False):
        for fmap, norm in (("identity", False), ("elu1", True), ("relu", False)):
            if norm and shape[1] < 2:
                continue
            errs = _run("linear", impl, *shape, dtype, causal=causal, feature_map=fmap, normalize=norm, scale=0.8)
            assert max(errs) < TOL[dtype], (causal, fmap, norm, errs)


@every_case
def test_decayed(impl, dtype, shape):
    for rng in ((-1.0, -0.01), (-30.0, 0.0)):
        errs = _run("decayed", impl, *shape, dtype, log_decay_range=rng, scale=0.9)
        assert max(errs) < TOL[dtype], (rng, errs)


@every_case
def test_zeros(impl, dtype, shape):
    for causal in (True, False):
        for n_gates in (2, 3):
            errs = _run("zeros", impl, *shape, dtype, causal=causal, n_gates=n_gates)
            assert max(errs) < TOL[dtype], (causal, n_gates, errs)


@gpu
@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_zeros_extreme_logits(impl):
    """s of +-1e3, in every dtype the variant takes: finite, and equal to the float64 reference on the same
    (dtype-rounded) inputs, forward and every gradient (which is stable by construction)."""
    variant = registry.get("zeros", "cupy", impl)
    q, k, v, s, gates = random_inputs("zeros", (2,), 150, 16, 16, "float64", seed=4)
    s = np.where(np.arange(150) % 3 == 0, 1e3, -1e3) * np.sign(s)
    do = np.ones((2, 150, 16))
    for dtype in variant.dtypes:
        args = [a.astype(dtype) for a in (q, k, v, s, gates)]
        tol = max(1e-3, variant.tolerance(dtype))
        for causal in (True, False):
            out, pull = wb.vjp(wb.zeros_attention, *args, causal=causal, backend=f"cupy:{impl}")
            grads = pull(do.astype(dtype))
            ro, ctx = ref_zeros.explicit_forward(*[a.astype(np.float64) for a in args], causal=causal)
            rg = ref_zeros.explicit_backward(ctx, do)
            for name, x, r in zip(("out", "dq", "dk", "dv", "ds", "dgates"), (out,) + grads, (ro,) + rg):
                assert x.dtype == np.dtype(dtype) and np.all(np.isfinite(x)), (dtype, causal, name)
                assert rel_error(x, r) < tol, (dtype, causal, name, rel_error(x, r))


@gpu
@pytest.mark.parametrize("op", ["linear", "decayed", "zeros"])
def test_nan_propagates(op):
    arrays = [a.astype(np.float32) for a in random_inputs(op, (1,), 100, 32, 32, "float64", seed=2)]
    arrays[2][0, 70, 3] = np.nan                     # one value entry at t = 70
    fn = OPS[op][0]
    for impl in ("naive", "chunked"):
        out = fn(*arrays, backend=f"cupy:{impl}")
        # every output row from t = 70 on sees v_70: NaN in its column 3; nothing before t = 70 does
        assert np.isnan(out[0, 70:, 3]).all() and np.isfinite(out[0, :70]).all(), impl


@gpu
def test_decayed_extreme_decay_matches_the_reference():
    """Log decays down to -30 (every 7th one 0): finite, and the float64 reference's values, forward and every
    gradient, within the variant's float32 tolerance."""
    q, k, v, g = random_inputs("decayed", (2,), 300, 32, 32, "float32", seed=1, log_decay_range=(-30.0, 0.0))
    g[:, ::7] = 0.0
    do = np.random.default_rng(1).standard_normal(v.shape).astype(np.float32)
    ref, ref_pull = wb.vjp(wb.decayed_attention, *[a.astype(np.float64) for a in (q, k, v, g)],
                           backend="numpy:explicit")
    refs = (ref,) + ref_pull(do.astype(np.float64))
    for impl in ("naive", "chunked"):
        tol = registry.get("decayed", "cupy", impl).tolerance("float32")
        out, pull = wb.vjp(wb.decayed_attention, q, k, v, g, backend=f"cupy:{impl}")
        for name, x, r in zip(("out", "dq", "dk", "dv", "dlog_decay"), (out,) + pull(do), refs):
            assert np.isfinite(x).all() and rel_error(x, r) < tol, (impl, name, rel_error(x, r))
