/*
 * gsink-cli - command-line front end of libgsink.
 *
 *   gsink-cli analyze [options]   forward + backward (activation gradients only,
 *                                 GSINK_MODEL_ANALYSIS, site gradients and unread
 *                                 site activations shared across layers) on a
 *                                 batch in micro-batches, prints the
 *                                 per-layer sink / gradient-sink table and
 *                                 optionally writes the JSON report
 *   gsink-cli info                version, devices and presets
 *   gsink-cli info MODEL          a checkpoint's architecture, flags and shapes
 *
 * Exit status: 0 success, 1 runtime failure (message on stderr), 2 usage error.
 *
 * Under mpirun / srun (docs/distributed.md; no flag), analyze splits the
 * --batch rows over the ranks (consecutive slices), checks that every rank
 * holds the same weights, and all-reduces the batch sums behind the table
 * (batch-summed site gradient vectors, activation norms, column statistics,
 * the loss), so rank 0 prints the table one process prints for the whole
 * batch, to fp32 rounding. --json under several ranks: see dist_report_json.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

#include "cli_json.h"
#include "dist.h"
#include "cli_plots.h"
#include "gsink.h"

#define EXIT_USAGE 2

static const char *prog = "gsink-cli";

static void usage(FILE *f)
{
    fprintf(f,
            "usage: %s <command> [options]\n"
            "\n"
            "commands:\n"
            "  analyze   run forward+backward on a batch and print sink / gradient-sink metrics\n"
            "  info      print the library version, devices and model presets\n"
            "  info MODEL  print a checkpoint's architecture, its flags (q/k/v biases,\n"
            "            RoPE scaling) and shapes without running it\n"
            "\n"
            "analyze options:\n"
            "  --model PATH        load weights (HF directory, .safetensors or .gguf)\n"
            "  --preset NAME       create a randomly initialised model (default: tiny)\n"
            "  --seed N            initialisation / random-token seed (default 0)\n"
            "  --tokens FILE       token ids: a text file (only printable ASCII and whitespace)\n"
            "                      holds decimal ids separated by whitespace and nothing else;\n"
            "                      any other file is raw little-endian int32 ids\n"
            "  --text FILE|DIR     UTF-8 documents (repeatable; a directory gives each of its\n"
            "                      regular files, sorted by name), tokenized and packed into\n"
            "                      one stream with the end-of-text separator after each\n"
            "                      document and no BOS (the paper's protocol); sequences are\n"
            "                      consecutive --seq-token windows of that stream\n"
            "  --tokenizer PATH    GGUF file with tokenizer metadata, HF tokenizer.json, or a\n"
            "                      directory holding tokenizer.json (for --text; default: the\n"
            "                      --model when it is a .gguf or a directory with tokenizer.json)\n"
            "  --separator ID      document separator id (default: the tokenizer's end-of-text)\n"
            "  --save-tokens OUT   write the analysed sequences' token ids (text, one sequence per\n"
            "                      line) to OUT, to feed the same input to other tools\n"
            "  --sequences N       sequences in the diagnostic batch (default 1; --batch is the same)\n"
            "  --micro-batch M     run them M at a time (default: all at once): gradients are summed\n"
            "                      over all N sequences and every metric equals the one-batch\n"
            "                      result, in memory that does not grow with N\n"
            "  --no-progress       no progress line on stderr\n"
            "  --seq N             tokens per sequence (default min(128, max_seq_len))\n"
            "  --device cpu|cuda   device (default cpu)\n"
            "  --precision P       fp32 (default) | tf32 | bf16 matrix products (tf32, bf16: CUDA only)\n"
            "  --weights T         fp32 (default) | bf16 | fp16 weight storage (half the weight memory;\n"
            "                      compute stays fp32)\n"
            "  --threads N         CPU threads, 0..gsink_max_threads() = 2 per CPU (default 0: one per CPU)\n"
            "  --vscale MODE       off | full | backward-only (default off)\n"
            "  --sink-eps X        sink-rate threshold eps (default 0.3)\n"
            "  --sink-window N     T_eps (default 64, clipped to seq_len)\n"
            "  --rgs-window N      T_e of R_GS (default 31)\n"
            "  --agg MODE          gradient batch aggregation: sum (default, paper) | per-seq\n"
            "  --json OUT          write the full report (schema gsink.report/1) to OUT ('-' = stdout)\n"
            "  --plots DIR         draw the paper's Figures 1, 3 and 10 as SVG files into DIR\n"
            "  -q, --quiet         do not print the table\n"
            "\n"
            "  -h, --help          show this help\n"
            "  --version           print the library version\n",
            prog);
}

static int fail_lib(const char *what, gsink_status st)
{
    const char *msg = gsink_last_error();
    fprintf(stderr, "%s: %s failed: %s%s%s\n", prog, what, gsink_status_str(st),
            msg && *msg ? ": " : "", msg ? msg : "");
    return 1;
}

static int parse_int(const char *opt, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "%s: %s expects an integer in [%ld, %ld], got '%s'\n", prog, opt, lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_u64(const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        fprintf(stderr, "%s: %s expects a non-negative integer, got '%s'\n", prog, opt, s);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int parse_float(const char *opt, const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        fprintf(stderr, "%s: %s expects a number, got '%s'\n", prog, opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Reads a whole file; returns NULL (message printed) on failure. */
/* A tokenizer from a GGUF file, a tokenizer.json or a directory holding one. */
static gsink_status load_tokenizer(const char *path, gsink_tokenizer **out)
{
    struct stat sb;
    size_t n = strlen(path);
    if ((stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) || (n >= 5 && !strcmp(path + n - 5, ".json")))
        return gsink_tokenizer_load_json(path, out);
    return gsink_tokenizer_load_gguf(path, out);
}

