/*
 * attention_tc.cu - fused causal attention on TF32 tensor cores (the fast
 * path of the CUDA backend, used when the backend's math mode is TF32).
 *
 * Same contract as attention.cu (causal, GQA: query head h reads key head
 * h / (H/KV) and value head h / (H/NV), NV a multiple of KV; nothing of size
 * T x T is stored; bitwise reproducible), but every matrix product runs on
 * tensor cores through nvcuda::wmma with TF32 inputs (m16n16k8, 10-bit
 * mantissas, inputs rounded with __float_to_tf32 after each fragment load)
 * and fp32 accumulation. Softmax, masking, exponentials and the column
 * statistics stay in fp32 on the scalar units.
 *
 * Tiling. A block has 128 threads = 4 warps. Query tiles have 64 rows and key
 * tiles 64 keys (BQ == BK, so a query tile's causal key tiles are 0..qb).
 * Each warp owns 16 rows of its block's tile and computes everything of those
 * rows with 16x16x8 mma's; the only block-wide barriers are around the
 * loading of shared tiles. The head dimension is padded to DM = 64 (d_head <=
 * 64) or 128 (d_head <= 128); loads zero-fill columns [d_head, DM) and rows
 * past T, and the mma loops stop at ceil(d_head / 8) k-steps and
 * ceil(d_head / 16) output column blocks. Shared-memory rows are padded by 8
 * floats (strides DM + 8 and 64 + 8): wmma needs ldm a multiple of 4 floats
 * and 32-byte aligned tile pointers (every tile starts at a multiple of 8 rows
 * and 8 columns), and the pad spreads the rows of a fragment over the banks.
 *
 *   k_tc_fwd     grid (query tiles, H, B), heaviest (last) tiles first.
 *                Warp w: S = Q_w K^T (16 x 64) into its rows of the score
 *                tile Ss; online softmax on Ss by its own lanes; P V in
 *                16-column chunks through a per-warp 16 x 16 scratch, added
 *                to the running output O = O * alpha + P V held in registers.
 *   k_tc_bwd_kv  grid (key tiles, KV, B). Warp w owns 16 keys. For every query
 *                head of the group (in order) and every query tile at or below
 *                the diagonal (in order): S^T = K_w Q^T (16 keys x 64
 *                queries) into the warp's rows of Xs, P^T = exp(S^T scale -
 *                lse) by its lanes (which also sum the column statistics),
 *                dV_w += P^T dY, then dP^T = V_w dY^T and
 *                dS^T = P^T (dP^T - D) element-wise on accumulator fragments
 *                (P^T and a 16-row replica Dr of the tile's D loaded as
 *                accumulators: same fragment type, same element mapping,
 *                whatever it is), and dK_w += dS^T Q. dK_w and dV_w are
 *                accumulator fragments that stay in registers for the whole
 *                block; dV is flushed whenever the value head changes
 *                (NV == H: after every query head), dK at the end (times
 *                scale).
 *   k_tc_bwd_q   grid (query tiles, H, B), heaviest first. Warp w owns 16
 *                queries: S = Q_w K^T, dP = dY_w V^T, dS = P (dP - D),
 *                dQ_w += dS K over the key tiles 0..qb, in order.
 *
 * Scalar work on a warp's 16 x 64 tile (softmax, P, dS, statistics): lane l
 * owns rows (l % 4) + 4 i, i < 4, and columns (l / 4) + 8 j, j < 8. With the
 * 72-float row stride the 32 lanes of an access hit 32 different banks. A row
 * is spread over the 8 lanes with the same l % 4: row maxima and sums are
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
 * from the same a_ts the backward uses. Each lane sums its 8 query columns of
 * every query tile in tile order into registers (per owned key); after the
 * last query tile of head h the 8 lanes of a key combine their partials with
 * a fixed xor-4/8/16 butterfly (floating-point addition is commutative, so
 * all 8 lanes get the same bits) and lane l < 4 writes (=) the key's values.
 *
 * Determinism: every output element (y, lse, dq, dk, dv, statistics) has a
 * single owner (one lane, or one warp's accumulator fragment) that sums its
 * terms in a fixed order: key tiles in order, query heads and query tiles in
 * order, k-steps of each mma in order. No floating-point atomics; no
 * reduction depends on scheduling. The mma's internal summation order is
 * fixed by the hardware, so a rerun on the same GPU gives the same bits.
 *
 * Shared memory per block (bytes):
 *   DM  64: k_tc_fwd  79,872   k_tc_bwd_kv  97,024   k_tc_bwd_q  92,672
 *   DM 128: k_tc_fwd 129,024   k_tc_bwd_kv 162,560   k_tc_bwd_q 158,208
 * all above 48 KB, so cuda_attention_tc_init opts the kernels in (sm_80
 * allows 166,912 bytes, sm_90 232,448); a device whose opt-in limit is
 * smaller (or d_head > 128, or FP32 math) uses the exact kernels of
 * attention.cu instead (cuda_attention_tc_eligible).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"
#include "cuda_module.h"

#ifndef GSINK_CUDA_EMULATE
#include <mma.h> /* the emulation (cuda_emu.h) has its own nvcuda::wmma */
#define TC_DYN_SMEM(name) extern __shared__ __align__(128) float name[]
#else
#define TC_DYN_SMEM(name) GSINK_DYN_SMEM(name)
#endif

