/*
 * backend.h - internal backend interface.
 *
 * A backend is {iface, ctx}: a table of operations plus the backend's own
 * state. The model code calls only these operations and never dereferences a
 * tensor pointer, so every float* / int32_t* argument below is backend memory
 * (host memory for the CPU backend, device memory for CUDA). Data crosses to
 * the host only through upload/download.
 *
 * Conventions: row-major; N = number of token rows (batch*seq); parameter
 * gradients accumulate (+=), activation gradients are written (=) unless an
 * argument says "accumulate". All ops return GSINK_OK or a status; on failure
 * the backend fills err (may be NULL) with a message.
 */
#ifndef GSINK_BACKEND_H
#define GSINK_BACKEND_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "gsink.h"

#define GSINK_BACKEND_API_VERSION 8

typedef struct gsink_backend gsink_backend;

/* Attention shapes. Query head h reads key head h / (n_heads / n_kv_heads)
 * and value head h / (n_heads / n_v_heads); n_v_heads is n_kv_heads or
 * n_heads (per-query-head V-scale). */
typedef struct gsink_attn_shape {
    int batch, seq, n_heads, n_kv_heads, n_v_heads, d_head;
    int sink_window; /* T_eps for the sink-score accumulator */
    float scale;     /* softmax scale of the scores q.k; 0 = 1/sqrt(d_head) (since version 4) */
    int window;      /* sliding window (since version 6): 0 = causal; W > 0:
                      * query t sees keys j with 0 <= t - j < W; a_tj = 0
                      * elsewhere, in the statistics too */
} gsink_attn_shape;

/* The softmax scale an attention op applies. */
static inline float gsink_attn_scale(const gsink_attn_shape *s)
{
    return s->scale > 0.0f ? s->scale : 1.0f / sqrtf((float)s->d_head);
}

/* The window of a shape as a lookback bound valid for every t: min(W, T),
 * T when there is none (t - j < T always holds). */
static inline int gsink__attn_lookback(const gsink_attn_shape *s)
{
    return s->window > 0 && s->window < s->seq ? s->window : s->seq;
}

/* Column statistics of the attention probabilities a_ts, each (B, H, T):
 * mass[s] = sum_{t>=s} a_ts, sq[s] = sum_{t>=s} a_ts^2,
 * win[s] = sum_{t=s}^{min(T-1, s+T_eps-1)} a_ts. Any pointer may be NULL.
 * A backend computes them in one of three places: attention_fwd,
 * attention_bwd (which recomputes the probabilities anyway) or the
 * stand-alone attention_stats; stats_in_backward says which the model uses. */
typedef struct gsink_attn_stats {
    float *mass, *sq, *win;
} gsink_attn_stats;

