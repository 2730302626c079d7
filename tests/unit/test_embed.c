/*
 * test_embed.c - the embedding API (gsink_ops_*, gsink_metric_*) on the CPU:
 *  - every operation and metric equals the model API's result for the same
 *    inputs (a small model's site tensors, statistics and diagnostics);
 *  - attention and V-scale gradients against central finite differences;
 *  - bad handles, descriptors, shapes and buffers give specific statuses.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "internal.h" /* GSINK__OWNER: the busy test */

#define L_CHECK 1 /* the layer compared */

typedef struct fixture {
    gsink_model *m;
    gsink_config cfg;
    gsink_vscale_options vo;
    int B, T, W, nscale;
} fixture;

static float *act(fixture *f, gsink_site site, int grad, size_t *n_out)
{
    int heads, width;
    ck_assert_int_eq(gsink_site_dims(f->m, site, &heads, &width), GSINK_OK);
    size_t n = (size_t)f->B * f->T * heads * width;
    float *x = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(x);
    if (grad)
        ck_assert_int_eq(gsink_get_gradient(f->m, L_CHECK, site, x, n), GSINK_OK);
    else
        ck_assert_int_eq(gsink_get_activation(f->m, L_CHECK, site, x, n), GSINK_OK);
    if (n_out) *n_out = n;
    return x;
}

/* A 2-layer model (H=4, KV=2, d_head=8) after forward + backward, V-scale
 * in the given mode with random theta. */
static void fx_make(fixture *f, int vmode, int per_query_head)
{
    memset(f, 0, sizeof *f);
    gsink_config_init(&f->cfg);
    f->cfg.vocab_size = 53;
    f->cfg.d_model = 32;
    f->cfg.n_layers = 2;
    f->cfg.n_heads = 4;
    f->cfg.n_kv_heads = 2;
    f->cfg.d_head = 8;
    f->cfg.d_ff = 40;
    f->cfg.max_seq_len = 64;
    f->cfg.init_std = 0.2f; /* uneven attention */
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.seed = 7;
    mo.n_threads = 1;
    ck_assert_int_eq(gsink_model_create(&f->cfg, &mo, &f->m), GSINK_OK);
    f->B = 2;
    f->T = 20;
    f->W = 5;
    gsink_vscale_options_init(&f->vo);
    f->vo.mode = vmode;
    f->vo.sigma = 0.05f;
    f->vo.per_query_head = per_query_head;
    ck_assert_int_eq(gsink_vscale_enable(f->m, &f->vo), GSINK_OK);
    size_t nt = 0;
    ck_assert_int_eq(gsink_vscale_theta_count(f->m, &nt), GSINK_OK);
    f->nscale = vmode == GSINK_VSCALE_OFF ? f->cfg.n_kv_heads : (int)(nt / (size_t)f->cfg.n_layers);
    if (nt) {
        float th[64];
        tu_fill(th, nt, 3, 1.0f);
        ck_assert_int_eq(gsink_vscale_set_theta(f->m, th, nt), GSINK_OK);
    }
    gsink_diag_options d;
    gsink_diag_options_init(&d);
    d.sink_window = f->W;
    ck_assert_int_eq(gsink_set_diag_options(f->m, &d), GSINK_OK);
    int32_t tok[40], tgt[40];
    for (int i = 0; i < f->B * f->T; i++) {
        tok[i] = (int32_t)((i * 7 + 3) % f->cfg.vocab_size);
        tgt[i] = (int32_t)((i * 11 + 1) % f->cfg.vocab_size);
    }
    float loss;
    ck_assert_int_eq(gsink_forward(f->m, tok, tgt, f->B, f->T, &loss), GSINK_OK);
    ck_assert_int_eq(gsink_zero_grad(f->m), GSINK_OK);
    ck_assert_int_eq(gsink_backward(f->m, 0), GSINK_OK);
}

static gsink_ops *cpu_ops(void)
{
    gsink_ops_options oo;
    gsink_ops_options_init(&oo);
    oo.n_threads = 1;
    gsink_ops *ops = NULL;
    ck_assert_int_eq(gsink_ops_create(&oo, &ops), GSINK_OK);
    ck_assert_ptr_nonnull(ops);
    return ops;
}

static void assert_close_arr(const float *a, const float *b, size_t n, double rtol, double atol,
                             const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(tu_close(a[i], b[i], rtol, atol), "%s[%zu]: %.9g vs %.9g", what, i,
                      (double)a[i], (double)b[i]);
}

