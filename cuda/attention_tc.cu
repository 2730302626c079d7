/*
 * attention_tc.cu - fused causal attention on tensor cores (the fast path of
 * the CUDA backend, used when the backend's math mode is TF32 or BF16).
 *
 * Same contract as attention.cu (causal, GQA: query head h reads key head
 * h / (H/KV) and value head h / (H/NV), NV a multiple of KV; nothing of size
 * T x T is stored; bitwise reproducible), but every matrix product runs on
 * tensor cores through nvcuda::wmma with fp32 accumulation. The kernels are
 * templates on the input precision P (tc_tf32 or tc_bf16, picked by the math
 * mode); everything else is shared:
 *   TF32  m16n16k8; the operand tiles in shared memory are fp32 and fragments
 *         are rounded with __float_to_tf32 after each load (10-bit
 *         mantissas, to nearest with ties away).
 *   BF16  m16n16k16 with __nv_bfloat16 matrix_a / matrix_b fragments. The
 *         operand tiles (Q, K, V, dY, and the P / dS tiles that feed P V,
 *         P^T dY, dS^T Q and dS K) are __nv_bfloat16 in shared memory,
 *         rounded once when written (__float2bfloat16_rn: 7-bit mantissas,
 *         to nearest even), which halves their size. S and dP come out of the
 *         mma in fp32 into the same fp32 tiles as with TF32, and P and dS are
 *         computed in fp32 as with TF32 before their rounded copy is stored.
 * Softmax, masking, exponentials, the log-sum-exp, D = rowsum(dY * Y) (from
 * attention.cu), dS = P (dP - D) and the column statistics stay in fp32 on
 * the scalar units, with the same operations in the same order for both
 * precisions; only the rounding of the products' inputs differs.
 *
 * Tiling. A block has 128 threads = 4 warps. Query tiles have 64 rows and key
 * tiles 64 keys (BQ == BK, so a query tile's causal key tiles are 0..qb).
 * Each warp owns 16 rows of its block's tile and computes everything of those
 * rows with 16x16xK mma's (K = 8 TF32, 16 BF16); the only block-wide barriers
 * are around the loading of shared tiles (and, BF16, before the final dQ
 * flush). The head dimension is padded to DM = 64 (d_head <= 64) or 128
 * (d_head <= 128); loads zero-fill columns [d_head, DM) and rows past T, and
 * the mma loops stop at ceil(d_head / K) k-steps and ceil(d_head / 16) output
 * column blocks. Shared-memory rows are padded by 8 elements (strides DM + 8
 * and 64 + 8, in floats or bf16): wmma needs ldm a multiple of 16 bytes and
 * 32-byte aligned tile pointers (every tile starts at a multiple of 8 rows
 * and of K columns), and the pad spreads the rows of a fragment over the
 * banks (consecutive rows 8 banks apart for fp32, 4 for bf16).
 *
 *   k_tc_fwd     grid (query tiles, H, B), heaviest (last) tiles first.
 *                Warp w: S = Q_w K^T (16 x 64) into its rows of the score
 *                tile Ss; online softmax on Ss by its own lanes, writing P in
 *                place (TF32) or to the bf16 tile Ps (BF16); P V in 16-column
 *                chunks through a per-warp 16 x 16 scratch, added to the
 *                running output O = O * alpha + P V held in registers.
 *   k_tc_bwd_kv  grid (key tiles, KV, B). Warp w owns 16 keys. For every query
 *                head of the group (in order) and every query tile at or below
 *                the diagonal (in order): S^T = K_w Q^T (16 keys x 64
 *                queries) into the warp's rows of Xs, P^T = exp(S^T scale -
 *                lse) by its lanes (which also sum the column statistics)
 *                into Xs (fp32) and, BF16, rounded into Ps; dV_w += P^T dY
 *                (from Ps), then dP^T = V_w dY^T and
 *                dS^T = P^T (dP^T - D) element-wise on accumulator fragments
 *                (P^T and a 16-row replica Dr of the tile's D loaded as
 *                accumulators: same fragment type, same element mapping,
 *                whatever it is) stored into Xs, BF16 then rounded into Ps
 *                by the lanes that own the entries, and dK_w += dS^T Q (from
 *                Ps). dK_w and dV_w are accumulator fragments that stay in
 *                registers for the whole block; dV is flushed whenever the
 *                value head changes (NV == H: after every query head), dK at
 *                the end (times scale).
 *   k_tc_bwd_q   grid (query tiles, H, B), heaviest first. Warp w owns 16
 *                queries: S = Q_w K^T, dP = dY_w V^T, dS = P (dP - D) (in
 *                place of dP, or rounded into Ps), dQ_w += dS K over the key
 *                tiles 0..qb, in order.
 * (TF32: Ps is Xs / Ss itself, so P and dS overwrite S and dP as they are
 * computed.) Accumulators are flushed to global memory through a warp's
 * 16 x (DM + 8) fp32 scratch, carved from the Q tile's memory once no warp
 * reads it: with TF32 the warp's own rows of Qs; with BF16 (half-size tiles)
 * a quarter of Qs and dYs together, which needs a block barrier first.
 *
 * Scalar work on a warp's 16 x 64 tile (softmax, P, dS, statistics): lane l
 * owns rows (l % 4) + 4 i, i < 4, and columns (l / 4) + 8 j, j < 8. With the
 * 72-float row stride the 32 lanes of an access hit 32 different banks (with
 * the 72-bf16 stride of Ps, 16 banks, two lanes to a 32-bit word). A row is
 * spread over the 8 lanes with the same l % 4: row maxima and sums are
 * butterfly shuffles over lane bits 4, 8, 16. The running output of k_tc_fwd
 * uses the same row ownership (columns (l / 4) + 8 j, j < DM / 8), so the
 * softmax rescale factor of a row is already in the lane that needs it.
 * wmma's fragment element-to-(row, col) mapping is unspecified, so no
 * per-row or per-column operation is ever applied to a fragment's elements:
 * fragments are stored to shared memory, __syncwarp'ed, and read back by the
 * owning lanes (the only element-wise fragment arithmetic is between
 * accumulators of the same type, which share the mapping).
 *
 * Column statistics (k_tc_bwd_kv, for query head h, key s < T):
 *   mass[s] = sum_{t>=s} a_ts, sq[s] = sum_{t>=s} a_ts^2,
 *   win[s]  = sum_{s<=t<s+W} a_ts, a_ts = exp(score_ts * scale - lse_t),
 * from the same fp32 a_ts the backward uses (not the rounded copy). Each lane
 * sums its 8 query columns of every query tile in tile order into registers
 * (per owned key); after the last query tile of head h the 8 lanes of a key
 * combine their partials with a fixed xor-4/8/16 butterfly (floating-point
 * addition is commutative, so all 8 lanes get the same bits) and lane l < 4
 * writes (=) the key's values.
 *
 * Determinism: every output element (y, lse, dq, dk, dv, statistics) has a
 * single owner (one lane, or one warp's accumulator fragment) that sums its
 * terms in a fixed order: key tiles in order, query heads and query tiles in
 * order, k-steps of each mma in order. No floating-point atomics; no
 * reduction depends on scheduling. The mma's internal summation order is
 * fixed by the hardware, so a rerun on the same GPU gives the same bits.
 *
 * Shared memory per block (bytes) and blocks per SM it allows (sm_90 / sm_80):
 *   TF32 DM  64: k_tc_fwd  79,872 (2/2)  k_tc_bwd_kv  97,024 (2/1)  k_tc_bwd_q  92,672 (2/1)
 *   TF32 DM 128: k_tc_fwd 129,024 (1/1)  k_tc_bwd_kv 162,560 (1/1)  k_tc_bwd_q 158,208 (1/1)
 *   BF16 DM  64: k_tc_fwd  61,440 (3/2)  k_tc_bwd_kv  69,376 (3/2)  k_tc_bwd_q  65,024 (3/2)
 *   BF16 DM 128: k_tc_fwd  86,016 (2/1)  k_tc_bwd_kv 102,144 (2/1)  k_tc_bwd_q  97,792 (2/1)
 * (BF16 adds a 9,216-byte P / dS tile to the halved operand tiles; the BF16
 * DM 64 kernels are compiled for 3 blocks per SM, tc_min_blocks). All are
 * above 48 KB, so cuda_attention_tc_init opts the kernels in (sm_80 allows
 * 166,912 bytes, sm_90 232,448); a device whose opt-in limit is smaller (or
 * d_head > 128, or FP32 math) uses the exact kernels of attention.cu instead
 * (cuda_attention_tc_eligible).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"
#include "cuda_module.h"

#ifndef GSINK_CUDA_EMULATE
#include <cuda_bf16.h>
#include <mma.h> /* the emulation (cuda_emu.h) has its own nvcuda::wmma and bfloat16 */
#define TC_DYN_SMEM(name) extern __shared__ __align__(128) float name[]
#else
#define TC_DYN_SMEM(name) GSINK_DYN_SMEM(name)
#endif

