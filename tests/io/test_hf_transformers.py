"""HuggingFace interoperability, checked with transformers itself (4.40, the
release pinned in tools/bootstrap.sh): a checkpoint saved by libgsink opens in
LlamaForCausalLM with the same logits, and a checkpoint written by
transformers' save_pretrained loads into libgsink with the same logits, loss
and parameter gradients as HF's own autograd."""

import tempfile

import numpy as np
import pytest

import gsink

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")  # installed by tools/bootstrap.sh

CONFIGS = [
    dict(vocab_size=97, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, d_head=8, d_ff=80,
         max_seq_len=64, tie_embeddings=1, rope_theta=50000.0),
    dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=4, d_head=8, d_ff=72,
         max_seq_len=64, tie_embeddings=0, rope_theta=10000.0),
]


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("cfg", CONFIGS, ids=["gqa-tied", "mha-untied"])
def test_gsink_checkpoint_opens_in_transformers(cfg):
    tok = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(2, 20), dtype=np.int32)
    with gsink.Model(cfg, seed=3, n_threads=1) as m, tempfile.TemporaryDirectory() as d:
        m.forward(tok)
        ours = m.logits()
        m.save(d)
        hf = transformers.LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = hf(torch.from_numpy(tok.astype(np.int64))).logits.numpy()
    assert rel(ours, theirs) < 1e-5


@pytest.mark.parametrize("cfg", CONFIGS, ids=["gqa-tied", "mha-untied"])
def test_transformers_checkpoint_loads_with_same_logits_and_gradients(cfg):
    torch.manual_seed(0)
    hcfg = transformers.LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["d_model"], num_hidden_layers=cfg["n_layers"],
        num_attention_heads=cfg["n_heads"], num_key_value_heads=cfg["n_kv_heads"],
        intermediate_size=cfg["d_ff"], max_position_embeddings=cfg["max_seq_len"],
        rope_theta=cfg["rope_theta"], tie_word_embeddings=bool(cfg["tie_embeddings"]),
        rms_norm_eps=1e-5, initializer_range=0.1)
    hf = transformers.LlamaForCausalLM(hcfg).float()
    with torch.no_grad():  # non-trivial norm gains, so their gradients matter too
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    rng = np.random.default_rng(1)
    tok = rng.integers(0, cfg["vocab_size"], size=(3, 17), dtype=np.int32)
    tgt = rng.integers(0, cfg["vocab_size"], size=(3, 17), dtype=np.int32)
    tgt[0, :4] = -100  # HF's ignore index; ours ignores any negative target
    out = hf(torch.from_numpy(tok.astype(np.int64)))
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, cfg["vocab_size"]),
                                             torch.from_numpy(tgt.astype(np.int64)).reshape(-1),
                                             ignore_index=-100)
    loss.backward()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d, safe_serialization=True)
        with gsink.Model.load(d, n_threads=1) as m:
            ours_loss = m.forward(tok, tgt)
            assert rel(m.logits(), out.logits.detach().numpy()) < 1e-5
            assert abs(ours_loss - loss.item()) < 1e-5 * abs(loss.item())
            m.backward()
            for name, p in hf.named_parameters():
                ours = m.get_param_grad(name)
                assert rel(ours, p.grad.numpy()) < 1e-4, name
