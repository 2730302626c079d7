/*
 * gsink.i - SWIG interface to libgsink over the public header only.
 *
 * Target language: Tcl 8.6 (`swig -tcl8`); the typemaps below are written
 * for Tcl. Conventions in Tcl:
 *   - A failing call raises a Tcl error whose message is the library's
 *     message and whose errorCode is {GSINK <code> <status text>}.
 *   - Output scalars are returned as the command's result (a list when
 *     there are several), e.g. `set loss [gsink_forward $m $tok $tgt 2 64]`.
 *   - Input arrays are Tcl lists; output arrays are returned as lists, and
 *     their length is passed where the C function takes a count.
 *   - Handles (gsink_model *, ...) are SWIG pointer strings; free them with
 *     gsink_model_free etc.
 */
%module gsink

%{
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "gsink.h"

/* Raises the Tcl error for a failed call: the library's message on this
 * thread, errorCode {GSINK code text}. */
/* Message of a failure detected by the wrapper itself (not the library). */
static _Thread_local char gsink_tcl_msg[256];

static void gsink_tcl_raise(Tcl_Interp *interp, gsink_status st)
{
    const char *msg = gsink_tcl_msg[0] ? gsink_tcl_msg : gsink_last_error();
    char code[16];
    if (!msg || !*msg) msg = gsink_status_str(st);
    snprintf(code, sizeof code, "%d", (int)st);
    Tcl_SetObjResult(interp, Tcl_ObjPrintf("gsink: %s: %s", gsink_status_str(st), msg));
    Tcl_SetErrorCode(interp, "GSINK", code, gsink_status_str(st), (char *)NULL);
    gsink_tcl_msg[0] = '\0';
}

static void gsink_tcl_usage(Tcl_Interp *interp, const char *msg)
{
    Tcl_SetObjResult(interp, Tcl_NewStringObj(msg, -1));
    Tcl_SetErrorCode(interp, "GSINK", "2", "invalid argument", (char *)NULL);
}

/* Reads a Tcl list of numbers into a new array (n may be 0). */
static int gsink_tcl_floats(Tcl_Interp *interp, Tcl_Obj *obj, float **out, size_t *n)
{
    Tcl_Size len; Tcl_Obj **items;
    if (Tcl_ListObjGetElements(interp, obj, &len, &items) != TCL_OK) return TCL_ERROR;
    *out = malloc(sizeof **out * (len ? (size_t)len : 1));
    if (!*out) { gsink_tcl_usage(interp, "gsink: out of memory"); return TCL_ERROR; }
    for (Tcl_Size i = 0; i < len; i++) {
        double d;
        if (Tcl_GetDoubleFromObj(interp, items[i], &d) != TCL_OK) { free(*out); *out = NULL; return TCL_ERROR; }
        (*out)[i] = (float)d;
    }
    *n = (size_t)len;
    return TCL_OK;
}

static int gsink_tcl_ints(Tcl_Interp *interp, Tcl_Obj *obj, int32_t **out, size_t *n)
{
    Tcl_Size len; Tcl_Obj **items;
    if (Tcl_ListObjGetElements(interp, obj, &len, &items) != TCL_OK) return TCL_ERROR;
    *out = malloc(sizeof **out * (len ? (size_t)len : 1));
    if (!*out) { gsink_tcl_usage(interp, "gsink: out of memory"); return TCL_ERROR; }
    for (Tcl_Size i = 0; i < len; i++) {
        Tcl_WideInt v;
        if (Tcl_GetWideIntFromObj(interp, items[i], &v) != TCL_OK) { free(*out); *out = NULL; return TCL_ERROR; }
        if (v < INT32_MIN || v > INT32_MAX) {
            free(*out); *out = NULL;
            gsink_tcl_usage(interp, "gsink: integer does not fit in int32");
            return TCL_ERROR;
        }
        (*out)[i] = (int32_t)v;
    }
    *n = (size_t)len;
    return TCL_OK;
}

/* Reads a non-negative count and allocates that many floats. */
static int gsink_tcl_alloc(Tcl_Interp *interp, Tcl_Obj *obj, float **out, size_t *n)
{
    Tcl_WideInt v;
    if (Tcl_GetWideIntFromObj(interp, obj, &v) != TCL_OK) return TCL_ERROR;
    if (v < 0 || (uint64_t)v > SIZE_MAX / sizeof(float) / 4) {
        gsink_tcl_usage(interp, "gsink: count out of range");
        return TCL_ERROR;
    }
    *out = calloc(v ? (size_t)v : 1, sizeof **out);
    if (!*out) { gsink_tcl_usage(interp, "gsink: out of memory"); return TCL_ERROR; }
    *n = (size_t)v;
    return TCL_OK;
}

static Tcl_Obj *gsink_tcl_list(const float *v, size_t n)
{
    Tcl_Obj *l = Tcl_NewListObj(0, NULL);
    for (size_t i = 0; i < n; i++) Tcl_ListObjAppendElement(NULL, l, Tcl_NewDoubleObj((double)v[i]));
    return l;
}

/* gsink_forward with the list lengths checked against batch*seq_len. */
/* The *_init and preset macros of gsink.h pass sizeof; Tcl gets commands of
 * the same names that do the same for the struct this module was built with. */
static void gsink_tcl_config_init(gsink_config *o) { gsink_config_init(o); }
static void gsink_tcl_model_options_init(gsink_model_options *o) { gsink_model_options_init(o); }
static void gsink_tcl_diag_options_init(gsink_diag_options *o) { gsink_diag_options_init(o); }
static void gsink_tcl_vscale_options_init(gsink_vscale_options *o) { gsink_vscale_options_init(o); }
static void gsink_tcl_optimizer_options_init(gsink_optimizer_options *o) { gsink_optimizer_options_init(o); }
static gsink_status gsink_tcl_config_preset(const char *name, gsink_config *o) { return gsink_config_preset(name, o); }

static gsink_status gsink_forward_checked(gsink_model *model, const int32_t *tokens, size_t n_tokens,
                                          const int32_t *targets, size_t n_targets, int batch,
                                          int seq_len, float *loss)
{
    *loss = 0.0f;
    if (batch > 0 && seq_len > 0) {
        size_t want = (size_t)batch * (size_t)seq_len;
        if (n_tokens != want || (targets && n_targets != want)) {
            snprintf(gsink_tcl_msg, sizeof gsink_tcl_msg,
                     "tokens has %zu entries and targets %zu but batch*seq_len = %zu", n_tokens,
                     n_targets, want);
            return GSINK_ERR_SHAPE_MISMATCH;
        }
    }
    return gsink_forward(model, tokens, targets, batch, seq_len, loss);
}

/* Owned outputs of the tokenizer wrappers. */
typedef struct { int32_t *v; size_t n; } gsink_tcl_ids;
typedef struct { char *s; size_t n; } gsink_tcl_str;

/* Encodes the whole text, sizing the id buffer with a first call. */
static gsink_status gsink_tokenizer_encode_all(gsink_tokenizer *tok, const char *text, size_t text_len,
                                               unsigned flags, gsink_tcl_ids *out)
{
    size_t need = 0;
    int32_t probe;
    gsink_status st = gsink_tokenizer_encode(tok, text, text_len, flags, &probe, 1, &need);
    if (st != GSINK_OK && st != GSINK_ERR_BUFFER_TOO_SMALL) return st;
    out->v = malloc(sizeof *out->v * (need ? need : 1));
    if (!out->v) { snprintf(gsink_tcl_msg, sizeof gsink_tcl_msg, "out of memory"); return GSINK_ERR_OUT_OF_MEMORY; }
    if (need <= 1 && st == GSINK_OK) { if (need) out->v[0] = probe; out->n = need; return GSINK_OK; }
    st = gsink_tokenizer_encode(tok, text, text_len, flags, out->v, need, &out->n);
    return st;
}

/* Decodes ids to a string, sizing the buffer with a first call. */
static gsink_status gsink_tokenizer_decode_all(gsink_tokenizer *tok, const int32_t *ids, size_t n_ids,
                                               gsink_tcl_str *out)
{
    size_t need = 0;
    char probe[1];
    gsink_status st = gsink_tokenizer_decode(tok, ids, n_ids, probe, sizeof probe, &need);
    if (st != GSINK_OK && st != GSINK_ERR_BUFFER_TOO_SMALL) return st;
    out->s = malloc(need + 1);
    if (!out->s) { snprintf(gsink_tcl_msg, sizeof gsink_tcl_msg, "out of memory"); return GSINK_ERR_OUT_OF_MEMORY; }
    out->s[0] = '\0';
    if (need == 0) return GSINK_OK;
    return gsink_tokenizer_decode(tok, ids, n_ids, out->s, need + 1, &out->n);
}

/* ---- embedding API: lists in, lists out ---------------------------------- */
static void gsink_tcl_attn_desc_init(gsink_attn_desc *d) { gsink_attn_desc_init(d); }
static void gsink_tcl_vscale_desc_init(gsink_vscale_desc *d) { gsink_vscale_desc_init(d); }
static void gsink_tcl_ops_options_init(gsink_ops_options *o) { gsink_ops_options_init(o); }

/* An output array owned by the wrapper, returned as a list. */
typedef struct { float *v; size_t n; } gsink_tcl_vec;

static gsink_status gsink_tcl_vec_alloc(gsink_tcl_vec *o, size_t n)
{
    o->v = calloc(n ? n : 1, sizeof *o->v);
    o->n = n;
    if (!o->v) {
        snprintf(gsink_tcl_msg, sizeof gsink_tcl_msg, "out of memory");
        return GSINK_ERR_OUT_OF_MEMORY;
    }
    return GSINK_OK;
}

static gsink_status gsink_tcl_len(size_t got, size_t want, const char *what)
{
    if (got == want) return GSINK_OK;
    snprintf(gsink_tcl_msg, sizeof gsink_tcl_msg, "%s has %zu values, the shape needs %zu", what, got, want);
    return GSINK_ERR_SHAPE_MISMATCH;
}

/* Product of positive dims, 0 when one is < 1 or it overflows (the library
 * then reports the bad shape itself). */
static size_t gsink_tcl_prod(int a, int b, int c, int d)
{
    int v[4] = {a, b, c, d};
    size_t n = 1;
    for (int i = 0; i < 4; i++) {
        if (v[i] < 1 || n > SIZE_MAX / 4 / (size_t)v[i]) return 0;
        n *= (size_t)v[i];
    }
    return n;
}

static int gsink_tcl_attn_sizes(const gsink_attn_desc *d, size_t *nq, size_t *nk, size_t *nv, size_t *nst)
{
    if (!d || d->size != sizeof *d) return 0;
    *nq = gsink_tcl_prod(d->batch, d->seq, d->n_heads, d->d_head);
    *nk = gsink_tcl_prod(d->batch, d->seq, d->n_kv_heads, d->d_head);
    *nv = gsink_tcl_prod(d->batch, d->seq, d->n_v_heads, d->d_head);
    *nst = gsink_tcl_prod(d->batch, d->n_heads, d->seq, 1);
    return *nq && *nk && *nv && *nst;
}

static gsink_status gsink_tcl_attention_forward(gsink_ops *ops, const gsink_attn_desc *d,
        const float *x0, size_t n0, const float *x1, size_t n1, const float *x2, size_t n2,
        gsink_tcl_vec *out, gsink_tcl_vec *lse, gsink_tcl_vec *mass, gsink_tcl_vec *sq, gsink_tcl_vec *win)
{
    size_t nq, nk, nv, nst;
    gsink_status st;
    /* The library checks the descriptor first: a bad one fails here with its
     * message, a good one with "q is NULL" (ignored). */
    st = gsink_ops_attention_forward(ops, d, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    if (st != GSINK_ERR_NULL_ARGUMENT || !gsink_tcl_attn_sizes(d, &nq, &nk, &nv, &nst))
        return st != GSINK_OK ? st : GSINK_ERR_NULL_ARGUMENT;
    if ((st = gsink_tcl_len(n0, nq, "q")) || (st = gsink_tcl_len(n1, nk, "k")) || (st = gsink_tcl_len(n2, nv, "v")))
        return st;
    if ((st = gsink_tcl_vec_alloc(out, nq)) || (st = gsink_tcl_vec_alloc(lse, nst)) ||
        (st = gsink_tcl_vec_alloc(mass, nst)) || (st = gsink_tcl_vec_alloc(sq, nst)) ||
        (st = gsink_tcl_vec_alloc(win, nst)))
        return st;
    return gsink_ops_attention_forward(ops, d, x0, x1, x2, out->v, lse->v, mass->v, sq->v, win->v);
}

static gsink_status gsink_tcl_attention_backward(gsink_ops *ops, const gsink_attn_desc *d,
        const float *x0, size_t n0, const float *x1, size_t n1, const float *x2, size_t n2,
        const float *x3, size_t n3, const float *x4, size_t n4, const float *x5, size_t n5,
        gsink_tcl_vec *dq, gsink_tcl_vec *dk, gsink_tcl_vec *dv)
{
    size_t nq, nk, nv, nst;
    gsink_status st;
    st = gsink_ops_attention_backward(ops, d, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                      NULL, NULL, NULL); /* descriptor check, as in the forward */
    if (st != GSINK_ERR_NULL_ARGUMENT || !gsink_tcl_attn_sizes(d, &nq, &nk, &nv, &nst))
        return st != GSINK_OK ? st : GSINK_ERR_NULL_ARGUMENT;
    if ((st = gsink_tcl_len(n0, nq, "q")) || (st = gsink_tcl_len(n1, nk, "k")) || (st = gsink_tcl_len(n2, nv, "v")) ||
        (st = gsink_tcl_len(n3, nq, "out")) || (st = gsink_tcl_len(n4, nst, "lse")) ||
        (st = gsink_tcl_len(n5, nq, "dout")))
        return st;
    if ((st = gsink_tcl_vec_alloc(dq, nq)) || (st = gsink_tcl_vec_alloc(dk, nk)) || (st = gsink_tcl_vec_alloc(dv, nv)))
        return st;
    return gsink_ops_attention_backward(ops, d, x0, x1, x2, x3, x4, x5, dq->v, dk->v, dv->v, NULL, NULL, NULL);
}

static int gsink_tcl_vscale_sizes(const gsink_vscale_desc *d, size_t *nin, size_t *nout)
{
    if (!d || d->size != sizeof *d) return 0;
    *nin = gsink_tcl_prod(d->n_rows, d->heads_in, d->d_head, 1);
    *nout = gsink_tcl_prod(d->n_rows, d->heads_out, d->d_head, 1);
    return *nin && *nout && d->heads_in > 0 && d->heads_out % d->heads_in == 0;
}

/* theta: heads_out values, or an empty list (NULL) for mode OFF. */
static gsink_status gsink_tcl_theta(const gsink_vscale_desc *d, const float *t, size_t n, const float **out)
{
    *out = n ? t : NULL;
    return n ? gsink_tcl_len(n, (size_t)d->heads_out, "theta") : GSINK_OK;
}

static gsink_status gsink_tcl_vscale_forward(gsink_ops *ops, const gsink_vscale_desc *d,
        const float *x0, size_t n0, const float *x1, size_t n1, gsink_tcl_vec *out)
{
    size_t nin, nout;
    const float *theta;
    gsink_status st;
    if (!gsink_tcl_vscale_sizes(d, &nin, &nout))
        return gsink_ops_vscale_forward(ops, d, NULL, NULL, NULL);
    if ((st = gsink_tcl_len(n0, nin, "v")) || (st = gsink_tcl_theta(d, x1, n1, &theta)) ||
        (st = gsink_tcl_vec_alloc(out, nout)))
        return st;
    return gsink_ops_vscale_forward(ops, d, x0, theta, out->v);
}

/* dtheta: the values to accumulate into ({} for none); returned updated. */
static gsink_status gsink_tcl_vscale_backward(gsink_ops *ops, const gsink_vscale_desc *d,
        const float *x0, size_t n0, const float *x1, size_t n1, const float *x2, size_t n2,
        const float *x3, size_t n3, gsink_tcl_vec *dv, gsink_tcl_vec *dtheta)
{
    size_t nin, nout;
    const float *theta;
    gsink_status st;
    if (!gsink_tcl_vscale_sizes(d, &nin, &nout))
        return gsink_ops_vscale_backward(ops, d, NULL, NULL, NULL, NULL, NULL);
    if ((st = gsink_tcl_len(n0, nin, "v")) || (st = gsink_tcl_theta(d, x1, n1, &theta)) ||
        (st = gsink_tcl_len(n2, nout, "dout")) || (n3 && (st = gsink_tcl_len(n3, (size_t)d->heads_out, "dtheta"))) ||
        (st = gsink_tcl_vec_alloc(dv, nin)) || (st = gsink_tcl_vec_alloc(dtheta, n3)))
        return st;
    if (n3) memcpy(dtheta->v, x3, n3 * sizeof(float));
    return gsink_ops_vscale_backward(ops, d, x0, theta, x2, dv->v, n3 ? dtheta->v : NULL);
}

static gsink_status gsink_tcl_metric_token_norms(const float *x0, size_t n0, int batch, int seq, int heads,
        int head_width, int head, int agg, gsink_tcl_vec *out)
{
    size_t n = gsink_tcl_prod(batch, seq, heads, head_width);
    gsink_status st;
    if (n && (st = gsink_tcl_len(n0, n, "x"))) return st;
    if ((st = gsink_tcl_vec_alloc(out, n ? (size_t)seq : 0))) return st; /* bad shape: the library says so */
    return gsink_metric_token_norms(x0, batch, seq, heads, head_width, head, agg, out->v, out->n);
}

static gsink_status gsink_tcl_metric_column_mean(const float *x0, size_t n0, int batch, int heads, int seq,
                                                 gsink_tcl_vec *out)
{
    size_t n = gsink_tcl_prod(batch, heads, seq, 1);
    gsink_status st;
    if (n && ((st = gsink_tcl_len(n0, n, "stat")) || (st = gsink_tcl_vec_alloc(out, n / (size_t)batch))))
        return st;
    return gsink_metric_column_mean(x0, batch, heads, seq, out->v, out->n);
}

static gsink_status gsink_tcl_metric_sink_scores(const float *x0, size_t n0, int batch, int heads, int seq,
                                                 int sink_window, int s, gsink_tcl_vec *out)
{
    size_t n = gsink_tcl_prod(batch, heads, seq, 1);
    gsink_status st;
    if (n && ((st = gsink_tcl_len(n0, n, "col_win")) || (st = gsink_tcl_vec_alloc(out, (size_t)heads))))
        return st;
    return gsink_metric_sink_scores(x0, batch, heads, seq, sink_window, s, out->v, out->n);
}

static gsink_status gsink_tcl_metric_sink_rate(const float *x0, size_t n0, int batch, int heads, int seq,
                                               int sink_window, int s, float eps, float *rate)
{
    size_t n = gsink_tcl_prod(batch, heads, seq, 1);
    gsink_status st;
    *rate = 0.0f;
    if (n && (st = gsink_tcl_len(n0, n, "col_win"))) return st;
    return gsink_metric_sink_rate(x0, batch, heads, seq, sink_window, s, eps, rate);
}

static gsink_status gsink_tcl_metric_gradient_sink_ratio(const float *x0, size_t n0, int s, int t_e, float *ratio)
{
    *ratio = 0.0f;
    return gsink_metric_gradient_sink_ratio(x0, n0, s, t_e, ratio);
}

static gsink_status gsink_tcl_metric_massive_activation_ratio(const float *x0, size_t n0, float *ratio)
{
    *ratio = 0.0f;
    return gsink_metric_massive_activation_ratio(x0, n0, ratio);
}

static gsink_status gsink_tcl_metric_branch_ratios(const float *x0, size_t n0, const float *x1, size_t n1,
        const float *x2, size_t n2, int batch, int seq, int width, int agg, gsink_tcl_vec *bloat,
        gsink_tcl_vec *change, gsink_tcl_vec *compress)
{
    size_t n = gsink_tcl_prod(batch, seq, width, 1);
    gsink_status st;
    if (n && ((st = gsink_tcl_len(n0, n, "grad_in")) || (st = gsink_tcl_len(n1, n, "grad_out")) ||
              (st = gsink_tcl_len(n2, n, "grad_normed")) || (st = gsink_tcl_vec_alloc(bloat, (size_t)seq)) ||
              (st = gsink_tcl_vec_alloc(change, (size_t)seq)) || (st = gsink_tcl_vec_alloc(compress, (size_t)seq))))
        return st;
    return gsink_metric_branch_ratios(x0, x1, x2, batch, seq, width, agg, bloat->v, change->v, compress->v, bloat->n);
}
%}

%include <stdint.i>

/* Tcl 8.6 headers lack Tcl_Size (added in 8.7/9). */
%begin %{
#include <tcl.h>
#ifndef TCL_SIZE_MAX
typedef int Tcl_Size;
#endif
%}

/* ---- status codes: errors become Tcl errors ----------------------------- */
%typemap(out) gsink_status {
    if ($1 != GSINK_OK) {
        gsink_tcl_raise(interp, $1);
        SWIG_fail;
    }
    Tcl_ResetResult(interp);
}
/* After the outputs are appended: a single output is returned as itself,
 * several as a list. */
%typemap(ret) gsink_status {
    {
        Tcl_Obj *res = Tcl_GetObjResult(interp);
        Tcl_Size nres = 0;
        Tcl_Obj *only = NULL;
        if (Tcl_ListObjLength(NULL, res, &nres) == TCL_OK && nres == 1
            && Tcl_ListObjIndex(NULL, res, 0, &only) == TCL_OK && only) {
            Tcl_IncrRefCount(only);
            Tcl_SetObjResult(interp, only);
            Tcl_DecrRefCount(only);
        }
    }
}

/* ---- handle outputs ------------------------------------------------------ */
%typemap(in, numinputs=0) gsink_model **out (gsink_model *tmp = NULL) { $1 = &tmp; }
%typemap(argout) gsink_model **out {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), SWIG_NewInstanceObj(tmp$argnum, $descriptor(gsink_model *), 0));
}
%typemap(in, numinputs=0) gsink_optimizer **out (gsink_optimizer *tmp = NULL) { $1 = &tmp; }
%typemap(argout) gsink_optimizer **out {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), SWIG_NewInstanceObj(tmp$argnum, $descriptor(gsink_optimizer *), 0));
}
%typemap(in, numinputs=0) gsink_tokenizer **out (gsink_tokenizer *tmp = NULL) { $1 = &tmp; }
%typemap(argout) gsink_tokenizer **out {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), SWIG_NewInstanceObj(tmp$argnum, $descriptor(gsink_tokenizer *), 0));
}

