/*
 * ops.cu - element-wise, normalisation, embedding, V-scale, cross-entropy,
 * reduction and optimizer kernels of the CUDA backend.
 *
 * Numerics follow the CPU backend (the reference): row reductions
 * (RMSNorm, V-scale norms, sums of squares, the cross-entropy's sum of float
 * exps) accumulate in double; every reduction uses a fixed order for a given shape, so results
 * are bitwise reproducible run to run (no floating-point atomics anywhere).
 */
#include <float.h>
#include <math.h>

#include "cuda_common.cuh"
#include "wdtype.h"

/* ------------------------------------------------------------------------ */
/* Reduction helpers                                                         */
/* ------------------------------------------------------------------------ */

template <typename T> __device__ __forceinline__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32); every thread gets the
 * same result. sh holds 32 elements. */
template <typename T> __device__ T block_sum(T v, T *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* sh may still be read by a previous reduction */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    T r = lane < nw ? sh[lane] : T(0);
    return warp_sum(r);
}

__device__ float block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float r = lane < nw ? sh[lane] : -FLT_MAX;
    return warp_max(r);
}

#define OPS_THREADS 256

static gsink_status launched(gsink_backend *be, const char *what)
{
    return cuda_launch_check(be, what);
}

/* Column sums out[c] += sum_r f(r, c) of an implicit (rows, cols) matrix in a
 * fixed order: per-chunk partials in double, then the chunks in order. */
template <class F>
__global__ void k_col_partial(double *partial, F f, int rows, int cols, int chunk)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    int r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    double s = 0.0;
    for (int r = r0; r < r1; r++) s += f(r, c);
    partial[(size_t)blockIdx.y * cols + c] = s;
}

__global__ void k_col_final(float *out, const double *partial, int nchunks, int cols)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    double s = 0.0;
    for (int k = 0; k < nchunks; k++) s += partial[(size_t)k * cols + c];
    out[c] += (float)s;
}

static void col_plan(int rows, int *chunk, int *nchunks)
{
    int ch = 64;
    while ((rows + ch - 1) / ch > 65535) ch *= 2;
    *chunk = ch;
    *nchunks = rows > 0 ? (rows + ch - 1) / ch : 0;
}

/* partial must hold nchunks*cols doubles (col_plan). */
template <class F>
static gsink_status col_reduce(gsink_backend *be, float *out, F f, int rows, int cols,
                               double *partial, const char *what)
{
    if (rows <= 0 || cols <= 0) return GSINK_OK;
    int chunk, nchunks;
    col_plan(rows, &chunk, &nchunks);
    cudaStream_t st = CUDA_CTX(be)->stream;
    dim3 grid((cols + 127) / 128, nchunks);
    GSINK_LAUNCH(k_col_partial<F>, grid, 128, 0, st)(partial, f, rows, cols, chunk);
    GSINK_LAUNCH(k_col_final, (cols + 127) / 128, 128, 0, st)(out, partial, nchunks, cols);
    return launched(be, what);
}

static size_t col_partial_doubles(int rows, int cols)
{
    int chunk, nchunks;
    col_plan(rows, &chunk, &nchunks);
    return (size_t)nchunks * (size_t)(cols > 0 ? cols : 0);
}

/* ------------------------------------------------------------------------ */
/* Embedding                                                                 */
/* ------------------------------------------------------------------------ */

__global__ void k_embedding_fwd(float *__restrict__ out, const int32_t *__restrict__ tokens,
                                const float *__restrict__ table, int N, int d)
{
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *src = table + (size_t)tokens[n] * d;
        float *dst = out + (size_t)n * d;
        for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
    }
}

gsink_status cuda_embedding_fwd(gsink_backend *be, float *out, const int32_t *tokens,
                                const float *table, int N, int d)
{
    if (N <= 0 || d <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_embedding_fwd, cuda_blocks((size_t)N, 1, 65535u * 8u), 128, 0, CUDA_CTX(be)->stream)(
        out, tokens, table, N, d);
    return launched(be, "embedding_fwd");
}

/* Weights stored in 16 bits (wdtype.h): the scalar conversions are the CPU
 * backend's, so both round identically. */
__global__ void k_embedding_fwd_w(float *__restrict__ out, const int32_t *__restrict__ tokens,
                                  const void *__restrict__ table, int dtype, int N, int d)
{
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        size_t base = (size_t)tokens[n] * d;
        float *dst = out + (size_t)n * d;
        for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = gsink__wd_load(table, dtype, base + i);
    }
}

