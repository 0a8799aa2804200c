"""CuPy softmax kernels (naive, flash, flash_mma, fa2 and its float32 / deterministic siblings) against the
float64 explicit NumPy reference, through the public API.  GPU only (marked ``gpu``; skipped without CuPy and a device).  The CPU-side parts (the
instantiation list, shared-memory budgets, registration) run everywhere."""

import numpy as np
import pytest

import workbench as wb
from workbench import backends, registry
from workbench.check import rel_error
from workbench.inputs import random_inputs
from workbench.reference import softmax as ref

from kernels.cupy import softmax as cs

FA2 = ["fa2", "fa2_det", "fa2_one", "fa2_cast", "fa2_tail", "fa2_atomic", "fa2_3xtf32", "fa2_tf32"]
VARIANTS = ["naive", "flash", "flash_mma"] + FA2
H100_SMEM = 227 * 1024


def tol(variant, dtype):
    """The dtype's tolerance of the library (the tf32 one for float32 through one TF32 product)."""
    return registry.get("softmax", "cupy", variant).ceiling(dtype)


def _as(a, dtype):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")            # registers numpy's "bfloat16"
    return a.astype(dtype)


def run_case(variant, lead, T, Dk, Dv, dtype, causal, scale=None, seed=0, round16=True):
    q, k, v = random_inputs("softmax", lead=lead, T=T, Dk=Dk, Dv=Dv, dtype="float64", seed=seed)
    do = np.random.default_rng(seed + 1).standard_normal((*lead, T, Dv))
    if round16:
        # round through float16 (as workbench.check does): every dtype then computes the same function as the
        # float64 reference, and at T=1 causal the reference's dq, dk come out exactly 0 (p = 1, dp = D
        # exactly) instead of 1e-17 round-off that no kernel reproduces
        q, k, v, do = (a.astype(np.float16).astype(np.float64) for a in (q, k, v, do))
    else:
        # float32 inputs with all 24 mantissa bits (TF32 keeps 11: the 3xTF32 split has work to do)
        q, k, v, do = (a.astype(np.float32).astype(np.float64) for a in (q, k, v, do))
    out, pull = wb.vjp(wb.softmax_attention, *(_as(a, dtype) for a in (q, k, v)),
                       backend=f"cupy:{variant}", causal=causal, scale=scale)
    grads = pull(_as(do, dtype))
    sc = 1 / np.sqrt(Dk) if scale is None else scale
    o_ref, ctx = ref.explicit_forward(q, k, v, causal=causal, scale=sc)
    g_ref = ref.explicit_backward(ctx, do)
    assert out.dtype == np.dtype(dtype) and out.shape == (*lead, T, Dv)
    errs = {"o": rel_error(out, o_ref)}
    errs.update({n: rel_error(g, r) for n, g, r in zip(("dq", "dk", "dv"), grads, g_ref)})
    for name, err in errs.items():
        assert np.isfinite(err) and err < tol(variant, dtype), (variant, name, err, errs)
    return errs


# --------------------------------------------------------------------------- CPU-side
def test_registered_and_default():
    keys = {v.name for v in registry.variants("softmax", "cupy")}
    assert set(VARIANTS) <= keys
    assert registry.get("softmax", "cupy").name == "flash"
    assert registry.get("softmax", "cupy", dtype="float16").name == "fa2"
    assert registry.get("softmax", "cupy", dtype="bfloat16").name == "fa2"
    assert registry.get("softmax", "cupy", dtype="float32").name == "fa2_3xtf32"      # H200: 1.6-1.7x cupy:flash


def test_instantiations_cover_every_launch():
    exprs = {e for _, e in cs.INSTANTIATIONS}
    for fam, dts in cs._FAMILY_DTYPES.items():
        for dt in dts:
            assert set(cs.expressions(fam, cs.CTYPE[dt])) <= exprs


def test_shared_memory_fits():
    for (fam, D, kind), t in cs.TILES.items():
        smem = cs.smem_flash(kind, D, t) if fam == "flash" else cs.smem_mma(kind, D, t)
        assert 0 < smem <= H100_SMEM, (fam, D, kind, t, smem)


def test_tiles_cover_every_bucket():
    for D in cs.FLASH_BUCKETS:
        for kind in ("fwd", "dkdv", "dq"):
            br, bc = cs.tiles("flash", D, kind)
            assert br % 16 == 0 and bc % 16 == 0
            if D in cs.MMA_BUCKETS:
                assert cs.tiles("mma", D, kind)[0] == 64


