/*
 * cuda_emu.h - a small host emulation of the CUDA runtime, cuBLAS and device
 * intrinsics used by cuda/ (the .cu files), for testing the kernels without a GPU.
 *
 * Blocks run one after another; the threads of a block are ucontext fibers
 * on one OS thread, switched at __syncthreads() and at warp shuffles, so
 * barrier placement, shared-memory indexing, masking and reductions execute
 * as written. Shared memory is static storage (one block at a time) and
 * dynamic shared memory is filled with NaN bytes before every block, so a
 * read of an element that was never written shows up in the results.
 * It checks logic, not timing, memory model or performance.
 */
#ifndef GSINK_CUDA_EMU_H
#define GSINK_CUDA_EMU_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
#include <time.h>
#include <setjmp.h>
#include <ucontext.h>

#include <tuple>
#include <utility>
#include <vector>

/* ---- language ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

namespace emu {

enum { F_READY, F_AT_SYNC, F_AT_SHFL, F_BLOCK_END };
struct fiber {
    ucontext_t ctx; /* used once per launch to enter the fiber */
    jmp_buf jb;     /* later switches: _setjmp/_longjmp (no signal-mask syscalls) */
    uint3 tid;
    int lin, state, started;
    unsigned shfl_count;
};

inline fiber *cur;
inline jmp_buf sched_jb;
inline uint3 g_block_idx;
inline dim3 g_block_dim, g_grid_dim;
inline std::vector<fiber> fibers;
struct stack_pool {
    std::vector<char *> v;
    ~stack_pool()
    {
        for (char *p : v) free(p);
    }
};
inline stack_pool stacks_pool;
inline std::vector<char *> &stacks = stacks_pool.v;
inline unsigned char shfl_slots[2][1024][8];
inline void (*g_body)(void *);
inline void *g_body_arg;
inline float *g_dyn_smem;
inline size_t g_dyn_smem_bytes;
inline int g_last_error;
const size_t STACK = 256 * 1024;

inline void yield(int state)
{
    cur->state = state;
    if (_setjmp(cur->jb) == 0) _longjmp(sched_jb, 1);
}

/* A fiber runs the kernel body once per block of the launch; the end of a
 * block acts as a barrier for all the block's threads. */
inline void trampoline()
{
    for (;;) {
        g_body(g_body_arg);
        yield(F_BLOCK_END);
    }
}

inline void resume(fiber &f)
{
    cur = &f;
    f.state = F_READY;
    if (_setjmp(sched_jb) == 0) {
        if (!f.started) {
            f.started = 1;
            setcontext(&f.ctx);
        }
        _longjmp(f.jb, 1);
    }
}

inline void run_launch()
{
    unsigned n = g_block_dim.x * g_block_dim.y * g_block_dim.z;
    fibers.assign(n, fiber());
    while (stacks.size() < n) stacks.push_back((char *)malloc(STACK));
    for (unsigned i = 0; i < n; i++) {
        fiber &f = fibers[i];
        f.lin = (int)i;
        f.tid = {i % g_block_dim.x, (i / g_block_dim.x) % g_block_dim.y, i / (g_block_dim.x * g_block_dim.y)};
        f.started = 0;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks[i];
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = NULL;
        makecontext(&f.ctx, trampoline, 0);
    }
    for (unsigned z = 0; z < g_grid_dim.z; z++)
        for (unsigned y = 0; y < g_grid_dim.y; y++)
            for (unsigned x = 0; x < g_grid_dim.x; x++) {
                g_block_idx = {x, y, z};
                if (g_dyn_smem) memset(g_dyn_smem, 0xff, g_dyn_smem_bytes); /* NaN */
                for (unsigned i = 0; i < n; i++) {
                    fibers[i].state = F_READY;
                    fibers[i].shfl_count = 0;
                }
                for (;;) {
                    bool runnable = false, waiting = false;
                    for (unsigned i = 0; i < n; i++) {
                        int st = fibers[i].state;
                        if (st == F_READY || st == F_AT_SHFL) runnable = true;
                        if (st == F_AT_SYNC) waiting = true;
                    }
                    if (runnable) {
                        for (unsigned i = 0; i < n; i++)
                            if (fibers[i].state == F_READY || fibers[i].state == F_AT_SHFL) resume(fibers[i]);
                    } else if (waiting) {
                        for (unsigned i = 0; i < n; i++)
                            if (fibers[i].state == F_AT_SYNC) fibers[i].state = F_READY;
                    } else {
                        break; /* every thread finished this block */
                    }
                }
            }
    /* The fibers are abandoned at their block-end yield; the next launch
     * makes fresh contexts on the same stacks. */
}

/* GSINK_EMU_PROFILE=1: per-kernel emulated time on stderr at exit. */
struct prof_entry { void *k; double s; size_t threads; long calls; };
inline std::vector<prof_entry> prof;
inline double prof_t0;
inline double prof_now()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
inline void prof_dump()
{
    for (auto &e : prof) {
        Dl_info di;
        const char *nm = dladdr(e.k, &di) && di.dli_sname ? di.dli_sname : "?";
        fprintf(stderr, "emu %8.3f s %6ld calls %10zu threads %s\n", e.s, e.calls, e.threads, nm);
    }
}
inline void prof_enter() { prof_t0 = prof_now(); }
inline void prof_leave(void *k, size_t threads)
{
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("GSINK_EMU_PROFILE");
        on = e && e[0] == '1';
        if (on) atexit(prof_dump);
    }
    if (!on) return;
    double dt = prof_now() - prof_t0;
    for (auto &e : prof)
        if (e.k == k) {
            e.s += dt;
            e.threads += threads;
            e.calls++;
            return;
        }
    prof.push_back({k, dt, threads, 1});
}

