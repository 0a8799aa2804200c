"""The public API: shapes, dtypes, array kinds, backends, and clear errors for bad input."""
import numpy as np
import pytest

import workbench as wb
from workbench import registry
from workbench.inputs import random_inputs


def _args(op, lead=(2,), T=6, Dk=4, Dv=3, dtype="float64"):
    return list(random_inputs(op, lead, T, Dk, Dv, dtype, seed=0))


@pytest.mark.parametrize("op", registry.OPS)
@pytest.mark.parametrize("lead", [(), (3,), (2, 3), (2, 1, 2)])
def test_leading_dims_shapes_and_dtypes(op, lead):
    fn = wb.PUBLIC_OPS[op]
    for dtype in ("float32", "float64"):
        args = _args(op, lead, 7, 5, 3, dtype)
        out, pb = wb.vjp(fn, *args)
        assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == (*lead, 7, 3)
        grads = pb(np.ones_like(out))
        assert [g.shape for g in grads] == [a.shape for a in args]
        assert all(g.dtype == dtype for g in grads)
        # leading dims are independent problems: the flat result equals the per-index one
        if lead:
            first = [a[(0,) * len(lead)] for a in args]
            np.testing.assert_allclose(fn(*first), out[(0,) * len(lead)], rtol=1e-5)


@pytest.mark.parametrize("op", registry.OPS)
def test_public_op_equals_explicit_reference(op):
    """What a user gets from `import workbench as wb` is the reference's number."""
    fn = wb.PUBLIC_OPS[op]
    args = _args(op, (2, 2), 33, 8, 8)
    np.testing.assert_allclose(fn(*args), fn(*args, backend="numpy:explicit"), rtol=1e-10, atol=1e-12)


def test_vjp_defaults_match_the_op():
    q, k, v = _args("softmax")
    out, _ = wb.vjp(wb.softmax_attention, q, k, v)
    np.testing.assert_array_equal(out, wb.softmax_attention(q, k, v))
    out, _ = wb.vjp(wb.softmax_attention, q, k, v, causal=False, scale=0.3)
    np.testing.assert_array_equal(out, wb.softmax_attention(q, k, v, causal=False, scale=0.3))


def test_float16_on_numpy_is_computed_in_float32():
    q, k, v = _args("linear", dtype="float16")
    out = wb.linear_attention(q, k, v)
    assert out.dtype == np.float16


# ----------------------------------------------------------------------------- bad input
def test_wrong_rank_or_mismatched_shapes_name_the_argument():
    q, k, v = _args("softmax")
    with pytest.raises(ValueError, match="'q'"):
        wb.softmax_attention(q[0, 0], k, v)
    with pytest.raises(ValueError, match="'k'"):
        wb.softmax_attention(q, k[:, :-1], v)
    with pytest.raises(ValueError, match="'k'"):
        wb.softmax_attention(q, k[..., :-1], v)
    with pytest.raises(ValueError, match="'v'"):
        wb.softmax_attention(q, k, v[:, :-1])
    with pytest.raises(ValueError, match="'v'"):
        wb.softmax_attention(q, k, v[None])
    with pytest.raises(ValueError, match="'k'"):      # no silent broadcasting of leading dims
        wb.softmax_attention(q, k[:1], v)


def test_decay_and_zeros_extra_arguments_are_checked():
    q, k, v, g = _args("decayed")
    with pytest.raises(ValueError, match="'log_decay'"):
        wb.decayed_attention(q, k, v, g[:, :-1])
    with pytest.raises(ValueError, match="'log_decay'"):
        wb.decayed_attention(q, k, v, g[..., None])
    q, k, v, s, gates = _args("zeros")
    with pytest.raises(ValueError, match="'s'"):
        wb.zeros_attention(q, k, v, s[:1], gates)
    with pytest.raises(ValueError, match="'gates'"):
        wb.zeros_attention(q, k, v, s, np.concatenate([gates, gates], -1))      # last dim 4
    with pytest.raises(ValueError, match="'gates'"):
        wb.zeros_attention(q, k, v, s, gates[..., :1])
    with pytest.raises(ValueError, match="'gates'"):
        wb.zeros_attention(q, k, v, s, gates[:, :-1])


@pytest.mark.parametrize("bad", ["int64", "int32", "complex128", "bool"])
def test_non_float_dtypes_are_rejected(bad):
    q, k, v = _args("softmax")
    with pytest.raises(TypeError, match="'q'.*dtype"):
        wb.softmax_attention(q.astype(bad), k, v)


