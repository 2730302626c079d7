/*
 * test_cuda_ops.c - op-by-op parity of the CUDA backend with the CPU backend
 * (the reference), forward and backward, plus model-level parity (loss,
 * every parameter gradient, attention statistics, V-scale modes, AdamW steps)
 * through the public API.
 *
 * Exit code 77 (skipped) when no CUDA device is usable. Check's fork mode is
 * off: the CUDA context is created in this process before the tests run.
 *
 * GSINK_CUDA_TEST_AGAINST_CPU=1 runs the same suite with a second CPU backend
 * in place of the CUDA one: it checks the harness itself on machines without
 * a GPU (CUDA-only tests are then skipped inside).
 *
 * Tolerances (|gpu - cpu| <= atol + rtol * |cpu|), exact FP32 path:
 *   element-wise ops, RoPE, V-scale: rtol 1e-5 (FMA contraction and
 *     libm differences of a few ulp); AdamW: bitwise (see test_adamw);
 *   row reductions (RMSNorm, sums of squares): rtol 1e-5; cross-entropy loss
 *     rtol 1e-6 (the CPU sums exps in float blocks of 256, the GPU in double);
 *   GEMM: atol 1e-5 * sqrt(K) * scale of the operands, rtol 1e-5;
 *   attention outputs and gradients, column statistics: rtol 2e-4, atol 2e-5
 *     (different summation order over up to T keys);
 *   GEMM with TF32 tensor cores: atol 2e-3 * sqrt(K) (10-bit mantissa inputs,
 *     operands in [-1, 1]);
 *   GEMM with BF16 tensor cores: atol 8e-3 * sqrt(K) (inputs rounded to 8
 *     significant bits, relative error <= 2^-8 each, so <= ~7.8e-3 per
 *     product; operands in [-1, 1]);
 *   attention on TF32 / BF16 tensor cores (see attention_tc_case): rtol
 *     and atol relative to the tensor's largest |x| 4u, u the unit roundoff
 *     of the inputs (TF32 2^-11: 2e-3; BF16 2^-8: 2^-6 = 1.5625e-2), plus a
 *     floor of 1e-4 (TF32) or u = 2^-8 (BF16) for tensors that vanish;
 *     d_head > 128 falls back to the exact kernels and their bounds.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "cuda_module.h"
#include "gsink.h"
#include "internal.h"
#include "wdtype.h"

static gsink_backend *cpu, *gpu;
static int gpu_is_cuda;

/* ---- paired buffers: same data on the CPU backend and on the device ---- */

typedef struct {
    float *c, *g;
    size_t n;
} pair;

static pair pair_new(size_t n, uint64_t seed, float scale)
{
    pair p = {NULL, NULL, n};
    float *h = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(h);
    if (seed)
        tu_fill(h, n, seed, scale);
    else
        memset(h, 0, sizeof(float) * n);
    ck_assert_int_eq(cpu->iface->alloc(cpu, n * sizeof(float), (void **)&p.c), GSINK_OK);
    ck_assert_int_eq(gpu->iface->alloc(gpu, n * sizeof(float), (void **)&p.g), GSINK_OK);
    ck_assert_int_eq(cpu->iface->upload(cpu, p.c, h, n * sizeof(float)), GSINK_OK);
    ck_assert_int_eq(gpu->iface->upload(gpu, p.g, h, n * sizeof(float)), GSINK_OK);
    free(h);
    return p;
}

static void pair_free(pair *p)
{
    cpu->iface->free(cpu, p->c);
    gpu->iface->free(gpu, p->g);
    p->c = p->g = NULL;
}

/* pair_free on every argument: pair_free_all(&a, &b, ...). */
static void pair_free_list(pair *const *ps)
{
    for (; *ps; ps++) pair_free(*ps);
}
#define pair_free_all(...) pair_free_list((pair *const[]){__VA_ARGS__, NULL})

typedef struct {
    int32_t *c, *g;
} ipair;

static ipair ipair_new(const int32_t *h, size_t n)
{
    ipair p;
    ck_assert_int_eq(cpu->iface->alloc(cpu, n * 4, (void **)&p.c), GSINK_OK);
    ck_assert_int_eq(gpu->iface->alloc(gpu, n * 4, (void **)&p.g), GSINK_OK);
    ck_assert_int_eq(cpu->iface->upload(cpu, p.c, h, n * 4), GSINK_OK);
    ck_assert_int_eq(gpu->iface->upload(gpu, p.g, h, n * 4), GSINK_OK);
    return p;
}

static void ipair_free(ipair *p)
{
    cpu->iface->free(cpu, p->c);
    gpu->iface->free(gpu, p->g);
}

static float *download(const pair *p)
{
    float *h = malloc(sizeof(float) * (p->n ? p->n : 1));
    ck_assert_ptr_nonnull(h);
    gsink_status st = gpu->iface->download(gpu, h, p->g, p->n * sizeof(float));
    ck_assert_msg(st == GSINK_OK, "download: %s", gpu->err);
    return h;
}

/* Compares the device copy with the CPU copy; reports the worst element. */
static void pair_check(const pair *p, double rtol, double atol, const char *what)
{
    float *g = download(p);
    const float *c = p->c;
    size_t worst = 0;
    double worst_ratio = 0.0;
    for (size_t i = 0; i < p->n; i++) {
        double lim = atol + rtol * fabs((double)c[i]);
        double err = fabs((double)g[i] - (double)c[i]);
        if (!(err <= lim) || isnan(g[i]) != isnan(c[i])) {
            double ratio = isnan(err) ? INFINITY : err / lim;
            if (ratio > worst_ratio || worst_ratio == 0.0) {
                worst_ratio = ratio;
                worst = i;
            }
        }
    }
    ck_assert_msg(worst_ratio == 0.0, "%s: element %zu of %zu: gpu %.9g cpu %.9g (%.3g x tolerance)",
                  what, worst, p->n, (double)g[worst], (double)c[worst], worst_ratio);
    free(g);
}

#define OKC(call) ck_assert_msg((call) == GSINK_OK, "cpu: %s", cpu->err)
#define OKG(call) ck_assert_msg((call) == GSINK_OK, "gpu: %s", gpu->err)

/* ------------------------------------------------------------------------ */
/* GEMM                                                                      */
/* ------------------------------------------------------------------------ */

static void gemm_case(int ta, int tb, int M, int N, int K, float alpha, float beta, int pad,
                      double rtol_scale)
{
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    pair A = pair_new(na, 11 + ta, 1.0f), B = pair_new(nb, 23 + tb, 1.0f), C = pair_new(nc, 37, 1.0f);
    OKC(cpu->iface->gemm(cpu, ta, tb, M, N, K, alpha, A.c, lda, B.c, ldb, beta, C.c, ldc));
    OKG(gpu->iface->gemm(gpu, ta, tb, M, N, K, alpha, A.g, lda, B.g, ldb, beta, C.g, ldc));
    char what[96];
    snprintf(what, sizeof what, "gemm %c%c %dx%dx%d", ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K);
    pair_check(&C, 1e-5, rtol_scale * sqrt((double)K), what);
    pair_free_all(&A, &B, &C);
}

START_TEST(test_gemm)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(ta, tb, 37, 53, 29, 1.0f, 0.0f, 0, 1e-5);
            gemm_case(ta, tb, 64, 33, 130, 0.5f, 1.0f, 3, 1e-5);
            gemm_case(ta, tb, 1, 17, 5, 2.0f, -0.5f, 1, 1e-5);
        }
}
END_TEST

START_TEST(test_gemm_tf32)
{
    if (!gpu_is_cuda) return;
    ck_assert_int_eq(gsink__cuda_set_math(gpu, GSINK_CUDA_MATH_TF32), GSINK_OK);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) gemm_case(ta, tb, 96, 80, 256, 1.0f, 0.0f, 0, 2e-3);
    ck_assert_int_eq(gsink__cuda_set_math(gpu, GSINK_CUDA_MATH_FP32), GSINK_OK);
    ck_assert_int_eq(gsink__cuda_set_math(gpu, 7), GSINK_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(test_gemm_bf16)
{
    if (!gpu_is_cuda) return;
    ck_assert_int_eq(gsink__cuda_set_math(gpu, GSINK_CUDA_MATH_BF16), GSINK_OK);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(ta, tb, 96, 80, 256, 1.0f, 0.0f, 0, 8e-3);
            gemm_case(ta, tb, 37, 53, 29, 0.5f, 1.0f, 3, 8e-3);
        }
    ck_assert_int_eq(gsink__cuda_set_math(gpu, GSINK_CUDA_MATH_FP32), GSINK_OK);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* 16-bit weights: convert, embedding_fwd_w, gemm_w                          */
/* ------------------------------------------------------------------------ */

/* A 16-bit copy of x (n values) in both backends' memory. */
typedef struct {
    void *c, *g;
} wpair;

static wpair wpair_new(const float *x, size_t n, int dtype)
{
    uint16_t *h = malloc(2 * (n ? n : 1));
    for (size_t i = 0; i < n; i++) gsink__wd_store(h, dtype, i, x[i]);
    wpair w;
    ck_assert_int_eq(cpu->iface->alloc(cpu, 2 * n, &w.c), GSINK_OK);
    ck_assert_int_eq(gpu->iface->alloc(gpu, 2 * n, &w.g), GSINK_OK);
    ck_assert_int_eq(cpu->iface->upload(cpu, w.c, h, 2 * n), GSINK_OK);
    ck_assert_int_eq(gpu->iface->upload(gpu, w.g, h, 2 * n), GSINK_OK);
    free(h);
    return w;
}

static void wpair_free(wpair *w)
{
    cpu->iface->free(cpu, w->c);
    gpu->iface->free(gpu, w->g);
}

START_TEST(test_weights_convert)
{
    static const uint32_t edges[] = {0x3f808000u, 0x3f818000u, 0x3f801000u, 0x3f803000u, 0x7f7fffffu, 0x7f7f8000u,
                                     0x477fe000u, 0x477ff000u, 0xc77ff000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                                     0xffc00001u, 0x38800000u, 0x33800000u, 0x33000000u, 0x33c00000u, 0x00000001u,
                                     0x00018000u, 0x387fe000u, 0x80000000u};
    const size_t n = 4099;
    for (int dt = GSINK_WD_BF16; dt <= GSINK_WD_F16; dt++) {
        pair x = pair_new(n, 41, 3.0f);
        float *h = malloc(n * sizeof(float));
        tu_fill(h, n, 41, 3.0f);
        for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) memcpy(&h[i * 7], &edges[i], 4);
        OKC(cpu->iface->upload(cpu, x.c, h, n * 4));
        OKG(gpu->iface->upload(gpu, x.g, h, n * 4));
        void *wc, *wg;
        ck_assert_int_eq(cpu->iface->alloc(cpu, 2 * n, &wc), GSINK_OK);
        ck_assert_int_eq(gpu->iface->alloc(gpu, 2 * n, &wg), GSINK_OK);
        OKC(cpu->iface->convert(cpu, wc, dt, x.c, GSINK_WD_F32, n));
        OKG(gpu->iface->convert(gpu, wg, dt, x.g, GSINK_WD_F32, n));
        uint16_t *a = malloc(2 * n), *b = malloc(2 * n);
        OKG(gpu->iface->download(gpu, b, wg, 2 * n));
        memcpy(a, wc, 2 * n);
        for (size_t i = 0; i < n; i++) {
            ck_assert_msg(a[i] == b[i], "convert to %d, element %zu: cpu 0x%04x gpu 0x%04x", dt, i, a[i], b[i]);
            ck_assert_uint_eq(a[i], dt == GSINK_WD_BF16 ? gsink__f32_to_bf16(h[i]) : gsink__f32_to_f16(h[i]));
        }
        /* and back: exact */
        OKC(cpu->iface->convert(cpu, x.c, GSINK_WD_F32, wc, dt, n));
        OKG(gpu->iface->convert(gpu, x.g, GSINK_WD_F32, wg, dt, n));
        float *back = download(&x); /* Inf and NaN included: compare bits */
        ck_assert(memcmp(back, x.c, n * sizeof(float)) == 0);
        for (size_t i = 0; i < n; i++) ck_assert(isnan(back[i]) || back[i] == gsink__wd_load(a, dt, i));
        free(back);
        ck_assert_int_eq(gpu->iface->convert(gpu, wg, 5, x.g, GSINK_WD_F32, n), GSINK_ERR_INVALID_ARGUMENT);
        cpu->iface->free(cpu, wc);
        gpu->iface->free(gpu, wg);
        free(a);
        free(b);
        free(h);
        pair_free(&x);
    }
}
END_TEST

