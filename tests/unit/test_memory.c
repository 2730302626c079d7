/*
 * test_memory.c - gsink_model_memory: the backend's byte accounting (live and
 * peak), and that a forward + backward + every diagnostic needs memory linear
 * in the sequence length (no T x T buffer anywhere).
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../common/testutil.h"
#include "gsink.h"

static gsink_model *micro(int max_T)
{
    gsink_config cfg;
    ck_assert_int_eq(gsink_config_preset("micro", &cfg), GSINK_OK);
    cfg.max_seq_len = max_T;
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.seed = 5;
    o.n_threads = 1;
    gsink_model *m = NULL;
    ck_assert_int_eq(gsink_model_create(&cfg, &o, &m), GSINK_OK);
    return m;
}

/* forward + backward + the JSON report (every diagnostic) on B x T tokens */
static void full_step(gsink_model *m, int B, int T)
{
    gsink_config cfg;
    cfg.size = sizeof cfg;
    ck_assert_int_eq(gsink_model_config(m, &cfg), GSINK_OK);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * T), *tgt = malloc(sizeof(int32_t) * (size_t)B * T);
    ck_assert(tok && tgt);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 31 + 7) % cfg.vocab_size;
        tgt[i] = (i * 17 + 3) % cfg.vocab_size;
    }
    ck_assert_int_eq(gsink_forward(m, tok, tgt, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    char *js = NULL;
    ck_assert_int_eq(gsink_report_json(m, NULL, &js), GSINK_OK);
    gsink_free(js);
    free(tok);
    free(tgt);
}

START_TEST(test_accounting)
{
    uint64_t b = 0, p = 0;
    ck_assert_int_eq(gsink_model_memory(NULL, &b, &p, 0), GSINK_ERR_NULL_ARGUMENT);
    gsink_model *m = micro(64);
    ck_assert_int_eq(gsink_model_memory(m, &b, &p, 4), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_model_memory(m, NULL, NULL, 0), GSINK_OK);
    size_t numel = 0;
    ck_assert_int_eq(gsink_param_numel(m, &numel), GSINK_OK);
    ck_assert_int_eq(gsink_model_memory(m, &b, &p, 0), GSINK_OK);
    /* weights and gradients at least; no activations yet */
    ck_assert_msg(b >= 8 * (uint64_t)numel && b < 8 * (uint64_t)numel + (1u << 20), "bytes %llu for %zu params",
                  (unsigned long long)b, numel);
    ck_assert_uint_eq(p, b);
    uint64_t before = b;
    full_step(m, 2, 32);
    ck_assert_int_eq(gsink_model_memory(m, &b, &p, 0), GSINK_OK);
    ck_assert(b > before); /* activations (kept for the diagnostics) */
    ck_assert(p >= b);
    /* an optimizer adds its two moments */
    gsink_optimizer *opt = NULL;
    ck_assert_int_eq(gsink_optimizer_create(m, NULL, &opt), GSINK_OK);
    uint64_t with_opt = 0;
    ck_assert_int_eq(gsink_model_memory(m, &with_opt, NULL, GSINK_MEMORY_RESET_PEAK), GSINK_OK);
    ck_assert_uint_ge(with_opt, b + 8 * (uint64_t)numel);
    ck_assert_int_eq(gsink_model_memory(m, NULL, &p, 0), GSINK_OK);
    ck_assert_uint_eq(p, with_opt); /* the reset peak starts from the live bytes */
    gsink_optimizer_free(opt);
    ck_assert_int_eq(gsink_model_memory(m, &b, &p, 0), GSINK_OK);
    ck_assert_uint_le(b + 8 * (uint64_t)numel, with_opt); /* freed: live drops, peak stays */
    ck_assert_uint_eq(p, with_opt);
    gsink_model_free(m);
}
END_TEST

/* Peak bytes of a full step above the freshly created model's. */
static uint64_t step_peak(int B, int T)
{
    gsink_model *m = micro(512);
    uint64_t base = 0, peak = 0;
    ck_assert_int_eq(gsink_model_memory(m, &base, NULL, GSINK_MEMORY_RESET_PEAK), GSINK_OK);
    full_step(m, B, T);
    ck_assert_int_eq(gsink_model_memory(m, NULL, &peak, 0), GSINK_OK);
    gsink_model_free(m);
    return peak - base;
}

START_TEST(test_linear_in_seq_len)
{
    /* memory a + b T (a >= 0) gives A(4T) <= 4 A(T); any c T^2 term adds
     * c (16 - 4) T^2 to the left side only */
    uint64_t a1 = step_peak(1, 128), a4 = step_peak(1, 512);
    ck_assert_msg(a4 <= 4 * a1 && a4 > 2 * a1, "peak %llu bytes at T=128, %llu at T=512",
                  (unsigned long long)a1, (unsigned long long)a4);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("memory");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_accounting);
    tcase_add_test(tc, test_linear_in_seq_len);
    suite_add_tcase(s, tc);
    int failed = tu_run_suite(s, 1);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
