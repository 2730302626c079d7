/*
 * dist - the communication of the data-parallel tools (gsink-train,
 * gsink-cli analyze). Not part of libgsink: the tools link it, so libgsink.so
 * has no load-time dependency on MPI (or NCCL).
 *
 * One communicator, the world: rank, size, sum all-reduce (in place, in
 * buckets), broadcast, barrier. Backends:
 *   serial  one process (size 1; every call is a no-op), always built;
 *   mpi     MPI_COMM_WORLD, built when meson finds MPI (-Dmpi=auto|enabled),
 *           used when the process was started by an MPI launcher (mpirun,
 *           mpiexec, srun with PMI/PMIx: the launcher's environment says so),
 *           so the same binary runs with and without mpirun, with no flag.
 * A binary built without MPI that finds itself started as one of several
 * ranks refuses to run (N independent runs would write one output).
 */
#ifndef GSINK_DIST_H
#define GSINK_DIST_H

#include <stddef.h>
#include <stdint.h>

typedef struct dist_comm {
    int rank, size;
    int local_rank;       /* rank on this node (the launcher's, else rank) */
    int local_size;       /* ranks on this node (the launcher's, else 1) */
    const char *backend;  /* "serial", "mpi" or "mpi+nccl" */
    size_t bucket_bytes;  /* all-reduce bucket (GSINK_DIST_BUCKET_MB, default 25 MB; 64 B .. 1 GB) */
} dist_comm;

/* Starts the communicator (the world). Returns 0, or -1 with a message in
 * err (n bytes). Call once, before anything else that may print. */
int dist_init(dist_comm *c, char *err, size_t n);
/* CPU threads for one rank when the user asked for the default (0): the
 * CPUs this process may run on shared among the ranks of its node (a
 * launcher that binds each rank to its cores already narrows the former).
 * 0 (the library's default) when alone. */
int dist_default_threads(const dist_comm *c, int max_threads);
/* GPU of this rank: its local rank modulo the GPUs it sees (count > 0), so
 * the ranks of a node spread over its GPUs; 0 when alone. */
static inline int dist_device_index(const dist_comm *c, int count)
{
    return c->size > 1 && count > 0 ? c->local_rank % count : 0;
}
/* Whether this binary has the MPI backend. */
int dist_have_mpi(void);
/* NCCL for the sum all-reduces of GPU ranks (opt-in: GSINK_DIST_NCCL=1 with
 * --device cuda; NOT TESTED on a GPU yet, docs/distributed.md). Loads
 * libnccl.so.2 and libcudart with dlopen, selects GPU device, shares the
 * NCCL id over MPI. 0, or -1 with a message (the run may continue on MPI). */
int dist_have_nccl(void);
int dist_enable_nccl(dist_comm *c, int device, char *err, size_t n);
void dist_finalize(dist_comm *c);
/* Ends every rank (MPI_Abort) with code; a serial run just exits. */
void dist_abort(dist_comm *c, int code);
/* The communicator dist_init started (NULL before). */
dist_comm *dist_world(void);

/* In-place SUM over ranks, in buckets of c->bucket_bytes. Every rank gets
 * the same values (the sum's order does not depend on the rank). 0 on success. */
int dist_allreduce_sum_f(dist_comm *c, float *buf, size_t n);
int dist_allreduce_sum_d(dist_comm *c, double *buf, size_t n);
/* In-place MAX over ranks (flags, error counts). */
int dist_allreduce_max_i64(dist_comm *c, int64_t *buf, size_t n);
/* Root's bytes to every rank. */
int dist_bcast(dist_comm *c, void *buf, size_t bytes, int root);
/* Every rank's value v, in rank order, into out (c->size values). */
int dist_allgather_u64(dist_comm *c, uint64_t v, uint64_t *out);
int dist_barrier(dist_comm *c);

/* FNV-1a (64-bit) of n bytes, continuing from h (start: DIST_FNV_INIT). */
#define DIST_FNV_INIT 0xcbf29ce484222325ull
uint64_t dist_fnv1a64(const void *p, size_t n, uint64_t h);

/* Rows [*lo, *hi) of a global batch of B rows that rank r of size takes:
 * consecutive slices, sizes differing by at most one. */
static inline void dist_slice(int B, int rank, int size, int *lo, int *hi)
{
    *lo = (int)((int64_t)B * rank / size);
    *hi = (int)((int64_t)B * (rank + 1) / size);
}

#endif
