"""The packed-parameter launcher of kernels/cupy/_module.py.

Without a GPU: the parameter layout built from the argument types (C alignment), the bytes and the ``extra``
array a launch hands to a stand-in ``cupy.cuda.driver.launchKernel``, and when the RawKernel's own call is
used instead (no driver binding, a kernel object without a function handle, argument types the launcher does
not take, ``slow_launch()`` / ``WORKBENCH_SLOW_LAUNCH=1``, a failed first launch).

On a GPU (``-m gpu``): every CuPy variant, forward and every gradient, gives the same results through the
packed launcher as through CuPy's RawKernel call (bitwise where four runs of the slow path agree bitwise, else
within the run-to-run spread of the slow path), on an awkward shape, with initial states and packed sequences
where the variant takes them."""
import ctypes
import os
import struct
import subprocess
import sys
import types

import numpy as np
import pytest

from kernels.cupy import _module
from kernels.cupy._module import FastLauncher, Prepared, launch, param_format, slow_launch


# ----------------------------------------------------------------------------- without a GPU
class DevArray:
    """Stands in for a cupy.ndarray: ``data.ptr`` and a dtype."""

    def __init__(self, ptr, dtype=np.float32):
        self.data = types.SimpleNamespace(ptr=ptr)
        self.dtype = np.dtype(dtype)


def _offsets(fmt: str) -> list:
    """Byte offset of every field of a native struct format ('@' and one code per field)."""
    codes = fmt[1:]
    return [struct.calcsize("@" + codes[:i + 1]) - struct.calcsize("@" + codes[i]) for i in range(len(codes))]


def test_format_from_argument_types_has_c_alignment():
    args = (DevArray(0x1000), np.int32(3), None, np.float32(0.5), np.int64(7))
    fmt = param_format(args)
    assert fmt == "@PiPfq"
    assert _offsets(fmt) == [0, 8, 16, 24, 32] and struct.calcsize(fmt) == 40
    assert _offsets(param_format((np.int32(1), np.uint64(2), np.float32(1), np.int32(2), DevArray(1)))) == [0, 8, 16, 20, 24]
    assert param_format((np.int32(1), np.int32(2), np.float32(3))) == "@iif"      # no padding between 4-byte fields


@pytest.mark.parametrize("bad", [3, 2.0, True, np.zeros(3, np.float32), np.float64(1.0), np.int16(1), "x"])
def test_types_the_launcher_does_not_take_give_no_format(bad):
    assert param_format((DevArray(1), bad)) is None


class FakeDriver:
    """``launchKernel`` recording what the driver would read: the packed buffer through the ``extra`` array."""

    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def launchKernel(self, func, gx, gy, gz, bx, by, bz, smem, stream, kernel_params, extra):
        if self.fail:
            raise self.fail
        words = (ctypes.c_void_p * 5).from_address(extra)
        assert [words[0], words[2], words[4]] == [1, 2, None]          # BUFFER_POINTER, BUFFER_SIZE, END
        size = ctypes.c_size_t.from_address(words[3]).value
        assert words[1] % 8 == 0
        self.calls.append(dict(func=func, grid=(gx, gy, gz), block=(bx, by, bz), smem=smem, stream=stream,
                               params=kernel_params, buffer=ctypes.string_at(words[1], size)))


class FakeRawKernel:
    """A RawKernel: ``kernel.ptr`` (the function handle), and its own call recorded (the slow path)."""

    def __init__(self, ptr=0xF00):
        self.name, self.calls, self.max_dynamic_shared_size_bytes = "k<float>", [], 0
        self._function = types.SimpleNamespace(ptr=ptr)

    @property
    def kernel(self):
        return self._function

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem))


@pytest.fixture
def driver(monkeypatch):
    drv = FakeDriver()
    cp = types.ModuleType("cupy")
    cp.cuda = types.SimpleNamespace(driver=drv, get_current_stream=lambda: types.SimpleNamespace(ptr=0x5EA))
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(_module, "_LAUNCHERS", {})
    monkeypatch.setattr(_module, "FALLBACKS", [])
    with slow_launch(False):
        yield drv


