"""The CuPy step kernels (kernels/cuda/steps.cu through kernels/cupy/steps.py) against the float64 chunked op,
token by token, and how workbench/steps.py picks them.

GPU (marked gpu; the CPU emulator, scripts/cuda_emulate.py, calls the same functions with a stand-in cupy):
T steps of the kernel from a random initial state give, in every dtype, the outputs and the final state of
the float64 NumPy op (numpy:chunked) run over the T tokens from that state; the state passed in is left as
it was (the kernel writes new arrays).  Shapes: 16-byte and 4-byte state accesses (Dv % 4), several
column slabs with a partial last one, Dk beyond one pass of loads, no leading dims; every block geometry.
CPU: the path choice and its errors, the geometry rule, the instantiation list.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import workbench as wb
from workbench import state as wst
from workbench.check import rel_error
from workbench.inputs import random_inputs, random_state

from kernels.cupy import _module, steps as kernel_steps

gpu = pytest.mark.gpu

# (label, op, options, input kwargs)
CASES = [
    ("linear", "linear", dict(scale=0.7), {}),
    ("linear-elu1-norm", "linear", dict(feature_map="elu1", normalize=True, scale=0.5), dict(feature_map="elu1")),
    ("linear-relu-norm", "linear", dict(feature_map="relu", normalize=True), dict(feature_map="relu")),
    ("decayed", "decayed", dict(scale=0.5), {}),
    ("zeros-2", "zeros", {}, dict(n_gates=2)),
    ("zeros-3", "zeros", {}, dict(n_gates=3)),
]
LABELS = [c[0] for c in CASES]
SHAPES = [((2, 3), 64, 64), ((1,), 5, 7), ((2,), 130, 72), ((), 16, 40)]
# relative error ceilings: outputs (rounded to the dtype) and the float32 state
OUT_TOL = {"float32": 2e-5, "float16": 2e-3, "bfloat16": 1e-2}
STATE_TOL = 2e-5
T_STEPS = 6


def _cupy():
    return pytest.importorskip("cupy")


def _cast(x, dtype):
    if dtype == "bfloat16":
        import ml_dtypes  # noqa: F401  (registers the dtype with NumPy)
    return np.asarray(x).astype(dtype)


def _token(x, t, lead):
    return x[..., t, :] if x.ndim == len(lead) + 2 else x[..., t]


def _kernel_run(op, options, arrays, init, dtype, lead, geometry=None):
    """T kernel steps from ``init`` on device arrays of ``dtype`` (the block geometry of kernels/cupy/steps.py's
    rule, or ``geometry``): (outputs (..., T, Dv) float64, final state, the initial state's device arrays
    after the run)."""
    cp = _cupy()
    xs = [cp.asarray(_cast(a, dtype)) for a in arrays]
    st0 = wst.map_state(cp.asarray, init)
    fn = getattr(kernel_steps, f"{op}_step")
    kw = wb.steps.validated_options(op, options, arrays[0].shape[-1])
    st, outs = st0, []
    for t in range(arrays[0].shape[-2]):
        o, st = fn(*[_token(x, t, lead) for x in xs], st, **kw, geometry=geometry)
        assert str(o.dtype) == dtype and o.shape == (*lead, arrays[2].shape[-1])
        outs.append(np.asarray(cp.asnumpy(o)).astype(np.float64))
    return np.stack(outs, -2), wst.map_state(lambda a: np.asarray(cp.asnumpy(a)), st), st0


def _errors(op, options, inkw, dtype, lead, Dk, Dv, seed=0, transform=None, geometry=None):
    """Relative errors of the kernel's T outputs and final state fields against the float64 op."""
    arrays = random_inputs(op, lead, T_STEPS, Dk, Dv, "float64", seed=seed, **inkw)
    if transform is not None:
        arrays = transform(arrays)
    arrays = [_cast(a, dtype).astype(np.float64) for a in arrays]        # the values every dtype holds
    init = wst.map_state(np.asarray, random_state(op, lead, Dk, Dv, "float32", seed=seed,
                                                  normalize=options.get("normalize", False)))
    o, fin, st0 = _kernel_run(op, options, arrays, init, dtype, lead, geometry)
    ref, ref_fin = wb.PUBLIC_OPS[op](*arrays, **options, initial_state=wst.map_state(lambda a: a.astype(np.float64), init),
                                     return_state=True, backend="numpy:chunked")
    errs = {"o": rel_error(o, ref)}
    errs.update({f"final.{n}": rel_error(x, getattr(ref_fin, n)) for n, x in wst.fields(fin).items()})
    for n, x in wst.fields(st0).items():                                  # double-buffered: init untouched
        np.testing.assert_array_equal(x.get() if hasattr(x, "get") else np.asarray(x), getattr(init, n),
                                      err_msg=f"state field {n} was modified")
    return errs