def test_fa2_registered():
    for name in FA2:
        v = registry.get("softmax", "cupy", name)
        assert v.gpu and v.array_kind == "cupy"
        assert set(v.dtypes) == ({"float32"} if "tf32" in name else {"float16", "bfloat16"})
    assert "tf32" in registry.get("softmax", "cupy", "fa2_tf32").tags          # checked at the tf32 tolerance
    assert "tf32" not in registry.get("softmax", "cupy", "fa2_3xtf32").tags    # float32 accuracy


def test_fa2_instantiations_cover_every_plan():
    exprs = {e for _, e in cs.INSTANTIATIONS}
    for pol, (fam, ct) in cs._fa2_groups().items():
        group, direct = cs.fa2_expressions(pol, fam, ct), cs.fa2_direct_expressions(pol, fam)
        assert set(group) | set(direct) <= exprs
        for D in cs.FA2_BUCKETS:                    # what _fa2_plan looks up is in the compiled group
            t = cs.FA2_TILES[(fam, D)]
            assert f"fa2_fwd<{pol}, {D}, {t.mt}, {cs._cpp_bool(t.qreg)}, {t.bc}>" in group
            assert f"fa2_bwd<{pol}, {D}, {t.bq}, {cs._cpp_bool(t.kvreg)}, false>" in group
            assert f"fa2_bwd<{pol}, {D}, {t.bq}, {cs._cpp_bool(t.kvreg)}, true>" in direct     # T <= 64
        for kernel in cs.FA2_H_KERNELS:                     # one-launch, cast and tail backwards: family "h", D <= 64
            h = cs.fa2_h_expressions(kernel, pol, fam)
            assert set(h) <= exprs and len(h) == (len(cs.FA2_ONE_BUCKETS) if fam == "h" else 0)


def test_fa2_tiles_fit():
    """Every bucket of every family has tiles; they satisfy the kernels' static_asserts and fit in shared
    memory."""
    fams = {s.family for s in cs.FA2_SPECS}
    assert set(cs.FA2_TILES) == {(f, D) for f in fams for D in cs.FA2_BUCKETS}
    for (fam, D), t in cs.FA2_TILES.items():
        assert t.mt in (1, 2) and t.bc in (32, 64) and t.bq in (16, 32, 64)
        mq = t.bq // 16
        assert 4 % mq == 0 and (D // (4 // mq)) % 16 == 0           # dQ tile split over 4 warps
        for pass_ in ("fwd", "bwd"):
            assert 0 < cs.fa2_smem(fam, D, t, pass_) <= H100_SMEM, (fam, D, t, pass_)
        if fam == "h" and D in cs.FA2_ONE_BUCKETS:
            assert cs.fa2_smem(fam, D, t, "bwd") < cs.fa2_one_smem(fam, D, t) <= H100_SMEM
            assert cs.fa2_smem(fam, D, t, "bwd") < cs.fa2_cast_smem(fam, D, t) <= H100_SMEM


def test_fa2_plan_above_128_falls_back():
    assert cs._fa2_plan("fa_h<wb_half>", "h", "wb_half", 200, 64) is None     # cupy:flash's kernels run


def test_head_dim_limit_is_a_clear_error():
    v = registry.get("softmax", "cupy", "flash")
    assert v.unsupported_reason({}, {"q": (1, 4, 300), "k": (1, 4, 300), "v": (1, 4, 8)})
    assert v.unsupported_reason({}, {"q": (1, 4, 80), "k": (1, 4, 80), "v": (1, 4, 256)}) is None


# --------------------------------------------------------------------------- GPU
gpu = pytest.mark.gpu
needs_cupy = pytest.mark.skipif(backends.cupy_module() is None, reason="needs CuPy and a CUDA GPU")


def _dtypes(variant):
    if variant == "flash_mma":
        return ["float16"]
    if variant in FA2:
        return list(registry.get("softmax", "cupy", variant).dtypes)
    return ["float32", "float16"]


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
        assert np.isfinite(o).all() and rel_error(o, o_ref) < tol(variant, dtype)


@gpu
@needs_cupy
@pytest.mark.parametrize("variant", VARIANTS)
def test_nan_propagates(variant):
    cp = backends.cupy_module()
    q, k, v = (cp.asarray(a) for a in random_inputs("softmax", lead=(1,), T=70, Dk=64, Dv=64, dtype="float32"))
    dtype = _dtypes(variant)[0] if variant in FA2 else ("float16" if variant == "flash_mma" else "float32")
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    q[0, 5, 3] = cp.nan
    o = wb.softmax_attention(q, k, v, causal=True, backend=f"cupy:{variant}")
    bad = cp.isnan(o).any(axis=-1)[0].get()
    assert bad[5] and not bad[:5].any() and not bad[6:].any()


@gpu
@needs_cupy
@pytest.mark.parametrize("variant", FA2)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [((1,), 4097, 64, 64), ((1,), 4097, 128, 128), ((3,), 1000, 96, 40)])
def test_fa2_many_blocks(variant, causal, shape):
    """Many key blocks add into each dq row (float32 atomics in fa2's one-pass backward); T not a multiple of
    any tile; several heads."""
    lead, T, Dk, Dv = shape
    run_case(variant, lead, T, Dk, Dv, _dtypes(variant)[0], causal)


