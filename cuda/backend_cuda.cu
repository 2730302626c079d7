/*
 * backend_cuda.cu - the CUDA backend: device state, memory, GEMM (cuBLAS),
 * the operation table and the module entry point loaded by cuda_loader.c.
 *
 * Every CUDA/cuBLAS failure becomes a gsink_status with a message in be->err;
 * nothing here prints, exits or aborts. All work of a backend is ordered on
 * its own stream; download and the host-returning reductions synchronise it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "cuda_module.h"
#include "wdtype.h"

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

gsink_status cuda_fail(gsink_backend *be, gsink_status st, const char *fmt, ...)
{
    if (be) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(be->err, sizeof be->err, fmt, ap);
        va_end(ap);
    }
    return st;
}

static gsink_status status_of(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return GSINK_OK;
    case cudaErrorMemoryAllocation: return GSINK_ERR_DEVICE_OUT_OF_MEMORY;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice: return GSINK_ERR_NO_DEVICE;
    default: return GSINK_ERR_BACKEND;
    }
}

gsink_status cuda_check(gsink_backend *be, cudaError_t e, const char *what)
{
    if (e == cudaSuccess) return GSINK_OK;
    return cuda_fail(be, status_of(e), "%s: %s (%s)", what, cudaGetErrorString(e),
                     cudaGetErrorName(e));
}

gsink_status cuda_launch_check(gsink_backend *be, const char *what)
{
    return cuda_check(be, cudaGetLastError(), what);
}

static const char *cublas_name(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "unknown cuBLAS status";
    }
}

static gsink_status cublas_check(gsink_backend *be, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS) return GSINK_OK;
    gsink_status st = s == CUBLAS_STATUS_ALLOC_FAILED ? GSINK_ERR_DEVICE_OUT_OF_MEMORY
                                                      : GSINK_ERR_BACKEND;
    return cuda_fail(be, st, "%s: %s (%d)", what, cublas_name(s), (int)s);
}

gsink_status cuda_enter(gsink_backend *be)
{
    int cur = -1;
    cudaError_t e = cudaGetDevice(&cur);
    if (e == cudaSuccess && cur == CUDA_CTX(be)->device) return GSINK_OK;
    return cuda_check(be, cudaSetDevice(CUDA_CTX(be)->device), "cudaSetDevice");
}

gsink_status cuda_scratch(gsink_backend *be, size_t bytes, void **p)
{
    cuda_ctx *c = CUDA_CTX(be);
    if (bytes == 0) bytes = 1;
    if (c->scratch_bytes < bytes) {
        if (c->scratch) {
            /* cudaFree waits for queued work that may still use the old buffer. */
            cudaFree(c->scratch);
            gsink_memtrack_shrink(&c->mem, c->scratch_bytes);
            c->scratch = NULL;
            c->scratch_bytes = 0;
        }
        size_t want = bytes + bytes / 4;
        void *q = NULL;
        cudaError_t e = cudaMalloc(&q, want);
        if (e != cudaSuccess) {
            cudaGetLastError();
            e = cudaMalloc(&q, bytes);
            if (e != cudaSuccess) {
                cudaGetLastError();
                return cuda_fail(be, status_of(e), "scratch allocation of %zu bytes: %s", bytes,
                                 cudaGetErrorString(e));
            }
            want = bytes;
        }
        c->scratch = q;
        c->scratch_bytes = want;
        gsink_memtrack_grow(&c->mem, want);
    }
    *p = c->scratch;
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* Lifetime                                                                  */
/* ------------------------------------------------------------------------ */

static void cuda_destroy(gsink_backend *be)
{
    if (!be) return;
    cuda_ctx *c = CUDA_CTX(be);
    if (c) {
        cudaSetDevice(c->device);
        if (c->stream) cudaStreamSynchronize(c->stream);
        if (c->own_stream && c->own_stream != c->stream) cudaStreamSynchronize(c->own_stream);
        if (c->scratch) cudaFree(c->scratch);
        if (c->blas) cublasDestroy(c->blas);
        if (c->own_stream) cudaStreamDestroy(c->own_stream); /* a borrowed stream stays */
        cudaGetLastError();
        gsink_memtrack_free(&c->mem);
        free(c);
    }
    free(be);
}

static gsink_status cuda_set_threads(gsink_backend *be, int n_threads)
{
    (void)be;
    (void)n_threads; /* host threads are not used by this backend */
    return GSINK_OK;
}

