/* Emulated build of cuda/attention.cu (see cuda_emu.h). */
#include "../../../cuda/attention.cu"
