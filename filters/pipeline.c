/*
 * pipeline.c — run the configured stages of a phase and merge their answers.
 *
 * A pipeline is built once from the config (pipeline.stages, in order), is
 * immutable afterwards and reference-counted: a reload builds a new one and
 * every run holds a reference, so a transaction finishes with the stages it
 * started with.
 *
 * A run walks the stages registered for its phase. Each stage call gets an
 * id in the loop thread's handle table; a stage that pends keeps only that
 * id and finds the call again with stage_call_find(). A call that does not
 * finish within its timeout is cancelled (ops->cancel), its id unregistered,
 * and the stage's on_error policy applied, so a late answer finds NULL.
 *
 * Re-entrancy: stage_call_done() never continues the run by itself. It
 * records the answer, unregisters the id and wakes the run through an event
 * made active on the run's loop; the next stage and the caller's done()
 * then run from that event's callback. So a stage completing a call never
 * finds other stages, the session's done() or a pipeline destroy running
 * underneath it, and done() is never called from inside pipeline_run().
 *
 * Merging: CONTINUE adds nothing (stages put scores and headers into the
 * filter_tx themselves); ACCEPT ends the phase and skips the score mapping;
 * REJECT/TEMPFAIL/DISCARD/QUARANTINE end the phase with that verdict. A
 * failed or timed-out check follows the stage's on_error: "accept" goes on
 * with the next stage, "tempfail" ends the phase with a 4xx. After a DATA
 * phase that ended in CONTINUE the total score picks the action; the merged
 * verdict then stays CONTINUE and out->action (with out->reply for a score
 * reject) tells the session what to do. Every DATA phase of a pipeline that
 * has stages adds X-Spam-Score; TAG and JUNK also add X-Spam-Flag and
 * X-Spam-Status ("Yes, score=6.2 tests=RULE_A,RULE_B", "tests=none" when
 * only unnamed scores were added).
 *
 * Loops: the daemon's loop threads share the pipeline. Each loop that uses
 * it first calls pipeline_loop_start() on its own thread, which runs the
 * stages' loop_init() there and keeps their loop_data in the loop's slot
 * (pl->loops[loop_index]); runs on that loop hand it to the stages as
 * call->loop_data, and pipeline_loop_stop() tears it down on the same
 * thread. The slot table grows under a mutex (loops start in any order);
 * a slot itself is only ever touched by its own loop thread.
 *
 * Jobs: stage_submit_job() puts a stage's blocking work on the worker
 * pool's scan lane. The job holds a reference to the pipeline (so the
 * stage instance outlives it) and to the body, and carries the call's id,
 * not the call: when the work is over, the completion on the loop looks the
 * id up, so a call that timed out or was cancelled meanwhile gets its
 * result dropped (done(NULL, arg) only frees), and the references go after
 * that.
 *
 * A stage's reply text is used as given except that control characters
 * become spaces (it may come from the network, e.g. a DNS TXT record); a
 * code or enhanced code of the wrong class for the verdict is replaced by
 * the default, so a REJECT is always 5xx and a TEMPFAIL always 4xx.
 */
#include "config.h"

#include <assert.h>
#include <confuse.h>
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "filters/filters.h"
#include "lib/metrics.h"

#define PIPELINE_REJECT_CODE 550
#define PIPELINE_REJECT_ENHANCED "5.7.1"
#define PIPELINE_REJECT_TEXT "Message rejected"
#define PIPELINE_SPAM_REJECT_TEXT "Message rejected as spam"
#define PIPELINE_TEMPFAIL_CODE 451
#define PIPELINE_TEMPFAIL_ENHANCED "4.7.1"
#define PIPELINE_TEMPFAIL_TEXT "Try again later"

/* One loop's use of a pipeline, from pipeline_loop_start() to _stop(). */
struct pipeline_loop {
	struct stage_env env;
	pthread_t thread;   /* the loop thread that started it */
	void **loop_data;   /* per stage, in pipeline order */
};

