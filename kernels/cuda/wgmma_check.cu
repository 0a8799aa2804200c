// wgmma_check.cu -- one warpgroup product per block through wgmma.cuh, for tests that compare the instruction (on a
// GPU) and the emulator's model of it (scripts/cuda_emu/emu.h) with NumPy on the same random tiles: the layout,
// descriptors, fragment layouts and ordering of wgmma.cuh checked before any walker relies on them.
//
// wgmma_product<T, TA, TB, RS>: block = 128 threads (one warpgroup), one block per product.
//   a: 64 x 64 row-major, read as A (64 x 64) when TA is false (rows m, columns k: K-major), as A^T's storage when
//      TA is true (rows k, columns m: A = a^T, M-major);
//   b: 64 x 64 row-major, read as B^T's storage when TB is false (rows n, columns k: K-major, B = b^T), as B
//      when TB is true (rows k, columns n: N-major);
//   c: 64 x 64 float32: when accumulate, c += A B, else c = A B (the accumulators start as NaN and the first
//      k-slice does not read them).  RS: A from registers (wgmma.cuh load_a of the swizzled tile), the rest as SS.
// Four k-slices of 16 in one batch (fence, wgmma.cuh gemm64_ss / gemm64_rs -- the walkers' helpers --, commit, wait 0).
#include "wgmma.cuh"

template <typename T, bool TA, bool TB, bool RS>
__global__ void __launch_bounds__(128) wgmma_product(const T* __restrict__ a, const T* __restrict__ b,
                                                     float* __restrict__ c, int accumulate) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sA = wbgmma::align1024<T>(smem_raw);
    T* sB = sA + 64 * 64;
    const long long off = (long long)blockIdx.x * 64 * 64;
    wbgmma::load_tile<T, 64, 128>(sA, a + off, 64, 64, 0, 64);
    wbgmma::load_tile<T, 64, 128>(sB, b + off, 64, 64, 0, 64);
    wbmma::cp_async_commit();
    wbmma::cp_async_wait_all();
    wbgmma::fence_proxy_async();
    __syncthreads();
    const int w = threadIdx.x >> 5, L = threadIdx.x & 31, g = L >> 2, t = L & 3;
    float d[8][4];
    float* cn = c + off;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            d[j][e] = accumulate ? cn[(16 * w + g + 8 * (e >> 1)) * 64 + 8 * j + 2 * t + (e & 1)] : WB_NAN;
    unsigned af[4][4];
    if constexpr (RS) {
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) wbgmma::load_a<TA>(af[ks], sA, 16 * w, 16 * ks);
    }
    wbgmma::fence_acc(d);
    wbgmma::fence();
    if constexpr (RS)
        wbgmma::gemm64_rs<T, TB>(d, af, sB, accumulate);
    else
        wbgmma::gemm64_ss<T, TA, TB>(d, sA, sB, accumulate);
    wbgmma::commit();
    wbgmma::wait<0>();
    wbgmma::fence_acc(d);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) cn[(16 * w + g + 8 * (e >> 1)) * 64 + 8 * j + 2 * t + (e & 1)] = d[j][e];
}