/* ---- scalar outputs ------------------------------------------------------ */
%define GSINK_OUT_SCALAR(TYPE, NAME, NEWOBJ)
%typemap(in, numinputs=0) TYPE *NAME (TYPE tmp = 0) { $1 = &tmp; }
%typemap(argout) TYPE *NAME {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), NEWOBJ);
}
%enddef
GSINK_OUT_SCALAR(float, loss, Tcl_NewDoubleObj((double)tmp$argnum))
GSINK_OUT_SCALAR(float, rate, Tcl_NewDoubleObj((double)tmp$argnum))
GSINK_OUT_SCALAR(float, ratio, Tcl_NewDoubleObj((double)tmp$argnum))
GSINK_OUT_SCALAR(float, grad_norm, Tcl_NewDoubleObj((double)tmp$argnum))
GSINK_OUT_SCALAR(int, count, Tcl_NewIntObj(tmp$argnum))
GSINK_OUT_SCALAR(int, batch, Tcl_NewIntObj(tmp$argnum))
GSINK_OUT_SCALAR(int, seq_len, Tcl_NewIntObj(tmp$argnum))
GSINK_OUT_SCALAR(int, heads, Tcl_NewIntObj(tmp$argnum))
GSINK_OUT_SCALAR(int, width, Tcl_NewIntObj(tmp$argnum))
GSINK_OUT_SCALAR(int, layer, Tcl_NewIntObj(tmp$argnum))
GSINK_OUT_SCALAR(int, ndim, Tcl_NewIntObj(tmp$argnum))
GSINK_OUT_SCALAR(int32_t, n, Tcl_NewIntObj((int)tmp$argnum))
GSINK_OUT_SCALAR(int32_t, bos, Tcl_NewIntObj((int)tmp$argnum))
GSINK_OUT_SCALAR(int32_t, eos, Tcl_NewIntObj((int)tmp$argnum))
GSINK_OUT_SCALAR(int32_t, id, Tcl_NewIntObj((int)tmp$argnum))
GSINK_OUT_SCALAR(size_t, count, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))
GSINK_OUT_SCALAR(size_t, numel, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))
GSINK_OUT_SCALAR(size_t, n_ids, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))
GSINK_OUT_SCALAR(gsink_site, site, Tcl_NewIntObj((int)tmp$argnum))
GSINK_OUT_SCALAR(uint64_t, bytes, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))
GSINK_OUT_SCALAR(uint64_t, peak_bytes, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))

