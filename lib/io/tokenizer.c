/* tokenizer.c - GPT-2 style byte-level BPE built from a GGUF's tokenizer.ggml.*
 * metadata or a HuggingFace tokenizer.json, and SentencePiece-style BPE
 * (Llama 2, Mistral 7B: characters as symbols, spaces as U+2581, byte
 * fallback) from a tokenizer.json (merge list) or a GGUF (merges by token
 * score, as sentencepiece). Pre-tokenizers (gpt2, smollm, llama3, qwen2,
 * tekken, o200k) are hand-written matchers for the regular expressions their
 * HF/llama.cpp definitions use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io_internal.h"
#include "unicode_tables.h"

enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_USER_DEFINED = 4, TOK_UNUSED = 5, TOK_BYTE = 6 };
enum { PRE_GPT2 = 0, PRE_SMOLLM = 1, PRE_LLAMA3 = 2, PRE_QWEN2 = 3, PRE_TEKKEN = 4, PRE_O200K = 5 };
/* Where a SentencePiece-style tokenizer puts a U+2581 before a segment of
 * text (the text between added tokens): SPM_NORM, the normalizer
 * Prepend("\u2581") of Llama 2's tokenizer.json: before every segment;
 * Metaspace prepend_scheme "always": before every segment that does not start
 * with one already; "first": the same, only for the segment at offset 0. */
enum { SPM_NONE = 0, SPM_NORM = 1, SPM_ALWAYS = 2, SPM_FIRST = 3 };
static const uint8_t META[3] = {0xE2, 0x96, 0x81}; /* U+2581, SentencePiece's space */

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
    int fold_long_s;        /* llama3/qwen2 (?i:'s...): U+017F folds to 's' as in Oniguruma */
    int ignore_merges;      /* HF BPE ignore_merges: a piece that is a token is that token */
    int hf_decode;          /* tokenizer.json: added tokens decode through the byte-level map */
    int nfc;                /* tokenizer.json normalizer NFC: text between added tokens is NFC'd */
    int spm;                /* SentencePiece-style BPE: symbols are characters, ' ' is U+2581 */
    int spm_prepend;        /* SPM_*: where a U+2581 is put before a segment */
    int spm_split;          /* Metaspace split: a piece begins at every U+2581 */
    int spm_words;          /* no token a merge can make has a U+2581 after another character:
                             * a piece may begin at every U+2581 that follows one (the ids are
                             * the same, the pieces words instead of whole segments) */
    int spm_strip;          /* decoder Strip(" ", 1, 0): the output's first space is dropped */
    int fuse_unk;           /* consecutive unknown symbols of a piece give one unknown token */
    int spm_lenient;        /* decoding a run of byte tokens: U+FFFD per invalid byte, the rest as
                             * it is (sentencepiece); 0: U+FFFD per byte when the run is not UTF-8 (HF) */
    int32_t *score_rank;    /* GGUF SentencePiece (no merge list): (n_vocab) rank of a NORMAL
                             * token as the result of a merge, by descending score (equal
                             * scores share a rank); -1 for other types. NULL: merges */
    uint8_t *in_model;      /* tokenizer.json: (n_vocab) 1 if model.vocab has the token (BPE
                             * looks up only those); NULL: every token */
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

/* A token of the BPE model's vocabulary by text (added-only tokens of a
 * tokenizer.json are not: HF's BPE model does not know them), -1 if none. */
static int32_t model_get(const gsink_tokenizer *t, const char *s, size_t n)
{
    int32_t id = hmap_get(&t->vocab, s, n);
    return id >= 0 && t->in_model && !t->in_model[id] ? -1 : id;
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

/* Whether a piece may begin at every U+2581 that follows another character
 * (spm_words): no token that BPE can make (a merge's result: a NORMAL token
 * with a score rank, or a model.vocab token of a tokenizer.json) has a
 * U+2581 right after a character other than U+2581, so no symbol ever spans
 * such a boundary. SentencePiece vocabularies (split_by_whitespace) have
 * none; Llama 2's whitespace-only tokens ("\u2581\u2581") are fine. */
static int spm_words_safe(const gsink_tokenizer *t)
{
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const uint8_t *p = (const uint8_t *)t->tok[id];
        size_t n = t->tok_len[id];
        int mergeable = t->score_rank ? t->score_rank[id] >= 0 : !t->in_model || t->in_model[id];
        if (!mergeable || n < 4) continue;
        for (size_t k = 1; k + 3 <= n; k++)
            if (memcmp(p + k, META, 3) == 0 && (k < 3 || memcmp(p + k - 3, META, 3) != 0)) return 0;
    }
    return 1;
}

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
    free(t->in_model);
    free(t->score_rank);
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

typedef struct scored { float score; int32_t id; } scored;

/* Descending score, then ascending id: a total order for the dense ranks. */
static int by_score(const void *x, const void *y)
{
    const scored *a = x, *b = y;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* A GGUF SentencePiece tokenizer as SentencePiece's BPE encodes (and
 * llama.cpp's SPM tokenizer, which follows it): any two adjacent symbols
 * whose concatenation is a NORMAL token merge, the highest score first, the
 * leftmost among equal scores; a U+2581 before each segment of text when
 * tokenizer.ggml.add_space_prefix (default true), dropped again by the
 * decoder; a run of unknown characters is one unknown token. */
static gsink_status gguf_spm(gsink__gguf *g, gsink_tokenizer *t, const gsink__gguf_kv *scores)
{
    const gsink__gguf_kv *kv;
    int prefix = 1;
    if ((kv = gsink__gguf_find(g, "tokenizer.ggml.add_space_prefix"))) {
        if (kv->type != GSINK_GGUF_BOOL)
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: tokenizer.ggml.add_space_prefix is not a bool");
        prefix = kv->u != 0;
    }
    if ((kv = gsink__gguf_find(g, "tokenizer.ggml.remove_extra_whitespaces")) && kv->type == GSINK_GGUF_BOOL && kv->u)
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "GGUF: tokenizer.ggml.remove_extra_whitespaces is not supported");
    size_t nv = (size_t)t->n_vocab, n = 0;
    const uint8_t *sc = g->file.data + scores->arr_off;
    scored *order = malloc(nv * sizeof *order);
    t->score_rank = malloc(nv * sizeof *t->score_rank);
    if (!order || !t->score_rank) {
        free(order);
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    }
    for (size_t k = 0; k < nv; k++) {
        float f;
        memcpy(&f, sc + 4 * k, 4);
        if (f != f) {
            free(order);
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: tokenizer.ggml.scores[%zu] is NaN", k);
        }
        t->score_rank[k] = -1;
        if (t->type[k] == TOK_NORMAL) order[n++] = (scored){f, (int32_t)k};
    }
    qsort(order, n, sizeof *order, by_score);
    for (size_t k = 0, rank = 0; k < n; k++) {
        if (k > 0 && order[k].score != order[k - 1].score) rank++;
        t->score_rank[order[k].id] = (int32_t)rank;
    }
    free(order);
    t->spm = 1;
    t->spm_prepend = prefix ? SPM_NORM : SPM_NONE;
    t->spm_strip = prefix;
    t->fuse_unk = 1; /* sentencepiece merges a run of unknown pieces into one */
    t->spm_lenient = 1;
    t->spm_words = spm_words_safe(t);
    return GSINK_OK;
}

