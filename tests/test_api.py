"""The public API: shapes, dtypes, array kinds, backends, and clear errors for bad input."""
import numpy as np
import pytest

import workbench as wb
from workbench import registry
from workbench.check import rel_error
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


@pytest.mark.parametrize("op", registry.OPS)
def test_float16_on_numpy_is_computed_in_float32(op):
    """float16 in, float16 out, and every value is the float32 computation rounded once to float16 (not a
    float16 computation: over T = 300 its sums would be off by far more than one float16 rounding)."""
    fn = wb.PUBLIC_OPS[op]
    args16 = _args(op, (2,), 300, 16, 8, dtype="float16")
    do16 = np.random.default_rng(1).standard_normal((2, 300, 8)).astype(np.float16)
    out, pb = wb.vjp(fn, *args16)                                  # auto: numpy:chunked
    out32, pb32 = wb.vjp(fn, *[a.astype(np.float32) for a in args16])
    ref, pb_ref = wb.vjp(fn, *[a.astype(np.float64) for a in args16], backend="numpy:explicit")
    for x, x32, r in zip((out,) + pb(do16), (out32,) + pb32(do16.astype(np.float32)),
                         (ref,) + pb_ref(do16.astype(np.float64))):
        assert x.dtype == np.float16
        np.testing.assert_array_equal(x, x32.astype(np.float16))
        assert rel_error(x, r) < 1e-3                                    # float16 rounding, ~3e-4


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
    """"cupy" alone picks the tensor-core softmax for float16 (4x faster than cupy:flash on the H100) and its
    3xTF32 form for float32 (1.6-1.7x faster than cupy:flash on the H200 at float32 accuracy); with no dtype,
    the CUDA-core one, which takes every dtype."""
    from workbench import registry
    assert registry.get("softmax", "cupy", dtype="float16").name == "fa2"
    assert registry.get("softmax", "cupy", dtype="float32").name == "fa2_3xtf32"
    assert registry.get("softmax", "cupy").name == "flash"
    # linear: the walkers on warpgroup MMA in 16 bits (its mma.sync kernels elsewhere), the REV sums in dq
    assert [registry.get("linear", "cupy", dtype=d).name for d in ("float16", "bfloat16", "float32")] == \
        ["chunked_mma_wgb", "chunked_mma_wgb", "chunked_mma_dqr"]
    # decayed: float16 the dk/dv walker on warpgroup MMA, bfloat16 the anchored 16-bit core, float32 the REV sums in
    # the dq walker
    assert [registry.get("decayed", "cupy", dtype=d).name for d in ("float16", "bfloat16", "float32")] == \
        ["chunked_mma_wgk", "chunked_mma", "chunked_mma_dqr"]


def test_a_default_that_cannot_take_the_inputs_falls_back(monkeypatch):
    """Head dims above the tensor-core variants' 128: "cupy" alone falls back to a variant that takes them; a
    named variant is refused."""
    from workbench import backends, ops, registry
    monkeypatch.setattr(backends, "status", lambda b: (True, "pretend"))
    shapes = {"q": (2, 70, 200), "k": (2, 70, 200), "v": (2, 70, 200)}
    opts = dict(causal=True, feature_map="identity", normalize=False, scale=1.0, eps=1e-6)
    small = {n: (2, 70, 64) for n in shapes}
    assert ops._pick_variant("linear", "cupy", "cupy", "float16", opts, small).name == "chunked_mma_wgb"
    assert ops._pick_variant("linear", "cupy", "cupy", "float16", opts, shapes).name == "chunked"
    with pytest.raises(ValueError, match="cupy:chunked_mma does not support these inputs: head dims up to 128"):
        ops._pick_variant("linear", "cupy:chunked_mma", "cupy", "float16", opts, shapes)


# ----------------------------------------------------------------------------- input contract
def test_positive_log_decay_is_refused_and_minus_inf_is_legal():
    q, k, v, g = _args("decayed")
    wb.decayed_attention(q, k, v, g)                     # the plan of this signature is now cached
    bad = g.copy()
    bad[1, 3] = 0.25
    with pytest.raises(ValueError, match=r"decayed_attention: argument 'log_decay' must be <= 0.*0\.25"):
        wb.decayed_attention(q, k, v, bad)               # values are checked on every call, cached plan or not
    with pytest.raises(ValueError, match="'log_decay'"):
        wb.vjp(wb.decayed_attention, q, k, v, np.full_like(g, np.inf))
    reset = g.copy()
    reset[:, 2] = -np.inf                                # an exact reset of the state: accepted
    wb.vjp(wb.decayed_attention, q, k, v, reset)


def test_matrix_and_masked_arrays_are_refused():
    q, k, v = (a[0] for a in _args("softmax"))           # 2-D: (T, D)
    with pytest.raises(TypeError, match=r"softmax_attention: argument 'q'.*numpy\.matrix"):
        wb.softmax_attention(np.matrix(q), k, v)
    with pytest.raises(TypeError, match=r"softmax_attention: argument 'k'.*masked array"):
        wb.softmax_attention(q, np.ma.masked_array(k, mask=k > 1), v)
    out, pb = wb.vjp(wb.softmax_attention, q, k, v)
    with pytest.raises(TypeError, match="'dout'.*masked array"):
        pb(np.ma.masked_array(out))


