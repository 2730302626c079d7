/*
 * gsink-train - trains a Llama-style model from scratch with libgsink.
 *
 *   gsink-train --data DIR --out DIR [options]
 *
 * DIR holds train.bin / val.bin written by tools/corpus/prepare.py or
 * tools/corpus/textdir.py (and tokenizer.json, copied next to the saved model),
 * or llm.c token shards. Training reads windows of the training split in an
 * epoch-wise shuffled order; each epoch reads every token (see "data: windows
 * and epochs" below and docs/training.md). The run directory gets:
 *   log.jsonl          one line per step (loss, lr, grad norm, tok/s) and per validation
 *   diag.jsonl         periodic diagnostics (sink rate, t0/early, R_GS, theta) per layer
 *   ckpt-NNNNNNNN/     checkpoints: model/ (safetensors + config.json), optimizer.bin,
 *                      state.bin (weights, step, epoch and position in it; exact fp32)
 *   latest             name of the newest complete checkpoint (atomically replaced)
 *   final/             the trained weights + tokenizer.json; final_diag.json
 * --resume continues from `latest` and reproduces the uninterrupted run bit
 * for bit (same thread count required: BLIS partitions work by thread).
 *
 * Test hook: GSINK_TRAIN_CRASH_IN_SAVE=1 makes the tool _exit(86) after a
 * checkpoint is fully written but before `latest` is switched to it.
 *
 * Data parallel (docs/distributed.md): started by mpirun / srun (the
 * launcher's environment says so; no flag), every rank holds the same
 * weights (rank 0's, broadcast at the start and verified by checksum), reads
 * its slice of each global batch of --batch rows (rows [r*B/N, (r+1)*B/N) of
 * the same shuffled window order a single process reads), and the gradients
 * are summed over ranks (in buckets) after the backward, each rank's scaled
 * by its share of the batch's tokens. Rank 0 writes the logs, checkpoints and
 * final weights; a checkpoint resumes on any number of ranks.
 * Test hook: GSINK_DIST_TEST_CORRUPT_RANK=r perturbs one weight on rank r
 * after the broadcast, so the checksum check must stop the run.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dist.h"
#include "gsink.h"

static dist_comm g_dist; /* the world: rank 0 of 1 without an MPI launcher */

/* ---- small utilities ----------------------------------------------------- */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (g_dist.size > 1) fprintf(stderr, "\ngsink-train [rank %d/%d]: ", g_dist.rank, g_dist.size);
    else fputs("\ngsink-train: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    dist_abort(&g_dist, 1); /* every rank ends (exit(1) when alone) */
}

