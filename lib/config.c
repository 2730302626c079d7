/* config.c - model configuration presets and validation. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "internal.h"

typedef struct preset {
    const char *name;
    int32_t vocab, d_model, n_layers, n_heads, n_kv_heads, d_head, d_ff, max_seq;
    int32_t tie;
} preset;

/* paper-*: Table 3 of the paper (untied heads: ~101M / ~304M / ~1.04B parameters). */
static const preset presets[] = {
    {"tiny", 512, 64, 2, 4, 2, 16, 172, 256, 1},
    {"micro", 64, 16, 2, 2, 1, 8, 40, 64, 1},
    {"small", 4096, 256, 4, 4, 2, 64, 704, 512, 1},
    {"bench-21m", 8192, 512, 4, 8, 8, 64, 1408, 1024, 0}, /* untied: 21.2M */
    {"paper-0.1b", 50257, 512, 16, 8, 8, 64, 1408, 1024, 0},
    {"paper-0.3b", 50257, 1024, 17, 8, 4, 128, 2816, 2048, 0},
    {"paper-1b", 50257, 2048, 18, 16, 8, 128, 5504, 2048, 0},
};
#define N_PRESETS (sizeof presets / sizeof presets[0])

/* Writes at most size bytes of a preset into cfg (the caller's struct may be
 * an older, smaller version). */
static void fill(gsink_config *out, const preset *p, size_t size)
{
    gsink_config full, *cfg = &full;
    memset(cfg, 0, sizeof *cfg);
    cfg->vocab_size = p->vocab;
    cfg->d_model = p->d_model;
    cfg->n_layers = p->n_layers;
    cfg->n_heads = p->n_heads;
    cfg->n_kv_heads = p->n_kv_heads;
    cfg->d_head = p->d_head;
    cfg->d_ff = p->d_ff;
    cfg->max_seq_len = p->max_seq;
    cfg->rms_eps = 1e-5f;
    cfg->rope_theta = 10000.0f;
    cfg->tie_embeddings = p->tie;
    cfg->init_std = 0.02f;
    cfg->arch = GSINK_ARCH_LLAMA;
    cfg->qkv_bias = 0;
    cfg->rope_scaling = GSINK_ROPE_NONE;
    cfg->rope_factor = 1.0f;
    cfg->rope_low_freq_factor = 1.0f;
    cfg->rope_high_freq_factor = 4.0f;
    cfg->rope_original_max_pos = 0;
    cfg->rope_beta_fast = 32.0f;
    cfg->rope_beta_slow = 1.0f;
    cfg->rope_attention_factor = 0.0f;
    cfg->rope_truncate = 1;
    cfg->sliding_window = 0;
    gsink__copy_sized(out, size, cfg, sizeof *cfg);
}

void gsink_config_init_size(gsink_config *cfg, size_t size)
{
    fill(cfg, &presets[0], size);
}

gsink_status gsink_config_preset_size(const char *name, gsink_config *cfg, size_t size)
{
    if (!name || !cfg) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "preset name or config is NULL");
    if (size < sizeof(size_t)) return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "config size %zu is too small", size);
    for (size_t i = 0; i < N_PRESETS; i++) {
        if (strcmp(presets[i].name, name) == 0) {
            fill(cfg, &presets[i], size);
            return GSINK_OK;
        }
    }
    return gsink__fail(NULL, GSINK_ERR_UNKNOWN_NAME, "unknown preset '%s'", name);
}

const char *gsink_config_preset_name(int index)
{
    if (index < 0 || (size_t)index >= N_PRESETS) return NULL;
    return presets[index].name;
}

/* Size of gsink_config before the architecture fields were appended. */
#define CONFIG_SIZE_V0 (offsetof(gsink_config, init_std) + sizeof(float))

void gsink__config_normalize(const gsink_config *in, gsink_config *out)
{
    gsink_config_init(out);
    size_t n = in->size < sizeof *out ? in->size : sizeof *out;
    memcpy(out, in, n);
    out->size = sizeof *out;
}

/* Limits that keep every derived size far from overflow and allocations sane. */
#define MAX_DIM (1 << 20)
#define MAX_VOCAB (1 << 22)
#define MAX_LAYERS 4096
#define MAX_SEQ (1 << 20)

static gsink_status validate_full(const gsink_config *cfg);

gsink_status gsink_config_validate(const gsink_config *in)
{
    if (!in) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "config is NULL");
    if (in->size < CONFIG_SIZE_V0)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG,
                           "config size %zu is smaller than expected %zu (call gsink_config_init)",
                           in->size, sizeof(gsink_config));
    gsink_config full;
    gsink__config_normalize(in, &full);
    return validate_full(&full);
}

