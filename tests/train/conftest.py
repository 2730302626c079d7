"""Shared fixtures for the training suite: the library, the tool, a corpus."""
import ctypes
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools", "corpus"))

import prepare  # noqa: E402


def _build_dir():
    return os.environ.get("GSINK_BUILD_DIR", os.path.join(ROOT, "build-train"))


@pytest.fixture(scope="session")
def lib():
    path = os.environ.get("GSINK_LIB") or os.path.join(_build_dir(), "lib", "libgsink.so")
    if not os.path.exists(path):
        pytest.skip(f"{path} not built")
    L = ctypes.CDLL(path)
    L.gsink_last_error.restype = ctypes.c_char_p
    L.gsink_optimizer_errmsg.restype = ctypes.c_char_p
    L.gsink_optimizer_lr_at.restype = ctypes.c_float
    L.gsink_optimizer_lr_at.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    L.gsink_optimizer_step_count.restype = ctypes.c_int64
    L.gsink_optimizer_step_count.argtypes = [ctypes.c_void_p]
    L.gsink_param_info.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p),
                                   ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int64 * 2)]
    for fn in ("gsink_get_param", "gsink_set_param", "gsink_get_param_grad"):
        getattr(L, fn).argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    for fn in ("gsink_vscale_get_theta", "gsink_vscale_set_theta", "gsink_vscale_get_theta_grad"):
        getattr(L, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    L.gsink_forward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_float)]
    L.gsink_backward.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    L.gsink_optimizer_step.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)]
    L.gsink_optimizer_save.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    L.gsink_optimizer_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    L.gsink_model_free.argtypes = [ctypes.c_void_p]
    L.gsink_optimizer_free.argtypes = [ctypes.c_void_p]
    L.gsink_zero_grad.argtypes = [ctypes.c_void_p]
    return L


@pytest.fixture(scope="session")
def tool():
    path = os.environ.get("GSINK_TRAIN") or os.path.join(_build_dir(), "examples", "train", "gsink-train")
    if not os.path.exists(path):
        pytest.skip(f"{path} not built")
    return path


TEST_PACKAGES = ("linux-doc-6.1", "python3.11-doc")


def _corpus_dir():
    return os.environ.get("GSINK_CORPUS_DIR", os.path.join(ROOT, ".cache", "corpus", "docs"))


@pytest.fixture(scope="session")
def corpus():
    """A real corpus: the two-package subset of the experiment's corpus (linux-doc-6.1 +
    python3.11-doc, 16.8 MB of prose), prepared once into .cache/corpus/docs and built
    here if missing. The tests need real text, not all ten packages (127 MB of .deb)."""
    d = _corpus_dir()
    if all(os.path.exists(os.path.join(d, f)) for f in ("train.bin", "val.bin", "meta.json")):
        return d
    debs = os.path.join(ROOT, ".cache", "corpus", "debs")
    os.makedirs(debs, exist_ok=True)
    pkgs = list(TEST_PACKAGES)
    have = {p: [f for f in os.listdir(debs) if f.startswith(p + "_") and f.endswith(".deb")] for p in pkgs}
    if not all(have.values()) and not all(os.path.isdir(os.path.join("/", prepare.SOURCES[p])) for p in pkgs):
        r = subprocess.run(["apt-get", "download"] + pkgs, cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip("corpus packages unavailable (apt-get download " + " ".join(pkgs) + " failed): "
                        + r.stderr.strip()[-300:])
        have = {p: [f for f in os.listdir(debs) if f.startswith(p + "_") and f.endswith(".deb")] for p in pkgs}
    args = [sys.executable, os.path.join(ROOT, "tools", "corpus", "prepare.py"), "--out", d,
            "--packages", ",".join(pkgs)]
    for p in pkgs:
        if have[p]:
            args += ["--deb", os.path.join(debs, sorted(have[p])[-1])]
    subprocess.run(args, check=True)
    return d


@pytest.fixture
def small_data(tmp_path, corpus):
    """A copy of a slice of the real corpus (fast to verify)."""
    tr, vocab, eot = prepare.read_tokens(os.path.join(corpus, "train.bin"))
    va, _, _ = prepare.read_tokens(os.path.join(corpus, "val.bin"))
    d = tmp_path / "data"
    d.mkdir()
    prepare.write_tokens(str(d / "train.bin"), tr[:400_000], vocab, eot)
    prepare.write_tokens(str(d / "val.bin"), va[:20_000], vocab, eot)
    shutil.copy(os.path.join(corpus, "tokenizer.json"), d / "tokenizer.json")
    return d


def run_tool(tool, *args, env=None, check=True):
    e = dict(os.environ)
    if env:
        e.update(env)
    r = subprocess.run([tool, *map(str, args)], capture_output=True, text=True, env=e, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"gsink-train failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r


def read_log(path):
    import json
    steps, vals = {}, {}
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if "loss" in d:
                steps[d["step"]] = d["loss"]
            if "val_loss" in d:
                vals[d["step"]] = d["val_loss"]
    return steps, vals


def as_array(x):
    return np.ascontiguousarray(x, dtype=np.float32)
