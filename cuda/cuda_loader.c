/*
 * cuda_loader.c - finds and loads the CUDA module (libgsink-cuda.so) on
 * demand. Compiled into libgsink in every build: when the module was not
 * built, is missing, or the driver/GPU is absent, device queries report 0
 * CUDA devices and gsink_cuda_backend_create returns GSINK_ERR_NO_DEVICE.
 *
 * Search order for the module:
 *   1. $GSINK_CUDA_MODULE (a full path; used by the test suites),
 *   2. the directory holding libgsink itself (found with dladdr),
 *   3. the install libdir (GSINK_CUDA_MODULE_INSTALL_DIR),
 *   4. the build tree (GSINK_CUDA_MODULE_BUILD_PATH, only if the file exists),
 *   5. the bare file name through the dynamic loader's search path.
 * The module is loaded once per process (pthread_once) and never unloaded:
 * the CUDA runtime inside it registers process-exit handlers.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_module.h"
#include "internal.h"

/* lib/model.c passes a gsink_precision as the module's math mode. */
_Static_assert((int)GSINK_CUDA_MATH_FP32 == (int)GSINK_PRECISION_FP32 &&
                   (int)GSINK_CUDA_MATH_TF32 == (int)GSINK_PRECISION_TF32 &&
                   (int)GSINK_CUDA_MATH_BF16 == (int)GSINK_PRECISION_BF16,
               "CUDA math modes and gsink_precision must share their values");

static pthread_once_t module_once = PTHREAD_ONCE_INIT;
static const gsink_cuda_module *module_table; /* written once under module_once */
static char module_error[GSINK_MSG_SIZE];

static void *try_open(const char *path, char *why, size_t why_size)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(why, why_size, "%.300s", e ? e : path);
    }
    return h;
}

static void load_module(void)
{
    char why[384] = "";
    char path[4096];
    void *h = NULL;

    const char *env = getenv("GSINK_CUDA_MODULE");
    if (env && env[0]) h = try_open(env, why, sizeof why);

    if (!h) {
        Dl_info info;
        if (dladdr((void *)&gsink_cuda_device_count, &info) && info.dli_fname) {
            const char *slash = strrchr(info.dli_fname, '/');
            if (slash) {
                int n = snprintf(path, sizeof path, "%.*s/%s", (int)(slash - info.dli_fname),
                                 info.dli_fname, GSINK_CUDA_MODULE_FILE);
                if (n > 0 && (size_t)n < sizeof path && access(path, F_OK) == 0)
                    h = try_open(path, why, sizeof why);
            }
        }
    }
#ifdef GSINK_CUDA_MODULE_INSTALL_DIR
    if (!h) {
        int n = snprintf(path, sizeof path, "%s/%s", GSINK_CUDA_MODULE_INSTALL_DIR,
                         GSINK_CUDA_MODULE_FILE);
        if (n > 0 && (size_t)n < sizeof path && access(path, F_OK) == 0)
            h = try_open(path, why, sizeof why);
    }
#endif
#ifdef GSINK_CUDA_MODULE_BUILD_PATH
    if (!h && access(GSINK_CUDA_MODULE_BUILD_PATH, F_OK) == 0)
        h = try_open(GSINK_CUDA_MODULE_BUILD_PATH, why, sizeof why);
#endif
    if (!h) {
        char bare_why[384] = "";
        h = try_open(GSINK_CUDA_MODULE_FILE, bare_why, sizeof bare_why);
        if (!h && !why[0]) snprintf(why, sizeof why, "%s", bare_why);
    }
    if (!h) {
#ifdef GSINK_HAVE_CUDA_MODULE
        snprintf(module_error, sizeof module_error,
                 "CUDA module %s could not be loaded: %s", GSINK_CUDA_MODULE_FILE, why);
#else
        snprintf(module_error, sizeof module_error,
                 "libgsink was built without the CUDA backend (-Dcuda=disabled or no nvcc)");
#endif
        return;
    }
    gsink_cuda_module_entry_fn entry;
    void *sym = dlsym(h, GSINK_CUDA_MODULE_ENTRY);
    memcpy(&entry, &sym, sizeof entry); /* object pointer -> function pointer */
    const gsink_cuda_module *t = sym ? entry() : NULL;
    if (!t) {
        snprintf(module_error, sizeof module_error, "CUDA module has no entry point %s",
                 GSINK_CUDA_MODULE_ENTRY);
        return; /* keep the handle: unloading a half-initialised runtime is riskier */
    }
    if (t->module_abi != GSINK_CUDA_MODULE_ABI ||
        t->backend_api_version != GSINK_BACKEND_API_VERSION) {
        snprintf(module_error, sizeof module_error,
                 "CUDA module version mismatch (module abi %d, backend api %d; expected %d, %d)",
                 t->module_abi, t->backend_api_version, GSINK_CUDA_MODULE_ABI,
                 GSINK_BACKEND_API_VERSION);
        return;
    }
    module_table = t;
}

