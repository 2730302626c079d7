/*
 * stream.c - streaming diagnostics over micro-batches (gsink_analysis_*).
 *
 * A diagnostic batch of N sequences runs as micro-batches. Each micro-batch
 * is one forward and one backward (cross-entropy gradient scaled by 1 per
 * target token, i.e. the gradient of the summed loss); after each layer's
 * forward a hook folds that layer's activation norms into sums, and after
 * each layer's backward another folds its site gradients, so the model may
 * share its site-gradient and unread site-activation buffers between layers
 * (GSINK_MODEL_DISCARD_SITE_GRADS, GSINK_MODEL_DISCARD_SITE_ACTIVATIONS). Every accumulator is a plain sum over
 * sequences, held in one array of doubles (the "state"): the report divides
 * by the global sequence count N and target count G at the end, so the state
 * of several handles can be summed (all-reduce) and gives the report of the
 * union of their micro-batches. Gradient norms are homogeneous, so dividing
 * the summed unscaled gradient by G is the gradient of the batch-mean loss.
 *
 * Per layer the state holds (P = min(T, 64), the report's profile length;
 * R = T for attn_norm_out, whose whole profile R_GS and Figure 1 use, else P):
 *   gsum[site]  (R, width)      sum_b dL/dx_bt             (sum-then-norm)
 *   gps[site]   (R, 1 + nh)     sum_b ||dL/dx_bt|| (+ per head for q, k, v)
 *   aps[site]   (P, 1 + nh)     sum_b ||x_bt||     (+ per head for q, k, v)
 *   pre[q,k,v]  (P, width)      sum_b of the gradient at the projection
 *                               output (before RoPE and the q/k norm)
 *   qkvps       (3, P)          sum_b ||pre_bt W||
 *   bps         (2, 3, P)       sum_b of Bloat, Change, Compress per (b, t)
 *   mass, sq, win (H, T)        sum_b of the attention column statistics
 * plus 4 global sums: sequences, micro-batches, summed loss, target tokens.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diag_internal.h"

#define HDR 4 /* sequences, micro_batches, loss_sum, n_targets */

struct gsink_analysis {
    gsink__owner owner; /* first, as in every handle */
    gsink_model *m;     /* NULL once the model was freed (gsink__analyses_detach) */
    gsink_analysis *prev, *next; /* the model's list of its analyses */
    char errmsg[GSINK_MSG_SIZE];
    gsink_diag_options opts;
    int T, P, L, H, KV, dh, d, nsh;
    bool finished, broken;
    int W[GSINK_SITE_COUNT], HS[GSINK_SITE_COUNT], NH[GSINK_SITE_COUNT], R[GSINK_SITE_COUNT];
    int Wp[3];
    size_t off_gsum[GSINK_SITE_COUNT], off_gps[GSINK_SITE_COUNT], off_aps[GSINK_SITE_COUNT];
    size_t off_pre[3], off_qkvps, off_bps, off_mass, off_sq, off_win, per_layer;
    /* the report's squared norms of the sums, per layer (norms_sync):
     * R x heads per site, then 4 x P per branch */
    size_t off_ns[GSINK_SITE_COUNT], off_nb, per_layer_ns;
    size_t n_state;      /* HDR + L * per_layer */
    double hdr[HDR];     /* the global sums, on the host */
    double *dev;         /* the L per-layer blocks, in backend memory (the hooks add to them) */
    double *host;        /* their host copy for the report, made on first use */
    bool host_fresh;     /* host equals dev (host_sync) */
    double *ns;          /* (L, per_layer_ns) squared norms of the sums for the report (norms_sync) */
    bool ns_fresh;       /* ns is of the current sums */
    size_t peak_tmp_bytes; /* largest per-micro-batch temporaries so far */
};

static const gsink_site qkv_site[3] = {GSINK_SITE_Q, GSINK_SITE_K, GSINK_SITE_V};

/* Layer l's block of sums: on the backend (dev_block, what the hooks add to)
 * and its host copy (layer_block, what the report reads; host_sync first). */
static double *dev_block(gsink_analysis *a, int l) { return a->dev + (size_t)l * a->per_layer; }
static double *layer_block(gsink_analysis *a, int l) { return a->host + (size_t)l * a->per_layer; }

static size_t layers_bytes(const gsink_analysis *a) { return (a->n_state - HDR) * sizeof(double); }

/* The analysis's model was freed: its sums are on the host, nothing else works. */
#define NEED_MODEL(a)                                                                         \
    do {                                                                                      \
        if (!(a)->m)                                                                          \
            return gsink__fail((a)->errmsg, GSINK_ERR_CALL_ORDER,                             \
                               "the analysis's model was freed (only the state functions work)"); \
    } while (0)

/* Copies each layer's block of sums from offset `from` on into a host
 * buffer of their own (allocated once): 0 for all of them, off_gps[0] for the
 * report's, which leaves out the leading Σ dL/dx of every site (most of the
 * bytes; the report only needs their norms: norms_sync). */
static gsink_status copy_sums(gsink_analysis *a, size_t from)
{
    gsink_model *m = a->m;
    if (a->host == a->dev) a->host = NULL; /* was read in place */
    if (!a->host && !(a->host = malloc(layers_bytes(a))))
        return gsink__fail(a->errmsg, GSINK_ERR_OUT_OF_MEMORY, "analysis: cannot allocate the host copy of the sums");
    for (int l = 0; l < a->L; l++) {
        gsink_status st = m->be->iface->download(m->be, layer_block(a, l) + from, dev_block(a, l) + from,
                                                 (a->per_layer - from) * sizeof(double));
        if (st) return gsink__fail(a->errmsg, st, "analysis: reading the sums: %s", m->be->err);
    }
    a->host_fresh = true;
    return GSINK_OK;
}

/* Makes a->host current for the report, once after each change: a backend
 * whose memory is host memory (the CPU) is read in place. */
static gsink_status host_sync(gsink_analysis *a)
{
    if (a->host_fresh) return GSINK_OK;
    if (a->m->be->iface->host_memory) {
        a->host = a->dev;
        a->host_fresh = true;
        return GSINK_OK;
    }
    return copy_sums(a, a->off_gps[0]);
}