def test_a_launch_packs_the_values_at_their_offsets(driver):
    k = FakeRawKernel()
    a, b = DevArray(0x7000_0000_1000), DevArray(0x7000_0000_2200, np.float16)
    args = (a, np.int32(-3), None, np.float32(0.25), np.int64(2 ** 40 + 5), b, np.uint64(0x7000_0000_3300))
    launch(k, (5, 2), (128,), args, shared_mem=1024)
    assert k.calls == []
    (c,) = driver.calls
    assert c["func"] == 0xF00 and c["stream"] == 0x5EA and c["params"] == 0 and c["smem"] == 1024
    assert c["grid"] == (5, 2, 1) and c["block"] == (128, 1, 1)
    assert struct.unpack("@PiPfqPQ", c["buffer"]) == (a.data.ptr, -3, 0, 0.25, 2 ** 40 + 5, b.data.ptr,
                                                      0x7000_0000_3300)
    launch(k, (0, 0, 2), (64, 2, 3), (b, np.int32(9), None, np.float32(1.5), np.int64(-1), a, np.uint64(0)))
    c = driver.calls[-1]
    assert c["grid"] == (1, 1, 2) and c["block"] == (64, 2, 3)          # as CuPy launches zero grid dims
    assert struct.unpack("@PiPfqPQ", c["buffer"]) == (b.data.ptr, 9, 0, 1.5, -1, a.data.ptr, 0)


def test_argument_types_that_change_between_launches_get_their_own_layout(driver):
    k = FakeRawKernel()
    launch(k, (1,), (32,), (np.int32(1), DevArray(0x100)))
    launch(k, (1,), (32,), (np.int32(1), np.uint64(0)))            # a null pointer as np.uint64: same layout
    launch(k, (1,), (32,), (np.int64(1), np.int32(2)))
    assert [len(c["buffer"]) for c in driver.calls] == [16, 16, 12]
    assert struct.unpack("@qi", driver.calls[2]["buffer"]) == (1, 2)


def test_the_rawkernel_call_where_the_launcher_cannot(driver, monkeypatch):
    k = FakeRawKernel()
    launch(k, [3], [32], (DevArray(1), 7))                               # a Python int: CuPy picks its width
    assert driver.calls == [] and k.calls == [((3,), (32,), (k.calls[0][2][0], 7), 0)]
    with slow_launch():
        launch(k, (1,), (32,), (DevArray(1), np.int32(7)))
    assert driver.calls == [] and len(k.calls) == 2
    plain = types.SimpleNamespace(calls=[])                              # no function handle: the emulator's kernels

    class Emu:
        def __call__(self, grid, block, args, shared_mem=0):
            plain.calls.append(grid)
    launch(Emu(), (2,), (32,), (DevArray(1), np.int32(7)))
    assert plain.calls == [(2,)] and driver.calls == []
    monkeypatch.setattr(sys.modules["cupy"].cuda, "driver", types.SimpleNamespace())   # no launchKernel
    monkeypatch.setattr(_module, "_LAUNCHERS", {})
    k2 = FakeRawKernel()
    launch(k2, (1,), (32,), (DevArray(1), np.int32(7)))
    assert len(k2.calls) == 1 and driver.calls == []


