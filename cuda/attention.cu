/*
 * attention.cu - fused causal attention for the CUDA backend (exact FP32).
 *
 * FlashAttention-2 style tiling: 32x32 tiles in shared memory, online softmax,
 * causal or sliding-window causal (query t sees keys j with 0 <= t - j < Lb,
 * Lb = gsink__attn_lookback: the window, or T; key tiles outside every row's
 * window are skipped, so a window costs O(T W) rather than O(T^2)), GQA (query head h reads key head h / (H/KV) and value head
 * h / (H/NV)). Nothing of size T x T is ever stored.
 *
 *   forward   k_attn_fwd    one block per (query tile, head, batch): y, lse.
 *   backward  k_attn_dot    D_t = <dy_t, y_t>
 *             k_attn_bwd_kv one block per (key tile, key head, batch): dK and
 *                           dV for every query head of the group, in order,
 *                           and, when asked, the column statistics (mass, sq,
 *                           window) of each query head: the thread that owns
 *                           key row s already reads a_ts for every query t in
 *                           ascending order (for dV), so it sums them as it
 *                           goes, at no extra pass over Q K^T.
 *             k_attn_bwd_q  one block per (query tile, head, batch): dQ.
 *   stats     k_attn_stats  one block per (key tile, head, batch): the same
 *                           statistics on their own, for analyses that read
 *                           them without a backward pass (one extra Q K^T);
 *                           it walks the query tiles below the diagonal in
 *                           order, recomputes a_ts = exp(s_ts - lse_t), sums
 *                           in registers, then over the tile's rows in a fixed
 *                           order.
 *
 * Every output element is owned by one thread and summed in a fixed order, so
 * results are bitwise reproducible; no floating-point atomics are used. The
 * price is recomputing the score tiles (stats: one extra Q K^T; backward: the
 * dQ pass recomputes Q K^T and dY V^T), which FlashAttention-2 avoids with
 * atomics on dQ.
 *
 * Thread layout (128 threads): thread t owns row r = t / 4 of a 32x32 score
 * tile and columns c = (t % 4) + 4 i, i < 8; for a 32 x DM output tile it owns
 * row t / 4 and head-dimension entries d = (t % 4) + 4 j, j < DM / 4 (the
 * interleaving keeps shared-memory reads free of bank conflicts; rows are
 * padded by one float for the same reason).
 *
 * With TF32 or BF16 math (gsink__cuda_set_math) the forward and backward run
 * on tensor cores instead (attention_tc.cu, inputs rounded to TF32 or BF16)
 * where cuda_attention_tc_eligible; with BF16 math and GSINK_CUDA_ATTENTION=mma
 * at backend creation, the mma.sync kernels of attention_mma.cu.
 */
#include <float.h>
#include <math.h>

#include "cuda_common.cuh"

#define ATT_BR 32 /* query rows per tile */
#define ATT_BC 32 /* keys per tile */
#define ATT_THREADS 128
#define ATT_PLD (ATT_BC + 1)

template <int DM> struct att_dims {
    static const int LD = DM + 1;
    static const int DJ = DM / 4;
};

template <int DM> static size_t fwd_smem() { return sizeof(float) * ((size_t)(ATT_BR + 2 * ATT_BC) * (DM + 1) + ATT_BR * ATT_PLD); }
template <int DM> static size_t stats_smem() { return sizeof(float) * ((size_t)(ATT_BR + ATT_BC) * (DM + 1) + ATT_BR + 3 * ATT_BR * ATT_PLD); }
template <int DM> static size_t bwd_kv_smem() { return sizeof(float) * ((size_t)(2 * ATT_BR + 2 * ATT_BC) * (DM + 1) + 2 * ATT_BR * ATT_PLD + 2 * ATT_BR); }
template <int DM> static size_t bwd_q_smem() { return sizeof(float) * ((size_t)(2 * ATT_BR + 2 * ATT_BC) * (DM + 1) + ATT_BR * ATT_PLD + 2 * ATT_BR); }

/* Loads rows [row0, row0 + 32) of a (T, ld) head slice into a 32 x (DM+1)
 * tile, zero-filling rows >= T and columns >= dh. */
