/*
 * test_threads.c - one handle used from two threads at once (not allowed) is
 * detected, not a crash: the second call gets GSINK_ERR_BUSY without touching
 * the handle, and a free while another thread is inside a call is refused.
 * Before the in-use flag, these races ended in SIGSEGV, a BLIS abort or a
 * heap use-after-free (visible under ASan).
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/testutil.h"
#include "internal.h"

/* Long enough (tens of ms on one thread) that the main thread's calls land
 * inside the worker's forward; the rounds below retry when they do not. */
enum { B = 1, T = 256, ROUNDS = 200 };
static int32_t tok[B * T], tgt[B * T];

static gsink_model *make_preset(const char *preset)
{
    gsink_config c;
    ck_assert_int_eq(gsink_config_preset(preset, &c), GSINK_OK);
    gsink_model_options o;
    gsink_model_options_init(&o);
    o.n_threads = 1;
    o.seed = 3;
    gsink_model *m = NULL;
    ck_assert_msg(gsink_model_create(&c, &o, &m) == GSINK_OK, "%s", gsink_last_error());
    return m;
}

static gsink_model *make(void) { return make_preset("small"); }

/* A worker thread that runs one forward per round on w->m. */
typedef struct worker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    gsink_model *m;
    int round, done, quit;
    gsink_status st;
    float loss;
    pthread_t th;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    int seen = 0;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (w->round == seen && !w->quit) pthread_cond_wait(&w->cv, &w->mu);
        if (w->quit) {
            pthread_mutex_unlock(&w->mu);
            return NULL;
        }
        seen = w->round;
        gsink_model *m = w->m;
        pthread_mutex_unlock(&w->mu);
        float loss = 0.0f;
        gsink_status st = gsink_forward(m, tok, tgt, B, T, &loss);
        pthread_mutex_lock(&w->mu);
        w->st = st;
        w->loss = loss;
        w->done = seen;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
}

static void worker_start(worker *w, gsink_model *m)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->m = m;
    ck_assert_int_eq(pthread_create(&w->th, NULL, worker_main, w), 0);
}

static void worker_stop(worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

/* Starts a forward on the worker and waits until it holds the model (true),
 * or has already finished (false). */
static bool round_begin(worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->round++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (;;) {
        if (atomic_load(&w->m->owner) != 0) return true;
        pthread_mutex_lock(&w->mu);
        int fin = w->done == w->round;
        pthread_mutex_unlock(&w->mu);
        if (fin) return false;
    }
}

static void round_end(worker *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->done != w->round) pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

/* Puts a known text in this thread's gsink_last_error. */
static void mark_last_error(void)
{
    ck_assert_int_eq(gsink_forward(NULL, tok, tgt, B, T, NULL), GSINK_ERR_NULL_ARGUMENT);
    ck_assert(strstr(gsink_last_error(), "in use") == NULL);
}

static float reference_loss(gsink_model *m)
{
    float loss;
    ck_assert_int_eq(gsink_forward(m, tok, tgt, B, T, &loss), GSINK_OK);
    return loss;
}

static void fill_tokens(void)
{
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 37 + 5) % 4096;
        tgt[i] = (i * 11 + 1) % 4096;
    }
}

