// chunked_wgmma.cu -- kernels of the tensor-core chunk core (chunked_mma.cu) on Hopper's warpgroup MMA (wgmma.cuh):
// sm_90a only (kernels/cupy/_module.py SM90A_SOURCES).  Each is a drop-in for one chunked_mma.cu kernel: the same
// arguments, the same results up to the order of the float32 sums, launched by kernels/cupy/_chunked_mma.py where a
// call qualifies (docs/kernels/linear.md, "Warpgroup MMA: the primitives, their model, and the first two kernels" and
// the sections after it).  tg_bwd_dq and tg_bwd_dkdv: their comments below.
//
//   tg_fwd<T, STAGES, DECAY> tc_fwd<T, 64, 1, ..> of a causal call: T 16-bit, dk <= 64, log decays (DECAY) or none,
//                            no STORE.  grid (NSEG * ceil(dv / 64), N), block 128; smem: STAGES x (Q, K, V) swizzled
//                            tiles, the state tile (swizzled, H / sigma in T), 4 floats, 1024 bytes of slack.  Per
//                            chunk (after the state went to shared memory): one batch of Q H and Q K^T (eight SS
//                            products, the first of each not reading its accumulator), then o's rows scaled by
//                            scale sigma and P = the masked, scaled scores in registers (tc::intra_frags), then one
//                            batch of P V (four RS products: P from registers) and the state update H += K^T V (four
//                            SS products, K^T read M-major), which runs beside P V.  The full 64 x 64 score tile is
//                            formed (the mask zeroes the part past the diagonal): twice tc_fwd's triangle, in fewer
//                            instructions.  Two barriers per chunk (tg::chunk_top; tc_fwd: four in float16): the
//                            block max of |H| for sigma (float16), then the state tile and chunk j's loads published.
//   tg_seg_state<T, STAGES>  tc_seg_state<T, 64, false, 1, ..> of a linear call: T 16-bit, head dim dx <= 64, no log
//                            decays, wscale 1 (the forward's segment sums).  grid (NSEG * ceil(dy / 64), N), block
//                            128 (one warpgroup); smem: STAGES x (X, Y) swizzled 64 x 64 tiles + 1024 bytes of
//                            alignment slack.  Per chunk E += X^T Y as four m64n64k16 products, X^T read M-major and
//                            Y N-major straight from the tiles cp.async filled; warp w's accumulator rows 16 w .. are
//                            tc_seg_state's (state_store is shared).  One barrier per chunk: chunk j's tiles landed and
//                            every warpgroup product of chunk j - 1 completed (wait 0), so chunk j + STAGES - 1's loads
//                            may refill that stage while chunk j's products run.
//
// Every kernel takes a last argument xexp (nullptr but for xscale calls) and the trailing template arguments
//   TO = T   the results' type: float for xscale calls (float32 operands carried as T under a power-of-two scale per
//            leading index n, kernels/cupy/_xscale.py): each result is scaled back by its operands' exponents
//            (tg::xmul) before the store, d log_decay's row dots too;
//   NP = 1   2: every operand a hi + lo pair of T tiles (the lo tile TILE elements after the hi one; from two planes
//            of the caller's arrays, the lo plane N T d elements after the hi one), every product three (tg::gemm_ss,
//            gemm_rs), the state tile, P and the weighed fragments split likewise: float32 accuracy (xscale 2), at
//            one load stage;
//   FS = 0   NP 2 with the caller's float32 operands split into the pairs as the tiles land, times the slice's 2^-e:
//            1 by plain loads (tg::load_tile_pair; xscale 3, linear only), 2 staged by cp.async where the pair
//            will lie and split in place by the thread that copied it, after its wait (tg::stage_tile_f32,
//            land_tile_pair; xscale 4, log decays too), 3 as 2 under each chunk tile's own power of two found by
//            the walker and absorbed by the accumulators around each product (tg::tile_exponents, scale_pow2;
//            xscale 5: no exponent pass, the states in the caller's units).
// (tg_seg_state: NP, FS, and DECAY -- the pairs' segment sums with log decays through tc::Walk.)
#include "chunked_mma.cu"
#include "wgmma.cuh"

namespace tg {
// The walkers' chunk prologue: the first STAGES - 1 chunks' loads, a cp.async group each.
template <int STAGES, typename F>
__device__ __forceinline__ void prologue(int nch, F&& issue) {
#pragma unroll
    for (int j = 0; j < STAGES - 1; ++j) {
        if (j < nch) issue(j);
        tc::cp_async_commit();
    }
}

constexpr int TILE = tc::C * 64;                               // elements of one swizzled 64 x 64 tile

// D (+)= A B over NP-part operands (a part's lo tile TILE elements after its hi tile): NP 1, A B; NP 2, the three
// products Ah Bh + Ah Bl + Al Bh (Al Bl, 2^-22 of the rest, dropped) -- wbgmma::gemm64_ss / gemm64_rs, one batch
template <typename T, int NP, bool TA, bool TB>
__device__ __forceinline__ void gemm_ss(float (&d)[8][4], const T* a, const T* b, bool accumulate) {
    wbgmma::gemm64_ss<T, TA, TB>(d, a, b, accumulate);
    if constexpr (NP == 2) {
        wbgmma::gemm64_ss<T, TA, TB>(d, a, b + TILE, true);
        wbgmma::gemm64_ss<T, TA, TB>(d, a + TILE, b, true);
    }
}
template <typename T, int NP, bool TB>
__device__ __forceinline__ void gemm_rs(float (&d)[8][4], const unsigned (&ah)[4][4], const unsigned (&al)[4][4],
                                        const T* b) {
    wbgmma::gemm64_rs<T, TB>(d, ah, b);
    if constexpr (NP == 2) {
        wbgmma::gemm64_rs<T, TB>(d, ah, b + TILE);
        wbgmma::gemm64_rs<T, TB>(d, al, b);
    }
}

// The walkers' operand element type: T, or float where FS (NP = 2 with the caller's float32 operands, split into hi +
// lo tiles as the tiles land)
template <typename T, int FS> struct In { using type = float; };
template <typename T> struct In<T, 0> { using type = T; };

// rows [0, R) x columns [col0, col0 + 64) of a float32 row-major matrix g (row stride ldg), times mul -> the swizzled
// hi tile at `tile` and its residuals' lo tile at tile + TILE (zeros past nrows rows and past ncols columns): plain
// loads (16 bytes where g's rows allow) and stores, published by the caller's async-proxy fence and barrier
template <typename T, int R, int NTH>
__device__ __forceinline__ void load_tile_pair(T* tile, const float* __restrict__ g, long long ldg, int nrows, int col0,
                                               int ncols, float mul) {
    static_assert((R * 8) % NTH == 0, "whole passes");
    unsigned char* b = reinterpret_cast<unsigned char*>(tile);
    const bool vec = (ldg % 4) == 0 && (col0 % 4) == 0 && (((unsigned long long)g) & 15ull) == 0;
#pragma unroll
    for (int pass = 0; pass < R * 8 / NTH; ++pass) {
        const int idx = pass * NTH + threadIdx.x, r = idx >> 3, c = idx & 7;
        const int left = r < nrows ? ncols - (col0 + 8 * c) : 0;
        const float* src = g + r * ldg + col0 + 8 * c;
        float x[8];
        if (vec && left >= 8) {
            const float4 a = *reinterpret_cast<const float4*>(src), z = *reinterpret_cast<const float4*>(src + 4);
            x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = z.x, x[5] = z.y, x[6] = z.z, x[7] = z.w;
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) x[e] = e < left ? src[e] : 0.f;
        }
        unsigned hi[4], lo[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) split2<T>(x[2 * e] * mul, x[2 * e + 1] * mul, hi[e], lo[e]);
        *reinterpret_cast<uint4*>(b + wbgmma::sw128(r, c)) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
        *reinterpret_cast<uint4*>(b + 2 * TILE + wbgmma::sw128(r, c)) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
    }
}

