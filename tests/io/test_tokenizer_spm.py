"""SentencePiece-style tokenizer.json files (Llama 2, Mistral, TinyLlama: BPE
over characters, spaces as U+2581, byte fallback, fuse_unk) against the
independent HuggingFace `tokenizers` implementation. The vocabularies are
trained here and written in each form transformers' LlamaConverter produces:
the legacy normalizer Prepend + Replace with no pre-tokenizer, and a
Metaspace pre-tokenizer with each prepend_scheme, split or not."""

import json
import os
import random
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gsink  # noqa: E402
from gsink.errors import GsinkError  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

from test_tokenizer_json import check_texts, corpus, save  # noqa: E402

M = "\u2581"
SPECIAL = ["<unk>", "<s>", "</s>"]
REPLACE = {"type": "Replace", "pattern": {"String": " "}, "content": M}
LEGACY_NORM = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": M}, REPLACE]}
STRIP = {"type": "Strip", "content": " ", "start": 1, "stop": 0}
DECODER = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": M}, "content": " "},
                                            {"type": "ByteFallback"}, {"type": "Fuse"}, STRIP]}
FORMAT, UNSUPPORTED, INVALID = 15, 16, 2


def train(byte_fallback=True, words=True):
    """A BPE vocabulary over characters (an alphabet of 120: the rest takes
    the byte fallback tokens, or the unknown token without them), trained on
    Metaspace words as SentencePiece does, or (words=False) on lines, so that
    tokens span a U+2581 and Metaspace's split changes the ids; the <0xXX>
    tokens follow it in model.vocab as in Llama 2's file."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=byte_fallback, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=M, prepend_scheme="always", split=words)
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=SPECIAL, limit_alphabet=120,
                                  show_progress=False)
    tok.train_from_iterator([line for part in corpus() for line in part.split("\n")], trainer)
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    n = max(vocab.values()) + 1
    if byte_fallback:
        for b in range(256):
            if "<0x%02X>" % b not in vocab:
                vocab["<0x%02X>" % b] = n
                n += 1
    return d


def variant(d, kind, strip=True):
    """kind: "legacy" (Llama 2's normalizer), "legacy-noprefix" (Replace
    only, as add_prefix_space=False writes it) or "metaspace-SCHEME-split"
    / "metaspace-SCHEME-nosplit"."""
    d = json.loads(json.dumps(d))
    d["decoder"] = json.loads(json.dumps(DECODER))
    if not strip:
        d["decoder"]["decoders"].pop()
    if kind.startswith("legacy"):
        d["normalizer"] = LEGACY_NORM if kind == "legacy" else {"type": "Sequence", "normalizers": [REPLACE]}
        d["pre_tokenizer"] = None
    else:
        _, scheme, split = kind.split("-")
        d["normalizer"] = None
        d["pre_tokenizer"] = {"type": "Metaspace", "replacement": M, "prepend_scheme": scheme,
                              "split": split == "split"}
    return d


@pytest.fixture(scope="module")
def trained():
    return train()


@pytest.fixture(scope="module")
def trained_lines():
    return train(words=False)


def both(d, path):
    return Tokenizer.from_str(json.dumps(d)), gsink.Tokenizer(save(d, path))


def compare(hf, tok, texts):
    """Ids with control tokens parsed and left as text, and the decoded text,
    equal HF's; returns the number of ids compared."""
    total = 0
    for text in texts:
        want = hf.encode(text, add_special_tokens=False).ids
        got = tok.encode(text, parse_special=True).tolist()
        assert got == want, (repr(text[:80]), got[:30], want[:30])
        assert tok.decode(got) == hf.decode(want, skip_special_tokens=False), repr(text[:80])
        hf.encode_special_tokens = True
        try:
            want = hf.encode(text, add_special_tokens=False).ids
        finally:
            hf.encode_special_tokens = False
        assert tok.encode(text).tolist() == want, ("special as text", repr(text[:80]))
        total += len(want)
    return total


TEXTS = check_texts() + ["<s>", "</s>a", "a<s> b", "<s> <s>", " <s>", "a  b", "\u2581a \u2581", "\u2581\u2581"] + \
    [part[:20000] for part in corpus()[3:9]]  # licences and docs: long pieces, mostly merges


@pytest.mark.parametrize("kind", ["legacy", "legacy-noprefix", "metaspace-first-nosplit", "metaspace-first-split",
                                  "metaspace-always-split", "metaspace-always-nosplit", "metaspace-never-nosplit"])
def test_matches_hf(trained, tmp_path, kind):
    hf, tok = both(variant(trained, kind, strip=kind != "legacy-noprefix"), str(tmp_path / kind))
    assert compare(hf, tok, TEXTS) > 20000
    # byte fallback is exercised: characters outside the trained alphabet
    ids = [i for t in TEXTS for i in hf.encode(t, add_special_tokens=False).ids]
    first_byte = trained["model"]["vocab"]["<0x00>"]
    assert 1000 < sum(i >= first_byte for i in ids) < len(ids) // 2
    assert tok.special == (1, 2)  # <s>, </s>
    assert tok.encode("ab", add_bos=True).tolist()[0] == 1


