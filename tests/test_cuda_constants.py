"""Launch constants written twice -- in a CUDA source (template and block sizes the kernels assume) and in the
host code that sizes grids, blocks and shared memory from them -- agree.  Read from the sources' text: no
compiler, no GPU."""
import re

import pytest

from kernels.cupy import _chunked, _chunked_mma, _module, zeros


def _constants(source: str, namespace: str = "") -> dict:
    """name -> int of every ``constexpr int NAME = N;`` and ``NAME = N,`` enum entry of a source (inside
    ``namespace NAME { ... }`` when given; the whole file otherwise)."""
    with open(f"{_module.CUDA_DIR}/{source}") as f:
        text = f.read()
    if namespace:
        start = text.index(f"namespace {namespace} {{")
        text = text[start:text.index(f"}}  // namespace {namespace}", start)]
    pairs = re.findall(r"constexpr\s+int\s+(\w+)\s*=\s*(\d+)\s*;", text) + re.findall(r"^\s*(\w+)\s*=\s*(\d+),", text, re.M)
    return {name: int(value) for name, value in pairs}


@pytest.mark.parametrize("source, namespace, host", [
    ("chunked.cuh", "", {"THREADS": _chunked.THREADS, "BV": _chunked.BV, "BS": _chunked.BS}),
    ("chunked_mma.cu", "tc", {"C": _chunked_mma.C, "THREADS": _chunked_mma.THREADS, "BV": _chunked_mma.BV,
                              "PAD": _chunked_mma.PAD}),
    ("zeros.cu", "zs", {"C": zeros.SCAN_CHUNK, "WARPS": zeros.SCAN_WARPS, "SCAN": zeros.SCAN_THREADS}),
])
def test_host_constants_match_the_source(source, namespace, host):
    found = _constants(source, namespace)
    assert {name: found.get(name) for name in host} == host, source
