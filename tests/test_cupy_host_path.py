"""The CuPy variants' host-side launch code without a GPU: a stand-in ``cupy`` module (NumPy arrays, kernels
that only record their launches) runs every variant's forward and backward, so the launch path -- kernel
lookup, compile groups, output allocation, launch arguments -- is exercised on every machine.  The numbers
are meaningless; the GPU tests check those.  Also: ``cli.py warmup`` lists and refuses without a GPU."""
import re
import sys
import types

import numpy as np

import pytest
from click.testing import CliRunner

from workbench import backends, registry
from workbench.inputs import default_options, random_inputs
from workbench.bench.lines import validated_options

pytestmark = pytest.mark.skipif(backends.cupy_module() is not None, reason="a real CuPy is present")


def _fake_cupy(log: dict):
    cp = types.ModuleType("cupy")
    for name in ("float32", "float16", "float64", "int32", "nan", "maximum", "minimum", "exp", "where", "concatenate",
                 "cumsum", "stack", "zeros", "ones", "ones_like", "ascontiguousarray", "asarray"):
        setattr(cp, name, getattr(np, name))

    def full(shape, value, dtype=None):
        log["full"].append(value)
        return np.full(shape, value, dtype)

    def empty(shape, dtype=None):
        log["empty"] += 1
        return np.full(shape, 0.5, dtype)        # stands in for uninitialised memory

    class Kernel:
        def __init__(self, expr):
            self.expr = expr
            self.max_dynamic_shared_size_bytes = 48 * 1024

        def __call__(self, grid, block, args, shared_mem=0):
            assert all(type(t) is tuple and all(int(x) >= 1 for x in t) for t in (grid, block)), (grid, block)
            assert all(isinstance(a, (np.ndarray, np.generic, int, float)) for a in args), [type(a) for a in args]
            if shared_mem > 48 * 1024:
                assert self.max_dynamic_shared_size_bytes >= shared_mem, "no shared-memory opt-in"
            log["launches"].append(self.expr)
            if "calls" in log:      # what a launch got: arrays by shape and dtype, addresses as "addr" (or 0)
                log["calls"].append((self.expr, grid, block, shared_mem, tuple(
                    ("array", a.shape, a.dtype.str) if isinstance(a, np.ndarray)
                    else ("addr" if a else 0) if type(a) is np.uint64 else (type(a).__name__, a.item()) for a in args)))

    class RawModule:
        def __init__(self, code, options, name_expressions):
            self.exprs = tuple(name_expressions)
            log["modules"].append(self.exprs)

        def get_function(self, expr):
            assert expr in self.exprs
            return Kernel(expr)

    cp.full, cp.empty, cp.RawModule, cp.__version__ = full, empty, RawModule, "fake"
    device = types.SimpleNamespace(synchronize=lambda: None, attributes={"MultiProcessorCount": 132},
                                   compute_capability="90")          # an H100 / H200: the sm_90a kernels too
    cp.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0,
                                                                  memsetAsync=lambda *a: log["launches"].append("memset")),
                                    Device=lambda: device, get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    return cp


def _clear_caches():
    """Forget every kernel, device array and module the kernel modules cached (lru_cache'd functions)."""
    from kernels.cupy import _chunked, _module
    for name, mod in list(sys.modules.items()):
        if name.startswith("kernels.cupy."):
            for attr in list(vars(mod).values()):
                if callable(getattr(attr, "cache_clear", None)):
                    attr.cache_clear()
    backends.cupy_module.cache_clear()
    _chunked._DUMMIES.clear()
    _module._OPTED_IN.clear()


@pytest.fixture
def fake(monkeypatch):
    log = dict(full=[], empty=0, launches=[], modules=[])
    _clear_caches()
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(log))
    yield log
    monkeypatch.undo()
    _clear_caches()


def _cases():
    for op in registry.OPS:
        for v in registry.variants(op, "cupy"):
            for dtype in v.dtypes:
                if dtype != "bfloat16":
                    yield pytest.param(v, dtype, id=f"{op}-{v.key}-{dtype}")


@pytest.mark.parametrize("variant, dtype", list(_cases()))
def test_launch_path_of_every_cupy_variant(fake, variant, dtype):
    from kernels.cupy import _module
    op = variant.op
    for (dk, dv), causal in (((64, 64), True), ((16, 5), False), ((200, 96), True)):
        for extra in ([{}] if op != "linear" else [{}, dict(feature_map="elu1", normalize=True)]):
            arrays = random_inputs(op, (3,), 70, dk, dv, dtype, seed=0)
            opts = validated_options(op, default_options(op, causal=causal, **extra), dk)
            if variant.unsupported_reason(opts, {"q": arrays[0].shape, "v": arrays[2].shape}):
                continue
            for poison in (False, True):
                fake["full"].clear()
                with backends.poisoned(poison):
                    out, ctx = variant.forward(*arrays, **opts)
                    grads = variant.backward(ctx, np.ones_like(out))
                assert out.shape == (3, 70, dv) and out.dtype == dtype
                assert [g.shape for g in grads] == [a.shape for a in arrays]
                assert all(g.dtype == dtype for g in grads)
                nan_fills = [v for v in fake["full"] if np.isnan(v) or v == 255]    # 0xFF bytes: NaN too
                assert bool(nan_fills) == poison, "outputs NaN-filled exactly while poisoning"
    assert fake["launches"]
    declared = {g for _, g in _module.groups()}
    assert all(m in declared for m in fake["modules"]), "a module compiled outside the declared groups"


