/*
 * test_stats_paths.c - the three places the attention column statistics can
 * come from (lib/backend.h): the forward (the CPU backend's choice), the
 * backward kernel, and the stand-alone pass that a forward-only analysis
 * triggers (the choice of backends with stats_in_backward, such as CUDA).
 * A CPU model told to defer (internal defer_stats) must report the same
 * column mass, second moment and sink scores as one that
 * records them in the forward, whatever the order of calls.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "internal.h"

enum { B = 2, T = 24, H = 4 };

static gsink_model *make(bool defer)
{
    gsink_config cfg;
    gsink_config_init(&cfg);
    cfg.vocab_size = 53;
    cfg.d_model = 32;
    cfg.n_layers = 2;
    cfg.n_heads = H;
    cfg.n_kv_heads = 2;
    cfg.d_head = 8;
    cfg.d_ff = 48;
    cfg.max_seq_len = 64;
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.seed = 99;
    mo.n_threads = 1;
    gsink_model *m = NULL;
    ck_assert_int_eq(gsink_model_create(&cfg, &mo, &m), GSINK_OK);
    gsink_diag_options d;
    gsink_diag_options_init(&d);
    d.sink_window = 5;
    ck_assert_int_eq(gsink_set_diag_options(m, &d), GSINK_OK);
    m->defer_stats = defer;
    return m;
}

static int32_t tok[B * T], tgt[B * T];

static void fill_ids(void)
{
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 29 + 3) % 53;
        tgt[i] = (i * 41 + 7) % 53;
    }
}

/* Every layer's and head's statistics of a and b agree. */
static void same_stats(gsink_model *a, gsink_model *b, const char *what)
{
    for (int l = 0; l < 2; l++) {
        for (int h = 0; h < H; h++) {
            float Ma[T], Sa[T], Mb[T], Sb[T];
            ck_assert_int_eq(gsink_attention_column_mass(a, l, h, Ma, Sa, T), GSINK_OK);
            ck_assert_int_eq(gsink_attention_column_mass(b, l, h, Mb, Sb, T), GSINK_OK);
            double tot = 0;
            for (int s = 0; s < T; s++) {
                ck_assert_msg(tu_close(Ma[s], Mb[s], 1e-5, 1e-6), "%s: mass l%d h%d s%d %g %g", what, l, h, s, Ma[s], Mb[s]);
                ck_assert_msg(tu_close(Sa[s], Sb[s], 1e-5, 1e-6), "%s: sq l%d h%d s%d", what, l, h, s);
                tot += Mb[s];
            }
            /* every query row sums to 1, so the masses sum to T */
            ck_assert_msg(fabs(tot - T) < 1e-3, "%s: masses sum to %g", what, tot);
        }
        float sa[H], sb[H];
        ck_assert_int_eq(gsink_sink_scores(a, l, 0, sa, H), GSINK_OK);
        ck_assert_int_eq(gsink_sink_scores(b, l, 0, sb, H), GSINK_OK);
        for (int h = 0; h < H; h++) ck_assert_msg(tu_close(sa[h], sb[h], 1e-5, 1e-6), "%s: sink score", what);
    }
}

