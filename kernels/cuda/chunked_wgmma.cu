// chunked_wgmma.cu -- kernels of the tensor-core chunk core (chunked_mma.cu) on Hopper's warpgroup MMA (wgmma.cuh):
// sm_90a only (kernels/cupy/_module.py SM90A_SOURCES).  Each is a drop-in for one chunked_mma.cu kernel: the same
// arguments, the same results up to the order of the float32 sums, launched by kernels/cupy/_chunked_mma.py where a
// call qualifies (docs/kernels/linear.md, "Warpgroup MMA: the primitives, their model, and the first two kernels" and
// the sections after it).  tg_bwd_dq and tg_bwd_dkdv: their comments below.
//
//   tg_fwd<T, STAGES>        tc_fwd<T, 64, 1, ..> of a causal linear call: T 16-bit, dk <= 64, no log decays, no
//                            STORE.  grid (NSEG * ceil(dv / 64), N), block 128; smem: STAGES x (Q, K, V) swizzled
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
#include "chunked_mma.cu"
#include "wgmma.cuh"

template <typename T, int STAGES>
__global__ void __launch_bounds__(128) tg_seg_state(const T* __restrict__ x, const T* __restrict__ y,
        const void* __restrict__ g, float* __restrict__ Eout, float* __restrict__ gam,
        const int* __restrict__ seg_t0, const int* __restrict__ seg_t1, int T_, int dx, int dy, int NSEG,
        float wscale, int g_kind) {
    using namespace tc;
    static_assert(sizeof(T) == 2 && (STAGES == 2 || STAGES == 3), "16-bit tiles, two or three stages");
    constexpr int TILE = C * 64;                                // elements of one swizzled 64 x 64 tile
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = wbgmma::align1024<T>(smem_raw);                 // stage s: X at 2 s TILE, Y after it
    const int nty = (dy + BV - 1) / BV;
    const int yt = blockIdx.x % nty, s = blockIdx.x / nty, n = blockIdx.y;
    const int c0 = yt * BV, w = threadIdx.x >> 5;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_;
    const int nch = (t1 - t0 + C - 1) / C;
    auto issue = [&](int j) {
        T* sX = stages + (j % STAGES) * 2 * TILE;
        const int cs = t0 + C * j, nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        wbgmma::load_tile<T, C, THREADS>(sX, x + row0 * dx, dx, nrow, 0, dx);
        wbgmma::load_tile<T, C, THREADS>(sX + TILE, y + row0 * dy, dy, nrow, c0, dy);
    };
    float Es[1][8][4];
    zero(Es);
#pragma unroll
    for (int j = 0; j < STAGES - 1; ++j) {
        if (j < nch) issue(j);
        cp_async_commit();
    }
    for (int j = 0; j < nch; ++j) {
        cp_async_wait_group<STAGES - 2>();                      // chunk j's tiles (this thread's copies) landed
        wbgmma::fence_proxy_async();
        __syncthreads();                                        // ... every thread's; chunk j - 1's products done
        if (j + STAGES - 1 < nch) issue(j + STAGES - 1);        // into chunk j - 1's stage
        cp_async_commit();
        const T* sX = stages + (j % STAGES) * 2 * TILE;
        wbgmma::fence_acc(Es[0]);
        wbgmma::fence();
#pragma unroll
        for (int ks = 0; ks < C / 16; ++ks)
            wbgmma::mma_ss<T, true, true>(Es[0], wbgmma::desc_mnmajor(sX, 16 * ks),
                                          wbgmma::desc_mnmajor(sX + TILE, 16 * ks), 1);
        wbgmma::commit();
        wbgmma::wait<0>();
        wbgmma::fence_acc(Es[0]);
    }
    cp_async_wait();                                            // the trailing empty groups
    state_store(Es, Eout + ((long long)n * NSEG + s) * dx * dy, 16 * w, 0, c0, dx, dy);
}

