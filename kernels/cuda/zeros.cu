// zeros.cu -- ZeroS attention: the per-position scalar work around the chunk cores.
//
// Two families live here:
//   * zeros_scan_fwd / zeros_scan_bwd (below, first): the serial scans of the CUDA-core variants
//     (cupy:naive, cupy:chunked, cupy:chunked_seg), kept as the measured rung; one thread per head walks T.
//   * zeros_f* / zeros_b* / zeros_combine (after them, namespace zs): the parallel scans and the row work of
//     the tensor-core variant cupy:chunked_mma (kernels/cuda/chunked_mma.cu is its core).  No loop over T
//     anywhere: chunk partials, a scan over the chunks, a per-token fix-up.  The derivation is in the header
//     of that section and in docs/kernels/zeros.md.
//   * zeros_fused_bscalar / zeros_fused_bds (last): the scalar backward of cupy:chunked_mma_fused, whose
//     tensor-core kernels (tz_*) are at the end of chunked_mma.cu; the forward scans above serve it too
//     (zeros_ftoken without stream values).  For few chunks the scans over chunks run inside the per-chunk
//     blocks (zeros_ftoken alone; zeros_fused_bscalar_ds): fewer launches for small T.
//
// ------------------------------------------------------------------------------------------ CUDA-core rung
// With m_t the running max of s (the global max when not causal), E_t = sum_{j in W(t)} e^{s_j - m_t},
// P_t = sum_{j in W(t)} s_j and alpha = sigh / E, beta = (sig1 - sigh) / n, gamma = (tz - sigh - beta P) / n,
//   o_t = alpha_t oF_t + beta_t oG_t + gamma_t oH_t,
//   oF_t = sum_{i in W(t)} e^{s_i - m_t} (q_t.k_i) v_i       (state F, relative to the running max)
//   oG_t = sum s_i (q_t.k_i) v_i,  oH_t = sum (q_t.k_i) v_i (states G, H)
// oF is the chunked core (chunked.cuh) with values e^{s_i - m_i} v_i and log decays L_t = -m_t (every
// exponent m_i - m_t <= 0; within a chunk b_t = m_ref - m_t, m_ref the max before the chunk); oG and oH
// are one undecayed core call with values [s_i v_i, v_i].  kernels/cupy/zeros.py glues them.
//
// zeros_scan_fwd: per head, m, E, P, the coefficients (alpha, beta, gamma), u_t = e^{s_t - m_t}, the
//   chunk-local log decays bF (N, NC*C, padded) and the per-token ones gF (N, T) of the naive core.
// zeros_scan_bwd: with a_t = do_t.oF_t, V_t = do_t.oG_t, Z_t = do_t.oH_t (row dots, U = a / E):
//   dgates = (dsig1 sig1(1-sig1), dsigh sigh(1-sigh), Z/n (1-tz^2)), dsig1 = V/n - P Z/n^2,
//   dsigh = U - dsig1 - Z/n;  the scalar part of ds (through E and P; the rest comes through the values):
//   ds_j = -e^{s_j - m_j} R_j - Q_j,  R_j = sum_{t >= j} alpha_t U_t e^{m_j - m_t},  Q_j = sum_{t>=j} beta Z/n
//   (not causal: sums over all t, relative to the global max).
// One thread per head walks T sequentially (the plain scan; O(T) per head).
#include "chunked.cuh"

__device__ __forceinline__ float wb_sigmoid(float x) { return 0.5f * (1.f + tanhf(0.5f * x)); }

template <typename TI, bool CAUSAL>
__global__ void zeros_scan_fwd(const TI* __restrict__ s, const TI* __restrict__ gates, int ng, int N, int T,
                               int C, int NC, float* __restrict__ m, float* __restrict__ E,
                               float* __restrict__ P, float* __restrict__ coef, float* __restrict__ u,
                               float* __restrict__ bF, float* __restrict__ gF) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const long base = (long)n * T;
    float M = -WB_INF, Es = 0.f, Ps = 0.f;
    if (!CAUSAL) {                                     // totals first
        for (int t = 0; t < T; ++t) M = fmaxf(M, to_f32(s[base + t]));
        for (int t = 0; t < T; ++t) {
            const float st = to_f32(s[base + t]);
            Es += __expf(st - M);
            Ps += st;
        }
    }
    float mprev = -WB_INF, ref = 0.f;
    for (int t = 0; t < T; ++t) {
        const float st = to_f32(s[base + t]);
        float mt, n_t;
        if (CAUSAL) {
            mt = t == 0 ? st : fmaxf(mprev, st);
            Es = (t == 0 ? 0.f : Es * __expf(mprev - mt)) + __expf(st - mt);
            Ps += st;
            n_t = (float)(t + 1);
            if (t % C == 0) ref = t == 0 ? mt : mprev;
            bF[(long)n * NC * C + t] = ref - mt;
            gF[base + t] = t == 0 ? 0.f : mprev - mt;
        } else {
            mt = M;
            n_t = (float)T;
            bF[(long)n * NC * C + t] = 0.f;
            gF[base + t] = 0.f;
        }
        const TI* gt = gates + (base + t) * ng;
        const float sig1 = wb_sigmoid(to_f32(gt[0])), sigh = wb_sigmoid(to_f32(gt[1]));
        const float tz = ng == 3 ? tanhf(to_f32(gt[2])) : 0.f;
        const float beta = (sig1 - sigh) / n_t;
        m[base + t] = mt;
        E[base + t] = Es;
        P[base + t] = Ps;
        coef[(base + t) * 3 + 0] = sigh / Es;
        coef[(base + t) * 3 + 1] = beta;
        coef[(base + t) * 3 + 2] = (tz - sigh - beta * Ps) / n_t;
        u[base + t] = __expf(st - mt);
        mprev = mt;
    }
    const float blast = bF[(long)n * NC * C + T - 1];
    for (int t = T; t < NC * C; ++t) bF[(long)n * NC * C + t] = blast;
}

template <typename TI, bool CAUSAL>
__global__ void zeros_scan_bwd(const TI* __restrict__ s, const TI* __restrict__ gates, int ng, int N, int T,
                               const float* __restrict__ m, const float* __restrict__ E,
                               const float* __restrict__ P, const float* __restrict__ a,
                               const float* __restrict__ V, const float* __restrict__ Z,
                               float* __restrict__ ds, float* __restrict__ dgates) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const long base = (long)n * T;
    float R = 0.f, Q = 0.f, mnext = 0.f;
    for (int t = T - 1; t >= 0; --t) {                 // reverse: gates, then the suffix sums R, Q
        const TI* gt = gates + (base + t) * ng;
        const float sig1 = wb_sigmoid(to_f32(gt[0])), sigh = wb_sigmoid(to_f32(gt[1]));
        const float n_t = CAUSAL ? (float)(t + 1) : (float)T;
        const float Et = E[base + t], Pt = P[base + t], Zt = Z[base + t];
        const float U = a[base + t] / Et;
        const float dsig1 = V[base + t] / n_t - Pt * Zt / (n_t * n_t);
        const float dsigh = U - dsig1 - Zt / n_t;
        float* dg = dgates + (base + t) * ng;
        dg[0] = dsig1 * sig1 * (1.f - sig1);
        dg[1] = dsigh * sigh * (1.f - sigh);
        if (ng == 3) {
            const float tz = tanhf(to_f32(gt[2]));
            dg[2] = Zt / n_t * (1.f - tz * tz);
        }
        const float mt = m[base + t];
        const float x = sigh / Et * U, y = (sig1 - sigh) / n_t * Zt / n_t;
        if (CAUSAL) {
            R = x + (t == T - 1 ? 0.f : __expf(mt - mnext) * R);
            Q += y;
            ds[base + t] = -__expf(to_f32(s[base + t]) - mt) * R - Q;
        } else {
            R += x;
            Q += y;
        }
        mnext = mt;
    }
    if (!CAUSAL)
        for (int t = 0; t < T; ++t) ds[base + t] = -__expf(to_f32(s[base + t]) - m[base + t]) * R - Q;
}

