/*
 * cli_json.h - a small JSON reader for gsink-cli: parses the library's
 * gsink.report/1 text into a tree to print the table and draw the figures.
 * Numbers are doubles, null reads as NaN where a number is asked for.
 */
#ifndef GSINK_CLI_JSON_H
#define GSINK_CLI_JSON_H

#include <stddef.h>

typedef enum { JNULL, JBOOL, JNUM, JSTR, JARR, JOBJ } jtype;

typedef struct jval {
    jtype type;
    double num;          /* JNUM, JBOOL (0/1) */
    char *str;           /* JSTR (unescaped, NUL-terminated) */
    size_t n;            /* JARR, JOBJ: element count */
    struct jval *items;  /* JARR, JOBJ: elements */
    char **keys;         /* JOBJ: keys */
} jval;

/* Parses text; NULL on malformed input or out of memory. */
jval *json_parse(const char *text);
void json_free(jval *v);
/* Member of an object (NULL if v is not an object or has no such key). */
const jval *json_get(const jval *v, const char *key);
/* Element i of an array (NULL if out of range). */
const jval *json_at(const jval *v, size_t i);
/* The number at v, NaN for null, missing or not a number. */
double json_num(const jval *v);
/* json_num(json_get(v, a)) along a path of keys, NULL-terminated. */
double json_path_num(const jval *v, ...);

#endif