/* ---- layout ------------------------------------------------------------ */

static bool layout(gsink_analysis *a)
{
    gsink_model *m = a->m;
    size_t off = 0, n;
#define ADD(count)                                                      \
    do {                                                                \
        if ((count) > SIZE_MAX / 16 || off > SIZE_MAX / 2) return false; \
        off += (count);                                                 \
    } while (0)
    for (int si = 0; si < GSINK_SITE_COUNT; si++) {
        a->W[si] = gsink__site_width(m, (gsink_site)si);
        a->HS[si] = gsink__site_heads(m, (gsink_site)si);
        a->NH[si] = (si == GSINK_SITE_Q || si == GSINK_SITE_K || si == GSINK_SITE_V) ? a->HS[si] : 0;
        a->R[si] = si == GSINK_SITE_ATTN_NORM_OUT ? a->T : a->P;
    }
    for (int si = 0; si < GSINK_SITE_COUNT; si++) {
        a->off_gsum[si] = off;
        if (!gsink__mul_size((size_t)a->R[si], (size_t)a->W[si], &n)) return false;
        ADD(n);
    }
    for (int si = 0; si < GSINK_SITE_COUNT; si++) {
        a->off_gps[si] = off;
        ADD((size_t)a->R[si] * (size_t)(1 + a->NH[si]));
    }
    for (int si = 0; si < GSINK_SITE_COUNT; si++) {
        a->off_aps[si] = off;
        ADD((size_t)a->P * (size_t)(1 + a->NH[si]));
    }
    for (int p = 0; p < 3; p++) {
        a->Wp[p] = a->W[qkv_site[p]];
        a->off_pre[p] = off;
        ADD((size_t)a->P * (size_t)a->Wp[p]);
    }
    a->off_qkvps = off;
    ADD(3 * (size_t)a->P);
    a->off_bps = off;
    ADD(6 * (size_t)a->P);
    const size_t HT = (size_t)a->H * (size_t)a->T;
    a->off_mass = off;
    ADD(HT);
    a->off_sq = off;
    ADD(HT);
    a->off_win = off;
    ADD(HT);
#undef ADD
    a->per_layer = off;
    size_t ns = 0;
    for (int si = 0; si < GSINK_SITE_COUNT; si++) {
        a->off_ns[si] = ns;
        ns += (size_t)a->R[si] * (size_t)a->HS[si];
    }
    a->off_nb = ns;
    a->per_layer_ns = ns + 2 * 4 * (size_t)a->P;
    if (!gsink__mul_size(off, (size_t)a->L, &n) || n > SIZE_MAX / sizeof(double) - HDR) return false;
    a->n_state = HDR + n;
    return true;
}

/* ---- handle ------------------------------------------------------------ */

gsink_status gsink_analysis_begin(gsink_model *m, int seq_len, const gsink_diag_options *opts,
                                  gsink_analysis **out)
{
    gsink_status st;
    if (out) *out = NULL;
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!out) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    if (seq_len < 1)
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "seq_len = %d must be >= 1", seq_len);
    if (seq_len > m->cfg.max_seq_len)
        return gsink__fail(m->errmsg, GSINK_ERR_SEQ_TOO_LONG, "seq_len = %d exceeds max_seq_len = %d",
                           seq_len, (int)m->cfg.max_seq_len);
    gsink_diag_options o;
    if ((st = gsink__report_options(m->errmsg, &m->diag, opts, seq_len, &o))) return st;
    if (o.sink_window < 1)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE, "sink_window %d must be >= 1",
                           (int)o.sink_window);
    gsink_analysis *a = calloc(1, sizeof *a);
    if (!a) return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "analysis: out of host memory");
    a->m = m;
    a->opts = o;
    a->T = seq_len;
    a->P = seq_len < GSINK_REPORT_PROFILE_MAX ? seq_len : GSINK_REPORT_PROFILE_MAX;
    a->L = m->cfg.n_layers;
    a->H = m->cfg.n_heads;
    a->KV = m->cfg.n_kv_heads;
    a->dh = m->cfg.d_head;
    a->d = m->cfg.d_model;
    a->nsh = m->vs.n_scale_heads;
    if (!layout(a)) {
        free(a);
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY,
                           "analysis: the sums for seq_len %d exceed the address space", seq_len);
    }
    const gsink_backend_iface *be = m->be->iface;
    if ((st = be->alloc(m->be, layers_bytes(a), (void **)&a->dev)) ||
        (st = be->zero(m->be, a->dev, layers_bytes(a)))) {
        st = gsink__fail(m->errmsg, st, "analysis: cannot allocate the %zu MiB of sums for seq_len %d: %s",
                         layers_bytes(a) >> 20, seq_len, m->be->err);
        if (a->dev) be->free(m->be, a->dev);
        free(a);
        return st;
    }
    a->next = m->analyses;
    if (a->next) a->next->prev = a;
    m->analyses = a;
    *out = a;
    return GSINK_OK;
}

static void unlink_from_model(gsink_analysis *a)
{
    if (a->prev) a->prev->next = a->next;
    else a->m->analyses = a->next;
    if (a->next) a->next->prev = a->prev;
    a->prev = a->next = NULL;
}

void gsink_analysis_free(gsink_analysis *a)
{
    if (!a) return;
    gsink__use u;
    if (!gsink__use_acquire(&u, &a->owner)) {
        (void)gsink__busy("analysis");
        return;
    }
    if (a->m) { /* else the model's free moved the sums to the host already */
        gsink__use um;
        if (!gsink__use_acquire(&um, &a->m->owner)) {
            gsink__use_release(&u);
            (void)gsink__busy("model");
            return;
        }
        if (a->host == a->dev) a->host = NULL; /* read in place */
        a->m->be->iface->free(a->m->be, a->dev);
        unlink_from_model(a);
        gsink__use_release(&um);
    }
    free(a->host);
    free(a->ns);
    free(a);
}

