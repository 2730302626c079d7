/* safetensors.c - HuggingFace checkpoints: config.json + model.safetensors
 * (or sharded model.safetensors.index.json) reader, and the atomic writer. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io_internal.h"
#include "wdtype.h"

#define ST_MAX_HEADER (100u << 20) /* the reference implementation's limit */
#define ST_MAX_SHARDS 4096

typedef enum st_dtype {
    ST_F32, ST_F16, ST_BF16, ST_OTHER
} st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    char dtype_name[16];
    int ndim;
    uint64_t shape[8];
    size_t numel;
    size_t begin, end; /* relative to the data section */
    int shard;
} st_tensor;

typedef struct st_set {
    gsink__file *files;
    size_t *data_off; /* per shard: start of the data section */
    int n_files;
    st_tensor *t;
    size_t n, cap;
    size_t *by_name; /* indices into t sorted by name (st_index) */
} st_set;

static void st_set_free(st_set *s)
{
    for (int k = 0; k < s->n_files; k++) gsink__file_close(&s->files[k]);
    free(s->files);
    free(s->data_off);
    for (size_t k = 0; k < s->n; k++) free(s->t[k].name);
    free(s->t);
    free(s->by_name);
    memset(s, 0, sizeof *s);
}

static int dtype_from_name(const char *d, st_dtype *dt, size_t *esize)
{
    static const struct { const char *n; st_dtype t; size_t sz; } tab[] = {
        {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2},
        {"F64", ST_OTHER, 8}, {"I64", ST_OTHER, 8}, {"U64", ST_OTHER, 8},
        {"I32", ST_OTHER, 4}, {"U32", ST_OTHER, 4}, {"I16", ST_OTHER, 2},
        {"U16", ST_OTHER, 2}, {"I8", ST_OTHER, 1}, {"U8", ST_OTHER, 1},
        {"BOOL", ST_OTHER, 1}, {"F8_E4M3", ST_OTHER, 1}, {"F8_E5M2", ST_OTHER, 1},
    };
    for (size_t k = 0; k < sizeof tab / sizeof tab[0]; k++)
        if (strcmp(d, tab[k].n) == 0) {
            *dt = tab[k].t;
            *esize = tab[k].sz;
            return 1;
        }
    return 0;
}

static int cmp_begin(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* "gsink.checksum" in __metadata__: "fnv1a64:" and 16 hex digits, the
 * FNV-1a 64 of the whole data section (everything after the header). The
 * library writes it (gsink_model_save); files without it (HF) are taken as
 * they are. */
#define ST_CHECKSUM_KEY "gsink.checksum"
#define ST_CHECKSUM_ALG "fnv1a64:"

static gsink_status st_check_metadata(const gsink__json *md, const uint8_t *data, size_t dsize,
                                      const char *fname, char *err)
{
    const gsink__json *c = gsink__json_get(md, ST_CHECKSUM_KEY);
    if (!c) return GSINK_OK;
    const size_t al = strlen(ST_CHECKSUM_ALG);
    uint64_t want = 0;
    int ok = c->type == GSINK_JSON_STRING && c->len == al + 16 && memcmp(c->str, ST_CHECKSUM_ALG, al) == 0;
    for (size_t k = 0; ok && k < 16; k++) {
        char h = c->str[al + k];
        int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
        if (v < 0) ok = 0;
        else want = want << 4 | (uint64_t)v;
    }
    if (!ok)
        return gsink__fail(err, GSINK_ERR_FORMAT,
                           "safetensors '%s': __metadata__ " ST_CHECKSUM_KEY " must be \"" ST_CHECKSUM_ALG
                           "\" and 16 lowercase hex digits", fname);
    uint64_t got = gsink__fnv1a64(GSINK_FNV1A64_INIT, data, dsize);
    if (got != want)
        return gsink__fail(err, GSINK_ERR_FORMAT,
                           "safetensors '%s': checksum mismatch: the tensor data hashes to " ST_CHECKSUM_ALG
                           "%016llx, __metadata__ records " ST_CHECKSUM_ALG "%016llx (corrupt file)",
                           fname, (unsigned long long)got, (unsigned long long)want);
    return GSINK_OK;
}

/* Parses one safetensors file's header and appends its tensors to s. */
static gsink_status st_parse(const uint8_t *data, size_t size, int shard, st_set *s,
                             size_t *data_off, const char *fname, char *err)
{
    if (size < 8)
        return gsink__fail(err, GSINK_ERR_FORMAT, "safetensors '%s': truncated (%zu bytes, no header length)",
                           fname, size);
    uint64_t hlen = gsink__rd64(data);
    if (hlen > size - 8)
        return gsink__fail(err, GSINK_ERR_FORMAT,
                           "safetensors '%s': header length %llu runs past the end of the %zu-byte file",
                           fname, (unsigned long long)hlen, size);
    if (hlen > ST_MAX_HEADER)
        return gsink__fail(err, GSINK_ERR_FORMAT, "safetensors '%s': header length %llu is absurd", fname,
                           (unsigned long long)hlen);
    if (hlen < 2 || data[8] != '{')
        return gsink__fail(err, GSINK_ERR_FORMAT, "safetensors '%s': header is not a JSON object", fname);
    gsink__json *j;
    gsink_status st = gsink__json_parse((const char *)data + 8, (size_t)hlen, &j, err);
    if (st) return gsink__refail(err, st, "safetensors header");
    if (j->type != GSINK_JSON_OBJECT) {
        gsink__json_free(j);
        return gsink__fail(err, GSINK_ERR_FORMAT, "safetensors '%s': header is not a JSON object", fname);
    }
    size_t doff = 8 + (size_t)hlen, dsize = size - doff;
    *data_off = doff;
    size_t first = s->n;
    for (size_t k = 0; k < j->len && !st; k++) {
        const char *key = j->keys[k];
        const gsink__json *v = &j->items[k];
        if (strcmp(key, "__metadata__") == 0) {
            st = st_check_metadata(v, data + 8 + (size_t)hlen, size - 8 - (size_t)hlen, fname, err);
            continue;
        }
        const gsink__json *dt = gsink__json_get(v, "dtype"), *sh = gsink__json_get(v, "shape"),
                          *of = gsink__json_get(v, "data_offsets");
        if (!dt || dt->type != GSINK_JSON_STRING || !sh || sh->type != GSINK_JSON_ARRAY || !of ||
            of->type != GSINK_JSON_ARRAY || of->len != 2 || !of->items[0].is_uint || !of->items[1].is_uint) {
            st = gsink__fail(err, GSINK_ERR_FORMAT,
                             "safetensors '%s': tensor '%.64s' needs dtype, shape and data_offsets [begin, end]",
                             fname, key);
            break;
        }
        if (sh->len > 8) {
            st = gsink__fail(err, GSINK_ERR_UNSUPPORTED, "safetensors '%s': tensor '%.64s' has %zu dimensions",
                             fname, key, sh->len);
            break;
        }
        if (s->n == s->cap) {
            size_t nc = s->cap ? s->cap * 2 : 64;
            st_tensor *nt = realloc(s->t, nc * sizeof *nt);
            if (!nt) {
                st = gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "safetensors: out of memory");
                break;
            }
            s->t = nt;
            s->cap = nc;
        }
        st_tensor *t = &s->t[s->n];
        memset(t, 0, sizeof *t);
        size_t esize;
        if (strlen(dt->str) != dt->len || !dtype_from_name(dt->str, &t->dtype, &esize)) {
            st = gsink__fail(err, GSINK_ERR_UNSUPPORTED, "safetensors '%s': tensor '%.64s' has unknown dtype '%.16s'",
                             fname, key, dt->str);
            break;
        }
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dt->str);
        t->ndim = (int)sh->len;
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            const gsink__json *e = &sh->items[d];
            if (!e->is_uint || e->u64 > SIZE_MAX || !gsink__mul_size(numel, (size_t)e->u64, &numel)) {
                st = gsink__fail(err, GSINK_ERR_FORMAT,
                                 "safetensors '%s': tensor '%.64s' has an invalid or overflowing shape", fname, key);
                break;
            }
            t->shape[d] = e->u64;
        }
        if (st) break;
        size_t nbytes;
        uint64_t b = of->items[0].u64, e = of->items[1].u64;
        if (!gsink__mul_size(numel, esize, &nbytes)) {
            st = gsink__fail(err, GSINK_ERR_FORMAT, "safetensors '%s': tensor '%.64s' byte size overflows", fname, key);
            break;
        }
        if (b > e || e > dsize) {
            st = gsink__fail(err, GSINK_ERR_FORMAT,
                             "safetensors '%s': tensor '%.64s' data_offsets [%llu, %llu] lie outside the %zu-byte data section",
                             fname, key, (unsigned long long)b, (unsigned long long)e, dsize);
            break;
        }
        if (e - b != nbytes) {
            st = gsink__fail(err, GSINK_ERR_FORMAT,
                             "safetensors '%s': tensor '%.64s' spans %llu bytes but its shape and dtype need %zu",
                             fname, key, (unsigned long long)(e - b), nbytes);
            break;
        }
        t->numel = numel;
        t->begin = (size_t)b;
        t->end = (size_t)e;
        t->shard = shard;
        t->name = strdup(key);
        if (!t->name) {
            st = gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "safetensors: out of memory");
            break;
        }
        s->n++;
    }
    gsink__json_free(j);
    if (st) return st;
    /* No two tensors of this file may share bytes. */
    size_t nt = s->n - first;
    if (nt > 1) {
        st_tensor **ord = malloc(nt * sizeof *ord);
        if (!ord) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "safetensors: out of memory");
        size_t no = 0; /* empty tensors share no bytes with anything */
        for (size_t k = 0; k < nt; k++)
            if (s->t[first + k].end > s->t[first + k].begin) ord[no++] = &s->t[first + k];
        qsort(ord, no, sizeof *ord, cmp_begin);
        for (size_t k = 1; k < no; k++)
            if (ord[k]->begin < ord[k - 1]->end) {
                st = gsink__fail(err, GSINK_ERR_FORMAT, "safetensors '%s': tensors '%.64s' and '%.64s' overlap",
                                 fname, ord[k - 1]->name, ord[k]->name);
                break;
            }
        free(ord);
    }
    return st;
}

