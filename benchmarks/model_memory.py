# Memory and time of one training step (forward + backward) of a preset on
# the CPU: the backend's peak (gsink_model_memory: weights, gradients,
# activations, logits, scratch) and the median step time, with every site
# gradient kept (the default) and with GSINK_MODEL_DISCARD_SITE_GRADS.
#
#   python benchmarks/model_memory.py [--preset paper-0.1b] [--batch 8] [--seq 1024] [--iters 3]
#
# GSINK_LIBRARY selects the build, so two builds compare in the same session
# (docs/benchmarks.md, "Training-step memory"). On a GPU the same layout
# plus the CUDA backend's scratch is what bench_cuda prints as
# model_peak_memory_mib (benchmarks/cuda/run_cuda_bench.sh).
import argparse
import statistics
import time

import numpy as np

import gsink


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="paper-0.1b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    print(f"library: {gsink.library_path()}")
    print(f"preset {a.preset}, batch {a.batch} x seq {a.seq}, fp32 on the CPU, median of {a.iters} steps")
    rng = np.random.default_rng(0)
    for discard in (False, True):
        m = gsink.Model(a.preset, seed=1, n_threads=a.threads, discard_site_grads=discard)
        V = m.config.vocab_size
        tok = rng.integers(0, V, size=(a.batch, a.seq), dtype=np.int32)
        tgt = np.roll(tok, -1, axis=1)
        tgt[:, -1] = -1
        times = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            m.forward(tok, tgt)
            m.backward()
            times.append(time.perf_counter() - t0)
        live, peak = m.memory()
        mode = "discard_site_grads" if discard else "default (site gradients kept)"
        print(f"{mode:30s} peak {peak / 2**30:7.3f} GiB  step {statistics.median(times):7.2f} s")
        m.close()


if __name__ == "__main__":
    main()
