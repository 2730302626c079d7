/*
 * attention_mma.cu - fused causal attention in BF16 on tensor cores through
 * mma.sync.m16n8k16 and ldmatrix (FlashAttention-2 style), selected instead
 * of the wmma kernels of attention_tc.cu for BF16 math when the backend was
 * created with GSINK_CUDA_ATTENTION=mma or mma4 (cuda_attention_mma_eligible).
 *
 * Same contract as attention_tc.cu (causal, GQA: query head h reads key head
 * h / (H/KV) and value head h / (H/NV), NV a multiple of KV; inputs fp32 in
 * global memory, rounded once to bf16 (__float2bfloat16_rn, to nearest even)
 * when they are written to shared memory; fp32 accumulation; nothing of size
 * T x T stored; no atomics, bitwise reproducible). The difference is where S
 * and P live: the m16n8k16 fragment layouts are documented (mma_sm80.cuh),
 * so the fp32 accumulator of S = Q K^T is softmaxed in the registers that
 * hold it, and its entries are exactly those of the A fragment of P V (a
 * row's columns 2t, 2t+1 of key blocks 2kk and 2kk+1 are, packed to bf16,
 * the registers of k-step kk), so P never goes through shared memory. The
 * same holds for P^T, dP^T, dS^T in the dK/dV pass and P, dP, dS in the dQ
 * pass.
 *
 * Tiling. A block has NW warps (template parameter: 8 with
 * GSINK_CUDA_ATTENTION=mma, 4 with mma4), each owning 16 of the block's
 * 16 NW own rows (queries in k_mma_fwd and k_mma_bwd_q, keys in
 * k_mma_bwd_kv), and streams tiles of 64 rows of the other side (keys,
 * queries). With NW = 8 a streamed tile serves 128 rows, which halves the
 * global / L2 traffic of K and V (Q and dY) per flop against NW = 4, at
 * about the same registers per thread (table below; they set the resident
 * warps per SM: 65536 / (registers x 32) rounded down to whole blocks). Which
 * is faster is for a GPU to tell. 16 NW is a multiple of 64, so the
 * causal key tiles of query block qb are 0 .. 16 NW (qb + 1) / 64 - 1; on
 * those that cross the diagonal the mask is applied, and a warp that has no
 * (query, key) pair in a tile skips its math there (not the loads and
 * barriers). The head dimension is padded to DM = 64 (d_head <= 64) or 128
 * (<= 128) with zeros (loads zero-fill columns [d_head, DM) and rows >= T).
 * Shared tiles are bf16, rows x DM with a row stride of DM + 8 elements:
 * rows stay 16-byte aligned for
 * ldmatrix and the 8 row addresses of one 8 x 8 matrix fall on 8 different
 * 16-byte bank groups (row stride = 4 words mod 32). Operand fragments come
 * from shared memory through ldmatrix: row-major A (Q, K, V, dY rows of the
 * warp) and B = M^T (M's rows are the n index: K for Q K^T, Q for K Q^T,
 * V for dY V^T, dY for V dY^T) with ldmatrix.x4; B = M (M's rows are the k
 * index: V for P V, dY for P^T dY, Q for dS^T Q, K for dS K) with
 * ldmatrix.x4.trans. The fp32 tiles are read from global memory into
 * registers (float4 when d_head % 4 == 0 and the pointers are 16-byte
 * aligned) and written to shared memory rounded to bf16 (tile_fetch4 /
 * tile_put4). Where a loop streams K and V tiles (k_mma_fwd, k_mma_bwd_q),
 * the next tiles' global loads are issued before a phase of the current
 * tile's math and stored after it into the other half of a double buffer
 * (tile_prefetch: half a tile per phase, at most 32 registers a thread), so
 * one __syncthreads per tile suffices. Score-like products are computed in
 * halves of 32 keys (or queries) where that keeps fewer accumulators live.
 *
 *   k_mma_fwd     grid (query blocks, H, B), heaviest (last) first. The
 *                 warp's Q fragments are loaded once into registers, except
 *                 with DM 128 and 4 warps, where they would not fit next to
 *                 O, S and the prefetch (ptxas spills): read from shared
 *                 memory per key tile then (as FlashAttention-2 does by
 *                 default).
 *                 Per key tile: S = Q_w K^T (16 x 64 fp32 accumulators, 8
 *                 n-blocks, in two halves: the next K's prefetch phases),
 *                 online softmax in registers (each lane holds 2 rows x 16
 *                 columns: rows g and g + 8; a row's maximum and sum over its
 *                 4 lanes by shuffles with xor 1, 2), P packed to bf16 A
 *                 fragments, O = O alpha + P V in fp32 registers (16 x DM).
 *                 Causal masking only on tiles crossing the diagonal. Writes
 *                 y and lse.
 *                 P V runs in two halves of 32 keys: the next V's phases.
 *   k_mma_bwd_kv  grid (key blocks, KV, B). Warp w owns 16 keys; for every
 *                 query head of the group and every query tile with a query
 *                 at or after the block's first key, in order: S^T = K_w Q^T,
 *                 P^T = exp(S^T scale
 *                 - lse) in registers (fp32; also summed into the column
 *                 statistics), dV_w += P^T dY, dP^T = V_w dY^T,
 *                 dS^T = P^T (dP^T - D), dK_w += dS^T Q. dK_w and dV_w stay in
 *                 registers for the block; dV is written whenever the value
 *                 head changes (NV == H: after every query head), dK at the
 *                 end (times scale). A query tile is done in two halves of
 *                 32 queries; its Q, dY, lse and D are loaded between two
 *                 barriers (no prefetch: dK_w and dV_w take 64 or 128
 *                 registers already, and a register-staged prefetch of Q
 *                 and dY took ptxas to 255 registers and spills).
 *   k_mma_bwd_q   grid (query blocks, H, B), heaviest first. Warp w owns 16
 *                 queries: S = Q_w K^T, dP = dY_w V^T, dS = P (dP - D),
 *                 dQ_w += dS K over the causal key tiles in order, in halves
 *                 of 32 keys (V of the next tile prefetched during the
 *                 products, K during dS K).
 * D = rowsum(dY * Y) comes from attention.cu (k_attn_dot). Exponentials are
 * exp2f of scores premultiplied by scale log2(e) (lse is kept in natural
 * units in memory).
 *
 * Column statistics (k_mma_bwd_kv, for query head h and key s < T):
 *   mass[s] = sum_{t>=s} a_ts, sq[s] = sum_{t>=s} a_ts^2,
 *   win[s]  = sum_{s<=t<s+W} a_ts,
 * from the fp32 P^T (not its bf16 copy). Each lane sums its 16 query columns
 * of each tile, tiles in order, for its two keys; after the last query tile
 * the 4 lanes of a key combine their partials with a fixed xor-1/2 butterfly
 * and lane t == 0 writes (=) the key's values.
 *
 * Determinism: every output element has one owner (a lane's accumulator
 * entry) that sums its terms in a fixed order (key tiles, query heads and
 * query tiles in order; k-steps of the mma's in order); the mma's internal
 * order is fixed by the hardware.
 *
 * Shared memory per block (bytes; fwd: Q + double-buffered K, V; bwd_kv:
 * K, V, Q, dY + lse, D vectors; bwd_q: Q, dY + double-buffered K, V), opted
 * in by cuda_attention_mma_init, and registers a thread (ptxas, sm_90,
 * CUDA 13; no spills, sm_80 within a few registers of these):
 *                    k_mma_fwd          k_mma_bwd_kv       k_mma_bwd_q
 *   NW 8, DM  64      55,296  162        55,808  168        73,728  128
 *   NW 8, DM 128     104,448  244       104,960  240       139,264  213
 *   NW 4, DM  64      46,080  168        37,376  162        55,296  154
 *   NW 4, DM 128      87,040  253        70,144  244       104,448  240
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"
#include "cuda_module.h"
#include "mma_sm80.cuh"

#ifndef GSINK_CUDA_EMULATE
#include <cuda_bf16.h>
#define MMA_DYN_SMEM(name) extern __shared__ __align__(128) float name[]
#else
#define MMA_DYN_SMEM(name) GSINK_DYN_SMEM(name)
#endif

#define MMA_TILE 64 /* rows of a streamed tile: keys (fwd, dQ), queries (dK/dV) */
#define MMA_LOG2E 1.4426950408889634f
#define MMA_LN2 0.6931471805599453f

