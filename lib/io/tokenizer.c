/* tokenizer.c - GPT-2 style byte-level BPE built from a GGUF's tokenizer.ggml.*
 * metadata. Pre-tokenizers ("gpt2", "smollm") are hand-written matchers for
 * the regular expressions their HF/llama.cpp definitions use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_internal.h"
#include "unicode_tables.h"

enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_USER_DEFINED = 4, TOK_UNUSED = 5, TOK_BYTE = 6 };
enum { PRE_GPT2 = 0, PRE_SMOLLM = 1 };

typedef struct hent { const char *s; uint32_t len; int32_t val; } hent;
typedef struct hmap { hent *e; size_t cap; } hmap;

struct gsink_tokenizer {
    gsink__owner owner;     /* first (see GSINK__OWNER): thread inside a call (GSINK_USE) */
    char errmsg[GSINK_MSG_SIZE];
    int32_t n_vocab;
    char *arena;            /* all token and merge strings */
    const char **tok;       /* (n_vocab) */
    uint32_t *tok_len;      /* (n_vocab) */
    int32_t *type;          /* (n_vocab) */
    hmap vocab, merges;
    int pre;
    int32_t bos, eos;
    /* Added tokens (control, user-defined) matched in text: an Aho-Corasick
     * automaton over their reversed texts (see build_matcher). */
    size_t n_special, n_user;
    uint32_t *ac_fail;      /* (ac_n) failure link of each state; state 0 is the root */
    int32_t *ac_out;        /* (ac_n) longest added token that is a suffix of the state, -1 if none */
    uint64_t *ac_key;       /* (ac_cap) edge table: (state << 8 | byte) -> ac_child */
    uint32_t *ac_child;     /* (ac_cap) 0 = empty slot */
    size_t ac_n, ac_cap;
    /* Input the vocabulary has no token for: byte fallback (<0xXX>), else
     * the unknown token, else an error. */
    int32_t byte_tok[256];  /* id of "<0xXX>", -1 if none or no byte fallback */
    int byte_fallback;
    int32_t unk;
    uint32_t byte2cp[256];
    int16_t cp2byte[512];   /* -1 when the code point is not a byte image */
};

/* ---- hash map ------------------------------------------------------------ */

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int hmap_init(hmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n + 1) cap *= 2;
    m->e = calloc(cap, sizeof *m->e);
    m->cap = cap;
    return m->e != NULL;
}

/* Inserts if absent (the first occurrence wins, as in HF and llama.cpp). */
static void hmap_put(hmap *m, const char *s, size_t n, int32_t v)
{
    size_t i = (size_t)fnv(s, n) & (m->cap - 1);
    while (m->e[i].s) {
        if (m->e[i].len == n && memcmp(m->e[i].s, s, n) == 0) return;
        i = (i + 1) & (m->cap - 1);
    }
    m->e[i].s = s;
    m->e[i].len = (uint32_t)n;
    m->e[i].val = v;
}

static int32_t hmap_get(const hmap *m, const char *s, size_t n)
{
    size_t i = (size_t)fnv(s, n) & (m->cap - 1);
    while (m->e[i].s) {
        if (m->e[i].len == n && memcmp(m->e[i].s, s, n) == 0) return m->e[i].val;
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

/* ---- UTF-8 and character classes ----------------------------------------- */

/* Decodes one code point; invalid bytes decode as themselves with length 1
 * and cp = 0xFFFD | flag so they count as "other" but keep their byte. */
static size_t utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    size_t len;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) { len = 2; v = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; v = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; v = c & 0x07; min = 0x10000; }
    else { *cp = 0xFFFD; return 1; }
    if (len > n) { *cp = 0xFFFD; return 1; }
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) { *cp = 0xFFFD; return 1; }
        v = (v << 6) | (s[k] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v < 0xE000)) { *cp = 0xFFFD; return 1; }
    *cp = v;
    return len;
}

