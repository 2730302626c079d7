/*
 * test_ops_api.c - the embedding operations (gsink_ops_*) on a CUDA device
 * with device pointers, against the same operations on the CPU: attention
 * forward / backward / statistics (GQA, per-query-head values, softmax
 * scale, odd lengths) and V-scale in every mode, on the handle's own stream
 * and on a borrowed one. Runs in the cuda suite (a real GPU; exit 77 without
 * one) and in cuda-emu (the emulated module, where a borrowed stream is any
 * non-NULL pointer). The buffers come from the handle's backend
 * (cudaMalloc), as a caller's would from its own allocator.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "internal.h"

static gsink_ops *gpu, *cpu;
static int emulated;

/* A device copy of a host array (NULL host: zeroed). */
static float *dev(const float *host, size_t n)
{
    gsink_backend *be = gsink__ops_backend(gpu);
    void *p = NULL;
    ck_assert_int_eq(be->iface->alloc(be, n * sizeof(float), &p), GSINK_OK);
    if (host)
        ck_assert_int_eq(be->iface->upload(be, p, host, n * sizeof(float)), GSINK_OK);
    else
        ck_assert_int_eq(be->iface->zero(be, p, n * sizeof(float)), GSINK_OK);
    return p;
}

static void down(float *host, const float *d, size_t n)
{
    gsink_backend *be = gsink__ops_backend(gpu);
    ck_assert_int_eq(be->iface->download(be, host, d, n * sizeof(float)), GSINK_OK);
}

static void dfree(void *p)
{
    gsink_backend *be = gsink__ops_backend(gpu);
    be->iface->free(be, p);
}

/* Downloads d and compares it with the CPU result. */
static void same(const float *d, const float *ref, size_t n, const char *what)
{
    float *h = malloc(n * sizeof(float));
    down(h, d, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(tu_close(h[i], ref[i], 2e-5, 2e-6), "%s[%zu]: cuda %.9g, cpu %.9g", what, i,
                      (double)h[i], (double)ref[i]);
    free(h);
}

static void run_attention(int NV, float scale, int T, int dh, int borrowed)
{
    gsink_attn_desc ad;
    gsink_attn_desc_init(&ad);
    ad.batch = 2;
    ad.seq = T;
    ad.n_heads = 4;
    ad.n_kv_heads = 2;
    ad.n_v_heads = NV;
    ad.d_head = dh;
    ad.softmax_scale = scale;
    ad.sink_window = 3;
    const int B = ad.batch, H = ad.n_heads, KV = ad.n_kv_heads;
    const size_t nq = (size_t)B * T * H * dh, nk = (size_t)B * T * KV * dh, nv = (size_t)B * T * NV * dh,
                 nst = (size_t)B * H * T;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nv * 4), *dy = malloc(nq * 4);
    tu_fill(q, nq, 1, 1.5f);
    tu_fill(k, nk, 2, 1.5f);
    tu_fill(v, nv, 3, 1.0f);
    tu_fill(dy, nq, 4, 1.0f);
    /* CPU reference */
    float *y = calloc(nq, 4), *lse = calloc(nst, 4), *m = calloc(nst, 4), *s2 = calloc(nst, 4),
          *w = calloc(nst, 4), *dq = calloc(nq, 4), *dk = calloc(nk, 4), *dv = calloc(nv, 4),
          *mb = calloc(nst, 4), *wb = calloc(nst, 4);
    ck_assert_int_eq(gsink_ops_attention_forward(cpu, &ad, q, k, v, y, lse, m, s2, w), GSINK_OK);
    ck_assert_int_eq(gsink_ops_attention_backward(cpu, &ad, q, k, v, y, lse, dy, dq, dk, dv, mb, NULL, wb),
                     GSINK_OK);
    /* CUDA */
    float *Q = dev(q, nq), *K = dev(k, nk), *V = dev(v, nv), *DY = dev(dy, nq), *Y = dev(NULL, nq),
          *L = dev(NULL, nst), *M = dev(NULL, nst), *S = dev(NULL, nst), *W = dev(NULL, nst),
          *DQ = dev(NULL, nq), *DK = dev(NULL, nk), *DV = dev(NULL, nv), *MB = dev(NULL, nst),
          *WB = dev(NULL, nst), *M2 = dev(NULL, nst);
    if (borrowed) ck_assert_int_eq(gsink_ops_set_stream(gpu, (void *)0x5eed), GSINK_OK);
    ck_assert_int_eq(gsink_ops_attention_forward(gpu, &ad, Q, K, V, Y, L, M, S, W), GSINK_OK);
    ck_assert_int_eq(gsink_ops_attention_backward(gpu, &ad, Q, K, V, Y, L, DY, DQ, DK, DV, MB, NULL, WB),
                     GSINK_OK);
    ck_assert_int_eq(gsink_ops_attention_stats(gpu, &ad, Q, K, L, M2, NULL, NULL), GSINK_OK);
    if (borrowed) ck_assert_int_eq(gsink_ops_set_stream(gpu, NULL), GSINK_OK); /* finishes the work */
    same(Y, y, nq, "out");
    same(L, lse, nst, "lse");
    same(M, m, nst, "col_mass");
    same(S, s2, nst, "col_sq");
    same(W, w, nst, "col_win");
    same(DQ, dq, nq, "dq");
    same(DK, dk, nk, "dk");
    same(DV, dv, nv, "dv");
    same(MB, mb, nst, "col_mass (backward)");
    same(WB, wb, nst, "col_win (backward)");
    same(M2, m, nst, "col_mass (stats)");
    float *all[] = {Q, K, V, DY, Y, L, M, S, W, DQ, DK, DV, MB, WB, M2};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) dfree(all[i]);
    free(q); free(k); free(v); free(dy); free(y); free(lse); free(m); free(s2); free(w);
    free(dq); free(dk); free(dv); free(mb); free(wb);
}

