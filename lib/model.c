/*
 * model.c - the Llama-style model: parameters, forward, backward, V-scale and
 * access to every activation site. All tensor work goes through the backend
 * interface (lib/backend.h); nothing here dereferences backend memory.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "wdtype.h"

#define BE(m) ((m)->be->iface)
#define TRY(m, call, what)                                   \
    do {                                                     \
        gsink_status st_ = (call);                           \
        if (st_ != GSINK_OK) return gsink__be_check((m), st_, (what)); \
    } while (0)

gsink_status gsink__be_check(gsink_model *m, gsink_status st, const char *what)
{
    if (st == GSINK_OK) return st;
    return gsink__fail(m->errmsg, st, "%s: %s", what, m->be->err[0] ? m->be->err : gsink_status_str(st));
}

/* ------------------------------------------------------------------------ */
/* Devices                                                                   */
/* ------------------------------------------------------------------------ */

gsink_status gsink_device_count(gsink_device_kind kind, int *count)
{
    if (!count) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "count is NULL");
    switch (kind) {
    case GSINK_DEVICE_CPU: *count = 1; return GSINK_OK;
    case GSINK_DEVICE_CUDA: *count = gsink_cuda_device_count(); return GSINK_OK;
    }
    *count = 0;
    return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "unknown device kind %d", (int)kind);
}

gsink_status gsink_device_describe(gsink_device_kind kind, int index, char *buf, size_t buf_size)
{
    if (!buf || buf_size == 0) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "buffer is NULL or empty");
    buf[0] = '\0';
    if (kind == GSINK_DEVICE_CPU) {
        if (index != 0) return gsink__fail(NULL, GSINK_ERR_NO_DEVICE, "there is only CPU device 0");
        gsink_backend *be;
        gsink_status st = gsink_cpu_backend_create(0, &be);
        if (st) return st;
        be->iface->describe(be, buf, buf_size);
        be->iface->destroy(be);
        return GSINK_OK;
    }
    if (kind == GSINK_DEVICE_CUDA) {
        if (index < 0 || index >= gsink_cuda_device_count()) {
            char why[256];
            gsink_cuda_describe(index, why, sizeof why); /* says why there is none */
            return gsink__fail(NULL, GSINK_ERR_NO_DEVICE, "no CUDA device %d: %s", index, why);
        }
        gsink_cuda_describe(index, buf, buf_size);
        return GSINK_OK;
    }
    return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "unknown device kind %d", (int)kind);
}

int gsink_max_threads(void) { return gsink__max_threads(); }

/* n_threads of a model: 0 (one per CPU) up to gsink_max_threads(). Larger
 * counts made OpenMP start thousands of threads, and libgomp exits the
 * process when it cannot create one. */
