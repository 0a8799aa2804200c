"""Numba kernels are compiled per head-dim bucket, take the head dims and options at run time, and are
cacheable on disk (kernels/numba/_jit.py).  Without a GPU: which kernels two shapes launch is traced from the
variants' real host code (kernels/numba/_trace.py, nothing compiled); exactness runs on the CUDA simulator;
the cache keys are computed in two fresh processes.  On a GPU: a warm-up leaves later processes nothing to
compile."""
import inspect
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from workbench import check
from workbench.backends import numba_simulator

_jit = pytest.importorskip("kernels.numba._jit")
from kernels.numba import _chunked, _trace, linear, softmax  # noqa: E402
from kernels.numba import decayed as nd  # noqa: E402
from kernels.numba import zeros as nz  # noqa: E402
from numba import cuda  # noqa: E402  (a module global: the simulator swaps it inside kernels)

pytestmark = pytest.mark.slow      # Numba CUDA simulator and subprocesses: minutes; -m "not slow" leaves them out

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("softmax", "linear", "decayed", "zeros")
VARIANTS = [(op, v) for op in OPS for v in ("naive", "flash" if op == "softmax" else "chunked")]
# Kernels per (bucket, dtype): every option is run-time (causal, direction, normalize, output parts) except
# the feature map of linear's naive kernels (3 per map) and its elementwise phi / phi' passes (2 per map but
# identity); the chunked core, its segment scan and 4 more kernels are shared.
KERNELS_PER_BUCKET = {"softmax": 7, "linear": 3 * 3 + 2 * 2 + 5, "decayed": 6, "zeros": 6}


def launched(op, dims, variant=None, dtype="float32"):
    """{(kernel, argument types)} that forward + backward of op's numba variants launch at these head dims."""
    return {(id(x.kernel), x.sig) for x in
            _trace.trace((op,), (dtype,), (dims,), variants=(variant,) if variant else None)}


@pytest.mark.parametrize("op", OPS)
def test_head_dims_of_one_bucket_launch_the_same_kernels(op):
    """(5, 7), (16, 24) and (64, 64) all run the 64-bucket kernels (every variant, option and causal value);
    (80, 48) runs the 128-bucket ones."""
    ref = launched(op, (64, 64))
    assert launched(op, (5, 7)) == ref
    assert launched(op, (16, 24)) == ref
    assert launched(op, (80, 48)) != ref


@pytest.mark.parametrize("op", OPS)
def test_options_do_not_multiply_kernels(op):
    """Across every option cell and causal value, each kernel is launched with one signature, and an op
    has KERNELS_PER_BUCKET[op] kernels per bucket and dtype (two buckets: twice the bucketed ones)."""
    launches = _trace.trace((op,), ("float32",), ((64, 64),))
    kernels = {id(x.kernel) for x in launches}
    assert len(kernels) == len(launches) == KERNELS_PER_BUCKET[op], [x.name for x in launches]


def test_bucket_and_its_errors():
    assert [_jit.bucket(d) for d in (1, 64, 65, 128, 129, 256)] == [64, 64, 128, 128, 256, 256]
    assert _jit.bucket(16, 80) == 128
    with pytest.raises(ValueError, match="head dims up to 256"):
        _jit.bucket(64, 257)


def _kernel_functions():
    """Every kernel and device function the variants use, made by tracing all ops at two buckets."""
    _trace.trace(OPS, ("float32", "float64"), ((64, 64), (80, 48)))
    return [_trace.py_func(k) for k in _jit.KERNELS]


def _is_jitted(obj) -> bool:
    return type(obj).__name__ in ("CUDADispatcher", "FakeCUDAKernel")


def test_kernels_reach_device_functions_only_through_their_closure_or_own_file():
    """The disk-cache index of a kernel is dropped when its own source file changes; its closure cells (the
    device functions made by factories, serialised by value) are part of the cache key.  A device function
    imported as a global from another file would leave a stale kernel in the cache when edited.  Closure
    cells must be plain values (bucket, tiles, numba types, scalars) or jitted functions, so the key is the
    same in every process."""
    plain = (int, float, bool, np.generic, types.FunctionType)
    for fn in _kernel_functions():
        src = inspect.getfile(fn)
        for name in fn.__code__.co_names:
            obj = fn.__globals__.get(name)
            if _is_jitted(obj):
                assert inspect.getfile(_trace.py_func(obj)) == src, (fn.__qualname__, name)
        for cell in fn.__closure__ or ():
            v = cell.cell_contents
            assert _is_jitted(v) or isinstance(v, plain) or type(v).__module__.startswith("numba.core.types"), \
                (fn.__qualname__, type(v))


_KEYS_SCRIPT = textwrap.dedent("""
    import hashlib
    from numba.cuda.serialize import dumps
    from kernels.numba import _trace
    for x in _trace.trace(("softmax", "decayed"), ("float32",), ((64, 64), (80, 48))):
        f = x.kernel.py_func
        cells = tuple(c.cell_contents for c in f.__closure__ or ())
        print(x.name, hashlib.sha256(f.__code__.co_code + dumps(cells)).hexdigest())
""")


