/*
 * diag.c - the paper's measurements on the stored activations and gradients:
 * token-wise norms per site, attention column statistics, sink scores and
 * rates, the attention pattern, R_GS, branch ratios, the massive-activation
 * ratio and the Q/K/V split of the post-RMSNorm gradient.
 *
 * Everything heavy runs on the backend (row_sumsq, batch_sum, gemm, rope);
 * only O(B*T*heads) results cross to the host, so the same code serves the
 * CUDA backend. Temporary backend buffers live for one call.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diag_internal.h"

/* ---- temporaries ---------------------------------------------------------- */

void gsink__diag_tmp_free(gsink_diag_tmp *ts)
{
    for (int i = 0; i < ts->n; i++) {
        if (ts->dev[i]) ts->m->be->iface->free(ts->m->be, ts->dev[i]);
        ts->dev[i] = NULL;
    }
    ts->n = 0;
    for (int i = 0; i < ts->nh; i++) {
        free(ts->host[i]);
        ts->host[i] = NULL;
    }
    ts->nh = 0;
}

/* Checks a new temporary's slot and byte count (nfloats 0 allocates one float). */
static gsink_status tmp_bytes(gsink_model *m, int used, size_t nfloats, size_t *bytes)
{
    if (used >= GSINK_DIAG_MAX_TMP)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "diagnostics: too many temporaries");
    if (!gsink__mul_size(nfloats ? nfloats : 1, sizeof(float), bytes))
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "diagnostics: size overflow");
    return GSINK_OK;
}

gsink_status gsink__diag_tmp_dev(gsink_diag_tmp *ts, size_t nfloats, float **out)
{
    gsink_model *m = ts->m;
    size_t bytes;
    void *p = NULL;
    *out = NULL;
    gsink_status st = tmp_bytes(m, ts->n, nfloats, &bytes);
    if (st != GSINK_OK) return st;
    if ((st = m->be->iface->alloc(m->be, bytes, &p)) != GSINK_OK)
        return gsink__be_check(m, st, "diagnostics temporary");
    ts->dev[ts->n++] = p;
    *out = p;
    return GSINK_OK;
}

gsink_status gsink__diag_tmp_host(gsink_diag_tmp *ts, size_t nfloats, float **out)
{
    gsink_model *m = ts->m;
    size_t bytes;
    *out = NULL;
    gsink_status st = tmp_bytes(m, ts->nh, nfloats, &bytes);
    if (st != GSINK_OK) return st;
    float *p = malloc(bytes);
    if (!p) return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "diagnostics: out of host memory");
    ts->host[ts->nh++] = p;
    *out = p;
    return GSINK_OK;
}

/* ---- argument checks ------------------------------------------------------ */

gsink_status gsink__diag_need(gsink_model *m, bool backward)
{
    if (!m->have_forward || m->B <= 0 || m->T <= 0)
        return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER,
                           "diagnostics need a successful gsink_forward first");
    if (backward && m->discard_site_grads)
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED,
                           "gradient metrics need the site gradients, which this model does not keep "
                           "(GSINK_MODEL_DISCARD_SITE_GRADS)");
    if (backward && !m->have_backward)
        return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER,
                           "gradient metrics need gsink_backward after the last forward");
    return GSINK_OK;
}

gsink_status gsink__diag_layer(gsink_model *m, int layer)
{
    if (layer < 0 || layer >= m->cfg.n_layers)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE, "layer %d out of range [0, %d)",
                           layer, (int)m->cfg.n_layers);
    return GSINK_OK;
}

static gsink_status check_site(gsink_model *m, gsink_site site)
{
    if ((int)site < 0 || (int)site >= GSINK_SITE_COUNT)
        return gsink__fail(m->errmsg, GSINK_ERR_UNKNOWN_SITE, "unknown site id %d", (int)site);
    return GSINK_OK;
}

static gsink_status check_agg(gsink_model *m, int agg)
{
    if (agg != GSINK_AGG_SUM_THEN_NORM && agg != GSINK_AGG_PER_SEQUENCE)
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT,
                           "batch aggregation %d is neither SUM_THEN_NORM (0) nor PER_SEQUENCE (1)",
                           agg);
    return GSINK_OK;
}

