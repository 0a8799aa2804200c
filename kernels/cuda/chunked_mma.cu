// chunked_mma.cu -- linear and decayed-linear attention on tensor cores (mma.sync): the chunked form with
// carried states, forward and backward, initial/final states and packed sequences built in.
//
// The problem (per leading index n, per sequence of the packed T axis; positions t, i of one sequence):
//   S_t = e^{g_t} S_{t-1} + k_t v_t^T   (S_{-1} = S0, the initial state, or 0),   o_t = scale q_t^T S_t
//   i.e. o_t = scale [ e^{G_t} q_t^T S0 + sum_{i<=t} e^{G_t - G_i} (q_t.k_i) v_i ],  G_t = sum_{j<=t} g_j.
// Linear attention is g = 0 (decay off).  Non-causal linear attention: o_t = scale q_t^T S_total.
//
// Chunks of C = 64 positions; b_t = the within-chunk cumulative log decay (b_last = b of the chunk's last
// row), summed in float64 once per chunk and kept as a float32 pair b = bh + bl, so that a difference
// b_t - b_i = (bh_t - bh_i) + (bl_t - bl_i) costs three float32 adds and is rounded relative to the
// difference, not to the large sums; log decays below G_MIN (and -inf) are clamped to G_MIN, whose exp is
// exactly 0 in every precision used here, so -inf is an exact reset.
//   intra-chunk:  P = scale * mask(e^{b_t - b_i} Q K^T)  (i <= t)
//   output:       O = P V + scale diag(e^{b_t}) Q H          H = the state before the chunk
//   state:        H <- e^{b_last} H + K^T diag(u) V,     u_i = e^{b_last - b_i}
// Backward (dS = the gradient of the state after a chunk, carried backwards; dS_T seeds it):
//   dq = scale mask(e^{b_t-b_i} dO V^T) K + scale diag(e^{b_t}) dO H^T
//   dk = scale mask(..)^T-form: (dP^T) Q + diag(u) V dS^T,   dP^T_{it} = e^{b_t-b_i} v_i.do_t (t >= i)
//   dv = (P^T) dO + diag(u) K dS
//   dS <- e^{b_last} dS + Q^T diag(scale e^{b}) dO;        dS0 = dS at the sequence start
//   d log_decay: dG_t = q_t.dq_t - k_t.dk_t, dg_j = sum_{t >= j} dG_t + <dS_T, S_T> (docs/kernels/linear.md);
//   or, from chunk anchors (the dq-folded walk with anc: bfloat16, whose long sum would cancel beyond its 8 bits),
//   dg_{c0} = <H, dS'> at each chunk's first token c0 (H the state before the chunk, dS' its gradient) and
//   dg_j = dg_{c1} + sum_{j <= t < c1} dG_t inside it (c1 the next chunk's first token; docs/kernels/decayed.md)
// dq needs the chunk's own tiles and H, never dS: tc_bwd_dq re-walks the chunks forwards to rebuild H, while the
// dq-folded walk (WHICH DKDV_DQ) reads H of every chunk (in T, scaled by 1/sigma, and sigma: what tc_fwd's
// products read, written by its STORE) and forms dq in the same reverse walk as dk and dv (linear.md, "dq folded").
//
// Sequences are cut into segments of L chunks (a table: token range and sequence of each segment).  One
// block walks one segment's chunks in order, carrying its state tile in registers (fp32 mma accumulators)
// and handing it to the next chunk's products through shared memory in the storage type T.  With more
// than one segment per sequence, tc_seg_state sums each segment's contribution in parallel and
// tc_seg_scan chains them (fp32), so the walkers start from the right state.
//
// Kernels (block = 4 warps; warp w owns chunk rows 16w..16w+15, or state rows (R/4) w ..):
//   tc_fwd<T, DKP, SPLIT, STAGES, STORE>  o for one 64-column tile of v; optionally the state after the segment;
//                                  STORE 1: also the state before every chunk (for tc_bwd_dkdv's WHICH DKDV_DQ)
//   tc_seg_state<T, DXP, REV, SPLIT, STAGES>  one segment's state contribution (REV: of q, do, for dS)
//   tc_seg_scan<REV>               segment start states (REV: segment end gradients), final state / dS0
//   tc_bwd_dq<T, DVP, SPLIT, STAGES>  dq for one 64-column tile of dk (and its row dots q.dq)
//   tc_bwd_dkdv<T, DKP, DVP, SPLIT, WHICH, LAYOUT, STAGES>  dk and dv (WHICH 0, head dims <= 64; LAYOUT: 4 or 8 warps),
//                                  dk tiles (1), dv tiles (2), or dq, dk and dv (3 = DKDV_DQ, head dims <= 64, causal:
//                                  dq's state operand read from tc_fwd's STORE, so tc_bwd_dq is not run)
//   tc_dg_part, tc_dg              d log_decay: reverse cumulative sum of q.dq - k.dk per sequence (or chunk-local
//                                  suffix sums from the dq-folded walker's chunk anchors)
// STAGES (tc::Walk): 1 loads a chunk's tiles, waits, computes; 2 double-buffers the tiles, so chunk c + 1's
// cp.async loads (and warp 0's log decays) are in flight while chunk c is computed (cupy:chunked_mma_db).
// DKP, DVP: head dims padded to 64 or 128; actual dims are run-time and loads past them read zeros.
// decay (g != nullptr), causal and g_kind (the log decays' type: tc::G_F32, G_F16, G_BF16) are run-time flags
// (uniform branches).  T: wb_half, wb_bf16 or float
// (float runs 3xTF32 (SPLIT 3) or TF32 (SPLIT 1) products).  The fp16 state operand is scaled by a power
// of two sigma so that it cannot overflow (the fp32 state itself never leaves registers unscaled).
#include "mma.cuh"

namespace tc {
enum : int {
    C = 64,                        // chunk length
    THREADS = 128,                 // 4 warps
    BV = 64,                       // column tile of outputs and of the state held by one block
    PAD = 8,                       // row padding of every shared tile (elements)
};
constexpr float G_MIN = -1.0e4f;   // log decays below this (and -inf) read as G_MIN: exp(G_MIN) == 0 exactly

// per-chunk scalars, after the tiles in shared memory
// (16-byte aligned: every kernel places it after tiles whose rows are multiples of 16 bytes, so that a lane's column
// pair (c, c + 1) of b (c even) is one 16-byte load and of e or u one 8-byte load: intra_frags, KWeights)
struct Trailer {
    float2 b[C];      // within-chunk cumulative log decay b (float64 sum) = bh + bl, side by side: bh = b[t].x =
                      //   (float)b, bl = b[t].y = (float)(b - bh)
    float e[C];       // e^{b_t}
    float u[C];       // e^{b_last - b_t}
    float red[32];    // block reductions
    float gnext[3][C];  // the log decays of chunk j in slot j % 3, landed by cp.async ahead of its top (Walk);
                        //   16-bit log decays: C halves in the slot's first half
};

// The base of a chunk's forward weights e^{b_t} (b non-increasing: e[0] the largest): products that weigh rows by
// e^{b_t} (the backward's dS update, the REV state pass) weigh them by e^{b_t - b_0} and apply e^{b_0} to the float32
// accumulator, so a chunk whose first log decay is very negative (e^{b_0} below the 16-bit range from b_0 ~ -17:
// every weight would round to 0, the initial state's gradient came out 0) keeps its terms.  1 where e[0] is 0 or
// below 1e-30 (-inf, G_MIN: the weights are 0 either way).
__device__ __forceinline__ float weight_base(const Trailer* tr) {
    const float e0 = tr->e[0];
    return e0 > 1e-30f ? e0 : 1.f;
}

__device__ __forceinline__ float dexp(double x) { return __expf((float)x); }

// b_t in float64 from the Trailer's (bh, bl) pair
__device__ __forceinline__ double logdecay_at(const Trailer* tr, int t) {
    return (double)tr->b[t].x + (double)tr->b[t].y;
}

// The REV sums' weights in a forward walk (tc_bwd_dq's and tg_bwd_dq's ESUM; docs/kernels/linear.md "The REV sums in
// the dq walker"): one base for the segment, chunk 0's weight_base e^{beta} (beta = its first row's b; 1 below 1e-30),
// applied to the float32 sum at the end; chunk c's fragment multiplier scale e^{B_c - beta} (chunk 0: scale / base;
// B_c - beta <= 0: nothing overflows), B_c - beta summed in double from the chunks' clamped totals b_last.
struct RevWeights {
    double Bd = 0.0;                 // B_c - beta
    float base = 1.f;                // e^{beta}
    __device__ __forceinline__ float next(const Trailer* tr, int j, float scale) {
        float mul;
        if (j == 0) {
            base = weight_base(tr);
            Bd = base != 1.f ? -logdecay_at(tr, 0) : 0.0;
            mul = scale / base;
        } else {
            mul = scale * dexp(Bd);
        }
        Bd += logdecay_at(tr, C - 1);
        return mul;
    }
};

// e^{b_r - b_c} from the float32 pairs: the hi parts subtract with one rounding relative to the difference
__device__ __forceinline__ float pair_exp(float hr, float lr, float hc, float lc) {
    return __expf((hr - hc) + (lr - lc));
}

// The log decays' storage type (the kernels' g_kind argument, uniform over a launch)
enum : int { G_F32 = 0, G_F16 = 1, G_BF16 = 2 };

// One chunk's log decays in global memory: g[0 .. nrow) (rows past nrow decay by nothing), float32, float16 or
// bfloat16 (kind), read as the same values converted exactly to float32.
struct GRows {
    const void* g;
    int nrow;
    int kind;
};

// The chunk of log decays g[i ..] (element i of an array of that kind)
__device__ __forceinline__ GRows grows_at(const void* g, int kind, long long i, int nrow) {
    return GRows{static_cast<const char*>(g) + (kind != G_F32 ? 2 : 4) * i, nrow, kind};
}

// 16-bit log decays: 1 when the chunk starts in the middle of a 4-byte word (2-byte aligned only), else 0
__device__ __forceinline__ int half_offset(GRows x) {
    return (int)(reinterpret_cast<unsigned long long>(x.g) >> 1) & 1;
}

// Element i of 16-bit log decays of this kind (G_F16 or G_BF16), as float32 (exact)
__device__ __forceinline__ float g16_at(const void* p, int i, int kind) {
    const unsigned short r = static_cast<const unsigned short*>(p)[i];     // one load, either conversion
    return kind == G_BF16 ? to_f32(wb_bf16{r}) : to_f32(wb_half{r});
}

// Warp 0, lane L: the chunk's log decays g[2L], g[2L + 1].
__device__ __forceinline__ float2 logdecay_load(GRows x) {
    const int L = threadIdx.x & 31;
    if (x.kind != G_F32)
        return make_float2(2 * L < x.nrow ? g16_at(x.g, 2 * L, x.kind) : 0.f,
                           2 * L + 1 < x.nrow ? g16_at(x.g, 2 * L + 1, x.kind) : 0.f);
    const float* f = static_cast<const float*>(x.g);
    return make_float2(2 * L < x.nrow ? f[2 * L] : 0.f, 2 * L + 1 < x.nrow ? f[2 * L + 1] : 0.f);
}

// The chunk's log decays (logdecay_load) -> b, e, u: every warp of the block runs the scan's shuffles (a branch-free,
// convergent path: under a per-thread condition ptxas compiles each shuffle as a collective sequence), warp 0 (own)
// with the chunk's values forms the exps and writes the Trailer.
__device__ __forceinline__ void chunk_logdecay(Trailer* tr, float2 x, bool own) {
    const int L = threadIdx.x & 31;
    float x0 = x.x, x1 = x.y;
    if (x0 < G_MIN) x0 = G_MIN;                      // NaN compares false: it propagates
    if (x1 < G_MIN) x1 = G_MIN;
    double incl = (double)x0 + (double)x1;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, incl, o);
        if (L >= o) incl += y;
    }
    double ex = __shfl_up_sync(0xffffffffu, incl, 1);
    if (L == 0) ex = 0.0;
    const double b0 = ex + x0, b1 = b0 + x1;
    const double bl = __shfl_sync(0xffffffffu, b1, 31);
    if (!own) return;
    const float h0 = (float)b0, h1 = (float)b1;
    *reinterpret_cast<float4*>(tr->b + 2 * L) = make_float4(h0, (float)(b0 - h0), h1, (float)(b1 - h1));
    *reinterpret_cast<float2*>(tr->e + 2 * L) = make_float2(dexp(b0), dexp(b1));
    *reinterpret_cast<float2*>(tr->u + 2 * L) = make_float2(dexp(bl - b0), dexp(bl - b1));
}

using wbmma::cp_async16;
using wbmma::cp_async4;
using wbmma::cp_async_commit;
__device__ __forceinline__ void cp_async_wait() { wbmma::cp_async_wait_all(); }
// wait until at most N of this thread's committed cp.async groups are still in flight
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
    static_assert(N == 0 || N == 1, "at most one group in flight");
    if constexpr (N == 0) asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    else asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}

// The chunk walk of one block (chunks j = 0 .. nch-1 in walking order) and its load pipeline.  The tiles a
// chunk loads by cp.async live in STAGES buffers; chunk j's go to stage j % STAGES, issued STAGES - 1 chunks
// ahead of its compute, one cp.async group per chunk.  Warp 0's log decays (decayed walks) ride one chunk
// further ahead: chunk c's group also copies chunk c + 1's log decays into tr->gnext[(c + 1) % 3], landed by
// chunk c's wait(), so the scan of chunk j never waits for a global load (only chunk 0's are loaded at its
// top) and holds no register across the chunk's products (the kernels sit at the 168-register line of 3
// blocks/SM).  Three slots: with two stages chunk j + 2's copy is issued at chunk j's top, right after chunk
// j's slot is read.  Per chunk j: top(j) (a barrier: every warp is done with chunk j - 1, whose stage the
// loads of chunk j + STAGES - 1 refill; those loads; chunk j's b, e, u -> tr), the chunk's other shared
// writes, wait(), __syncthreads(), compute.  STAGES 1 is the plain walk (load, wait, compute).
// issue(j, stage): chunk j's load_tile calls into that stage's buffers; grows(j): chunk j's GRows.
// 16-bit log decays (GRows::kind G_F16, G_BF16): the slot holds the 4-byte words over the chunk's halves, lane L word L
// (2 bytes, or none, at the chunk's tail), converted on read.  A chunk that starts 2-byte aligned only
// (half_offset 1: packed sequences at odd tokens, odd T) starts one half into its first word (whose first half,
// the token before the chunk, is copied and never read: the 2 bytes before a 2-mod-4 address lie in the same
// allocation) and lane 0 also copies word 32.  Every chunk of a walk has the same half_offset (C halves are
// 128 bytes).
template <int STAGES>
struct Walk {
    static_assert(STAGES == 1 || STAGES == 2, "one or two stages");
    int nch;
    bool scan;                                 // a decayed walk: every thread takes part in the log-decay scan
    bool decay;                                // this thread loads and writes the log decays (warp 0, decayed walks)
    int kind;                                  // ... from log decays of this kind (G_F32, G_F16, G_BF16)
    // chunk c + 1's log decays -> their slot, in the group being filled (before its commit)
    template <typename G>
    __device__ __forceinline__ void copy_next(int c, Trailer* tr, G&& grows) const {
        if (!decay || c + 1 >= nch) return;
        const int L = threadIdx.x & 31;
        const GRows r = grows(c + 1);
        float* dst = tr->gnext[(c + 1) % 3];
        if (kind != G_F32) {                                       // word w: halves 2w - hoff, 2w + 1 - hoff
            const int hoff = half_offset(r);
            const wb_half* h = static_cast<const wb_half*>(r.g) - hoff;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int w = i == 0 ? L : 32, a = 2 * w - hoff;
                const int bytes = a + 1 < r.nrow ? 4 : a < r.nrow ? 2 : 0;   // the tail's words: zero-filled
                if (i == 0 || (L == 0 && hoff)) cp_async4(dst + w, bytes ? h + 2 * w : h, bytes);
            }
            return;
        }
        const float* f = static_cast<const float*>(r.g);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const bool in = 2 * L + i < r.nrow;
            cp_async4(dst + 2 * L + i, in ? f + 2 * L + i : f, in ? 4 : 0);
        }
    }
    template <typename F, typename G>
    __device__ __forceinline__ Walk(int nch_, bool decay_, Trailer* tr, F&& issue, G&& grows)
        : nch(nch_), scan(decay_), decay(decay_ && threadIdx.x < 32), kind(grows(0).kind) {
#pragma unroll
        for (int j = 0; j < STAGES - 1; ++j) {
            if (j < nch) issue(j, j);
            copy_next(j, tr, grows);
            cp_async_commit();
        }
    }
    template <typename F, typename G>
    __device__ __forceinline__ void top(int j, Trailer* tr, F&& issue, G&& grows) {
        __syncthreads();
        float2 x = make_float2(0.f, 0.f);
        if (decay) {
            const int L = threadIdx.x & 31;
            const float* slot = tr->gnext[j % 3];
            const int hoff = kind != G_F32 ? half_offset(grows(j)) : 0;
            x = j == 0 ? logdecay_load(grows(0))
                : kind != G_F32 ? make_float2(g16_at(slot, 2 * L + hoff, kind), g16_at(slot, 2 * L + 1 + hoff, kind))
                                : make_float2(slot[2 * L], slot[2 * L + 1]);
        }
        const int jn = j + STAGES - 1;
        if (jn < nch) issue(jn, jn % STAGES);
        copy_next(jn, tr, grows);
        cp_async_commit();
        if (scan) chunk_logdecay(tr, x, decay);
    }
    __device__ __forceinline__ static void wait() { cp_async_wait_group<STAGES - 1>(); }
};

