/*
 * test_core.c - model-level behaviour: presets, initialisation, forward
 * structure (causality, batching, residual sites), finite-difference
 * gradients through the whole model (tied and untied), accumulation.
 */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "gsink.h"

static gsink_model *make(const char *preset, int tie, uint64_t seed, float std)
{
    gsink_config c;
    ck_assert_int_eq(gsink_config_preset(preset, &c), GSINK_OK);
    c.tie_embeddings = tie;
    if (std > 0) c.init_std = std;
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.seed = seed;
    o.n_threads = 2;
    gsink_model *m = NULL;
    ck_assert_msg(gsink_model_create(&c, &o, &m) == GSINK_OK, "%s", gsink_last_error());
    return m;
}

static void tokens(int32_t *t, size_t n, int V, int salt)
{
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)((i * 131 + (size_t)salt * 17 + 7) % (size_t)V);
}

START_TEST(test_presets_and_param_counts)
{
    for (int i = 0; gsink_config_preset_name(i); i++) {
        gsink_config c;
        ck_assert_int_eq(gsink_config_preset(gsink_config_preset_name(i), &c), GSINK_OK);
        ck_assert_int_eq(gsink_config_validate(&c), GSINK_OK);
    }
    gsink_config c;
    gsink_config_preset("paper-0.1b", &c);
    ck_assert_int_eq(c.n_layers, 16);
    ck_assert_int_eq(c.d_model, 512);
    ck_assert_int_eq(c.d_ff, 1408);
    ck_assert_int_eq(c.vocab_size, 50257);
    /* Table 3: ~101M, ~304M, ~1.04B parameters (untied). */
    const struct { const char *n; double lo, hi; } expect[] = {
        {"paper-0.1b", 100e6, 104e6}, {"paper-0.3b", 300e6, 308e6}, {"paper-1b", 1.02e9, 1.06e9}};
    for (int i = 0; i < 3; i++) {
        gsink_config_preset(expect[i].n, &c);
        double L = c.n_layers, d = c.d_model, qd = c.n_heads * c.d_head, kd = c.n_kv_heads * c.d_head;
        double n = 2.0 * c.vocab_size * d + d + L * (2 * d + d * qd * 2 + 2 * d * kd + 3 * d * c.d_ff);
        ck_assert_msg(n > expect[i].lo && n < expect[i].hi, "%s: %g", expect[i].n, n);
    }
    gsink_model *m = make("tiny", 1, 0, 0);
    size_t numel;
    gsink_model_config(m, &c);
    gsink_param_numel(m, &numel);
    double L = c.n_layers, d = c.d_model, qd = c.n_heads * c.d_head, kd = c.n_kv_heads * c.d_head;
    double n = (double)c.vocab_size * d + d + L * (2 * d + d * qd * 2 + 2 * d * kd + 3 * d * c.d_ff);
    ck_assert_uint_eq(numel, (size_t)n);
    gsink_model_free(m);
}
END_TEST

START_TEST(test_init_is_deterministic_hf_style)
{
    gsink_model *a = make("tiny", 1, 7, 0), *b = make("tiny", 1, 7, 0), *c = make("tiny", 1, 8, 0);
    size_t n = 512 * 64;
    float *x = malloc(n * 4), *y = malloc(n * 4), *z = malloc(n * 4);
    gsink_get_param(a, "model.embed_tokens.weight", x, n);
    gsink_get_param(b, "model.embed_tokens.weight", y, n);
    gsink_get_param(c, "model.embed_tokens.weight", z, n);
    ck_assert(memcmp(x, y, n * 4) == 0);
    ck_assert(memcmp(x, z, n * 4) != 0);
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
        s2 += (double)x[i] * x[i];
    }
    double mean = s / n, sd = sqrt(s2 / n - mean * mean);
    ck_assert_msg(fabs(mean) < 1e-3 && fabs(sd - 0.02) < 1e-3, "mean %g std %g", mean, sd);
    float g[64];
    gsink_get_param(a, "model.layers.1.post_attention_layernorm.weight", g, 64);
    for (int i = 0; i < 64; i++) ck_assert(g[i] == 1.0f);
    free(x);
    free(y);
    free(z);
    gsink_model_free(a);
    gsink_model_free(b);
    gsink_model_free(c);
}
END_TEST

START_TEST(test_initial_loss_near_log_vocab)
{
    gsink_model *m = make("tiny", 1, 1, 0);
    int32_t t[2 * 64], y[2 * 64];
    tokens(t, 128, 512, 0);
    tokens(y, 128, 512, 3);
    float loss;
    ck_assert_int_eq(gsink_forward(m, t, y, 2, 64, &loss), GSINK_OK);
    ck_assert_msg(fabs(loss - log(512.0)) < 0.05, "loss %g", loss);
    gsink_model_free(m);
}
END_TEST

START_TEST(test_causal_and_batch_independent)
{
    gsink_model *m = make("tiny", 0, 2, 0.1f);
    enum { T = 16, V = 512 };
    int32_t a[2 * T];
    tokens(a, 2 * T, V, 1);
    float *l2 = malloc(sizeof(float) * 2 * T * V), *l1 = malloc(sizeof(float) * T * V);
    ck_assert_int_eq(gsink_forward(m, a, NULL, 2, T, NULL), GSINK_OK);
    gsink_get_logits(m, l2, 2 * T * V);
    /* the second sequence alone gives the same logits */
    ck_assert_int_eq(gsink_forward(m, a + T, NULL, 1, T, NULL), GSINK_OK);
    gsink_get_logits(m, l1, T * V);
    for (int i = 0; i < T * V; i++) ck_assert(tu_close(l1[i], l2[T * V + i], 1e-4, 1e-5));
    /* changing token 9 leaves logits at positions < 9 unchanged */
    a[T + 9] = (a[T + 9] + 1) % V;
    ck_assert_int_eq(gsink_forward(m, a + T, NULL, 1, T, NULL), GSINK_OK);
    float *l3 = malloc(sizeof(float) * T * V);
    gsink_get_logits(m, l3, T * V);
    for (int i = 0; i < 9 * V; i++) ck_assert(tu_close(l3[i], l1[i], 1e-5, 1e-6));
    int changed = 0;
    for (int i = 9 * V; i < 10 * V; i++) changed |= l3[i] != l1[i];
    ck_assert(changed);
    free(l1);
    free(l2);
    free(l3);
    gsink_model_free(m);
}
END_TEST

