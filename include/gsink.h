/*
 * gsink.h - public API of libgsink.
 *
 * libgsink runs a Llama-style pre-norm decoder-only Transformer forward and
 * backward (exact fp32 gradients) and measures attention sinks, gradient sinks
 * and massive activations as defined in "Attention Sinks Induce Gradient Sinks"
 * (arXiv 2603.17771). It also implements the paper's V-scale layer.
 *
 * Conventions
 *  - Every function returns a gsink_status (GSINK_OK == 0) unless stated.
 *  - On failure a message is stored per handle (gsink_model_errmsg) and per
 *    thread (gsink_last_error). A failed call leaves the handle usable and its
 *    previous state (weights, last forward/backward results) intact unless the
 *    function's comment says otherwise.
 *  - Options structs start with their size; fill them with the matching
 *    *_init macro, then change fields. Fields are only ever appended. The
 *    macro passes the caller's sizeof to the *_init_size function, which
 *    writes no more than that many bytes: a program built against an older,
 *    smaller struct stays safe with a newer library (bindings call the
 *    *_init_size function with their own struct size).
 *  - Arrays are row-major float32 (host memory). Sizes are size_t counts of
 *    elements, never bytes, unless the name says bytes.
 *  - The library never prints, exits or aborts.
 *  - A handle (model, optimizer, tokenizer) must be used by one thread at a
 *    time; different handles may be used from different threads at once. A
 *    call that finds its handle inside a call on another thread returns
 *    GSINK_ERR_BUSY at once without touching the handle: the message goes to
 *    gsink_last_error() of the calling thread only, and the other call, its
 *    results and the handle's own message (*_errmsg) are unaffected. An
 *    optimizer call also uses its model, so it is busy while the model is.
 *    Misuse is detected, not made safe: serialise your calls (e.g. a mutex
 *    per handle). The *_free functions return nothing; on a busy handle they
 *    free nothing, record GSINK_ERR_BUSY in gsink_last_error(), and the
 *    handle stays valid, to be freed once the other call has returned.
 */
#ifndef GSINK_H
#define GSINK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define GSINK_API __declspec(dllexport)
#elif defined(__GNUC__)
#define GSINK_API __attribute__((visibility("default")))
#else
#define GSINK_API
#endif

/* ------------------------------------------------------------------------ */
/* Versions                                                                 */
/* ------------------------------------------------------------------------ */

#define GSINK_VERSION_MAJOR 0
#define GSINK_VERSION_MINOR 1
#define GSINK_VERSION_PATCH 0
#define GSINK_VERSION_NUMBER \
    (GSINK_VERSION_MAJOR * 10000 + GSINK_VERSION_MINOR * 100 + GSINK_VERSION_PATCH)
#define GSINK_VERSION_STRING "0.1.0"

/* Version of the loaded library as MAJOR*10000 + MINOR*100 + PATCH. Compare
 * with GSINK_VERSION_NUMBER to check that header and library match. */
GSINK_API int gsink_version_number(void);
/* Version string of the loaded library, e.g. "0.1.0". Static storage. */
GSINK_API const char *gsink_version_string(void);

/* ------------------------------------------------------------------------ */
/* Status codes: explicit numbers, never renumbered or reused.             */
/* ------------------------------------------------------------------------ */

typedef enum gsink_status {
    GSINK_OK = 0,
    GSINK_ERR_NULL_ARGUMENT = 1,     /* a required pointer or handle was NULL */
    GSINK_ERR_INVALID_ARGUMENT = 2,  /* a value is invalid (e.g. sigma <= 0) */
    GSINK_ERR_OUT_OF_MEMORY = 3,     /* host or device allocation failed / too large */
    GSINK_ERR_TOKEN_OUT_OF_RANGE = 4,/* token id < 0 or >= vocab_size */
    GSINK_ERR_SEQ_TOO_LONG = 5,      /* seq_len > max_seq_len */
    GSINK_ERR_BAD_CONFIG = 6,        /* inconsistent model configuration */
    GSINK_ERR_CALL_ORDER = 7,        /* e.g. backward before forward, metric before backward */
    GSINK_ERR_NO_TARGETS = 8,        /* backward/loss needs targets that were not given */
    GSINK_ERR_UNKNOWN_SITE = 9,      /* unknown activation site id or name */
    GSINK_ERR_UNKNOWN_NAME = 10,     /* unknown parameter, preset or metric name */
    GSINK_ERR_OUT_OF_RANGE = 11,     /* layer/head/position/window out of range */
    GSINK_ERR_BUFFER_TOO_SMALL = 12, /* caller buffer too small (needed size reported) */
    GSINK_ERR_SHAPE_MISMATCH = 13,   /* tensor shape disagrees with the config */
    GSINK_ERR_IO = 14,               /* open/read/write/rename failed */
    GSINK_ERR_FORMAT = 15,           /* malformed, truncated or hostile file */
    GSINK_ERR_UNSUPPORTED = 16,      /* valid but unsupported (dtype, quant type, arch) */
    GSINK_ERR_NO_DEVICE = 17,        /* requested device does not exist */
    GSINK_ERR_BACKEND = 18,          /* backend (BLIS/CUDA) reported a failure */
    GSINK_ERR_NON_FINITE = 19,       /* NaN/Inf in loss or gradients; step refused */
    GSINK_ERR_MISSING_TENSOR = 20,   /* checkpoint lacks a required tensor */
    GSINK_ERR_DEVICE_OUT_OF_MEMORY = 21, /* device (GPU) allocation failed */
    GSINK_ERR_BUSY = 22,             /* handle in use by another thread (since 0.1.0) */
    GSINK_ERR_CANCELLED = 23         /* a progress callback asked to stop (since 0.1.0) */
} gsink_status;

/* Short constant description of a status code ("out of memory"). Never NULL. */
GSINK_API const char *gsink_status_str(gsink_status status);

/* Message of the last failed call on this thread (any handle), or "" if
 * none. Valid until the next failing call on this thread. */
GSINK_API const char *gsink_last_error(void);

/* Frees memory the library returned to the caller (JSON reports, strings). */
GSINK_API void gsink_free(void *ptr);

/* ------------------------------------------------------------------------ */
/* Devices                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum gsink_device_kind {
    GSINK_DEVICE_CPU = 0,
    GSINK_DEVICE_CUDA = 1
} gsink_device_kind;

/* Number of devices of a kind that can be used now (CPU: always 1; CUDA: 0
 * when the library was built without CUDA, or no driver/GPU is present). */
GSINK_API gsink_status gsink_device_count(gsink_device_kind kind, int *count);
/* Human-readable description of a device into buf (always NUL-terminated).
 * For the CPU it names the BLIS kernel family in use and thread count. */
GSINK_API gsink_status gsink_device_describe(gsink_device_kind kind, int index,
                                             char *buf, size_t buf_size);
/* Largest CPU thread count a model accepts (gsink_model_options.n_threads,
 * gsink_model_set_threads): 2 per CPU this process may run on, i.e. twice
 * the size of its CPU affinity mask (the online CPUs where the mask cannot
 * be read); at least 2. Larger counts are refused with
 * GSINK_ERR_INVALID_ARGUMENT, and no OpenMP region or BLIS call of the
 * library runs more threads than this. Returns an int, not a status; the
 * value follows the affinity mask at the time of the call. (Since 0.1.0.) */
GSINK_API int gsink_max_threads(void);

/* ------------------------------------------------------------------------ */
/* Model configuration                                                      */
/* ------------------------------------------------------------------------ */

