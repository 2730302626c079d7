/*
 * report.c - gsink_report_json: every diagnostic per layer and head plus a
 * summary, schema "gsink.report/1" (docs/report-schema.md).
 *
 * Metrics that the sequence is too short for (sink window, R_GS window,
 * early tokens) are written as null and explained in "notes" instead of
 * failing the whole report. Non-finite numbers are written as null.
 */
#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diag_internal.h"

#define REPORT_SCHEMA "gsink.report/1"
/* Token-wise profiles cover positions [0, REPORT_PROFILE_MAX) (or the whole
 * sequence when shorter): enough for R_GS (T_e = 31) and the early tokens,
 * while keeping the report O(L * H) in the sequence length. */
#define REPORT_PROFILE_MAX GSINK_REPORT_PROFILE_MAX

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

/* Room for need bytes in all (the text and its NUL); false (oom set) when
 * memory runs out. */
static bool sb_reserve(sbuf *b, size_t need)
{
    if (b->oom) return false;
    if (b->p && need <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            b->oom = true;
            return false;
        }
        cap *= 2;
    }
    char *q = realloc(b->p, cap);
    if (!q) {
        b->oom = true;
        return false;
    }
    b->p = q;
    b->cap = cap;
    return true;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        if (b->oom) return;
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->p && (size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        if (!sb_reserve(b, b->len + (size_t)n + 1)) return;
    }
}

/* v (finite) as printf's "%.9g" writes it, without printf (whose cost
 * dominated the report): the 9 significant digits come from v scaled by an
 * exact power of ten in long double and rounded to nearest even, as glibc
 * rounds; values beyond 1e+-27 take snprintf. At most 16 characters + NUL;
 * returns the length. */
int gsink__format_g9(char *out, double v)
{
    char *p = out;
    if (signbit(v)) {
        *p++ = '-';
        v = -v;
    }
    if (v == 0.0) {
        *p++ = '0';
        *p = '\0';
        return (int)(p - out);
    }
    int e = (int)floor(log10(v));
    if (e < -19 || e > 27) return (int)(p - out) + snprintf(p, 28, "%.9g", v);
    static const long double pow10[] = {1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
                                        1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
                                        1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L, 1e28L};
    unsigned long long m = 0;
    for (int pass = 0; pass < 2; pass++) { /* log10 may be one off near a power of ten */
        const int k = 8 - e;
        const long double sc = k >= 0 ? (long double)v * pow10[k] : (long double)v / pow10[-k];
        m = (unsigned long long)rintl(sc);
        if (m >= 1000000000ull) e++;
        else if (m < 100000000ull) e--;
        else break;
    }
    char d[10];
    for (int i = 8; i >= 0; i--, m /= 10) d[i] = (char)('0' + (int)(m % 10));
    int nd = 9;
    while (nd > 1 && d[nd - 1] == '0') nd--;
    if (e < -4 || e >= 9) {
        *p++ = d[0];
        if (nd > 1) {
            *p++ = '.';
            for (int i = 1; i < nd; i++) *p++ = d[i];
        }
        *p++ = 'e';
        *p++ = e < 0 ? '-' : '+';
        int x = e < 0 ? -e : e;
        if (x >= 100) *p++ = (char)('0' + x / 100);
        *p++ = (char)('0' + x / 10 % 10);
        *p++ = (char)('0' + x % 10);
    } else if (e >= 0) {
        for (int i = 0; i <= e; i++) *p++ = i < nd ? d[i] : '0';
        if (nd > e + 1) {
            *p++ = '.';
            for (int i = e + 1; i < nd; i++) *p++ = d[i];
        }
    } else {
        *p++ = '0';
        *p++ = '.';
        for (int i = 0; i < -e - 1; i++) *p++ = '0';
        for (int i = 0; i < nd; i++) *p++ = d[i];
    }
    *p = '\0';
    return (int)(p - out);
}

/* Appends n bytes (no format: the report's hot path). */
static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (!sb_reserve(b, b->len + n + 1)) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_num(sbuf *b, double v)
{
    char t[32];
    if (isfinite(v))
        sb_put(b, t, (size_t)gsink__format_g9(t, v));
    else
        sb_put(b, "null", 4);
}

static void sb_key_num(sbuf *b, const char *key, double v, bool comma)
{
    sb_printf(b, "\"%s\": ", key);
    sb_num(b, v);
    if (comma) sb_put(b, ", ", 2);
}

