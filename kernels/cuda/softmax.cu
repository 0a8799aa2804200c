// softmax.cu -- softmax attention, forward and backward, four versions (llm.c dev/cuda style: a plain
// one and numbered faster ones, each runnable through kernels/cupy/softmax.py).
//
// Math (per leading index n; workbench/reference/softmax.py has the derivation):
//   a_ti = scale q_t.k_i  (i <= t when causal),  p_ti = exp(a_ti - lse_t),  o_t = sum_i p_ti v_i
//   lse_t = log sum_i exp(a_ti)                       saved in float32 by every forward
//   D_t   = do_t . o_t                                (softmax Jacobian term)
//   dv_i  = sum_t p_ti do_t      dp_ti = do_t . v_i     ds_ti = p_ti (dp_ti - D_t)
//   dq_t  = scale sum_i ds_ti k_i                     dk_i  = scale sum_t ds_ti q_t
// Exponentials are base 2: s_ti = a_ti * log2(e), p = exp2(s - lse_t log2(e)), so the scale and log2(e)
// fold into one multiplier sl2 = scale * log2(e).  Online softmax keeps a running row max m and sum l:
//   m' = max(m, max_i s_i),  l' = l 2^(m - m') + sum_i 2^(s_i - m'),  acc' = acc 2^(m - m') + sum_i 2^(s_i - m') v_i
// Every accumulation is float32, whatever the storage type T (float, wb_half, wb_bf16).
//
// Layout: q, k (N, T, dk) and v, o, do (N, T, dv), contiguous row-major; lse, D (N, T) float32.
// dk and dv are runtime values; the tiled kernels take a compile-time bucket D >= max(dk, dv) and
// zero-fill the padding columns (and rows past T) when they load a tile, so the padding adds zeros
// to every dot product and is never written back.
//
//   0  naive_*   one warp per row (query row forward/dq, key row dk/dv); lanes split the head dims.
//   1  flash_*   FlashAttention-2 tiling on CUDA cores, float32 FMAs, tiles in shared memory.
//   2  mma_*     the same tiling on tensor cores: mma.sync m16n8k16 (f16 or bf16 in, f32 accumulate),
//                operands loaded with ldmatrix; P and dS go from accumulator to operand registers.
// Backward of 1 and 2: bwd_dot (D_t), then a kernel over key tiles (dk, dv) and one over query tiles
// (dq), both recomputing p from the saved lse; causal tiles above the diagonal are skipped by the
// loop bounds.  Grids are 1-D: block b handles tile (ntiles - 1 - b / N) of row n = b % N, so the
// longest causal tiles start first.
//   3  fa2_*     FlashAttention-2's schedule on tensor cores (f16/bf16, and f32 through 1x or 3x TF32):
//                cp.async-pipelined tiles, several m16 tiles per warp, masks on diagonal tiles only, and a
//                one-pass backward (per key block; dq added with float32 atomics).  Its own header below.
#include "mma.cuh"

// ============================================================================ 0. naive
#define NAIVE_MAXD 256
#define NAIVE_PER_LANE (NAIVE_MAXD / 32)     // head-dim elements per lane: d = lane + 32 j

template <typename T>
__device__ __forceinline__ void naive_load_row(float (&r)[NAIVE_PER_LANE], const T* p, int d_act, int lane,
                                               float mul) {
#pragma unroll
    for (int j = 0; j < NAIVE_PER_LANE; ++j) {
        int d = lane + 32 * j;
        r[j] = d < d_act ? to_f32(p[d]) * mul : 0.f;
    }
}

template <typename T>
__device__ __forceinline__ float naive_dot(const float (&r)[NAIVE_PER_LANE], const T* p, int d_act, int lane) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < NAIVE_PER_LANE; ++j) {
        int d = lane + 32 * j;
        if (d < d_act) s += r[j] * to_f32(p[d]);
    }
    return warp_sum(s);
}

template <typename T>
__device__ __forceinline__ void naive_axpy(float (&acc)[NAIVE_PER_LANE], float a, const T* p, int d_act, int lane) {
#pragma unroll
    for (int j = 0; j < NAIVE_PER_LANE; ++j) {
        int d = lane + 32 * j;
        if (d < d_act) acc[j] += a * to_f32(p[d]);
    }
}

// One warp per row: the global warp index w is the row.  For the (N, T) rows of the naive kernels, w = n T + t:
// NaiveRow holds w, the first row n T of its sequence and its position t.
__device__ __forceinline__ long long warp_row() { return ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; }
struct NaiveRow { long long w, nT; int t; };
__device__ __forceinline__ NaiveRow naive_row(int T_) {
    const long long w = warp_row();
    const int t = (int)(w % T_);
    return {w, w - t, t};
}

// o_w . do_w, every lane of the warp gets it (lanes split the dv columns, then a warp sum).
template <typename T>
__device__ __forceinline__ float row_dot(const T* o, const T* dout, long long w, int lane, int dv) {
    float s = 0.f;
    for (int d = lane; d < dv; d += 32) s += to_f32(o[w * dv + d]) * to_f32(dout[w * dv + d]);
    return warp_sum(s);
}

// D_w = o_w . do_w (lane 0 stores it).
template <typename T>
__device__ __forceinline__ void store_row_dot(float* Dbuf, const T* o, const T* dout, long long w, int lane, int dv) {
    const float s = row_dot(o, dout, w, lane, dv);
    if (lane == 0) Dbuf[w] = s;
}

// o_t, lse_t for row w = n T + t: online softmax over keys i < (causal ? t + 1 : T).
template <typename T>
__global__ void naive_fwd(const T* q, const T* k, const T* v, T* o, float* lse,
                          int N, int T_, int dk, int dv, float sl2, int causal) {
    const auto [w, nT, t] = naive_row(T_);
    const int lane = threadIdx.x & 31;
    if (w >= (long long)N * T_) return;
    const T* kn = k + nT * dk;
    const T* vn = v + nT * dv;
    float qr[NAIVE_PER_LANE], acc[NAIVE_PER_LANE];
    naive_load_row(qr, q + w * dk, dk, lane, sl2);          // q pre-scaled: s is in log2 units
#pragma unroll
    for (int j = 0; j < NAIVE_PER_LANE; ++j) acc[j] = 0.f;
    float m = -WB_INF, l = 0.f;
    int iend = causal ? t + 1 : T_;
    for (int i = 0; i < iend; ++i) {
        float s = naive_dot(qr, kn + (long long)i * dk, dk, lane);
        float mn = fmaxf(m, s);
        float base = mn == -WB_INF ? 0.f : mn;
        float corr = exp2f(m - base), p = exp2f(s - base);
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < NAIVE_PER_LANE; ++j) acc[j] *= corr;
        naive_axpy(acc, p, vn + (long long)i * dv, dv, lane);
        m = mn;
    }
    float inv = 1.f / l;
#pragma unroll
    for (int j = 0; j < NAIVE_PER_LANE; ++j) {
        int d = lane + 32 * j;
        if (d < dv) o[w * dv + d] = from_f32<T>(acc[j] * inv);
    }
    if (lane == 0) lse[w] = (m + log2f(l)) * WB_LN2;
}

// dq_t (and D_t = do_t . o_t, written to Dbuf for naive_bwd_dkdv): one warp per query row.
template <typename T>
__global__ void naive_bwd_dq(const T* q, const T* k, const T* v, const T* o, const float* lse, const T* dout,
                             T* dq, float* Dbuf, int N, int T_, int dk, int dv, float sl2, float scale,
                             int causal) {
    const auto [w, nT, t] = naive_row(T_);
    const int lane = threadIdx.x & 31;
    if (w >= (long long)N * T_) return;
    const T* kn = k + nT * dk;
    const T* vn = v + nT * dv;
    float qr[NAIVE_PER_LANE], dor[NAIVE_PER_LANE], acc[NAIVE_PER_LANE];
    naive_load_row(qr, q + w * dk, dk, lane, sl2);
    naive_load_row(dor, dout + w * dv, dv, lane, 1.f);
    float Dt = naive_dot(dor, o + w * dv, dv, lane);
    if (lane == 0) Dbuf[w] = Dt;
    float lse2 = lse[w] * WB_LOG2E;
#pragma unroll
    for (int j = 0; j < NAIVE_PER_LANE; ++j) acc[j] = 0.f;
    int iend = causal ? t + 1 : T_;
    for (int i = 0; i < iend; ++i) {
        float p = exp2f(naive_dot(qr, kn + (long long)i * dk, dk, lane) - lse2);
        float dp = naive_dot(dor, vn + (long long)i * dv, dv, lane);
        naive_axpy(acc, p * (dp - Dt), kn + (long long)i * dk, dk, lane);
    }
#pragma unroll
    for (int j = 0; j < NAIVE_PER_LANE; ++j) {
        int d = lane + 32 * j;
        if (d < dk) dq[w * dk + d] = from_f32<T>(acc[j] * scale);
    }
}

// dk_i, dv_i: one warp per key row i, over queries t >= i (causal) or all t.  Needs Dbuf.
template <typename T>
__global__ void naive_bwd_dkdv(const T* q, const T* k, const T* v, const float* lse, const float* Dbuf,
                               const T* dout, T* dk_, T* dv_, int N, int T_, int dk, int dv, float sl2,
                               float scale, int causal) {
    const auto [w, row0, i] = naive_row(T_);        // key row i; row0 = n T
    const int lane = threadIdx.x & 31;
    if (w >= (long long)N * T_) return;
    float kr[NAIVE_PER_LANE], vr[NAIVE_PER_LANE], gk[NAIVE_PER_LANE], gv[NAIVE_PER_LANE];
    naive_load_row(kr, k + w * dk, dk, lane, sl2);
    naive_load_row(vr, v + w * dv, dv, lane, 1.f);
#pragma unroll
    for (int j = 0; j < NAIVE_PER_LANE; ++j) gk[j] = gv[j] = 0.f;
    for (int t = causal ? i : 0; t < T_; ++t) {
        long long r = row0 + t;
        float p = exp2f(naive_dot(kr, q + r * dk, dk, lane) - lse[r] * WB_LOG2E);
        const T* dot_ = dout + r * dv;
        naive_axpy(gv, p, dot_, dv, lane);
        float dp = naive_dot(vr, dot_, dv, lane);
        naive_axpy(gk, p * (dp - Dbuf[r]), q + r * dk, dk, lane);
    }
#pragma unroll
    for (int j = 0; j < NAIVE_PER_LANE; ++j) {
        int d = lane + 32 * j;
        if (d < dk) dk_[w * dk + d] = from_f32<T>(gk[j] * scale);
        if (d < dv) dv_[w * dv + d] = from_f32<T>(gv[j]);
    }
}

// D_t = do_t . o_t for the tiled backwards: one warp per row.
template <typename T>
__global__ void bwd_dot(const T* o, const T* dout, float* Dbuf, long long rows, int dv) {
    const long long w = warp_row();
    const int lane = threadIdx.x & 31;
    if (w >= rows) return;
    store_row_dot(Dbuf, o, dout, w, lane, dv);
}

// ============================================================================ 1. flash (CUDA cores)
// 256 threads = 16 row groups x 16 column lanes: thread (r, c) = (tid / 16, tid % 16) owns tile rows
// r + 16 i (i < BR / 16) and tile columns c + 16 j.  Shared tiles are float32 [rows][D + 1]: the odd
// row stride makes both access patterns conflict-free (16 lanes walking rows of one column, or
// walking one row).  A row's 16 owners are one half-warp, so row reductions are 4 xor-shuffles.
#define FL_THREADS 256

// The block's tile in the 1-D grids of sections 1 to 3 (but fa2_bwd): block b handles tile ntiles - 1 - b / N of
// leading index n = b % N (the longest causal tiles start first).  row0: the tile's first row (of R); nT = n T,
// the first row of n's (T_, d) matrices.
struct BlockTile { int row0; long long nT; };
template <int R>
__device__ __forceinline__ BlockTile block_tile(int N, int T_) {
    const int ntiles = (T_ + R - 1) / R;
    const int n = blockIdx.x % N;
    return {(ntiles - 1 - (int)(blockIdx.x / N)) * R, (long long)n * T_};
}

// rows [row0, row0 + ROWS) of a (T_, d_act) matrix -> s[ROWS][D + 1] as float, times mul; zeros past
// T_ and past d_act.
template <typename T, int D, int ROWS>
__device__ __forceinline__ void fl_load(float* s, const T* g, int row0, int T_, int d_act, float mul) {
    for (int idx = threadIdx.x; idx < ROWS * D; idx += FL_THREADS) {
        int r = idx / D, d = idx % D, t = row0 + r;
        s[r * (D + 1) + d] = (t < T_ && d < d_act) ? to_f32(g[(long long)t * d_act + d]) * mul : 0.f;
    }
}

