"""State in, state out, one token at a time, and packed sequences through the public API (workbench/state.py):
two calls with the state handed over equal one call, packed equals per sequence, the steps equal the op
token by token, and every bad argument gets a clear error."""
import dataclasses

import numpy as np
import pytest

import workbench as wb
from workbench import ops, registry, state as wst
from workbench.inputs import random_inputs, random_state

LEAD = (2, 3)
# (op, options, input kwargs)
STATE_CASES = [
    ("linear", dict(), {}),
    ("linear", dict(feature_map="elu1", normalize=True), dict(feature_map="elu1")),
    ("decayed", dict(scale=0.7), {}),
    ("zeros", dict(), dict(n_gates=3)),
]
IDS = ["linear", "linear-elu1-norm", "decayed", "zeros"]
BACKENDS = ["numpy:chunked", "numpy:explicit"]


def _inputs(op, options, inkw, T, seed=0, Dk=4, Dv=5, lead=LEAD, nseq=None):
    arrays = random_inputs(op, lead, T, Dk, Dv, "float64", seed=seed, **inkw)
    rng = np.random.default_rng(seed + 1)
    dout = rng.standard_normal((*lead, T, Dv))
    if op == "softmax":
        return arrays, None, dout, None
    slead = lead if nseq is None else (*lead, nseq)
    init = random_state(op, slead, Dk, Dv, seed=seed, normalize=options.get("normalize", False))
    dfin = wst.map_state(lambda a: rng.standard_normal(a.shape), init)
    return arrays, init, dout, dfin


def _close(a, b, tol=1e-10):
    if isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))
        return
    assert type(a) is type(b) and wst.fields(a).keys() == wst.fields(b).keys()
    for name, x in wst.fields(a).items():
        assert x.shape == getattr(b, name).shape and x.dtype == getattr(b, name).dtype, name
        _close(x, getattr(b, name), tol)


def _time_slice(arrays, a, b):
    return tuple(x[..., a:b, :] if x.ndim == len(LEAD) + 2 else x[..., a:b] for x in arrays)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,options,inkw", STATE_CASES, ids=IDS)
@pytest.mark.parametrize("split", [1, 63, 64, 65])
def test_two_calls_equal_one_call(op, options, inkw, split, backend):
    """Forward, final state and every gradient (the initial state's included) of one call over T = 130
    equal two calls split at ``split``, the first's final state handed to the second and the second's
    initial-state gradient handed back to the first's pullback."""
    fn = wb.PUBLIC_OPS[op]
    T = 130
    arrays, init, dout, dfin = _inputs(op, options, inkw, T, seed=split)
    (o, fin), pb = wb.vjp(fn, *arrays, **options, initial_state=init, return_state=True, backend=backend)
    grads = pb(dout, dfin)
    (o1, fin1), pb1 = wb.vjp(fn, *_time_slice(arrays, 0, split), **options, initial_state=init, return_state=True,
                             backend=backend)
    (o2, fin2), pb2 = wb.vjp(fn, *_time_slice(arrays, split, T), **options, initial_state=fin1, return_state=True,
                             backend=backend)
    g2 = pb2(dout[..., split:, :], dfin)
    g1 = pb1(dout[..., :split, :], g2[-1])
    _close(np.concatenate([o1, o2], -2), o)
    _close(fin2, fin)
    for a, b, full in zip(g1[:-1], g2[:-1], grads[:-1]):
        _close(np.concatenate([a, b], -2 if a.ndim == len(LEAD) + 2 else -1), full)
    _close(g1[-1], grads[-1])