@pytest.mark.parametrize("kind", ["legacy", "metaspace-first-nosplit", "metaspace-first-split",
                                  "metaspace-always-split"])
def test_tokens_across_spaces(trained_lines, tmp_path, kind):
    """A vocabulary with tokens that span a U+2581 ("\u2581of\u2581the"):
    whether the Metaspace pre-tokenizer splits decides which are used."""
    assert sum(M in t[1:] for t in trained_lines["model"]["vocab"]) > 50
    hf, tok = both(variant(trained_lines, kind), str(tmp_path / kind))
    assert compare(hf, tok, TEXTS) > 20000
    if kind.endswith("-split"):  # none of the spanning tokens can appear
        spanning = {i for t, i in trained_lines["model"]["vocab"].items() if M in t[1:]}
        assert not spanning & set(tok.encode(TEXTS[-1]).tolist())


def test_metaspace_without_prepend_scheme(trained, tmp_path):
    """Files written before prepend_scheme: add_prefix_space true is "always"."""
    d = variant(trained, "metaspace-always-split")
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": M, "add_prefix_space": True}
    hf, tok = both(variant(trained, "metaspace-always-split"), str(tmp_path / "a"))
    tok_old = gsink.Tokenizer(save(d, str(tmp_path / "b")))
    for text in TEXTS[:40]:
        assert tok_old.encode(text).tolist() == tok.encode(text).tolist() == \
            hf.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("fuse", [True, False])
def test_unknown_tokens_without_byte_fallback(tmp_path, fuse):
    d = variant(train(byte_fallback=False), "legacy")
    d["model"]["fuse_unk"] = fuse
    hf, tok = both(d, str(tmp_path / "t"))
    assert compare(hf, tok, TEXTS) > 10000
    ids = [i for t in TEXTS for i in hf.encode(t, add_special_tokens=False).ids]
    assert ids.count(0) > 1000  # <unk>
    # a run of unknown characters is one <unk> with fuse_unk, one each without
    assert tok.encode("\U0001F600\U0001F601\U0001F602").tolist().count(0) == (1 if fuse else 3)


def test_decode_byte_runs_as_hf(trained, tmp_path):
    """Random ids, half of them byte fallback tokens: a run of bytes that is
    not UTF-8 decodes to one U+FFFD per byte, as HF's ByteFallback."""
    hf, tok = both(variant(trained, "legacy"), str(tmp_path / "t"))
    byte_ids = sorted(v for k, v in trained["model"]["vocab"].items() if k.startswith("<0x"))
    rng = random.Random(3)
    replaced = 0
    for _ in range(400):
        ids = [rng.randrange(hf.get_vocab_size()) if rng.random() < 0.4 else rng.choice(byte_ids)
               for _ in range(rng.randint(0, 40))]
        want = hf.decode(ids, skip_special_tokens=False)
        assert tok.decode(ids) == want, ids
        replaced += "\ufffd" in want
    assert replaced > 100
    # runs longer than the decoder's stack buffer (64 bytes): UTF-8 text, then with one stray byte
    by_value = {int(k[3:5], 16): v for k, v in trained["model"]["vocab"].items() if k.startswith("<0x")}
    long_run = [by_value[b] for b in ("\u00e9t\u00e9 \u4e2d\u6587 \U0001F600 " * 12).encode("utf-8")]
    for ids in (long_run, long_run[:100] + [by_value[0xC3]] + long_run[100:]):
        assert len(ids) > 64 and tok.decode(ids) == hf.decode(ids, skip_special_tokens=False)


def test_unencodable_offset(tmp_path):
    """No byte fallback and no unknown token: the error names the input byte
    of the first character without a token (offsets survive the U+2581
    replacement and the prepended one)."""
    d = variant(train(byte_fallback=False), "legacy")
    d["model"]["unk_token"] = None
    tok = gsink.Tokenizer(save(d, str(tmp_path / "t")))
    text = "the  cat \u00e9 and \U0001F600 too"
    with pytest.raises(GsinkError) as e:
        tok.encode(text)
    at = len(text[:text.index("\U0001F600")].encode("utf-8"))
    assert e.value.status == INVALID and "byte %d " % at in str(e.value), str(e.value)


def good_doc():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, M: 3, "a": 4, "b": 5, M + "a": 6}
    return {"version": "1.0", "added_tokens": [
                {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for i, c in enumerate(SPECIAL)],
            "normalizer": json.loads(json.dumps(LEGACY_NORM)), "pre_tokenizer": None, "post_processor": None,
            "decoder": json.loads(json.dumps(DECODER)),
            "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
                      "vocab": vocab, "merges": [M + " a"]}}


