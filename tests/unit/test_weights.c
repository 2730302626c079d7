/*
 * test_weights.c - weights stored as bf16 or fp16 (gsink_model_options.
 * weight_dtype): the rounding of wdtype.h on edge values, a 16-bit model
 * against an fp32 model holding the same (rounded) weights (logits, loss,
 * site and parameter gradients, diagnostics), the CPU's panelled gemm_w
 * against fp32 GEMM, the exact weight memory, fp32 master weights in
 * training and optimizer save/resume, and the refusal of unknown types.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/testutil.h"
#include "internal.h"
#include "wdtype.h"

enum { B = 2, T = 20, V = 47, D = 32, L = 3, FF = 48 };

static gsink_config tiny(void)
{
    gsink_config cfg;
    gsink_config_init(&cfg);
    cfg.vocab_size = V;
    cfg.d_model = D;
    cfg.n_layers = L;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.d_head = 8;
    cfg.d_ff = FF;
    cfg.max_seq_len = 32;
    cfg.tie_embeddings = 0;
    return cfg;
}

static gsink_model *make(int wdtype, uint32_t flags, int vscale)
{
    gsink_config cfg = tiny();
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    ck_assert_int_eq(mo.weight_dtype, GSINK_WEIGHTS_FP32);
    mo.seed = 5;
    mo.n_threads = 1;
    mo.flags = flags;
    mo.weight_dtype = wdtype;
    gsink_model *m = NULL;
    ck_assert_int_eq(gsink_model_create(&cfg, &mo, &m), GSINK_OK);
    if (vscale) {
        gsink_vscale_options vo;
        gsink_vscale_options_init(&vo);
        vo.mode = GSINK_VSCALE_FULL;
        ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
    }
    return m;
}

static size_t numel_of(gsink_model *m, size_t i, const char **name, int *nd)
{
    int64_t dims[2];
    ck_assert_int_eq(gsink_param_info(m, i, name, nd, dims), GSINK_OK);
    return (size_t)dims[0] * (*nd == 2 ? (size_t)dims[1] : 1);
}

static uint32_t bits(float f) { return gsink__f32_bits(f); }

/* ---- rounding ------------------------------------------------------------ */