namespace tg {
// the state's fragments (warp w: rows m0 .., 64 columns) times inv -> the swizzled state tile in T
template <typename T>
__device__ __forceinline__ void frags_to_tile(const float (&H)[8][4], T* tile, int m0, float inv) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    unsigned char* b = reinterpret_cast<unsigned char*>(tile);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
            *reinterpret_cast<unsigned*>(b + wbgmma::sw128(m0 + g + 8 * h, nt) + 4 * t) =
                pack2<T>(H[nt][2 * h] * inv, H[nt][2 * h + 1] * inv);
}

// The walkers' chunk prologue: the first STAGES - 1 chunks' loads, a cp.async group each.
template <int STAGES, typename F>
__device__ __forceinline__ void prologue(int nch, F&& issue) {
#pragma unroll
    for (int j = 0; j < STAGES - 1; ++j) {
        if (j < nch) issue(j);
        tc::cp_async_commit();
    }
}

// The top of chunk j of a walker that hands its float32 state St (warp w: rows 16 w ..) to the chunk's products:
// chunk j's copies waited for; float16: the warp's max |St| posted to red; the barrier after which chunk j - 1's
// products are done in every warp (the state tile and chunk j - 1's stage are free); sigma from the block max (1 but
// for float16, as tc::state_to_smem); St / sigma into its swizzled tile; chunk j + STAGES - 1's loads (issue_next) and
// their group; the async-proxy fence; the barrier that publishes the tile and chunk j's tiles.  Returns sigma.
template <typename T, int STAGES, typename F>
__device__ __forceinline__ float chunk_top(const float (&St)[1][8][4], T* tile, float* red, F&& issue_next) {
    const int w = threadIdx.x >> 5;
    tc::cp_async_wait_group<STAGES - 2>();
    if constexpr (wbmma::Traits<T>::HALF) {
        const float mx = tc::warp_abs_max(St);
        if ((threadIdx.x & 31) == 0) red[w] = mx;
    }
    __syncthreads();
    float sigma = 1.f, inv = 1.f;
    if constexpr (wbmma::Traits<T>::HALF) tc::pow2_scale(fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3])), sigma, inv);
    frags_to_tile<T>(St[0], tile, 16 * w, inv);
    issue_next();
    tc::cp_async_commit();
    wbgmma::fence_proxy_async();
    __syncthreads();
    return sigma;
}

// fences the compiler may not move accumulator reads or writes across (wbgmma::fence_acc of each)
template <typename... A>
__device__ __forceinline__ void fence_accs(A&... a) { (wbgmma::fence_acc(a[0]), ...); }
}  // namespace tg

