/*
 * ops.c - the attention and V-scale operations on caller-owned buffers
 * (gsink_ops_*): the model's backend kernels behind a small handle, with the
 * argument checks the model does for its own tensors.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct gsink_ops {
    gsink__owner owner; /* first, as in every handle (GSINK_USE) */
    gsink_backend *be;
    int device_kind;
    void *stream; /* the caller's stream (CUDA) or NULL: own stream, synchronous calls */
    char errmsg[GSINK_MSG_SIZE];
};

/* ---- options and handle --------------------------------------------------- */

void gsink_ops_options_init_size(gsink_ops_options *out, size_t size)
{
    gsink_ops_options d;
    memset(&d, 0, sizeof d);
    d.size = sizeof d;
    d.device = GSINK_DEVICE_CPU;
    gsink__copy_sized(out, size, &d, sizeof d);
}

void gsink_attn_desc_init_size(gsink_attn_desc *out, size_t size)
{
    gsink_attn_desc d;
    memset(&d, 0, sizeof d);
    d.size = sizeof d;
    d.softmax_scale = 0.0f;
    d.sink_window = 64;
    d.layout = GSINK_ATTN_LAYOUT_BTHD;
    gsink__copy_sized(out, size, &d, sizeof d);
}

void gsink_vscale_desc_init_size(gsink_vscale_desc *out, size_t size)
{
    gsink_vscale_desc d;
    memset(&d, 0, sizeof d);
    d.size = sizeof d;
    d.mode = GSINK_VSCALE_FULL;
    d.sigma = 0.02f;
    gsink__copy_sized(out, size, &d, sizeof d);
}

gsink_status gsink_ops_create(const gsink_ops_options *opts, gsink_ops **out)
{
    if (!out) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    *out = NULL;
    gsink_ops_options o;
    gsink_ops_options_init(&o);
    if (opts) {
        if (opts->size < sizeof(size_t) + 3 * sizeof(int32_t))
            return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT,
                               "ops options size %zu is too small (call gsink_ops_options_init)",
                               opts->size);
        memcpy(&o, opts, opts->size < sizeof o ? opts->size : sizeof o);
        o.size = sizeof o;
    }
    if (o.precision != GSINK_PRECISION_FP32 && o.precision != GSINK_PRECISION_TF32 &&
        o.precision != GSINK_PRECISION_BF16)
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "unknown precision %d", (int)o.precision);
    if (o.precision != GSINK_PRECISION_FP32 && o.device != GSINK_DEVICE_CUDA)
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "%s precision needs a CUDA device; the CPU computes in exact fp32",
                           o.precision == GSINK_PRECISION_TF32 ? "TF32" : "BF16");
    if (o.n_threads < 0 || o.n_threads > gsink__max_threads())
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT,
                           "thread count %d must be in [0, %d] (0 = one per CPU; see gsink_max_threads)",
                           (int)o.n_threads, gsink__max_threads());
    gsink_backend *be = NULL;
    gsink_status st;
    if (o.device == GSINK_DEVICE_CPU) {
        if (o.device_index != 0)
            return gsink__fail(NULL, GSINK_ERR_NO_DEVICE, "there is only CPU device 0 (asked for %d)",
                               (int)o.device_index);
        st = gsink_cpu_backend_create(o.n_threads, &be);
    } else if (o.device == GSINK_DEVICE_CUDA) {
        st = gsink_cuda_backend_create(o.device_index, &be);
    } else {
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "unknown device kind %d", (int)o.device);
    }
    if (st) {
        char msg[GSINK_MSG_SIZE];
        snprintf(msg, sizeof msg, "%s", gsink_last_error());
        return gsink__fail(NULL, st, "cannot create the backend: %s", msg[0] ? msg : gsink_status_str(st));
    }
    /* gsink_precision and the module's GSINK_CUDA_MATH_* share their values */
    if (o.precision != GSINK_PRECISION_FP32 && (st = gsink__cuda_set_math(be, o.precision))) {
        char msg[sizeof be->err];
        snprintf(msg, sizeof msg, "%s", be->err);
        be->iface->destroy(be);
        return gsink__fail(NULL, st, "cannot select the precision: %s", msg);
    }
    gsink_ops *ops = calloc(1, sizeof *ops);
    if (!ops) {
        be->iface->destroy(be);
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate the ops handle");
    }
    ops->be = be;
    ops->device_kind = o.device;
    *out = ops;
    return GSINK_OK;
}

