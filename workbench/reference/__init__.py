"""NumPy references: for each op an explicit O(T^2) form and a linear-time (chunked / tiled) form, forward
and hand-derived backward.  Importing this package registers them as ``numpy:explicit`` and
``numpy:chunked`` (the NumPy backend's default)."""
from ..opspec import SPECS
from ..registry import Variant, register
from . import decayed, linear, softmax, zeros

_DTYPES = ("float16", "float32", "float64")

for _op, _mod, _fast, _fast_fwd, _fast_bwd in (
        ("softmax", softmax, "tiled online-softmax, saves log-sum-exp", softmax.tiled_forward,
         softmax.tiled_backward),
        ("linear", linear, "chunked: C x C blocks + carried states", linear.chunked_forward,
         linear.chunked_backward),
        ("decayed", decayed, "chunked: within-chunk log-decay cumsums + carried state",
         decayed.chunked_forward, decayed.chunked_backward),
        ("zeros", zeros, "chunked: three carried states with a running max", zeros.chunked_forward,
         zeros.chunked_backward)):
    _features = frozenset(SPECS[_op].features)          # the references implement every feature
    register(Variant(_op, "numpy", "explicit", _mod.explicit_forward, _mod.explicit_backward, dtypes=_DTYPES,
                     description="explicit T x T matrices in float64", features=_features))
    register(Variant(_op, "numpy", "chunked", _fast_fwd, _fast_bwd, dtypes=_DTYPES, description=_fast,
                     default=True, features=_features))
