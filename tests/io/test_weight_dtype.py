"""Weights stored as bf16 / fp16 (gsink_model_options.weight_dtype) against
independent references: torch's rounding (.to(torch.bfloat16), .half()),
safetensors files written by torch (bit-exact loads, saves HF opens), GGUF
Q8_0 dequantised then rounded, the float64 PyTorch reference model with
bf16-rounded weights, peak RSS of a bf16 load, and AdamW with fp32 master
weights against a numpy reference step by step."""

import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

import gsink  # noqa: E402
from gsink.errors import GsinkError  # noqa: E402

torch = pytest.importorskip("torch")
import ggufw  # noqa: E402
import torch_llama  # noqa: E402
from test_io import SMALL, random_params, write_hf_dir, write_quant_gguf, CFG  # noqa: E402

TORCH_DT = {"bf16": torch.bfloat16, "fp16": torch.float16}


def rounded(x, wd):
    """x rounded by torch to the storage type, back as float32."""
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(TORCH_DT[wd]).float().numpy()


def small_cfg():
    return gsink.Config(vocab_size=53, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, d_head=8,
                        d_ff=80, max_seq_len=64, tie_embeddings=0)


@pytest.mark.parametrize("wd", ["bf16", "fp16"])
def test_set_param_rounds_like_torch(wd):
    m = gsink.Model(small_cfg(), n_threads=1, weight_dtype=wd)
    name = "model.layers.0.mlp.up_proj.weight"
    n = 80 * 48
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-9, 6, n)).astype(np.float32)
    f32 = np.finfo(np.float32)
    edges = np.array([0.0, -0.0, 1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, 1 + 3 * 2 ** -11,
                      65504.0, 65519.0, 65520.0, -65520.0, 1e5, f32.max, -f32.max, np.inf, -np.inf,
                      np.nan, -np.nan, 2 ** -14, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 1e-30, f32.tiny,
                      f32.smallest_subnormal, 3.3895314e38, 2 ** -15 * (1 + 0x7fe000 / 2 ** 23)],
                     dtype=np.float32)
    x[:len(edges)] = edges
    # every bf16 tie pattern near 1 and 1000
    x[100:164] = (np.uint32(0x3f808000) + (np.arange(64, dtype=np.uint32) << 16)).view(np.float32)
    x[200:264] = (np.uint32(0x447a1000) + (np.arange(64, dtype=np.uint32) << 13)).view(np.float32)
    m.set_param(name, x.reshape(80, 48))
    got = m.get_param(name).ravel()
    want = rounded(x, wd)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    # a vector parameter stays fp32
    g = rng.standard_normal(48).astype(np.float32)
    m.set_param("model.norm.weight", g)
    assert np.array_equal(m.get_param("model.norm.weight"), g)


def test_unknown_weight_dtype():
    with pytest.raises(ValueError):
        gsink.Model(small_cfg(), weight_dtype="fp8")
    with pytest.raises(GsinkError) as e:
        gsink.Model(small_cfg(), weight_dtype=5)
    assert isinstance(e.value, gsink.errors.InvalidArgumentError)
    assert "weight_dtype 5" in str(e.value)