@pytest.mark.parametrize("op,options,inkw", STATE_CASES, ids=IDS)
def test_packed_calls_continue_every_sequence(op, options, inkw):
    """Packed sequences of lengths (a_j + b_j) in one call equal a packed call over the first a_j tokens of
    each then a packed call over the other b_j, the states handed over sequence by sequence."""
    fn = wb.PUBLIC_OPS[op]
    a_len, b_len = (1, 63, 64, 5), (65, 1, 64, 70)
    full = tuple(np.cumsum((0,) + tuple(x + y for x, y in zip(a_len, b_len))))
    cu1, cu2 = tuple(np.cumsum((0,) + a_len)), tuple(np.cumsum((0,) + b_len))
    arrays, init, dout, dfin = _inputs(op, options, inkw, full[-1], nseq=len(a_len), seed=9)
    first = [np.arange(s, s + a) for s, a in zip(full[:-1], a_len)]
    second = [np.arange(s + a, e) for s, a, e in zip(full[:-1], a_len, full[1:])]
    idx1, idx2 = np.concatenate(first), np.concatenate(second)

    def take(x, idx):
        return np.take(x, idx, axis=-2 if x.ndim == len(LEAD) + 2 else -1)
    (o, fin), pb = wb.vjp(fn, *arrays, **options, initial_state=init, return_state=True, cu_seqlens=full)
    grads = pb(dout, dfin)
    (o1, fin1), pb1 = wb.vjp(fn, *[take(x, idx1) for x in arrays], **options, initial_state=init,
                             return_state=True, cu_seqlens=list(cu1))
    (o2, fin2), pb2 = wb.vjp(fn, *[take(x, idx2) for x in arrays], **options, initial_state=fin1,
                             return_state=True, cu_seqlens=np.asarray(cu2))
    g2 = pb2(take(dout, idx2), dfin)
    g1 = pb1(take(dout, idx1), g2[-1])
    _close(take(o, idx1), o1)
    _close(take(o, idx2), o2)
    _close(fin2, fin)
    for g, a, b in zip(grads[:-1], g1[:-1], g2[:-1]):
        _close(take(g, idx1), a)
        _close(take(g, idx2), b)
    _close(g1[-1], grads[-1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,options,inkw", STATE_CASES + [("softmax", dict(causal=False), {}),
                                                            ("softmax", dict(), {}),
                                                            ("zeros", dict(causal=False), {}),
                                                            ("linear", dict(causal=False, normalize=True,
                                                                            feature_map="relu"),
                                                             dict(feature_map="relu"))],
                         ids=IDS + ["softmax-full", "softmax", "zeros-full", "linear-full-norm"])
def test_packed_equals_each_sequence_alone(op, options, inkw, backend):
    """Lengths 1, 63, 64, 65 packed into one T axis: outputs, final states and gradients equal each sequence
    run alone (with its own initial state for the causal state ops)."""
    fn = wb.PUBLIC_OPS[op]
    cu = (0, 1, 64, 128, 193)
    stateful = op != "softmax" and options.get("causal", True)
    arrays, init, dout, dfin = _inputs(op, options, inkw, cu[-1], nseq=4, seed=2)
    kw = dict(initial_state=init, return_state=True) if stateful else {}
    out, pb = wb.vjp(fn, *arrays, **options, **kw, cu_seqlens=cu, backend=backend)
    grads = pb(dout, dfin) if stateful else pb(dout)
    for j, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        sel = (lambda s: wst.map_state(lambda x: x[..., j, *([slice(None)] * (x.ndim - len(LEAD) - 1))], s))
        kwj = dict(initial_state=sel(init), return_state=True) if stateful else {}
        outj, pbj = wb.vjp(fn, *_time_slice(arrays, a, b), **options, **kwj, backend=backend)
        gj = pbj(dout[..., a:b, :], sel(dfin)) if stateful else pbj(dout[..., a:b, :])
        if stateful:
            _close(out[0][..., a:b, :], outj[0], 1e-12)
            _close(sel(out[1]), outj[1], 1e-12)
            _close(sel(grads[-1]), gj[-1], 1e-12)
        else:
            _close(out[..., a:b, :], outj, 1e-12)
        for g, gjj in zip(grads[:len(arrays)], gj[:len(arrays)]):
            _close(_time_slice((g,), a, b)[0], gjj, 1e-12)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("op,options,inkw", STATE_CASES + [("softmax", dict(scale=0.3), {})],
                         ids=IDS + ["softmax"])