/* param_info: name and dims. */
%typemap(in, numinputs=0) const char **name (const char *tmp = NULL) { $1 = ($1_ltype)&tmp; }
%typemap(argout) const char **name {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), Tcl_NewStringObj(tmp$argnum ? tmp$argnum : "", -1));
}
%typemap(in, numinputs=0) int64_t dims[2] (int64_t tmp[2] = {0, 0}) { $1 = tmp; }
%typemap(argout) int64_t dims[2] {
    Tcl_Obj *l = Tcl_NewListObj(0, NULL);
    Tcl_ListObjAppendElement(NULL, l, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum[0]));
    Tcl_ListObjAppendElement(NULL, l, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum[1]));
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), l);
}

/* report_json: a string freed with gsink_free. */
%typemap(in, numinputs=0) char **json (char *tmp = NULL) { $1 = &tmp; }
%typemap(argout) char **json {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), Tcl_NewStringObj(tmp$argnum ? tmp$argnum : "", -1));
}
%typemap(freearg) char **json { gsink_free(tmp$argnum); }

/* device_describe: a fixed buffer. */
%typemap(in, numinputs=0) (char *buf, size_t buf_size) (char tmp[512]) { tmp[0] = 0; $1 = tmp; $2 = sizeof tmp; }
%typemap(argout) (char *buf, size_t buf_size) {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), Tcl_NewStringObj(tmp$argnum, -1));
}