// rows [0, R) x columns [col0, col0 + 64) of a float32 row-major matrix g (row stride ldg) staged for land_tile_pair
// by cp.async (zeros past nrows rows and past ncols columns) where the pair will lie: each 8-column group (r, c) of
// row r, its first four floats in the hi tile's 16 bytes at sw128(r, c), its last four in the lo tile's at the same
// place (tile + TILE), so the thread that copies a group is the one that splits it, in place, after its own wait --
// no barrier between.  16-byte copies where g's rows allow, else 4-byte ones.
template <int R, int NTH, typename T>
__device__ __forceinline__ void stage_tile_f32(T* tile, const float* __restrict__ g, long long ldg, int nrows, int col0,
                                               int ncols) {
    unsigned char* b = reinterpret_cast<unsigned char*>(tile);
    const bool vec = (ldg % 4) == 0 && (col0 % 4) == 0 && (((unsigned long long)g) & 15ull) == 0;
#pragma unroll
    for (int idx = threadIdx.x; idx < R * 8; idx += NTH) {
        const int r = idx >> 3, c = idx & 7;
        const int left = r < nrows ? ncols - (col0 + 8 * c) : 0;
        const float* src = g + r * ldg + col0 + 8 * c;
#pragma unroll
        for (int h = 0; h < 2; ++h) {                            // h 0: columns 8 c .. + 3 -> hi; 1: + 4 .. + 7 -> lo
            unsigned char* dst = b + 2 * TILE * h + wbgmma::sw128(r, c);
            const int in = min(max(left - 4 * h, 0), 4);
            if (vec) {
                wbmma::cp_async16(dst, in ? src + 4 * h : g, 4 * in);
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    wbmma::cp_async4(dst + 4 * e, e < in ? src + 4 * h + e : g, e < in ? 4 : 0);
            }
        }
    }
}

// stage_tile_f32's groups of this thread (its copies waited for), times mul, split in place into the hi tile and the
// residuals' lo tile: 16 bytes read from each, 16 bytes written back to each
template <typename T, int R, int NTH>
__device__ __forceinline__ void land_tile_pair(T* tile, float mul) {
    unsigned char* b = reinterpret_cast<unsigned char*>(tile);
#pragma unroll
    for (int idx = threadIdx.x; idx < R * 8; idx += NTH) {
        unsigned char* at = b + wbgmma::sw128(idx >> 3, idx & 7);
        const float4 a = *reinterpret_cast<const float4*>(at), z = *reinterpret_cast<const float4*>(at + 2 * TILE);
        const float x[8] = {a.x, a.y, a.z, a.w, z.x, z.y, z.z, z.w};
        unsigned hi[4], lo[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) split2<T>(x[2 * e] * mul, x[2 * e + 1] * mul, hi[e], lo[e]);
        *reinterpret_cast<uint4*>(at) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
        *reinterpret_cast<uint4*>(at + 2 * TILE) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
    }
}

// FS 3: the exponents of a chunk's NOPS staged float32 tiles (stage_tile_f32's layout, 2 TILE elements apart from
// `stage` on): this thread's max |x| over its groups of each, the warp's max posted to tmx[4 op + warp], one barrier,
// then e[op] with the tile's max in [1, 2) times 2^-e (0 for a tile of zeros; clamped to [-100, 100]) and mul[op] =
// 2^-e, the factor its split takes.  Each thread reads the same posts: the exponents are block-uniform.
template <typename T, int NOPS, int R, int NTH>
__device__ __forceinline__ void tile_exponents(const T* stage, float* tmx, int (&e)[4], float (&mul)[4]) {
    const unsigned char* b = reinterpret_cast<const unsigned char*>(stage);
#pragma unroll
    for (int op = 0; op < NOPS; ++op) {
        float m = 0.f;
#pragma unroll
        for (int idx = threadIdx.x; idx < R * 8; idx += NTH) {
            const unsigned char* at = b + 4 * TILE * op + wbgmma::sw128(idx >> 3, idx & 7);
            const float4 x = *reinterpret_cast<const float4*>(at), z = *reinterpret_cast<const float4*>(at + 2 * TILE);
            m = fmaxf(m, fmaxf(fmaxf(fmaxf(fabsf(x.x), fabsf(x.y)), fmaxf(fabsf(x.z), fabsf(x.w))),
                               fmaxf(fmaxf(fabsf(z.x), fabsf(z.y)), fmaxf(fabsf(z.z), fabsf(z.w)))));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if ((threadIdx.x & 31) == 0) tmx[4 * op + (threadIdx.x >> 5)] = m;
    }
    __syncthreads();
#pragma unroll
    for (int op = 0; op < 4; ++op) {
        e[op] = 0;
        if (op < NOPS) {
            const float m = fmaxf(fmaxf(tmx[4 * op], tmx[4 * op + 1]), fmaxf(tmx[4 * op + 2], tmx[4 * op + 3]));
            e[op] = m > 0.f ? min(max(tc::pow2_exponent(m), -100), 100) : 0;
        }
        mul[op] = ldexpf(1.f, -e[op]);
    }
}

// a float32 accumulator times 2^s, exactly (|s| up to 300: in up to three factors a float holds)
template <int MT, int NT>
__device__ __forceinline__ void scale_pow2(float (&a)[MT][NT][4], int s) {
    while (s != 0) {                                           // block-uniform
        const int p = max(min(s, 120), -120);
        tc::scale_acc(a, ldexpf(1.f, p));
        s -= p;
    }
}

// One operand's tiles of chunk rows [0, nrows) at g, columns col0 ..: NP = 1, its tile (cp.async); NP = 2, its hi and
// lo tiles -- FS 0: from the hi and lo planes (the lo plane `plane` elements after the hi one: cp.async); FS 1: split
// from the caller's float32 times mul (the slice's 2^-e, xscale.cu) as they land (plain loads); FS 2: the caller's
// float32 staged by cp.async (stage_tile_f32), and -- land, after this thread's wait -- split in place (land_tile_pair;
// FS 3 as 2, mul the tile's own 2^-e).  land is a no-op but for FS 2 and 3.
template <typename T, int NP, int FS, int R, int NTH, typename TI>
__device__ __forceinline__ void load_operand(T* tile, const TI* __restrict__ g, long long ldg, int nrows, int col0,
                                             int ncols, float mul, long long plane, bool land = false) {
    if constexpr (NP == 2 && FS >= 2) {
        if (land) land_tile_pair<T, R, NTH>(tile, mul);
        else stage_tile_f32<R, NTH>(tile, g, ldg, nrows, col0, ncols);
    } else if (!land) {
        if constexpr (NP == 2 && FS == 1) {
            load_tile_pair<T, R, NTH>(tile, g, ldg, nrows, col0, ncols, mul);
        } else {
            wbgmma::load_tile<T, R, NTH>(tile, g, ldg, nrows, col0, ncols);
            if constexpr (NP == 2) wbgmma::load_tile<T, R, NTH>(tile + TILE, g + plane, ldg, nrows, col0, ncols);
        }
    }
}

// The 4 floats of the block max (red) after the tiles at `after`, or -- SLACK: a launch sized tiles + 1024 bytes, no
// room after the tiles once the alignment took more than 1008 bytes -- in the first 16 bytes of the slack the
// alignment left before the tiles (`stages`): what lets tg_fwd's pairs at two stages (112 KB of tiles) run two
// blocks per SM (_chunked_mma.smem_wg_walk's red_in_slack)
template <bool SLACK>
__device__ __forceinline__ float* red_slot(unsigned char* raw, const void* stages, void* after) {
    if constexpr (SLACK)
        if (static_cast<const unsigned char*>(stages) - raw > 1008) return reinterpret_cast<float*>(raw);
    return reinterpret_cast<float*>(after);
}

// 2^-e of operand i's slice (FS: the pairs' scale, applied as the tiles land; 1 otherwise)
template <int FS>
__device__ __forceinline__ float xinv(const int* __restrict__ xexp, int i) {
    if constexpr (FS != 0) return ldexpf(1.f, -xexp[i * gridDim.y + blockIdx.y]);
    else return 1.f;
}

// the state's fragments (warp w: rows m0 .., 64 columns) times inv -> the swizzled state tile in T; NP = 2: the
// residuals rounded to T into the lo tile after it (tile + TILE)
template <typename T, int NP = 1>
__device__ __forceinline__ void frags_to_tile(const float (&H)[8][4], T* tile, int m0, float inv) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    unsigned char* b = reinterpret_cast<unsigned char*>(tile);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float x0 = H[nt][2 * h] * inv, x1 = H[nt][2 * h + 1] * inv;
            const int at = wbgmma::sw128(m0 + g + 8 * h, nt) + 4 * t;
            unsigned hi, lo;
            split2<T>(x0, x1, hi, lo);
            *reinterpret_cast<unsigned*>(b + at) = hi;
            if constexpr (NP == 2) *reinterpret_cast<unsigned*>(b + 2 * TILE + at) = lo;
        }
}

