"""Tests of the gsink Python binding: errors as exceptions, numpy validation,
handle lifetime, memory, version checks, and that every C function is bound."""

import ctypes
import gc
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gsink
from gsink import _lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
HEADER = os.path.join(REPO, "include", "gsink.h")

SMALL = dict(vocab_size=37, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_head=4, d_ff=24,
             max_seq_len=32)


@pytest.fixture
def model():
    with gsink.Model(gsink.Config(**SMALL), seed=1, n_threads=1) as m:
        yield m


def batch(B=2, T=20, V=SMALL["vocab_size"], seed=0):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, V, size=(B, T + 1), dtype=np.int32)
    return np.ascontiguousarray(tok[:, :-1]), np.ascontiguousarray(tok[:, 1:])


# ---------------------------------------------------------------- binding

def header_functions():
    text = open(HEADER).read()
    return sorted(set(re.findall(r"GSINK_API[^;(]*?\b(gsink_\w+)\s*\(", text)))


def test_every_public_function_is_bound():
    names = header_functions()
    assert len(names) > 60
    assert set(names) == set(_lib.PROTOTYPES), (
        "header and binding differ: only in header %s, only in binding %s"
        % (sorted(set(names) - set(_lib.PROTOTYPES)), sorted(set(_lib.PROTOTYPES) - set(names))))
    for n in names:
        assert hasattr(_lib.lib, n)
    # ... and every one has a Pythonic wrapper
    core = open(os.path.join(os.path.dirname(HERE), "gsink", "_core.py")).read()
    unwrapped = [n for n in names if n not in core and n != "gsink_version_number"]
    assert not unwrapped, unwrapped


def test_default_diag_options():
    d = gsink.default_diag_options()
    assert d["sink_eps"] == pytest.approx(0.3) and d["sink_window"] == 64
    assert d["rgs_window"] == 31 and d["sink_position"] == 0 and d["batch_agg"] == 0


STRUCTS = (("gsink_config", _lib.Config, "gsink_config_init_size"),
           ("gsink_model_options", _lib.ModelOptions, "gsink_model_options_init_size"),
           ("gsink_diag_options", _lib.DiagOptions, "gsink_diag_options_init_size"),
           ("gsink_vscale_options", _lib.VScaleOptions, "gsink_vscale_options_init_size"),
           ("gsink_optimizer_options", _lib.OptimizerOptions, "gsink_optimizer_options_init_size"),
           ("gsink_ops_options", _lib.OpsOptions, "gsink_ops_options_init_size"),
           ("gsink_attn_desc", _lib.AttnDesc, "gsink_attn_desc_init_size"),
           ("gsink_vscale_desc", _lib.VScaleDesc, "gsink_vscale_desc_init_size"))


def test_struct_layout_matches_the_c_compiler(tmp_path):
    """offsetof() of every field and sizeof() of every options struct, as the C
    compiler sees gsink.h, equal the ctypes layout of the binding."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed for the layout check"
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "gsink.h"', 'int main(void) {']
    for cname, struct, _ in STRUCTS:
        lines.append('printf("%s sizeof %%zu\\n", sizeof(%s));' % (cname, cname))
        for f in ["size"] + _lib.field_names(struct):
            lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));' % (cname, f, cname, f))
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", os.path.dirname(HEADER), "-o", str(exe), str(src)],
                   check=True)
    got = dict(line.rsplit(" ", 1) for line in
               subprocess.run([str(exe)], capture_output=True, text=True, check=True)
               .stdout.splitlines())
    for cname, struct, _ in STRUCTS:
        assert int(got["%s sizeof" % cname]) == struct.known_size, cname
        for f in ["size"] + _lib.field_names(struct):
            assert int(got["%s %s" % (cname, f)]) == getattr(struct, f).offset, (cname, f)


def test_init_functions_fill_size():
    # the loaded library's sizeof() (it may be older or newer than the header:
    # a newer one's extra bytes land in the slack after the known fields)
    for cname, struct, init in STRUCTS:
        o = struct()
        getattr(_lib.lib, init)(o, ctypes.sizeof(o))
        assert 0 < o.size <= struct.known_size + _lib.TAIL_BYTES, cname


def test_header_struct_fields_match_binding():
    """Field names of every options struct in gsink.h, in order, equal the binding's."""
    text = open(HEADER).read()
    for cname, struct, _ in STRUCTS:
        body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (cname, cname), text, re.S).group(1)
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        names = re.findall(r"(\w+)\s*;", body)
        assert names == ["size"] + _lib.field_names(struct), cname