/* fp32 rounding: results of the same kernels agree to a few ulps */
#define RT 2e-6
#define AT 1e-7

static void check_ops_vs_model(int vmode, int pqh)
{
    fixture f;
    fx_make(&f, vmode, pqh);
    gsink_ops *ops = cpu_ops();
    const int B = f.B, T = f.T, H = f.cfg.n_heads, KV = f.cfg.n_kv_heads, dh = f.cfg.d_head;
    const int NV = f.nscale;

    /* V-scale forward / backward against the stored v, v_scaled and theta */
    float *v = act(&f, GSINK_SITE_V, 0, NULL);
    size_t nvs;
    float *vs = act(&f, GSINK_SITE_V_SCALED, 0, &nvs);
    float *dvs = act(&f, GSINK_SITE_V_SCALED, 1, NULL);
    float *dv_model = act(&f, GSINK_SITE_V, 1, NULL);
    float theta[16] = {0}, dtheta_model[16] = {0}, dtheta[16] = {0};
    size_t nt = 0;
    ck_assert_int_eq(gsink_vscale_theta_count(f.m, &nt), GSINK_OK);
    if (nt) {
        float all[64], gall[64];
        ck_assert_int_eq(gsink_vscale_get_theta(f.m, all, nt), GSINK_OK);
        ck_assert_int_eq(gsink_vscale_get_theta_grad(f.m, gall, nt), GSINK_OK);
        memcpy(theta, all + (size_t)L_CHECK * NV, sizeof(float) * NV);
        memcpy(dtheta_model, gall + (size_t)L_CHECK * NV, sizeof(float) * NV);
    }
    gsink_vscale_desc vd;
    gsink_vscale_desc_init(&vd);
    vd.mode = vmode;
    vd.n_rows = B * T;
    vd.heads_in = KV;
    vd.heads_out = NV;
    vd.d_head = dh;
    vd.d_model = f.cfg.d_model;
    vd.sigma = f.vo.sigma;
    float *vs2 = calloc(nvs, sizeof(float));
    float *dv2 = calloc((size_t)B * T * KV * dh, sizeof(float));
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vd, v, nt ? theta : NULL, vs2), GSINK_OK);
    assert_close_arr(vs2, vs, nvs, RT, AT, "v_scaled");
    ck_assert_int_eq(gsink_ops_vscale_backward(ops, &vd, v, nt ? theta : NULL, dvs, dv2, dtheta),
                     GSINK_OK);
    assert_close_arr(dv2, dv_model, (size_t)B * T * KV * dh, RT, AT, "dv");
    if (vmode == GSINK_VSCALE_FULL) assert_close_arr(dtheta, dtheta_model, (size_t)NV, 1e-5, 1e-9, "dtheta");

    /* attention forward / backward / statistics against q, k, v_scaled, z */
    float *q = act(&f, GSINK_SITE_Q, 0, NULL);
    float *k = act(&f, GSINK_SITE_K, 0, NULL);
    size_t nz;
    float *z = act(&f, GSINK_SITE_Z, 0, &nz);
    float *dz = act(&f, GSINK_SITE_Z, 1, NULL);
    float *dq_model = act(&f, GSINK_SITE_Q, 1, NULL);
    float *dk_model = act(&f, GSINK_SITE_K, 1, NULL);
    gsink_attn_desc ad;
    gsink_attn_desc_init(&ad);
    ad.batch = B;
    ad.seq = T;
    ad.n_heads = H;
    ad.n_kv_heads = KV;
    ad.n_v_heads = NV;
    ad.d_head = dh;
    ad.sink_window = f.W;
    const size_t BHT = (size_t)B * H * T, nq = (size_t)B * T * H * dh, nk = (size_t)B * T * KV * dh,
                 nvv = (size_t)B * T * NV * dh;
    float *y = calloc(nz, sizeof(float)), *lse = calloc(BHT, sizeof(float));
    float *mass = calloc(BHT, sizeof(float)), *sq = calloc(BHT, sizeof(float)),
          *win = calloc(BHT, sizeof(float));
    ck_assert_int_eq(gsink_ops_attention_forward(ops, &ad, q, k, vs, y, lse, mass, sq, win), GSINK_OK);
    assert_close_arr(y, z, nz, RT, AT, "z");

    /* statistics -> the model's column mass, sink scores and sink rate */
    float *mmean = calloc((size_t)H * T, sizeof(float)), *smean = calloc((size_t)H * T, sizeof(float));
    ck_assert_int_eq(gsink_metric_column_mean(mass, B, H, T, mmean, (size_t)H * T), GSINK_OK);
    ck_assert_int_eq(gsink_metric_column_mean(sq, B, H, T, smean, (size_t)H * T), GSINK_OK);
    for (int h = 0; h < H; h++) {
        float M[64], S[64];
        ck_assert_int_eq(gsink_attention_column_mass(f.m, L_CHECK, h, M, S, 64), GSINK_OK);
        assert_close_arr(mmean + (size_t)h * T, M, (size_t)T, RT, AT, "M_s");
        assert_close_arr(smean + (size_t)h * T, S, (size_t)T, RT, AT, "S_s");
    }
    for (int s = 0; s + f.W <= T; s += 3) {
        float a_model[8], a[8], r_model, r;
        ck_assert_int_eq(gsink_sink_scores(f.m, L_CHECK, s, a_model, 8), GSINK_OK);
        ck_assert_int_eq(gsink_metric_sink_scores(win, B, H, T, f.W, s, a, 8), GSINK_OK);
        assert_close_arr(a, a_model, (size_t)H, RT, AT, "alpha");
        for (float eps = 0.05f; eps < 1.0f; eps += 0.1f) {
            ck_assert_int_eq(gsink_sink_rate(f.m, L_CHECK, s, eps, &r_model), GSINK_OK);
            ck_assert_int_eq(gsink_metric_sink_rate(win, B, H, T, f.W, s, eps, &r), GSINK_OK);
            ck_assert_float_eq(r, r_model);
        }
    }
    /* the stand-alone statistics pass gives the same */
    float *mass2 = calloc(BHT, sizeof(float)), *win2 = calloc(BHT, sizeof(float));
    ck_assert_int_eq(gsink_ops_attention_stats(ops, &ad, q, k, lse, mass2, NULL, win2), GSINK_OK);
    assert_close_arr(mass2, mass, BHT, RT, AT, "mass (stats)");
    assert_close_arr(win2, win, BHT, RT, AT, "win (stats)");

    float *dq = calloc(nq, sizeof(float)), *dk = calloc(nk, sizeof(float)), *dvv = calloc(nvv, sizeof(float));
    memset(mass2, 0, BHT * sizeof(float));
    ck_assert_int_eq(gsink_ops_attention_backward(ops, &ad, q, k, vs, y, lse, dz, dq, dk, dvv, mass2,
                                                  NULL, NULL),
                     GSINK_OK);
    assert_close_arr(dq, dq_model, nq, RT, AT, "dq");
    assert_close_arr(dk, dk_model, nk, RT, AT, "dk");
    assert_close_arr(dvv, dvs, nvv, RT, AT, "dv_scaled");
    assert_close_arr(mass2, mass, BHT, RT, AT, "mass (backward)");

    free(v); free(vs); free(dvs); free(dv_model); free(vs2); free(dv2);
    free(q); free(k); free(z); free(dz); free(dq_model); free(dk_model);
    free(y); free(lse); free(mass); free(sq); free(win); free(mmean); free(smean);
    free(mass2); free(win2); free(dq); free(dk); free(dvv);
    gsink_ops_free(ops);
    gsink_model_free(f.m);
}