struct pipeline {
	atomic_int refcount;
	struct stage **stages;
	size_t n_stages;
	unsigned phases; /* union of the stages' PHASE_BIT()s */
	double tag_score, junk_score, quarantine_score, reject_score;

	/* started loops, indexed by loop_index; NULL = not started */
	pthread_mutex_t loops_lock;
	struct pipeline_loop **loops;
	size_t n_loops;
};

/* A stage call as the pipeline keeps it; stages only see `call`. */
struct pipeline_call {
	struct stage_call call;
	struct pipeline_run *run;
	struct timespec start;
	size_t n_hits_before;
	bool in_check;  /* inside ops->check(): completing now is a bug */
	bool completed; /* stage_call_done() ran; the run has yet to resume */
	enum check_status status;
	long usec;
};

struct pipeline_run {
	struct pipeline *pl;
	enum phase phase;
	struct stage_env env;            /* the caller's loop */
	struct pipeline_loop *loop;      /* its slot; NULL if never started */
	const struct filter_msg *msg;
	struct filter_tx *fx;
	pipeline_done_cb *done;
	void *ctx;
	size_t next;                /* index of the next stage to look at */
	struct pipeline_call *call; /* the pending (or completed) call */
	struct event *timer;        /* the pending call's timeout */
	struct event *resume;       /* made active by stage_call_done() */
	bool finished;              /* a stage ended the phase */
	struct pipeline_outcome out;
};

/* ------------------------------------------------------------- names */

const char *phase_name(enum phase phase)
{
	switch (phase) {
	case PHASE_CONNECT: return "connect";
	case PHASE_HELO: return "helo";
	case PHASE_MAIL: return "mail";
	case PHASE_RCPT: return "rcpt";
	case PHASE_DATA: return "data";
	case PHASE_COUNT: break;
	}
	return "unknown";
}

const char *verdict_name(enum verdict v)
{
	switch (v) {
	case VERDICT_CONTINUE: return "continue";
	case VERDICT_ACCEPT: return "accept";
	case VERDICT_REJECT: return "reject";
	case VERDICT_TEMPFAIL: return "tempfail";
	case VERDICT_DISCARD: return "discard";
	case VERDICT_QUARANTINE: return "quarantine";
	}
	return "unknown";
}

const char *action_name(enum action a)
{
	switch (a) {
	case ACTION_DELIVER: return "deliver";
	case ACTION_TAG: return "tag";
	case ACTION_JUNK: return "junk";
	case ACTION_QUARANTINE: return "quarantine";
	case ACTION_DISCARD: return "discard";
	case ACTION_REJECT: return "reject";
	case ACTION_TEMPFAIL: return "tempfail";
	}
	return "unknown";
}

/* ---------------------------------------------------------- building */

static void pipeline_free(struct pipeline *pl)
{
	for (size_t i = 0; i < pl->n_loops; i++) {
		if (pl->loops[i] == NULL)
			continue;
		/* the core forgot pipeline_loop_stop(): tearing down here would
		 * free another loop's objects on the wrong thread, so leak them */
		log_msg(LOG_LEVEL_ERR, "pipeline: freed while loop %zu still uses it "
			"(pipeline_loop_stop not called)", i);
		free(pl->loops[i]->loop_data);
		free(pl->loops[i]);
	}
	free(pl->loops);
	pthread_mutex_destroy(&pl->loops_lock);
	for (size_t i = 0; i < pl->n_stages; i++) {
		struct stage *st = pl->stages[i];

		if (st->ops->destroy != NULL)
			st->ops->destroy(st);
	}
	free(pl->stages);
	free(pl);
}

static int pipeline_create_stage(const struct mx_config *cfg, const char *name,
				 struct stage **st_r, char **error_r)
{
	const struct stage_ops *ops = filters_find_stage(name);
	struct stage *st = NULL;
	enum on_error on_error;
	const char *on_error_text;
	cfg_t *section;
	long timeout;
	char *error = NULL;