// P's A fragments from the scaled, masked scores S (tc::intra_frags: P.f, the hi parts) and, NP = 2, the lo parts
// (S's residuals) into Pl (S is left holding them).  RS (NP = 2 with log decays): each of the thread's two rows
// (g, g + 8) first times a power of two f that brings its max |S| into [2^13, 2^14) (f in [2^-20, 2^40]; 1 for a row
// of zeros), so a row whose decays leave it far under 1 keeps its lo parts out of float16's subnormals; returns
// (f_g, f_g+8), by which the caller scales the product's accumulator rows before it and back after it (exact: powers
// of two).  1, 1 otherwise.  FAST: intra_frags' factored decay (one part only; off in tg_bwd_dkdv's LOWREG form, where
// at its 168-register bound it spilled and the walker lost more than the factoring saved: H200 callAG, 775 -> 807 us).
template <typename T, int NP, bool LOWER, bool RS = false, bool FAST = NP == 1>
__device__ __forceinline__ float2 p_frags(wbmma::AFrags<T, 8>& P, wbmma::AFrags<T, 8>& Pl, float (&S)[1][8][4], int m0,
                                          const tc::Trailer* tr, bool decay, float scale) {
    static_assert(!RS || NP == 2, "row scales: pairs");
    static_assert(!FAST || NP == 1, "the factored decay: one part");
    tc::intra_frags<T, LOWER, FAST>(P, S, m0, tr, decay, scale);
    float2 f = make_float2(1.f, 1.f);
    if constexpr (RS) {
        float m[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) m[e >> 1] = fmaxf(m[e >> 1], fabsf(S[0][nt][e]));
        float fr[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            m[h] = fmaxf(m[h], __shfl_xor_sync(0xffffffffu, m[h], 1));
            m[h] = fmaxf(m[h], __shfl_xor_sync(0xffffffffu, m[h], 2));
            fr[h] = m[h] > 0.f ? ldexpf(1.f, min(max(13 - tc::pow2_exponent(m[h]), -20), 40)) : 1.f;
        }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) S[0][nt][e] *= fr[e >> 1];
        wbmma::c_to_a<T, 8>(P, S[0]);
        f = make_float2(fr[0], fr[1]);
    }
    if constexpr (NP == 2) {
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) S[0][nt][e] = residual<T>(S[0][nt][e]);
        wbmma::c_to_a<T, 8>(Pl, S[0]);
    }
    return f;
}

// the accumulator rows of the thread (g: elements 0, 1 of each n-tile; g + 8: 2, 3) times f.x, f.y
__device__ __forceinline__ void scale_rows2(float (&a)[1][8][4], float2 f) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) a[0][nt][e] *= e < 2 ? f.x : f.y;
}

// float16: the warp's max |St| posted to red[w] (read by state_to_tile after a barrier); nothing otherwise
template <typename T>
__device__ __forceinline__ void post_state_max(const float (&St)[1][8][4], float* red) {
    if constexpr (wbmma::Traits<T>::HALF) {
        const float mx = tc::warp_abs_max(St);
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
    }
}

// St / sigma into its swizzled tile (warp w: rows 16 w ..), sigma a power of two from the block max that
// post_state_max posted (1 but for float16, as tc::state_to_smem).  Returns sigma.  BOTH (the tile exponents' walkers,
// FS 3: the state in the caller's units, possibly far under 1): sigma brings the max into [2^13, 2^14) from either
// side, so a small state keeps its pairs' lo parts out of float16's subnormals.
template <typename T, int NP = 1, bool BOTH = false>
__device__ __forceinline__ float state_to_tile(const float (&St)[1][8][4], T* tile, const float* red) {
    float sigma = 1.f, inv = 1.f;
    if constexpr (BOTH) {
        const float mx = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
        const int ex = tc::pow2_exponent(mx);
        if (mx > 0.f && ex >= -110 && ex < 128) sigma = ldexpf(1.f, ex - 13), inv = ldexpf(1.f, 13 - ex);
    } else if constexpr (wbmma::Traits<T>::HALF) {
        tc::pow2_scale(fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3])), sigma, inv);
    }
    frags_to_tile<T, NP>(St[0], tile, 16 * (threadIdx.x >> 5), inv);
    return sigma;
}

// The top of chunk j of a walker that hands its float32 state St (warp w: rows 16 w ..) to the chunk's products:
// chunk j's copies waited for; float16: the warp's max |St| posted to red; the barrier after which chunk j - 1's
// products are done in every warp (the state tile and chunk j - 1's stage are free); sigma from the block max (1 but
// for float16, as tc::state_to_smem); St / sigma into its swizzled tile (NP = 2: and its lo tile); chunk j + STAGES -
// 1's loads (issue_next) and their group; the async-proxy fence; the barrier that publishes the tile and chunk j's
// tiles.  Returns sigma.  One stage: issue_next loads chunk j itself (its stage is free after the first barrier), and
// the copies are waited for before the fence.
template <typename T, int STAGES, int NP = 1, bool BOTH = false, typename F, typename L>
__device__ __forceinline__ float chunk_top(const float (&St)[1][8][4], T* tile, float* red, F&& issue_next, L&& land) {
    if constexpr (STAGES > 1) {
        tc::cp_async_wait_group<STAGES - 2>();
        land();                                                 // chunk j's staged tiles split (FS 2, 3; else nothing)
    }
    post_state_max<T>(St, red);
    __syncthreads();
    const float sigma = state_to_tile<T, NP, BOTH>(St, tile, red);
    issue_next();
    tc::cp_async_commit();
    if constexpr (STAGES == 1) {
        tc::cp_async_wait();
        land();
    }
    wbgmma::fence_proxy_async();
    __syncthreads();
    return sigma;
}

// fences the compiler may not move accumulator reads or writes across (wbgmma::fence_acc of each)
template <typename... A>
__device__ __forceinline__ void fence_accs(A&... a) { (wbgmma::fence_acc(a[0]), ...); }

// A walker's load pipeline and chunk top, with (DECAY) or without log decays.  issue(j, st): chunk j's tiles into
// stage st; grows(j): its log decays (tc::grows_at).  Without: tg::prologue and tg::chunk_top (the linear walkers'
// two barriers per chunk).  With: tc::Walk (warp 0's log decays of chunk j into the Trailer at the top, chunk j + 1's
// copied a chunk ahead), then the state / sigma into its tile (float16: the block max through tr->red, one barrier),
// chunk j's loads waited for, the async-proxy fence and the barrier that publishes the tile, the tiles and the
// Trailer -- three barriers per chunk in float16, two otherwise (tc's walkers: four and two).
template <int STAGES, bool DECAY, int NP = 1, int FS = 0>
struct Pipe {
    template <typename F, typename G>
    __device__ __forceinline__ Pipe(int nch, tc::Trailer*, F&& issue, G&&) {
        prologue<STAGES>(nch, [&](int j) { issue(j, j % STAGES); });
    }
    template <typename T, typename F, typename G>
    __device__ __forceinline__ float top(int j, int nch, tc::Trailer*, F&& issue, G&&, const float (&St)[1][8][4],
                                         T* tile, float* red) {
        return chunk_top<T, STAGES, NP, FS == 3>(St, tile, red, [&] {
            if (j + STAGES - 1 < nch) issue(j + STAGES - 1, (j + STAGES - 1) % STAGES);
        }, [&] {
            if constexpr (FS >= 2) issue(j, j % STAGES, true);  // staged tiles split in place
        });
    }
};
template <int STAGES, int NP, int FS>
struct Pipe<STAGES, true, NP, FS> {
    tc::Walk<STAGES> walk;
    template <typename F, typename G>
    __device__ __forceinline__ Pipe(int nch, tc::Trailer* tr, F&& issue, G&& grows) : walk(nch, true, tr, issue, grows) {}
    template <typename T, typename F, typename G>
    __device__ __forceinline__ float top(int j, int, tc::Trailer* tr, F&& issue, G&& grows, const float (&St)[1][8][4],
                                         T* tile, float*) {
        walk.top(j, tr, issue, grows);                          // barrier: chunk j - 1 done; loads; log decays
        post_state_max<T>(St, tr->red);
        if constexpr (wbmma::Traits<T>::HALF) __syncthreads();
        const float sigma = state_to_tile<T, NP, FS == 3>(St, tile, tr->red);
        walk.wait();
        if constexpr (FS >= 2) issue(j, j % STAGES, true);     // chunk j's staged tiles split (FS 2, 3)
        wbgmma::fence_proxy_async();
        __syncthreads();
        return sigma;
    }
};

