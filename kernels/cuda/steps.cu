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
// 2 of read-out (ZeroS: 3 matrices); with little state (a decode batch) the time is the chain of dependent
// memory round trips, so the kernel has one: every thread issues all its global loads -- its state rows,
// their q_r, k_r (and z_r), its columns of v, the head's scalars -- before it uses any, then updates,
// stores, and the block meets once (one barrier) to sum the read-out's columns.
//
// Geometry (template arguments, picked per call by kernels/cupy/steps.py's rule): block (n, slab) owns
// columns [SLAB slab, SLAB slab + SLAB) of every state matrix of head n, all Dk rows (grid: N *
// ceil(Dv / SLAB) blocks of THREADS threads).  Thread (rg, cg) holds V consecutive columns (V = 4: 16-byte
// loads and stores, Dv % 4 == 0 and 16-byte aligned rows; else V = 1) of rows rg, rg + RG, ... (CG = SLAB / V
// threads along the columns, RG = THREADS / CG row groups): a thread loads R rows (R * NS * V floats) per
// pass, a pass covers R * RG rows (Dk beyond that: more passes, each one round trip).  The row groups' column
// sums meet in warp shuffles, then in shared memory over the block's warps.  phi(q_r), phi(k_r) are computed
// by each of the CG threads of row r (no staging, no barrier before the state pass); with normalize the
// first thread of each row adds phi(q_r) z'_r to a sum reduced beside the column sums.
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

// Where a block works: head n, slab; this thread's first column c, column group cg and row group rg.
template <int V, int SLAB, int THREADS>
struct Place {
    static constexpr int CG = SLAB / V;          // threads along a slab's columns
    static constexpr int RG = THREADS / CG;      // row groups
    static constexpr int WARPS = THREADS / 32;
    static_assert(SLAB % V == 0 && 32 % CG == 0 && THREADS % 32 == 0, "a warp holds whole row groups");
    int n, slab, c, cg, rg;
    bool live;                                   // this thread's columns exist (c < Dv)
    __device__ __forceinline__ Place(int Dv) {
        const int nslab = (Dv + SLAB - 1) / SLAB;
        n = blockIdx.x / nslab;
        slab = blockIdx.x - n * nslab;
        cg = threadIdx.x % CG;
        c = slab * SLAB + cg * V;
        rg = threadIdx.x / CG;
        live = c < Dv;
    }
};

// The state pass of one block.  Rule (one per op) holds NS input and output matrices (this head's), its
// per-head values as loaded (raw: converting them would wait for the load before the state's loads are
// issued) and:
//   ready()                    the per-head scalars from the raw values (called once the loads are issued)
//   feature(x)                 phi of a q or k element
//   update(x, i, kv)           the new values x[s][i] of the NS matrices at column i of a row, from the old
//                              ones and kv = k_r v_c; returns the value the read-out multiplies by q_r
//   ROWS, row_in(r),           (ROWS: a per-row value, linear's z) its load, and after the update of row r:
//   row_out(r, qf, kf, zr)     write z'_r (first slab), return the row's part of the extra sum phi(q).z'
//   out_scale(extra)           the factor of the column sums, from the block's extra sum
// The column sums of q_r x'_r over the block's rows are reduced, scaled and written to o (this head's row).
template <typename T, int V, int SLAB, int THREADS, int R, class Rule>
__device__ __forceinline__ void state_pass(Rule& rule, const Place<V, SLAB, THREADS>& at, const T* __restrict__ q,
                                           const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                                           int Dk, int Dv) {
    using P = Place<V, SLAB, THREADS>;
    constexpr int NS = Rule::NS, RG = P::RG, CG = P::CG, WARPS = P::WARPS;
    __shared__ float red[WARPS][SLAB + 1];       // each warp's column sums; [SLAB]: its extra sum
    const bool rows_here = at.live && Rule::ROWS && at.cg == 0;   // this thread adds its rows' extra
    float x[R][NS][V], zr[R], acc[V], extra = 0.f;
    T qt[R], kt[R], vt[V];
    auto fetch = [&](int r0) {                   // the loads of one pass, none used yet
#pragma unroll
        for (int j = 0; j < R; ++j) {
            const int r = r0 + j * RG;
            if (at.live && r < Dk) {
#pragma unroll
                for (int s = 0; s < NS; ++s) load<V>(x[j][s], rule.in[s] + (long long)r * Dv + at.c);
                qt[j] = q[r];
                kt[j] = k[r];
                if (rows_here) zr[j] = rule.row_in(r);
            }
        }
    };
    fetch(at.rg);
#pragma unroll
    for (int i = 0; i < V; ++i) {
        if (at.live) vt[i] = v[at.c + i];
        acc[i] = 0.f;
    }
    rule.ready();
    for (int r0 = at.rg; r0 < Dk; r0 += R * RG) {
        if (r0 != at.rg) fetch(r0);
#pragma unroll
        for (int j = 0; j < R; ++j) {
            const int r = r0 + j * RG;
            if (at.live && r < Dk) {
                const float qf = rule.feature(to_f32(qt[j])), kf = rule.feature(to_f32(kt[j]));
#pragma unroll
                for (int i = 0; i < V; ++i) acc[i] += qf * rule.update(x[j], i, kf * to_f32(vt[i]));
#pragma unroll
                for (int s = 0; s < NS; ++s) store<V>(rule.out[s] + (long long)r * Dv + at.c, x[j][s]);
                if (rows_here) extra += rule.row_out(r, qf, kf, zr[j], at.slab == 0);
            }
        }
    }
    // threads t = rg * CG + cg: the row groups of a warp share lanes cg, cg + CG, ...; then the warps
#pragma unroll
    for (int off = CG; off < 32; off <<= 1) {
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
        if constexpr (Rule::ROWS) extra += __shfl_xor_sync(0xffffffffu, extra, off);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane < CG) {
#pragma unroll
        for (int i = 0; i < V; ++i) red[warp][lane * V + i] = acc[i];
        if (Rule::ROWS && lane == 0) red[warp][SLAB] = extra;
    }
    __syncthreads();
    if (threadIdx.x < SLAB) {
        const int col = at.slab * SLAB + threadIdx.x;
        if (col < Dv) {
            float sum = 0.f, ex = 0.f;
#pragma unroll
            for (int w = 0; w < WARPS; ++w) {
                sum += red[w][threadIdx.x];
                if constexpr (Rule::ROWS) ex += red[w][SLAB];
            }
            o[col] = from_f32<T>(sum * rule.out_scale(ex));
        }
    }
}

