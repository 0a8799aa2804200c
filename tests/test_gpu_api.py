"""Array kinds on a GPU machine: CuPy in gives CuPy out for every backend, NumPy in gives NumPy out."""
import numpy as np
import pytest

import workbench as wb
from workbench import backends, registry
from workbench.check import rel_error
from workbench.registry import TOLERANCE
from workbench.inputs import random_inputs

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    mod = backends.cupy_module()
    if mod is None:
        pytest.skip("needs CuPy and a GPU")
    return mod


@pytest.mark.parametrize("op", registry.OPS)
def test_cupy_in_cupy_out_for_every_usable_variant(cp, op):
    """Every usable float32 variant, given CuPy arrays, returns CuPy float32 output and gradients whose values
    are the float64 explicit reference's (relative error within the float32 tolerance, or the tf32 one for
    variants tagged tf32)."""
    args = random_inputs(op, (2,), 40, 16, 8, "float32", seed=1)
    do = np.random.default_rng(2).standard_normal((2, 40, 8)).astype(np.float32)
    ref, ref_pullback = wb.vjp(wb.PUBLIC_OPS[op], *[a.astype(np.float64) for a in args], backend="numpy:explicit")
    refs = (ref,) + ref_pullback(do.astype(np.float64))
    names = ("out",) + tuple("d" + n for n in registry.ARRAY_ARGS[op])
    checked = []
    for v in registry.variants(op):
        if not backends.status(v.backend)[0] or "float32" not in v.dtypes:
            continue
        tol = v.ceiling("float32")             # the float32 tolerance; tf32-tagged variants: the tf32 one
        out, pb = wb.vjp(wb.PUBLIC_OPS[op], *[cp.asarray(a) for a in args], backend=v.key)
        for name, x, r in zip(names, (out,) + pb(cp.asarray(do)), refs):
            assert isinstance(x, cp.ndarray) and x.dtype == np.float32 and x.shape == r.shape, (v.key, name)
            err = rel_error(x.get(), r)
            assert err < tol, (v.key, name, err)
        checked.append(v.key)
    assert any(k.startswith("cupy:") for k in checked), checked


def test_auto_backend_follows_the_array_kind(cp):
    args = random_inputs("softmax", (2,), 33, 16, seed=2)
    out = wb.softmax_attention(*[cp.asarray(a) for a in args])          # auto: the CuPy default variant
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(out.get(), wb.softmax_attention(*args), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="mixed array kinds"):
        wb.softmax_attention(cp.asarray(args[0]), *args[1:])


@pytest.mark.parametrize("op", registry.OPS)
def test_auto_backend_runs_float64_cupy_arrays_on_a_float64_gpu_kernel(cp, op):
    args = random_inputs(op, (2,), 37, 16, 8, "float64", seed=3)
    out, pb = wb.vjp(wb.PUBLIC_OPS[op], *[cp.asarray(a) for a in args])
    assert isinstance(out, cp.ndarray) and out.dtype == np.float64
    ref, pb_ref = wb.vjp(wb.PUBLIC_OPS[op], *args, backend="numpy:explicit")
    assert rel_error(out.get(), ref) < TOLERANCE["float64"]          # float64 accuracy: not a float32 kernel
    do = np.random.default_rng(0).standard_normal(ref.shape)
    for g, r in zip(pb(cp.asarray(do)), pb_ref(do)):
        assert isinstance(g, cp.ndarray) and g.dtype == np.float64
        assert rel_error(g.get(), r) < TOLERANCE["float64"]


def test_positive_log_decay_on_cupy_is_refused_under_device_checks(cp):
    """CuPy values are checked only under device_checked() (a reduction and a sync per call)."""
    q, k, v, g = (cp.asarray(a) for a in random_inputs("decayed", (2,), 40, 16, 8, "float32", seed=4))
    g[1, 5] = 0.5
    wb.decayed_attention(q, k, v, g)                 # the fast path does not sync to look at the values
    with backends.device_checked():
        with pytest.raises(ValueError, match="decayed_attention: argument 'log_decay' must be <= 0"):
            wb.decayed_attention(q, k, v, g)
        g[1, 5] = -cp.inf                            # a reset is legal
        wb.decayed_attention(q, k, v, g)


def test_pullback_refuses_another_dtype_on_cupy(cp):
    args = [cp.asarray(a) for a in random_inputs("softmax", (2,), 33, 16, 8, "float32", seed=5)]
    out, pb = wb.vjp(wb.softmax_attention, *args)
    with pytest.raises(TypeError, match="'dout' has dtype float64; expected float32"):
        pb(cp.ones(out.shape, cp.float64))
    with pytest.raises(TypeError, match="'dout' is a numpy array"):
        pb(np.ones(out.shape, np.float32))


def test_outputs_of_repeated_calls_are_fresh_arrays(cp):
    """Plans are cached per signature; every call still returns its own output and gradients."""
    for op in registry.OPS:
        args = [cp.asarray(a) for a in random_inputs(op, (2,), 70, 16, 8, "float32", seed=6)]
        a, pa = wb.vjp(wb.PUBLIC_OPS[op], *args)
        b, pb = wb.vjp(wb.PUBLIC_OPS[op], *args)
        assert a.data.ptr != b.data.ptr
        cp.testing.assert_array_equal(a, b)
        ga, gb = pa(cp.ones_like(a)), pb(cp.ones_like(b))
        assert all(x.data.ptr != y.data.ptr for x, y in zip(ga, gb))


def _leading_dims_variants():
    return [pytest.param(v, id=v.key) for op in registry.OPS for v in registry.variants(op, "cupy") if v.leading_dims]


@pytest.mark.parametrize("variant", _leading_dims_variants())
def test_variants_that_take_leading_dims_through_the_api(cp, variant):
    """A variant that takes leading dims (registry.Variant.leading_dims) gets the caller's (2, 3, T, D) arrays
    unflattened: output and every gradient of the caller's shapes and the float64 reference's values, with an
    initial and a final state where the variant implements them (workbench.check.compare, the check cell)."""
    from workbench import check
    dtype = next((d for d in variant.dtypes if d != "bfloat16"), variant.dtypes[0])   # bfloat16-only variants too
    r = check.compare(variant.op, variant.key, (2, 3), 70, 16, 24, dtype, causal=True,
                      state="state" in variant.features, packed=False)
    assert r["ok"], r