// A^T's register fragments for an RS product contracting over the chunk (k = tokens): the warp's 16 rows (columns
// 16 w .. of a swizzled tile stored [token][column]), each k-slice weighed in float32 and rounded to T once, as tc's
// KWeights weighs mma.sync fragments (f: a weight per token or nullptr, times mul).
template <typename T>
__device__ __forceinline__ void weighed_at(unsigned (&a)[4][4], const T* tile, const float* f, float mul) {
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
        wbgmma::load_a<true>(a[ks], tile, 16 * (threadIdx.x >> 5), 16 * ks);
        tc::KWeights<T>{f, mul}(reinterpret_cast<unsigned (&)[1][4]>(a[ks]), 16 * ks);
    }
}

// NP = 2: weighed_at's fragments of A^T diag(f) mul for a hi + lo pair of tiles (tile, tile + TILE): each element's
// weight (f[k] mul, f = nullptr: mul) times (hi + lo) in float32, split again into a hi and a lo part (ah, al); the
// k indices of fragment register e as KWeights reads them (e 0, 1: k, k + 1; e 2, 3: k + 8, k + 9; k = 16 ks + 2 t)
template <typename T>
__device__ __forceinline__ void weighed_at_pairs(unsigned (&ah)[4][4], unsigned (&al)[4][4], const T* tile, const float* f,
                                                 float mul) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
        wbgmma::load_a<true>(ah[ks], tile, 16 * (threadIdx.x >> 5), 16 * ks);
        wbgmma::load_a<true>(al[ks], tile + TILE, 16 * (threadIdx.x >> 5), 16 * ks);
        const int k = 16 * ks + 2 * t;
        const float2 f0 = f ? *reinterpret_cast<const float2*>(f + k) : make_float2(1.f, 1.f);
        const float2 f8 = f ? *reinterpret_cast<const float2*>(f + k + 8) : make_float2(1.f, 1.f);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float w0 = (e < 2 ? f0.x : f8.x) * mul, w1 = (e < 2 ? f0.y : f8.y) * mul;
            const float x0 = w0 * (unpack2<T>(ah[ks][e], 0) + unpack2<T>(al[ks][e], 0));
            const float x1 = w1 * (unpack2<T>(ah[ks][e], 1) + unpack2<T>(al[ks][e], 1));
            split2<T>(x0, x1, ah[ks][e], al[ks][e]);
        }
    }
}

// Row dots x_r . acc_r of the warp's 16 rows (tile rows m0 ..) against a swizzled tile's rows (NP = 2: hi + lo), times
// mul, written to out[r] for rows r < nrow (tc::row_dots on the swizzled layout: d log_decay's q.dq and k.dk)
template <typename T, int NP = 1>
__device__ __forceinline__ void row_dots(const float (&a)[8][4], const T* tile, int m0, int nrow, float* __restrict__ out,
                                         float mul) {
    const int gq = (threadIdx.x & 31) >> 2, tq = threadIdx.x & 3;
    const unsigned char* b = reinterpret_cast<const unsigned char*>(tile);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = m0 + gq + 8 * h;
        float d = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const T* x = reinterpret_cast<const T*>(b + wbgmma::sw128(r, nt)) + 2 * tq;
            float x0 = to_f32(x[0]), x1 = to_f32(x[1]);
            if constexpr (NP == 2) x0 += to_f32(x[TILE]), x1 += to_f32(x[TILE + 1]);     // + the lo tile's
            d += a[nt][2 * h] * x0 + a[nt][2 * h + 1] * x1;
        }
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        if (tq == 0 && r < nrow) out[r] = d * mul;
    }
}

// The "xscale" storage (TO float with T 16-bit: xscale.cu): operand i of slice n (0 q, 1 k, 2 v, 3 dO) holds its
// float32 values times 2^-xexp[i N + n], so a result the walker forms linear in operands a, b, .. comes out
// 2^-(e_a + e_b + ..) times its value; xmul<T, TO>(xexp, a, b, ..) is the factor that gives it back (1 where TO is T:
// the operands are the caller's).
template <typename T, typename TO, typename... I>
__device__ __forceinline__ float xmul(const int* __restrict__ xexp, I... idx) {
    if constexpr (wbmma::Traits<TO>::F32 && !wbmma::Traits<T>::F32) {
        const int n = blockIdx.y, N = gridDim.y;
        return ldexpf(1.f, (xexp[idx * N + n] + ...));
    } else {
        return 1.f;
    }
}
}  // namespace tg

template <typename T, int STAGES, int NP = 1, int FS = 0, bool DECAY = false>
__global__ void __launch_bounds__(128) tg_seg_state(const typename tg::In<T, FS>::type* __restrict__ x,
        const typename tg::In<T, FS>::type* __restrict__ y, const void* __restrict__ g, float* __restrict__ Eout,
        float* __restrict__ gam, const int* __restrict__ seg_t0, const int* __restrict__ seg_t1, int T_, int dx,
        int dy, int NSEG, float wscale, int g_kind, const int* __restrict__ xexp) {
    using namespace tc;
    static_assert(sizeof(T) == 2 && (STAGES == 2 || STAGES == 3), "16-bit tiles, two or three stages");
    static_assert((NP == 1 && !FS && !DECAY) || (NP == 2 && !(FS == 1 && DECAY)), "one part, or hi + lo pairs (log decays)");
    using tg::TILE;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = wbgmma::align1024<T>(smem_raw);                 // stage s: X at 2 s NP TILE, Y after it
    const int nty = (dy + BV - 1) / BV;
    const int yt = blockIdx.x % nty, s = blockIdx.x / nty, n = blockIdx.y;
    const int c0 = yt * BV, w = threadIdx.x >> 5;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_;
    const int nch = (t1 - t0 + C - 1) / C;
    float mx = tg::xinv<FS>(xexp, 1), my = tg::xinv<FS>(xexp, 2);           // FS: x = k, y = v
    const long long lox = (long long)gridDim.y * T_ * dx, loy = (long long)gridDim.y * T_ * dy;   // NP 2: lo planes
    int te[4];                                                  // FS 3: the chunk's tile exponents (x, y)
    float xm[4];
    float* tmx = DECAY ? reinterpret_cast<Trailer*>(stages + STAGES * 2 * NP * TILE)->red
                       : reinterpret_cast<float*>(stages + STAGES * 2 * NP * TILE);
    auto issue_at = [&](int j, int st, bool land = false) {
        T* sX = stages + st * 2 * NP * TILE;
        if constexpr (FS == 3)
            if (land) {
                tg::tile_exponents<T, 2, C, THREADS>(sX, tmx, te, xm);
                mx = xm[0], my = xm[1];
            }
        const int cs = t0 + C * j, nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        tg::load_operand<T, NP, FS, C, THREADS>(sX, x + row0 * dx, dx, nrow, 0, dx, mx, lox, land);
        tg::load_operand<T, NP, FS, C, THREADS>(sX + NP * TILE, y + row0 * dy, dy, nrow, c0, dy, my, loy, land);
    };
    auto issue = [&](int j) { issue_at(j, j % STAGES); };
    float Es[1][8][4];
    zero(Es);
    if constexpr (DECAY) {        // E <- e^{b_last} E + X^T diag(u) Y per chunk (tc_seg_state's forward with log decays)
        Trailer* tr = reinterpret_cast<Trailer*>(stages + STAGES * 2 * NP * TILE);
        auto grows = [&](int j) { return grows_at(g, g_kind, nT + t0 + C * j, min(C, t1 - (t0 + C * j))); };
        Walk<STAGES> walk(nch, true, tr, issue_at, grows);
        double gsum = 0.0;
        for (int j = 0; j < nch; ++j) {
            const T* sX = stages + (j % STAGES) * 2 * NP * TILE;
            walk.top(j, tr, issue_at, grows);                   // barrier: chunk j - 1 done; loads; log decays
            walk.wait();
            if constexpr (FS >= 2) issue_at(j, j % STAGES, true);   // (FS 2, 3: split in place)
            wbgmma::fence_proxy_async();
            __syncthreads();
            gsum += logdecay_at(tr, C - 1);
            scale_acc(Es, tr->e[C - 1]);
            unsigned xa[4][4], xl[4][4];                        // (X diag(u) wscale)^T's fragments (and lo parts)
            tg::weighed_at_pairs<T>(xa, xl, sX, tr->u, wscale);
            if constexpr (FS == 3) tg::scale_pow2(Es, -(te[0] + te[1]));    // (E in the tiles' units for the product)
            wbgmma::fence_acc(Es[0]);
            wbgmma::fence();
            tg::gemm_rs<T, NP, true>(Es[0], xa, xl, sX + NP * TILE);
            wbgmma::commit();
            wbgmma::wait<0>();
            wbgmma::fence_acc(Es[0]);
            if constexpr (FS == 3) tg::scale_pow2(Es, te[0] + te[1]);
        }
        cp_async_wait();
        state_store(Es, Eout + ((long long)n * NSEG + s) * dx * dy, 16 * w, 0, c0, dx, dy);
        if (gam && yt == 0 && threadIdx.x == 0) gam[(long long)n * NSEG + s] = (float)gsum;
        return;
    }
    tg::prologue<STAGES>(nch, issue);
    for (int j = 0; j < nch; ++j) {
        cp_async_wait_group<STAGES - 2>();                      // chunk j's tiles (this thread's copies) landed
        if constexpr (FS >= 2) issue_at(j, j % STAGES, true);   // (FS 2, 3: split in place)
        wbgmma::fence_proxy_async();
        __syncthreads();                                        // ... every thread's; chunk j - 1's products done
        if (j + STAGES - 1 < nch) issue(j + STAGES - 1);        // into chunk j - 1's stage
        cp_async_commit();
        const T* sX = stages + (j % STAGES) * 2 * NP * TILE;
        if constexpr (FS == 3) tg::scale_pow2(Es, -(te[0] + te[1]));
        wbgmma::fence_acc(Es[0]);
        wbgmma::fence();
        if constexpr (NP == 1) {
#pragma unroll
            for (int ks = 0; ks < C / 16; ++ks)
                wbgmma::mma_ss<T, true, true>(Es[0], wbgmma::desc_mnmajor(sX, 16 * ks),
                                              wbgmma::desc_mnmajor(sX + TILE, 16 * ks), 1);
        } else {
            tg::gemm_ss<T, NP, true, true>(Es[0], sX, sX + NP * TILE, true);
        }
        wbgmma::commit();
        wbgmma::wait<0>();
        wbgmma::fence_acc(Es[0]);
        if constexpr (FS == 3) tg::scale_pow2(Es, te[0] + te[1]);
    }
    cp_async_wait();                                            // the trailing empty groups
    state_store(Es, Eout + ((long long)n * NSEG + s) * dx * dy, 16 * w, 0, c0, dx, dy);
}

