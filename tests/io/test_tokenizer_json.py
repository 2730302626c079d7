"""gsink_tokenizer_load_json against the independent HuggingFace `tokenizers`
implementation: small BPE vocabularies trained here with each pre-tokenizer
exactly as the model families ship it (GPT-2 ByteLevel, Llama 3 and Qwen2
Split regex + ByteLevel, SmolLM2 Digits + ByteLevel), the repository's
models/default/tokenizer.json, the GGUF loader's llama-bpe / qwen2
pre-tokenizers on the same vocabulary, and malformed / unsupported files."""

import glob
import json
import os
import random
import sys
import unicodedata

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import gsink  # noqa: E402
import ggufw  # noqa: E402
from gsink.errors import GsinkError  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import (Regex, Tokenizer, decoders, models, normalizers,  # noqa: E402
                        pre_tokenizers, trainers)

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Mistral's Tekken (Nemo, Small 3) and tiktoken's o200k (as transformers
# files of o200k-based models write it)
TEKKEN_RE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
             r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
O200K_RE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
            r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

VARIED = (
    "The quick brown fox jumps over the lazy dog. DON'T SHOUT, I'M TELLING YOU'LL SEE WE'VE HE'D IT'S.\n"
    "don't i'm you're they'll he'd she's we've it's 'S 'T 'Re 'vE 'Ll 'D 'x 'ſ 'ſt\n"
    "def f(x):\n\treturn x**2 + 12345678 - 0.5e-10  # comment\n\n\n    if a  !=  b:\n\t\tpass\r\n"
    "Numbers: 1 22 333 4444 55555 666666 1234567890123 3.14159 1,000,000 ٣٤٥ ６７８ ⅫⅩ ½ ²\n"
    "中文测试：我们今天去公园散步。日本語のテキスト、カタカナ。한국어 텍스트입니다.\n"
    "Emoji 😀🎉👍🏽 👨‍👩‍👧 ❤️ flags 🇫🇷 and café naïve résumé Ærøskøbing Straße ĳ\n"
    "Mixed scripts: Привет мир, Γειά σου κόσμε, مرحبا بالعالم, שלום עולם, नमस्ते दुनिया\n"
    "Spaces   between\t\ttabs \n \n  \r\n\r\n trailing   \u00a0nbsp\u2003em\u3000ideo end\n"
    "Quotes “like this” — dashes – ellipses… ¡Hola! ¿Qué? x2y3 4ever Mixed123abc\n"
    "<|endoftext|>special<|im_start|>user\nhi<|im_end|> <|im_end|><|endoftext|> <user_tok> a<user_tok>b\n"
)


def corpus():
    parts = [VARIED * 4, VARIED.upper(), VARIED.lower()]
    for p in sorted(glob.glob("/usr/share/common-licenses/*"))[:12]:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                parts.append(f.read()[:40000])
        except OSError:
            pass
    for p in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))[:10]:
        with open(p, encoding="utf-8") as f:
            parts.append(f.read()[:40000])
    return parts


def random_texts(n, seed):
    rng = random.Random(seed)
    ranges = [(0x20, 0x7F), (0xA0, 0x250), (0x370, 0x530), (0x590, 0x700), (0x900, 0xA00),
              (0x3040, 0x3100), (0x4E00, 0x4F00), (0xAC00, 0xAD00), (0x1F300, 0x1F650),
              (0x2000, 0x2070), (0x660, 0x66A), (0xFF10, 0xFF20), (0x2150, 0x2190),
              (0x300, 0x370), (0x1100, 0x1200), (0x1E00, 0x1F00), (0x1F00, 0x2000)]
    ws = " \t\n\r  \u3000"
    out = []
    for _ in range(n):
        s = []
        for _ in range(rng.randint(1, 60)):
            r = rng.random()
            if r < 0.15:
                s.append(rng.choice(ws))
            elif r < 0.25:
                s.append(rng.choice("0123456789'"))
            else:
                lo, hi = rng.choice(ranges)
                s.append(chr(rng.randrange(lo, hi)))
        out.append("".join(s))
    return out