using namespace nvcuda;

#define TC_BQ 64      /* query rows per tile */
#define TC_BK 64      /* keys per tile */
#define TC_THREADS 128
#define TC_WARPS 4
#define TC_LDS (TC_BK + 8) /* row stride of the 64-wide score tiles */
#define TC_LDC 24          /* row stride of the forward's 16 x 16 chunk scratch */

typedef wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> tc_a_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> tc_b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> tc_b_col;
typedef wmma::fragment<wmma::accumulator, 16, 16, 8, float> tc_acc;

template <int DM> static size_t tc_fwd_smem()
{
    return sizeof(float) * ((size_t)3 * TC_BQ * (DM + 8) + TC_BQ * TC_LDS + TC_WARPS * 16 * TC_LDC);
}
template <int DM> static size_t tc_bwd_kv_smem()
{
    return sizeof(float) * ((size_t)4 * TC_BQ * (DM + 8) + TC_BQ * TC_LDS + 16 * TC_LDS + TC_BQ);
}
template <int DM> static size_t tc_bwd_q_smem()
{
    return sizeof(float) * ((size_t)4 * TC_BQ * (DM + 8) + TC_BQ * TC_LDS + 2 * TC_BQ);
}

/* Loads a fragment and rounds its elements to TF32. */
template <class F> __device__ __forceinline__ void tc_load(F &f, const float *p, unsigned ldm)
{
    wmma::load_matrix_sync(f, p, ldm);
#pragma unroll
    for (int i = 0; i < f.num_elements; i++) f.x[i] = wmma::__float_to_tf32(f.x[i]);
}

/* Rows [row0, row0 + 64) of a (T, ld) head slice into a 64 x (DM + 8) tile,
 * zero-filling rows >= T and columns [dh, DM). vec4: dh % 4 == 0 and the
 * slice is 16-byte aligned, so rows can be read as float4. */
template <int DM>
__device__ __forceinline__ void tc_load_tile(float *sh, const float *g, int row0, int T, size_t ld,
                                             int dh, int vec4)
{
    const int LD = DM + 8;
    if (vec4) {
        for (int idx = threadIdx.x; idx < TC_BQ * (DM / 4); idx += TC_THREADS) {
            int r = idx / (DM / 4), d = (idx % (DM / 4)) * 4, t = row0 + r;
            float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (t < T && d < dh) x = *(const float4 *)(g + (size_t)t * ld + d);
            *(float4 *)(sh + r * LD + d) = x;
        }
    } else {
        for (int idx = threadIdx.x; idx < TC_BQ * DM; idx += TC_THREADS) {
            int r = idx / DM, d = idx % DM, t = row0 + r;
            sh[r * LD + d] = (t < T && d < dh) ? g[(size_t)t * ld + d] : 0.0f;
        }
    }
}

