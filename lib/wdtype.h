/*
 * wdtype.h - weight storage types (gsink_weight_dtype): element sizes and the
 * scalar conversions fp32 <-> bfloat16 / IEEE half, shared by the CPU
 * backend, the CUDA kernels (host and device) and the loaders.
 *
 * fp32 -> 16 bits rounds to nearest, ties to even, with integer arithmetic
 * only (no FMA contraction or flush-to-zero can change a result):
 *   bf16: overflow rounds to +-Inf, any NaN becomes 0x7fc0 (torch's
 *         .to(torch.bfloat16));
 *   fp16: |x| >= 65520 becomes +-Inf, a NaN keeps its sign with quiet
 *         payload 0x7e00, and results below 2^-14 are subnormal (torch's .half()).
 * 16 bits -> fp32 is exact.
 */
#ifndef GSINK_WDTYPE_H
#define GSINK_WDTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__) || defined(GSINK_CUDA_EMULATE)
#define GSINK_WD_FN static inline __host__ __device__
#else
#define GSINK_WD_FN static inline
#endif

/* Values of gsink_weight_dtype (gsink.h), repeated for backend code. */
enum { GSINK_WD_F32 = 0, GSINK_WD_BF16 = 1, GSINK_WD_F16 = 2 };

/* Bytes per element of a storage type (0 for an unknown one). */
GSINK_WD_FN size_t gsink__wd_size(int dtype)
{
    return dtype == GSINK_WD_F32 ? 4 : (dtype == GSINK_WD_BF16 || dtype == GSINK_WD_F16) ? 2 : 0;
}

GSINK_WD_FN uint32_t gsink__f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

GSINK_WD_FN float gsink__bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

GSINK_WD_FN uint16_t gsink__f32_to_bf16(float f)
{
    uint32_t u = gsink__f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

GSINK_WD_FN float gsink__bf16_f32(uint16_t h) { return gsink__bits_f32((uint32_t)h << 16); }

GSINK_WD_FN uint16_t gsink__f32_to_f16(float f)
{
    uint32_t x = gsink__f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);     /* NaN */
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);    /* >= 65520: Inf */
    if (x >= 0x38800000u) {                                     /* normal half */
        uint32_t r = x - 0x38000000u;                           /* exponent bias 127 -> 15 */
        r += 0xfffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    if (x < 0x33000000u) return sign;                           /* below 2^-25: zero */
    uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u, shift = 126u - e; /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

GSINK_WD_FN float gsink__f16_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, bits;
    if (e == 0x1fu) {
        bits = sign | 0x7f800000u | (m << 13);
    } else if (e == 0) {
        if (m == 0) {
            bits = sign;
        } else {
            e = 113;
            while (!(m & 0x400u)) {
                m <<= 1;
                e--;
            }
            bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
        }
    } else {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    }
    return gsink__bits_f32(bits);
}

/* Element i of a weight array of the given storage type, as fp32. */
GSINK_WD_FN float gsink__wd_load(const void *p, int dtype, size_t i)
{
    if (dtype == GSINK_WD_BF16) return gsink__bf16_f32(((const uint16_t *)p)[i]);
    if (dtype == GSINK_WD_F16) return gsink__f16_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

/* Stores x, rounded to the storage type, as element i. */
GSINK_WD_FN void gsink__wd_store(void *p, int dtype, size_t i, float x)
{
    if (dtype == GSINK_WD_BF16) ((uint16_t *)p)[i] = gsink__f32_to_bf16(x);
    else if (dtype == GSINK_WD_F16) ((uint16_t *)p)[i] = gsink__f32_to_f16(x);
    else ((float *)p)[i] = x;
}

#endif
