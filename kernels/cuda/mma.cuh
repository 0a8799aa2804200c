// mma.cuh -- warp-level tensor-core building blocks (mma.sync), for kernels whose operands sit in shared
// memory as row-major tiles of the storage type T (wb_half, wb_bf16 or float).
//
// One GEMM step of a warp is C[16 x 8] += A[16 x KS] B[KS x 8] with
//   T = wb_half / wb_bf16: mma.sync.m16n8k16 (KS = 16), fp32 accumulate;
//   T = float:             mma.sync.m16n8k8 on TF32 (KS = 8), SPLIT = 3 for the 3xTF32 split that keeps
//                          float32 accuracy (a = a_hi + a_lo: a.b ~ a_lo b_hi + a_hi b_lo + a_hi b_hi),
//                          SPLIT = 1 for plain TF32 (about 1e-3 relative).
// Fragment layout (g = lane / 4, t = lane % 4), the PTX ISA's:
//   m16n8k16  A: a0 (g, 2t..2t+1) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..)   B: b0 (k 2t..2t+1, n g) b1 (k 2t+8.., n g)
//   m16n8k8   A: a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4)                   B: b0 (k t, n g)      b1 (k t+4, n g)
//   C (both): c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)
// Operand storage in shared memory (row stride ld elements; ld = width + 8 keeps every access pattern
// below free of bank conflicts for both element sizes):
//   A "MK": A[m][k] row-major           A "KM": stored [k][m] (we read its transpose)
//   B "KN": B[k][n] row-major           B "NK": stored [n][k] (C += A S^T for a stored S)
// 16-bit types load with ldmatrix (.trans where the storage is transposed); float loads element-wise.
// A C fragment pair (n tiles 2j, 2j+1 of 16-bit types; n tile j of float) turns into the A fragment of a
// k slice without touching shared memory (c_to_a), so P = f(Q K^T) can feed P V from registers.
#pragma once
#include "common.cuh"

namespace wbmma {

__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// cp.async: global -> shared without registers.  src_bytes < size zero-fills the rest (0: a masked load).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }

// ---------------------------------------------------------------- the mma instructions
__device__ __forceinline__ void mma_f16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_tf32(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename T> struct Traits;
template <> struct Traits<wb_half> {
    static constexpr int KS = 16; static constexpr bool F32 = false, HALF = true;
    static __device__ __forceinline__ void run(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        mma_f16(c, a, b0, b1);
    }
};
template <> struct Traits<wb_bf16> {
    static constexpr int KS = 16; static constexpr bool F32 = false, HALF = false;
    static __device__ __forceinline__ void run(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        mma_bf16(c, a, b0, b1);
    }
};
template <> struct Traits<float> { static constexpr int KS = 8; static constexpr bool F32 = true, HALF = false; };

// float -> the nearest TF32 (10 explicit mantissa bits), as float bits with the low 13 bits zero; the
// residual x - hi is exact in float32.
__device__ __forceinline__ unsigned tf32_hi(float x) { return (__float_as_uint(x) + 0x1000u) & 0xffffe000u; }

// C += A B for one fragment.  For float operands (raw float bits in a, b0, b1) SPLIT selects 3xTF32 or TF32.
template <typename T, int SPLIT = 3>
__device__ __forceinline__ void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    if constexpr (Traits<T>::F32) {
        unsigned ah[4], bh0 = tf32_hi(__uint_as_float(b0)), bh1 = tf32_hi(__uint_as_float(b1));
#pragma unroll
        for (int i = 0; i < 4; ++i) ah[i] = tf32_hi(__uint_as_float(a[i]));
        if constexpr (SPLIT == 3) {
            unsigned al[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) al[i] = __float_as_uint(__uint_as_float(a[i]) - __uint_as_float(ah[i]));
            const unsigned bl0 = __float_as_uint(__uint_as_float(b0) - __uint_as_float(bh0));
            const unsigned bl1 = __float_as_uint(__uint_as_float(b1) - __uint_as_float(bh1));
            mma_tf32(c, al, bh0, bh1);              // the small terms first
            mma_tf32(c, ah, bl0, bl1);
        }
        mma_tf32(c, ah, bh0, bh1);
    } else {
        Traits<T>::run(c, a, b0, b1);
    }
}

// ---------------------------------------------------------------- ldmatrix (16-bit types)
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)) : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)) : "memory");
}

// ---------------------------------------------------------------- fragment loads from shared memory
// element i of a float tile s, as the raw bits an mma operand register holds
template <typename T>
__device__ __forceinline__ unsigned f32_bits(const T* s, int i) { return __float_as_uint(reinterpret_cast<const float*>(s)[i]); }