def metaspace(**kw):
    return dict({"type": "Metaspace", "replacement": M, "prepend_scheme": "first", "split": False}, **kw)


@pytest.mark.parametrize("mutate,status,needle", [
    (lambda d: d["normalizer"]["normalizers"].pop(), UNSUPPORTED, "normalizer not supported"),
    (lambda d: d["normalizer"]["normalizers"].append({"type": "NFKC"}), UNSUPPORTED, "normalizer not supported"),
    (lambda d: d["normalizer"]["normalizers"][1].update(content="_"), UNSUPPORTED, "normalizer not supported"),
    (lambda d: d["normalizer"].update(normalizers={}), FORMAT, "Sequence without normalizers"),
    (lambda d: d.update(pre_tokenizer=metaspace()), UNSUPPORTED, "pre-tokenizer after the SentencePiece"),
    (lambda d: d.update(normalizer=None, pre_tokenizer=metaspace(replacement="_")), UNSUPPORTED, "replacement"),
    (lambda d: d.update(normalizer=None, pre_tokenizer=metaspace(split=1)), UNSUPPORTED, "boolean"),
    (lambda d: d.update(normalizer=None, pre_tokenizer=metaspace(prepend_scheme="sometimes")), UNSUPPORTED,
     "prepend_scheme"),
    (lambda d: d.update(decoder={"type": "ByteLevel"}), UNSUPPORTED, "needs the decoder Sequence"),
    (lambda d: d["decoder"]["decoders"].pop(1), UNSUPPORTED, "needs the decoder Sequence"),
    (lambda d: d["decoder"]["decoders"][3].update(start=2), UNSUPPORTED, "Strip"),
    (lambda d: d["decoder"]["decoders"].append({"type": "Fuse"}), UNSUPPORTED, "needs the decoder Sequence"),
    (lambda d: d["added_tokens"].append({"id": 7, "content": "<pad>", "single_word": False, "lstrip": False,
                                         "rstrip": False, "normalized": True, "special": False}),
     UNSUPPORTED, "normalized=true"),
    (lambda d: d["added_tokens"][0].update(normalized="yes"), FORMAT, "must be booleans"),
])
def test_refused(tmp_path, mutate, status, needle):
    d = good_doc()
    gsink.Tokenizer(save(d, str(tmp_path / "ok")))  # the unmutated file loads
    mutate(d)
    with pytest.raises(GsinkError) as e:
        gsink.Tokenizer(save(d, str(tmp_path / "bad")))
    assert e.value.status == status and needle in str(e.value), (e.value.status, str(e.value))


def test_normalized_added_token_with_metaspace(tmp_path):
    """Without a normalizer HF's normalised text is the input: a normalised
    added token is matched as any other."""
    d = good_doc()
    d.update(normalizer=None, pre_tokenizer=metaspace())
    d["added_tokens"].append({"id": 7, "content": "<pad>", "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": True, "special": False})
    hf, tok = both(d, str(tmp_path / "t"))
    for text in ["a<pad>b", "<pad> a", "a <pad>", "ab<s><pad>"]:
        assert tok.encode(text, parse_special=True).tolist() == hf.encode(text, add_special_tokens=False).ids


def test_cli_text_with_sentencepiece_tokenizer(tmp_path):
    """gsink-cli analyze --text on a Mistral checkpoint directory with a
    SentencePiece-style tokenizer.json: the same loss as --tokens with HF's
    ids of the text."""
    import shutil
    import subprocess
    cli = os.environ.get("GSINK_CLI")
    fixture = os.path.join(HERE, "..", "data", "hf-archs", "mistral")
    if not cli or not os.path.exists(os.path.join(fixture, "config.json")):
        pytest.skip("GSINK_CLI not set or the mistral fixture absent")
    with open(os.path.join(fixture, "config.json")) as f:
        vocab_size = json.load(f)["vocab_size"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=M, prepend_scheme="always", split=True)
    tok.train_from_iterator(corpus()[:3], trainers.BpeTrainer(vocab_size=vocab_size - 8, special_tokens=SPECIAL,
                                                                limit_alphabet=50, show_progress=False))
    d = variant(json.loads(tok.to_str()), "legacy")
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(fixture, name), model / name)
    save(d, str(model))
    text = " ".join(check_texts()[:12])[:3000]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    ids = Tokenizer.from_str(json.dumps(d)).encode(text).ids
    assert max(ids) < vocab_size and 0 in ids  # <unk> for the characters outside the alphabet
    (tmp_path / "ids.txt").write_text(" ".join(map(str, ids)))
    losses = []
    for extra in (["--text", str(tmp_path / "t.txt")], ["--tokens", str(tmp_path / "ids.txt")]):
        out = tmp_path / "r.json"
        r = subprocess.run([cli, "analyze", "--model", str(model), "--seq", "48", "--batch", "2", "--json", str(out)]
                           + extra, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        with open(out) as f:
            losses.append(json.load(f)["input"]["loss"])
    assert losses[0] == losses[1]