template <typename T, int STAGES, bool DECAY, typename TO = T, int NP = 1, int FS = 0>
__global__ void __launch_bounds__(128, NP == 2 && FS != 1 && !DECAY ? 3 : NP == 2 ? 2 : 1) tg_fwd(const typename tg::In<T, FS>::type* __restrict__ q,
        const typename tg::In<T, FS>::type* __restrict__ k, const typename tg::In<T, FS>::type* __restrict__ v,
        const void* __restrict__ g, TO* __restrict__ o, const float* __restrict__ Hin,
        float* __restrict__ Hend, const int* __restrict__ seg_t0, const int* __restrict__ seg_t1,
        const int* __restrict__ seg_seq, int T_, int dk, int dv, int NSEG, int nseq, float scale, int causal,
        int g_kind, T* __restrict__ Hst, float* __restrict__ Hsig, const int* __restrict__ seg_c0,
        const int* __restrict__ xexp) {
    using namespace tc;
    using tg::TILE;
    static_assert(sizeof(T) == 2 && (STAGES == 2 || STAGES == 3 || (NP == 2 && STAGES == 1)),
                  "16-bit tiles, two or three stages (pairs: one or two)");
    static_assert((NP == 1 && !FS) || (NP == 2 && !(DECAY && FS == 1) && wbmma::Traits<TO>::F32),
                  "pairs: float32 results (split by plain loads: linear)");
    static_assert(FS != 3 || STAGES == 1, "tile exponents: one stage (their posts after the block max)");
    constexpr bool XS = wbmma::Traits<TO>::F32;                 // xscale: float32 outputs times omul
    constexpr bool RS = NP == 2 && DECAY;                       // P's rows at a power of two each (tg::p_frags)
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = wbgmma::align1024<T>(smem_raw);                 // stage s: Q, K, V at (3 s + 0, 1, 2) NP TILE
    T* sH = stages + STAGES * 3 * NP * TILE;                    // (NP = 2: each hi tile, then its lo tile)
    float* red = tg::red_slot<NP == 2 && STAGES == 2 && !DECAY>(smem_raw, stages, sH + NP * TILE);   // max |H| ...
    Trailer* tr = reinterpret_cast<Trailer*>(sH + NP * TILE);   // ... or, DECAY, the Trailer (red inside)
    const int ntv = (dv + BV - 1) / BV;
    const int vt = blockIdx.x % ntv, s = blockIdx.x / ntv, n = blockIdx.y;
    const int c0 = vt * BV, w = threadIdx.x >> 5;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_, E = (long long)dk * dv;
    float H[1][8][4];
    state_load(H, Hin ? Hin + ((long long)n * NSEG + s) * E : nullptr, 16 * w, 0, c0, dk, dv);
    const float omul = tg::xmul<T, TO>(xexp, 0, 1, 2);
    const int nch = (t1 - t0 + C - 1) / C;
    float mq = tg::xinv<FS>(xexp, 0), mk = tg::xinv<FS>(xexp, 1), mv = tg::xinv<FS>(xexp, 2);
    const long long lok = (long long)gridDim.y * T_ * dk, lov = (long long)gridDim.y * T_ * dv;   // NP 2: lo planes
    int te[4];                                                  // FS 3: the chunk's tile exponents (q, k, v)
    float xm[4];
    float* tmx = (DECAY ? tr->red : red) + 4;
    auto issue = [&](int j, int st, bool land = false) {
        T* sQ = stages + st * 3 * NP * TILE;
        if constexpr (FS == 3)
            if (land) {
                tg::tile_exponents<T, 3, C, THREADS>(sQ, tmx, te, xm);
                mq = xm[0], mk = xm[1], mv = xm[2];
            }
        const long long row0 = nT + t0 + C * j;
        const int nrow = min(C, t1 - (t0 + C * j));
        tg::load_operand<T, NP, FS, C, THREADS>(sQ, q + row0 * dk, dk, nrow, 0, dk, mq, lok, land);
        tg::load_operand<T, NP, FS, C, THREADS>(sQ + NP * TILE, k + row0 * dk, dk, nrow, 0, dk, mk, lok, land);
        tg::load_operand<T, NP, FS, C, THREADS>(sQ + 2 * NP * TILE, v + row0 * dv, dv, nrow, c0, dv, mv, lov, land);
    };
    auto grows = [&](int j) { return grows_at(g, g_kind, nT + t0 + C * j, min(C, t1 - (t0 + C * j))); };
    tg::Pipe<STAGES, DECAY, NP, FS> pipe(nch, tr, issue, grows);
    for (int j = 0; j < nch; ++j) {
        const int cs = t0 + C * j, nrow = min(C, t1 - cs);
        const T* sQ = stages + (j % STAGES) * 3 * NP * TILE;
        const T* sK = sQ + NP * TILE;
        const T* sV = sK + NP * TILE;
        const float sigma = pipe.top(j, nch, tr, issue, grows, H, sH, red);
        float acc[1][8][4], S[1][8][4];
        tg::fence_accs(acc, S);
        wbgmma::fence();
        tg::gemm_ss<T, NP, false, true>(acc[0], sQ, sH, false);       // o = Q H
        tg::gemm_ss<T, NP, false, false>(S[0], sQ, sK, false);        // S = Q K^T
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(acc, S);
        if constexpr (DECAY) scale_acc_rows(acc, 16 * w, [&](int r) { return scale * sigma * tr->e[r]; });
        else scale_acc(acc, scale * sigma);
        wbmma::AFrags<T, 8> P, Pl;                              // (Pl: NP = 2, P's lo parts)
        const float2 pf = tg::p_frags<T, NP, true, RS>(P, Pl, S, 16 * w, DECAY ? tr : nullptr, DECAY, scale);
        if constexpr (RS) tg::scale_rows2(acc, pf);             // (o's rows in P's units during P V)
        if constexpr (FS == 3) {                                // o = 2^e_q Q' H (the caller's units), then in the
            tg::scale_pow2(acc, te[0] - (te[0] + te[1] + te[2]));   // units of P' V' (P' = S' scale: 2^-(e_q + e_k)
            tg::scale_pow2(H, -(te[1] + te[2]));                //   of P) for P V; H in K' V''s for its update
        }
        unsigned kf[4][4], kfl[4][4];                           // DECAY: (diag(u) K)^T's fragments (NP 2: + lo)
        if constexpr (DECAY) {
            scale_acc(H, tr->e[C - 1]);
            if constexpr (NP == 2) tg::weighed_at_pairs<T>(kf, kfl, sK, tr->u, 1.f);
            else tg::weighed_at<T>(kf, sK, tr->u, 1.f);
        }
        tg::fence_accs(acc, H);
        wbgmma::fence();
        tg::gemm_rs<T, NP, true>(acc[0], P.f, Pl.f, sV);             // o += P V
        if constexpr (DECAY) tg::gemm_rs<T, NP, true>(H[0], kf, kfl, sV);   // H <- e^{b_last} H + K^T diag(u) V
        else tg::gemm_ss<T, NP, true, true>(H[0], sK, sV, true);     // H += K^T V (also after the last chunk: no
        wbgmma::commit();                                              // branch between a batch's wgmmas)
        wbgmma::wait<0>();
        tg::fence_accs(acc, H);
        if constexpr (FS == 3) {
            tg::scale_pow2(acc, te[0] + te[1] + te[2]);
            tg::scale_pow2(H, te[1] + te[2]);
        }
        if constexpr (RS) tg::scale_rows2(acc, make_float2(1.f / pf.x, 1.f / pf.y));
        if constexpr (XS) scale_acc(acc, omul);
        store_rows<TO, 8>(acc[0], o + (nT + cs) * dv, dv, 16 * w, nrow, c0, dv);
    }
    cp_async_wait();                                            // the trailing empty groups
    if (Hend) state_store(H, Hend + ((long long)n * NSEG + s) * E, 16 * w, 0, c0, dk, dv);
}

