/*
 * test_ops.c - finite-difference gradient checks for every CPU backend op.
 *
 * Each op is wrapped as a scalar L = <R, op(x)> with a fixed random R; the
 * analytic gradient from the op's backward is compared with central
 * differences of L. Ops run in fp32, so steps and tolerances are sized for
 * fp32 rounding (h = 1e-2 on O(1) inputs; the ops are smooth).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "internal.h"

static gsink_backend *be;
static const gsink_backend_iface *F;

static void setup(void)
{
    ck_assert_int_eq(gsink_cpu_backend_create(2, &be), GSINK_OK);
    F = be->iface;
}

static void teardown(void) { F->destroy(be); }

#define FD_H 1e-2f

/* Checks analytic gradient g of a scalar function loss() of x[0..n). */
#define FD_CHECK(x, n, g, loss_expr, rtol, atol)                                    \
    do {                                                                            \
        for (size_t i_ = 0; i_ < (n); i_++) {                                       \
            float s_ = (x)[i_];                                                     \
            (x)[i_] = s_ + FD_H;                                                    \
            double lp_ = (loss_expr);                                               \
            (x)[i_] = s_ - FD_H;                                                    \
            double lm_ = (loss_expr);                                               \
            (x)[i_] = s_;                                                           \
            double fd_ = (lp_ - lm_) / (2.0 * FD_H);                                \
            ck_assert_msg(tu_close(fd_, (g)[i_], (rtol), (atol)),                   \
                          "%s[%zu]: finite difference %.6g vs analytic %.6g", #x, i_, \
                          fd_, (double)(g)[i_]);                                    \
        }                                                                           \
    } while (0)

/* ---- RMSNorm ---------------------------------------------------------------- */

enum { RN = 3, RD = 8 };
static float rn_x[RN * RD], rn_g[RD], rn_R[RN * RD];

static double rms_loss(void)
{
    float out[RN * RD], rstd[RN];
    F->rmsnorm_fwd(be, out, rstd, rn_x, rn_g, RN, RD, 1e-5f);
    return tu_dot(out, rn_R, RN * RD);
}

START_TEST(test_rmsnorm)
{
    tu_fill(rn_x, RN * RD, 1, 1.0f);
    tu_fill(rn_g, RD, 2, 1.0f);
    tu_fill(rn_R, RN * RD, 3, 1.0f);
    float out[RN * RD], rstd[RN], dx[RN * RD], dg[RD] = {0};
    F->rmsnorm_fwd(be, out, rstd, rn_x, rn_g, RN, RD, 1e-5f);
    /* forward against the definition */
    for (int n = 0; n < RN; n++) {
        double ss = 0;
        for (int i = 0; i < RD; i++) ss += (double)rn_x[n * RD + i] * rn_x[n * RD + i];
        double r = 1.0 / sqrt(ss / RD + 1e-5);
        for (int i = 0; i < RD; i++)
            ck_assert(tu_close(out[n * RD + i], rn_x[n * RD + i] * r * rn_g[i], 1e-5, 1e-6));
    }
    F->rmsnorm_bwd(be, dx, dg, rn_R, rn_x, rn_g, rstd, RN, RD, 0);
    FD_CHECK(rn_x, (size_t)RN * RD, dx, rms_loss(), 2e-2, 2e-3);
    FD_CHECK(rn_g, (size_t)RD, dg, rms_loss(), 2e-2, 2e-3);
    /* accumulate mode adds to dx */
    float dx2[RN * RD], dg2[RD] = {0};
    for (int i = 0; i < RN * RD; i++) dx2[i] = 1.0f;
    F->rmsnorm_bwd(be, dx2, dg2, rn_R, rn_x, rn_g, rstd, RN, RD, 1);
    for (int i = 0; i < RN * RD; i++) ck_assert(tu_close(dx2[i], dx[i] + 1.0f, 1e-6, 1e-6));
}
END_TEST

/* ---- RoPE ------------------------------------------------------------------- */