static gsink_status check_threads(int n, char *errbuf)
{
    if (n < 0) return gsink__fail(errbuf, GSINK_ERR_INVALID_ARGUMENT, "thread count %d must be >= 0 (0 = one per CPU)", n);
    int max = gsink__max_threads();
    if (n > max)
        return gsink__fail(errbuf, GSINK_ERR_INVALID_ARGUMENT,
                           "thread count %d exceeds the limit %d (%d per CPU this process may run on, %d CPUs; "
                           "see gsink_max_threads)", n, max, GSINK__THREADS_PER_CPU, gsink__cpu_count());
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* Options                                                                   */
/* ------------------------------------------------------------------------ */

void gsink_model_options_init_size(gsink_model_options *out, size_t size)
{
    gsink_model_options d;
    memset(&d, 0, sizeof d);
    d.device = GSINK_DEVICE_CPU;
    gsink__copy_sized(out, size, &d, sizeof d);
}

void gsink_diag_options_init_size(gsink_diag_options *out, size_t size)
{
    gsink_diag_options d;
    memset(&d, 0, sizeof d);
    d.sink_eps = 0.3f;
    d.sink_window = 64;
    d.rgs_window = 31;
    d.sink_position = 0;
    d.batch_agg = GSINK_AGG_SUM_THEN_NORM;
    gsink__copy_sized(out, size, &d, sizeof d);
}

void gsink_vscale_options_init_size(gsink_vscale_options *out, size_t size)
{
    gsink_vscale_options d;
    memset(&d, 0, sizeof d);
    d.mode = GSINK_VSCALE_FULL;
    d.sigma = 0.02f;
    d.learnable_theta = 1;
    d.per_query_head = 0;
    gsink__copy_sized(out, size, &d, sizeof d);
}

/* ------------------------------------------------------------------------ */
/* Parameter registry                                                        */
/* ------------------------------------------------------------------------ */

static void add_entry(gsink_model *m, const char *name, int layer, int64_t d0, int64_t d1,
                      size_t *off)
{
    gsink_param_entry *e = &m->entries[m->n_entries++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->layer = layer;
    e->ndim = d1 > 0 ? 2 : 1;
    e->dims[0] = d0;
    e->dims[1] = d1 > 0 ? d1 : 0;
    e->numel = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    e->offset = *off;
    *off += e->numel;
}

/* Parameters per layer: the nine Llama tensors, then the optional steps'
 * tensors that the config's flags switch on (HF names). An architecture whose
 * files fuse gate and up (GLM) registers one (2*ff, d) tensor in their place;
 * the layer's gate and up views are its two halves. */
enum {
    R_ATTN_NORM, R_WQ, R_WK, R_WV, R_WO, R_MLP_NORM, R_WGATE, R_WUP, R_WDOWN, R_BQ, R_BK, R_BV,
    R_Q_NORM, R_K_NORM, R_POST_ATTN_NORM, R_POST_MLP_NORM, R_GATE_UP, R_COUNT
};
static const char *const role_suffix[R_COUNT] = {
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight", "post_self_attn_layernorm.weight",
    "post_mlp_layernorm.weight", "mlp.gate_up_proj.weight"};

/* Roles of a layer's parameters in registry order; returns their count. */
static int layer_roles(const gsink_config *c, int role[R_COUNT])
{
    const gsink_arch_info *a = gsink__arch(c->arch);
    int n = 0;
    for (int r = R_ATTN_NORM; r <= R_MLP_NORM; r++) role[n++] = r;
    if (a && a->fused_gate_up) {
        role[n++] = R_GATE_UP;
    } else {
        role[n++] = R_WGATE;
        role[n++] = R_WUP;
    }
    role[n++] = R_WDOWN;
    if (c->qkv_bias == 1) role[n++] = R_BQ, role[n++] = R_BK, role[n++] = R_BV;
    if (c->qk_norm == 1) role[n++] = R_Q_NORM, role[n++] = R_K_NORM;
    if (c->sandwich_norm == 1) role[n++] = R_POST_ATTN_NORM, role[n++] = R_POST_MLP_NORM;
    return n;
}

static size_t layer_param_count(const gsink_config *c)
{
    int role[R_COUNT];
    return (size_t)layer_roles(c, role);
}

int gsink__param_spec(const gsink_config *c, size_t index, char name[96], int *ndim, int64_t dims[2])
{
    int64_t d = c->d_model, qd = (int64_t)c->n_heads * c->d_head, kd = (int64_t)c->n_kv_heads * c->d_head;
    int role[R_COUNT];
    size_t LP = (size_t)layer_roles(c, role);
    size_t nl = (size_t)(c->n_layers > 0 ? c->n_layers : 0), last = 1 + nl * LP;
    int64_t d0, d1;
    if (index == 0) {
        snprintf(name, 96, "model.embed_tokens.weight");
        d0 = c->vocab_size, d1 = d;
    } else if (index < last) {
        size_t l = (index - 1) / LP, j = (index - 1) % LP;
        snprintf(name, 96, "model.layers.%zu.%s", l, role_suffix[role[j]]);
        switch (role[j]) {
        case R_WQ: d0 = qd, d1 = d; break;
        case R_WK:
        case R_WV: d0 = kd, d1 = d; break;
        case R_WO: d0 = d, d1 = qd; break;
        case R_WGATE:
        case R_WUP: d0 = c->d_ff, d1 = d; break;
        case R_GATE_UP: d0 = 2 * (int64_t)c->d_ff, d1 = d; break;
        case R_WDOWN: d0 = d, d1 = c->d_ff; break;
        case R_BQ: d0 = qd, d1 = 0; break;
        case R_BK:
        case R_BV: d0 = kd, d1 = 0; break;
        case R_Q_NORM:
        case R_K_NORM: d0 = c->d_head, d1 = 0; break;
        default: d0 = d, d1 = 0; break; /* the d_model norms */
        }
    } else if (index == last) {
        snprintf(name, 96, "model.norm.weight");
        d0 = d, d1 = 0;
    } else if (index == last + 1 && !c->tie_embeddings) {
        snprintf(name, 96, "lm_head.weight");
        d0 = c->vocab_size, d1 = d;
    } else {
        return 0;
    }
    *ndim = d1 > 0 ? 2 : 1;
    dims[0] = d0;
    dims[1] = d1 > 0 ? d1 : 0;
    return 1;
}

/* Builds the registry (HF order) and returns the total float count. */
static gsink_status build_registry(gsink_model *m, char *errbuf)
{
    const gsink_config *c = &m->cfg;
    size_t LP = layer_param_count(c);
    size_t n = 1 + (size_t)c->n_layers * LP + 1 + (c->tie_embeddings ? 0 : 1);
    m->entries = calloc(n, sizeof *m->entries);
    m->theta_names = calloc((size_t)c->n_layers, sizeof *m->theta_names);
    if (!m->entries || !m->theta_names)
        return gsink__fail(errbuf, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate the parameter registry");
    size_t off = 0;
    char name[96];
    int ndim;
    int64_t dims[2];
    for (size_t k = 0; gsink__param_spec(c, k, name, &ndim, dims); k++) {
        int layer = k >= 1 && k < 1 + (size_t)c->n_layers * LP ? (int)((k - 1) / LP) : -1;
        add_entry(m, name, layer, dims[0], dims[1], &off);
    }
    for (int l = 0; l < c->n_layers; l++)
        snprintf(m->theta_names[l], sizeof m->theta_names[l], "model.layers.%d.self_attn.v_scale_theta", l);
    m->n_param_floats = off;
    /* Storage: matrices in the weight type, vectors in fp32, each entry
     * 4-byte aligned (a 16-bit matrix of odd size gets 2 bytes of padding). */
    size_t soff = 0;
    for (size_t i = 0; i < m->n_entries; i++) {
        gsink_param_entry *e = &m->entries[i];
        e->dtype = e->ndim == 2 ? m->wdtype : GSINK_WD_F32;
        e->soff = soff;
        size_t b;
        if (!gsink__mul_size(e->numel, gsink__wd_size(e->dtype), &b) || b > SIZE_MAX - 4 - soff)
            return gsink__fail(errbuf, GSINK_ERR_OUT_OF_MEMORY, "parameter size overflows");
        soff += (b + 3) & ~(size_t)3;
    }
    m->param_bytes = soff;
    return GSINK_OK;
}

/* storage: base is param_mem (entries at soff, in their dtype); else an fp32
 * block in the float layout (gradients). */
static float *view(const gsink_param_entry *e, void *base, bool storage, size_t skip)
{
    if (!storage) return (float *)base + e->offset + skip;
    return (float *)(void *)((unsigned char *)base + e->soff + skip * gsink__wd_size(e->dtype));
}

static void bind_views(const gsink_model *m, void *base, bool storage, gsink_params *p)
{
    const gsink_param_entry *e = m->entries;
    int role[R_COUNT];
    size_t LP = (size_t)layer_roles(&m->cfg, role);
    size_t ffd = (size_t)m->cfg.d_ff * m->cfg.d_model;
    p->embed = view(&e[0], base, storage, 0);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const gsink_param_entry *le = e + 1 + (size_t)l * LP;
        gsink_layer_params *lp = &p->layers[l];
        memset(lp, 0, sizeof *lp); /* optional steps' tensors stay NULL */
        for (size_t j = 0; j < LP; j++) {
            float *v = view(&le[j], base, storage, 0);
            switch (role[j]) {
            case R_ATTN_NORM: lp->attn_norm = v; break;
            case R_WQ: lp->wq = v; break;
            case R_WK: lp->wk = v; break;
            case R_WV: lp->wv = v; break;
            case R_WO: lp->wo = v; break;
            case R_MLP_NORM: lp->mlp_norm = v; break;
            case R_WGATE: lp->wgate = v; break;
            case R_WUP: lp->wup = v; break;
            case R_GATE_UP: lp->wgate = v, lp->wup = view(&le[j], base, storage, ffd); break; /* HF chunk(2): gate rows first */
            case R_WDOWN: lp->wdown = v; break;
            case R_BQ: lp->bq = v; break;
            case R_BK: lp->bk = v; break;
            case R_BV: lp->bv = v; break;
            case R_Q_NORM: lp->q_norm = v; break;
            case R_K_NORM: lp->k_norm = v; break;
            case R_POST_ATTN_NORM: lp->post_attn_norm = v; break;
            case R_POST_MLP_NORM: lp->post_mlp_norm = v; break;
            }
        }
    }
    size_t last = 1 + (size_t)m->cfg.n_layers * LP;
    p->final_norm = view(&e[last], base, storage, 0);
    p->lm_head = m->cfg.tie_embeddings ? p->embed : view(&e[last + 1], base, storage, 0);
}

const gsink_param_entry *gsink__find_param(const gsink_model *m, const char *name)
{
    /* The registry has a fixed order: a layer's name is looked up among its
     * own entries, so loading every parameter by name stays linear. */
    int l, used = 0;
    size_t LP = layer_param_count(&m->cfg);
    if (sscanf(name, "model.layers.%d.%n", &l, &used) == 1 && used > 0 && l >= 0 && l < m->cfg.n_layers &&
        m->n_entries >= 1 + (size_t)m->cfg.n_layers * LP) {
        const gsink_param_entry *le = m->entries + 1 + (size_t)l * LP;
        for (size_t j = 0; j < LP; j++)
            if (strcmp(le[j].name, name) == 0) return &le[j];
        return NULL;
    }
    for (size_t i = 0; i < m->n_entries; i++)
        if (strcmp(m->entries[i].name, name) == 0) return &m->entries[i];
    return NULL;
}

/* Layer of a V-scale theta name, or -1. */
static int theta_layer(const gsink_model *m, const char *name)
{
    if (m->vs.mode == GSINK_VSCALE_OFF) return -1;
    for (int l = 0; l < m->cfg.n_layers; l++)
        if (strcmp(m->theta_names[l], name) == 0) return l;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Create / free                                                             */
/* ------------------------------------------------------------------------ */

/* No recomputed site's buffer holds any layer's values (site_ready). */
static void forget_recomputed(gsink_model *m)
{
    for (int i = 0; i < GSINK_SITE_COUNT; i++) m->held[i] = -1;
    m->held_grad = -1;
}

static void free_acts(gsink_model *m)
{
    if (m->act_mem) BE(m)->free(m->be, m->act_mem);
    m->act_mem = NULL;
    m->act_bytes = 0;
    m->cap_tokens = 0;
    free(m->hstats.mass);
    free(m->hstats.sq);
    free(m->hstats.win);
    m->hstats.mass = m->hstats.sq = m->hstats.win = NULL;
    m->have_forward = m->have_backward = m->have_targets = false;
    m->B = m->T = 0;
    forget_recomputed(m);
}

void gsink_model_free(gsink_model *m)
{
    if (!m) return;
    /* Freeing a model another thread is inside a call on would pull its
     * memory away under it: refuse, leave the model valid (the caller may
     * free it once that call has returned) and say so in gsink_last_error.
     * The claim is never released: the memory goes away below. */
    gsink__use u;
    if (!gsink__use_acquire(&u, &m->owner)) {
        gsink__busy("model");
        return;
    }
    if (!gsink__analyses_detach(m)) { /* an analysis on it is in use */
        gsink__use_release(&u);
        gsink__busy("analysis of this model");
        return;
    }
    if (!gsink__optimizers_detach(m)) { /* an optimizer on it is in use */
        gsink__use_release(&u);
        gsink__busy("optimizer of this model");
        return;
    }
    if (m->be) {
        free_acts(m);
        if (m->param_mem) BE(m)->free(m->be, m->param_mem);
        if (m->grad_mem) BE(m)->free(m->be, m->grad_mem);
        if (m->vs.theta) BE(m)->free(m->be, m->vs.theta);
        if (m->vs.dtheta) BE(m)->free(m->be, m->vs.dtheta);
        if (m->rope_freq) BE(m)->free(m->be, m->rope_freq);
        BE(m)->destroy(m->be);
    }
    free(m->p.layers);
    free(m->g.layers);
    free(m->layers);
    free(m->resid);
    free(m->dresid);
    free(m->entries);
    free(m->theta_names);
    free(m);
}

gsink_status gsink__model_alloc(const gsink_config *cfg, const gsink_model_options *opts,
                                gsink_model **out, char *errbuf)
{
    if (!out) return gsink__fail(errbuf, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!cfg) return gsink__fail(errbuf, GSINK_ERR_NULL_ARGUMENT, "config is NULL");
    gsink_status st = gsink_config_validate(cfg);
    if (st) return gsink__fail(errbuf, st, "%s", gsink_last_error());
    gsink_model_options o;
    gsink_model_options_init(&o);
    if (opts) {
        if (opts->size < sizeof(size_t) + 3 * sizeof(int32_t))
            return gsink__fail(errbuf, GSINK_ERR_INVALID_ARGUMENT, "model options size %zu is too small (call gsink_model_options_init)", opts->size);
        memcpy(&o, opts, opts->size < sizeof o ? opts->size : sizeof o);
        o.size = sizeof o;
    }
    if ((st = check_threads(o.n_threads, errbuf))) return st;
    if (o.precision != GSINK_PRECISION_FP32 && o.precision != GSINK_PRECISION_TF32 &&
        o.precision != GSINK_PRECISION_BF16)
        return gsink__fail(errbuf, GSINK_ERR_INVALID_ARGUMENT, "unknown precision %d", o.precision);
    if (o.precision != GSINK_PRECISION_FP32 && o.device != GSINK_DEVICE_CUDA)
        return gsink__fail(errbuf, GSINK_ERR_UNSUPPORTED, "%s precision needs a CUDA device; the CPU computes in exact fp32",
                           o.precision == GSINK_PRECISION_TF32 ? "TF32" : "BF16");
    if (o.flags & ~(uint32_t)(GSINK_MODEL_DISCARD_SITE_GRADS | GSINK_MODEL_ANALYSIS | GSINK_MODEL_DISCARD_SITE_ACTIVATIONS))
        return gsink__fail(errbuf, GSINK_ERR_INVALID_ARGUMENT, "unknown model flags 0x%x", (unsigned)o.flags);
    if ((o.flags & GSINK_MODEL_DISCARD_SITE_ACTIVATIONS) && !(o.flags & GSINK_MODEL_ANALYSIS))
        return gsink__fail(errbuf, GSINK_ERR_INVALID_ARGUMENT,
                           "GSINK_MODEL_DISCARD_SITE_ACTIVATIONS needs GSINK_MODEL_ANALYSIS (a training backward reads every site)");
    if (o.weight_dtype != GSINK_WEIGHTS_FP32 && o.weight_dtype != GSINK_WEIGHTS_BF16 &&
        o.weight_dtype != GSINK_WEIGHTS_FP16)
        return gsink__fail(errbuf, GSINK_ERR_INVALID_ARGUMENT,
                           "unknown weight_dtype %d (GSINK_WEIGHTS_FP32 0, BF16 1, FP16 2)", (int)o.weight_dtype);

    gsink_model *m = calloc(1, sizeof *m);
    if (!m) return gsink__fail(errbuf, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate the model");
    gsink__config_normalize(cfg, &m->cfg);
    m->device_kind = o.device;
    m->device_index = o.device_index;
    m->n_threads = o.n_threads;
    m->discard_site_grads = (o.flags & GSINK_MODEL_DISCARD_SITE_GRADS) != 0;
    m->analysis = (o.flags & GSINK_MODEL_ANALYSIS) != 0;
    m->discard_site_acts = (o.flags & GSINK_MODEL_DISCARD_SITE_ACTIVATIONS) != 0;
    m->wdtype = o.weight_dtype; /* gsink_weight_dtype and GSINK_WD_* share their values */
    gsink_diag_options_init(&m->diag);

    if (o.device == GSINK_DEVICE_CPU) {
        if (o.device_index != 0) {
            free(m);
            return gsink__fail(errbuf, GSINK_ERR_NO_DEVICE, "there is only CPU device 0 (asked for %d)", o.device_index);
        }
        st = gsink_cpu_backend_create(o.n_threads, &m->be);
    } else if (o.device == GSINK_DEVICE_CUDA) {
        st = gsink_cuda_backend_create(o.device_index, &m->be);
        /* gsink_precision and the module's GSINK_CUDA_MATH_* share their values. */
        if (!st && o.precision != GSINK_PRECISION_FP32 && (st = gsink__cuda_set_math(m->be, o.precision))) {
            BE(m)->destroy(m->be);
            m->be = NULL;
        }
    } else {
        free(m);
        return gsink__fail(errbuf, GSINK_ERR_INVALID_ARGUMENT, "unknown device kind %d", o.device);
    }
    if (st) {
        char msg[GSINK_MSG_SIZE];
        snprintf(msg, sizeof msg, "%s", gsink_last_error());
        free(m);
        return gsink__fail(errbuf, st, "cannot create the backend: %s", msg[0] ? msg : gsink_status_str(st));
    }

    m->defer_stats = BE(m)->stats_in_backward != 0;
    forget_recomputed(m);
    st = build_registry(m, errbuf);
    if (st) goto fail;
    size_t bytes;
    if (!gsink__mul_size(m->n_param_floats, sizeof(float), &bytes)) {
        st = gsink__fail(errbuf, GSINK_ERR_OUT_OF_MEMORY, "parameter size overflows");
        goto fail;
    }
    st = BE(m)->alloc(m->be, m->param_bytes, (void **)&m->param_mem);
    if (!st && !m->analysis) st = BE(m)->alloc(m->be, bytes, (void **)&m->grad_mem);
    if (st) {
        st = gsink__fail(errbuf, st, "cannot allocate %zu parameters (%zu MiB for weights%s): %s",
                         m->n_param_floats, m->param_bytes >> 20, m->analysis ? "" : ", as much in fp32 for gradients",
                         m->be->err);
        goto fail;
    }
    BE(m)->zero(m->be, m->param_mem, m->param_bytes);
    if (m->grad_mem) BE(m)->zero(m->be, m->grad_mem, bytes);
    size_t th = (size_t)cfg->n_layers * cfg->n_heads * sizeof(float);
    st = BE(m)->alloc(m->be, th, (void **)&m->vs.theta);
    if (!st) st = BE(m)->alloc(m->be, th, (void **)&m->vs.dtheta);
    if (st) {
        st = gsink__fail(errbuf, st, "cannot allocate V-scale parameters");
        goto fail;
    }
    BE(m)->zero(m->be, m->vs.theta, th);
    BE(m)->zero(m->be, m->vs.dtheta, th);
    m->vs.mode = GSINK_VSCALE_OFF;
    m->vs.sigma = 0.02f;
    m->vs.n_scale_heads = cfg->n_kv_heads;

    /* RoPE frequencies: data computed once on the host (HF rope_type). */
    {
        size_t half = (size_t)m->cfg.d_head / 2;
        double *freq = calloc(half, sizeof(double)), scale = 1.0;
        if (!freq) {
            st = gsink__fail(errbuf, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate the RoPE table");
            goto fail;
        }
        gsink__rope_freqs(&m->cfg, freq, &scale);
        m->rope_scale = (float)scale;
        st = BE(m)->alloc(m->be, half * sizeof(double), (void **)&m->rope_freq);
        if (!st) st = BE(m)->upload(m->be, m->rope_freq, freq, half * sizeof(double));
        free(freq);
        if (st) {
            st = gsink__fail(errbuf, st, "cannot allocate the RoPE table");
            goto fail;
        }
    }

    m->p.layers = calloc((size_t)cfg->n_layers, sizeof(gsink_layer_params));
    m->g.layers = calloc((size_t)cfg->n_layers, sizeof(gsink_layer_params));
    m->layers = calloc((size_t)cfg->n_layers, sizeof(gsink_layer_acts));
    m->resid = calloc((size_t)cfg->n_layers + 1, sizeof(float *));
    m->dresid = calloc((size_t)cfg->n_layers + 1, sizeof(float *));
    if (!m->p.layers || !m->g.layers || !m->layers || !m->resid || !m->dresid) {
        st = gsink__fail(errbuf, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate layer tables");
        goto fail;
    }
    bind_views(m, m->param_mem, true, &m->p);
    if (m->grad_mem) bind_views(m, m->grad_mem, false, &m->g); /* analysis: every gradient view stays NULL */
    *out = m;
    return GSINK_OK;
fail:
    gsink_model_free(m);
    return st;
}

gsink_status gsink_model_create(const gsink_config *cfg, const gsink_model_options *opts,
                                gsink_model **out)
{
    if (!out) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    *out = NULL;
    gsink_model *m;
    gsink_status st = gsink__model_alloc(cfg, opts, &m, NULL);
    if (st) return st;
    /* HF LlamaForCausalLM init: normal(0, std) matrices/embeddings, ones for norms, zero biases. */
    gsink_rng rng;
    gsink__rng_seed(&rng, opts ? opts->seed : 0);
    size_t max_numel = 0;
    for (size_t i = 0; i < m->n_entries; i++)
        if (m->entries[i].numel > max_numel) max_numel = m->entries[i].numel;
    float *host = malloc(max_numel * sizeof(float));
    if (!host) {
        gsink_model_free(m);
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate the initialisation buffer");
    }
    for (size_t i = 0; i < m->n_entries; i++) {
        const gsink_param_entry *e = &m->entries[i];
        bool is_bias = strlen(e->name) > 5 && strcmp(e->name + strlen(e->name) - 5, ".bias") == 0;
        if (e->ndim == 1)
            for (size_t j = 0; j < e->numel; j++) host[j] = is_bias ? 0.0f : 1.0f; /* HF: zero biases */
        else
            for (size_t j = 0; j < e->numel; j++) host[j] = (float)(gsink__rng_normal(&rng) * m->cfg.init_std);
        st = gsink__param_store(m, e, host, GSINK_WD_F32);
        if (st) break;
    }
    free(host);
    if (st) {
        gsink__fail(NULL, st, "cannot upload initial weights: %s", m->be->err);
        gsink_model_free(m);
        return st;
    }
    *out = m;
    return GSINK_OK;
}

gsink_status gsink_model_config(const gsink_model *m, gsink_config *cfg)
{
    if (!m || !cfg) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model or config is NULL");
    GSINK_USE(m, "model");
    size_t n = cfg->size;
    if (n < sizeof(size_t)) return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "cfg->size is not set (call gsink_config_init)");
    if (n > sizeof *cfg) n = sizeof *cfg;
    memcpy(cfg, &m->cfg, n);
    cfg->size = n;
    return GSINK_OK;
}

const char *gsink_model_errmsg(const gsink_model *m)
{
    if (!m) return "model is NULL";
    /* The buffer belongs to the call in progress on another thread. */
    if (gsink__used_elsewhere(&m->owner)) return GSINK__BUSY_MSG("model");
    return m->errmsg;
}

gsink_status gsink_model_set_threads(gsink_model *m, int n)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    gsink_status st = check_threads(n, m->errmsg);
    if (st) return st;
    TRY(m, BE(m)->set_threads(m->be, n), "set_threads");
    m->n_threads = n;
    return GSINK_OK;
}

gsink_status gsink_model_memory(gsink_model *m, uint64_t *bytes, uint64_t *peak_bytes, uint32_t flags)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (flags & ~(uint32_t)GSINK_MEMORY_RESET_PEAK)
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "unknown memory flags 0x%x", (unsigned)flags);
    size_t live = 0, peak = 0;
    BE(m)->memory(m->be, &live, &peak, (flags & GSINK_MEMORY_RESET_PEAK) != 0);
    if (bytes) *bytes = live;
    if (peak_bytes) *peak_bytes = peak;
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* Parameter access                                                          */
/* ------------------------------------------------------------------------ */

static size_t n_theta_entries(const gsink_model *m)
{
    return m->vs.mode == GSINK_VSCALE_OFF ? 0 : (size_t)m->cfg.n_layers;
}

gsink_status gsink_param_count(const gsink_model *m, size_t *count)
{
    if (!m || !count) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model or count is NULL");
    GSINK_USE(m, "model");
    *count = m->n_entries + n_theta_entries(m);
    return GSINK_OK;
}

gsink_status gsink_param_info(const gsink_model *m, size_t index, const char **name, int *ndim,
                              int64_t dims[2])
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    if (index < m->n_entries) {
        const gsink_param_entry *e = &m->entries[index];
        if (name) *name = e->name;
        if (ndim) *ndim = e->ndim;
        if (dims) {
            dims[0] = e->dims[0];
            dims[1] = e->dims[1];
        }
        return GSINK_OK;
    }
    if (index < m->n_entries + n_theta_entries(m)) {
        size_t l = index - m->n_entries;
        if (name) *name = m->theta_names[l];
        if (ndim) *ndim = 1;
        if (dims) {
            dims[0] = m->vs.n_scale_heads;
            dims[1] = 0;
        }
        return GSINK_OK;
    }
    return gsink__fail(NULL, GSINK_ERR_OUT_OF_RANGE, "parameter index %zu >= count %zu", index,
                       m->n_entries + n_theta_entries(m));
}

gsink_status gsink_param_numel(const gsink_model *m, size_t *numel)
{
    if (!m || !numel) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model or numel is NULL");
    GSINK_USE(m, "model");
    *numel = m->n_param_floats + n_theta_entries(m) * (size_t)m->vs.n_scale_heads;
    return GSINK_OK;
}

typedef enum { P_GET, P_SET, P_GRAD } param_op;

/* Host staging of gsink__param_store / fetch: a 16-bit tensor crosses to
 * the backend in chunks of this many elements (8 MiB of fp32). */
#define PARAM_CHUNK ((size_t)2 << 20)

gsink_status gsink__param_store_range(gsink_model *m, const gsink_param_entry *e, size_t first, size_t count,
                                      const void *src, int src_dtype)
{
    size_t es = gsink__wd_size(e->dtype);
    unsigned char *dev = m->param_mem + e->soff + first * es;
    if (first > e->numel || count > e->numel - first) {
        snprintf(m->be->err, sizeof m->be->err, "elements [%zu, +%zu) outside '%s' (%zu)", first, count, e->name,
                 e->numel);
        return GSINK_ERR_OUT_OF_RANGE;
    }
    m->weights_version++; /* callers also drop the stored forward */
    if (src_dtype == e->dtype) return BE(m)->upload(m->be, dev, src, count * es);
    size_t chunk = count < PARAM_CHUNK ? count : PARAM_CHUNK;
    void *tmp = malloc((chunk ? chunk : 1) * es);
    if (!tmp) {
        snprintf(m->be->err, sizeof m->be->err, "cannot allocate %zu bytes of staging", chunk * es);
        return GSINK_ERR_OUT_OF_MEMORY;
    }
    gsink_status st = GSINK_OK;
    for (size_t i = 0; i < count && !st; i += chunk) {
        size_t n = count - i < chunk ? count - i : chunk;
        for (size_t j = 0; j < n; j++) gsink__wd_store(tmp, e->dtype, j, gsink__wd_load(src, src_dtype, i + j));
        st = BE(m)->upload(m->be, dev + i * es, tmp, n * es);
    }
    free(tmp);
    return st;
}

gsink_status gsink__param_store(gsink_model *m, const gsink_param_entry *e, const void *src, int src_dtype)
{
    return gsink__param_store_range(m, e, 0, e->numel, src, src_dtype);
}

gsink_status gsink__param_fetch(gsink_model *m, const gsink_param_entry *e, void *dst, int dst_dtype)
{
    const unsigned char *dev = m->param_mem + e->soff;
    size_t es = gsink__wd_size(e->dtype);
    if (dst_dtype == e->dtype) return BE(m)->download(m->be, dst, dev, e->numel * es);
    size_t chunk = e->numel < PARAM_CHUNK ? e->numel : PARAM_CHUNK;
    void *tmp = malloc((chunk ? chunk : 1) * es);
    if (!tmp) {
        snprintf(m->be->err, sizeof m->be->err, "cannot allocate %zu bytes of staging", chunk * es);
        return GSINK_ERR_OUT_OF_MEMORY;
    }
    gsink_status st = GSINK_OK;
    for (size_t i = 0; i < e->numel && !st; i += chunk) {
        size_t n = e->numel - i < chunk ? e->numel - i : chunk;
        st = BE(m)->download(m->be, tmp, dev + i * es, n * es);
        for (size_t j = 0; j < n && !st; j++) gsink__wd_store(dst, dst_dtype, i + j, gsink__wd_load(tmp, e->dtype, j));
    }
    free(tmp);
    return st;
}

static gsink_status param_io(gsink_model *m, const char *name, float *buf, size_t count, param_op op)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!name || !buf) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "name or buffer is NULL");
    const gsink_param_entry *e = gsink__find_param(m, name);
    float *dev = NULL;
    size_t numel;
    if (op == P_GRAD && m->analysis)
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED,
                           "parameter gradients are not computed by this model (GSINK_MODEL_ANALYSIS)");
    if (!e) {
        int l = theta_layer(m, name);
        if (l < 0) {
            if (!m->cfg.tie_embeddings || strcmp(name, "lm_head.weight") != 0)
                return gsink__fail(m->errmsg, GSINK_ERR_UNKNOWN_NAME, "no parameter named '%s'", name);
            e = &m->entries[0]; /* tied head == embedding */
        } else {
            dev = (op == P_GRAD ? m->vs.dtheta : m->vs.theta) + (size_t)l * m->cfg.n_heads;
        }
    }
    if (e) {
        numel = e->numel;
        if (op == P_GRAD) dev = m->grad_mem + e->offset;
    } else {
        numel = (size_t)m->vs.n_scale_heads;
    }
    if (count != numel)
        return gsink__fail(m->errmsg, count < numel ? GSINK_ERR_BUFFER_TOO_SMALL : GSINK_ERR_SHAPE_MISMATCH,
                           "parameter '%s' has %zu elements, got count %zu", name, numel, count);
    if (op == P_SET) {
        if (e) TRY(m, gsink__param_store(m, e, buf, GSINK_WD_F32), "upload");
        else TRY(m, BE(m)->upload(m->be, dev, buf, numel * sizeof(float)), "upload");
        m->have_forward = m->have_backward = false; /* stored results no longer match the weights */
        if (e && e->dtype != GSINK_WD_F32) gsink__optimizers_resync(m, e);
    } else if (e && op == P_GET) {
        TRY(m, gsink__param_fetch(m, e, buf, GSINK_WD_F32), "download");
    } else {
        TRY(m, BE(m)->download(m->be, buf, dev, numel * sizeof(float)), "download");
    }
    return GSINK_OK;
}