@gpu
@needs_cupy
@pytest.mark.parametrize("variant", FA2)
@pytest.mark.parametrize("group", [0, 1 << 30], ids=["apart", "grouped"])
def test_fa2_above_the_merge_bound(variant, group):
    """Every pass as above backends.OUTPUTS_MERGE_MAX (bound 0), what calls of more than 4 MiB take: the forward's
    o and lse in one block (lse is under 1/16 of o), the backward's float32 scratch its own allocation and the
    gradients each their own (group 0: above OUTPUTS_GROUP_MAX) or one together (calls of 4-32 MiB) -- results
    against the float64 reference as at any size.  (No monkeypatch fixture: the CUDA emulator calls this function
    as it is.)"""
    with backends.merge_bound(0, group):
        run_case(variant, (2,), 300, 64, 64, _dtypes(variant)[0], True)


@gpu
@needs_cupy
@pytest.mark.parametrize("causal", [True, False])
def test_fa2_atomic_dq_matches_deterministic(causal):
    """fa2 (dq by atomics) and fa2_det (dq by a pass over query tiles) share the forward: their gradients
    differ only by float32 summation order before the final float16 rounding."""
    cp = backends.cupy_module()
    q, k, v = (cp.asarray(a, dtype=cp.float16)
               for a in random_inputs("softmax", lead=(2,), T=1537, Dk=64, Dv=64, dtype="float32", seed=5))
    do = cp.asarray(np.random.default_rng(6).standard_normal((2, 1537, 64)), dtype=cp.float16)
    grads = {}
    for name in ("fa2_atomic", "fa2_one", "fa2_cast", "fa2_tail", "fa2_det"):
        out, pull = wb.vjp(wb.softmax_attention, q, k, v, causal=causal, backend=f"cupy:{name}")
        grads[name] = [cp.asnumpy(g).astype(np.float64) for g in pull(do)]
    for name in ("fa2_atomic", "fa2_one", "fa2_cast", "fa2_tail"):
        for a, b in zip(grads[name], grads["fa2_det"]):
            assert rel_error(a, b) < 2e-3, name


