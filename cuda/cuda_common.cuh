/*
 * cuda_common.cuh - shared state and helpers of the CUDA module.
 */
#ifndef GSINK_CUDA_COMMON_CUH
#define GSINK_CUDA_COMMON_CUH

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "memtrack.h"

#ifdef GSINK_CUDA_EMULATE
/* Host emulation of the CUDA subset used here (tests/cuda/emu): lets the
 * kernels run on machines without a GPU to check their indexing and logic. */
#include "cuda_emu.h"
#else
#include <cublas_v2.h>
#include <cuda_runtime.h>
#define GSINK_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define GSINK_DYN_SMEM(name) extern __shared__ float name[]
#endif

struct cuda_ctx {
    int device;
    cudaStream_t stream;     /* where ops run: own_stream, or a caller's (set_stream) */
    cudaStream_t own_stream; /* created with the backend, destroyed with it */
    cublasHandle_t blas;
    int math;              /* GSINK_CUDA_MATH_* */
    int attention;         /* GSINK_CUDA_ATTENTION_*: which BF16 attention kernels */
    void *scratch;         /* stream-ordered temporary buffer, grown on demand */
    size_t scratch_bytes;
    gsink_memtrack mem;    /* buffers handed out by cuda_alloc, and the scratch */
    int max_smem_optin;    /* bytes of shared memory a block may opt in to */
    int sm_count;
    char name[320];
};

#define CUDA_CTX(be) ((cuda_ctx *)(be)->ctx)

/* The kernels BF16 math uses for attention, fixed at backend creation from
 * the environment variable GSINK_CUDA_ATTENTION: "mma" selects the
 * mma.sync kernels of attention_mma.cu with blocks of 8 warps, "mma4" the
 * same kernels with blocks of 4 warps; anything else (or unset) the wmma
 * kernels of attention_tc.cu. The default becomes mma (in the faster of the
 * two block sizes) once those kernels have been verified and measured on a
 * GPU. */
enum { GSINK_CUDA_ATTENTION_WMMA = 0, GSINK_CUDA_ATTENTION_MMA = 1, GSINK_CUDA_ATTENTION_MMA4 = 2 };

