"""gsink-cli analyze --text: documents tokenized and packed as the paper does
(each document followed by the end-of-text separator, no BOS; files of a
directory in name order), checked against HF `tokenizers` on the same
vocabulary."""
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gsink  # noqa: E402
from test_io import VARIED_TEXT, train_hf_tokenizer, vocab_and_merges, write_tokenizer_gguf  # noqa: E402

CLI = os.environ.get("GSINK_CLI")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not CLI:
        pytest.fail("GSINK_CLI is not set (run through meson test)")
    d = tmp_path_factory.mktemp("cli_text")
    hf = train_hf_tokenizer("gpt2")
    tokens, merges = vocab_and_merges(hf)
    write_tokenizer_gguf(str(d / "tok.gguf"), tokens, merges, {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}, "gpt2")
    cfg = gsink.Config(vocab_size=len(tokens), d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_head=16,
                       d_ff=48, max_seq_len=64)
    gsink.Model(cfg, seed=1, n_threads=1).save(str(d / "model"))
    docs = d / "docs"
    docs.mkdir()
    lines = VARIED_TEXT.split("\n")
    # written out of name order, read in name order
    (docs / "b.txt").write_text("\n".join(lines[3:7]))
    (docs / "a.txt").write_text("\n".join(lines[:3]))
    (docs / ".hidden").write_text("never read")
    (docs / "sub").mkdir()
    (d / "c.txt").write_text(VARIED_TEXT)
    return d, hf, tokens


def packed(hf, eos, texts):
    out = []
    for t in texts:
        out += hf.encode(t).ids + [eos]
    return out


def test_packing_matches_hf(setup, tmp_path):
    d, hf, tokens = setup
    eos = tokens.index("<|im_end|>")  # the GGUF's eos_token_id
    B, T = 3, 40
    saved = tmp_path / "seqs.txt"
    r = subprocess.run([CLI, "analyze", "--model", str(d / "model"), "--tokenizer", str(d / "tok.gguf"),
                        "--text", str(d / "docs"), "--text", str(d / "c.txt"), "--batch", str(B), "--seq", str(T),
                        "--threads", "1", "--save-tokens", str(saved)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = packed(hf, eos, [(d / "docs" / "a.txt").read_text(), (d / "docs" / "b.txt").read_text(),
                            (d / "c.txt").read_text()])
    got = np.loadtxt(saved, dtype=np.int64).reshape(B, T)
    assert got.ravel().tolist() == want[:B * T]
    assert "3 documents, %d tokens packed, separator %d" % (len(want), eos) in r.stdout


def test_separator_override_and_errors(setup, tmp_path):
    d, hf, tokens = setup
    saved = tmp_path / "seqs.txt"
    sep = tokens.index("<|endoftext|>")
    base = [CLI, "analyze", "--model", str(d / "model"), "--tokenizer", str(d / "tok.gguf"), "--threads", "1"]
    x, y = tmp_path / "x.txt", tmp_path / "y.txt"
    x.write_text("Hello world, 12345 docs.")
    y.write_text(VARIED_TEXT)
    r = subprocess.run(base + ["--text", str(x), "--text", str(y), "--separator", str(sep), "--seq", "60",
                               "--save-tokens", str(saved)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = packed(hf, sep, [x.read_text(), y.read_text()])
    got = np.loadtxt(saved, dtype=np.int64).ravel().tolist()
    assert sep in got and got == want[:60]
    # too little text for the batch: a usage error naming the counts
    r = subprocess.run(base + ["--text", str(d / "docs" / "a.txt"), "--batch", "50", "--seq", "64"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "batch*seq = 3200 needed" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(base + ["--text", str(empty)], capture_output=True, text=True)
    assert r.returncode == 1 and "holds no regular files" in r.stderr