static gsink_status check_count(gsink_model *m, size_t count, size_t need, const char *what)
{
    if (count < need)
        return gsink__fail(m->errmsg, GSINK_ERR_BUFFER_TOO_SMALL,
                           "%s: buffer holds %zu values, %zu needed", what, count, need);
    return GSINK_OK;
}

/* ---- norms ---------------------------------------------------------------- */

/* Token-wise norms of a backend tensor x(B, T, heads*hw): out[t] (host, T
 * values) for one head or the head aggregate (head < 0).
 * SUM_THEN_NORM: || sum_b x_bt ||; PER_SEQUENCE: mean_b ||x_bt||. */
gsink_status gsink__diag_tensor_norms(gsink_model *m, const float *x, int heads, int hw,
                                      int head, int agg, float *out)
{
    const gsink_backend_iface *be = m->be->iface;
    const int B = m->B, T = m->T;
    const size_t W = (size_t)heads * (size_t)hw;
    gsink_diag_tmp ts = {.m = m};
    gsink_status st;
    float *sums_dev, *sums;
    size_t rows = (agg == GSINK_AGG_SUM_THEN_NORM) ? (size_t)T : (size_t)B * (size_t)T;
    const float *src = x;

    if (agg == GSINK_AGG_SUM_THEN_NORM && B > 1) {
        float *acc;
        if ((st = gsink__diag_tmp_dev(&ts, (size_t)T * W, &acc))) goto done;
        if ((st = gsink__be_check(m, be->batch_sum(m->be, acc, x, B, (size_t)T * W), "batch_sum")))
            goto done;
        src = acc;
    }
    if ((st = gsink__diag_tmp_dev(&ts, rows * (size_t)heads, &sums_dev))) goto done;
    if ((st = gsink__diag_tmp_host(&ts, rows * (size_t)heads, &sums))) goto done;
    if ((st = gsink__be_check(m, be->row_sumsq(m->be, sums_dev, src, rows, heads, hw), "row_sumsq")))
        goto done;
    if ((st = gsink__be_check(m, be->download(m->be, sums, sums_dev, rows * (size_t)heads * sizeof(float)),
                              "download")))
        goto done;

    for (int t = 0; t < T; t++) {
        double acc = 0.0;
        int nb = (agg == GSINK_AGG_SUM_THEN_NORM) ? 1 : B;
        for (int b = 0; b < nb; b++) {
            const float *r = sums + ((size_t)b * (size_t)T + (size_t)t) * (size_t)heads;
            double ss = 0.0;
            if (head < 0)
                for (int h = 0; h < heads; h++) ss += r[h];
            else
                ss = r[head];
            acc += sqrt(ss);
        }
        out[t] = (float)(acc / nb);
    }
done:
    gsink__diag_tmp_free(&ts);
    return st;
}

/* Token-wise norms (host, T values) of a stored site, one head or all (-1). */
static gsink_status site_norms(gsink_model *m, int layer, gsink_site site, bool grad, int head, int agg,
                               float *out)
{
    int heads = gsink__site_heads(m, site);
    int w = gsink__site_width(m, site);
    gsink_status st = gsink__site_ready(m, layer, site, grad);
    if (st) return st;
    const float *x = gsink__site_ptr(m, layer, site, grad);
    if (!x || heads <= 0 || w <= 0 || w % heads != 0)
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED, "site \"%s\" is not stored for layer %d",
                           gsink_site_name(site), layer);
    if (head < -1 || head >= heads)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE,
                           "head %d out of range for site \"%s\" (%d heads; -1 = all)", head,
                           gsink_site_name(site), heads);
    return gsink__diag_tensor_norms(m, x, heads, w / heads, head, agg, out);
}

static gsink_status norms_checked(gsink_model *m, int layer, gsink_site site, int head, int agg,
                                  bool grad, float *out, size_t count)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!out) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    if ((st = check_site(m, site))) return st;
    if ((st = gsink__diag_need(m, grad))) return st;
    if ((st = gsink__diag_layer(m, layer))) return st;
    if ((st = check_agg(m, agg))) return st;
    if ((st = check_count(m, count, (size_t)m->T, grad ? "gradient norms" : "activation norms")))
        return st;
    return site_norms(m, layer, site, grad, head, agg, out);
}

gsink_status gsink_get_activation_norms(gsink_model *model, int layer, gsink_site site, int head,
                                        float *out, size_t count)
{
    return norms_checked(model, layer, site, head, GSINK_AGG_PER_SEQUENCE, false, out, count);
}