// rows [0, C) x columns [0, W) of the tile <- g[r * ldg + col0 + c] (zeros past nrows or ncols).  16-byte
// rows go through cp.async (zero-filled past the data; the caller waits (cp_async_wait(), Walk::wait()) before
// the barrier that publishes the tile), so every load of a chunk is in flight at once; other layouts load
// element by element.  NTH: the block's threads (tc_bwd_dkdv runs 4 or 8 warps).
template <typename T, int W, int NTH = THREADS>
__device__ __forceinline__ void load_tile(T* s, int lds, const T* __restrict__ g, long long ldg, int nrows, int col0,
                                          int ncols) {
    constexpr int VEC = 16 / sizeof(T), CV = W / VEC;
    const bool vec = (ldg % VEC) == 0 && (col0 % VEC) == 0 && (((unsigned long long)g) & 15ull) == 0;
    if (vec) {
        for (int idx = threadIdx.x; idx < C * CV; idx += NTH) {
            const int r = idx / CV, c = (idx % CV) * VEC;
            const int left = r < nrows ? ncols - (col0 + c) : 0;
            const int bytes = left <= 0 ? 0 : (left >= VEC ? 16 : left * (int)sizeof(T));
            cp_async16(s + r * lds + c, bytes ? g + r * ldg + col0 + c : g, bytes);
        }
    } else {
        for (int idx = threadIdx.x; idx < C * CV; idx += NTH) {
            const int r = idx / CV, c = (idx % CV) * VEC;
            T* dst = s + r * lds + c;
            const T* src = g + r * ldg + col0 + c;
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                dst[e] = (r < nrows && col0 + c + e < ncols) ? src[e] : wbmma::zero_val<T>();
        }
    }
}

// The A-fragment hook of gemm_ss (wbmma::gemm_ss) for X^T diag(w) Y with X^T the A operand (k = the chunk
// position): the fragments of k slice k0 times w_k = (f ? f[k] : 1) * mul, in float32, rounded to T once (f:
// 8-byte aligned, as every Trailer and Rows array is).
// Fragment k indices (mma.cuh): 16-bit a0, a1 hold k0 + 2t, k0 + 2t + 1 (low, high half), a2, a3 the same
// + 8; float a0, a1 hold k0 + t, a2, a3 k0 + t + 4.
template <typename T>
__device__ __forceinline__ unsigned weigh2(unsigned a, float w0, float w1) {
    T lo, hi;
    lo.bits = (unsigned short)(a & 0xffffu);
    hi.bits = (unsigned short)(a >> 16);
    return pack2<T>(to_f32(lo) * w0, to_f32(hi) * w1);
}
template <typename T>
struct KWeights {
    const float* f;
    float mul;
    template <int MT>
    __device__ __forceinline__ void operator()(unsigned (&a)[MT][4], int k0) const {
        const int t = threadIdx.x & 3;
        if constexpr (wbmma::Traits<T>::F32) {
            const float w0 = (f ? f[k0 + t] : 1.f) * mul, w1 = (f ? f[k0 + t + 4] : 1.f) * mul;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                a[mt][0] = __float_as_uint(__uint_as_float(a[mt][0]) * w0);
                a[mt][1] = __float_as_uint(__uint_as_float(a[mt][1]) * w0);
                a[mt][2] = __float_as_uint(__uint_as_float(a[mt][2]) * w1);
                a[mt][3] = __float_as_uint(__uint_as_float(a[mt][3]) * w1);
            }
        } else {
            const int k = k0 + 2 * t;                                  // even: f[k], f[k + 1] one 8-byte load
            const float2 f0 = f ? *reinterpret_cast<const float2*>(f + k) : make_float2(1.f, 1.f);
            const float2 f8 = f ? *reinterpret_cast<const float2*>(f + k + 8) : make_float2(1.f, 1.f);
            const float w0 = f0.x * mul, w1 = f0.y * mul, w8 = f8.x * mul, w9 = f8.y * mul;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                a[mt][0] = weigh2<T>(a[mt][0], w0, w1);
                a[mt][1] = weigh2<T>(a[mt][1], w0, w1);
                a[mt][2] = weigh2<T>(a[mt][2], w8, w9);
                a[mt][3] = weigh2<T>(a[mt][3], w8, w9);
            }
        }
    }
};

template <int MT, int NT>
__device__ __forceinline__ void zero(float (&a)[MT][NT][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) a[i][j][0] = a[i][j][1] = a[i][j][2] = a[i][j][3] = 0.f;
}

// rows g and g + 8 of every m tile scaled by f(row)
template <int MT, int NT, typename F>
__device__ __forceinline__ void scale_acc_rows(float (&a)[MT][NT][4], int m0, F f) {
    const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const float f0 = f(m0 + 16 * mt + g), f1 = f(m0 + 16 * mt + g + 8);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            a[mt][nt][0] *= f0; a[mt][nt][1] *= f0; a[mt][nt][2] *= f1; a[mt][nt][3] *= f1;
        }
    }
}

// every element of an accumulator tile times f (a state carried across a chunk: f = e^{b_last})
template <int MT, int NT>
__device__ __forceinline__ void scale_acc(float (&a)[MT][NT][4], float f) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) a[i][j][0] *= f, a[i][j][1] *= f, a[i][j][2] *= f, a[i][j][3] *= f;
}

// Row dot x_r . acc_r of row m0 + g + 8h of the warp's 16 x 8NT accumulator tile against a shared tile s (row
// stride lds, columns from 0), summed over the row's quad (every thread of the quad gets it).
template <typename T, int NT>
__device__ __forceinline__ float row_dot(const float (&a)[NT][4], const T* s, int lds, int m0, int h) {
    const int gq = (threadIdx.x & 31) >> 2, tq = threadIdx.x & 3;
    const int r = m0 + gq + 8 * h;
    float d = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
        d += a[nt][2 * h] * to_f32(s[r * lds + 8 * nt + 2 * tq]) + a[nt][2 * h + 1] * to_f32(s[r * lds + 8 * nt + 2 * tq + 1]);
    d += __shfl_xor_sync(0xffffffffu, d, 1);
    d += __shfl_xor_sync(0xffffffffu, d, 2);
    return d;
}

// Row dots of the warp's 16 rows (tile rows m0 + ...) of one 64-column tile, written to out[r] for rows r < nrow:
// the d log_decay terms q.dq and k.dk.
template <typename T>
__device__ __forceinline__ void row_dots(const float (&a)[8][4], const T* s, int lds, int m0, int nrow,
                                         float* __restrict__ out) {
    const int gq = (threadIdx.x & 31) >> 2, tq = threadIdx.x & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = m0 + gq + 8 * h;
        const float d = row_dot<T, 8>(a, s, lds, m0, h);
        if (tq == 0 && r < nrow) out[r] = d;
    }
}

// The pieces of moving a state tile (fp32 fragments, rows m0.. of the block's tile) to shared memory in T.  fp16
// operands are scaled by 1/sigma, sigma the power of two that keeps |H| / sigma <= 2^14 (1 for other types):
//   warp_abs_max   max |H| over the warp's fragments (every lane gets it)
//   pow2_exponent  e with m in [2^e, 2^(e+1)) for m >= 0 read from its bits (zero and subnormals: -127, inf / NaN:
//                  128); every "power of two from a max" of the walkers starts from it (pow2_scale, tg::state_to_tile's
//                  two-sided sigma, tg::p_frags' row scales, tg::tile_exponents)
//   pow2_scale     sigma and 1/sigma from the block's max (left at 1 while the max is below 2^14, or inf / NaN)
//   frags_to_smem  the fragments times inv -> shared memory (row stride lds, the warp's columns from n0); LO (16-bit,
//                  slo != nullptr): also the residuals x inv - hi rounded to T into slo (same layout): hi + lo pairs
template <int MT, int NT>
__device__ __forceinline__ float warp_abs_max(const float (&H)[MT][NT][4]) {
    float mx = 0.f;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) mx = fmaxf(mx, fabsf(H[mt][nt][e]));
    return warp_max(mx);
}
__device__ __forceinline__ int pow2_exponent(float m) { return (int)((__float_as_uint(m) >> 23) & 0xff) - 127; }
__device__ __forceinline__ void pow2_scale(float mx, float& sigma, float& inv) {
    const int ex = (int)((__float_as_uint(mx) >> 23) & 0xff) - 127;       // pow2_exponent(mx), written out: through
    if (ex > 13 && ex < 128) {                                            // the call ptxas orders its tests otherwise
        sigma = __uint_as_float((unsigned)(127 + ex - 13) << 23);          // 2^(ex-13)
        inv = __uint_as_float((unsigned)(127 - ex + 13) << 23);
    }
}
template <typename T, int MT, int NT, bool LO = false>
__device__ __forceinline__ void frags_to_smem(const float (&H)[MT][NT][4], T* s, int lds, int m0, float inv,
                                              int n0 = 0, T* slo = nullptr) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                T* dst = s + (m0 + 16 * mt + g + 8 * h) * lds + n0 + 8 * nt + 2 * t;
                if constexpr (wbmma::Traits<T>::F32) {
                    dst[0] = H[mt][nt][2 * h];
                    dst[1] = H[mt][nt][2 * h + 1];
                } else {
                    const float x0 = H[mt][nt][2 * h] * inv, x1 = H[mt][nt][2 * h + 1] * inv;
                    const unsigned hi = pack2<T>(x0, x1);
                    *reinterpret_cast<unsigned*>(dst) = hi;
                    if constexpr (LO) {
                        if (slo)
                            *reinterpret_cast<unsigned*>(slo + (dst - s)) =
                                pack2<T>(x0 - unpack2<T>(hi, 0), x1 - unpack2<T>(hi, 1));
                    }
                }
            }
}

// The state tile -> shared memory in T, scaled by 1/sigma; returns sigma.  Every thread of the block (NW warps,
// each holding rows m0.. and columns n0.. of the tile) must call it (it synchronises for the fp16 reduction).
// LO, slo: the lo tile of hi + lo pairs too (frags_to_smem).
template <typename T, int MT, int NT, int NW = 4, bool LO = false>
__device__ __forceinline__ float state_to_smem(const float (&H)[MT][NT][4], T* s, int lds, int m0, float* red,
                                               int n0 = 0, T* slo = nullptr) {
    float sigma = 1.f, inv = 1.f;
    if constexpr (wbmma::Traits<T>::HALF) {
        const float mx = warp_abs_max(H);
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
        __syncthreads();
        float bm = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
#pragma unroll
        for (int i = 4; i < NW; ++i) bm = fmaxf(bm, red[i]);
        pow2_scale(bm, sigma, inv);
        __syncthreads();                                                   // red is read before reuse
    }
    frags_to_smem<T, MT, NT, LO>(H, s, lds, m0, inv, n0, slo);
    return sigma;
}

// the warp's 16 rows (tile rows m0..) of acc -> global rows [0, nrows) (row stride ldg), columns col0 + c < ncols
template <typename T, int NT>
__device__ __forceinline__ void store_rows(const float (&a)[NT][4], T* __restrict__ out, long long ldg, int m0, int nrows,
                                           int col0, int ncols) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const bool pairs = (ldg % 2) == 0;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = m0 + g + 8 * h, c = col0 + 8 * nt + 2 * t;
            if (r >= nrows) continue;
            T* dst = out + r * ldg + c;
            const float x0 = a[nt][2 * h], x1 = a[nt][2 * h + 1];
            if (pairs && c + 1 < ncols) {
                if constexpr (wbmma::Traits<T>::F32) *reinterpret_cast<float2*>(dst) = make_float2(x0, x1);
                else *reinterpret_cast<unsigned*>(dst) = pack2<T>(x0, x1);
            } else {
                if (c < ncols) dst[0] = from_f32<T>(x0);
                if (c + 1 < ncols) dst[1] = from_f32<T>(x1);
            }
        }
}

// rows [0, R) x columns [0, BV) of a shared tile (row stride lds) -> R x BV contiguous elements of g, 16 bytes a
// store (the per-chunk states of the dq-folded backward: tc_fwd's STORE, read back by load_tile)
template <typename T, int R, int NTH = THREADS>
__device__ __forceinline__ void tile_to_global(const T* s, int lds, T* __restrict__ g) {
    constexpr int VEC = 16 / sizeof(T), CV = BV / VEC;
    for (int idx = threadIdx.x; idx < R * CV; idx += NTH) {
        const int r = idx / CV, c = (idx % CV) * VEC;
        *reinterpret_cast<uint4*>(g + r * BV + c) = *reinterpret_cast<const uint4*>(s + r * lds + c);
    }
}

// a state tile held in fragments (the warp's rows m0.., columns n0..) <-> its place in a (dk, dv) fp32 matrix
// (rows r0 + row, cols c0 + col)
template <int MT, int NT>
__device__ __forceinline__ void state_load(float (&H)[MT][NT][4], const float* __restrict__ src, int m0, int r0,
                                           int c0, int dk, int dv, int n0 = 0) {
    wbmma::for_each(H, m0, n0, [&](float& x, int r, int c) {
        x = (src && r0 + r < dk && c0 + c < dv) ? src[(long long)(r0 + r) * dv + c0 + c] : 0.f;
    });
}
template <int MT, int NT>
__device__ __forceinline__ void state_store(float (&H)[MT][NT][4], float* __restrict__ dst, int m0, int r0, int c0,
                                            int dk, int dv, int n0 = 0) {
    wbmma::for_each(H, m0, n0, [&](float& x, int r, int c) {
        if (r0 + r < dk && c0 + c < dv) dst[(long long)(r0 + r) * dv + c0 + c] = x;
    });
}

