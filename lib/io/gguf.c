/* gguf.c - GGUF (v2/v3) reader: header, metadata, tensor infos, and the
 * model loader for llama.cpp's llama, qwen2, qwen3 and glm4 architectures.
 * Every length and offset read from the file is checked against the bytes
 * that remain before it is used. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_internal.h"
#include "wdtype.h"

/* A GGUF tensor larger than this many elements is dequantised in chunks of
 * whole rows of about this size (4 MiB of fp32). */
#define GGUF_CHUNK ((size_t)1 << 20)

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_ARRAY_DEPTH 4

typedef struct rd {
    const uint8_t *p;
    size_t n, i;
    char *err;
} rd;

static gsink_status need(rd *r, size_t k, const char *what)
{
    if (r->n - r->i < k)
        return gsink__fail(r->err, GSINK_ERR_FORMAT,
                           "GGUF: truncated file: %s needs %zu bytes at offset %zu, %zu left", what,
                           k, r->i, r->n - r->i);
    return GSINK_OK;
}

static gsink_status rd_u32(rd *r, uint32_t *v, const char *what)
{
    gsink_status st = need(r, 4, what);
    if (st) return st;
    *v = gsink__rd32(r->p + r->i);
    r->i += 4;
    return GSINK_OK;
}

static gsink_status rd_u64(rd *r, uint64_t *v, const char *what)
{
    gsink_status st = need(r, 8, what);
    if (st) return st;
    *v = gsink__rd64(r->p + r->i);
    r->i += 8;
    return GSINK_OK;
}

static gsink_status rd_str(rd *r, gsink__gguf_str *s, const char *what)
{
    uint64_t len;
    gsink_status st = rd_u64(r, &len, what);
    if (st) return st;
    if (len > r->n - r->i)
        return gsink__fail(r->err, GSINK_ERR_FORMAT,
                           "GGUF: %s length %llu at offset %zu runs past the end of the file", what,
                           (unsigned long long)len, r->i - 8);
    s->ptr = (const char *)(r->p + r->i);
    s->len = len;
    r->i += (size_t)len;
    return GSINK_OK;
}

static size_t scalar_size(uint32_t t)
{
    switch (t) {
    case GSINK_GGUF_UINT8: case GSINK_GGUF_INT8: case GSINK_GGUF_BOOL: return 1;
    case GSINK_GGUF_UINT16: case GSINK_GGUF_INT16: return 2;
    case GSINK_GGUF_UINT32: case GSINK_GGUF_INT32: case GSINK_GGUF_FLOAT32: return 4;
    case GSINK_GGUF_UINT64: case GSINK_GGUF_INT64: case GSINK_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Skips an array body (after its type and count), validating every element. */
static gsink_status skip_array(rd *r, uint32_t et, uint64_t n, int depth)
{
    if (depth > GGUF_MAX_ARRAY_DEPTH)
        return gsink__fail(r->err, GSINK_ERR_FORMAT, "GGUF: arrays nested too deeply");
    size_t es = scalar_size(et);
    if (es) {
        if (n > (r->n - r->i) / es)
            return gsink__fail(r->err, GSINK_ERR_FORMAT,
                               "GGUF: array of %llu elements at offset %zu runs past the end of the file",
                               (unsigned long long)n, r->i);
        r->i += (size_t)n * es;
        return GSINK_OK;
    }
    if (et == GSINK_GGUF_STRING) {
        if (n > (r->n - r->i) / 8)
            return gsink__fail(r->err, GSINK_ERR_FORMAT,
                               "GGUF: string array of %llu elements at offset %zu cannot fit in the file",
                               (unsigned long long)n, r->i);
        for (uint64_t k = 0; k < n; k++) {
            gsink__gguf_str s;
            gsink_status st = rd_str(r, &s, "array string");
            if (st) return st;
        }
        return GSINK_OK;
    }
    if (et == GSINK_GGUF_ARRAY) {
        if (n > (r->n - r->i) / 12)
            return gsink__fail(r->err, GSINK_ERR_FORMAT,
                               "GGUF: nested array count %llu cannot fit in the file",
                               (unsigned long long)n);
        for (uint64_t k = 0; k < n; k++) {
            uint32_t t2;
            uint64_t n2;
            gsink_status st = rd_u32(r, &t2, "array type");
            if (!st) st = rd_u64(r, &n2, "array count");
            if (!st) st = skip_array(r, t2, n2, depth + 1);
            if (st) return st;
        }
        return GSINK_OK;
    }
    return gsink__fail(r->err, GSINK_ERR_FORMAT, "GGUF: unknown metadata value type %u", et);
}

static int str_eq(gsink__gguf_str s, const char *c)
{
    size_t l = strlen(c);
    return s.len == l && memcmp(s.ptr, c, l) == 0;
}

static gsink_status read_kv(rd *r, gsink__gguf_kv *kv)
{
    gsink_status st = rd_str(r, &kv->key, "metadata key");
    if (!st) st = rd_u32(r, &kv->type, "metadata type");
    if (st) return st;
    const uint8_t *v = r->p + r->i;
    size_t es = scalar_size(kv->type);
    if (es) {
        if ((st = need(r, es, "metadata value"))) return st;
        switch (kv->type) {
        case GSINK_GGUF_UINT8: kv->u = v[0]; kv->i = v[0]; break;
        case GSINK_GGUF_BOOL: kv->u = v[0] != 0; kv->i = v[0] != 0; break;
        case GSINK_GGUF_INT8: kv->i = (int8_t)v[0]; kv->u = (uint64_t)kv->i; break;
        case GSINK_GGUF_UINT16: kv->u = gsink__rd16(v); kv->i = (int64_t)kv->u; break;
        case GSINK_GGUF_INT16: kv->i = (int16_t)gsink__rd16(v); kv->u = (uint64_t)kv->i; break;
        case GSINK_GGUF_UINT32: kv->u = gsink__rd32(v); kv->i = (int64_t)kv->u; break;
        case GSINK_GGUF_INT32: kv->i = (int32_t)gsink__rd32(v); kv->u = (uint64_t)kv->i; break;
        case GSINK_GGUF_UINT64: kv->u = gsink__rd64(v); kv->i = (int64_t)kv->u; break;
        case GSINK_GGUF_INT64: kv->i = (int64_t)gsink__rd64(v); kv->u = (uint64_t)kv->i; break;
        case GSINK_GGUF_FLOAT32: { uint32_t b = gsink__rd32(v); float f; memcpy(&f, &b, 4); kv->f = f; break; }
        case GSINK_GGUF_FLOAT64: { uint64_t b = gsink__rd64(v); memcpy(&kv->f, &b, 8); break; }
        default: break;
        }
        if (kv->type != GSINK_GGUF_FLOAT32 && kv->type != GSINK_GGUF_FLOAT64) kv->f = (double)kv->i;
        r->i += es;
        return GSINK_OK;
    }
    if (kv->type == GSINK_GGUF_STRING) return rd_str(r, &kv->s, "metadata string");
    if (kv->type == GSINK_GGUF_ARRAY) {
        if ((st = rd_u32(r, &kv->arr_type, "array type"))) return st;
        if ((st = rd_u64(r, &kv->arr_n, "array count"))) return st;
        kv->arr_off = r->i;
        return skip_array(r, kv->arr_type, kv->arr_n, 0);
    }
    return gsink__fail(r->err, GSINK_ERR_FORMAT, "GGUF: metadata '%.*s' has unknown type %u",
                       (int)(kv->key.len > 64 ? 64 : kv->key.len), kv->key.ptr, kv->type);
}

/* Byte-wise order of two counted strings (a prefix sorts first). */
static int str_cmp(gsink__gguf_str a, gsink__gguf_str b)
{
    size_t n = a.len < b.len ? (size_t)a.len : (size_t)b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c) return c;
    return (a.len > b.len) - (a.len < b.len);
}

/* A name index: the positions of an array's entries sorted by a string
 * member (GGUF metadata keys, tensor names). Built in O(n log n); finds
 * duplicates (adjacent after sorting) and serves binary-search lookups. */
typedef struct name_col {
    const char *base;  /* the array */
    size_t stride;     /* sizeof an entry */
    size_t off;        /* offsetof the gsink__gguf_str member */
} name_col;

static gsink__gguf_str name_at(const name_col *c, size_t i)
{
    return *(const gsink__gguf_str *)(const void *)(c->base + i * c->stride + c->off);
}

static int cmp_name_pos(const void *a, const void *b, void *ctx)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = str_cmp(name_at(ctx, x), name_at(ctx, y));
    return c ? c : (x > y) - (x < y);
}