gsink_status cuda_embedding_fwd_w(gsink_backend *be, float *out, const int32_t *tokens,
                                  const void *table, int dtype, int N, int d)
{
    if (dtype == GSINK_WD_F32) return cuda_embedding_fwd(be, out, tokens, (const float *)table, N, d);
    if (dtype != GSINK_WD_BF16 && dtype != GSINK_WD_F16)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "embedding_fwd_w: unknown weight storage type %d", dtype);
    if (N <= 0 || d <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_embedding_fwd_w, cuda_blocks((size_t)N, 1, 65535u * 8u), 128, 0, CUDA_CTX(be)->stream)(
        out, tokens, table, dtype, N, d);
    return launched(be, "embedding_fwd_w");
}

/* dst = src between storage types; rows x cols with source row stride ld
 * (a packed array is one row). */
__global__ void k_convert(void *__restrict__ dst, int ddt, const void *__restrict__ src, int sdt,
                          size_t rows, size_t cols, size_t ld)
{
    size_t n = rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, c = i - r * cols;
        gsink__wd_store(dst, ddt, i, gsink__wd_load(src, sdt, r * ld + c));
    }
}

gsink_status cuda_convert_rows(gsink_backend *be, void *dst, int ddt, const void *src, int sdt, size_t rows,
                               size_t cols, size_t ld)
{
    if (!gsink__wd_size(ddt) || !gsink__wd_size(sdt))
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "convert: unknown storage type %d -> %d", sdt, ddt);
    if (rows == 0 || cols == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_convert, cuda_blocks(rows * cols, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(
        dst, ddt, src, sdt, rows, cols, ld);
    return launched(be, "convert");
}

gsink_status cuda_convert(gsink_backend *be, void *dst, int ddt, const void *src, int sdt, size_t n)
{
    if (ddt == sdt && gsink__wd_size(ddt)) {
        if (n == 0 || dst == src) return GSINK_OK;
        gsink_status st = cuda_enter(be);
        if (st) return st;
        return cuda_check(be, cudaMemcpyAsync(dst, src, n * gsink__wd_size(ddt), cudaMemcpyDeviceToDevice,
                                              CUDA_CTX(be)->stream), "convert (cudaMemcpyAsync)");
    }
    return cuda_convert_rows(be, dst, ddt, src, sdt, 1, n, n);
}

/* Deterministic scatter-add without sorting: block (x, y) owns 128 columns and
 * the token ids with id % EMB_BUCKETS == y, and walks all rows in order, so
 * each dtable element is summed in row order by one thread. */
#define EMB_BUCKETS 128

__global__ void k_embedding_bwd(float *__restrict__ dtable, const int32_t *__restrict__ tokens,
                                const float *__restrict__ dout, int N, int d)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned bucket = blockIdx.y;
    if (c >= d) return;
    for (int n = 0; n < N; n++) {
        int t = __ldg(tokens + n);
        if ((unsigned)t % EMB_BUCKETS != bucket) continue;
        dtable[(size_t)t * d + c] += dout[(size_t)n * d + c];
    }
}

gsink_status cuda_embedding_bwd(gsink_backend *be, float *dtable, const int32_t *tokens,
                                const float *dout, int N, int d)
{
    if (N <= 0 || d <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    dim3 grid((d + 127) / 128, EMB_BUCKETS);
    GSINK_LAUNCH(k_embedding_bwd, grid, 128, 0, CUDA_CTX(be)->stream)(dtable, tokens, dout, N, d);
    return launched(be, "embedding_bwd");
}

/* ------------------------------------------------------------------------ */
/* RMSNorm                                                                   */
/* ------------------------------------------------------------------------ */

__global__ void k_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *gain, int N,
                              int d, float eps)
{
    __shared__ double sh[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *xr = x + (size_t)n * d;
        float *o = out + (size_t)n * d;
        double ss = 0.0;
        for (int i = threadIdx.x; i < d; i += blockDim.x) ss += (double)xr[i] * xr[i];
        ss = block_sum(ss, sh);
        float r = (float)(1.0 / sqrt(ss / d + eps));
        if (threadIdx.x == 0) rstd[n] = r;
        for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = xr[i] * r * gain[i];
    }
}

gsink_status cuda_rmsnorm_fwd(gsink_backend *be, float *out, float *rstd, const float *x,
                              const float *gain, int N, int d, float eps)
{
    if (N <= 0 || d <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_rmsnorm_fwd, cuda_blocks((size_t)N, 1, 65535u * 8u), OPS_THREADS, 0, CUDA_CTX(be)->stream)(out, rstd, x, gain, N, d, eps);
    return launched(be, "rmsnorm_fwd");
}