static gsink_status build(gsink__gguf *g, gsink_tokenizer *t)
{
    const gsink__gguf_kv *model = gsink__gguf_find(g, "tokenizer.ggml.model");
    if (!model || model->type != GSINK_GGUF_STRING)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: missing tokenizer.ggml.model");
    /* 'gpt2': byte-level BPE with a merge list; 'llama': SentencePiece BPE
     * (Llama 2, Mistral 7B): merges by token score, spaces as U+2581 */
    int spm = model->s.len == 5 && memcmp(model->s.ptr, "llama", 5) == 0;
    if (!spm && !(model->s.len == 4 && memcmp(model->s.ptr, "gpt2", 4) == 0))
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                           "tokenizer model '%.*s' is not supported (byte-level BPE 'gpt2' and SentencePiece BPE "
                           "'llama' are)",
                           (int)(model->s.len > 32 ? 32 : model->s.len), model->s.ptr);
    const gsink__gguf_kv *pre = gsink__gguf_find(g, "tokenizer.ggml.pre");
    t->pre = PRE_GPT2;
    if (!spm && pre && pre->type == GSINK_GGUF_STRING) {
        size_t pl = (size_t)pre->s.len;
#define PRE_IS(lit) (pl == sizeof(lit) - 1 && memcmp(pre->s.ptr, lit, pl) == 0)
        if (PRE_IS("smollm")) t->pre = PRE_SMOLLM;
        else if (PRE_IS("llama-bpe") || PRE_IS("llama3") || PRE_IS("llama-v3"))
            t->pre = PRE_LLAMA3, t->ignore_merges = 1; /* as Llama 3's tokenizer.json (and llama.cpp) */
        else if (PRE_IS("chatglm-bpe") || PRE_IS("glm4"))
            t->pre = PRE_LLAMA3; /* GLM-4's regex is llama3's (llama.cpp spells (?i:'s) '[sS]) */
        else if (PRE_IS("qwen2") || PRE_IS("deepseek-r1-qwen"))
            t->pre = PRE_QWEN2;
        else if (PRE_IS("tekken"))
            t->pre = PRE_TEKKEN;
        else if (PRE_IS("gpt-4o"))
            t->pre = PRE_O200K; /* llama.cpp's name for tiktoken's o200k regex */
        else if ((pre->s.len == 4 && memcmp(pre->s.ptr, "gpt2", 4) == 0) ||
                 (pre->s.len == 7 && memcmp(pre->s.ptr, "default", 7) == 0))
            t->pre = PRE_GPT2;
        else
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                               "pre-tokenizer '%.*s' is not supported (gpt2, smollm, llama-bpe, qwen2, "
                               "chatglm-bpe, tekken, gpt-4o)",
                               (int)(pre->s.len > 32 ? 32 : pre->s.len), pre->s.ptr);
#undef PRE_IS
    }
    const gsink__gguf_kv *toks = gsink__gguf_find(g, "tokenizer.ggml.tokens");
    const gsink__gguf_kv *merges = spm ? NULL : gsink__gguf_find(g, "tokenizer.ggml.merges");
    const gsink__gguf_kv *types = gsink__gguf_find(g, "tokenizer.ggml.token_type");
    const gsink__gguf_kv *scores = spm ? gsink__gguf_find(g, "tokenizer.ggml.scores") : NULL;
    if (!toks || toks->type != GSINK_GGUF_ARRAY || toks->arr_type != GSINK_GGUF_STRING || toks->arr_n == 0)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: tokenizer.ggml.tokens missing or not a string array");
    if (toks->arr_n > INT32_MAX)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: %llu tokens is too many",
                           (unsigned long long)toks->arr_n);
    if (!spm && (!merges || merges->type != GSINK_GGUF_ARRAY || merges->arr_type != GSINK_GGUF_STRING))
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: tokenizer.ggml.merges missing or not a string array");
    if (merges && merges->arr_n > INT32_MAX)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "GGUF: too many merges");
    if (spm && (!scores || scores->type != GSINK_GGUF_ARRAY || scores->arr_type != GSINK_GGUF_FLOAT32 ||
                scores->arr_n != toks->arr_n))
        return gsink__fail(NULL, GSINK_ERR_FORMAT,
                           "GGUF: a SentencePiece tokenizer needs tokenizer.ggml.scores, a float32 array with one "
                           "entry per token");
    if (types && (types->type != GSINK_GGUF_ARRAY || types->arr_type != GSINK_GGUF_INT32 ||
                  types->arr_n != toks->arr_n))
        return gsink__fail(NULL, GSINK_ERR_FORMAT,
                           "GGUF: tokenizer.ggml.token_type must be an int32 array with one entry per token");
    size_t nv = (size_t)toks->arr_n, nm = merges ? (size_t)merges->arr_n : 0;
    t->n_vocab = (int32_t)nv;
    /* Strings were bounds-checked by the parser: their total fits in the file. */
    size_t total = 0, cur = toks->arr_off;
    for (size_t k = 0; k < nv; k++) total += gsink__gguf_next_str(g, &cur).len + 1;
    cur = merges ? merges->arr_off : 0;
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
    cur = merges ? merges->arr_off : 0;
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
    if (spm) {
        gsink_status st = gguf_spm(g, t, scores);
        if (st) return st;
    }
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
    /* SentencePiece-style segment being encoded (encode_spm): its input
     * bytes, its normalised copy and the U+2581 bytes put before it */
    const uint8_t *spm_in, *spm_norm;
    size_t spm_pre;
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

/* Merge rank of symbols a and b (adjacent), -1 if the pair is no merge: its
 * rank in the merge list, or (SentencePiece, score_rank) the score rank of
 * the NORMAL token their concatenation is. */
static int32_t pair_rank(enc *e, uint32_t a, uint32_t b)
{
    uint32_t la = e->sym_len[a], lb = e->sym_len[b];
    size_t need = (size_t)la + lb + 1;
    if (e->t->score_rank) { /* the two are adjacent in word */
        int32_t id = hmap_get(&e->t->vocab, e->word + e->sym_off[a], (size_t)la + lb);
        return id >= 0 ? e->t->score_rank[id] : -1;
    }
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

/* The input offset of byte pos of the normalised SentencePiece-style
 * segment (encode_spm: spaces became 3 bytes, spm_pre bytes went first). */
static size_t spm_offset(const enc *e, size_t pos)
{
    size_t i = 0, j = e->spm_pre;
    while (j < pos) j += e->spm_in[i++] == ' ' ? 3 : 1;
    return (size_t)(e->spm_in - e->text) + i;
}

/* BPE on one pre-tokenized piece: repeatedly merges the adjacent pair of
 * lowest merge rank, the leftmost among equals (as the HF tokenizers do), in
 * O(n log n) with a heap of candidates that are checked when popped.
 * Byte-level (chars 0): s is raw input, one symbol per byte image.
 * SentencePiece-style (chars 1): s is a piece of the normalised segment
 * (e->spm_norm), one symbol per UTF-8 character. */
static void bpe_piece(enc *e, const uint8_t *s, size_t n, int chars)
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
    for (size_t k = 0; k < n; ns++) {
        e->sym_off[ns] = (uint32_t)wl;
        size_t l;
        if (chars) {
            uint32_t cp;
            l = utf8_next(s + k, n - k, &cp);
            memcpy(e->word + wl, s + k, l);
            k += l;
        } else {
            l = gsink__utf8_put(e->word + wl, t->byte2cp[s[k]]);
            k++;
        }
        e->sym_len[ns] = (uint32_t)l;
        e->sym_prev[ns] = ns ? (uint32_t)ns - 1 : NONE;
        e->sym_next[ns] = NONE;
        if (ns) e->sym_next[ns - 1] = (uint32_t)ns;
        wl += l;
    }
    if (t->ignore_merges) {
        int32_t whole = model_get(t, e->word, wl);
        if (whole >= 0) {
            emit(e, whole);
            return;
        }
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
    int prev_unk = 0; /* the last token emitted for this piece is the unknown token */
    for (uint32_t i = 0; i != NONE && !e->stop; i = e->sym_next[i]) {
        int32_t id = model_get(t, e->word + e->sym_off[i], e->sym_len[i]);
        if (id >= 0) {
            emit(e, id);
            prev_unk = 0;
            continue;
        }
        /* Not in the vocabulary: one token per character (byte-level: per
         * byte image, one per input byte, so symbol i starts at byte i of
         * the piece). A character with no token takes the byte fallback
         * tokens of its UTF-8 bytes, else the unknown token (HF BPE's order;
         * a run of them is one with fuse_unk), else the input cannot be
         * encoded: never drop it. */
        const char *p = e->word + e->sym_off[i];
        uint32_t left = e->sym_len[i];
        size_t at = chars ? 0 : (size_t)(s - e->text) + i;
        while (left > 0 && !e->stop) {
            uint32_t cp;
            size_t l = utf8_next((const uint8_t *)p, left, &cp);
            int32_t bid = model_get(t, p, l);
            int all_bytes = 1;
            for (size_t q = 0; q < l; q++)
                if (t->byte_tok[(uint8_t)p[q]] < 0) all_bytes = 0;
            if (bid >= 0) {
                emit(e, bid);
                prev_unk = 0;
            } else if (all_bytes) {
                for (size_t q = 0; q < l; q++) emit(e, t->byte_tok[(uint8_t)p[q]]);
                prev_unk = 0;
            } else if (t->unk >= 0) {
                if (!(t->fuse_unk && prev_unk)) emit(e, t->unk);
                prev_unk = 1;
            } else {
                e->stop = STOP_UNENCODABLE;
                e->bad_off = chars ? spm_offset(e, (size_t)(s - e->spm_norm) + (size_t)(p - e->word)) : at;
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
        bpe_piece(e, s + off[i], off[j] - off[i], 0);
        i = j;
    }
}

/* ---- NFC (tokenizer.json's NFC normalizer) --------------------------------
 * Canonical decomposition, canonical ordering, canonical composition (UAX
 * #15) with the tables of unicode_tables.h; Hangul algorithmically. Bytes
 * that are not UTF-8 pass through unchanged (as 0x110000 + byte). */

enum { H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7, H_LCOUNT = 19,
       H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = 588, H_SCOUNT = 11172 };

static int ccc_of(uint32_t c)
{
    size_t lo = 0, hi = sizeof gsink_uni_ccc / sizeof gsink_uni_ccc[0];
    if (c < 0x300) return 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < gsink_uni_ccc[mid][0]) hi = mid;
        else if (c > gsink_uni_ccc[mid][1]) lo = mid + 1;
        else return (int)gsink_uni_ccc[mid][2];
    }
    return 0;
}

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b > H_TBASE &&
        b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    size_t lo = 0, hi = sizeof gsink_uni_comp / sizeof gsink_uni_comp[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *m = gsink_uni_comp[mid];
        if (a < m[0] || (a == m[0] && b < m[1])) hi = mid;
        else if (a > m[0] || b > m[1]) lo = mid + 1;
        else return m[2];
    }
    return 0;
}