typedef struct gsink_config {
    size_t size;           /* sizeof(gsink_config), set by gsink_config_init */
    int32_t vocab_size;
    int32_t d_model;
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads;    /* n_heads must be a multiple of n_kv_heads */
    int32_t d_head;        /* even (RoPE) */
    int32_t d_ff;
    int32_t max_seq_len;
    float rms_eps;         /* default 1e-5 */
    float rope_theta;      /* default 10000 */
    int32_t tie_embeddings;/* 1: LM head shares the embedding matrix */
    float init_std;        /* default 0.02 */
    /* ---- since 0.1.0 (architectures); a caller's older, smaller struct
     * leaves them at their defaults (plain Llama, no RoPE scaling) ---- */
    int32_t arch;          /* gsink_arch, default GSINK_ARCH_LLAMA: the row of the
                            * architecture table; gsink_model_load sets it and the
                            * row's flags (qkv_bias) from config.json's model_type,
                            * gsink_model_create takes the flags as given */
    int32_t qkv_bias;      /* 1: q, k and v projections carry biases (Qwen2) */
    int32_t rope_scaling;  /* gsink_rope_scaling, default GSINK_ROPE_NONE */
    float rope_factor;     /* scaling factor (linear, llama3, yarn), default 1 */
    float rope_low_freq_factor;  /* llama3: default 1 */
    float rope_high_freq_factor; /* llama3: default 4 */
    int32_t rope_original_max_pos; /* llama3, yarn: original_max_position_embeddings
                                    * (0: max_seq_len) */
    float rope_beta_fast;  /* yarn: default 32 */
    float rope_beta_slow;  /* yarn: default 1 */
    float rope_attention_factor; /* yarn: multiplies cos and sin; 0 (default) =
                                  * HF's 0.1 ln(factor) + 1 (1 when factor <= 1) */
    int32_t rope_truncate; /* yarn: round the correction range (HF truncate), default 1 */
    /* ---- since 0.1.0 (qwen3, glm, glm4); 0 = off in an older struct ---- */
    int32_t qk_norm;       /* 1: RMSNorm of each q and k head (gain of d_head) before
                            * RoPE (Qwen3: self_attn.q_norm / k_norm) */
    int32_t rope_dims;     /* rotated dims of each head, even, <= d_head; 0 (default) =
                            * d_head (GLM: d_head * partial_rotary_factor) */
    int32_t rope_interleaved; /* 1: RoPE rotates pairs (2i, 2i+1) (GLM), 0: HF
                               * rotate_half pairs (i, i + rope_dims/2) */
    int32_t sandwich_norm; /* 1: RMSNorm on each branch output before the residual add
                            * (GLM-4-0414: post_self_attn_layernorm, post_mlp_layernorm) */
    /* ---- since 0.1.0 (sliding-window attention) ---- */
    int32_t sliding_window; /* 0 (default): full causal attention; W > 0: query t
                             * sees keys j with 0 <= t - j < W (W keys, HF
                             * transformers' sliding_window_overlay, llama.cpp's
                             * n_swa), in every layer */
} gsink_config;

/* Architectures (gsink_config.arch): rows of the library's architecture table,
 * selected by config.json's model_type. gsink_arch_name gives the name. */
typedef enum gsink_arch {
    GSINK_ARCH_LLAMA = 0,   /* "llama": Llama 1-3 (RoPE scaling in rope_scaling) */
    GSINK_ARCH_MISTRAL = 1, /* "mistral": as llama, plus sliding_window */
    GSINK_ARCH_QWEN2 = 2,   /* "qwen2": llama + q/k/v biases (Qwen2, Qwen2.5) */
    GSINK_ARCH_QWEN3 = 3,   /* "qwen3": llama + q/k RMSNorm per head (qk_norm) */
    GSINK_ARCH_GLM = 4,     /* "glm" (GLM-4-9B): q/k/v biases, interleaved RoPE on half of
                             * each head, fused mlp.gate_up_proj in the files */
    GSINK_ARCH_GLM4 = 5     /* "glm4" (GLM-4-0414): glm + sandwich_norm */
} gsink_arch;

/* RoPE scaling (gsink_config.rope_scaling), as HF transformers' rope_type. */
typedef enum gsink_rope_scaling {
    GSINK_ROPE_NONE = 0,    /* "default" */
    GSINK_ROPE_LINEAR = 1,  /* "linear": inv_freq / factor */
    GSINK_ROPE_LLAMA3 = 2,  /* "llama3" (Llama 3.1-3.3) */
    GSINK_ROPE_YARN = 3     /* "yarn" */
} gsink_rope_scaling;

/* Name of an architecture ("llama", "qwen2"), or NULL if unknown. Static. */
GSINK_API const char *gsink_arch_name(int arch);
/* Name of a RoPE scaling type ("default", "llama3", ...), or NULL. Static. */
GSINK_API const char *gsink_rope_scaling_name(int type);

/* Fills a config with the "tiny" preset and sets size. */
GSINK_API void gsink_config_init_size(gsink_config *cfg, size_t size);
#define gsink_config_init(cfg) gsink_config_init_size((cfg), sizeof *(cfg))
/* Fills cfg from a named preset: "paper-0.1b", "paper-0.3b", "paper-1b",
 * "bench-21m", "small", "tiny", "micro". Unknown: GSINK_ERR_UNKNOWN_NAME. */
GSINK_API gsink_status gsink_config_preset_size(const char *name, gsink_config *cfg, size_t size);
#define gsink_config_preset(name, cfg) gsink_config_preset_size((name), (cfg), sizeof *(cfg))
/* Name of preset i (0-based) or NULL past the end. */
GSINK_API const char *gsink_config_preset_name(int index);
/* Checks a config for consistency; returns GSINK_ERR_BAD_CONFIG with a message. */
GSINK_API gsink_status gsink_config_validate(const gsink_config *cfg);

/* ------------------------------------------------------------------------ */
/* Models                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct gsink_model gsink_model;

typedef struct gsink_model_options {
    size_t size;            /* sizeof(gsink_model_options) */
    int32_t device;         /* gsink_device_kind, default CPU */
    int32_t device_index;   /* default 0 */
    int32_t n_threads;      /* CPU threads for this model: 0 (default) = one per CPU
                             * this process may run on; at most gsink_max_threads() */
    uint64_t seed;          /* initialisation seed, default 0 */
    int32_t precision;      /* gsink_precision, default GSINK_PRECISION_FP32 (since 0.1.0) */
    uint32_t flags;         /* gsink_model_flags, default 0 (since 0.1.0) */
    int32_t weight_dtype;   /* gsink_weight_dtype, default GSINK_WEIGHTS_FP32 (since 0.1.0) */
} gsink_model_options;

/* Storage type of the weight matrices (the embedding, the attention and MLP
 * projections, an untied LM head); norm gains, biases and V-scale theta stay
 * fp32. BF16 and FP16 halve the weight memory (gsink_model_memory shows it);
 * every matrix product, activation, gradient and accumulation stays fp32 (the
 * CPU widens bounded panels of a weight to fp32 per product, never a whole
 * matrix). gsink_get_param / gsink_set_param keep their fp32 interface:
 * set_param rounds to nearest, ties to even (torch's .to(torch.bfloat16) and
 * .half()), get_param returns the stored values exactly. gsink_model_load
 * copies a BF16 (or F16) safetensors tensor bit for bit into BF16 (FP16)
 * storage and rounds other sources (F32, GGUF dequantised blocks);
 * gsink_model_save writes the stored type. Training: parameter gradients are
 * fp32 and the optimizer keeps an fp32 master copy of each 16-bit weight,
 * steps it, and rounds it back into storage (see gsink_optimizer_create).
 * Valid for gsink_model_create and gsink_model_load; an unknown value is
 * GSINK_ERR_INVALID_ARGUMENT. (Since 0.1.0.) */
typedef enum gsink_weight_dtype {
    GSINK_WEIGHTS_FP32 = 0,
    GSINK_WEIGHTS_BF16 = 1,
    GSINK_WEIGHTS_FP16 = 2
} gsink_weight_dtype;

