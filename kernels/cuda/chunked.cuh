// chunked.cuh -- the shared skeleton of linear, decayed and ZeroS attention (CuPy RawKernels).
//
// All three ops reduce to ONE contraction, the "decayed linear-attention core" (per leading index n):
//
//     out_r = scale * sum_{c visible from r} exp(L_r - L_c) (X_r . Y_c) Z_c          (*)
//
// with X, Y: (N, T, dx), Z: (N, T, dz), visible = c <= r (forward), c >= r (REV, the transposed
// problem of the backward pass) or every c (not causal, then L = 0).  Every exponent is <= 0.
//   forward  o  = core(X=q,  Y=k,  Z=v)           dq = core(X=do, Y=v,  Z=k)
//   backward dk = core_REV(X=v, Y=do, Z=q)        dv = core_REV(X=k, Y=q, Z=do)
// (dA_ti = do_t.v_i, dq = (dA*D) k, dk = (dA*D)^T q, dv = (A)^T do: the references' derivations.)
//
// Chunked form (chunk length C, NC = ceil(T/C) chunks).  b: (N, NC*C) float32, the within-chunk
// cumulative log decay b_t = sum_{j in chunk, j <= t} g_j (positions past T repeat the last valid
// value, so b_last = b[chunk start + C - 1] always).  Decay i -> t inside a chunk is exp(b_t - b_i);
// from the chunk-start state to t it is exp(b_t); from i to the chunk end it is u_i = exp(b_last - b_i).
//   chunk_state (forward): H[c] = sum over chunks < c, carried as  S <- e^{b_last} S + sum_i u_i Y_i Z_i^T
//                           (H[NC] = the total: the state of the non-causal op)
//   chunk_state (REV):     H[c] = sum over chunks >= c, S <- e^{b_last} S + sum_t e^{b_t} Y_t Z_t^T
//                           (H[0] = the total)
//   chunk_out:   out_r = scale * [ sum_{c in chunk, visible} exp(+-(b_r - b_c)) (X_r.Y_c) Z_c
//                                  + w_r * sum_d X_rd H[slot][d][z] ]
//                w_r = e^{b_r} (forward) or u_r (REV); slot = c (fwd), c + 1 (REV), or the total.
// Memory layouts: all arrays row-major and contiguous.  States H: (N, NC+1, da, db) float32, read
// through strides (hs_x, hs_z) so the same buffer serves as H or H^T.  Outputs are float32 (N, T, dz);
// the Python side casts them to the op's dtype.  Inputs X, Y, Z share one dtype TI (float or wb_half).
#pragma once
#include "common.cuh"

namespace wbchunk {

constexpr int THREADS = 256;   // 16 x 16 threads: (tx, ty) = (tid % 16, tid / 16)
constexpr int BV = 64;         // output-column tile of chunk_out (grid dim z)
constexpr int BS = 32;         // state tile (BS x BS) of chunk_state

__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }

// Shared floats of chunk_out<DXP, C>: Xs [C][DXP+1], Ys [C][DXP+1] (then reused as Hs [DXP][BV+1]),
// As [C][C+1], Zs [C][BV+1], bs [C].  (+1 columns: conflict-free strided reads.)
__host__ __device__ constexpr int out_smem_floats(int DXP, int C) {
    return C * (DXP + 1) + cmax(C * (DXP + 1), DXP * (BV + 1)) + C * (C + 1) + C * (BV + 1) + C;
}

}  // namespace wbchunk