typedef __nv_bfloat16 bf16;

/* ---- tiles: global fp32 -> registers -> shared bf16 ---- */

/* Element 4 idx .. 4 idx + 3 of the 64 x DM tile of rows [row0, row0 + 64)
 * of a (T, ld) head slice, zero outside rows < T and columns < dh. vec4:
 * dh % 4 == 0 and the slice is 16-byte aligned. */
template <int DM>
__device__ __forceinline__ float4 tile_fetch4(const float *g, int idx, int row0, int T, size_t ld, int dh, int vec4)
{
    const int t = row0 + idx / (DM / 4), d = (idx % (DM / 4)) * 4;
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t < T && d < dh) {
        const float *p = g + (size_t)t * ld + d;
        if (vec4) {
            x = *(const float4 *)p;
        } else {
            x.x = p[0];
            if (d + 1 < dh) x.y = p[1];
            if (d + 2 < dh) x.z = p[2];
            if (d + 3 < dh) x.w = p[3];
        }
    }
    return x;
}

/* ... and into a 64 x (DM + 8) bf16 tile, rounded to nearest even. */
template <int DM> __device__ __forceinline__ void tile_put4(bf16 *sh, int idx, float4 x)
{
    __nv_bfloat162 *p = (__nv_bfloat162 *)(sh + (idx / (DM / 4)) * (DM + 8) + (idx % (DM / 4)) * 4);
    p[0] = __floats2bfloat162_rn(x.x, x.y);
    p[1] = __floats2bfloat162_rn(x.z, x.w);
}

/* A register-staged prefetch of a 64 x DM tile over the two phases (j = 0,
 * 1) of a loop step: begin(j) issues the global loads of half j of the tile
 * before phase j's math, end(j) stores them to shared memory after it. The
 * tile's 16 DM float4 are 16 DM / NT a thread (thread x taking float4
 * x + NT i), so a phase stages 8 DM / NT float4 (at most 32 registers with
 * DM 128 and 4 warps). Holding a whole tile over both phases instead costs
 * ptxas far more registers than the staged values (up to 255 and spills). */
