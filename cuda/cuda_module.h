/*
 * cuda_module.h - contract between libgsink and the separately built CUDA
 * module (libgsink-cuda.so).
 *
 * libgsink never links against the CUDA driver or runtime. The loader
 * (cuda_loader.c, inside libgsink) dlopen()s the module on first use and looks
 * up one symbol, GSINK_CUDA_MODULE_ENTRY, which returns this table. The module
 * links cudart statically and cuBLAS dynamically, so a machine without a GPU,
 * driver or CUDA toolkit only sees "0 CUDA devices" and CPU work is untouched.
 *
 * The module is self-contained: it does not call back into libgsink (errors
 * are written into the caller's buffers and be->err).
 */
#ifndef GSINK_CUDA_MODULE_H
#define GSINK_CUDA_MODULE_H

#include <stddef.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GSINK_CUDA_MODULE_ENTRY "gsink_cuda_module_v1"
#define GSINK_CUDA_MODULE_FILE "libgsink-cuda.so"
#define GSINK_CUDA_MODULE_ABI 1

/* Math mode of the GEMMs (gsink__cuda_set_math). */
enum { GSINK_CUDA_MATH_FP32 = 0, GSINK_CUDA_MATH_TF32 = 1, GSINK_CUDA_MATH_BF16 = 2 };

typedef struct gsink_cuda_module {
    int module_abi;          /* GSINK_CUDA_MODULE_ABI */
    int backend_api_version; /* GSINK_BACKEND_API_VERSION the module was built against */
    /* Number of usable devices (>= 0). On 0, why is written into msg. */
    int (*device_count)(char *msg, size_t msg_size);
    void (*describe)(int index, char *buf, size_t size);
    /* Creates a backend on device index; on failure msg holds the reason. */
    gsink_status (*create)(int index, gsink_backend **out, char *msg, size_t msg_size);
    /* Selects the GEMM math mode of a backend made by create(). */
    gsink_status (*set_math)(gsink_backend *be, int mode);
} gsink_cuda_module;

typedef const gsink_cuda_module *(*gsink_cuda_module_entry_fn)(void);

#ifdef __cplusplus
}
#endif

/* Loader side (libgsink, hidden): the module table or NULL with the reason in
 * msg. Loaded once per process and never unloaded. */
const gsink_cuda_module *gsink__cuda_module(char *msg, size_t msg_size);
/* Selects GEMM math for a CUDA backend (GSINK_CUDA_MATH_*); the default is
 * exact FP32, or TF32 when GSINK_CUDA_TF32=1 is set at creation. */
gsink_status gsink__cuda_set_math(gsink_backend *be, int mode);

#endif