static void cuda_describe(gsink_backend *be, char *buf, size_t size)
{
    if (!buf || !size) return;
    cuda_ctx *c = CUDA_CTX(be);
    snprintf(buf, size, "%s, gemm %s%s", c->name,
             c->math == GSINK_CUDA_MATH_TF32   ? "tf32 tensor cores"
             : c->math == GSINK_CUDA_MATH_BF16 ? "bf16 tensor cores"
                                               : "fp32",
             c->math != GSINK_CUDA_MATH_BF16                ? ""
             : c->attention == GSINK_CUDA_ATTENTION_MMA  ? ", attention mma"
             : c->attention == GSINK_CUDA_ATTENTION_MMA4 ? ", attention mma (4 warps)"
                                                         : "");
}

static gsink_status cuda_set_math(gsink_backend *be, int mode)
{
    if (mode != GSINK_CUDA_MATH_FP32 && mode != GSINK_CUDA_MATH_TF32 && mode != GSINK_CUDA_MATH_BF16)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "unknown CUDA math mode %d", mode);
    gsink_status st = cuda_enter(be);
    if (st) return st;
    cuda_ctx *c = CUDA_CTX(be);
    /* BF16 picks its compute type per call (cuda_gemm); the handle's math
     * mode only matters to cublasSgemm. */
    cublasMath_t mm = mode == GSINK_CUDA_MATH_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
    st = cublas_check(be, cublasSetMathMode(c->blas, mm), "cublasSetMathMode");
    if (st) return st;
    c->math = mode;
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */
/* ------------------------------------------------------------------------ */

static gsink_status cuda_alloc(gsink_backend *be, size_t bytes, void **ptr)
{
    *ptr = NULL;
    if (bytes == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    cudaError_t e = cudaMalloc(ptr, bytes);
    if (e != cudaSuccess) {
        *ptr = NULL;
        cudaGetLastError(); /* allocation failures are not sticky: clear them */
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        cudaGetLastError();
        return cuda_fail(be, status_of(e),
                         "cudaMalloc of %zu bytes failed: %s (device %d: %zu of %zu bytes free)",
                         bytes, cudaGetErrorString(e), CUDA_CTX(be)->device, free_b, total_b);
    }
    if (gsink_memtrack_add(&CUDA_CTX(be)->mem, *ptr, bytes)) {
        cudaFree(*ptr);
        *ptr = NULL;
        return cuda_fail(be, GSINK_ERR_OUT_OF_MEMORY, "cannot record a device buffer (host memory)");
    }
    return GSINK_OK;
}

static void cuda_free(gsink_backend *be, void *ptr)
{
    if (!ptr) return;
    cudaSetDevice(CUDA_CTX(be)->device);
    cudaFree(ptr); /* implicitly waits for work that uses ptr */
    cudaGetLastError();
    gsink_memtrack_remove(&CUDA_CTX(be)->mem, ptr);
}

static void cuda_memory(gsink_backend *be, size_t *live, size_t *peak, int reset_peak)
{
    gsink_memtrack_query(&CUDA_CTX(be)->mem, live, peak, reset_peak);
}

static gsink_status cuda_upload(gsink_backend *be, void *dst, const void *src, size_t bytes)
{
    if (bytes == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    cuda_ctx *c = CUDA_CTX(be);
    st = cuda_check(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream),
                    "upload (cudaMemcpyAsync)");
    if (st) return st;
    /* The caller may reuse src as soon as we return, even when it is pinned. */
    return cuda_check(be, cudaStreamSynchronize(c->stream), "upload (synchronize)");
}

static gsink_status cuda_download(gsink_backend *be, void *dst, const void *src, size_t bytes)
{
    if (bytes == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    cuda_ctx *c = CUDA_CTX(be);
    st = cuda_check(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream),
                    "download (cudaMemcpyAsync)");
    if (st) return st;
    return cuda_check(be, cudaStreamSynchronize(c->stream), "download (synchronize)");
}

static gsink_status cuda_zero(gsink_backend *be, void *dst, size_t bytes)
{
    if (bytes == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    return cuda_check(be, cudaMemsetAsync(dst, 0, bytes, CUDA_CTX(be)->stream), "cudaMemsetAsync");
}

static gsink_status cuda_copy(gsink_backend *be, void *dst, const void *src, size_t bytes)
{
    if (bytes == 0 || dst == src) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    return cuda_check(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                                          CUDA_CTX(be)->stream),
                      "device copy (cudaMemcpyAsync)");
}

/* ------------------------------------------------------------------------ */
/* GEMM                                                                      */
/* ------------------------------------------------------------------------ */

/* Row-major C = alpha op(A) op(B) + beta C is column-major
 * C^T = alpha op(B)^T op(A)^T + beta C^T: a row-major matrix with row stride
 * ld is the column-major transpose with leading dimension ld, so swap the
 * operands and keep each transpose flag. */
static gsink_status cuda_gemm(gsink_backend *be, int trans_a, int trans_b, int M, int N, int K,
                              float alpha, const float *A, int lda, const float *B, int ldb,
                              float beta, float *C, int ldc)
{
    if (M < 0 || N < 0 || K < 0)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "gemm: negative size %d x %d x %d", M, N, K);
    if (M == 0 || N == 0) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    cuda_ctx *c = CUDA_CTX(be);
    /* K == 0 is passed on: cuBLAS then computes C = beta C. */
    cublasOperation_t opa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    int bf16 = c->math == GSINK_CUDA_MATH_BF16;
    cublasStatus_t s;
    if (bf16) /* fp32 in and out; cuBLAS rounds the inputs to bf16 for the tensor cores and accumulates in fp32 */
        s = cublasGemmEx(c->blas, opb, opa, N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta,
                         C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT);
    else
        s = cublasSgemm(c->blas, opb, opa, N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc);
    if (s != CUBLAS_STATUS_SUCCESS) {
        char what[96];
        snprintf(what, sizeof what, "%s(%c%c, M=%d N=%d K=%d)", bf16 ? "cublasGemmEx/bf16" : "cublasSgemm",
                 trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K);
        return cublas_check(be, s, what);
    }
    return GSINK_OK;
}