	if (ops == NULL) {
		*error_r = xasprintf("pipeline: unknown stage '%s'", name);
		return -1;
	}
	section = cfg->cfg == NULL ? NULL : cfg_getsec(cfg->cfg, name);
	if (section == NULL) {
		*error_r = xasprintf("pipeline: stage '%s' has no config section "
				     "(filters_register_config() not called before config_load()?)",
				     name);
		return -1;
	}
	on_error_text = cfg_getstr(section, "on_error");
	if (on_error_text != NULL && strcmp(on_error_text, "accept") == 0)
		on_error = ON_ERROR_ACCEPT;
	else if (on_error_text != NULL && strcmp(on_error_text, "tempfail") == 0)
		on_error = ON_ERROR_TEMPFAIL;
	else {
		*error_r = xasprintf("pipeline: stage '%s': on_error must be "
				     "\"accept\" or \"tempfail\", not \"%s\"",
				     name, on_error_text != NULL ? on_error_text : "");
		return -1;
	}
	timeout = cfg_getint(section, "timeout");
	if (timeout < 0) {
		*error_r = xasprintf("pipeline: stage '%s': timeout must be >= 0 "
				     "milliseconds, not %ld", name, timeout);
		return -1;
	}
	if (ops->create(section, cfg, &st, &error) < 0) {
		*error_r = xasprintf("pipeline: stage '%s': %s", name,
				     error != NULL ? error : "cannot be created");
		free(error);
		return -1;
	}
	st->ops = ops;
	st->name = ops->name;
	st->on_error = on_error;
	/* create may narrow the phases to those its configuration uses */
	st->phases = st->phases != 0 ? st->phases & ops->phases : ops->phases;
	st->timeout_ms = timeout > 0 ? timeout : pipeline_settings(cfg)->stage_timeout;
	*st_r = st;
	return 0;
}

int pipeline_create(const struct mx_config *cfg, struct pipeline **pl_r, char **error_r)
{
	const struct pipeline_settings *ps = pipeline_settings(cfg);
	struct pipeline *pl = xcalloc(1, sizeof(*pl));
	size_t n = ps->n_stages;

	atomic_init(&pl->refcount, 1);
	pthread_mutex_init(&pl->loops_lock, NULL);
	pl->tag_score = ps->tag_score;
	pl->junk_score = ps->junk_score;
	pl->quarantine_score = ps->quarantine_score;
	pl->reject_score = ps->reject_score;
	pl->stages = xcalloc(n + 1, sizeof(*pl->stages));
	for (size_t i = 0; i < n; i++) {
		const char *name = ps->stages[i];

		/* one section per stage name: a second instance would share
		 * it, which is never what the admin meant */
		for (size_t j = 0; j < i; j++) {
			if (strcmp(ps->stages[j], name) == 0) {
				*error_r = xasprintf("pipeline: stage '%s' listed twice", name);
				pipeline_free(pl);
				return -1;
			}
		}
		if (pipeline_create_stage(cfg, name, &pl->stages[i], error_r) < 0) {
			pipeline_free(pl);
			return -1;
		}
		pl->n_stages++;
		pl->phases |= pl->stages[i]->phases;
	}
	*pl_r = pl;
	return 0;
}

struct pipeline *pipeline_ref(struct pipeline *pl)
{
	atomic_fetch_add_explicit(&pl->refcount, 1, memory_order_relaxed);
	return pl;
}

void pipeline_unref(struct pipeline **plp)
{
	struct pipeline *pl = *plp;

	if (pl == NULL)
		return;
	*plp = NULL;
	/* acq_rel: the thread that frees must see every other thread's
	 * last use of the pipeline */
	if (atomic_fetch_sub_explicit(&pl->refcount, 1, memory_order_acq_rel) == 1)
		pipeline_free(pl);
}

bool pipeline_has_phase(const struct pipeline *pl, enum phase phase)
{
	return (pl->phases & PHASE_BIT(phase)) != 0;
}

/* ------------------------------------------------------------- loops */