template <int DM>
__device__ __forceinline__ void load_tile(float *sh, const float *g, int row0, int T, size_t ld, int dh)
{
    for (int idx = threadIdx.x; idx < 32 * DM; idx += ATT_THREADS) {
        int r = idx / DM, d = idx % DM, t = row0 + r;
        sh[r * (DM + 1) + d] = (t < T && d < dh) ? g[(size_t)t * ld + d] : 0.0f;
    }
}

__device__ __forceinline__ void load_vec(float *sh, const float *g, int row0, int T)
{
    for (int r = threadIdx.x; r < 32; r += ATT_THREADS) sh[r] = row0 + r < T ? g[row0 + r] : 0.0f;
}

/* s[i] = <A[r], Bt[cg + 4 i]> over dh entries. */
template <int DM>
__device__ __forceinline__ void tile_dots(float s[8], const float *A, const float *Bt, int r, int cg, int dh)
{
#pragma unroll
    for (int i = 0; i < 8; i++) s[i] = 0.0f;
    const float *a = A + r * (DM + 1);
#pragma unroll 4
    for (int d = 0; d < dh; d++) {
        float av = a[d];
#pragma unroll
        for (int i = 0; i < 8; i++) s[i] = fmaf(av, Bt[(cg + 4 * i) * (DM + 1) + d], s[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* Forward                                                                   */
/* ------------------------------------------------------------------------ */

template <int DM>
__global__ void __launch_bounds__(ATT_THREADS)
k_attn_fwd(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
           float *__restrict__ y, float *__restrict__ lse, int T, int H, int KV, int NV, int dh,
           int Lb, float scale)
{
    GSINK_DYN_SMEM(smem);
    const int LD = DM + 1;
    float *Qs = smem, *Ks = Qs + ATT_BR * LD, *Vs = Ks + ATT_BC * LD, *Ps = Vs + ATT_BC * LD;
    const int qb = gridDim.x - 1 - blockIdx.x; /* heaviest tiles first */
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / KV), hv = h / (H / NV);
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const float *qh = q + (size_t)b * T * ldq + (size_t)h * dh;
    const float *kh = k + (size_t)b * T * ldk + (size_t)hk * dh;
    const float *vh = v + (size_t)b * T * ldv + (size_t)hv * dh;
    const int tid = threadIdx.x, r = tid >> 2, cg = tid & 3;
    const int t0 = qb * ATT_BR, tq = t0 + r;

    load_tile<DM>(Qs, qh, t0, T, ldq, dh);
    float m = -INFINITY, l = 0.0f;
    float o[DM / 4];
#pragma unroll
    for (int j = 0; j < DM / 4; j++) o[j] = 0.0f;

    /* ATT_BR == ATT_BC: key tiles from the first one row t0 sees up to the diagonal */
    const int kb_lo = t0 - Lb + 1 > 0 ? (t0 - Lb + 1) / ATT_BC : 0;
    for (int kb = kb_lo; kb <= qb; kb++) {
        const int s0 = kb * ATT_BC;
        __syncthreads();
        load_tile<DM>(Ks, kh, s0, T, ldk, dh);
        load_tile<DM>(Vs, vh, s0, T, ldv, dh);
        __syncthreads();
        float sc[8];
        tile_dots<DM>(sc, Qs, Ks, r, cg, dh);
        float mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int kc = s0 + cg + 4 * i;
            sc[i] = (kc <= tq && tq - kc < Lb) ? sc[i] * scale : -INFINITY;
            mx = fmaxf(mx, sc[i]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        /* Causal: key s0 <= t0 <= tq, so mx is finite. With a window a row may
         * see no key of this tile yet (mnew = -inf): it keeps l = 0, o = 0. */
        const float mnew = fmaxf(m, mx);
        const bool none = mnew == -INFINITY;
        const float alpha = none ? 1.0f : expf(m - mnew);
        float ps = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float p = none ? 0.0f : expf(sc[i] - mnew);
            Ps[r * ATT_PLD + cg + 4 * i] = p;
            ps += p;
        }
        ps += __shfl_xor_sync(0xffffffffu, ps, 1);
        ps += __shfl_xor_sync(0xffffffffu, ps, 2);
        l = l * alpha + ps;
        m = mnew;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < DM / 4; j++) o[j] *= alpha;
        for (int c = 0; c < ATT_BC; c++) {
            float p = Ps[r * ATT_PLD + c];
            const float *vr = Vs + c * LD + cg;
#pragma unroll
            for (int j = 0; j < DM / 4; j++) o[j] = fmaf(p, vr[4 * j], o[j]);
        }
    }
    if (tq < T) {
        float inv = 1.0f / l;
        float *yr = y + (size_t)b * T * ldq + (size_t)tq * ldq + (size_t)h * dh;
#pragma unroll
        for (int j = 0; j < DM / 4; j++) {
            int d = cg + 4 * j;
            if (d < dh) yr[d] = o[j] * inv;
        }
        if (cg == 0) lse[((size_t)b * H + h) * T + tq] = m + logf(l);
    }
}

/* Column statistics of a = softmax(scores), per (b, h, key s):
 * mass = sum_{t>=s} a_ts, sq = sum_{t>=s} a_ts^2, win = sum_{s<=t<s+W} a_ts. */
template <int DM>
__global__ void __launch_bounds__(ATT_THREADS)
k_attn_stats(const float *__restrict__ q, const float *__restrict__ k,
             const float *__restrict__ lse, float *mass, float *sq, float *win, int T, int H,
             int KV, int dh, int W, int Lb, float scale)
{
    GSINK_DYN_SMEM(smem);
    const int LD = DM + 1;
    float *Ks = smem, *Qs = Ks + ATT_BC * LD, *Ls = Qs + ATT_BR * LD, *Red = Ls + ATT_BR;
    const int kb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / KV);
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh;
    const float *qh = q + (size_t)b * T * ldq + (size_t)h * dh;
    const float *kh = k + (size_t)b * T * ldk + (size_t)hk * dh;
    const float *lh = lse + ((size_t)b * H + h) * T;
    const int tid = threadIdx.x, r = tid >> 2, cg = tid & 3;
    const int s0 = kb * ATT_BC, nqb = (T + ATT_BR - 1) / ATT_BR;
    /* last query tile that sees a key of this tile: t <= s0 + ATT_BC - 1 + Lb - 1 */
    const int qb_last = (s0 + ATT_BC + Lb - 2) / ATT_BR, qb_hi = qb_last < nqb - 1 ? qb_last : nqb - 1;

    load_tile<DM>(Ks, kh, s0, T, ldk, dh);
    float am[8], aq[8], aw[8];
#pragma unroll
    for (int i = 0; i < 8; i++) am[i] = aq[i] = aw[i] = 0.0f;

    for (int qb = kb; qb <= qb_hi; qb++) {
        const int t0 = qb * ATT_BR, tq = t0 + r;
        __syncthreads();
        load_tile<DM>(Qs, qh, t0, T, ldq, dh);
        load_vec(Ls, lh, t0, T);
        __syncthreads();
        float sc[8];
        tile_dots<DM>(sc, Qs, Ks, r, cg, dh);
        const float lr = Ls[r];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int kc = s0 + cg + 4 * i;
            if (tq < T && kc <= tq && tq - kc < Lb) {
                float a = expf(sc[i] * scale - lr);
                am[i] += a;
                aq[i] += a * a;
                if (tq - kc < W) aw[i] += a;
            }
        }
    }
    /* Sum the 32 row-threads of each column in row order. */
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int c = cg + 4 * i;
        Red[r * ATT_PLD + c] = am[i];
        Red[ATT_BR * ATT_PLD + r * ATT_PLD + c] = aq[i];
        Red[2 * ATT_BR * ATT_PLD + r * ATT_PLD + c] = aw[i];
    }
    __syncthreads();
    if (tid < ATT_BC && s0 + tid < T) {
        float sm = 0.0f, ss = 0.0f, sw = 0.0f;
        for (int rr = 0; rr < ATT_BR; rr++) {
            sm += Red[rr * ATT_PLD + tid];
            ss += Red[ATT_BR * ATT_PLD + rr * ATT_PLD + tid];
            sw += Red[2 * ATT_BR * ATT_PLD + rr * ATT_PLD + tid];
        }
        size_t o = ((size_t)b * H + h) * T + s0 + tid;
        if (mass) mass[o] = sm;
        if (sq) sq[o] = ss;
        if (win) win[o] = sw;
    }
}