def check_texts():
    lines = VARIED.split("\n")
    extra = ["", " ", "  ", "\n", " \n ", "a  b", "x\n\ny", "'s's 's", " 1 22 333", "end ", "12345678",
             "DON'T", "I'M", "'S'T'RE'VE'M'LL'D", "\t\tx", "\n\n\n", " \r\n x", "?!\n\n", " ?!\r\n",
             "aaaa bbbb", "\u00e9\u00e9", "🎉🎉🎉", "x'\u017fy", "1\u00a02", " \u0661\u0662\u0663\u0664",
             # not NFC: decomposed accents, singletons, reordering, Hangul jamo, excluded compositions
             "cafe\u0301 nai\u0308ve", "\u212b\u2126 \u0344", "A\u0307\u0323 q\u0307\u0323",
             "\u1100\u1161\u11a8 \u1100\u1161 \uac00\u11a8", "\u0b47\u0b3e \u0915\u093c \u2adc",
             "e\u0301\u0301\u0327", "\u0301leading mark", "\u00c5\u030a",
             # Tekken / o200k: newlines and slashes after punctuation, case runs, marks, contractions
             "end.\n/path", "x)\n\n//c", ";\r\n/ /", "HTTPServer XMLHttpRequest iPhone McDonald's DON'T",
             "\u01c5ungla \u1f88\u1f00 \u02b0a\u02b0 \u4e2d\u6587ABC \u0915\u093f\u0924\u093e\u092c"]
    return [VARIED, VARIED[::-1], VARIED.swapcase()] + lines + extra + random_texts(300, 7)


def train(kind, vocab_size=1400, across=False):
    """A vocabulary trained with the family's pre-tokenizer; across=True
    trains it on whole lines of the test texts instead (no pre-tokenizer),
    so its merges cross the pre-tokenizer's piece boundaries: ids then
    differ as soon as a piece boundary does, in either direction."""
    tok = Tokenizer(models.BPE())
    bl_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bl_plain = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if kind == "gpt2":
        pre = bl_regex
    elif kind == "smollm":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl_regex])
    else:
        regex = {"llama3": LLAMA3_RE, "qwen2": QWEN2_RE, "tekken": TEKKEN_RE, "o200k": O200K_RE}[kind]
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False), bl_plain])
        if kind == "qwen2":
            tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = bl_plain if across else pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIAL, show_progress=False)
    if across:
        tok.train_from_iterator([line for t in check_texts() for line in t.split("\n")], trainer)
        tok.pre_tokenizer = pre
    else:
        tok.train_from_iterator(corpus(), trainer)
    tok.add_tokens(["<user_tok>"])
    d = json.loads(tok.to_str())
    if kind == "llama3":
        d["model"]["ignore_merges"] = True  # as Llama 3 ships it
    return Tokenizer.from_str(json.dumps(d)), d


def save(d, path, config=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(d, f, ensure_ascii=False)
    if config is not None:
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f)
    return path


def compare(hf, tok, texts, nfc=False):
    total = 0
    for text in texts:
        want = hf.encode(text, add_special_tokens=False).ids
        got = tok.encode(text, parse_special=True).tolist()
        assert got == want, (repr(text[:80]), got[:40], want[:40])
        norm = unicodedata.normalize("NFC", text) if nfc else text
        assert tok.decode(got) == hf.decode(want, skip_special_tokens=False) == norm, repr(text[:80])
        # Control tokens left as text (HF: encode_special_tokens).
        hf.encode_special_tokens = True
        try:
            want = hf.encode(text, add_special_tokens=False).ids
        finally:
            hf.encode_special_tokens = False
        got = tok.encode(text).tolist()
        assert got == want, ("special as text", repr(text[:80]))
        total += len(want)
    return total


@pytest.fixture(scope="module", params=["gpt2", "llama3", "qwen2", "smollm", "tekken", "o200k"])
def trained(request):
    hf, d = train(request.param)
    return request.param, hf, d


def test_matches_hf(trained, tmp_path):
    kind, hf, d = trained
    path = save(d, str(tmp_path / kind))
    tok = gsink.Tokenizer(path)  # a directory: tokenizer.json
    assert tok.vocab_size == hf.get_vocab_size()
    n = compare(hf, tok, check_texts(), nfc=(kind == "qwen2"))
    assert n > 5000
    # By file too, with tokenizer_config.json beside it.
    save(d, path, {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}})
    tok2 = gsink.Tokenizer.from_json(os.path.join(path, "tokenizer.json"))
    assert tok2.special == (hf.token_to_id("<|im_start|>"), hf.token_to_id("<|im_end|>"))
    assert tok.special == (None, hf.token_to_id("<|endoftext|>"))
    assert tok.token_id("<|endoftext|>") == hf.token_to_id("<|endoftext|>")
    assert tok.token_id("<user_tok>") == hf.token_to_id("<user_tok>")
    assert tok.token_id("no such token") is None


