"""State and packed sequences on the Numba chunked core (kernels/numba/_chunked.py): numba:chunked of linear,
decayed and ZeroS (initial/final state, cu_seqlens) against the float64 explicit reference --
output, final state, every gradient and the initial state's gradient -- and two calls with the state handed
over against one call.  On a CPU machine this runs on the CUDA simulator with chunks of 4 rows, so packed
lengths 1, 3, 4, 5 play the roles of 1, 63, 64, 65 (a sequence shorter than, equal to and just past a chunk,
sequences starting and ending inside chunks of the packed axis); ``segment_chunks`` 0 runs one walker per
sequence, 1 cuts every sequence into segments of one chunk (state pass, scan, output pass).  The GPU run with
the real tiles and lengths 1, 63, 64, 65 is tests/test_gpu_state.py (every variant declaring the features)."""
import functools

import numpy as np
import pytest

import workbench as wb
from workbench import check, inputs, registry, state as wst
from workbench.backends import numba_simulator
from workbench.inputs import random_inputs, random_state

pytest.importorskip("kernels.numba.linear")
from kernels.numba import _chunked, _jit  # noqa: E402
from kernels.numba import decayed as nd  # noqa: E402
from kernels.numba import linear as nl  # noqa: E402
from kernels.numba import zeros as nz  # noqa: E402

pytestmark = pytest.mark.slow      # Numba CUDA simulator: minutes; -m "not slow" leaves them out

PATTERN = (1, 3, 4, 5, 2, 7)       # packed lengths around the chunk of 4 (GPU: 1, 63, 64, 65, ...)
CASES = [("linear", dict(feature_map="identity", normalize=False, scale=0.7)),
         ("linear", dict(feature_map="elu1", normalize=True)),
         ("decayed", dict(scale=0.7)),
         ("zeros", dict())]
IDS = ["linear", "linear-elu1-norm", "decayed", "zeros"]


@pytest.fixture(autouse=True)
def small(monkeypatch):
    if not numba_simulator():
        pytest.skip("simulator tile sizes (tests/test_gpu_state.py runs the real ones)")
    monkeypatch.setattr(_jit, "BUCKETS", (8, 16))
    monkeypatch.setattr(_jit, "GROUP", 4)
    for key, val in dict(chunk=4, block_k=4, block_v=4, threads=8).items():
        monkeypatch.setitem(_chunked.CONFIG, key, val)
    monkeypatch.setitem(nl.CONFIG, "rows", 8)
    monkeypatch.setattr(nd, "SCAN_THREADS", 4)
    monkeypatch.setattr(nz, "SCAN_THREADS", 4)
    monkeypatch.setattr(check, "packed_lengths", functools.partial(inputs.packed_lengths, pattern=PATTERN))


def _features(op):
    return registry.get(op, "numba", "chunked").features


@pytest.mark.parametrize("segment_chunks", [0, 1])
@pytest.mark.parametrize("op,options", CASES, ids=IDS)
def test_state_and_packed_match_the_reference(op, options, segment_chunks, monkeypatch):
    """T = 23 packed as 1, 3, 4, 5, 2, 7 with an initial state per sequence (Dk = 5, Dv = 7: partial tiles),
    causal; non-causal packed for linear and ZeroS.  float64, to the variant's tolerance."""
    monkeypatch.setitem(_chunked.CONFIG, "segment_chunks", segment_chunks)
    state = "state" in _features(op)
    cells = [dict(causal=True, state=state, packed=True)]
    if op != "decayed":
        cells.append(dict(causal=False, state=False, packed=True))
    for cell in cells:
        res = check.compare(op, "numba:chunked", (2,), 23, 5, 7, "float64", options=options, **cell)
        assert res["ok"], (cell, {k: e for k, e in res.items() if isinstance(e, float) and e > res["tol"]})
        if cell["state"]:
            assert any(k.startswith("dinit.") for k in res), res       # the initial state's gradient is checked


@pytest.mark.parametrize("split", [1, 4, 5])
@pytest.mark.parametrize("op,options", CASES, ids=IDS)
def test_two_calls_equal_one_call(op, options, split, monkeypatch):
    """T = 11 in one call against two calls split at ``split`` (a chunk of 4: inside the first chunk, at its
    end, past it), the first's final state handed to the second and the second's initial-state gradient back
    to the first's pullback: output, final state and every gradient (the initial state's included), float64."""
    monkeypatch.setitem(_chunked.CONFIG, "segment_chunks", 1)
    fn, T, lead = wb.PUBLIC_OPS[op], 11, (2,)
    inkw = {"feature_map": options["feature_map"]} if "feature_map" in options else {}
    arrays = random_inputs(op, lead, T, 5, 7, "float64", seed=split, **inkw)
    init = random_state(op, lead, 5, 7, seed=split, normalize=options.get("normalize", False))
    rng = np.random.default_rng(split)
    dout = rng.standard_normal((*lead, T, 7))
    dfin = wst.map_state(lambda a: rng.standard_normal(a.shape), init)
    kw = dict(options, return_state=True, backend="numba:chunked")

    def cut(a, b):
        return [x[:, a:b] for x in arrays]
    (o, fin), pb = wb.vjp(fn, *arrays, initial_state=init, **kw)
    grads = pb(dout, dfin)
    (o1, fin1), pb1 = wb.vjp(fn, *cut(0, split), initial_state=init, **kw)
    (o2, fin2), pb2 = wb.vjp(fn, *cut(split, T), initial_state=fin1, **kw)
    g2 = pb2(dout[:, split:], dfin)
    g1 = pb1(dout[:, :split], g2[-1])
    pairs = [("out", np.concatenate([o1, o2], 1), o)]
    pairs += [(f"final.{n}", x, getattr(fin, n)) for n, x in wst.fields(fin2).items()]
    pairs += [(f"d{i}", np.concatenate([a, b], 1), c) for i, (a, b, c) in enumerate(zip(g1[:-1], g2[:-1], grads[:-1]))]
    pairs += [(f"dinit.{n}", x, getattr(grads[-1], n)) for n, x in wst.fields(g1[-1]).items()]
    for name, a, b in pairs:
        assert check.rel_error(a, b) < 1e-12, (name, check.rel_error(a, b))