/* ------------------------------------------------------------------------ */
/* Backward                                                                  */
/* ------------------------------------------------------------------------ */

/* D(b, h, t) = <dy_t, y_t>, one warp per (b, t, h). */
__global__ void k_attn_dot(float *D, const float *dy, const float *y, int B, int T, int H, int dh)
{
    int lane = threadIdx.x & 31;
    size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
    size_t total = (size_t)B * T * H;
    for (; warp < total; warp += nwarps) {
        const float *a = dy + warp * dh, *c = y + warp * dh;
        double s = 0.0;
        for (int d = lane; d < dh; d += 32) s += (double)a[d] * c[d];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) {
            size_t h = warp % H, bt = warp / H, t = bt % T, b = bt / T;
            D[(b * H + h) * T + t] = (float)s;
        }
    }
}

/* dK, dV of one key tile of key head g: loops over the group's query heads
 * (value heads of the group are contiguous because NV % KV == 0) and the
 * query tiles at or below the diagonal. */
template <int DM>
__global__ void __launch_bounds__(ATT_THREADS)
k_attn_bwd_kv(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
              const float *__restrict__ dy, const float *__restrict__ lse,
              const float *__restrict__ Dv, float *__restrict__ dk, float *__restrict__ dv,
              float *__restrict__ mass, float *__restrict__ sq, float *__restrict__ win, int T,
              int H, int KV, int NV, int dh, int W, int Lb, float scale)
{
    GSINK_DYN_SMEM(smem);
    const int LD = DM + 1;
    float *Ks = smem, *Vs = Ks + ATT_BC * LD, *Qs = Vs + ATT_BC * LD, *dYs = Qs + ATT_BR * LD;
    float *Ps = dYs + ATT_BR * LD, *dSs = Ps + ATT_BR * ATT_PLD, *Ls = dSs + ATT_BR * ATT_PLD;
    float *Ds = Ls + ATT_BR;
    const int kb = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int G = H / KV, vrep = H / NV;
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const int tid = threadIdx.x, r = tid >> 2, cg = tid & 3;
    const int s0 = kb * ATT_BC, nqb = (T + ATT_BR - 1) / ATT_BR;
    const int qb_last = (s0 + ATT_BC + Lb - 2) / ATT_BR, qb_hi = qb_last < nqb - 1 ? qb_last : nqb - 1; /* as k_attn_stats */
    const int kown = s0 + r; /* key row this thread accumulates */
    /* Column statistics: of the 4 threads that own key row kown, thread cg
     * sums mass (0), sq (1) or window (2) of the current query head. */
    float *cst = cg == 0 ? mass : cg == 1 ? sq : cg == 2 ? win : NULL;
    const bool want_stats = mass || sq || win; /* uniform over the block */
    float cacc = 0.0f;

    load_tile<DM>(Ks, k + (size_t)b * T * ldk + (size_t)g * dh, s0, T, ldk, dh);
    float dka[DM / 4], dva[DM / 4];
#pragma unroll
    for (int j = 0; j < DM / 4; j++) dka[j] = dva[j] = 0.0f;

    int cur_hv = -1;
    for (int h = g * G; h < (g + 1) * G; h++) {
        const int hv = h / vrep;
        if (hv != cur_hv) {
            if (cur_hv >= 0) {
                if (kown < T) {
                    float *o = dv + (size_t)b * T * ldv + (size_t)kown * ldv + (size_t)cur_hv * dh;
#pragma unroll
                    for (int j = 0; j < DM / 4; j++) {
                        int d = cg + 4 * j;
                        if (d < dh) o[d] = dva[j];
                        dva[j] = 0.0f;
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < DM / 4; j++) dva[j] = 0.0f;
                }
            }
            cur_hv = hv;
            __syncthreads();
            load_tile<DM>(Vs, v + (size_t)b * T * ldv + (size_t)hv * dh, s0, T, ldv, dh);
        }
        const float *qh = q + (size_t)b * T * ldq + (size_t)h * dh;
        const float *dyh = dy + (size_t)b * T * ldq + (size_t)h * dh;
        const float *lh = lse + ((size_t)b * H + h) * T, *dh_ = Dv + ((size_t)b * H + h) * T;
        for (int qb = kb; qb <= qb_hi; qb++) {
            const int t0 = qb * ATT_BR, tq = t0 + r;
            __syncthreads();
            load_tile<DM>(Qs, qh, t0, T, ldq, dh);
            load_tile<DM>(dYs, dyh, t0, T, ldq, dh);
            load_vec(Ls, lh, t0, T);
            load_vec(Ds, dh_, t0, T);
            __syncthreads();
            float sc[8], dp[8];
            tile_dots<DM>(sc, Qs, Ks, r, cg, dh);
            tile_dots<DM>(dp, dYs, Vs, r, cg, dh);
            const float lr = Ls[r], dr = Ds[r];
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int c = cg + 4 * i, kc = s0 + c;
                float p = (tq < T && kc <= tq && tq - kc < Lb) ? expf(sc[i] * scale - lr) : 0.0f;
                Ps[r * ATT_PLD + c] = p;
                dSs[r * ATT_PLD + c] = p * (dp[i] - dr);
            }
            __syncthreads();
            for (int rr = 0; rr < ATT_BR; rr++) {
                float p = Ps[rr * ATT_PLD + r], ds = dSs[rr * ATT_PLD + r];
                const float *dyr = dYs + rr * LD + cg, *qr = Qs + rr * LD + cg;
#pragma unroll
                for (int j = 0; j < DM / 4; j++) {
                    dva[j] = fmaf(p, dyr[4 * j], dva[j]);
                    dka[j] = fmaf(ds, qr[4 * j], dka[j]);
                }
                if (want_stats) /* p = a_ts for t = t0 + rr, s = kown (0 where masked) */
                    cacc += cg == 1 ? p * p : (cg == 2 && t0 + rr - kown >= W) ? 0.0f : p;
            }
        }
        if (want_stats) {
            if (cst && kown < T) cst[((size_t)b * H + h) * T + kown] = cacc;
            cacc = 0.0f;
        }
    }
    if (kown < T) {
        float *o = dv + (size_t)b * T * ldv + (size_t)kown * ldv + (size_t)cur_hv * dh;
        float *ok = dk + (size_t)b * T * ldk + (size_t)kown * ldk + (size_t)g * dh;
#pragma unroll
        for (int j = 0; j < DM / 4; j++) {
            int d = cg + 4 * j;
            if (d < dh) {
                o[d] = dva[j];
                ok[d] = dka[j] * scale;
            }
        }
    }
}