/* Appends the canonical decomposition of c to out at *n (at most 4 code
 * points, the longest canonical decomposition). */
static void decompose(uint32_t c, uint32_t *out, size_t *n)
{
    if (c >= H_SBASE && c < H_SBASE + H_SCOUNT) {
        uint32_t si = c - H_SBASE;
        out[(*n)++] = H_LBASE + si / H_NCOUNT;
        out[(*n)++] = H_VBASE + (si % H_NCOUNT) / H_TCOUNT;
        if (si % H_TCOUNT) out[(*n)++] = H_TBASE + si % H_TCOUNT;
        return;
    }
    if (c >= 0xC0 && c < 0x110000) {
        size_t lo = 0, hi = sizeof gsink_uni_decomp / sizeof gsink_uni_decomp[0];
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (c < gsink_uni_decomp[mid][0]) hi = mid;
            else if (c > gsink_uni_decomp[mid][0]) lo = mid + 1;
            else {
                for (uint32_t k = 0; k < gsink_uni_decomp[mid][2]; k++)
                    out[(*n)++] = gsink_uni_decomp_data[gsink_uni_decomp[mid][1] + k];
                return;
            }
        }
    }
    out[(*n)++] = c;
}

/* NFC of s[0, n) in a malloc'd buffer (*out, *out_n); NULL when s is
 * unchanged by NFC for certain (no code point >= U+0300), or out of memory
 * (*oom set). */
static char *nfc_text(const uint8_t *s, size_t n, size_t *out_n, int *oom)
{
    size_t k = 0;
    while (k < n && s[k] < 0xCC) k++; /* lead bytes below 0xCC: code points below U+0300 */
    if (k == n) return NULL;
    uint32_t *cp = n <= SIZE_MAX / (4 * sizeof *cp) ? malloc(4 * n * sizeof *cp) : NULL;
    char *o = n <= SIZE_MAX / 32 ? malloc(16 * n + 1) : NULL;
    if (!cp || !o) {
        free(cp);
        free(o);
        *oom = 1;
        return NULL;
    }
    size_t m = 0;
    for (size_t p = 0; p < n;) {
        uint32_t c;
        size_t l = utf8_next(s + p, n - p, &c);
        if (c == 0xFFFD && !(l == 3 && s[p] == 0xEF)) c = 0x110000u + s[p]; /* not UTF-8: keep the byte */
        decompose(c, cp, &m);
        p += l;
    }
    /* Canonical ordering: a stable sort of each run of nonzero classes. */
    for (size_t i = 1; i < m; i++) {
        int ci = ccc_of(cp[i]);
        if (!ci) continue;
        size_t j = i;
        uint32_t c = cp[i];
        while (j > 0 && ccc_of(cp[j - 1]) > ci) {
            cp[j] = cp[j - 1];
            j--;
        }
        cp[j] = c;
    }
    /* Composition: each character with the last starter unless blocked. */
    size_t w = 0, starter = SIZE_MAX;
    int last = -1; /* class of the last character after the starter; -1: none */
    for (size_t i = 0; i < m; i++) {
        uint32_t c = cp[i];
        int cc = ccc_of(c);
        if (starter != SIZE_MAX && (last == -1 || last < cc)) {
            uint32_t comp = compose_pair(cp[starter], c);
            if (comp) {
                cp[starter] = comp;
                continue;
            }
        }
        if (cc == 0) {
            starter = w;
            last = -1;
        } else {
            last = cc;
        }
        cp[w++] = c;
    }
    size_t on = 0;
    for (size_t i = 0; i < w; i++) {
        if (cp[i] >= 0x110000u) o[on++] = (char)(cp[i] - 0x110000u);
        else on += gsink__utf8_put(o + on, cp[i]);
    }
    free(cp);
    *out_n = on;
    return o;
}

static int is_nl(uint32_t c) { return c == '\r' || c == '\n'; }

static int lower_is(uint32_t c, char want, int fold_long_s)
{
    if (c < 0x80) return (char)(c | 0x20) == want && ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
    return fold_long_s && want == 's' && c == 0x17F; /* LATIN SMALL LETTER LONG S folds to s */
}

/* ' ?[^\s\p{L}\p{N}]+[\r\n]*' at i (Tekken / o200k: [\r\n/]* with slash), where
 * cp[i] is such a symbol or a space before one: the end of the match. */
static size_t match_symbols(const uint32_t *cp, size_t i, size_t b, int slash)
{
    size_t j = char_class(cp[i]) == CL_OTHER ? i : i + 1;
    while (j < b && char_class(cp[j]) == CL_OTHER) j++;
    while (j < b && (is_nl(cp[j]) || (slash && cp[j] == '/'))) j++;
    return j;
}

/* The whitespace alternatives at a space cp[i]: \s*[\r\n]+ ends after the
 * run's last newline; else \s+(?!\S) leaves the run's last space to what
 * follows; else \s+. */
static size_t match_spaces(const uint32_t *cp, size_t i, size_t b)
{
    size_t r = i, last_nl = SIZE_MAX;
    while (r < b && char_class(cp[r]) == CL_SPACE) {
        if (is_nl(cp[r])) last_nl = r;
        r++;
    }
    if (last_nl != SIZE_MAX) return last_nl + 1;
    return r == b || r - i == 1 ? r : r - 1;
}

/* Llama 3 regex over code points [a, b) (max_digits 3), Qwen2's with
 * max_digits 1:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *    ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * Alternatives are tried in order at each position (leftmost-first). */
static void split_llama3(enc *e, const uint8_t *s, const uint32_t *cp, const size_t *off, size_t a, size_t b,
                         size_t max_digits)
{
    int fold = e->t->fold_long_s;
    size_t i = a;
    while (i < b && !e->stop) {
        size_t j = i;
        uint32_t c = cp[i];
        int cl = char_class(c);
        if (c == '\'' && i + 1 < b) {
            uint32_t c1 = cp[i + 1];
            if (lower_is(c1, 's', fold) || lower_is(c1, 't', fold) || lower_is(c1, 'm', fold) ||
                lower_is(c1, 'd', fold))
                j = i + 2;
            else if (i + 2 < b && ((lower_is(c1, 'r', fold) && lower_is(cp[i + 2], 'e', fold)) ||
                                   (lower_is(c1, 'v', fold) && lower_is(cp[i + 2], 'e', fold)) ||
                                   (lower_is(c1, 'l', fold) && lower_is(cp[i + 2], 'l', fold))))
                j = i + 3;
        }
        if (j == i) {
            if (cl == CL_LETTER || (!is_nl(c) && cl != CL_NUMBER && i + 1 < b && char_class(cp[i + 1]) == CL_LETTER)) {
                /* [^\r\n\p{L}\p{N}]?\p{L}+ */
                j = cl == CL_LETTER ? i : i + 1;
                while (j < b && char_class(cp[j]) == CL_LETTER) j++;
            } else if (cl == CL_NUMBER) {
                while (j < b && j - i < max_digits && char_class(cp[j]) == CL_NUMBER) j++;
            } else if (cl == CL_OTHER || (c == ' ' && i + 1 < b && char_class(cp[i + 1]) == CL_OTHER)) {
                j = match_symbols(cp, i, b, 0);
            } else {
                j = match_spaces(cp, i, b);
            }
        }
        bpe_piece(e, s + off[i], off[j] - off[i], 0);
        i = j;
    }
}