static int cmp_name_idx(const void *a, const void *b, void *ctx)
{
    const st_tensor *t = ctx;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = strcmp(t[x].name, t[y].name);
    return c ? c : (x > y) - (x < y);
}

/* Sorts the tensor names (O(n log n)) and refuses duplicates. */
static gsink_status st_index(st_set *s, char *err)
{
    free(s->by_name);
    s->by_name = malloc((s->n ? s->n : 1) * sizeof *s->by_name);
    if (!s->by_name) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "safetensors: out of memory");
    for (size_t k = 0; k < s->n; k++) s->by_name[k] = k;
    qsort_r(s->by_name, s->n, sizeof *s->by_name, cmp_name_idx, s->t);
    for (size_t k = 1; k < s->n; k++)
        if (strcmp(s->t[s->by_name[k - 1]].name, s->t[s->by_name[k]].name) == 0)
            return gsink__fail(err, GSINK_ERR_FORMAT, "safetensors: tensor '%.64s' appears twice",
                               s->t[s->by_name[k]].name);
    return GSINK_OK;
}

gsink_status gsink__st_check(const uint8_t *data, size_t size, char *err)
{
    st_set s;
    memset(&s, 0, sizeof s);
    size_t off;
    gsink_status st = st_parse(data, size, 0, &s, &off, "<memory>", err);
    if (!st) st = st_index(&s, err);
    st_set_free(&s);
    return st;
}

/* Binary search in the name index (st_index must have run). */
static const st_tensor *st_find(const st_set *s, const char *name)
{
    size_t lo = 0, hi = s->by_name ? s->n : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->t[s->by_name[mid]].name, name);
        if (c == 0) return &s->t[s->by_name[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static gsink_status add_shard(st_set *s, const char *path, char *err)
{
    if (s->n_files >= ST_MAX_SHARDS)
        return gsink__fail(err, GSINK_ERR_FORMAT, "safetensors: more than %d shards", ST_MAX_SHARDS);
    gsink__file *nf = realloc(s->files, (size_t)(s->n_files + 1) * sizeof *nf);
    if (!nf) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    s->files = nf;
    size_t *no = realloc(s->data_off, (size_t)(s->n_files + 1) * sizeof *no);
    if (!no) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    s->data_off = no;
    gsink_status st = gsink__file_open(path, &s->files[s->n_files], err);
    if (st) return st;
    int k = s->n_files++;
    return st_parse(s->files[k].data, s->files[k].size, k, s, &s->data_off[k], path, err);
}

/* ---- config.json --------------------------------------------------------- */

static gsink_status cfg_get_int(const gsink__json *j, const char *key, int required, int32_t *dst,
                                char *err)
{
    const gsink__json *v = gsink__json_get(j, key);
    if (!v || v->type == GSINK_JSON_NULL) {
        if (required) return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "config.json: missing '%s'", key);
        return GSINK_OK;
    }
    if (v->type != GSINK_JSON_NUMBER || !v->is_uint || v->u64 == 0 || v->u64 > INT32_MAX)
        return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "config.json: '%s' must be a positive integer", key);
    *dst = (int32_t)v->u64;
    return GSINK_OK;
}

