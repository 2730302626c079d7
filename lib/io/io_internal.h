/*
 * io_internal.h - shared pieces of the checkpoint and tokenizer readers
 * (not installed). Everything here is hidden; names use the gsink__ prefix.
 */
#ifndef GSINK_IO_INTERNAL_H
#define GSINK_IO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* ---- read-only file mapping --------------------------------------------- */

/* A whole file, memory-mapped (or read into memory when mmap is refused). */
typedef struct gsink__file {
    const uint8_t *data; /* size bytes; NULL when size == 0 */
    size_t size;
    int mapped;          /* 1: munmap on close, 0: free */
} gsink__file;

/* Opens and maps path. GSINK_ERR_IO with a message on failure. */
gsink_status gsink__file_open(const char *path, gsink__file *f, char *err);
void gsink__file_close(gsink__file *f);
/* Reads a whole (small) file into a NUL-terminated malloc'd buffer. */
gsink_status gsink__read_text(const char *path, size_t max_bytes, char **out, size_t *len,
                              char *err);
/* Writes data to path atomically: temp file in the same directory, fsync,
 * rename, fsync of the directory. */
gsink_status gsink__write_atomic(const char *path, const void *data, size_t size, char *err);
/* The same in pieces: open a temp file, write, then commit (fsync + rename)
 * or abort (unlink). commit and abort release everything. */
typedef struct gsink__afile { int fd; char *tmp, *path; } gsink__afile;
gsink_status gsink__afile_open(gsink__afile *a, const char *path, char *err);
gsink_status gsink__afile_write(gsink__afile *a, const void *data, size_t size, char *err);
/* Overwrites bytes already written (at offset from the file's start). */
gsink_status gsink__afile_pwrite(gsink__afile *a, const void *data, size_t size, size_t offset, char *err);
gsink_status gsink__afile_commit(gsink__afile *a, char *err);
void gsink__afile_abort(gsink__afile *a);

/* Re-raises the thread's last error with a prefix ("GGUF: <message>"). */
gsink_status gsink__refail(char *err, gsink_status st, const char *prefix);

/* ---- half-precision conversions ----------------------------------------- */

float gsink__f16_to_f32(uint16_t h);
float gsink__bf16_to_f32(uint16_t h);

static inline uint16_t gsink__rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t gsink__rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t gsink__rd64(const uint8_t *p)
{
    return (uint64_t)gsink__rd32(p) | ((uint64_t)gsink__rd32(p + 4) << 32);
}

/* ---- JSON --------------------------------------------------------------- */

typedef enum gsink__json_type {
    GSINK_JSON_NULL, GSINK_JSON_BOOL, GSINK_JSON_NUMBER, GSINK_JSON_STRING,
    GSINK_JSON_ARRAY, GSINK_JSON_OBJECT
} gsink__json_type;

typedef struct gsink__json gsink__json;
struct gsink__json {
    gsink__json_type type;
    int boolean;
    double number;
    int is_uint;       /* number was a non-negative integer literal that fits uint64 */
    uint64_t u64;
    char *str;         /* STRING: decoded UTF-8 (NUL-terminated; may hold NULs, see len) */
    size_t len;        /* STRING: byte length; ARRAY/OBJECT: item count */
    char **keys;       /* OBJECT: len keys */
    gsink__json *items;/* ARRAY/OBJECT: len values */
    unsigned char *shadowed; /* OBJECT: NULL, or per member 1 if its key occurs again later */
    size_t dup;        /* OBJECT with shadowed: first member whose key occurs again */
};

/* Parses a complete JSON document. GSINK_ERR_FORMAT with a message (byte
 * offset included) on malformed input; nesting is limited to 64 levels. */
gsink_status gsink__json_parse(const char *text, size_t len, gsink__json **out, char *err);
void gsink__json_free(gsink__json *j);
/* Member of an object by key (NULL if absent or j is not an object). A key
 * given more than once yields its last value, as Python's json and
 * HuggingFace take it. */
const gsink__json *gsink__json_get(const gsink__json *j, const char *key);
/* 1 if member k of object j is shadowed by a later member of the same key
 * (code walking an object's members skips those to agree with lookups). */
int gsink__json_shadowed(const gsink__json *j, size_t k);
/* A key that object j gives more than once, NULL if none (for formats that
 * refuse duplicates, such as safetensors tensor names). */
const char *gsink__json_duplicate_key(const gsink__json *j);

/* ---- GGUF --------------------------------------------------------------- */

