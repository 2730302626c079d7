/*
 * metrics.c - the paper's metrics on caller tensors (gsink_metric_*): pure
 * functions on host arrays, computed by the same code as the model's
 * diagnostics (diag.c). The tensor metrics run diag.c's backend code on a
 * short-lived CPU backend through a "view": a zeroed model struct holding
 * only that backend and the shape, never a real model.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diag_internal.h"

static gsink_status null_arg(const char *what)
{
    return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "%s is NULL", what);
}

static gsink_status check_shape(int batch, int seq, const char *what)
{
    if (batch < 1 || seq < 1)
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "%s: batch %d and seq %d must be >= 1",
                           what, batch, seq);
    return GSINK_OK;
}

static gsink_status check_agg(int agg)
{
    if (agg != GSINK_AGG_SUM_THEN_NORM && agg != GSINK_AGG_PER_SEQUENCE)
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT,
                           "batch aggregation %d is neither SUM_THEN_NORM (0) nor PER_SEQUENCE (1)", agg);
    return GSINK_OK;
}

static gsink_status check_count(size_t count, size_t need, const char *what)
{
    if (count < need)
        return gsink__fail(NULL, GSINK_ERR_BUFFER_TOO_SMALL, "%s: buffer holds %zu values, %zu needed",
                           what, count, need);
    return GSINK_OK;
}

/* (batch * seq) rows of width floats must be addressable. */
static gsink_status check_size(int batch, int seq, size_t width, const char *what)
{
    size_t rows, n;
    if (!gsink__mul_size((size_t)batch, (size_t)seq, &rows) || !gsink__mul_size(rows, width, &n) ||
        width > INT32_MAX || !gsink__mul_size(n, sizeof(float), &n))
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "%s: tensor size overflows", what);
    return GSINK_OK;
}

/* A view for diag.c: a CPU backend (freed by view_end) and the shape. */
static gsink_status view_begin(gsink_model *v, int batch, int seq, int d_model)
{
    memset(v, 0, sizeof *v);
    v->B = batch;
    v->T = seq;
    v->cfg.d_model = d_model;
    return gsink_cpu_backend_create(0, &v->be);
}

static gsink_status view_end(gsink_model *v, gsink_status st)
{
    if (st) st = gsink__fail(NULL, st, "%s", v->errmsg[0] ? v->errmsg : gsink_status_str(st));
    if (v->be) v->be->iface->destroy(v->be);
    v->be = NULL;
    return st;
}

gsink_status gsink_metric_token_norms(const float *x, int batch, int seq, int heads, int head_width,
                                      int head, int agg, float *out, size_t count)
{
    gsink_status st;
    if (!x) return null_arg("x");
    if (!out) return null_arg("out");
    if ((st = check_shape(batch, seq, "token norms"))) return st;
    if (heads < 1 || head_width < 1)
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT,
                           "token norms: heads %d and head_width %d must be >= 1", heads, head_width);
    if ((st = check_size(batch, seq, (size_t)heads * (size_t)head_width, "token norms"))) return st;
    if (head < -1 || head >= heads)
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_RANGE, "head %d out of range [0, %d) (-1 = all heads)",
                           head, heads);
    if ((st = check_agg(agg))) return st;
    if ((st = check_count(count, (size_t)seq, "token norms"))) return st;
    gsink_model v;
    if ((st = view_begin(&v, batch, seq, 0))) return st;
    st = gsink__diag_tensor_norms(&v, x, heads, head_width, head, agg, out);
    return view_end(&v, st);
}

gsink_status gsink_metric_gradient_sink_ratio(const float *norms, size_t count, int s, int t_e,
                                              float *ratio)
{
    if (!norms) return null_arg("norms");
    if (!ratio) return null_arg("ratio");
    if (count > INT32_MAX)
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "R_GS: count %zu is too large", count);
    gsink_model v; /* for the checks' messages: T only */
    memset(&v, 0, sizeof v);
    v.T = (int)count;
    gsink_status st = gsink__diag_rgs_args(&v, s, t_e);
    if (st) return gsink__fail(NULL, st, "%s", v.errmsg);
    *ratio = gsink__diag_rgs_from_norms(norms, s, t_e);
    return GSINK_OK;
}

gsink_status gsink_metric_massive_activation_ratio(const float *norms, size_t count, float *ratio)
{
    if (!norms) return null_arg("norms");
    if (!ratio) return null_arg("ratio");
    if (count <= GSINK_DIAG_EARLY_LAST)
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_RANGE,
                           "massive-activation ratio needs seq_len >= %d norms (got %zu)",
                           GSINK_DIAG_EARLY_LAST + 1, count);
    *ratio = gsink__diag_t0_early(norms);
    return GSINK_OK;
}