def test_steps_equal_the_op_token_by_token(op, options, inkw, dtype, tol):
    """T steps from an initial state give the op's outputs (the chunked reference, chunks of 64: T = 70
    crosses one) and its final state; softmax's step over a growing cache gives causal softmax attention."""
    T = 70
    arrays, init, _, _ = _inputs(op, options, inkw, T, seed=4)
    arrays = tuple(a.astype(dtype) for a in arrays)
    step = wb.steps.STEPS[op]
    if op == "softmax":
        o_ref, fin_ref, st = wb.softmax_attention(*arrays, **options), None, None
    else:
        init = wst.map_state(lambda a: a.astype(wst.state_dtype(dtype)), init)
        (o_ref, fin_ref), st = wb.PUBLIC_OPS[op](*arrays, **options, initial_state=init, return_state=True), init
    outs = []
    for t in range(T):
        o_t, st = step(*[x[..., t, :] if x.ndim == len(LEAD) + 2 else x[..., t] for x in arrays], st, **options)
        assert o_t.dtype == arrays[0].dtype
        outs.append(o_t)
    _close(np.stack(outs, -2), o_ref, tol)
    if op == "softmax":
        assert isinstance(st, wb.KVCache) and st.k.shape == arrays[1].shape
        np.testing.assert_array_equal(st.v, arrays[2])
    else:
        _close(st, fin_ref, tol)


def test_step_from_none_is_the_step_from_the_empty_state():
    q, k, v, s, gates = (x[..., 0, :] if x.ndim == 3 else x[..., 0] for x in random_inputs("zeros", (2,), 3, 4))
    o, st = wb.zeros_attention_step(q, k, v, s, gates)
    o2, st2 = wb.zeros_attention_step(q, k, v, s, gates, wst.empty_state("zeros", (2,), 4, 4))
    _close(o, o2, 0)
    assert np.all(st.n == 1) and np.all(st.m == s)


def test_initial_state_gradient_and_final_state_have_the_caller_layout_and_state_dtype():
    q, k, v, g = random_inputs("decayed", LEAD, 9, 4, 5, dtype="float16")
    init = random_state("decayed", (*LEAD, 2), 4, 5, dtype="float16")
    assert init.S.dtype == np.float32
    (o, fin), pb = wb.vjp(wb.decayed_attention, q, k, v, g, initial_state=init, return_state=True,
                          cu_seqlens=(0, 4, 9))
    assert o.dtype == np.float16 and fin.S.dtype == np.float32 and fin.S.shape == (*LEAD, 2, 4, 5)
    grads = pb(np.ones_like(o))                           # no dstate: the final state's gradient is zero
    assert [x.dtype for x in grads[:4]] == [np.float16] * 4
    assert isinstance(grads[4], wb.DecayedState) and grads[4].S.shape == init.S.shape
    assert grads[4].S.dtype == np.float32
    zero = pb(np.ones_like(o), wb.DecayedState(None))     # None fields are zero too
    np.testing.assert_array_equal(zero[4].S, grads[4].S)
    with pytest.raises(TypeError, match="has dtype float16; states of float16 inputs are float32"):
        wb.decayed_attention(q, k, v, g, initial_state=wst.map_state(lambda a: a.astype(np.float16), init),
                             cu_seqlens=(0, 4, 9))


def test_return_state_without_initial_state_starts_from_zero():
    q, k, v, s, gates = random_inputs("zeros", LEAD, 20, 4)
    o, fin = wb.zeros_attention(q, k, v, s, gates, return_state=True, cu_seqlens=(0, 7, 20))
    o0, fin0 = wb.zeros_attention(q, k, v, s, gates, initial_state=wst.empty_state("zeros", (*LEAD, 2), 4, 4),
                                  return_state=True, cu_seqlens=(0, 7, 20))
    _close(o, o0, 1e-12)
    _close(fin, fin0, 1e-12)
    np.testing.assert_array_equal(fin.n[..., 0], 7)
    np.testing.assert_array_equal(fin.n[..., 1], 13)
    np.testing.assert_allclose(fin.P[..., 1], s[..., 7:].sum(-1), rtol=1e-12)


