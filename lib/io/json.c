/* json.c - a small strict JSON parser (RFC 8259) for config.json,
 * model.safetensors.index.json and safetensors headers. Depth-limited,
 * length-checked, never reads past len. An object that names a key twice
 * means its last value (as Python's json and HuggingFace read it). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io_internal.h"

#define JSON_MAX_DEPTH 64

/* Every allocation of one document comes from an arena of chunks freed
 * together: a safetensors header may hold a million small objects, and one
 * malloc (and free) per string, key array and item array made parsing one
 * cost seconds and gigabytes. Growing the newest block extends it in place. */
typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
} chunk;

typedef struct arena {
    chunk *head;
    void *last;       /* the newest block (can grow in place) */
} arena;

/* The document: its root value and the arena that holds the rest. */
typedef struct doc {
    gsink__json root; /* first: gsink__json_free gets &doc->root */
    arena a;
} doc;

#define ARENA_ALIGN (sizeof(max_align_t))
#define ARENA_CHUNK ((size_t)1 << 20)

static size_t round_up(size_t n) { return (n + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1); }

static void *arena_alloc(arena *a, size_t n)
{
    if (n > SIZE_MAX / 4) return NULL;
    n = round_up(n ? n : 1);
    chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK / 4 ? n : ARENA_CHUNK;
        chunk *nc = malloc(sizeof *nc + cap);
        if (!nc) return NULL;
        nc->cap = cap;
        nc->used = 0;
        if (c && n > ARENA_CHUNK / 4) { /* a big block: keep the current chunk in front */
            nc->next = c->next;
            c->next = nc;
            nc->used = n;
            return nc->data; /* not the newest block of the front chunk */
        }
        nc->next = c;
        a->head = c = nc;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    a->last = p;
    return p;
}

/* Grows a block from old_n to n bytes: in place when it is the newest block
 * of the front chunk and there is room, else by a copy (the old space stays
 * unused until the arena is freed; growth by doubling bounds the waste). */
static void *arena_grow(arena *a, void *old, size_t old_n, size_t n)
{
    if (n > SIZE_MAX / 4) return NULL;
    chunk *c = a->head;
    if (old && old == a->last && c) {
        size_t off = (size_t)((char *)old - (char *)c->data);
        if (off + round_up(n) <= c->cap) {
            c->used = off + round_up(n);
            return old;
        }
    }
    void *p = arena_alloc(a, n);
    if (p && old) memcpy(p, old, old_n);
    return p;
}