static gsink_status validate_full(const gsink_config *cfg)
{
#define RANGE(field, lo, hi)                                                                 \
    if (cfg->field < (lo) || cfg->field > (hi))                                               \
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, #field " = %ld is outside [%ld, %ld]", \
                           (long)cfg->field, (long)(lo), (long)(hi));
    RANGE(vocab_size, 1, MAX_VOCAB);
    RANGE(d_model, 1, MAX_DIM);
    RANGE(n_layers, 1, MAX_LAYERS);
    RANGE(n_heads, 1, 4096);
    RANGE(n_kv_heads, 1, 4096);
    RANGE(d_head, 2, 4096);
    RANGE(d_ff, 1, MAX_DIM);
    RANGE(max_seq_len, 1, MAX_SEQ);
#undef RANGE
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "n_heads (%d) is not a multiple of n_kv_heads (%d)",
                           cfg->n_heads, cfg->n_kv_heads);
    if (cfg->d_head % 2 != 0)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "d_head (%d) must be even for RoPE", cfg->d_head);
    if ((int64_t)cfg->n_heads * cfg->d_head > MAX_DIM)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "n_heads * d_head is too large");
    if (!(cfg->rms_eps > 0.0f) || !(cfg->rms_eps < 1.0f))
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "rms_eps = %g must be in (0, 1)", cfg->rms_eps);
    if (!(cfg->rope_theta > 1.0f) || cfg->rope_theta > 1e12f)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "rope_theta = %g must be in (1, 1e12]", cfg->rope_theta);
    if (!(cfg->init_std >= 0.0f) || cfg->init_std > 10.0f)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "init_std = %g must be in [0, 10]", cfg->init_std);
    if (cfg->tie_embeddings != 0 && cfg->tie_embeddings != 1)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "tie_embeddings must be 0 or 1");
    if (!gsink__arch(cfg->arch))
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "unknown architecture %d (supported: %s)", cfg->arch,
                           gsink__arch_list());
    if (cfg->qkv_bias != 0 && cfg->qkv_bias != 1)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "qkv_bias must be 0 or 1");
    if ((cfg->qk_norm | cfg->rope_interleaved | cfg->sandwich_norm) & ~1)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "qk_norm, rope_interleaved and sandwich_norm must be 0 or 1");
    if (cfg->rope_dims != 0 && (cfg->rope_dims < 2 || cfg->rope_dims > cfg->d_head || cfg->rope_dims % 2))
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "rope_dims = %d must be 0 (all of d_head) or even in [2, d_head = %d]",
                           cfg->rope_dims, cfg->d_head);
    if (!gsink_rope_scaling_name(cfg->rope_scaling))
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "unknown rope_scaling %d", cfg->rope_scaling);
    if (cfg->rope_scaling != GSINK_ROPE_NONE) {
        if (!(cfg->rope_factor > 0.0f) || cfg->rope_factor > 1e6f)
            return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "rope_factor = %g must be in (0, 1e6]", cfg->rope_factor);
        if (cfg->rope_original_max_pos < 0)
            return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "rope_original_max_pos = %d must be >= 0",
                               cfg->rope_original_max_pos);
    }
    if (cfg->rope_scaling == GSINK_ROPE_LLAMA3 &&
        (!(cfg->rope_low_freq_factor > 0.0f) || !(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor) ||
         !isfinite(cfg->rope_high_freq_factor)))
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG,
                           "llama3 RoPE needs 0 < low_freq_factor (%g) < high_freq_factor (%g)",
                           cfg->rope_low_freq_factor, cfg->rope_high_freq_factor);
    if (cfg->rope_scaling == GSINK_ROPE_YARN) {
        if (!(cfg->rope_beta_fast > 0.0f) || !(cfg->rope_beta_slow > 0.0f) || !isfinite(cfg->rope_beta_fast) ||
            !isfinite(cfg->rope_beta_slow))
            return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "yarn beta_fast (%g) and beta_slow (%g) must be positive",
                               cfg->rope_beta_fast, cfg->rope_beta_slow);
        if (!(cfg->rope_attention_factor >= 0.0f) || cfg->rope_attention_factor > 1e3f)
            return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "yarn attention_factor = %g must be in [0, 1e3]",
                               cfg->rope_attention_factor);
        if (cfg->rope_truncate != 0 && cfg->rope_truncate != 1)
            return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "rope_truncate must be 0 or 1");
    }
    if (cfg->sliding_window < 0)
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG, "sliding_window = %d must be >= 0 (0: none)",
                           cfg->sliding_window);
    if (cfg->sliding_window > 0 && cfg->arch == GSINK_ARCH_LLAMA) /* LlamaConfig cannot say it */
        return gsink__fail(NULL, GSINK_ERR_BAD_CONFIG,
                           "sliding_window %d needs an architecture with windows (mistral, qwen2), not llama",
                           cfg->sliding_window);
    return GSINK_OK;
}