def test_mixed_dtypes_and_non_arrays_are_rejected():
    q, k, v = _args("softmax")
    with pytest.raises(TypeError, match="mixed dtypes"):
        wb.softmax_attention(q.astype(np.float32), k, v)
    with pytest.raises(TypeError, match="'q'"):
        wb.softmax_attention(q.tolist(), k, v)


def test_decayed_is_always_causal():
    with pytest.raises(ValueError, match="causal=False"):
        wb.decayed_attention(*_args("decayed"), causal=False)


def test_bad_options():
    q, k, v = _args("linear")
    with pytest.raises(ValueError, match="feature_map"):
        wb.linear_attention(q, k, v, feature_map="softplus")
    with pytest.raises(ValueError, match="eps"):
        wb.linear_attention(q, k, v, eps=-1.0)
    with pytest.raises(TypeError, match="causal"):
        wb.softmax_attention(q, k, v, causal="yes")


def test_unknown_backend_or_variant_lists_what_is_available():
    q, k, v = _args("softmax")
    with pytest.raises(ValueError, match="unknown backend 'jax'.*numpy:chunked"):
        wb.softmax_attention(q, k, v, backend="jax")
    with pytest.raises(ValueError, match="unknown variant numpy:fast.*numpy:explicit"):
        wb.softmax_attention(q, k, v, backend="numpy:fast")


@pytest.mark.skipif(wb.backends.cupy_module() is not None, reason="this machine has a GPU")
def test_gpu_backend_without_gpu_is_a_clear_error():
    q, k, v = _args("softmax")
    cupy_variants = registry.variants("softmax", "cupy")
    if not cupy_variants:
        pytest.skip("no cupy variant registered")
    with pytest.raises(wb.BackendUnavailable, match="cupy.*cannot run here"):
        wb.softmax_attention(q, k, v, backend="cupy")


def test_gpu_backend_without_gpu_is_a_clear_error_numba(monkeypatch):
    """Numba with neither a GPU nor the simulator: a clear error naming the backend."""
    from workbench import backends
    if not registry.variants("softmax", "numba"):
        pytest.skip("no numba variant registered")
    monkeypatch.setattr(backends, "numba_cuda_status", lambda: (False, "no CUDA GPU found"))
    q, k, v = _args("softmax")
    with pytest.raises(wb.BackendUnavailable, match="'numba' cannot run here: no CUDA GPU"):
        wb.softmax_attention(q, k, v, backend="numba")


def test_pullback_checks_dout():
    q, k, v = _args("softmax")
    out, pb = wb.vjp(wb.softmax_attention, q, k, v)
    with pytest.raises(ValueError, match="'dout'"):
        pb(out[:, :-1])
    with pytest.raises(TypeError, match="'dout'"):
        pb(out.tolist())


def test_vjp_rejects_non_ops_and_wrong_arity():
    q, k, v = _args("softmax")
    with pytest.raises(TypeError, match="not a workbench op"):
        wb.vjp(np.add, q, k)
    with pytest.raises(TypeError, match="takes 3 arrays"):
        wb.vjp(wb.softmax_attention, q, k)


def test_non_contiguous_inputs_are_fine():
    q, k, v = _args("softmax", (2,), 8, 4, 4)
    qt = np.ascontiguousarray(q.transpose(1, 0, 2)).transpose(1, 0, 2)   # same values, strided
    assert not qt.flags.c_contiguous
    np.testing.assert_array_equal(wb.softmax_attention(qt, k, v), wb.softmax_attention(q, k, v))


def test_every_variant_is_registered_once_with_a_default_per_backend():
    for op in registry.OPS:
        by_backend = {}
        for v in registry.variants(op):
            by_backend.setdefault(v.backend, []).append(v)
        assert "numpy" in by_backend
        for b, vs in by_backend.items():
            assert sum(v.default for v in vs) == 1, (op, b)
            assert len({v.name for v in vs}) == len(vs)


def test_backend_default_can_depend_on_dtype():
    """"cupy" alone picks the tensor-core softmax for float16 (4x faster than cupy:flash on the H100) and the
    CUDA-core one for float32, which the tensor-core kernels do not take."""
    from workbench import registry
    assert registry.get("softmax", "cupy", dtype="float16").name == "fa2"
    assert registry.get("softmax", "cupy", dtype="float32").name == "flash"
    assert registry.get("softmax", "cupy").name == "flash"
    assert registry.get("linear", "cupy", dtype="float16").name == "chunked"
