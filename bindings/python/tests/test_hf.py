"""gsink.hf on tiny random HuggingFace Llama, Qwen2 and Mistral models
(transformers 4.40, float32, eager attention) against the native model loaded
from the same checkpoint: the report's metrics agree to 1e-5; and on a Gemma
(no native model) against the SPEC's formulas evaluated in the test."""
import math
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import gsink  # noqa: E402
import gsink.hf  # noqa: E402

ARCHS = ["llama", "qwen2", "mistral"]
B, T, WIN = 2, 40, 4


def make(arch, seed=0):
    torch.manual_seed(seed)
    common = dict(vocab_size=101, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, intermediate_size=80, max_position_embeddings=128, rms_norm_eps=1e-5,
                  initializer_range=0.1, tie_word_embeddings=False, attn_implementation="eager")
    if arch == "llama":
        cfg, cls = transformers.LlamaConfig(rope_theta=10000.0, **common), transformers.LlamaForCausalLM
    elif arch == "qwen2":
        cfg, cls = transformers.Qwen2Config(rope_theta=10000.0, **common), transformers.Qwen2ForCausalLM
    else:
        cfg, cls = transformers.MistralConfig(rope_theta=10000.0, sliding_window=4096, **common), \
            transformers.MistralForCausalLM
    model = cls(cfg).float().eval()
    with torch.no_grad():  # non-trivial gains and biases
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        # a token-0 bias so that sinks exist at this size
        model.model.embed_tokens.weight[7].mul_(8.0)
    return model


def close(a, b, tol=1e-5):
    """Relative agreement of two report values (numbers, lists, dicts)."""
    if isinstance(a, dict):
        return all(close(a[k], b[k], tol) for k in a if k in b)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(b))


def maxdiff(a, b):
    if isinstance(a, dict):
        return max([maxdiff(a[k], b[k]) for k in a if k in b] + [0.0])
    if isinstance(a, list):
        return max([maxdiff(x, y) for x, y in zip(a, b)] + [0.0])
    if isinstance(a, (int, float)) and not isinstance(a, bool) and b is not None:
        return abs(a - b) / max(1.0, abs(b))
    return 0.0


@pytest.fixture(scope="module", params=ARCHS)
def pair(request):
    arch = request.param
    model = make(arch)
    rng = np.random.default_rng(3)
    tok = rng.integers(0, 101, (B, T + 1)).astype(np.int32)
    tok[:, 0] = 7
    inp, tgt = tok[:, :-1], tok[:, 1:]
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, safe_serialization=True)
        native = gsink.Model.load(d, n_threads=1)
    native.set_diag_options(sink_window=WIN)
    native.forward(inp, tgt)
    native.backward()
    yield arch, model, native, inp, tgt
    native.close()


COMPARED = ["sink_rate", "gradient_sink_ratio", "massive_activation_ratio", "value_norm", "heads",
            "activation_norms", "gradient_norms", "branch", "qkv_gradient_split"]


@pytest.mark.parametrize("attention", ["probs", "gsink"])
def test_report_matches_native(pair, attention):
    arch, model, native, inp, tgt = pair
    ours = gsink.hf.analyze(model, inp, tgt, attention=attention, sink_window=WIN, sink_eps=0.2)
    ref = native.report(sink_eps=0.2)
    assert ours["schema"] == ref["schema"] == "gsink.report/1"
    assert abs(ours["input"]["loss"] - ref["input"]["loss"]) <= 1e-5 * ref["input"]["loss"]
    for key in ("batch", "seq_len", "n_targets"):
        assert ours["input"][key] == ref["input"][key]
    for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_ff", "arch", "qkv_bias"):
        assert ours["model"][key] == ref["model"][key], key
    assert close(ours["options"], ref["options"], 1e-7) and set(ours["options"]) == set(ref["options"])
    worst = 0.0
    for lo, lr in zip(ours["layers"], ref["layers"]):
        for key in COMPARED:
            assert key in lo, key
            assert close(lo[key], lr[key]), (arch, lo["layer"], key, maxdiff(lo[key], lr[key]))
            worst = max(worst, maxdiff(lo[key], lr[key]))
        assert set(lo["gradient_norms"]) >= {"attn_norm_out", "resid_in", "resid_out", "v", "mlp_out"}
        assert lo["gradient_sink_ratio"] is not None and lo["sink_rate"] is not None
    for key in ref["summary"]:
        assert close(ours["summary"][key], ref["summary"][key]), key
    print("%s/%s: largest relative difference %.2e" % (arch, attention, worst))


def test_gsink_attention_leaves_the_model_unchanged(pair):
    arch, model, native, inp, tgt = pair
    ids = torch.from_numpy(inp.astype(np.int64))
    with torch.no_grad():
        want = model(ids).logits
        with gsink.hf.Recorder(model, attention="gsink", sink_window=WIN) as rec:
            got = model(ids).logits
            assert all(st is not None for st in rec.stats)
        again = model(ids).logits   # hooks and the patched forward are gone
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, want, rtol=0, atol=0)
    np.testing.assert_allclose(got.numpy(), native.logits().reshape(got.shape), rtol=1e-4, atol=1e-5)