template <typename T, int STAGES>
__global__ void __launch_bounds__(128) tg_fwd(const T* __restrict__ q, const T* __restrict__ k,
        const T* __restrict__ v, const void* __restrict__ g, T* __restrict__ o, const float* __restrict__ Hin,
        float* __restrict__ Hend, const int* __restrict__ seg_t0, const int* __restrict__ seg_t1,
        const int* __restrict__ seg_seq, int T_, int dk, int dv, int NSEG, int nseq, float scale, int causal,
        int g_kind, T* __restrict__ Hst, float* __restrict__ Hsig, const int* __restrict__ seg_c0) {
    using namespace tc;
    static_assert(sizeof(T) == 2 && (STAGES == 2 || STAGES == 3), "16-bit tiles, two or three stages");
    constexpr int TILE = C * 64;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = wbgmma::align1024<T>(smem_raw);                 // stage s: Q, K, V at (3 s + 0, 1, 2) TILE
    T* sH = stages + STAGES * 3 * TILE;
    float* red = reinterpret_cast<float*>(sH + TILE);           // each warp's max |H| (float16)
    const int ntv = (dv + BV - 1) / BV;
    const int vt = blockIdx.x % ntv, s = blockIdx.x / ntv, n = blockIdx.y;
    const int c0 = vt * BV, w = threadIdx.x >> 5;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_, E = (long long)dk * dv;
    float H[1][8][4];
    state_load(H, Hin ? Hin + ((long long)n * NSEG + s) * E : nullptr, 16 * w, 0, c0, dk, dv);
    const int nch = (t1 - t0 + C - 1) / C;
    auto issue = [&](int j) {
        T* sQ = stages + (j % STAGES) * 3 * TILE;
        const long long row0 = nT + t0 + C * j;
        const int nrow = min(C, t1 - (t0 + C * j));
        wbgmma::load_tile<T, C, THREADS>(sQ, q + row0 * dk, dk, nrow, 0, dk);
        wbgmma::load_tile<T, C, THREADS>(sQ + TILE, k + row0 * dk, dk, nrow, 0, dk);
        wbgmma::load_tile<T, C, THREADS>(sQ + 2 * TILE, v + row0 * dv, dv, nrow, c0, dv);
    };
    tg::prologue<STAGES>(nch, issue);
    for (int j = 0; j < nch; ++j) {
        const int cs = t0 + C * j, nrow = min(C, t1 - cs);
        const T* sQ = stages + (j % STAGES) * 3 * TILE;
        const T* sK = sQ + TILE;
        const T* sV = sK + TILE;
        const float sigma = tg::chunk_top<T, STAGES>(H, sH, red, [&] { if (j + STAGES - 1 < nch) issue(j + STAGES - 1); });
        float acc[1][8][4], S[1][8][4];
        tg::fence_accs(acc, S);
        wbgmma::fence();
        wbgmma::gemm64_ss<T, false, true>(acc[0], sQ, sH, false);      // o = Q H
        wbgmma::gemm64_ss<T, false, false>(S[0], sQ, sK, false);       // S = Q K^T
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(acc, S);
        scale_acc(acc, scale * sigma);
        wbmma::AFrags<T, 8> P;
        intra_frags<T, true>(P, S, 16 * w, nullptr, false, scale);
        tg::fence_accs(acc, H);
        wbgmma::fence();
        wbgmma::gemm64_rs<T, true>(acc[0], P.f, sV);                  // o += P V
        wbgmma::gemm64_ss<T, true, true>(H[0], sK, sV, true);         // H += K^T V (also after the last chunk: no
        wbgmma::commit();                                              // branch between a batch's wgmmas)
        wbgmma::wait<0>();
        tg::fence_accs(acc, H);
        store_rows<T, 8>(acc[0], o + (nT + cs) * dv, dv, 16 * w, nrow, c0, dv);
    }
    cp_async_wait();                                            // the trailing empty groups
    if (Hend) state_store(H, Hend + ((long long)n * NSEG + s) * E, 16 * w, 0, c0, dk, dv);
}