using namespace nvcuda;

#define TC_BQ 64      /* query rows per tile */
#define TC_BK 64      /* keys per tile */
#define TC_THREADS 128
#define TC_WARPS 4
#define TC_LDS (TC_BK + 8) /* row stride of the 64-wide score and P / dS tiles */
#define TC_LDC 24          /* row stride of the forward's 16 x 16 chunk scratch */

/* Input precision of the products (the kernels' template argument P).
 *   E       element type of the operand tiles in shared memory;
 *   K       k of the m16n16kK mma shape;
 *   NARROW  E is narrower than fp32: P and dS get their own E tiles (with
 *           fp32 they are written in place into the fp32 score tiles), and a
 *           warp's rows of an operand tile cannot hold its fp32 flush scratch;
 *   cvt     fp32 -> E, applied once when a value is written to an E tile;
 *   load    a matrix_a / matrix_b fragment from an E tile. */
struct tc_tf32 {
    typedef float E;
    enum { K = 8 };
    static constexpr bool NARROW = false;
    typedef wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a_row;
    typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b_row;
    typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b_col;
    typedef wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
    static __device__ __forceinline__ float cvt(float x) { return x; }
    /* loads a fragment and rounds its elements to TF32 */
    template <class F> static __device__ __forceinline__ void load(F &f, const float *p, unsigned ldm)
    {
        wmma::load_matrix_sync(f, p, ldm);
#pragma unroll
        for (int i = 0; i < f.num_elements; i++) f.x[i] = wmma::__float_to_tf32(f.x[i]);
    }
    static const char *what_fwd() { return "attention forward (tf32)"; }
    static const char *what_kv() { return "attention backward (tf32, dK, dV)"; }
    static const char *what_q() { return "attention backward (tf32, dQ)"; }
};

struct tc_bf16 {
    typedef __nv_bfloat16 E;
    enum { K = 16 };
    static constexpr bool NARROW = true;
    typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a_row;
    typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b_row;
    typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b_col;
    typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    static __device__ __forceinline__ __nv_bfloat16 cvt(float x) { return __float2bfloat16_rn(x); }
    template <class F> static __device__ __forceinline__ void load(F &f, const __nv_bfloat16 *p, unsigned ldm)
    {
        wmma::load_matrix_sync(f, p, ldm);
    }
    static const char *what_fwd() { return "attention forward (bf16)"; }
    static const char *what_kv() { return "attention backward (bf16, dK, dV)"; }
    static const char *what_q() { return "attention backward (bf16, dQ)"; }
};

