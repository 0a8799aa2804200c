"""The NumPy references with an initial state, a returned state and packed sequences (``cu_seqlens``):
every new gradient (the initial state's included) against central differences in float64, the linear-time
form against the explicit one, two calls with the state handed over against one call, packed against one
sequence at a time."""
import dataclasses

import numpy as np
import pytest

from workbench import state as wst
from workbench.inputs import default_options, random_inputs, random_state
from workbench.reference import decayed, linear, softmax, zeros

MODS = dict(softmax=softmax, linear=linear, decayed=decayed, zeros=zeros)

# (op, options, input kwargs, causal values)
CASES = [
    ("softmax", dict(scale=0.7), {}, (True, False)),
    ("linear", dict(feature_map="identity", normalize=False, scale=0.8), {}, (True, False)),
    ("linear", dict(feature_map="elu1", normalize=True), dict(feature_map="elu1"), (True, False)),
    ("linear", dict(feature_map="relu", normalize=True, eps=0.1), dict(feature_map="relu"), (True,)),
    ("linear", dict(feature_map="elu1", normalize=False), dict(feature_map="elu1"), (True,)),
    ("decayed", dict(scale=0.9), {}, (True,)),
    ("decayed", dict(), dict(log_decay_range=(-30.0, 0.0)), (True,)),
    ("zeros", dict(), dict(n_gates=2), (True, False)),
    ("zeros", dict(), dict(n_gates=3), (True,)),
]
CU = (0, 1, 4, 9)          # a sequence of length 1, then 3, then 5
T = CU[-1]
# (initial state, packed, return state)
MODES = [(True, False, True), (False, True, False), (True, True, True), (False, False, True),
         (False, True, True), (True, True, False)]


def _cases(causal_only=False):
    out = []
    for op, opts, inkw, causals in CASES:
        for causal in causals:
            for st, packed, ret in MODES:
                stateful = st or ret
                if (stateful and (op == "softmax" or not causal)) or (not stateful and not packed):
                    continue
                if causal_only and not causal:
                    continue
                out.append(pytest.param(op, opts, inkw, causal, st, packed, ret,
                                        id=f"{op}-{'-'.join(f'{k}={v}' for k, v in {**opts, **inkw}.items())}"
                                           f"-{'causal' if causal else 'full'}{'-state' if st else ''}"
                                           f"{'-packed' if packed else ''}{'-ret' if ret else ''}"))
    return out


def _options(op, opts, causal):
    o = default_options(op, causal=causal, **opts)
    if op == "decayed":
        o.pop("causal", None)
    if op == "softmax" and o["scale"] is None:
        o["scale"] = 0.5
    return o


def _problem(op, opts, inkw, causal, st, packed, ret, T=T, cu=CU, seed=0, N=2, Dk=3, Dv=4):
    arrays = random_inputs(op, (N,), T, Dk, Dv, "float64", seed=seed, **inkw)
    options = _options(op, opts, causal)
    nseq = len(cu) - 1 if packed else 1
    init = random_state(op, (N, nseq), Dk, Dv, seed=seed, normalize=options.get("normalize", False)) if st else None
    rng = np.random.default_rng(seed + 5)
    dout = rng.standard_normal((N, T, Dv))
    dfin = None
    if ret:
        tmpl = random_state(op, (N, nseq), Dk, Dv, seed=seed + 1, normalize=options.get("normalize", False))
        dfin = wst.map_state(lambda a: rng.standard_normal(a.shape), tmpl)
    return arrays, options, init, (cu if packed else None), dout, dfin


def _call(mod, form, arrays, options, init, cu, ret, dout, dfin, chunk=None):
    """(out, final state or None, grads (arrays..., initial state's gradient if any))."""
    fwd, bwd = ((mod.explicit_forward, mod.explicit_backward) if form == "explicit" else
                (mod.tiled_forward, mod.tiled_backward) if mod is softmax else
                (mod.chunked_forward, mod.chunked_backward))
    kw = dict(options)
    if chunk is not None:
        kw["block" if mod is softmax else "chunk"] = chunk
    if cu is not None:
        kw["cu_seqlens"] = cu
    if init is not None:
        kw["initial_state"] = init
    if ret:
        kw["return_state"] = True
    res, ctx = fwd(*arrays, **kw)
    out, fin = res if ret else (res, None)
    grads = bwd(ctx, dout, dfin) if ret else bwd(ctx, dout)
    return out, fin, grads


def _loss(out, fin, dout, dfin):
    f = float(np.sum(out * dout))
    if fin is not None:
        f += sum(float(np.sum(x * wst.fields(dfin)[n])) for n, x in wst.fields(fin).items())
    return f