__device__ __forceinline__ void tc_load_vec(float *sh, const float *g, int row0, int T)
{
    for (int r = threadIdx.x; r < TC_BQ; r += TC_THREADS) sh[r] = row0 + r < T ? g[row0 + r] : 0.0f;
}

/* acc (16 x 64 as four 16 x 16 blocks) = A (16 x DM rows of a tile, stride
 * DM + 8) times B^T, B the 64 x DM tile at Bt: the score-like products
 * Q K^T, K Q^T, dY V^T, V dY^T of one warp. */
template <int DM>
__device__ __forceinline__ void tc_abt_frag(tc_acc (&acc)[4], const float *A, const float *Bt, int nk8)
{
    const int LD = DM + 8;
#pragma unroll
    for (int n = 0; n < 4; n++) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll 2
    for (int kk = 0; kk < nk8; kk++) {
        tc_a_row a;
        tc_load(a, A + kk * 8, LD);
#pragma unroll
        for (int n = 0; n < 4; n++) {
            tc_b_col b;
            tc_load(b, Bt + n * 16 * LD + kk * 8, LD);
            wmma::mma_sync(acc[n], a, b, acc[n]);
        }
    }
}

/* C (16 x 64, row stride TC_LDS) = A B^T as in tc_abt_frag. */
template <int DM>
__device__ __forceinline__ void tc_abt(float *C, const float *A, const float *Bt, int nk8)
{
    tc_acc acc[4];
    tc_abt_frag<DM>(acc, A, Bt, nk8);
#pragma unroll
    for (int n = 0; n < 4; n++) wmma::store_matrix_sync(C + n * 16, acc[n], TC_LDS, wmma::mem_row_major);
}

/* X (16 x 64, stride TC_LDS) holds a warp's P^T; replaces it with
 * dS^T = P^T (A Bt^T - Dr), A Bt^T = V_w dY^T as in tc_abt_frag and Dr 16
 * identical rows of the tile's D (stride TC_LDS). Element-wise on
 * accumulator fragments; each lane stores exactly the entries it loaded. */
template <int DM>
__device__ __forceinline__ void tc_dsT(float *X, const float *A, const float *Bt, const float *Dr, int nk8)
{
    tc_acc acc[4];
    tc_abt_frag<DM>(acc, A, Bt, nk8);
#pragma unroll
    for (int n = 0; n < 4; n++) {
        tc_acc pf, df;
        wmma::load_matrix_sync(pf, X + n * 16, TC_LDS, wmma::mem_row_major);
        wmma::load_matrix_sync(df, Dr + n * 16, TC_LDS, wmma::mem_row_major);
#pragma unroll
        for (int e = 0; e < pf.num_elements; e++) acc[n].x[e] = pf.x[e] * (acc[n].x[e] - df.x[e]);
        wmma::store_matrix_sync(X + n * 16, acc[n], TC_LDS, wmma::mem_row_major);
    }
}

/* acc[n] += A (16 x 64 at A, stride TC_LDS) times the 64 x DM tile B,
 * columns [16 n, 16 n + 16) for n < nn16. */
template <int DM>
__device__ __forceinline__ void tc_ab_acc(tc_acc (&acc)[DM / 16], const float *A, const float *B, int nn16)
{
    const int LD = DM + 8;
#pragma unroll 1
    for (int kk = 0; kk < TC_BK / 8; kk++) {
        tc_a_row a;
        tc_load(a, A + kk * 8, TC_LDS);
#pragma unroll
        for (int n = 0; n < DM / 16; n++) {
            if (n < nn16) {
                tc_b_row b;
                tc_load(b, B + kk * 8 * LD + n * 16, LD);
                wmma::mma_sync(acc[n], a, b, acc[n]);
            }
        }
    }
}

/* Writes a warp's 16 x DM accumulator (times mul) to rows [0, nrows) and
 * columns [0, dh) of out (row stride ld), through the warp's 16 x (DM + 8)
 * scratch region; coalesced row by row. */