static gsink_status cfg_get_float(const gsink__json *j, const char *key, float *dst, char *err)
{
    const gsink__json *v = gsink__json_get(j, key);
    if (!v || v->type == GSINK_JSON_NULL) return GSINK_OK;
    if (v->type != GSINK_JSON_NUMBER)
        return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "config.json: '%s' must be a number", key);
    *dst = (float)v->number;
    return GSINK_OK;
}

/* rope_scaling (HF: rope_type, or "type" in older files): llama3, linear,
 * yarn; null, absent or "default" is plain RoPE. Anything else is refused. */
static gsink_status parse_rope_scaling(const gsink__json *j, gsink_config *cfg, char *err)
{
    const gsink__json *rs = gsink__json_get(j, "rope_scaling");
    if (!rs || rs->type == GSINK_JSON_NULL) return GSINK_OK;
    if (rs->type != GSINK_JSON_OBJECT)
        return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "config.json: rope_scaling must be an object or null");
    const gsink__json *ty = gsink__json_get(rs, "rope_type");
    if (!ty || ty->type == GSINK_JSON_NULL) ty = gsink__json_get(rs, "type");
    if (!ty || ty->type != GSINK_JSON_STRING)
        return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "config.json: rope_scaling has no rope_type");
    int type = strlen(ty->str) == ty->len ? gsink__rope_scaling_by_name(ty->str) : -1;
    if (type < 0)
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                           "config.json: rope_scaling rope_type '%.32s' is not supported (default, linear, llama3, yarn)",
                           ty->str);
    cfg->rope_scaling = type;
    if (type == GSINK_ROPE_NONE) return GSINK_OK;
    gsink_status st;
    const gsink__json *th = gsink__json_get(rs, "rope_theta"); /* transformers 5 repeats it here */
    if (th && th->type == GSINK_JSON_NUMBER) cfg->rope_theta = (float)th->number;
    float factor = 0.0f;
    if ((st = cfg_get_float(rs, "factor", &factor, err))) return st;
    if ((st = cfg_get_int(rs, "original_max_position_embeddings", 0, &cfg->rope_original_max_pos, err)))
        return st;
    if (factor == 0.0f) {
        if (type == GSINK_ROPE_YARN && cfg->rope_original_max_pos > 0) /* HF: the context ratio */
            factor = (float)cfg->max_seq_len / (float)cfg->rope_original_max_pos;
        else
            return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "config.json: rope_scaling '%s' needs a factor",
                               gsink_rope_scaling_name(type));
    }
    cfg->rope_factor = factor;
    if (type == GSINK_ROPE_LLAMA3) {
        if (cfg->rope_original_max_pos == 0)
            return gsink__fail(err, GSINK_ERR_BAD_CONFIG,
                               "config.json: llama3 rope_scaling needs original_max_position_embeddings");
        if ((st = cfg_get_float(rs, "low_freq_factor", &cfg->rope_low_freq_factor, err))) return st;
        if ((st = cfg_get_float(rs, "high_freq_factor", &cfg->rope_high_freq_factor, err))) return st;
    } else if (type == GSINK_ROPE_YARN) {
        float bf = 0.0f, bs = 0.0f, af = 0.0f, ms = 0.0f, msa = 0.0f;
        if ((st = cfg_get_float(rs, "beta_fast", &bf, err)) || (st = cfg_get_float(rs, "beta_slow", &bs, err)) ||
            (st = cfg_get_float(rs, "attention_factor", &af, err)) || (st = cfg_get_float(rs, "mscale", &ms, err)) ||
            (st = cfg_get_float(rs, "mscale_all_dim", &msa, err)))
            return st;
        if (bf != 0.0f) cfg->rope_beta_fast = bf; /* HF: `or 32`, `or 1` */
        if (bs != 0.0f) cfg->rope_beta_slow = bs;
        if (af != 0.0f) {
            cfg->rope_attention_factor = af;
        } else if (ms != 0.0f && msa != 0.0f) { /* HF: get_mscale(f, mscale) / get_mscale(f, mscale_all_dim) */
            double f = cfg->rope_factor;
            double a = f <= 1.0 ? 1.0 : 0.1 * ms * log(f) + 1.0, b = f <= 1.0 ? 1.0 : 0.1 * msa * log(f) + 1.0;
            cfg->rope_attention_factor = (float)(a / b);
        }
        const gsink__json *tr = gsink__json_get(rs, "truncate");
        if (tr && tr->type == GSINK_JSON_BOOL) cfg->rope_truncate = tr->boolean ? 1 : 0;
    }
    return GSINK_OK;
}

/* Sliding-window attention. mistral: sliding_window (null: none). qwen2:
 * sliding_window counts only with use_sliding_window true, and then (HF
 * Qwen2Config layer_types) in layers l >= max_window_layers (default 28):
 * all layers (0) or none (>= num_hidden_layers) map onto the one window of
 * gsink_config; a mix is refused unless the window never cuts within
 * max_position_embeddings. llama has no window (HF ignores the key). */
