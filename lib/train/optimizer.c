/*
 * optimizer.c - AdamW with global gradient-norm clipping, a cosine learning-
 * rate schedule with linear warm-up, gradient accumulation, and exact state
 * save/restore for checkpoints.
 *
 * Semantics follow PyTorch so that results can be compared step by step:
 *   g      <- g / accumulation_steps                  (loss averaged over micro-batches)
 *   norm   =  ||g||_2 over every trainable tensor     (returned, pre-clip)
 *   g      <- g * min(1, clip / (norm + 1e-6))        (torch.nn.utils.clip_grad_norm_)
 *   p      <- p * (1 - lr * wd)                       (decoupled decay, 2-D matrices only)
 *   m, v   <- Adam moments; p -= lr * mhat / (sqrt(vhat) + eps)
 * The scaling of g is folded into the backend adamw op (gscale), so the
 * gradients in memory are never rewritten before the update.
 *
 * Trainable state: the model's parameter block (m->param_mem / m->grad_mem,
 * n_param_floats floats, per-tensor views in m->entries) and, when V-scale is
 * FULL with learnable theta, the theta block (m->vs.theta, (L, H) stride H).
 * Optimizer moments mirror both layouts exactly.
 *
 * 16-bit weights (gsink_model_options.weight_dtype BF16/FP16): the update
 * needs more precision than the storage has (a step smaller than half an
 * ulp of the weight would vanish), so the optimizer keeps an fp32 master
 * copy of each 16-bit matrix (in the fp32 layout, at e->offset), taken from
 * the stored weights at creation. A step updates the master and rounds it
 * (nearest, ties to even) into storage; gsink_set_param refreshes it. The
 * masters are part of the saved state (file version 2).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "wdtype.h"

struct gsink_optimizer {
    gsink__owner owner;    /* first (see GSINK__OWNER): thread inside a call (GSINK_USE) */
    gsink_model *model;    /* NULL once the model was freed (gsink__optimizers_detach) */
    gsink_optimizer *prev, *next; /* the model's list of its optimizers */
    gsink_optimizer_options o;
    int64_t step;          /* updates taken */
    size_t n_param;        /* floats in the parameter block at creation */
    size_t n_theta;        /* L * H (theta block capacity, stride H) */
    float *m, *v;          /* backend memory, (n_param) each */
    float *tm, *tv;        /* backend memory, (L, H) each */
    float *master;         /* backend memory, (n_param), fp32 masters of the 16-bit
                            * matrices (their offsets only); NULL for an fp32 model */
    char errmsg[GSINK_MSG_SIZE];
};

void gsink_optimizer_options_init_size(gsink_optimizer_options *out, size_t size)
{
    gsink_optimizer_options full, *o = &full;
    memset(o, 0, sizeof *o);
    o->lr = 3e-4f;
    o->min_lr = 3e-5f;
    o->warmup_steps = 0;
    o->total_steps = 0;
    o->beta1 = 0.9f;
    o->beta2 = 0.95f;
    o->eps = 1e-8f;
    o->weight_decay = 0.1f;
    o->grad_clip = 1.0f;
    o->accumulation_steps = 1;
    gsink__copy_sized(out, size, o, sizeof *o);
}

