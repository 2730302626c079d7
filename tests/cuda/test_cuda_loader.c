/*
 * test_cuda_loader.c - device discovery and clean failure paths of the CUDA
 * loader; runs everywhere (no GPU needed).
 *
 * With no usable CUDA device: the count is 0, a model on CUDA fails with
 * GSINK_ERR_NO_DEVICE and a message, and CPU models are unaffected. With a
 * device (a GPU, or the emulated module through GSINK_CUDA_MODULE): a model
 * can be created on device 0 and an out-of-range index fails cleanly.
 */
#include <check.h>
#include <string.h>

#include "../common/testutil.h"
#include "gsink.h"
#include "internal.h"

static gsink_model *make(int device, int index, gsink_status *st)
{
    gsink_config cfg;
    gsink_config_preset("micro", &cfg);
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.device = device;
    o.device_index = index;
    o.n_threads = 1;
    gsink_model *m = (gsink_model *)0x1;
    *st = gsink_model_create(&cfg, &o, &m);
    if (*st != GSINK_OK) ck_assert_ptr_null(m);
    return m;
}

START_TEST(test_discovery)
{
    int n = -1;
    ck_assert_int_eq(gsink_device_count(GSINK_DEVICE_CUDA, &n), GSINK_OK);
    ck_assert_int_ge(n, 0);
    ck_assert_int_eq(gsink_cuda_device_count(), n);
    char buf[512];
    gsink_cuda_describe(0, buf, sizeof buf);
    ck_assert_msg(buf[0] != '\0', "describe gives a device or the reason there is none");
    gsink_status st;
    gsink_model *m = make(GSINK_DEVICE_CUDA, n, &st); /* index n never exists */
    ck_assert_int_eq(st, GSINK_ERR_NO_DEVICE);
    ck_assert(strlen(gsink_last_error()) > 0);
    gsink_backend *be = (gsink_backend *)0x1;
    ck_assert_int_eq(gsink_cuda_backend_create(-1, &be), GSINK_ERR_NO_DEVICE);
    ck_assert_ptr_null(be);
    (void)m;
}
END_TEST

START_TEST(test_model_on_cuda)
{
    int n = gsink_cuda_device_count();
    gsink_status st;
    gsink_model *m = make(GSINK_DEVICE_CUDA, 0, &st);
    if (n == 0) {
        ck_assert_int_eq(st, GSINK_ERR_NO_DEVICE);
        ck_assert_msg(strstr(gsink_last_error(), "CUDA") != NULL, "message: %s", gsink_last_error());
    } else {
        ck_assert_msg(st == GSINK_OK, "create: %s", gsink_last_error());
        int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        float loss = 0;
        ck_assert_int_eq(gsink_forward(m, tok, tok, 1, 8, &loss), GSINK_OK);
        ck_assert(loss > 0);
        gsink_model_free(m);
    }
    /* the CPU is unaffected either way */
    gsink_model *c = make(GSINK_DEVICE_CPU, 0, &st);
    ck_assert_int_eq(st, GSINK_OK);
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float loss = 0;
    ck_assert_int_eq(gsink_forward(c, tok, tok, 1, 8, &loss), GSINK_OK);
    ck_assert_int_eq(gsink_backward(c, 0), GSINK_OK);
    gsink_model_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cuda-loader");
    TCase *tc = tcase_create("loader");
    tcase_add_test(tc, test_discovery);
    tcase_add_test(tc, test_model_on_cuda);
    suite_add_tcase(s, tc);
    int failed = tu_run_suite(s, 0);
    return failed ? 1 : 0;
}