static gsink_status parse_sliding_window(const gsink__json *j, const gsink_arch_info *arch, gsink_config *cfg,
                                         char *err)
{
    gsink_status st;
    int32_t w = 0;
    if (arch->id == GSINK_ARCH_MISTRAL) {
        if ((st = cfg_get_int(j, "sliding_window", 0, &w, err))) return st;
    } else if (arch->id == GSINK_ARCH_QWEN2) {
        const gsink__json *use = gsink__json_get(j, "use_sliding_window");
        if (!use || use->type != GSINK_JSON_BOOL || !use->boolean) return GSINK_OK;
        int32_t first = 28; /* max_window_layers */
        if ((st = cfg_get_int(j, "sliding_window", 0, &w, err))) return st;
        const gsink__json *mw = gsink__json_get(j, "max_window_layers");
        if (mw && mw->type == GSINK_JSON_NUMBER && mw->is_uint && mw->u64 == 0)
            first = 0;
        else if ((st = cfg_get_int(j, "max_window_layers", 0, &first, err)))
            return st;
        if (w > 0 && first >= cfg->n_layers) w = 0; /* no layer slides */
        if (w > 0 && first > 0) {
            if (w < cfg->max_seq_len)
                return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                                   "config.json: qwen2 sliding window %d in layers %d..%d only (max_window_layers "
                                   "= %d): per-layer windows are not supported",
                                   w, first, cfg->n_layers - 1, first);
            w = 0; /* never cuts within max_position_embeddings */
        }
    }
    cfg->sliding_window = w;
    return GSINK_OK;
}

static gsink_status parse_config(const gsink__json *j, gsink_config *cfg, int *tie_flag, char *err)
{
    gsink_config_init(cfg);
    if (j->type != GSINK_JSON_OBJECT)
        return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "config.json is not a JSON object");
    /* The architecture table's row for model_type sets the flags (absent: llama). */
    const gsink__json *mt = gsink__json_get(j, "model_type");
    const gsink_arch_info *arch = gsink__arch(GSINK_ARCH_LLAMA);
    if (mt && mt->type == GSINK_JSON_STRING) {
        arch = strlen(mt->str) == mt->len ? gsink__arch_by_name(mt->str) : NULL;
        if (!arch)
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "config.json: model_type '%.32s' is not supported (%s)",
                               mt->str, gsink__arch_list());
    }
    cfg->arch = arch->id;
    cfg->qkv_bias = arch->qkv_bias;
    cfg->qk_norm = arch->qk_norm;
    cfg->rope_interleaved = arch->rope_interleaved;
    cfg->sandwich_norm = arch->sandwich_norm;
    gsink_status st;
    if ((st = cfg_get_int(j, "vocab_size", 1, &cfg->vocab_size, err))) return st;
    if ((st = cfg_get_int(j, "hidden_size", 1, &cfg->d_model, err))) return st;
    if ((st = cfg_get_int(j, "num_hidden_layers", 1, &cfg->n_layers, err))) return st;
    if ((st = cfg_get_int(j, "num_attention_heads", 1, &cfg->n_heads, err))) return st;
    cfg->n_kv_heads = cfg->n_heads;
    if ((st = cfg_get_int(j, "num_key_value_heads", 0, &cfg->n_kv_heads, err))) return st;
    cfg->d_head = cfg->d_model / cfg->n_heads;
    if ((st = cfg_get_int(j, "head_dim", 0, &cfg->d_head, err))) return st;
    /* HF rotates int(head_dim * partial_rotary_factor) dims of each head */
    double prf = arch->rope_partial > 0.0f ? arch->rope_partial : 1.0;
    const gsink__json *pr = gsink__json_get(j, "partial_rotary_factor");
    if (pr && pr->type != GSINK_JSON_NULL) {
        if (pr->type != GSINK_JSON_NUMBER || !(pr->number > 0.0 && pr->number <= 1.0))
            return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "config.json: partial_rotary_factor must be in (0, 1]");
        prf = pr->number;
        /* HF's Llama-style attention rotates the whole head: a partial factor is an error there */
        if (!(arch->rope_partial > 0.0f) && prf != 1.0)
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                               "config.json: partial_rotary_factor %g is not supported for %s (only glm, glm4)", prf,
                               arch->model_type);
    }
    int rot = (int)((double)cfg->d_head * prf);
    if (rot < 2 || rot % 2)
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "config.json: head_dim %d x partial_rotary_factor %g gives %d "
                           "rotated dims (must be even and >= 2)", cfg->d_head, prf, rot);
    cfg->rope_dims = rot < cfg->d_head ? rot : 0;
    if ((st = cfg_get_int(j, "intermediate_size", 1, &cfg->d_ff, err))) return st;
    cfg->max_seq_len = 2048;
    if ((st = cfg_get_int(j, "max_position_embeddings", 0, &cfg->max_seq_len, err))) return st;
    cfg->rms_eps = 1e-6f; /* HF LlamaConfig default */
    cfg->rope_theta = 10000.0f;
    cfg->init_std = 0.02f;
    if ((st = cfg_get_float(j, "rms_norm_eps", &cfg->rms_eps, err))) return st;
    if ((st = cfg_get_float(j, "rope_theta", &cfg->rope_theta, err))) return st;
    if ((st = cfg_get_float(j, "initializer_range", &cfg->init_std, err))) return st;
    const gsink__json *tie = gsink__json_get(j, "tie_word_embeddings");
    *tie_flag = tie && tie->type == GSINK_JSON_BOOL && tie->boolean;
    const gsink__json *act = gsink__json_get(j, "hidden_act");
    if (act && act->type == GSINK_JSON_STRING && (strlen(act->str) != act->len || strcmp(act->str, "silu") != 0))
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "config.json: hidden_act '%.32s' is not supported (silu)",
                           act->str);
    const gsink__json *ab = gsink__json_get(j, "attention_bias");
    if (ab && ab->type == GSINK_JSON_BOOL && arch->bias_key) cfg->qkv_bias = ab->boolean ? 1 : 0; /* glm, glm4 */
    if (ab && ab->type == GSINK_JSON_BOOL && ab->boolean != (cfg->qkv_bias != 0) && arch->id != GSINK_ARCH_QWEN2)
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "config.json: attention_bias is not supported for %s",
                           arch->model_type);
    if ((st = parse_sliding_window(j, arch, cfg, err))) return st;
    return parse_rope_scaling(j, cfg, err);
}

/* ---- loading ------------------------------------------------------------- */

static gsink_status read_json_file(const char *path, gsink__json **out, char *err)
{
    char *text;
    size_t len;
    gsink_status st = gsink__read_text(path, 64u << 20, &text, &len, err);
    if (st) return st;
    st = gsink__json_parse(text, len, out, err);
    free(text);
    if (st) {
        char msg[GSINK_MSG_SIZE];
        snprintf(msg, sizeof msg, "%s", gsink_last_error());
        return gsink__fail(err, st, "%s: %s", path, msg);
    }
    return GSINK_OK;
}