START_TEST(test_attention_cuda_matches_cpu)
{
    run_attention(2, 0.0f, 20, 16, 0);
    run_attention(4, 0.6f, 33, 40, 0);
}
END_TEST

START_TEST(test_attention_cuda_borrowed_stream)
{
    if (!emulated) return; /* a real stream needs the CUDA runtime in the test */
    run_attention(4, 0.0f, 17, 8, 1);
}
END_TEST

START_TEST(test_vscale_cuda_matches_cpu)
{
    for (int mode = 0; mode < 3; mode++)
        for (int rep = 1; rep <= 2; rep++) {
            gsink_vscale_desc vd;
            gsink_vscale_desc_init(&vd);
            vd.mode = mode;
            vd.n_rows = 37;
            vd.heads_in = 2;
            vd.heads_out = 2 * rep;
            vd.d_head = 24;
            vd.d_model = 64;
            vd.sigma = 0.1f;
            const size_t nin = (size_t)vd.n_rows * vd.heads_in * vd.d_head,
                         nout = (size_t)vd.n_rows * vd.heads_out * vd.d_head;
            float *v = malloc(nin * 4), *g = malloc(nout * 4), th[4], *o = calloc(nout, 4),
                  *dv = calloc(nin, 4), dt[4] = {0.5f, 0.5f, 0.5f, 0.5f};
            tu_fill(v, nin, 5 + (uint64_t)mode, 1.0f);
            tu_fill(g, nout, 6, 1.0f);
            tu_fill(th, 4, 7, 1.0f);
            ck_assert_int_eq(gsink_ops_vscale_forward(cpu, &vd, v, th, o), GSINK_OK);
            ck_assert_int_eq(gsink_ops_vscale_backward(cpu, &vd, v, th, g, dv, dt), GSINK_OK);
            float *V = dev(v, nin), *G = dev(g, nout), *TH = dev(th, 4), *O = dev(NULL, nout),
                  *DV = dev(NULL, nin), *DT = dev(NULL, 4);
            float half[4] = {0.5f, 0.5f, 0.5f, 0.5f};
            gsink_backend *be = gsink__ops_backend(gpu);
            ck_assert_int_eq(be->iface->upload(be, DT, half, sizeof half), GSINK_OK);
            ck_assert_int_eq(gsink_ops_vscale_forward(gpu, &vd, V, TH, O), GSINK_OK);
            ck_assert_int_eq(gsink_ops_vscale_backward(gpu, &vd, V, TH, G, DV, DT), GSINK_OK);
            same(O, o, nout, "v_scaled");
            same(DV, dv, nin, "dv");
            float hdt[4];
            down(hdt, DT, 4);
            for (int j = 0; j < vd.heads_out; j++)
                ck_assert_msg(tu_close(hdt[j], dt[j], 1e-4, 1e-6), "dtheta[%d]: cuda %g, cpu %g", j,
                              (double)hdt[j], (double)dt[j]);
            dfree(V); dfree(G); dfree(TH); dfree(O); dfree(DV); dfree(DT);
            free(v); free(g); free(o); free(dv);
        }
}
END_TEST

