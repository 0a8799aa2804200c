// common.cuh -- helpers shared by the CuPy RawKernel sources in kernels/cuda.
//
// Header-free on purpose: NVRTC ships no cuda_fp16.h / cuda_bf16.h of its own, so 16-bit floats are
// plain 16-bit storage types here and every conversion is one PTX instruction (or a bit shift).
// That keeps the sources compiling with nothing but NVRTC (the CI test needs no CUDA toolkit).
//
//   wb_half   IEEE binary16 storage (same bits as numpy float16 / cupy float16)
//   wb_bf16   bfloat16 storage (upper 16 bits of a float32)
//   to_f32(x), from_f32<T>(f)  scalar load/store conversion, round-to-nearest-even
//   pack2<T>(lo, hi)           two floats -> one 32-bit register of two 16-bit values (lo at the lower
//                              address), the operand format of mma.sync
//   unpack2<T>(u, i)           element i (0: the lower 16 bits) of such a register, as a float
//   residual<T>(x), split2<T>  hi + lo pairs: x - (x rounded to T); a pair of floats packed (hi) and their
//                              residuals packed (lo), hi + lo holding about twice T's significant bits
//   warp_sum / warp_max        butterfly reductions over the 32 lanes of a warp
//   carve<T>(base, n0, n1, ..) consecutive tiles of dynamic shared memory
//   WB_INF, WB_NAN             +inf and a quiet NaN without math.h
//
// Everything is __device__ __forceinline__; nothing here launches or allocates.
#pragma once

struct __align__(2) wb_half { unsigned short bits; };
struct __align__(2) wb_bf16 { unsigned short bits; };

#define WB_INF (__int_as_float(0x7f800000))
#define WB_NAN (__int_as_float(0x7fffffff))
#define WB_LOG2E 1.4426950408889634f
#define WB_LN2 0.6931471805599453f

// ---------------------------------------------------------------- scalar conversions
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(wb_half x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ float to_f32(wb_bf16 x) {          // exact: bf16 is a truncated float32
    return __uint_as_float(((unsigned)x.bits) << 16);
}

template <typename T> __device__ __forceinline__ T from_f32(float f);
template <> __device__ __forceinline__ float from_f32<float>(float f) { return f; }
template <> __device__ __forceinline__ wb_half from_f32<wb_half>(float f) {
    wb_half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
}
template <> __device__ __forceinline__ wb_bf16 from_f32<wb_bf16>(float f) {   // sm_80+
    wb_bf16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
}

// ---------------------------------------------------------------- packed pairs (mma operands)
// pack2<T>(lo, hi): bits 0..15 hold lo, bits 16..31 hold hi (PTX cvt puts its first source in the
// upper half).
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<wb_half>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ unsigned pack2<wb_bf16>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

template <typename T> __device__ __forceinline__ float unpack2(unsigned u, int i) {
    T x;
    x.bits = (unsigned short)(i ? u >> 16 : u & 0xffffu);
    return to_f32(x);
}

// ---------------------------------------------------------------- hi + lo pairs
template <typename T> __device__ __forceinline__ float residual(float x) { return x - to_f32(from_f32<T>(x)); }
template <typename T> __device__ __forceinline__ void split2(float x0, float x1, unsigned& hi, unsigned& lo) {
    hi = pack2<T>(x0, x1);
    lo = pack2<T>(residual<T>(x0), residual<T>(x1));
}

// ---------------------------------------------------------------- warp reductions
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// ---------------------------------------------------------------- dynamic shared memory
// carve<T>(base, n0, n1, ...).p: the first elements of consecutive tiles of n0, n1, ... elements of T from base
// (tile i starts where tile i - 1 ends), for a structured binding:
//   const auto [sQ, sK] = carve<float>(smem, BR * LD, BC * LD).p;
template <typename T, int N> struct Carved { T* p[N]; };
template <typename T, typename... S>
__device__ __forceinline__ Carved<T, sizeof...(S)> carve(void* base, S... sizes) {
    const int n[] = {sizes...};
    Carved<T, sizeof...(S)> c;
    T* at = reinterpret_cast<T*>(base);
#pragma unroll
    for (int i = 0; i < (int)sizeof...(S); ++i) {
        c.p[i] = at;
        at += n[i];
    }
    return c;
}

// ---------------------------------------------------------------- register-tiled products (CUDA cores)
// Thread (r, c) of a 16 x 16 grid owns rows r + 16 i (i < TM) and columns c + 16 j (j < TN) of each of
// the NP accumulators, and for every x < K adds
//   acc[p][i][j] += A_p[(r + 16 i) LDA + x] * B_p[(c + 16 j) BROW + x BCOL]
// (BROW = LD, BCOL = 1: A B^T of two row-major tiles; BROW = 1, BCOL = LD: A B).  The NP products share one
// loop (a backward's score and dO.V^T tiles side by side).  Used by softmax.cu's flash kernels and
// chunked.cuh's chunk_out.
template <int NP, int TM, int TN>
__device__ __forceinline__ void rt_zero(float (&acc)[NP][TM][TN]) {
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[p][i][j] = 0.f;
}
template <int NP, int TM, int TN, int K, int LDA, int BROW, int BCOL, int UNROLL>
__device__ __forceinline__ void rt_mm(float (&acc)[NP][TM][TN], const float* const (&A)[NP],
                                      const float* const (&B)[NP], int r, int c) {
#pragma unroll UNROLL
    for (int x = 0; x < K; ++x) {
        float a[NP][TM], b[NP][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int p = 0; p < NP; ++p) a[p][i] = A[p][(r + 16 * i) * LDA + x];
#pragma unroll
        for (int j = 0; j < TN; ++j)
#pragma unroll
            for (int p = 0; p < NP; ++p) b[p][j] = B[p][(c + 16 * j) * BROW + x * BCOL];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j)
#pragma unroll
                for (int p = 0; p < NP; ++p) acc[p][i][j] += a[p][i] * b[p][j];
    }
}