// tg_bwd_dq<T, STAGES, ESUM>: tc_bwd_dq<T, 64, 1, .., ESUM> of a causal linear call (16-bit, dv <= 64, no log decays).
// grid (NSEG * ceil(dk / 64), N), block 128; smem: STAGES x (dO, V, K, Q) swizzled tiles (K, Q: this block's 64 dk
// columns; Q loaded with ESUM only), the state tile (H / sigma: rows dk, columns dv), 4 floats, 1024 bytes of slack.
// Per chunk, after the state went to shared memory (two barriers, as tg_fwd): one batch of dO H^T and dO V^T (eight
// SS products) and a second batch beside it of the state update H += K^T V and, with ESUM, the REV sum Es += Q^T dO
// (eight SS products, K^T and Q^T read M-major: nothing the first batch's epilogue waits for); then dq's rows
// scaled by scale sigma and dP = the masked, scaled dO V^T in registers; one batch of dP K (four RS).  Es is summed
// unscaled and multiplied by scale once at the end (tc_bwd_dq weighs Q^T's fragments by scale in T instead: the
// results agree to rounding).
template <typename T, int STAGES, bool ESUM>
__global__ void __launch_bounds__(128, 3) tg_bwd_dq(const T* __restrict__ q, const T* __restrict__ k,
        const T* __restrict__ v, const void* __restrict__ g, const T* __restrict__ dout, T* __restrict__ dq,
        float* __restrict__ rq, const float* __restrict__ Hin, const int* __restrict__ seg_t0,
        const int* __restrict__ seg_t1, const int* __restrict__ seg_seq, int T_, int dk, int dv, int NSEG,
        int nseq, float scale, int causal, int g_kind, float* __restrict__ Eout) {
    using namespace tc;
    static_assert(sizeof(T) == 2 && (STAGES == 2 || STAGES == 3), "16-bit tiles, two or three stages");
    constexpr int TILE = C * 64;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = wbgmma::align1024<T>(smem_raw);                 // stage s: dO, V, K, Q at (4 s + 0, 1, 2, 3) TILE
    T* sH = stages + STAGES * 4 * TILE;
    float* red = reinterpret_cast<float*>(sH + TILE);
    const int ntk = (dk + BV - 1) / BV;
    const int kt = blockIdx.x % ntk, s = blockIdx.x / ntk, n = blockIdx.y;
    const int k0 = kt * BV, w = threadIdx.x >> 5;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_, E = (long long)dk * dv;
    float H[1][8][4];
    state_load(H, Hin ? Hin + ((long long)n * NSEG + s) * E : nullptr, 16 * w, k0, 0, dk, dv);
    float Es[1][8][4];
    zero(Es);
    const int nch = (t1 - t0 + C - 1) / C;
    auto issue = [&](int j) {
        T* sO = stages + (j % STAGES) * 4 * TILE;
        const long long row0 = nT + t0 + C * j;
        const int nrow = min(C, t1 - (t0 + C * j));
        wbgmma::load_tile<T, C, THREADS>(sO, dout + row0 * dv, dv, nrow, 0, dv);
        wbgmma::load_tile<T, C, THREADS>(sO + TILE, v + row0 * dv, dv, nrow, 0, dv);
        wbgmma::load_tile<T, C, THREADS>(sO + 2 * TILE, k + row0 * dk, dk, nrow, k0, dk);
        if constexpr (ESUM) wbgmma::load_tile<T, C, THREADS>(sO + 3 * TILE, q + row0 * dk, dk, nrow, k0, dk);
    };
    tg::prologue<STAGES>(nch, issue);
    for (int j = 0; j < nch; ++j) {
        const int cs = t0 + C * j, nrow = min(C, t1 - cs);
        const T* sO = stages + (j % STAGES) * 4 * TILE;
        const T* sV = sO + TILE;
        const T* sK = sV + TILE;
        const T* sQ = sK + TILE;
        const float sigma = tg::chunk_top<T, STAGES>(H, sH, red, [&] { if (j + STAGES - 1 < nch) issue(j + STAGES - 1); });
        float acc[1][8][4], S[1][8][4];
        tg::fence_accs(acc, S, H, Es);
        wbgmma::fence();
        wbgmma::gemm64_ss<T, false, false>(acc[0], sO, sH, false);     // dq = dO H^T (H's rows are dq's columns)
        wbgmma::gemm64_ss<T, false, false>(S[0], sO, sV, false);       // S = dO V^T
        wbgmma::commit();
        wbgmma::gemm64_ss<T, true, true>(H[0], sK, sV, true);         // H += K^T V (also after the last chunk)
        if constexpr (ESUM) wbgmma::gemm64_ss<T, true, true>(Es[0], sQ, sO, true);   // Es += Q^T dO (scale: at the end)
        wbgmma::commit();
        wbgmma::wait<1>();                                      // the first batch done; the state batch may run on
        tg::fence_accs(acc, S);
        scale_acc(acc, scale * sigma);
        wbmma::AFrags<T, 8> P;
        intra_frags<T, true>(P, S, 16 * w, nullptr, false, scale);
        tg::fence_accs(acc);
        wbgmma::fence();
        wbgmma::gemm64_rs<T, true>(acc[0], P.f, sK);                  // dq += dP K
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(acc, H, Es);
        store_rows<T, 8>(acc[0], dq + (nT + cs) * dk, dk, 16 * w, nrow, k0, dk);
    }
    cp_async_wait();
    if constexpr (ESUM) {
        scale_acc(Es, scale);
        state_store(Es, Eout + ((long long)n * NSEG + s) * E, 16 * w, k0, 0, dk, dv);
    }
}

