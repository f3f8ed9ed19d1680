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
 * Adding a stage: one new file in filters/ defining a struct stage_ops, and
 * one line in the table in registry.c.
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

/* What stages see of the session and transaction. Owned by the caller and
 * valid until the pipeline run finishes or is cancelled. */
struct filter_msg {
	const char *txid;
	const char *session_id;
	const char *client_addr;   /* numeric IP text */
	unsigned client_port;
	const char *helo;          /* NULL before HELO/EHLO */
	bool tls;
	const char *mail_from;     /* "" for <>, NULL before MAIL */
	const char *const *rcpts;  /* accepted recipients so far */
	size_t n_rcpts;
	const char *rcpt;          /* the candidate recipient at PHASE_RCPT */
	struct msgbody *body;      /* sealed, at PHASE_DATA; LF line endings */
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
	const char *value;
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
void filter_tx_add_header(struct filter_tx *fx, const char *name, const char *value);
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

struct stage_call {
	uint64_t id;                  /* for stage_call_find() */
	enum phase phase;
	struct stage *stage;
	const struct filter_msg *msg;
	struct filter_tx *fx;
	struct event_base *base;      /* the loop the call belongs to */
	struct filter_result result;  /* the stage fills this */
	void *stage_data;             /* free for the stage's use */
};

/* The generic header: the first member of every stage's private context. */
struct stage {
	const struct stage_ops *ops;
	const char *name;           /* = ops->name */
	enum on_error on_error;     /* from the section's "on_error" */
	long timeout_ms;            /* from "timeout", else pipeline.stage_timeout */
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
	 * fills the header. Return 0, or -1 with *error_r malloc'd. */
	int (*create)(struct cfg_t *section, const struct mx_config *cfg,
		      struct stage **st_r, char **error_r);
	/* Check the transaction at call->phase. See the contract above. */
	enum check_status (*check)(struct stage *st, struct stage_call *call);
	/* Drop a pending call (timeout or session gone). May be NULL for stages
	 * that never pend. After it returns, the stage must not complete the call. */
	void (*cancel)(struct stage *st, struct stage_call *call);
	/* Optional: update in place from a new section; NULL means the pipeline
	 * builds a fresh instance on reload (the default). */
	int (*reload)(struct stage *st, struct cfg_t *section, char **error_r);
	void (*destroy)(struct stage *st);
};

/* Find a pending call by id on the current loop thread; NULL if it timed
 * out or was cancelled. */
struct stage_call *stage_call_find(uint64_t id);
/* Complete a pending call (status CHECK_DONE or CHECK_FAILED, result filled
 * in call->result). Exactly once; only for a call found by id. */
void stage_call_done(struct stage_call *call, enum check_status status);

/* ----------------------------------------------------------- registry */
const struct stage_ops *filters_find_stage(const char *name);
/* Tests add their own stages before loading a config. */
void filters_register_stage(const struct stage_ops *ops);
/* Register every known stage's section with the config loader. Call once,
 * before config_load(). Idempotent. */
void filters_register_config(void);

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
 * Run the stages registered for `phase`, in order, adding scores, stopping at
 * the first hard verdict. If everything finished synchronously, fills *out
 * and returns PIPELINE_DONE (done is not called). Otherwise returns
 * PIPELINE_PENDING with *run_r set; done(ctx, out) is then called exactly
 * once from `base`, unless pipeline_run_cancel() is called first. msg and fx
 * must stay valid until then. At PHASE_DATA, out->action is the score
 * mapping (tag/junk/reject thresholds) and X-Spam-* headers are added to fx.
 */
enum pipeline_status pipeline_run(struct pipeline *pl, enum phase phase,
				  struct event_base *base,
				  const struct filter_msg *msg, struct filter_tx *fx,
				  pipeline_done_cb *done, void *ctx,
				  struct pipeline_outcome *out,
				  struct pipeline_run **run_r);
/* Cancel a pending run: pending stages are cancelled; done is not called. */
void pipeline_run_cancel(struct pipeline_run **run);

#endif
