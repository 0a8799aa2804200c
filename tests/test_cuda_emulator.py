"""The CPU emulator of the CUDA kernels (scripts/cuda_emulate.py, scripts/cuda_emu/emu.h).

Slow: a few cases per kernel family through the real host code (a subprocess: the emulator installs a stand-in
``cupy`` module), and the launch and memory checks the emulator adds on small kernels of its own.  Needs g++
(C++20).  The case list itself is checked without building anything.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "cuda_emulate.py")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) for the CPU emulator")

# labels (substrings, each naming one case) run per family: the emulator's self-check first
FAMILY_CASES = {
    "softmax": ["emulator self-check", "softmax packed cell cupy:fa2 float16 T=200 96x40 causal=True", "fa2 fp16 T=70 D=64 causal=True", "fa2_3xtf32 T=70 D=64 causal=False",
                "Dk=5 Dv=7 (plain loads)"],
    "chunked_mma": ["chunked_mma float16/1 cu=0,1,64,65,130 64x64 decayed L=1",
                    "chunked_mma float32/3 cu=0,97 80x72 linear L=0",
                    "chunked_mma float32/1 cu=0,63,130 96x40 noncausal L=1",
                    "chunked_mma_db float16/1 cu=0,1,64,65,130 64x64 decayed L=0",
                    "chunked_mma_dkdv-dqrev_wg float16/1 cu=0,1,64,65,130 64x64 linear L=1",
                    "test_xscale_matches_recurrence(slices=scaled, L=2, mode=decayed, parts=4, "
                    "shape=(2, (0, 1, 64, 65, 130, 200), 64, 64))",
                    "test_xscale_matches_recurrence(slices=scaled, L=2, mode=linear, parts=5, "
                    "shape=(2, (0, 1, 64, 65, 130, 200), 64, 64))"],
    "wgmma": ["wgmma test_product_matches_numpy(accumulate=True, ta=True, tb=True, rs=False, dtype=float16)",
              "wgmma test_product_matches_numpy(accumulate=False, ta=False, tb=False, rs=True, dtype=float16)"],
    "linear": ["linear cell cupy:chunked_mma float16 T=70 16x24 causal=True state packed",
               "linear cell cupy:chunked float32 T=70 16x24 causal=False"],
    "decayed": ["decayed cell cupy:chunked_mma_tf32 float32 T=70 16x24 causal=True state packed",
                "decayed cell cupy:chunked_seg float16 T=70 16x24 causal=True"],
    "zeros": ["zeros cupy:chunked_mma float16 1 T=130 64x64 causal=True gates=2",
              "zeros test_state_and_packed_match_the_reference(impl=chunked_mma, dtype=float16, T=130",
              "zeros test_forward_stats(T=130, kind=ties, causal=True)",
              "zeros test_backward_rows(T=65, kind=ties, Dv=80, causal=False)"],
    "steps": ["steps test_kernel_steps_equal_the_float64_op(label=zeros-3, lead=(2,), Dk=130, Dv=72, dtype=float32)",
              "steps test_every_geometry(label=linear-elu1-norm, lead=(3,), Dk=70, Dv=40, geometry=wide)"],
}


def _emulate(*argv, timeout=1800):
    return subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def emu():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import cuda_emulate
    finally:
        sys.path.pop(0)
    return cuda_emulate


def test_case_list(emu):
    cases = emu.cases()
    labels = [c.label for c in cases]
    assert len(set(labels)) == len(labels)
    assert {c.family for c in cases} == set(FAMILY_CASES)
    assert {c.runner for c in cases} == set(emu.RUNNERS)
    assert sum("test_forward_stats(" in x for x in labels) == 36        # the GPU test's whole grid
    for family, chosen in FAMILY_CASES.items():
        for text in chosen:
            hits = [c for c in cases if text in c.label]
            assert len(hits) == 1 and hits[0].family == family, (text, [c.label for c in hits])
    r = _emulate("--list", "-k", "no such case")
    assert r.returncode == 1


@pytest.mark.slow
@needs_gxx
@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_in_the_cpu_emulator(family):
    """The family's kernels, forward and backward, match the float64 reference as the GPU tests require."""
    argv = [x for text in FAMILY_CASES[family] for x in ("-k", text)]
    r = _emulate(*argv)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("\nok  ") + r.stdout.startswith("ok  ") == len(FAMILY_CASES[family]), r.stdout


