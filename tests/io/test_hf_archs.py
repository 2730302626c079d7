"""The architecture table against HuggingFace transformers: one tiny random
model per supported architecture (tests/data/hf-archs/, made by
make_fixtures.py with transformers 5 in float64) loads from its config.json and
safetensors and reproduces HF's loss, logits and the paper's per-token
diagnostics: residual-stream norms, gradient norms at the input_layernorm
output, attention column masses and R_GS. On the CPU and, where the emulated
CUDA module is built (GSINK_CUDA_MODULE), on the emulated device."""

import json
import os
import shutil

import numpy as np
import pytest

import gsink

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "hf-archs")
ARCHS = {  # fixture dir -> (architecture, rope scaling, q/k/v biases)
    "qwen3": ("qwen3", "default", False),
    "glm": ("glm", "default", True),
    "glm4": ("glm4", "default", True),
    "llama": ("llama", "default", False),
    "llama31": ("llama", "llama3", False),
    "mistral": ("mistral", "default", False),
    "qwen2": ("qwen2", "default", True),
}


def devices():
    out = ["cpu"]
    if os.environ.get("GSINK_CUDA_MODULE") and gsink.device_count("cuda") > 0:
        out.append("cuda")
    return out


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


def run(arch, device):
    d = os.path.join(DATA, arch)
    ref = np.load(os.path.join(d, "reference.npz"))
    toks = np.load(os.path.join(d, "tokens.npy"))
    inp, tgt = np.ascontiguousarray(toks[:, :-1]), np.ascontiguousarray(toks[:, 1:])
    m = gsink.Model.load(d, n_threads=2, device=device)
    loss = m.forward(inp, tgt)
    m.backward()
    L, H = m.config.n_layers, m.config.n_heads
    got = {"loss": np.array(loss), "logits": m.logits()}
    got["resid_out_norm"] = np.stack([m.activation_norms("resid_out", l) for l in range(L - 1)])
    got["grad_h_norm"] = np.stack([m.gradient_norms("attn_norm_out", l, agg="sum_then_norm")
                                   for l in range(L)])
    got["attn_colmass"] = np.stack([np.stack([m.column_mass(l, h)[0] for h in range(H)])
                                    for l in range(L)])
    got["r_gs"] = np.array([m.gradient_sink_ratio(l, s=0, t_e=31, agg="sum_then_norm")
                            for l in range(L)])
    return m, ref, got


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_fixture_matches_transformers(arch, device):
    m, ref, got = run(arch, device)
    with m:
        name, rope, bias = ARCHS[arch]
        assert m.config.arch == name
        assert m.config.rope_scaling == rope
        assert m.config.qkv_bias == bias
        errs = {k: rel(got[k], ref[k]) for k in ref.files}
        print("%s/%s max rel errors: %s" % (arch, device, " ".join("%s %.2e" % kv for kv in errs.items())))
        assert errs["loss"] < 1e-5 and errs["logits"] < 1e-5, errs
        for k in ("resid_out_norm", "grad_h_norm", "attn_colmass", "r_gs"):
            assert errs[k] < 1e-4, (k, errs)


STEP_SITES = ("q", "k", "attn_out", "mlp_out", "mlp_pre", "mlp_up", "resid_out")


@pytest.mark.parametrize("device", [d for d in devices() if d != "cpu"])
@pytest.mark.parametrize("arch", ["qwen3", "glm", "glm4"])
def test_device_diagnostics_match_cpu(arch, device):
    """On the device, the optional steps' parameter gradients, the sites they
    write, the Q/K/V split (q_norm backward per sequence) and the branch
    ratios equal the CPU's."""
    d = os.path.join(DATA, arch)
    toks = np.load(os.path.join(d, "tokens.npy"))
    inp, tgt = np.ascontiguousarray(toks[:, :-1]), np.ascontiguousarray(toks[:, 1:])
    out = {}
    for dev in ("cpu", device):
        with gsink.Model.load(d, n_threads=2, device=dev) as m:
            m.forward(inp, tgt)
            m.backward()
            r = {n: m.get_param_grad(n) for n in m.param_names()}
            for l in range(m.config.n_layers):
                for site in STEP_SITES:
                    r[(l, site)] = m.activation_norms(site, l)
                    r[(l, site, "grad")] = m.gradient_norms(site, l)
                for agg in ("sum_then_norm", "per_sequence"):
                    for k, v in m.qkv_gradient_split(l, agg=agg).items():
                        r[(l, "split", k, agg)] = v
                for br in (gsink.Branch.ATTN, gsink.Branch.MLP):
                    for k, v in m.branch_ratios(l, br).items():
                        r[(l, "branch", int(br), k)] = v
            out[dev] = r
    errs = {k: rel(out[device][k], np.asarray(v, np.float64)) for k, v in out["cpu"].items()}
    worst = max(errs, key=errs.get)
    print("%s/%s vs cpu: worst rel error %.2e at %s" % (arch, device, errs[worst], worst))
    assert errs[worst] < 1e-4, (worst, errs[worst])


