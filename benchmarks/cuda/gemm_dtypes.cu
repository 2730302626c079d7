/*
 * gemm_dtypes.cu - what the storage type of the GEMM operands costs in a
 * training step (issue 18: "store activations in bf16 on the bf16 path").
 *
 *   gemm_dtypes [--dims 512,512,512,1408,16,50257] [--batch 8] [--seq 1024] [--iters 20]
 *
 * --dims: d_model, query width (heads x d_head), key/value width, d_ff,
 * layers, vocabulary; the default is the paper-0.1b preset (lib/config.c).
 * Times, with cuBLAS directly, every matrix product of one forward + backward
 * step of that shape (per layer: the q, k, v, o, gate, up, down projections,
 * each forward, data gradient and weight gradient; then the LM head, as the
 * model runs them: row-major, weights (out, in), the same transposes) for
 * five operand types:
 *   fp32        fp32 in and out, CUBLAS_COMPUTE_32F (the FP32 model)
 *   tf32        fp32 in and out, CUBLAS_COMPUTE_32F_FAST_TF32 (the TF32 model)
 *   bf16-fast   fp32 in and out, CUBLAS_COMPUTE_32F_FAST_16BF (the BF16 model
 *               today: cuBLAS rounds the fp32 operands itself)
 *   bf16-in     bf16 A and B, fp32 C, CUBLAS_COMPUTE_32F (bf16 activations
 *               and weights, fp32 outputs)
 *   bf16        bf16 A, B and C, CUBLAS_COMPUTE_32F (all bf16, as PyTorch
 *               autocast)
 * and prints each product's median time and TFLOP/s, the step's total per
 * type and its ratio to bf16-fast: how much of the step's GEMM time bf16
 * storage would save. Values are random in [-0.5, 0.5); only times matter.
 * Exit status 77 without a CUDA device.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <vector>

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)
#define CB(x)                                                                        \
    do {                                                                             \
        cublasStatus_t s_ = (x);                                                     \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                           \
            fprintf(stderr, "%s:%d %s: cuBLAS status %d\n", __FILE__, __LINE__, #x, \
                    (int)s_);                                                        \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

struct variant {
    const char *name;
    cudaDataType ab, c;
    cublasComputeType_t compute;
};

static const variant VARIANTS[] = {
    {"fp32", CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F},
    {"tf32", CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32},
    {"bf16-fast", CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_16BF},
    {"bf16-in", CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F},
    {"bf16", CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F},
};
enum { NV = sizeof VARIANTS / sizeof VARIANTS[0], BASE = 2 };

/* One product of the step: row-major C(M, N) = op(A) op(B), trans_a: A stored
 * (K, M), trans_b: B stored (N, K); `count` products of this shape a step. */
struct product {
    std::string name;
    int ta, tb, M, N, K, count;
};

/* Row-major C = op(A) op(B) as column-major C^T = op(B)^T op(A)^T. */
static void gemm_rm(cublasHandle_t h, const product &p, const void *A, const void *B, void *C, const variant &v)
{
    const float one = 1.0f, zero = 0.0f;
    int lda = p.ta ? p.M : p.K, ldb = p.tb ? p.K : p.N, ldc = p.N;
    CB(cublasGemmEx(h, p.tb ? CUBLAS_OP_T : CUBLAS_OP_N, p.ta ? CUBLAS_OP_T : CUBLAS_OP_N, p.N, p.M, p.K, &one, B,
                    v.ab, ldb, A, v.ab, lda, &zero, C, v.c, ldc, v.compute, CUBLAS_GEMM_DEFAULT));
}

__global__ void k_fill(void *p, size_t n, int bf16, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t s = (i + 1) * 6364136223846793005ull + seed;
        s ^= s >> 29;
        float x = (float)((s >> 11) & 0xFFFFFF) * (1.0f / 16777216.0f) - 0.5f;
        if (bf16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(x);
        else ((float *)p)[i] = x;
    }
}

static const char *arg(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return def;
}