def test_warmup_lists_every_group_and_refuses_without_a_gpu(monkeypatch):
    from cli import main
    from kernels.cupy import _module
    r = CliRunner().invoke(main, ["warmup", "--list", "--backend", "cupy", "--op", "softmax"])
    assert r.exit_code == 0, r.output
    softmax_groups = [g for src, g in _module.groups() if src == "softmax.cu"]
    assert r.output.count("compile softmax.cu") == len(softmax_groups) > 0
    assert "call cupy:flash_mma float16" in r.output
    r = CliRunner().invoke(main, ["warmup", "--list", "--backend", "cupy", "--op", "linear"])
    assert r.exit_code == 0 and "call cupy:chunked_mma float32 T=64 causal=True, feature_map=elu1, normalize=True" \
        in r.output, r.output
    assert not re.search(r"call cupy:chunked_mma_tf32 .*normalize=True", r.output), "a call the variant refuses"
    monkeypatch.setattr(backends, "status", lambda b: (False, "no GPU here"))
    r = CliRunner().invoke(main, ["warmup"])
    assert r.exit_code == 2 and "nothing to warm up" in r.output and "no GPU here" in r.output


def test_sm90a_sources_are_built_and_warmed_for_sm90a_only(monkeypatch):
    """The warpgroup-MMA sources (_module.SM90A_SOURCES) compile with -arch=sm_90a in their options, the NVRTC check
    takes them for sm_90a alone, and `cli.py warmup` lists their groups only on a compute capability 9.0 device."""
    from kernels.cupy import _chunked_mma as mma, _module, nvrtc_check
    from workbench import warmup
    assert _module.source_options("chunked_wgmma.cu") == _module.DEFAULT_OPTIONS + ("-arch=sm_90a",)
    assert _module.source_options("chunked_mma.cu") == _module.DEFAULT_OPTIONS
    assert nvrtc_check.archs("wgmma_check.cu") == ("sm_90a",) and nvrtc_check.archs("softmax.cu") == nvrtc_check.ARCHS
    assert set(_module.SM90A_SOURCES) == {src for src in nvrtc_check.instantiations()
                                          if "wgmma.cuh" in _module.source(src)}
    for on in (False, True):
        monkeypatch.setattr(_module, "sm90a", lambda on=on: on)
        srcs = {src for src, _ in warmup.cupy_groups(("linear",))}
        assert ("chunked_wgmma.cu" in srcs) == on and "chunked_mma.cu" in srcs
        assert not mma.wg_kernel(mma.WG_FWD_MODES, "dqrev_wgb", "float16", False) or on


def test_cuda_source_text_changes_with_its_headers(tmp_path, monkeypatch):
    """CuPy's on-disk cache keys on the source text: a header edit must change it."""
    from kernels.cupy import _module
    (tmp_path / "a.cuh").write_text("#pragma once\nconst int A = 1;\n")
    (tmp_path / "b.cuh").write_text('#pragma once\n#include "a.cuh"\n')
    (tmp_path / "k.cu").write_text('#include "b.cuh"\n__global__ void k() {}\n')
    monkeypatch.setattr(_module, "CUDA_DIR", str(tmp_path))
    _module.source.cache_clear()
    before = _module.source("k.cu")
    assert before.startswith('#include "b.cuh"') and "b.cuh:" in before and "a.cuh:" in before
    (tmp_path / "a.cuh").write_text("#pragma once\nconst int A = 2;\n")
    _module.source.cache_clear()
    assert _module.source("k.cu") != before
    _module.source.cache_clear()