/* Calls on the model from a second thread while the worker's forward runs. */
START_TEST(test_calls_during_forward_are_busy)
{
    fill_tokens();
    gsink_model *m = make();
    float ref = reference_loss(m);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    gsink_optimizer *opt = NULL;
    ck_assert_int_eq(gsink_optimizer_create(m, NULL, &opt), GSINK_OK);
    worker w;
    worker_start(&w, m);
    int overlaps = 0;
    for (int r = 0; r < ROUNDS && !overlaps; r++) {
        if (!round_begin(&w)) continue;
        gsink_status st[12];
        float loss = -1.0f;
        size_t n = 0;
        gsink_config cfg;
        gsink_config_init(&cfg);
        gsink_optimizer *opt2 = (gsink_optimizer *)0x1;
        float buf[4];
        mark_last_error();
        st[0] = gsink_forward(m, tok, tgt, B, T, &loss);
        st[1] = gsink_backward(m, 0);
        st[2] = gsink_get_logits(m, buf, 4);
        st[3] = gsink_model_set_threads(m, 1);
        st[4] = gsink_model_config(m, &cfg);
        st[5] = gsink_param_count(m, &n);
        st[6] = gsink_get_activation_norms(m, 0, GSINK_SITE_RESID_OUT, GSINK_ALL_HEADS, buf, 4);
        st[7] = gsink_optimizer_create(m, NULL, &opt2);
        st[8] = gsink_optimizer_step(opt, NULL);
        st[9] = gsink_zero_grad(m);
        const char *msg = gsink_model_errmsg(m);
        /* the optimizer's state lives in the model's backend: not freed */
        gsink_optimizer_free(opt);
        bool opt_free_refused = strstr(gsink_last_error(), "in use by another thread") != NULL;
        if (atomic_load(&m->owner) == 0) { /* the forward ended during the calls: retry */
            round_end(&w);
            if (!opt_free_refused) ck_assert_int_eq(gsink_optimizer_create(m, NULL, &opt), GSINK_OK);
            continue;
        }
        overlaps++;
        for (int i = 0; i < 10; i++) ck_assert_msg(st[i] == GSINK_ERR_BUSY, "call %d returned %d", i, st[i]);
        ck_assert(opt_free_refused);
        ck_assert_msg(strstr(gsink_last_error(), "in use by another thread") != NULL, "%s", gsink_last_error());
        ck_assert_msg(strstr(msg, "in use by another thread") != NULL, "%s", msg);
        ck_assert(loss == -1.0f && n == 0 && cfg.d_model == 64); /* outputs untouched (tiny default) */
        ck_assert_ptr_null(opt2);
        round_end(&w);
        /* the worker's forward was not disturbed, nor the model's message */
        ck_assert_int_eq(w.st, GSINK_OK);
        ck_assert(w.loss == ref);
        ck_assert_str_eq(gsink_model_errmsg(m), "");
    }
    ck_assert_msg(overlaps > 0, "no call landed inside the worker's forward in %d rounds", ROUNDS);
    worker_stop(&w);
    /* everything works again from one thread, the optimizer included */
    ck_assert(reference_loss(m) == ref);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_step(opt, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_step_count(opt), 1);
    gsink_optimizer_free(opt);
    gsink_model_free(m);
}
END_TEST

/* gsink_model_free while another thread is inside gsink_forward: refused,
 * the forward completes and the model stays valid (no use-after-free). */
START_TEST(test_free_during_forward_is_refused)
{
    fill_tokens();
    gsink_model *m = make();
    float ref = reference_loss(m);
    worker w;
    worker_start(&w, m);
    int refused = 0;
    for (int r = 0; r < ROUNDS && !refused; r++) {
        if (!round_begin(&w)) continue;
        mark_last_error();
        gsink_model_free(m);
        if (strstr(gsink_last_error(), "in use by another thread")) {
            refused = 1;
            round_end(&w);
            ck_assert_int_eq(w.st, GSINK_OK);
            ck_assert(w.loss == ref);
        } else {
            /* freed: the forward had returned before the free claimed the
             * model; the worker no longer touches it. Start over. */
            round_end(&w);
            m = make();
            pthread_mutex_lock(&w.mu);
            w.m = m;
            pthread_mutex_unlock(&w.mu);
        }
    }
    ck_assert_msg(refused, "no free landed inside the worker's forward in %d rounds", ROUNDS);
    worker_stop(&w);
    ck_assert(reference_loss(m) == ref);
    gsink_model_free(m);
}
END_TEST

/* Every public function taking a model, optimizer or config-less handle
 * returns GSINK_ERR_BUSY while the owner word names another thread, leaves
 * outputs and the handle's message alone, and works again afterwards. */