/* ---- input arrays: Tcl lists -------------------------------------------- */
%typemap(in) (const float *data, size_t count) (float *tmp = NULL, size_t n = 0) {
    if (gsink_tcl_floats(interp, $input, &tmp, &n) != TCL_OK) SWIG_fail;
    $1 = tmp; $2 = n;
}
%typemap(freearg) (const float *data, size_t count) { free(tmp$argnum); }

%typemap(in) (const int32_t *tokens, size_t n_tokens) (int32_t *tmp = NULL, size_t n = 0) {
    if (gsink_tcl_ints(interp, $input, &tmp, &n) != TCL_OK) SWIG_fail;
    $1 = tmp; $2 = n;
}
%typemap(freearg) (const int32_t *tokens, size_t n_tokens) { free(tmp$argnum); }
/* An empty list of targets means "no targets" (NULL). */
%typemap(in) (const int32_t *targets, size_t n_targets) (int32_t *tmp = NULL, size_t n = 0) {
    if (gsink_tcl_ints(interp, $input, &tmp, &n) != TCL_OK) SWIG_fail;
    $1 = n ? tmp : NULL; $2 = n;
}
%typemap(freearg) (const int32_t *targets, size_t n_targets) { free(tmp$argnum); }

%typemap(in) (const int32_t *ids, size_t n_ids) (int32_t *tmp = NULL, size_t n = 0) {
    if (gsink_tcl_ints(interp, $input, &tmp, &n) != TCL_OK) SWIG_fail;
    $1 = tmp; $2 = n;
}
%typemap(freearg) (const int32_t *ids, size_t n_ids) { free(tmp$argnum); }

