// wgmma.cuh -- Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only) for 16-bit operands, and the shared-memory
// layout it reads: tiles of 64 columns of a 16-bit type (128-byte rows) in the 128-byte swizzle.
//
// Sources that include this header are compiled for sm_90a alone (kernels/cupy/_module.py SM90A_SOURCES); the
// kernels of mma.cuh stay on mma.sync, which every architecture since sm_80 runs.
//
// The swizzled tile (what every kernel and the emulator agree on):
//   A tile of R rows x 64 columns of a 16-bit type, base 1024-byte aligned (in the shared window).  Row r is 128
//   bytes, eight 16-byte chunks; chunk c of row r sits at byte  sw128(r, c) = 128 r + 16 (c ^ (r mod 8)).
//   Every 8 rows form one 1024-byte "swizzle atom".  The permutation only moves whole 16-byte chunks, so cp.async
//   of 16 bytes and ldmatrix (one 16-byte row piece per lane) address it chunk by chunk.
//
// The instruction (one per warpgroup = 4 warps = 128 threads; our walkers' blocks are one warpgroup):
//   D[64 x 64] (+)= A[64 x 16] B[16 x 64]   m64n64k16, f32 accumulate, f16 or bf16 inputs.
//   D: warp w of the warpgroup holds rows 16 w .. 16 w + 15 in float d[8][4], laid out as mma.sync's C over 8
//      column tiles: d[j][e] = D[16 w + g + 8 (e >> 1)][8 j + 2 t + (e & 1)]  (g = lane / 4, t = lane % 4), i.e.
//      the float acc[8][4] every mma.sync epilogue here already reads.
//   A: from shared memory (descriptor, "SS") or from registers ("RS": warp w's 16 rows as mma.sync's m16n8k16 A
//      fragment, a0 (g, 2t..) a1 (g + 8, 2t..) a2 (g, 2t + 8..) a3 (g + 8, 2t + 8..)).
//   B: from shared memory (descriptor).
// Operands in shared memory, for a tile stored as above (rows of 64 contiguous elements):
//   K-major (trans 0): the tile's rows are the M (or N) index, its columns K: A[m][k], or B stored [n][k].  The
//      k-slice k0 .. k0 + 15 of the instruction starts at byte 2 k0 of the tile (the hardware swizzles the
//      address, so a start inside the first 128 bytes of an atom is the same 16-byte chunk permutation).  The 8-row
//      groups (atoms) are SBO = 1024 bytes apart.
//   MN-major (trans 1): the tile's rows are K, its 64 columns M (or N): A stored [k][m] (A = X^T for a tile X), B
//      stored [k][n].  The k-slice starts at row k0 (byte 128 k0); its two 8-row groups are SBO = 1024 bytes
//      apart.  LBO is the distance between 64-element groups along M / N, which a 64-wide operand never uses: the
//      descriptors here set it to 1024 as well, so neither reading of the two offsets can go wrong.
// Descriptor (64 bits): start address >> 4 (bits 0-13), LBO >> 4 (16-29), SBO >> 4 (32-45), base offset 0
// (49-51: the atoms are 1024-byte aligned), swizzle mode 1 = 128 bytes (62-63).
//
// Ordering: shared memory written by ordinary stores or cp.async is made visible to the tensor core's (async proxy)
// reads by fence_proxy_async() in each writing thread before the barrier that publishes it.  fence() before the
// first wgmma of a batch (the accumulators were touched by ordinary instructions), commit() after the batch,
// wait<N>() before the accumulators are read (N: batches that may stay in flight).  The emulator
// (scripts/cuda_emu/emu.h) lands an instruction's results in the accumulators only at the wait that covers it, so
// a read before the wait sees stale values there too.
#pragma once
#include "mma.cuh"

namespace wbgmma {

// byte offset of 16-byte chunk c of row r in a swizzled tile
__device__ __forceinline__ int sw128(int r, int c) { return (r << 7) + ((c ^ (r & 7)) << 4); }

// the first 1024-byte aligned address (shared window) at or after p: tiles start there
template <typename T>
__device__ __forceinline__ T* align1024(void* p) {
    const unsigned a = wbmma::smem_u32(p);
    return reinterpret_cast<T*>(static_cast<unsigned char*>(p) + ((1024u - (a & 1023u)) & 1023u));
}

__device__ __forceinline__ unsigned long long desc_sw128(const void* start, unsigned lbo, unsigned sbo) {
    const unsigned a = wbmma::smem_u32(start);
    return (unsigned long long)((a & 0x3FFFFu) >> 4) | ((unsigned long long)((lbo & 0x3FFFFu) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFFu) >> 4) << 32) | (1ull << 62);
}
// k-slice k0 (a multiple of 16) of a swizzled tile read K-major (rows = M or N, columns = K)
__device__ __forceinline__ unsigned long long desc_kmajor(const void* tile, int k0) {
    return desc_sw128(static_cast<const unsigned char*>(tile) + 2 * k0, 1024u, 1024u);
}
// k-slice k0 (a multiple of 16) of a swizzled tile read MN-major (rows = K, columns = M or N)
__device__ __forceinline__ unsigned long long desc_mnmajor(const void* tile, int k0) {
    return desc_sw128(static_cast<const unsigned char*>(tile) + 128 * k0, 1024u, 1024u);
}

