/* Emulated build of cuda/backend_cuda.cu (see cuda_emu.h). */
#include "../../../cuda/backend_cuda.cu"