@gpu
@needs_cupy
def test_fa2_backward_launches():
    """Which backward a call runs: fa2_bwd's DIRECT instantiation up to 64 tokens; fa2_bwd_one (no pre / post
    kernels, no float32 buffer) above it up to the spec's one_launch_max_t (cupy:fa2: FA2_ONE_LAUNCH_MAX_T;
    fa2_one: every T; fa2_atomic: none) at head dims <= 64 in float16 / bfloat16; else fa2_bwd_cast (one memset, one
    launch; calls without packed sequences) up to the spec's cast_max_t (cupy:fa2: FA2_CAST_MAX_T; fa2_cast: every
    T); else fa2_bwd_tail (after fa2_bwd_pre, no fa2_dq_post; calls without packed sequences) up to the spec's
    tail_max_t (cupy:fa2: FA2_TAIL_MAX_T; fa2_tail: every T); else fa2_bwd with the atomic adds.  float32 and head
    dims above 64 never take the one-launch, cast or tail forms."""
    from kernels.cupy._module import kernel_label
    m = cs.FA2_ONE_LAUNCH_MAX_T

    def bwd(name, T, D=64, dtype=np.float16):
        call = cs._fa2_call(name, np.dtype(dtype), (2, T, D), D, True)
        return kernel_label(call.bwd.kernel), call.one, call.bwd_out

    def cast(name, T, D=64, dtype=np.float16):
        call = cs._fa2_call(name, np.dtype(dtype), (2, T, D), D, True)
        return call.cast and kernel_label(call.cast.kernel)

    assert bwd("fa2", 64)[0] == bwd("fa2_one", 64)[0] == "fa2_bwd<fa_h<wb_half>, 64, 64, true, true>"
    assert bwd("fa2_one", 65)[:2] == ("fa2_bwd_one<fa_h<wb_half>, 64, 64, true>", True)
    assert bwd("fa2", max(m, 65))[1] == (m >= 65) and not bwd("fa2", max(m, 64) + 1)[1]
    assert bwd("fa2", max(m, 64) + 1)[0] == "fa2_bwd<fa_h<wb_half>, 64, 64, true, false>"
    assert bwd("fa2_one", 1 << 16)[1] and not bwd("fa2_atomic", 65)[1]
    assert bwd("fa2_one", 300, 32)[0] == "fa2_bwd_one<fa_h<wb_half>, 32, 64, true>"
    assert not bwd("fa2_one", 300, 96)[1] and not bwd("fa2_3xtf32", 300, 64, np.float32)[1]
    # the one-launch form allocates the three gradients alone (no float32 dq buffer and D)
    assert bwd("fa2_one", 300)[2].scratch == () and len(bwd("fa2_atomic", 300)[2].scratch) == 1
    # the atomic schedule in one launch: its own kernel beside the atomic form's (packed calls run that one), the
    # float32 buffer and the arrival counters (N x ceil(T / 64) int32)
    c = cs.FA2_CAST_MAX_T
    assert cast("fa2_cast", 300) == "fa2_bwd_cast<fa_h<wb_half>, 64, 64, true>"
    assert cast("fa2_cast", 1 << 15) and cast("fa2_cast", 300, 32) == "fa2_bwd_cast<fa_h<wb_half>, 32, 64, true>"
    assert not cast("fa2_cast", 64) and not cast("fa2_cast", 300, 96) and not cast("fa2_3xtf32", 300, 64, np.float32)
    assert not cast("fa2_atomic", 300) and not cast("fa2_one", 300)
    assert bool(cast("fa2", max(c, 65))) == (c >= 65) and not cast("fa2", max(c, 64) + 1)
    assert bwd("fa2_cast", 300)[0] == "fa2_bwd<fa_h<wb_half>, 64, 64, true, false>"
    assert bwd("fa2_cast", 300)[2].scratch[1] == ((2 * 5,), np.dtype(np.int32))
    # the dq cast in the key blocks' tail: its kernel beside fa2_bwd (packed calls run that), the same counters,
    # which fa2_bwd_pre zeroes (ncnt of them)
    def tail(name, T, D=64, dtype=np.float16):
        call = cs._fa2_call(name, np.dtype(dtype), (2, T, D), D, True)
        return call.tail and (kernel_label(call.tail.kernel), int(call.ncnt))

    t = cs.FA2_TAIL_MAX_T
    assert tail("fa2_tail", 300) == ("fa2_bwd_tail<fa_h<wb_half>, 64, 64, true>", 2 * 5)
    assert tail("fa2_tail", 1 << 15) and tail("fa2_tail", 300, 32)[0] == "fa2_bwd_tail<fa_h<wb_half>, 32, 64, true>"
    assert not tail("fa2_tail", 64) and not tail("fa2_tail", 300, 96) and not tail("fa2_3xtf32", 300, 64, np.float32)
    assert not tail("fa2_atomic", 300) and not tail("fa2_cast", 300) and not tail("fa2_one", 300)
    assert bool(tail("fa2", max(t, 65))) == (t >= 65) and not tail("fa2", max(t, 64) + 1)
    assert bwd("fa2_tail", 300)[0] == "fa2_bwd<fa_h<wb_half>, 64, 64, true, false>"
    assert bwd("fa2_tail", 300)[2].scratch[1] == ((2 * 5,), np.dtype(np.int32))
    assert cs._fa2_call("fa2_atomic", np.dtype(np.float16), (2, 300, 64), 64, True).ncnt == 0


