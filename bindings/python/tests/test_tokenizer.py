"""Tokenizer through the binding, on a GGUF written here with a tiny
GPT-2 byte-level BPE vocabulary (expected ids worked out by hand)."""

import struct

import numpy as np
import pytest

import gsink

STRING, ARRAY, INT32, UINT32 = 8, 9, 5, 4


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def gstr(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, value, arr_type=None):
    out = gstr(key) + struct.pack("<I", vtype)
    if vtype == STRING:
        return out + gstr(value)
    if vtype == UINT32:
        return out + struct.pack("<I", value)
    out += struct.pack("<IQ", arr_type, len(value))
    if arr_type == STRING:
        return out + b"".join(gstr(v) for v in value)
    return out + b"".join(struct.pack("<i", v) for v in value)


B2U = bytes_to_unicode()
SP = B2U[ord(" ")]  # "Ġ"
# ids 0..255: single bytes in byte order; then merges; then the special token
TOKENS = [B2U[b] for b in range(256)] + ["he", "ll", "hell", "hello", SP + "w", "<|endoftext|>"]
MERGES = ["h e", "l l", "he ll", "hell o", SP + " w"]
HE, LL, HELL, HELLO, SPW, EOT = range(256, 262)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    types = [1] * (len(TOKENS) - 1) + [3]  # normal..., control
    kvs = [kv("general.architecture", STRING, "llama"),
           kv("tokenizer.ggml.model", STRING, "gpt2"),
           kv("tokenizer.ggml.tokens", ARRAY, TOKENS, STRING),
           kv("tokenizer.ggml.merges", ARRAY, MERGES, STRING),
           kv("tokenizer.ggml.token_type", ARRAY, types, INT32),
           kv("tokenizer.ggml.bos_token_id", UINT32, EOT),
           kv("tokenizer.ggml.eos_token_id", UINT32, EOT)]
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    data += b"\0" * ((-len(data)) % 32)
    p = tmp_path_factory.mktemp("tok") / "tok.gguf"
    p.write_bytes(data)
    return p


def test_encode_decode(gguf):
    with gsink.Tokenizer(gguf) as tok:
        assert tok.vocab_size == len(TOKENS)
        assert tok.special == (EOT, EOT)
        ids = tok.encode("hello world")
        assert ids.dtype == np.int32
        # "hello" -> one token; " world" -> "Ġw" + o r l d bytes
        want = [HELLO, SPW] + [ord(c) for c in "orld"]
        assert ids.tolist() == want
        assert tok.decode(ids) == "hello world"
        assert tok.encode("hello", add_bos=True).tolist() == [EOT, HELLO]
        assert tok.encode("<|endoftext|>he", parse_special=True).tolist() == [EOT, HE]
        long_text = "hello " * 500
        assert tok.decode(tok.encode(long_text)) == long_text
        text = "é€"  # multi-byte UTF-8 round trip through byte tokens
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode([]) == ""
        assert tok.encode("").tolist() == []
        with pytest.raises(gsink.GsinkError):
            tok.decode([len(TOKENS) + 5])
    with pytest.raises(gsink.ClosedError):
        tok.encode("x")


def test_unencodable_input_raises(tmp_path):
    # A vocabulary of two tokens, no byte fallback and no unknown token:
    # "hello world" cannot be encoded from byte 2 ("l") on; the binding
    # raises InvalidArgumentError (a ValueError) with the library's message.
    kvs = [kv("general.architecture", STRING, "llama"),
           kv("tokenizer.ggml.model", STRING, "gpt2"),
           kv("tokenizer.ggml.tokens", ARRAY, ["h", "e"], STRING),
           kv("tokenizer.ggml.merges", ARRAY, [], STRING)]
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    p = tmp_path / "two.gguf"
    p.write_bytes(data + b"\0" * ((-len(data)) % 32))
    with gsink.Tokenizer(p) as tok:
        with pytest.raises(gsink.InvalidArgumentError) as e:
            tok.encode("hello world")
        assert isinstance(e.value, ValueError)
        assert e.value.status_name == "GSINK_ERR_INVALID_ARGUMENT"
        assert "byte 2 " in e.value.message and "no token" in e.value.message
        assert tok.encode("heh").tolist() == [0, 1, 0]