@pytest.mark.parametrize("op,opts,inkw,causal,st,packed,ret", _cases())
def test_explicit_gradients_match_central_differences(op, opts, inkw, causal, st, packed, ret):
    """<grad, u> against (L(x + hu) - L(x - hu)) / 2h for a random direction u per array argument and per
    field of the initial state, L = sum(out * dout) + sum over the final state's fields of <field, dfield>."""
    mod = MODS[op]
    arrays, options, init, cu, dout, dfin = _problem(op, opts, inkw, causal, st, packed, ret)
    out, fin, grads = _call(mod, "explicit", arrays, options, init, cu, ret, dout, dfin)
    assert (fin is not None) == ret
    assert len(grads) == len(arrays) + (init is not None)
    rng = np.random.default_rng(7)
    h = 1e-5

    def loss(arrs, ini):
        o, f, _ = _call(mod, "explicit", arrs, options, ini, cu, ret, dout, dfin)
        return _loss(o, f, dout, dfin)

    targets = [(f"d{i}", grads[i], arrays[i], lambda x, i=i: loss(arrays[:i] + (x,) + arrays[i + 1:], init))
               for i in range(len(arrays))]
    if init is not None:
        for name, x in wst.fields(init).items():
            targets.append((f"dstate.{name}", getattr(grads[-1], name), x,
                            lambda y, name=name: loss(arrays, dataclasses.replace(init, **{name: y}))))
    for name, g, x, f in targets:
        assert g.shape == x.shape, name
        u = rng.standard_normal(x.shape)
        fd = (f(x + h * u) - f(x - h * u)) / (2 * h)
        an = float(np.sum(g * u))
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), (name, fd, an)


@pytest.mark.parametrize("op,opts,inkw,causal,st,packed,ret", _cases())
def test_linear_time_form_matches_explicit(op, opts, inkw, causal, st, packed, ret):
    """The chunked / tiled reference with chunks of 4 (sequences start and end inside chunks) equals the
    explicit one: output, final state, every gradient."""
    mod = MODS[op]
    problem = _problem(op, opts, inkw, causal, st, packed, ret, T=23, cu=(0, 1, 6, 10, 23), seed=1)
    o_ref, fin_ref, g_ref = _call(mod, "explicit", *problem[:4], ret, *problem[4:])
    o, fin, g = _call(mod, "fast", *problem[:4], ret, *problem[4:], chunk=4)
    _assert_same(o, o_ref)
    if ret:
        _assert_same(fin, fin_ref)
    assert len(g) == len(g_ref)
    for a, b in zip(g, g_ref):
        _assert_same(a, b)


def _assert_same(a, b, rtol=1e-9):
    if isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))
        return
    assert type(a) is type(b)
    fa, fb = wst.fields(a), wst.fields(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name].dtype == fb[name].dtype, name
        _assert_same(fa[name], fb[name], rtol)


def _split_state(s, j0, j1):
    return None if s is None else wst.map_state(lambda a: a[:, j0:j1], s)


@pytest.mark.parametrize("form", ["explicit", "fast"])
@pytest.mark.parametrize("op,opts,inkw,causal,st,packed,ret",
                         [c for c in _cases(causal_only=True) if c.values[4] and c.values[6] and not c.values[5]])
@pytest.mark.parametrize("split", [1, 63, 64, 65, 100])
def test_two_calls_with_the_state_handed_over_equal_one_call(op, opts, inkw, causal, st, packed, ret, split, form):
    """[0, split) then [split, T) with the first call's final state as the second's initial state equals one
    call over [0, T): output, final state, and every gradient (the second pullback's initial-state gradient
    is the first pullback's final-state gradient)."""
    mod = MODS[op]
    T_ = 130
    arrays, options, init, _, dout, dfin = _problem(op, opts, inkw, causal, True, False, True, T=T_, cu=(0, T_),
                                                    seed=split)
    o, fin, g = _call(mod, form, arrays, options, init, None, True, dout, dfin)
    first = tuple(a[:, :split] for a in arrays)
    second = tuple(a[:, split:] for a in arrays)
    o1, fin1, _ = _call(mod, form, first, options, init, None, True, dout[:, :split], None)
    o2, fin2, g2 = _call(mod, form, second, options, fin1, None, True, dout[:, split:], dfin)
    _, _, g1 = _call(mod, form, first, options, init, None, True, dout[:, :split], g2[-1])
    _assert_same(np.concatenate([o1, o2], 1), o, 1e-11)
    _assert_same(fin2, fin, 1e-11)
    for a, b, c in zip(g1[:-1], g2[:-1], g[:-1]):
        _assert_same(np.concatenate([a, b], 1), c, 1e-10)
    _assert_same(g1[-1], g[-1], 1e-10)