// The masked, decayed, scaled intra-chunk tile -> A fragments.  LOWER: keep col <= row (P = f(Q K^T));
// else keep col >= row (the transposed forms P^T, dP^T: rows are keys, columns queries).  The decay of
// element (r, c) is e^{b_r - b_c} (LOWER) or e^{b_c - b_r}: the thread's two rows' and sixteen columns'
// (bh, bl) are read once, a row's pair in one 8-byte load, a column pair's (c, c + 1) two in one 16-byte load;
// n tiles wholly past the diagonal (warp-uniform) are zeroed without an exp.
// FAST (16-bit products, one part: the default for 16-bit T; p_frags' pairs pass false): in a chunk whose decays
// span at most 64 (FAST_MIN = e^-64, below; every chunk of mild gates), the decay factors into a row and a column
// value the Trailer already holds, with no exp per element -- LOWER e^{b_r - b_c} = u_c / u_r (u_t = e^{b_last -
// b_t}), else e^{b_c - b_r} = e_c / e_r (e_t = e^{b_t}) -- each element one multiply by (scale / row value) x column
// value.  Within the span every u and e lies in [FAST_MIN, 1], so nothing under- or overflows; the factors carry the
// exps' own rounding (a few 1e-7 times the span), under 16-bit's.  Other chunks (and T = float) take the exps.
constexpr float FAST_MIN = 1.6038109e-28f;                      // e^-64: the largest log-decay span factored
template <typename T, bool LOWER, bool FAST = sizeof(T) == 2>
__device__ __forceinline__ void intra_frags(wbmma::AFrags<T, 8>& A, float (&S)[1][8][4], int m0, const Trailer* tr,
                                            bool decay, float scale) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const float* rc = LOWER ? tr->u : tr->e;                    // FAST: the rows' and columns' values
    const bool fast = FAST && decay && (LOWER ? tr->u[0] : tr->e[C - 1]) >= FAST_MIN;   // block-uniform: u_0, e_last
    float rh[2] = {0.f, 0.f}, rl[2] = {0.f, 0.f};               // (fast: rh the row factors scale / value)
    if (fast) {
#pragma unroll
        for (int h = 0; h < 2; ++h) rh[h] = __fdividef(scale, rc[m0 + g + 8 * h]);
    } else if (decay) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float2 b = tr->b[m0 + g + 8 * h];
            rh[h] = b.x, rl[h] = b.y;
        }
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
        if (LOWER ? 8 * nt > m0 + 15 : 8 * nt + 7 < m0) {           // every element masked
            S[0][nt][0] = S[0][nt][1] = S[0][nt][2] = S[0][nt][3] = 0.f;
            continue;
        }
        float f[2][2] = {{scale, scale}, {scale, scale}};                // [i][h]
        if (fast) {
            const float2 cv = *reinterpret_cast<const float2*>(rc + 8 * nt + 2 * t);   // columns c, c + 1
#pragma unroll
            for (int h = 0; h < 2; ++h) f[0][h] = rh[h] * cv.x, f[1][h] = rh[h] * cv.y;
        } else if (decay) {
            const float4 cb = *reinterpret_cast<const float4*>(tr->b + 8 * nt + 2 * t);   // columns c, c + 1
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const float ch = i ? cb.z : cb.x, cl = i ? cb.w : cb.y;
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    f[i][h] *= LOWER ? pair_exp(rh[h], rl[h], ch, cl) : pair_exp(ch, cl, rh[h], rl[h]);
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int c = 8 * nt + 2 * t + i;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = m0 + g + 8 * h;
                const bool vis = LOWER ? c <= r : c >= r;
                float& x = S[0][nt][2 * h + i];
                x = vis ? f[i][h] * x : 0.f;         // a select: masked NaN or inf never leaks
            }
        }
    }
    wbmma::c_to_a<T, 8>(A, S[0]);
}


// bfloat16's state operands as hi + lo pairs (issue #12; docs/kernels/decayed.md, "anchor + split-state"): in the
// decayed dq-folded walk (tc_bwd_dkdv's DKDV_DQ, g != nullptr) the state operands of the two inter-chunk products
// that feed d log_decay -- H in dq's dO H^T, dS in dk's V dS^T -- and H in the chunk anchors <H, dS'> are bfloat16
// pairs x = hi + lo (hi = bf16(x), lo = bf16(x - hi): ~16 significant bits, two products instead of one); tc_fwd's
// STORE writes H's lo tiles after all the hi tiles of the same allocation.  Everything else (the forward's Q H, dv's
// K dS, the state updates) keeps one rounding.  float16 and float32 compile none of it; bfloat16 linear (no decay)
// runs the single products (a run-time, launch-uniform branch).
template <typename T>
__host__ __device__ constexpr bool state_pairs() { return !wbmma::Traits<T>::F32 && !wbmma::Traits<T>::HALF; }

// acc += A B, B a walk's state tile in shared memory; with PAIRS and pairs, B + B_lo (the lo tile blo elements on)
template <typename T, int SPLIT, int MT, int NT, bool AKM, bool BNK, bool PAIRS>
__device__ __forceinline__ void gemm_state(float (&acc)[MT][NT][4], const T* sA, int lda, const T* sB, int ldb,
                                           int m0, int n0, int ke, bool pairs, int blo) {
    if constexpr (PAIRS) {
        if (pairs) {
            wbmma::gemm_ss<T, SPLIT, MT, NT, AKM, BNK, 2>(acc, sA, lda, sB, ldb, m0, n0, 0, ke, 0, NT / 2,
                                                          wbmma::AsLoaded(), blo);
            return;
        }
    }
    wbmma::gemm_ss<T, SPLIT, MT, NT, AKM, BNK>(acc, sA, lda, sB, ldb, m0, n0, 0, ke);
}

// Blocks per SM the walkers of the forward and of dq ask ptxas for (__launch_bounds__' second argument), head dim
// 64, one stage (everything else: no request):
//   16-bit inputs: 4 (<= 128 registers; ptxas spills 32-80 bytes to L1) against the 3 that 144-168 registers
//     allow -- these kernels are latency-bound at 12 warps per SM (Nsight Compute, docs/kernels/linear.md).
//   float32 (3xTF32 and TF32): 3, i.e. <= 168 registers, no spills.  The forward's 75 KB of shared memory fit 3
//     blocks per SM; left to itself ptxas (NVRTC 12.9, what the GPU runs) gave tc_fwd 185 registers once the
//     decayed path's code joined the kernel (167 before): 2 blocks per SM for linear and decayed float32 alike.
//     dq's 94 KB fit only 2 blocks, so there the request only holds it to the 168 registers it had (203 unasked;
//     its shared loads then sat as far ahead of their mma as before).  docs/kernels/linear.md, "float32 regression".
// tc_bwd_dq with ESUM (it also forms the REV segment sums: 32 more accumulator registers at head dim 64): 16-bit
// ESUM_MIN_BLOCKS (<= 168 registers), float32 2 (its 94 KB of shared memory allow no more).
constexpr int ESUM_MIN_BLOCKS = 3;
template <typename T, int D, int STAGES, bool ESUM = false>
__host__ __device__ constexpr int walk_min_blocks() {
    if (D != 64 || STAGES != 1) return 1;
    if (ESUM) return sizeof(T) == 2 ? ESUM_MIN_BLOCKS : 2;
    return sizeof(T) == 2 ? 4 : 3;
}

// The dk/dv walker's warp layouts (tc_bwd_dkdv's LAYOUT; the fused kernel, WHICH 0, takes every one):
//   DKDV_ROWS   4 warps; warp w: rows (R/4) w .. of the dS tile (all its columns), rows 16w .. of dk and dv
//   DKDV_COLS   8 warps; warp w: the rows of warp w % 4 and column half w / 4 of the dS tile and of dk and dv
//               (half the accumulators; the warps w, w + 4 both form the 16 x 64 intra-chunk scores of their rows)
//   DKDV_ROLES  8 warps; warp w: the rows of warp w % 4 and column half w / 4 of the dS tile; warps 0-3 form dv,
//               warps 4-7 dk (all 64 columns each: every product is done once, as with DKDV_ROWS)
enum : int { DKDV_ROWS = 0, DKDV_COLS = 1, DKDV_ROLES = 2 };
// tc_bwd_dkdv's WHICH beside 0 (dk and dv), 1 (dk tiles), 2 (dv tiles): dq, dk and dv in one walk (head dims 64,
// DKDV_ROWS, causal), the state before each chunk read from the forward's per-chunk states (tc_fwd's STORE)
enum : int { DKDV_DQ = 3 };
// The dq-folded walker's d log_decay anchors (anc != nullptr, dk/dv mode "anchor"): per chunk, one float per warp,
// anc[n][chunk][warp] (chunks numbered as tc_fwd's STORE numbers them), summed by tc_dg
enum : int { ANC_PARTS = 4 };
__host__ __device__ constexpr int dkdv_warps(int layout) { return layout == DKDV_ROWS ? 4 : 8; }

// The blocks per SM tc_bwd_dkdv asks ptxas for (__launch_bounds__' second argument; 0: no request -- an explicit
// 1 is not the same: it took the fused 4-warp float16 kernel from 162 to 184 registers).  At head dims (64, 64),
// 16-bit inputs, one stage: the 8-warp layouts ask for 2 blocks (<= 128 registers, 16 warps per SM); the
// separate dk and dv kernels (WHICH 1, 2: cupy dkdv mode "split") for DKDV_SPLIT_MIN_BLOCKS.  Everything else:
// none (the fused 4-warp kernel spills 800+ bytes at 128 registers: docs/kernels/decayed.md step 4) -- except
// the fused 4-warp float32 3xTF32 kernel (SPLIT 3), which asks for the 2 blocks its 91 KB of shared memory allow
// anyway: unasked, ptxas (NVRTC 12.9) gives it 175 registers and issues the next trip's loads of two mma loops
// 50-70 instructions ahead instead of ~200; asked, 212 and e119910's schedule (docs/kernels/linear.md, "The
// backward's share").  TF32 (SPLIT 1) keeps its 168 (asked, 206).  The dq-folded kernel (WHICH DKDV_DQ) in float32
// (110 KB of shared memory: 2 blocks per SM) asks for 2 as well: 212 registers for both splits (unasked: 3xTF32 178,
// TF32 168 with 8 bytes spilled); 16-bit: no request (167 / 168 registers, 3 blocks per SM as the fused kernel).
constexpr int DKDV_SPLIT_MIN_BLOCKS = 4;
template <typename T, int DKP, int DVP, int SPLIT, int WHICH, int LAYOUT, int STAGES>
__host__ __device__ constexpr int dkdv_min_blocks() {
    return !(DKP == 64 && DVP == 64 && STAGES == 1) ? 0
           : sizeof(T) != 2 ? ((SPLIT == 3 && WHICH == 0 && LAYOUT == DKDV_ROWS) || WHICH == DKDV_DQ ? 2 : 0)
           : LAYOUT != DKDV_ROWS ? 2 : (WHICH == 1 || WHICH == 2) ? DKDV_SPLIT_MIN_BLOCKS : 0;
}

}  // namespace tc

// ================================================================================================ forward
// grid (NSEG * ceil(dv / 64), N); dynamic smem: STAGES x (Q, K [C][DKP+8], V [C][72]), H [DKP][72] of T +
// Trailer.  causal: H starts at Hin[n][seg] (nullptr: zeros) and walks the segment; Hend[n][seg] (optional)
// gets the state after it.  Not causal: H = Hin[n][seq] (the sequence's total), o = scale Q H, nothing carried.
template <typename T, int DKP, int SPLIT, int STAGES, int STORE = 0>
__global__ void __launch_bounds__(128, tc::walk_min_blocks<T, DKP, STAGES>()) tc_fwd(const T* __restrict__ q, const T* __restrict__ k,
        const T* __restrict__ v, const void* __restrict__ g, T* __restrict__ o, const float* __restrict__ Hin,
        float* __restrict__ Hend, const int* __restrict__ seg_t0, const int* __restrict__ seg_t1,
        const int* __restrict__ seg_seq, int T_, int dk, int dv, int NSEG, int nseq, float scale, int causal,
        int g_kind, T* __restrict__ Hst, float* __restrict__ Hsig, const int* __restrict__ seg_c0) {
    using namespace tc;
    using namespace wbmma;
    constexpr int LDK = DKP + PAD, LDV = BV + PAD, KS = Traits<T>::KS, HMT = DKP / 64;
    constexpr int STAGE = 2 * C * LDK + C * LDV;                 // one stage: Q, K, V
    constexpr bool PAIRS = STORE != 0 && state_pairs<T>();       // STORE also writes H's lo tiles (decayed)
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = reinterpret_cast<T*>(smem_raw);
    T* sH = stages + STAGES * STAGE;                             // (PAIRS: its lo tile after it)
    Trailer* tr = reinterpret_cast<Trailer*>(sH + (PAIRS ? 2 : 1) * DKP * LDV);
    const bool decay = g != nullptr;
    const int ntv = (dv + BV - 1) / BV;
    const int vt = blockIdx.x % ntv, s = blockIdx.x / ntv, n = blockIdx.y;
    const int c0 = vt * BV, w = threadIdx.x >> 5, hm0 = (DKP / 4) * w;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_, E = (long long)dk * dv;
    float H[HMT][8][4];
    state_load(H, causal ? (Hin ? Hin + ((long long)n * NSEG + s) * E : nullptr)
                         : Hin + ((long long)n * nseq + seg_seq[s]) * E, hm0, 0, c0, dk, dv);
    const int nch = (t1 - t0 + C - 1) / C;
    auto issue = [&](int j, int st) {                              // chunk j's tiles -> stage st
        T* sQ = stages + st * STAGE;
        const long long row0 = nT + t0 + C * j;
        const int nrow = min(C, t1 - (t0 + C * j));
        load_tile<T, DKP>(sQ, LDK, q + row0 * dk, dk, nrow, 0, dk);
        if (causal) {
            load_tile<T, DKP>(sQ + C * LDK, LDK, k + row0 * dk, dk, nrow, 0, dk);
            load_tile<T, BV>(sQ + 2 * C * LDK, LDV, v + row0 * dv, dv, nrow, c0, dv);
        }
    };
    auto grows = [&](int j) { return grows_at(g, g_kind, nT + t0 + C * j, min(C, t1 - (t0 + C * j))); };
    Walk<STAGES> walk(nch, causal && decay, tr, issue, grows);
    for (int j = 0; j < nch; ++j) {
        const int cs = t0 + C * j, nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        T* sQ = stages + (j % STAGES) * STAGE;
        T* sK = sQ + C * LDK;
        T* sV = sK + C * LDK;
        walk.top(j, tr, issue, grows);                             // the previous chunk is done with smem
        const float sigma = state_to_smem<T, HMT, 8, 4, PAIRS>(H, sH, LDV, hm0, tr->red, 0,
                                                               PAIRS && causal && decay ? sH + DKP * LDV : nullptr);
        walk.wait();
        __syncthreads();
        float acc[1][8][4];
        zero(acc);
        gemm_ss<T, SPLIT, 1, 8, false, false>(acc, sQ, LDK, sH, LDV, 16 * w, 0, 0, DKP);          // Q H
        scale_acc_rows(acc, 16 * w, [&](int r) { return scale * sigma * (causal && decay ? tr->e[r] : 1.f); });
        if (causal) {
            float S[1][8][4];
            zero(S);
            gemm_ss<T, SPLIT, 1, 8, false, true>(S, sQ, LDK, sK, LDK, 16 * w, 0, 0, DKP, 0, w + 1);   // Q K^T
            AFrags<T, 8> P;
            intra_frags<T, true>(P, S, 16 * w, tr, decay, scale);
            gemm_rs<T, SPLIT, 8, AFrags<T, 8>::N, false>(acc[0], P.f, sV, LDV, 0, 0, (16 * w + 16) / KS);  // + P V
        }
        store_rows<T, 8>(acc[0], o + row0 * dv, dv, 16 * w, nrow, c0, dv);
        if constexpr (STORE != 0) {                                // the state before the chunk, as sH holds it
            if (causal) {
                const long long at = ((long long)n * seg_c0[NSEG] + seg_c0[s] + j) * ntv + vt;
                tile_to_global<T, DKP>(sH, LDV, Hst + at * (DKP * BV));
                if (threadIdx.x == 0) Hsig[at] = sigma;
                if constexpr (PAIRS) {                             // the lo tiles after every hi tile
                    const long long lo = (long long)gridDim.y * seg_c0[NSEG] * ntv;
                    if (decay) tile_to_global<T, DKP>(sH + DKP * LDV, LDV, Hst + (lo + at) * (DKP * BV));
                }
            }
        }
        if (causal && (j + 1 < nch || Hend)) {                    // H <- e^{b_last} H + K^T diag(u) V
            if (decay) {                                           // u weighs K^T's fragments in registers
                scale_acc(H, tr->e[C - 1]);
                gemm_ss<T, SPLIT, HMT, 8, true, false>(H, sK, LDK, sV, LDV, hm0, 0, 0, C, 0, 4, KWeights<T>{tr->u, 1.f});
            } else {
                gemm_ss<T, SPLIT, HMT, 8, true, false>(H, sK, LDK, sV, LDV, hm0, 0, 0, C);
            }
        }
    }
    if (causal && Hend) state_store(H, Hend + ((long long)n * NSEG + s) * E, hm0, 0, c0, dk, dv);
}

