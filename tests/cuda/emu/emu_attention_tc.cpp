/* Emulated build of cuda/attention_tc.cu (see cuda_emu.h). */
#include "../../../cuda/attention_tc.cu"

/* Test hook, exported by the emulated module only (gsink-cuda-emu.map): the
 * backend table's attention_bwd does not take column statistics, so
 * test_cuda_ops reaches the TF32 backward's statistics through this. */
extern "C" __attribute__((visibility("default"))) gsink_status
gsink_cuda_emu_attention_tc_bwd(gsink_backend *be, const gsink_attn_shape *s, float *dq, float *dk,
                                float *dv, const float *dy, const float *q, const float *k,
                                const float *v, const float *lse, const float *D,
                                gsink_attn_stats stats)
{
    return cuda_attention_tc_bwd(be, s, dq, dk, dv, dy, q, k, v, lse, D, stats);
}
