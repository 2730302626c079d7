/* Built when the CUDA backend is disabled: no CUDA devices. */
#include <stdio.h>

#include "internal.h"

gsink_status gsink_cuda_backend_create(int device_index, gsink_backend **out)
{
    (void)device_index;
    if (out) *out = NULL;
    return GSINK_ERR_NO_DEVICE;
}

int gsink_cuda_device_count(void) { return 0; }

void gsink_cuda_describe(int index, char *buf, size_t size)
{
    if (buf && size) snprintf(buf, size, "no CUDA device %d (built without CUDA)", index);
}