bool gsink__analyses_detach(gsink_model *m)
{
    gsink_analysis *a;
    for (a = m->analyses; a; a = a->next) {
        gsink__use u;
        if (!gsink__use_acquire(&u, &a->owner) || !u.owner) { /* busy (or this thread is inside it) */
            gsink__use_release(&u);
            for (gsink_analysis *q = m->analyses; q != a; q = q->next)
                atomic_store_explicit(&q->owner, 0, memory_order_release);
            return false;
        }
    }
    while ((a = m->analyses) != NULL) {
        if (copy_sums(a, 0)) a->broken = true; /* the message stays in a->errmsg */
        m->be->iface->free(m->be, a->dev);
        a->dev = NULL;
        unlink_from_model(a);
        a->m = NULL;
        atomic_store_explicit(&a->owner, 0, memory_order_release);
    }
    return true;
}

const char *gsink_analysis_errmsg(const gsink_analysis *a)
{
    if (!a) return "analysis is NULL";
    if (gsink__used_elsewhere(&a->owner)) return GSINK__BUSY_MSG("analysis");
    return a->errmsg;
}

/* ---- one micro-batch ------------------------------------------------------ */

typedef struct hook_ctx {
    gsink_analysis *a;
    int B;
    int fwd_layers;           /* layers the forward hook has folded */
    float *dg, *dg2, *dproj;  /* backend temporaries */
    float *bn;                /* (BN_COUNT, B, P) per-sequence norms for the branch ratios */
} hook_ctx;

/* bn slots: the gradient norms of five sites, and ||g3|| of the branch */
enum { BN_RESID_IN, BN_RESID_MID, BN_RESID_OUT, BN_ATTN_NORM, BN_MLP_NORM, BN_G3, BN_COUNT };

static int bn_slot(int si)
{
    switch (si) {
    case GSINK_SITE_RESID_IN: return BN_RESID_IN;
    case GSINK_SITE_RESID_MID: return BN_RESID_MID;
    case GSINK_SITE_RESID_OUT: return BN_RESID_OUT;
    case GSINK_SITE_ATTN_NORM_OUT: return BN_ATTN_NORM;
    case GSINK_SITE_MLP_NORM_OUT: return BN_MLP_NORM;
    default: return -1;
    }
}

static float *bn_of(hook_ctx *c, int slot) { return c->bn + (size_t)slot * (size_t)c->B * (size_t)c->a->P; }

#define BE_TRY(m, call, what)                                                \
    do {                                                                     \
        gsink_status st_ = gsink__be_check((m), (call), (what));             \
        if (st_) return st_;                                                 \
    } while (0)

/* Everything below runs on the backend and adds to the layer's block of
 * sums there (dev_block): a micro-batch moves nothing to the host. */

/* acc (R rows of W) += sum_b of the first R rows of x(B, T, W) */
static gsink_status fold_rows(hook_ctx *c, double *acc, const float *x, int W, int R)
{
    gsink_model *m = c->a->m;
    BE_TRY(m, m->be->iface->fold_sum(m->be, acc, x, c->B, (size_t)c->a->T * (size_t)W, (size_t)R * (size_t)W),
           "fold_sum");
    return GSINK_OK;
}

/* acc (R rows of 1 + nh) += sum_b ||x_bt|| (and per head, q/k/v) of site si */
static gsink_status fold_site_norms(hook_ctx *c, double *acc, const float *x, int si, int R)
{
    gsink_analysis *a = c->a;
    gsink_model *m = a->m;
    const int heads = a->HS[si];
    BE_TRY(m, m->be->iface->fold_norms(m->be, acc, NULL, x, NULL, c->B, a->T, R, heads, a->W[si] / heads,
                                       a->NH[si]),
           "fold_norms");
    return GSINK_OK;
}

/* per_b (B, P) = ||x_bt - y_bt|| (y may be NULL) of the rows t < P of x(B, T, W) */
static gsink_status seq_norms(hook_ctx *c, float *per_b, const float *x, const float *y, int W)
{
    gsink_model *m = c->a->m;
    BE_TRY(m, m->be->iface->fold_norms(m->be, NULL, per_b, x, y, c->B, c->a->T, c->a->P, 1, W, 0), "fold_norms");
    return GSINK_OK;
}

/* After layer l's forward: the activation norms of every site. */
static gsink_status fwd_hook(gsink_model *m, int l, void *user)
{
    hook_ctx *c = user;
    gsink_analysis *a = c->a;
    double *blk = dev_block(a, l);
    gsink_status st;
    c->fwd_layers++;
    for (int si = 0; si < GSINK_SITE_COUNT; si++) {
        const float *x = gsink__site_ptr(m, l, (gsink_site)si, false);
        if (!x) return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED, "site %s is not stored",
                                   gsink_site_name((gsink_site)si));
        if ((st = fold_site_norms(c, blk + a->off_aps[si], x, si, a->P))) return st;
    }
    return GSINK_OK;
}