START_TEST(test_rounding_edges)
{
    static const struct { uint32_t in; uint16_t bf16, f16; } cases[] = {
        {0x3f800000u, 0x3f80, 0x3c00},             /* 1 */
        {0x80000000u, 0x8000, 0x8000},             /* -0 */
        {0x3f808000u, 0x3f80, 0x3c04},             /* bf16 tie to even (down) */
        {0x3f818000u, 0x3f82, 0x3c0c},             /* bf16 tie to even (up) */
        {0x3f808001u, 0x3f81, 0x3c04},             /* above the tie */
        {0x3f801000u, 0x3f80, 0x3c00},             /* 1 + 2^-11: fp16 tie to even (down) */
        {0x3f803000u, 0x3f80, 0x3c02},             /* 1 + 3 2^-11: fp16 tie to even (up) */
        {0x7f7fffffu, 0x7f80, 0x7c00},             /* FLT_MAX: both overflow to Inf */
        {0x7f7f8000u, 0x7f80, 0x7c00},             /* bf16 tie above the largest finite: Inf */
        {0x7f7f7fffu, 0x7f7f, 0x7c00},
        {0x477fe000u, 0x4780, 0x7bff},             /* 65504, fp16's largest */
        {0x477fefffu, 0x4780, 0x7bff},             /* just below 65520 */
        {0x477ff000u, 0x4780, 0x7c00},             /* 65520: fp16 Inf */
        {0xc77ff000u, 0xc780, 0xfc00},
        {0x7f800000u, 0x7f80, 0x7c00},             /* Inf */
        {0xff800000u, 0xff80, 0xfc00},             /* -Inf */
        {0x38800000u, 0x3880, 0x0400},             /* 2^-14: smallest normal half */
        {0x33800000u, 0x3380, 0x0001},             /* 2^-24: smallest subnormal half */
        {0x33000000u, 0x3300, 0x0000},             /* 2^-25: tie to even (0) */
        {0x33000001u, 0x3300, 0x0001},
        {0x33c00000u, 0x33c0, 0x0002},             /* 3 2^-25 = 1.5 units: tie to even (2) */
        {0xb3c00000u, 0xb3c0, 0x8002},
        {0x00000001u, 0x0000, 0x0000},             /* fp32 subnormals */
        {0x00008000u, 0x0000, 0x0000},             /* bf16 tie to even (0) */
        {0x00018000u, 0x0002, 0x0000},
        {0x387fe000u, 0x3880, 0x0400},             /* rounds up into the smallest normal half */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float x = gsink__bits_f32(cases[i].in);
        ck_assert_msg(gsink__f32_to_bf16(x) == cases[i].bf16, "bf16(0x%08x) = 0x%04x, want 0x%04x", cases[i].in,
                      gsink__f32_to_bf16(x), cases[i].bf16);
        ck_assert_msg(gsink__f32_to_f16(x) == cases[i].f16, "f16(0x%08x) = 0x%04x, want 0x%04x", cases[i].in,
                      gsink__f32_to_f16(x), cases[i].f16);
    }
    /* NaN: bf16 0x7fc0 whatever the sign and payload; fp16 keeps the sign */
    ck_assert_uint_eq(gsink__f32_to_bf16(gsink__bits_f32(0x7fc00000u)), 0x7fc0);
    ck_assert_uint_eq(gsink__f32_to_bf16(gsink__bits_f32(0xffffffffu)), 0x7fc0);
    ck_assert_uint_eq(gsink__f32_to_bf16(gsink__bits_f32(0x7f800001u)), 0x7fc0);
    ck_assert_uint_eq(gsink__f32_to_f16(gsink__bits_f32(0x7fc00000u)), 0x7e00);
    ck_assert_uint_eq(gsink__f32_to_f16(gsink__bits_f32(0xff800001u)), 0xfe00);
    /* Every non-NaN 16-bit value widens exactly and rounds back to itself,
     * and widening agrees with the loaders' converters. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float b = gsink__bf16_f32((uint16_t)h), f = gsink__f16_f32((uint16_t)h);
        if (!isnan(b)) ck_assert_uint_eq(gsink__f32_to_bf16(b), h);
        if (!isnan(f)) ck_assert_uint_eq(gsink__f32_to_f16(f), h);
        else ck_assert(isnan(gsink__f16_f32((uint16_t)h)));
        ck_assert_uint_eq(bits(b), (uint32_t)h << 16);
    }
    /* fp16 against double-precision rounding on a sweep of the range */
    for (uint32_t u = 0x33000000u; u < 0x477fe000u; u += 0x1357u) {
        float x = gsink__bits_f32(u);
        double ax = x, best = -1;
        uint16_t want = 0;
        for (int d = -1; d <= 1; d++) { /* nearest of the candidates around the truncation */
            int c = (int)gsink__f32_to_f16(x) + d;
            if (c < 0 || c > 0x7bff) continue;
            double v = gsink__f16_f32((uint16_t)c), err = fabs(v - ax);
            if (best < 0 || err < best || (err == best && (c & 1) == 0)) best = err, want = (uint16_t)c;
        }
        ck_assert_msg(gsink__f32_to_f16(x) == want, "f16(0x%08x)", u);
    }
}
END_TEST

/* ---- a 16-bit model equals an fp32 model with the same weights ------------ */

static void close_arrays(const float *a, const float *b, size_t n, double rtol, const char *what)
{
    double scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)b[i]));
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(tu_close(a[i], b[i], rtol, rtol * scale * 1e-2 + 1e-30), "%s[%zu]: %.9g vs %.9g", what, i,
                      (double)a[i], (double)b[i]);
}

