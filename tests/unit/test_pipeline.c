/*
 * test_pipeline.c — unit tests for the filter pipeline (filters/pipeline.c,
 * registry.c, filter_tx.c) and the per-thread handle table (lib/handles.c).
 *
 * The pipeline is exercised for real: test stages are registered with
 * filters_register_stage(), the config is a real file read by config_load(),
 * and asynchronous stages complete through real libevent timers on a real
 * event_base. The test stages are one scripted stage under several names:
 * each reads from its own config section what to do (answer at once, later,
 * fail, never answer) and what to answer (score, rule, header, verdict,
 * reply), so every test states its scenario in the config it writes.
 *
 * Stage interface v2 has its own test stages: "perloop" (loop_init and
 * loop_teardown, run from two real loop threads, each with its own
 * event_base) and "scanner" (work on the worker pool's scan lane through
 * stage_submit_job, held on barriers so a test decides when it runs). The
 * worker pool's lanes are tested here too, by ordering rather than timing:
 * a delivery job completes while every scan worker is blocked. Built with
 * --enable-sanitizers, the cancelled-while-scanning test is what proves a
 * job never touches a freed body or stage.
 */
#include "config.h"

#include <confuse.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "filters/filters.h"
#include "lib/lib.h"

/* ------------------------------------------------------ scripted stage */

enum ts_mode {
	TS_IMMEDIATE,     /* answer inside check() */
	TS_FAIL,          /* CHECK_FAILED inside check() */
	TS_DEFERRED,      /* CHECK_PENDING, answer from a zero-delay timer */
	TS_DEFERRED_FAIL, /* CHECK_PENDING, fail from a zero-delay timer */
	TS_HANG,          /* CHECK_PENDING, never answer */
	TS_LATE,          /* CHECK_PENDING, try to answer after 300 ms; its
			   * cancel() "forgets" to stop the timer, like a
			   * stage whose network reply still arrives */
};

/* What the tests observe of one stage name. */
struct ts_stats {
	const char *name;
	int created, destroyed, checks, cancels;
	int late_not_found; /* later completion attempts that found NULL */
	uint64_t last_id;
};

struct ts_stage {
	struct stage hdr; /* must be first */
	struct ts_stats *stats;
	enum ts_mode mode;
	double score;
	char *rule, *header_name, *header_value;
	enum verdict verdict;
	unsigned code;
	char *enhanced, *text;
};

struct ts_pending {
	uint64_t id;
	struct event *ev;
	struct ts_stage *st;
};

static cfg_opt_t ts_opts[] = {
	CFG_STR("mode", "immediate", CFGF_NONE),
	CFG_FLOAT("score", 0, CFGF_NONE),
	CFG_STR("rule", "", CFGF_NONE),
	CFG_STR("header", "", CFGF_NONE), /* "Name: value" */
	CFG_STR("verdict", "continue", CFGF_NONE),
	CFG_INT("code", 0, CFGF_NONE),
	CFG_STR("enhanced", "", CFGF_NONE),
	CFG_STR("text", "", CFGF_NONE),
	CFG_END()
};

static struct ts_stats ts_stats[] = {
	{ .name = "alpha" }, { .name = "beta" }, { .name = "gamma" },
	{ .name = "rcptonly" }, { .name = "strict" },
};
/* stage names in the order their checks ran, comma-separated */
static char ts_order[256];
/* a deferred answer breaks the loop right after stage_call_done() */
static bool ts_break_after_done;
/* set while a test stage is inside stage_call_done(): the pipeline must
 * not run other stages or the caller's done() underneath it */
static bool ts_in_call_done;

static struct ts_stats *ts_stats_find(const char *name)
{
	for (size_t i = 0; i < N_ELEMENTS(ts_stats); i++) {
		if (strcmp(ts_stats[i].name, name) == 0)
			return &ts_stats[i];
	}
	return NULL;
}

static void ts_reset(void)
{
	for (size_t i = 0; i < N_ELEMENTS(ts_stats); i++) {
		const char *name = ts_stats[i].name;

		memset(&ts_stats[i], 0, sizeof(ts_stats[i]));
		ts_stats[i].name = name;
	}
	ts_order[0] = '\0';
	ts_break_after_done = false;
}

static int ts_parse_mode(const char *s, enum ts_mode *mode_r)
{
	static const char *const names[] = {
		"immediate", "fail", "deferred", "deferred_fail", "hang", "late",
	};

	for (size_t i = 0; i < N_ELEMENTS(names); i++) {
		if (strcmp(s, names[i]) == 0) {
			*mode_r = (enum ts_mode)i;
			return 0;
		}
	}
	return -1;
}

static int ts_parse_verdict(const char *s, enum verdict *v_r)
{
	for (enum verdict v = VERDICT_CONTINUE; v <= VERDICT_QUARANTINE; v++) {
		if (strcmp(s, verdict_name(v)) == 0) {
			*v_r = v;
			return 0;
		}
	}
	return -1;
}

static int ts_create(cfg_t *section, const struct mx_config *cfg,
		     struct stage **st_r, char **error_r)
{
	struct ts_stage *st = xcalloc(1, sizeof(*st));
	const char *header = cfg_getstr(section, "header");
	const char *colon = strchr(header, ':');

	st->stats = ts_stats_find(cfg_name(section));
	assert_non_null(st->stats);
	if (ts_parse_mode(cfg_getstr(section, "mode"), &st->mode) < 0) {
		*error_r = xasprintf("bad mode '%s'", cfg_getstr(section, "mode"));
		free(st);
		return -1;
	}
	assert_int_equal(ts_parse_verdict(cfg_getstr(section, "verdict"), &st->verdict), 0);
	st->score = cfg_getfloat(section, "score");
	st->rule = xstrdup(cfg_getstr(section, "rule"));
	if (colon != NULL) {
		st->header_name = xstrndup(header, (size_t)(colon - header));
		st->header_value = xstrdup(colon + 1 + (colon[1] == ' '));
	}
	st->code = (unsigned)cfg_getint(section, "code");
	st->enhanced = xstrdup(cfg_getstr(section, "enhanced"));
	st->text = xstrdup(cfg_getstr(section, "text"));
	st->stats->created++;
	*st_r = &st->hdr;
	return 0;
}

static void ts_destroy(struct stage *stage)
{
	struct ts_stage *st = (struct ts_stage *)stage;

	st->stats->destroyed++;
	free(st->rule);
	free(st->header_name);
	free(st->header_value);
	free(st->enhanced);
	free(st->text);
	free(st);
}

/* The stage's answer: side effects on fx, the verdict in call->result. */
static void ts_answer(struct ts_stage *st, struct stage_call *call)
{
	if (st->score != 0 || st->rule[0] != '\0')
		filter_tx_add_score(call->fx, st->hdr.name, st->rule, st->score, NULL);
	if (st->header_name != NULL)
		filter_tx_add_header(call->fx, st->header_name, st->header_value);
	call->result.verdict = st->verdict;
	call->result.code = st->code;
	str_copy(call->result.enhanced, st->enhanced, sizeof(call->result.enhanced));
	str_copy(call->result.text, st->text, sizeof(call->result.text));
}

static void ts_pending_free(struct ts_pending *p)
{
	event_free(p->ev);
	free(p);
}

static void ts_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ts_pending *p = arg;
	struct ts_stage *st = p->st;
	/* found again by id, as the contract asks: never a kept pointer */
	struct stage_call *call = stage_call_find(p->id);
	struct event_base *base;

	if (call == NULL) {
		st->stats->late_not_found++;
		ts_pending_free(p);
		return;
	}
	assert_ptr_equal(call->stage_data, p);
	call->stage_data = NULL;
	ts_pending_free(p);
	if (st->mode == TS_DEFERRED_FAIL) {
		call->result.code = st->code;
		str_copy(call->result.text, st->text, sizeof(call->result.text));
		ts_in_call_done = true;
		stage_call_done(call, CHECK_FAILED);
		ts_in_call_done = false;
		return;
	}
	base = call->base; /* call is not ours after stage_call_done() */
	ts_answer(st, call);
	ts_in_call_done = true;
	stage_call_done(call, CHECK_DONE);
	ts_in_call_done = false;
	if (ts_break_after_done)
		event_base_loopbreak(base);
}

static enum check_status ts_check(struct stage *stage, struct stage_call *call)
{
	struct ts_stage *st = (struct ts_stage *)stage;
	struct ts_pending *p;
	struct timeval tv = { 0, 0 };

	assert_ptr_equal(call->stage, stage);
	assert_ptr_equal(stage_call_find(call->id), call);
	assert_false(ts_in_call_done);
	st->stats->checks++;
	st->stats->last_id = call->id;
	if (ts_order[0] != '\0')
		strcat(ts_order, ",");
	strcat(ts_order, stage->name);

	switch (st->mode) {
	case TS_IMMEDIATE:
		ts_answer(st, call);
		return CHECK_DONE;
	case TS_FAIL:
		call->result.code = st->code;
		str_copy(call->result.text, st->text, sizeof(call->result.text));
		return CHECK_FAILED;
	case TS_HANG:
		return CHECK_PENDING;
	case TS_LATE:
		tv.tv_usec = 300000;
		break;
	case TS_DEFERRED:
	case TS_DEFERRED_FAIL:
		break;
	}
	p = xcalloc(1, sizeof(*p));
	p->id = call->id;
	p->st = st;
	p->ev = evtimer_new(call->base, ts_timer_cb, p);
	evtimer_add(p->ev, &tv);
	call->stage_data = p;
	return CHECK_PENDING;
}

static void ts_cancel(struct stage *stage, struct stage_call *call)
{
	struct ts_stage *st = (struct ts_stage *)stage;

	st->stats->cancels++;
	if (st->mode == TS_LATE)
		return; /* the timer stays: its completion must find NULL */
	if (call->stage_data != NULL) {
		ts_pending_free(call->stage_data);
		call->stage_data = NULL;
	}
}

#define ALL_PHASES (PHASE_BIT(PHASE_CONNECT) | PHASE_BIT(PHASE_HELO) | \
		    PHASE_BIT(PHASE_MAIL) | PHASE_BIT(PHASE_RCPT) | PHASE_BIT(PHASE_DATA))
#define TS_OPS(n, ph, onerr) { \
	.name = n, .phases = ph, .default_on_error = onerr, .opts = ts_opts, \
	.create = ts_create, .check = ts_check, .cancel = ts_cancel, \
	.destroy = ts_destroy }