// max and sum over the 16 lanes of a half-warp (xor offsets < 16 stay inside it)
__device__ __forceinline__ float hw_max(float x) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ float hw_sum(float x) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Forward.  Block: BR query rows; loops over BC-key tiles.  smem: Q [BR][D+1] (pre-scaled by sl2),
// K, V [BC][D+1], P [BR][BC+1].
template <typename T, int D, int BR, int BC>
__global__ void __launch_bounds__(FL_THREADS) flash_fwd(const T* q, const T* k, const T* v, T* o, float* lse,
                                                        int N, int T_, int dk, int dv, float sl2, int causal) {
    constexpr int LD = D + 1, TM = BR / 16, TN = BC / 16, TD = D / 16;
    extern __shared__ float smem[];
    const auto [sQ, sK, sV, sP] = carve<float>(smem, BR * LD, BC * LD, BC * LD, BR * (BC + 1)).p;
    const auto [q0, nT] = block_tile<BR>(N, T_);
    const int r = threadIdx.x >> 4, c = threadIdx.x & 15;
    fl_load<T, D, BR>(sQ, q + nT * dk, q0, T_, dk, sl2);

    float m[TM], l[TM], acc1[1][TM][TD];
    float (&acc)[TM][TD] = acc1[0];
    rt_zero(acc1);
#pragma unroll
    for (int i = 0; i < TM; ++i) { m[i] = -WB_INF; l[i] = 0.f; }
    const int kend = causal ? min(T_, q0 + BR) : T_;
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads();                                   // previous tile fully consumed
        fl_load<T, D, BC>(sK, k + nT * dk, k0, T_, dk, 1.f);
        fl_load<T, D, BC>(sV, v + nT * dv, k0, T_, dv, 1.f);
        __syncthreads();
        float s1[1][TM][TN];                               // s = (sl2 q) . k
        float (&s)[TM][TN] = s1[0];
        rt_zero(s1);
        rt_mm<1, TM, TN, D, LD, LD, 1, 4>(s1, {sQ}, {sK}, r, c);
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int row = q0 + r + 16 * i;
            float mx = -WB_INF;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const int key = k0 + c + 16 * j;
                if (key >= T_ || (causal && key > row)) s[i][j] = -WB_INF;
                mx = fmaxf(mx, s[i][j]);
            }
            const float mn = fmaxf(m[i], hw_max(mx));
            const float base = mn == -WB_INF ? 0.f : mn;
            const float corr = exp2f(m[i] - base);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const float p = exp2f(s[i][j] - base);
                sum += p;
                sP[(r + 16 * i) * (BC + 1) + c + 16 * j] = p;
            }
            l[i] = l[i] * corr + hw_sum(sum);
            m[i] = mn;
#pragma unroll
            for (int j = 0; j < TD; ++j) acc[i][j] *= corr;
        }
        __syncthreads();                                   // P complete
        rt_mm<1, TM, TD, BC, BC + 1, 1, LD, 4>(acc1, {sP}, {sV}, r, c);
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int row = q0 + r + 16 * i;
        if (row >= T_) continue;
        const float inv = 1.f / l[i];
#pragma unroll
        for (int j = 0; j < TD; ++j) {
            const int d = c + 16 * j;
            if (d < dv) o[(nT + row) * dv + d] = from_f32<T>(acc[i][j] * inv);
        }
        if (c == 0) lse[nT + row] = (m[i] + log2f(l[i])) * WB_LN2;
    }
}

// dk, dv.  Block: BK key rows (thread rows = keys), loops over BQ-query tiles from the diagonal on.
// Transposed scores S^T[key][query]: p^T = exp2(sl2 k.q - lse2_q), dp^T = v.do, ds^T = p^T (dp^T - D_q);
// dv += p^T do, dk += scale ds^T q.  smem: K, V [BK][D+1], Q, dO [BQ][D+1], P^T, dS^T [BK][BQ+1],
// lse2 and D of the query tile [BQ].
template <typename T, int D, int BK, int BQ>
__global__ void __launch_bounds__(FL_THREADS) flash_bwd_dkdv(const T* q, const T* k, const T* v,
        const float* lse, const float* Dbuf, const T* dout, T* dk_, T* dv_, int N, int T_, int dk, int dv,
        float sl2, float scale, int causal) {
    constexpr int LD = D + 1, TM = BK / 16, TN = BQ / 16, TD = D / 16;
    extern __shared__ float smem[];
    const auto [sK, sV, sQ, sO, sP, sS, sL, sD] =
        carve<float>(smem, BK * LD, BK * LD, BQ * LD, BQ * LD, BK * (BQ + 1), BK * (BQ + 1), BQ, BQ).p;
    const auto [k0, nT] = block_tile<BK>(N, T_);
    const int r = threadIdx.x >> 4, c = threadIdx.x & 15;
    fl_load<T, D, BK>(sK, k + nT * dk, k0, T_, dk, sl2);
    fl_load<T, D, BK>(sV, v + nT * dv, k0, T_, dv, 1.f);
    float gvk[2][TM][TD];
    float (&gv)[TM][TD] = gvk[0];
    float (&gk)[TM][TD] = gvk[1];
    rt_zero(gvk);
    for (int q0 = causal ? (k0 / BQ) * BQ : 0; q0 < T_; q0 += BQ) {
        __syncthreads();
        fl_load<T, D, BQ>(sQ, q + nT * dk, q0, T_, dk, 1.f);
        fl_load<T, D, BQ>(sO, dout + nT * dv, q0, T_, dv, 1.f);
        for (int x = threadIdx.x; x < BQ; x += FL_THREADS) {
            const int t = q0 + x;
            sL[x] = t < T_ ? lse[nT + t] * WB_LOG2E : 0.f;
            sD[x] = t < T_ ? Dbuf[nT + t] : 0.f;
        }
        __syncthreads();
        float sdp[2][TM][TN];
        float (&s)[TM][TN] = sdp[0];
        float (&dp)[TM][TN] = sdp[1];
        rt_zero(sdp);
        rt_mm<2, TM, TN, D, LD, LD, 1, 2>(sdp, {sK, sV}, {sQ, sO}, r, c);
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int key = k0 + r + 16 * i;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const int x = c + 16 * j, t = q0 + x;
                const bool ok = t < T_ && key < T_ && (!causal || key <= t);
                const float p = ok ? exp2f(s[i][j] - sL[x]) : 0.f;
                sP[(r + 16 * i) * (BQ + 1) + x] = p;
                sS[(r + 16 * i) * (BQ + 1) + x] = p * (dp[i][j] - sD[x]);
            }
        }
        __syncthreads();
        rt_mm<2, TM, TD, BQ, BQ + 1, 1, LD, 2>(gvk, {sP, sS}, {sO, sQ}, r, c);
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int key = k0 + r + 16 * i;
        if (key >= T_) continue;
#pragma unroll
        for (int j = 0; j < TD; ++j) {
            const int d = c + 16 * j;
            if (d < dk) dk_[(nT + key) * dk + d] = from_f32<T>(gk[i][j] * scale);
            if (d < dv) dv_[(nT + key) * dv + d] = from_f32<T>(gv[i][j]);
        }
    }
}

// dq.  Block: BR query rows, loops over BC-key tiles up to the diagonal.  s = sl2 q.k, p = exp2(s - lse2),
// dp = do.v, ds = p (dp - D); dq += scale ds k.  smem: Q, dO [BR][D+1], K, V [BC][D+1], dS [BR][BC+1].
template <typename T, int D, int BR, int BC>
__global__ void __launch_bounds__(FL_THREADS) flash_bwd_dq(const T* q, const T* k, const T* v,
        const float* lse, const float* Dbuf, const T* dout, T* dq, int N, int T_, int dk, int dv, float sl2,
        float scale, int causal) {
    constexpr int LD = D + 1, TM = BR / 16, TN = BC / 16, TD = D / 16;
    extern __shared__ float smem[];
    const auto [sQ, sO, sK, sV, sS] = carve<float>(smem, BR * LD, BR * LD, BC * LD, BC * LD, BR * (BC + 1)).p;
    const auto [q0, nT] = block_tile<BR>(N, T_);
    const int r = threadIdx.x >> 4, c = threadIdx.x & 15;
    fl_load<T, D, BR>(sQ, q + nT * dk, q0, T_, dk, sl2);
    fl_load<T, D, BR>(sO, dout + nT * dv, q0, T_, dv, 1.f);
    float l2[TM], Dr[TM], g1[1][TM][TD];
    float (&g)[TM][TD] = g1[0];
    rt_zero(g1);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int t = q0 + r + 16 * i;
        l2[i] = t < T_ ? lse[nT + t] * WB_LOG2E : 0.f;
        Dr[i] = t < T_ ? Dbuf[nT + t] : 0.f;
    }
    const int kend = causal ? min(T_, q0 + BR) : T_;
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads();
        fl_load<T, D, BC>(sK, k + nT * dk, k0, T_, dk, 1.f);
        fl_load<T, D, BC>(sV, v + nT * dv, k0, T_, dv, 1.f);
        __syncthreads();
        float sdp[2][TM][TN];
        float (&s)[TM][TN] = sdp[0];
        float (&dp)[TM][TN] = sdp[1];
        rt_zero(sdp);
        rt_mm<2, TM, TN, D, LD, LD, 1, 2>(sdp, {sQ, sO}, {sK, sV}, r, c);
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int t = q0 + r + 16 * i;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const int key = k0 + c + 16 * j;
                const bool ok = t < T_ && key < T_ && (!causal || key <= t);
                const float p = ok ? exp2f(s[i][j] - l2[i]) : 0.f;
                sS[(r + 16 * i) * (BC + 1) + c + 16 * j] = p * (dp[i][j] - Dr[i]);
            }
        }
        __syncthreads();
        rt_mm<1, TM, TD, BC, BC + 1, 1, LD, 2>(g1, {sS}, {sK}, r, c);
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int t = q0 + r + 16 * i;
        if (t >= T_) continue;
#pragma unroll
        for (int j = 0; j < TD; ++j) {
            const int d = c + 16 * j;
            if (d < dk) dq[(nT + t) * dk + d] = from_f32<T>(g[i][j] * scale);
        }
    }
}

// ============================================================================ 2. mma (tensor cores)
// 128 threads = 4 warps; warp w owns 16 rows (16 w .. 16 w + 15) of the block's 64-row operand.  Shared
// tiles keep the storage type T in [rows][D + 8]: the 16-byte pad puts the 8 row addresses of each
// ldmatrix 8x8 load in different banks.  mma.sync m16n8k16 fragments (g = lane / 4, t = lane % 4):
//   A 16x16 (row-major): a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B 16x8  (k x n):     b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C 16x8  (float):     c0 c1 (g, 2t..2t+1)   c2 c3 (g+8, 2t..2t+1)
// so the C fragments of two adjacent 8-column tiles, packed to 16 bits, are the A fragment of a 16-wide
// k slice (P and dS never touch shared memory).  Row statistics of row g live in the 4 lanes sharing g.
#define MM_THREADS 128

// The fragment loads of kernels/cuda/mma.cuh with the row stride LDH as a template argument: A fragment of
// rows m0..m0+15, k slice k0..k0+15 of a [rows][LDH] tile; B fragments of n tiles n0 and n0 + 8 (b[0], b[1]
// serve n0; b[2], b[3] serve n0 + 8) for C += A B^T with B stored [n][k] (ld_bt) and for C += A B with B
// stored [k][n] (ld_b, a transposing load).
template <typename T, int LDH>
__device__ __forceinline__ void ld_a(unsigned (&a)[4], const T* s, int m0, int k0) {
    wbmma::load_a<T, false>(a, s, LDH, m0, k0);
}
template <typename T, int LDH>
__device__ __forceinline__ void ld_bt(unsigned (&b)[4], const T* s, int n0, int k0) {
    wbmma::load_b2<T, true>(b, s, LDH, k0, n0);
}
template <typename T, int LDH>
__device__ __forceinline__ void ld_b(unsigned (&b)[4], const T* s, int k0, int n0) {
    wbmma::load_b2<T, false>(b, s, LDH, k0, n0);
}
// C fragments of 16 x (2 NK 8) -> A fragments of NK 16-wide k slices.
// Two warp-level GEMMs in one k-loop, for this warp's 16 rows m0.. of A1 and A2 against the NB * 8 rows of
// B1 and B2 (read transposed, ld_bt): s = A1 B1^T and dp = A2 B2^T over K = 16 KD (both zeroed first).
// The backward kernels use it for the score tile and the dO.V^T tile side by side.
template <typename T, int LDH, int KD, int NB>
__device__ __forceinline__ void mma_two_abt(float (&s)[NB][4], float (&dp)[NB][4], const T* sA1, const T* sA2,
                                            const T* sB1, const T* sB2, int m0) {
    wbmma::zero_acc(s);
    wbmma::zero_acc(dp);
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
        unsigned a1[4], a2[4];
        ld_a<T, LDH>(a1, sA1, m0, 16 * kk);
        ld_a<T, LDH>(a2, sA2, m0, 16 * kk);
#pragma unroll
        for (int np = 0; np < NB / 2; ++np) {
            unsigned b[4];
            ld_bt<T, LDH>(b, sB1, 16 * np, 16 * kk);
            wbmma::mma<T>(s[2 * np], a1, b[0], b[1]);
            wbmma::mma<T>(s[2 * np + 1], a1, b[2], b[3]);
            ld_bt<T, LDH>(b, sB2, 16 * np, 16 * kk);
            wbmma::mma<T>(dp[2 * np], a2, b[0], b[1]);
            wbmma::mma<T>(dp[2 * np + 1], a2, b[2], b[3]);
        }
    }
}