/* *idx: the n positions sorted by name (malloc'd; NULL when out of memory:
 * returns false). *dup: the position of a name given twice, else SIZE_MAX. */
static bool name_index(name_col c, size_t n, size_t **idx, size_t *dup)
{
    *dup = SIZE_MAX;
    *idx = malloc((n ? n : 1) * sizeof **idx);
    if (!*idx) return false;
    for (size_t k = 0; k < n; k++) (*idx)[k] = k;
    qsort_r(*idx, n, sizeof **idx, cmp_name_pos, &c);
    for (size_t k = 1; k < n && *dup == SIZE_MAX; k++)
        if (str_cmp(name_at(&c, (*idx)[k - 1]), name_at(&c, (*idx)[k])) == 0) *dup = (*idx)[k];
    return true;
}

/* The position named `name` through the index, or SIZE_MAX. */
static size_t name_find(name_col c, const size_t *idx, size_t n, const char *name)
{
    gsink__gguf_str want = {name, strlen(name)};
    size_t lo = 0, hi = idx ? n : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = str_cmp(name_at(&c, idx[mid]), want);
        if (r == 0) return idx[mid];
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return SIZE_MAX;
}

#define KV_NAMES(g) ((name_col){(const char *)(g)->kv, sizeof *(g)->kv, offsetof(gsink__gguf_kv, key)})
#define TENSOR_NAMES(g) \
    ((name_col){(const char *)(g)->tensors, sizeof *(g)->tensors, offsetof(gsink__gguf_tensor, name)})