START_TEST(test_ops_match_model_off) { check_ops_vs_model(GSINK_VSCALE_OFF, 0); }
END_TEST
START_TEST(test_ops_match_model_full_kv) { check_ops_vs_model(GSINK_VSCALE_FULL, 0); }
END_TEST
START_TEST(test_ops_match_model_full_query_heads) { check_ops_vs_model(GSINK_VSCALE_FULL, 1); }
END_TEST
START_TEST(test_ops_match_model_backward_only) { check_ops_vs_model(GSINK_VSCALE_BACKWARD_ONLY, 1); }
END_TEST

/* ---- metrics against the model's diagnostics ------------------------------- */

START_TEST(test_metrics_match_model)
{
    fixture f;
    fx_make(&f, GSINK_VSCALE_FULL, 0);
    const int B = f.B, T = f.T, d = f.cfg.d_model;
    float a[64], b[64], r1, r2;
    for (int agg = 0; agg < 2; agg++) {
        /* gradient norms, all heads and one head */
        float *g = act(&f, GSINK_SITE_ATTN_NORM_OUT, 1, NULL);
        ck_assert_int_eq(gsink_get_gradient_norms(f.m, L_CHECK, GSINK_SITE_ATTN_NORM_OUT, -1, agg, a, 64), GSINK_OK);
        ck_assert_int_eq(gsink_metric_token_norms(g, B, T, 1, d, -1, agg, b, 64), GSINK_OK);
        assert_close_arr(b, a, (size_t)T, 0, 0, "grad norms");
        /* R_GS from those norms */
        ck_assert_int_eq(gsink_gradient_sink_ratio(f.m, L_CHECK, 0, 10, agg, &r1), GSINK_OK);
        ck_assert_int_eq(gsink_metric_gradient_sink_ratio(b, (size_t)T, 0, 10, &r2), GSINK_OK);
        ck_assert_float_eq(r1, r2);
        free(g);
        float *gq = act(&f, GSINK_SITE_Q, 1, NULL);
        ck_assert_int_eq(gsink_get_gradient_norms(f.m, L_CHECK, GSINK_SITE_Q, 2, agg, a, 64), GSINK_OK);
        ck_assert_int_eq(gsink_metric_token_norms(gq, B, T, f.cfg.n_heads, f.cfg.d_head, 2, agg, b, 64), GSINK_OK);
        assert_close_arr(b, a, (size_t)T, 0, 0, "grad norms (head 2)");
        free(gq);
        /* branch ratios of both branches */
        for (int br = 0; br < 2; br++) {
            gsink_site sin = br ? GSINK_SITE_RESID_MID : GSINK_SITE_RESID_IN;
            gsink_site sout = br ? GSINK_SITE_RESID_OUT : GSINK_SITE_RESID_MID;
            gsink_site snorm = br ? GSINK_SITE_MLP_NORM_OUT : GSINK_SITE_ATTN_NORM_OUT;
            float *gi = act(&f, sin, 1, NULL), *go = act(&f, sout, 1, NULL), *gn = act(&f, snorm, 1, NULL);
            float m1[64], m2[64], m3[64], o1[64], o2[64], o3[64];
            ck_assert_int_eq(gsink_branch_ratios(f.m, L_CHECK, br, agg, m1, m2, m3, 64), GSINK_OK);
            ck_assert_int_eq(gsink_metric_branch_ratios(gi, go, gn, B, T, d, agg, o1, o2, o3, 64), GSINK_OK);
            assert_close_arr(o1, m1, (size_t)T, 0, 0, "bloat");
            assert_close_arr(o2, m2, (size_t)T, 0, 0, "change");
            assert_close_arr(o3, m3, (size_t)T, 0, 0, "compress");
            free(gi); free(go); free(gn);
        }
    }
    /* activation norms (PER_SEQUENCE) and t0/early */
    const gsink_site sites[] = {GSINK_SITE_RESID_OUT, GSINK_SITE_MLP_OUT, GSINK_SITE_V};
    for (int i = 0; i < 3; i++) {
        int heads, width;
        ck_assert_int_eq(gsink_site_dims(f.m, sites[i], &heads, &width), GSINK_OK);
        float *x = act(&f, sites[i], 0, NULL);
        ck_assert_int_eq(gsink_get_activation_norms(f.m, L_CHECK, sites[i], -1, a, 64), GSINK_OK);
        ck_assert_int_eq(gsink_metric_token_norms(x, B, T, heads, width, -1, GSINK_AGG_PER_SEQUENCE, b, 64), GSINK_OK);
        assert_close_arr(b, a, (size_t)T, 0, 0, "activation norms");
        ck_assert_int_eq(gsink_massive_activation_ratio(f.m, L_CHECK, sites[i], &r1), GSINK_OK);
        ck_assert_int_eq(gsink_metric_massive_activation_ratio(b, (size_t)T, &r2), GSINK_OK);
        ck_assert_float_eq(r1, r2);
        free(x);
    }
    gsink_model_free(f.m);
}
END_TEST