#define CHECK(call)                                                                          \
    do {                                                                                     \
        gsink_status st_ = (call);                                                           \
        if (st_ != GSINK_OK) die("%s: %s (%s)", #call, gsink_status_str(st_), gsink_last_error()); \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint32_t crc_table[256];
static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
/* zlib-compatible CRC-32 */
static uint32_t crc32_update(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Opens path for reading without blocking on a FIFO (or a device) and
 * refuses anything that is not a regular file: errno is EINVAL then. */
static int open_regular(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return -1;
    struct stat sb;
    int fl;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (fl = fcntl(fd, F_GETFL)) < 0 ||
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    return fd;
}

static FILE *fopen_regular(const char *path)
{
    int fd = open_regular(path);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) close(fd);
    return f;
}

/* "not a regular file" for open_regular's EINVAL, strerror otherwise. */
static const char *open_error(void) { return errno == EINVAL ? "not a regular file" : strerror(errno); }

/* Decimal digits of a * b (exact: 128-bit) into buf. */
static const char *mul_u64_str(uint64_t a, uint64_t b, char *buf, size_t n)
{
    unsigned __int128 v = (unsigned __int128)a * b;
    char tmp[48];
    int i = (int)sizeof tmp - 1;
    tmp[i] = 0;
    do {
        tmp[--i] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v);
    snprintf(buf, n, "%s", tmp + i);
    return buf;
}

static void fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static void rm_rf(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[4096];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rm_rf(sub);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static int copy_file(const char *src, const char *dst)
{
    FILE *in = fopen_regular(src);
    if (!in) return -1;
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return -1;
    }
    char buf[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = -1;
    fclose(in);
    if (fclose(out) != 0) rc = -1;
    return rc;
}

/* ---- data: token streams ------------------------------------------------------ */

/* One split (train or val) as a stream of token ids, from either
 *  - a gsink token file, DIR/train.bin / DIR/val.bin (tools/corpus/prepare.py or
 *    tools/corpus/textdir.py; mapped), or
 *  - llm.c token shards, DIR/NAME_train_N.bin / DIR/NAME_val_N.bin (read in name order
 *    and concatenated in memory). */
#define TOK_HEADER 40
#define LLMC_HEADER 1024 /* 256 int32: magic, version, token count, zeros */
typedef struct token_file {
    char path[4200]; /* the file, or the shard pattern (for messages) */
    void *map;
    size_t map_bytes;
    void *owned; /* llm.c shards: the concatenated payloads */
    const void *data;
    int dtype; /* bytes per token: 2 or 4 */
    uint64_t count;
    int32_t vocab, eot;
    int shards; /* llm.c shards read (0: a gsink token file) */
} token_file;

static inline int32_t tok_at(const token_file *f, uint64_t i)
{
    return f->dtype == 2 ? (int32_t)((const uint16_t *)f->data)[i] : ((const int32_t *)f->data)[i];
}

static void check_token_range(const token_file *f)
{
    for (uint64_t i = 0; i < f->count; i++) {
        int32_t t = tok_at(f, i);
        if (t < 0 || t >= f->vocab) die("%s: corrupt token file: token %d at %llu outside vocab %d", f->path, t,
                                        (unsigned long long)i, f->vocab);
    }
}

/* Maps and verifies a token file written by tools/corpus/prepare.py. */
static void token_file_open(token_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    int fd = open_regular(path);
    if (fd < 0)
        die("cannot open token file %s: %s (run tools/corpus/prepare.py or tools/corpus/textdir.py, or give a "
            "directory of llm.c shards *_train_*.bin / *_val_*.bin)", path, open_error());
    struct stat sb;
    if (fstat(fd, &sb) != 0) die("stat %s: %s", path, strerror(errno));
    if ((uint64_t)sb.st_size < TOK_HEADER) die("%s: corrupt token file (shorter than the %d-byte header)", path, TOK_HEADER);
    f->map_bytes = (size_t)sb.st_size;
    f->map = mmap(NULL, f->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) die("mmap %s: %s", path, strerror(errno));
    const unsigned char *h = f->map;
    uint32_t version, dtype, vocab, crc;
    int32_t eot;
    uint64_t count;
    memcpy(&version, h + 8, 4);
    memcpy(&dtype, h + 12, 4);
    memcpy(&count, h + 16, 8);
    memcpy(&vocab, h + 24, 4);
    memcpy(&eot, h + 28, 4);
    memcpy(&crc, h + 32, 4);
    if (memcmp(h, "GSKTOK\0\1", 8) != 0) die("%s: not a gsink token file (bad magic)", path);
    if (version != 1) die("%s: unsupported token file version %u", path, version);
    if (dtype != 2 && dtype != 4) die("%s: corrupt token file (dtype %u bytes)", path, dtype);
    if (vocab == 0 || vocab > (1u << 30)) die("%s: corrupt token file (vocab %u)", path, vocab);
    /* prepare.py packs uint16 exactly when the vocabulary fits: a larger
     * vocabulary with 2-byte ids cannot be, and would size the model. */
    if (dtype == 2 && vocab > 65536)
        die("%s: corrupt token file: vocab %u does not fit its 2-byte token ids (at most 65536)", path, vocab);
    uint64_t payload = f->map_bytes - TOK_HEADER;
    if (payload % dtype != 0 || count != payload / dtype) { /* division: count * dtype may overflow */
        char need[48];
        die("%s: corrupt token file: header says %llu tokens (%s bytes) but the file has %llu payload bytes",
            path, (unsigned long long)count, mul_u64_str(count, dtype, need, sizeof need),
            (unsigned long long)payload);
    }
    f->data = h + TOK_HEADER;
    f->dtype = (int)dtype;
    f->count = count;
    f->vocab = (int32_t)vocab;
    f->eot = eot;
    if (crc32_update(0, f->data, count * dtype) != crc) die("%s: corrupt token file (CRC-32 mismatch)", path);
    check_token_range(f);
}

/* An integer field of DIR/meta.json: 1 and *v when present, 0 when the file
 * or the key is absent; a malformed value is an error. */
static int meta_u64(const char *dir, const char *key, uint64_t *v)
{
    char path[4200], quoted[64];
    snprintf(path, sizeof path, "%s/meta.json", dir);
    FILE *f = fopen_regular(path);
    if (!f) {
        if (errno == ENOENT) return 0; /* data prepared by other means */
        die("cannot open %s: %s", path, open_error());
    }
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    const char *p = strstr(text, quoted);
    if (!p) return 0;
    p += strlen(quoted);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ':') p++;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(p, &end, 10);
    if (end == p || errno || *p == '-') die("%s: %s is not a non-negative integer", path, key);
    *v = x;
    return 1;
}

/* meta.json (written with the token files by prepare.py) names the
 * tokenizer's vocabulary: the token files' headers, which size the model's
 * embedding, must agree with it before anything is allocated. */
static void check_meta_vocab(const char *dir, int32_t vocab)
{
    uint64_t v;
    if (meta_u64(dir, "vocab_size", &v) && v != (uint64_t)vocab)
        die("token files say vocab %d but %s/meta.json says vocab_size %llu: corrupt or mismatched data", vocab, dir,
            (unsigned long long)v);
}

/* llm.c shard names: NAME_SPLIT_NNNNNN.bin or NAME_SPLIT.bin. */
static int is_shard_of(const char *name, const char *split)
{
    char pat[32];
    size_t n = strlen(name), k;
    if (n < 5 || strcmp(name + n - 4, ".bin")) return 0;
    snprintf(pat, sizeof pat, "_%s_", split);
    if (strstr(name, pat)) return 1;
    k = (size_t)snprintf(pat, sizeof pat, "_%s.bin", split);
    return n >= k && !strcmp(name + n - k, pat);
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted names of the llm.c shards of one split in dir (count in *n). */
static char **shard_names(const char *dir, const char *split, size_t *n)
{
    char **names = NULL;
    size_t cap = 0;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_shard_of(e->d_name, split)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            names = realloc(names, cap * sizeof *names);
            if (!names) die("out of memory");
        }
        if (!(names[(*n)++] = strdup(e->d_name))) die("out of memory");
    }
    closedir(d);
    if (*n) qsort(names, *n, sizeof *names, cmp_name);
    return names;
}

/* Reads llm.c shards (header of 256 int32: magic 20240520 + version 1 for
 * GPT-2's uint16 ids, or magic 20240801 + version 7 for Llama-3's uint32 ids,
 * then the token count; the ids follow) and concatenates them in name order.
 * The vocabulary and separator are GPT-2's (50257, <|endoftext|> 50256) or
 * Llama-3's (128256, <|begin_of_text|> 128000), or meta.json's vocab_size and
 * eot_id when the directory has one. */
static void shards_open(token_file *f, const char *dir, const char *split, char **names, size_t n)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s/*_%s_*.bin", dir, split);
    size_t cap = 0;
    unsigned char *buf = NULL;
    for (size_t i = 0; i < n; i++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *in = fopen_regular(path);
        if (!in) die("cannot open llm.c shard %s: %s", path, open_error());
        int32_t h[256];
        if (fread(h, 1, LLMC_HEADER, in) != LLMC_HEADER) die("%s: not an llm.c token shard (shorter than its 1024-byte header)", path);
        int dtype = h[0] == 20240520 && h[1] == 1 ? 2 : h[0] == 20240801 && h[1] == 7 ? 4 : 0;
        if (!dtype)
            die("%s: not an llm.c token shard (magic %d version %d; expected 20240520 version 1, uint16 ids, or "
                "20240801 version 7, uint32 ids)", path, h[0], h[1]);
        if (f->dtype && dtype != f->dtype) die("%s: shards of one directory mix uint16 and uint32 token ids", path);
        f->dtype = dtype;
        if (h[2] < 0) die("%s: corrupt llm.c shard (token count %d)", path, h[2]);
        struct stat sb;
        if (fstat(fileno(in), &sb) != 0) die("stat %s: %s", path, strerror(errno));
        uint64_t want = (uint64_t)h[2] * (uint64_t)dtype;
        if ((uint64_t)sb.st_size != LLMC_HEADER + want)
            die("%s: corrupt llm.c shard: header says %d tokens (%llu bytes) but the file has %llu payload bytes", path,
                h[2], (unsigned long long)want, (unsigned long long)sb.st_size - LLMC_HEADER);
        if ((f->count + (uint64_t)h[2]) * dtype > cap) {
            cap = (size_t)((f->count + (uint64_t)h[2]) * dtype) * 3 / 2 + 1;
            if (!(buf = realloc(buf, cap))) die("out of memory reading %s", path);
        }
        if (fread(buf + f->count * dtype, 1, (size_t)want, in) != want) die("read %s: %s", path, strerror(errno));
        fclose(in);
        f->count += (uint64_t)h[2];
        f->shards++;
    }
    f->owned = buf;
    f->data = buf;
    f->vocab = f->dtype == 2 ? 50257 : 128256;
    f->eot = f->dtype == 2 ? 50256 : 128000;
    uint64_t v;
    if (meta_u64(dir, "vocab_size", &v)) {
        if (v == 0 || v > (1u << 30)) die("%s/meta.json: vocab_size %llu out of range", dir, (unsigned long long)v);
        f->vocab = (int32_t)v;
    }
    if (meta_u64(dir, "eot_id", &v)) f->eot = (int32_t)(v > INT32_MAX ? -1 : (int64_t)v);
    check_token_range(f);
}

/* Opens one split of --data DIR: DIR/SPLIT.bin if it exists, else the
 * directory's llm.c shards of that split. */
static void data_open(token_file *f, const char *dir, const char *split)
{
    char path[4200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s.bin", dir, split);
    size_t n = 0;
    char **names = lstat(path, &sb) == 0 ? NULL : shard_names(dir, split, &n);
    if (n) shards_open(f, dir, split, names, n);
    else token_file_open(f, path);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

static void token_file_close(token_file *f)
{
    if (f->map && f->map != MAP_FAILED) munmap(f->map, f->map_bytes);
    f->map = NULL;
    free(f->owned);
    f->owned = NULL;
}

/* ---- data: windows and epochs ------------------------------------------------------ */

/* The windows of a split: together they read every token, once per epoch.
 *   packed:    window k is tokens [kT, kT + T) (targets shifted by one), for
 *              k < n_full = (N - 1) / T; the last N - 1 - n_full*T tokens (< T),
 *              when there are any, get one more window, the last T tokens before
 *              the final one, which shares `overlap` tokens with window n_full - 1.
 *   doc-start: every document (the tokens between two end-of-text separators;
 *              the file's first and last documents may lack one) is read in
 *              consecutive chunks of T - 1 tokens, each window being the
 *              separator (a fixed first token) followed by one chunk and, for a
 *              document's last chunk, whatever follows it in the stream; the
 *              targets are the chunk's tokens and the token after it. The first
 *              window of a document is thus the stream slice starting at its
 *              separator. */
typedef struct window_set {
    int doc_start, T;
    uint64_t n;       /* windows per epoch */
    uint64_t *q;      /* doc-start: stream position of each window's first token after the separator */
    uint64_t n_full;  /* packed: windows at kT */
    uint64_t tail_at; /* packed: start of the final, overlapping window (when n == n_full + 1) */
    uint64_t overlap; /* packed: tokens read twice per epoch (0 when T divides N - 1) */
    uint64_t docs;    /* doc-start: non-empty documents */
    uint64_t seps;    /* end-of-text separators in the stream */
} window_set;

/* Needs f->count >= T + 1 (checked by the caller). */
static void windows_build(window_set *w, const token_file *f, int T, int doc_start)
{
    memset(w, 0, sizeof *w);
    w->doc_start = doc_start;
    w->T = T;
    const uint64_t N = f->count;
    for (uint64_t i = 0; i < N; i++) w->seps += tok_at(f, i) == f->eot;
    if (!doc_start) {
        uint64_t inputs = N - 1; /* the last token is only ever a target */
        w->n_full = inputs / (uint64_t)T;
        w->n = w->n_full;
        uint64_t rem = inputs - w->n_full * (uint64_t)T;
        if (rem) {
            w->tail_at = N - 1 - (uint64_t)T;
            w->overlap = (uint64_t)T - rem;
            w->n++;
        }
        return;
    }
    uint64_t cap = N / (uint64_t)(T - 1) + 64, a = 0;
    w->q = malloc(cap * sizeof *w->q);
    if (!w->q) die("out of memory");
    for (uint64_t i = 0; i <= N; i++) {
        if (i < N && tok_at(f, i) != f->eot) continue;
        if (i > a) { /* document [a, i) */
            w->docs++;
            for (uint64_t q = a; q < i; q += (uint64_t)(T - 1)) {
                if (w->n == cap) {
                    cap *= 2;
                    if (!(w->q = realloc(w->q, cap * sizeof *w->q))) die("out of memory");
                }
                w->q[w->n++] = q + T <= N ? q : N - (uint64_t)T; /* at the stream's end: its last T tokens */
            }
        }
        a = i + 1;
    }
}

/* Row b of (B, T) tokens/targets from window k. */
static void fill_window(const window_set *w, const token_file *f, uint64_t k, int b, int32_t *x, int32_t *y)
{
    const int T = w->T;
    int32_t *xr = x + (size_t)b * T, *yr = y + (size_t)b * T;
    if (w->doc_start) {
        uint64_t q = w->q[k];
        xr[0] = f->eot;
        for (int t = 1; t < T; t++) xr[t] = tok_at(f, q + (uint64_t)t - 1);
        for (int t = 0; t < T; t++) yr[t] = tok_at(f, q + (uint64_t)t);
    } else {
        uint64_t p = k < w->n_full ? k * (uint64_t)T : w->tail_at;
        for (int t = 0; t < T; t++) {
            xr[t] = tok_at(f, p + (uint64_t)t);
            yr[t] = tok_at(f, p + (uint64_t)t + 1);
        }
    }
}

/* The reading order of epoch e: a permutation of the n windows (Fisher-Yates,
 * without replacement) that depends only on (seed, e), so a resumed run
 * rebuilds it from the checkpointed epoch number. */
static void epoch_order(uint64_t *perm, uint64_t n, uint64_t seed, uint64_t epoch)
{
    uint64_t s = seed ^ 0x5DEECE66Dull, e = epoch;
    s ^= splitmix64(&e);
    for (uint64_t i = 0; i < n; i++) perm[i] = i;
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = (uint64_t)(((unsigned __int128)splitmix64(&s) * i) >> 64), t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

/* ---- options --------------------------------------------------------------- */

typedef struct train_args {
    const char *data_dir, *out_dir, *preset, *vscale, *save_model;
    const char *device, *precision; /* --device cpu|cuda, --precision fp32|tf32|bf16 */
    int doc_start; /* --windows doc-start */
    const char *dump_batches; /* --dump-batches FILE: raw int32 ids of every training micro-batch */
    uint64_t seed;
    int64_t steps;
    int batch, seq, grad_accum, threads, warmup;
    float lr, min_lr, wd, clip;
    int d_model, layers, heads, kv_heads, d_head, d_ff;
    int eval_every, eval_batches, diag_every, ckpt_every, log_every;
    int resume, progress, per_query_head, frozen_theta;
    int64_t stop_at; /* leave after this step (simulates an interruption) */
} train_args;

typedef struct preset_spec {
    const char *name, *model;
    int d_model, layers, heads, kv_heads, d_head, d_ff;
    int64_t steps;
    int batch, seq, warmup;
    float lr, min_lr;
    const char *about;
} preset_spec;

/* Training presets: a model shape plus a schedule. */
static const preset_spec PRESETS[] = {
    {"test", "micro", 64, 2, 2, 1, 32, 128, 60, 8, 64, 10, 3e-3f, 3e-4f, "seconds; tests"},
    {"quick", "tiny", 128, 2, 4, 4, 32, 344, 300, 16, 128, 30, 2e-3f, 2e-4f, "~1 min smoke run"},
    {"exp", "tiny", 128, 4, 4, 4, 32, 344, 3000, 8, 256, 150, 3e-3f, 3e-4f,
     "the baseline-vs-V-scale experiment (~1.3M parameters, 6.1M tokens)"},
    {"small", "small", 256, 4, 4, 2, 64, 704, 3000, 16, 256, 200, 1e-3f, 1e-4f, "the small preset"},
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gsink-train --data DIR --out DIR [options]\n"
            "  --data DIR           train.bin + val.bin (tools/corpus/prepare.py, textdir.py), or llm.c\n"
            "                       token shards *_train_*.bin + *_val_*.bin\n"
            "  --preset NAME        test | quick | exp | small (default exp)\n"
            "  --seed N             model init and data order seed (default 1)\n"
            "  --steps N            optimizer steps\n"
            "  --batch N            sequences per micro-batch\n"
            "  --seq N              tokens per sequence\n"
            "  --grad-accum N       micro-batches per step (default 1)\n"
            "  --lr X --min-lr X    peak and final learning rate (cosine)\n"
            "  --warmup N           linear warm-up steps\n"
            "  --weight-decay X     AdamW decay on 2-D matrices (default 0.1)\n"
            "  --clip X             global gradient-norm clip (default 1.0)\n"
            "  --vscale MODE        off | full | backward-only (default off)\n"
            "  --frozen-theta       full V-scale with theta frozen at 0\n"
            "  --per-query-head     V-scale per query head (default per KV head)\n"
            "  --d-model/--layers/--heads/--kv-heads/--d-head/--d-ff N   override the shape\n"
            "  --threads N          CPU threads, 0..2 per CPU (default 0 = one per CPU)\n"
            "  --device D           cpu (default) or cuda (GPU 0)\n"
            "  --precision P        fp32 (default), tf32 or bf16 matrix products (tf32/bf16: CUDA only)\n"
            "  --eval-every N       validation every N steps (default 100)\n"
            "  --eval-batches N     validation batches (default 8)\n"
            "  --diag-every N       diagnostics JSON line every N steps (default 100)\n"
            "  --ckpt-every N       checkpoint every N steps (default 250)\n"
            "  --log-every N        progress line every N steps when stderr is not a tty\n"
            "  --resume             continue the run in --out from its latest checkpoint\n"
            "  --stop-at N          stop after step N (checkpointed), as if interrupted\n"
            "  --save-model DIR     also save the final weights there (default OUT/final)\n"
            "  --no-progress        no progress bar\n"
            "  --windows MODE       how the training split is cut into T-token windows; each epoch reads every\n"
            "                       window once, in a seeded shuffled order (docs/training.md):\n"
            "                       packed (default): consecutive windows of the stream (the last < T tokens in\n"
            "                       one more window ending at the stream's end), any first token;\n"
            "                       doc-start: every window starts with the end-of-text separator (a fixed first\n"
            "                       token) followed by T-1 tokens of one document; each document is read in\n"
            "                       consecutive chunks, its first window being the slice at its separator\n"
            "  --dump-batches FILE  append every training micro-batch's input ids (int32) to FILE (data checks)\n");
    fprintf(f, "presets:\n");
    for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++) {
        const preset_spec *p = &PRESETS[i];
        fprintf(f, "  %-6s d%d L%d H%d KV%d dh%d ff%d, %lld steps, B%d T%d, lr %g -> %g: %s\n", p->name,
                p->d_model, p->layers, p->heads, p->kv_heads, p->d_head, p->d_ff, (long long)p->steps, p->batch,
                p->seq, p->warmup ? p->lr : p->lr, p->min_lr, p->about);
    }
}

static long parse_long(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s) die("bad value for %s: '%s'", what, s);
    return v;
}
static float parse_float(const char *s, const char *what)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || !isfinite(v)) die("bad value for %s: '%s'", what, s);
    return v;
}