/* The letter classes of the Tekken / o200k regexes: [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
 * ("upper") and [\p{Ll}\p{Lm}\p{Lo}\p{M}] ("lower"). */
static int is_upperish(uint32_t c)
{
    if (c < 0x80) return c >= 'A' && c <= 'Z';
    return in_table(gsink_uni_upperish, sizeof gsink_uni_upperish / sizeof gsink_uni_upperish[0], c);
}

static int is_lowerish(uint32_t c)
{
    if (c < 0x80) return c >= 'a' && c <= 'z';
    return in_table(gsink_uni_lowerish, sizeof gsink_uni_lowerish / sizeof gsink_uni_lowerish[0], c);
}

#define NO_MATCH SIZE_MAX

/* U*L+ at p (U, L: is_upperish, is_lowerish) as a backtracking engine finds
 * it: the longest U run that a L follows, then the L run; NO_MATCH if none. */
static size_t match_ul(const uint32_t *cp, size_t p, size_t b)
{
    size_t k = p;
    while (k < b && is_upperish(cp[k])) k++;
    for (;; k--) {
        if (k < b && is_lowerish(cp[k])) {
            while (k < b && is_lowerish(cp[k])) k++;
            return k;
        }
        if (k == p) return NO_MATCH;
    }
}

/* U+L* at p: the U run, then the L run; NO_MATCH without a U at p. */
static size_t match_u_l(const uint32_t *cp, size_t p, size_t b)
{
    size_t k = p;
    while (k < b && is_upperish(cp[k])) k++;
    if (k == p) return NO_MATCH;
    while (k < b && is_lowerish(cp[k])) k++;
    return k;
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d) at i: its end, or i. */
static size_t match_contraction(const uint32_t *cp, size_t i, size_t b)
{
    if (cp[i] != '\'' || i + 1 >= b) return i;
    uint32_t c1 = cp[i + 1];
    if (lower_is(c1, 's', 1) || lower_is(c1, 't', 1) || lower_is(c1, 'm', 1) || lower_is(c1, 'd', 1)) return i + 2;
    if (i + 2 < b && ((lower_is(c1, 'r', 1) && lower_is(cp[i + 2], 'e', 1)) ||
                      (lower_is(c1, 'v', 1) && lower_is(cp[i + 2], 'e', 1)) ||
                      (lower_is(c1, 'l', 1) && lower_is(cp[i + 2], 'l', 1))))
        return i + 3;
    return i;
}

/* Mistral's Tekken regex over code points [a, b):
 *   [^\r\n\p{L}\p{N}]?U*L+|[^\r\n\p{L}\p{N}]?U+L*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|
 *   \s*[\r\n]+|\s+(?!\S)|\s+
 * with U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], L = [\p{Ll}\p{Lm}\p{Lo}\p{M}]; and
 * o200k's (o200k 1), where the first two alternatives end in an optional
 * (?i:'s|'t|'re|'ve|'m|'ll|'d) and numbers are \p{N}{1,3}. Alternatives are
 * tried in order, each optional prefix first with it, then without, as a
 * backtracking engine does; marks (\p{M}) belong to U, L and the prefix. */
static void split_tekken(enc *e, const uint8_t *s, const uint32_t *cp, const size_t *off, size_t a, size_t b,
                         int o200k)
{
    size_t i = a;
    while (i < b && !e->stop) {
        uint32_t c = cp[i];
        int cl = char_class(c);
        int pre = !is_nl(c) && cl != CL_LETTER && cl != CL_NUMBER; /* [^\r\n\p{L}\p{N}] */
        size_t j = NO_MATCH;
        if (pre && i + 1 < b) j = match_ul(cp, i + 1, b);
        if (j == NO_MATCH) j = match_ul(cp, i, b);
        if (j == NO_MATCH && pre && i + 1 < b) j = match_u_l(cp, i + 1, b);
        if (j == NO_MATCH) j = match_u_l(cp, i, b);
        if (j != NO_MATCH) {
            if (o200k && j < b) j = match_contraction(cp, j, b);
        } else if (cl == CL_NUMBER) {
            j = i + 1;
            while (o200k && j < b && j - i < 3 && char_class(cp[j]) == CL_NUMBER) j++;
        } else if (cl == CL_OTHER || (c == ' ' && i + 1 < b && char_class(cp[i + 1]) == CL_OTHER)) {
            j = match_symbols(cp, i, b, 1);
        } else {
            j = match_spaces(cp, i, b);
        }
        bpe_piece(e, s + off[i], off[j] - off[i], 0);
        i = j;
    }
}

static void encode_text_raw(enc *e, const uint8_t *s, size_t n);

/* A segment of a SentencePiece-style tokenizer: its spaces become U+2581 and
 * one goes before it as spm_prepend says (the segment at offset 0 of the
 * input is the "first"); then BPE over characters on the whole segment, or
 * with spm_split on each piece that begins at a U+2581 (HF Metaspace's
 * MergedWithNext split: "a__b" -> "a", "_", "_b"). */
static void encode_spm(enc *e, const uint8_t *s, size_t n)
{
    const gsink_tokenizer *t = e->t;
    size_t spaces = 0, m = 0;
    for (size_t k = 0; k < n; k++) spaces += s[k] == ' ';
    if (n > (SIZE_MAX - 3) / 3) {
        e->stop = STOP_OOM;
        return;
    }
    uint8_t *w = malloc(n + 2 * spaces + 3);
    if (!w) {
        e->stop = STOP_OOM;
        return;
    }
    int meta_first = s[0] == ' ' || (n >= 3 && memcmp(s, META, 3) == 0);
    int prepend = t->spm_prepend == SPM_NORM ||
                  ((t->spm_prepend == SPM_ALWAYS || (t->spm_prepend == SPM_FIRST && s == e->text)) && !meta_first);
    if (prepend) {
        memcpy(w, META, 3);
        m = 3;
    }
    for (size_t k = 0; k < n; k++) {
        if (s[k] == ' ') {
            memcpy(w + m, META, 3);
            m += 3;
        } else {
            w[m++] = s[k];
        }
    }
    e->spm_in = s;
    e->spm_norm = w;
    e->spm_pre = prepend ? 3 : 0;
    size_t a = 0;
    if (t->spm_split || t->spm_words)
        for (size_t k = 1; k + 3 <= m && !e->stop; k++)
            if (memcmp(w + k, META, 3) == 0) {
                if (t->spm_split || k < 3 || memcmp(w + k - 3, META, 3) != 0) {
                    bpe_piece(e, w + a, k - a, 1);
                    a = k;
                }
                k += 2;
            }
    if (!e->stop) bpe_piece(e, w + a, m - a, 1);
    free(w);
}

static void encode_text(enc *e, const uint8_t *s, size_t n)
{
    if (n == 0) return;
    if (e->t->spm) {
        encode_spm(e, s, n);
        return;
    }
    if (e->t->nfc) {
        size_t nn = 0;
        int oom = 0;
        char *norm = nfc_text(s, n, &nn, &oom);
        if (oom) {
            e->stop = STOP_OOM;
            return;
        }
        if (norm) {
            /* Offsets in messages refer to the caller's text: a failure
             * inside the normalised copy reports the segment's start. */
            const uint8_t *text = e->text;
            e->text = (const uint8_t *)norm;
            encode_text_raw(e, (const uint8_t *)norm, nn);
            e->text = text;
            if (e->stop == STOP_UNENCODABLE) e->bad_off = (size_t)(s - text);
            free(norm);
            return;
        }
    }
    encode_text_raw(e, s, n);
}

