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
    unsigned mma_count; /* warp collectives (wmma::mma_sync, mma, ldmatrix) of this thread in the current block */
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

/* Scheduling between block barriers (GSINK_EMU_SCHED):
 *   lockstep (default): every runnable thread runs to its next yield
 *     (barrier, shuffle, __syncwarp, mma) in each round, so all warps move
 *     together;
 *   warps / warps-reverse: one warp at a time (in warp order, or reversed)
 *     runs until all its threads wait at __syncthreads or the block end,
 *     then the next one. Warps are independent between block barriers on
 *     the device, so a kernel whose warps exchange data through shared
 *     memory without a __syncthreads reads stale values (or overwrites
 *     values another warp still needs) under one of these two orders.
 * The lanes of one warp always run in lockstep. */
inline int sched_mode()
{
    static int mode = -1;
    if (mode < 0) {
        const char *e = getenv("GSINK_EMU_SCHED");
        mode = !e || !strcmp(e, "lockstep") ? 0 : !strcmp(e, "warps") ? 1 : !strcmp(e, "warps-reverse") ? 2 : 0;
    }
    return mode;
}

inline bool fiber_runnable(const fiber &f) { return f.state == F_READY || f.state == F_AT_SHFL; }

/* Runs the first warp (in warp order, or reversed) that has a runnable
 * thread until none of its threads is runnable. */