START_TEST(test_every_call_checks_the_owner)
{
    gsink_model *m = make_preset("micro");
    int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float ref;
    ck_assert_int_eq(gsink_forward(m, t, t, 1, 8, &ref), GSINK_OK);
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    gsink_optimizer *opt;
    ck_assert_int_eq(gsink_optimizer_create(m, NULL, &opt), GSINK_OK);
    ck_assert_int_eq(gsink_get_logits(m, NULL, 0), GSINK_ERR_NULL_ARGUMENT); /* a known message */
    char before[GSINK_MSG_SIZE];
    snprintf(before, sizeof before, "%s", gsink_model_errmsg(m));

    uintptr_t other = 0x10; /* not a thread of this process's calls */
    atomic_store(&m->owner, other);
    float f[64], loss = -1.0f, ratio = -1.0f;
    size_t n = 12345;
    int a = -7, b = -7;
    char *json = NULL;
    const char *name = NULL;
    gsink_diag_options d;
    gsink_diag_options_init(&d);
    gsink_vscale_options v;
    gsink_vscale_options_init(&v);
    gsink_config cfg;
    gsink_config_init(&cfg);
    gsink_optimizer *opt2 = NULL;
#define BUSY(call) ck_assert_msg((call) == GSINK_ERR_BUSY, "%s is not busy", #call)
    BUSY(gsink_forward(m, t, t, 1, 8, &loss));
    BUSY(gsink_backward(m, 0));
    BUSY(gsink_zero_grad(m));
    BUSY(gsink_model_config(m, &cfg));
    BUSY(gsink_model_set_threads(m, 1));
    BUSY(gsink_model_memory(m, NULL, NULL, 0));
    BUSY(gsink_param_count(m, &n));
    BUSY(gsink_param_info(m, 0, &name, NULL, NULL));
    BUSY(gsink_param_numel(m, &n));
    BUSY(gsink_get_param(m, "model.norm.weight", f, 16));
    BUSY(gsink_set_param(m, "model.norm.weight", f, 16));
    BUSY(gsink_get_param_grad(m, "model.norm.weight", f, 16));
    BUSY(gsink_last_shape(m, &a, &b));
    BUSY(gsink_get_logits(m, f, 64));
    BUSY(gsink_site_dims(m, GSINK_SITE_Q, &a, &b));
    BUSY(gsink_get_activation_norms(m, 0, GSINK_SITE_Q, GSINK_ALL_HEADS, f, 8));
    BUSY(gsink_get_gradient_norms(m, 0, GSINK_SITE_Q, GSINK_ALL_HEADS, 0, f, 8));
    BUSY(gsink_get_activation(m, 0, GSINK_SITE_Q, f, 64));
    BUSY(gsink_get_gradient(m, 0, GSINK_SITE_Q, f, 64));
    BUSY(gsink_set_diag_options(m, &d));
    BUSY(gsink_get_diag_options(m, &d));
    BUSY(gsink_attention_column_mass(m, 0, 0, f, f + 8, 8));
    BUSY(gsink_sink_scores(m, 0, 0, f, 2));
    BUSY(gsink_sink_rate(m, 0, 0, 0.3f, &ratio));
    BUSY(gsink_attention_pattern(m, 0, 0, 0, f, 64));
    BUSY(gsink_gradient_sink_ratio(m, 0, 0, 4, 0, &ratio));
    BUSY(gsink_branch_ratios(m, 0, 0, 0, f, f + 8, f + 16, 8));
    BUSY(gsink_massive_activation_ratio(m, 0, GSINK_SITE_RESID_OUT, &ratio));
    BUSY(gsink_qkv_gradient_split(m, 0, 0, f, f + 8, f + 16, 8));
    BUSY(gsink_report_json(m, NULL, &json));
    BUSY(gsink_vscale_enable(m, &v));
    BUSY(gsink_vscale_get(m, &v));
    BUSY(gsink_vscale_theta_count(m, &n));
    BUSY(gsink_vscale_get_theta(m, f, 4));
    BUSY(gsink_vscale_set_theta(m, f, 4));
    BUSY(gsink_vscale_get_theta_grad(m, f, 4));
    BUSY(gsink_model_save(m, "/nonexistent/gsink-busy"));
    BUSY(gsink_optimizer_create(m, NULL, &opt2));
    BUSY(gsink_optimizer_step(opt, NULL));
    BUSY(gsink_optimizer_save(opt, "/nonexistent/gsink-busy.opt"));
    BUSY(gsink_optimizer_load(opt, "/nonexistent/gsink-busy.opt"));
    ck_assert(loss == -1.0f && ratio == -1.0f && n == 12345 && a == -7 && b == -7);
    ck_assert_ptr_null(json);
    ck_assert_ptr_null(name);
    ck_assert_ptr_null(opt2);
    ck_assert(strstr(gsink_last_error(), "model is in use by another thread") != NULL);
    ck_assert(strstr(gsink_model_errmsg(m), "in use by another thread") != NULL);
    gsink_optimizer_free(opt); /* refused: its model is busy */
    gsink_model_free(m);       /* refused */
    ck_assert(strstr(gsink_last_error(), "model is in use by another thread") != NULL);

    /* the optimizer itself busy */
    atomic_store(&m->owner, 0);
    atomic_store(GSINK__OWNER(opt), other);
    BUSY(gsink_optimizer_step(opt, NULL));
    ck_assert(gsink_optimizer_step_count(opt) == -1);
    ck_assert(isnan(gsink_optimizer_lr_at(opt, 0)));
    ck_assert(strstr(gsink_optimizer_errmsg(opt), "optimizer is in use") != NULL);
    gsink_optimizer_free(opt); /* refused */
    ck_assert(strstr(gsink_last_error(), "optimizer is in use by another thread") != NULL);
    atomic_store(GSINK__OWNER(opt), 0);
#undef BUSY

    /* nothing was touched: same message, same results, everything works */
    ck_assert_str_eq(gsink_model_errmsg(m), before);
    ck_assert_int_eq(gsink_last_shape(m, &a, &b), GSINK_OK);
    ck_assert(a == 1 && b == 8);
    ck_assert_int_eq(gsink_optimizer_step_count(opt), 0);
    ck_assert_int_eq(gsink_optimizer_step(opt, NULL), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_step_count(opt), 1);
    ck_assert_int_eq(gsink_forward(m, t, t, 1, 8, &loss), GSINK_OK);
    ck_assert(loss != ref); /* the step changed the weights */
    gsink_optimizer_free(opt);
    gsink_model_free(m);
}
END_TEST

