"""A tiny language model trained with hand-derived gradients, its attention being one of the workbench's ops.

No autograd framework: every layer below has a forward and a backward written out, with the derivation in its
docstring, and the attention op itself is differentiated by ``wb.vjp`` (any backend).  Arrays are NumPy or
CuPy (``xp`` is taken from the arrays), so the same code trains on the CPU with the NumPy references and on
a GPU with the CuPy kernels.

The model (``ModelConfig``), per sequence of token ids ``x``::

    h = E[x]                                                        token embedding
    for each of L blocks:
        u   = RMSNorm(h) * g_attn
        a_j = c_j * u + d_j * shift(u)             j = q, k, v      token shift (u_{t-1}; 0 at t = 0)
        q, k, v = a_q W_q, a_k W_k, a_v W_v, split into H heads of width D/H
        decayed: log_decay = -softplus(u W_g + b_g) <= 0, one per head and token
        ZeroS:   q, k scaled to unit length per head; s = a_k W_s + b_s; gates = a_q W_gate + b_gate
        o   = op(q, k, v[, log_decay | s, gates])                   the workbench op, through wb.vjp
        o   = o / rms(o) per head                                   (no parameters; out_norm=False drops it)
        h   = h + o W_o
        h   = h + silu((RMSNorm(h) * g_mlp) W_1) W_2
    logits = (RMSNorm(h) * g_f) U       at the queried positions only
    loss   = mean cross-entropy of those logits against the targets

The token shift gives every mixer the same short-range view (in associative recall a key sits one position
before its value), so what is measured is the long-range recall of the op itself.  The per-head output
normalisation is the one the ZeroS layer (and RetNet, GLA) use; every op gets it alike.  The op's own
per-token projections (decay: ``D + 1`` numbers per head; ZeroS: ``D + (D + 1) gates`` per head -- s needs no
bias, ZeroS being unchanged when every s_i moves by the same amount) are the only parameters that differ
between mixers: at most 2% of the model (ZeroS with 3 gates at D = 16), under 1% from D = 64 on.

``AdamW`` (decoupled weight decay on the matrices, linear warm-up then cosine decay, global-norm clipping)
trains it.  ``init_params`` draws the weights from a seed in NumPy and moves them to the arrays' module, so a
seed gives the same model on every backend.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import workbench as wb


def array_module(x):
    """``numpy`` for NumPy arrays, ``cupy`` for CuPy arrays."""
    if isinstance(x, np.ndarray):
        return np
    import cupy
    return cupy.get_array_module(x)


def sigmoid(z):
    """Stable for any z: 0.5 (1 + tanh(z/2))."""
    xp = array_module(z)
    return 0.5 * (1 + xp.tanh(0.5 * z))


# ============================================================================= the mixers
@dataclass(frozen=True)
class Mixer:
    """One kind of attention: the workbench op, its options, and the per-token inputs it needs besides q, k, v.

    ``inputs``: ``""`` (q, k, v only), ``"decay"`` (a log decay per head and token) or ``"zeros"`` (unit q and
    k, a radial logit s and ``gates`` gate logits per head and token).  ``scaled``: the op's ``scale`` is set
    to ``1/sqrt(head width)`` (the ops whose weights are raw inner products)."""
    label: str
    op: str
    options: dict = field(default_factory=dict)
    inputs: str = ""
    gates: int = 0
    scaled: bool = False

    def op_options(self, head_width: int) -> dict:
        o = dict(self.options)
        if self.scaled:
            o["scale"] = 1.0 / math.sqrt(head_width)
        return o


MIXERS = {
    "softmax": Mixer("softmax", "softmax", dict(causal=True)),
    "linear-elu1": Mixer("linear elu1, normalised", "linear", dict(causal=True, feature_map="elu1", normalize=True)),
    "linear-identity": Mixer("linear identity", "linear", dict(causal=True, feature_map="identity"), scaled=True),
    "decayed": Mixer("decayed", "decayed", {}, inputs="decay", scaled=True),
    "zeros2": Mixer("ZeroS, 2 gates", "zeros", dict(causal=True), inputs="zeros", gates=2),
    "zeros3": Mixer("ZeroS, 3 gates", "zeros", dict(causal=True), inputs="zeros", gates=3),
}


@dataclass(frozen=True)
class ModelConfig:
    """The model of the module docstring: ``layers`` blocks of width ``width`` over ``vocab`` token ids, the
    mixer (a key of ``MIXERS``) split into ``heads`` heads, an MLP of ``mlp_ratio * width`` hidden units;
    ``shift`` and ``out_norm`` switch the token shift and the per-head output norm off."""
    mixer: str
    vocab: int
    width: int
    layers: int = 2
    heads: int = 1
    mlp_ratio: int = 2
    shift: bool = True
    out_norm: bool = True

    def __post_init__(self):
        if self.mixer not in MIXERS:
            raise ValueError(f"ModelConfig: unknown mixer {self.mixer!r}; expected one of {', '.join(MIXERS)}")
        if self.width % self.heads:
            raise ValueError(f"ModelConfig: width {self.width} must be a multiple of heads {self.heads}")
        for name in ("vocab", "width", "layers", "heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig: {name} must be >= 1, got {getattr(self, name)}")

    @property
    def head_width(self) -> int:
        return self.width // self.heads


NORM_EPS = 1e-6         # RMSNorm of the residual stream
OUT_NORM_EPS = 1e-5     # per-head norm of the op's output (ZeroS rows can be near zero)
UNIT_EPS = 1e-12        # unit-length q, k
TINY = float(np.finfo(np.float32).tiny)     # a gradient norm's floor before dividing by it


# ============================================================================= layers
class Dense:
    """``y = x W`` over the last axis (x ``(..., n)``, W ``(n, m)``).

    Backward: ``y_m = sum_n x_n W_nm``, so ``dx = dy W^T`` and ``dW = sum_rows x^T dy`` (rows = every leading
    index)."""

    @staticmethod
    def forward(x, W):
        return x @ W

    @staticmethod
    def backward(x, W, dy):
        n, m = W.shape
        return dy @ W.T, x.reshape(-1, n).T @ dy.reshape(-1, m)


class Embedding:
    """``y[b, t] = E[x[b, t]]`` (a row gather).

    Backward: ``E[v]`` is read at every position holding token v, so ``dE[v] = sum_{(b,t): x[b,t]=v} dy[b, t]``
    (a scatter-add; tokens that do not occur get zero)."""

    @staticmethod
    def forward(E, tokens):
        return E[tokens]

    @staticmethod
    def backward(E, tokens, dy):
        xp = array_module(dy)
        dE = xp.zeros_like(E)
        idx, rows = tokens.ravel(), dy.reshape(-1, E.shape[1])
        if xp is np:
            np.add.at(dE, idx, rows)
        else:
            import cupyx
            cupyx.scatter_add(dE, idx, rows)
        return dE


class RMSNorm:
    """``y = g * x / r`` with ``r = sqrt(mean_j x_j^2 + eps)`` over the last axis (``g=None``: no gain).

    Backward: with ``xh = x / r``, ``dg = sum_rows dy * xh`` and ``dxh = g * dy``.  Since
    ``d r / d x_i = x_i / (D r)``, ``d xh_j / d x_i = delta_ij / r - x_j x_i / (D r^3)``, so
    ``dx_i = (dxh_i - xh_i * mean_j(dxh_j xh_j)) / r``."""

    @staticmethod
    def forward(x, g, eps):
        xp = array_module(x)
        r = xp.sqrt((x * x).mean(-1, keepdims=True) + eps)
        xh = x / r
        return (xh if g is None else xh * g), (xh, r)

    @staticmethod
    def backward(ctx, g, dy):
        xh, r = ctx
        dxh = dy if g is None else dy * g
        dx = (dxh - xh * (dxh * xh).mean(-1, keepdims=True)) / r
        dg = None if g is None else (dy * xh).reshape(-1, xh.shape[-1]).sum(0)
        return dx, dg


class UnitNorm:
    """``y = x / n`` with ``n = sqrt(sum_j x_j^2 + eps)`` over the last axis (the ZeroS layer's unit q and k).

    Backward: ``d y_j / d x_i = delta_ij / n - x_j x_i / n^3``, so ``dx = (dy - y (y . dy)) / n``."""

    @staticmethod
    def forward(x, eps=UNIT_EPS):
        xp = array_module(x)
        n = xp.sqrt((x * x).sum(-1, keepdims=True) + eps)
        return x / n, n

    @staticmethod
    def backward(y, n, dy):
        return (dy - y * (y * dy).sum(-1, keepdims=True)) / n


class TokenShift:
    """``y = c * u + d * S(u)`` with ``S(u)_t = u_{t-1}``, ``S(u)_0 = 0`` (u ``(B, T, D)``; c, d ``(D,)``).

    Backward: ``dc = sum_{b,t} dy * u``, ``dd = sum_{b,t} dy * S(u)`` and, since u_t reaches y_t through c and
    y_{t+1} through d, ``du = c * dy + S^T(d * dy)`` with ``S^T(z)_t = z_{t+1}`` (0 at the last t)."""

    @staticmethod
    def shift(u):
        xp = array_module(u)
        s = xp.zeros_like(u)
        s[:, 1:] = u[:, :-1]
        return s

    @staticmethod
    def unshift(z):
        xp = array_module(z)
        s = xp.zeros_like(z)
        s[:, :-1] = z[:, 1:]
        return s

    @staticmethod
    def forward(u, su, c, d):
        return c * u + d * su

    @staticmethod
    def backward(u, su, c, d, dy):
        D = u.shape[-1]
        dc = (dy * u).reshape(-1, D).sum(0)
        dd = (dy * su).reshape(-1, D).sum(0)
        return c * dy + TokenShift.unshift(d * dy), dc, dd


class NegSoftplus:
    """``g = -softplus(z) = -log(1 + e^z)``, always <= 0 (the decayed op's log decay).

    Backward: ``softplus'(z) = e^z / (1 + e^z) = sigmoid(z)``, so ``dz = -dg * sigmoid(z)``."""

    @staticmethod
    def forward(z):
        return -array_module(z).logaddexp(0.0, z)

    @staticmethod
    def backward(z, dg):
        return -dg * sigmoid(z)


class SiLU:
    """``y = z * sigmoid(z)``.

    Backward: ``y' = sigmoid(z) + z sigmoid(z) (1 - sigmoid(z))``, so ``dz = dy * y'``."""

    @staticmethod
    def forward(z):
        return z * sigmoid(z)

    @staticmethod
    def backward(z, dy):
        sg = sigmoid(z)
        return dy * (sg * (1 + z * (1 - sg)))


class Heads:
    """``(B, T, H*dh) <-> (B, H, T, dh)``: a reshape and a transpose, whose backward is the inverse one."""

    @staticmethod
    def split(x, H):
        B, T, D = x.shape
        return x.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)

    @staticmethod
    def merge(x):
        B, H, T, dh = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, H * dh)


