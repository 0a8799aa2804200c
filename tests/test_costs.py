"""The FLOP and minimum-byte models (workbench/bench/costs.py) on hand-counted cases."""
import itertools

import pytest

from workbench.bench import costs
from workbench.bench.costs import Shape


def test_softmax_noncausal_T2_D1_by_hand():
    # T=2, Dk=Dv=1, one head.  Forward: 4 scores q_t*k_i (4 MACs) + o_t = sum_i p_ti v_i (4 MACs) = 8 MACs.
    s = Shape(N=1, T=2, Dk=1, Dv=1)
    assert costs.flops("softmax", "quadratic", s, causal=False, pass_="fwd") == 16
    # Backward per pair: recompute score, dP, dv, dq, dk = 5 MACs x 4 pairs = 20 MACs.
    assert costs.flops("softmax", "quadratic", s, causal=False, pass_="bwd") == 40
    assert costs.flops("softmax", "quadratic", s, causal=False, pass_="fwdbwd") == 56
    # Bytes (float32): fwd reads q, k, v (2 elements each) and writes o (2): 8 elements.
    assert costs.min_bytes("softmax", s, "float32", "fwd") == 8 * 4
    # bwd reads q, k, v, do (8 elements), writes dq, dk, dv (6): 14 elements.
    assert costs.min_bytes("softmax", s, "float32", "bwd") == 14 * 4
    # fwd+bwd reads q, k, v, do (8), writes o, dq, dk, dv (8): 16 elements.
    assert costs.min_bytes("softmax", s, "float32", "fwdbwd") == 16 * 4
    assert costs.min_bytes("softmax", s, "float16", "fwd") == 8 * 2


def test_causal_counts_the_visible_pairs():
    # T=2 causal: pairs (1,1), (2,1), (2,2) = 3.
    s = Shape(N=1, T=2, Dk=1, Dv=1)
    assert costs.pairs(2, True) == 3
    assert costs.flops("softmax", "quadratic", s, causal=True, pass_="fwd") == 2 * 3 * 2
    assert costs.pairs(1000, True) == 1000 * 1001 // 2


@pytest.mark.parametrize("T,Dk,Dv,causal", [(3, 2, 5, True), (4, 3, 1, False), (5, 1, 2, True)])
def test_quadratic_forward_matches_a_counted_loop(T, Dk, Dv, causal):
    macs = 0
    for t, i in itertools.product(range(T), range(T)):
        if causal and i > t:
            continue
        macs += Dk          # a_ti = q_t . k_i
        macs += Dv          # o_t += w_ti v_i
    s = Shape(N=3, T=T, Dk=Dk, Dv=Dv)
    for op in ("softmax", "linear", "zeros"):
        assert costs.flops(op, "quadratic", s, causal, "fwd") == 3 * 2 * macs


def test_linear_form_by_hand():
    # T=3, Dk=2, Dv=3: per token a state update k v^T (6 MACs) and a read-out q^T S (6 MACs) -> 36 MACs.
    s = Shape(N=1, T=3, Dk=2, Dv=3)
    assert costs.flops("linear", "linear", s, True, "fwd") == 72
    assert costs.flops("linear", "linear", s, False, "fwd") == 72        # causal or not: the same
    assert costs.flops("decayed", "linear", s, True, "fwd") == 72
    assert costs.flops("zeros", "linear", s, True, "fwd") == 3 * 72      # three states F, G, H
    # Backward: 5 contractions per state and token.
    assert costs.flops("linear", "linear", s, True, "bwd") == 2 * 3 * 5 * 6
    with pytest.raises(ValueError):
        costs.flops("softmax", "linear", s, True, "fwd")


def test_backward_is_two_and_a_half_forwards_when_dk_equals_dv():
    s = Shape(N=2, T=64, Dk=16, Dv=16)
    for op, form in (("softmax", "quadratic"), ("linear", "linear"), ("zeros", "linear"), ("decayed", "quadratic")):
        assert costs.flops(op, form, s, True, "bwd") == 2.5 * costs.flops(op, form, s, True, "fwd")


def test_bytes_of_the_extra_arrays():
    s = Shape(N=2, T=4, Dk=3, Dv=5, n_gates=3)
    # zeros: q, k (2*4*3 each), v (2*4*5), s (2*4), gates (2*4*3); out 2*4*5.
    inputs = 24 + 24 + 40 + 8 + 24
    assert costs.min_bytes("zeros", s, "float64", "fwd") == (inputs + 40) * 8
    assert costs.min_bytes("zeros", s, "float64", "bwd") == (2 * inputs + 40) * 8
    # decayed: q, k, v, log_decay.
    assert costs.min_bytes("decayed", s, "float32", "fwd") == (24 + 24 + 40 + 8 + 40) * 4


def test_decayed_is_always_causal():
    s = Shape(N=1, T=10, Dk=4, Dv=4)
    assert costs.flops("decayed", "quadratic", s, False, "fwd") == costs.flops("decayed", "quadratic", s, True, "fwd")


def test_form_of():
    assert costs.form_of("softmax", "chunked") == "quadratic"
    assert costs.form_of("linear", "chunked") == "linear"
    assert costs.form_of("linear", "naive") == "quadratic"
    assert costs.form_of("zeros", "explicit") == "quadratic"
    assert costs.form_of("decayed", "anything", form="quadratic") == "quadratic"
    with pytest.raises(ValueError):
        costs.form_of("linear", "x", form="cubic")


def test_achieved_and_roofline_fraction():
    # 1e12 FLOPs and 1e9 bytes in 10 ms: 100 TFLOP/s, 100 GB/s, intensity 1000 FLOP/B.
    r = costs.achieved(1e12, 1e9, 0.010, peak_flops=200e12, peak_bw=1e12)
    assert r["tflops"] == pytest.approx(100)
    assert r["gbps"] == pytest.approx(100)
    assert r["intensity"] == pytest.approx(1000)
    # bound = max(1e12/200e12 = 5 ms, 1e9/1e12 = 1 ms) = 5 ms -> half the roof.
    assert r["bound_ms"] == pytest.approx(5)
    assert r["roof_frac"] == pytest.approx(0.5)
    assert costs.achieved(1e12, 1e9, 0.010)["roof_frac"] is None
