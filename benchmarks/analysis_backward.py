# GSINK_MODEL_ANALYSIS (activation gradients only) against a normal model:
# the bytes gsink_model_memory reports after one forward+backward, and the
# median backward time, on the CPU. Random weights, the same input for both.
#   python benchmarks/analysis_backward.py [small|smollm2] [batch] [seq] [iters]
import statistics
import sys
import time

import numpy as np
import gsink

SHAPES = {
    "small": dict(config="small"),
    # SmolLM2-135M's shape (tied embeddings)
    "smollm2": dict(config=None, vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                    d_head=64, d_ff=1536, max_seq_len=2048, tie_embeddings=1),
}
name = sys.argv[1] if len(sys.argv) > 1 else "small"
B, T, iters = (int(a) for a in (sys.argv[2:5] + ["4", "512", "5"][len(sys.argv[2:5]):]))
kw = dict(SHAPES[name])
config = kw.pop("config")
rng = np.random.default_rng(0)
res = {}
for analysis in (False, True):
    m = gsink.Model(config, seed=1, n_threads=2, analysis=analysis, **kw)
    tok = rng.integers(0, m.config.vocab_size, size=(B, T), dtype=np.int32)
    times = []
    for _ in range(iters):
        m.forward(tok, tok)
        t0 = time.perf_counter()
        m.backward()
        times.append(time.perf_counter() - t0)
    b, peak = m.memory()
    res[analysis] = (b, peak, statistics.median(times))
    print(f"{name} B={B} T={T} analysis={int(analysis)}: memory {b / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB),"
          f" backward median {1e3 * statistics.median(times):.1f} ms over {iters}")
    m.close()
(b0, p0, t0), (b1, p1, t1) = res[False], res[True]
print(f"saved: {(b0 - b1) / 2**20:.1f} MiB ({100 * (b0 - b1) / b0:.1f}% of the model's memory), "
      f"backward {100 * (t0 - t1) / t0:.1f}% faster")
