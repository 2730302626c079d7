"""Python twin of `examples/c/analyze.c --numbers [MODEL_PATH]`: the fixed set
of values compared across languages by compare_bindings.sh."""
import sys

import numpy as np

import gsink

B = 2


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else None  # MODEL_PATH, as the C example takes it
    model = gsink.Model.load(path, seed=1234, n_threads=1) if path else gsink.Model("micro", seed=1234, n_threads=1)
    with model as m:
        cfg = m.config
        T = min(64, cfg.max_seq_len)
        d = m.diag_options
        m.set_diag_options(sink_window=min(d["sink_window"], T),
                           rgs_window=min(d["rgs_window"], T - 1))
        d = m.diag_options
        b = np.arange(B, dtype=np.int64)[:, None]
        t = np.arange(T, dtype=np.int64)[None, :]
        tokens = ((31 * b + 7 * t + 3) % cfg.vocab_size).astype(np.int32)
        targets = ((31 * b + 7 * (t + 1) + 3) % cfg.vocab_size).astype(np.int32)
        targets[:, T - 1] = -1
        loss = m.forward(tokens, targets)
        m.backward()
        agg = gsink.BatchAgg.SUM_THEN_NORM
        values = [
            ("loss", loss),
            ("rgs_layer0", m.gradient_sink_ratio(0, s=0, t_e=d["rgs_window"], agg=agg)),
            ("sink_rate_layer0", m.sink_rate(0, s=0, eps=d["sink_eps"])),
            ("sink_score_layer0_head0", m.sink_scores(0, s=0)[0]),
            ("grad_norm_layer0_t0",
             m.gradient_norms(gsink.Site.ATTN_NORM_OUT, layer=0, head=gsink.ALL_HEADS, agg=agg)[0]),
            ("t0_early_last", m.massive_activation_ratio(gsink.Site.RESID_OUT, layer=cfg.n_layers - 1)),
        ]
        for name, v in values:
            print("%s %.9g" % (name, float(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
