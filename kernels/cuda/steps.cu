// steps.cu -- one token of linear, decayed or ZeroS attention for a batch of heads, in one launch
// (host code: kernels/cupy/steps.py; the recurrences and the array-module form: workbench/steps.py).
//
// Per head n the state holds fp32 Dk x Dv matrices (linear, decayed: S; ZeroS: F, G, H, row-major) and a
// few per-head values (linear with normalize: z (Dk); ZeroS: m, E, P, n).  One step, inputs of storage type
// T (float, wb_half, wb_bf16; the arithmetic is fp32):
//   linear   S' = S + phi(k) v^T,  z' = z + phi(k)      o = scale phi(q)^T S'   (/ (scale phi(q).z' + eps))
//   decayed  S' = e^g S + k v^T                          o = scale q^T S'
//   zeros    m' = max(m, s), c = e^{m - m'}, w = e^{s - m'}, E' = c E + w, P' = P + s, n' = n + 1,
//            F' = c F + w k v^T,  G' = G + s k v^T,  H' = H + k v^T
//            o = q^T (alpha F' + beta G' + gamma H'),  alpha = sigh / E', beta = (sig1 - sigh) / n',
//            gamma = (tz - sigh - beta P') / n'   (sig1, sigh: sigmoids of the gates; tz: tanh, or 0)
//
// Memory bound: every state element is read once and written once (8 bytes) for 2 FLOPs of update and
// 2 of read-out (ZeroS: 3 matrices).  Block (n, slab) owns columns [32 slab, 32 slab + 32) of every state
// matrix of head n, all Dk rows (grid: N * ceil(Dv / 32) blocks of 256 threads).  Thread (rg, cg) holds V
// consecutive columns (V = 4: 16-byte loads and stores, Dv % 4 == 0 and 16-byte aligned rows; else V = 1)
// of rows rg, rg + RG, ... (RG = 256 / (32 / V) row groups): eight threads (V = 4) or a warp (V = 1) read one
// row's 128 contiguous bytes.  A thread issues the loads of R = 4 rows (R * NS * 16 bytes) before it uses
// any, updates them, stores them and adds q_r x'_r to its column sums; the row groups' sums meet in warp
// shuffles and a shared-memory sum over the 8 warps.  phi(q), phi(k) (or q, k) are staged in dynamic shared
// memory (2 Dk floats).
//
// Double-buffered: the new state goes to other arrays than the old.  S' could overwrite S in place (each
// element is read and written by one thread), but the per-head values (z', m', E', P', n') are written by
// the head's first slab while its other slabs still read the old ones, so in and out must not alias.
//
// Precision: __expf (the --use_fast_math exp, at most 2 + 1.17 |x| ulp) for e^g, e^{m-m'}, e^{s-m'}
// and elu1; sigmoid and tanh through __expf (tanhf under --use_fast_math is tanh.approx.f32, ~2^-11).
// phi(x): 0 identity, 1 elu1 (x + 1 for x > 0, else e^x), 2 relu.
#include "common.cuh"

namespace wbstep {
constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
constexpr int SLAB = 32;          // state columns per block
constexpr int R = 4;              // rows per thread loaded before any is used

struct __align__(16) f32x4 { float x[4]; };

template <int V>
__device__ __forceinline__ void load(float (&d)[V], const float* p) {
    if constexpr (V == 4) {
        const f32x4 t = *reinterpret_cast<const f32x4*>(p);
#pragma unroll
        for (int i = 0; i < 4; ++i) d[i] = t.x[i];
    } else {
        d[0] = *p;
    }
}

template <int V>
__device__ __forceinline__ void store(float* p, const float (&d)[V]) {
    if constexpr (V == 4) {
        f32x4 t;
#pragma unroll
        for (int i = 0; i < 4; ++i) t.x[i] = d[i];
        *reinterpret_cast<f32x4*>(p) = t;
    } else {
        *p = d[0];
    }
}

__device__ __forceinline__ float phi(float x, int fmap) {
    if (fmap == 1) return x > 0.f ? x + 1.f : __expf(x);
    if (fmap == 2) return fmaxf(x, 0.f);
    return x;
}
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }
__device__ __forceinline__ float tanh_exp(float x) { return 1.f - 2.f / (1.f + __expf(2.f * x)); }

// The sum of x over the block (every thread gets it); contains barriers: call it block-uniformly.
__device__ __forceinline__ float block_sum(float x) {
    __shared__ float part[WARPS];
    x = warp_sum(x);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = x;
    __syncthreads();
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) s += part[w];
    __syncthreads();
    return s;
}

// Where a block works: head n, columns from c0; this thread's first column c and row group rg.
template <int V>
struct Place {
    static constexpr int CG = SLAB / V;          // threads along a slab's columns
    static constexpr int RG = THREADS / CG;      // row groups
    int n, slab, c, rg;
    bool live;                                   // this thread's columns exist (c < Dv)
    __device__ __forceinline__ Place(int Dv) {
        const int nslab = (Dv + SLAB - 1) / SLAB;
        n = blockIdx.x / nslab;
        slab = blockIdx.x - n * nslab;
        c = slab * SLAB + (threadIdx.x % CG) * V;
        rg = threadIdx.x / CG;
        live = c < Dv;
    }
};