/* Model flags. GSINK_MODEL_DISCARD_SITE_GRADS: the backward keeps no per-layer
 * site gradients (the layers share one set of gradient buffers, and the
 * residual gradients alternate between two), which roughly halves the
 * activation memory of a training run. Parameter and V-scale gradients are
 * unchanged; every gradient diagnostic, gsink_get_gradient and the JSON report
 * then return GSINK_ERR_UNSUPPORTED. Activation diagnostics keep working.
 * GSINK_MODEL_ANALYSIS: activation gradients only. The model holds no
 * parameter-gradient buffer (gsink_model_memory shows the saving), and the
 * backward skips every weight gradient (the weight-gradient matrix products,
 * the norm-gain, bias, embedding and V-scale theta gradients) while computing
 * every activation gradient exactly as a normal model does: site gradients
 * and every gradient diagnostic are bitwise equal. gsink_get_param_grad,
 * gsink_vscale_get_theta_grad, gsink_zero_grad, gsink_optimizer_create and
 * GSINK_BACKWARD_ACCUMULATE then return GSINK_ERR_UNSUPPORTED and leave the
 * model usable. Valid for gsink_model_create and gsink_model_load.
 * GSINK_MODEL_DISCARD_SITE_ACTIVATIONS (only together with
 * GSINK_MODEL_ANALYSIS, else GSINK_ERR_INVALID_ARGUMENT): the two sites that
 * the activation-gradient backward never reads and that cannot be recomputed
 * from kept tensors (attn_out, mlp_out) share one buffer set across layers.
 * Site gradients and every gradient diagnostic stay bitwise equal; the
 * streaming analysis (gsink_analysis_*) folds the activation norms it needs
 * during the forward, so its report is unchanged. gsink_get_activation, the
 * activation diagnostics and the JSON report of a discarded site return
 * GSINK_ERR_UNSUPPORTED. Since 0.1.0.
 *
 * Storage every model shares (no flag; since 0.1.0): attn_norm_out,
 * mlp_norm_out and mlp_post are stored once for all layers and recomputed
 * from kept tensors (resid_in / resid_mid with the forward's norm gains;
 * mlp_pre and mlp_up) when a layer's values are read or needed for a weight
 * gradient, with the forward's own kernels, so reads are bitwise the
 * forward's values, also after an optimizer step; likewise the gradients of
 * mlp_pre and mlp_up (the SwiGLU backward of the kept mlp_post gradient).
 * With V-scale off, v_scaled
 * shares v's storage (activation and gradient; backward-only: the
 * activation). The backward writes the logit gradients over the logits:
 * see gsink_get_logits. */
typedef enum gsink_model_flags {
    GSINK_MODEL_DISCARD_SITE_GRADS = 1u << 0,
    GSINK_MODEL_ANALYSIS = 1u << 1,
    GSINK_MODEL_DISCARD_SITE_ACTIVATIONS = 1u << 2
} gsink_model_flags;

/* Matrix-product precision. FP32 is exact fp32 everywhere. TF32 and BF16 run
 * the matrix products (GEMMs and attention) on tensor cores, with inputs
 * rounded to TF32 (10-bit mantissa) or bfloat16 (7-bit mantissa) and fp32
 * accumulation; weights, activations, gradients and optimizer state stay
 * fp32. Both are only available on CUDA devices (GSINK_ERR_UNSUPPORTED on the
 * CPU). BF16 since 0.1.0. */
typedef enum gsink_precision {
    GSINK_PRECISION_FP32 = 0,
    GSINK_PRECISION_TF32 = 1,
    GSINK_PRECISION_BF16 = 2
} gsink_precision;

GSINK_API void gsink_model_options_init_size(gsink_model_options *opts, size_t size);
#define gsink_model_options_init(opts) gsink_model_options_init_size((opts), sizeof *(opts))

/* Creates a model with freshly initialised weights (HF Llama init: normal(0,
 * init_std) for matrices and embeddings, ones for RMSNorm gains). opts may be
 * NULL for defaults. On failure *out is NULL. */
GSINK_API gsink_status gsink_model_create(const gsink_config *cfg,
                                          const gsink_model_options *opts,
                                          gsink_model **out);
/* Frees a model; NULL is allowed. While another thread is inside a call on
 * the model (or on an optimizer of it) nothing is freed: the model stays
 * valid and gsink_last_error() says GSINK_ERR_BUSY (see Conventions).
 * Optimizers still open on the model lose their state with it (it lives in
 * the model's backend): their step/save/load then return
 * GSINK_ERR_CALL_ORDER, and gsink_optimizer_free still frees them. */
GSINK_API void gsink_model_free(gsink_model *model);
/* Copies the model's config into *cfg (cfg->size must be set). */
GSINK_API gsink_status gsink_model_config(const gsink_model *model, gsink_config *cfg);
/* Last error message for this model ("" if none). While another thread is
 * inside a call on the model it returns a constant "in use by another thread"
 * text instead of the buffer that call is writing. */
GSINK_API const char *gsink_model_errmsg(const gsink_model *model);
/* Sets the number of CPU threads this model uses: 0 = one per CPU this
 * process may run on (its affinity mask); 1..gsink_max_threads(). A negative
 * count or one above gsink_max_threads() gives GSINK_ERR_INVALID_ARGUMENT and
 * leaves the model's thread count unchanged. */
GSINK_API gsink_status gsink_model_set_threads(gsink_model *model, int n_threads);

/* Memory flags. GSINK_MEMORY_RESET_PEAK: after reading, the peak restarts
 * from the current bytes (to measure one phase, e.g. a forward + backward at
 * a given sequence length). */
typedef enum gsink_memory_flags {
    GSINK_MEMORY_RESET_PEAK = 1u << 0
} gsink_memory_flags;

/* Memory the model's backend holds (device memory on CUDA, host memory on
 * the CPU): *bytes now and *peak_bytes the most since the model was created
 * or the peak was last reset. It counts every buffer of the model (weights,
 * gradients, activations, attention statistics, optimizer state) and the
 * backend's long-lived scratch; not the CUDA context, cuBLAS workspaces or
 * short-lived host temporaries. Either pointer may be NULL. (Since 0.1.0.) */
GSINK_API gsink_status gsink_model_memory(gsink_model *model, uint64_t *bytes, uint64_t *peak_bytes,
                                          uint32_t flags);

/* Parameters, named as in HuggingFace LlamaForCausalLM:
 *   model.embed_tokens.weight                (vocab, d_model)
 *   model.layers.{l}.input_layernorm.weight   (d_model)
 *   model.layers.{l}.self_attn.q_proj.weight  (n_heads*d_head, d_model)
 *   model.layers.{l}.self_attn.k_proj.weight  (n_kv_heads*d_head, d_model)
 *   model.layers.{l}.self_attn.v_proj.weight  (n_kv_heads*d_head, d_model)
 *   model.layers.{l}.self_attn.o_proj.weight  (d_model, n_heads*d_head)
 *   model.layers.{l}.post_attention_layernorm.weight (d_model)
 *   model.layers.{l}.mlp.gate_proj.weight     (d_ff, d_model)
 *   model.layers.{l}.mlp.up_proj.weight       (d_ff, d_model)
 *   model.layers.{l}.mlp.down_proj.weight     (d_model, d_ff)
 *   model.norm.weight                         (d_model)
 *   lm_head.weight                            (vocab, d_model), untied only
 *   model.layers.{l}.self_attn.v_scale_theta  (n_scale_heads), only while V-scale is on
 */
/* Number of parameter tensors. */
GSINK_API gsink_status gsink_param_count(const gsink_model *model, size_t *count);
/* Name (static storage of the model) and shape of parameter i. dims has room
 * for 2 entries; *ndim is 1 or 2. Any output pointer may be NULL. */
GSINK_API gsink_status gsink_param_info(const gsink_model *model, size_t index,
                                        const char **name, int *ndim, int64_t dims[2]);
/* Total number of scalar parameters (tied embeddings counted once). */
GSINK_API gsink_status gsink_param_numel(const gsink_model *model, size_t *numel);
/* Copies a parameter out / in by name; count must equal the tensor's numel. */
GSINK_API gsink_status gsink_get_param(gsink_model *model, const char *name,
                                       float *out, size_t count);
GSINK_API gsink_status gsink_set_param(gsink_model *model, const char *name,
                                       const float *data, size_t count);
/* Copies out the accumulated gradient of a parameter. */
GSINK_API gsink_status gsink_get_param_grad(gsink_model *model, const char *name,
                                            float *out, size_t count);
/* Every parameter, or every accumulated gradient, in one flat buffer of
 * count == gsink_param_numel values (since 0.1.0; data-parallel training
 * exchanges them in one copy instead of one call per tensor). Layout: the
 * tensors in gsink_param_info order (a tied lm_head counted once, as the
 * embedding), then theta (n_layers x n_scale_heads) while V-scale is on.
 * gsink_set_params_flat refuses non-finite theta (GSINK_ERR_NON_FINITE) and,
 * like gsink_set_param, discards the stored forward. gsink_set_grads_flat
 * replaces the accumulated gradients that the next gsink_optimizer_step (or
 * GSINK_BACKWARD_ACCUMULATE backward) reads. The gradient calls return
 * GSINK_ERR_UNSUPPORTED on a GSINK_MODEL_ANALYSIS model. */
GSINK_API gsink_status gsink_get_params_flat(gsink_model *model, float *out, size_t count);
GSINK_API gsink_status gsink_set_params_flat(gsink_model *model, const float *data, size_t count);
GSINK_API gsink_status gsink_get_grads_flat(gsink_model *model, float *out, size_t count);
GSINK_API gsink_status gsink_set_grads_flat(gsink_model *model, const float *data, size_t count);

