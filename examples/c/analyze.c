/*
 * analyze.c - create (or load) a model, run forward + backward on a fixed
 * batch, and print the paper's per-layer diagnostics: R_GS, sink rate and
 * t0/early.
 *
 * Build against an installed libgsink:
 *     cc analyze.c $(pkg-config --cflags --libs gsink) -o analyze
 * Run:
 *     ./analyze                      # "micro" preset, seed 1234
 *     ./analyze --preset tiny --seed 7
 *     ./analyze path/to/model.gguf   # or a HuggingFace directory
 *     ./analyze --numbers            # the cross-language check values
 *
 * The input batch is deterministic so that the C, Rust, Tcl and Python
 * examples print identical numbers: B = 2 sequences of T = min(64,
 * max_seq_len) tokens, token(b, t) = (31 b + 7 t + 3) mod vocab, targets the
 * next token and -1 (ignored) at the last position.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsink.h>

#define BATCH 2

static int fail(const char *what, gsink_status st)
{
    fprintf(stderr, "analyze: %s failed: %s: %s\n", what, gsink_status_str(st), gsink_last_error());
    return 1;
}

#define CHECK(call)                                   \
    do {                                              \
        gsink_status st_ = (call);                    \
        if (st_ != GSINK_OK) {                        \
            rc = fail(#call, st_);                    \
            goto done;                                \
        }                                             \
    } while (0)

int main(int argc, char **argv)
{
    const char *preset = "micro";
    const char *path = NULL;
    unsigned long long seed = 1234;
    int numbers = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--numbers") == 0) numbers = 1;
        else if (strcmp(argv[i], "--preset") == 0 && i + 1 < argc) preset = argv[++i];
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (argv[i][0] != '-') path = argv[i];
        else {
            fprintf(stderr, "usage: %s [--numbers] [--preset NAME] [--seed N] [MODEL_PATH]\n", argv[0]);
            return 2;
        }
    }

    if (gsink_version_number() / 10000 != GSINK_VERSION_MAJOR || gsink_version_number() < GSINK_VERSION_NUMBER) {
        fprintf(stderr, "analyze: libgsink %s is older than the header %s\n", gsink_version_string(),
                GSINK_VERSION_STRING);
        return 1;
    }

    int rc = 0;
    gsink_model *model = NULL;
    int32_t *tokens = NULL, *targets = NULL;
    float *gnorm = NULL;
    gsink_config cfg;
    gsink_config_init(&cfg);
    gsink_model_options opts;
    gsink_model_options_init(&opts);
    opts.seed = seed;
    opts.n_threads = 1; /* one thread: identical numbers in every language */

    if (path) {
        CHECK(gsink_model_load(path, &opts, &model));
        CHECK(gsink_model_config(model, &cfg));
    } else {
        CHECK(gsink_config_preset(preset, &cfg));
        CHECK(gsink_model_create(&cfg, &opts, &model));
    }

    const int T = cfg.max_seq_len < 64 ? cfg.max_seq_len : 64;
    gsink_diag_options diag;
    gsink_diag_options_init(&diag);
    if (diag.sink_window > T) diag.sink_window = T;
    if (diag.rgs_window > T - 1) diag.rgs_window = T - 1;
    CHECK(gsink_set_diag_options(model, &diag));

    tokens = malloc(sizeof *tokens * BATCH * (size_t)T);
    targets = malloc(sizeof *targets * BATCH * (size_t)T);
    gnorm = malloc(sizeof *gnorm * (size_t)T);
    if (!tokens || !targets || !gnorm) {
        fprintf(stderr, "analyze: out of memory\n");
        rc = 1;
        goto done;
    }
    for (int b = 0; b < BATCH; b++)
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = (31 * b + 7 * t + 3) % cfg.vocab_size;
            targets[b * T + t] = t + 1 < T ? (31 * b + 7 * (t + 1) + 3) % cfg.vocab_size : -1;
        }

    float loss = 0.0f;
    CHECK(gsink_forward(model, tokens, targets, BATCH, T, &loss));
    CHECK(gsink_backward(model, 0));

    if (numbers) {
        /* The fixed set compared across languages (tests/examples). */
        float rgs, rate, t0, score[1];
        CHECK(gsink_gradient_sink_ratio(model, 0, 0, diag.rgs_window, GSINK_AGG_SUM_THEN_NORM, &rgs));
        float *scores = gnorm; /* n_heads <= T floats of scratch */
        if (cfg.n_heads > T) { fprintf(stderr, "analyze: too many heads\n"); rc = 1; goto done; }
        CHECK(gsink_sink_scores(model, 0, 0, scores, (size_t)cfg.n_heads));
        score[0] = scores[0];
        CHECK(gsink_sink_rate(model, 0, 0, diag.sink_eps, &rate));
        CHECK(gsink_get_gradient_norms(model, 0, GSINK_SITE_ATTN_NORM_OUT, GSINK_ALL_HEADS,
                                       GSINK_AGG_SUM_THEN_NORM, gnorm, (size_t)T));
        CHECK(gsink_massive_activation_ratio(model, cfg.n_layers - 1, GSINK_SITE_RESID_OUT, &t0));
        printf("loss %.9g\n", loss);
        printf("rgs_layer0 %.9g\n", rgs);
        printf("sink_rate_layer0 %.9g\n", rate);
        printf("sink_score_layer0_head0 %.9g\n", score[0]);
        printf("grad_norm_layer0_t0 %.9g\n", gnorm[0]);
        printf("t0_early_last %.9g\n", t0);
        goto done;
    }

    printf("libgsink %s, %s, %d layers, batch %d x %d tokens\n", gsink_version_string(),
           path ? path : preset, cfg.n_layers, BATCH, T);
    printf("loss %.6f\n", loss);
    printf("%5s %10s %10s %10s\n", "layer", "R_GS", "sink_rate", "t0/early");
    for (int l = 0; l < cfg.n_layers; l++) {
        float rgs, rate, t0;
        CHECK(gsink_gradient_sink_ratio(model, l, diag.sink_position, diag.rgs_window, diag.batch_agg, &rgs));
        CHECK(gsink_sink_rate(model, l, diag.sink_position, diag.sink_eps, &rate));
        CHECK(gsink_massive_activation_ratio(model, l, GSINK_SITE_RESID_OUT, &t0));
        printf("%5d %10.4f %10.4f %10.4f\n", l, rgs, rate, t0);
    }

done:
    free(gnorm);
    free(targets);
    free(tokens);
    gsink_model_free(model);
    return rc;
}
