"""scripts/ptxas_report.py: ``--nvrtc LIB`` (compiling through a libnvrtc.so.* by ctypes) reports what the
default path (cuda.bindings' NVRTC) reports, and a bad ``--nvrtc`` is a usage error naming the argument."""
import os

import pytest

from script_modules import load_script
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ptxas_report = load_script("ptxas_report")

NVRTC12 = os.path.join(ROOT, ptxas_report.NVRTC12)       # scripts/fetch_nvrtc12.sh puts the GPU's NVRTC there
SMALL = ('#include "common.cuh"\n'
         "template <typename T, int N> __global__ void scale(T* x, float a) {\n"
         "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
         "  if (i < N) x[i] = from_f32<T>(a * to_f32(x[i]));\n"
         "}\n")
EXPRS = ["scale<float, 64>", "scale<wb_half, 128>"]


def test_a_missing_nvrtc_library_is_a_usage_error_naming_the_argument(capsys):
    with pytest.raises(SystemExit) as exc:
        ptxas_report.main(["--nvrtc", "/nonexistent/libnvrtc.so.12", "--match", "fa2_"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --nvrtc" in err and "/nonexistent/libnvrtc.so.12" in err and "fetch_nvrtc12.sh" in err


def test_a_file_that_is_no_nvrtc_library_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "libnvrtc.so.12").write_text("not a library")
    with pytest.raises(SystemExit) as exc:
        ptxas_report.main(["--nvrtc", str(tmp_path / "libnvrtc.so.12")])
    assert exc.value.code == 2 and "argument --nvrtc" in capsys.readouterr().err


def _bindings_library() -> str:
    """The libnvrtc.so.* cuda.bindings has loaded (Linux: read from the process's memory map, where a library
    an earlier test loaded by ctypes may be too: the one of cuda.bindings' version)."""
    pytest.importorskip("cuda.bindings.nvrtc")
    version = ptxas_report.nvrtc_version()            # loads it
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "/libnvrtc.so" in line}
    libs = {lib for lib in libs if ptxas_report.nvrtc_version(lib) == version}
    if len(libs) != 1:
        pytest.skip(f"cuda.bindings' libnvrtc not found in the memory map: {libs}")
    return libs.pop()


@pytest.mark.parametrize("which", ["bindings' own library", "NVRTC 12.9"])
def test_the_ctypes_path_agrees_with_the_default_path(which, monkeypatch):
    """The same library through ctypes gives the same rows as through cuda.bindings, and 12.9's library
    (when fetched) resolves the same name expressions, with registers and no spills, on a small source."""
    lib = _bindings_library()
    if which == "NVRTC 12.9":
        if not os.path.isfile(NVRTC12):
            pytest.skip(f"{NVRTC12} absent: bash scripts/fetch_nvrtc12.sh")
        lib = NVRTC12
    monkeypatch.setattr(ptxas_report, "source", lambda name: SMALL)
    default, log = ptxas_report.report("small.cu", EXPRS, "sm_90")
    assert default is not None, log
    rows, log = ptxas_report.report("small.cu", EXPRS, "sm_90", lib)
    assert rows is not None, log
    assert [r[0] for r in rows] == [r[0] for r in default] == sorted(EXPRS)
    if which == "NVRTC 12.9":
        assert ptxas_report.nvrtc_version(lib) == "12.9"
        assert all(r[1] > 0 and r[2:] == (0, 0, 0) for r in rows), rows
    else:
        assert ptxas_report.nvrtc_version(lib) == ptxas_report.nvrtc_version()
        assert rows == default


def test_a_compile_error_comes_back_as_the_log(monkeypatch):
    lib = _bindings_library()
    monkeypatch.setattr(ptxas_report, "source", lambda name: SMALL.replace("a * ", "a * undeclared * "))
    for path in (None, lib):
        rows, log = ptxas_report.report("small.cu", EXPRS, "sm_90", path)
        assert rows is None and "undeclared" in log


def test_cubin_is_written_by_both_paths(tmp_path, monkeypatch):
    """``cubin=``: the compiled binary (an ELF holding every instantiation) lands there, by either path."""
    lib = _bindings_library()
    monkeypatch.setattr(ptxas_report, "source", lambda name: SMALL)
    blobs = []
    for path in (None, lib):
        out = tmp_path / f"small{len(blobs)}.cubin"
        rows, log = ptxas_report.report("small.cu", EXPRS, "sm_90", path, str(out))
        assert rows is not None, log
        blobs.append(out.read_bytes())
    assert all(b[:4] == b"\x7fELF" for b in blobs)
    assert blobs[0] == blobs[1]          # the same library: the same binary
    assert all(b"_Z5scaleIfLi64EEvPT_f" in b for b in blobs)