static gsink_status layer_hook(gsink_model *m, int l, void *user)
{
    hook_ctx *c = user;
    gsink_analysis *a = c->a;
    const gsink_backend_iface *be = m->be->iface;
    const int B = c->B, T = a->T, P = a->P, d = a->d;
    double *blk = dev_block(a, l);
    gsink_status st;

    /* site gradients: sums and per-sequence norms (activation norms: fwd_hook) */
    for (int si = 0; si < GSINK_SITE_COUNT; si++) {
        const float *g = gsink__site_ptr(m, l, (gsink_site)si, true);
        if (!g) return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED, "site %s is not stored",
                                         gsink_site_name((gsink_site)si));
        if ((st = fold_rows(c, blk + a->off_gsum[si], g, a->W[si], a->R[si]))) return st;
        if ((st = fold_site_norms(c, blk + a->off_gps[si], g, si, a->R[si]))) return st;
        if (bn_slot(si) >= 0 && (st = seq_norms(c, bn_of(c, bn_slot(si)), g, NULL, a->W[si]))) return st;
    }

    /* branch ratios per sequence: g1 = dL/d(branch out), g2 = dL/d(normed
     * input), g3 = dL/dh_in - g1 (as gsink__diag_branch_tensors) */
    for (int br = 0; br < 2; br++) {
        const gsink_site s_in = br == 0 ? GSINK_SITE_RESID_IN : GSINK_SITE_RESID_MID;
        const gsink_site s_out = br == 0 ? GSINK_SITE_RESID_MID : GSINK_SITE_RESID_OUT;
        const float *din = gsink__site_ptr(m, l, s_in, true), *dout = gsink__site_ptr(m, l, s_out, true);
        if ((st = seq_norms(c, bn_of(c, BN_G3), din, dout, d))) return st; /* ||g3|| */
        const float *n1 = bn_of(c, bn_slot(s_out)), *nin = bn_of(c, bn_slot(s_in)),
                    *n2 = bn_of(c, br == 0 ? BN_ATTN_NORM : BN_MLP_NORM);
        double *o = blk + a->off_bps + (size_t)br * 3 * (size_t)P;
        BE_TRY(m, be->fold_ratio(m->be, o, n2, n1, B, P), "fold_ratio");          /* Bloat */
        BE_TRY(m, be->fold_ratio(m->be, o + P, nin, n1, B, P), "fold_ratio");     /* Change */
        BE_TRY(m, be->fold_ratio(m->be, o + 2 * P, bn_of(c, BN_G3), n2, B, P), "fold_ratio"); /* Compress */
    }

    /* Q/K/V split: the gradient at each projection's output (back through
     * RoPE and the q/k norm per sequence), summed, and ||pre_bt W|| per sequence */
    const gsink_layer_params *Pm = &m->p.layers[l];
    const gsink_layer_acts *acts = &m->layers[l];
    const void *wmat[3] = {Pm->wq, Pm->wk, Pm->wv};
    const bool qkn = m->cfg.qk_norm != 0;
    for (int p = 0; p < 3; p++) {
        const int heads = a->HS[qkv_site[p]], W = a->Wp[p];
        const size_t n = (size_t)B * (size_t)T * (size_t)W;
        const float *g = gsink__site_ptr(m, l, qkv_site[p], true);
        float *pre = c->dg;
        BE_TRY(m, be->copy(m->be, c->dg, g, n * sizeof(float)), "copy");
        if (p < 2) {
            BE_TRY(m, gsink__rope(m, c->dg, B, heads, 1), "rope");
            if (qkn) {
                BE_TRY(m, be->rmsnorm_bwd(m->be, c->dg2, NULL, c->dg, p == 0 ? acts->q_raw : acts->k_raw,
                                          p == 0 ? Pm->q_norm : Pm->k_norm, p == 0 ? acts->rstd_q : acts->rstd_k,
                                          B * T * heads, a->dh, 0),
                       "q/k norm");
                pre = c->dg2;
            }
        }
        if ((st = fold_rows(c, blk + a->off_pre[p], pre, W, P))) return st;
        for (int b = 0; b < B; b++)
            BE_TRY(m, be->gemm_w(m->be, 0, 0, P, d, W, 1.0f, pre + (size_t)b * (size_t)T * (size_t)W, W, wmat[p],
                                 m->wdtype, d, 0.0f, c->dproj + (size_t)b * (size_t)P * (size_t)d, d),
                   "gemm");
        BE_TRY(m, be->fold_norms(m->be, blk + a->off_qkvps + (size_t)p * (size_t)P, NULL, c->dproj, NULL, B, P, P,
                                 1, d, 0),
               "fold_norms");
    }

    /* attention column statistics: per-sequence values of this layer, (H, T) each */
    const float *col[3] = {acts->col_mass, acts->col_sq, acts->col_win};
    const size_t off[3] = {a->off_mass, a->off_sq, a->off_win};
    for (int s = 0; s < 3; s++)
        if ((st = fold_rows(c, blk + off[s], col[s], a->H, T))) return st;
    return GSINK_OK;
}

static void ctx_free(hook_ctx *c)
{
    gsink_model *m = c->a->m;
    float *dev[4] = {c->dg, c->dg2, c->dproj, c->bn};
    for (int i = 0; i < 4; i++)
        if (dev[i]) m->be->iface->free(m->be, dev[i]);
}

/* The per-micro-batch temporaries, all on the backend: O(B * T * q width). */
static gsink_status ctx_alloc(hook_ctx *c, size_t *bytes_out)
{
    gsink_analysis *a = c->a;
    gsink_model *m = a->m;
    const size_t B = (size_t)c->B, T = (size_t)a->T, P = (size_t)a->P;
    /* dg holds a q/k/v gradient (dg2 its q/k-normed one) */
    const size_t qk = (size_t)(a->H > a->KV ? a->H : a->KV) * (size_t)a->dh, d = (size_t)a->d;
    size_t n[4] = {B * T * qk, m->cfg.qk_norm ? B * T * qk : 1, B * P * d, (size_t)BN_COUNT * B * P};
    float **dev[4] = {&c->dg, &c->dg2, &c->dproj, &c->bn};
    size_t total = 0;
    for (int i = 0; i < 4; i++) {
        gsink_status st = m->be->iface->alloc(m->be, n[i] * sizeof(float), (void **)dev[i]);
        if (st) return gsink__fail(a->errmsg, st, "analysis: cannot allocate %zu MiB of temporaries: %s",
                                   (n[i] * sizeof(float)) >> 20, m->be->err);
        total += n[i] * sizeof(float);
    }
    *bytes_out = total;
    return GSINK_OK;
}

/* Copies the model's message into the handle's (thread slot already set). */
static gsink_status relay(gsink_analysis *a, gsink_status st)
{
    snprintf(a->errmsg, sizeof a->errmsg, "%s", a->m->errmsg);
    return st;
}