@pytest.mark.parametrize("form", ["explicit", "fast"])
@pytest.mark.parametrize("op,opts,inkw,causal,st,packed,ret", [c for c in _cases() if c.values[5]])
def test_packed_equals_one_sequence_at_a_time(op, opts, inkw, causal, st, packed, ret, form):
    """Sequences of lengths 1, 63, 64, 65 packed into one T axis (the default chunk of 64) equal each
    sequence run on its own with its own initial state: outputs, final states, every gradient."""
    mod = MODS[op]
    cu = (0, 1, 64, 128, 193)
    arrays, options, init, cu, dout, dfin = _problem(op, opts, inkw, causal, st, True, ret, T=cu[-1], cu=cu, seed=3)
    o, fin, g = _call(mod, form, arrays, options, init, cu, ret, dout, dfin)
    for j, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        oj, finj, gj = _call(mod, form, tuple(x[:, a:b] for x in arrays), options, _split_state(init, j, j + 1), None,
                             ret, dout[:, a:b], _split_state(dfin, j, j + 1))
        _assert_same(o[:, a:b], oj, 1e-12)
        if ret:
            _assert_same(_split_state(fin, j, j + 1), finj, 1e-12)
        for x, y in zip(g[:len(arrays)], gj):
            _assert_same(x[:, a:b], y, 1e-12)
        if init is not None:
            _assert_same(_split_state(g[-1], j, j + 1), gj[-1], 1e-12)


@pytest.mark.parametrize("m0", [-5.0, 5.0])
@pytest.mark.parametrize("form", ["explicit", "fast"])
def test_zeros_state_max_either_side(m0, form):
    """ZeroS's final max comes from the initial state (m0 = 5) or from the sequence (m0 = -5): both paths of
    the max's gradient, against central differences of the loss in m0 and in s."""
    arrays, options, init, cu, dout, dfin = _problem("zeros", {}, dict(n_gates=3), True, True, True, True, seed=4)
    init = dataclasses.replace(init, m=np.full_like(init.m, m0))
    mod = zeros
    _, _, g = _call(mod, form, arrays, options, init, cu, True, dout, dfin)
    h = 1e-5

    def loss(arrs, ini):
        o, f, _ = _call(mod, form, arrs, options, ini, cu, True, dout, dfin)
        return _loss(o, f, dout, dfin)
    u = np.random.default_rng(0).standard_normal(init.m.shape)
    fd = (loss(arrays, dataclasses.replace(init, m=init.m + h * u))
          - loss(arrays, dataclasses.replace(init, m=init.m - h * u))) / (2 * h)
    assert abs(fd - np.sum(g[-1].m * u)) <= 1e-6 * max(1, abs(fd))
    s = arrays[3]
    u = np.random.default_rng(1).standard_normal(s.shape)
    fd = (loss(arrays[:3] + (s + h * u,) + arrays[4:], init) - loss(arrays[:3] + (s - h * u,) + arrays[4:], init)) / (2 * h)
    assert abs(fd - np.sum(g[3] * u)) <= 1e-6 * max(1, abs(fd))


def test_decayed_reset_drops_the_initial_state():
    """log_decay = -inf at a sequence's first token: the initial state reaches no output and no final state
    (exp(-inf) = 0 exactly), and its gradient is exactly zero."""
    q, k, v, g = random_inputs("decayed", (2,), 9, 3, 4, seed=5)
    g[:, 4] = -np.inf
    init = random_state("decayed", (2, 3), 3, 4, seed=5)
    for mod_f in ("explicit", "fast"):
        out, fin, grads = _call(decayed, mod_f, (q, k, v, g), {}, init, CU, True, np.ones((2, 9, 4)),
                                wst.DecayedState(np.ones((2, 3, 3, 4))))
        ref, fin_ref, _ = _call(decayed, mod_f, (q, k, v, g), {}, wst.map_state(np.zeros_like, init), CU, True,
                                np.ones((2, 9, 4)), wst.DecayedState(np.ones((2, 3, 3, 4))))
        np.testing.assert_array_equal(out[:, 4:9], ref[:, 4:9])
        np.testing.assert_array_equal(fin.S[:, 2], fin_ref.S[:, 2])
        assert np.all(grads[-1].S[:, 2] == 0) and np.all(grads[-1].S[:, :2] != 0)
        assert np.isfinite(grads[3]).all()