static const struct stage_ops ts_alpha = TS_OPS("alpha", ALL_PHASES, ON_ERROR_ACCEPT);
static const struct stage_ops ts_beta = TS_OPS("beta", ALL_PHASES, ON_ERROR_ACCEPT);
static const struct stage_ops ts_gamma = TS_OPS("gamma", ALL_PHASES, ON_ERROR_ACCEPT);
static const struct stage_ops ts_rcptonly = TS_OPS("rcptonly", PHASE_BIT(PHASE_RCPT), ON_ERROR_ACCEPT);
static const struct stage_ops ts_strict = TS_OPS("strict", ALL_PHASES, ON_ERROR_TEMPFAIL);

/* ------------------------------------------------------------ fixture */

struct fixture {
	struct event_base *base;
	struct stage_env env; /* loop 0: base, no workers unless a test adds them */
	struct mx_config *cfg;
	struct pipeline *pl;
	struct filter_tx *fx;
	struct filter_msg msg;
	/* what done() saw */
	int done_calls;
	struct pipeline_outcome done_out;
	/* set while pipeline_run() is on the stack */
	bool in_run;
	/* done() ran inside pipeline_run() or inside stage_call_done() */
	bool done_in_run;
};

static const char *const test_rcpts[] = { "bob@example.test" };

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));

	ts_reset();
	f->base = event_base_new();
	assert_non_null(f->base);
	f->env = (struct stage_env){ .loop_index = 0, .base = f->base };
	f->fx = filter_tx_new();
	f->msg = (struct filter_msg){
		.txid = "TESTTX0000000001",
		.session_id = "TESTSE0000000001",
		.client_addr = "192.0.2.1",
		.client_port = 40000,
		.helo = "client.example.org",
		.mail_from = "alice@example.org",
		.rcpts = test_rcpts,
		.n_rcpts = 1,
		.rcpt = "bob@example.test",
	};
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	pipeline_unref(&f->pl);
	if (f->cfg != NULL)
		config_unref(&f->cfg);
	filter_tx_free(&f->fx);
	event_base_free(f->base);
	/* every stage call id was given back */
	assert_int_equal(handle_count(), 0);
	free(f);
	return 0;
}

/* config_load()'s last error message */
static char load_error[512];

/* Write a config with the given pipeline body and stage sections, load it.
 * Returns config_load()'s result; *error_r on failure. */
static int load_config(struct fixture *f, const char *fmt, ...) ATTR_PRINTF(2, 3);
static int load_config(struct fixture *f, const char *fmt, ...)
{
	char path[] = "/tmp/test_pipeline.XXXXXX";
	char *body, *error = NULL;
	va_list ap;
	FILE *fp;
	int fd, ret;

	va_start(ap, fmt);
	assert_true(vasprintf(&body, fmt, ap) >= 0);
	va_end(ap);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	fp = fdopen(fd, "w");
	assert_non_null(fp);
	fprintf(fp, "%s\n", body);
	assert_int_equal(fclose(fp), 0);
	free(body);

	/* only the filters' settings module (and the stages' sections): the
	 * loader then knows nothing else, and requires nothing else */
	filters_register_config();
	ret = config_load(path, &f->cfg, &error);
	unlink(path);
	load_error[0] = '\0';
	if (ret < 0)
		str_copy(load_error, error, sizeof(load_error));
	free(error);
	return ret;
}

/* A config with `stages` in the pipeline and thresholds 5/8/15, plus
 * `sections`, and a pipeline built from it. */
static void make_pipeline(struct fixture *f, const char *stages, const char *sections)
{
	char *error = NULL;

	if (load_config(f,
			"pipeline {\n"
			"  stages = {%s}\n"
			"  tag_score = 5.0\n  junk_score = 8.0\n  reject_score = 15.0\n"
			"  stage_timeout = 60000\n"
			"}\n%s\n", stages, sections) < 0) {
		print_error("config_load: %s\n", load_error);
		fail();
	}
	if (pipeline_create(f->cfg, &f->pl, &error) < 0) {
		print_error("pipeline_create: %s\n", error);
		free(error);
		fail();
	}
}

static void test_done_cb(void *ctx, const struct pipeline_outcome *out)
{
	struct fixture *f = ctx;

	if (f->in_run || ts_in_call_done)
		f->done_in_run = true;
	f->done_calls++;
	f->done_out = *out;
}

/* Run a phase to its end, dispatching the loop when it pends. Returns the
 * status pipeline_run() gave. */
static enum pipeline_status run_phase(struct fixture *f, enum phase phase,
				      struct pipeline_outcome *out)
{
	struct pipeline_run *run = NULL;
	enum pipeline_status ps;

	memset(out, 0xa5, sizeof(*out)); /* no field survives by accident */
	f->in_run = true;
	ps = pipeline_run(f->pl, phase, &f->env, &f->msg, f->fx,
			  test_done_cb, f, out, &run);
	f->in_run = false;
	if (ps == PIPELINE_DONE) {
		assert_null(run);
		/* nothing may be left behind on the loop either */
		assert_int_equal(event_base_dispatch(f->base), 1);
		assert_int_equal(f->done_calls, 0);
		return ps;
	}
	assert_non_null(run);
	assert_int_equal(f->done_calls, 0);
	/* 1: the loop ran until nothing was left on it */
	assert_int_equal(event_base_dispatch(f->base), 1);
	assert_int_equal(f->done_calls, 1);
	assert_false(f->done_in_run);
	*out = f->done_out;
	return ps;
}

static const char *find_header(const struct filter_tx *fx, const char *name)
{
	const struct filter_header *h;
	size_t n = filter_tx_headers(fx, &h);
	const char *found = NULL;

	for (size_t i = 0; i < n; i++) {
		if (strcmp(h[i].name, name) == 0) {
			assert_null(found); /* never added twice */
			found = h[i].value;
		}
	}
	return found;
}

/* --------------------------------------------------------- the tests */

static void test_immediate_stages(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	const struct filter_stage_log *log;
	char *stages, *hits;

	make_pipeline(f, "\"alpha\", \"beta\"",
		      "alpha { score = 1.5 rule = \"RULE_A\" header = \"X-Alpha: one\" }\n"
		      "beta { score = 2.0 rule = \"RULE_B\" }\n");
	assert_true(pipeline_has_phase(f->pl, PHASE_DATA));
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_CONTINUE);
	assert_int_equal(out.action, ACTION_DELIVER);
	assert_true(out.score == 3.5);
	assert_string_equal(ts_order, "alpha,beta");
	assert_string_equal(find_header(f->fx, "X-Alpha"), "one");
	assert_string_equal(find_header(f->fx, "X-Spam-Score"), "3.5");
	assert_null(find_header(f->fx, "X-Spam-Flag"));
	assert_null(find_header(f->fx, "X-Spam-Status"));

	assert_int_equal(filter_tx_stage_log(f->fx, &log), 2);
	assert_string_equal(log[0].stage, "alpha");
	assert_string_equal(log[0].result, "hit");
	assert_int_equal(log[0].phase, PHASE_DATA);
	assert_true(log[0].usec >= 0);
	assert_string_equal(log[1].stage, "beta");
	hits = filter_tx_format_hits(f->fx);
	assert_string_equal(hits, "RULE_A,RULE_B");
	stages = filter_tx_format_stages(f->fx);
	assert_true(strncmp(stages, "alpha:hit:", 10) == 0);
	assert_non_null(strstr(stages, ",beta:hit:"));
	free(hits);
	free(stages);
}

static void test_deferred_stage(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	const struct filter_stage_log *log;

	make_pipeline(f, "\"alpha\", \"beta\", \"gamma\"",
		      "alpha { score = 1.0 rule = \"A\" }\n"
		      "beta { mode = \"deferred\" score = 2.0 rule = \"B\" header = \"X-Beta: later\" }\n"
		      "gamma { score = 0.5 }\n");
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_PENDING);
	assert_int_equal(out.verdict, VERDICT_CONTINUE);
	assert_int_equal(out.action, ACTION_DELIVER);
	assert_true(out.score == 3.5);
	assert_string_equal(ts_order, "alpha,beta,gamma");
	assert_string_equal(find_header(f->fx, "X-Beta"), "later");
	assert_string_equal(find_header(f->fx, "X-Spam-Score"), "3.5");
	assert_int_equal(filter_tx_stage_log(f->fx, &log), 3);
	assert_string_equal(log[1].stage, "beta");
	assert_string_equal(log[1].result, "hit");
	assert_string_equal(log[2].result, "ok"); /* a score without a rule */
	assert_int_equal(ts_stats_find("beta")->cancels, 0);
	/* the completed call's id no longer resolves */
	assert_null(stage_call_find(ts_stats_find("beta")->last_id));
}

static void test_two_deferred_stages(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	make_pipeline(f, "\"alpha\", \"beta\"",
		      "alpha { mode = \"deferred\" score = 6.0 rule = \"A\" }\n"
		      "beta { mode = \"deferred\" score = 2.5 rule = \"B\" }\n");
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_PENDING);
	assert_string_equal(ts_order, "alpha,beta");
	assert_int_equal(out.action, ACTION_JUNK);
	assert_true(out.score == 8.5);
}