/* ------------------------------------------------------------------------ */
/* Forward and backward                                                     */
/* ------------------------------------------------------------------------ */

/* Runs the model on tokens (batch x seq_len, int32, row-major). If targets is
 * not NULL (same shape; entries < 0 are ignored) the mean cross-entropy over
 * the non-ignored targets is written to *loss (loss may be NULL). Stores all
 * activations for diagnostics and backward. On failure the previous forward
 * state is discarded (metrics then report GSINK_ERR_CALL_ORDER). */
GSINK_API gsink_status gsink_forward(gsink_model *model, const int32_t *tokens,
                                     const int32_t *targets, int batch, int seq_len,
                                     float *loss);

/* Flags for gsink_backward. */
#define GSINK_BACKWARD_ACCUMULATE 1u /* add to parameter gradients instead of overwriting */

/* Exact gradients of the last forward's mean loss with respect to every
 * parameter and every activation site. Needs a forward with targets
 * (GSINK_ERR_NO_TARGETS otherwise, GSINK_ERR_CALL_ORDER without a forward,
 * or after an optimizer step once a backward has run on that forward: see
 * gsink_get_logits). */
GSINK_API gsink_status gsink_backward(gsink_model *model, unsigned flags);
/* Sets all parameter gradients to zero. */
GSINK_API gsink_status gsink_zero_grad(gsink_model *model);

/* Shape of the last forward: batch, seq_len (either may be NULL). */
GSINK_API gsink_status gsink_last_shape(const gsink_model *model, int *batch, int *seq_len);
/* Copies the logits of the last forward (batch, seq_len, vocab). The
 * backward writes the logit gradients over the logits (one N x vocab buffer);
 * after it, this call (and another gsink_backward) recomputes them from the
 * kept final-norm output with the forward's LM-head product: bitwise the
 * forward's logits. After an optimizer step the weights are no longer the
 * forward's: both calls then return GSINK_ERR_CALL_ORDER until the next
 * forward (read the logits before gsink_backward to keep them). */
GSINK_API gsink_status gsink_get_logits(gsink_model *model, float *out, size_t count);

/* ------------------------------------------------------------------------ */
/* Activation sites                                                         */
/* ------------------------------------------------------------------------ */

/* Sites of one layer. Names are stable API. Widths: d = d_model,
 * q/z: n_heads*d_head, k/v: n_kv_heads*d_head, v_scaled: n_scale_heads*d_head
 * (n_kv_heads, or n_heads with the per-query-head V-scale), mlp_*: d_ff.
 * q and k are after RoPE. z is the attention output per head before W_O. */
typedef enum gsink_site {
    GSINK_SITE_RESID_IN = 0,      /* "resid_in"      blocks.{l}.hook_resid_pre   */
    GSINK_SITE_ATTN_NORM_OUT = 1, /* "attn_norm_out" blocks.{l}.ln1.hook_normalized */
    GSINK_SITE_Q = 2,             /* "q"             blocks.{l}.attn.hook_q      */
    GSINK_SITE_K = 3,             /* "k"             blocks.{l}.attn.hook_k      */
    GSINK_SITE_V = 4,             /* "v"             blocks.{l}.attn.hook_v      */
    GSINK_SITE_V_SCALED = 5,      /* "v_scaled"      blocks.{l}.attn.hook_v_scaled */
    GSINK_SITE_ATTN_OUT = 6,      /* "attn_out"      blocks.{l}.hook_attn_out    */
    GSINK_SITE_RESID_MID = 7,     /* "resid_mid"     blocks.{l}.hook_resid_mid   */
    GSINK_SITE_MLP_NORM_OUT = 8,  /* "mlp_norm_out"  blocks.{l}.ln2.hook_normalized */
    GSINK_SITE_MLP_OUT = 9,       /* "mlp_out"       blocks.{l}.hook_mlp_out     */
    GSINK_SITE_RESID_OUT = 10,    /* "resid_out"     blocks.{l}.hook_resid_post  */
    GSINK_SITE_Z = 11,            /* "z"             blocks.{l}.attn.hook_z      */
    GSINK_SITE_MLP_PRE = 12,      /* "mlp_pre"  (gate projection) blocks.{l}.mlp.hook_pre */
    GSINK_SITE_MLP_UP = 13,       /* "mlp_up"   (up projection)   blocks.{l}.mlp.hook_pre_linear */
    GSINK_SITE_MLP_POST = 14,     /* "mlp_post" silu(gate)*up      blocks.{l}.mlp.hook_post */
    GSINK_SITE_COUNT = 15
} gsink_site;

/* Canonical short name of a site, or NULL if out of range. */
GSINK_API const char *gsink_site_name(gsink_site site);
/* Parses a site name: a short name ("resid_out"), or a TransformerLens-style
 * name ("blocks.3.hook_resid_post"), which also yields the layer (else -1). */
GSINK_API gsink_status gsink_site_parse(const char *name, gsink_site *site, int *layer);
/* Number of heads and width per position of a site for this model
 * (heads is 1 for sites that are not per head). */
GSINK_API gsink_status gsink_site_dims(const gsink_model *model, gsink_site site,
                                       int *heads, int *width);

/* Batch aggregation of gradient norms. */
typedef enum gsink_batch_agg {
    GSINK_AGG_SUM_THEN_NORM = 0, /* paper: sum dL/dx_{b,t} over b, then ||.|| per t (default) */
    GSINK_AGG_PER_SEQUENCE = 1   /* ||dL/dx_{b,t}|| per (b,t), then mean over b */
} gsink_batch_agg;

#define GSINK_ALL_HEADS (-1)

/* Token-wise activation norms: out[t] = mean_b ||x_{b,t}|| for t < seq_len.
 * head = GSINK_ALL_HEADS uses the whole vector (for per-head sites this is the
 * head aggregate sqrt(sum_h ||x_h||^2)); head >= 0 selects one head. */
GSINK_API gsink_status gsink_get_activation_norms(gsink_model *model, int layer,
                                                  gsink_site site, int head,
                                                  float *out, size_t count);
/* Token-wise gradient norms of dL/dx at a site, aggregated over the batch as
 * agg says. Needs gsink_backward. */
GSINK_API gsink_status gsink_get_gradient_norms(gsink_model *model, int layer,
                                                gsink_site site, int head, int agg,
                                                float *out, size_t count);
/* Raw copy-out of a site's activation or gradient, shape (batch, seq_len,
 * width) with width from gsink_site_dims (heads*width). */
GSINK_API gsink_status gsink_get_activation(gsink_model *model, int layer, gsink_site site,
                                            float *out, size_t count);
GSINK_API gsink_status gsink_get_gradient(gsink_model *model, int layer, gsink_site site,
                                          float *out, size_t count);

/* ------------------------------------------------------------------------ */
/* Attention statistics (computed inside the attention forward)            */
/* ------------------------------------------------------------------------ */

typedef struct gsink_diag_options {
    size_t size;          /* sizeof(gsink_diag_options) */
    float sink_eps;       /* sink-rate threshold eps, default 0.3 */
    int32_t sink_window;  /* T_eps, default 64; used by the next forward */
    int32_t rgs_window;   /* T_e for R_GS, default 31 */
    int32_t sink_position;/* s, default 0 */
    int32_t batch_agg;    /* gsink_batch_agg for gradient metrics, default SUM_THEN_NORM */
} gsink_diag_options;

GSINK_API void gsink_diag_options_init_size(gsink_diag_options *opts, size_t size);
#define gsink_diag_options_init(opts) gsink_diag_options_init_size((opts), sizeof *(opts))
/* Sets the model's diagnostic defaults (T_eps takes effect at the next forward). */
GSINK_API gsink_status gsink_set_diag_options(gsink_model *model, const gsink_diag_options *opts);
/* Copies the model's diagnostic options; opts->size must be set (by
 * gsink_diag_options_init) and at most that many bytes are written. */
GSINK_API gsink_status gsink_get_diag_options(const gsink_model *model, gsink_diag_options *opts);

/* Column mass M_s = sum_{t>=s} a_ts and second moment S_s = sum_{t>=s} a_ts^2
 * for every key position s < seq_len of one layer and head, averaged over the
 * batch. M and S (either may be NULL) receive seq_len values. */
