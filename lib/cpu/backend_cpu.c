/*
 * backend_cpu.c - the CPU backend: BLIS for matrix products, OpenMP for the
 * element-wise ops. It is the reference every other backend is tested against.
 *
 * Threads are per backend (per model): BLIS gets a per-call rntm_t and OpenMP
 * loops a num_threads clause, so nothing global is changed after start-up.
 */
#include <cpuid.h>
#include <float.h>
#include <sched.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <blis.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal.h"
#include "memtrack.h"
#include "wdtype.h"

/* ------------------------------------------------------------------------ */
/* BLIS kernel family                                                        */
/* ------------------------------------------------------------------------ */

/*
 * BLIS 0.9 picks its kernels from CPUID once, at its first call, and falls back
 * to slow "generic" kernels on CPUs it does not know (AMD Zen 4/5: ~5x slower
 * sgemm). Its only switch is the BLIS_ARCH_TYPE environment variable, read at
 * that first call, so we decide before BLIS initialises: at load time. An
 * explicit BLIS_ARCH_TYPE from the user always wins; GSINK_BLIS_ARCH=name lets
 * a user choose through us ("auto" leaves BLIS alone).
 */
static char blis_arch_note[160] = "BLIS default detection";

static int cpu_has_avx512(unsigned *vendor_amd, unsigned *family, int *avx2fma, int *intel)
{
    unsigned a, b, c, d;
    char vendor[13] = {0};
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    *vendor_amd = strcmp(vendor, "AuthenticAMD") == 0;
    *intel = strcmp(vendor, "GenuineIntel") == 0;
    __get_cpuid(1, &a, &b, &c, &d);
    unsigned base_family = (a >> 8) & 0xf, ext_family = (a >> 20) & 0xff;
    *family = base_family == 0xf ? base_family + ext_family : base_family;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1;
    unsigned ebx7 = 0, ecx7 = 0, edx7 = 0, eax7 = 0;
    __get_cpuid_count(7, 0, &eax7, &ebx7, &ecx7, &edx7);
    int avx2 = (ebx7 >> 5) & 1;
    *avx2fma = avx2 && fma && osxsave;
    int f = (ebx7 >> 16) & 1, dq = (ebx7 >> 17) & 1, bw = (ebx7 >> 30) & 1, vl = (ebx7 >> 31) & 1;
    return osxsave && f && dq && bw && vl;
}

static int arch_from_name(const char *name)
{
    static const struct { const char *n; int id; } names[] = {
        {"skx", BLIS_ARCH_SKX},   {"haswell", BLIS_ARCH_HASWELL}, {"zen", BLIS_ARCH_ZEN},
        {"zen2", BLIS_ARCH_ZEN2}, {"zen3", BLIS_ARCH_ZEN3},       {"generic", BLIS_ARCH_GENERIC},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i].n, name) == 0) return names[i].id;
    return -1;
}

__attribute__((constructor)) static void gsink_blis_arch_select(void)
{
    if (getenv("BLIS_ARCH_TYPE")) {
        snprintf(blis_arch_note, sizeof blis_arch_note, "BLIS_ARCH_TYPE set by the user");
        return;
    }
    int id = -1;
    const char *want = getenv("GSINK_BLIS_ARCH");
    if (want && strcmp(want, "auto") != 0) {
        id = arch_from_name(want);
        if (id < 0) {
            snprintf(blis_arch_note, sizeof blis_arch_note,
                     "GSINK_BLIS_ARCH=%.40s not recognised; BLIS default detection", want);
            return;
        }
        snprintf(blis_arch_note, sizeof blis_arch_note, "GSINK_BLIS_ARCH=%.40s", want);
    } else if (!want) {
        unsigned amd = 0, family = 0;
        int avx2fma = 0, intel = 0;
        int avx512 = cpu_has_avx512(&amd, &family, &avx2fma, &intel);
        /* BLIS 0.9 picks "haswell" (or "generic") on AVX-512 parts it does not
         * know (AMD Zen 4/5, recent or virtualised Intel Xeons): its skx
         * kernels are 3-5x faster there. Zen 5 without AVX-512 gets zen3. */
        if (avx512) id = BLIS_ARCH_SKX;
        else if (amd && family >= 0x1a && avx2fma) id = BLIS_ARCH_ZEN3;
        (void)intel;
        if (id >= 0)
            snprintf(blis_arch_note, sizeof blis_arch_note,
                     "chosen by libgsink from CPU features");
    }
    if (id >= 0) {
        char buf[16];
        snprintf(buf, sizeof buf, "%d", id);
        setenv("BLIS_ARCH_TYPE", buf, 0);
    }
}

/* ------------------------------------------------------------------------ */
/* Context                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct cpu_ctx {
    int nt;          /* threads for this backend */
    rntm_t rntm;     /* BLIS runtime: nt threads */
    rntm_t rntm1;    /* BLIS runtime: 1 thread (inside our own parallel loops) */
    float *scratch;  /* per-thread attention scratch */
    size_t scratch_per_thread; /* floats */
    size_t scratch_bytes;      /* all threads */
    gsink_memtrack mem;        /* buffers handed out by cpu_alloc, and the scratch */
    float *wpanel;             /* fp32 panel of a 16-bit weight (gemm_w), <= WPANEL_FLOATS */
    size_t wpanel_floats;
} cpu_ctx;

#define CTX(be) ((cpu_ctx *)(be)->ctx)
#define ATT_QBLOCK 128
/* Element-wise work below this many values runs on one thread: waking a
 * team costs more than it saves, and far more when the CPUs are shared. */
#define PAR_MIN_WORK 32768

static inline int nt_for(gsink_backend *be, size_t work)
{
    return work < PAR_MIN_WORK ? 1 : CTX(be)->nt;
}

int gsink__cpu_count(void)
{
    /* The CPUs this process may run on (taskset, cgroup cpusets, container
     * limits that pin CPUs); the online CPUs where the mask cannot be read
     * (more CPUs than a cpu_set_t holds). */
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (n > GSINK__MAX_CPUS ? GSINK__MAX_CPUS : (int)n) : 1;
}

int gsink__max_threads(void) { return GSINK__THREADS_PER_CPU * gsink__cpu_count(); }

static gsink_status set_fail(gsink_backend *be, gsink_status st, const char *msg)
{
    snprintf(be->err, sizeof be->err, "%s", msg);
    return st;
}

