/*
 * test_emu_mma.cpp - self-test of the emulated mma.sync m16n8k16 (bf16) and
 * ldmatrix (cuda/mma_sm80.cuh on tests/cuda/emu/cuda_emu.h).
 *
 * The kernels of attention_mma.cu turn accumulators into operands in
 * registers, so they are only right on the device if the emulation's
 * fragment layouts are the PTX ISA's. This test states those layouts a
 * second time, independently, as the ISA writes them (groupID g = lane >> 2,
 * threadID_in_group t = lane % 4):
 *   A 16x16 row: a_i at row g (i < 2 or 4 <= i < 6) else g + 8,
 *                col 2t + (i & 1) (+ 8 for i >= 4);
 *   B 16x8 col:  b_i at row 2t + (i & 1) (+ 8 for i >= 2), col g;
 *   C/D 16x8:    c_i at row g (i < 2) else g + 8, col 2t + (i & 1);
 *   ldmatrix:    lane l holds row l / 4, cols 2 (l % 4), +1 of each matrix
 *                (.trans: the transposed matrix's),
 * and checks one warp's ldmatrix (x4, x4.trans, x2, x2.trans) results
 * element by element against them, and an mma against a plain loop
 * (small integer values: every sum is exact, so the comparison is bitwise).
 * It also checks that a misaligned ldmatrix address and a divergent mma are
 * reported as launch errors.
 */
#include "cuda_emu.h"
#include "mma_sm80.cuh"

static int failures;
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (failures++ < 20) {                                                                 \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fputc('\n', stderr);                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

enum { LD = 24 }; /* row stride (bf16) of the shared tiles: 48 bytes, 16-byte aligned rows */

/* A 16 x 16, B 16 x 8 (as K x N row-major "Bk" and N x K row-major "Bn"), C 16 x 8 */
static float Ah[16][16], Bh[16][8], Ch[16][8];
/* per lane: ldmatrix results and the mma result */
static uint32_t la[32][4], lbt[32][2], lbn[32][2], lx4t[32][4];
static float ld_[32][4];

static float bf(uint32_t w, int hi)
{
    uint32_t u = hi ? (w & 0xffff0000u) : (w << 16);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

__global__ void k_mma_selftest(int misalign, int diverge)
{
    alignas(16) __shared__ __nv_bfloat16 As[16 * LD], Bk[16 * LD], Bn[8 * LD];
    const int lane = threadIdx.x & 31;
    for (int i = lane; i < 16 * 16; i += 32) As[(i / 16) * LD + i % 16] = __float2bfloat16_rn(Ah[i / 16][i % 16]);
    for (int i = lane; i < 16 * 8; i += 32) {
        Bk[(i / 8) * LD + i % 8] = __float2bfloat16_rn(Bh[i / 8][i % 8]);
        Bn[(i % 8) * LD + i / 8] = __float2bfloat16_rn(Bh[i / 8][i % 8]);
    }
    __syncwarp();
    uint32_t a[4], b[2], bt[2], x4t[4];
    /* A: matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15) */
    ldmatrix_x4(a, As + (lane % 16) * LD + 8 * (lane / 16) + (misalign && lane == 5 ? 1 : 0));
    /* B from K x N rows with .trans: matrices (k 0-7), (k 8-15) */
    ldmatrix_x2_trans(bt, Bk + (lane % 16) * LD);
    /* B from N x K rows: matrices (k 0-7), (k 8-15) */
    ldmatrix_x2(b, Bn + (lane % 8) * LD + 8 * ((lane / 8) % 2));
    /* x4.trans: the four 8 x 8 blocks of A, transposed */
    ldmatrix_x4_trans(x4t, As + (lane % 16) * LD + 8 * (lane / 16));
    float c[4], d[4];
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; i++) c[i] = Ch[g + 8 * (i >> 1)][2 * t + (i & 1)];
    if (!(diverge && lane == 3)) mma_bf16_16816(d, a, b, c);
    else d[0] = d[1] = d[2] = d[3] = 0.0f;
    for (int i = 0; i < 4; i++) {
        la[lane][i] = a[i];
        lx4t[lane][i] = x4t[i];
        ld_[lane][i] = d[i];
    }
    for (int i = 0; i < 2; i++) {
        lbt[lane][i] = bt[i];
        lbn[lane][i] = b[i];
    }
}

static void run(int misalign, int diverge)
{
    GSINK_LAUNCH(k_mma_selftest, dim3(1), 32, 0, 0)(misalign, diverge);
}

int main(void)
{
    for (int r = 0; r < 16; r++)
        for (int k = 0; k < 16; k++) Ah[r][k] = (float)((r * 7 + k * 3) % 17 - 8);
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 8; n++) Bh[k][n] = (float)((k * 5 + n * 11) % 13 - 6) * 0.5f;
    for (int r = 0; r < 16; r++)
        for (int n = 0; n < 8; n++) Ch[r][n] = (float)(r - n) * 0.25f;

    run(0, 0);
    EXPECT(cudaGetLastError() == cudaSuccess, "clean launch reported an error");
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 8; i++) { /* A fragment, element a_i in register i / 2, half i % 2 */
            const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
            EXPECT(bf(la[l][i / 2], i & 1) == Ah[row][col], "A lane %d a%d", l, i);
        }
        for (int i = 0; i < 4; i++) { /* B fragment b_i, both ways of loading it */
            const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0), col = g;
            EXPECT(bf(lbt[l][i / 2], i & 1) == Bh[row][col], "B (trans) lane %d b%d", l, i);
            EXPECT(bf(lbn[l][i / 2], i & 1) == Bh[row][col], "B lane %d b%d", l, i);
        }
        for (int j = 0; j < 4; j++) /* x4.trans: block j = (rows 8 (j % 2).., cols 8 (j / 2)..) transposed */
            for (int h = 0; h < 2; h++) {
                const int row = 8 * (j % 2) + 2 * t + h, col = 8 * (j / 2) + g;
                EXPECT(bf(lx4t[l][j], h) == Ah[row][col], "A x4.trans lane %d reg %d half %d", l, j, h);
            }
        for (int i = 0; i < 4; i++) { /* D = A B + C, exact */
            const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
            double ref = Ch[row][col];
            for (int k = 0; k < 16; k++) ref += (double)Ah[row][k] * Bh[k][col];
            EXPECT(ld_[l][i] == (float)ref, "D lane %d c%d: %g, expected %g", l, i, ld_[l][i], ref);
        }
    }
    run(1, 0);
    EXPECT(cudaGetLastError() == emu::ERR_MISALIGNED, "misaligned ldmatrix address not reported");
    run(0, 1);
    EXPECT(cudaGetLastError() == emu::ERR_WARP_DIVERGENT, "divergent mma not reported");
    if (failures) fprintf(stderr, "%d failures\n", failures);
    else fprintf(stderr, "mma / ldmatrix emulation: fragment layouts as in the PTX ISA\n");
    return failures ? 1 : 0;
}