/* Downloads d and holds it to |d - ref| <= rel (|ref| + max|ref|) + floor
 * (the tensor-core bounds of test_cuda_ops.c); returns whether any element
 * differs from ref at all. */
static int close_scaled(const float *d, const float *ref, size_t n, double rel, double floor_, const char *what)
{
    float *h = malloc(n * sizeof(float));
    down(h, d, n);
    double mx = 0;
    int differs = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)ref[i]));
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(fabs((double)h[i] - ref[i]) <= rel * (fabs((double)ref[i]) + mx) + floor_,
                      "%s[%zu]: cuda %.9g, cpu %.9g", what, i, (double)h[i], (double)ref[i]);
        differs |= h[i] != ref[i];
    }
    free(h);
    return differs;
}

/* gsink_ops_options.precision: TF32 and BF16 run the tensor-core kernels
 * (results within their unit-roundoff bounds of the exact CPU result, and not
 * equal to it), the CPU refuses them, unknown values are invalid. */
START_TEST(test_attention_precision)
{
    static const struct { int prec; double rel, floor_; } P[] = {
        {GSINK_PRECISION_TF32, 2e-3, 1e-4}, {GSINK_PRECISION_BF16, 0x1p-6, 0x1p-8}};
    gsink_attn_desc ad;
    gsink_attn_desc_init(&ad);
    ad.batch = 2;
    ad.seq = 70;
    ad.n_heads = 4;
    ad.n_kv_heads = ad.n_v_heads = 2;
    ad.d_head = 32;
    ad.sink_window = 5;
    const size_t nq = 2 * 70 * 4 * 32, nk = 2 * 70 * 2 * 32, nst = 2 * 4 * 70;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *dy = malloc(nq * 4);
    tu_fill(q, nq, 11, 1.5f);
    tu_fill(k, nk, 12, 1.5f);
    tu_fill(v, nk, 13, 1.0f);
    tu_fill(dy, nq, 14, 1.0f);
    float *y = calloc(nq, 4), *lse = calloc(nst, 4), *m = calloc(nst, 4), *dq = calloc(nq, 4), *dk = calloc(nk, 4),
          *dv = calloc(nk, 4), *mb = calloc(nst, 4);
    ck_assert_int_eq(gsink_ops_attention_forward(cpu, &ad, q, k, v, y, lse, NULL, NULL, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_ops_attention_backward(cpu, &ad, q, k, v, y, lse, dy, dq, dk, dv, mb, NULL, NULL),
                     GSINK_OK);
    (void)m;
    for (size_t pi = 0; pi < 2; pi++) {
        gsink_ops_options oo;
        gsink_ops_options_init(&oo);
        oo.device = GSINK_DEVICE_CUDA;
        oo.precision = P[pi].prec;
        gsink_ops *g = NULL;
        ck_assert_msg(gsink_ops_create(&oo, &g) == GSINK_OK, "%s", gsink_last_error());
        gsink_ops *keep = gpu;
        gpu = g; /* dev/down/dfree allocate on this handle's backend */
        float *Q = dev(q, nq), *K = dev(k, nk), *V = dev(v, nk), *DY = dev(dy, nq), *Y = dev(NULL, nq),
              *L = dev(NULL, nst), *DQ = dev(NULL, nq), *DK = dev(NULL, nk), *DV = dev(NULL, nk), *MB = dev(NULL, nst);
        ck_assert_int_eq(gsink_ops_attention_forward(g, &ad, Q, K, V, Y, L, NULL, NULL, NULL), GSINK_OK);
        ck_assert_int_eq(gsink_ops_attention_backward(g, &ad, Q, K, V, Y, L, DY, DQ, DK, DV, MB, NULL, NULL),
                         GSINK_OK);
        int differs = close_scaled(Y, y, nq, P[pi].rel, P[pi].floor_, "out");
        close_scaled(DQ, dq, nq, P[pi].rel, P[pi].floor_, "dq");
        close_scaled(DK, dk, nk, P[pi].rel, P[pi].floor_, "dk");
        differs |= close_scaled(DV, dv, nk, P[pi].rel, P[pi].floor_, "dv");
        close_scaled(MB, mb, nst, P[pi].rel, P[pi].floor_, "col_mass (backward)");
        ck_assert_msg(differs, "precision %d gave the exact fp32 results: the tensor-core kernels did not run",
                      P[pi].prec);
        float *all[] = {Q, K, V, DY, Y, L, DQ, DK, DV, MB};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) dfree(all[i]);
        gpu = keep;
        gsink_ops_free(g);
    }
    gsink_ops_options oo;
    gsink_ops_options_init(&oo);
    oo.precision = GSINK_PRECISION_BF16; /* on the CPU */
    gsink_ops *none = NULL;
    ck_assert_int_eq(gsink_ops_create(&oo, &none), GSINK_ERR_UNSUPPORTED);
    ck_assert_ptr_null(none);
    ck_assert(strstr(gsink_last_error(), "CUDA") != NULL);
    oo.device = GSINK_DEVICE_CUDA;
    oo.precision = 7;
    ck_assert_int_eq(gsink_ops_create(&oo, &none), GSINK_ERR_INVALID_ARGUMENT);
    free(q); free(k); free(v); free(dy); free(y); free(lse); free(m); free(dq); free(dk); free(dv); free(mb);
}
END_TEST