%typemap(in) (const char *text, size_t text_len) (Tcl_Size len = 0) {
    $1 = Tcl_GetStringFromObj($input, &len);
    $2 = (size_t)len;
}

/* ---- output arrays: the Tcl argument is the count, the result a list ---- */
%typemap(in) (float *out, size_t count) (float *tmp = NULL, size_t n = 0) {
    if (gsink_tcl_alloc(interp, $input, &tmp, &n) != TCL_OK) SWIG_fail;
    $1 = tmp; $2 = n;
}
%typemap(argout) (float *out, size_t count) {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), gsink_tcl_list(tmp$argnum, n$argnum));
}
%typemap(freearg) (float *out, size_t count) { free(tmp$argnum); }

%define GSINK_OUT_ARRAYS2(A, B)
%typemap(in) (float *A, float *B, size_t count) (float *ta = NULL, float *tb = NULL, size_t n = 0) {
    if (gsink_tcl_alloc(interp, $input, &ta, &n) != TCL_OK) SWIG_fail;
    tb = calloc(n ? n : 1, sizeof *tb);
    if (!tb) { gsink_tcl_usage(interp, "gsink: out of memory"); SWIG_fail; }
    $1 = ta; $2 = tb; $3 = n;
}
%typemap(argout) (float *A, float *B, size_t count) {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), gsink_tcl_list(ta$argnum, n$argnum));
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), gsink_tcl_list(tb$argnum, n$argnum));
}
%typemap(freearg) (float *A, float *B, size_t count) { free(ta$argnum); free(tb$argnum); }
%enddef
GSINK_OUT_ARRAYS2(M, S)

%define GSINK_OUT_ARRAYS3(A, B, C)
%typemap(in) (float *A, float *B, float *C, size_t count) (float *ta = NULL, float *tb = NULL, float *tc = NULL, size_t n = 0) {
    if (gsink_tcl_alloc(interp, $input, &ta, &n) != TCL_OK) SWIG_fail;
    tb = calloc(n ? n : 1, sizeof *tb);
    tc = calloc(n ? n : 1, sizeof *tc);
    if (!tb || !tc) { gsink_tcl_usage(interp, "gsink: out of memory"); SWIG_fail; }
    $1 = ta; $2 = tb; $3 = tc; $4 = n;
}
%typemap(argout) (float *A, float *B, float *C, size_t count) {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), gsink_tcl_list(ta$argnum, n$argnum));
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), gsink_tcl_list(tb$argnum, n$argnum));
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), gsink_tcl_list(tc$argnum, n$argnum));
}
%typemap(freearg) (float *A, float *B, float *C, size_t count) { free(ta$argnum); free(tb$argnum); free(tc$argnum); }
%enddef
GSINK_OUT_ARRAYS3(bloat, change, compress)
GSINK_OUT_ARRAYS3(gq, gk, gv)