def test_cache_keys_are_the_same_in_every_process():
    """Numba's disk-cache key of a closure kernel hashes its bytecode and its pickled closure cells: two
    fresh processes must compute the same key for each kernel (else every process would compile again), and
    the 64 and 128 buckets different keys.  Needs no GPU (NUMBA_ENABLE_CUDASIM=0, nothing is compiled)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs = [subprocess.run([sys.executable, "-c", _KEYS_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    first, second = (r.stdout.split("\n") for r in runs)
    assert first == second and len(first) > 10
    keys = [line.split()[1] for line in first if line]
    assert len(set(keys)) == len(keys)              # every (kernel, bucket) its own cache entry


# ----------------------------------------------------------------------------- exactness inside one bucket
@pytest.fixture
def one_small_bucket(monkeypatch):
    """On the simulator: a single head-dim bucket of 16 with skip groups of 4, tiny tiles."""
    if not numba_simulator():
        pytest.skip("simulator sizes")
    monkeypatch.setattr(_jit, "BUCKETS", (16,))
    monkeypatch.setattr(_jit, "GROUP", 4)
    for key, val in {"block_q": 8, "block_k": 4, "block_kv": 4, "block_q_bwd": 8}.items():
        monkeypatch.setitem(softmax.CONFIG, key, val)
    monkeypatch.setitem(linear.CONFIG, "rows", 8)
    for key, val in {"chunk": 8, "block_k": 4, "block_v": 4, "threads": 8}.items():
        monkeypatch.setitem(_chunked.CONFIG, key, val)
    monkeypatch.setattr(nd, "SCAN_THREADS", 4)
    monkeypatch.setattr(nz, "SCAN_THREADS", 4)


@pytest.mark.parametrize("ROWS,COLS,NT", [(8, 8, 4), (8, 8, 16), (8, 8, 24), (4, 8, 64)])
def test_tile_loader_both_loop_forms(ROWS, COLS, NT):
    """_jit.tile_loader (unsigned indices; unrolled passes up to UNROLL_PASSES, else a while loop; exact or with a
    tail) against NumPy: window [t0, t1), offset p0, columns c0.. below D, reversed or not, scaled by mult."""
    if not numba_simulator():
        pytest.skip("simulator sizes")
    import numba
    load = _jit.tile_loader(ROWS, COLS, NT, numba.float32)

    @cuda.jit
    def kern(dst, src, t0, t1, p0, c0, D, rev):
        sh = cuda.shared.array((ROWS, COLS + 1), numba.float32)
        load(sh, src, 1, t0, t1, p0, c0, D, rev, numba.float32(2))
        cuda.syncthreads()
        for x in range(cuda.threadIdx.x, ROWS * COLS, NT):
            dst[x // COLS, x % COLS] = sh[x // COLS, x % COLS]

    src = np.random.default_rng(0).standard_normal((2, 20, 12)).astype(np.float32)
    for t0, t1, p0, c0, D, rev in ((2, 15, 3, 0, 7, False), (2, 15, 3, 4, 12, True), (0, 20, 16, 0, 12, False)):
        out = np.full((ROWS, COLS), np.nan, np.float32)
        kern[1, NT](out, src, t0, t1, p0, c0, D, rev)
        want = np.zeros((ROWS, COLS), np.float32)
        for j in range(ROWS):
            for d in range(COLS):
                if t0 + p0 + j < t1 and c0 + d < D:
                    want[j, d] = 2 * src[1, t1 - 1 - (p0 + j) if rev else t0 + p0 + j, c0 + d]
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("op,variant", VARIANTS)
def test_odd_head_dims_share_a_bucket_and_are_exact(op, variant, one_small_bucket):
    """Dk=5, Dv=7 (a partial group, then groups skipped) and Dk=16, Dv=12 (a full bucket, one group skipped)
    launch the same kernels and both match the float64 reference (forward and every gradient), causal and
    not, with T = 11 crossing several tiles and chunks."""
    assert launched(op, (5, 7), variant, "float64") == launched(op, (16, 12), variant, "float64")
    for Dk, Dv in ((5, 7), (16, 12)):
        for causal in ((True,) if op == "decayed" else (True, False)):
            res = check.compare(op, f"numba:{variant}", lead=(2,), T=11, Dk=Dk, Dv=Dv, dtype="float64",
                                causal=causal)
            assert res["ok"], (Dk, Dv, causal, res)


# ----------------------------------------------------------------------------- GPU: the disk cache
_WARM = textwrap.dedent("""
    from kernels.numba import warmup
    r = warmup(ops=["softmax", "decayed"], dtypes=["float32"], buckets=[64], jobs=2)
    print("WARMED", r.kernels, r.compiled, r.cached)