__global__ void k_rmsnorm_bwd(float *dx, const float *dout, const float *x, const float *gain,
                              const float *rstd, int N, int d, int accumulate)
{
    __shared__ double sh[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *xr = x + (size_t)n * d, *dy = dout + (size_t)n * d;
        float *dxr = dx + (size_t)n * d;
        float r = rstd[n];
        double dot = 0.0;
        for (int i = threadIdx.x; i < d; i += blockDim.x) dot += (double)gain[i] * dy[i] * xr[i];
        dot = block_sum(dot, sh);
        float c = (float)(dot / d) * r * r;
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            float v = r * (gain[i] * dy[i] - xr[i] * c);
            dxr[i] = accumulate ? dxr[i] + v : v;
        }
    }
}

struct rms_dgain_term {
    const float *dout, *x, *rstd;
    int d;
    __device__ double operator()(int n, int i) const
    {
        size_t o = (size_t)n * d + i;
        return (double)(dout[o] * x[o] * rstd[n]);
    }
};

gsink_status cuda_rmsnorm_bwd(gsink_backend *be, float *dx, float *dgain, const float *dout,
                              const float *x, const float *gain, const float *rstd, int N, int d,
                              int accumulate)
{
    if (N <= 0 || d <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    double *partial = NULL;
    if (dgain) {
        st = cuda_scratch(be, col_partial_doubles(N, d) * sizeof(double), (void **)&partial);
        if (st) return st;
    }
    /* dgain first: dx may alias dout when a caller normalises in place. */
    if (dgain) {
        rms_dgain_term f = {dout, x, rstd, d};
        st = col_reduce(be, dgain, f, N, d, partial, "rmsnorm_bwd (dgain)");
        if (st) return st;
    }
    GSINK_LAUNCH(k_rmsnorm_bwd, cuda_blocks((size_t)N, 1, 65535u * 8u), OPS_THREADS, 0, CUDA_CTX(be)->stream)(dx, dout, x, gain, rstd, N, d, accumulate);
    return launched(be, "rmsnorm_bwd");
}

/* ------------------------------------------------------------------------ */
/* RoPE on the first rot_dims of each head: pairs (i, i + rot_dims/2) (HF     */
/* rotate_half) or (2i, 2i+1) (interleaved, GLM); angles in double as on the CPU */
/* ------------------------------------------------------------------------ */

__global__ void k_rope_table(float *cs, int T, int half, const double *inv_freq, float scale, int inverse)
{
    size_t total = (size_t)T * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        int t = (int)(idx / half), i = (int)(idx % half);
        double ang = (double)t * inv_freq[i];
        double s, c;
        sincos(ang, &s, &c);
        if (scale != 1.0f) c *= scale, s *= scale;
        cs[idx * 2] = (float)c;
        cs[idx * 2 + 1] = (float)(inverse ? -s : s);
    }
}

__global__ void k_rope_apply(float *x, const float *cs, size_t rows, int T, int heads, int dh, int half,
                             int interleaved)
{
    size_t total = rows * heads * half;
    int step = interleaved ? 2 : 1, other = interleaved ? 1 : half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        size_t rh = idx / half; /* row * heads + head */
        int t = (int)((rh / heads) % (size_t)T);
        float *p1 = x + rh * dh + (size_t)i * step, *p2 = p1 + other;
        const float *c = cs + ((size_t)t * half + i) * 2;
        float x1 = *p1, x2 = *p2, co = c[0], si = c[1];
        *p1 = x1 * co - x2 * si;
        *p2 = x2 * co + x1 * si;
    }
}

gsink_status cuda_rope(gsink_backend *be, float *x, int B, int T, int heads, int d_head, int rot_dims,
                       int interleaved, const double *inv_freq, float scale, int inverse)
{
    if (B <= 0 || T <= 0 || heads <= 0 || d_head <= 0) return GSINK_OK;
    if (rot_dims < 2 || rot_dims > d_head || rot_dims % 2)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "rope: rot_dims %d (d_head %d)", rot_dims, d_head);
    gsink_status st = cuda_enter(be);
    if (st) return st;
    int half = rot_dims / 2;
    float *cs = NULL;
    st = cuda_scratch(be, sizeof(float) * 2 * (size_t)T * half, (void **)&cs);
    if (st) return st;
    cudaStream_t s = CUDA_CTX(be)->stream;
    GSINK_LAUNCH(k_rope_table, cuda_blocks((size_t)T * half, OPS_THREADS), OPS_THREADS, 0, s)(
        cs, T, half, inv_freq, scale, inverse);
    size_t rows = (size_t)B * T;
    GSINK_LAUNCH(k_rope_apply, cuda_blocks(rows * heads * half, OPS_THREADS), OPS_THREADS, 0, s)(
        x, cs, rows, T, heads, d_head, half, interleaved);
    return launched(be, "rope");
}