/* Bytes of dynamic shared memory: operand tiles of E, fp32 score / scratch /
 * vector tiles, and with NARROW the E tile of P (or P^T, dS) at the end. */
template <class P> static size_t tc_p_bytes()
{
    return P::NARROW ? sizeof(typename P::E) * TC_BQ * TC_LDS : 0;
}
template <class P, int DM> static size_t tc_fwd_smem()
{
    return sizeof(typename P::E) * 3 * TC_BQ * (DM + 8) +
           sizeof(float) * (TC_BQ * TC_LDS + TC_WARPS * 16 * TC_LDC) + tc_p_bytes<P>();
}
template <class P, int DM> static size_t tc_bwd_kv_smem()
{
    return sizeof(typename P::E) * 4 * TC_BQ * (DM + 8) +
           sizeof(float) * (TC_BQ * TC_LDS + 16 * TC_LDS + TC_BQ) + tc_p_bytes<P>();
}
template <class P, int DM> static size_t tc_bwd_q_smem()
{
    return sizeof(typename P::E) * 4 * TC_BQ * (DM + 8) + sizeof(float) * (TC_BQ * TC_LDS + 2 * TC_BQ) +
           tc_p_bytes<P>();
}

/* Minimum blocks per SM for __launch_bounds__: 3 for BF16 with DM 64, whose
 * shared memory (61-69 KB a block) lets 3 blocks share an sm_90 SM, so
 * registers must stay <= 168 a thread; 0 (no hint, the compiler's choice)
 * otherwise: shared memory allows at most 2 blocks there, and 2 blocks fit
 * even at 255 registers. */
template <class P, int DM> constexpr int tc_min_blocks() { return P::NARROW && DM == 64 ? 3 : 0; }

/* Four consecutive values into an operand tile (16-byte aligned for fp32,
 * 8-byte for bf16). */
__device__ __forceinline__ void tc_store4(float *p, float4 x) { *(float4 *)p = x; }
__device__ __forceinline__ void tc_store4(__nv_bfloat16 *p, float4 x)
{
    ((__nv_bfloat162 *)p)[0] = __floats2bfloat162_rn(x.x, x.y);
    ((__nv_bfloat162 *)p)[1] = __floats2bfloat162_rn(x.z, x.w);
}

/* Rows [row0, row0 + 64) of a (T, ld) head slice into a 64 x (DM + 8) tile
 * of E, zero-filling rows >= T and columns [dh, DM). vec4: dh % 4 == 0 and
 * the slice is 16-byte aligned, so rows can be read as float4. */
template <class P, int DM>
__device__ __forceinline__ void tc_load_tile(typename P::E *sh, const float *g, int row0, int T, size_t ld,
                                             int dh, int vec4)
{
    const int LD = DM + 8;
    if (vec4) {
        for (int idx = threadIdx.x; idx < TC_BQ * (DM / 4); idx += TC_THREADS) {
            int r = idx / (DM / 4), d = (idx % (DM / 4)) * 4, t = row0 + r;
            float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (t < T && d < dh) x = *(const float4 *)(g + (size_t)t * ld + d);
            tc_store4(sh + r * LD + d, x);
        }
    } else {
        for (int idx = threadIdx.x; idx < TC_BQ * DM; idx += TC_THREADS) {
            int r = idx / DM, d = idx % DM, t = row0 + r;
            sh[r * LD + d] = P::cvt((t < T && d < dh) ? g[(size_t)t * ld + d] : 0.0f);
        }
    }
}

__device__ __forceinline__ void tc_load_vec(float *sh, const float *g, int row0, int T)
{
    for (int r = threadIdx.x; r < TC_BQ; r += TC_THREADS) sh[r] = row0 + r < T ? g[row0 + r] : 0.0f;
}

/* acc (16 x 64 as four 16 x 16 blocks) = A (16 x DM rows of a tile, stride
 * DM + 8) times B^T, B the 64 x DM tile at Bt: the score-like products
 * Q K^T, K Q^T, dY V^T, V dY^T of one warp, in nk k-steps of P::K. */
template <class P, int DM>
__device__ __forceinline__ void tc_abt_frag(typename P::acc (&acc)[4], const typename P::E *A,
                                            const typename P::E *Bt, int nk)
{
    const int LD = DM + 8;
#pragma unroll
    for (int n = 0; n < 4; n++) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll 2
    for (int kk = 0; kk < nk; kk++) {
        typename P::a_row a;
        P::load(a, A + kk * P::K, LD);
#pragma unroll
        for (int n = 0; n < 4; n++) {
            typename P::b_col b;
            P::load(b, Bt + n * 16 * LD + kk * P::K, LD);
            wmma::mma_sync(acc[n], a, b, acc[n]);
        }
    }
}

/* C (16 x 64 fp32, row stride TC_LDS) = A B^T as in tc_abt_frag. */
template <class P, int DM>
__device__ __forceinline__ void tc_abt(float *C, const typename P::E *A, const typename P::E *Bt, int nk)
{
    typename P::acc acc[4];
    tc_abt_frag<P, DM>(acc, A, Bt, nk);
#pragma unroll
    for (int n = 0; n < 4; n++) wmma::store_matrix_sync(C + n * 16, acc[n], TC_LDS, wmma::mem_row_major);
}