// ================================================================================================
// Parallel scans and row work of cupy:chunked_mma (the tensor-core core: kernels/cuda/chunked_mma.cu)
// ================================================================================================
// Forward statistics.  Per head, with n_t = t + 1 (causal) or T, the window W(t) = {j <= t} (or all j):
//   m_t = max_{j in W(t)} s_j,  E_t = sum_{j in W(t)} e^{s_j - m_t},  P_t = sum_{j in W(t)} s_j,
// are the prefix "sums" of the token triples (s_j, 1, s_j) under the associative, commutative combine
//   (M1, E1, P1) + (M2, E2, P2) = (M, E1 e^{M1 - M} + E2 e^{M2 - M}, P1 + P2),   M = fmaxf(M1, M2)
// (every exponent <= 0, identity (-inf, 0, 0)).  So, over chunks of C = 64 tokens:
//   zeros_fchunk   one warp per chunk: the chunk's triple (a warp reduction), its min and max of s;
//   zeros_fscan    one block per head: the exclusive scan of the chunk triples (the carry into each chunk;
//                  not causal: the head's total), the head's shift c = (min s + max s) / 2 and scale
//                  sigma = the least power of two >= max(1, max |s - c|);
//   zeros_ftoken   one block per chunk: warp 0 scans the chunk's tokens (two per lane, a shuffle scan)
//                  seeded by the carry, and writes per token m, E, P' = sum (s - c) = P - n c (in float64),
//                  alpha = sigh/E, beta = (sig1-sigh)/n, gamma = (tz - sigh - beta P')/n, u = e^{s - m} and
//                  gF_t = m_{t-1} - m_t (0 at t = 0 and when not causal); then all four warps form the values
//                      vF = u v,   vG = ((s - c) / sigma) v,   vH = v   (vH only when G and H share one call).
// ZeroS is invariant to s -> s + c (the first-order weights are s_i/n - P/n^2, the softmax is shift-free),
// so the first-order path runs on s - c: without it a common offset of s cancels between beta oG and
// gamma oH and multiplies the rounding of the 16-bit stream outputs by |offset|.  c, like m, is held fixed
// in the backward (o does not depend on it), which is exact.
// fmaxf drops a NaN from the max but the NaN reaches E (e^{NaN}) and P, so exactly the rows whose window
// holds it become NaN; s of +-1e3 stays exact because every exponential is of a difference <= 0; ties give
// e^0 = 1 (rescale skips the exp when the maxima are equal).
//
// The streams (core = kernels/cuda/chunked_mma.cu, o' = scale q^T S with S_t = e^{g_t} S_{t-1} + k_t v_t^T):
//   oF' = core(q, k, vF; g = gF, scale = s_o)  = s_o sum_{i<=t} e^{s_i - m_t} (q_t.k_i) v_i   (e^{m_i - m_t} <= 1)
//   [oG', oH'] = core(q, k, [vG, vH]; no decay, scale = s_o) = s_o [sum (s_i - c)(q.k_i) v_i / sigma, sum (q.k_i) v_i]
//   zeros_combine:  o = (alpha / s_o) oF' + (beta sigma / s_o) oG' + (gamma / s_o) oH'.
// s_o = 2^-max(0, ceil(log2 T) - 8) (host) and sigma (per head) are powers of two, so they cost no precision
// in any format; they keep the stored 16-bit stream outputs (sums over up to T tokens) and the s-weighted
// values inside the float16 range.
//
// Backward (s below is s - c throughout).  With a = do.oF, V = do.oG, Z = do.oH (true, unscaled row dots),
// U = a / E:
//   zeros_bchunk   one block per chunk: the row dots, the streams' output gradients
//                      dOF = (alpha / s_o) do,  dOG = beta / (4 s_o) do,  dOH = gamma / (4 sigma s_o) do
//                  (the core's gradients come back exact for F and divided by 4 sigma for G and H, which
//                  keeps dO and the 16-bit gradients in range: |alpha| <= 1, |beta| <= 1, |gamma| <= 2 + sigma),
//                  dgates (dsig1 = V/n - P Z/n^2, dsigh = U - dsig1 - Z/n, dtz = Z/n), x = alpha U, y = beta Z/n,
//                  and the chunk partials below;
//   zeros_bscan    one block per head: the reverse scan over chunks;
//   zeros_bfinish  one block per chunk: warp 0 scans the chunk's tokens backwards seeded by the carry, then
//                  all warps assemble dq = dqF + 4 sigma dqGH, dk likewise, dv = u dvF + 4 s dvG + 4 sigma dvH,
//                      ds_j = -u_j R_j - Q_j + u_j (v_j.dvF_j) + 4 (v_j.dvG_j).
// The scalar part of ds (through E and P; the value path is the last two terms) needs, causally,
//   R_j = sum_{t >= j} x_t e^{m_j - m_t}   (= x_j + e^{m_j - m_{j+1}} R_{j+1}),   Q_j = sum_{t >= j} y_t.
// R is a max-rescaled suffix sum: a pair (mu, R) means R relative to e^{mu}, mu = m at the range's first
// token; for a range A followed by B,  A + B = (mu_A, R_A + R_B e^{mu_A - mu_B})  (mu_A <= mu_B since m
// never decreases; associative, not commutative).  Per chunk: the partial (m_first, sum x_t e^{m_first - m_t},
// sum y); a reverse exclusive scan over chunks gives the carry (R and Q at the next chunk's first token);
// the fix-up scans inside the chunk.  Not causal: R and Q are the head's plain totals (m is constant).
// The running max is held fixed throughout: o does not depend on it, so the gradient is exact.  The core
// also returns d gF (F is a decayed call); it is discarded for the same reason.
//
// Packed sequences and states.  With cu_seqlens (tseq: the sequence of each token) both scans are segmented:
// a forward element carries a flag "starts a sequence" and (a, b) -> b when b has it; a backward element a flag
// "ends a sequence" and (a, b) -> a when a has it (still associative, so chunk partials, the scan over chunks
// and the in-chunk fix-up stay as they are; chunks may hold several sequences).  An initial state's scalars
// (m0, E0, P0, n0 per sequence: st0) are joined to the first token's element, n_t = n0 + the position in the
// sequence (row ST_N), and gF at the first token is m0 - m_t, which decays the initial F0 handed to the F
// stream's core call (G0 and H0 go to the G and H calls as (G0 - c H0) / sigma and H0); zeros_ftoken writes
// each sequence's final m, E, P, n (the final F, G, H come from the core calls).  Backward: the final
// state's gradient seeds each sequence's last element (R -= dE, Q -= dP: E_b and P_b are sums over the
// sequence like the rows' E_t, P_t), zeros_bfinish adds the final max's gradient mu = dm - E_b dE - <F_b, dF>
// to ds of the token that first reached it and writes dE0 = -R e^{m0 - m_first}, dP0 = -Q at each sequence's
// first token; zeros_bchunk writes dn_t (summed per sequence on the host: dn0).  Not causal and packed:
// a causal statistics pass gives each sequence's totals, which the per-token pass reads (and the host sums
// x, y per sequence for the backward).
//
// Layouts: per-token statistics st (NST, N, T) float32 (rows ST_*); per head (NHEAD, N) float32 (sigma, c);
// per-chunk arrays (N, NC); stream arrays (N, T, width) row-major with a leading dimension ld (G and H may
// share one array: vH = vG + Dv).
namespace zs {
constexpr int C = 64;              // tokens per scan chunk: one warp, two per lane
constexpr int WARPS = 4;           // warps per block of the per-chunk kernels (16 rows each in the row phase)
constexpr int SCAN = 256;          // threads per block of the scans over chunks (one block per head)
constexpr int CPL = 4;             // head-dim columns per lane in the row loops (head dims <= 128)
constexpr unsigned FULL = 0xffffffffu;
enum { ST_M, ST_E, ST_P, ST_ALPHA, ST_BETA, ST_GAMMA, ST_U, ST_GF, ST_N, NST };   // rows of st (NST, N, T)
enum { HEAD_SIGMA, HEAD_SHIFT, NHEAD };                                    // rows of head (NHEAD, N)

// x e^{from - to} (to >= from), exactly x when the two are equal, and 0 for x == 0 even when from or to
// is -inf (the empty element); NaN x stays NaN.
__device__ __forceinline__ float rescale(float x, float from, float to) {
    return (x == 0.f || from == to) ? x : x * __expf(from - to);
}

// (max, sum e^{s - M}, sum s) and r: the element starts a sequence (what precedes it does not count).  The
// combine below is the segmented one: (a, b) -> b when b starts a sequence, else the sum (flag of a); still
// associative (not commutative), identity fwd_empty().
struct Fwd { float M, E; double P; int r; };
__device__ __forceinline__ Fwd fwd_empty() { return {-WB_INF, 0.f, 0.0, 0}; }
__device__ __forceinline__ Fwd fwd_token(float s) { return {s, 1.f, (double)s, 0}; }
__device__ __forceinline__ Fwd operator+(const Fwd& a, const Fwd& b) {
    if (b.r) return b;
    const float M = fmaxf(a.M, b.M);
    return {M, rescale(a.E, a.M, M) + rescale(b.E, b.M, M), a.P + b.P, a.r};
}
__device__ __forceinline__ Fwd shfl_up(const Fwd& a, int o) {
    return {__shfl_up_sync(FULL, a.M, o), __shfl_up_sync(FULL, a.E, o), __shfl_up_sync(FULL, a.P, o),
            __shfl_up_sync(FULL, a.r, o)};
}
__device__ __forceinline__ Fwd shfl_down(const Fwd& a, int o) {
    return {__shfl_down_sync(FULL, a.M, o), __shfl_down_sync(FULL, a.E, o), __shfl_down_sync(FULL, a.P, o),
            __shfl_down_sync(FULL, a.r, o)};
}

// (mu, R, Q): R relative to e^{mu}; r: the element ends a sequence (what follows it does not count): the
// segmented combine (a, b) -> a when a ends a sequence, else the sum (flag of b).  Empty = (0, 0, 0, 0),
// which may only stand on the right of a "+" (every caller keeps empties after the non-empty elements:
// tokens past T, chunks past NC).
struct Bwd { float mu, R; double Q; int r; };
__device__ __forceinline__ Bwd bwd_empty() { return {0.f, 0.f, 0.0, 0}; }
__device__ __forceinline__ Bwd operator+(const Bwd& a, const Bwd& b) {
    if (a.r) return a;
    return {a.mu, a.R + rescale(b.R, a.mu, b.mu), a.Q + b.Q, b.r};
}
__device__ __forceinline__ Bwd shfl_down(const Bwd& a, int o) {
    return {__shfl_down_sync(FULL, a.mu, o), __shfl_down_sync(FULL, a.R, o), __shfl_down_sync(FULL, a.Q, o),
            __shfl_down_sync(FULL, a.r, o)};
}

// Packed sequences and initial states (both optional), as every token kernel takes them: tseq (T,) the
// sequence of each token and cu (nseq + 1,) the offsets (tseq == nullptr: one sequence [0, T)); st0 the
// initial state's scalars, rows (S0_*, N, nseq) float32 (nullptr: none).
enum { S0_M, S0_E, S0_P, S0_N, NS0 };
struct Seqs {
    const int* tseq;
    const int* cu;
    int nseq;
    const float* st0;
};
struct Span { int j, a, b; long long at; };               // token's sequence, its range [a, b), n nseq + j
__device__ __forceinline__ Span span_of(const Seqs& q, int n, int t, int T) {
    if (!q.tseq) return {0, 0, T, (long long)n * q.nseq};
    const int j = q.tseq[t];
    return {j, q.cu[j], q.cu[j + 1], (long long)n * q.nseq + j};
}
// row r of the initial state's scalars of a token's sequence (N heads)
__device__ __forceinline__ float st0_at(const Seqs& q, const Span& sp, int r, int N) {
    return q.st0[(long long)r * N * q.nseq + sp.at];
}
// The token's element of the forward scan: (s, 1, s), joined to the initial state and flagged at a start.
__device__ __forceinline__ Fwd fwd_element(const Seqs& q, const Span& sp, int t, float s, int N) {
    Fwd e = fwd_token(s);
    if (t != sp.a) return e;
    if (q.st0) e = Fwd{st0_at(q, sp, S0_M, N), st0_at(q, sp, S0_E, N), (double)st0_at(q, sp, S0_P, N), 0} + e;
    e.r = 1;
    return e;
}
// m before the token: the previous token's running max, or the initial state's at a sequence start
__device__ __forceinline__ float m_before(const Seqs& q, const Span& sp, int t, int N, float prev) {
    return t != sp.a ? prev : (q.st0 ? st0_at(q, sp, S0_M, N) : -WB_INF);
}

__device__ __forceinline__ double warp_sum_d(double x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(FULL, x, o);
    return x;
}

// the least power of two >= a for a >= 1 (2^126 for larger or non-finite a)
__device__ __forceinline__ float pow2_at_least(float a) {
    if (!(a < 0x1p126f)) return 0x1p126f;
    const unsigned b = __float_as_uint(a);
    const int e = (int)((b >> 23) & 0xff) - 127 + ((b & 0x7fffffu) ? 1 : 0);
    return __uint_as_float((unsigned)(127 + e) << 23);
}

// sigmoid and tanh through __expf (about 1e-6 relative; tanhf under --use_fast_math is tanh.approx.f32,
// about 2^-11): the gates scale every output row, so float32 needs them to float32 accuracy.  Saturates
// to 0 / 1 and -1 / 1 for large |x| (e^x = inf gives 1 / inf = 0).
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }
__device__ __forceinline__ float tanh_exp(float x) { return 1.f - 2.f / (1.f + __expf(2.f * x)); }
// 1 - tanh(x)^2 = 4 e^{-2|x|} / (1 + e^{-2|x|})^2, without the cancellation of 1 - tz * tz for large |x|
__device__ __forceinline__ float dtanh_exp(float x) {
    const float e = __expf(-2.f * fabsf(x)), d = 1.f + e;
    return 4.f * e / (d * d);
}
// sigmoid(x) (1 - sigmoid(x)) = e^{-|x|} / (1 + e^{-|x|})^2, likewise
__device__ __forceinline__ float dsigmoid(float x) {
    const float e = __expf(-fabsf(x)), d = 1.f + e;
    return e / (d * d);
}

