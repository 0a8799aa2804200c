"""Public peers timed in the same run as our kernels (docs/spec.md section 5), all through torch on the GPU.

Each peer is declared as data (``Peer``: name, op, dtypes, the cells it supports) with a ``prepare`` that
converts one cell's NumPy inputs to torch CUDA tensors in the peer's layout (outside the timing) and returns
a ``Prepared``: forward with autograd recording (the forward that feeds a backward, like ours), backward by
``torch.autograd.grad(out, inputs, do, retain_graph=True)`` on the graph of one forward (no ``.grad``
accumulation), and forward+backward.  A peer whose library is missing is skipped with a note.

* ``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient``: ``torch.nn.functional.scaled_dot_product_attention``
  with one backend forced by ``torch.nn.attention.sdpa_kernel``; layout (B, H, T, D).
* ``fla-linear``: ``fla.ops.linear_attn.chunk_linear_attn(q, k, v, scale, normalize=False)``, causal,
  identity feature map; layout (B, T, H, D).
* ``fla-gla-g``: ``fla.ops.simple_gla.chunk_simple_gla(q, k, v, g=log_decay)``: per-token decay, the
  same problem as our decayed op.  ``fla-gla-gamma``: ``g_gamma`` = one constant log decay per head
  (the cell's first log_decay of each head): RetNet-style, a different decay, same cost.
* ``zeros-prefix-torch``: the ZeroS paper's prefix-sum form written here from docs/spec.md section 3.4: per-token
  ``Dk x Dv`` states ``F_t, G_t, H_t`` materialised by ``torch.cumsum``, ``o_t = q_t^T (alpha F + beta G +
  gamma H)``; O(T Dk Dv) memory, reported as ``peak_mem_bytes`` (torch.cuda.max_memory_allocated).
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .lines import Prepared, Skip

DEVICE = "cuda"          # where peers run; the CPU tests set "cpu" to exercise the plumbing


@dataclass(frozen=True)
class Peer:
    name: str                       # the line's name is "peer:<name>"
    op: str
    module: str                     # what must import for the peer to run
    prepare: Callable               # prepare(arrays, dout, options) -> Prepared
    dtypes: tuple = ("float16", "bfloat16", "float32")
    causal: tuple = (True, False)
    description: str = ""
    supports: Optional[Callable] = None         # supports(options, shape) -> None or a reason
    comparable: bool = True         # computes the same function as our op on the same inputs
    compute_fp32: Optional[str] = None          # ceiling key for float32 inputs ("tf32" for Triton dots)

    @property
    def key(self) -> str:
        return f"peer:{self.name}"

    def why_not(self, dtype: str, options: dict, shape) -> Optional[str]:
        if dtype not in self.dtypes:
            return f"dtype {dtype} not supported by this peer ({', '.join(self.dtypes)})"
        causal = options.get("causal", True)
        if causal not in self.causal:
            return f"causal={causal} not supported by this peer"
        try:
            importlib.import_module(self.module)
        except Exception as e:
            return f"{self.module} not importable ({type(e).__name__}: {e})"
        if self.supports:
            return self.supports(options, shape)
        return None


# ----------------------------------------------------------------------------- torch plumbing
def _torch():
    return importlib.import_module("torch")


def _cuda(a: np.ndarray, grad: bool = True):
    """A NumPy array as a torch tensor on the device; bfloat16 (ml_dtypes, which torch cannot convert) moves
    as its 16-bit patterns and is reinterpreted as torch.bfloat16, bit for bit."""
    torch = _torch()
    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        t = torch.from_numpy(a.view(np.uint16).view(np.int16)).view(torch.bfloat16).to(DEVICE)
    else:
        t = torch.from_numpy(a).to(DEVICE)
    return t.requires_grad_(grad)


def _autograd_prepared(run: Callable, leaves: list, dout, to_ours: Callable, note: str = "",
                       compute: Optional[str] = None) -> Prepared:
    """Prepared for a torch forward ``run()`` returning the output tensor; ``to_ours`` maps an output to
    our (B, H, T, Dv) layout for the agreement check."""
    torch = _torch()
    out = run()

    def bwd():
        return torch.autograd.grad(out, leaves, dout, retain_graph=True)

    def fwdbwd():
        return torch.autograd.grad(run(), leaves, dout)

    def peak_mem():
        if DEVICE != "cuda":
            return None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwdbwd()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)

    return Prepared(run, bwd, fwdbwd, "torch", output=to_ours(out.detach()), compute=compute, note=note,
                    peak_mem=peak_mem)


def _bhtd_to_bthd(a: np.ndarray) -> np.ndarray:
    """(B, H, T, D) -> (B, T, H, D) (fla's layout); (B, H, T) -> (B, T, H)."""
    return np.ascontiguousarray(np.swapaxes(a, 1, 2))


# ----------------------------------------------------------------------------- torch SDPA
def _prepare_sdpa(backend: str):
    def prepare(arrays, dout, options):
        torch = _torch()
        from torch.nn.attention import SDPBackend, sdpa_kernel
        F = torch.nn.functional
        be = getattr(SDPBackend, backend)
        q, k, v = (_cuda(a) for a in arrays)
        do = _cuda(dout, grad=False)
        scale = options.get("scale") or 1.0 / math.sqrt(arrays[0].shape[-1])
        causal = bool(options.get("causal", True))

        def run():
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
        return _autograd_prepared(run, [q, k, v], do, lambda o: o)
    return prepare


# ----------------------------------------------------------------------------- flash-linear-attention
def _prepare_fla_linear(arrays, dout, options):
    from fla.ops.linear_attn import chunk_linear_attn
    q, k, v = (_cuda(_bhtd_to_bthd(a)) for a in arrays)
    do = _cuda(_bhtd_to_bthd(dout), grad=False)
    scale = float(options.get("scale", 1.0))

    def run():
        return chunk_linear_attn(q, k, v, scale=scale, normalize=False)[0]
    return _autograd_prepared(run, [q, k, v], do, lambda o: o.transpose(1, 2), compute=_tf32_if_fp32(q))


def _prepare_fla_gla(per_token: bool):
    def prepare(arrays, dout, options):
        from fla.ops.simple_gla import chunk_simple_gla
        q, k, v = (_cuda(_bhtd_to_bthd(a)) for a in arrays[:3])
        do = _cuda(_bhtd_to_bthd(dout), grad=False)
        scale = float(options.get("scale", 1.0))
        log_decay = arrays[3]                                  # (B, H, T)
        if per_token:
            g = _cuda(_bhtd_to_bthd(log_decay))                 # (B, T, H)
            leaves, kw, note = [q, k, v, g], dict(g=g), ""
        else:
            gamma = _cuda(np.ascontiguousarray(log_decay[0, :, 0]).astype(np.float32), grad=False)   # (H,)
            leaves, kw, note = [q, k, v], dict(g_gamma=gamma), "constant decay per head (g_gamma)"

        def run():
            return chunk_simple_gla(q, k, v, scale=scale, **kw)[0]
        return _autograd_prepared(run, leaves, do, lambda o: o.transpose(1, 2), note=note,
                                  compute=_tf32_if_fp32(q))
    return prepare


def _tf32_if_fp32(t) -> Optional[str]:
    """Triton's tl.dot takes float32 inputs at TF32 precision by default."""
    return "tf32" if str(t.dtype) == "torch.float32" else None


def _fla_linear_supports(options, shape):
    if options.get("feature_map", "identity") != "identity" or options.get("normalize", False):
        return "fla-linear is run with the identity feature map and normalize=False only"
    return None


# ----------------------------------------------------------------------------- ZeroS prefix-sum form
def zeros_prefix_sum(xp, q, k, v, s, gates, causal: bool, n):
    """The ZeroS paper's prefix-sum form (docs/spec.md section 3.4) for any array module ``xp`` with NumPy-style
    ``exp``, ``tanh`` and ``einsum`` (torch or numpy).  Shapes: q, k (N, T, Dk); v (N, T, Dv); s (N, T);
    gates (N, T, 2|3); ``n`` (T,) = 1..T causal, T otherwise.  Materialises three (N, T, Dk, Dv) state
    tensors.  e^{s} is taken relative to each row's maximum (which cancels in alpha = sigh / E)."""
    m = s.max(-1, keepdims=True) if xp is np else s.amax(-1, keepdim=True)
    es = xp.exp(s - m)
    kv = k[..., :, None] * v[..., None, :]                          # (N, T, Dk, Dv)
    if causal:
        E, P = es.cumsum(1), s.cumsum(1)
        Fs, Gs, Hs = (es[..., None, None] * kv).cumsum(1), (s[..., None, None] * kv).cumsum(1), kv.cumsum(1)
    else:                                                           # one state for all t (broadcast)
        E, P = es.sum(1)[:, None], s.sum(1)[:, None]
        Fs = (es[..., None, None] * kv).sum(1)[:, None]
        Gs = (s[..., None, None] * kv).sum(1)[:, None]
        Hs = kv.sum(1)[:, None]
    sig1 = 1 / (1 + xp.exp(-gates[..., 0]))
    sigh = 1 / (1 + xp.exp(-gates[..., 1]))
    tz = xp.tanh(gates[..., 2]) if gates.shape[-1] == 3 else 0 * sig1
    alpha = sigh / E
    beta = (sig1 - sigh) / n
    gamma = (tz - sigh - beta * P) / n
    M = alpha[..., None, None] * Fs + beta[..., None, None] * Gs + gamma[..., None, None] * Hs
    return xp.einsum("ntd,ntde->nte", q, M)


def zeros_prefix_bytes(N: int, T: int, Dk: int, Dv: int, itemsize: int) -> int:
    """Rough device bytes of one fwd+bwd of the prefix-sum form (about 10 live N x T x Dk x Dv tensors)."""
    return 10 * N * T * Dk * Dv * itemsize


def _prepare_zeros_prefix(arrays, dout, options):
    torch = _torch()
    q, k, v, s, gates = arrays
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    N = B * H
    need = zeros_prefix_bytes(N, T, Dk, Dv, q.dtype.itemsize)
    free = torch.cuda.mem_get_info()[0] if DEVICE == "cuda" else float("inf")
    if need > 0.7 * free:
        raise Skip(f"needs about {need / 2**30:.1f} GiB of states, {free / 2**30:.1f} GiB free")
    tq, tk, tv, ts, tg = (_cuda(a.reshape((N,) + a.shape[2:])) for a in arrays)
    do = _cuda(dout.reshape(N, T, Dv), grad=False)
    causal = bool(options.get("causal", True))
    n = (torch.arange(1, T + 1, device=DEVICE) if causal else torch.full((T,), T, device=DEVICE)).to(tq.dtype)

    def run():
        return zeros_prefix_sum(torch, tq, tk, tv, ts, tg, causal, n)
    return _autograd_prepared(run, [tq, tk, tv, ts, tg], do, lambda o: o.reshape(B, H, T, Dv))


# ----------------------------------------------------------------------------- the table
PEERS = (
    Peer("sdpa-flash", "softmax", "torch", _prepare_sdpa("FLASH_ATTENTION"), dtypes=("float16", "bfloat16"),
         description="torch SDPA, FlashAttention backend"),
    Peer("sdpa-cudnn", "softmax", "torch", _prepare_sdpa("CUDNN_ATTENTION"), dtypes=("float16", "bfloat16"),
         description="torch SDPA, cuDNN backend"),
    Peer("sdpa-efficient", "softmax", "torch", _prepare_sdpa("EFFICIENT_ATTENTION"),
         description="torch SDPA, memory-efficient backend"),
    Peer("fla-linear", "linear", "fla.ops.linear_attn", _prepare_fla_linear, causal=(True,),
         supports=_fla_linear_supports, description="fla chunk_linear_attn(normalize=False)", compute_fp32="tf32"),
    Peer("fla-gla-g", "decayed", "fla.ops.simple_gla", _prepare_fla_gla(True), causal=(True,),
         description="fla chunk_simple_gla, per-token g", compute_fp32="tf32"),
    Peer("fla-gla-gamma", "decayed", "fla.ops.simple_gla", _prepare_fla_gla(False), causal=(True,),
         description="fla chunk_simple_gla, per-head g_gamma", comparable=False, compute_fp32="tf32"),
    Peer("zeros-prefix-torch", "zeros", "torch", _prepare_zeros_prefix, dtypes=("float16", "float32", "float64"),
         description="ZeroS prefix-sum form in torch (O(T Dk Dv) memory)"),
)


def peers_for(op: str) -> list:
    return [p for p in PEERS if p.op == op]


def torch_cuda_ok() -> Optional[str]:
    """None when torch sees a CUDA GPU, else why not (peers are skipped with this note)."""
    try:
        torch = _torch()
    except Exception as e:
        return f"torch not importable ({type(e).__name__})"
    try:
        if not torch.cuda.is_available():
            return "torch sees no CUDA GPU"
    except Exception as e:
        return f"torch.cuda failed ({e})"
    return None


def free_torch_memory() -> None:
    try:
        torch = importlib.import_module("torch")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