static void check_equivalent(int wdtype, uint32_t flags)
{
    gsink_model *q = make(wdtype, flags, 1), *r = make(GSINK_WEIGHTS_FP32, flags, 1),
                *f = make(GSINK_WEIGHTS_FP32, 0, 0);
    size_t np = 0;
    ck_assert_int_eq(gsink_param_count(q, &np), GSINK_OK);
    /* q's weights: f's (the same seed) rounded to storage, matrices only; r takes them */
    for (size_t i = 0; i < np; i++) {
        const char *name;
        int nd;
        size_t n = numel_of(q, i, &name, &nd);
        float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
        ck_assert_int_eq(gsink_get_param(q, name, a, n), GSINK_OK);
        if (strstr(name, "v_scale_theta")) {
            free(a);
            free(b);
            continue;
        }
        ck_assert_int_eq(gsink_get_param(f, name, b, n), GSINK_OK);
        size_t changed = 0;
        for (size_t j = 0; j < n; j++) {
            float want = nd == 2 ? (wdtype == GSINK_WEIGHTS_BF16 ? gsink__bf16_f32(gsink__f32_to_bf16(b[j]))
                                                                  : gsink__f16_f32(gsink__f32_to_f16(b[j])))
                                 : b[j];
            ck_assert_msg(bits(a[j]) == bits(want), "%s[%zu]: stored %.9g, want %.9g", name, j, (double)a[j],
                          (double)want);
            changed += a[j] != b[j];
        }
        if (nd == 2) ck_assert_msg(changed > n / 2, "%s: rounding changed only %zu of %zu", name, changed, n);
        ck_assert_int_eq(gsink_set_param(r, name, a, n), GSINK_OK);
        free(a);
        free(b);
    }
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 13 + 2) % V;
        tgt[i] = (i * 31 + 9) % V;
    }
    float lq = 0, lr = 0;
    ck_assert_int_eq(gsink_forward(q, tok, tgt, B, T, &lq), GSINK_OK);
    ck_assert_int_eq(gsink_forward(r, tok, tgt, B, T, &lr), GSINK_OK);
    ck_assert_msg(tu_close(lq, lr, 1e-6, 0), "loss %.9g vs %.9g", lq, lr);
    size_t nl = (size_t)B * T * V;
    float *xq = malloc(nl * sizeof(float)), *xr = malloc(nl * sizeof(float));
    ck_assert_int_eq(gsink_get_logits(q, xq, nl), GSINK_OK);
    ck_assert_int_eq(gsink_get_logits(r, xr, nl), GSINK_OK);
    close_arrays(xq, xr, nl, 1e-6, "logits");
    free(xq);
    free(xr);
    ck_assert_int_eq(gsink_backward(q, 0), GSINK_OK);
    ck_assert_int_eq(gsink_backward(r, 0), GSINK_OK);
    size_t ns = (size_t)B * T * FF;
    float *gq = malloc(ns * sizeof(float)), *gr = malloc(ns * sizeof(float));
    for (int l = 0; l < L; l++)
        for (int s = 0; s < GSINK_SITE_COUNT; s++) {
            size_t k = (size_t)B * T * gsink__site_width(q, (gsink_site)s);
            char what[64];
            snprintf(what, sizeof what, "layer %d site %s", l, gsink_site_name((gsink_site)s));
            ck_assert_int_eq(gsink_get_activation(q, l, (gsink_site)s, gq, k), GSINK_OK);
            ck_assert_int_eq(gsink_get_activation(r, l, (gsink_site)s, gr, k), GSINK_OK);
            close_arrays(gq, gr, k, 1e-6, what);
            ck_assert_int_eq(gsink_get_gradient(q, l, (gsink_site)s, gq, k), GSINK_OK);
            ck_assert_int_eq(gsink_get_gradient(r, l, (gsink_site)s, gr, k), GSINK_OK);
            close_arrays(gq, gr, k, 1e-6, what);
        }
    free(gq);
    free(gr);
    if (!(flags & GSINK_MODEL_ANALYSIS))
        for (size_t i = 0; i < np; i++) {
            const char *name;
            int nd;
            size_t n = numel_of(q, i, &name, &nd);
            float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
            ck_assert_int_eq(gsink_get_param_grad(q, name, a, n), GSINK_OK);
            ck_assert_int_eq(gsink_get_param_grad(r, name, b, n), GSINK_OK);
            close_arrays(a, b, n, 1e-6, name);
            free(a);
            free(b);
        }
    /* diagnostics: gradient sink ratio, activation norms, the JSON report */
    for (int l = 0; l < L; l++) {
        float rq = 0, rr = 0, nq[T], nr[T];
        ck_assert_int_eq(gsink_gradient_sink_ratio(q, l, 0, 8, GSINK_AGG_SUM_THEN_NORM, &rq), GSINK_OK);
        ck_assert_int_eq(gsink_gradient_sink_ratio(r, l, 0, 8, GSINK_AGG_SUM_THEN_NORM, &rr), GSINK_OK);
        ck_assert_msg(tu_close(rq, rr, 1e-5, 1e-7), "layer %d ratio %.9g vs %.9g", l, rq, rr);
        ck_assert_int_eq(gsink_get_activation_norms(q, l, GSINK_SITE_RESID_OUT, -1, nq, T), GSINK_OK);
        ck_assert_int_eq(gsink_get_activation_norms(r, l, GSINK_SITE_RESID_OUT, -1, nr, T), GSINK_OK);
        close_arrays(nq, nr, T, 1e-6, "activation norms");
    }
    char *jq = NULL, *jr = NULL;
    ck_assert_int_eq(gsink_report_json(q, NULL, &jq), GSINK_OK);
    ck_assert_int_eq(gsink_report_json(r, NULL, &jr), GSINK_OK);
    ck_assert_uint_eq(strlen(jq), strlen(jr));
    gsink_free(jq);
    gsink_free(jr);
    gsink_model_free(q);
    gsink_model_free(r);
    gsink_model_free(f);
}