// ------------------------------------------------------------------------------------------------
// chunk_state: grid (ceil(db/BS), ceil(da/BS), N), block 256.  Each block carries one BS x BS tile of
// the Dk x Dv state in registers (thread owns row a = tid / 8, columns tid % 8 + 8 j, j < 4) and walks
// the chunks in order (REV: backwards), writing the state before folding each chunk in.  The next
// chunk's tiles are prefetched into registers while the current one is folded.
//   A: (N, T, da) the state's row factor (k, or q in REV); B: (N, T, db) its column factor (v, or do).
template <typename TI, int C, bool DECAY, bool REV>
__global__ void __launch_bounds__(256) chunk_state(const TI* __restrict__ A, const TI* __restrict__ B,
                                                   const float* __restrict__ b, float* __restrict__ H,
                                                   int T, int da, int db, int NC) {
    using namespace wbchunk;
    constexpr int PER = C * BS / THREADS;           // tile elements each thread loads per chunk
    __shared__ float As[C][BS + 1];
    __shared__ float Bs[C][BS + 1];
    const int tid = threadIdx.x, n = blockIdx.z;
    const int a0 = blockIdx.y * BS, b0 = blockIdx.x * BS;
    const int ar = tid / 8, bc = tid % 8;
    const float* bn = b + (long)n * NC * C;
    float S[4] = {0.f, 0.f, 0.f, 0.f};
    float pa[PER], pb[PER];

    auto load = [&](int c) {                        // chunk c's tiles -> registers (weighted A rows)
        const int t0 = c * C;
        const float blast = DECAY ? bn[t0 + C - 1] : 0.f;
#pragma unroll
        for (int e = 0; e < PER; ++e) {
            const int idx = tid + e * THREADS, i = idx / BS, j = idx % BS;
            const bool okt = t0 + i < T;
            const long row = (long)n * T + t0 + i;
            float w = 1.f;
            if (DECAY) w = REV ? __expf(bn[t0 + i]) : __expf(blast - bn[t0 + i]);
            pa[e] = (okt && a0 + j < da) ? w * to_f32(A[row * da + a0 + j]) : 0.f;
            pb[e] = (okt && b0 + j < db) ? to_f32(B[row * db + b0 + j]) : 0.f;
        }
    };
    auto store_state = [&](int slot) {
        float* Hs = H + ((long)n * (NC + 1) + slot) * da * db;
        const int a = a0 + ar;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int bb = b0 + bc + 8 * j;
            if (a < da && bb < db) Hs[(long)a * db + bb] = S[j];
        }
    };

    load(REV ? NC - 1 : 0);
    for (int step = 0; step < NC; ++step) {
        const int c = REV ? NC - 1 - step : step;
        store_state(REV ? c + 1 : c);
#pragma unroll
        for (int e = 0; e < PER; ++e) {
            const int idx = tid + e * THREADS;
            As[idx / BS][idx % BS] = pa[e];
            Bs[idx / BS][idx % BS] = pb[e];
        }
        __syncthreads();
        if (step + 1 < NC) load(REV ? c - 1 : c + 1);   // overlaps with the fold below
        if (DECAY) {
            const float carry = __expf(b[(long)n * NC * C + c * C + C - 1]);
#pragma unroll
            for (int j = 0; j < 4; ++j) S[j] *= carry;
        }
#pragma unroll 8
        for (int i = 0; i < C; ++i) {
            const float av = As[i][ar];
#pragma unroll
            for (int j = 0; j < 4; ++j) S[j] += av * Bs[i][bc + 8 * j];
        }
        __syncthreads();
    }
    store_state(REV ? 0 : NC);
}