static void test_failing_on_error_accept(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	const struct filter_stage_log *log;

	make_pipeline(f, "\"alpha\", \"beta\"",
		      "alpha { mode = \"fail\" on_error = \"accept\" }\n"
		      "beta { score = 1.0 rule = \"B\" }\n");
	assert_int_equal(run_phase(f, PHASE_RCPT, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_CONTINUE);
	assert_int_equal(out.action, ACTION_DELIVER);
	assert_string_equal(ts_order, "alpha,beta");
	assert_int_equal(filter_tx_stage_log(f->fx, &log), 2);
	assert_string_equal(log[0].result, "error");
	assert_int_equal(log[0].phase, PHASE_RCPT);
	/* not the DATA phase: no X-Spam-* headers */
	assert_int_equal(filter_tx_headers(f->fx, NULL), 0);
}

static void test_failing_on_error_tempfail(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	make_pipeline(f, "\"alpha\", \"beta\"",
		      "alpha { mode = \"fail\" on_error = \"tempfail\" }\n"
		      "beta { score = 1.0 }\n");
	assert_int_equal(run_phase(f, PHASE_MAIL, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_TEMPFAIL);
	assert_int_equal(out.action, ACTION_TEMPFAIL);
	assert_int_equal(out.reply.code, 451);
	assert_string_equal(out.reply.enhanced, "4.7.1");
	assert_string_equal(out.reply.text, "alpha temporarily unavailable, try again later");
	assert_string_equal(ts_order, "alpha");
}

static void test_failing_with_own_reply(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	make_pipeline(f, "\"alpha\"",
		      "alpha { mode = \"deferred_fail\" on_error = \"tempfail\""
		      " code = 421 text = \"scanner down\" }\n");
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_PENDING);
	assert_int_equal(out.verdict, VERDICT_TEMPFAIL);
	assert_int_equal(out.action, ACTION_TEMPFAIL);
	assert_int_equal(out.reply.code, 421);
	assert_string_equal(out.reply.enhanced, "4.7.1");
	assert_string_equal(out.reply.text, "scanner down");
}

static void test_default_on_error_from_stage(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	/* "strict" defaults to tempfail, "alpha" to accept; neither section
	 * says on_error */
	make_pipeline(f, "\"alpha\", \"strict\", \"beta\"",
		      "alpha { mode = \"fail\" }\n"
		      "strict { mode = \"deferred_fail\" }\n");
	assert_int_equal(run_phase(f, PHASE_CONNECT, &out), PIPELINE_PENDING);
	assert_int_equal(out.verdict, VERDICT_TEMPFAIL);
	assert_string_equal(out.reply.text, "strict temporarily unavailable, try again later");
	assert_string_equal(ts_order, "alpha,strict");
}

static void timeout_scenario(struct fixture *f, const char *on_error,
			     struct pipeline_outcome *out)
{
	char *sections = xasprintf("alpha { mode = \"hang\" timeout = 10 on_error = \"%s\" }\n"
				   "beta { score = 1.0 rule = \"B\" }\n", on_error);
	const struct filter_stage_log *log;

	make_pipeline(f, "\"alpha\", \"beta\"", sections);
	free(sections);
	assert_int_equal(run_phase(f, PHASE_DATA, out), PIPELINE_PENDING);
	assert_int_equal(ts_stats_find("alpha")->cancels, 1);
	assert_null(stage_call_find(ts_stats_find("alpha")->last_id));
	assert_true(filter_tx_stage_log(f->fx, &log) >= 1);
	assert_string_equal(log[0].stage, "alpha");
	assert_string_equal(log[0].result, "timeout");
}

static void test_timeout_tempfail(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	timeout_scenario(f, "tempfail", &out);
	assert_int_equal(out.verdict, VERDICT_TEMPFAIL);
	assert_int_equal(out.action, ACTION_TEMPFAIL);
	assert_int_equal(out.reply.code, 451);
	assert_string_equal(out.reply.enhanced, "4.7.1");
	assert_string_equal(out.reply.text, "alpha temporarily unavailable, try again later");
	assert_int_equal(ts_stats_find("beta")->checks, 0);
}

static void test_timeout_accept(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	timeout_scenario(f, "accept", &out);
	assert_int_equal(out.verdict, VERDICT_CONTINUE);
	assert_int_equal(out.action, ACTION_DELIVER);
	assert_int_equal(ts_stats_find("beta")->checks, 1);
	assert_true(out.score == 1.0);
}

static void test_timeout_late_completion(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	/* the stage's own timer outlives the cancel; the loop runs until it
	 * fired, so its completion attempt happened after the timeout */
	make_pipeline(f, "\"alpha\"",
		      "alpha { mode = \"late\" timeout = 10 on_error = \"accept\""
		      " score = 20 rule = \"LATE\" }\n");
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_PENDING);
	assert_int_equal(ts_stats_find("alpha")->cancels, 1);
	assert_int_equal(ts_stats_find("alpha")->late_not_found, 1);
	assert_int_equal(f->done_calls, 1);
	assert_int_equal(out.verdict, VERDICT_CONTINUE);
	assert_int_equal(out.action, ACTION_DELIVER);
	assert_true(filter_tx_score(f->fx) == 0);
}

static void test_reject_custom_reply(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	make_pipeline(f, "\"alpha\", \"beta\", \"gamma\"",
		      "alpha { score = 1.0 }\n"
		      "beta { verdict = \"reject\" code = 554 enhanced = \"5.7.0\""
		      " text = \"listed at bl.example\" }\n"
		      "gamma { score = 3.0 }\n");
	assert_int_equal(run_phase(f, PHASE_CONNECT, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_REJECT);
	assert_int_equal(out.action, ACTION_REJECT);
	assert_int_equal(out.reply.code, 554);
	assert_string_equal(out.reply.enhanced, "5.7.0");
	assert_string_equal(out.reply.text, "listed at bl.example");
	assert_string_equal(ts_order, "alpha,beta");
	assert_int_equal(ts_stats_find("gamma")->checks, 0);
}

static void test_default_replies(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	make_pipeline(f, "\"alpha\", \"beta\"",
		      "alpha { verdict = \"reject\" }\n"
		      "beta { verdict = \"tempfail\" }\n");
	assert_int_equal(run_phase(f, PHASE_RCPT, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_REJECT);
	assert_int_equal(out.reply.code, 550);
	assert_string_equal(out.reply.enhanced, "5.7.1");
	assert_string_equal(out.reply.text, "Message rejected");
	assert_int_equal(ts_stats_find("beta")->checks, 0);
}

static void test_reply_sanitised(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	/* a 4xx code on a reject is replaced, and a text with CR LF cannot
	 * break the reply line */
	make_pipeline(f, "\"alpha\"",
		      "alpha { verdict = \"reject\" code = 451 enhanced = \"4.1.1\""
		      " text = \"bad\\r\\n250 ok\" }\n");
	assert_int_equal(run_phase(f, PHASE_RCPT, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_REJECT);
	assert_int_equal(out.reply.code, 550);
	assert_string_equal(out.reply.enhanced, "5.7.1");
	assert_string_equal(out.reply.text, "bad  250 ok");
}

static void test_default_tempfail_reply(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	/* a reply of the wrong class (5xx on a tempfail) is not used */
	make_pipeline(f, "\"alpha\"",
		      "alpha { mode = \"deferred\" verdict = \"tempfail\" code = 550 }\n");
	assert_int_equal(run_phase(f, PHASE_RCPT, &out), PIPELINE_PENDING);
	assert_int_equal(out.verdict, VERDICT_TEMPFAIL);
	assert_int_equal(out.action, ACTION_TEMPFAIL);
	assert_int_equal(out.reply.code, 451);
	assert_string_equal(out.reply.enhanced, "4.7.1");
	assert_string_equal(out.reply.text, "Try again later");
}

static void test_discard_quarantine(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	make_pipeline(f, "\"alpha\", \"beta\"",
		      "alpha { verdict = \"quarantine\" }\n"
		      "beta { verdict = \"discard\" }\n");
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_QUARANTINE);
	assert_int_equal(out.action, ACTION_QUARANTINE);
	assert_int_equal(ts_stats_find("beta")->checks, 0);

	/* discard, at a phase before DATA */
	filter_tx_free(&f->fx);
	f->fx = filter_tx_new();
	pipeline_unref(&f->pl);
	config_unref(&f->cfg);
	ts_reset();
	make_pipeline(f, "\"beta\", \"alpha\"",
		      "alpha { verdict = \"quarantine\" }\n"
		      "beta { mode = \"deferred\" verdict = \"discard\" }\n");
	assert_int_equal(run_phase(f, PHASE_RCPT, &out), PIPELINE_PENDING);
	assert_int_equal(out.verdict, VERDICT_DISCARD);
	assert_int_equal(out.action, ACTION_DISCARD);
	assert_int_equal(ts_stats_find("alpha")->checks, 0);
}

static void test_accept_short_circuit(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	make_pipeline(f, "\"alpha\", \"beta\", \"gamma\"",
		      "alpha { score = 20 rule = \"BIG\" }\n"
		      "beta { mode = \"deferred\" verdict = \"accept\" }\n"
		      "gamma { verdict = \"reject\" }\n");
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_PENDING);
	assert_int_equal(out.verdict, VERDICT_ACCEPT);
	/* score 20 >= reject_score, but an accept skips the mapping */
	assert_int_equal(out.action, ACTION_DELIVER);
	assert_int_equal(ts_stats_find("gamma")->checks, 0);
	assert_null(find_header(f->fx, "X-Spam-Flag"));
}

/* One stage adding `score` at DATA; returns the action. */
static enum action score_action(struct fixture *f, const char *score)
{
	struct pipeline_outcome out;
	char *sections = xasprintf("alpha { score = %s rule = \"R1\" }\n", score);

	filter_tx_free(&f->fx);
	f->fx = filter_tx_new();
	pipeline_unref(&f->pl);
	if (f->cfg != NULL)
		config_unref(&f->cfg);
	make_pipeline(f, "\"alpha\"", sections);
	free(sections);
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_CONTINUE);
	assert_true(out.score == strtod(score, NULL));
	if (out.action == ACTION_REJECT) {
		assert_int_equal(out.reply.code, 550);
		assert_string_equal(out.reply.enhanced, "5.7.1");
		assert_string_equal(out.reply.text, "Message rejected as spam");
	}
	return out.action;
}

static void test_score_mapping(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(score_action(f, "0"), ACTION_DELIVER);
	assert_int_equal(score_action(f, "4.9"), ACTION_DELIVER);
	assert_int_equal(score_action(f, "5.0"), ACTION_TAG);
	assert_int_equal(score_action(f, "7.9"), ACTION_TAG);
	assert_int_equal(score_action(f, "8.0"), ACTION_JUNK);
	assert_int_equal(score_action(f, "14.9"), ACTION_JUNK);
	assert_int_equal(score_action(f, "15.0"), ACTION_REJECT);
	assert_int_equal(score_action(f, "-3"), ACTION_DELIVER);
}

static void test_spam_headers(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(score_action(f, "5.0"), ACTION_TAG);
	assert_string_equal(find_header(f->fx, "X-Spam-Score"), "5.0");
	assert_string_equal(find_header(f->fx, "X-Spam-Flag"), "YES");
	assert_string_equal(find_header(f->fx, "X-Spam-Status"), "Yes, score=5.0 tests=R1");

	assert_int_equal(score_action(f, "9.34"), ACTION_JUNK);
	assert_string_equal(find_header(f->fx, "X-Spam-Flag"), "YES");
	assert_string_equal(find_header(f->fx, "X-Spam-Status"), "Yes, score=9.3 tests=R1");

	assert_int_equal(score_action(f, "4.9"), ACTION_DELIVER);
	assert_string_equal(find_header(f->fx, "X-Spam-Score"), "4.9");
	assert_null(find_header(f->fx, "X-Spam-Flag"));
	assert_null(find_header(f->fx, "X-Spam-Status"));
}

static void test_no_stages(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	make_pipeline(f, "", "");
	for (enum phase p = PHASE_CONNECT; p < PHASE_COUNT; p++)
		assert_false(pipeline_has_phase(f->pl, p));
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_CONTINUE);
	assert_int_equal(out.action, ACTION_DELIVER);
	assert_true(out.score == 0);
	assert_int_equal(filter_tx_headers(f->fx, NULL), 0);
	assert_int_equal(filter_tx_stage_log(f->fx, NULL), 0);
}