def with_config(tmp_path, arch, **changes):
    """A copy of a fixture with changed config.json fields (None deletes)."""
    src = os.path.join(DATA, arch)
    cfg = json.load(open(os.path.join(src, "config.json")))
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    d = tmp_path / arch
    d.mkdir()
    json.dump(cfg, open(d / "config.json", "w"))
    shutil.copy(os.path.join(src, "model.safetensors"), d / "model.safetensors")
    return str(d)


@pytest.mark.parametrize("model_type", ["gemma", "phi3", "glm4_moe"])
def test_unsupported_architectures_refused_by_name(tmp_path, model_type):
    d = with_config(tmp_path, "llama", model_type=model_type)
    with pytest.raises(gsink.UnsupportedError, match="model_type '%s' is not supported" % model_type):
        gsink.Model.load(d)


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope", "su-perscaled"])
def test_unknown_rope_type_refused_by_name(tmp_path, rope_type):
    d = with_config(tmp_path, "llama31", rope_scaling=dict(rope_type=rope_type, factor=2.0))
    with pytest.raises(gsink.UnsupportedError, match="rope_type '%s' is not supported" % rope_type):
        gsink.Model.load(d)


def test_saved_architecture_round_trips(tmp_path):
    """gsink_model_save writes model_type, rope_scaling and the biases; the
    saved directory loads back into the same model."""
    for arch in ("llama31", "qwen2", "qwen3", "glm", "glm4"):
        _, ref, got = run(arch, "cpu")
        with gsink.Model.load(os.path.join(DATA, arch)) as m:
            out = str(tmp_path / ("saved-" + arch))
            m.save(out)
            saved = json.load(open(os.path.join(out, "config.json")))
            assert saved["model_type"] == ARCHS[arch][0]
            with gsink.Model.load(out) as m2:
                assert m2.config.to_dict() == m.config.to_dict()
                assert m2.param_names() == m.param_names()
                toks = np.load(os.path.join(DATA, arch, "tokens.npy"))
                m2.forward(np.ascontiguousarray(toks[:, :-1]))
                assert rel(m2.logits(), ref["logits"]) < 1e-5


def safetensors_names(path):
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return sorted(k for k in json.loads(f.read(n)) if k != "__metadata__")


@pytest.mark.parametrize("arch", ["qwen3", "glm", "glm4"])
def test_saved_checkpoint_has_hf_names_and_keys(tmp_path, arch):
    """gsink_model_save writes the tensors under the names of HF's file (GLM's
    fused mlp.gate_up_proj, q_norm / k_norm, the post norms) and the
    config.json keys that select the same model (partial_rotary_factor)."""
    with gsink.Model.load(os.path.join(DATA, arch)) as m:
        out = str(tmp_path / arch)
        m.save(out)
    assert safetensors_names(os.path.join(out, "model.safetensors")) == \
        safetensors_names(os.path.join(DATA, arch, "model.safetensors"))
    saved = json.load(open(os.path.join(out, "config.json")))
    src = json.load(open(os.path.join(DATA, arch, "config.json")))
    for k in ("model_type", "head_dim", "attention_bias", "partial_rotary_factor"):
        if k in src:
            assert saved[k] == src[k], k