static int in_table(const uint32_t (*t)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < t[mid][0]) hi = mid;
        else if (cp > t[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

enum { CL_LETTER, CL_NUMBER, CL_SPACE, CL_OTHER };

static int is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

static int char_class(uint32_t c)
{
    if (c < 0x80) {
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CL_LETTER;
        if (c >= '0' && c <= '9') return CL_NUMBER;
        if (is_space(c)) return CL_SPACE;
        return CL_OTHER;
    }
    if (is_space(c)) return CL_SPACE;
    if (in_table(gsink_uni_letter, sizeof gsink_uni_letter / sizeof gsink_uni_letter[0], c)) return CL_LETTER;
    if (in_table(gsink_uni_number, sizeof gsink_uni_number / sizeof gsink_uni_number[0], c)) return CL_NUMBER;
    return CL_OTHER;
}

/* ---- construction -------------------------------------------------------- */

static void byte_map(gsink_tokenizer *t)
{
    for (int k = 0; k < 512; k++) t->cp2byte[k] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        t->byte2cp[b] = cp;
        t->cp2byte[cp] = (int16_t)b;
    }
}

void gsink_tokenizer_free(gsink_tokenizer *t)
{
    if (!t) return;
    gsink__use u; /* as gsink_model_free: refused while another thread uses it */
    if (!gsink__use_acquire(&u, &t->owner)) {
        gsink__busy("tokenizer");
        return;
    }
    free(t->arena);
    free(t->tok);
    free(t->tok_len);
    free(t->type);
    free(t->vocab.e);
    free(t->merges.e);
    free(t->ac_fail);
    free(t->ac_out);
    free(t->ac_key);
    free(t->ac_child);
    free(t);
}

/* ---- added-token matcher ----------------------------------------------------
 * Added tokens are matched as the HF tokenizers do (aho-corasick,
 * leftmost-longest): at the leftmost position where some added token starts,
 * the longest one starting there (control tokens included when they are
 * not parsed: their text is then left as text). An Aho-Corasick automaton over the tokens'
 * reversed texts, run over the text backwards, gives the longest token
 * starting at every position in one pass linear in the text; the automaton
 * is built in time linear in the tokens' total length. */

static size_t ac_slot(const gsink_tokenizer *t, uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    size_t i = (size_t)h & (t->ac_cap - 1);
    while (t->ac_child[i] && t->ac_key[i] != key) i = (i + 1) & (t->ac_cap - 1);
    return i;
}

static uint32_t ac_get(const gsink_tokenizer *t, uint32_t state, uint8_t b)
{
    return t->ac_child[ac_slot(t, ((uint64_t)state << 8) | b)];
}

static int is_added(const gsink_tokenizer *t, size_t k)
{
    return (t->type[k] == TOK_CONTROL || t->type[k] == TOK_USER_DEFINED) && t->tok_len[k] > 0;
}

static gsink_status build_matcher(gsink_tokenizer *t)
{
    size_t nv = (size_t)t->n_vocab, total = 1;
    for (size_t k = 0; k < nv; k++) {
        if (!is_added(t, k)) continue;
        t->n_special++;
        if (t->type[k] == TOK_USER_DEFINED) t->n_user++;
        total += t->tok_len[k];
    }
    if (!t->n_special) return GSINK_OK;
    if (total > UINT32_MAX / 4) return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: added tokens are too long");
    size_t cap = 16;
    while (cap < 2 * total) cap *= 2;
    t->ac_cap = cap;
    t->ac_key = malloc(cap * sizeof *t->ac_key);
    t->ac_child = calloc(cap, sizeof *t->ac_child);
    t->ac_fail = malloc(total * sizeof *t->ac_fail);
    t->ac_out = malloc(total * sizeof *t->ac_out);
    /* Build-only: first child / next sibling lists and edge bytes, for the
     * breadth-first pass. */
    uint32_t *first = malloc(total * sizeof *first), *next = malloc(total * sizeof *next),
             *queue = malloc(total * sizeof *queue);
    uint8_t *edge = malloc(total);
    gsink_status st = GSINK_OK;
    if (!t->ac_key || !t->ac_child || !t->ac_fail || !t->ac_out || !first || !next ||
        !queue || !edge) {
        st = gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
        goto done;
    }
    size_t n = 1;
    first[0] = 0;
    t->ac_out[0] = -1;
    /* Tokens in id order: of two with the same text the lower id wins (as
     * in the vocabulary lookup). */
    for (size_t k = 0; k < nv; k++) {
        if (!is_added(t, k)) continue;
        uint32_t s = 0;
        for (size_t q = t->tok_len[k]; q-- > 0;) {
            uint8_t b = (uint8_t)t->tok[k][q];
            uint64_t key = ((uint64_t)s << 8) | b;
            size_t slot = ac_slot(t, key);
            if (!t->ac_child[slot]) {
                t->ac_key[slot] = key;
                t->ac_child[slot] = (uint32_t)n;
                first[n] = 0;
                next[n] = first[s];
                first[s] = (uint32_t)n;
                edge[n] = b;
                t->ac_out[n] = -1;
                n++;
            }
            s = t->ac_child[slot];
        }
        if (t->ac_out[s] < 0) t->ac_out[s] = (int32_t)k;
    }
    t->ac_n = n;
    /* Breadth first: failure links, and each state's longest token among
     * itself and its failure chain (states nearer the root come first). */
    size_t qh = 0, qt = 0;
    t->ac_fail[0] = 0;
    queue[qt++] = 0;
    while (qh < qt) {
        uint32_t u = queue[qh++];
        for (uint32_t v = first[u]; v; v = next[v]) {
            uint32_t f = 0;
            if (u != 0) {
                f = t->ac_fail[u];
                uint32_t c;
                while ((c = ac_get(t, f, edge[v])) == 0 && f != 0) f = t->ac_fail[f];
                f = c;
            }
            t->ac_fail[v] = f;
            if (t->ac_out[v] < 0) t->ac_out[v] = t->ac_out[f];
            queue[qt++] = v;
        }
    }
done:
    free(first);
    free(next);
    free(queue);
    free(edge);
    return st;
}

/* longest[i] = the longest added token that starts at byte i of s, -1 if
 * none. */
static void match_added(const gsink_tokenizer *t, const uint8_t *s, size_t n, int32_t *longest)
{
    const int32_t *out = t->ac_out;
    uint32_t st = 0;
    for (size_t i = n; i-- > 0;) {
        uint32_t c;
        while ((c = ac_get(t, st, s[i])) == 0 && st != 0) st = t->ac_fail[st];
        st = c;
        longest[i] = out[st];
    }
}

static gsink_status build(gsink__gguf *g, gsink_tokenizer *t)
{
    const gsink__gguf_kv *model = gsink__gguf_find(g, "tokenizer.ggml.model");
    if (!model || model->type != GSINK_GGUF_STRING)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: missing tokenizer.ggml.model");
    if (!(model->s.len == 4 && memcmp(model->s.ptr, "gpt2", 4) == 0))
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                           "tokenizer model '%.*s' is not supported (byte-level BPE 'gpt2' only)",
                           (int)(model->s.len > 32 ? 32 : model->s.len), model->s.ptr);
    const gsink__gguf_kv *pre = gsink__gguf_find(g, "tokenizer.ggml.pre");
    t->pre = PRE_GPT2;
    if (pre && pre->type == GSINK_GGUF_STRING) {
        if (pre->s.len == 6 && memcmp(pre->s.ptr, "smollm", 6) == 0) t->pre = PRE_SMOLLM;
        else if ((pre->s.len == 4 && memcmp(pre->s.ptr, "gpt2", 4) == 0) ||
                 (pre->s.len == 7 && memcmp(pre->s.ptr, "default", 7) == 0))
            t->pre = PRE_GPT2;
        else
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                               "pre-tokenizer '%.*s' is not supported (gpt2, smollm)",
                               (int)(pre->s.len > 32 ? 32 : pre->s.len), pre->s.ptr);
    }
    const gsink__gguf_kv *toks = gsink__gguf_find(g, "tokenizer.ggml.tokens");
    const gsink__gguf_kv *merges = gsink__gguf_find(g, "tokenizer.ggml.merges");
    const gsink__gguf_kv *types = gsink__gguf_find(g, "tokenizer.ggml.token_type");
    if (!toks || toks->type != GSINK_GGUF_ARRAY || toks->arr_type != GSINK_GGUF_STRING || toks->arr_n == 0)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: tokenizer.ggml.tokens missing or not a string array");
    if (toks->arr_n > INT32_MAX)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: %llu tokens is too many",
                           (unsigned long long)toks->arr_n);
    if (!merges || merges->type != GSINK_GGUF_ARRAY || merges->arr_type != GSINK_GGUF_STRING)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: tokenizer.ggml.merges missing or not a string array");
    if (merges->arr_n > INT32_MAX)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: too many merges");
    if (types && (types->type != GSINK_GGUF_ARRAY || types->arr_type != GSINK_GGUF_INT32 ||
                  types->arr_n != toks->arr_n))
        return gsink__fail(NULL, GSINK_ERR_FORMAT,
                           "GGUF: tokenizer.ggml.token_type must be an int32 array with one entry per token");
    size_t nv = (size_t)toks->arr_n, nm = (size_t)merges->arr_n;
    t->n_vocab = (int32_t)nv;
    /* Strings were bounds-checked by the parser: their total fits in the file. */
    size_t total = 0, cur = toks->arr_off;
    for (size_t k = 0; k < nv; k++) total += gsink__gguf_next_str(g, &cur).len + 1;
    cur = merges->arr_off;
    for (size_t k = 0; k < nm; k++) total += gsink__gguf_next_str(g, &cur).len + 1;
    t->arena = malloc(total ? total : 1);
    t->tok = malloc(nv * sizeof *t->tok);
    t->tok_len = malloc(nv * sizeof *t->tok_len);
    t->type = malloc(nv * sizeof *t->type);
    if (!t->arena || !t->tok || !t->tok_len || !t->type || !hmap_init(&t->vocab, nv) || !hmap_init(&t->merges, nm))
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    char *a = t->arena;
    cur = toks->arr_off;
    for (size_t k = 0; k < nv; k++) {
        gsink__gguf_str s = gsink__gguf_next_str(g, &cur);
        if (s.len > UINT32_MAX) return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: token %zu is too long", k);
        memcpy(a, s.ptr, s.len);
        a[s.len] = '\0';
        t->tok[k] = a;
        t->tok_len[k] = (uint32_t)s.len;
        t->type[k] = types ? (int32_t)gsink__rd32(g->file.data + types->arr_off + 4 * k) : TOK_NORMAL;
        hmap_put(&t->vocab, a, s.len, (int32_t)k);
        a += s.len + 1;
    }
    cur = merges->arr_off;
    for (size_t k = 0; k < nm; k++) {
        gsink__gguf_str s = gsink__gguf_next_str(g, &cur);
        memcpy(a, s.ptr, s.len);
        a[s.len] = '\0';
        hmap_put(&t->merges, a, s.len, (int32_t)k);
        a += s.len + 1;
    }
    t->bos = t->eos = -1;
    const gsink__gguf_kv *kv;
    if ((kv = gsink__gguf_find(g, "tokenizer.ggml.bos_token_id")) && kv->type != GSINK_GGUF_STRING &&
        kv->type != GSINK_GGUF_ARRAY && kv->u < nv)
        t->bos = (int32_t)kv->u;
    if ((kv = gsink__gguf_find(g, "tokenizer.ggml.eos_token_id")) && kv->type != GSINK_GGUF_STRING &&
        kv->type != GSINK_GGUF_ARRAY && kv->u < nv)
        t->eos = (int32_t)kv->u;
    /* Unknown token: tokenizer.ggml.unknown_token_id, else the first token
     * of type UNKNOWN. Byte fallback: when the vocabulary has BYTE tokens,
     * the <0xXX> tokens by text (as HF's BPE byte_fallback looks them up). */
    t->unk = -1;
    if ((kv = gsink__gguf_find(g, "tokenizer.ggml.unknown_token_id")) && kv->type != GSINK_GGUF_STRING &&
        kv->type != GSINK_GGUF_ARRAY && kv->u < nv)
        t->unk = (int32_t)kv->u;
    for (size_t k = 0; k < nv && t->unk < 0; k++)
        if (t->type[k] == TOK_UNKNOWN) t->unk = (int32_t)k;
    for (size_t k = 0; k < nv && !t->byte_fallback; k++)
        if (t->type[k] == TOK_BYTE) t->byte_fallback = 1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_tok[b] = t->byte_fallback ? hmap_get(&t->vocab, name, 6) : -1;
    }
    byte_map(t);
    return build_matcher(t);
}