typedef struct gsink_backend_iface {
    int api_version;
    const char *name;
    /* Nonzero: the model asks for the column statistics in attention_bwd and,
     * when they are read before (or without) a backward pass, from
     * attention_stats; attention_fwd then runs without them. Zero: the model
     * asks attention_fwd for them (attention_bwd and attention_stats must
     * still honour a request, for tests and for a model told to defer). */
    int stats_in_backward;
    void (*destroy)(gsink_backend *be);
    gsink_status (*set_threads)(gsink_backend *be, int n_threads);
    void (*describe)(gsink_backend *be, char *buf, size_t size);

    /* memory */
    gsink_status (*alloc)(gsink_backend *be, size_t bytes, void **ptr);
    void (*free)(gsink_backend *be, void *ptr);
    gsink_status (*upload)(gsink_backend *be, void *dst, const void *src, size_t bytes);
    gsink_status (*download)(gsink_backend *be, void *dst, const void *src, size_t bytes);
    gsink_status (*zero)(gsink_backend *be, void *dst, size_t bytes);
    gsink_status (*copy)(gsink_backend *be, void *dst, const void *src, size_t bytes);

    /* C(M,N) = alpha * op(A) op(B) + beta * C; op(A) is (M,K), op(B) is (K,N).
     * trans_a: A stored (K,M); trans_b: B stored (N,K). lda/ldb/ldc are row strides. */
    gsink_status (*gemm)(gsink_backend *be, int trans_a, int trans_b, int M, int N, int K,
                         float alpha, const float *A, int lda, const float *B, int ldb,
                         float beta, float *C, int ldc);

    /* out(N,d) = table[tokens[n]] */
    gsink_status (*embedding_fwd)(gsink_backend *be, float *out, const int32_t *tokens,
                                  const float *table, int N, int d);
    /* dtable[tokens[n]] += dout(n) */
    gsink_status (*embedding_bwd)(gsink_backend *be, float *dtable, const int32_t *tokens,
                                  const float *dout, int N, int d);

    /* out = x / rms(x) * gain; rstd(N) = 1/sqrt(mean(x^2)+eps) */
    gsink_status (*rmsnorm_fwd)(gsink_backend *be, float *out, float *rstd, const float *x,
                                const float *gain, int N, int d, float eps);
    /* dx = (or += if accumulate) d/dx; dgain += (may be NULL: no gain gradient) */
    gsink_status (*rmsnorm_bwd)(gsink_backend *be, float *dx, float *dgain, const float *dout,
                                const float *x, const float *gain, const float *rstd, int N,
                                int d, int accumulate);

    /* In-place RoPE on x(B,T,heads,d_head): the first rot_dims (even, 2..d_head)
     * dims of each head rotate, the rest pass through (partial rotary). Pair i
     * < rot_dims/2 is (i, i + rot_dims/2) (HF rotate_half) or, interleaved,
     * (2i, 2i+1) (GLM), with angle t * inv_freq[i] (double, backend memory,
     * rot_dims/2 values computed on the host: plain or scaled RoPE); cos and
     * sin are multiplied by scale (the yarn attention factor, else 1);
     * inverse=1 applies the transpose rotation (used by backward). */
    gsink_status (*rope)(gsink_backend *be, float *x, int B, int T, int heads, int d_head, int rot_dims,
                         int interleaved, const double *inv_freq, float scale, int inverse);

    /* y(B,T,H,dh), lse(B,H,T) = log-sum-exp of the scaled scores per query row */
    gsink_status (*attention_fwd)(gsink_backend *be, const gsink_attn_shape *s, float *y,
                                  float *lse, const float *q, const float *k, const float *v,
                                  gsink_attn_stats stats);
    /* dq, dk, dv written (=); the column statistics (=) where stats asks for them. */
    gsink_status (*attention_bwd)(gsink_backend *be, const gsink_attn_shape *s, float *dq,
                                  float *dk, float *dv, const float *dy, const float *q,
                                  const float *k, const float *v, const float *y,
                                  const float *lse, gsink_attn_stats stats);
    /* The column statistics (=) alone, from q, k and the lse of attention_fwd. */
    gsink_status (*attention_stats)(gsink_backend *be, const gsink_attn_shape *s,
                                    const float *q, const float *k, const float *lse,
                                    gsink_attn_stats stats);

    /* V-scale over rows of v(N, heads_in, dh) -> out(N, heads_out, dh), with
     * heads_out = heads_in or a multiple (expansion to query heads: out head j
     * reads in head j / (heads_out/heads_in)). c0 = d_model*d_head*sigma^2,
     * C_j = c0 * exp(theta[j]). mode: gsink_vscale_mode (OFF/BACKWARD_ONLY copy). */
    gsink_status (*vscale_fwd)(gsink_backend *be, float *out, const float *v,
                               const float *theta, int N, int heads_in, int heads_out, int dh,
                               float c0, int mode);
    /* dv (=) and dtheta (+=, may be NULL) from dout; BACKWARD_ONLY applies the
     * Jacobian phi I + 2C/(r+C)^2 v v^T and no dtheta. */
    gsink_status (*vscale_bwd)(gsink_backend *be, float *dv, float *dtheta, const float *dout,
                               const float *v, const float *theta, int N, int heads_in,
                               int heads_out, int dh, float c0, int mode);

    /* h = silu(gate) * up */
    gsink_status (*swiglu_fwd)(gsink_backend *be, float *h, const float *gate, const float *up,
                               size_t n);
    gsink_status (*swiglu_bwd)(gsink_backend *be, float *dgate, float *dup, const float *dh,
                               const float *gate, const float *up, size_t n);

    /* Cross-entropy of logits(N,V) against targets(N) (< 0 ignored). Writes
     * *loss_sum (host) and *count (host). */
    gsink_status (*xent_fwd)(gsink_backend *be, double *loss_sum, int64_t *count,
                             const float *logits, const int32_t *targets, int N, int V);
    /* dlogits = (softmax(logits) - onehot) * scale for rows with a target, 0 otherwise */
    gsink_status (*xent_bwd)(gsink_backend *be, float *dlogits, const float *logits,
                             const int32_t *targets, int N, int V, float scale);

    /* out = a + b (out may alias a) */
    gsink_status (*add)(gsink_backend *be, float *out, const float *a, const float *b, size_t n);
    /* x *= alpha */
    gsink_status (*scale)(gsink_backend *be, float *x, float alpha, size_t n);

    /* out(rows, heads) = sum of squares of each head's slice of each row of x(rows, heads*width) */
    gsink_status (*row_sumsq)(gsink_backend *be, float *out, const float *x, size_t rows,
                              int heads, int width);
    /* out(n) = sum_b x(b, n) over B blocks */
    gsink_status (*batch_sum)(gsink_backend *be, float *out, const float *x, int B, size_t n);
    /* *out (host) = sum of squares of x(n) in double; *finite = all finite */
    gsink_status (*sumsq)(gsink_backend *be, double *out, int *finite, const float *x, size_t n);

    /* AdamW on n values: m,v updated; p -= lr*(mhat/(sqrt(vhat)+eps) + wd*p).
     * bc1 = 1-beta1^t, bc2 = 1-beta2^t; grad is multiplied by gscale first. */
    gsink_status (*adamw)(gsink_backend *be, float *p, const float *g, float *m, float *v,
                          size_t n, float lr, float beta1, float beta2, float eps, float wd,
                          float bc1, float bc2, float gscale);

    /* Bytes of the buffers this backend holds now (*live: everything alloc
     * handed out and not freed, plus the backend's own long-lived scratch)
     * and the most since creation or the last reset (*peak); reset_peak sets
     * the peak to the live bytes after reading. Either pointer may be NULL.
     * (Since version 3.) */
    void (*memory)(gsink_backend *be, size_t *live, size_t *peak, int reset_peak);

    /* Since version 4; NULL on backends without streams (the CPU), whose ops
     * finish before they return. set_stream: later ops run on the given
     * stream (a cudaStream_t of the caller, borrowed, never destroyed), or
     * on the backend's own stream again for NULL; work queued on the
     * previous stream is finished first (the scratch buffers are shared).
     * synchronize: waits until the current stream's work is done. */
    gsink_status (*set_stream)(gsink_backend *be, void *stream);
    gsink_status (*synchronize)(gsink_backend *be);

    /* Since version 7: weights stored in 16 bits (gsink_weight_dtype; the
     * GSINK_WD_* values and scalar conversions are in wdtype.h). Compute and
     * accumulation stay fp32.
     * gemm_w: gemm whose B operand (a weight) has storage type b_dtype;
     * GSINK_WD_F32 is gemm. A backend may widen B to fp32 in bounded blocks
     * of its stored rows, never as a whole. */
    gsink_status (*gemm_w)(gsink_backend *be, int trans_a, int trans_b, int M, int N, int K,
                           float alpha, const float *A, int lda, const void *B, int b_dtype,
                           int ldb, float beta, float *C, int ldc);
    /* out(N,d) = table[tokens[n]] widened to fp32, table of storage type dtype */
    gsink_status (*embedding_fwd_w)(gsink_backend *be, float *out, const int32_t *tokens,
                                    const void *table, int dtype, int N, int d);
    /* dst(n) = src(n) between storage types (either may be GSINK_WD_F32), fp32
     * -> 16 bits rounding to nearest, ties to even (wdtype.h). */
    gsink_status (*convert)(gsink_backend *be, void *dst, int dst_dtype, const void *src,
                            int src_dtype, size_t n);

    /* Since version 8: the accumulators of the streaming analysis, sums over
     * the sequences of a micro-batch added into doubles in backend memory, so
     * a micro-batch needs no transfer to the host. Sums over b run in double,
     * in order b = 0..B-1 (bitwise reproducible).
     * fold_sum:   acc[i] += sum_b x[b * stride + i], i < n.
     * fold_norms: x (B, T, heads * hw); for t < R, with s_bth = ||x_bth - y_bth||^2
     *             (y has x's shape or is NULL: 0):
     *             acc (R, 1 + nh), may be NULL: acc[t][0] += sum_b sqrt(sum_h s_bth),
     *             acc[t][1 + h] += sum_b sqrt(s_bth) for h < nh (nh is 0 or heads);
     *             per_b (B, R), may be NULL: per_b[b][t] = sqrt(sum_h s_bth) (=).
     * fold_ratio: acc[t] += sum_b num[b * R + t] / den[b * R + t], t < R.
     * row_sumsq_d: out[r * heads + h] = sum_i (x - y)^2 over slice h (width
     *             long) of row r of x (rows, heads * width), in double; y has
     *             x's shape or is NULL (0). For the report's norms of the sums.
     * host_memory: nonzero when the backend's memory is host memory (the
     * CPU), which the library may then read in place of a download. */
    gsink_status (*fold_sum)(gsink_backend *be, double *acc, const float *x, int B, size_t stride,
                             size_t n);
    gsink_status (*fold_norms)(gsink_backend *be, double *acc, float *per_b, const float *x,
                               const float *y, int B, int T, int R, int heads, int hw, int nh);
    gsink_status (*fold_ratio)(gsink_backend *be, double *acc, const float *num, const float *den,
                               int B, int R);
    gsink_status (*row_sumsq_d)(gsink_backend *be, double *out, const double *x, const double *y,
                                size_t rows, int heads, int width);
    int host_memory;
} gsink_backend_iface;

struct gsink_backend {
    const gsink_backend_iface *iface;
    void *ctx;
    char err[256]; /* message of the last failing op */
};

/* Creates the CPU backend (BLIS). */
gsink_status gsink_cpu_backend_create(int n_threads, gsink_backend **out);
/* Creates the CUDA backend on device index, if built with CUDA. */
gsink_status gsink_cuda_backend_create(int device_index, gsink_backend **out);
int gsink_cuda_device_count(void);
/* Selects the GEMM math of a CUDA backend (0 exact FP32, 1 TF32). */
gsink_status gsink__cuda_set_math(gsink_backend *be, int mode);
void gsink_cuda_describe(int index, char *buf, size_t size);

#endif