static void arena_free(arena *a)
{
    for (chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    a->head = NULL;
    a->last = NULL;
}

typedef struct jp {
    const char *s;
    size_t n, i;
    char *err;
    gsink_status st;
    arena *a;
} jp;

static gsink_status jfail(jp *p, const char *what)
{
    if (p->st == GSINK_OK)
        p->st = gsink__fail(p->err, GSINK_ERR_FORMAT, "JSON: %s at byte %zu", what, p->i);
    return p->st;
}

static void skip_ws(jp *p)
{
    while (p->i < p->n) {
        char c = p->s[p->i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') p->i++;
        else break;
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(jp *p, uint32_t *out)
{
    if (p->n - p->i < 4) return -1;
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p->s[p->i + k]);
        if (h < 0) return -1;
        v = (v << 4) | (uint32_t)h;
    }
    p->i += 4;
    *out = v;
    return 0;
}

size_t gsink__utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

/* Parses a string starting at the opening quote into a buffer of the arena. */
static gsink_status parse_string(jp *p, char **out, size_t *out_len)
{
    p->i++; /* opening quote */
    size_t start = p->i, end = start;
    /* First pass: find the closing quote to bound the output size. */
    while (end < p->n && p->s[end] != '"') {
        if (p->s[end] == '\\') end++;
        end++;
    }
    if (end >= p->n) return jfail(p, "unterminated string");
    char *buf = arena_alloc(p->a, end - start + 1);
    if (!buf) {
        p->st = gsink__fail(p->err, GSINK_ERR_OUT_OF_MEMORY, "JSON: out of memory");
        return p->st;
    }
    size_t o = 0;
    while (p->i < end) {
        unsigned char c = (unsigned char)p->s[p->i];
        if (c < 0x20) return jfail(p, "control character in string");
        if (c != '\\') { buf[o++] = (char)c; p->i++; continue; }
        p->i++;
        char e = p->s[p->i++];
        switch (e) {
        case '"': buf[o++] = '"'; break;
        case '\\': buf[o++] = '\\'; break;
        case '/': buf[o++] = '/'; break;
        case 'b': buf[o++] = '\b'; break;
        case 'f': buf[o++] = '\f'; break;
        case 'n': buf[o++] = '\n'; break;
        case 'r': buf[o++] = '\r'; break;
        case 't': buf[o++] = '\t'; break;
        case 'u': {
            uint32_t cp;
            if (p->i > end || read_hex4(p, &cp) != 0 || p->i > end) return jfail(p, "bad \\u escape");
            if (cp >= 0xD800 && cp < 0xDC00) {
                uint32_t lo;
                if (p->i + 6 <= end && p->s[p->i] == '\\' && p->s[p->i + 1] == 'u') {
                    p->i += 2;
                    if (read_hex4(p, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                        return jfail(p, "bad surrogate pair");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    cp = 0xFFFD;
                }
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                cp = 0xFFFD;
            }
            /* A \uXXXX escape (6 bytes) never needs more than 4 output bytes,
             * a surrogate pair (12 bytes) 4: the buffer bound holds. */
            o += gsink__utf8_put(buf + o, cp);
            break;
        }
        default:
            return jfail(p, "bad escape");
        }
    }
    p->i = end + 1;
    buf[o] = '\0';
    *out = buf;
    *out_len = o;
    return GSINK_OK;
}

static gsink_status parse_value(jp *p, gsink__json *v, int depth);

static gsink_status parse_number(jp *p, gsink__json *v)
{
    size_t st = p->i;
    if (p->i < p->n && p->s[p->i] == '-') p->i++;
    if (p->i >= p->n) return jfail(p, "bad number");
    if (p->s[p->i] == '0') {
        p->i++;
    } else if (p->s[p->i] >= '1' && p->s[p->i] <= '9') {
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
    } else {
        return jfail(p, "bad number");
    }
    int integral = 1;
    if (p->i < p->n && p->s[p->i] == '.') {
        integral = 0;
        p->i++;
        size_t d0 = p->i;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
        if (p->i == d0) return jfail(p, "bad fraction");
    }
    if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        integral = 0;
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
        size_t d0 = p->i;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
        if (p->i == d0) return jfail(p, "bad exponent");
    }
    size_t len = p->i - st;
    char tmp[64];
    char *buf = tmp;
    if (len >= sizeof tmp) {
        buf = malloc(len + 1);
        if (!buf) return jfail(p, "out of memory");
    }
    memcpy(buf, p->s + st, len);
    buf[len] = '\0';
    v->type = GSINK_JSON_NUMBER;
    v->number = strtod(buf, NULL);
    if (integral && buf[0] != '-') {
        uint64_t u = 0;
        int ok = 1;
        for (size_t k = 0; k < len; k++) {
            uint64_t d = (uint64_t)(buf[k] - '0');
            if (u > (UINT64_MAX - d) / 10) { ok = 0; break; }
            u = u * 10 + d;
        }
        v->is_uint = ok;
        v->u64 = ok ? u : 0;
    }
    if (buf != tmp) free(buf);
    return GSINK_OK;
}

static int match_lit(jp *p, const char *lit)
{
    size_t l = strlen(lit);
    if (p->n - p->i < l || memcmp(p->s + p->i, lit, l) != 0) return 0;
    p->i += l;
    return 1;
}

/* Growable array of values (and keys for objects). */
static gsink_status grow(jp *p, gsink__json *v, size_t *cap, int with_keys)
{
    if (v->len < *cap) return GSINK_OK;
    size_t nc = *cap ? *cap * 2 : 4;
    if (with_keys) { /* keys first: the items block then stays the newest (grows in place) */
        char **nk = arena_grow(p->a, v->keys, *cap * sizeof *nk, nc * sizeof *nk);
        if (!nk) return jfail(p, "out of memory");
        v->keys = nk;
    }
    gsink__json *ni = arena_grow(p->a, v->items, *cap * sizeof *ni, nc * sizeof *ni);
    if (!ni) return jfail(p, "out of memory");
    v->items = ni;
    *cap = nc;
    return GSINK_OK;
}

static uint64_t key_hash(const char *k)
{
    uint64_t h = 1469598103934665603ull;
    for (; *k; k++) h = (h ^ (uint8_t)*k) * 1099511628211ull;
    return h;
}

/* Marks the members of an object whose key occurs again later: a key given
 * twice takes its last value, as Python's json and HuggingFace do. Lookups
 * (gsink__json_get) then see the last value; code that walks the members
 * skips the shadowed ones (gsink__json_shadowed) or refuses the object
 * (gsink__json_duplicate_key). Linear in the member count. */
static gsink_status mark_duplicates(jp *p, gsink__json *v)
{
    if (v->len < 2) return GSINK_OK;
    if (v->len <= 8) { /* small objects (most of them): the same marks, no table */
        for (size_t q = 1; q < v->len; q++)
            for (size_t k = q; k-- > 0;)
                if (strcmp(v->keys[k], v->keys[q]) == 0) {
                    if (!v->shadowed) {
                        v->shadowed = arena_alloc(p->a, v->len);
                        if (!v->shadowed) return jfail(p, "out of memory");
                        memset(v->shadowed, 0, v->len);
                        v->dup = k;
                    }
                    v->shadowed[k] = 1;
                    break;
                }
        return GSINK_OK;
    }
    size_t cap = 16;
    while (cap < 2 * v->len) cap *= 2;
    size_t *slot = malloc(cap * sizeof *slot);
    if (!slot) return jfail(p, "out of memory");
    for (size_t k = 0; k < cap; k++) slot[k] = SIZE_MAX;
    for (size_t k = 0; k < v->len; k++) {
        size_t i = (size_t)key_hash(v->keys[k]) & (cap - 1);
        while (slot[i] != SIZE_MAX && strcmp(v->keys[slot[i]], v->keys[k]) != 0) i = (i + 1) & (cap - 1);
        if (slot[i] != SIZE_MAX) {
            if (!v->shadowed) {
                v->shadowed = arena_alloc(p->a, v->len);
                if (!v->shadowed) {
                    free(slot);
                    return jfail(p, "out of memory");
                }
                memset(v->shadowed, 0, v->len);
                v->dup = slot[i];
            }
            v->shadowed[slot[i]] = 1;
        }
        slot[i] = k;
    }
    free(slot);
    return GSINK_OK;
}

static gsink_status parse_value(jp *p, gsink__json *v, int depth)
{
    memset(v, 0, sizeof *v);
    if (depth > JSON_MAX_DEPTH) return jfail(p, "nesting too deep");
    skip_ws(p);
    if (p->i >= p->n) return jfail(p, "unexpected end");
    char c = p->s[p->i];
    if (c == '{' || c == '[') {
        int obj = c == '{';
        v->type = obj ? GSINK_JSON_OBJECT : GSINK_JSON_ARRAY;
        size_t cap = 0;
        p->i++;
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) { p->i++; return GSINK_OK; }
        for (;;) {
            if (grow(p, v, &cap, obj)) return p->st;
            skip_ws(p);
            if (obj) {
                if (p->i >= p->n || p->s[p->i] != '"') return jfail(p, "expected key");
                char *k;
                size_t kl;
                if (parse_string(p, &k, &kl)) return p->st;
                if (strlen(k) != kl) {
                    /* keys are C strings: "a\u0000b" would be taken as "a" */
                    return jfail(p, "object key holds a NUL character (\\u0000)");
                }
                v->keys[v->len] = k;
                skip_ws(p);
                if (p->i >= p->n || p->s[p->i] != ':') {
                    memset(&v->items[v->len], 0, sizeof v->items[0]);
                    v->len++;
                    return jfail(p, "expected ':'");
                }
                p->i++;
            }
            gsink_status st = parse_value(p, &v->items[v->len], depth + 1);
            v->len++;
            if (st) return st;
            skip_ws(p);
            if (p->i < p->n && p->s[p->i] == ',') { p->i++; continue; }
            if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
                p->i++;
                if ((void *)v->items == p->a->last) /* e.g. an array of numbers: give back the slack */
                    arena_grow(p->a, v->items, v->len * sizeof *v->items, v->len * sizeof *v->items);
                return obj ? mark_duplicates(p, v) : GSINK_OK;
            }
            return jfail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    if (c == '"') {
        v->type = GSINK_JSON_STRING;
        return parse_string(p, &v->str, &v->len);
    }
    if (match_lit(p, "-Infinity")) { v->type = GSINK_JSON_NUMBER; v->number = -INFINITY; return GSINK_OK; }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, v);
    if (match_lit(p, "true")) { v->type = GSINK_JSON_BOOL; v->boolean = 1; return GSINK_OK; }
    if (match_lit(p, "false")) { v->type = GSINK_JSON_BOOL; return GSINK_OK; }
    if (match_lit(p, "null")) { v->type = GSINK_JSON_NULL; return GSINK_OK; }
    /* Python's json writes these; accept them for config files. */
    if (match_lit(p, "NaN")) { v->type = GSINK_JSON_NUMBER; v->number = NAN; return GSINK_OK; }
    if (match_lit(p, "Infinity")) { v->type = GSINK_JSON_NUMBER; v->number = INFINITY; return GSINK_OK; }
    return jfail(p, "unexpected character");
}

void gsink__json_free(gsink__json *j)
{
    if (!j) return;
    doc *d = (doc *)(void *)j; /* the root is the document's first member */
    arena_free(&d->a);
    free(d);
}

gsink_status gsink__json_parse(const char *text, size_t len, gsink__json **out, char *err)
{
    *out = NULL;
    doc *d = calloc(1, sizeof *d);
    if (!d) return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "JSON: out of memory");
    jp p = {text, len, 0, err, GSINK_OK, &d->a};
    if (parse_value(&p, &d->root, 0) == GSINK_OK) {
        skip_ws(&p);
        if (p.i != p.n) jfail(&p, "trailing characters");
    }
    if (p.st) {
        gsink__json_free(&d->root);
        return p.st;
    }
    *out = &d->root;
    return GSINK_OK;
}

const gsink__json *gsink__json_get(const gsink__json *j, const char *key)
{
    if (!j || j->type != GSINK_JSON_OBJECT) return NULL;
    /* The last member of that name: earlier ones are shadowed. */
    for (size_t k = j->len; k-- > 0;)
        if (strcmp(j->keys[k], key) == 0) return &j->items[k];
    return NULL;
}

int gsink__json_shadowed(const gsink__json *j, size_t k)
{
    return j && j->type == GSINK_JSON_OBJECT && j->shadowed && k < j->len && j->shadowed[k];
}

const char *gsink__json_duplicate_key(const gsink__json *j)
{
    if (!j || j->type != GSINK_JSON_OBJECT || !j->shadowed) return NULL;
    return j->keys[j->dup];
}