gsink_status gsink_analysis_add(gsink_analysis *a, const int32_t *tokens, const int32_t *targets,
                                int batch, int seq_len)
{
    if (!a) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "analysis is NULL");
    GSINK_USE(a, "analysis");
    gsink__clear(a->errmsg);
    NEED_MODEL(a);
    gsink_model *m = a->m;
    if (a->finished)
        return gsink__fail(a->errmsg, GSINK_ERR_CALL_ORDER, "the analysis is finished: no more micro-batches");
    if (a->broken)
        return gsink__fail(a->errmsg, GSINK_ERR_CALL_ORDER,
                           "an earlier micro-batch failed inside the forward or backward: the sums are incomplete "
                           "(gsink_analysis_set_state restores a saved state)");
    if (!tokens) return gsink__fail(a->errmsg, GSINK_ERR_NULL_ARGUMENT, "tokens is NULL");
    if (batch < 1) return gsink__fail(a->errmsg, GSINK_ERR_INVALID_ARGUMENT, "batch = %d must be >= 1", batch);
    if (seq_len != a->T)
        return gsink__fail(a->errmsg, GSINK_ERR_SHAPE_MISMATCH,
                           "seq_len = %d differs from the analysis's seq_len %d", seq_len, a->T);
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (m->vs.n_scale_heads != a->nsh)
        return gsink__fail(a->errmsg, GSINK_ERR_CALL_ORDER,
                           "the model's V-scale heads changed (%d, was %d) since gsink_analysis_begin",
                           m->vs.n_scale_heads, a->nsh);
    const size_t N = (size_t)batch * (size_t)seq_len;
    int32_t *tgt = NULL;
    if (!targets) {
        if (!(tgt = malloc(N * sizeof(int32_t))))
            return gsink__fail(a->errmsg, GSINK_ERR_OUT_OF_MEMORY, "analysis: out of host memory");
        for (size_t i = 0; i < N; i++) tgt[i] = (i % (size_t)seq_len) + 1 < (size_t)seq_len ? tokens[i + 1] : -1;
        targets = tgt;
    }
    /* the targets decide before the forward whether there is anything to
     * differentiate: the forward hook already adds to the sums */
    bool any = false;
    for (size_t i = 0; i < N && !any; i++) any = targets[i] >= 0;
    if (!any) {
        free(tgt);
        return gsink__fail(a->errmsg, GSINK_ERR_NO_TARGETS,
                           "every target of this micro-batch is ignored (< 0): nothing to differentiate");
    }
    hook_ctx c = {.a = a, .B = batch};
    size_t tmp_bytes = 0;
    gsink_status st;
    if ((st = ctx_alloc(&c, &tmp_bytes))) {
        ctx_free(&c);
        free(tgt);
        return st;
    }
    if (tmp_bytes > a->peak_tmp_bytes) a->peak_tmp_bytes = tmp_bytes;
    float loss = 0.0f;
    a->host_fresh = a->ns_fresh = false; /* the hooks add to the backend's sums from here on */
    const int32_t win = m->diag.sink_window;
    m->diag.sink_window = a->opts.sink_window;
    st = gsink__forward_hooked(m, tokens, targets, batch, seq_len, &loss, fwd_hook, &c);
    m->diag.sink_window = win;
    free(tgt);
    if (st) {
        ctx_free(&c);
        if (c.fwd_layers > 0) a->broken = true;
        return relay(a, st);
    }
    const int64_t n_targets = m->n_targets;
    st = gsink__backward_hooked(m, 1.0f, layer_hook, &c);
    ctx_free(&c);
    if (st) {
        a->broken = true;
        return relay(a, st);
    }
    a->hdr[0] += batch;
    a->hdr[1] += 1;
    a->hdr[2] += (double)loss * (double)n_targets;
    a->hdr[3] += (double)n_targets;
    return GSINK_OK;
}

gsink_status gsink_analysis_finish(gsink_analysis *a)
{
    if (!a) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "analysis is NULL");
    GSINK_USE(a, "analysis");
    gsink__clear(a->errmsg);
    a->finished = true;
    return GSINK_OK;
}

gsink_status gsink_analysis_counts(gsink_analysis *a, int64_t *sequences, int64_t *micro_batches,
                                   int64_t *n_targets)
{
    if (!a) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "analysis is NULL");
    GSINK_USE(a, "analysis");
    gsink__clear(a->errmsg);
    if (sequences) *sequences = (int64_t)a->hdr[0];
    if (micro_batches) *micro_batches = (int64_t)a->hdr[1];
    if (n_targets) *n_targets = (int64_t)a->hdr[3];
    return GSINK_OK;
}

gsink_status gsink_analysis_memory(gsink_analysis *a, uint64_t *state_bytes, uint64_t *temp_bytes)
{
    if (!a) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "analysis is NULL");
    GSINK_USE(a, "analysis");
    gsink__clear(a->errmsg);
    if (state_bytes) *state_bytes = (uint64_t)(a->n_state * sizeof(double) + sizeof *a);
    if (temp_bytes) *temp_bytes = (uint64_t)a->peak_tmp_bytes;
    return GSINK_OK;
}

/* ---- state ------------------------------------------------------------- */

gsink_status gsink_analysis_state_size(gsink_analysis *a, size_t *n)
{
    if (!a) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "analysis is NULL");
    GSINK_USE(a, "analysis");
    gsink__clear(a->errmsg);
    if (!n) return gsink__fail(a->errmsg, GSINK_ERR_NULL_ARGUMENT, "n is NULL");
    *n = a->n_state;
    return GSINK_OK;
}

gsink_status gsink_analysis_get_state(gsink_analysis *a, double *buf, size_t n)
{
    if (!a) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "analysis is NULL");
    GSINK_USE(a, "analysis");
    gsink__clear(a->errmsg);
    if (!buf) return gsink__fail(a->errmsg, GSINK_ERR_NULL_ARGUMENT, "buf is NULL");
    if (n != a->n_state)
        return gsink__fail(a->errmsg, GSINK_ERR_BUFFER_TOO_SMALL,
                           "the state has %zu values, the buffer %zu (gsink_analysis_state_size)", a->n_state, n);
    memcpy(buf, a->hdr, sizeof a->hdr);
    if (!a->m) { /* a detached analysis holds them on the host */
        if (!a->host)
            return gsink__fail(a->errmsg, GSINK_ERR_CALL_ORDER,
                               "the sums were lost when the model was freed: %s", a->errmsg);
        memcpy(buf + HDR, a->host, layers_bytes(a));
        return GSINK_OK;
    }
    gsink_model *m = a->m;
    GSINK_USE(m, "model");
    gsink_status st = m->be->iface->download(m->be, buf + HDR, a->dev, layers_bytes(a));
    if (st) return gsink__fail(a->errmsg, st, "analysis: reading the sums: %s", m->be->err);
    return GSINK_OK;
}