static void sb_arr(sbuf *b, const float *v, int n)
{
    sb_put(b, "[", 1);
    for (int i = 0; i < n; i++) {
        if (i) sb_put(b, ", ", 2);
        sb_num(b, v[i]);
    }
    sb_put(b, "]", 1);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Linear-interpolated quantile of sorted v[0..n) (n >= 1). */
static double quantile(const float *v, int n, double q)
{
    double pos = q * (n - 1);
    int i = (int)floor(pos);
    if (i >= n - 1) return v[n - 1];
    double f = pos - i;
    return v[i] * (1.0 - f) + v[i + 1] * f;
}

static const char *agg_name(int agg)
{
    return agg == GSINK_AGG_PER_SEQUENCE ? "per_sequence" : "sum_then_norm";
}

static const char *vscale_name(int mode)
{
    switch (mode) {
    case GSINK_VSCALE_FULL: return "full";
    case GSINK_VSCALE_BACKWARD_ONLY: return "backward_only";
    default: return "off";
    }
}

static double mean_of(const float *v, int from, int to_incl)
{
    double a = 0;
    for (int i = from; i <= to_incl; i++) a += v[i];
    return a / (to_incl - from + 1);
}

/* ---- the model as a report source ---------------------------------------- */

static bool model_site_available(void *ctx, int layer, gsink_site s, bool grad)
{
    gsink_model *m = ctx;
    int h = gsink__site_heads(m, s), w = gsink__site_width(m, s);
    return gsink__site_ptr(m, layer, s, grad) != NULL && h > 0 && w > 0 && w % h == 0;
}

/* Norm profile of a site (head < 0: aggregate) into out (T values). */
static gsink_status model_norms(void *ctx, int layer, gsink_site s, int head, bool grad, int agg,
                                float *out)
{
    gsink_model *m = ctx;
    int heads = gsink__site_heads(m, s), w = gsink__site_width(m, s);
    gsink_status st = gsink__site_ready(m, layer, s, grad);
    if (st) return st;
    return gsink__diag_tensor_norms(m, gsink__site_ptr(m, layer, s, grad), heads, w / heads, head,
                                    grad ? agg : GSINK_AGG_PER_SEQUENCE, out);
}

static gsink_status model_branch(void *ctx, int layer, int branch, int agg, float *bloat,
                                 float *change, float *compress)
{
    return gsink__diag_branch(ctx, layer, branch, agg, bloat, change, compress);
}

static gsink_status model_qkv(void *ctx, int layer, int agg, float *gq, float *gk, float *gv)
{
    return gsink__diag_qkv(ctx, layer, agg, gq, gk, gv);
}

#define site_available(src, l, s, grad) (src)->site_available((src)->ctx, (l), (s), (grad))
#define site_norms(src, l, s, head, grad, agg, out) \
    (src)->norms((src)->ctx, (l), (s), (head), (grad), (grad) ? (agg) : GSINK_AGG_PER_SEQUENCE, (out))

typedef struct layer_summary {
    float sink_rate, rgs, mar_resid_out, mar_mlp_out;
} layer_summary;

static gsink_status write_layer(const gsink__report_src *m, sbuf *b, int l,
                                const gsink_diag_options *o, bool sink_ok, bool rgs_ok,
                                bool early_ok, float *tmp, float *tmp2, float *tmp3,
                                layer_summary *ls)
{
    const int T = m->T, H = m->cfg->n_heads, KV = m->cfg->n_kv_heads;
    const int P = T < REPORT_PROFILE_MAX ? T : REPORT_PROFILE_MAX;
    const int s = o->sink_position;
    const int agg = o->batch_agg;
    gsink_status st;

    ls->sink_rate = ls->rgs = ls->mar_resid_out = ls->mar_mlp_out = NAN;
    sb_printf(b, "    {\"layer\": %d, ", l);

    /* sink rate and R_GS */
    if (sink_ok) {
        int n = 0;
        for (int h = 0; h < H; h++)
            n += gsink__diag_sink_score(m->win[((size_t)l * (size_t)H + (size_t)h) * (size_t)T + (size_t)s],
                                        m->window) > o->sink_eps;
        ls->sink_rate = (float)n / (float)H;
    }
    sb_key_num(b, "sink_rate", ls->sink_rate, true);
    if (rgs_ok) {
        if ((st = site_norms(m, l, GSINK_SITE_ATTN_NORM_OUT, -1, true, agg, tmp))) return st;
        ls->rgs = gsink__diag_rgs_from_norms(tmp, s, o->rgs_window);
    }
    sb_key_num(b, "gradient_sink_ratio", ls->rgs, true);

    /* massive-activation ratio t0/early at every site */
    sb_printf(b, "\n     \"massive_activation_ratio\": {");
    for (int si = 0, first = 1; si < GSINK_SITE_COUNT; si++) {
        if (!site_available(m, l, (gsink_site)si, false)) continue;
        float r = NAN;
        if (early_ok) {
            if ((st = site_norms(m, l, (gsink_site)si, -1, false, agg, tmp))) return st;
            r = gsink__diag_t0_early(tmp);
        }
        if (si == GSINK_SITE_RESID_OUT) ls->mar_resid_out = r;
        if (si == GSINK_SITE_MLP_OUT) ls->mar_mlp_out = r;
        sb_printf(b, "%s\"%s\": ", first ? "" : ", ", gsink_site_name((gsink_site)si));
        sb_num(b, r);
        first = 0;
    }
    sb_printf(b, "},\n");

    /* value-state norms of token 0 vs early tokens */
    if ((st = site_norms(m, l, GSINK_SITE_V, -1, false, agg, tmp))) return st;
    sb_printf(b, "     \"value_norm\": {");
    sb_key_num(b, "token0", tmp[0], true);
    sb_key_num(b, "early_mean", early_ok ? mean_of(tmp, 1, GSINK_DIAG_EARLY_LAST) : NAN, false);
    sb_printf(b, "},\n");

    /* per query head: sink score, column statistics, q/k gradient at s */
    const size_t hoff = (size_t)l * (size_t)H * (size_t)T;
    sb_printf(b, "     \"heads\": [\n");
    for (int h = 0; h < H; h++) {
        const float *M = m->mass + hoff + (size_t)h * (size_t)T;
        const float *S = m->sq + hoff + (size_t)h * (size_t)T;
        float alpha = NAN;
        if (sink_ok) alpha = m->win[hoff + (size_t)h * (size_t)T + (size_t)s] / (float)m->window;
        sb_printf(b, "       {\"head\": %d, \"kv_head\": %d, ", h, h / (H / KV));
        sb_key_num(b, "sink_score", alpha, true);
        if (sink_ok)
            sb_printf(b, "\"is_sink\": %s, ", alpha > o->sink_eps ? "true" : "false");
        else
            sb_printf(b, "\"is_sink\": null, ");
        sb_key_num(b, "column_mass", M[s], true);
        sb_key_num(b, "column_sq", S[s], true);
        sb_printf(b, "\n        \"column_mass_profile\": ");
        sb_arr(b, M, P);
        sb_printf(b, ",\n        \"column_sq_profile\": ");
        sb_arr(b, S, P);
        if ((st = site_norms(m, l, GSINK_SITE_Q, h, false, agg, tmp))) return st;
        sb_printf(b, ",\n        \"q_norm\": ");
        sb_arr(b, tmp, P);
        if ((st = site_norms(m, l, GSINK_SITE_Q, h, true, agg, tmp))) return st;
        sb_printf(b, ",\n        \"q_grad_norm\": ");
        sb_arr(b, tmp, P);
        sb_printf(b, "}%s\n", h + 1 < H ? "," : "");
    }
    sb_printf(b, "     ],\n");

    /* per KV head: value and key norms and gradients */
    sb_printf(b, "     \"kv_heads\": [\n");
    for (int g = 0; g < KV; g++) {
        sb_printf(b, "       {\"kv_head\": %d", g);
        static const struct { gsink_site site; bool grad; const char *key; } kv[] = {
            {GSINK_SITE_K, false, "k_norm"},
            {GSINK_SITE_K, true, "k_grad_norm"},
            {GSINK_SITE_V, false, "v_norm"},
            {GSINK_SITE_V, true, "v_grad_norm"},
        };
        for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
            if ((st = site_norms(m, l, kv[i].site, g, kv[i].grad, agg, tmp))) return st;
            sb_printf(b, ",\n        \"%s\": ", kv[i].key);
            sb_arr(b, tmp, P);
        }
        sb_printf(b, "}%s\n", g + 1 < KV ? "," : "");
    }
    sb_printf(b, "     ],\n");

    /* token-wise norm profiles of every site */
    for (int grad = 0; grad < 2; grad++) {
        sb_printf(b, "     \"%s\": {", grad ? "gradient_norms" : "activation_norms");
        for (int si = 0, first = 1; si < GSINK_SITE_COUNT; si++) {
            if (!site_available(m, l, (gsink_site)si, grad)) continue;
            if ((st = site_norms(m, l, (gsink_site)si, -1, grad, agg, tmp))) return st;
            sb_printf(b, "%s\n       \"%s\": ", first ? "" : ",", gsink_site_name((gsink_site)si));
            sb_arr(b, tmp, P);
            first = 0;
        }
        sb_printf(b, "},\n");
    }

    /* branch gradient reshaping */
    sb_printf(b, "     \"branch\": {");
    for (int br = 0; br < 2; br++) {
        if ((st = m->branch(m->ctx, l, br, agg, tmp, tmp2, tmp3))) return st;
        sb_printf(b, "%s\n       \"%s\": {\"bloat\": ", br ? "," : "", br ? "mlp" : "attn");
        sb_arr(b, tmp, P);
        sb_printf(b, ",\n                \"change\": ");
        sb_arr(b, tmp2, P);
        sb_printf(b, ",\n                \"compress\": ");
        sb_arr(b, tmp3, P);
        sb_printf(b, "}");
    }
    sb_printf(b, "},\n");

    /* Q/K/V split of dL/d attn_norm_out */
    if ((st = m->qkv(m->ctx, l, agg, tmp, tmp2, tmp3))) return st;
    sb_printf(b, "     \"qkv_gradient_split\": {\"q\": ");
    sb_arr(b, tmp, P);
    sb_printf(b, ",\n       \"k\": ");
    sb_arr(b, tmp2, P);
    sb_printf(b, ",\n       \"v\": ");
    sb_arr(b, tmp3, P);
    sb_printf(b, "}}");
    return GSINK_OK;
}