// The block of the per-chunk kernels: grid (NC, N), 4 warps; chunk c of head n, rows cs.. of it.
struct Block {
    int c, n, cs, lane, w;
    long long base, NT;        // n T, N T (row offsets into (N, T) and (rows, N, T) arrays)
};
__device__ __forceinline__ Block block_of(int T) {
    return {(int)blockIdx.x, (int)blockIdx.y, (int)blockIdx.x * C, (int)threadIdx.x & 31, (int)threadIdx.x >> 5,
            (long long)blockIdx.y * T, (long long)gridDim.y * T};
}
// f(r, row) for the rows r in [16w, 16w + 16) of the chunk that exist (row = base + cs + r)
template <typename F>
__device__ __forceinline__ void warp_rows(const Block& b, int T, F f) {
    for (int r = 16 * b.w; r < 16 * b.w + 16 && b.cs + r < T; ++r) f(r, b.base + b.cs + r);
}

struct Gates { float sig1, sigh, tz; };
template <typename TI>
__device__ __forceinline__ Gates gates_at(const TI* __restrict__ gates, long long row, int ng) {
    const TI* g = gates + row * ng;
    return {sigmoid(to_f32(g[0])), sigmoid(to_f32(g[1])), ng == 3 ? tanh_exp(to_f32(g[2])) : 0.f};
}
}  // namespace zs

// ---------------------------------------------------------------------------------------- forward scans
namespace zs {
// Warp reduction of chunk c of head n: its triple (lane 0 holds it; in token order: the combine is segmented)
// and the min and max of s (NaN ignored; every lane holds them).
template <typename TI>
__device__ __forceinline__ Fwd chunk_triple(const TI* __restrict__ s, int T, int c, int n, int N, const Seqs& sq,
        float& lo, float& hi) {
    const int lane = threadIdx.x & 31;
    const long long base = (long long)n * T;
    Fwd acc = fwd_empty();
    lo = WB_INF;
    hi = -WB_INF;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int t = c * C + 2 * lane + h;
        if (t < T) {
            const float x = to_f32(s[base + t]);
            acc = acc + fwd_element(sq, span_of(sq, n, t, T), t, x, N);
            lo = fminf(lo, x);
            hi = fmaxf(hi, x);
        }
    }
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {                             // lane 0 ends with the chunk, in order
        const Fwd y = shfl_down(acc, o);
        if (lane + o < 32) acc = acc + y;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(FULL, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(FULL, hi, o));
    }
    return acc;
}

