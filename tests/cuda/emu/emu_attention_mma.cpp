/* Emulated build of cuda/attention_mma.cu (see cuda_emu.h). */
#include "../../../cuda/attention_mma.cu"
