"""Attention workbench: softmax, linear, decayed-linear and ZeroS attention as NumPy-compatible ops with
NumPy references and GPU kernels (CuPy, Numba).

    import workbench as wb
    o = wb.softmax_attention(q, k, v, causal=True)
    out, pullback = wb.vjp(wb.zeros_attention, q, k, v, s, gates)
    dq, dk, dv, ds, dgates = pullback(do)
"""
from . import registry
from .backends import BackendUnavailable
from .ops import decayed_attention, linear_attention, softmax_attention, vjp, zeros_attention, PUBLIC_OPS
from .state import DecayedState, KVCache, LinearState, ZeroSState
from .steps import decayed_attention_step, linear_attention_step, softmax_attention_step, zeros_attention_step

__version__ = "0.1.0"
__all__ = ["softmax_attention", "linear_attention", "decayed_attention", "zeros_attention", "vjp", "registry",
           "BackendUnavailable", "PUBLIC_OPS", "LinearState", "DecayedState", "ZeroSState", "KVCache",
           "softmax_attention_step", "linear_attention_step", "decayed_attention_step", "zeros_attention_step"]