GSINK_API gsink_status gsink_attention_column_mass(gsink_model *model, int layer, int head,
                                                   float *M, float *S, size_t count);
/* Sink scores alpha_s^h = (1/T_eps) sum_{t=s}^{s+T_eps-1} a_ts, batch mean,
 * for every head of a layer (out has n_heads entries). T_eps is the window of
 * the last forward; s + T_eps must not exceed seq_len. */
GSINK_API gsink_status gsink_sink_scores(gsink_model *model, int layer, int s,
                                         float *out, size_t count);
/* Sink rate (1/H) sum_h [alpha_s^h > eps] of a layer. */
GSINK_API gsink_status gsink_sink_rate(gsink_model *model, int layer, int s, float eps,
                                       float *rate);
/* Full attention pattern a_tj (seq_len x seq_len) of one sequence and head,
 * recomputed from the stored q and k (for inspection and tests); zero above
 * the diagonal and, with a sliding window W, where t - j >= W. */
GSINK_API gsink_status gsink_attention_pattern(gsink_model *model, int layer, int batch_index,
                                               int head, float *out, size_t count);

/* ------------------------------------------------------------------------ */
/* Derived metrics                                                          */
/* ------------------------------------------------------------------------ */

/* R_GS(s; T_e) = ||g_s|| / ((1/T_e) sum_{0<=t<=T_e, t!=s} ||g_t||) with
 * g = dL/d attn_norm_out, aggregated over the batch with agg. */
GSINK_API gsink_status gsink_gradient_sink_ratio(gsink_model *model, int layer, int s,
                                                 int t_e, int agg, float *ratio);

typedef enum gsink_branch { GSINK_BRANCH_ATTN = 0, GSINK_BRANCH_MLP = 1 } gsink_branch;

/* Per-token branch gradient reshaping, each output seq_len values (any may be
 * NULL): g1 = dL/d(branch out), g2 = dL/d(normed input), g3 = dL/dh_in - g1;
 * Bloat = ||g2||/||g1||, Change = ||g1+g3||/||g1||, Compress = ||g3||/||g2||.
 * Vectors are summed over the batch first (SUM_THEN_NORM) or ratios are taken
 * per sequence and averaged (PER_SEQUENCE). */
GSINK_API gsink_status gsink_branch_ratios(gsink_model *model, int layer, int branch, int agg,
                                           float *bloat, float *change, float *compress,
                                           size_t count);
/* Massive-activation ratio ||x_0|| / mean_{t=1..15} ||x_t|| of a site (batch-
 * mean activation norms). Needs seq_len >= 16. */
GSINK_API gsink_status gsink_massive_activation_ratio(gsink_model *model, int layer,
                                                      gsink_site site, float *ratio);
/* Split of g = dL/d attn_norm_out into the Q, K and V paths (g = gq + gk + gv,
 * gq = dL/dq_pre W_Q etc.): token-wise norms (seq_len each, batch aggregated
 * with agg). Any output may be NULL. */
GSINK_API gsink_status gsink_qkv_gradient_split(gsink_model *model, int layer, int agg,
                                                float *gq, float *gk, float *gv,
                                                size_t count);

/* JSON report of every metric per layer and head plus a summary; schema
 * "gsink.report/1" (docs/report-schema.md). *json is freed with gsink_free.
 * Needs forward and backward; opts may be NULL for the model's defaults. */
GSINK_API gsink_status gsink_report_json(gsink_model *model, const gsink_diag_options *opts,
                                         char **json);

/* ------------------------------------------------------------------------ */
/* Streaming diagnostics over micro-batches (docs/diagnostics.md)           */
/* ------------------------------------------------------------------------ */

/* A diagnostic batch of N sequences run as micro-batches: each
 * gsink_analysis_add is one forward and backward, and only the sums the
 * measurements need are kept across micro-batches (memory independent of N;
 * see docs/diagnostics.md for the formula). The report equals
 * gsink_report_json after a forward and backward of the whole batch at once
 * (loss = mean over every target token of the N sequences), up to float
 * rounding. Works on any model, also one created with GSINK_MODEL_ANALYSIS |
 * GSINK_MODEL_DISCARD_SITE_GRADS | GSINK_MODEL_DISCARD_SITE_ACTIVATIONS (the
 * activation norms are folded during each layer's forward, the site
 * gradients during each layer's backward); the model's parameter gradients are
 * neither computed nor touched. The sums live in the model's backend memory
 * (a micro-batch transfers nothing to the host; a report, the gradient
 * norms or gsink_analysis_get_state copy them back once). Freeing the model
 * first moves them to the host: the state functions, _counts, _memory,
 * _errmsg and _free keep working, the other calls fail with
 * GSINK_ERR_CALL_ORDER. Used by one thread at a time, like every handle. */
typedef struct gsink_analysis gsink_analysis;

/* Starts an analysis of sequences of seq_len tokens. opts (may be NULL: the
 * model's diagnostic options) sets sink_window (T_eps) for the forwards and
 * the report's defaults. On failure *out is NULL (message: gsink_model_errmsg). */
GSINK_API gsink_status gsink_analysis_begin(gsink_model *model, int seq_len,
                                            const gsink_diag_options *opts,
                                            gsink_analysis **out);
/* Adds a micro-batch: tokens (batch, seq_len) row-major; targets the same
 * shape (< 0 ignored), or NULL for next-token targets within each sequence
 * (tokens[b][t+1], none at the last position). seq_len must be the one given
 * to gsink_analysis_begin (GSINK_ERR_SHAPE_MISMATCH). Bad input changes
 * nothing. Leaves the model holding this micro-batch's forward. */
GSINK_API gsink_status gsink_analysis_add(gsink_analysis *a, const int32_t *tokens,
                                          const int32_t *targets, int batch, int seq_len);
/* Ends the adding: gsink_analysis_add then gives GSINK_ERR_CALL_ORDER. The
 * report, accessors and state functions keep working. */
GSINK_API gsink_status gsink_analysis_finish(gsink_analysis *a);
/* The gsink.report/1 JSON of every micro-batch so far (at least one), with
 * "input": {"batch": N, ..., "sequences": N, "micro_batches": k}. opts may
 * be NULL (the options of gsink_analysis_begin); batch_agg, sink_position,
 * sink_eps and rgs_window may differ from them, sink_window may not. Freed
 * with gsink_free. */
GSINK_API gsink_status gsink_analysis_report_json(gsink_analysis *a,
                                                  const gsink_diag_options *opts,
                                                  char **json);
/* Gradient-norm profile of a site over the batch (agg as in
 * gsink_get_gradient_norms): *len (may be NULL) receives its length, seq_len
 * for attn_norm_out (Figure 1, R_GS) and min(seq_len, 64) for the other
 * sites; out may be NULL to ask the length. head >= 0: q, k, v only. */
GSINK_API gsink_status gsink_analysis_gradient_norms(gsink_analysis *a, int layer,
                                                     gsink_site site, int head, int agg,
                                                     float *out, size_t count, size_t *len);
/* Sequences, micro-batches and target tokens added so far (any may be NULL). */
GSINK_API gsink_status gsink_analysis_counts(gsink_analysis *a, int64_t *sequences,
                                             int64_t *micro_batches, int64_t *n_targets);
/* Bytes of the sums (fixed at begin, independent of the number of
 * micro-batches), held in the model's backend memory (device memory on
 * CUDA, counted by gsink_model_memory; a report or the gradient norms add
 * a host copy of the same size), and the largest backend temporaries of one
 * micro-batch so far. */
GSINK_API gsink_status gsink_analysis_memory(gsink_analysis *a, uint64_t *state_bytes,
                                             uint64_t *temp_bytes);
/* The sums as one flat array of doubles, for distributed runs: every value
 * is a sum over sequences, so the element-wise sum of the states of several
 * handles (same model, options and seq_len) set into one handle gives the
 * report of the union of their micro-batches. */
GSINK_API gsink_status gsink_analysis_state_size(gsink_analysis *a, size_t *n);
GSINK_API gsink_status gsink_analysis_get_state(gsink_analysis *a, double *buf, size_t n);
GSINK_API gsink_status gsink_analysis_set_state(gsink_analysis *a, const double *buf, size_t n);
/* Last error message of the analysis ("" if none). */
GSINK_API const char *gsink_analysis_errmsg(const gsink_analysis *a);
/* Frees the analysis (NULL is allowed), before or after its model. */
GSINK_API void gsink_analysis_free(gsink_analysis *a);

