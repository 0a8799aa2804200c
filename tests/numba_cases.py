"""What the Numba kernel tests (tests/test_numba_*.py) share: the comparison of a variant's outputs and
gradients with the float64 reference's, by the library's relative error and tolerances."""
import numpy as np

from workbench import registry
from workbench.check import rel_error


def assert_matches(label, names, got, want, dtype):
    """Each of ``got`` (named ``names``) has the dtype ``dtype`` and the shape of its reference in ``want``,
    and a finite relative error to it under the library's tolerance for the dtype."""
    errs = {}
    for name, x, r in zip(names, got, want):
        assert x.dtype == np.dtype(dtype) and x.shape == r.shape, (label, name, x.dtype, x.shape)
        errs[name] = rel_error(x, r)
    bad = {n: e for n, e in errs.items() if not (np.isfinite(e) and e < registry.TOLERANCE[dtype])}
    assert not bad, (label, bad, errs)
