/*
 * bench_fwd_bwd.c - median time of one forward+backward (mean cross-entropy,
 * exact gradients of every parameter and site) for a preset, by default the
 * 21M benchmark configuration (bench-21m: V8192 d512 L4 H8 KV8 ff1408) at
 * B4 T256.
 *
 *   bench_fwd_bwd [--preset NAME] [--batch B] [--seq T] [--iters N]
 *                 [--warmup W] [--threads N] [--seed S]
 *
 * Prints the device description (BLIS kernel family and threads), every
 * iteration's time, and a final line
 *   gsink fwd+bwd: median M ms, min m ms, tokens/s X
 * that benchmarks/run_fwd_bwd.sh parses.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gsink.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_fwd_bwd [--preset NAME] [--batch B] [--seq T] [--iters N] "
                    "[--warmup W] [--threads N] [--seed S]\n");
}

int main(int argc, char **argv)
{
    const char *preset = "bench-21m";
    int B = 4, T = 256, iters = 10, warmup = 2, threads = 0, seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v) bad = 1;
        else if (!strcmp(a, "--preset")) preset = v;
        else if (!strcmp(a, "--batch")) bad = parse_int(v, 1, 1 << 16, &B);
        else if (!strcmp(a, "--seq")) bad = parse_int(v, 1, 1 << 20, &T);
        else if (!strcmp(a, "--iters")) bad = parse_int(v, 1, 100000, &iters);
        else if (!strcmp(a, "--warmup")) bad = parse_int(v, 0, 100000, &warmup);
        else if (!strcmp(a, "--threads")) bad = parse_int(v, 0, 4096, &threads);
        else if (!strcmp(a, "--seed")) bad = parse_int(v, 0, 1 << 30, &seed);
        else bad = 1;
        if (bad) {
            usage();
            return 2;
        }
        i++;
    }

    gsink_config cfg;
    cfg.size = sizeof cfg;
    if (gsink_config_preset(preset, &cfg) != GSINK_OK) {
        fprintf(stderr, "bench_fwd_bwd: %s\n", gsink_last_error());
        return 1;
    }
    gsink_model_options opts;
    gsink_model_options_init(&opts);
    opts.n_threads = threads;
    opts.seed = (uint64_t)seed;
    gsink_model *m = NULL;
    if (gsink_model_create(&cfg, &opts, &m) != GSINK_OK) {
        fprintf(stderr, "bench_fwd_bwd: model: %s\n", gsink_last_error());
        return 1;
    }

    size_t n = (size_t)B * (size_t)T;
    int32_t *tok = malloc((n + 1) * sizeof *tok);
    double *times = malloc((size_t)iters * sizeof *times);
    if (!tok || !times) {
        fprintf(stderr, "bench_fwd_bwd: out of memory\n");
        return 1;
    }
    uint64_t s = 0x9E3779B97F4A7C15ull ^ (uint64_t)seed;
    for (size_t i = 0; i <= n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((s >> 33) % (uint64_t)cfg.vocab_size);
    }

    char dev[256];
    gsink_device_describe(GSINK_DEVICE_CPU, 0, dev, sizeof dev);
    size_t numel = 0;
    gsink_param_numel(m, &numel);
    printf("gsink %s | %s | params %.2fM | B%d T%d\n", gsink_version_string(), dev,
           (double)numel / 1e6, B, T);

    float loss = 0.0f;
    for (int it = -warmup; it < iters; it++) {
        double t0 = now_s();
        gsink_status st = gsink_forward(m, tok, tok + 1, B, T, &loss);
        if (st == GSINK_OK) st = gsink_backward(m, 0);
        double dt = now_s() - t0;
        if (st != GSINK_OK) {
            fprintf(stderr, "bench_fwd_bwd: %s\n", gsink_model_errmsg(m));
            return 1;
        }
        if (it >= 0) {
            times[it] = dt;
            printf("  iter %2d: %8.2f ms  loss %.4f\n", it, 1e3 * dt, loss);
        }
    }
    qsort(times, (size_t)iters, sizeof *times, cmp_double);
    double med = iters % 2 ? times[iters / 2] : 0.5 * (times[iters / 2 - 1] + times[iters / 2]);
    printf("gsink fwd+bwd: median %.2f ms, min %.2f ms, tokens/s %.0f\n", 1e3 * med,
           1e3 * times[0], (double)n / med);

    free(times);
    free(tok);
    gsink_model_free(m);
    return 0;
}