// The head's shift c = (min s + max s) / 2 (0 without finite s, or for both infinities) and scale sigma.
__device__ __forceinline__ void head_values(float lo, float hi, float& sigma, float& shift) {
    float c = 0.5f * (lo + hi);
    if (!(fabsf(c) < WB_INF)) c = 0.f;
    sigma = pow2_at_least(fmaxf(1.f, fmaxf(hi - c, c - lo)));
    shift = c;
}

// zeros_fchunk + zeros_fscan inside one block of zeros_ftoken (its x* == nullptr: the host's choice for few
// chunks, IN_BLOCK_SCAN_MAX_CHUNKS in kernels/cupy/zeros.py): warp w reduces a contiguous run of the head's
// chunks, in token order, into part[w] (the chunks before c_end only) and lohi[w], lohi[WARPS + w] (every
// chunk).  Ends with a barrier; join() then gives the carry, the min and the max.
template <typename TI>
__device__ __forceinline__ void block_chunks(const TI* __restrict__ s, int T, int NC, int c_end, int n, int N,
        const Seqs& sq, Fwd* part, float* lohi) {
    const int w = threadIdx.x >> 5, per = (NC + WARPS - 1) / WARPS, c0 = min(NC, w * per), c1 = min(NC, c0 + per);
    Fwd run = fwd_empty();
    float lo = WB_INF, hi = -WB_INF;
    for (int j = c0; j < c1; ++j) {                                // warp-uniform
        float l, h;
        const Fwd x = chunk_triple(s, T, j, n, N, sq, l, h);
        if (j < c_end) run = run + x;
        lo = fminf(lo, l);
        hi = fmaxf(hi, h);
    }
    if ((threadIdx.x & 31) == 0) {
        part[w] = run;
        lohi[w] = lo;
        lohi[WARPS + w] = hi;
    }
    __syncthreads();
}
__device__ __forceinline__ Fwd join_chunks(const Fwd* part, const float* lohi, float& lo, float& hi) {
    Fwd run = fwd_empty();
    lo = WB_INF;
    hi = -WB_INF;
    for (int j = 0; j < WARPS; ++j) {
        run = run + part[j];
        lo = fminf(lo, lohi[j]);
        hi = fmaxf(hi, lohi[WARPS + j]);
    }
    run.r = 0;
    return run;
}
}  // namespace zs

// grid (ceil(NC / 4), N), block 128: warp w reduces chunk 4 blockIdx.x + w (in token order: the combine is
// segmented; cR: the chunk holds a sequence start).
template <typename TI>
__global__ void __launch_bounds__(128) zeros_fchunk(const TI* __restrict__ s, int T, int NC, const int* __restrict__ tseq,
        const int* __restrict__ cu, int nseq, const float* __restrict__ st0, float* __restrict__ cM,
        float* __restrict__ cE, double* __restrict__ cP, int* __restrict__ cR, float* __restrict__ cLo,
        float* __restrict__ cHi) {
    using namespace zs;
    const int lane = threadIdx.x & 31, c = blockIdx.x * WARPS + (threadIdx.x >> 5), n = blockIdx.y;
    if (c >= NC) return;                                           // warp-uniform
    float lo, hi;
    const Fwd acc = chunk_triple(s, T, c, n, gridDim.y, Seqs{tseq, cu, nseq, st0}, lo, hi);
    if (lane == 0) {
        const long long at = (long long)n * NC + c;
        cM[at] = acc.M;
        cE[at] = acc.E;
        cP[at] = acc.P;
        cR[at] = acc.r;
        cLo[at] = lo;
        cHi[at] = hi;
    }
}

// grid (N), block 256: thread j combines a contiguous run of chunks, a block scan joins the runs.
// CAUSAL: x[c] = the triple of all chunks before c; else x[c] = the head's total (every c).
template <bool CAUSAL>
__global__ void __launch_bounds__(256) zeros_fscan(const float* __restrict__ cM, const float* __restrict__ cE,
        const double* __restrict__ cP, const int* __restrict__ cR, const float* __restrict__ cLo,
        const float* __restrict__ cHi, int NC,
        float* __restrict__ xM, float* __restrict__ xE, double* __restrict__ xP, float* __restrict__ head) {
    using namespace zs;
    __shared__ Fwd wtot[SCAN / 32];
    __shared__ float wlo[SCAN / 32], whi[SCAN / 32];
    const int n = blockIdx.x, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int per = (NC + SCAN - 1) / SCAN, c0 = min(NC, tid * per), c1 = min(NC, c0 + per);
    const long long base = (long long)n * NC;
    auto chunk = [&](int c) { return Fwd{cM[base + c], cE[base + c], cP[base + c], cR[base + c]}; };
    Fwd agg = fwd_empty();
    float lo = WB_INF, hi = -WB_INF;
    for (int c = c0; c < c1; ++c) {
        agg = agg + chunk(c);
        lo = fminf(lo, cLo[base + c]);
        hi = fmaxf(hi, cHi[base + c]);
    }
    Fwd inc = agg;                                                 // inclusive scan over the warp's runs
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const Fwd y = shfl_up(inc, o);
        if (lane >= o) inc = y + inc;
    }
    hi = warp_max(hi);
    lo = -warp_max(-lo);
    if (lane == 31) wtot[w] = inc;
    if (lane == 0) {
        wlo[w] = lo;
        whi[w] = hi;
    }
    __syncthreads();
    if (CAUSAL) {
        Fwd ex = shfl_up(inc, 1);
        if (lane == 0) ex = fwd_empty();
        Fwd before = fwd_empty();
        for (int j = 0; j < w; ++j) before = before + wtot[j];
        ex = before + ex;
        for (int c = c0; c < c1; ++c) {
            xM[base + c] = ex.M;
            xE[base + c] = ex.E;
            xP[base + c] = ex.P;
            ex = ex + chunk(c);
        }
    } else {
        Fwd tot = fwd_empty();
        for (int j = 0; j < SCAN / 32; ++j) tot = tot + wtot[j];
        for (int c = c0; c < c1; ++c) {
            xM[base + c] = tot.M;
            xE[base + c] = tot.E;
            xP[base + c] = tot.P;
        }
    }
    if (tid == 0) {                                                // the head's shift c and scale sigma
        for (int j = 0; j < SCAN / 32; ++j) {
            lo = fminf(lo, wlo[j]);
            hi = fmaxf(hi, whi[j]);
        }
        head_values(lo, hi, head[HEAD_SIGMA * gridDim.x + n], head[HEAD_SHIFT * gridDim.x + n]);
    }
}