START_TEST(test_rope)
{
    enum { B = 2, T = 5, Hh = 3, DH = 6 };
    float x[B * T * Hh * DH], y[B * T * Hh * DH], R[B * T * Hh * DH], g[B * T * Hh * DH];
    double fr[DH / 2];
    tu_fill(x, sizeof x / 4, 4, 1.0f);
    tu_fill(R, sizeof R / 4, 5, 1.0f);
    /* plain RoPE (scale 1), then a scaled table with a cos/sin factor (yarn) */
    for (int pass = 0; pass < 2; pass++) {
        float sc = pass ? 1.25f : 1.0f;
        for (int i = 0; i < DH / 2; i++) fr[i] = pow(10000.0, -2.0 * i / DH) / (pass ? 3.0 : 1.0);
        memcpy(y, x, sizeof x);
        F->rope(be, y, B, T, Hh, DH, DH, 0, fr, sc, 0);
        /* HF rotate_half reference */
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int h = 0; h < Hh; h++)
                    for (int i = 0; i < DH / 2; i++) {
                        double f = fr[i], c = sc * cos(t * f), s = sc * sin(t * f);
                        size_t o = (((size_t)b * T + t) * Hh + h) * DH;
                        double x1 = x[o + i], x2 = x[o + i + DH / 2];
                        ck_assert(tu_close(y[o + i], x1 * c - x2 * s, 1e-5, 1e-6));
                        ck_assert(tu_close(y[o + i + DH / 2], x2 * c + x1 * s, 1e-5, 1e-6));
                    }
        /* the inverse rotation undoes it (up to sc^2), and is the transpose (= gradient map) */
        F->rope(be, y, B, T, Hh, DH, DH, 0, fr, sc, 1);
        for (size_t i = 0; i < sizeof x / 4; i++) ck_assert(tu_close(y[i], x[i] * sc * sc, 1e-5, 1e-6));
        memcpy(g, R, sizeof R);
        F->rope(be, g, B, T, Hh, DH, DH, 0, fr, sc, 1);
        float tmp[B * T * Hh * DH];
#define ROPE_LOSS (memcpy(tmp, x, sizeof x), F->rope(be, tmp, B, T, Hh, DH, DH, 0, fr, sc, 0), tu_dot(tmp, R, sizeof R / 4))
        FD_CHECK(x, sizeof x / 4, g, ROPE_LOSS, 1e-2, 1e-3);
#undef ROPE_LOSS
    }
}
END_TEST

/* Partial rotary (the first rot dims of a head) with rotate_half or
 * interleaved (GLM) pairs; the rest of the head passes through. */
START_TEST(test_rope_partial_interleaved)
{
    enum { B = 2, T = 5, Hh = 3, DH = 8, ROT = 4 };
    float x[B * T * Hh * DH], y[B * T * Hh * DH], R[B * T * Hh * DH], g[B * T * Hh * DH];
    double fr[ROT / 2];
    tu_fill(x, sizeof x / 4, 6, 1.0f);
    tu_fill(R, sizeof R / 4, 7, 1.0f);
    for (int i = 0; i < ROT / 2; i++) fr[i] = pow(10000.0, -2.0 * i / ROT);
    for (int il = 0; il < 2; il++) {
        memcpy(y, x, sizeof x);
        F->rope(be, y, B, T, Hh, DH, ROT, il, fr, 1.0f, 0);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int h = 0; h < Hh; h++) {
                    size_t o = (((size_t)b * T + t) * Hh + h) * DH;
                    for (int i = 0; i < ROT / 2; i++) {
                        double c = cos(t * fr[i]), s = sin(t * fr[i]);
                        int i1 = il ? 2 * i : i, i2 = il ? 2 * i + 1 : i + ROT / 2;
                        ck_assert(tu_close(y[o + i1], x[o + i1] * c - x[o + i2] * s, 1e-5, 1e-6));
                        ck_assert(tu_close(y[o + i2], x[o + i2] * c + x[o + i1] * s, 1e-5, 1e-6));
                    }
                    for (int i = ROT; i < DH; i++) ck_assert(y[o + i] == x[o + i]); /* pass-through */
                }
        memcpy(g, R, sizeof R);
        F->rope(be, g, B, T, Hh, DH, ROT, il, fr, 1.0f, 1);
        float tmp[B * T * Hh * DH];
#define ROPE_LOSS (memcpy(tmp, x, sizeof x), F->rope(be, tmp, B, T, Hh, DH, ROT, il, fr, 1.0f, 0), tu_dot(tmp, R, sizeof R / 4))
        FD_CHECK(x, sizeof x / 4, g, ROPE_LOSS, 1e-2, 1e-3);
#undef ROPE_LOSS
    }
    ck_assert_int_ne(F->rope(be, y, B, T, Hh, DH, 3, 0, fr, 1.0f, 0), GSINK_OK); /* odd */
    ck_assert_int_ne(F->rope(be, y, B, T, Hh, DH, DH + 2, 0, fr, 1.0f, 0), GSINK_OK);
}
END_TEST

