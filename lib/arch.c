/*
 * arch.c - the architecture table and the RoPE frequencies.
 *
 * What differs between the supported Transformer families is data: a row of
 * the table below (HF model_type -> flags). The single layer path in model.c
 * switches its optional steps on these flags; adding an architecture is a row
 * here plus any genuinely new backend operation.
 */
#include <math.h>
#include <string.h>

#include "internal.h"

/* Rows indexed by gsink_arch. Tensor names are HF's: the per-layer suffixes
 * of model.c (gsink__param_spec) plus the bias names when qkv_bias is set. */
static const gsink_arch_info arch_table[] = {
    {GSINK_ARCH_LLAMA, "llama", "LlamaForCausalLM", 0, 0, 0.0f, 0, 0, 0, 0},
    {GSINK_ARCH_MISTRAL, "mistral", "MistralForCausalLM", 0, 0, 0.0f, 0, 0, 0, 0},
    {GSINK_ARCH_QWEN2, "qwen2", "Qwen2ForCausalLM", 1, 0, 0.0f, 0, 0, 0, 0},
    /* qwen3 / glm / glm4:   bias qk_norm partial interleaved sandwich fused bias_key */
    {GSINK_ARCH_QWEN3, "qwen3", "Qwen3ForCausalLM", 0, 1, 0.0f, 0, 0, 0, 0},
    {GSINK_ARCH_GLM, "glm", "GlmForCausalLM", 1, 0, 0.5f, 1, 0, 1, 1},
    {GSINK_ARCH_GLM4, "glm4", "Glm4ForCausalLM", 1, 0, 0.5f, 1, 1, 1, 1},
};
#define N_ARCH (sizeof arch_table / sizeof arch_table[0])

const gsink_arch_info *gsink__arch(int arch)
{
    for (size_t i = 0; i < N_ARCH; i++)
        if (arch_table[i].id == arch) return &arch_table[i];
    return NULL;
}

const gsink_arch_info *gsink__arch_by_name(const char *model_type)
{
    for (size_t i = 0; i < N_ARCH; i++)
        if (strcmp(arch_table[i].model_type, model_type) == 0) return &arch_table[i];
    return NULL;
}

const char *gsink__arch_list(void) { return "llama, mistral, qwen2, qwen3, glm, glm4"; }

const char *gsink_arch_name(int arch)
{
    const gsink_arch_info *a = gsink__arch(arch);
    return a ? a->model_type : NULL;
}

static const char *const rope_names[] = {"default", "linear", "llama3", "yarn"};

const char *gsink_rope_scaling_name(int type)
{
    if (type < 0 || type >= (int)(sizeof rope_names / sizeof rope_names[0])) return NULL;
    return rope_names[type];
}

int gsink__rope_scaling_by_name(const char *name)
{
    for (int i = 0; i < (int)(sizeof rope_names / sizeof rope_names[0]); i++)
        if (strcmp(rope_names[i], name) == 0) return i;
    return -1;
}

/* HF transformers' _compute_yarn_parameters helpers (modeling_rope_utils.py). */
static double yarn_correction_dim(double rotations, int dim, double base, double max_pos)
{
    return (dim * log(max_pos / (rotations * 2.0 * M_PI))) / (2.0 * log(base));
}

static double yarn_mscale(double scale)
{
    return scale <= 1.0 ? 1.0 : 0.1 * log(scale) + 1.0;
}

int gsink__rope_dims(const gsink_config *c) { return c->rope_dims > 0 ? c->rope_dims : c->d_head; }

/* inv_freq[i], i < rope_dims/2, and the factor on cos and sin, as HF computes
 * them for the config's rope_type (in double rather than float32); HF's dim
 * is the rotated part of the head (head_dim * partial_rotary_factor). */
void gsink__rope_freqs(const gsink_config *c, double *inv_freq, double *attn_scale)
{
    int dim = gsink__rope_dims(c), half = dim / 2;
    double base = c->rope_theta, factor = c->rope_factor > 0.0f ? c->rope_factor : 1.0;
    double orig = c->rope_original_max_pos > 0 ? c->rope_original_max_pos : c->max_seq_len;
    *attn_scale = 1.0;
    for (int i = 0; i < half; i++) inv_freq[i] = pow(base, -2.0 * i / dim);
    switch (c->rope_scaling) {
    case GSINK_ROPE_LINEAR:
        for (int i = 0; i < half; i++) inv_freq[i] /= factor;
        break;
    case GSINK_ROPE_LLAMA3: {
        double lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
        double low_wavelen = orig / lo, high_wavelen = orig / hi;
        for (int i = 0; i < half; i++) {
            double f = inv_freq[i], wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                inv_freq[i] = f / factor;
            } else if (!(wavelen < high_wavelen)) { /* medium: smooth interpolation */
                double smooth = (orig / wavelen - lo) / (hi - lo);
                inv_freq[i] = (1.0 - smooth) * f / factor + smooth * f;
            }
        }
        break;
    }
    case GSINK_ROPE_YARN: {
        double low = yarn_correction_dim(c->rope_beta_fast, dim, base, orig);
        double high = yarn_correction_dim(c->rope_beta_slow, dim, base, orig);
        if (c->rope_truncate) {
            low = floor(low);
            high = ceil(high);
        }
        if (low < 0.0) low = 0.0;
        if (high > dim - 1) high = dim - 1;
        if (low == high) high += 0.001;
        for (int i = 0; i < half; i++) {
            double ramp = ((double)i - low) / (high - low);
            ramp = ramp < 0.0 ? 0.0 : ramp > 1.0 ? 1.0 : ramp;
            double extra = 1.0 - ramp; /* inv_freq_extrapolation_factor */
            double f = inv_freq[i];
            inv_freq[i] = f / factor * (1.0 - extra) + f * extra;
        }
        *attn_scale = c->rope_attention_factor > 0.0f ? c->rope_attention_factor : yarn_mscale(factor);
        break;
    }
    default:
        break;
    }
}