gsink_status gsink_get_param(gsink_model *m, const char *name, float *out, size_t count)
{
    return param_io(m, name, out, count, P_GET);
}

gsink_status gsink_set_param(gsink_model *m, const char *name, const float *data, size_t count)
{
    return param_io(m, name, (float *)data, count, P_SET);
}

gsink_status gsink_get_param_grad(gsink_model *m, const char *name, float *out, size_t count)
{
    return param_io(m, name, out, count, P_GRAD);
}

/* Every parameter (or gradient) in one flat caller buffer: the registry's
 * tensors in gsink_param_info order (tied head counted once), then theta
 * (n_layers x n_scale_heads) while V-scale is on. One copy per call: the
 * storage is contiguous except for theta's rows. */
static gsink_status flat_io(gsink_model *m, float *buf, size_t count, param_op op, bool grad)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!buf) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "buffer is NULL");
    if (grad && m->analysis)
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED,
                           "parameter gradients are not computed by this model (GSINK_MODEL_ANALYSIS)");
    size_t L = n_theta_entries(m), S = (size_t)m->vs.n_scale_heads, P = m->n_param_floats;
    size_t numel = P + L * S;
    if (count != numel)
        return gsink__fail(m->errmsg, count < numel ? GSINK_ERR_BUFFER_TOO_SMALL : GSINK_ERR_SHAPE_MISMATCH,
                           "the model has %zu parameter values (gsink_param_numel), got count %zu", numel, count);
    if (op == P_SET && !grad)
        for (size_t i = P; i < numel; i++)
            if (!isfinite(buf[i])) return gsink__fail(m->errmsg, GSINK_ERR_NON_FINITE, "theta value %zu is not finite", i - P);
    float *th = grad ? m->vs.dtheta : m->vs.theta;
    if (grad) {
        if (op == P_SET) TRY(m, BE(m)->upload(m->be, m->grad_mem, buf, P * sizeof(float)), "upload");
        else TRY(m, BE(m)->download(m->be, buf, m->grad_mem, P * sizeof(float)), "download");
    } else {
        /* Weights: each tensor at its fp32-layout offset, converted from or
         * into its storage type (16-bit matrices round to nearest even). */
        if (op == P_GET) memset(buf, 0, P * sizeof(float)); /* any gap between tensors reads as 0 */
        for (size_t i = 0; i < m->n_entries; i++) {
            const gsink_param_entry *e = &m->entries[i];
            if (strstr(e->name, "v_scale_theta")) continue;
            if (op == P_SET) {
                TRY(m, gsink__param_store(m, e, buf + e->offset, GSINK_WD_F32), "upload");
                if (e->dtype != GSINK_WD_F32) gsink__optimizers_resync(m, e);
            } else {
                TRY(m, gsink__param_fetch(m, e, buf + e->offset, GSINK_WD_F32), "download");
            }
        }
    }
    for (size_t l = 0; l < L; l++) {
        float *row = th + l * (size_t)m->cfg.n_heads;
        gsink_status st = op == P_SET ? BE(m)->upload(m->be, row, buf + P + l * S, S * sizeof(float))
                                      : BE(m)->download(m->be, buf + P + l * S, row, S * sizeof(float));
        if (st) return gsink__be_check(m, st, "theta copy");
    }
    if (op == P_SET && !grad) m->have_forward = m->have_backward = false;
    return GSINK_OK;
}