# ----------------------------------------------------------------------------- errors
def _lin():
    return random_inputs("linear", LEAD, 10, 4, 5)


@pytest.mark.parametrize("cu,match", [
    ((0, 4, 4, 10), r"sequence 1 has length 0 \(a zero-length sequence"),
    ((0, 0, 10), r"sequence 0 has length 0"),
    ((0, 6, 3, 10), r"strictly increasing; sequence 1 has length -3"),
    ((1, 10), r"must start at 0 and end at T = 10"),
    ((0, 9), r"must start at 0 and end at T = 10"),
    ((0,), r"at least 2 integers"),
    ((0.0, 10.0), r"at least 2 integers"),
    (np.array([[0, 10]]), r"1-D sequence"),
    ("0,10", r"1-D sequence"),
])
@pytest.mark.parametrize("op", ["softmax", "linear"])
def test_bad_cu_seqlens_is_refused_naming_the_argument(op, cu, match):
    with pytest.raises(ValueError, match=rf"{op}_attention: argument 'cu_seqlens' .*{match}"):
        wb.PUBLIC_OPS[op](*_lin(), cu_seqlens=cu)


def test_state_needs_causal():
    q, k, v = _lin()
    for kw in (dict(return_state=True), dict(initial_state=random_state("linear", LEAD, 4, 5))):
        with pytest.raises(ValueError, match="initial_state and return_state need causal=True"):
            wb.linear_attention(q, k, v, causal=False, **kw)
    with pytest.raises(TypeError, match="unexpected keyword argument 'initial_state'"):
        wb.softmax_attention(q, k, v, initial_state=random_state("linear", LEAD, 4, 5))
    with pytest.raises(TypeError, match="'return_state' must be True or False, got 1"):
        wb.linear_attention(q, k, v, return_state=1)