inline void run_one_warp(unsigned n, bool reverse)
{
    unsigned nw = (n + 31) / 32;
    for (unsigned k = 0; k < nw; k++) {
        unsigned w = reverse ? nw - 1 - k : k, lo = 32 * w, hi = lo + 32 < n ? lo + 32 : n;
        bool any = false;
        for (unsigned i = lo; i < hi; i++) any = any || fiber_runnable(fibers[i]);
        if (!any) continue;
        while (any) {
            for (unsigned i = lo; i < hi; i++)
                if (fiber_runnable(fibers[i])) resume(fibers[i]);
            any = false;
            for (unsigned i = lo; i < hi; i++) any = any || fiber_runnable(fibers[i]);
        }
        return;
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
                    fibers[i].mma_count = 0;
                }
                for (;;) {
                    bool runnable = false, waiting = false;
                    for (unsigned i = 0; i < n; i++) {
                        int st = fibers[i].state;
                        if (st == F_READY || st == F_AT_SHFL) runnable = true;
                        if (st == F_AT_SYNC) waiting = true;
                    }
                    if (runnable && sched_mode() == 0) {
                        for (unsigned i = 0; i < n; i++)
                            if (fibers[i].state == F_READY || fibers[i].state == F_AT_SHFL) resume(fibers[i]);
                    } else if (runnable) {
                        run_one_warp(n, sched_mode() == 2);
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
        /* 128-byte aligned, as the kernels' dynamic shared memory is on the
         * device (wmma pointers must be 32-byte aligned). */
        std::vector<float> dyn((smem + 3) / 4 + 1 + 32);
        g_dyn_smem = (float *)(((uintptr_t)dyn.data() + 127) & ~(uintptr_t)127);
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
/* A warp-level barrier: every lane of the warp reaches it before any goes on
 * (all of a warp's lanes run the same sequence of warp-collective calls, so
 * one scheduler round brings them all to it). */
inline void __syncwarp(unsigned = 0xffffffffu) { emu::yield(emu::F_AT_SHFL); }
/* Correctly rounded single operations that are never contracted into an
 * FMA (the volatile store forces the rounding on any host build). */
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline float __fsqrt_rn(float a) { volatile float r = sqrtf(a); return r; }
struct __attribute__((aligned(16), may_alias)) float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

/* ---- bfloat16 (cuda_bf16.h subset) ----
 * Storage is the upper 16 bits of the fp32 pattern. __float2bfloat16_rn and
 * __float2bfloat16 round to nearest, ties to even, like cvt.rn.bf16.f32
 * (overflow to Inf; a NaN becomes the canonical 0x7fff); __bfloat162float is
 * exact. */
struct __nv_bfloat16 { unsigned short __x; };
struct __attribute__((may_alias)) __nv_bfloat162 { __nv_bfloat16 x, y; };
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        r.__x = 0x7fffu;
    else
        r.__x = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return r;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h)
{
    uint32_t u = (uint32_t)h.__x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b)
{
    return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}

/* ---- warp matrix functions: nvcuda::wmma, TF32 m16n16k8 and BF16 m16n16k16 ----
 *
 * Fragments are distributed over the 32 lanes of a warp as on the device:
 * TF32 (m16n16k8): a matrix_a (16x8) or matrix_b (8x16) fragment holds 4
 * float elements per lane; BF16 (m16n16k16): a matrix_a or matrix_b (16x16)
 * fragment holds 8 __nv_bfloat16 elements per lane; an accumulator (16x16,
 * float) holds 8 for either shape; num_elements says so. The element-to-(row,
 * col) mapping is deliberately NOT the hardware's (which CUDA leaves
 * unspecified): element i of lane L is entry ((32 i + L) * 37 + 5) mod N of
 * the tile in row-major order, N = 128 or 256. A kernel that relies on the
 * mapping (other than element-wise operations between fragments of the same
 * type, or on all elements alike) gives wrong results here.
 *
 * load_matrix_sync/store_matrix_sync move only the calling lane's elements and
 * do not synchronise: data written by other lanes must be published with
 * __syncwarp() (or __syncthreads()) first, as on the device. mma_sync is a
 * warp collective: lanes publish their a, b, c elements, meet at a scheduler
 * round (like a shuffle), then each computes its own d elements. A warp whose
 * lanes are not all at the same mma_sync (divergence) is reported as a launch
 * error, as are a pointer that is not 32-byte aligned and an ldm that is not a
 * multiple of 16 bytes (4 floats, 8 bf16) or is smaller than the tile.
 *
 * Numerics: __float_to_tf32 rounds to 10 mantissa bits with the device's
 * cvt.rna.tf32.f32 rule (to nearest, ties away from zero; NaN/Inf unchanged).
 * A TF32 mma_sync reads only the TF32 bits of a and b (the low 13 mantissa
 * bits are dropped, so an unconverted operand is truncated, never used at
 * full precision); a BF16 mma_sync reads its bf16 elements (rounded when they
 * were made, e.g. by __float2bfloat16_rn). Both form exact products (11 x 11
 * or 8 x 8 significant bits fit in fp32) and accumulate them onto c in fp32
 * in k order. The device's accumulation order within one mma is unspecified,
 * so results may differ from it in the last bits of the fp32 sum. */
namespace emu {
enum { ERR_MISALIGNED = 716, ERR_WARP_DIVERGENT = 715 };
inline const char *g_err_detail;
inline void set_error(int code, const char *detail)
{
    if (!g_last_error) {
        g_last_error = code;
        g_err_detail = detail;
    }
}
inline float mma_slots[2][1024][24]; /* per thread: a[K/2], b[K/2], c[8] */
inline unsigned mma_seq[2][1024];
inline float tf32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u &= 0xffffe000u;
    memcpy(&x, &u, 4);
    return x;
}
/* the value an mma reads from an operand element (TF32 fragments store float) */
inline float operand_value(float x) { return tf32_bits(x); }
inline float operand_value(__nv_bfloat16 x) { return __bfloat162float(x); }
/* (lane, element) <-> row-major index of an N-element tile */
inline int frag_index(int lane, int i, int N) { return ((32 * i + lane) * 37 + 5) & (N - 1); }
inline void frag_owner(int idx, int N, int *lane, int *i)
{
    int x = ((idx - 5) * 173) & (N - 1); /* 173 = 37^-1 mod 256 (and mod 128) */
    *lane = x & 31;
    *i = x >> 5;
}
inline void check_ptr(const void *p, unsigned ldm, unsigned min_ldm, size_t elem = 4)
{
    if ((uintptr_t)p % 32) set_error(ERR_MISALIGNED, "wmma pointer not 32-byte aligned (emulation check)");
    if (ldm * elem % 16 || ldm < min_ldm) set_error(ERR_MISALIGNED, "wmma ldm not a multiple of 16 bytes or below the tile width (emulation check)");
}
} // namespace emu

namespace nvcuda {
namespace wmma {
struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
namespace precision {
struct tf32;
}
enum layout_t { mem_row_major, mem_col_major };

inline float __float_to_tf32(float in)
{
    uint32_t u;
    memcpy(&u, &in, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return in; /* Inf, NaN */
    u = (u + 0x1000u) & 0xffffe000u;                 /* nearest, ties away (cvt.rna) */
    float r;
    memcpy(&r, &u, 4);
    return r;
}

template <class Use, int K> struct frag_shape;
template <int K> struct frag_shape<matrix_a, K> { enum { R = 16, C = K }; };
template <int K> struct frag_shape<matrix_b, K> { enum { R = K, C = 16 }; };
template <int K> struct frag_shape<accumulator, K> { enum { R = 16, C = 16 }; };

/* the device's m16n16k8 TF32 and m16n16k16 BF16 sets; storage type of the elements */
template <class Use, int K, class T, class Layout> struct frag_check {
    static_assert(sizeof(T) == 0, "unsupported fragment (the emulation has the device's TF32 m16n16k8 and BF16 m16n16k16 sets)");
};
template <class L> struct frag_check<matrix_a, 8, precision::tf32, L> { typedef float S; };
template <class L> struct frag_check<matrix_b, 8, precision::tf32, L> { typedef float S; };
template <class L> struct frag_check<matrix_a, 16, __nv_bfloat16, L> { typedef __nv_bfloat16 S; };
template <class L> struct frag_check<matrix_b, 16, __nv_bfloat16, L> { typedef __nv_bfloat16 S; };
template <int K> struct frag_check<accumulator, K, float, void> { typedef float S; };

template <class Use, int m, int n, int k, class T, class Layout = void> class fragment {
    static_assert(m == 16 && n == 16 && (k == 8 || k == 16), "the emulation has the shapes m16n16k8 (TF32) and m16n16k16 (BF16) only");

public:
    typedef typename frag_check<Use, k, T, Layout>::S storage_element_type;
    enum { rows = frag_shape<Use, k>::R, cols = frag_shape<Use, k>::C };
    enum { num_elements = rows * cols / 32, num_storage_elements = num_elements };
    storage_element_type x[num_elements];
};

template <class L> struct layout_is_row;
template <> struct layout_is_row<row_major> { enum { v = 1 }; };
template <> struct layout_is_row<col_major> { enum { v = 0 }; };

template <class Use, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, K, T, Layout> &f,
                          const typename fragment<Use, 16, 16, K, T, Layout>::storage_element_type &v)
{
    for (int i = 0; i < f.num_elements; i++) f.x[i] = v;
}

/* matrix_a / matrix_b: the layout comes from the fragment type; p points to
 * the storage type (float for TF32, __nv_bfloat16 for BF16) */
template <class Use, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, K, T, Layout> &f,
                             const typename fragment<Use, 16, 16, K, T, Layout>::storage_element_type *p,
                             unsigned ldm)
{
    typedef fragment<Use, 16, 16, K, T, Layout> F;
    const bool row = layout_is_row<Layout>::v;
    emu::check_ptr(p, ldm, row ? F::cols : F::rows, sizeof *p);
    const int lane = emu::cur->lin & 31, N = F::rows * F::cols;
    for (int i = 0; i < F::num_elements; i++) {
        int idx = emu::frag_index(lane, i, N), r = idx / F::cols, c = idx % F::cols;
        f.x[i] = row ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
    }
}

template <int K>
inline void load_matrix_sync(fragment<accumulator, 16, 16, K, float> &f, const float *p, unsigned ldm, layout_t layout)
{
    emu::check_ptr(p, ldm, 16);
    const int lane = emu::cur->lin & 31;
    for (int i = 0; i < 8; i++) {
        int idx = emu::frag_index(lane, i, 256), r = idx / 16, c = idx % 16;
        f.x[i] = layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
    }
}

template <int K>
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, K, float> &f, unsigned ldm, layout_t layout)
{
    emu::check_ptr(p, ldm, 16);
    const int lane = emu::cur->lin & 31;
    for (int i = 0; i < 8; i++) {
        int idx = emu::frag_index(lane, i, 256), r = idx / 16, c = idx % 16;
        (layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]) = f.x[i];
    }
}