static char *read_file(const char *path, size_t *len)
{
    /* O_NONBLOCK: a FIFO must not make the tool wait for a writer; only
     * regular files are read. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        fprintf(stderr, "%s: cannot open '%s': %s\n", prog, path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    int fl;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (fl = fcntl(fd, F_GETFL)) < 0 ||
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        fprintf(stderr, "%s: '%s' is not a regular file\n", prog, path);
        close(fd);
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open '%s': %s\n", prog, path, strerror(errno));
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
        if (n == cap) {
            char *nb = cap < SIZE_MAX / 4 ? realloc(buf, cap * 2 + 1) : NULL;
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) {
        fprintf(stderr, "%s: cannot read '%s'\n", prog, path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Token file: text if every byte is printable ASCII or whitespace (then it
 * must hold whitespace-separated decimal ids and nothing else: "1 2 abc" is
 * refused, not read as int32); otherwise raw little-endian int32. Binary ids
 * below 2^24 always hold zero bytes, so they are never taken for text. */
static int32_t *load_tokens(const char *path, size_t *n_out)
{
    size_t len;
    char *buf = read_file(path, &len);
    if (!buf) return NULL;
    int text = len > 0;
    for (size_t i = 0; i < len && text; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (!((c >= 0x20 && c <= 0x7e) || (c >= '\t' && c <= '\r'))) text = 0;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (text) {
        ids = malloc(sizeof(int32_t) * (len / 2 + 1));
        char *p = buf;
        while (ids) {
            while (*p == ' ' || (*p >= '\t' && *p <= '\r')) p++;
            if (!*p) break;
            char *end;
            errno = 0;
            long v = (*p >= '0' && *p <= '9') || (*p == '-' && p[1] >= '0' && p[1] <= '9') ? strtol(p, &end, 10) : 0;
            if (!((*p >= '0' && *p <= '9') || (*p == '-' && p[1] >= '0' && p[1] <= '9'))) end = p;
            int sep_ok = *end == '\0' || *end == ' ' || (*end >= '\t' && *end <= '\r');
            if (end == p || !sep_ok || errno || v < INT32_MIN || v > INT32_MAX) {
                size_t w = 0;
                while (p[w] && p[w] != ' ' && !(p[w] >= '\t' && p[w] <= '\r') && w < 32) w++;
                fprintf(stderr, "%s: '%s' is a text token file but '%.*s' at byte %zu is not a token id "
                                "(text token files hold whitespace-separated decimal integers only)\n",
                        prog, path, (int)w, p, (size_t)(p - buf));
                free(ids);
                free(buf);
                return NULL;
            }
            ids[n++] = (int32_t)v;
            p = end;
        }
    } else {
        if (len % 4 != 0) {
            fprintf(stderr, "%s: '%s' is neither a text token file nor int32 binary "
                            "(size %zu is not a multiple of 4)\n", prog, path, len);
            free(buf);
            return NULL;
        }
        n = len / 4;
        ids = malloc(sizeof(int32_t) * (n ? n : 1));
        if (ids) memcpy(ids, buf, n * 4);
    }
    free(buf);
    if (!ids) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return NULL;
    }
    *n_out = n;
    return ids;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Appends n ids to the growing stream; -1 (message printed) when out of memory. */
static int stream_push(int32_t **ids, size_t *n, size_t *cap, const int32_t *src, size_t k)
{
    if (*n + k > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (c < *n + k) c = c > SIZE_MAX / 8 ? *n + k : c * 2;
        int32_t *p = c < SIZE_MAX / sizeof(int32_t) ? realloc(*ids, c * sizeof(int32_t)) : NULL;
        if (!p) {
            fprintf(stderr, "%s: out of memory\n", prog);
            return -1;
        }
        *ids = p;
        *cap = c;
    }
    memcpy(*ids + *n, src, k * sizeof(int32_t));
    *n += k;
    return 0;
}

/* One document: tokenized, then the separator. */
static int pack_file(gsink_tokenizer *tk, const char *path, int32_t sep, int32_t **ids, size_t *n, size_t *cap)
{
    size_t len, k = 0;
    char *text = read_file(path, &len);
    if (!text) return -1;
    gsink_status st = gsink_tokenizer_encode(tk, text, len, 0, NULL, 0, &k);
    int32_t *tmp = NULL;
    if (st == GSINK_OK || st == GSINK_ERR_BUFFER_TOO_SMALL) {
        tmp = malloc(sizeof(int32_t) * (k + 1));
        st = tmp ? gsink_tokenizer_encode(tk, text, len, 0, tmp, k, &k) : GSINK_ERR_OUT_OF_MEMORY;
    }
    free(text);
    int rc = 0;
    if (st) {
        fprintf(stderr, "%s: tokenizing '%s' failed: %s: %s\n", prog, path, gsink_status_str(st),
                st == GSINK_ERR_OUT_OF_MEMORY ? "out of memory" : gsink_tokenizer_errmsg(tk));
        rc = -1;
    } else {
        tmp[k++] = sep;
        rc = stream_push(ids, n, cap, tmp, k);
    }
    free(tmp);
    return rc;
}

/* The packed stream of every --text input (files, and the regular files of
 * directories in name order), each document followed by sep. */
static int32_t *pack_documents(gsink_tokenizer *tk, const char *const *paths, int n_paths, int32_t sep, size_t *n_out,
                               size_t *n_docs)
{
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    *n_docs = 0;
    for (int i = 0; i < n_paths; i++) {
        struct stat sb;
        if (stat(paths[i], &sb) == 0 && S_ISDIR(sb.st_mode)) {
            DIR *d = opendir(paths[i]);
            if (!d) {
                fprintf(stderr, "%s: cannot open '%s': %s\n", prog, paths[i], strerror(errno));
                goto fail;
            }
            char **names = NULL;
            size_t nn = 0, nc = 0;
            struct dirent *e;
            int bad = 0;
            while (!bad && (e = readdir(d))) {
                if (e->d_name[0] == '.') continue;
                size_t pl = strlen(paths[i]) + strlen(e->d_name) + 2;
                char *full = malloc(pl);
                if (!full) { bad = 1; break; }
                snprintf(full, pl, "%s/%s", paths[i], e->d_name);
                if (stat(full, &sb) != 0 || !S_ISREG(sb.st_mode)) { free(full); continue; }
                if (nn == nc) {
                    char **nv = realloc(names, sizeof *nv * (nc = nc ? nc * 2 : 64));
                    if (!nv) { free(full); bad = 1; break; }
                    names = nv;
                }
                names[nn++] = full;
            }
            closedir(d);
            if (bad) fprintf(stderr, "%s: out of memory\n", prog);
            if (!bad && nn == 0) {
                fprintf(stderr, "%s: '%s' holds no regular files\n", prog, paths[i]);
                bad = 1;
            }
            if (!bad) qsort(names, nn, sizeof *names, cmp_str);
            for (size_t k = 0; k < nn; k++) {
                if (!bad && pack_file(tk, names[k], sep, &ids, &n, &cap)) bad = 1;
                if (!bad) ++*n_docs;
                free(names[k]);
            }
            free(names);
            if (bad) goto fail;
        } else {
            if (pack_file(tk, paths[i], sep, &ids, &n, &cap)) goto fail;
            ++*n_docs;
        }
    }
    *n_out = n;
    return ids;
fail:
    free(ids);
    return NULL;
}

/* The analysed sequences as text: one line of T ids per sequence. */
static int save_token_rows(const char *path, const int32_t *tok, size_t rows, int T)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "%s: cannot write '%s': %s\n", prog, path, strerror(errno));
        return -1;
    }
    for (size_t r = 0; r < rows; r++)
        for (int t = 0; t < T; t++) fprintf(f, "%d%c", (int)tok[r * (size_t)T + t], t + 1 < T ? ' ' : '\n');
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad) fprintf(stderr, "%s: writing '%s' failed\n", prog, path);
    return bad ? -1 : 0;
}