def test_bf16_safetensors_loads_bit_exact_and_saves_bf16(tmp_path):
    from safetensors.torch import load_file
    cfg = dict(SMALL)
    p = random_params(cfg, seed=5, std=0.1)
    d = str(tmp_path / "hf")
    loaded = write_hf_dir(d, cfg, p, dtype="bfloat16", shards=2)
    files = {}
    for fn in os.listdir(d):
        if fn.endswith(".safetensors"):
            files.update(load_file(os.path.join(d, fn)))
    m = gsink.Model.load(d, n_threads=1, weight_dtype="bf16")
    f = gsink.Model.load(d, n_threads=1)  # fp32 storage, the same values
    for k, v in loaded.items():
        assert np.array_equal(m.get_param(k), v), k
        assert np.array_equal(f.get_param(k), v), k
    # the same weights, half the bytes
    bm, _ = m.memory()
    bf, _ = f.memory()
    mat = sum(v.size for v in loaded.values() if v.ndim == 2)
    assert bf - bm >= 2 * mat - 64 * len(loaded)

    rng = np.random.default_rng(1)
    tokens = rng.integers(0, cfg["vocab_size"], size=(2, 16)).astype(np.int32)
    targets = rng.integers(0, cfg["vocab_size"], size=(2, 16)).astype(np.int32)
    loss = m.forward(tokens, targets)
    m.backward()
    lf = f.forward(tokens, targets)
    f.backward()
    assert abs(loss - lf) <= 1e-6 * abs(lf)
    np.testing.assert_allclose(m.logits(), f.logits(), rtol=1e-6, atol=1e-7)
    # float64 PyTorch with the bf16 weights
    ref = torch_llama.TorchLlama(cfg, loaded).run(tokens, targets)
    np.testing.assert_allclose(m.logits(), ref["logits"], rtol=1e-4, atol=1e-5)
    assert abs(loss - ref["loss"]) < 1e-5
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
                 "model.layers.0.mlp.down_proj.weight"):
        np.testing.assert_allclose(m.get_param_grad(name), ref["grads"][name], rtol=1e-3, atol=1e-6)

    # saved in bf16: the file's tensors are the source's, bit for bit
    out = str(tmp_path / "saved")
    m.save(out)
    saved = load_file(os.path.join(out, "model.safetensors"))
    for k, t in files.items():
        if t.dim() == 2:
            assert saved[k].dtype == torch.bfloat16, k
            assert torch.equal(saved[k].view(torch.int16), t.view(torch.int16)), k
        else:  # norm gains are stored (and saved) in fp32
            assert saved[k].dtype == torch.float32, k
            assert torch.equal(saved[k], t.float()), k
    import json
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["torch_dtype"] == "bfloat16"


def test_other_sources_round_into_storage(tmp_path):
    cfg = dict(SMALL)
    p = random_params(cfg, seed=6, std=0.1)
    d32 = str(tmp_path / "f32")
    l32 = write_hf_dir(d32, cfg, p, dtype="float32")
    d16 = str(tmp_path / "f16")
    l16 = write_hf_dir(d16, cfg, p, dtype="float16")
    for wd in ("bf16", "fp16"):
        m = gsink.Model.load(d32, n_threads=1, weight_dtype=wd)
        for k, v in l32.items():
            want = rounded(v, wd) if v.ndim == 2 else v
            assert np.array_equal(m.get_param(k), want), (wd, k)
    m = gsink.Model.load(d16, n_threads=1, weight_dtype="fp16")
    for k, v in l16.items():
        assert np.array_equal(m.get_param(k), v), k
    m = gsink.Model.load(d16, n_threads=1, weight_dtype="bf16")
    for k, v in l16.items():
        want = rounded(v, "bf16") if v.ndim == 2 else v
        assert np.array_equal(m.get_param(k), want), k
    with pytest.raises(GsinkError) as e:
        gsink.Model.load(d16, n_threads=1, weight_dtype=9)
    assert "weight_dtype 9" in str(e.value)