template <typename T, int NK>
__device__ __forceinline__ void c_to_a(unsigned (&a)[NK][4], const float (&c)[2 * NK][4]) {
#pragma unroll
    for (int kk = 0; kk < NK; ++kk) {
        a[kk][0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);
        a[kk][1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);
        a[kk][2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
        a[kk][3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
    }
}

// rows [row0, row0 + ROWS) of a (T_, d_act) matrix of T -> s[ROWS][D + 8]; zeros past T_ and d_act.
// 16-byte copies when the rows are exactly D wide.
template <typename T, int D, int ROWS>
__device__ __forceinline__ void mm_load(T* s, const T* g, int row0, int T_, int d_act) {
    constexpr int LDH = D + 8;
    if (d_act == D) {
        constexpr int CH = D / 8;
        for (int idx = threadIdx.x; idx < ROWS * CH; idx += MM_THREADS) {
            const int r = idx / CH, ch = idx % CH, t = row0 + r;
            uint4 val = {0u, 0u, 0u, 0u};
            if (t < T_) val = *reinterpret_cast<const uint4*>(g + (long long)t * D + ch * 8);
            *reinterpret_cast<uint4*>(s + r * LDH + ch * 8) = val;
        }
    } else {
        for (int idx = threadIdx.x; idx < ROWS * D; idx += MM_THREADS) {
            const int r = idx / D, d = idx % D, t = row0 + r;
            T val;
            val.bits = 0;
            if (t < T_ && d < d_act) val = g[(long long)t * d_act + d];
            s[r * LDH + d] = val;
        }
    }
}

// Row h (0: g, 1: g + 8) of the lane's accumulators acc[j] (columns 8 j + 2 tq + e) times mul -> the global row
// orow, for the columns below d_act.
template <typename T, int ND>
__device__ __forceinline__ void mm_store_row(T* orow, const float (&acc)[ND][4], int h, int d_act, float mul) {
    const int tq = threadIdx.x & 3;
#pragma unroll
    for (int j = 0; j < ND; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int d = 8 * j + 2 * tq + e;
            if (d < d_act) orow[d] = from_f32<T>(acc[j][2 * h + e] * mul);
        }
}

// Online-softmax step of one m16 accumulator tile's two rows (h = 0: row g, h = 1: row g + 8).  mx[h]: this
// lane's max of the new scores (log2 units).  Reduces it over the row's 4 lanes, moves the running max m to
// m' = max(m, mx), rescales the per-lane partial sums l and the output accumulators acc by 2^(m - m'), and
// returns the exponent base (m', or 0 while the row has seen only -inf) for p = 2^(s - base).
template <int ND>
__device__ __forceinline__ void mma_rescale(float (&mx)[2], float (&m)[2], float (&l)[2], float (&acc)[ND][4],
                                            float (&base)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        const float mn = fmaxf(m[h], mx[h]);
        base[h] = mn == -WB_INF ? 0.f : mn;
        const float corr = exp2f(m[h] - base[h]);
        l[h] *= corr;                       // per-lane partial sums; reduced once at the end
        m[h] = mn;
#pragma unroll
        for (int j = 0; j < ND; ++j) { acc[j][2 * h] *= corr; acc[j][2 * h + 1] *= corr; }
    }
}

// Forward: block = 64 query rows, 64-key tiles.  smem: Q, K, V [64][D+8] of T.
template <typename T, int D>
__global__ void __launch_bounds__(MM_THREADS) mma_fwd(const T* q, const T* k, const T* v, T* o, float* lse,
                                                      int N, int T_, int dk, int dv, float sl2, int causal) {
    constexpr int BR = 64, BC = 64, LDH = D + 8, KD = D / 16, NC = BC / 8, ND = D / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const auto [sQ, sK, sV] = carve<T>(smem_raw, BR * LDH, BC * LDH, BC * LDH).p;
    const auto [q0, nT] = block_tile<BR>(N, T_);
    const int w = threadIdx.x >> 5, L = threadIdx.x & 31, g = L >> 2, tq = L & 3;
    mm_load<T, D, BR>(sQ, q + nT * dk, q0, T_, dk);
    __syncthreads();
    unsigned qa[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) ld_a<T, LDH>(qa[kk], sQ, 16 * w, 16 * kk);
    float m[2] = {-WB_INF, -WB_INF}, l[2] = {0.f, 0.f}, acc[ND][4];
    wbmma::zero_acc(acc);
    const int row[2] = {q0 + 16 * w + g, q0 + 16 * w + g + 8};
    const int kend = causal ? min(T_, q0 + BR) : T_;
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads();
        mm_load<T, D, BC>(sK, k + nT * dk, k0, T_, dk);
        mm_load<T, D, BC>(sV, v + nT * dv, k0, T_, dv);
        __syncthreads();
        float s[NC][4];
        wbmma::zero_acc(s);
        wbmma::gemm_rs<T, 1, NC, KD, true>(s, qa, sK, LDH, 0, 0, KD);           // s = Q K^T
        float mx[2] = {-WB_INF, -WB_INF};
#pragma unroll
        for (int j = 0; j < NC; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + 8 * j + 2 * tq + (e & 1);
                float x = s[j][e] * sl2;
                if (key >= T_ || (causal && key > row[e >> 1])) x = -WB_INF;
                s[j][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float base[2];
        mma_rescale<ND>(mx, m, l, acc, base);
#pragma unroll
        for (int j = 0; j < NC; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = exp2f(s[j][e] - base[e >> 1]);
                s[j][e] = p;
                l[e >> 1] += p;
            }
        unsigned pa[BC / 16][4];
        c_to_a<T, BC / 16>(pa, s);
        wbmma::gemm_rs<T, 1, ND, BC / 16, false>(acc, pa, sV, LDH, 0, 0, BC / 16);   // acc += P V
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
        if (row[h] >= T_) continue;
        mm_store_row<T, ND>(o + (nT + row[h]) * dv, acc, h, dv, 1.f / l[h]);
        if (tq == 0) lse[nT + row[h]] = (m[h] + log2f(l[h])) * WB_LN2;
    }
}

// Packed sequences (cu_seqlens): tseq (T_,) the sequence of every position and cu its offsets, or nullptr (one
// sequence).  A query attends to the keys of its own sequence only: FaSeq is the range [a, b) of the sequence
// of position t (clamped into [0, T_); [0, T_) when not packed).
struct FaSeq { int a, b; };
__device__ __forceinline__ FaSeq fa_seq(const int* tseq, const int* cu, int t, int T_) {
    if (!tseq) return {0, T_};
    const int j = tseq[min(max(t, 0), T_ - 1)];
    return {cu[j], cu[j + 1]};
}

// The keys that the query rows [q0, q0 + BR) visit: from the first row's sequence start to the diagonal (causal) or
// to the last row's sequence end.
__device__ __forceinline__ FaSeq fa_block_keys(const int* tseq, const int* cu, int q0, int BR, int T_, int causal) {
    return {fa_seq(tseq, cu, q0, T_).a, causal ? min(T_, q0 + BR) : fa_seq(tseq, cu, min(q0 + BR, T_) - 1, T_).b};
}

// [a, b): the positions every row of [r0, r0 + n) shares its sequence with (the last row's sequence start to the
// first row's sequence end): a tile inside it needs no sequence mask.
__device__ __forceinline__ FaSeq fa_shared_range(const int* tseq, const int* cu, int r0, int n, int T_) {
    return {fa_seq(tseq, cu, min(r0 + n, T_) - 1, T_).a, fa_seq(tseq, cu, r0, T_).b};
}

// dk, dv: block = 64 keys (warp w: keys 16 w ..), BQ-query tiles from the diagonal (or, packed, the first key's
// sequence start) to the last key's sequence end.
// S^T = K Q^T and dP^T = V dO^T (A from K, V in smem; B = Q, dO stored [query][d]); P^T, dS^T are
// the A operands of dV += P^T dO and dK += dS^T Q (B = dO, Q stored [query][d], transposing load).
template <typename T, int D, int BQ>
__global__ void __launch_bounds__(MM_THREADS) mma_bwd_dkdv(const T* q, const T* k, const T* v,
        const float* lse, const float* Dbuf, const T* dout, T* dk_, T* dv_, int N, int T_, int dk, int dv,
        float sl2, float scale, int causal, const int* tseq, const int* cu) {
    constexpr int BK = 64, LDH = D + 8, KD = D / 16, NQ = BQ / 8, ND = D / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const auto [sK, sV, sQ, sO] = carve<T>(smem_raw, BK * LDH, BK * LDH, BQ * LDH, BQ * LDH).p;
    const auto [sL, sD] = carve<float>(sO + BQ * LDH, BQ, BQ).p;
    const auto [k0, nT] = block_tile<BK>(N, T_);
    const int w = threadIdx.x >> 5, L = threadIdx.x & 31, g = L >> 2, tq = L & 3;
    mm_load<T, D, BK>(sK, k + nT * dk, k0, T_, dk);
    mm_load<T, D, BK>(sV, v + nT * dv, k0, T_, dv);
    float gk[ND][4], gv[ND][4];
    wbmma::zero_acc(gk);
    wbmma::zero_acc(gv);
    const int key[2] = {k0 + 16 * w + g, k0 + 16 * w + g + 8};
    const FaSeq ks[2] = {fa_seq(tseq, cu, key[0], T_), fa_seq(tseq, cu, key[1], T_)};
    const int qbeg = causal ? k0 : fa_seq(tseq, cu, k0, T_).a, qend = fa_seq(tseq, cu, min(k0 + BK, T_) - 1, T_).b;
    for (int q0 = (qbeg / BQ) * BQ; q0 < qend; q0 += BQ) {
        __syncthreads();
        mm_load<T, D, BQ>(sQ, q + nT * dk, q0, T_, dk);
        mm_load<T, D, BQ>(sO, dout + nT * dv, q0, T_, dv);
        for (int x = threadIdx.x; x < BQ; x += MM_THREADS) {
            const int t = q0 + x;
            sL[x] = t < T_ ? lse[nT + t] * WB_LOG2E : 0.f;
            sD[x] = t < T_ ? Dbuf[nT + t] : 0.f;
        }
        __syncthreads();
        float s[NQ][4], dp[NQ][4];
        mma_two_abt<T, LDH, KD, NQ>(s, dp, sK, sV, sQ, sO, 16 * w);      // s^T = K Q^T, dp^T = V dO^T
#pragma unroll
        for (int j = 0; j < NQ; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int x = 8 * j + 2 * tq + (e & 1), t = q0 + x, kr = key[e >> 1];
                const bool ok = t < ks[e >> 1].b && t >= ks[e >> 1].a && kr < T_ && (!causal || kr <= t);
                const float p = ok ? exp2f(s[j][e] * sl2 - sL[x]) : 0.f;
                s[j][e] = p;
                dp[j][e] = p * (dp[j][e] - sD[x]);
            }
        unsigned pa[BQ / 16][4], da[BQ / 16][4];
        c_to_a<T, BQ / 16>(pa, s);
        c_to_a<T, BQ / 16>(da, dp);
        wbmma::gemm_rs<T, 1, ND, BQ / 16, false>(gv, pa, sO, LDH, 0, 0, BQ / 16);    // dV += P^T dO
        wbmma::gemm_rs<T, 1, ND, BQ / 16, false>(gk, da, sQ, LDH, 0, 0, BQ / 16);    // dK += dS^T Q
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (key[h] >= T_) continue;
        mm_store_row<T, ND>(dk_ + (nT + key[h]) * dk, gk, h, dk, scale);
        mm_store_row<T, ND>(dv_ + (nT + key[h]) * dv, gv, h, dv, 1.f);
    }
}

// dq: block = 64 queries (warp w: rows 16 w ..), BC-key tiles from the first row's sequence start up to the
// diagonal (or the last row's sequence end).  S = Q K^T,
// dP = dO V^T (B = K, V stored [key][d]); dS is the A operand of dQ += dS K (B = K, transposing load).
template <typename T, int D, int BC>
__global__ void __launch_bounds__(MM_THREADS) mma_bwd_dq(const T* q, const T* k, const T* v,
        const float* lse, const float* Dbuf, const T* dout, T* dq, int N, int T_, int dk, int dv, float sl2,
        float scale, int causal, const int* tseq, const int* cu) {
    constexpr int BR = 64, LDH = D + 8, KD = D / 16, NC = BC / 8, ND = D / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const auto [sQ, sO, sK, sV] = carve<T>(smem_raw, BR * LDH, BR * LDH, BC * LDH, BC * LDH).p;
    const auto [q0, nT] = block_tile<BR>(N, T_);
    const int w = threadIdx.x >> 5, L = threadIdx.x & 31, g = L >> 2, tq = L & 3;
    mm_load<T, D, BR>(sQ, q + nT * dk, q0, T_, dk);
    mm_load<T, D, BR>(sO, dout + nT * dv, q0, T_, dv);
    const int row[2] = {q0 + 16 * w + g, q0 + 16 * w + g + 8};
    float l2[2], Dr[2], gq[ND][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l2[h] = row[h] < T_ ? lse[nT + row[h]] * WB_LOG2E : 0.f;
        Dr[h] = row[h] < T_ ? Dbuf[nT + row[h]] : 0.f;
    }
    wbmma::zero_acc(gq);
    const FaSeq rs[2] = {fa_seq(tseq, cu, row[0], T_), fa_seq(tseq, cu, row[1], T_)};
    const auto [kbeg, kend] = fa_block_keys(tseq, cu, q0, BR, T_, causal);
    for (int k0 = (kbeg / BC) * BC; k0 < kend; k0 += BC) {
        __syncthreads();
        mm_load<T, D, BC>(sK, k + nT * dk, k0, T_, dk);
        mm_load<T, D, BC>(sV, v + nT * dv, k0, T_, dv);
        __syncthreads();
        float s[NC][4], dp[NC][4];
        mma_two_abt<T, LDH, KD, NC>(s, dp, sQ, sO, sK, sV, 16 * w);      // s = Q K^T, dp = dO V^T
#pragma unroll
        for (int j = 0; j < NC; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int kr = k0 + 8 * j + 2 * tq + (e & 1), h = e >> 1;
                const bool ok = row[h] < T_ && kr < rs[h].b && kr >= rs[h].a && (!causal || kr <= row[h]);
                const float p = ok ? exp2f(s[j][e] * sl2 - l2[h]) : 0.f;
                dp[j][e] = p * (dp[j][e] - Dr[h]);
            }
        unsigned da[BC / 16][4];
        c_to_a<T, BC / 16>(da, dp);
        wbmma::gemm_rs<T, 1, ND, BC / 16, false>(gq, da, sK, LDH, 0, 0, BC / 16);    // dQ += dS K
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (row[h] >= T_) continue;
        mm_store_row<T, ND>(dq + (nT + row[h]) * dk, gq, h, dk, scale);
    }
}

// ============================================================================ 3. fa2 (pipelined tensor cores)
// FlashAttention-2's schedule on the mma.sync tensor cores, for float16/bfloat16 (m16n8k16, ldmatrix operands,
// the helpers of section 2) and for float32 through TF32 (m16n8k8; 1xTF32, or 3xTF32 for float32 accuracy).
// One kernel template per pass, over an operand policy P (fa_h<T> or fa_tf<SPLIT>, below), the head-dim bucket
// D and the tiling.  4 warps (FA_THREADS) per block.
//
// Forward fa2_fwd<P, D, MT, QREG, BC>: block = 64 MT query rows, warp w owns rows 16 MT w .. (MT m16 tiles, so
// each B fragment feeds MT mma), BC-key tiles.  K and V have one shared buffer each and alternate with the compute
// (cp.async, zero-filled past T and past the head dim):
//     wait; sync; issue V_j;      S = Q K_j^T        (V_j lands meanwhile)
//     online softmax (mask only on tiles that cross the diagonal or T: a warp-uniform branch)
//     wait; sync; issue K_{j+1};  O += P V_j         (K_{j+1} lands meanwhile)
// Q's fragments stay in registers (QREG) or are read from shared memory per tile (large D); P goes from the S
// accumulators straight into the A operand of P V (never touches shared memory).  Saves lse (float32, natural
// log) as every forward here.
//
// Backward fa2_bwd<P, D, BQ, KVREG, DIRECT>: one pass per block of 64 keys (warp w owns keys 16 w ..), looping over the
// query tiles (BQ rows) that see those keys (from the diagonal on when causal).  With s = sl2 q.k (log2 units),
// p_ti = 2^(s_ti - lse_t log2 e) and D_t = do_t . o_t (pre-kernel fa2_bwd_pre):
//     dv_i = sum_t p_ti do_t                         (P^T dO)
//     dp_ti = do_t . v_i,  ds_ti = p_ti (dp_ti - D_t)
//     dk_i = scale sum_t ds_ti q_t                   (dS^T Q)
//     dq_t = scale sum_i ds_ti k_i                   (dS K: this block's share, added atomically)
// by the chain rule: o_t = sum_i p_ti v_i with p_t = softmax(a_t), so dp_ti = do_t.v_i and
// da_ti = p_ti (dp_ti - sum_j p_tj dp_tj) = p_ti (dp_ti - do_t.o_t); then a_ti = scale q_t.k_i gives dq, dk.
// Per query tile, with S^T and dP^T computed ONCE (5 products of 2 BQ 64 D FLOPs instead of section 2's 7):
//     wait; sync; issue Q_{i+1} (second Q buffer)
//     S^T = K Q_i^T, dP^T = V dO_i^T                 (A = K, V: registers when KVREG; B = Q_i, dO_i)
//     P^T, dS^T in registers; dS^T also to shared memory (sS, stored [query][key])
//     dV += P^T dO_i, dK += dS^T Q_i                  (A = the S^T / dP^T accumulators, register to register)
//     sync; issue dO_{i+1}, lse_{i+1}, D_{i+1}
//     dQ_i (BQ x D, split over the 4 warps) = dS K: added into a float32 buffer with red.global.add
// dK, dV are written once at the end (dK scaled); fa2_dq_post scales and casts the float32 dQ buffer (float16 /
// bfloat16; a float32 dq is that buffer itself, zeroed by fa2_bwd_pre, and the adds are scaled).  DIRECT (the host
// launches it when T_ <= BK: one key block per n, so no other block adds into n's dq): D_t is formed in the block
// (fa_load_D, fa2_bwd_pre's sums) and the scaled dQ tiles are stored to dq_ -- one launch, no pre / post kernels,
// no float32 buffer (Dbuf, dqacc unused); o is read only then.  The
// atomic adds make dq's last float32 bits depend on the order blocks finish (cupy:fa2_det keeps the
// deterministic two-kernel backward of section 2 for float16/bfloat16).  fa2_bwd_one (below) is the backward in one
// launch with query-tile blocks for dq beside the key blocks (cupy:fa2_one, a measured rung: 7 products per pair).
#define FA_THREADS 128

using wbmma::cp_async16;
using wbmma::cp_async4;
using wbmma::cp_async_commit;
using wbmma::cp_async_wait_all;

// rows [row0, row0 + ROWS) of a (T_, d_act) row-major matrix -> s[ROWS][LD] (its first D columns); zeros past T_
// and past d_act.  Rows made of whole 16-byte chunks go through cp.async (src-size 0 zero-fills); other head
// dims fall back to plain loads and stores (visible, like the async copies after their wait, after the next
// __syncthreads).  Global rows must be 16-byte aligned (the host guarantees a 16-byte aligned base).
template <typename T, int D, int LD, int ROWS>
__device__ __forceinline__ void fa_load(T* s, const T* g, int row0, int T_, int d_act) {
    constexpr int E = 16 / (int)sizeof(T), CH = D / E, IT = (ROWS * CH + FA_THREADS - 1) / FA_THREADS;
    if (d_act % E == 0) {
        const int chact = d_act / E;
#pragma unroll
        for (int it = 0; it < IT; ++it) {
            const int idx = threadIdx.x + it * FA_THREADS;
            if (ROWS * CH % FA_THREADS != 0 && idx >= ROWS * CH) break;
            const int r = idx / CH, ch = idx % CH, t = row0 + r;
            const bool ok = t < T_ && ch < chact;
            cp_async16(s + r * LD + ch * E, ok ? g + (long long)t * d_act + ch * E : g, ok ? 16 : 0);
        }
    } else {
        for (int idx = threadIdx.x; idx < ROWS * D; idx += FA_THREADS) {
            const int r = idx / D, d = idx % D, t = row0 + r;
            s[r * LD + d] = (t < T_ && d < d_act) ? g[(long long)t * d_act + d] : from_f32<T>(0.f);
        }
    }
}

// ROWS float32 values g[row0 ..] -> s (zeros past T_).
template <int ROWS>
__device__ __forceinline__ void fa_load_vec(float* s, const float* g, int row0, int T_) {
    for (int x = threadIdx.x; x < ROWS; x += FA_THREADS) {
        const bool ok = row0 + x < T_;
        cp_async4(s + x, ok ? g + row0 + x : g, ok ? 4 : 0);
    }
}

// D_t of rows [row0, row0 + ROWS) -> s: read from Dbuf (fa2_bwd_pre's, as fa_load_vec: visible after the cp.async
// wait), or, when OWN, formed here as o_t . do_t (one warp per row, fa2_bwd_pre's sum order; plain stores,
// visible after the next __syncthreads); zeros past T_.
template <bool OWN, typename T, int ROWS>
__device__ __forceinline__ void fa_load_D(float* s, const float* Dbuf, const T* o, const T* dout, int row0, int T_,
                                          int dv) {
    if constexpr (!OWN) {
        fa_load_vec<ROWS>(s, Dbuf, row0, T_);
        return;
    }
    constexpr int W = FA_THREADS / 32;
    static_assert(ROWS % W == 0, "query tiles of whole warps' rows");
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < ROWS / W; ++r) {                        // unrolled: the rows' loads in flight together
        const int x = (threadIdx.x >> 5) + W * r;
        const float d = row0 + x < T_ ? row_dot(o, dout, row0 + x, lane, dv) : 0.f;
        if (lane == 0) s[x] = d;
    }
}

// row[d], row[d + 1] = a, b for the columns below dv (one 4- or 8-byte store when dv is even).
template <typename T>
__device__ __forceinline__ void fa_store2(T* row, int d, int dv, float a, float b) {
    if ((dv & 1) == 0 && d + 1 < dv) {
        if constexpr (sizeof(T) == 4) {
            float2 x;
            x.x = a;
            x.y = b;
            *reinterpret_cast<float2*>(row + d) = x;
        } else {
            *reinterpret_cast<unsigned*>(row + d) = pack2<T>(a, b);
        }
        return;
    }
    if (d < dv) row[d] = from_f32<T>(a);
    if (d + 1 < dv) row[d + 1] = from_f32<T>(b);
}

// row[d] += a, row[d + 1] += b (float32, global, relaxed atomics) for the columns below dk.
__device__ __forceinline__ void fa_red2(float* row, int d, int dk, float a, float b) {
#if __CUDA_ARCH__ >= 900
    if ((dk & 1) == 0 && d + 1 < dk) {
        asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(row + d), "f"(a), "f"(b) : "memory");
        return;
    }
#endif
    if (d < dk) asm volatile("red.global.add.f32 [%0], %1;" ::"l"(row + d), "f"(a) : "memory");
    if (d + 1 < dk) asm volatile("red.global.add.f32 [%0], %1;" ::"l"(row + d + 1), "f"(b) : "memory");
}

