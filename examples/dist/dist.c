/* dist - serial and MPI backends of the tools' communicator (see dist.h). */
#include "dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef GSINK_HAVE_MPI
#include <mpi.h>
#endif
#ifdef GSINK_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>
#endif

static dist_comm *world;
#ifdef GSINK_HAVE_MPI
static int mpi_started;
#endif

dist_comm *dist_world(void) { return world; }

int dist_have_mpi(void)
{
#ifdef GSINK_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

/* The world size an MPI launcher announces in the environment (0: none).
 * Open MPI (mpirun), MPICH/Hydra and Slurm's PMI-1/2 (PMI_SIZE), PMIx
 * (srun --mpi=pmix, Open MPI 5: PMIX_RANK with the size in OMPI_/PMI_ vars
 * or unknown: -1), MVAPICH. */
static long launcher_size(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return strtol(v, NULL, 10);
    }
    if (getenv("PMIX_RANK") || getenv("PMI_RANK")) return -1;
    return 0;
}

#ifdef GSINK_HAVE_MPI
static long env_long(const char *a, const char *b, long def)
{
    const char *v = getenv(a);
    if (!v || !*v) v = b ? getenv(b) : NULL;
    return v && *v ? strtol(v, NULL, 10) : def;
}
#endif

int dist_init(dist_comm *c, char *err, size_t n)
{
    memset(c, 0, sizeof *c);
    c->rank = 0;
    c->size = 1;
    c->local_rank = 0;
    c->local_size = 1;
    c->backend = "serial";
    const char *mb = getenv("GSINK_DIST_BUCKET_MB"); /* may be fractional: 0.01 = 10 KB (tests) */
    double v = mb && *mb ? strtod(mb, NULL) : 25.0;
    if (!(v * 1048576.0 >= 64.0)) v = 64.0 / 1048576.0;
    if (v > 1024.0) v = 1024.0;
    c->bucket_bytes = (size_t)(v * 1048576.0);
    long ls = launcher_size();
    world = c;
    if (ls == 0 || ls == 1) return 0; /* no launcher, or one rank: serial */
#ifdef GSINK_HAVE_MPI
    int provided = 0;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        snprintf(err, n, "MPI_Init failed");
        return -1;
    }
    mpi_started = 1;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    c->local_rank = (int)env_long("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", c->rank);
    c->local_size = (int)env_long("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", 0);
    if (c->local_size < 1) c->local_size = (int)env_long("SLURM_NTASKS_PER_NODE", NULL, 1); /* "2(x3)": 2 */
    if (c->local_size < 1) c->local_size = 1;
    c->backend = "mpi";
    return 0;
#else
    snprintf(err, n,
             "started as one of %ld ranks by an MPI launcher, but this binary was built without MPI "
             "(meson -Dmpi=enabled, with libopenmpi-dev): refusing to run %ld independent copies",
             ls, ls);
    return -1;
#endif
}

int dist_default_threads(const dist_comm *c, int max_threads)
{
    if (c->size == 1 || c->local_size <= 1) return 0;
    int cpus = max_threads / 2; /* gsink_max_threads: 2 per CPU of the affinity mask */
    int t = cpus / c->local_size;
    return t < 1 ? 1 : t;
}


/* ---- NCCL (GPU ranks; opt-in, untested: docs/distributed.md) --------------------
 * libnccl and libcudart are opened with dlopen when a tool enables the
 * backend, so neither the tools nor libgsink.so depend on them at load time.
 * The sum all-reduce then runs on the GPU: each bucket is copied to a device
 * buffer, reduced with ncclAllReduce and copied back (the library's flat
 * gradient calls hand out host copies). Broadcasts, gathers and barriers stay
 * on MPI, which also carries the NCCL unique id. */
#ifdef GSINK_HAVE_NCCL
static struct {
    int on;
    void *lib, *rt;
    ncclComm_t comm;
    void *dev;
    size_t dev_bytes;
    ncclResult_t (*get_unique_id)(ncclUniqueId *);
    ncclResult_t (*init_rank)(ncclComm_t *, int, ncclUniqueId, int);
    ncclResult_t (*all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*destroy)(ncclComm_t);
    const char *(*error_string)(ncclResult_t);
    cudaError_t (*set_device)(int);
    cudaError_t (*malloc_)(void **, size_t);
    cudaError_t (*free_)(void *);
    cudaError_t (*memcpy_)(void *, const void *, size_t, enum cudaMemcpyKind);
    cudaError_t (*sync)(void);
} nc;