/* A 16-bit weight as B. In BF16 math a bf16 weight goes to cuBLAS as it is
 * (A rounded to bf16 in bounded row blocks). Otherwise the weight is widened
 * to fp32 in panels of whole stored rows in the scratch buffer (at most
 * WPANEL_BYTES, one row when a row alone is larger), then the fp32 path above
 * (FP32, TF32, or BF16 math for fp16 weights, which rounds them to bf16).
 * The device never holds an fp32 copy of a matrix. */
#define WPANEL_BYTES ((size_t)64 << 20)

static gsink_status cuda_gemm_w(gsink_backend *be, int trans_a, int trans_b, int M, int N, int K,
                                float alpha, const float *A, int lda, const void *B, int bdt, int ldb,
                                float beta, float *C, int ldc)
{
    if (bdt == GSINK_WD_F32)
        return cuda_gemm(be, trans_a, trans_b, M, N, K, alpha, A, lda, (const float *)B, ldb, beta, C, ldc);
    if (bdt != GSINK_WD_BF16 && bdt != GSINK_WD_F16)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "gemm_w: unknown weight storage type %d", bdt);
    if (M < 0 || N < 0 || K < 0)
        return cuda_fail(be, GSINK_ERR_INVALID_ARGUMENT, "gemm_w: negative size %d x %d x %d", M, N, K);
    if (M == 0 || N == 0) return GSINK_OK;
    if (K == 0) return cuda_gemm(be, trans_a, trans_b, M, N, K, alpha, A, lda, NULL, ldb, beta, C, ldc);
    const uint16_t *b = (const uint16_t *)B;
    cuda_ctx *c = CUDA_CTX(be);
    if (c->math == GSINK_CUDA_MATH_BF16 && bdt == GSINK_WD_BF16 && !trans_a) {
        /* BF16 math reads bf16 weights as they are: A (the activations) is
         * rounded to bf16 in blocks of rows (the rounding the fp32 BF16 path
         * applies to every input) and cuBLAS multiplies bf16 x bf16 with fp32
         * accumulation into fp32 C. */
        size_t mper = WPANEL_BYTES / 2 / (size_t)K;
        if (mper == 0) mper = 1;
        if (mper > (size_t)M) mper = (size_t)M;
        void *P;
        gsink_status st = cuda_scratch(be, mper * (size_t)K * 2, &P);
        cublasOperation_t opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
        for (size_t m0 = 0; m0 < (size_t)M && !st; m0 += mper) {
            size_t mr = (size_t)M - m0 < mper ? (size_t)M - m0 : mper;
            st = cuda_convert_rows(be, P, GSINK_WD_BF16, A + m0 * (size_t)lda, GSINK_WD_F32, mr, (size_t)K,
                                   (size_t)lda);
            if (st) break;
            cublasStatus_t s = cublasGemmEx(c->blas, opb, CUBLAS_OP_N, N, (int)mr, K, &alpha, B, CUDA_R_16BF, ldb,
                                            P, CUDA_R_16BF, K, &beta, C + m0 * (size_t)ldc, CUDA_R_32F, ldc,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS) {
                char what[96];
                snprintf(what, sizeof what, "cublasGemmEx/bf16 weights(N%c, M=%zu N=%d K=%d)", trans_b ? 'T' : 'N',
                         mr, N, K);
                st = cublas_check(be, s, what);
            }
        }
        return st;
    }
    size_t rows = (size_t)(trans_b ? N : K), cols = (size_t)(trans_b ? K : N);
    size_t per = WPANEL_BYTES / sizeof(float) / cols;
    if (per == 0) per = 1;
    if (per > rows) per = rows;
    void *P;
    gsink_status st = cuda_scratch(be, per * cols * sizeof(float), &P);
    for (size_t r0 = 0; r0 < rows && !st; r0 += per) {
        size_t nr = rows - r0 < per ? rows - r0 : per;
        /* stream-ordered: the previous panel's GEMM finishes before this overwrite */
        st = cuda_convert_rows(be, P, GSINK_WD_F32, b + r0 * (size_t)ldb, bdt, nr, cols, (size_t)ldb);
        if (st) break;
        if (trans_b)
            st = cuda_gemm(be, trans_a, 1, M, (int)nr, K, alpha, A, lda, (const float *)P, (int)cols, beta,
                           C + r0, ldc);
        else
            st = cuda_gemm(be, trans_a, 0, M, N, (int)nr, alpha, trans_a ? A + r0 * (size_t)lda : A + r0, lda,
                           (const float *)P, (int)cols, r0 == 0 ? beta : 1.0f, C, ldc);
    }
    return st;
}