gsink_status gsink_get_params_flat(gsink_model *m, float *out, size_t count) { return flat_io(m, out, count, P_GET, false); }
gsink_status gsink_set_params_flat(gsink_model *m, const float *data, size_t count) { return flat_io(m, (float *)data, count, P_SET, false); }
gsink_status gsink_get_grads_flat(gsink_model *m, float *out, size_t count) { return flat_io(m, out, count, P_GET, true); }
gsink_status gsink_set_grads_flat(gsink_model *m, const float *data, size_t count) { return flat_io(m, (float *)data, count, P_SET, true); }

/* ------------------------------------------------------------------------ */
/* Sites                                                                     */
/* ------------------------------------------------------------------------ */

static const char *const site_names[GSINK_SITE_COUNT] = {
    "resid_in", "attn_norm_out", "q", "k", "v", "v_scaled", "attn_out", "resid_mid",
    "mlp_norm_out", "mlp_out", "resid_out", "z", "mlp_pre", "mlp_up", "mlp_post",
};
/* TransformerLens-style hook names (after "blocks.{l}."). */
static const char *const site_hooks[GSINK_SITE_COUNT] = {
    "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_v_scaled", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized",
    "hook_mlp_out", "hook_resid_post", "attn.hook_z", "mlp.hook_pre", "mlp.hook_pre_linear",
    "mlp.hook_post",
};

const char *gsink_site_name(gsink_site site)
{
    if ((int)site < 0 || site >= GSINK_SITE_COUNT) return NULL;
    return site_names[site];
}

gsink_status gsink_site_parse(const char *name, gsink_site *site, int *layer)
{
    if (!name || !site) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "name or site is NULL");
    if (layer) *layer = -1;
    for (int s = 0; s < GSINK_SITE_COUNT; s++)
        if (strcmp(name, site_names[s]) == 0) {
            *site = (gsink_site)s;
            return GSINK_OK;
        }
    int l = -1, n = 0;
    if (sscanf(name, "blocks.%d.%n", &l, &n) == 1 && n > 0 && l >= 0) {
        for (int s = 0; s < GSINK_SITE_COUNT; s++)
            if (strcmp(name + n, site_hooks[s]) == 0) {
                *site = (gsink_site)s;
                if (layer) *layer = l;
                return GSINK_OK;
            }
    }
    return gsink__fail(NULL, GSINK_ERR_UNKNOWN_SITE, "unknown site '%s'", name);
}

int gsink__site_heads(const gsink_model *m, gsink_site site)
{
    switch (site) {
    case GSINK_SITE_Q:
    case GSINK_SITE_Z: return m->cfg.n_heads;
    case GSINK_SITE_K:
    case GSINK_SITE_V: return m->cfg.n_kv_heads;
    case GSINK_SITE_V_SCALED: return m->vs.n_scale_heads;
    default: return 1;
    }
}

int gsink__site_width(const gsink_model *m, gsink_site site)
{
    switch (site) {
    case GSINK_SITE_Q:
    case GSINK_SITE_K:
    case GSINK_SITE_V:
    case GSINK_SITE_V_SCALED:
    case GSINK_SITE_Z: return gsink__site_heads(m, site) * m->cfg.d_head;
    case GSINK_SITE_MLP_PRE:
    case GSINK_SITE_MLP_UP:
    case GSINK_SITE_MLP_POST: return m->cfg.d_ff;
    default: return m->cfg.d_model;
    }
}

gsink_status gsink_site_dims(const gsink_model *m, gsink_site site, int *heads, int *width)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    if ((int)site < 0 || site >= GSINK_SITE_COUNT)
        return gsink__fail(NULL, GSINK_ERR_UNKNOWN_SITE, "unknown site id %d", (int)site);
    int h = gsink__site_heads(m, site);
    if (heads) *heads = h;
    if (width) *width = gsink__site_width(m, site) / h;
    return GSINK_OK;
}

float *gsink__site_ptr(gsink_model *m, int layer, gsink_site site, bool grad)
{
    if (layer < 0 || layer >= m->cfg.n_layers || (int)site < 0 || site >= GSINK_SITE_COUNT) return NULL;
    if (site == GSINK_SITE_RESID_IN) return grad ? m->dresid[layer] : m->resid[layer];
    if (site == GSINK_SITE_RESID_OUT) return grad ? m->dresid[layer + 1] : m->resid[layer + 1];
    return grad ? m->layers[layer].dsite[site] : m->layers[layer].site[site];
}

bool gsink__site_discarded(const gsink_model *m, gsink_site site)
{
    if (!m->discard_site_acts) return false;
    switch (site) {
    case GSINK_SITE_ATTN_OUT: /* never read by the backward */
    case GSINK_SITE_MLP_OUT: return true;
    default: return false;
    }
}

bool gsink__site_recomputed(gsink_site site, bool grad)
{
    if (grad) return site == GSINK_SITE_MLP_PRE || site == GSINK_SITE_MLP_UP;
    return site == GSINK_SITE_ATTN_NORM_OUT || site == GSINK_SITE_MLP_NORM_OUT || site == GSINK_SITE_MLP_POST;
}

/* Makes the buffer of a recomputed site hold a layer's values: the
 * forward's own kernel on the forward's inputs (resid_in or resid_mid and
 * the gains the forward copied into gain_snap; mlp_pre and mlp_up), so the
 * values are bitwise the forward's, also after an optimizer step. The
 * forward fills the buffers layer by layer; the backward (weight
 * gradients) and the readers (gsink__site_ready) call this. */
static gsink_status site_ready(gsink_model *m, int layer, gsink_site site)
{
    if (m->held[site] == layer) return GSINK_OK;
    const gsink_config *c = &m->cfg;
    gsink_layer_acts *a = &m->layers[layer];
    const size_t N = (size_t)m->B * m->T;
    const float *gain = m->gain_snap + (size_t)layer * 2 * c->d_model;
    gsink_status st;
    switch (site) {
    case GSINK_SITE_ATTN_NORM_OUT:
        st = BE(m)->rmsnorm_fwd(m->be, a->site[site], a->rstd_attn, m->resid[layer], gain, (int)N, c->d_model, c->rms_eps);
        break;
    case GSINK_SITE_MLP_NORM_OUT:
        st = BE(m)->rmsnorm_fwd(m->be, a->site[site], a->rstd_mlp, a->site[GSINK_SITE_RESID_MID], gain + c->d_model,
                                (int)N, c->d_model, c->rms_eps);
        break;
    case GSINK_SITE_MLP_POST:
        st = BE(m)->swiglu_fwd(m->be, a->site[site], a->site[GSINK_SITE_MLP_PRE], a->site[GSINK_SITE_MLP_UP], N * c->d_ff);
        break;
    default: return GSINK_OK;
    }
    if (st) return gsink__be_check(m, st, site == GSINK_SITE_MLP_POST ? "swiglu" : "rmsnorm");
    m->held[site] = layer;
    return GSINK_OK;
}

/* The gradients of mlp_pre and mlp_up of a layer in their shared buffers:
 * the backward's SwiGLU step again on the kept mlp_post gradient, mlp_pre
 * and mlp_up (bitwise the backward's values). Only with kept site gradients
 * (the mlp_post gradient of every layer). */
static gsink_status swiglu_grads_ready(gsink_model *m, int layer)
{
    if (m->held_grad == layer) return GSINK_OK;
    gsink_layer_acts *a = &m->layers[layer];
    gsink_status st = BE(m)->swiglu_bwd(m->be, a->dsite[GSINK_SITE_MLP_PRE], a->dsite[GSINK_SITE_MLP_UP],
                                        a->dsite[GSINK_SITE_MLP_POST], a->site[GSINK_SITE_MLP_PRE],
                                        a->site[GSINK_SITE_MLP_UP], (size_t)m->B * m->T * m->cfg.d_ff);
    if (st) return gsink__be_check(m, st, "swiglu");
    m->held_grad = layer;
    return GSINK_OK;
}

gsink_status gsink__site_ready(gsink_model *m, int layer, gsink_site site, bool grad)
{
    if (layer < 0 || layer >= m->cfg.n_layers) return GSINK_OK; /* the caller reports the range */
    if (grad) {
        if (gsink__site_recomputed(site, true) && m->have_backward && !m->discard_site_grads)
            return swiglu_grads_ready(m, layer);
        return GSINK_OK;
    }
    if (gsink__site_discarded(m, site))
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED,
                           "the activations of site \"%s\" are not kept per layer by this model "
                           "(GSINK_MODEL_DISCARD_SITE_ACTIVATIONS)", site_names[site]);
    if (gsink__site_recomputed(site, false) && m->have_forward) return site_ready(m, layer, site);
    return GSINK_OK;
}