@pytest.mark.parametrize("kind", ["gpt2", "llama3", "qwen2", "smollm", "tekken", "o200k"])
def test_piece_boundaries(tmp_path, kind):
    """Merges across the pre-tokenizer's boundaries (trained on unsplit
    lines): a piece boundary placed differently from HF's changes the ids."""
    hf, d = train(kind, vocab_size=6000, across=True)
    tok = gsink.Tokenizer(save(d, str(tmp_path / kind)))
    assert compare(hf, tok, check_texts(), nfc=(kind == "qwen2")) > 5000


def test_merges_array_form(trained, tmp_path):
    kind, hf, d = trained
    d2 = json.loads(json.dumps(d))
    d2["model"]["merges"] = [m.split(" ") for m in d["model"]["merges"]]
    a = gsink.Tokenizer(save(d, str(tmp_path / "s")))
    b = gsink.Tokenizer(save(d2, str(tmp_path / "a")))
    for text in check_texts()[:80]:
        assert a.encode(text).tolist() == b.encode(text).tolist()


@pytest.mark.parametrize("kind,pre", [("llama3", "llama-bpe"), ("qwen2", "qwen2"), ("llama3", "chatglm-bpe"),
                                      ("tekken", "tekken"), ("o200k", "gpt-4o")])
def test_gguf_pre_matches_json(tmp_path, kind, pre):
    hf, d = train(kind, vocab_size=900)
    vocab = d["model"]["vocab"]
    added = {a["content"]: a for a in d["added_tokens"]}
    n = 1 + max(list(vocab.values()) + [a["id"] for a in added.values()])
    tokens = [None] * n
    for t, i in vocab.items():
        tokens[i] = t
    for t, a in added.items():
        tokens[a["id"]] = t
    types = [(3 if added[t]["special"] else 4) if t in added else 1 for t in tokens]
    kvs = [("general.architecture", ggufw.STRING, "llama"),
           ("tokenizer.ggml.model", ggufw.STRING, "gpt2"),
           ("tokenizer.ggml.pre", ggufw.STRING, pre),
           ("tokenizer.ggml.tokens", ggufw.ARRAY, tokens, ggufw.STRING),
           ("tokenizer.ggml.token_type", ggufw.ARRAY, types, ggufw.INT32),
           ("tokenizer.ggml.merges", ggufw.ARRAY, d["model"]["merges"], ggufw.STRING)]
    gpath = str(tmp_path / "tok.gguf")
    with open(gpath, "wb") as f:
        f.write(ggufw.build(kvs, []))
    g = gsink.Tokenizer(gpath)
    j = gsink.Tokenizer(save(d, str(tmp_path / "j")))
    assert g.vocab_size == j.vocab_size
    for text in check_texts():
        if kind == "qwen2":
            text = unicodedata.normalize("NFC", text)
        if pre == "chatglm-bpe":
            text = text.replace("\u017f", "s")  # llama.cpp spells (?i:'s) as '[sS]: no long-s fold
        for special in (False, True):
            assert g.encode(text, parse_special=special).tolist() == \
                j.encode(text, parse_special=special).tolist(), repr(text[:60])


def test_ignore_merges():
    # "abc" is a token no merge makes: ignore_merges takes it whole.
    base = {"version": "1.0", "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                                                "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False,
                      "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5},
                      "merges": ["a b", "b c"]}}
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        for im, want_abc in ((False, [3, 2]), (True, [5])):
            base["model"]["ignore_merges"] = im
            hf = Tokenizer.from_str(json.dumps(base))
            tok = gsink.Tokenizer(save(base, os.path.join(d, str(im))))
            assert hf.encode("abc").ids == want_abc
            assert tok.encode("abc").tolist() == want_abc
            assert tok.encode("abcab").tolist() == hf.encode("abcab").ids