CHECKS_SOURCE = r"""
#include "mma.cuh"
extern "C" __global__ void add_one(float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.f;
}
// copies x[0..32) into shared memory with cp.async; waits (before reading the tile) only when asked
extern "C" __global__ void copy_through_shared(const float* x, float* y, int wait) {
    extern __shared__ __align__(16) unsigned char raw[];
    float* s = reinterpret_cast<float*>(raw);
    s[threadIdx.x] = -1.f;                             // what the tile held before the copy
    __syncthreads();
    if (threadIdx.x < 8)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(wbmma::smem_u32(s + 4 * threadIdx.x)),
                     "l"(x + 4 * threadIdx.x), "r"(16));
    if (wait) asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
    __syncthreads();                                   // every read done before a late wait lands its copy
    if (!wait) asm volatile("cp.async.wait_all;\n" ::: "memory");
}
// another thread writes a cp.async destination while the copy is in flight
extern "C" __global__ void write_in_flight(const float* x) {
    extern __shared__ __align__(16) unsigned char raw[];
    float* s = reinterpret_cast<float*>(raw);
    if (threadIdx.x == 0)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(wbmma::smem_u32(s)), "l"(x), "r"(16));
    __syncthreads();
    if (threadIdx.x == 1) s[2] = 0.f;
    __syncthreads();
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}
// a static shared array: block 0 writes all of it, block 1 half; each reads all of it
extern "C" __global__ void half_written(float* y) {
    __shared__ float s[32];
    if (threadIdx.x < (blockIdx.x ? 16 : 32)) s[threadIdx.x] = 1.f;
    __syncthreads();
    y[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x];
}
// lane 0 returns before the warp's shuffle
extern "C" __global__ void early_return(float* x) {
    if (threadIdx.x == 0) return;
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
}
"""


@pytest.mark.slow
@needs_gxx
def test_launch_and_memory_checks(emu):
    """What the emulator refuses or exposes, on kernels of its own: argument count and sizes, launches above 48 KiB
    of shared memory without the opt-in, a write to a cp.async destination in flight, a read of it before the
    wait and of unwritten static shared memory in every block (NaN), a warp collective after a lane returned."""
    from kernels.cupy._module import compile_options
    mod = emu.RawModule(CHECKS_SOURCE, compile_options())
    x = emu._copy(np.arange(64, dtype=np.float32))
    add = mod.get_function("add_one")
    add((2,), (32,), (x, np.int32(60)))
    assert np.array_equal(x, np.r_[np.arange(1, 61), np.arange(60, 64)].astype(np.float32))
    with pytest.raises(RuntimeError, match="argument 1 has 8 bytes, the kernel's parameter 4"):
        add((2,), (32,), (x, 60))                                      # a Python int is an int64
    with pytest.raises(RuntimeError, match="2 arguments for a kernel of 3"):
        mod.get_function("copy_through_shared")((1,), (32,), (x, x))
    copy = mod.get_function("copy_through_shared")
    y = emu._copy(np.zeros(32, np.float32))
    copy((1,), (32,), (x, y, np.int32(1)), shared_mem=128)
    assert np.array_equal(y, x[:32])
    copy((1,), (32,), (x, y, np.int32(0)), shared_mem=128)
    assert np.isnan(y).all()                                           # read before the copy landed
    with pytest.raises(RuntimeError, match="written while a cp.async to it was in flight"):
        mod.get_function("write_in_flight")((1,), (32,), (x,), shared_mem=16)
    with pytest.raises(RuntimeError, match="dynamic shared memory"):
        copy((1,), (32,), (x, y, np.int32(1)), shared_mem=64 * 1024)   # no opt-in above 48 KiB
    y = emu._copy(np.zeros(64, np.float32))
    mod.get_function("half_written")((2,), (32,), (y,))
    assert (y[:48] == 1).all() and np.isnan(y[48:]).all()
    with pytest.raises(RuntimeError, match="without every lane"):
        mod.get_function("early_return")((1,), (32,), (x,))