static int cmd_info(void)
{
    printf("libgsink %s (header %s)\n", gsink_version_string(), GSINK_VERSION_STRING);
    printf("devices:\n");
    static const struct { gsink_device_kind kind; const char *name; } kinds[] = {
        {GSINK_DEVICE_CPU, "cpu"}, {GSINK_DEVICE_CUDA, "cuda"}};
    for (size_t k = 0; k < 2; k++) {
        int count = 0;
        if (gsink_device_count(kinds[k].kind, &count) != GSINK_OK) count = 0;
        if (count == 0) printf("  %s: none\n", kinds[k].name);
        for (int i = 0; i < count; i++) {
            char desc[256];
            if (gsink_device_describe(kinds[k].kind, i, desc, sizeof desc) != GSINK_OK)
                snprintf(desc, sizeof desc, "(no description: %s)", gsink_last_error());
            printf("  %s:%d  %s\n", kinds[k].name, i, desc);
        }
    }
    printf("presets:\n  %-12s %6s %6s %4s %4s %4s %6s %7s %6s\n", "name", "layers", "d", "H", "KV",
           "dh", "ff", "vocab", "T");
    for (int i = 0;; i++) {
        const char *name = gsink_config_preset_name(i);
        if (!name) break;
        gsink_config c;
        gsink_config_init(&c);
        if (gsink_config_preset(name, &c) != GSINK_OK) continue;
        printf("  %-12s %6d %6d %4d %4d %4d %6d %7d %6d\n", name, c.n_layers, c.d_model, c.n_heads,
               c.n_kv_heads, c.d_head, c.d_ff, c.vocab_size, c.max_seq_len);
    }
    return 0;
}

/* gsink-cli info MODEL: loads the checkpoint and prints its configuration. */
static int cmd_info_model(const char *path)
{
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.n_threads = 1;
    gsink_model *m = NULL;
    if (gsink_model_load(path, &o, &m) != GSINK_OK) {
        fprintf(stderr, "%s: %s\n", prog, gsink_last_error());
        return 1;
    }
    gsink_config c;
    gsink_config_init(&c);
    gsink_status st = gsink_model_config(m, &c);
    size_t numel = 0;
    if (!st) st = gsink_param_numel(m, &numel);
    gsink_model_free(m);
    if (st) {
        fprintf(stderr, "%s: %s\n", prog, gsink_last_error());
        return 1;
    }
    const char *arch = gsink_arch_name(c.arch), *rope = gsink_rope_scaling_name(c.rope_scaling);
    printf("model: %s\n", path);
    printf("architecture: %s\n", arch ? arch : "?");
    printf("flags: qkv_bias=%d qk_norm=%d sandwich_norm=%d tie_embeddings=%d rope_scaling=%s sliding_window=%d\n",
           c.qkv_bias, c.qk_norm, c.sandwich_norm, c.tie_embeddings, rope ? rope : "?", c.sliding_window);
    printf("rope: theta=%g rotary_dims=%d/%d pairs=%s", (double)c.rope_theta, c.rope_dims ? c.rope_dims : c.d_head,
           c.d_head, c.rope_interleaved ? "interleaved" : "halves");
    switch (c.rope_scaling) {
    case GSINK_ROPE_LINEAR: printf(" factor=%g", (double)c.rope_factor); break;
    case GSINK_ROPE_LLAMA3:
        printf(" factor=%g low_freq_factor=%g high_freq_factor=%g original_max_position_embeddings=%d",
               (double)c.rope_factor, (double)c.rope_low_freq_factor, (double)c.rope_high_freq_factor,
               c.rope_original_max_pos);
        break;
    case GSINK_ROPE_YARN:
        printf(" factor=%g beta_fast=%g beta_slow=%g original_max_position_embeddings=%d attention_factor=%g truncate=%d",
               (double)c.rope_factor, (double)c.rope_beta_fast, (double)c.rope_beta_slow, c.rope_original_max_pos,
               (double)c.rope_attention_factor, c.rope_truncate);
        break;
    default: break;
    }
    printf("\n");
    printf("shape: layers=%d d_model=%d heads=%d kv_heads=%d d_head=%d d_ff=%d vocab=%d max_seq_len=%d\n",
           c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_head, c.d_ff, c.vocab_size, c.max_seq_len);
    printf("parameters: %zu\n", numel);
    return 0;
}