template <int DM>
__device__ __forceinline__ void tc_flush(tc_acc (&acc)[DM / 16], float *scr, float *out, size_t ld,
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

template <int DM>
__global__ void __launch_bounds__(TC_THREADS)
k_tc_fwd(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
         float *__restrict__ y, float *__restrict__ lse, int T, int H, int KV, int NV, int dh,
         float scale, int vec4)
{
    TC_DYN_SMEM(smem);
    const int LD = DM + 8;
    float *Qs = smem, *Ks = Qs + TC_BQ * LD, *Vs = Ks + TC_BK * LD, *Ss = Vs + TC_BK * LD;
    float *Cs = Ss + TC_BQ * TC_LDS;
    const int qb = gridDim.x - 1 - blockIdx.x; /* heaviest tiles first */
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / KV), hv = h / (H / NV);
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const float *qh = q + (size_t)b * T * ldq + (size_t)h * dh;
    const float *kh = k + (size_t)b * T * ldk + (size_t)hk * dh;
    const float *vh = v + (size_t)b * T * ldv + (size_t)hv * dh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, lr = lane & 3, lc = lane >> 2;
    const int t0 = qb * TC_BQ, tw = t0 + warp * 16; /* first query row of the warp */
    const int nk8 = (dh + 7) >> 3, nn16 = (dh + 15) >> 4;
    float *Sw = Ss + warp * 16 * TC_LDS, *Cw = Cs + warp * 16 * TC_LDC;
    const float *Qw = Qs + warp * 16 * LD;

    tc_load_tile<DM>(Qs, qh, t0, T, ldq, dh, vec4);
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
        tc_load_tile<DM>(Ks, kh, s0, T, ldk, dh, vec4);
        tc_load_tile<DM>(Vs, vh, s0, T, ldv, dh, vec4);
        __syncthreads();
        tc_abt<DM>(Sw, Qw, Ks, nk8);
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
                Sw[rr * TC_LDS + lc + 8 * j] = p;
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
        tc_a_row pa[TC_BK / 8];
#pragma unroll
        for (int kk = 0; kk < TC_BK / 8; kk++) tc_load(pa[kk], Sw + kk * 8, TC_LDS);
#pragma unroll
        for (int n = 0; n < DM / 16; n++) {
            if (n < nn16) {
                tc_acc acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int kk = 0; kk < TC_BK / 8; kk++) {
                    tc_b_row bv;
                    tc_load(bv, Vs + kk * 8 * LD + n * 16, LD);
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

template <int DM>
__global__ void __launch_bounds__(TC_THREADS)
k_tc_bwd_kv(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
            const float *__restrict__ dy, const float *__restrict__ lse,
            const float *__restrict__ Dv, float *__restrict__ dk, float *__restrict__ dv,
            float *__restrict__ mass, float *__restrict__ sq, float *__restrict__ win, int T, int H,
            int KV, int NV, int dh, int W, float scale, int vec4)
{
    TC_DYN_SMEM(smem);
    const int LD = DM + 8;
    float *Ks = smem, *Vs = Ks + TC_BK * LD, *Qs = Vs + TC_BK * LD, *dYs = Qs + TC_BQ * LD;
    float *Xs = dYs + TC_BQ * LD, *Dr = Xs + TC_BK * TC_LDS, *Ls = Dr + 16 * TC_LDS;
    const int kb = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int G = H / KV, vrep = H / NV;
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, lr = lane & 3, lc = lane >> 2;
    const int s0 = kb * TC_BK, sw = s0 + warp * 16; /* first key of the warp */
    const int nqb = (T + TC_BQ - 1) / TC_BQ;
    const int nk8 = (dh + 7) >> 3, nn16 = (dh + 15) >> 4;
    const int nrows = T - sw; /* keys of the warp below T (may be <= 0) */
    const bool want_stats = mass || sq || win;
    float *Xw = Xs + warp * 16 * TC_LDS;
    const float *Kw = Ks + warp * 16 * LD, *Vw = Vs + warp * 16 * LD;

    tc_load_tile<DM>(Ks, k + (size_t)b * T * ldk + (size_t)g * dh, s0, T, ldk, dh, vec4);
    tc_acc dka[DM / 16], dva[DM / 16];
#pragma unroll
    for (int n = 0; n < DM / 16; n++) {
        wmma::fill_fragment(dka[n], 0.0f);
        wmma::fill_fragment(dva[n], 0.0f);
    }

    int cur_hv = -1;
    for (int h = g * G; h < (g + 1) * G; h++) {
        const int hv = h / vrep;
        if (hv != cur_hv) {
            __syncthreads(); /* everyone is done with Vs and dYs */
            if (cur_hv >= 0) {
                tc_flush<DM>(dva, dYs + warp * 16 * LD,
                             dv + (size_t)b * T * ldv + (size_t)sw * ldv + (size_t)cur_hv * dh, ldv,
                             nrows, dh, nn16, 1.0f, lane);
#pragma unroll
                for (int n = 0; n < DM / 16; n++) wmma::fill_fragment(dva[n], 0.0f);
            }
            cur_hv = hv;
            tc_load_tile<DM>(Vs, v + (size_t)b * T * ldv + (size_t)hv * dh, s0, T, ldv, dh, vec4);
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
            tc_load_tile<DM>(Qs, qh, t0, T, ldq, dh, vec4);
            tc_load_tile<DM>(dYs, dyh, t0, T, ldq, dh, vec4);
            tc_load_vec(Ls, lh, t0, T);
            for (int idx = threadIdx.x; idx < 16 * TC_BQ; idx += TC_THREADS) {
                const int t = t0 + idx % TC_BQ; /* 16 copies of the tile's D row */
                Dr[(idx / TC_BQ) * TC_LDS + idx % TC_BQ] = t < T ? Dh[t] : 0.0f;
            }
            __syncthreads();
            /* P^T = exp(K_w Q^T scale - lse), 16 keys x 64 queries */
            tc_abt<DM>(Xw, Kw, Qs, nk8);
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
                    if (want_stats) {
                        am[i] += a;
                        aq[i] += a * a;
                        if (t - s < W) aw[i] += a;
                    }
                }
            }
            __syncwarp();
            tc_ab_acc<DM>(dva, Xw, dYs, nn16); /* dV_w += P^T dY */
            __syncwarp();                      /* every lane has read P^T for dV */
            /* dS^T = P^T (dP^T - D), dP^T = V_w dY^T: element-wise on
             * accumulator fragments (same type, so the same element mapping);
             * each lane rewrites exactly the P^T entries it loaded. */
            tc_dsT<DM>(Xw, Vw, dYs, Dr, nk8);
            __syncwarp();
            tc_ab_acc<DM>(dka, Xw, Qs, nn16); /* dK_w += dS^T Q */
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
    tc_flush<DM>(dva, dYs + warp * 16 * LD,
                 dv + (size_t)b * T * ldv + (size_t)sw * ldv + (size_t)cur_hv * dh, ldv, nrows, dh,
                 nn16, 1.0f, lane);
    tc_flush<DM>(dka, Qs + warp * 16 * LD, dk + (size_t)b * T * ldk + (size_t)sw * ldk + (size_t)g * dh,
                 ldk, nrows, dh, nn16, scale, lane);
}

template <int DM>
__global__ void __launch_bounds__(TC_THREADS)
k_tc_bwd_q(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
           const float *__restrict__ dy, const float *__restrict__ lse,
           const float *__restrict__ Dv, float *__restrict__ dq, int T, int H, int KV, int NV,
           int dh, float scale, int vec4)
{
    TC_DYN_SMEM(smem);
    const int LD = DM + 8;
    float *Qs = smem, *dYs = Qs + TC_BQ * LD, *Ks = dYs + TC_BQ * LD, *Vs = Ks + TC_BK * LD;
    float *Xs = Vs + TC_BK * LD, *Ls = Xs + TC_BQ * TC_LDS, *Ds = Ls + TC_BQ;
    const int qb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / KV), hv = h / (H / NV);
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, lr = lane & 3, lc = lane >> 2;
    const int t0 = qb * TC_BQ, tw = t0 + warp * 16;
    const int nk8 = (dh + 7) >> 3, nn16 = (dh + 15) >> 4;
    const float *kh = k + (size_t)b * T * ldk + (size_t)hk * dh;
    const float *vh = v + (size_t)b * T * ldv + (size_t)hv * dh;
    float *Xw = Xs + warp * 16 * TC_LDS;
    const float *Qw = Qs + warp * 16 * LD, *dYw = dYs + warp * 16 * LD;

    tc_load_tile<DM>(Qs, q + (size_t)b * T * ldq + (size_t)h * dh, t0, T, ldq, dh, vec4);
    tc_load_tile<DM>(dYs, dy + (size_t)b * T * ldq + (size_t)h * dh, t0, T, ldq, dh, vec4);
    tc_load_vec(Ls, lse + ((size_t)b * H + h) * T, t0, T);
    tc_load_vec(Ds, Dv + ((size_t)b * H + h) * T, t0, T);
    tc_acc dqa[DM / 16];
#pragma unroll
    for (int n = 0; n < DM / 16; n++) wmma::fill_fragment(dqa[n], 0.0f);

    for (int kb = 0; kb <= qb; kb++) {
        const int s0 = kb * TC_BK;
        __syncthreads(); /* everyone is done with the previous K, V */
        tc_load_tile<DM>(Ks, kh, s0, T, ldk, dh, vec4);
        tc_load_tile<DM>(Vs, vh, s0, T, ldv, dh, vec4);
        __syncthreads();
        tc_abt<DM>(Xw, Qw, Ks, nk8); /* S = Q_w K^T */
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
        __syncwarp();                  /* S is read; Xw is reused */
        tc_abt<DM>(Xw, dYw, Vs, nk8); /* dP = dY_w V^T */
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int rr = lr + 4 * i;
            const float dt = Ds[warp * 16 + rr];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float *x = Xw + rr * TC_LDS + lc + 8 * j;
                *x = p[i][j] * (*x - dt); /* dS */
            }
        }
        __syncwarp();
        tc_ab_acc<DM>(dqa, Xw, Ks, nn16); /* dQ_w += dS K */
    }
    /* The warp's rows of Qs are read only by the warp: they are its scratch. */
    __syncwarp();
    tc_flush<DM>(dqa, Qs + warp * 16 * LD, dq + (size_t)b * T * ldq + (size_t)tw * ldq + (size_t)h * dh,
                 ldq, T - tw, dh, nn16, scale, lane);
}

