/* file.c - read-only file mapping, atomic writes, half-precision floats. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io_internal.h"

int gsink__open_regular(const char *path, struct stat *st, char *err)
{
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
     * writer forever (and a device could block too). The flag is cleared once
     * the file is known to be a regular file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        gsink__fail(err, GSINK_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, st) != 0) {
        int e = errno;
        close(fd);
        gsink__fail(err, GSINK_ERR_IO, "cannot stat '%s': %s", path, strerror(e));
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        gsink__fail(err, GSINK_ERR_IO, "'%s' is not a regular file (%s)", path,
                    S_ISDIR(st->st_mode) ? "a directory" : S_ISFIFO(st->st_mode) ? "a FIFO"
                    : S_ISSOCK(st->st_mode) ? "a socket" : S_ISCHR(st->st_mode) ? "a character device"
                    : S_ISBLK(st->st_mode) ? "a block device" : "not a plain file");
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        gsink__fail(err, GSINK_ERR_IO, "cannot read '%s': %s", path, strerror(e));
        return -1;
    }
    return fd;
}

gsink_status gsink__file_open(const char *path, gsink__file *f, char *err)
{
    memset(f, 0, sizeof *f);
    struct stat st;
    int fd = gsink__open_regular(path, &st, err);
    if (fd < 0) return GSINK_ERR_IO;
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return gsink__fail(err, GSINK_ERR_IO, "'%s' is too large to map", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size == 0) {
        close(fd);
        return GSINK_OK;
    }
    void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
        f->data = p;
        f->mapped = 1;
        close(fd);
        return GSINK_OK;
    }
    /* Fall back to reading (e.g. file systems without mmap). */
    uint8_t *buf = malloc(f->size);
    if (!buf) {
        close(fd);
        return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes for '%s'",
                           f->size, path);
    }
    size_t got = 0;
    while (got < f->size) {
        ssize_t r = read(fd, buf + got, f->size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            free(buf);
            close(fd);
            return gsink__fail(err, GSINK_ERR_IO, "cannot read '%s': %s", path,
                               r == 0 ? "unexpected end of file" : strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    f->data = buf;
    f->mapped = 0;
    return GSINK_OK;
}

void gsink__file_close(gsink__file *f)
{
    if (!f) return;
    if (f->data) {
        if (f->mapped) munmap((void *)f->data, f->size);
        else free((void *)f->data);
    }
    memset(f, 0, sizeof *f);
}

gsink_status gsink__read_text(const char *path, size_t max_bytes, char **out, size_t *len, char *err)
{
    *out = NULL;
    gsink__file f;
    gsink_status st = gsink__file_open(path, &f, err);
    if (st) return st;
    if (f.size > max_bytes) {
        gsink__file_close(&f);
        return gsink__fail(err, GSINK_ERR_FORMAT, "'%s' is larger than %zu bytes", path, max_bytes);
    }
    char *buf = malloc(f.size + 1);
    if (!buf) {
        gsink__file_close(&f);
        return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
    }
    if (f.size) memcpy(buf, f.data, f.size);
    buf[f.size] = '\0';
    *len = f.size;
    *out = buf;
    gsink__file_close(&f);
    return GSINK_OK;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

gsink_status gsink__afile_open(gsink__afile *a, const char *path, char *err)
{
    memset(a, 0, sizeof *a);
    a->fd = -1;
    size_t plen = strlen(path);
    a->path = strdup(path);
    a->tmp = malloc(plen + 16);
    if (!a->path || !a->tmp) {
        gsink__afile_abort(a);
        return gsink__fail(err, GSINK_ERR_OUT_OF_MEMORY, "out of memory");
    }
    memcpy(a->tmp, path, plen);
    memcpy(a->tmp + plen, ".tmp.XXXXXX", 12);
    a->fd = mkostemp(a->tmp, O_CLOEXEC);
    if (a->fd < 0) {
        gsink_status st = gsink__fail(err, GSINK_ERR_IO, "cannot create a temporary file for '%s': %s",
                                      path, strerror(errno));
        free(a->tmp);
        a->tmp = NULL;
        gsink__afile_abort(a);
        return st;
    }
    return GSINK_OK;
}

gsink_status gsink__afile_write(gsink__afile *a, const void *data, size_t size, char *err)
{
    if (write_all(a->fd, data, size) != 0)
        return gsink__fail(err, GSINK_ERR_IO, "cannot write '%s': %s", a->tmp, strerror(errno));
    return GSINK_OK;
}

gsink_status gsink__afile_pwrite(gsink__afile *a, const void *data, size_t size, size_t offset, char *err)
{
    const uint8_t *p = data;
    while (size > 0) {
        ssize_t w = pwrite(a->fd, p, size, (off_t)offset);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return gsink__fail(err, GSINK_ERR_IO, "cannot write '%s': %s", a->tmp, strerror(errno));
        p += w;
        size -= (size_t)w;
        offset += (size_t)w;
    }
    return GSINK_OK;
}

gsink_status gsink__afile_commit(gsink__afile *a, char *err)
{
    gsink_status st = GSINK_OK;
    (void)fchmod(a->fd, 0644); /* mkstemp creates 0600; match an ordinary file */
    if (fsync(a->fd) != 0) {
        st = gsink__fail(err, GSINK_ERR_IO, "cannot sync '%s': %s", a->tmp, strerror(errno));
    } else if (close(a->fd) != 0) {
        a->fd = -1;
        st = gsink__fail(err, GSINK_ERR_IO, "cannot close '%s': %s", a->tmp, strerror(errno));
    } else {
        a->fd = -1;
        if (rename(a->tmp, a->path) != 0) {
            st = gsink__fail(err, GSINK_ERR_IO, "cannot rename '%s' to '%s': %s", a->tmp, a->path,
                             strerror(errno));
        } else {
            free(a->tmp);
            a->tmp = NULL; /* nothing to unlink any more */
            char *d = strdup(a->path);
            if (d) {
                int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (dfd >= 0) {
                    (void)fsync(dfd);
                    close(dfd);
                }
                free(d);
            }
        }
    }
    gsink__afile_abort(a);
    return st;
}

void gsink__afile_abort(gsink__afile *a)
{
    if (a->fd >= 0) close(a->fd);
    if (a->tmp) unlink(a->tmp);
    free(a->tmp);
    free(a->path);
    memset(a, 0, sizeof *a);
    a->fd = -1;
}

gsink_status gsink__write_atomic(const char *path, const void *data, size_t size, char *err)
{
    gsink__afile a;
    gsink_status st = gsink__afile_open(&a, path, err);
    if (st) return st;
    if ((st = gsink__afile_write(&a, data, size, err))) {
        gsink__afile_abort(&a);
        return st;
    }
    return gsink__afile_commit(&a, err);
}

float gsink__f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float gsink__bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

gsink_status gsink__refail(char *err, gsink_status st, const char *prefix)
{
    char msg[GSINK_MSG_SIZE];
    snprintf(msg, sizeof msg, "%s", gsink_last_error());
    return gsink__fail(err, st, "%s: %s", prefix, msg);
}