void gsink_ops_free(gsink_ops *ops)
{
    if (!ops) return;
    gsink__use u; /* never released: the memory goes away below */
    if (!gsink__use_acquire(&u, &ops->owner)) {
        gsink__busy("ops handle");
        return;
    }
    if (ops->be) ops->be->iface->destroy(ops->be); /* synchronises; a borrowed stream stays */
    free(ops);
}

const char *gsink_ops_errmsg(const gsink_ops *ops)
{
    if (!ops) return "ops is NULL";
    if (gsink__used_elsewhere(&ops->owner)) return GSINK__BUSY_MSG("ops handle");
    return ops->errmsg;
}

gsink_backend *gsink__ops_backend(gsink_ops *ops) { return ops ? ops->be : NULL; }

static gsink_status be_fail(gsink_ops *ops, gsink_status st, const char *what)
{
    if (st == GSINK_OK) return st;
    return gsink__fail(ops->errmsg, st, "%s: %s", what,
                       ops->be->err[0] ? ops->be->err : gsink_status_str(st));
}

gsink_status gsink_ops_set_stream(gsink_ops *ops, void *stream)
{
    if (!ops) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "ops is NULL");
    GSINK_USE(ops, "ops handle");
    gsink__clear(ops->errmsg);
    const gsink_backend_iface *f = ops->be->iface;
    if (!f->set_stream) {
        if (stream)
            return gsink__fail(ops->errmsg, GSINK_ERR_INVALID_ARGUMENT,
                               "the %s backend has no streams: only a NULL stream is accepted", f->name);
        return GSINK_OK;
    }
    ops->be->err[0] = '\0';
    gsink_status st = be_fail(ops, f->set_stream(ops->be, stream), "set_stream");
    if (!st) ops->stream = stream;
    return st;
}

/* After the ops of a call: on the handle's own stream, wait for them (the
 * call is synchronous); on a caller's stream they stay queued. */
static gsink_status finish(gsink_ops *ops, gsink_status st, const char *what)
{
    if (st) return be_fail(ops, st, what);
    if (!ops->stream && ops->be->iface->synchronize)
        return be_fail(ops, ops->be->iface->synchronize(ops->be), what);
    return GSINK_OK;
}

/* ---- attention ------------------------------------------------------------ */

static gsink_status attn_check(gsink_ops *ops, const gsink_attn_desc *d, gsink_attn_shape *sh)
{
    char *e = ops->errmsg;
    if (!d) return gsink__fail(e, GSINK_ERR_NULL_ARGUMENT, "attention descriptor is NULL");
    if (d->size != sizeof(gsink_attn_desc))
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT,
                           "attention descriptor size %zu is not sizeof(gsink_attn_desc) = %zu "
                           "(call gsink_attn_desc_init)", d->size, sizeof(gsink_attn_desc));
    if (d->layout != GSINK_ATTN_LAYOUT_BTHD)
        return gsink__fail(e, GSINK_ERR_UNSUPPORTED,
                           "attention layout %d is not supported: q/k/v/out must be contiguous "
                           "(batch, seq, heads, d_head) (GSINK_ATTN_LAYOUT_BTHD)", (int)d->layout);
    const int B = d->batch, T = d->seq, H = d->n_heads, KV = d->n_kv_heads, NV = d->n_v_heads,
              dh = d->d_head;
    if (B < 1 || T < 1 || H < 1 || KV < 1 || NV < 1 || dh < 1)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT,
                           "attention shape batch=%d seq=%d n_heads=%d n_kv_heads=%d n_v_heads=%d "
                           "d_head=%d: every field must be >= 1", B, T, H, KV, NV, dh);
    if (H % KV)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT,
                           "n_heads %d is not a multiple of n_kv_heads %d", H, KV);
    if (NV != KV && NV != H)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT,
                           "n_v_heads %d must be n_kv_heads (%d) or n_heads (%d)", NV, KV, H);
    if (dh > 256)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT, "d_head %d is above 256", dh);
    if (!(isfinite(d->softmax_scale) && d->softmax_scale >= 0.0f))
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT,
                           "softmax_scale %g must be finite and >= 0 (0 = 1/sqrt(d_head))",
                           (double)d->softmax_scale);
    if (d->sink_window < 1)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT, "sink_window %d must be >= 1",
                           (int)d->sink_window);
    /* Every tensor's element count must fit the kernels' int/size_t index
     * arithmetic: (B*T) rows of H*dh, and B*H*T statistics. */
    size_t rows, n;
    int hmax = H > NV ? H : NV;
    if (!gsink__mul_size((size_t)B, (size_t)T, &rows) || rows > INT32_MAX ||
        !gsink__mul_size(rows, (size_t)hmax * (size_t)dh, &n) || (size_t)hmax * (size_t)dh > INT32_MAX)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT, "attention shape is too large");
    *sh = (gsink_attn_shape){B, T, H, KV, NV, dh, d->sink_window, d->softmax_scale, 0 /* no window */};
    return GSINK_OK;
}