START_TEST(test_cuda_bad_arguments)
{
    gsink_attn_desc ad;
    gsink_attn_desc_init(&ad);
    ad.batch = ad.seq = ad.n_heads = ad.n_kv_heads = ad.n_v_heads = ad.d_head = 1;
    ad.layout = 3;
    float *x = dev(NULL, 8);
    ck_assert_int_eq(gsink_ops_attention_forward(gpu, &ad, x, x, x, x, x, NULL, NULL, NULL),
                     GSINK_ERR_UNSUPPORTED);
    ck_assert(strstr(gsink_ops_errmsg(gpu), "layout") != NULL);
    dfree(x);
    gsink_ops_options oo;
    gsink_ops_options_init(&oo);
    oo.device = GSINK_DEVICE_CUDA;
    oo.device_index = 99;
    gsink_ops *none = NULL;
    ck_assert_int_ne(gsink_ops_create(&oo, &none), GSINK_OK);
    ck_assert_ptr_null(none);
}
END_TEST

int main(void)
{
    int n = gsink_cuda_device_count();
    if (n <= 0) {
        char why[512];
        gsink_cuda_describe(0, why, sizeof why);
        fprintf(stderr, "SKIP: no usable CUDA device, the ops API CUDA tests did not run (%s)\n", why);
        return 77;
    }
    const char *mod = getenv("GSINK_CUDA_MODULE");
    emulated = mod && strstr(mod, "emu") != NULL;
    gsink_ops_options oo;
    gsink_ops_options_init(&oo);
    oo.device = GSINK_DEVICE_CUDA;
    if (gsink_ops_create(&oo, &gpu) != GSINK_OK) {
        fprintf(stderr, "FAIL: CUDA device present but gsink_ops_create failed: %s\n", gsink_last_error());
        return 1;
    }
    oo.device = GSINK_DEVICE_CPU;
    oo.n_threads = 1;
    if (gsink_ops_create(&oo, &cpu) != GSINK_OK) return 1;
    Suite *s = suite_create("ops_api_cuda");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_attention_cuda_matches_cpu);
    tcase_add_test(tc, test_attention_cuda_borrowed_stream);
    tcase_add_test(tc, test_vscale_cuda_matches_cpu);
    tcase_add_test(tc, test_cuda_bad_arguments);
    tcase_add_test(tc, test_attention_precision);
    suite_add_tcase(s, tc);
    int failed = tu_run_suite(s, 0);
    gsink_ops_free(gpu);
    gsink_ops_free(cpu);
    return failed ? 1 : 0;
}