@pytest.mark.parametrize("qname", ["Q8_0", "Q4_K"])
def test_gguf_quantised_into_bf16(tmp_path, qname):
    """d_ff 4608 and vocab 4200: the MLP matrices and the embedding (1.1-1.2 M
    elements) are dequantised in chunks of whole rows, each rounding into bf16
    storage; the embedding comes first, before any permuted q/k tensor (which
    uses the whole-tensor buffers)."""
    from gguf import GGMLQuantizationType, quants
    cfg = dict(CFG, d_ff=4608, vocab_size=4200)
    path = str(tmp_path / "q.gguf")
    raw = write_quant_gguf(path, cfg, getattr(ggufw, qname))
    f = gsink.Model.load(path, n_threads=1)
    m = gsink.Model.load(path, n_threads=1, weight_dtype="bf16")
    for k in f.param_names():
        a = f.get_param(k)
        want = rounded(a, "bf16") if a.ndim == 2 else a
        assert np.array_equal(m.get_param(k), want), k
    for k in ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
              "model.embed_tokens.weight"):
        data, s, tt = raw[k]
        be, bb = ggufw.BLOCK[tt]
        arr = np.frombuffer(data, dtype=np.uint8).reshape(s[0], s[1] // be * bb)
        ref = quants.dequantize(arr, GGMLQuantizationType(tt)).astype(np.float32).reshape(s)
        np.testing.assert_allclose(f.get_param(k), ref, rtol=2e-6, atol=1e-7, err_msg=k)
        assert np.array_equal(m.get_param(k), rounded(ref, "bf16")) or \
            np.abs(m.get_param(k) - rounded(ref, "bf16")).max() <= 2 ** -7 * np.abs(ref).max(), k


# VmHWM, not ru_maxrss: the latter carries the forking parent's peak across exec.
PEAK = r"""
import sys
import gsink
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
before = hwm()
m = gsink.Model.load(sys.argv[1], n_threads=1, analysis=True, weight_dtype=sys.argv[2])
print(hwm() - before, m.memory()[0])
"""


def test_bf16_load_peak_rss(tmp_path):
    """A bf16 checkpoint into bf16 storage: the peak is the storage plus the
    mapped file, with no fp32 copy of a tensor (the embedding alone is 16 MiB
    in fp32) or of the model."""
    cfg = dict(vocab_size=8192, d_model=512, n_layers=4, n_heads=8, n_kv_heads=8, d_head=64,
               d_ff=1536, max_seq_len=64, rms_eps=1e-5, rope_theta=10000.0, tie_embeddings=0)
    rng = np.random.default_rng(0)
    from safetensors.torch import save_file
    import json
    d = str(tmp_path / "big")
    os.makedirs(d)
    from test_io import shapes
    ts = {k: (torch.randn(s) * 0.02).to(torch.bfloat16) if len(s) == 2 else torch.ones(s, dtype=torch.bfloat16)
          for k, s in shapes(cfg).items()}
    save_file(ts, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "vocab_size": cfg["vocab_size"], "hidden_size": 512, "intermediate_size": 1536,
                   "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
                   "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                   "tie_word_embeddings": False, "torch_dtype": "bfloat16"}, fh)
    del rng
    file_kib = os.path.getsize(os.path.join(d, "model.safetensors")) / 1024
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = {}
    for wd in ("bf16", "fp32"):
        r = subprocess.run([sys.executable, "-c", PEAK, d, wd], capture_output=True, text=True, timeout=300,
                           env=env)
        assert r.returncode == 0, r.stderr
        peak_kib, mem = (int(x) for x in r.stdout.split())
        res[wd] = (peak_kib, mem / 1024)
    print("peak RSS KiB (bf16, fp32):", res["bf16"][0], res["fp32"][0], "file KiB", file_kib)
    # storage: half of fp32's
    assert res["bf16"][1] < 0.55 * res["fp32"][1]
    # bf16: storage + file pages + small chunks, never an fp32 tensor (16 MiB) on top
    assert res["bf16"][0] < res["bf16"][1] + file_kib + 12 * 1024, res
    assert res["bf16"][0] < res["fp32"][0] - 0.4 * res["fp32"][1], res


# ---- training: fp32 masters against numpy ------------------------------------

def adamw_ref(p, g, m, v, lr, b1, b2, eps, wd, t):
    """The library's AdamW (lib/cpu/backend_cpu.c cpu_adamw) in float32."""
    f = np.float32
    bc1, bc2 = f(1 - b1 ** t), f(1 - b2 ** t)
    p = p - f(lr) * f(wd) * p
    m[:] = f(b1) * m + (f(1) - f(b1)) * g
    v[:] = f(b2) * v + (f(1) - f(b2)) * g * g
    denom = np.sqrt(v) / np.sqrt(bc2) + f(eps)
    return (p - (f(lr) / bc1) * m / denom).astype(np.float32)


@pytest.mark.parametrize("wd", ["bf16", "fp16"])
def test_adamw_fp32_masters_match_numpy(tmp_path, wd):
    cfg = small_cfg()
    m = gsink.Model(cfg, seed=3, n_threads=1, weight_dtype=wd)
    opts = dict(lr=3e-3, min_lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=0.0)
    opt = gsink.Optimizer(m, **opts)
    names = m.param_names()
    master = {k: m.get_param(k).astype(np.float32) for k in names}
    mom = {k: np.zeros_like(v) for k, v in master.items()}
    vel = {k: np.zeros_like(v) for k, v in master.items()}
    rng = np.random.default_rng(2)
    off = 0
    for step in range(1, 6):
        tokens = rng.integers(0, 53, size=(2, 12)).astype(np.int32)
        targets = rng.integers(0, 53, size=(2, 12)).astype(np.int32)
        m.forward(tokens, targets)
        m.backward()
        grads = {k: m.get_param_grad(k) for k in names}
        opt.step()
        for k in names:
            decay = opts["weight_decay"] if master[k].ndim == 2 else 0.0
            master[k] = adamw_ref(master[k], grads[k], mom[k], vel[k], opts["lr"], opts["beta1"],
                                  opts["beta2"], opts["eps"], decay, step)
            got = m.get_param(k)
            if master[k].ndim == 2:
                want = rounded(master[k], wd)
                ulp = (np.abs(want) * 2.0 ** -7 if wd == "bf16"
                       else np.maximum(np.abs(want) * 2.0 ** -10, 2.0 ** -24))  # fp16 subnormals
                diff = np.abs(got - want)
                # float32 operation order may differ by an ulp of the master,
                # which moves a rounding boundary once in a long while
                assert np.all(diff <= ulp * 1.01), (k, step, diff.max())
                off += int(np.count_nonzero(diff))
                # the storage is not the master: the masters carry the low bits
                assert not np.array_equal(got, master[k])
            else:
                np.testing.assert_allclose(got, master[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert off < 0.002 * sum(v.size for v in master.values()) * 5


CLI = os.environ.get("GSINK_CLI")


@pytest.mark.skipif(not CLI, reason="GSINK_CLI not set")
def test_cli_weights_option(tmp_path):
    """gsink-cli analyze --weights bf16: the report of an fp32 model with the
    same (rounded) weights, read back from a bf16 checkpoint."""
    import json
    cfg = dict(SMALL)
    p = random_params(cfg, seed=9, std=0.1)
    d = str(tmp_path / "hf")
    write_hf_dir(d, cfg, p, dtype="bfloat16")
    reps = {}
    for wd in ("bf16", "fp32"):
        out = str(tmp_path / ("r_%s.json" % wd))
        r = subprocess.run([CLI, "analyze", "--model", d, "--seq", "16", "--threads", "1", "--weights", wd,
                            "--json", out], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        with open(out) as fh:
            reps[wd] = json.load(fh)
    def close(a, b, path):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), path
            for k in a:
                close(a[k], b[k], path + "." + k)
        elif isinstance(a, list):
            assert len(a) == len(b), path
            for i, (x, y) in enumerate(zip(a, b)):
                close(x, y, "%s[%d]" % (path, i))
        elif isinstance(a, float) and isinstance(b, float):
            assert abs(a - b) <= 1e-5 * max(abs(a), abs(b)) + 1e-7, (path, a, b)
        else:
            assert a == b, (path, a, b)
    close(reps["bf16"], reps["fp32"], "report")
    r = subprocess.run([CLI, "analyze", "--preset", "tiny", "--weights", "fp8"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--weights expects fp32, bf16 or fp16" in r.stderr, r.stderr
