/*
 * bench_cuda.c - CUDA backend benchmarks (needs a GPU; see docs/cuda.md).
 *
 *   bench_cuda model [--preset paper-0.1b] [--batch 8] [--seq 1024] [--iters 10]
 *                    [--warmup 3] [--tf32 | --bf16] [--peak-tflops 67] [--diag]
 *                    [--discard-site-grads]
 *       median time of one forward+backward step of the whole model (mean
 *       cross-entropy, gradients of every parameter and site, attention column
 *       statistics summed in the backward), tokens/s and MFU against --peak-tflops (dense FP32,
 *       TF32 or BF16 peak of the GPU; H100 SXM: 67 FP32, 495 TF32, 989 BF16).
 *       --tf32 / --bf16 create the model with GSINK_PRECISION_TF32 / _BF16.
 *       --diag then computes every diagnostic of the last step (the JSON
 *       report) and prints its time. --discard-site-grads creates the model
 *       with GSINK_MODEL_DISCARD_SITE_GRADS (no per-layer site gradients).
 *
 *   bench_cuda attention [--batch 4] [--heads 16] [--dh 64] [--seq 1024,2048,4096,8192]
 *                        [--iters 10] [--tf32 | --bf16]
 *       fused causal attention alone: forward, backward without and with the
 *       column statistics summed inside the backward kernel (their overhead
 *       as a share of forward + backward), the stand-alone statistics pass
 *       that forward-only analyses use, and TFLOP/s with the FlashAttention
 *       convention (causal forward 2*B*H*T^2*dh FLOPs, backward 2.5x forward).
 *       With --bf16, GSINK_CUDA_ATTENTION=mma (or mma4) in the environment
 *       selects the mma.sync kernels (cuda/attention_mma.cu, blocks of 8 or 4
 *       warps) instead of the wmma ones; the "device:" line then ends in
 *       ", attention mma" (", attention mma (4 warps)").
 *
 * Output lines are "key: value" pairs so benchmarks/cuda/run_cuda_bench.sh can
 * collect them next to the PyTorch numbers of torch_bench.py.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_module.h"
#include "gsink.h"
#include "internal.h"

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

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Waits for all queued device work (a 4-byte download synchronises the stream). */
static int sync_backend(gsink_backend *be, const void *dev_ptr)
{
    float x;
    return be->iface->download(be, &x, dev_ptr, sizeof x) == GSINK_OK ? 0 : -1;
}

static const char *arg_str(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return def;
}

static int arg_int(int argc, char **argv, const char *name, int def)
{
    const char *s = arg_str(argc, argv, name, NULL);
    return s ? atoi(s) : def;
}

static int arg_flag(int argc, char **argv, const char *name)
{
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], name) == 0) return 1;
    return 0;
}

/* GSINK_CUDA_MATH_* from --tf32 / --bf16 (FP32 without either); -1 for both. */
static int arg_math(int argc, char **argv)
{
    int tf32 = arg_flag(argc, argv, "--tf32"), bf16 = arg_flag(argc, argv, "--bf16");
    if (tf32 && bf16) return -1;
    return tf32 ? GSINK_CUDA_MATH_TF32 : bf16 ? GSINK_CUDA_MATH_BF16 : GSINK_CUDA_MATH_FP32;
}

static const char *math_name(int math)
{
    return math == GSINK_CUDA_MATH_TF32 ? "tf32" : math == GSINK_CUDA_MATH_BF16 ? "bf16" : "fp32";
}