START_TEST(test_backward_path)
{
    fill_ids();
    gsink_model *ref = make(false), *def = make(true);
    ck_assert(!ref->defer_stats && def->defer_stats);
    ck_assert_int_eq(gsink_forward(ref, tok, tgt, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_forward(def, tok, tgt, B, T, NULL), GSINK_OK);
    ck_assert(!def->stats_ready);
    ck_assert_int_eq(gsink_backward(ref, 0), GSINK_OK);
    ck_assert_int_eq(gsink_backward(def, 0), GSINK_OK);
    /* summed by the backward kernel, reduced only when first read */
    ck_assert(!def->stats_ready && def->stats_on_backend);
    /* the read must not recompute them: spoil the queries the stand-alone
     * pass would read (the backward is done with them) */
    for (int l = 0; l < 2; l++) memset(def->layers[l].site[GSINK_SITE_Q], 0, sizeof(float) * B * T * H * 8);
    same_stats(ref, def, "after backward");
    ck_assert(def->stats_ready);
    /* the JSON report reads them too */
    char *js = NULL;
    ck_assert_int_eq(gsink_report_json(def, NULL, &js), GSINK_OK);
    ck_assert_ptr_nonnull(strstr(js, "sink_rate"));
    gsink_free(js);
    gsink_model_free(ref);
    gsink_model_free(def);
}
END_TEST

START_TEST(test_accumulated_backward)
{
    /* a second (accumulating) backward before any read keeps the statistics
     * of the first and the read reports them once, not summed twice */
    fill_ids();
    gsink_model *ref = make(false), *def = make(true);
    ck_assert_int_eq(gsink_forward(ref, tok, tgt, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_forward(def, tok, tgt, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_backward(def, 0), GSINK_OK);
    ck_assert_int_eq(gsink_backward(def, GSINK_BACKWARD_ACCUMULATE), GSINK_OK);
    ck_assert(def->stats_on_backend);
    same_stats(ref, def, "after two backward passes");
    gsink_model_free(ref);
    gsink_model_free(def);
}
END_TEST

START_TEST(test_forward_only_path)
{
    fill_ids();
    gsink_model *ref = make(false), *def = make(true);
    ck_assert_int_eq(gsink_forward(ref, tok, NULL, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_forward(def, tok, NULL, B, T, NULL), GSINK_OK);
    ck_assert(!def->stats_ready);
    same_stats(ref, def, "forward only"); /* the stand-alone pass runs here */
    ck_assert(def->stats_ready);
    /* read before the backward, then backward: still those of this forward */
    ck_assert_int_eq(gsink_forward(ref, tok, tgt, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_forward(def, tok, tgt, B, T, NULL), GSINK_OK);
    same_stats(ref, def, "before backward");
    ck_assert_int_eq(gsink_backward(def, 0), GSINK_OK);
    same_stats(ref, def, "after a read and a backward");
    /* a new forward on other tokens invalidates them */
    int32_t other[B * T];
    for (int i = 0; i < B * T; i++) other[i] = (i * 7 + 1) % 53;
    ck_assert_int_eq(gsink_forward(ref, other, NULL, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_forward(def, other, NULL, B, T, NULL), GSINK_OK);
    ck_assert(!def->stats_ready);
    same_stats(ref, def, "second forward");
    gsink_model_free(ref);
    gsink_model_free(def);
}
END_TEST

START_TEST(test_window_of_the_forward)
{
    /* the backward uses the sink window of the forward, not a later setting */
    fill_ids();
    gsink_model *ref = make(false), *def = make(true);
    ck_assert_int_eq(gsink_forward(ref, tok, tgt, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_forward(def, tok, tgt, B, T, NULL), GSINK_OK);
    gsink_diag_options d;
    gsink_diag_options_init(&d);
    d.sink_window = 11;
    ck_assert_int_eq(gsink_set_diag_options(def, &d), GSINK_OK);
    ck_assert_int_eq(gsink_backward(def, 0), GSINK_OK);
    same_stats(ref, def, "window changed between forward and backward");
    gsink_model_free(ref);
    gsink_model_free(def);
}
END_TEST

START_TEST(test_no_forward)
{
    gsink_model *def = make(true);
    float M[T];
    ck_assert_int_eq(gsink_attention_column_mass(def, 0, 0, M, NULL, T), GSINK_ERR_CALL_ORDER);
    ck_assert_int_eq(gsink__attn_stats(def), GSINK_ERR_CALL_ORDER);
    gsink_model_free(def);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stats_paths");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_backward_path);
    tcase_add_test(tc, test_accumulated_backward);
    tcase_add_test(tc, test_forward_only_path);
    tcase_add_test(tc, test_window_of_the_forward);
    tcase_add_test(tc, test_no_forward);
    suite_add_tcase(s, tc);
    int failed = tu_run_suite(s, 1);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