static void parse_args(int argc, char **argv, train_args *a)
{
    memset(a, 0, sizeof *a);
    a->preset = "exp";
    a->vscale = "off";
    a->device = "cpu";
    a->precision = "fp32";
    a->seed = 1;
    a->steps = -1;
    a->batch = a->seq = a->warmup = -1;
    a->lr = a->min_lr = -1.0f;
    a->wd = 0.1f;
    a->clip = 1.0f;
    a->grad_accum = 1;
    a->eval_every = 100;
    a->eval_batches = 8;
    a->diag_every = 100;
    a->ckpt_every = 250;
    a->log_every = 50;
    a->progress = 1;
    enum { O_DATA = 256, O_OUT, O_PRESET, O_SEED, O_STEPS, O_BATCH, O_SEQ, O_ACC, O_LR, O_MINLR, O_WARM, O_WD,
           O_CLIP, O_VS, O_FROZEN, O_PQH, O_DM, O_L, O_H, O_KV, O_DH, O_FF, O_THR, O_EE, O_EB, O_DE, O_CE, O_LE,
           O_RES, O_SAVE, O_NOPROG, O_HELP, O_STOP, O_WIN, O_DUMP, O_DEV, O_PREC };
    static const struct option opts[] = {
        {"data", 1, 0, O_DATA}, {"out", 1, 0, O_OUT}, {"preset", 1, 0, O_PRESET}, {"seed", 1, 0, O_SEED},
        {"steps", 1, 0, O_STEPS}, {"batch", 1, 0, O_BATCH}, {"seq", 1, 0, O_SEQ}, {"grad-accum", 1, 0, O_ACC},
        {"lr", 1, 0, O_LR}, {"min-lr", 1, 0, O_MINLR}, {"warmup", 1, 0, O_WARM}, {"weight-decay", 1, 0, O_WD},
        {"clip", 1, 0, O_CLIP}, {"vscale", 1, 0, O_VS}, {"frozen-theta", 0, 0, O_FROZEN},
        {"per-query-head", 0, 0, O_PQH}, {"d-model", 1, 0, O_DM}, {"layers", 1, 0, O_L}, {"heads", 1, 0, O_H},
        {"kv-heads", 1, 0, O_KV}, {"d-head", 1, 0, O_DH}, {"d-ff", 1, 0, O_FF}, {"threads", 1, 0, O_THR},
        {"eval-every", 1, 0, O_EE}, {"eval-batches", 1, 0, O_EB}, {"diag-every", 1, 0, O_DE},
        {"ckpt-every", 1, 0, O_CE}, {"log-every", 1, 0, O_LE}, {"resume", 0, 0, O_RES}, {"stop-at", 1, 0, O_STOP},
        {"save-model", 1, 0, O_SAVE}, {"no-progress", 0, 0, O_NOPROG}, {"windows", 1, 0, O_WIN},
        {"dump-batches", 1, 0, O_DUMP}, {"device", 1, 0, O_DEV}, {"precision", 1, 0, O_PREC},
        {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_DATA: a->data_dir = optarg; break;
        case O_OUT: a->out_dir = optarg; break;
        case O_PRESET: a->preset = optarg; break;
        case O_SEED: a->seed = (uint64_t)parse_long(optarg, "--seed"); break;
        case O_STEPS: a->steps = parse_long(optarg, "--steps"); break;
        case O_BATCH: a->batch = (int)parse_long(optarg, "--batch"); break;
        case O_SEQ: a->seq = (int)parse_long(optarg, "--seq"); break;
        case O_ACC: a->grad_accum = (int)parse_long(optarg, "--grad-accum"); break;
        case O_LR: a->lr = parse_float(optarg, "--lr"); break;
        case O_MINLR: a->min_lr = parse_float(optarg, "--min-lr"); break;
        case O_WARM: a->warmup = (int)parse_long(optarg, "--warmup"); break;
        case O_WD: a->wd = parse_float(optarg, "--weight-decay"); break;
        case O_CLIP: a->clip = parse_float(optarg, "--clip"); break;
        case O_VS: a->vscale = optarg; break;
        case O_FROZEN: a->frozen_theta = 1; break;
        case O_PQH: a->per_query_head = 1; break;
        case O_DM: a->d_model = (int)parse_long(optarg, "--d-model"); break;
        case O_L: a->layers = (int)parse_long(optarg, "--layers"); break;
        case O_H: a->heads = (int)parse_long(optarg, "--heads"); break;
        case O_KV: a->kv_heads = (int)parse_long(optarg, "--kv-heads"); break;
        case O_DH: a->d_head = (int)parse_long(optarg, "--d-head"); break;
        case O_FF: a->d_ff = (int)parse_long(optarg, "--d-ff"); break;
        case O_THR: {
            long v = parse_long(optarg, "--threads");
            if (v < 0 || v > gsink_max_threads())
                die("--threads must be in [0, %d] (2 per CPU this process may run on), got %ld", gsink_max_threads(), v);
            a->threads = (int)v;
            break;
        }
        case O_EE: a->eval_every = (int)parse_long(optarg, "--eval-every"); break;
        case O_EB: a->eval_batches = (int)parse_long(optarg, "--eval-batches"); break;
        case O_DE: a->diag_every = (int)parse_long(optarg, "--diag-every"); break;
        case O_CE: a->ckpt_every = (int)parse_long(optarg, "--ckpt-every"); break;
        case O_LE: a->log_every = (int)parse_long(optarg, "--log-every"); break;
        case O_RES: a->resume = 1; break;
        case O_STOP: a->stop_at = parse_long(optarg, "--stop-at"); break;
        case O_SAVE: a->save_model = optarg; break;
        case O_NOPROG: a->progress = 0; break;
        case O_DUMP: a->dump_batches = optarg; break;
        case O_DEV:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) die("--device must be cpu or cuda (got '%s')", optarg);
            a->device = optarg;
            break;
        case O_PREC:
            if (strcmp(optarg, "fp32") && strcmp(optarg, "tf32") && strcmp(optarg, "bf16"))
                die("--precision must be fp32, tf32 or bf16 (got '%s')", optarg);
            a->precision = optarg;
            break;
        case O_WIN:
            if (!strcmp(optarg, "packed")) a->doc_start = 0;
            else if (!strcmp(optarg, "doc-start")) a->doc_start = 1;
            else die("--windows must be packed or doc-start (got '%s')", optarg);
            break;
        case O_HELP: case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) die("unexpected argument '%s' (see --help)", argv[optind]);
    if (!a->data_dir || !a->out_dir) {
        usage(stderr);
        die("--data and --out are required");
    }
    const preset_spec *p = NULL;
    for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++)
        if (!strcmp(PRESETS[i].name, a->preset)) p = &PRESETS[i];
    if (!p) die("unknown preset '%s' (see --help)", a->preset);
    if (!a->d_model) a->d_model = p->d_model;
    if (!a->layers) a->layers = p->layers;
    if (!a->heads) a->heads = p->heads;
    if (!a->kv_heads) a->kv_heads = p->kv_heads;
    if (!a->d_head) a->d_head = p->d_head;
    if (!a->d_ff) a->d_ff = p->d_ff;
    if (a->steps < 0) a->steps = p->steps;
    if (a->batch < 0) a->batch = p->batch;
    if (a->seq < 0) a->seq = p->seq;
    if (a->warmup < 0) a->warmup = p->warmup;
    if (a->lr < 0) a->lr = p->lr;
    if (a->min_lr < 0) a->min_lr = p->min_lr;
    if (a->steps < 1 || a->batch < 1 || a->seq < 2 || a->grad_accum < 1)
        die("--steps, --batch, --grad-accum must be >= 1 and --seq >= 2");
    if (a->eval_every < 1 || a->diag_every < 1 || a->ckpt_every < 1 || a->log_every < 1 || a->eval_batches < 1)
        die("--eval-every, --eval-batches, --diag-every, --ckpt-every, --log-every must be >= 1");
}

