/* quant.c - dequantisation of ggml tensor types to float32, written from the
 * ggml block layouts (ggml-common.h / ggml-quants.c reference dequantisers). */
#include <string.h>

#include "io_internal.h"

#define QK 32
#define QK_K 256

int gsink__ggml_block(uint32_t type, size_t *block_elems, size_t *block_bytes)
{
    size_t e, b;
    switch (type) {
    case GSINK_GGML_F32: e = 1; b = 4; break;
    case GSINK_GGML_F16: e = 1; b = 2; break;
    case GSINK_GGML_BF16: e = 1; b = 2; break;
    case GSINK_GGML_Q4_0: e = QK; b = 2 + QK / 2; break;          /* d, qs[16] */
    case GSINK_GGML_Q4_1: e = QK; b = 4 + QK / 2; break;          /* d, m, qs[16] */
    case GSINK_GGML_Q5_0: e = QK; b = 2 + 4 + QK / 2; break;      /* d, qh[4], qs[16] */
    case GSINK_GGML_Q5_1: e = QK; b = 4 + 4 + QK / 2; break;      /* d, m, qh[4], qs[16] */
    case GSINK_GGML_Q8_0: e = QK; b = 2 + QK; break;              /* d, qs[32] */
    case GSINK_GGML_Q4_K: e = QK_K; b = 4 + 12 + QK_K / 2; break; /* d, dmin, scales, qs */
    case GSINK_GGML_Q5_K: e = QK_K; b = 4 + 12 + QK_K / 8 + QK_K / 2; break;
    case GSINK_GGML_Q6_K: e = QK_K; b = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2; break;
    default: return 0;
    }
    if (block_elems) *block_elems = e;
    if (block_bytes) *block_bytes = b;
    return 1;
}

const char *gsink__ggml_type_name(uint32_t type)
{
    switch (type) {
    case GSINK_GGML_F32: return "F32";
    case GSINK_GGML_F16: return "F16";
    case GSINK_GGML_BF16: return "BF16";
    case GSINK_GGML_Q4_0: return "Q4_0";
    case GSINK_GGML_Q4_1: return "Q4_1";
    case GSINK_GGML_Q5_0: return "Q5_0";
    case GSINK_GGML_Q5_1: return "Q5_1";
    case GSINK_GGML_Q8_0: return "Q8_0";
    case GSINK_GGML_Q4_K: return "Q4_K";
    case GSINK_GGML_Q5_K: return "Q5_K";
    case GSINK_GGML_Q6_K: return "Q6_K";
    case 9: return "Q8_1";
    case 10: return "Q2_K";
    case 11: return "Q3_K";
    case 15: return "Q8_K";
    default: return "unknown";
    }
}

static float h2f(const uint8_t *p) { return gsink__f16_to_f32(gsink__rd16(p)); }

/* 6-bit scale and min j of a K-quant super-block (12 packed bytes). */
static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void deq_q4_0(const uint8_t *b, float *y)
{
    float d = h2f(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = (float)((qs[j] & 0x0F) - 8) * d;
        y[j + QK / 2] = (float)((qs[j] >> 4) - 8) * d;
    }
}

static void deq_q4_1(const uint8_t *b, float *y)
{
    float d = h2f(b), m = h2f(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = (float)(qs[j] & 0x0F) * d + m;
        y[j + QK / 2] = (float)(qs[j] >> 4) * d + m;
    }
}

static void deq_q5_0(const uint8_t *b, float *y)
{
    float d = h2f(b);
    uint32_t qh = gsink__rd32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < QK / 2; j++) {
        uint8_t xh0 = (uint8_t)(((qh >> j) << 4) & 0x10);
        uint8_t xh1 = (uint8_t)((qh >> (j + 12)) & 0x10);
        int x0 = ((qs[j] & 0x0F) | xh0) - 16;
        int x1 = ((qs[j] >> 4) | xh1) - 16;
        y[j] = (float)x0 * d;
        y[j + QK / 2] = (float)x1 * d;
    }
}