def test_report_without_backward_and_plots(pair, tmp_path):
    arch, model, native, inp, tgt = pair
    with gsink.hf.Recorder(model, sink_window=WIN) as rec:
        with torch.no_grad():
            model(torch.from_numpy(inp.astype(np.int64)), output_attentions=True)
        rep = rec.report()
    assert rep["input"]["loss"] is None
    assert rep["layers"][0]["gradient_sink_ratio"] is None and rep["layers"][0]["sink_rate"] is not None
    assert rep["layers"][0]["gradient_norms"] == {}
    with pytest.raises(ValueError, match="attention"):
        gsink.hf.Recorder(model, attention="flash")
    if arch == "llama":
        pytest.importorskip("matplotlib")
        from gsink import plots
        full = gsink.hf.analyze(model, inp, tgt, sink_window=WIN)
        plots.gradient_sink_distribution(full, path=str(tmp_path / "fig1.png"))
        plots.qkv_gradient_norms(full, path=str(tmp_path / "fig2.png"))
        plots.branch_ratios_vs_norm(full, path=str(tmp_path / "fig3.png"))
        assert (tmp_path / "fig1.png").stat().st_size > 0
        assert math.isfinite(full["summary"]["gradient_sink_ratio"]["median"])


@pytest.mark.parametrize("attention", ["probs", "gsink"])
def test_architecture_without_native_model(attention):
    """gsink.hf on a tiny random Gemma, an architecture libgsink does not
    implement (embeddings scaled by sqrt(d), RMSNorm gains 1 + w, a GeLU
    MLP, head_dim independent of the width), float64, against the SPEC's
    formulas evaluated here on the same model from its own attention
    probabilities and autograd gradients: R_GS, sink rate, sink scores,
    column mass and t0/early of resid_out."""
    if not hasattr(transformers, "GemmaForCausalLM"):
        pytest.skip("transformers without Gemma")
    torch.manual_seed(1)
    cfg = transformers.GemmaConfig(vocab_size=101, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                   num_key_value_heads=2, head_dim=10, intermediate_size=80,
                                   max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.1,
                                   attn_implementation="eager")
    model = transformers.GemmaForCausalLM(cfg).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        model.model.embed_tokens.weight[7].mul_(8.0)
    rng = np.random.default_rng(5)
    tok = rng.integers(0, 101, (B, T + 1)).astype(np.int32)
    tok[:, 0] = 7
    inp, tgt = tok[:, :-1], tok[:, 1:]
    eps = 0.2
    rep = gsink.hf.analyze(model, inp, tgt, attention=attention, sink_window=WIN, sink_eps=eps)

    # the formulas, on a plain run of the model
    norm_out, resid_out = {}, {}
    hooks = []
    for l, layer in enumerate(model.model.layers):
        def keep(m, a, o, l=l):
            o.retain_grad()
            norm_out[l] = o
        hooks.append(layer.input_layernorm.register_forward_hook(keep))
        hooks.append(layer.register_forward_hook(lambda m, a, o, l=l: resid_out.__setitem__(l, o[0])))
    ids = torch.from_numpy(inp.astype(np.int64))
    out = model(input_ids=ids, output_attentions=True, use_cache=False)
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 101),
                                             torch.from_numpy(tgt.astype(np.int64)).reshape(-1))
    loss.backward()
    for h in hooks:
        h.remove()
    assert abs(rep["input"]["loss"] - loss.item()) <= 1e-6 * loss.item()
    n_sinks = 0
    for l, lay in enumerate(rep["layers"]):
        g = norm_out[l].grad.sum(0).norm(dim=-1)                        # summed over the batch, then norms
        rgs = (g[0] / g[1:32].mean()).item()                            # T_e = 31, s = 0
        a = out.attentions[l]                                           # (B, H, T, T)
        alpha = a[:, :, :WIN, 0].sum(-1).mean(0) / WIN                  # sink score of token 0 per head
        mass = a[:, :, :, 0].sum(-1).mean(0)                            # column mass M_0 per head
        rate = (alpha > eps).double().mean().item()
        x = resid_out[l].norm(dim=-1).mean(0)                           # activation norms: mean over the batch
        t0_early = (x[0] / x[1:16].mean()).item()
        assert abs(lay["gradient_sink_ratio"] - rgs) <= 1e-5 * rgs, (l, lay["gradient_sink_ratio"], rgs)
        assert abs(lay["sink_rate"] - rate) <= 1e-12, (l, lay["sink_rate"], rate)
        for hd in lay["heads"]:
            assert abs(hd["sink_score"] - alpha[hd["head"]].item()) <= 1e-5
            assert abs(hd["column_mass"] - mass[hd["head"]].item()) <= 1e-5 * max(1.0, mass[hd["head"]].item())
        assert abs(lay["massive_activation_ratio"]["resid_out"] - t0_early) <= 1e-5 * t0_early
        n_sinks += sum(hd["is_sink"] for hd in lay["heads"])
    assert n_sinks > 0  # the sink threshold is exercised on both sides
