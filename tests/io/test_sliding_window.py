"""Sliding-window attention (gsink_config.sliding_window) against HuggingFace
transformers' eager MistralForCausalLM in float64: loss, logits, every layer's
attention pattern, column mass and sink-score window sums, and all parameter
gradients, for windows below, across and above the CUDA kernels' 32-key
tiles. On the CPU and, where the emulated CUDA module is built
(GSINK_CUDA_MODULE), on the emulated device.

Semantics: gsink's window W lets query t see keys j with 0 <= t - j < W
(W keys), as transformers' masking_utils (sliding_window_overlay, 4.53+) and
llama.cpp's n_swa. transformers 4.40's eager mask lets one more key through
(t - j <= sliding_window); the test measures which convention the installed
transformers uses and builds the HF model with the matching value, so the
window boundary is compared exactly either way."""

import json
import os

import numpy as np
import pytest

import gsink

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

B, T, V = 2, 160, 96  # T > 128: several CPU query blocks and 32-key CUDA tiles


def devices():
    out = ["cpu"]
    if os.environ.get("GSINK_CUDA_MODULE") and gsink.device_count("cuda") > 0:
        out.append("cuda")
    return out


def rel(a, b):
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


def hf_model(hf_window, seed=0):
    cfg = transformers.MistralConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=hf_window,
        tie_word_embeddings=False, initializer_range=0.2)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return transformers.MistralForCausalLM(cfg).eval()


_OFFSET = []


def hf_keys_offset():
    """Visible keys per row minus config.sliding_window in this transformers."""
    if not _OFFSET:
        m = hf_model(4)
        with torch.no_grad():
            out = m(torch.zeros((1, 16), dtype=torch.long), output_attentions=True)
        keys = int((out.attentions[0][0, 0, -1] > 0).sum())
        assert keys in (4, 5), keys
        _OFFSET.append(keys - 4)
    return _OFFSET[0]


def make_twin(tmp_path, W):
    """HF float64 model with W visible keys per row, and its gsink directory."""
    hf_w = W - hf_keys_offset()
    if hf_w < 1:
        pytest.skip("transformers %s cannot express a %d-key window" % (transformers.__version__, W))
    m = hf_model(hf_w)
    d = tmp_path / ("w%d" % W)
    m.save_pretrained(str(d), safe_serialization=True)
    cfg = json.load(open(d / "config.json"))
    cfg["sliding_window"] = W  # gsink's (and current HF's) convention
    json.dump(cfg, open(d / "config.json", "w"))
    return m.double(), str(d)


def tokens(seed=1):
    return np.random.default_rng(seed).integers(0, V, size=(B, T + 1), dtype=np.int32)


def hf_run(m, toks):
    inp = torch.from_numpy(toks[:, :-1].astype(np.int64))
    tgt = torch.from_numpy(toks[:, 1:].astype(np.int64))
    m.zero_grad()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # transformers 4.40 builds its mask in the default dtype
    try:
        out = m(inp, output_attentions=True)
    finally:
        torch.set_default_dtype(prev)
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, V), tgt.reshape(-1))
    loss.backward()
    grads = {n: p.grad.detach().numpy() for n, p in m.named_parameters()}
    attn = [a.detach().numpy() for a in out.attentions]  # (B, H, T, T) per layer
    return float(loss), out.logits.detach().numpy(), attn, grads


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("W", [2, 7, 33, 130, 159, 400])
def test_window_matches_transformers(tmp_path, device, W):
    hf, d = make_twin(tmp_path, W)
    toks = tokens()
    loss_ref, logits_ref, attn_ref, grads_ref = hf_run(hf, toks)
    if W < T:  # the boundary: key t - W + 1 visible, key t - W masked
        a = attn_ref[0][0, 0]
        assert a[T - 1, T - W] > 0 and a[T - 1, T - W - 1] == 0
    with gsink.Model.load(d, n_threads=2, device=device) as m:
        assert m.config.arch == "mistral" and m.config.sliding_window == W
        L, H = m.config.n_layers, m.config.n_heads
        colmass_ref = np.stack([a.sum(axis=2).mean(axis=0) for a in attn_ref])
        # statistics read after a forward only (stand-alone pass), then after a backward
        m.forward(np.ascontiguousarray(toks[:, :-1]), np.ascontiguousarray(toks[:, 1:]))
        fwd_colmass = np.stack([np.stack([m.column_mass(l, h)[0] for h in range(H)]) for l in range(L)])
        loss = m.forward(np.ascontiguousarray(toks[:, :-1]), np.ascontiguousarray(toks[:, 1:]))
        m.backward()
        errs = {"loss": rel(loss, loss_ref), "logits": rel(m.logits(), logits_ref),
                "colmass_fwd": rel(fwd_colmass, colmass_ref)}
        pat = np.stack([np.stack([np.stack([m.attention_pattern(l, h, b) for h in range(H)])
                                  for b in range(B)]) for l in range(L)])
        errs["pattern"] = float(np.max(np.abs(pat - np.stack(attn_ref))))
        assert np.all(pat[np.stack(attn_ref) == 0] == 0)  # masked exactly
        colmass = np.stack([np.stack([m.column_mass(l, h)[0] for h in range(H)]) for l in range(L)])
        errs["colmass"] = rel(colmass, colmass_ref)
        sq = np.stack([np.stack([m.column_mass(l, h)[1] for h in range(H)]) for l in range(L)])
        errs["colsq"] = rel(sq, np.stack([(a * a).sum(axis=2).mean(axis=0) for a in attn_ref]))
        t_eps = m.diag_options["sink_window"]
        alpha = np.stack([m.sink_scores(l, 0) for l in range(L)])
        errs["sink_score"] = rel(alpha, np.stack([a[:, :, :t_eps, 0].sum(axis=2).mean(axis=0) / t_eps
                                                  for a in attn_ref]))
        errs["grads"] = max(rel(m.get_param_grad(n), g) for n, g in grads_ref.items())
        print("W=%d %s: %s" % (W, device, " ".join("%s %.2e" % kv for kv in errs.items())))
        assert errs["loss"] < 1e-5 and errs["logits"] < 1e-5, errs
        for k in ("colmass", "colmass_fwd", "colsq", "sink_score", "grads"):
            assert errs[k] < 1e-4, (k, errs)
        assert errs["pattern"] < 1e-4, errs  # absolute, entries in [0, 1]