static void deq_q5_1(const uint8_t *b, float *y)
{
    float d = h2f(b), m = h2f(b + 2);
    uint32_t qh = gsink__rd32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < QK / 2; j++) {
        uint8_t xh0 = (uint8_t)(((qh >> j) << 4) & 0x10);
        uint8_t xh1 = (uint8_t)((qh >> (j + 12)) & 0x10);
        int x0 = (qs[j] & 0x0F) | xh0;
        int x1 = (qs[j] >> 4) | xh1;
        y[j] = (float)x0 * d + m;
        y[j + QK / 2] = (float)x1 * d + m;
    }
}

static void deq_q8_0(const uint8_t *b, float *y)
{
    float d = h2f(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < QK; j++) y[j] = (float)qs[j] * d;
}

static void deq_q4_k(const uint8_t *b, float *y)
{
    float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *scales = b + 4, *q = b + 16;
    int is = 0;
    for (int j = 0; j < QK_K; j += 64) {
        uint8_t sc, m;
        scale_min_k4(is + 0, scales, &sc, &m);
        float d1 = d * sc, m1 = dmin * m;
        scale_min_k4(is + 1, scales, &sc, &m);
        float d2 = d * sc, m2 = dmin * m;
        for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xF) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        q += 32;
        is += 2;
    }
}

static void deq_q5_k(const uint8_t *b, float *y)
{
    float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + 16 + QK_K / 8;
    int is = 0;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < QK_K; j += 64) {
        uint8_t sc, m;
        scale_min_k4(is + 0, scales, &sc, &m);
        float d1 = d * sc, m1 = dmin * m;
        scale_min_k4(is + 1, scales, &sc, &m);
        float d2 = d * sc, m2 = dmin * m;
        for (int l = 0; l < 32; l++) *y++ = d1 * (float)((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        ql += 32;
        is += 2;
        u1 = (uint8_t)(u1 << 2);
        u2 = (uint8_t)(u2 << 2);
    }
}

static void deq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + QK_K / 2;
    const int8_t *sc = (const int8_t *)(b + QK_K / 2 + QK_K / 4);
    float d = h2f(b + QK_K / 2 + QK_K / 4 + QK_K / 16);
    for (int n = 0; n < QK_K; n += 128) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * (float)sc[is + 0] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

void gsink__dequantize(uint32_t type, const uint8_t *src, float *dst, size_t n)
{
    size_t be, bb;
    if (!gsink__ggml_block(type, &be, &bb)) return;
    size_t nb = n / be;
    switch (type) {
    case GSINK_GGML_F32:
        memcpy(dst, src, n * 4);
        return;
    case GSINK_GGML_F16:
        for (size_t i = 0; i < n; i++) dst[i] = gsink__f16_to_f32(gsink__rd16(src + 2 * i));
        return;
    case GSINK_GGML_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = gsink__bf16_to_f32(gsink__rd16(src + 2 * i));
        return;
    default: break;
    }
    void (*fn)(const uint8_t *, float *) = NULL;
    switch (type) {
    case GSINK_GGML_Q4_0: fn = deq_q4_0; break;
    case GSINK_GGML_Q4_1: fn = deq_q4_1; break;
    case GSINK_GGML_Q5_0: fn = deq_q5_0; break;
    case GSINK_GGML_Q5_1: fn = deq_q5_1; break;
    case GSINK_GGML_Q8_0: fn = deq_q8_0; break;
    case GSINK_GGML_Q4_K: fn = deq_q4_k; break;
    case GSINK_GGML_Q5_K: fn = deq_q5_k; break;
    case GSINK_GGML_Q6_K: fn = deq_q6_k; break;
    default: return;
    }
    for (size_t i = 0; i < nb; i++) fn(src + i * bb, dst + i * be);
}