typedef struct analyze_args {
    const char *model, *preset, *tokens, *tokenizer, *json, *device, *precision, *plots, *save_tokens, *weights;
    const char **text; /* --text FILE|DIR, repeatable (n_text of them) */
    int n_text, separator;
    uint64_t seed;
    int batch, seq, threads, quiet, micro_batch, no_progress;
    int vscale;
    gsink_diag_options diag;
    int sink_window_set;
} analyze_args;

static int parse_analyze(int argc, char **argv, analyze_args *a)
{
    memset(a, 0, sizeof *a);
    a->preset = NULL;
    a->separator = -1;
    a->batch = 1;
    a->vscale = GSINK_VSCALE_OFF;
    gsink_diag_options_init(&a->diag);
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE()                                                              \
    do {                                                                          \
        if (!v) {                                                                 \
            fprintf(stderr, "%s: option %s needs a value\n", prog, o);            \
            return -1;                                                            \
        }                                                                         \
        i++;                                                                      \
    } while (0)
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(o, "--model")) { NEED_VALUE(); a->model = v; }
        else if (!strcmp(o, "--preset")) { NEED_VALUE(); a->preset = v; }
        else if (!strcmp(o, "--tokens")) { NEED_VALUE(); a->tokens = v; }
        else if (!strcmp(o, "--text")) {
            NEED_VALUE();
            const char **nt = realloc(a->text, sizeof *nt * (size_t)(a->n_text + 1));
            if (!nt) { fprintf(stderr, "%s: out of memory\n", prog); return -1; }
            a->text = nt;
            a->text[a->n_text++] = v;
        } else if (!strcmp(o, "--separator")) { NEED_VALUE(); if (parse_int(o, v, 0, INT32_MAX, &a->separator)) return -1; }
        else if (!strcmp(o, "--tokenizer")) { NEED_VALUE(); a->tokenizer = v; }
        else if (!strcmp(o, "--json")) { NEED_VALUE(); a->json = v; }
        else if (!strcmp(o, "--plots")) { NEED_VALUE(); a->plots = v; }
        else if (!strcmp(o, "--save-tokens")) { NEED_VALUE(); a->save_tokens = v; }
        else if (!strcmp(o, "--device")) { NEED_VALUE(); a->device = v; }
        else if (!strcmp(o, "--precision")) { NEED_VALUE(); a->precision = v; }
        else if (!strcmp(o, "--weights")) { NEED_VALUE(); a->weights = v; }
        else if (!strcmp(o, "--seed")) { NEED_VALUE(); if (parse_u64(o, v, &a->seed)) return -1; }
        else if (!strcmp(o, "--batch") || !strcmp(o, "--sequences")) { NEED_VALUE(); if (parse_int(o, v, 1, 1 << 20, &a->batch)) return -1; }
        else if (!strcmp(o, "--micro-batch")) { NEED_VALUE(); if (parse_int(o, v, 1, 1 << 20, &a->micro_batch)) return -1; }
        else if (!strcmp(o, "--no-progress")) a->no_progress = 1;
        else if (!strcmp(o, "--seq")) { NEED_VALUE(); if (parse_int(o, v, 1, 1 << 24, &a->seq)) return -1; }
        else if (!strcmp(o, "--threads")) { NEED_VALUE(); if (parse_int(o, v, 0, gsink_max_threads(), &a->threads)) return -1; }
        else if (!strcmp(o, "--sink-eps")) { NEED_VALUE(); if (parse_float(o, v, &a->diag.sink_eps)) return -1; }
        else if (!strcmp(o, "--sink-window")) {
            NEED_VALUE();
            if (parse_int(o, v, 1, 1 << 24, &a->diag.sink_window)) return -1;
            a->sink_window_set = 1;
        } else if (!strcmp(o, "--rgs-window")) { NEED_VALUE(); if (parse_int(o, v, 1, 1 << 24, &a->diag.rgs_window)) return -1; }
        else if (!strcmp(o, "--agg")) {
            NEED_VALUE();
            if (!strcmp(v, "sum")) a->diag.batch_agg = GSINK_AGG_SUM_THEN_NORM;
            else if (!strcmp(v, "per-seq")) a->diag.batch_agg = GSINK_AGG_PER_SEQUENCE;
            else { fprintf(stderr, "%s: --agg expects sum or per-seq, got '%s'\n", prog, v); return -1; }
        } else if (!strcmp(o, "--vscale")) {
            NEED_VALUE();
            if (!strcmp(v, "off")) a->vscale = GSINK_VSCALE_OFF;
            else if (!strcmp(v, "full")) a->vscale = GSINK_VSCALE_FULL;
            else if (!strcmp(v, "backward-only")) a->vscale = GSINK_VSCALE_BACKWARD_ONLY;
            else { fprintf(stderr, "%s: --vscale expects off, full or backward-only, got '%s'\n", prog, v); return -1; }
        } else if (!strcmp(o, "-q") || !strcmp(o, "--quiet")) a->quiet = 1;
        else {
            fprintf(stderr, "%s: unknown option '%s' (see --help)\n", prog, o);
            return -1;
        }
#undef NEED_VALUE
    }
    if (a->model && a->preset) {
        fprintf(stderr, "%s: --model and --preset are exclusive\n", prog);
        return -1;
    }
    if (a->tokens && a->text) {
        fprintf(stderr, "%s: --tokens and --text are exclusive\n", prog);
        return -1;
    }
    if (a->text && !a->tokenizer) {
        /* A GGUF model carries its tokenizer; a model directory may hold tokenizer.json. */
        struct stat sb;
        char tj[4096];
        size_t ml = a->model ? strlen(a->model) : 0;
        if (ml > 5 && !strcmp(a->model + ml - 5, ".gguf")) {
            a->tokenizer = a->model;
        } else if (a->model && stat(a->model, &sb) == 0 && S_ISDIR(sb.st_mode) &&
                   (size_t)snprintf(tj, sizeof tj, "%s/tokenizer.json", a->model) < sizeof tj && stat(tj, &sb) == 0) {
            a->tokenizer = a->model;
        } else {
            fprintf(stderr, "%s: --text needs --tokenizer (GGUF, tokenizer.json or its directory), a .gguf --model "
                            "or a --model directory holding tokenizer.json\n", prog);
            return -1;
        }
    }
    if (a->device && strcmp(a->device, "cpu") && strcmp(a->device, "cuda")) {
        fprintf(stderr, "%s: --device expects cpu or cuda, got '%s'\n", prog, a->device);
        return -1;
    }
    if (a->precision && strcmp(a->precision, "fp32") && strcmp(a->precision, "tf32") && strcmp(a->precision, "bf16")) {
        fprintf(stderr, "%s: --precision expects fp32, tf32 or bf16, got '%s'\n", prog, a->precision);
        return -1;
    }
    if (a->weights && strcmp(a->weights, "fp32") && strcmp(a->weights, "bf16") && strcmp(a->weights, "fp16")) {
        fprintf(stderr, "%s: --weights expects fp32, bf16 or fp16, got '%s'\n", prog, a->weights);
        return -1;
    }
    if (!a->model && !a->preset) a->preset = "tiny";
    return 0;
}