static int bench_model(int argc, char **argv)
{
    const char *preset = arg_str(argc, argv, "--preset", "paper-0.1b");
    int B = arg_int(argc, argv, "--batch", 8), T = arg_int(argc, argv, "--seq", 1024);
    int iters = arg_int(argc, argv, "--iters", 10), warm = arg_int(argc, argv, "--warmup", 3);
    int math = arg_math(argc, argv);
    int diag = arg_flag(argc, argv, "--diag");
    int discard = arg_flag(argc, argv, "--discard-site-grads");
    double peak = atof(arg_str(argc, argv, "--peak-tflops", "0"));
    if (B <= 0 || T <= 0 || iters <= 0 || iters > 1000 || warm < 0 || math < 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    gsink_config cfg;
    if (gsink_config_preset(preset, &cfg) != GSINK_OK) {
        fprintf(stderr, "unknown preset %s\n", preset);
        return 2;
    }
    if (cfg.max_seq_len < T) cfg.max_seq_len = T;
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.device = GSINK_DEVICE_CUDA;
    o.precision = math; /* gsink_precision and GSINK_CUDA_MATH_* share their values */
    if (discard) o.flags |= GSINK_MODEL_DISCARD_SITE_GRADS;
    gsink_model *m = NULL;
    if (gsink_model_create(&cfg, &o, &m) != GSINK_OK) {
        fprintf(stderr, "model on CUDA: %s\n", gsink_last_error());
        return 1;
    }
    char desc[512];
    m->be->iface->describe(m->be, desc, sizeof desc);
    size_t n = (size_t)B * T, np = 0;
    gsink_param_numel(m, &np);
    int32_t *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    double *times = malloc(sizeof(double) * (size_t)iters);
    if (!tok || !tgt || !times) return 1;
    uint64_t s = 42;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((s >> 33) % (uint64_t)cfg.vocab_size);
    }
    for (size_t i = 0; i < n; i++) tgt[i] = (i + 1) % (size_t)T ? tok[i + 1] : -1;
    int rc = 0;
    float loss = 0;
    for (int it = 0; it < warm + iters && !rc; it++) {
        double t0 = now_s();
        if (gsink_forward(m, tok, tgt, B, T, &loss) != GSINK_OK ||
            gsink_backward(m, 0) != GSINK_OK || sync_backend(m->be, m->grad_mem)) {
            fprintf(stderr, "step failed: %s\n", gsink_model_errmsg(m));
            rc = 1;
            break;
        }
        if (it >= warm) times[it - warm] = now_s() - t0;
    }
    if (!rc) {
        double med = median(times, iters);
        /* 6 N per token for the matrices plus causal attention
         * (QK^T and PV, forward and backward: 6 * L * T * H * dh per token). */
        double flops = 6.0 * (double)np * (double)n +
                       6.0 * cfg.n_layers * (double)T * cfg.n_heads * cfg.d_head * (double)n;
        printf("device: %s\n", desc);
        printf("config: preset %s B %d T %d params %zu precision %s%s\n", preset, B, T, np,
               math_name(math), discard ? " discard-site-grads" : "");
        printf("loss: %.6f\n", loss);
        printf("step_ms_median: %.3f\n", med * 1e3);
        printf("tokens_per_s: %.1f\n", (double)n / med);
        printf("model_tflops: %.2f\n", flops / med * 1e-12);
        if (peak > 0) printf("mfu_percent: %.2f\n", 100.0 * flops / med * 1e-12 / peak);
    }
    if (!rc && diag) {
        /* every diagnostic of the last step: the JSON report reads the column
         * statistics summed by the backward, gradients and activations */
        double t0 = now_s();
        char *js = NULL;
        if (gsink_report_json(m, NULL, &js) != GSINK_OK) {
            fprintf(stderr, "report: %s\n", gsink_model_errmsg(m));
            rc = 1;
        } else {
            printf("diag_report_ms: %.3f\n", (now_s() - t0) * 1e3);
            printf("diag_report_bytes: %zu\n", strlen(js));
            gsink_free(js);
        }
    }
    if (!rc) {
        /* the model's device buffers (weights, gradients, activations,
         * statistics, scratch); nvidia-smi adds the context and cuBLAS */
        uint64_t live = 0, peak_b = 0;
        if (gsink_model_memory(m, &live, &peak_b, 0) == GSINK_OK)
            printf("model_memory_mib: %.1f\nmodel_peak_memory_mib: %.1f\n", live / 1048576.0, peak_b / 1048576.0);
    }
    free(tok);
    free(tgt);
    free(times);
    gsink_model_free(m);
    return rc;
}