static void test_phase_filtering(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;

	make_pipeline(f, "\"rcptonly\"",
		      "rcptonly { score = 3.0 rule = \"RCPT_RULE\" }\n");
	assert_true(pipeline_has_phase(f->pl, PHASE_RCPT));
	assert_false(pipeline_has_phase(f->pl, PHASE_DATA));
	assert_false(pipeline_has_phase(f->pl, PHASE_CONNECT));

	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_DONE);
	assert_int_equal(ts_stats_find("rcptonly")->checks, 0);
	assert_true(out.score == 0);
	/* the pipeline has a stage, so DATA still reports the score */
	assert_string_equal(find_header(f->fx, "X-Spam-Score"), "0.0");

	assert_int_equal(run_phase(f, PHASE_RCPT, &out), PIPELINE_DONE);
	assert_int_equal(ts_stats_find("rcptonly")->checks, 1);
	assert_true(out.score == 3.0);
}

static void test_run_cancel(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	struct pipeline_run *run = NULL;

	make_pipeline(f, "\"alpha\", \"beta\", \"gamma\"",
		      "alpha { score = 1.0 }\n"
		      "beta { mode = \"deferred\" score = 2.0 }\n"
		      "gamma { score = 4.0 }\n");
	assert_int_equal(pipeline_run(f->pl, PHASE_DATA, &f->env, &f->msg, f->fx,
				      test_done_cb, f, &out, &run), PIPELINE_PENDING);
	assert_non_null(run);
	assert_int_equal(handle_count(), 1);
	pipeline_run_cancel(&run);
	assert_null(run);
	assert_int_equal(handle_count(), 0);
	assert_int_equal(ts_stats_find("beta")->cancels, 1);
	assert_null(stage_call_find(ts_stats_find("beta")->last_id));
	/* nothing is left on the loop (the stage freed its timer in cancel) */
	assert_int_equal(event_base_dispatch(f->base), 1);
	assert_int_equal(f->done_calls, 0);
	assert_int_equal(ts_stats_find("gamma")->checks, 0);
	pipeline_run_cancel(&run); /* NULL is fine */
}

static void test_run_cancel_after_completion(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	struct pipeline_run *run = NULL;

	/* the stage has answered but the run has not resumed yet (the stage
	 * breaks the loop right after stage_call_done()): a cancel then must
	 * not call the stage's cancel(), and done() is never called */
	make_pipeline(f, "\"alpha\", \"beta\"",
		      "alpha { mode = \"deferred\" score = 1.0 }\n"
		      "beta { score = 1.0 }\n");
	ts_break_after_done = true;
	assert_int_equal(pipeline_run(f->pl, PHASE_DATA, &f->env, &f->msg, f->fx,
				      test_done_cb, f, &out, &run), PIPELINE_PENDING);
	assert_int_equal(event_base_dispatch(f->base), 0);
	assert_true(event_base_got_break(f->base));
	assert_int_equal(handle_count(), 0); /* the call was completed */
	assert_int_equal(f->done_calls, 0);
	pipeline_run_cancel(&run);
	assert_int_equal(ts_stats_find("alpha")->cancels, 0);
	assert_int_equal(event_base_dispatch(f->base), 1);
	assert_int_equal(f->done_calls, 0);
	assert_int_equal(ts_stats_find("beta")->checks, 0);
}

static void test_refcount(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	struct pipeline_run *run = NULL;
	struct pipeline *extra;

	make_pipeline(f, "\"alpha\", \"beta\"",
		      "alpha { mode = \"deferred\" }\nbeta { }\n");
	assert_int_equal(ts_stats_find("alpha")->created, 1);
	extra = pipeline_ref(f->pl);
	assert_ptr_equal(extra, f->pl);
	pipeline_unref(&extra);
	assert_null(extra);
	assert_int_equal(ts_stats_find("alpha")->destroyed, 0);

	/* a run in flight keeps the pipeline (and its stages) alive after
	 * the owner lets go, as after a reload */
	assert_int_equal(pipeline_run(f->pl, PHASE_DATA, &f->env, &f->msg, f->fx,
				      test_done_cb, f, &out, &run), PIPELINE_PENDING);
	pipeline_unref(&f->pl);
	assert_null(f->pl);
	assert_int_equal(ts_stats_find("alpha")->destroyed, 0);
	assert_int_equal(event_base_dispatch(f->base), 1);
	assert_int_equal(f->done_calls, 1);
	assert_int_equal(ts_stats_find("beta")->checks, 1);
	assert_int_equal(ts_stats_find("alpha")->destroyed, 1);
	assert_int_equal(ts_stats_find("beta")->destroyed, 1);
}

static void test_unknown_stage(void **state)
{
	struct fixture *f = *state;
	char *error = NULL;

	/* config_load refuses an unknown stage with file:line ... */
	assert_int_equal(load_config(f, "pipeline { stages = {\"alpha\", \"nosuch\"} }\n"), -1);
	/* ... and pipeline_create refuses one that reaches it anyway */
	assert_int_equal(load_config(f, "pipeline { stages = {\"alpha\", \"beta\"} }\n"), 0);
	struct pipeline_settings *ps = (struct pipeline_settings *)pipeline_settings(f->cfg);
	free(ps->stages[1]);
	ps->stages[1] = strdup("nosuch");
	assert_int_equal(pipeline_create(f->cfg, &f->pl, &error), -1);
	assert_null(f->pl);
	assert_string_equal(error, "pipeline: unknown stage 'nosuch'");
	free(error);
	/* the stage built before the error was destroyed again */
	assert_int_equal(ts_stats_find("alpha")->created, 1);
	assert_int_equal(ts_stats_find("alpha")->destroyed, 1);
}

static void test_bad_on_error(void **state)
{
	struct fixture *f = *state;
	char *error = NULL;

	assert_int_equal(load_config(f, "pipeline { stages = {\"alpha\"} }\n"
				     "alpha { on_error = \"maybe\" }\n"), 0);
	assert_int_equal(pipeline_create(f->cfg, &f->pl, &error), -1);
	assert_non_null(error);
	assert_non_null(strstr(error, "alpha"));
	assert_non_null(strstr(error, "on_error"));
	assert_non_null(strstr(error, "maybe"));
	free(error);
	assert_int_equal(ts_stats_find("alpha")->created, 0);
}

static void test_create_error_and_duplicate(void **state)
{
	struct fixture *f = *state;
	char *error = NULL;

	assert_int_equal(load_config(f, "pipeline { stages = {\"alpha\"} }\n"
				     "alpha { mode = \"sideways\" }\n"), 0);
	assert_int_equal(pipeline_create(f->cfg, &f->pl, &error), -1);
	assert_string_equal(error, "pipeline: stage 'alpha': bad mode 'sideways'");
	free(error);
	config_unref(&f->cfg);

	assert_int_equal(load_config(f, "pipeline { stages = {\"alpha\", \"alpha\"} }\n"), -1);
	assert_int_equal(load_config(f, "pipeline { stages = {\"alpha\", \"beta\"} }\n"), 0);
	struct pipeline_settings *ps = (struct pipeline_settings *)pipeline_settings(f->cfg);
	free(ps->stages[1]);
	ps->stages[1] = strdup("alpha");
	assert_int_equal(pipeline_create(f->cfg, &f->pl, &error), -1);
	assert_string_equal(error, "pipeline: stage 'alpha' listed twice");
	free(error);
}

static void test_config_options(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	char *error = NULL;

	/* a stage without its own timeout gets pipeline.stage_timeout */
	assert_int_equal(load_config(f, "pipeline { stages = {\"alpha\"} stage_timeout = 10 }\n"
				     "alpha { mode = \"hang\" on_error = \"tempfail\" }\n"), 0);
	assert_int_equal(pipeline_create(f->cfg, &f->pl, &error), 0);
	assert_int_equal(run_phase(f, PHASE_HELO, &out), PIPELINE_PENDING);
	assert_int_equal(out.verdict, VERDICT_TEMPFAIL);
	assert_int_equal(ts_stats_find("alpha")->cancels, 1);
	pipeline_unref(&f->pl);
	config_unref(&f->cfg);

	/* the stage's own options and the common ones share its section; an
	 * unknown option there is a config error */
	assert_int_equal(load_config(f, "alpha { score = 1.0 timeout = 5 on_error = \"accept\" }\n"), 0);
	config_unref(&f->cfg);
	assert_int_equal(load_config(f, "alpha { colour = \"blue\" }\n"), -1);
	assert_null(f->cfg);
	assert_non_null(strstr(load_error, "colour"));
}