static void write_stat_block(sbuf *b, const char *key, const float *vals, int n, bool comma)
{
    float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
    int k = 0;
    if (v)
        for (int i = 0; i < n; i++)
            if (isfinite(vals[i])) v[k++] = vals[i];
    sb_printf(b, "    \"%s\": {", key);
    if (!v || k == 0) {
        sb_printf(b, "\"mean\": null, \"median\": null, \"q1\": null, \"q3\": null, \"min\": null, "
                     "\"max\": null, \"n_layers\": 0}");
    } else {
        qsort(v, (size_t)k, sizeof(float), cmp_float);
        double mean = 0;
        for (int i = 0; i < k; i++) mean += v[i];
        sb_key_num(b, "mean", mean / k, true);
        sb_key_num(b, "median", quantile(v, k, 0.5), true);
        sb_key_num(b, "q1", quantile(v, k, 0.25), true);
        sb_key_num(b, "q3", quantile(v, k, 0.75), true);
        sb_key_num(b, "min", v[0], true);
        sb_key_num(b, "max", v[k - 1], true);
        sb_printf(b, "\"n_layers\": %d}", k);
    }
    sb_printf(b, "%s\n", comma ? "," : "");
    free(v);
}

/* Effective options: the defaults `base` overlaid with the caller's (any
 * size it declares), checked. Errors go to errmsg. */
