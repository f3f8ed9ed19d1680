/*
 * filters.h — the pipeline: ordered stages hooked to SMTP phases.
 *
 * A stage is a const table of operations (struct stage_ops) found by name in
 * the registry (registry.c). The pipeline is built from the config, is
 * immutable and reference-counted, so a reload swaps in a new one while
 * transactions in flight finish with the one they started with.
 *
 * Checks are asynchronous with a three-way contract: a stage's check()
 * returns CHECK_DONE (result filled now), CHECK_FAILED (its dependency
 * failed; result may hold a reply; the pipeline applies the stage's
 * on_error policy), or CHECK_PENDING — and then calls stage_call_done()
 * exactly once, later, from the same event loop. A pending call is found by
 * its id (stage_call_find), never through a pointer kept across the wait:
 * when a call times out or its session goes away, the pipeline calls the
 * stage's cancel() and the id stops resolving.
 *
 * Concurrency (stage interface v2): the daemon runs N loop threads and every
 * one of them runs transactions through the same pipeline, so a stage's
 * check() (and cancel()) runs concurrently on N threads with the same
 * struct stage. A stage instance is therefore read-only after create(), or
 * protects what it changes itself (atomics, a mutex). What belongs to one
 * loop — an evdns base, a hiredis async context — goes in loop_data: the
 * optional loop_init() builds it on each loop thread when that loop starts
 * using the pipeline (pipeline_loop_start), check() finds it as
 * call->loop_data, and loop_teardown() frees it on the same thread when the
 * loop lets go (pipeline_loop_stop). Blocking or CPU-heavy work goes to the
 * worker pool through stage_submit_job(), which keeps the body and the
 * stage alive until the job is over, however the call ended.
 *
 * Adding a stage: one new file in filters/ defining a struct stage_ops, and
 * one line in the table in registry.c.
 *
 * History: v1 had a `reload` op (update an instance in place); it was
 * documented but never called, and v2 removed it — a reload always builds a
 * fresh pipeline, and transactions in flight keep the old one. v2 added
 * loop_init/loop_teardown, struct stage_env (call->env, call->loop_data),
 * stage_submit_job(), and header validation in filter_tx_add_header().
 * v3 added session_end (pipeline_session_end), for what a stage holds for
 * a whole session.
 */
#ifndef MXGUARD_FILTERS_H
#define MXGUARD_FILTERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/lib.h"

struct cfg_t;
struct cfg_opt_t;
struct event_base;

enum phase { PHASE_CONNECT, PHASE_HELO, PHASE_MAIL, PHASE_RCPT, PHASE_DATA, PHASE_COUNT };
#define PHASE_BIT(p) (1u << (p))
const char *phase_name(enum phase phase);

/* The fixed verdict vocabulary a stage may answer with. */
enum verdict {
	VERDICT_CONTINUE = 0, /* no opinion: go on (scores/headers may be added) */
	VERDICT_ACCEPT,       /* accept outright: skip remaining stages of the phase and the score mapping */
	VERDICT_REJECT,       /* 5xx */
	VERDICT_TEMPFAIL,     /* 4xx */
	VERDICT_DISCARD,      /* say 250, deliver nowhere */
	VERDICT_QUARANTINE,   /* say 250, store in quarantine */
};
const char *verdict_name(enum verdict v);

/* What happens to the message after the DATA phase (verdicts + score). */
enum action {
	ACTION_DELIVER = 0,
	ACTION_TAG,        /* deliver with X-Spam-Flag: YES */
	ACTION_JUNK,       /* deliver into the Junk folder, tagged */
	ACTION_QUARANTINE,
	ACTION_DISCARD,
	ACTION_REJECT,
	ACTION_TEMPFAIL,
};
const char *action_name(enum action a);

/* A stage's answer. code/enhanced/text are used for REJECT and TEMPFAIL
 * (0 / "" mean the pipeline's defaults: 550 5.7.1 / 451 4.7.1). */