static void test_register_replaces(void **state)
{
	struct fixture *f = *state;
	static const struct stage_ops alpha_rcpt =
		TS_OPS("alpha", PHASE_BIT(PHASE_RCPT), ON_ERROR_TEMPFAIL);
	struct pipeline_outcome out;

	assert_ptr_equal(filters_find_stage("alpha"), &ts_alpha);
	filters_register_stage(&alpha_rcpt);
	assert_ptr_equal(filters_find_stage("alpha"), &alpha_rcpt);
	make_pipeline(f, "\"alpha\"", "alpha { mode = \"fail\" }\n");
	assert_false(pipeline_has_phase(f->pl, PHASE_DATA));
	assert_int_equal(run_phase(f, PHASE_RCPT, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_TEMPFAIL); /* the new default */
	pipeline_unref(&f->pl);
	config_unref(&f->cfg);

	filters_register_stage(&ts_alpha);
	assert_ptr_equal(filters_find_stage("alpha"), &ts_alpha);
	assert_null(filters_find_stage("nosuch"));
	assert_null(filters_find_stage(NULL));
}

/* ---------------------------------------------------------- filter_tx */

static void test_filter_tx_formats(void **state)
{
	struct filter_tx *fx = filter_tx_new();
	struct filter_tx *copy;
	const struct filter_hit *hits;
	const struct filter_header *hdrs;
	char *s;

	s = filter_tx_format_stages(fx);
	assert_string_equal(s, "");
	free(s);
	s = filter_tx_format_hits(fx);
	assert_string_equal(s, "");
	free(s);

	filter_tx_add_stage_log(fx, "dnsbl", PHASE_CONNECT, "hit", 1200);
	filter_tx_add_stage_log(fx, "rules", PHASE_DATA, "ok", 300);
	filter_tx_add_score(fx, "rules", "RULE_A", 2.5, "a description");
	filter_tx_add_score(fx, "rules", NULL, 0.5, NULL); /* score, no hit */
	filter_tx_add_score(fx, "rules", "RULE_B", -1.0, NULL);
	filter_tx_add_header(fx, "X-Test", "value");

	s = filter_tx_format_stages(fx);
	assert_string_equal(s, "dnsbl:hit:1200,rules:ok:300");
	free(s);
	s = filter_tx_format_hits(fx);
	assert_string_equal(s, "RULE_A,RULE_B");
	free(s);
	assert_true(filter_tx_score(fx) == 2.0);

	/* the clone is deep: changing one leaves the other alone */
	copy = filter_tx_clone(fx);
	filter_tx_add_score(fx, "x", "RULE_C", 1.0, NULL);
	filter_tx_add_header(fx, "X-More", "1");
	filter_tx_add_stage_log(fx, "x", PHASE_DATA, "ok", 1);
	filter_tx_free(&fx);
	assert_null(fx);
	assert_true(filter_tx_score(copy) == 2.0);
	assert_int_equal(filter_tx_hits(copy, &hits), 2);
	assert_string_equal(hits[0].stage, "rules");
	assert_string_equal(hits[0].rule, "RULE_A");
	assert_string_equal(hits[0].desc, "a description");
	assert_true(hits[0].score == 2.5);
	assert_null(hits[1].desc);
	assert_int_equal(filter_tx_headers(copy, &hdrs), 1);
	assert_string_equal(hdrs[0].name, "X-Test");
	assert_string_equal(hdrs[0].value, "value");
	s = filter_tx_format_stages(copy);
	assert_string_equal(s, "dnsbl:hit:1200,rules:ok:300");
	free(s);

	/* separators inside names cannot break the fields */
	filter_tx_add_score(copy, "r", "BAD,NAME:X Y", 0, NULL);
	s = filter_tx_format_hits(copy);
	assert_string_equal(s, "RULE_A,RULE_B,BAD_NAME_X_Y");
	free(s);
	filter_tx_free(&copy);
	filter_tx_free(&copy); /* NULL is fine */
}

static void test_names(void **state)
{
	assert_string_equal(phase_name(PHASE_CONNECT), "connect");
	assert_string_equal(phase_name(PHASE_DATA), "data");
	assert_string_equal(verdict_name(VERDICT_QUARANTINE), "quarantine");
	assert_string_equal(action_name(ACTION_JUNK), "junk");
	assert_string_equal(action_name(ACTION_TEMPFAIL), "tempfail");
}

/* ------------------------------------------------------------ handles */

static void test_handles_basic(void **state)
{
	enum { N = 5000 };
	static int objs[N];
	static uint64_t ids[N];

	assert_int_equal(handle_count(), 0);
	assert_null(handle_lookup(0));
	assert_null(handle_lookup(UINT64_MAX));
	for (int i = 0; i < N; i++) {
		ids[i] = handle_register(&objs[i]);
		assert_true(ids[i] != 0);
		if (i > 0)
			assert_true(ids[i] != ids[i - 1]);
	}
	assert_int_equal(handle_count(), N);
	for (int i = 0; i < N; i++)
		assert_ptr_equal(handle_lookup(ids[i]), &objs[i]);
	/* remove every other one: the rest must still be found */
	for (int i = 0; i < N; i += 2)
		handle_unregister(ids[i]);
	assert_int_equal(handle_count(), N / 2);
	for (int i = 0; i < N; i++) {
		if (i % 2 == 0)
			assert_null(handle_lookup(ids[i]));
		else
			assert_ptr_equal(handle_lookup(ids[i]), &objs[i]);
	}
	handle_unregister(ids[0]); /* twice: no effect */
	assert_int_equal(handle_count(), N / 2);
	/* a re-registered object gets a new id; the old one stays dead */
	{
		uint64_t again = handle_register(&objs[0]);

		assert_true(again != ids[0]);
		assert_null(handle_lookup(ids[0]));
		assert_ptr_equal(handle_lookup(again), &objs[0]);
		handle_unregister(again);
	}
	for (int i = 1; i < N; i += 2)
		handle_unregister(ids[i]);
	assert_int_equal(handle_count(), 0);
	assert_null(handle_lookup(ids[1]));
}

struct handle_thread_arg {
	uint64_t main_id;
	uint64_t ids[100];
	bool main_id_visible;
};

static void *handle_thread(void *p)
{
	struct handle_thread_arg *a = p;
	int x;

	a->main_id_visible = handle_lookup(a->main_id) != NULL;
	for (int i = 0; i < 100; i++)
		a->ids[i] = handle_register(&x);
	for (int i = 0; i < 100; i++)
		handle_unregister(a->ids[i]);
	return NULL;
}

static void test_handles_threads(void **state)
{
	struct handle_thread_arg a = { 0 };
	pthread_t t;
	int x;
	uint64_t mine[100];

	a.main_id = handle_register(&x);
	assert_int_equal(pthread_create(&t, NULL, handle_thread, &a), 0);
	for (int i = 0; i < 100; i++)
		mine[i] = handle_register(&x);
	assert_int_equal(pthread_join(t, NULL), 0);
	/* the other thread's table is its own */
	assert_false(a.main_id_visible);
	assert_int_equal(handle_count(), 101);
	/* ids are unique across threads */
	for (int i = 0; i < 100; i++) {
		assert_true(a.ids[i] != a.main_id);
		for (int j = 0; j < 100; j++)
			assert_true(a.ids[i] != mine[j]);
		assert_null(handle_lookup(a.ids[i]));
	}
	for (int i = 0; i < 100; i++)
		handle_unregister(mine[i]);
	handle_unregister(a.main_id);
	assert_int_equal(handle_count(), 0);
}


/* ------------------------------------------------- header validation */

/* Unfold a folded value: drop each "\n" (the WSP after it stays). */
static char *unfold(const char *v)
{
	char *out = xstrdup(v), *o = out;

	for (const char *p = v; *p != '\0'; p++) {
		if (*p != '\n')
			*o++ = *p;
	}
	*o = '\0';
	return out;
}

/* Every physical line of "Name: value" fits in max columns. */
static void assert_lines_within(const char *name, const char *value, size_t max)
{
	size_t col = strlen(name) + 2;

	for (const char *p = value; *p != '\0'; p++) {
		if (*p == '\n') {
			assert_true(col <= max);
			assert_true(p[1] == ' ' || p[1] == '\t'); /* a fold, not a new header */
			col = 0;
			continue;
		}
		col++;
	}
	assert_true(col <= max);
}

static void test_header_injection_refused(void **state)
{
	struct filter_tx *fx = filter_tx_new();
	const struct filter_refusal *r;
	static const char *const bad_values[] = {
		"x\r\nBcc: victim@example.org",  /* a second header */
		"x\nBcc: victim@example.org",    /* the same with a bare LF */
		"x\rBcc: victim@example.org",    /* a bare CR */
		"x\r\n\r\nbody text",            /* end of headers, then a body */
		"ends with CRLF\r\n",
		"\n",
		"bell\a", "esc\x1b[0m", "del\x7f", "nul-ish\x01",
	};
	static const char *const bad_names[] = {
		"", "X-A:B", "X A", "X-A\t", "X-\r\nBcc", "X-\nB", "Caf\xc3\xa9",
		"X-\x7f", ":",
		"X-Very-Long-Name-0123456789-0123456789-0123456789-0123456789-0123456789-01234",
	};

	filter_tx_set_stage(fx, "evil");
	for (size_t i = 0; i < N_ELEMENTS(bad_values); i++)
		assert_int_equal(filter_tx_add_header(fx, "X-Evil", bad_values[i]), -1);
	for (size_t i = 0; i < N_ELEMENTS(bad_names); i++)
		assert_int_equal(filter_tx_add_header(fx, bad_names[i], "v"), -1);
	assert_int_equal(filter_tx_add_header(fx, NULL, "v"), -1);
	assert_int_equal(filter_tx_add_header(fx, "X-Evil", NULL), -1);
	/* nothing got in, not even a "repaired" copy */
	assert_int_equal(filter_tx_headers(fx, NULL), 0);
	assert_int_equal(filter_tx_refusals(fx, &r),
			 N_ELEMENTS(bad_values) + N_ELEMENTS(bad_names) + 2);
	/* each refusal names the stage and says why, printably */
	assert_string_equal(r[0].stage, "evil");
	assert_string_equal(r[0].name, "X-Evil");
	assert_string_equal(r[0].reason, "CR or LF in value");
	assert_string_equal(r[6].reason, "control character in value");
	assert_string_equal(r[N_ELEMENTS(bad_values) + 4].name, "X-??Bcc");
	for (size_t i = 0; i < filter_tx_refusals(fx, NULL); i++) {
		for (const char *p = r[i].name; *p != '\0'; p++)
			assert_true(*p > 32 && *p < 127);
	}

	/* the pipeline's own headers are logged as "pipeline" */
	filter_tx_set_stage(fx, NULL);
	assert_int_equal(filter_tx_add_header(fx, "X-Spam-Score", "1\r\n"), -1);
	assert_int_equal(filter_tx_refusals(fx, &r),
			 N_ELEMENTS(bad_values) + N_ELEMENTS(bad_names) + 3);
	assert_string_equal(r[filter_tx_refusals(fx, NULL) - 1].stage, "pipeline");

	/* fine: tabs, 8-bit UTF-8 text, an empty value, every ftext octet */
	assert_int_equal(filter_tx_add_header(fx, "X-Tab", "a\tb"), 0);
	assert_int_equal(filter_tx_add_header(fx, "X-Utf8", "Gr\xc3\xbc\xc3\x9f" "e"), 0);
	assert_int_equal(filter_tx_add_header(fx, "X-Empty", ""), 0);
	assert_int_equal(filter_tx_add_header(fx, "!#$%&'*+-.^_`|~09AZaz", "x"), 0);
	assert_int_equal(filter_tx_headers(fx, NULL), 4);

	/* a clone keeps headers and refusals */
	{
		struct filter_tx *copy = filter_tx_clone(fx);

		assert_int_equal(filter_tx_headers(copy, NULL), 4);
		assert_int_equal(filter_tx_refusals(copy, NULL), filter_tx_refusals(fx, NULL));
		filter_tx_free(&copy);
	}
	filter_tx_free(&fx);
}

static void test_header_folding(void **state)
{
	struct filter_tx *fx = filter_tx_new();
	const struct filter_header *h;
	char value[2048], *plain;
	size_t n = 0;

	/* short values are kept as they are */
	assert_int_equal(filter_tx_add_header(fx, "X-Short", "a b  c"), 0);
	/* many words: folded before whitespace, each line within 78 */
	for (int i = 0; i < 40; i++)
		n += (size_t)snprintf(value + n, sizeof(value) - n, "%sRULE_%02d", i ? " " : "", i);
	assert_int_equal(filter_tx_add_header(fx, "X-Spam-Status", value), 0);
	/* one word of 900 octets cannot be folded but fits in 998 */
	memset(value, 'w', 900);
	value[900] = '\0';
	assert_int_equal(filter_tx_add_header(fx, "X-Long-Word", value), 0);
	/* a word of 990 octets with the name in front does not: refused */
	memset(value, 'w', 990);
	value[990] = '\0';
	assert_int_equal(filter_tx_add_header(fx, "X-Too-Long", value), -1);
	/* ... but the same after a space can go on a line of its own */
	value[0] = 'a';
	value[1] = ' ';
	assert_int_equal(filter_tx_add_header(fx, "X-Folded-Long", value), 0);

	assert_int_equal(filter_tx_headers(fx, &h), 4);
	assert_string_equal(h[0].value, "a b  c");
	assert_non_null(strchr(h[1].value, '\n'));
	assert_lines_within(h[1].name, h[1].value, 78);
	plain = unfold(h[1].value);
	for (int i = 0, off = 0; i < 40; i++) {
		char want[16];

		snprintf(want, sizeof(want), "%sRULE_%02d", i ? " " : "", i);
		assert_memory_equal(plain + off, want, strlen(want));
		off += (int)strlen(want);
	}
	free(plain);
	assert_null(strchr(h[2].value, '\n'));
	assert_lines_within(h[2].name, h[2].value, 998);
	assert_true(strncmp(h[3].value, "a\n ", 3) == 0);
	assert_lines_within(h[3].name, h[3].value, 998);
	/* trailing whitespace is never a line of its own */
	assert_int_equal(filter_tx_add_header(fx, "X-Trailing",
		"0123456789012345678901234567890123456789012345678901234567890123456789    "), 0);
	assert_int_equal(filter_tx_headers(fx, &h), 5);
	assert_null(strchr(h[4].value, '\n'));
	filter_tx_free(&fx);
}

static void test_header_refused_in_pipeline(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	const struct filter_refusal *r;

	/* a stage (here: a deferred one) tries to smuggle a Bcc header in */
	make_pipeline(f, "\"alpha\", \"beta\"",
		      "alpha { mode = \"deferred\" header = \"X-Alpha: ok\\r\\nBcc: victim@example.org\" }\n"
		      "beta { header = \"X-Beta: fine\" }\n");
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_PENDING);
	assert_int_equal(out.verdict, VERDICT_CONTINUE);
	assert_null(find_header(f->fx, "X-Alpha"));
	assert_null(find_header(f->fx, "Bcc"));
	assert_string_equal(find_header(f->fx, "X-Beta"), "fine");
	assert_non_null(find_header(f->fx, "X-Spam-Score"));
	assert_int_equal(filter_tx_refusals(f->fx, &r), 1);
	assert_string_equal(r[0].stage, "alpha");
	assert_string_equal(r[0].name, "X-Alpha");
}