__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait() {
    static_assert(N >= 0 && N <= 1, "at most one batch left in flight");
    if constexpr (N == 0) asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    else asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
}
// keeps the compiler from moving reads or writes of the accumulators across the asynchronous instructions
__device__ __forceinline__ void fence_acc(float (&d)[8][4]) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}

// D (+)= A B, m64n64k16, A and B from shared memory.  TA / TB: A M-major / B N-major (else K-major).
// accumulate 0: D = A B (the accumulators' old values are not read).
template <typename T, bool TA, bool TB>
__device__ __forceinline__ void mma_ss(float (&d)[8][4], unsigned long long da, unsigned long long db, int accumulate) {
    if constexpr (wbmma::Traits<T>::HALF)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
                       "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
                       "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
                       "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                     : "l"(da), "l"(db), "r"(accumulate), "n"((int)TA), "n"((int)TB));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
                       "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
                       "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
                       "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                     : "l"(da), "l"(db), "r"(accumulate), "n"((int)TA), "n"((int)TB));
}

// D (+)= A B, m64n64k16, A from registers (this warp's 16 rows), B from shared memory (TB: N-major).
template <typename T, bool TB>
__device__ __forceinline__ void mma_rs(float (&d)[8][4], const unsigned (&a)[4], unsigned long long db, int accumulate) {
    if constexpr (wbmma::Traits<T>::HALF)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
                       "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
                       "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
                       "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate), "n"((int)TB));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
                       "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
                       "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
                       "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate), "n"((int)TB));
}

// The four k-slices of a 64-deep product, one instruction each (inside one batch: the caller fences, commits,
// waits).  gemm64_ss: A and B swizzled tiles, read MN-major where TA / TB (else K-major); accumulate false: the first
// slice does not read the accumulators.  gemm64_rs: A from registers (a[ks]: k-slice ks), B a swizzled tile, the same
// accumulate (default true).
template <typename T, bool TA, bool TB>
__device__ __forceinline__ void gemm64_ss(float (&d)[8][4], const T* a, const T* b, bool accumulate) {
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
        mma_ss<T, TA, TB>(d, TA ? desc_mnmajor(a, 16 * ks) : desc_kmajor(a, 16 * ks),
                          TB ? desc_mnmajor(b, 16 * ks) : desc_kmajor(b, 16 * ks), accumulate || ks > 0);
}
template <typename T, bool TB>
__device__ __forceinline__ void gemm64_rs(float (&d)[8][4], const unsigned (&a)[4][4], const T* b,
                                          bool accumulate = true) {
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
        mma_rs<T, TB>(d, a[ks], TB ? desc_mnmajor(b, 16 * ks) : desc_kmajor(b, 16 * ks), accumulate || ks > 0);
}

// A fragment (mma.sync m16n8k16 layout) of rows m0 .. m0 + 15 and k slice k0 .. k0 + 15 of a swizzled tile:
// KM false: the tile is A[m][k] (rows m); KM true: the tile is stored [k][m] (ldmatrix .trans), as
// wbmma::load_a's, with each lane's 16-byte row piece addressed through sw128.
template <bool KM, typename T>
__device__ __forceinline__ void load_a(unsigned (&a)[4], const T* tile, int m0, int k0) {
    const int L = wbmma::lane_id(), j = L >> 3, r = L & 7;
    const unsigned char* b = reinterpret_cast<const unsigned char*>(tile);
    if constexpr (!KM) wbmma::ldsm_x4(a, b + sw128(m0 + r + 8 * (j & 1), (k0 >> 3) + (j >> 1)));
    else wbmma::ldsm_x4_t(a, b + sw128(k0 + r + 8 * (j >> 1), (m0 >> 3) + (j & 1)));
}

// rows [0, R) x columns [col0, col0 + 64) of a row-major matrix g (row stride ldg elements) -> a swizzled tile (zeros
// past nrows rows and past ncols columns).  16-byte aligned rows (ldg and col0 multiples of 8, g 16-byte aligned) go
// through cp.async: the caller commits, waits, fences (fence_proxy_async) and publishes with a barrier.  Other
// layouts load element by element (plain stores: the fence and the barrier publish them as well).
template <typename T, int R, int NTH>
__device__ __forceinline__ void load_tile(T* tile, const T* __restrict__ g, long long ldg, int nrows, int col0,
                                          int ncols) {
    static_assert(sizeof(T) == 2, "16-bit tiles");
    unsigned char* b = reinterpret_cast<unsigned char*>(tile);
    const bool vec = (ldg % 8) == 0 && (col0 % 8) == 0 && (((unsigned long long)g) & 15ull) == 0;
    for (int idx = threadIdx.x; idx < R * 8; idx += NTH) {
        const int r = idx >> 3, c = idx & 7;
        const int left = r < nrows ? ncols - (col0 + 8 * c) : 0;
        if (vec) {
            const int bytes = left <= 0 ? 0 : (left >= 8 ? 16 : 2 * left);
            wbmma::cp_async16(b + sw128(r, c), bytes ? g + r * ldg + col0 + 8 * c : g, bytes);
        } else {
            T* dst = reinterpret_cast<T*>(b + sw128(r, c));
            const T* src = g + r * ldg + col0 + 8 * c;
#pragma unroll
            for (int e = 0; e < 8; ++e) dst[e] = e < left ? src[e] : wbmma::zero_val<T>();
        }
    }
}

}  // namespace wbgmma