// ---------------------------------------------------------------------------- operand policies
// Both expose: T (storage type of the shared tiles), KS (the k extent of one mma), PAD_R / PAD_C / PAD_X (row
// padding of tiles read along rows by load_a/load_bt, along columns by load_b, or both), fragment types A
// (16 x KS) and B (KS x 8), and
//   load_a<LD>(a, s, m0, k0)        A = s[m0 .. m0+15][k0 .. k0+KS-1]              (s stored [m][k])
//   load_bt<LD>(b0, b1, s, n0, k0)  B = s[n][k0 ..]^T for n tiles n0 and n0 + 8    (s stored [n][k])
//   load_b<LD>(b0, b1, s, k0, n0)   B = s[k0 ..][n] for n tiles n0 and n0 + 8      (s stored [k][n])
//   mma(c, a, b)                    c (16 x 8 float32 accumulator) += A B
//   c_to_a(a, c0, c1)               A fragment from the accumulators of the KS / 8 adjacent 8-column tiles
//                                   c0 (, c1): P and dS go register to register into the next product.
// Within one product A and B agree on which physical k each register holds; the tf32 policy uses that freedom.
template <typename TT>
struct fa_h {                               // float16 / bfloat16: m16n8k16, ldmatrix (section 2's helpers)
    using T = TT;
    static constexpr int KS = 16, PAD_R = 8, PAD_C = 8, PAD_X = 8;
    struct A { unsigned x[4]; };
    struct B { unsigned x[2]; };
    template <int LD>
    static __device__ __forceinline__ void load_a(A& a, const T* s, int m0, int k0) { ld_a<T, LD>(a.x, s, m0, k0); }
    template <int LD>
    static __device__ __forceinline__ void load_bt(B& b0, B& b1, const T* s, int n0, int k0) {
        unsigned r[4];
        ld_bt<T, LD>(r, s, n0, k0);
        b0.x[0] = r[0]; b0.x[1] = r[1]; b1.x[0] = r[2]; b1.x[1] = r[3];
    }
    template <int LD>
    static __device__ __forceinline__ void load_b(B& b0, B& b1, const T* s, int k0, int n0) {
        unsigned r[4];
        ld_b<T, LD>(r, s, k0, n0);
        b0.x[0] = r[0]; b0.x[1] = r[1]; b1.x[0] = r[2]; b1.x[1] = r[3];
    }
    static __device__ __forceinline__ void mma(float (&c)[4], const A& a, const B& b) {
        wbmma::mma<T>(c, a.x, b.x[0], b.x[1]);
    }
    static __device__ __forceinline__ void c_to_a(A& a, const float (&c0)[4], const float (&c1)[4]) {
        a.x[0] = pack2<T>(c0[0], c0[1]);
        a.x[1] = pack2<T>(c0[2], c0[3]);
        a.x[2] = pack2<T>(c1[0], c1[1]);
        a.x[3] = pack2<T>(c1[2], c1[3]);
    }
};