START_TEST(test_residual_sites_are_consistent)
{
    gsink_model *m = make("tiny", 1, 3, 0.1f);
    enum { B = 2, T = 8, D = 64 };
    int32_t t[B * T], y[B * T];
    tokens(t, B * T, 512, 0);
    tokens(y, B * T, 512, 1);
    ck_assert_int_eq(gsink_forward(m, t, y, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    float in[B * T * D], attn[B * T * D], mid[B * T * D], out0[B * T * D], in1[B * T * D], mlp[B * T * D];
    gsink_get_activation(m, 0, GSINK_SITE_RESID_IN, in, sizeof in / 4);
    gsink_get_activation(m, 0, GSINK_SITE_ATTN_OUT, attn, sizeof in / 4);
    gsink_get_activation(m, 0, GSINK_SITE_RESID_MID, mid, sizeof in / 4);
    gsink_get_activation(m, 0, GSINK_SITE_MLP_OUT, mlp, sizeof in / 4);
    gsink_get_activation(m, 0, GSINK_SITE_RESID_OUT, out0, sizeof in / 4);
    gsink_get_activation(m, 1, GSINK_SITE_RESID_IN, in1, sizeof in / 4);
    for (int i = 0; i < B * T * D; i++) {
        ck_assert(tu_close(mid[i], in[i] + attn[i], 1e-6, 1e-7));
        ck_assert(tu_close(out0[i], mid[i] + mlp[i], 1e-6, 1e-7));
        ck_assert(out0[i] == in1[i]);
    }
    /* gradient of the MLP output equals the gradient of resid_out */
    gsink_get_gradient(m, 0, GSINK_SITE_MLP_OUT, mlp, sizeof in / 4);
    gsink_get_gradient(m, 0, GSINK_SITE_RESID_OUT, out0, sizeof in / 4);
    ck_assert(memcmp(mlp, out0, sizeof mlp) == 0);
    /* embedding rows are the residual input of layer 0 */
    float emb[512 * D];
    gsink_get_param(m, "model.embed_tokens.weight", emb, 512 * D);
    for (int n = 0; n < B * T; n++)
        for (int i = 0; i < D; i++) ck_assert(in[n * D + i] == emb[t[n] * D + i]);
    gsink_model_free(m);
}
END_TEST

/* Finite differences of the full model loss for a sample of every parameter.
 * The model runs in fp32, so a large init_std (sizeable gradients) and loose
 * tolerances; the exact float64 comparison lives in the PyTorch reference suite. */
static void model_fd(int tie, int arch)
{
    gsink_config c;
    gsink_config_preset("micro", &c);
    c.tie_embeddings = tie;
    if (arch == 2) { /* qwen3: per-head q/k RMSNorm */
        c.arch = GSINK_ARCH_QWEN3;
        c.qk_norm = 1;
    } else if (arch == 3) { /* glm4: biases, interleaved RoPE on half of each head,
                             * fused gate_up_proj, sandwich norms */
        c.arch = GSINK_ARCH_GLM4;
        c.qkv_bias = 1;
        c.rope_dims = c.d_head / 2;
        c.rope_interleaved = 1;
        c.sandwich_norm = 1;
    } else if (arch) { /* q/k/v biases (qwen2) and llama3-scaled RoPE */
        c.arch = GSINK_ARCH_QWEN2;
        c.qkv_bias = 1;
        c.rope_scaling = GSINK_ROPE_LLAMA3;
        c.rope_factor = 4.0f;
        c.rope_original_max_pos = 4;
        c.rope_theta = 100.0f;
    }
    c.init_std = 0.3f;
    c.n_kv_heads = 1;
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.seed = 11;
    o.n_threads = 1;
    gsink_model *m;
    ck_assert_int_eq(gsink_model_create(&c, &o, &m), GSINK_OK);
    enum { B = 2, T = 6 };
    int32_t t[B * T], y[B * T];
    tokens(t, B * T, c.vocab_size, 2);
    tokens(y, B * T, c.vocab_size, 5);
    y[3] = -1; /* an ignored target */
    float loss;
    ck_assert_int_eq(gsink_forward(m, t, y, B, T, &loss), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    size_t np;
    gsink_param_count(m, &np);
    int checked = 0;
    for (size_t p = 0; p < np; p++) {
        const char *name;
        int nd;
        int64_t dims[2];
        gsink_param_info(m, p, &name, &nd, dims);
        size_t n = (size_t)dims[0] * (nd == 2 ? (size_t)dims[1] : 1);
        float *w = malloc(n * 4), *g = malloc(n * 4);
        gsink_get_param(m, name, w, n);
        gsink_get_param_grad(m, name, g, n);
        double gmax = 0;
        for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(g[i]));
        for (int k = 0; k < 4; k++) {
            size_t j = (size_t)(k * 7919 + 13) % n;
            if (strstr(name, "embed") && tie) j = (size_t)t[k] * c.d_model + (size_t)k % c.d_model;
            float s = w[j], h = 3e-3f;
            float lp, lm;
            w[j] = s + h;
            gsink_set_param(m, name, w, n);
            gsink_forward(m, t, y, B, T, &lp);
            w[j] = s - h;
            gsink_set_param(m, name, w, n);
            gsink_forward(m, t, y, B, T, &lm);
            w[j] = s;
            gsink_set_param(m, name, w, n);
            double fd = ((double)lp - lm) / (2.0 * h);
            ck_assert_msg(tu_close(fd, g[j], 5e-2, 2e-3 * fmax(gmax, 1e-2)), "%s[%zu]: fd %g analytic %g",
                          name, j, fd, g[j]);
            checked++;
        }
        free(w);
        free(g);
    }
    ck_assert_int_gt(checked, 40);
    gsink_model_free(m);
}

START_TEST(test_model_fd_untied) { model_fd(0, 0); }
END_TEST

START_TEST(test_model_fd_tied) { model_fd(1, 0); }
END_TEST

START_TEST(test_model_fd_qwen2_llama3) { model_fd(0, 1); }
END_TEST

START_TEST(test_model_fd_qwen3) { model_fd(0, 2); }
END_TEST

START_TEST(test_model_fd_glm4) { model_fd(1, 3); }
END_TEST

/* qwen3 / glm / glm4 config fields: validation, the parameters they add, and
 * a caller's struct of the size before them. */
START_TEST(test_config_qwen3_glm_fields)
{
    gsink_config c;
    gsink_config_init(&c);
    ck_assert_int_eq(c.qk_norm, 0);
    ck_assert_int_eq(c.rope_dims, 0);
    ck_assert_int_eq(c.rope_interleaved, 0);
    ck_assert_int_eq(c.sandwich_norm, 0);
    ck_assert_str_eq(gsink_arch_name(GSINK_ARCH_QWEN3), "qwen3");
    ck_assert_str_eq(gsink_arch_name(GSINK_ARCH_GLM), "glm");
    ck_assert_str_eq(gsink_arch_name(GSINK_ARCH_GLM4), "glm4");
    gsink_config b = c;
    b.rope_dims = 3; /* odd */
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b.rope_dims = c.d_head + 2;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b.rope_dims = c.d_head;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_OK);
    b = c;
    b.qk_norm = 2;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b = c;
    b.sandwich_norm = -1;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);

    /* a struct that ends at rope_truncate: the new flags stay off */
    gsink_config old;
    memset(&old, 0x7f, sizeof old);
    size_t old_size = offsetof(gsink_config, rope_truncate) + sizeof(int32_t);
    gsink_config_init_size(&old, old_size);
    ck_assert_int_eq(old.qk_norm, 0x7f7f7f7f);
    gsink_model *m;
    ck_assert_int_eq(gsink_model_create(&old, NULL, &m), GSINK_OK);
    gsink_config got;
    gsink_config_init(&got);
    ck_assert_int_eq(gsink_model_config(m, &got), GSINK_OK);
    ck_assert_int_eq(got.qk_norm | got.rope_dims | got.rope_interleaved | got.sandwich_norm, 0);
    gsink_model_free(m);

    /* parameters per layer: qwen3 9 + q/k norms; glm 8 (fused gate_up) + biases; glm4 + 2 post norms */
    struct { int arch, bias, qkn, sw; size_t per_layer; } rows[] = {
        {GSINK_ARCH_QWEN3, 0, 1, 0, 11}, {GSINK_ARCH_GLM, 1, 0, 0, 11}, {GSINK_ARCH_GLM4, 1, 0, 1, 13}};
    for (int r = 0; r < 3; r++) {
        b = c;
        b.arch = rows[r].arch;
        b.qkv_bias = rows[r].bias;
        b.qk_norm = rows[r].qkn;
        b.sandwich_norm = rows[r].sw;
        ck_assert_int_eq(gsink_model_create(&b, NULL, &m), GSINK_OK);
        size_t np = 0;
        gsink_param_count(m, &np);
        ck_assert_uint_eq(np, 1 + (size_t)b.n_layers * rows[r].per_layer + 1 + (b.tie_embeddings ? 0 : 1));
        const char *name;
        int nd;
        int64_t dims[2];
        int n_fused = 0;
        for (size_t i = 0; i < np; i++) {
            gsink_param_info(m, i, &name, &nd, dims);
            if (strstr(name, "q_norm") || strstr(name, "k_norm")) {
                ck_assert_int_eq(nd, 1);
                ck_assert_int_eq(dims[0], b.d_head);
            }
            if (strstr(name, "gate_up_proj")) {
                ck_assert_int_eq(dims[0], 2 * b.d_ff);
                ck_assert_int_eq(dims[1], b.d_model);
            }
            if (strstr(name, "gate_up_proj")) n_fused++;
        }
        ck_assert_int_eq(n_fused, rows[r].arch == GSINK_ARCH_QWEN3 ? 0 : b.n_layers);
        gsink_model_free(m);
    }
}
END_TEST