static int cmp_off(const void *a, const void *b)
{
    const gsink__gguf_tensor *x = *(const gsink__gguf_tensor *const *)a;
    const gsink__gguf_tensor *y = *(const gsink__gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static gsink_status parse(const uint8_t *data, size_t size, gsink__gguf *g, char *err)
{
    rd r = {data, size, 0, err};
    gsink_status st;
    if (size < 4 || memcmp(data, "GGUF", 4) != 0)
        return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: wrong magic (not a GGUF file)");
    r.i = 4;
    if ((st = rd_u32(&r, &g->version, "version"))) return st;
    if (g->version != 2 && g->version != 3)
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: version %u is not supported (2 or 3)",
                           g->version);
    if ((st = rd_u64(&r, &g->n_tensors, "tensor count"))) return st;
    if ((st = rd_u64(&r, &g->n_kv, "metadata count"))) return st;
    /* Minimal encoded sizes: a KV is at least 13 bytes, a tensor info 32. */
    if (g->n_kv > (size - r.i) / 13)
        return gsink__fail(err, GSINK_ERR_FORMAT,
                           "GGUF: metadata count %llu cannot fit in a %zu-byte file",
                           (unsigned long long)g->n_kv, size);
    if (g->n_tensors > (size - r.i) / 32)
        return gsink__fail(err, GSINK_ERR_FORMAT,
                           "GGUF: tensor count %llu cannot fit in a %zu-byte file",
                           (unsigned long long)g->n_tensors, size);
    g->kv = calloc(g->n_kv ? (size_t)g->n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "GGUF: out of memory");
    for (uint64_t k = 0; k < g->n_kv; k++)
        if ((st = read_kv(&r, &g->kv[k]))) return st;
    /* Sorted key index: duplicates are refused (as llama.cpp does) and
     * lookups are binary searches, O(n log n) in all. */
    size_t dup;
    if (!name_index(KV_NAMES(g), (size_t)g->n_kv, &g->kv_by_key, &dup))
        return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "GGUF: out of memory");
    if (dup != SIZE_MAX) {
        const gsink__gguf_str *b = &g->kv[dup].key;
        return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: duplicate metadata key '%.*s'",
                           (int)(b->len > 64 ? 64 : b->len), b->ptr);
    }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gsink__gguf_kv *al = gsink__gguf_find(g, "general.alignment");
    if (al) {
        if (al->type != GSINK_GGUF_UINT32 || al->u == 0 || (al->u & (al->u - 1)) != 0 ||
            al->u > (1u << 20))
            return gsink__fail(err, GSINK_ERR_FORMAT,
                               "GGUF: general.alignment must be a power-of-two uint32 (got %llu)",
                               (unsigned long long)al->u);
        g->alignment = (size_t)al->u;
    }

    for (uint64_t k = 0; k < g->n_tensors; k++) {
        gsink__gguf_tensor *t = &g->tensors[k];
        if ((st = rd_str(&r, &t->name, "tensor name"))) return st;
        if ((st = rd_u32(&r, &t->n_dims, "tensor dimension count"))) return st;
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
            return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: tensor '%.*s' has %u dimensions (1..4)",
                               (int)(t->name.len > 64 ? 64 : t->name.len), t->name.ptr, t->n_dims);
        for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            if ((st = rd_u64(&r, &t->ne[d], "tensor dimension"))) return st;
        if ((st = rd_u32(&r, &t->type, "tensor type"))) return st;
        if ((st = rd_u64(&r, &t->offset, "tensor offset"))) return st;
    }
    size_t pos = r.i;
    size_t pad = (g->alignment - pos % g->alignment) % g->alignment;
    if (pad > size - pos)
        return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: truncated file: no room for the data section");
    g->data_off = pos + pad;
    size_t data_size = size - g->data_off;

    /* Sorted name index: duplicates refused, binary-search lookups. */
    if (!name_index(TENSOR_NAMES(g), (size_t)g->n_tensors, &g->t_by_name, &dup))
        return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "GGUF: out of memory");
    if (dup != SIZE_MAX) {
        const gsink__gguf_str *b = &g->tensors[dup].name;
        return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: duplicate tensor '%.*s'",
                           (int)(b->len > 64 ? 64 : b->len), b->ptr);
    }

    /* Sizes, bounds, alignment and overlaps of the tensor data. */
    gsink__gguf_tensor **ord = malloc((g->n_tensors ? (size_t)g->n_tensors : 1) * sizeof *ord);
    if (!ord) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "GGUF: out of memory");
    size_t n_known = 0;
    for (uint64_t k = 0; k < g->n_tensors; k++) {
        gsink__gguf_tensor *t = &g->tensors[k];
        const int nl = (int)(t->name.len > 64 ? 64 : t->name.len);
        size_t numel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
            if (t->ne[d] > SIZE_MAX || !gsink__mul_size(numel, (size_t)t->ne[d], &numel)) {
                free(ord);
                return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: tensor '%.*s' element count overflows",
                                   nl, t->name.ptr);
            }
        }
        t->numel = numel;
        size_t be, bb;
        if (!gsink__ggml_block(t->type, &be, &bb)) {
            t->nbytes = 0; /* unknown type: never read; rejected by users of the tensor */
            continue;
        }
        if (t->ne[0] % be != 0) {
            free(ord);
            return gsink__fail(err, GSINK_ERR_FORMAT,
                               "GGUF: tensor '%.*s' row length %llu is not a multiple of the %s block size %zu",
                               nl, t->name.ptr, (unsigned long long)t->ne[0],
                               gsink__ggml_type_name(t->type), be);
        }
        if (!gsink__mul_size(numel / be, bb, &t->nbytes)) {
            free(ord);
            return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: tensor '%.*s' byte size overflows", nl,
                               t->name.ptr);
        }
        if (t->offset % g->alignment != 0) {
            free(ord);
            return gsink__fail(err, GSINK_ERR_FORMAT,
                               "GGUF: tensor '%.*s' offset %llu is not aligned to %zu", nl, t->name.ptr,
                               (unsigned long long)t->offset, g->alignment);
        }
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            free(ord);
            return gsink__fail(err, GSINK_ERR_FORMAT,
                               "GGUF: tensor '%.*s' data [%llu, +%zu) lies outside the %zu-byte data section",
                               nl, t->name.ptr, (unsigned long long)t->offset, t->nbytes, data_size);
        }
        if (t->nbytes) ord[n_known++] = t; /* empty tensors share no bytes with anything */
    }
    qsort(ord, n_known, sizeof *ord, cmp_off);
    for (size_t k = 1; k < n_known; k++) {
        if (ord[k]->offset < ord[k - 1]->offset + ord[k - 1]->nbytes) {
            gsink_status s2 = gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: tensors '%.*s' and '%.*s' overlap",
                                          (int)(ord[k - 1]->name.len > 64 ? 64 : ord[k - 1]->name.len),
                                          ord[k - 1]->name.ptr,
                                          (int)(ord[k]->name.len > 64 ? 64 : ord[k]->name.len),
                                          ord[k]->name.ptr);
            free(ord);
            return s2;
        }
    }
    free(ord);
    return GSINK_OK;
}

gsink_status gsink__gguf_parse(const uint8_t *data, size_t size, gsink__gguf *g, char *err)
{
    memset(g, 0, sizeof *g);
    gsink_status st = parse(data, size, g, err);
    if (st) {
        free(g->kv);
        free(g->tensors);
        free(g->kv_by_key);
        free(g->t_by_name);
        g->kv = NULL;
        g->tensors = NULL;
        g->kv_by_key = g->t_by_name = NULL;
    }
    return st;
}