// ------------------------------------------------------------------------------------------------
// state_combine: the segmented form of chunk_state.  With T = NC C and NC = NSEG L, the host runs
// chunk_state on the inputs viewed as (N NSEG, L C, d) -- every segment of L chunks its own sequence,
// all in parallel -- giving Hs: (N, NSEG, L+1, E) segment-local prefix (REV: suffix) states, E = da db.
// This kernel adds what the earlier (REV: later) segments carry in, one thread per (n, state element),
// walking the chunks in order:
//   forward  H[sL+j] = Hs[s][j] + D(sL .. sL+j-1) carry,   carry <- Hs[s][L] + D(segment) carry
//   REV      H[sL+j] = Hs[s][j] + D(sL+j .. sL+L-1) carry, carry <- H[sL]      (H[NC] = 0)
// with D(range) = prod over the chunks c in range of e^{b_last(c)} (1 without decay).  Grid
// (ceil(E/256), N), block 256; reads Hs once and writes H once (coalesced over the state elements).
template <bool DECAY, bool REV>
__global__ void __launch_bounds__(256) state_combine(const float* __restrict__ Hs, const float* __restrict__ b,
                                                     float* __restrict__ H, int NC, int L, int C, int E) {
    const int e = blockIdx.x * 256 + threadIdx.x, n = blockIdx.y;
    if (e >= E) return;
    const int NSEG = NC / L;
    const float* bn = b + (long)n * NC * C;
    const float* hs0 = Hs + (long)n * NSEG * (L + 1) * E + e;
    float* hn = H + (long)n * (NC + 1) * E + e;
    float carry = 0.f;
    if (!REV) {
        for (int s = 0; s < NSEG; ++s) {
            const float* hs = hs0 + (long)s * (L + 1) * E;
            float dec = 1.f;
            for (int j = 0; j < L; ++j) {
                const int c = s * L + j;
                hn[(long)c * E] = hs[(long)j * E] + dec * carry;
                if (DECAY) dec *= __expf(bn[(long)c * C + C - 1]);
            }
            carry = hs[(long)L * E] + dec * carry;
        }
        hn[(long)NC * E] = carry;
    } else {
        hn[(long)NC * E] = 0.f;
        for (int s = NSEG - 1; s >= 0; --s) {
            const float* hs = hs0 + (long)s * (L + 1) * E;
            float dec = 1.f;
            for (int j = L - 1; j >= 0; --j) {
                const int c = s * L + j;
                if (DECAY) dec *= __expf(bn[(long)c * C + C - 1]);
                hn[(long)c * E] = hs[(long)j * E] + dec * carry;
            }
            carry = hs[0] + dec * carry;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// chunk_out: grid (NC, N, ceil(dz/BV)), block 256, dynamic shared memory out_smem_floats(DXP, C).
// One block computes the (C x BV) output tile of one chunk: (1) the masked, decayed C x C block
// A = scale * D o (X_c Y_c^T) in shared memory (CAUSAL only: without a mask the chunk is inside the
// total state); (2) out = A Z_c + scale * w_r * X_c H[slot].  Thread (tx, ty) owns rows ty + 16 i and
// columns tx + 16 j (strided so that shared reads are broadcasts or conflict-free).
//   DXP: dx padded up (32, 64, 128, 256); loads past dx, dz or T read zeros.
template <typename TI, int DXP, int C, bool DECAY, bool CAUSAL, bool REV>
__global__ void __launch_bounds__(256) chunk_out(const TI* __restrict__ X, const TI* __restrict__ Y,
                                                 const TI* __restrict__ Z, const float* __restrict__ b,
                                                 const float* __restrict__ H, float* __restrict__ out,
                                                 int T, int dx, int dz, int NC, int slot_off,
                                                 long long hs_x, long long hs_z, float scale) {
    using namespace wbchunk;
    static_assert(C % 16 == 0 && DXP % 16 == 0, "tiles are multiples of 16");
    constexpr int LX = DXP + 1, LZ = BV + 1, LA = C + 1, TM = C / 16, TN = BV / 16;
    extern __shared__ float smem[];
    float* Xs = smem;
    float* Ys = Xs + C * LX;                          // Y tile, later the H tile [DXP][LZ]
    float* As = Ys + cmax(C * LX, DXP * LZ);
    float* Zs = As + C * LA;
    float* bs = Zs + C * LZ;
    const int c = blockIdx.x, n = blockIdx.y, z0 = blockIdx.z * BV;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int t0 = c * C;
    const long row0 = (long)n * T + t0;

    for (int idx = tid; idx < C * DXP; idx += THREADS) {
        const int r = idx / DXP, d = idx % DXP;
        const bool ok = t0 + r < T && d < dx;
        Xs[r * LX + d] = ok ? to_f32(X[(row0 + r) * dx + d]) : 0.f;
        if (CAUSAL) Ys[r * LX + d] = ok ? to_f32(Y[(row0 + r) * dx + d]) : 0.f;
    }
    for (int idx = tid; idx < C * BV; idx += THREADS) {
        const int r = idx / BV, z = idx % BV;
        Zs[r * LZ + z] = (CAUSAL && t0 + r < T && z0 + z < dz) ? to_f32(Z[(row0 + r) * dz + z0 + z]) : 0.f;
    }
    if (tid < C) bs[tid] = DECAY ? b[(long)n * NC * C + t0 + tid] : 0.f;
    __syncthreads();

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    if (CAUSAL) {                                      // (1) A = scale * D o (X Y^T), masked
        float s1[1][TM][TM];
        float (&s)[TM][TM] = s1[0];
        rt_zero(s1);
        rt_mm<1, TM, TM, DXP, LX, LX, 1, 4>(s1, {Xs}, {Ys}, ty, tx);     // X Y^T
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TM; ++j) {
                const int r = ty + 16 * i, cc = tx + 16 * j;
                const bool vis = REV ? (cc >= r) : (cc <= r);
                float w = scale;                       // exponent <= 0 wherever vis
                if (DECAY && vis) w *= __expf(REV ? bs[cc] - bs[r] : bs[r] - bs[cc]);
                As[r * LA + cc] = vis ? w * s[i][j] : 0.f;   // select, never 0 * inf
            }
    }
    __syncthreads();                                   // Ys is free: load the state tile into it
    {
        const float* Hn = H + ((long)n * (NC + 1) + (CAUSAL ? c + slot_off : slot_off)) * (long)dx * dz;
        float* Hs = Ys;
        if (hs_x == 1) {                               // H^T stored: d is the contiguous index
            for (int idx = tid; idx < DXP * BV; idx += THREADS) {
                const int z = idx / DXP, d = idx % DXP;
                Hs[d * LZ + z] = (d < dx && z0 + z < dz) ? Hn[d + (z0 + z) * hs_z] : 0.f;
            }
        } else {
            for (int idx = tid; idx < DXP * BV; idx += THREADS) {
                const int d = idx / BV, z = idx % BV;
                Hs[d * LZ + z] = (d < dx && z0 + z < dz) ? Hn[d * hs_x + (z0 + z) * hs_z] : 0.f;
            }
        }
    }
    __syncthreads();
    if (CAUSAL) {                                      // (2a) A Z
#pragma unroll 4
        for (int i = 0; i < C; ++i) {
            float a[TM], zv[TN];
#pragma unroll
            for (int m = 0; m < TM; ++m) a[m] = As[(ty + 16 * m) * LA + i];
#pragma unroll
            for (int j = 0; j < TN; ++j) zv[j] = Zs[i * LZ + tx + 16 * j];
#pragma unroll
            for (int m = 0; m < TM; ++m) {
                const int r = ty + 16 * m;             // skip masked pairs: 0 * NaN would leak a NaN
                if (REV ? i < r : i > r) continue;     // from a later (earlier) row into this one
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[m][j] += a[m] * zv[j];
            }
        }
    }
    float inter1[1][TM][TN];                           // (2b) X H
    float (&inter)[TM][TN] = inter1[0];
    rt_zero(inter1);
    rt_mm<1, TM, TN, DXP, LX, 1, LZ, 4>(inter1, {Xs}, {Ys}, ty, tx);
    const float blast = bs[C - 1];
#pragma unroll
    for (int m = 0; m < TM; ++m) {
        const int r = ty + 16 * m;
        if (t0 + r >= T) continue;
        float w = scale;
        if (DECAY) w *= __expf(REV ? blast - bs[r] : bs[r]);
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int z = z0 + tx + 16 * j;
            if (z < dz) out[(row0 + r) * dz + z] = acc[m][j] + w * inter[m][j];
        }
    }
}

// ------------------------------------------------------------------------------------------------
// naive_out: the plain version of (*).  One thread per output row r (grid (ceil(T/128), N), block 128),
// accumulating all dz <= 256 columns in a local array; g: (N, T) per-token log decays, the decay r <-> c
// is exp of sum_{l = min+1 .. max} g_l, accumulated while walking away from r.  O(T^2 (dx + dz)).
template <typename TI, bool DECAY, bool CAUSAL, bool REV>
__global__ void __launch_bounds__(128) naive_out(const TI* __restrict__ X, const TI* __restrict__ Y,
                                                 const TI* __restrict__ Z, const float* __restrict__ g,
                                                 float* __restrict__ out, int T, int dx, int dz, float scale) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x, n = blockIdx.y;
    if (r >= T) return;
    float acc[256];
    for (int j = 0; j < dz; ++j) acc[j] = 0.f;
    const TI* x = X + ((long)n * T + r) * dx;
    // visit c = r, r-1, ..., 0 (causal), r, r+1, ..., T-1 (REV) or 0..T-1 (not causal)
    const int count = CAUSAL ? (REV ? T - r : r + 1) : T;
    float cum = 0.f;                                   // sum of the log decays between r and c
    for (int it = 0; it < count; ++it) {
        const int c = !CAUSAL ? it : (REV ? r + it : r - it);
        if (DECAY && it > 0) cum += REV ? g[(long)n * T + c] : g[(long)n * T + c + 1];
        const TI* y = Y + ((long)n * T + c) * dx;
        float dot = 0.f;
        for (int d = 0; d < dx; ++d) dot += to_f32(x[d]) * to_f32(y[d]);
        const float w = scale * (DECAY ? __expf(cum) : 1.f) * dot;
        const TI* zr = Z + ((long)n * T + c) * dz;
        for (int j = 0; j < dz; ++j) acc[j] += w * to_f32(zr[j]);
    }
    for (int j = 0; j < dz; ++j) out[((long)n * T + r) * dz + j] = acc[j];
}
