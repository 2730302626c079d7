/*
 * mma_sm80.cuh - warp-level tensor-core primitives of sm_80 and newer with
 * the register layouts of the PTX ISA (used by attention_mma.cu):
 *   mma_bf16_16816  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32,
 *                   d = a b + c (d may alias c);
 *   ldmatrix_x4 / ldmatrix_x4_trans / ldmatrix_x2 / ldmatrix_x2_trans
 *                   ldmatrix.sync.aligned.m8n8.x{4,2}{.trans}.shared.b16;
 *   pack_bf16x2     two fp32 rounded to bf16 (to nearest even) in one .b32,
 *                   the first in the low half.
 * Fragment layouts (groupID g = lane >> 2, threadID_in_group t = lane % 4;
 * a register holds two bf16, the lower index in its low half):
 *   A (16 x 16, row-major): a[0] row g, cols 2t, 2t+1; a[1] row g+8, cols
 *     2t, 2t+1; a[2] row g, cols 2t+8, 2t+9; a[3] row g+8, cols 2t+8, 2t+9.
 *   B (16 x 8, "col"): b[0] rows 2t, 2t+1 of col g; b[1] rows 2t+8, 2t+9.
 *   C, D (16 x 8 fp32): c[0], c[1] row g, cols 2t, 2t+1; c[2], c[3] row g+8.
 *   ldmatrix: lane i gives the (16-byte aligned) address of row i % 8 of
 *     matrix i / 8; register j of lane l receives row l / 4, cols 2 (l % 4),
 *     +1 of matrix j (.trans: rows 2 (l % 4), +1 of column l / 4).
 * All are warp collectives: every lane of the warp must execute them.
 * Under GSINK_CUDA_EMULATE they are the host emulation's (tests/cuda/emu),
 * which implements exactly these layouts.
 */
#ifndef GSINK_MMA_SM80_CUH
#define GSINK_MMA_SM80_CUH

#include <stdint.h>
#include <string.h>

#ifndef GSINK_CUDA_EMULATE
#include <cuda_bf16.h>
#endif

__device__ __forceinline__ void mma_bf16_16816(float *d, const uint32_t *a, const uint32_t *b, const float *c)
{
#ifdef GSINK_CUDA_EMULATE
    emu::mma_m16n8k16_bf16(d, a, b, c);
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
#endif
}

#ifndef GSINK_CUDA_EMULATE
__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}
#endif

__device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const void *p)
{
#ifdef GSINK_CUDA_EMULATE
    emu::ldmatrix(r, 4, false, p);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t *r, const void *p)
{
#ifdef GSINK_CUDA_EMULATE
    emu::ldmatrix(r, 4, true, p);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
#endif
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t *r, const void *p)
{
#ifdef GSINK_CUDA_EMULATE
    emu::ldmatrix(r, 2, false, p);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(p)));
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t *r, const void *p)
{
#ifdef GSINK_CUDA_EMULATE
    emu::ldmatrix(r, 2, true, p);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(p)));
#endif
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

#endif