/* d = a b + c over the warp (d may be c). */
template <int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, K, float> &d, const fragment<matrix_a, 16, 16, K, T, LA> &a,
                     const fragment<matrix_b, 16, 16, K, T, LB> &b, const fragment<accumulator, 16, 16, K, float> &c)
{
    (void)layout_is_row<LA>::v;
    (void)layout_is_row<LB>::v;
    enum { NE = K / 2 }; /* operand elements per lane: 16 K / 32 */
    const int lin = emu::cur->lin, lane = lin & 31, base = lin & ~31;
    const unsigned seq = emu::cur->mma_count++, buf = seq & 1;
    float *slot = emu::mma_slots[buf][lin];
    for (int i = 0; i < NE; i++) slot[i] = emu::operand_value(a.x[i]);
    for (int i = 0; i < NE; i++) slot[NE + i] = emu::operand_value(b.x[i]);
    for (int i = 0; i < 8; i++) slot[2 * NE + i] = c.x[i];
    emu::mma_seq[buf][lin] = seq;
    emu::yield(emu::F_AT_SHFL); /* every lane of the warp publishes its part */
    for (int l = 0; l < 32; l++)
        if (emu::mma_seq[buf][base + l] != seq)
            emu::set_error(emu::ERR_WARP_DIVERGENT, "wmma::mma_sync not reached by all lanes of a warp (emulation check)");
    /* where A(r, k), B(k, c) and C(r, c) sit in the slots of lanes 0..31 */
    struct tables {
        short a[16][K], b[K][16], c[256];
        tables()
        {
            int l, i;
            for (int x = 0; x < 16 * K; x++) {
                emu::frag_owner(x, 16 * K, &l, &i);
                a[x / K][x % K] = (short)(l * 24 + i);
                b[x / 16][x % 16] = (short)(l * 24 + NE + i);
            }
            for (int x = 0; x < 256; x++) {
                emu::frag_owner(x, 256, &l, &i);
                c[x] = (short)(l * 24 + 2 * NE + i);
            }
        }
    };
    static const tables tb;
    const float *w = emu::mma_slots[buf][base];
    float out[8];
    for (int i = 0; i < 8; i++) {
        int idx = emu::frag_index(lane, i, 256), r = idx / 16, cc = idx % 16;
        float acc = w[tb.c[idx]];
        for (int kk = 0; kk < K; kk++) acc += w[tb.a[r][kk]] * w[tb.b[kk][cc]]; /* exact product */
        out[i] = acc;
    }
    for (int i = 0; i < 8; i++) d.x[i] = out[i];
}
} // namespace wmma
} // namespace nvcuda