// tg_bwd_dq<T, STAGES, ESUM, DECAY>: tc_bwd_dq<T, 64, 1, .., ESUM> of a causal call (16-bit, dv <= 64; DECAY: with log
// decays).  grid (NSEG * ceil(dk / 64), N), block 128; smem: STAGES x (dO, V, K, Q) swizzled tiles (K, Q: this block's
// 64 dk columns; Q loaded with ESUM or DECAY), the state tile (H / sigma: rows dk, columns dv), 4 floats or (DECAY) the
// Trailer, 1024 bytes of slack.  Per chunk, after the state went to shared memory (tg::Pipe): one batch of dO H^T
// and dO V^T (eight SS products) and a second batch beside it of the state update and, with ESUM, the REV sum:
//   linear: H += K^T V, Es += Q^T dO (eight SS, K^T and Q^T read M-major), Es times scale once at the end (tc_bwd_dq
//           weighs Q^T's fragments by scale in T instead: the results agree to rounding), and only the first batch
//           is waited for before dq's epilogue (the second runs on beside it);
//   DECAY:  H <- e^{b_last} H + K^T diag(u) V and Es += Q^T diag(scale e^{B_c + b_t - beta}) dO (RS: tc_bwd_dq's
//           weighed fragments, tg::weighed_at; its base and B_c as there), both batches waited for (the weighed
//           fragments must live until their products are done);
// then dq's rows scaled by scale sigma (e^{b_t}), dP = the masked, scaled (decayed) dO V^T in registers; one batch of
// dP K (four RS); DECAY and rq: the row dots q.dq.
template <typename T, int STAGES, bool ESUM, bool DECAY, typename TO = T, int NP = 1, int FS = 0>
__global__ void __launch_bounds__(128, NP == 2 ? 2 : DECAY && ESUM ? 1 : 3) tg_bwd_dq(
        const typename tg::In<T, FS>::type* __restrict__ q, const typename tg::In<T, FS>::type* __restrict__ k,
        const typename tg::In<T, FS>::type* __restrict__ v, const void* __restrict__ g,
        const typename tg::In<T, FS>::type* __restrict__ dout, TO* __restrict__ dq,
        float* __restrict__ rq, const float* __restrict__ Hin, const int* __restrict__ seg_t0,
        const int* __restrict__ seg_t1, const int* __restrict__ seg_seq, int T_, int dk, int dv, int NSEG,
        int nseq, float scale, int causal, int g_kind, float* __restrict__ Eout, const int* __restrict__ xexp) {
    using namespace tc;
    using tg::TILE;
    static_assert(sizeof(T) == 2 && (STAGES == 2 || STAGES == 3 || (NP == 2 && STAGES == 1)),
                  "16-bit tiles, two or three stages (pairs: one)");
    static_assert((NP == 1 && !FS) || (NP == 2 && !(DECAY && FS == 1) && wbmma::Traits<TO>::F32),
                  "pairs: float32 results (split by plain loads: linear)");
    constexpr bool XS = wbmma::Traits<TO>::F32;                 // xscale: float32 dq times qmul, q.dq times 2^e_q
    constexpr bool RS = NP == 2 && DECAY;                       // P's rows at a power of two each (tg::p_frags)
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = wbgmma::align1024<T>(smem_raw);                 // stage s: dO, V, K, Q at (4 s + 0, 1, 2, 3) NP TILE
    T* sH = stages + STAGES * 4 * NP * TILE;
    float* red = reinterpret_cast<float*>(sH + NP * TILE);
    Trailer* tr = reinterpret_cast<Trailer*>(sH + NP * TILE);
    const int ntk = (dk + BV - 1) / BV;
    const int kt = blockIdx.x % ntk, s = blockIdx.x / ntk, n = blockIdx.y, N = gridDim.y;
    const int k0 = kt * BV, w = threadIdx.x >> 5;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_, E = (long long)dk * dv;
    float H[1][8][4];
    state_load(H, Hin ? Hin + ((long long)n * NSEG + s) * E : nullptr, 16 * w, k0, 0, dk, dv);
    float Es[1][8][4];
    zero(Es);
    const float qmul = tg::xmul<T, TO>(xexp, 3, 2, 1), rqmul = tg::xmul<T, TO>(xexp, 0);
    tc::RevWeights rw;                                          // DECAY, ESUM: as tc_bwd_dq's
    const int nch = (t1 - t0 + C - 1) / C;
    float mq = tg::xinv<FS>(xexp, 0), mk = tg::xinv<FS>(xexp, 1), mv = tg::xinv<FS>(xexp, 2);
    const long long lok = (long long)gridDim.y * T_ * dk, lov = (long long)gridDim.y * T_ * dv;   // NP 2: lo planes
    float mo = tg::xinv<FS>(xexp, 3);
    int te[4];                                                  // FS 3: the chunk's tile exponents (dO, v, k, q)
    float xm[4];
    float* tmx = (DECAY ? tr->red : red) + 4;
    auto issue = [&](int j, int st, bool land = false) {
        T* sO = stages + st * 4 * NP * TILE;
        if constexpr (FS == 3)
            if (land) {
                tg::tile_exponents<T, (ESUM || DECAY) ? 4 : 3, C, THREADS>(sO, tmx, te, xm);
                mo = xm[0], mv = xm[1], mk = xm[2], mq = xm[3];
            }
        const long long row0 = nT + t0 + C * j;
        const int nrow = min(C, t1 - (t0 + C * j));
        tg::load_operand<T, NP, FS, C, THREADS>(sO, dout + row0 * dv, dv, nrow, 0, dv, mo, lov, land);
        tg::load_operand<T, NP, FS, C, THREADS>(sO + NP * TILE, v + row0 * dv, dv, nrow, 0, dv, mv, lov, land);
        tg::load_operand<T, NP, FS, C, THREADS>(sO + 2 * NP * TILE, k + row0 * dk, dk, nrow, k0, dk, mk, lok, land);
        if constexpr (ESUM || DECAY)
            tg::load_operand<T, NP, FS, C, THREADS>(sO + 3 * NP * TILE, q + row0 * dk, dk, nrow, k0, dk, mq, lok, land);
    };
    auto grows = [&](int j) { return grows_at(g, g_kind, nT + t0 + C * j, min(C, t1 - (t0 + C * j))); };
    tg::Pipe<STAGES, DECAY, NP, FS> pipe(nch, tr, issue, grows);
    for (int j = 0; j < nch; ++j) {
        const int cs = t0 + C * j, nrow = min(C, t1 - cs);
        const T* sO = stages + (j % STAGES) * 4 * NP * TILE;
        const T* sV = sO + NP * TILE;
        const T* sK = sV + NP * TILE;
        const T* sQ = sK + NP * TILE;
        const float sigma = pipe.top(j, nch, tr, issue, grows, H, sH, red);
        float acc[1][8][4], S[1][8][4];
        unsigned kf[4][4], qf[4][4], kfl[4][4], qfl[4][4];      // DECAY: the weighed fragments of K^T and Q^T (NP 2:
        if constexpr (DECAY) {                                  // and their lo parts)
            scale_acc(H, tr->e[C - 1]);
            if constexpr (NP == 2) tg::weighed_at_pairs<T>(kf, kfl, sK, tr->u, 1.f);
            else tg::weighed_at<T>(kf, sK, tr->u, 1.f);
            if constexpr (ESUM) {
                if constexpr (NP == 2) tg::weighed_at_pairs<T>(qf, qfl, sQ, tr->e, rw.next(tr, j, scale));
                else tg::weighed_at<T>(qf, sQ, tr->e, rw.next(tr, j, scale));
            }
        }
        if constexpr (FS == 3) {                                // H, Es in the tiles' units for their updates
            tg::scale_pow2(H, -(te[2] + te[1]));
            if constexpr (ESUM) tg::scale_pow2(Es, -(te[3] + te[0]));
        }
        tg::fence_accs(acc, S, H, Es);
        wbgmma::fence();
        tg::gemm_ss<T, NP, false, false>(acc[0], sO, sH, false);      // dq = dO H^T (H's rows are dq's columns)
        tg::gemm_ss<T, NP, false, false>(S[0], sO, sV, false);        // S = dO V^T
        wbgmma::commit();
        if constexpr (DECAY) {
            tg::gemm_rs<T, NP, true>(H[0], kf, kfl, sV);             // H <- e^{b_last} H + K^T diag(u) V
            if constexpr (ESUM) tg::gemm_rs<T, NP, true>(Es[0], qf, qfl, sO);   // Es += (weighed Q)^T dO
        } else {
            tg::gemm_ss<T, NP, true, true>(H[0], sK, sV, true);      // H += K^T V (also after the last chunk)
            if constexpr (ESUM) tg::gemm_ss<T, NP, true, true>(Es[0], sQ, sO, true);   // Es += Q^T dO
        }
        wbgmma::commit();
        if constexpr (DECAY) wbgmma::wait<0>();                 // (the weighed fragments die here)
        else wbgmma::wait<1>();                                 // the first batch done; the state batch may run on
        tg::fence_accs(acc, S);
        if constexpr (DECAY) scale_acc_rows(acc, 16 * w, [&](int r) { return scale * sigma * tr->e[r]; });
        else scale_acc(acc, scale * sigma);
        wbmma::AFrags<T, 8> P, Pl;
        const float2 pf = tg::p_frags<T, NP, true, RS>(P, Pl, S, 16 * w, DECAY ? tr : nullptr, DECAY, scale);
        if constexpr (RS) tg::scale_rows2(acc, pf);
        if constexpr (FS == 3) tg::scale_pow2(acc, -(te[1] + te[2]));  // dq = 2^e_o dO' H; dP' K' 2^-(e_o + e_v + e_k)
        tg::fence_accs(acc);
        wbgmma::fence();
        tg::gemm_rs<T, NP, true>(acc[0], P.f, Pl.f, sK);             // dq += dP K
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(acc, H, Es);
        if constexpr (FS == 3) {
            tg::scale_pow2(acc, te[0] + te[1] + te[2]);
            tg::scale_pow2(H, te[2] + te[1]);
            if constexpr (ESUM) tg::scale_pow2(Es, te[3] + te[0]);
        }
        if constexpr (RS) tg::scale_rows2(acc, make_float2(1.f / pf.x, 1.f / pf.y));
        if constexpr (XS) scale_acc(acc, qmul);
        store_rows<TO, 8>(acc[0], dq + (nT + cs) * dk, dk, 16 * w, nrow, k0, dk);
        if (DECAY && rq) tg::row_dots<T, NP>(acc[0], sQ, 16 * w, nrow, rq + ((long long)kt * N + n) * T_ + cs,
                                             FS == 3 ? ldexpf(rqmul, te[3]) : rqmul);
    }
    cp_async_wait();
    if constexpr (ESUM) {
        if constexpr (DECAY) {
            if (rw.base != 1.f) scale_acc(Es, rw.base);
        } else {
            scale_acc(Es, scale);
        }
        state_store(Es, Eout + ((long long)n * NSEG + s) * E, 16 * w, k0, 0, dk, dv);
    }
}

