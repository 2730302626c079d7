/* Placeholder until the I/O sources land. */
#include "internal.h"

gsink_status gsink_model_load(const char *path, const gsink_model_options *opts, gsink_model **out)
{ (void)path; (void)opts; if (out) *out = NULL; return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "model loading not built"); }
gsink_status gsink_model_save(gsink_model *model, const char *dir)
{ (void)model; (void)dir; return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "model saving not built"); }
gsink_status gsink_tokenizer_load_gguf(const char *path, gsink_tokenizer **out)
{ (void)path; if (out) *out = NULL; return gsink__fail(NULL, GSINK_ERR_UNSUPPORTED, "tokenizer not built"); }
void gsink_tokenizer_free(gsink_tokenizer *tok) { (void)tok; }
const char *gsink_tokenizer_errmsg(const gsink_tokenizer *tok) { (void)tok; return ""; }
gsink_status gsink_tokenizer_vocab_size(const gsink_tokenizer *tok, int32_t *n) { (void)tok; (void)n; return GSINK_ERR_UNSUPPORTED; }
gsink_status gsink_tokenizer_special(const gsink_tokenizer *tok, int32_t *bos, int32_t *eos) { (void)tok; (void)bos; (void)eos; return GSINK_ERR_UNSUPPORTED; }
gsink_status gsink_tokenizer_encode(gsink_tokenizer *tok, const char *text, size_t text_len, unsigned flags, int32_t *ids, size_t capacity, size_t *n_ids)
{ (void)tok; (void)text; (void)text_len; (void)flags; (void)ids; (void)capacity; (void)n_ids; return GSINK_ERR_UNSUPPORTED; }
gsink_status gsink_tokenizer_decode(gsink_tokenizer *tok, const int32_t *ids, size_t n_ids, char *buf, size_t buf_size, size_t *len)
{ (void)tok; (void)ids; (void)n_ids; (void)buf; (void)buf_size; (void)len; return GSINK_ERR_UNSUPPORTED; }