// A fragment of rows m0..m0+15 and k slice k0..k0+KS-1.
//   16-bit: ldmatrix.x4 matrix j (lanes 8j..8j+7 give its 8 row addresses) = rows m0 + 8 (j & 1), cols
//   k0 + 8 (j >> 1): a0..a3 in order.  KM storage holds the same blocks transposed, so the lanes address
//   stored rows k0 + 8 (j >> 1) + r at column m0 + 8 (j & 1) and .trans hands each thread its A elements.
template <typename T, bool KM>
__device__ __forceinline__ void load_a(unsigned (&a)[4], const T* s, int ld, int m0, int k0) {
    const int L = lane_id();
    if constexpr (Traits<T>::F32) {
        const int g = L >> 2, t = L & 3;
        if constexpr (!KM) {
            a[0] = f32_bits(s, (m0 + g) * ld + k0 + t);
            a[1] = f32_bits(s, (m0 + g + 8) * ld + k0 + t);
            a[2] = f32_bits(s, (m0 + g) * ld + k0 + t + 4);
            a[3] = f32_bits(s, (m0 + g + 8) * ld + k0 + t + 4);
        } else {
            a[0] = f32_bits(s, (k0 + t) * ld + m0 + g);
            a[1] = f32_bits(s, (k0 + t) * ld + m0 + g + 8);
            a[2] = f32_bits(s, (k0 + t + 4) * ld + m0 + g);
            a[3] = f32_bits(s, (k0 + t + 4) * ld + m0 + g + 8);
        }
    } else {
        const int j = L >> 3, r = L & 7;
        if constexpr (!KM) ldsm_x4(a, s + (m0 + r + 8 * (j & 1)) * ld + k0 + 8 * (j >> 1));
        else ldsm_x4_t(a, s + (k0 + r + 8 * (j >> 1)) * ld + m0 + 8 * (j & 1));
    }
}

// B fragments of TWO n tiles, n0 and n0 + 8, for the k slice k0..k0+KS-1: b[0], b[1] serve n0 and b[2],
// b[3] serve n0 + 8.
//   16-bit NK (stored [n][k]): matrix j = rows n0 + 8 (j >> 1), cols k0 + 8 (j & 1), no transpose.
//   16-bit KN (stored [k][n]): matrix j = stored rows k0 + 8 (j & 1), cols n0 + 8 (j >> 1), .trans.
template <typename T, bool NK>
__device__ __forceinline__ void load_b2(unsigned (&b)[4], const T* s, int ld, int k0, int n0) {
    const int L = lane_id();
    if constexpr (Traits<T>::F32) {
        const int g = L >> 2, t = L & 3;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int n = n0 + 8 * h + g;
            if constexpr (NK) {
                b[2 * h] = f32_bits(s, n * ld + k0 + t);
                b[2 * h + 1] = f32_bits(s, n * ld + k0 + t + 4);
            } else {
                b[2 * h] = f32_bits(s, (k0 + t) * ld + n);
                b[2 * h + 1] = f32_bits(s, (k0 + t + 4) * ld + n);
            }
        }
    } else {
        const int j = L >> 3, r = L & 7;
        if constexpr (NK) ldsm_x4(b, s + (n0 + r + 8 * (j >> 1)) * ld + k0 + 8 * (j & 1));
        else ldsm_x4_t(b, s + (k0 + r + 8 * (j & 1)) * ld + n0 + 8 * (j >> 1));
    }
}

// ---------------------------------------------------------------- warp GEMMs
// The default A-fragment hook of gemm_ss: leaves the fragments as loaded.
struct AsLoaded {
    template <int MT>
    __device__ __forceinline__ void operator()(unsigned (&)[MT][4], int) const {}
};

// acc[MT][NT] (MT m tiles of 16 from row m0, NT n tiles of 8 from column n0) += A B over the k slices
// [kb, ke) (multiples of KS).  Only the n-tile pairs p in [plo, phi) are computed (NT even): a caller
// skips tiles that a causal mask zeroes.  ascale(a, k0) may rewrite the A fragments of k slice k0 in
// registers after they are loaded (a weight per k: A diag(w) B without a pass over shared memory).
// NB 2: B is a hi + lo pair of tiles (the lo tile blo elements after the hi one, same stride): A B_lo + A B_hi,
// the small product first, each A fragment loaded once (16-bit types: B to ~16 significant bits).
template <typename T, int SPLIT, int MT, int NT, bool AKM, bool BNK, int NB = 1, typename AS = AsLoaded>
__device__ __forceinline__ void gemm_ss(float (&acc)[MT][NT][4], const T* sA, int lda, const T* sB, int ldb,
                                        int m0, int n0, int kb, int ke, int plo = 0, int phi = NT / 2,
                                        AS ascale = AS(), int blo = 0) {
    constexpr int KS = Traits<T>::KS;
    static_assert(NT % 2 == 0, "n tiles come in pairs");
    static_assert(NB == 1 || NB == 2, "B alone or a hi + lo pair");
#pragma unroll 2
    for (int k0 = kb; k0 < ke; k0 += KS) {
        unsigned a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) load_a<T, AKM>(a[mt], sA, lda, m0 + 16 * mt, k0);
        ascale(a, k0);
#pragma unroll
        for (int p = 0; p < NT / 2; ++p) {
            if (p < plo || p >= phi) continue;
#pragma unroll
            for (int h = NB - 1; h >= 0; --h) {                  // NB 2: the lo tile first
                unsigned b[4];
                load_b2<T, BNK>(b, sB + h * blo, ldb, k0, n0 + 16 * p);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma<T, SPLIT>(acc[mt][2 * p], a[mt], b[0], b[1]);
                    mma<T, SPLIT>(acc[mt][2 * p + 1], a[mt], b[2], b[3]);
                }
            }
        }
    }
}