def test_partial_rotary_and_attention_bias_keys(tmp_path):
    """partial_rotary_factor sets the rotated dims (HF: int(head_dim * factor));
    GLM's attention_bias key switches the q/k/v biases."""
    with gsink.Model.load(with_config(tmp_path, "glm", partial_rotary_factor=0.25)) as m:
        assert m.config.rope_dims == 4 and m.config.rope_interleaved
    d = tmp_path / "full"
    d.mkdir()
    with gsink.Model.load(with_config(d, "glm", partial_rotary_factor=1.0)) as m:
        assert m.config.rope_dims == 0  # the whole head
    d = tmp_path / "nobias"
    d.mkdir()
    with gsink.Model.load(with_config(d, "glm", attention_bias=False)) as m:
        assert not m.config.qkv_bias  # (the loader skips the file's bias tensors)
        assert "model.layers.0.self_attn.q_proj.bias" not in m.param_names()
    d = tmp_path / "llama"
    d.mkdir()
    with pytest.raises(gsink.UnsupportedError, match="partial_rotary_factor 0.5 is not supported for llama"):
        gsink.Model.load(with_config(d, "llama", partial_rotary_factor=0.5))
    d = tmp_path / "odd"
    d.mkdir()
    with pytest.raises(gsink.UnsupportedError, match="rotated dims"):
        gsink.Model.load(with_config(d, "glm", partial_rotary_factor=0.1875))  # 16 * 0.1875 = 3

    with gsink.Model.load(os.path.join(DATA, "qwen2")) as m:
        names = m.param_names()
        for l in range(m.config.n_layers):
            for p in "qkv":
                assert "model.layers.%d.self_attn.%s_proj.bias" % (l, p) in names
        assert "lm_head.weight" not in names  # tied
        b = m.get_param("model.layers.0.self_attn.q_proj.bias")
        assert b.shape == (m.config.n_heads * m.config.d_head,) and np.any(b != 0)


def test_cli_info_prints_architecture_and_flags():
    cli = os.environ.get("GSINK_CLI")
    if not cli:
        pytest.skip("GSINK_CLI not set (run through meson)")
    import subprocess
    for arch, (name, rope, bias) in ARCHS.items():
        p = subprocess.run([cli, "info", os.path.join(DATA, arch)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert "architecture: %s\n" % name in p.stdout, p.stdout
        assert "qkv_bias=%d" % bias in p.stdout and "rope_scaling=%s" % rope in p.stdout, p.stdout
        assert "qk_norm=%d" % (name == "qwen3") in p.stdout, p.stdout
        assert "sandwich_norm=%d" % (name == "glm4") in p.stdout, p.stdout
        glm = name in ("glm", "glm4")
        assert ("rotary_dims=8/16 pairs=interleaved" if glm else "pairs=halves") in p.stdout, p.stdout
    p = subprocess.run([cli, "info", os.path.join(DATA, "nonexistent")], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("vscale", ["off", "full", "backward_only"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_analysis_backward_bitwise(arch, vscale, device):
    # GSINK_MODEL_ANALYSIS (activation gradients only): no parameter-gradient
    # buffer, and every site gradient and gradient diagnostic bitwise equal to
    # those of a normal model on the same input
    d = os.path.join(DATA, arch)
    toks = np.load(os.path.join(d, "tokens.npy"))
    inp, tgt = np.ascontiguousarray(toks[:, :-1]), np.ascontiguousarray(toks[:, 1:])
    full = gsink.Model.load(d, n_threads=2, device=device)
    ana = gsink.Model.load(d, n_threads=2, device=device, analysis=True)
    pbytes = 4 * sum(int(np.prod(s)) for _, s in full.param_info())
    assert full.memory()[0] - ana.memory()[0] == pbytes
    losses = []
    for m in (full, ana):
        if vscale != "off":
            m.vscale_enable(vscale)
        losses.append(m.forward(inp, tgt))
        m.backward()
    assert losses[0] == losses[1]
    assert ana.report_json() == full.report_json()
    L = full.config.n_layers
    for site in gsink.Site:
        for l in range(L):
            np.testing.assert_array_equal(ana.gradient(site, l), full.gradient(site, l))
    for l in range(L):
        sa, sf = ana.qkv_gradient_split(l), full.qkv_gradient_split(l)
        assert sa.keys() == sf.keys()
        for k in sf:
            np.testing.assert_array_equal(sa[k], sf[k])
        assert ana.gradient_sink_ratio(l, s=0, t_e=31) == full.gradient_sink_ratio(l, s=0, t_e=31)
    # what needs parameter gradients is refused by name; the model stays usable
    name = full.param_info()[0][0]
    with pytest.raises(gsink.UnsupportedError, match="GSINK_MODEL_ANALYSIS"):
        ana.get_param_grad(name)
    with pytest.raises(gsink.UnsupportedError, match="GSINK_MODEL_ANALYSIS"):
        ana.zero_grad()
    with pytest.raises(gsink.UnsupportedError, match="GSINK_MODEL_ANALYSIS"):
        ana.backward(accumulate=True)
    with pytest.raises(gsink.UnsupportedError, match="GSINK_MODEL_ANALYSIS"):
        gsink.Optimizer(ana)
    if vscale == "full":
        with pytest.raises(gsink.UnsupportedError, match="GSINK_MODEL_ANALYSIS"):
            ana.theta_grad()
    ana.forward(inp, tgt)
    ana.backward()
    np.testing.assert_array_equal(ana.gradient("resid_in", 0), full.gradient("resid_in", 0))
