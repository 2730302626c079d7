/* load.c - gsink_model_load: picks the reader from the path and the magic. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io_internal.h"

gsink_status gsink_model_load(const char *path, const gsink_model_options *opts, gsink_model **out)
{
    if (!out) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    *out = NULL;
    if (!path) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "path is NULL");
    if (opts && opts->size < sizeof(size_t))
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "opts->size is not set (use gsink_model_options_init)");
    struct stat sb;
    if (stat(path, &sb) != 0)
        return gsink__fail(NULL, GSINK_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return gsink__st_load_dir(path, NULL, opts, out, NULL);

    gsink__file f;
    gsink_status st = gsink__file_open(path, &f, NULL);
    if (st) return st;
    int is_gguf = f.size >= 4 && memcmp(f.data, "GGUF", 4) == 0;
    int is_st = f.size >= 9 && f.data[8] == '{';
    int is_json = f.size >= 1 && f.data[0] == '{';
    if (is_gguf) {
        gsink__gguf g;
        st = gsink__gguf_parse(f.data, f.size, &g, NULL);
        if (st) {
            gsink__file_close(&f);
            return st;
        }
        g.file = f; /* g owns the mapping now */
        st = gsink__gguf_load_model(&g, opts, out, NULL);
        gsink__gguf_close(&g);
        return st;
    }
    gsink__file_close(&f);
    if (!is_st && !is_json) {
        const char *dot = strrchr(path, '.');
        if (dot && strcmp(dot, ".gguf") == 0)
            return gsink__fail(NULL, GSINK_ERR_FORMAT, "'%s': wrong magic (not a GGUF file)", path);
        return gsink__fail(NULL, GSINK_ERR_FORMAT,
                           "'%s' is neither a GGUF file, a safetensors file nor a checkpoint directory", path);
    }
    /* A .safetensors file (or a sharded index) with config.json beside it. */
    char *dir = strdup(path);
    if (!dir) return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else strcpy(dir, ".");
    st = gsink__st_load_dir(dir, is_json ? NULL : path, opts, out, NULL);
    free(dir);
    return st;
}