// float32 through TF32 tensor cores, mma.sync m16n8k8 (g = lane / 4, t = lane % 4; PTX ISA fragment layout):
//   A 16x8: a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)     B 8x8: b0 (k t, n g)  b1 (k t+4, n g)
//   C 16x8: c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)  (as for m16n8k16)
// 32-bit operands have no ldmatrix.trans, so fragments are read with plain shared loads, and every fragment
// here maps the mma's k index t to physical column 2t and t+4 to 2t+1 (a permutation of the 8 k values, the
// same in A and B, so the product is unchanged).  Then an accumulator tile IS an A fragment (a0..a3 = c0, c2,
// c1, c3) and row-wise fragments are 8-byte loads: (g, 2t), (g, 2t+1) adjacent.  Bank-conflict free with
// row strides = 8 (mod 32) words for the row-wise loads (load_a, load_bt) and = 4 (mod 32) for load_b.
// SPLIT = 3: x = hi + lo with hi = tf32_rna(x), lo = tf32_rna(x - hi); a.b ~ lo_a hi_b + hi_a lo_b + hi_a hi_b
// (the dropped lo.lo term is ~2^-22 relative: float32 accuracy).  SPLIT = 1: hi only (TF32 accuracy, ~1e-3).
template <int SPLIT>
struct fa_tf {
    using T = float;
    static constexpr int KS = 8, PAD_R = 8, PAD_C = 4, PAD_X = 4;
    struct A { unsigned h[4], l[4]; };
    struct B { unsigned h[2], l[2]; };
    static __device__ __forceinline__ void cvt(unsigned& h, unsigned& l, float x) {
        asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(h) : "f"(x));
        if constexpr (SPLIT == 3) {
            const float r = x - __uint_as_float(h);
            asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(l) : "f"(r));
        } else {
            l = 0u;
        }
    }
    template <int LD>
    static __device__ __forceinline__ void load_bt(B& b0, B& b1, const float* s, int n0, int k0) {
        const int L = threadIdx.x & 31, g = L >> 2, t = L & 3;
        const float2 x = *reinterpret_cast<const float2*>(s + (n0 + g) * LD + k0 + 2 * t);
        const float2 y = *reinterpret_cast<const float2*>(s + (n0 + 8 + g) * LD + k0 + 2 * t);
        cvt(b0.h[0], b0.l[0], x.x);
        cvt(b0.h[1], b0.l[1], x.y);
        cvt(b1.h[0], b1.l[0], y.x);
        cvt(b1.h[1], b1.l[1], y.y);
    }
    // the same two 8-byte loads as load_bt (rows m0 + g and m0 + 8 + g, columns k0 + 2t, 2t + 1), as an A
    // fragment: a0 (g, 2t), a1 (g+8, 2t), a2 (g, 2t+1), a3 (g+8, 2t+1)
    template <int LD>
    static __device__ __forceinline__ void load_a(A& a, const float* s, int m0, int k0) {
        B r0, r1;
        load_bt<LD>(r0, r1, s, m0, k0);
        a.h[0] = r0.h[0]; a.h[1] = r1.h[0]; a.h[2] = r0.h[1]; a.h[3] = r1.h[1];
        a.l[0] = r0.l[0]; a.l[1] = r1.l[0]; a.l[2] = r0.l[1]; a.l[3] = r1.l[1];
    }
    template <int LD>
    static __device__ __forceinline__ void load_b(B& b0, B& b1, const float* s, int k0, int n0) {
        const int L = threadIdx.x & 31, g = L >> 2, t = L & 3;
        const float* p = s + (k0 + 2 * t) * LD + n0 + g;
        cvt(b0.h[0], b0.l[0], p[0]);
        cvt(b0.h[1], b0.l[1], p[LD]);
        cvt(b1.h[0], b1.l[0], p[8]);
        cvt(b1.h[1], b1.l[1], p[LD + 8]);
    }
    static __device__ __forceinline__ void mma1(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        wbmma::mma_tf32(c, a, b[0], b[1]);
    }
    static __device__ __forceinline__ void mma(float (&c)[4], const A& a, const B& b) {
        if constexpr (SPLIT == 3) {               // small terms first
            mma1(c, a.l, b.h);
            mma1(c, a.h, b.l);
        }
        mma1(c, a.h, b.h);
    }
    static __device__ __forceinline__ void c_to_a(A& a, const float (&c0)[4], const float (&)[4]) {
        cvt(a.h[0], a.l[0], c0[0]);
        cvt(a.h[1], a.l[1], c0[2]);
        cvt(a.h[2], a.l[2], c0[1]);
        cvt(a.h[3], a.l[3], c0[3]);
    }
};

// ---------------------------------------------------------------------------- forward
// One key tile of the online softmax for a warp's MT m16 tiles: s (raw q.k) -> p = 2^(sl2 s - m'), rescales
// l and acc by 2^(m - m').  Row of (mt, h) = row_g + 16 mt + 8 h; key of (j, e) = key_t + 8 j + (e & 1).
// MASK: -inf outside the row's sequence rs (so past T_) and above the diagonal (only tiles that cross them
// take this branch).  Row sums l are
// per-lane partials (the 4 lanes of a row are reduced once, at the end).
template <int MT, int NC, int ND, bool MASK>
__device__ __forceinline__ void fa_softmax(float (&s)[MT][NC][4], float (&m)[MT][2], float (&l)[MT][2],
                                           float (&acc)[MT][ND][4], int row_g, int key_t, const FaSeq (&rs)[MT][2],
                                           int causal, float sl2) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float mx[2] = {-WB_INF, -WB_INF};
#pragma unroll
        for (int j = 0; j < NC; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = s[mt][j][e] * sl2;
                if (MASK) {
                    const int key = key_t + 8 * j + (e & 1), row = row_g + 16 * mt + 8 * (e >> 1);
                    const FaSeq& r = rs[mt][e >> 1];
                    if (key < r.a || key >= r.b || (causal && key > row)) x = -WB_INF;
                }
                s[mt][j][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float base[2];
        mma_rescale<ND>(mx, m[mt], l[mt], acc[mt], base);
#pragma unroll
        for (int j = 0; j < NC; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = exp2f(s[mt][j][e] - base[e >> 1]);
                s[mt][j][e] = p;
                l[mt][e >> 1] += p;
            }
    }
}

template <class P, int D, int MT, bool QREG, int BC>
__global__ void __launch_bounds__(FA_THREADS) fa2_fwd(const typename P::T* q, const typename P::T* k,
        const typename P::T* v, typename P::T* o, float* lse, int N, int T_, int dk, int dv, float sl2,
        int causal, const int* tseq, const int* cu) {
    using T = typename P::T;
    constexpr int BR = 64 * MT, LDQ = D + P::PAD_R, LDK = D + P::PAD_R, LDV = D + P::PAD_C;
    constexpr int KD = D / P::KS, NC = BC / 8, ND = D / 8, KC = BC / P::KS, CW = P::KS / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const auto [sQ, sK, sV] = carve<T>(smem_raw, BR * LDQ, BC * LDK, BC * LDV).p;
    const auto [q0, nT] = block_tile<BR>(N, T_);
    const int w = threadIdx.x >> 5, L = threadIdx.x & 31, g = L >> 2, tq = L & 3;
    const int r0 = q0 + 16 * MT * w;                            // first row of this warp
    const T* kn = k + nT * dk;
    const T* vn = v + nT * dv;
    // keys of the block: from its first row's sequence start to the diagonal (causal) or its last row's
    // sequence end; the warp's tiles need no mask inside [wlo, whi) (every row's sequence holds it)
    const auto [kbeg, kend] = fa_block_keys(tseq, cu, q0, BR, T_, causal);
    const auto [wlo, whi] = fa_shared_range(tseq, cu, r0, 16 * MT, T_);
    FaSeq rs[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) rs[mt][h] = fa_seq(tseq, cu, r0 + g + 16 * mt + 8 * h, T_);
    const int j0 = kbeg / BC;
    fa_load<T, D, LDQ, BR>(sQ, q + nT * dk, q0, T_, dk);
    fa_load<T, D, LDK, BC>(sK, kn, j0 * BC, T_, dk);
    cp_async_commit();
    typename P::A qa[QREG ? MT : 1][QREG ? KD : 1];
    float m[MT][2], l[MT][2], acc[MT][ND][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m[mt][0] = m[mt][1] = -WB_INF;
        l[mt][0] = l[mt][1] = 0.f;
        wbmma::zero_acc(acc[mt]);
    }
    cp_async_wait_all();
    __syncthreads();
    if constexpr (QREG) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int kk = 0; kk < KD; ++kk) P::template load_a<LDQ>(qa[mt][kk], sQ, 16 * (MT * w + mt), P::KS * kk);
    }
    const int nk = (kend + BC - 1) / BC;
    for (int j = j0; j < nk; ++j) {
        const int k0 = j * BC;
        cp_async_wait_all();
        __syncthreads();                                         // K_j landed; every warp is done with V_{j-1}
        fa_load<T, D, LDV, BC>(sV, vn, k0, T_, dv);
        cp_async_commit();
        float s[MT][NC][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) wbmma::zero_acc(s[mt]);
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            typename P::A a[MT];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if constexpr (QREG) a[mt] = qa[mt][kk];
                else P::template load_a<LDQ>(a[mt], sQ, 16 * (MT * w + mt), P::KS * kk);
            }
#pragma unroll
            for (int np = 0; np < NC / 2; ++np) {
                typename P::B b0, b1;
                P::template load_bt<LDK>(b0, b1, sK, 16 * np, P::KS * kk);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    P::mma(s[mt][2 * np], a[mt], b0);
                    P::mma(s[mt][2 * np + 1], a[mt], b1);
                }
            }
        }
        if (k0 < wlo || k0 + BC > whi || (causal && k0 + BC - 1 > r0))        // warp-uniform
            fa_softmax<MT, NC, ND, true>(s, m, l, acc, r0 + g, k0 + 2 * tq, rs, causal, sl2);
        else
            fa_softmax<MT, NC, ND, false>(s, m, l, acc, r0 + g, k0 + 2 * tq, rs, causal, sl2);
        cp_async_wait_all();
        __syncthreads();                                         // V_j landed; every warp is done with K_j
        if (j + 1 < nk) {
            fa_load<T, D, LDK, BC>(sK, kn, k0 + BC, T_, dk);
            cp_async_commit();
        }
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
            typename P::A pa[MT];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) P::c_to_a(pa[mt], s[mt][CW * kc], s[mt][CW * kc + CW - 1]);