/* ------------------------------------------------------------------------ */
/* V-scale                                                                   */
/* ------------------------------------------------------------------------ */

/* One warp per (row, output head). */
__global__ void k_vscale_fwd(float *out, const float *v, const float *theta, int N, int hin,
                             int hout, int dh, float c0, int mode)
{
    int lane = threadIdx.x & 31;
    size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
    size_t total = (size_t)N * hout;
    int rep = hout / hin;
    for (; warp < total; warp += nwarps) {
        size_t n = warp / hout;
        int j = (int)(warp % hout);
        const float *vi = v + (n * hin + j / rep) * dh;
        float *o = out + (n * hout + j) * dh;
        if (mode == GSINK_VSCALE_FULL) {
            double r = 0.0;
            for (int e = lane; e < dh; e += 32) r += (double)vi[e] * vi[e];
            r = warp_sum(r);
            double C = (double)c0 * exp((double)theta[j]);
            float phi = (float)(r / (r + C));
            for (int e = lane; e < dh; e += 32) o[e] = phi * vi[e];
        } else {
            for (int e = lane; e < dh; e += 32) o[e] = vi[e];
        }
    }
}

static gsink_status vscale_check(gsink_backend *be, int N, int hin, int hout, int dh, int mode)
{
    if (N < 0 || hin <= 0 || hout <= 0 || dh <= 0 || hout % hin)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT,
                         "vscale: bad shape N=%d heads_in=%d heads_out=%d dh=%d", N, hin, hout, dh);
    if (mode != GSINK_VSCALE_OFF && mode != GSINK_VSCALE_FULL && mode != GSINK_VSCALE_BACKWARD_ONLY)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "vscale: unknown mode %d", mode);
    return GSINK_OK;
}