/* ---- Attention (causal, GQA) ---------------------------------------------- */

enum { AB = 2, AT = 6, AH = 4, AKV = 2, ADH = 4 };
static gsink_attn_shape ash;
static float aq[AB * AT * AH * ADH], ak[AB * AT * AKV * ADH], av[AB * AT * AH * ADH];
static float aR[AB * AT * AH * ADH];

static double attn_loss(void)
{
    float y[AB * AT * AH * ADH], lse[AB * AH * AT];
    gsink_attn_stats st = {0};
    F->attention_fwd(be, &ash, y, lse, aq, ak, av, st);
    return tu_dot(y, aR, sizeof y / 4);
}

static void attention_case(int n_v_heads)
{
    ash = (gsink_attn_shape){AB, AT, AH, AKV, n_v_heads, ADH, 3, 0.0f, 0};
    size_t nq = AB * AT * AH * ADH, nk = AB * AT * AKV * ADH, nv = (size_t)AB * AT * n_v_heads * ADH;
    tu_fill(aq, nq, 10, 1.5f);
    tu_fill(ak, nk, 11, 1.5f);
    tu_fill(av, nv, 12, 1.0f);
    tu_fill(aR, nq, 13, 1.0f);
    float y[AB * AT * AH * ADH], lse[AB * AH * AT], mass[AB * AH * AT], sq[AB * AH * AT], win[AB * AH * AT];
    gsink_attn_stats st = {mass, sq, win};
    F->attention_fwd(be, &ash, y, lse, aq, ak, av, st);
    /* naive reference of the forward and of the column statistics */
    for (int b = 0; b < AB; b++)
        for (int h = 0; h < AH; h++) {
            int hk = h / (AH / AKV), hv = h / (AH / n_v_heads);
            double M[AT] = {0}, S[AT] = {0}, W[AT] = {0};
            for (int t = 0; t < AT; t++) {
                double z[AT], mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    z[j] = 0;
                    for (int e = 0; e < ADH; e++)
                        z[j] += (double)aq[((b * AT + t) * AH + h) * ADH + e] * ak[((b * AT + j) * AKV + hk) * ADH + e];
                    z[j] /= sqrt((double)ADH);
                    mx = fmax(mx, z[j]);
                }
                for (int j = 0; j <= t; j++) sum += exp(z[j] - mx);
                ck_assert(tu_close(lse[(b * AH + h) * AT + t], mx + log(sum), 1e-5, 1e-5));
                for (int e = 0; e < ADH; e++) {
                    double acc = 0;
                    for (int j = 0; j <= t; j++) acc += exp(z[j] - mx) / sum * av[((b * AT + j) * n_v_heads + hv) * ADH + e];
                    ck_assert(tu_close(y[((b * AT + t) * AH + h) * ADH + e], acc, 1e-5, 1e-5));
                }
                for (int j = 0; j <= t; j++) {
                    double p = exp(z[j] - mx) / sum;
                    M[j] += p;
                    S[j] += p * p;
                    if (t - j < 3) W[j] += p;
                }
            }
            for (int j = 0; j < AT; j++) {
                size_t o = ((size_t)b * AH + h) * AT + j;
                ck_assert(tu_close(mass[o], M[j], 1e-5, 1e-6));
                ck_assert(tu_close(sq[o], S[j], 1e-5, 1e-6));
                ck_assert(tu_close(win[o], W[j], 1e-5, 1e-6));
            }
        }
    /* the statistics from backward and from the stand-alone pass match the
     * forward's (the same sums over recomputed probabilities) */
    float bm[AB * AH * AT], bs[AB * AH * AT], bw[AB * AH * AT];
    float om[AB * AH * AT], os[AB * AH * AT], ow[AB * AH * AT];
    gsink_attn_stats bst = {bm, bs, bw}, ost = {om, os, ow}, none = {0};
    float dq0[AB * AT * AH * ADH], dk0[AB * AT * AKV * ADH], dv0[AB * AT * AH * ADH];
    F->attention_bwd(be, &ash, dq0, dk0, dv0, aR, aq, ak, av, y, lse, none);
    ck_assert_int_eq(F->attention_stats(be, &ash, aq, ak, lse, ost), GSINK_OK);
    float dq[AB * AT * AH * ADH], dk[AB * AT * AKV * ADH], dv[AB * AT * AH * ADH];
    F->attention_bwd(be, &ash, dq, dk, dv, aR, aq, ak, av, y, lse, bst);
    for (int i = 0; i < AB * AH * AT; i++) {
        ck_assert(tu_close(bm[i], mass[i], 1e-5, 1e-6) && tu_close(om[i], mass[i], 1e-5, 1e-6));
        ck_assert(tu_close(bs[i], sq[i], 1e-5, 1e-6) && tu_close(os[i], sq[i], 1e-5, 1e-6));
        ck_assert(tu_close(bw[i], win[i], 1e-5, 1e-6) && tu_close(ow[i], win[i], 1e-5, 1e-6));
    }
    /* asking for them does not change the gradients */
    ck_assert(memcmp(dq, dq0, sizeof dq) == 0 && memcmp(dk, dk0, sizeof dk) == 0);
    ck_assert(memcmp(dv, dv0, (size_t)nv * sizeof(float)) == 0);
    FD_CHECK(aq, nq, dq, attn_loss(), 2e-2, 2e-3);
    FD_CHECK(ak, nk, dk, attn_loss(), 2e-2, 2e-3);
    FD_CHECK(av, nv, dv, attn_loss(), 2e-2, 2e-3);
    /* Prop. 4 of the paper: the query at position 0 gets no gradient. */
    for (int b = 0; b < AB; b++)
        for (int h = 0; h < AH; h++)
            for (int e = 0; e < ADH; e++) ck_assert(dq[((b * AT + 0) * AH + h) * ADH + e] == 0.0f);
}