START_TEST(test_equivalent_bf16) { check_equivalent(GSINK_WEIGHTS_BF16, 0); }
END_TEST
START_TEST(test_equivalent_fp16) { check_equivalent(GSINK_WEIGHTS_FP16, 0); }
END_TEST
START_TEST(test_equivalent_bf16_analysis) { check_equivalent(GSINK_WEIGHTS_BF16, GSINK_MODEL_ANALYSIS); }
END_TEST

/* get_param returns the stored value exactly; set_param rounds; tied heads */
START_TEST(test_param_roundtrip)
{
    gsink_model *q = make(GSINK_WEIGHTS_BF16, 0, 0);
    const char *name = "model.layers.1.mlp.up_proj.weight";
    size_t n = (size_t)FF * D;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    tu_fill(a, n, 3, 2.0f);
    a[0] = 1.00390625f; /* 1 + 2^-8: a tie, to even (1) */
    a[1] = 1e30f;
    a[2] = -INFINITY;
    ck_assert_int_eq(gsink_set_param(q, name, a, n), GSINK_OK);
    ck_assert_int_eq(gsink_get_param(q, name, b, n), GSINK_OK);
    for (size_t i = 0; i < n; i++) ck_assert_uint_eq(bits(b[i]), bits(gsink__bf16_f32(gsink__f32_to_bf16(a[i]))));
    ck_assert(b[0] == 1.0f);
    ck_assert(isinf(b[2]) && b[2] < 0);
    /* vectors stay fp32 */
    float g[D];
    tu_fill(g, D, 4, 1.0f);
    ck_assert_int_eq(gsink_set_param(q, "model.norm.weight", g, D), GSINK_OK);
    float h[D];
    ck_assert_int_eq(gsink_get_param(q, "model.norm.weight", h, D), GSINK_OK);
    ck_assert(memcmp(g, h, sizeof g) == 0);
    free(a);
    free(b);
    gsink_model_free(q);
}
END_TEST

