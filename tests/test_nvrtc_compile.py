"""Every CUDA source in kernels/cuda compiles with NVRTC for sm_90 (and to compute_80 PTX; the warpgroup-MMA sources
for sm_90a alone), with every template
instantiation the kernels.cupy modules launch, with no error and no warning.  Needs no GPU: only
``cuda-bindings`` and the ``nvidia-cuda-nvrtc`` wheel (the sources include no toolkit header)."""
import pytest

nvrtc = pytest.importorskip("cuda.bindings.nvrtc")

from kernels.cupy import nvrtc_check  # noqa: E402

pytestmark = pytest.mark.slow      # NVRTC compiles: minutes; -m "not slow" leaves them out
SOURCES = nvrtc_check.instantiations()


def test_every_source_is_found():
    assert "softmax.cu" in SOURCES
    assert len(SOURCES["softmax.cu"]) >= 60          # naive/flash/mma x dtypes x head-dim buckets


@pytest.mark.parametrize("src,arch", [(s, a) for s in sorted(SOURCES) for a in nvrtc_check.archs(s)])
def test_compiles_clean(src, arch):
    ok, log, missing = nvrtc_check.compile_source(src, SOURCES[src], arch)
    assert not missing, f"{src}: name expressions NVRTC could not resolve: {missing}"
    assert ok, f"{src} ({arch}) NVRTC log:\n{log}"


def test_a_broken_source_fails(tmp_path, monkeypatch):
    """The check itself can fail: a warning (unused variable) and an unknown instantiation are caught."""
    (tmp_path / "bad.cu").write_text(
        '#include "common.cuh"\n'
        "template <typename T> __global__ void kern(T* x) { int unused = 3; x[0] = from_f32<T>(1.f); }\n")
    monkeypatch.setattr(nvrtc_check, "source", lambda name: (tmp_path / name).read_text())
    ok, log, missing = nvrtc_check.compile_source("bad.cu", ["kern<float>"], "sm_90")
    assert not ok and "unused" in log
    ok, log, missing = nvrtc_check.compile_source("bad.cu", ["kern<double>"], "sm_90")
    assert not ok