def test_window_at_least_seq_is_plain_causal(tmp_path):
    """W >= T changes nothing: bitwise the same numbers as no window."""
    hf, d = make_twin(tmp_path, 400)
    toks = tokens()
    out = {}
    for w in (0, T, 400):
        cfg = json.load(open(os.path.join(d, "config.json")))
        cfg["sliding_window"] = w if w else None
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        with gsink.Model.load(d, n_threads=2) as m:
            assert m.config.sliding_window == w
            m.forward(np.ascontiguousarray(toks[:, :-1]), np.ascontiguousarray(toks[:, 1:]))
            m.backward()
            out[w] = (m.logits(), m.get_param_grad("model.layers.0.self_attn.q_proj.weight"),
                      m.column_mass(1, 0)[0])
    for w in (T, 400):
        for a, b in zip(out[w], out[0]):
            assert np.array_equal(a, b)


def test_window_one_attends_self_only(tmp_path):
    _, d = make_twin(tmp_path, 400)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["sliding_window"] = 1
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with gsink.Model.load(d, n_threads=2) as m:
        toks = tokens()
        m.forward(np.ascontiguousarray(toks[:, :-1]), np.ascontiguousarray(toks[:, 1:]))
        assert np.array_equal(m.attention_pattern(0, 1, 1), np.eye(T, dtype=np.float32))
        assert np.allclose(m.column_mass(1, 2)[0], 1.0, atol=1e-6)


def test_window_saved_and_reloaded(tmp_path):
    _, d = make_twin(tmp_path, 7)
    with gsink.Model.load(d) as m:
        out = str(tmp_path / "saved")
        m.save(out)
        assert json.load(open(os.path.join(out, "config.json")))["sliding_window"] == 7
        with gsink.Model.load(out) as m2:
            assert m2.config.sliding_window == 7
    cfg = gsink.Config(arch="qwen2", qkv_bias=True, sliding_window=5)
    with gsink.Model(cfg) as m:
        m.save(str(tmp_path / "q"))
        saved = json.load(open(tmp_path / "q" / "config.json"))
        assert saved["use_sliding_window"] and saved["sliding_window"] == 5 and saved["max_window_layers"] == 0
        with gsink.Model.load(str(tmp_path / "q")) as m2:
            assert m2.config.sliding_window == 5


def write_config(tmp_path, src, **changes):
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg.update(changes)
    d = tmp_path / "cfg"
    d.mkdir(exist_ok=True)
    json.dump(cfg, open(d / "config.json", "w"))
    import shutil
    shutil.copy(os.path.join(src, "model.safetensors"), d / "model.safetensors")
    return str(d)


QWEN2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "hf-archs", "qwen2")


@pytest.mark.parametrize("changes,expect", [
    (dict(use_sliding_window=False, sliding_window=4), 0),
    (dict(use_sliding_window=True, sliding_window=4, max_window_layers=0), 4),
    (dict(use_sliding_window=True, sliding_window=4, max_window_layers=99), 0),
    (dict(use_sliding_window=True, sliding_window=None, max_window_layers=0), 0),
    (dict(use_sliding_window=True, sliding_window=100000, max_window_layers=1), 0),
])
def test_qwen2_sliding_window_keys(tmp_path, changes, expect):
    with gsink.Model.load(write_config(tmp_path, QWEN2, **changes)) as m:
        assert m.config.sliding_window == expect


def test_qwen2_per_layer_window_refused(tmp_path):
    d = write_config(tmp_path, QWEN2, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    with pytest.raises(gsink.UnsupportedError, match="per-layer windows are not supported"):
        gsink.Model.load(d)


def test_bad_window_refused():
    with pytest.raises(gsink.GsinkError, match="sliding_window"):
        gsink.Model(gsink.Config(sliding_window=-1))
    with pytest.raises(gsink.GsinkError, match="not llama"):
        gsink.Model(gsink.Config(arch="llama", sliding_window=8))