static void encode_text_raw(enc *e, const uint8_t *s, size_t n)
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
    } else if (e->t->pre == PRE_LLAMA3 || e->t->pre == PRE_QWEN2) {
        split_llama3(e, s, cp, off, 0, nc, e->t->pre == PRE_LLAMA3 ? 3 : 1);
    } else if (e->t->pre == PRE_TEKKEN || e->t->pre == PRE_O200K) {
        split_tekken(e, s, cp, off, 0, nc, e->t->pre == PRE_O200K);
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

static int all_images(const gsink_tokenizer *t, const uint8_t *p, size_t n)
{
    for (size_t k = 0; k < n;) {
        uint32_t cp;
        k += utf8_next(p + k, n - k, &cp);
        if (cp >= 512 || t->cp2byte[cp] < 0) return 0;
    }
    return 1;
}

/* Appends n bytes at buf + *o (counting what does not fit); with *strip
 * set, a first byte ' ' is dropped (and *strip cleared by any byte). */
static void put_bytes(const uint8_t *p, size_t n, char *buf, size_t buf_size, size_t *o, int *strip)
{
    if (n && *strip) {
        *strip = 0;
        if (p[0] == ' ') p++, n--;
    }
    if (buf && *o + n < buf_size) memcpy(buf + *o, p, n);
    *o += n;
}

/* Bytes of the character at p (n > 0), 0 when p does not start a valid UTF-8 sequence. */
static size_t utf8_char(const uint8_t *p, size_t n)
{
    uint32_t cp;
    size_t l = utf8_next(p, n, &cp);
    return cp == 0xFFFD && !(l == 3 && p[0] == 0xEF && p[1] == 0xBF && p[2] == 0xBD) ? 0 : l;
}

/* Up to 4 bytes of the byte fallback tokens ids[q, j) into w: how many. */
static size_t run_window(const gsink_tokenizer *t, const int32_t *ids, size_t q, size_t j, uint8_t w[4])
{
    size_t n = 0;
    for (; n < 4 && q + n < j; n++) w[n] = (uint8_t)byte_token_value(t, ids[q + n]);
    return n;
}

/* The decoder of SentencePiece-style tokenizers, HF's
 * Sequence[Replace("\u2581", " "), ByteFallback, Fuse, Strip(" ", 1, 0)]:
 * every token's U+2581 is a space; a run of byte fallback tokens <0xXX> is
 * its bytes when they are UTF-8, else one U+FFFD per byte (as HF; with
 * spm_lenient, as sentencepiece: the run's valid characters, U+FFFD for
 * each byte that starts none); the output's first space is dropped when the
 * decoder has Strip (sentencepiece: the dummy prefix). */
static void decode_spm(const gsink_tokenizer *t, const int32_t *ids, size_t n_ids, char *buf, size_t buf_size,
                       size_t *o)
{
    static const uint8_t REPL[3] = {0xEF, 0xBF, 0xBD};
    int strip = t->spm_strip;
    for (size_t k = 0; k < n_ids;) {
        size_t j = k, l;
        uint8_t w[4];
        while (j < n_ids && byte_token_value(t, ids[j]) >= 0) j++;
        if (j > k) { /* the run of bytes k .. j - 1, read a character (4-byte window) at a time */
            int valid = 1;
            for (size_t q = k; !t->spm_lenient && valid && q < j; q += l)
                valid = (l = utf8_char(w, run_window(t, ids, q, j, w))) != 0;
            for (size_t q = k; q < j; q += l) {
                if (valid && (l = utf8_char(w, run_window(t, ids, q, j, w)))) put_bytes(w, l, buf, buf_size, o, &strip);
                else put_bytes(REPL, 3, buf, buf_size, o, &strip), l = 1;
            }
            k = j;
            continue;
        }
        const uint8_t *p = (const uint8_t *)t->tok[ids[k]];
        size_t n = t->tok_len[ids[k]], a = 0;
        for (size_t q = 0; q + 3 <= n; q++)
            if (memcmp(p + q, META, 3) == 0) {
                put_bytes(p + a, q - a, buf, buf_size, o, &strip);
                put_bytes((const uint8_t *)" ", 1, buf, buf_size, o, &strip);
                a = q + 3;
                q += 2;
            }
        put_bytes(p + a, n - a, buf, buf_size, o, &strip);
        k++;
    }
}

/* The byte-level decoder: token texts are byte images. */
static void decode_bytelevel(const gsink_tokenizer *t, const int32_t *ids, size_t n_ids, char *buf, size_t buf_size,
                             size_t *op)
{
    size_t o = *op;
    /* Byte fallback tokens give the UTF-8 bytes of byte images (what the
     * encoder, like HF's, falls back on): a run of them is image text. */
    uint8_t pend[4];
    size_t np = 0;
    for (size_t k = 0; k < n_ids; k++) {
        int32_t id = ids[k];
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
        if ((t->type[id] == TOK_CONTROL || t->type[id] == TOK_USER_DEFINED) && !(t->hf_decode && all_images(t, p, left))) {
            /* Added tokens are their text (HF's ByteLevel decoder maps them
             * too when every character is a byte image). */
            if (buf && o + left < buf_size) memcpy(buf + o, p, left);
            o += left;
            continue;
        }
        put_image(t, p, left, 1, buf, buf_size, &o);
    }
    if (np) put_image(t, pend, np, 1, buf, buf_size, &o);
    *op = o;
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
    for (size_t k = 0; k < n_ids; k++)
        if (ids[k] < 0 || ids[k] >= t->n_vocab)
            return gsink__fail(t->errmsg, GSINK_ERR_TOKEN_OUT_OF_RANGE, "token id %d at %zu is outside [0, %d)",
                               ids[k], k, t->n_vocab);
    if (t->spm)
        decode_spm(t, ids, n_ids, buf, buf_size, &o);
    else
        decode_bytelevel(t, ids, n_ids, buf, buf_size, &o);
    if (len) *len = o;
    if (o + 1 > buf_size) {
        if (buf && buf_size) buf[0] = '\0';
        return gsink__fail(t->errmsg, GSINK_ERR_BUFFER_TOO_SMALL, "%zu bytes needed (plus NUL), buffer holds %zu",
                           o, buf_size);
    }
    buf[o] = '\0';
    return GSINK_OK;
}

/* ---- HuggingFace tokenizer.json -------------------------------------------
 * A byte-level BPE tokenizer.json (model.type "BPE", ByteLevel pre-tokenizer
 * and decoder) as the supported families ship it. The pre-tokenizer's regex
 * is recognised by its text and mapped onto the built-in matchers above. */

#define TJ_MAX_BYTES ((size_t)1 << 30)

static const struct { const char *regex; int pre; int fold; } tj_regexes[] = {
    {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", PRE_GPT2, 0},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", PRE_LLAMA3, 1},
    {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", PRE_LLAMA3, 0},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", PRE_QWEN2, 1},
    {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", PRE_QWEN2, 0},
    {"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
     "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| "
     "?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", PRE_TEKKEN, 0},
    {"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
     "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", PRE_O200K, 0},
};

static int tj_str_is(const gsink__json *j, const char *lit)
{
    return j && j->type == GSINK_JSON_STRING && j->len == strlen(lit) && memcmp(j->str, lit, j->len) == 0;
}

/* A boolean member: 1/0, def when absent or null, -1 when of another type. */
static int tj_bool(const gsink__json *obj, const char *key, int def)
{
    const gsink__json *v = gsink__json_get(obj, key);
    if (!v || v->type == GSINK_JSON_NULL) return def;
    return v->type == GSINK_JSON_BOOL ? v->boolean : -1;
}

/* A ByteLevel pre-tokenizer: use_regex (default true) in *use_regex. */
static gsink_status tj_bytelevel(const gsink__json *p, int *use_regex)
{
    int aps = tj_bool(p, "add_prefix_space", 0), ur = tj_bool(p, "use_regex", 1);
    if (aps < 0 || ur < 0)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: ByteLevel options must be booleans");
    if (aps)
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: ByteLevel add_prefix_space is not supported");
    *use_regex = ur;
    return GSINK_OK;
}

static gsink_status tj_pre_tokenizer(gsink_tokenizer *t, const gsink__json *pt)
{
    if (!pt || pt->type != GSINK_JSON_OBJECT)
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                           "tokenizer.json: no pre_tokenizer (a byte-level one is required)");
    const gsink__json *items = pt, *one = pt;
    size_t n = 1;
    if (tj_str_is(gsink__json_get(pt, "type"), "Sequence")) {
        items = gsink__json_get(pt, "pretokenizers");
        if (!items || items->type != GSINK_JSON_ARRAY)
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: Sequence pre_tokenizer without pretokenizers");
        n = items->len;
        one = NULL;
    }
    int split = -1, fold = 0, have_bl = 0, bl_regex = 0;
    for (size_t k = 0; k < n; k++) {
        const gsink__json *p = one ? one : &items->items[k];
        const gsink__json *ty = gsink__json_get(p, "type");
        if (p->type != GSINK_JSON_OBJECT || !ty || ty->type != GSINK_JSON_STRING)
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: pre_tokenizer without a type");
        if (have_bl)
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                               "tokenizer.json: pre-tokenizer '%.40s' after ByteLevel is not supported", ty->str);
        if (tj_str_is(ty, "ByteLevel")) {
            gsink_status st = tj_bytelevel(p, &bl_regex);
            if (st) return st;
            have_bl = 1;
        } else if (split >= 0) {
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                               "tokenizer.json: more than one splitting pre-tokenizer ('%.40s') is not supported",
                               ty->str);
        } else if (tj_str_is(ty, "Digits")) {
            if (tj_bool(p, "individual_digits", 0) != 1)
                return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                                   "tokenizer.json: Digits without individual_digits is not supported");
            split = PRE_SMOLLM;
        } else if (tj_str_is(ty, "Split")) {
            const gsink__json *pat = gsink__json_get(p, "pattern");
            const gsink__json *re = gsink__json_get(pat, "Regex");
            if (!re || re->type != GSINK_JSON_STRING)
                return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                                   "tokenizer.json: Split pre-tokenizer needs a Regex pattern");
            if (!tj_str_is(gsink__json_get(p, "behavior"), "Isolated") || tj_bool(p, "invert", 0) != 0)
                return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                                   "tokenizer.json: Split pre-tokenizer must be Isolated and not inverted");
            for (size_t r = 0; r < sizeof tj_regexes / sizeof tj_regexes[0] && split < 0; r++)
                if (tj_str_is(re, tj_regexes[r].regex)) split = tj_regexes[r].pre, fold = tj_regexes[r].fold;
            if (split < 0)
                return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                                   "tokenizer.json: pre-tokenizer regex \"%.60s%s\" is not supported (gpt2, llama3, "
                                   "qwen2, tekken, o200k and SmolLM2's Digits are)",
                                   re->str, re->len > 60 ? "..." : "");
        } else {
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: pre-tokenizer '%.40s' is not supported",
                               ty->str);
        }
    }
    if (!have_bl)
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: the pre-tokenizer has no ByteLevel step");
    if (split == PRE_SMOLLM ? !bl_regex : split >= 0 ? bl_regex : !bl_regex)
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                           "tokenizer.json: ByteLevel use_regex=%s with this split is not supported",
                           bl_regex ? "true" : "false");
    t->pre = split >= 0 ? split : PRE_GPT2;
    t->fold_long_s = fold;
    return GSINK_OK;
}