static void *sym(void *h, const char *name, int *bad)
{
    void *p = h ? dlsym(h, name) : NULL;
    if (!p) *bad = 1;
    return p;
}
#endif

int dist_have_nccl(void)
{
#ifdef GSINK_HAVE_NCCL
    return 1;
#else
    return 0;
#endif
}

int dist_enable_nccl(dist_comm *c, int device, char *err, size_t n)
{
#if defined(GSINK_HAVE_NCCL) && defined(GSINK_HAVE_MPI)
    if (c->size == 1 || nc.on) return 0;
    int bad = 0;
    nc.lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!nc.lib) nc.lib = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    nc.rt = dlopen("libcudart.so.13", RTLD_NOW | RTLD_LOCAL);
    if (!nc.rt) nc.rt = dlopen("libcudart.so", RTLD_NOW | RTLD_LOCAL);
    if (!nc.lib || !nc.rt) {
        snprintf(err, n, "NCCL backend: cannot load %s (LD_LIBRARY_PATH: the CUDA toolkit's lib64, or the "
                         "nvidia/nccl/lib directory of PyPI's NCCL wheel)", !nc.lib ? "libnccl.so.2" : "libcudart.so");
        return -1;
    }
    *(void **)&nc.get_unique_id = sym(nc.lib, "ncclGetUniqueId", &bad);
    *(void **)&nc.init_rank = sym(nc.lib, "ncclCommInitRank", &bad);
    *(void **)&nc.all_reduce = sym(nc.lib, "ncclAllReduce", &bad);
    *(void **)&nc.destroy = sym(nc.lib, "ncclCommDestroy", &bad);
    *(void **)&nc.error_string = sym(nc.lib, "ncclGetErrorString", &bad);
    *(void **)&nc.set_device = sym(nc.rt, "cudaSetDevice", &bad);
    *(void **)&nc.malloc_ = sym(nc.rt, "cudaMalloc", &bad);
    *(void **)&nc.free_ = sym(nc.rt, "cudaFree", &bad);
    *(void **)&nc.memcpy_ = sym(nc.rt, "cudaMemcpy", &bad);
    *(void **)&nc.sync = sym(nc.rt, "cudaDeviceSynchronize", &bad);
    if (bad) {
        snprintf(err, n, "NCCL backend: libnccl or libcudart lacks a symbol it needs");
        return -1;
    }
    if (nc.set_device(device) != cudaSuccess) {
        snprintf(err, n, "NCCL backend: cudaSetDevice(%d) failed", device);
        return -1;
    }
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (c->rank == 0 && nc.get_unique_id(&id) != ncclSuccess) memset(&id, 0, sizeof id);
    if (dist_bcast(c, &id, sizeof id, 0)) {
        snprintf(err, n, "NCCL backend: broadcast of the NCCL id failed");
        return -1;
    }
    ncclResult_t r = nc.init_rank(&nc.comm, c->size, id, c->rank);
    if (r != ncclSuccess) {
        snprintf(err, n, "NCCL backend: ncclCommInitRank: %s", nc.error_string(r));
        return -1;
    }
    nc.dev_bytes = c->bucket_bytes;
    if (nc.malloc_(&nc.dev, nc.dev_bytes) != cudaSuccess) {
        snprintf(err, n, "NCCL backend: cannot allocate a %zu-byte device bucket", nc.dev_bytes);
        return -1;
    }
    nc.on = 1;
    c->backend = "mpi+nccl";
    return 0;
#else
    (void)c, (void)device;
    snprintf(err, n, "this binary has no NCCL backend (meson -Dnccl=enabled with nccl.h and MPI)");
    return -1;
#endif
}

#ifdef GSINK_HAVE_NCCL
static int nccl_allreduce(dist_comm *c, void *buf, size_t count, size_t elt, ncclDataType_t t)
{
    size_t per = nc.dev_bytes / elt;
    char *p = buf;
    (void)c;
    for (size_t done = 0; done < count; done += per) {
        size_t k = count - done < per ? count - done : per;
        if (nc.memcpy_(nc.dev, p + done * elt, k * elt, cudaMemcpyHostToDevice) != cudaSuccess) return -1;
        if (nc.all_reduce(nc.dev, nc.dev, k, t, ncclSum, nc.comm, 0) != ncclSuccess) return -1;
        if (nc.sync() != cudaSuccess) return -1;
        if (nc.memcpy_(p + done * elt, nc.dev, k * elt, cudaMemcpyDeviceToHost) != cudaSuccess) return -1;
    }
    return 0;
}
#endif