/* ---- mma.sync m16n8k16 (bf16 in, fp32 accumulate) and ldmatrix (PTX) ----
 *
 * Unlike wmma, these have the fragment layouts the PTX ISA documents, and the
 * emulation uses exactly those (cuda/mma_sm80.cuh relies on them to turn an
 * accumulator into an operand in registers). groupID g = lane >> 2,
 * threadID_in_group t = lane % 4; a .b32 register holds two bf16, the lower
 * column (or row) index in its low half:
 *   A (16 x 16, row): a[0] (row g, cols 2t, 2t+1), a[1] (row g + 8, cols 2t..),
 *                     a[2] (row g, cols 2t + 8..), a[3] (row g + 8, cols 2t + 8..);
 *   B (16 x 8, col):  b[0] (rows 2t, 2t+1, col g), b[1] (rows 2t + 8.., col g);
 *   C, D (16 x 8 fp32): c[0], c[1] (row g, cols 2t, 2t+1), c[2], c[3] (row g + 8).
 * mma forms exact products (8 x 8 significant bits fit in fp32) and adds them
 * onto c in k order in fp32 (the device's order within one mma is
 * unspecified: the last bits of a sum may differ from it).
 * ldmatrix.m8n8.xN.b16: lane i gives the address of row i % 8 of matrix i / 8
 * (lanes 0..8N-1; each address 16-byte aligned, else a launch error); for
 * matrix j, lane l receives in register j the 32-bit word of row l / 4,
 * columns 2 (l % 4), 2 (l % 4) + 1; with .trans, rows 2 (l % 4), +1 of
 * column l / 4 (the matrix transposed). Both are warp collectives: every
 * lane of the warp must reach the same one (else a launch error), as with
 * wmma::mma_sync. */