const gsink_cuda_module *gsink__cuda_module(char *msg, size_t msg_size)
{
    pthread_once(&module_once, load_module);
    if (!module_table && msg && msg_size) snprintf(msg, msg_size, "%s", module_error);
    return module_table;
}

int gsink_cuda_device_count(void)
{
    const gsink_cuda_module *m = gsink__cuda_module(NULL, 0);
    if (!m) return 0;
    char why[256];
    int n = m->device_count(why, sizeof why);
    return n > 0 ? n : 0;
}

void gsink_cuda_describe(int index, char *buf, size_t size)
{
    if (!buf || !size) return;
    char why[GSINK_MSG_SIZE];
    const gsink_cuda_module *m = gsink__cuda_module(why, sizeof why);
    if (!m) {
        snprintf(buf, size, "no CUDA device %d: %s", index, why);
        return;
    }
    int n = m->device_count(why, sizeof why);
    if (index < 0 || index >= n) {
        if (n > 0)
            snprintf(buf, size, "no CUDA device %d (%d present)", index, n);
        else
            snprintf(buf, size, "no CUDA device %d: %s", index, why);
        return;
    }
    m->describe(index, buf, size);
}

gsink_status gsink_cuda_backend_create(int device_index, gsink_backend **out)
{
    if (!out) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "out is NULL");
    *out = NULL;
    char why[GSINK_MSG_SIZE];
    const gsink_cuda_module *m = gsink__cuda_module(why, sizeof why);
    if (!m) return gsink__fail(NULL, GSINK_ERR_NO_DEVICE, "no CUDA device: %s", why);
    int n = m->device_count(why, sizeof why);
    if (n <= 0) return gsink__fail(NULL, GSINK_ERR_NO_DEVICE, "no CUDA device: %s", why);
    if (device_index < 0 || device_index >= n)
        return gsink__fail(NULL, GSINK_ERR_NO_DEVICE, "CUDA device index %d out of range (%d present)",
                           device_index, n);
    gsink_status st = m->create(device_index, out, why, sizeof why);
    if (st != GSINK_OK) {
        *out = NULL;
        return gsink__fail(NULL, st, "CUDA backend on device %d: %s", device_index, why);
    }
    return GSINK_OK;
}

gsink_status gsink__cuda_set_math(gsink_backend *be, int mode)
{
    if (!be) return gsink__fail(NULL, GSINK_ERR_NULL_ARGUMENT, "backend is NULL");
    const gsink_cuda_module *m = gsink__cuda_module(NULL, 0);
    if (!m || !be->iface || strcmp(be->iface->name, "cuda") != 0)
        return gsink__fail(NULL, GSINK_ERR_INVALID_ARGUMENT, "not a CUDA backend");
    gsink_status st = m->set_math(be, mode);
    if (st) return gsink__fail(NULL, st, "%s", be->err);
    return GSINK_OK;
}