static gsink_status cpu_set_threads(gsink_backend *be, int n)
{
    cpu_ctx *c = CTX(be);
    if (n < 0) return set_fail(be, GSINK_ERR_INVALID_ARGUMENT, "thread count must be >= 0");
    /* nt bounds every OpenMP region (nt_for, the attention loops) and BLIS's
     * rntm: no region asks for more threads than gsink_max_threads(). The
     * model refuses larger counts; this clamp keeps the backend safe alone. */
    int max = gsink__max_threads();
    if (n == 0) n = gsink__cpu_count();
    if (n > max) n = max;
    c->nt = n;
    bli_rntm_init(&c->rntm);
    bli_rntm_set_num_threads(n, &c->rntm);
    bli_rntm_init(&c->rntm1);
    bli_rntm_set_num_threads(1, &c->rntm1);
    free(c->scratch);
    gsink_memtrack_shrink(&c->mem, c->scratch_bytes);
    c->scratch = NULL;
    c->scratch_per_thread = 0;
    c->scratch_bytes = 0;
    return GSINK_OK;
}

static void cpu_describe(gsink_backend *be, char *buf, size_t size)
{
    bli_init(); /* the arch query needs an initialised kernel structure */
    arch_t id = bli_arch_query_id();
    const char *name = bli_arch_string(id);
    snprintf(buf, size, "cpu: %d threads, BLIS %s kernels (%s)%s", CTX(be)->nt, name ? name : "?",
             blis_arch_note,
             id == BLIS_ARCH_GENERIC ? " - generic kernels are slow; set BLIS_ARCH_TYPE" : "");
}

static void cpu_destroy(gsink_backend *be)
{
    if (!be) return;
    cpu_ctx *c = CTX(be);
    if (c) {
        free(c->scratch);
        free(c->wpanel);
        gsink_memtrack_free(&c->mem);
    }
    free(c);
    free(be);
}

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */
/* ------------------------------------------------------------------------ */

static gsink_status cpu_alloc(gsink_backend *be, size_t bytes, void **ptr)
{
    *ptr = NULL;
    if (bytes == 0) bytes = 64;
    if (bytes > SIZE_MAX - 64) return set_fail(be, GSINK_ERR_OUT_OF_MEMORY, "allocation size overflows");
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    if (!p || gsink_memtrack_add(&CTX(be)->mem, p, rounded)) {
        free(p);
        snprintf(be->err, sizeof be->err, "cannot allocate %zu bytes of host memory", bytes);
        return GSINK_ERR_OUT_OF_MEMORY;
    }
    *ptr = p;
    return GSINK_OK;
}

static void cpu_free(gsink_backend *be, void *ptr)
{
    if (!ptr) return;
    gsink_memtrack_remove(&CTX(be)->mem, ptr);
    free(ptr);
}

static void cpu_memory(gsink_backend *be, size_t *live, size_t *peak, int reset_peak)
{
    gsink_memtrack_query(&CTX(be)->mem, live, peak, reset_peak);
}

static gsink_status cpu_memcpy(gsink_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes) memmove(dst, src, bytes);
    return GSINK_OK;
}