// tg_bwd_dkdv<T, STAGES, LOWREG>: tc_bwd_dkdv<T, 64, 64, 1, 0, DKDV_ROWS, ..> (the fused dk/dv walker) of a causal linear
// call (16-bit, dk, dv <= 64, no log decays).  grid (NSEG, N), block 128; smem: STAGES x (Q, K, V, dO) swizzled
// tiles, the dS tile (dS / sigma: rows dk, columns dv), 4 floats, 1024 bytes of slack.  Walks its segment's chunks
// backwards; per chunk, after dS went to shared memory (two barriers, as tg_fwd):
//   batch 1  dv = K dS, S1 = K Q^T                                   (eight SS)
//   then     dv's rows times sigma; P1 = the masked, scaled S1 (keys x queries, upper) in registers
//   batch 2  dv += P1 dO (four RS), dk = V dS^T, S2 = V dO^T         (eight SS)
//   then     dv stored; dk's rows times sigma; P2 from S2; Q^T's fragments times scale (ldmatrix of Q)
//   batch 3  dk += P2 Q, dS += (scale Q)^T dO                        (eight RS)
// LOWREG: batch 2 in two, dv += P1 dO waited for and stored before dk = V dS^T and S2 are issued, so at most dS, dv
// and P1, then dS, dk and S2 are live (158 registers: 3 blocks per SM); else dS, dv, P1, dk and S2 at once (182
// registers: 2 blocks per SM) with one wait fewer per chunk.  The dS update runs for every
// chunk (no branch inside a batch; tc_bwd_dkdv skips the segment's first chunk when nothing wants dSstart).
template <typename T, int STAGES, bool LOWREG>
__global__ void __launch_bounds__(128, LOWREG ? 3 : 1) tg_bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k,
        const T* __restrict__ v, const void* __restrict__ g, const T* __restrict__ dout, T* __restrict__ dkout,
        T* __restrict__ dvout, float* __restrict__ rk, const float* __restrict__ dSin, float* __restrict__ dSstart,
        const int* __restrict__ seg_t0, const int* __restrict__ seg_t1, const int* __restrict__ seg_seq, int T_,
        int dk, int dv, int NSEG, int nseq, float scale, int causal, int g_kind, T* __restrict__ dqout,
        float* __restrict__ rq, const T* __restrict__ Hst, const float* __restrict__ Hsig,
        const int* __restrict__ seg_c0, float* __restrict__ anc) {
    using namespace tc;
    static_assert(sizeof(T) == 2 && (STAGES == 2 || STAGES == 3), "16-bit tiles, two or three stages");
    constexpr int TILE = C * 64;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* stages = wbgmma::align1024<T>(smem_raw);                 // stage s: Q, K, V, dO at (4 s + 0, 1, 2, 3) TILE
    T* sS = stages + STAGES * 4 * TILE;
    float* red = reinterpret_cast<float*>(sS + TILE);
    const int s = blockIdx.x, n = blockIdx.y, w = threadIdx.x >> 5;
    const int t0 = seg_t0[s], t1 = seg_t1[s];
    const long long nT = (long long)n * T_, E = (long long)dk * dv;
    float dS[1][8][4];
    state_load(dS, dSin ? dSin + ((long long)n * NSEG + s) * E : nullptr, 16 * w, 0, 0, dk, dv);
    const int nch = (t1 - t0 + C - 1) / C;
    auto start = [&](int i) { return t0 + C * (nch - 1 - i); };    // chunk i of the (backward) walk
    auto issue = [&](int i) {
        T* sQ = stages + (i % STAGES) * 4 * TILE;
        const int cs = start(i), nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        wbgmma::load_tile<T, C, THREADS>(sQ, q + row0 * dk, dk, nrow, 0, dk);
        wbgmma::load_tile<T, C, THREADS>(sQ + TILE, k + row0 * dk, dk, nrow, 0, dk);
        wbgmma::load_tile<T, C, THREADS>(sQ + 2 * TILE, v + row0 * dv, dv, nrow, 0, dv);
        wbgmma::load_tile<T, C, THREADS>(sQ + 3 * TILE, dout + row0 * dv, dv, nrow, 0, dv);
    };
    tg::prologue<STAGES>(nch, issue);
    for (int i = 0; i < nch; ++i) {
        const int cs = start(i), nrow = min(C, t1 - cs);
        const long long row0 = nT + cs;
        const T* sQ = stages + (i % STAGES) * 4 * TILE;
        const T* sK = sQ + TILE;
        const T* sV = sK + TILE;
        const T* sO = sV + TILE;
        const float sigma = tg::chunk_top<T, STAGES>(dS, sS, red, [&] { if (i + STAGES - 1 < nch) issue(i + STAGES - 1); });
        float gv[1][8][4], gk[1][8][4], S[1][8][4];
        wbmma::AFrags<T, 8> P;
        tg::fence_accs(gv, S);
        wbgmma::fence();
        wbgmma::gemm64_ss<T, false, true>(gv[0], sK, sS, false);       // dv = K dS
        wbgmma::gemm64_ss<T, false, false>(S[0], sK, sQ, false);       // S1 = K Q^T
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(gv, S);
        scale_acc(gv, sigma);
        intra_frags<T, false>(P, S, 16 * w, nullptr, false, scale);
        tg::fence_accs(gv, gk, S);
        wbgmma::fence();
        wbgmma::gemm64_rs<T, true>(gv[0], P.f, sO);                   // dv += P1 dO
        if constexpr (LOWREG) {                                 // dv done and stored before dk's products start
            wbgmma::commit();
            wbgmma::wait<0>();
            tg::fence_accs(gv);
            store_rows<T, 8>(gv[0], dvout + row0 * dv, dv, 16 * w, nrow, 0, dv);
            tg::fence_accs(gk, S);
            wbgmma::fence();
        }
        wbgmma::gemm64_ss<T, false, false>(gk[0], sV, sS, false);      // dk = V dS^T
        wbgmma::gemm64_ss<T, false, false>(S[0], sV, sO, false);       // S2 = V dO^T
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(gv, gk, S);
        if constexpr (!LOWREG) store_rows<T, 8>(gv[0], dvout + row0 * dv, dv, 16 * w, nrow, 0, dv);
        scale_acc(gk, sigma);
        intra_frags<T, false>(P, S, 16 * w, nullptr, false, scale);
        unsigned qa[4][4];                                      // (scale Q)^T's fragments: the warp's dk rows
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
            wbgmma::load_a<true>(qa[ks], sQ, 16 * w, 16 * ks);
            KWeights<T>{nullptr, scale}(reinterpret_cast<unsigned (&)[1][4]>(qa[ks]), 16 * ks);
        }
        tg::fence_accs(gk, dS);
        wbgmma::fence();
        wbgmma::gemm64_rs<T, true>(gk[0], P.f, sQ);                   // dk += P2 Q
        wbgmma::gemm64_rs<T, true>(dS[0], qa, sO);                    // dS += (scale Q)^T dO
        wbgmma::commit();
        wbgmma::wait<0>();
        tg::fence_accs(gk, dS);
        store_rows<T, 8>(gk[0], dkout + row0 * dk, dk, 16 * w, nrow, 0, dk);
    }
    cp_async_wait();
    if (dSstart) state_store(dS, dSstart + ((long long)n * NSEG + s) * E, 16 * w, 0, 0, dk, dv);
}