def test_bad_states_are_refused_naming_the_field():
    q, k, v = _lin()
    st = random_state("linear", LEAD, 4, 5)
    cases = [
        (dict(initial_state=wst.DecayedState(st.S)), TypeError, "must be a workbench.LinearState"),
        (dict(initial_state=st.S), TypeError, "must be a workbench.LinearState"),
        (dict(initial_state=wst.LinearState(st.S[..., :4])), ValueError, r"field 'S' must have shape \(2, 3, 4, 5\)"),
        (dict(initial_state=st, cu_seqlens=(0, 5, 10)), ValueError, r"field 'S' must have shape \(2, 3, 2, 4, 5\)"),
        (dict(initial_state=wst.LinearState(st.S.astype(np.float32))), TypeError, "dtype float32; states of float64"),
        (dict(initial_state=st, normalize=True), ValueError, r"needs field 'z' \(normalize=True"),
        (dict(initial_state=wst.LinearState(st.S, np.ones((*LEAD, 4)))), ValueError, "field 'z' set"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            wb.linear_attention(q, k, v, **kw)


def test_pullback_dstate_is_checked():
    q, k, v = _lin()
    _, pb = wb.vjp(wb.linear_attention, q, k, v)
    with pytest.raises(TypeError, match="pullback: argument 'dstate' .* needs return_state=True"):
        pb(np.ones((*LEAD, 10, 5)), wst.LinearState(np.ones((*LEAD, 4, 5))))
    (o, fin), pb = wb.vjp(wb.linear_attention, q, k, v, return_state=True)
    with pytest.raises(ValueError, match=r"pullback: argument 'dstate', field 'S' must have shape"):
        pb(np.ones_like(o), wst.LinearState(np.ones((4, 5))))
    with pytest.raises(TypeError, match="pullback: argument 'dstate' must be a workbench.LinearState"):
        pb(np.ones_like(o), np.ones((*LEAD, 4, 5)))


def test_a_variant_without_the_feature_is_refused_naming_those_that_have_it():
    q, k, v = _lin()
    for kw, words in ((dict(return_state=True), "initial_state/return_state"), (dict(cu_seqlens=(0, 3, 10)),
                                                                                  "cu_seqlens")):
        having = ", ".join(v.key for v in registry.variants("linear") if
                           {"state" if "state" in words else "packed"} <= v.features)
        assert "numpy:chunked" in having and "numpy:explicit" in having
        with pytest.raises(ValueError, match=rf"backend numba:\w+ does not support {words}; variants of linear "
                                             rf"that support {words}: {having}$"):
            wb.linear_attention(q, k, v, backend="numba:chunked", **kw)


@pytest.fixture
def featureless_default():
    """A NumPy softmax variant without features, the NumPy default for float64."""
    v = registry.register(registry.Variant("softmax", "numpy", "zz_plain", wb.registry.get("softmax", "numpy").forward,
                                           wb.registry.get("softmax", "numpy").backward, default_for=("float64",)))
    yield v
    registry.unregister("softmax", "numpy", "zz_plain")


def test_auto_and_a_bare_backend_pick_a_variant_with_the_features(featureless_default):
    q, k, v = random_inputs("softmax", (2,), 10, 4)
    assert ops._make_plan("softmax", (q, k, v), dict(causal=True, scale=None), "auto").variant.key == "numpy:zz_plain"
    for backend in ("auto", "numpy"):
        plan = ops._make_plan("softmax", (q, k, v), dict(causal=True, scale=None), backend,
                              ops._Extras(cu_seqlens=(0, 4, 10)))
        assert plan.variant.key == "numpy:chunked" and plan.options["cu_seqlens"] == (0, 4, 10)
    with pytest.raises(ValueError, match="backend numpy:zz_plain does not support cu_seqlens"):
        wb.softmax_attention(q, k, v, backend="numpy:zz_plain", cu_seqlens=(0, 4, 10))


def test_plans_are_cached_per_offsets_and_state_layout():
    q, k, v = _lin()
    st = random_state("linear", (*LEAD, 2), 4, 5)
    wb.linear_attention(q, k, v, initial_state=st, cu_seqlens=(0, 3, 10))
    n = len(ops._PLANS)
    wb.linear_attention(q, k, v, initial_state=dataclasses.replace(st, S=st.S + 1), cu_seqlens=[0, 3, 10])
    wb.linear_attention(q, k, v, initial_state=st, cu_seqlens=(0, 3, 10))
    assert len(ops._PLANS) == n + 1                       # the list is another key, the values are not
    a = wb.linear_attention(q, k, v, cu_seqlens=(0, 3, 10))
    b = wb.linear_attention(q, k, v, cu_seqlens=(0, 4, 10))
    assert not np.allclose(a, b)                          # other offsets: another plan, another result
    np.testing.assert_array_equal(a[..., :3, :], b[..., :3, :])


def test_step_errors_name_the_argument():
    q, k, v, g = (x[..., 0, :] if x.ndim == 4 else x[..., 0] for x in random_inputs("decayed", LEAD, 2, 4, 5))
    with pytest.raises(ValueError, match=r"decayed_attention_step: argument 'log_decay' must have shape \(2, 3\)"):
        wb.decayed_attention_step(q, k, v, g[..., :1])
    with pytest.raises(ValueError, match="decayed_attention_step: argument 'log_decay' must be <= 0"):
        wb.decayed_attention_step(q, k, v, np.abs(g) + 1)
    with pytest.raises(ValueError, match=r"decayed_attention_step: argument 'state', field 'S' must have shape"):
        wb.decayed_attention_step(q, k, v, g, wst.DecayedState(np.zeros((4, 5))))
    with pytest.raises(ValueError, match=r"argument 'k' must have shape"):
        wb.linear_attention_step(q, k[..., :2], v)
    with pytest.raises(ValueError, match=r"cache field 'v' must have shape"):
        wb.softmax_attention_step(q, k, v, wb.KVCache(np.zeros((*LEAD, 3, 4)), np.zeros((*LEAD, 2, 5))))
    with pytest.raises(TypeError, match="must be a workbench.KVCache"):
        wb.softmax_attention_step(q, k, v, (np.zeros((*LEAD, 3, 4)), np.zeros((*LEAD, 3, 5))))