// acc[NT] (16 rows) += A B with A given as register fragments af[NKS] (k slices of KS), of which only
// [klo, khi) are used.
template <typename T, int SPLIT, int NT, int NKS, bool BNK>
__device__ __forceinline__ void gemm_rs(float (&acc)[NT][4], const unsigned (&af)[NKS][4], const T* sB, int ldb,
                                        int n0, int klo, int khi) {
    constexpr int KS = Traits<T>::KS;
#pragma unroll
    for (int ks = 0; ks < NKS; ++ks) {
        if (ks < klo || ks >= khi) continue;
#pragma unroll
        for (int p = 0; p < NT / 2; ++p) {
            unsigned b[4];
            load_b2<T, BNK>(b, sB, ldb, ks * KS, n0 + 16 * p);
            mma<T, SPLIT>(acc[2 * p], af[ks], b[0], b[1]);
            mma<T, SPLIT>(acc[2 * p + 1], af[ks], b[2], b[3]);
        }
    }
}

// C fragments of 16 rows x (8 NT) columns -> A fragments of the k slices covering those columns
// (NT / 2 slices of 16 for 16-bit types, NT slices of 8 for float).
template <typename T, int NT>
struct AFrags { static constexpr int N = Traits<T>::F32 ? NT : NT / 2; unsigned f[N][4]; };

template <typename T, int NT>
__device__ __forceinline__ void c_to_a(AFrags<T, NT>& A, const float (&c)[NT][4]) {
    if constexpr (Traits<T>::F32) {
        // a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4) of column tile j; column x of the C tile sits in
        // lane (g, x / 2), element x % 2 (row g) or 2 + x % 2 (row g + 8).
        const int L = lane_id(), g = L >> 2, t = L & 3;
        const int src1 = (g << 2) | (t >> 1), src2 = (g << 2) | (2 + (t >> 1));
        const bool odd = t & 1;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            float x0 = __shfl_sync(0xffffffffu, c[j][0], src1), x1 = __shfl_sync(0xffffffffu, c[j][1], src1);
            float y0 = __shfl_sync(0xffffffffu, c[j][2], src1), y1 = __shfl_sync(0xffffffffu, c[j][3], src1);
            float z0 = __shfl_sync(0xffffffffu, c[j][0], src2), z1 = __shfl_sync(0xffffffffu, c[j][1], src2);
            float u0 = __shfl_sync(0xffffffffu, c[j][2], src2), u1 = __shfl_sync(0xffffffffu, c[j][3], src2);
            A.f[j][0] = __float_as_uint(odd ? x1 : x0);
            A.f[j][1] = __float_as_uint(odd ? y1 : y0);
            A.f[j][2] = __float_as_uint(odd ? z1 : z0);
            A.f[j][3] = __float_as_uint(odd ? u1 : u0);
        }
    } else {
#pragma unroll
        for (int kk = 0; kk < NT / 2; ++kk) {
            A.f[kk][0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);
            A.f[kk][1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);
            A.f[kk][2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
            A.f[kk][3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
        }
    }
}

// accumulator fragments <- 0
template <int N>
__device__ __forceinline__ void zero_acc(float (&a)[N][4]) {
#pragma unroll
    for (int j = 0; j < N; ++j) a[j][0] = a[j][1] = a[j][2] = a[j][3] = 0.f;
}

// Visit every accumulator element with its (row, column) inside the warp's tile: f(mt, nt, e, row, col).
template <int MT, int NT, typename F>
__device__ __forceinline__ void for_each(float (&acc)[MT][NT][4], int m0, int n0, F f) {
    const int L = lane_id(), g = L >> 2, t = L & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                f(acc[mt][nt][e], m0 + 16 * mt + g + 8 * (e >> 1), n0 + 8 * nt + 2 * t + (e & 1));
}

template <typename T> __device__ __forceinline__ T zero_val() {
    if constexpr (Traits<T>::F32) return 0.f;
    else { T z; z.bits = 0; return z; }
}

}  // namespace wbmma