START_TEST(test_attention_gqa) { attention_case(AKV); }
END_TEST

START_TEST(test_attention_per_query_values) { attention_case(AH); }
END_TEST

START_TEST(test_softmax_row_bwd_sums_to_zero)
{
    float p[7], dp[7], ds[7];
    tu_fill(dp, 7, 20, 3.0f);
    double s = 0;
    for (int j = 0; j < 7; j++) s += (p[j] = (float)exp(dp[(j + 3) % 7]));
    for (int j = 0; j < 7; j++) p[j] /= (float)s;
    gsink__softmax_row_bwd(ds, p, dp, 7);
    double sum = 0;
    for (int j = 0; j < 7; j++) sum += ds[j];
    ck_assert(fabs(sum) < 1e-6);
}
END_TEST

/* ---- SwiGLU ----------------------------------------------------------------- */

enum { SN = 24 };
static float sg[SN], su[SN], sR[SN];

static double swiglu_loss(void)
{
    float h[SN];
    F->swiglu_fwd(be, h, sg, su, SN);
    return tu_dot(h, sR, SN);
}

START_TEST(test_swiglu)
{
    tu_fill(sg, SN, 30, 3.0f);
    tu_fill(su, SN, 31, 2.0f);
    tu_fill(sR, SN, 32, 1.0f);
    float h[SN], dg[SN], du[SN];
    F->swiglu_fwd(be, h, sg, su, SN);
    for (int i = 0; i < SN; i++) ck_assert(tu_close(h[i], sg[i] / (1 + exp(-sg[i])) * su[i], 1e-5, 1e-6));
    F->swiglu_bwd(be, dg, du, sR, sg, su, SN);
    FD_CHECK(sg, (size_t)SN, dg, swiglu_loss(), 1e-2, 1e-3);
    FD_CHECK(su, (size_t)SN, du, swiglu_loss(), 1e-2, 1e-3);
}
END_TEST

/* ---- Cross-entropy ---------------------------------------------------------- */

enum { XN = 4, XV = 9 };
static float xl[XN * XV];
static int32_t xt[XN] = {3, -1, 0, 8};

static double xent_loss(void)
{
    double s;
    int64_t c;
    F->xent_fwd(be, &s, &c, xl, xt, XN, XV);
    return s / (double)c;
}