// ================================================================================================ segment states
// grid (NSEG * ceil(dy / 64), N); smem: STAGES x (X [C][DXP+8], Y [C][72]) of T + Trailer.
//   forward (REV false, x = k, y = v):  E = sum over the segment's chunks, in order, E <- e^{b_last} E + X^T diag(u) Y
//   REV (x = q, y = do):                 the same over the chunks in reverse with weights wscale e^{b_t}
// E: (N, NSEG, dx, dy) fp32; gam: (N, NSEG) the segment's total log decay (decay only).
template <typename T, int DXP, bool REV, int SPLIT, int STAGES>
__global__ void __launch_bounds__(128) tc_seg_state(const T* __restrict__ x, const T* __restrict__ y,
        const void* __restrict__ g, float* __restrict__ Eout, float* __restrict__ gam,
        const int* __restrict__ seg_t0, const int* __restrict__ seg_t1, int T_, int dx, int dy, int NSEG,
        float wscale, int g_kind) {
    using namespace tc;
    using namespace wbmma;
    constexpr int LDX = DXP + PAD, LDY = BV + PAD, HMT = DXP / 64;
    constexpr int STAGE = C * LDX + C * LDY;                     // one stage: X, Y
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = reinterpret_cast<T*>(smem_raw);
    Trailer* tr = reinterpret_cast<Trailer*>(stages + STAGES * STAGE);
    const bool decay = g != nullptr;
    const int nty = (dy + BV - 1) / BV;
    const int yt = blockIdx.x % nty, s = blockIdx.x / nty, n = blockIdx.y;
    const int c0 = yt * BV, w = threadIdx.x >> 5, hm0 = (DXP / 4) * w;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_;
    float Es[HMT][8][4];
    zero(Es);
    double gsum = 0.0;
    const int nch = (t1 - t0 + C - 1) / C;
    auto start = [&](int j) { return t0 + C * (REV ? nch - 1 - j : j); };    // chunk j of the walk
    auto issue = [&](int j, int st) {
        T* sX = stages + st * STAGE;
        const int cs = start(j), nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        load_tile<T, DXP>(sX, LDX, x + row0 * dx, dx, nrow, 0, dx);
        load_tile<T, BV>(sX + C * LDX, LDY, y + row0 * dy, dy, nrow, c0, dy);
    };
    auto grows = [&](int j) { return grows_at(g, g_kind, nT + start(j), min(C, t1 - start(j))); };
    Walk<STAGES> walk(nch, decay, tr, issue, grows);
    for (int j = 0; j < nch; ++j) {
        T* sX = stages + (j % STAGES) * STAGE;
        T* sY = sX + C * LDX;
        walk.top(j, tr, issue, grows);
        walk.wait();
        __syncthreads();
        const float e0 = decay && REV ? weight_base(tr) : 1.f;   // REV: e^b relative to the chunk's first row
        if (decay) {
            gsum += logdecay_at(tr, C - 1);
            scale_acc(Es, tr->e[C - 1] / e0);
        }
        if (decay || wscale != 1.f)                                // the weights on X^T's fragments
            gemm_ss<T, SPLIT, HMT, 8, true, false>(Es, sX, LDX, sY, LDY, hm0, 0, 0, C, 0, 4,
                                                   KWeights<T>{decay ? (REV ? tr->e : tr->u) : nullptr, wscale / e0});
        else
            gemm_ss<T, SPLIT, HMT, 8, true, false>(Es, sX, LDX, sY, LDY, hm0, 0, 0, C);
        if (e0 != 1.f) scale_acc(Es, e0);
    }
    state_store(Es, Eout + ((long long)n * NSEG + s) * dx * dy, hm0, 0, c0, dx, dy);
    if (decay && gam && yt == 0 && threadIdx.x == 0) gam[(long long)n * NSEG + s] = (float)gsum;
}

// grid (ceil(E / 256), nseq, N), block 256: chain the segments of each sequence, one state element per thread.
//   forward: Hout[s] = the state before segment s (from init[n][seq] or 0); fin[n][seq] = the state after all.
//   REV:     Hout[s] = the gradient of the state after segment s (from init = dS_T or 0), walking backwards;
//            fin[n][seq] = the gradient of the state before the sequence (dS0).
template <bool REV>
__global__ void __launch_bounds__(256) tc_seg_scan(const float* __restrict__ Eseg, const float* __restrict__ gam,
        const float* __restrict__ init, float* __restrict__ Hout, float* __restrict__ fin,
        const int* __restrict__ seq_seg, int NSEG, int nseq, long long E) {
    const long long e = (long long)blockIdx.x * 256 + threadIdx.x;
    const int qs = blockIdx.y, n = blockIdx.z;
    if (e >= E) return;
    const int s0 = seq_seg[qs], s1 = seq_seg[qs + 1];
    float h = init ? init[((long long)n * nseq + qs) * E + e] : 0.f;
    for (int j = 0; j < s1 - s0; ++j) {
        const int s = REV ? s1 - 1 - j : s0 + j;
        const long long at = ((long long)n * NSEG + s) * E + e;
        Hout[at] = h;
        h = (gam ? __expf(gam[(long long)n * NSEG + s]) : 1.f) * h + Eseg[at];
    }
    if (fin) fin[((long long)n * nseq + qs) * E + e] = h;
}

// ================================================================================================ backward: dq
// grid (NSEG * ceil(dk / 64), N); smem: STAGES x (dO, V [C][DVP+8], K, Q [C][72] (this block's 64 dk
// columns)), H [64][DVP+8] of T + Trailer.  H: rows of this dk tile, all dv columns, walked forwards as in tc_fwd.
// rq (decay only; nullptr: not wanted): (ceil(dk/64), N, T) partial row dots q.dq of this tile.
// ESUM (causal calls of several segments; cupy dk/dv mode "dqrev"): the block also forms its segment's REV sum for
// its dk rows -- what tc_seg_state<.., REV = true, ..> writes, E_s = sum over the segment's chunks c of
// e^{B_c} Q_c^T diag(scale e^{b_t}) dO_c (B_c the log decay from the segment's start to chunk c's) -- and writes it
// to Eout (N, NSEG, dk, dv) fp32, so that pass is not run.  The walk is forwards, so chunk c's rows are weighed by
// e^{B_c + b_t} relative to the segment's first row (see the E update below; docs/kernels/linear.md "The REV sums in
// the dq walker").
template <typename T, int DVP, int SPLIT, int STAGES, bool ESUM = false>
__global__ void __launch_bounds__(128, tc::walk_min_blocks<T, DVP, STAGES, ESUM>()) tc_bwd_dq(const T* __restrict__ q,
        const T* __restrict__ k,
        const T* __restrict__ v, const void* __restrict__ g, const T* __restrict__ dout, T* __restrict__ dq,
        float* __restrict__ rq, const float* __restrict__ Hin, const int* __restrict__ seg_t0,
        const int* __restrict__ seg_t1, const int* __restrict__ seg_seq, int T_, int dk, int dv, int NSEG,
        int nseq, float scale, int causal, int g_kind, float* __restrict__ Eout) {
    using namespace tc;
    using namespace wbmma;
    constexpr int LDV = DVP + PAD, LDT = BV + PAD, KS = Traits<T>::KS, HNT = DVP / 8;
    constexpr int STAGE = 2 * C * LDV + 2 * C * LDT;             // one stage: dO, V, K, Q
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = reinterpret_cast<T*>(smem_raw);
    T* sH = stages + STAGES * STAGE;
    Trailer* tr = reinterpret_cast<Trailer*>(sH + BV * LDV);
    const bool decay = g != nullptr;
    const int ntk = (dk + BV - 1) / BV;
    const int kt = blockIdx.x % ntk, s = blockIdx.x / ntk, n = blockIdx.y, N = gridDim.y;
    const int k0 = kt * BV, w = threadIdx.x >> 5;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_, E = (long long)dk * dv;
    float H[1][HNT][4];
    state_load(H, causal ? (Hin ? Hin + ((long long)n * NSEG + s) * E : nullptr)
                         : Hin + ((long long)n * nseq + seg_seq[s]) * E, 16 * w, k0, 0, dk, dv);
    const bool esum = ESUM && causal;                              // (the host launches ESUM causal only)
    float Es[1][ESUM ? HNT : 2][4];                                // ESUM: the REV sum (this dk tile's rows), / base
    if constexpr (ESUM) zero(Es);
    RevWeights rw;                                                 // ESUM: the chunks' weights, the base (below)
    const int nch = (t1 - t0 + C - 1) / C;
    auto issue = [&](int j, int st) {                              // chunk j's tiles -> stage st
        T* sO = stages + st * STAGE;
        const long long row0 = nT + t0 + C * j;
        const int nrow = min(C, t1 - (t0 + C * j));
        load_tile<T, DVP>(sO, LDV, dout + row0 * dv, dv, nrow, 0, dv);
        if (causal) {
            load_tile<T, DVP>(sO + C * LDV, LDV, v + row0 * dv, dv, nrow, 0, dv);
            load_tile<T, BV>(sO + 2 * C * LDV, LDT, k + row0 * dk, dk, nrow, k0, dk);
            if (decay || ESUM) load_tile<T, BV>(sO + 2 * C * LDV + C * LDT, LDT, q + row0 * dk, dk, nrow, k0, dk);
        }
    };
    auto grows = [&](int j) { return grows_at(g, g_kind, nT + t0 + C * j, min(C, t1 - (t0 + C * j))); };
    Walk<STAGES> walk(nch, causal && decay, tr, issue, grows);
    for (int j = 0; j < nch; ++j) {
        const int cs = t0 + C * j, nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        T* sO = stages + (j % STAGES) * STAGE;
        T* sV = sO + C * LDV;
        T* sK = sV + C * LDV;
        T* sQ = sK + C * LDT;
        walk.top(j, tr, issue, grows);
        const float sigma = state_to_smem<T, 1, HNT>(H, sH, LDV, 16 * w, tr->red);
        walk.wait();
        __syncthreads();
        float acc[1][8][4];
        zero(acc);
        gemm_ss<T, SPLIT, 1, 8, false, true>(acc, sO, LDV, sH, LDV, 16 * w, 0, 0, DVP);        // dO H^T
        scale_acc_rows(acc, 16 * w, [&](int r) { return scale * sigma * (causal && decay ? tr->e[r] : 1.f); });
        if (causal) {
            float S[1][8][4];
            zero(S);
            gemm_ss<T, SPLIT, 1, 8, false, true>(S, sO, LDV, sV, LDV, 16 * w, 0, 0, DVP, 0, w + 1);  // dO V^T
            AFrags<T, 8> P;
            intra_frags<T, true>(P, S, 16 * w, tr, decay, scale);
            gemm_rs<T, SPLIT, 8, AFrags<T, 8>::N, false>(acc[0], P.f, sK, LDT, 0, 0, (16 * w + 16) / KS);  // + dP K
        }
        store_rows<T, 8>(acc[0], dq + row0 * dk, dk, 16 * w, nrow, k0, dk);
        if (causal && decay && rq)                                 // row dots q.dq of this tile
            row_dots<T>(acc[0], sQ, LDT, 16 * w, nrow, rq + ((long long)kt * N + n) * T_ + cs);
        if constexpr (ESUM) {                                      // Es += Q^T diag(scale e^{B_c + b_t - beta}) dO
            if (esum) {
                // REV's weights are e^{b_t} relative to each chunk's first row, e^{b_0} and the later chunks'
                // e^{b_last} applied in float32; forwards, one base for the segment (RevWeights): chunk 0's
                // fragment weights are REV's (scale e^{b_t} / base), chunk c's scale e^{b_t} e^{B_c - beta}
                const float mul = decay ? rw.next(tr, j, scale) : scale;
                if (decay || scale != 1.f)
                    gemm_ss<T, SPLIT, 1, HNT, true, false>(Es, sQ, LDT, sO, LDV, 16 * w, 0, 0, C, 0, HNT / 2,
                                                           KWeights<T>{decay ? tr->e : nullptr, mul});
                else
                    gemm_ss<T, SPLIT, 1, HNT, true, false>(Es, sQ, LDT, sO, LDV, 16 * w, 0, 0, C);
            }
        }
        if (causal && j + 1 < nch) {                              // H (this dk tile) <- e^{b_last} H + K^T diag(u) V
            if (decay) {                                           // u weighs K^T's fragments in registers
                scale_acc(H, tr->e[C - 1]);
                gemm_ss<T, SPLIT, 1, HNT, true, false>(H, sK, LDT, sV, LDV, 16 * w, 0, 0, C, 0, HNT / 2,
                                                       KWeights<T>{tr->u, 1.f});
            } else {
                gemm_ss<T, SPLIT, 1, HNT, true, false>(H, sK, LDT, sV, LDV, 16 * w, 0, 0, C);
            }
        }
    }
    if constexpr (ESUM) {
        if (esum) {
            if (rw.base != 1.f) scale_acc(Es, rw.base);
            state_store(Es, Eout + ((long long)n * NSEG + s) * E, 16 * w, k0, 0, dk, dv);
        }
    }
}

