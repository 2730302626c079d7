/* Placeholder until the optimizer lands. */
#include "internal.h"

void gsink_optimizer_options_init(gsink_optimizer_options *o) { if (o) { *o = (gsink_optimizer_options){0}; o->size = sizeof *o; } }
gsink_status gsink_optimizer_create(gsink_model *m, const gsink_optimizer_options *o, gsink_optimizer **out)
{ (void)m; (void)o; if (out) *out = NULL; return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "optimizer not built"); }
void gsink_optimizer_free(gsink_optimizer *o) { (void)o; }
const char *gsink_optimizer_errmsg(const gsink_optimizer *o) { (void)o; return ""; }
float gsink_optimizer_lr_at(const gsink_optimizer *o, int64_t s) { (void)o; (void)s; return 0.0f; }
gsink_status gsink_optimizer_step(gsink_optimizer *o, float *g) { (void)o; (void)g; return GSINK_ERR_UNSUPPORTED; }
int64_t gsink_optimizer_step_count(const gsink_optimizer *o) { (void)o; return 0; }