// grid (NC, N), block 128: chunk blockIdx.x.  Warp 0: the per-token statistics; then warp w forms the
// values of rows 16w..16w+15.  vH may be nullptr (H's values are v itself); vF nullptr: statistics only.
// The carries x*: per chunk (causal, or not causal in one sequence), per sequence when not causal and packed
// (the sequences' totals).  fin* (nullptr: not wanted): the statistics after each sequence's last token
// (N, nseq): m, E, P (float64) and the count n.
// xM == nullptr (xE, xP unused; not with packed sequences when not causal): the block scans the head's chunks
// itself (zeros.cu block_chunks: zeros_fchunk + zeros_fscan in one launch, O(NC) per block, for few chunks)
// and block 0 writes head; else head is zeros_fscan's and only read.
template <typename TI, bool CAUSAL>
__global__ void __launch_bounds__(128) zeros_ftoken(const TI* __restrict__ s, const TI* __restrict__ gates,
        const TI* __restrict__ v, int ng, int T, int Dv, int NC, const int* __restrict__ tseq,
        const int* __restrict__ cu, int nseq, const float* __restrict__ st0, const float* __restrict__ xM,
        const float* __restrict__ xE, const double* __restrict__ xP, float* __restrict__ head,
        float* __restrict__ st, TI* __restrict__ vF, TI* __restrict__ vG, int ldG, TI* __restrict__ vH, int ldH,
        float* __restrict__ finM, float* __restrict__ finE, double* __restrict__ finP, float* __restrict__ finN) {
    using namespace zs;
    __shared__ float su[C], ss[C];
    __shared__ Fwd part[WARPS];
    __shared__ float lohi[2 * WARPS];
    const Block b = block_of(T);
    const int c = b.c, n = b.n, cs = b.cs, lane = b.lane, N = gridDim.y;
    const long long base = b.base, NT = b.NT;
    const Seqs sq{tseq, cu, nseq, st0};
    const bool in_block = xM == nullptr;                           // block-uniform
    if (in_block) block_chunks(s, T, NC, CAUSAL ? c : NC, n, N, sq, part, lohi);
    if (b.w == 0) {
        float sigma, shift;
        Fwd own = fwd_empty();                                     // in_block: the carry (causal) or the total
        if (in_block) {
            float lo, hi;
            own = join_chunks(part, lohi, lo, hi);
            head_values(lo, hi, sigma, shift);
            if (c == 0 && lane == 0) {
                head[HEAD_SIGMA * N + n] = sigma;
                head[HEAD_SHIFT * N + n] = shift;
            }
        } else {
            sigma = head[HEAD_SIGMA * N + n];
            shift = head[HEAD_SHIFT * N + n];
        }
        const float isg = 1.f / sigma;                             // exact: sigma is a power of two
        float sv[2];
        Fwd e[2];
        Span sp[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int t = cs + 2 * lane + h;
            sp[h] = span_of(sq, n, min(t, T - 1), T);
            sv[h] = t < T ? to_f32(s[base + t]) : 0.f;
            e[h] = t < T ? fwd_element(sq, sp[h], t, sv[h], N) : fwd_empty();
        }
        Fwd at[2];
        float prev[2] = {0.f, 0.f};                                // m before the token (causal)
        if (CAUSAL) {
            const Fwd carry = in_block ? own
                                       : Fwd{xM[(long long)n * NC + c], xE[(long long)n * NC + c], xP[(long long)n * NC + c], 0};
            Fwd inc = e[0] + e[1];
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const Fwd y = shfl_up(inc, o);
                if (lane >= o) inc = y + inc;
            }
            Fwd ex = shfl_up(inc, 1);
            if (lane == 0) ex = fwd_empty();
            const Fwd before = carry + ex;
            at[0] = before + e[0];
            at[1] = at[0] + e[1];
            prev[0] = m_before(sq, sp[0], cs + 2 * lane, N, before.M);
            prev[1] = m_before(sq, sp[1], cs + 2 * lane + 1, N, at[0].M);
        } else {                                                   // the totals (of the head or sequence)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const long long x = tseq ? sp[h].at : (long long)n * NC + c;
                at[h] = in_block ? own : Fwd{xM[x], xE[x], xP[x], 0};
            }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int t = cs + 2 * lane + h;
            if (t >= T) continue;
            const float nt = CAUSAL ? (st0 ? st0_at(sq, sp[h], S0_N, N) : 0.f) + (float)(t - sp[h].a + 1)
                                    : (float)(sp[h].b - sp[h].a);
            const float m = at[h].M, E = at[h].E, P = (float)(at[h].P - (double)nt * shift);   // sum (s - c)
            const Gates g = gates_at(gates, base + t, ng);
            const float beta = (g.sig1 - g.sigh) / nt;
            const float u = __expf(sv[h] - m);
            const bool keep = t != sp[h].a || st0;                 // gF at a start decays the initial state
            st[ST_M * NT + base + t] = m;
            st[ST_E * NT + base + t] = E;
            st[ST_P * NT + base + t] = P;
            st[ST_ALPHA * NT + base + t] = g.sigh / E;
            st[ST_BETA * NT + base + t] = beta;
            st[ST_GAMMA * NT + base + t] = (g.tz - g.sigh - beta * P) / nt;
            st[ST_U * NT + base + t] = u;
            st[ST_GF * NT + base + t] = (CAUSAL && keep) ? prev[h] - m : 0.f;
            st[ST_N * NT + base + t] = nt;
            su[2 * lane + h] = u;
            ss[2 * lane + h] = (sv[h] - shift) * isg;
            if (CAUSAL && finM && t == sp[h].b - 1) {
                finM[sp[h].at] = m;
                finE[sp[h].at] = E;
                finP[sp[h].at] = at[h].P;
                finN[sp[h].at] = nt;
            }
        }
    }
    if (!vF) return;                                               // statistics only (uniform over the block)
    __syncthreads();
    warp_rows(b, T, [&](int r, long long row) {
        const float ur = su[r], sr = ss[r];
#pragma unroll
        for (int i = 0; i < CPL; ++i) {
            const int col = lane + 32 * i;
            if (col >= Dv) break;
            const TI x = v[row * Dv + col];
            const float xf = to_f32(x);
            vF[row * Dv + col] = from_f32<TI>(ur * xf);
            vG[row * ldG + col] = from_f32<TI>(sr * xf);
            if (vH) vH[row * ldH + col] = x;
        }
    });
}

// grid (NC, N), block 128: o = (alpha / s_o) oF' + (beta sigma / s_o) oG' + (gamma / s_o) oH' (inv_s = 1 / s_o).
template <typename TI>
__global__ void __launch_bounds__(128) zeros_combine(const float* __restrict__ st, const float* __restrict__ head,
        const TI* __restrict__ oF, const TI* __restrict__ oG, int ldG, const TI* __restrict__ oH, int ldH,
        TI* __restrict__ o, int T, int Dv, float inv_s) {
    using namespace zs;
    const Block b = block_of(T);
    const int lane = b.lane;
    const long long NT = b.NT;
    const float sg = head[HEAD_SIGMA * gridDim.y + b.n];
    warp_rows(b, T, [&](int, long long row) {
        const float ca = st[ST_ALPHA * NT + row] * inv_s, cb = st[ST_BETA * NT + row] * sg * inv_s,
                    cg = st[ST_GAMMA * NT + row] * inv_s;
#pragma unroll
        for (int i = 0; i < CPL; ++i) {
            const int col = lane + 32 * i;
            if (col >= Dv) break;
            o[row * Dv + col] = from_f32<TI>(ca * to_f32(oF[row * Dv + col]) + cb * to_f32(oG[row * ldG + col])
                                             + cg * to_f32(oH[row * ldH + col]));
        }
    });
}