// ================================================================================================ backward: dk, dv
// WHICH 0: dk and dv together (DKP = DVP = 64, one block per segment); 1: dk for one 64-column tile of dk;
// 2: dv for one 64-column tile of dv.  The block holds the dS tile it needs (rows: dk, columns: dv):
// WHICH 0: all x all, 1: its dk rows x all dv, 2: all dk x its dv columns, and walks the chunks backwards.
// LAYOUT (tc::DKDV_ROWS, DKDV_COLS, DKDV_ROLES; the 8-warp ones for WHICH 0 only): which warp holds which part
// of the dS tile and forms which part of dk and dv.  DKDV_COLS: the two column halves' k.dk row dots meet in
// shared memory (C floats after the Trailer).
// smem: STAGES x (Q, K [C][DKP+8], V, dO [C][DVP+8]), dS [R][CC+8] of T + Trailer (+ C floats with DKDV_COLS)
// (V is not loaded for WHICH 2).
// causal: dS starts at dSin[n][seg] (the gradient of the state after the segment; nullptr: zeros);
// dSstart[n][seg] (optional) gets the gradient of the state before it.  Not causal: dS = dSin[n][seq].
// rk (decay only; nullptr: not wanted): (ceil(dk/64), N, T) partial row dots k.dk.
template <typename T, int DKP, int DVP, int SPLIT, int WHICH, int LAYOUT, int STAGES>
__global__ void __launch_bounds__(32 * tc::dkdv_warps(LAYOUT), tc::dkdv_min_blocks<T, DKP, DVP, SPLIT, WHICH, LAYOUT, STAGES>())
tc_bwd_dkdv(
        const T* __restrict__ q, const T* __restrict__ k,
        const T* __restrict__ v, const void* __restrict__ g, const T* __restrict__ dout, T* __restrict__ dkout,
        T* __restrict__ dvout, float* __restrict__ rk, const float* __restrict__ dSin, float* __restrict__ dSstart,
        const int* __restrict__ seg_t0, const int* __restrict__ seg_t1, const int* __restrict__ seg_seq, int T_,
        int dk, int dv, int NSEG, int nseq, float scale, int causal, int g_kind, T* __restrict__ dqout,
        float* __restrict__ rq, const T* __restrict__ Hst, const float* __restrict__ Hsig,
        const int* __restrict__ seg_c0, float* __restrict__ anc) {
    using namespace tc;
    using namespace wbmma;
    static_assert((WHICH != 0 && WHICH != DKDV_DQ) || (DKP == 64 && DVP == 64), "the fused dk/dv kernel holds a 64 x 64 dS");
    static_assert(WHICH != DKDV_DQ || dkdv_warps(LAYOUT) == ANC_PARTS, "one anchor part per warp");
    static_assert(LAYOUT == DKDV_ROWS || ((LAYOUT == DKDV_COLS || LAYOUT == DKDV_ROLES) && WHICH == 0),
                  "the 8-warp layouts: the fused kernel only");
    constexpr bool DQ = WHICH == DKDV_DQ;                         // dq folded in: the forward's per-chunk states
    constexpr int WARPS = dkdv_warps(LAYOUT), NTH = 32 * WARPS, CH = WARPS / 4;   // CH: column parts of dS
    constexpr int OCH = LAYOUT == DKDV_COLS ? 2 : 1;              // column parts of the dk, dv tiles
    constexpr int R = WHICH == 1 ? BV : DKP, CC = WHICH == 2 ? BV : DVP;
    constexpr int SMT = R / 64, SNT = CC / CH / 8, ONT = BV / OCH / 8;
    constexpr int LDK = DKP + PAD, LDV = DVP + PAD, LDS = CC + PAD, KS = Traits<T>::KS;
    constexpr bool PAIRS = DQ && state_pairs<T>();               // bfloat16: H and dS as hi + lo pairs (decayed)
    constexpr int NP = PAIRS ? 2 : 1;
    constexpr int STAGE = 2 * C * LDK + 2 * C * LDV + (DQ ? NP * DKP * LDV : 0);   // one stage: Q, K, V, dO (, H (, lo))
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = reinterpret_cast<T*>(smem_raw);
    T* sS = stages + STAGES * STAGE;                             // (PAIRS: its lo tile after it)
    Trailer* tr = reinterpret_cast<Trailer*>(sS + NP * R * LDS);
    float* hsig = reinterpret_cast<float*>(tr + 1);              // DQ: the sigma of each stage's H tile
    const bool decay = g != nullptr;
    const bool pairs = PAIRS && decay;                           // (tc_fwd's STORE wrote the lo tiles)
    const bool anchors = DQ && decay && anc != nullptr;          // d log_decay's chunk anchors wanted (causal)
    const int nt_ = WHICH == 1 ? (dk + BV - 1) / BV : WHICH == 2 ? (dv + BV - 1) / BV : 1;
    const int tile = blockIdx.x % nt_, s = blockIdx.x / nt_, n = blockIdx.y, N = gridDim.y;
    const int kr0 = WHICH == 1 ? tile * BV : 0, vc0 = WHICH == 2 ? tile * BV : 0;
    const int w = threadIdx.x >> 5, rw = CH == 1 ? w : w & 3, ch = CH == 1 ? 0 : w >> 2;
    const int sm0 = (R / 4) * rw, sn0 = (CC / CH) * ch;         // the warp's part of the dS tile
    const int m0 = 16 * rw, on0 = OCH == 1 ? 0 : (BV / OCH) * ch;  // ... and of the dk, dv tiles
    const bool dv_warp = LAYOUT != DKDV_ROLES || ch == 0, dk_warp = LAYOUT != DKDV_ROLES || ch == 1;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_, E = (long long)dk * dv;
    float dS[SMT][SNT][4];
    state_load(dS, causal ? (dSin ? dSin + ((long long)n * NSEG + s) * E : nullptr)
                          : dSin + ((long long)n * nseq + seg_seq[s]) * E, sm0, kr0, vc0, dk, dv, sn0);
    const int nch = (t1 - t0 + C - 1) / C;
    auto start = [&](int i) { return t0 + C * (nch - 1 - i); };    // chunk i of the (backward) walk
    auto issue = [&](int i, int st) {                              // its tiles -> stage st
        T* sQ = stages + st * STAGE;
        const int cs = start(i), nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        load_tile<T, DKP, NTH>(sQ, LDK, q + row0 * dk, dk, nrow, 0, dk);
        load_tile<T, DKP, NTH>(sQ + C * LDK, LDK, k + row0 * dk, dk, nrow, 0, dk);
        if (WHICH != 2) load_tile<T, DVP, NTH>(sQ + 2 * C * LDK, LDV, v + row0 * dv, dv, nrow, 0, dv);
        load_tile<T, DVP, NTH>(sQ + 2 * C * LDK + C * LDV, LDV, dout + row0 * dv, dv, nrow, 0, dv);
        if constexpr (DQ) {                                        // the state before the chunk (tc_fwd's STORE)
            const long long at = (long long)n * seg_c0[NSEG] + seg_c0[s] + (nch - 1 - i);
            load_tile<T, BV, NTH>(sQ + 2 * C * LDK + 2 * C * LDV, LDV, Hst + at * (DKP * BV), BV, C, 0, BV);
            if (threadIdx.x == 0) cp_async4(hsig + st, Hsig + at, 4);
            if (pairs) {                                           // ... and its lo tile (after every hi tile)
                const long long lo = (long long)gridDim.y * seg_c0[NSEG];
                load_tile<T, BV, NTH>(sQ + 2 * C * LDK + 2 * C * LDV + DKP * LDV, LDV, Hst + (lo + at) * (DKP * BV),
                                      BV, C, 0, BV);
            }
        }
    };
    auto grows = [&](int i) { return grows_at(g, g_kind, nT + start(i), min(C, t1 - start(i))); };
    Walk<STAGES> walk(nch, causal && decay, tr, issue, grows);
    for (int i = 0; i < nch; ++i) {
        const int j = nch - 1 - i, cs = start(i), nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        T* sQ = stages + (i % STAGES) * STAGE;
        T* sK = sQ + C * LDK;
        T* sV = sK + C * LDK;
        T* sO = sV + C * LDV;
        walk.top(i, tr, issue, grows);
        const float sigma = state_to_smem<T, SMT, SNT, WARPS, PAIRS>(dS, sS, LDS, sm0, tr->red, sn0,
                                                                     pairs ? sS + R * LDS : nullptr);
        walk.wait();
        __syncthreads();
        auto inter = [&](int r) { return sigma * (causal && decay ? tr->u[r] : 1.f); };
        if (WHICH != 1 && dv_warp) {                               // dv (columns vc0 + on0 ..)
            float acc[1][ONT][4];
            zero(acc);
            gemm_ss<T, SPLIT, 1, ONT, false, false>(acc, sK, LDK, sS, LDS, m0, on0, 0, DKP);     // K dS
            scale_acc_rows(acc, m0, inter);
            if (causal) {
                float S[1][8][4];
                zero(S);
                gemm_ss<T, SPLIT, 1, 8, false, true>(S, sK, LDK, sQ, LDK, m0, 0, 0, DKP, rw, 4);  // K Q^T
                AFrags<T, 8> P;
                intra_frags<T, false>(P, S, m0, tr, decay, scale);
                gemm_rs<T, SPLIT, ONT, AFrags<T, 8>::N, false>(acc[0], P.f, sO + vc0 + on0, LDV, 0, m0 / KS, C / KS);
            }
            store_rows<T, ONT>(acc[0], dvout + row0 * dv, dv, m0, nrow, vc0 + on0, dv);
        }
        if (WHICH != 2 && dk_warp) {                               // dk (columns kr0 + on0 ..)
            float acc[1][ONT][4];
            zero(acc);
            gemm_state<T, SPLIT, 1, ONT, false, true, PAIRS>(acc, sV, LDV, sS, LDS, m0, on0, DVP, pairs, R * LDS);  // V dS^T
            scale_acc_rows(acc, m0, inter);
            if (causal) {
                float S[1][8][4];
                zero(S);
                gemm_ss<T, SPLIT, 1, 8, false, true>(S, sV, LDV, sO, LDV, m0, 0, 0, DVP, rw, 4);  // V dO^T
                AFrags<T, 8> P;
                intra_frags<T, false>(P, S, m0, tr, decay, scale);
                gemm_rs<T, SPLIT, ONT, AFrags<T, 8>::N, false>(acc[0], P.f, sQ + kr0 + on0, LDK, 0, m0 / KS, C / KS);
            }
            store_rows<T, ONT>(acc[0], dkout + row0 * dk, dk, m0, nrow, kr0 + on0, dk);
            if (causal && decay && rk) {                           // row dots k.dk of this tile
                float* out = rk + ((long long)tile * N + n) * T_ + cs;
                if constexpr (OCH == 1) {
                    row_dots<T>(acc[0], sK + kr0, LDK, m0, nrow, out);
                } else {                                           // the column halves add up in shared memory
                    float* part = reinterpret_cast<float*>(tr + 1);
                    const int gq = (threadIdx.x & 31) >> 2, tq = threadIdx.x & 3;
                    float d[2];
#pragma unroll
                    for (int h = 0; h < 2; ++h) d[h] = row_dot<T, ONT>(acc[0], sK + kr0 + on0, LDK, m0, h);
                    if (ch == 1 && tq == 0) part[m0 + gq] = d[0], part[m0 + gq + 8] = d[1];
                    __syncthreads();                               // (read before the next chunk's top barrier)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        if (ch == 0 && tq == 0 && m0 + gq + 8 * h < nrow) out[m0 + gq + 8 * h] = d[h] + part[m0 + gq + 8 * h];
                }
            }
        }
        if constexpr (DQ) {                                    // dq = scale e^b dO H^T + scale mask(e^{b_t-b_i} dO V^T) K
            const T* sH = sO + C * LDV;                            // causal only (the host folds causal calls)
            float acc[1][8][4];
            zero(acc);
            gemm_state<T, SPLIT, 1, 8, false, true, PAIRS>(acc, sO, LDV, sH, LDV, m0, 0, DVP, pairs, DKP * LDV);  // dO H^T
            const float hs = scale * hsig[i % STAGES];
            scale_acc_rows(acc, m0, [&](int r) { return hs * (decay ? tr->e[r] : 1.f); });
            float S[1][8][4];
            zero(S);
            gemm_ss<T, SPLIT, 1, 8, false, true>(S, sO, LDV, sV, LDV, m0, 0, 0, DVP, 0, rw + 1);  // dO V^T
            AFrags<T, 8> P;
            intra_frags<T, true>(P, S, m0, tr, decay, scale);
            gemm_rs<T, SPLIT, 8, AFrags<T, 8>::N, false>(acc[0], P.f, sK, LDK, 0, 0, (m0 + 16) / KS);  // + dP K
            store_rows<T, 8>(acc[0], dqout + row0 * dk, dk, m0, nrow, 0, dk);
            if (decay && rq) row_dots<T>(acc[0], sQ, LDK, m0, nrow, rq + (long long)n * T_ + cs);   // q.dq
        }
        if (causal && (j > 0 || dSstart || anchors)) {            // dS <- e^{b_last} dS + Q^T diag(scale e^b) dO
            const float e0 = decay ? weight_base(tr) : 1.f;        // e^b relative to the chunk's first row
            if (decay) scale_acc(dS, tr->e[C - 1] / e0);           // the weights on Q^T's fragments, in registers
            gemm_ss<T, SPLIT, SMT, SNT, true, false>(dS, sQ + kr0, LDK, sO + vc0, LDV, sm0, sn0, 0, C, 0, SNT / 2,
                                                     KWeights<T>{decay ? tr->e : nullptr, scale / e0});
            if (e0 != 1.f) scale_acc(dS, e0);
        }
        if constexpr (DQ) {                                        // chunk anchor d log_decay[c0] = <H, dS> (the state
            if (anchors) {                                         // before the chunk, the gradient of that state)
                const T* sH = sO + C * LDV;
                float a = 0.f;
                for_each(dS, sm0, sn0, [&](float& x, int r, int c) {
                    float h = to_f32(sH[r * LDV + c]);
                    if constexpr (PAIRS) {
                        if (pairs) h += to_f32(sH[(DKP + r) * LDV + c]);      // H's lo tile
                    }
                    a += x * h;
                });
                a = warp_sum(a);
                if ((threadIdx.x & 31) == 0) {
                    const int at = (n * seg_c0[NSEG] + seg_c0[s] + j) * ANC_PARTS + w;   // < N T / 16
                    anc[at] = a * hsig[i % STAGES];
                }
            }
        }
    }
    if (causal && dSstart) state_store(dS, dSstart + ((long long)n * NSEG + s) * E, sm0, kr0, vc0, dk, dv, sn0);
}

// ================================================================================================ d log_decay
// dg_t = sum_{t' >= t in the sequence} dG_t' + cst[n][seq],  dG_t = sum_i rq[i][n][t] - sum_i rk[i][n][t]
// (cst: the final-state term <dS_T, S_T>, or nothing); zero_first: the sequence's first entry is exactly 0
// (no initial state: g_0 never enters a difference G_t - G_i).  Accumulated in float64.  Two launches over
// the segment table (grid (NSEG, N), 256 threads: every segment of every row a block):
//   tc_dg_part  part[n][s] = sum of dG over segment s
//   tc_dg<OT>   carry = cst + the parts of the later segments of the same sequence (a block sum); then the segment's own
//               suffix sums, 256 tokens at a time from its end (a block scan), + carry; written as OT (the
//               caller's dtype: float, wb_half, wb_bf16; rounded from float32, as a cast after it would).
//               With anc (the chunk anchors of tc_bwd_dkdv's DKDV_DQ walk, seg_c0 its chunk numbering): no
//               tc_dg_part; each chunk's tokens start from the next chunk's anchor (cst past the sequence's end)
//               and add the chunk's own suffix sums (a warp per chunk), so no sum runs over more than 64 tokens.
namespace tc {
enum : int { DG_THREADS = 256 };
__device__ __forceinline__ double dg_term(const float* __restrict__ rq, int ntq, const float* __restrict__ rk,
                                          int ntk, long long nt, long long NT, int t) {
    double x = 0.0;
    for (int i = 0; i < ntq; ++i) x += rq[i * NT + nt + t];
    for (int i = 0; i < ntk; ++i) x -= rk[i * NT + nt + t];
    return x;
}
}  // namespace tc

__global__ void __launch_bounds__(256) tc_dg_part(const float* __restrict__ rq, int ntq, const float* __restrict__ rk,
        int ntk, double* __restrict__ part, const int* __restrict__ seg_t0, const int* __restrict__ seg_t1, int T_,
        int NSEG) {
    __shared__ double wsum[tc::DG_THREADS / 32];
    const int s = blockIdx.x, n = blockIdx.y;
    const long long NT = (long long)gridDim.y * T_, nt = (long long)n * T_;
    double x = 0.0;
    for (int t = seg_t0[s] + threadIdx.x; t < seg_t1[s]; t += tc::DG_THREADS) x += tc::dg_term(rq, ntq, rk, ntk, nt, NT, t);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    if ((threadIdx.x & 31) == 0) wsum[threadIdx.x >> 5] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        double tot = 0.0;
        for (int w = 0; w < tc::DG_THREADS / 32; ++w) tot += wsum[w];
        part[(long long)n * NSEG + s] = tot;
    }
}

template <typename OT>
__global__ void __launch_bounds__(256) tc_dg(const float* __restrict__ rq, int ntq, const float* __restrict__ rk,
        int ntk, OT* __restrict__ dg, const double* __restrict__ part, const int* __restrict__ seg_t0,
        const int* __restrict__ seg_t1, const int* __restrict__ seg_seq, const int* __restrict__ seq_seg,
        const float* __restrict__ cst, int zero_first, int T_, int NSEG, int nseq, const float* __restrict__ anc,
        const int* __restrict__ seg_c0) {
    constexpr int W = tc::DG_THREADS / 32;
    __shared__ double wsum[W];
    const int s = blockIdx.x, n = blockIdx.y, qs = seg_seq[s];
    const long long NT = (long long)gridDim.y * T_, nt = (long long)n * T_;
    const int t0 = seg_t0[s], t1 = seg_t1[s], first = seg_t0[seq_seg[qs]];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    double carry = cst ? (double)cst[(long long)n * nseq + qs] : 0.0;
    if (anc) {         // chunk anchors: token t of chunk m = the next chunk's anchor + sum_{t <= t' < chunk end} dG_t'
        const long long cb = (long long)n * seg_c0[NSEG] + seg_c0[s];          // (past the sequence's end: cst)
        const bool last = s + 1 == seq_seg[qs + 1];
        const int nch = (t1 - t0 + tc::C - 1) / tc::C;
        for (int m = wid; m < nch; m += W) {                       // a warp per chunk, two tokens a lane
            const int c0 = t0 + tc::C * m, ce = min(c0 + tc::C, t1);
            double next = carry;
            if (!(last && ce == t1)) {
                next = 0.0;
#pragma unroll
                for (int p = 0; p < tc::ANC_PARTS; ++p) next += anc[(cb + m + 1) * tc::ANC_PARTS + p];
            }
            const int ta = c0 + 2 * lane, tb = ta + 1;
            const double xa = ta < ce ? tc::dg_term(rq, ntq, rk, ntk, nt, NT, ta) : 0.0;
            const double xb = tb < ce ? tc::dg_term(rq, ntq, rk, ntk, nt, NT, tb) : 0.0;
            double suf = xa + xb;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {                     // inclusive suffix sum over the lanes
                const double y = __shfl_down_sync(0xffffffffu, suf, o);
                if (lane + o < 32) suf += y;
            }
            if (ta < ce) dg[nt + ta] = from_f32<OT>((zero_first && ta == first) ? 0.f : (float)(next + suf));
            if (tb < ce) dg[nt + tb] = from_f32<OT>((float)(next + suf - xa));
        }
        return;
    }
    {   // + the parts of the later segments of the sequence: strided over the threads, then across the warps (one
        // thread summing them in order was a chain of up to NSEG dependent loads: 36 us at 64k, H200 callO)
        double later = 0.0;
        for (int s2 = s + 1 + (int)threadIdx.x; s2 < seq_seg[qs + 1]; s2 += tc::DG_THREADS)
            later += part[(long long)n * NSEG + s2];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) later += __shfl_xor_sync(0xffffffffu, later, o);
        if (lane == 0) wsum[wid] = later;
        __syncthreads();
#pragma unroll
        for (int w = 0; w < W; ++w) carry += wsum[w];
        __syncthreads();                                           // wsum is written again below
    }
    for (int end = t1; end > t0; end -= tc::DG_THREADS) {          // tokens [end - 256, end), from the end
        const int t = end - tc::DG_THREADS + (int)threadIdx.x;
        const bool in = t >= t0;
        double suf = in ? tc::dg_term(rq, ntq, rk, ntk, nt, NT, t) : 0.0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {                         // inclusive suffix sum within the warp
            const double y = __shfl_down_sync(0xffffffffu, suf, o);
            if (lane + o < 32) suf += y;
        }
        if (lane == 0) wsum[wid] = suf;
        __syncthreads();
        double after = carry, tile = 0.0;
#pragma unroll
        for (int w = 0; w < W; ++w) {
            if (w > wid) after += wsum[w];
            tile += wsum[w];
        }
        if (in) dg[nt + t] = from_f32<OT>((zero_first && t == first) ? 0.f : (float)(after + suf));
        carry += tile;
        __syncthreads();                                           // wsum is read before the next tile
    }
}