enum {
    GSINK_GGUF_UINT8 = 0, GSINK_GGUF_INT8 = 1, GSINK_GGUF_UINT16 = 2, GSINK_GGUF_INT16 = 3,
    GSINK_GGUF_UINT32 = 4, GSINK_GGUF_INT32 = 5, GSINK_GGUF_FLOAT32 = 6, GSINK_GGUF_BOOL = 7,
    GSINK_GGUF_STRING = 8, GSINK_GGUF_ARRAY = 9, GSINK_GGUF_UINT64 = 10, GSINK_GGUF_INT64 = 11,
    GSINK_GGUF_FLOAT64 = 12
};

/* ggml tensor types this reader knows. */
enum {
    GSINK_GGML_F32 = 0, GSINK_GGML_F16 = 1, GSINK_GGML_Q4_0 = 2, GSINK_GGML_Q4_1 = 3,
    GSINK_GGML_Q5_0 = 6, GSINK_GGML_Q5_1 = 7, GSINK_GGML_Q8_0 = 8, GSINK_GGML_Q4_K = 12,
    GSINK_GGML_Q5_K = 13, GSINK_GGML_Q6_K = 14, GSINK_GGML_BF16 = 30
};

typedef struct gsink__gguf_str { const char *ptr; uint64_t len; } gsink__gguf_str;

typedef struct gsink__gguf_kv {
    gsink__gguf_str key;
    uint32_t type;        /* GSINK_GGUF_* */
    /* scalars */
    uint64_t u;           /* unsigned/bool value */
    int64_t i;            /* signed value */
    double f;             /* float value */
    gsink__gguf_str s;    /* STRING */
    /* arrays */
    uint32_t arr_type;
    uint64_t arr_n;
    size_t arr_off;       /* file offset of the first element */
} gsink__gguf_kv;

typedef struct gsink__gguf_tensor {
    gsink__gguf_str name;
    uint32_t n_dims;
    uint64_t ne[4];       /* innermost first; unused dims are 1 */
    uint32_t type;
    uint64_t offset;      /* relative to the data section */
    size_t nbytes;
    size_t numel;
} gsink__gguf_tensor;

typedef struct gsink__gguf {
    gsink__file file;
    uint32_t version;
    uint64_t n_kv, n_tensors;
    gsink__gguf_kv *kv;
    gsink__gguf_tensor *tensors;
    size_t *kv_by_key, *t_by_name; /* indices sorted by key / name (binary search) */
    size_t alignment;
    size_t data_off;      /* absolute file offset of the data section */
} gsink__gguf;

/* Parses a GGUF file held in memory (does not take ownership of data). */
gsink_status gsink__gguf_parse(const uint8_t *data, size_t size, gsink__gguf *g, char *err);
/* Opens, maps and parses path; g owns the mapping afterwards. */
gsink_status gsink__gguf_open(const char *path, gsink__gguf *g, char *err);
void gsink__gguf_close(gsink__gguf *g);
/* The tokenizer of a parsed GGUF (gsink_tokenizer_load_gguf without the
 * file; it copies what it keeps, so g may be closed afterwards). */
gsink_status gsink__tokenizer_from_gguf(gsink__gguf *g, gsink_tokenizer **out);
/* A tokenizer from tokenizer.json text (no tokenizer_config.json). */
gsink_status gsink__tokenizer_from_json_text(const char *text, size_t len, gsink_tokenizer **out);
const gsink__gguf_kv *gsink__gguf_find(const gsink__gguf *g, const char *key);
const gsink__gguf_tensor *gsink__gguf_find_tensor(const gsink__gguf *g, const char *name);
/* Next string of a string array (validated by the parser); start the cursor
 * at kv->arr_off. Only for files opened with gsink__gguf_open. */
gsink__gguf_str gsink__gguf_next_str(const gsink__gguf *g, size_t *cursor);
/* Builds a model from a parsed GGUF (llama architecture). */
gsink_status gsink__gguf_load_model(gsink__gguf *g, const gsink_model_options *opts,
                                    gsink_model **out, char *err);

/* ---- quantisation ------------------------------------------------------- */

/* Block size (elements) and bytes per block of a ggml type; 0 if unknown. */
int gsink__ggml_block(uint32_t type, size_t *block_elems, size_t *block_bytes);
const char *gsink__ggml_type_name(uint32_t type);
/* Dequantises n elements (a multiple of the block size) from src to dst. */
void gsink__dequantize(uint32_t type, const uint8_t *src, float *dst, size_t n);

/* ---- safetensors -------------------------------------------------------- */

gsink_status gsink__st_load_dir(const char *dir, const char *weights_path,
                                const gsink_model_options *opts, gsink_model **out, char *err);
/* Parses a safetensors file in memory and checks every tensor (for fuzzing). */
gsink_status gsink__st_check(const uint8_t *data, size_t size, char *err);

/* Writes code point cp as UTF-8 (1-4 bytes) at o; returns the length. */
size_t gsink__utf8_put(char *o, uint32_t cp);

#endif