template <int DM, int NT> struct tile_prefetch {
    enum { N = 8 * DM / NT, CHUNK_F4 = N * NT };
    static_assert(N >= 1 && N <= 8 && 2 * CHUNK_F4 == 16 * DM, "tile_prefetch: two chunks of at most 8 float4");
    float4 r[N] = {}; /* (zero: the host compiler cannot see that end(j) follows begin(j)) */
    __device__ __forceinline__ void begin(int j, const float *g, int row0, int T, size_t ld, int dh, int vec4)
    {
        const int base = j * CHUNK_F4 + threadIdx.x;
#pragma unroll
        for (int i = 0; i < N; i++) r[i] = tile_fetch4<DM>(g, base + i * NT, row0, T, ld, dh, vec4);
    }
    __device__ __forceinline__ void end(int j, bf16 *sh) const
    {
        const int base = j * CHUNK_F4 + threadIdx.x;
#pragma unroll
        for (int i = 0; i < N; i++) tile_put4<DM>(sh, base + i * NT, r[i]);
    }
};

/* ROWS rows straight to shared memory, a few float4 in flight at a time. */
template <int DM, int ROWS, int NT>
__device__ __forceinline__ void tile_load(bf16 *sh, const float *g, int row0, int T, size_t ld, int dh, int vec4)
{
    static_assert(ROWS * DM / 4 % NT == 0, "tile_load: whole float4 a thread");
#pragma unroll 4
    for (int i = 0; i < ROWS * DM / 4 / NT; i++) {
        const int idx = threadIdx.x + i * NT;
        tile_put4<DM>(sh, idx, tile_fetch4<DM>(g, idx, row0, T, ld, dh, vec4));
    }
}

/* ---- warp fragments and products (layouts: mma_sm80.cuh) ---- */

/* A fragment: rows [0, 16), columns [k0, k0 + 16) of a bf16 tile (stride LD). */
template <int LD> __device__ __forceinline__ void frag_a(uint32_t (&a)[4], const bf16 *A, int k0, int lane)
{
    ldmatrix_x4(a, A + (lane & 15) * LD + k0 + 8 * (lane >> 4));
}

/* B fragments of B = M^T (M's rows are B's columns) for the n-blocks
 * [n0, n0 + 8) (b[0], b[1]) and [n0 + 8, n0 + 16) (b[2], b[3]), k-step k0. */
template <int LD>
__device__ __forceinline__ void frag_bt(uint32_t (&b)[4], const bf16 *M, int n0, int k0, int lane)
{
    ldmatrix_x4(b, M + (n0 + (lane & 7) + 8 * (lane >> 4)) * LD + k0 + 8 * ((lane >> 3) & 1));
}