static gsink_status cpu_zero(gsink_backend *be, void *dst, size_t bytes)
{
    (void)be;
    if (bytes) memset(dst, 0, bytes);
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* GEMM                                                                      */
/* ------------------------------------------------------------------------ */

static void sgemm_rt(rntm_t *rntm, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                     int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    /* Row-major storage: element (i, j) of a stored matrix is at i*ld + j. */
    bli_sgemm_ex(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                 M, N, K, &alpha, (float *)A, lda, 1, (float *)B, ldb, 1, &beta, C, ldc, 1, NULL,
                 rntm);
}

static gsink_status cpu_gemm(gsink_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float beta, float *C,
                             int ldc)
{
    sgemm_rt(&CTX(be)->rntm, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return GSINK_OK;
}

/* gemm_w widens a 16-bit weight to fp32 in panels of whole stored rows of at
 * most this many floats (64 MiB; one row when a row alone is larger), so a
 * model in bf16 never holds an fp32 copy of a matrix, let alone of itself. */
#define WPANEL_FLOATS ((size_t)16 << 20)

static gsink_status wpanel(gsink_backend *be, size_t floats, float **out)
{
    cpu_ctx *c = CTX(be);
    if (c->wpanel_floats < floats) {
        free(c->wpanel);
        gsink_memtrack_shrink(&c->mem, c->wpanel_floats * sizeof(float));
        c->wpanel_floats = 0;
        c->wpanel = aligned_alloc(64, (floats * sizeof(float) + 63) & ~(size_t)63);
        if (!c->wpanel) {
            snprintf(be->err, sizeof be->err, "cannot allocate a weight panel of %zu floats", floats);
            return GSINK_ERR_OUT_OF_MEMORY;
        }
        c->wpanel_floats = floats;
        gsink_memtrack_grow(&c->mem, floats * sizeof(float));
    }
    *out = c->wpanel;
    return GSINK_OK;
}

/* rows x cols of a 16-bit matrix (row stride ld) -> packed fp32 rows. */
static void widen_rows(gsink_backend *be, float *dst, const uint16_t *src, int dtype, size_t rows,
                       size_t cols, size_t ld)
{
#pragma omp parallel for num_threads(nt_for(be, rows * cols)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const uint16_t *s = src + r * ld;
        float *d = dst + r * cols;
        if (dtype == GSINK_WD_BF16)
            for (size_t j = 0; j < cols; j++) d[j] = gsink__bf16_f32(s[j]);
        else
            for (size_t j = 0; j < cols; j++) d[j] = gsink__f16_f32(s[j]);
    }
}

static gsink_status cpu_gemm_w(gsink_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                               const float *A, int lda, const void *B, int bdt, int ldb, float beta,
                               float *C, int ldc)
{
    if (bdt == GSINK_WD_F32)
        return cpu_gemm(be, ta, tb, M, N, K, alpha, A, lda, (const float *)B, ldb, beta, C, ldc);
    if (bdt != GSINK_WD_BF16 && bdt != GSINK_WD_F16) {
        snprintf(be->err, sizeof be->err, "gemm_w: unknown weight storage type %d", bdt);
        return GSINK_ERR_INVALID_ARGUMENT;
    }
    if (M <= 0 || N <= 0) return GSINK_OK;
    if (K <= 0) return cpu_gemm(be, ta, tb, M, N, K, alpha, A, lda, NULL, ldb, beta, C, ldc);
    const uint16_t *b = (const uint16_t *)B;
    /* B's stored rows: N rows of K (tb) or K rows of N; a panel is a run of them. */
    size_t rows = (size_t)(tb ? N : K), cols = (size_t)(tb ? K : N);
    size_t per = WPANEL_FLOATS / cols;
    if (per == 0) per = 1;
    if (per > rows) per = rows;
    float *P;
    gsink_status st = wpanel(be, per * cols, &P);
    if (st) return st;
    for (size_t r0 = 0; r0 < rows; r0 += per) {
        size_t nr = rows - r0 < per ? rows - r0 : per;
        widen_rows(be, P, b + r0 * (size_t)ldb, bdt, nr, cols, (size_t)ldb);
        if (tb) /* columns r0.. of C from stored rows r0.. of B */
            sgemm_rt(&CTX(be)->rntm, ta, 1, M, (int)nr, K, alpha, A, lda, P, (int)cols, beta, C + r0, ldc);
        else    /* the K-slice r0.. of the product, summed into C */
            sgemm_rt(&CTX(be)->rntm, ta, 0, M, N, (int)nr, alpha, ta ? A + r0 * (size_t)lda : A + r0, lda, P,
                     (int)cols, r0 == 0 ? beta : 1.0f, C, ldc);
    }
    return GSINK_OK;
}

static gsink_status cpu_convert(gsink_backend *be, void *dst, int ddt, const void *src, int sdt, size_t n)
{
    if (!gsink__wd_size(ddt) || !gsink__wd_size(sdt)) {
        snprintf(be->err, sizeof be->err, "convert: unknown storage type %d -> %d", sdt, ddt);
        return GSINK_ERR_INVALID_ARGUMENT;
    }
    if (ddt == sdt) {
        if (n && dst != src) memmove(dst, src, n * gsink__wd_size(ddt));
        return GSINK_OK;
    }
#pragma omp parallel for num_threads(nt_for(be, n)) schedule(static)
    for (size_t i = 0; i < n; i++) gsink__wd_store(dst, ddt, i, gsink__wd_load(src, sdt, i));
    return GSINK_OK;
}

/* Inside a parallel region: this thread's index, the team size (*team) and
 * its share [*lo, *hi) of n items (contiguous, in thread order). */
static inline int thread_share(size_t n, size_t *lo, size_t *hi, int *team)
{
    int t = 0, T = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    T = omp_get_num_threads();
#endif
    *lo = n * (size_t)t / (size_t)T;
    *hi = n * (size_t)(t + 1) / (size_t)T;
    *team = T;
    return t;
}

/* ------------------------------------------------------------------------ */
/* Embedding                                                                 */
/* ------------------------------------------------------------------------ */

static gsink_status cpu_embedding_fwd(gsink_backend *be, float *out, const int32_t *tokens,
                                      const float *table, int N, int d)
{
#pragma omp parallel for num_threads(nt_for(be, (size_t)N * d)) schedule(static)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * d, table + (size_t)tokens[n] * d, (size_t)d * sizeof(float));
    return GSINK_OK;
}

static gsink_status cpu_embedding_fwd_w(gsink_backend *be, float *out, const int32_t *tokens,
                                        const void *table, int dtype, int N, int d)
{
    if (dtype == GSINK_WD_F32) return cpu_embedding_fwd(be, out, tokens, (const float *)table, N, d);
    if (dtype != GSINK_WD_BF16 && dtype != GSINK_WD_F16) {
        snprintf(be->err, sizeof be->err, "embedding_fwd_w: unknown weight storage type %d", dtype);
        return GSINK_ERR_INVALID_ARGUMENT;
    }
#pragma omp parallel for num_threads(nt_for(be, (size_t)N * d)) schedule(static)
    for (int n = 0; n < N; n++)
        for (int j = 0; j < d; j++)
            out[(size_t)n * d + j] = gsink__wd_load(table, dtype, (size_t)tokens[n] * d + j);
    return GSINK_OK;
}

static gsink_status cpu_embedding_bwd(gsink_backend *be, float *dtable, const int32_t *tokens,
                                      const float *dout, int N, int d)
{
    /* Each thread owns a slice of the columns: no races, fixed summation order. */
    int nt = nt_for(be, (size_t)N * d);
#pragma omp parallel num_threads(nt)
    {
        size_t c0, c1;
        int team;
        thread_share((size_t)d, &c0, &c1, &team);
        for (int n = 0; n < N; n++) {
            float *dst = dtable + (size_t)tokens[n] * d;
            const float *src = dout + (size_t)n * d;
            for (size_t c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* RMSNorm                                                                   */
/* ------------------------------------------------------------------------ */

static gsink_status cpu_rmsnorm_fwd(gsink_backend *be, float *out, float *rstd, const float *x,
                                    const float *gain, int N, int d, float eps)
{
#pragma omp parallel for num_threads(nt_for(be, (size_t)N * d)) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * d;
        float *o = out + (size_t)n * d;
        double ss = 0.0;
        for (int i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
        float r = (float)(1.0 / sqrt(ss / d + eps));
        rstd[n] = r;
        for (int i = 0; i < d; i++) o[i] = xr[i] * r * gain[i];
    }
    return GSINK_OK;
}

static gsink_status cpu_rmsnorm_bwd(gsink_backend *be, float *dx, float *dgain, const float *dout,
                                    const float *x, const float *gain, const float *rstd, int N,
                                    int d, int accumulate)
{
    int nt = nt_for(be, (size_t)N * d);
    float *partial = dgain ? calloc((size_t)nt * d, sizeof(float)) : NULL;
    if (dgain && !partial) return set_fail(be, GSINK_ERR_OUT_OF_MEMORY, "rmsnorm backward scratch");
    int used = 1;
#pragma omp parallel num_threads(nt)
    {
        size_t n0, n1;
        int team, t = thread_share((size_t)N, &n0, &n1, &team);
        if (t == 0) used = team;
        float *pg = dgain ? partial + (size_t)t * d : NULL;
        for (size_t n = n0; n < n1; n++) {
            const float *xr = x + (size_t)n * d, *dy = dout + (size_t)n * d;
            float *dxr = dx + (size_t)n * d;
            float r = rstd[n];
            double dot = 0.0;
            for (int i = 0; i < d; i++) dot += (double)gain[i] * dy[i] * xr[i];
            float c = (float)(dot / d) * r * r;
            for (int i = 0; i < d; i++) {
                float v = r * (gain[i] * dy[i] - xr[i] * c);
                dxr[i] = accumulate ? dxr[i] + v : v;
                if (dgain) pg[i] += dy[i] * xr[i] * r;
            }
        }
    }
    if (dgain)
        for (int t = 0; t < used; t++)
            for (int i = 0; i < d; i++) dgain[i] += partial[(size_t)t * d + i];
    free(partial);
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* RoPE on the first rot_dims of each head: pairs (i, i + rot_dims/2) (HF    */
/* rotate_half) or (2i, 2i+1) (interleaved, GLM)                            */
/* ------------------------------------------------------------------------ */

static gsink_status cpu_rope(gsink_backend *be, float *x, int B, int T, int heads, int dh, int rot,
                             int interleaved, const double *inv_freq, float scale, int inverse)
{
    if (rot < 2 || rot > dh || rot % 2) return set_fail(be, GSINK_ERR_INVALID_ARGUMENT, "rope: bad rot_dims");
    int half = rot / 2;
    float *cs = malloc(sizeof(float) * 2 * (size_t)T * half);
    if (!cs) return set_fail(be, GSINK_ERR_OUT_OF_MEMORY, "rope table");
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double ang = (double)t * inv_freq[i];
            double c = cos(ang), sn = sin(ang);
            if (scale != 1.0f) c *= scale, sn *= scale;
            cs[((size_t)t * half + i) * 2] = (float)c;
            cs[((size_t)t * half + i) * 2 + 1] = (float)(inverse ? -sn : sn);
        }
    /* element offsets of the pair: (i, i + half) or (2i, 2i + 1) */
    const int step = interleaved ? 2 : 1, other = interleaved ? 1 : half;
    size_t rows = (size_t)B * T;
#pragma omp parallel for num_threads(nt_for(be, rows * (size_t)heads * dh)) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        int t = (int)(r % (size_t)T);
        const float *c = cs + (size_t)t * half * 2;
        for (int h = 0; h < heads; h++) {
            float *v = x + (r * heads + h) * dh;
            for (int i = 0; i < half; i++) {
                float *p1 = v + i * step, *p2 = p1 + other;
                float x1 = *p1, x2 = *p2, co = c[2 * i], si = c[2 * i + 1];
                *p1 = x1 * co - x2 * si;
                *p2 = x2 * co + x1 * si;
            }
        }
    }
    free(cs);
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* Attention                                                                 */
/* ------------------------------------------------------------------------ */

void gsink__softmax_row_bwd(float *ds, const float *p, const float *dp, int n)
{
    double dot = 0.0;
    for (int j = 0; j < n; j++) dot += (double)p[j] * dp[j];
    float D = (float)dot;
    for (int j = 0; j < n; j++) ds[j] = p[j] * (dp[j] - D);
}

static gsink_status ensure_scratch(gsink_backend *be, size_t per_thread)
{
    cpu_ctx *c = CTX(be);
    if (c->scratch && c->scratch_per_thread >= per_thread) return GSINK_OK;
    size_t total;
    if (!gsink__mul_size(per_thread, (size_t)c->nt, &total) || !gsink__mul_size(total, sizeof(float), &total))
        return set_fail(be, GSINK_ERR_OUT_OF_MEMORY, "attention scratch size overflows");
    float *s = malloc(total);
    if (!s) return set_fail(be, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate attention scratch");
    free(c->scratch);
    gsink_memtrack_shrink(&c->mem, c->scratch_bytes);
    c->scratch = s;
    c->scratch_per_thread = per_thread;
    c->scratch_bytes = total;
    gsink_memtrack_grow(&c->mem, total);
    return GSINK_OK;
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Column statistics of one (b, h): rows are added in query order t, so every
 * entry point (forward, backward, stand-alone) sums in the same order. */
typedef struct {
    float *mass, *sq, *win;
    int W;
} col_stats;

static col_stats stats_begin(gsink_attn_stats stats, int bh, int T, int W)
{
    col_stats cs = {stats.mass ? stats.mass + (size_t)bh * T : NULL,
                    stats.sq ? stats.sq + (size_t)bh * T : NULL,
                    stats.win ? stats.win + (size_t)bh * T : NULL, W};
    if (cs.mass) memset(cs.mass, 0, sizeof(float) * T);
    if (cs.sq) memset(cs.sq, 0, sizeof(float) * T);
    if (cs.win) memset(cs.win, 0, sizeof(float) * T);
    return cs;
}

/* row[j - k0] = a_tj for the visible keys j in [jlo, t] (zero elsewhere):
 * the row of a score block whose first key is k0. */
static void stats_add_row(const col_stats *cs, const float *row, int k0, int jlo, int t)
{
    if (cs->mass)
        for (int j = jlo; j <= t; j++) cs->mass[j] += row[j - k0];
    if (cs->sq)
        for (int j = jlo; j <= t; j++) cs->sq[j] += row[j - k0] * row[j - k0];
    if (cs->win) {
        int wlo = t - cs->W + 1 > jlo ? t - cs->W + 1 : jlo; /* t - j < W */
        for (int j = wlo; j <= t; j++) cs->win[j] += row[j - k0];
    }
}

static bool stats_wanted(gsink_attn_stats st) { return st.mass || st.sq || st.win; }

/* Keys of a query block [t0, t0 + nq) under lookback Lb (gsink__attn_lookback):
 * the block reads keys [k0, t1 = t0 + nq) (key blocks wholly outside every
 * row's window are skipped); query t sees [key_lo(t), t]. */
static int block_k0(int t0, int Lb) { return t0 - Lb + 1 > 0 ? t0 - Lb + 1 : 0; }
static int key_lo(int t, int Lb) { return t - Lb + 1 > 0 ? t - Lb + 1 : 0; }

/* P(nq, t1 - k0) = exp(scale q k^T - lse) for query rows [t0, t0 + nq) and
 * keys [k0, t1 = t0 + nq), zero outside each row's visible keys. */
static void probs_block(cpu_ctx *c, float *P, const float *qh, int ldq, const float *kh, int ldk,
                        const float *lse_bh, int t0, int nq, int k0, int Lb, int dh, float scale)
{
    int t1 = t0 + nq, n = t1 - k0;
    sgemm_rt(&c->rntm1, 0, 1, nq, n, dh, scale, qh + (size_t)t0 * ldq, ldq, kh + (size_t)k0 * ldk, ldk, 0.0f, P,
             n);
    for (int i = 0; i < nq; i++) {
        int t = t0 + i, jlo = key_lo(t, Lb);
        float *row = P + (size_t)i * n; /* row[j - k0], j in [k0, t1) */
        for (int j = k0; j < jlo; j++) row[j - k0] = 0.0f;
        for (int j = jlo; j <= t; j++) row[j - k0] = expf(row[j - k0] - lse_bh[t]);
        for (int j = t + 1; j < t1; j++) row[j - k0] = 0.0f;
    }
}

static gsink_status cpu_attention_fwd(gsink_backend *be, const gsink_attn_shape *s, float *y,
                                      float *lse, const float *q, const float *k, const float *v,
                                      gsink_attn_stats stats)
{
    cpu_ctx *c = CTX(be);
    const int B = s->batch, T = s->seq, H = s->n_heads, KV = s->n_kv_heads, NV = s->n_v_heads,
              dh = s->d_head, W = s->sink_window, Lb = gsink__attn_lookback(s);
    const int ldq = H * dh, ldk = KV * dh, ldv = NV * dh;
    const float scale = gsink_attn_scale(s);
    int qb = T < ATT_QBLOCK ? T : ATT_QBLOCK;
    gsink_status st = ensure_scratch(be, (size_t)qb * T * 2);
    if (st) return st;
    int nbh = B * H;
#pragma omp parallel for num_threads(c->nt) schedule(dynamic, 1)
    for (int bh = 0; bh < nbh; bh++) {
        int b = bh / H, h = bh % H;
        int hk = h / (H / KV), hv = h / (H / NV);
        const float *qb0 = q + (size_t)b * T * ldq + (size_t)h * dh;
        const float *kb0 = k + (size_t)b * T * ldk + (size_t)hk * dh;
        const float *vb0 = v + (size_t)b * T * ldv + (size_t)hv * dh;
        float *yb0 = y + (size_t)b * T * ldq + (size_t)h * dh;
        float *lse_bh = lse + (size_t)bh * T;
        col_stats cs = stats_begin(stats, bh, T, W);
        float *S = c->scratch + (size_t)thread_id() * c->scratch_per_thread;
        for (int t0 = 0; t0 < T; t0 += qb) {
            /* keys [k0, t1) */
            int nq = T - t0 < qb ? T - t0 : qb, t1 = t0 + nq, k0 = block_k0(t0, Lb), n = t1 - k0;
            sgemm_rt(&c->rntm1, 0, 1, nq, n, dh, scale, qb0 + (size_t)t0 * ldq, ldq, kb0 + (size_t)k0 * ldk, ldk,
                     0.0f, S, n);
            for (int i = 0; i < nq; i++) {
                int t = t0 + i, jlo = key_lo(t, Lb);
                float *row = S + (size_t)i * n; /* row[j - k0], j in [k0, t1) */
                float mx = -FLT_MAX;
                for (int j = jlo; j <= t; j++) mx = row[j - k0] > mx ? row[j - k0] : mx;
                double sum = 0.0;
                for (int j = jlo; j <= t; j++) {
                    float e = expf(row[j - k0] - mx);
                    row[j - k0] = e;
                    sum += e;
                }
                float inv = (float)(1.0 / sum);
                for (int j = k0; j < jlo; j++) row[j - k0] = 0.0f;
                for (int j = jlo; j <= t; j++) row[j - k0] *= inv;
                for (int j = t + 1; j < t1; j++) row[j - k0] = 0.0f;
                lse_bh[t] = mx + (float)log(sum);
                stats_add_row(&cs, row, k0, jlo, t);
            }
            sgemm_rt(&c->rntm1, 0, 0, nq, dh, n, 1.0f, S, n, vb0 + (size_t)k0 * ldv, ldv, 0.0f,
                     yb0 + (size_t)t0 * ldq, ldq);
        }
    }
    return GSINK_OK;
}

static gsink_status cpu_attention_bwd(gsink_backend *be, const gsink_attn_shape *s, float *dq,
                                      float *dk, float *dv, const float *dy, const float *q,
                                      const float *k, const float *v, const float *y,
                                      const float *lse, gsink_attn_stats stats)
{
    cpu_ctx *c = CTX(be);
    const int B = s->batch, T = s->seq, H = s->n_heads, KV = s->n_kv_heads, NV = s->n_v_heads,
              dh = s->d_head, Lb = gsink__attn_lookback(s);
    const int ldq = H * dh, ldk = KV * dh, ldv = NV * dh;
    const float scale = gsink_attn_scale(s);
    const int G = H / KV; /* query heads per key head */
    int qb = T < ATT_QBLOCK ? T : ATT_QBLOCK;
    gsink_status st = ensure_scratch(be, (size_t)qb * T * 2);
    if (st) return st;
    (void)y;
    /* Work items (b, key head): every query head and value head of the group
     * is handled by one thread, so dk/dv accumulate without races. */
    int nbg = B * KV;
#pragma omp parallel for num_threads(c->nt) schedule(dynamic, 1)
    for (int bg = 0; bg < nbg; bg++) {
        int b = bg / KV, g = bg % KV;
        float *P = c->scratch + (size_t)thread_id() * c->scratch_per_thread;
        float *dP = P + (size_t)qb * T;
        const float *kb0 = k + (size_t)b * T * ldk + (size_t)g * dh;
        float *dkb0 = dk + (size_t)b * T * ldk + (size_t)g * dh;
        for (int t = 0; t < T; t++) memset(dkb0 + (size_t)t * ldk, 0, sizeof(float) * dh);
        for (int hv = g * G / (H / NV); hv < (g + 1) * G / (H / NV); hv++)
            for (int t = 0; t < T; t++)
                memset(dv + (size_t)b * T * ldv + (size_t)hv * dh + (size_t)t * ldv, 0, sizeof(float) * dh);
        for (int h = g * G; h < (g + 1) * G; h++) {
            int hv = h / (H / NV);
            const float *qb0 = q + (size_t)b * T * ldq + (size_t)h * dh;
            const float *vb0 = v + (size_t)b * T * ldv + (size_t)hv * dh;
            const float *dyb0 = dy + (size_t)b * T * ldq + (size_t)h * dh;
            float *dqb0 = dq + (size_t)b * T * ldq + (size_t)h * dh;
            float *dvb0 = dv + (size_t)b * T * ldv + (size_t)hv * dh;
            const float *lse_bh = lse + ((size_t)b * H + h) * T;
            col_stats cs = stats_begin(stats, b * H + h, T, s->sink_window);
            for (int t0 = 0; t0 < T; t0 += qb) {
                /* keys [k0, t1) */
                int nq = T - t0 < qb ? T - t0 : qb, t1 = t0 + nq, k0 = block_k0(t0, Lb), n = t1 - k0;
                probs_block(c, P, qb0, ldq, kb0, ldk, lse_bh, t0, nq, k0, Lb, dh, scale);
                if (stats_wanted(stats))
                    for (int i = 0; i < nq; i++)
                        stats_add_row(&cs, P + (size_t)i * n, k0, key_lo(t0 + i, Lb), t0 + i);
                /* dV[k0:t1] += P^T dY */
                sgemm_rt(&c->rntm1, 1, 0, n, dh, nq, 1.0f, P, n, dyb0 + (size_t)t0 * ldq, ldq, 1.0f,
                         dvb0 + (size_t)k0 * ldv, ldv);
                /* dP = dY V[k0:t1]^T */
                sgemm_rt(&c->rntm1, 0, 1, nq, n, dh, 1.0f, dyb0 + (size_t)t0 * ldq, ldq, vb0 + (size_t)k0 * ldv,
                         ldv, 0.0f, dP, n);
                for (int i = 0; i < nq; i++) {
                    int t = t0 + i, jlo = key_lo(t, Lb);
                    float *prow = P + (size_t)i * n, *dprow = dP + (size_t)i * n; /* [j - k0] */
                    for (int j = k0; j < jlo; j++) dprow[j - k0] = 0.0f;
                    gsink__softmax_row_bwd(dprow + (jlo - k0), prow + (jlo - k0), dprow + (jlo - k0),
                                           t - jlo + 1); /* dS in place */
                    for (int j = t + 1; j < t1; j++) dprow[j - k0] = 0.0f;
                }
                /* dQ = dS K[k0:t1] * scale ; dK[k0:t1] += dS^T Q * scale */
                sgemm_rt(&c->rntm1, 0, 0, nq, dh, n, scale, dP, n, kb0 + (size_t)k0 * ldk, ldk, 0.0f,
                         dqb0 + (size_t)t0 * ldq, ldq);
                sgemm_rt(&c->rntm1, 1, 0, n, dh, nq, scale, dP, n, qb0 + (size_t)t0 * ldq, ldq, 1.0f,
                         dkb0 + (size_t)k0 * ldk, ldk);
            }
        }
    }
    return GSINK_OK;
}

static gsink_status cpu_attention_stats(gsink_backend *be, const gsink_attn_shape *s,
                                        const float *q, const float *k, const float *lse,
                                        gsink_attn_stats stats)
{
    cpu_ctx *c = CTX(be);
    const int B = s->batch, T = s->seq, H = s->n_heads, KV = s->n_kv_heads, dh = s->d_head;
    const int ldq = H * dh, ldk = KV * dh, Lb = gsink__attn_lookback(s);
    const float scale = gsink_attn_scale(s);
    int qb = T < ATT_QBLOCK ? T : ATT_QBLOCK;
    if (!stats_wanted(stats)) return GSINK_OK;
    gsink_status st = ensure_scratch(be, (size_t)qb * T * 2);
    if (st) return st;
    int nbh = B * H;
#pragma omp parallel for num_threads(c->nt) schedule(dynamic, 1)
    for (int bh = 0; bh < nbh; bh++) {
        int b = bh / H, h = bh % H, hk = h / (H / KV);
        float *P = c->scratch + (size_t)thread_id() * c->scratch_per_thread;
        col_stats cs = stats_begin(stats, bh, T, s->sink_window);
        for (int t0 = 0; t0 < T; t0 += qb) {
            int nq = T - t0 < qb ? T - t0 : qb, k0 = block_k0(t0, Lb), n = t0 + nq - k0;
            probs_block(c, P, q + (size_t)b * T * ldq + (size_t)h * dh, ldq,
                        k + (size_t)b * T * ldk + (size_t)hk * dh, ldk, lse + (size_t)bh * T, t0, nq,
                        k0, Lb, dh, scale);
            for (int i = 0; i < nq; i++) stats_add_row(&cs, P + (size_t)i * n, k0, key_lo(t0 + i, Lb), t0 + i);
        }
    }
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* V-scale                                                                   */
/* ------------------------------------------------------------------------ */

/* sum a[i] b[i] in double, four independent partial sums (a dependent chain
 * of double adds per element was the V-scale kernels' bottleneck) */
static double dot_d(const float *a, const float *b, int n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)a[i] * b[i];
        s1 += (double)a[i + 1] * b[i + 1];
        s2 += (double)a[i + 2] * b[i + 2];
        s3 += (double)a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += (double)a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* C_j = c0 exp(theta_j) for every output head, once per call (not per row). */
static gsink_status vscale_c(gsink_backend *be, const float *theta, int hout, float c0, double **out)
{
    double *C = *out = malloc((size_t)(hout > 0 ? hout : 1) * sizeof *C);
    if (!C) return set_fail(be, GSINK_ERR_OUT_OF_MEMORY, "vscale scratch");
    for (int j = 0; j < hout; j++) C[j] = theta ? (double)c0 * exp((double)theta[j]) : (double)c0;
    return GSINK_OK;
}

static gsink_status cpu_vscale_fwd(gsink_backend *be, float *out, const float *v,
                                   const float *theta, int N, int hin, int hout, int dh, float c0,
                                   int mode)
{
    int rep = hout / hin;
    double *Cj = NULL;
    gsink_status st = mode == GSINK_VSCALE_FULL ? vscale_c(be, theta, hout, c0, &Cj) : GSINK_OK;
    if (st) return st;
#pragma omp parallel for num_threads(nt_for(be, (size_t)N * hout * dh)) schedule(static)
    for (int n = 0; n < N; n++) {
        for (int j = 0; j < hout; j++) {
            const float *vi = v + ((size_t)n * hin + j / rep) * dh;
            float *o = out + ((size_t)n * hout + j) * dh;
            if (mode == GSINK_VSCALE_FULL) {
                double r = dot_d(vi, vi, dh);
                double C = Cj[j];
                float phi = (float)(r / (r + C));
                for (int i = 0; i < dh; i++) o[i] = phi * vi[i];
            } else {
                memcpy(o, vi, sizeof(float) * dh);
            }
        }
    }
    free(Cj);
    return GSINK_OK;
}

static gsink_status cpu_vscale_bwd(gsink_backend *be, float *dv, float *dtheta, const float *dout,
                                   const float *v, const float *theta, int N, int hin, int hout,
                                   int dh, float c0, int mode)
{
    int nt = nt_for(be, (size_t)N * hout * dh), rep = hout / hin;
    double *Cj;
    gsink_status st = vscale_c(be, theta, hout, c0, &Cj);
    if (st) return st;
    double *partial = calloc((size_t)nt * hout, sizeof(double));
    if (!partial) {
        free(Cj);
        return set_fail(be, GSINK_ERR_OUT_OF_MEMORY, "vscale backward scratch");
    }
    int used = 1;
#pragma omp parallel num_threads(nt)
    {
        size_t n0, n1;
        int team, t = thread_share((size_t)N, &n0, &n1, &team);
        if (t == 0) used = team;
        double *pt = partial + (size_t)t * hout;
        for (size_t n = n0; n < n1; n++) {
            for (int i = 0; i < hin; i++) {
                const float *vi = v + ((size_t)n * hin + i) * dh;
                float *dvi = dv + ((size_t)n * hin + i) * dh;
                memset(dvi, 0, sizeof(float) * dh);
                double r = dot_d(vi, vi, dh);
                for (int j = i * rep; j < (i + 1) * rep; j++) {
                    const float *go = dout + ((size_t)n * hout + j) * dh;
                    if (mode == GSINK_VSCALE_OFF) {
                        for (int e = 0; e < dh; e++) dvi[e] += go[e];
                        continue;
                    }
                    double C = Cj[j];
                    double phi = r / (r + C), coef = 2.0 * C / ((r + C) * (r + C));
                    double vg = dot_d(vi, go, dh);
                    for (int e = 0; e < dh; e++) dvi[e] += (float)(phi * go[e] + coef * vg * vi[e]);
                    /* d v^/d theta = -r C / (r + C)^2 v */
                    if (mode == GSINK_VSCALE_FULL) pt[j] += vg * (-r * C / ((r + C) * (r + C)));
                }
            }
        }
    }
    if (dtheta && mode == GSINK_VSCALE_FULL)
        for (int j = 0; j < hout; j++) {
            double acc = 0.0;
            for (int t = 0; t < used; t++) acc += partial[(size_t)t * hout + j];
            dtheta[j] += (float)acc;
        }
    free(partial);
    free(Cj);
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */
/* SwiGLU, cross-entropy, element-wise, reductions, AdamW                   */
/* ------------------------------------------------------------------------ */

static gsink_status cpu_swiglu_fwd(gsink_backend *be, float *h, const float *gate, const float *up,
                                   size_t n)
{
#pragma omp parallel for num_threads(nt_for(be, n)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        h[i] = g / (1.0f + expf(-g)) * up[i];
    }
    return GSINK_OK;
}

static gsink_status cpu_swiglu_bwd(gsink_backend *be, float *dgate, float *dup, const float *dh,
                                   const float *gate, const float *up, size_t n)
{
#pragma omp parallel for num_threads(nt_for(be, n)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], sg = 1.0f / (1.0f + expf(-g));
        float silu = g * sg;
        dgate[i] = dh[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
        dup[i] = dh[i] * silu;
    }
    return GSINK_OK;
}

/* sum_j exp(x_j - mx) with float exps and a double sum of 256-wide blocks. */
static double sum_exp_shifted(const float *x, int n, float mx)
{
    double s = 0.0;
    for (int j0 = 0; j0 < n; j0 += 256) {
        int j1 = j0 + 256 < n ? j0 + 256 : n;
        float bs = 0.0f;
        for (int j = j0; j < j1; j++) bs += expf(x[j] - mx);
        s += bs;
    }
    return s;
}

static gsink_status cpu_xent_fwd(gsink_backend *be, double *loss_sum, int64_t *count,
                                 const float *logits, const int32_t *targets, int N, int V)
{
    double *row_loss = malloc(sizeof(double) * (size_t)(N > 0 ? N : 1));
    if (!row_loss) return set_fail(be, GSINK_ERR_OUT_OF_MEMORY, "cross-entropy scratch");
#pragma omp parallel for num_threads(nt_for(be, (size_t)N * V)) schedule(static)
    for (int n = 0; n < N; n++) {
        row_loss[n] = 0.0;
        int tgt = targets[n];
        if (tgt < 0) continue;
        const float *l = logits + (size_t)n * V;
        float mx = -FLT_MAX;
        for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        double s = sum_exp_shifted(l, V, mx);
        row_loss[n] = (mx + log(s)) - l[tgt];
    }
    double total = 0.0;
    int64_t cnt = 0;
    for (int n = 0; n < N; n++)
        if (targets[n] >= 0) {
            total += row_loss[n];
            cnt++;
        }
    free(row_loss);
    *loss_sum = total;
    *count = cnt;
    return GSINK_OK;
}

static gsink_status cpu_xent_bwd(gsink_backend *be, float *dlogits, const float *logits,
                                 const int32_t *targets, int N, int V, float scale)
{
#pragma omp parallel for num_threads(nt_for(be, (size_t)N * V)) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        int tgt = targets[n];
        if (tgt < 0) {
            memset(d, 0, sizeof(float) * V);
            continue;
        }
        float mx = -FLT_MAX;
        for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        double s = 0.0;
        for (int j0 = 0; j0 < V; j0 += 256) { /* float exps, double sum per block */
            int j1 = j0 + 256 < V ? j0 + 256 : V;
            float bs = 0.0f;
            for (int j = j0; j < j1; j++) bs += (d[j] = expf(l[j] - mx));
            s += bs;
        }
        float k = (float)(scale / s);
        for (int j = 0; j < V; j++) d[j] *= k;
        d[tgt] -= scale;
    }
    return GSINK_OK;
}

static gsink_status cpu_add(gsink_backend *be, float *out, const float *a, const float *b, size_t n)
{
#pragma omp parallel for num_threads(nt_for(be, n)) schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
    return GSINK_OK;
}

static gsink_status cpu_scale(gsink_backend *be, float *x, float alpha, size_t n)
{
#pragma omp parallel for num_threads(nt_for(be, n)) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= alpha;
    return GSINK_OK;
}

static gsink_status cpu_row_sumsq(gsink_backend *be, float *out, const float *x, size_t rows,
                                  int heads, int width)
{
#pragma omp parallel for num_threads(nt_for(be, rows * (size_t)heads * width)) schedule(static)
    for (size_t r = 0; r < rows; r++)
        for (int h = 0; h < heads; h++) {
            const float *p = x + (r * heads + h) * width;
            double s = 0.0;
            for (int i = 0; i < width; i++) s += (double)p[i] * p[i];
            out[r * heads + h] = (float)s;
        }
    return GSINK_OK;
}

static gsink_status cpu_batch_sum(gsink_backend *be, float *out, const float *x, int B, size_t n)
{
#pragma omp parallel for num_threads(nt_for(be, n * (size_t)B)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float s = 0.0f;
        for (int b = 0; b < B; b++) s += x[(size_t)b * n + i];
        out[i] = s;
    }
    return GSINK_OK;
}

static gsink_status cpu_fold_sum(gsink_backend *be, double *acc, const float *x, int B, size_t stride,
                                 size_t n)
{
#pragma omp parallel for num_threads(nt_for(be, n * (size_t)B)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int b = 0; b < B; b++) s += x[(size_t)b * stride + i];
        acc[i] += s;
    }
    return GSINK_OK;
}

/* sum_i (p[i] - q[i])^2 in double, q may be NULL (0) */
static double cpu_sumsq_d(const float *p, const float *q, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++) {
        double v = (double)p[i] - (q ? (double)q[i] : 0.0);
        s += v * v;
    }
    return s;
}

static gsink_status cpu_fold_norms(gsink_backend *be, double *acc, float *per_b, const float *x, const float *y,
                                   int B, int T, int R, int heads, int hw, int nh)
{
    const size_t W = (size_t)heads * (size_t)hw;
#pragma omp parallel for num_threads(nt_for(be, (size_t)B * (size_t)R * W)) schedule(static)
    for (int t = 0; t < R; t++) {
        double tot = 0.0;
        for (int b = 0; b < B; b++) {
            const size_t row = ((size_t)b * (size_t)T + (size_t)t) * W;
            double all = 0.0;
            for (int h = 0; h < heads; h++)
                all += cpu_sumsq_d(x + row + (size_t)h * hw, y ? y + row + (size_t)h * hw : NULL, hw);
            tot += sqrt(all);
            if (per_b) per_b[(size_t)b * (size_t)R + (size_t)t] = (float)sqrt(all);
        }
        if (!acc) continue;
        double *o = acc + (size_t)t * (size_t)(1 + nh);
        o[0] += tot;
        for (int h = 0; h < nh; h++) {
            double hs = 0.0;
            for (int b = 0; b < B; b++) {
                const size_t o = ((size_t)b * (size_t)T + (size_t)t) * W + (size_t)h * hw;
                hs += sqrt(cpu_sumsq_d(x + o, y ? y + o : NULL, hw));
            }
            o[1 + h] += hs;
        }
    }
    return GSINK_OK;
}

static gsink_status cpu_fold_ratio(gsink_backend *be, double *acc, const float *num, const float *den,
                                   int B, int R)
{
    (void)be;
    for (int t = 0; t < R; t++) {
        double s = 0.0;
        for (int b = 0; b < B; b++) s += (double)num[(size_t)b * R + t] / (double)den[(size_t)b * R + t];
        acc[t] += s;
    }
    return GSINK_OK;
}

static gsink_status cpu_row_sumsq_d(gsink_backend *be, double *out, const double *x, const double *y,
                                    size_t rows, int heads, int width)
{
#pragma omp parallel for num_threads(nt_for(be, rows * (size_t)heads * width)) schedule(static)
    for (size_t r = 0; r < rows; r++)
        for (int h = 0; h < heads; h++) {
            const size_t o = (r * heads + h) * (size_t)width;
            double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0; /* four chains: the adds overlap */
            int i = 0;
            for (; i + 4 <= width; i += 4) {
                double d0 = x[o + i] - (y ? y[o + i] : 0.0), d1 = x[o + i + 1] - (y ? y[o + i + 1] : 0.0),
                       d2 = x[o + i + 2] - (y ? y[o + i + 2] : 0.0), d3 = x[o + i + 3] - (y ? y[o + i + 3] : 0.0);
                s0 += d0 * d0;
                s1 += d1 * d1;
                s2 += d2 * d2;
                s3 += d3 * d3;
            }
            for (; i < width; i++) {
                double d = x[o + i] - (y ? y[o + i] : 0.0);
                s0 += d * d;
            }
            out[r * heads + h] = (s0 + s1) + (s2 + s3);
        }
    return GSINK_OK;
}

static gsink_status cpu_sumsq(gsink_backend *be, double *out, int *finite, const float *x, size_t n)
{
    int nt = nt_for(be, n);
    double *part = calloc((size_t)nt, sizeof(double));
    int *fin = malloc(sizeof(int) * (size_t)nt);
    if (!part || !fin) {
        free(part);
        free(fin);
        return set_fail(be, GSINK_ERR_OUT_OF_MEMORY, "sumsq scratch");
    }
    int used = 1;
#pragma omp parallel num_threads(nt)
    {
        size_t i0, i1;
        int team, t = thread_share(n, &i0, &i1, &team);
        if (t == 0) used = team;
        double s = 0.0;
        int f = 1;
        for (size_t i = i0; i < i1; i++) {
            if (!isfinite(x[i])) f = 0;
            s += (double)x[i] * x[i];
        }
        part[t] = s;
        fin[t] = f;
    }
    double s = 0.0;
    int f = 1;
    for (int t = 0; t < used; t++) {
        s += part[t];
        f &= fin[t];
    }
    free(part);
    free(fin);
    *out = s;
    if (finite) *finite = f;
    return GSINK_OK;
}

/* AdamW: separate IEEE roundings in this order, never contracted into FMAs
 * (even when built for a CPU that has them), so that the CUDA backend, which
 * performs the same operations with its _rn intrinsics, matches bitwise. */
#if defined(__clang__)
#define GSINK_NO_FP_CONTRACT
#elif defined(__GNUC__)
#define GSINK_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define GSINK_NO_FP_CONTRACT
#endif
GSINK_NO_FP_CONTRACT
static gsink_status cpu_adamw(gsink_backend *be, float *p, const float *g, float *m, float *v,
                              size_t n, float lr, float beta1, float beta2, float eps, float wd,
                              float bc1, float bc2, float gscale)
{
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    float sbc2 = sqrtf(bc2);
#pragma omp parallel for num_threads(nt_for(be, n)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gscale;
        p[i] -= lr * wd * p[i];
        m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
        v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        float denom = sqrtf(v[i]) / sbc2 + eps;
        p[i] -= (lr / bc1) * m[i] / denom;
    }
    return GSINK_OK;
}

/* ------------------------------------------------------------------------ */

static const gsink_backend_iface cpu_iface = {
    .api_version = GSINK_BACKEND_API_VERSION,
    .name = "cpu",
    .stats_in_backward = 0, /* the forward has every probability row at hand */
    .destroy = cpu_destroy,
    .set_threads = cpu_set_threads,
    .describe = cpu_describe,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .zero = cpu_zero,
    .copy = cpu_memcpy,
    .gemm = cpu_gemm,
    .embedding_fwd = cpu_embedding_fwd,
    .embedding_bwd = cpu_embedding_bwd,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .rope = cpu_rope,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .attention_stats = cpu_attention_stats,
    .vscale_fwd = cpu_vscale_fwd,
    .vscale_bwd = cpu_vscale_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .xent_fwd = cpu_xent_fwd,
    .xent_bwd = cpu_xent_bwd,
    .add = cpu_add,
    .scale = cpu_scale,
    .row_sumsq = cpu_row_sumsq,
    .batch_sum = cpu_batch_sum,
    .sumsq = cpu_sumsq,
    .adamw = cpu_adamw,
    .memory = cpu_memory,
    .gemm_w = cpu_gemm_w,
    .embedding_fwd_w = cpu_embedding_fwd_w,
    .convert = cpu_convert,
    .fold_sum = cpu_fold_sum,
    .fold_norms = cpu_fold_norms,
    .fold_ratio = cpu_fold_ratio,
    .row_sumsq_d = cpu_row_sumsq_d,
    .host_memory = 1,
};

gsink_status gsink_cpu_backend_create(int n_threads, gsink_backend **out)
{
    *out = NULL;
    gsink_backend *be = calloc(1, sizeof *be);
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return gsink__fail(NULL, GSINK_ERR_OUT_OF_MEMORY, "cannot allocate the CPU backend");
    }
    be->iface = &cpu_iface;
    be->ctx = c;
    gsink_status st = cpu_set_threads(be, n_threads);
    if (st) {
        cpu_destroy(be);
        return st;
    }
    *out = be;
    return GSINK_OK;
}
