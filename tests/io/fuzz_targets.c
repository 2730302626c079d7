/* fuzz_targets.c - libFuzzer-style harnesses for the GGUF and safetensors
 * parsers and the GGUF tokenizer. Build one as a fuzzer with
 *   clang -fsanitize=fuzzer,address -DGSINK_FUZZ_GGUF tests/io/fuzz_targets.c ...
 * (or -DGSINK_FUZZ_SAFETENSORS, -DGSINK_FUZZ_TOKENIZER, -DGSINK_FUZZ_TOKENIZER_JSON);
 * fuzz_replay.c runs
 * them over a corpus as an ordinary test. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/io_internal.h"

int gsink_fuzz_gguf(const uint8_t *data, size_t size);
int gsink_fuzz_safetensors(const uint8_t *data, size_t size);
int gsink_fuzz_tokenizer(const uint8_t *data, size_t size);
int gsink_fuzz_tokenizer_json(const uint8_t *data, size_t size);

int gsink_fuzz_gguf(const uint8_t *data, size_t size)
{
    gsink__gguf g;
    if (gsink__gguf_parse(data, size, &g, NULL) != GSINK_OK) return 0;
    g.file.data = data; /* borrowed: not closed below */
    g.file.size = size;
    /* Walk every string array and every string, as the tokenizer does. */
    size_t sum = 0;
    for (uint64_t k = 0; k < g.n_kv; k++) {
        const gsink__gguf_kv *kv = &g.kv[k];
        if (kv->type == GSINK_GGUF_STRING && kv->s.len) sum += (uint8_t)kv->s.ptr[kv->s.len - 1];
        if (kv->type == GSINK_GGUF_ARRAY && kv->arr_type == GSINK_GGUF_STRING) {
            size_t cur = kv->arr_off;
            for (uint64_t i = 0; i < kv->arr_n; i++) {
                gsink__gguf_str s = gsink__gguf_next_str(&g, &cur);
                if (s.len) sum += (uint8_t)s.ptr[s.len - 1];
            }
        }
    }
    /* Dequantise every tensor of a known type (bounded size). */
    for (uint64_t k = 0; k < g.n_tensors; k++) {
        const gsink__gguf_tensor *t = &g.tensors[k];
        if (!gsink__ggml_block(t->type, NULL, NULL) || t->numel > (1u << 22)) continue;
        float *out = malloc((t->numel ? t->numel : 1) * sizeof(float));
        if (!out) continue;
        gsink__dequantize(t->type, data + g.data_off + t->offset, out, t->numel);
        if (t->numel) sum += out[t->numel - 1] != 0;
        free(out);
    }
    memset(&g.file, 0, sizeof g.file); /* borrowed: gsink__gguf_close must not unmap it */
    gsink__gguf_close(&g);
    return (int)(sum & 0);
}

int gsink_fuzz_safetensors(const uint8_t *data, size_t size)
{
    (void)gsink__st_check(data, size, NULL);
    return 0;
}

/* A tokenizer built from the file's vocabulary, merges and token types
 * encodes text with added tokens, bytes of every length class and invalid
 * UTF-8, with and without special-token parsing, then decodes the ids. */
int gsink_fuzz_tokenizer(const uint8_t *data, size_t size)
{
    gsink__gguf g;
    if (gsink__gguf_parse(data, size, &g, NULL) != GSINK_OK) return 0;
    g.file.data = data; /* borrowed */
    g.file.size = size;
    gsink_tokenizer *t = NULL;
    gsink_status st = gsink__tokenizer_from_gguf(&g, &t);
    memset(&g.file, 0, sizeof g.file);
    gsink__gguf_close(&g);
    if (st != GSINK_OK) return 0;
    static const char text[] = "ab <s> abab\xff\xfe a\u0120b \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 <s><s>ba\n\n"
                               "\xc0\x80 \xed\xa0\x80 zz <|end|> <0x41>";
    int32_t ids[512];
    char out[4096];
    for (unsigned flags = 0; flags < 4; flags++) {
        size_t n = 0, len = 0;
        st = gsink_tokenizer_encode(t, text, sizeof text - 1, flags, ids, 512, &n);
        if (st == GSINK_OK) (void)gsink_tokenizer_decode(t, ids, n, out, sizeof out, &len);
    }
    gsink_tokenizer_free(t);
    return 0;
}

/* The same from tokenizer.json text (HF format: vocab, merges, added
 * tokens, pre-tokenizer). */
int gsink_fuzz_tokenizer_json(const uint8_t *data, size_t size)
{
    gsink_tokenizer *t = NULL;
    if (gsink__tokenizer_from_json_text((const char *)data, size, &t) != GSINK_OK) return 0;
    static const char text[] = "ab <s> abab\xff\xfe a\u0120b \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 <s><s>ba\n\n"
                               "\xc0\x80 \xed\xa0\x80 zz <|endoftext|> 12345678 DON'T 'S\xc5\xbf \r\n\t  x"
                               "e\xcc\x81\xcc\xa3 \xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8 \xe2\x84\xab\xcc\x81\xff";
    int32_t ids[512];
    char out[4096];
    for (unsigned flags = 0; flags < 4; flags++) {
        size_t n = 0, len = 0;
        gsink_status st = gsink_tokenizer_encode(t, text, sizeof text - 1, flags, ids, 512, &n);
        if (st == GSINK_OK) (void)gsink_tokenizer_decode(t, ids, n, out, sizeof out, &len);
    }
    int32_t id;
    (void)gsink_tokenizer_token_id(t, "<|endoftext|>", &id);
    gsink_tokenizer_free(t);
    return 0;
}

#if defined(GSINK_FUZZ_GGUF)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return gsink_fuzz_gguf(data, size); }
#elif defined(GSINK_FUZZ_SAFETENSORS)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return gsink_fuzz_safetensors(data, size); }
#elif defined(GSINK_FUZZ_TOKENIZER)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return gsink_fuzz_tokenizer(data, size); }
#elif defined(GSINK_FUZZ_TOKENIZER_JSON)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return gsink_fuzz_tokenizer_json(data, size); }
#endif