/* B fragments of B = M (M's rows are B's rows, the k index), same n-blocks. */
template <int LD>
__device__ __forceinline__ void frag_b(uint32_t (&b)[4], const bf16 *M, int k0, int n0, int lane)
{
    ldmatrix_x4_trans(b, M + (k0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LD + n0 + 8 * (lane >> 4));
}

/* s (16 x 8 NB: NB n-blocks of 16 x 8) += a M^T over the k-step k0, M's
 * rows [0, 8 NB). */
template <int LD, int NB>
__device__ __forceinline__ void mma_abt_step(float (&s)[NB][4], const uint32_t (&a)[4], const bf16 *M, int k0,
                                             int lane)
{
#pragma unroll
    for (int n = 0; n < NB / 2; n++) {
        uint32_t b[4];
        frag_bt<LD>(b, M, 16 * n, k0, lane);
        mma_bf16_16816(s[2 * n], a, b, s[2 * n]);
        mma_bf16_16816(s[2 * n + 1], a, b + 2, s[2 * n + 1]);
    }
}

template <int NB> __device__ __forceinline__ void acc_zero(float (&s)[NB][4])
{
#pragma unroll
    for (int n = 0; n < NB; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
}

/* s = A M^T (16 x 8 NB): A the warp's 16 rows of a DM-wide tile, M the
 * 8 NB rows of a DM-wide tile. */
template <int DM, int NB>
__device__ __forceinline__ void mma_abt(float (&s)[NB][4], const bf16 *A, const bf16 *M, int lane)
{
    acc_zero<NB>(s);
#pragma unroll 2
    for (int kk = 0; kk < DM / 16; kk++) {
        uint32_t a[4];
        frag_a<DM + 8>(a, A, 16 * kk, lane);
        mma_abt_step<DM + 8, NB>(s, a, M, 16 * kk, lane);
    }
}

/* o (16 x DM) += p M: p a 16 x 16 KS operand as KS A fragments (k-steps),
 * M the 16 KS rows of a DM-wide tile. */
template <int DM, int KS>
__device__ __forceinline__ void mma_pm(float (&o)[DM / 8][4], const uint32_t (&p)[KS][4], const bf16 *M, int lane)
{
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
#pragma unroll
        for (int n = 0; n < DM / 16; n++) {
            uint32_t b[4];
            frag_b<DM + 8>(b, M, 16 * kk, 16 * n, lane);
            mma_bf16_16816(o[2 * n], p[kk], b, o[2 * n]);
            mma_bf16_16816(o[2 * n + 1], p[kk], b + 2, o[2 * n + 1]);
        }
    }
}

/* A 16 x 8 NB accumulator as the bf16 A fragments of its NB / 2 k-steps:
 * k-step kk is n-blocks 2 kk (a[0], a[1]) and 2 kk + 1 (a[2], a[3]); the
 * accumulator's (row g, cols 2t, 2t+1) and (row g + 8, ...) entries are the
 * A fragment's. */
template <int NB> __device__ __forceinline__ void acc_to_a(uint32_t (&a)[NB / 2][4], const float (&s)[NB][4])
{
#pragma unroll
    for (int kk = 0; kk < NB / 2; kk++) {
        a[kk][0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
        a[kk][1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
        a[kk][2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[kk][3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

/* Rows g and g + 8 of a warp's 16 x DM accumulator, times mul[0] / mul[1],
 * to rows [0, nrows) and columns [0, dh) of out (row stride ld). */
template <int DM>
__device__ __forceinline__ void acc_store(const float (&o)[DM / 8][4], float *out, size_t ld, int nrows, int dh,
                                          const float (&mul)[2], int lane)
{
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = g + 8 * r;
        if (row >= nrows) continue;
#pragma unroll
        for (int n = 0; n < DM / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int c = 8 * n + 2 * t + e;
                if (c < dh) out[(size_t)row * ld + c] = o[n][2 * r + e] * mul[r];
            }
    }
}

/* ------------------------------------------------------------------------ */
/* Forward                                                                   */
/* ------------------------------------------------------------------------ */

template <int DM, int NW>
__global__ void __launch_bounds__(32 * NW)
k_mma_fwd(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
          float *__restrict__ y, float *__restrict__ lse, int T, int H, int KV, int NV, int dh, float scale,
          int vec4)
{
    enum { LD = DM + 8, TILE = MMA_TILE * LD, NT = 32 * NW, ROWS = 16 * NW };
    MMA_DYN_SMEM(smem);
    bf16 *Qs = (bf16 *)smem, *Ks = Qs + ROWS * LD, *Vs = Ks + 2 * TILE; /* K, V: two buffers each */
    const int qb = gridDim.x - 1 - blockIdx.x; /* heaviest tiles first */
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / KV), hv = h / (H / NV);
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const float *qh = q + (size_t)b * T * ldq + (size_t)h * dh;
    const float *kh = k + (size_t)b * T * ldk + (size_t)hk * dh;
    const float *vh = v + (size_t)b * T * ldv + (size_t)hv * dh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int t0 = qb * ROWS, tw = t0 + warp * 16; /* first query row of the block, of the warp */
    const int nkb = min((T + MMA_TILE - 1) / MMA_TILE, (t0 + ROWS) / MMA_TILE); /* causal key tiles */
    const float sl2 = scale * MMA_LOG2E;

    tile_load<DM, ROWS, NT>(Qs, qh, t0, T, ldq, dh, vec4);
    tile_load<DM, MMA_TILE, NT>(Ks, kh, 0, T, ldk, dh, vec4);
    tile_load<DM, MMA_TILE, NT>(Vs, vh, 0, T, ldv, dh, vec4);
    __syncthreads();
    /* the warp's Q fragments: in registers for the whole loop, except with
     * DM 128 and 4 warps, where they do not fit next to O, S and the
     * prefetch (ptxas spills): reloaded from Qs for every key tile then */
    constexpr bool q_regs = DM <= 64 || NW >= 8;
    uint32_t qa[q_regs ? DM / 16 : 1][4];
    if constexpr (q_regs) {
#pragma unroll
        for (int kk = 0; kk < DM / 16; kk++) frag_a<LD>(qa[kk], Qs + warp * 16 * LD, 16 * kk, lane);
    }

    float o[DM / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    acc_zero<DM / 8>(o);
    for (int kb = 0; kb < nkb; kb++) {
        const bf16 *Kc = Ks + (kb & 1) * TILE, *Vc = Vs + (kb & 1) * TILE;
        bf16 *Kn = Ks + ((kb + 1) & 1) * TILE, *Vn = Vs + ((kb + 1) & 1) * TILE;
        const bool next = kb + 1 < nkb;
        /* diag: some key of the tile is after some query row of the block
         * (causal mask); active: the warp's last row sees the tile's first
         * key (else the tile adds nothing to the warp's rows: skipped) */
        const bool diag = kb * MMA_TILE + MMA_TILE - 1 > t0, active = kb * MMA_TILE <= tw + 15;
        tile_prefetch<DM, NT> pf;
        /* S = Q_w K^T in two halves of 32 keys (phases of the next K's prefetch) */
        float s[2][4][4];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            if (next) pf.begin(j, kh, (kb + 1) * MMA_TILE, T, ldk, dh, vec4);
            if (active) {
                if constexpr (q_regs) {
                    acc_zero<4>(s[j]);
#pragma unroll
                    for (int kk = 0; kk < DM / 16; kk++)
                        mma_abt_step<LD, 4>(s[j], qa[kk], Kc + 32 * j * LD, 16 * kk, lane);
                } else {
                    mma_abt<DM, 4>(s[j], Qs + warp * 16 * LD, Kc + 32 * j * LD, lane);
                }
            }
            if (next) pf.end(j, Kn);
        }
        /* online softmax of rows g (r = 0) and g + 8 (r = 1), in log2 units */
#pragma unroll
        for (int r = 0; r < 2 && active; r++) {
            const int t = tw + g + 8 * r;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int n = 0; n < 4; n++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        float x = s[j][n][2 * r + e] * sl2;
                        if (diag && kb * MMA_TILE + 32 * j + 8 * n + 2 * tq + e > t) x = -INFINITY;
                        s[j][n][2 * r + e] = x;
                        mx = fmaxf(mx, x);
                    }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            /* m is finite from the first tile on (key 0 is in every row), so a
             * row without a key in this tile (mx = -inf) gets alpha 1, P 0 */
            const float mnew = fmaxf(m[r], mx), alpha = exp2f(m[r] - mnew);
            float ps = 0.0f;
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int n = 0; n < 4; n++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const float p = exp2f(s[j][n][2 * r + e] - mnew);
                        s[j][n][2 * r + e] = p;
                        ps += p;
                    }
            l[r] = l[r] * alpha + ps; /* the lane's partial sum; combined at the end */
            m[r] = mnew;
#pragma unroll
            for (int n = 0; n < DM / 8; n++) {
                o[n][2 * r] *= alpha;
                o[n][2 * r + 1] *= alpha;
            }
        }
        /* O += P V in two halves of 32 keys (phases of the next V's prefetch) */
#pragma unroll
        for (int j = 0; j < 2; j++) {
            if (next) pf.begin(j, vh, (kb + 1) * MMA_TILE, T, ldv, dh, vec4);
            if (active) {
                uint32_t pa[2][4];
                acc_to_a<4>(pa, s[j]);
                mma_pm<DM, 2>(o, pa, Vc + 32 * j * LD, lane);
            }
            if (next) pf.end(j, Vn);
        }
        __syncthreads(); /* the next tiles are stored; everyone is done with Kc, Vc */
    }
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        inv[r] = 1.0f / l[r];
        const int t = tw + g + 8 * r;
        if (tq == 0 && t < T) lse[((size_t)b * H + h) * T + t] = (m[r] + log2f(l[r])) * MMA_LN2;
    }
    acc_store<DM>(o, y + (size_t)b * T * ldq + (size_t)tw * ldq + (size_t)h * dh, ldq, T - tw, dh, inv, lane);
}

/* ------------------------------------------------------------------------ */
/* Backward                                                                  */
/* ------------------------------------------------------------------------ */

template <int DM, int NW>
__global__ void __launch_bounds__(32 * NW)
k_mma_bwd_kv(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
             const float *__restrict__ dy, const float *__restrict__ lse, const float *__restrict__ Dv,
             float *__restrict__ dk, float *__restrict__ dv, float *__restrict__ mass, float *__restrict__ sq,
             float *__restrict__ win, int T, int H, int KV, int NV, int dh, int W, float scale, int vec4)
{
    enum { LD = DM + 8, TILE = MMA_TILE * LD, NT = 32 * NW, ROWS = 16 * NW };
    MMA_DYN_SMEM(smem);
    bf16 *Ks = (bf16 *)smem, *Vs = Ks + ROWS * LD, *Qs = Vs + ROWS * LD, *dYs = Qs + TILE;
    float *Ls = (float *)(dYs + TILE), *Ds = Ls + MMA_TILE; /* lse log2(e) (+inf past T), D (0 past T) */
    const int kb = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
    const int G = H / KV, vrep = H / NV;
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int s0 = kb * ROWS, sw = s0 + warp * 16; /* first key of the block, of the warp */
    const int nqb = (T + MMA_TILE - 1) / MMA_TILE;
    const bool want_stats = mass || sq || win;
    const float sl2 = scale * MMA_LOG2E;
    const bf16 *Kw = Ks + warp * 16 * LD, *Vw = Vs + warp * 16 * LD;

    tile_load<DM, ROWS, NT>(Ks, k + (size_t)b * T * ldk + (size_t)hk * dh, s0, T, ldk, dh, vec4);
    float dka[DM / 8][4], dva[DM / 8][4];
    acc_zero<DM / 8>(dka);
    acc_zero<DM / 8>(dva);
    const float one[2] = {1.0f, 1.0f};

    int cur_hv = -1;
    for (int h = hk * G; h < (hk + 1) * G; h++) {
        const int hv = h / vrep;
        const bool new_v = hv != cur_hv;
        if (new_v && cur_hv >= 0) {
            acc_store<DM>(dva, dv + (size_t)b * T * ldv + (size_t)sw * ldv + (size_t)cur_hv * dh, ldv, T - sw, dh,
                          one, lane);
            acc_zero<DM / 8>(dva);
        }
        cur_hv = hv;
        const float *qh = q + (size_t)b * T * ldq + (size_t)h * dh;
        const float *dyh = dy + (size_t)b * T * ldq + (size_t)h * dh;
        const float *lh = lse + ((size_t)b * H + h) * T, *Dh = Dv + ((size_t)b * H + h) * T;
        float am[2] = {0.0f, 0.0f}, aq[2] = {0.0f, 0.0f}, aw[2] = {0.0f, 0.0f}; /* keys sw + g, sw + g + 8 */

        for (int qb = s0 / MMA_TILE; qb < nqb; qb++) { /* the query tiles with a query >= s0 */
            const int t0 = qb * MMA_TILE;
            __syncthreads(); /* everyone is done with Qs, dYs, Ls, Ds (and Vs) */
            if (new_v && qb == s0 / MMA_TILE)
                tile_load<DM, ROWS, NT>(Vs, v + (size_t)b * T * ldv + (size_t)hv * dh, s0, T, ldv, dh, vec4);
            tile_load<DM, MMA_TILE, NT>(Qs, qh, t0, T, ldq, dh, vec4);
            tile_load<DM, MMA_TILE, NT>(dYs, dyh, t0, T, ldq, dh, vec4);
            for (int i = threadIdx.x; i < MMA_TILE; i += NT) {
                const int t = t0 + i;
                Ls[i] = t < T ? lh[t] * MMA_LOG2E : INFINITY;
                Ds[i] = t < T ? Dh[t] : 0.0f;
            }
            __syncthreads();
            /* diag: some key of the block is after some query of the tile
             * (causal mask); a warp whose first key is after the tile's last
             * query gets nothing from it (skipped) */
            const bool diag = s0 + ROWS - 1 > t0;
            if (sw > t0 + MMA_TILE - 1) continue;
            /* the tile's queries in two halves of 32 (fewer live registers) */
#pragma unroll 1
            for (int c0 = 0; c0 < MMA_TILE; c0 += 32) {
                const bf16 *Qh = Qs + c0 * LD, *dYh = dYs + c0 * LD;
                /* P^T = exp(K_w Q^T scale - lse): rows keys sw + g (+ 8), columns queries */
                float pt[4][4];
                mma_abt<DM, 4>(pt, Kw, Qh, lane);
#pragma unroll
                for (int n = 0; n < 4; n++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int c = c0 + 8 * n + 2 * tq + (i & 1), t = t0 + c, s = sw + g + 8 * (i >> 1);
                        float p = exp2f(pt[n][i] * sl2 - Ls[c]); /* 0 past T (Ls = +inf) */
                        if (diag && s > t) p = 0.0f;
                        pt[n][i] = p;
                        if (want_stats) {
                            am[i >> 1] += p;
                            aq[i >> 1] += p * p;
                            if (t - s < W) aw[i >> 1] += p;
                        }
                    }
                uint32_t fa[2][4];
                acc_to_a<4>(fa, pt);
                mma_pm<DM, 2>(dva, fa, dYh, lane); /* dV_w += P^T dY */
                float dpt[4][4];
                mma_abt<DM, 4>(dpt, Vw, dYh, lane); /* dP^T = V_w dY^T */
#pragma unroll
                for (int n = 0; n < 4; n++)
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        dpt[n][i] = pt[n][i] * (dpt[n][i] - Ds[c0 + 8 * n + 2 * tq + (i & 1)]); /* dS^T */
                acc_to_a<4>(fa, dpt);
                mma_pm<DM, 2>(dka, fa, Qh, lane); /* dK_w += dS^T Q */
            }
        }
        if (want_stats) {
#pragma unroll
            for (int r = 0; r < 2; r++) {
#pragma unroll
                for (int o = 1; o <= 2; o <<= 1) {
                    am[r] += __shfl_xor_sync(0xffffffffu, am[r], o);
                    aq[r] += __shfl_xor_sync(0xffffffffu, aq[r], o);
                    aw[r] += __shfl_xor_sync(0xffffffffu, aw[r], o);
                }
                const int s = sw + g + 8 * r;
                if (tq == 0 && s < T) {
                    const size_t at = ((size_t)b * H + h) * T + s;
                    if (mass) mass[at] = am[r];
                    if (sq) sq[at] = aq[r];
                    if (win) win[at] = aw[r];
                }
            }
        }
    }
    const float sc[2] = {scale, scale};
    acc_store<DM>(dva, dv + (size_t)b * T * ldv + (size_t)sw * ldv + (size_t)cur_hv * dh, ldv, T - sw, dh, one,
                  lane);
    acc_store<DM>(dka, dk + (size_t)b * T * ldk + (size_t)sw * ldk + (size_t)hk * dh, ldk, T - sw, dh, sc, lane);
}

template <int DM, int NW>
__global__ void __launch_bounds__(32 * NW)
k_mma_bwd_q(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
            const float *__restrict__ dy, const float *__restrict__ lse, const float *__restrict__ Dv,
            float *__restrict__ dq, int T, int H, int KV, int NV, int dh, float scale, int vec4)
{
    enum { LD = DM + 8, TILE = MMA_TILE * LD, NT = 32 * NW, ROWS = 16 * NW };
    MMA_DYN_SMEM(smem);
    bf16 *Qs = (bf16 *)smem, *dYs = Qs + ROWS * LD, *Ks = dYs + ROWS * LD, *Vs = Ks + 2 * TILE; /* K, V: two buffers */
    const int qb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / KV), hv = h / (H / NV);
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int t0 = qb * ROWS, tw = t0 + warp * 16;
    const int nkb = min((T + MMA_TILE - 1) / MMA_TILE, (t0 + ROWS) / MMA_TILE); /* causal key tiles */
    const float sl2 = scale * MMA_LOG2E;
    const float *kh = k + (size_t)b * T * ldk + (size_t)hk * dh;
    const float *vh = v + (size_t)b * T * ldv + (size_t)hv * dh;
    const bf16 *Qw = Qs + warp * 16 * LD, *dYw = dYs + warp * 16 * LD;

    tile_load<DM, ROWS, NT>(Qs, q + (size_t)b * T * ldq + (size_t)h * dh, t0, T, ldq, dh, vec4);
    tile_load<DM, ROWS, NT>(dYs, dy + (size_t)b * T * ldq + (size_t)h * dh, t0, T, ldq, dh, vec4);
    tile_load<DM, MMA_TILE, NT>(Ks, kh, 0, T, ldk, dh, vec4);
    tile_load<DM, MMA_TILE, NT>(Vs, vh, 0, T, ldv, dh, vec4);
    float lr[2], dr[2]; /* lse log2(e) (+inf past T: P = 0) and D of rows g, g + 8 */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int t = tw + g + 8 * r;
        lr[r] = t < T ? lse[((size_t)b * H + h) * T + t] * MMA_LOG2E : INFINITY;
        dr[r] = t < T ? Dv[((size_t)b * H + h) * T + t] : 0.0f;
    }
    __syncthreads();
    float dqa[DM / 8][4];
    acc_zero<DM / 8>(dqa);

    for (int kb = 0; kb < nkb; kb++) {
        const bf16 *Kc = Ks + (kb & 1) * TILE, *Vc = Vs + (kb & 1) * TILE;
        bf16 *Kn = Ks + ((kb + 1) & 1) * TILE, *Vn = Vs + ((kb + 1) & 1) * TILE;
        const bool next = kb + 1 < nkb;
        /* diag and active as in k_mma_fwd */
        const bool diag = kb * MMA_TILE + MMA_TILE - 1 > t0, active = kb * MMA_TILE <= tw + 15;
        /* the tile's keys in two halves of 32 (fewer live registers), each
         * with two phases: the products (the next V's prefetch around them)
         * and dS K (the next K's) */
        tile_prefetch<DM, NT> pv, pk;
#pragma unroll 1
        for (int hh = 0; hh < 2; hh++) {
            const int c0 = 32 * hh;
            if (next) pv.begin(hh, vh, (kb + 1) * MMA_TILE, T, ldv, dh, vec4);
            float s[4][4], dp[4][4];
            if (active) {
                mma_abt<DM, 4>(s, Qw, Kc + c0 * LD, lane);   /* S = Q_w K^T */
                mma_abt<DM, 4>(dp, dYw, Vc + c0 * LD, lane); /* dP = dY_w V^T */
            }
            if (next) {
                pv.end(hh, Vn);
                pk.begin(hh, kh, (kb + 1) * MMA_TILE, T, ldk, dh, vec4);
            }
            if (active) {
#pragma unroll
                for (int n = 0; n < 4; n++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int r = i >> 1, t = tw + g + 8 * r;
                        const int key = kb * MMA_TILE + c0 + 8 * n + 2 * tq + (i & 1);
                        float p = exp2f(s[n][i] * sl2 - lr[r]);
                        if (diag && key > t) p = 0.0f;
                        s[n][i] = p * (dp[n][i] - dr[r]); /* dS */
                    }
                uint32_t da[2][4];
                acc_to_a<4>(da, s);
                mma_pm<DM, 2>(dqa, da, Kc + c0 * LD, lane); /* dQ_w += dS K */
            }
            if (next) pk.end(hh, Kn);
        }
        __syncthreads(); /* the next tiles are stored; everyone is done with Kc, Vc */
    }
    const float sc[2] = {scale, scale};
    acc_store<DM>(dqa, dq + (size_t)b * T * ldq + (size_t)tw * ldq + (size_t)h * dh, ldq, T - tw, dh, sc, lane);
}