#define NEED(p, name) \
    if (!(p)) return gsink__fail(ops->errmsg, GSINK_ERR_NULL_ARGUMENT, name " is NULL")

gsink_status gsink_ops_attention_forward(gsink_ops *ops, const gsink_attn_desc *desc, const float *q,
                                         const float *k, const float *v, float *out, float *lse,
                                         float *col_mass, float *col_sq, float *col_win)
{
    if (!ops) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "ops is NULL");
    GSINK_USE(ops, "ops handle");
    gsink__clear(ops->errmsg);
    gsink_attn_shape sh;
    gsink_status st = attn_check(ops, desc, &sh);
    if (st) return st;
    NEED(q, "q");
    NEED(k, "k");
    NEED(v, "v");
    NEED(out, "out");
    NEED(lse, "lse");
    ops->be->err[0] = '\0';
    gsink_attn_stats stats = {col_mass, col_sq, col_win};
    return finish(ops, ops->be->iface->attention_fwd(ops->be, &sh, out, lse, q, k, v, stats),
                  "attention forward");
}

gsink_status gsink_ops_attention_backward(gsink_ops *ops, const gsink_attn_desc *desc,
                                          const float *q, const float *k, const float *v,
                                          const float *out, const float *lse, const float *dout,
                                          float *dq, float *dk, float *dv, float *col_mass,
                                          float *col_sq, float *col_win)
{
    if (!ops) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "ops is NULL");
    GSINK_USE(ops, "ops handle");
    gsink__clear(ops->errmsg);
    gsink_attn_shape sh;
    gsink_status st = attn_check(ops, desc, &sh);
    if (st) return st;
    NEED(q, "q");
    NEED(k, "k");
    NEED(v, "v");
    NEED(out, "out");
    NEED(lse, "lse");
    NEED(dout, "dout");
    NEED(dq, "dq");
    NEED(dk, "dk");
    NEED(dv, "dv");
    ops->be->err[0] = '\0';
    gsink_attn_stats stats = {col_mass, col_sq, col_win};
    return finish(ops,
                  ops->be->iface->attention_bwd(ops->be, &sh, dq, dk, dv, dout, q, k, v, out, lse, stats),
                  "attention backward");
}

gsink_status gsink_ops_attention_stats(gsink_ops *ops, const gsink_attn_desc *desc, const float *q,
                                       const float *k, const float *lse, float *col_mass,
                                       float *col_sq, float *col_win)
{
    if (!ops) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "ops is NULL");
    GSINK_USE(ops, "ops handle");
    gsink__clear(ops->errmsg);
    gsink_attn_shape sh;
    gsink_status st = attn_check(ops, desc, &sh);
    if (st) return st;
    NEED(q, "q");
    NEED(k, "k");
    NEED(lse, "lse");
    if (!col_mass && !col_sq && !col_win)
        return gsink__fail(ops->errmsg, GSINK_ERR_NULL_ARGUMENT,
                           "col_mass, col_sq and col_win are all NULL (nothing to compute)");
    ops->be->err[0] = '\0';
    gsink_attn_stats stats = {col_mass, col_sq, col_win};
    return finish(ops, ops->be->iface->attention_stats(ops->be, &sh, q, k, lse, stats),
                  "attention statistics");
}