#define TJ_META "\xE2\x96\x81" /* U+2581 */

static int64_t tj_id(const gsink__json *v);

static int tj_type_is(const gsink__json *j, const char *lit) { return tj_str_is(gsink__json_get(j, "type"), lit); }

/* A Replace normalizer or decoder of the string `from` by `to`. */
static int tj_replace_is(const gsink__json *r, const char *from, const char *to)
{
    return tj_type_is(r, "Replace") && tj_str_is(gsink__json_get(gsink__json_get(r, "pattern"), "String"), from) &&
           tj_str_is(gsink__json_get(r, "content"), to);
}

/* The items of a Sequence (member `key`), or the object itself as one item. */
static gsink_status tj_items(const gsink__json *j, const char *key, const gsink__json **items, size_t *n)
{
    if (!tj_type_is(j, "Sequence")) {
        *items = j;
        *n = 1;
        return GSINK_OK;
    }
    *items = gsink__json_get(j, key);
    if (!*items || (*items)->type != GSINK_JSON_ARRAY)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: Sequence without %s", key);
    *n = (*items)->len;
    *items = (*items)->items;
    return GSINK_OK;
}

/* A SentencePiece-style tokenizer.json: normalizer, pre-tokenizer and
 * decoder as transformers' LlamaConverter writes them for Llama 2, Mistral
 * and their kin: legacy, normalizer Sequence[Prepend("\u2581")?,
 * Replace(" ", "\u2581")] and no pre-tokenizer; or no normalizer and a
 * Metaspace("\u2581", prepend_scheme, split) pre-tokenizer. The decoder is
 * Sequence[Replace("\u2581", " "), ByteFallback, Fuse, Strip(" ", 1, 0)?]. */
static gsink_status tj_spm(gsink_tokenizer *t, const gsink__json *norm, const gsink__json *pre, const gsink__json *dec)
{
    const gsink__json *it;
    size_t n = 0, k = 0;
    gsink_status st;
    t->spm = 1;
    if (norm && norm->type != GSINK_JSON_NULL) {
        if ((st = tj_items(norm, "normalizers", &it, &n))) return st;
        if (k < n && tj_type_is(&it[k], "Prepend") && tj_str_is(gsink__json_get(&it[k], "prepend"), TJ_META))
            t->spm_prepend = SPM_NORM, k++;
        if (k + 1 != n || !tj_replace_is(&it[k], " ", TJ_META))
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                               "tokenizer.json: normalizer not supported (none, NFC, or SentencePiece's "
                               "Prepend(\"\u2581\") + Replace(\" \", \"\u2581\"))");
        if (pre && pre->type != GSINK_JSON_NULL)
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                               "tokenizer.json: a pre-tokenizer after the SentencePiece normalizer is not supported");
    } else {
        const gsink__json *sch = gsink__json_get(pre, "prepend_scheme");
        int split = tj_bool(pre, "split", 1), aps = tj_bool(pre, "add_prefix_space", 1);
        if (!tj_str_is(gsink__json_get(pre, "replacement"), TJ_META) || split < 0 || aps < 0)
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                               "tokenizer.json: Metaspace pre-tokenizer needs replacement \"\u2581\" and boolean options");
        t->spm_split = split;
        if (!sch) t->spm_prepend = aps ? SPM_ALWAYS : SPM_NONE; /* files before prepend_scheme */
        else if (tj_str_is(sch, "always")) t->spm_prepend = SPM_ALWAYS;
        else if (tj_str_is(sch, "first")) t->spm_prepend = SPM_FIRST;
        else if (tj_str_is(sch, "never")) t->spm_prepend = SPM_NONE;
        else return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: Metaspace prepend_scheme not supported");
    }
    if (dec && dec->type == GSINK_JSON_OBJECT && (st = tj_items(dec, "decoders", &it, &n))) return st;
    if (!dec || dec->type != GSINK_JSON_OBJECT || n < 3 || n > 4 || !tj_replace_is(&it[0], TJ_META, " ") ||
        !tj_type_is(&it[1], "ByteFallback") || !tj_type_is(&it[2], "Fuse"))
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                           "tokenizer.json: a SentencePiece-style tokenizer needs the decoder Sequence[Replace(\"\u2581\", "
                           "\" \"), ByteFallback, Fuse, Strip(\" \", 1, 0)]");
    if (n == 4) {
        const gsink__json *a = gsink__json_get(&it[3], "start"), *b = gsink__json_get(&it[3], "stop");
        if (!tj_type_is(&it[3], "Strip") || !tj_str_is(gsink__json_get(&it[3], "content"), " ") || tj_id(a) != 1 ||
            tj_id(b) != 0)
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                               "tokenizer.json: the decoder's last step must be Strip(\" \", 1, 0)");
        t->spm_strip = 1;
    }
    return GSINK_OK;
}

/* Unsigned id of a JSON value, -1 when it is not an integer in [0, INT32_MAX]. */
static int64_t tj_id(const gsink__json *v)
{
    if (!v || v->type != GSINK_JSON_NUMBER || !v->is_uint || v->u64 > INT32_MAX) return -1;
    return (int64_t)v->u64;
}

static char *tj_copy(char **a, const char *s, size_t n)
{
    char *p = *a;
    memcpy(p, s, n);
    p[n] = '\0';
    *a += n + 1;
    return p;
}

static int32_t tj_lookup_special(const gsink_tokenizer *t, const char *const *names)
{
    for (; *names; names++) {
        int32_t id = hmap_get(&t->vocab, *names, strlen(*names));
        if (id >= 0 && t->type[id] == TOK_CONTROL) return id;
    }
    return -1;
}

/* bos_token / eos_token of tokenizer_config.json: a string, an AddedToken
 * object {"content": ...}, or null. 1 when given (id in *id, -1 for null). */
static gsink_status tj_config_token(const gsink_tokenizer *t, const gsink__json *cfg, const char *key,
                                    int32_t *id, int *given)
{
    const gsink__json *v = gsink__json_get(cfg, key);
    *given = 0;
    if (!v) return GSINK_OK;
    *given = 1;
    *id = -1;
    if (v->type == GSINK_JSON_NULL) return GSINK_OK;
    if (v->type == GSINK_JSON_OBJECT) v = gsink__json_get(v, "content");
    if (!v || v->type != GSINK_JSON_STRING)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer_config.json: %s is not a string", key);
    *id = hmap_get(&t->vocab, v->str, v->len);
    if (*id < 0)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer_config.json: %s '%.60s' is not a token", key, v->str);
    return GSINK_OK;
}