""")
_USE = textwrap.dedent("""
    import numpy as np, workbench as wb
    from workbench.inputs import random_inputs
    from kernels.numba import _jit
    for op, fn in (("softmax", wb.softmax_attention), ("decayed", wb.decayed_attention)):
        arrays = random_inputs(op, (2,), 33, 48, 20, "float32")
        out, pull = wb.vjp(fn, *arrays, backend="numba")
        pull(np.ones_like(out))
    s = _jit.compile_stats()
    print("STATS", s.hits, s.misses)
""")


@pytest.mark.gpu
def test_warmup_leaves_later_processes_nothing_to_compile(tmp_path):
    """After warmup (into an empty NUMBA_CACHE_DIR), a fresh process running the warmed ops at other head
    dims of the same bucket loads every kernel from the disk cache and compiles none."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    warm = subprocess.run([sys.executable, "-c", _WARM], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert warm.returncode == 0, warm.stdout[-2000:] + warm.stderr[-3000:]
    kernels, compiled, cached = map(int, warm.stdout.split("WARMED")[1].split()[:3])
    assert kernels == compiled > 0 and cached == 0, warm.stdout
    use = subprocess.run([sys.executable, "-c", _USE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert use.returncode == 0, use.stderr[-3000:]
    hits, misses = map(int, use.stdout.split("STATS")[1].split()[:2])
    assert misses == 0 and hits > 0, use.stdout


# ----------------------------------------------------------------------------- scripts/shape_sweep.py
def _sweep_module():
    from script_modules import load_script
    return load_script("shape_sweep")


def test_shape_sweep_runs_every_op_and_counts_failures(one_small_bucket):
    """The sweep (tiny: two head-dim pairs of one bucket, T = 1, 2) calls every op fwd+bwd, causal and not,
    and times each op's first call; a backend that fails every call is counted, not hidden."""
    sw = _sweep_module()
    lines = []
    res = sw.sweep("numba", sw.OPS, ((3, 5), (12, 7)), 2, echo=lines.append)
    assert [o.op for o in res.ops] == list(sw.OPS) and res.failures == 0, [o.failures for o in res.ops]
    assert [o.calls for o in res.ops] == [8, 8, 4, 8]
    assert all(0 < o.first_call_s <= o.total_s for o in res.ops) and res.wall_s >= sum(o.total_s for o in res.ops)
    assert len(lines) == 4 and lines[0].startswith("softmax")
    bad = sw.sweep("numba:no_such_variant", ("softmax",), ((3, 5),), 1, echo=lines.append)
    assert bad.failures == 2 and "no_such_variant" in bad.ops[0].failures[0]


def test_shape_sweep_command(tmp_path):
    """The command itself, in a fresh process on the simulator (one op, T = 1): exit 0, the timing lines, and
    the JSON written into a folder it creates."""
    if not numba_simulator():
        pytest.skip("the GPU run is the lead's measurement (docs/kernels)")
    out = tmp_path / "new" / "sweep.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, os.path.join("scripts", "shape_sweep.py"), "--quick", "--ops", "softmax",
                        "--T-max", "1", "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "softmax  first call" in r.stdout and "total wall" in r.stdout, r.stdout
    import json
    data = json.loads(out.read_text())
    assert data["ops"][0]["calls"] == 4 and data["failures"] == 0


def test_cache_saves_of_two_processes_never_cross(tmp_path, monkeypatch):
    """Two writers saving different keys into one kernel's cache at once (threads stand in for processes:
    each opens its own lock file description): both load the index before either saves, the first writer's
    data lands last.  Unserialised, the second key's index entry would point at the first key's data."""
    import threading
    import time
    from numba.cuda.core import caching
    assert getattr(caching.IndexDataCacheFile.save, "serialised", False), "kernels.numba._jit did not patch it"
    gate = threading.Barrier(2, timeout=0.5)
    load_index, save_data = caching.IndexDataCacheFile._load_index, caching.IndexDataCacheFile._save_data

    def slow_load_index(self):
        overloads = load_index(self)
        try:
            gate.wait()                      # unserialised: both writers read the empty index
        except threading.BrokenBarrierError:
            pass                             # serialised: the other writer is waiting on the lock
        return overloads

    def late_save_data(self, name, data):
        if data == "A":
            time.sleep(0.3)
        save_data(self, name, data)

    monkeypatch.setattr(caching.IndexDataCacheFile, "_load_index", slow_load_index)
    monkeypatch.setattr(caching.IndexDataCacheFile, "_save_data", late_save_data)
    files = [caching.IndexDataCacheFile(str(tmp_path), "kern-1.py312", "stamp") for _ in range(2)]
    writers = [threading.Thread(target=f.save, args=(key, key)) for f, key in zip(files, "AB")]
    writers[0].start()
    time.sleep(0.05)
    writers[1].start()
    for w in writers:
        w.join()
    monkeypatch.setattr(caching.IndexDataCacheFile, "_load_index", load_index)
    reader = caching.IndexDataCacheFile(str(tmp_path), "kern-1.py312", "stamp")
    assert [reader.load(key) for key in "AB"] == ["A", "B"]