static gsink_status copy_site(gsink_model *m, int layer, gsink_site site, float *out, size_t count, bool grad)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!out) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "output buffer is NULL");
    if ((int)site < 0 || site >= GSINK_SITE_COUNT)
        return gsink__fail(m->errmsg, GSINK_ERR_UNKNOWN_SITE, "unknown site id %d", (int)site);
    if (layer < 0 || layer >= m->cfg.n_layers)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE, "layer %d outside [0, %d)", layer, m->cfg.n_layers);
    if (!m->have_forward) return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER, "no forward pass has run");
    if (grad && m->discard_site_grads)
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED, "site gradients are not kept by this model (GSINK_MODEL_DISCARD_SITE_GRADS)");
    if (grad && !m->have_backward)
        return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER, "gradients need gsink_backward after the last forward");
    size_t n = (size_t)m->B * m->T * gsink__site_width(m, site);
    if (count < n)
        return gsink__fail(m->errmsg, GSINK_ERR_BUFFER_TOO_SMALL, "site '%s' needs %zu floats, buffer has %zu",
                           site_names[site], n, count);
    gsink_status st = gsink__site_ready(m, layer, site, grad);
    if (st) return st;
    TRY(m, BE(m)->download(m->be, out, gsink__site_ptr(m, layer, site, grad), n * sizeof(float)), "download");
    return GSINK_OK;
}

gsink_status gsink_get_activation(gsink_model *m, int layer, gsink_site site, float *out, size_t count)
{
    return copy_site(m, layer, site, out, count, false);
}

gsink_status gsink_get_gradient(gsink_model *m, int layer, gsink_site site, float *out, size_t count)
{
    return copy_site(m, layer, site, out, count, true);
}

gsink_status gsink_set_diag_options(gsink_model *m, const gsink_diag_options *o)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    if (!o) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "model or options is NULL");
    gsink__clear(m->errmsg);
    if (o->size < sizeof(gsink_diag_options))
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "diag options size %zu too small (call gsink_diag_options_init)", o->size);
    if (!(o->sink_eps >= 0.0f && o->sink_eps <= 1.0f))
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "sink_eps %g must be in [0, 1]", o->sink_eps);
    if (o->sink_window < 1 || o->rgs_window < 1 || o->sink_position < 0)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_RANGE, "sink_window and rgs_window must be >= 1, sink_position >= 0");
    if (o->batch_agg != GSINK_AGG_SUM_THEN_NORM && o->batch_agg != GSINK_AGG_PER_SEQUENCE)
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "unknown batch aggregation %d", o->batch_agg);
    m->diag = *o;
    m->diag.size = sizeof m->diag;
    return GSINK_OK;
}

gsink_status gsink_get_diag_options(const gsink_model *m, gsink_diag_options *o)
{
    if (!m || !o) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model or options is NULL");
    GSINK_USE(m, "model");
    if (!gsink__copy_sized(o, o->size, &m->diag, sizeof m->diag))
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "opts->size is not set (use gsink_diag_options_init)");
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* Activation storage                                                        */
/* ------------------------------------------------------------------------ */

typedef struct carver {
    char *base;
    size_t off;
    bool overflow;
} carver;

static void *take(carver *c, size_t n, size_t elem)
{
    size_t bytes;
    if (!gsink__mul_size(n, elem, &bytes) || bytes > SIZE_MAX - c->off - 64) {
        c->overflow = true;
        return NULL;
    }
    size_t o = c->off;
    c->off += (bytes + 63) & ~(size_t)63;
    return c->base ? (void *)(c->base + o) : NULL;
}

static void layout_acts(gsink_model *m, size_t N, carver *c)
{
    const gsink_config *cf = &m->cfg;
    size_t d = cf->d_model, qd = (size_t)cf->n_heads * cf->d_head, kd = (size_t)cf->n_kv_heads * cf->d_head;
    size_t Nd, Nq, Nk, NH, NV;
    bool ok = gsink__mul_size(N, d, &Nd) && gsink__mul_size(N, qd, &Nq) && gsink__mul_size(N, kd, &Nk) &&
              gsink__mul_size(N, (size_t)cf->n_heads, &NH) && gsink__mul_size(N, (size_t)cf->vocab_size, &NV);
    if (!ok) {
        c->overflow = true;
        return;
    }
    m->tokens_dev = take(c, N, sizeof(int32_t));
    m->targets_dev = take(c, N, sizeof(int32_t));
    /* Without kept site gradients the backward only needs the gradients at two
     * adjacent layer boundaries at a time. */
    const bool share = m->discard_site_grads;
    /* V-scale off: v_scaled is v (same width, identity forward and backward),
     * so both share storage; backward-only: the forward is still the
     * identity, the activations share storage. The forward and backward skip
     * the V-scale step when the buffers are one. */
    const bool alias_v = m->vs.mode != GSINK_VSCALE_FULL && m->vs.n_scale_heads == cf->n_kv_heads;
    const bool alias_dv = alias_v && m->vs.mode == GSINK_VSCALE_OFF;
    for (int l = 0; l <= cf->n_layers; l++) {
        m->resid[l] = take(c, Nd, 4);
        m->dresid[l] = share && l >= 2 ? m->dresid[l - 2] : take(c, Nd, 4);
    }
    for (int l = 0; l < cf->n_layers; l++) {
        gsink_layer_acts *a = &m->layers[l];
        memset(a, 0, sizeof *a);
        for (int st = 0; st < GSINK_SITE_COUNT; st++) {
            if (st == GSINK_SITE_RESID_IN || st == GSINK_SITE_RESID_OUT) continue; /* residual stream */
            if (st == GSINK_SITE_V_SCALED && alias_v) { /* after GSINK_SITE_V in the enum */
                a->site[st] = a->site[GSINK_SITE_V];
                a->dsite[st] = alias_dv ? a->dsite[GSINK_SITE_V] : share && l > 0 ? m->layers[0].dsite[st] : take(c, Nk, 4);
                continue;
            }
            size_t n;
            if (!gsink__mul_size(N, (size_t)gsink__site_width(m, (gsink_site)st), &n)) {
                c->overflow = true;
                return;
            }
            /* GSINK_MODEL_DISCARD_SITE_ACTIVATIONS: one set for all layers; so are
             * the recomputed sites in every model (site_ready) */
            bool one = gsink__site_discarded(m, (gsink_site)st) || gsink__site_recomputed((gsink_site)st, false);
            a->site[st] = l > 0 && one ? m->layers[0].site[st] : take(c, n, 4);
            bool gone = share || gsink__site_recomputed((gsink_site)st, true); /* swiglu_grads_ready */
            if (st != GSINK_SITE_ATTN_OUT && st != GSINK_SITE_MLP_OUT)
                a->dsite[st] = gone && l > 0 ? m->layers[0].dsite[st] : take(c, n, 4);
        }
        a->dsite[GSINK_SITE_ATTN_OUT] = a->dsite[GSINK_SITE_RESID_MID]; /* h_mid = h + r_attn */
        a->dsite[GSINK_SITE_MLP_OUT] = m->dresid[l + 1];                /* h_out = h_mid + r_mlp */
        a->rstd_attn = take(c, N, 4);
        a->rstd_mlp = take(c, N, 4);
        if (cf->qk_norm) { /* optional steps' inputs (see gsink_layer_acts) */
            a->q_raw = take(c, Nq, 4);
            a->k_raw = take(c, Nk, 4);
            a->rstd_q = take(c, NH, 4);
            a->rstd_k = take(c, N * (size_t)cf->n_kv_heads, 4);
        }
        if (cf->sandwich_norm) {
            a->o_raw = take(c, Nd, 4);
            a->mlp_raw = take(c, Nd, 4);
            a->rstd_post_attn = take(c, N, 4);
            a->rstd_post_mlp = take(c, N, 4);
        }
        a->lse = take(c, NH, 4);
        a->col_mass = take(c, NH, 4);
        a->col_sq = take(c, NH, 4);
        a->col_win = take(c, NH, 4);
    }
    m->gain_snap = take(c, (size_t)cf->n_layers * 2 * d, 4);
    m->final_out = take(c, Nd, 4);
    m->dfinal_out = take(c, Nd, 4);
    m->rstd_final = take(c, N, 4);
    m->logits = take(c, NV, 4);
    /* xent_bwd runs in place (CPU and CUDA kernels read each element of a
     * row before writing it, and rows are independent); see logits_consumed */
    m->dlogits = m->logits;
    size_t ns = Nq > Nk ? Nq : Nk;
    m->scratch = take(c, ns > Nd ? ns : Nd, 4);
    m->scratch2 = cf->qk_norm ? take(c, ns, 4) : NULL;
    m->ones = cf->qkv_bias ? take(c, N, 4) : NULL;
    m->stats_sum = take(c, NH, 4 * 3); /* (3, H, T) with T <= N */
}

static gsink_status ensure_acts(gsink_model *m, int B, int T)
{
    size_t N = (size_t)B * T;
    size_t LHT = (size_t)m->cfg.n_layers * m->cfg.n_heads;
    if (m->act_mem && N <= m->cap_tokens && m->hstats.mass) {
        /* re-carve for the current N so that (B, T, .) strides are dense */
        carver c = {m->act_mem, 0, false};
        layout_acts(m, N, &c);
        goto stats;
    }
    free_acts(m);
    carver sizing = {NULL, 0, false};
    layout_acts(m, N, &sizing);
    if (sizing.overflow)
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "activation storage for batch %d x seq %d overflows", B, T);
    gsink_status st = BE(m)->alloc(m->be, sizing.off, &m->act_mem);
    if (st)
        return gsink__fail(m->errmsg, st, "cannot allocate %zu MiB of activation storage for batch %d x seq %d: %s",
                           sizing.off >> 20, B, T, m->be->err);
    m->cap_tokens = N;
    m->act_bytes = sizing.off;
    {
        carver c = {m->act_mem, 0, false};
        layout_acts(m, N, &c);
    }
stats:;
    if (m->ones) {
        float *h = malloc(N * sizeof(float));
        gsink_status ust = h ? GSINK_OK : GSINK_ERR_OUT_OF_MEMORY;
        for (size_t i = 0; h && i < N; i++) h[i] = 1.0f;
        if (!ust) ust = BE(m)->upload(m->be, m->ones, h, N * sizeof(float));
        free(h);
        if (ust) {
            free_acts(m);
            return gsink__fail(m->errmsg, ust, "cannot fill the bias ones vector");
        }
    }
    size_t need = LHT * (size_t)T;
    free(m->hstats.mass);
    free(m->hstats.sq);
    free(m->hstats.win);
    m->hstats.mass = malloc(need * sizeof(float));
    m->hstats.sq = malloc(need * sizeof(float));
    m->hstats.win = malloc(need * sizeof(float));
    if (!m->hstats.mass || !m->hstats.sq || !m->hstats.win) {
        free_acts(m);
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate attention statistics");
    }
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* Forward                                                                   */
/* ------------------------------------------------------------------------ */

static float vscale_c0(const gsink_model *m)
{
    return (float)m->cfg.d_model * (float)m->cfg.d_head * m->vs.sigma * m->vs.sigma;
}

/* Attention shape of the last forward; the sink window is the one that
 * forward recorded (hstats.window), wherever the statistics are summed. */
static gsink_attn_shape attn_shape(const gsink_model *m)
{
    const gsink_config *c = &m->cfg;
    return (gsink_attn_shape){m->B, m->T, c->n_heads, c->n_kv_heads, m->vs.n_scale_heads, c->d_head,
                              m->hstats.window, 0.0f, c->sliding_window};
}

/* Batch mean of the (B, H, T) statistics of one layer into host (H, T): summed
 * over the batch on the backend (b in order), so only (H, T) per statistic
 * crosses to the host. */
static gsink_status reduce_stats(gsink_model *m, int l)
{
    int B = m->B, T = m->T, H = m->cfg.n_heads;
    size_t HT = (size_t)H * T;
    float *dev[3] = {m->layers[l].col_mass, m->layers[l].col_sq, m->layers[l].col_win};
    float *dst[3] = {m->hstats.mass + l * HT, m->hstats.sq + l * HT, m->hstats.win + l * HT};
    const float inv = 1.0f / (float)B;
    for (int s = 0; s < 3; s++) {
        float *sum = m->stats_sum + (size_t)s * HT;
        TRY(m, BE(m)->batch_sum(m->be, sum, dev[s], B, HT), "sum stats");
        TRY(m, BE(m)->download(m->be, dst[s], sum, HT * sizeof(float)), "download stats");
        for (size_t i = 0; i < HT; i++) dst[s][i] *= inv;
    }
    return GSINK_OK;
}