/* Fills tokens/targets (batch*seq each) from ids: sequence b takes ids
 * [b*seq, b*seq+seq) and predicts the following id (-1 past the end). */
static int fill_batch(const int32_t *ids, size_t n_ids, int B, int T, int32_t *tok, int32_t *tgt)
{
    size_t need = (size_t)B * (size_t)T;
    if (n_ids < need) {
        fprintf(stderr, "%s: %zu tokens given, batch*seq = %zu needed\n", prog, n_ids, need);
        return -1;
    }
    for (size_t i = 0; i < need; i++) {
        tok[i] = ids[i];
        tgt[i] = i + 1 < n_ids ? ids[i + 1] : -1;
    }
    return 0;
}


/* ---- analyze on several ranks ------------------------------------------------ */

/* Every rank holds the same weights (the same file or preset and seed):
 * FNV-1a of the weights, compared across ranks. 0 when they agree. */
static int dist_check_weights(dist_comm *dc, gsink_model *m)
{
    size_t n;
    gsink_status st;
    if ((st = gsink_param_numel(m, &n))) return fail_lib("counting parameters", st);
    float *w = malloc((n ? n : 1) * sizeof(float));
    uint64_t *all = malloc((size_t)dc->size * sizeof *all);
    if (!w || !all) {
        free(w);
        free(all);
        fprintf(stderr, "%s: out of memory\n", prog);
        return 1;
    }
    if ((st = gsink_get_params_flat(m, w, n))) {
        free(w);
        free(all);
        return fail_lib("reading the weights", st);
    }
    uint64_t h = dist_fnv1a64(w, n * sizeof(float), DIST_FNV_INIT);
    free(w);
    int bad = dist_allgather_u64(dc, h, all) != 0;
    for (int r = 1; r < dc->size && !bad; r++)
        if (all[r] != all[0]) {
            if (dc->rank == 0)
                fprintf(stderr, "%s: rank %d holds other weights than rank 0 (checksum %016llx vs %016llx): every rank "
                                "must load the same model (or preset and --seed)\n", prog, r,
                        (unsigned long long)all[r], (unsigned long long)all[0]);
            bad = 1;
        }
    free(all);
    return bad;
}

/* Sums the analysis states of every rank into every rank's handle: each
 * value is a sum over sequences, so the result is the state of one process
 * over the whole batch (docs/distributed.md). 0 on success. */
static int dist_reduce_state(dist_comm *dc, gsink_analysis *an)
{
    size_t n = 0;
    gsink_status st = gsink_analysis_state_size(an, &n);
    double *buf = st ? NULL : malloc((n ? n : 1) * sizeof(double));
    if (!st && !buf) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return 1;
    }
    if (!st) st = gsink_analysis_get_state(an, buf, n);
    int rc = 0;
    if (st) {
        fprintf(stderr, "%s: reading the analysis state failed: %s: %s\n", prog, gsink_status_str(st),
                gsink_analysis_errmsg(an));
        rc = 1;
    } else if (dist_allreduce_sum_d(dc, buf, n)) {
        fprintf(stderr, "%s: summing the analysis states over the ranks failed\n", prog);
        rc = 1;
    } else if ((st = gsink_analysis_set_state(an, buf, n))) {
        fprintf(stderr, "%s: setting the summed analysis state failed: %s: %s\n", prog, gsink_status_str(st),
                gsink_analysis_errmsg(an));
        rc = 1;
    }
    free(buf);
    return rc;
}

/* The numbers behind --plots, whichever way they were computed: per layer the
 * gradient norms at attn_norm_out for every position (Figure 1), R_GS(0), and
 * for the first PLOT_TOKENS tokens the branch ratios and input norms
 * (Figures 3 and 10). */
#define PLOT_TOKENS 16
typedef struct plot_data {
    int L, T, n_tok;
    float *gnorm;                      /* L x T */
    float *rgs;                        /* L */
    float *hnorm[2], *ratio[2][3];     /* [branch] L x n_tok; ratio: bloat, change, compress */
} plot_data;

static void plot_data_free(plot_data *p)
{
    free(p->gnorm);
    free(p->rgs);
    for (int b = 0; b < 2; b++) {
        free(p->hnorm[b]);
        for (int k = 0; k < 3; k++) free(p->ratio[b][k]);
    }
    memset(p, 0, sizeof *p);
}

static int plot_data_alloc(plot_data *p, int L, int T)
{
    memset(p, 0, sizeof *p);
    p->L = L;
    p->T = T;
    p->n_tok = T < PLOT_TOKENS ? T : PLOT_TOKENS;
    size_t e = (size_t)L * (size_t)p->n_tok;
    int bad = !(p->gnorm = malloc(sizeof(float) * (size_t)L * (size_t)T)) || !(p->rgs = malloc(sizeof(float) * (size_t)L));
    for (int b = 0; b < 2; b++) {
        bad |= !(p->hnorm[b] = malloc(sizeof(float) * e));
        for (int k = 0; k < 3; k++) bad |= !(p->ratio[b][k] = malloc(sizeof(float) * e));
    }
    if (bad) {
        plot_data_free(p);
        fprintf(stderr, "%s: out of memory\n", prog);
        return -1;
    }
    return 0;
}