static int vscale_mode_of(const char *s)
{
    if (!strcmp(s, "off")) return GSINK_VSCALE_OFF;
    if (!strcmp(s, "full")) return GSINK_VSCALE_FULL;
    if (!strcmp(s, "backward-only")) return GSINK_VSCALE_BACKWARD_ONLY;
    die("--vscale must be off, full or backward-only (got '%s')", s);
    return 0;
}

/* ---- run state and checkpoints ------------------------------------------------ */

typedef struct run_state {
    int64_t step;       /* optimizer steps done */
    uint64_t epoch;     /* epoch being read (0-based) */
    uint64_t cursor;    /* windows of this epoch read so far */
    uint64_t data_seed; /* seeds every epoch's order (the --seed of the run's start) */
    uint64_t tokens;    /* training input tokens read so far */
} run_state;

typedef struct trainer {
    train_args a;
    gsink_config cfg;
    gsink_model *model;
    gsink_optimizer *opt;
    token_file train, val;
    window_set wtrain, wval;
    uint64_t *order;      /* the current epoch's window order */
    int64_t order_epoch;  /* the epoch `order` holds (-1: none yet) */
    run_state rs;
    int32_t *x, *y;      /* room for the global batch (B rows) */
    int lo, hi;          /* this rank's rows [lo, hi) of each global batch */
    float *flat;         /* gsink_param_numel values: gradient / weight exchange */
    size_t numel;
    size_t n_theta;
    int model_save_ok; /* 0 unknown, 1 ok, -1 unsupported (warned) */
    FILE *log, *diag;
} trainer;

/* Fixed-width record of everything that must match for a resume. */
typedef struct ckpt_identity {
    int32_t vocab, d_model, layers, heads, kv_heads, d_head, d_ff, tie;
    int32_t vscale_mode, per_query_head, learnable, batch, seq, grad_accum;
    uint64_t train_tokens, windows; /* windows: 0 packed, 1 doc-start */
    uint64_t epoch_windows;
} ckpt_identity;

static ckpt_identity identity_of(const trainer *tr)
{
    ckpt_identity id;
    memset(&id, 0, sizeof id);
    id.vocab = tr->cfg.vocab_size;
    id.d_model = tr->cfg.d_model;
    id.layers = tr->cfg.n_layers;
    id.heads = tr->cfg.n_heads;
    id.kv_heads = tr->cfg.n_kv_heads;
    id.d_head = tr->cfg.d_head;
    id.d_ff = tr->cfg.d_ff;
    id.tie = tr->cfg.tie_embeddings;
    id.vscale_mode = vscale_mode_of(tr->a.vscale);
    id.per_query_head = tr->a.per_query_head;
    id.learnable = !tr->a.frozen_theta;
    id.batch = tr->a.batch;
    id.seq = tr->a.seq;
    id.grad_accum = tr->a.grad_accum;
    id.train_tokens = tr->train.count;
    id.windows = (uint64_t)tr->a.doc_start;
    id.epoch_windows = tr->wtrain.n;
    return id;
}

/* Version 2: epoch-shuffled windows (run_state: epoch, cursor, data seed). */
static const char STATE_MAGIC[8] = {'G', 'S', 'K', 'T', 'R', 'N', 0, 2};

static void xwrite(FILE *f, const void *p, size_t n, uint32_t *crc, const char *path)
{
    if (fwrite(p, 1, n, f) != n) die("write %s: %s", path, strerror(errno));
    *crc = crc32_update(*crc, p, n);
}

/* state.bin: magic, identity, run state, every parameter (name, numel, fp32), theta, CRC-32. */
static void write_state(trainer *tr, const char *path)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) die("path too long: %s", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) die("cannot create %s: %s", tmp, strerror(errno));
    uint32_t crc = 0;
    ckpt_identity id = identity_of(tr);
    xwrite(f, STATE_MAGIC, 8, &crc, tmp);
    xwrite(f, &id, sizeof id, &crc, tmp);
    xwrite(f, &tr->rs, sizeof tr->rs, &crc, tmp);
    size_t n;
    CHECK(gsink_param_count(tr->model, &n));
    for (size_t i = 0; i < n; i++) {
        const char *name;
        int ndim;
        int64_t dims[2];
        CHECK(gsink_param_info(tr->model, i, &name, &ndim, dims));
        if (strstr(name, "v_scale_theta")) continue;
        uint64_t numel = (uint64_t)dims[0] * (ndim == 2 ? (uint64_t)dims[1] : 1u);
        float *buf = malloc(numel * sizeof(float));
        if (!buf) die("out of memory");
        CHECK(gsink_get_param(tr->model, name, buf, numel));
        uint32_t len = (uint32_t)strlen(name);
        xwrite(f, &len, 4, &crc, tmp);
        xwrite(f, name, len, &crc, tmp);
        xwrite(f, &numel, 8, &crc, tmp);
        xwrite(f, buf, numel * sizeof(float), &crc, tmp);
        free(buf);
    }
    uint64_t nt = tr->n_theta;
    xwrite(f, &nt, 8, &crc, tmp);
    if (nt) {
        float *th = malloc(nt * sizeof(float));
        if (!th) die("out of memory");
        CHECK(gsink_vscale_get_theta(tr->model, th, nt));
        xwrite(f, th, nt * sizeof(float), &crc, tmp);
        free(th);
    }
    uint32_t c = crc;
    if (fwrite(&c, 4, 1, f) != 1 || fflush(f) != 0 || fsync(fileno(f)) != 0) die("write %s: %s", tmp, strerror(errno));
    if (fclose(f) != 0) die("close %s: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) die("rename %s: %s", tmp, strerror(errno));
}

static void xread(FILE *f, void *p, size_t n, uint32_t *crc, const char *path)
{
    if (fread(p, 1, n, f) != n) die("%s: truncated or corrupt checkpoint state", path);
    *crc = crc32_update(*crc, p, n);
}

/* Reads state.bin fully and verifies it before changing the model. */
static void read_state(trainer *tr, const char *path)
{
    FILE *f = fopen_regular(path);
    if (!f) die("cannot open %s: %s", path, open_error());
    uint32_t crc = 0;
    char magic[8];
    ckpt_identity id, want = identity_of(tr);
    run_state rs;
    xread(f, magic, 8, &crc, path);
    if (memcmp(magic, STATE_MAGIC, 7) == 0 && magic[7] == 1)
        die("%s: checkpoint state version 1, written by a gsink-train before the epoch-shuffled window sampler: its "
            "data position cannot be carried over; start a new run (or finish this one with the version that wrote it)",
            path);
    if (memcmp(magic, STATE_MAGIC, 8) != 0) die("%s: not a gsink-train checkpoint state", path);
    xread(f, &id, sizeof id, &crc, path);
    if (memcmp(&id, &want, sizeof id) != 0)
        die("%s: checkpoint does not match this run (model shape, V-scale, batch/seq/grad-accum or data differ)",
            path);
    xread(f, &rs, sizeof rs, &crc, path);
    size_t n;
    CHECK(gsink_param_count(tr->model, &n));
    /* names and data kept until the CRC is verified */
    char **names = calloc(n + 1, sizeof *names);
    float **datas = calloc(n + 1, sizeof *datas);
    uint64_t *numels = calloc(n + 1, sizeof *numels);
    size_t k = 0;
    if (!names || !datas || !numels) die("out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *name;
        int ndim;
        int64_t dims[2];
        CHECK(gsink_param_info(tr->model, i, &name, &ndim, dims));
        if (strstr(name, "v_scale_theta")) continue;
        uint64_t numel = (uint64_t)dims[0] * (ndim == 2 ? (uint64_t)dims[1] : 1u), got;
        uint32_t len;
        xread(f, &len, 4, &crc, path);
        if (len != strlen(name)) die("%s: checkpoint tensor %zu is not %s", path, i, name);
        names[k] = malloc(len + 1);
        if (!names[k]) die("out of memory");
        xread(f, names[k], len, &crc, path);
        names[k][len] = 0;
        if (strcmp(names[k], name)) die("%s: checkpoint tensor %s where %s was expected", path, names[k], name);
        xread(f, &got, 8, &crc, path);
        if (got != numel) die("%s: %s has %llu values, expected %llu", path, name, (unsigned long long)got,
                              (unsigned long long)numel);
        datas[k] = malloc(numel * sizeof(float));
        if (!datas[k]) die("out of memory");
        xread(f, datas[k], numel * sizeof(float), &crc, path);
        numels[k++] = numel;
    }
    uint64_t nt;
    xread(f, &nt, 8, &crc, path);
    if (nt != tr->n_theta) die("%s: %llu theta values, expected %zu", path, (unsigned long long)nt, tr->n_theta);
    float *th = malloc((nt ? nt : 1) * sizeof(float));
    if (!th) die("out of memory");
    if (nt) xread(f, th, nt * sizeof(float), &crc, path);
    uint32_t stored;
    if (fread(&stored, 4, 1, f) != 1 || stored != crc || fgetc(f) != EOF)
        die("%s: checkpoint state is corrupt (CRC-32 mismatch or trailing data)", path);
    fclose(f);
    for (size_t i = 0; i < k; i++) {
        CHECK(gsink_set_param(tr->model, names[i], datas[i], numels[i]));
        free(names[i]);
        free(datas[i]);
    }
    if (nt) CHECK(gsink_vscale_set_theta(tr->model, th, nt));
    free(th);
    free(names);
    free(datas);
    free(numels);
    tr->rs = rs;
}