/* ---- V-scale --------------------------------------------------------------- */

static gsink_status vscale_check(gsink_ops *ops, const gsink_vscale_desc *d, const float *theta,
                                 float *c0)
{
    char *e = ops->errmsg;
    if (!d) return gsink__fail(e, GSINK_ERR_NULL_ARGUMENT, "V-scale descriptor is NULL");
    if (d->size != sizeof(gsink_vscale_desc))
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT,
                           "V-scale descriptor size %zu is not sizeof(gsink_vscale_desc) = %zu "
                           "(call gsink_vscale_desc_init)", d->size, sizeof(gsink_vscale_desc));
    if (d->mode != GSINK_VSCALE_OFF && d->mode != GSINK_VSCALE_FULL &&
        d->mode != GSINK_VSCALE_BACKWARD_ONLY)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT, "unknown V-scale mode %d", (int)d->mode);
    if (d->n_rows < 1 || d->heads_in < 1 || d->heads_out < 1 || d->d_head < 1 || d->d_model < 1)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT,
                           "V-scale shape n_rows=%d heads_in=%d heads_out=%d d_head=%d d_model=%d: "
                           "every field must be >= 1", (int)d->n_rows, (int)d->heads_in,
                           (int)d->heads_out, (int)d->d_head, (int)d->d_model);
    if (d->heads_out % d->heads_in)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT,
                           "heads_out %d is not a multiple of heads_in %d", (int)d->heads_out,
                           (int)d->heads_in);
    size_t n;
    if (!gsink__mul_size((size_t)d->n_rows, (size_t)d->heads_out * (size_t)d->d_head, &n) ||
        (size_t)d->heads_out * (size_t)d->d_head > INT32_MAX)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT, "V-scale shape is too large");
    if (!(isfinite(d->sigma) && d->sigma > 0.0f))
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT, "sigma %g must be finite and > 0",
                           (double)d->sigma);
    if (!theta && d->mode != GSINK_VSCALE_OFF)
        return gsink__fail(e, GSINK_ERR_NULL_ARGUMENT, "theta is NULL (needed unless mode is OFF)");
    /* c0 as the model computes it (model.c, vscale_c0) */
    *c0 = (float)d->d_model * (float)d->d_head * d->sigma * d->sigma;
    if (!isfinite(*c0) || *c0 <= 0.0f)
        return gsink__fail(e, GSINK_ERR_INVALID_ARGUMENT,
                           "d_model * d_head * sigma^2 = %g is not a positive finite number", (double)*c0);
    return GSINK_OK;
}

gsink_status gsink_ops_vscale_forward(gsink_ops *ops, const gsink_vscale_desc *desc, const float *v,
                                      const float *theta, float *out)
{
    if (!ops) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "ops is NULL");
    GSINK_USE(ops, "ops handle");
    gsink__clear(ops->errmsg);
    float c0;
    gsink_status st = vscale_check(ops, desc, theta, &c0);
    if (st) return st;
    NEED(v, "v");
    NEED(out, "out");
    ops->be->err[0] = '\0';
    return finish(ops,
                  ops->be->iface->vscale_fwd(ops->be, out, v, theta, desc->n_rows, desc->heads_in,
                                             desc->heads_out, desc->d_head, c0, desc->mode),
                  "V-scale forward");
}

gsink_status gsink_ops_vscale_backward(gsink_ops *ops, const gsink_vscale_desc *desc, const float *v,
                                       const float *theta, const float *dout, float *dv,
                                       float *dtheta)
{
    if (!ops) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "ops is NULL");
    GSINK_USE(ops, "ops handle");
    gsink__clear(ops->errmsg);
    float c0;
    gsink_status st = vscale_check(ops, desc, theta, &c0);
    if (st) return st;
    NEED(v, "v");
    NEED(dout, "dout");
    NEED(dv, "dv");
    ops->be->err[0] = '\0';
    return finish(ops,
                  ops->be->iface->vscale_bwd(ops->be, dv, desc->mode == GSINK_VSCALE_FULL ? dtheta : NULL,
                                             dout, v, theta, desc->n_rows, desc->heads_in,
                                             desc->heads_out, desc->d_head, c0, desc->mode),
                  "V-scale backward");
}
