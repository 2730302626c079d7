/*
 * test_identities.c - the paper's exact identities and bounds (arXiv
 * 2603.17771, Sec. 4 and App. D), checked on the library's own model and ops:
 *   Prop. 1   dL/dV = A^T G per head (GQA: summed over the query group)
 *   Prop. 4   dL/dq_0 = 0 under causal masking
 *   Lemma 3   sum_j dL/dz_sj = 0 (softmax row backward, finite differences,
 *             and its model-level consequence sum_j dL/dk_j = 0 per head)
 *   Thm. 2    ||dL/dx|| <= ||gamma||_inf / rms(x) * ||dL/dy|| at every token
 *   Cor. 1    the two deterministic value-side bounds
 *   Prop. 2   V-scale Jacobian = phi I + 2C/(r+C)^2 v v^T, eigenvalues
 *             lambda_perp = r/(r+C), lambda_par = (r^2+3Cr)/(r+C)^2, and
 *             max_r lambda_par = 9/8 at r = 3C, by finite differences of
 *             the backend's vscale_fwd.
 * References are computed here in double from raw copies, never from the
 * diagnostics under test.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "internal.h"

/* ---- a small random model after forward + backward ------------------------- */

typedef struct fixture {
    gsink_model *m;
    gsink_config cfg;
    int B, T;
} fixture;

static void fx_make(fixture *f, int B, int T, int H, int KV, int vscale_mode, uint64_t seed)
{
    gsink_config_init(&f->cfg);
    f->cfg.vocab_size = 61;
    f->cfg.d_model = 32;
    f->cfg.n_layers = 2;
    f->cfg.n_heads = H;
    f->cfg.n_kv_heads = KV;
    f->cfg.d_head = 8;
    f->cfg.d_ff = 48;
    f->cfg.max_seq_len = 128;
    f->cfg.tie_embeddings = 0;
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.seed = seed;
    mo.n_threads = 1;
    ck_assert_int_eq(gsink_model_create(&f->cfg, &mo, &f->m), GSINK_OK);
    f->B = B;
    f->T = T;
    /* random (non-unit) RMSNorm gains so that ||gamma||_inf matters */
    float gain[32];
    char name[96];
    for (int l = 0; l < f->cfg.n_layers; l++) {
        for (int k = 0; k < 2; k++) {
            tu_fill(gain, 32, seed * 31 + (uint64_t)(l * 2 + k), 0.5f);
            for (int i = 0; i < 32; i++) gain[i] += 1.0f;
            snprintf(name, sizeof name, k ? "model.layers.%d.post_attention_layernorm.weight"
                                           : "model.layers.%d.input_layernorm.weight", l);
            ck_assert_int_eq(gsink_set_param(f->m, name, gain, 32), GSINK_OK);
        }
    }
    if (vscale_mode != GSINK_VSCALE_OFF) {
        gsink_vscale_options vo;
        gsink_vscale_options_init(&vo);
        vo.mode = vscale_mode;
        ck_assert_int_eq(gsink_vscale_enable(f->m, &vo), GSINK_OK);
    }
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(B * T));
    int32_t *tgt = malloc(sizeof(int32_t) * (size_t)(B * T));
    uint64_t s = seed;
    for (int i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((s >> 33) % 61);
        tgt[i] = (int32_t)((s >> 13) % 61);
    }
    float loss;
    ck_assert_int_eq(gsink_forward(f->m, tok, tgt, B, T, &loss), GSINK_OK);
    ck_assert_int_eq(gsink_backward(f->m, 0), GSINK_OK);
    free(tok);
    free(tgt);
}

static float *fx_site(fixture *f, int layer, gsink_site site, bool grad, int *width)
{
    int heads, w;
    ck_assert_int_eq(gsink_site_dims(f->m, site, &heads, &w), GSINK_OK);
    size_t n = (size_t)f->B * f->T * heads * w;
    float *x = malloc(n * sizeof(float));
    gsink_status st = grad ? gsink_get_gradient(f->m, layer, site, x, n)
                           : gsink_get_activation(f->m, layer, site, x, n);
    ck_assert_int_eq(st, GSINK_OK);
    *width = heads * w;
    return x;
}