static int bench_attention(int argc, char **argv)
{
    int B = arg_int(argc, argv, "--batch", 4), H = arg_int(argc, argv, "--heads", 16);
    int dh = arg_int(argc, argv, "--dh", 64), iters = arg_int(argc, argv, "--iters", 10);
    const char *seqs = arg_str(argc, argv, "--seq", "1024,2048,4096,8192");
    if (B <= 0 || H <= 0 || dh <= 0 || iters <= 0 || iters > 1000) return 2;
    gsink_backend *be = NULL;
    if (gsink_cuda_backend_create(0, &be) != GSINK_OK) {
        fprintf(stderr, "CUDA backend: %s\n", gsink_last_error());
        return 1;
    }
    int math = arg_math(argc, argv);
    if (math < 0 || gsink__cuda_set_math(be, math) != GSINK_OK) {
        fprintf(stderr, "math mode: %s\n", math < 0 ? "--tf32 and --bf16 exclude each other" : be->err);
        be->iface->destroy(be);
        return math < 0 ? 2 : 1;
    }
    char desc[512];
    be->iface->describe(be, desc, sizeof desc);
    printf("device: %s\n", desc);
    double *tf = malloc(sizeof(double) * (size_t)iters), *ts = malloc(sizeof(double) * (size_t)iters);
    double *tb = malloc(sizeof(double) * (size_t)iters), *tbs = malloc(sizeof(double) * (size_t)iters);
    int rc = 0;
    char list[256];
    snprintf(list, sizeof list, "%s", seqs);
    for (char *tokp = strtok(list, ","); tokp && !rc; tokp = strtok(NULL, ",")) {
        int T = atoi(tokp);
        if (T <= 0) continue;
        size_t nq = (size_t)B * T * H * dh, ns = (size_t)B * H * T;
        float *q = NULL, *k = NULL, *v = NULL, *y = NULL, *lse = NULL, *st = NULL, *dy = NULL,
              *dq = NULL, *dk = NULL, *dv = NULL;
        float **bufs[] = {&q, &k, &v, &y, &dy, &dq, &dk, &dv};
        for (int i = 0; i < 8 && !rc; i++)
            if (be->iface->alloc(be, nq * sizeof(float), (void **)bufs[i]) != GSINK_OK) rc = 1;
        if (!rc && be->iface->alloc(be, ns * sizeof(float), (void **)&lse) != GSINK_OK) rc = 1;
        if (!rc && be->iface->alloc(be, 3 * ns * sizeof(float), (void **)&st) != GSINK_OK) rc = 1;
        if (rc) {
            fprintf(stderr, "T=%d: %s\n", T, be->err);
            break;
        }
        float *host = malloc(nq * sizeof(float));
        uint64_t s = 7;
        for (size_t i = 0; i < nq; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            host[i] = (float)((double)(s >> 11) * 0x1.0p-53 - 0.5);
        }
        for (int i = 0; i < 5; i++) be->iface->upload(be, *bufs[i], host, nq * sizeof(float));
        free(host);
        gsink_attn_shape sh = {B, T, H, H, H, dh, 64, 0.0f, 0};
        gsink_attn_stats none = {NULL, NULL, NULL}, stats = {st, st + ns, st + 2 * ns};
        for (int it = -2; it < iters && !rc; it++) {
            double t0 = now_s();
            rc |= be->iface->attention_fwd(be, &sh, y, lse, q, k, v, none) != GSINK_OK;
            rc |= sync_backend(be, y);
            double t1 = now_s();
            rc |= be->iface->attention_bwd(be, &sh, dq, dk, dv, dy, q, k, v, y, lse, none) != GSINK_OK;
            rc |= sync_backend(be, dq);
            double t2 = now_s();
            rc |= be->iface->attention_bwd(be, &sh, dq, dk, dv, dy, q, k, v, y, lse, stats) != GSINK_OK;
            rc |= sync_backend(be, dq);
            double t3 = now_s();
            rc |= be->iface->attention_stats(be, &sh, q, k, lse, stats) != GSINK_OK;
            rc |= sync_backend(be, st);
            double t4 = now_s();
            if (it >= 0) {
                tf[it] = t1 - t0;
                tb[it] = t2 - t1;
                tbs[it] = t3 - t2;
                ts[it] = t4 - t3;
            }
        }
        if (rc) {
            fprintf(stderr, "T=%d: %s\n", T, be->err);
        } else {
            double f = median(tf, iters), sa = median(ts, iters), b = median(tb, iters);
            double bs = median(tbs, iters);
            double flops_f = 2.0 * B * H * (double)T * T * dh; /* causal: half of 4 B H T^2 dh */
            /* stats_overhead_percent: the column statistics summed inside the
             * backward kernel, as a share of the fwd+bwd attention time without
             * them; stats_alone_ms: the separate pass of forward-only analyses */
            printf("attention %s B %d H %d dh %d T %d: fwd_ms %.3f fwd_tflops %.2f bwd_ms %.3f "
                   "bwd_tflops %.2f fwd_bwd_tflops %.2f bwd_stats_ms %.3f "
                   "stats_overhead_percent %.2f stats_alone_ms %.3f\n",
                   math_name(math), B, H, dh, T, f * 1e3, flops_f / f * 1e-12, b * 1e3, 2.5 * flops_f / b * 1e-12,
                   3.5 * flops_f / (f + b) * 1e-12, bs * 1e3, 100.0 * (bs - b) / (f + b), sa * 1e3);
        }
        for (int i = 0; i < 8; i++) be->iface->free(be, *bufs[i]);
        be->iface->free(be, lse);
        be->iface->free(be, st);
    }
    free(tf);
    free(ts);
    free(tb);
    free(tbs);
    be->iface->destroy(be);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "model") && strcmp(argv[1], "attention"))) {
        fprintf(stderr, "usage: bench_cuda model|attention [options] (see the source header)\n");
        return 2;
    }
    if (gsink_cuda_device_count() <= 0) {
        char why[512];
        gsink_cuda_describe(0, why, sizeof why);
        fprintf(stderr, "bench_cuda: no CUDA device (%s)\n", why);
        return 77;
    }
    return strcmp(argv[1], "model") == 0 ? bench_model(argc, argv) : bench_attention(argc, argv);
}