/* Progress callback: sequences done of total; nonzero stops the run with
 * GSINK_ERR_CANCELLED. */
typedef int (*gsink_progress_fn)(int64_t done, int64_t total, void *user_data);
/* One call: n_seq sequences (n_seq, seq_len) row-major with next-token
 * targets, in micro-batches of micro_batch (the last may be smaller); the
 * report as gsink_analysis_report_json. progress may be NULL. */
GSINK_API gsink_status gsink_analyze_sequences(gsink_model *model, const int32_t *tokens,
                                               int n_seq, int seq_len, int micro_batch,
                                               const gsink_diag_options *opts,
                                               gsink_progress_fn progress, void *user_data,
                                               char **json);

/* ------------------------------------------------------------------------ */
/* V-scale                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum gsink_vscale_mode {
    GSINK_VSCALE_OFF = 0,
    GSINK_VSCALE_FULL = 1,          /* v^ = phi(||v||^2) v in forward and backward */
    GSINK_VSCALE_BACKWARD_ONLY = 2  /* forward identity, backward applies the Jacobian */
} gsink_vscale_mode;

typedef struct gsink_vscale_options {
    size_t size;            /* sizeof(gsink_vscale_options) */
    int32_t mode;           /* gsink_vscale_mode, default FULL */
    float sigma;            /* default 0.02; must be > 0 */
    int32_t learnable_theta;/* default 1 (FULL only; BACKWARD_ONLY freezes theta) */
    int32_t per_query_head; /* 0: per KV head (default); 1: per query head */
} gsink_vscale_options;

GSINK_API void gsink_vscale_options_init_size(gsink_vscale_options *opts, size_t size);
#define gsink_vscale_options_init(opts) gsink_vscale_options_init_size((opts), sizeof *(opts))
/* Enables (or with mode OFF disables) V-scale on every layer. theta is reset
 * to 0 when the number of scale heads changes. */
GSINK_API gsink_status gsink_vscale_enable(gsink_model *model, const gsink_vscale_options *opts);
/* Current V-scale settings; opts->size must be set (by gsink_vscale_options_init)
 * and at most that many bytes are written. */
GSINK_API gsink_status gsink_vscale_get(const gsink_model *model, gsink_vscale_options *opts);
/* Number of theta values: n_layers * n_scale_heads (0 when off). */
GSINK_API gsink_status gsink_vscale_theta_count(const gsink_model *model, size_t *count);
/* theta (n_layers, n_scale_heads) read / write, and its gradient. */
GSINK_API gsink_status gsink_vscale_get_theta(gsink_model *model, float *out, size_t count);
GSINK_API gsink_status gsink_vscale_set_theta(gsink_model *model, const float *data, size_t count);
GSINK_API gsink_status gsink_vscale_get_theta_grad(gsink_model *model, float *out, size_t count);

/* ------------------------------------------------------------------------ */
/* Operations on caller buffers (embedding; since 0.1.0)                    */
/* ------------------------------------------------------------------------ */

/* The model's attention and V-scale kernels, run on buffers the caller owns
 * (docs/embedding.md). An ops handle holds one backend: the CPU (buffers are
 * host pointers; the call returns when the results are written) or a CUDA
 * device (buffers are device pointers of that device; the CUDA module is
 * loaded at run time as for models). On CUDA the ops run on the handle's own
 * stream and the call waits for them, unless gsink_ops_set_stream gave the
 * caller's stream: then they are only queued on it, in order with the
 * caller's other work, and the caller synchronises as for its own kernels.
 * An ops handle is used by one thread at a time (GSINK_ERR_BUSY otherwise).
 *
 * Layout (GSINK_ATTN_LAYOUT_BTHD, the only one): row-major, contiguous,
 *   q, out, dq, dout  (batch, seq, n_heads,    d_head)
 *   k, dk             (batch, seq, n_kv_heads, d_head)
 *   v, dv             (batch, seq, n_v_heads,  d_head)
 *   lse, col_*        (batch, n_heads, seq)
 * i.e. element (b, t, h, i) of q is q[((b*seq + t)*n_heads + h)*d_head + i].
 * Query head h reads key head h / (n_heads/n_kv_heads) and value head
 * h / (n_heads/n_v_heads). Attention is causal. */
typedef struct gsink_ops gsink_ops;

typedef struct gsink_ops_options {
    size_t size;          /* sizeof(gsink_ops_options) */
    int32_t device;       /* gsink_device_kind, default CPU */
    int32_t device_index; /* default 0 */
    int32_t n_threads;    /* CPU threads: 0 (default) = one per CPU this process may
                           * run on; at most gsink_max_threads() */
    int32_t precision;    /* gsink_precision of the attention's matrix products,
                           * default GSINK_PRECISION_FP32; TF32 and BF16 (tensor
                           * cores, as gsink_model_options.precision) need CUDA,
                           * else GSINK_ERR_UNSUPPORTED (since 0.1.0) */
} gsink_ops_options;

GSINK_API void gsink_ops_options_init_size(gsink_ops_options *opts, size_t size);
#define gsink_ops_options_init(opts) gsink_ops_options_init_size((opts), sizeof *(opts))
/* Creates an ops handle (opts may be NULL: the CPU). No CUDA device:
 * GSINK_ERR_NO_DEVICE. On failure *out is NULL. */
GSINK_API gsink_status gsink_ops_create(const gsink_ops_options *opts, gsink_ops **out);
/* Frees an ops handle (NULL is allowed; refused like gsink_model_free while
 * another thread uses it). A borrowed stream is synchronised, not destroyed. */
GSINK_API void gsink_ops_free(gsink_ops *ops);
/* Last error message of the handle ("" if none). */
GSINK_API const char *gsink_ops_errmsg(const gsink_ops *ops);
/* CUDA: later ops are queued on stream (a cudaStream_t, borrowed; it must
 * outlive its use by the handle) and return without waiting; NULL returns to
 * the handle's own stream and synchronous calls. Work queued on the previous
 * stream is finished first. CPU: only NULL is accepted
 * (GSINK_ERR_INVALID_ARGUMENT otherwise). */
GSINK_API gsink_status gsink_ops_set_stream(gsink_ops *ops, void *stream);

typedef enum gsink_attn_layout {
    GSINK_ATTN_LAYOUT_BTHD = 0 /* (batch, seq, heads, d_head) contiguous */
} gsink_attn_layout;

/* Attention shape. n_heads must be a multiple of n_kv_heads; n_v_heads is
 * n_kv_heads or n_heads (V-scale per query head). */
typedef struct gsink_attn_desc {
    size_t size;           /* sizeof(gsink_attn_desc), set by gsink_attn_desc_init */
    int32_t batch;         /* >= 1 */
    int32_t seq;           /* >= 1 */
    int32_t n_heads;       /* query heads */
    int32_t n_kv_heads;    /* key heads */
    int32_t n_v_heads;     /* value heads */
    int32_t d_head;        /* 1..256 */
    float softmax_scale;   /* scores are softmax_scale * q.k; 0 (default) = 1/sqrt(d_head) */
    int32_t sink_window;   /* T_eps of col_win, default 64, >= 1 */
    int32_t layout;        /* gsink_attn_layout, default BTHD */
} gsink_attn_desc;

/* Fills a descriptor with the defaults (all shape fields 0) and sets size. */
GSINK_API void gsink_attn_desc_init_size(gsink_attn_desc *desc, size_t size);
#define gsink_attn_desc_init(desc) gsink_attn_desc_init_size((desc), sizeof *(desc))

/* Causal attention forward, exactly the model's kernel: out = softmax(scale
 * q k^T + causal mask) v and lse[b,h,t] = log-sum-exp of row t's scaled
 * scores (needed by the backward). The column statistics of the
 * probabilities a_ts are summed inside the kernel, each (batch, n_heads,
 * seq), any of them NULL to skip: col_mass[s] = M_s = sum_{t>=s} a_ts,
 * col_sq[s] = S_s = sum_{t>=s} a_ts^2, col_win[s] = sum_{t=s}^{min(seq-1,
 * s+T_eps-1)} a_ts (gsink_metric_sink_scores turns it into alpha_s^h).
 * Status: NULL_ARGUMENT (ops, desc, q, k, v, out, lse), INVALID_ARGUMENT
 * (desc->size wrong, bad shape, scale or window), UNSUPPORTED (layout), or
 * the backend's failure. */
