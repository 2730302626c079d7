/* Emulated build of cuda/ops.cu (see cuda_emu.h). */
#include "../../../cuda/ops.cu"