struct filter_result {
	enum verdict verdict;
	unsigned code;
	char enhanced[16];
	char text[256];
};

/* The client's reverse DNS, forward-confirmed (PTR, then A/AAAA of that
 * name must contain the address), as the dnsbl stage found it at connect. */
enum rdns_status {
	RDNS_UNKNOWN = 0,  /* not looked up (no dnsbl stage, or rdns = false) */
	RDNS_CONFIRMED,    /* the PTR name resolves back to the address */
	RDNS_UNCONFIRMED,  /* a PTR name that does not (or is not a valid name) */
	RDNS_NONE,         /* no PTR record (NXDOMAIN, no data) */
	RDNS_TEMPFAIL,     /* no answer in time, SERVFAIL, ... */
};
const char *rdns_status_name(enum rdns_status st);

/* What stages see of the session and transaction. Owned by the caller and
 * valid until the pipeline run finishes or is cancelled. */
struct filter_msg {
	const char *txid;
	const char *session_id;
	const char *client_addr;   /* numeric IP text */
	/* our name (the hostname setting): the authserv-id of the
	 * Authentication-Results the auth stage writes, which the backends
	 * also use to drop a sender's forged one */
	const char *hostname;
	unsigned client_port;
	/* from the connect phase on (filter_tx_set_rdns): the PTR name ("" when
	 * none; only trust it when client_rdns_status is RDNS_CONFIRMED). The
	 * connect phase's own stages see RDNS_UNKNOWN. */
	const char *client_rdns;
	enum rdns_status client_rdns_status;
	const char *helo;          /* NULL before HELO/EHLO */
	bool tls;
	const char *mail_from;     /* "" for <>, NULL before MAIL */
	const char *const *rcpts;  /* accepted recipients so far */
	size_t n_rcpts;
	const char *rcpt;          /* the candidate recipient at PHASE_RCPT */
	uint64_t declared_size;    /* MAIL's SIZE= (RFC 1870), 0 when not given */
	/* sealed, at PHASE_DATA: the message as received, un-dot-stuffed, with
	 * its own line endings (CRLF; a bare LF or CR stays as it came).
	 * msgbody_mime() gives the parsed view. A stage that reads it from
	 * another thread does so through stage_submit_job(), which holds a
	 * reference. */
	struct msgbody *body;
};

/*
 * The side-effect accumulator of a transaction: score, rule hits, headers to
 * add. Stages change it through these calls, never by return values.
 * Results of the connect and helo phases live in the session's filter_tx and
 * each transaction starts from a clone of it.
 */
struct filter_tx;
struct filter_hit {
	const char *stage;
	const char *rule;
	double score;
	const char *desc; /* may be NULL */
};
struct filter_header {
	const char *name;
	const char *value; /* folded: "\n" + WSP at each fold (LF, as the
			    * prefix the session writes), no CR, no NUL */
};
/* A header a stage tried to add and was refused. */
struct filter_refusal {
	const char *stage;  /* "pipeline" when no stage was running */
	const char *name;   /* as given, sanitised to printable ASCII */
	const char *reason; /* static text */
};
struct filter_stage_log { /* one row per stage run: for the transaction log */
	const char *stage;
	enum phase phase;
	const char *result; /* "ok", "hit", "reject", "timeout", "error", ... */
	long usec;
};
struct filter_tx *filter_tx_new(void);
struct filter_tx *filter_tx_clone(const struct filter_tx *src);
void filter_tx_free(struct filter_tx **fx);
void filter_tx_add_score(struct filter_tx *fx, const char *stage, const char *rule,
			 double score, const char *desc);
/*
 * Add a header to the delivered message. The name must be RFC 5322 ftext
 * (printable ASCII 33-126 except ':', 1..76 octets); the value must not
 * contain CR, LF or other control characters but HTAB (8-bit UTF-8 is
 * fine), so a stage can never inject a header or a body. The value is
 * folded at whitespace so lines stay within 78 columns where possible; a
 * line that cannot be kept within 998 octets is refused. A refused header
 * is not added (never silently changed): returns -1, logs one line naming
 * the stage running on fx (filter_tx_set_stage) and records it for
 * filter_tx_refusals(). Returns 0 when added.
 */