static float *fx_pattern(fixture *f, int layer, int b, int h)
{
    float *a = malloc(sizeof(float) * (size_t)f->T * f->T);
    ck_assert_int_eq(gsink_attention_pattern(f->m, layer, b, h, a, (size_t)f->T * f->T), GSINK_OK);
    return a;
}

static double vnorm(const float *x, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

/* ---- Prop. 1 ---------------------------------------------------------------- */

static void check_prop1(int H, int KV, int mode)
{
    fixture f;
    fx_make(&f, 2, 64, H, KV, mode, 11 + (uint64_t)mode);
    const int T = f.T, dh = f.cfg.d_head, grp = H / KV;
    /* the attention reads v_scaled (equal to v when V-scale is off) */
    gsink_site vs = mode == GSINK_VSCALE_OFF ? GSINK_SITE_V : GSINK_SITE_V_SCALED;
    for (int l = 0; l < f.cfg.n_layers; l++) {
        int wz, wv;
        float *G = fx_site(&f, l, GSINK_SITE_Z, true, &wz);
        float *dV = fx_site(&f, l, vs, true, &wv);
        ck_assert_int_eq(wv, KV * dh);
        for (int b = 0; b < f.B; b++) {
            double *ref = calloc((size_t)T * KV * dh, sizeof(double));
            for (int h = 0; h < H; h++) {
                float *A = fx_pattern(&f, l, b, h);
                int g = h / grp;
                for (int s = 0; s < T; s++)
                    for (int t = s; t < T; t++) {
                        double a = A[(size_t)t * T + s];
                        const float *gt = G + ((size_t)b * T + t) * wz + (size_t)h * dh;
                        for (int e = 0; e < dh; e++) ref[((size_t)s * KV + g) * dh + e] += a * gt[e];
                    }
                free(A);
            }
            double maxref = 0;
            for (size_t i = 0; i < (size_t)T * KV * dh; i++) maxref = fmax(maxref, fabs(ref[i]));
            for (int s = 0; s < T; s++)
                for (int i = 0; i < KV * dh; i++) {
                    double got = dV[((size_t)b * T + s) * wv + i];
                    double want = ref[(size_t)s * KV * dh + i];
                    ck_assert_msg(fabs(got - want) <= 1e-4 * maxref + 1e-3 * fabs(want),
                                  "Prop. 1 layer %d b %d s %d i %d: dV %.6g vs A^T G %.6g", l, b, s, i,
                                  got, want);
                }
            free(ref);
        }
        free(G);
        free(dV);
    }
    gsink_model_free(f.m);
}

START_TEST(test_prop1_mha) { check_prop1(4, 4, GSINK_VSCALE_OFF); }
END_TEST
START_TEST(test_prop1_gqa) { check_prop1(4, 2, GSINK_VSCALE_OFF); }
END_TEST
START_TEST(test_prop1_gqa_vscale) { check_prop1(4, 2, GSINK_VSCALE_FULL); }
END_TEST

/* ---- Prop. 4 and the key-side consequence of Lemma 3 ------------------------ */

START_TEST(test_prop4_query_grad_first_token_zero)
{
    fixture f;
    fx_make(&f, 2, 64, 4, 2, GSINK_VSCALE_OFF, 5);
    for (int l = 0; l < f.cfg.n_layers; l++) {
        int wq;
        float *dq = fx_site(&f, l, GSINK_SITE_Q, true, &wq);
        double scale = 0;
        for (size_t i = 0; i < (size_t)f.B * f.T * wq; i++) scale = fmax(scale, fabs(dq[i]));
        ck_assert(scale > 0);
        for (int b = 0; b < f.B; b++) {
            const float *row0 = dq + (size_t)b * f.T * wq;
            for (int i = 0; i < wq; i++)
                ck_assert_msg(fabs(row0[i]) <= 1e-6 * scale, "dL/dq_0[%d] = %g (max %g)", i,
                              (double)row0[i], scale);
            /* position 1 is not trivially zero */
            ck_assert(vnorm(row0 + wq, wq) > 1e-3 * scale);
        }
        free(dq);
    }
    gsink_model_free(f.m);
}
END_TEST

START_TEST(test_lemma3_key_grads_sum_to_zero)
{
    /* sum_j dL/dz_tj = 0 for every row t implies, with dz_tj/dk_j = q_t/sqrt(dh),
     * sum_j dL/dk_j = sum_t q_t/sqrt(dh) sum_j dL/dz_tj = 0 per sequence and KV head. */
    fixture f;
    fx_make(&f, 2, 64, 4, 2, GSINK_VSCALE_OFF, 6);
    const int dh = f.cfg.d_head;
    for (int l = 0; l < f.cfg.n_layers; l++) {
        int wk;
        float *dk = fx_site(&f, l, GSINK_SITE_K, true, &wk);
        for (int b = 0; b < f.B; b++)
            for (int g = 0; g < f.cfg.n_kv_heads; g++) {
                double sabs = 0, sum[64] = {0};
                for (int t = 0; t < f.T; t++)
                    for (int e = 0; e < dh; e++) {
                        float x = dk[((size_t)b * f.T + t) * wk + (size_t)g * dh + e];
                        sum[e] += x;
                        sabs += fabs(x);
                    }
                for (int e = 0; e < dh; e++)
                    ck_assert_msg(fabs(sum[e]) <= 1e-5 * sabs, "sum_j dL/dk_j[%d] = %g (sum |.| %g)", e,
                                  sum[e], sabs);
            }
        free(dk);
    }
    gsink_model_free(f.m);
}
END_TEST

static double softmax_dot(const float *z, const float *w, int n)
{
    double mx = z[0], s = 0, d = 0;
    for (int i = 1; i < n; i++) mx = fmax(mx, z[i]);
    for (int i = 0; i < n; i++) s += exp(z[i] - mx);
    for (int i = 0; i < n; i++) d += exp(z[i] - mx) / s * w[i];
    return d;
}

START_TEST(test_lemma3_softmax_row_bwd)
{
    enum { N = 17 };
    float z[N], dp[N], p[N], ds[N];
    for (int trial = 0; trial < 5; trial++) {
        tu_fill(z, N, 100 + trial, 3.0f);
        tu_fill(dp, N, 200 + trial, 1.0f);
        double mx = z[0], s = 0;
        for (int i = 1; i < N; i++) mx = fmax(mx, z[i]);
        for (int i = 0; i < N; i++) s += exp(z[i] - mx);
        for (int i = 0; i < N; i++) p[i] = (float)(exp(z[i] - mx) / s);
        gsink__softmax_row_bwd(ds, p, dp, N);
        double sum = 0, sabs = 0;
        for (int j = 0; j < N; j++) {
            sum += ds[j];
            sabs += fabs(ds[j]);
            /* ds_j = d <dp, softmax(z)> / dz_j by central differences (double) */
            float zj = z[j];
            z[j] = zj + 1e-3f;
            double lp = softmax_dot(z, dp, N);
            z[j] = zj - 1e-3f;
            double lm = softmax_dot(z, dp, N);
            z[j] = zj;
            double fd = (lp - lm) / ((double)(zj + 1e-3f) - (double)(zj - 1e-3f));
            ck_assert_msg(tu_close(fd, ds[j], 1e-3, 1e-6), "ds[%d] %g vs fd %g", j, (double)ds[j], fd);
        }
        ck_assert_msg(fabs(sum) <= 1e-6 * sabs + 1e-9, "row sum %g (sum |ds| %g)", sum, sabs);
    }
}
END_TEST

/* ---- Thm. 2 ------------------------------------------------------------------ */

START_TEST(test_thm2_rmsnorm_bound_every_token)
{
    fixture f;
    fx_make(&f, 2, 64, 4, 2, GSINK_VSCALE_OFF, 8);
    const int d = f.cfg.d_model;
    float gain[64];
    char name[96];
    for (int l = 0; l < f.cfg.n_layers; l++)
        for (int br = 0; br < 2; br++) {
            gsink_site s_in = br ? GSINK_SITE_RESID_MID : GSINK_SITE_RESID_IN;
            gsink_site s_out = br ? GSINK_SITE_RESID_OUT : GSINK_SITE_RESID_MID;
            gsink_site s_norm = br ? GSINK_SITE_MLP_NORM_OUT : GSINK_SITE_ATTN_NORM_OUT;
            snprintf(name, sizeof name, br ? "model.layers.%d.post_attention_layernorm.weight"
                                            : "model.layers.%d.input_layernorm.weight", l);
            ck_assert_int_eq(gsink_get_param(f.m, name, gain, (size_t)d), GSINK_OK);
            double ginf = 0;
            for (int i = 0; i < d; i++) ginf = fmax(ginf, fabs(gain[i]));
            int w;
            float *x = fx_site(&f, l, s_in, false, &w);
            float *dx = fx_site(&f, l, s_in, true, &w);
            float *dres = fx_site(&f, l, s_out, true, &w);
            float *dy = fx_site(&f, l, s_norm, true, &w);
            double worst = 0;
            for (int n = 0; n < f.B * f.T; n++) {
                const float *xn = x + (size_t)n * d;
                double ms = 0, gx = 0;
                for (int i = 0; i < d; i++) ms += (double)xn[i] * xn[i];
                double rms = sqrt(ms / d + (double)f.cfg.rms_eps);
                /* the RMSNorm part of dL/dx: total minus the skip path */
                for (int i = 0; i < d; i++) {
                    double v = (double)dx[(size_t)n * d + i] - dres[(size_t)n * d + i];
                    gx += v * v;
                }
                gx = sqrt(gx);
                double bound = ginf / rms * vnorm(dy + (size_t)n * d, d);
                ck_assert_msg(gx <= bound * (1 + 1e-4) + 1e-12,
                              "Thm. 2 violated at layer %d branch %d row %d: %g > %g", l, br, n, gx, bound);
                worst = fmax(worst, gx / bound);
            }
            ck_assert(worst > 0.05); /* the bound is not vacuous here */
            free(x);
            free(dx);
            free(dres);
            free(dy);
        }
    gsink_model_free(f.m);
}
END_TEST

START_TEST(test_thm2_rmsnorm_op_scale)
{
    /* On the op: scaling x by c scales the Jacobian by ~1/c; check the bound
     * for many random upstream gradients and input scales. */
    gsink_backend *be;
    ck_assert_int_eq(gsink_cpu_backend_create(1, &be), GSINK_OK);
    enum { D = 16 };
    float x[D], g[D], dy[D], dx[D], y[D], dgain[D], rstd;
    tu_fill(g, D, 3, 1.0f);
    double ginf = 0;
    for (int i = 0; i < D; i++) ginf = fmax(ginf, fabs(g[i]));
    for (int trial = 0; trial < 40; trial++) {
        float c = powf(10.0f, -1.0f + 0.1f * trial);
        tu_fill(x, D, 50 + trial, c);
        tu_fill(dy, D, 90 + trial, 1.0f);
        ck_assert_int_eq(be->iface->rmsnorm_fwd(be, y, &rstd, x, g, 1, D, 1e-5f), GSINK_OK);
        ck_assert_int_eq(be->iface->rmsnorm_bwd(be, dx, dgain, dy, x, g, &rstd, 1, D, 0), GSINK_OK);
        double ms = 0;
        for (int i = 0; i < D; i++) ms += (double)x[i] * x[i];
        double rms = sqrt(ms / D + 1e-5);
        ck_assert(vnorm(dx, D) <= ginf / rms * vnorm(dy, D) * (1 + 1e-5));
    }
    be->iface->destroy(be);
}
END_TEST

/* ---- Cor. 1 ------------------------------------------------------------------ */

START_TEST(test_corollary1_value_bounds)
{
    fixture f;
    fx_make(&f, 1, 64, 4, 4, GSINK_VSCALE_OFF, 9); /* MHA, one sequence */
    const int T = f.T, dh = f.cfg.d_head, H = f.cfg.n_heads;
    float *M = malloc(sizeof(float) * T), *S = malloc(sizeof(float) * T);
    for (int l = 0; l < f.cfg.n_layers; l++) {
        int wz, wv;
        float *G = fx_site(&f, l, GSINK_SITE_Z, true, &wz);
        float *dV = fx_site(&f, l, GSINK_SITE_V, true, &wv);
        for (int h = 0; h < H; h++) {
            float *A = fx_pattern(&f, l, 0, h);
            ck_assert_int_eq(gsink_attention_column_mass(f.m, l, h, M, S, (size_t)T), GSINK_OK);
            for (int s = 0; s < T; s++) {
                double dv = vnorm(dV + (size_t)s * wv + (size_t)h * dh, dh);
                double tri = 0, gmax = 0, gsq = 0;
                for (int t = s; t < T; t++) {
                    double gn = vnorm(G + (size_t)t * wz + (size_t)h * dh, dh);
                    tri += A[(size_t)t * T + s] * gn;
                    gmax = fmax(gmax, gn);
                    gsq += gn * gn;
                }
                const double tol = 1 + 1e-4;
                ck_assert_msg(dv <= tri * tol + 1e-12, "Cor. 1 (triangle) s=%d: %g > %g", s, dv, tri);
                ck_assert_msg(tri <= M[s] * gmax * tol + 1e-12, "Cor. 1 (M_s max) s=%d", s);
                ck_assert_msg(dv <= sqrt(S[s]) * sqrt(gsq) * tol + 1e-12, "Cor. 1 (Cauchy-Schwarz) s=%d", s);
            }
            free(A);
        }
        free(G);
        free(dV);
    }
    free(M);
    free(S);
    gsink_model_free(f.m);
}
END_TEST

/* ---- Prop. 2: V-scale Jacobian by finite differences of vscale_fwd ---------- */

enum { VD = 8 };
static gsink_backend *vbe;
static const float theta0 = 0.0f;

static void vs_f(const float *v, float C, float *out)
{
    ck_assert_int_eq(vbe->iface->vscale_fwd(vbe, out, v, &theta0, 1, 1, 1, VD, C, GSINK_VSCALE_FULL),
                     GSINK_OK);
}

/* J u by central differences of the forward op. */
static void vs_jvp(const float *v, const float *u, float C, double h, double *out)
{
    float vp[VD], vm[VD], fp[VD], fm[VD];
    for (int i = 0; i < VD; i++) {
        vp[i] = (float)(v[i] + h * u[i]);
        vm[i] = (float)(v[i] - h * u[i]);
    }
    vs_f(vp, C, fp);
    vs_f(vm, C, fm);
    for (int i = 0; i < VD; i++) out[i] = ((double)fp[i] - fm[i]) / (2 * h);
}

/* A vector with ||v||^2 = r. */
static void vs_vec(float *v, double r, uint64_t seed)
{
    tu_fill(v, VD, seed, 1.0f);
    double n = vnorm(v, VD);
    for (int i = 0; i < VD; i++) v[i] = (float)(v[i] / n * sqrt(r));
}

START_TEST(test_prop2_vscale_jacobian_and_eigenvalues)
{
    ck_assert_int_eq(gsink_cpu_backend_create(1, &vbe), GSINK_OK);
    const float C = 1.0f;
    const double rs[] = {0.05, 0.3, 1.0, 3.0, 10.0};
    for (size_t k = 0; k < sizeof rs / sizeof rs[0]; k++) {
        double r = rs[k];
        float v[VD];
        vs_vec(v, r, 7 + k);
        r = vnorm(v, VD) * vnorm(v, VD);
        double phi = r / (r + C), coef = 2.0 * C / ((r + C) * (r + C));
        /* full Jacobian column by column vs phi I + 2C/(r+C)^2 v v^T */
        for (int j = 0; j < VD; j++) {
            float e[VD] = {0};
            e[j] = 1.0f;
            double col[VD];
            vs_jvp(v, e, C, 1e-3, col);
            for (int i = 0; i < VD; i++) {
                double want = (i == j ? phi : 0.0) + coef * v[i] * v[j];
                ck_assert_msg(fabs(col[i] - want) <= 2e-3, "J[%d][%d] r=%g: fd %g vs %g", i, j, r, col[i], want);
            }
        }
        /* backward op = J^T g = J g (symmetric), against finite differences */
        float g[VD], dv[VD];
        tu_fill(g, VD, 300 + k, 1.0f);
        ck_assert_int_eq(vbe->iface->vscale_bwd(vbe, dv, NULL, g, v, &theta0, 1, 1, 1, VD, C,
                                                GSINK_VSCALE_FULL),
                         GSINK_OK);
        double jg[VD];
        vs_jvp(v, g, C, 1e-3, jg);
        for (int i = 0; i < VD; i++)
            ck_assert_msg(fabs(jg[i] - dv[i]) <= 2e-3 * (1 + fabs(jg[i])), "J g [%d]: %g vs bwd %g", i, jg[i],
                          (double)dv[i]);
        /* eigenvalues: radial direction and a direction orthogonal to v */
        float vh[VD], u[VD];
        double nv = vnorm(v, VD);
        for (int i = 0; i < VD; i++) vh[i] = (float)(v[i] / nv);
        tu_fill(u, VD, 500 + k, 1.0f);
        double dot = 0;
        for (int i = 0; i < VD; i++) dot += (double)u[i] * vh[i];
        for (int i = 0; i < VD; i++) u[i] = (float)(u[i] - dot * vh[i]);
        double nu = vnorm(u, VD);
        for (int i = 0; i < VD; i++) u[i] = (float)(u[i] / nu);
        double Jv[VD], Ju[VD];
        vs_jvp(v, vh, C, 1e-3, Jv);
        vs_jvp(v, u, C, 1e-3, Ju);
        double lpar = (r * r + 3 * C * r) / ((r + C) * (r + C)), lperp = r / (r + C);
        for (int i = 0; i < VD; i++) {
            ck_assert_msg(fabs(Jv[i] - lpar * vh[i]) <= 2e-3, "J v = lambda_par v fails at r=%g", r);
            ck_assert_msg(fabs(Ju[i] - lperp * u[i]) <= 2e-3, "J u = lambda_perp u fails at r=%g", r);
        }
    }
    vbe->iface->destroy(vbe);
}
END_TEST

START_TEST(test_prop2_max_lambda_par_is_9_8_at_3C)
{
    ck_assert_int_eq(gsink_cpu_backend_create(1, &vbe), GSINK_OK);
    const float C = 0.5f;
    double best = 0, best_r = 0;
    for (int k = 0; k <= 400; k++) {
        double r = C * 0.05 * k; /* r in [0, 20C], step 0.05C */
        float v[VD], vh[VD];
        vs_vec(v, r > 0 ? r : 1e-6, 42);
        double nv = vnorm(v, VD);
        for (int i = 0; i < VD; i++) vh[i] = (float)(v[i] / nv);
        double Jv[VD];
        vs_jvp(v, vh, C, 2e-3, Jv);
        double lam = 0;
        for (int i = 0; i < VD; i++) lam += Jv[i] * vh[i];
        ck_assert_msg(lam <= 9.0 / 8.0 + 2e-3, "lambda_par %g > 9/8 at r=%g", lam, r);
        if (lam > best) {
            best = lam;
            best_r = nv * nv;
        }
    }
    ck_assert_msg(fabs(best - 9.0 / 8.0) <= 2e-3, "max lambda_par %g, expected 9/8", best);
    ck_assert_msg(fabs(best_r - 3 * C) <= 0.5 * C, "argmax r = %g, expected 3C = %g", best_r, 3 * C);
    vbe->iface->destroy(vbe);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("diag-identities");
    TCase *tc = tcase_create("paper");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_prop1_mha);
    tcase_add_test(tc, test_prop1_gqa);
    tcase_add_test(tc, test_prop1_gqa_vscale);
    tcase_add_test(tc, test_prop4_query_grad_first_token_zero);
    tcase_add_test(tc, test_lemma3_key_grads_sum_to_zero);
    tcase_add_test(tc, test_lemma3_softmax_row_bwd);
    tcase_add_test(tc, test_thm2_rmsnorm_bound_every_token);
    tcase_add_test(tc, test_thm2_rmsnorm_op_scale);
    tcase_add_test(tc, test_corollary1_value_bounds);
    tcase_add_test(tc, test_prop2_vscale_jacobian_and_eigenvalues);
    tcase_add_test(tc, test_prop2_max_lambda_par_is_9_8_at_3C);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    int failed = tu_run_suite(suite(), 1);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