namespace emu {
inline uint32_t coll_slots[2][1024][10];
inline const void *coll_ptr[2][1024];
inline unsigned coll_seq[2][1024];
/* publishes this lane's part of a warp collective (kind, sequence number)
 * and waits until every lane of the warp has; returns the slot buffer */
inline unsigned coll_enter(unsigned kind, const char *what)
{
    const int lin = cur->lin, base = lin & ~31;
    const unsigned seq = cur->mma_count++, buf = seq & 1;
    coll_seq[buf][lin] = seq * 8 + kind;
    yield(F_AT_SHFL);
    for (int l = 0; l < 32; l++)
        if (coll_seq[buf][base + l] != seq * 8 + kind) set_error(ERR_WARP_DIVERGENT, what);
    return buf;
}
inline float bf16_lo(uint32_t w) { uint32_t u = w << 16; float f; memcpy(&f, &u, 4); return f; }
inline float bf16_hi(uint32_t w) { uint32_t u = w & 0xffff0000u; float f; memcpy(&f, &u, 4); return f; }
inline float bf16_half(uint32_t w, int hi) { return hi ? bf16_hi(w) : bf16_lo(w); }

inline void mma_m16n8k16_bf16(float *d, const uint32_t *a, const uint32_t *b, const float *c)
{
    const int lin = cur->lin, base = lin & ~31, lane = lin & 31;
    unsigned buf0 = cur->mma_count & 1;
    uint32_t *slot = coll_slots[buf0][lin];
    for (int i = 0; i < 4; i++) slot[i] = a[i];
    for (int i = 0; i < 2; i++) slot[4 + i] = b[i];
    for (int i = 0; i < 4; i++) memcpy(&slot[6 + i], &c[i], 4);
    const unsigned buf = coll_enter(1, "mma.sync m16n8k16 not reached by all lanes of a warp (emulation check)");
    const uint32_t (*w)[10] = coll_slots[buf] + base;
    const int g = lane >> 2, t = lane & 3;
    float out[4];
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i >> 1), n = 2 * t + (i & 1);
        float acc;
        memcpy(&acc, &w[4 * (r % 8) + n / 2][6 + 2 * (r / 8) + n % 2], 4);
        for (int k = 0; k < 16; k++) {
            /* A(r, k): lane 4 (r % 8) + (k % 8) / 2, register (r / 8) + 2 (k / 8), half k % 2;
             * B(k, n): lane 4 n + (k % 8) / 2, register k / 8, half k % 2 */
            const float av = bf16_half(w[4 * (r % 8) + (k % 8) / 2][(r / 8) + 2 * (k / 8)], k & 1);
            const float bv = bf16_half(w[4 * n + (k % 8) / 2][4 + k / 8], k & 1);
            acc += av * bv; /* exact product */
        }
        out[i] = acc;
    }
    for (int i = 0; i < 4; i++) d[i] = out[i];
}

inline void ldmatrix(uint32_t *r, int num, bool trans, const void *p)
{
    const int lin = cur->lin, base = lin & ~31, lane = lin & 31;
    coll_ptr[cur->mma_count & 1][lin] = p;
    const unsigned buf = coll_enter(trans ? 3 : 2, "ldmatrix not reached by all lanes of a warp (emulation check)");
    for (int l = 0; l < 8 * num; l++)
        if ((uintptr_t)coll_ptr[buf][base + l] % 16)
            set_error(ERR_MISALIGNED, "ldmatrix row address not 16-byte aligned (emulation check)");
    for (int j = 0; j < num; j++) {
        unsigned short e[2];
        for (int h = 0; h < 2; h++) {
            const int row = trans ? 2 * (lane & 3) + h : lane >> 2, col = trans ? lane >> 2 : 2 * (lane & 3) + h;
            const unsigned short *rp = (const unsigned short *)coll_ptr[buf][base + 8 * j + row];
            e[h] = ((uintptr_t)rp % 16) ? 0 : rp[col];
        }
        r[j] = (uint32_t)e[0] | (uint32_t)e[1] << 16;
    }
}
} // namespace emu


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
inline const char *cudaGetErrorString(cudaError_t e)
{
    if ((e == emu::ERR_MISALIGNED || e == emu::ERR_WARP_DIVERGENT) && emu::g_err_detail) return emu::g_err_detail;
    return e == 2 ? "out of memory" : e ? "emulated CUDA error" : "no error";
}
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

