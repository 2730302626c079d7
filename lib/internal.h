/*
 * internal.h - model internals shared by the library sources (not installed).
 */
#ifndef GSINK_INTERNAL_H
#define GSINK_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "gsink.h"

#define GSINK_HIDDEN __attribute__((visibility("hidden")))
#define GSINK_MSG_SIZE 512

/* ---- errors -------------------------------------------------------------- */

/* Records a message in the thread-local slot and, when msgbuf is not NULL, in
 * the handle's buffer (GSINK_MSG_SIZE bytes). Returns status for chaining:
 *   return gsink__fail(m->errmsg, GSINK_ERR_NULL_ARGUMENT, "tokens is NULL"); */
gsink_status gsink__fail(char *msgbuf, gsink_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Clears the handle's message (called at the start of each API call). */
void gsink__clear(char *msgbuf);
/* Writes the filled struct `full` (first member: its size_t size) into the
 * caller's struct of `size` bytes, which may be an older, smaller version: at
 * most that many bytes, with ->size set to the count written. Returns it, or
 * 0 (nothing written) when out is NULL or size cannot hold the size field. */
size_t gsink__copy_sized(void *out, size_t size, const void *full, size_t full_size);
/* Checked size arithmetic: returns false on overflow. */
bool gsink__mul_size(size_t a, size_t b, size_t *out);
/* v (finite) as "%.9g" writes it, without printf (lib/diag/report.c); at
 * most 16 characters + NUL into out; returns the length. */
int gsink__format_g9(char *out, double v);

/* ---- handle use ----------------------------------------------------------- */

/* A handle may be used by one thread at a time (gsink.h). Each handle holds
 * an atomic owner word: 0 when idle, else an id of the thread inside a call
 * on it. Every public function taking the handle starts with GSINK_USE(...),
 * which claims the word (compare-and-swap 0 -> this thread, acquire) and
 * releases it (store 0, release) when the function's scope ends, on every
 * return path (the cleanup attribute). A call that finds the handle owned by
 * another thread returns GSINK_ERR_BUSY at once: it touches nothing of the
 * handle, not even its message buffer (the owner may be writing it); its
 * message goes to the calling thread's gsink_last_error only. A nested call
 * on the same thread (a public function calling another) passes through.
 * Every handle struct (model, optimizer, tokenizer) begins with its owner
 * word, so GSINK__OWNER(h) finds it for any handle (tests use it too). */
typedef _Atomic uintptr_t gsink__owner;
typedef struct gsink__use { gsink__owner *owner; } gsink__use;
/* Claims *owner for this thread (records it in u to release) or finds this
 * thread already owns it (u records nothing); false: another thread owns it. */
bool gsink__use_acquire(gsink__use *u, gsink__owner *owner);
/* Releases what gsink__use_acquire claimed (no-op for nested and failed uses). */
void gsink__use_release(gsink__use *u);
/* Records the busy failure in the thread's message and returns GSINK_ERR_BUSY. */
gsink_status gsink__busy(const char *what);
/* Its message, a string literal (what: a string literal too). */
#define GSINK__BUSY_MSG(what) \
    "the " what " is in use by another thread (a handle must be used by one thread at a time)"
/* True while a thread other than the caller is inside a call on the handle. */
bool gsink__used_elsewhere(const gsink__owner *owner);

#define GSINK__OWNER(h) ((gsink__owner *)(void *)(h))
#define GSINK__CAT2(a, b) a##b
#define GSINK__CAT(a, b) GSINK__CAT2(a, b)
/* Claims the handle `h` (any handle struct with an `owner` member) for the
 * rest of the enclosing scope, or returns `busy_ret` from the function. `h`
 * may point to const: the owner word is the one mutable field of a handle. */
#define GSINK_USE_OR(h, what, busy_ret)                                                      \
    gsink__use GSINK__CAT(gsink_use_, __LINE__) __attribute__((cleanup(gsink__use_release))) = \
        {NULL};                                                                              \
    if (!gsink__use_acquire(&GSINK__CAT(gsink_use_, __LINE__), (gsink__owner *)&(h)->owner))   \
        return (busy_ret)
/* The same for functions returning a gsink_status: GSINK_ERR_BUSY with a message. */
#define GSINK_USE(h, what) GSINK_USE_OR(h, what, gsink__busy(what))

/* Before a model is freed: claims every optimizer created on it (false, and
 * nothing changed, when another thread is inside a call on one), then frees
 * their state (it lives in the model's backend) and detaches them: their
 * calls then fail with GSINK_ERR_CALL_ORDER, and gsink_optimizer_free frees
 * only the optimizer itself. The caller holds the model's claim. */
bool gsink__optimizers_detach(gsink_model *m);
/* Before a model is freed: claims every streaming analysis on it (false, and
 * nothing changed, when another thread is inside a call on one), copies each
 * one's sums to the host and frees their backend memory; the analyses keep
 * their state functions, report calls then fail with GSINK_ERR_CALL_ORDER. */
bool gsink__analyses_detach(gsink_model *m);
/* After a 16-bit parameter's storage changed (gsink_set_param): the model's
 * optimizers take their fp32 master copy of it from the storage again. */
struct gsink_param_entry;
void gsink__optimizers_resync(gsink_model *m, const struct gsink_param_entry *e);

/* ---- ops handles ----------------------------------------------------------- */

/* The backend of an ops handle (tests allocate device buffers with it). */
gsink_backend *gsink__ops_backend(gsink_ops *ops);

/* ---- threads ------------------------------------------------------------- */

/* Thread limit: at most this many threads per CPU the process may run on. */
#define GSINK__THREADS_PER_CPU 2
#define GSINK__MAX_CPUS 4096
/* CPUs this process may run on (affinity mask, else online CPUs), >= 1. */
int gsink__cpu_count(void);
/* GSINK__THREADS_PER_CPU * gsink__cpu_count(): the n_threads limit. */
int gsink__max_threads(void);

/* ---- architectures (arch.c) ---------------------------------------------- */

/* A row of the architecture table: HF model_type -> flags. */
typedef struct gsink_arch_info {
    int id;                   /* gsink_arch */
    const char *model_type;   /* config.json model_type */
    const char *hf_class;     /* config.json architectures[0] written on save */
    int qkv_bias;             /* q/k/v projections carry biases */
    /* ---- qwen3 / glm / glm4 (config fields of the same names) ---- */
    int qk_norm;              /* per-head q/k RMSNorm */
    float rope_partial;       /* default partial_rotary_factor (0: 1, whole head) */
    int rope_interleaved;     /* RoPE on pairs (2i, 2i+1) */
    int sandwich_norm;        /* post-branch RMSNorms */
    int fused_gate_up;        /* files hold mlp.gate_up_proj (gate rows, then up rows) */
    int bias_key;             /* config.json attention_bias sets qkv_bias */
} gsink_arch_info;

const gsink_arch_info *gsink__arch(int arch);                   /* NULL if unknown */
const gsink_arch_info *gsink__arch_by_name(const char *model_type);
const char *gsink__arch_list(void);                             /* "llama, mistral, ..." */
int gsink__rope_scaling_by_name(const char *name);              /* -1 if unknown */
/* Rotated dims per head: rope_dims, or d_head when 0. */
int gsink__rope_dims(const gsink_config *c);
/* inv_freq[rope_dims/2] and the cos/sin factor of the config's RoPE (HF). */
void gsink__rope_freqs(const gsink_config *c, double *inv_freq, double *attn_scale);
/* Copies a caller's config (of any size it declares) over the defaults. */
void gsink__config_normalize(const gsink_config *in, gsink_config *out);

/* ---- parameters ---------------------------------------------------------- */

typedef struct gsink_layer_params {
    float *attn_norm; /* (d) */
    float *wq;        /* (H*dh, d) */
    float *wk;        /* (KV*dh, d) */
    float *wv;        /* (KV*dh, d) */
    float *wo;        /* (d, H*dh) */
    float *mlp_norm;  /* (d) */
    float *wgate;     /* (ff, d) */
    float *wup;       /* (ff, d) */
    float *wdown;     /* (d, ff) */
    float *bq, *bk, *bv; /* (H*dh), (KV*dh), (KV*dh) when cfg.qkv_bias, else NULL */
    float *q_norm, *k_norm; /* (dh) when cfg.qk_norm, else NULL */
    float *post_attn_norm, *post_mlp_norm; /* (d) when cfg.sandwich_norm, else NULL */
} gsink_layer_params;

/* Views into one allocation; params and grads share this layout. The
 * parameters' matrix views (embed, lm_head, wq..wdown) point to storage of
 * the model's weight_dtype (16-bit data when BF16/FP16: pass them to the
 * backend's *_w ops with m->wdtype, never read them as floats); gradients
 * are always fp32. */
typedef struct gsink_params {
    float *embed;      /* (V, d) */
    gsink_layer_params *layers; /* (L) */
    float *final_norm; /* (d) */
    float *lm_head;    /* (V, d); == embed when tied */
} gsink_params;

typedef struct gsink_param_entry {
    char name[96];
    int ndim;
    int64_t dims[2];
    size_t offset; /* floats from the start of the fp32 layout (gradients, optimizer state) */
    size_t numel;
    int dtype;     /* storage type (GSINK_WD_*): the model's weight_dtype for matrices, else fp32 */
    size_t soff;   /* bytes from the start of param_mem (4-byte aligned) */
    int layer;     /* -1 for global tensors */
} gsink_param_entry;

/* ---- activations --------------------------------------------------------- */

/* Per-layer stored tensors (backend memory), sized for (B, T).
 * site[GSINK_SITE_RESID_IN] and site[GSINK_SITE_RESID_OUT] point into the
 * shared residual stream (resid_out of layer l is resid_in of layer l+1). */
typedef struct gsink_layer_acts {
    float *site[GSINK_SITE_COUNT];  /* (B, T, width(site)) */
    float *dsite[GSINK_SITE_COUNT]; /* gradients, same shapes */
    float *rstd_attn, *rstd_mlp;    /* (B*T) */
    /* optional steps' inputs, NULL when off: q_raw/k_raw (B,T,H|KV,dh) and
     * rstd_q/rstd_k (B*T*H|KV) for qk_norm; o_raw/mlp_raw (B,T,d) (W_O z and
     * W_down mlp_post) and rstd_post_attn/rstd_post_mlp (B*T) for sandwich_norm */
    float *q_raw, *k_raw, *rstd_q, *rstd_k;
    float *o_raw, *mlp_raw, *rstd_post_attn, *rstd_post_mlp;
    float *lse;                     /* (B, H, T) */
    float *col_mass, *col_sq, *col_win; /* (B, H, T) backend memory */
} gsink_layer_acts;

/* Batch-mean attention statistics on the host, (L, H, T) each. */
typedef struct gsink_host_stats {
    float *mass, *sq, *win;
    int window; /* T_eps used */
} gsink_host_stats;

typedef struct gsink_vscale_state {
    int mode;           /* gsink_vscale_mode */
    float sigma;
    int learnable;
    int per_query_head;
    int n_scale_heads;  /* KV or H; also set when off (= KV) */
    float *theta;       /* backend memory (L, H) with row stride H */
    float *dtheta;      /* backend memory (L, H) */
} gsink_vscale_state;

struct gsink_model {
    gsink__owner owner;   /* first, as in every handle: thread inside a call (GSINK_USE) */
    struct gsink_optimizer *optimizers; /* live optimizers on this model (their state is ours) */
    struct gsink_analysis *analyses;    /* live streaming analyses (their sums are in our backend) */
    gsink_config cfg;
    gsink_backend *be;
    int device_kind, device_index, n_threads;
    char errmsg[GSINK_MSG_SIZE];

    /* parameters and gradients (backend memory) */
    size_t n_param_floats;      /* fp32 layout: gradients, optimizer state */
    int wdtype;                 /* gsink_weight_dtype of the matrices (GSINK_WD_*) */
    size_t param_bytes;         /* param_mem: each entry at its soff in its dtype */
    unsigned char *param_mem;
    float *grad_mem;
    gsink_params p, g;
    gsink_param_entry *entries; /* registry in HF order */
    size_t n_entries;
    char (*theta_names)[96];    /* per layer, for the registry view of theta */

    gsink_vscale_state vs;
    gsink_diag_options diag;

    /* activation storage for the current (B, T) */
    int B, T;            /* shape of the last successful forward (0 if none) */
    size_t cap_tokens;   /* B*T the buffers are sized for */
    void *act_mem;       /* one backend allocation holding everything below */
    size_t act_bytes;    /* its size */
    int32_t *tokens_dev, *targets_dev; /* (B*T) */
    float **resid, **dresid; /* (L+1) pointers, each (B, T, d) */
    gsink_layer_acts *layers; /* (L) */
    float *final_out, *rstd_final; /* (B,T,d), (B*T) */
    float *gain_snap;              /* (L, 2, d): the forward's attn/mlp norm gains (recomputed sites) */
    float *logits, *dlogits;       /* (B,T,V); dlogits == logits (see logits_consumed) */
    float *dfinal_out;             /* (B,T,d) */
    float *scratch;                /* (B,T,max(d,H*dh,KV*dh)) backward temporaries */
    float *scratch2;               /* (B,T,H*dh) when qk_norm: pre-norm q/k gradients */
    float *ones;                   /* (B*T) ones: bias broadcast and column sums by GEMM */
    double *rope_freq;             /* backend memory: inv_freq (d_head/2), host-computed */
    float rope_scale;              /* factor on cos and sin (yarn attention factor) */
    float *stats_sum;              /* (3,H,T) batch sums of the column statistics */
    gsink_host_stats hstats;

    bool have_forward, have_targets, have_backward;
    /* Where the attention column statistics come from (see backend.h):
     * defer_stats = the backend's stats_in_backward at creation (tests may
     * flip it); stats_ready = hstats holds those of the last forward;
     * stats_on_backend = the layers' backend buffers hold them (summed by a
     * backward) but they have not been reduced into hstats yet: that waits
     * for the first read (gsink__attn_stats), so a training step that never
     * reads them downloads nothing. */
    bool defer_stats, stats_ready, stats_on_backend;
    bool discard_site_grads; /* GSINK_MODEL_DISCARD_SITE_GRADS: layers share dsite */
    bool analysis;           /* GSINK_MODEL_ANALYSIS: no grad_mem, no weight gradients */
    bool discard_site_acts;  /* GSINK_MODEL_DISCARD_SITE_ACTIVATIONS: sites the backward does not
                              * read share one buffer set */
    /* dlogits aliases logits: the backward writes the logit gradients over
     * the logits. logits_consumed says it did; gsink_get_logits or another
     * backward then recompute the logits from final_out with the forward's
     * own LM-head product (bitwise the same), as long as the weights are
     * those of the forward: weights_version counts the changes a stored
     * forward survives (optimizer steps), logits_version is its value at the
     * forward. */
    bool logits_consumed;
    uint64_t weights_version, logits_version;
    /* Recomputed sites (gsink__site_recomputed): one buffer serves every
     * layer; held[site] is the layer whose values it holds (-1: none). */
    int held[GSINK_SITE_COUNT];
    int held_grad;           /* the layer whose mlp_pre / mlp_up gradients their buffers hold */
    bool no_param_grads;     /* inside gsink__backward_hooked: weight gradients skipped */
    float last_loss;
    int64_t n_targets;
};

/* A hook run by gsink__backward_hooked after each layer's backward, while
 * that layer's site gradients are valid (also in shared buffers). */
typedef gsink_status (*gsink__layer_hook)(gsink_model *m, int layer, void *user);
/* Backward of the last forward (with targets) for analyses: the cross-entropy
 * gradient of every target token is scaled by `scale` (1: unnormalised sum),
 * the hook runs after every layer (top layer first), and parameter
 * gradients are neither computed nor zeroed, so a training model's
 * accumulated gradients stay as they were. */
gsink_status gsink__backward_hooked(gsink_model *m, float scale, gsink__layer_hook hook, void *user);

/* Width per position and head count of a site for this model. */
int gsink__site_heads(const gsink_model *m, gsink_site site);
int gsink__site_width(const gsink_model *m, gsink_site site); /* heads * head width */
/* Backend pointer of a site's activation (grad=false) or gradient (grad=true). */
float *gsink__site_ptr(gsink_model *m, int layer, gsink_site site, bool grad);
/* True when the model does not keep this site's activations per layer
 * (GSINK_MODEL_DISCARD_SITE_ACTIVATIONS); the pointer then holds the last
 * forward's value of whichever layer ran last. */
bool gsink__site_discarded(const gsink_model *m, gsink_site site);
/* Before reading a layer's activations (grad false, after a forward) or
 * gradients (grad true, after a backward) of a site: fails with
 * GSINK_ERR_UNSUPPORTED (message naming the flag) for a discarded
 * activation site, and makes the shared buffer of a recomputed site hold
 * that layer's values. */
gsink_status gsink__site_ready(gsink_model *m, int layer, gsink_site site, bool grad);
/* True for the sites whose activations (grad false) or gradients (grad
 * true) are stored once for all layers and recomputed from kept tensors
 * when a layer's values are needed: the activations of attn_norm_out and
 * mlp_norm_out (RMSNorm of resid_in / resid_mid with the forward's gains)
 * and mlp_post (silu(mlp_pre) * mlp_up); the gradients of mlp_pre and
 * mlp_up (the SwiGLU backward of the mlp_post gradient). */
bool gsink__site_recomputed(gsink_site site, bool grad);
/* gsink_forward with a hook after each layer's forward (its activations are
 * complete then, also when the layers share them). */
gsink_status gsink__forward_hooked(gsink_model *m, const int32_t *tokens, const int32_t *targets, int batch,
                                   int seq_len, float *loss, gsink__layer_hook hook, void *user);
/* Looks up a parameter entry by name (NULL if none). */
const gsink_param_entry *gsink__find_param(const gsink_model *m, const char *name);

/* Backend call with error capture into the model's message. */
gsink_status gsink__be_check(gsink_model *m, gsink_status st, const char *what);
/* Makes hstats hold the column statistics of the last forward: a no-op when
 * the forward or a backward recorded them, otherwise one attention_stats pass
 * per layer over the stored q, k and lse (forward-only analyses on backends
 * that compute the statistics in backward). Needs a forward. */
gsink_status gsink__attn_stats(gsink_model *m);
/* The model's RoPE (rotated dims, pairing, frequencies of its config) on
 * x(B, T, heads, d_head) with T of the last forward; inverse=1: transpose. */
gsink_status gsink__rope(gsink_model *m, float *x, int B, int heads, int inverse);

/* The index-th parameter (registry order, HF names) of a model with config
 * c, computed without allocating anything: loaders check a file against it
 * before the model is allocated. Returns 0 past the last parameter. */
int gsink__param_spec(const gsink_config *c, size_t index, char name[96], int *ndim, int64_t dims[2]);

/* Writes count elements of src (host memory, storage type src_dtype,
 * GSINK_WD_*) into parameter e: copied bit for bit when src_dtype is e's
 * storage type, else converted (rounding to nearest even) in bounded chunks.
 * Does not touch the model's message (callers report). */
gsink_status gsink__param_store(gsink_model *m, const gsink_param_entry *e, const void *src, int src_dtype);
/* The same for elements [first, first + count) of e (src holds count). */
gsink_status gsink__param_store_range(gsink_model *m, const gsink_param_entry *e, size_t first, size_t count,
                                      const void *src, int src_dtype);
/* Reads parameter e into dst (host) as dst_dtype (GSINK_WD_*), in chunks. */
gsink_status gsink__param_fetch(gsink_model *m, const gsink_param_entry *e, void *dst, int dst_dtype);

/* Allocates a model with zeroed weights (no random init); used by loaders. */
gsink_status gsink__model_alloc(const gsink_config *cfg, const gsink_model_options *opts,
                                gsink_model **out, char *errbuf);

/* Opens path read-only without blocking (FIFOs, devices) and refuses
 * anything that is not a regular file; st receives its fstat. Returns the
 * descriptor (O_CLOEXEC, blocking again), or -1 after a GSINK_ERR_IO
 * message naming the path (lib/io/file.c). */
struct stat;
int gsink__open_regular(const char *path, struct stat *st, char *errbuf);

/* FNV-1a 64: the checksum of the optimizer state file and of the tensor
 * data of the safetensors files the library writes ("gsink.checksum"). */
#define GSINK_FNV1A64_INIT 1469598103934665603ull
static inline uint64_t gsink__fnv1a64(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Deterministic normal(0, std) generator (splitmix64 + Box-Muller). */
typedef struct gsink_rng { uint64_t state; int has_spare; double spare; } gsink_rng;
void gsink__rng_seed(gsink_rng *r, uint64_t seed);
double gsink__rng_normal(gsink_rng *r);

/* Attention score-gradient of one softmax row: given probabilities p(n) and
 * dp(n) = dL/dp, writes ds(n) = p * (dp - sum_j p_j dp_j). Exposed for tests
 * of Lemma 3 (sum_j ds_j = 0). */
void gsink__softmax_row_bwd(float *ds, const float *p, const float *dp, int n);

/* V-scale scalar pieces (CPU reference math shared by ops and tests). */
static inline float gsink__vscale_phi(float r, float C) { return r / (r + C); }

#endif