static gsink_status tj_build(gsink_tokenizer *t, const gsink__json *root, const gsink__json *cfg)
{
    if (root->type != GSINK_JSON_OBJECT)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: the document is not an object");
    const gsink__json *model = gsink__json_get(root, "model");
    if (!model || model->type != GSINK_JSON_OBJECT)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: no model object");
    const gsink__json *mtype = gsink__json_get(model, "type");
    if (mtype && !tj_str_is(mtype, "BPE"))
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: model type '%.32s' is not supported (BPE only)",
                           mtype->type == GSINK_JSON_STRING ? mtype->str : "?");
    const gsink__json *vocab = gsink__json_get(model, "vocab"), *merges = gsink__json_get(model, "merges");
    if (!vocab || vocab->type != GSINK_JSON_OBJECT || vocab->len == 0)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: model.vocab missing, empty or not an object");
    if (!merges || merges->type != GSINK_JSON_ARRAY)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: model.merges missing or not an array");
    const char *dup = gsink__json_duplicate_key(vocab);
    if (dup) return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: duplicate token '%.60s' in model.vocab", dup);
    /* Model options this implementation follows, and those it refuses. */
    const gsink__json *v;
    if ((v = gsink__json_get(model, "dropout")) && v->type != GSINK_JSON_NULL &&
        !(v->type == GSINK_JSON_NUMBER && v->number == 0.0))
        return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: BPE dropout is not supported");
    const char *affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++)
        if ((v = gsink__json_get(model, affix[k])) && v->type != GSINK_JSON_NULL &&
            !(v->type == GSINK_JSON_STRING && v->len == 0))
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: BPE %s is not supported", affix[k]);
    int bf = tj_bool(model, "byte_fallback", 0), im = tj_bool(model, "ignore_merges", 0),
        fu = tj_bool(model, "fuse_unk", 0);
    if (bf < 0 || im < 0 || fu < 0)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: byte_fallback, ignore_merges and fuse_unk must be booleans");
    t->ignore_merges = im;
    const gsink__json *unk = gsink__json_get(model, "unk_token");
    if (unk && unk->type != GSINK_JSON_NULL && unk->type != GSINK_JSON_STRING)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: unk_token is not a string");
    /* Byte-level (normalizer none or NFC, ByteLevel pre-tokenizer and
     * decoder), or SentencePiece-style (tj_spm: a Replace normalizer or a
     * Metaspace pre-tokenizer). */
    const gsink__json *norm = gsink__json_get(root, "normalizer"), *pre = gsink__json_get(root, "pre_tokenizer");
    const gsink__json *dec = gsink__json_get(root, "decoder");
    gsink_status st;
    if (tj_type_is(pre, "Metaspace") || tj_type_is(norm, "Sequence") || tj_type_is(norm, "Replace") ||
        tj_type_is(norm, "Prepend")) {
        if ((st = tj_spm(t, norm, pre, dec))) return st;
        t->fuse_unk = fu;
    } else {
        if (unk && unk->type == GSINK_JSON_STRING && fu)
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: fuse_unk is not supported");
        /* Normalizer: none, or NFC. */
        t->nfc = norm && norm->type != GSINK_JSON_NULL;
        if (norm && norm->type != GSINK_JSON_NULL && !tj_type_is(norm, "NFC"))
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: normalizer '%.32s' is not supported (none or NFC)",
                               gsink__json_get(norm, "type") && gsink__json_get(norm, "type")->type == GSINK_JSON_STRING
                                   ? gsink__json_get(norm, "type")->str : "?");
        if (!dec || !tj_type_is(dec, "ByteLevel"))
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: the decoder must be ByteLevel");
        if ((st = tj_pre_tokenizer(t, pre))) return st;
    }

    const gsink__json *added = gsink__json_get(root, "added_tokens");
    if (added && added->type != GSINK_JSON_NULL && added->type != GSINK_JSON_ARRAY)
        return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: added_tokens is not an array");
    size_t na = added && added->type == GSINK_JSON_ARRAY ? added->len : 0, nvj = vocab->len, nm = merges->len;
    size_t entries = nvj + na, total = 0;
    int64_t max_id = -1;
    for (size_t k = 0; k < nvj; k++) {
        int64_t id = tj_id(&vocab->items[k]);
        if (id < 0)
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: vocab token '%.60s' has no valid id", vocab->keys[k]);
        if (gsink__json_shadowed(vocab, k)) continue;
        if (id > max_id) max_id = id;
        total += strlen(vocab->keys[k]) + 1;
    }
    for (size_t k = 0; k < na; k++) {
        const gsink__json *a = &added->items[k], *c = gsink__json_get(a, "content");
        int64_t id = tj_id(gsink__json_get(a, "id"));
        if (a->type != GSINK_JSON_OBJECT || id < 0 || !c || c->type != GSINK_JSON_STRING || c->len == 0)
            return gsink__fail(NULL, GSINK_ERR_FORMAT,
                               "tokenizer.json: added token %zu needs an integer id and a non-empty content", k);
        if (c->len > UINT32_MAX) return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: added token %zu is too long", k);
        const char *opt[] = {"lstrip", "rstrip", "single_word"};
        for (int q = 0; q < 3; q++) {
            int b = tj_bool(a, opt[q], 0);
            if (b < 0) return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: added token %zu: %s is not a boolean", k, opt[q]);
            if (b)
                return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer.json: added token '%.40s' with %s is not supported",
                                   c->str, opt[q]);
        }
        int special = tj_bool(a, "special", 0), normalized = tj_bool(a, "normalized", !special);
        if (special < 0 || normalized < 0)
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: added token %zu: special and normalized must be booleans", k);
        if (t->spm && normalized && norm && norm->type != GSINK_JSON_NULL)
            /* HF matches those in the normalised text (after the U+2581 replacement) */
            return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED,
                               "tokenizer.json: added token '%.40s' with normalized=true is not supported with the "
                               "SentencePiece normalizer", c->str);
        if (id > max_id) max_id = id;
        total += c->len + 1;
    }
    /* Gaps in the ids are allowed (they become tokens no text encodes to),
     * but bounded: the table may exceed the file's entries by 64Ki. */
    if ((uint64_t)max_id >= entries + 65536)
        return gsink__fail(NULL, GSINK_ERR_FORMAT,
                           "tokenizer.json: token id %lld is out of range (the file has %zu tokens)", (long long)max_id,
                           entries);
    size_t nv = (size_t)max_id + 1;
    for (size_t k = 0; k < nm; k++) {
        const gsink__json *m = &merges->items[k];
        if (m->type == GSINK_JSON_STRING) total += m->len + 1;
        else if (m->type == GSINK_JSON_ARRAY && m->len == 2 && m->items[0].type == GSINK_JSON_STRING &&
                 m->items[1].type == GSINK_JSON_STRING)
            total += m->items[0].len + m->items[1].len + 2;
        else
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: merge %zu is neither \"a b\" nor [a, b]", k);
    }
    t->n_vocab = (int32_t)nv;
    t->arena = malloc(total + 1);
    t->tok = calloc(nv, sizeof *t->tok);
    t->tok_len = calloc(nv, sizeof *t->tok_len);
    t->type = calloc(nv, sizeof *t->type);
    t->in_model = calloc(nv, 1);
    if (!t->arena || !t->tok || !t->tok_len || !t->type || !t->in_model || !hmap_init(&t->vocab, nv) || !hmap_init(&t->merges, nm))
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    char *ar = t->arena;
    for (size_t k = 0; k < nvj; k++) {
        if (gsink__json_shadowed(vocab, k)) continue;
        int32_t id = (int32_t)tj_id(&vocab->items[k]);
        size_t len = strlen(vocab->keys[k]);
        if (len == 0 || len > UINT32_MAX)
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: vocab token %d is empty or too long", id);
        if (t->tok[id])
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: id %d is given to both '%.40s' and '%.40s'", id,
                               t->tok[id], vocab->keys[k]);
        t->tok[id] = tj_copy(&ar, vocab->keys[k], len);
        t->tok_len[id] = (uint32_t)len;
        t->type[id] = TOK_NORMAL;
        t->in_model[id] = 1;
        hmap_put(&t->vocab, t->tok[id], len, id);
    }
    for (size_t k = 0; k < na; k++) {
        const gsink__json *a = &added->items[k], *c = gsink__json_get(a, "content");
        int32_t id = (int32_t)tj_id(gsink__json_get(a, "id"));
        int type = tj_bool(a, "special", 0) ? TOK_CONTROL : TOK_USER_DEFINED;
        int32_t have = hmap_get(&t->vocab, c->str, c->len);
        if (t->tok[id]) {
            /* The same token in the vocabulary and added_tokens (GPT-2's
             * <|endoftext|>) is fine; anything else is a clash. */
            if (have != id || t->type[id] != TOK_NORMAL)
                return gsink__fail(NULL, GSINK_ERR_FORMAT,
                                   "tokenizer.json: added token '%.40s' has id %d, which is already '%.40s'", c->str, id,
                                   t->tok[id]);
            t->type[id] = type;
            continue;
        }
        if (have >= 0)
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: duplicate token '%.40s' (ids %d and %d)", c->str,
                               have, id);
        t->tok[id] = tj_copy(&ar, c->str, c->len);
        t->tok_len[id] = (uint32_t)c->len;
        t->type[id] = type;
        hmap_put(&t->vocab, t->tok[id], c->len, id);
    }
    for (size_t k = 0; k < nv; k++)
        if (!t->tok[k]) { /* a gap in the ids: a token no text encodes to */
            t->tok[k] = "";
            t->type[k] = TOK_UNUSED;
        }
    /* Merges, each "a b" with a, b and ab in the vocabulary. Inserted last
     * first: of a pair given twice the later rank holds, as in HF. */
    const char **mtext = malloc((nm ? nm : 1) * sizeof *mtext);
    uint32_t *mlen = malloc((nm ? nm : 1) * sizeof *mlen);
    if (!mtext || !mlen) {
        free(mtext);
        free(mlen);
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    }
    char *cat = NULL;
    size_t cat_cap = 0;
    st = GSINK_OK;
    for (size_t k = 0; k < nm && !st; k++) {
        const gsink__json *m = &merges->items[k];
        const char *a, *b;
        size_t la, lb;
        char *p = ar;
        if (m->type == GSINK_JSON_STRING) {
            const char *sp = memchr(m->str, ' ', m->len);
            if (!sp || sp == m->str || (size_t)(sp - m->str) + 1 >= m->len || memchr(sp + 1, ' ', m->len - (size_t)(sp - m->str) - 1)) {
                st = gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: merge %zu '%.60s' is not two tokens", k, m->str);
                break;
            }
            a = m->str, la = (size_t)(sp - m->str), b = sp + 1, lb = m->len - la - 1;
            tj_copy(&ar, m->str, m->len);
        } else {
            a = m->items[0].str, la = m->items[0].len, b = m->items[1].str, lb = m->items[1].len;
            memcpy(ar, a, la);
            ar[la] = ' ';
            memcpy(ar + la + 1, b, lb);
            ar[la + 1 + lb] = '\0';
            ar += la + lb + 2;
        }
        mtext[k] = p;
        mlen[k] = (uint32_t)(la + lb + 1);
        if (!reserve((void **)&cat, &cat_cap, la + lb + 1, 1)) {
            st = gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
            break;
        }
        memcpy(cat, a, la);
        memcpy(cat + la, b, lb);
        const char *bad = model_get(t, a, la) < 0 ? "its first token" : model_get(t, b, lb) < 0 ? "its second token"
                        : model_get(t, cat, la + lb) < 0 ? "the merged token" : NULL;
        if (bad)
            st = gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: merge %zu '%.*s' names a token not in the vocabulary (%s)",
                             k, (int)(mlen[k] > 60 ? 60 : mlen[k]), p, bad);
    }
    free(cat);
    if (!st)
        for (size_t k = nm; k-- > 0;) hmap_put(&t->merges, mtext[k], mlen[k], (int32_t)k);
    free(mtext);
    free(mlen);
    if (st) return st;

    t->unk = -1;
    if (unk && unk->type == GSINK_JSON_STRING) {
        t->unk = model_get(t, unk->str, unk->len);
        if (t->unk < 0)
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "tokenizer.json: unk_token '%.40s' is not in the vocabulary", unk->str);
    }
    t->byte_fallback = bf;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_tok[b] = bf ? model_get(t, name, 6) : -1;
    }
    t->hf_decode = 1;
    t->spm_words = t->spm && spm_words_safe(t);
    byte_map(t);
    /* Special tokens: tokenizer_config.json's bos_token / eos_token when
     * given, else the families' usual names among the special tokens. */
    static const char *const bos_names[] = {"<|begin_of_text|>", "<s>", "<bos>", NULL};
    static const char *const eos_names[] = {"<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", NULL};
    t->bos = tj_lookup_special(t, bos_names);
    t->eos = tj_lookup_special(t, eos_names);
    if (cfg) {
        int given;
        int32_t id;
        if ((st = tj_config_token(t, cfg, "bos_token", &id, &given))) return st;
        if (given) t->bos = id;
        if ((st = tj_config_token(t, cfg, "eos_token", &id, &given))) return st;
        if (given) t->eos = id;
    }
    return build_matcher(t);
}