// ---------------------------------------------------------------------------------------- backward scans
namespace zs {
// The per-token part of the backward scalars from the true row dots a = do.oF, V = do.oG, Z = do.oH of token t
// (row = n T + t): x = alpha U (U = a / E) and y = beta Z / n into xy (and returned), and dgates; with dn (an
// initial state: its count's gradient is the sum over the sequence), dn_t = -(beta (V - Z P / n) + gamma Z) / n
// of the true (unshifted) P = P' + n c and V, gamma (V' and gamma' of s - c give the same value).
// x = alpha a / E and y = beta Z / n alone
__device__ __forceinline__ void token_xy(float a, float Z, long long row, long long NT, const float* __restrict__ st,
        float& x, float& y) {
    x = st[ST_ALPHA * NT + row] * (a / st[ST_E * NT + row]);
    y = st[ST_BETA * NT + row] * Z / st[ST_N * NT + row];
}
template <typename TI>
__device__ __forceinline__ void token_scalars(float a, float V, float Z, long long row, long long NT,
        const float* __restrict__ st, const TI* __restrict__ gates, int ng, float shift, float* __restrict__ xy,
        TI* __restrict__ dgates, float* __restrict__ dn, float& x, float& y) {
    const float nt = st[ST_N * NT + row], P = st[ST_P * NT + row];
    const float U = a / st[ST_E * NT + row];
    const float beta = st[ST_BETA * NT + row];
    token_xy(a, Z, row, NT, st, x, y);
    xy[row] = x;
    xy[NT + row] = y;
    const float dsig1 = V / nt - P * Z / (nt * nt), dsigh = U - dsig1 - Z / nt;
    TI* dg = dgates + row * ng;
    const TI* gr = gates + row * ng;
    dg[0] = from_f32<TI>(dsig1 * dsigmoid(to_f32(gr[0])));
    dg[1] = from_f32<TI>(dsigh * dsigmoid(to_f32(gr[1])));
    if (ng == 3) dg[2] = from_f32<TI>(Z / nt * dtanh_exp(to_f32(gr[2])));
    if (dn) dn[row] = -(beta * (V - Z * (P / nt + shift)) + st[ST_GAMMA * NT + row] * Z) / nt;
}

// The token's element of the reverse scan: (m_t, x_t, y_t), flagged at a sequence's last token, where the final
// state's gradient (dfin: rows dE, dP (2, N, nseq), or nullptr) seeds it: R -= dE (relative to m_t = the final
// max), Q -= dP.
__device__ __forceinline__ Bwd bwd_element(const Span& sp, int t, float m, float x, float y,
        const float* __restrict__ dfin, long long NS) {
    Bwd e{m, x, (double)y, 0};
    if (t == sp.b - 1) {
        e.r = 1;
        if (dfin) {
            e.R -= dfin[sp.at];
            e.Q -= (double)dfin[NS + sp.at];
        }
    }
    return e;
}

// Warp 0 of a per-chunk block: the chunk's partial of the reverse scan from its tokens' x (sx) and y (sy), in
// token order: cR = sum x_t e^{m_first - m_t} (relative to m at the chunk's first token), cQ = sum y_t, up to
// the first sequence end in the chunk (cF: there is one).
// chunk_sum: the partial in lane 0 (mu: m at the chunk's first token); chunk_partial writes it.
__device__ __forceinline__ Bwd chunk_sum(const Block& b, int T, const Seqs& sq, const float* __restrict__ dfin,
        const float* __restrict__ st, const float* sx, const float* sy) {
    const long long NT = b.NT, base = b.base;
    const int cs = b.cs, lane = b.lane;
    Bwd acc = bwd_empty();
#pragma unroll
    for (int h = 1; h >= 0; --h) {
        const int r = 2 * lane + h, t = cs + r;
        if (t < T)
            acc = bwd_element(span_of(sq, b.n, t, T), t, st[ST_M * NT + base + t], sx[r], sy[r], dfin,
                              (long long)gridDim.y * sq.nseq) + acc;
    }
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const Bwd y = shfl_down(acc, o);
        if (lane + o < 32) acc = acc + y;
    }
    return acc;
}
__device__ __forceinline__ void chunk_partial(const Block& b, int T, int NC, const Seqs& sq,
        const float* __restrict__ dfin, const float* __restrict__ st, const float* sx, const float* sy,
        float* __restrict__ cR, double* __restrict__ cQ, int* __restrict__ cF) {
    const Bwd acc = chunk_sum(b, T, sq, dfin, st, sx, sy);
    if (b.lane == 0) {
        cR[(long long)b.n * NC + b.c] = acc.R;
        cQ[(long long)b.n * NC + b.c] = acc.Q;
        cF[(long long)b.n * NC + b.c] = acc.r;
    }
}

// Warp 0 of a per-chunk block: the scalar part of ds for the chunk's tokens, sds[r] = -u R - Q, with R_j, Q_j
// by a reverse shuffle scan seeded by the carry yR, yQ of zeros_bscan (not causal: the totals, per chunk or,
// packed, per sequence).  d0 (causal, an initial state; else nullptr): rows dE0, dP0 (2, N, nseq) <- -R, -Q at
// each sequence's first token, R taken relative to the initial state's max.
// The carry comes from y(x): {R, Q} of index x (n NC + c, or n nseq + j packed and not causal).
struct RQ { float R; double Q; };
template <bool CAUSAL, typename Y>
__device__ __forceinline__ void scalar_ds(const Block& b, int T, int NC, const Seqs& sq,
        const float* __restrict__ dfin, const float* __restrict__ st, const float* __restrict__ xy, Y y,
        float* sds, float* __restrict__ d0) {
    const int c = b.c, cs = b.cs, lane = b.lane, N = gridDim.y;
    const long long base = b.base, NT = b.NT, at = (long long)b.n * NC + c, NS = (long long)N * sq.nseq;
    Span sp[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) sp[h] = span_of(sq, b.n, min(cs + 2 * lane + h, T - 1), T);
    float Rt[2];
    double Qt[2];
    if (CAUSAL) {
        Bwd e[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int t = cs + 2 * lane + h;
            const long long row = base + t;
            e[h] = t < T ? bwd_element(sp[h], t, st[ST_M * NT + row], xy[row], xy[NT + row], dfin, NS) : bwd_empty();
        }
        Bwd inc = e[0] + e[1];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const Bwd y = shfl_down(inc, o);
            if (lane + o < 32) inc = inc + y;
        }
        const Bwd ex = shfl_down(inc, 1);
        const RQ yc = y(at);
        const Bwd carry{c + 1 < NC ? st[ST_M * NT + base + cs + C] : 0.f, yc.R, yc.Q, 0};
        const Bwd after = lane < 31 ? ex + carry : carry;
        const Bwd r1 = e[1] + after, r0 = e[0] + r1;
        Rt[0] = r0.R;
        Rt[1] = r1.R;
        Qt[0] = r0.Q;
        Qt[1] = r1.Q;
    } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const RQ yc = y(sq.tseq ? sp[h].at : at);
            Rt[h] = yc.R;
            Qt[h] = yc.Q;
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int t = cs + 2 * lane + h;
        if (t >= T) continue;
        sds[2 * lane + h] = -st[ST_U * NT + base + t] * Rt[h] - (float)Qt[h];
        if (CAUSAL && d0 && t == sp[h].a) {
            d0[sp[h].at] = -rescale(Rt[h], st0_at(sq, sp[h], S0_M, N), st[ST_M * NT + base + t]);
            d0[NS + sp[h].at] = -(float)Qt[h];
        }
    }
}
// the carries of zeros_bscan, by index
struct ScanCarry {
    const float* R;
    const double* Q;
    __device__ __forceinline__ RQ operator()(long long x) const { return {R[x], Q[x]}; }
};
}  // namespace zs

// grid (NC, N), block 128: warp w handles rows 16w..16w+15 of chunk blockIdx.x (row dots, dO of the three
// streams, dgates, x and y, dn when not nullptr), then warp 0 writes the chunk partials cR (relative to m at
// the chunk's first token), cQ and cF.  xy: (2, N, T) float32, x then y.  dfin: see bwd_element.
template <typename TI, bool CAUSAL>
__global__ void __launch_bounds__(128) zeros_bchunk(const TI* __restrict__ dout, const TI* __restrict__ oF,
        const TI* __restrict__ oG, int ldG, const TI* __restrict__ oH, int ldH, const TI* __restrict__ gates, int ng,
        const float* __restrict__ st, const float* __restrict__ head, int T, int Dv, int NC, float inv_s,
        const int* __restrict__ tseq, const int* __restrict__ cu, int nseq, const float* __restrict__ dfin,
        TI* __restrict__ dOF, TI* __restrict__ dOG, int ldDG, TI* __restrict__ dOH, int ldDH, float* __restrict__ xy,
        TI* __restrict__ dgates, float* __restrict__ dn, float* __restrict__ cR, double* __restrict__ cQ,
        int* __restrict__ cF) {
    using namespace zs;
    __shared__ float sx[C], sy[C];
    const Block b = block_of(T);
    const int lane = b.lane;
    const long long NT = b.NT;
    const Seqs sq{tseq, cu, nseq, nullptr};
    const float sg = head[HEAD_SIGMA * gridDim.y + b.n], shift = head[HEAD_SHIFT * gridDim.y + b.n];
    warp_rows(b, T, [&](int r, long long row) {
        float d[CPL], pa = 0.f, pv = 0.f, pz = 0.f;
#pragma unroll
        for (int i = 0; i < CPL; ++i) {
            const int col = lane + 32 * i;
            d[i] = 0.f;
            if (col < Dv) {
                d[i] = to_f32(dout[row * Dv + col]);
                pa += d[i] * to_f32(oF[row * Dv + col]);
                pv += d[i] * to_f32(oG[row * ldG + col]);
                pz += d[i] * to_f32(oH[row * ldH + col]);
            }
        }
        const float a = warp_sum(pa) * inv_s, V = warp_sum(pv) * sg * inv_s, Z = warp_sum(pz) * inv_s;
        const float alpha = st[ST_ALPHA * NT + row], beta = st[ST_BETA * NT + row], gamma = st[ST_GAMMA * NT + row];
        const float cF = alpha * inv_s, cG = 0.25f * beta * inv_s, cH = 0.25f * gamma * inv_s / sg;
#pragma unroll
        for (int i = 0; i < CPL; ++i) {
            const int col = lane + 32 * i;
            if (col >= Dv) break;
            dOF[row * Dv + col] = from_f32<TI>(cF * d[i]);
            dOG[row * ldDG + col] = from_f32<TI>(cG * d[i]);
            dOH[row * ldDH + col] = from_f32<TI>(cH * d[i]);
        }
        if (lane == 0) token_scalars<TI>(a, V, Z, row, NT, st, gates, ng, shift, xy, dgates, dn, sx[r], sy[r]);
    });
    __syncthreads();
    if (b.w == 0) chunk_partial(b, T, NC, sq, dfin, st, sx, sy, cR, cQ, cF);
}