template <int DM>
__global__ void __launch_bounds__(ATT_THREADS)
k_attn_bwd_q(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
             const float *__restrict__ dy, const float *__restrict__ lse,
             const float *__restrict__ Dv, float *__restrict__ dq, int T, int H, int KV, int NV,
             int dh, int Lb, float scale)
{
    GSINK_DYN_SMEM(smem);
    const int LD = DM + 1;
    float *Qs = smem, *dYs = Qs + ATT_BR * LD, *Ks = dYs + ATT_BR * LD, *Vs = Ks + ATT_BC * LD;
    float *dSs = Vs + ATT_BC * LD, *Ls = dSs + ATT_BR * ATT_PLD, *Ds = Ls + ATT_BR;
    const int qb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / KV), hv = h / (H / NV);
    const size_t ldq = (size_t)H * dh, ldk = (size_t)KV * dh, ldv = (size_t)NV * dh;
    const int tid = threadIdx.x, r = tid >> 2, cg = tid & 3;
    const int t0 = qb * ATT_BR, tq = t0 + r;
    const float *kh = k + (size_t)b * T * ldk + (size_t)hk * dh;
    const float *vh = v + (size_t)b * T * ldv + (size_t)hv * dh;

    load_tile<DM>(Qs, q + (size_t)b * T * ldq + (size_t)h * dh, t0, T, ldq, dh);
    load_tile<DM>(dYs, dy + (size_t)b * T * ldq + (size_t)h * dh, t0, T, ldq, dh);
    load_vec(Ls, lse + ((size_t)b * H + h) * T, t0, T);
    load_vec(Ds, Dv + ((size_t)b * H + h) * T, t0, T);
    float dqa[DM / 4];