/* ----------------------------------------------------------- workers */

/* Jobs for the lane tests: a blocking job waits on `release` after
 * meeting everyone at `started`. */
struct lane_test {
	pthread_barrier_t started, release;
	struct event_base *base;
	atomic_int scan_finished;
	int scan_done, delivery_done, scan_expected;
	bool delivery_worked;
	bool scans_blocked_when_delivered;
};

struct lane_job {
	struct lane_test *t;
	bool block;
};

static void lane_scan_work(void *arg)
{
	struct lane_job *j = arg;

	if (j->block) {
		pthread_barrier_wait(&j->t->started);
		pthread_barrier_wait(&j->t->release);
	}
	atomic_fetch_add(&j->t->scan_finished, 1);
}

static void lane_scan_done(void *arg)
{
	struct lane_job *j = arg;

	if (++j->t->scan_done == j->t->scan_expected)
		event_base_loopbreak(j->t->base);
	free(j);
}

static void lane_delivery_work(void *arg)
{
	struct lane_test *t = arg;

	t->delivery_worked = true;
}

static void lane_delivery_done(void *arg)
{
	struct lane_test *t = arg;

	t->delivery_done++;
	/* no scan job got past its barrier: the delivery did not wait */
	t->scans_blocked_when_delivered = atomic_load(&t->scan_finished) == 0;
	event_base_loopbreak(t->base);
}

static struct lane_job *lane_job_new(struct lane_test *t, bool block)
{
	struct lane_job *j = xcalloc(1, sizeof(*j));

	j->t = t;
	j->block = block;
	return j;
}

static void test_workers_lanes(void **state)
{
	struct lane_test t = { 0 };
	struct workers *w = workers_create(1, 2, 2);
	struct lane_job *extra;

	t.base = event_base_new();
	t.scan_expected = 4;
	/* 2 scan workers + this thread */
	assert_int_equal(pthread_barrier_init(&t.started, NULL, 3), 0);
	assert_int_equal(pthread_barrier_init(&t.release, NULL, 3), 0);
	assert_int_equal(workers_submit(w, WORKER_LANE_SCAN, t.base, lane_scan_work,
					lane_scan_done, lane_job_new(&t, true)), 0);
	assert_int_equal(workers_submit(w, WORKER_LANE_SCAN, t.base, lane_scan_work,
					lane_scan_done, lane_job_new(&t, true)), 0);
	pthread_barrier_wait(&t.started); /* both scan workers are busy now */
	/* the scan queue holds two more, then it is full */
	assert_int_equal(workers_submit(w, WORKER_LANE_SCAN, t.base, lane_scan_work,
					lane_scan_done, lane_job_new(&t, false)), 0);
	assert_int_equal(workers_submit(w, WORKER_LANE_SCAN, t.base, lane_scan_work,
					lane_scan_done, lane_job_new(&t, false)), 0);
	extra = lane_job_new(&t, false);
	errno = 0;
	assert_int_equal(workers_submit(w, WORKER_LANE_SCAN, t.base, lane_scan_work,
					lane_scan_done, extra), -1);
	assert_int_equal(errno, EAGAIN);
	free(extra);
	assert_int_equal(workers_pending(w), 4);
	errno = 0;
	assert_int_equal(workers_submit(w, WORKER_LANE_COUNT, t.base, lane_scan_work,
					lane_scan_done, NULL), -1);
	assert_int_equal(errno, EINVAL);

	/* a delivery completes, start to done(), while every scan worker is
	 * blocked and the scan queue is full */
	assert_int_equal(workers_submit(w, WORKER_LANE_DELIVERY, t.base, lane_delivery_work,
					lane_delivery_done, &t), 0);
	assert_int_equal(event_base_loop(t.base, EVLOOP_NO_EXIT_ON_EMPTY), 0);
	assert_int_equal(t.delivery_done, 1);
	assert_true(t.delivery_worked);
	assert_true(t.scans_blocked_when_delivered);
	assert_int_equal(atomic_load(&t.scan_finished), 0);
	assert_int_equal(workers_pending(w), 4);

	/* let the scans go: all four finish and are counted out */
	pthread_barrier_wait(&t.release);
	assert_int_equal(event_base_loop(t.base, EVLOOP_NO_EXIT_ON_EMPTY), 0);
	assert_int_equal(t.scan_done, 4);
	assert_int_equal(workers_pending(w), 0);

	workers_destroy(&w);
	assert_null(w);
	pthread_barrier_destroy(&t.started);
	pthread_barrier_destroy(&t.release);
	event_base_free(t.base);
}

/* ----------------------------------------------------- scanner stage */

/* A stage whose check hands its work to the scan lane. The work reads the
 * whole body and a field of the stage instance — exactly what must stay
 * alive after a cancel — and may be held on the two barriers. */
#define SCANNER_MAGIC 0x5ca11e5u

struct scanner_stage {
	struct stage hdr; /* must be first */
	unsigned magic;
	double score;
};

struct scanner_stats {
	int created, destroyed, submitted, submit_failed;
	int done_live, done_dropped;
	size_t bytes_seen;
	unsigned magic_seen;
	bool block;                 /* jobs wait on the barriers */
	pthread_barrier_t started, release;
	struct event_base *break_base; /* done() breaks this loop */
};
static struct scanner_stats scanner_stats;

struct scanner_job {
	struct scanner_stage *st;
	struct msgbody *body; /* not a reference: the job helper holds one */
	size_t bytes;
	unsigned magic;
};

static cfg_opt_t scanner_opts[] = {
	CFG_FLOAT("score", 1.0, CFGF_NONE),
	CFG_END()
};

static int scanner_create(cfg_t *section, const struct mx_config *cfg,
			  struct stage **st_r, char **error_r)
{
	struct scanner_stage *st = xcalloc(1, sizeof(*st));

	st->magic = SCANNER_MAGIC;
	st->score = cfg_getfloat(section, "score");
	scanner_stats.created++;
	*st_r = &st->hdr;
	return 0;
}

static void scanner_destroy(struct stage *stage)
{
	struct scanner_stage *st = (struct scanner_stage *)stage;

	scanner_stats.destroyed++;
	st->magic = 0;
	free(st);
}

static void scanner_work(void *arg)
{
	struct scanner_job *job = arg;
	const char *data;
	size_t len;

	if (scanner_stats.block) {
		pthread_barrier_wait(&scanner_stats.started);
		pthread_barrier_wait(&scanner_stats.release);
	}
	/* after a cancel and the owners letting go: still valid memory */
	data = msgbody_contents(job->body, &len);
	for (size_t i = 0; data != NULL && i < len; i++)
		job->bytes += data[i] != '\0';
	job->magic = job->st->magic;
}

static void scanner_done(struct stage_call *call, void *arg)
{
	struct scanner_job *job = arg;

	scanner_stats.bytes_seen = job->bytes;
	scanner_stats.magic_seen = job->magic;
	if (call == NULL) {
		scanner_stats.done_dropped++;
	} else {
		scanner_stats.done_live++;
		filter_tx_add_score(call->fx, call->stage->name, "SCANNED", job->st->score, NULL);
		call->result.verdict = VERDICT_CONTINUE;
		stage_call_done(call, CHECK_DONE);
	}
	if (scanner_stats.break_base != NULL)
		event_base_loopbreak(scanner_stats.break_base);
	free(job);
}

static enum check_status scanner_check(struct stage *stage, struct stage_call *call)
{
	struct scanner_stage *st = (struct scanner_stage *)stage;
	struct scanner_job *job;

	if (call->phase != PHASE_DATA)
		return CHECK_DONE;
	job = xcalloc(1, sizeof(*job));
	job->st = st;
	job->body = call->msg->body;
	if (stage_submit_job(call, scanner_work, scanner_done, job) < 0) {
		scanner_stats.submit_failed++;
		free(job);
		return CHECK_FAILED;
	}
	scanner_stats.submitted++;
	return CHECK_PENDING;
}