gsink_status gsink_get_gradient_norms(gsink_model *model, int layer, gsink_site site, int head,
                                      int agg, float *out, size_t count)
{
    return norms_checked(model, layer, site, head, agg, true, out, count);
}

/* ---- attention statistics ------------------------------------------------- */

gsink_status gsink_attention_column_mass(gsink_model *m, int layer, int head, float *M, float *S,
                                         size_t count)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if ((st = gsink__diag_need(m, false))) return st;
    if ((st = gsink__diag_layer(m, layer))) return st;
    const int H = m->cfg.n_heads, T = m->T;
    if (head < 0 || head >= H)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE, "head %d out of range [0, %d)", head, H);
    if ((M || S) && (st = check_count(m, count, (size_t)T, "column mass"))) return st;
    if ((st = gsink__attn_stats(m))) return st;
    if (!m->hstats.mass || !m->hstats.sq)
        return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER, "attention statistics were not recorded");
    size_t off = ((size_t)layer * (size_t)H + (size_t)head) * (size_t)T;
    if (M) memcpy(M, m->hstats.mass + off, (size_t)T * sizeof(float));
    if (S) memcpy(S, m->hstats.sq + off, (size_t)T * sizeof(float));
    return GSINK_OK;
}

/* Checks s and the window of the last forward; no message clearing. */
static gsink_status sink_window_ok(gsink_model *m, int s)
{
    const int T = m->T, W = m->hstats.window;
    gsink_status st = gsink__attn_stats(m);
    if (st) return st;
    if (!m->hstats.win || W <= 0)
        return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER, "sink-score window was not recorded");
    if (s < 0 || s >= T)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE, "sink position %d out of range [0, %d)",
                           s, T);
    if ((long)s + (long)W > (long)T)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE,
                           "sink window T_eps=%d at position %d exceeds seq_len %d "
                           "(lower sink_window with gsink_set_diag_options before the forward)",
                           W, s, T);
    return GSINK_OK;
}

float gsink__diag_sink_score(float win_mean, int window) { return win_mean / (float)window; }

float gsink__diag_sink_rate_of(const float *scores, int heads, float eps)
{
    int n = 0;
    for (int h = 0; h < heads; h++)
        if (scores[h] > eps) n++;
    return (float)n / (float)heads;
}

void gsink__diag_sink_scores(gsink_model *m, int layer, int s, float *out)
{
    const int H = m->cfg.n_heads, T = m->T, W = m->hstats.window;
    for (int h = 0; h < H; h++)
        out[h] = gsink__diag_sink_score(
            m->hstats.win[((size_t)layer * (size_t)H + (size_t)h) * (size_t)T + (size_t)s], W);
}

gsink_status gsink_sink_scores(gsink_model *m, int layer, int s, float *out, size_t count)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!out) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    if ((st = gsink__diag_need(m, false))) return st;
    if ((st = gsink__diag_layer(m, layer))) return st;
    if ((st = sink_window_ok(m, s))) return st;
    if ((st = check_count(m, count, (size_t)m->cfg.n_heads, "sink scores"))) return st;
    gsink__diag_sink_scores(m, layer, s, out);
    return GSINK_OK;
}

float gsink__diag_sink_rate(gsink_model *m, int layer, int s, float eps)
{
    const int H = m->cfg.n_heads, T = m->T, W = m->hstats.window;
    int n = 0;
    for (int h = 0; h < H; h++)
        n += gsink__diag_sink_score(
                 m->hstats.win[((size_t)layer * (size_t)H + (size_t)h) * (size_t)T + (size_t)s], W) > eps;
    return (float)n / (float)H;
}

gsink_status gsink_sink_rate(gsink_model *m, int layer, int s, float eps, float *rate)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!rate) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "rate is NULL");
    if (!isfinite(eps))
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "sink threshold eps is not finite");
    if ((st = gsink__diag_need(m, false))) return st;
    if ((st = gsink__diag_layer(m, layer))) return st;
    if ((st = sink_window_ok(m, s))) return st;
    *rate = gsink__diag_sink_rate(m, layer, s, eps);
    return GSINK_OK;
}

