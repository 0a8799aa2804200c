// zeros.cu -- ZeroS attention: the per-position scalar scans; the matrix work is the shared skeleton.
//
// With m_t the running max of s (the global max when not causal), E_t = sum_{j in W(t)} e^{s_j - m_t},
// P_t = sum_{j in W(t)} s_j and alpha = sigh / E, beta = (sig1 - sigh) / n, gamma = (tz - sigh - beta P) / n,
//   o_t = alpha_t oF_t + beta_t oG_t + gamma_t oH_t,
//   oF_t = sum_{i in W(t)} e^{s_i - m_t} (q_t.k_i) v_i       (state F, relative to the running max)
//   oG_t = sum s_i (q_t.k_i) v_i,  oH_t = sum (q_t.k_i) v_i (states G, H)
// oF is the chunked core (chunked.cuh) with values e^{s_i - m_i} v_i and log decays L_t = -m_t (every
// exponent m_i - m_t <= 0; within a chunk b_t = m_ref - m_t, m_ref the max before the chunk); oG and oH
// are one undecayed core call with values [s_i v_i, v_i].  kernels/cupy/zeros.py glues them.
//
// zeros_scan_fwd: per head, m, E, P, the coefficients (alpha, beta, gamma), u_t = e^{s_t - m_t}, the
//   chunk-local log decays bF (N, NC*C, padded) and the per-token ones gF (N, T) of the naive core.
// zeros_scan_bwd: with a_t = do_t.oF_t, V_t = do_t.oG_t, Z_t = do_t.oH_t (row dots, U = a / E):
//   dgates = (dsig1 sig1(1-sig1), dsigh sigh(1-sigh), Z/n (1-tz^2)), dsig1 = V/n - P Z/n^2,
//   dsigh = U - dsig1 - Z/n;  the scalar part of ds (through E and P; the rest comes through the values):
//   ds_j = -e^{s_j - m_j} R_j - Q_j,  R_j = sum_{t >= j} alpha_t U_t e^{m_j - m_t},  Q_j = sum_{t>=j} beta Z/n
//   (not causal: sums over all t, relative to the global max).
// One thread per head walks T sequentially (the plain scan; O(T) per head).
#include "chunked.cuh"

__device__ __forceinline__ float wb_sigmoid(float x) { return 0.5f * (1.f + tanhf(0.5f * x)); }

template <typename TI, bool CAUSAL>
__global__ void zeros_scan_fwd(const TI* __restrict__ s, const TI* __restrict__ gates, int ng, int N, int T,
                               int C, int NC, float* __restrict__ m, float* __restrict__ E,
                               float* __restrict__ P, float* __restrict__ coef, float* __restrict__ u,
                               float* __restrict__ bF, float* __restrict__ gF) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const long base = (long)n * T;
    float M = -WB_INF, Es = 0.f, Ps = 0.f;
    if (!CAUSAL) {                                     // totals first
        for (int t = 0; t < T; ++t) M = fmaxf(M, to_f32(s[base + t]));
        for (int t = 0; t < T; ++t) {
            const float st = to_f32(s[base + t]);
            Es += __expf(st - M);
            Ps += st;
        }
    }
    float mprev = -WB_INF, ref = 0.f;
    for (int t = 0; t < T; ++t) {
        const float st = to_f32(s[base + t]);
        float mt, n_t;
        if (CAUSAL) {
            mt = t == 0 ? st : fmaxf(mprev, st);
            Es = (t == 0 ? 0.f : Es * __expf(mprev - mt)) + __expf(st - mt);
            Ps += st;
            n_t = (float)(t + 1);
            if (t % C == 0) ref = t == 0 ? mt : mprev;
            bF[(long)n * NC * C + t] = ref - mt;
            gF[base + t] = t == 0 ? 0.f : mprev - mt;
        } else {
            mt = M;
            n_t = (float)T;
            bF[(long)n * NC * C + t] = 0.f;
            gF[base + t] = 0.f;
        }
        const TI* gt = gates + (base + t) * ng;
        const float sig1 = wb_sigmoid(to_f32(gt[0])), sigh = wb_sigmoid(to_f32(gt[1]));
        const float tz = ng == 3 ? tanhf(to_f32(gt[2])) : 0.f;
        const float beta = (sig1 - sigh) / n_t;
        m[base + t] = mt;
        E[base + t] = Es;
        P[base + t] = Ps;
        coef[(base + t) * 3 + 0] = sigh / Es;
        coef[(base + t) * 3 + 1] = beta;
        coef[(base + t) * 3 + 2] = (tz - sigh - beta * Ps) / n_t;
        u[base + t] = __expf(st - mt);
        mprev = mt;
    }
    const float blast = bF[(long)n * NC * C + T - 1];
    for (int t = T; t < NC * C; ++t) bF[(long)n * NC * C + t] = blast;
}

template <typename TI, bool CAUSAL>
__global__ void zeros_scan_bwd(const TI* __restrict__ s, const TI* __restrict__ gates, int ng, int N, int T,
                               const float* __restrict__ m, const float* __restrict__ E,
                               const float* __restrict__ P, const float* __restrict__ a,
                               const float* __restrict__ V, const float* __restrict__ Z,
                               float* __restrict__ ds, float* __restrict__ dgates) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const long base = (long)n * T;
    float R = 0.f, Q = 0.f, mnext = 0.f;
    for (int t = T - 1; t >= 0; --t) {                 // reverse: gates, then the suffix sums R, Q
        const TI* gt = gates + (base + t) * ng;
        const float sig1 = wb_sigmoid(to_f32(gt[0])), sigh = wb_sigmoid(to_f32(gt[1]));
        const float n_t = CAUSAL ? (float)(t + 1) : (float)T;
        const float Et = E[base + t], Pt = P[base + t], Zt = Z[base + t];
        const float U = a[base + t] / Et;
        const float dsig1 = V[base + t] / n_t - Pt * Zt / (n_t * n_t);
        const float dsigh = U - dsig1 - Zt / n_t;
        float* dg = dgates + (base + t) * ng;
        dg[0] = dsig1 * sig1 * (1.f - sig1);
        dg[1] = dsigh * sigh * (1.f - sigh);
        if (ng == 3) {
            const float tz = tanhf(to_f32(gt[2]));
            dg[2] = Zt / n_t * (1.f - tz * tz);
        }
        const float mt = m[base + t];
        const float x = sigh / Et * U, y = (sig1 - sigh) / n_t * Zt / n_t;
        if (CAUSAL) {
            R = x + (t == T - 1 ? 0.f : __expf(mt - mnext) * R);
            Q += y;
            ds[base + t] = -__expf(to_f32(s[base + t]) - mt) * R - Q;
        } else {
            R += x;
            Q += y;
        }
        mnext = mt;
    }
    if (!CAUSAL)
        for (int t = 0; t < T; ++t) ds[base + t] = -__expf(to_f32(s[base + t]) - m[base + t]) * R - Q;
}