static void verify_same_weights(trainer *tr, const char *when);

static void save_checkpoint(trainer *tr)
{
    /* rank 0 writes; every rank first checks that the weights still agree */
    verify_same_weights(tr, "before a checkpoint");
    if (g_dist.rank != 0) {
        if (dist_barrier(&g_dist)) die("barrier failed");
        return;
    }
    char dir[4096], tmpdir[4200], path[4400], latest[4200];
    snprintf(dir, sizeof dir, "%s/ckpt-%08lld", tr->a.out_dir, (long long)tr->rs.step);
    snprintf(tmpdir, sizeof tmpdir, "%s.tmp", dir);
    rm_rf(tmpdir);
    if (mkdir(tmpdir, 0755) != 0) die("mkdir %s: %s", tmpdir, strerror(errno));
    /* weights in HF safetensors (for other tools) */
    if (tr->model_save_ok >= 0) {
        snprintf(path, sizeof path, "%s/model", tmpdir);
        gsink_status st = gsink_model_save(tr->model, path);
        if (st == GSINK_ERR_UNSUPPORTED) {
            fprintf(stderr, "\ngsink-train: note: gsink_model_save unsupported in this build (%s); checkpoints "
                            "keep the exact weights in state.bin only\n", gsink_last_error());
            tr->model_save_ok = -1;
        } else if (st != GSINK_OK) {
            die("saving weights to %s: %s (%s)", path, gsink_status_str(st), gsink_last_error());
        } else {
            tr->model_save_ok = 1;
        }
    }
    snprintf(path, sizeof path, "%s/optimizer.bin", tmpdir);
    gsink_status st = gsink_optimizer_save(tr->opt, path);
    if (st != GSINK_OK) die("saving optimizer state: %s (%s)", gsink_status_str(st), gsink_optimizer_errmsg(tr->opt));
    snprintf(path, sizeof path, "%s/state.bin", tmpdir);
    write_state(tr, path);
    fsync_path(tmpdir);
    rm_rf(dir);
    if (rename(tmpdir, dir) != 0) die("rename %s -> %s: %s", tmpdir, dir, strerror(errno));
    fsync_path(tr->a.out_dir);

    /* switch `latest` atomically */
    snprintf(latest, sizeof latest, "%s/latest.tmp", tr->a.out_dir);
    FILE *f = fopen(latest, "w");
    if (!f) die("cannot create %s: %s", latest, strerror(errno));
    const char *base = strrchr(dir, '/') + 1;
    fprintf(f, "%s\n", base);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0) die("write %s: %s", latest, strerror(errno));
    const char *crash = getenv("GSINK_TRAIN_CRASH_IN_SAVE");
    if (crash && *crash && strcmp(crash, "0")) _exit(86); /* test hook: die before the switch */
    snprintf(path, sizeof path, "%s/latest", tr->a.out_dir);
    char prev[256] = "";
    FILE *pf = fopen_regular(path);
    if (pf) {
        if (!fgets(prev, sizeof prev, pf)) prev[0] = 0;
        prev[strcspn(prev, "\n")] = 0;
        fclose(pf);
    }
    if (rename(latest, path) != 0) die("rename %s: %s", latest, strerror(errno));
    fsync_path(tr->a.out_dir);
    /* keep the new and the previous checkpoint; remove older ones */
    DIR *d = opendir(tr->a.out_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strncmp(e->d_name, "ckpt-", 5) || !strcmp(e->d_name, base) || !strcmp(e->d_name, prev)) continue;
            if (strstr(e->d_name, ".tmp")) continue;
            snprintf(path, sizeof path, "%s/%s", tr->a.out_dir, e->d_name);
            rm_rf(path);
        }
        closedir(d);
    }
    if (dist_barrier(&g_dist)) die("barrier failed");
}

static void resume(trainer *tr, char name[256])
{
    char path[4400];
    snprintf(path, sizeof path, "%s/latest", tr->a.out_dir);
    FILE *f = fopen_regular(path);
    if (!f) die("--resume: no checkpoint in %s (%s: %s)", tr->a.out_dir, path, open_error());
    if (!fgets(name, 256, f)) die("--resume: %s is empty", path);
    fclose(f);
    name[strcspn(name, "\n")] = 0;
    if (strncmp(name, "ckpt-", 5) || strchr(name, '/')) die("--resume: %s is corrupt", path);
    snprintf(path, sizeof path, "%s/%s/state.bin", tr->a.out_dir, name);
    read_state(tr, path);
    snprintf(path, sizeof path, "%s/%s/optimizer.bin", tr->a.out_dir, name);
    gsink_status st = gsink_optimizer_load(tr->opt, path);
    if (st != GSINK_OK) die("--resume: %s: %s", gsink_status_str(st), gsink_optimizer_errmsg(tr->opt));
    if (gsink_optimizer_step_count(tr->opt) != tr->rs.step)
        die("--resume: optimizer state is at step %lld, run state at %lld", (long long)gsink_optimizer_step_count(tr->opt),
            (long long)tr->rs.step);
}

/* ---- data parallel ------------------------------------------------------------ */

/* FNV-1a of every weight (and theta): equal on every rank or the run stops. */
static void verify_same_weights(trainer *tr, const char *when)
{
    if (g_dist.size == 1) return;
    CHECK(gsink_get_params_flat(tr->model, tr->flat, tr->numel));
    uint64_t h = dist_fnv1a64(tr->flat, tr->numel * sizeof(float), DIST_FNV_INIT);
    uint64_t *all = malloc((size_t)g_dist.size * sizeof *all);
    if (!all) die("out of memory");
    if (dist_allgather_u64(&g_dist, h, all)) die("all-gather of the weight checksums failed");
    for (int r = 1; r < g_dist.size; r++)
        if (all[r] != all[0])
            die("%s: the weights of rank %d (checksum %016llx) differ from rank 0's (%016llx): the ranks no longer "
                "train one model; stopping", when, r, (unsigned long long)all[r], (unsigned long long)all[0]);
    free(all);
}

/* Every rank must run the same configuration (the seed may differ: rank 0's
 * weights and data order are used). */
static void verify_same_config(trainer *tr)
{
    if (g_dist.size == 1) return;
    ckpt_identity id = identity_of(tr);
    const train_args *a = &tr->a;
    /* everything that decides when the ranks meet (evaluations, checkpoints, the end) */
    struct { int64_t steps, stop_at; float lr, min_lr, wd, clip; int32_t warmup, ckpt_every, eval_every, eval_batches, resume; } k;
    memset(&k, 0, sizeof k);
    k.steps = a->steps, k.stop_at = a->stop_at, k.lr = a->lr, k.min_lr = a->min_lr, k.wd = a->wd, k.clip = a->clip;
    k.warmup = a->warmup, k.ckpt_every = a->ckpt_every, k.eval_every = a->eval_every;
    k.eval_batches = a->eval_batches, k.resume = a->resume;
    uint64_t h = dist_fnv1a64(&id, sizeof id, DIST_FNV_INIT);
    h = dist_fnv1a64(&k, sizeof k, h);
    h = dist_fnv1a64(a->out_dir, strlen(a->out_dir), h);
    uint64_t *all = malloc((size_t)g_dist.size * sizeof *all);
    if (!all) die("out of memory");
    if (dist_allgather_u64(&g_dist, h, all)) die("all-gather failed");
    for (int r = 1; r < g_dist.size; r++)
        if (all[r] != all[0])
            die("rank %d was started with other options than rank 0 (model shape, batch, seq, schedule, evaluation, "
                "checkpoints, --resume, data or --out differ): every rank must get the same command line", r);
    free(all);
}

/* --resume under MPI: rank 0 reads the checkpoint (weights, run state and
 * optimizer state), then sends the optimizer state to the other ranks (so
 * only rank 0 needs to see --out); the weights and run state follow in
 * sync_start. The checkpoint is global, so any number of ranks resumes it. */