template <int V>
struct LinearRule {
    static constexpr int NS = 1;
    static constexpr bool ROWS = true;           // z (null without normalize)
    const float* in[1];
    float* out[1];
    const float* z;
    float* z_out;
    int fmap;
    float scale, eps;
    __device__ __forceinline__ void ready() {}
    __device__ __forceinline__ float feature(float x) const { return phi(x, fmap); }
    __device__ __forceinline__ float update(float (&x)[1][V], int i, float kv) const {
        x[0][i] += kv;
        return x[0][i];
    }
    __device__ __forceinline__ float row_in(int r) const { return z != nullptr ? z[r] : 0.f; }
    __device__ __forceinline__ float row_out(int r, float qf, float kf, float zr, bool first_slab) const {
        if (z == nullptr) return 0.f;
        const float zn = zr + kf;
        if (first_slab) z_out[r] = zn;
        return qf * zn;
    }
    __device__ __forceinline__ float out_scale(float zq) const {
        return z != nullptr ? scale / (scale * zq + eps) : scale;
    }
};

// Rules without per-row values
struct NoRows {
    static constexpr bool ROWS = false;
    __device__ __forceinline__ float feature(float x) const { return x; }
    __device__ __forceinline__ float row_in(int) const { return 0.f; }
    __device__ __forceinline__ float row_out(int, float, float, float, bool) const { return 0.f; }
};

template <typename T, int V>
struct DecayedRule : NoRows {
    static constexpr int NS = 1;
    const float* in[1];
    float* out[1];
    T g;                                         // log decay, as loaded
    float scale, a;                              // a = e^g (ready)
    __device__ __forceinline__ void ready() { a = __expf(to_f32(g)); }
    __device__ __forceinline__ float update(float (&x)[1][V], int i, float kv) const {
        x[0][i] = fmaf(a, x[0][i], kv);
        return x[0][i];
    }
    __device__ __forceinline__ float out_scale(float) const { return scale; }
};

template <typename T, int V>
struct ZerosRule : NoRows {
    static constexpr int NS = 3;                 // F, G, H
    const float* in[3];
    float* out[3];
    T s, gt[3];                                  // as loaded (gt[2] only with 3 gates)
    float m0, E0, P0, n0;
    int ng;
    float* head_out[4];                          // m', E', P', n' (null but in the head's first block)
    float c, w, st, alpha, beta, gamma;          // ready
    __device__ __forceinline__ void ready() {
        st = to_f32(s);
        const float mn = m0 >= st ? m0 : st;                                  // a NaN s gives a NaN max
        c = __expf(m0 - mn);
        w = __expf(st - mn);
        const float En = fmaf(c, E0, w), Pn = P0 + st, nn = n0 + 1.f;
        const float sig1 = sigmoid(to_f32(gt[0])), sigh = sigmoid(to_f32(gt[1]));
        const float tz = ng == 3 ? tanh_exp(to_f32(gt[2])) : 0.f;
        beta = (sig1 - sigh) / nn;
        alpha = sigh / En;
        gamma = (tz - sigh - beta * Pn) / nn;
        if (head_out[0] != nullptr) {
            *head_out[0] = mn;
            *head_out[1] = En;
            *head_out[2] = Pn;
            *head_out[3] = nn;
        }
    }
    __device__ __forceinline__ float update(float (&x)[3][V], int i, float kv) const {
        x[0][i] = fmaf(c, x[0][i], w * kv);
        x[1][i] = fmaf(st, kv, x[1][i]);
        x[2][i] += kv;
        return alpha * x[0][i] + beta * x[1][i] + gamma * x[2][i];
    }
    __device__ __forceinline__ float out_scale(float) const { return 1.f; }
};
}  // namespace wbstep