gsink_status gsink__report_options(char *errmsg, const gsink_diag_options *base,
                                   const gsink_diag_options *opts, int T, gsink_diag_options *out)
{
    gsink_diag_options o = *base;
    if (opts) {
        if (opts->size < sizeof(size_t) || opts->size > sizeof(gsink_diag_options))
            return gsink__fail(errmsg, GSINK_ERR_INVALID_ARGUMENT,
                               "gsink_diag_options.size %zu is invalid (use gsink_diag_options_init)",
                               opts->size);
        memcpy(&o, opts, opts->size);
        o.size = sizeof o;
    }
    if (!isfinite(o.sink_eps))
        return gsink__fail(errmsg, GSINK_ERR_INVALID_ARGUMENT, "sink_eps is not finite");
    if (o.batch_agg != GSINK_AGG_SUM_THEN_NORM && o.batch_agg != GSINK_AGG_PER_SEQUENCE)
        return gsink__fail(errmsg, GSINK_ERR_INVALID_ARGUMENT, "batch_agg %d is invalid",
                           (int)o.batch_agg);
    if (o.sink_position < 0 || o.sink_position >= T)
        return gsink__fail(errmsg, GSINK_ERR_OUT_OF_RANGE, "sink_position %d out of range [0, %d)",
                           (int)o.sink_position, T);
    *out = o;
    return GSINK_OK;
}