def test_a_failed_first_launch_goes_to_the_rawkernel_call_and_is_recorded(driver):
    k = FakeRawKernel()
    driver.fail = RuntimeError("CUDA_ERROR_INVALID_VALUE")
    with pytest.warns(UserWarning, match="packed-parameter launch"):
        launch(k, (1,), (32,), (DevArray(1), np.int32(7)))
    assert len(k.calls) == 1 and _module.FALLBACKS == [("k<float>", "RuntimeError: CUDA_ERROR_INVALID_VALUE")]
    launch(k, (1,), (32,), (DevArray(1), np.int32(8)))                  # that signature stays on the slow path
    assert len(k.calls) == 2
    driver.fail = None
    launch(k, (1,), (32,), (np.int32(1), DevArray(1)))                  # another signature: packed, proven
    assert len(driver.calls) == 1
    driver.fail = RuntimeError("CUDA_ERROR_INVALID_CONTEXT")            # a new thread: CuPy's call sets one up
    launch(k, (1,), (32,), (np.int32(1), DevArray(1)))
    assert len(k.calls) == 3 and len(_module.FALLBACKS) == 1
    driver.fail = None
    launch(k, (1,), (32,), (np.int32(1), DevArray(1)))                  # and the packer stays in use
    assert len(driver.calls) == 2
    driver.fail = RuntimeError("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
    with pytest.raises(RuntimeError, match="OUT_OF_RESOURCES"):         # a proven packer does not hide errors
        launch(k, (1,), (32,), (np.int32(1), DevArray(1)))


def test_a_prepared_launch_packs_arrays_or_none_and_falls_back_like_launch(driver):
    k = FakeRawKernel()
    prep = Prepared(k, (4, 3), (256,), 2048)
    a, b = DevArray(0x7000_0000_1000), DevArray(0x7000_0000_2200, np.float16)
    prep((a, None, np.int32(5), b, np.float32(0.5)))
    prep((None, b, np.int32(6), a, np.float32(1.5)))                    # a pointer parameter: array or None
    assert k.calls == [] and [c["grid"] + c["block"] for c in driver.calls] == [(4, 3, 1, 256, 1, 1)] * 2
    assert {c["smem"] for c in driver.calls} == {2048} and {c["func"] for c in driver.calls} == {0xF00}
    assert struct.unpack("@PPiPf", driver.calls[0]["buffer"]) == (a.data.ptr, 0, 5, b.data.ptr, 0.5)
    assert struct.unpack("@PPiPf", driver.calls[1]["buffer"]) == (0, b.data.ptr, 6, a.data.ptr, 1.5)
    with slow_launch():                                                   # the RawKernel's call: None as 0
        prep((a, None, np.int32(7), b, np.float32(2.0)))
    (call,) = k.calls
    assert call[:2] == ((4, 3), (256,)) and call[3] == 2048 and type(call[2][1]) is np.uint64 and call[2][1] == 0
    k2 = FakeRawKernel()
    driver.fail = RuntimeError("CUDA_ERROR_INVALID_VALUE")
    prep2 = Prepared(k2, (1,), (32,))
    with pytest.warns(UserWarning, match="packed-parameter launch"):
        prep2((a, np.int32(1)))
    driver.fail = None
    prep2((a, np.int32(2)))                                              # stays on the RawKernel's call
    assert len(k2.calls) == 2 and len(_module.FALLBACKS) == 1 and len(driver.calls) == 2


def test_the_environment_switch_forces_the_rawkernel_call():
    code = "from kernels.cupy import _module; print(_module.slow_launches())"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for value, want in (("1", "True"), ("0", "False")):
        env = dict(os.environ, WORKBENCH_SLOW_LAUNCH=value)
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
        assert out.stdout.strip() == want, out.stderr


def test_unavailable_launcher_reports_it():
    assert not FastLauncher(object()).available


# ----------------------------------------------------------------------------- on a GPU
def _gpu_cases():
    from workbench import registry
    for op in registry.OPS:
        for v in registry.variants(op, "cupy"):
            for dtype in v.dtypes:
                extras = [{}]
                if "state" in v.features:
                    extras.append({"state": True})
                if "packed" in v.features:
                    extras.append({"packed": True})
                for extra in extras:
                    label = "+".join(extra) or "plain"
                    marks = [pytest.mark.gpu]
                    yield pytest.param(v.key, op, dtype, extra, marks=marks,
                                       id=f"{op}-{v.key}-{dtype}-{label}{'-default' if v.default else ''}")


def _call(cp, op, key, dtype, extra, seed=0):
    """Forward + pullback through the public API (lead dims (2, 3), T = 65, Dk = 24, Dv = 40): every result as
    a NumPy array (float32 for bfloat16)."""
    import workbench as wb
    from workbench.inputs import random_inputs, random_state
    from workbench import state as st
    lead, T, Dk, Dv = (2, 3), 65, 24, 40
    arrays = random_inputs(op, lead, T, Dk, Dv, "float32", seed=seed)
    kw = {}
    if extra.get("packed"):
        kw["cu_seqlens"] = (0, 17, 40, T)
    nseq = (len(kw["cu_seqlens"]) - 1,) if "cu_seqlens" in kw else ()
    if extra.get("state"):
        state = st.map_state(cp.asarray, random_state(op, lead + nseq, Dk, Dv, "float32", seed=seed))
        kw.update(initial_state=state, return_state=True)
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")            # registers numpy's "bfloat16"
    dev = [cp.asarray(a.astype(dtype)) for a in arrays]
    out, pb = wb.vjp(wb.PUBLIC_OPS[op], *dev, backend=key, **kw)
    o = out[0] if isinstance(out, tuple) else out
    do = cp.asarray(np.random.default_rng(seed + 2).standard_normal(o.shape).astype(np.float32).astype(dtype))
    grads = pb(do)
    flat = [o] + [g for g in grads if not isinstance(g, tuple(st.STATE_TYPES.values()))]
    for x in (out[1],) + grads if isinstance(out, tuple) else grads:
        if isinstance(x, tuple(st.STATE_TYPES.values())):
            flat += list(st.fields(x).values())
    return [x.get().astype(np.float32) if str(x.dtype) == "bfloat16" else x.get() for x in flat]


@pytest.mark.parametrize("key, op, dtype, extra", list(_gpu_cases()))
def test_packed_launches_give_the_rawkernel_calls_results(key, op, dtype, extra):
    from workbench import backends
    cp = backends.cupy_module()
    if cp is None:
        pytest.skip("needs CuPy and a GPU")
    with slow_launch(True):              # four runs: a kernel with atomics shows its run-to-run spread
        slow1, *others = [_call(cp, op, key, dtype, extra) for _ in range(4)]
    fallbacks = len(_module.FALLBACKS)
    with slow_launch(False):
        fast = _call(cp, op, key, dtype, extra)
    assert len(_module.FALLBACKS) == fallbacks, _module.FALLBACKS[fallbacks:]
    assert any(launcher.packers for launcher in _module._LAUNCHERS.values()), "nothing went through the launcher"
    assert len(fast) == len(slow1)
    for i, (a, b) in enumerate(zip(fast, slow1)):
        assert a.shape == b.shape and a.dtype == b.dtype, (i, a.shape, b.shape)
        spread = max(float(np.max(np.abs(b.astype(np.float64) - o[i]), initial=0.0)) for o in others)
        diff = np.abs(a.astype(np.float64) - b)
        if spread == 0:
            assert np.array_equal(a, b, equal_nan=True), (i, float(np.nanmax(diff, initial=0.0)))
        else:                       # atomics: compare within the slow path's own run-to-run spread
            scale = float(np.max(np.abs(b), initial=0.0)) or 1.0
            assert float(np.nanmax(diff, initial=0.0)) <= max(4 * spread, 1e-6 * scale), (i, spread)


def test_scratch_parts_are_aligned_disjoint_and_poisoned():
    """backends.new_scratch (the ZeroS launch paths' scratch buffers by address)."""
    from workbench import backends
    layout = (((3, 5), np.float32), ((7,), np.float64), ((2, 2), np.int32), ((300,), np.float16))
    for poison in (False, True):
        with backends.poisoned(poison):
            buf, addrs = backends.new_scratch(np, layout)
        base = backends.data_ptr(buf)
        offsets = [int(a) - base for a in addrs]
        assert all(type(a) is np.uint64 for a in addrs)
        assert offsets == [0, 256, 512, 768] and buf.nbytes >= 768 + 600
        if poison:
            assert np.isnan(buf[:60].view(np.float32)).all() and np.isnan(buf[256:312].view(np.float64)).all()
            assert np.isnan(buf[768:1368].view(np.float16)).all()


def test_outputs_of_a_pass_share_one_allocation_up_to_the_bound(monkeypatch):
    """backends.new_outputs (the chunk core's backward: dq, dk, dv, d log_decay and the row dots)."""
    from workbench import backends
    layout = (((2, 3, 5), np.float16), ((7,), np.float32), ((1, 4), np.float64))
    scratch = (((3, 10), np.float32),) * 2
    for poison in (False, True):
        with backends.poisoned(poison):
            outs, addrs, keep = backends.new_outputs(np, layout, scratch)
        base = backends.data_ptr(keep)
        assert [(o.shape, o.dtype) for o in outs] == [(s, np.dtype(d)) for s, d in layout]
        assert [backends.data_ptr(o) - base for o in outs] == [0, 256, 512]
        assert [int(a) - base for a in addrs] == [768, 1024] and all(type(a) is np.uint64 for a in addrs)
        assert all(o.flags.c_contiguous and o.base is not None for o in outs)
        if poison:
            assert all(np.isnan(o).all() for o in outs) and np.isnan(keep[768:888].view(np.float32)).all()
    monkeypatch.setattr(backends, "OUTPUTS_MERGE_MAX", 1024)          # above the bound: one allocation each
    outs, addrs, keep = backends.new_outputs(np, layout, scratch)
    assert all(o.base is None for o in outs) and backends.data_ptr(keep) + 256 == int(addrs[1])
    assert backends.new_outputs(np, layout)[1] == []                    # no scratch: no addresses
    # above the bound still one allocation: everything but the largest output small beside it (o and its row
    # statistics), or parts that live together (a context's saved arrays)
    lopsided = (((64, 64), np.float32), ((16,), np.float32))
    assert all(o.base is not None for o in backends.new_outputs(np, lopsided)[0])
    even = (((32, 32), np.float32), ((32, 32), np.float32))
    assert all(o.base is None for o in backends.new_outputs(np, even)[0])
    assert all(o.base is not None for o in backends.outputs_layout(even, (), True).new(np)[0])
    # CuPy's way (an ndarray on the allocation's memory): the host_cost stand-in's ndarray(shape, dtype, memptr)
    monkeypatch.setattr(backends, "OUTPUTS_MERGE_MAX", 4 << 20)
    from script_modules import load_script
    hc = load_script("host_cost")
    for poison in (False, True):        # off: cupy.cuda.alloc's memory, no array around it; on: a 0xFF-filled array
        with backends.poisoned(poison):
            outs, addrs, keep = backends.new_outputs(hc.stand_in_cupy(), layout, scratch)
        base = backends.data_ptr(keep)
        assert isinstance(keep, hc.ndarray) == poison
        assert [(o.shape, o.dtype, o.data.ptr - base) for o in outs] == [
            ((2, 3, 5), np.float16, 0), ((7,), np.float32, 256), ((1, 4), np.float64, 512)]
        assert [int(a) - base for a in addrs] == [768, 1024]
    # a plan keeps the layout: made once per (outputs, scratch); one output comes back as a 1-tuple
    lay = backends.outputs_layout(layout, scratch)
    assert backends.outputs_layout(layout, scratch) is lay and lay.nbytes == 1280
    with backends.poisoned(False):
        (o,), addrs, keep = backends.outputs_layout(layout[:1]).new(hc.stand_in_cupy())
    assert o.shape == (2, 3, 5) and o.data.ptr == keep.ptr and addrs == []
    # by address (a launch before the arrays are made; softmax's forward): one allocation at any size, every
    # output's and scratch part's address, the views after on the same bytes
    monkeypatch.setattr(backends, "OUTPUTS_MERGE_MAX", 0)
    for xp in (np, hc.stand_in_cupy()):
        for poison in (False, True):
            with backends.poisoned(poison):
                keep, every = lay.new_by_address(xp)
                outs = lay.views(xp, keep)
            base = backends.data_ptr(keep)
            assert [int(a) - base for a in every] == [0, 256, 512, 768, 1024] and all(type(a) is np.uint64 for a in every)
            assert [(o.shape, o.dtype, backends.data_ptr(o) - base) for o in outs] == [
                ((2, 3, 5), np.float16, 0), ((7,), np.float32, 256), ((1, 4), np.float64, 512)]
            if poison and xp is np:
                assert all(np.isnan(o).all() for o in outs)


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["linear", "decayed", "zeros"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_step_kernels_through_both_launch_paths(op, dtype):
    """The CuPy step kernels (kernels/cupy/steps.py) launch through the same launcher: one token from a random
    state, bitwise equal through both paths (Dv = 40: 16-byte state accesses; Dv = 5: 4-byte ones)."""
    from kernels.cupy import steps as kernel_steps
    from workbench import backends, state as st
    from workbench.inputs import random_inputs, random_state
    options = {"linear": dict(feature_map="elu1", normalize=True, scale=0.5, eps=1e-6), "decayed": dict(scale=0.5),
               "zeros": {}}[op]
    cp = backends.cupy_module()
    if cp is None:
        pytest.skip("needs CuPy and a GPU")
    for Dv in (40, 5):
        arrays = [cp.asarray(a[..., 0, :] if a.ndim == 4 else a[..., 0]).astype(dtype)
                  for a in random_inputs(op, (2, 3), 1, 24, Dv, "float32", seed=4)]
        state = st.map_state(cp.asarray, random_state(op, (2, 3), 24, Dv, "float32", seed=5,
                                                      normalize=bool(options.get("normalize"))))
        results = []
        for slow in (True, False):
            with slow_launch(slow):
                o, new = getattr(kernel_steps, f"{op}_step")(*arrays, state, **options)
            results.append([o.get()] + [x.get() for x in st.fields(new).values()])
        for a, b in zip(*results):
            assert np.array_equal(a, b, equal_nan=True), (op, dtype, Dv)


def test_f32_caches_by_object_so_signed_zeros_stay_apart():
    from kernels.cupy._module import f32
    neg, pos = -0.0, 0.0
    assert np.signbit(f32(neg)) and not np.signbit(f32(pos)) and np.signbit(f32(neg))
    x = 0.125
    assert f32(x, 2.0) == np.float32(0.25) and f32(x) == np.float32(0.125) and type(f32(x)) is np.float32
    assert f32(3) == np.float32(3.0)