/* X (16 x 64 fp32, stride TC_LDS) holds a warp's P^T; replaces it with
 * dS^T = P^T (A Bt^T - Dr), A Bt^T = V_w dY^T as in tc_abt_frag and Dr 16
 * identical rows of the tile's D (stride TC_LDS). Element-wise on
 * accumulator fragments; each lane stores exactly the entries it loaded. */
template <class P, int DM>
__device__ __forceinline__ void tc_dsT(float *X, const typename P::E *A, const typename P::E *Bt,
                                       const float *Dr, int nk)
{
    typename P::acc acc[4];
    tc_abt_frag<P, DM>(acc, A, Bt, nk);
#pragma unroll
    for (int n = 0; n < 4; n++) {
        typename P::acc pf, df;
        wmma::load_matrix_sync(pf, X + n * 16, TC_LDS, wmma::mem_row_major);
        wmma::load_matrix_sync(df, Dr + n * 16, TC_LDS, wmma::mem_row_major);
#pragma unroll
        for (int e = 0; e < pf.num_elements; e++) acc[n].x[e] = pf.x[e] * (acc[n].x[e] - df.x[e]);
        wmma::store_matrix_sync(X + n * 16, acc[n], TC_LDS, wmma::mem_row_major);
    }
}

/* acc[n] += A (16 x 64 at A, stride TC_LDS) times the 64 x DM tile B,
 * columns [16 n, 16 n + 16) for n < nn16. */
template <class P, int DM>
__device__ __forceinline__ void tc_ab_acc(typename P::acc (&acc)[DM / 16], const typename P::E *A,
                                          const typename P::E *B, int nn16)
{
    const int LD = DM + 8;
#pragma unroll 1
    for (int kk = 0; kk < TC_BK / P::K; kk++) {
        typename P::a_row a;
        P::load(a, A + kk * P::K, TC_LDS);
#pragma unroll
        for (int n = 0; n < DM / 16; n++) {
            if (n < nn16) {
                typename P::b_row b;
                P::load(b, B + kk * P::K * LD + n * 16, LD);
                wmma::mma_sync(acc[n], a, b, acc[n]);
            }
        }
    }
}

/* Writes a warp's 16 x DM accumulator (times mul) to rows [0, nrows) and
 * columns [0, dh) of out (row stride ld), through the warp's 16 x (DM + 8)
 * fp32 scratch region; coalesced row by row. */
template <class P, int DM>
__device__ __forceinline__ void tc_flush(typename P::acc (&acc)[DM / 16], float *scr, float *out, size_t ld,
                                         int nrows, int dh, int nn16, float mul, int lane)
{
    const int LD = DM + 8;
#pragma unroll
    for (int n = 0; n < DM / 16; n++)
        if (n < nn16) wmma::store_matrix_sync(scr + n * 16, acc[n], LD, wmma::mem_row_major);
    __syncwarp();
    for (int r = 0; r < 16 && r < nrows; r++)
        for (int c = lane; c < dh; c += 32) out[(size_t)r * ld + c] = scr[r * LD + c] * mul;
    __syncwarp();
}

/* ------------------------------------------------------------------------ */
/* Forward                                                                   */
/* ------------------------------------------------------------------------ */

template <class P, int DM>
__global__ void __launch_bounds__(TC_THREADS, tc_min_blocks<P, DM>())
k_tc_fwd(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
         float *__restrict__ y, float *__restrict__ lse, int T, int H, int KV, int NV, int dh,
         float scale, int vec4)
{
    typedef typename P::E E;
    TC_DYN_SMEM(smem);
    const int LD = DM + 8;
    E *Qs = (E *)smem, *Ks = Qs + TC_BQ * LD, *Vs = Ks + TC_BK * LD;
    float *Ss = (float *)(Vs + TC_BK * LD), *Cs = Ss + TC_BQ * TC_LDS;
    E *Ps = P::NARROW ? (E *)(Cs + TC_WARPS * 16 * TC_LDC) : (E *)Ss; /* P, the operand of P V */
    const int qb = gridDim.x - 1 - blockIdx.x; /* heaviest tiles first */
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / KV), hv = h / (H / NV);
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const float *qh = q + (size_t)b * T * ldq + (size_t)h * dh;
    const float *kh = k + (size_t)b * T * ldk + (size_t)hk * dh;
    const float *vh = v + (size_t)b * T * ldv + (size_t)hv * dh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, lr = lane & 3, lc = lane >> 2;
    const int t0 = qb * TC_BQ, tw = t0 + warp * 16; /* first query row of the warp */
    const int nk = (dh + P::K - 1) / P::K, nn16 = (dh + 15) >> 4;
    float *Sw = Ss + warp * 16 * TC_LDS, *Cw = Cs + warp * 16 * TC_LDC;
    E *Pw = Ps + warp * 16 * TC_LDS;
    const E *Qw = Qs + warp * 16 * LD;

    tc_load_tile<P, DM>(Qs, qh, t0, T, ldq, dh, vec4);
    float m[4], l[4], o[4][DM / 8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < DM / 8; j++) o[i][j] = 0.0f;
    }

    for (int kb = 0; kb <= qb; kb++) {
        const int s0 = kb * TC_BK;
        __syncthreads(); /* everyone is done with the previous K, V */
        tc_load_tile<P, DM>(Ks, kh, s0, T, ldk, dh, vec4);
        tc_load_tile<P, DM>(Vs, vh, s0, T, ldv, dh, vec4);
        __syncthreads();
        tc_abt<P, DM>(Sw, Qw, Ks, nk);
        __syncwarp();
        /* online softmax of the warp's 16 rows */
        float alpha[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int rr = lr + 4 * i, t = tw + rr;
            float sv[8], mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                int c = lc + 8 * j;
                sv[j] = s0 + c <= t ? Sw[rr * TC_LDS + c] * scale : -INFINITY;
                mx = fmaxf(mx, sv[j]);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            /* key s0 <= t0 <= t, so mx is finite */
            const float mnew = fmaxf(m[i], mx);
            alpha[i] = expf(m[i] - mnew);
            float ps = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float p = expf(sv[j] - mnew);
                Pw[rr * TC_LDS + lc + 8 * j] = P::cvt(p); /* fp32: in place of S */
                ps += p;
            }
            ps += __shfl_xor_sync(0xffffffffu, ps, 4);
            ps += __shfl_xor_sync(0xffffffffu, ps, 8);
            ps += __shfl_xor_sync(0xffffffffu, ps, 16);
            l[i] = l[i] * alpha[i] + ps;
            m[i] = mnew;
        }
        __syncwarp();
        /* O = O alpha + P V, 16 output columns at a time */
        typename P::a_row pa[TC_BK / P::K];