gsink_status gsink_report_json(gsink_model *m, const gsink_diag_options *opts, char **json)
{
    gsink_status st;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!json) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "json is NULL");
    *json = NULL;
    if ((st = gsink__diag_need(m, true))) return st;
    gsink_diag_options o;
    if ((st = gsink__report_options(m->errmsg, &m->diag, opts, m->T, &o))) return st;
    if ((st = gsink__attn_stats(m))) return st;
    if (!m->hstats.mass || !m->hstats.sq)
        return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER, "attention statistics were not recorded");

    gsink__report_src src = {
        .ctx = m, .errmsg = m->errmsg, .cfg = &m->cfg, .B = m->B, .T = m->T,
        .loss = m->have_targets ? m->last_loss : NAN, .n_targets = m->n_targets,
        .mass = m->hstats.mass, .sq = m->hstats.sq, .win = m->hstats.win, .window = m->hstats.window,
        .site_available = model_site_available, .norms = model_norms, .branch = model_branch,
        .qkv = model_qkv, .input_extra = NULL,
    };
    gsink_vscale_options_init(&src.vscale);
    (void)gsink_vscale_get(m, &src.vscale);
    return gsink__report_write(&src, &o, opts, json);
}

gsink_status gsink__report_write(const gsink__report_src *m, const gsink_diag_options *op,
                                 const gsink_diag_options *opts, char **json)
{
    gsink_status st;
    const gsink_diag_options o = *op;
    const int T = m->T, L = m->cfg->n_layers;
    *json = NULL;
    const int s = o.sink_position;
    const bool sink_ok = m->win && m->window > 0 && s + m->window <= T;
    const bool rgs_ok = o.rgs_window >= 1 && o.rgs_window < T;
    const bool early_ok = T > GSINK_DIAG_EARLY_LAST;
    const int P = T < REPORT_PROFILE_MAX ? T : REPORT_PROFILE_MAX;

    sbuf b = {0};
    float *tmp = malloc(sizeof(float) * (size_t)T * 3);
    layer_summary *ls = calloc((size_t)L, sizeof *ls);
    float *col = calloc((size_t)L + 1, sizeof(float));
    if (!tmp || !ls || !col) {
        st = gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "report: out of host memory");
        goto fail;
    }

    const gsink_vscale_options vo = m->vscale;
    const gsink_config *cfg = m->cfg;

    sb_printf(&b, "{\n  \"schema\": \"%s\",\n  \"library_version\": \"%s\",\n", REPORT_SCHEMA,
              gsink_version_string());
    sb_printf(&b,
              "  \"model\": {\"vocab_size\": %d, \"d_model\": %d, \"n_layers\": %d, \"n_heads\": %d, "
              "\"n_kv_heads\": %d, \"d_head\": %d, \"d_ff\": %d, \"max_seq_len\": %d, ",
              (int)cfg->vocab_size, (int)cfg->d_model, L, (int)cfg->n_heads,
              (int)cfg->n_kv_heads, (int)cfg->d_head, (int)cfg->d_ff, (int)cfg->max_seq_len);
    sb_key_num(&b, "rms_eps", cfg->rms_eps, true);
    sb_key_num(&b, "rope_theta", cfg->rope_theta, true);
    sb_printf(&b, "\"tie_embeddings\": %s, ", cfg->tie_embeddings ? "true" : "false");
    {
        const char *an = gsink_arch_name(cfg->arch), *rn = gsink_rope_scaling_name(cfg->rope_scaling);
        sb_printf(&b, "\"arch\": \"%s\", \"qkv_bias\": %s, \"rope_scaling\": \"%s\", ", an ? an : "unknown",
                  cfg->qkv_bias ? "true" : "false", rn ? rn : "unknown");
        sb_printf(&b, "\"qk_norm\": %s, \"rope_dims\": %d, \"rope_interleaved\": %s, \"sandwich_norm\": %s, ",
                  cfg->qk_norm ? "true" : "false", gsink__rope_dims(cfg),
                  cfg->rope_interleaved ? "true" : "false", cfg->sandwich_norm ? "true" : "false");
        sb_printf(&b, "\"sliding_window\": %d},\n", (int)cfg->sliding_window);
    }
    sb_printf(&b, "  \"vscale\": {\"mode\": \"%s\", ", vscale_name(vo.mode));
    sb_key_num(&b, "sigma", vo.sigma, true);
    sb_printf(&b, "\"learnable_theta\": %s, \"per_query_head\": %s},\n",
              vo.learnable_theta ? "true" : "false", vo.per_query_head ? "true" : "false");
    sb_printf(&b, "  \"input\": {\"batch\": %d, \"seq_len\": %d, ", m->B, T);
    sb_key_num(&b, "loss", m->loss, true);
    sb_printf(&b, "\"n_targets\": %lld", (long long)m->n_targets);
    if (m->input_extra) sb_printf(&b, ", %s", m->input_extra);
    sb_printf(&b, "},\n");
    sb_printf(&b, "  \"options\": {\"sink_position\": %d, ", s);
    sb_key_num(&b, "sink_eps", o.sink_eps, true);
    sb_printf(&b,
              "\"sink_window\": %d, \"rgs_window\": %d, \"batch_agg\": \"%s\", "
              "\"early_tokens\": [1, %d], \"profile_len\": %d},\n",
              m->window, (int)o.rgs_window, agg_name(o.batch_agg), GSINK_DIAG_EARLY_LAST, P);

    sb_printf(&b, "  \"notes\": [");
    {
        int first = 1;
        if (!sink_ok) {
            sb_printf(&b, "\"sink window T_eps=%d at position %d exceeds seq_len %d: sink scores and "
                          "rates are null\"",
                      m->window, s, T);
            first = 0;
        }
        if (opts && opts->size >= offsetof(gsink_diag_options, sink_window) + sizeof(int32_t) &&
            opts->sink_window != m->window) {
            sb_printf(&b, "%s\"sink_window %d differs from the window %d of the last forward, which "
                          "is used\"",
                      first ? "" : ", ", (int)opts->sink_window, m->window);
            first = 0;
        }
        if (!rgs_ok) {
            sb_printf(&b, "%s\"R_GS window T_e=%d needs 1 <= T_e < seq_len=%d: R_GS is null\"",
                      first ? "" : ", ", (int)o.rgs_window, T);
            first = 0;
        }
        if (!early_ok)
            sb_printf(&b, "%s\"seq_len < %d: t0/early ratios are null\"", first ? "" : ", ",
                      GSINK_DIAG_EARLY_LAST + 1);
    }
    sb_printf(&b, "],\n");

    sb_printf(&b, "  \"layers\": [\n");
    for (int l = 0; l < L; l++) {
        if ((st = write_layer(m, &b, l, &o, sink_ok, rgs_ok, early_ok, tmp, tmp + T, tmp + 2 * T,
                              &ls[l])))
            goto fail;
        sb_printf(&b, "%s\n", l + 1 < L ? "," : "");
    }
    sb_printf(&b, "  ],\n  \"summary\": {\n");
    for (int l = 0; l < L; l++) col[l] = ls[l].sink_rate;
    write_stat_block(&b, "sink_rate", col, L, true);
    for (int l = 0; l < L; l++) col[l] = ls[l].rgs;
    write_stat_block(&b, "gradient_sink_ratio", col, L, true);
    for (int l = 0; l < L; l++) col[l] = ls[l].mar_resid_out;
    write_stat_block(&b, "massive_activation_ratio_resid_out", col, L, true);
    for (int l = 0; l < L; l++) col[l] = ls[l].mar_mlp_out;
    write_stat_block(&b, "massive_activation_ratio_mlp_out", col, L, false);
    sb_printf(&b, "  }\n}\n");

    if (b.oom) {
        st = gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "report: out of host memory");
        goto fail;
    }
    free(tmp);
    free(ls);
    free(col);
    *json = b.p;
    return GSINK_OK;
fail:
    free(tmp);
    free(ls);
    free(col);
    free(b.p);
    return st;
}
