/*
 * test_stream.c - streaming diagnostics (gsink_analysis_*): the report of a
 * batch of 8 sequences run as micro-batches (4 x 2, 3 + 3 + 2, two handles
 * whose states are summed, a model that discards its site gradients or its
 * unread site activations) equals
 * gsink_report_json after one forward and backward of all 8 at once, every
 * number to 1e-6 relative, for both batch aggregations, on an MHA model, a
 * GQA model and one with V-scale on. Also: the memory does not grow with the
 * number of micro-batches, bad input leaves the handle usable, cancelling.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "internal.h" /* defer_stats: the CUDA backend's statistics path */

#define NSEQ 8
#define SEQ 32
#define RTOL 1e-6

typedef struct setup {
    int H, KV, vscale, qk_norm; /* qk_norm 1: Qwen3-style q/k norms, with q/k/v biases;
                                   2: GLM-4-style (sandwich norms, partial interleaved RoPE, biases)
                                   with a sliding window of 8 */
} setup;

static const setup setups[] = {{4, 4, GSINK_VSCALE_OFF, 0}, {4, 2, GSINK_VSCALE_OFF, 0},
                               {4, 2, GSINK_VSCALE_FULL, 0}, {4, 2, GSINK_VSCALE_OFF, 1},
                               {4, 2, GSINK_VSCALE_OFF, 2}};

static gsink_model *make_model(const setup *su, uint32_t flags)
{
    gsink_config cfg;
    gsink_config_init(&cfg);
    cfg.vocab_size = 61;
    cfg.d_model = 32;
    cfg.n_layers = 2;
    cfg.n_heads = su->H;
    cfg.n_kv_heads = su->KV;
    cfg.d_head = 8;
    cfg.d_ff = 48;
    cfg.max_seq_len = 64;
    cfg.tie_embeddings = 0;
    if (su->qk_norm == 1) {
        cfg.arch = GSINK_ARCH_QWEN3;
        cfg.qk_norm = 1;
        cfg.qkv_bias = 1;
    } else if (su->qk_norm == 2) {
        cfg.arch = GSINK_ARCH_GLM4;
        cfg.qkv_bias = 1;
        cfg.rope_dims = 4;
        cfg.rope_interleaved = 1;
        cfg.sandwich_norm = 1;
        cfg.sliding_window = 8;
    }
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.seed = 7;
    mo.n_threads = 1;
    mo.flags = flags;
    gsink_model *m = NULL;
    ck_assert_int_eq(gsink_model_create(&cfg, &mo, &m), GSINK_OK);
    /* larger weights than the init so that attention is far from uniform */
    size_t n = 0;
    ck_assert_int_eq(gsink_param_count(m, &n), GSINK_OK);
    for (size_t i = 0; i < n; i++) {
        const char *name;
        int ndim;
        int64_t dims[2];
        ck_assert_int_eq(gsink_param_info(m, i, &name, &ndim, dims), GSINK_OK);
        if (ndim != 2 && !strstr(name, "bias") && !strstr(name, "_norm.")) continue;
        size_t k = (size_t)dims[0] * (ndim == 2 ? (size_t)dims[1] : 1);
        float *w = malloc(k * sizeof(float));
        tu_fill(w, k, 100 + i, 0.15f);
        if (ndim == 1 && strstr(name, "_norm."))
            for (size_t j = 0; j < k; j++) w[j] += 1.0f; /* q/k norm gains around 1 */
        ck_assert_int_eq(gsink_set_param(m, name, w, k), GSINK_OK);
        free(w);
    }
    if (su->vscale != GSINK_VSCALE_OFF) {
        gsink_vscale_options vo;
        gsink_vscale_options_init(&vo);
        vo.mode = su->vscale;
        ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
    }
    return m;
}

static void make_tokens(int32_t *tok, int n, uint64_t seed)
{
    uint64_t s = seed;
    for (int i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((s >> 33) % 61);
    }
    /* a repeated first token, as a BOS/separator would be */
    for (int b = 0; b < n / SEQ; b++) tok[b * SEQ] = 3;
}

static void diag_opts(gsink_diag_options *o, int agg)
{
    gsink_diag_options_init(o);
    o->sink_window = 16;
    o->batch_agg = agg;
}