/* The architecture fields: defaults, names, validation, and a caller's
 * config of the size before them (an older program) keeps working. */
START_TEST(test_config_architecture_fields)
{
    gsink_config c;
    gsink_config_init(&c);
    ck_assert_int_eq(c.arch, GSINK_ARCH_LLAMA);
    ck_assert_int_eq(c.qkv_bias, 0);
    ck_assert_int_eq(c.rope_scaling, GSINK_ROPE_NONE);
    ck_assert_str_eq(gsink_arch_name(GSINK_ARCH_QWEN2), "qwen2");
    ck_assert_str_eq(gsink_arch_name(GSINK_ARCH_MISTRAL), "mistral");
    ck_assert_ptr_null(gsink_arch_name(99));
    ck_assert_str_eq(gsink_rope_scaling_name(GSINK_ROPE_LLAMA3), "llama3");
    ck_assert_str_eq(gsink_rope_scaling_name(GSINK_ROPE_YARN), "yarn");
    ck_assert_ptr_null(gsink_rope_scaling_name(-1));
    gsink_config b = c;
    b.arch = 99;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b = c;
    b.rope_scaling = 7;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b = c;
    b.rope_scaling = GSINK_ROPE_LLAMA3;
    b.rope_high_freq_factor = 0.5f; /* below low_freq_factor */
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b = c;
    b.rope_scaling = GSINK_ROPE_LINEAR;
    b.rope_factor = 0.0f;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b = c;
    b.qkv_bias = 2;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b = c; /* sliding window: >= 0, and only where the architecture has one */
    ck_assert_int_eq(b.sliding_window, 0);
    b.sliding_window = -1;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b.arch = GSINK_ARCH_LLAMA;
    b.sliding_window = 8;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_ERR_BAD_CONFIG);
    b.arch = GSINK_ARCH_MISTRAL;
    ck_assert_int_eq(gsink_config_validate(&b), GSINK_OK);

    /* An older caller: size up to init_std, garbage after it (not its memory). */
    gsink_config old;
    memset(&old, 0x7f, sizeof old);
    size_t old_size = offsetof(gsink_config, init_std) + sizeof(float);
    gsink_config_init_size(&old, old_size);
    ck_assert_uint_eq(old.size, old_size);
    ck_assert_int_eq(old.qkv_bias, 0x7f7f7f7f); /* not written past its size */
    ck_assert_int_eq(gsink_config_validate(&old), GSINK_OK);
    gsink_model *m;
    ck_assert_int_eq(gsink_model_create(&old, NULL, &m), GSINK_OK);
    gsink_config got;
    gsink_config_init(&got);
    ck_assert_int_eq(gsink_model_config(m, &got), GSINK_OK);
    ck_assert_int_eq(got.arch, GSINK_ARCH_LLAMA);
    ck_assert_int_eq(got.qkv_bias, 0);
    ck_assert_int_eq(got.rope_scaling, GSINK_ROPE_NONE);
    ck_assert_int_eq(got.sliding_window, 0);
    size_t np = 0;
    gsink_param_count(m, &np);
    ck_assert_uint_eq(np, 1 + (size_t)got.n_layers * 9 + 1 + (got.tie_embeddings ? 0 : 1));
    gsink_model_free(m);

    /* q/k/v biases: three more parameters per layer, zero-initialised (HF). */
    c.qkv_bias = 1;
    c.arch = GSINK_ARCH_QWEN2;
    ck_assert_int_eq(gsink_model_create(&c, NULL, &m), GSINK_OK);
    gsink_param_count(m, &np);
    ck_assert_uint_eq(np, 1 + (size_t)c.n_layers * 12 + 1 + (c.tie_embeddings ? 0 : 1));
    size_t kd = (size_t)c.n_kv_heads * c.d_head;
    float *bias = malloc(kd * sizeof *bias);
    ck_assert_int_eq(gsink_get_param(m, "model.layers.1.self_attn.v_proj.bias", bias, kd), GSINK_OK);
    for (size_t i = 0; i < kd; i++) ck_assert(bias[i] == 0.0f);
    free(bias);
    gsink_model_free(m);
}
END_TEST