class CrossEntropy:
    """``loss = mean_n [lse(z_n) - z_n[y_n]]`` over n queried positions, ``lse = log sum_v exp(z_nv)``.

    Backward: ``d lse(z) / d z_v = softmax(z)_v``, so ``dz_n = (softmax(z_n) - onehot(y_n)) / n``."""

    @staticmethod
    def forward(z, y):
        xp = array_module(z)
        m = z.max(-1, keepdims=True)
        e = xp.exp(z - m)
        se = e.sum(-1, keepdims=True)
        lse = (m + xp.log(se))[:, 0]
        rows = xp.arange(z.shape[0])
        loss = (lse - z[rows, y]).mean()
        return loss, e / se

    @staticmethod
    def backward(p, y):
        xp = array_module(p)
        dz = p.copy()
        dz[xp.arange(p.shape[0]), y] -= 1
        return dz / p.shape[0]


# ============================================================================= parameters
def param_shapes(cfg: ModelConfig) -> dict:
    """Name -> shape of every parameter."""
    D, V, H, mx = cfg.width, cfg.vocab, cfg.heads, MIXERS[cfg.mixer]
    shapes = {"embed": (V, D), "norm_f": (D,), "unembed": (D, V)}
    for b in range(cfg.layers):
        p = f"b{b}."
        shapes.update({p + "norm_attn": (D,), p + "wq": (D, D), p + "wk": (D, D), p + "wv": (D, D),
                       p + "wo": (D, D), p + "norm_mlp": (D,), p + "w1": (D, cfg.mlp_ratio * D),
                       p + "w2": (cfg.mlp_ratio * D, D)})
        if cfg.shift:
            shapes[p + "shift"] = (3, 2, D)              # (q, k, v) x (c: this token, d: previous token)
        if mx.inputs == "decay":
            shapes.update({p + "wg": (D, H), p + "bg": (H,)})
        if mx.inputs == "zeros":
            shapes.update({p + "ws": (D, H), p + "wgate": (D, H * mx.gates),
                           p + "bgate": (H * mx.gates,)})
    return shapes