/* ---- finite differences ------------------------------------------------------ */

/* L = sum(w_out * out) + sum(w_lse * lse) is not what backward differentiates
 * (lse is an output of the forward only): use L = sum(w * out). */
static double attn_loss(gsink_ops *ops, const gsink_attn_desc *ad, const float *q, const float *k,
                        const float *v, const float *w, size_t ny)
{
    float *y = calloc(ny, sizeof(float));
    float *lse = calloc((size_t)ad->batch * ad->n_heads * ad->seq, sizeof(float));
    ck_assert_int_eq(gsink_ops_attention_forward(ops, ad, q, k, v, y, lse, NULL, NULL, NULL), GSINK_OK);
    double L = tu_dot(y, w, ny);
    free(y);
    free(lse);
    return L;
}

START_TEST(test_attention_finite_differences)
{
    gsink_ops *ops = cpu_ops();
    gsink_attn_desc ad;
    gsink_attn_desc_init(&ad);
    ad.batch = 2;
    ad.seq = 6;
    ad.n_heads = 4;
    ad.n_kv_heads = 2;
    ad.n_v_heads = _i ? 4 : 2;
    ad.d_head = 4;
    ad.softmax_scale = _i ? 0.8f : 0.0f;
    const int B = ad.batch, T = ad.seq, H = ad.n_heads, KV = ad.n_kv_heads, NV = ad.n_v_heads,
              dh = ad.d_head;
    const size_t nq = (size_t)B * T * H * dh, nk = (size_t)B * T * KV * dh, nv = (size_t)B * T * NV * dh;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nv * 4), *w = malloc(nq * 4);
    tu_fill(q, nq, 11, 1.5f);
    tu_fill(k, nk, 12, 1.5f);
    tu_fill(v, nv, 13, 1.0f);
    tu_fill(w, nq, 14, 1.0f);
    float *y = calloc(nq, 4), *lse = calloc((size_t)B * H * T, 4);
    float *dq = calloc(nq, 4), *dk = calloc(nk, 4), *dv = calloc(nv, 4);
    ck_assert_int_eq(gsink_ops_attention_forward(ops, &ad, q, k, v, y, lse, NULL, NULL, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_ops_attention_backward(ops, &ad, q, k, v, y, lse, w, dq, dk, dv, NULL, NULL, NULL),
                     GSINK_OK);
    struct { float *x, *g; size_t n; const char *name; } t[3] = {{q, dq, nq, "dq"}, {k, dk, nk, "dk"}, {v, dv, nv, "dv"}};
    const float h = 1e-2f;
    for (int p = 0; p < 3; p++)
        for (size_t i = 0; i < t[p].n; i += 5) {
            float x0 = t[p].x[i];
            t[p].x[i] = x0 + h;
            double lp = attn_loss(ops, &ad, q, k, v, w, nq);
            t[p].x[i] = x0 - h;
            double lm = attn_loss(ops, &ad, q, k, v, w, nq);
            t[p].x[i] = x0;
            double fd = (lp - lm) / (2.0 * h);
            ck_assert_msg(tu_close(t[p].g[i], fd, 2e-2, 2e-3), "%s[%zu]: analytic %g, fd %g", t[p].name,
                          i, (double)t[p].g[i], fd);
        }
    /* a softmax scale s equals the default scale on q * s * sqrt(d_head) */
    if (_i) {
        float *q2 = malloc(nq * 4), *y2 = calloc(nq, 4), *lse2 = calloc((size_t)B * H * T, 4);
        for (size_t i = 0; i < nq; i++) q2[i] = q[i] * 0.8f * 2.0f;
        ad.softmax_scale = 0.0f;
        ck_assert_int_eq(gsink_ops_attention_forward(ops, &ad, q2, k, v, y2, lse2, NULL, NULL, NULL), GSINK_OK);
        assert_close_arr(y2, y, nq, 1e-5, 1e-6, "scaled q");
        free(q2); free(y2); free(lse2);
    }
    free(q); free(k); free(v); free(w); free(y); free(lse); free(dq); free(dk); free(dv);
    gsink_ops_free(ops);
}
END_TEST