#pragma unroll
        for (int kk = 0; kk < TC_BK / P::K; kk++) P::load(pa[kk], Pw + kk * P::K, TC_LDS);
#pragma unroll
        for (int n = 0; n < DM / 16; n++) {
            if (n < nn16) {
                typename P::acc acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int kk = 0; kk < TC_BK / P::K; kk++) {
                    typename P::b_row bv;
                    P::load(bv, Vs + kk * P::K * LD + n * 16, LD);
                    wmma::mma_sync(acc, pa[kk], bv, acc);
                }
                wmma::store_matrix_sync(Cw, acc, TC_LDC, wmma::mem_row_major);
                __syncwarp();
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int jj = 0; jj < 2; jj++)
                        o[i][2 * n + jj] = fmaf(o[i][2 * n + jj], alpha[i],
                                                Cw[(lr + 4 * i) * TC_LDC + lc + 8 * jj]);
                __syncwarp();
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int t = tw + lr + 4 * i;
        if (t < T) {
            const float inv = 1.0f / l[i];
            float *yr = y + (size_t)b * T * ldq + (size_t)t * ldq + (size_t)h * dh;
#pragma unroll
            for (int j = 0; j < DM / 8; j++) {
                int c = lc + 8 * j;
                if (c < dh) yr[c] = o[i][j] * inv;
            }
            if (lc == 0) lse[((size_t)b * H + h) * T + t] = m[i] + logf(l[i]);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Backward                                                                  */
/* ------------------------------------------------------------------------ */

template <class P, int DM>
__global__ void __launch_bounds__(TC_THREADS, tc_min_blocks<P, DM>())
k_tc_bwd_kv(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
            const float *__restrict__ dy, const float *__restrict__ lse,
            const float *__restrict__ Dv, float *__restrict__ dk, float *__restrict__ dv,
            float *__restrict__ mass, float *__restrict__ sq, float *__restrict__ win, int T, int H,
            int KV, int NV, int dh, int W, float scale, int vec4)
{
    typedef typename P::E E;
    TC_DYN_SMEM(smem);
    const int LD = DM + 8;
    E *Ks = (E *)smem, *Vs = Ks + TC_BK * LD, *Qs = Vs + TC_BK * LD, *dYs = Qs + TC_BQ * LD;
    float *Xs = (float *)(dYs + TC_BQ * LD), *Dr = Xs + TC_BK * TC_LDS, *Ls = Dr + 16 * TC_LDS;
    E *Ps = P::NARROW ? (E *)(Ls + TC_BQ) : (E *)Xs; /* P^T, then dS^T: operands of dV, dK */
    const int kb = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int G = H / KV, vrep = H / NV;
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, lr = lane & 3, lc = lane >> 2;
    const int s0 = kb * TC_BK, sw = s0 + warp * 16; /* first key of the warp */
    const int nqb = (T + TC_BQ - 1) / TC_BQ;
    const int nk = (dh + P::K - 1) / P::K, nn16 = (dh + 15) >> 4;
    const int nrows = T - sw; /* keys of the warp below T (may be <= 0) */
    const bool want_stats = mass || sq || win;
    float *Xw = Xs + warp * 16 * TC_LDS;
    E *Pw = Ps + warp * 16 * TC_LDS;
    const E *Kw = Ks + warp * 16 * LD, *Vw = Vs + warp * 16 * LD;
    /* fp32 flush scratch of the warp, 16 x (DM + 8): its rows of Qs (fp32),
     * or a quarter of Qs and dYs together (bf16); used only when no warp
     * reads Qs or dYs (after a block barrier) */
    float *scr = (float *)Qs + warp * 16 * LD;

    tc_load_tile<P, DM>(Ks, k + (size_t)b * T * ldk + (size_t)g * dh, s0, T, ldk, dh, vec4);
    typename P::acc dka[DM / 16], dva[DM / 16];
#pragma unroll
    for (int n = 0; n < DM / 16; n++) {
        wmma::fill_fragment(dka[n], 0.0f);
        wmma::fill_fragment(dva[n], 0.0f);
    }

    int cur_hv = -1;
    for (int h = g * G; h < (g + 1) * G; h++) {
        const int hv = h / vrep;
        if (hv != cur_hv) {
            __syncthreads(); /* everyone is done with Vs, Qs and dYs */
            if (cur_hv >= 0) {
                tc_flush<P, DM>(dva, scr, dv + (size_t)b * T * ldv + (size_t)sw * ldv + (size_t)cur_hv * dh,
                                ldv, nrows, dh, nn16, 1.0f, lane);
#pragma unroll
                for (int n = 0; n < DM / 16; n++) wmma::fill_fragment(dva[n], 0.0f);
            }
            cur_hv = hv;
            tc_load_tile<P, DM>(Vs, v + (size_t)b * T * ldv + (size_t)hv * dh, s0, T, ldv, dh, vec4);
        }
        const float *qh = q + (size_t)b * T * ldq + (size_t)h * dh;
        const float *dyh = dy + (size_t)b * T * ldq + (size_t)h * dh;
        const float *lh = lse + ((size_t)b * H + h) * T, *Dh = Dv + ((size_t)b * H + h) * T;
        float am[4], aq[4], aw[4]; /* statistics of the lane's keys lr + 4 i */
#pragma unroll
        for (int i = 0; i < 4; i++) am[i] = aq[i] = aw[i] = 0.0f;

        for (int qb = kb; qb < nqb; qb++) {
            const int t0 = qb * TC_BQ;
            __syncthreads(); /* everyone is done with Qs, dYs, Ls, Ds (and the dV flush) */
            tc_load_tile<P, DM>(Qs, qh, t0, T, ldq, dh, vec4);
            tc_load_tile<P, DM>(dYs, dyh, t0, T, ldq, dh, vec4);
            tc_load_vec(Ls, lh, t0, T);
            for (int idx = threadIdx.x; idx < 16 * TC_BQ; idx += TC_THREADS) {
                const int t = t0 + idx % TC_BQ; /* 16 copies of the tile's D row */
                Dr[(idx / TC_BQ) * TC_LDS + idx % TC_BQ] = t < T ? Dh[t] : 0.0f;
            }
            __syncthreads();
            /* P^T = exp(K_w Q^T scale - lse), 16 keys x 64 queries, in fp32
             * into Xw (for dS^T) and, when narrow, rounded into Pw (for dV) */
            tc_abt<P, DM>(Xw, Kw, Qs, nk);
            __syncwarp();
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int s = sw + lr + 4 * i;
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const int c = lc + 8 * j, t = t0 + c;
                    float a = 0.0f;
                    if (t < T && s <= t) a = expf(Xw[(lr + 4 * i) * TC_LDS + c] * scale - Ls[c]);
                    Xw[(lr + 4 * i) * TC_LDS + c] = a;
                    if constexpr (P::NARROW) Pw[(lr + 4 * i) * TC_LDS + c] = P::cvt(a);
                    if (want_stats) {
                        am[i] += a;
                        aq[i] += a * a;
                        if (t - s < W) aw[i] += a;
                    }
                }
            }
            __syncwarp();
            tc_ab_acc<P, DM>(dva, Pw, dYs, nn16); /* dV_w += P^T dY */
            __syncwarp();                         /* every lane has read P^T for dV */
            /* dS^T = P^T (dP^T - D), dP^T = V_w dY^T: element-wise on
             * accumulator fragments (same type, so the same element mapping);
             * each lane rewrites exactly the P^T entries it loaded. */
            tc_dsT<P, DM>(Xw, Vw, dYs, Dr, nk);
            __syncwarp();
            if constexpr (P::NARROW) { /* dS^T rounded into Pw by the owning lanes */
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const int e = (lr + 4 * i) * TC_LDS + lc + 8 * j;
                        Pw[e] = P::cvt(Xw[e]);
                    }
                __syncwarp();
            }
            tc_ab_acc<P, DM>(dka, Pw, Qs, nn16); /* dK_w += dS^T Q */
        }
        if (want_stats) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int o = 4; o <= 16; o <<= 1) {
                    am[i] += __shfl_xor_sync(0xffffffffu, am[i], o);
                    aq[i] += __shfl_xor_sync(0xffffffffu, aq[i], o);
                    aw[i] += __shfl_xor_sync(0xffffffffu, aw[i], o);
                }
                const int s = sw + lr + 4 * i;
                if (lc == 0 && s < T) {
                    const size_t at = ((size_t)b * H + h) * T + s;
                    if (mass) mass[at] = am[i];
                    if (sq) sq[at] = aq[i];
                    if (win) win[at] = aw[i];
                }
            }
        }
    }
    __syncthreads(); /* everyone is done with Qs and dYs: they become flush scratch */
    tc_flush<P, DM>(dva, scr, dv + (size_t)b * T * ldv + (size_t)sw * ldv + (size_t)cur_hv * dh, ldv, nrows,
                    dh, nn16, 1.0f, lane);
    tc_flush<P, DM>(dka, scr, dk + (size_t)b * T * ldk + (size_t)sw * ldk + (size_t)g * dh, ldk, nrows, dh,
                    nn16, scale, lane);
}

