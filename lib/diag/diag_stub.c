/* Placeholder until the diagnostics land. */
#include "internal.h"

#define NOTYET return gsink__fail(m ? m->errmsg : NULL, GSINK_ERR_UNSUPPORTED, "not built yet")
gsink_status gsink_get_activation_norms(gsink_model *m, int l, gsink_site s, int h, float *o, size_t n) { (void)l; (void)s; (void)h; (void)o; (void)n; NOTYET; }
gsink_status gsink_get_gradient_norms(gsink_model *m, int l, gsink_site s, int h, int a, float *o, size_t n) { (void)l; (void)s; (void)h; (void)a; (void)o; (void)n; NOTYET; }
gsink_status gsink_attention_column_mass(gsink_model *m, int l, int h, float *M, float *S, size_t n) { (void)l; (void)h; (void)M; (void)S; (void)n; NOTYET; }
gsink_status gsink_sink_scores(gsink_model *m, int l, int s, float *o, size_t n) { (void)l; (void)s; (void)o; (void)n; NOTYET; }
gsink_status gsink_sink_rate(gsink_model *m, int l, int s, float e, float *r) { (void)l; (void)s; (void)e; (void)r; NOTYET; }
gsink_status gsink_attention_pattern(gsink_model *m, int l, int b, int h, float *o, size_t n) { (void)l; (void)b; (void)h; (void)o; (void)n; NOTYET; }
gsink_status gsink_gradient_sink_ratio(gsink_model *m, int l, int s, int t, int a, float *r) { (void)l; (void)s; (void)t; (void)a; (void)r; NOTYET; }
gsink_status gsink_branch_ratios(gsink_model *m, int l, int b, int a, float *x, float *y, float *z, size_t n) { (void)l; (void)b; (void)a; (void)x; (void)y; (void)z; (void)n; NOTYET; }
gsink_status gsink_massive_activation_ratio(gsink_model *m, int l, gsink_site s, float *r) { (void)l; (void)s; (void)r; NOTYET; }
gsink_status gsink_qkv_gradient_split(gsink_model *m, int l, int a, float *x, float *y, float *z, size_t n) { (void)l; (void)a; (void)x; (void)y; (void)z; (void)n; NOTYET; }
gsink_status gsink_report_json(gsink_model *m, const gsink_diag_options *o, char **j) { (void)o; (void)j; NOTYET; }
