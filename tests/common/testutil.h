/* testutil.h - small helpers shared by the C test suites. */
#ifndef GSINK_TESTUTIL_H
#define GSINK_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Deterministic uniform values in [-scale, scale]. */
static inline void tu_fill(float *x, size_t n, uint64_t seed, float scale)
{
    uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = scale * (float)((double)(s >> 11) * 0x1.0p-53 * 2.0 - 1.0);
    }
}

static inline double tu_dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* |a - b| <= atol + rtol * max(|a|, |b|) */
static inline int tu_close(double a, double b, double rtol, double atol)
{
    return fabs(a - b) <= atol + rtol * fmax(fabs(a), fabs(b));
}

/* Runs a check suite (in this process when fork is 0) and frees it; the
 * number of failed tests. */
static inline int tu_run_suite(Suite *s, int fork)
{
    SRunner *sr = srunner_create(s);
    if (!fork) srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

#endif
