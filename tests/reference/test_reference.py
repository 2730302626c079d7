"""Reference tests: libgsink (through the Python binding) against an independent
PyTorch float64 implementation (torch_llama.py).

For several random configurations (MHA and GQA, tied and untied embeddings,
T in {1, 7, 64, 256}, batch 1 and 3) the logits, the loss, every parameter
gradient, and the activation and gradient at every site of every layer must
agree to a norm-wise relative error ||a - b|| / ||b|| below 1e-4. The worst
errors are printed. torch is imported unconditionally: without torch this
suite fails instead of being skipped.
"""

import os
import sys

import numpy as np
import pytest
import torch  # noqa: F401  (a missing torch must fail the suite, not skip it)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gsink  # noqa: E402
from torch_llama import SITES, TorchLlama, VScaleBackwardOnly, vscale_full  # noqa: E402

TOL = 1e-4

CONFIGS = {
    "mha_tied": dict(vocab_size=67, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_head=8,
                     d_ff=40, max_seq_len=256, tie_embeddings=1, init_std=0.1),
    # H*d_head (36) != d_model (24): catches transposed projections.
    "gqa_untied": dict(vocab_size=59, d_model=24, n_layers=3, n_heads=6, n_kv_heads=2, d_head=6,
                       d_ff=36, max_seq_len=256, tie_embeddings=0, init_std=0.1),
    "gqa_tied": dict(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8,
                     d_ff=48, max_seq_len=256, tie_embeddings=1, init_std=0.08,
                     rope_theta=500.0, rms_eps=1e-6),
    "mha_untied": dict(vocab_size=40, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, d_head=8,
                       d_ff=24, max_seq_len=256, tie_embeddings=0, init_std=0.2),
}

CASES = [
    ("mha_tied", 1, 1), ("mha_tied", 3, 7), ("mha_tied", 1, 256),
    ("gqa_untied", 1, 1), ("gqa_untied", 3, 64), ("gqa_untied", 1, 256),
    ("gqa_tied", 3, 7), ("gqa_tied", 3, 256),
    ("mha_untied", 3, 64), ("mha_untied", 1, 7),
]