// The state-matrix pass of one block.  Rule (one per op) holds NS input and output matrices (this head's)
// and ``update(x, i, kv)``: the new values x[s][i] of the NS matrices at column i of a row, from the old ones
// and kv = k_r v_c, returning the value the read-out multiplies by q_r.  Then the column sums of q_r x'_r
// over the block's rows are reduced, scaled by ``out_scale`` and written to o (this head's row) as T.
template <typename T, int V, class Rule>
__device__ __forceinline__ void state_pass(Rule& rule, const Place<V>& at, const float* qq, const float* kk,
                                           const T* __restrict__ v, T* __restrict__ o, int Dk, int Dv,
                                           float out_scale) {
    constexpr int NS = Rule::NS, RG = Place<V>::RG, CG = Place<V>::CG;
    __shared__ float red[WARPS][SLAB];
    float vv[V], acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
        vv[i] = at.live ? to_f32(v[at.c + i]) : 0.f;
        acc[i] = 0.f;
    }
    for (int r0 = at.rg; r0 < Dk; r0 += R * RG) {
        float x[R][NS][V];
#pragma unroll
        for (int j = 0; j < R; ++j) {
            const int r = r0 + j * RG;
            if (at.live && r < Dk) {
#pragma unroll
                for (int s = 0; s < NS; ++s) load<V>(x[j][s], rule.in[s] + (long long)r * Dv + at.c);
            }
        }
#pragma unroll
        for (int j = 0; j < R; ++j) {
            const int r = r0 + j * RG;
            if (at.live && r < Dk) {
                const float kr = kk[r], qr = qq[r];
#pragma unroll
                for (int i = 0; i < V; ++i) acc[i] += qr * rule.update(x[j], i, kr * vv[i]);
#pragma unroll
                for (int s = 0; s < NS; ++s) store<V>(rule.out[s] + (long long)r * Dv + at.c, x[j][s]);
            }
        }
    }
    // threads t = rg * CG + cg: the row groups of a warp share lanes cg, cg + CG, ...; then the 8 warps
#pragma unroll
    for (int i = 0; i < V; ++i) {
#pragma unroll
        for (int off = CG; off < 32; off <<= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
    }
    const int lane = threadIdx.x & 31;
    if (lane < CG) {
#pragma unroll
        for (int i = 0; i < V; ++i) red[threadIdx.x >> 5][lane * V + i] = acc[i];
    }
    __syncthreads();
    if (threadIdx.x < SLAB) {
        const int col = at.slab * SLAB + threadIdx.x;
        if (col < Dv) {
            float sum = 0.f;
#pragma unroll
            for (int w = 0; w < WARPS; ++w) sum += red[w][threadIdx.x];
            o[col] = from_f32<T>(sum * out_scale);
        }
    }
}

template <int V>
struct LinearRule {
    static constexpr int NS = 1;
    const float* in[1];
    float* out[1];
    __device__ __forceinline__ float update(float (&x)[1][V], int i, float kv) const {
        x[0][i] += kv;
        return x[0][i];
    }
};

template <int V>
struct DecayedRule {
    static constexpr int NS = 1;
    const float* in[1];
    float* out[1];
    float a;                                     // e^g
    __device__ __forceinline__ float update(float (&x)[1][V], int i, float kv) const {
        x[0][i] = fmaf(a, x[0][i], kv);
        return x[0][i];
    }
};

template <int V>
struct ZerosRule {
    static constexpr int NS = 3;                 // F, G, H
    const float* in[3];
    float* out[3];
    float c, w, s, alpha, beta, gamma;
    __device__ __forceinline__ float update(float (&x)[3][V], int i, float kv) const {
        x[0][i] = fmaf(c, x[0][i], w * kv);
        x[1][i] = fmaf(s, kv, x[1][i]);
        x[2][i] += kv;
        return alpha * x[0][i] + beta * x[1][i] + gamma * x[2][i];
    }
};

// q, k of head n (phi applied) into shared memory; returns this thread's part of phi(q).z' and writes
// z' = z + phi(k) (first slab only) when z is given.
template <typename T>
__device__ __forceinline__ float stage(const T* __restrict__ q, const T* __restrict__ k, float* qq, float* kk,
                                       int Dk, int fmap, const float* __restrict__ z, float* __restrict__ z_out,
                                       bool first_slab) {
    float zq = 0.f;
    for (int r = threadIdx.x; r < Dk; r += THREADS) {
        const float a = phi(to_f32(q[r]), fmap), b = phi(to_f32(k[r]), fmap);
        qq[r] = a;
        kk[r] = b;
        if (z != nullptr) {
            const float zn = z[r] + b;
            zq += a * zn;
            if (first_slab) z_out[r] = zn;
        }
    }
    return zq;
}
}  // namespace wbstep