def count_params(cfg: ModelConfig) -> int:
    return int(sum(math.prod(s) for s in param_shapes(cfg).values()))


def init_params(cfg: ModelConfig, seed: int, dtype=np.float32, xp=np) -> dict:
    """Deterministic initial weights (drawn in NumPy from ``seed``, then moved to ``xp``).

    Matrices ~ N(0, 1/fan_in); the residual outputs W_o and W_2 scaled down by sqrt(2 L); embeddings N(0, 1);
    gains 1; token shift c = 1, d = 0 (no mixing at first); decay bias so that exp(log_decay) starts between
    0.9 and 0.99 across heads; ZeroS s and gate projections start small (gates at sigmoid 0.5)."""
    rng = np.random.default_rng(seed)
    res_scale = 1.0 / math.sqrt(2 * cfg.layers)
    out = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.split(".")[-1]
        if leaf.startswith("norm"):
            a = np.ones(shape)
        elif leaf == "embed":
            a = rng.standard_normal(shape)
        elif leaf == "shift":
            a = np.zeros(shape)
            a[:, 0] = 1.0
        elif leaf == "bg":                                  # softplus(b) = -log decay in [0.01, 0.1]
            a = np.log(np.expm1(np.geomspace(0.01, 0.1, shape[0])))
        elif leaf == "bgate":
            a = np.zeros(shape)
        else:
            a = rng.standard_normal(shape) / math.sqrt(shape[0])
            if leaf in ("wo", "w2"):
                a *= res_scale
            if leaf in ("wg", "wgate", "ws"):
                a *= 0.1
        out[name] = xp.asarray(a, dtype=dtype)
    return out