gsink_status gsink_analysis_set_state(gsink_analysis *a, const double *buf, size_t n)
{
    if (!a) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "analysis is NULL");
    GSINK_USE(a, "analysis");
    gsink__clear(a->errmsg);
    if (!buf) return gsink__fail(a->errmsg, GSINK_ERR_NULL_ARGUMENT, "buf is NULL");
    if (n != a->n_state)
        return gsink__fail(a->errmsg, GSINK_ERR_SHAPE_MISMATCH,
                           "the state has %zu values, the buffer %zu (same model, options and seq_len needed)",
                           a->n_state, n);
    for (int i = 0; i < HDR; i++)
        if (!isfinite(buf[i]) || buf[i] < 0 || buf[i] > 9.0e15 || (i != 2 && buf[i] != floor(buf[i])))
            return gsink__fail(a->errmsg, GSINK_ERR_INVALID_ARGUMENT,
                               "state[%d] = %g is not a valid count or sum", i, buf[i]);
    if (a->m) {
        gsink_model *m = a->m;
        GSINK_USE(m, "model");
        gsink_status st = m->be->iface->upload(m->be, a->dev, buf + HDR, layers_bytes(a));
        if (st) return gsink__fail(a->errmsg, st, "analysis: writing the sums: %s", m->be->err);
        a->host_fresh = a->ns_fresh = false;
    } else {
        if (!a->host && !(a->host = malloc(layers_bytes(a))))
            return gsink__fail(a->errmsg, GSINK_ERR_OUT_OF_MEMORY, "analysis: cannot allocate the sums on the host");
        memcpy(a->host, buf + HDR, layers_bytes(a));
    }
    memcpy(a->hdr, buf, sizeof a->hdr);
    a->broken = false;
    return GSINK_OK;
}

/* ---- the report from the sums -------------------------------------------- */

typedef struct finish_ctx {
    gsink_analysis *a;
    double n_seq, n_tgt; /* N and G */
} finish_ctx;

/* The squared row norms of every sum the report takes a norm of, computed on
 * the backend (row_sumsq_d) and read back in one transfer: per site and
 * position (per head), and per branch ||Σ g1||², ||Σ g2||², ||Σ dL/dh_in||²,
 * ||Σ dL/dh_in - Σ g1||² for t < P. */
static gsink_status norms_sync(gsink_analysis *a)
{
    gsink_model *m = a->m;
    const gsink_backend_iface *be = m->be->iface;
    const size_t n = (size_t)a->L * a->per_layer_ns, P = (size_t)a->P, d = (size_t)a->d;
    double *dn = NULL;
    gsink_status st;
    if (a->ns_fresh) return GSINK_OK;
    if (!a->ns && !(a->ns = malloc(n * sizeof(double))))
        return gsink__fail(a->errmsg, GSINK_ERR_OUT_OF_MEMORY, "report: out of host memory");
    if ((st = be->alloc(m->be, n * sizeof(double), (void **)&dn)))
        return gsink__fail(a->errmsg, st, "report: %s", m->be->err);
    for (int l = 0; l < a->L && !st; l++) {
        const double *blk = dev_block(a, l);
        double *o = dn + (size_t)l * a->per_layer_ns;
        for (int si = 0; si < GSINK_SITE_COUNT && !st; si++)
            st = be->row_sumsq_d(m->be, o + a->off_ns[si], blk + a->off_gsum[si], NULL, (size_t)a->R[si], a->HS[si],
                                 a->W[si] / a->HS[si]);
        for (int br = 0; br < 2 && !st; br++) {
            const double *din = blk + a->off_gsum[br == 0 ? GSINK_SITE_RESID_IN : GSINK_SITE_RESID_MID],
                         *dout = blk + a->off_gsum[br == 0 ? GSINK_SITE_RESID_MID : GSINK_SITE_RESID_OUT],
                         *dnorm = blk + a->off_gsum[br == 0 ? GSINK_SITE_ATTN_NORM_OUT : GSINK_SITE_MLP_NORM_OUT];
            double *ob = o + a->off_nb + (size_t)br * 4 * P;
            if (!st) st = be->row_sumsq_d(m->be, ob, dout, NULL, P, 1, (int)d);
            if (!st) st = be->row_sumsq_d(m->be, ob + P, dnorm, NULL, P, 1, (int)d);
            if (!st) st = be->row_sumsq_d(m->be, ob + 2 * P, din, NULL, P, 1, (int)d);
            if (!st) st = be->row_sumsq_d(m->be, ob + 3 * P, din, dout, P, 1, (int)d);
        }
    }
    if (!st) st = be->download(m->be, a->ns, dn, n * sizeof(double));
    if (st) st = gsink__fail(a->errmsg, st, "report: norms of the sums: %s", m->be->err);
    be->free(m->be, dn);
    a->ns_fresh = !st;
    return st;
}

static bool fin_site_available(void *ctx, int layer, gsink_site s, bool grad)
{
    (void)ctx;
    (void)layer;
    (void)grad;
    return (int)s >= 0 && (int)s < GSINK_SITE_COUNT;
}

/* T values; positions without a sum are NaN (only t < R[site] are kept). */
static gsink_status fin_norms(void *ctx, int l, gsink_site si, int head, bool grad, int agg, float *out)
{
    finish_ctx *f = ctx;
    gsink_analysis *a = f->a;
    const double *blk = layer_block(a, l);
    const int nh = a->NH[si], R = grad ? a->R[si] : a->P;
    for (int t = 0; t < a->T; t++) out[t] = NAN;
    const int col = head < 0 ? 0 : 1 + head;
    if (!grad || agg == GSINK_AGG_PER_SEQUENCE) {
        const double *v = blk + (grad ? a->off_gps[si] : a->off_aps[si]);
        const double div = grad ? f->n_seq * f->n_tgt : f->n_seq;
        for (int t = 0; t < R; t++) out[t] = (float)(v[(size_t)t * (size_t)(1 + nh) + (size_t)col] / div);
        return GSINK_OK;
    }
    const int heads = a->HS[si];
    const double *q = a->ns + (size_t)l * a->per_layer_ns + a->off_ns[si];
    for (int t = 0; t < R; t++) {
        const double *r = q + (size_t)t * (size_t)heads;
        double ss = 0.0;
        if (head >= 0) ss = r[head];
        else
            for (int h = 0; h < heads; h++) ss += r[h];
        out[t] = (float)(sqrt(ss) / f->n_tgt);
    }
    return GSINK_OK;
}