template <class P, int DM>
__global__ void __launch_bounds__(TC_THREADS, tc_min_blocks<P, DM>())
k_tc_bwd_q(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
           const float *__restrict__ dy, const float *__restrict__ lse,
           const float *__restrict__ Dv, float *__restrict__ dq, int T, int H, int KV, int NV,
           int dh, float scale, int vec4)
{
    typedef typename P::E E;
    TC_DYN_SMEM(smem);
    const int LD = DM + 8;
    E *Qs = (E *)smem, *dYs = Qs + TC_BQ * LD, *Ks = dYs + TC_BQ * LD, *Vs = Ks + TC_BK * LD;
    float *Xs = (float *)(Vs + TC_BK * LD), *Ls = Xs + TC_BQ * TC_LDS, *Ds = Ls + TC_BQ;
    E *Ps = P::NARROW ? (E *)(Ds + TC_BQ) : (E *)Xs; /* dS, the operand of dS K */
    const int qb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / KV), hv = h / (H / NV);
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, lr = lane & 3, lc = lane >> 2;
    const int t0 = qb * TC_BQ, tw = t0 + warp * 16;
    const int nk = (dh + P::K - 1) / P::K, nn16 = (dh + 15) >> 4;
    const float *kh = k + (size_t)b * T * ldk + (size_t)hk * dh;
    const float *vh = v + (size_t)b * T * ldv + (size_t)hv * dh;
    float *Xw = Xs + warp * 16 * TC_LDS;
    E *Pw = Ps + warp * 16 * TC_LDS;
    const E *Qw = Qs + warp * 16 * LD, *dYw = dYs + warp * 16 * LD;

    tc_load_tile<P, DM>(Qs, q + (size_t)b * T * ldq + (size_t)h * dh, t0, T, ldq, dh, vec4);
    tc_load_tile<P, DM>(dYs, dy + (size_t)b * T * ldq + (size_t)h * dh, t0, T, ldq, dh, vec4);
    tc_load_vec(Ls, lse + ((size_t)b * H + h) * T, t0, T);
    tc_load_vec(Ds, Dv + ((size_t)b * H + h) * T, t0, T);
    typename P::acc dqa[DM / 16];