static double vs_loss(gsink_ops *ops, const gsink_vscale_desc *vd, const float *v, const float *theta,
                      const float *w, size_t n)
{
    float *o = calloc(n, sizeof(float));
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, vd, v, theta, o), GSINK_OK);
    double L = tu_dot(o, w, n);
    free(o);
    return L;
}

START_TEST(test_vscale_finite_differences)
{
    gsink_ops *ops = cpu_ops();
    gsink_vscale_desc vd;
    gsink_vscale_desc_init(&vd);
    vd.mode = GSINK_VSCALE_FULL;
    vd.n_rows = 5;
    vd.heads_in = 2;
    vd.heads_out = _i ? 4 : 2;
    vd.d_head = 4;
    vd.d_model = 8;
    vd.sigma = 0.3f;
    const size_t nin = (size_t)vd.n_rows * vd.heads_in * vd.d_head,
                 nout = (size_t)vd.n_rows * vd.heads_out * vd.d_head;
    float v[80], w[80], theta[4], dv[80], dtheta[4] = {0}, dv_bo[80], dv_off[80], dt_bo[4] = {0};
    tu_fill(v, nin, 21, 1.0f);
    tu_fill(w, nout, 22, 1.0f);
    tu_fill(theta, (size_t)vd.heads_out, 23, 0.5f);
    ck_assert_int_eq(gsink_ops_vscale_backward(ops, &vd, v, theta, w, dv, dtheta), GSINK_OK);
    const float h = 1e-2f;
    for (size_t i = 0; i < nin; i++) {
        float x0 = v[i];
        v[i] = x0 + h;
        double lp = vs_loss(ops, &vd, v, theta, w, nout);
        v[i] = x0 - h;
        double lm = vs_loss(ops, &vd, v, theta, w, nout);
        v[i] = x0;
        ck_assert_msg(tu_close(dv[i], (lp - lm) / (2 * h), 1e-2, 1e-3), "dv[%zu] %g vs %g", i, (double)dv[i],
                      (lp - lm) / (2 * h));
    }
    for (int j = 0; j < vd.heads_out; j++) {
        float t0 = theta[j];
        theta[j] = t0 + h;
        double lp = vs_loss(ops, &vd, v, theta, w, nout);
        theta[j] = t0 - h;
        double lm = vs_loss(ops, &vd, v, theta, w, nout);
        theta[j] = t0;
        ck_assert_msg(tu_close(dtheta[j], (lp - lm) / (2 * h), 1e-2, 1e-4), "dtheta[%d] %g vs %g", j,
                      (double)dtheta[j], (lp - lm) / (2 * h));
    }
    /* dtheta accumulates */
    float dt2[4];
    memcpy(dt2, dtheta, sizeof dt2);
    ck_assert_int_eq(gsink_ops_vscale_backward(ops, &vd, v, theta, w, dv, dt2), GSINK_OK);
    for (int j = 0; j < vd.heads_out; j++) ck_assert(tu_close(dt2[j], 2 * dtheta[j], 1e-6, 1e-9));
    /* BACKWARD_ONLY: identity forward, FULL's Jacobian, dtheta untouched */
    vd.mode = GSINK_VSCALE_BACKWARD_ONLY;
    float o[80];
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vd, v, theta, o), GSINK_OK);
    const int rep = vd.heads_out / vd.heads_in;
    for (int n = 0; n < vd.n_rows; n++)
        for (int j = 0; j < vd.heads_out; j++)
            for (int e = 0; e < vd.d_head; e++)
                ck_assert_float_eq(o[((size_t)n * vd.heads_out + j) * vd.d_head + e],
                                   v[((size_t)n * vd.heads_in + j / rep) * vd.d_head + e]);
    ck_assert_int_eq(gsink_ops_vscale_backward(ops, &vd, v, theta, w, dv_bo, dt_bo), GSINK_OK);
    assert_close_arr(dv_bo, dv, nin, 1e-6, 1e-9, "BACKWARD_ONLY dv");
    for (int j = 0; j < vd.heads_out; j++) ck_assert_float_eq(dt_bo[j], 0.0f);
    /* OFF: dv sums dout over the expanded heads; theta may be NULL */
    vd.mode = GSINK_VSCALE_OFF;
    ck_assert_int_eq(gsink_ops_vscale_backward(ops, &vd, v, NULL, w, dv_off, NULL), GSINK_OK);
    for (int n = 0; n < vd.n_rows; n++)
        for (int i = 0; i < vd.heads_in; i++)
            for (int e = 0; e < vd.d_head; e++) {
                double s = 0;
                for (int j = i * rep; j < (i + 1) * rep; j++) s += w[((size_t)n * vd.heads_out + j) * vd.d_head + e];
                ck_assert(tu_close(dv_off[((size_t)n * vd.heads_in + i) * vd.d_head + e], s, 1e-6, 1e-7));
            }
    gsink_ops_free(ops);
}
END_TEST