// tg_bwd_dkdv<T, STAGES, LOWREG, DECAY>: tc_bwd_dkdv<T, 64, 64, 1, 0, DKDV_ROWS, ..> (the fused dk/dv walker) of a
// causal call (16-bit, dk, dv <= 64; DECAY: with log decays).  grid (NSEG, N), block 128; smem: STAGES x (Q, K, V, dO)
// swizzled tiles, the dS tile (dS / sigma: rows dk, columns dv), 4 floats or (DECAY) the Trailer, 1024 bytes of slack.
// Walks its segment's chunks backwards; per chunk, after dS went to shared memory (tg::Pipe):
//   batch 1  dv = K dS, S1 = K Q^T                                   (eight SS)
//   then     dv's rows times sigma (u_t); P1 = the masked, scaled (decayed) S1 (keys x queries, upper) in registers
//   batch 2  dv += P1 dO (four RS), dk = V dS^T, S2 = V dO^T         (eight SS)
//   then     dv stored; dk's rows times sigma (u_t); P2 from S2; DECAY and rk: the row dots k.dk; the weighed
//            fragments of Q^T (scale, or scale e^{b_t - b_0} with dS first times e^{b_last - b_0}: tc_bwd_dkdv's)
//   batch 3  dk += P2 Q, dS += (weighed Q)^T dO                      (eight RS); DECAY: dS times e^{b_0} after it
// LOWREG: batch 2 in two, dv += P1 dO waited for and stored before dk = V dS^T and S2 are issued, so at most dS, dv
// and P1, then dS, dk and S2 are live (158 registers: 3 blocks per SM; 166 with DECAY); else dS, dv, P1, dk and S2 at once (182
// registers: 2 blocks per SM) with one wait fewer per chunk.  The dS update runs for every chunk (no branch inside a
// batch; tc_bwd_dkdv skips the segment's first chunk when nothing wants dSstart).
template <typename T, int STAGES, bool LOWREG, bool DECAY, typename TO = T, int NP = 1, int FS = 0>
__global__ void __launch_bounds__(128, NP == 2 ? 2 : LOWREG ? 3 : 1) tg_bwd_dkdv(
        const typename tg::In<T, FS>::type* __restrict__ q, const typename tg::In<T, FS>::type* __restrict__ k,
        const typename tg::In<T, FS>::type* __restrict__ v, const void* __restrict__ g,
        const typename tg::In<T, FS>::type* __restrict__ dout, TO* __restrict__ dkout,
        TO* __restrict__ dvout, float* __restrict__ rk, const float* __restrict__ dSin, float* __restrict__ dSstart,
        const int* __restrict__ seg_t0, const int* __restrict__ seg_t1, const int* __restrict__ seg_seq, int T_,
        int dk, int dv, int NSEG, int nseq, float scale, int causal, int g_kind, T* __restrict__ dqout,
        float* __restrict__ rq, const T* __restrict__ Hst, const float* __restrict__ Hsig,
        const int* __restrict__ seg_c0, float* __restrict__ anc, const int* __restrict__ xexp) {
    using namespace tc;
    using tg::TILE;
    static_assert(sizeof(T) == 2 && (STAGES == 2 || STAGES == 3 || (NP == 2 && STAGES == 1)),
                  "16-bit tiles, two or three stages (pairs: one)");
    static_assert((NP == 1 && !FS) || (NP == 2 && !(DECAY && FS == 1) && wbmma::Traits<TO>::F32),
                  "pairs: float32 results (split by plain loads: linear)");
    constexpr bool XS = wbmma::Traits<TO>::F32;                 // xscale: float32 dk, dv times kmul, vmul; k.dk 2^e_k
    constexpr bool RS = NP == 2 && DECAY;                       // P's rows at a power of two each (tg::p_frags)
    constexpr bool FAST = NP == 1 && !LOWREG;                   // the factored decay (p_frags): not at LOWREG's bound
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = wbgmma::align1024<T>(smem_raw);                 // stage s: Q, K, V, dO at (4 s + 0, 1, 2, 3) NP TILE
    T* sS = stages + STAGES * 4 * NP * TILE;
    float* red = reinterpret_cast<float*>(sS + NP * TILE);
    Trailer* tr = reinterpret_cast<Trailer*>(sS + NP * TILE);
    const int s = blockIdx.x, n = blockIdx.y, w = threadIdx.x >> 5;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_, E = (long long)dk * dv;
    float dS[1][8][4];
    state_load(dS, dSin ? dSin + ((long long)n * NSEG + s) * E : nullptr, 16 * w, 0, 0, dk, dv);
    const float kmul = tg::xmul<T, TO>(xexp, 0, 2, 3), vmul = tg::xmul<T, TO>(xexp, 0, 1, 3);
    const float rkmul = tg::xmul<T, TO>(xexp, 1);
    const int nch = (t1 - t0 + C - 1) / C;
    auto start = [&](int i) { return t0 + C * (nch - 1 - i); };    // chunk i of the (backward) walk
    float mq = tg::xinv<FS>(xexp, 0), mk = tg::xinv<FS>(xexp, 1), mv = tg::xinv<FS>(xexp, 2);
    const long long lok = (long long)gridDim.y * T_ * dk, lov = (long long)gridDim.y * T_ * dv;   // NP 2: lo planes
    float mo = tg::xinv<FS>(xexp, 3);
    int te[4];                                                  // FS 3: the chunk's tile exponents (q, k, v, dO)
    float xm[4];
    float* tmx = (DECAY ? tr->red : red) + 4;
    auto issue = [&](int i, int st, bool land = false) {
        T* sQ = stages + st * 4 * NP * TILE;
        if constexpr (FS == 3)
            if (land) {
                tg::tile_exponents<T, 4, C, THREADS>(sQ, tmx, te, xm);
                mq = xm[0], mk = xm[1], mv = xm[2], mo = xm[3];
            }
        const int cs = start(i), nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        tg::load_operand<T, NP, FS, C, THREADS>(sQ, q + row0 * dk, dk, nrow, 0, dk, mq, lok, land);
        tg::load_operand<T, NP, FS, C, THREADS>(sQ + NP * TILE, k + row0 * dk, dk, nrow, 0, dk, mk, lok, land);
        tg::load_operand<T, NP, FS, C, THREADS>(sQ + 2 * NP * TILE, v + row0 * dv, dv, nrow, 0, dv, mv, lov, land);
        tg::load_operand<T, NP, FS, C, THREADS>(sQ + 3 * NP * TILE, dout + row0 * dv, dv, nrow, 0, dv, mo, lov, land);
    };
    auto grows = [&](int i) { return grows_at(g, g_kind, nT + start(i), min(C, t1 - start(i))); };
    tg::Pipe<STAGES, DECAY, NP, FS> pipe(nch, tr, issue, grows);
    for (int i = 0; i < nch; ++i) {
        const int cs = start(i), nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        const T* sQ = stages + (i % STAGES) * 4 * NP * TILE;
        const T* sK = sQ + NP * TILE;
        const T* sV = sK + NP * TILE;
        const T* sO = sV + NP * TILE;
        const float sigma = pipe.top(i, nch, tr, issue, grows, dS, sS, red);
        auto inter = [&](int r) { return sigma * (DECAY ? tr->u[r] : 1.f); };
        float gv[1][8][4], gk[1][8][4], S[1][8][4];
        wbmma::AFrags<T, 8> P, Pl;
        tg::fence_accs(gv, S);
        wbgmma::fence();
        tg::gemm_ss<T, NP, false, true>(gv[0], sK, sS, false);        // dv = K dS
        tg::gemm_ss<T, NP, false, false>(S[0], sK, sQ, false);        // S1 = K Q^T
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(gv, S);
        if constexpr (DECAY) scale_acc_rows(gv, 16 * w, inter);
        else scale_acc(gv, sigma);
        const float2 pf1 = tg::p_frags<T, NP, false, RS, FAST>(P, Pl, S, 16 * w, DECAY ? tr : nullptr, DECAY, scale);
        if constexpr (RS) tg::scale_rows2(gv, pf1);
        if constexpr (FS == 3) tg::scale_pow2(gv, -(te[0] + te[3]));   // dv = 2^e_k K' dS; P1' dO' 2^-(e_k + e_q + e_o)
        tg::fence_accs(gv, gk, S);
        wbgmma::fence();
        tg::gemm_rs<T, NP, true>(gv[0], P.f, Pl.f, sO);              // dv += P1 dO
        if constexpr (LOWREG) {                                 // dv done and stored before dk's products start
            wbgmma::commit();
            wbgmma::wait<0>();
            tg::fence_accs(gv);
            if constexpr (FS == 3) tg::scale_pow2(gv, te[1] + te[0] + te[3]);
            if constexpr (RS) tg::scale_rows2(gv, make_float2(1.f / pf1.x, 1.f / pf1.y));
            if constexpr (XS) scale_acc(gv, vmul);
            store_rows<TO, 8>(gv[0], dvout + row0 * dv, dv, 16 * w, nrow, 0, dv);
            tg::fence_accs(gk, S);
            wbgmma::fence();
        }
        tg::gemm_ss<T, NP, false, false>(gk[0], sV, sS, false);      // dk = V dS^T
        tg::gemm_ss<T, NP, false, false>(S[0], sV, sO, false);        // S2 = V dO^T
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(gv, gk, S);
        if constexpr (!LOWREG) {
            if constexpr (FS == 3) tg::scale_pow2(gv, te[1] + te[0] + te[3]);
            if constexpr (RS) tg::scale_rows2(gv, make_float2(1.f / pf1.x, 1.f / pf1.y));
            if constexpr (XS) scale_acc(gv, vmul);
            store_rows<TO, 8>(gv[0], dvout + row0 * dv, dv, 16 * w, nrow, 0, dv);
        }
        if constexpr (DECAY) scale_acc_rows(gk, 16 * w, inter);
        else scale_acc(gk, sigma);
        const float2 pf2 = tg::p_frags<T, NP, false, RS, FAST>(P, Pl, S, 16 * w, DECAY ? tr : nullptr, DECAY, scale);
        if constexpr (RS) tg::scale_rows2(gk, pf2);
        if constexpr (FS == 3) {                                // dk = 2^e_v V' dS; P2' Q' 2^-(e_v + e_o + e_q);
            tg::scale_pow2(gk, -(te[3] + te[0]));               // dS += Q'^T dO' 2^-(e_q + e_o)
            tg::scale_pow2(dS, -(te[0] + te[3]));
        }
        unsigned qa[4][4], qal[4][4];                           // (weighed Q)^T's fragments: the warp's dk rows
        const float e0 = DECAY ? weight_base(tr) : 1.f;         // e^b relative to the chunk's first row
        if constexpr (DECAY) scale_acc(dS, tr->e[C - 1] / e0);
        if constexpr (NP == 2) tg::weighed_at_pairs<T>(qa, qal, sQ, DECAY ? tr->e : nullptr, scale / e0);
        else tg::weighed_at<T>(qa, sQ, DECAY ? tr->e : nullptr, scale / e0);
        tg::fence_accs(gk, dS);
        wbgmma::fence();
        tg::gemm_rs<T, NP, true>(gk[0], P.f, Pl.f, sQ);              // dk += P2 Q
        tg::gemm_rs<T, NP, true>(dS[0], qa, qal, sO);                 // dS += (weighed Q)^T dO
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(gk, dS);
        if (DECAY && e0 != 1.f) scale_acc(dS, e0);
        if constexpr (FS == 3) {
            tg::scale_pow2(gk, te[2] + te[3] + te[0]);
            tg::scale_pow2(dS, te[0] + te[3]);
        }
        if constexpr (RS) tg::scale_rows2(gk, make_float2(1.f / pf2.x, 1.f / pf2.y));
        if constexpr (XS) scale_acc(gk, kmul);
        store_rows<TO, 8>(gk[0], dkout + row0 * dk, dk, 16 * w, nrow, 0, dk);
        if (DECAY && rk) tg::row_dots<T, NP>(gk[0], sK, 16 * w, nrow, rk + (long long)n * T_ + cs,
                                             FS == 3 ? ldexpf(rkmul, te[1]) : rkmul);
    }
    cp_async_wait();
    if (dSstart) state_store(dS, dSstart + ((long long)n * NSEG + s) * E, 16 * w, 0, 0, dk, dv);
}