gsink_status gsink__tokenizer_from_gguf(gsink__gguf *g, gsink_tokenizer **out)
{
    *out = NULL;
    gsink_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    gsink_status st = build(g, t);
    if (st) {
        gsink_tokenizer_free(t);
        return st;
    }
    *out = t;
    return GSINK_OK;
}

gsink_status gsink_tokenizer_load_gguf(const char *path, gsink_tokenizer **out)
{
    if (!out) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!path) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "path is NULL");
    gsink__gguf g;
    gsink_status st = gsink__gguf_open(path, &g, NULL);
    if (st) return st;
    st = gsink__tokenizer_from_gguf(&g, out);
    gsink__gguf_close(&g);
    return st;
}

const char *gsink_tokenizer_errmsg(const gsink_tokenizer *t)
{
    if (!t) return "";
    return gsink__used_elsewhere(&t->owner) ? GSINK__BUSY_MSG("tokenizer") : t->errmsg;
}

gsink_status gsink_tokenizer_vocab_size(const gsink_tokenizer *t, int32_t *n)
{
    if (!t || !n) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "tokenizer or n is NULL");
    GSINK_USE(t, "tokenizer");
    *n = t->n_vocab;
    return GSINK_OK;
}

gsink_status gsink_tokenizer_special(const gsink_tokenizer *t, int32_t *bos, int32_t *eos)
{
    if (!t) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "tokenizer is NULL");
    GSINK_USE(t, "tokenizer");
    if (bos) *bos = t->bos;
    if (eos) *eos = t->eos;
    return GSINK_OK;
}