def test_default_model_tokenizer():
    path = os.path.join(ROOT, "models", "default")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        pytest.skip("models/default/tokenizer.json is absent")
    hf = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tok = gsink.Tokenizer(path)
    assert tok.vocab_size == hf.get_vocab_size()
    assert tok.token_id("<|endoftext|>") == hf.token_to_id("<|endoftext|>")
    assert tok.special[1] == hf.token_to_id("<|endoftext|>")
    texts = check_texts()
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        texts.append(f.read())
    assert compare(hf, tok, texts) > 5000


def status_of(fn):
    with pytest.raises(GsinkError) as e:
        fn()
    return e.value.status, str(e.value)


def good_doc():
    return {"version": "1.0", "added_tokens": [{"id": 3, "content": "<|endoftext|>", "special": True,
                                                "single_word": False, "lstrip": False, "rstrip": False,
                                                "normalized": False}],
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                                "use_regex": True},
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}


FORMAT, UNSUPPORTED, IO = 15, 16, 14


@pytest.mark.parametrize("mutate,status,needle", [
    (lambda d: d["model"].update(type="Unigram"), UNSUPPORTED, "model type 'Unigram'"),
    (lambda d: d["model"].update(type="WordPiece"), UNSUPPORTED, "BPE only"),
    (lambda d: d["model"].update(vocab={"a": 0, "b": 0, "ab": 2}), FORMAT, "id 0 is given to both"),
    (lambda d: d["model"].update(vocab={"a": 0, "b": 1, "ab": 99999}), FORMAT, "token id 99999 is out of range"),
    (lambda d: d["model"].update(vocab={"a": -1, "b": 1, "ab": 2}), FORMAT, "no valid id"),
    (lambda d: d["model"].update(vocab={"a": "x", "b": 1, "ab": 2}), FORMAT, "no valid id"),
    (lambda d: d["model"].update(merges=["a c"]), FORMAT, "not in the vocabulary (its second token)"),
    (lambda d: d["model"].update(merges=["a b c"]), FORMAT, "is not two tokens"),
    (lambda d: d["model"].update(merges=[["a", "zz"]]), FORMAT, "not in the vocabulary"),
    (lambda d: d["model"].update(merges=["b a"]), FORMAT, "(the merged token)"),
    (lambda d: d["model"].update(merges=[3]), FORMAT, "neither"),
    (lambda d: d["model"].update(merges={}), FORMAT, "model.merges"),
    (lambda d: d["model"].pop("vocab"), FORMAT, "model.vocab"),
    (lambda d: d.pop("model"), FORMAT, "no model"),
    (lambda d: d["added_tokens"][0].update(id=1), FORMAT, "already 'b'"),
    (lambda d: d["added_tokens"][0].update(content="ab"), FORMAT, "duplicate token 'ab'"),
    (lambda d: d["added_tokens"][0].update(id=1000000), FORMAT, "token id 1000000 is out of range"),
    (lambda d: d["added_tokens"][0].update(lstrip=True), UNSUPPORTED, "lstrip"),
    (lambda d: d["added_tokens"].append({"id": 4, "content": ""}), FORMAT, "non-empty content"),
    (lambda d: d.update(normalizer={"type": "NFKC"}), UNSUPPORTED, "normalizer 'NFKC'"),
    (lambda d: d.update(decoder={"type": "WordPiece"}), UNSUPPORTED, "decoder must be ByteLevel"),
    (lambda d: d.update(pre_tokenizer=None), UNSUPPORTED, "no pre_tokenizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), UNSUPPORTED, "'Whitespace'"),
    (lambda d: d.update(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True}), UNSUPPORTED,
     "add_prefix_space"),
    (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{L}+|[0-9]+ and more text here"}, "behavior": "Isolated",
         "invert": False}, {"type": "ByteLevel", "use_regex": False}]}), UNSUPPORTED,
     "regex \"\\p{L}+|[0-9]+ and more"),
    (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_RE}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "use_regex": True}]}), UNSUPPORTED, "use_regex=true"),
    (lambda d: d["model"].update(dropout=0.1), UNSUPPORTED, "dropout"),
    (lambda d: d["model"].update(continuing_subword_prefix="##"), UNSUPPORTED, "continuing_subword_prefix"),
    (lambda d: d["model"].update(unk_token="<unk>"), FORMAT, "unk_token '<unk>'"),
    (lambda d: d["model"].update(merges=["a b", "ab <|endoftext|>"]), FORMAT, "(its second token)"),
])
def test_refused(tmp_path, mutate, status, needle):
    d = good_doc()
    gsink.Tokenizer(save(d, str(tmp_path / "ok")))  # the unmutated file loads
    mutate(d)
    st, msg = status_of(lambda: gsink.Tokenizer(save(d, str(tmp_path / "bad"))))
    assert st == status and needle in msg, (st, msg)