gsink_status gsink__gguf_open(const char *path, gsink__gguf *g, char *err)
{
    memset(g, 0, sizeof *g);
    gsink__file f;
    gsink_status st = gsink__file_open(path, &f, err);
    if (st) return st;
    st = gsink__gguf_parse(f.data, f.size, g, err);
    if (st) {
        gsink__file_close(&f);
        return st;
    }
    g->file = f;
    return GSINK_OK;
}

void gsink__gguf_close(gsink__gguf *g)
{
    if (!g) return;
    free(g->kv);
    free(g->tensors);
    free(g->kv_by_key);
    free(g->t_by_name);
    gsink__file_close(&g->file);
    memset(g, 0, sizeof *g);
}

const gsink__gguf_kv *gsink__gguf_find(const gsink__gguf *g, const char *key)
{
    if (!g->kv_by_key) { /* before the index is built (a failed parse) */
        for (uint64_t k = 0; k < g->n_kv; k++)
            if (str_eq(g->kv[k].key, key)) return &g->kv[k];
        return NULL;
    }
    size_t k = name_find(KV_NAMES(g), g->kv_by_key, (size_t)g->n_kv, key);
    return k == SIZE_MAX ? NULL : &g->kv[k];
}

const gsink__gguf_tensor *gsink__gguf_find_tensor(const gsink__gguf *g, const char *name)
{
    size_t k = name_find(TENSOR_NAMES(g), g->t_by_name, (size_t)g->n_tensors, name);
    return k == SIZE_MAX ? NULL : &g->tensors[k];
}

gsink__gguf_str gsink__gguf_next_str(const gsink__gguf *g, size_t *cursor)
{
    gsink__gguf_str s;
    uint64_t len = gsink__rd64(g->file.data + *cursor);
    s.ptr = (const char *)(g->file.data + *cursor + 8);
    s.len = len;
    *cursor += 8 + (size_t)len;
    return s;
}

/* ---- model loader ---------------------------------------------------------- */

/* llama.cpp architectures (general.architecture) the loader maps onto rows of
 * the architecture table. Tensor names follow llama.cpp (gguf-py
 * constants.py); only the llama family has its Q/K rows permuted by the
 * converter (LlamaModel.permute); qwen2 keeps HF's order and adds the
 * blk.N.attn_{q,k,v}.bias tensors; qwen3 keeps HF's order (NEOX RoPE in
 * llama.cpp) and adds blk.N.attn_{q,k}_norm (d_head gains; key_length is the
 * head size); glm4 keeps HF's order too (Glm4Model: no permutation; llama.cpp
 * runs it with NORM RoPE, i.e. HF's interleaved pairs, on the first
 * rope.dimension_count dims of each head), with biases, the fused
 * gate_up_proj as blk.N.ffn_up ([d, 2*d_ff]: gate rows first, as HF and
 * ggml's swiglu split it) and the sandwich norms blk.N.post_attention_norm
 * (post_self_attn_layernorm) and blk.N.post_ffw_norm (post_mlp_layernorm). */
typedef struct gguf_arch {
    const char *name;
    int arch;       /* gsink_arch */
    int permute_qk; /* undo LlamaModel.permute on attn_q / attn_k */
} gguf_arch;

static const gguf_arch gguf_archs[] = {
    {"llama", GSINK_ARCH_LLAMA, 1},
    {"qwen2", GSINK_ARCH_QWEN2, 0},
    {"qwen3", GSINK_ARCH_QWEN3, 0},
    {"glm4", GSINK_ARCH_GLM4, 0},
};
#define GGUF_ARCH_LIST "llama, qwen2, qwen3, glm4"


static int kv_int(const gsink__gguf *g, const char *key, int64_t *out)
{
    const gsink__gguf_kv *kv = gsink__gguf_find(g, key);
    if (!kv || !scalar_size(kv->type) || kv->type == GSINK_GGUF_FLOAT32 || kv->type == GSINK_GGUF_FLOAT64)
        return 0;
    *out = kv->i;
    return 1;
}

static int kv_float(const gsink__gguf *g, const char *key, double *out)
{
    const gsink__gguf_kv *kv = gsink__gguf_find(g, key);
    if (!kv || !scalar_size(kv->type) || kv->type == GSINK_GGUF_BOOL) return 0;
    *out = kv->f;
    return 1;
}

static gsink_status cfg_int(const gsink__gguf *g, const char *key, int required, int32_t *dst,
                            char *err)
{
    int64_t v;
    if (!kv_int(g, key, &v)) {
        if (required)
            return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: missing integer metadata '%s'", key);
        return GSINK_OK;
    }
    if (v <= 0 || v > INT32_MAX)
        return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "GGUF: metadata '%s' = %lld is out of range",
                           key, (long long)v);
    *dst = (int32_t)v;
    return GSINK_OK;
}

