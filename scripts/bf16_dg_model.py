"""Study: the d log_decay error of the tensor-core chunk core (kernels/cuda/chunked_mma.cu) with 16-bit
operands, modelled in NumPy (no GPU), and the fixes that bring bfloat16 inside its 2e-2 tolerance (issue #12;
docs/kernels/decayed.md, "The bfloat16 core: d log_decay from chunk anchors").

What is modelled (per head, one sequence, chunks of C = 64; float32 products as float32 matmuls of the rounded
operands, i.e. float32 accumulation; ``rnd`` = rounding to the storage type T at the kernels' operand points):
  forward state   H_{c+1} = e^{b_last} H_c + rnd(K diag(u))^T V           (KWeights: k u rounded to T)
  dq walker       dq = scale diag(e^b) dO rnd(H_c)^T + rnd(mask(scale e^{b_t - b_i} dO V^T)) K,  rq_t = q_t.dq_t
  dk walker       dk = diag(u) V rnd(dS)^T + rnd(mask^T(scale e^{b_t - b_i} V dO^T)) Q,         rk_i = k_i.dk_i
                  dS <- e^{b_last} dS + rnd(Q diag(scale e^b))^T dO        (KWeights: q scale e^b rounded to T)
  d log_decay     "cumsum" (today): dg_j = sum_{t >= j} (rq_t - rk_t) + <dS_T, S_T>,  dg_0 = 0
The state operands are scaled by a power of two before the rounding (sigma) in the kernels: that changes no relative
rounding (no subnormals at these magnitudes), so it is left out.

The fixes compared (``MODES``):
  anchor      the crossing identity at chunk starts: dg_{c0} = <H_c, dS'_c> (H_c the state before chunk c, dS'_c the
              gradient of that state: the dk walker's dS after chunk c's update), an inner product of two float32
              states (H_c as the dq-folded walk reads it: rounded to T), so no long difference of sums; inside a
              chunk dg_j = anchor_{c+1} + sum_{j <= t < c1} (rq_t - rk_t) (suffix, up to 64 terms; anchor past a
              sequence's last chunk: <dS_T, S_T>) -- "anchor-near": from the nearer anchor (prefix
              dg_j = anchor_c - sum_{c0 <= t < j} (rq_t - rk_t) in the chunk's first half: up to 32 terms)
  split-state the state operands H and dS in the inter-chunk products as hi + lo (two T products)
  split-weights  only the KWeights (k u, q scale e^b) as hi + lo
  split-all   split-state and the KWeights (k u, q scale e^b) as hi + lo too (the state chains' updates)
  exact-intra the intra-chunk score tiles unrounded (as if q.dq, k.dk were formed from float32 M = S o dP)
  float16     float16 everywhere instead of bfloat16 (today's float16 path, for scale)

Inputs as the check makes them (workbench/inputs.py random_inputs, workbench/check.py: rounded to float16, then
to bfloat16 for a bfloat16 cell; the float64 reference sees the same rounded inputs), error metric
||x - ref|| / ||ref|| (workbench/check.rel_error), reference = the same chunked algorithm in float64 (checked
against workbench's explicit reference at small T: --validate).

  python scripts/bf16_dg_model.py                 # the table of docs/kernels/decayed.md (check cells + long T)
  python scripts/bf16_dg_model.py --validate      # the float64 model against numpy:explicit's d log_decay
"""
from __future__ import annotations

import argparse
import os
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

C = 64
BF16, F16 = ml_dtypes.bfloat16, np.float16


def rounder(dt):
    if dt is None:
        return lambda x: x
    return lambda x: np.asarray(x, np.float32).astype(dt).astype(np.float32)


def split_rounder(dt):
    """hi + lo: the two T values whose float32 sum is x to ~2^-16 (bf16) -- two products instead of one."""
    r = rounder(dt)

    def f(x):
        x = np.asarray(x, np.float32)
        hi = r(x)
        return hi + r(x - hi)
    return f