/* A model freed before its optimizers frees their state with it (it lives
 * in the model's backend); the optimizers stay valid handles whose calls fail
 * with GSINK_ERR_CALL_ORDER, and gsink_optimizer_free frees them (it used to
 * read the freed model: a use-after-free under ASan). While another thread is
 * inside a call on one of them, the model's free is refused. */
START_TEST(test_model_freed_before_its_optimizers)
{
    gsink_model *m = make_preset("micro");
    gsink_optimizer *a, *b, *x;
    ck_assert_int_eq(gsink_optimizer_create(m, NULL, &a), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_create(m, NULL, &b), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_create(m, NULL, &x), GSINK_OK);
    gsink_optimizer_free(x); /* freed first: unlinked from the model */

    /* refused while another thread is inside a call on an optimizer */
    atomic_store(GSINK__OWNER(a), (uintptr_t)0x10);
    gsink_model_free(m);
    ck_assert_msg(strstr(gsink_last_error(), "in use by another thread") != NULL, "%s", gsink_last_error());
    ck_assert(atomic_load(&m->owner) == 0 && atomic_load(GSINK__OWNER(b)) == 0); /* claims rolled back */
    atomic_store(GSINK__OWNER(a), 0);
    int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    ck_assert_int_eq(gsink_forward(m, t, t, 1, 8, NULL), GSINK_OK); /* the model still works */
    ck_assert_int_eq(gsink_backward(m, 0), GSINK_OK);
    ck_assert_int_eq(gsink_optimizer_step(b, NULL), GSINK_OK);

    gsink_model_free(m);
    ck_assert_int_eq(gsink_optimizer_step(a, NULL), GSINK_ERR_CALL_ORDER);
    ck_assert_msg(strstr(gsink_optimizer_errmsg(a), "model was freed") != NULL, "%s", gsink_optimizer_errmsg(a));
    ck_assert_int_eq(gsink_optimizer_save(b, "unused.bin"), GSINK_ERR_CALL_ORDER);
    ck_assert_int_eq(gsink_optimizer_load(b, "unused.bin"), GSINK_ERR_CALL_ORDER);
    ck_assert_int_eq(gsink_optimizer_step_count(b), 1);
    ck_assert(gsink_optimizer_lr_at(a, 0) > 0.0f);
    gsink_optimizer_free(a);
    gsink_optimizer_free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("threads");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_every_call_checks_the_owner);
    tcase_add_test(tc, test_calls_during_forward_are_busy);
    tcase_add_test(tc, test_free_during_forward_is_refused);
    tcase_add_test(tc, test_model_freed_before_its_optimizers);
    suite_add_tcase(s, tc);
    int failed = tu_run_suite(s, 1);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