static void resume_all(trainer *tr)
{
    char name[256] = "";
    if (g_dist.rank == 0) resume(tr, name);
    if (g_dist.size == 1) return;
    uint64_t bytes = 0;
    unsigned char *buf = NULL;
    if (g_dist.rank == 0) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s/optimizer.bin", tr->a.out_dir, name);
        FILE *f = fopen_regular(path);
        if (!f) die("cannot open %s: %s", path, open_error());
        struct stat sb;
        if (fstat(fileno(f), &sb) != 0) die("stat %s: %s", path, strerror(errno));
        bytes = (uint64_t)sb.st_size;
        if (!(buf = malloc(bytes ? bytes : 1))) die("out of memory");
        if (fread(buf, 1, bytes, f) != bytes) die("read %s: %s", path, strerror(errno));
        fclose(f);
    }
    if (dist_bcast(&g_dist, &bytes, sizeof bytes, 0)) die("broadcast failed");
    if (g_dist.rank != 0 && !(buf = malloc(bytes ? bytes : 1))) die("out of memory");
    if (dist_bcast(&g_dist, buf, bytes, 0)) die("broadcast of the optimizer state failed");
    if (g_dist.rank != 0) {
        const char *td = getenv("TMPDIR");
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s/gsink-train-opt-XXXXXX", td && *td ? td : "/tmp");
        int fd = mkstemp(tmp);
        if (fd < 0) die("mkstemp %s: %s", tmp, strerror(errno));
        FILE *f = fdopen(fd, "wb");
        if (!f || fwrite(buf, 1, bytes, f) != bytes || fclose(f) != 0) die("write %s: %s", tmp, strerror(errno));
        gsink_status st = gsink_optimizer_load(tr->opt, tmp);
        unlink(tmp);
        if (st != GSINK_OK) die("--resume: %s: %s", gsink_status_str(st), gsink_optimizer_errmsg(tr->opt));
    }
    free(buf);
}

/* Start of a run on N ranks: rank 0's run state (step, epoch, cursor, data
 * seed) and weights go to every rank, then the weights are verified. */
static void sync_start(trainer *tr)
{
    if (g_dist.size == 1) return;
    if (dist_bcast(&g_dist, &tr->rs, sizeof tr->rs, 0)) die("broadcast of the run state failed");
    if (gsink_optimizer_step_count(tr->opt) != tr->rs.step)
        die("optimizer state is at step %lld, run state at %lld", (long long)gsink_optimizer_step_count(tr->opt),
            (long long)tr->rs.step);
    if (g_dist.rank == 0) CHECK(gsink_get_params_flat(tr->model, tr->flat, tr->numel));
    if (dist_bcast(&g_dist, tr->flat, tr->numel * sizeof(float), 0)) die("broadcast of the weights failed");
    if (g_dist.rank != 0) CHECK(gsink_set_params_flat(tr->model, tr->flat, tr->numel));
    const char *bad = getenv("GSINK_DIST_TEST_CORRUPT_RANK");
    if (bad && *bad && atoi(bad) == g_dist.rank) { /* test hook: one weight differs on this rank */
        CHECK(gsink_get_params_flat(tr->model, tr->flat, tr->numel));
        tr->flat[tr->numel / 2] += 1.0f;
        CHECK(gsink_set_params_flat(tr->model, tr->flat, tr->numel));
    }
    verify_same_weights(tr, "after the broadcast of rank 0's weights");
}

/* The gradients of one step summed over ranks. Each rank's backward gives
 * the gradient of its rows' mean loss; scaled by its share of the global
 * batch's tokens (every target of a training window counts), the sum is the
 * gradient of the global batch's mean loss, as one process computes it. The
 * CPU backward is one library call, so the exchange follows it, in buckets
 * of GSINK_DIST_BUCKET_MB (dist.c). */
static void allreduce_grads(trainer *tr)
{
    if (g_dist.size == 1) return;
    CHECK(gsink_get_grads_flat(tr->model, tr->flat, tr->numel));
    const float share = (float)((double)(tr->hi - tr->lo) / (double)tr->a.batch);
    for (size_t i = 0; i < tr->numel; i++) tr->flat[i] *= share;
    if (dist_allreduce_sum_f(&g_dist, tr->flat, tr->numel)) die("gradient all-reduce failed");
    CHECK(gsink_set_grads_flat(tr->model, tr->flat, tr->numel));
}

/* A loss averaged over the rows of a global batch: this rank's mean over its
 * rows, weighted by its share, summed over ranks. */
static double global_mean(const trainer *tr, double local_mean_sum)
{
    if (g_dist.size == 1) return local_mean_sum;
    double v = local_mean_sum * (double)(tr->hi - tr->lo) / (double)tr->a.batch;
    if (dist_allreduce_sum_d(&g_dist, &v, 1)) die("loss all-reduce failed");
    return v;
}

/* Drops log lines after the resumed step so the logs read like one run. */
static void truncate_log(const char *path, int64_t step)
{
    FILE *f = fopen_regular(path);
    if (!f) return;
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) die("path too long: %s", path);
    FILE *o = fopen(tmp, "w");
    if (!o) die("cannot create %s", tmp);
    char line[1 << 16];
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"step\":");
        long long s = p ? atoll(p + 7) : 0;
        if (s <= step) fputs(line, o);
    }
    fclose(f);
    fclose(o);
    rename(tmp, path);
}

/* ---- training -------------------------------------------------------------- */

/* Validation batches: --eval-batches of them (fewer when the split has fewer
 * windows), and at least one. */
static int val_batches(const trainer *tr)
{
    int n = tr->a.eval_batches;
    if ((uint64_t)n * tr->a.batch > tr->wval.n) n = (int)(tr->wval.n / tr->a.batch);
    return n < 1 ? 1 : n; /* fewer windows than rows: windows repeat */
}

/* Validation batch i: the n*B windows read by n batches are spread evenly over
 * the validation split, in stream order (window floor(j * windows / (n*B)) for
 * row j; cyclic when the split has fewer windows). Batch 0 is also the
 * diagnostics batch. Rows [lo, hi) of it go to rows 0.. of x, y. */
static void fill_val_batch(trainer *tr, int i, int lo, int hi)
{
    const uint64_t B = (uint64_t)tr->a.batch, M = (uint64_t)val_batches(tr) * B, n = tr->wval.n;
    for (uint64_t b = (uint64_t)lo; b < (uint64_t)hi; b++) {
        uint64_t j = (uint64_t)i * B + b;
        uint64_t k = M <= n ? (uint64_t)((unsigned __int128)j * n / M) : j % n;
        fill_window(&tr->wval, &tr->val, k, (int)(b - (uint64_t)lo), tr->x, tr->y);
    }
}

/* The next training window: the epoch's order is read to its end, then the
 * next epoch's order is drawn. */
static uint64_t next_window(trainer *tr)
{
    run_state *rs = &tr->rs;
    if (rs->cursor == tr->wtrain.n) {
        rs->epoch++;
        rs->cursor = 0;
    }
    if (tr->order_epoch != (int64_t)rs->epoch) {
        epoch_order(tr->order, tr->wtrain.n, rs->data_seed, rs->epoch);
        tr->order_epoch = (int64_t)rs->epoch;
    }
    return tr->order[rs->cursor++];
}

/* Mean validation loss; under MPI each rank runs its rows of every batch. */
static float eval_loss(trainer *tr)
{
    const int T = tr->a.seq;
    int n = val_batches(tr);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        float loss;
        fill_val_batch(tr, i, tr->lo, tr->hi);
        CHECK(gsink_forward(tr->model, tr->x, tr->y, tr->hi - tr->lo, T, &loss));
        sum += loss;
    }
    return (float)(global_mean(tr, sum) / n);
}

static void json_floats(FILE *f, const float *v, int n)
{
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%.6g", i ? "," : "", (double)v[i]);
    fputc(']', f);
}

/* Optional metric: prints null when the diagnostics are not in this build. */
static void json_metric(FILE *f, gsink_status st, float v)
{
    if (st == GSINK_OK && isfinite(v)) fprintf(f, "%.6g", (double)v);
    else fputs("null", f);
}

/* Diagnostics on the first validation batch: forward + backward, then grads
 * zeroed. Under MPI rank 0 runs the whole batch (the other ranks skip it), so
 * the lines equal a single process's. */
static void diagnostics(trainer *tr, FILE *out, int final)
{
    if (g_dist.rank != 0) return;
    const int B = tr->a.batch, T = tr->a.seq, L = tr->cfg.n_layers, H = tr->cfg.n_heads;
    float loss;
    fill_val_batch(tr, 0, 0, B);
    CHECK(gsink_forward(tr->model, tr->x, tr->y, B, T, &loss));
    CHECK(gsink_backward(tr->model, 0));
    fprintf(out, "{\"step\":%lld,\"loss\":%.6g,\"layers\":[", (long long)tr->rs.step, (double)loss);
    float *theta = NULL;
    if (tr->n_theta) {
        theta = malloc(tr->n_theta * sizeof(float));
        if (!theta) die("out of memory");
        CHECK(gsink_vscale_get_theta(tr->model, theta, tr->n_theta));
    }
    int S = tr->n_theta ? (int)(tr->n_theta / L) : 0;
    float *buf = malloc((size_t)(T > H ? T : H) * sizeof(float));
    if (!buf) die("out of memory");
    int rgs_te = T - 1 < 31 ? T - 1 : 31;
    for (int l = 0; l < L; l++) {
        float v = NAN;
        fprintf(out, "%s{\"layer\":%d,\"sink_rate\":", l ? "," : "", l);
        gsink_status st = T >= 2 ? gsink_sink_rate(tr->model, l, 0, 0.3f, &v) : GSINK_ERR_OUT_OF_RANGE;
        json_metric(out, st, v);
        static const struct { gsink_site site; const char *name; } ma[] = {
            {GSINK_SITE_RESID_OUT, "resid_out_t0_early"}, {GSINK_SITE_MLP_OUT, "mlp_out_t0_early"},
            {GSINK_SITE_ATTN_OUT, "attn_out_t0_early"}};
        for (int k = 0; k < 3; k++) {
            v = NAN;
            st = T >= 16 ? gsink_massive_activation_ratio(tr->model, l, ma[k].site, &v) : GSINK_ERR_OUT_OF_RANGE;
            fprintf(out, ",\"%s\":", ma[k].name);
            json_metric(out, st, v);
        }
        v = NAN;
        st = gsink_gradient_sink_ratio(tr->model, l, 0, rgs_te, GSINK_AGG_SUM_THEN_NORM, &v);
        fputs(",\"r_gs\":", out);
        json_metric(out, st, v);
        if (S) {
            double m = 0;
            for (int h = 0; h < S; h++) m += theta[(size_t)l * S + h];
            fprintf(out, ",\"theta_mean\":%.6g,\"theta\":", m / S);
            json_floats(out, theta + (size_t)l * S, S);
        }
        if (gsink_sink_scores(tr->model, l, 0, buf, (size_t)H) == GSINK_OK) {
            fputs(",\"sink_scores\":", out);
            json_floats(out, buf, H);
        }
        if (final) {
            /* token-wise profiles for the figures */
            if (gsink_get_gradient_norms(tr->model, l, GSINK_SITE_ATTN_NORM_OUT, GSINK_ALL_HEADS,
                                         GSINK_AGG_SUM_THEN_NORM, buf, (size_t)T) == GSINK_OK) {
                fputs(",\"grad_norm_attn_norm_out\":", out);
                json_floats(out, buf, T);
            }
            static const gsink_site sites[] = {GSINK_SITE_RESID_OUT, GSINK_SITE_MLP_OUT, GSINK_SITE_ATTN_OUT};
            for (int k = 0; k < 3; k++)
                if (gsink_get_activation_norms(tr->model, l, sites[k], GSINK_ALL_HEADS, buf, (size_t)T) == GSINK_OK) {
                    fprintf(out, ",\"act_norm_%s\":", gsink_site_name(sites[k]));
                    json_floats(out, buf, T);
                }
        }
        fputc('}', out);
    }
    fputs("]}\n", out);
    fflush(out);
    free(buf);
    free(theta);
    CHECK(gsink_zero_grad(tr->model));
}

