# Peak RSS of one forward+backward of a SmolLM2-135M-shaped model (random
# weights, batch 4 x 512) with and without GSINK_MODEL_DISCARD_SITE_GRADS:
#   python benchmarks/mem_discard_site_grads.py 0   # keeps site gradients
#   python benchmarks/mem_discard_site_grads.py 1   # discards them
# Run each in its own process (ru_maxrss is per process).
import resource
import sys

import numpy as np
import gsink
discard = sys.argv[1] == "1"
m = gsink.Model(None, vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_head=64,
                d_ff=1536, max_seq_len=512, tie_embeddings=1, seed=1, n_threads=2, discard_site_grads=discard)
rng = np.random.default_rng(0)
tok = rng.integers(0, 49152, size=(4, 512), dtype=np.int32)
m.forward(tok, tok)
m.backward()
print(f"discard={discard} peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f}")