/* ---- CPU gemm_w over several panels -------------------------------------- */

static void check_panels(int dtype, int tb)
{
    gsink_backend *be = NULL;
    ck_assert_int_eq(gsink_cpu_backend_create(2, &be), GSINK_OK);
    /* B has more than 16 Mi elements (the panel bound): three panels */
    const int M = 3, N = tb ? 4100 : 97, K = tb ? 4100 : 173000;
    size_t nb = (size_t)N * K;
    uint16_t *b16 = malloc(nb * 2);
    float *bf = malloc(nb * sizeof(float)), *A = malloc((size_t)M * K * sizeof(float));
    float *c1 = malloc((size_t)M * N * sizeof(float)), *c2 = malloc((size_t)M * N * sizeof(float));
    tu_fill(bf, nb, 7, 1.0f);
    for (size_t i = 0; i < nb; i++) {
        gsink__wd_store(b16, dtype, i, bf[i]);
        bf[i] = gsink__wd_load(b16, dtype, i);
    }
    tu_fill(A, (size_t)M * K, 8, 1.0f);
    tu_fill(c1, (size_t)M * N, 9, 1.0f);
    memcpy(c2, c1, (size_t)M * N * sizeof(float));
    int ldb = tb ? K : N;
    ck_assert_int_eq(be->iface->gemm(be, 0, tb, M, N, K, 0.5f, A, K, bf, ldb, 0.25f, c1, N), GSINK_OK);
    ck_assert_int_eq(be->iface->gemm_w(be, 0, tb, M, N, K, 0.5f, A, K, b16, dtype, ldb, 0.25f, c2, N), GSINK_OK);
    close_arrays(c2, c1, (size_t)M * N, 2e-5, "gemm_w");
    size_t live = 0;
    be->iface->memory(be, &live, NULL, 0);
    ck_assert_uint_le(live, ((size_t)64 << 20) + ((size_t)K * sizeof(float))); /* the panel, bounded */
    be->iface->destroy(be);
    free(b16);
    free(bf);
    free(A);
    free(c1);
    free(c2);
}

START_TEST(test_gemm_panels)
{
    check_panels(GSINK_WD_BF16, 1);
    check_panels(GSINK_WD_F16, 0);
}
END_TEST

/* ---- memory ---------------------------------------------------------------- */

START_TEST(test_memory_formula)
{
    uint64_t bytes[3];
    size_t pbytes[3] = {0, 0, 0}, nfloats = 0;
    for (int w = 0; w < 3; w++) {
        gsink_model *m = make(w, GSINK_MODEL_ANALYSIS, 0);
        ck_assert_int_eq(gsink_model_memory(m, &bytes[w], NULL, 0), GSINK_OK);
        size_t np = 0;
        ck_assert_int_eq(gsink_param_count(m, &np), GSINK_OK);
        for (size_t i = 0; i < np; i++) {
            const char *name;
            int nd;
            size_t n = numel_of(m, i, &name, &nd);
            pbytes[w] += nd == 2 && w ? (n * 2 + 3) / 4 * 4 : n * 4;
            if (w == 0) nfloats += n;
        }
        ck_assert_uint_eq(m->param_bytes, pbytes[w]);
        gsink_model_free(m);
    }
    ck_assert_uint_eq(pbytes[0], nfloats * 4);
    /* the backend rounds each allocation to 64 bytes; everything else is equal */
    for (int w = 1; w < 3; w++)
        ck_assert_uint_eq(bytes[0] - bytes[w], (pbytes[0] + 63) / 64 * 64 - (pbytes[w] + 63) / 64 * 64);
    /* the matrices are nearly all of it: about half */
    ck_assert(bytes[1] < bytes[0] && (double)(bytes[0] - bytes[1]) > 0.45 * (double)pbytes[0]);
}
END_TEST