/* cublasGemmEx: fp32 in and out, where CUBLAS_COMPUTE_32F_FAST_16BF rounds
 * every input element to bfloat16 (nearest, ties to even) like the tensor
 * cores' down-conversion, then accumulates exactly (double); or bf16 A and B
 * (CUDA_R_16BF, widened exactly) with CUBLAS_COMPUTE_32F into fp32 C. */
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_16BF = 75 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
inline float emu_round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}
inline cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                   int k, const void *alpha, const void *A, cudaDataType at, int lda, const void *B,
                                   cudaDataType bt, int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
                                   cublasComputeType_t compute, cublasGemmAlgo_t)
{
    if (at == CUDA_R_16BF && bt == CUDA_R_16BF && ct == CUDA_R_32F && compute == CUBLAS_COMPUTE_32F) {
        if (m <= 0 || n <= 0) return CUBLAS_STATUS_SUCCESS;
        size_t na = (size_t)(ta ? m : k) * lda, nb = (size_t)(tb ? k : n) * ldb;
        float *a = (float *)calloc(na ? na : 1, sizeof(float)), *b = (float *)calloc(nb ? nb : 1, sizeof(float));
        if (!a || !b) {
            free(a);
            free(b);
            return CUBLAS_STATUS_ALLOC_FAILED;
        }
        const unsigned short *a16 = (const unsigned short *)A, *b16 = (const unsigned short *)B;
        for (int j = 0; j < (ta ? m : k); j++)
            for (int i = 0; i < (ta ? k : m); i++) {
                uint32_t u = (uint32_t)a16[(size_t)j * lda + i] << 16;
                memcpy(&a[(size_t)j * lda + i], &u, 4);
            }
        for (int j = 0; j < (tb ? k : n); j++)
            for (int i = 0; i < (tb ? n : k); i++) {
                uint32_t u = (uint32_t)b16[(size_t)j * ldb + i] << 16;
                memcpy(&b[(size_t)j * ldb + i], &u, 4);
            }
        cublasStatus_t st = cublasSgemm(h, ta, tb, m, n, k, (const float *)alpha, a, lda, b, ldb,
                                        (const float *)beta, (float *)C, ldc);
        free(a);
        free(b);
        return st;
    }
    if (at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F ||
        (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_16BF))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (compute == CUBLAS_COMPUTE_32F || m <= 0 || n <= 0 || k <= 0)
        return cublasSgemm(h, ta, tb, m, n, k, (const float *)alpha, (const float *)A, lda, (const float *)B, ldb,
                           (const float *)beta, (float *)C, ldc);
    size_t na = (size_t)(ta ? m : k) * lda, nb = (size_t)(tb ? k : n) * ldb;
    float *a = (float *)malloc(na * sizeof(float)), *b = (float *)malloc(nb * sizeof(float));
    if (!a || !b) {
        free(a);
        free(b);
        return CUBLAS_STATUS_ALLOC_FAILED;
    }
    /* Only the elements the product reads are rounded (the rest may be NaN). */
    for (int j = 0; j < (ta ? m : k); j++)
        for (int i = 0; i < (ta ? k : m); i++) a[(size_t)j * lda + i] = emu_round_bf16(((const float *)A)[(size_t)j * lda + i]);
    for (int j = 0; j < (tb ? k : n); j++)
        for (int i = 0; i < (tb ? n : k); i++) b[(size_t)j * ldb + i] = emu_round_bf16(((const float *)B)[(size_t)j * ldb + i]);
    cublasStatus_t st = cublasSgemm(h, ta, tb, m, n, k, (const float *)alpha, a, lda, b, ldb, (const float *)beta,
                                    (float *)C, ldc);
    free(a);
    free(b);
    return st;
}

#endif