static gsink_status check_options(const gsink_optimizer_options *o, char *err)
{
    if (o->size < sizeof(size_t) || o->size > sizeof *o)
        return gsink__fail(err, GSINK_ERR_INVALID_ARGUMENT,
                           "optimizer options: size %zu is not sizeof(gsink_optimizer_options)"
                           " (call gsink_optimizer_options_init)", o->size);
    if (!(o->lr >= 0.0f) || !isfinite(o->lr))
        return gsink__fail(err, GSINK_ERR_INVALID_ARGUMENT, "lr must be finite and >= 0 (got %g)", (double)o->lr);
    if (!(o->min_lr >= 0.0f) || !isfinite(o->min_lr))
        return gsink__fail(err, GSINK_ERR_INVALID_ARGUMENT, "min_lr must be finite and >= 0 (got %g)", (double)o->min_lr);
    if (o->warmup_steps < 0 || o->total_steps < 0)
        return gsink__fail(err, GSINK_ERR_INVALID_ARGUMENT, "warmup_steps and total_steps must be >= 0");
    if (!(o->beta1 >= 0.0f && o->beta1 < 1.0f) || !(o->beta2 >= 0.0f && o->beta2 < 1.0f))
        return gsink__fail(err, GSINK_ERR_INVALID_ARGUMENT, "betas must lie in [0, 1) (got %g, %g)",
                           (double)o->beta1, (double)o->beta2);
    if (!(o->eps > 0.0f) || !isfinite(o->eps))
        return gsink__fail(err, GSINK_ERR_INVALID_ARGUMENT, "eps must be > 0 (got %g)", (double)o->eps);
    if (!(o->weight_decay >= 0.0f) || !isfinite(o->weight_decay))
        return gsink__fail(err, GSINK_ERR_INVALID_ARGUMENT, "weight_decay must be >= 0 (got %g)",
                           (double)o->weight_decay);
    if (!isfinite(o->grad_clip))
        return gsink__fail(err, GSINK_ERR_INVALID_ARGUMENT, "grad_clip must be finite");
    if (o->accumulation_steps < 1)
        return gsink__fail(err, GSINK_ERR_INVALID_ARGUMENT, "accumulation_steps must be >= 1 (got %d)",
                           (int)o->accumulation_steps);
    return GSINK_OK;
}

static size_t theta_capacity(const gsink_model *m)
{
    return (size_t)m->cfg.n_layers * (size_t)m->cfg.n_heads;
}

static void release(gsink_optimizer *opt)
{
    gsink_backend *be = opt->model->be;
    if (opt->m) be->iface->free(be, opt->m);
    if (opt->v) be->iface->free(be, opt->v);
    if (opt->tm) be->iface->free(be, opt->tm);
    if (opt->tv) be->iface->free(be, opt->tv);
    if (opt->master) be->iface->free(be, opt->master);
    opt->m = opt->v = opt->tm = opt->tv = opt->master = NULL;
}

static gsink_status alloc_zeroed(gsink_optimizer *opt, size_t n, float **out)
{
    gsink_backend *be = opt->model->be;
    size_t bytes;
    *out = NULL;
    if (n == 0) n = 1;
    if (!gsink__mul_size(n, sizeof(float), &bytes))
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "optimizer state size overflows");
    gsink_status st = be->iface->alloc(be, bytes, (void **)out);
    if (st != GSINK_OK) {
        *out = NULL;
        return gsink__fail(NULL, st, "optimizer: cannot allocate %zu bytes of state: %s", bytes, be->err);
    }
    st = be->iface->zero(be, *out, bytes);
    if (st != GSINK_OK) return gsink__fail(NULL, st, "optimizer: zeroing state failed: %s", be->err);
    return GSINK_OK;
}

/* master <- the stored weights of a 16-bit entry (widened exactly). */
static gsink_status master_from_storage(gsink_optimizer *opt, const gsink_param_entry *e)
{
    gsink_model *m = opt->model;
    if (!opt->master || e->dtype == GSINK_WD_F32) return GSINK_OK;
    gsink_status st = m->be->iface->convert(m->be, opt->master + e->offset, GSINK_WD_F32, m->param_mem + e->soff,
                                            e->dtype, e->numel);
    if (st != GSINK_OK) return gsink__fail(NULL, st, "optimizer: widening the master weights failed: %s", m->be->err);
    return GSINK_OK;
}

void gsink__optimizers_resync(gsink_model *m, const gsink_param_entry *e)
{
    for (gsink_optimizer *o = m->optimizers; o; o = o->next)
        (void)master_from_storage(o, e);
}