static const struct stage_ops ts_scanner = {
	.name = "scanner", .phases = PHASE_BIT(PHASE_DATA),
	.default_on_error = ON_ERROR_TEMPFAIL, .opts = scanner_opts,
	.create = scanner_create, .check = scanner_check, .destroy = scanner_destroy,
};

static struct msgbody *sealed_body(const char *text)
{
	struct msgbody *b = msgbody_new("/tmp", 1 << 20);

	assert_int_equal(msgbody_append(b, text, strlen(text)), 0);
	assert_int_equal(msgbody_seal(b), 0);
	return b;
}

static const char scan_text[] = "Subject: scan me\r\n\r\nsome body\r\n";

static void scanner_reset(struct fixture *f)
{
	memset(&scanner_stats, 0, sizeof(scanner_stats));
	scanner_stats.break_base = f->base;
	f->env.workers = workers_create(1, 1, 1);
	f->msg.body = sealed_body(scan_text);
}

static void scanner_finish(struct fixture *f)
{
	assert_int_equal(workers_pending(f->env.workers), 0);
	workers_destroy(&f->env.workers);
	msgbody_free(&f->msg.body);
}

static void test_job_completes(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	struct pipeline_run *run = NULL;

	scanner_reset(f);
	make_pipeline(f, "\"scanner\"", "scanner { score = 2.5 }\n");
	assert_int_equal(pipeline_run(f->pl, PHASE_DATA, &f->env, &f->msg, f->fx,
				      test_done_cb, f, &out, &run), PIPELINE_PENDING);
	/* the job's done() runs on the loop, then the run resumes */
	assert_int_equal(event_base_loop(f->base, EVLOOP_NO_EXIT_ON_EMPTY), 0);
	assert_int_equal(event_base_dispatch(f->base), 1);
	assert_int_equal(f->done_calls, 1);
	assert_int_equal(scanner_stats.done_live, 1);
	assert_int_equal(scanner_stats.bytes_seen, strlen(scan_text));
	assert_int_equal(scanner_stats.magic_seen, SCANNER_MAGIC);
	assert_true(f->done_out.score == 2.5);
	scanner_finish(f);
}

/* The call is cancelled, the session lets go of the body and the pipeline
 * is dropped while the scan still runs: the job's references keep both
 * alive, done() goes to nobody, and everything is freed after it. */
static void test_job_cancelled_while_running(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	struct pipeline_run *run = NULL;

	scanner_reset(f);
	scanner_stats.block = true;
	assert_int_equal(pthread_barrier_init(&scanner_stats.started, NULL, 2), 0);
	assert_int_equal(pthread_barrier_init(&scanner_stats.release, NULL, 2), 0);
	make_pipeline(f, "\"scanner\"", "scanner { }\n");
	assert_int_equal(pipeline_run(f->pl, PHASE_DATA, &f->env, &f->msg, f->fx,
				      test_done_cb, f, &out, &run), PIPELINE_PENDING);
	pthread_barrier_wait(&scanner_stats.started); /* the scan is running */

	pipeline_run_cancel(&run);
	msgbody_free(&f->msg.body);   /* the session's reference */
	pipeline_unref(&f->pl);       /* the owner's reference, as after a reload */
	assert_int_equal(scanner_stats.destroyed, 0);
	assert_int_equal(handle_count(), 0);

	pthread_barrier_wait(&scanner_stats.release);
	assert_int_equal(event_base_loop(f->base, EVLOOP_NO_EXIT_ON_EMPTY), 0);
	assert_int_equal(scanner_stats.done_dropped, 1);
	assert_int_equal(scanner_stats.done_live, 0);
	assert_int_equal(scanner_stats.bytes_seen, strlen(scan_text));
	assert_int_equal(scanner_stats.magic_seen, SCANNER_MAGIC);
	/* the job's pipeline reference was the last one */
	assert_int_equal(scanner_stats.destroyed, 1);
	assert_int_equal(f->done_calls, 0);
	pthread_barrier_destroy(&scanner_stats.started);
	pthread_barrier_destroy(&scanner_stats.release);
	scanner_finish(f);
}

/* A timeout while the scan runs: on_error applies at once, the session is
 * answered, and the late result is dropped. */
static void test_job_timeout_while_running(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	struct pipeline_run *run = NULL;

	scanner_reset(f);
	scanner_stats.block = true;
	scanner_stats.break_base = NULL;
	assert_int_equal(pthread_barrier_init(&scanner_stats.started, NULL, 2), 0);
	assert_int_equal(pthread_barrier_init(&scanner_stats.release, NULL, 2), 0);
	make_pipeline(f, "\"scanner\"", "scanner { timeout = 10 }\n");
	assert_int_equal(pipeline_run(f->pl, PHASE_DATA, &f->env, &f->msg, f->fx,
				      test_done_cb, f, &out, &run), PIPELINE_PENDING);
	pthread_barrier_wait(&scanner_stats.started);
	/* only the timer is on the loop: dispatch returns after it fired */
	assert_int_equal(event_base_dispatch(f->base), 1);
	assert_int_equal(f->done_calls, 1);
	assert_int_equal(f->done_out.verdict, VERDICT_TEMPFAIL);
	assert_int_equal(scanner_stats.done_dropped + scanner_stats.done_live, 0);

	scanner_stats.break_base = f->base;
	pthread_barrier_wait(&scanner_stats.release);
	assert_int_equal(event_base_loop(f->base, EVLOOP_NO_EXIT_ON_EMPTY), 0);
	assert_int_equal(scanner_stats.done_dropped, 1);
	assert_true(filter_tx_score(f->fx) == 0);
	pthread_barrier_destroy(&scanner_stats.started);
	pthread_barrier_destroy(&scanner_stats.release);
	scanner_finish(f);
}

/* A full scan lane makes the stage fail; its on_error decides. */
static void test_job_scan_lane_full(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	struct lane_test t = { 0 };

	scanner_reset(f); /* 1 scan worker, queue of 1 */
	t.base = f->base;
	t.scan_expected = 2;
	assert_int_equal(pthread_barrier_init(&t.started, NULL, 2), 0);
	assert_int_equal(pthread_barrier_init(&t.release, NULL, 2), 0);
	assert_int_equal(workers_submit(f->env.workers, WORKER_LANE_SCAN, f->base,
					lane_scan_work, lane_scan_done, lane_job_new(&t, true)), 0);
	pthread_barrier_wait(&t.started);
	assert_int_equal(workers_submit(f->env.workers, WORKER_LANE_SCAN, f->base,
					lane_scan_work, lane_scan_done, lane_job_new(&t, false)), 0);

	make_pipeline(f, "\"scanner\"", "scanner { }\n"); /* on_error: tempfail */
	assert_int_equal(run_phase(f, PHASE_DATA, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_TEMPFAIL);
	assert_string_equal(out.reply.text, "scanner temporarily unavailable, try again later");
	assert_int_equal(scanner_stats.submit_failed, 1);
	assert_int_equal(scanner_stats.submitted, 0);

	pthread_barrier_wait(&t.release);
	assert_int_equal(event_base_loop(f->base, EVLOOP_NO_EXIT_ON_EMPTY), 0);
	assert_int_equal(t.scan_done, 2);
	pthread_barrier_destroy(&t.started);
	pthread_barrier_destroy(&t.release);
	scanner_finish(f);
}

/* ----------------------------------------------------- perloop stage */

/* A stage with per-loop state, run from real loop threads. Each loop's
 * loop_data records the loop it was made for and the thread that made it;
 * check() verifies it is handed the right one and answers later from a
 * timer on its loop. */
#define PERLOOP_LOOPS 2

struct perloop_data {
	unsigned index;
	pthread_t thread;
	struct event *ev; /* the pending answer */
	uint64_t call_id;
};

struct perloop_loop_stats {
	int inits, teardowns, checks, wrong;
	pthread_t init_thread, teardown_thread;
	int teardown_seq, last_done_seq;
};
static struct perloop_loop_stats perloop_stats[PERLOOP_LOOPS + 1];
static atomic_int perloop_seq;
static int perloop_created, perloop_destroyed;
static bool perloop_fail_init_on_1;

struct perloop_stage {
	struct stage hdr;
};

static int perloop_create(cfg_t *section, const struct mx_config *cfg,
			  struct stage **st_r, char **error_r)
{
	perloop_created++;
	*st_r = xcalloc(1, sizeof(struct perloop_stage));
	return 0;
}

static void perloop_destroy(struct stage *st)
{
	perloop_destroyed++;
	free(st);
}

static int perloop_loop_init(struct stage *st, const struct stage_env *env,
			     void **loop_data_r, char **error_r)
{
	struct perloop_data *d;

	if (env->loop_index > PERLOOP_LOOPS) {
		*error_r = xstrdup("loop index out of range");
		return -1;
	}
	if (perloop_fail_init_on_1 && env->loop_index == 1) {
		*error_r = xstrdup("no resolver on this loop");
		return -1;
	}
	d = xcalloc(1, sizeof(*d));
	d->index = env->loop_index;
	d->thread = pthread_self();
	d->ev = NULL;
	perloop_stats[env->loop_index].inits++;
	perloop_stats[env->loop_index].init_thread = pthread_self();
	*loop_data_r = d;
	return 0;
}

static void perloop_loop_teardown(struct stage *st, void *loop_data)
{
	struct perloop_data *d = loop_data;
	struct perloop_loop_stats *ls = &perloop_stats[d->index];

	ls->teardowns++;
	ls->teardown_thread = pthread_self();
	ls->teardown_seq = atomic_fetch_add(&perloop_seq, 1) + 1;
	if (d->ev != NULL)
		ls->wrong++; /* torn down under a pending call */
	free(d);
}

static void perloop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct perloop_data *d = arg;
	struct stage_call *call = stage_call_find(d->call_id);

	event_free(d->ev);
	d->ev = NULL;
	if (call == NULL) {
		perloop_stats[d->index].wrong++;
		return;
	}
	filter_tx_add_score(call->fx, "perloop", "LOOP", 1.0, NULL);
	call->result.verdict = VERDICT_CONTINUE;
	stage_call_done(call, CHECK_DONE);
}

static enum check_status perloop_check(struct stage *st, struct stage_call *call)
{
	struct perloop_data *d = call->loop_data;
	struct perloop_loop_stats *ls = &perloop_stats[call->env->loop_index];
	struct timeval tv = { 0, 1000 };

	ls->checks++;
	if (d == NULL || d->index != call->env->loop_index ||
	    !pthread_equal(d->thread, pthread_self()) || call->base != call->env->base ||
	    d->ev != NULL) {
		ls->wrong++;
		return CHECK_FAILED;
	}
	d->call_id = call->id;
	d->ev = evtimer_new(call->base, perloop_timer_cb, d);
	evtimer_add(d->ev, &tv);
	return CHECK_PENDING;
}