def test_non_native_byte_order_is_accepted_and_converted():
    args = _args("zeros", dtype="float32")
    swapped = [a.astype(a.dtype.newbyteorder("S")) for a in args]
    assert not swapped[0].dtype.isnative
    out, pb = wb.vjp(wb.zeros_attention, *swapped)
    ref, pb_ref = wb.vjp(wb.zeros_attention, *args)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, ref)
    dout = np.ones_like(ref)
    for g, r in zip(pb(dout.astype(dout.dtype.newbyteorder("S"))), pb_ref(dout)):
        assert g.dtype == np.float32 and g.dtype.isnative
        np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("bad", ["float64", "int64", "float16"])
def test_pullback_refuses_a_dout_of_another_dtype(bad):
    q, k, v = _args("linear", dtype="float32")
    out, pb = wb.vjp(wb.linear_attention, q, k, v)
    with pytest.raises(TypeError, match=f"linear_attention pullback: argument 'dout' has dtype {bad}; "
                                        f"expected float32"):
        pb(np.ones(out.shape, bad))
    assert all(g.dtype == np.float32 for g in pb(np.ones_like(out)))


def test_unknown_options_name_the_op():
    q, k, v = _args("softmax")
    with pytest.raises(TypeError, match=r"vjp: softmax_attention got unexpected keyword argument\(s\) 'foo'"):
        wb.vjp(wb.softmax_attention, q, k, v, foo=1)
    with pytest.raises(TypeError, match="softmax_attention.*'foo'"):
        wb.softmax_attention(q, k, v, foo=1)


def test_dtype_error_says_float16_is_fine_on_numpy():
    q, k, v = _args("softmax")
    with pytest.raises(TypeError, match=r"expected a floating dtype \(float16, float32 or float64") as e:
        wb.softmax_attention(q.astype(np.int32), k, v)
    assert "GPU" not in str(e.value)
    assert wb.softmax_attention(*(a.astype(np.float16) for a in (q, k, v))).dtype == np.float16


@pytest.mark.parametrize("call, op", [
    (lambda q, k, v: wb.softmax_attention(q, k, v, backend="jax"), "softmax"),
    (lambda q, k, v: wb.linear_attention(q, k, v, backend=3), "linear"),
    (lambda q, k, v: wb.linear_attention(q, k, v, scale="x"), "linear"),
    (lambda q, k, v: wb.softmax_attention(q, k, v, backend="numpy:fast"), "softmax"),
    (lambda q, k, v: wb.zeros_attention(q, k, v, q[..., 0], q[..., :2], backend="numpy:explicit", causal=2), "zeros"),
    (lambda q, k, v: wb.vjp(wb.linear_attention, q, k, v)[1](v[..., :1]), "linear"),
    (lambda q, k, v: wb.vjp(wb.softmax_attention, q, k, v)[1]([1.0]), "softmax"),
])
def test_every_error_names_the_op(call, op):
    q, k, v = _args("softmax")
    with pytest.raises((TypeError, ValueError)) as e:
        call(q, k, v)
    assert f"{op}_attention" in str(e.value)


# ----------------------------------------------------------------------------- plans
def test_a_cached_plan_does_not_skip_validation_of_other_signatures():
    q, k, v = _args("softmax")
    wb.softmax_attention(q, k, v, causal=True)
    with pytest.raises(TypeError, match="causal"):       # 1 == True, but the key tells them apart
        wb.softmax_attention(q, k, v, causal=1)
    with pytest.raises(TypeError, match="mixed dtypes"):
        wb.softmax_attention(q, k, v.astype(np.float32))
    from workbench import ops
    assert ops._opt_key(0.0) != ops._opt_key(-0.0)      # -0.0 == 0.0 too
    assert ops._opt_key(np.float32(0.0)) != ops._opt_key(np.float32(-0.0))


def test_plans_are_reused_and_outputs_are_fresh():
    from workbench import ops
    q, k, v = _args("linear", (3,), 9, 4, 4)
    a = wb.linear_attention(q, k, v)
    n = len(ops._PLANS)
    b = wb.linear_attention(q * 2, k, v)
    assert len(ops._PLANS) == n                          # same signature: no new plan
    assert a is not b and not np.shares_memory(a, b)
    np.testing.assert_allclose(b, 2 * a, rtol=1e-12)