/* Fills p from the report (branch ratios and input norms of the early
 * tokens, R_GS) and the analysis (the whole attn_norm_out profile). */
static int plot_data_from_report(plot_data *p, const jval *rep, gsink_analysis *an, const gsink_diag_options *d, int L,
                                 int T)
{
    if (plot_data_alloc(p, L, T)) return -1;
    const jval *layers = json_get(rep, "layers");
    static const char *branch[2] = {"attn", "mlp"}, *site[2] = {"resid_in", "resid_mid"};
    static const char *ratio[3] = {"bloat", "change", "compress"};
    for (int l = 0; l < L; l++) {
        const jval *lay = json_at(layers, (size_t)l);
        size_t len = 0;
        gsink_status st = gsink_analysis_gradient_norms(an, l, GSINK_SITE_ATTN_NORM_OUT, GSINK_ALL_HEADS, d->batch_agg,
                                                        p->gnorm + (size_t)l * T, (size_t)T, &len);
        if (st || len != (size_t)T) {
            fprintf(stderr, "%s: reading the gradient norms failed: %s: %s\n", prog, gsink_status_str(st),
                    gsink_analysis_errmsg(an));
            return -1;
        }
        p->rgs[l] = (float)json_num(json_get(lay, "gradient_sink_ratio"));
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < p->n_tok; t++) {
                size_t i = (size_t)l * p->n_tok + t;
                p->hnorm[b][i] = (float)json_num(json_at(json_get(json_get(lay, "activation_norms"), site[b]), (size_t)t));
                for (int k = 0; k < 3; k++)
                    p->ratio[b][k][i] =
                        (float)json_num(json_at(json_get(json_get(json_get(lay, "branch"), branch[b]), ratio[k]), (size_t)t));
            }
    }
    return 0;
}

/* The per-layer table, read off the report. */
static void print_table(const jval *rep)
{
    printf("%5s %9s %9s %9s %14s %13s %10s %10s\n", "layer", "sink_rate", "M_0", "R_GS", "t0/early:resid",
           "t0/early:mlp", "|v_0|", "|v_1..15|");
    const jval *layers = json_get(rep, "layers");
    for (size_t l = 0; layers && l < layers->n; l++) {
        const jval *lay = json_at(layers, l), *heads = json_get(lay, "heads");
        double m0 = 0;
        for (size_t h = 0; heads && h < heads->n; h++) m0 += json_num(json_get(json_at(heads, h), "column_mass"));
        m0 = heads && heads->n ? m0 / (double)heads->n : NAN;
        printf("%5d %9.3f %9.3f %9.3f %14.3f %13.3f %10.4g %10.4g\n", (int)json_num(json_get(lay, "layer")),
               json_num(json_get(lay, "sink_rate")), m0, json_num(json_get(lay, "gradient_sink_ratio")),
               json_path_num(lay, "massive_activation_ratio", "resid_out", NULL),
               json_path_num(lay, "massive_activation_ratio", "mlp_out", NULL),
               json_path_num(lay, "value_norm", "token0", NULL), json_path_num(lay, "value_norm", "early_mean", NULL));
    }
}

/* Progress on stderr: a redrawn line on a terminal, else a line every 10%. */
typedef struct progress_state {
    int on, tty, last_decile;
    int64_t total, seq_len;
    double t0;
} progress_state;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress_start(progress_state *p, int on, int64_t total, int64_t seq_len)
{
    p->on = on;
    p->tty = isatty(STDERR_FILENO);
    p->last_decile = -1;
    p->total = total;
    p->seq_len = seq_len;
    p->t0 = now_s();
}

static void progress_update(progress_state *p, int64_t done)
{
    if (!p->on) return;
    double el = now_s() - p->t0, rate = el > 0 ? (double)(done * p->seq_len) / el : 0;
    double eta = done > 0 ? el * (double)(p->total - done) / (double)done : 0;
    int decile = (int)(10 * done / p->total);
    if (!p->tty && decile == p->last_decile && done < p->total) return;
    p->last_decile = decile;
    char bar[31];
    int fill = (int)(30 * done / p->total);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    fprintf(stderr, "%s[%s] %lld/%lld sequences  %.0f tokens/s  ETA %dm%02ds%s", p->tty ? "\r\033[K" : "", bar,
            (long long)done, (long long)p->total, rate, (int)eta / 60, (int)eta % 60, p->tty ? "" : "\n");
    fflush(stderr);
}

static void progress_end(progress_state *p)
{
    if (p->on && p->tty) fputc('\n', stderr);
}

/* Writes DIR/fig1_gradient_sinks.svg, fig3_attn_branch.svg, fig10_mlp_branch.svg. */
static int write_plots(const char *dir, const char *title, const plot_data *p, int quiet)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: cannot create '%s': %s\n", prog, dir, strerror(errno));
        return -1;
    }
    static const char *names[3] = {"fig1_gradient_sinks.svg", "fig3_attn_branch.svg", "fig10_mlp_branch.svg"};
    for (int k = 0; k < 3; k++) {
        size_t n = strlen(dir) + strlen(names[k]) + 2;
        char *path = malloc(n);
        if (!path) {
            fprintf(stderr, "%s: out of memory\n", prog);
            return -1;
        }
        snprintf(path, n, "%s/%s", dir, names[k]);
        errno = 0;
        int r = k == 0 ? plot_gradient_sinks(path, title, p->L, p->T, p->gnorm, p->rgs)
                       : plot_branch_ratios(path, title, k == 1 ? "attn" : "mlp", p->L, p->n_tok, p->hnorm[k - 1],
                                            p->ratio[k - 1][0], p->ratio[k - 1][1], p->ratio[k - 1][2]);
        if (r) fprintf(stderr, "%s: writing '%s' failed: %s\n", prog, path, strerror(errno ? errno : EIO));
        else if (!quiet) printf("figure written to %s\n", path);
        free(path);
        if (r) return -1;
    }
    return 0;
}

