// emu.h -- run the CUDA C++ kernels of kernels/cuda on the CPU, for testing without a GPU (scripts/cuda_emulate.py).
//
// One std::thread per CUDA thread of a block; blocks run one after another.  __syncthreads is a block barrier;
// warp collectives (shfl, ldmatrix, mma.sync) publish each lane's operands in a per-warp exchange area, meet at
// a warp barrier, compute their own results from every lane's operands, and meet again.  The inline PTX of the
// sources is rewritten by cuda_emulate.py into emu::ptx(text, outputs, inputs) calls, emulated below from the
// PTX ISA's definitions (fragment layouts of mma.m16n8k16 f16/bf16 and mma.m16n8k8 tf32, ldmatrix(.trans),
// cp.async with zero fill, red.global.add, cvt rounding).  cp.async copies land at the issuing thread's next
// cp.async.wait_group, so a read that does not wait for its copy sees stale data.  Shared memory is filled with
// 0xff bytes (NaN as float/half) before each block.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
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
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __syncthreads() emu::syncthreads()
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif

struct uint4 { unsigned x, y, z, w; };
struct float2 { float x, y; };

// dynamic shared memory of the running block, under the names the sources declare it with
#define EMU_SMEM_BYTES (256 * 1024)
alignas(16) unsigned char smem_raw[EMU_SMEM_BYTES];
alignas(16) float smem[EMU_SMEM_BYTES / 4];

inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace emu {
struct Warp {
    std::barrier<>* bar;
    uint64_t x[32][16];
};
struct Block {
    std::barrier<>* bar;
    std::vector<Warp> warps;
};
inline Block* B = nullptr;
struct Copy { void* dst; const void* src; int n, src_n; };
inline thread_local std::vector<Copy> pending;

inline void syncthreads() { B->bar->arrive_and_wait(); }
inline int lane() { return threadIdx.x & 31; }
inline Warp& warp() { return B->warps[threadIdx.x >> 5]; }
inline void warp_sync() { warp().bar->arrive_and_wait(); }

inline unsigned char* shared_base(const void* p) {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    if (c >= smem_raw && c < smem_raw + EMU_SMEM_BYTES) return smem_raw;
    const unsigned char* f = reinterpret_cast<const unsigned char*>(smem);
    if (c >= f && c < f + EMU_SMEM_BYTES) return const_cast<unsigned char*>(f);
    throw std::runtime_error("shared address outside shared memory");
}
}  // namespace emu

// 32-bit shared-window addresses: offsets into smem_raw (the only buffer the ldmatrix/cp.async kernels use)
inline unsigned __cvta_generic_to_shared(const void* p) {
    return (unsigned)(static_cast<const unsigned char*>(p) - emu::shared_base(p));
}

template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int o) {
    static_assert(sizeof(V) <= 8, "shfl of a wide type");
    auto& W = emu::warp();
    const int L = emu::lane();
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(V));
    W.x[L][0] = bits;
    emu::warp_sync();
    uint64_t got = W.x[L ^ o][0];
    emu::warp_sync();
    V r;
    std::memcpy(&r, &got, sizeof(V));
    return r;
}

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
            std::memcpy(&v[h], smem_raw + addr, 2);
        }
        outs[i].set_u32((unsigned)v[0] | ((unsigned)v[1] << 16));
    }
    warp_sync();
}

inline bool starts(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

inline void ptx(const char* text, std::initializer_list<Out> o, std::initializer_list<In> i) {
    std::string s(text);
    while (!s.empty() && (s[0] == ' ' || s[0] == '\n' || s[0] == '\t')) s.erase(0, 1);
    const Out* outs = o.begin();
    const In* ins = i.begin();
    if (starts(s, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")) return mma(outs, ins, Kind::f16);
    if (starts(s, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")) return mma(outs, ins, Kind::bf16);
    if (starts(s, "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32")) return mma(outs, ins, Kind::tf32);
    if (starts(s, "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16")) return ldmatrix(outs, ins, true);
    if (starts(s, "ldmatrix.sync.aligned.m8n8.x4.shared.b16")) return ldmatrix(outs, ins, false);
    if (starts(s, "cp.async.cg.shared.global") || starts(s, "cp.async.ca.shared.global")) {
        const int n = starts(s, "cp.async.cg") ? 16 : 4;
        pending.push_back({smem_raw + ins[0].u32(), ins[1].ptr(), n, (int)ins[2].u32()});
        return;
    }
    if (starts(s, "cp.async.commit_group")) return;
    if (starts(s, "cp.async.wait_group")) {
        for (const Copy& c : pending) {
            std::memset(c.dst, 0, c.n);
            if (c.src_n) std::memcpy(c.dst, c.src, c.src_n);
        }
        pending.clear();
        return;
    }
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
inline void launch(unsigned grid, unsigned block, std::function<void()> body) {
    if (block % 32) throw std::runtime_error("block size must be a multiple of 32");
    std::barrier<> bbar((std::ptrdiff_t)block);
    std::vector<std::barrier<>> wbars;
    Block blk;
    blk.bar = &bbar;
    blk.warps.resize(block / 32);
    std::vector<std::unique_ptr<std::barrier<>>> owned;
    for (auto& w : blk.warps) {
        owned.emplace_back(new std::barrier<>(32));
        w.bar = owned.back().get();
    }
    B = &blk;
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    std::vector<std::thread> threads;
    std::exception_ptr err = nullptr;
    std::atomic<bool> failed{false};
    for (unsigned t = 0; t < block; ++t)
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned b = 0; b < grid; ++b) {
                if (t == 0) {
                    std::memset(smem_raw, 0xff, EMU_SMEM_BYTES);
                    std::memset(smem, 0xff, EMU_SMEM_BYTES);
                }
                blockIdx = {b, 0, 0};
                bbar.arrive_and_wait();
                try {
                    if (!failed) body();
                } catch (...) {
                    if (!failed.exchange(true)) err = std::current_exception();
                }
                if (!pending.empty()) {                  // a copy never waited for
                    if (!failed.exchange(true))
                        err = std::make_exception_ptr(std::runtime_error("cp.async issued but never waited for"));
                    pending.clear();
                }
                bbar.arrive_and_wait();
            }
        });
    for (auto& th : threads) th.join();
    B = nullptr;
    if (err) std::rethrow_exception(err);
}

// call f with the arguments args[i] points to (each of f's parameter type)
template <typename... A, size_t... I>
inline void call_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*reinterpret_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <typename... A>
inline void call(void (*f)(A...), void** args) { call_impl(f, args, std::index_sequence_for<A...>{}); }
}  // namespace emu