/* Moves the device column statistics of every layer into hstats. */
static gsink_status reduce_all_stats(gsink_model *m)
{
    gsink_status st = GSINK_OK;
    for (int l = 0; !st && l < m->cfg.n_layers; l++) st = reduce_stats(m, l);
    if (!st) m->stats_ready = true;
    return st;
}

gsink_status gsink__attn_stats(gsink_model *m)
{
    if (m->stats_ready) return GSINK_OK;
    if (!m->have_forward) return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER, "no forward pass has run");
    if (m->stats_on_backend) return reduce_all_stats(m); /* summed by the backward */
    gsink_attn_shape sh = attn_shape(m);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        gsink_layer_acts *a = &m->layers[l];
        gsink_attn_stats stats = {a->col_mass, a->col_sq, a->col_win};
        TRY(m, BE(m)->attention_stats(m->be, &sh, a->site[GSINK_SITE_Q], a->site[GSINK_SITE_K], a->lse, stats),
            "attention statistics");
    }
    return reduce_all_stats(m);
}

/* The model's RoPE (rotated dims, pairing, frequencies) on x(B, T, heads, d_head). */
gsink_status gsink__rope(gsink_model *m, float *x, int B, int heads, int inverse)
{
    const gsink_config *c = &m->cfg;
    return BE(m)->rope(m->be, x, B, m->T, heads, c->d_head, gsink__rope_dims(c), c->rope_interleaved, m->rope_freq,
                       m->rope_scale, inverse);
}

static gsink_status layer_forward(gsink_model *m, int l)
{
    const gsink_config *c = &m->cfg;
    const gsink_backend_iface *f = BE(m);
    gsink_backend *be = m->be;
    gsink_layer_params *w = &m->p.layers[l];
    gsink_layer_acts *a = &m->layers[l];
    float **s = a->site;
    int N = m->B * m->T, d = c->d_model, qd = c->n_heads * c->d_head, kd = c->n_kv_heads * c->d_head;
    int ff = c->d_ff;

    /* the norms read their gains from gain_snap, where a recomputation finds them (site_ready) */
    float *gain = m->gain_snap + (size_t)l * 2 * d;
    TRY(m, f->copy(be, gain, w->attn_norm, (size_t)d * sizeof(float)), "copy");
    TRY(m, f->copy(be, gain + d, w->mlp_norm, (size_t)d * sizeof(float)), "copy");
    TRY(m, f->rmsnorm_fwd(be, s[GSINK_SITE_ATTN_NORM_OUT], a->rstd_attn, m->resid[l], gain, N, d, c->rms_eps), "rmsnorm");
    m->held[GSINK_SITE_ATTN_NORM_OUT] = l;
    const float *x = s[GSINK_SITE_ATTN_NORM_OUT];
    /* with qk_norm the projections land in q_raw / k_raw, the norms write the q / k sites */
    float *q = c->qk_norm ? a->q_raw : s[GSINK_SITE_Q], *k = c->qk_norm ? a->k_raw : s[GSINK_SITE_K];
    TRY(m, f->gemm_w(be, 0, 1, N, qd, d, 1.0f, x, d, w->wq, m->wdtype, d, 0.0f, q, qd), "gemm q");
    TRY(m, f->gemm_w(be, 0, 1, N, kd, d, 1.0f, x, d, w->wk, m->wdtype, d, 0.0f, k, kd), "gemm k");
    TRY(m, f->gemm_w(be, 0, 1, N, kd, d, 1.0f, x, d, w->wv, m->wdtype, d, 0.0f, s[GSINK_SITE_V], kd), "gemm v");
    if (c->qkv_bias) { /* optional step: q, k, v += bias (ones(N,1) x b(1,n) by GEMM) */
        TRY(m, f->gemm(be, 0, 0, N, qd, 1, 1.0f, m->ones, 1, w->bq, qd, 1.0f, q, qd), "bias q");
        TRY(m, f->gemm(be, 0, 0, N, kd, 1, 1.0f, m->ones, 1, w->bk, kd, 1.0f, k, kd), "bias k");
        TRY(m, f->gemm(be, 0, 0, N, kd, 1, 1.0f, m->ones, 1, w->bv, kd, 1.0f, s[GSINK_SITE_V], kd), "bias v");
    }
    if (c->qk_norm) { /* optional step: RMSNorm over each head's d_head values (rows of d_head) */
        TRY(m, f->rmsnorm_fwd(be, s[GSINK_SITE_Q], a->rstd_q, q, w->q_norm, N * c->n_heads, c->d_head, c->rms_eps), "q_norm");
        TRY(m, f->rmsnorm_fwd(be, s[GSINK_SITE_K], a->rstd_k, k, w->k_norm, N * c->n_kv_heads, c->d_head, c->rms_eps), "k_norm");
    }
    TRY(m, gsink__rope(m, s[GSINK_SITE_Q], m->B, c->n_heads, 0), "rope q");
    TRY(m, gsink__rope(m, s[GSINK_SITE_K], m->B, c->n_kv_heads, 0), "rope k");
    if (s[GSINK_SITE_V_SCALED] != s[GSINK_SITE_V]) /* else the identity in place (layout_acts) */
        TRY(m, f->vscale_fwd(be, s[GSINK_SITE_V_SCALED], s[GSINK_SITE_V], m->vs.theta + (size_t)l * c->n_heads, N,
                             c->n_kv_heads, m->vs.n_scale_heads, c->d_head, vscale_c0(m), m->vs.mode), "vscale");
    gsink_attn_shape sh = attn_shape(m);
    gsink_attn_stats stats = {a->col_mass, a->col_sq, a->col_win}, none = {NULL, NULL, NULL};
    TRY(m, f->attention_fwd(be, &sh, s[GSINK_SITE_Z], a->lse, s[GSINK_SITE_Q], s[GSINK_SITE_K], s[GSINK_SITE_V_SCALED],
                            m->defer_stats ? none : stats), "attention");
    if (!m->defer_stats) {
        gsink_status st = reduce_stats(m, l);
        if (st) return st;
    }
    /* with sandwich_norm, attn_out is the post-norm output: the tensor added to the residual */
    float *o = c->sandwich_norm ? a->o_raw : s[GSINK_SITE_ATTN_OUT];
    TRY(m, f->gemm_w(be, 0, 1, N, d, qd, 1.0f, s[GSINK_SITE_Z], qd, w->wo, m->wdtype, qd, 0.0f, o, d), "gemm o");
    if (c->sandwich_norm)
        TRY(m, f->rmsnorm_fwd(be, s[GSINK_SITE_ATTN_OUT], a->rstd_post_attn, o, w->post_attn_norm, N, d, c->rms_eps), "post-attention norm");
    TRY(m, f->add(be, s[GSINK_SITE_RESID_MID], m->resid[l], s[GSINK_SITE_ATTN_OUT], (size_t)N * d), "add");
    TRY(m, f->rmsnorm_fwd(be, s[GSINK_SITE_MLP_NORM_OUT], a->rstd_mlp, s[GSINK_SITE_RESID_MID], gain + d, N, d, c->rms_eps), "rmsnorm");
    m->held[GSINK_SITE_MLP_NORM_OUT] = l;
    x = s[GSINK_SITE_MLP_NORM_OUT];
    TRY(m, f->gemm_w(be, 0, 1, N, ff, d, 1.0f, x, d, w->wgate, m->wdtype, d, 0.0f, s[GSINK_SITE_MLP_PRE], ff), "gemm gate");
    TRY(m, f->gemm_w(be, 0, 1, N, ff, d, 1.0f, x, d, w->wup, m->wdtype, d, 0.0f, s[GSINK_SITE_MLP_UP], ff), "gemm up");
    TRY(m, f->swiglu_fwd(be, s[GSINK_SITE_MLP_POST], s[GSINK_SITE_MLP_PRE], s[GSINK_SITE_MLP_UP], (size_t)N * ff), "swiglu");
    m->held[GSINK_SITE_MLP_POST] = l;
    float *r = c->sandwich_norm ? a->mlp_raw : s[GSINK_SITE_MLP_OUT];
    TRY(m, f->gemm_w(be, 0, 1, N, d, ff, 1.0f, s[GSINK_SITE_MLP_POST], ff, w->wdown, m->wdtype, ff, 0.0f, r, d), "gemm down");
    if (c->sandwich_norm)
        TRY(m, f->rmsnorm_fwd(be, s[GSINK_SITE_MLP_OUT], a->rstd_post_mlp, r, w->post_mlp_norm, N, d, c->rms_eps), "post-MLP norm");
    TRY(m, f->add(be, m->resid[l + 1], s[GSINK_SITE_RESID_MID], s[GSINK_SITE_MLP_OUT], (size_t)N * d), "add");
    return GSINK_OK;
}

static gsink_status check_ids(gsink_model *m, const int32_t *ids, size_t n, bool targets)
{
    int32_t V = m->cfg.vocab_size;
    for (size_t i = 0; i < n; i++) {
        int32_t t = ids[i];
        if (t >= V || (!targets && t < 0))
            return gsink__fail(m->errmsg, GSINK_ERR_TOKEN_OUT_OF_RANGE, "%s[%zu] = %d is outside [%d, %d)",
                               targets ? "targets" : "tokens", i, t, targets ? -1 : 0, V);
    }
    return GSINK_OK;
}

static gsink_status forward_impl(gsink_model *m, const int32_t *tokens, const int32_t *targets, int batch,
                                 int seq_len, float *loss, gsink__layer_hook hook, void *user);

gsink_status gsink_forward(gsink_model *m, const int32_t *tokens, const int32_t *targets, int batch,
                           int seq_len, float *loss)
{
    return forward_impl(m, tokens, targets, batch, seq_len, loss, NULL, NULL);
}

gsink_status gsink__forward_hooked(gsink_model *m, const int32_t *tokens, const int32_t *targets, int batch,
                                   int seq_len, float *loss, gsink__layer_hook hook, void *user)
{
    return forward_impl(m, tokens, targets, batch, seq_len, loss, hook, user);
}

/* logits = final_out W_head^T: the forward's product, and the one that
 * brings the logits back after a backward wrote their gradients over them. */
static gsink_status lm_head(gsink_model *m)
{
    const gsink_config *c = &m->cfg;
    return BE(m)->gemm_w(m->be, 0, 1, m->B * m->T, c->vocab_size, c->d_model, 1.0f, m->final_out, c->d_model,
                         m->p.lm_head, m->wdtype, c->d_model, 0.0f, m->logits, c->vocab_size);
}

/* Makes m->logits hold the last forward's logits again after a backward
 * overwrote them: the same product on the same inputs (final_out is kept and
 * the weights are the forward's), so the values are bitwise those of the
 * forward. `what` names the caller for the message. */
static gsink_status restore_logits(gsink_model *m, const char *what)
{
    if (!m->logits_consumed) return GSINK_OK;
    if (m->logits_version != m->weights_version)
        return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER,
                           "%s needs the logits of the last forward: the backward wrote the logit gradients over "
                           "them and the weights changed since (optimizer step), so they cannot be recomputed; "
                           "run a new forward (or read the logits before gsink_backward)", what);
    TRY(m, lm_head(m), "lm head");
    m->logits_consumed = false;
    return GSINK_OK;
}

