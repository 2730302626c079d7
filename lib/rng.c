/* rng.c - deterministic normal samples for initialisation (splitmix64 + Box-Muller). */
#include <math.h>

#include "internal.h"

void gsink__rng_seed(gsink_rng *r, uint64_t seed)
{
    r->state = seed ^ 0x9E3779B97F4A7C15ull;
    r->has_spare = 0;
    r->spare = 0.0;
}

static uint64_t next_u64(gsink_rng *r)
{
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in (0, 1] */
static double next_uniform(gsink_rng *r) { return ((next_u64(r) >> 11) + 1.0) * 0x1.0p-53; }

double gsink__rng_normal(gsink_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = next_uniform(r), u2 = next_uniform(r);
    double mag = sqrt(-2.0 * log(u1));
    r->spare = mag * sin(2.0 * M_PI * u2);
    r->has_spare = 1;
    return mag * cos(2.0 * M_PI * u2);
}