/* The loop's slot, or NULL when that loop has not started the pipeline. */
static struct pipeline_loop *pipeline_loop_get(struct pipeline *pl, unsigned loop_index)
{
	struct pipeline_loop *lp = NULL;

	pthread_mutex_lock(&pl->loops_lock);
	if (loop_index < pl->n_loops)
		lp = pl->loops[loop_index];
	pthread_mutex_unlock(&pl->loops_lock);
	return lp;
}

/* Tear down stages [0, n) of a loop, last first. */
static void pipeline_loop_teardown(struct pipeline *pl, struct pipeline_loop *lp, size_t n)
{
	while (n-- > 0) {
		struct stage *st = pl->stages[n];

		if (st->ops->loop_teardown != NULL)
			st->ops->loop_teardown(st, lp->loop_data[n]);
	}
	free(lp->loop_data);
	free(lp);
}

int pipeline_loop_start(struct pipeline *pl, const struct stage_env *env, char **error_r)
{
	struct pipeline_loop *lp;
	unsigned idx = env->loop_index;

	if (pipeline_loop_get(pl, idx) != NULL) {
		*error_r = xasprintf("pipeline: loop %u started twice", idx);
		return -1;
	}
	lp = xcalloc(1, sizeof(*lp));
	lp->env = *env;
	lp->thread = pthread_self();
	lp->loop_data = xcalloc(pl->n_stages + 1, sizeof(*lp->loop_data));
	for (size_t i = 0; i < pl->n_stages; i++) {
		struct stage *st = pl->stages[i];
		char *error = NULL;

		if (st->ops->loop_init == NULL)
			continue;
		if (st->ops->loop_init(st, &lp->env, &lp->loop_data[i], &error) < 0) {
			*error_r = xasprintf("pipeline: stage '%s': loop %u: %s", st->name, idx,
					     error != NULL ? error : "cannot be initialised");
			free(error);
			pipeline_loop_teardown(pl, lp, i);
			return -1;
		}
	}
	/* published only when complete; only this thread reads it anyway */
	pthread_mutex_lock(&pl->loops_lock);
	if (idx >= pl->n_loops) {
		size_t n = (size_t)idx + 1;

		pl->loops = xrealloc(pl->loops, n * sizeof(*pl->loops));
		for (size_t i = pl->n_loops; i < n; i++)
			pl->loops[i] = NULL;
		pl->n_loops = n;
	}
	pl->loops[idx] = lp;
	pthread_mutex_unlock(&pl->loops_lock);
	return 0;
}

void pipeline_loop_stop(struct pipeline *pl, unsigned loop_index)
{
	struct pipeline_loop *lp = NULL;

	pthread_mutex_lock(&pl->loops_lock);
	if (loop_index < pl->n_loops) {
		lp = pl->loops[loop_index];
		pl->loops[loop_index] = NULL;
	}
	pthread_mutex_unlock(&pl->loops_lock);
	if (lp == NULL)
		return;
	/* loop_data belongs to the loop that made it */
	assert(pthread_equal(lp->thread, pthread_self()));
	pipeline_loop_teardown(pl, lp, pl->n_stages);
}

/* ----------------------------------------------------------- running */

static long pipeline_usec_since(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long)(now.tv_sec - start->tv_sec) * 1000000L +
		(now.tv_nsec - start->tv_nsec) / 1000L;
}

/* The reply for a hard verdict: each of code, enhanced code and text is the
 * stage's own where it set it and its class fits the verdict (a 4xx with
 * REJECT would make the sender retry for days), the default otherwise. */
