/*
 * test_format.c - the report's number formatter (gsink__format_g9) against
 * snprintf("%.9g"): the same text for every float bit pattern class the
 * report prints (random floats over the whole exponent range, both signs),
 * random doubles, powers of ten and their neighbours, the switch points
 * between fixed and exponential notation, exact ties (rounded to even, as
 * glibc does) and zeros.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static void same(double v)
{
    char want[64], got[64];
    snprintf(want, sizeof want, "%.9g", v);
    int n = gsink__format_g9(got, v);
    ck_assert_msg(strcmp(want, got) == 0, "%.17g: printf \"%s\", format_g9 \"%s\"", v, want, got);
    ck_assert_int_eq(n, (int)strlen(got));
    ck_assert_int_le(n, 16);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

START_TEST(test_floats)
{
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)next();
        float f;
        memcpy(&f, &u, 4);
        if (isfinite(f)) same(f);
    }
}
END_TEST

START_TEST(test_doubles)
{
    for (int i = 0; i < 200000; i++) {
        uint64_t u = next();
        double d;
        memcpy(&d, &u, 8);
        if (isfinite(d)) same(d);
        /* values of a report's size: 1e-12 .. 1e12 */
        same(ldexp((double)(next() >> 11), -53) * pow(10.0, (double)((int)(next() % 25) - 12)));
    }
}
END_TEST

START_TEST(test_edges)
{
    const double v[] = {0.0, -0.0, 1.0, -1.0, 0.1, 0.5, 2.0, 10.0, 1e-4, 9.99999999e-5, 1e-5, 0.0001234567891,
                        123456789.0, 999999999.0, 999999999.5, 1e9, 1234567890.0, 1e-19, 1e-20, 1e27, 1e28,
                        9.999999995, 9.9999999949, 12345678.25, 12345678.75, 0.125, 1.5e-7, 3.0e38, 1.17549435e-38,
                        (double)FLT_MIN, (double)FLT_MAX, DBL_MIN, DBL_MAX, 4.9e-324, 65504.0, 3.14159265358979};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        same(v[i]);
        same(-v[i]);
    }
    for (int k = -30; k <= 30; k++) {
        double p = pow(10.0, k);
        same(p);
        same(nextafter(p, 0.0));
        same(nextafter(p, INFINITY));
        same((float)p);
        same(nextafterf((float)p, 0.0f));
        same(nextafterf((float)p, INFINITY));
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("format");
    TCase *tc = tcase_create("format");
    tcase_add_test(tc, test_floats);
    tcase_add_test(tc, test_doubles);
    tcase_add_test(tc, test_edges);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? 1 : 0;
}