// ================================================================================================ ZeroS in one pass
// The tensor-core kernels of cupy:chunked_mma_fused (kernels/cupy/zeros.py; derivation, tiles and costs in
// docs/kernels/zeros.md).  ZeroS is o_t = sum_{i in W(t)} r_ti (q_t.k_i) v_i with
//   r_ti = alpha_t e^{s_i - m_t} + beta_t s'_i + gamma_t      (s' = s - c, m the running max; alpha, beta, gamma,
// m per token and sigma, c per head come from the parallel scans of zeros.cu), so three states: F (relative to
// the running max), G' = sum (s'/sigma) k v^T, H = sum k v^T.  Per chunk, with m_ref = m before the chunk (m at
// its first token for the first chunk) and m_end = m at its last token (every exponent below is <= 0):
//   o  = (r o Q K^T) V + diag(alpha e^{m_ref - m}) Q F + diag(beta sigma) Q G' + diag(gamma) Q H
//   F <- e^{m_ref - m_end} F + K^T diag(e^{s - m_end}) V,   G' <- G' + K^T diag(s'/sigma) V,   H <- H + K^T V
// Backward, dP = dO V^T, suffix states A = sum_{t after} alpha_t e^{m_end - m_t} q_t do_t^T, Bs = sum beta q do^T,
// Cs = sum gamma q do^T (all t after the chunk; A relative to m_end):
//   dq = (r o dP) K + diag(alpha e^{m_ref - m}) dO F^T + diag(beta sigma) dO G'^T + diag(gamma) dO H^T
//   dv = (r o S)^T dO + diag(e^{s - m_end}) K A + diag(s') K Bs + K Cs
//   dk = (r o dP)^T Q + diag(e^{s - m_end}) V A^T + diag(s') V Bs^T + V Cs^T
//   ds (direct part) = sum_t S o dP o (alpha_t e^{s_i - m_t} + beta_t) + e^{s - m_end} rowdot(K A, V) + rowdot(K Bs, V)
//   A <- e^{m_ref - m_end} A + Q^T diag(alpha e^{m_ref - m}) dO,   Bs <- Bs + Q^T diag(beta) dO,   Cs likewise
// and the row dots a = do.oF, V = do.oG, Z = do.oH (dgates and the scalar part of ds, zeros.cu) come out of
// the dq sweep: a_t = sum_i e^{s_i - m_t} S dP + e^{m_ref - m_t} q.(F do), V_t = sum_i s'_i S dP + sigma q.(G' do),
// Z_t = sum_i S dP + q.(H do).
// Every block (4 warps) holds its three states as fp32 mma accumulators in tiles of BW = 32 columns of the
// wide side: "key-major" (tz_fwd, tz_bwd_dv): DKP rows x 32 columns (warp w: rows (DKP/4) w ..); "value-major"
// (tz_bwd_dq, tz_bwd_dk): 32 rows x DVP columns (warp w: columns (DVP/4) w ..).  The state operands go to
// shared memory in T each chunk (fp16: each state scaled by its own power of two, as tc::state_to_smem); the
// update's per-token weights scale the narrow operand (a 32-column tile) in shared memory.
// Inputs per token: s (T) and the float32 rows m, alpha, beta, gamma (N, T); per head sigma and c (N).
// States in memory: (N, segments or 1, 3, dk, dv) float32 (F, G', H or A, Bs, Cs).
// cupy:chunked_mma_fused2 launches tz_bwd_dv<..., DKF = true> instead of tz_bwd_dv + tz_bwd_dk: dk is a sum of
// per-dv-tile terms, each formed by that tile's dv walker (see there).
namespace tz {
using namespace tc;
enum : int {
    BW = 32,                       // columns of the wide side per block
    LDW = BW + PAD,                // row stride of the 32-column tiles
};

// per-chunk scalars, after the tiles in shared memory
struct Rows {
    float m[C], al[C], be[C], ga[C];   // per row; rows past the data: alpha = beta = gamma = 0, m = m_end
    float s[C], sc[C];                 // s and s' = s - c (0 past the data)
    float w[3][C];                     // the state update's per-token operand weights (load_stats)
    float red[32];                     // block reductions (states_to_smem)
    float mref, mend;
};

// Blocks per SM each kernel is compiled for: 3 (<= 168 registers) where 16-bit tiles of head dim 64 let three
// blocks share an SM's shared memory; else 2 (float32 tiles fill shared memory at one or two blocks).
template <typename T, int D>
__host__ __device__ constexpr int min_blocks() { return (D == 64 && !wbmma::Traits<T>::F32) ? 3 : 2; }

// e^{a - b} for a <= b; exactly 1 when a == b (also both -inf)
__device__ __forceinline__ float xp(float a, float b) { return a == b ? 1.f : __expf(a - b); }

// Threads 0..C-1: row r of the chunk (rows from row0 = n T + cs, nrow of them).  KEYW: w = (e^{s - m_end},
// s'/sigma, 1) (the key side of F, G', H); else w = (alpha e^{m_ref - m}, beta, gamma) (the query side of A, Bs, Cs).
template <typename T, bool KEYW>
__device__ __forceinline__ void load_stats(Rows* tr, const T* __restrict__ s, const float* __restrict__ m,
        const float* __restrict__ al, const float* __restrict__ be, const float* __restrict__ ga, long long row0,
        int cs, int nrow, float shift, float isig) {
    const int r = threadIdx.x;
    const float mend = m[row0 + nrow - 1], mref = cs > 0 ? m[row0 - 1] : m[row0];
    if (r == 0) {
        tr->mend = mend;
        tr->mref = mref;
    }
    if (r < C) {
        const bool ok = r < nrow;
        const float sv = ok ? to_f32(s[row0 + r]) : 0.f, mr = ok ? m[row0 + r] : mend;
        const float a = ok ? al[row0 + r] : 0.f, b = ok ? be[row0 + r] : 0.f, g = ok ? ga[row0 + r] : 0.f;
        const float sc = ok ? sv - shift : 0.f;
        tr->m[r] = mr;
        tr->s[r] = sv;
        tr->sc[r] = sc;
        tr->al[r] = a;
        tr->be[r] = b;
        tr->ga[r] = g;
        tr->w[0][r] = KEYW ? (ok ? xp(sv, mend) : 0.f) : a * xp(mref, mr);
        tr->w[1][r] = KEYW ? sc * isig : b;
        tr->w[2][r] = KEYW ? (ok ? 1.f : 0.f) : g;
    }
}

// NCOPY tiles dst + j C ld (j < NCOPY) <- diag(w[j]) src (C rows, W columns, row stride ld)
template <typename T, int W, int NCOPY>
__device__ __forceinline__ void weighted_copies(T* dst, const T* src, int ld, const Rows* tr) {
    for (int idx = threadIdx.x; idx < C * W; idx += THREADS) {
        const int r = idx / W, c = idx % W;
        const float x = to_f32(src[r * ld + c]);
#pragma unroll
        for (int j = 0; j < NCOPY; ++j) dst[j * C * ld + r * ld + c] = from_f32<T>(tr->w[j][r] * x);
    }
}

// acc += f(row) x for the warp's 16 rows (tile rows m0..)
template <int NT, typename F>
__device__ __forceinline__ void add_rows(float (&acc)[NT][4], const float (&x)[NT][4], int m0, F f) {
    const int g = (threadIdx.x & 31) >> 2;
    const float f0 = f(m0 + g), f1 = f(m0 + g + 8);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        acc[nt][0] += f0 * x[nt][0];
        acc[nt][1] += f0 * x[nt][1];
        acc[nt][2] += f1 * x[nt][2];
        acc[nt][3] += f1 * x[nt][3];
    }
}

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// d[h] = sum_c x[row][c] y[row][c] for rows m0 + g + 8h of the warp's 16 x 8NT tile x (y: a T tile in shared
// memory, columns from 0); every thread of a row's quad gets the sum.
template <typename T, int NT>
__device__ __forceinline__ void row_dots(float (&d)[2], const float (&x)[NT][4], const T* y, int ld, int m0) {
    const int L = threadIdx.x & 31, g = L >> 2, t = L & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const T* yr = y + (m0 + g + 8 * h) * ld + 2 * t;
        float p = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) p += x[nt][2 * h] * to_f32(yr[8 * nt]) + x[nt][2 * h + 1] * to_f32(yr[8 * nt + 1]);
        d[h] = quad_sum(p);
    }
}

// out[r] <- d for the warp's rows r = m0 + g + 8h < nrow (one thread per row)
__device__ __forceinline__ void store_row_values(float* __restrict__ out, const float (&d)[2], int m0, int nrow) {
    const int L = threadIdx.x & 31;
    if ((L & 3) == 0)
#pragma unroll
        for (int h = 0; h < 2; ++h)
            if (m0 + (L >> 2) + 8 * h < nrow) out[m0 + (L >> 2) + 8 * h] = d[h];
}

// The intra-chunk tile S (the warp's 16 rows, 64 columns) -> r o S on the visible elements, 0 elsewhere.  LOWER:
// rows are queries, columns keys, visible c <= r; else rows are keys, columns queries, visible c >= r.  Before an
// element is weighed, f(nt, e, query, key, e^{s_key - m_query}) sees it (S[0][nt][e] still unweighed).  PAIR: Y
// (a second tile of the same rows and columns) is weighed alike (r o Y), with the weights formed once.
template <bool LOWER, bool PAIR, typename F>
__device__ __forceinline__ void weigh_tiles(float (&S)[1][8][4], float (&Y)[1][8][4], int m0, const Rows* tr, F f) {
    const int L = threadIdx.x & 31, g = L >> 2, t = L & 3;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = m0 + g + 8 * (e >> 1), c = 8 * nt + 2 * t + (e & 1);
            const int qr = LOWER ? r : c, kr = LOWER ? c : r;
            const bool vis = LOWER ? c <= r : c >= r;
            const float ex = xp(tr->s[kr], tr->m[qr]);
            if (vis) f(nt, e, qr, kr, ex);
            if constexpr (PAIR) {
                const float rw = tr->al[qr] * ex + tr->be[qr] * tr->sc[kr] + tr->ga[qr];
                S[0][nt][e] = vis ? rw * S[0][nt][e] : 0.f;
                Y[0][nt][e] = vis ? rw * Y[0][nt][e] : 0.f;
            } else {
                S[0][nt][e] = vis ? (tr->al[qr] * ex + tr->be[qr] * tr->sc[kr] + tr->ga[qr]) * S[0][nt][e] : 0.f;  // a select
            }
        }
}
template <bool LOWER, typename F>
__device__ __forceinline__ void weigh(float (&S)[1][8][4], int m0, const Rows* tr, F f) {
    weigh_tiles<LOWER, false>(S, S, m0, tr, f);
}

// The three states (fp32 fragments: rows m0 + .., columns from 0 of dst) -> their operands in shared memory
// (tile j at dst + j * stride) in T, each divided by sg[j]: 1, except for fp16, where sg[j] is the power of two
// that keeps |X_j| / sg[j] <= 2^14 (as tc::state_to_smem, with one block reduction for the three).  Every
// thread calls it; fp16 synchronises once, and red is next written after the caller's next barrier.
template <typename T, int MT, int NT>
__device__ __forceinline__ void states_to_smem(const float (&X)[3][MT][NT][4], T* dst, int stride, int lds, int m0,
                                               float* red, float (&sg)[3]) {
    float inv[3] = {1.f, 1.f, 1.f};
    sg[0] = sg[1] = sg[2] = 1.f;
    if constexpr (wbmma::Traits<T>::HALF) {
        const int w = threadIdx.x >> 5;
#pragma unroll
        for (int j = 0; j < 3; ++j) {
            const float mx = warp_abs_max(X[j]);
            if ((threadIdx.x & 31) == 0) red[3 * w + j] = mx;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 3; ++j)
            pow2_scale(fmaxf(fmaxf(red[j], red[3 + j]), fmaxf(red[6 + j], red[9 + j])), sg[j], inv[j]);
    }
#pragma unroll
    for (int j = 0; j < 3; ++j) frags_to_smem(X[j], dst + j * stride, lds, m0, inv[j]);
}

// A tz kernel's dynamic shared memory, in the order kernels/cupy/zeros.py sizes it: two wide tiles [C][DP + PAD]
// (every column of one side, DP its padded head dim), NARROW tiles [C][LDW] (this block's 32 columns of the other
// side), the three state operands (KEY_MAJOR: DP rows x LDW each; else BW rows x (DP + PAD)), then Rows.
template <typename T, int DP, int NARROW, bool KEY_MAJOR>
struct Smem {
    static constexpr int LDD = DP + PAD, LDX = KEY_MAJOR ? LDW : LDD, XSTRIDE = (KEY_MAJOR ? DP : BW) * LDX;
    T* base;
    __device__ __forceinline__ Smem() {
        extern __shared__ __align__(16) unsigned char smem_raw[];
        base = reinterpret_cast<T*>(smem_raw);
    }
    __device__ __forceinline__ T* wide(int i) const { return base + i * C * LDD; }
    __device__ __forceinline__ T* narrow(int i) const { return wide(2) + i * C * LDW; }
    __device__ __forceinline__ T* states() const { return narrow(NARROW); }
    __device__ __forceinline__ Rows* rows() const { return reinterpret_cast<Rows*>(states() + 3 * XSTRIDE); }
    // the chunk's nrow rows of an input of d columns (row stride d) -> a wide tile (every column) or a narrow tile
    // (columns col0 .. col0 + 31)
    __device__ __forceinline__ void load_wide(T* dst, const T* __restrict__ g, int d, int nrow) const {
        load_tile<T, DP>(dst, LDD, g, d, nrow, 0, d);
    }
    __device__ __forceinline__ void load_narrow(T* dst, const T* __restrict__ g, int d, int nrow, int col0) const {
        load_tile<T, BW>(dst, LDW, g, d, nrow, col0, d);
    }
    // the warp's state fragments -> the state operands (states_to_smem): key-major fragments hold rows off.. of the
    // operands, value-major ones columns off..
    template <int MT, int NT>
    __device__ __forceinline__ void put_states(const float (&X)[3][MT][NT][4], int off, float (&sg)[3]) const {
        if constexpr (KEY_MAJOR) states_to_smem<T, MT, NT>(X, states(), XSTRIDE, LDX, off, rows()->red, sg);
        else states_to_smem<T, MT, NT>(X, states() + off, XSTRIDE, LDX, 0, rows()->red, sg);
    }
};

// The block's place: tile `tile` (columns col0.. of its wide side, of width `width`) of segment sg of head n;
// the segment's tokens t0..t1, n T, dk dv, and the head's sigma, c and 1 / sigma.
struct Place {
    int n, sg, tile, col0, t0, t1;
    long long nT, E;
    float sig, shift, isig;
};
__device__ __forceinline__ Place place_of(int width, const int* __restrict__ seg_t0, const int* __restrict__ seg_t1,
        int T_, int dk, int dv, const float* __restrict__ head_sig, const float* __restrict__ head_shift) {
    const int ntile = (width + BW - 1) / BW, tile = blockIdx.x % ntile, sg = blockIdx.x / ntile, n = blockIdx.y;
    const float sig = head_sig[n];
    return {n, sg, tile, tile * BW, seg_t0[sg], seg_t1[sg], (long long)n * T_, (long long)dk * dv, sig,
            head_shift[n], 1.f / sig};
}

// the three states' fragments <-> their place in three consecutive (dk, dv) fp32 matrices (src nullptr: zeros)
template <int MT, int NT>
__device__ __forceinline__ void states_load(float (&X)[3][MT][NT][4], const float* __restrict__ src, int m0, int r0,
                                            int c0, int dk, int dv) {
#pragma unroll
    for (int j = 0; j < 3; ++j) state_load(X[j], src ? src + j * (long long)dk * dv : nullptr, m0, r0, c0, dk, dv);
}
template <int MT, int NT>
__device__ __forceinline__ void states_store(float (&X)[3][MT][NT][4], float* __restrict__ dst, int m0, int r0, int c0,
                                             int dk, int dv) {
#pragma unroll
    for (int j = 0; j < 3; ++j) state_store(X[j], dst + j * (long long)dk * dv, m0, r0, c0, dk, dv);
}