static void pipeline_fill_reply(struct filter_result *reply,
				const struct filter_result *stage_reply,
				unsigned def_code, const char *def_enhanced,
				const char *def_text)
{
	unsigned cls = def_code / 100;
	const struct filter_result *sr = stage_reply;

	memset(reply, 0, sizeof(*reply));
	reply->verdict = cls == 5 ? VERDICT_REJECT : VERDICT_TEMPFAIL;
	reply->code = sr != NULL && sr->code / 100 == cls ?
		sr->code : def_code;
	str_copy(reply->enhanced,
		 sr != NULL && sr->enhanced[0] == (char)('0' + cls) &&
		 sr->enhanced[1] == '.' ? sr->enhanced : def_enhanced,
		 sizeof(reply->enhanced));
	str_copy(reply->text, sr != NULL && sr->text[0] != '\0' ? sr->text : def_text,
		 sizeof(reply->text));
	/* stage texts may come from the network (a DNS TXT record): never
	 * let one break the reply line */
	for (char *p = reply->text; *p != '\0'; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	}
}

static void pipeline_run_end_phase(struct pipeline_run *run, enum verdict v)
{
	run->finished = true;
	run->out.verdict = v;
}

/* A failed or timed-out check: the stage's on_error decides. */
static void pipeline_apply_on_error(struct pipeline_run *run, struct stage *st,
				    const struct filter_result *stage_reply)
{
	char text[256];
	bool has_reply;

	if (st->on_error == ON_ERROR_ACCEPT)
		return;
	has_reply = stage_reply != NULL &&
		(stage_reply->code != 0 || stage_reply->text[0] != '\0');
	snprintf(text, sizeof(text), "%s temporarily unavailable, try again later",
		 st->name);
	pipeline_fill_reply(&run->out.reply, has_reply ? stage_reply : NULL,
			    PIPELINE_TEMPFAIL_CODE, PIPELINE_TEMPFAIL_ENHANCED, text);
	pipeline_run_end_phase(run, VERDICT_TEMPFAIL);
}

/* Fold one finished call into the run and log it. timed_out: the stage
 * never answered (its result is not looked at). */
static void pipeline_run_apply(struct pipeline_run *run, struct pipeline_call *pc,
			       enum check_status status, bool timed_out, long usec)
{
	struct stage *st = pc->call.stage;
	const struct filter_result *res = &pc->call.result;
	const char *word;

	if (timed_out) {
		word = "timeout";
		pipeline_apply_on_error(run, st, NULL);
	} else if (status == CHECK_FAILED) {
		word = "error";
		pipeline_apply_on_error(run, st, res);
	} else {
		switch (res->verdict) {
		case VERDICT_CONTINUE:
			word = filter_tx_hits(run->fx, NULL) > pc->n_hits_before ?
				"hit" : "ok";
			break;
		case VERDICT_REJECT:
			word = "reject";
			pipeline_fill_reply(&run->out.reply, res, PIPELINE_REJECT_CODE,
					    PIPELINE_REJECT_ENHANCED, PIPELINE_REJECT_TEXT);
			pipeline_run_end_phase(run, VERDICT_REJECT);
			break;
		case VERDICT_TEMPFAIL:
			word = "tempfail";
			pipeline_fill_reply(&run->out.reply, res, PIPELINE_TEMPFAIL_CODE,
					    PIPELINE_TEMPFAIL_ENHANCED, PIPELINE_TEMPFAIL_TEXT);
			pipeline_run_end_phase(run, VERDICT_TEMPFAIL);
			break;
		case VERDICT_ACCEPT:
		case VERDICT_DISCARD:
		case VERDICT_QUARANTINE:
			word = verdict_name(res->verdict);
			pipeline_run_end_phase(run, res->verdict);
			break;
		default:
			/* not in the vocabulary: a stage bug; fail safe */
			word = "error";
			pipeline_apply_on_error(run, st, NULL);
			break;
		}
	}
	filter_tx_add_stage_log(run->fx, st->name, run->phase, word, usec);
	filter_tx_set_stage(run->fx, NULL);
	metrics_observe(METRIC_STAGE_DURATION, st->name, usec > 0 ? (uint64_t)usec : 0);
	if (strcmp(word, "error") == 0 || strcmp(word, "timeout") == 0)
		metrics_add_label(METRIC_STAGE_ERRORS, st->name, 1);
}

static void pipeline_call_free(struct pipeline_call *pc)
{
	free(pc);
}

/* The score mapping and X-Spam-* headers after the DATA phase, and the
 * action for every phase's verdict. */
