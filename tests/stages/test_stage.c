/*
 * test_stage.c — a configurable filter stage for the integration tests.
 *
 * No real stage exists yet, so this is what lets the integration suite
 * drive the daemon's side of the pipeline contract end to end: it is linked
 * into a test-only build of the daemon (tests/mxguard-teststage) and
 * registers itself before main() runs, so `pipeline { stages = {"teststage"} }`
 * plus a `teststage { ... }` section configure it like any other stage.
 *
 * The stage registers for every phase but acts only at the one named by
 * `phase`; everywhere else it answers CONTINUE at once. Acting means: fail
 * (CHECK_FAILED) if `fail`, never answer if `never` (for stage timeouts),
 * otherwise add `score` under rule `rule`, add `header`, and answer
 * `verdict` with `code`/`enhanced`/`text` — at once when delay_ms is 0,
 * else from a libevent timer on the call's loop, finding the call again by
 * id as the contract asks. `only_rcpt` narrows a RCPT-phase stage to one
 * candidate recipient.
 *
 * The same code is registered a second time as "teststage2", so a test can
 * combine two behaviours (say, accept at connect and a score at DATA).
 *
 * Each time the stage acts it logs "teststage acting ..." with the session
 * id: tests wait for that line to know a call is pending (no sleeping).
 */
#include "config.h"

#include <confuse.h>
#include <event2/event.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "filters/filters.h"
#include "lib/lib.h"

struct teststage {
	struct stage hdr; /* must be first */
	enum phase phase;
	long delay_ms;
	bool never, fail;
	enum verdict verdict;
	unsigned code;
	char *enhanced, *text;
	double score;
	char *rule;
	char *header_name, *header_value; /* NULL: no header */
	char *only_rcpt;                  /* NULL: every recipient */
	unsigned gen;                     /* which instance (one per pipeline built) */
};

/* Instances are numbered so the logs tell which pipeline a loop sets up
 * and tears down (the first config is gen=1, each reload one more). */
static atomic_uint teststage_gens;

/* A delayed answer: owned by the call (call->stage_data) until the timer
 * fires or the pipeline cancels the call. */
struct teststage_pending {
	uint64_t id;
	struct event *ev;
	struct teststage *st;
};

static cfg_opt_t teststage_opts[] = {
	CFG_STR("phase", "data", CFGF_NONE),
	CFG_INT("delay_ms", 0, CFGF_NONE),
	CFG_BOOL("never", cfg_false, CFGF_NONE),
	CFG_BOOL("fail", cfg_false, CFGF_NONE),
	CFG_STR("verdict", "continue", CFGF_NONE),
	CFG_INT("code", 0, CFGF_NONE),
	CFG_STR("enhanced", "", CFGF_NONE),
	CFG_STR("text", "", CFGF_NONE),
	CFG_FLOAT("score", 0, CFGF_NONE),
	CFG_STR("rule", "TEST_RULE", CFGF_NONE),
	CFG_STR("header", "", CFGF_NONE), /* "Name: value" */
	CFG_STR("only_rcpt", "", CFGF_NONE),
	CFG_END()
};

static int teststage_parse_phase(const char *s, enum phase *phase_r)
{
	for (enum phase p = PHASE_CONNECT; p < PHASE_COUNT; p++) {
		if (strcmp(s, phase_name(p)) == 0) {
			*phase_r = p;
			return 0;
		}
	}
	return -1;
}

static int teststage_parse_verdict(const char *s, enum verdict *verdict_r)
{
	for (enum verdict v = VERDICT_CONTINUE; v <= VERDICT_QUARANTINE; v++) {
		if (strcmp(s, verdict_name(v)) == 0) {
			*verdict_r = v;
			return 0;
		}
	}
	return -1;
}

static void teststage_destroy(struct stage *stage)
{
	struct teststage *st = (struct teststage *)stage;

	free(st->enhanced);
	free(st->text);
	free(st->rule);
	free(st->header_name);
	free(st->header_value);
	free(st->only_rcpt);
	free(st);
}

