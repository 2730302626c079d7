/*
 * cli_json.c - see cli_json.h. Recursive descent, depth-limited.
 */
#include "cli_json.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

typedef struct jp {
    const char *p;
    int depth;
} jp;

static void ws(jp *s)
{
    while (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r') s->p++;
}

static void put_utf8(char **o, unsigned cp)
{
    unsigned char *u = (unsigned char *)*o;
    if (cp < 0x80) {
        *u++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *u++ = (unsigned char)(0xC0 | cp >> 6);
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *u++ = (unsigned char)(0xE0 | cp >> 12);
        *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        *u++ = (unsigned char)(0xF0 | cp >> 18);
        *u++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    *o = (char *)u;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* A string at s->p (after the opening quote); the unescaped text is never
 * longer than the escaped one. */
static char *str(jp *s)
{
    const char *e = s->p;
    while (*e && *e != '"') e += (*e == '\\' && e[1]) ? 2 : 1;
    if (*e != '"') return NULL;
    char *out = malloc((size_t)(e - s->p) + 1), *o = out;
    if (!out) return NULL;
    while (s->p < e) {
        char c = *s->p++;
        if ((unsigned char)c < 0x20) goto bad;
        if (c != '\\') {
            *o++ = c;
            continue;
        }
        c = *s->p++;
        switch (c) {
        case '"': case '\\': case '/': *o++ = c; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (e - s->p < 4 || hex4(s->p, &cp)) goto bad;
            s->p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && e - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u' &&
                !hex4(s->p + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                s->p += 6;
            }
            if (cp == 0) goto bad; /* no NUL inside C strings */
            put_utf8(&o, cp);     /* at most 4 bytes for 6 or 12 read */
            break;
        }
        default: goto bad;
        }
    }
    *o = '\0';
    s->p = e + 1;
    return out;
bad:
    free(out);
    return NULL;
}

static int value(jp *s, jval *v);

static int push(jval *v, size_t *cap, char *key)
{
    if (v->n == *cap) {
        size_t c = *cap ? *cap * 2 : 8;
        jval *ni = realloc(v->items, c * sizeof *ni);
        if (!ni) return -1;
        v->items = ni;
        if (v->type == JOBJ) {
            char **nk = realloc(v->keys, c * sizeof *nk);
            if (!nk) return -1;
            v->keys = nk;
        }
        *cap = c;
    }
    memset(&v->items[v->n], 0, sizeof v->items[v->n]);
    if (v->type == JOBJ) v->keys[v->n] = key;
    v->n++;
    return 0;
}

static int container(jp *s, jval *v, char close)
{
    size_t cap = 0;
    if (++s->depth > JSON_MAX_DEPTH) return -1;
    ws(s);
    if (*s->p == close) {
        s->p++;
        s->depth--;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        ws(s);
        if (v->type == JOBJ) {
            if (*s->p != '"') return -1;
            s->p++;
            if (!(key = str(s))) return -1;
            ws(s);
            if (*s->p != ':') {
                free(key);
                return -1;
            }
            s->p++;
        }
        if (push(v, &cap, key)) {
            free(key);
            return -1;
        }
        if (value(s, &v->items[v->n - 1])) return -1;
        ws(s);
        if (*s->p == ',') {
            s->p++;
            continue;
        }
        if (*s->p == close) {
            s->p++;
            s->depth--;
            return 0;
        }
        return -1;
    }
}

static int value(jp *s, jval *v)
{
    ws(s);
    const char *p = s->p;
    if (*p == '{') {
        v->type = JOBJ;
        s->p++;
        return container(s, v, '}');
    }
    if (*p == '[') {
        v->type = JARR;
        s->p++;
        return container(s, v, ']');
    }
    if (*p == '"') {
        v->type = JSTR;
        s->p++;
        return (v->str = str(s)) ? 0 : -1;
    }
    if (!strncmp(p, "null", 4)) { v->type = JNULL; s->p += 4; return 0; }
    if (!strncmp(p, "true", 4)) { v->type = JBOOL; v->num = 1; s->p += 4; return 0; }
    if (!strncmp(p, "false", 5)) { v->type = JBOOL; v->num = 0; s->p += 5; return 0; }
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
        char *end;
        v->type = JNUM;
        v->num = strtod(p, &end);
        if (end == p) return -1;
        s->p = end;
        return 0;
    }
    return -1;
}

static void release(jval *v)
{
    if (!v) return;
    for (size_t i = 0; i < v->n; i++) {
        release(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
}

void json_free(jval *v)
{
    release(v);
    free(v);
}

jval *json_parse(const char *text)
{
    jval *v = calloc(1, sizeof *v);
    if (!v || !text) {
        free(v);
        return NULL;
    }
    jp s = {text, 0};
    int bad = value(&s, v);
    ws(&s);
    if (bad || *s.p) {
        json_free(v);
        return NULL;
    }
    return v;
}

const jval *json_get(const jval *v, const char *key)
{
    if (!v || v->type != JOBJ) return NULL;
    for (size_t i = 0; i < v->n; i++)
        if (!strcmp(v->keys[i], key)) return &v->items[i];
    return NULL;
}

const jval *json_at(const jval *v, size_t i)
{
    return v && v->type == JARR && i < v->n ? &v->items[i] : NULL;
}

double json_num(const jval *v) { return v && (v->type == JNUM || v->type == JBOOL) ? v->num : NAN; }

double json_path_num(const jval *v, ...)
{
    va_list ap;
    va_start(ap, v);
    const char *k;
    while (v && (k = va_arg(ap, const char *))) v = json_get(v, k);
    va_end(ap);
    return json_num(v);
}
