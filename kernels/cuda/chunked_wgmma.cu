// chunked_wgmma.cu -- kernels of the tensor-core chunk core (chunked_mma.cu) on Hopper's warpgroup MMA (wgmma.cuh):
// sm_90a only (kernels/cupy/_module.py SM90A_SOURCES).  Each is a drop-in for one chunked_mma.cu kernel: the same
// arguments, the same results up to the order of the float32 sums, launched by kernels/cupy/_chunked_mma.py where a
// call qualifies (docs/kernels/linear.md, "The segment-state pass on warpgroup MMA").
//
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