# ============================================================================= the model
@dataclass
class Metrics:
    """Loss and accuracy of one batch over its queried positions: floats, or 0-d arrays of the model's array
    module when asked for with ``sync=False`` (``float()`` them when needed: on a GPU that waits for the
    device)."""
    loss: float
    accuracy: float
    queries: int


@dataclass(frozen=True)
class ModelBatch:
    """A batch as the model takes it, already on the parameters' array module: token ids ``(B, T)``, the flat
    indices of the queried positions (labels >= 0) and their targets.  ``Model.prepare`` makes it; the
    selection is computed on the host, so a training step never waits for the device to find it."""
    tokens: object
    sel: object
    y: object
    queries: int


class Model:
    """Forward and backward of the whole model (see the module docstring) for one ``ModelConfig``.

    ``backend`` is the workbench backend of the attention op (``numpy``, ``numba``, ``cupy``, or
    ``backend:variant``)."""

    def __init__(self, cfg: ModelConfig, backend: str = "numpy"):
        self.cfg = cfg
        self.backend = backend
        self.mixer = MIXERS[cfg.mixer]
        self.options = self.mixer.op_options(cfg.head_width)
        self.fn = wb.PUBLIC_OPS[self.mixer.op]

    # ------------------------------------------------------------------ attention
    def _attention_forward(self, P, p, h, grad):
        """One attention sub-block; returns (its residual branch, ctx)."""
        cfg, mx = self.cfg, self.mixer
        H = cfg.heads
        u, nctx = RMSNorm.forward(h, P[p + "norm_attn"], NORM_EPS)
        su = TokenShift.shift(u) if cfg.shift else None
        a = [TokenShift.forward(u, su, P[p + "shift"][j, 0], P[p + "shift"][j, 1]) if cfg.shift else u
             for j in range(3)]
        q, k, v = (Heads.split(Dense.forward(a[j], P[p + w]), H) for j, w in enumerate(("wq", "wk", "wv")))
        extra, ectx = [], {}
        if mx.inputs == "decay":
            z = Dense.forward(u, P[p + "wg"]) + P[p + "bg"]
            extra = [NegSoftplus.forward(z).transpose(0, 2, 1)]
            ectx["z"] = z
        if mx.inputs == "zeros":
            q, ectx["nq"] = UnitNorm.forward(q)
            k, ectx["nk"] = UnitNorm.forward(k)
            s = Dense.forward(a[1], P[p + "ws"])
            gl = Dense.forward(a[0], P[p + "wgate"]) + P[p + "bgate"]
            B, T = s.shape[:2]
            extra = [s.transpose(0, 2, 1), gl.reshape(B, T, H, mx.gates).transpose(0, 2, 1, 3)]
        arrays = [q, k, v] + extra
        if grad:
            o, pullback = wb.vjp(self.fn, *arrays, backend=self.backend, **self.options)
        else:
            o, pullback = self.fn(*arrays, backend=self.backend, **self.options), None
        on, octx = RMSNorm.forward(o, None, OUT_NORM_EPS) if cfg.out_norm else (o, None)
        om = Heads.merge(on)
        y = Dense.forward(om, P[p + "wo"])
        ctx = dict(nctx=nctx, u=u, su=su, a=a, q=q, k=k, ectx=ectx, pullback=pullback, octx=octx, om=om)
        return y, ctx

    def _attention_backward(self, P, p, c, dy, G):
        """Gradient of one attention sub-block: fills G with its parameters' gradients, returns dh."""
        cfg, mx = self.cfg, self.mixer
        H = cfg.heads
        dom, G[p + "wo"] = Dense.backward(c["om"], P[p + "wo"], dy)
        don = Heads.split(dom, H)
        do = RMSNorm.backward(c["octx"], None, don)[0] if cfg.out_norm else don
        grads = c["pullback"](do)
        dq, dk, dv = grads[:3]
        u, a = c["u"], c["a"]
        du = 0
        da = [None, None, None]
        if mx.inputs == "decay":
            dz = NegSoftplus.backward(c["ectx"]["z"], grads[3].transpose(0, 2, 1))
            du, G[p + "wg"] = Dense.backward(u, P[p + "wg"], dz)
            G[p + "bg"] = dz.reshape(-1, H).sum(0)
        if mx.inputs == "zeros":
            dq = UnitNorm.backward(c["q"], c["ectx"]["nq"], dq)
            dk = UnitNorm.backward(c["k"], c["ectx"]["nk"], dk)
            ds = grads[3].transpose(0, 2, 1)
            dgl = grads[4].transpose(0, 2, 1, 3).reshape(ds.shape[0], ds.shape[1], H * mx.gates)
            da[1], G[p + "ws"] = Dense.backward(a[1], P[p + "ws"], ds)
            da[0], G[p + "wgate"] = Dense.backward(a[0], P[p + "wgate"], dgl)
            G[p + "bgate"] = dgl.reshape(-1, H * mx.gates).sum(0)
        for j, (w, dx) in enumerate(zip(("wq", "wk", "wv"), (dq, dk, dv))):
            daj, G[p + w] = Dense.backward(a[j], P[p + w], Heads.merge(dx))
            da[j] = daj if da[j] is None else da[j] + daj
        if cfg.shift:
            gs = array_module(u).zeros_like(P[p + "shift"])
            for j in range(3):
                duj, gs[j, 0], gs[j, 1] = TokenShift.backward(u, c["su"], P[p + "shift"][j, 0],
                                                              P[p + "shift"][j, 1], da[j])
                du = du + duj
            G[p + "shift"] = gs
        else:
            du = du + da[0] + da[1] + da[2]
        dh, G[p + "norm_attn"] = RMSNorm.backward(c["nctx"], P[p + "norm_attn"], du)
        return dh

    # ------------------------------------------------------------------ MLP
    @staticmethod
    def _mlp_forward(P, p, h):
        m, nctx = RMSNorm.forward(h, P[p + "norm_mlp"], NORM_EPS)
        z = Dense.forward(m, P[p + "w1"])
        a = SiLU.forward(z)
        return Dense.forward(a, P[p + "w2"]), dict(nctx=nctx, m=m, z=z, a=a)

    @staticmethod
    def _mlp_backward(P, p, c, dy, G):
        da, G[p + "w2"] = Dense.backward(c["a"], P[p + "w2"], dy)
        dz = SiLU.backward(c["z"], da)
        dm, G[p + "w1"] = Dense.backward(c["m"], P[p + "w1"], dz)
        dh, G[p + "norm_mlp"] = RMSNorm.backward(c["nctx"], P[p + "norm_mlp"], dm)
        return dh

    # ------------------------------------------------------------------ whole model
    @staticmethod
    def prepare(tokens, labels, xp=np) -> ModelBatch:
        """``tokens`` ``(B, T)`` ids and ``labels`` ``(B, T)`` targets (< 0 where nothing is asked), NumPy
        arrays, as a ``ModelBatch`` on ``xp``."""
        tokens, labels = np.asarray(tokens), np.asarray(labels)
        flat = labels.ravel()
        sel = np.nonzero(flat >= 0)[0]
        if sel.size == 0:
            raise ValueError("Model: the batch has no queried position (every label < 0)")
        return ModelBatch(xp.asarray(tokens), xp.asarray(sel), xp.asarray(flat[sel]), int(sel.size))

    def _batch(self, P, tokens, labels) -> ModelBatch:
        if isinstance(tokens, ModelBatch):
            if labels is not None:
                raise ValueError("Model: pass a ModelBatch alone, or tokens and labels")
            return tokens
        if labels is None:
            raise ValueError("Model: labels missing (pass tokens and labels, or a ModelBatch)")
        xp = array_module(P["embed"])
        if xp is not np and not isinstance(tokens, np.ndarray):
            tokens, labels = xp.asnumpy(tokens), xp.asnumpy(labels)
        return self.prepare(tokens, labels, xp)

    def _forward(self, P, batch: ModelBatch, grad, sync=True):
        xp = array_module(P["embed"])
        tokens = batch.tokens
        h = Embedding.forward(P["embed"], tokens)
        blocks = []
        for b in range(self.cfg.layers):
            p = f"b{b}."
            y, actx = self._attention_forward(P, p, h, grad)
            h = h + y
            y, mctx = self._mlp_forward(P, p, h)
            h = h + y
            blocks.append((actx, mctx))
        D = self.cfg.width
        sel, y = batch.sel, batch.y
        hs = h.reshape(-1, D)[sel]
        f, fctx = RMSNorm.forward(hs, P["norm_f"], NORM_EPS)
        logits = Dense.forward(f, P["unembed"])
        loss, prob = CrossEntropy.forward(logits, y)
        acc = (logits.argmax(-1) == y).mean()
        metrics = Metrics(float(loss), float(acc), batch.queries) if sync else Metrics(loss, acc, batch.queries)
        ctx = dict(tokens=tokens, blocks=blocks, sel=sel, hshape=h.shape, fctx=fctx, f=f, prob=prob, y=y)
        return metrics, ctx

    def evaluate(self, P, tokens, labels=None, sync=True) -> Metrics:
        """Loss and accuracy on a batch (forward only): ``tokens`` and ``labels`` as in ``loss_and_grads``,
        or a ``ModelBatch``."""
        return self._forward(P, self._batch(P, tokens, labels), grad=False, sync=sync)[0]

    def loss_and_grads(self, P, tokens, labels=None, sync=True):
        """(Metrics, gradients dict) for a batch: tokens ``(B, T)`` ids, labels ``(B, T)`` targets, < 0 where
        nothing is asked (or a ``ModelBatch`` alone).  ``sync=False``: the metrics stay 0-d arrays on the
        device, so the step never waits for it."""
        metrics, c = self._forward(P, self._batch(P, tokens, labels), grad=True, sync=sync)
        xp = array_module(P["embed"])
        G = {}
        dlogits = CrossEntropy.backward(c["prob"], c["y"])
        df, G["unembed"] = Dense.backward(c["f"], P["unembed"], dlogits)
        dhs, G["norm_f"] = RMSNorm.backward(c["fctx"], P["norm_f"], df)
        D = self.cfg.width
        dh = xp.zeros((math.prod(c["hshape"][:-1]), D), dtype=dhs.dtype)
        dh[c["sel"]] = dhs                                  # the queried positions are distinct
        dh = dh.reshape(c["hshape"])
        for b in reversed(range(self.cfg.layers)):
            p = f"b{b}."
            actx, mctx = c["blocks"][b]
            dh = dh + self._mlp_backward(P, p, mctx, dh, G)
            dh = dh + self._attention_backward(P, p, actx, dh, G)
        G["embed"] = Embedding.backward(P["embed"], c["tokens"], dh)
        return metrics, G