/* ---- training: fp32 masters ------------------------------------------------ */

START_TEST(test_master_weights)
{
    /* lr so small that every step is below half a bf16 ulp of the weights:
     * rounding the weights themselves would never move them; the masters do. */
    gsink_model *q = make(GSINK_WEIGHTS_BF16, 0, 0);
    const char *name = "model.layers.0.self_attn.q_proj.weight";
    size_t n = (size_t)32 * D;
    float *w0 = malloc(n * sizeof(float)), *w1 = malloc(n * sizeof(float));
    ck_assert_int_eq(gsink_get_param(q, name, w0, n), GSINK_OK);
    gsink_optimizer_options oo;
    gsink_optimizer_options_init(&oo);
    oo.lr = 1e-6f;
    oo.min_lr = 1e-6f;
    oo.weight_decay = 0.0f;
    gsink_optimizer *opt = NULL;
    ck_assert_int_eq(gsink_optimizer_create(q, &oo, &opt), GSINK_OK);
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 13 + 2) % V;
        tgt[i] = (i * 31 + 9) % V;
    }
    for (int step = 0; step < 100; step++) {
        ck_assert_int_eq(gsink_forward(q, tok, tgt, B, T, NULL), GSINK_OK);
        ck_assert_int_eq(gsink_backward(q, 0), GSINK_OK);
        ck_assert_int_eq(gsink_optimizer_step(opt, NULL), GSINK_OK);
        if (step == 0) {
            ck_assert_int_eq(gsink_get_param(q, name, w1, n), GSINK_OK);
            size_t moved = 0;
            for (size_t i = 0; i < n; i++) moved += w1[i] != w0[i];
            ck_assert_msg(moved < n / 20, "one tiny step moved %zu of %zu bf16 weights", moved, n);
        }
    }
    ck_assert_int_eq(gsink_get_param(q, name, w1, n), GSINK_OK);
    size_t moved = 0;
    for (size_t i = 0; i < n; i++) {
        moved += w1[i] != w0[i];
        ck_assert_uint_eq(bits(w1[i]) & 0xffffu, 0); /* still bf16 values */
    }
    ck_assert_msg(moved > n / 4, "100 steps moved only %zu of %zu weights", moved, n);
    gsink_optimizer_free(opt);
    gsink_model_free(q);
    free(w0);
    free(w1);
}
END_TEST

static void train_steps(gsink_model *m, gsink_optimizer *o, int k0, int k1)
{
    int32_t tok[B * T], tgt[B * T];
    for (int k = k0; k < k1; k++) {
        for (int i = 0; i < B * T; i++) {
            tok[i] = (i * 13 + 2 + 5 * k) % V;
            tgt[i] = (i * 31 + 9 + 3 * k) % V;
        }
        ck_assert_int_eq(gsink_forward(m, tok, tgt, B, T, NULL), GSINK_OK);
        ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
        ck_assert_int_eq(gsink_optimizer_step(o, NULL), GSINK_OK);
    }
}

static void same_weights(gsink_model *a, gsink_model *b)
{
    size_t np = 0;
    ck_assert_int_eq(gsink_param_count(a, &np), GSINK_OK);
    for (size_t i = 0; i < np; i++) {
        const char *name;
        int nd;
        size_t n = numel_of(a, i, &name, &nd);
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
        ck_assert_int_eq(gsink_get_param(a, name, x, n), GSINK_OK);
        ck_assert_int_eq(gsink_get_param(b, name, y, n), GSINK_OK);
        ck_assert_msg(memcmp(x, y, n * sizeof(float)) == 0, "%s differs", name);
        free(x);
        free(y);
    }
}

/* Save after 3 steps (weights in bf16, optimizer state with masters), resume
 * in a loaded model, 3 more steps: bitwise the run that never stopped. */