#pragma unroll
            for (int np = 0; np < ND / 2; ++np) {
                typename P::B b0, b1;
                P::template load_b<LDV>(b0, b1, sV, P::KS * kc, 16 * np);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    P::mma(acc[mt][2 * np], pa[mt], b0);
                    P::mma(acc[mt][2 * np + 1], pa[mt], b1);
                }
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float lt = l[mt][h];
            lt += __shfl_xor_sync(0xffffffffu, lt, 1);
            lt += __shfl_xor_sync(0xffffffffu, lt, 2);
            const int row = r0 + 16 * mt + g + 8 * h;
            if (row >= T_) continue;
            const float inv = 1.f / lt;
            T* orow = o + (nT + row) * dv;
#pragma unroll
            for (int j = 0; j < ND; ++j)
                fa_store2<T>(orow, 8 * j + 2 * tq, dv, acc[mt][j][2 * h] * inv, acc[mt][j][2 * h + 1] * inv);
            if (tq == 0) lse[nT + row] = (m[mt][h] + log2f(lt)) * WB_LN2;
        }
}

// ---------------------------------------------------------------------------- backward
// D_t = do_t . o_t (one warp per row) and the row's float32 dq accumulator zeroed (dq itself for float32 storage);
// the first ncnt warps also zero one arrival counter each (fa2_bwd_tail's; ncnt <= rows, 0 for fa2_bwd).
// Not launched when T_ <= BK (fa2_bwd's direct mode).
template <typename T>
__global__ void fa2_bwd_pre(const T* o, const T* dout, float* Dbuf, float* dqacc, long long rows, int dv, int dk,
                            int* cnt, long long ncnt) {
    const long long w = warp_row();
    const int lane = threadIdx.x & 31;
    if (w >= rows) return;
    store_row_dot(Dbuf, o, dout, w, lane, dv);
    for (int d = lane; d < dk; d += 32) dqacc[w * dk + d] = 0.f;
    if (w < ncnt && lane == 0) cnt[w] = 0;
}

// dq = scale * dqacc, cast to the storage type: float16 / bfloat16 only (a float32 dq is its own accumulator).
template <typename T>
__global__ void fa2_dq_post(const float* dqacc, T* dq, long long count, float scale) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count;
         i += (long long)gridDim.x * blockDim.x)
        dq[i] = from_f32<T>(dqacc[i] * scale);
}

// P^T and dS^T of one query tile: s (raw k.q) -> p = 2^(sl2 s - lse_t log2 e), dp -> p (dp - D_t).  Key of
// (j, e) = key_g + 8 (e >> 1); query (tile-local) x = 8 j + 2 tq + (e & 1).  sL holds lse (natural log, as
// saved by the forward and copied as is), sD holds D.  MASK: p = 0 for queries outside [ks.a, ks.b) of the
// key (its sequence, from the key itself when causal; empty for keys past T_).
template <int NQ, bool MASK>
__device__ __forceinline__ void fa_bwd_p(float (&s)[NQ][4], float (&dp)[NQ][4], const float* sL, const float* sD,
                                         int tq, int q0, const FaSeq (&ks)[2], float sl2) {
#pragma unroll
    for (int j = 0; j < NQ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int x = 8 * j + 2 * tq + (e & 1);
            float p = exp2f(s[j][e] * sl2 - sL[x] * WB_LOG2E);
            if (MASK) {
                const int t = q0 + x;
                if (t < ks[e >> 1].a || t >= ks[e >> 1].b) p = 0.f;
            }
            s[j][e] = p;
            dp[j][e] = p * (dp[j][e] - sD[x]);
        }
}

// What a key block does with dq: FA_DQ_ADD adds its scaled share atomically into dqacc (D_t from Dbuf), FA_DQ_STORE
// stores it (DIRECT: the block's keys are the sequence's only ones; D_t formed in the block by fa_load_D), FA_DQ_NONE
// forms no dq (fa2_bwd_one: query-tile blocks form it), FA_DQ_CAST adds as FA_DQ_ADD into a zeroed float32 buffer and
// the last key block to add into a query tile casts that tile's dq (fa2_bwd_cast: no pre / post kernels), FA_DQ_TAIL
// adds as FA_DQ_ADD (D_t from Dbuf) and, once the block is done, arrives at every query tile it added into -- one
// device-wide fence per block, not per tile -- and casts the tiles its arrival completed (fa2_bwd_tail: no post
// kernel; fa_dq_tail).  FA_DQ_NONE
// and FA_DQ_CAST pipeline differently (TILE2): each query tile's Q, dO, o and lse go to the second of two buffers at
// the top of the previous tile (so they have a whole tile to land), D_t is formed from the o and dO tiles in shared
// memory (fa_tile_D: each warp its rows, published by a barrier before the scores use them); FA_DQ_NONE has no
// second barrier per tile (no dS tile, nothing single-buffered to reload).
enum FaDq { FA_DQ_ADD = 0, FA_DQ_STORE = 1, FA_DQ_NONE = 2, FA_DQ_CAST = 3, FA_DQ_TAIL = 4 };

// D_t = o_t . do_t of this warp's 16 rows (16 w ..) of a 64-row tile pair in shared memory (zero past T and the head
// dim, as fa_load fills them) -> sD: two lanes per row, half the D columns each, 16-byte pieces.
template <typename T, int D, int LD>
__device__ __forceinline__ void fa_tile_D(float* sD, const T* so, const T* sdo) {
    static_assert(sizeof(T) == 2 && D % 16 == 0, "16-bit tiles of whole 16-byte pieces per lane");
    constexpr int PER = D / 2, E = 8;
    const int L = threadIdx.x & 31, r = 16 * (threadIdx.x >> 5) + (L >> 1), c0 = (L & 1) * PER;
    float d = 0.f;
#pragma unroll
    for (int c = 0; c < PER; c += E) {
        const uint4 a = *reinterpret_cast<const uint4*>(so + r * LD + c0 + c);
        const uint4 b = *reinterpret_cast<const uint4*>(sdo + r * LD + c0 + c);
        const T* x = reinterpret_cast<const T*>(&a);
        const T* y = reinterpret_cast<const T*>(&b);
#pragma unroll
        for (int e = 0; e < E; ++e) d += to_f32(x[e]) * to_f32(y[e]);
    }
    d += __shfl_xor_sync(0xffffffffu, d, 1);
    if ((L & 1) == 0) sD[r] = d;
}

// Row n's arrival counters (fa2_bwd_cast, fa2_bwd_tail): one per query tile of BQ rows, the rows one after another.
__device__ __forceinline__ int* fa_row_counters(int* cnt, int n, int T_, int BQ) {
    return cnt + (long long)n * ((T_ + BQ - 1) / BQ);
}

// The key blocks that add into query tile i (64 rows) of a call without packed sequences (the host launches
// fa2_bwd_cast for those alone): causal, key blocks 0 .. i; else all of them.
__device__ __forceinline__ int fa_tile_visits(int causal, int i, int T_) {
    return causal ? i + 1 : (T_ + 63) / 64;
}

// dq rows [row0, row0 + nr) = scale * dqacc's (float32, read from L2: other blocks added them) in the storage type,
// by the whole block.  Where the rows' starts keep 16-byte alignment (dk % 4 == 0): 4 columns per thread and step,
// FA_CAST_U steps' loads issued before their stores (the stores may alias the loads for all the compiler knows, so
// a plain loop would wait out one L2 round trip per step), 8-byte stores.
constexpr int FA_CAST_U = 8;
template <typename T>
__device__ __forceinline__ void fa_dq_cast_rows(const float* dqacc, T* dq_, long long row0, int nr, int dk,
                                                float scale) {
    const float* src = dqacc + row0 * dk;
    T* dst = dq_ + row0 * dk;
    const int count = nr * dk;
    if ((dk & 3) == 0) {
        for (int x0 = 4 * threadIdx.x; x0 < count; x0 += 4 * FA_THREADS * FA_CAST_U) {
            float4 f[FA_CAST_U];
#pragma unroll
            for (int u = 0; u < FA_CAST_U; ++u) {
                const int x = x0 + 4 * FA_THREADS * u;
                if (x < count) f[u] = __ldcg(reinterpret_cast<const float4*>(src + x));
            }
#pragma unroll
            for (int u = 0; u < FA_CAST_U; ++u) {
                const int x = x0 + 4 * FA_THREADS * u;
                if (x < count) {
                    uint2 h;
                    h.x = pack2<T>(f[u].x * scale, f[u].y * scale);
                    h.y = pack2<T>(f[u].z * scale, f[u].w * scale);
                    *reinterpret_cast<uint2*>(dst + x) = h;
                }
            }
        }
    } else {
        for (int x = threadIdx.x; x < count; x += FA_THREADS) dst[x] = from_f32<T>(__ldcg(src + x) * scale);
    }
}

// A key block's arrival at query tile i after its dq adds (FA_DQ_CAST): every thread's adds made visible device-wide,
// then one arrival on the tile's counter; the block that arrives last (visits - 1 arrivals before it) casts the
// tile's float32 rows (read from L2) times scale into dq in the storage type.  Its barriers also free sS and the
// tile's buffers.
template <typename T>
__device__ __forceinline__ void fa_dq_arrive(int* cnt, int visits, int* sLast, const float* dqacc, T* dq_,
                                             long long nT, int q0, int rows, int T_, int dk, float scale) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) *sLast = atomicAdd(cnt, 1) == visits - 1;
    __syncthreads();
    if (!*sLast) return;
    __threadfence();
    fa_dq_cast_rows<T>(dqacc, dq_, nT + q0, min(rows, T_ - q0), dk, scale);
}

// A key block's arrivals after all its dq adds (FA_DQ_TAIL): one device-wide fence, then an arrival at each query
// tile i0 .. nq-1 of row n (thread t takes tiles i0 + t, i0 + t + 128, ...); a tile whose arrival is its last
// (fa_tile_visits) is cast by the whole block (fa_dq_cast_rows), 128 tiles per round.  sMask: 4 ints of shared
// memory free for the block's use (its barriers).  cnt: the row's counters, one per 64-row query tile.
template <typename T>
__device__ __forceinline__ void fa_dq_tail(int* cnt, unsigned* sMask, const float* dqacc, T* dq_, long long nT,
                                           int i0, int nq, int T_, int dk, int causal, float scale) {
    __threadfence();
    __syncthreads();                                            // every thread's adds made visible first
    for (int base = i0; base < nq; base += FA_THREADS) {
        const int i = base + threadIdx.x;
        const bool last = i < nq && atomicAdd(cnt + i, 1) == fa_tile_visits(causal, i, T_) - 1;
        __threadfence();                                        // the arrival before the reads of a tile it completed
        const unsigned m = __ballot_sync(0xffffffffu, last);
        if ((threadIdx.x & 31) == 0) sMask[threadIdx.x >> 5] = m;
        __syncthreads();
        unsigned mk[FA_THREADS / 32];
#pragma unroll
        for (int x = 0; x < FA_THREADS / 32; ++x) mk[x] = sMask[x];
#pragma unroll
        for (int x = 0; x < FA_THREADS / 32; ++x)
            for (unsigned b = mk[x]; b != 0u;) {                  // block-uniform: every thread reads the same mask
                const int lo = __ffs(b) - 1;                      // a run of completed tiles lo .. lo + len - 1: one cast
                const unsigned run = b >> lo;
                const int len = run == 0xffffffffu ? 32 : __ffs(~run) - 1;
                b = len + lo >= 32 ? 0u : b & ~(((1u << len) - 1u) << lo);
                const int q0 = (base + 32 * x + lo) * 64;
                fa_dq_cast_rows<T>(dqacc, dq_, nT + q0, min(64 * len, T_ - q0), dk, scale);
            }
        __syncthreads();                                        // sMask read by every thread before the next round
    }
}

