/*
 * test_errors.c - bad input gets its own status and a message, and the handle
 * stays usable (a good call afterwards gives the same result as before).
 */
#include <check.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/testutil.h"
#include "gsink.h"

static gsink_model *m;
static int32_t tok[2 * 16], tgt[2 * 16];
static float ref_loss;

static void setup(void)
{
    gsink_config c;
    gsink_config_preset("tiny", &c);
    c.max_seq_len = 16;
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.n_threads = 1;
    ck_assert_int_eq(gsink_model_create(&c, &o, &m), GSINK_OK);
    for (int i = 0; i < 32; i++) {
        tok[i] = (i * 37) % 512;
        tgt[i] = (i * 11 + 1) % 512;
    }
    ck_assert_int_eq(gsink_forward(m, tok, tgt, 2, 16, &ref_loss), GSINK_OK);
}

static void teardown(void) { gsink_model_free(m); }

/* The model still works and gives the same loss. */
static void assert_usable(void)
{
    float loss;
    ck_assert_int_eq(gsink_forward(m, tok, tgt, 2, 16, &loss), GSINK_OK);
    ck_assert(loss == ref_loss);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
}

#define EXPECT(call, status)                                                         \
    do {                                                                             \
        gsink_status st_ = (call);                                                   \
        ck_assert_msg(st_ == (status), "%s returned %d (%s), expected %d", #call, st_, \
                      gsink_last_error(), (status));                                 \
        ck_assert_msg(gsink_last_error()[0] != '\0', "%s left no message", #call);    \
    } while (0)

START_TEST(test_null_arguments)
{
    EXPECT(gsink_forward(NULL, tok, tgt, 2, 16, NULL), GSINK_ERR_NULL_ARGUMENT);
    EXPECT(gsink_forward(m, NULL, tgt, 2, 16, NULL), GSINK_ERR_NULL_ARGUMENT);
    ck_assert(strstr(gsink_model_errmsg(m), "tokens") != NULL);
    EXPECT(gsink_backward(NULL, 0), GSINK_ERR_NULL_ARGUMENT);
    gsink_model *x = (gsink_model *)0x1;
    EXPECT(gsink_model_create(NULL, NULL, &x), GSINK_ERR_NULL_ARGUMENT);
    ck_assert_ptr_null(x); /* *out is NULL on failure */
    EXPECT(gsink_get_logits(m, NULL, 10), GSINK_ERR_NULL_ARGUMENT);
    EXPECT(gsink_get_param(m, NULL, NULL, 0), GSINK_ERR_NULL_ARGUMENT);
    EXPECT(gsink_config_preset(NULL, NULL), GSINK_ERR_NULL_ARGUMENT);
    EXPECT(gsink_device_count(GSINK_DEVICE_CPU, NULL), GSINK_ERR_NULL_ARGUMENT);
    gsink_model_free(NULL); /* allowed */
    assert_usable();
}
END_TEST

START_TEST(test_token_ids_out_of_range)
{
    int32_t bad[32];
    memcpy(bad, tok, sizeof bad);
    bad[17] = 512;
    EXPECT(gsink_forward(m, bad, tgt, 2, 16, NULL), GSINK_ERR_TOKEN_OUT_OF_RANGE);
    ck_assert(strstr(gsink_model_errmsg(m), "tokens[17]") != NULL);
    bad[17] = -3;
    EXPECT(gsink_forward(m, bad, tgt, 2, 16, NULL), GSINK_ERR_TOKEN_OUT_OF_RANGE);
    memcpy(bad, tgt, sizeof bad);
    bad[0] = 600;
    EXPECT(gsink_forward(m, tok, bad, 2, 16, NULL), GSINK_ERR_TOKEN_OUT_OF_RANGE);
    /* a failed validation keeps the previous forward: backward still works */
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    assert_usable();
}
END_TEST

START_TEST(test_sequence_and_batch_sizes)
{
    EXPECT(gsink_forward(m, tok, tgt, 1, 17, NULL), GSINK_ERR_SEQ_TOO_LONG);
    EXPECT(gsink_forward(m, tok, tgt, 0, 16, NULL), GSINK_ERR_INVALID_ARGUMENT);
    EXPECT(gsink_forward(m, tok, tgt, 2, 0, NULL), GSINK_ERR_INVALID_ARGUMENT);
    EXPECT(gsink_forward(m, tok, tgt, -1, 16, NULL), GSINK_ERR_INVALID_ARGUMENT);
    EXPECT(gsink_forward(m, tok, tgt, 1 << 30, 16, NULL), GSINK_ERR_OUT_OF_MEMORY);
    assert_usable();
}
END_TEST

START_TEST(test_absurd_model_sizes_are_out_of_memory)
{
    gsink_config c;
    gsink_config_init(&c);
    c.vocab_size = 1 << 22;
    c.d_model = 1 << 20;
    c.n_heads = 4;
    c.n_kv_heads = 4;
    c.d_head = 16;
    gsink_model *big = (gsink_model *)0x1;
    EXPECT(gsink_model_create(&c, NULL, &big), GSINK_ERR_OUT_OF_MEMORY);
    ck_assert_ptr_null(big);
    assert_usable();
}
END_TEST

START_TEST(test_inconsistent_configs)
{
    gsink_config c;
    gsink_model *x = NULL;
    gsink_config_init(&c);
    c.n_heads = 6;
    c.n_kv_heads = 4;
    EXPECT(gsink_model_create(&c, NULL, &x), GSINK_ERR_BAD_CONFIG);
    ck_assert(strstr(gsink_last_error(), "multiple") != NULL);
    gsink_config_init(&c);
    c.d_head = 7;
    EXPECT(gsink_model_create(&c, NULL, &x), GSINK_ERR_BAD_CONFIG);
    gsink_config_init(&c);
    c.vocab_size = 0;
    EXPECT(gsink_model_create(&c, NULL, &x), GSINK_ERR_BAD_CONFIG);
    gsink_config_init(&c);
    c.rms_eps = -1;
    EXPECT(gsink_model_create(&c, NULL, &x), GSINK_ERR_BAD_CONFIG);
    gsink_config_init(&c);
    c.size = 8;
    EXPECT(gsink_model_create(&c, NULL, &x), GSINK_ERR_BAD_CONFIG);
    EXPECT(gsink_config_preset("paper-7b", &c), GSINK_ERR_UNKNOWN_NAME);
    gsink_config_init(&c);
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.device = GSINK_DEVICE_CPU;
    o.device_index = 3;
    EXPECT(gsink_model_create(&c, &o, &x), GSINK_ERR_NO_DEVICE);
    int n = -1;
    ck_assert_int_eq(gsink_device_count(GSINK_DEVICE_CUDA, &n), GSINK_OK);
    if (n == 0) {
        o.device = GSINK_DEVICE_CUDA;
        o.device_index = 0;
        EXPECT(gsink_model_create(&c, &o, &x), GSINK_ERR_NO_DEVICE);
    }
    o.device = GSINK_DEVICE_CPU;
    o.device_index = 0;
    o.precision = GSINK_PRECISION_TF32;
    EXPECT(gsink_model_create(&c, &o, &x), GSINK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(gsink_last_error(), "TF32 precision needs a CUDA device"));
    o.precision = GSINK_PRECISION_BF16;
    EXPECT(gsink_model_create(&c, &o, &x), GSINK_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(gsink_last_error(), "BF16 precision needs a CUDA device"));
    o.precision = 9;
    EXPECT(gsink_model_create(&c, &o, &x), GSINK_ERR_INVALID_ARGUMENT);
    if (n == 0) {
        char buf[128];
        EXPECT(gsink_device_describe(GSINK_DEVICE_CUDA, 0, buf, sizeof buf), GSINK_ERR_NO_DEVICE);
        ck_assert(strlen(gsink_last_error()) > strlen("no CUDA device 0: "));
    }
    ck_assert_ptr_null(x);
    assert_usable();
}
END_TEST

START_TEST(test_call_order)
{
    gsink_config c;
    gsink_config_init(&c);
    gsink_model *fresh;
    ck_assert_int_eq(gsink_model_create(&c, NULL, &fresh), GSINK_OK);
    EXPECT(gsink_backward(fresh, 0), GSINK_ERR_CALL_ORDER);
    float buf[4];
    EXPECT(gsink_get_logits(fresh, buf, 4), GSINK_ERR_CALL_ORDER);
    EXPECT(gsink_get_activation(fresh, 0, GSINK_SITE_Q, buf, 4), GSINK_ERR_CALL_ORDER);
    ck_assert_int_eq(gsink_forward(fresh, tok, NULL, 1, 16, NULL), GSINK_OK);
    EXPECT(gsink_backward(fresh, 0), GSINK_ERR_NO_TARGETS);
    EXPECT(gsink_get_gradient(fresh, 0, GSINK_SITE_Q, buf, 4), GSINK_ERR_CALL_ORDER);
    int32_t ignored[16];
    for (int i = 0; i < 16; i++) ignored[i] = -1;
    ck_assert_int_eq(gsink_forward(fresh, tok, ignored, 1, 16, NULL), GSINK_OK);
    EXPECT(gsink_backward(fresh, 0), GSINK_ERR_NO_TARGETS);
    EXPECT(gsink_backward(fresh, 0x80), GSINK_ERR_INVALID_ARGUMENT);
    gsink_model_free(fresh);
    assert_usable();
}
END_TEST

START_TEST(test_names_sites_and_buffers)
{
    float small[4];
    EXPECT(gsink_get_param(m, "model.layers.99.mlp.up_proj.weight", small, 4), GSINK_ERR_UNKNOWN_NAME);
    EXPECT(gsink_get_param(m, "model.norm.weight", small, 4), GSINK_ERR_BUFFER_TOO_SMALL);
    EXPECT(gsink_get_logits(m, small, 4), GSINK_ERR_BUFFER_TOO_SMALL);
    EXPECT(gsink_get_activation(m, 0, (gsink_site)99, small, 4), GSINK_ERR_UNKNOWN_SITE);
    EXPECT(gsink_get_activation(m, 2, GSINK_SITE_Q, small, 4), GSINK_ERR_OUT_OF_RANGE);
    EXPECT(gsink_get_activation(m, -1, GSINK_SITE_Q, small, 4), GSINK_ERR_OUT_OF_RANGE);
    gsink_site s;
    int layer;
    EXPECT(gsink_site_parse("resid_sideways", &s, &layer), GSINK_ERR_UNKNOWN_SITE);
    ck_assert_int_eq(gsink_site_parse("blocks.3.hook_resid_post", &s, &layer), GSINK_OK);
    ck_assert_int_eq(s, GSINK_SITE_RESID_OUT);
    ck_assert_int_eq(layer, 3);
    ck_assert_int_eq(gsink_site_parse("attn_norm_out", &s, &layer), GSINK_OK);
    ck_assert_int_eq(s, GSINK_SITE_ATTN_NORM_OUT);
    ck_assert_int_eq(layer, -1);
    for (int i = 0; i < GSINK_SITE_COUNT; i++) {
        ck_assert_int_eq(gsink_site_parse(gsink_site_name((gsink_site)i), &s, NULL), GSINK_OK);
        ck_assert_int_eq(s, i);
    }
    ck_assert_ptr_null(gsink_site_name(GSINK_SITE_COUNT));
    /* a wrong-length parameter write is refused and the weights are kept */
    float g[64];
    EXPECT(gsink_set_param(m, "model.norm.weight", g, 65), GSINK_ERR_SHAPE_MISMATCH);
    assert_usable();
}
END_TEST

START_TEST(test_vscale_bad_input)
{
    gsink_vscale_options vo;
    gsink_vscale_options_init(&vo);
    vo.sigma = 0.0f;
    EXPECT(gsink_vscale_enable(m, &vo), GSINK_ERR_INVALID_ARGUMENT);
    vo.sigma = -0.02f;
    EXPECT(gsink_vscale_enable(m, &vo), GSINK_ERR_INVALID_ARGUMENT);
    vo.sigma = NAN;
    EXPECT(gsink_vscale_enable(m, &vo), GSINK_ERR_INVALID_ARGUMENT);
    gsink_vscale_options_init(&vo);
    vo.mode = 7;
    EXPECT(gsink_vscale_enable(m, &vo), GSINK_ERR_INVALID_ARGUMENT);
    float th[4];
    EXPECT(gsink_vscale_get_theta(m, th, 4), GSINK_ERR_CALL_ORDER); /* still off */
    gsink_vscale_options_init(&vo);
    ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
    EXPECT(gsink_vscale_get_theta(m, th, 3), GSINK_ERR_BUFFER_TOO_SMALL);
    th[0] = INFINITY;
    EXPECT(gsink_vscale_set_theta(m, th, 4), GSINK_ERR_NON_FINITE);
    vo.mode = GSINK_VSCALE_OFF;
    ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
    assert_usable();
}
END_TEST

START_TEST(test_status_strings)
{
    for (int s = 0; s <= GSINK_ERR_BUSY; s++) {
        const char *str = gsink_status_str((gsink_status)s);
        ck_assert_ptr_nonnull(str);
        ck_assert(strcmp(str, "unknown status") != 0);
    }
    ck_assert_str_eq(gsink_status_str((gsink_status)1000), "unknown status");
    ck_assert_int_eq(gsink_version_number(), GSINK_VERSION_NUMBER);
    ck_assert_str_eq(gsink_version_string(), GSINK_VERSION_STRING);
}
END_TEST

/* An older caller's smaller struct: *_init_size writes only the bytes it is
 * given, and records them in ->size; a newer caller's larger struct gets the
 * library's sizeof. */
START_TEST(test_init_respects_caller_struct_size)
{
    union {
        gsink_model_options o;
        unsigned char raw[sizeof(gsink_model_options) + 64];
    } u;
    memset(&u, 0xAB, sizeof u);
    size_t small = offsetof(gsink_model_options, seed);
    gsink_model_options_init_size(&u.o, small);
    ck_assert_uint_eq(u.o.size, small);
    for (size_t i = small; i < sizeof u.raw; i++) ck_assert_int_eq(u.raw[i], 0xAB);
    memset(&u, 0xAB, sizeof u);
    gsink_model_options_init_size(&u.o, sizeof u.raw);
    ck_assert_uint_eq(u.o.size, sizeof(gsink_model_options));
    for (size_t i = sizeof(gsink_model_options); i < sizeof u.raw; i++) ck_assert_int_eq(u.raw[i], 0xAB);
    /* a model created from the short struct uses defaults for the rest */
    gsink_config c;
    gsink_config_preset("micro", &c);
    memset(&u, 0xAB, sizeof u);
    gsink_model_options_init_size(&u.o, small);
    gsink_model *x;
    ck_assert_int_eq(gsink_model_create(&c, &u.o, &x), GSINK_OK);
    gsink_model_free(x);
    /* the same for configs filled from a preset */
    union {
        gsink_config c;
        unsigned char raw[sizeof(gsink_config) + 16];
    } uc;
    memset(&uc, 0xCD, sizeof uc);
    ck_assert_int_eq(gsink_config_preset_size("tiny", &uc.c, offsetof(gsink_config, rms_eps)), GSINK_OK);
    ck_assert_int_eq(uc.c.d_model, 64);
    for (size_t i = offsetof(gsink_config, rms_eps); i < sizeof uc.raw; i++) ck_assert_int_eq(uc.raw[i], 0xCD);
    gsink_diag_options d;
    d.size = 0;
    EXPECT(gsink_get_diag_options(m, &d), GSINK_ERR_INVALID_ARGUMENT);
}
END_TEST

/* Thread counts are bounded by gsink_max_threads() (2 per CPU of the
 * process's affinity mask): larger counts are refused at create and by
 * set_threads, the model stays usable, and the maximum itself works. */
START_TEST(test_thread_limit)
{
    int max = gsink_max_threads();
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    ck_assert_int_eq(sched_getaffinity(0, sizeof set, &set), 0);
    ck_assert_int_eq(max, 2 * CPU_COUNT(&set));
    ck_assert_int_le(max, 2 * online);
    const int bad[] = {max + 1, 1000, 5000, INT_MAX, -1, INT_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (bad[i] >= 0 && bad[i] <= max) continue;
        EXPECT(gsink_model_set_threads(m, bad[i]), GSINK_ERR_INVALID_ARGUMENT);
        if (bad[i] > 0) ck_assert_msg(strstr(gsink_model_errmsg(m), "limit") != NULL, "%s", gsink_model_errmsg(m));
        assert_usable(); /* still one thread: the very same loss */
    }
    /* the same bound at creation */
    gsink_config c;
    gsink_config_preset("tiny", &c);
    c.max_seq_len = 16;
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.n_threads = max + 1;
    gsink_model *x = (gsink_model *)0x1;
    EXPECT(gsink_model_create(&c, &o, &x), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(x);
    ck_assert(strstr(gsink_last_error(), "limit") != NULL);
    /* the maximum and the default (0 = one per CPU) run a forward + backward
     * with the same numbers as one thread */
    const int good[] = {max, 0};
    for (size_t i = 0; i < 2; i++) {
        float loss;
        ck_assert_int_eq(gsink_model_set_threads(m, good[i]), GSINK_OK);
        ck_assert_int_eq(gsink_forward(m, tok, tgt, 2, 16, &loss), GSINK_OK);
        ck_assert(tu_close(loss, ref_loss, 1e-6, 0));
        ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    }
    o.n_threads = max;
    ck_assert_int_eq(gsink_model_create(&c, &o, &x), GSINK_OK);
    float loss;
    ck_assert_int_eq(gsink_forward(x, tok, tgt, 2, 16, &loss), GSINK_OK);
    ck_assert(tu_close(loss, ref_loss, 1e-6, 0));
    gsink_model_free(x);
    /* the limit follows the affinity mask: one CPU allows 2 threads */
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &set)) {
            CPU_SET(i, &one);
            break;
        }
    ck_assert_int_eq(sched_setaffinity(0, sizeof one, &one), 0);
    ck_assert_int_eq(gsink_max_threads(), 2);
    EXPECT(gsink_model_set_threads(m, 3), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_model_set_threads(m, 2), GSINK_OK);
    ck_assert_int_eq(gsink_forward(m, tok, tgt, 2, 16, &loss), GSINK_OK);
    ck_assert_int_eq(sched_setaffinity(0, sizeof set, &set), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("errors");
    TCase *tc = tcase_create("errors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_token_ids_out_of_range);
    tcase_add_test(tc, test_sequence_and_batch_sizes);
    tcase_add_test(tc, test_absurd_model_sizes_are_out_of_memory);
    tcase_add_test(tc, test_inconsistent_configs);
    tcase_add_test(tc, test_call_order);
    tcase_add_test(tc, test_names_sites_and_buffers);
    tcase_add_test(tc, test_vscale_bad_input);
    tcase_add_test(tc, test_status_strings);
    tcase_add_test(tc, test_init_respects_caller_struct_size);
    tcase_add_test(tc, test_thread_limit);
    suite_add_tcase(s, tc);
    int failed = tu_run_suite(s, 1);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