// linear_step: z / z_out null without normalize.  Arrays: q, k (N, Dk); v, o (N, Dv); S, S_out (N, Dk, Dv);
// z, z_out (N, Dk).  Dynamic shared memory: 2 Dk floats.
template <typename T, int V>
__global__ void __launch_bounds__(wbstep::THREADS)
linear_step(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
            const float* __restrict__ S, const float* __restrict__ z, float* __restrict__ S_out,
            float* __restrict__ z_out, T* __restrict__ o, int Dk, int Dv, int fmap, float scale, float eps) {
    using namespace wbstep;
    extern __shared__ float sm[];
    const Place<V> at(Dv);
    const long long n = at.n, E = (long long)Dk * Dv;
    const bool normalize = z != nullptr;
    const float zq = stage(q + n * Dk, k + n * Dk, sm, sm + Dk, Dk, fmap, normalize ? z + n * Dk : nullptr,
                           normalize ? z_out + n * Dk : nullptr, at.slab == 0);
    float out_scale = scale;
    if (normalize) out_scale = scale / (scale * block_sum(zq) + eps);
    __syncthreads();
    LinearRule<V> rule{{S + n * E}, {S_out + n * E}};
    state_pass<T, V>(rule, at, sm, sm + Dk, v + n * Dv, o + n * Dv, Dk, Dv, out_scale);
}

// decayed_step: g (N,) log decays.  Dynamic shared memory: 2 Dk floats.
template <typename T, int V>
__global__ void __launch_bounds__(wbstep::THREADS)
decayed_step(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
             const T* __restrict__ g, const float* __restrict__ S, float* __restrict__ S_out, T* __restrict__ o,
             int Dk, int Dv, float scale) {
    using namespace wbstep;
    extern __shared__ float sm[];
    const Place<V> at(Dv);
    const long long n = at.n, E = (long long)Dk * Dv;
    stage(q + n * Dk, k + n * Dk, sm, sm + Dk, Dk, 0, nullptr, nullptr, false);
    __syncthreads();
    DecayedRule<V> rule{{S + n * E}, {S_out + n * E}, __expf(to_f32(g[n]))};
    state_pass<T, V>(rule, at, sm, sm + Dk, v + n * Dv, o + n * Dv, Dk, Dv, scale);
}

// zeros_step: s (N,), gates (N, ng) with ng 2 or 3; F, G, H and their outputs (N, Dk, Dv); m, Es, P, cnt and
// their outputs (N,) (the state's m, E, P, n).  Dynamic shared memory: 2 Dk floats.
template <typename T, int V>
__global__ void __launch_bounds__(wbstep::THREADS)
zeros_step(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ s,
           const T* __restrict__ gates, int ng, const float* __restrict__ F, const float* __restrict__ G,
           const float* __restrict__ H, const float* __restrict__ m, const float* __restrict__ Es,
           const float* __restrict__ P, const float* __restrict__ cnt, float* __restrict__ F_out,
           float* __restrict__ G_out, float* __restrict__ H_out, float* __restrict__ m_out,
           float* __restrict__ E_out, float* __restrict__ P_out, float* __restrict__ cnt_out, T* __restrict__ o,
           int Dk, int Dv) {
    using namespace wbstep;
    extern __shared__ float sm[];
    const Place<V> at(Dv);
    const long long n = at.n, E = (long long)Dk * Dv;
    stage(q + n * Dk, k + n * Dk, sm, sm + Dk, Dk, 0, nullptr, nullptr, false);
    const float st = to_f32(s[n]), m0 = m[n], mn = m0 >= st ? m0 : st;       // a NaN s gives a NaN max
    const float c = __expf(m0 - mn), w = __expf(st - mn);
    const float En = fmaf(c, Es[n], w), Pn = P[n] + st, nn = cnt[n] + 1.f;
    const T* gt = gates + n * ng;
    const float sig1 = sigmoid(to_f32(gt[0])), sigh = sigmoid(to_f32(gt[1]));
    const float tz = ng == 3 ? tanh_exp(to_f32(gt[2])) : 0.f;
    const float beta = (sig1 - sigh) / nn;
    if (at.slab == 0 && threadIdx.x == 0) {
        m_out[n] = mn;
        E_out[n] = En;
        P_out[n] = Pn;
        cnt_out[n] = nn;
    }
    __syncthreads();
    ZerosRule<V> rule{{F + n * E, G + n * E, H + n * E}, {F_out + n * E, G_out + n * E, H_out + n * E},
                      c, w, st, sigh / En, beta, (tz - sigh - beta * Pn) / nn};
    state_pass<T, V>(rule, at, sm, sm + Dk, v + n * Dv, o + n * Dv, Dk, Dv, 1.f);
}