/* Writes a formatted message into be->err and returns st. */
gsink_status cuda_fail(gsink_backend *be, gsink_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Maps a CUDA error to a status (+ message naming what failed); GSINK_OK for cudaSuccess. */
gsink_status cuda_check(gsink_backend *be, cudaError_t e, const char *what);
/* Checks for a kernel launch error (cudaGetLastError). */
gsink_status cuda_launch_check(gsink_backend *be, const char *what);
/* Makes the backend's device current for this thread. */
gsink_status cuda_enter(gsink_backend *be);
/* Returns at least bytes of scratch (device memory, valid until the next call). */
gsink_status cuda_scratch(gsink_backend *be, size_t bytes, void **p);

/* Opts kernel k in to `bytes` of dynamic shared memory when that is above the
 * default 48 KB and within the device's limit (launches above the limit are
 * refused later with a message); passes an earlier error through. */
template <class K> static inline cudaError_t cuda_smem_optin(cudaError_t e, K k, size_t bytes, int max_optin)
{
    if (e != cudaSuccess || bytes <= 48 * 1024 || bytes > (size_t)max_optin) return e;
    return cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

static inline unsigned cuda_blocks(size_t n, unsigned threads, unsigned cap = 65535u * 4u)
{
    size_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > cap) b = cap;
    return (unsigned)b;
}

/* ---- ops (ops.cu) ---- */
gsink_status cuda_embedding_fwd_w(gsink_backend *be, float *out, const int32_t *tokens,
                                  const void *table, int dtype, int N, int d);
gsink_status cuda_convert(gsink_backend *be, void *dst, int ddt, const void *src, int sdt, size_t n);
/* rows x cols of src (row stride ld) -> packed dst */
gsink_status cuda_convert_rows(gsink_backend *be, void *dst, int ddt, const void *src, int sdt, size_t rows,
                               size_t cols, size_t ld);
gsink_status cuda_embedding_fwd(gsink_backend *be, float *out, const int32_t *tokens,
                                const float *table, int N, int d);
gsink_status cuda_embedding_bwd(gsink_backend *be, float *dtable, const int32_t *tokens,
                                const float *dout, int N, int d);
gsink_status cuda_rmsnorm_fwd(gsink_backend *be, float *out, float *rstd, const float *x,
                              const float *gain, int N, int d, float eps);
gsink_status cuda_rmsnorm_bwd(gsink_backend *be, float *dx, float *dgain, const float *dout,
                              const float *x, const float *gain, const float *rstd, int N, int d,
                              int accumulate);
gsink_status cuda_rope(gsink_backend *be, float *x, int B, int T, int heads, int d_head, int rot_dims,
                       int interleaved, const double *inv_freq, float scale, int inverse);
gsink_status cuda_vscale_fwd(gsink_backend *be, float *out, const float *v, const float *theta,
                             int N, int heads_in, int heads_out, int dh, float c0, int mode);
gsink_status cuda_vscale_bwd(gsink_backend *be, float *dv, float *dtheta, const float *dout,
                             const float *v, const float *theta, int N, int heads_in,
                             int heads_out, int dh, float c0, int mode);
gsink_status cuda_swiglu_fwd(gsink_backend *be, float *h, const float *gate, const float *up,
                             size_t n);
gsink_status cuda_swiglu_bwd(gsink_backend *be, float *dgate, float *dup, const float *dh,
                             const float *gate, const float *up, size_t n);
gsink_status cuda_xent_fwd(gsink_backend *be, double *loss_sum, int64_t *count,
                           const float *logits, const int32_t *targets, int N, int V);
gsink_status cuda_xent_bwd(gsink_backend *be, float *dlogits, const float *logits,
                           const int32_t *targets, int N, int V, float scale);
gsink_status cuda_add(gsink_backend *be, float *out, const float *a, const float *b, size_t n);
gsink_status cuda_scale(gsink_backend *be, float *x, float alpha, size_t n);
gsink_status cuda_row_sumsq(gsink_backend *be, float *out, const float *x, size_t rows,
                            int heads, int width);
gsink_status cuda_batch_sum(gsink_backend *be, float *out, const float *x, int B, size_t n);
gsink_status cuda_fold_sum(gsink_backend *be, double *acc, const float *x, int B, size_t stride, size_t n);
gsink_status cuda_fold_norms(gsink_backend *be, double *acc, float *per_b, const float *x, const float *y, int B,
                             int T, int R, int heads, int hw, int nh);
gsink_status cuda_fold_ratio(gsink_backend *be, double *acc, const float *num, const float *den, int B, int R);
gsink_status cuda_row_sumsq_d(gsink_backend *be, double *out, const double *x, const double *y, size_t rows,
                              int heads, int width);
gsink_status cuda_sumsq(gsink_backend *be, double *out, int *finite, const float *x, size_t n);
gsink_status cuda_adamw(gsink_backend *be, float *p, const float *g, float *m, float *v,
                        size_t n, float lr, float beta1, float beta2, float eps, float wd,
                        float bc1, float bc2, float gscale);

/* ---- attention (attention.cu) ---- */
gsink_status cuda_attention_fwd(gsink_backend *be, const gsink_attn_shape *s, float *y,
                                float *lse, const float *q, const float *k, const float *v,
                                gsink_attn_stats stats);
gsink_status cuda_attention_bwd(gsink_backend *be, const gsink_attn_shape *s, float *dq,
                                float *dk, float *dv, const float *dy, const float *q,
                                const float *k, const float *v, const float *y,
                                const float *lse, gsink_attn_stats stats);
gsink_status cuda_attention_stats(gsink_backend *be, const gsink_attn_shape *s, const float *q,
                                  const float *k, const float *lse, gsink_attn_stats stats);
/* Opts the attention kernels in to large shared memory (called once at creation). */
gsink_status cuda_attention_init(gsink_backend *be);

/* ---- attention on TF32 or BF16 tensor cores (attention_tc.cu) ---- */
/* 1 when the tensor-core kernels can run this shape: math mode TF32 or BF16
 * (the kernels of that precision), d_head <= 128, a valid GQA shape and enough
 * shared memory; otherwise the exact kernels. */
int cuda_attention_tc_eligible(gsink_backend *be, const gsink_attn_shape *s);
/* y (B, T, H, dh) and lse (B, H, T), written (=). */
gsink_status cuda_attention_tc_fwd(gsink_backend *be, const gsink_attn_shape *s, float *y,
                                   float *lse, const float *q, const float *k, const float *v);
/* dq, dk, dv written (=) from D(b, h, t) = <dy_t, y_t> (k_attn_dot); the
 * column statistics of stats (any pointer may be NULL), each (B, H, T), are
 * written (=) from the recomputed probabilities. */
gsink_status cuda_attention_tc_bwd(gsink_backend *be, const gsink_attn_shape *s, float *dq,
                                   float *dk, float *dv, const float *dy, const float *q,
                                   const float *k, const float *v, const float *lse,
                                   const float *D, gsink_attn_stats stats);
/* Shared-memory opt-in of the TF32 and BF16 kernels (called by cuda_attention_init). */
gsink_status cuda_attention_tc_init(gsink_backend *be);

/* ---- attention in BF16 through mma.sync and ldmatrix (attention_mma.cu) ---- */
/* 1 when BF16 math is on, the backend selected the mma kernels
 * (GSINK_CUDA_ATTENTION=mma or mma4) and cuda_attention_tc_eligible holds with
 * enough shared memory for them; the callers then use them in place of
 * cuda_attention_tc_fwd / _bwd, with the same contracts. */
int cuda_attention_mma_eligible(gsink_backend *be, const gsink_attn_shape *s);
gsink_status cuda_attention_mma_fwd(gsink_backend *be, const gsink_attn_shape *s, float *y,
                                    float *lse, const float *q, const float *k, const float *v);
gsink_status cuda_attention_mma_bwd(gsink_backend *be, const gsink_attn_shape *s, float *dq,
                                    float *dk, float *dv, const float *dy, const float *q,
                                    const float *k, const float *v, const float *lse,
                                    const float *D, gsink_attn_stats stats);
/* Shared-memory opt-in of the mma kernels (called by cuda_attention_init). */
gsink_status cuda_attention_mma_init(gsink_backend *be);

#endif