/* ------------------------------------------------------------------------ */
/* Table and module entry                                                    */
/* ------------------------------------------------------------------------ */

/* Ops run on the caller's stream (borrowed) or, for NULL, on our own again.
 * The work queued on the stream we leave is finished first: the scratch
 * buffer is shared by every stream the backend runs on. */
static gsink_status cuda_set_stream(gsink_backend *be, void *stream)
{
    cuda_ctx *c = CUDA_CTX(be);
    cudaStream_t want = stream ? (cudaStream_t)stream : c->own_stream;
    if (want == c->stream) return GSINK_OK;
    gsink_status st = cuda_enter(be);
    if (st) return st;
    st = cuda_check(be, cudaStreamSynchronize(c->stream), "set_stream (synchronize the previous stream)");
    if (st) return st;
    st = cublas_check(be, cublasSetStream(c->blas, want), "cublasSetStream");
    if (st) return st;
    c->stream = want;
    return GSINK_OK;
}

static gsink_status cuda_synchronize(gsink_backend *be)
{
    gsink_status st = cuda_enter(be);
    if (st) return st;
    return cuda_check(be, cudaStreamSynchronize(CUDA_CTX(be)->stream), "cudaStreamSynchronize");
}

static gsink_backend_iface make_iface(void)
{
    gsink_backend_iface t;
    memset(&t, 0, sizeof t);
    t.api_version = GSINK_BACKEND_API_VERSION;
    t.name = "cuda";
    t.stats_in_backward = 1; /* k_attn_bwd_kv sums them while it recomputes the probabilities */
    t.destroy = cuda_destroy;
    t.set_threads = cuda_set_threads;
    t.describe = cuda_describe;
    t.alloc = cuda_alloc;
    t.memory = cuda_memory;
    t.free = cuda_free;
    t.upload = cuda_upload;
    t.download = cuda_download;
    t.zero = cuda_zero;
    t.copy = cuda_copy;
    t.gemm = cuda_gemm;
    t.embedding_fwd = cuda_embedding_fwd;
    t.embedding_bwd = cuda_embedding_bwd;
    t.rmsnorm_fwd = cuda_rmsnorm_fwd;
    t.rmsnorm_bwd = cuda_rmsnorm_bwd;
    t.rope = cuda_rope;
    t.attention_fwd = cuda_attention_fwd;
    t.attention_bwd = cuda_attention_bwd;
    t.attention_stats = cuda_attention_stats;
    t.vscale_fwd = cuda_vscale_fwd;
    t.vscale_bwd = cuda_vscale_bwd;
    t.swiglu_fwd = cuda_swiglu_fwd;
    t.swiglu_bwd = cuda_swiglu_bwd;
    t.xent_fwd = cuda_xent_fwd;
    t.xent_bwd = cuda_xent_bwd;
    t.add = cuda_add;
    t.scale = cuda_scale;
    t.row_sumsq = cuda_row_sumsq;
    t.batch_sum = cuda_batch_sum;
    t.sumsq = cuda_sumsq;
    t.adamw = cuda_adamw;
    t.set_stream = cuda_set_stream;
    t.synchronize = cuda_synchronize;
    t.gemm_w = cuda_gemm_w;
    t.embedding_fwd_w = cuda_embedding_fwd_w;
    t.convert = cuda_convert;
    t.fold_sum = cuda_fold_sum;
    t.fold_norms = cuda_fold_norms;
    t.fold_ratio = cuda_fold_ratio;
    t.row_sumsq_d = cuda_row_sumsq_d;
    return t;
}