gsink_status gsink_optimizer_create(gsink_model *model, const gsink_optimizer_options *opts,
                                    gsink_optimizer **out)
{
    if (out) *out = NULL;
    if (!model || !out) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "optimizer_create: model or out is NULL");
    GSINK_USE(model, "model");
    if (model->analysis)
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                           "optimizer_create: the model computes no parameter gradients (GSINK_MODEL_ANALYSIS)");
    gsink_optimizer_options o;
    gsink_optimizer_options_init(&o);
    if (opts) {
        if (opts->size < sizeof(size_t) || opts->size > sizeof o)
            return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT,
                               "optimizer options: size %zu is not sizeof(gsink_optimizer_options)"
                               " (call gsink_optimizer_options_init)", opts->size);
        memcpy(&o, opts, opts->size);
        o.size = sizeof o;
    }
    gsink_status st = check_options(&o, NULL);
    if (st != GSINK_OK) return st;

    gsink_optimizer *opt = calloc(1, sizeof *opt);
    if (!opt) return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "optimizer: out of memory");
    opt->model = model;
    opt->o = o;
    opt->n_param = model->n_param_floats;
    opt->n_theta = theta_capacity(model);
    if ((st = alloc_zeroed(opt, opt->n_param, &opt->m)) != GSINK_OK ||
        (st = alloc_zeroed(opt, opt->n_param, &opt->v)) != GSINK_OK ||
        (st = alloc_zeroed(opt, opt->n_theta, &opt->tm)) != GSINK_OK ||
        (st = alloc_zeroed(opt, opt->n_theta, &opt->tv)) != GSINK_OK) {
        release(opt);
        free(opt);
        return st;
    }
    if (model->wdtype != GSINK_WD_F32) {
        st = alloc_zeroed(opt, opt->n_param, &opt->master);
        for (size_t i = 0; i < model->n_entries && st == GSINK_OK; i++)
            st = master_from_storage(opt, &model->entries[i]);
        if (st != GSINK_OK) {
            release(opt);
            free(opt);
            return st;
        }
    }
    opt->next = model->optimizers;
    if (opt->next) opt->next->prev = opt;
    model->optimizers = opt;
    *out = opt;
    return GSINK_OK;
}

static void unlink_from_model(gsink_optimizer *opt)
{
    if (opt->prev) opt->prev->next = opt->next;
    else opt->model->optimizers = opt->next;
    if (opt->next) opt->next->prev = opt->prev;
    opt->prev = opt->next = NULL;
}

void gsink_optimizer_free(gsink_optimizer *opt)
{
    if (!opt) return;
    /* Its state lives in the model's backend: refused (as gsink_model_free)
     * while another thread uses the optimizer or its model. */
    gsink__use u;
    if (!gsink__use_acquire(&u, &opt->owner)) {
        gsink__busy("optimizer");
        return;
    }
    if (opt->model) { /* else the model's free already released the state */
        gsink__use um;
        if (!gsink__use_acquire(&um, &opt->model->owner)) {
            gsink__use_release(&u);
            gsink__busy("model");
            return;
        }
        release(opt);
        unlink_from_model(opt);
        gsink__use_release(&um);
    }
    free(opt);
}

bool gsink__optimizers_detach(gsink_model *m)
{
    gsink_optimizer *o;
    for (o = m->optimizers; o; o = o->next) {
        gsink__use u;
        if (!gsink__use_acquire(&u, &o->owner) || !u.owner) { /* busy (or this thread is inside it) */
            gsink__use_release(&u);
            for (gsink_optimizer *q = m->optimizers; q != o; q = q->next)
                atomic_store_explicit(&q->owner, 0, memory_order_release);
            return false;
        }
    }
    while ((o = m->optimizers) != NULL) {
        release(o);
        unlink_from_model(o);
        o->model = NULL;
        atomic_store_explicit(&o->owner, 0, memory_order_release);
    }
    return true;
}

/* The optimizer's model was freed: nothing left to update, save or load. */
#define NEED_MODEL(opt, what)                                                                    \
    do {                                                                                         \
        if (!(opt)->model)                                                                       \
            return gsink__fail((opt)->errmsg, GSINK_ERR_CALL_ORDER,                              \
                               what ": the optimizer's model was freed (free optimizers first)"); \
    } while (0)

const char *gsink_optimizer_errmsg(const gsink_optimizer *opt)
{
    if (!opt) return "";
    return gsink__used_elsewhere(&opt->owner) ? GSINK__BUSY_MSG("optimizer") : opt->errmsg;
}

static double schedule(const gsink_optimizer_options *o, int64_t step)
{
    double lr = o->lr, lo = o->min_lr;
    if (step < 0) step = 0;
    if (o->warmup_steps > 0 && step < o->warmup_steps)
        return lr * (double)(step + 1) / (double)o->warmup_steps;
    if (o->total_steps <= 0) return lr;
    if (step >= o->total_steps) return lo;
    int64_t span = (int64_t)o->total_steps - o->warmup_steps;
    if (span <= 0) return lo;
    double progress = (double)(step - o->warmup_steps) / (double)span;
    return lo + 0.5 * (lr - lo) * (1.0 + cos(M_PI * progress));
}