START_TEST(test_gradient_accumulation_and_zero)
{
    gsink_model *m = make("tiny", 0, 4, 0);
    enum { B = 1, T = 12 };
    int32_t t[T], y[T];
    tokens(t, T, 512, 0);
    tokens(y, T, 512, 9);
    const char *name = "model.layers.1.mlp.down_proj.weight";
    size_t n = 64 * 172;
    float *g1 = malloc(n * 4), *g2 = malloc(n * 4);
    ck_assert_int_eq(gsink_forward(m, t, y, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    gsink_get_param_grad(m, name, g1, n);
    ck_assert_int_eq(gsink_backward(m, GSINK_BACKWARD_ACCUMULATE), GSINK_OK);
    gsink_get_param_grad(m, name, g2, n);
    for (size_t i = 0; i < n; i++) ck_assert(tu_close(g2[i], 2.0 * g1[i], 1e-6, 1e-9));
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK); /* overwrite again */
    gsink_get_param_grad(m, name, g2, n);
    for (size_t i = 0; i < n; i++) ck_assert(tu_close(g2[i], g1[i], 1e-6, 1e-9));
    ck_assert_int_eq(gsink_zero_grad(m), GSINK_OK);
    gsink_get_param_grad(m, name, g2, n);
    for (size_t i = 0; i < n; i++) ck_assert(g2[i] == 0.0f);
    free(g1);
    free(g2);
    gsink_model_free(m);
}
END_TEST

START_TEST(test_threads_do_not_change_results)
{
    gsink_model *m = make("tiny", 1, 5, 0);
    enum { B = 3, T = 40 };
    int32_t t[B * T], y[B * T];
    tokens(t, B * T, 512, 1);
    tokens(y, B * T, 512, 2);
    float l1, l2;
    size_t n = 64 * 64;
    float *g1 = malloc(n * 4), *g2 = malloc(n * 4);
    gsink_model_set_threads(m, 1);
    gsink_forward(m, t, y, B, T, &l1);
    gsink_backward(m, 0);
    gsink_get_param_grad(m, "model.layers.0.self_attn.q_proj.weight", g1, n);
    gsink_model_set_threads(m, 2);
    gsink_forward(m, t, y, B, T, &l2);
    gsink_backward(m, 0);
    gsink_get_param_grad(m, "model.layers.0.self_attn.q_proj.weight", g2, n);
    ck_assert(tu_close(l1, l2, 1e-6, 0));
    for (size_t i = 0; i < n; i++) ck_assert(tu_close(g1[i], g2[i], 1e-4, 1e-8));
    free(g1);
    free(g2);
    gsink_model_free(m);
}
END_TEST

START_TEST(test_vscale_modes_through_model)
{
    gsink_model *m = make("tiny", 1, 6, 0);
    enum { B = 1, T = 10 };
    int32_t t[T], y[T];
    tokens(t, T, 512, 3);
    tokens(y, T, 512, 4);
    float l_off, l_bwd, l_full;
    gsink_forward(m, t, y, B, T, &l_off);
    gsink_vscale_options vo;
    gsink_vscale_options_init(&vo);
    vo.mode = GSINK_VSCALE_BACKWARD_ONLY;
    ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
    gsink_forward(m, t, y, B, T, &l_bwd);
    ck_assert(l_bwd == l_off); /* forward unchanged */
    vo.mode = GSINK_VSCALE_FULL;
    ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
    gsink_forward(m, t, y, B, T, &l_full);
    ck_assert(l_full != l_off);
    size_t nth;
    gsink_vscale_theta_count(m, &nth);
    ck_assert_uint_eq(nth, 2 * 2); /* layers x KV heads */
    vo.per_query_head = 1;
    ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
    gsink_vscale_theta_count(m, &nth);
    ck_assert_uint_eq(nth, 2 * 4);
    float th[8] = {0.5f, -0.5f, 1, 0, 0, 0, 0, 0.25f}, back[8];
    ck_assert_int_eq(gsink_vscale_set_theta(m, th, 8), GSINK_OK);
    gsink_vscale_get_theta(m, back, 8);
    ck_assert(memcmp(th, back, sizeof th) == 0);
    ck_assert_int_eq(gsink_forward(m, t, y, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    float dth[8];
    ck_assert_int_eq(gsink_vscale_get_theta_grad(m, dth, 8), GSINK_OK);
    int nonzero = 0;
    for (int i = 0; i < 8; i++) nonzero += dth[i] != 0.0f;
    ck_assert_int_eq(nonzero, 8);
    gsink_model_free(m);
}
END_TEST

/* The backward writes the logit gradients over the logits (one N x vocab
 * buffer). Reading the logits afterwards, or a second backward, recomputes
 * them with the forward's LM-head product: bitwise the forward's logits and
 * bitwise the same gradients. After an optimizer step the weights are no
 * longer the forward's: both calls are refused until the next forward. */
static void logits_case(int weight_dtype)
{
    gsink_config c;
    ck_assert_int_eq(gsink_config_preset("tiny", &c), GSINK_OK);
    c.tie_embeddings = 0;
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.seed = 8;
    o.n_threads = 2;
    o.weight_dtype = weight_dtype;
    gsink_model *m = NULL;
    ck_assert_int_eq(gsink_model_create(&c, &o, &m), GSINK_OK);
    enum { B = 2, T = 24 };
    int32_t t[B * T], y[B * T];
    tokens(t, B * T, 512, 5);
    tokens(y, B * T, 512, 6);
    const size_t nl = (size_t)B * T * 512, ng = 512 * 64;
    float *l0 = malloc(nl * 4), *l1 = malloc(nl * 4), *g0 = malloc(ng * 4), *g1 = malloc(ng * 4);
    const char *head = "lm_head.weight";
    ck_assert_int_eq(gsink_forward(m, t, y, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_get_logits(m, l0, nl), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    ck_assert_int_eq(gsink_get_param_grad(m, head, g0, ng), GSINK_OK);
    memset(l1, 0xff, nl * 4);
    ck_assert_int_eq(gsink_get_logits(m, l1, nl), GSINK_OK);
    ck_assert(memcmp(l0, l1, nl * 4) == 0);
    /* a second backward (logits just restored) and a third (overwritten again) */
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
        ck_assert_int_eq(gsink_get_param_grad(m, head, g1, ng), GSINK_OK);
        ck_assert(memcmp(g0, g1, ng * 4) == 0);
    }
    int nonzero = 0;
    for (size_t i = 0; i < ng; i++) nonzero += g0[i] != 0.0f;
    ck_assert_int_gt(nonzero, (int)(ng / 2));
    memset(l1, 0, nl * 4);
    ck_assert_int_eq(gsink_get_logits(m, l1, nl), GSINK_OK);
    ck_assert(memcmp(l0, l1, nl * 4) == 0);
    /* an optimizer step changes the LM head: no recomputation any more */
    gsink_optimizer *opt = NULL;
    ck_assert_int_eq(gsink_optimizer_create(m, NULL, &opt), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_step(opt, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_get_logits(m, l1, nl), GSINK_ERR_CALL_ORDER);
    ck_assert_ptr_nonnull(strstr(gsink_model_errmsg(m), "weights changed"));
    /* the refusal loses nothing: gradients set since the step stay as they are */
    size_t np = 0;
    ck_assert_int_eq(gsink_param_numel(m, &np), GSINK_OK);
    float *gs = malloc(np * 4), *gb = malloc(np * 4);
    for (size_t i = 0; i < np; i++) gs[i] = 1e-3f * (float)(i % 101);
    ck_assert_int_eq(gsink_set_grads_flat(m, gs, np), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_ERR_CALL_ORDER);
    ck_assert_int_eq(gsink_get_grads_flat(m, gb, np), GSINK_OK);
    ck_assert(memcmp(gs, gb, np * 4) == 0);
    free(gs);
    free(gb);
    ck_assert_int_eq(gsink_zero_grad(m), GSINK_OK);
    float act[B * T * 64];
    ck_assert_int_eq(gsink_get_activation(m, 0, GSINK_SITE_RESID_MID, act, sizeof act / 4), GSINK_OK); /* still usable */
    ck_assert_int_eq(gsink_forward(m, t, y, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_get_logits(m, l1, nl), GSINK_OK);
    ck_assert(memcmp(l0, l1, nl * 4) != 0); /* new weights, new logits */
    /* logits no backward overwrote stay readable after a step (zero gradients:
     * weight decay alone changes the weights) */
    ck_assert_int_eq(gsink_get_logits(m, l0, nl), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_step(opt, NULL), GSINK_OK);
    memset(l1, 0, nl * 4);
    ck_assert_int_eq(gsink_get_logits(m, l1, nl), GSINK_OK);
    ck_assert(memcmp(l0, l1, nl * 4) == 0);
    ck_assert_int_eq(gsink_forward(m, t, y, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_get_logits(m, l1, nl), GSINK_OK);
    ck_assert(memcmp(l0, l1, nl * 4) != 0); /* the step changed them */
    gsink_optimizer_free(opt);
    gsink_model_free(m);
    free(l0);
    free(l1);
    free(g0);
    free(g1);
}

START_TEST(test_logits_survive_backward) { logits_case(GSINK_WEIGHTS_FP32); }
END_TEST
START_TEST(test_logits_survive_backward_bf16) { logits_case(GSINK_WEIGHTS_BF16); }
END_TEST

/* V-scale off: v_scaled shares v's storage (activation and gradient) and the
 * model holds two N x kv-width buffers per layer less; backward-only shares
 * the activation only, and its value-path gradient still differs. */
START_TEST(test_vscale_off_shares_v)
{
    gsink_model *m = make("tiny", 1, 9, 0);
    enum { B = 2, T = 20, KD = 2 * 16 };
    int32_t t[B * T], y[B * T];
    tokens(t, B * T, 512, 7);
    tokens(y, B * T, 512, 8);
    int heads, width;
    ck_assert_int_eq(gsink_site_dims(m, GSINK_SITE_V, &heads, &width), GSINK_OK);
    ck_assert_int_eq(heads * width, KD);
    const size_t n = (size_t)B * T * KD;
    float v[B * T * KD], vs[B * T * KD];
    uint64_t off_bytes, full_bytes;
    gsink_vscale_options vo;
    gsink_vscale_options_init(&vo);
    for (int mode = 0; mode < 3; mode++) {
        vo.mode = mode == 0 ? GSINK_VSCALE_OFF : mode == 1 ? GSINK_VSCALE_BACKWARD_ONLY : GSINK_VSCALE_FULL;
        ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
        ck_assert_int_eq(gsink_forward(m, t, y, B, T, NULL), GSINK_OK);
        ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
        uint64_t bytes;
        ck_assert_int_eq(gsink_model_memory(m, &bytes, NULL, 0), GSINK_OK);
        if (mode == 0) off_bytes = bytes;
        if (mode == 2) full_bytes = bytes;
        for (int l = 0; l < 2; l++) {
            ck_assert_int_eq(gsink_get_activation(m, l, GSINK_SITE_V, v, n), GSINK_OK);
            ck_assert_int_eq(gsink_get_activation(m, l, GSINK_SITE_V_SCALED, vs, n), GSINK_OK);
            ck_assert((memcmp(v, vs, sizeof v) == 0) == (mode < 2)); /* FULL scales */
            ck_assert_int_eq(gsink_get_gradient(m, l, GSINK_SITE_V, v, n), GSINK_OK);
            ck_assert_int_eq(gsink_get_gradient(m, l, GSINK_SITE_V_SCALED, vs, n), GSINK_OK);
            ck_assert((memcmp(v, vs, sizeof v) == 0) == (mode == 0));
        }
    }
    /* per layer: a v_scaled activation and gradient, each B*T*KD floats (64-byte multiples here) */
    ck_assert_uint_eq(full_bytes - off_bytes, 2u * 2u * n * 4u);
    gsink_model_free(m);
}
END_TEST

/* attn_norm_out, mlp_norm_out and mlp_post are one buffer each for every
 * layer, recomputed from kept tensors when a layer's values are read (and
 * for the weight gradients): every read, in any layer order, before and
 * after the backward and after an optimizer step, equals the values computed
 * here from resid_in / resid_mid and the forward's gains, and
 * silu(mlp_pre) * mlp_up. */
static void rmsnorm_ref(const float *x, const float *g, float *y, size_t rows, int d)
{
    for (size_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)x[r * d + j] * x[r * d + j];
        double rs = 1.0 / sqrt(ss / d + 1e-5);
        for (int j = 0; j < d; j++) y[r * d + j] = (float)(x[r * d + j] * rs * g[j]);
    }
}

/* The per-sequence token norm of position t of x (B, T, w): the mean over
 * the batch of ||x_{b,t}||. */
static double batch_mean_norm(const float *x, int B, int T, int w, int t)
{
    double mean = 0;
    for (int b = 0; b < B; b++) {
        double ss = 0;
        for (int j = 0; j < w; j++) ss += (double)x[((size_t)b * T + t) * w + j] * x[((size_t)b * T + t) * w + j];
        mean += sqrt(ss) / B;
    }
    return mean;
}

START_TEST(test_recomputed_sites)
{
    gsink_model *m = make("tiny", 1, 10, 0);
    enum { B = 2, T = 16, FF = 172, D = 64 };
    int32_t t[B * T], y[B * T];
    tokens(t, B * T, 512, 9);
    tokens(y, B * T, 512, 10);
    const size_t n = (size_t)B * T * FF, nd = (size_t)B * T * D;
    float *pre = malloc(n * 4), *up = malloc(n * 4), *post = malloc(n * 4);
    float *x = malloc(nd * 4), *ref = malloc(nd * 4), *got = malloc(nd * 4), *first = malloc(4 * nd * 4);
    float gains[2][2][D];
    for (int l = 0; l < 2; l++) { /* gains away from 1, so that a stale gain shows */
        for (int k = 0; k < 2; k++) {
            char name[80];
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, k ? "post_attention_layernorm" : "input_layernorm");
            for (int j = 0; j < D; j++) gains[l][k][j] = 0.5f + 0.03f * (float)((j * 7 + l * 3 + k) % 31);
            ck_assert_int_eq(gsink_set_param(m, name, gains[l][k], D), GSINK_OK);
        }
    }
    gsink_optimizer *opt = NULL;
    ck_assert_int_eq(gsink_optimizer_create(m, NULL, &opt), GSINK_OK);
    ck_assert_int_eq(gsink_forward(m, t, y, B, T, NULL), GSINK_OK);
    const int order[] = {0, 1, 0, -1, 1, 0, 1, -2, 0, 1};
    int reads = 0;
    bool have_grads = false;
    for (size_t k = 0; k < sizeof order / sizeof *order; k++) {
        int l = order[k];
        if (l == -1) { /* the backward recomputes each layer's sites for the weight gradients */
            ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
            have_grads = true;
            continue;
        }
        if (l == -2) { /* new gains: the stored forward keeps the old ones */
            ck_assert_int_eq(gsink_optimizer_step(opt, NULL), GSINK_OK);
            have_grads = false;
            float g[D];
            ck_assert_int_eq(gsink_get_param(m, "model.layers.0.input_layernorm.weight", g, D), GSINK_OK);
            ck_assert(memcmp(g, gains[0][0], sizeof g) != 0);
            continue;
        }
        /* the norms first: the buffer holds another layer's values here */
        float nrm[T];
        ck_assert_int_eq(gsink_get_activation_norms(m, l, GSINK_SITE_MLP_POST, -1, nrm, T), GSINK_OK);
        ck_assert_int_eq(gsink_get_activation(m, l, GSINK_SITE_MLP_PRE, pre, n), GSINK_OK);
        ck_assert_int_eq(gsink_get_activation(m, l, GSINK_SITE_MLP_UP, up, n), GSINK_OK);
        ck_assert_int_eq(gsink_get_activation(m, l, GSINK_SITE_MLP_POST, post, n), GSINK_OK);
        for (size_t i = 0; i < n; i++) {
            double g = pre[i], want = g / (1.0 + exp(-g)) * up[i];
            ck_assert_msg(tu_close(post[i], want, 1e-6, 1e-12), "layer %d [%zu]: %g vs %g", l, i, post[i], want);
        }
        for (int tt = 0; tt < T; tt++) {
            double mean = batch_mean_norm(post, B, T, FF, tt);
            ck_assert_msg(tu_close(nrm[tt], mean, 1e-5, 1e-12), "norm t=%d: %g vs %g", tt, nrm[tt], mean);
        }
        for (int k2 = 0; k2 < 2; k2++) {
            gsink_site in = k2 ? GSINK_SITE_RESID_MID : GSINK_SITE_RESID_IN;
            gsink_site out = k2 ? GSINK_SITE_MLP_NORM_OUT : GSINK_SITE_ATTN_NORM_OUT;
            ck_assert_int_eq(gsink_get_activation(m, l, in, x, nd), GSINK_OK);
            ck_assert_int_eq(gsink_get_activation(m, l, out, got, nd), GSINK_OK);
            rmsnorm_ref(x, gains[l][k2], ref, (size_t)B * T, D);
            for (size_t i = 0; i < nd; i++)
                ck_assert_msg(tu_close(got[i], ref[i], 2e-6, 1e-9), "%s layer %d [%zu]: %g vs %g",
                              gsink_site_name(out), l, i, got[i], ref[i]);
            float *keep = first + ((size_t)l * 2 + k2) * nd;
            if (reads < 4) memcpy(keep, got, nd * 4);
            else ck_assert(memcmp(keep, got, nd * 4) == 0); /* bitwise the same on every read */
        }
        reads += 2;
        if (!have_grads) continue;
        /* the mlp_pre / mlp_up gradients: one buffer each, recomputed from the kept
         * mlp_post gradient, mlp_pre and mlp_up (the SwiGLU backward) */
        float *gpre = malloc(n * 4), *gup = malloc(n * 4), *gpost = malloc(n * 4);
        ck_assert_int_eq(gsink_get_gradient(m, l, GSINK_SITE_MLP_UP, gup, n), GSINK_OK); /* up first: the pair */
        ck_assert_int_eq(gsink_get_gradient(m, l, GSINK_SITE_MLP_PRE, gpre, n), GSINK_OK);
        ck_assert_int_eq(gsink_get_gradient(m, l, GSINK_SITE_MLP_POST, gpost, n), GSINK_OK);
        for (size_t i = 0; i < n; i++) {
            double g = pre[i], sg = 1.0 / (1.0 + exp(-g)), dh = gpost[i];
            double want_pre = dh * up[i] * sg * (1.0 + g * (1.0 - sg)), want_up = dh * g * sg;
            ck_assert_msg(tu_close(gpre[i], want_pre, 2e-5, 1e-12), "dpre layer %d [%zu]: %g vs %g", l, i, gpre[i], want_pre);
            ck_assert_msg(tu_close(gup[i], want_up, 2e-5, 1e-12), "dup layer %d [%zu]: %g vs %g", l, i, gup[i], want_up);
        }
        float gn[T];
        ck_assert_int_eq(gsink_get_gradient_norms(m, 1 - l, GSINK_SITE_MLP_PRE, -1, GSINK_AGG_PER_SEQUENCE, gn, T), GSINK_OK);
        ck_assert_int_eq(gsink_get_gradient_norms(m, l, GSINK_SITE_MLP_PRE, -1, GSINK_AGG_PER_SEQUENCE, gn, T), GSINK_OK);
        for (int tt = 0; tt < T; tt++) {
            double mean = batch_mean_norm(gpre, B, T, FF, tt);
            ck_assert_msg(tu_close(gn[tt], mean, 1e-5, 1e-20), "dpre norm t=%d: %g vs %g", tt, gn[tt], mean);
        }
        free(gpre);
        free(gup);
        free(gpost);
    }
    gsink_optimizer_free(opt);
    free(pre);
    free(up);
    free(post);
    free(x);
    free(ref);
    free(got);
    free(first);
    gsink_model_free(m);
}
END_TEST

/* gsink_get/set_params_flat and gsink_get/set_grads_flat: the per-tensor
 * layout (gsink_param_info order, theta last), and an optimizer step from
 * gradients set in one call equals one from the same accumulated gradients. */
static void flat_case(int tie)
{
    gsink_model *m = make("tiny", tie, 21, 0), *m2 = make("tiny", tie, 21, 0);
    gsink_vscale_options vo;
    gsink_vscale_options_init(&vo);
    vo.mode = GSINK_VSCALE_FULL;
    ck_assert_int_eq(gsink_vscale_enable(m, &vo), GSINK_OK);
    ck_assert_int_eq(gsink_vscale_enable(m2, &vo), GSINK_OK);
    enum { B = 2, T = 16 };
    int32_t t[B * T], y[B * T];
    tokens(t, B * T, 512, 3);
    tokens(y, B * T, 512, 4);
    size_t n, np, off = 0;
    ck_assert_int_eq(gsink_param_numel(m, &n), GSINK_OK);
    float *w = malloc(n * 4), *g = malloc(n * 4), *one = malloc(n * 4);
    ck_assert_int_eq(gsink_forward(m, t, y, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    ck_assert_int_eq(gsink_get_params_flat(m, w, n), GSINK_OK);
    ck_assert_int_eq(gsink_get_grads_flat(m, g, n), GSINK_OK);
    gsink_param_count(m, &np);
    for (size_t p = 0; p < np; p++) {
        const char *name;
        int nd;
        int64_t dims[2];
        gsink_param_info(m, p, &name, &nd, dims);
        size_t k = (size_t)dims[0] * (nd == 2 ? (size_t)dims[1] : 1);
        ck_assert_int_eq(gsink_get_param(m, name, one, k), GSINK_OK);
        ck_assert(memcmp(one, w + off, k * 4) == 0);
        if (!strstr(name, "v_scale_theta")) {
            ck_assert_int_eq(gsink_get_param_grad(m, name, one, k), GSINK_OK);
            ck_assert(memcmp(one, g + off, k * 4) == 0);
        }
        off += k;
    }
    ck_assert_uint_eq(off, n);
    size_t nt;
    gsink_vscale_theta_count(m, &nt);
    ck_assert_int_eq(gsink_vscale_get_theta_grad(m, one, nt), GSINK_OK);
    ck_assert(memcmp(one, g + n - nt, nt * 4) == 0);
    /* sizes and non-finite theta are refused */
    ck_assert_int_eq(gsink_get_grads_flat(m, g, n - 1), GSINK_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(gsink_set_params_flat(m, w, n + 1), GSINK_ERR_SHAPE_MISMATCH);
    ck_assert_int_eq(gsink_get_params_flat(m, NULL, n), GSINK_ERR_NULL_ARGUMENT);
    float keep = w[n - 1];
    w[n - 1] = NAN;
    ck_assert_int_eq(gsink_set_params_flat(m, w, n), GSINK_ERR_NON_FINITE);
    w[n - 1] = keep;
    /* m: twice the gradient set in one call; m2: the same by accumulation */
    for (size_t i = 0; i < n; i++) one[i] = 2.0f * g[i];
    ck_assert_int_eq(gsink_set_grads_flat(m, one, n), GSINK_OK);
    ck_assert_int_eq(gsink_forward(m2, t, y, B, T, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m2, 0), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m2, GSINK_BACKWARD_ACCUMULATE), GSINK_OK);
    gsink_optimizer *o1, *o2;
    ck_assert_int_eq(gsink_optimizer_create(m, NULL, &o1), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_create(m2, NULL, &o2), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_step(o1, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_step(o2, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_get_params_flat(m, w, n), GSINK_OK);
    ck_assert_int_eq(gsink_get_params_flat(m2, one, n), GSINK_OK);
    ck_assert(memcmp(w, one, n * 4) == 0);
    /* and the weights round-trip through set */
    for (size_t i = 0; i < n; i++) one[i] = w[i] * 0.5f;
    ck_assert_int_eq(gsink_set_params_flat(m2, one, n), GSINK_OK);
    ck_assert_int_eq(gsink_get_params_flat(m2, w, n), GSINK_OK);
    ck_assert(memcmp(w, one, n * 4) == 0);
    gsink_optimizer_free(o1);
    gsink_optimizer_free(o2);
    gsink_model_free(m);
    gsink_model_free(m2);
    /* an analysis model has no parameter gradients */
    gsink_config c;
    gsink_config_preset("tiny", &c);
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.flags = GSINK_MODEL_ANALYSIS;
    ck_assert_int_eq(gsink_model_create(&c, &mo, &m), GSINK_OK);
    ck_assert_int_eq(gsink_param_numel(m, &n), GSINK_OK);
    float *w2 = malloc(n * 4);
    ck_assert_int_eq(gsink_get_params_flat(m, w2, n), GSINK_OK);
    ck_assert_int_eq(gsink_get_grads_flat(m, w2, n), GSINK_ERR_UNSUPPORTED);
    ck_assert_int_eq(gsink_set_grads_flat(m, w2, n), GSINK_ERR_UNSUPPORTED);
    gsink_model_free(m);
    free(w2);
    /* 16-bit weight storage: the flat copy converts each tensor like the
     * per-tensor calls (round to nearest even on set) */
    mo.weight_dtype = GSINK_WEIGHTS_BF16;
    ck_assert_int_eq(gsink_model_create(&c, &mo, &m), GSINK_OK);
    ck_assert_int_eq(gsink_model_create(&c, &mo, &m2), GSINK_OK);
    ck_assert_int_eq(gsink_param_numel(m, &n), GSINK_OK);
    w2 = malloc(n * 4);
    float *w3 = malloc(n * 4), *part = malloc(n * 4);
    for (size_t i = 0; i < n; i++) w2[i] = 0.01f * (float)((int)(i % 997) - 498) + 1e-5f * (float)(i % 7);
    ck_assert_int_eq(gsink_set_params_flat(m, w2, n), GSINK_OK);
    gsink_param_count(m2, &np);
    off = 0;
    for (size_t p = 0; p < np; p++) {
        const char *name;
        int nd;
        int64_t dims[2];
        gsink_param_info(m2, p, &name, &nd, dims);
        size_t k = (size_t)dims[0] * (nd == 2 ? (size_t)dims[1] : 1);
        ck_assert_int_eq(gsink_set_param(m2, name, w2 + off, k), GSINK_OK);
        ck_assert_int_eq(gsink_get_param(m, name, part, k), GSINK_OK);
        ck_assert_int_eq(gsink_get_param(m2, name, w3, k), GSINK_OK);
        ck_assert(memcmp(part, w3, k * 4) == 0);
        off += k;
    }
    ck_assert_uint_eq(off, n);
    ck_assert_int_eq(gsink_get_params_flat(m, w3, n), GSINK_OK);
    ck_assert_int_eq(gsink_get_params_flat(m2, part, n), GSINK_OK);
    ck_assert(memcmp(w3, part, n * 4) == 0);
    int rounded = 0;
    for (size_t i = 0; i < n; i++) rounded += w3[i] != w2[i];
    ck_assert_int_gt(rounded, 0); /* the matrices really are 16-bit */
    gsink_model_free(m);
    gsink_model_free(m2);
    free(w2);
    free(w3);
    free(part);
    free(w);
    free(g);
    free(one);
}

START_TEST(test_flat_params_and_grads_untied) { flat_case(0); }
END_TEST
START_TEST(test_flat_params_and_grads_tied) { flat_case(1); }
END_TEST

int main(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_presets_and_param_counts);
    tcase_add_test(tc, test_init_is_deterministic_hf_style);
    tcase_add_test(tc, test_initial_loss_near_log_vocab);
    tcase_add_test(tc, test_causal_and_batch_independent);
    tcase_add_test(tc, test_residual_sites_are_consistent);
    tcase_add_test(tc, test_model_fd_untied);
    tcase_add_test(tc, test_model_fd_tied);
    tcase_add_test(tc, test_model_fd_qwen2_llama3);
    tcase_add_test(tc, test_model_fd_qwen3);
    tcase_add_test(tc, test_model_fd_glm4);
    tcase_add_test(tc, test_config_qwen3_glm_fields);
    tcase_add_test(tc, test_config_architecture_fields);
    tcase_add_test(tc, test_gradient_accumulation_and_zero);
    tcase_add_test(tc, test_threads_do_not_change_results);
    tcase_add_test(tc, test_vscale_modes_through_model);
    tcase_add_test(tc, test_logits_survive_backward);
    tcase_add_test(tc, test_logits_survive_backward_bf16);
    tcase_add_test(tc, test_vscale_off_shares_v);
    tcase_add_test(tc, test_recomputed_sites);
    tcase_add_test(tc, test_flat_params_and_grads_untied);
    tcase_add_test(tc, test_flat_params_and_grads_tied);
    suite_add_tcase(s, tc);
    int failed = tu_run_suite(s, 1);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