/* Report of one forward + backward of all sequences at once. */
static char *one_batch_report(gsink_model *m, const int32_t *tok, int nseq, int agg)
{
    gsink_diag_options o;
    diag_opts(&o, agg);
    ck_assert_int_eq(gsink_set_diag_options(m, &o), GSINK_OK);
    int32_t *tgt = malloc(sizeof(int32_t) * (size_t)nseq * SEQ);
    for (int i = 0; i < nseq * SEQ; i++) tgt[i] = (i % SEQ) + 1 < SEQ ? tok[i + 1] : -1;
    float loss;
    ck_assert_int_eq(gsink_forward(m, tok, tgt, nseq, SEQ, &loss), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    char *json = NULL;
    ck_assert_msg(gsink_report_json(m, &o, &json) == GSINK_OK, "%s", gsink_model_errmsg(m));
    free(tgt);
    return json;
}

/* Drops `"sequences": N, "micro_batches": K` (streaming only) from json. */
static void drop_stream_fields(char *json)
{
    char *p = strstr(json, ", \"sequences\": ");
    ck_assert_ptr_nonnull(p);
    char *q = strchr(p, '}');
    memmove(p, q, strlen(q) + 1);
}

/* Largest |number| of the flat array starting at a '[' (0 if it nests). */
static double array_max(const char *p)
{
    double mx = 0.0;
    for (p++; *p && *p != ']'; p++) {
        if (*p == '[' || *p == '{') return 0.0;
        if (*p == '-' || (*p >= '0' && *p <= '9')) {
            char *e;
            mx = fmax(mx, fabs(strtod(p, &e)));
            p = e - 1;
        }
    }
    return mx;
}

/* Walks both JSON texts: strings and punctuation must match exactly, numbers
 * to rtol: |a-b| <= rtol*max(|a|,|b|) + atol, where inside a profile (a flat
 * array) atol is rtol times the profile's largest |value|: the absolute floor
 * for values near zero (dL/dq_0 = 0, cancellations), on the profile's scale,
 * since fp32 sums err relative to their terms. Returns the mismatches. */
static int json_compare(const char *a, const char *b, double rtol, double atol, int *n_numbers)
{
    const char *a0 = a;
    int bad = 0;
    double amax = 0.0;
    *n_numbers = 0;
    while (*a && *b) {
        if (*a == '"') {
            const char *ea = strchr(a + 1, '"'), *eb = strchr(b + 1, '"');
            if (!ea || !eb || ea - a != eb - b || memcmp(a, b, (size_t)(ea - a))) {
                fprintf(stderr, "string mismatch at: %.60s | %.60s\n", a, b);
                return bad + 1000;
            }
            a = ea + 1;
            b = eb + 1;
            continue;
        }
        if (*a == '-' || (*a >= '0' && *a <= '9')) {
            char *ea, *eb;
            double x = strtod(a, &ea), y = strtod(b, &eb);
            if (eb == b) {
                fprintf(stderr, "number vs text at: %.60s | %.60s\n", a, b);
                return bad + 1000;
            }
            (*n_numbers)++;
            double tol = rtol * fmax(fabs(x), fabs(y)) + atol + rtol * amax;
            if (!(fabs(x - y) <= tol)) {
                if (bad < 10) {
                    const char *k = a; /* the key this number belongs to */
                    int q = 0;
                    while (k > a0 && q < 2) q += *--k == '"';
                    fprintf(stderr, "number mismatch %.9g vs %.9g (rel %.3g) in %.24s\n", x, y,
                            fabs(x - y) / fmax(fabs(x), fabs(y)), k);
                }
                bad++;
            }
            a = ea;
            b = eb;
            continue;
        }
        if (*a == '[') amax = array_max(a);
        if (*a == ']') amax = 0.0;
        if (*a != *b) {
            fprintf(stderr, "text mismatch at: %.60s | %.60s\n", a, b);
            return bad + 1000;
        }
        a++;
        b++;
    }
    if (*a || *b) return bad + 1000;
    return bad;
}

static void assert_same_report(const char *ref, char *stream, const char *what)
{
    drop_stream_fields(stream);
    int n = 0;
    int bad = json_compare(ref, stream, RTOL, 1e-12, &n);
    ck_assert_msg(bad == 0, "%s: %d numbers differ (of %d)", what, bad, n);
    ck_assert_msg(n > 1000, "%s: only %d numbers compared", what, n);
}

static gsink_analysis *begin(gsink_model *m, int agg)
{
    gsink_diag_options o;
    diag_opts(&o, agg);
    gsink_analysis *a = NULL;
    ck_assert_msg(gsink_analysis_begin(m, SEQ, &o, &a) == GSINK_OK, "%s", gsink_model_errmsg(m));
    return a;
}

static void add(gsink_analysis *a, const int32_t *tok, int from, int count)
{
    ck_assert_msg(gsink_analysis_add(a, tok + (size_t)from * SEQ, NULL, count, SEQ) == GSINK_OK, "%s",
                  gsink_analysis_errmsg(a));
}

static char *report(gsink_analysis *a, int agg)
{
    gsink_diag_options o;
    diag_opts(&o, agg);
    char *json = NULL;
    ck_assert_msg(gsink_analysis_report_json(a, &o, &json) == GSINK_OK, "%s", gsink_analysis_errmsg(a));
    return json;
}

/* 4 x 2 and 3 + 3 + 2, both aggregations, against one batch of 8. */
START_TEST(test_microbatches_equal_one_batch)
{
    const setup *su = &setups[_i];
    int32_t tok[NSEQ * SEQ];
    make_tokens(tok, NSEQ * SEQ, 11 + (uint64_t)_i);
    gsink_model *m = make_model(su, 0);
    char *ref[2] = {one_batch_report(m, tok, NSEQ, 0), one_batch_report(m, tok, NSEQ, 1)};

    gsink_analysis *a = begin(m, GSINK_AGG_SUM_THEN_NORM);
    for (int k = 0; k < 4; k++) add(a, tok, 2 * k, 2);
    gsink_analysis *c = begin(m, GSINK_AGG_SUM_THEN_NORM);
    add(c, tok, 0, 3);
    add(c, tok, 3, 3);
    add(c, tok, 6, 2);
    for (int agg = 0; agg < 2; agg++) {
        char *s = report(a, agg);
        assert_same_report(ref[agg], s, agg ? "4x2 per_sequence" : "4x2 sum_then_norm");
        gsink_free(s);
        s = report(c, agg);
        assert_same_report(ref[agg], s, agg ? "3+3+2 per_sequence" : "3+3+2 sum_then_norm");
        gsink_free(s);
    }
    int64_t ns, nm, nt;
    ck_assert_int_eq(gsink_analysis_counts(a, &ns, &nm, &nt), GSINK_OK);
    ck_assert_int_eq(ns, 8);
    ck_assert_int_eq(nm, 4);
    ck_assert_int_eq(nt, NSEQ * (SEQ - 1));
    gsink_analysis_free(a);
    gsink_analysis_free(c);

    /* the one-call form */
    gsink_diag_options o;
    diag_opts(&o, GSINK_AGG_SUM_THEN_NORM);
    char *s = NULL;
    ck_assert_int_eq(gsink_analyze_sequences(m, tok, NSEQ, SEQ, 3, &o, NULL, NULL, &s), GSINK_OK);
    ck_assert_ptr_nonnull(strstr(s, "\"sequences\": 8, \"micro_batches\": 3"));
    assert_same_report(ref[0], s, "gsink_analyze_sequences");
    gsink_free(s);

    /* the whole-batch API is unchanged after streaming on the same model */
    char *again = one_batch_report(m, tok, NSEQ, 0);
    ck_assert_str_eq(again, ref[0]);
    gsink_free(again);
    gsink_free(ref[0]);
    gsink_free(ref[1]);
    gsink_model_free(m);
}
END_TEST

/* A model without kept site gradients streams to the same numbers. */
START_TEST(test_discarded_site_grads)
{
    const setup *su = &setups[_i];
    int32_t tok[NSEQ * SEQ];
    make_tokens(tok, NSEQ * SEQ, 23);
    gsink_model *m = make_model(su, 0);
    char *ref = one_batch_report(m, tok, NSEQ, 0);
    gsink_model *d = make_model(su, GSINK_MODEL_ANALYSIS | GSINK_MODEL_DISCARD_SITE_GRADS);
    gsink_analysis *a = begin(d, 0);
    for (int k = 0; k < 4; k++) add(a, tok, 2 * k, 2);
    char *s = report(a, 0);
    assert_same_report(ref, s, "discarded site gradients");
    gsink_free(s);
    gsink_analysis_free(a);
    gsink_free(ref);
    gsink_model_free(m);
    gsink_model_free(d);
}
END_TEST

/* GSINK_MODEL_DISCARD_SITE_ACTIVATIONS: the sites the backward does not read
 * share one buffer set across layers, the logit gradients overwrite the
 * logits; the streamed report is unchanged (with and without kept site
 * gradients, also with the statistics recorded in the backward), site
 * gradients are bitwise equal, and what the model no longer keeps fails
 * with a message naming the flag. */
START_TEST(test_discarded_site_activations)
{
    const setup *su = &setups[_i];
    const uint32_t DA = GSINK_MODEL_DISCARD_SITE_ACTIVATIONS;
    int32_t tok[NSEQ * SEQ];
    make_tokens(tok, NSEQ * SEQ, 29);
    gsink_model *m = make_model(su, 0);
    char *ref = one_batch_report(m, tok, NSEQ, 0);
    const uint32_t variants[3] = {GSINK_MODEL_ANALYSIS | GSINK_MODEL_DISCARD_SITE_GRADS | DA, GSINK_MODEL_ANALYSIS | DA,
                                  GSINK_MODEL_ANALYSIS | GSINK_MODEL_DISCARD_SITE_GRADS | DA};
    for (int v = 0; v < 3; v++) {
        gsink_model *d = make_model(su, variants[v]);
        if (v == 2) d->defer_stats = true;
        gsink_analysis *a = begin(d, 0);
        for (int k = 0; k < 4; k++) add(a, tok, 2 * k, 2);
        char *s = report(a, 0);
        assert_same_report(ref, s, v == 0 ? "discarded site activations" : v == 1 ? "discarded activations, kept gradients"
                                                                                  : "discarded activations, deferred statistics");
        gsink_free(s);
        gsink_analysis_free(a);
        gsink_model_free(d);
    }

    /* one batch through the public API: gradients equal, discarded sites refused */
    gsink_model *d = make_model(su, GSINK_MODEL_ANALYSIS | DA);
    int32_t tgt[NSEQ * SEQ];
    for (int i = 0; i < NSEQ * SEQ; i++) tgt[i] = (i % SEQ) + 1 < SEQ ? tok[i + 1] : -1;
    float l0, l1;
    ck_assert_int_eq(gsink_forward(m, tok, tgt, NSEQ, SEQ, &l0), GSINK_OK);
    ck_assert_int_eq(gsink_forward(d, tok, tgt, NSEQ, SEQ, &l1), GSINK_OK);
    ck_assert_float_eq(l0, l1);
    const size_t nlog = (size_t)NSEQ * SEQ * 61;
    float *lg0 = malloc(nlog * sizeof(float)), *lg1 = malloc(nlog * sizeof(float));
    ck_assert_int_eq(gsink_get_logits(m, lg0, nlog), GSINK_OK);
    ck_assert_int_eq(gsink_get_logits(d, lg1, nlog), GSINK_OK); /* before the backward: kept */
    ck_assert_int_eq(memcmp(lg0, lg1, nlog * sizeof(float)), 0);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    ck_assert_int_eq(gsink_backward(d, 0), GSINK_OK);
    /* the backward wrote the logit gradients over the logits; reading them
     * recomputes the forward's LM-head product: bitwise the same */
    memset(lg1, 0, nlog * sizeof(float));
    ck_assert_int_eq(gsink_get_logits(d, lg1, nlog), GSINK_OK);
    ck_assert_int_eq(memcmp(lg0, lg1, nlog * sizeof(float)), 0);
    free(lg0);
    free(lg1);
    const size_t big = (size_t)NSEQ * SEQ * 64;
    float *x0 = malloc(big * sizeof(float)), *x1 = malloc(big * sizeof(float));
    for (int l = 0; l < 2; l++)
        for (int si = 0; si < GSINK_SITE_COUNT; si++) {
            const gsink_site site = (gsink_site)si;
            const bool gone = si == GSINK_SITE_ATTN_OUT || si == GSINK_SITE_MLP_OUT; /* the others: kept or recomputed */
            ck_assert_int_eq(gsink_get_gradient(m, l, site, x0, big), GSINK_OK);
            ck_assert_int_eq(gsink_get_gradient(d, l, site, x1, big), GSINK_OK);
            int hh = 0, hw = 0;
            ck_assert_int_eq(gsink_site_dims(d, site, &hh, &hw), GSINK_OK);
            const int w = hw;
            (void)hh;
            ck_assert_msg(memcmp(x0, x1, (size_t)NSEQ * SEQ * (size_t)w * sizeof(float)) == 0,
                          "gradient of %s, layer %d", gsink_site_name(site), l);
            gsink_status st = gsink_get_activation(d, l, site, x1, big);
            float r;
            if (gone) {
                ck_assert_int_eq(st, GSINK_ERR_UNSUPPORTED);
                ck_assert_ptr_nonnull(strstr(gsink_model_errmsg(d), "GSINK_MODEL_DISCARD_SITE_ACTIVATIONS"));
                ck_assert_int_eq(gsink_get_activation_norms(d, l, site, -1, x1, big), GSINK_ERR_UNSUPPORTED);
                ck_assert_ptr_nonnull(strstr(gsink_model_errmsg(d), "GSINK_MODEL_DISCARD_SITE_ACTIVATIONS"));
                ck_assert_int_eq(gsink_massive_activation_ratio(d, l, site, &r), GSINK_ERR_UNSUPPORTED);
            } else {
                ck_assert_int_eq(st, GSINK_OK);
                ck_assert_int_eq(gsink_get_activation(m, l, site, x0, big), GSINK_OK);
                ck_assert_int_eq(memcmp(x0, x1, (size_t)NSEQ * SEQ * (size_t)w * sizeof(float)), 0);
                ck_assert_int_eq(gsink_massive_activation_ratio(d, l, site, &r), GSINK_OK);
            }
        }
    free(x0);
    free(x1);
    gsink_diag_options o;
    diag_opts(&o, 0);
    char *json = NULL;
    ck_assert_int_eq(gsink_report_json(d, &o, &json), GSINK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(gsink_model_errmsg(d), "GSINK_MODEL_DISCARD_SITE_ACTIVATIONS"));

    /* less activation memory than a model that only skips parameter gradients */
    uint64_t live_d, live_a;
    gsink_model *an = make_model(su, GSINK_MODEL_ANALYSIS);
    ck_assert_int_eq(gsink_forward(an, tok, tgt, NSEQ, SEQ, &l1), GSINK_OK);
    ck_assert_int_eq(gsink_model_memory(an, &live_a, NULL, 0), GSINK_OK);
    ck_assert_int_eq(gsink_model_memory(d, &live_d, NULL, 0), GSINK_OK);
    ck_assert_uint_lt(live_d, live_a);
    {   /* the saving: (L - 1) x 2 d floats per token of attn_out and mlp_out (every model
         * keeps one buffer of each recomputed site and writes the logit gradients over
         * the logits) */
        const uint64_t N = NSEQ * SEQ, per_site = (uint64_t)((N * 32 * 4 + 63) / 64 * 64);
        ck_assert_uint_eq(live_a - live_d, 1 * (2 * per_site));
    }
    gsink_model_free(an);

    /* the flag needs GSINK_MODEL_ANALYSIS */
    gsink_config cfg;
    ck_assert_int_eq(gsink_model_config(m, &cfg), GSINK_OK);
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.flags = DA | GSINK_MODEL_DISCARD_SITE_GRADS;
    gsink_model *bad = NULL;
    char err[GSINK_MSG_SIZE];
    ck_assert_int_eq(gsink_model_create(&cfg, &mo, &bad), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(bad);
    (void)err;
    gsink_free(ref);
    gsink_model_free(m);
    gsink_model_free(d);
}
END_TEST

/* Column statistics recorded in the backward (as the CUDA backend does)
 * stream to the same numbers. */
START_TEST(test_deferred_statistics)
{
    const setup *su = &setups[1];
    int32_t tok[NSEQ * SEQ];
    make_tokens(tok, NSEQ * SEQ, 31);
    gsink_model *m = make_model(su, 0);
    char *ref = one_batch_report(m, tok, NSEQ, 0);
    gsink_model *d = make_model(su, GSINK_MODEL_ANALYSIS);
    d->defer_stats = true;
    gsink_analysis *a = begin(d, 0);
    for (int k = 0; k < 4; k++) add(a, tok, 2 * k, 2);
    char *s = report(a, 0);
    assert_same_report(ref, s, "deferred statistics");
    gsink_free(s);
    gsink_analysis_free(a);
    gsink_free(ref);
    gsink_model_free(m);
    gsink_model_free(d);
}
END_TEST

/* Two handles over halves, states summed and set into a third. */
START_TEST(test_state_sum)
{
    const setup *su = &setups[1];
    int32_t tok[NSEQ * SEQ];
    make_tokens(tok, NSEQ * SEQ, 5);
    gsink_model *m = make_model(su, GSINK_MODEL_ANALYSIS);
    gsink_model *r = make_model(su, 0);
    char *ref[2] = {one_batch_report(r, tok, NSEQ, 0), one_batch_report(r, tok, NSEQ, 1)};
    gsink_analysis *a = begin(m, 0), *b = begin(m, 0), *c = begin(m, 0);
    add(a, tok, 0, 2);
    add(a, tok, 2, 1);
    add(b, tok, 3, 4);
    add(b, tok, 7, 1);
    size_t n = 0, n2 = 0;
    ck_assert_int_eq(gsink_analysis_state_size(a, &n), GSINK_OK);
    ck_assert_int_eq(gsink_analysis_state_size(c, &n2), GSINK_OK);
    ck_assert_uint_eq(n, n2);
    double *sa = malloc(n * sizeof(double)), *sb = malloc(n * sizeof(double));
    ck_assert_int_eq(gsink_analysis_get_state(a, sa, n), GSINK_OK);
    ck_assert_int_eq(gsink_analysis_get_state(b, sb, n), GSINK_OK);
    ck_assert_int_eq(gsink_analysis_get_state(a, sb, n - 1), GSINK_ERR_BUFFER_TOO_SMALL);
    for (size_t i = 0; i < n; i++) sa[i] += sb[i];
    ck_assert_int_eq(gsink_analysis_set_state(c, sa, n - 1), GSINK_ERR_SHAPE_MISMATCH);
    sb[0] = -1;
    ck_assert_int_eq(gsink_analysis_set_state(c, sb, n), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_analysis_set_state(c, sa, n), GSINK_OK);
    for (int agg = 0; agg < 2; agg++) {
        char *s = report(c, agg);
        assert_same_report(ref[agg], s, "summed states");
        gsink_free(s);
    }
    /* the full-length attn_norm_out profile (Figure 1) */
    size_t len = 0;
    ck_assert_int_eq(gsink_analysis_gradient_norms(c, 1, GSINK_SITE_ATTN_NORM_OUT, -1, 0, NULL, 0, &len),
                     GSINK_OK);
    ck_assert_uint_eq(len, SEQ);
    float g[SEQ], gr[SEQ];
    ck_assert_int_eq(gsink_analysis_gradient_norms(c, 1, GSINK_SITE_ATTN_NORM_OUT, -1, 0, g, SEQ - 1, &len),
                     GSINK_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(gsink_analysis_gradient_norms(c, 1, GSINK_SITE_ATTN_NORM_OUT, -1, 0, g, SEQ, &len), GSINK_OK);
    ck_assert_int_eq(gsink_get_gradient_norms(r, 1, GSINK_SITE_ATTN_NORM_OUT, -1, 0, gr, SEQ), GSINK_OK);
    for (int t = 0; t < SEQ; t++) ck_assert_msg(tu_close(g[t], gr[t], RTOL, 1e-12), "t=%d %g %g", t, g[t], gr[t]);
    free(sa);
    free(sb);
    gsink_analysis_free(a);
    gsink_analysis_free(b);
    gsink_analysis_free(c);
    gsink_free(ref[0]);
    gsink_free(ref[1]);
    gsink_model_free(m);
    gsink_model_free(r);
}
END_TEST

/* Memory: the sums are fixed at begin; the model's and the temporaries' do
 * not grow with the number of micro-batches. */
START_TEST(test_memory_independent_of_n)
{
    const setup *su = &setups[1];
    int32_t tok[NSEQ * SEQ];
    make_tokens(tok, NSEQ * SEQ, 9);
    gsink_model *m = make_model(su, GSINK_MODEL_ANALYSIS | GSINK_MODEL_DISCARD_SITE_GRADS);
    uint64_t live0, live_a;
    ck_assert_int_eq(gsink_model_memory(m, &live0, NULL, 0), GSINK_OK);
    gsink_analysis *a = begin(m, 0);
    ck_assert_int_eq(gsink_model_memory(m, &live_a, NULL, 0), GSINK_OK);
    uint64_t s0, t0, s1, t1, s4, t4, live1, peak1, live4, peak4;
    ck_assert_int_eq(gsink_analysis_memory(a, &s0, &t0), GSINK_OK);
    ck_assert_uint_eq(t0, 0);
    add(a, tok, 0, 2);
    ck_assert_int_eq(gsink_analysis_memory(a, &s1, &t1), GSINK_OK);
    ck_assert_int_eq(gsink_model_memory(m, &live1, &peak1, 0), GSINK_OK);
    for (int k = 1; k < 4; k++) add(a, tok, 2 * k, 2);
    ck_assert_int_eq(gsink_analysis_memory(a, &s4, &t4), GSINK_OK);
    ck_assert_int_eq(gsink_model_memory(m, &live4, &peak4, 0), GSINK_OK);
    ck_assert_uint_eq(s0, s1);
    ck_assert_uint_eq(s1, s4);
    ck_assert_uint_eq(t1, t4);
    ck_assert_uint_eq(live1, live4);
    ck_assert_uint_eq(peak1, peak4);
    /* the state size: a fixed formula of (L, T, widths), see docs/diagnostics.md */
    size_t n;
    ck_assert_int_eq(gsink_analysis_state_size(a, &n), GSINK_OK);
    ck_assert_uint_ge(s4, n * sizeof(double));
    /* the per-layer sums (all but the 4 global ones) live in the backend */
    ck_assert_uint_ge(live_a - live0, (n - 4) * sizeof(double));
    ck_assert_uint_le(live_a - live0, (n - 4) * sizeof(double) + 64);
    {   /* the formula of docs/diagnostics.md "Streaming over micro-batches" */
        const size_t T = SEQ, P = SEQ < 64 ? SEQ : 64, d = 32, H = (size_t)su->H, KV = (size_t)su->KV, dh = 8,
                     ff = 48, S = KV, L = 2;
        size_t per = T * d + P * (6 * d + 2 * H * dh + 2 * KV * dh + S * dh + 3 * ff) + T + P * (14 + H + 2 * KV) +
                     P * (15 + H + 2 * KV) + P * (H + 2 * KV) * dh + 9 * P + 3 * H * T;
        ck_assert_uint_eq(n, 4 + L * per);
    }
    gsink_analysis *b = begin(m, 0);
    size_t nb;
    ck_assert_int_eq(gsink_analysis_state_size(b, &nb), GSINK_OK);
    ck_assert_uint_eq(n, nb); /* an empty handle has the same size: states can be summed */
    gsink_analysis_free(b);
    gsink_analysis_free(a);
    gsink_model_free(m);
}
END_TEST

/* Freeing the model first moves the sums to the host: the state functions
 * keep working (bitwise the same state), the calls that need the model say
 * so, and the analyses free cleanly. */
START_TEST(test_model_freed_first)
{
    const setup *su = &setups[1];
    int32_t tok[NSEQ * SEQ];
    make_tokens(tok, NSEQ * SEQ, 21);
    gsink_model *m = make_model(su, GSINK_MODEL_ANALYSIS);
    gsink_analysis *a = begin(m, 0), *b = begin(m, 0), *c = begin(m, 0);
    add(a, tok, 0, 3);
    add(a, tok, 3, 2);
    add(c, tok, 5, 1);
    size_t n = 0;
    ck_assert_int_eq(gsink_analysis_state_size(a, &n), GSINK_OK);
    double *sa = malloc(n * sizeof(double)), *s2 = malloc(n * sizeof(double));
    ck_assert_int_eq(gsink_analysis_get_state(a, sa, n), GSINK_OK);
    size_t nz = 0;
    for (size_t i = 4; i < n; i++) nz += sa[i] != 0.0;
    ck_assert_uint_gt(nz, n / 2);
    gsink_model_free(m);
    ck_assert_int_eq(gsink_analysis_get_state(a, s2, n), GSINK_OK);
    ck_assert_mem_eq(sa, s2, n * sizeof(double));
    int64_t seqs = 0, mbs = 0;
    ck_assert_int_eq(gsink_analysis_counts(a, &seqs, &mbs, NULL), GSINK_OK);
    ck_assert_int_eq(seqs, 5);
    ck_assert_int_eq(mbs, 2);
    char *json = NULL;
    ck_assert_int_eq(gsink_analysis_report_json(a, NULL, &json), GSINK_ERR_CALL_ORDER);
    ck_assert_ptr_nonnull(strstr(gsink_analysis_errmsg(a), "model was freed"));
    ck_assert_ptr_null(json);
    ck_assert_int_eq(gsink_analysis_add(a, tok, NULL, 1, SEQ), GSINK_ERR_CALL_ORDER);
    float g[SEQ];
    ck_assert_int_eq(gsink_analysis_gradient_norms(a, 0, GSINK_SITE_RESID_IN, -1, 0, g, SEQ, NULL),
                     GSINK_ERR_CALL_ORDER);
    /* an empty analysis takes a state after the model is gone */
    ck_assert_int_eq(gsink_analysis_set_state(b, sa, n), GSINK_OK);
    memset(s2, 0, n * sizeof(double));
    ck_assert_int_eq(gsink_analysis_get_state(b, s2, n), GSINK_OK);
    ck_assert_mem_eq(sa, s2, n * sizeof(double));
    free(sa);
    free(s2);
    gsink_analysis_free(a);
    gsink_analysis_free(b);
    gsink_analysis_free(c); /* never read back before the model went */
}
END_TEST

static int cancel_after_two(int64_t done, int64_t total, void *user)
{
    int *calls = user;
    ck_assert_int_eq(total, NSEQ);
    (*calls)++;
    return done >= 4;
}

/* Bad input gives a specific status and leaves the handle usable. */
START_TEST(test_errors_leave_handle_usable)
{
    const setup *su = &setups[0];
    int32_t tok[NSEQ * SEQ];
    make_tokens(tok, NSEQ * SEQ, 13);
    gsink_model *m = make_model(su, 0);
    char *ref = one_batch_report(m, tok, NSEQ, 0);
    /* a training model's parameter gradients survive the analysis */
    const char *pname = "model.layers.0.self_attn.q_proj.weight";
    const size_t pn = 4 * 8 * 32;
    float *g0 = malloc(pn * sizeof(float)), *g1 = malloc(pn * sizeof(float));
    ck_assert_int_eq(gsink_get_param_grad(m, pname, g0, pn), GSINK_OK);
    gsink_analysis *a = NULL;
    ck_assert_int_eq(gsink_analysis_begin(m, 0, NULL, &a), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(a);
    ck_assert_int_eq(gsink_analysis_begin(m, 65, NULL, &a), GSINK_ERR_SEQ_TOO_LONG);
    ck_assert_int_eq(gsink_analysis_begin(NULL, SEQ, NULL, &a), GSINK_ERR_NULL_ARGUMENT);
    a = begin(m, 0);
    char *json = NULL;
    ck_assert_int_eq(gsink_analysis_report_json(a, NULL, &json), GSINK_ERR_CALL_ORDER);
    ck_assert_ptr_null(json);
    add(a, tok, 0, 3);
    ck_assert_int_eq(gsink_analysis_add(a, tok + 3 * SEQ, NULL, 2, SEQ - 1), GSINK_ERR_SHAPE_MISMATCH);
    ck_assert_ptr_nonnull(strstr(gsink_analysis_errmsg(a), "seq_len"));
    int32_t bad[2 * SEQ];
    memcpy(bad, tok + 3 * SEQ, sizeof bad);
    bad[5] = 61;
    ck_assert_int_eq(gsink_analysis_add(a, bad, NULL, 2, SEQ), GSINK_ERR_TOKEN_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(gsink_analysis_errmsg(a), "61"));
    ck_assert_int_eq(gsink_analysis_add(a, NULL, NULL, 2, SEQ), GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(gsink_analysis_add(a, tok, NULL, 0, SEQ), GSINK_ERR_INVALID_ARGUMENT);
    int32_t none[SEQ];
    for (int t = 0; t < SEQ; t++) none[t] = -1;
    ck_assert_int_eq(gsink_analysis_add(a, tok, none, 1, SEQ), GSINK_ERR_NO_TARGETS);
    gsink_diag_options o;
    diag_opts(&o, 0);
    o.batch_agg = 7;
    ck_assert_int_eq(gsink_analysis_report_json(a, &o, &json), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_analysis_gradient_norms(a, 2, GSINK_SITE_Q, -1, 0, NULL, 0, NULL), GSINK_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(gsink_analysis_gradient_norms(a, 0, (gsink_site)99, -1, 0, NULL, 0, NULL),
                     GSINK_ERR_UNKNOWN_SITE);
    add(a, tok, 3, 5);
    ck_assert_int_eq(gsink_analysis_finish(a), GSINK_OK);
    ck_assert_int_eq(gsink_analysis_add(a, tok, NULL, 1, SEQ), GSINK_ERR_CALL_ORDER);
    char *s = report(a, 0);
    assert_same_report(ref, s, "after errors");
    gsink_free(s);
    gsink_analysis_free(a);
    ck_assert_int_eq(gsink_get_param_grad(m, pname, g1, pn), GSINK_OK);
    ck_assert_mem_eq(g0, g1, pn * sizeof(float));
    free(g0);
    free(g1);

    /* cancelling through the progress callback */
    int calls = 0;
    ck_assert_int_eq(gsink_analyze_sequences(m, tok, NSEQ, SEQ, 2, NULL, cancel_after_two, &calls, &json),
                     GSINK_ERR_CANCELLED);
    ck_assert_int_eq(calls, 2);
    ck_assert_ptr_null(json);
    ck_assert_ptr_nonnull(strstr(gsink_model_errmsg(m), "cancel"));
    ck_assert_str_eq(gsink_status_str(GSINK_ERR_CANCELLED), "cancelled");
    ck_assert_int_eq(gsink_analyze_sequences(m, tok, NSEQ, SEQ, 0, NULL, NULL, NULL, &json),
                     GSINK_ERR_INVALID_ARGUMENT);
    gsink_free(ref);
    gsink_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stream");
    TCase *tc = tcase_create("stream");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_microbatches_equal_one_batch, 0, 5);
    tcase_add_loop_test(tc, test_discarded_site_grads, 0, 5);
    tcase_add_loop_test(tc, test_discarded_site_activations, 0, 5);
    tcase_add_test(tc, test_deferred_statistics);
    tcase_add_test(tc, test_state_sum);
    tcase_add_test(tc, test_memory_independent_of_n);
    tcase_add_test(tc, test_model_freed_first);
    tcase_add_test(tc, test_errors_leave_handle_usable);
    suite_add_tcase(s, tc);
    return tu_run_suite(s, 1);
}