int filter_tx_add_header(struct filter_tx *fx, const char *name, const char *value);
/* The pipeline names the stage whose side effects fx is taking (NULL: the
 * pipeline's own). The string must outlive its use (stage names do). */
void filter_tx_set_stage(struct filter_tx *fx, const char *stage);
size_t filter_tx_refusals(const struct filter_tx *fx, const struct filter_refusal **r);
/* The client's reverse DNS, found by a connect-phase stage (dnsbl): the
 * session reads it after the connect phase into its filter_msg and the
 * Received: header. name is copied ("" or NULL for none). Cloned with fx. */
void filter_tx_set_rdns(struct filter_tx *fx, const char *name, enum rdns_status st);
enum rdns_status filter_tx_rdns(const struct filter_tx *fx, const char **name_r);
double filter_tx_score(const struct filter_tx *fx);
size_t filter_tx_hits(const struct filter_tx *fx, const struct filter_hit **hits_r);
size_t filter_tx_headers(const struct filter_tx *fx, const struct filter_header **hdrs_r);
size_t filter_tx_stage_log(const struct filter_tx *fx, const struct filter_stage_log **log_r);
/* The pipeline adds one row per stage run (strings are copied). */
void filter_tx_add_stage_log(struct filter_tx *fx, const char *stage,
			     enum phase phase, const char *result, long usec);
/* "stage:result:usec,..." and "rule1,rule2" for one log line; malloc'd. */
char *filter_tx_format_stages(const struct filter_tx *fx);
char *filter_tx_format_hits(const struct filter_tx *fx);

/* ------------------------------------------------------------- stages */
enum check_status { CHECK_DONE, CHECK_PENDING, CHECK_FAILED };
enum on_error { ON_ERROR_ACCEPT, ON_ERROR_TEMPFAIL };

/* The loop a stage runs on: handed to loop_init() and reachable from every
 * call (call->env). Owned by the pipeline: the one given to loop_init() is
 * valid until that loop's pipeline_loop_stop(), call->env until the call
 * is completed or cancelled. Keep the fields, not the pointer. */
struct stage_env {
	unsigned loop_index;      /* 0..N-1, the daemon's loop number */
	struct event_base *base;  /* that loop's event base */
	struct workers *workers;  /* the worker pool (stage_submit_job) */
};

struct stage_call {
	uint64_t id;                  /* for stage_call_find() */
	enum phase phase;
	struct stage *stage;
	const struct filter_msg *msg;
	struct filter_tx *fx;
	struct event_base *base;      /* the loop the call belongs to (= env->base) */
	const struct stage_env *env;  /* that loop's environment */
	void *loop_data;              /* what this stage's loop_init() made on this loop */
	struct filter_result result;  /* the stage fills this */
	void *stage_data;             /* free for the stage's use */
};

/* The generic header: the first member of every stage's private context. */
struct stage {
	const struct stage_ops *ops;
	const char *name;           /* = ops->name */
	enum on_error on_error;     /* from the section's "on_error" */
	long timeout_ms;            /* from "timeout", else pipeline.stage_timeout */
	/* The phases this instance runs in: create() may set a subset of
	 * ops->phases (those its configuration uses); left 0, all of them. */
	unsigned phases;
};