GSINK_API gsink_status gsink_ops_attention_forward(gsink_ops *ops, const gsink_attn_desc *desc,
                                                   const float *q, const float *k, const float *v,
                                                   float *out, float *lse, float *col_mass,
                                                   float *col_sq, float *col_win);
/* Attention backward from dout = dL/dout, the forward's q, k, v, out and
 * lse: dq, dk, dv written (not accumulated). The column statistics (any may
 * be NULL) are recomputed as in the forward (the CUDA model takes them
 * here). */
GSINK_API gsink_status gsink_ops_attention_backward(gsink_ops *ops, const gsink_attn_desc *desc,
                                                    const float *q, const float *k,
                                                    const float *v, const float *out,
                                                    const float *lse, const float *dout,
                                                    float *dq, float *dk, float *dv,
                                                    float *col_mass, float *col_sq,
                                                    float *col_win);
/* The column statistics alone, from q, k and the forward's lse (at least one
 * output must be given). */
GSINK_API gsink_status gsink_ops_attention_stats(gsink_ops *ops, const gsink_attn_desc *desc,
                                                 const float *q, const float *k,
                                                 const float *lse, float *col_mass,
                                                 float *col_sq, float *col_win);

/* V-scale shape and settings. v is (n_rows, heads_in, d_head); out, dout and
 * theta/dtheta have heads_out heads: heads_in (per KV head) or a multiple of
 * it (per query head: out head j reads v head j / (heads_out/heads_in)).
 * C_j = d_model * d_head * sigma^2 * exp(theta[j]) and phi = r/(r + C_j),
 * r = ||v||^2, as the model computes them. */
typedef struct gsink_vscale_desc {
    size_t size;        /* sizeof(gsink_vscale_desc), set by gsink_vscale_desc_init */
    int32_t mode;       /* gsink_vscale_mode, default FULL */
    int32_t n_rows;     /* token rows, batch * seq */
    int32_t heads_in;   /* heads of v (the model: n_kv_heads) */
    int32_t heads_out;  /* heads of out and theta (n_kv_heads or n_heads) */
    int32_t d_head;
    int32_t d_model;    /* enters C_j (the model's d_model) */
    float sigma;        /* default 0.02; > 0 */
} gsink_vscale_desc;

GSINK_API void gsink_vscale_desc_init_size(gsink_vscale_desc *desc, size_t size);
#define gsink_vscale_desc_init(desc) gsink_vscale_desc_init_size((desc), sizeof *(desc))
/* out = phi(||v||^2) v (FULL); OFF and BACKWARD_ONLY copy v (expanded to
 * heads_out). theta (heads_out values) may be NULL for OFF only. */
GSINK_API gsink_status gsink_ops_vscale_forward(gsink_ops *ops, const gsink_vscale_desc *desc,
                                                const float *v, const float *theta, float *out);
/* dv (written) from dout = dL/dout: the Jacobian of FULL and BACKWARD_ONLY
 * (identity for OFF), summed over the heads_out/heads_in expanded heads.
 * dtheta (heads_out values, may be NULL) is accumulated (+=) in FULL mode
 * only; BACKWARD_ONLY and OFF leave it untouched. */
GSINK_API gsink_status gsink_ops_vscale_backward(gsink_ops *ops, const gsink_vscale_desc *desc,
                                                 const float *v, const float *theta,
                                                 const float *dout, float *dv, float *dtheta);

/* ------------------------------------------------------------------------ */
/* Metrics on caller tensors (host memory, no handle; since 0.1.0)          */
/* ------------------------------------------------------------------------ */

/* Pure functions on host float32 arrays computing exactly what the model's
 * diagnostics compute from its own tensors (the same code). Thread-safe.
 * Failures: NULL_ARGUMENT, INVALID_ARGUMENT (shape, agg), OUT_OF_RANGE
 * (positions, windows), BUFFER_TOO_SMALL (count). */

/* Token-wise norms of x (batch, seq, heads*head_width), out[t] for t < seq
 * (count >= seq): one head (head >= 0) or the whole vector
 * (GSINK_ALL_HEADS). agg: SUM_THEN_NORM ||sum_b x_bt|| or PER_SEQUENCE
 * mean_b ||x_bt|| (the model's activation norms are PER_SEQUENCE). */
GSINK_API gsink_status gsink_metric_token_norms(const float *x, int batch, int seq, int heads,
                                                int head_width, int head, int agg, float *out,
                                                size_t count);
/* R_GS(s; T_e) = g[s] / ((1/T_e) sum_{0<=t<=T_e, t!=s} g[t]) from token-wise
 * gradient norms g (count = seq values; 1 <= T_e < seq, 0 <= s < seq):
 * g = gsink_metric_token_norms of dL/d attn_norm_out, as gsink_gradient_sink_ratio. */
GSINK_API gsink_status gsink_metric_gradient_sink_ratio(const float *norms, size_t count, int s,
                                                        int t_e, float *ratio);
/* Massive-activation ratio norms[0] / mean(norms[1..15]) (count >= 16), with
 * norms the PER_SEQUENCE token norms of an activation (t0/early). */
GSINK_API gsink_status gsink_metric_massive_activation_ratio(const float *norms, size_t count,
                                                             float *ratio);
/* Batch mean of a column statistic (batch, heads, seq) into out (heads,
 * seq): M_s and S_s as gsink_attention_column_mass gives them. */
GSINK_API gsink_status gsink_metric_column_mean(const float *stat, int batch, int heads, int seq,
                                                float *out, size_t count);
/* Sink scores alpha_s^h = batch mean of col_win[b,h,s] / T_eps for every head
 * (out: heads values) from the col_win (batch, heads, seq) of an attention
 * op with window sink_window; s + sink_window must not exceed seq. */
GSINK_API gsink_status gsink_metric_sink_scores(const float *col_win, int batch, int heads,
                                                int seq, int sink_window, int s, float *out,
                                                size_t count);
/* Sink rate (1/H) sum_h [alpha_s^h > eps] from the same col_win. */
GSINK_API gsink_status gsink_metric_sink_rate(const float *col_win, int batch, int heads, int seq,
                                              int sink_window, int s, float eps, float *rate);
/* Branch gradient reshaping (gsink_branch_ratios) from three gradient
 * tensors (batch, seq, width): grad_in = dL/dh_in (the branch's residual
 * input), grad_out = dL/d(branch out) (its residual output), grad_normed =
 * dL/d(normed input). Bloat, Change, Compress: seq values each, any NULL. */
GSINK_API gsink_status gsink_metric_branch_ratios(const float *grad_in, const float *grad_out,
                                                  const float *grad_normed, int batch, int seq,
                                                  int width, int agg, float *bloat,
                                                  float *change, float *compress, size_t count);

/* ------------------------------------------------------------------------ */
/* Optimizer (AdamW + clipping + cosine schedule)                           */
/* ------------------------------------------------------------------------ */

typedef struct gsink_optimizer gsink_optimizer;

typedef struct gsink_optimizer_options {
    size_t size;          /* sizeof(gsink_optimizer_options) */
    float lr;             /* peak learning rate, default 3e-4 */
    float min_lr;         /* final learning rate of the cosine, default 3e-5 */
    int32_t warmup_steps; /* linear warm-up steps, default 0 */
    int32_t total_steps;  /* schedule length (cosine ends here); 0 = constant lr */
    float beta1;          /* 0.9 */
    float beta2;          /* 0.95 */
    float eps;            /* 1e-8 */
    float weight_decay;   /* 0.1, applied to 2-D matrices only */
    float grad_clip;      /* global norm clip, default 1.0; <= 0 disables */
    int32_t accumulation_steps; /* micro-batches per step: grads are divided by it, default 1 */
} gsink_optimizer_options;

GSINK_API void gsink_optimizer_options_init_size(gsink_optimizer_options *opts, size_t size);
#define gsink_optimizer_options_init(opts) gsink_optimizer_options_init_size((opts), sizeof *(opts))
/* Creates an AdamW optimizer on the model's parameters (its state lives in
 * the model's backend). A model with bf16/fp16 weights (weight_dtype): the
 * optimizer also holds an fp32 master copy of each 16-bit matrix, taken from
 * the stored weights now (and again for a tensor gsink_set_param writes);
 * each step updates the masters and rounds them into storage, so updates
 * below half an ulp of a weight accumulate. */