def model_dg(q, k, v, do, g, scale=1.0, S0=None, dST=None, dt=BF16, split_state=False, split_weights=False,
             exact_intra=False, dg="cumsum", exact=False, split_anchor=False):
    """d log_decay of one head (q, k: (T, Dk), v, do: (T, Dv), g: (T,)) as the kernels form it; exact: float64, no
    rounding anywhere (the reference)."""
    T, Dk = q.shape
    Dv = v.shape[1]
    f = np.float64 if exact else np.float32
    R = rounder(None if exact else dt)
    Rs = split_rounder(dt) if (split_state and not exact) else R
    Rw = split_rounder(dt) if (split_weights and not exact) else R
    Ri = rounder(None) if (exact_intra or exact) else R
    q, k, v, do = (np.asarray(x, f) for x in (q, k, v, do))
    nch = -(-T // C)
    H = np.zeros((Dk, Dv), f) if S0 is None else np.asarray(S0, f).copy()
    Hs, bs = [], []
    for c in range(nch):                                    # forward chain: the state before each chunk
        a, z = c * C, min(T, c * C + C)
        b = np.cumsum(np.asarray(g[a:z], np.float64))       # float64 within-chunk cumsum (tc::chunk_logdecay)
        bs.append(b)
        Hs.append(H.copy())
        u = np.exp(b[-1] - b).astype(f)
        H = (np.exp(b[-1]).astype(f) * H + Rw(k[a:z] * u[:, None]).T @ v[a:z]).astype(f)
    final = H
    rq = np.zeros(T, np.float64)
    rk = np.zeros(T, np.float64)
    for c in range(nch):                                    # dq walker
        a, z = c * C, min(T, c * C + C)
        b = bs[c]
        e = np.exp(b).astype(f)
        acc = (do[a:z] @ Rs(Hs[c]).T) * (scale * e)[:, None]
        S = do[a:z] @ v[a:z].T
        D = np.tril(np.exp(np.minimum(b[:, None] - b[None, :], 0))).astype(f)
        P = Ri((scale * D * S).astype(f))
        dq = acc + P @ k[a:z]
        rq[a:z] = np.sum(q[a:z] * dq, axis=1)
    dS = np.zeros((Dk, Dv), f) if dST is None else np.asarray(dST, f).copy()
    anchors = np.zeros(nch + 1)
    anchors[nch] = 0.0 if dST is None else float(np.sum(np.asarray(dST, f) * final))
    for c in reversed(range(nch)):                          # dk walker (reverse)
        a, z = c * C, min(T, c * C + C)
        b = bs[c]
        e = np.exp(b).astype(f)
        u = np.exp(b[-1] - b).astype(f)
        acc = (v[a:z] @ Rs(dS).T) * u[:, None]
        S = v[a:z] @ do[a:z].T                              # rows keys i, columns queries t
        D = np.triu(np.exp(np.minimum(b[None, :] - b[:, None], 0))).astype(f)
        P = Ri((scale * D * S).astype(f))
        dk = acc + P @ q[a:z]
        rk[a:z] = np.sum(k[a:z] * dk, axis=1)
        dS = (np.exp(b[-1]).astype(f) * dS + Rw(q[a:z] * (scale * e)[:, None]).T @ do[a:z]).astype(f)
        Ra = Rs if split_anchor else R                  # H_c as the dq-folded walk reads it (hi, or hi + lo)
        anchors[c] = float(np.sum(Ra(Hs[c]).astype(np.float64) * dS))
    dG = rq - rk
    cst = anchors[nch]
    if dg == "cumsum" or exact:
        out = np.cumsum(dG[::-1])[::-1] + cst
    else:
        out = np.empty(T)
        for c in range(nch):
            a, z = c * C, min(T, c * C + C)
            suf = np.cumsum(dG[a:z][::-1])[::-1] + anchors[c + 1]
            out[a:z] = suf
            if dg == "anchor-near":
                pre = anchors[c] - np.concatenate([[0.0], np.cumsum(dG[a:z])[:-1]])
                h = min(z - a, C // 2)
                out[a:a + h] = pre[:h]
    if S0 is None:
        out[0] = 0.0
    return out


MODES = {
    "today (bf16)": dict(),
    "exact-intra": dict(exact_intra=True),
    "split-state": dict(split_state=True),
    "split-weights": dict(split_weights=True),
    "split-all": dict(split_state=True, split_weights=True),
    "anchor": dict(dg="anchor"),
    "anchor-near": dict(dg="anchor-near"),
    "anchor + split-state": dict(dg="anchor", split_state=True),
    "anchor + split-state, anchor hi+lo": dict(dg="anchor", split_state=True, split_anchor=True),
    "float16 today": dict(dt=F16),
}


def rel_error(x, ref):
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def cell(lead, T, D, rng_range, seed, state=False, packed=False):
    """The check's inputs of one decayed cell (workbench.check.cell_inputs + _as_seen for bfloat16), as float64;
    packed: S0 and dST hold a state per sequence (lead + (nseq,)), the sequences cut by cu_seqlens (returned)."""
    from workbench.check import cell_inputs
    Dk, Dv = (D, D) if np.ndim(D) == 0 else D
    cin = cell_inputs("decayed", lead, T, Dk, Dv, None, seed, log_decay_range=rng_range, state=state, packed=packed)
    to_bf = lambda a: np.asarray(a).astype(BF16).astype(np.float64)      # noqa: E731
    q, k, v, g = (to_bf(a) for a in cin.arrays)
    do = to_bf(cin.dout)
    S0 = dST = None
    if state:
        S0 = np.asarray(cin.initial_state.S, np.float32).astype(np.float64)
        dST = np.asarray(cin.dstate.S, np.float32).astype(np.float64)
    return q, k, v, g, do, S0, dST, (cin.cu_seqlens or (0, T))


def errors(lead, T, D, rng_range, seed, state=False, modes=MODES, packed=False):
    """Relative d log_decay error of each mode on one check cell (packed: every sequence on its own, its chunks
    from its first token, with its own initial state and final-state gradient, as the segment table cuts them)."""
    q, k, v, g, do, S0, dST, cu = cell(lead, T, D, rng_range, seed, state, packed)
    N, nseq = int(np.prod(lead)), len(cu) - 1
    q, k, v, do = (x.reshape(N, T, -1) for x in (q, k, v, do))
    g = g.reshape(N, T)
    Dk, Dv = q.shape[-1], v.shape[-1]                      # (D: one head dim, or (Dk, Dv))
    S0 = None if S0 is None else S0.reshape(N, nseq, Dk, Dv)
    dST = None if dST is None else dST.reshape(N, nseq, Dk, Dv)

    def run(**kw):
        out = np.empty((N, T))
        for n in range(N):
            for s in range(nseq):
                a, z = cu[s], cu[s + 1]
                out[n, a:z] = model_dg(q[n, a:z], k[n, a:z], v[n, a:z], do[n, a:z], g[n, a:z],
                                       S0=None if S0 is None else S0[n, s], dST=None if dST is None else dST[n, s],
                                       **kw)
        return out
    ref = run(exact=True)
    return {name: rel_error(run(**kw), ref) for name, kw in modes.items()}


def validate():
    """The float64 model against the workbench's explicit reference (numpy:explicit) at small shapes."""
    from workbench.check import _reference, cell_inputs
    for T, state in ((127, False), (200, True)):
        cin = cell_inputs("decayed", (2,), T, 16, 16, None, 0, log_decay_range=(-1.0, -0.01), state=state)
        out, grads = _reference("decayed", cin)
        ref = grads[3]
        q, k, v, g = cin.arrays
        got = np.stack([model_dg(q[n], k[n], v[n], cin.dout[n], g[n],
                                 S0=None if not state else cin.initial_state.S[n],
                                 dST=None if not state else cin.dstate.S[n], exact=True) for n in range(2)])
        print(f"validate T={T} state={state}: model float64 vs numpy:explicit d log_decay rel err "
              f"{rel_error(got, ref):.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--validate", action="store_true")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--long", default="1024,4096,16384", help="T of the long cells (4 heads, D 64)")
    args = ap.parse_args()
    if args.validate:
        validate()
        return
    names = list(MODES)
    print("| cell | seed | " + " | ".join(names) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " |")
    rows = [((2, 2), 127, (-1.0, -0.01), False), ((1, 2), 1024, (-1.0, -0.01), False),
            ((1, 2), 1024, (-30.0, 0.0), False), ((1,), 4097, (-1.0, -0.01), False),
            ((1,), 4097, (-30.0, 0.0), False), ((1,), 4097, (-1.0, -0.01), True),
            ((1,), 4097, (-30.0, 0.0), True)]
    rows += [((4,), int(T), (-1.0, -0.01), False) for T in args.long.split(",") if T]
    for lead, T, rr, state in rows:
        for seed in range(args.seeds):
            e = errors(lead, T, 64, rr, seed, state)
            lab = f"{'x'.join(map(str, lead))}x{T}x64 g in [{rr[0]:g},{rr[1]:g}]" + (" +state" if state else "")
            print(f"| {lab} | {seed} | " + " | ".join(f"{e[n]:.1e}" for n in names) + " |", flush=True)


if __name__ == "__main__":
    main()