static void pipeline_run_outcome(struct pipeline_run *run)
{
	struct pipeline_outcome *out = &run->out;
	const struct pipeline *pl = run->pl;
	char value[64];

	filter_tx_set_stage(run->fx, NULL);
	out->score = filter_tx_score(run->fx);
	switch (out->verdict) {
	case VERDICT_REJECT: out->action = ACTION_REJECT; break;
	case VERDICT_TEMPFAIL: out->action = ACTION_TEMPFAIL; break;
	case VERDICT_DISCARD: out->action = ACTION_DISCARD; break;
	case VERDICT_QUARANTINE: out->action = ACTION_QUARANTINE; break;
	case VERDICT_ACCEPT: out->action = ACTION_DELIVER; break;
	case VERDICT_CONTINUE:
		out->action = ACTION_DELIVER;
		if (run->phase != PHASE_DATA)
			break;
		if (out->score >= pl->reject_score) {
			out->action = ACTION_REJECT;
			pipeline_fill_reply(&out->reply, NULL, PIPELINE_REJECT_CODE,
					    PIPELINE_REJECT_ENHANCED,
					    PIPELINE_SPAM_REJECT_TEXT);
		} else if (pl->quarantine_score != 0 && out->score >= pl->quarantine_score) {
			out->action = ACTION_QUARANTINE;
		} else if (out->score >= pl->junk_score) {
			out->action = ACTION_JUNK;
		} else if (out->score >= pl->tag_score) {
			out->action = ACTION_TAG;
		}
		break;
	}
	if (run->phase != PHASE_DATA || pl->n_stages == 0)
		return;
	/* one decimal, as SpamAssassin writes it; a total that rounds to zero
	 * from below (-0.04) is 0.0, not "-0.0" */
	snprintf(value, sizeof(value), "%.1f", out->score > -0.05 && out->score < 0.05 ? 0.0 :
		 out->score);
	filter_tx_add_header(run->fx, "X-Spam-Score", value);
	if (out->action == ACTION_TAG || out->action == ACTION_JUNK ||
	    (out->action == ACTION_QUARANTINE && out->verdict == VERDICT_CONTINUE)) {
		char *hits = filter_tx_format_hits(run->fx);
		char *status = xasprintf("Yes, score=%.1f tests=%s", out->score,
					 hits[0] != '\0' ? hits : "none");

		filter_tx_add_header(run->fx, "X-Spam-Flag", "YES");
		filter_tx_add_header(run->fx, "X-Spam-Status", status);
		free(status);
		free(hits);
	}
}

static void pipeline_run_free(struct pipeline_run *run)
{
	if (run->call != NULL) {
		handle_unregister(run->call->call.id);
		pipeline_call_free(run->call);
	}
	if (run->timer != NULL)
		event_free(run->timer);
	if (run->resume != NULL)
		event_free(run->resume);
	pipeline_unref(&run->pl);
	free(run);
}

static void pipeline_timeout_cb(evutil_socket_t fd, short what, void *arg);

/*
 * Call the remaining stages of the phase until one pends or the phase ends.
 * Returns true when the phase is over (run->out is then complete).
 */