static int cmp_shard_idx(const void *a, const void *b, void *ctx)
{
    const gsink__json *items = ctx;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = strcmp(items[x].str, items[y].str);
    return c ? c : (x > y) - (x < y);
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

static gsink_status open_shards(const char *dir, const char *weights_path, st_set *s, char *err)
{
    if (weights_path) {
        gsink_status st = add_shard(s, weights_path, err);
        return st ? st : st_index(s, err);
    }
    char *single = path_join(dir, "model.safetensors");
    if (!single) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    struct stat sb;
    if (stat(single, &sb) == 0) {
        gsink_status st = add_shard(s, single, err);
        free(single);
        return st ? st : st_index(s, err);
    }
    free(single);
    char *idx = path_join(dir, "model.safetensors.index.json");
    if (!idx) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    if (stat(idx, &sb) != 0) {
        gsink_status st = gsink__fail(err, GSINK_ERR_IO, "'%s' holds neither model.safetensors nor "
                                      "model.safetensors.index.json", dir);
        free(idx);
        return st;
    }
    gsink__json *j;
    gsink_status st = read_json_file(idx, &j, err);
    free(idx);
    if (st) return st;
    const gsink__json *wm = gsink__json_get(j, "weight_map");
    if (!wm || wm->type != GSINK_JSON_OBJECT) {
        gsink__json_free(j);
        return gsink__fail(err, GSINK_ERR_FORMAT, "model.safetensors.index.json has no weight_map object");
    }
    for (size_t k = 0; k < wm->len && !st; k++) {
        const gsink__json *f = &wm->items[k];
        if (gsink__json_shadowed(wm, k)) continue; /* a later entry names the tensor again */
        if (f->type != GSINK_JSON_STRING || f->len == 0 || strlen(f->str) != f->len || strchr(f->str, '/') ||
            strcmp(f->str, "..") == 0) {
            st = gsink__fail(err, GSINK_ERR_FORMAT, "weight_map entry '%.64s' names an invalid shard file",
                             wm->keys[k]);
            break;
        }
    }
    /* Each shard file once, in the order of first mention (sorted, not
     * compared pairwise: an index may list a million tensors). */
    size_t *ord = st ? NULL : malloc((wm->len ? wm->len : 1) * sizeof *ord);
    if (!st && !ord) st = gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    if (!st) {
        /* entries a later one overrides (duplicate keys: the last wins) name no shard */
        size_t n = 0;
        for (size_t k = 0; k < wm->len; k++)
            if (!gsink__json_shadowed(wm, k)) ord[n++] = k;
        qsort_r(ord, n, sizeof *ord, cmp_shard_idx, wm->items);
        /* keep ord[] entries that are first mentions, then restore file order */
        size_t nu = 0;
        for (size_t k = 0; k < n; k++)
            if (k == 0 || strcmp(wm->items[ord[k]].str, wm->items[ord[k - 1]].str) != 0) ord[nu++] = ord[k];
        qsort(ord, nu, sizeof *ord, cmp_size);
        for (size_t u = 0; u < nu && !st; u++) {
            char *p = path_join(dir, wm->items[ord[u]].str);
            if (!p) {
                st = gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
                break;
            }
            st = add_shard(s, p, err);
            free(p);
        }
    }
    free(ord);
    if (!st) st = st_index(s, err);
    /* Every tensor the index names must be in the shard it names. */
    for (size_t k = 0; k < wm->len && !st; k++) {
        const st_tensor *t = st_find(s, wm->keys[k]);
        if (!t)
            st = gsink__fail(err, GSINK_ERR_MISSING_TENSOR, "tensor '%.64s' listed in the index is in no shard",
                             wm->keys[k]);
    }
    gsink__json_free(j);
    return st;
}

static gsink_status fill_tensor(gsink_model *m, const st_set *s, const st_tensor *t, const char *name,
                                float **buf, size_t *cap, char *err)
{
    const uint8_t *src = s->files[t->shard].data + s->data_off[t->shard] + t->begin;
    if (t->dtype == ST_OTHER)
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "safetensors: tensor '%s' has dtype %s (F32, F16 or BF16 needed)",
                           name, t->dtype_name);
    /* A 16-bit tensor into storage of its own type: the bits, no fp32 copy.
     * Another pair converts in the bounded chunks of gsink__param_store. */
    const gsink_param_entry *e = gsink__find_param(m, name);
    int wd = t->dtype == ST_BF16 ? GSINK_WD_BF16 : t->dtype == ST_F16 ? GSINK_WD_F16 : GSINK_WD_F32;
    if (e && e->numel == t->numel && (e->dtype != GSINK_WD_F32 || wd != GSINK_WD_F32) &&
        ((uintptr_t)src % gsink__wd_size(wd)) == 0) {
        gsink_status st = gsink__param_store(m, e, src, wd);
        if (st) return gsink__fail(err, st, "safetensors: tensor '%s': %s", name, m->be->err);
        m->have_forward = m->have_backward = false;
        return GSINK_OK;
    }
    const float *data;
    if (t->dtype == ST_F32 && ((uintptr_t)src & 3) == 0) {
        data = (const float *)src;
    } else {
        if (t->numel > *cap) {
            free(*buf);
            *buf = malloc((t->numel ? t->numel : 1) * sizeof(float));
            *cap = *buf ? t->numel : 0;
            if (!*buf) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate %zu floats", t->numel);
        }
        float *b = *buf;
        if (t->dtype == ST_F32) memcpy(b, src, t->numel * 4);
        else if (t->dtype == ST_F16)
            for (size_t i = 0; i < t->numel; i++) b[i] = gsink__f16_to_f32(gsink__rd16(src + 2 * i));
        else
            for (size_t i = 0; i < t->numel; i++) b[i] = gsink__bf16_to_f32(gsink__rd16(src + 2 * i));
        data = b;
    }
    gsink_status st = gsink_set_param(m, name, data, t->numel);
    if (st) return gsink__refail(err, st, "safetensors");
    return GSINK_OK;
}

static int is_theta_name(const char *name)
{
    size_t l = strlen(name), k = strlen("v_scale_theta");
    return l >= k && strcmp(name + l - k, "v_scale_theta") == 0;
}