def _judge(errs, dtype):
    bad = {n: e for n, e in errs.items() if not e <= (OUT_TOL[dtype] if n == "o" else STATE_TOL)}
    assert not bad, (bad, errs)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("lead,Dk,Dv", SHAPES)
@pytest.mark.parametrize("label", LABELS)
def test_kernel_steps_equal_the_float64_op(label, lead, Dk, Dv, dtype):
    """Six kernel steps from a random state: outputs and final state of the float64 chunked op."""
    _, op, options, inkw = CASES[LABELS.index(label)]
    _judge(_errors(op, options, inkw, dtype, lead, Dk, Dv, seed=Dk + Dv), dtype)


def _extreme(op):
    """decayed: log decays -inf (an exact reset), -30 and 0; zeros: radial logits +-1e3 (e^s overflows
    without the running max), the maximum jumping up and down."""
    def transform(arrays):
        arrays = list(arrays)
        if op == "decayed":
            arrays[3] = np.broadcast_to(np.array([0.0, -np.inf, -30.0, 0.0, -0.5, -np.inf]),
                                        arrays[3].shape).copy()
        else:
            arrays[3] = np.broadcast_to(np.array([-1e3, 1e3, -1e3, 1e3, 2e3, 0.0]), arrays[3].shape) * \
                np.sign(arrays[3] + 0.1)
        return arrays
    return transform


@gpu
@pytest.mark.parametrize("geometry", list(kernel_steps.GEOMETRIES))
@pytest.mark.parametrize("lead,Dk,Dv", [((3,), 70, 40), ((2,), 40, 7)])
@pytest.mark.parametrize("label", LABELS)
def test_every_geometry(label, lead, Dk, Dv, geometry):
    """Every block geometry (the rule picks one per call; here each is forced) with 16- and 4-byte accesses:
    Dk = 70 takes two passes of 64 rows (one of 128), Dv = 40 a partial last slab of 16 or 32 columns; Dk = 40
    with 4-byte accesses two or three passes."""
    _, op, options, inkw = CASES[LABELS.index(label)]
    _judge(_errors(op, options, inkw, "float32", lead, Dk, Dv, seed=Dk + Dv, geometry=geometry), "float32")


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("label", ["decayed", "zeros-3"])
def test_kernel_steps_extreme_values(label, dtype):
    _, op, options, inkw = CASES[LABELS.index(label)]
    _judge(_errors(op, options, inkw, dtype, (3,), 64, 64, seed=5, transform=_extreme(op)), dtype)


@gpu
@pytest.mark.parametrize("label", LABELS)
def test_public_steps_run_the_kernel_on_cupy_arrays(label, monkeypatch):
    """wb.*_attention_step on CuPy float16 arrays runs the kernel (one launch per step) and equals the array
    form (path="array"); float64 CuPy arrays take the array form."""
    cp = _cupy()
    _, op, options, inkw = CASES[LABELS.index(label)]
    lead, T = (4, 2), 3
    arrays = [cp.asarray(a) for a in random_inputs(op, lead, T, 32, 24, "float16", seed=1, **inkw)]
    calls = []
    real = getattr(kernel_steps, f"{op}_step")
    monkeypatch.setattr(kernel_steps, f"{op}_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    public = wb.steps.STEPS[op]
    st = st_arr = None
    for t in range(T):
        tok = [_token(x, t, lead) for x in arrays]
        o, st = public(*tok, st, **options)
        o_arr, st_arr = wb.steps.step(op, *tok, state=st_arr, path="array", **options)
        assert isinstance(o, cp.ndarray) and o.dtype == np.float16
        assert rel_error(o.get(), o_arr.get().astype(np.float64)) < 2e-3
    assert len(calls) == T
    for n, x in wst.fields(st).items():
        assert rel_error(x.get(), getattr(st_arr, n).get().astype(np.float64)) < STATE_TOL, n
    tok64 = [_token(x, 0, lead).astype(cp.float64) for x in arrays]
    public(*tok64, None, **options)
    assert len(calls) == T


# ----------------------------------------------------------------------------- CPU
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a few of the GPU cases above, run through the CPU emulator: 16- and 4-byte accesses, three slabs and two
# passes of row loads, no leading dims, every op, float16 and float32, the extreme values
EMULATED = [("linear-elu1-norm", (2, 3), 64, 64, "float16"), ("decayed", (1,), 5, 7, "float32"),
            ("zeros-3", (2,), 130, 72, "float32"), ("linear", (), 16, 40, "float32")]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) for the CPU emulator")