def rel_err(a, b):
    """||a - b|| / ||b|| in float64; the absolute ||a|| when b is exactly 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, "shape %s vs reference %s" % (a.shape, b.shape)
    nb = np.linalg.norm(b)
    if nb == 0.0:
        return float(np.linalg.norm(a))
    return float(np.linalg.norm(a - b) / nb)


def make_model(cfg_name, seed=0, **overrides):
    cfg = dict(CONFIGS[cfg_name])
    cfg.update(overrides)
    # one thread: tiny models gain nothing from more, and a shared machine
    # makes OpenMP barriers of several threads very slow
    model = gsink.Model(gsink.Config(**cfg), seed=seed, n_threads=1)
    return model, model.config.to_dict()  # float fields as the library stores them


def random_batch(rng, vocab, B, T, ignore_frac=0.15):
    tokens = rng.integers(0, vocab, size=(B, T), dtype=np.int32)
    targets = rng.integers(0, vocab, size=(B, T), dtype=np.int32)
    drop = rng.random((B, T)) < ignore_frac
    drop.flat[0] = False  # at least one target
    targets[drop] = -1 - rng.integers(0, 5, size=int(drop.sum()))  # any negative is ignored
    return tokens, targets


def torch_params(model):
    return {n: model.get_param(n) for n, _ in model.param_info()}


def theta_name(l):
    return "model.layers.%d.self_attn.v_scale_theta" % l


def compare(model, ref, n_layers, label, with_sites=True):
    """Compares the library's last forward/backward with a torch result dict;
    returns {category: (worst error, where)} and asserts every error < TOL."""
    errs = []  # (category, name, error)
    errs.append(("logits", "logits", rel_err(model.logits(), ref["logits"])))
    errs.append(("loss", "loss", abs(model._last_loss - ref["loss"]) / abs(ref["loss"])))
    for name, _ in model.param_info():
        g = model.get_param_grad(name)
        if name.endswith("v_scale_theta"):
            l = int(name.split(".")[2])
            policy = ref.get("dtheta_policy", "compare")
            if policy == "skip":
                continue
            if policy == "zero":
                # backward-only: theta is frozen and the library reports no gradient
                errs.append(("param_grad", name, float(np.abs(g).max())))
                continue
            want = ref["dtheta"][l]
        else:
            want = ref["grads"][name]
        errs.append(("param_grad", name, rel_err(g, want)))
    if ref["dtheta"] is not None and ref.get("dtheta_policy", "compare") == "compare":
        errs.append(("dtheta", "theta_grad", rel_err(model.theta_grad(), ref["dtheta"])))
    if with_sites:
        for l in range(n_layers):
            for s in SITES:
                errs.append(("site_act", "L%d.%s" % (l, s),
                             rel_err(model.activation(s, l), ref["acts"][(l, s)])))
                errs.append(("site_grad", "L%d.%s" % (l, s),
                             rel_err(model.gradient(s, l), ref["site_grads"][(l, s)])))
    worst = {}
    for cat, name, e in errs:
        if cat not in worst or e > worst[cat][0]:
            worst[cat] = (e, name)
    print("\n[%s] max rel err: %s" % (label, ", ".join(
        "%s %.2e (%s)" % (c, e, n) for c, (e, n) in worst.items())))
    bad = [(c, n, e) for c, n, e in errs if not e < TOL]
    assert not bad, "[%s] %d quantities above %.0e, worst: %s" % (
        label, len(bad), TOL, sorted(bad, key=lambda x: -x[2])[:12])
    return worst


def run_lib(model, tokens, targets, accumulate=False):
    loss = model.forward(tokens, targets)
    model._last_loss = loss
    model.backward(accumulate=accumulate)
    return loss


@pytest.mark.parametrize("cfg_name,B,T", CASES, ids=["%s-B%d-T%d" % c for c in CASES])
def test_forward_backward_matches_torch(cfg_name, B, T):
    model, cfg = make_model(cfg_name, seed=B * 1000 + T)
    with model:
        rng = np.random.default_rng(B * 7919 + T)
        tokens, targets = random_batch(rng, cfg["vocab_size"], B, T)
        run_lib(model, tokens, targets)
        ref = TorchLlama(cfg, torch_params(model)).run(tokens, targets)
        compare(model, ref, cfg["n_layers"], "%s B%d T%d" % (cfg_name, B, T))


# Architecture variants (the architecture table's optional steps and RoPE
# scalings): HF semantics re-derived in torch_llama.py. Positions up to 64 with
# small original contexts so that every branch of llama3 / yarn is exercised.
ARCH_VARIANTS = {
    "qwen2_bias": dict(arch="qwen2", qkv_bias=True, rope_theta=1e6),
    "llama3": dict(rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
                   rope_high_freq_factor=4.0, rope_original_max_pos=32, rope_theta=5e5),
    # theta 100, d_head 6 or 8: wavelengths 6.3 ... 200 put frequencies in llama3's medium band
    "llama3_medium": dict(rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
                          rope_high_freq_factor=16.0, rope_original_max_pos=64, rope_theta=100.0),
    "linear": dict(rope_scaling="linear", rope_factor=3.0),
    # theta 100: yarn's correction range covers several frequencies (a real ramp)
    "yarn": dict(rope_scaling="yarn", rope_factor=4.0, rope_original_max_pos=256, rope_theta=100.0),
    "yarn_untruncated_af": dict(rope_scaling="yarn", rope_factor=2.5, rope_original_max_pos=200,
                                rope_beta_fast=16.0, rope_beta_slow=2.0, rope_truncate=False,
                                rope_attention_factor=1.3, rope_theta=100.0),
    "qwen2_bias_llama3": dict(arch="qwen2", qkv_bias=True, rope_scaling="llama3", rope_factor=4.0,
                              rope_low_freq_factor=1.0, rope_high_freq_factor=2.0,
                              rope_original_max_pos=16),
    # Qwen3 / GLM / GLM-4-0414 steps. rope_dims 4 of d_head 6 or 8: partial rotary
    # (GLM's partial_rotary_factor), interleaved pairs (2i, 2i+1)
    "qwen3_qk_norm": dict(arch="qwen3", qk_norm=True, rope_theta=1e6),
    "glm": dict(arch="glm", qkv_bias=True, rope_dims=4, rope_interleaved=True),
    "glm4": dict(arch="glm4", qkv_bias=True, rope_dims=4, rope_interleaved=True, sandwich_norm=True),
    # the extended RoPE op off its HF rows: partial rotate_half with llama3 scaling,
    # interleaved over the whole head, every optional step at once
    "partial_halves_llama3": dict(rope_dims=4, rope_scaling="llama3", rope_factor=4.0,
                                  rope_low_freq_factor=1.0, rope_high_freq_factor=2.0,
                                  rope_original_max_pos=16),
    "interleaved_full": dict(rope_interleaved=True),
    "all_steps": dict(arch="glm4", qkv_bias=True, qk_norm=True, rope_dims=2, rope_interleaved=True,
                      sandwich_norm=True),
}

# Norm gains of the optional steps (ones at creation, as in HF): randomized so
# that a misplaced gain shows.
STEP_NORMS = (".q_norm.weight", ".k_norm.weight", ".post_self_attn_layernorm.weight",
              ".post_mlp_layernorm.weight")


def randomize_biases(model, rng, scale=0.3):
    for name, shape in model.param_info():
        if name.endswith(".bias"):
            model.set_param(name, (scale * rng.standard_normal(shape)).astype(np.float32))
        elif name.endswith(STEP_NORMS):
            model.set_param(name, (1.0 + scale * rng.standard_normal(shape)).astype(np.float32))


@pytest.mark.parametrize("variant", sorted(ARCH_VARIANTS))
@pytest.mark.parametrize("cfg_name,B,T", [("gqa_untied", 3, 64), ("mha_tied", 1, 7)])
def test_architecture_variants_match_torch(variant, cfg_name, B, T):
    model, cfg = make_model(cfg_name, seed=11 + T, **ARCH_VARIANTS[variant])
    with model:
        for k, v in ARCH_VARIANTS[variant].items():
            assert cfg[k] == (pytest.approx(v) if isinstance(v, float) else v), k
        rng = np.random.default_rng(T)
        randomize_biases(model, rng)
        tokens, targets = random_batch(rng, cfg["vocab_size"], B, T)
        run_lib(model, tokens, targets)
        ref = TorchLlama(cfg, torch_params(model)).run(tokens, targets)
        compare(model, ref, cfg["n_layers"], "%s %s B%d T%d" % (variant, cfg_name, B, T))


@pytest.mark.parametrize("variant", ["qwen3_qk_norm", "glm", "glm4", "all_steps", "qwen2_bias"])
@pytest.mark.parametrize("agg", ["sum_then_norm", "per_sequence"])
def test_qkv_gradient_split_matches_torch(variant, agg):
    """The Q/K/V split of dL/dh~ through the optional steps: g_q = (dL/d q_proj) W_Q
    with q_proj the projection output (q_norm and partial/interleaved RoPE undone)."""
    model, cfg = make_model("gqa_untied", seed=5, **ARCH_VARIANTS[variant])
    with model:
        rng = np.random.default_rng(5)
        randomize_biases(model, rng)
        tokens, targets = random_batch(rng, cfg["vocab_size"], 3, 20)
        run_lib(model, tokens, targets)
        ref = TorchLlama(cfg, torch_params(model)).run(tokens, targets)
        worst = 0.0
        for l in range(cfg["n_layers"]):
            pre = "model.layers.%d.self_attn." % l
            w = {p: model.get_param(pre + p + "_proj.weight").astype(np.float64) for p in "qkv"}
            parts = {"q": ref["extra_grads"][(l, "q_proj")] @ w["q"],
                     "k": ref["extra_grads"][(l, "k_proj")] @ w["k"],
                     "v": ref["site_grads"][(l, "v")] @ w["v"]}
            total = parts["q"] + parts["k"] + parts["v"]
            assert rel_err(total, ref["site_grads"][(l, "attn_norm_out")]) < 1e-10  # the split is exact
            got = model.qkv_gradient_split(l, agg=agg)
            for p in "qkv":
                g = parts[p]
                want = (np.linalg.norm(g.sum(0), axis=-1) if agg == "sum_then_norm"
                        else np.linalg.norm(g, axis=-1).mean(0))
                e = rel_err(got[p], want)
                worst = max(worst, e)
                assert e < TOL, (l, p, e)
        print("\n[Q/K/V split %s %s] worst rel err %.2e" % (variant, agg, worst))


def test_rope_scaling_changes_the_model():
    """Negative control: the scaled frequencies are used (a llama3 model differs
    from plain RoPE at long positions), and the torch reference agrees."""
    a, cfg = make_model("gqa_untied", seed=4)
    b, cfg_b = make_model("gqa_untied", seed=4, **ARCH_VARIANTS["llama3"])
    with a, b:
        rng = np.random.default_rng(0)
        tokens, targets = random_batch(rng, cfg["vocab_size"], 1, 64)
        for n, _ in a.param_info():
            b.set_param(n, a.get_param(n))
        a.forward(tokens, targets)
        b.forward(tokens, targets)
        assert rel_err(a.logits(), b.logits()) > 1e-3


def test_forward_without_targets_matches_torch():
    model, cfg = make_model("gqa_untied", seed=5)
    with model:
        tokens = np.random.default_rng(1).integers(0, cfg["vocab_size"], (2, 9), dtype=np.int32)
        assert model.forward(tokens) is None
        ref = TorchLlama(cfg, torch_params(model)).forward(tokens)
        e = rel_err(model.logits(), ref["logits"].detach().numpy())
        print("\n[no targets] logits rel err %.2e" % e)
        assert e < TOL
        for l in range(cfg["n_layers"]):
            for s in SITES:
                e = rel_err(model.activation(s, l), ref["sites"][(l, s)].detach().numpy())
                assert e < TOL, (l, s, e)


VSCALE_CASES = [
    # (config, mode, per_query_head, learnable, sigma)
    ("gqa_untied", "full", False, True, 0.1),
    ("gqa_untied", "full", True, True, 0.1),
    ("gqa_untied", "backward_only", False, False, 0.1),
    ("gqa_untied", "backward_only", True, False, 0.1),
    ("mha_tied", "full", False, True, 0.05),
    ("mha_tied", "full", False, False, 0.05),
    ("gqa_tied", "full", False, True, 0.02),
]


@pytest.mark.parametrize("cfg_name,mode,pqh,learnable,sigma", VSCALE_CASES,
                         ids=["%s-%s-%s-%s" % (c[0], c[1], "pqh" if c[2] else "kv",
                                               "learn" if c[3] else "frozen")
                              for c in VSCALE_CASES])
def test_vscale_matches_torch(cfg_name, mode, pqh, learnable, sigma, arch=None):
    model, cfg = make_model(cfg_name, seed=11, **(ARCH_VARIANTS[arch] if arch else {}))
    with model:
        randomize_biases(model, np.random.default_rng(2))
        model.vscale_enable(mode, sigma=sigma, learnable_theta=learnable, per_query_head=pqh)
        n_scale = cfg["n_heads"] if pqh else cfg["n_kv_heads"]
        assert model.theta.shape == (cfg["n_layers"], n_scale)
        rng = np.random.default_rng(3)
        theta = rng.uniform(-1.0, 1.0, size=(cfg["n_layers"], n_scale)).astype(np.float32)
        model.theta = theta
        np.testing.assert_array_equal(model.theta, theta)
        tokens, targets = random_batch(rng, cfg["vocab_size"], 2, 33)
        run_lib(model, tokens, targets)
        vs = {"mode": mode, "sigma": sigma, "per_query_head": pqh, "learnable": learnable,
              "theta": theta}
        params = {n: model.get_param(n) for n, _ in model.param_info()
                  if not n.endswith("v_scale_theta")}
        ref = TorchLlama(cfg, params, vscale=vs).run(tokens, targets)
        if mode == "backward_only":
            # forward must be exactly the plain model's
            plain = TorchLlama(cfg, params).forward(tokens, targets)
            assert abs(ref["loss"] - float(plain["loss"])) < 1e-12
        if mode == "backward_only":
            ref["dtheta_policy"] = "zero"
        elif not learnable:
            ref["dtheta_policy"] = "skip"  # the API does not define dtheta of a frozen theta
        compare(model, ref, cfg["n_layers"], "vscale %s %s %s %s %s" % (
            cfg_name, mode, "pqh" if pqh else "kv", "learn" if learnable else "frozen", arch or ""))
        if mode == "backward_only":
            assert not np.any(model.theta_grad()), "backward-only V-scale must not train theta"


@pytest.mark.parametrize("arch", ["qwen3_qk_norm", "glm", "glm4"])
@pytest.mark.parametrize("mode,pqh", [("full", False), ("full", True), ("backward_only", False)])
def test_vscale_on_new_architectures_matches_torch(arch, mode, pqh):
    """V-scale sits between the v projection (with bias) and the attention on
    every architecture."""
    test_vscale_matches_torch("gqa_untied", mode, pqh, True, 0.05, arch=arch)


def test_gradient_accumulation_over_two_backward_calls():
    model, cfg = make_model("gqa_untied", seed=21)
    with model:
        rng = np.random.default_rng(21)
        t1, y1 = random_batch(rng, cfg["vocab_size"], 2, 17)
        t2, y2 = random_batch(rng, cfg["vocab_size"], 3, 11)
        ref_model = TorchLlama(cfg, torch_params(model))
        r1 = ref_model.run(t1, y1)
        r2 = ref_model.run(t2, y2, accumulate=True)  # torch .grad accumulates: g1 + g2

        run_lib(model, t1, y1)
        run_lib(model, t2, y2, accumulate=True)
        # parameter gradients are the sum; site quantities belong to batch 2
        compare(model, r2, cfg["n_layers"], "accumulate g1+g2")

        # without the flag, backward overwrites
        run_lib(model, t2, y2)
        r2_only = TorchLlama(cfg, torch_params(model)).run(t2, y2)
        compare(model, r2_only, cfg["n_layers"], "overwrite", with_sites=False)
        g_sum = r2["grads"]["model.layers.0.self_attn.q_proj.weight"]
        g_one = r2_only["grads"]["model.layers.0.self_attn.q_proj.weight"]
        assert rel_err(g_sum, g_one) > 1e-2  # the test distinguishes the two
        del r1

        model.zero_grad()
        for name, _ in model.param_info():
            assert not np.any(model.get_param_grad(name)), name


def _loss_at(model, tokens, targets):
    return float(model.forward(tokens, targets))


@pytest.mark.parametrize("vscale,arch", [(None, None), ("full", None), (None, "qwen2_bias_llama3"),
                                          (None, "yarn"), (None, "qwen3_qk_norm"), (None, "glm"),
                                          ("full", "glm4"), (None, "all_steps")])
def test_finite_differences_through_binding(vscale, arch):
    """Central differences of the float32 loss along directions inside single
    parameter tensors (and theta) against the analytic directional derivative;
    also for q/k/v biases and scaled RoPE (arch: an ARCH_VARIANTS entry)."""
    cfg = dict(vocab_size=23, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_head=4,
               d_ff=20, max_seq_len=16, tie_embeddings=0, init_std=0.3)
    if arch:
        cfg.update(ARCH_VARIANTS[arch])
        cfg["rope_original_max_pos"] = 8  # max_seq_len 16: long positions relative to it
        if cfg.get("rope_dims"):
            cfg["rope_dims"] = 2  # d_head 4: half of each head rotates
    with gsink.Model(gsink.Config(**cfg), seed=3, n_threads=1) as model:
        cfg = model.config.to_dict()
        randomize_biases(model, np.random.default_rng(9))
        if vscale:
            model.vscale_enable(vscale, sigma=0.1, learnable_theta=True)
            model.theta = np.full(model.theta.shape, 0.3, dtype=np.float32)
        rng = np.random.default_rng(0)
        tokens, targets = random_batch(rng, cfg["vocab_size"], 2, 9, ignore_frac=0.0)
        model.forward(tokens, targets)
        model.backward()
        names = ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                 "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.1.self_attn.v_proj.weight", "model.layers.1.self_attn.o_proj.weight",
                 "model.layers.0.post_attention_layernorm.weight",
                 "model.layers.1.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                 "model.layers.1.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"]
        if vscale:
            names += [theta_name(0), theta_name(1)]
        if cfg["qkv_bias"]:
            names += ["model.layers.0.self_attn.q_proj.bias", "model.layers.1.self_attn.k_proj.bias",
                      "model.layers.0.self_attn.v_proj.bias", "model.layers.1.self_attn.q_proj.bias"]
        if cfg["arch"] in ("glm", "glm4"):  # fused gate_up_proj replaces gate_proj / up_proj
            names = [n for n in names if ".mlp.gate_proj." not in n and ".mlp.up_proj." not in n]
            names += ["model.layers.0.mlp.gate_up_proj.weight", "model.layers.1.mlp.gate_up_proj.weight"]
        if cfg["qk_norm"]:
            names += ["model.layers.0.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight",
                      "model.layers.1.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"]
        if cfg["sandwich_norm"]:
            names += ["model.layers.0.post_self_attn_layernorm.weight", "model.layers.1.post_mlp_layernorm.weight",
                      "model.layers.1.post_self_attn_layernorm.weight", "model.layers.0.post_mlp_layernorm.weight"]
        grads = {n: model.get_param_grad(n).astype(np.float64) for n in names
                 if not n.endswith("v_scale_theta")}
        if vscale:
            tg = model.theta_grad().astype(np.float64)
            for l in range(cfg["n_layers"]):
                grads[theta_name(l)] = tg[l]
        h = 1e-2
        worst = 0.0
        def get(n):
            if n.endswith("v_scale_theta"):
                return model.theta[int(n.split(".")[2])].copy()
            return model.get_param(n)

        def put(n, value):
            if n.endswith("v_scale_theta"):
                th = model.theta
                th[int(n.split(".")[2])] = value
                model.theta = th
            else:
                model.set_param(n, value)

        for n in names:
            p0 = get(n)
            g = grads[n]
            r = rng.standard_normal(g.shape)
            u = g / np.linalg.norm(g) + 0.5 * r / np.linalg.norm(r)
            u /= np.linalg.norm(u)
            analytic = float((g * u).sum())
            def central(step):
                put(n, (p0 + step * u).astype(np.float32))
                lp = _loss_at(model, tokens, targets)
                put(n, (p0 - step * u).astype(np.float32))
                lm = _loss_at(model, tokens, targets)
                put(n, p0)
                return (lp - lm) / (2 * step)

            fd = (4 * central(h / 2) - central(h)) / 3  # Richardson: O(h^4) truncation
            err = abs(fd - analytic) / max(abs(analytic), 1e-3)
            print("  %-48s fd %+.6e analytic %+.6e rel %.1e" % (n, fd, analytic, err))
            worst = max(worst, err)
            assert err < 5e-3, "%s: finite difference %.6g vs analytic %.6g" % (n, fd, analytic)
        print("\n[finite differences, vscale=%s arch=%s] worst rel err %.2e" % (vscale, arch, worst))


@pytest.mark.parametrize("variant", [{"rope": "interleaved"}, {"gqa": "tile"}],
                         ids=["rope-interleaved", "gqa-tile"])
def test_comparison_detects_wrong_conventions(variant):
    """Negative control: a reference with a plausible but wrong convention
    must disagree with the library far above the tolerance."""
    model, cfg = make_model("gqa_untied", seed=8)
    with model:
        rng = np.random.default_rng(8)
        tokens, targets = random_batch(rng, cfg["vocab_size"], 2, 16)
        run_lib(model, tokens, targets)
        ref = TorchLlama(cfg, torch_params(model), variant=variant).run(tokens, targets)
        e = max(rel_err(model.logits(), ref["logits"]),
                rel_err(model.get_param_grad("model.layers.0.self_attn.q_proj.weight"),
                        ref["grads"]["model.layers.0.self_attn.q_proj.weight"]))
        print("\n[negative control %s] rel err %.2e" % (variant, e))
        assert e > 100 * TOL


def test_backward_only_function_is_the_full_vscale_jacobian():
    """The reference's custom autograd Function applies J^T g of full V-scale
    (J is symmetric), checked against autograd of the full map."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(5, 3, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    C = torch.rand(1, 3, 1, dtype=torch.float64, generator=gen) + 0.1
    g = torch.randn(5, 3, 8, dtype=torch.float64, generator=gen)
    (want,) = torch.autograd.grad(vscale_full(v, C), v, g)
    out = VScaleBackwardOnly.apply(v, C.expand(5, 3, 1).contiguous())
    assert torch.equal(out, v)
    (got,) = torch.autograd.grad(out, v, g)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