/* Maps an HF parameter name to its GGUF tensor name; returns 0 if unknown. */
static int gguf_name(const char *hf, char *out, size_t n, int permute_qk, int *permute_heads_kind)
{
    *permute_heads_kind = 0;
    if (strcmp(hf, "model.embed_tokens.weight") == 0) { snprintf(out, n, "token_embd.weight"); return 1; }
    if (strcmp(hf, "model.norm.weight") == 0) { snprintf(out, n, "output_norm.weight"); return 1; }
    if (strcmp(hf, "lm_head.weight") == 0) { snprintf(out, n, "output.weight"); return 1; }
    int l, used = 0;
    char rest[96];
    if (sscanf(hf, "model.layers.%d.%95s%n", &l, rest, &used) != 2) return 0;
    static const struct { const char *hf, *gg; int perm; } map[] = {
        {"input_layernorm.weight", "attn_norm.weight", 0},
        {"self_attn.q_proj.weight", "attn_q.weight", 1},
        {"self_attn.k_proj.weight", "attn_k.weight", 2},
        {"self_attn.v_proj.weight", "attn_v.weight", 0},
        {"self_attn.o_proj.weight", "attn_output.weight", 0},
        {"post_attention_layernorm.weight", "ffn_norm.weight", 0},
        {"mlp.gate_proj.weight", "ffn_gate.weight", 0},
        {"mlp.up_proj.weight", "ffn_up.weight", 0},
        {"mlp.down_proj.weight", "ffn_down.weight", 0},
        {"self_attn.q_proj.bias", "attn_q.bias", 0}, /* qwen2 */
        {"self_attn.k_proj.bias", "attn_k.bias", 0},
        {"self_attn.v_proj.bias", "attn_v.bias", 0},
        {"self_attn.q_norm.weight", "attn_q_norm.weight", 0}, /* qwen3 */
        {"self_attn.k_norm.weight", "attn_k_norm.weight", 0},
        {"post_self_attn_layernorm.weight", "post_attention_norm.weight", 0}, /* glm4 */
        {"post_mlp_layernorm.weight", "post_ffw_norm.weight", 0},
        {"mlp.gate_up_proj.weight", "ffn_up.weight", 0},
    };
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++) {
        if (strcmp(rest, map[k].hf) == 0) {
            snprintf(out, n, "blk.%d.%s", l, map[k].gg);
            *permute_heads_kind = permute_qk ? map[k].perm : 0;
            return 1;
        }
    }
    return 0;
}

/* llama.cpp's converter reorders each head's rows from [half0 | half1] (HF,
 * rotate_half RoPE) to interleaved pairs: gguf row 2j+i = hf row i*half+j.
 * This writes the HF order back. rows = n_head * d_head. */
static void unpermute_rows(const float *src, float *dst, int n_head, int d_head, size_t cols)
{
    int half = d_head / 2;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < half; j++) {
                size_t hf_row = (size_t)h * d_head + (size_t)i * half + j;
                size_t gg_row = (size_t)h * d_head + 2 * (size_t)j + i;
                memcpy(dst + hf_row * cols, src + gg_row * cols, cols * sizeof(float));
            }
}

/* The GGUF tensor for parameter `name` exists, has a known type and the
 * shape the config needs. */
static gsink_status check_tensor(const gsink__gguf_tensor *t, const char *gname, const char *name, int ndim,
                                 const int64_t *dims, char *err)
{
    gsink_status st = GSINK_OK;
    do {
        if (!t) {
            st = gsink__fail(err, GSINK_ERR_MISSING_TENSOR, "GGUF: missing tensor '%s' (for %s)", gname, name);
            break;
        }
        size_t be;
        if (!gsink__ggml_block(t->type, &be, NULL)) {
            st = gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: tensor '%s' has unsupported type %u (%s)",
                             gname, t->type, gsink__ggml_type_name(t->type));
            break;
        }
        /* GGUF dims are innermost first: ne[0] = columns, ne[1] = rows. */
        uint64_t want0 = ndim == 2 ? (uint64_t)dims[1] : (uint64_t)dims[0];
        uint64_t want1 = ndim == 2 ? (uint64_t)dims[0] : 1;
        if (t->ne[0] != want0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1) {
            st = gsink__fail(err, GSINK_ERR_SHAPE_MISMATCH,
                             "GGUF: tensor '%s' has shape [%llu, %llu, %llu, %llu] (innermost first), "
                             "the config needs [%llu, %llu]",
                             gname, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                             (unsigned long long)t->ne[2], (unsigned long long)t->ne[3],
                             (unsigned long long)want0, (unsigned long long)want1);
            break;
        }
    } while (0);
    return st;
}

/* "<arch>.<suffix>" */
static const char *akey(char *buf, size_t n, const gguf_arch *a, const char *suffix)
{
    snprintf(buf, n, "%s.%s", a->name, suffix);
    return buf;
}

/* llama3 RoPE from llama.cpp's rope_freqs.weight: the converter
 * (LlamaModel.generate_extra_tensors) stores per-frequency divisors
 *   1 (wavelen < orig/high), factor (wavelen > orig/low), else
 *   1 / ((1 - s)/factor + s), s = (orig/wavelen - low)/(high - low),
 * with freqs = base^(-2i/d) in float32. The divisors fix only the factor and
 * the interpolation line s(orig/wavelen); the loader picks low/high (for
 * orig = rope.scaling.original_context_length or, absent, the context length)
 * that reproduce them: low 1 / high 4 when they do (Llama 3.1-3.3), else a
 * fit of the medium divisors or, with fewer than two, values strictly between
 * the neighbouring plateaus. The result is checked against every divisor. */
static double l3_divisor(double x, double factor, double lo, double hi)
{
    /* x = orig / wavelen */
    if (x > hi) return 1.0;
    if (x < lo) return factor;
    double smooth = (x - lo) / (hi - lo);
    return 1.0 / ((1.0 - smooth) / factor + smooth);
}

static int l3_matches(const float *div, int half, const double *x, double factor, double lo, double hi)
{
    for (int i = 0; i < half; i++) {
        double want = l3_divisor(x[i], factor, lo, hi);
        if (!(fabs(want - div[i]) <= 1e-5 * fabs(want))) return 0;
    }
    return 1;
}