// The kernels: <T storage type, V state columns per thread, SLAB columns per block, THREADS, R rows per
// thread and pass>.  No dynamic shared memory.
//
// linear_step: z / z_out null without normalize.  Arrays: q, k (N, Dk); v, o (N, Dv); S, S_out (N, Dk, Dv);
// z, z_out (N, Dk).
template <typename T, int V, int SLAB, int THREADS, int R>
__global__ void __launch_bounds__(THREADS)
linear_step(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
            const float* __restrict__ S, const float* __restrict__ z, float* __restrict__ S_out,
            float* __restrict__ z_out, T* __restrict__ o, int Dk, int Dv, int fmap, float scale, float eps) {
    using namespace wbstep;
    const Place<V, SLAB, THREADS> at(Dv);
    const long long n = at.n, E = (long long)Dk * Dv;
    const bool normalize = z != nullptr;
    LinearRule<V> rule{{S + n * E}, {S_out + n * E}, normalize ? z + n * Dk : nullptr,
                       normalize ? z_out + n * Dk : nullptr, fmap, scale, eps};
    state_pass<T, V, SLAB, THREADS, R>(rule, at, q + n * Dk, k + n * Dk, v + n * Dv, o + n * Dv, Dk, Dv);
}

// decayed_step: g (N,) log decays.
template <typename T, int V, int SLAB, int THREADS, int R>
__global__ void __launch_bounds__(THREADS)
decayed_step(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
             const T* __restrict__ g, const float* __restrict__ S, float* __restrict__ S_out, T* __restrict__ o,
             int Dk, int Dv, float scale) {
    using namespace wbstep;
    const Place<V, SLAB, THREADS> at(Dv);
    const long long n = at.n, E = (long long)Dk * Dv;
    DecayedRule<T, V> rule{{}, {S + n * E}, {S_out + n * E}, g[n], scale, 0.f};
    state_pass<T, V, SLAB, THREADS, R>(rule, at, q + n * Dk, k + n * Dk, v + n * Dv, o + n * Dv, Dk, Dv);
}

// zeros_step: s (N,), gates (N, ng) with ng 2 or 3; F, G, H and their outputs (N, Dk, Dv); m, Es, P, cnt and
// their outputs (N,) (the state's m, E, P, n).
template <typename T, int V, int SLAB, int THREADS, int R>
__global__ void __launch_bounds__(THREADS)
zeros_step(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ s,
           const T* __restrict__ gates, int ng, const float* __restrict__ F, const float* __restrict__ G,
           const float* __restrict__ H, const float* __restrict__ m, const float* __restrict__ Es,
           const float* __restrict__ P, const float* __restrict__ cnt, float* __restrict__ F_out,
           float* __restrict__ G_out, float* __restrict__ H_out, float* __restrict__ m_out,
           float* __restrict__ E_out, float* __restrict__ P_out, float* __restrict__ cnt_out, T* __restrict__ o,
           int Dk, int Dv) {
    using namespace wbstep;
    const Place<V, SLAB, THREADS> at(Dv);
    const long long n = at.n, E = (long long)Dk * Dv;
    ZerosRule<T, V> rule;
    rule.in[0] = F + n * E;
    rule.in[1] = G + n * E;
    rule.in[2] = H + n * E;
    rule.out[0] = F_out + n * E;
    rule.out[1] = G_out + n * E;
    rule.out[2] = H_out + n * E;
    const T* gt = gates + n * ng;
    rule.s = s[n];
    rule.gt[0] = gt[0];
    rule.gt[1] = gt[1];
    rule.gt[2] = ng == 3 ? gt[2] : gt[1];
    rule.m0 = m[n];
    rule.E0 = Es[n];
    rule.P0 = P[n];
    rule.n0 = cnt[n];
    rule.ng = ng;
    const bool first = at.slab == 0 && threadIdx.x == 0;
    rule.head_out[0] = first ? m_out + n : nullptr;
    rule.head_out[1] = E_out + n;
    rule.head_out[2] = P_out + n;
    rule.head_out[3] = cnt_out + n;
    state_pass<T, V, SLAB, THREADS, R>(rule, at, q + n * Dk, k + n * Dk, v + n * Dv, o + n * Dv, Dk, Dv);
}
