/* error.c - status strings, per-thread and per-handle messages, versions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Thread_local char tls_msg[GSINK_MSG_SIZE];

const char *gsink_status_str(gsink_status status)
{
    switch (status) {
    case GSINK_OK: return "ok";
    case GSINK_ERR_NULL_ARGUMENT: return "null argument";
    case GSINK_ERR_INVALID_ARGUMENT: return "invalid argument";
    case GSINK_ERR_OUT_OF_MEMORY: return "out of memory";
    case GSINK_ERR_TOKEN_OUT_OF_RANGE: return "token id out of range";
    case GSINK_ERR_SEQ_TOO_LONG: return "sequence longer than max_seq_len";
    case GSINK_ERR_BAD_CONFIG: return "inconsistent model configuration";
    case GSINK_ERR_CALL_ORDER: return "wrong call order";
    case GSINK_ERR_NO_TARGETS: return "no targets";
    case GSINK_ERR_UNKNOWN_SITE: return "unknown site";
    case GSINK_ERR_UNKNOWN_NAME: return "unknown name";
    case GSINK_ERR_OUT_OF_RANGE: return "index out of range";
    case GSINK_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case GSINK_ERR_SHAPE_MISMATCH: return "shape mismatch";
    case GSINK_ERR_IO: return "i/o error";
    case GSINK_ERR_FORMAT: return "malformed file";
    case GSINK_ERR_UNSUPPORTED: return "unsupported";
    case GSINK_ERR_NO_DEVICE: return "no such device";
    case GSINK_ERR_BACKEND: return "backend failure";
    case GSINK_ERR_NON_FINITE: return "non-finite values";
    case GSINK_ERR_MISSING_TENSOR: return "missing tensor";
    case GSINK_ERR_DEVICE_OUT_OF_MEMORY: return "device out of memory";
    case GSINK_ERR_BUSY: return "handle busy";
    case GSINK_ERR_CANCELLED: return "cancelled";
    }
    return "unknown status";
}

const char *gsink_last_error(void) { return tls_msg; }

/* The address of a thread-local object identifies the thread while it runs
 * (never 0; the owner word is cleared before a call returns, so a later
 * thread reusing the address cannot find itself owner by mistake). */
static _Thread_local char tls_self;

static uintptr_t self_id(void) { return (uintptr_t)&tls_self; }

bool gsink__use_acquire(gsink__use *u, gsink__owner *owner)
{
    uintptr_t idle = 0, me = self_id();
    u->owner = NULL;
    if (atomic_compare_exchange_strong_explicit(owner, &idle, me, memory_order_acquire,
                                                memory_order_relaxed)) {
        u->owner = owner;
        return true;
    }
    return idle == me; /* nested call on the owning thread */
}

void gsink__use_release(gsink__use *u)
{
    if (u->owner) atomic_store_explicit(u->owner, 0, memory_order_release);
    u->owner = NULL;
}

bool gsink__used_elsewhere(const gsink__owner *owner)
{
    uintptr_t o = atomic_load_explicit((gsink__owner *)owner, memory_order_acquire);
    return o != 0 && o != self_id();
}

gsink_status gsink__busy(const char *what)
{
    /* Only the thread's own slot: the handle's buffer belongs to the owner. */
    return gsink__fail(NULL, GSINK_ERR_BUSY, GSINK__BUSY_MSG("%s"), what);
}

gsink_status gsink__fail(char *msgbuf, gsink_status status, const char *fmt, ...)
{
    /* Format into a local buffer first: callers may pass gsink_last_error()
     * (tls_msg itself) as an argument, and vsnprintf into its own source is
     * undefined (glibc yields ""). */
    char buf[GSINK_MSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(tls_msg, buf, GSINK_MSG_SIZE);
    if (msgbuf && msgbuf != tls_msg) memcpy(msgbuf, tls_msg, GSINK_MSG_SIZE);
    return status;
}

void gsink__clear(char *msgbuf)
{
    if (msgbuf) msgbuf[0] = '\0';
}

size_t gsink__copy_sized(void *out, size_t size, const void *full, size_t full_size)
{
    size_t n = size < full_size ? size : full_size;
    if (!out || n < sizeof(size_t)) return 0;
    memcpy(out, full, n);
    memcpy(out, &n, sizeof n);
    return n;
}

bool gsink__mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a) return false;
    *out = a * b;
    return true;
}

void gsink_free(void *ptr) { free(ptr); }

int gsink_version_number(void) { return GSINK_VERSION_NUMBER; }
const char *gsink_version_string(void) { return GSINK_VERSION_STRING; }