static gsink_status rope_from_freqs_tensor(gsink__gguf *g, const gsink__gguf_tensor *t, gsink_config *cfg,
                                           int32_t orig, char *err)
{
    const int dim = gsink__rope_dims(cfg), half = dim / 2;
    if (t->type != 0 /* F32 */ || t->numel != (uint64_t)half || t->ne[1] != 1)
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                           "GGUF: rope_freqs.weight must be F32 with rope_dims/2 = %d values", half);
    float div[2048];
    double x[2048];
    if (half > 2048) return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: rope_freqs.weight: d_head too large");
    gsink__dequantize(t->type, g->file.data + g->data_off + t->offset, div, (size_t)half);
    double factor = 1.0;
    for (int i = 0; i < half; i++) {
        if (!(div[i] >= 1.0f) || !isfinite(div[i]))
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                               "GGUF: rope_freqs.weight[%d] = %g is not a llama3 divisor (>= 1)", i, (double)div[i]);
        if (div[i] > factor) factor = div[i];
        float fr = (float)(1.0 / pow((double)cfg->rope_theta, (double)(float)(2 * i) / dim)); /* as the converter */
        x[i] = (double)orig * fr / (2.0 * M_PI);
    }
    if (factor == 1.0) return GSINK_OK; /* identity: plain RoPE */
    /* x decreases with i: ones first, then medium, then the factor plateau */
    double tol = 1e-6 * factor, lo = 1.0, hi = 4.0;
    if (!l3_matches(div, half, x, factor, lo, hi)) {
        double sx = 0, sy = 0, sxx = 0, sxy = 0, x_one = INFINITY, x_plat = -INFINITY;
        int nm = 0;
        for (int i = 0; i < half; i++) {
            if (fabs(div[i] - 1.0) <= tol) {
                if (x[i] < x_one) x_one = x[i];
            } else if (fabs(div[i] - factor) <= tol) {
                if (x[i] > x_plat) x_plat = x[i];
            } else { /* s = (1/div - 1/factor) / (1 - 1/factor), linear in x */
                double sm = (1.0 / div[i] - 1.0 / factor) / (1.0 - 1.0 / factor);
                sx += x[i], sy += sm, sxx += x[i] * x[i], sxy += x[i] * sm, nm++;
            }
        }
        if (nm >= 2) {
            double a = (nm * sxy - sx * sy) / (nm * sxx - sx * sx), b = (sy - a * sx) / nm;
            lo = -b / a, hi = lo + 1.0 / a;
        } else if (nm == 1) { /* (x - lo) = s (hi - lo) with x_plat < lo <= x <= hi < x_one */
            double xm = sx, sm = sy, D = INFINITY;
            if (sm > 0 && isfinite(x_plat)) D = (xm - x_plat) / sm;
            if (sm < 1 && isfinite(x_one) && (x_one - xm) / (1 - sm) < D) D = (x_one - xm) / (1 - sm);
            if (!isfinite(D)) D = 1.0;
            D *= 0.5;
            lo = xm - sm * D, hi = xm + (1 - sm) * D;
        } else { /* x_plat < lo < hi < x_one */
            double top = isfinite(x_one) ? x_one : x_plat + 3.0;
            lo = x_plat + (top - x_plat) / 3.0, hi = x_plat + 2.0 * (top - x_plat) / 3.0;
        }
        if (!(lo > 0.0) || !(hi > lo) || !l3_matches(div, half, x, factor, lo, hi))
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                               "GGUF: rope_freqs.weight does not follow llama3 RoPE scaling");
    }
    cfg->rope_scaling = GSINK_ROPE_LLAMA3;
    cfg->rope_factor = (float)factor;
    cfg->rope_low_freq_factor = (float)lo;
    cfg->rope_high_freq_factor = (float)hi;
    cfg->rope_original_max_pos = orig;
    return GSINK_OK;
}

/* RoPE scaling: <arch>.rope.scaling.type (none, linear, yarn) with .factor,
 * .original_context_length, .yarn_beta_fast/.yarn_beta_slow; llama3 as the
 * rope_freqs.weight tensor. Other types and factors that HF's config cannot
 * say (attn_factor, yarn_attn_factor, yarn_ext_factor != default) are refused. */
static gsink_status gguf_rope_scaling(gsink__gguf *g, const gguf_arch *a, gsink_config *cfg, char *err)
{
    char k[160];
    double f;
    int32_t orig = 0;
    gsink_status st;
    if ((st = cfg_int(g, akey(k, sizeof k, a, "rope.scaling.original_context_length"), 0, &orig, err))) return st;
    const gsink__gguf_kv *ty = gsink__gguf_find(g, akey(k, sizeof k, a, "rope.scaling.type"));
    const gsink__gguf_tensor *rf = gsink__gguf_find_tensor(g, "rope_freqs.weight");
    int type = GSINK_ROPE_NONE;
    if (ty) {
        if (ty->type != GSINK_GGUF_STRING) return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: %s is not a string", k);
        if (str_eq(ty->s, "linear")) type = GSINK_ROPE_LINEAR;
        else if (str_eq(ty->s, "yarn")) type = GSINK_ROPE_YARN;
        else if (!str_eq(ty->s, "none"))
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                               "GGUF: RoPE scaling type '%.*s' is not supported (none, linear, yarn; llama3 via "
                               "rope_freqs.weight)", (int)(ty->s.len > 32 ? 32 : ty->s.len), ty->s.ptr);
    }
    for (size_t i = 0; i < 3; i++) {
        static const char *const nope[] = {"rope.scaling.attn_factor", "rope.scaling.yarn_attn_factor",
                                           "rope.scaling.yarn_log_multiplier"};
        if (kv_float(g, akey(k, sizeof k, a, nope[i]), &f) && f != 1.0 && !(i == 2 && f == 0.0))
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: %s = %g is not supported", k, f);
    }
    if (rf && type != GSINK_ROPE_NONE)
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                           "GGUF: rope_freqs.weight together with RoPE scaling type %s is not supported",
                           gsink_rope_scaling_name(type));
    if (rf) return rope_from_freqs_tensor(g, rf, cfg, orig > 0 ? orig : cfg->max_seq_len, err);
    if (type == GSINK_ROPE_NONE) return GSINK_OK;
    if (!kv_float(g, akey(k, sizeof k, a, "rope.scaling.factor"), &f) || !(f > 0.0))
        return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "GGUF: RoPE scaling %s needs a positive %s",
                           gsink_rope_scaling_name(type), k);
    cfg->rope_scaling = type;
    cfg->rope_factor = (float)f;
    cfg->rope_original_max_pos = orig;
    if (type == GSINK_ROPE_YARN) {
        if (kv_float(g, akey(k, sizeof k, a, "rope.scaling.yarn_beta_fast"), &f)) cfg->rope_beta_fast = (float)f;
        if (kv_float(g, akey(k, sizeof k, a, "rope.scaling.yarn_beta_slow"), &f)) cfg->rope_beta_slow = (float)f;
        if (kv_float(g, akey(k, sizeof k, a, "rope.scaling.yarn_ext_factor"), &f) && f != 1.0 && f >= 0.0)
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: %s = %g is not supported", k, f);
        cfg->rope_truncate = 1; /* ggml_rope_yarn_corr_dims floors and ceils */
    }
    return GSINK_OK;
}