static gsink_status fin_branch(void *ctx, int l, int br, int agg, float *bloat, float *change,
                               float *compress)
{
    finish_ctx *f = ctx;
    gsink_analysis *a = f->a;
    const double *blk = layer_block(a, l);
    const int P = a->P;
    for (int t = 0; t < a->T; t++) bloat[t] = change[t] = compress[t] = NAN;
    if (agg == GSINK_AGG_PER_SEQUENCE) {
        const double *o = blk + a->off_bps + (size_t)br * 3 * (size_t)P;
        for (int t = 0; t < P; t++) {
            bloat[t] = (float)(o[t] / f->n_seq);
            change[t] = (float)(o[P + t] / f->n_seq);
            compress[t] = (float)(o[2 * P + t] / f->n_seq);
        }
        return GSINK_OK;
    }
    const double *q = a->ns + (size_t)l * a->per_layer_ns + a->off_nb + (size_t)br * 4 * (size_t)P;
    for (int t = 0; t < P; t++) {
        double n1 = sqrt(q[t]), n2 = sqrt(q[P + t]), nin = sqrt(q[2 * P + t]), n3 = sqrt(q[3 * P + t]);
        bloat[t] = (float)(n2 / n1);
        change[t] = (float)(nin / n1);
        compress[t] = (float)(n3 / n2);
    }
    return GSINK_OK;
}

static gsink_status fin_qkv(void *ctx, int l, int agg, float *gq, float *gk, float *gv)
{
    finish_ctx *f = ctx;
    gsink_analysis *a = f->a;
    gsink_model *m = a->m;
    const gsink_backend_iface *be = m->be->iface;
    const double *blk = layer_block(a, l);
    const int P = a->P, d = a->d;
    float *out[3] = {gq, gk, gv};
    for (int p = 0; p < 3; p++)
        for (int t = 0; t < a->T; t++) out[p][t] = NAN;
    if (agg == GSINK_AGG_PER_SEQUENCE) {
        for (int p = 0; p < 3; p++)
            for (int t = 0; t < P; t++)
                out[p][t] = (float)(blk[a->off_qkvps + (size_t)p * (size_t)P + (size_t)t] / (f->n_seq * f->n_tgt));
        return GSINK_OK;
    }
    /* (sum_b pre)(P, W) @ W_mat(W, d) on the backend, as gsink__diag_qkv */
    const gsink_layer_params *Pm = &m->p.layers[l];
    const void *wmat[3] = {Pm->wq, Pm->wk, Pm->wv};
    gsink_diag_tmp ts = {.m = m};
    gsink_status st;
    const size_t wmax = (size_t)(a->Wp[0] > a->Wp[1] ? a->Wp[0] : a->Wp[1]);
    float *dpre, *dproj, *hpre, *hn;
    if ((st = gsink__diag_tmp_dev(&ts, (size_t)P * wmax, &dpre))) goto done;
    if ((st = gsink__diag_tmp_dev(&ts, (size_t)P * (size_t)d, &dproj))) goto done;
    if ((st = gsink__diag_tmp_host(&ts, (size_t)P * wmax, &hpre))) goto done;
    if ((st = gsink__diag_tmp_host(&ts, (size_t)P, &hn))) goto done;
    for (int p = 0; p < 3; p++) {
        const int W = a->Wp[p];
        const double *pre = blk + a->off_pre[p];
        for (size_t i = 0; i < (size_t)P * (size_t)W; i++) hpre[i] = (float)(pre[i] / f->n_tgt);
        if ((st = gsink__be_check(m, be->upload(m->be, dpre, hpre, (size_t)P * (size_t)W * sizeof(float)), "upload")))
            goto done;
        if ((st = gsink__be_check(m, be->gemm_w(m->be, 0, 0, P, d, W, 1.0f, dpre, W, wmat[p], m->wdtype, d, 0.0f, dproj, d),
                                  "gemm")))
            goto done;
        if ((st = gsink__be_check(m, be->row_sumsq(m->be, dpre, dproj, (size_t)P, 1, d), "row_sumsq"))) goto done;
        if ((st = gsink__be_check(m, be->download(m->be, hn, dpre, (size_t)P * sizeof(float)), "download")))
            goto done;
        for (int t = 0; t < P; t++) out[p][t] = sqrtf(hn[t]);
    }
done:
    gsink__diag_tmp_free(&ts);
    return st;
}

/* Checks and claims for the report and the accessors: a micro-batch added,
 * model usable. */
static gsink_status fin_ready(gsink_analysis *a)
{
    if (a->broken)
        return gsink__fail(a->errmsg, GSINK_ERR_CALL_ORDER,
                           "an earlier micro-batch failed inside the forward or backward: the sums are incomplete");
    if (a->hdr[0] < 1 || a->hdr[3] < 1)
        return gsink__fail(a->errmsg, GSINK_ERR_CALL_ORDER, "no micro-batch has been added to the analysis");
    if (a->m->vs.n_scale_heads != a->nsh)
        return gsink__fail(a->errmsg, GSINK_ERR_CALL_ORDER,
                           "the model's V-scale heads changed since gsink_analysis_begin");
    gsink_status st = host_sync(a);
    return st ? st : norms_sync(a);
}