gsink_status gsink_attention_pattern(gsink_model *m, int layer, int batch_index, int head,
                                     float *out, size_t count)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!out) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    if ((st = gsink__diag_need(m, false))) return st;
    if ((st = gsink__diag_layer(m, layer))) return st;
    const int B = m->B, T = m->T, H = m->cfg.n_heads, KV = m->cfg.n_kv_heads, dh = m->cfg.d_head;
    if (batch_index < 0 || batch_index >= B)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE, "batch index %d out of range [0, %d)",
                           batch_index, B);
    if (head < 0 || head >= H)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE, "head %d out of range [0, %d)", head, H);
    size_t TT;
    if (!gsink__mul_size((size_t)T, (size_t)T, &TT))
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "pattern size overflow");
    if ((st = check_count(m, count, TT, "attention pattern"))) return st;

    const float *q = gsink__site_ptr(m, layer, GSINK_SITE_Q, false);
    const float *k = gsink__site_ptr(m, layer, GSINK_SITE_K, false);
    if (!q || !k) return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED, "q/k are not stored");
    const int kvh = head / (H / KV); /* GQA: query head h reads key head h / group */
    const size_t qstride = (size_t)H * (size_t)dh, kstride = (size_t)KV * (size_t)dh;
    const float *qh = q + (size_t)batch_index * (size_t)T * qstride + (size_t)head * (size_t)dh;
    const float *kh = k + (size_t)batch_index * (size_t)T * kstride + (size_t)kvh * (size_t)dh;

    gsink_diag_tmp ts = {.m = m};
    float *scores;
    if ((st = gsink__diag_tmp_dev(&ts, TT, &scores))) goto done;
    /* scores(T,T) = q_h k_g^T / sqrt(dh); pointer arithmetic on backend
     * memory is offset computation only, never a host dereference. */
    if ((st = gsink__be_check(m, m->be->iface->gemm(m->be, 0, 1, T, T, dh, 1.0f / sqrtf((float)dh),
                                                    qh, (int)qstride, kh, (int)kstride, 0.0f,
                                                    scores, T),
                              "gemm")))
        goto done;
    if ((st = gsink__be_check(m, m->be->iface->download(m->be, out, scores, TT * sizeof(float)),
                              "download")))
        goto done;
    const int W = m->cfg.sliding_window; /* 0: causal; else keys t - W < j <= t */
    for (int t = 0; t < T; t++) {
        float *row = out + (size_t)t * (size_t)T;
        const int jlo = W > 0 && t - W + 1 > 0 ? t - W + 1 : 0;
        float mx = row[jlo];
        for (int j = jlo + 1; j <= t; j++) mx = row[j] > mx ? row[j] : mx;
        double z = 0.0;
        for (int j = jlo; j <= t; j++) z += exp((double)row[j] - (double)mx);
        for (int j = 0; j < jlo; j++) row[j] = 0.0f;
        for (int j = jlo; j <= t; j++) row[j] = (float)(exp((double)row[j] - (double)mx) / z);
        for (int j = t + 1; j < T; j++) row[j] = 0.0f;
    }
done:
    gsink__diag_tmp_free(&ts);
    return st;
}

/* ---- derived metrics ------------------------------------------------------ */

float gsink__diag_rgs_from_norms(const float *g, int s, int t_e)
{
    double acc = 0.0;
    for (int t = 0; t <= t_e; t++)
        if (t != s) acc += g[t];
    return (float)((double)g[s] / (acc / (double)t_e));
}

gsink_status gsink__diag_rgs_args(gsink_model *m, int s, int t_e)
{
    const int T = m->T;
    if (t_e < 1 || t_e >= T)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE,
                           "R_GS window T_e=%d needs 1 <= T_e < seq_len=%d", t_e, T);
    if (s < 0 || s >= T)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE, "sink position %d out of range [0, %d)",
                           s, T);
    return GSINK_OK;
}

gsink_status gsink_gradient_sink_ratio(gsink_model *m, int layer, int s, int t_e, int agg,
                                       float *ratio)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!ratio) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "ratio is NULL");
    if ((st = gsink__diag_need(m, true))) return st;
    if ((st = gsink__diag_layer(m, layer))) return st;
    if ((st = check_agg(m, agg))) return st;
    if ((st = gsink__diag_rgs_args(m, s, t_e))) return st;
    gsink_diag_tmp ts = {.m = m};
    float *g;
    if ((st = gsink__diag_tmp_host(&ts, (size_t)m->T, &g))) goto done;
    if ((st = site_norms(m, layer, GSINK_SITE_ATTN_NORM_OUT, true, -1, agg, g))) goto done;
    *ratio = gsink__diag_rgs_from_norms(g, s, t_e);