gsink_status gsink__gguf_load_model(gsink__gguf *g, const gsink_model_options *opts,
                                    gsink_model **out, char *err)
{
    *out = NULL;
    const gsink__gguf_kv *arch = gsink__gguf_find(g, "general.architecture");
    if (!arch || arch->type != GSINK_GGUF_STRING)
        return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: missing general.architecture");
    const gguf_arch *ga = NULL;
    for (size_t i = 0; i < sizeof gguf_archs / sizeof gguf_archs[0]; i++)
        if (str_eq(arch->s, gguf_archs[i].name)) ga = &gguf_archs[i];
    if (!ga)
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: architecture '%.*s' is not supported (" GGUF_ARCH_LIST ")",
                           (int)(arch->s.len > 64 ? 64 : arch->s.len), arch->s.ptr);
    const gsink_arch_info *ai = gsink__arch(ga->arch);
    gsink_config cfg;
    gsink_config_init(&cfg);
    cfg.arch = ai->id;
    cfg.qkv_bias = ai->qkv_bias;
    cfg.qk_norm = ai->qk_norm;
    cfg.rope_interleaved = ai->rope_interleaved;
    cfg.sandwich_norm = ai->sandwich_norm;
    gsink_status st;
    char k[160];
    if ((st = cfg_int(g, akey(k, sizeof k, ga, "embedding_length"), 1, &cfg.d_model, err))) return st;
    if ((st = cfg_int(g, akey(k, sizeof k, ga, "block_count"), 1, &cfg.n_layers, err))) return st;
    if ((st = cfg_int(g, akey(k, sizeof k, ga, "attention.head_count"), 1, &cfg.n_heads, err))) return st;
    cfg.n_kv_heads = cfg.n_heads;
    if ((st = cfg_int(g, akey(k, sizeof k, ga, "attention.head_count_kv"), 0, &cfg.n_kv_heads, err))) return st;
    if ((st = cfg_int(g, akey(k, sizeof k, ga, "feed_forward_length"), 1, &cfg.d_ff, err))) return st;
    cfg.max_seq_len = 2048;
    if ((st = cfg_int(g, akey(k, sizeof k, ga, "context_length"), 0, &cfg.max_seq_len, err))) return st;
    cfg.d_head = cfg.d_model / cfg.n_heads;
    if ((st = cfg_int(g, akey(k, sizeof k, ga, "attention.key_length"), 0, &cfg.d_head, err))) return st;
    {
        /* the model has one head size: value_length (absent: taken as equal) must match */
        int32_t vl = cfg.d_head;
        if ((st = cfg_int(g, akey(k, sizeof k, ga, "attention.value_length"), 0, &vl, err))) return st;
        if (vl != cfg.d_head)
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: %s = %d differs from the key length %d", k, vl,
                               cfg.d_head);
        /* rotated dims of each head (llama.cpp n_rot; default: the whole head).
         * Only glm4 rotates part of the head (Glm4Model writes head_dim x
         * partial_rotary_factor); for the others, as HF, it must be d_head. */
        int32_t rot = cfg.d_head;
        if ((st = cfg_int(g, akey(k, sizeof k, ga, "rope.dimension_count"), 0, &rot, err))) return st;
        if (rot != cfg.d_head && !(ai->rope_partial > 0.0f))
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: %s = %d is not supported for %s (head size %d)", k,
                               rot, ga->name, cfg.d_head);
        if (rot < 2 || rot % 2 || rot > cfg.d_head)
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED,
                               "GGUF: %s = %d rotated dims (must be even and in [2, head size %d])", k, rot,
                               cfg.d_head);
        cfg.rope_dims = rot < cfg.d_head ? rot : 0;
        /* M-RoPE (GLM-4V's text model as glm4, with Q/K permuted for it by
         * the converter): llama.cpp's use_mrope, from rope.dimension_sections */
        const gsink__gguf_kv *sec = gsink__gguf_find(g, akey(k, sizeof k, ga, "rope.dimension_sections"));
        if (sec && (sec->type != GSINK_GGUF_ARRAY || sec->arr_n > 0))
            return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: %s (M-RoPE) is not supported", k);
    }
    double f;
    cfg.rms_eps = 1e-5f;
    if (kv_float(g, akey(k, sizeof k, ga, "attention.layer_norm_rms_epsilon"), &f)) cfg.rms_eps = (float)f;
    cfg.rope_theta = 10000.0f;
    if (kv_float(g, akey(k, sizeof k, ga, "rope.freq_base"), &f)) cfg.rope_theta = (float)f;
    const gsink__gguf_kv *toks = gsink__gguf_find(g, "tokenizer.ggml.tokens");
    const gsink__gguf_tensor *emb = gsink__gguf_find_tensor(g, "token_embd.weight");
    int64_t vs;
    if (kv_int(g, akey(k, sizeof k, ga, "vocab_size"), &vs)) {
        if (vs <= 0 || vs > INT32_MAX)
            return gsink__fail(err, GSINK_ERR_BAD_CONFIG, "GGUF: %s %lld out of range", k, (long long)vs);
        cfg.vocab_size = (int32_t)vs;
    } else if (toks && toks->type == GSINK_GGUF_ARRAY && toks->arr_type == GSINK_GGUF_STRING &&
               toks->arr_n > 0 && toks->arr_n <= INT32_MAX) {
        cfg.vocab_size = (int32_t)toks->arr_n;
    } else if (emb && emb->n_dims == 2 && emb->ne[1] > 0 && emb->ne[1] <= INT32_MAX) {
        cfg.vocab_size = (int32_t)emb->ne[1];
    } else {
        return gsink__fail(err, GSINK_ERR_FORMAT, "GGUF: cannot determine the vocabulary size");
    }
    cfg.tie_embeddings = gsink__gguf_find_tensor(g, "output.weight") == NULL;
    /* A llama-architecture file converted from Mistral may carry its window
     * (gguf-py add_sliding_window): HF's Mistral applies it, so it loads as
     * the mistral row with that window. */
    int32_t swa = 0;
    if ((st = cfg_int(g, akey(k, sizeof k, ga, "attention.sliding_window"), 0, &swa, err))) return st;
    if (swa > 0 && ga->arch == GSINK_ARCH_LLAMA) {
        cfg.arch = GSINK_ARCH_MISTRAL;
        cfg.sliding_window = swa;
    } else if (swa > 0) {
        return gsink__fail(err, GSINK_ERR_UNSUPPORTED, "GGUF: %s = %d is not supported for %s", k, swa, ga->name);
    }
    if (cfg.d_head % 2 == 0 && cfg.d_head > 0 && (st = gguf_rope_scaling(g, ga, &cfg, err))) return st;
    if ((st = gsink_config_validate(&cfg))) return gsink__refail(err, st, "GGUF");

    /* Every tensor's presence, type and shape before the model (whose size
     * the metadata alone decides) is allocated. */
    {
        char name[96], gname[128];
        int ndim, perm;
        int64_t dims[2];
        for (size_t k = 0; gsink__param_spec(&cfg, k, name, &ndim, dims); k++) {
            if (!gguf_name(name, gname, sizeof gname, ga->permute_qk, &perm)) continue;
            if ((st = check_tensor(gsink__gguf_find_tensor(g, gname), gname, name, ndim, dims, err))) return st;
        }
    }
    char merr[GSINK_MSG_SIZE] = "";
    gsink_model *m = NULL;
    st = gsink__model_alloc(&cfg, opts, &m, merr);
    if (st) return gsink__refail(err, st, "GGUF");

    size_t count = 0;
    gsink_param_count(m, &count);
    float *buf = NULL, *buf2 = NULL, *cbuf = NULL;
    size_t cap = 0, ccap = 0;
    for (size_t k = 0; k < count && !st; k++) {
        const char *name;
        int ndim;
        int64_t dims[2];
        if ((st = gsink_param_info(m, k, &name, &ndim, dims))) {
            st = gsink__refail(err, st, "GGUF");
            break;
        }
        char gname[128];
        int perm;
        if (!gguf_name(name, gname, sizeof gname, ga->permute_qk, &perm)) continue; /* e.g. V-scale theta */
        const gsink__gguf_tensor *t = gsink__gguf_find_tensor(g, gname);
        if ((st = check_tensor(t, gname, name, ndim, dims, err))) break;
        size_t n = t->numel;
        const gsink_param_entry *e = gsink__find_param(m, name);
        size_t be_, bb_;
        if (!perm && e && e->numel == n && n > GGUF_CHUNK && dims[1] > 0 && gsink__ggml_block(t->type, &be_, &bb_) &&
            (size_t)dims[1] % be_ == 0) {
            /* Whole rows at a time (a row is whole blocks): dequantised into a
             * bounded buffer and stored (rounded into 16-bit storage), never
             * a tensor-sized fp32 copy. */
            size_t row = (size_t)dims[1], rows = GGUF_CHUNK / row ? GGUF_CHUNK / row : 1, chunk = rows * row;
            if (chunk > ccap) { /* its own buffer: buf and buf2 share cap */
                free(cbuf);
                cbuf = malloc(chunk * sizeof(float));
                ccap = cbuf ? chunk : 0;
                if (!cbuf) {
                    st = gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "GGUF: cannot allocate %zu floats", chunk);
                    break;
                }
            }
            const uint8_t *src = g->file.data + g->data_off + t->offset;
            for (size_t i = 0; i < n && !st; i += chunk) {
                size_t k = n - i < chunk ? n - i : chunk;
                gsink__dequantize(t->type, src + i / be_ * bb_, cbuf, k);
                if ((st = gsink__param_store_range(m, e, i, k, cbuf, GSINK_WD_F32)))
                    st = gsink__fail(err, st, "GGUF: tensor '%s': %s", name, m->be->err);
            }
            continue;
        }
        if (n > cap) {
            free(buf);
            free(buf2);
            buf = malloc(n * sizeof(float));
            buf2 = malloc(n * sizeof(float));
            cap = n;
            if (!buf || !buf2) {
                st = gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "GGUF: cannot allocate %zu floats", n);
                break;
            }
        }
        gsink__dequantize(t->type, g->file.data + g->data_off + t->offset, buf, n);
        const float *src = buf;
        if (perm) {
            int heads = perm == 1 ? cfg.n_heads : cfg.n_kv_heads;
            unpermute_rows(buf, buf2, heads, cfg.d_head, (size_t)cfg.d_model);
            src = buf2;
        }
        if ((st = gsink_set_param(m, name, src, n)))
            st = gsink__refail(err, st, "GGUF");
    }
    free(buf);
    free(buf2);
    free(cbuf);
    if (st) {
        gsink_model_free(m);
        return st;
    }
    *out = m;
    return GSINK_OK;
}