static gsink_status load_vscale(gsink_model *m, const gsink__json *cfgj, const st_set *s, char *err)
{
    const gsink__json *vj = gsink__json_get(cfgj, "gsink_vscale");
    if (!vj || vj->type == GSINK_JSON_NULL) return GSINK_OK;
    if (vj->type != GSINK_JSON_OBJECT)
        return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "config.json: gsink_vscale must be an object");
    gsink_vscale_options vo;
    gsink_vscale_options_init(&vo);
    const gsink__json *v;
    if ((v = gsink__json_get(vj, "mode")) && v->type == GSINK_JSON_NUMBER) vo.mode = (int32_t)v->number;
    if ((v = gsink__json_get(vj, "sigma")) && v->type == GSINK_JSON_NUMBER) vo.sigma = (float)v->number;
    if ((v = gsink__json_get(vj, "learnable_theta")) && v->type == GSINK_JSON_BOOL) vo.learnable_theta = v->boolean;
    if ((v = gsink__json_get(vj, "per_query_head")) && v->type == GSINK_JSON_BOOL) vo.per_query_head = v->boolean;
    if (vo.mode == GSINK_VSCALE_OFF) return GSINK_OK;
    gsink_status st = gsink_vscale_enable(m, &vo);
    if (st) return gsink__refail(err, st, "config.json gsink_vscale");
    size_t n = 0;
    gsink_vscale_theta_count(m, &n);
    gsink_config cfg;
    cfg.size = sizeof cfg;
    gsink_model_config(m, &cfg);
    if (n == 0 || cfg.n_layers <= 0) return GSINK_OK;
    size_t per = n / (size_t)cfg.n_layers;
    float *theta = malloc(n * sizeof(float));
    if (!theta) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    for (int l = 0; l < cfg.n_layers && !st; l++) {
        char name[96];
        snprintf(name, sizeof name, "model.layers.%d.self_attn.v_scale_theta", l);
        const st_tensor *t = st_find(s, name);
        if (!t) {
            st = gsink__fail(err, GSINK_ERR_MISSING_TENSOR, "safetensors: missing tensor '%s' (V-scale is on)", name);
        } else if (t->ndim != 1 || t->shape[0] != per) {
            st = gsink__fail(err, GSINK_ERR_SHAPE_MISMATCH, "safetensors: '%s' must have shape [%zu]", name, per);
        } else if (t->dtype != ST_F32) {
            st = gsink__fail(err, GSINK_ERR_UNSUPPORTED, "safetensors: '%s' must be F32", name);
        } else {
            memcpy(theta + (size_t)l * per, s->files[t->shard].data + s->data_off[t->shard] + t->begin, per * 4);
        }
    }
    if (!st && (st = gsink_vscale_set_theta(m, theta, n))) st = gsink__refail(err, st, "V-scale theta");
    free(theta);
    return st;
}

static gsink_status check_one(const st_tensor *t, const char *name, int ndim, const int64_t *dims, char *err)
{
    if (!t) return gsink__fail(err, GSINK_ERR_MISSING_TENSOR, "safetensors: missing tensor '%s'", name);
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == (uint64_t)dims[d];
    if (!ok) {
        char got[128] = "", *p = got;
        for (int d = 0; d < t->ndim && p < got + 100; d++)
            p += snprintf(p, 20, d ? ", %llu" : "%llu", (unsigned long long)t->shape[d]);
        return gsink__fail(err, GSINK_ERR_SHAPE_MISMATCH,
                           "safetensors: tensor '%s' has shape [%s], the config needs [%lld%s%lld]", name, got,
                           (long long)dims[0], ndim == 2 ? ", " : "", ndim == 2 ? (long long)dims[1] : 0LL);
    }
    if (t->dtype == ST_OTHER)
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                           "safetensors: tensor '%s' has dtype %s (F32, F16 or BF16 needed)", name, t->dtype_name);
    return GSINK_OK;
}

static gsink_status st_precheck(const gsink_config *cfg, const st_set *s, char *err)
{
    char name[96];
    int ndim;
    int64_t dims[2];
    for (size_t k = 0; gsink__param_spec(cfg, k, name, &ndim, dims); k++) {
        gsink_status st = check_one(st_find(s, name), name, ndim, dims, err);
        if (st) return st;
    }
    return GSINK_OK;
}

gsink_status gsink__st_load_dir(const char *dir, const char *weights_path,
                                const gsink_model_options *opts, gsink_model **out, char *err)
{
    *out = NULL;
    char *cpath = path_join(dir, "config.json");
    if (!cpath) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    gsink__json *cj = NULL;
    gsink_status st = read_json_file(cpath, &cj, err);
    free(cpath);
    if (st) return st;
    gsink_config cfg;
    int tie_flag = 0;
    st_set s;
    memset(&s, 0, sizeof s);
    gsink_model *m = NULL;
    float *buf = NULL;
    size_t cap = 0;
    if ((st = parse_config(cj, &cfg, &tie_flag, err))) goto done;
    if ((st = open_shards(dir, weights_path, &s, err))) goto done;
    cfg.tie_embeddings = tie_flag || st_find(&s, "lm_head.weight") == NULL;
    if ((st = gsink_config_validate(&cfg))) {
        st = gsink__refail(err, st, "config.json");
        goto done;
    }
    /* Every tensor's presence, shape and dtype before the model (whose size
     * the config alone decides) is allocated. */
    if ((st = st_precheck(&cfg, &s, err))) goto done;
    char merr[GSINK_MSG_SIZE] = "";
    if ((st = gsink__model_alloc(&cfg, opts, &m, merr))) {
        st = gsink__refail(err, st, "safetensors");
        goto done;
    }
    size_t count = 0;
    gsink_param_count(m, &count);
    for (size_t k = 0; k < count && !st; k++) {
        const char *name;
        int ndim;
        int64_t dims[2];
        if ((st = gsink_param_info(m, k, &name, &ndim, dims))) {
            st = gsink__refail(err, st, "safetensors");
            break;
        }
        if (is_theta_name(name)) continue;
        const st_tensor *t = st_find(&s, name);
        if ((st = check_one(t, name, ndim, dims, err))) break;
        st = fill_tensor(m, &s, t, name, &buf, &cap, err);
    }
    if (!st) st = load_vscale(m, cj, &s, err);
done:
    free(buf);
    st_set_free(&s);
    gsink__json_free(cj);
    if (st) {
        gsink_model_free(m);
        return st;
    }
    *out = m;
    return GSINK_OK;
}