static int teststage_create(cfg_t *section, const struct mx_config *cfg,
			    struct stage **st_r, char **error_r)
{
	struct teststage *st = xcalloc(1, sizeof(*st));
	const char *phase = cfg_getstr(section, "phase");

	st->gen = atomic_fetch_add(&teststage_gens, 1) + 1;
	const char *verdict = cfg_getstr(section, "verdict");
	const char *header = cfg_getstr(section, "header");
	const char *only_rcpt = cfg_getstr(section, "only_rcpt");
	long code = cfg_getint(section, "code");

	if (teststage_parse_phase(phase, &st->phase) < 0) {
		*error_r = xasprintf("phase must be connect|helo|mail|rcpt|data, not \"%s\"", phase);
		goto fail;
	}
	if (teststage_parse_verdict(verdict, &st->verdict) < 0) {
		*error_r = xasprintf("verdict must be continue|accept|reject|tempfail|"
				     "discard|quarantine, not \"%s\"", verdict);
		goto fail;
	}
	st->delay_ms = cfg_getint(section, "delay_ms");
	if (st->delay_ms < 0) {
		*error_r = xasprintf("delay_ms must be >= 0, not %ld", st->delay_ms);
		goto fail;
	}
	if (code < 0 || code > 599) {
		*error_r = xasprintf("code must be 0 or an SMTP reply code, not %ld", code);
		goto fail;
	}
	st->code = (unsigned)code;
	st->never = cfg_getbool(section, "never");
	st->fail = cfg_getbool(section, "fail");
	st->enhanced = xstrdup(cfg_getstr(section, "enhanced"));
	st->text = xstrdup(cfg_getstr(section, "text"));
	st->score = cfg_getfloat(section, "score");
	st->rule = xstrdup(cfg_getstr(section, "rule"));
	if (header[0] != '\0') {
		const char *colon = strchr(header, ':');

		if (colon == NULL || colon == header) {
			*error_r = xasprintf("header must be \"Name: value\", not \"%s\"", header);
			goto fail;
		}
		st->header_name = xstrndup(header, (size_t)(colon - header));
		colon++;
		while (*colon == ' ')
			colon++;
		st->header_value = xstrdup(colon);
	}
	if (only_rcpt[0] != '\0')
		st->only_rcpt = xstrdup(only_rcpt);
	*st_r = &st->hdr;
	return 0;
fail:
	teststage_destroy(&st->hdr);
	return -1;
}

/* The answer when the stage acts: side effects on fx, verdict and reply in
 * call->result. Returns the check status. */
static enum check_status teststage_answer(struct teststage *st, struct stage_call *call)
{
	call->result.code = st->code;
	str_copy(call->result.enhanced, st->enhanced, sizeof(call->result.enhanced));
	str_copy(call->result.text, st->text, sizeof(call->result.text));
	if (st->fail)
		return CHECK_FAILED;
	if (st->score != 0)
		filter_tx_add_score(call->fx, st->hdr.name, st->rule, st->score, NULL);
	if (st->header_name != NULL)
		filter_tx_add_header(call->fx, st->header_name, st->header_value);
	call->result.verdict = st->verdict;
	return CHECK_DONE;
}

static void teststage_pending_free(struct teststage_pending *p)
{
	event_free(p->ev);
	free(p);
}

static void teststage_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct teststage_pending *p = arg;
	/* found again by id, never through a kept pointer */
	struct stage_call *call = stage_call_find(p->id);
	struct teststage *st = p->st;

	if (call == NULL || call->stage_data != p) {
		/* cancel() frees the timer, so this means a pipeline bug;
		 * drop the answer as the contract asks */
		log_msg(LOG_LEVEL_WARN, "%s: late timer found no call %llu",
			st->hdr.name, (unsigned long long)p->id);
		teststage_pending_free(p);
		return;
	}
	call->stage_data = NULL;
	teststage_pending_free(p);
	stage_call_done(call, teststage_answer(st, call));
}

static enum check_status teststage_check(struct stage *stage, struct stage_call *call)
{
	struct teststage *st = (struct teststage *)stage;
	struct teststage_pending *p;
	struct timeval tv;

