/* Emulated build of cuda/attention_tc.cu (see cuda_emu.h). */
#include "../../../cuda/attention_tc.cu"