START_TEST(test_weights_embedding_gemm)
{
    for (int dt = GSINK_WD_BF16; dt <= GSINK_WD_F16; dt++) {
        const int V = 300, d = 200, N = 517;
        int32_t *tok = malloc(sizeof(int32_t) * N);
        for (int n = 0; n < N; n++) tok[n] = (n * 7919 + n / 3) % V;
        ipair T = ipair_new(tok, N);
        float *tab = malloc(sizeof(float) * V * d);
        tu_fill(tab, (size_t)V * d, 3, 1.0f);
        wpair table = wpair_new(tab, (size_t)V * d, dt);
        pair out = pair_new((size_t)N * d, 0, 0);
        OKC(cpu->iface->embedding_fwd_w(cpu, out.c, T.c, table.c, dt, N, d));
        OKG(gpu->iface->embedding_fwd_w(gpu, out.g, T.g, table.g, dt, N, d));
        pair_check(&out, 0, 0, "embedding_fwd_w");
        for (int n = 0; n < N; n++) { /* the stored values, widened */
            uint16_t t;
            gsink__wd_store(&t, dt, 0, tab[(size_t)tok[n] * d + 7]);
            ck_assert(out.c[(size_t)n * d + 7] == gsink__wd_load(&t, dt, 0));
        }
        wpair_free(&table);
        pair_free(&out);
        ipair_free(&T);
        free(tok);
        free(tab);
        /* gemm_w: every transpose pair, padding, beta; against the CPU's */
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                const int M = 37, Nn = 53, K = 129, pad = 3;
                int lda = (ta ? M : K) + pad, ldb = (tb ? K : Nn) + pad, ldc = Nn + pad;
                size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? Nn : K) * ldb, nc = (size_t)M * ldc;
                float *bh = malloc(nb * sizeof(float));
                tu_fill(bh, nb, 23 + tb, 1.0f);
                wpair Bw = wpair_new(bh, nb, dt);
                pair A = pair_new(na, 11 + ta, 1.0f), C = pair_new(nc, 37, 1.0f), Cf = pair_new(nc, 37, 1.0f);
                /* the fp32 product with the widened weight, on the CPU */
                pair Bf = pair_new(nb, 0, 0);
                OKC(cpu->iface->convert(cpu, Bf.c, GSINK_WD_F32, Bw.c, dt, nb));
                OKC(cpu->iface->gemm(cpu, ta, tb, M, Nn, K, 0.5f, A.c, lda, Bf.c, ldb, 0.25f, Cf.c, ldc));
                OKC(cpu->iface->gemm_w(cpu, ta, tb, M, Nn, K, 0.5f, A.c, lda, Bw.c, dt, ldb, 0.25f, C.c, ldc));
                ck_assert(memcmp(C.c, Cf.c, nc * sizeof(float)) == 0); /* one panel: the same sgemm */
                OKG(gpu->iface->gemm_w(gpu, ta, tb, M, Nn, K, 0.5f, A.g, lda, Bw.g, dt, ldb, 0.25f, C.g, ldc));
                char what[64];
                snprintf(what, sizeof what, "gemm_w dtype %d %c%c", dt, ta ? 'T' : 'N', tb ? 'T' : 'N');
                pair_check(&C, 1e-5, 1e-5 * sqrt((double)K), what);
                pair_free_all(&A, &C, &Cf, &Bf);
                wpair_free(&Bw);
                free(bh);
            }
    }
}
END_TEST

/* gemm_w in BF16 math: bf16 weights go to cuBLAS as they are (the activations
 * rounded to bf16), fp16 weights are widened and rounded by the BF16 path.
 * Against the CPU's fp32 product of the same rounded operands. */