static void fmt_time(char *buf, size_t n, double s)
{
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%02ld:%02ld", t / 60, t % 60);
}

static void progress(const trainer *tr, float loss, float lr, double tok_s, double eta, float val)
{
    const int width = 24;
    int fill = (int)(width * (double)tr->rs.step / (double)tr->a.steps);
    char bar[64], eta_s[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fmt_time(eta_s, sizeof eta_s, eta);
    int tty = isatty(2);
    fprintf(stderr, "%s[%s] step %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %s", tty ? "\r\033[K" : "", bar,
            (long long)tr->rs.step, (long long)tr->a.steps, (double)loss, (double)lr, tok_s, eta_s);
    if (isfinite(val)) fprintf(stderr, " val %.4f", (double)val);
    if (!tty) fputc('\n', stderr);
    fflush(stderr);
}

int main(int argc, char **argv)
{
    crc_init();
    {
        char err[512];
        if (dist_init(&g_dist, err, sizeof err)) {
            fprintf(stderr, "gsink-train: %s\n", err);
            return 1;
        }
    }
    trainer tr;
    memset(&tr, 0, sizeof tr);
    parse_args(argc, argv, &tr.a);
    train_args *a = &tr.a;
    if (gsink_version_number() != GSINK_VERSION_NUMBER)
        die("libgsink %s does not match the header %s", gsink_version_string(), GSINK_VERSION_STRING);

    char path[4400];
    data_open(&tr.train, a->data_dir, "train");
    data_open(&tr.val, a->data_dir, "val");
    if (tr.val.vocab != tr.train.vocab) die("train.bin and val.bin disagree on the vocabulary size");
    if (!tr.train.shards) check_meta_vocab(a->data_dir, tr.train.vocab);
    uint64_t need = (uint64_t)a->batch * a->seq + 1;
    if (tr.train.count < need)
        die("%s has %llu tokens; one batch of %d x %d needs %llu: use a smaller --batch/--seq or more data",
            tr.train.path, (unsigned long long)tr.train.count, a->batch, a->seq, (unsigned long long)need);
    if (tr.val.count < need)
        die("%s has %llu tokens; one batch of %d x %d needs %llu: use a smaller --batch/--seq or more data",
            tr.val.path, (unsigned long long)tr.val.count, a->batch, a->seq, (unsigned long long)need);
    windows_build(&tr.wtrain, &tr.train, a->seq, a->doc_start);
    windows_build(&tr.wval, &tr.val, a->seq, a->doc_start);
    if (a->doc_start && (!tr.wtrain.seps || !tr.wval.seps))
        die("--windows doc-start: %s has no end-of-text separator (id %d): no document boundaries",
            tr.wtrain.seps ? tr.val.path : tr.train.path, tr.train.eot);
    tr.order = malloc(tr.wtrain.n * sizeof *tr.order);
    if (!tr.order) die("out of memory");
    tr.order_epoch = -1;

    /* model */
    gsink_config_init(&tr.cfg);
    tr.cfg.vocab_size = tr.train.vocab;
    tr.cfg.d_model = a->d_model;
    tr.cfg.n_layers = a->layers;
    tr.cfg.n_heads = a->heads;
    tr.cfg.n_kv_heads = a->kv_heads;
    tr.cfg.d_head = a->d_head;
    tr.cfg.d_ff = a->d_ff;
    tr.cfg.max_seq_len = a->seq;
    tr.cfg.tie_embeddings = 1;
    CHECK(gsink_config_validate(&tr.cfg));
    gsink_model_options mo;
    gsink_model_options_init(&mo);
    mo.n_threads = a->threads ? a->threads : dist_default_threads(&g_dist, gsink_max_threads());
    mo.seed = a->seed;
    mo.device = strcmp(a->device, "cuda") ? GSINK_DEVICE_CPU : GSINK_DEVICE_CUDA;
    if (mo.device == GSINK_DEVICE_CUDA && g_dist.size > 1) { /* one GPU per rank of a node, round robin */
        int gpus = 0;
        if (gsink_device_count(GSINK_DEVICE_CUDA, &gpus) == GSINK_OK) mo.device_index = dist_device_index(&g_dist, gpus);
    }
    mo.precision = !strcmp(a->precision, "tf32")   ? GSINK_PRECISION_TF32
                   : !strcmp(a->precision, "bf16") ? GSINK_PRECISION_BF16
                                                   : GSINK_PRECISION_FP32;
    CHECK(gsink_model_create(&tr.cfg, &mo, &tr.model));
    const char *use_nccl = getenv("GSINK_DIST_NCCL"); /* opt-in, untested: docs/distributed.md */
    if (use_nccl && *use_nccl && strcmp(use_nccl, "0") && g_dist.size > 1) {
        char err[512];
        if (mo.device != GSINK_DEVICE_CUDA) die("GSINK_DIST_NCCL=1 needs --device cuda");
        if (dist_enable_nccl(&g_dist, mo.device_index, err, sizeof err)) die("%s", err);
    }
    int vmode = vscale_mode_of(a->vscale);
    if (vmode != GSINK_VSCALE_OFF) {
        gsink_vscale_options vo;
        gsink_vscale_options_init(&vo);
        vo.mode = vmode;
        vo.learnable_theta = vmode == GSINK_VSCALE_FULL && !a->frozen_theta;
        vo.per_query_head = a->per_query_head;
        CHECK(gsink_vscale_enable(tr.model, &vo));
        CHECK(gsink_vscale_theta_count(tr.model, &tr.n_theta));
    }
    gsink_diag_options dopt;
    gsink_diag_options_init(&dopt);
    CHECK(gsink_get_diag_options(tr.model, &dopt));
    if (dopt.sink_window > a->seq) {
        dopt.sink_window = a->seq;
        CHECK(gsink_set_diag_options(tr.model, &dopt));
    }
    gsink_optimizer_options oo;
    gsink_optimizer_options_init(&oo);
    oo.lr = a->lr;
    oo.min_lr = a->min_lr;
    oo.warmup_steps = a->warmup;
    oo.total_steps = (int32_t)a->steps;
    oo.weight_decay = a->wd;
    oo.grad_clip = a->clip;
    oo.accumulation_steps = a->grad_accum;
    CHECK(gsink_optimizer_create(tr.model, &oo, &tr.opt));
    size_t numel;
    CHECK(gsink_param_numel(tr.model, &numel));
    tr.numel = numel;
    if (a->batch < g_dist.size) die("--batch %d is the global batch: at least one row per rank (%d ranks)", a->batch, g_dist.size);
    dist_slice(a->batch, g_dist.rank, g_dist.size, &tr.lo, &tr.hi);
    if (g_dist.size > 1 && !(tr.flat = malloc(numel * sizeof(float)))) die("out of memory");

    if (g_dist.rank == 0 && mkdir(a->out_dir, 0755) != 0 && errno != EEXIST)
        die("mkdir %s: %s", a->out_dir, strerror(errno));
    tr.rs.data_seed = a->seed;
    verify_same_config(&tr); /* before anything else that the ranks do together */
    if (a->resume) resume_all(&tr);
    sync_start(&tr);
    char log_path[4400], diag_path[4400];
    snprintf(log_path, sizeof log_path, "%s/log.jsonl", a->out_dir);
    snprintf(diag_path, sizeof diag_path, "%s/diag.jsonl", a->out_dir);
    if (g_dist.rank == 0) { /* rank 0 writes the logs; the others write to nowhere */
        if (a->resume) {
            truncate_log(log_path, tr.rs.step);
            truncate_log(diag_path, tr.rs.step);
        }
        tr.log = fopen(log_path, a->resume ? "a" : "w");
        tr.diag = fopen(diag_path, a->resume ? "a" : "w");
    } else {
        tr.log = fopen("/dev/null", "w");
        tr.diag = fopen("/dev/null", "w");
    }
    if (!tr.log || !tr.diag) die("cannot write logs in %s", a->out_dir);

    const int B = a->batch, T = a->seq;
    const uint64_t bt = (uint64_t)B * T;
    tr.x = malloc(bt * sizeof(int32_t));
    tr.y = malloc(bt * sizeof(int32_t));
    if (!tr.x || !tr.y) die("out of memory");
    if (g_dist.size > 1 && g_dist.rank == 0)
        fprintf(stderr, "gsink-train: data parallel over %d ranks (%s): global batch %d rows, %d to %d per rank, "
                        "gradient all-reduce in buckets of %.3g MB, threads per rank %d (0: one per CPU)\n", g_dist.size, g_dist.backend, B,
                B / g_dist.size, (B + g_dist.size - 1) / g_dist.size, (double)g_dist.bucket_bytes / 1048576.0,
                a->threads ? a->threads : dist_default_threads(&g_dist, gsink_max_threads()));
    if (g_dist.rank == 0) fprintf(stderr,
            "gsink-train: %zu parameters (d%d L%d H%d KV%d dh%d ff%d V%d), V-scale %s, %lld steps of %d x %d x %d "
            "tokens, lr %g -> %g (warm-up %d), train %llu / val %llu tokens, %s %s%s\n",
            numel, tr.cfg.d_model, tr.cfg.n_layers, tr.cfg.n_heads, tr.cfg.n_kv_heads, tr.cfg.d_head, tr.cfg.d_ff,
            tr.cfg.vocab_size, a->vscale, (long long)a->steps, a->grad_accum, B, T, (double)a->lr,
            (double)a->min_lr, a->warmup, (unsigned long long)tr.train.count, (unsigned long long)tr.val.count,
            a->device, a->precision, a->resume ? "; resumed" : "");
    if (g_dist.rank != 0) {
    } else if (a->doc_start)
        fprintf(stderr, "gsink-train: %s windows: %llu per epoch over %llu documents (%.3f epochs in this run)\n",
                "doc-start", (unsigned long long)tr.wtrain.n, (unsigned long long)tr.wtrain.docs,
                (double)a->steps * a->grad_accum * B / (double)tr.wtrain.n);
    else
        fprintf(stderr, "gsink-train: packed windows: %llu per epoch, the last overlapping the one before it by %llu "
                        "tokens (%.3f epochs in this run)\n", (unsigned long long)tr.wtrain.n,
                (unsigned long long)tr.wtrain.overlap, (double)a->steps * a->grad_accum * B / (double)tr.wtrain.n);
    if (!a->resume) {
        fprintf(tr.log, "{\"step\":0,\"config\":{\"params\":%zu,\"d_model\":%d,\"layers\":%d,\"heads\":%d,"
                        "\"kv_heads\":%d,\"d_head\":%d,\"d_ff\":%d,\"vocab\":%d,\"vscale\":\"%s\",\"batch\":%d,"
                        "\"seq\":%d,\"grad_accum\":%d,\"steps\":%lld,\"lr\":%g,\"min_lr\":%g,\"warmup\":%d,"
                        "\"weight_decay\":%g,\"clip\":%g,\"windows\":\"%s\",\"seed\":%llu,\"device\":\"%s\","
                        "\"precision\":\"%s\",\"data\":\"%s\",\"epoch_windows\":%llu,\"documents\":%llu,"
                        "\"tail_overlap\":%llu,\"ranks\":%d}}\n",
                numel, tr.cfg.d_model, tr.cfg.n_layers, tr.cfg.n_heads, tr.cfg.n_kv_heads, tr.cfg.d_head,
                tr.cfg.d_ff, tr.cfg.vocab_size, a->vscale, B, T, a->grad_accum, (long long)a->steps, (double)a->lr,
                (double)a->min_lr, a->warmup, (double)a->wd, (double)a->clip, a->doc_start ? "doc-start" : "packed",
                (unsigned long long)a->seed, a->device, a->precision, tr.train.shards ? "llm.c shards" : "token files",
                (unsigned long long)tr.wtrain.n, (unsigned long long)(a->doc_start ? tr.wtrain.docs : 0),
                (unsigned long long)tr.wtrain.overlap, g_dist.size);
        float v0 = eval_loss(&tr);
        fprintf(tr.log, "{\"step\":0,\"val_loss\":%.6f}\n", (double)v0);
        diagnostics(&tr, tr.diag, 0);
    }
    CHECK(gsink_zero_grad(tr.model));

    FILE *dump = NULL;
    if (a->dump_batches) { /* under MPI: FILE.rankR, each rank's rows */
        char dp[4200];
        if (g_dist.size > 1) snprintf(dp, sizeof dp, "%s.rank%d", a->dump_batches, g_dist.rank);
        else snprintf(dp, sizeof dp, "%s", a->dump_batches);
        if (!(dump = fopen(dp, "ab"))) die("cannot open %s: %s", dp, strerror(errno));
    }
    const int Bl = tr.hi - tr.lo;
    const uint64_t btl = (uint64_t)Bl * T;
    double t_start = now_s(), tok_done = 0;
    int64_t first_step = tr.rs.step;
    float last_val = NAN;
    while (tr.rs.step < a->steps) {
        double t0 = now_s();
        double loss_sum = 0;
        for (int mb = 0; mb < a->grad_accum; mb++) {
            /* each row: the next window of the epoch's shuffled order (a batch may span two epochs) */
            /* every rank walks the whole order and keeps its rows [lo, hi) */
            for (int b = 0; b < B; b++) {
                uint64_t k = next_window(&tr);
                if (b >= tr.lo && b < tr.hi) fill_window(&tr.wtrain, &tr.train, k, b - tr.lo, tr.x, tr.y);
            }
            tr.rs.tokens += bt;
            if (dump && fwrite(tr.x, sizeof(int32_t), (size_t)btl, dump) != (size_t)btl)
                die("write %s: %s", a->dump_batches, strerror(errno));
            float loss;
            CHECK(gsink_forward(tr.model, tr.x, tr.y, Bl, T, &loss));
            if (!isfinite(loss)) die("step %lld: loss is %g; stopping (weights unchanged)", (long long)tr.rs.step, loss);
            CHECK(gsink_backward(tr.model, GSINK_BACKWARD_ACCUMULATE));
            loss_sum += loss;
        }
        allreduce_grads(&tr);
        loss_sum = global_mean(&tr, loss_sum);
        float lr = gsink_optimizer_lr_at(tr.opt, tr.rs.step), gnorm = 0;
        gsink_status st = gsink_optimizer_step(tr.opt, &gnorm);
        if (st == GSINK_ERR_NON_FINITE)
            die("step %lld: %s; weights unchanged, last checkpoint kept", (long long)tr.rs.step, gsink_optimizer_errmsg(tr.opt));
        if (st != GSINK_OK) die("optimizer step: %s (%s)", gsink_status_str(st), gsink_optimizer_errmsg(tr.opt));
        tr.rs.step++;
        double dt = now_s() - t0;
        tok_done += (double)bt * a->grad_accum;
        float loss = (float)(loss_sum / a->grad_accum);
        fprintf(tr.log, "{\"step\":%lld,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,\"tok_s\":%.1f,\"epoch\":%llu}\n",
                (long long)tr.rs.step, (double)loss, (double)lr, (double)gnorm, bt * a->grad_accum / dt,
                (unsigned long long)tr.rs.epoch);
        int last = tr.rs.step == a->steps;
        if (tr.rs.step % a->eval_every == 0 || last) {
            last_val = eval_loss(&tr);
            fprintf(tr.log, "{\"step\":%lld,\"val_loss\":%.9g}\n", (long long)tr.rs.step, (double)last_val);
        }
        if (tr.rs.step % a->diag_every == 0 || last) diagnostics(&tr, tr.diag, 0);
        fflush(tr.log);
        double el = now_s() - t_start, tok_s = tok_done / el;
        double eta = el / (double)(tr.rs.step - first_step) * (double)(a->steps - tr.rs.step);
        if (g_dist.rank == 0 && a->progress && (isatty(2) || tr.rs.step % a->log_every == 0 || last))
            progress(&tr, loss, lr, tok_s, eta, last_val);
        int stop = a->stop_at > 0 && tr.rs.step == a->stop_at;
        if (tr.rs.step % a->ckpt_every == 0 || last || stop) save_checkpoint(&tr);
        if (stop) {
            if (g_dist.rank == 0) fprintf(stderr, "\ngsink-train: stopped at step %lld as asked (--stop-at); continue with --resume\n",
                    (long long)tr.rs.step);
            goto done; /* no final weights: the run is not over */
        }
    }
    if (g_dist.rank == 0 && a->progress && isatty(2)) fputc('\n', stderr);

    /* final weights + tokenizer + token-wise diagnostics for the figures (rank 0) */
    verify_same_weights(&tr, "at the end");
    if (g_dist.rank != 0) goto done;
    char final_dir[4400];
    if (a->save_model) snprintf(final_dir, sizeof final_dir, "%s", a->save_model);
    else snprintf(final_dir, sizeof final_dir, "%s/final", a->out_dir);
    gsink_status st = gsink_model_save(tr.model, final_dir);
    if (st == GSINK_OK) {
        char src[4400], dst[4500];
        snprintf(src, sizeof src, "%s/tokenizer.json", a->data_dir);
        snprintf(dst, sizeof dst, "%s/tokenizer.json", final_dir);
        if (access(src, R_OK) == 0 && copy_file(src, dst) != 0) die("copy %s -> %s failed", src, dst);
        fprintf(stderr, "gsink-train: weights saved to %s\n", final_dir);
    } else {
        fprintf(stderr, "gsink-train: final weights not saved: %s (%s)\n", gsink_status_str(st), gsink_last_error());
    }
    snprintf(path, sizeof path, "%s/final_diag.json", a->out_dir);
    FILE *fd = fopen(path, "w");
    if (!fd) die("cannot write %s", path);
    diagnostics(&tr, fd, 1);
    fclose(fd);
    fprintf(stderr, "gsink-train: done: step %lld, val loss %.4f, %.0f tok/s\n", (long long)tr.rs.step,
            (double)last_val, tok_done / (now_s() - t_start));

done:
    if (dump && fclose(dump) != 0) die("write %s: %s", a->dump_batches, strerror(errno));
    fclose(tr.log);
    fclose(tr.diag);
    free(tr.x);
    free(tr.y);
    free(tr.flat);
    gsink_optimizer_free(tr.opt);
    gsink_model_free(tr.model);
    token_file_close(&tr.train);
    token_file_close(&tr.val);
    free(tr.wtrain.q);
    free(tr.wval.q);
    free(tr.order);
    dist_finalize(&g_dist);
    return 0;
}
