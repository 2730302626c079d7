/*
 * test_discard_grads.c - GSINK_MODEL_DISCARD_SITE_GRADS: a model that keeps
 * no per-layer site gradients trains exactly like one that does (bitwise
 * equal parameter and V-scale gradients, loss after AdamW steps), uses less
 * activation memory, and refuses the gradient diagnostics with
 * GSINK_ERR_UNSUPPORTED while the activation diagnostics keep working.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "internal.h"

enum { B = 2, T = 20 };

static gsink_model *make(uint32_t flags)
{
    gsink_config cfg;
    gsink_config_init(&cfg);
    cfg.vocab_size = 47;
    cfg.d_model = 32;
    cfg.n_layers = 3; /* odd: the alternating residual gradients wrap */
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.d_head = 8;
    cfg.d_ff = 48;
    cfg.max_seq_len = 32;
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.seed = 5;
    mo.n_threads = 1;
    mo.flags = flags;
    gsink_model *m = NULL;
    ck_assert_int_eq(gsink_model_create(&cfg, &mo, &m), GSINK_OK);
    gsink_vscale_options vo;
    gsink_vscale_options_init(&vo);
    vo.mode = GSINK_VSCALE_FULL;
    ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
    return m;
}

static void same_param_grads(gsink_model *a, gsink_model *b)
{
    size_t np = 0;
    ck_assert_int_eq(gsink_param_count(a, &np), GSINK_OK);
    for (size_t i = 0; i < np; i++) {
        const char *name;
        int nd;
        int64_t dims[2];
        ck_assert_int_eq(gsink_param_info(a, i, &name, &nd, dims), GSINK_OK);
        size_t n = (size_t)dims[0] * (nd == 2 ? (size_t)dims[1] : 1);
        float *ga = malloc(n * sizeof(float)), *gb = malloc(n * sizeof(float));
        ck_assert_int_eq(gsink_get_param_grad(a, name, ga, n), GSINK_OK);
        ck_assert_int_eq(gsink_get_param_grad(b, name, gb, n), GSINK_OK);
        ck_assert_msg(memcmp(ga, gb, n * sizeof(float)) == 0, "gradient of %s differs", name);
        free(ga);
        free(gb);
    }
    size_t nt = 0;
    ck_assert_int_eq(gsink_vscale_theta_count(a, &nt), GSINK_OK);
    float *ta = malloc(nt * sizeof(float)), *tb = malloc(nt * sizeof(float));
    ck_assert_int_eq(gsink_vscale_get_theta_grad(a, ta, nt), GSINK_OK);
    ck_assert_int_eq(gsink_vscale_get_theta_grad(b, tb, nt), GSINK_OK);
    ck_assert(memcmp(ta, tb, nt * sizeof(float)) == 0);
    free(ta);
    free(tb);
}