	if (call->phase != st->phase)
		return CHECK_DONE;
	if (st->only_rcpt != NULL &&
	    (call->msg->rcpt == NULL || strcmp(call->msg->rcpt, st->only_rcpt) != 0))
		return CHECK_DONE;
	log_msg(LOG_LEVEL_INFO, "%s %s acting phase=%s delay_ms=%ld never=%s",
		call->msg->session_id != NULL ? call->msg->session_id : "-",
		st->hdr.name, phase_name(call->phase), st->delay_ms,
		st->never ? "yes" : "no");
	if (st->never)
		return CHECK_PENDING; /* the stage timeout ends it via cancel() */
	if (st->delay_ms == 0)
		return teststage_answer(st, call);
	p = xcalloc(1, sizeof(*p));
	p->id = call->id;
	p->st = st;
	p->ev = evtimer_new(call->base, teststage_timer_cb, p);
	tv.tv_sec = st->delay_ms / 1000;
	tv.tv_usec = (st->delay_ms % 1000) * 1000;
	evtimer_add(p->ev, &tv);
	call->stage_data = p;
	return CHECK_PENDING;
}

static void teststage_cancel(struct stage *stage, struct stage_call *call)
{
	if (call->stage_data != NULL) {
		teststage_pending_free(call->stage_data);
		call->stage_data = NULL;
	}
}

/*
 * Per-loop state, as a DNS or Redis stage keeps it: a timer event on the
 * loop's own event base, made on that loop's thread when the loop starts
 * using this pipeline and freed there when the loop's last session let go.
 * Both log, so the integration tests can follow the daemon's per-loop
 * lifecycle across reloads.
 */
struct teststage_loop {
	struct event *ev;
	unsigned index;
};

static void teststage_loop_tick(evutil_socket_t fd, short what, void *arg)
{
}

static int teststage_loop_init(struct stage *stage, const struct stage_env *env,
			       void **loop_data_r, char **error_r)
{
	struct teststage *st = (struct teststage *)stage;
	struct teststage_loop *l = xcalloc(1, sizeof(*l));

	l->index = env->loop_index;
	l->ev = evtimer_new(env->base, teststage_loop_tick, l);
	*loop_data_r = l;
	log_msg(LOG_LEVEL_INFO, "teststage loop_init gen=%u loop=%u", st->gen, l->index);
	return 0;
}

static void teststage_loop_teardown(struct stage *stage, void *loop_data)
{
	struct teststage *st = (struct teststage *)stage;
	struct teststage_loop *l = loop_data;

	log_msg(LOG_LEVEL_INFO, "teststage loop_teardown gen=%u loop=%u", st->gen, l->index);
	event_free(l->ev);
	free(l);
}

#define TESTSTAGE_ALL_PHASES (PHASE_BIT(PHASE_CONNECT) | PHASE_BIT(PHASE_HELO) | \
			      PHASE_BIT(PHASE_MAIL) | PHASE_BIT(PHASE_RCPT) | \
			      PHASE_BIT(PHASE_DATA))
#define TESTSTAGE_OPS(n) { \
	.name = n, .phases = TESTSTAGE_ALL_PHASES, \
	.default_on_error = ON_ERROR_TEMPFAIL, .opts = teststage_opts, \
	.create = teststage_create, .check = teststage_check, \
	.cancel = teststage_cancel, .destroy = teststage_destroy }

static const struct stage_ops teststage_ops = {
	.name = "teststage", .phases = TESTSTAGE_ALL_PHASES,
	.default_on_error = ON_ERROR_TEMPFAIL, .opts = teststage_opts,
	.create = teststage_create, .check = teststage_check,
	.cancel = teststage_cancel, .destroy = teststage_destroy,
	.loop_init = teststage_loop_init, .loop_teardown = teststage_loop_teardown,
};
static const struct stage_ops teststage2_ops = TESTSTAGE_OPS("teststage2");

/* Before main(): main() calls filters_register_config(), which gives every
 * registered stage its config section. */
static void teststage_register(void) __attribute__((constructor));
static void teststage_register(void)
{
	filters_register_stage(&teststage_ops);
	filters_register_stage(&teststage2_ops);
}