START_TEST(test_resume)
{
    char dir[] = "/tmp/gsink-wtest-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char wdir[300], spath[300];
    snprintf(wdir, sizeof wdir, "%s/ckpt", dir);
    snprintf(spath, sizeof spath, "%s/opt.bin", dir);
    gsink_optimizer_options oo;
    gsink_optimizer_options_init(&oo);
    oo.lr = 1e-3f;
    for (int w = GSINK_WEIGHTS_BF16; w <= GSINK_WEIGHTS_FP16; w++) {
        gsink_model *a = make(w, 0, 0);
        gsink_optimizer *oa = NULL;
        ck_assert_int_eq(gsink_optimizer_create(a, &oo, &oa), GSINK_OK);
        train_steps(a, oa, 0, 3);
        ck_assert_int_eq(gsink_model_save(a, wdir), GSINK_OK);
        ck_assert_int_eq(gsink_optimizer_save(oa, spath), GSINK_OK);
        train_steps(a, oa, 3, 6);

        gsink_model_options mo;
        gsink_model_options_init(&mo);
        mo.n_threads = 1;
        mo.weight_dtype = w;
        gsink_model *b = NULL;
        ck_assert_int_eq(gsink_model_load(wdir, &mo, &b), GSINK_OK);
        ck_assert_int_eq(b->wdtype, w);
        gsink_optimizer *ob = NULL;
        ck_assert_int_eq(gsink_optimizer_create(b, &oo, &ob), GSINK_OK);
        ck_assert_int_eq(gsink_optimizer_load(ob, spath), GSINK_OK);
        train_steps(b, ob, 3, 6);
        same_weights(a, b);

        /* the state of a 16-bit model does not load into an fp32 one */
        gsink_model *c = make(GSINK_WEIGHTS_FP32, 0, 0);
        gsink_optimizer *oc = NULL;
        ck_assert_int_eq(gsink_optimizer_create(c, &oo, &oc), GSINK_OK);
        ck_assert_int_eq(gsink_optimizer_load(oc, spath), GSINK_ERR_SHAPE_MISMATCH);
        ck_assert_ptr_nonnull(strstr(gsink_optimizer_errmsg(oc), "master"));
        gsink_optimizer_free(oc);
        gsink_model_free(c);
        gsink_optimizer_free(oa);
        gsink_optimizer_free(ob);
        gsink_model_free(a);
        gsink_model_free(b);
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_unknown_dtype)
{
    gsink_config cfg = tiny();
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.weight_dtype = 3;
    gsink_model *m = (gsink_model *)&mo;
    ck_assert_int_eq(gsink_model_create(&cfg, &mo, &m), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(gsink_last_error(), "weight_dtype 3"));
    /* an older, smaller options struct gets fp32 */
    gsink_model_options old;
    memset(&old, 0x7f, sizeof old);
    gsink_model_options_init_size(&old, offsetof(gsink_model_options, weight_dtype));
    ck_assert_uint_eq(old.size, offsetof(gsink_model_options, weight_dtype));
    old.n_threads = 1;
    ck_assert_int_eq(gsink_model_create(&cfg, &old, &m), GSINK_OK);
    ck_assert_int_eq(m->wdtype, GSINK_WD_F32);
    gsink_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("weights");
    TCase *tc = tcase_create("weights");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_rounding_edges);
    tcase_add_test(tc, test_equivalent_bf16);
    tcase_add_test(tc, test_equivalent_fp16);
    tcase_add_test(tc, test_equivalent_bf16_analysis);
    tcase_add_test(tc, test_param_roundtrip);
    tcase_add_test(tc, test_gemm_panels);
    tcase_add_test(tc, test_memory_formula);
    tcase_add_test(tc, test_master_weights);
    tcase_add_test(tc, test_resume);
    tcase_add_test(tc, test_unknown_dtype);
    suite_add_tcase(s, tc);
    return tu_run_suite(s, 1) ? EXIT_FAILURE : EXIT_SUCCESS;
}