def test_refused_files(tmp_path):
    st, msg = status_of(lambda: gsink.Tokenizer.from_json(str(tmp_path)))
    assert st == IO and "tokenizer.json" in msg and "tiktoken" in msg
    p = tmp_path / "t.json"
    for bad in ("", "{", "[1, 2]", '{"model": {"vocab": {"a": 0, "a": 1}, "merges": []}}', "\xff"):
        p.write_bytes(bad.encode("latin-1"))
        st, msg = status_of(lambda: gsink.Tokenizer(str(p)))
        assert st == FORMAT, (bad, msg)
    save(good_doc(), str(tmp_path / "c"), {"eos_token": "<nope>"})
    st, msg = status_of(lambda: gsink.Tokenizer(str(tmp_path / "c")))
    assert st == FORMAT and "eos_token '<nope>'" in msg


def test_gpt2_style_added_token_in_vocab(tmp_path):
    d = good_doc()
    d["model"]["vocab"]["<|endoftext|>"] = 3
    tok = gsink.Tokenizer(save(d, str(tmp_path / "g")))
    assert tok.encode("ab<|endoftext|>a", parse_special=True).tolist() == [2, 3, 0]
    assert tok.special == (None, 3)



def byte_images():
    """GPT-2's bytes_to_unicode: the character standing for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def byte_level_doc(pre_tokenizer, pairs):
    """Every byte's image as a token, then merges of the given pairs of
    image texts (their results appended to the vocabulary)."""
    alph = byte_images()
    vocab = {alph[b]: b for b in range(256)}
    merges = []
    for a, b in pairs:
        merges.append(a + " " + b)
        vocab.setdefault(a + b, len(vocab))
    d = good_doc()
    d["added_tokens"] = []
    d["pre_tokenizer"] = pre_tokenizer
    d["model"].update(vocab=vocab, merges=merges)
    return d


def test_llama3_contraction_case_fold(tmp_path):
    # (?i:'s) matches 'S and, under Unicode case folding, 'ſ (U+017F): HF
    # splits "'ſy" as "'ſ" + "y", so the merge ſ+y must not apply there.
    alph = byte_images()
    im = lambda s: "".join(alph[x] for x in s.encode())  # noqa: E731
    ls = "\u017f"
    pairs = [(im(ls)[0], im(ls)[1]), (im(ls), "y"), ("'", "S"), ("'", "t"), ("S", "y"), ("t", "y")]
    for k, regex in enumerate((LLAMA3_RE, QWEN2_RE)):
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
        d = byte_level_doc(pre, pairs)
        hf = Tokenizer.from_str(json.dumps(d))
        tok = gsink.Tokenizer(save(d, str(tmp_path / str(k))))
        for text in ("x'\u017fy", "'\u017fy 'Sy 'ty", "IT'S'T'y", "'\u017f\u017fy", " 'S", "'Ty"):
            assert tok.encode(text).tolist() == hf.encode(text).ids, repr(text)
        # The split matters here: ſy is one token, 'ſy is not ' + ſy.
        assert tok.encode("\u017fy").tolist() == [d["model"]["vocab"][im(ls + "y")]]
        assert len(tok.encode("'\u017fy").tolist()) == 3


def test_id_gap(tmp_path):
    d = good_doc()
    d["model"]["vocab"]["ab"] = 9  # ids 2..8 unused, 9 merged from a + b
    d["added_tokens"][0]["id"] = 10
    d["model"]["vocab"]["ab"] = 9
    tok = gsink.Tokenizer(save(d, str(tmp_path / "g")))
    assert tok.vocab_size == 11
    assert tok.encode("abab<|endoftext|>", parse_special=True).tolist() == [9, 9, 10]
    assert tok.decode([2, 9]) == "ab"


def test_cli_text_with_tokenizer_json(tmp_path):
    """gsink-cli analyze --model DIR --text FILE tokenizes with DIR's
    tokenizer.json: the same loss as --tokens with HF's ids of the text."""
    import subprocess
    cli = os.environ.get("GSINK_CLI")
    model = os.path.join(ROOT, "models", "default")
    if not cli or not os.path.exists(os.path.join(model, "tokenizer.json")):
        pytest.skip("GSINK_CLI not set or models/default absent")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()[:4000] + " DON'T 12345678 中文 😀"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    ids = Tokenizer.from_file(os.path.join(model, "tokenizer.json")).encode(text).ids
    (tmp_path / "ids.txt").write_text(" ".join(map(str, ids)))
    losses = []
    for extra in (["--text", str(tmp_path / "t.txt")],
                  ["--text", str(tmp_path / "t.txt"), "--tokenizer", os.path.join(model, "tokenizer.json")],
                  ["--tokens", str(tmp_path / "ids.txt")]):
        out = tmp_path / "r.json"
        r = subprocess.run([cli, "analyze", "--model", model, "--seq", "48", "--batch", "2", "--json", str(out)]
                           + extra, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        with open(out) as f:
            losses.append(json.load(f)["input"]["loss"])
    assert losses[0] == losses[1] == losses[2]


@pytest.mark.parametrize("pre,want", [("llama-bpe", [5]), ("gpt2", [3, 2]), ("qwen2", [3, 2])])
def test_gguf_llama_bpe_ignores_merges(tmp_path, pre, want):
    # As llama.cpp (and Llama 3's tokenizer.json): a piece that is a token is
    # that token, whatever the merges would make of it.
    kvs = [("tokenizer.ggml.model", ggufw.STRING, "gpt2"),
           ("tokenizer.ggml.pre", ggufw.STRING, pre),
           ("tokenizer.ggml.tokens", ggufw.ARRAY, ["a", "b", "c", "ab", "bc", "abc"], ggufw.STRING),
           ("tokenizer.ggml.merges", ggufw.ARRAY, ["a b", "b c"], ggufw.STRING)]
    p = tmp_path / "t.gguf"
    p.write_bytes(ggufw.build(kvs, []))
    assert gsink.Tokenizer(str(p)).encode("abc").tolist() == want


def test_added_only_token_is_not_a_bpe_token(tmp_path):
    # "ab" only in added_tokens (special, so text when not parsed): HF's BPE
    # model does not know it, even with ignore_merges.
    d = good_doc()
    d["model"]["vocab"] = {"a": 0, "b": 1}
    d["model"]["merges"] = []
    d["model"]["ignore_merges"] = True
    d["model"]["unk_token"] = None
    d["added_tokens"][0].update(content="ab", id=2)
    d["pre_tokenizer"]["trim_offsets"] = True
    hf = Tokenizer.from_str(json.dumps(d))
    tok = gsink.Tokenizer(save(d, str(tmp_path / "x")))
    hf.encode_special_tokens = True
    assert tok.encode("ab").tolist() == hf.encode("ab").ids == [0, 1]
    hf.encode_special_tokens = False
    assert tok.encode("ab", parse_special=True).tolist() == hf.encode("ab").ids == [2]


def test_nfc_against_unicodedata(tmp_path):
    """The NFC normalizer alone: with every byte a token and no merges,
    decode(encode(text)) is the NFC of text, compared with Python's
    unicodedata (the tables' source) on strings dense in combining marks,
    Hangul jamo and syllables, precomposed letters and singletons."""
    d = byte_level_doc({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                        "use_regex": True}, [])
    d["normalizer"] = {"type": "NFC"}
    tok = gsink.Tokenizer(save(d, str(tmp_path / "n")))
    rng = random.Random(3)
    pools = [(0x41, 0x7B), (0xC0, 0x250), (0x300, 0x370), (0x370, 0x400), (0x1100, 0x1200),
             (0xAC00, 0xAC40), (0x1E00, 0x2000), (0x2126, 0x212C), (0x900, 0x980), (0xB00, 0xB80),
             (0x3099, 0x309B), (0x3040, 0x30FF), (0xF900, 0xFA10), (0x1D15E, 0x1D165), (0x591, 0x5C8),
             (0xFB1D, 0xFB50), (0x0F40, 0x0F90)]
    n_changed = 0
    for _ in range(3000):
        s = "".join(chr(rng.randrange(*rng.choice(pools))) for _ in range(rng.randint(1, 12)))
        want = unicodedata.normalize("NFC", s)
        n_changed += want != s
        assert tok.decode(tok.encode(s)) == want, ascii(s)
    assert n_changed > 500
