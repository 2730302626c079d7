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

/* ---- the API ------------------------------------------------------------- */
#define GSINK_API
%ignore gsink_forward;
%ignore gsink_tokenizer_encode;
%ignore gsink_tokenizer_decode;
%ignore gsink_free;

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