START_TEST(test_cross_entropy)
{
    tu_fill(xl, XN * XV, 40, 4.0f);
    double s;
    int64_t c;
    F->xent_fwd(be, &s, &c, xl, xt, XN, XV);
    ck_assert_int_eq(c, 3);
    double ref = 0;
    for (int n = 0; n < XN; n++) {
        if (xt[n] < 0) continue;
        double z = 0;
        for (int j = 0; j < XV; j++) z += exp(xl[n * XV + j]);
        ref += log(z) - xl[n * XV + xt[n]];
    }
    ck_assert(tu_close(s, ref, 1e-6, 1e-6));
    float d[XN * XV];
    F->xent_bwd(be, d, xl, xt, XN, XV, 1.0f / 3.0f);
    for (int j = 0; j < XV; j++) ck_assert(d[1 * XV + j] == 0.0f); /* ignored row */
    FD_CHECK(xl, (size_t)XN * XV, d, xent_loss(), 1e-2, 1e-4);
}
END_TEST

/* ---- Embedding -------------------------------------------------------------- */

START_TEST(test_embedding)
{
    enum { V = 5, D = 3, N = 6 };
    float table[V * D], out[N * D], dout[N * D], dtable[V * D] = {0};
    int32_t tok[N] = {4, 1, 4, 0, 2, 4};
    tu_fill(table, V * D, 50, 1.0f);
    tu_fill(dout, N * D, 51, 1.0f);
    F->embedding_fwd(be, out, tok, table, N, D);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < D; i++) ck_assert(out[n * D + i] == table[tok[n] * D + i]);
    F->embedding_bwd(be, dtable, tok, dout, N, D);
    for (int v = 0; v < V; v++)
        for (int i = 0; i < D; i++) {
            double ref = 0;
            for (int n = 0; n < N; n++)
                if (tok[n] == v) ref += dout[n * D + i];
            ck_assert(tu_close(dtable[v * D + i], ref, 1e-6, 1e-7));
        }
}
END_TEST

/* ---- GEMM ------------------------------------------------------------------- */

START_TEST(test_gemm_transposes)
{
    enum { M = 5, N = 4, K = 3 };
    float A[M * K], At[K * M], Bm[K * N], Bt[N * K], C[M * N];
    tu_fill(A, M * K, 60, 1.0f);
    tu_fill(Bm, K * N, 61, 1.0f);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) At[k * M + i] = A[i * K + k];
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) Bt[j * K + k] = Bm[k * N + j];
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            for (int i = 0; i < M * N; i++) C[i] = 1.0f;
            F->gemm(be, ta, tb, M, N, K, 2.0f, ta ? At : A, ta ? M : K, tb ? Bt : Bm, tb ? K : N, 0.5f, C, N);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double r = 0;
                    for (int k = 0; k < K; k++) r += (double)A[i * K + k] * Bm[k * N + j];
                    ck_assert(tu_close(C[i * N + j], 2.0 * r + 0.5, 1e-5, 1e-6));
                }
        }
}
END_TEST

/* ---- V-scale ---------------------------------------------------------------- */

enum { VN = 3, VHIN = 2, VHOUT = 4, VDH = 5 };
static float vv[VN * VHIN * VDH], vth[VHOUT], vR[VN * VHOUT * VDH];
static int vmode, vhout;
static const float vc0 = 0.3f;

static double vscale_loss(void)
{
    float out[VN * VHOUT * VDH];
    F->vscale_fwd(be, out, vv, vth, VN, VHIN, vhout, VDH, vc0, vmode);
    return tu_dot(out, vR, (size_t)VN * vhout * VDH);
}