@gpu
@needs_cupy
@pytest.mark.parametrize("causal", [True, False])
def test_3xtf32_reaches_float32_accuracy(causal):
    """On float32 inputs that use all 24 mantissa bits, the 3xTF32 split meets the float32 tolerance and is far
    closer than one TF32 product (which the split exists to beat)."""
    e3 = run_case("fa2_3xtf32", (2,), 300, 64, 64, "float32", causal, round16=False)
    e1 = run_case("fa2_tf32", (2,), 300, 64, 64, "float32", causal, round16=False)
    assert max(e3.values()) < 1e-4
    assert max(e3.values()) < max(e1.values()) / 10, (e3, e1)


# --------------------------------------------------------------------------- GPU: packed sequences
# lengths (inputs.packed_lengths): T = 130 packs 1, 63, 64, 2; T = 200 1, 63, 64, 65, 2, 5 (boundaries inside
# query blocks of 128 and key tiles of 32 and 64); T = 67 at head dims 16 x 24 (bucket 32); 600 at 128 x 128
PACKED_SHAPES = [(130, 64, 64), (200, 96, 40), (67, 16, 24), (600, 128, 128), (1, 64, 64)]


@gpu
@needs_cupy
@pytest.mark.parametrize("variant", FA2)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T,Dk,Dv", PACKED_SHAPES)
def test_fa2_packed_matches_reference(variant, causal, T, Dk, Dv):
    """A packed check cell (cu_seqlens; no token attends across a boundary) against the float64 explicit
    reference, forward and every gradient, in each dtype of the variant."""
    from workbench import check
    for dtype in _dtypes(variant):
        r = check.compare("softmax", f"cupy:{variant}", (2,), T, Dk, Dv, dtype, causal=causal, packed=True)
        assert r["ok"], (dtype, {k: e for k, e in r.items() if isinstance(e, float) and e > r["tol"]})


@gpu
@needs_cupy
@pytest.mark.parametrize("variant", FA2)
def test_fa2_packed_equals_one_call_per_sequence(variant):
    """Sequences of 1, 63, 64, 65 and 130 tokens packed into one call equal one call per sequence (output and
    every gradient), causal and not."""
    cp = backends.cupy_module()
    cu = (0, 1, 64, 128, 193, 323)
    dtype = _dtypes(variant)[0]
    q, k, v = (cp.asarray(_as(a, dtype)) for a in random_inputs("softmax", (2,), cu[-1], 64, 48, "float64", 3))
    do = cp.asarray(_as(np.random.default_rng(4).standard_normal((2, cu[-1], 48)), dtype))
    host = lambda x: cp.asnumpy(x).astype(np.float64)    # noqa: E731
    for causal in (True, False):
        o, pull = wb.vjp(wb.softmax_attention, q, k, v, causal=causal, cu_seqlens=cu, backend=f"cupy:{variant}")
        packed = [host(o)] + [host(g) for g in pull(do)]
        parts = []
        for a, b in zip(cu[:-1], cu[1:]):
            o, pull = wb.vjp(wb.softmax_attention, q[:, a:b], k[:, a:b], v[:, a:b], causal=causal,
                             backend=f"cupy:{variant}")
            parts.append([host(o)] + [host(g) for g in pull(do[:, a:b])])
        for name, x, pieces in zip(("o", "dq", "dk", "dv"), packed, zip(*parts)):
            assert rel_error(x, np.concatenate(pieces, 1)) < tol(variant, dtype), (causal, name)


@gpu
@needs_cupy
@pytest.mark.parametrize("D,cu,match", [(200, (0, 4, 10), "cu_seqlens.*head dims up to 128"),
                                        (16, (0, 4, 4, 10), "zero-length sequence")],
                         ids=["head-dim-above-128", "zero-length"])
def test_fa2_packed_refusals(D, cu, match):
    """Clear errors: packing above head dim 128 (the fallback kernels do not pack), a zero-length sequence."""
    cp = backends.cupy_module()
    q, k, v = (cp.asarray(a, dtype=cp.float16) for a in random_inputs("softmax", (1,), 10, D, D, "float32", 0))
    with pytest.raises(ValueError, match=match):
        wb.softmax_attention(q, k, v, cu_seqlens=cu, backend="cupy:fa2")