int main(int argc, char **argv)
{
    const char *dims = arg(argc, argv, "--dims", "512,512,512,1408,16,50257"); /* paper-0.1b */
    int B = atoi(arg(argc, argv, "--batch", "8")), T = atoi(arg(argc, argv, "--seq", "1024"));
    int iters = atoi(arg(argc, argv, "--iters", "20"));
    int d = 0, qd = 0, kd = 0, ff = 0, L = 0, V = 0;
    if (sscanf(dims, "%d,%d,%d,%d,%d,%d", &d, &qd, &kd, &ff, &L, &V) != 6 || d <= 0 || qd <= 0 || kd <= 0 ||
        ff <= 0 || L <= 0 || V <= 0 || B <= 0 || T <= 0 || iters <= 0 || iters > 1000) {
        fprintf(stderr, "usage: gemm_dtypes [--dims d,q,kv,ff,layers,vocab] [--batch B] [--seq T] [--iters N]\n");
        return 2;
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        fprintf(stderr, "gemm_dtypes: no CUDA device\n");
        return 77;
    }
    const int N = B * T;
    std::vector<product> ps;
    struct proj { const char *name; int in, out; };
    const proj projs[] = {{"q", d, qd}, {"k", d, kd}, {"v", d, kd}, {"o", qd, d},
                          {"gate", d, ff}, {"up", d, ff}, {"down", ff, d}};
    for (const proj &p : projs) {
        ps.push_back({std::string(p.name) + " fwd", 0, 1, N, p.out, p.in, L});   /* y = x W^T */
        ps.push_back({std::string(p.name) + " dx", 0, 0, N, p.in, p.out, L});    /* dx = dy W */
        ps.push_back({std::string(p.name) + " dW", 1, 0, p.out, p.in, N, L});    /* dW += dy^T x */
    }
    ps.push_back({"lm_head fwd", 0, 1, N, V, d, 1});
    ps.push_back({"lm_head dx", 0, 0, N, d, V, 1});
    ps.push_back({"lm_head dW", 1, 0, V, d, N, 1});

    size_t most = 0;
    for (const product &p : ps)
        most = std::max({most, (size_t)p.M * p.K, (size_t)p.K * p.N, (size_t)p.M * p.N});
    void *A, *Bm, *C;
    CK(cudaMalloc(&A, most * 4));
    CK(cudaMalloc(&Bm, most * 4));
    CK(cudaMalloc(&C, most * 4));
    cublasHandle_t h;
    CB(cublasCreate(&h));
    void *ws = NULL;
    size_t ws_bytes = 32u << 20;
    CK(cudaMalloc(&ws, ws_bytes));
    CB(cublasSetWorkspace(h, ws, ws_bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    int ver = 0;
    CB(cublasGetVersion(h, &ver));
    printf("device: %s, cuBLAS %d\n", prop.name, ver);
    printf("config: B %d T %d (N %d, d %d, q %d, kv %d, ff %d, L %d, V %d), median of %d\n", B, T, N, d, qd, kd, ff, L,
           V, iters);

    double total[NV] = {0};
    std::vector<float> t(iters);
    printf("%-12s %6s %6s %6s", "product", "M", "N", "K");
    for (int v = 0; v < NV; v++) printf(" %16s", VARIANTS[v].name);
    printf("   (ms / TFLOP/s)\n");
    for (const product &p : ps) {
        printf("%-12s %6d %6d %6d", p.name.c_str(), p.M, p.N, p.K);
        double flops = 2.0 * p.M * p.N * p.K;
        for (int vi = 0; vi < NV; vi++) {
            const variant &v = VARIANTS[vi];
            k_fill<<<1024, 256>>>(A, most, v.ab == CUDA_R_16BF, 1);
            k_fill<<<1024, 256>>>(Bm, most, v.ab == CUDA_R_16BF, 2);
            CK(cudaGetLastError());
            for (int w = 0; w < 3; w++) gemm_rm(h, p, A, Bm, C, v);
            for (int it = 0; it < iters; it++) {
                CK(cudaEventRecord(e0));
                gemm_rm(h, p, A, Bm, C, v);
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                CK(cudaEventElapsedTime(&t[it], e0, e1));
            }
            std::sort(t.begin(), t.end());
            double med = iters % 2 ? t[iters / 2] : 0.5 * (t[iters / 2 - 1] + t[iters / 2]);
            total[vi] += med * p.count;
            printf(" %8.4f/%7.1f", med, flops / (med * 1e-3) * 1e-12);
        }
        printf("\n");
    }
    double step_flops = 0;
    for (const product &p : ps) step_flops += 2.0 * p.M * p.N * p.K * p.count;
    printf("step GEMM FLOPs: %.3f TFLOP\n", step_flops * 1e-12);
    for (int vi = 0; vi < NV; vi++)
        printf("step_gemm_ms %-10s %8.3f  (%6.1f TFLOP/s, %.2fx the time of %s)\n", VARIANTS[vi].name, total[vi],
               step_flops / (total[vi] * 1e-3) * 1e-12, total[vi] / total[BASE], VARIANTS[BASE].name);
    cublasDestroy(h);
    cudaFree(ws);
    cudaFree(A);
    cudaFree(Bm);
    cudaFree(C);
    return 0;
}