struct stage_ops {
	const char *name;              /* config section name, e.g. "dnsbl" */
	unsigned phases;               /* PHASE_BIT() mask */
	enum on_error default_on_error;
	/* The options of the stage's own section (CFG_END-terminated) — the
	 * registry adds the common "on_error" and "timeout" to them. May be NULL. */
	struct cfg_opt_t *opts;
	/* Build an instance. section is the stage's parsed section (never NULL).
	 * Must allocate a struct whose first member is struct stage; the pipeline
	 * fills the header. Return 0, or -1 with *error_r malloc'd. Runs on
	 * whatever thread builds the pipeline (start-up, reload). */
	int (*create)(struct cfg_t *section, const struct mx_config *cfg,
		      struct stage **st_r, char **error_r);
	/* Optional: build this loop's resources, on the loop's own thread,
	 * once per loop that uses the pipeline. *loop_data_r (may stay NULL)
	 * comes back as call->loop_data on that loop. Return 0, or -1 with
	 * *error_r malloc'd (the loop then does not use this pipeline). */
	int (*loop_init)(struct stage *st, const struct stage_env *env,
			 void **loop_data_r, char **error_r);
	/* Optional: free what loop_init made, on the same loop thread, after
	 * the last call on that loop was completed or cancelled. */
	void (*loop_teardown)(struct stage *st, void *loop_data);
	/* Check the transaction at call->phase. See the contract above. Runs
	 * concurrently on every loop thread with the same st. */
	enum check_status (*check)(struct stage *st, struct stage_call *call);
	/* Drop a pending call (timeout or session gone). May be NULL for stages
	 * that never pend. After it returns, the stage must not complete the call. */
	void (*cancel)(struct stage *st, struct stage_call *call);
	/* Optional: the session msg describes is over (the client quit,
	 * vanished, timed out or was refused) — for what a stage holds for the
	 * length of a session, such as a concurrency slot. Runs on the
	 * session's loop, at most once per session, and must not block; it may
	 * start asynchronous work on loop_data that completes on its own (its
	 * result goes to nobody). msg has the session's fields only (no
	 * transaction). The pipeline may be newer than the one whose connect
	 * phase the session ran (a reload came between): a stage recognises
	 * what it holds by the session's id, not by its own memory. */
	void (*session_end)(struct stage *st, const struct stage_env *env, void *loop_data,
			    const struct filter_msg *msg);
	/* Runs on the thread that drops the pipeline's last reference, after
	 * every loop_teardown and every job of the stage. */
	void (*destroy)(struct stage *st);
};

/* Find a pending call by id on the current loop thread; NULL if it timed
 * out or was cancelled. */
struct stage_call *stage_call_find(uint64_t id);
/* Complete a pending call (status CHECK_DONE or CHECK_FAILED, result filled
 * in call->result). Exactly once; only for a call found by id. */
void stage_call_done(struct stage_call *call, enum check_status status);

/*
 * Run blocking work for a call on the worker pool's scan lane, from
 * check(). work(arg) runs on a pool thread; it may read the message body
 * (the job holds a reference: msgbody_contents/msgbody_mime stay valid) and
 * the stage instance (the job holds the pipeline, so the stage is not
 * destroyed), and whatever arg points to; never call, msg or fx, which
 * belong to the loop. done(call, arg) then runs on the call's loop:
 *   - call != NULL: the call is still pending; fill call->result and call
 *     stage_call_done() (now, or later after more asynchronous steps);
 *   - call == NULL: the call timed out or was cancelled meanwhile (its
 *     session may be gone): the result goes to nobody; free arg only.
 * Either way the references are released after done() returned. The stage
 * returns CHECK_PENDING after a successful submit. Returns 0, or -1 (errno
 * EAGAIN: the scan lane's queue is full; nothing was queued, done will not
 * run) — the stage then answers CHECK_FAILED, and its on_error decides.
 */
typedef void stage_job_work_fn(void *arg);
typedef void stage_job_done_fn(struct stage_call *call, void *arg);
int stage_submit_job(struct stage_call *call, stage_job_work_fn *work,
		     stage_job_done_fn *done, void *arg);

/* ----------------------------------------------------------- registry */
const struct stage_ops *filters_find_stage(const char *name);
/* Tests add their own stages before loading a config. */
void filters_register_stage(const struct stage_ops *ops);
/* Register the filters' settings module (the pipeline section) and every
 * known stage's section with the config loader. Call once, before
 * config_load(). Idempotent. */