// the three states' fragments (columns from c0, even) -> their chunk's slot of the per-chunk states (N, chunks, 3,
// dk, dv) (CST: tz_fwd writes, tz_bwd_dq reads); column pairs (x, (&x)[1]: columns c, c + 1 of one fragment) as
// float2 where dv is even, so a warp's store fills whole 32-byte sectors
template <int MT, int NT>
__device__ __forceinline__ void chunk_states_store(float (&X)[3][MT][NT][4], float* __restrict__ dst, int m0, int c0,
                                                   int dk, int dv) {
#pragma unroll
    for (int j = 0; j < 3; ++j)
        wbmma::for_each(X[j], m0, c0, [&](float& x, int r, int c) {
            if (((c - c0) & 1) || r >= dk || c >= dv) return;
            float* d = dst + j * (long long)dk * dv + (long long)r * dv + c;
            if ((dv & 1) == 0) *reinterpret_cast<float2*>(d) = make_float2(x, (&x)[1]);
            else {
                d[0] = x;
                if (c + 1 < dv) d[1] = (&x)[1];
            }
        });
}

// chunk cs / C of head n in the per-chunk states (N, ceil(T / C), 3, dk, dv)
__device__ __forceinline__ long long chunk_state_at(const Place& p, int T_, int cs) {
    return ((long long)p.n * ((T_ + C - 1) / C) + cs / C) * 3 * p.E;
}

// the state base of head n, segment sg (causal: per segment, nullptr stays nullptr; else one per head)
__device__ __forceinline__ const float* state_at(const float* base, const Place& p, int NSEG, bool causal) {
    if (!base) return nullptr;
    return base + ((causal ? (long long)p.n * NSEG + p.sg : (long long)p.n) * 3) * p.E;
}

// The inter-chunk products of the warp's 16 rows m0..: acc += sum_j diag(f(j, row)) (A X_j), A from sA (row-major,
// k-depth kdim), X_j the state operand at sX + j * stride (BNK: stored [n][k], the product is A X_j^T); g(j, x)
// sees each product x first.
template <typename T, int SPLIT, bool BNK, typename F, typename G>
__device__ __forceinline__ void inter(float (&acc)[4][4], const T* sA, int lda, const T* sX, int stride, int ldx,
                                      int m0, int kdim, F f, G g) {
#pragma unroll
    for (int j = 0; j < 3; ++j) {
        float x[1][4][4];
        zero(x);
        wbmma::gemm_ss<T, SPLIT, 1, 4, false, BNK>(x, sA, lda, sX + j * stride, ldx, m0, 0, 0, kdim);
        g(j, x[0]);
        add_rows(acc, x[0], m0, [&](int r) { return f(j, r); });
    }
}

// The chunk folded into the states: X_0 (F or A) rescaled by fd, then X_j += A_j^T B_j over the chunk's C tokens
// (A_j = A + j aStep stored [token][state row], B_j = B + j bStep stored [token][state column]); hook(j): the
// A-fragment hook of product j (gemm_ss; KWeights: A_j^T diag(w_j) B_j with the weights in registers).
template <typename T, int SPLIT, int MT, int NT, typename H>
__device__ __forceinline__ void fold(float (&X)[3][MT][NT][4], float fd, const T* A, int aStep, int lda, const T* B,
                                     int bStep, int ldb, int m0, int n0, H hook) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int jj = 0; jj < NT; ++jj)
#pragma unroll
            for (int e = 0; e < 4; ++e) X[0][i][jj][e] *= fd;
#pragma unroll
    for (int j = 0; j < 3; ++j)
        wbmma::gemm_ss<T, SPLIT, MT, NT, true, false>(X[j], A + j * aStep, lda, B + j * bStep, ldb, m0, n0, 0, C, 0,
                                                      NT / 2, hook(j));
}
template <typename T, int SPLIT, int MT, int NT>
__device__ __forceinline__ void fold(float (&X)[3][MT][NT][4], float fd, const T* A, int aStep, int lda, const T* B,
                                     int bStep, int ldb, int m0, int n0) {
    fold<T, SPLIT>(X, fd, A, aStep, lda, B, bStep, ldb, m0, n0, [](int) { return wbmma::AsLoaded(); });
}
}  // namespace tz

// ------------------------------------------------------------------------------------------------ ZeroS forward
// grid (NSEG * ceil(dv / 32), N); dynamic smem: Q, K [C][DKP+8], e^{s - m_end} V, (s'/sigma) V, V [C][40] (this
// block's 32 columns of v), the state operands F, G', H [DKP][40] of T + tz::Rows.
// o != nullptr: o for this column tile.  Causal: the states start at Hin[n][seg] (nullptr: zeros) and walk the
//   segment; not causal: Hin[n] holds the head's totals (F relative to its max), nothing is carried.
// o == nullptr: Eseg[n][seg] <- the segment's own state sum (F relative to m at its last token); q is not read.
// KW (cupy:chunked_mma_fused3, head dim 64): the fold weighs its A fragments (K^T, KWeights with the key weights
//   e^{s - m_end}, s'/sigma, 1) instead of two weighted copies of v in shared memory: 1 narrow tile instead of 3,
//   no copy pass and no barrier before the fold.
// CST (cupy:chunked_mma_fused4): causal with o != nullptr, Eseg (not otherwise written by that walk; nullptr: none)
//   receives the three states before every chunk, (N, ceil(T / C), 3, dk, dv) float32 (this block's 32 columns),
//   for tz_bwd_dq<..., CST>.
template <typename T, int DKP, int SPLIT, bool KW = false, bool CST = false>
__global__ void __launch_bounds__(128, tz::min_blocks<T, DKP>()) tz_fwd(const T* __restrict__ q,
        const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ s, const float* __restrict__ m,
        const float* __restrict__ al, const float* __restrict__ be, const float* __restrict__ ga,
        const float* __restrict__ head_sig, const float* __restrict__ head_shift, T* __restrict__ o,
        const float* __restrict__ Hin, float* __restrict__ Eseg, const int* __restrict__ seg_t0,
        const int* __restrict__ seg_t1, int T_, int dk, int dv, int NSEG, int causal) {
    using namespace tz;
    using namespace wbmma;
    constexpr int LDK = DKP + PAD, KS = Traits<T>::KS, HMT = DKP / 64;
    const Smem<T, DKP, KW ? 1 : 3, true> sm;
    T *sQ = sm.wide(0), *sK = sm.wide(1), *sV = sm.narrow(KW ? 0 : 2), *sX = sm.states();
    T* sW = sm.narrow(0);                                          // not KW: the two weighted copies of v (before v)
    Rows* tr = sm.rows();
    const Place p = place_of(dv, seg_t0, seg_t1, T_, dk, dv, head_sig, head_shift);
    const bool outp = o != nullptr, walk = !outp || causal;
    const int w = threadIdx.x >> 5, hm0 = (DKP / 4) * w;
    float X[3][HMT][4][4], sg3[3] = {1.f, 1.f, 1.f};
    states_load(X, outp ? state_at(Hin, p, NSEG, causal) : nullptr, hm0, 0, p.col0, dk, dv);
    for (int cs = p.t0; cs < p.t1; cs += C) {
        const int nrow = min(C, p.t1 - cs);
        const long long row0 = p.nT + cs;
        const bool upd = walk && (!outp || cs + C < p.t1);
        __syncthreads();                                           // the previous chunk is done with smem
        if (outp) sm.load_wide(sQ, q + row0 * dk, dk, nrow);
        if (walk) {
            sm.load_wide(sK, k + row0 * dk, dk, nrow);
            sm.load_narrow(sV, v + row0 * dv, dv, nrow, p.col0);
        }
        load_stats<T, true>(tr, s, m, al, be, ga, row0, cs, nrow, p.shift, p.isig);
        if (outp && (causal || cs == p.t0)) sm.put_states(X, hm0, sg3);
        cp_async_wait();
        __syncthreads();
        if constexpr (!KW)
            if (upd) weighted_copies<T, BW, 2>(sW, sV, LDW, tr);
        if (outp) {
            float acc[1][4][4];
            zero(acc);
            if (causal) {                                          // (r o Q K^T) V
                float S[1][8][4];
                zero(S);
                gemm_ss<T, SPLIT, 1, 8, false, true>(S, sQ, LDK, sK, LDK, 16 * w, 0, 0, DKP, 0, w + 1);
                weigh<true>(S, 16 * w, tr, [](int, int, int, int, float) {});
                AFrags<T, 8> P;
                c_to_a<T, 8>(P, S[0]);
                gemm_rs<T, SPLIT, 4, AFrags<T, 8>::N, false>(acc[0], P.f, sV, LDW, 0, 0, (16 * w + 16) / KS);
            }
            inter<T, SPLIT, false>(acc[0], sQ, LDK, sX, DKP * LDW, LDW, 16 * w, DKP,     // + Q F, Q G', Q H row-scaled
                [&](int j, int r) {
                    return sg3[j] * (j == 0 ? tr->al[r] * xp(tr->mref, tr->m[r]) : j == 1 ? tr->be[r] * p.sig : tr->ga[r]);
                }, [](int, const float (&)[4][4]) {});
            store_rows<T, 4>(acc[0], o + row0 * dv, dv, 16 * w, nrow, p.col0, dv);
            if constexpr (CST)                                     // the states before the chunk, for dq
                if (causal && Eseg) chunk_states_store(X, Eseg + chunk_state_at(p, T_, cs), hm0, p.col0, dk, dv);
        }
        if (upd) {                                                 // F, G', H <- the chunk's keys and values
            if constexpr (KW) {                                    // (its operands published by the last barrier)
                fold<T, SPLIT>(X, xp(tr->mref, tr->mend), sK, 0, LDK, sV, 0, LDW, hm0, 0,
                               [&](int j) { return KWeights<T>{tr->w[j], 1.f}; });
            } else {
                __syncthreads();                                   // the weighted copies are complete
                fold<T, SPLIT>(X, xp(tr->mref, tr->mend), sK, 0, LDK, sW, C * LDW, LDW, hm0, 0);
            }
        }
    }
    if (!outp) states_store(X, Eseg + ((long long)p.n * NSEG + p.sg) * 3 * p.E, hm0, 0, p.col0, dk, dv);
}

// grid (ceil(3 dk dv / 256), N), block 256: chain the segment states of each head, one element of (3, dk, dv)
// per thread; the F (or A) part, e < dk dv, is rescaled across segment s by e^{m_end(s-1) - m_end(s)}
// (m_end(s) = m at the last token of segment s, m_end(s-1) = m before it).
//   forward: Hout[s] = the states before segment s (zeros before the first), from the segment sums Eseg;
//   REV:     Hout[s] = the suffix states after segment s (zeros after the last), from the segments' suffix sums.
// Hout may be nullptr; fin (optional) <- the chain over every segment (not causal: the totals; m is constant).
template <bool REV>
__global__ void __launch_bounds__(256) tz_seg_scan(const float* __restrict__ Eseg, const float* __restrict__ m,
        const int* __restrict__ seg_t0, const int* __restrict__ seg_t1, int T_, int NSEG, long long E,
        float* __restrict__ Hout, float* __restrict__ fin) {
    const long long e = (long long)blockIdx.x * 256 + threadIdx.x, E3 = 3 * E;
    const int n = blockIdx.y;
    if (e >= E3) return;
    const float* mn = m + (long long)n * T_;
    float h = 0.f;
    for (int j = 0; j < NSEG; ++j) {
        const int sg = REV ? NSEG - 1 - j : j;
        const long long at = ((long long)n * NSEG + sg) * E3 + e;
        if (Hout) Hout[at] = h;
        const int a = seg_t0[sg];
        const float f = (e < E && a > 0) ? tz::xp(mn[a - 1], mn[seg_t1[sg] - 1]) : 1.f;
        h = f * h + Eseg[at];
    }
    if (fin) fin[(long long)n * E3 + e] = h;
}