template <class Tup> void call_body(void *p)
{
    Tup *t = (Tup *)p;
    std::apply(std::get<0>(*t), std::get<1>(*t));
}

template <class... P> struct launcher {
    dim3 grid, block;
    size_t smem;
    void (*kernel)(P...);
    template <class... A> void operator()(A &&...args)
    {
        unsigned n = block.x * block.y * block.z;
        if (n == 0 || n > 1024 || n % 32 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
            grid.y > 65535 || grid.z > 65535) {
            g_last_error = 9; /* cudaErrorInvalidConfiguration */
            return;
        }
        auto tup = std::make_tuple(kernel, std::tuple<P...>(std::forward<A>(args)...));
        g_body = &call_body<decltype(tup)>;
        g_body_arg = &tup;
        g_block_dim = block;
        g_grid_dim = grid;
        std::vector<float> dyn((smem + 3) / 4 + 1);
        g_dyn_smem = dyn.data();
        g_dyn_smem_bytes = smem;
        prof_enter();
        run_launch();
        g_dyn_smem = NULL;
        prof_leave((void *)kernel, grid.x * grid.y * grid.z * n);
    }
};

template <class... P> launcher<P...> make_launcher(dim3 g, dim3 b, size_t smem, void (*k)(P...))
{
    return launcher<P...>{g, b, smem, k};
}

template <class T> T shfl_xor(T v, int mask)
{
    unsigned buf = cur->shfl_count++ & 1;
    memcpy(shfl_slots[buf][cur->lin], &v, sizeof(T));
    yield(F_AT_SHFL);
    int partner = (cur->lin & ~31) | ((cur->lin & 31) ^ mask);
    T r;
    memcpy(&r, shfl_slots[buf][partner], sizeof(T));
    return r;
}

} // namespace emu

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::g_block_idx)
#define blockDim (emu::g_block_dim)
#define gridDim (emu::g_grid_dim)
#define GSINK_LAUNCH(kernel, grid, block, smem, stream) \
    ((void)(stream), emu::make_launcher(dim3(grid), dim3(block), (size_t)(smem), kernel))
#define GSINK_DYN_SMEM(name) float *name = emu::g_dyn_smem

inline void __syncthreads() { emu::yield(emu::F_AT_SYNC); }
template <class T> inline T __shfl_xor_sync(unsigned, T v, int mask) { return emu::shfl_xor(v, mask); }
template <class T> inline T __ldg(const T *p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }

/* ---- runtime ---- */
typedef int cudaError_t;
enum {
    cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9, cudaErrorInsufficientDriver = 35, cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101
};
typedef void *cudaStream_t;
enum { cudaStreamNonBlocking = 1 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem, sharedMemPerBlockOptin;
};

inline cudaError_t cudaGetLastError()
{
    int e = emu::g_last_error;
    emu::g_last_error = 0;
    return e;
}
inline const char *cudaGetErrorString(cudaError_t e) { return e == 2 ? "out of memory" : e ? "emulated CUDA error" : "no error"; }
inline const char *cudaGetErrorName(cudaError_t e) { return e == 2 ? "cudaErrorMemoryAllocation" : e ? "cudaErrorEmulated" : "cudaSuccess"; }
inline cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return 0; }
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? 0 : cudaErrorInvalidDevice; }
inline cudaError_t cudaGetDevice(int *d) { *d = 0; return 0; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d != 0) return cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "host emulation");
    p->major = 9;
    p->multiProcessorCount = 1;
    p->totalGlobalMem = (size_t)1 << 34;
    p->sharedMemPerBlockOptin = 227 * 1024;
    return 0;
}
inline cudaError_t cudaRuntimeGetVersion(int *v) { *v = 13000; return 0; }
inline cudaError_t cudaDriverGetVersion(int *v) { *v = 13000; return 0; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, int) { *s = (void *)1; return 0; }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return 0; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return 0; }
inline cudaError_t cudaMalloc(void **p, size_t n)
{
    *p = n > ((size_t)1 << 40) ? NULL : malloc(n ? n : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    memset(*p, 0xff, n); /* device memory starts as garbage (NaN) */
    return 0;
}
inline cudaError_t cudaFree(void *p) { free(p); return 0; }
inline cudaError_t cudaMemGetInfo(size_t *f, size_t *t) { *f = *t = (size_t)1 << 34; return 0; }
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t)
{
    memmove(d, s, n);
    return 0;
}
inline cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t) { memset(d, v, n); return 0; }
template <class K> inline cudaError_t cudaFuncSetAttribute(K, cudaFuncAttribute, int) { return 0; }

/* ---- cuBLAS ---- */
typedef void *cublasHandle_t;
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_ARCH_MISMATCH = 8, CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13, CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;
inline cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = (void *)1; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasDestroy(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
/* Column-major reference SGEMM with cuBLAS's argument checks. */
inline cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                  int n, int k, const float *alpha, const float *A, int lda,
                                  const float *B, int ldb, const float *beta, float *C, int ldc)
{
    if (m < 0 || n < 0 || k < 0 || ldc < (m > 1 ? m : 1) || lda < ((ta ? k : m) > 1 ? (ta ? k : m) : 1) ||
        ldb < ((tb ? n : k) > 1 ? (tb ? n : k) : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            for (int p = 0; p < k; p++) {
                float a = ta ? A[(size_t)i * lda + p] : A[(size_t)p * lda + i];
                float b = tb ? B[(size_t)p * ldb + j] : B[(size_t)j * ldb + p];
                s += (double)a * b;
            }
            float *c = C + (size_t)j * ldc + i;
            *c = (float)(*alpha * s + (*beta == 0.0f ? 0.0 : (double)*beta * *c));
        }
    return CUBLAS_STATUS_SUCCESS;
}

#endif