static gsink_status forward_impl(gsink_model *m, const int32_t *tokens, const int32_t *targets, int batch,
                                 int seq_len, float *loss, gsink__layer_hook hook, void *user)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!tokens) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "tokens is NULL");
    if (batch < 1) return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "batch = %d must be >= 1", batch);
    if (seq_len < 1) return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "seq_len = %d must be >= 1", seq_len);
    if (seq_len > m->cfg.max_seq_len)
        return gsink__fail(m->errmsg, GSINK_ERR_SEQ_TOO_LONG, "seq_len = %d exceeds max_seq_len = %d", seq_len, m->cfg.max_seq_len);
    if ((int64_t)batch * seq_len > (1 << 28))
        return gsink__fail(m->errmsg, GSINK_ERR_OUT_OF_MEMORY, "batch x seq_len = %lld tokens is too large", (long long)batch * seq_len);
    size_t N = (size_t)batch * seq_len;
    gsink_status st = check_ids(m, tokens, N, false);
    if (!st && targets) st = check_ids(m, targets, N, true);
    if (st) return st;

    m->have_forward = m->have_backward = m->stats_ready = m->stats_on_backend = false;
    m->logits_consumed = false;
    forget_recomputed(m);
    st = ensure_acts(m, batch, seq_len);
    if (st) return st;
    m->B = batch;
    m->T = seq_len;
    const gsink_config *c = &m->cfg;
    const gsink_backend_iface *f = BE(m);
    int32_t *neg = NULL;
    st = f->upload(m->be, m->tokens_dev, tokens, N * sizeof(int32_t));
    if (!st) {
        if (targets) {
            st = f->upload(m->be, m->targets_dev, targets, N * sizeof(int32_t));
        } else if ((neg = malloc(N * sizeof(int32_t)))) {
            for (size_t i = 0; i < N; i++) neg[i] = -1;
            st = f->upload(m->be, m->targets_dev, neg, N * sizeof(int32_t));
            free(neg);
        } else {
            st = GSINK_ERR_OUT_OF_MEMORY;
        }
    }
    if (st) return gsink__be_check(m, st, "upload tokens");
    m->hstats.window = m->diag.sink_window;
    st = gsink__be_check(m, f->embedding_fwd_w(m->be, m->resid[0], m->tokens_dev, m->p.embed, m->wdtype, (int)N, c->d_model), "embedding");
    for (int l = 0; !st && l < c->n_layers; l++) {
        st = layer_forward(m, l);
        if (!st && hook) st = hook(m, l, user);
    }
    if (st) return st;
    TRY(m, f->rmsnorm_fwd(m->be, m->final_out, m->rstd_final, m->resid[c->n_layers], m->p.final_norm, (int)N, c->d_model, c->rms_eps), "final norm");
    TRY(m, lm_head(m), "lm head");
    m->have_targets = targets != NULL;
    m->n_targets = 0;
    m->last_loss = NAN;
    if (targets) {
        double sum;
        int64_t cnt;
        TRY(m, f->xent_fwd(m->be, &sum, &cnt, m->logits, m->targets_dev, (int)N, c->vocab_size), "cross-entropy");
        m->n_targets = cnt;
        m->last_loss = cnt > 0 ? (float)(sum / cnt) : 0.0f;
        if (loss) *loss = m->last_loss;
    }
    m->logits_version = m->weights_version;
    m->have_forward = true;
    m->stats_ready = !m->defer_stats;
    return GSINK_OK;
}

gsink_status gsink_last_shape(const gsink_model *m, int *batch, int *seq_len)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    if (batch) *batch = m->have_forward ? m->B : 0;
    if (seq_len) *seq_len = m->have_forward ? m->T : 0;
    if (!m->have_forward) return gsink__fail(NULL, GSINK_ERR_CALL_ORDER, "no forward pass has run");
    return GSINK_OK;
}

gsink_status gsink_get_logits(gsink_model *m, float *out, size_t count)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!out) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "output buffer is NULL");
    if (!m->have_forward) return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER, "no forward pass has run");
    size_t n = (size_t)m->B * m->T * m->cfg.vocab_size;
    if (count < n) return gsink__fail(m->errmsg, GSINK_ERR_BUFFER_TOO_SMALL, "logits need %zu floats, buffer has %zu", n, count);
    gsink_status st = restore_logits(m, "gsink_get_logits");
    if (st) return st;
    TRY(m, BE(m)->download(m->be, out, m->logits, n * sizeof(float)), "download logits");
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* Backward                                                                  */
/* ------------------------------------------------------------------------ */

static gsink_status layer_backward(gsink_model *m, int l)
{
    const gsink_config *c = &m->cfg;
    const gsink_backend_iface *f = BE(m);
    gsink_backend *be = m->be;
    gsink_layer_params *w = &m->p.layers[l], *gw = &m->g.layers[l];
    gsink_layer_acts *a = &m->layers[l];
    float **s = a->site, **ds = a->dsite;
    int N = m->B * m->T, d = c->d_model, qd = c->n_heads * c->d_head, kd = c->n_kv_heads * c->d_head;
    int ff = c->d_ff;
    size_t Nd = (size_t)N * d;
    /* GSINK_MODEL_ANALYSIS: activation gradients only. Every weight-gradient
     * step below is guarded by pg; the gw views are NULL then, and the norm
     * backwards get a NULL dgain. The activation gradients do not depend on
     * any of the skipped steps, so they stay bitwise equal. */
    const bool pg = !m->analysis && !m->no_param_grads;

    /* MLP branch: dL/d mlp_out == dresid[l+1] */
    const float *dout = m->dresid[l + 1];
    if (c->sandwich_norm) { /* optional step: back through post_mlp_layernorm to W_down's output */
        TRY(m, f->rmsnorm_bwd(be, m->scratch, pg ? gw->post_mlp_norm : NULL, dout, a->mlp_raw, w->post_mlp_norm, a->rstd_post_mlp, N, d, 0), "post-MLP norm");
        dout = m->scratch;
    }
    TRY(m, f->gemm_w(be, 0, 0, N, ff, d, 1.0f, dout, d, w->wdown, m->wdtype, ff, 0.0f, ds[GSINK_SITE_MLP_POST], ff), "gemm");
    if (pg) {
        gsink_status st = site_ready(m, l, GSINK_SITE_MLP_POST);
        if (st) return st;
        TRY(m, f->gemm(be, 1, 0, d, ff, N, 1.0f, dout, d, s[GSINK_SITE_MLP_POST], ff, 1.0f, gw->wdown, ff), "gemm");
    }
    TRY(m, f->swiglu_bwd(be, ds[GSINK_SITE_MLP_PRE], ds[GSINK_SITE_MLP_UP], ds[GSINK_SITE_MLP_POST], s[GSINK_SITE_MLP_PRE], s[GSINK_SITE_MLP_UP], (size_t)N * ff), "swiglu");
    m->held_grad = l;
    TRY(m, f->gemm_w(be, 0, 0, N, d, ff, 1.0f, ds[GSINK_SITE_MLP_PRE], ff, w->wgate, m->wdtype, d, 0.0f, ds[GSINK_SITE_MLP_NORM_OUT], d), "gemm");
    TRY(m, f->gemm_w(be, 0, 0, N, d, ff, 1.0f, ds[GSINK_SITE_MLP_UP], ff, w->wup, m->wdtype, d, 1.0f, ds[GSINK_SITE_MLP_NORM_OUT], d), "gemm");
    if (pg) {
        gsink_status st = site_ready(m, l, GSINK_SITE_MLP_NORM_OUT);
        if (st) return st;
        TRY(m, f->gemm(be, 1, 0, ff, d, N, 1.0f, ds[GSINK_SITE_MLP_PRE], ff, s[GSINK_SITE_MLP_NORM_OUT], d, 1.0f, gw->wgate, d), "gemm");
    }
    if (pg)
        TRY(m, f->gemm(be, 1, 0, ff, d, N, 1.0f, ds[GSINK_SITE_MLP_UP], ff, s[GSINK_SITE_MLP_NORM_OUT], d, 1.0f, gw->wup, d), "gemm");
    TRY(m, f->copy(be, ds[GSINK_SITE_RESID_MID], m->dresid[l + 1], Nd * sizeof(float)), "copy");
    TRY(m, f->rmsnorm_bwd(be, ds[GSINK_SITE_RESID_MID], pg ? gw->mlp_norm : NULL, ds[GSINK_SITE_MLP_NORM_OUT], s[GSINK_SITE_RESID_MID], w->mlp_norm, a->rstd_mlp, N, d, 1), "rmsnorm");

    /* Attention branch: dL/d attn_out == dL/d resid_mid */
    const float *dattn = ds[GSINK_SITE_RESID_MID], *dor = dattn;
    if (c->sandwich_norm) { /* optional step: back through post_self_attn_layernorm */
        TRY(m, f->rmsnorm_bwd(be, m->scratch, pg ? gw->post_attn_norm : NULL, dattn, a->o_raw, w->post_attn_norm, a->rstd_post_attn, N, d, 0), "post-attention norm");
        dor = m->scratch;
    }
    TRY(m, f->gemm_w(be, 0, 0, N, qd, d, 1.0f, dor, d, w->wo, m->wdtype, qd, 0.0f, ds[GSINK_SITE_Z], qd), "gemm");
    if (pg)
        TRY(m, f->gemm(be, 1, 0, d, qd, N, 1.0f, dor, d, s[GSINK_SITE_Z], qd, 1.0f, gw->wo, qd), "gemm");
    gsink_attn_shape sh = attn_shape(m);
    /* Deferred statistics come from the probabilities this pass recomputes. */
    gsink_attn_stats stats = {NULL, NULL, NULL};
    if (m->defer_stats && !m->stats_ready && !m->stats_on_backend)
        stats = (gsink_attn_stats){a->col_mass, a->col_sq, a->col_win};
    TRY(m, f->attention_bwd(be, &sh, ds[GSINK_SITE_Q], ds[GSINK_SITE_K], ds[GSINK_SITE_V_SCALED], ds[GSINK_SITE_Z],
                            s[GSINK_SITE_Q], s[GSINK_SITE_K], s[GSINK_SITE_V_SCALED], s[GSINK_SITE_Z], a->lse, stats), "attention");
    int learn = pg && m->vs.mode == GSINK_VSCALE_FULL && m->vs.learnable;
    if (ds[GSINK_SITE_V_SCALED] != ds[GSINK_SITE_V])
        TRY(m, f->vscale_bwd(be, ds[GSINK_SITE_V], learn ? m->vs.dtheta + (size_t)l * c->n_heads : NULL, ds[GSINK_SITE_V_SCALED],
                             s[GSINK_SITE_V], m->vs.theta + (size_t)l * c->n_heads, N, c->n_kv_heads, m->vs.n_scale_heads,
                             c->d_head, vscale_c0(m), m->vs.mode), "vscale");
    if (pg) { /* the weight gradients of q, k, v read the norm's output */
        gsink_status st = site_ready(m, l, GSINK_SITE_ATTN_NORM_OUT);
        if (st) return st;
    }
    const float *x = s[GSINK_SITE_ATTN_NORM_OUT];
    float *dx = ds[GSINK_SITE_ATTN_NORM_OUT];
    /* q and k sites hold post-RoPE values; their projections need pre-RoPE gradients. */
    /* with qk_norm, back through k_norm / q_norm (rows of d_head) into scratch2 */
    float *gq = c->qk_norm ? m->scratch2 : m->scratch;
    TRY(m, f->copy(be, m->scratch, ds[GSINK_SITE_Q], (size_t)N * qd * sizeof(float)), "copy");
    TRY(m, gsink__rope(m, m->scratch, m->B, c->n_heads, 1), "rope");
    if (c->qk_norm)
        TRY(m, f->rmsnorm_bwd(be, gq, pg ? gw->q_norm : NULL, m->scratch, a->q_raw, w->q_norm, a->rstd_q, N * c->n_heads, c->d_head, 0), "q_norm");
    TRY(m, f->gemm_w(be, 0, 0, N, d, qd, 1.0f, gq, qd, w->wq, m->wdtype, d, 0.0f, dx, d), "gemm");
    if (pg)
        TRY(m, f->gemm(be, 1, 0, qd, d, N, 1.0f, gq, qd, x, d, 1.0f, gw->wq, d), "gemm");
    if (pg && c->qkv_bias) /* optional step: dbias += column sums (ones(1,N) x dq) */
        TRY(m, f->gemm(be, 1, 0, 1, qd, N, 1.0f, m->ones, 1, gq, qd, 1.0f, gw->bq, qd), "bias q");
    TRY(m, f->copy(be, m->scratch, ds[GSINK_SITE_K], (size_t)N * kd * sizeof(float)), "copy");
    TRY(m, gsink__rope(m, m->scratch, m->B, c->n_kv_heads, 1), "rope");
    if (c->qk_norm)
        TRY(m, f->rmsnorm_bwd(be, gq, pg ? gw->k_norm : NULL, m->scratch, a->k_raw, w->k_norm, a->rstd_k, N * c->n_kv_heads, c->d_head, 0), "k_norm");
    TRY(m, f->gemm_w(be, 0, 0, N, d, kd, 1.0f, gq, kd, w->wk, m->wdtype, d, 1.0f, dx, d), "gemm");
    if (pg)
        TRY(m, f->gemm(be, 1, 0, kd, d, N, 1.0f, gq, kd, x, d, 1.0f, gw->wk, d), "gemm");
    if (pg && c->qkv_bias)
        TRY(m, f->gemm(be, 1, 0, 1, kd, N, 1.0f, m->ones, 1, gq, kd, 1.0f, gw->bk, kd), "bias k");
    TRY(m, f->gemm_w(be, 0, 0, N, d, kd, 1.0f, ds[GSINK_SITE_V], kd, w->wv, m->wdtype, d, 1.0f, dx, d), "gemm");
    if (pg)
        TRY(m, f->gemm(be, 1, 0, kd, d, N, 1.0f, ds[GSINK_SITE_V], kd, x, d, 1.0f, gw->wv, d), "gemm");
    if (pg && c->qkv_bias)
        TRY(m, f->gemm(be, 1, 0, 1, kd, N, 1.0f, m->ones, 1, ds[GSINK_SITE_V], kd, 1.0f, gw->bv, kd), "bias v");
    TRY(m, f->copy(be, m->dresid[l], dattn, Nd * sizeof(float)), "copy");
    TRY(m, f->rmsnorm_bwd(be, m->dresid[l], pg ? gw->attn_norm : NULL, dx, m->resid[l], w->attn_norm, a->rstd_attn, N, d, 1), "rmsnorm");
    return GSINK_OK;
}