static void perloop_cancel(struct stage *st, struct stage_call *call)
{
	struct perloop_data *d = call->loop_data;

	if (d != NULL && d->ev != NULL) {
		event_free(d->ev);
		d->ev = NULL;
	}
}

static const struct stage_ops ts_perloop = {
	.name = "perloop", .phases = ALL_PHASES, .default_on_error = ON_ERROR_TEMPFAIL,
	.create = perloop_create, .loop_init = perloop_loop_init,
	.loop_teardown = perloop_loop_teardown, .check = perloop_check,
	.cancel = perloop_cancel, .destroy = perloop_destroy,
};

/* One loop thread: start, run every phase (each pends on the loop's own
 * timer), stop. Failures are recorded, not asserted: cmocka's asserts
 * belong to the main thread. */
struct loop_thread {
	struct pipeline *pl;
	unsigned index;
	pthread_t self;
	pthread_barrier_t *all_started;
	int failed_line;
	int runs, done_calls;
	double score;
	size_t handles_left;
};

#define LT_CHECK(lt, cond) do { if (!(cond) && (lt)->failed_line == 0) (lt)->failed_line = __LINE__; } while (0)

static void loop_thread_done(void *ctx, const struct pipeline_outcome *out)
{
	struct loop_thread *lt = ctx;

	lt->done_calls++;
	lt->score = out->score;
	perloop_stats[lt->index].last_done_seq = atomic_fetch_add(&perloop_seq, 1) + 1;
}

static void *loop_thread_main(void *arg)
{
	struct loop_thread *lt = arg;
	struct event_base *base = event_base_new();
	struct stage_env env = { .loop_index = lt->index, .base = base };
	struct filter_tx *fx = filter_tx_new();
	struct filter_msg msg = { .txid = "T", .session_id = "S", .client_addr = "192.0.2.9" };
	char *error = NULL;

	lt->self = pthread_self();
	LT_CHECK(lt, base != NULL);
	LT_CHECK(lt, pipeline_loop_start(lt->pl, &env, &error) == 0);
	free(error);
	error = NULL;
	/* the second start of the same loop is refused */
	LT_CHECK(lt, pipeline_loop_start(lt->pl, &env, &error) == -1);
	LT_CHECK(lt, error != NULL && strstr(error, "started twice") != NULL);
	free(error);
	/* both loops run at the same time */
	pthread_barrier_wait(lt->all_started);
	for (enum phase p = PHASE_CONNECT; p < PHASE_COUNT; p++) {
		struct pipeline_run *run = NULL;
		struct pipeline_outcome out;

		LT_CHECK(lt, pipeline_run(lt->pl, p, &env, &msg, fx, loop_thread_done, lt,
					  &out, &run) == PIPELINE_PENDING);
		lt->runs++;
		LT_CHECK(lt, event_base_dispatch(base) == 1);
	}
	/* one more, cancelled before its answer: teardown must still be clean */
	{
		struct pipeline_run *run = NULL;
		struct pipeline_outcome out;

		LT_CHECK(lt, pipeline_run(lt->pl, PHASE_DATA, &env, &msg, fx, loop_thread_done,
					  lt, &out, &run) == PIPELINE_PENDING);
		pipeline_run_cancel(&run);
	}
	lt->handles_left = handle_count();
	pipeline_loop_stop(lt->pl, lt->index);
	pipeline_loop_stop(lt->pl, lt->index); /* twice: nothing */
	filter_tx_free(&fx);
	event_base_free(base);
	return NULL;
}

static void perloop_reset(void)
{
	memset(perloop_stats, 0, sizeof(perloop_stats));
	atomic_store(&perloop_seq, 0);
	perloop_created = perloop_destroyed = 0;
	perloop_fail_init_on_1 = false;
}

static void test_loop_init_teardown_threads(void **state)
{
	struct fixture *f = *state;
	struct loop_thread lt[PERLOOP_LOOPS];
	pthread_t threads[PERLOOP_LOOPS];
	pthread_barrier_t all_started;

	perloop_reset();
	/* perloop only: the scripted stages keep unlocked statistics */
	make_pipeline(f, "\"perloop\"", "");
	assert_int_equal(perloop_created, 1);
	assert_int_equal(pthread_barrier_init(&all_started, NULL, PERLOOP_LOOPS), 0);
	for (unsigned i = 0; i < PERLOOP_LOOPS; i++) {
		lt[i] = (struct loop_thread){ .pl = f->pl, .index = i, .all_started = &all_started };
		assert_int_equal(pthread_create(&threads[i], NULL, loop_thread_main, &lt[i]), 0);
	}
	for (unsigned i = 0; i < PERLOOP_LOOPS; i++)
		assert_int_equal(pthread_join(threads[i], NULL), 0);
	pthread_barrier_destroy(&all_started);

	for (unsigned i = 0; i < PERLOOP_LOOPS; i++) {
		struct perloop_loop_stats *ls = &perloop_stats[i];

		if (lt[i].failed_line != 0)
			fail_msg("loop thread %u failed at line %d", i, lt[i].failed_line);
		assert_int_equal(lt[i].runs, PHASE_COUNT);
		assert_int_equal(lt[i].done_calls, PHASE_COUNT);
		assert_true(lt[i].score == PHASE_COUNT * 1.0);
		assert_int_equal(lt[i].handles_left, 0);
		/* exactly once each, on the loop's own thread */
		assert_int_equal(ls->inits, 1);
		assert_int_equal(ls->teardowns, 1);
		assert_true(pthread_equal(ls->init_thread, lt[i].self));
		assert_true(pthread_equal(ls->teardown_thread, lt[i].self));
		/* each check saw its own loop's data, never the other's */
		assert_int_equal(ls->checks, PHASE_COUNT + 1);
		assert_int_equal(ls->wrong, 0);
		/* teardown after the last run on that loop */
		assert_true(ls->last_done_seq > 0);
		assert_true(ls->teardown_seq > ls->last_done_seq);
	}
	assert_false(pthread_equal(lt[0].self, lt[1].self));
	assert_int_equal(perloop_destroyed, 0);
	pipeline_unref(&f->pl);
	assert_int_equal(perloop_destroyed, 1);
}

static void test_loop_init_failure_and_unstarted_loop(void **state)
{
	struct fixture *f = *state;
	struct pipeline_outcome out;
	struct stage_env env1 = { .loop_index = 1, .base = f->base };
	char *error = NULL;

	perloop_reset();
	perloop_fail_init_on_1 = true;
	make_pipeline(f, "\"perloop\", \"strict\"", "strict { }\n");
	/* loop 1 cannot start: the error names stage and loop, nothing is left */
	assert_int_equal(pipeline_loop_start(f->pl, &env1, &error), -1);
	assert_string_equal(error, "pipeline: stage 'perloop': loop 1: no resolver on this loop");
	free(error);
	assert_int_equal(perloop_stats[1].inits, 0);
	pipeline_loop_stop(f->pl, 1); /* not started: nothing */
	assert_int_equal(perloop_stats[1].teardowns, 0);

	/* a run on a loop that never started: the per-loop stage is not
	 * called and fails safe through its on_error (tempfail) */
	assert_int_equal(run_phase(f, PHASE_RCPT, &out), PIPELINE_DONE);
	assert_int_equal(out.verdict, VERDICT_TEMPFAIL);
	assert_string_equal(out.reply.text, "perloop temporarily unavailable, try again later");
	assert_int_equal(perloop_stats[0].checks, 0);
	assert_int_equal(ts_stats_find("strict")->checks, 0);

	/* started on loop 0 (this thread): the stage runs */
	assert_int_equal(pipeline_loop_start(f->pl, &f->env, &error), 0);
	filter_tx_free(&f->fx);
	f->fx = filter_tx_new();
	assert_int_equal(run_phase(f, PHASE_RCPT, &out), PIPELINE_PENDING);
	assert_int_equal(out.verdict, VERDICT_CONTINUE);
	assert_int_equal(perloop_stats[0].checks, 1);
	assert_int_equal(ts_stats_find("strict")->checks, 1);
	pipeline_loop_stop(f->pl, 0);
	assert_int_equal(perloop_stats[0].inits, 1);
	assert_int_equal(perloop_stats[0].teardowns, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_handles_basic),
		cmocka_unit_test(test_handles_threads),
		cmocka_unit_test(test_filter_tx_formats),
		cmocka_unit_test(test_names),
		cmocka_unit_test_setup_teardown(test_immediate_stages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deferred_stage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_two_deferred_stages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failing_on_error_accept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failing_on_error_tempfail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failing_with_own_reply, setup, teardown),
		cmocka_unit_test_setup_teardown(test_default_on_error_from_stage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout_tempfail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout_accept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout_late_completion, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reject_custom_reply, setup, teardown),
		cmocka_unit_test_setup_teardown(test_default_replies, setup, teardown),
		cmocka_unit_test_setup_teardown(test_default_tempfail_reply, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reply_sanitised, setup, teardown),
		cmocka_unit_test_setup_teardown(test_discard_quarantine, setup, teardown),
		cmocka_unit_test_setup_teardown(test_accept_short_circuit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_score_mapping, setup, teardown),
		cmocka_unit_test_setup_teardown(test_spam_headers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_stages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_phase_filtering, setup, teardown),
		cmocka_unit_test_setup_teardown(test_run_cancel, setup, teardown),
		cmocka_unit_test_setup_teardown(test_run_cancel_after_completion, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refcount, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_stage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_on_error, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_error_and_duplicate, setup, teardown),
		cmocka_unit_test_setup_teardown(test_config_options, setup, teardown),
		cmocka_unit_test_setup_teardown(test_register_replaces, setup, teardown),
		cmocka_unit_test(test_header_injection_refused),
		cmocka_unit_test(test_header_folding),
		cmocka_unit_test_setup_teardown(test_header_refused_in_pipeline, setup, teardown),
		cmocka_unit_test(test_workers_lanes),
		cmocka_unit_test_setup_teardown(test_job_completes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_job_cancelled_while_running, setup, teardown),
		cmocka_unit_test_setup_teardown(test_job_timeout_while_running, setup, teardown),
		cmocka_unit_test_setup_teardown(test_job_scan_lane_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loop_init_teardown_threads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loop_init_failure_and_unstarted_loop, setup, teardown),
	};

	/* workers post completions across threads */
	evthread_use_pthreads();

	filters_register_stage(&ts_alpha);
	filters_register_stage(&ts_beta);
	filters_register_stage(&ts_gamma);
	filters_register_stage(&ts_rcptonly);
	filters_register_stage(&ts_strict);
	filters_register_stage(&ts_scanner);
	filters_register_stage(&ts_perloop);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