def test_kernel_steps_in_the_cpu_emulator():
    """The GPU test functions above, called on the CPU emulator's stand-in cupy (scripts/cuda_emulate.py: every
    kernel built with g++ against emu.h, launches checked as the driver would), in a subprocess."""
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{os.path.join(ROOT, "scripts")!r}, {os.path.join(ROOT, "tests")!r}, {ROOT!r}]
        import cuda_emulate as emu
        if not hasattr(emu, "RawModule"):
            print("SKIP: this checkout's emulator cannot build kernels by name expression")
            sys.exit(0)
        sys.modules["cupy"] = emu.fake_cupy()
        import test_steps_kernel as t
        from workbench.backends import poisoned
        with poisoned():
            for label, lead, Dk, Dv, dtype in t.EMULATED:
                t.test_kernel_steps_equal_the_float64_op(label, lead, Dk, Dv, dtype)
            t.test_kernel_steps_extreme_values("zeros-3", "float32")
        print("PASSED", len(t.EMULATED) + 1)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if r.stdout.startswith("SKIP"):
        pytest.skip(r.stdout.strip())
    assert f"PASSED {len(EMULATED) + 1}" in r.stdout, r.stdout


def test_numpy_arrays_take_the_array_form_and_path_errors_are_clear():
    q, k, v, g = (_token(x, 0, (2,)) for x in random_inputs("decayed", (2,), 1, 4, 3, "float32"))
    o, st = wb.steps.step("decayed", q, k, v, g, path="auto")
    o2, st2 = wb.decayed_attention_step(q, k, v, g)
    np.testing.assert_array_equal(o, o2)
    np.testing.assert_array_equal(st.S, st2.S)
    with pytest.raises(ValueError, match="path='kernel' needs the CuPy step kernel.*NumPy arrays"):
        wb.steps.step("decayed", q, k, v, g, path="kernel")
    with pytest.raises(ValueError, match="unknown path 'gpu'; expected one of auto, kernel, array"):
        wb.steps.step("decayed", q, k, v, g, path="gpu")
    with pytest.raises(ValueError, match="unknown op 'softmax'"):
        wb.steps.step("softmax", q, k, v)
    with pytest.raises(TypeError, match=r"decayed_attention_step takes 4 arrays \(q, k, v, log_decay\), got 3"):
        wb.steps.step("decayed", q, k, v)


def test_kernel_limits():
    assert kernel_steps.unsupported("float16", 64) is None
    assert kernel_steps.unsupported("float32", 100000) is None          # no staging: any Dk, in passes
    assert "dtype float64" in kernel_steps.unsupported("float64", 64)


def test_geometry_rule():
    """The rule's picks (the decode grid: one head of 64 x 64 per sequence, batches 1..256), every geometry it
    names valid for its width, and the geometries of 16-byte accesses cover their key dims in one pass."""
    pick = kernel_steps.pick_geometry
    assert [pick(4, B, 64, 64) for B in (1, 4, 16, 32, 33, 64, 256)] == ["narrow"] * 4 + ["wide"] * 3
    assert pick(4, 1, 128, 128) == pick(4, 64, 65, 64) == pick(4, 1, 300, 64) == "deep"
    assert pick(1, 1, 64, 7) == pick(1, 1000, 16, 5) == "deep"
    for width, max_dk, _, name in kernel_steps.RULE:
        g = kernel_steps.GEOMETRIES[name]
        g.check(width)
        if max_dk is not None:
            assert g.rows_per_pass(width) >= max_dk, (width, name)
    assert kernel_steps.GEOMETRIES["deep"].rows_per_pass(4) == 128
    with pytest.raises(ValueError, match="slab / width divide 32"):
        kernel_steps.Geometry(24, 256, 2).check(4)
    with pytest.raises(ValueError, match="no step geometry for width 2"):
        pick(2, 1, 64, 64)


def test_instantiations_and_compile_groups():
    """Every op x dtype x (access width, geometry) the rule can pick is listed (the NVRTC test compiles them),
    compiled in its op's declared group, and that group is in warmup's list for the op (not for softmax, which
    has no step kernel)."""
    from workbench import warmup
    exprs = {e for _, e in kernel_steps.INSTANTIATIONS}
    shapes = kernel_steps.RULE_SHAPES
    assert set(shapes) == {(4, "narrow"), (4, "wide"), (4, "deep"), (1, "deep")}
    assert len(exprs) == 3 * 3 * len(shapes)
    assert kernel_steps.expression("zeros", "float16", 4, "wide") == "zeros_step<wb_half, 4, 32, 256, 2>"
    for op in kernel_steps.OPS:
        group = _module.group_of(kernel_steps.SOURCE, kernel_steps.expression(op, "float16", 4, "narrow"))
        assert set(group) == {kernel_steps.expression(op, dt, w, g) for dt in kernel_steps.CTYPE
                              for w, g in shapes}
        assert (kernel_steps.SOURCE, group) in warmup.cupy_groups((op,))
    assert not [src for src, _ in warmup.cupy_groups(("softmax",)) if src == kernel_steps.SOURCE]
