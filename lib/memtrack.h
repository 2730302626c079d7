/*
 * memtrack.h - byte accounting of a backend's buffers (live and peak), for
 * gsink_model_memory. Header-only C, shared by the CPU backend and the CUDA
 * module (compiled as C++). A backend records every buffer it hands out
 * (alloc/free, by pointer) and its own long-lived scratch (by size).
 */
#ifndef GSINK_MEMTRACK_H
#define GSINK_MEMTRACK_H

#include <stddef.h>
#include <stdlib.h>

typedef struct gsink_memtrack_entry {
    void *ptr;
    size_t bytes;
} gsink_memtrack_entry;

typedef struct gsink_memtrack {
    gsink_memtrack_entry *e; /* live buffers (a model holds a few dozen) */
    size_t len, cap;
    size_t live, peak; /* bytes */
} gsink_memtrack;

static inline void gsink_memtrack_grow(gsink_memtrack *t, size_t bytes)
{
    t->live += bytes;
    if (t->live > t->peak) t->peak = t->live;
}

static inline void gsink_memtrack_shrink(gsink_memtrack *t, size_t bytes)
{
    t->live = bytes <= t->live ? t->live - bytes : 0;
}

/* Records a buffer; -1 (nothing recorded) when the table cannot grow. */
static inline int gsink_memtrack_add(gsink_memtrack *t, void *ptr, size_t bytes)
{
    if (t->len == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 32;
        gsink_memtrack_entry *e = (gsink_memtrack_entry *)realloc(t->e, cap * sizeof *e);
        if (!e) return -1;
        t->e = e;
        t->cap = cap;
    }
    t->e[t->len].ptr = ptr;
    t->e[t->len].bytes = bytes;
    t->len++;
    gsink_memtrack_grow(t, bytes);
    return 0;
}

/* Forgets a recorded buffer (unknown pointers are ignored). */
static inline void gsink_memtrack_remove(gsink_memtrack *t, void *ptr)
{
    for (size_t i = t->len; i-- > 0;)
        if (t->e[i].ptr == ptr) {
            gsink_memtrack_shrink(t, t->e[i].bytes);
            t->e[i] = t->e[--t->len];
            return;
        }
}

static inline void gsink_memtrack_query(gsink_memtrack *t, size_t *live, size_t *peak, int reset_peak)
{
    if (live) *live = t->live;
    if (peak) *peak = t->peak;
    if (reset_peak) t->peak = t->live;
}

static inline void gsink_memtrack_free(gsink_memtrack *t)
{
    free(t->e);
    t->e = NULL;
    t->len = t->cap = 0;
}

#endif
