// emu.h -- run the CUDA C++ kernels of kernels/cuda on the CPU, for testing without a GPU (scripts/cuda_emulate.py).
//
// One std::thread per CUDA thread of a block; blocks run one after another (grids of up to three dimensions,
// one-dimensional blocks).  __syncthreads is a block barrier; a thread that returns drops out of it (and out of
// its warp's barrier: a warp collective that completes without every lane of the warp is an error).  Warp
// collectives (shfl, ldmatrix, mma.sync) publish each lane's operands in a per-warp exchange area, meet at a
// warp barrier, compute their own results from every lane's operands, and meet again.  The inline PTX of the
// sources is rewritten by cuda_emulate.py into emu::ptx(text, outputs, inputs) calls, emulated below from the
// PTX ISA's definitions (fragment layouts of mma.m16n8k16 f16/bf16 and mma.m16n8k8 tf32, ldmatrix(.trans),
// cp.async with zero fill and commit/wait groups, red.global.add, cvt rounding).
// cp.async: the destination is poisoned (0xff bytes) when the copy is issued and the data lands at the issuing
// thread's wait for its group, so a read that does not wait sees NaN; a write to the destination while the copy
// is in flight is an error.  Dynamic shared memory (every `extern __shared__` array, rewritten into a pointer
// to emu::dyn_smem) is filled with 0xff bytes (NaN as float/half) before each block, and a write past the
// launch's dynamic size is an error.  Static `__shared__` arrays become function-local statics (one copy, as
// blocks run one at a time), poisoned the same way.  The launch checks the argument count and each argument's
// size against the kernel's parameter types.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct emu_dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __syncthreads() emu::syncthreads()
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif

struct uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline float __expf(float x) { return expf(x); }
inline float __fdividef(float a, float b) { return a / b; }     // (the GPU: MUFU.RCP and a multiply, 2 ulp)
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

namespace emu {
// dynamic shared memory of the running block: every `extern __shared__` array of the sources points here
constexpr int SMEM_BYTES = 256 * 1024;
alignas(1024) inline unsigned char dyn_smem[SMEM_BYTES];   // 1024: the 128-byte swizzle's atoms
inline int dyn_bytes = 0;                          // the running launch's dynamic shared memory size

// static shared arrays (function-local statics after cuda_emulate.py's rewrite), poisoned before every block
struct SharedStatic {
    static std::vector<std::pair<void*, size_t>>& all() { static std::vector<std::pair<void*, size_t>> v; return v; }
    static std::mutex& lock() { static std::mutex m; return m; }
    SharedStatic(void* p, size_t n) {
        std::memset(p, 0xff, n);
        std::lock_guard<std::mutex> g(lock());
        all().emplace_back(p, n);
    }
    static void poison_all() {
        std::lock_guard<std::mutex> g(lock());
        for (auto& [p, n] : all()) std::memset(p, 0xff, n);
    }
};

struct Warp;
struct WarpPhase { Warp* w; void operator()() noexcept; };
struct Warp {
    std::unique_ptr<std::barrier<WarpPhase>> bar;
    std::atomic<int> arrived{0};                    // lanes at the barrier's current phase (returned lanes drop)
    bool broken = false;                            // the last phase completed without every lane
    uint64_t x[32][16];
};
inline void WarpPhase::operator()() noexcept { w->broken = w->arrived.exchange(0) != 32; }
struct WarpGroup {                                  // 4 warps (wgmma's collectives)
    std::unique_ptr<std::barrier<>> bar;
    uint64_t x[128][8];
};
struct Block {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<Warp>> warps;
    std::vector<std::unique_ptr<WarpGroup>> groups;
};
inline Block* B = nullptr;

struct Copy { unsigned char* dst; const void* src; int n, src_n; long group; };
inline thread_local std::vector<Copy> pending;      // this thread's cp.async copies not yet landed
inline thread_local long committed = 0;             // cp.async groups this thread committed
// wgmma results not yet landed in their accumulator registers: they land at the wait_group that covers their batch
struct AccWrite { float* dst; float v; long group; };
inline thread_local std::vector<AccWrite> acc_pending;
inline thread_local long wg_committed = 0;          // wgmma batches this thread committed

inline void syncthreads() { B->bar->arrive_and_wait(); }
inline int lane() { return threadIdx.x & 31; }
inline Warp& warp() { return *B->warps[threadIdx.x >> 5]; }
inline void warp_sync() {
    Warp& w = warp();
    w.arrived.fetch_add(1);
    w.bar->arrive_and_wait();
    if (w.broken) throw std::runtime_error("warp collective without every lane of the warp (one returned or threw)");
}

inline unsigned shared_offset(const void* p) {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    if (c < dyn_smem || c >= dyn_smem + SMEM_BYTES)
        throw std::runtime_error("shared-window address of memory outside the dynamic shared memory");
    return (unsigned)(c - dyn_smem);
}
}  // namespace emu