gsink_status gsink_zero_grad(gsink_model *m)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (m->analysis)
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED,
                           "this model keeps no parameter gradients to zero (GSINK_MODEL_ANALYSIS)");
    TRY(m, BE(m)->zero(m->be, m->grad_mem, m->n_param_floats * sizeof(float)), "zero");
    TRY(m, BE(m)->zero(m->be, m->vs.dtheta, (size_t)m->cfg.n_layers * m->cfg.n_heads * sizeof(float)), "zero");
    return GSINK_OK;
}

/* The backward of the last forward: xent scale per target token, an optional
 * hook after each layer (its site gradients are complete then, also when the
 * layers share them), parameter gradients unless pgrads is false (then they
 * are neither zeroed nor touched). The caller checked the call order. */
static gsink_status backward_impl(gsink_model *m, unsigned flags, float scale, bool pgrads,
                                  gsink__layer_hook hook, void *user)
{
    const gsink_config *c = &m->cfg;
    const gsink_backend_iface *f = BE(m);
    int N = m->B * m->T;
    const bool pg = pgrads && !m->analysis;
    /* first, so that a refusal leaves the accumulated gradients as they are */
    gsink_status rst = restore_logits(m, "another gsink_backward");
    if (rst) return rst;
    if (pg && !(flags & GSINK_BACKWARD_ACCUMULATE)) {
        gsink_status st = gsink_zero_grad(m);
        if (st) return st;
    }
    m->have_backward = false;
    m->logits_consumed = true;
    TRY(m, f->xent_bwd(m->be, m->dlogits, m->logits, m->targets_dev, N, c->vocab_size, scale), "cross-entropy");
    TRY(m, f->gemm_w(m->be, 0, 0, N, c->d_model, c->vocab_size, 1.0f, m->dlogits, c->vocab_size, m->p.lm_head, m->wdtype, c->d_model, 0.0f, m->dfinal_out, c->d_model), "gemm");
    if (pg)
        TRY(m, f->gemm(m->be, 1, 0, c->vocab_size, c->d_model, N, 1.0f, m->dlogits, c->vocab_size, m->final_out, c->d_model, 1.0f, m->g.lm_head, c->d_model), "gemm");
    TRY(m, f->rmsnorm_bwd(m->be, m->dresid[c->n_layers], pg ? m->g.final_norm : NULL, m->dfinal_out, m->resid[c->n_layers], m->p.final_norm, m->rstd_final, N, c->d_model, 0), "rmsnorm");
    m->no_param_grads = !pg;
    for (int l = c->n_layers - 1; l >= 0; l--) {
        gsink_status st = layer_backward(m, l);
        if (!st && hook) st = hook(m, l, user);
        if (st) {
            m->no_param_grads = false;
            return st;
        }
    }
    m->no_param_grads = false;
    if (pg)
        TRY(m, f->embedding_bwd(m->be, m->g.embed, m->tokens_dev, m->dresid[0], N, c->d_model), "embedding");
    /* Reduced into hstats on the first read only (gsink__attn_stats). */
    if (m->defer_stats && !m->stats_ready) m->stats_on_backend = true;
    m->have_backward = true;
    return GSINK_OK;
}

gsink_status gsink__backward_hooked(gsink_model *m, float scale, gsink__layer_hook hook, void *user)
{
    if (!m->have_forward || !m->have_targets || m->n_targets == 0)
        return gsink__fail(m->errmsg, GSINK_ERR_NO_TARGETS, "backward needs a forward pass with targets");
    return backward_impl(m, 0, scale, false, hook, user);
}

gsink_status gsink_backward(gsink_model *m, unsigned flags)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (flags & ~GSINK_BACKWARD_ACCUMULATE)
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "unknown backward flags 0x%x", flags);
    if ((flags & GSINK_BACKWARD_ACCUMULATE) && m->analysis)
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED,
                           "GSINK_BACKWARD_ACCUMULATE adds to parameter gradients, which this model does not compute (GSINK_MODEL_ANALYSIS)");
    if (!m->have_forward) return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER, "backward needs a forward pass first");
    if (!m->have_targets) return gsink__fail(m->errmsg, GSINK_ERR_NO_TARGETS, "backward needs a forward pass with targets");
    if (m->n_targets == 0) return gsink__fail(m->errmsg, GSINK_ERR_NO_TARGETS, "every target of the last forward is ignored (< 0)");
    return backward_impl(m, flags, 1.0f / (float)m->n_targets, true, NULL, NULL);
}

/* ------------------------------------------------------------------------ */
/* V-scale                                                                   */
/* ------------------------------------------------------------------------ */

gsink_status gsink_vscale_enable(gsink_model *m, const gsink_vscale_options *o)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!o) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "options is NULL");
    if (o->size < sizeof(gsink_vscale_options))
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "vscale options size %zu too small (call gsink_vscale_options_init)", o->size);
    if (o->mode != GSINK_VSCALE_OFF && o->mode != GSINK_VSCALE_FULL && o->mode != GSINK_VSCALE_BACKWARD_ONLY)
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "unknown V-scale mode %d", o->mode);
    if (!(o->sigma > 0.0f) || !isfinite(o->sigma))
        return gsink__fail(m->errmsg, GSINK_ERR_INVALID_ARGUMENT, "V-scale sigma = %g must be a positive finite number", o->sigma);
    int heads = o->mode != GSINK_VSCALE_OFF && o->per_query_head ? m->cfg.n_heads : m->cfg.n_kv_heads;
    /* v_scaled changes width, or starts or stops sharing v's storage
     * (layout_acts): storage is rebuilt at the next forward. */
    if (heads != m->vs.n_scale_heads || o->mode != m->vs.mode) free_acts(m);
    if (heads != m->vs.n_scale_heads) {
        size_t th = (size_t)m->cfg.n_layers * m->cfg.n_heads * sizeof(float);
        TRY(m, BE(m)->zero(m->be, m->vs.theta, th), "zero theta");
        TRY(m, BE(m)->zero(m->be, m->vs.dtheta, th), "zero theta");
    }
    m->vs.n_scale_heads = heads;
    m->vs.mode = o->mode;
    m->vs.sigma = o->sigma;
    m->vs.learnable = o->mode == GSINK_VSCALE_FULL && o->learnable_theta;
    m->vs.per_query_head = o->mode != GSINK_VSCALE_OFF && o->per_query_head;
    m->have_forward = m->have_backward = false; /* stored results no longer match */
    return GSINK_OK;
}

gsink_status gsink_vscale_get(const gsink_model *m, gsink_vscale_options *o)
{
    if (!m || !o) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model or options is NULL");
    GSINK_USE(m, "model");
    gsink_vscale_options v;
    gsink_vscale_options_init(&v);
    v.mode = m->vs.mode;
    v.sigma = m->vs.sigma;
    v.learnable_theta = m->vs.learnable;
    v.per_query_head = m->vs.per_query_head;
    if (!gsink__copy_sized(o, o->size, &v, sizeof v))
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "opts->size is not set (use gsink_vscale_options_init)");
    return GSINK_OK;
}

gsink_status gsink_vscale_theta_count(const gsink_model *m, size_t *count)
{
    if (!m || !count) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model or count is NULL");
    GSINK_USE(m, "model");
    *count = n_theta_entries(m) * (size_t)m->vs.n_scale_heads;
    return GSINK_OK;
}

static gsink_status theta_io(gsink_model *m, float *buf, size_t count, param_op op)
{
    if (!m) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(m, "model");
    gsink__clear(m->errmsg);
    if (!buf) return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "buffer is NULL");
    if (op == P_GRAD && m->analysis)
        return gsink__fail(m->errmsg, GSINK_ERR_UNSUPPORTED,
                           "theta gradients are not computed by this model (GSINK_MODEL_ANALYSIS)");
    if (m->vs.mode == GSINK_VSCALE_OFF)
        return gsink__fail(m->errmsg, GSINK_ERR_CALL_ORDER, "V-scale is off: enable it with gsink_vscale_enable first");
    size_t L = (size_t)m->cfg.n_layers, S = (size_t)m->vs.n_scale_heads;
    if (count != L * S)
        return gsink__fail(m->errmsg, count < L * S ? GSINK_ERR_BUFFER_TOO_SMALL : GSINK_ERR_SHAPE_MISMATCH,
                           "theta has %zu values (layers x scale heads), got count %zu", L * S, count);
    if (op == P_SET)
        for (size_t i = 0; i < count; i++)
            if (!isfinite(buf[i])) return gsink__fail(m->errmsg, GSINK_ERR_NON_FINITE, "theta[%zu] is not finite", i);
    float *dev = op == P_GRAD ? m->vs.dtheta : m->vs.theta;
    for (size_t l = 0; l < L; l++) {
        float *row = dev + l * (size_t)m->cfg.n_heads;
        gsink_status st = op == P_SET ? BE(m)->upload(m->be, row, buf + l * S, S * sizeof(float))
                                      : BE(m)->download(m->be, buf + l * S, row, S * sizeof(float));
        if (st) return gsink__be_check(m, st, "theta copy");
    }
    if (op == P_SET) m->have_forward = m->have_backward = false;
    return GSINK_OK;
}

gsink_status gsink_vscale_get_theta(gsink_model *m, float *out, size_t count) { return theta_io(m, out, count, P_GET); }
gsink_status gsink_vscale_set_theta(gsink_model *m, const float *data, size_t count) { return theta_io(m, (float *)data, count, P_SET); }
gsink_status gsink_vscale_get_theta_grad(gsink_model *m, float *out, size_t count) { return theta_io(m, out, count, P_GRAD); }