START_TEST(test_same_training)
{
    gsink_model *keep = make(0), *drop = make(GSINK_MODEL_DISCARD_SITE_GRADS);
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 13 + 2) % 47;
        tgt[i] = (i * 31 + 9) % 47;
    }
    gsink_optimizer_options oo;
    gsink_optimizer_options_init(&oo);
    gsink_optimizer *ok = NULL, *od = NULL;
    ck_assert_int_eq(gsink_optimizer_create(keep, &oo, &ok), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_create(drop, &oo, &od), GSINK_OK);
    for (int step = 0; step < 3; step++) {
        float lk = 0, ld = 0;
        ck_assert_int_eq(gsink_forward(keep, tok, tgt, B, T, &lk), GSINK_OK);
        ck_assert_int_eq(gsink_forward(drop, tok, tgt, B, T, &ld), GSINK_OK);
        ck_assert_msg(lk == ld, "step %d: loss %.9g vs %.9g", step, lk, ld);
        ck_assert_int_eq(gsink_backward(keep, 0), GSINK_OK);
        ck_assert_int_eq(gsink_backward(drop, 0), GSINK_OK);
        same_param_grads(keep, drop);
        float nk, nd;
        ck_assert_int_eq(gsink_optimizer_step(ok, &nk), GSINK_OK);
        ck_assert_int_eq(gsink_optimizer_step(od, &nd), GSINK_OK);
    }
    ck_assert_int_eq(gsink_forward(keep, tok, tgt, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_forward(drop, tok, tgt, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_backward(keep, 0), GSINK_OK);
    ck_assert_int_eq(gsink_backward(drop, 0), GSINK_OK);
    same_param_grads(keep, drop);
    /* less activation memory: one set of site-gradient buffers, two residual */
    ck_assert(drop->act_mem && keep->act_mem);
    fprintf(stderr, "activation bytes: keep %zu, discard %zu\n", keep->act_bytes, drop->act_bytes);
    ck_assert(drop->act_bytes < keep->act_bytes * 4 / 5);
    ck_assert_ptr_eq(drop->layers[1].dsite[GSINK_SITE_MLP_POST], drop->layers[0].dsite[GSINK_SITE_MLP_POST]);
    ck_assert_ptr_ne(keep->layers[1].dsite[GSINK_SITE_MLP_POST], keep->layers[0].dsite[GSINK_SITE_MLP_POST]);
    /* every model: the mlp_pre gradient is one buffer, recomputed per layer when read */
    ck_assert_ptr_eq(keep->layers[1].dsite[GSINK_SITE_MLP_PRE], keep->layers[0].dsite[GSINK_SITE_MLP_PRE]);
    ck_assert_ptr_eq(drop->dresid[3], drop->dresid[1]);
    ck_assert_ptr_ne(drop->dresid[1], drop->dresid[0]);

    /* gradient diagnostics are refused with a message; activations work */
    size_t n = (size_t)B * T * 32;
    float *buf = malloc(n * sizeof(float));
    ck_assert_int_eq(gsink_get_gradient(drop, 1, GSINK_SITE_RESID_OUT, buf, n), GSINK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(gsink_model_errmsg(drop), "DISCARD_SITE_GRADS"));
    ck_assert_int_eq(gsink_get_gradient(keep, 1, GSINK_SITE_RESID_OUT, buf, n), GSINK_OK);
    float norms[T];
    ck_assert_int_eq(gsink_get_gradient_norms(drop, 0, GSINK_SITE_V, -1, GSINK_AGG_SUM_THEN_NORM, norms, T),
                     GSINK_ERR_UNSUPPORTED);
    float r = 0;
    ck_assert_int_eq(gsink_gradient_sink_ratio(drop, 0, 0, 8, GSINK_AGG_SUM_THEN_NORM, &r), GSINK_ERR_UNSUPPORTED);
    char *js = NULL;
    ck_assert_int_eq(gsink_report_json(drop, NULL, &js), GSINK_ERR_UNSUPPORTED);
    ck_assert_ptr_null(js);
    ck_assert_int_eq(gsink_get_activation_norms(drop, 2, GSINK_SITE_RESID_OUT, -1, norms, T), GSINK_OK);
    float sc[4];
    ck_assert_int_eq(gsink_sink_scores(drop, 2, 0, sc, 4), GSINK_ERR_OUT_OF_RANGE); /* window 64 > T */
    ck_assert_int_eq(gsink_get_activation(drop, 1, GSINK_SITE_RESID_OUT, buf, n), GSINK_OK);
    free(buf);
    gsink_optimizer_free(ok);
    gsink_optimizer_free(od);
    gsink_model_free(keep);
    gsink_model_free(drop);
}
END_TEST

/* GSINK_MODEL_ANALYSIS: no parameter-gradient buffer, bitwise the same site
 * gradients, and every call that needs parameter gradients refused by name. */
START_TEST(test_analysis)
{
    gsink_model *full = make(0), *ana = make(GSINK_MODEL_ANALYSIS);
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 13 + 2) % 47;
        tgt[i] = (i * 31 + 9) % 47;
    }
    ck_assert_ptr_null(ana->grad_mem);
    ck_assert_ptr_nonnull(full->grad_mem);
    uint64_t bf = 0, ba = 0;
    ck_assert_int_eq(gsink_model_memory(full, &bf, NULL, 0), GSINK_OK);
    ck_assert_int_eq(gsink_model_memory(ana, &ba, NULL, 0), GSINK_OK);
    ck_assert_uint_eq(bf - ba, (uint64_t)full->n_param_floats * sizeof(float));
    for (int pass = 0; pass < 2; pass++) {
        float lf = 0, la = 0;
        ck_assert_int_eq(gsink_forward(full, tok, tgt, B, T, &lf), GSINK_OK);
        ck_assert_int_eq(gsink_forward(ana, tok, tgt, B, T, &la), GSINK_OK);
        ck_assert(lf == la);
        ck_assert_int_eq(gsink_backward(full, 0), GSINK_OK);
        ck_assert_int_eq(gsink_backward(ana, 0), GSINK_OK);
        size_t n = (size_t)B * T * 48;
        float *ga = malloc(n * sizeof(float)), *gf = malloc(n * sizeof(float));
        for (int l = 0; l < 3; l++)
            for (int s = 0; s < GSINK_SITE_COUNT; s++) {
                size_t k = (size_t)B * T * gsink__site_width(full, (gsink_site)s);
                ck_assert_int_eq(gsink_get_gradient(full, l, (gsink_site)s, gf, k), GSINK_OK);
                ck_assert_int_eq(gsink_get_gradient(ana, l, (gsink_site)s, ga, k), GSINK_OK);
                ck_assert_msg(memcmp(ga, gf, k * sizeof(float)) == 0, "layer %d site %d", l, s);
            }
        free(ga);
        free(gf);
        /* refused by name; the model stays usable for the next pass */
        float g[32];
        ck_assert_int_eq(gsink_get_param_grad(ana, "model.norm.weight", g, 32), GSINK_ERR_UNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(gsink_model_errmsg(ana), "GSINK_MODEL_ANALYSIS"));
        size_t nt = 0;
        ck_assert_int_eq(gsink_vscale_theta_count(ana, &nt), GSINK_OK);
        ck_assert_int_eq(gsink_vscale_get_theta_grad(ana, g, nt), GSINK_ERR_UNSUPPORTED);
        ck_assert_int_eq(gsink_zero_grad(ana), GSINK_ERR_UNSUPPORTED);
        ck_assert_int_eq(gsink_backward(ana, GSINK_BACKWARD_ACCUMULATE), GSINK_ERR_UNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(gsink_model_errmsg(ana), "GSINK_MODEL_ANALYSIS"));
        gsink_optimizer *o = (gsink_optimizer *)g;
        ck_assert_int_eq(gsink_optimizer_create(ana, NULL, &o), GSINK_ERR_UNSUPPORTED);
        ck_assert_ptr_null(o);
        ck_assert_ptr_nonnull(strstr(gsink_last_error(), "GSINK_MODEL_ANALYSIS"));
    }
    gsink_model_free(full);
    gsink_model_free(ana);
}
END_TEST

START_TEST(test_unknown_flags)
{
    gsink_config cfg;
    ck_assert_int_eq(gsink_config_preset("micro", &cfg), GSINK_OK);
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    ck_assert_uint_eq(mo.flags, 0);
    mo.flags = 0x80;
    gsink_model *m = (gsink_model *)&mo;
    ck_assert_int_eq(gsink_model_create(&cfg, &mo, &m), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(gsink_last_error(), "flags"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("discard_grads");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_same_training);
    tcase_add_test(tc, test_analysis);
    tcase_add_test(tc, test_unknown_flags);
    suite_add_tcase(s, tc);
    int failed = tu_run_suite(s, 1);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