gsink_status cuda_vscale_fwd(gsink_backend *be, float *out, const float *v, const float *theta,
                             int N, int heads_in, int heads_out, int dh, float c0, int mode)
{
    gsink_status st = vscale_check(be, N, heads_in, heads_out, dh, mode);
    if (st || N == 0) return st;
    st = cuda_enter(be);
    if (st) return st;
    size_t warps = (size_t)N * heads_out;
    GSINK_LAUNCH(k_vscale_fwd, cuda_blocks(warps * 32, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(
        out, v, theta, N, heads_in, heads_out, dh, c0, mode);
    return launched(be, "vscale_fwd");
}

/* One warp per (row, input head): dv sums the Jacobian-transposed gradients of
 * every output head that reads this input head, in head order. contrib (may be
 * NULL) receives d loss / d theta_j of each (row, output head). */
__global__ void k_vscale_bwd(float *dv, double *contrib, const float *dout, const float *v,
                             const float *theta, int N, int hin, int hout, int dh, float c0,
                             int mode)
{
    int lane = threadIdx.x & 31;
    size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
    size_t total = (size_t)N * hin;
    int rep = hout / hin;
    for (; warp < total; warp += nwarps) {
        size_t n = warp / hin;
        int i = (int)(warp % hin);
        const float *vi = v + (n * hin + i) * dh;
        float *dvi = dv + (n * hin + i) * dh;
        double r = 0.0;
        if (mode != GSINK_VSCALE_OFF) {
            for (int e = lane; e < dh; e += 32) r += (double)vi[e] * vi[e];
            r = warp_sum(r);
        }
        for (int jj = 0; jj < rep; jj++) {
            int j = i * rep + jj;
            const float *go = dout + (n * hout + j) * dh;
            if (mode == GSINK_VSCALE_OFF) {
                for (int e = lane; e < dh; e += 32) dvi[e] = (jj ? dvi[e] : 0.0f) + go[e];
                continue;
            }
            double C = (double)c0 * exp((double)theta[j]);
            double phi = r / (r + C), coef = 2.0 * C / ((r + C) * (r + C));
            double vg = 0.0;
            for (int e = lane; e < dh; e += 32) vg += (double)vi[e] * go[e];
            vg = warp_sum(vg);
            for (int e = lane; e < dh; e += 32) {
                float term = (float)(phi * go[e] + coef * vg * vi[e]);
                dvi[e] = (jj ? dvi[e] : 0.0f) + term;
            }
            if (contrib && lane == 0) contrib[n * hout + j] = vg * (-r * C / ((r + C) * (r + C)));
        }
    }
}

struct vscale_dtheta_term {
    const double *contrib;
    int hout;
    __device__ double operator()(int n, int j) const { return contrib[(size_t)n * hout + j]; }
};

gsink_status cuda_vscale_bwd(gsink_backend *be, float *dv, float *dtheta, const float *dout,
                             const float *v, const float *theta, int N, int heads_in,
                             int heads_out, int dh, float c0, int mode)
{
    gsink_status st = vscale_check(be, N, heads_in, heads_out, dh, mode);
    if (st || N == 0) return st;
    st = cuda_enter(be);
    if (st) return st;
    double *contrib = NULL, *partial = NULL;
    int want_theta = dtheta && mode == GSINK_VSCALE_FULL;
    if (want_theta) {
        size_t nc = (size_t)N * heads_out, np = col_partial_doubles(N, heads_out);
        double *buf = NULL;
        st = cuda_scratch(be, (nc + np) * sizeof(double), (void **)&buf);
        if (st) return st;
        contrib = buf;
        partial = buf + nc;
    }
    size_t warps = (size_t)N * heads_in;
    GSINK_LAUNCH(k_vscale_bwd, cuda_blocks(warps * 32, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(
        dv, contrib, dout, v, theta, N, heads_in, heads_out, dh, c0, mode);
    st = launched(be, "vscale_bwd");
    if (st || !want_theta) return st;
    vscale_dtheta_term f = {contrib, heads_out};
    return col_reduce(be, dtheta, f, N, heads_out, partial, "vscale_bwd (dtheta)");
}

/* ------------------------------------------------------------------------ */
/* SwiGLU                                                                    */
/* ------------------------------------------------------------------------ */

__global__ void k_swiglu_fwd(float *h, const float *gate, const float *up, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        h[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

__global__ void k_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                             const float *up, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i], u = up[i], d = dh[i];
        float sg = 1.0f / (1.0f + expf(-g));
        float silu = g * sg;
        dgate[i] = d * u * sg * (1.0f + g * (1.0f - sg));
        dup[i] = d * silu;
    }
}

gsink_status cuda_swiglu_fwd(gsink_backend *be, float *h, const float *gate, const float *up,
                             size_t n)
{
    if (n == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_swiglu_fwd, cuda_blocks(n, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(h, gate, up, n);
    return launched(be, "swiglu_fwd");
}

gsink_status cuda_swiglu_bwd(gsink_backend *be, float *dgate, float *dup, const float *dh,
                             const float *gate, const float *up, size_t n)
{
    if (n == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_swiglu_bwd, cuda_blocks(n, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(
        dgate, dup, dh, gate, up, n);
    return launched(be, "swiglu_bwd");
}

/* ------------------------------------------------------------------------ */
/* Cross-entropy                                                             */
/* ------------------------------------------------------------------------ */

/* Rows whose target is < 0 (ignored) or >= V (never read out of bounds) add
 * nothing. */
__global__ void k_xent_rows(double *row_loss, const float *logits, const int32_t *targets, int N,
                            int V)
{
    __shared__ double shd[32];
    __shared__ float shf[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        int tgt = targets[n];
        if (tgt < 0 || tgt >= V) {
            if (threadIdx.x == 0) row_loss[n] = 0.0;
            continue;
        }
        const float *l = logits + (size_t)n * V;
        float mx = -FLT_MAX;
        for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, l[j]);
        mx = block_max(mx, shf);
        double s = 0.0;
        for (int j = threadIdx.x; j < V; j += blockDim.x) s += (double)expf(l[j] - mx);
        s = block_sum(s, shd);
        if (threadIdx.x == 0) row_loss[n] = (mx + log(s)) - l[tgt];
    }
}

/* One block: res[0] = sum of row losses, res[1] = number of counted rows. */
__global__ void k_xent_total(double *res, const double *row_loss, const int32_t *targets, int N,
                             int V)
{
    __shared__ double sh[32];
    double s = 0.0, c = 0.0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        int t = targets[n];
        if (t >= 0 && t < V) {
            s += row_loss[n];
            c += 1.0;
        }
    }
    s = block_sum(s, sh);
    c = block_sum(c, sh);
    if (threadIdx.x == 0) {
        res[0] = s;
        res[1] = c;
    }
}

gsink_status cuda_xent_fwd(gsink_backend *be, double *loss_sum, int64_t *count,
                           const float *logits, const int32_t *targets, int N, int V)
{
    *loss_sum = 0.0;
    *count = 0;
    if (N <= 0 || V <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    double *buf = NULL;
    st = cuda_scratch(be, ((size_t)N + 2) * sizeof(double), (void **)&buf);
    if (st) return st;
    cudaStream_t s = CUDA_CTX(be)->stream;
    GSINK_LAUNCH(k_xent_rows, cuda_blocks((size_t)N, 1, 65535u * 8u), 512, 0, s)(buf + 2, logits, targets, N, V);
    GSINK_LAUNCH(k_xent_total, 1, 1024, 0, s)(buf, buf + 2, targets, N, V);
    st = launched(be, "xent_fwd");
    if (st) return st;
    double res[2];
    st = cuda_check(be, cudaMemcpyAsync(res, buf, sizeof res, cudaMemcpyDeviceToHost, s),
                    "xent_fwd (copy result)");
    if (!st) st = cuda_check(be, cudaStreamSynchronize(s), "xent_fwd (synchronize)");
    if (st) return st;
    *loss_sum = res[0];
    *count = (int64_t)res[1];
    return GSINK_OK;
}

__global__ void k_xent_bwd(float *dlogits, const float *logits, const int32_t *targets, int N,
                           int V, float scale)
{
    __shared__ double shd[32];
    __shared__ float shf[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *l = logits + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        int tgt = targets[n];
        if (tgt < 0 || tgt >= V) {
            for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = 0.0f;
            continue;
        }
        float mx = -FLT_MAX;
        for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, l[j]);
        mx = block_max(mx, shf);
        double s = 0.0;
        for (int j = threadIdx.x; j < V; j += blockDim.x) s += (double)expf(l[j] - mx);
        s = block_sum(s, shd);
        float inv = (float)(1.0 / s);
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float g = expf(l[j] - mx) * inv * scale;
            if (j == tgt) g -= scale;
            d[j] = g;
        }
        __syncthreads(); /* in place: the next row's reads stay in this block's own row */
    }
}

gsink_status cuda_xent_bwd(gsink_backend *be, float *dlogits, const float *logits,
                           const int32_t *targets, int N, int V, float scale)
{
    if (N <= 0 || V <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_xent_bwd, cuda_blocks((size_t)N, 1, 65535u * 8u), 512, 0, CUDA_CTX(be)->stream)(
        dlogits, logits, targets, N, V, scale);
    return launched(be, "xent_bwd");
}

/* ------------------------------------------------------------------------ */
/* Element-wise and reductions                                               */
/* ------------------------------------------------------------------------ */

__global__ void k_add(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

__global__ void k_scale(float *x, float alpha, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] *= alpha;
}

gsink_status cuda_add(gsink_backend *be, float *out, const float *a, const float *b, size_t n)
{
    if (n == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_add, cuda_blocks(n, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(out, a, b, n);
    return launched(be, "add");
}

gsink_status cuda_scale(gsink_backend *be, float *x, float alpha, size_t n)
{
    if (n == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_scale, cuda_blocks(n, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(x, alpha, n);
    return launched(be, "scale");
}

/* One warp per (row, head). */
__global__ void k_row_sumsq(float *out, const float *x, size_t rows, int heads, int width)
{
    int lane = threadIdx.x & 31;
    size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
    size_t total = rows * heads;
    for (; warp < total; warp += nwarps) {
        const float *p = x + warp * width;
        double s = 0.0;
        for (int i = lane; i < width; i += 32) s += (double)p[i] * p[i];
        s = warp_sum(s);
        if (lane == 0) out[warp] = (float)s;
    }
}

gsink_status cuda_row_sumsq(gsink_backend *be, float *out, const float *x, size_t rows,
                            int heads, int width)
{
    if (rows == 0 || heads <= 0 || width <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_row_sumsq, cuda_blocks(rows * heads * 32, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(out, x, rows, heads, width);
    return launched(be, "row_sumsq");
}

__global__ void k_batch_sum(float *out, const float *x, int B, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int b = 0; b < B; b++) s += x[(size_t)b * n + i];
        out[i] = s;
    }
}

gsink_status cuda_batch_sum(gsink_backend *be, float *out, const float *x, int B, size_t n)
{
    if (n == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_batch_sum, cuda_blocks(n, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(out, x, B, n);
    return launched(be, "batch_sum");
}

/* ---- streaming-analysis accumulators (backend.h, version 8) ---- */

__global__ void k_fold_sum(double *acc, const float *x, int B, size_t stride, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        double s = 0.0;
        for (int b = 0; b < B; b++) s += x[(size_t)b * stride + i];
        acc[i] += s;
    }
}

gsink_status cuda_fold_sum(gsink_backend *be, double *acc, const float *x, int B, size_t stride, size_t n)
{
    if (n == 0 || B <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_fold_sum, cuda_blocks(n, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(acc, x, B, stride, n);
    return launched(be, "fold_sum");
}

/* One block per position t (grid-stride): for each b in order, warp w sums
 * the squares of heads w, w + nw, ... into sh[h] (double); then thread 0
 * adds the row's norm to the total and the first nh threads (strided) each
 * head's norm to hs[h]. Dynamic shared memory: 2 * heads doubles. */
__global__ void k_fold_norms(double *acc, float *per_b, const float *x, const float *y, int B, int T, int R,
                             int heads, int hw, int nh)
{
    GSINK_DYN_SMEM(smem);
    double *sh = (double *)smem, *hs = sh + heads;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const size_t W = (size_t)heads * (size_t)hw;
    for (int t = blockIdx.x; t < R; t += gridDim.x) {
        double tot = 0.0;
        for (int h = threadIdx.x; h < nh; h += blockDim.x) hs[h] = 0.0;
        for (int b = 0; b < B; b++) {
            const size_t row = ((size_t)b * (size_t)T + (size_t)t) * W;
            for (int h = w; h < heads; h += nw) {
                double s = 0.0;
                for (int i = lane; i < hw; i += 32) {
                    const size_t at = row + (size_t)h * hw + i;
                    const double d = (double)x[at] - (y ? (double)y[at] : 0.0);
                    s += d * d;
                }
                s = warp_sum(s);
                if (lane == 0) sh[h] = s;
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                double all = 0.0;
                for (int h = 0; h < heads; h++) all += sh[h];
                tot += sqrt(all);
                if (per_b) per_b[(size_t)b * (size_t)R + (size_t)t] = (float)sqrt(all);
            }
            for (int h = threadIdx.x; h < nh; h += blockDim.x) hs[h] += sqrt(sh[h]);
            __syncthreads(); /* sh is overwritten for the next b */
        }
        if (acc) {
            double *o = acc + (size_t)t * (size_t)(1 + nh);
            if (threadIdx.x == 0) o[0] += tot;
            for (int h = threadIdx.x; h < nh; h += blockDim.x) o[1 + h] += hs[h];
        }
        __syncthreads(); /* hs is reset for the next t */
    }
}

gsink_status cuda_fold_norms(gsink_backend *be, double *acc, float *per_b, const float *x, const float *y, int B,
                             int T, int R, int heads, int hw, int nh)
{
    if (R <= 0 || B <= 0 || heads <= 0 || hw <= 0) return GSINK_OK;
    if (nh < 0 || nh > heads || R > T)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "fold_norms: nh %d (heads %d), R %d (T %d)", nh, heads, R, T);
    const size_t smem = 2 * sizeof(double) * (size_t)heads;
    if (smem > 48 * 1024)
        return cuda_fail(be, GSINK_ERR_UNSUPPORTED, "fold_norms: %d heads exceed the kernel's shared memory", heads);
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_fold_norms, cuda_blocks((size_t)R, 1), OPS_THREADS, smem, CUDA_CTX(be)->stream)(
        acc, per_b, x, y, B, T, R, heads, hw, nh);
    return launched(be, "fold_norms");
}

__global__ void k_fold_ratio(double *acc, const float *num, const float *den, int B, int R)
{
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < R; t += gridDim.x * blockDim.x) {
        double s = 0.0;
        for (int b = 0; b < B; b++) s += (double)num[(size_t)b * R + t] / (double)den[(size_t)b * R + t];
        acc[t] += s;
    }
}

gsink_status cuda_fold_ratio(gsink_backend *be, double *acc, const float *num, const float *den, int B, int R)
{
    if (R <= 0 || B <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_fold_ratio, cuda_blocks((size_t)R, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(
        acc, num, den, B, R);
    return launched(be, "fold_ratio");
}

/* One warp per (row, head), as k_row_sumsq, in double. */
__global__ void k_row_sumsq_d(double *out, const double *x, const double *y, size_t rows, int heads, int width)
{
    int lane = threadIdx.x & 31;
    size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    size_t nwarps = ((size_t)gridDim.x * blockDim.x) >> 5;
    size_t total = rows * heads;
    for (; warp < total; warp += nwarps) {
        const size_t o = warp * (size_t)width;
        double s = 0.0;
        for (int i = lane; i < width; i += 32) {
            double d = x[o + i] - (y ? y[o + i] : 0.0);
            s += d * d;
        }
        s = warp_sum(s);
        if (lane == 0) out[warp] = s;
    }
}

gsink_status cuda_row_sumsq_d(gsink_backend *be, double *out, const double *x, const double *y, size_t rows,
                              int heads, int width)
{
    if (rows == 0 || heads <= 0 || width <= 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_row_sumsq_d, cuda_blocks(rows * heads * 32, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(
        out, x, y, rows, heads, width);
    return launched(be, "row_sumsq_d");
}

#define SUMSQ_BLOCKS 1024

__global__ void k_sumsq_partial(double *part, int *fin, const float *x, size_t n)
{
    __shared__ double sh[32];
    double s = 0.0, bad = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i];
        if (!isfinite(v)) bad = 1.0;
        s += (double)v * v;
    }
    s = block_sum(s, sh);
    bad = block_sum(bad, sh);
    if (threadIdx.x == 0) {
        part[blockIdx.x] = s;
        fin[blockIdx.x] = bad == 0.0;
    }
}

__global__ void k_sumsq_final(double *res, const double *part, const int *fin, int nb)
{
    __shared__ double sh[32];
    double s = 0.0, bad = 0.0;
    for (int i = threadIdx.x; i < nb; i += blockDim.x) {
        s += part[i];
        if (!fin[i]) bad += 1.0;
    }
    s = block_sum(s, sh);
    bad = block_sum(bad, sh);
    if (threadIdx.x == 0) {
        res[0] = s;
        res[1] = bad;
    }
}

gsink_status cuda_sumsq(gsink_backend *be, double *out, int *finite, const float *x, size_t n)
{
    *out = 0.0;
    if (finite) *finite = 1;
    if (n == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    unsigned nb = cuda_blocks(n, OPS_THREADS * 4, SUMSQ_BLOCKS);
    double *buf = NULL;
    st = cuda_scratch(be, (2 + (size_t)nb) * sizeof(double) + (size_t)nb * sizeof(int),
                      (void **)&buf);
    if (st) return st;
    double *res = buf, *part = buf + 2;
    int *fin = (int *)(part + nb);
    cudaStream_t s = CUDA_CTX(be)->stream;
    GSINK_LAUNCH(k_sumsq_partial, nb, OPS_THREADS, 0, s)(part, fin, x, n);
    GSINK_LAUNCH(k_sumsq_final, 1, 256, 0, s)(res, part, fin, (int)nb);
    st = launched(be, "sumsq");
    if (st) return st;
    double h[2];
    st = cuda_check(be, cudaMemcpyAsync(h, res, sizeof h, cudaMemcpyDeviceToHost, s),
                    "sumsq (copy result)");
    if (!st) st = cuda_check(be, cudaStreamSynchronize(s), "sumsq (synchronize)");
    if (st) return st;
    *out = h[0];
    if (finite) *finite = h[1] == 0.0;
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* AdamW: the same IEEE operations in the same order as the CPU backend, so  */
/* both give bitwise the same p, m and v. nvcc contracts a * b + c into one  */
/* FMA (one rounding instead of two), and m = beta1 * m + (1 - beta1) * g     */
/* cancels: m is far smaller than its two terms, so the skipped rounding of   */
/* a term (half an ulp of ~0.07) became a 1e-4 relative error in m on an     */
/* H200. The _rn intrinsics are never contracted; division and square root    */
/* are the correctly rounded ones the CPU uses.                                */
/* ------------------------------------------------------------------------ */

__global__ void k_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr,
                        float beta1, float beta2, float eps, float wd, float bc1, float sbc2,
                        float gscale)
{
    const float c1 = __fsub_rn(1.0f, beta1), c2 = __fsub_rn(1.0f, beta2);
    const float lrwd = __fmul_rn(lr, wd), step = __fdiv_rn(lr, bc1);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float gi = __fmul_rn(g[i], gscale);
        float pi = p[i];
        pi = __fsub_rn(pi, __fmul_rn(lrwd, pi));
        float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(c1, gi));
        float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(c2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), sbc2), eps);
        pi = __fsub_rn(pi, __fdiv_rn(__fmul_rn(step, mi), denom));
        p[i] = pi;
    }
}

gsink_status cuda_adamw(gsink_backend *be, float *p, const float *g, float *m, float *v,
                        size_t n, float lr, float beta1, float beta2, float eps, float wd,
                        float bc1, float bc2, float gscale)
{
    if (n == 0) return GSINK_OK;
    if (!(bc1 > 0.0f) || !(bc2 > 0.0f))
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "adamw: bias corrections must be > 0");
    gsink_status st = cuda_enter(be);
    if (st) return st;
    GSINK_LAUNCH(k_adamw, cuda_blocks(n, OPS_THREADS), OPS_THREADS, 0, CUDA_CTX(be)->stream)(
        p, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, sqrtf(bc2), gscale);
    return launched(be, "adamw");
}