static int cmd_analyze(int argc, char **argv)
{
    analyze_args a;
    if (parse_analyze(argc, argv, &a)) return EXIT_USAGE;

    int rc = 1;
    gsink_status st;
    gsink_model *m = NULL;
    gsink_tokenizer *tk = NULL;
    int32_t *ids = NULL, *tok = NULL, *tgt = NULL;
    char *json = NULL;
    gsink_analysis *an = NULL;
    jval *rep = NULL;

    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.seed = a.seed;
    mo.n_threads = a.threads ? a.threads : dist_default_threads(dist_world(), gsink_max_threads());
    /* the streaming analysis needs activation gradients only, folds each
     * layer's site gradients and activation norms as they are computed, and
     * reads no activation of a discarded site afterwards */
    mo.flags = GSINK_MODEL_ANALYSIS | GSINK_MODEL_DISCARD_SITE_GRADS | GSINK_MODEL_DISCARD_SITE_ACTIVATIONS;
    if (a.device && !strcmp(a.device, "cuda")) {
        int gpus = 0;
        mo.device = GSINK_DEVICE_CUDA;
        if (dist_world()->size > 1 && gsink_device_count(GSINK_DEVICE_CUDA, &gpus) == GSINK_OK)
            mo.device_index = dist_device_index(dist_world(), gpus); /* one GPU per rank of a node */
    }
    if (a.precision && !strcmp(a.precision, "tf32")) mo.precision = GSINK_PRECISION_TF32;
    if (a.precision && !strcmp(a.precision, "bf16")) mo.precision = GSINK_PRECISION_BF16;
    if (a.weights && !strcmp(a.weights, "bf16")) mo.weight_dtype = GSINK_WEIGHTS_BF16;
    if (a.weights && !strcmp(a.weights, "fp16")) mo.weight_dtype = GSINK_WEIGHTS_FP16;
    if (a.model) {
        if ((st = gsink_model_load(a.model, &mo, &m))) { rc = fail_lib("loading the model", st); goto out; }
    } else {
        gsink_config cfg;
        gsink_config_init(&cfg);
        if ((st = gsink_config_preset(a.preset, &cfg))) {
            fprintf(stderr, "%s: unknown preset '%s' (see '%s info')\n", prog, a.preset, prog);
            rc = EXIT_USAGE;
            goto out;
        }
        if ((st = gsink_model_create(&cfg, &mo, &m))) { rc = fail_lib("creating the model", st); goto out; }
    }
    gsink_config cfg;
    cfg.size = sizeof cfg;
    if ((st = gsink_model_config(m, &cfg))) { rc = fail_lib("reading the config", st); goto out; }

    int B = a.batch, T = a.seq ? a.seq : (cfg.max_seq_len < 128 ? cfg.max_seq_len : 128);
    if (T > cfg.max_seq_len) {
        fprintf(stderr, "%s: --seq %d exceeds the model's max_seq_len %d\n", prog, T, cfg.max_seq_len);
        rc = EXIT_USAGE;
        goto out;
    }
    if ((size_t)B > SIZE_MAX / sizeof(int32_t) / (size_t)T) {
        fprintf(stderr, "%s: batch*seq too large\n", prog);
        rc = EXIT_USAGE;
        goto out;
    }
    size_t N = (size_t)B * (size_t)T;
    tok = malloc(N * sizeof(int32_t));
    tgt = malloc(N * sizeof(int32_t));
    if (!tok || !tgt) { fprintf(stderr, "%s: out of memory\n", prog); goto out; }

    const char *source = "random tokens";
    char srcbuf[1024];
    if (a.tokens) {
        size_t n;
        if (!(ids = load_tokens(a.tokens, &n))) goto out;
        if (fill_batch(ids, n, B, T, tok, tgt)) { rc = EXIT_USAGE; goto out; }
        source = a.tokens;
    } else if (a.text) {
        size_t n = 0, docs = 0;
        if ((st = load_tokenizer(a.tokenizer, &tk))) { rc = fail_lib("loading the tokenizer", st); goto out; }
        int32_t sep = a.separator, bos = -1, eos = -1;
        if (sep < 0) {
            if ((st = gsink_tokenizer_special(tk, &bos, &eos))) { rc = fail_lib("reading the special tokens", st); goto out; }
            if (eos < 0) {
                fprintf(stderr, "%s: the tokenizer has no end-of-text token: give the separator with --separator ID\n", prog);
                rc = EXIT_USAGE;
                goto out;
            }
            sep = eos;
        }
        if (!(ids = pack_documents(tk, a.text, a.n_text, sep, &n, &docs))) goto out;
        if (fill_batch(ids, n, B, T, tok, tgt)) { rc = EXIT_USAGE; goto out; }
        snprintf(srcbuf, sizeof srcbuf, "%s%s (%zu document%s, %zu tokens packed, separator %d)", a.text[0],
                 a.n_text > 1 ? " ..." : "", docs, docs == 1 ? "" : "s", n, (int)sep);
        source = srcbuf;
    } else {
        uint64_t s = a.seed ^ 0x5EEDull;
        for (size_t i = 0; i < N; i++) tok[i] = (int32_t)(splitmix64(&s) % (uint64_t)cfg.vocab_size);
        for (size_t i = 0; i < N; i++) tgt[i] = (i + 1) % (size_t)T ? tok[i + 1] : (int32_t)(splitmix64(&s) % (uint64_t)cfg.vocab_size);
    }

    if (a.save_tokens && dist_world()->rank == 0 && save_token_rows(a.save_tokens, tok, B, T)) goto out;

    if (a.vscale != GSINK_VSCALE_OFF) {
        gsink_vscale_options vo;
        gsink_vscale_options_init(&vo);
        vo.mode = a.vscale;
        if ((st = gsink_vscale_enable(m, &vo))) { rc = fail_lib("enabling V-scale", st); goto out; }
    }
    /* The sink window cannot be longer than the sequence. */
    if (!a.sink_window_set && a.diag.sink_window > T) a.diag.sink_window = T;
    if ((st = gsink_set_diag_options(m, &a.diag))) { rc = fail_lib("setting diagnostic options", st); goto out; }

    /* The diagnostic batch in micro-batches through the streaming analysis;
     * with one micro-batch this is a plain forward + backward. Under several
     * ranks each runs its rows [lo, hi) and the analysis states (sums over
     * sequences) are summed over the ranks: rank 0 then holds exactly the
     * state of one process over the whole batch. */
    int MB = a.micro_batch && a.micro_batch < B ? a.micro_batch : B;
    dist_comm *dc = dist_world();
    int lo = 0, hi = B;
    if (dc->size > 1) {
        if (B < dc->size) {
            fprintf(stderr, "%s: --sequences %d is split over %d ranks: at least one sequence per rank\n", prog, B,
                    dc->size);
            rc = EXIT_USAGE;
            goto out;
        }
        dist_slice(B, dc->rank, dc->size, &lo, &hi);
        if (dist_check_weights(dc, m)) goto out;
    }
    if ((st = gsink_analysis_begin(m, T, &a.diag, &an))) { rc = fail_lib("starting the analysis", st); goto out; }
    {
        progress_state ps;
        /* rank 0 shows its own share's progress */
        progress_start(&ps, !a.quiet && !a.no_progress && dc->rank == 0, hi - lo, T);
        for (int s0 = lo; s0 < hi; s0 += MB) {
            int mb = hi - s0 < MB ? hi - s0 : MB;
            size_t off = (size_t)s0 * (size_t)T;
            if ((st = gsink_analysis_add(an, tok + off, tgt + off, mb, T))) {
                progress_end(&ps);
                fprintf(stderr, "%s: micro-batch at sequence %d failed: %s: %s\n", prog, s0, gsink_status_str(st),
                        gsink_analysis_errmsg(an));
                goto out;
            }
            progress_update(&ps, s0 + mb - lo);
        }
        progress_end(&ps);
    }
    if ((st = gsink_analysis_finish(an))) {
        fprintf(stderr, "%s: finishing the analysis failed: %s: %s\n", prog, gsink_status_str(st), gsink_analysis_errmsg(an));
        goto out;
    }
    if (dc->size > 1 && dist_reduce_state(dc, an)) goto out;
    if (dc->rank != 0) { /* rank 0 writes the table, the report and the figures */
        rc = 0;
        goto out;
    }
    if ((st = gsink_analysis_report_json(an, &a.diag, &json))) {
        fprintf(stderr, "%s: building the report failed: %s: %s\n", prog, gsink_status_str(st), gsink_analysis_errmsg(an));
        goto out;
    }
    if (!(rep = json_parse(json))) {
        fprintf(stderr, "%s: the library's report is not valid JSON\n", prog);
        goto out;
    }

    if (!a.quiet) {
        printf("model: %s  (L=%d d=%d H=%d KV=%d dh=%d ff=%d V=%d)\n", a.model ? a.model : a.preset,
               cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_ff,
               cfg.vocab_size);
        printf("input: %s, %d sequences x seq %d", source, B, T);
        if (MB < B) printf(" in micro-batches of %d", MB);
        if (dc->size > 1) printf(" on %d ranks", dc->size);
        printf(", loss %.4f\n", json_path_num(rep, "input", "loss", NULL));
        printf("sink rate: eps=%.2f T_eps=%d s=0 | R_GS: T_e=%d, gradients %s | t0/early: ||x_0|| / mean ||x_1..15||\n\n",
               a.diag.sink_eps, a.diag.sink_window, a.diag.rgs_window,
               a.diag.batch_agg == GSINK_AGG_SUM_THEN_NORM ? "summed over the batch" : "per sequence");
        print_table(rep);
        printf("\nM_0: column mass of token 0 averaged over heads (sum_t a_t0; %d would mean every query attends only to token 0)\n", T);
    }

    if (a.json) {
        if (!strcmp(a.json, "-")) {
            fputs(json, stdout);
        } else {
            FILE *f = fopen(a.json, "w");
            if (!f) { fprintf(stderr, "%s: cannot write '%s': %s\n", prog, a.json, strerror(errno)); goto out; }
            size_t len = strlen(json);
            int bad = fwrite(json, 1, len, f) != len;
            bad |= fclose(f) != 0;
            if (bad) { fprintf(stderr, "%s: writing '%s' failed\n", prog, a.json); goto out; }
            if (!a.quiet) printf("report written to %s\n", a.json);
        }
    }
    if (a.plots) {
        plot_data pd;
        int bad = plot_data_from_report(&pd, rep, an, &a.diag, cfg.n_layers, T);
        const char *name = a.model ? a.model : a.preset, *slash = strrchr(name, '/');
        if (slash && slash[1]) name = slash + 1;
        if (!bad) bad = write_plots(a.plots, name, &pd, a.quiet);
        plot_data_free(&pd);
        if (bad) goto out;
    }
    rc = 0;
out:
    json_free(rep);
    gsink_analysis_free(an);
    gsink_free(json);
    free(ids);
    free(tok);
    free(tgt);
    gsink_tokenizer_free(tk);
    gsink_model_free(m);
    free(a.text);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("gsink-cli %s\n", gsink_version_string());
        return 0;
    }
    if (!strcmp(cmd, "info")) {
        const char *model = NULL;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
            if (argv[i][0] == '-' || model) {
                fprintf(stderr, "%s: info takes no options and at most one MODEL ('%s')\n", prog, argv[i]);
                return EXIT_USAGE;
            }
            model = argv[i];
        }
        return model ? cmd_info_model(model) : cmd_info();
    }
    if (!strcmp(cmd, "analyze")) {
        dist_comm dc;
        char err[512];
        if (dist_init(&dc, err, sizeof err)) {
            fprintf(stderr, "%s: %s\n", prog, err);
            return 1;
        }
        int rc = cmd_analyze(argc - 2, argv + 2);
        if (rc && dc.size > 1) dist_abort(&dc, rc); /* a rank that failed ends every rank (none waits forever) */
        dist_finalize(&dc);
        return rc;
    }
    fprintf(stderr, "%s: unknown command '%s' (see --help)\n", prog, cmd);
    return EXIT_USAGE;
}
