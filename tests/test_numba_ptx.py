"""Without a GPU: every kernel the ``numba:*`` variants launch -- driven through their real host code, tile
choice and launch arguments -- types and compiles to PTX for sm_90, with static shared memory <= 48 KB and no
float64 arithmetic in float32 kernels (``kernels/numba/_ptx_check.py``).  The CUDA simulator cannot catch
these: it runs kernels as Python."""
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


@pytest.mark.parametrize("op,min_kernels", [("softmax", 6), ("linear", 8), ("decayed", 6), ("zeros", 10)])
def test_every_kernel_compiles_to_ptx(op, min_kernels):
    home = _cuda_home_with_nvvm()
    if home is None:
        pytest.skip("libNVVM (a CUDA toolkit) not found")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", CUDA_HOME=home,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "kernels.numba._ptx_check", "--op", op, "--dtype", "float32",
                          "--D", "64", "--D", "80/48", "--quick"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    out = res.stdout + res.stderr
    m = re.search(r"^(\d+) kernels compiled, (\d+) failing$", res.stdout, flags=re.M)
    assert res.returncode == 0 and m, out[-4000:]
    assert int(m.group(2)) == 0, out[-4000:]
    assert int(m.group(1)) >= min_kernels, out[-4000:]