static void vscale_case(int hout)
{
    vhout = hout;
    vmode = GSINK_VSCALE_FULL;
    tu_fill(vv, sizeof vv / 4, 70, 0.6f);
    tu_fill(vth, VHOUT, 71, 0.5f);
    tu_fill(vR, sizeof vR / 4, 72, 1.0f);
    float out[VN * VHOUT * VDH], dv[VN * VHIN * VDH], dth[VHOUT] = {0};
    F->vscale_fwd(be, out, vv, vth, VN, VHIN, hout, VDH, vc0, vmode);
    int rep = hout / VHIN;
    for (int n = 0; n < VN; n++)
        for (int j = 0; j < hout; j++) {
            const float *x = vv + ((size_t)n * VHIN + j / rep) * VDH;
            double r = tu_dot(x, x, VDH), C = vc0 * exp(vth[j]);
            for (int e = 0; e < VDH; e++)
                ck_assert(tu_close(out[((size_t)n * hout + j) * VDH + e], r / (r + C) * x[e], 1e-5, 1e-7));
        }
    F->vscale_bwd(be, dv, dth, vR, vv, vth, VN, VHIN, hout, VDH, vc0, vmode);
    FD_CHECK(vv, sizeof vv / 4, dv, vscale_loss(), 2e-2, 1e-3);
    FD_CHECK(vth, (size_t)hout, dth, vscale_loss(), 2e-2, 1e-3);
    /* backward-only: identity forward, the same input gradient, no theta gradient */
    float out2[VN * VHOUT * VDH], dv2[VN * VHIN * VDH], dth2[VHOUT] = {0};
    F->vscale_fwd(be, out2, vv, vth, VN, VHIN, hout, VDH, vc0, GSINK_VSCALE_BACKWARD_ONLY);
    for (int n = 0; n < VN; n++)
        for (int j = 0; j < hout; j++)
            for (int e = 0; e < VDH; e++)
                ck_assert(out2[((size_t)n * hout + j) * VDH + e] == vv[((size_t)n * VHIN + j / rep) * VDH + e]);
    F->vscale_bwd(be, dv2, dth2, vR, vv, vth, VN, VHIN, hout, VDH, vc0, GSINK_VSCALE_BACKWARD_ONLY);
    for (size_t i = 0; i < sizeof dv / 4; i++) ck_assert(tu_close(dv2[i], dv[i], 1e-6, 1e-7));
    for (int j = 0; j < hout; j++) ck_assert(dth2[j] == 0.0f);
}

START_TEST(test_vscale_per_kv_head) { vscale_case(VHIN); }
END_TEST

START_TEST(test_vscale_per_query_head) { vscale_case(VHOUT); }
END_TEST

/* ---- reductions and AdamW ---------------------------------------------------- */

START_TEST(test_reductions)
{
    float x[2 * 3 * 4];
    tu_fill(x, 24, 80, 2.0f);
    float rs[6], bs[12];
    F->row_sumsq(be, rs, x, 3, 2, 4); /* 3 rows, 2 heads of width 4 */
    for (int r = 0; r < 3; r++)
        for (int h = 0; h < 2; h++) ck_assert(tu_close(rs[r * 2 + h], tu_dot(x + r * 8 + h * 4, x + r * 8 + h * 4, 4), 1e-6, 1e-7));
    F->batch_sum(be, bs, x, 2, 12);
    for (int i = 0; i < 12; i++) ck_assert(tu_close(bs[i], (double)x[i] + x[12 + i], 1e-6, 1e-7));
    double ss;
    int fin;
    F->sumsq(be, &ss, &fin, x, 24);
    ck_assert(fin);
    ck_assert(tu_close(ss, tu_dot(x, x, 24), 1e-6, 1e-9));
    x[5] = NAN;
    F->sumsq(be, &ss, &fin, x, 24);
    ck_assert(!fin);
}
END_TEST

START_TEST(test_adamw_matches_formula)
{
    float p[5], g[5], m[5] = {0}, v[5] = {0}, p0[5];
    tu_fill(p, 5, 90, 1.0f);
    tu_fill(g, 5, 91, 1.0f);
    memcpy(p0, p, sizeof p);
    F->adamw(be, p, g, m, v, 5, 0.1f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f - 0.9f, 1.0f - 0.95f, 1.0f);
    for (int i = 0; i < 5; i++) {
        double pp = p0[i] * (1 - 0.1 * 0.1);
        double mm = 0.1 * g[i], vv2 = 0.05 * g[i] * g[i];
        double upd = (mm / 0.1) / (sqrt(vv2 / 0.05) + 1e-8);
        ck_assert(tu_close(p[i], pp - 0.1 * upd, 1e-5, 1e-6));
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_rope_partial_interleaved);
    tcase_add_test(tc, test_attention_gqa);
    tcase_add_test(tc, test_attention_per_query_values);
    tcase_add_test(tc, test_softmax_row_bwd_sums_to_zero);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_cross_entropy);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_gemm_transposes);
    tcase_add_test(tc, test_vscale_per_kv_head);
    tcase_add_test(tc, test_vscale_per_query_head);
    tcase_add_test(tc, test_reductions);
    tcase_add_test(tc, test_adamw_matches_formula);
    suite_add_tcase(s, tc);
    int failed = tu_run_suite(s, 1);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