/* ------------------------------------------------------------------------ */
/* Host side                                                                 */
/* ------------------------------------------------------------------------ */

/* Bytes of shared memory: bf16 tiles of the block's own rows (16 NW) and of
 * streamed rows (64), plus fp32 vectors. */
template <int DM, int NW> static size_t mma_fwd_smem() { return sizeof(bf16) * (16 * NW + 4 * MMA_TILE) * (DM + 8); }
template <int DM, int NW> static size_t mma_bwd_kv_smem()
{
    return sizeof(bf16) * (2 * 16 * NW + 2 * MMA_TILE) * (DM + 8) + sizeof(float) * 2 * MMA_TILE;
}
template <int DM, int NW> static size_t mma_bwd_q_smem()
{
    return sizeof(bf16) * (2 * 16 * NW + 4 * MMA_TILE) * (DM + 8);
}

template <int DM, int NW> static cudaError_t mma_optin(cudaError_t e, int max_optin)
{
    e = cuda_smem_optin(e, k_mma_fwd<DM, NW>, mma_fwd_smem<DM, NW>(), max_optin);
    e = cuda_smem_optin(e, k_mma_bwd_kv<DM, NW>, mma_bwd_kv_smem<DM, NW>(), max_optin);
    return cuda_smem_optin(e, k_mma_bwd_q<DM, NW>, mma_bwd_q_smem<DM, NW>(), max_optin);
}

