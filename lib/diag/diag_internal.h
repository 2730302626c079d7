/*
 * diag_internal.h - helpers shared by the diagnostics (diag.c) and the JSON
 * report (report.c). Not installed.
 */
#ifndef GSINK_DIAG_INTERNAL_H
#define GSINK_DIAG_INTERNAL_H

#include "internal.h"

/* "early" tokens of the massive-activation ratio: positions 1..15. */
#define GSINK_DIAG_EARLY_LAST 15
#define GSINK_DIAG_MAX_TMP 16

/* Temporaries of one call: backend buffers and host buffers, freed together. */
typedef struct gsink_diag_tmp {
    gsink_model *m;
    void *dev[GSINK_DIAG_MAX_TMP];
    float *host[GSINK_DIAG_MAX_TMP];
    int n, nh;
} gsink_diag_tmp;

gsink_status gsink__diag_tmp_dev(gsink_diag_tmp *ts, size_t nfloats, float **out);
gsink_status gsink__diag_tmp_host(gsink_diag_tmp *ts, size_t nfloats, float **out);
void gsink__diag_tmp_free(gsink_diag_tmp *ts);

/* CALL_ORDER unless a forward (and, if asked, a backward) is stored. */
gsink_status gsink__diag_need(gsink_model *m, bool backward);
gsink_status gsink__diag_layer(gsink_model *m, int layer);
gsink_status gsink__diag_rgs_args(gsink_model *m, int s, int t_e);

/* The computations below assume validated arguments. */
gsink_status gsink__diag_tensor_norms(gsink_model *m, const float *x, int heads, int hw, int head,
                                      int agg, float *out);
/* alpha_s^h from the batch mean of col_win at s, and the sink rate of H scores. */
float gsink__diag_sink_score(float win_mean, int window);
float gsink__diag_sink_rate_of(const float *scores, int heads, float eps);
void gsink__diag_sink_scores(gsink_model *m, int layer, int s, float *out);
float gsink__diag_sink_rate(gsink_model *m, int layer, int s, float eps);
float gsink__diag_rgs_from_norms(const float *g, int s, int t_e);
float gsink__diag_t0_early(const float *norms);
gsink_status gsink__diag_branch(gsink_model *m, int layer, int branch, int agg, float *bloat,
                                float *change, float *compress);
/* The same from the three gradient tensors (B, T, d) of the model's backend:
 * dL/dh_in, dL/d(branch out), dL/d(normed input). */
gsink_status gsink__diag_branch_tensors(gsink_model *m, const float *din, const float *dout,
                                        const float *dnorm, int d, int agg, float *bloat,
                                        float *change, float *compress);
gsink_status gsink__diag_massive(gsink_model *m, int layer, gsink_site site, float *ratio);
gsink_status gsink__diag_qkv(gsink_model *m, int layer, int agg, float *gq, float *gk, float *gv);


/* ---- the JSON report (report.c) ------------------------------------------- */

/* Token-wise profiles of the report cover positions [0, min(T, this)). */
#define GSINK_REPORT_PROFILE_MAX 64

/* Where the report's numbers come from: the model's stored tensors
 * (gsink_report_json) or a streaming analysis's sums (stream.c). */
typedef struct gsink__report_src {
    void *ctx;
    char *errmsg;
    const gsink_config *cfg;
    gsink_vscale_options vscale;
    int B, T;
    float loss;
    int64_t n_targets;
    const float *mass, *sq, *win; /* (L, H, T) batch means on the host */
    int window;                   /* T_eps of the forward(s) */
    bool (*site_available)(void *ctx, int layer, gsink_site s, bool grad);
    /* T values; the report reads positions < profile_len, and for R_GS the
     * attn_norm_out gradient up to max(s, T_e). */
    gsink_status (*norms)(void *ctx, int layer, gsink_site s, int head, bool grad, int agg,
                          float *out);
    gsink_status (*branch)(void *ctx, int layer, int branch, int agg, float *bloat,
                           float *change, float *compress);
    gsink_status (*qkv)(void *ctx, int layer, int agg, float *gq, float *gk, float *gv);
    const char *input_extra; /* more members of "input" (JSON text) or NULL */
} gsink__report_src;

gsink_status gsink__report_options(char *errmsg, const gsink_diag_options *base,
                                   const gsink_diag_options *opts, int T, gsink_diag_options *out);
gsink_status gsink__report_write(const gsink__report_src *src, const gsink_diag_options *o,
                                 const gsink_diag_options *opts, char **json);

#endif