/* ---- bad arguments ------------------------------------------------------------ */

START_TEST(test_bad_arguments)
{
    gsink_ops *ops = NULL;
    gsink_ops_options oo;
    gsink_ops_options_init(&oo);
    ck_assert_int_eq(oo.size, sizeof oo);
    ck_assert_int_eq(gsink_ops_create(&oo, NULL), GSINK_ERR_NULL_ARGUMENT);
    oo.size = 4;
    ck_assert_int_eq(gsink_ops_create(&oo, &ops), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(ops);
    gsink_ops_options_init(&oo);
    oo.device = 9;
    ck_assert_int_eq(gsink_ops_create(&oo, &ops), GSINK_ERR_INVALID_ARGUMENT);
    oo.device = GSINK_DEVICE_CPU;
    oo.device_index = 1;
    ck_assert_int_eq(gsink_ops_create(&oo, &ops), GSINK_ERR_NO_DEVICE);
    oo.device_index = 0;
    oo.n_threads = -1;
    ck_assert_int_eq(gsink_ops_create(&oo, &ops), GSINK_ERR_INVALID_ARGUMENT);
    gsink_ops_free(NULL);
    ck_assert_int_eq(gsink_ops_create(NULL, &ops), GSINK_OK); /* NULL options: the CPU */
    ck_assert_int_eq(gsink_ops_set_stream(ops, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_ops_set_stream(ops, (void *)ops), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(gsink_ops_errmsg(ops), "stream") != NULL);
    ck_assert_int_eq(gsink_ops_set_stream(NULL, NULL), GSINK_ERR_NULL_ARGUMENT);

    float buf[4096] = {0}, out[4096];
    gsink_attn_desc ad;
    gsink_attn_desc_init(&ad);
    ck_assert_int_eq(ad.sink_window, 64);
    ad.batch = 1;
    ad.seq = 4;
    ad.n_heads = 2;
    ad.n_kv_heads = 1;
    ad.n_v_heads = 1;
    ad.d_head = 4;
    float *b = buf;
    ck_assert_int_eq(gsink_ops_attention_forward(ops, &ad, b, b, b, out, out + 64, NULL, NULL, NULL), GSINK_OK);
    ck_assert_str_eq(gsink_ops_errmsg(ops), "");
#define FWD(d) gsink_ops_attention_forward(ops, (d), b, b, b, out, out + 64, NULL, NULL, NULL)
    ck_assert_int_eq(gsink_ops_attention_forward(NULL, &ad, b, b, b, out, out, NULL, NULL, NULL),
                     GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(FWD(NULL), GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(gsink_ops_attention_forward(ops, &ad, NULL, b, b, out, out, NULL, NULL, NULL),
                     GSINK_ERR_NULL_ARGUMENT);
    ck_assert(strstr(gsink_ops_errmsg(ops), "q is NULL") != NULL);
    ck_assert_int_eq(gsink_ops_attention_forward(ops, &ad, b, b, b, out, NULL, NULL, NULL, NULL),
                     GSINK_ERR_NULL_ARGUMENT);
    gsink_attn_desc bad = ad;
    bad.size = sizeof bad - 4;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(gsink_last_error(), "gsink_attn_desc_init") != NULL);
    bad.size = 0;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    bad = ad; bad.layout = 1;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_UNSUPPORTED);
    ck_assert(strstr(gsink_ops_errmsg(ops), "layout") != NULL);
    bad = ad; bad.batch = 0;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    bad = ad; bad.n_kv_heads = 3; /* 2 % 3 */
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    bad = ad; bad.n_v_heads = 3;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    bad = ad; bad.d_head = 300;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    bad = ad; bad.softmax_scale = -1.0f;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    bad = ad; bad.softmax_scale = NAN;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    bad = ad; bad.sink_window = 0;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    bad = ad; bad.batch = 1 << 20; bad.seq = 1 << 20;
    ck_assert_int_eq(FWD(&bad), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_ops_attention_backward(ops, &ad, b, b, b, b, b, b, out, out, NULL, NULL, NULL, NULL),
                     GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(gsink_ops_attention_stats(ops, &ad, b, b, b, NULL, NULL, NULL), GSINK_ERR_NULL_ARGUMENT);

    gsink_vscale_desc vd;
    gsink_vscale_desc_init(&vd);
    ck_assert_int_eq(vd.mode, GSINK_VSCALE_FULL);
    vd.n_rows = 2;
    vd.heads_in = 1;
    vd.heads_out = 2;
    vd.d_head = 4;
    vd.d_model = 8;
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vd, b, b, out), GSINK_OK);
    gsink_vscale_desc vb = vd;
    vb.size = 8;
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vb, b, b, out), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, NULL, b, b, out), GSINK_ERR_NULL_ARGUMENT);
    vb = vd; vb.mode = 7;
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vb, b, b, out), GSINK_ERR_INVALID_ARGUMENT);
    vb = vd; vb.heads_in = 2; vb.heads_out = 3;
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vb, b, b, out), GSINK_ERR_INVALID_ARGUMENT);
    vb = vd; vb.sigma = 0.0f;
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vb, b, b, out), GSINK_ERR_INVALID_ARGUMENT);
    vb = vd; vb.n_rows = 0;
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vb, b, b, out), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vd, b, NULL, out), GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(gsink_ops_vscale_forward(ops, &vd, NULL, b, out), GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(gsink_ops_vscale_backward(ops, &vd, b, b, b, NULL, NULL), GSINK_ERR_NULL_ARGUMENT);
    gsink_ops_free(ops);

    /* metrics */
    float r;
    ck_assert_int_eq(gsink_metric_token_norms(NULL, 1, 4, 1, 4, -1, 0, out, 4), GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(gsink_metric_token_norms(b, 0, 4, 1, 4, -1, 0, out, 4), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_metric_token_norms(b, 1, 4, 1, 4, -1, 5, out, 4), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_metric_token_norms(b, 1, 4, 2, 4, 2, 0, out, 4), GSINK_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(gsink_metric_token_norms(b, 1, 4, 1, 4, -1, 0, out, 3), GSINK_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(gsink_metric_token_norms(b, 1 << 30, 1 << 30, 1 << 20, 4, -1, 0, out, 4),
                     GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_metric_gradient_sink_ratio(b, 8, 0, 8, &r), GSINK_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(gsink_metric_gradient_sink_ratio(b, 8, 8, 4, &r), GSINK_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(gsink_metric_gradient_sink_ratio(b, 8, 0, 4, NULL), GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(gsink_metric_massive_activation_ratio(b, 15, &r), GSINK_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(gsink_metric_column_mean(b, 1, 2, 4, out, 7), GSINK_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(gsink_metric_column_mean(b, 1, 0, 4, out, 8), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_metric_sink_scores(b, 1, 2, 8, 4, 5, out, 2), GSINK_ERR_OUT_OF_RANGE);
    ck_assert(strstr(gsink_last_error(), "exceeds") != NULL);
    ck_assert_int_eq(gsink_metric_sink_scores(b, 1, 2, 8, 0, 0, out, 2), GSINK_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(gsink_metric_sink_scores(b, 1, 2, 8, 4, 0, out, 1), GSINK_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(gsink_metric_sink_rate(b, 1, 2, 8, 4, 0, NAN, &r), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_metric_sink_rate(b, 1, 2, 8, 4, 0, 0.3f, NULL), GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(gsink_metric_branch_ratios(b, NULL, b, 1, 4, 4, 0, out, NULL, NULL, 4), GSINK_ERR_NULL_ARGUMENT);
    ck_assert_int_eq(gsink_metric_branch_ratios(b, b, b, 1, 4, 0, 0, out, NULL, NULL, 4), GSINK_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(gsink_metric_branch_ratios(b, b, b, 1, 4, 4, 0, out, NULL, NULL, 3), GSINK_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(gsink_metric_branch_ratios(b, b, b, 1, 4, 4, 0, NULL, NULL, NULL, 0), GSINK_OK);
}
END_TEST

/* A handle another thread is inside a call on: every call answers
 * GSINK_ERR_BUSY at once, and free frees nothing. */
START_TEST(test_busy_handle)
{
    gsink_ops *ops = cpu_ops();
    gsink__owner *ow = GSINK__OWNER(ops);
    atomic_store(ow, (uintptr_t)0x1234); /* not this thread's id */
    gsink_attn_desc ad;
    gsink_attn_desc_init(&ad);
    float x[64] = {0};
    ck_assert_int_eq(gsink_ops_attention_forward(ops, &ad, x, x, x, x, x, NULL, NULL, NULL), GSINK_ERR_BUSY);
    ck_assert_int_eq(gsink_ops_set_stream(ops, NULL), GSINK_ERR_BUSY);
    ck_assert(strstr(gsink_ops_errmsg(ops), "another thread") != NULL);
    gsink_ops_free(ops); /* refused: the handle stays valid */
    ck_assert(strstr(gsink_last_error(), "another thread") != NULL);
    atomic_store(ow, (uintptr_t)0);
    ck_assert_int_eq(gsink_ops_set_stream(ops, NULL), GSINK_OK);
    gsink_ops_free(ops);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("embed");
    TCase *tc = tcase_create("embed");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_ops_match_model_off);
    tcase_add_test(tc, test_ops_match_model_full_kv);
    tcase_add_test(tc, test_ops_match_model_full_query_heads);
    tcase_add_test(tc, test_ops_match_model_backward_only);
    tcase_add_test(tc, test_metrics_match_model);
    tcase_add_loop_test(tc, test_attention_finite_differences, 0, 2);
    tcase_add_loop_test(tc, test_vscale_finite_differences, 0, 2);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_busy_handle);
    suite_add_tcase(s, tc);
    return tu_run_suite(s, 1) ? EXIT_FAILURE : EXIT_SUCCESS;
}