gsink_status cuda_attention_mma_init(gsink_backend *be)
{
    int mx = CUDA_CTX(be)->max_smem_optin;
    cudaError_t e = mma_optin<64, 8>(cudaSuccess, mx);
    e = mma_optin<128, 8>(e, mx);
    e = mma_optin<64, 4>(e, mx);
    e = mma_optin<128, 4>(e, mx);
    return cuda_check(be, e, "attention (mma): cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

static int mma_smem_fits(gsink_backend *be, size_t bytes)
{
    return bytes <= 48 * 1024 || bytes <= (size_t)CUDA_CTX(be)->max_smem_optin;
}

template <int DM, int NW> static int mma_fits(gsink_backend *be)
{
    return mma_smem_fits(be, mma_fwd_smem<DM, NW>()) && mma_smem_fits(be, mma_bwd_kv_smem<DM, NW>()) &&
           mma_smem_fits(be, mma_bwd_q_smem<DM, NW>());
}

/* warps a block: 8 (GSINK_CUDA_ATTENTION=mma) or 4 (=mma4) */
static int mma_warps(gsink_backend *be) { return CUDA_CTX(be)->attention == GSINK_CUDA_ATTENTION_MMA4 ? 4 : 8; }

int cuda_attention_mma_eligible(gsink_backend *be, const gsink_attn_shape *s)
{
    if (!be || !s) return 0;
    const cuda_ctx *c = CUDA_CTX(be);
    if (c->attention == GSINK_CUDA_ATTENTION_WMMA || c->math != GSINK_CUDA_MATH_BF16) return 0;
    if (!cuda_attention_tc_eligible(be, s)) return 0; /* causal, valid GQA shape, d_head <= 128 */
    if (mma_warps(be) == 4) return s->d_head <= 64 ? mma_fits<64, 4>(be) : mma_fits<128, 4>(be);
    return s->d_head <= 64 ? mma_fits<64, 8>(be) : mma_fits<128, 8>(be);
}

static int mma_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

template <int DM, int NW>
static gsink_status mma_fwd_dm(gsink_backend *be, const gsink_attn_shape *s, float *y, float *lse, const float *q,
                               const float *k, const float *v)
{
    const int T = s->seq, nb = (T + 16 * NW - 1) / (16 * NW);
    const int vec4 = s->d_head % 4 == 0 && mma_aligned(q) && mma_aligned(k) && mma_aligned(v);
    /* (named first: a template-id would split the macro's arguments) */
    auto kern = k_mma_fwd<DM, NW>;
    const size_t smem = mma_fwd_smem<DM, NW>();
    GSINK_LAUNCH(kern, dim3(nb, s->n_heads, s->batch), 32 * NW, smem, CUDA_CTX(be)->stream)(
        q, k, v, y, lse, T, s->n_heads, s->n_kv_heads, s->n_v_heads, s->d_head, gsink_attn_scale(s), vec4);
    return cuda_launch_check(be, "attention forward (bf16 mma)");
}

gsink_status cuda_attention_mma_fwd(gsink_backend *be, const gsink_attn_shape *s, float *y, float *lse,
                                    const float *q, const float *k, const float *v)
{
    if (!cuda_attention_mma_eligible(be, s))
        return cuda_fail(be, GSINK_ERR_UNSUPPORTED, "attention (mma): not available for this shape or mode");
    if (s->batch == 0 || s->seq == 0) return GSINK_OK;
    gsink_status rc = cuda_enter(be);
    if (rc) return rc;
    if (mma_warps(be) == 4)
        return s->d_head <= 64 ? mma_fwd_dm<64, 4>(be, s, y, lse, q, k, v) : mma_fwd_dm<128, 4>(be, s, y, lse, q, k, v);
    return s->d_head <= 64 ? mma_fwd_dm<64, 8>(be, s, y, lse, q, k, v) : mma_fwd_dm<128, 8>(be, s, y, lse, q, k, v);
}

template <int DM, int NW>
static gsink_status mma_bwd_dm(gsink_backend *be, const gsink_attn_shape *s, float *dq, float *dk, float *dv,
                               const float *dy, const float *q, const float *k, const float *v, const float *lse,
                               const float *D, gsink_attn_stats stats)
{
    cudaStream_t st = CUDA_CTX(be)->stream;
    const int T = s->seq, nb = (T + 16 * NW - 1) / (16 * NW);
    const int H = s->n_heads, KV = s->n_kv_heads, NV = s->n_v_heads, dh = s->d_head;
    const float scale = gsink_attn_scale(s);
    const int vec4 = dh % 4 == 0 && mma_aligned(q) && mma_aligned(k) && mma_aligned(v) && mma_aligned(dy);
    auto kern_kv = k_mma_bwd_kv<DM, NW>;
    auto kern_q = k_mma_bwd_q<DM, NW>;
    const size_t smem_kv = mma_bwd_kv_smem<DM, NW>(), smem_q = mma_bwd_q_smem<DM, NW>();
    GSINK_LAUNCH(kern_kv, dim3(nb, KV, s->batch), 32 * NW, smem_kv, st)(
        q, k, v, dy, lse, D, dk, dv, stats.mass, stats.sq, stats.win, T, H, KV, NV, dh, s->sink_window, scale,
        vec4);
    gsink_status rc = cuda_launch_check(be, "attention backward (bf16 mma, dK, dV)");
    if (rc) return rc;
    GSINK_LAUNCH(kern_q, dim3(nb, H, s->batch), 32 * NW, smem_q, st)(
        q, k, v, dy, lse, D, dq, T, H, KV, NV, dh, scale, vec4);
    return cuda_launch_check(be, "attention backward (bf16 mma, dQ)");
}

gsink_status cuda_attention_mma_bwd(gsink_backend *be, const gsink_attn_shape *s, float *dq, float *dk, float *dv,
                                    const float *dy, const float *q, const float *k, const float *v,
                                    const float *lse, const float *D, gsink_attn_stats stats)
{
    if (!cuda_attention_mma_eligible(be, s))
        return cuda_fail(be, GSINK_ERR_UNSUPPORTED, "attention (mma): not available for this shape or mode");
    if (s->batch == 0 || s->seq == 0) return GSINK_OK;
    gsink_status rc = cuda_enter(be);
    if (rc) return rc;
    if (mma_warps(be) == 4)
        return s->d_head <= 64 ? mma_bwd_dm<64, 4>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats)
                               : mma_bwd_dm<128, 4>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
    return s->d_head <= 64 ? mma_bwd_dm<64, 8>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats)
                           : mma_bwd_dm<128, 8>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
}