/* ------------------------------------------------------------------------ */
/* Host side                                                                 */
/* ------------------------------------------------------------------------ */

template <int DM> static cudaError_t tc_optin(int max_optin)
{
    cudaError_t e = cuda_smem_optin(cudaSuccess, k_tc_fwd<DM>, tc_fwd_smem<DM>(), max_optin);
    e = cuda_smem_optin(e, k_tc_bwd_kv<DM>, tc_bwd_kv_smem<DM>(), max_optin);
    return cuda_smem_optin(e, k_tc_bwd_q<DM>, tc_bwd_q_smem<DM>(), max_optin);
}

gsink_status cuda_attention_tc_init(gsink_backend *be)
{
    int mx = CUDA_CTX(be)->max_smem_optin;
    cudaError_t e = tc_optin<64>(mx);
    if (e == cudaSuccess) e = tc_optin<128>(mx);
    return cuda_check(be, e, "attention (tf32): cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

static int tc_smem_fits(gsink_backend *be, size_t bytes)
{
    return bytes <= 48 * 1024 || bytes <= (size_t)CUDA_CTX(be)->max_smem_optin;
}

int cuda_attention_tc_eligible(gsink_backend *be, const gsink_attn_shape *s)
{
    if (!be || !s || CUDA_CTX(be)->math == GSINK_CUDA_MATH_FP32) return 0;
    const int H = s->n_heads, KV = s->n_kv_heads, NV = s->n_v_heads, dh = s->d_head;
    if (s->batch < 0 || s->seq < 0 || H <= 0 || KV <= 0 || NV <= 0 || dh <= 0 || H % KV ||
        H % NV || NV % KV || s->batch > 65535 || H > 65535)
        return 0;
    if (dh <= 64)
        return tc_smem_fits(be, tc_fwd_smem<64>()) && tc_smem_fits(be, tc_bwd_kv_smem<64>()) &&
               tc_smem_fits(be, tc_bwd_q_smem<64>());
    if (dh <= 128)
        return tc_smem_fits(be, tc_fwd_smem<128>()) && tc_smem_fits(be, tc_bwd_kv_smem<128>()) &&
               tc_smem_fits(be, tc_bwd_q_smem<128>());
    return 0;
}

static gsink_status tc_not_eligible(gsink_backend *be, const gsink_attn_shape *s)
{
    if (!s) return cuda_fail(be, GSINK_ERR_NULL_ARGUMENT, "attention (tf32): shape is NULL");
    return cuda_fail(be, GSINK_ERR_UNSUPPORTED,
                     "attention (tf32): not available for B=%d T=%d H=%d KV=%d NV=%d dh=%d (needs "
                     "TF32 math, d_head <= 128 and enough shared memory)",
                     s->batch, s->seq, s->n_heads, s->n_kv_heads, s->n_v_heads, s->d_head);
}

static int tc_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

template <int DM>
static gsink_status tc_fwd_dm(gsink_backend *be, const gsink_attn_shape *s, float *y, float *lse,
                              const float *q, const float *k, const float *v)
{
    const int T = s->seq, nb = (T + TC_BQ - 1) / TC_BQ;
    const float scale = 1.0f / sqrtf((float)s->d_head);
    const int vec4 = s->d_head % 4 == 0 && tc_aligned(q) && tc_aligned(k) && tc_aligned(v);
    GSINK_LAUNCH(k_tc_fwd<DM>, dim3(nb, s->n_heads, s->batch), TC_THREADS, tc_fwd_smem<DM>(),
                 CUDA_CTX(be)->stream)(q, k, v, y, lse, T, s->n_heads, s->n_kv_heads, s->n_v_heads,
                                       s->d_head, scale, vec4);
    return cuda_launch_check(be, "attention forward (tf32)");
}

gsink_status cuda_attention_tc_fwd(gsink_backend *be, const gsink_attn_shape *s, float *y,
                                   float *lse, const float *q, const float *k, const float *v)
{
    if (!cuda_attention_tc_eligible(be, s)) return tc_not_eligible(be, s);
    if (s->batch == 0 || s->seq == 0) return GSINK_OK;
    gsink_status rc = cuda_enter(be);
    if (rc) return rc;
    return s->d_head <= 64 ? tc_fwd_dm<64>(be, s, y, lse, q, k, v)
                           : tc_fwd_dm<128>(be, s, y, lse, q, k, v);
}

template <int DM>
static gsink_status tc_bwd_dm(gsink_backend *be, const gsink_attn_shape *s, float *dq, float *dk,
                              float *dv, const float *dy, const float *q, const float *k,
                              const float *v, const float *lse, const float *D,
                              gsink_attn_stats stats)
{
    cudaStream_t st = CUDA_CTX(be)->stream;
    const int T = s->seq, nb = (T + TC_BQ - 1) / TC_BQ;
    const int H = s->n_heads, KV = s->n_kv_heads, NV = s->n_v_heads, dh = s->d_head;
    const float scale = 1.0f / sqrtf((float)dh);
    const int vec4 = dh % 4 == 0 && tc_aligned(q) && tc_aligned(k) && tc_aligned(v) && tc_aligned(dy);
    GSINK_LAUNCH(k_tc_bwd_kv<DM>, dim3(nb, KV, s->batch), TC_THREADS, tc_bwd_kv_smem<DM>(), st)(
        q, k, v, dy, lse, D, dk, dv, stats.mass, stats.sq, stats.win, T, H, KV, NV, dh,
        s->sink_window, scale, vec4);
    gsink_status rc = cuda_launch_check(be, "attention backward (tf32, dK, dV)");
    if (rc) return rc;
    GSINK_LAUNCH(k_tc_bwd_q<DM>, dim3(nb, H, s->batch), TC_THREADS, tc_bwd_q_smem<DM>(), st)(
        q, k, v, dy, lse, D, dq, T, H, KV, NV, dh, scale, vec4);
    return cuda_launch_check(be, "attention backward (tf32, dQ)");
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
    return s->d_head <= 64 ? tc_bwd_dm<64>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats)
                           : tc_bwd_dm<128>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
}