# ============================================================================= the optimiser
@dataclass
class AdamW:
    """AdamW with a linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio * lr`` at ``steps``.

    Per parameter: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``p -= lr_t (m_hat / (sqrt(v_hat) + eps)
    + wd p)`` with the bias-corrected ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``; the weight decay
    (decoupled) applies to matrices only, not to gains, biases or shift coefficients.  Gradients are first
    scaled so that their global norm is at most ``clip``.

    On the first step the parameters are copied into one flat buffer and ``params``' entries replaced by views
    of it, so each step is a handful of array operations whatever the number of tensors (a few kernel
    launches on a GPU instead of ten per tensor)."""
    lr: float
    steps: int
    warmup: int = 0
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    min_ratio: float = 0.1
    clip: float = 1.0
    t: int = 0
    _flat: object = None
    _names: tuple = ()
    _views: tuple = ()
    _m: object = None
    _v: object = None
    _decay: object = None

    def lr_at(self, t: int) -> float:
        """Learning rate of step t (1-based)."""
        if self.warmup and t <= self.warmup:
            return self.lr * t / self.warmup
        frac = min(1.0, (t - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    def _adopt(self, params: dict) -> None:
        xp = array_module(params["embed"])
        self._names, self._views = tuple(params), ()
        self._flat = xp.concatenate([params[n].ravel() for n in self._names])
        decay, start = [], 0
        for n in self._names:
            p = params[n]
            params[n] = self._flat[start:start + p.size].reshape(p.shape)
            start += p.size
            self._views += (params[n],)
            decay.append(xp.full(p.size, p.ndim >= 2 and n.split(".")[-1] != "shift", dtype=p.dtype))
        self._decay = xp.concatenate(decay) * self.weight_decay
        self._m, self._v = xp.zeros_like(self._flat), xp.zeros_like(self._flat)

    def step(self, params: dict, grads: dict):
        """Update ``params`` in place; returns the gradient's global norm before clipping (a 0-d array of the
        parameters' module: reading it on the host waits for a GPU)."""
        if self._flat is None or tuple(params) != self._names or any(
                params[n] is not v for n, v in zip(self._names, self._views)):
            if self.t:
                raise ValueError("AdamW.step: params changed since the first step (pass the same dict)")
            self._adopt(params)
        xp = array_module(self._flat)
        self.t += 1
        g = xp.concatenate([grads[n].ravel() for n in self._names])
        norm = xp.sqrt((g * g).sum())
        if self.clip:                       # g * min(1, clip / norm), without reading norm on the host
            g *= xp.minimum(1.0, self.clip / xp.maximum(norm, TINY))
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        self._m *= self.b1
        self._m += (1 - self.b1) * g
        self._v *= self.b2
        self._v += (1 - self.b2) * (g * g)
        upd = (self._m / c1) / (xp.sqrt(self._v / c2) + self.eps) + self._decay * self._flat
        self._flat -= self.lr_at(self.t) * upd
        return norm