static const gsink_backend_iface cuda_iface = make_iface();

static int mod_device_count(char *msg, size_t msg_size)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (msg && msg_size)
            snprintf(msg, msg_size, "%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
        return 0;
    }
    if (n == 0 && msg && msg_size) snprintf(msg, msg_size, "the CUDA driver reports no device");
    return n;
}

static void mod_describe(int index, char *buf, size_t size)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, index);
    if (e != cudaSuccess) {
        cudaGetLastError();
        snprintf(buf, size, "CUDA device %d: %s", index, cudaGetErrorString(e));
        return;
    }
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    snprintf(buf, size, "CUDA device %d: %s, sm_%d%d, %d SMs, %.1f GiB, runtime %d.%d, driver %d.%d",
             index, p.name, p.major, p.minor, p.multiProcessorCount,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), rt / 1000, (rt % 1000) / 10,
             drv / 1000, (drv % 1000) / 10);
}

static gsink_status mod_create(int index, gsink_backend **out, char *msg, size_t msg_size)
{
    *out = NULL;
    gsink_backend *be = (gsink_backend *)calloc(1, sizeof *be);
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        snprintf(msg, msg_size, "cannot allocate the CUDA backend");
        return GSINK_ERR_OUT_OF_MEMORY;
    }
    be->iface = &cuda_iface;
    be->ctx = c;
    c->device = index;
    gsink_status st = cuda_check(be, cudaSetDevice(index), "cudaSetDevice");
    cudaDeviceProp p;
    if (!st) st = cuda_check(be, cudaGetDeviceProperties(&p, index), "cudaGetDeviceProperties");
    if (!st && p.major < 8)
        st = cuda_fail(be, GSINK_ERR_UNSUPPORTED,
                       "device %d (%s) is sm_%d%d; the CUDA backend needs sm_80 or newer", index,
                       p.name, p.major, p.minor);
    if (!st) {
        c->max_smem_optin = (int)p.sharedMemPerBlockOptin;
        c->sm_count = p.multiProcessorCount;
        snprintf(c->name, sizeof c->name, "cuda:%d %s (sm_%d%d, %d SMs)", index, p.name, p.major,
                 p.minor, p.multiProcessorCount);
        st = cuda_check(be, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
                        "cudaStreamCreate");
        c->own_stream = c->stream;
    }
    if (!st) st = cublas_check(be, cublasCreate(&c->blas), "cublasCreate");
    if (!st) st = cublas_check(be, cublasSetStream(c->blas, c->stream), "cublasSetStream");
    if (!st) {
        const char *tf = getenv("GSINK_CUDA_TF32");
        int mode = (tf && tf[0] == '1') ? GSINK_CUDA_MATH_TF32 : GSINK_CUDA_MATH_FP32;
        st = cuda_set_math(be, mode);
        const char *at = getenv("GSINK_CUDA_ATTENTION");
        c->attention = !at                   ? GSINK_CUDA_ATTENTION_WMMA
                       : !strcmp(at, "mma")  ? GSINK_CUDA_ATTENTION_MMA
                       : !strcmp(at, "mma4") ? GSINK_CUDA_ATTENTION_MMA4
                                             : GSINK_CUDA_ATTENTION_WMMA;
    }
    if (!st) st = cuda_attention_init(be);
    if (st) {
        snprintf(msg, msg_size, "%s", be->err);
        cuda_destroy(be);
        return st;
    }
    *out = be;
    return GSINK_OK;
}

static const gsink_cuda_module module_table = {
    GSINK_CUDA_MODULE_ABI, GSINK_BACKEND_API_VERSION, mod_device_count, mod_describe, mod_create,
    cuda_set_math,
};

extern "C" __attribute__((visibility("default"))) const gsink_cuda_module *gsink_cuda_module_v1(void)
{
    return &module_table;
}