/* ---- encoding ------------------------------------------------------------ */

/* A candidate merge of symbol `left` with the symbol after it; valid while
 * both symbols still hold the lengths they had when it was queued. */
typedef struct merge_cand {
    int32_t rank;
    uint32_t left, right, len_left, len_right;
} merge_cand;

typedef struct enc {
    gsink_tokenizer *t;
    int32_t *ids;
    size_t cap, n;
    char *word;        /* byte-level image of the current piece */
    size_t word_cap;
    /* BPE symbols of the piece, a linked list over the initial positions:
     * symbol i covers word[sym_off[i], sym_off[i] + sym_len[i]); sym_len 0
     * marks a symbol merged into its left neighbour. */
    uint32_t *sym_off, *sym_len, *sym_prev, *sym_next;
    size_t off_cap, len_cap, prev_cap, next_cap;
    merge_cand *heap; /* min-heap on (rank, left) */
    size_t heap_cap, heap_n;
    char *pair;
    size_t pair_cap;
    const uint8_t *text; /* the whole input, for byte offsets in messages */
    int stop;            /* STOP_OOM or STOP_UNENCODABLE: give up */
    size_t bad_off;      /* STOP_UNENCODABLE: offset of the first byte with no token */
} enc;

enum { STOP_OOM = 1, STOP_UNENCODABLE = 2 };