static bool pipeline_run_stages(struct pipeline_run *run)
{
	struct pipeline *pl = run->pl;

	while (!run->finished && run->next < pl->n_stages) {
		struct stage *st = pl->stages[run->next++];
		struct pipeline_call *pc;
		enum check_status status;

		if ((st->phases & PHASE_BIT(run->phase)) == 0)
			continue;
		pc = xcalloc(1, sizeof(*pc));
		pc->run = run;
		pc->call.phase = run->phase;
		pc->call.stage = st;
		pc->call.msg = run->msg;
		pc->call.fx = run->fx;
		pc->call.base = run->env.base;
		pc->call.env = &run->env;
		pc->call.loop_data = run->loop != NULL ? run->loop->loop_data[run->next - 1] : NULL;
		pc->call.id = handle_register(&pc->call);
		pc->n_hits_before = filter_tx_hits(run->fx, NULL);
		clock_gettime(CLOCK_MONOTONIC, &pc->start);

		filter_tx_set_stage(run->fx, st->name);
		if (st->ops->loop_init != NULL && run->loop == NULL) {
			/* its per-loop resources were never made: a core bug,
			 * failed safe through the stage's on_error */
			log_msg(LOG_LEVEL_ERR, "pipeline: stage '%s' called on loop %u "
				"that did not pipeline_loop_start()", st->name,
				run->env.loop_index);
			status = CHECK_FAILED;
		} else {
			pc->in_check = true;
			status = st->ops->check(st, &pc->call);
			pc->in_check = false;
		}

		if (status == CHECK_PENDING) {
			run->call = pc;
			if (st->timeout_ms > 0) {
				struct timeval tv = {
					.tv_sec = st->timeout_ms / 1000,
					.tv_usec = (st->timeout_ms % 1000) * 1000,
				};

				if (run->timer == NULL)
					run->timer = evtimer_new(run->env.base,
								 pipeline_timeout_cb, run);
				evtimer_add(run->timer, &tv);
			}
			return false;
		}
		handle_unregister(pc->call.id);
		pipeline_run_apply(run, pc, status, false,
				   pipeline_usec_since(&pc->start));
		pipeline_call_free(pc);
	}
	pipeline_run_outcome(run);
	return true;
}

/* The phase ended on the loop: hand the outcome over. The run is freed
 * first so that done() may drop the last reference to anything. */
static void pipeline_run_finish_async(struct pipeline_run *run)
{
	struct pipeline_outcome out = run->out;
	pipeline_done_cb *done = run->done;
	void *ctx = run->ctx;

	pipeline_run_free(run);
	done(ctx, &out);
}

static void pipeline_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pipeline_run *run = arg;
	struct pipeline_call *pc = run->call;

	assert(pc != NULL && pc->completed);
	run->call = NULL;
	pipeline_run_apply(run, pc, pc->status, false, pc->usec);
	pipeline_call_free(pc);
	if (pipeline_run_stages(run))
		pipeline_run_finish_async(run);
}

static void pipeline_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pipeline_run *run = arg;
	struct pipeline_call *pc = run->call;
	struct stage *st;

	/* a completion already queued wins over a timer firing in the same
	 * loop iteration */
	if (pc == NULL || pc->completed)
		return;
	st = pc->call.stage;
	run->call = NULL;
	handle_unregister(pc->call.id);
	if (st->ops->cancel != NULL)
		st->ops->cancel(st, &pc->call);
	pipeline_run_apply(run, pc, CHECK_FAILED, true,
			   pipeline_usec_since(&pc->start));
	pipeline_call_free(pc);
	if (pipeline_run_stages(run))
		pipeline_run_finish_async(run);
}

enum pipeline_status pipeline_run(struct pipeline *pl, enum phase phase,
				  const struct stage_env *env,
				  const struct filter_msg *msg, struct filter_tx *fx,
				  pipeline_done_cb *done, void *ctx,
				  struct pipeline_outcome *out,
				  struct pipeline_run **run_r)
{
	struct pipeline_run *run = xcalloc(1, sizeof(*run));

	run->pl = pipeline_ref(pl);
	run->phase = phase;
	run->env = *env;
	run->loop = pipeline_loop_get(pl, env->loop_index);
	run->msg = msg;
	run->fx = fx;
	run->done = done;
	run->ctx = ctx;
	run->out.verdict = VERDICT_CONTINUE;
	run->out.action = ACTION_DELIVER;

	if (pipeline_run_stages(run)) {
		*out = run->out;
		pipeline_run_free(run);
		*run_r = NULL;
		return PIPELINE_DONE;
	}
	*run_r = run;
	return PIPELINE_PENDING;
}

