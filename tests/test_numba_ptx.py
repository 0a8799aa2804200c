"""Without a GPU: every kernel the ``numba:*`` variants launch -- driven through their real host code, bucket
and tile choice and launch arguments -- types and compiles to PTX for sm_90, with static shared memory <= 48 KB
and no float64 arithmetic in float32 kernels (``kernels/numba/ptx_check.py``).  The CUDA simulator cannot catch
these: it runs kernels as Python.  Two head-dim buckets are compiled (64, and 128 for 80/48); at bucket 64 the
kernels listed keep their per-thread rows in registers (no local memory), which the bucket layout (arrays sized
by the bucket, indexed by unrolled loops) must preserve."""
import glob
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow      # libNVVM compiles: minutes; -m "not slow" leaves them out
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cuda_home_with_nvvm():
    """A CUDA toolkit directory holding libNVVM, or None."""
    for home in [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")] + sorted(glob.glob("/usr/local/cuda*")):
        if home and glob.glob(os.path.join(home, "**", "libnvvm.so*"), recursive=True):
            return home
    return None


# (op, kernels for buckets 64 and 128 with --quick, kernels that must not use local memory at bucket 64)
CASES = [("softmax", 13, r"\w+"), ("linear", 30, r"_naive_.*identity"), ("decayed", 7, r"\w+"),
         ("zeros", 10, r"\w+")]


@pytest.mark.parametrize("op,n_kernels,registers_only", CASES)
def test_every_kernel_compiles_to_ptx(op, n_kernels, registers_only):
    home = _cuda_home_with_nvvm()
    if home is None:
        pytest.skip("libNVVM (a CUDA toolkit) not found")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", CUDA_HOME=home,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "kernels.numba.ptx_check", "--op", op, "--dtype", "float32",
                          "--D", "64", "--D", "80/48", "--quick"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    out = res.stdout + res.stderr
    m = re.search(r"^(\d+) kernels compiled, (\d+) failing$", res.stdout, flags=re.M)
    assert res.returncode == 0 and m, out[-4000:]
    assert int(m.group(2)) == 0, out[-4000:]
    assert int(m.group(1)) == n_kernels, out[-4000:]
    at64 = [ln for ln in res.stdout.splitlines() if ln.startswith("ok") and "Dk=64 " in ln
            and re.match(r"ok\s+" + registers_only, ln)]
    assert at64 and not [ln for ln in at64 if "local memory" in ln], out[-4000:]