float gsink_optimizer_lr_at(const gsink_optimizer *opt, int64_t step)
{
    if (!opt) return 0.0f;
    GSINK_USE_OR(opt, "optimizer", (gsink__busy("optimizer"), NAN));
    return (float)schedule(&opt->o, step);
}

int64_t gsink_optimizer_step_count(const gsink_optimizer *opt)
{
    if (!opt) return 0;
    GSINK_USE_OR(opt, "optimizer", (gsink__busy("optimizer"), -1));
    return opt->step;
}

static int theta_trainable(const gsink_model *m)
{
    return m->vs.mode == GSINK_VSCALE_FULL && m->vs.learnable && m->vs.theta && m->vs.dtheta &&
           m->vs.n_scale_heads > 0;
}

/* True for registry entries that live in the parameter block (theta is
 * listed in the registry on some builds but is stored separately). */
static int entry_in_block(const gsink_model *m, const gsink_param_entry *e)
{
    if (strstr(e->name, "v_scale_theta")) return 0;
    return e->numel > 0 && e->offset <= m->n_param_floats && e->numel <= m->n_param_floats - e->offset;
}

gsink_status gsink_optimizer_step(gsink_optimizer *opt, float *grad_norm)
{
    if (!opt) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "optimizer_step: opt is NULL");
    GSINK_USE(opt, "optimizer");
    NEED_MODEL(opt, "optimizer_step");
    gsink_model *m = opt->model;
    GSINK_USE(m, "model");
    gsink__clear(opt->errmsg);
    gsink_backend *be = m->be;
    const gsink_optimizer_options *o = &opt->o;
    if (m->n_param_floats != opt->n_param || theta_capacity(m) != opt->n_theta)
        return gsink__fail(opt->errmsg, GSINK_ERR_CALL_ORDER,
                           "optimizer_step: the model's parameter layout changed since the optimizer was created");

    /* 1. global norm over every trainable gradient, and a finiteness check */
    double ss = 0.0;
    int finite = 1;
    gsink_status st = be->iface->sumsq(be, &ss, &finite, m->grad_mem, m->n_param_floats);
    if (st != GSINK_OK) return gsink__fail(opt->errmsg, st, "optimizer_step: sumsq failed: %s", be->err);
    const int with_theta = theta_trainable(m);
    if (with_theta) {
        /* One reduction over the whole (L, H) block: a layer's entries past its
         * S scale heads are never written by the backward and stay zero, so
         * they add nothing. (One host synchronisation per step instead of one
         * per layer: on a GPU shared with other processes each of those waits
         * for a time slice.) */
        double s_t = 0.0;
        int f_t = 1;
        st = be->iface->sumsq(be, &s_t, &f_t, m->vs.dtheta, opt->n_theta);
        if (st != GSINK_OK) return gsink__fail(opt->errmsg, st, "optimizer_step: sumsq failed: %s", be->err);
        ss += s_t;
        finite = finite && f_t;
    }
    if (!finite || !isfinite(ss))
        return gsink__fail(opt->errmsg, GSINK_ERR_NON_FINITE,
                           "optimizer_step: gradients contain NaN or Inf; step %lld refused, weights unchanged",
                           (long long)opt->step);

    const double accum = (double)o->accumulation_steps;
    const double norm = sqrt(ss) / accum; /* norm of the micro-batch-averaged gradient */
    double gscale = 1.0 / accum;
    if (o->grad_clip > 0.0f) {
        double coef = (double)o->grad_clip / (norm + 1e-6);
        if (coef < 1.0) gscale *= coef;
    }
    if (grad_norm) *grad_norm = (float)norm;

    /* 2. AdamW per tensor: weight decay on 2-D matrices only */
    const int64_t t = opt->step + 1;
    const float lr = (float)schedule(o, opt->step);
    const float bc1 = (float)(1.0 - pow((double)o->beta1, (double)t));
    const float bc2 = (float)(1.0 - pow((double)o->beta2, (double)t));
    m->weights_version++; /* logits a backward overwrote can no longer be recomputed */
    for (size_t i = 0; i < m->n_entries; i++) {
        const gsink_param_entry *e = &m->entries[i];
        if (!entry_in_block(m, e)) continue;
        float wd = e->ndim == 2 ? o->weight_decay : 0.0f;
        const bool half = e->dtype != GSINK_WD_F32;
        float *p = half ? opt->master + e->offset : (float *)(void *)(m->param_mem + e->soff);
        st = be->iface->adamw(be, p, m->grad_mem + e->offset, opt->m + e->offset, opt->v + e->offset, e->numel, lr,
                              o->beta1, o->beta2, o->eps, wd, bc1, bc2, (float)gscale);
        if (st == GSINK_OK && half) /* round the master into storage */
            st = be->iface->convert(be, m->param_mem + e->soff, e->dtype, p, GSINK_WD_F32, e->numel);
        if (st != GSINK_OK)
            return gsink__fail(opt->errmsg, st, "optimizer_step: adamw on %s failed: %s", e->name, be->err);
    }
    if (with_theta) {
        /* The whole block in one launch: an unused entry has g = m = v = 0 and
         * no weight decay, so AdamW leaves it exactly as it is. */
        st = be->iface->adamw(be, m->vs.theta, m->vs.dtheta, opt->tm, opt->tv, opt->n_theta, lr, o->beta1,
                              o->beta2, o->eps, 0.0f, bc1, bc2, (float)gscale);
        if (st != GSINK_OK)
            return gsink__fail(opt->errmsg, st, "optimizer_step: adamw on theta failed: %s", be->err);
    }
    opt->step = t;

    /* 3. zero the gradients for the next accumulation window */
    st = be->iface->zero(be, m->grad_mem, m->n_param_floats * sizeof(float));
    if (st == GSINK_OK && m->vs.dtheta) st = be->iface->zero(be, m->vs.dtheta, opt->n_theta * sizeof(float));
    if (st != GSINK_OK) return gsink__fail(opt->errmsg, st, "optimizer_step: zeroing gradients failed: %s", be->err);
    /* weights changed: the stored forward no longer matches them */
    m->have_backward = false;
    return GSINK_OK;
}