done:
    gsink__diag_tmp_free(&ts);
    return st;
}

/* Row norms (host, rows values) of a backend matrix x(rows, W). */
static gsink_status row_norms(gsink_model *m, gsink_diag_tmp *ts, const float *x, size_t rows,
                              int W, float *out)
{
    float *dev;
    gsink_status st;
    if ((st = gsink__diag_tmp_dev(ts, rows, &dev))) return st;
    if ((st = gsink__be_check(m, m->be->iface->row_sumsq(m->be, dev, x, rows, 1, W), "row_sumsq")))
        return st;
    if ((st = gsink__be_check(m, m->be->iface->download(m->be, out, dev, rows * sizeof(float)),
                              "download")))
        return st;
    for (size_t i = 0; i < rows; i++) out[i] = sqrtf(out[i]);
    return GSINK_OK;
}

gsink_status gsink__diag_branch(gsink_model *m, int layer, int branch, int agg, float *bloat,
                                float *change, float *compress)
{
    gsink_site s_in = branch == GSINK_BRANCH_ATTN ? GSINK_SITE_RESID_IN : GSINK_SITE_RESID_MID;
    gsink_site s_out = branch == GSINK_BRANCH_ATTN ? GSINK_SITE_RESID_MID : GSINK_SITE_RESID_OUT;
    gsink_site s_norm = branch == GSINK_BRANCH_ATTN ? GSINK_SITE_ATTN_NORM_OUT : GSINK_SITE_MLP_NORM_OUT;
    const float *din = gsink__site_ptr(m, layer, s_in, true);
    const float *dout = gsink__site_ptr(m, layer, s_out, true);
    const float *dnorm = gsink__site_ptr(m, layer, s_norm, true);
    if (!din || !dout || !dnorm)
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED, "branch gradients are not stored");
    return gsink__diag_branch_tensors(m, din, dout, dnorm, m->cfg.d_model, agg, bloat, change,
                                      compress);
}

gsink_status gsink__diag_branch_tensors(gsink_model *m, const float *din, const float *dout,
                                        const float *dnorm, int d, int agg, float *bloat,
                                        float *change, float *compress)
{
    const gsink_backend_iface *be = m->be->iface;
    const int B = m->B, T = m->T;
    const bool sum = agg == GSINK_AGG_SUM_THEN_NORM;
    const size_t rows = sum ? (size_t)T : (size_t)B * (size_t)T;
    const size_t n = rows * (size_t)d;
    gsink_diag_tmp ts = {.m = m};
    gsink_status st;
    float *g3, *n1, *n2, *n3, *nin;
    if ((st = gsink__diag_tmp_dev(&ts, n, &g3))) goto done;
    if (sum && B > 1) {
        float *a, *b, *c;
        if ((st = gsink__diag_tmp_dev(&ts, n, &a))) goto done;
        if ((st = gsink__diag_tmp_dev(&ts, n, &b))) goto done;
        if ((st = gsink__diag_tmp_dev(&ts, n, &c))) goto done;
        if ((st = gsink__be_check(m, be->batch_sum(m->be, a, din, B, n), "batch_sum"))) goto done;
        if ((st = gsink__be_check(m, be->batch_sum(m->be, b, dout, B, n), "batch_sum"))) goto done;
        if ((st = gsink__be_check(m, be->batch_sum(m->be, c, dnorm, B, n), "batch_sum"))) goto done;
        din = a;
        dout = b;
        dnorm = c;
    }
    /* g3 = dL/dh_in - dL/d(branch out) */
    if ((st = gsink__be_check(m, be->copy(m->be, g3, dout, n * sizeof(float)), "copy"))) goto done;
    if ((st = gsink__be_check(m, be->scale(m->be, g3, -1.0f, n), "scale"))) goto done;
    if ((st = gsink__be_check(m, be->add(m->be, g3, g3, din, n), "add"))) goto done;

    if ((st = gsink__diag_tmp_host(&ts, rows, &n1))) goto done;
    if ((st = gsink__diag_tmp_host(&ts, rows, &n2))) goto done;
    if ((st = gsink__diag_tmp_host(&ts, rows, &n3))) goto done;
    if ((st = gsink__diag_tmp_host(&ts, rows, &nin))) goto done;
    if ((st = row_norms(m, &ts, dout, rows, d, n1))) goto done;
    if ((st = row_norms(m, &ts, dnorm, rows, d, n2))) goto done;
    if ((st = row_norms(m, &ts, g3, rows, d, n3))) goto done;
    if ((st = row_norms(m, &ts, din, rows, d, nin))) goto done; /* ||g1 + g3|| = ||dL/dh_in|| */

    const int nb = sum ? 1 : B;
    for (int t = 0; t < T; t++) {
        double ab = 0, ac = 0, ap = 0;
        for (int b = 0; b < nb; b++) {
            size_t i = (size_t)b * (size_t)T + (size_t)t;
            ab += (double)n2[i] / (double)n1[i];
            ac += (double)nin[i] / (double)n1[i];
            ap += (double)n3[i] / (double)n2[i];
        }
        if (bloat) bloat[t] = (float)(ab / nb);
        if (change) change[t] = (float)(ac / nb);
        if (compress) compress[t] = (float)(ap / nb);
    }
done:
    gsink__diag_tmp_free(&ts);
    return st;
}

