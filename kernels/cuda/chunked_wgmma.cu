// chunked_wgmma.cu -- kernels of the tensor-core chunk core (chunked_mma.cu) on Hopper's warpgroup MMA (wgmma.cuh):
// sm_90a only (kernels/cupy/_module.py SM90A_SOURCES).  Each is a drop-in for one chunked_mma.cu kernel: the same
// arguments, the same results up to the order of the float32 sums, launched by kernels/cupy/_chunked_mma.py where a
// call qualifies (docs/kernels/linear.md, "The segment-state pass on warpgroup MMA").
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
//                            instructions.  Two barriers per chunk, as tc_fwd in float16: the block max of |H| for
//                            sigma (float16), then the state tile and chunk j's loads published.
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
#pragma unroll
    for (int j = 0; j < STAGES - 1; ++j) {
        if (j < nch) issue(j);
        cp_async_commit();
    }
    for (int j = 0; j < nch; ++j) {
        const int cs = t0 + C * j, nrow = min(C, t1 - cs);
        const T* sQ = stages + (j % STAGES) * 3 * TILE;
        const T* sK = sQ + TILE;
        const T* sV = sK + TILE;
        cp_async_wait_group<STAGES - 2>();                      // chunk j's tiles (this thread's copies) landed
        if constexpr (wbmma::Traits<T>::HALF) {
            const float mx = warp_abs_max(H);
            if ((threadIdx.x & 31) == 0) red[w] = mx;
        }
        __syncthreads();                                        // chunk j - 1's products done: sH, its stage free
        float sigma = 1.f, inv = 1.f;
        if constexpr (wbmma::Traits<T>::HALF) pow2_scale(fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3])), sigma, inv);
        tg::frags_to_tile<T>(H[0], sH, 16 * w, inv);
        if (j + STAGES - 1 < nch) issue(j + STAGES - 1);
        cp_async_commit();
        wbgmma::fence_proxy_async();
        __syncthreads();                                        // sH and chunk j's tiles published (red read)
        float acc[1][8][4], S[1][8][4];
        wbgmma::fence_acc(acc[0]);
        wbgmma::fence_acc(S[0]);
        wbgmma::fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)                          // o = Q H
            wbgmma::mma_ss<T, false, true>(acc[0], wbgmma::desc_kmajor(sQ, 16 * ks), wbgmma::desc_mnmajor(sH, 16 * ks),
                                           ks > 0);
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)                          // S = Q K^T
            wbgmma::mma_ss<T, false, false>(S[0], wbgmma::desc_kmajor(sQ, 16 * ks), wbgmma::desc_kmajor(sK, 16 * ks),
                                            ks > 0);
        wbgmma::commit();
        wbgmma::wait<0>();
        wbgmma::fence_acc(acc[0]);
        wbgmma::fence_acc(S[0]);
        scale_acc(acc, scale * sigma);
        wbmma::AFrags<T, 8> P;
        intra_frags<T, true>(P, S, 16 * w, nullptr, false, scale);
        wbgmma::fence_acc(acc[0]);
        wbgmma::fence_acc(H[0]);
        wbgmma::fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)                          // o += P V
            wbgmma::mma_rs<T, true>(acc[0], P.f[ks], wbgmma::desc_mnmajor(sV, 16 * ks), 1);
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)                          // H += K^T V (also after the last chunk: no branch
            wbgmma::mma_ss<T, true, true>(H[0], wbgmma::desc_mnmajor(sK, 16 * ks),   // between a batch's wgmmas)
                                          wbgmma::desc_mnmajor(sV, 16 * ks), 1);
        wbgmma::commit();
        wbgmma::wait<0>();
        wbgmma::fence_acc(acc[0]);
        wbgmma::fence_acc(H[0]);
        store_rows<T, 8>(acc[0], o + (nT + cs) * dv, dv, 16 * w, nrow, c0, dv);
    }
    cp_async_wait();                                            // the trailing empty groups
    if (Hend) state_store(H, Hend + ((long long)n * NSEG + s) * E, 16 * w, 0, c0, dk, dv);
}