static void emit(enc *e, int32_t id)
{
    if (e->n < e->cap) e->ids[e->n] = id;
    e->n++;
}

static int reserve(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 1;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np) return 0;
    *p = np;
    *cap = nc;
    return 1;
}

/* Merge rank of symbols a and b (adjacent), -1 if the pair is no merge. */
static int32_t pair_rank(enc *e, uint32_t a, uint32_t b)
{
    uint32_t la = e->sym_len[a], lb = e->sym_len[b];
    size_t need = (size_t)la + lb + 1;
    if (!reserve((void **)&e->pair, &e->pair_cap, need, 1)) { e->stop = STOP_OOM; return -1; }
    memcpy(e->pair, e->word + e->sym_off[a], la);
    e->pair[la] = ' ';
    memcpy(e->pair + la + 1, e->word + e->sym_off[b], lb);
    return hmap_get(&e->t->merges, e->pair, need);
}

static bool cand_less(const merge_cand *x, const merge_cand *y)
{
    return x->rank != y->rank ? x->rank < y->rank : x->left < y->left;
}

/* Queues the merge of a and b if the pair has a rank. */
static void heap_push(enc *e, uint32_t a, uint32_t b)
{
    int32_t r = pair_rank(e, a, b);
    if (r < 0) return;
    if (!reserve((void **)&e->heap, &e->heap_cap, e->heap_n + 1, sizeof(merge_cand))) { e->stop = STOP_OOM; return; }
    merge_cand c = {r, a, b, e->sym_len[a], e->sym_len[b]};
    size_t i = e->heap_n++;
    while (i > 0 && cand_less(&c, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = c;
}

static merge_cand heap_pop(enc *e)
{
    merge_cand top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!cand_less(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n > 0) e->heap[i] = last;
    return top;
}

/* BPE on one pre-tokenized piece of raw bytes: repeatedly merges the adjacent
 * pair of lowest merge rank, the leftmost among equals (as the HF tokenizers
 * do), in O(n log n) with a heap of candidates that are checked when popped. */
static void bpe_piece(enc *e, const uint8_t *s, size_t n)
{
    gsink_tokenizer *t = e->t;
    if (n == 0) return;
    if (n > UINT32_MAX / 8) { e->stop = STOP_OOM; return; }
    if (!reserve((void **)&e->word, &e->word_cap, n * 2 + 1, 1)) { e->stop = STOP_OOM; return; }
    if (!reserve((void **)&e->sym_off, &e->off_cap, n, sizeof(uint32_t)) ||
        !reserve((void **)&e->sym_len, &e->len_cap, n, sizeof(uint32_t)) ||
        !reserve((void **)&e->sym_prev, &e->prev_cap, n, sizeof(uint32_t)) ||
        !reserve((void **)&e->sym_next, &e->next_cap, n, sizeof(uint32_t))) {
        e->stop = STOP_OOM;
        return;
    }
    const uint32_t NONE = UINT32_MAX;
    size_t wl = 0, ns = 0;
    for (size_t k = 0; k < n; k++) {
        e->sym_off[ns] = (uint32_t)wl;
        size_t l = gsink__utf8_put(e->word + wl, t->byte2cp[s[k]]);
        e->sym_len[ns] = (uint32_t)l;
        e->sym_prev[ns] = ns ? (uint32_t)ns - 1 : NONE;
        e->sym_next[ns] = ns + 1 < n ? (uint32_t)ns + 1 : NONE;
        ns++;
        wl += l;
    }
    e->heap_n = 0;
    for (uint32_t i = 0; i + 1 < ns && !e->stop; i++) heap_push(e, i, i + 1);
    while (e->heap_n > 0 && !e->stop) {
        merge_cand c = heap_pop(e);
        uint32_t a = c.left, b = c.right;
        if (e->sym_len[a] != c.len_left || e->sym_len[b] != c.len_right || e->sym_next[a] != b)
            continue; /* one of the two has merged since */
        e->sym_len[a] += e->sym_len[b];
        e->sym_len[b] = 0;
        uint32_t nb = e->sym_next[b];
        e->sym_next[a] = nb;
        if (nb != NONE) e->sym_prev[nb] = a;
        if (e->sym_prev[a] != NONE) heap_push(e, e->sym_prev[a], a);
        if (nb != NONE) heap_push(e, a, nb);
    }
    for (uint32_t i = 0; i != NONE && !e->stop; i = e->sym_next[i]) {
        int32_t id = hmap_get(&t->vocab, e->word + e->sym_off[i], e->sym_len[i]);
        if (id >= 0) {
            emit(e, id);
            continue;
        }
        /* Not in the vocabulary: one token per byte image (one per input
         * byte: symbol i starts at byte i of the piece). An image with no
         * token takes the byte fallback tokens of its UTF-8 bytes, else the
         * unknown token (HF BPE's order, unknowns not fused), else the
         * input cannot be encoded: never drop it. */
        const char *p = e->word + e->sym_off[i];
        uint32_t left = e->sym_len[i];
        size_t at = (size_t)(s - e->text) + i;
        while (left > 0 && !e->stop) {
            uint32_t cp;
            size_t l = utf8_next((const uint8_t *)p, left, &cp);
            int32_t bid = hmap_get(&t->vocab, p, l);
            int all_bytes = 1;
            for (size_t q = 0; q < l; q++)
                if (t->byte_tok[(uint8_t)p[q]] < 0) all_bytes = 0;
            if (bid >= 0) {
                emit(e, bid);
            } else if (all_bytes) {
                for (size_t q = 0; q < l; q++) emit(e, t->byte_tok[(uint8_t)p[q]]);
            } else if (t->unk >= 0) {
                emit(e, t->unk);
            } else {
                e->stop = STOP_UNENCODABLE;
                e->bad_off = at;
            }
            p += l;
            left -= (uint32_t)l;
            at++;
        }
    }
}

/* GPT-2 regex over code points [a, b):
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void split_gpt2(enc *e, const uint8_t *s, const uint32_t *cp, const size_t *off, size_t a, size_t b)
{
    size_t i = a;
    while (i < b && !e->stop) {
        size_t j = i;
        uint32_t c = cp[i];
        if (c == '\'' && i + 1 < b) {
            uint32_t c1 = cp[i + 1];
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') j = i + 2;
            else if (i + 2 < b && ((c1 == 'r' && cp[i + 2] == 'e') || (c1 == 'v' && cp[i + 2] == 'e') ||
                                   (c1 == 'l' && cp[i + 2] == 'l')))
                j = i + 3;
        }
        if (j == i) {
            size_t k = i + (c == ' ' && i + 1 < b ? 1 : 0);
            int cl = char_class(cp[k]);
            if (cl != CL_SPACE && (k == i || c == ' ')) {
                /* ' ?X+' for X in {letter, number, other}: the optional space
                 * is taken only when followed by a run of the same class. */
                j = k;
                while (j < b && char_class(cp[j]) == cl) j++;
            } else {
                size_t r = i;
                while (r < b && char_class(cp[r]) == CL_SPACE) r++;
                if (r == i) r = i + 1; /* cannot happen: c is a space here */
                if (r == b || r - i == 1) j = r;
                else j = r - 1;
            }
        }
        bpe_piece(e, s + off[i], off[j] - off[i]);
        i = j;
    }
}