#pragma unroll
    for (int j = 0; j < DM / 4; j++) dqa[j] = 0.0f;

    const int kb_lo = t0 - Lb + 1 > 0 ? (t0 - Lb + 1) / ATT_BC : 0; /* as k_attn_fwd */
    for (int kb = kb_lo; kb <= qb; kb++) {
        const int s0 = kb * ATT_BC;
        __syncthreads();
        load_tile<DM>(Ks, kh, s0, T, ldk, dh);
        load_tile<DM>(Vs, vh, s0, T, ldv, dh);
        __syncthreads();
        float sc[8], dp[8];
        tile_dots<DM>(sc, Qs, Ks, r, cg, dh);
        tile_dots<DM>(dp, dYs, Vs, r, cg, dh);
        const float lr = Ls[r], dr = Ds[r];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int c = cg + 4 * i, kc = s0 + c;
            float p = (tq < T && kc <= tq && tq - kc < Lb) ? expf(sc[i] * scale - lr) : 0.0f;
            dSs[r * ATT_PLD + c] = p * (dp[i] - dr);
        }
        __syncthreads();
        for (int c = 0; c < ATT_BC; c++) {
            float ds = dSs[r * ATT_PLD + c];
            const float *kr = Ks + c * LD + cg;
#pragma unroll
            for (int j = 0; j < DM / 4; j++) dqa[j] = fmaf(ds, kr[4 * j], dqa[j]);
        }
    }
    if (tq < T) {
        float *o = dq + (size_t)b * T * ldq + (size_t)tq * ldq + (size_t)h * dh;
#pragma unroll
        for (int j = 0; j < DM / 4; j++) {
            int d = cg + 4 * j;
            if (d < dh) o[d] = dqa[j] * scale;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Host side                                                                 */
/* ------------------------------------------------------------------------ */

template <int DM> static cudaError_t optin_one(int max_optin)
{
    cudaError_t e = cuda_smem_optin(cudaSuccess, k_attn_fwd<DM>, fwd_smem<DM>(), max_optin);
    e = cuda_smem_optin(e, k_attn_stats<DM>, stats_smem<DM>(), max_optin);
    e = cuda_smem_optin(e, k_attn_bwd_kv<DM>, bwd_kv_smem<DM>(), max_optin);
    return cuda_smem_optin(e, k_attn_bwd_q<DM>, bwd_q_smem<DM>(), max_optin);
}

gsink_status cuda_attention_init(gsink_backend *be)
{
    int mx = CUDA_CTX(be)->max_smem_optin;
    cudaError_t e = optin_one<32>(mx);
    if (e == cudaSuccess) e = optin_one<64>(mx);
    if (e == cudaSuccess) e = optin_one<128>(mx);
    if (e == cudaSuccess) e = optin_one<256>(mx);
    gsink_status rc = cuda_check(be, e, "attention: cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    if (!rc) rc = cuda_attention_tc_init(be);
    return rc ? rc : cuda_attention_mma_init(be);
}

static gsink_status attn_check(gsink_backend *be, const gsink_attn_shape *s)
{
    if (!s) return cuda_fail(be, GSINK_ERR_NULL_ARGUMENT, "attention: shape is NULL");
    const int H = s->n_heads, KV = s->n_kv_heads, NV = s->n_v_heads;
    if (s->batch < 0 || s->seq < 0 || H <= 0 || KV <= 0 || NV <= 0 || s->d_head <= 0 ||
        H % KV || H % NV)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT,
                         "attention: bad shape B=%d T=%d H=%d KV=%d NV=%d dh=%d", s->batch, s->seq,
                         H, KV, NV, s->d_head);
    if (NV % KV)
        return cuda_fail(be, GSINK_ERR_UNSUPPORTED,
                         "attention: n_v_heads %d must be a multiple of n_kv_heads %d", NV, KV);
    if (s->d_head > 256)
        return cuda_fail(be, GSINK_ERR_UNSUPPORTED, "attention: d_head %d > 256", s->d_head);
    if (s->batch > 65535 || H > 65535)
        return cuda_fail(be, GSINK_ERR_UNSUPPORTED, "attention: batch or heads above 65535");
    return GSINK_OK;
}

static int pick_dm(int dh) { return dh <= 32 ? 32 : dh <= 64 ? 64 : dh <= 128 ? 128 : 256; }

static gsink_status smem_fits(gsink_backend *be, size_t bytes, const char *what)
{
    if (bytes > 48 * 1024 && bytes > (size_t)CUDA_CTX(be)->max_smem_optin)
        return cuda_fail(be, GSINK_ERR_UNSUPPORTED,
                         "%s needs %zu bytes of shared memory per block; the device allows %d",
                         what, bytes, CUDA_CTX(be)->max_smem_optin);
    return GSINK_OK;
}

template <int DM>
static gsink_status stats_dm(gsink_backend *be, const gsink_attn_shape *s, const float *q,
                             const float *k, const float *lse, gsink_attn_stats stats)
{
    if (!stats.mass && !stats.sq && !stats.win) return GSINK_OK;
    const int T = s->seq, nb = (T + ATT_BR - 1) / ATT_BR;
    const float scale = gsink_attn_scale(s);
    gsink_status rc = smem_fits(be, stats_smem<DM>(), "attention statistics");
    if (rc) return rc;
    GSINK_LAUNCH(k_attn_stats<DM>, dim3(nb, s->n_heads, s->batch), ATT_THREADS, stats_smem<DM>(),
                 CUDA_CTX(be)->stream)(q, k, lse, stats.mass, stats.sq, stats.win, T, s->n_heads,
                                       s->n_kv_heads, s->d_head, s->sink_window,
                                       gsink__attn_lookback(s), scale);
    return cuda_launch_check(be, "attention statistics");
}

template <int DM>
static gsink_status fwd_dm(gsink_backend *be, const gsink_attn_shape *s, float *y, float *lse,
                           const float *q, const float *k, const float *v)
{
    cudaStream_t st = CUDA_CTX(be)->stream;
    const int T = s->seq, nb = (T + ATT_BR - 1) / ATT_BR;
    const float scale = gsink_attn_scale(s);
    dim3 grid(nb, s->n_heads, s->batch);
    gsink_status rc = smem_fits(be, fwd_smem<DM>(), "attention forward");
    if (rc) return rc;
    GSINK_LAUNCH(k_attn_fwd<DM>, grid, ATT_THREADS, fwd_smem<DM>(), st)(q, k, v, y, lse, T, s->n_heads,
                                                              s->n_kv_heads, s->n_v_heads,
                                                              s->d_head, gsink__attn_lookback(s),
                                                              scale);
    return cuda_launch_check(be, "attention forward");
}

/* The column statistics from q, k and a finished forward's lse (any forward). */
static gsink_status stats_any(gsink_backend *be, const gsink_attn_shape *s, const float *q,
                              const float *k, const float *lse, gsink_attn_stats stats)
{
    switch (pick_dm(s->d_head)) {
    case 32: return stats_dm<32>(be, s, q, k, lse, stats);
    case 64: return stats_dm<64>(be, s, q, k, lse, stats);
    case 128: return stats_dm<128>(be, s, q, k, lse, stats);
    default: return stats_dm<256>(be, s, q, k, lse, stats);
    }
}

gsink_status cuda_attention_stats(gsink_backend *be, const gsink_attn_shape *s, const float *q,
                                  const float *k, const float *lse, gsink_attn_stats stats)
{
    gsink_status rc = attn_check(be, s);
    if (rc || s->batch == 0 || s->seq == 0) return rc;
    rc = cuda_enter(be);
    if (rc) return rc;
    return stats_any(be, s, q, k, lse, stats);
}

gsink_status cuda_attention_fwd(gsink_backend *be, const gsink_attn_shape *s, float *y,
                                float *lse, const float *q, const float *k, const float *v,
                                gsink_attn_stats stats)
{
    gsink_status rc = attn_check(be, s);
    if (rc || s->batch == 0 || s->seq == 0) return rc;
    rc = cuda_enter(be);
    if (rc) return rc;
    if (cuda_attention_mma_eligible(be, s)) /* BF16 through mma.sync (attention_mma.cu) */
        rc = cuda_attention_mma_fwd(be, s, y, lse, q, k, v);
    else if (cuda_attention_tc_eligible(be, s)) /* TF32 or BF16 tensor cores (attention_tc.cu) */
        rc = cuda_attention_tc_fwd(be, s, y, lse, q, k, v);
    else
        switch (pick_dm(s->d_head)) {
        case 32: rc = fwd_dm<32>(be, s, y, lse, q, k, v); break;
        case 64: rc = fwd_dm<64>(be, s, y, lse, q, k, v); break;
        case 128: rc = fwd_dm<128>(be, s, y, lse, q, k, v); break;
        default: rc = fwd_dm<256>(be, s, y, lse, q, k, v); break;
        }
    return rc ? rc : stats_any(be, s, q, k, lse, stats);
}

template <int DM>
static gsink_status bwd_dm(gsink_backend *be, const gsink_attn_shape *s, float *dq, float *dk,
                           float *dv, const float *dy, const float *q, const float *k,
                           const float *v, const float *lse, const float *D,
                           gsink_attn_stats stats)
{
    cudaStream_t st = CUDA_CTX(be)->stream;
    const int T = s->seq, nb = (T + ATT_BR - 1) / ATT_BR;
    const float scale = gsink_attn_scale(s);
    gsink_status rc = smem_fits(be, bwd_kv_smem<DM>(), "attention backward (dK, dV)");
    if (!rc) rc = smem_fits(be, bwd_q_smem<DM>(), "attention backward (dQ)");
    if (rc) return rc;
    GSINK_LAUNCH(k_attn_bwd_kv<DM>, dim3(nb, s->n_kv_heads, s->batch), ATT_THREADS, bwd_kv_smem<DM>(), st)(
        q, k, v, dy, lse, D, dk, dv, stats.mass, stats.sq, stats.win, T, s->n_heads, s->n_kv_heads,
        s->n_v_heads, s->d_head, s->sink_window, gsink__attn_lookback(s), scale);
    rc = cuda_launch_check(be, "attention backward (dK, dV)");
    if (rc) return rc;
    GSINK_LAUNCH(k_attn_bwd_q<DM>, dim3(nb, s->n_heads, s->batch), ATT_THREADS, bwd_q_smem<DM>(), st)(
        q, k, v, dy, lse, D, dq, T, s->n_heads, s->n_kv_heads, s->n_v_heads, s->d_head,
        gsink__attn_lookback(s), scale);
    return cuda_launch_check(be, "attention backward (dQ)");
}

gsink_status cuda_attention_bwd(gsink_backend *be, const gsink_attn_shape *s, float *dq,
                                float *dk, float *dv, const float *dy, const float *q,
                                const float *k, const float *v, const float *y,
                                const float *lse, gsink_attn_stats stats)
{
    gsink_status rc = attn_check(be, s);
    if (rc || s->batch == 0 || s->seq == 0) return rc;
    rc = cuda_enter(be);
    if (rc) return rc;
    const int B = s->batch, T = s->seq, H = s->n_heads, dh = s->d_head;
    float *D = NULL;
    rc = cuda_scratch(be, sizeof(float) * (size_t)B * H * T, (void **)&D);
    if (rc) return rc;
    size_t rows = (size_t)B * T * H;
    GSINK_LAUNCH(k_attn_dot, cuda_blocks(rows * 32, 256), 256, 0, CUDA_CTX(be)->stream)(D, dy, y, B, T, H, dh);
    rc = cuda_launch_check(be, "attention backward (D)");
    if (rc) return rc;
    if (cuda_attention_mma_eligible(be, s)) /* BF16 through mma.sync (attention_mma.cu) */
        return cuda_attention_mma_bwd(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
    if (cuda_attention_tc_eligible(be, s)) /* TF32 or BF16 tensor cores (attention_tc.cu) */
        return cuda_attention_tc_bwd(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
    switch (pick_dm(dh)) {
    case 32: return bwd_dm<32>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
    case 64: return bwd_dm<64>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
    case 128: return bwd_dm<128>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
    default: return bwd_dm<256>(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
    }
}