// grid (N), block 256: the reverse scan over chunks.  CAUSAL: yR[c], yQ[c] = R and Q at the first token of
// chunk c + 1 (R relative to m there; 0 for the last chunk); else the head's totals (every c).
template <bool CAUSAL>
__global__ void __launch_bounds__(256) zeros_bscan(const float* __restrict__ cR, const double* __restrict__ cQ,
        const int* __restrict__ cF, const float* __restrict__ stm, int T, int NC, float* __restrict__ yR,
        double* __restrict__ yQ) {
    using namespace zs;
    __shared__ Bwd wtot[SCAN / 32];
    const int n = blockIdx.x, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int per = (NC + SCAN - 1) / SCAN, c0 = min(NC, tid * per), c1 = min(NC, c0 + per);
    const long long base = (long long)n * NC;
    auto chunk = [&](int c) {
        return Bwd{stm[(long long)n * T + (long long)c * C], cR[base + c], cQ[base + c], CAUSAL ? cF[base + c] : 0};
    };
    Bwd agg = bwd_empty();
    if (c0 < c1) {
        agg = chunk(c0);
        for (int c = c0 + 1; c < c1; ++c) agg = agg + chunk(c);
    }
    Bwd inc = agg;                                                 // inclusive suffix scan over the warp's runs
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const Bwd y = shfl_down(inc, o);
        if (lane + o < 32) inc = inc + y;
    }
    if (lane == 0) wtot[w] = inc;
    __syncthreads();
    Bwd after = bwd_empty();                                       // everything after this warp
    for (int j = SCAN / 32 - 1; j > w; --j) after = wtot[j] + after;
    if (CAUSAL) {
        const Bwd ex = shfl_down(inc, 1);
        if (lane < 31) after = ex + after;
        for (int c = c1 - 1; c >= c0; --c) {
            yR[base + c] = after.R;
            yQ[base + c] = after.Q;
            after = chunk(c) + after;
        }
    } else {
        Bwd tot = bwd_empty();
        for (int j = SCAN / 32 - 1; j >= 0; --j) tot = wtot[j] + tot;
        for (int c = c0; c < c1; ++c) {
            yR[base + c] = tot.R;
            yQ[base + c] = tot.Q;
        }
    }
}

// grid (NC, N), block 128.  Warp 0: R_j, Q_j for the chunk's tokens (a reverse shuffle scan seeded by the
// carry) -> the scalar part of ds (and d0, see scalar_ds); then warp w assembles rows 16w..16w+15.  The core's
// gradients: F (exact), G and H (divided by 4 sigma; dqH/dkH are nullptr when G and H were one call, whose
// dq/dk is dqG/dkG).  mu (causal, a final state's gradient; else nullptr): per sequence (N, nseq), the gradient
// of its final max finM, added to ds of the token that first reached it (none when the initial state's max
// is the final max).
template <typename TI, bool CAUSAL>
__global__ void __launch_bounds__(128) zeros_bfinish(const float* __restrict__ st, const float* __restrict__ head,
        const float* __restrict__ xy, const float* __restrict__ yR, const double* __restrict__ yQ,
        const TI* __restrict__ s, const TI* __restrict__ v, const TI* __restrict__ dqF, const TI* __restrict__ dqG,
        const TI* __restrict__ dqH, const TI* __restrict__ dkF, const TI* __restrict__ dkG, const TI* __restrict__ dkH,
        const TI* __restrict__ dvF, const TI* __restrict__ dvG, int ldG, const TI* __restrict__ dvH, int ldH,
        int T, int Dk, int Dv, int NC, const int* __restrict__ tseq, const int* __restrict__ cu, int nseq,
        const float* __restrict__ st0, const float* __restrict__ dfin, const float* __restrict__ mu,
        const float* __restrict__ finM, TI* __restrict__ dq, TI* __restrict__ dk, TI* __restrict__ dv,
        TI* __restrict__ ds, float* __restrict__ d0) {
    using namespace zs;
    __shared__ float sds[C];
    const Block b = block_of(T);
    const int n = b.n, lane = b.lane;
    const long long NT = b.NT;
    const Seqs sq{tseq, cu, nseq, st0};
    if (b.w == 0) scalar_ds<CAUSAL>(b, T, NC, sq, dfin, st, xy, ScanCarry{yR, yQ}, sds, d0);
    __syncthreads();
    const float g4 = 4.f * head[HEAD_SIGMA * gridDim.y + n], shift = head[HEAD_SHIFT * gridDim.y + n];
    warp_rows(b, T, [&](int r, long long row) {
        const float u = st[ST_U * NT + row], sr = to_f32(s[row]) - shift;
#pragma unroll
        for (int i = 0; i < CPL; ++i) {
            const int col = lane + 32 * i;
            if (col >= Dk) break;
            const long long x = row * Dk + col;
            const float gq = to_f32(dqG[x]) + (dqH ? to_f32(dqH[x]) : 0.f);
            const float gk = to_f32(dkG[x]) + (dkH ? to_f32(dkH[x]) : 0.f);
            dq[x] = from_f32<TI>(to_f32(dqF[x]) + g4 * gq);
            dk[x] = from_f32<TI>(to_f32(dkF[x]) + g4 * gk);
        }
        float pd = 0.f;
#pragma unroll
        for (int i = 0; i < CPL; ++i) {
            const int col = lane + 32 * i;
            if (col >= Dv) break;
            const float f = to_f32(dvF[row * Dv + col]), gg = to_f32(dvG[row * ldG + col]);
            const float hh = to_f32(dvH[row * ldH + col]), xv = to_f32(v[row * Dv + col]);
            dv[row * Dv + col] = from_f32<TI>(u * f + 4.f * sr * gg + g4 * hh);
            pd += xv * (u * f + 4.f * gg);
        }
        pd = warp_sum(pd);
        if (lane == 0) {
            float extra = 0.f;
            if (CAUSAL && mu) {                                    // the final max's gradient, to its argmax
                const int t = b.cs + r;
                const Span sp = span_of(sq, n, t, T);
                const float m = st[ST_M * NT + row];
                if (m_before(sq, sp, t, gridDim.y, t > 0 ? st[ST_M * NT + row - 1] : 0.f) < m && m == finM[sp.at])
                    extra = mu[sp.at];
            }
            ds[row] = from_f32<TI>(sds[r] + pd + extra);
        }
    });
}

// ---------------------------------------------------------------------------------------- one pass: scalars
// The scalar kernels of cupy:chunked_mma_fused around the tensor-core kernels tz_* of chunked_mma.cu (which
// leave the row dots and the direct part of ds as per-tile partials): the same per-token code as zeros_bchunk
// and zeros_bfinish.