START_TEST(test_weights_gemm_bf16)
{
    if (!gpu_is_cuda) return;
    ck_assert_int_eq(gsink__cuda_set_math(gpu, GSINK_CUDA_MATH_BF16), GSINK_OK);
    for (int dt = GSINK_WD_BF16; dt <= GSINK_WD_F16; dt++)
        for (int tb = 0; tb < 2; tb++) {
            const int M = 37, Nn = 53, K = 129, pad = 3;
            int lda = K + pad, ldb = (tb ? K : Nn) + pad, ldc = Nn + pad;
            size_t na = (size_t)M * lda, nb = (size_t)(tb ? Nn : K) * ldb, nc = (size_t)M * ldc;
            float *bh = malloc(nb * sizeof(float)), *ah = malloc(na * sizeof(float));
            tu_fill(bh, nb, 23 + tb, 1.0f);
            tu_fill(ah, na, 11, 1.0f);
            wpair Bw = wpair_new(bh, nb, dt);
            pair A = pair_new(na, 11, 1.0f), C = pair_new(nc, 37, 1.0f), Bf = pair_new(nb, 0, 0);
            /* the CPU: A and the weight rounded to bf16 (what the tensor cores read), exact product */
            for (size_t i = 0; i < na; i++) A.c[i] = gsink__bf16_f32(gsink__f32_to_bf16(ah[i]));
            OKC(cpu->iface->convert(cpu, Bf.c, GSINK_WD_F32, Bw.c, dt, nb));
            for (size_t i = 0; i < nb; i++) Bf.c[i] = gsink__bf16_f32(gsink__f32_to_bf16(Bf.c[i]));
            OKC(cpu->iface->gemm(cpu, 0, tb, M, Nn, K, 0.5f, A.c, lda, Bf.c, ldb, 0.25f, C.c, ldc));
            OKG(gpu->iface->gemm_w(gpu, 0, tb, M, Nn, K, 0.5f, A.g, lda, Bw.g, dt, ldb, 0.25f, C.g, ldc));
            char what[64];
            snprintf(what, sizeof what, "gemm_w bf16 math, dtype %d N%c", dt, tb ? 'T' : 'N');
            pair_check(&C, 1e-5, 1e-5 * sqrt((double)K), what);
            pair_free_all(&A, &C, &Bf);
            wpair_free(&Bw);
            free(bh);
            free(ah);
        }
    ck_assert_int_eq(gsink__cuda_set_math(gpu, GSINK_CUDA_MATH_FP32), GSINK_OK);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Embedding, RMSNorm, RoPE, SwiGLU                                          */
/* ------------------------------------------------------------------------ */

START_TEST(test_embedding)
{
    const int V = 300, d = 200, N = 517;
    int32_t *tok = malloc(sizeof(int32_t) * N);
    for (int n = 0; n < N; n++) tok[n] = (n * 7919 + n / 3) % V; /* repeats */
    tok[5] = tok[6] = tok[7] = 129;                           /* same token, same bucket */
    ipair T = ipair_new(tok, N);
    pair table = pair_new((size_t)V * d, 3, 1.0f), out = pair_new((size_t)N * d, 0, 0);
    OKC(cpu->iface->embedding_fwd(cpu, out.c, T.c, table.c, N, d));
    OKG(gpu->iface->embedding_fwd(gpu, out.g, T.g, table.g, N, d));
    pair_check(&out, 0, 0, "embedding_fwd");
    pair dout = pair_new((size_t)N * d, 5, 1.0f), dtab = pair_new((size_t)V * d, 9, 0.1f);
    OKC(cpu->iface->embedding_bwd(cpu, dtab.c, T.c, dout.c, N, d));
    OKG(gpu->iface->embedding_bwd(gpu, dtab.g, T.g, dout.g, N, d));
    /* Both sum each table row in token order: identical results. */
    pair_check(&dtab, 0, 0, "embedding_bwd");
    pair_free_all(&table, &out, &dout, &dtab);
    ipair_free(&T);
    free(tok);
}
END_TEST

START_TEST(test_rmsnorm)
{
    const int N = 77, d = 300;
    pair x = pair_new((size_t)N * d, 41, 2.0f), gain = pair_new(d, 43, 1.0f);
    pair out = pair_new((size_t)N * d, 0, 0), rstd = pair_new(N, 0, 0);
    OKC(cpu->iface->rmsnorm_fwd(cpu, out.c, rstd.c, x.c, gain.c, N, d, 1e-5f));
    OKG(gpu->iface->rmsnorm_fwd(gpu, out.g, rstd.g, x.g, gain.g, N, d, 1e-5f));
    pair_check(&rstd, 1e-6, 0, "rmsnorm rstd");
    pair_check(&out, 1e-5, 1e-7, "rmsnorm out");
    for (int acc = 0; acc < 2; acc++) {
        pair dout = pair_new((size_t)N * d, 47, 1.0f), dx = pair_new((size_t)N * d, 53, 1.0f);
        pair dgain = pair_new(d, 59, 1.0f);
        OKC(cpu->iface->rmsnorm_bwd(cpu, dx.c, dgain.c, dout.c, x.c, gain.c, rstd.c, N, d, acc));
        OKG(gpu->iface->rmsnorm_bwd(gpu, dx.g, dgain.g, dout.g, x.g, gain.g, rstd.g, N, d, acc));
        pair_check(&dx, 1e-5, 1e-6, acc ? "rmsnorm dx (accumulate)" : "rmsnorm dx");
        pair_check(&dgain, 1e-5, 1e-5, "rmsnorm dgain");
        pair_free_all(&dout, &dx, &dgain);
    }
    pair_free_all(&x, &gain, &out, &rstd);
}
END_TEST

START_TEST(test_rope)
{
    const int B = 2, T = 300, heads = 3, dh = 64;
    size_t n = (size_t)B * T * heads * dh;
    pair x = pair_new(n, 61, 1.0f);
    float *orig = download(&x);
    double fr[32], *frc = NULL, *frg = NULL;
    for (int i = 0; i < dh / 2; i++) fr[i] = pow(10000.0, -2.0 * i / dh);
    OKC(cpu->iface->alloc(cpu, sizeof fr, (void **)&frc));
    OKG(gpu->iface->alloc(gpu, sizeof fr, (void **)&frg));
    OKC(cpu->iface->upload(cpu, frc, fr, sizeof fr));
    OKG(gpu->iface->upload(gpu, frg, fr, sizeof fr));
    for (int inv = 0; inv < 2; inv++) {
        OKC(cpu->iface->rope(cpu, x.c, B, T, heads, dh, dh, 0, frc, 1.0f, inv));
        OKG(gpu->iface->rope(gpu, x.g, B, T, heads, dh, dh, 0, frg, 1.0f, inv));
        pair_check(&x, 1e-5, 1e-6, inv ? "rope inverse" : "rope");
    }
    /* forward then inverse is the identity (independent of the CPU) */
    float *back = download(&x);
    for (size_t i = 0; i < n; i++) ck_assert_msg(fabsf(back[i] - orig[i]) < 1e-5f, "rope roundtrip %zu", i);
    /* a scaled table (llama3-like: low frequencies divided) with a cos/sin factor (yarn) */
    for (int i = dh / 4; i < dh / 2; i++) fr[i] /= 8.0;
    OKC(cpu->iface->upload(cpu, frc, fr, sizeof fr));
    OKG(gpu->iface->upload(gpu, frg, fr, sizeof fr));
    for (int inv = 0; inv < 2; inv++) {
        OKC(cpu->iface->rope(cpu, x.c, B, T, heads, dh, dh, 0, frc, 1.1f, inv));
        OKG(gpu->iface->rope(gpu, x.g, B, T, heads, dh, dh, 0, frg, 1.1f, inv));
        pair_check(&x, 1e-5, 1e-6, inv ? "scaled rope inverse" : "scaled rope");
    }
    /* partial rotary (half of each head) with rotate_half and interleaved (GLM) pairs */
    for (int il = 0; il < 2; il++)
        for (int inv = 0; inv < 2; inv++) {
            OKC(cpu->iface->rope(cpu, x.c, B, T, heads, dh, dh / 2, il, frc, 1.0f, inv));
            OKG(gpu->iface->rope(gpu, x.g, B, T, heads, dh, dh / 2, il, frg, 1.0f, inv));
            pair_check(&x, 1e-5, 1e-6, il ? "interleaved partial rope" : "partial rope");
        }
    OKC(cpu->iface->rope(cpu, x.c, B, T, heads, dh, dh, 1, frc, 1.0f, 0));
    OKG(gpu->iface->rope(gpu, x.g, B, T, heads, dh, dh, 1, frg, 1.0f, 0));
    pair_check(&x, 1e-5, 1e-6, "interleaved rope");
    ck_assert_int_ne(gpu->iface->rope(gpu, x.g, B, T, heads, dh, 3, 0, frg, 1.0f, 0), GSINK_OK);
    cpu->iface->free(cpu, frc);
    gpu->iface->free(gpu, frg);
    free(orig);
    free(back);
    pair_free(&x);
}
END_TEST

START_TEST(test_swiglu)
{
    const size_t n = 10007;
    pair g = pair_new(n, 71, 6.0f), u = pair_new(n, 73, 2.0f), h = pair_new(n, 0, 0);
    OKC(cpu->iface->swiglu_fwd(cpu, h.c, g.c, u.c, n));
    OKG(gpu->iface->swiglu_fwd(gpu, h.g, g.g, u.g, n));
    pair_check(&h, 1e-5, 1e-7, "swiglu_fwd");
    pair dh = pair_new(n, 79, 1.0f), dg = pair_new(n, 0, 0), du = pair_new(n, 0, 0);
    OKC(cpu->iface->swiglu_bwd(cpu, dg.c, du.c, dh.c, g.c, u.c, n));
    OKG(gpu->iface->swiglu_bwd(gpu, dg.g, du.g, dh.g, g.g, u.g, n));
    pair_check(&dg, 1e-5, 1e-7, "swiglu dgate");
    pair_check(&du, 1e-5, 1e-7, "swiglu dup");
    pair_free_all(&g, &u, &h, &dh, &dg, &du);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Cross-entropy                                                             */
/* ------------------------------------------------------------------------ */

START_TEST(test_xent)
{
    const int N = 45, V = 1003;
    int32_t *tg = malloc(sizeof(int32_t) * N);
    for (int n = 0; n < N; n++) tg[n] = n % 7 == 3 ? -1 : (n * 131) % V;
    ipair T = ipair_new(tg, N);
    pair logits = pair_new((size_t)N * V, 83, 8.0f);
    double lc = 0, lg = 0;
    int64_t cc = 0, cg = 0;
    OKC(cpu->iface->xent_fwd(cpu, &lc, &cc, logits.c, T.c, N, V));
    OKG(gpu->iface->xent_fwd(gpu, &lg, &cg, logits.g, T.g, N, V));
    ck_assert_int_eq(cc, cg);
    ck_assert_msg(tu_close(lc, lg, 1e-6, 0), "xent loss cpu %.12g gpu %.12g", lc, lg);
    pair dl = pair_new((size_t)N * V, 89, 1.0f);
    OKC(cpu->iface->xent_bwd(cpu, dl.c, logits.c, T.c, N, V, 1.0f / (float)cc));
    OKG(gpu->iface->xent_bwd(gpu, dl.g, logits.g, T.g, N, V, 1.0f / (float)cg));
    pair_check(&dl, 1e-5, 1e-9, "xent_bwd");
    /* in place (GSINK_MODEL_DISCARD_SITE_ACTIVATIONS: dlogits aliases the
     * logits): bitwise the out-of-place result on both backends */
    {
        const size_t n = (size_t)N * V;
        float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
        OKC(cpu->iface->xent_bwd(cpu, logits.c, logits.c, T.c, N, V, 1.0f / (float)cc));
        OKG(gpu->iface->xent_bwd(gpu, logits.g, logits.g, T.g, N, V, 1.0f / (float)cg));
        OKC(cpu->iface->download(cpu, a, dl.c, n * sizeof(float)));
        OKC(cpu->iface->download(cpu, b, logits.c, n * sizeof(float)));
        ck_assert_msg(memcmp(a, b, n * sizeof(float)) == 0, "cpu xent_bwd in place differs");
        OKG(gpu->iface->download(gpu, a, dl.g, n * sizeof(float)));
        OKG(gpu->iface->download(gpu, b, logits.g, n * sizeof(float)));
        ck_assert_msg(memcmp(a, b, n * sizeof(float)) == 0, "device xent_bwd in place differs");
        free(a);
        free(b);
    }
    pair_free(&logits);
    pair_free(&dl);
    ipair_free(&T);
    free(tg);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Element-wise and reductions                                               */
/* ------------------------------------------------------------------------ */

START_TEST(test_elementwise_reductions)
{
    const size_t n = 3 * 4099;
    pair a = pair_new(n, 97, 1.0f), b = pair_new(n, 101, 1.0f);
    OKC(cpu->iface->add(cpu, a.c, a.c, b.c, n)); /* out aliases a */
    OKG(gpu->iface->add(gpu, a.g, a.g, b.g, n));
    pair_check(&a, 0, 0, "add");
    OKC(cpu->iface->scale(cpu, a.c, -0.37f, n));
    OKG(gpu->iface->scale(gpu, a.g, -0.37f, n));
    pair_check(&a, 0, 0, "scale");

    const size_t rows = 97;
    const int heads = 5, width = 25;
    pair x = pair_new(rows * heads * width, 103, 3.0f), o = pair_new(rows * heads, 0, 0);
    OKC(cpu->iface->row_sumsq(cpu, o.c, x.c, rows, heads, width));
    OKG(gpu->iface->row_sumsq(gpu, o.g, x.g, rows, heads, width));
    pair_check(&o, 1e-6, 0, "row_sumsq");

    pair bs = pair_new(n / 3, 0, 0);
    OKC(cpu->iface->batch_sum(cpu, bs.c, a.c, 3, n / 3));
    OKG(gpu->iface->batch_sum(gpu, bs.g, a.g, 3, n / 3));
    pair_check(&bs, 0, 0, "batch_sum");

    double sc = 0, sg = 0;
    int fc = 0, fg = 0;
    OKC(cpu->iface->sumsq(cpu, &sc, &fc, a.c, n));
    OKG(gpu->iface->sumsq(gpu, &sg, &fg, a.g, n));
    ck_assert_int_eq(fc, 1);
    ck_assert_int_eq(fg, 1);
    ck_assert_msg(tu_close(sc, sg, 1e-12, 0), "sumsq cpu %.15g gpu %.15g", sc, sg);
    /* a non-finite value is flagged */
    float bad = NAN;
    OKC(cpu->iface->upload(cpu, a.c + 1234, &bad, sizeof bad));
    OKG(gpu->iface->upload(gpu, a.g + 1234, &bad, sizeof bad));
    OKC(cpu->iface->sumsq(cpu, &sc, &fc, a.c, n));
    OKG(gpu->iface->sumsq(gpu, &sg, &fg, a.g, n));
    ck_assert_int_eq(fc, 0);
    ck_assert_int_eq(fg, 0);
    pair_free_all(&a, &b, &x, &o, &bs);
}
END_TEST

/* The streaming-analysis accumulators on both backends against sums
 * computed here: acc starts nonzero (the ops add), per_b is written. */
static double *dpair_new(const double *h, size_t n, double **g)
{
    double *c = NULL;
    ck_assert_int_eq(cpu->iface->alloc(cpu, n * sizeof(double), (void **)&c), GSINK_OK);
    ck_assert_int_eq(gpu->iface->alloc(gpu, n * sizeof(double), (void **)g), GSINK_OK);
    ck_assert_int_eq(cpu->iface->upload(cpu, c, h, n * sizeof(double)), GSINK_OK);
    ck_assert_int_eq(gpu->iface->upload(gpu, *g, h, n * sizeof(double)), GSINK_OK);
    return c;
}

static void dcheck(const double *c, const double *g, const double *want, size_t n, const char *what)
{
    double *hg = malloc(n * sizeof(double));
    ck_assert_int_eq(gpu->iface->download(gpu, hg, g, n * sizeof(double)), GSINK_OK);
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(tu_close(c[i], want[i], 1e-12, 1e-300), "%s cpu [%zu] %.17g want %.17g", what, i, c[i], want[i]);
        ck_assert_msg(tu_close(hg[i], want[i], 1e-12, 1e-300), "%s gpu [%zu] %.17g want %.17g", what, i, hg[i], want[i]);
    }
    free(hg);
}

START_TEST(test_fold)
{
    const int B = 3, T = 11, R = 7, heads = 5, hw = 9, W = heads * hw;
    const size_t nx = (size_t)B * T * W;
    pair x = pair_new(nx, 131, 2.0f);
    float *hx = malloc(nx * sizeof(float));
    ck_assert_int_eq(cpu->iface->download(cpu, hx, x.c, nx * sizeof(float)), GSINK_OK);
    const size_t na = (size_t)R * (1 + heads);
    double *init = malloc(na * sizeof(double)), *want = malloc(na * sizeof(double));
    for (size_t i = 0; i < na; i++) init[i] = 0.25 * (double)i - 1.0;
    double *ag = NULL, *ac = dpair_new(init, na, &ag);

    /* fold_norms: per-head norms (nh = heads) and per-sequence norms */
    pair pb = pair_new((size_t)B * R, 0, 0);
    OKC(cpu->iface->fold_norms(cpu, ac, pb.c, x.c, NULL, B, T, R, heads, hw, heads));
    OKG(gpu->iface->fold_norms(gpu, ag, pb.g, x.g, NULL, B, T, R, heads, hw, heads));
    memcpy(want, init, na * sizeof(double));
    for (int t = 0; t < R; t++)
        for (int b = 0; b < B; b++) {
            double all = 0;
            for (int h = 0; h < heads; h++) {
                double ss = 0;
                for (int i = 0; i < hw; i++) {
                    double v = hx[((size_t)b * T + t) * W + (size_t)h * hw + i];
                    ss += v * v;
                }
                want[(size_t)t * (1 + heads) + 1 + h] += sqrt(ss);
                all += ss;
            }
            want[(size_t)t * (1 + heads)] += sqrt(all);
            ck_assert_msg(tu_close(pb.c[b * R + t], sqrt(all), 1e-6, 0), "per_b cpu b %d t %d", b, t);
        }
    dcheck(ac, ag, want, na, "fold_norms");
    pair_check(&pb, 1e-6, 0, "fold_norms per_b");

    /* fold_sum: the first R rows of every sequence, strided */
    const size_t nsum = (size_t)R * W;
    double *sinit = calloc(nsum, sizeof(double)), *swant = malloc(nsum * sizeof(double));
    for (size_t i = 0; i < nsum; i++) sinit[i] = (double)(i % 7) - 3.0;
    double *sg = NULL, *sc = dpair_new(sinit, nsum, &sg);
    OKC(cpu->iface->fold_sum(cpu, sc, x.c, B, (size_t)T * W, nsum));
    OKG(gpu->iface->fold_sum(gpu, sg, x.g, B, (size_t)T * W, nsum));
    for (size_t i = 0; i < nsum; i++) {
        swant[i] = sinit[i];
        double s = 0;
        for (int b = 0; b < B; b++) s += hx[(size_t)b * T * W + i];
        swant[i] += s;
    }
    dcheck(sc, sg, swant, nsum, "fold_sum");

    /* fold_ratio: per-sequence ratios of two (B, R) tensors */
    pair num = pair_new((size_t)B * R, 137, 1.0f), den = pair_new((size_t)B * R, 139, 1.0f);
    double *rg = NULL, *rc = dpair_new(init, (size_t)R, &rg);
    OKC(cpu->iface->fold_ratio(cpu, rc, num.c, den.c, B, R));
    OKG(gpu->iface->fold_ratio(gpu, rg, num.g, den.g, B, R));
    for (int t = 0; t < R; t++) {
        double s = 0;
        for (int b = 0; b < B; b++) s += (double)num.c[b * R + t] / den.c[b * R + t];
        want[t] = init[t] + s;
    }
    dcheck(rc, rg, want, (size_t)R, "fold_ratio");

    /* NULL accumulator: only the per-sequence norms, of one head */
    pair pb1 = pair_new((size_t)B * R, 0, 0);
    OKC(cpu->iface->fold_norms(cpu, NULL, pb1.c, x.c, NULL, B, T, R, 1, W, 0));
    OKG(gpu->iface->fold_norms(gpu, NULL, pb1.g, x.g, NULL, B, T, R, 1, W, 0));
    pair_check(&pb1, 1e-6, 0, "fold_norms per_b (one head)");
    for (size_t i = 0; i < (size_t)B * R; i++)
        ck_assert_msg(tu_close(pb1.c[i], pb.c[i], 1e-6, 0), "per_b one head [%zu]", i);

    /* the norms of a difference x - y (the branch's g3) */
    pair yx = pair_new(nx, 149, 2.0f), pd = pair_new((size_t)B * R, 0, 0);
    OKC(cpu->iface->fold_norms(cpu, NULL, pd.c, x.c, yx.c, B, T, R, 1, W, 0));
    OKG(gpu->iface->fold_norms(gpu, NULL, pd.g, x.g, yx.g, B, T, R, 1, W, 0));
    pair_check(&pd, 1e-6, 0, "fold_norms per_b of x - y");
    for (int b = 0; b < B; b++)
        for (int t = 0; t < R; t++) {
            double ss = 0;
            for (int i = 0; i < W; i++) {
                const size_t at = ((size_t)b * T + t) * W + (size_t)i;
                const double dv = (double)hx[at] - (double)yx.c[at];
                ss += dv * dv;
            }
            ck_assert_msg(tu_close(pd.c[b * R + t], sqrt(ss), 1e-6, 0), "per_b of x - y, b %d t %d", b, t);
        }
    pair_free_all(&yx, &pd);

    /* row_sumsq_d: per-head squared norms of the double sums, and of a difference */
    const int rh = 3, rw = W / 3 + 1, rrows = 5;
    const size_t nr = (size_t)rrows * rh * rw;
    double *xh = malloc(nr * sizeof(double)), *yh = malloc(nr * sizeof(double)), *zero = calloc(nr, sizeof(double));
    for (size_t i = 0; i < nr; i++) {
        xh[i] = sin(0.37 * (double)i) * 3.0;
        yh[i] = cos(0.11 * (double)i);
    }
    double *xg = NULL, *yg = NULL, *og = NULL, *xc = dpair_new(xh, nr, &xg), *yc = dpair_new(yh, nr, &yg);
    double *oc = dpair_new(zero, (size_t)rrows * rh, &og), *owant = malloc((size_t)rrows * rh * sizeof(double));
    for (int withy = 0; withy < 2; withy++) {
        OKC(cpu->iface->row_sumsq_d(cpu, oc, xc, withy ? yc : NULL, (size_t)rrows, rh, rw));
        OKG(gpu->iface->row_sumsq_d(gpu, og, xg, withy ? yg : NULL, (size_t)rrows, rh, rw));
        for (int r = 0; r < rrows * rh; r++) {
            double ss = 0;
            for (int i = 0; i < rw; i++) {
                double v = xh[(size_t)r * rw + i] - (withy ? yh[(size_t)r * rw + i] : 0.0);
                ss += v * v;
            }
            owant[r] = ss;
        }
        dcheck(oc, og, owant, (size_t)rrows * rh, withy ? "row_sumsq_d (x - y)" : "row_sumsq_d");
    }
    void *cd[3] = {xc, yc, oc}, *gd[3] = {xg, yg, og};
    for (int i = 0; i < 3; i++) {
        cpu->iface->free(cpu, cd[i]);
        gpu->iface->free(gpu, gd[i]);
    }
    free(xh);
    free(yh);
    free(zero);
    free(owant);

    void *cb[3] = {ac, sc, rc}, *gb[3] = {ag, sg, rg};
    for (int i = 0; i < 3; i++) {
        cpu->iface->free(cpu, cb[i]);
        gpu->iface->free(gpu, gb[i]);
    }
    pair_free_all(&x, &pb, &num, &den, &pb1);
    free(hx);
    free(init);
    free(want);
    free(sinit);
    free(swant);
}
END_TEST

START_TEST(test_adamw)
{
    const size_t n = 5003;
    pair p = pair_new(n, 107, 0.5f), m = pair_new(n, 0, 0), v = pair_new(n, 0, 0);
    for (int step = 1; step <= 5; step++) {
        pair g = pair_new(n, 200 + step, 1.0f);
        float bc1 = 1.0f - powf(0.9f, (float)step), bc2 = 1.0f - powf(0.95f, (float)step);
        OKC(cpu->iface->adamw(cpu, p.c, g.c, m.c, v.c, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, bc1, bc2, 0.7f));
        OKG(gpu->iface->adamw(gpu, p.g, g.g, m.g, v.g, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, bc1, bc2, 0.7f));
        pair_free(&g);
    }
    /* Bitwise: both backends perform the same correctly rounded operations
     * in the same order, none contracted into an FMA. m cancels (it is ~1e-3
     * of its terms here), so one skipped rounding shows as a 1e-4 relative
     * error in m: the bound of rtol 1e-5 failed on an H200 when nvcc fused
     * beta1 * m + (1 - beta1) * g into an FMA. */
    pair_check(&m, 0.0, 0.0, "adamw m");
    pair_check(&v, 0.0, 0.0, "adamw v");
    pair_check(&p, 0.0, 0.0, "adamw p");
    pair_free_all(&p, &m, &v);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* V-scale                                                                   */
/* ------------------------------------------------------------------------ */

static void vscale_case(int hin, int hout, int dh, int mode)
{
    const int N = 131;
    const float c0 = 64.0f * dh * 0.02f * 0.02f;
    pair v = pair_new((size_t)N * hin * dh, 113, 0.3f), theta = pair_new(hout, 127, 1.0f);
    pair out = pair_new((size_t)N * hout * dh, 0, 0);
    char what[96];
    OKC(cpu->iface->vscale_fwd(cpu, out.c, v.c, theta.c, N, hin, hout, dh, c0, mode));
    OKG(gpu->iface->vscale_fwd(gpu, out.g, v.g, theta.g, N, hin, hout, dh, c0, mode));
    snprintf(what, sizeof what, "vscale_fwd mode %d %d->%d", mode, hin, hout);
    pair_check(&out, 1e-5, 1e-8, what);
    pair dout = pair_new((size_t)N * hout * dh, 131, 1.0f), dv = pair_new((size_t)N * hin * dh, 0, 0);
    pair dtheta = pair_new(hout, 137, 0.1f);
    OKC(cpu->iface->vscale_bwd(cpu, dv.c, dtheta.c, dout.c, v.c, theta.c, N, hin, hout, dh, c0, mode));
    OKG(gpu->iface->vscale_bwd(gpu, dv.g, dtheta.g, dout.g, v.g, theta.g, N, hin, hout, dh, c0, mode));
    snprintf(what, sizeof what, "vscale dv mode %d %d->%d", mode, hin, hout);
    pair_check(&dv, 1e-5, 1e-7, what);
    snprintf(what, sizeof what, "vscale dtheta mode %d %d->%d", mode, hin, hout);
    pair_check(&dtheta, 1e-5, 1e-7, what);
    pair_free_all(&v, &theta, &out, &dout, &dv, &dtheta);
}

START_TEST(test_vscale)
{
    static const int modes[] = {GSINK_VSCALE_OFF, GSINK_VSCALE_FULL, GSINK_VSCALE_BACKWARD_ONLY};
    for (int i = 0; i < 3; i++) {
        vscale_case(2, 2, 64, modes[i]);
        vscale_case(2, 6, 64, modes[i]);  /* expansion to query heads */
        vscale_case(3, 3, 40, modes[i]);  /* head width not a multiple of 32 */
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Attention                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct { int B, T, H, KV, NV, dh, W, SW; } attn_case_t; /* W: T_eps; SW: sliding window (0 none) */

/* The inputs and outputs of one attention case on both backends: q, k, v
 * and dy random (seeds seed, +6, +12, +16), the outputs zero, the gradient
 * buffers pre-filled with garbage (seeds +22, +28, +30). */
typedef struct {
    pair q, k, v, y, lse, mass, sq, win, dy, dq, dk, dv;
} attn_bufs;

static attn_bufs attn_bufs_new(attn_case_t a, uint64_t seed)
{
    size_t nq = (size_t)a.B * a.T * a.H * a.dh, nk = (size_t)a.B * a.T * a.KV * a.dh;
    size_t nv = (size_t)a.B * a.T * a.NV * a.dh, ns = (size_t)a.B * a.H * a.T;
    attn_bufs t;
    t.q = pair_new(nq, seed, 1.5f);
    t.k = pair_new(nk, seed + 6, 1.5f);
    t.v = pair_new(nv, seed + 12, 1.0f);
    t.y = pair_new(nq, 0, 0);
    t.lse = pair_new(ns, 0, 0);
    t.mass = pair_new(ns, 0, 0);
    t.sq = pair_new(ns, 0, 0);
    t.win = pair_new(ns, 0, 0);
    t.dy = pair_new(nq, seed + 16, 1.0f);
    t.dq = pair_new(nq, seed + 22, 9.0f);
    t.dk = pair_new(nk, seed + 28, 9.0f);
    t.dv = pair_new(nv, seed + 30, 9.0f);
    return t;
}

static void attn_bufs_free(attn_bufs *t)
{
    pair_free_all(&t->q, &t->k, &t->v, &t->y, &t->lse, &t->mass, &t->sq, &t->win, &t->dy, &t->dq, &t->dk, &t->dv);
}

static void attention_case(attn_case_t a)
{
    gsink_attn_shape s = {a.B, a.T, a.H, a.KV, a.NV, a.dh, a.W, 0.0f, a.SW};
    attn_bufs t = attn_bufs_new(a, 151);
    const size_t nq = t.q.n, nk = t.k.n, nv = t.v.n, ns = t.mass.n;
    gsink_attn_stats sc = {t.mass.c, t.sq.c, t.win.c}, sg = {t.mass.g, t.sq.g, t.win.g};
    char what[160];
#define WHAT(name) (snprintf(what, sizeof what, "%s B%d T%d H%d KV%d NV%d dh%d W%d SW%d", name, a.B, a.T, a.H, a.KV, a.NV, a.dh, a.W, a.SW), what)
    OKC(cpu->iface->attention_fwd(cpu, &s, t.y.c, t.lse.c, t.q.c, t.k.c, t.v.c, sc));
    OKG(gpu->iface->attention_fwd(gpu, &s, t.y.g, t.lse.g, t.q.g, t.k.g, t.v.g, sg));
    pair_check(&t.y, 2e-4, 2e-5, WHAT("attention y"));
    pair_check(&t.lse, 2e-5, 2e-5, WHAT("attention lse"));
    pair_check(&t.mass, 2e-4, 2e-5, WHAT("column mass"));
    pair_check(&t.sq, 2e-4, 2e-5, WHAT("column sq"));
    pair_check(&t.win, 2e-4, 2e-5, WHAT("column window"));
    /* independent identity: every query row's probabilities sum to 1, so the
     * column masses of each (b, h) sum to T */
    float *m = download(&t.mass);
    for (int bh = 0; bh < a.B * a.H; bh++) {
        double tot = 0;
        for (int t = 0; t < a.T; t++) tot += m[(size_t)bh * a.T + t];
        ck_assert_msg(fabs(tot - a.T) < 1e-3 * a.T, "%s: sum of masses %.6f", WHAT("mass"), tot);
    }
    free(m);
    /* NULL statistics pointers are allowed */
    gsink_attn_stats none = {NULL, NULL, NULL};
    OKG(gpu->iface->attention_fwd(gpu, &s, t.y.g, t.lse.g, t.q.g, t.k.g, t.v.g, none));
    pair_check(&t.y, 2e-4, 2e-5, WHAT("attention y (no stats)"));

    OKC(cpu->iface->attention_bwd(cpu, &s, t.dq.c, t.dk.c, t.dv.c, t.dy.c, t.q.c, t.k.c, t.v.c, t.y.c, t.lse.c, none));
    OKG(gpu->iface->attention_bwd(gpu, &s, t.dq.g, t.dk.g, t.dv.g, t.dy.g, t.q.g, t.k.g, t.v.g, t.y.g, t.lse.g, none));
    pair_check(&t.dq, 2e-4, 5e-5, WHAT("attention dq"));
    pair_check(&t.dk, 2e-4, 5e-5, WHAT("attention dk"));
    pair_check(&t.dv, 2e-4, 5e-5, WHAT("attention dv"));
    float *dk1 = download(&t.dk), *dq1 = download(&t.dq), *dv1 = download(&t.dv);
    /* the statistics summed inside the backward kernel and by the stand-alone
     * pass against the CPU forward's (mass/sq/t.win.c still hold those) */
    pair bm = pair_new(ns, 191, 9.0f), bs = pair_new(ns, 193, 9.0f), bw = pair_new(ns, 197, 9.0f);
    gsink_attn_stats bg = {bm.g, bs.g, bw.g}, og = {t.mass.g, t.sq.g, t.win.g};
    memcpy(bm.c, t.mass.c, ns * sizeof(float));
    memcpy(bs.c, t.sq.c, ns * sizeof(float));
    memcpy(bw.c, t.win.c, ns * sizeof(float));
    OKG(gpu->iface->attention_bwd(gpu, &s, t.dq.g, t.dk.g, t.dv.g, t.dy.g, t.q.g, t.k.g, t.v.g, t.y.g, t.lse.g, bg));
    pair_check(&bm, 2e-4, 2e-5, WHAT("column mass (backward)"));
    pair_check(&bs, 2e-4, 2e-5, WHAT("column sq (backward)"));
    pair_check(&bw, 2e-4, 2e-5, WHAT("column window (backward)"));
    /* determinism, and the statistics do not change the gradients: bitwise */
    float *dk2 = download(&t.dk), *dq2 = download(&t.dq), *dv2 = download(&t.dv);
    ck_assert_msg(memcmp(dk1, dk2, nk * sizeof(float)) == 0, "%s", WHAT("dk not deterministic"));
    ck_assert_msg(memcmp(dq1, dq2, nq * sizeof(float)) == 0, "%s", WHAT("dq not deterministic"));
    ck_assert_msg(memcmp(dv1, dv2, nv * sizeof(float)) == 0, "%s", WHAT("dv not deterministic"));
    OKG(gpu->iface->zero(gpu, t.mass.g, ns * sizeof(float)));
    OKG(gpu->iface->attention_stats(gpu, &s, t.q.g, t.k.g, t.lse.g, og));
    pair_check(&t.mass, 2e-4, 2e-5, WHAT("column mass (stand-alone)"));
    pair_check(&t.sq, 2e-4, 2e-5, WHAT("column sq (stand-alone)"));
    pair_check(&t.win, 2e-4, 2e-5, WHAT("column window (stand-alone)"));
    pair_free_all(&bm, &bs, &bw);
    free(dk1);
    free(dk2);
    free(dq1);
    free(dq2);
    free(dv1);
    free(dv2);
#undef WHAT
    attn_bufs_free(&t);
}

START_TEST(test_attention)
{
    static const attn_case_t cases[] = {
        {1, 1, 1, 1, 1, 8, 4, 0},        /* a single token */
        {2, 37, 4, 4, 4, 16, 8, 0},      /* T not a multiple of the tile */
        {2, 96, 4, 2, 2, 64, 64, 0},     /* GQA, per-KV-head values */
        {1, 70, 6, 2, 6, 64, 16, 0},     /* GQA with per-query-head values (V-scale) */
        {1, 65, 4, 1, 4, 128, 64, 0},    /* MQA keys, d_head 128 */
        {1, 40, 2, 2, 2, 80, 5, 0},      /* d_head 80 (padded to 128) */
        {1, 33, 2, 1, 1, 256, 3, 0},     /* d_head 256 */
        {1, 200, 2, 1, 2, 32, 64, 0},    /* 7 tiles, window spanning tiles */
        /* sliding windows: key tiles skipped, rows with no key in a tile */
        {2, 150, 4, 2, 4, 64, 16, 1},   /* each query sees itself only */
        {1, 200, 2, 1, 2, 32, 64, 7},   /* window inside a tile, T_eps > window */
        {1, 170, 4, 2, 2, 16, 8, 40},   /* window across tiles */
        {1, 300, 2, 2, 2, 80, 64, 129}, /* across the CPU's 128-row query blocks */
        {1, 90, 2, 1, 1, 256, 3, 32},   /* exactly one tile wide, d_head 256 */
        {1, 37, 2, 2, 2, 16, 8, 37},    /* window = T: plain causal */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) attention_case(cases[i]);
}
END_TEST

/* Tensor-core attention (cuda/attention_tc.cu), chosen by the CUDA backend in
 * TF32 or BF16 math mode for d_head <= 128 (larger heads fall back to the
 * exact kernels). Compared with the exact CPU backend; each tensor X is held
 * to |gpu - cpu| <= rtol |cpu| + arel max|X_cpu| + floor.
 * Q K^T, P V, dY V^T, P^T dY, dS^T Q and dS K take their inputs rounded to
 * TF32 (10 explicit mantissa bits, unit roundoff u = 2^-11 ~ 4.9e-4) or to
 * BF16 (7 explicit bits, u = 2^-8 ~ 3.9e-3) and accumulate in fp32, so
 * scores are off by a few u (|q|, |k| <= 1.5, up to 128-long dot products
 * scaled by 1/sqrt(d_head)) and every output by a few u of its scale:
 *                                  TF32            BF16
 *   y, dq, dk, dv, column mass,
 *   sq, win: rtol and arel         2e-3 (~4u)      2^-6 = 1.5625e-2 (4u)
 *   lse: arel (rtol 0; an absolute
 *   error relative to max |lse|)   2e-3 (~4u)      2^-6 (4u)
 *   floor (inputs are O(1))        1e-4 (~0.2u)    2^-8 ~ 3.9e-3 (u)
 * The floor covers tensors that vanish: a single token's dq and dk are
 * exactly 0 on the CPU but rounding noise of dP - D on the GPU (dP takes dY
 * and V rounded, D = rowsum(dY * Y) does not): measured 0.04u (TF32) and
 * 0.24u (BF16). Elsewhere the measured worst cases in the host emulation
 * (which rounds like the device) are 3.5-4.5x below the bounds, for both
 * precisions. The second backward must be bitwise identical (no atomics,
 * fixed summation order). The column statistics are checked, with the same
 * bounds, from the forward (the exact statistics pass on the tensor-core
 * lse), from inside the tensor-core backward (also for determinism) and from
 * the stand-alone pass.
 * With d_head > 128 the exact kernels run: the results are held to the exact
 * path's bounds (rtol 2e-4, atol 5e-5) and, on a device, must be bitwise those
 * of FP32 math. On a device (not the CPU harness) a single token's y and dv
 * are exactly V and dY rounded to the input precision (P = 1, l = 1) and its
 * lse the score of the rounded q and k, which checks the rounding rule of
 * those operands (a truncation, say, stays within the bounds above): TF32 to
 * nearest with ties away (cvt.rna), BF16 to nearest even. BF16 results must
 * differ from TF32's (the BF16 kernels ran, not the TF32 ones). */

typedef struct {
    const char *name;
    int mode;                   /* GSINK_CUDA_MATH_* */
    double rtol, floor_;        /* rtol = arel, and the floor (see above) */
} tc_prec;

static const tc_prec TC_TF32 = {"tf32", GSINK_CUDA_MATH_TF32, 2e-3, 1e-4};
static const tc_prec TC_BF16 = {"bf16", GSINK_CUDA_MATH_BF16, 4 * 0x1p-8, 0x1p-8};

/* pair_check with an absolute part relative to the CPU tensor's max |x|,
 * plus an absolute floor for tensors that vanish (see above). */
static void pair_check_scaled(const pair *p, double rtol, double arel, double floor_, const char *what)
{
    double mx = 0.0;
    for (size_t i = 0; i < p->n; i++) mx = fmax(mx, fabs((double)p->c[i]));
    pair_check(p, rtol, arel * mx + floor_, what);
}

/* x rounded as the tensor cores take it: TF32 (cvt.rna) or BF16 (cvt.rn) */
static float tc_round(float x, int mode)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u)
        u = mode == GSINK_CUDA_MATH_BF16 ? (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u
                                         : (u + 0x1000u) & 0xffffe000u;
    memcpy(&x, &u, 4);
    return x;
}

static void check_bitwise(const float *a, const pair *p, const char *what)
{
    float *b = download(p);
    ck_assert_msg(memcmp(a, b, p->n * sizeof(float)) == 0, "%s", what);
    free(b);
}

static void attention_tc_case(attn_case_t a, const tc_prec *pr)
{
    const int fallback = a.dh > 128 || (a.SW > 0 && a.SW < a.T); /* exact kernels */
    const double RT = fallback ? 2e-4 : pr->rtol, AR = fallback ? 0 : pr->rtol;
    const double FL = fallback ? 5e-5 : pr->floor_;
    gsink_attn_shape s = {a.B, a.T, a.H, a.KV, a.NV, a.dh, a.W, 0.0f, a.SW};
    attn_bufs t = attn_bufs_new(a, 251);
    const size_t nq = t.q.n, nk = t.k.n, nv = t.v.n, ns = t.mass.n;
    gsink_attn_stats sc = {t.mass.c, t.sq.c, t.win.c}, sg = {t.mass.g, t.sq.g, t.win.g};
    char what[160];
#define WHAT(nm) (snprintf(what, sizeof what, "%s %s B%d T%d H%d KV%d NV%d dh%d W%d SW%d", pr->name, nm, a.B, a.T, a.H, a.KV, a.NV, a.dh, a.W, a.SW), what)
    OKC(cpu->iface->attention_fwd(cpu, &s, t.y.c, t.lse.c, t.q.c, t.k.c, t.v.c, sc));
    OKG(gpu->iface->attention_fwd(gpu, &s, t.y.g, t.lse.g, t.q.g, t.k.g, t.v.g, sg));
    pair_check_scaled(&t.y, RT, AR, FL, WHAT("attention y"));
    pair_check_scaled(&t.lse, fallback ? RT : 0, AR, FL, WHAT("attention lse"));
    pair_check_scaled(&t.mass, RT, AR, FL, WHAT("column mass (forward)"));
    pair_check_scaled(&t.sq, RT, AR, FL, WHAT("column sq (forward)"));
    pair_check_scaled(&t.win, RT, AR, FL, WHAT("column window (forward)"));
    float *yf = download(&t.y), *lf = download(&t.lse);
    /* a single token on the tensor cores: P = 1 and l = 1, so y is V rounded
     * to the input precision, bit for bit, and lse the score of q and k
     * rounded (fp32 sums: to 1e-5, far below a rounding difference) */
    const int one = gpu_is_cuda && !fallback && a.T == 1 && a.H == 1 && a.KV == 1 && a.NV == 1;
    if (one) {
        for (size_t i = 0; i < nq; i++)
            ck_assert_msg(yf[i] == tc_round(t.v.c[i], pr->mode), "%s: element %zu: %.9g, V %.9g",
                          WHAT("y of one token"), i, (double)yf[i], (double)t.v.c[i]);
        for (int b = 0; b < a.B; b++) {
            double sc = 0.0;
            for (int d = 0; d < a.dh; d++)
                sc += (double)tc_round(t.q.c[b * a.dh + d], pr->mode) * tc_round(t.k.c[b * a.dh + d], pr->mode);
            const float ref = (float)sc * (1.0f / sqrtf((float)a.dh));
            ck_assert_msg(fabs((double)lf[b] - ref) <= 1e-5, "%s: %.9g, rounded q k %.9g",
                          WHAT("lse of one token"), (double)lf[b], (double)ref);
        }
    }

    gsink_attn_stats none = {NULL, NULL, NULL};
    OKC(cpu->iface->attention_bwd(cpu, &s, t.dq.c, t.dk.c, t.dv.c, t.dy.c, t.q.c, t.k.c, t.v.c, t.y.c, t.lse.c, none));
    OKG(gpu->iface->attention_bwd(gpu, &s, t.dq.g, t.dk.g, t.dv.g, t.dy.g, t.q.g, t.k.g, t.v.g, t.y.g, t.lse.g, none));
    pair_check_scaled(&t.dq, RT, AR, FL, WHAT("attention dq"));
    pair_check_scaled(&t.dk, RT, AR, FL, WHAT("attention dk"));
    pair_check_scaled(&t.dv, RT, AR, FL, WHAT("attention dv"));
    /* determinism: a second run is bitwise identical */
    float *r1[3] = {download(&t.dq), download(&t.dk), download(&t.dv)};
    OKG(gpu->iface->attention_bwd(gpu, &s, t.dq.g, t.dk.g, t.dv.g, t.dy.g, t.q.g, t.k.g, t.v.g, t.y.g, t.lse.g, none));
    check_bitwise(r1[0], &t.dq, WHAT("dq not deterministic"));
    check_bitwise(r1[1], &t.dk, WHAT("dk not deterministic"));
    check_bitwise(r1[2], &t.dv, WHAT("dv not deterministic"));
    if (one) /* P^T = 1: dv is dY rounded, bit for bit */
        for (size_t i = 0; i < nv; i++)
            ck_assert_msg(r1[2][i] == tc_round(t.dy.c[i], pr->mode), "%s: element %zu: %.9g, dY %.9g",
                          WHAT("dv of one token"), i, (double)r1[2][i], (double)t.dy.c[i]);

    {
        /* statistics buffers start as garbage: every entry must be written */
        pair m2 = pair_new(ns, 283, 7.0f), s2 = pair_new(ns, 293, 7.0f), w2 = pair_new(ns, 307, 7.0f);
        gsink_attn_stats st2 = {m2.g, s2.g, w2.g};
        OKG(gpu->iface->attention_bwd(gpu, &s, t.dq.g, t.dk.g, t.dv.g, t.dy.g, t.q.g, t.k.g, t.v.g, t.y.g, t.lse.g, st2));
        pair cm = {t.mass.c, m2.g, ns}, cs = {t.sq.c, s2.g, ns}, cw = {t.win.c, w2.g, ns};
        pair_check_scaled(&cm, RT, AR, FL, WHAT("column mass (backward)"));
        pair_check_scaled(&cs, RT, AR, FL, WHAT("column sq (backward)"));
        pair_check_scaled(&cw, RT, AR, FL, WHAT("column window (backward)"));
        /* asking for the statistics leaves the gradients bitwise unchanged */
        check_bitwise(r1[0], &t.dq, WHAT("dq changed by stats"));
        check_bitwise(r1[1], &t.dk, WHAT("dk changed by stats"));
        check_bitwise(r1[2], &t.dv, WHAT("dv changed by stats"));
        /* the statistics are deterministic too, and NULL pointers are skipped */
        float *s1[3] = {download(&m2), download(&s2), download(&w2)};
        gsink_attn_stats only_sq = {NULL, s2.g, NULL};
        OKG(gpu->iface->zero(gpu, s2.g, sizeof(float) * ns));
        OKG(gpu->iface->attention_bwd(gpu, &s, t.dq.g, t.dk.g, t.dv.g, t.dy.g, t.q.g, t.k.g, t.v.g, t.y.g, t.lse.g, only_sq));
        check_bitwise(s1[1], &s2, WHAT("column sq not deterministic"));
        OKG(gpu->iface->attention_bwd(gpu, &s, t.dq.g, t.dk.g, t.dv.g, t.dy.g, t.q.g, t.k.g, t.v.g, t.y.g, t.lse.g, st2));
        check_bitwise(s1[0], &m2, WHAT("column mass not deterministic"));
        check_bitwise(s1[1], &s2, WHAT("column sq not deterministic"));
        check_bitwise(s1[2], &w2, WHAT("column window not deterministic"));
        /* the stand-alone statistics pass on the device's lse */
        OKG(gpu->iface->zero(gpu, m2.g, sizeof(float) * ns));
        OKG(gpu->iface->attention_stats(gpu, &s, t.q.g, t.k.g, t.lse.g, st2));
        pair_check_scaled(&cm, RT, AR, FL, WHAT("column mass (stand-alone)"));
        pair_check_scaled(&cs, RT, AR, FL, WHAT("column sq (stand-alone)"));
        pair_check_scaled(&cw, RT, AR, FL, WHAT("column window (stand-alone)"));
        for (int i = 0; i < 3; i++) free(s1[i]);
        pair_free_all(&m2, &s2, &w2);
    }

    if (gpu_is_cuda && (fallback || pr->mode == GSINK_CUDA_MATH_BF16)) {
        /* the same shape in another math mode: FP32 for the fallback (the
         * same exact kernels, so the same bits), TF32 for BF16 (different
         * kernels, so different bits) */
        const int other = fallback ? GSINK_CUDA_MATH_FP32 : GSINK_CUDA_MATH_TF32;
        ck_assert_int_eq(gsink__cuda_set_math(gpu, other), GSINK_OK);
        OKG(gpu->iface->attention_fwd(gpu, &s, t.y.g, t.lse.g, t.q.g, t.k.g, t.v.g, none));
        OKG(gpu->iface->attention_bwd(gpu, &s, t.dq.g, t.dk.g, t.dv.g, t.dy.g, t.q.g, t.k.g, t.v.g, t.y.g, t.lse.g, none));
        ck_assert_int_eq(gsink__cuda_set_math(gpu, pr->mode), GSINK_OK);
        float *o[5] = {download(&t.y), download(&t.lse), download(&t.dq), download(&t.dk), download(&t.dv)};
        const float *m[5] = {yf, lf, r1[0], r1[1], r1[2]};
        const size_t n[5] = {nq, ns, nq, nk, nv};
        static const char *names[5] = {"y", "lse", "dq", "dk", "dv"};
        for (int i = 0; i < 5; i++) {
            int same = memcmp(o[i], m[i], n[i] * sizeof(float)) == 0;
            ck_assert_msg(same == fallback, "%s: %s", WHAT(names[i]),
                          fallback ? "differs from FP32 math" : "equals TF32's (BF16 kernels not used?)");
            free(o[i]);
        }
    }
    for (int i = 0; i < 3; i++) free(r1[i]);
    free(yf);
    free(lf);
#undef WHAT
    attn_bufs_free(&t);
}

static const attn_case_t tc_cases[] = {
    {1, 1, 1, 1, 1, 8, 4, 0},        /* a single token */
    {2, 100, 4, 2, 2, 64, 16, 0},    /* T not a multiple of 64, GQA, per-KV-head values */
    {1, 150, 4, 2, 4, 64, 80, 0},    /* GQA with per-query-head values, window spans tiles */
    {1, 130, 2, 1, 2, 128, 64, 0},   /* MQA keys, per-query-head values, d_head 128 */
    {1, 70, 2, 2, 2, 80, 5, 0},      /* d_head 80 (padded to 128) */
    {1, 45, 3, 3, 3, 30, 7, 0},      /* d_head 30: not a multiple of 4 (scalar loads) */
    {1, 33, 2, 1, 1, 256, 3, 0},     /* d_head 256: falls back to the exact kernels */
    {1, 150, 4, 2, 4, 64, 80, 40}, /* sliding window: falls back to the exact kernels */
    {1, 100, 2, 2, 2, 64, 16, 100}, /* window = T: tensor cores */
    {1, 200, 4, 4, 4, 32, 16, 0},    /* MHA, d_head 32, four tiles */
    {1, 70, 4, 2, 2, 100, 8, 0},     /* d_head 100 (padded to 128), GQA */
    {2, 1, 2, 2, 2, 128, 4, 0},      /* one token, two heads, d_head 128 */
};

/* GSINK_CUDA_ATTENTION=mma or mma4 (read at backend creation): BF16 runs the
 * mma.sync kernels of cuda/attention_mma.cu (blocks of 8 or 4 warps) in place
 * of the wmma ones, with the same contract and bounds; the backend's
 * description says so. */
static void attention_tc_cases(const tc_prec *pr)
{
    if (gpu_is_cuda) ck_assert_int_eq(gsink__cuda_set_math(gpu, pr->mode), GSINK_OK);
    const char *sel = getenv("GSINK_CUDA_ATTENTION");
    if (gpu_is_cuda && pr->mode == GSINK_CUDA_MATH_BF16 && sel && (!strcmp(sel, "mma") || !strcmp(sel, "mma4"))) {
        char d[512];
        gpu->iface->describe(gpu, d, sizeof d);
        ck_assert_msg(strstr(d, "attention mma") != NULL, "mma attention not selected: %s", d);
    }
    for (size_t i = 0; i < sizeof tc_cases / sizeof tc_cases[0]; i++) attention_tc_case(tc_cases[i], pr);
    if (gpu_is_cuda) ck_assert_int_eq(gsink__cuda_set_math(gpu, GSINK_CUDA_MATH_FP32), GSINK_OK);
}

START_TEST(test_attention_tf32)
{
    attention_tc_cases(&TC_TF32);
}
END_TEST

START_TEST(test_attention_bf16)
{
    attention_tc_cases(&TC_BF16);
}
END_TEST

START_TEST(test_attention_bad_shape)
{
    pair z = pair_new(64, 0, 0);
    gsink_attn_shape s = {1, 4, 4, 3, 4, 4, 2, 0.0f, 0}; /* 4 % 3 != 0 */
    gsink_attn_stats none = {NULL, NULL, NULL};
    if (!gpu_is_cuda) {
        pair_free(&z);
        return;
    }
    ck_assert_int_ne(gpu->iface->attention_fwd(gpu, &s, z.g, z.g, z.g, z.g, z.g, none), GSINK_OK);
    ck_assert(gpu->err[0] != '\0');
    /* the backend stays usable */
    OKG(gpu->iface->zero(gpu, z.g, 64 * sizeof(float)));
    pair_free(&z);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

START_TEST(test_out_of_memory)
{
    if (!gpu_is_cuda) return;
    void *p = (void *)1;
    gsink_status st = gpu->iface->alloc(gpu, (size_t)1 << 50, &p); /* 1 PiB */
    ck_assert_int_eq(st, GSINK_ERR_DEVICE_OUT_OF_MEMORY);
    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(gpu->err, "cudaMalloc") != NULL, "message: %s", gpu->err);
    /* still usable */
    pair a = pair_new(1000, 1, 1.0f);
    double s = 0;
    int f = 0;
    OKG(gpu->iface->sumsq(gpu, &s, &f, a.g, 1000));
    ck_assert(s > 0 && f == 1);
    pair_free(&a);
}
END_TEST

START_TEST(test_describe)
{
    char buf[512];
    gpu->iface->describe(gpu, buf, sizeof buf);
    ck_assert(buf[0] != '\0');
    if (gpu_is_cuda) ck_assert_str_eq(gpu->iface->name, "cuda");
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Model-level parity through the public API                                 */
/* ------------------------------------------------------------------------ */

static int model_wdtype; /* gsink_weight_dtype of the models model_pair makes */

static void model_pair(gsink_model **mc, gsink_model **mg, int per_query_head, int mode)
{
    gsink_config cfg;
    ck_assert_int_eq(gsink_config_preset("micro", &cfg), GSINK_OK);
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.d_model = 32;
    cfg.d_head = 8;
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.seed = 1234;
    o.n_threads = 1;
    o.weight_dtype = model_wdtype;
    ck_assert_int_eq(gsink_model_create(&cfg, &o, mc), GSINK_OK);
    o.device = gpu_is_cuda ? GSINK_DEVICE_CUDA : GSINK_DEVICE_CPU;
    gsink_status st = gsink_model_create(&cfg, &o, mg);
    ck_assert_msg(st == GSINK_OK, "create on CUDA: %s", gsink_last_error());
    if (mode != GSINK_VSCALE_OFF) {
        gsink_vscale_options vo;
        gsink_vscale_options_init(&vo);
        vo.mode = mode;
        vo.per_query_head = per_query_head;
        ck_assert_int_eq(gsink_vscale_enable(*mc, &vo), GSINK_OK);
        ck_assert_int_eq(gsink_vscale_enable(*mg, &vo), GSINK_OK);
        size_t nt = 0;
        ck_assert_int_eq(gsink_vscale_theta_count(*mc, &nt), GSINK_OK);
        float *th = malloc(sizeof(float) * nt);
        tu_fill(th, nt, 77, 1.0f); /* theta != 0 so C varies by head */
        ck_assert_int_eq(gsink_vscale_set_theta(*mc, th, nt), GSINK_OK);
        ck_assert_int_eq(gsink_vscale_set_theta(*mg, th, nt), GSINK_OK);
        free(th);
    }
}

static void compare_host(const float *c, const float *g, size_t n, double rtol, double atol,
                         const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs((double)c[i] - g[i]) <= atol + rtol * fabs((double)c[i]),
                      "%s[%zu]: cpu %.9g gpu %.9g", what, i, (double)c[i], (double)g[i]);
}

/* Column mass and second moment of every layer and head agree (T <= 64). */
static void compare_column_stats(gsink_model *mc, gsink_model *mg, int T, double rtol, double atol,
                                 const char *when)
{
    gsink_config cfg;
    cfg.size = sizeof cfg;
    ck_assert_int_eq(gsink_model_config(mc, &cfg), GSINK_OK);
    ck_assert_int_le(T, 64);
    char what[96];
    for (int l = 0; l < cfg.n_layers; l++)
        for (int h = 0; h < cfg.n_heads; h++) {
            float Mc[64], Sc[64], Mg[64], Sg[64];
            ck_assert_int_eq(gsink_attention_column_mass(mc, l, h, Mc, Sc, T), GSINK_OK);
            ck_assert_int_eq(gsink_attention_column_mass(mg, l, h, Mg, Sg, T), GSINK_OK);
            snprintf(what, sizeof what, "column mass %s l%d h%d", when, l, h);
            compare_host(Mc, Mg, (size_t)T, rtol, atol, what);
            snprintf(what, sizeof what, "column second moment %s l%d h%d", when, l, h);
            compare_host(Sc, Sg, (size_t)T, rtol, atol, what);
        }
}

/* Parameter i's gradient from both models (the caller frees *gc and *gg);
 * returns its element count. */
static size_t param_grads(gsink_model *mc, gsink_model *mg, size_t i, const char **name, float **gc, float **gg)
{
    int nd;
    int64_t dims[2];
    ck_assert_int_eq(gsink_param_info(mc, i, name, &nd, dims), GSINK_OK);
    size_t n = (size_t)dims[0] * (nd == 2 ? (size_t)dims[1] : 1);
    *gc = malloc(sizeof(float) * n);
    *gg = malloc(sizeof(float) * n);
    ck_assert(*gc && *gg);
    ck_assert_int_eq(gsink_get_param_grad(mc, *name, *gc, n), GSINK_OK);
    ck_assert_int_eq(gsink_get_param_grad(mg, *name, *gg, n), GSINK_OK);
    return n;
}

static void model_case(int per_query_head, int mode)
{
    gsink_model *mc = NULL, *mg = NULL;
    model_pair(&mc, &mg, per_query_head, mode);
    const int B = 2, T = 40;
    gsink_config cfg;
    cfg.size = sizeof cfg;
    ck_assert_int_eq(gsink_model_config(mc, &cfg), GSINK_OK);
    int32_t tok[80], tgt[80];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 37 + 11) % cfg.vocab_size;
        tgt[i] = i % 9 == 4 ? -1 : (i * 53 + 5) % cfg.vocab_size;
    }
    /* a forward-only analysis: the CUDA backend, which sums the statistics
     * inside its backward kernel, computes them on demand here */
    ck_assert_int_eq(gsink_forward(mc, tok, NULL, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_forward(mg, tok, NULL, B, T, NULL), GSINK_OK);
    compare_column_stats(mc, mg, T, 2e-4, 2e-5, "(forward only)");
    float lc = 0, lg = 0;
    ck_assert_int_eq(gsink_forward(mc, tok, tgt, B, T, &lc), GSINK_OK);
    gsink_status st = gsink_forward(mg, tok, tgt, B, T, &lg);
    ck_assert_msg(st == GSINK_OK, "forward: %s", gsink_model_errmsg(mg));
    ck_assert_msg(tu_close(lc, lg, 1e-5, 0), "loss cpu %.8g gpu %.8g", lc, lg);
    const size_t nlog = (size_t)B * T * (size_t)cfg.vocab_size;
    float *lg0 = malloc(sizeof(float) * nlog), *lg1 = malloc(sizeof(float) * nlog);
    ck_assert_int_eq(gsink_get_logits(mg, lg0, nlog), GSINK_OK);
    ck_assert_int_eq(gsink_backward(mc, 0), GSINK_OK);
    st = gsink_backward(mg, 0);
    ck_assert_msg(st == GSINK_OK, "backward: %s", gsink_model_errmsg(mg));
    /* the backward wrote the logit gradients over the logits; reading them
     * recomputes the forward's LM-head product on the device: bitwise */
    ck_assert_int_eq(gsink_get_logits(mg, lg1, nlog), GSINK_OK);
    ck_assert(memcmp(lg0, lg1, sizeof(float) * nlog) == 0);
    free(lg0);
    free(lg1);
    /* every site's activations and gradients, top layer first (the
     * recomputed sites are rebuilt per layer on the device) */
    {
        int wmax = cfg.d_model; /* the widest site */
        if (cfg.d_ff > wmax) wmax = cfg.d_ff;
        if (cfg.n_heads * cfg.d_head > wmax) wmax = cfg.n_heads * cfg.d_head;
        const size_t big = (size_t)B * T * (size_t)wmax;
        float *xc = malloc(sizeof(float) * big), *xg = malloc(sizeof(float) * big);
        char what[96];
        for (int grad = 0; grad < 2; grad++)
            for (int l = cfg.n_layers - 1; l >= 0; l--)
                for (int si = 0; si < GSINK_SITE_COUNT; si++) {
                    int hh = 0, hw = 0;
                    ck_assert_int_eq(gsink_site_dims(mc, (gsink_site)si, &hh, &hw), GSINK_OK);
                    const size_t n = (size_t)B * T * (size_t)(hh * hw);
                    gsink_status (*get)(gsink_model *, int, gsink_site, float *, size_t) =
                        grad ? gsink_get_gradient : gsink_get_activation;
                    ck_assert_int_eq(get(mc, l, (gsink_site)si, xc, n), GSINK_OK);
                    ck_assert_msg(get(mg, l, (gsink_site)si, xg, n) == GSINK_OK, "%s", gsink_model_errmsg(mg));
                    float mx = 0;
                    for (size_t j = 0; j < n; j++) mx = fmaxf(mx, fabsf(xc[j]));
                    snprintf(what, sizeof what, "%s of %s, layer %d", grad ? "gradient" : "activation",
                             gsink_site_name((gsink_site)si), l);
                    compare_host(xc, xg, n, 1e-3, 1e-4 * mx + 1e-9, what);
                }
        free(xc);
        free(xg);
    }

    size_t np = 0;
    ck_assert_int_eq(gsink_param_count(mc, &np), GSINK_OK);
    for (size_t i = 0; i < np; i++) {
        const char *name;
        float *gc, *gg;
        size_t n = param_grads(mc, mg, i, &name, &gc, &gg);
        float mx = 0;
        for (size_t j = 0; j < n; j++) mx = fmaxf(mx, fabsf(gc[j]));
        compare_host(gc, gg, n, 1e-3, 1e-4 * mx + 1e-9, name);
        free(gc);
        free(gg);
    }
    compare_column_stats(mc, mg, T, 2e-4, 2e-5, "(after backward)");
    if (mode == GSINK_VSCALE_FULL) {
        size_t nt = 0;
        ck_assert_int_eq(gsink_vscale_theta_count(mc, &nt), GSINK_OK);
        float *a = malloc(sizeof(float) * nt), *b = malloc(sizeof(float) * nt);
        ck_assert_int_eq(gsink_vscale_get_theta_grad(mc, a, nt), GSINK_OK);
        ck_assert_int_eq(gsink_vscale_get_theta_grad(mg, b, nt), GSINK_OK);
        float mx = 0;
        for (size_t j = 0; j < nt; j++) mx = fmaxf(mx, fabsf(a[j]));
        compare_host(a, b, nt, 1e-3, 1e-4 * mx + 1e-9, "theta grad");
        free(a);
        free(b);
    }

    /* a few optimizer steps keep the two models together */
    gsink_optimizer *oc = NULL, *og = NULL;
    gsink_optimizer_options oo;
    gsink_optimizer_options_init(&oo);
    ck_assert_int_eq(gsink_optimizer_create(mc, &oo, &oc), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_create(mg, &oo, &og), GSINK_OK);
    for (int step = 0; step < 3; step++) {
        float nc = 0, ng = 0;
        ck_assert_int_eq(gsink_optimizer_step(oc, &nc), GSINK_OK);
        st = gsink_optimizer_step(og, &ng);
        ck_assert_msg(st == GSINK_OK, "optimizer step: %s", gsink_optimizer_errmsg(og));
        ck_assert_msg(tu_close(nc, ng, 1e-4, 0), "grad norm cpu %g gpu %g", nc, ng);
        ck_assert_int_eq(gsink_forward(mc, tok, tgt, B, T, &lc), GSINK_OK);
        ck_assert_int_eq(gsink_forward(mg, tok, tgt, B, T, &lg), GSINK_OK);
        ck_assert_msg(tu_close(lc, lg, 1e-4, 0), "loss after step %d: cpu %.8g gpu %.8g", step, lc, lg);
        ck_assert_int_eq(gsink_backward(mc, 0), GSINK_OK);
        ck_assert_int_eq(gsink_backward(mg, 0), GSINK_OK);
    }
    gsink_optimizer_free(oc);
    gsink_optimizer_free(og);
    gsink_model_free(mc);
    gsink_model_free(mg);
}

START_TEST(test_model_parity)
{
    model_case(0, GSINK_VSCALE_OFF);
    model_case(0, GSINK_VSCALE_FULL);
    model_case(1, GSINK_VSCALE_FULL);
    model_case(0, GSINK_VSCALE_BACKWARD_ONLY);
}
END_TEST

/* 16-bit weight storage: the whole model (and its fp32 masters in training)
 * on the device against the CPU with the same storage. */
static void precision_case(int precision);

START_TEST(test_model_weights)
{
    model_wdtype = GSINK_WEIGHTS_BF16;
    model_case(0, GSINK_VSCALE_FULL);
    if (gpu_is_cuda) precision_case(GSINK_PRECISION_BF16); /* bf16 weights straight to cuBLAS */
    model_wdtype = GSINK_WEIGHTS_FP16;
    model_case(0, GSINK_VSCALE_OFF);
    if (gpu_is_cuda) precision_case(GSINK_PRECISION_TF32);
    model_wdtype = GSINK_WEIGHTS_FP32;
}
END_TEST

/* The public precision option end to end: a CUDA model created with
 * GSINK_PRECISION_TF32 or _BF16 against the exact CPU model. Loss, every
 * parameter gradient (relative L2 error) and the column statistics must stay
 * within the precision's bound, and BF16 must really round (its gradients
 * differ from the exact ones). Bounds: unit roundoff u = 2^-11 (TF32) or
 * 2^-8 (BF16) per input; a product loses about 2u, and the micro model's few
 * layers amplify that by a small factor, so loss 8u, gradients 16u relative
 * L2, statistics rtol 16u plus atol 2u. */
static double l2_rel(const float *ref, const float *x, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)x[i] - ref[i]) * ((double)x[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

static void precision_case(int precision)
{
    const double u = precision == GSINK_PRECISION_BF16 ? 0x1p-8 : 0x1p-11;
    gsink_config cfg;
    ck_assert_int_eq(gsink_config_preset("micro", &cfg), GSINK_OK);
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.seed = 99;
    o.n_threads = 1;
    o.weight_dtype = model_wdtype; /* both models: the CPU's is exact with the same weights */
    gsink_model *mc = NULL, *mg = NULL;
    ck_assert_int_eq(gsink_model_create(&cfg, &o, &mc), GSINK_OK);
    o.device = GSINK_DEVICE_CUDA;
    o.precision = precision;
    gsink_status st = gsink_model_create(&cfg, &o, &mg);
    ck_assert_msg(st == GSINK_OK, "create on CUDA: %s", gsink_last_error());
    char desc[256];
    mg->be->iface->describe(mg->be, desc, sizeof desc);
    ck_assert_msg(strstr(desc, precision == GSINK_PRECISION_BF16 ? "bf16" : "tf32"), "describe: %s", desc);

    enum { B = 2, T = 48 };
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 29 + 3) % cfg.vocab_size;
        tgt[i] = (i * 41 + 7) % cfg.vocab_size;
    }
    float lc = 0, lg = 0;
    ck_assert_int_eq(gsink_forward(mc, tok, tgt, B, T, &lc), GSINK_OK);
    st = gsink_forward(mg, tok, tgt, B, T, &lg);
    ck_assert_msg(st == GSINK_OK, "forward: %s", gsink_model_errmsg(mg));
    ck_assert_msg(fabs((double)lg - lc) <= 8 * u * fabs((double)lc), "loss cpu %.8g gpu %.8g (u %g)", lc, lg, u);
    ck_assert_int_eq(gsink_backward(mc, 0), GSINK_OK);
    st = gsink_backward(mg, 0);
    ck_assert_msg(st == GSINK_OK, "backward: %s", gsink_model_errmsg(mg));

    size_t np = 0;
    double worst = 0;
    ck_assert_int_eq(gsink_param_count(mc, &np), GSINK_OK);
    for (size_t i = 0; i < np; i++) {
        const char *name;
        float *gc, *gg;
        size_t n = param_grads(mc, mg, i, &name, &gc, &gg);
        double e = l2_rel(gc, gg, n);
        ck_assert_msg(e <= 16 * u, "%s: relative L2 error %.3g > %.3g", name, e, 16 * u);
        if (e > worst) worst = e;
        free(gc);
        free(gg);
    }
    if (precision == GSINK_PRECISION_BF16) ck_assert_msg(worst > 0, "BF16 gradients are exact: no rounding happened");
    compare_column_stats(mc, mg, T, 16 * u, 2 * u, "");
    gsink_model_free(mc);
    gsink_model_free(mg);
}

START_TEST(test_model_precision)
{
    if (!gpu_is_cuda) return;
    precision_case(GSINK_PRECISION_TF32);
    precision_case(GSINK_PRECISION_BF16);
}
END_TEST

/* Device memory of a full step (forward, backward, every diagnostic) on a
 * CUDA model, above the freshly created model's: linear in T, so no T x T
 * buffer (memory a + b T with a >= 0 gives A(4T) <= 4 A(T)). */
static uint64_t cuda_step_peak(int T)
{
    gsink_config cfg;
    ck_assert_int_eq(gsink_config_preset("micro", &cfg), GSINK_OK);
    cfg.max_seq_len = 256;
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.device = GSINK_DEVICE_CUDA;
    gsink_model *m = NULL;
    ck_assert_msg(gsink_model_create(&cfg, &o, &m) == GSINK_OK, "create on CUDA: %s", gsink_last_error());
    uint64_t base = 0, peak = 0;
    ck_assert_int_eq(gsink_model_memory(m, &base, NULL, GSINK_MEMORY_RESET_PEAK), GSINK_OK);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)T);
    ck_assert_ptr_nonnull(tok);
    for (int i = 0; i < T; i++) tok[i] = (i * 13 + 1) % cfg.vocab_size;
    ck_assert_int_eq(gsink_forward(m, tok, tok, 1, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    char *js = NULL;
    ck_assert_msg(gsink_report_json(m, NULL, &js) == GSINK_OK, "report: %s", gsink_model_errmsg(m));
    gsink_free(js);
    ck_assert_int_eq(gsink_model_memory(m, NULL, &peak, 0), GSINK_OK);
    free(tok);
    gsink_model_free(m);
    return peak - base;
}

START_TEST(test_model_memory_linear)
{
    if (!gpu_is_cuda) return;
    uint64_t a1 = cuda_step_peak(64), a4 = cuda_step_peak(256);
    ck_assert_msg(a4 <= 4 * a1 && a4 > 2 * a1, "device peak %llu bytes at T=64, %llu at T=256",
                  (unsigned long long)a1, (unsigned long long)a4);
}
END_TEST

/* The streaming analysis on the device: a model that shares its unread site
 * activations across layers and writes dlogits over the logits
 * (GSINK_MODEL_DISCARD_SITE_ACTIVATIONS) reports exactly what one that keeps
 * them does, and holds less. */
START_TEST(test_model_discard_site_activations)
{
    gsink_config cfg;
    gsink_config_init(&cfg);
    ck_assert_int_eq(gsink_config_preset("micro", &cfg), GSINK_OK);
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.d_model = 32;
    cfg.d_head = 8;
    const int NS = 4, T = 24;
    int32_t tok[96];
    for (int i = 0; i < NS * T; i++) tok[i] = (i * 37 + 11) % cfg.vocab_size;
    gsink_diag_options d;
    gsink_diag_options_init(&d);
    d.sink_window = 8;
    char *json[2] = {NULL, NULL};
    uint64_t peak[2];
    for (int v = 0; v < 2; v++) {
        gsink_model_options o;
        gsink_model_options_init(&o);
        o.seed = 99;
        o.n_threads = 1;
        o.device = gpu_is_cuda ? GSINK_DEVICE_CUDA : GSINK_DEVICE_CPU;
        o.flags = GSINK_MODEL_ANALYSIS | GSINK_MODEL_DISCARD_SITE_GRADS | (v ? GSINK_MODEL_DISCARD_SITE_ACTIVATIONS : 0);
        gsink_model *m = NULL;
        ck_assert_msg(gsink_model_create(&cfg, &o, &m) == GSINK_OK, "%s", gsink_last_error());
        gsink_status st = gsink_analyze_sequences(m, tok, NS, T, 2, &d, NULL, NULL, &json[v]);
        ck_assert_msg(st == GSINK_OK, "analysis: %s", gsink_model_errmsg(m));
        ck_assert_int_eq(gsink_model_memory(m, NULL, &peak[v], 0), GSINK_OK);
        gsink_model_free(m);
    }
    ck_assert_str_eq(json[0], json[1]);
    ck_assert_uint_lt(peak[1], peak[0]);
    gsink_free(json[0]);
    gsink_free(json[1]);
}
END_TEST

/* ------------------------------------------------------------------------ */

static TCase *add(Suite *s, const char *name, const TTest *t)
{
    TCase *tc = tcase_create(name); /* one case per test: CK_RUN_CASE=name runs one */
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, t);
    suite_add_tcase(s, tc);
    return tc;
}

/* Back to exact FP32 math after a test that switched to TF32, also when the
 * test failed half-way (checked teardowns run then too). */
static void math_fp32(void)
{
    if (gpu_is_cuda) gsink__cuda_set_math(gpu, GSINK_CUDA_MATH_FP32);
}

static Suite *cuda_suite(void)
{
    Suite *s = suite_create("cuda");
    add(s, "describe", test_describe);
    add(s, "gemm", test_gemm);
    add(s, "gemm_tf32", test_gemm_tf32);
    tcase_add_checked_fixture(add(s, "gemm_bf16", test_gemm_bf16), NULL, math_fp32);
    add(s, "embedding", test_embedding);
    add(s, "weights_convert", test_weights_convert);
    add(s, "weights_embedding_gemm", test_weights_embedding_gemm);
    tcase_add_checked_fixture(add(s, "weights_gemm_bf16", test_weights_gemm_bf16), NULL, math_fp32);
    add(s, "rmsnorm", test_rmsnorm);
    add(s, "rope", test_rope);
    add(s, "swiglu", test_swiglu);
    add(s, "xent", test_xent);
    add(s, "model_discard_site_activations", test_model_discard_site_activations);
    add(s, "elementwise_reductions", test_elementwise_reductions);
    add(s, "fold", test_fold);
    add(s, "adamw", test_adamw);
    add(s, "vscale", test_vscale);
    add(s, "attention", test_attention);
    tcase_add_checked_fixture(add(s, "attention_tf32", test_attention_tf32), NULL, math_fp32);
    tcase_add_checked_fixture(add(s, "attention_bf16", test_attention_bf16), NULL, math_fp32);
    add(s, "attention_bad_shape", test_attention_bad_shape);
    /* It fails device allocations on purpose: the sanitizer runs of
     * tools/gpu-session.sh leave it out (CK_EXCLUDE_TAGS) and check it alone
     * with API-error reporting off. */
    tcase_set_tags(add(s, "out_of_memory", test_out_of_memory), "deliberate_failure");
    add(s, "model_parity", test_model_parity);
    add(s, "model_weights", test_model_weights);
    add(s, "model_precision", test_model_precision);
    add(s, "model_memory_linear", test_model_memory_linear);
    return s;
}

int main(void)
{
    const char *self = getenv("GSINK_CUDA_TEST_AGAINST_CPU");
    int against_cpu = self && self[0] == '1';
    if (!against_cpu) {
        int n = gsink_cuda_device_count();
        if (n <= 0) {
            char why[512];
            gsink_cuda_describe(0, why, sizeof why);
            fprintf(stderr, "SKIP: no usable CUDA device, the CUDA suite did not run (%s)\n", why);
            return 77;
        }
        if (gsink_cuda_backend_create(0, &gpu) != GSINK_OK) {
            fprintf(stderr, "FAIL: CUDA device present but the backend failed: %s\n", gsink_last_error());
            return 1;
        }
        gpu_is_cuda = 1;
        char d[512];
        gpu->iface->describe(gpu, d, sizeof d);
        fprintf(stderr, "CUDA suite on %s\n", d);
    } else {
        if (gsink_cpu_backend_create(1, &gpu) != GSINK_OK) return 1;
        fprintf(stderr, "harness self-check: CPU backend against CPU backend\n");
    }
    if (gsink_cpu_backend_create(1, &cpu) != GSINK_OK) return 1;

    int failed = tu_run_suite(cuda_suite(), 0);
    gpu->iface->destroy(gpu);
    cpu->iface->destroy(cpu);
    return failed ? 1 : 0;
}