#pragma unroll
    for (int n = 0; n < DM / 16; n++) wmma::fill_fragment(dqa[n], 0.0f);

    for (int kb = 0; kb <= qb; kb++) {
        const int s0 = kb * TC_BK;
        __syncthreads(); /* everyone is done with the previous K, V */
        tc_load_tile<P, DM>(Ks, kh, s0, T, ldk, dh, vec4);
        tc_load_tile<P, DM>(Vs, vh, s0, T, ldv, dh, vec4);
        __syncthreads();
        tc_abt<P, DM>(Xw, Qw, Ks, nk); /* S = Q_w K^T */
        __syncwarp();
        float p[4][8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int rr = lr + 4 * i, t = tw + rr;
            const float lt = Ls[warp * 16 + rr];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int c = lc + 8 * j;
                p[i][j] = (t < T && s0 + c <= t) ? expf(Xw[rr * TC_LDS + c] * scale - lt) : 0.0f;
            }
        }
        __syncwarp();                    /* S is read; Xw is reused */
        tc_abt<P, DM>(Xw, dYw, Vs, nk); /* dP = dY_w V^T */
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int rr = lr + 4 * i;
            const float dt = Ds[warp * 16 + rr];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int e = rr * TC_LDS + lc + 8 * j;
                Pw[e] = P::cvt(p[i][j] * (Xw[e] - dt)); /* dS (fp32: in place of dP) */
            }
        }
        __syncwarp();
        tc_ab_acc<P, DM>(dqa, Pw, Ks, nn16); /* dQ_w += dS K */
    }
    /* fp32 flush scratch, 16 x (DM + 8): the warp's rows of Qs, read only by
     * the warp (fp32); with bf16 tiles a quarter of Qs and dYs together, free
     * once every warp is done */
    if constexpr (P::NARROW)
        __syncthreads();
    else
        __syncwarp();
    tc_flush<P, DM>(dqa, (float *)Qs + warp * 16 * LD,
                    dq + (size_t)b * T * ldq + (size_t)tw * ldq + (size_t)h * dh, ldq, T - tw, dh, nn16,
                    scale, lane);
}

/* ------------------------------------------------------------------------ */
/* Host side                                                                 */
/* ------------------------------------------------------------------------ */

template <class P, int DM> static cudaError_t tc_optin(cudaError_t e, int max_optin)
{
    e = cuda_smem_optin(e, k_tc_fwd<P, DM>, tc_fwd_smem<P, DM>(), max_optin);
    e = cuda_smem_optin(e, k_tc_bwd_kv<P, DM>, tc_bwd_kv_smem<P, DM>(), max_optin);
    return cuda_smem_optin(e, k_tc_bwd_q<P, DM>, tc_bwd_q_smem<P, DM>(), max_optin);
}