namespace zs {
// token t's row dot j (0: a, 1: V, 2: Z) summed over the ntk dk tiles (rd: (3, ntk, N, T))
__device__ __forceinline__ float row_dot(const float* __restrict__ rd, int ntk, int j, long long NT, long long row) {
    float d = 0.f;
    for (int i = 0; i < ntk; ++i) d += rd[((long long)j * ntk + i) * NT + row];
    return d;
}
// thread r < 64 of a per-chunk block: token cs + r's x, y (into sx, sy and xy) and dgates
template <typename TI>
__device__ __forceinline__ void fused_token_scalars(const Block& b, int T, const float* __restrict__ rd, int ntk,
        const TI* __restrict__ gates, int ng, const float* __restrict__ st, float* __restrict__ xy,
        TI* __restrict__ dgates, float* sx, float* sy) {
    const int r = threadIdx.x, t = b.cs + r;
    if (r < C && t < T) {
        const long long row = b.base + t;
        token_scalars<TI>(row_dot(rd, ntk, 0, b.NT, row), row_dot(rd, ntk, 1, b.NT, row),
                          row_dot(rd, ntk, 2, b.NT, row), row, b.NT, st, gates, ng, 0.f, xy, dgates, nullptr,
                          sx[r], sy[r]);
    }
}
// thread r < 64: ds of token cs + r = the direct part summed over the ntv dv tiles (dsp: (ntv, N, T)) + sds[r]
template <typename TI>
__device__ __forceinline__ void fused_ds_rows(const Block& b, int T, const float* sds, const float* __restrict__ dsp,
        int ntv, TI* __restrict__ ds) {
    const int r = threadIdx.x, t = b.cs + r;
    if (r < C && t < T) {
        const long long row = b.base + t;
        float d = sds[r];
        for (int i = 0; i < ntv; ++i) d += dsp[i * b.NT + row];
        ds[row] = from_f32<TI>(d);
    }
}
// cupy:chunked_mma_fused2 (dkp not null): dk of the chunk's tokens = its parts summed over the ntv dv tiles (dkp:
// (ntv, N, T, dk) in the input dtype, written by tz_bwd_dv<..., DKF>), summed in float32; every thread of the block.
// In 16-byte groups (4 floats, 8 halves) where the chunk's rows, the parts' stride and both arrays allow (dk a
// multiple of the group: every head dim of 8 or 16), four groups a thread in flight at once: the loop is bound by its
// loads' latency, not their bytes (one element a thread and round trip before, H200 callAB: 207 us at 16k float32);
// elsewhere one element at a time.
template <typename TI>
__device__ __forceinline__ void fused_dk_rows(const Block& b, int T, const TI* __restrict__ dkp, int ntv, int dk,
                                              TI* __restrict__ dkout) {
    if (!dkp) return;
    const int nrow = min(C, T - b.cs);
    constexpr int V = 16 / sizeof(TI);                               // elements of a 16-byte group
    const long long at0 = (b.base + b.cs) * dk, stride = b.NT * dk;
    const int n = nrow * dk;
    const unsigned long long ends = reinterpret_cast<unsigned long long>(dkp) |
                                    reinterpret_cast<unsigned long long>(dkout);
    const bool vec = dk % V == 0 && (ends & 15) == 0;                 // (both arrays 16-byte aligned)
    if (vec) {
        const uint4* src = reinterpret_cast<const uint4*>(dkp + at0);
        uint4* dst = reinterpret_cast<uint4*>(dkout + at0);
        const long long gstride = stride / V;
#pragma unroll 4
        for (int gi = threadIdx.x; gi < n / V; gi += blockDim.x) {
            float acc[V];
#pragma unroll
            for (int e = 0; e < V; ++e) acc[e] = 0.f;
            for (int i = 0; i < ntv; ++i) {
                const uint4 w = src[i * gstride + gi];
                const TI* x = reinterpret_cast<const TI*>(&w);
#pragma unroll
                for (int e = 0; e < V; ++e) acc[e] += to_f32(x[e]);
            }
            uint4 o;
            TI* y = reinterpret_cast<TI*>(&o);
#pragma unroll
            for (int e = 0; e < V; ++e) y[e] = from_f32<TI>(acc[e]);
            dst[gi] = o;
        }
        return;
    }
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
        const long long at = at0 + idx;
        float d = 0.f;
        for (int i = 0; i < ntv; ++i) d += to_f32(dkp[i * stride + at]);
        dkout[at] = from_f32<TI>(d);
    }
}
}  // namespace zs

// grid (NC, N), block 128: thread r < 64 sums token cs + r's row dots over the ntk dk tiles (rd: (3, ntk, N, T),
// rows a, V, Z) -> x, y, dgates; then warp 0 writes the chunk partials cR, cQ (as zeros_bchunk).
template <typename TI, bool CAUSAL>
__global__ void __launch_bounds__(128) zeros_fused_bscalar(const float* __restrict__ rd, int ntk,
        const TI* __restrict__ gates, int ng, const float* __restrict__ st, int T, int NC, float* __restrict__ xy,
        TI* __restrict__ dgates, float* __restrict__ cR, double* __restrict__ cQ, int* __restrict__ cF) {
    using namespace zs;
    __shared__ float sx[C], sy[C];
    const Block b = block_of(T);
    fused_token_scalars<TI>(b, T, rd, ntk, gates, ng, st, xy, dgates, sx, sy);
    __syncthreads();
    if (b.w == 0) chunk_partial(b, T, NC, Seqs{nullptr, nullptr, 1, nullptr}, nullptr, st, sx, sy, cR, cQ, cF);
}

// grid (NC, N), block 128: ds = the direct part summed over the ntv dv tiles (dsp: (ntv, N, T)) + the scalar part
// -u R - Q (warp 0, as zeros_bfinish), in the input dtype; dkp not null: also dk (fused_dk_rows).
template <typename TI, bool CAUSAL>
__global__ void __launch_bounds__(128) zeros_fused_bds(const float* __restrict__ st, const float* __restrict__ xy,
        const float* __restrict__ yR, const double* __restrict__ yQ, const float* __restrict__ dsp, int ntv, int T,
        int NC, TI* __restrict__ ds, const TI* __restrict__ dkp, int dk, TI* __restrict__ dkout) {
    using namespace zs;
    __shared__ float sds[C];
    const Block b = block_of(T);
    fused_dk_rows<TI>(b, T, dkp, ntv, dk, dkout);                 // (independent of ds: its loads first)
    if (b.w == 0)
        scalar_ds<CAUSAL>(b, T, NC, Seqs{nullptr, nullptr, 1, nullptr}, nullptr, st, xy, ScanCarry{yR, yQ}, sds,
                          nullptr);
    __syncthreads();
    fused_ds_rows<TI>(b, T, sds, dsp, ntv, ds);
}

// grid (NC, N), block 128: zeros_fused_bscalar + zeros_bscan + zeros_fused_bds in one launch, for few chunks
// (the host's choice, IN_BLOCK_SCAN_MAX_CHUNKS in kernels/cupy/zeros.py): the block's own tokens' x, y
// (into xy) and dgates; then the carry -- the partials of the chunks after this one (causal) or of every chunk
// (not causal), recomputed from rd and st in reverse order, joined as zeros_bscan joins them (O(NC) per block);
// then ds (and dk from dkp) as zeros_fused_bds.  No packed sequences (cupy:chunked_mma_fused has none).
template <typename TI, bool CAUSAL>
__global__ void __launch_bounds__(128) zeros_fused_bscalar_ds(const float* __restrict__ rd, int ntk,
        const TI* __restrict__ gates, int ng, const float* __restrict__ st, int T, int NC, float* __restrict__ xy,
        TI* __restrict__ dgates, const float* __restrict__ dsp, int ntv, TI* __restrict__ ds,
        const TI* __restrict__ dkp, int dk, TI* __restrict__ dkout) {
    using namespace zs;
    __shared__ float sx[C], sy[C], sds[C];
    __shared__ RQ carry[1];
    const Block b = block_of(T);
    const Seqs one{nullptr, nullptr, 1, nullptr};
    fused_token_scalars<TI>(b, T, rd, ntk, gates, ng, st, xy, dgates, sx, sy);
    Bwd after = bwd_empty();                                       // warp 0, lane 0: the chunks after c
    for (int j = NC - 1; j >= (CAUSAL ? b.c + 1 : 0); --j) {       // block-uniform
        __syncthreads();                                           // sx, sy free (and xy written)
        Block bj = b;
        bj.c = j;
        bj.cs = j * C;
        const int r = threadIdx.x, t = bj.cs + r;
        if (r < C && t < T) {
            const long long row = b.base + t;
            token_xy(row_dot(rd, ntk, 0, b.NT, row), row_dot(rd, ntk, 2, b.NT, row), row, b.NT, st, sx[r], sy[r]);
        }
        __syncthreads();
        if (b.w == 0) {
            Bwd p = chunk_sum(bj, T, one, nullptr, st, sx, sy);
            if (!CAUSAL) p.r = 0;
            after = p + after;
        }
    }
    if (threadIdx.x == 0) carry[0] = RQ{after.R, after.Q};
    __syncthreads();
    if (b.w == 0)
        scalar_ds<CAUSAL>(b, T, NC, one, nullptr, st, xy, [&](long long) { return carry[0]; }, sds, nullptr);
    __syncthreads();
    fused_ds_rows<TI>(b, T, sds, dsp, ntv, ds);
    fused_dk_rows<TI>(b, T, dkp, ntv, dk, dkout);
}