/* Tokenizer wrappers: ids and strings returned as Tcl values. */
%typemap(in, numinputs=0) gsink_tcl_ids *out (gsink_tcl_ids tmp = {NULL, 0}) { $1 = &tmp; }
%typemap(argout) gsink_tcl_ids *out {
    Tcl_Obj *l = Tcl_NewListObj(0, NULL);
    for (size_t i = 0; i < tmp$argnum.n; i++) Tcl_ListObjAppendElement(NULL, l, Tcl_NewIntObj(tmp$argnum.v[i]));
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), l);
}
%typemap(freearg) gsink_tcl_ids *out { free(tmp$argnum.v); }
%typemap(in, numinputs=0) gsink_tcl_str *out (gsink_tcl_str tmp = {NULL, 0}) { $1 = &tmp; }
%typemap(argout) gsink_tcl_str *out {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), Tcl_NewStringObj(tmp$argnum.s ? tmp$argnum.s : "", (Tcl_Size)tmp$argnum.n));
}
%typemap(freearg) gsink_tcl_str *out { free(tmp$argnum.s); }


/* ---- embedding API typemaps ---------------------------------------------- */
%typemap(in, numinputs=0) gsink_ops **out (gsink_ops *tmp = NULL) { $1 = &tmp; }
%typemap(argout) gsink_ops **out {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), SWIG_NewInstanceObj(tmp$argnum, $descriptor(gsink_ops *), 0));
}
%define GSINK_IN_LIST(X, N)
%typemap(in) (const float *X, size_t N) (float *tmp = NULL, size_t n = 0) {
    if (gsink_tcl_floats(interp, $input, &tmp, &n) != TCL_OK) SWIG_fail;
    $1 = tmp; $2 = n;
}
%typemap(freearg) (const float *X, size_t N) { free(tmp$argnum); }
%enddef
GSINK_IN_LIST(x0, n0)
GSINK_IN_LIST(x1, n1)
GSINK_IN_LIST(x2, n2)
GSINK_IN_LIST(x3, n3)
GSINK_IN_LIST(x4, n4)
GSINK_IN_LIST(x5, n5)
%typemap(in, numinputs=0) gsink_tcl_vec * (gsink_tcl_vec tmp = {NULL, 0}) { $1 = &tmp; }
%typemap(argout) gsink_tcl_vec * {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), gsink_tcl_list(tmp$argnum.v, tmp$argnum.n));
}
%typemap(freearg) gsink_tcl_vec * { free(tmp$argnum.v); }

/* ---- streaming analysis (gsink_analysis_*) ------------------------------- */
%{
#include <math.h>
#include <strings.h>
typedef struct { double *v; size_t n; } gsink_tcl_dvec;

static gsink_status gsink_tcl_analysis_add(gsink_analysis *a, const int32_t *tokens, size_t n_tokens,
                                           const int32_t *targets, size_t n_targets, int batch, int seq_len)
{
    if (batch > 0 && seq_len > 0) {
        size_t want = (size_t)batch * (size_t)seq_len;
        if (n_tokens != want || (targets && n_targets != want)) {
            snprintf(gsink_tcl_msg, sizeof gsink_tcl_msg,
                     "tokens has %zu entries and targets %zu but batch*seq_len = %zu", n_tokens, n_targets, want);
            return GSINK_ERR_SHAPE_MISMATCH;
        }
    }
    return gsink_analysis_add(a, tokens, targets, batch, seq_len);
}

static gsink_status gsink_tcl_analysis_gradient_norms(gsink_analysis *a, int layer, int site, int head, int agg,
                                                      gsink_tcl_vec *out)
{
    size_t len = 0;
    gsink_status st = gsink_analysis_gradient_norms(a, layer, (gsink_site)site, head, agg, NULL, 0, &len);
    if (st || (st = gsink_tcl_vec_alloc(out, len))) return st;
    return gsink_analysis_gradient_norms(a, layer, (gsink_site)site, head, agg, out->v, out->n, &len);
}

static gsink_status gsink_tcl_analysis_get_state(gsink_analysis *a, gsink_tcl_dvec *out)
{
    size_t n = 0;
    gsink_status st = gsink_analysis_state_size(a, &n);
    if (st) return st;
    if (!(out->v = malloc((n ? n : 1) * sizeof(double)))) {
        snprintf(gsink_tcl_msg, sizeof gsink_tcl_msg, "out of memory");
        return GSINK_ERR_OUT_OF_MEMORY;
    }
    out->n = n;
    return gsink_analysis_get_state(a, out->v, n);
}

/* progress: a Tcl command prefix called with {done total}; a true result
 * (or an error) stops the run. */
typedef struct { Tcl_Interp *interp; Tcl_Obj *cmd; } gsink_tcl_progress;

static int gsink_tcl_progress_cb(int64_t done, int64_t total, void *user)
{
    gsink_tcl_progress *p = user;
    Tcl_Obj *c = Tcl_DuplicateObj(p->cmd);
    Tcl_IncrRefCount(c);
    Tcl_ListObjAppendElement(NULL, c, Tcl_NewWideIntObj((Tcl_WideInt)done));
    Tcl_ListObjAppendElement(NULL, c, Tcl_NewWideIntObj((Tcl_WideInt)total));
    int rc = Tcl_EvalObjEx(p->interp, c, TCL_EVAL_GLOBAL), stop = 1;
    Tcl_DecrRefCount(c);
    if (rc == TCL_OK && Tcl_GetBooleanFromObj(NULL, Tcl_GetObjResult(p->interp), &stop) != TCL_OK) stop = 0;
    Tcl_ResetResult(p->interp);
    return stop;
}

static gsink_status gsink_tcl_analyze_sequences(Tcl_Interp *interp, gsink_model *model, const int32_t *tokens,
                                                size_t n_tokens, int n_seq, int seq_len, int micro_batch,
                                                const gsink_diag_options *opts, const char *progress,
                                                char **json)
{
    if (n_seq > 0 && seq_len > 0 && n_tokens != (size_t)n_seq * (size_t)seq_len) {
        snprintf(gsink_tcl_msg, sizeof gsink_tcl_msg, "tokens has %zu entries but n_seq*seq_len = %zu", n_tokens,
                 (size_t)n_seq * (size_t)seq_len);
        return GSINK_ERR_SHAPE_MISMATCH;
    }
    gsink_tcl_progress p = {interp, NULL};
    if (progress && *progress) {
        p.cmd = Tcl_NewStringObj(progress, -1);
        Tcl_IncrRefCount(p.cmd);
    }
    gsink_status st = gsink_analyze_sequences(model, tokens, n_seq, seq_len, micro_batch, opts,
                                              p.cmd ? gsink_tcl_progress_cb : NULL, &p, json);
    if (p.cmd) Tcl_DecrRefCount(p.cmd);
    return st;
}
%}