gsink_status gsink_branch_ratios(gsink_model *m, int layer, int branch, int agg, float *bloat,
                                 float *change, float *compress, size_t count)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if ((st = gsink__diag_need(m, true))) return st;
    if ((st = gsink__diag_layer(m, layer))) return st;
    if (branch != GSINK_BRANCH_ATTN && branch != GSINK_BRANCH_MLP)
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT,
                           "branch %d is neither ATTN (0) nor MLP (1)", branch);
    if ((st = check_agg(m, agg))) return st;
    if (!bloat && !change && !compress) return GSINK_OK;
    if ((st = check_count(m, count, (size_t)m->T, "branch ratios"))) return st;
    return gsink__diag_branch(m, layer, branch, agg, bloat, change, compress);
}

gsink_status gsink__diag_massive(gsink_model *m, int layer, gsink_site site, float *ratio)
{
    gsink_diag_tmp ts = {.m = m};
    gsink_status st;
    float *nrm;
    if ((st = gsink__diag_tmp_host(&ts, (size_t)m->T, &nrm))) goto done;
    if ((st = site_norms(m, layer, site, false, -1, GSINK_AGG_PER_SEQUENCE, nrm))) goto done;
    *ratio = gsink__diag_t0_early(nrm);
done:
    gsink__diag_tmp_free(&ts);
    return st;
}

float gsink__diag_t0_early(const float *nrm)
{
    double e = 0.0;
    for (int t = 1; t <= GSINK_DIAG_EARLY_LAST; t++) e += nrm[t];
    return (float)((double)nrm[0] / (e / GSINK_DIAG_EARLY_LAST));
}

gsink_status gsink_massive_activation_ratio(gsink_model *m, int layer, gsink_site site,
                                            float *ratio)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!ratio) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "ratio is NULL");
    if ((st = check_site(m, site))) return st;
    if ((st = gsink__diag_need(m, false))) return st;
    if ((st = gsink__diag_layer(m, layer))) return st;
    if ((st = gsink__site_ready(m, layer, site, false))) return st;
    if (m->T <= GSINK_DIAG_EARLY_LAST)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE,
                           "massive-activation ratio needs seq_len >= %d (got %d)",
                           GSINK_DIAG_EARLY_LAST + 1, m->T);
    return gsink__diag_massive(m, layer, site, ratio);
}