def test_auto_picks_a_gpu_variant_that_takes_the_dtype(monkeypatch):
    """CuPy arrays: the CuPy default for the dtype, Numba's (CuPy arrays without a copy) for float64; an error
    naming the variants that take the dtype when none can run here."""
    from workbench import backends, ops
    if not registry.variants("softmax", "cupy") or not registry.variants("softmax", "numba"):
        pytest.skip("needs the cupy and numba variants registered")
    monkeypatch.setattr(backends, "status", lambda b: (True, "pretend"))
    monkeypatch.setattr(backends, "numba_simulator", lambda: False)
    for dtype in ("float32", "float16"):                 # the CuPy backend's default for the dtype
        assert ops._auto_variant("softmax", "cupy", dtype) is registry.get("softmax", "cupy", dtype=dtype)
    assert ops._auto_variant("softmax", "cupy", "float16").key != ops._auto_variant("softmax", "cupy", "float32").key
    for op in registry.OPS:
        v = ops._auto_variant(op, "cupy", "float64")
        assert v.backend == "numba" and "float64" in v.dtypes and v.array_kind == "any"
        assert ops._auto_variant(op, "numpy", "float64").key == "numpy:chunked"
    monkeypatch.setattr(backends, "status", lambda b: (b != "numba", "no CUDA GPU"))
    with pytest.raises(TypeError, match=r"softmax_attention: no cupy/numba variant can take cupy arrays of dtype "
                                        r"float64.*numba:flash, numba:naive.*numba: no CUDA GPU"):
        ops._auto_variant("softmax", "cupy", "float64")


def test_registering_a_variant_drops_cached_plans(monkeypatch):
    from workbench import ops
    q, k, v = _args("linear")
    assert wb.linear_attention(q, k, v, backend="numpy") is not None
    before = registry.get("linear", "numpy", dtype="float64")
    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))
    monkeypatch.setattr(registry, "_VIEWS", {})
    marker = np.zeros((2, 6, 3))
    registry.register(registry.Variant("linear", "numpy", "zz_first", lambda *a, **o: (marker, None),
                                       lambda c, d: None, default_for=("float64",)))
    assert wb.linear_attention(q, k, v, backend="numpy") is marker       # the new default, not a stale plan
    assert before.name == "chunked"
    ops._PLANS.clear()


@pytest.mark.parametrize("leading_dims", [False, True])
def test_a_variant_that_takes_leading_dims_gets_the_callers_arrays(monkeypatch, leading_dims):
    """registry.Variant.leading_dims: the ops hand such a variant the caller's arrays (no reshape) and take its
    outputs as they come; any other variant sees (N, T, D) arrays.  Either way the caller gets its own shapes
    and the reference's values."""
    from workbench import ops
    ref = registry.get("softmax", "numpy", "explicit")
    seen = []

    def forward(q, k, v, **o):
        seen.append(("fwd", q, k, v))
        return ref.forward(q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]),
                           v.reshape(-1, *v.shape[-2:]), **o)[0].reshape(q.shape[:-1] + v.shape[-1:]), (q, k, v, o)

    def backward(ctx, do):
        q, k, v, o = ctx
        seen.append(("bwd", do))
        flat = [x.reshape(-1, *x.shape[-2:]) for x in (q, k, v)]
        _, c = ref.forward(*flat, **o)
        grads = ref.backward(c, do.reshape(-1, *do.shape[-2:]))
        return tuple(g.reshape(x.shape) for g, x in zip(grads, (q, k, v)))
    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))
    monkeypatch.setattr(registry, "_VIEWS", {})
    registry.register(registry.Variant("softmax", "numpy", "zz_lead", forward, backward, leading_dims=leading_dims))
    q, k, v = random_inputs("softmax", (2, 3), 5, 4, 6, "float64", seed=0)
    do = np.random.default_rng(1).standard_normal((2, 3, 5, 6))
    try:
        out, pb = wb.vjp(wb.softmax_attention, q, k, v, backend="numpy:zz_lead")
        grads = pb(do)
    finally:
        ops._PLANS.clear()
    want_out, want_pb = wb.vjp(wb.softmax_attention, q, k, v, backend="numpy:explicit")
    assert out.shape == (2, 3, 5, 6) and rel_error(out, want_out) < 1e-12
    assert all(g.shape == x.shape and rel_error(g, w) < 1e-12 for g, x, w in zip(grads, (q, k, v), want_pb(do)))
    (_, fq, fk, fv), (_, fdo) = seen
    if leading_dims:
        assert fq is q and fk is k and fv is v and fdo is do          # the caller's arrays, not views of them
    else:
        assert fq.shape == fk.shape == (6, 5, 4) and fv.shape == fdo.shape == (6, 5, 6)


def test_ops_layer_cost_script_restores_the_variants(capsys):
    """scripts/ops_layer_cost.py (#10's CPU goal) times every op with its NumPy variant stubbed out, then puts the
    variant back: the public ops compute again afterwards."""
    from script_modules import load_script
    mod = load_script("ops_layer_cost")
    assert mod.main(["--calls", "5", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["softmax", "linear", "decayed", "zeros"]
    import workbench as wb
    from workbench.inputs import random_inputs
    q, k, v = random_inputs("linear", (1, 1), 3, 4, 4, "float32", seed=1)
    out = wb.linear_attention(q, k, v)
    ref = np.einsum("...ts,...sd->...td", np.tril(np.einsum("...td,...sd->...ts", q, k)), v)
    assert np.allclose(out, ref, atol=1e-5)