// 32-bit shared-window addresses: offsets into the dynamic shared memory
inline unsigned __cvta_generic_to_shared(const void* p) { return emu::shared_offset(p); }

namespace emu {
// every lane publishes v, reads the value of lane src(L) (its own when src(L) is outside the warp)
template <typename V, typename F>
inline V shfl(V v, F src) {
    static_assert(sizeof(V) <= 8, "shfl of a wide type");
    auto& W = warp();
    const int L = lane();
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(V));
    W.x[L][0] = bits;
    warp_sync();
    const int s = src(L);
    const uint64_t got = (s >= 0 && s < 32) ? W.x[s][0] : bits;
    warp_sync();
    V r;
    std::memcpy(&r, &got, sizeof(V));
    return r;
}
}  // namespace emu

template <typename V> inline V __shfl_xor_sync(unsigned, V v, int o) { return emu::shfl(v, [&](int L) { return L ^ o; }); }
template <typename V> inline V __shfl_sync(unsigned, V v, int s) { return emu::shfl(v, [&](int) { return s & 31; }); }
template <typename V> inline V __shfl_up_sync(unsigned, V v, unsigned d) { return emu::shfl(v, [&](int L) { return L - (int)d; }); }
template <typename V> inline V __shfl_down_sync(unsigned, V v, unsigned d) { return emu::shfl(v, [&](int L) { return L + (int)d; }); }
// Device-wide ordering and atomics: blocks run one after another, so a fence has nothing to order across blocks
// (a block's threads meet at its barriers), an L2 load is a load, and an atomic is the host's atomic add.
inline void __threadfence() {}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicMax(unsigned* p, unsigned v) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
inline float __ldcg(const float* p) { return *p; }
inline float4 __ldcg(const float4* p) { return *p; }
inline int __ffs(unsigned x) { return x ? __builtin_ctz(x) + 1 : 0; }

namespace emu {
// every lane publishes its predicate, reads every lane's: bit L of the result is lane L's
inline unsigned ballot(bool pred) {
    auto& W = warp();
    const int L = lane();
    W.x[L][0] = pred ? 1u : 0u;
    warp_sync();
    unsigned m = 0;
    for (int i = 0; i < 32; ++i) m |= (W.x[i][0] ? 1u : 0u) << i;
    warp_sync();
    return m;
}
}  // namespace emu
inline unsigned __ballot_sync(unsigned, bool pred) { return emu::ballot(pred); }