// ------------------------------------------------------------------------------------------------ ZeroS backward: dq
// grid (NSEG * ceil(dk / 32), N); smem: dO, V [C][DVP+8], Q, e^{s - m_end} K, (s'/sigma) K, K [C][40] (this block's
// 32 columns of dk), the state operands F, G', H [32][DVP+8] (this block's 32 rows) of T + tz::Rows.
// The states walk forwards from Hin[n][seg] (causal; nullptr: zeros) or are Hin[n]'s totals (not causal).
// dq: this block's 32 columns.  rd (3, ntk, N, T): this tile's part of the row dots a, V, Z (the tiles add up:
// the intra part is linear in S = the sum of the tiles' Q K^T, the inter part is a dot with q).
// KW (cupy:chunked_mma_fused3, head dim 64): the fold weighs its A fragments (K^T of this block's 32 columns,
//   KWeights) instead of two weighted copies of k: 2 narrow tiles instead of 4, no copy pass and no barrier
//   before the fold.
// CST (cupy:chunked_mma_fused4), causal: Hin is tz_fwd<..., CST>'s per-chunk states (N, ceil(T / C), 3, dk, dv):
//   each chunk's states are read, not folded (no fold, no weighted copies: 2 narrow tiles); the next chunk's loads
//   are issued after put_states, in flight during this chunk's products.  Not causal: as without CST.
template <typename T, int DVP, int SPLIT, bool KW = false, bool CST = false>
__global__ void __launch_bounds__(128, tz::min_blocks<T, DVP>()) tz_bwd_dq(const T* __restrict__ q,
        const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ s, const float* __restrict__ m,
        const float* __restrict__ al, const float* __restrict__ be, const float* __restrict__ ga,
        const float* __restrict__ head_sig, const float* __restrict__ head_shift, const T* __restrict__ dout,
        T* __restrict__ dq, float* __restrict__ rd, const float* __restrict__ Hin, const int* __restrict__ seg_t0,
        const int* __restrict__ seg_t1, int T_, int dk, int dv, int NSEG, int causal) {
    using namespace tz;
    using namespace wbmma;
    constexpr int LDV = DVP + PAD, KS = Traits<T>::KS, NTW = DVP / 32;
    constexpr bool NOCOPY = KW || CST;                              // no weighted copies of k
    const Smem<T, DVP, NOCOPY ? 2 : 4, false> sm;
    T *sO = sm.wide(0), *sV = sm.wide(1), *sQ = sm.narrow(0), *sK = sm.narrow(NOCOPY ? 1 : 3), *sX = sm.states();
    T* sW = sm.narrow(1);                                          // not KW: the two weighted copies of k (q .. k)
    Rows* tr = sm.rows();
    const Place p = place_of(dk, seg_t0, seg_t1, T_, dk, dv, head_sig, head_shift);
    const int ntk = (dk + BW - 1) / BW, N = gridDim.y, w = threadIdx.x >> 5, hn0 = (DVP / 4) * w;
    float X[3][2][NTW][4], sg3[3] = {1.f, 1.f, 1.f};
    const bool cst = CST && causal;                                // the states per chunk from the forward
    states_load(X, cst ? (Hin ? Hin + chunk_state_at(p, T_, p.t0) : nullptr) : state_at(Hin, p, NSEG, causal), 0,
                p.col0, hn0, dk, dv);
    for (int cs = p.t0; cs < p.t1; cs += C) {
        const int nrow = min(C, p.t1 - cs);
        const long long row0 = p.nT + cs;
        const bool upd = causal && cs + C < p.t1;
        __syncthreads();
        sm.load_wide(sO, dout + row0 * dv, dv, nrow);
        sm.load_narrow(sQ, q + row0 * dk, dk, nrow, p.col0);
        if (causal) {
            sm.load_wide(sV, v + row0 * dv, dv, nrow);
            sm.load_narrow(sK, k + row0 * dk, dk, nrow, p.col0);
        }
        load_stats<T, true>(tr, s, m, al, be, ga, row0, cs, nrow, p.shift, p.isig);
        if (causal || cs == p.t0) sm.put_states(X, hn0, sg3);
        if constexpr (CST)                                         // the next chunk's states (X is in sX now)
            if (upd) states_load(X, Hin + chunk_state_at(p, T_, cs + C), 0, p.col0, hn0, dk, dv);
        cp_async_wait();
        __syncthreads();
        if constexpr (!NOCOPY)
            if (upd) weighted_copies<T, BW, 2>(sW, sK, LDW, tr);
        float acc[1][4][4], dots[3][2] = {{0.f, 0.f}, {0.f, 0.f}, {0.f, 0.f}};
        zero(acc);
        if (causal) {                                              // (r o dP) K; the intra row dots
            float S[1][8][4], D[1][8][4];
            zero(S);
            zero(D);
            gemm_ss<T, SPLIT, 1, 8, false, true>(D, sO, LDV, sV, LDV, 16 * w, 0, 0, DVP, 0, w + 1);   // dO V^T
            gemm_ss<T, SPLIT, 1, 8, false, true>(S, sQ, LDW, sK, LDW, 16 * w, 0, 0, BW, 0, w + 1);    // this tile's Q K^T
            float ia[2] = {0.f, 0.f}, iv[2] = {0.f, 0.f}, iz[2] = {0.f, 0.f};
            weigh<true>(D, 16 * w, tr, [&](int nt, int e, int, int kr, float ex) {
                const float pr = S[0][nt][e] * D[0][nt][e];
                ia[e >> 1] += ex * pr;
                iv[e >> 1] += tr->sc[kr] * pr;
                iz[e >> 1] += pr;
            });
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                dots[0][h] = quad_sum(ia[h]);
                dots[1][h] = quad_sum(iv[h]);
                dots[2][h] = quad_sum(iz[h]);
            }
            AFrags<T, 8> P;
            c_to_a<T, 8>(P, D[0]);
            gemm_rs<T, SPLIT, 4, AFrags<T, 8>::N, false>(acc[0], P.f, sK, LDW, 0, 0, (16 * w + 16) / KS);
        }
        auto rowf = [&](int j, int r) { return sg3[j] * (j == 0 ? xp(tr->mref, tr->m[r]) : j == 1 ? p.sig : 1.f); };
        inter<T, SPLIT, true>(acc[0], sO, LDV, sX, BW * LDV, LDV, 16 * w, DVP,          // + dO F^T, dO G'^T, dO H^T
            [&](int j, int r) { return rowf(j, r) * (j == 0 ? tr->al[r] : j == 1 ? tr->be[r] : tr->ga[r]); },
            [&](int j, const float (&x)[4][4]) {                   // the inter row dots: q . (X do)
                float d[2];
                row_dots<T, 4>(d, x, sQ, LDW, 16 * w);
                const int g = (threadIdx.x & 31) >> 2;
                dots[j][0] += rowf(j, 16 * w + g) * d[0];
                dots[j][1] += rowf(j, 16 * w + g + 8) * d[1];
            });
        store_rows<T, 4>(acc[0], dq + row0 * dk, dk, 16 * w, nrow, p.col0, dk);
#pragma unroll
        for (int j = 0; j < 3; ++j)
            store_row_values(rd + ((long long)(j * ntk + p.tile) * N + p.n) * T_ + cs, dots[j], 16 * w, nrow);
        if (upd && !cst) {
            if constexpr (KW) {                                    // (its operands published by the last barrier)
                fold<T, SPLIT>(X, xp(tr->mref, tr->mend), sK, 0, LDW, sV, 0, LDV, 0, hn0,
                               [&](int j) { return KWeights<T>{tr->w[j], 1.f}; });
            } else if constexpr (!CST) {
                __syncthreads();
                fold<T, SPLIT>(X, xp(tr->mref, tr->mend), sW, C * LDW, LDW, sV, 0, LDV, 0, hn0);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------ ZeroS backward: dv, ds
// grid (NSEG * ceil(dv / 32), N), walking each segment backwards; smem: Q, K [C][DKP+8], alpha e^{m_ref - m} dO,
// beta dO, gamma dO, dO, V [C][40] (this block's 32 columns of dv and do), the state operands A, Bs, Cs [DKP][40]
// of T + tz::Rows.
// dvout != nullptr: dv for this tile and dsp[vt][n][t] = this tile's part of the direct ds (dP and the rowdots
//   with v are sums over the dv tiles).  Causal: the states start at Sin[n][seg] (the suffix states after the
//   segment, A relative to m at its last token; nullptr: zeros); not causal: Sin[n] holds the totals.
// dvout == nullptr: Rseg[n][seg] <- the segment's own suffix sum (A relative to m before the segment).
// DKF (cupy:chunked_mma_fused2; tz_bwd_dk is then not launched): dk is linear in each dv tile's contribution,
//   dk = sum over dv tiles of (r o dP_tile)^T Q + diag(e^{s - m_end}) V_tile A_tile^T + diag(s') V_tile Bs_tile^T
//        + V_tile Cs_tile^T
//   (dP_tile^T = V_tile dO_tile^T, already formed for ds, weighed with S's weights; the tile's states already in
//   shared memory), so the block also forms its tile's part of every dk column, 32 at a time: into dkout when one
//   tile covers dv, else into dkp[vt][n][t][:] (summed by the scalar kernels); both in the input dtype.
//   Without DKF, dkout and dkp are not read.  DKF at DKP 64 (KW) also folds the queries into A, Bs, Cs with their
//   weights (alpha e^{m_ref - m}, beta, gamma) on the A fragments (KWeights) instead of three weighted copies of dO
//   in shared memory: 2 narrow tiles instead of 5 (float32: 90 KB, 2 blocks per SM instead of 1).  Not at 128:
//   no block more fits there, and float32 would spill (ptxas: 28 bytes).
template <typename T, int DKP, int SPLIT, bool DKF = false>
__global__ void __launch_bounds__(128, tz::min_blocks<T, DKP>()) tz_bwd_dv(const T* __restrict__ q,
        const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ s, const float* __restrict__ m,
        const float* __restrict__ al, const float* __restrict__ be, const float* __restrict__ ga,
        const float* __restrict__ head_sig, const float* __restrict__ head_shift, const T* __restrict__ dout,
        T* __restrict__ dvout, float* __restrict__ dsp, const float* __restrict__ Sin, float* __restrict__ Rseg,
        T* __restrict__ dkout, T* __restrict__ dkp, const int* __restrict__ seg_t0,
        const int* __restrict__ seg_t1, int T_, int dk, int dv, int NSEG, int causal) {
    using namespace tz;
    using namespace wbmma;
    constexpr int LDK = DKP + PAD, KS = Traits<T>::KS, HMT = DKP / 64;
    constexpr bool KW = DKF && DKP == 64;                          // the fold's weights on its A fragments
    const Smem<T, DKP, KW ? 2 : 5, true> sm;
    T *sQ = sm.wide(0), *sK = sm.wide(1), *sO = sm.narrow(KW ? 0 : 3), *sVt = sm.narrow(KW ? 1 : 4);
    T *sX = sm.states(), *sW = sm.narrow(0);                       // not KW: the three weighted copies of do
    Rows* tr = sm.rows();
    const Place p = place_of(dv, seg_t0, seg_t1, T_, dk, dv, head_sig, head_shift);
    const bool outp = dvout != nullptr, walk = !outp || causal;
    const int N = gridDim.y, w = threadIdx.x >> 5, hm0 = (DKP / 4) * w;
    float X[3][HMT][4][4], sg3[3] = {1.f, 1.f, 1.f};
    states_load(X, outp ? state_at(Sin, p, NSEG, causal) : nullptr, hm0, 0, p.col0, dk, dv);
    const int nch = (p.t1 - p.t0 + C - 1) / C;
    for (int jc = nch - 1; jc >= 0; --jc) {
        const int cs = p.t0 + C * jc, nrow = min(C, p.t1 - cs);
        const long long row0 = p.nT + cs;
        const bool upd = walk && (!outp || jc > 0);
        __syncthreads();
        if (walk) {
            sm.load_wide(sQ, q + row0 * dk, dk, nrow);
            sm.load_narrow(sO, dout + row0 * dv, dv, nrow, p.col0);
        }
        if (outp) {
            sm.load_wide(sK, k + row0 * dk, dk, nrow);
            sm.load_narrow(sVt, v + row0 * dv, dv, nrow, p.col0);
        }
        load_stats<T, false>(tr, s, m, al, be, ga, row0, cs, nrow, p.shift, p.isig);
        if (outp && (causal || jc == nch - 1)) sm.put_states(X, hm0, sg3);
        cp_async_wait();
        __syncthreads();
        if constexpr (!KW)
            if (upd) weighted_copies<T, BW, 3>(sW, sO, LDW, tr);
        if (outp) {
            float acc[1][4][4], ds[2] = {0.f, 0.f};
            AFrags<T, 8> Pd;                                       // DKF: (r o dP_tile)^T, causal
            zero(acc);
            if (causal) {                                          // (r o S)^T dO; the intra part of ds
                float S[1][8][4], D[1][8][4];
                zero(S);
                zero(D);
                gemm_ss<T, SPLIT, 1, 8, false, true>(S, sK, LDK, sQ, LDK, 16 * w, 0, 0, DKP, w, 4);     // K Q^T
                gemm_ss<T, SPLIT, 1, 8, false, true>(D, sVt, LDW, sO, LDW, 16 * w, 0, 0, BW, w, 4);     // this tile's V dO^T
                float id[2] = {0.f, 0.f};
                weigh_tiles<false, DKF>(S, D, 16 * w, tr, [&](int nt, int e, int qr, int, float ex) {
                    id[e >> 1] += S[0][nt][e] * D[0][nt][e] * (tr->al[qr] * ex + tr->be[qr]);
                });
                ds[0] += quad_sum(id[0]);
                ds[1] += quad_sum(id[1]);
                if constexpr (DKF) c_to_a<T, 8>(Pd, D[0]);
                AFrags<T, 8> P;
                c_to_a<T, 8>(P, S[0]);
                gemm_rs<T, SPLIT, 4, AFrags<T, 8>::N, false>(acc[0], P.f, sO, LDW, 0, (16 * w) / KS, C / KS);
            }
            auto keyf = [&](int j, int r) { return sg3[j] * (j == 0 ? xp(tr->s[r], tr->mend) : 1.f); };
            auto keyw = [&](int j, int r) { return keyf(j, r) * (j == 1 ? tr->sc[r] : 1.f); };
            inter<T, SPLIT, false>(acc[0], sK, LDK, sX, DKP * LDW, LDW, 16 * w, DKP, keyw,  // + K A, K Bs, K Cs
                [&](int j, const float (&x)[4][4]) {               // ds: e^{s - m_end} v.(K A) + v.(K Bs)
                    if (j == 2) return;
                    float d[2];
                    row_dots<T, 4>(d, x, sVt, LDW, 16 * w);
                    const int g = (threadIdx.x & 31) >> 2;
                    ds[0] += keyf(j, 16 * w + g) * d[0];
                    ds[1] += keyf(j, 16 * w + g + 8) * d[1];
                });
            store_rows<T, 4>(acc[0], dvout + row0 * dv, dv, 16 * w, nrow, p.col0, dv);
            store_row_values(dsp + ((long long)p.tile * N + p.n) * T_ + cs, ds, 16 * w, nrow);
            if constexpr (DKF) {                                   // this tile's part of dk, 32 columns at a time
#pragma unroll 1
                for (int c0 = 0; c0 < dk; c0 += BW) {
                    zero(acc);
                    if (causal)                                    // (r o dP_tile)^T Q
                        gemm_rs<T, SPLIT, 4, AFrags<T, 8>::N, false>(acc[0], Pd.f, sQ + c0, LDK, 0, (16 * w) / KS,
                                                                     C / KS);
                    inter<T, SPLIT, true>(acc[0], sVt, LDW, sX + c0 * LDW, DKP * LDW, LDW, 16 * w, BW, keyw,
                                          [](int, const float (&)[4][4]) {});   // + V A^T, V Bs^T, V Cs^T
                    T* dst = dkout ? dkout + row0 * dk : dkp + ((long long)p.tile * N * T_ + row0) * dk;
                    store_rows<T, 4>(acc[0], dst, dk, 16 * w, nrow, c0, dk);
                }
            }
        }
        if (upd) {                                                 // fold this chunk's queries into A, Bs, Cs
            __syncthreads();
            if constexpr (KW)
                fold<T, SPLIT>(X, xp(tr->mref, tr->mend), sQ, 0, LDK, sO, 0, LDW, hm0, 0,
                               [&](int j) { return KWeights<T>{tr->w[j], 1.f}; });
            else
                fold<T, SPLIT>(X, xp(tr->mref, tr->mend), sQ, 0, LDK, sW, C * LDW, LDW, hm0, 0);
        }
    }
    if (!outp) states_store(X, Rseg + ((long long)p.n * NSEG + p.sg) * 3 * p.E, hm0, 0, p.col0, dk, dv);
}

// ------------------------------------------------------------------------------------------------ ZeroS backward: dk
// grid (NSEG * ceil(dk / 32), N), walking each segment backwards; smem: V, dO [C][DVP+8], alpha e^{m_ref - m} Q,
// beta Q, gamma Q, Q [C][40] (this block's 32 columns of dk), the state operands A, Bs, Cs [32][DVP+8] (this
// block's rows) of T + tz::Rows.  The states as in tz_bwd_dv (Sin[n][seg] causal, nullptr: zeros; totals Sin[n]).
template <typename T, int DVP, int SPLIT>
__global__ void __launch_bounds__(128, tz::min_blocks<T, DVP>()) tz_bwd_dk(const T* __restrict__ q,
        const T* __restrict__ v, const T* __restrict__ s, const float* __restrict__ m, const float* __restrict__ al,
        const float* __restrict__ be, const float* __restrict__ ga, const float* __restrict__ head_sig,
        const float* __restrict__ head_shift, const T* __restrict__ dout, T* __restrict__ dkout,
        const float* __restrict__ Sin, const int* __restrict__ seg_t0, const int* __restrict__ seg_t1, int T_, int dk,
        int dv, int NSEG, int causal) {
    using namespace tz;
    using namespace wbmma;
    constexpr int LDV = DVP + PAD, KS = Traits<T>::KS, NTW = DVP / 32;
    const Smem<T, DVP, 4, false> sm;
    T *sV = sm.wide(0), *sO = sm.wide(1), *sQ = sm.narrow(3), *sX = sm.states();
    T* sW = sm.narrow(0);                                          // the three weighted copies of q (before q)
    Rows* tr = sm.rows();
    const Place p = place_of(dk, seg_t0, seg_t1, T_, dk, dv, head_sig, head_shift);
    const int w = threadIdx.x >> 5, hn0 = (DVP / 4) * w;
    float X[3][2][NTW][4], sg3[3] = {1.f, 1.f, 1.f};
    states_load(X, state_at(Sin, p, NSEG, causal), 0, p.col0, hn0, dk, dv);
    const int nch = (p.t1 - p.t0 + C - 1) / C;
    for (int jc = nch - 1; jc >= 0; --jc) {
        const int cs = p.t0 + C * jc, nrow = min(C, p.t1 - cs);
        const long long row0 = p.nT + cs;
        const bool upd = causal && jc > 0;
        __syncthreads();
        sm.load_wide(sV, v + row0 * dv, dv, nrow);
        if (causal) {
            sm.load_wide(sO, dout + row0 * dv, dv, nrow);
            sm.load_narrow(sQ, q + row0 * dk, dk, nrow, p.col0);
        }
        load_stats<T, false>(tr, s, m, al, be, ga, row0, cs, nrow, p.shift, p.isig);
        if (causal || jc == nch - 1) sm.put_states(X, hn0, sg3);
        cp_async_wait();
        __syncthreads();
        if (upd) weighted_copies<T, BW, 3>(sW, sQ, LDW, tr);
        float acc[1][4][4];
        zero(acc);
        if (causal) {                                              // (r o dP)^T Q
            float D[1][8][4];
            zero(D);
            gemm_ss<T, SPLIT, 1, 8, false, true>(D, sV, LDV, sO, LDV, 16 * w, 0, 0, DVP, w, 4);        // V dO^T
            weigh<false>(D, 16 * w, tr, [](int, int, int, int, float) {});
            AFrags<T, 8> P;
            c_to_a<T, 8>(P, D[0]);
            gemm_rs<T, SPLIT, 4, AFrags<T, 8>::N, false>(acc[0], P.f, sQ, LDW, 0, (16 * w) / KS, C / KS);
        }
        inter<T, SPLIT, true>(acc[0], sV, LDV, sX, BW * LDV, LDV, 16 * w, DVP,          // + V A^T, V Bs^T, V Cs^T
            [&](int j, int r) { return sg3[j] * (j == 0 ? xp(tr->s[r], tr->mend) : j == 1 ? tr->sc[r] : 1.f); },
            [](int, const float (&)[4][4]) {});
        store_rows<T, 4>(acc[0], dkout + row0 * dk, dk, 16 * w, nrow, p.col0, dk);
        if (upd) {
            __syncthreads();
            fold<T, SPLIT>(X, xp(tr->mref, tr->mend), sW, C * LDW, LDW, sO, 0, LDV, 0, hn0);
        }
    }
}