static void encode_text(enc *e, const uint8_t *s, size_t n)
{
    if (n == 0) return;
    uint32_t *cp = malloc(n * sizeof *cp);
    size_t *off = malloc((n + 1) * sizeof *off);
    if (!cp || !off) {
        free(cp);
        free(off);
        e->stop = STOP_OOM;
        return;
    }
    size_t nc = 0, p = 0;
    while (p < n) {
        off[nc] = p;
        p += utf8_next(s + p, n - p, &cp[nc]);
        nc++;
    }
    off[nc] = n;
    if (e->t->pre == PRE_SMOLLM) {
        /* Digits pre-tokenizer (individual digits) before the GPT-2 regex. */
        size_t a = 0;
        for (size_t k = 0; k < nc; k++) {
            if (char_class(cp[k]) == CL_NUMBER) {
                split_gpt2(e, s, cp, off, a, k);
                split_gpt2(e, s, cp, off, k, k + 1);
                a = k + 1;
            }
        }
        split_gpt2(e, s, cp, off, a, nc);
    } else {
        split_gpt2(e, s, cp, off, 0, nc);
    }
    free(cp);
    free(off);
}

gsink_status gsink_tokenizer_encode(gsink_tokenizer *t, const char *text, size_t text_len, unsigned flags,
                                    int32_t *ids, size_t capacity, size_t *n_ids)
{
    if (!t) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "tokenizer is NULL");
    GSINK_USE(t, "tokenizer");
    gsink__clear(t->errmsg);
    if (!n_ids) return gsink__fail(t->errmsg, GSINK_ERR_NULL_ARGUMENT, "n_ids is NULL");
    *n_ids = 0;
    if (!text && text_len) return gsink__fail(t->errmsg, GSINK_ERR_NULL_ARGUMENT, "text is NULL");
    if (!ids && capacity) return gsink__fail(t->errmsg, GSINK_ERR_NULL_ARGUMENT, "ids is NULL");
    if (flags & ~(GSINK_ENCODE_PARSE_SPECIAL | GSINK_ENCODE_ADD_BOS))
        return gsink__fail(t->errmsg, GSINK_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", flags);
    enc e;
    memset(&e, 0, sizeof e);
    e.t = t;
    e.ids = ids;
    e.cap = capacity;
    if ((flags & GSINK_ENCODE_ADD_BOS) && t->bos >= 0) emit(&e, t->bos);
    const uint8_t *s = (const uint8_t *)text;
    e.text = s;
    size_t start = 0;
    int user_only = !(flags & GSINK_ENCODE_PARSE_SPECIAL);
    if (text_len > 0 && (user_only ? t->n_user : t->n_special) > 0) {
        int32_t *longest = text_len <= SIZE_MAX / sizeof *longest ? malloc(text_len * sizeof *longest) : NULL;
        if (!longest) {
            e.stop = STOP_OOM;
        } else {
            match_added(t, s, text_len, longest);
            for (size_t i = 0; i < text_len && !e.stop;) {
                int32_t hit = longest[i];
                if (hit < 0) {
                    i++;
                    continue;
                }
                if (user_only && t->type[hit] == TOK_CONTROL) {
                    /* Control tokens are text here, but (as in HF with
                     * encode_special_tokens) a control token's match still
                     * wins its span over the added tokens overlapping it. */
                    i += t->tok_len[hit];
                    continue;
                }
                encode_text(&e, s + start, i - start);
                emit(&e, hit);
                i += t->tok_len[hit];
                start = i;
            }
            free(longest);
        }
    }
    if (!e.stop) encode_text(&e, s + start, text_len - start);
    free(e.word);
    free(e.sym_off);
    free(e.sym_len);
    free(e.sym_prev);
    free(e.sym_next);
    free(e.heap);
    free(e.pair);
    if (e.stop == STOP_OOM) return gsink__fail(t->errmsg, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    if (e.stop == STOP_UNENCODABLE)
        return gsink__fail(t->errmsg, GSINK_ERR_INVALID_ARGUMENT,
                           "cannot encode byte %zu (0x%02X): the vocabulary has no token for it, no byte "
                           "fallback tokens and no unknown token",
                           e.bad_off, (unsigned)s[e.bad_off]);
    *n_ids = e.n;
    if (e.n > capacity)
        return gsink__fail(t->errmsg, GSINK_ERR_BUFFER_TOO_SMALL, "%zu ids needed, capacity is %zu", e.n, capacity);
    return GSINK_OK;
}

/* ---- decoding ------------------------------------------------------------ */

/* Writes the bytes of byte-level image text p[0, n) at buf + *o (counting
 * what does not fit). Unless final, stops before a UTF-8 sequence that may
 * still be incomplete; returns the bytes consumed. */
static size_t put_image(const gsink_tokenizer *t, const uint8_t *p, size_t n, int final, char *buf,
                        size_t buf_size, size_t *o)
{
    size_t k = 0;
    while (k < n) {
        uint8_t c = p[k];
        size_t want = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF8 ? 4 : 1;
        if (!final && want > n - k) break;
        uint32_t cp;
        size_t l = utf8_next(p + k, n - k, &cp);
        if (cp < 512 && t->cp2byte[cp] >= 0) {
            if (buf && *o + 1 < buf_size) buf[*o] = (char)t->cp2byte[cp];
            (*o)++;
        } else {
            if (buf && *o + l < buf_size) memcpy(buf + *o, p + k, l);
            *o += l;
        }
        k += l;
    }
    return k;
}

/* The byte a byte fallback token <0xXX> stands for (the encoder's lookup is
 * by text, so any non-added token of that text), -1 for other tokens. */
static int byte_token_value(const gsink_tokenizer *t, int32_t id)
{
    const char *s = t->tok[id];
    if (!t->byte_fallback || t->type[id] == TOK_CONTROL || t->type[id] == TOK_USER_DEFINED || t->tok_len[id] != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>')
        return -1;
    int hi = s[3] >= '0' && s[3] <= '9' ? s[3] - '0' : s[3] >= 'A' && s[3] <= 'F' ? s[3] - 'A' + 10 : -1;
    int lo = s[4] >= '0' && s[4] <= '9' ? s[4] - '0' : s[4] >= 'A' && s[4] <= 'F' ? s[4] - 'A' + 10 : -1;
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

gsink_status gsink_tokenizer_decode(gsink_tokenizer *t, const int32_t *ids, size_t n_ids, char *buf,
                                    size_t buf_size, size_t *len)
{
    if (!t) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "tokenizer is NULL");
    GSINK_USE(t, "tokenizer");
    gsink__clear(t->errmsg);
    if (!ids && n_ids) return gsink__fail(t->errmsg, GSINK_ERR_NULL_ARGUMENT, "ids is NULL");
    if (!buf && buf_size) return gsink__fail(t->errmsg, GSINK_ERR_NULL_ARGUMENT, "buf is NULL");
    size_t o = 0;
    /* Byte fallback tokens give the UTF-8 bytes of byte images (what the
     * encoder, like HF's, falls back on): a run of them is image text. */
    uint8_t pend[4];
    size_t np = 0;
    for (size_t k = 0; k < n_ids; k++) {
        int32_t id = ids[k];
        if (id < 0 || id >= t->n_vocab)
            return gsink__fail(t->errmsg, GSINK_ERR_TOKEN_OUT_OF_RANGE, "token id %d at %zu is outside [0, %d)",
                               id, k, t->n_vocab);
        int bv = byte_token_value(t, id);
        if (bv >= 0) {
            pend[np++] = (uint8_t)bv;
            size_t used = put_image(t, pend, np, np == sizeof pend, buf, buf_size, &o);
            memmove(pend, pend + used, np - used);
            np -= used;
            continue;
        }
        if (np) np -= put_image(t, pend, np, 1, buf, buf_size, &o);
        const uint8_t *p = (const uint8_t *)t->tok[id];
        size_t left = t->tok_len[id];
        if (t->type[id] == TOK_CONTROL || t->type[id] == TOK_USER_DEFINED) {
            if (buf && o + left < buf_size) memcpy(buf + o, p, left);
            o += left;
            continue;
        }
        put_image(t, p, left, 1, buf, buf_size, &o);
    }
    if (np) put_image(t, pend, np, 1, buf, buf_size, &o);
    if (len) *len = o;
    if (o + 1 > buf_size) {
        if (buf && buf_size) buf[0] = '\0';
        return gsink__fail(t->errmsg, GSINK_ERR_BUFFER_TOO_SMALL, "%zu bytes needed (plus NUL), buffer holds %zu",
                           o, buf_size);
    }
    buf[o] = '\0';
    return GSINK_OK;
}