/* ---- state save / load ------------------------------------------------- */

/*
 * File layout (little-endian):
 *   char     magic[8]  "GSKOPT\0\1"
 *   uint32   version   1
 *   uint32   reserved  0
 *   uint64   n_param   floats in the parameter block
 *   uint64   n_theta   L * H
 *   int64    step
 *   float32  m[n_param], v[n_param], tm[n_theta], tv[n_theta]
 *   float32  master[n_param]     version 2 only: a model with 16-bit weights
 *   uint64   FNV-1a 64 of everything before it
 * An fp32 model writes version 1. A version 1 file loaded into a 16-bit model
 * takes its masters from the stored weights (as a new optimizer does).
 */
static const char OPT_MAGIC[8] = {'G', 'S', 'K', 'O', 'P', 'T', 0, 1};
#define OPT_VERSION 1u
#define OPT_VERSION_MASTERS 2u
#define OPT_HEADER_BYTES 40u

#define fnv1a gsink__fnv1a64
#define FNV_INIT GSINK_FNV1A64_INIT

static int write_all(int fd, const void *buf, size_t n, uint64_t *hash)
{
    const char *p = buf;
    if (hash) *hash = fnv1a(*hash, buf, n);
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Downloads n floats from backend memory in chunks and writes them. */
static gsink_status write_floats(gsink_optimizer *opt, int fd, const float *src, size_t n, float *tmp,
                                 size_t tmp_n, uint64_t *hash)
{
    gsink_backend *be = opt->model->be;
    for (size_t i = 0; i < n; i += tmp_n) {
        size_t k = n - i < tmp_n ? n - i : tmp_n;
        gsink_status st = be->iface->download(be, tmp, src + i, k * sizeof(float));
        if (st != GSINK_OK) return gsink__fail(opt->errmsg, st, "optimizer_save: download failed: %s", be->err);
        if (write_all(fd, tmp, k * sizeof(float), hash) != 0)
            return gsink__fail(opt->errmsg, GSINK_ERR_IO, "optimizer_save: write failed: %s", strerror(errno));
    }
    return GSINK_OK;
}

gsink_status gsink_optimizer_save(gsink_optimizer *opt, const char *path)
{
    if (!opt) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "optimizer_save: opt is NULL");
    GSINK_USE(opt, "optimizer");
    NEED_MODEL(opt, "optimizer_save");
    GSINK_USE(opt->model, "model");
    gsink__clear(opt->errmsg);
    if (!path) return gsink__fail(opt->errmsg, GSINK_ERR_NULL_ARGUMENT, "optimizer_save: path is NULL");
    size_t plen = strlen(path);
    char *tmp_path = malloc(plen + 32);
    const size_t chunk = 1u << 16;
    float *buf = malloc(chunk * sizeof(float));
    if (!tmp_path || !buf) {
        free(tmp_path);
        free(buf);
        return gsink__fail(opt->errmsg, GSINK_ERR_OUT_OF_MEMORY, "optimizer_save: out of memory");
    }
    snprintf(tmp_path, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        gsink_status st = gsink__fail(opt->errmsg, GSINK_ERR_IO, "optimizer_save: cannot create %s: %s", tmp_path,
                                      strerror(errno));
        free(tmp_path);
        free(buf);
        return st;
    }
    unsigned char hdr[OPT_HEADER_BYTES];
    uint32_t version = opt->master ? OPT_VERSION_MASTERS : OPT_VERSION, reserved = 0;
    uint64_t np = opt->n_param, nt = opt->n_theta;
    int64_t step = opt->step;
    memcpy(hdr, OPT_MAGIC, 8);
    memcpy(hdr + 8, &version, 4);
    memcpy(hdr + 12, &reserved, 4);
    memcpy(hdr + 16, &np, 8);
    memcpy(hdr + 24, &nt, 8);
    memcpy(hdr + 32, &step, 8);
    uint64_t hash = FNV_INIT;
    gsink_status st = GSINK_OK;
    if (write_all(fd, hdr, sizeof hdr, &hash) != 0)
        st = gsink__fail(opt->errmsg, GSINK_ERR_IO, "optimizer_save: write failed: %s", strerror(errno));
    if (st == GSINK_OK) st = write_floats(opt, fd, opt->m, opt->n_param, buf, chunk, &hash);
    if (st == GSINK_OK) st = write_floats(opt, fd, opt->v, opt->n_param, buf, chunk, &hash);
    if (st == GSINK_OK) st = write_floats(opt, fd, opt->tm, opt->n_theta, buf, chunk, &hash);
    if (st == GSINK_OK) st = write_floats(opt, fd, opt->tv, opt->n_theta, buf, chunk, &hash);
    if (st == GSINK_OK && opt->master) st = write_floats(opt, fd, opt->master, opt->n_param, buf, chunk, &hash);
    if (st == GSINK_OK && write_all(fd, &hash, sizeof hash, NULL) != 0)
        st = gsink__fail(opt->errmsg, GSINK_ERR_IO, "optimizer_save: write failed: %s", strerror(errno));
    if (st == GSINK_OK && fsync(fd) != 0)
        st = gsink__fail(opt->errmsg, GSINK_ERR_IO, "optimizer_save: fsync failed: %s", strerror(errno));
    if (close(fd) != 0 && st == GSINK_OK)
        st = gsink__fail(opt->errmsg, GSINK_ERR_IO, "optimizer_save: close failed: %s", strerror(errno));
    if (st == GSINK_OK && rename(tmp_path, path) != 0)
        st = gsink__fail(opt->errmsg, GSINK_ERR_IO, "optimizer_save: rename to %s failed: %s", path,
                         strerror(errno));
    if (st != GSINK_OK) unlink(tmp_path);
    free(tmp_path);
    free(buf);
    return st;
}