def test_decayed_reset_at_a_sequence_start_keeps_the_initial_state_gradient(monkeypatch):
    """log_decay = -inf at the first position of a sequence erases its initial state from every output: the
    output equals the call without it, and the initial state's gradient is exactly the final state's
    gradient decayed to 0 (dS0 = scale sum exp(pre) q do^T + exp(tot) D = 0)."""
    monkeypatch.setitem(_chunked.CONFIG, "segment_chunks", 1)
    q, k, v, g = random_inputs("decayed", (1,), 9, 4, 3, "float64", seed=2)
    g[:, 0] = -np.inf
    init = random_state("decayed", (1, 2), 4, 3, seed=2)
    cu = (0, 5, 9)
    g[:, 5] = -np.inf
    o, pb = wb.vjp(wb.decayed_attention, q, k, v, g, initial_state=init, cu_seqlens=cu, backend="numba:chunked")
    o0 = wb.decayed_attention(q, k, v, g, cu_seqlens=cu, backend="numba:chunked")
    np.testing.assert_allclose(o, o0, rtol=1e-14, atol=1e-14)
    grads = pb(np.ones_like(o))
    assert np.isfinite(grads[3]).all() and np.abs(grads[-1].S).max() == 0.0


@pytest.mark.parametrize("where", ["state", "sequence", "empty"])
def test_zeros_gradient_of_the_running_max(where):
    """ZeroS's final max m_b = max(m0, s_i) carries the final state's gradient dm (and E_b, F_b's dependence on
    it) to m0 when the state holds the maximum, to the first s_i reaching it otherwise, and nowhere from an
    empty state (m0 = -inf, n0 = 0): ds and every field of the initial state's gradient against
    numpy:explicit, float64, two packed sequences."""
    T, lead, cu = 9, (2,), (0, 4, 9)
    q, k, v, s, gates = random_inputs("zeros", lead, T, 4, 3, "float64", seed=7, n_gates=3)
    init = random_state("zeros", (*lead, 2), 4, 3, seed=7)
    if where == "state":
        init = wst.ZeroSState(init.m + 50.0, *(getattr(init, f) for f in ("E", "P", "n", "F", "G", "H")))
    elif where == "sequence":
        s[:, 2] = s[:, 3] = s[:, 6] = 60.0                         # a tie in the first sequence: the first wins
    else:
        z = np.zeros_like(init.E)
        init = wst.ZeroSState(np.full_like(init.m, -np.inf), z, z, z, *(np.zeros_like(init.F) for _ in range(3)))
    rng = np.random.default_rng(8)
    dout = rng.standard_normal((*lead, T, 3))
    dfin = wst.map_state(lambda a: rng.standard_normal(a.shape), init)
    _assert_zeros_matches_explicit((q, k, v, s, gates), init, dout, dfin, cu)


def _assert_zeros_matches_explicit(arrays, init, dout, dfin, cu=None):
    """numba:chunked against numpy:explicit with an initial state and the final state's gradient: output, final
    state, every gradient and the initial state's, float64, to 1e-12."""
    got, want = [], []
    for backend, res in (("numba:chunked", got), ("numpy:explicit", want)):
        (o, fin), pb = wb.vjp(wb.zeros_attention, *arrays, initial_state=init, return_state=True,
                              cu_seqlens=cu, backend=backend)
        g = pb(dout, dfin)
        res += [("out", o)] + [(f"final.{n}", x) for n, x in wst.fields(fin).items()]
        res += [(f"d{i}", x) for i, x in enumerate(g[:-1])] + [(f"dinit.{n}", x) for n, x in wst.fields(g[-1]).items()]
    for (name, a), (_, b) in zip(got, want):
        assert np.isfinite(a).all() and check.rel_error(a, b) < 1e-12, (name, check.rel_error(a, b))


@pytest.mark.parametrize("scan_threads,T", [(3, 19), (2, 24)])
def test_zeros_final_max_in_the_last_run_of_the_finish_scan(scan_threads, T, monkeypatch):
    """The finish scan's runs hold several rows each (T = 19 over 3 threads: runs of 7, 7, 5) and the running
    max rises inside the last run (s at the last row is the maximum): the final state's dE enters relative to
    m_{T-1} and must be rescaled to the last run's first row before it reaches the earlier runs -- ds of every
    earlier row and the initial state's dE, dm against numpy:explicit, float64, one sequence."""
    monkeypatch.setattr(nz, "SCAN_THREADS", scan_threads)
    lead = (2,)
    q, k, v, s, gates = random_inputs("zeros", lead, T, 5, 7, "float64", seed=3)
    s[:, -1] = 4.0
    init = random_state("zeros", lead, 5, 7, seed=3)
    rng = np.random.default_rng(4)
    dout = rng.standard_normal((*lead, T, 7))
    dfin = wst.map_state(lambda a: rng.standard_normal(a.shape), init)
    _assert_zeros_matches_explicit((q, k, v, s, gates), init, dout, dfin)