void dist_finalize(dist_comm *c)
{
    (void)c;
#ifdef GSINK_HAVE_NCCL
    if (nc.on) {
        nc.sync();
        nc.destroy(nc.comm);
        nc.free_(nc.dev);
        nc.on = 0;
    }
#endif
#ifdef GSINK_HAVE_MPI
    if (mpi_started) {
        MPI_Finalize();
        mpi_started = 0;
    }
#endif
}

void dist_abort(dist_comm *c, int code)
{
    (void)c;
#ifdef GSINK_HAVE_MPI
    if (mpi_started && c && c->size > 1) {
        fflush(stdout);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, code);
    }
#endif
    exit(code);
}

#ifdef GSINK_HAVE_MPI
static int allreduce(dist_comm *c, void *buf, size_t n, size_t elt, MPI_Datatype t, MPI_Op op)
{
    size_t per = c->bucket_bytes / elt;
    if (per < 1) per = 1;
    if (per > INT_MAX) per = INT_MAX;
    char *p = buf;
    for (size_t done = 0; done < n; done += per) {
        size_t k = n - done < per ? n - done : per;
        if (MPI_Allreduce(MPI_IN_PLACE, p + done * elt, (int)k, t, op, MPI_COMM_WORLD) != MPI_SUCCESS) return -1;
    }
    return 0;
}
#endif

int dist_allreduce_sum_f(dist_comm *c, float *buf, size_t n)
{
    if (c->size == 1) return 0;
#ifdef GSINK_HAVE_NCCL
    if (nc.on) return nccl_allreduce(c, buf, n, sizeof *buf, ncclFloat32);
#endif
#ifdef GSINK_HAVE_MPI
    return allreduce(c, buf, n, sizeof *buf, MPI_FLOAT, MPI_SUM);
#else
    (void)buf, (void)n;
    return -1;
#endif
}

int dist_allreduce_sum_d(dist_comm *c, double *buf, size_t n)
{
    if (c->size == 1) return 0;
#ifdef GSINK_HAVE_NCCL
    if (nc.on) return nccl_allreduce(c, buf, n, sizeof *buf, ncclFloat64);
#endif
#ifdef GSINK_HAVE_MPI
    return allreduce(c, buf, n, sizeof *buf, MPI_DOUBLE, MPI_SUM);
#else
    (void)buf, (void)n;
    return -1;
#endif
}

int dist_allreduce_max_i64(dist_comm *c, int64_t *buf, size_t n)
{
    if (c->size == 1) return 0;
#ifdef GSINK_HAVE_MPI
    return allreduce(c, buf, n, sizeof *buf, MPI_INT64_T, MPI_MAX);
#else
    (void)buf, (void)n;
    return -1;
#endif
}

int dist_bcast(dist_comm *c, void *buf, size_t bytes, int root)
{
    if (c->size == 1) return 0;
#ifdef GSINK_HAVE_MPI
    char *p = buf;
    const size_t per = (size_t)1 << 30;
    for (size_t done = 0; done < bytes; done += per) {
        size_t k = bytes - done < per ? bytes - done : per;
        if (MPI_Bcast(p + done, (int)k, MPI_BYTE, root, MPI_COMM_WORLD) != MPI_SUCCESS) return -1;
    }
    return 0;
#else
    (void)buf, (void)bytes, (void)root;
    return -1;
#endif
}

int dist_allgather_u64(dist_comm *c, uint64_t v, uint64_t *out)
{
    if (c->size == 1) {
        out[0] = v;
        return 0;
    }
#ifdef GSINK_HAVE_MPI
    return MPI_Allgather(&v, 1, MPI_UINT64_T, out, 1, MPI_UINT64_T, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
#else
    return -1;
#endif
}

int dist_barrier(dist_comm *c)
{
    if (c->size == 1) return 0;
#ifdef GSINK_HAVE_MPI
    return MPI_Barrier(MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
#else
    return -1;
#endif
}

uint64_t dist_fnv1a64(const void *p, size_t n, uint64_t h)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