@pytest.mark.parametrize("op", ["linear", "decayed"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("impl, stages", [("chunked_mma", 1), ("chunked_mma_db", 2), ("chunked_mma_dqf", 1),
                                          ("chunked_mma_dqr", 1)])
def test_state_and_packed_launch_path_of_chunked_mma(fake, op, normalize, impl, stages):
    """The tensor-core variants' state / packed keywords through the stand-in CuPy: states in and out with the
    registry contract's types and shapes, and one more gradient (the initial state's) when one was passed;
    every chunk-walking kernel launched with the variant's load stages (chunked_mma_db: double-buffered;
    chunked_mma_dqf: dq folded into the dk/dv walk, so no tc_bwd_dq and the forward storing every chunk's state;
    chunked_mma_dqr: the REV segment sums from tc_bwd_dq's ESUM instantiation, no REV tc_seg_state pass;
    16-bit linear tc_seg_state at two stages whatever the walk's, _chunked_mma.seg_stages)."""
    from workbench.state import DecayedState, LinearState
    if op == "decayed" and normalize:
        pytest.skip("decayed has no normalize")
    v = registry.get(op, "cupy", impl)
    assert v.features >= {"state", "packed"}
    cu = (0, 1, 64, 65, 130)
    N, T, dk, dv = 2, cu[-1], 16, 24
    arrays = random_inputs(op, (N,), T, dk, dv, "float16", seed=0)
    extra = dict(normalize=True, feature_map="elu1") if normalize else {}
    opts = validated_options(op, default_options(op, causal=True, **extra), dk)
    Cls = LinearState if op == "linear" else DecayedState
    fields = dict(S=np.ones((N, len(cu) - 1, dk, dv), np.float32))
    if normalize:
        fields["z"] = np.ones((N, len(cu) - 1, dk), np.float32)
    S0 = Cls(**fields)
    (out, final), ctx = v.forward(*arrays, **opts, initial_state=S0, return_state=True, cu_seqlens=cu)
    assert out.shape == (N, T, dv) and type(final) is Cls and final.S.shape == (N, len(cu) - 1, dk, dv)
    assert (final.z.shape == (N, len(cu) - 1, dk)) if normalize else getattr(final, "z", None) is None
    grads = v.backward(ctx, np.ones_like(out), final)
    assert [g.shape for g in grads[:len(arrays)]] == [a.shape for a in arrays]
    assert type(grads[-1]) is Cls and grads[-1].S.shape == final.S.shape
    out2, ctx2 = v.forward(*arrays, **opts, cu_seqlens=cu)           # packed alone: no state, no extra gradient
    assert len(v.backward(ctx2, np.ones_like(out2))) == len(arrays)
    # float16 with normalize runs the core in float32 (its denominator column overflows float16 at T ~ 1k)
    core = [e for e in fake["launches"] if e.startswith("tc_fwd<")]
    assert core and all(("<float," if normalize else "<wb_half,") in e for e in core), core
    walks = [e for e in fake["launches"] if e.startswith(("tc_fwd<", "tc_seg_state<", "tc_bwd_dq<", "tc_bwd_dkdv<"))]
    fold, esum = impl == "chunked_mma_dqf", impl == "chunked_mma_dqr"
    assert ({e.split("<")[0] for e in walks}
            == {"tc_fwd", "tc_seg_state", "tc_bwd_dkdv"} | (set() if fold else {"tc_bwd_dq"})), walks
    from kernels.cupy._chunked_mma import SEG_STATE_STAGES_LINEAR_16BIT     # (the rule restated: seg_stages under test)
    seg = stages if normalize or op == "decayed" else max(stages, SEG_STATE_STAGES_LINEAR_16BIT)
    assert all(e.endswith(f", {stages}, 1>" if fold and e.startswith("tc_fwd<")
                          else f", {stages}, true>" if esum and e.startswith("tc_bwd_dq<")
                          else f", {seg}>" if e.startswith("tc_seg_state<") else f", {stages}>")
               for e in walks), walks
    # segments of one chunk here (132 SMs): the REV pass (tc_seg_state REV true) runs but where the dq walker forms
    # its sums
    assert any(", true, " in e for e in walks if e.startswith("tc_seg_state<")) != esum, walks
    if fold:                        # the walker forming dq, dk and dv (tc::DKDV_DQ) and nothing else
        assert {e for e in walks if e.startswith("tc_bwd_dkdv<")} == {
            f"tc_bwd_dkdv<{'float' if normalize else 'wb_half'}, 64, 64, {3 if normalize else 1}, 3, 0, 1>"}, walks


@pytest.mark.parametrize("impl, d, anchored", [
    ("chunked_mma_dqa", 64, True), ("chunked_mma_dqa", 48, True), ("chunked_mma", 64, True), ("chunked_mma_db", 64, True),
    ("chunked_mma_dqf", 48, False), ("chunked_mma", 80, False), ("chunked_mma_dkdv2", 64, False),
    ("chunked_mma_bf16f32", 64, False)])
def test_bfloat16_decayed_core(fake, impl, d, anchored):
    """bfloat16 decayed (kernels/cupy/decayed.py, BF16_ANCHORED_FROM): the 16-bit core with d log_decay from chunk
    anchors -- the forward storing every chunk's state, the dq-folded walker (tc::DKDV_DQ) and no tc_bwd_dq,
    tc_dg<wb_bf16> without tc_dg_part -- at head dims <= 64 in the dk/dv modes fused (the default: cupy:chunked_mma,
    _db) and anchor (cupy:chunked_mma_dqa); the float32 core (3xTF32) above 64, in the other modes and in
    cupy:chunked_mma_bf16f32.  T = 300 on 132 SMs: segments of one chunk, so the unanchored path sums segments
    (tc_dg_part)."""
    import ml_dtypes  # noqa: F401  (numpy's bfloat16)
    from kernels.cupy import _chunked_mma
    _chunked_mma._PLANS.clear()                  # launches prepared by an earlier test log elsewhere
    v = registry.get("decayed", "cupy", impl)
    arrays = random_inputs("decayed", (2,), 300, d, d, "bfloat16", seed=0)
    opts = validated_options("decayed", default_options("decayed", causal=True), d)
    out, ctx = v.forward(*arrays, **opts)
    grads = v.backward(ctx, np.ones_like(out))
    assert out.dtype == arrays[0].dtype and [(g.shape, g.dtype) for g in grads] == [(a.shape, a.dtype) for a in arrays]
    assert str(ctx.core.g.dtype) == "bfloat16"        # the walkers read bfloat16 log decays (g_kind): no cast
    # a prepared pair exactly where the core runs in 16 bits (the float32 core casts q, k, v: the general path)
    pair = v.prepare(opts, (arrays[0].shape, arrays[1].shape, arrays[2].shape, arrays[3].shape), arrays[0].dtype)
    assert (pair is not None) == anchored
    la = fake["launches"]
    fwd = [e for e in la if e.startswith("tc_fwd<")]
    assert fwd and all(e.startswith("tc_fwd<wb_bf16," if anchored else "tc_fwd<float,") for e in fwd), fwd
    assert "tc_dg<wb_bf16>" in la, la
    dkdv = {e for e in la if e.startswith("tc_bwd_dkdv<")}
    if anchored:
        assert len(dkdv) == 1 and next(iter(dkdv)).startswith("tc_bwd_dkdv<wb_bf16, 64, 64, 1, 3, 0, "), dkdv
        assert not any(e.startswith(("tc_bwd_dq<", "tc_dg_part")) for e in la), la
        assert all(e.endswith(", 1>") for e in fwd), fwd                     # STORE: every chunk's state
    else:
        assert "tc_dg_part" in la and not any(e.startswith("tc_bwd_dkdv<wb_bf16") for e in la), la


@pytest.mark.parametrize("impl", ["chunked", "chunked_seg"])
def test_cuda_core_decayed_refuses_log_decays_below_its_range(fake, impl):
    """cupy:chunked / chunked_seg (float32 cumsum differences) refuse log decays below -30 and -inf with a clear
    error naming the variants that take them, instead of returning something silently wrong."""
    q, k, v, g = random_inputs("decayed", (2,), 70, 16, 16, "float32", seed=0)
    var = registry.get("decayed", "cupy", impl)
    var.forward(q, k, v, np.full_like(g, -30.0))                       # the edge of the range is taken
    for bad in (-31.0, -np.inf):
        g2 = g.copy()
        g2[1, 5] = bad
        with pytest.raises(ValueError, match=rf"cupy:{impl} is accurate for log_decay >= -30.*cupy:chunked_mma"):
            var.forward(q, k, v, g2)
    registry.get("decayed", "cupy", "chunked_mma").forward(q, k, v, g2)   # the default takes -inf


@pytest.mark.parametrize("T, causal, launches", [
    (64, True, ["zeros_ftoken", "tz_fwd"]),                                   # one segment: no states
    (64, False, ["zeros_ftoken", "tz_fwd", "tz_fwd"]),                        # the segment sums are the totals
    (300, True, ["zeros_fchunk", "zeros_fscan", "zeros_ftoken", "tz_fwd", "tz_seg_scan", "tz_fwd"])])
def test_fused_zeros_forward_plan(fake, T, causal, launches):
    """cupy:chunked_mma_fused's forward plan (zeros._FusedPlan): made once per geometry (and per
    IN_BLOCK_SCAN_MAX_CHUNKS), one allocation per call for o and the statistics, the launches its geometry needs."""
    from kernels.cupy import zeros
    v = registry.get("zeros", "cupy", "chunked_mma_fused")
    arrays = random_inputs("zeros", (1, 1), T, 64, 64, "float16", seed=0, n_gates=3)
    zeros._FUSED_PLANS.clear()
    with backends.poisoned(False):
        for _ in range(2):
            fake["launches"].clear()
            fake["empty"] = 0
            out, ctx = v.forward(*arrays, causal=causal, L=None if T == 64 else 1)
            assert out.shape == (1, 1, T, 64) and out.dtype == np.float16
            assert [e.split("<")[0] for e in fake["launches"]] == launches
            assert fake["empty"] == 1 + (launches.count("tz_seg_scan"))    # + the segment sums before a scan
            assert (ctx.H is None) == (causal and T == 64) and ctx.tok[1] == ctx.stats.st     # row m first
        assert len(zeros._FUSED_PLANS) == 1
        saved = zeros.IN_BLOCK_SCAN_MAX_CHUNKS
        zeros.IN_BLOCK_SCAN_MAX_CHUNKS = 0                   # a moved bound: a new plan, the scans apart
        try:
            fake["launches"].clear()
            v.forward(*arrays, causal=causal, L=None if T == 64 else 1)
        finally:
            zeros.IN_BLOCK_SCAN_MAX_CHUNKS = saved
        assert len(zeros._FUSED_PLANS) == 2 and fake["launches"][0].startswith("zeros_fchunk<")


@pytest.fixture
def stand_in(monkeypatch):
    """scripts/host_cost.py's stand-in cupy: no-op allocations and a no-op driver, so launches go through the
    packed-parameter launcher (kernels/cupy/_module.py) as on a GPU."""
    from script_modules import load_script
    hc = load_script("host_cost")
    _clear_caches()
    monkeypatch.setitem(sys.modules, "cupy", hc.stand_in_cupy())
    yield hc
    monkeypatch.undo()
    _clear_caches()


@pytest.mark.parametrize("T, causal, dtype", [(64, True, "float16"), (64, False, "float32"), (300, True, "bfloat16"),
                                             (300, False, "float16")])
def test_fused_zeros_forward_packs_every_launch(stand_in, T, causal, dtype):
    """Every prepared launch of the fused forward plan packs its arguments (the segment-sum pass of tz_fwd has
    a parameter layout of its own: null q and o, the sums by address or as an array) -- twice, so the second
    call reuses the first call's layouts -- with no fallback to the RawKernel call; the backward after it."""
    from kernels.cupy import _module, zeros
    hc = stand_in
    v = registry.get("zeros", "cupy", "chunked_mma_fused")
    arrays = [hc.ndarray(a.shape, a.dtype) for a in random_inputs("zeros", (1, 1), T, 64, 64, dtype, n_gates=3)]
    fallbacks = len(_module.FALLBACKS)
    zeros._FUSED_PLANS.clear()
    with backends.poisoned(False):
        for _ in range(2):
            hc.COUNTS.clear()
            out, ctx = v.forward(*arrays, causal=causal, L=None if T == 64 else 1)
            assert out.shape == (1, 1, T, 64) and out.dtype == arrays[0].dtype and hc.COUNTS["alloc"] == 1 + (T == 300)
            assert hc.COUNTS["launch"] == {(64, True): 2, (64, False): 3, (300, True): 6, (300, False): 6}[(T, causal)]
            grads = v.backward(ctx, hc.ndarray(out.shape, out.dtype))      # the backward takes H by address
            assert [g.shape for g in grads] == [a.shape for a in arrays]
    assert len(_module.FALLBACKS) == fallbacks


@pytest.mark.parametrize("T, causal, dtype", [(64, True, "float16"), (64, False, "float32"), (300, True, "bfloat16"),
                                             (300, False, "float16")])
def test_fused_zeros_backward_plan(stand_in, T, causal, dtype):
    """The fused backward's plans (zeros._FusedBackwardPlan): one per forward plan and variant kind (fused:
    tz_bwd_dk launched; fused2: dk in the dv walker, its parts summed by the scalars with several dv tiles;
    fused3: fused2's on its own forward plan, the segment sums on the dv walker's DKF instantiation), made
    at the first backward and reused; per backward one allocation (dq, dk, dv, ds, dgates as its views, the
    scratch -- segment sums and their scan included -- by address), the launches its geometry needs, every one
    through the packed launcher with no fallback to the RawKernel call."""
    from kernels.cupy import _module, zeros
    hc = stand_in
    arrays = [hc.ndarray(a.shape, a.dtype) for a in random_inputs("zeros", (1, 1), T, 64, 64, dtype, n_gates=3)]
    fallbacks = len(_module.FALLBACKS)
    zeros._FUSED_PLANS.clear()
    chained = 0 if causal and T == 64 else 1 if T == 64 else 2         # the segment sums (and their scan)
    scalars = 1 if T == 64 else 3                                     # bscalar_ds, or bscalar + bscan + bds
    with backends.poisoned(False):
        for impl, walks in (("chunked_mma_fused", 3), ("chunked_mma_fused2", 2), ("chunked_mma_fused3", 2),
                            ("chunked_mma_fused4", 2)):
            v = registry.get("zeros", "cupy", impl)                                  # dq, dv (, dk)
            for _ in range(2):
                out, ctx = v.forward(*arrays, causal=causal, L=None if T == 64 else 1)
                hc.COUNTS.clear()
                grads = v.backward(ctx, hc.ndarray(out.shape, out.dtype))
                assert [(g.shape, g.dtype) for g in grads] == [(a.shape, a.dtype) for a in arrays]
                assert (hc.COUNTS["launch"], hc.COUNTS["alloc"], hc.COUNTS["view"]) == (
                    walks + chained + scalars, 1, 5)
                assert len({g.data.ptr for g in grads}) == 5
            fused3 = impl in ("chunked_mma_fused3", "chunked_mma_fused4")       # (fused4: fused3 + dq_states)
            fused4 = impl == "chunked_mma_fused4"
            assert len(zeros._FUSED_PLANS) == 1 + fused3 + fused4               # fused and fused2 share theirs
            assert set(ctx.plan.backward) == ({False} if impl == "chunked_mma_fused" else {True} if fused3
                                              else {False, True})
            assert ctx.plan.kind == zeros.FUSED_KINDS[impl if fused3 else "chunked_mma_fused"]
            B = ctx.plan.backward[impl != "chunked_mma_fused"]
            # fused4, causal with several chunks: the forward stores the per-chunk states (in its one allocation)
            # and the dq walker reads them (its CST instantiation, in every case)
            assert (ctx.Hc is not None) == (fused4 and causal and T > 64) == B.dq_states
            assert (B.dq.kernel is zeros._fused_walker_of(dtype, "tz_bwd_dq", (64, 64), True, True)[0]) == fused4
            assert B.dk_in_dv == (impl != "chunked_mma_fused") and B.dk_parts == B.dk_in_dv   # 2 dv tiles at 64
            if chained:                                      # the segment-sum pass: fused3 on the DKF dv walker
                assert (B.sums.kernel is zeros._fused2_dv_kernel_of(dtype, 64)[0]) == fused3
        with backends.merge_bound(0):                         # above the bound: each gradient its own, one scratch
            hc.COUNTS.clear()
            grads = v.backward(ctx, hc.ndarray(out.shape, out.dtype))
        assert (hc.COUNTS["alloc"], hc.COUNTS["view"]) == (6, 0)
        assert [(g.shape, g.dtype) for g in grads] == [(a.shape, a.dtype) for a in arrays]
    assert len(_module.FALLBACKS) == fallbacks


@pytest.mark.parametrize("op", ["linear", "decayed"])
@pytest.mark.parametrize("impl", ["chunked_mma", "chunked_mma_dqr", "chunked_mma_dqf"])
def test_chunk_core_allocations_per_pass(stand_in, op, impl):
    """The chunk core with several segments (T = 300, one chunk per segment at N = 1): the forward allocates o and
    one block for everything its context keeps (log-decay totals, the states before each segment, the final
    state, dqf's per-chunk states) -- at any size, so also above OUTPUTS_MERGE_MAX -- with the segment sums in it
    up to that bound (above: their own, per call), plus a final state of its own when the caller asked for it; the
    backward its gradients' block and one block for its own arrays (REV sums, their scan's outputs, the dG segment
    sums), plus dS0 when an initial state was given."""
    from kernels.cupy import _module
    from workbench.state import DecayedState, LinearState
    hc = stand_in
    v = registry.get(op, "cupy", impl)
    arrays = [hc.ndarray(a.shape, a.dtype) for a in random_inputs(op, (1,), 300, 64, 64, "float16")]
    fallbacks = len(_module.FALLBACKS)
    Cls = LinearState if op == "linear" else DecayedState
    S0 = Cls(S=hc.ndarray((1, 1, 64, 64), np.float32))
    with backends.poisoned(False):
        for bound in (4 << 20, 0):                   # 0: every pass above OUTPUTS_MERGE_MAX
            with backends.merge_bound(bound):           # (a plan per bound: it weighs the segment sums against it)
                for state in (False, True):
                    kw = dict(initial_state=S0, return_state=True) if state else {}
                    hc.COUNTS.clear()
                    out, ctx = v.forward(*arrays, **kw)
                    # o, the saved block (, the segment sums above the bound) (, the caller's final state)
                    assert hc.COUNTS["alloc"] == 2 + (not bound) + state, (bound, state)
                    if state:
                        out, final = out
                        assert type(final) is Cls and final.S.shape == (1, 1, 64, 64)
                    hc.COUNTS.clear()
                    grads = v.backward(ctx, hc.ndarray(out.shape, out.dtype))  # (no final-state gradient: the
                    # stand-in does no arithmetic, which d log_decay's share of it takes)
                    assert [g.shape for g in grads[:len(arrays)]] == [a.shape for a in arrays]
                    ngrad = 1 if bound else len(arrays) + (op == "decayed")     # + d log_decay's row-dot scratch
                    assert hc.COUNTS["alloc"] == ngrad + 1 + state, (bound, state)
    assert len(_module.FALLBACKS) == fallbacks


@pytest.mark.parametrize("op, key, dtype, T, options", [
    ("linear", "cupy:chunked_mma", "float16", 64, dict(scale=0.5)),
    ("linear", "cupy:chunked_mma_tf32", "float32", 70, dict(causal=False)),
    ("linear", "cupy:chunked_mma_db", "float32", 130, dict(cu_seqlens=(0, 50, 130))),
    ("decayed", "cupy:chunked_mma", "float32", 70, dict(scale=0.25)),
    ("decayed", "cupy:chunked_mma", "float16", 64, {}),
    ("decayed", "cupy:chunked_mma_dqf", "float16", 130, {}),
    ("linear", "cupy:chunked_mma_dqr", "float16", 200, dict(cu_seqlens=(0, 70, 200))),
    ("decayed", "cupy:chunked_mma_dqr", "float32", 130, {}),
    ("decayed", "cupy:chunked_mma_dqa", "float32", 200, dict(cu_seqlens=(0, 70, 200))),
    ("decayed", "cupy:chunked_mma", "bfloat16", 130, {}),           # the anchored 16-bit core's pair
    ("decayed", "cupy:chunked_mma_db", "bfloat16", 200, dict(cu_seqlens=(0, 70, 200))),
    ("zeros", "cupy:chunked_mma_fused3", "float16", 64, {}),
    ("zeros", "cupy:chunked_mma_fused", "float32", 300, dict(causal=False)),
    ("zeros", "cupy:chunked_mma_fused2", "float32", 70, {}),
    ("zeros", "cupy:chunked_mma_fused4", "float16", 130, {}),
    ("softmax", "cupy:fa2", "float16", 300, {}),                     # fa2_bwd_pre + fa2_bwd_tail
    ("softmax", "cupy:fa2_3xtf32", "float32", 64, dict(scale=0.3)),  # direct: fa2_bwd alone
    ("softmax", "cupy:fa2_atomic", "float16", 200, dict(causal=False)),
    ("softmax", "cupy:fa2_tf32", "float32", 130, dict(cu_seqlens=(0, 50, 130))),
    ("softmax", "cupy:fa2_cast", "float16", 130, {})])
def test_prepared_path_launches_as_the_variant(fake, op, key, dtype, T, options):
    """A variant's prepared pair (registry.Variant.prepare), through the public API, launches what the variant's own
    forward and backward launch for the same arrays and options: the same kernels, grids, blocks, shared memory and
    scalar arguments, arrays of the same shapes and dtypes, addresses where they pass addresses; outputs and
    gradients of the same shapes and dtypes."""
    import functools

    import workbench as wb
    from workbench import ops
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")            # registers numpy's "bfloat16"
    v = registry.get(op, *key.split(":"))
    arrays = random_inputs(op, (2,), T, 64, 64, dtype, seed=0, **({"n_gates": 3} if op == "zeros" else {}))
    ops._PLANS.clear()
    fake["calls"] = []
    with backends.poisoned(False):
        out, pullback = wb.vjp(ops.PUBLIC_OPS[op], *arrays, backend=key, **options)
        grads = pullback(np.ones_like(out))
        (plan,) = ops._PLANS.values()
        assert not isinstance(plan.fwd, functools.partial) and plan.fwd is not v.forward, "the prepared pair"
        api, fake["calls"] = fake["calls"], []
        out2, ctx = v.forward(*arrays, **plan.options)
        grads2 = v.backward(ctx, np.ones_like(out2))
    assert api and api == fake["calls"]
    assert (out.shape, out.dtype) == (out2.shape, out2.dtype)
    assert [(g.shape, g.dtype) for g in grads] == [(g.shape, g.dtype) for g in grads2]


def test_prepared_pair_per_plan(fake):
    """The prepared pairs are cached with the public ops' plans, so every change of what a plan is keyed on gets its
    own: shape, dtype, options (scale, its sign, causal, packing); with a state the general path (no pair); the same
    signature again reuses its plan and pair.  ZeroS's pair re-plans where IN_BLOCK_SCAN_MAX_CHUNKS moved."""
    import functools

    import workbench as wb
    from kernels.cupy import zeros
    from workbench import ops
    from workbench.state import DecayedState

    def plan_of(fn, *arrays, **kw):
        n = len(ops._PLANS)
        out, pullback = wb.vjp(fn, *arrays, **kw)
        o = out[0] if kw.get("return_state") else out
        pullback(np.ones_like(o))
        return list(ops._PLANS.values())[-1], len(ops._PLANS) - n

    def run_of(plan):
        return None if isinstance(plan.fwd, functools.partial) else plan.fwd.__self__

    ops._PLANS.clear()
    a32 = random_inputs("decayed", (2,), 70, 16, 24, "float32", seed=0)
    base, new = plan_of(wb.decayed_attention, *a32, backend="cupy")
    r = run_of(base)
    assert new == 1 and r.P.T == 70 and r.P.dt == "float32" and r.scale32 == 1.0
    assert plan_of(wb.decayed_attention, *a32, backend="cupy") == (base, 0)
    seen = {id(r)}
    for arrays, kw, check in (
            (random_inputs("decayed", (2,), 130, 16, 24, "float32", seed=0), {}, lambda r: r.P.T == 130),
            (random_inputs("decayed", (2,), 70, 16, 24, "float16", seed=0), {}, lambda r: r.P.dt == "float16"),
            (random_inputs("decayed", (3,), 70, 16, 24, "float32", seed=0), {}, lambda r: r.P.N == 3),
            (a32, dict(scale=0.5), lambda r: r.scale32 == np.float32(0.5)),
            (a32, dict(scale=0.0), lambda r: r.scale32 == 0 and not np.signbit(r.scale32)),
            (a32, dict(scale=-0.0), lambda r: np.signbit(r.scale32)),
            (a32, dict(cu_seqlens=(0, 30, 70)), lambda r: r.P.table.nseq == 2)):
        plan, new = plan_of(wb.decayed_attention, *arrays, backend="cupy", **kw)
        r = run_of(plan)
        assert new == 1 and r is not None and id(r) not in seen and check(r), kw
        seen.add(id(r))
    state = DecayedState(np.zeros((2, 16, 24), np.float32))
    for kw in (dict(initial_state=state), dict(return_state=True)):
        plan, new = plan_of(wb.decayed_attention, *a32, backend="cupy", **kw)
        assert new == 1 and run_of(plan) is None, kw                      # a state: the variant's general path
    lin = random_inputs("linear", (2,), 70, 16, 24, "float32", seed=0)
    for kw, prepared in ((dict(causal=False), True), (dict(normalize=True), False), (dict(feature_map="relu"), False)):
        plan, new = plan_of(wb.linear_attention, *lin, backend="cupy", **kw)
        assert new == 1 and (run_of(plan) is not None) == prepared, kw
        if prepared:
            assert not run_of(plan).P.causal
    z = random_inputs("zeros", (1,), 64, 64, 64, "float16", seed=0, n_gates=3)
    plan, new = plan_of(wb.zeros_attention, *z, backend="cupy:chunked_mma_fused3")
    r = run_of(plan)
    assert new == 1 and not r.P.separate
    saved = zeros.IN_BLOCK_SCAN_MAX_CHUNKS
    zeros.IN_BLOCK_SCAN_MAX_CHUNKS = 0                        # a moved bound: the same pair makes the new plan
    try:
        assert plan_of(wb.zeros_attention, *z, backend="cupy:chunked_mma_fused3") == (plan, 0) and r.P.separate
    finally:
        zeros.IN_BLOCK_SCAN_MAX_CHUNKS = saved
    plan_of(wb.zeros_attention, *z, backend="cupy:chunked_mma_fused3")
    assert not r.P.separate


class _Order(__import__("collections").Counter):
    """host_cost's COUNTS that also records the order of what reached the stand-in (allocations, launches)."""
    def __init__(self):
        super().__init__()
        self.order = []

    def __setitem__(self, key, value):
        if key in ("alloc", "launch"):
            self.order.append(key)
        super().__setitem__(key, value)


@pytest.mark.parametrize("name, dtype, order", [
    # above the merge bound: the accumulator, D (and the tail's counters) alone, fa2_bwd_pre queued on them, then
    # dq, dk, dv -- the GPU runs fa2_bwd_pre while the host allocates them -- and the key blocks' launch(es)
    ("fa2_tail", "float16", ["alloc", "launch", "alloc", "alloc", "alloc", "launch"]),
    ("fa2_atomic", "float16", ["alloc", "launch", "alloc", "alloc", "alloc", "launch", "launch"]),
    # float32: dq is its own accumulator (fa2_bwd_pre zeroes it), so the gradients come first
    ("fa2_atomic", "float32", ["alloc", "alloc", "alloc", "alloc", "launch", "launch"]),
])
def test_fa2_backward_queues_fa2_bwd_pre_before_the_gradients(stand_in, monkeypatch, name, dtype, order):
    hc = stand_in
    v = registry.get("softmax", "cupy", name)
    arrays = [hc.ndarray(a.shape, a.dtype) for a in random_inputs("softmax", (2, 3), 300, 64, 64, dtype)]
    rec = _Order()
    monkeypatch.setattr(hc, "COUNTS", rec)
    with backends.poisoned(False), backends.merge_bound(0):
        out, ctx = v.forward(*arrays, causal=True)
        del rec.order[:]
        grads = v.backward(ctx, hc.ndarray(out.shape, out.dtype))
    assert rec.order == order
    assert [(g.shape, g.dtype) for g in grads] == [(a.shape, a.dtype) for a in arrays]
    with backends.poisoned(False), backends.merge_bound(0, 1 << 30):   # the gradients in one allocation (4-32 MiB)
        del rec.order[:]
        grads = v.backward(ctx, hc.ndarray(out.shape, out.dtype))
    # (float32: the gradients' allocation, then the scratch's)
    assert rec.order == ["alloc", "alloc"] + order[4:] if dtype == "float32" else ["alloc", "launch", "alloc"] + order[5:]
    assert [(g.shape, g.dtype) for g in grads] == [(a.shape, a.dtype) for a in arrays]
    with backends.poisoned(False):          # below the bound: one allocation, then the launches
        del rec.order[:]
        v.backward(ctx, hc.ndarray(out.shape, out.dtype))
    assert rec.order == ["alloc"] + [e for e in order if e == "launch"]


def test_tune_xscale_refuses_without_a_compute_capability_9_gpu(capsys):
    """scripts/tune_xscale.py exits 1 with the reason where the pairs walkers cannot run (no CuPy here)."""
    from script_modules import load_script
    tune = load_script("tune_xscale")
    assert tune.main(["--T", "256"]) == 1
    assert "compute capability 9.0" in capsys.readouterr().err