GSINK_API gsink_status gsink_optimizer_create(gsink_model *model,
                                              const gsink_optimizer_options *opts,
                                              gsink_optimizer **out);
/* Frees an optimizer (NULL is allowed), before or after its model; refused
 * like gsink_model_free while another thread uses the optimizer or its model. */
GSINK_API void gsink_optimizer_free(gsink_optimizer *opt);
/* Last error message of the optimizer ("" if none; a constant text while
 * another thread uses it, as gsink_model_errmsg). */
GSINK_API const char *gsink_optimizer_errmsg(const gsink_optimizer *opt);
/* Learning rate the schedule gives at step (0-based); NaN (GSINK_ERR_BUSY in
 * gsink_last_error) while another thread uses the optimizer. */
GSINK_API float gsink_optimizer_lr_at(const gsink_optimizer *opt, int64_t step);
/* One AdamW update from the model's accumulated gradients, then zeroes them.
 * *grad_norm (may be NULL) receives the pre-clip global gradient norm. NaN/Inf
 * gradients give GSINK_ERR_NON_FINITE and leave the weights untouched. */
GSINK_API gsink_status gsink_optimizer_step(gsink_optimizer *opt, float *grad_norm);
/* Number of steps taken; -1 (GSINK_ERR_BUSY in gsink_last_error) while
 * another thread uses the optimizer. */
GSINK_API int64_t gsink_optimizer_step_count(const gsink_optimizer *opt);
/* Saves the optimizer state (step and AdamW moments of every parameter and
 * of V-scale theta; the fp32 master weights of a model with 16-bit weights)
 * to path, written atomically (temporary file, fsync, rename). Weights are
 * not included: save them with gsink_model_save. */
GSINK_API gsink_status gsink_optimizer_save(gsink_optimizer *opt, const char *path);
/* Restores a state written by gsink_optimizer_save for a model of the same
 * layout. The file is verified (magic, version, sizes, checksum) before
 * anything changes; a corrupt or mismatched file gives GSINK_ERR_FORMAT or
 * GSINK_ERR_SHAPE_MISMATCH and leaves the optimizer as it was. */
GSINK_API gsink_status gsink_optimizer_load(gsink_optimizer *opt, const char *path);

/* ------------------------------------------------------------------------ */
/* Checkpoints and weights                                                  */
/* ------------------------------------------------------------------------ */

/* Loads a model: a HuggingFace directory (config.json + model.safetensors or
 * sharded model.safetensors.index.json), a .safetensors file with a
 * config.json beside it, or a llama.cpp .gguf file. opts may be NULL.
 * Every file read must be a regular file (a FIFO or device gives
 * GSINK_ERR_IO at once, never a wait). Every tensor's presence, shape and
 * dtype is checked against the configuration before the model is allocated.
 * Duplicate tensor names or GGUF metadata keys, and JSON keys holding a NUL
 * character, give GSINK_ERR_FORMAT. A safetensors file whose __metadata__
 * has "gsink.checksum" ("fnv1a64:" + 16 hex digits, the FNV-1a 64 of the
 * data section) must match it (GSINK_ERR_FORMAT otherwise); files without
 * the key load as before. */
GSINK_API gsink_status gsink_model_load(const char *path, const gsink_model_options *opts,
                                        gsink_model **out);
/* Saves weights as dir/model.safetensors + dir/config.json (HF
 * LlamaForCausalLM), written atomically. Creates dir if needed. The
 * safetensors __metadata__ holds "format": "pt" and "gsink.checksum" (see
 * gsink_model_load), both strings, so HF readers open the file as usual. */
GSINK_API gsink_status gsink_model_save(gsink_model *model, const char *dir);

/* ------------------------------------------------------------------------ */
/* Tokenizer (byte-level BPE; SentencePiece-style BPE)                      */
/* ------------------------------------------------------------------------ */

typedef struct gsink_tokenizer gsink_tokenizer;

/* Builds a tokenizer from a GGUF file's tokenizer.ggml.* metadata:
 * tokenizer.ggml.model "gpt2" (byte-level BPE; tokenizer.ggml.pre: gpt2,
 * smollm, llama-bpe, qwen2, chatglm-bpe, tekken, gpt-4o) or "llama"
 * (SentencePiece BPE by token score, as sentencepiece and llama.cpp: Llama 2,
 * Mistral 7B). */
GSINK_API gsink_status gsink_tokenizer_load_gguf(const char *path, gsink_tokenizer **out);
/* Builds a tokenizer from a HuggingFace tokenizer.json (path: the file, or a
 * model directory holding it): byte-level BPE whose pre-tokenizer is
 * ByteLevel, or Split(regex of Llama 3, Qwen2, GLM-4, Mistral's Tekken,
 * tiktoken's o200k) / Digits (SmolLM2) then ByteLevel; or SentencePiece-style
 * BPE over characters (Llama 2, Mistral 7B: the normalizer
 * Prepend("\u2581") + Replace(" ", "\u2581"), or a Metaspace pre-tokenizer;
 * byte fallback, fuse_unk; see docs/io.md). bos/eos come from
 * tokenizer_config.json beside it when present.
 * GSINK_ERR_UNSUPPORTED for other models, regexes and normalizers;
 * GSINK_ERR_FORMAT for malformed files (since 0.1.0). */
GSINK_API gsink_status gsink_tokenizer_load_json(const char *path, gsink_tokenizer **out);
/* Id of the token whose vocabulary text is `text` (NUL-terminated; added
 * tokens by their content, e.g. "<|endoftext|>", ordinary tokens in their
 * vocabulary form, e.g. "\xC4\xA0the" for " the" (byte-level) or
 * "\xE2\x96\x81the" (SentencePiece-style)). GSINK_ERR_UNKNOWN_NAME
 * when there is none (since 0.1.0). */
GSINK_API gsink_status gsink_tokenizer_token_id(const gsink_tokenizer *tok, const char *text, int32_t *id);
/* Frees a tokenizer (NULL is allowed); refused like gsink_model_free while
 * another thread uses it. */
GSINK_API void gsink_tokenizer_free(gsink_tokenizer *tok);
/* Last error message of the tokenizer ("" if none; a constant text while
 * another thread uses it). */
GSINK_API const char *gsink_tokenizer_errmsg(const gsink_tokenizer *tok);
GSINK_API gsink_status gsink_tokenizer_vocab_size(const gsink_tokenizer *tok, int32_t *n);
/* Special token ids (-1 if the vocabulary has none). */
GSINK_API gsink_status gsink_tokenizer_special(const gsink_tokenizer *tok, int32_t *bos,
                                               int32_t *eos);

#define GSINK_ENCODE_PARSE_SPECIAL 1u /* recognise special tokens' text */
#define GSINK_ENCODE_ADD_BOS 2u

/* Encodes UTF-8 text. Writes at most capacity ids; *n_ids receives the total
 * needed (GSINK_ERR_BUFFER_TOO_SMALL if more than capacity).
 * Added tokens (user-defined always, control with GSINK_ENCODE_PARSE_SPECIAL)
 * are matched as HF tokenizers does: leftmost, then longest; time is linear
 * in the text whatever the number of added tokens.
 * Input with no token in the vocabulary takes, per byte-level image (per
 * character with a SentencePiece-style tokenizer), the byte fallback tokens
 * "<0xXX>" of its UTF-8 bytes when the vocabulary has BYTE tokens, else the
 * unknown token (tokenizer.ggml.unknown_token_id, or the first UNKNOWN
 * token; a run of them is one with fuse_unk), as HF's BPE does; with neither, encoding fails
 * with GSINK_ERR_INVALID_ARGUMENT naming the offset of the first byte it
 * cannot encode (input is never dropped). */
GSINK_API gsink_status gsink_tokenizer_encode(gsink_tokenizer *tok, const char *text,
                                              size_t text_len, unsigned flags, int32_t *ids,
                                              size_t capacity, size_t *n_ids);
/* Decodes ids to UTF-8 into buf (NUL-terminated); *len receives the length
 * needed without the NUL (GSINK_ERR_BUFFER_TOO_SMALL if it does not fit). */
GSINK_API gsink_status gsink_tokenizer_decode(gsink_tokenizer *tok, const int32_t *ids,
                                              size_t n_ids, char *buf, size_t buf_size,
                                              size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* GSINK_H */