gsink_status gsink_analysis_report_json(gsink_analysis *a, const gsink_diag_options *opts, char **json)
{
    if (!a) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "analysis is NULL");
    GSINK_USE(a, "analysis");
    gsink__clear(a->errmsg);
    if (!json) return gsink__fail(a->errmsg, GSINK_ERR_NULL_ARGUMENT, "json is NULL");
    *json = NULL;
    NEED_MODEL(a);
    gsink_model *m = a->m;
    GSINK_USE(m, "model");
    gsink_status st;
    if ((st = fin_ready(a))) return st;
    gsink_diag_options o;
    if ((st = gsink__report_options(a->errmsg, &a->opts, opts, a->T, &o))) return st;
    /* T_eps is the window of the forwards */
    const size_t HT = (size_t)a->H * (size_t)a->T, LHT = (size_t)a->L * HT;
    float *stats = malloc(3 * LHT * sizeof(float));
    if (!stats) return gsink__fail(a->errmsg, GSINK_ERR_OUT_OF_MEMORY, "report: out of host memory");
    finish_ctx f = {a, a->hdr[0], a->hdr[3]};
    for (int l = 0; l < a->L; l++) {
        const double *blk = layer_block(a, l);
        for (size_t i = 0; i < HT; i++) {
            stats[(size_t)l * HT + i] = (float)(blk[a->off_mass + i] / f.n_seq);
            stats[LHT + (size_t)l * HT + i] = (float)(blk[a->off_sq + i] / f.n_seq);
            stats[2 * LHT + (size_t)l * HT + i] = (float)(blk[a->off_win + i] / f.n_seq);
        }
    }
    char extra[96];
    snprintf(extra, sizeof extra, "\"sequences\": %.0f, \"micro_batches\": %.0f", a->hdr[0], a->hdr[1]);
    gsink__report_src src = {
        .ctx = &f, .errmsg = a->errmsg, .cfg = &m->cfg, .B = (int)a->hdr[0], .T = a->T,
        .loss = (float)(a->hdr[2] / a->hdr[3]), .n_targets = (int64_t)a->hdr[3],
        .mass = stats, .sq = stats + LHT, .win = stats + 2 * LHT, .window = a->opts.sink_window,
        .site_available = fin_site_available, .norms = fin_norms, .branch = fin_branch, .qkv = fin_qkv,
        .input_extra = extra,
    };
    gsink_vscale_options_init(&src.vscale);
    (void)gsink_vscale_get(m, &src.vscale);
    st = gsink__report_write(&src, &o, opts, json);
    if (st && !a->errmsg[0]) snprintf(a->errmsg, sizeof a->errmsg, "%s", m->errmsg);
    free(stats);
    return st;
}

gsink_status gsink_analysis_gradient_norms(gsink_analysis *a, int layer, gsink_site site, int head,
                                           int agg, float *out, size_t count, size_t *len)
{
    if (!a) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "analysis is NULL");
    GSINK_USE(a, "analysis");
    gsink__clear(a->errmsg);
    gsink_status st;
    if ((int)site < 0 || (int)site >= GSINK_SITE_COUNT)
        return gsink__fail(a->errmsg, GSINK_ERR_UNKNOWN_SITE, "unknown site id %d", (int)site);
    if (layer < 0 || layer >= a->L)
        return gsink__fail(a->errmsg, GSINK_ERR_OUT_OF_RANGE, "layer %d out of range [0, %d)", layer, a->L);
    if (agg != GSINK_AGG_SUM_THEN_NORM && agg != GSINK_AGG_PER_SEQUENCE)
        return gsink__fail(a->errmsg, GSINK_ERR_INVALID_ARGUMENT,
                           "batch aggregation %d is neither SUM_THEN_NORM (0) nor PER_SEQUENCE (1)", agg);
    const int R = a->R[site];
    if (head < -1 || head >= a->HS[site] || (head >= 0 && agg == GSINK_AGG_PER_SEQUENCE && a->NH[site] == 0))
        return gsink__fail(a->errmsg, GSINK_ERR_OUT_OF_RANGE, "head %d is not kept for site \"%s\" (-1 = all)",
                           head, gsink_site_name(site));
    if (len) *len = (size_t)R;
    if (!out) return GSINK_OK;
    if (count < (size_t)R)
        return gsink__fail(a->errmsg, GSINK_ERR_BUFFER_TOO_SMALL, "gradient norms: buffer holds %zu values, %d needed",
                           count, R);
    NEED_MODEL(a);
    gsink_model *m = a->m;
    GSINK_USE(m, "model");
    if ((st = fin_ready(a))) return st;
    float *tmp = malloc((size_t)a->T * sizeof(float));
    if (!tmp) return gsink__fail(a->errmsg, GSINK_ERR_OUT_OF_MEMORY, "out of host memory");
    finish_ctx f = {a, a->hdr[0], a->hdr[3]};
    st = fin_norms(&f, layer, site, head, true, agg, tmp);
    if (!st) memcpy(out, tmp, (size_t)R * sizeof(float));
    free(tmp);
    return st;
}

/* ---- the whole batch in one call ------------------------------------------ */

gsink_status gsink_analyze_sequences(gsink_model *m, const int32_t *tokens, int n_seq, int seq_len,
                                     int micro_batch, const gsink_diag_options *opts,
                                     gsink_progress_fn progress, void *user_data, char **json)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!json) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "json is NULL");
    *json = NULL;
    if (!tokens) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "tokens is NULL");
    if (n_seq < 1 || micro_batch < 1)
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "n_seq = %d and micro_batch = %d must be >= 1",
                           n_seq, micro_batch);
    gsink_analysis *a = NULL;
    gsink_status st = gsink_analysis_begin(m, seq_len, opts, &a);
    if (st) return st;
    for (int done = 0; !st && done < n_seq;) {
        int b = n_seq - done < micro_batch ? n_seq - done : micro_batch;
        st = gsink_analysis_add(a, tokens + (size_t)done * (size_t)seq_len, NULL, b, seq_len);
        if (st) break;
        done += b;
        if (progress && progress(done, n_seq, user_data)) {
            st = gsink__fail(a->errmsg, GSINK_ERR_CANCELLED, "cancelled by the progress callback after %d of %d sequences",
                             done, n_seq);
        }
    }
    if (!st) st = gsink_analysis_report_json(a, NULL, json);
    if (st) gsink__fail(m->errmsg, st, "%s", a->errmsg);
    gsink_analysis_free(a);
    return st;
}