%typemap(in, numinputs=0) gsink_analysis **out (gsink_analysis *tmp = NULL) { $1 = &tmp; }
%typemap(argout) gsink_analysis **out {
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), SWIG_NewInstanceObj(tmp$argnum, $descriptor(gsink_analysis *), 0));
}
%typemap(in, numinputs=0) Tcl_Interp *interp { $1 = interp; }
%typemap(in, numinputs=0) gsink_tcl_dvec *out (gsink_tcl_dvec tmp = {NULL, 0}) { $1 = &tmp; }
%typemap(argout) gsink_tcl_dvec *out {
    Tcl_Obj *l = Tcl_NewListObj(0, NULL);
    for (size_t i = 0; i < tmp$argnum.n; i++) Tcl_ListObjAppendElement(NULL, l, Tcl_NewDoubleObj(tmp$argnum.v[i]));
    Tcl_ListObjAppendElement(interp, Tcl_GetObjResult(interp), l);
}
%typemap(freearg) gsink_tcl_dvec *out { free(tmp$argnum.v); }
%typemap(in) (const double *buf, size_t n) (double *tmp = NULL) {
    Tcl_Size len; Tcl_Obj **items;
    if (Tcl_ListObjGetElements(interp, $input, &len, &items) != TCL_OK) SWIG_fail;
    tmp = malloc(sizeof *tmp * (len ? (size_t)len : 1));
    if (!tmp) { gsink_tcl_usage(interp, "gsink: out of memory"); SWIG_fail; }
    for (Tcl_Size i = 0; i < len; i++) {
        /* get_state writes NaN (0/0 ratios at positions without gradient) as "NaN" */
        if (Tcl_GetDoubleFromObj(NULL, items[i], &tmp[i]) == TCL_OK) continue;
        const char *str = Tcl_GetString(items[i]);
        if (*str == '-' || *str == '+') str++;
        if (strncasecmp(str, "nan", 3) == 0) { tmp[i] = NAN; continue; }
        if (Tcl_GetDoubleFromObj(interp, items[i], &tmp[i]) != TCL_OK) SWIG_fail;
    }
    $1 = tmp; $2 = (size_t)len;
}
%typemap(freearg) (const double *buf, size_t n) { free(tmp$argnum); }
GSINK_OUT_SCALAR(int64_t, sequences, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))
GSINK_OUT_SCALAR(int64_t, micro_batches, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))
GSINK_OUT_SCALAR(int64_t, n_targets, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))
GSINK_OUT_SCALAR(uint64_t, state_bytes, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))
GSINK_OUT_SCALAR(uint64_t, temp_bytes, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))
GSINK_OUT_SCALAR(size_t, n, Tcl_NewWideIntObj((Tcl_WideInt)tmp$argnum))

/* ---- the API ------------------------------------------------------------- */
#define GSINK_API
%ignore gsink_forward;
%ignore gsink_tokenizer_encode;
%ignore gsink_tokenizer_decode;
%ignore gsink_free;
%ignore gsink_ops_attention_forward;
%ignore gsink_ops_attention_backward;
%ignore gsink_ops_attention_stats;
%ignore gsink_ops_vscale_forward;
%ignore gsink_ops_vscale_backward;
%ignore gsink_metric_token_norms;
%ignore gsink_metric_gradient_sink_ratio;
%ignore gsink_metric_massive_activation_ratio;
%ignore gsink_metric_column_mean;
%ignore gsink_metric_sink_scores;
%ignore gsink_metric_sink_rate;
%ignore gsink_metric_branch_ratios;
%ignore gsink_analysis_add;
%ignore gsink_analysis_gradient_norms;
%ignore gsink_analysis_get_state;
%ignore gsink_analyze_sequences;
%ignore gsink_progress_fn;

%include "gsink.h"

%rename(gsink_config_init) gsink_tcl_config_init;
void gsink_tcl_config_init(gsink_config *o);
%rename(gsink_model_options_init) gsink_tcl_model_options_init;
void gsink_tcl_model_options_init(gsink_model_options *o);
%rename(gsink_diag_options_init) gsink_tcl_diag_options_init;
void gsink_tcl_diag_options_init(gsink_diag_options *o);
%rename(gsink_vscale_options_init) gsink_tcl_vscale_options_init;
void gsink_tcl_vscale_options_init(gsink_vscale_options *o);
%rename(gsink_optimizer_options_init) gsink_tcl_optimizer_options_init;
void gsink_tcl_optimizer_options_init(gsink_optimizer_options *o);
%rename(gsink_config_preset) gsink_tcl_config_preset;
gsink_status gsink_tcl_config_preset(const char *name, gsink_config *o);

/* gsink_forward takes lists: `gsink_forward model tokens targets batch
 * seq_len` returns the loss (0 without targets; pass {} for none). */
%rename(gsink_forward) gsink_forward_checked;
gsink_status gsink_forward_checked(gsink_model *model, const int32_t *tokens, size_t n_tokens,
                                   const int32_t *targets, size_t n_targets, int batch,
                                   int seq_len, float *loss);

/* `gsink_tokenizer_encode tok text flags` returns the list of ids;
 * `gsink_tokenizer_decode tok ids` returns the text. */
%rename(gsink_tokenizer_encode) gsink_tokenizer_encode_all;
gsink_status gsink_tokenizer_encode_all(gsink_tokenizer *tok, const char *text, size_t text_len,
                                        unsigned flags, gsink_tcl_ids *out);
%rename(gsink_tokenizer_decode) gsink_tokenizer_decode_all;
gsink_status gsink_tokenizer_decode_all(gsink_tokenizer *tok, const int32_t *ids, size_t n_ids,
                                        gsink_tcl_str *out);

/* Embedding API (docs/embedding.md): arrays are Tcl lists; lengths are
 * checked against the descriptor (GSINK_ERR_SHAPE_MISMATCH).
 *   gsink_ops_attention_forward ops desc q k v  -> {out lse col_mass col_sq col_win}
 *   gsink_ops_attention_backward ops desc q k v out lse dout -> {dq dk dv}
 *   gsink_ops_vscale_forward ops desc v theta    -> out   (theta {} for OFF)
 *   gsink_ops_vscale_backward ops desc v theta dout dtheta -> {dv dtheta}
 *                                  (dtheta: values accumulated into, or {})
 *   gsink_metric_* take the tensors as lists and return lists or numbers. */