// fa2_bwd's body for the key block at k0 of row n (fa2_bwd_one runs it, FA_DQ_NONE, for half of its blocks;
// fa2_bwd_cast, FA_DQ_CAST, for every block).  Shared memory: K, V, two Q buffers, then TILE2: two dO and two o
// buffers, the dS tile (FA_DQ_CAST), two lse and two D vectors, an int (FA_DQ_CAST); else one dO buffer, the dS tile,
// lse and D.  cnt (FA_DQ_CAST): an arrival counter per (n, query tile), zero before the launch.
template <class P, int D, int BQ, bool KVREG, int DQ>
__device__ __forceinline__ void fa2_bwd_keys(const typename P::T* q, const typename P::T* k,
        const typename P::T* v, const typename P::T* o, const float* lse, const float* Dbuf,
        const typename P::T* dout, float* dqacc, typename P::T* dq_, typename P::T* dk_, typename P::T* dv_,
        int T_, int dk, int dv, float sl2, float scale, int causal, const int* tseq, const int* cu, int n, int k0,
        int* cnt = nullptr) {
    using T = typename P::T;
    constexpr bool ONE = DQ == FA_DQ_NONE, TILE2 = ONE || DQ == FA_DQ_CAST;
    constexpr int BK = 64, LDK = D + P::PAD_X, LDV = D + P::PAD_R, LDQ = D + P::PAD_X, LDS = BK + P::PAD_R;
    constexpr int KD = D / P::KS, NQ = BQ / 8, ND = D / 8, KQ = BQ / P::KS, KK = BK / P::KS, CW = P::KS / 8;
    constexpr int MQ = BQ / 16, WN = 4 / MQ, DW = D / WN, NDW = DW / 8;   // dQ tile: warp -> (m tile, columns)
    static_assert(MQ * WN == 4 && DW % 16 == 0, "dQ tile must split into 4 warps of 16-column multiples");
    static_assert(!TILE2 || BQ == 64, "FA_DQ_NONE, FA_DQ_CAST: 64-row query tiles (fa_tile_D)");
    static_assert(DQ != FA_DQ_TAIL || (BQ == 64 && sizeof(T) == 2), "FA_DQ_TAIL: 64-row query tiles, 16-bit dq");
    constexpr int NB = TILE2 ? 2 : 1;                           // buffers of dO, lse, D (and o)
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sK = reinterpret_cast<T*>(smem_raw);
    T* sV = sK + BK * LDK;
    T* sQ = sV + BK * LDV;                                      // two buffers of BQ rows
    T* sO = sQ + 2 * BQ * LDQ;                                  // dO: NB buffers
    T* sOo = sO + NB * BQ * LDQ;                                // TILE2: o, two buffers
    T* sS = sOo + (TILE2 ? 2 : 0) * BQ * LDQ;                   // dS of the tile, [query][key] (not ONE)
    float* sL = reinterpret_cast<float*>(sS + (ONE ? 0 : BQ * LDS));   // NB vectors of BQ
    float* sD = sL + NB * BQ;
    int* sLast = reinterpret_cast<int*>(sD + NB * BQ);          // FA_DQ_CAST: this block adds last into the tile
    const int w = threadIdx.x >> 5, L = threadIdx.x & 31, g = L >> 2, tq = L & 3;
    const long long nT = (long long)n * T_;
    const T* qn = q + nT * dk;
    const T* on = dout + nT * dv;
    const T* o_n = o + nT * dv;
    const float* ln = lse + nT;
    const float* Dn = (DQ == FA_DQ_ADD || DQ == FA_DQ_TAIL) ? Dbuf + nT : nullptr;
    // dQ's scale: in the store (DIRECT) or the adds into a float32 dq; else 1 (a no-op, fa2_dq_post scales)
    const float qs = (DQ == FA_DQ_STORE || sizeof(T) == 4) ? scale : 1.f;
    // queries of the block: from the diagonal (causal) or its first key's sequence start to its last key's
    // sequence end; the warp's tiles need no mask inside [wlo, whi)
    const int qbeg = causal ? k0 : fa_seq(tseq, cu, k0, T_).a;
    const int qend = fa_seq(tseq, cu, min(k0 + BK, T_) - 1, T_).b;
    const auto [wlo, whi] = fa_shared_range(tseq, cu, k0 + 16 * w, 16, T_);
    const int i0 = qbeg / BQ, nq = (qend + BQ - 1) / BQ;
    fa_load<T, D, LDK, BK>(sK, k + nT * dk, k0, T_, dk);
    fa_load<T, D, LDV, BK>(sV, v + nT * dv, k0, T_, dv);
    fa_load<T, D, LDQ, BQ>(sQ, qn, i0 * BQ, T_, dk);
    fa_load<T, D, LDQ, BQ>(sO, on, i0 * BQ, T_, dv);
    fa_load_vec<BQ>(sL, ln, i0 * BQ, T_);
    if constexpr (TILE2) fa_load<T, D, LDQ, BQ>(sOo, o_n, i0 * BQ, T_, dv);
    else fa_load_D<DQ == FA_DQ_STORE, T, BQ>(sD, Dn, o_n, on, i0 * BQ, T_, dv);
    cp_async_commit();
    float gk[ND][4], gv[ND][4];
    wbmma::zero_acc(gk);
    wbmma::zero_acc(gv);
    typename P::A ka[KVREG ? KD : 1], va[KVREG ? KD : 1];
    const int key_g = k0 + 16 * w + g;                          // keys of this lane: key_g, key_g + 8
    FaSeq ks[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int key = key_g + 8 * h;
        ks[h] = fa_seq(tseq, cu, key, T_);
        if (causal) ks[h].a = key;
        if (key >= T_) ks[h].b = 0;
    }
    const int mq = w / WN, c0 = (w % WN) * DW;                  // this warp's share of the dQ tile
    cp_async_wait_all();
    __syncthreads();
    if constexpr (KVREG) {
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            P::template load_a<LDK>(ka[kk], sK, 16 * w, P::KS * kk);
            P::template load_a<LDV>(va[kk], sV, 16 * w, P::KS * kk);
        }
    }
    for (int i = i0; i < nq; ++i) {
        const int q0 = i * BQ, b = (i - i0) & 1;
        T* sQc = sQ + b * BQ * LDQ;
        T* sOc = sO + (TILE2 ? b : 0) * BQ * LDQ;
        const float* sLc = sL + (TILE2 ? b : 0) * BQ;
        float* sDc = sD + (TILE2 ? b : 0) * BQ;
        cp_async_wait_all();
        __syncthreads();                     // tile i's loads landed; every warp is done with tile i-1
        if (i + 1 < nq) {
            fa_load<T, D, LDQ, BQ>(sQ + (b ^ 1) * BQ * LDQ, qn, q0 + BQ, T_, dk);
            if constexpr (TILE2) {
                fa_load<T, D, LDQ, BQ>(sO + (b ^ 1) * BQ * LDQ, on, q0 + BQ, T_, dv);
                fa_load<T, D, LDQ, BQ>(sOo + (b ^ 1) * BQ * LDQ, o_n, q0 + BQ, T_, dv);
                fa_load_vec<BQ>(sL + (b ^ 1) * BQ, ln, q0 + BQ, T_);
            }
            cp_async_commit();
        }
        if constexpr (TILE2) fa_tile_D<T, D, LDQ>(sDc, sOo + b * BQ * LDQ, sOc);
        float s[NQ][4], dp[NQ][4];                              // S^T = K Q^T, dP^T = V dO^T (this warp's keys)
        wbmma::zero_acc(s);
        wbmma::zero_acc(dp);
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            typename P::A a1, a2;
            if constexpr (KVREG) {
                a1 = ka[kk];
                a2 = va[kk];
            } else {
                P::template load_a<LDK>(a1, sK, 16 * w, P::KS * kk);
                P::template load_a<LDV>(a2, sV, 16 * w, P::KS * kk);
            }
#pragma unroll
            for (int np = 0; np < NQ / 2; ++np) {
                typename P::B b0, b1;
                P::template load_bt<LDQ>(b0, b1, sQc, 16 * np, P::KS * kk);
                P::mma(s[2 * np], a1, b0);
                P::mma(s[2 * np + 1], a1, b1);
                P::template load_bt<LDQ>(b0, b1, sOc, 16 * np, P::KS * kk);
                P::mma(dp[2 * np], a2, b0);
                P::mma(dp[2 * np + 1], a2, b1);
            }
        }
        if constexpr (TILE2) __syncthreads();   // every warp's D_t of the tile in sDc
        if (q0 < wlo || q0 + BQ > whi || k0 + BK > T_ || (causal && q0 < k0 + 16 * w + 15))   // warp-uniform
            fa_bwd_p<NQ, true>(s, dp, sLc, sDc, tq, q0, ks, sl2);
        else
            fa_bwd_p<NQ, false>(s, dp, sLc, sDc, tq, q0, ks, sl2);
        if constexpr (!ONE) {
#pragma unroll
            for (int j = 0; j < NQ; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    sS[(8 * j + 2 * tq + (e & 1)) * LDS + 16 * w + g + 8 * (e >> 1)] = from_f32<T>(dp[j][e]);
        }
#pragma unroll
        for (int kc = 0; kc < KQ; ++kc) {                       // dV += P^T dO, dK += dS^T Q
            typename P::A pa, da;
            P::c_to_a(pa, s[CW * kc], s[CW * kc + CW - 1]);
            P::c_to_a(da, dp[CW * kc], dp[CW * kc + CW - 1]);
#pragma unroll
            for (int np = 0; np < ND / 2; ++np) {
                typename P::B b0, b1;
                P::template load_b<LDQ>(b0, b1, sOc, P::KS * kc, 16 * np);
                P::mma(gv[2 * np], pa, b0);
                P::mma(gv[2 * np + 1], pa, b1);
                P::template load_b<LDQ>(b0, b1, sQc, P::KS * kc, 16 * np);
                P::mma(gk[2 * np], da, b0);
                P::mma(gk[2 * np + 1], da, b1);
            }
        }
        if constexpr (!ONE) {
            __syncthreads();                 // dS complete in sS; every warp is done with sO, sL, sD
            if (!TILE2 && i + 1 < nq) {
                fa_load<T, D, LDQ, BQ>(sO, on, q0 + BQ, T_, dv);
                fa_load_vec<BQ>(sL, ln, q0 + BQ, T_);
                fa_load_D<DQ == FA_DQ_STORE, T, BQ>(sD, Dn, o_n, on, q0 + BQ, T_, dv);
                cp_async_commit();
            }
            float gq[NDW][4];                                   // dQ rows q0 + 16 mq .., columns c0 .. c0 + DW
            wbmma::zero_acc(gq);
#pragma unroll
            for (int kc = 0; kc < KK; ++kc) {
                typename P::A a;
                P::template load_a<LDS>(a, sS, 16 * mq, P::KS * kc);
#pragma unroll
                for (int np = 0; np < NDW / 2; ++np) {
                    typename P::B b0, b1;
                    P::template load_b<LDK>(b0, b1, sK, P::KS * kc, c0 + 16 * np);
                    P::mma(gq[2 * np], a, b0);
                    P::mma(gq[2 * np + 1], a, b1);
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = q0 + 16 * mq + g + 8 * h;
                if (row >= T_) continue;
                if constexpr (DQ == FA_DQ_STORE) {
                    T* dst = dq_ + (nT + row) * dk;
#pragma unroll
                    for (int j = 0; j < NDW; ++j)
                        fa_store2<T>(dst, c0 + 8 * j + 2 * tq, dk, gq[j][2 * h] * qs, gq[j][2 * h + 1] * qs);
                } else {
                    float* dst = dqacc + (nT + row) * dk;
#pragma unroll
                    for (int j = 0; j < NDW; ++j)
                        fa_red2(dst, c0 + 8 * j + 2 * tq, dk, gq[j][2 * h] * qs, gq[j][2 * h + 1] * qs);
                }
            }
            if constexpr (DQ == FA_DQ_CAST)
                fa_dq_arrive<T>(fa_row_counters(cnt, n, T_, BQ) + i, fa_tile_visits(causal, i, T_), sLast,
                                dqacc, dq_, nT, q0, BQ, T_, dk, scale);
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int key = key_g + 8 * h;
        if (key >= T_) continue;
        T* krow = dk_ + (nT + key) * dk;
        T* vrow = dv_ + (nT + key) * dv;
#pragma unroll
        for (int j = 0; j < ND; ++j) {
            fa_store2<T>(krow, 8 * j + 2 * tq, dk, gk[j][2 * h] * scale, gk[j][2 * h + 1] * scale);
            fa_store2<T>(vrow, 8 * j + 2 * tq, dv, gv[j][2 * h], gv[j][2 * h + 1]);
        }
    }
    if constexpr (DQ == FA_DQ_TAIL)                             // sS is free once fa_dq_tail's first barrier passed
        fa_dq_tail<T>(fa_row_counters(cnt, n, T_, BQ), reinterpret_cast<unsigned*>(sS), dqacc, dq_, nT, i0,
                      nq, T_, dk, causal, scale);
}

template <class P, int D, int BQ, bool KVREG, bool DIRECT>
__global__ void __launch_bounds__(FA_THREADS) fa2_bwd(const typename P::T* q, const typename P::T* k,
        const typename P::T* v, const typename P::T* o, const float* lse, const float* Dbuf,
        const typename P::T* dout, float* dqacc, typename P::T* dq_, typename P::T* dk_, typename P::T* dv_, int N,
        int T_, int dk, int dv, float sl2, float scale, int causal, const int* tseq, const int* cu) {
    // causal: longest key blocks first
    fa2_bwd_keys<P, D, BQ, KVREG, DIRECT ? FA_DQ_STORE : FA_DQ_ADD>(q, k, v, o, lse, Dbuf, dout, dqacc, dq_, dk_, dv_,
            T_, dk, dv, sl2, scale, causal, tseq, cu, (int)(blockIdx.x % N), (int)(blockIdx.x / N) * 64);
}

// fa2_bwd_cast<P, D, BQ, KVREG>: fa2_bwd's atomic schedule in one launch (FA_DQ_CAST: D_t from the o tiles, the
// last key block to add into a query tile casts its dq), for calls without packed sequences at head dims <= 64 in
// float16 / bfloat16.  dqacc (float32, rows x dk) and cnt (N x ceil(T / 64) ints) zero before the launch (the host:
// one memset).  grid ceil(T / 64) N, block 128, shared memory fa2_cast_smem (host).
template <class P, int D, int BQ, bool KVREG>
__global__ void __launch_bounds__(FA_THREADS) fa2_bwd_cast(const typename P::T* q, const typename P::T* k,
        const typename P::T* v, const typename P::T* o, const float* lse, const typename P::T* dout, float* dqacc,
        int* cnt, typename P::T* dq_, typename P::T* dk_, typename P::T* dv_, int N, int T_, int dk, int dv,
        float sl2, float scale, int causal) {
    fa2_bwd_keys<P, D, BQ, KVREG, FA_DQ_CAST>(q, k, v, o, lse, nullptr, dout, dqacc, dq_, dk_, dv_, T_, dk, dv, sl2,
            scale, causal, nullptr, nullptr, (int)(blockIdx.x % N), (int)(blockIdx.x / N) * 64, cnt);
}

// fa2_bwd_tail<P, D, BQ, KVREG>: fa2_bwd's atomic schedule with the dq cast in the same launch (FA_DQ_TAIL: after
// its adds each key block arrives at the query tiles it added into; the arrival that completes a tile casts it), for
// calls without packed sequences at head dims <= 64 in float16 / bfloat16: fa2_bwd_pre (D, the float32 buffer and
// cnt zeroed: N x ceil(T / 64) ints), then this -- two launches, no fa2_dq_post.  grid ceil(T / 64) N, block 128,
// shared memory fa2_smem(.., "bwd") as fa2_bwd.
template <class P, int D, int BQ, bool KVREG>
__global__ void __launch_bounds__(FA_THREADS) fa2_bwd_tail(const typename P::T* q, const typename P::T* k,
        const typename P::T* v, const typename P::T* o, const float* lse, const float* Dbuf,
        const typename P::T* dout, float* dqacc, int* cnt, typename P::T* dq_, typename P::T* dk_,
        typename P::T* dv_, int N, int T_, int dk, int dv, float sl2, float scale, int causal) {
    fa2_bwd_keys<P, D, BQ, KVREG, FA_DQ_TAIL>(q, k, v, o, lse, Dbuf, dout, dqacc, dq_, dk_, dv_, T_, dk, dv, sl2,
            scale, causal, nullptr, nullptr, (int)(blockIdx.x % N), (int)(blockIdx.x / N) * 64, cnt);
}

// The dq of one 64-row query tile at q0 of row n (fa2_bwd_one's query blocks): warp w owns rows q0 + 16 w ..; the
// key tiles of 64 that the rows see (from the first row's sequence start to the diagonal, or to the last row's
// sequence end), K_j and V_j double-buffered (cp.async, one group per tile), Q and dO fragments in registers:
//     S = Q K_j^T, dP = dO V_j^T                     (A = Q, dO; B = K_j, V_j stored [key][d])
//     P = 2^(sl2 S - lse_t log2 e), dS = P (dP - D_t) in registers (masks only on tiles crossing the diagonal,
//                                                     a sequence edge or T: warp-uniform, as fa2_fwd)
//     dQ += dS K_j                                   (A = the dS accumulators; B = K_j stored [key][d])
// D_t = do_t . o_t formed in the block (fa_load_D); dq stored once, scaled, in T.  Rows past T_ are not stored.
template <class P, int D>
__device__ __forceinline__ void fa2_bwd_queries(const typename P::T* q, const typename P::T* k,
        const typename P::T* v, const typename P::T* o, const float* lse, const typename P::T* dout,
        typename P::T* dq_, int T_, int dk, int dv, float sl2, float scale, int causal, const int* tseq, const int* cu,
        int n, int q0) {
    using T = typename P::T;
    constexpr int BR = 64, BK = 64, LDQ = D + P::PAD_R, LDK = D + P::PAD_X, LDV = D + P::PAD_R;
    constexpr int KD = D / P::KS, NC = BK / 8, ND = D / 8, KC = BK / P::KS, CW = P::KS / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const auto [sQ, sO, sK, sV] = carve<T>(smem_raw, BR * LDQ, BR * LDQ, 2 * BK * LDK, 2 * BK * LDV).p;
    const auto [sL, sD] = carve<float>(sV + 2 * BK * LDV, BR, BR).p;
    const int w = threadIdx.x >> 5, L = threadIdx.x & 31, g = L >> 2, tq = L & 3;
    const long long nT = (long long)n * T_;
    const T* kn = k + nT * dk;
    const T* vn = v + nT * dv;
    const T* on = dout + nT * dv;
    const int r0 = q0 + 16 * w;                                 // first row of this warp
    const auto [kbeg, kend] = fa_block_keys(tseq, cu, q0, BR, T_, causal);
    const auto [wlo, whi] = fa_shared_range(tseq, cu, r0, 16, T_);
    FaSeq rs[1][2];
#pragma unroll
    for (int h = 0; h < 2; ++h) rs[0][h] = fa_seq(tseq, cu, r0 + g + 8 * h, T_);
    const int j0 = kbeg / BK, nk = (kend + BK - 1) / BK;
    fa_load<T, D, LDQ, BR>(sQ, q + nT * dk, q0, T_, dk);
    fa_load<T, D, LDQ, BR>(sO, on, q0, T_, dv);
    fa_load_vec<BR>(sL, lse + nT, q0, T_);
    fa_load_D<true, T, BR>(sD, nullptr, o + nT * dv, on, q0, T_, dv);
    fa_load<T, D, LDK, BK>(sK, kn, j0 * BK, T_, dk);
    fa_load<T, D, LDV, BK>(sV, vn, j0 * BK, T_, dv);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    typename P::A qa[KD], oa[KD];
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
        P::template load_a<LDQ>(qa[kk], sQ, 16 * w, P::KS * kk);
        P::template load_a<LDQ>(oa[kk], sO, 16 * w, P::KS * kk);
    }
    float lr[2], dr[2];                                         // lse_t log2 e and D_t of this lane's rows
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        lr[h] = sL[16 * w + g + 8 * h] * WB_LOG2E;
        dr[h] = sD[16 * w + g + 8 * h];
    }
    float gq[ND][4];
    wbmma::zero_acc(gq);
    for (int j = j0; j < nk; ++j) {
        const int k0 = j * BK, b = (j - j0) & 1;
        const T* sKj = sK + b * BK * LDK;
        const T* sVj = sV + b * BK * LDV;
        cp_async_wait_all();
        __syncthreads();                     // K_j, V_j landed; every warp is done with tile j - 1's buffers
        if (j + 1 < nk) {
            fa_load<T, D, LDK, BK>(sK + (b ^ 1) * BK * LDK, kn, k0 + BK, T_, dk);
            fa_load<T, D, LDV, BK>(sV + (b ^ 1) * BK * LDV, vn, k0 + BK, T_, dv);
            cp_async_commit();
        }
        float s[NC][4], dp[NC][4];
        wbmma::zero_acc(s);
        wbmma::zero_acc(dp);
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
            for (int np = 0; np < NC / 2; ++np) {
                typename P::B b0, b1;
                P::template load_bt<LDK>(b0, b1, sKj, 16 * np, P::KS * kk);
                P::mma(s[2 * np], qa[kk], b0);
                P::mma(s[2 * np + 1], qa[kk], b1);
                P::template load_bt<LDV>(b0, b1, sVj, 16 * np, P::KS * kk);
                P::mma(dp[2 * np], oa[kk], b0);
                P::mma(dp[2 * np + 1], oa[kk], b1);
            }
        }
        const bool mask = k0 < wlo || k0 + BK > whi || (causal && k0 + BK - 1 > r0);   // warp-uniform
