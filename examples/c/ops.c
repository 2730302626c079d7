/*
 * ops.c - libgsink's layers and metrics without a model: V-scale and causal
 * attention with in-kernel column statistics on your own buffers, then the
 * paper's sink scores, sink rate and gradient-sink ratio from them.
 *
 * Build against an installed libgsink:
 *     cc ops.c $(pkg-config --cflags --libs gsink) -lm -o ops
 * Run:
 *     ./ops
 *
 * The inputs are deterministic: random q, k, v in layout (batch, seq, heads,
 * d_head), with every query given a component along key 0, so that the
 * first token becomes an attention sink (and, through dL/dv = A^T dL/dy, a
 * gradient sink of the values).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsink.h>

enum { B = 2, T = 64, H = 4, KV = 2, DH = 16, D_MODEL = 64, WINDOW = 8 };

static int fail(const char *what, gsink_status st)
{
    fprintf(stderr, "ops: %s failed: %s: %s\n", what, gsink_status_str(st), gsink_last_error());
    return 1;
}

static void fill(float *x, size_t n, unsigned seed)
{
    unsigned long long s = seed * 2862933555777941757ull + 3037000493ull;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(s >> 11) * 0x1.0p-53 * 2.0 - 1.0);
    }
}

int main(void)
{
    const size_t nq = (size_t)B * T * H * DH, nk = (size_t)B * T * KV * DH, nst = (size_t)B * H * T;
    float *q = malloc(nq * sizeof(float)), *k = malloc(nk * sizeof(float));
    float *v = malloc(nk * sizeof(float)), *v_scaled = malloc(nk * sizeof(float));
    float *y = malloc(nq * sizeof(float)), *lse = malloc(nst * sizeof(float));
    float *mass = malloc(nst * sizeof(float)), *win = malloc(nst * sizeof(float));
    float *dy = malloc(nq * sizeof(float)), *dq = malloc(nq * sizeof(float));
    float *dk = malloc(nk * sizeof(float)), *dvs = malloc(nk * sizeof(float));
    float *dv = malloc(nk * sizeof(float));
    if (!q || !k || !v || !v_scaled || !y || !lse || !mass || !win || !dy || !dq || !dk || !dvs || !dv) {
        fprintf(stderr, "ops: out of memory\n");
        return 1;
    }
    fill(q, nq, 1);
    fill(k, nk, 2);
    fill(v, nk, 3);
    fill(dy, nq, 4);
    /* every query leans towards key 0 of its sequence: an attention sink */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < DH; i++)
                    q[(((size_t)b * T + t) * H + h) * DH + i] += 3.0f * k[((size_t)b * T * KV + h / (H / KV)) * DH + i];

    gsink_ops *ops = NULL;
    gsink_status st = gsink_ops_create(NULL, &ops); /* the CPU; host pointers */
    if (st) return fail("gsink_ops_create", st);

    /* V-scale per KV head, theta = 0 */
    gsink_vscale_desc vd;
    gsink_vscale_desc_init(&vd);
    vd.mode = GSINK_VSCALE_FULL;
    vd.n_rows = B * T;
    vd.heads_in = KV;
    vd.heads_out = KV;
    vd.d_head = DH;
    vd.d_model = D_MODEL;
    vd.sigma = 0.02f;
    float theta[KV] = {0}, dtheta[KV] = {0};
    if ((st = gsink_ops_vscale_forward(ops, &vd, v, theta, v_scaled))) return fail("vscale forward", st);

    /* attention with the column statistics computed in the kernel */
    gsink_attn_desc ad;
    gsink_attn_desc_init(&ad);
    ad.batch = B;
    ad.seq = T;
    ad.n_heads = H;
    ad.n_kv_heads = KV;
    ad.n_v_heads = KV;
    ad.d_head = DH;
    ad.sink_window = WINDOW;
    if ((st = gsink_ops_attention_forward(ops, &ad, q, k, v_scaled, y, lse, mass, NULL, win)))
        return fail("attention forward", st);

    float alpha[H], rate, M[H * T];
    if ((st = gsink_metric_sink_scores(win, B, H, T, WINDOW, 0, alpha, H))) return fail("sink scores", st);
    if ((st = gsink_metric_sink_rate(win, B, H, T, WINDOW, 0, 0.3f, &rate))) return fail("sink rate", st);
    if ((st = gsink_metric_column_mean(mass, B, H, T, M, (size_t)H * T))) return fail("column mean", st);
    printf("head  alpha_0   M_0\n");
    for (int h = 0; h < H; h++) printf("%4d  %7.4f  %6.2f\n", h, alpha[h], M[(size_t)h * T]);
    printf("sink rate (eps 0.3): %.2f\n", rate);

    /* backward through attention and V-scale */
    if ((st = gsink_ops_attention_backward(ops, &ad, q, k, v_scaled, y, lse, dy, dq, dk, dvs, NULL, NULL,
                                           NULL)))
        return fail("attention backward", st);
    if ((st = gsink_ops_vscale_backward(ops, &vd, v, theta, dvs, dv, dtheta)))
        return fail("vscale backward", st);

    /* token-wise norms of dL/dv (summed over the batch) and their sink ratio */
    float g[T], rgs;
    if ((st = gsink_metric_token_norms(dvs, B, T, KV, DH, GSINK_ALL_HEADS, GSINK_AGG_SUM_THEN_NORM, g, T)))
        return fail("token norms", st);
    if ((st = gsink_metric_gradient_sink_ratio(g, T, 0, 31, &rgs))) return fail("R_GS", st);
    printf("||dL/dv_scaled|| token 0: %.4f, R_GS(0; 31): %.2f\n", g[0], rgs);
    printf("dL/dtheta: %.6g %.6g\n", dtheta[0], dtheta[1]);

    gsink_ops_free(ops);
    free(q); free(k); free(v); free(v_scaled); free(y); free(lse); free(mass); free(win);
    free(dy); free(dq); free(dk); free(dvs); free(dv);
    return 0;
}