%rename(gsink_attn_desc_init) gsink_tcl_attn_desc_init;
void gsink_tcl_attn_desc_init(gsink_attn_desc *d);
%rename(gsink_vscale_desc_init) gsink_tcl_vscale_desc_init;
void gsink_tcl_vscale_desc_init(gsink_vscale_desc *d);
%rename(gsink_ops_options_init) gsink_tcl_ops_options_init;
void gsink_tcl_ops_options_init(gsink_ops_options *o);
%rename(gsink_ops_attention_forward) gsink_tcl_attention_forward;
gsink_status gsink_tcl_attention_forward(gsink_ops *ops, const gsink_attn_desc *d,
        const float *x0, size_t n0, const float *x1, size_t n1, const float *x2, size_t n2,
        gsink_tcl_vec *out, gsink_tcl_vec *lse, gsink_tcl_vec *mass, gsink_tcl_vec *sq, gsink_tcl_vec *win);
%rename(gsink_ops_attention_backward) gsink_tcl_attention_backward;
gsink_status gsink_tcl_attention_backward(gsink_ops *ops, const gsink_attn_desc *d,
        const float *x0, size_t n0, const float *x1, size_t n1, const float *x2, size_t n2,
        const float *x3, size_t n3, const float *x4, size_t n4, const float *x5, size_t n5,
        gsink_tcl_vec *dq, gsink_tcl_vec *dk, gsink_tcl_vec *dv);
%rename(gsink_ops_vscale_forward) gsink_tcl_vscale_forward;
gsink_status gsink_tcl_vscale_forward(gsink_ops *ops, const gsink_vscale_desc *d,
        const float *x0, size_t n0, const float *x1, size_t n1, gsink_tcl_vec *out);
%rename(gsink_ops_vscale_backward) gsink_tcl_vscale_backward;
gsink_status gsink_tcl_vscale_backward(gsink_ops *ops, const gsink_vscale_desc *d,
        const float *x0, size_t n0, const float *x1, size_t n1, const float *x2, size_t n2,
        const float *x3, size_t n3, gsink_tcl_vec *dv, gsink_tcl_vec *dtheta);
%rename(gsink_metric_token_norms) gsink_tcl_metric_token_norms;
gsink_status gsink_tcl_metric_token_norms(const float *x0, size_t n0, int batch, int seq, int heads,
        int head_width, int head, int agg, gsink_tcl_vec *out);
%rename(gsink_metric_column_mean) gsink_tcl_metric_column_mean;
gsink_status gsink_tcl_metric_column_mean(const float *x0, size_t n0, int batch, int heads, int seq,
                                          gsink_tcl_vec *out);
%rename(gsink_metric_sink_scores) gsink_tcl_metric_sink_scores;
gsink_status gsink_tcl_metric_sink_scores(const float *x0, size_t n0, int batch, int heads, int seq,
                                          int sink_window, int s, gsink_tcl_vec *out);
%rename(gsink_metric_sink_rate) gsink_tcl_metric_sink_rate;
gsink_status gsink_tcl_metric_sink_rate(const float *x0, size_t n0, int batch, int heads, int seq,
                                        int sink_window, int s, float eps, float *rate);
%rename(gsink_metric_gradient_sink_ratio) gsink_tcl_metric_gradient_sink_ratio;
gsink_status gsink_tcl_metric_gradient_sink_ratio(const float *x0, size_t n0, int s, int t_e, float *ratio);
%rename(gsink_metric_massive_activation_ratio) gsink_tcl_metric_massive_activation_ratio;
gsink_status gsink_tcl_metric_massive_activation_ratio(const float *x0, size_t n0, float *ratio);
%rename(gsink_metric_branch_ratios) gsink_tcl_metric_branch_ratios;
gsink_status gsink_tcl_metric_branch_ratios(const float *x0, size_t n0, const float *x1, size_t n1,
        const float *x2, size_t n2, int batch, int seq, int width, int agg, gsink_tcl_vec *bloat,
        gsink_tcl_vec *change, gsink_tcl_vec *compress);

/* Streaming analysis (docs/diagnostics.md, "Streaming over micro-batches"):
 *   set a [gsink_analysis_begin model seq_len diag_opts_or_NULL]
 *   gsink_analysis_add a tokens targets_or_{} batch seq_len
 *   gsink_analysis_report_json a NULL        -> JSON text
 *   gsink_analysis_gradient_norms a layer site head agg -> list
 *   gsink_analysis_counts a                  -> {sequences micro_batches n_targets}
 *   gsink_analysis_memory a                  -> {state_bytes temp_bytes}
 *   gsink_analysis_state_size a              -> n
 *   gsink_analysis_get_state a               -> list of doubles
 *   gsink_analysis_set_state a list
 *   gsink_analyze_sequences model tokens n_seq seq_len micro_batch opts progress
 *       -> JSON; progress: "" or a command prefix called with {done total},
 *          whose true result stops the run (GSINK_ERR_CANCELLED). */
%rename(gsink_analysis_add) gsink_tcl_analysis_add;
gsink_status gsink_tcl_analysis_add(gsink_analysis *a, const int32_t *tokens, size_t n_tokens,
                                    const int32_t *targets, size_t n_targets, int batch, int seq_len);
%rename(gsink_analysis_gradient_norms) gsink_tcl_analysis_gradient_norms;
gsink_status gsink_tcl_analysis_gradient_norms(gsink_analysis *a, int layer, int site, int head, int agg,
                                               gsink_tcl_vec *out);
%rename(gsink_analysis_get_state) gsink_tcl_analysis_get_state;
gsink_status gsink_tcl_analysis_get_state(gsink_analysis *a, gsink_tcl_dvec *out);
%rename(gsink_analyze_sequences) gsink_tcl_analyze_sequences;
gsink_status gsink_tcl_analyze_sequences(Tcl_Interp *interp, gsink_model *model, const int32_t *tokens,
                                         size_t n_tokens, int n_seq, int seq_len, int micro_batch,
                                         const gsink_diag_options *opts, const char *progress, char **json);