namespace emu {
// ------------------------------------------------------------------------ operands of rewritten asm statements
struct Out {
    void* p;
    int size;
    template <typename T> Out(T& r) : p(&r), size((int)sizeof(T)) {}
    unsigned u32() const { unsigned v = 0; std::memcpy(&v, p, size < 4 ? size : 4); return v; }
    float f32() const { float v; std::memcpy(&v, p, 4); return v; }
    void set_u32(unsigned v) const { std::memcpy(p, &v, size < 4 ? size : 4); }
    void set_f32(float v) const { std::memcpy(p, &v, 4); }
};
struct In {
    uint64_t bits;
    template <typename T> In(T* p) : bits((uint64_t)(uintptr_t)p) {}
    template <typename T> In(const T* p) : bits((uint64_t)(uintptr_t)p) {}
    In(float f) { unsigned u; std::memcpy(&u, &f, 4); bits = u; }
    In(unsigned v) : bits(v) {}
    In(int v) : bits((uint64_t)(unsigned)v) {}
    In(unsigned short v) : bits(v) {}
    In(long long v) : bits((uint64_t)v) {}
    In(long v) : bits((uint64_t)v) {}
    In(unsigned long v) : bits((uint64_t)v) {}
    In(unsigned long long v) : bits(v) {}
    unsigned u32() const { return (unsigned)bits; }
    float f32() const { float f; unsigned u = (unsigned)bits; std::memcpy(&f, &u, 4); return f; }
    void* ptr() const { return (void*)(uintptr_t)bits; }
};

// ------------------------------------------------------------------------ number formats
inline float half_to_f(unsigned short h) { _Float16 x; std::memcpy(&x, &h, 2); return (float)x; }
inline unsigned short f_to_half(float f) { _Float16 x = (_Float16)f; unsigned short h; std::memcpy(&h, &x, 2); return h; }
inline float bf_to_f(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }
inline unsigned short f_to_bf(float f) {                // round to nearest even (NaN stays NaN)
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
inline unsigned f_to_tf32_rna(float f) {                // cvt.rna.tf32.f32: nearest, ties away from zero
    unsigned u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;     // inf / NaN unchanged
    return (u + 0x1000u) & 0xffffe000u;
}
inline float tf32_value(unsigned u) { return __uint_as_float(u & 0xffffe000u); }   // the bits the mma reads

enum class Kind { f16, bf16, tf32 };
inline float elem16(unsigned reg, int hi, Kind k) {
    const unsigned short h = (unsigned short)(hi ? reg >> 16 : reg & 0xffffu);
    return k == Kind::f16 ? half_to_f(h) : bf_to_f(h);
}

// ------------------------------------------------------------------------ warp-level matrix instructions
// mma.sync .m16n8k16 (f16/bf16) or .m16n8k8 (tf32), f32 accumulate: outs = D (c0..c3, also C), ins = A regs then B.
inline void mma(const Out* outs, const In* ins, Kind k) {
    auto& W = warp();
    const int L = lane();
    const int na = 4, nb = 2;
    for (int i = 0; i < na; ++i) W.x[L][i] = ins[i].u32();
    for (int i = 0; i < nb; ++i) W.x[L][4 + i] = ins[na + i].u32();
    warp_sync();
    const int K = k == Kind::tf32 ? 8 : 16;
    auto A = [&](int r, int c) -> double {
        if (k == Kind::tf32) {                    // a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4)
            const int ln = (r % 8) * 4 + (c % 4), reg = (r >= 8 ? 1 : 0) + (c >= 4 ? 2 : 0);
            return tf32_value((unsigned)W.x[ln][reg]);
        }                                         // a0 (g, 2t..) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..)
        const int ln = (r % 8) * 4 + (c % 8) / 2, reg = (r >= 8 ? 1 : 0) + (c >= 8 ? 2 : 0);
        return elem16((unsigned)W.x[ln][reg], c & 1, k);
    };
    auto Bm = [&](int r, int n) -> double {      // r = k index
        if (k == Kind::tf32) {                    // b0 (k t, n g) b1 (k t+4, n g)
            const int ln = n * 4 + (r % 4), reg = r >= 4 ? 1 : 0;
            return tf32_value((unsigned)W.x[ln][4 + reg]);
        }                                         // b0 (k 2t..2t+1, n g) b1 (k 2t+8.., n g)
        const int ln = n * 4 + (r % 8) / 2, reg = r >= 8 ? 1 : 0;
        return elem16((unsigned)W.x[ln][4 + reg], r & 1, k);
    };
    const int g = L >> 2, t = L & 3;
    float d[4];
    for (int e = 0; e < 4; ++e) {                 // c0 c1 (g, 2t..2t+1) c2 c3 (g+8, 2t..2t+1)
        const int r = g + 8 * (e >> 1), c = 2 * t + (e & 1);
        double acc = 0.0;
        for (int kk = 0; kk < K; ++kk) acc += A(r, kk) * Bm(kk, c);
        d[e] = (float)((double)outs[e].f32() + acc);
    }
    warp_sync();
    for (int e = 0; e < 4; ++e) outs[e].set_f32(d[e]);
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lane L gives the row address of row L % 8 of matrix L / 8;
// register i of lane L = matrix i's elements (row L/4, cols 2(L%4), +1), or with .trans (rows 2(L%4), +1; col L/4).
inline void ldmatrix(const Out* outs, const In* ins, bool trans) {
    auto& W = warp();
    const int L = lane();
    W.x[L][0] = ins[0].u32();
    warp_sync();
    for (int i = 0; i < 4; ++i) {
        unsigned short v[2];
        for (int h = 0; h < 2; ++h) {
            const int r = trans ? 2 * (L % 4) + h : L / 4, c = trans ? L / 4 : 2 * (L % 4) + h;
            const unsigned addr = (unsigned)W.x[8 * i + r][0] + 2 * c;
            if (addr + 2 > (unsigned)dyn_bytes) throw std::runtime_error("ldmatrix past the dynamic shared memory");
            std::memcpy(&v[h], dyn_smem + addr, 2);
        }
        outs[i].set_u32((unsigned)v[0] | ((unsigned)v[1] << 16));
    }
    warp_sync();
}


// ------------------------------------------------------------------------ warpgroup MMA (wgmma, sm_90a)
// wgmma.mma_async m64n64k16, f32 += f16 / bf16, as kernels/cuda/wgmma.cuh describes it: a collective of the 4 warps
// of a warpgroup (threads 128 i .. 128 i + 127).  Shared-memory operands through the 64-bit descriptor: start
// address, LBO, SBO (>> 4 each), base offset (must be 0), swizzle (must be 1: 128 bytes).  The element (mn, k) of a
// k-slice (k < 16) sits, before the swizzle, at
//   K-major  (trans 0): start + 128 (mn % 8) + SBO (mn / 8) + 2 k
//   MN-major (trans 1): start + 128 (k % 8) + SBO (k / 8) + 2 (mn % 64) + LBO (mn / 64)
// and the 128-byte swizzle XORs address bits 4-6 with bits 7-9.  The results land in the accumulators at the
// wait_group that covers the instruction's batch (an accumulator read before it sees the old value); a later
// wgmma of the same thread that reads an accumulator with a pending result chains on that result.
inline WarpGroup& warpgroup() {
    const unsigned i = threadIdx.x >> 7;
    if (i >= B->groups.size()) throw std::runtime_error("wgmma outside a whole warpgroup");
    return *B->groups[i];
}
inline void wg_sync() { warpgroup().bar->arrive_and_wait(); }

struct Desc { unsigned start, lbo, sbo; };
inline Desc desc_of(uint64_t d) {
    if (((d >> 49) & 7u) != 0) throw std::runtime_error("wgmma descriptor: base offset other than 0");
    if ((d >> 62) != 1u) throw std::runtime_error("wgmma descriptor: swizzle mode other than 128 bytes");
    return {(unsigned)(d & 0x3FFFu) << 4, (unsigned)((d >> 16) & 0x3FFFu) << 4, (unsigned)((d >> 32) & 0x3FFFu) << 4};
}
inline float desc_elem(const Desc& d, bool mn_major, int mn, int k, Kind kind) {
    const unsigned lin = mn_major ? d.start + 128u * (k % 8) + d.sbo * (k / 8) + 2u * (mn % 64) + d.lbo * (mn / 64)
                                  : d.start + 128u * (mn % 8) + d.sbo * (mn / 8) + 2u * k;
    const unsigned phys = lin ^ (((lin >> 7) & 7u) << 4);
    if (phys + 2 > (unsigned)dyn_bytes) throw std::runtime_error("wgmma operand past the dynamic shared memory");
    unsigned short h;
    std::memcpy(&h, dyn_smem + phys, 2);
    return kind == Kind::f16 ? half_to_f(h) : bf_to_f(h);
}

inline float acc_value(float* p) {                   // an accumulator as the next wgmma reads it
    for (auto it = acc_pending.rbegin(); it != acc_pending.rend(); ++it)
        if (it->dst == p) return it->v;
    return *p;
}

// outs: the 32 accumulators d[j][e]; ins: SS (desc a, desc b, scale-d, trans a, trans b) or RS (a0..a3, desc b,
// scale-d, trans b)
inline void wgmma(const Out* outs, const In* ins, int nin, Kind kind) {
    const bool rs = nin == 7;
    if (!rs && nin != 5) throw std::runtime_error("wgmma: unexpected operands");
    auto& G = warpgroup();
    const int tid = threadIdx.x & 127;
    for (int i = 0; i < (rs ? 4 : 2); ++i) G.x[tid][i] = rs ? ins[i].u32() : ins[i].bits;
    wg_sync();
    const uint64_t db_bits = rs ? ins[4].bits : ins[1].bits;
    const bool scale_d = (rs ? ins[5].u32() : ins[2].u32()) != 0;
    const bool ta = rs ? false : ins[3].u32() != 0, tb = (rs ? ins[6].u32() : ins[4].u32()) != 0;
    for (int t2 = 0; t2 < 128; ++t2)                   // every thread of the group issued the same descriptors
        if (!rs && G.x[t2][0] != G.x[tid][0]) throw std::runtime_error("wgmma: A descriptors differ across the warpgroup");
    const Desc db = desc_of(db_bits);
    const Desc da = rs ? Desc{0, 0, 0} : desc_of(ins[0].bits);
    auto A = [&](int m, int k) -> double {
        if (!rs) return desc_elem(da, ta, m, k, kind);
        const int w = m / 16, r = m % 16;              // warp w's fragment: a0 (g, 2t..) a1 (g+8, 2t..) a2 (g, 2t+8..) a3
        const int ln = (r % 8) * 4 + (k % 8) / 2, reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return elem16((unsigned)G.x[32 * w + ln][reg], k & 1, kind);
    };
    const int w = tid >> 5, L = tid & 31, g = L >> 2, t = L & 3;
    float d[32];
    for (int j = 0; j < 8; ++j)
        for (int e = 0; e < 4; ++e) {
            const int m = 16 * w + g + 8 * (e >> 1), n = 8 * j + 2 * t + (e & 1);
            double acc = 0.0;
            for (int k = 0; k < 16; ++k) acc += A(m, k) * (double)desc_elem(db, tb, n, k, kind);
            float* p = static_cast<float*>(outs[4 * j + e].p);
            d[4 * j + e] = (float)((scale_d ? (double)acc_value(p) : 0.0) + acc);
        }
    wg_sync();
    for (int i = 0; i < 32; ++i) acc_pending.push_back({static_cast<float*>(outs[i].p), d[i], wg_committed});
}
inline void wgmma_wait(long keep) {
    std::vector<AccWrite> rest;
    for (const AccWrite& a : acc_pending) {
        if (a.group < wg_committed - keep) *a.dst = a.v;
        else rest.push_back(a);
    }
    acc_pending.swap(rest);
}

// ------------------------------------------------------------------------ cp.async
inline void land(const Copy& c) {
    for (int i = 0; i < c.n; ++i)
        if (c.dst[i] != 0xff)
            throw std::runtime_error("shared memory at offset " + std::to_string(c.dst - dyn_smem) +
                                     " written while a cp.async to it was in flight");
    std::memset(c.dst, 0, c.n);
    if (c.src_n) std::memcpy(c.dst, c.src, c.src_n);
}
// land this thread's copies of every group but the newest `keep` committed ones (uncommitted copies stay)
inline void wait_groups(long keep) {
    std::vector<Copy> rest;
    for (const Copy& c : pending) {
        if (c.group < committed - keep) land(c);
        else rest.push_back(c);
    }
    pending.swap(rest);
}

inline bool starts(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

inline void ptx(const char* text, std::initializer_list<Out> o, std::initializer_list<In> i) {
    std::string s(text);
    while (!s.empty() && (s[0] == ' ' || s[0] == '\n' || s[0] == '\t')) s.erase(0, 1);
    const Out* outs = o.begin();
    const In* ins = i.begin();
    if (s.empty()) return;                          // asm volatile("" : "+f"(x)): a compiler barrier only
    if (s.find("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16") != std::string::npos)
        return wgmma(outs, ins, (int)i.size(), Kind::f16);
    if (s.find("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16") != std::string::npos)
        return wgmma(outs, ins, (int)i.size(), Kind::bf16);
    if (starts(s, "wgmma.fence.sync.aligned") || starts(s, "fence.proxy.async.shared::cta")) return;
    if (starts(s, "wgmma.commit_group.sync.aligned")) { ++wg_committed; return; }
    if (starts(s, "wgmma.wait_group.sync.aligned")) return wgmma_wait(std::stol(s.substr(std::strlen("wgmma.wait_group.sync.aligned"))));
    if (starts(s, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")) return mma(outs, ins, Kind::f16);
    if (starts(s, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")) return mma(outs, ins, Kind::bf16);
    if (starts(s, "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32")) return mma(outs, ins, Kind::tf32);
    if (starts(s, "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16")) return ldmatrix(outs, ins, true);
    if (starts(s, "ldmatrix.sync.aligned.m8n8.x4.shared.b16")) return ldmatrix(outs, ins, false);
    if (starts(s, "cp.async.cg.shared.global") || starts(s, "cp.async.ca.shared.global")) {
        // "[%0], [%1], cp-size(, %2)": the copy size is the number after the second operand
        const size_t at = s.find("],", s.find("],") + 2);
        const int n = std::stoi(s.substr(at + 2));
        const int src_n = i.size() > 2 ? (int)ins[2].u32() : n;
        const unsigned off = ins[0].u32();
        if (n != 4 && n != 8 && n != 16) throw std::runtime_error("cp.async of " + std::to_string(n) + " bytes");
        if (off % n) throw std::runtime_error("cp.async to a misaligned shared address");
        if ((uintptr_t)ins[1].ptr() % n) throw std::runtime_error("cp.async from a misaligned global address");
        if (src_n < 0 || src_n > n) throw std::runtime_error("cp.async src-size out of range");
        if (off + n > (unsigned)dyn_bytes) throw std::runtime_error("cp.async past the dynamic shared memory");
        std::memset(dyn_smem + off, 0xff, n);
        pending.push_back({dyn_smem + off, ins[1].ptr(), n, src_n, committed});
        return;
    }
    if (starts(s, "cp.async.commit_group")) { ++committed; return; }
    if (starts(s, "cp.async.wait_group")) return wait_groups(std::stol(s.substr(std::strlen("cp.async.wait_group"))));
    if (starts(s, "cp.async.wait_all")) { ++committed; return wait_groups(0); }
    if (starts(s, "red.global.add.v2.f32")) {
        float* p = static_cast<float*>(ins[0].ptr());
        std::atomic_ref<float>(p[0]).fetch_add(ins[1].f32());
        std::atomic_ref<float>(p[1]).fetch_add(ins[2].f32());
        return;
    }
    if (starts(s, "red.global.add.f32")) {
        std::atomic_ref<float>(*static_cast<float*>(ins[0].ptr())).fetch_add(ins[1].f32());
        return;
    }
    if (starts(s, "cvt.rna.tf32.f32")) return outs[0].set_u32(f_to_tf32_rna(ins[0].f32()));
    if (starts(s, "cvt.f32.f16")) return outs[0].set_f32(half_to_f((unsigned short)ins[0].u32()));
    if (starts(s, "cvt.rn.f16.f32")) return outs[0].set_u32(f_to_half(ins[0].f32()));
    if (starts(s, "cvt.rn.bf16.f32")) return outs[0].set_u32(f_to_bf(ins[0].f32()));
    if (starts(s, "cvt.rn.f16x2.f32"))              // first source -> upper half
        return outs[0].set_u32(((unsigned)f_to_half(ins[0].f32()) << 16) | f_to_half(ins[1].f32()));
    if (starts(s, "cvt.rn.bf16x2.f32"))
        return outs[0].set_u32(((unsigned)f_to_bf(ins[0].f32()) << 16) | f_to_bf(ins[1].f32()));
    throw std::runtime_error("emu: no emulation for PTX '" + s + "'");
}

// ------------------------------------------------------------------------ launch
// Run body for every block of the grid (x fastest), `block` threads each, `smem_bytes` of dynamic shared memory.
inline void launch(emu_dim3 grid, unsigned block, unsigned smem_bytes, std::function<void()> body) {
    if (block == 0 || block > 1024 || block % 32) throw std::runtime_error("block size must be a multiple of 32, <= 1024");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        throw std::runtime_error("grid dimensions out of range");
    if (smem_bytes > (unsigned)SMEM_BYTES) throw std::runtime_error("dynamic shared memory above the emulator's");
    Block blk;
    B = &blk;
    gridDim = grid;
    blockDim = {block, 1, 1};
    dyn_bytes = (int)smem_bytes;
    const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    std::barrier<> gate((std::ptrdiff_t)block);   // between blocks (every thread, never dropped)
    std::exception_ptr err = nullptr;
    std::atomic<bool> failed{false};
    auto fail = [&](std::exception_ptr e) { if (!failed.exchange(true)) err = e; };
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t)
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            pending.clear();
            committed = 0;
            acc_pending.clear();
            wg_committed = 0;
            for (unsigned long long b = 0; b < nblocks; ++b) {
                if (t == 0) {                           // a fresh block: barriers, poisoned shared memory
                    std::memset(dyn_smem, 0xff, SMEM_BYTES);
                    SharedStatic::poison_all();
                    blk.bar.reset(new std::barrier<>((std::ptrdiff_t)block));
                    blk.warps.clear();
                    for (unsigned i = 0; i < block / 32; ++i) {
                        Warp* w = new Warp();
                        w->bar.reset(new std::barrier<WarpPhase>(32, WarpPhase{w}));
                        blk.warps.emplace_back(w);
                    }
                    blk.groups.clear();
                    for (unsigned i = 0; i < block / 128; ++i) {
                        WarpGroup* g = new WarpGroup();
                        g->bar.reset(new std::barrier<>(128));
                        blk.groups.emplace_back(g);
                    }
                }
                blockIdx = {(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
                gate.arrive_and_wait();
                try {
                    if (!failed) body();
                } catch (...) {
                    fail(std::current_exception());
                }
                warp().bar->arrive_and_drop();          // returned: no longer waited for
                blk.bar->arrive_and_drop();
                if (!pending.empty()) {
                    fail(std::make_exception_ptr(std::runtime_error("cp.async issued but never waited for")));
                    pending.clear();
                }
                if (!acc_pending.empty()) {
                    fail(std::make_exception_ptr(std::runtime_error("wgmma issued but never waited for")));
                    acc_pending.clear();
                }
                gate.arrive_and_wait();
                if (t == 0 && !failed) {                // nothing written past the launch's dynamic size
                    for (int i = (int)smem_bytes; i < SMEM_BYTES; ++i)
                        if (dyn_smem[i] != 0xff) {
                            fail(std::make_exception_ptr(std::runtime_error(
                                "shared memory written past the launch's dynamic size (offset " + std::to_string(i) + ")")));
                            break;
                        }
                }
            }
        });
    for (auto& th : threads) th.join();
    B = nullptr;
    if (err) std::rethrow_exception(err);
}

// call f with the arguments args[i] points to, after checking their number and sizes against f's parameters
template <typename A> using Param = std::remove_cv_t<std::remove_reference_t<A>>;
template <typename... A, size_t... I>
inline void call_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*reinterpret_cast<Param<A>*>(args[I])...);
}
template <typename... A>
inline void check_args(void (*)(A...), const int* sizes, int n) {
    constexpr int want = (int)sizeof...(A);
    if (n != want) throw std::runtime_error(std::to_string(n) + " arguments for a kernel of " + std::to_string(want));
    const int size[] = {(int)sizeof(Param<A>)..., 0};
    for (int i = 0; i < want; ++i)
        if (sizes[i] != size[i])
            throw std::runtime_error("argument " + std::to_string(i) + " has " + std::to_string(sizes[i]) +
                                     " bytes, the kernel's parameter " + std::to_string(size[i]));
}
template <typename... A>
inline void call(void (*f)(A...), void** args) { call_impl(f, args, std::index_sequence_for<A...>{}); }
}  // namespace emu