void filters_register_config(void);

/* The pipeline section's values (registry.c). */
struct pipeline_settings {
	char **stages; /* ordered stage names, NULL-terminated */
	size_t n_stages;
	double tag_score, junk_score, quarantine_score, reject_score;
	long stage_timeout; /* milliseconds */
};
const struct pipeline_settings *pipeline_settings(const struct mx_config *cfg);

/* ----------------------------------------------------------- pipeline */
struct pipeline;
int pipeline_create(const struct mx_config *cfg, struct pipeline **pl_r, char **error_r);
struct pipeline *pipeline_ref(struct pipeline *pl);
void pipeline_unref(struct pipeline **pl);
bool pipeline_has_phase(const struct pipeline *pl, enum phase phase);

struct pipeline_outcome {
	enum verdict verdict;        /* merged verdict of the phase */
	enum action action;          /* for PHASE_DATA: after score mapping */
	double score;                /* total so far */
	struct filter_result reply;  /* code/enhanced/text to send for REJECT/TEMPFAIL */
};

typedef void pipeline_done_cb(void *ctx, const struct pipeline_outcome *out);
struct pipeline_run;

enum pipeline_status { PIPELINE_DONE, PIPELINE_PENDING };

/*
 * Per-loop life of a pipeline, for the daemon core. pipeline_loop_start()
 * runs on loop thread env->loop_index when that loop starts using the
 * pipeline (at start-up, and after a reload for the new one): every stage's
 * loop_init() runs there, in pipeline order; the env is copied. On failure
 * the stages already initialised are torn down again, -1 is returned with
 * *error_r malloc'd, and the loop must not use this pipeline. Starting a
 * loop twice is an error. pipeline_loop_stop() runs on that same thread
 * when the loop stops using the pipeline — after its last run on the loop
 * finished or was cancelled (jobs still on the worker pool are fine: they
 * no longer reach loop_data): every loop_teardown() runs, in reverse
 * order. Stopping a loop that was not started does nothing. Every started
 * loop must be stopped before the last pipeline_unref().
 */
int pipeline_loop_start(struct pipeline *pl, const struct stage_env *env, char **error_r);
void pipeline_loop_stop(struct pipeline *pl, unsigned loop_index);

/*
 * Run the stages registered for `phase`, in order, adding scores, stopping at
 * the first hard verdict, on the loop described by env (the caller's own
 * loop thread; env is copied, and env->base is where completions arrive).
 * Stages get the loop_data of env->loop_index; a stage with loop_init on a
 * loop that did not pipeline_loop_start() is not called and counts as
 * failed (its on_error applies; logged as a bug). If everything finished
 * synchronously, fills *out and returns PIPELINE_DONE (done is not called).
 * Otherwise returns PIPELINE_PENDING with *run_r set; done(ctx, out) is then
 * called exactly once from env->base, unless pipeline_run_cancel() is called
 * first. msg and fx must stay valid until then. At PHASE_DATA, out->action
 * is the score mapping (tag/junk/reject thresholds) and X-Spam-* headers are
 * added to fx.
 */
enum pipeline_status pipeline_run(struct pipeline *pl, enum phase phase,
				  const struct stage_env *env,
				  const struct filter_msg *msg, struct filter_tx *fx,
				  pipeline_done_cb *done, void *ctx,
				  struct pipeline_outcome *out,
				  struct pipeline_run **run_r);
/* Cancel a pending run: pending stages are cancelled; done is not called. */
void pipeline_run_cancel(struct pipeline_run **run);
/* The session is over: every stage's session_end() (in pipeline order) on
 * the loop env describes; stages with loop_init on a loop that was not
 * started are skipped. */
void pipeline_session_end(struct pipeline *pl, const struct stage_env *env,
			  const struct filter_msg *msg);

#endif