#pragma unroll
        for (int jj = 0; jj < NC; ++jj)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1, key = k0 + 8 * jj + 2 * tq + (e & 1), row = r0 + g + 8 * h;
                float p = exp2f(s[jj][e] * sl2 - lr[h]);
                if (mask && (key < rs[0][h].a || key >= rs[0][h].b || (causal && key > row))) p = 0.f;
                dp[jj][e] = p * (dp[jj][e] - dr[h]);
            }
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {                       // dQ += dS K_j
            typename P::A da;
            P::c_to_a(da, dp[CW * kc], dp[CW * kc + CW - 1]);
#pragma unroll
            for (int np = 0; np < ND / 2; ++np) {
                typename P::B b0, b1;
                P::template load_b<LDK>(b0, b1, sKj, P::KS * kc, 16 * np);
                P::mma(gq[2 * np], da, b0);
                P::mma(gq[2 * np + 1], da, b1);
            }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = r0 + g + 8 * h;
        if (row >= T_) continue;
        T* dst = dq_ + (nT + row) * dk;
#pragma unroll
        for (int jj = 0; jj < ND; ++jj)
            fa_store2<T>(dst, 8 * jj + 2 * tq, dk, gq[jj][2 * h] * scale, gq[jj][2 * h + 1] * scale);
    }
}

// fa2_bwd_one<P, D, BQ, KVREG>: the whole backward in one launch (the host takes it up to FA2_ONE_LAUNCH_MAX_T tokens
// at head dims <= 64, float16 / bfloat16): no fa2_bwd_pre, no float32 dq buffer, no fa2_dq_post.  grid 2 ntiles N
// (ntiles = ceil(T / 64)); block b: pair p = b / (2 N), row n = b % N; (b / N) even: fa2_bwd's key block p (dk, dv;
// D_t formed in the block; no dq), odd: the dq of query tile ntiles - 1 - p (fa2_bwd_queries).  Causal: the pairs
// run longest first (key block p sees ntiles - p query tiles, query tile ntiles - 1 - p as many key tiles).  Per
// (query, key) tile pair 7 products (S^T, dP^T, dV, dK; S, dP, dQ) against fa2_bwd's 5 and its atomic dq adds.
// Shared memory: the larger of the two roles' (host: fa2_one_smem).
template <class P, int D, int BQ, bool KVREG>
__global__ void __launch_bounds__(FA_THREADS) fa2_bwd_one(const typename P::T* q, const typename P::T* k,
        const typename P::T* v, const typename P::T* o, const float* lse, const typename P::T* dout,
        typename P::T* dq_, typename P::T* dk_, typename P::T* dv_, int N, int T_, int dk, int dv, float sl2,
        float scale, int causal, const int* tseq, const int* cu) {
    const int n = (int)(blockIdx.x % N), pair = (int)(blockIdx.x / (2 * N)), ntiles = (T_ + 63) / 64;
    if ((blockIdx.x / N) % 2 == 0)
        fa2_bwd_keys<P, D, BQ, KVREG, FA_DQ_NONE>(q, k, v, o, lse, nullptr, dout, nullptr, nullptr, dk_, dv_, T_, dk,
                                                  dv, sl2, scale, causal, tseq, cu, n, 64 * pair);
    else
        fa2_bwd_queries<P, D>(q, k, v, o, lse, dout, dq_, T_, dk, dv, sl2, scale, causal, tseq, cu, n,
                              64 * (ntiles - 1 - pair));
}