def test_version():
    n = gsink.version_number()
    assert gsink.version() == "%d.%d.%d" % (n // 10000, n // 100 % 100, n % 100)
    assert n // 10000 == gsink.EXPECTED_MAJOR and n // 100 % 100 >= gsink.EXPECTED_MINOR


def test_version_check_rules():
    _lib.check_version(100)          # 0.1.0
    _lib.check_version(203)          # 0.2.3: newer minor is fine
    with pytest.raises(ImportError, match="not compatible"):
        _lib.check_version(9)        # 0.0.9: older minor
    with pytest.raises(ImportError, match="not compatible"):
        _lib.check_version(10100)    # 1.1.0: other major


def _run_import(env_lib):
    env = dict(os.environ, GSINK_LIBRARY=env_lib, PYTHONPATH=os.path.dirname(HERE))
    return subprocess.run([sys.executable, "-c", "import gsink"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_missing_library_gives_clear_import_error(tmp_path):
    r = _run_import(str(tmp_path / "nope" / "libgsink.so"))
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "GSINK_LIBRARY" in r.stderr
    assert "Segmentation" not in r.stderr


def test_old_library_is_refused(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to build the fake old library"
    src = tmp_path / "old.c"
    src.write_text("int gsink_version_number(void) { return 9; }\n")  # 0.0.9
    so = tmp_path / "libgsink.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    r = _run_import(str(so))
    assert r.returncode != 0
    assert "0.0.9 is not compatible" in r.stderr


def test_library_found_next_to_package(tmp_path):
    pkg = tmp_path / "gsink"
    shutil.copytree(os.path.join(os.path.dirname(HERE), "gsink"), pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "libgsink.so*"))
    shutil.copy(_lib.path, pkg / "libgsink.so")
    env = {k: v for k, v in os.environ.items() if k != "GSINK_LIBRARY"}
    env["PYTHONPATH"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", "import gsink; print(gsink.library_path())"],
                       env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(pkg / "libgsink.so")


# ---------------------------------------------------------------- errors

def test_status_strings_and_classes():
    for code, name in gsink.errors.STATUS_NAMES.items():
        assert gsink.status_str(code)
        if code:
            cls = gsink.errors.error_class(code)
            assert issubclass(cls, gsink.GsinkError) and cls.status == code


def test_bad_config_raises_with_library_message():
    with pytest.raises(gsink.BadConfigError) as ei:
        gsink.Model(gsink.Config(**dict(SMALL, n_heads=3, n_kv_heads=2)))
    e = ei.value
    assert e.status == 6 and e.status_name == "GSINK_ERR_BAD_CONFIG"
    assert isinstance(e, ValueError) and isinstance(e, gsink.GsinkError)
    assert e.message and e.message == gsink.last_error()
    with pytest.raises(gsink.BadConfigError):
        gsink.Config(**dict(SMALL, d_head=5)).validate()


def test_unknown_preset():
    with pytest.raises(gsink.UnknownNameError):
        gsink.Config.preset("no-such-preset")
    assert {"paper-0.1b", "paper-0.3b", "paper-1b", "bench-21m", "tiny"} <= set(gsink.presets())
    c = gsink.Config.preset("bench-21m")
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.d_ff) == \
        (8192, 512, 4, 8, 8, 1408)


def test_call_errors_keep_the_handle_usable(model):
    tok, tgt = batch()
    with pytest.raises(gsink.CallOrderError):
        model.backward()
    with pytest.raises(gsink.TokenOutOfRangeError) as ei:
        model.forward(np.full((1, 4), SMALL["vocab_size"], dtype=np.int32))
    assert str(SMALL["vocab_size"]) in ei.value.message or ei.value.message
    with pytest.raises(gsink.TokenOutOfRangeError):
        model.forward(np.array([[1, -1, 2]], dtype=np.int32))
    with pytest.raises(gsink.SeqTooLongError):
        model.forward(np.zeros((1, SMALL["max_seq_len"] + 1), dtype=np.int32))
    model.forward(tok)
    with pytest.raises(gsink.NoTargetsError):
        model.backward()
    with pytest.raises(gsink.UnknownNameError):
        model.get_param("model.no.such.weight")
    with pytest.raises(gsink.UnknownSiteError):
        model.activation("no_such_site", 0)
    with pytest.raises(gsink.OutOfRangeError):
        model.activation("resid_out", SMALL["n_layers"])
    with pytest.raises(gsink.InvalidArgumentError):
        model.vscale_enable("full", sigma=-1.0)
    with pytest.raises(gsink.InvalidArgumentError):
        model.forward(np.zeros((0, 4), dtype=np.int32))
    with pytest.raises(gsink.InvalidArgumentError):
        model.forward(np.zeros((1, 0), dtype=np.int32))
    assert model.forward(tok, np.full_like(tgt, -1)) == 0.0  # nothing to average
    with pytest.raises(gsink.NoTargetsError):
        model.backward()
    # still usable, and the message is per handle
    loss = model.forward(tok, tgt)
    model.backward()
    assert np.isfinite(loss) and loss > 0
    assert isinstance(model.errmsg, str)


# ---------------------------------------------------------------- numpy

def test_tokens_dtype_shape_contiguity(model):
    tok, tgt = batch()
    ref = model.forward(tok, tgt)
    logits = model.logits()
    assert logits.shape == (2, 20, SMALL["vocab_size"]) and logits.dtype == np.float32
    # int64 and Fortran-ordered and strided inputs are converted, same numbers
    assert model.forward(tok.astype(np.int64), tgt.astype(np.int64)) == ref
    assert model.forward(np.asfortranarray(tok), np.asfortranarray(tgt)) == ref
    wide = np.zeros((2, 40), dtype=np.int32)
    wide[:, ::2] = tok
    wide_t = np.zeros((2, 40), dtype=np.int32)
    wide_t[:, ::2] = tgt
    assert not wide[:, ::2].flags.c_contiguous
    assert model.forward(wide[:, ::2], wide_t[:, ::2]) == ref
    np.testing.assert_array_equal(model.logits(), logits)
    # a 1-D sequence is batch 1
    model.forward(tok[0])
    assert model.last_shape == (1, 20)
    with pytest.raises(TypeError, match="integer"):
        model.forward(tok.astype(np.float32))
    with pytest.raises(TypeError):
        model.forward(tok.astype(bool))
    with pytest.raises(ValueError, match="shape"):
        model.forward(tok.reshape(2, 4, 5))
    with pytest.raises(ValueError, match="targets shape"):
        model.forward(tok, tgt[:, :5])
    with pytest.raises(ValueError, match="int32 range"):
        model.forward(np.array([[2 ** 40]], dtype=np.int64))
    with pytest.raises(TypeError):
        model.forward(["a", "b"])


def test_param_in_out_validation(model):
    name = "model.layers.0.self_attn.q_proj.weight"
    w = model.get_param(name)
    assert w.shape == (16, 16) and w.dtype == np.float32 and w.flags.c_contiguous
    model.set_param(name, w.astype(np.float64) * 2)  # float64 is converted
    np.testing.assert_array_equal(model.get_param(name), w * 2)
    model.set_param(name, np.asfortranarray(w))      # non-contiguous is converted
    np.testing.assert_array_equal(model.get_param(name), w)
    model.set_param(name, w.ravel())                 # flat is accepted
    with pytest.raises(ValueError, match="shape"):
        model.set_param(name, w[:, :8])
    with pytest.raises(TypeError, match="floating"):
        model.set_param(name, w.astype(np.int32))
    out = np.empty_like(w)
    assert model.get_param(name, out=out) is out
    with pytest.raises(TypeError, match="float32"):
        model.get_param(name, out=np.empty(w.shape, dtype=np.float64))
    with pytest.raises(ValueError, match="shape"):
        model.get_param(name, out=np.empty((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        model.get_param(name, out=np.empty((16, 32), dtype=np.float32)[:, ::2])
    ro = np.empty_like(w)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        model.get_param(name, out=ro)
    with pytest.raises(TypeError):
        model.get_param(name, out=[0.0] * 256)


def test_site_access_and_outputs(model):
    tok, tgt = batch()
    model.set_diag_options(sink_window=8)
    model.forward(tok, tgt)
    model.backward()
    heads, width = model.site_dims("q")
    assert (heads, width) == (4, 4)
    assert model.site_dims("v") == (2, 4) and model.site_dims("mlp_post") == (1, 24)
    q = model.activation(gsink.Site.Q, 1)
    assert q.shape == (2, 20, 16)
    np.testing.assert_array_equal(model.activation("blocks.1.attn.hook_q"), q)
    np.testing.assert_array_equal(model.activation("q", layer=1), q)
    with pytest.raises(ValueError):
        model.activation("blocks.1.attn.hook_q", layer=0)
    out = np.empty((2, 20, 16), dtype=np.float32)
    assert model.gradient("resid_out", 0, out=out) is out
    with pytest.raises(ValueError):
        model.gradient("resid_out", 0, out=np.empty((2, 20, 15), dtype=np.float32))
    # token-wise norms agree with the raw tensors (independent numpy math)
    x = model.activation("resid_mid", 0).astype(np.float64)
    np.testing.assert_allclose(model.activation_norms("resid_mid", 0),
                               np.linalg.norm(x, axis=-1).mean(0), rtol=1e-5)
    g = model.gradient("attn_norm_out", 1).astype(np.float64)
    np.testing.assert_allclose(model.gradient_norms("attn_norm_out", 1, agg="sum_then_norm"),
                               np.linalg.norm(g.sum(0), axis=-1), rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(model.gradient_norms("attn_norm_out", 1, agg="per_sequence"),
                               np.linalg.norm(g, axis=-1).mean(0), rtol=1e-4, atol=1e-12)
    # attention pattern: causal rows summing to one; column mass = column sums
    a = model.attention_pattern(0, head=2, batch_index=1)
    assert a.shape == (20, 20)
    np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-5)
    assert np.all(np.triu(a, 1) == 0)
    M, S = model.column_mass(0, 2)
    pats = [model.attention_pattern(0, 2, b).astype(np.float64) for b in range(2)]
    np.testing.assert_allclose(M, np.mean([p.sum(0) for p in pats], axis=0), rtol=1e-4)
    np.testing.assert_allclose(S, np.mean([(p * p).sum(0) for p in pats], axis=0), rtol=1e-4)
    alpha = model.sink_scores(0, s=0)
    win = [p[0:8, 0].sum() / 8 for p in
           [model.attention_pattern(0, h, b).astype(np.float64) for h in range(4) for b in range(2)]]
    np.testing.assert_allclose(alpha, np.mean(np.reshape(win, (4, 2)), axis=1), rtol=1e-4)
    assert 0.0 <= model.sink_rate(0, s=0, eps=0.3) <= 1.0
    r = model.branch_ratios(1, "mlp")
    assert set(r) == {"bloat", "change", "compress"} and r["bloat"].shape == (20,)
    split = model.qkv_gradient_split(0)
    assert split["q"].shape == (20,)
    assert split["q"][0] < 1e-6 * max(1.0, split["v"].max())  # Prop. 4: dL/dq_0 = 0


def test_report_is_a_dict(model):
    tok, tgt = batch(T=20)
    model.set_diag_options(sink_window=8, rgs_window=15)
    model.forward(tok, tgt)
    with pytest.raises(gsink.CallOrderError):
        model.report()
    model.backward()
    rep = model.report()
    assert rep.get("schema") == "gsink.report/1"
    assert model.diag_options["sink_window"] == 8


def _numbers(x, path=""):
    """Flattens a report into {path: number or None}."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            out.update(_numbers(v, path + "/" + k))
        return out
    if isinstance(x, list):
        out = {}
        for i, v in enumerate(x):
            out.update(_numbers(v, "%s[%d]" % (path, i)))
        return out
    return {path: x}


def test_analysis_streams_like_one_batch(model):
    tok, _ = batch(B=5, T=20, seed=3)
    tgt = np.full_like(tok, -1)
    tgt[:, :-1] = tok[:, 1:]
    model.set_diag_options(sink_window=8)
    model.forward(tok, tgt)
    model.backward()
    ref = model.report(batch_agg="per_sequence")
    an = gsink.Analysis(model, 20, sink_window=8)
    an.add(tok[:2])
    an.add(tok[2:4])
    an.add(tok[4:], targets=tgt[4:])
    rep = an.report(batch_agg="per_sequence")
    assert rep["input"].pop("sequences") == 5 and rep["input"].pop("micro_batches") == 3
    a, b = _numbers(ref), _numbers(rep)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-9), k
        else:
            assert a[k] == b[k], k
    assert an.counts == {"sequences": 5, "micro_batches": 3, "n_targets": 5 * 19}
    assert an.gradient_norms(0, "attn_norm_out").shape == (20,)
    assert an.gradient_norms(0, "q", head=1).shape == (20,)
    st = an.state()
    assert st.dtype == np.float64 and an.memory["state_bytes"] >= st.nbytes
    with pytest.raises(gsink.ShapeMismatchError):
        an.add(tok[:, :10])
    with pytest.raises(gsink.TokenOutOfRangeError):
        an.add(np.full((1, 20), 999, dtype=np.int32))
    an.finish()
    with pytest.raises(gsink.CallOrderError):
        an.add(tok[:1])
    assert an.report()["input"]["sequences"] == 5  # still usable
    rep2 = model.analyze(tok, micro_batch=2, sink_window=8, batch_agg="per_sequence")
    assert rep2["layers"][1]["gradient_sink_ratio"] == pytest.approx(rep["layers"][1]["gradient_sink_ratio"],
                                                                     rel=1e-6)
    with pytest.raises(gsink.CancelledError):
        model.analyze(tok, micro_batch=2, progress=lambda done, total: True)
    assert gsink.errors.error_class(23) is gsink.CancelledError
    model.close()
    assert an.closed  # closing the model closes its analyses


# ---------------------------------------------------------------- lifetime

def test_use_after_close_raises():
    m = gsink.Model(gsink.Config(**SMALL), n_threads=1)
    opt = m.optimizer(lr=1e-3)
    m.close()
    assert m.closed and opt.closed  # the optimizer goes first
    m.close()  # idempotent
    for call in (lambda: m.forward(np.zeros((1, 3), np.int32)), m.backward, m.logits,
                 lambda: m.get_param("model.norm.weight"), lambda: m.config, opt.step,
                 lambda: opt.step_count, m.__enter__):
        with pytest.raises(gsink.ClosedError):
            call()
    with pytest.raises(ValueError):  # ClosedError is a ValueError, like closed files
        m.backward()


def test_context_managers_close():
    with gsink.Model(gsink.Config(**SMALL), n_threads=1) as m:
        with m.optimizer() as opt:
            assert not opt.closed
        assert opt.closed and not m.closed
    assert m.closed


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="under ASan freed memory sits in the quarantine; leaks are checked "
                           "by LeakSanitizer in the C suites")
def test_create_free_1000_models_does_not_grow_rss():
    cfg = gsink.Config(**SMALL)
    tok, tgt = batch(B=1, T=8)

    def cycle(i):
        if i % 2:
            with gsink.Model(cfg, seed=i, n_threads=1) as m:
                m.forward(tok, tgt)
                m.backward()
        else:
            m = gsink.Model(cfg, seed=i, n_threads=1)  # freed by __del__
            m.forward(tok, tgt)
            del m

    for i in range(100):  # warm up allocator pools
        cycle(i)
    gc.collect()
    before = _rss_bytes()
    for i in range(1000):
        cycle(i)
    gc.collect()
    grown = _rss_bytes() - before
    print("\nRSS growth over 1000 create/forward/backward/free cycles: %d KiB" % (grown // 1024))
    assert grown < 4 * 1024 * 1024


# ---------------------------------------------------------------- optimizer, V-scale

def test_optimizer_lowers_loss():
    with gsink.Model(gsink.Config(**SMALL), seed=2, n_threads=1) as m:
        opt = gsink.Optimizer(m, lr=3e-3, grad_clip=1.0, weight_decay=0.0)
        tok, tgt = batch(B=2, T=16, seed=4)
        first = None
        for _ in range(20):
            loss = m.forward(tok, tgt)
            first = loss if first is None else first
            m.backward()
            gn = opt.step()
            assert gn > 0
        assert opt.step_count == 20
        assert m.forward(tok, tgt) < first
        assert abs(opt.lr_at(0) - 3e-3) < 1e-9
        with pytest.raises(TypeError):
            gsink.Optimizer(m, no_such_option=1)


def test_optimizer_state_roundtrip(tmp_path):
    tok, tgt = batch(B=1, T=8, seed=5)
    with gsink.Model(gsink.Config(**SMALL), seed=2, n_threads=1) as m:
        opt = m.optimizer(lr=1e-3)
        m.forward(tok, tgt)
        m.backward()
        opt.step()
        opt.save(tmp_path / "opt.bin")
        with m.optimizer(lr=1e-3) as opt2:
            assert opt2.step_count == 0
            opt2.load(tmp_path / "opt.bin")
            assert opt2.step_count == 1
            (tmp_path / "bad.bin").write_bytes(b"\0" * 64)
            with pytest.raises(gsink.GsinkError) as ei:
                opt2.load(tmp_path / "bad.bin")
            assert ei.value.status in (14, 15, 13)
            assert opt2.step_count == 1


def test_vscale_roundtrip(model):
    assert model.vscale["mode"] in (gsink.VScaleMode.OFF, gsink.VScaleMode.FULL)
    model.vscale_enable("full", sigma=0.05, per_query_head=True)
    v = model.vscale
    assert v["mode"] == gsink.VScaleMode.FULL and v["per_query_head"]
    assert abs(v["sigma"] - 0.05) < 1e-7
    assert model.theta.shape == (2, 4)
    model.theta = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
    np.testing.assert_allclose(model.theta, np.arange(8).reshape(2, 4) / 10, rtol=1e-6)
    with pytest.raises(ValueError):
        model.theta = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError):
        model.vscale_enable("sideways")
    model.vscale_disable()
    assert model.theta.size == 0


def test_save_load_roundtrip(model, tmp_path):
    tok, tgt = batch()
    loss = model.forward(tok, tgt)
    model.save(tmp_path / "ckpt")
    with gsink.Model.load(tmp_path / "ckpt") as m2:
        assert m2.config == model.config
        assert m2.forward(tok, tgt) == loss
    with pytest.raises(gsink.GsinkError):
        gsink.Model.load(tmp_path / "missing")


def test_tokenizer_errors(tmp_path):
    with pytest.raises(gsink.GsinkError) as ei:
        gsink.Tokenizer(tmp_path / "missing.gguf")
    assert ei.value.status in (14, 15)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 60)
    with pytest.raises(gsink.GsinkError):
        gsink.Tokenizer(bad)


def test_devices():
    assert gsink.device_count("cpu") == 1
    assert gsink.device_describe("cpu", 0)
    assert gsink.device_count("cuda") >= 0


def test_pip_install(tmp_path):
    """`pip install ./bindings/python` works (offline: no build isolation, no deps)."""
    src = tmp_path / "src"
    shutil.copytree(os.path.dirname(HERE), src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "tests"))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation",
                        "--no-deps", "--no-index", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    env = dict(os.environ, PYTHONPATH=str(target), GSINK_LIBRARY=_lib.path)
    r = subprocess.run([sys.executable, "-c", "import gsink, sys; print(gsink.__file__); "
                        "m = gsink.Model('micro'); m.close()"],
                       env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(target))


def test_discard_site_grads():
    # the same training gradients with less memory; gradient diagnostics raise
    rng = np.random.default_rng(3)
    tok = rng.integers(0, 64, size=(2, 16), dtype=np.int32)
    tgt = rng.integers(0, 64, size=(2, 16), dtype=np.int32)
    cfg = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_head=8,
               d_ff=48, max_seq_len=32)
    keep = gsink.Model("micro", seed=11, n_threads=1, **cfg)
    drop = gsink.Model("micro", seed=11, n_threads=1, discard_site_grads=True, **cfg)
    for m in (keep, drop):
        m.forward(tok, tgt)
        m.backward()
    gk, gd = keep.grads(), drop.grads()
    assert gk.keys() == gd.keys()
    for name in gk:
        np.testing.assert_array_equal(gk[name], gd[name])
    assert keep.gradient("resid_out", layer=1).shape == (2, 16, 32)
    with pytest.raises(gsink.UnsupportedError, match="DISCARD_SITE_GRADS"):
        drop.gradient("resid_out", layer=1)
    with pytest.raises(gsink.UnsupportedError):
        drop.gradient_sink_ratio(0, t_e=8)
    assert drop.activation("resid_out", layer=1).shape == (2, 16, 32)


def test_analysis_model():
    # activation gradients only: the same site gradients without a
    # parameter-gradient buffer; parameter-gradient calls raise, naming the flag
    rng = np.random.default_rng(3)
    tok = rng.integers(0, 64, size=(2, 16), dtype=np.int32)
    full = gsink.Model("micro", seed=11, n_threads=1)
    ana = gsink.Model("micro", seed=11, n_threads=1, analysis=True)
    for m in (full, ana):
        m.forward(tok, tok)
        m.backward()
    np.testing.assert_array_equal(ana.gradient("resid_in", layer=0), full.gradient("resid_in", layer=0))
    assert ana.memory()[0] < full.memory()[0]
    with pytest.raises(gsink.UnsupportedError, match="GSINK_MODEL_ANALYSIS"):
        ana.grads()
    with pytest.raises(gsink.UnsupportedError, match="GSINK_MODEL_ANALYSIS"):
        gsink.Optimizer(ana)
    assert ana.report_json() == full.report_json()


def test_discard_site_activations_model():
    # unread site activations shared across layers: the streamed report of a
    # normal model, the same gradients, the recomputed sites and the logits
    # after the backward equal, discarded sites refused naming the flag; the
    # flag needs analysis=True
    rng = np.random.default_rng(5)
    tok = rng.integers(0, 64, size=(4, 16), dtype=np.int32)
    full = gsink.Model("micro", seed=11, n_threads=1)
    lean = gsink.Model("micro", seed=11, n_threads=1, analysis=True, discard_site_grads=True,
                       discard_site_activations=True)
    reports = []
    for m in (full, lean):
        a = gsink.Analysis(m, 16, sink_window=8)
        a.add(tok[:2])
        a.add(tok[2:])
        a.finish()
        reports.append(a.report_json())
        a.close()
    assert reports[0] == reports[1]
    kept = gsink.Model("micro", seed=11, n_threads=1, analysis=True, discard_site_activations=True)
    for m in (full, kept):
        m.forward(tok, tok)
        m.backward()
    np.testing.assert_array_equal(kept.gradient("mlp_post", layer=0), full.gradient("mlp_post", layer=0))
    for site in ("mlp_pre", "mlp_post", "attn_norm_out", "mlp_norm_out"):
        np.testing.assert_array_equal(kept.activation(site, layer=0), full.activation(site, layer=0))
    np.testing.assert_array_equal(kept.logits(), full.logits())
    for site in ("attn_out", "mlp_out"):
        with pytest.raises(gsink.UnsupportedError, match="GSINK_MODEL_DISCARD_SITE_ACTIVATIONS"):
            kept.activation(site, layer=0)
    with pytest.raises(gsink.InvalidArgumentError, match="needs GSINK_MODEL_ANALYSIS"):
        gsink.Model("micro", discard_site_activations=True)


@pytest.mark.parametrize("precision", ["tf32", "bf16", gsink.Precision.BF16])
def test_reduced_precision_needs_cuda(precision):
    # TF32 and BF16 are CUDA-only; on the CPU they are refused, not ignored
    with pytest.raises(gsink.UnsupportedError, match="needs a CUDA device"):
        gsink.Model("micro", precision=precision)
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        gsink.Model("micro", precision="fp16")


@pytest.mark.parametrize("wd,bits", [("bf16", 16), (gsink.WeightDtype.FP16, 0), (1, 16)])
def test_weight_dtype_option(wd, bits):
    """16-bit weight storage through Model and Model.load: rounded weights,
    less memory, fp32 results equal to an fp32 model holding the same weights."""
    m = gsink.Model("micro", seed=3, n_threads=1, weight_dtype=wd)
    f = gsink.Model("micro", seed=3, n_threads=1)
    assert m.memory()[0] < f.memory()[0]
    for name in m.param_names():
        w = m.get_param(name)
        if bits:
            assert not np.any(w.view(np.uint32) & 0xffff) or w.ndim == 1, name
        f.set_param(name, w)
    tok, tgt = batch()
    assert m.forward(tok, tgt) == pytest.approx(f.forward(tok, tgt), rel=1e-6)
    np.testing.assert_allclose(m.logits(), f.logits(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="unknown weight_dtype 'fp8'"):
        gsink.Model("micro", weight_dtype="fp8")
    with pytest.raises(gsink.InvalidArgumentError, match="weight_dtype 3"):
        gsink.Model("micro", weight_dtype=3)


def test_memory_accounting():
    m = gsink.Model("micro", seed=1, n_threads=1)
    b0, p0 = m.memory()
    assert b0 >= 8 * m.num_params and p0 == b0  # weights and gradients
    tok = np.arange(64, dtype=np.int32).reshape(2, 32) % 64
    m.forward(tok, tok)
    m.backward()
    b1, p1 = m.memory(reset_peak=True)
    assert b1 > b0 and p1 >= b1
    assert m.memory() == (b1, b1)  # the peak restarted from the live bytes


def test_thread_limit(model):
    # 2 threads per CPU this process may run on; more is refused, the model
    # keeps working, and the maximum itself runs a forward
    limit = gsink.max_threads()
    assert limit == 2 * len(os.sched_getaffinity(0))
    tok, tgt = batch()
    ref = model.forward(tok, tgt)
    for bad in (limit + 1, 1000, 5000, 2 ** 31 - 1):
        with pytest.raises(gsink.InvalidArgumentError, match="limit"):
            model.set_threads(bad)
        assert model.forward(tok, tgt) == ref
    with pytest.raises(gsink.InvalidArgumentError, match="limit"):
        gsink.Model(gsink.Config(**SMALL), n_threads=limit + 1)
    model.set_threads(limit)
    assert model.forward(tok, tgt) == pytest.approx(ref, rel=1e-6)
    with gsink.Model(gsink.Config(**SMALL), seed=1, n_threads=limit) as m:
        assert m.forward(tok, tgt) == pytest.approx(ref, rel=1e-6)


def test_threads_sharing_one_model_are_serialised():
    # ctypes releases the GIL during library calls, so without the handle's
    # lock these threads would reach the library at the same time (which it
    # answers with GSINK_ERR_BUSY, and which crashed before that check)
    import threading
    m = gsink.Model("small", seed=5, n_threads=1)
    tok = (np.arange(128, dtype=np.int32).reshape(1, 128) * 37) % 4096
    ref = m.forward(tok, tok)
    opt = m.optimizer(lr=0.0, weight_decay=0.0)
    errors, losses, refused = [], [], []
    start = threading.Barrier(4)

    def hammer(k):
        try:
            start.wait()
            for i in range(6):
                losses.append(m.forward(tok, tok))
                if k == 0:
                    m.backward()
                    opt.step()  # lr 0: the weights stay the same
                elif k == 1:
                    m.activation_norms("resid_out", layer=0)
                    m.set_threads(1)
                elif k == 2:
                    try:
                        m.logits()
                    except gsink.CallOrderError as e:
                        # documented since the backward writes dlogits over the
                        # logits: when thread 0's backward and optimizer step
                        # ran between this thread's forward and this read, the
                        # logits cannot be recomputed and the read is refused
                        assert "optimizer step" in str(e), e
                        refused.append(e)
                    m.param_info()
                else:
                    m.memory()
                    m.last_shape
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(losses) == 24 and all(l == ref for l in losses)
    assert len(refused) <= 6

    # close() waits for a call in progress, then frees the model
    inside = threading.Event()
    result = []

    def forward_then_report():
        inside.set()
        try:
            result.append(m.forward(tok, tok))
        except gsink.ClosedError as e:  # close() won the lock first
            result.append(e)
        except BaseException as e:  # noqa: B902
            errors.append(e)

    t = threading.Thread(target=forward_then_report)
    t.start()
    inside.wait()
    m.close()
    t.join()
    assert not errors, errors
    assert result and (result[0] == ref or isinstance(result[0], gsink.ClosedError))
    assert m.closed and opt.closed


def test_busy_status_maps_to_busy_error():
    assert gsink.errors.error_class(22) is gsink.BusyError
    assert issubclass(gsink.BusyError, RuntimeError)
    assert gsink.status_str(22) == "handle busy"


def test_flat_params_and_grads(model):
    tok, tgt = batch(seed=3)
    model.forward(tok, tgt)
    model.backward()
    w, g = model.get_params_flat(), model.get_grads_flat()
    assert w.shape == g.shape == (model.num_params,)
    assert np.array_equal(w, np.concatenate([model.params()[n].ravel() for n in model.param_names()]))
    assert np.array_equal(g, np.concatenate([model.grads()[n].ravel() for n in model.param_names()]))
    model.set_grads_flat(2 * g)
    assert np.array_equal(model.get_grads_flat(), 2 * g)
    model.set_params_flat(w * 0.5)
    assert np.array_equal(model.get_params_flat(), w * 0.5)
    with pytest.raises(ValueError):
        model.set_params_flat(w[:-1])