gsink_status gsink__diag_qkv(gsink_model *m, int layer, int agg, float *gq, float *gk, float *gv)
{
    const gsink_backend_iface *be = m->be->iface;
    const int B = m->B, T = m->T, d = m->cfg.d_model, H = m->cfg.n_heads,
              KV = m->cfg.n_kv_heads, dh = m->cfg.d_head;
    const bool sum = agg == GSINK_AGG_SUM_THEN_NORM;
    const size_t rows = sum ? (size_t)T : (size_t)B * (size_t)T;
    const gsink_layer_params *P = &m->p.layers[layer];
    struct {
        gsink_site site;
        int heads;
        const float *w;
        bool rope;
        float *out;
    } path[3] = {
        {GSINK_SITE_Q, H, P->wq, true, gq},
        {GSINK_SITE_K, KV, P->wk, true, gk},
        {GSINK_SITE_V, KV, P->wv, false, gv},
    };
    gsink_diag_tmp ts = {.m = m};
    gsink_status st = GSINK_OK;
    float *pre, *proj, *nrm;
    const size_t wmax = (size_t)(H > KV ? H : KV) * (size_t)dh;
    if ((st = gsink__diag_tmp_dev(&ts, rows * wmax, &pre))) goto done;
    if ((st = gsink__diag_tmp_dev(&ts, rows * (size_t)d, &proj))) goto done;
    if ((st = gsink__diag_tmp_host(&ts, rows, &nrm))) goto done;

    /* qk_norm: the norm's Jacobian depends on each (b, t) row, so q and k go
     * back through RoPE and the norm for every sequence before the batch sum */
    const bool qkn = m->cfg.qk_norm != 0;
    float *full = NULL, *full2 = NULL, *dgain = NULL;
    const size_t BT = (size_t)B * (size_t)T;
    if (qkn && ((st = gsink__diag_tmp_dev(&ts, BT * wmax, &full)) || (st = gsink__diag_tmp_dev(&ts, BT * wmax, &full2)) ||
                (st = gsink__diag_tmp_dev(&ts, (size_t)dh, &dgain))))
        goto done;

    for (int p = 0; p < 3; p++) {
        if (!path[p].out) continue;
        const float *g = gsink__site_ptr(m, layer, path[p].site, true);
        if (!g) {
            st = gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED, "q/k/v gradients are not stored");
            goto done;
        }
        const size_t W = (size_t)path[p].heads * (size_t)dh;
        if (qkn && path[p].rope) {
            const gsink_layer_acts *a = &m->layers[layer];
            bool isq = path[p].site == GSINK_SITE_Q;
            if ((st = gsink__be_check(m, be->copy(m->be, full, g, BT * W * sizeof(float)), "copy")) ||
                (st = gsink__be_check(m, gsink__rope(m, full, B, path[p].heads, 1), "rope")) ||
                (st = gsink__be_check(m, be->rmsnorm_bwd(m->be, full2, dgain, full, isq ? a->q_raw : a->k_raw,
                                                         isq ? P->q_norm : P->k_norm, isq ? a->rstd_q : a->rstd_k,
                                                         (int)(BT * (size_t)path[p].heads), dh, 0), "q/k norm")))
                goto done;
            g = full2;
        }
        /* Sum over the batch first (everything below is linear per position). */
        if (sum && B > 1)
            st = be->batch_sum(m->be, pre, g, B, rows * W);
        else
            st = be->copy(m->be, pre, g, rows * W * sizeof(float));
        if ((st = gsink__be_check(m, st, "batch_sum"))) goto done;
        /* q, k are stored after RoPE: dL/dx_pre = R^T dL/dx. */
        if (path[p].rope && !qkn &&
            (st = gsink__be_check(m, gsink__rope(m, pre, sum ? 1 : B, path[p].heads, 1), "rope")))
            goto done;
        /* proj(rows, d) = pre(rows, W) @ Wmat(W, d) */
        if ((st = gsink__be_check(m, be->gemm_w(m->be, 0, 0, (int)rows, d, (int)W, 1.0f, pre, (int)W,
                                                path[p].w, m->wdtype, d, 0.0f, proj, d),
                                  "gemm")))
            goto done;
        if ((st = row_norms(m, &ts, proj, rows, d, nrm))) goto done;
        const int nb = sum ? 1 : B;
        for (int t = 0; t < T; t++) {
            double acc = 0.0;
            for (int b = 0; b < nb; b++) acc += nrm[(size_t)b * (size_t)T + (size_t)t];
            path[p].out[t] = (float)(acc / nb);
        }
    }
done:
    gsink__diag_tmp_free(&ts);
    return st;
}

gsink_status gsink_qkv_gradient_split(gsink_model *m, int layer, int agg, float *gq, float *gk,
                                      float *gv, size_t count)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if ((st = gsink__diag_need(m, true))) return st;
    if ((st = gsink__diag_layer(m, layer))) return st;
    if ((st = check_agg(m, agg))) return st;
    if (!gq && !gk && !gv) return GSINK_OK;
    if ((st = check_count(m, count, (size_t)m->T, "Q/K/V split"))) return st;
    return gsink__diag_qkv(m, layer, agg, gq, gk, gv);
}