static int read_all(FILE *f, void *buf, size_t n, uint64_t *hash)
{
    if (fread(buf, 1, n, f) != n) return -1;
    if (hash) *hash = fnv1a(*hash, buf, n);
    return 0;
}

gsink_status gsink_optimizer_load(gsink_optimizer *opt, const char *path)
{
    if (!opt) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "optimizer_load: opt is NULL");
    GSINK_USE(opt, "optimizer");
    NEED_MODEL(opt, "optimizer_load");
    GSINK_USE(opt->model, "model");
    gsink__clear(opt->errmsg);
    if (!path) return gsink__fail(opt->errmsg, GSINK_ERR_NULL_ARGUMENT, "optimizer_load: path is NULL");
    struct stat sb;
    char oerr[GSINK_MSG_SIZE] = "";
    int fd = gsink__open_regular(path, &sb, oerr); /* never blocks on a FIFO */
    if (fd < 0) return gsink__fail(opt->errmsg, GSINK_ERR_IO, "optimizer_load: %s", oerr);
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int e = errno;
        close(fd);
        return gsink__fail(opt->errmsg, GSINK_ERR_IO, "optimizer_load: cannot open %s: %s", path, strerror(e));
    }
    gsink_status st = GSINK_OK;
    float *host = NULL;
    unsigned char hdr[OPT_HEADER_BYTES];
    uint64_t hash = FNV_INIT;
    uint32_t version;
    uint64_t np, nt;
    int64_t step;
    size_t total = 0;
    if (read_all(f, hdr, sizeof hdr, &hash) != 0) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_FORMAT, "optimizer_load: %s: truncated header", path);
        goto done;
    }
    if (memcmp(hdr, OPT_MAGIC, 8) != 0) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_FORMAT, "optimizer_load: %s is not a libgsink optimizer state file",
                         path);
        goto done;
    }
    memcpy(&version, hdr + 8, 4);
    memcpy(&np, hdr + 16, 8);
    memcpy(&nt, hdr + 24, 8);
    memcpy(&step, hdr + 32, 8);
    if (version != OPT_VERSION && version != OPT_VERSION_MASTERS) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_UNSUPPORTED, "optimizer_load: %s: version %u (expected %u or %u)", path,
                         version, OPT_VERSION, OPT_VERSION_MASTERS);
        goto done;
    }
    const bool masters = version == OPT_VERSION_MASTERS;
    if (masters && !opt->master) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_SHAPE_MISMATCH,
                         "optimizer_load: %s holds fp32 master weights of a model with 16-bit weights; this model "
                         "stores fp32 weights", path);
        goto done;
    }
    if (np != opt->n_param || nt != opt->n_theta) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_SHAPE_MISMATCH,
                         "optimizer_load: %s holds state for %llu parameters and %llu theta values; this model has "
                         "%zu and %zu",
                         path, (unsigned long long)np, (unsigned long long)nt, opt->n_param, opt->n_theta);
        goto done;
    }
    if (step < 0) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_FORMAT, "optimizer_load: %s: negative step", path);
        goto done;
    }
    /* everything is read into host memory and verified before any state changes */
    size_t n2, n4;
    if (!gsink__mul_size(opt->n_param, masters ? 3 : 2, &n2) || !gsink__mul_size(opt->n_theta, 2, &n4) ||
        n2 > SIZE_MAX - n4 || !gsink__mul_size(n2 + n4, sizeof(float), &total)) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_OUT_OF_MEMORY, "optimizer_load: state too large");
        goto done;
    }
    host = malloc(total ? total : 1);
    if (!host) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_OUT_OF_MEMORY, "optimizer_load: out of memory");
        goto done;
    }
    uint64_t stored;
    if (read_all(f, host, total, &hash) != 0 || read_all(f, &stored, sizeof stored, NULL) != 0) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_FORMAT, "optimizer_load: %s is truncated", path);
        goto done;
    }
    if (fgetc(f) != EOF) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_FORMAT, "optimizer_load: %s has trailing bytes", path);
        goto done;
    }
    if (stored != hash) {
        st = gsink__fail(opt->errmsg, GSINK_ERR_FORMAT, "optimizer_load: %s: checksum mismatch (corrupt file)", path);
        goto done;
    }
    gsink_backend *be = opt->model->be;
    const float *src = host;
    float *dst[5] = {opt->m, opt->v, opt->tm, opt->tv, opt->master};
    size_t cnt[5] = {opt->n_param, opt->n_param, opt->n_theta, opt->n_theta, masters ? opt->n_param : 0};
    for (int i = 0; i < 5 && st == GSINK_OK; i++) {
        if (cnt[i] == 0) continue;
        st = be->iface->upload(be, dst[i], src, cnt[i] * sizeof(float));
        if (st != GSINK_OK) st = gsink__fail(opt->errmsg, st, "optimizer_load: upload failed: %s", be->err);
        src += cnt[i];
    }
    /* a version 1 file: the masters are the stored weights */
    for (size_t i = 0; i < opt->model->n_entries && st == GSINK_OK && opt->master && !masters; i++)
        if ((st = master_from_storage(opt, &opt->model->entries[i])) != GSINK_OK)
            st = gsink__fail(opt->errmsg, st, "%s", gsink_last_error());
    if (st == GSINK_OK) opt->step = step;
done:
    free(host);
    fclose(f);
    return st;
}
