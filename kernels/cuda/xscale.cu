// xscale.cu -- float32 tensors carried as float16 under a power-of-two scale per leading index: the storage of the
// tensor-core chunk core's "xscale" calls (kernels/cupy/_xscale.py; docs/kernels/linear.md "float32 through the
// float16 walkers").  A tensor x of N slices (its leading dims flattened; `per` elements each) becomes
// y = f16(x 2^-e[n]) with e[n] an integer per slice (tensor z: per_z elements a slice):
//
//   xs_to_half   y = f16(x) (e = 0) and amax[n] = max |x| over the slice (atomicMax on the float's bits: non-negative
//                floats order as their bits, NaN above inf).  grid (bx, N, tensors), block 256; amax zeroed before.
//   xs_rescale   per slice: e[n] = 0 where amax[n] is 0, in XS_SAFE, inf or NaN (the values as the first pass
//                rounded them: inf and NaN stay so), else e[n] = floor(log2 amax[n]) (at least -126) and the slice
//                converted again as f16(x 2^-e) (its max in [1, 2)).  Same grid; its blocks of safe slices return at once.
//
// So a call whose slices lie in the safe range (unit-scale data: the common case) reads each float32 element once;
// the scaled slices read it twice.  Up to three tensors per launch (blockIdx.z); e is written as ex[z0 + z][n].
// parts 2: each y is two planes of N per elements, hi = f16(x 2^-e) then the residual lo = f16(x 2^-e - hi): hi + lo
// hold 22 significant bits of x.  parts 0 (the exact "pairs" calls, whose walkers split float32 tiles themselves):
// no y, the exponents alone (a read of x; xs_rescale converts nothing).
#include "common.cuh"

#define XS_THREADS 256
#define XS_SAFE_LO 0.125f        // slices whose max |x| lies in [XS_SAFE_LO, XS_SAFE_HI] keep e = 0: their values
#define XS_SAFE_HI 8.f           // keep float16's 11 bits down to 2^-11 of the max, and q.k over 64 dims stays <= 2^12

namespace xs {
__device__ __forceinline__ const float* pick(const float* a, const float* b, const float* c) {
    return blockIdx.z == 0 ? a : blockIdx.z == 1 ? b : c;
}
__device__ __forceinline__ wb_half* pick(wb_half* a, wb_half* b, wb_half* c) {
    return blockIdx.z == 0 ? a : blockIdx.z == 1 ? b : c;
}
__device__ __forceinline__ long long pick(long long a, long long b, long long c) {
    return blockIdx.z == 0 ? a : blockIdx.z == 1 ? b : c;
}

// y[i] = f16(x[i] * mul) over the slice (y != nullptr; and, lo != nullptr, lo[i] = its residual), a float4 per step
// where the slice allows it (per % 4 == 0; slices of 256-byte aligned arrays are then 16-byte aligned); returns the
// max |x| bits over the elements this thread read
__device__ __forceinline__ unsigned convert(const float* __restrict__ x, wb_half* __restrict__ y,
                                            wb_half* __restrict__ lo, long long per, float mul) {
    unsigned m = 0;
    const long long stride = (long long)gridDim.x * XS_THREADS;
    if ((per & 3) == 0) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        uint2* y4 = reinterpret_cast<uint2*>(y);
        for (long long i = (long long)blockIdx.x * XS_THREADS + threadIdx.x; i < per / 4; i += stride) {
            const float4 a = x4[i];
            m = max(m, max(max(__float_as_uint(fabsf(a.x)), __float_as_uint(fabsf(a.y))),
                           max(__float_as_uint(fabsf(a.z)), __float_as_uint(fabsf(a.w)))));
            if (!y) continue;
            const float4 s = make_float4(a.x * mul, a.y * mul, a.z * mul, a.w * mul);
            y4[i] = make_uint2(pack2<wb_half>(s.x, s.y), pack2<wb_half>(s.z, s.w));
            if (lo)
                reinterpret_cast<uint2*>(lo)[i] =
                    make_uint2(pack2<wb_half>(residual<wb_half>(s.x), residual<wb_half>(s.y)),
                               pack2<wb_half>(residual<wb_half>(s.z), residual<wb_half>(s.w)));
        }
    } else {
        for (long long i = (long long)blockIdx.x * XS_THREADS + threadIdx.x; i < per; i += stride) {
            const float a = x[i];
            m = max(m, __float_as_uint(fabsf(a)));
            if (!y) continue;
            y[i] = from_f32<wb_half>(a * mul);
            if (lo) lo[i] = from_f32<wb_half>(residual<wb_half>(a * mul));
        }
    }
    return m;
}
}  // namespace xs

extern "C" __global__ void __launch_bounds__(XS_THREADS) xs_to_half(const float* __restrict__ x0,
        const float* __restrict__ x1, const float* __restrict__ x2, wb_half* __restrict__ y0, wb_half* __restrict__ y1,
        wb_half* __restrict__ y2, long long per0, long long per1, long long per2, unsigned* __restrict__ amax,
        int parts) {
    __shared__ unsigned red[XS_THREADS / 32];
    const long long per = xs::pick(per0, per1, per2), off = (long long)blockIdx.y * per;
    wb_half* y = parts ? xs::pick(y0, y1, y2) : nullptr;
    unsigned m = xs::convert(xs::pick(x0, x1, x2) + off, y ? y + off : nullptr,
                             parts == 2 ? y + gridDim.y * per + off : nullptr, per, 1.f);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < XS_THREADS / 32; ++w) m = max(m, red[w]);
        atomicMax(amax + blockIdx.z * gridDim.y + blockIdx.y, m);
    }
}

extern "C" __global__ void __launch_bounds__(XS_THREADS) xs_rescale(const float* __restrict__ x0,
        const float* __restrict__ x1, const float* __restrict__ x2, wb_half* __restrict__ y0, wb_half* __restrict__ y1,
        wb_half* __restrict__ y2, long long per0, long long per1, long long per2, const unsigned* __restrict__ amax,
        int* __restrict__ ex, int z0, int parts) {
    const float a = __uint_as_float(amax[blockIdx.z * gridDim.y + blockIdx.y]);
    const bool keep = a == 0.f || (a >= XS_SAFE_LO && a <= XS_SAFE_HI) || !(a <= 3.402823466e38f);
    const int e = keep ? 0 : max(ilogbf(a), -126);      // (2^126 stays a float)
    if (blockIdx.x == 0 && threadIdx.x == 0) ex[(z0 + blockIdx.z) * gridDim.y + blockIdx.y] = e;
    if (keep || parts == 0) return;
    const long long per = xs::pick(per0, per1, per2), off = (long long)blockIdx.y * per;
    wb_half* y = xs::pick(y0, y1, y2);
    xs::convert(xs::pick(x0, x1, x2) + off, y + off, parts == 2 ? y + gridDim.y * per + off : nullptr, per,
                ldexpf(1.f, -e));
}