/* ---- saving -------------------------------------------------------------- */

typedef struct sbuf { char *p; size_t n, cap; int oom; } sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...)
{
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (w < 0) { b->oom = 1; return; }
        if (b->p && (size_t)w < b->cap - b->n) { b->n += (size_t)w; return; }
        size_t nc = (b->cap ? b->cap : 256);
        while (nc < b->n + (size_t)w + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) { b->oom = 1; return; }
        b->p = np;
        b->cap = nc;
    }
}

/* HF-compatible config.json (transformers' LlamaConfig keys). */
static void write_config_json(sbuf *b, const gsink_config *c, const gsink_vscale_options *vo, const char *torch_dtype)
{
    sb_add(b, "{\n");
    const gsink_arch_info *arch = gsink__arch(c->arch);
    if (!arch) arch = gsink__arch(GSINK_ARCH_LLAMA);
    sb_add(b, "  \"architectures\": [\"%s\"],\n", arch->hf_class);
    sb_add(b, "  \"model_type\": \"%s\",\n", arch->model_type);
    sb_add(b, "  \"vocab_size\": %d,\n", c->vocab_size);
    sb_add(b, "  \"hidden_size\": %d,\n", c->d_model);
    sb_add(b, "  \"intermediate_size\": %d,\n", c->d_ff);
    sb_add(b, "  \"num_hidden_layers\": %d,\n", c->n_layers);
    sb_add(b, "  \"num_attention_heads\": %d,\n", c->n_heads);
    sb_add(b, "  \"num_key_value_heads\": %d,\n", c->n_kv_heads);
    sb_add(b, "  \"head_dim\": %d,\n", c->d_head);
    sb_add(b, "  \"max_position_embeddings\": %d,\n", c->max_seq_len);
    sb_add(b, "  \"rms_norm_eps\": %.9g,\n", (double)c->rms_eps);
    sb_add(b, "  \"rope_theta\": %.9g,\n", (double)c->rope_theta);
    switch (c->rope_scaling) {
    case GSINK_ROPE_LINEAR:
        sb_add(b, "  \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": %.9g},\n", (double)c->rope_factor);
        break;
    case GSINK_ROPE_LLAMA3:
        sb_add(b, "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %.9g, \"low_freq_factor\": %.9g, "
                  "\"high_freq_factor\": %.9g, \"original_max_position_embeddings\": %d},\n",
               (double)c->rope_factor, (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor,
               c->rope_original_max_pos);
        break;
    case GSINK_ROPE_YARN:
        sb_add(b, "  \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": %.9g, \"beta_fast\": %.9g, "
                  "\"beta_slow\": %.9g, \"truncate\": %s",
               (double)c->rope_factor, (double)c->rope_beta_fast, (double)c->rope_beta_slow,
               c->rope_truncate ? "true" : "false");
        if (c->rope_original_max_pos > 0)
            sb_add(b, ", \"original_max_position_embeddings\": %d", c->rope_original_max_pos);
        if (c->rope_attention_factor > 0.0f)
            sb_add(b, ", \"attention_factor\": %.9g", (double)c->rope_attention_factor);
        sb_add(b, "},\n");
        break;
    default:
        sb_add(b, "  \"rope_scaling\": null,\n");
        break;
    }
    if (c->arch == GSINK_ARCH_MISTRAL) {
        if (c->sliding_window > 0)
            sb_add(b, "  \"sliding_window\": %d,\n", c->sliding_window);
        else
            sb_add(b, "  \"sliding_window\": null,\n");
    } else if (c->arch == GSINK_ARCH_QWEN2) {
        if (c->sliding_window > 0)
            sb_add(b, "  \"use_sliding_window\": true, \"sliding_window\": %d, \"max_window_layers\": 0,\n",
                   c->sliding_window);
        else
            sb_add(b, "  \"use_sliding_window\": false, \"sliding_window\": null,\n");
    }
    sb_add(b, "  \"initializer_range\": %.9g,\n", (double)c->init_std);
    sb_add(b, "  \"tie_word_embeddings\": %s,\n", c->tie_embeddings ? "true" : "false");
    sb_add(b, "  \"hidden_act\": \"silu\",\n");
    sb_add(b, "  \"attention_bias\": %s,\n", c->qkv_bias ? "true" : "false");
    if (arch->rope_partial > 0.0f || (c->rope_dims > 0 && c->rope_dims < c->d_head))
        sb_add(b, "  \"partial_rotary_factor\": %.9g,\n", (double)gsink__rope_dims(c) / c->d_head);
    sb_add(b, "  \"attention_dropout\": 0.0,\n");
    sb_add(b, "  \"mlp_bias\": false,\n");
    sb_add(b, "  \"pretraining_tp\": 1,\n");
    sb_add(b, "  \"use_cache\": true,\n");
    sb_add(b, "  \"torch_dtype\": \"%s\",\n", torch_dtype);
    if (vo && vo->mode != GSINK_VSCALE_OFF)
        sb_add(b, "  \"gsink_vscale\": {\"mode\": %d, \"sigma\": %.9g, \"learnable_theta\": %s, "
                  "\"per_query_head\": %s},\n",
               vo->mode, (double)vo->sigma, vo->learnable_theta ? "true" : "false",
               vo->per_query_head ? "true" : "false");
    sb_add(b, "  \"transformers_version\": \"4.40.0\",\n");
    sb_add(b, "  \"gsink_version\": \"%s\"\n", GSINK_VERSION_STRING);
    sb_add(b, "}\n");
}

typedef struct save_item {
    const char *name;
    char own[96];
    int ndim;
    int64_t dims[2];
    size_t numel;
    int theta_layer;
    const gsink_param_entry *e; /* registry entry (NULL for theta): written in its storage type */
} save_item;

gsink_status gsink_model_save(gsink_model *model, const char *dir)
{
    if (!model) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "model is NULL");
    GSINK_USE(model, "model");
    gsink__clear(model->errmsg);
    char *err = model->errmsg;
    if (!dir || !dir[0]) return gsink__fail(err, GSINK_ERR_NULL_ARGUMENT, "dir is NULL or empty");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return gsink__fail(err, GSINK_ERR_IO, "cannot create directory '%s': %s", dir, strerror(errno));
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return gsink__fail(err, GSINK_ERR_IO, "'%s' is not a directory", dir);

    gsink_config cfg;
    cfg.size = sizeof cfg;
    gsink_status st = gsink_model_config(model, &cfg);
    if (st) return st;
    /* config.json carries these flags only through model_type (HF has no key for them) */
    const gsink_arch_info *row = gsink__arch(cfg.arch);
    if (row && (cfg.qk_norm != row->qk_norm || cfg.rope_interleaved != row->rope_interleaved ||
                cfg.sandwich_norm != row->sandwich_norm))
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                           "qk_norm=%d rope_interleaved=%d sandwich_norm=%d differ from architecture '%s' "
                           "(%d, %d, %d): HF could not load the checkpoint; set arch to the matching row",
                           cfg.qk_norm, cfg.rope_interleaved, cfg.sandwich_norm, row->model_type, row->qk_norm,
                           row->rope_interleaved, row->sandwich_norm);
    gsink_vscale_options vo;
    gsink_vscale_options_init(&vo);
    vo.mode = GSINK_VSCALE_OFF;
    size_t n_theta = 0;
    if (gsink_vscale_get(model, &vo) != GSINK_OK) vo.mode = GSINK_VSCALE_OFF;
    if (vo.mode != GSINK_VSCALE_OFF) gsink_vscale_theta_count(model, &n_theta);

    size_t count = 0;
    if ((st = gsink_param_count(model, &count))) return st;
    save_item *items = calloc(count + (size_t)cfg.n_layers + 1, sizeof *items);
    if (!items) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    size_t ni = 0;
    for (size_t k = 0; k < count; k++) {
        save_item *it = &items[ni];
        if ((st = gsink_param_info(model, k, &it->name, &it->ndim, it->dims))) goto fail_items;
        if (is_theta_name(it->name)) continue;
        it->numel = (size_t)it->dims[0] * (it->ndim == 2 ? (size_t)it->dims[1] : 1);
        it->theta_layer = -1;
        it->e = gsink__find_param(model, it->name);
        ni++;
    }
    if (n_theta && cfg.n_layers > 0) {
        size_t per = n_theta / (size_t)cfg.n_layers;
        for (int l = 0; l < cfg.n_layers; l++) {
            save_item *it = &items[ni++];
            snprintf(it->own, sizeof it->own, "model.layers.%d.self_attn.v_scale_theta", l);
            it->name = it->own;
            it->ndim = 1;
            it->dims[0] = (int64_t)per;
            it->numel = per;
            it->theta_layer = l;
        }
    }

    /* Header: offsets are contiguous in registry order. */
    sbuf h = {0};
    /* The checksum's digits are written once the data has been hashed. */
    sb_add(&h, "{\"__metadata__\":{\"format\":\"pt\",\"" ST_CHECKSUM_KEY "\":\"" ST_CHECKSUM_ALG);
    size_t sum_pos = h.n;
    sb_add(&h, "0000000000000000\"}");
    size_t off = 0, maxn = 0;
    for (size_t k = 0; k < ni; k++) {
        save_item *it = &items[k];
        int dt = it->e ? it->e->dtype : GSINK_WD_F32;
        size_t nb = it->numel * gsink__wd_size(dt);
        const char *dname = dt == GSINK_WD_BF16 ? "BF16" : dt == GSINK_WD_F16 ? "F16" : "F32";
        if (it->ndim == 2)
            sb_add(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%zu,%zu]}", it->name,
                   dname, (long long)it->dims[0], (long long)it->dims[1], off, off + nb);
        else
            sb_add(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%zu,%zu]}", it->name,
                   dname, (long long)it->dims[0], off, off + nb);
        off += nb;
        if (it->numel > maxn) maxn = it->numel;
    }
    sb_add(&h, "}");
    while (!h.oom && (h.n + 8) % 8 != 0) sb_add(&h, " ");
    sbuf cj = {0};
    write_config_json(&cj, &cfg, n_theta ? &vo : NULL,
                      model->wdtype == GSINK_WD_BF16 ? "bfloat16" : model->wdtype == GSINK_WD_F16 ? "float16" : "float32");
    float *buf = malloc((maxn ? maxn : 1) * sizeof(float));
    float *theta = n_theta ? malloc(n_theta * sizeof(float)) : NULL;
    char *wpath = path_join(dir, "model.safetensors"), *cpath = path_join(dir, "config.json");
    if (h.oom || cj.oom || !buf || (n_theta && !theta) || !wpath || !cpath) {
        st = gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory while saving");
        goto fail_all;
    }
    if (n_theta && (st = gsink_vscale_get_theta(model, theta, n_theta))) goto fail_all;

    gsink__afile af;
    if ((st = gsink__afile_open(&af, wpath, err))) goto fail_all;
    uint8_t len8[8];
    for (int b = 0; b < 8; b++) len8[b] = (uint8_t)((uint64_t)h.n >> (8 * b));
    st = gsink__afile_write(&af, len8, 8, err);
    if (!st) st = gsink__afile_write(&af, h.p, h.n, err);
    uint64_t sum = GSINK_FNV1A64_INIT;
    for (size_t k = 0; k < ni && !st; k++) {
        save_item *it = &items[k];
        const void *src;
        size_t nb = it->numel * 4;
        if (it->theta_layer >= 0) {
            src = theta + (size_t)it->theta_layer * it->numel;
        } else if (it->e) { /* the stored bits, 16-bit weights included */
            nb = it->numel * gsink__wd_size(it->e->dtype);
            if ((st = gsink__param_fetch(model, it->e, buf, it->e->dtype))) {
                st = gsink__fail(err, st, "cannot read parameter '%s': %s", it->name, model->be->err);
                break;
            }
            src = buf;
        } else {
            if ((st = gsink_get_param(model, it->name, buf, it->numel))) break;
            src = buf;
        }
        sum = gsink__fnv1a64(sum, src, nb);
        st = gsink__afile_write(&af, src, nb, err); /* little-endian host */
    }
    if (!st) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)sum);
        st = gsink__afile_pwrite(&af, hex, 16, 8 + sum_pos, err);
    }
    if (st) {
        gsink__afile_abort(&af);
        goto fail_all;
    }
    if ((st = gsink__afile_commit(&af, err))) goto fail_all;
    st = gsink__write_atomic(cpath, cj.p, cj.n, err);
fail_all:
    free(buf);
    free(theta);
    free(wpath);
    free(cpath);
    free(h.p);
    free(cj.p);
fail_items:
    free(items);
    return st;
}