void pipeline_run_cancel(struct pipeline_run **runp)
{
	struct pipeline_run *run = *runp;
	struct pipeline_call *pc;

	if (run == NULL)
		return;
	*runp = NULL;
	pc = run->call;
	if (pc != NULL && !pc->completed) {
		struct stage *st = pc->call.stage;

		/* unregister first: the stage's cancel may look itself up */
		handle_unregister(pc->call.id);
		if (st->ops->cancel != NULL)
			st->ops->cancel(st, &pc->call);
	}
	filter_tx_set_stage(run->fx, NULL);
	pipeline_run_free(run);
}

/* ------------------------------------------------------- stage calls */

struct stage_call *stage_call_find(uint64_t id)
{
	return handle_lookup(id);
}

void stage_call_done(struct stage_call *call, enum check_status status)
{
	struct pipeline_call *pc = (struct pipeline_call *)call;
	struct pipeline_run *run = pc->run;

	/* A stage that has its answer inside check() returns CHECK_DONE;
	 * completing from there would run the pipeline underneath it. */
	assert(!pc->in_check);
	assert(status == CHECK_DONE || status == CHECK_FAILED);
	/* Only a call found by id may be completed: after a timeout or a
	 * cancel the id is gone and the stage must drop its answer. */
	assert(handle_lookup(call->id) == call && !pc->completed);
	if (pc->in_check || pc->completed || handle_lookup(call->id) != call)
		return;

	handle_unregister(call->id);
	pc->completed = true;
	pc->status = status == CHECK_PENDING ? CHECK_FAILED : status;
	pc->usec = pipeline_usec_since(&pc->start);
	if (run->timer != NULL)
		evtimer_del(run->timer);
	if (run->resume == NULL)
		run->resume = event_new(run->env.base, -1, 0, pipeline_resume_cb, run);
	event_active(run->resume, 0, 0);
}

/* ------------------------------------------------------------ jobs */

struct stage_job {
	uint64_t call_id;
	struct pipeline *pl;  /* keeps the stage instance alive */
	struct msgbody *body; /* NULL before DATA */
	stage_job_work_fn *work;
	stage_job_done_fn *done;
	void *arg;
};

static void stage_job_work(void *p)
{
	struct stage_job *job = p;

	job->work(job->arg);
}

/* On the call's loop: the call, if it still waits, gets the result. */
static void stage_job_done(void *p)
{
	struct stage_job *job = p;

	job->done(stage_call_find(job->call_id), job->arg);
	msgbody_unref(&job->body);
	pipeline_unref(&job->pl);
	free(job);
}

int stage_submit_job(struct stage_call *call, stage_job_work_fn *work,
		     stage_job_done_fn *done, void *arg)
{
	struct pipeline_call *pc = (struct pipeline_call *)call;
	struct stage_job *job;

	if (call->env == NULL || call->env->workers == NULL || work == NULL || done == NULL) {
		errno = EINVAL;
		return -1;
	}
	job = xcalloc(1, sizeof(*job));
	job->call_id = call->id;
	job->pl = pipeline_ref(pc->run->pl);
	job->body = call->msg != NULL && call->msg->body != NULL ?
		msgbody_ref(call->msg->body) : NULL;
	job->work = work;
	job->done = done;
	job->arg = arg;
	if (workers_submit(call->env->workers, WORKER_LANE_SCAN, call->env->base,
			   stage_job_work, stage_job_done, job) < 0) {
		int saved = errno;

		msgbody_unref(&job->body);
		pipeline_unref(&job->pl);
		free(job);
		errno = saved;
		return -1;
	}
	return 0;
}

void pipeline_session_end(struct pipeline *pl, const struct stage_env *env,
			  const struct filter_msg *msg)
{
	struct pipeline_loop *lp = pipeline_loop_get(pl, env->loop_index);

	for (size_t i = 0; i < pl->n_stages; i++) {
		struct stage *st = pl->stages[i];

		if (st->ops->session_end == NULL)
			continue;
		if (st->ops->loop_init != NULL && lp == NULL)
			continue;
		st->ops->session_end(st, env, lp != NULL ? lp->loop_data[i] : NULL, msg);
	}
}