gsink_status cuda_attention_tc_init(gsink_backend *be)
{
    int mx = CUDA_CTX(be)->max_smem_optin;
    cudaError_t e = tc_optin<tc_tf32, 64>(cudaSuccess, mx);
    e = tc_optin<tc_tf32, 128>(e, mx);
    e = tc_optin<tc_bf16, 64>(e, mx);
    e = tc_optin<tc_bf16, 128>(e, mx);
    return cuda_check(be, e, "attention (tensor cores): cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

static int tc_smem_fits(gsink_backend *be, size_t bytes)
{
    return bytes <= 48 * 1024 || bytes <= (size_t)CUDA_CTX(be)->max_smem_optin;
}

template <class P> static int tc_fits(gsink_backend *be, int dh)
{
    if (dh <= 64)
        return tc_smem_fits(be, tc_fwd_smem<P, 64>()) && tc_smem_fits(be, tc_bwd_kv_smem<P, 64>()) &&
               tc_smem_fits(be, tc_bwd_q_smem<P, 64>());
    if (dh <= 128)
        return tc_smem_fits(be, tc_fwd_smem<P, 128>()) && tc_smem_fits(be, tc_bwd_kv_smem<P, 128>()) &&
               tc_smem_fits(be, tc_bwd_q_smem<P, 128>());
    return 0;
}

int cuda_attention_tc_eligible(gsink_backend *be, const gsink_attn_shape *s)
{
    if (!be || !s) return 0;
    const int math = CUDA_CTX(be)->math;
    if (math != GSINK_CUDA_MATH_TF32 && math != GSINK_CUDA_MATH_BF16) return 0;
    /* The tensor-core kernels are causal only: a sliding window that cuts
     * (window < T) runs the exact FP32 kernels of attention.cu instead. */
    if (gsink__attn_lookback(s) < s->seq) return 0;
    const int H = s->n_heads, KV = s->n_kv_heads, NV = s->n_v_heads, dh = s->d_head;
    if (s->batch < 0 || s->seq < 0 || H <= 0 || KV <= 0 || NV <= 0 || dh <= 0 || H % KV ||
        H % NV || NV % KV || s->batch > 65535 || H > 65535)
        return 0;
    return math == GSINK_CUDA_MATH_BF16 ? tc_fits<tc_bf16>(be, dh) : tc_fits<tc_tf32>(be, dh);
}

static gsink_status tc_not_eligible(gsink_backend *be, const gsink_attn_shape *s)
{
    if (!s) return cuda_fail(be, GSINK_ERR_NULL_ARGUMENT, "attention (tensor cores): shape is NULL");
    return cuda_fail(be, GSINK_ERR_UNSUPPORTED,
                     "attention (tensor cores): not available for B=%d T=%d H=%d KV=%d NV=%d dh=%d "
                     "(needs TF32 or BF16 math, d_head <= 128, no sliding window shorter than T "
                     "(window %d) and enough shared memory)",
                     s->batch, s->seq, s->n_heads, s->n_kv_heads, s->n_v_heads, s->d_head, s->window);
}

static int tc_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

static int tc_bf16_math(gsink_backend *be) { return CUDA_CTX(be)->math == GSINK_CUDA_MATH_BF16; }

template <class P, int DM>
static gsink_status tc_fwd_dm(gsink_backend *be, const gsink_attn_shape *s, float *y, float *lse,
                              const float *q, const float *k, const float *v)
{
    const int T = s->seq, nb = (T + TC_BQ - 1) / TC_BQ;
    const float scale = gsink_attn_scale(s);
    const int vec4 = s->d_head % 4 == 0 && tc_aligned(q) && tc_aligned(k) && tc_aligned(v);
    /* (named first: a template-id would split the macro's arguments) */
    auto kern = k_tc_fwd<P, DM>;
    const size_t smem = tc_fwd_smem<P, DM>();
    GSINK_LAUNCH(kern, dim3(nb, s->n_heads, s->batch), TC_THREADS, smem,
                 CUDA_CTX(be)->stream)(q, k, v, y, lse, T, s->n_heads, s->n_kv_heads, s->n_v_heads,
                                       s->d_head, scale, vec4);
    return cuda_launch_check(be, P::what_fwd());
}

gsink_status cuda_attention_tc_fwd(gsink_backend *be, const gsink_attn_shape *s, float *y,
                                   float *lse, const float *q, const float *k, const float *v)
{
    if (!cuda_attention_tc_eligible(be, s)) return tc_not_eligible(be, s);
    if (s->batch == 0 || s->seq == 0) return GSINK_OK;
    gsink_status rc = cuda_enter(be);
    if (rc) return rc;
    if (tc_bf16_math(be))
        return s->d_head <= 64 ? tc_fwd_dm<tc_bf16, 64>(be, s, y, lse, q, k, v)
                               : tc_fwd_dm<tc_bf16, 128>(be, s, y, lse, q, k, v);
    return s->d_head <= 64 ? tc_fwd_dm<tc_tf32, 64>(be, s, y, lse, q, k, v)
                           : tc_fwd_dm<tc_tf32, 128>(be, s, y, lse, q, k, v);
}

template <class P, int DM>
static gsink_status tc_bwd_dm(gsink_backend *be, const gsink_attn_shape *s, float *dq, float *dk,
                              float *dv, const float *dy, const float *q, const float *k,
                              const float *v, const float *lse, const float *D,
                              gsink_attn_stats stats)
{
    cudaStream_t st = CUDA_CTX(be)->stream;
    const int T = s->seq, nb = (T + TC_BQ - 1) / TC_BQ;
    const int H = s->n_heads, KV = s->n_kv_heads, NV = s->n_v_heads, dh = s->d_head;
    const float scale = gsink_attn_scale(s);
    const int vec4 = dh % 4 == 0 && tc_aligned(q) && tc_aligned(k) && tc_aligned(v) && tc_aligned(dy);
    auto kern_kv = k_tc_bwd_kv<P, DM>;
    auto kern_q = k_tc_bwd_q<P, DM>;
    const size_t smem_kv = tc_bwd_kv_smem<P, DM>(), smem_q = tc_bwd_q_smem<P, DM>();
    GSINK_LAUNCH(kern_kv, dim3(nb, KV, s->batch), TC_THREADS, smem_kv, st)(
        q, k, v, dy, lse, D, dk, dv, stats.mass, stats.sq, stats.win, T, H, KV, NV, dh,
        s->sink_window, scale, vec4);
    gsink_status rc = cuda_launch_check(be, P::what_kv());
    if (rc) return rc;
    GSINK_LAUNCH(kern_q, dim3(nb, H, s->batch), TC_THREADS, smem_q, st)(
        q, k, v, dy, lse, D, dq, T, H, KV, NV, dh, scale, vec4);
    return cuda_launch_check(be, P::what_q());
}

gsink_status cuda_attention_tc_bwd(gsink_backend *be, const gsink_attn_shape *s, float *dq,
                                   float *dk, float *dv, const float *dy, const float *q,
                                   const float *k, const float *v, const float *lse,
                                   const float *D, gsink_attn_stats stats)
{
    if (!cuda_attention_tc_eligible(be, s)) return tc_not_eligible(be, s);
    if (s->batch == 0 || s->seq == 0) return GSINK_OK;
    gsink_status rc = cuda_enter(be);
    if (rc) return rc;
    if (tc_bf16_math(be))
        return s->d_head <= 64 ? tc_bwd_dm<tc_bf16, 64>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats)
                               : tc_bwd_dm<tc_bf16, 128>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
    return s->d_head <= 64 ? tc_bwd_dm<tc_tf32, 64>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats)
                           : tc_bwd_dm<tc_tf32, 128>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
}
