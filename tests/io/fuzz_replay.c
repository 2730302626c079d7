/* fuzz_replay.c - runs a fuzz harness over every file of a corpus directory,
 * plus deterministic mutations of each (every truncation point, byte flips
 * and big little-endian integers written over each 8-byte slot), so the
 * corpus exercises the parsers' bounds checks as an ordinary test.
 *   fuzz_replay gguf|safetensors|tokenizer|tokenizer_json DIR */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gsink_fuzz_gguf(const uint8_t *data, size_t size);
int gsink_fuzz_safetensors(const uint8_t *data, size_t size);
int gsink_fuzz_tokenizer(const uint8_t *data, size_t size);
int gsink_fuzz_tokenizer_json(const uint8_t *data, size_t size);

static int (*target)(const uint8_t *, size_t);

/* Runs on a heap copy of exactly size bytes so ASan catches any over-read. */
static void run(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return;
    memcpy(copy, data, size);
    target(copy, size);
    free(copy);
}

static void mutate(const uint8_t *data, size_t size)
{
    run(data, size);
    size_t step = size > 4096 ? size / 1024 : 1;
    for (size_t cut = 0; cut < size; cut += step) run(data, cut);
    uint8_t *m = malloc(size ? size : 1);
    if (!m) return;
    static const uint64_t vals[] = {0, 1, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 1ull << 32, 1ull << 62,
                                    UINT64_MAX, UINT64_MAX - 31};
    size_t limit = size < 2048 ? size : 2048; /* headers live at the front */
    for (size_t pos = 0; pos + 8 <= limit; pos += 4) {
        for (size_t v = 0; v < sizeof vals / sizeof vals[0]; v++) {
            memcpy(m, data, size);
            for (int b = 0; b < 8; b++) m[pos + b] = (uint8_t)(vals[v] >> (8 * b));
            run(m, size);
        }
    }
    uint32_t x = 12345;
    for (int r = 0; r < 2000 && size; r++) {
        memcpy(m, data, size);
        for (int k = 0; k < 4; k++) {
            x = x * 1103515245u + 12345u;
            m[(x >> 8) % limit] ^= (uint8_t)(1u << (x & 7));
        }
        run(m, size);
    }
    free(m);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s gguf|safetensors|tokenizer|tokenizer_json CORPUS_DIR\n", argv[0]);
        return 2;
    }
    if (!strcmp(argv[1], "gguf")) target = gsink_fuzz_gguf;
    else if (!strcmp(argv[1], "safetensors")) target = gsink_fuzz_safetensors;
    else if (!strcmp(argv[1], "tokenizer")) target = gsink_fuzz_tokenizer;
    else if (!strcmp(argv[1], "tokenizer_json")) target = gsink_fuzz_tokenizer_json;
    else return 2;
    DIR *d = opendir(argv[2]);
    if (!d) {
        fprintf(stderr, "cannot open %s\n", argv[2]);
        return 1;
    }
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[2], e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long sz = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = malloc(sz > 0 ? (size_t)sz : 1);
        if (buf && fread(buf, 1, (size_t)sz, f) == (size_t)sz) {
            mutate(buf, (size_t)sz);
            n++;
        }
        free(buf);
        fclose(f);
    }
    closedir(d);
    printf("replayed %d corpus files (with mutations)\n", n);
    return n > 0 ? 0 : 1;
}