static gsink_status tj_parse_file(const char *path, gsink__json **out)
{
    char *text = NULL;
    size_t len = 0;
    gsink_status st = gsink__read_text(path, TJ_MAX_BYTES, &text, &len, NULL);
    if (st) return st;
    st = gsink__json_parse(text, len, out, NULL);
    free(text);
    if (st) return gsink__refail(NULL, st, path);
    return GSINK_OK;
}

gsink_status gsink_tokenizer_load_json(const char *path, gsink_tokenizer **out)
{
    if (!out) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!path) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "path is NULL");
    struct stat sb;
    if (stat(path, &sb) != 0) return gsink__fail(NULL, GSINK_ERR_IO, "cannot open '%s'", path);
    size_t pl = strlen(path);
    char *file = malloc(pl + 32), *cfgp = malloc(pl + 32);
    if (!file || !cfgp) {
        free(file);
        free(cfgp);
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    }
    if (S_ISDIR(sb.st_mode)) {
        snprintf(file, pl + 32, "%s/tokenizer.json", path);
        snprintf(cfgp, pl + 32, "%s/tokenizer_config.json", path);
    } else {
        memcpy(file, path, pl + 1);
        const char *slash = strrchr(path, '/');
        if (slash) snprintf(cfgp, pl + 32, "%.*s/tokenizer_config.json", (int)(slash - path), path);
        else snprintf(cfgp, pl + 32, "tokenizer_config.json");
    }
    gsink__json *root = NULL, *cfg = NULL;
    gsink_tokenizer *t = NULL;
    gsink_status st;
    if (stat(file, &sb) != 0) {
        st = gsink__fail(NULL, GSINK_ERR_IO,
                         "'%s' not found (a HuggingFace tokenizer.json is needed; tiktoken or SentencePiece "
                         "tokenizer files are not supported)", file);
        goto done;
    }
    if ((st = tj_parse_file(file, &root))) goto done;
    if (stat(cfgp, &sb) == 0 && S_ISREG(sb.st_mode) && (st = tj_parse_file(cfgp, &cfg))) goto done;
    if (!(t = calloc(1, sizeof *t))) {
        st = gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
        goto done;
    }
    st = tj_build(t, root, cfg && cfg->type == GSINK_JSON_OBJECT ? cfg : NULL);
    if (st) {
        gsink_tokenizer_free(t);
        t = NULL;
    }
done:
    gsink__json_free(root);
    gsink__json_free(cfg);
    free(file);
    free(cfgp);
    *out = t;
    return st;
}

/* For the fuzz harness: a tokenizer from tokenizer.json text in memory. */
gsink_status gsink__tokenizer_from_json_text(const char *text, size_t len, gsink_tokenizer **out)
{
    *out = NULL;
    gsink__json *root = NULL;
    gsink_status st = gsink__json_parse(text, len, &root, NULL);
    if (st) return st;
    gsink_tokenizer *t = calloc(1, sizeof *t);
    if (!t) st = gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    else st = tj_build(t, root, NULL);
    gsink__json_free(root);
    if (st) gsink_tokenizer_free(t);
    else *out = t;
    return st;
}

gsink_status gsink_tokenizer_token_id(const gsink_tokenizer *t, const char *text, int32_t *id)
{
    if (!t) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "tokenizer is NULL");
    GSINK_USE(t, "tokenizer");
    if (!text || !id) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "text or id is NULL");
    *id = hmap_get(&t->vocab, text, strlen(text));
    if (*id < 0) return gsink__fail(NULL, GSINK_ERR_UNKNOWN_NAME, "no token '%.60s' in the vocabulary", text);
    return GSINK_OK;
}