static gsink_status check_stats(const float *stat, int batch, int heads, int seq, const char *what)
{
    gsink_status st;
    if (!stat) return null_arg(what);
    if ((st = check_shape(batch, seq, what))) return st;
    if (heads < 1)
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "%s: heads %d must be >= 1", what, heads);
    return check_size(batch, seq, (size_t)heads, what);
}

/* Batch mean of one statistic at (h, s), as the model reduces them
 * (model.c reduce_stats): float sum over b in order, times 1/B. */
static float stat_mean(const float *stat, int batch, size_t HT, size_t i)
{
    float sum = 0.0f;
    for (int b = 0; b < batch; b++) sum += stat[(size_t)b * HT + i];
    return sum * (1.0f / (float)batch);
}

gsink_status gsink_metric_column_mean(const float *stat, int batch, int heads, int seq, float *out,
                                      size_t count)
{
    gsink_status st;
    if ((st = check_stats(stat, batch, heads, seq, "stat"))) return st;
    if (!out) return null_arg("out");
    const size_t HT = (size_t)heads * (size_t)seq;
    if ((st = check_count(count, HT, "column mean"))) return st;
    for (size_t i = 0; i < HT; i++) out[i] = stat_mean(stat, batch, HT, i);
    return GSINK_OK;
}

static gsink_status sink_args(const float *col_win, int batch, int heads, int seq, int window, int s)
{
    gsink_status st;
    if ((st = check_stats(col_win, batch, heads, seq, "col_win"))) return st;
    if (window < 1)
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_RANGE, "sink_window %d must be >= 1", window);
    if (s < 0 || s >= seq)
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_RANGE, "sink position %d out of range [0, %d)", s, seq);
    if ((long)s + (long)window > (long)seq)
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_RANGE,
                           "sink window T_eps=%d at position %d exceeds seq_len %d", window, s, seq);
    return GSINK_OK;
}

/* alpha_s^h for every head (gsink__diag_sink_score on the batch means). */
static void sink_scores(const float *col_win, int batch, int heads, int seq, int window, int s,
                        float *out)
{
    const size_t HT = (size_t)heads * (size_t)seq;
    for (int h = 0; h < heads; h++)
        out[h] = gsink__diag_sink_score(stat_mean(col_win, batch, HT, (size_t)h * (size_t)seq + (size_t)s),
                                        window);
}

gsink_status gsink_metric_sink_scores(const float *col_win, int batch, int heads, int seq,
                                      int sink_window, int s, float *out, size_t count)
{
    gsink_status st;
    if ((st = sink_args(col_win, batch, heads, seq, sink_window, s))) return st;
    if (!out) return null_arg("out");
    if ((st = check_count(count, (size_t)heads, "sink scores"))) return st;
    sink_scores(col_win, batch, heads, seq, sink_window, s, out);
    return GSINK_OK;
}

gsink_status gsink_metric_sink_rate(const float *col_win, int batch, int heads, int seq,
                                    int sink_window, int s, float eps, float *rate)
{
    gsink_status st;
    if ((st = sink_args(col_win, batch, heads, seq, sink_window, s))) return st;
    if (!rate) return null_arg("rate");
    if (!isfinite(eps))
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "sink threshold eps is not finite");
    float *a = malloc(sizeof(float) * (size_t)heads);
    if (!a) return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "sink rate: out of host memory");
    sink_scores(col_win, batch, heads, seq, sink_window, s, a);
    *rate = gsink__diag_sink_rate_of(a, heads, eps);
    free(a);
    return GSINK_OK;
}

gsink_status gsink_metric_branch_ratios(const float *grad_in, const float *grad_out,
                                        const float *grad_normed, int batch, int seq, int width,
                                        int agg, float *bloat, float *change, float *compress,
                                        size_t count)
{
    gsink_status st;
    if (!grad_in) return null_arg("grad_in");
    if (!grad_out) return null_arg("grad_out");
    if (!grad_normed) return null_arg("grad_normed");
    if ((st = check_shape(batch, seq, "branch ratios"))) return st;
    if (width < 1)
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "branch ratios: width %d must be >= 1", width);
    if ((st = check_size(batch, seq, (size_t)width, "branch ratios"))) return st;
    if ((st = check_agg(agg))) return st;
    if (!bloat && !change && !compress) return GSINK_OK;
    if ((st = check_count(count, (size_t)seq, "branch ratios"))) return st;
    gsink_model v;
    if ((st = view_begin(&v, batch, seq, width))) return st;
    st = gsink__diag_branch_tensors(&v, grad_in, grad_out, grad_normed, width, agg, bloat, change,
                                    compress);
    return view_end(&v, st);
}
