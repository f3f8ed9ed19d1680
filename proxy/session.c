/*
 * session.c — the SMTP session state machine (RFC 5321 receiving side).
 *
 * A session lives on one loop thread from accept to close, on top of the
 * core's connection layer (daemon/conn.c: line caps, timeouts, TLS, lingering
 * close). Input is taken one command line at a time (or, in DATA, through
 * the dot reader); each verb is looked up in the command table, which says in
 * which states it is allowed. Anything asynchronous — a pipeline phase whose
 * stages are waiting for DNS or Redis, the Maildir delivery on the worker
 * pool — sets SESSION_F_BUSY: no further input is processed until the
 * completion arrives, so pipelined commands are answered strictly in order.
 *
 * A transaction (struct tx) is built at MAIL and dropped at RSET or the end
 * of the message. During delivery the tx is owned by the delivery job; if
 * the client disconnects meanwhile, the completion finds no session under
 * its handle and frees the tx itself.
 *
 * The session is freed only when its connection goes (session_gone), which
 * the connection layer does from the top of an event callback — or
 * conn_settle() at the end of a completion — never deep inside a handler.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/ssl.h>

#include "lib/metrics.h"
#include "lib/txstats.h"
#include "proxy/proxy.h"

/* Output queued beyond this stops command processing until it drains, so a
 * client that pipelines without reading cannot grow our memory. */
#define SESSION_OUTPUT_MAX (64 * 1024)
#define DATA_CHUNK 16384

enum session_state {
	STATE_CONNECTED = 0, /* before HELO/EHLO */
	STATE_HELO,          /* greeted, no transaction */
	STATE_MAIL,          /* MAIL accepted, no recipient yet */
	STATE_RCPT,          /* at least one recipient */
	STATE_DATA,          /* reading message content */
	STATE_COUNT
};
#define S_BIT(s) (1u << (s))

/* What the connection layer does not already know about the session. */
enum session_flags {
	SESSION_F_ESMTP = 0x01,
	SESSION_F_TLS = 0x02,        /* the dialogue is inside TLS */
	SESSION_F_BUSY = 0x04,       /* async work pending: don't read commands */
	SESSION_F_SHUTDOWN = 0x10,   /* server stopping: 421 after this transaction */
	SESSION_F_ENDED = 0x20,      /* the stages were told the session is over */
	SESSION_F_FIRST_CMD = 0x400, /* a command arrived: timeout_command from now on */
};

struct tx {
	char id[MX_ID_LEN];
	uint64_t session_handle;
	struct timespec start;
	char from[SMTP_PATH_MAX + 1];   /* "" for <> */
	char **rcpts;                   /* "local@domain", lower-case, as the client
					 * named them (postmaster@dom), no repeats */
	struct backend_rcpt *brcpts;    /* what the backend said of each (mailbox, where) */
	size_t n_rcpts, n_rcpts_alloc;
	size_t n_rcpt_cmds;             /* accepted RCPT commands, repeats included */
	uint64_t declared_size;
	uint64_t smtp_size;             /* DATA octets as sent (CRLF = 2, stuffed dots) */
	struct msgbody *body;
	struct dot_reader dr;
	bool too_big;
	bool line_too_long;
	int body_errno;
	char reason[64];                /* why it was refused or deferred, for the log */
	char msgid[256];                /* Message-ID header, "-" when none */
	struct filter_tx *fx;
	struct filter_msg msg;
	struct pipeline_outcome outcome;
	enum verdict sticky;            /* ACCEPT/DISCARD/QUARANTINE from earlier phases */
	struct backend_tx *btx;         /* the backend's side of the transaction */
	bool body_8bit;                 /* MAIL ... BODY=8BITMIME */
	/* delivery: the backend's answer to DATA */
	struct backend_reply dreply;
	char *ddetail;                  /* the backend's detail on a failure, for the log */
	char quarantine[MX_ID_LEN];     /* held: the quarantine id, "junk" when it went to
					 * the users' junk folders instead; "" otherwise */
	struct server_state *st;
	char *log_summary;
};

struct session;
typedef void phase_cont_fn(struct session *sess, const struct pipeline_outcome *out);

struct session {
	uint64_t handle;
	char id[MX_ID_LEN];             /* the connection's id */
	struct conn *conn;
	struct server_state *st;        /* the conn's state (borrowed), newest at MAIL */
	enum session_state state;
	unsigned flags;
	char client_addr[64];
	unsigned client_port;
	char client_name[256];          /* the client's name (XCLIENT NAME); "" = unknown */
	char peer_addr[64];             /* who is connected: what XCLIENT trust is judged by */
	char login[256];                /* XCLIENT LOGIN, for the log */
	/* the client's reverse DNS, from the connect phase (filter_tx_rdns) */
	char rdns[256];
	enum rdns_status rdns_status;
	char helo[256];
	long errors, commands, transactions;
	struct tx *tx;
	struct filter_tx *connect_fx;   /* connect-phase results */
	struct filter_tx *fx;           /* connect + current HELO results, cloned per transaction */
	enum verdict sticky_connect;    /* ACCEPT/DISCARD/QUARANTINE from the connect phase */
	enum verdict sticky_helo;       /* ... and from the current HELO/EHLO */
	/* while a HELO/EHLO's phase runs: what it replaces, restored if refused */
	struct {
		char helo[256];
		bool esmtp;
		struct filter_tx *fx;
		enum verdict sticky;
	} prev_helo;
	struct filter_msg msg;          /* view for phases outside a transaction */
	struct pipeline_run *run;
	phase_cont_fn *cont;
	char pending_arg[SMTP_PATH_MAX + 1]; /* argument carried to a continuation */
	struct smtp_path pending_path;
	struct backend_rcpt pending_rcpt;    /* the backend's yes, while RCPT's phase runs */
};

struct command {
	enum smtp_verb verb;
	unsigned states;    /* S_BIT() mask of states the verb is allowed in */
	bool counts;        /* counts against limits.commands_max */
	void (*handler)(struct session *sess, const char *args, size_t len);
};

static void session_process(struct session *sess);
static bool session_xclient_trusted(const struct session *sess);
static void session_close(struct session *sess, const char *reason);
static void session_rcpt_abandon(struct session *sess);
static void session_log_reject(struct session *sess, const char *from, const char *rcpt,
			       const char *reply, const char *reason);

/* --------------------------------------------------------------- replies */

static void ATTR_PRINTF(2, 3)
session_reply(struct session *sess, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	conn_write_linev(sess->conn, fmt, ap);
	va_end(ap);
}

/* A reply caused by a client error: counts towards limits.errors_max. */
static void ATTR_PRINTF(2, 3)
session_error(struct session *sess, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	session_reply(sess, "%s", line);
	if (++sess->errors >= smtp_settings(sess->st->cfg)->errors_max) {
		snprintf(line, sizeof(line), "421 4.7.0 %s Error: too many errors",
			 smtp_settings(sess->st->cfg)->hostname);
		session_reply(sess, "%s", line);
		session_log_reject(sess, NULL, NULL, line, "too_many_errors");
		session_close(sess, "too_many_errors");
	}
}

/* Tell the stages the session is over (once): what they hold for it — a
 * concurrency slot — goes back as soon as the session decides to close,
 * not only when the connection is finally freed after its lingering
 * close, so a client that reconnects at once finds it free. */
static void
session_end_stages(struct session *sess)
{
	if (sess->msg.session_id == NULL || (sess->flags & SESSION_F_ENDED))
		return;
	sess->flags |= SESSION_F_ENDED;
	struct daemon_loop *loop = conn_loop(sess->conn);
	const struct stage_env env = {
		.loop_index = daemon_loop_index(loop),
		.base = conn_base(sess->conn),
		.workers = daemon_loop_workers(loop),
	};
	pipeline_session_end(sess->st->pipeline, &env, &sess->msg);
}

static void
session_close(struct session *sess, const char *reason)
{
	session_end_stages(sess);
	conn_close(sess->conn, reason);
}

/* ----------------------------------------------------------- transaction */

static void
tx_free(struct tx **txp)
{
	struct tx *tx = *txp;

	*txp = NULL;
	if (tx == NULL)
		return;
	/* over: after DATA's answer, or without DATA (the backend resets
	 * what it began, e.g. its upstream transaction) */
	backend_tx_end(&tx->btx);
	for (size_t i = 0; i < tx->n_rcpts; i++) {
		free(tx->rcpts[i]);
		backend_rcpt_clear(&tx->brcpts[i]);
	}
	free(tx->rcpts);
	free(tx->brcpts);
	msgbody_free(&tx->body);
	filter_tx_free(&tx->fx);
	free(tx->ddetail);
	free(tx->log_summary);
	if (tx->st != NULL)
		server_state_unref(&tx->st);
	free(tx);
}

static void
session_tx_reset(struct session *sess)
{
	tx_free(&sess->tx);
	if (sess->state != STATE_CONNECTED)
		sess->state = STATE_HELO;
}

static void
session_fill_msg(struct session *sess, struct filter_msg *msg)
{
	memset(msg, 0, sizeof(*msg));
	msg->session_id = sess->id;
	msg->client_addr = sess->client_addr;
	msg->client_port = sess->client_port;
	msg->hostname = smtp_settings(sess->st->cfg)->hostname;
	msg->client_rdns = sess->rdns;
	msg->client_rdns_status = sess->rdns_status;
	msg->helo = sess->helo[0] != '\0' ? sess->helo : NULL;
	msg->tls = (sess->flags & SESSION_F_TLS) != 0;
	if (sess->tx != NULL) {
		msg->txid = sess->tx->id;
		msg->mail_from = sess->tx->from;
		msg->declared_size = sess->tx->declared_size;
		msg->rcpts = (const char *const *)sess->tx->rcpts;
		msg->n_rcpts = sess->tx->n_rcpts;
	}
}

/* ------------------------------------------------------------ refusals */

/* reply="..." stays one field: quotes and backslashes (a reply may quote
 * the client's own words) are escaped. */
static void
log_quote(const char *in, char *out, size_t outsz)
{
	size_t o = 0;

	for (; *in != '\0' && o + 2 < outsz; in++) {
		if (*in == '"' || *in == '\\')
			out[o++] = '\\';
		out[o++] = *in;
	}
	out[o] = '\0';
}

/*
 * Every refusal gets one info line, whatever refused it, carrying what an
 * admin needs to find the mail it was about — client, HELO name, sender (so
 * a session whose recipients were all refused still says who sent), the
 * recipient when there is one, the reply and a reason word:
 *   ID smtp reject client=192.0.2.1 helo=x from=<a@b> rcpt=<c@d>
 *      reply="550 5.1.1 <c@d>: ..." reason=unknown_user
 * from names the sender when no transaction exists yet (a MAIL refused for
 * its parameters); NULL takes the transaction's, "-" when there is none.
 */
static void
session_log_reject(struct session *sess, const char *from, const char *rcpt, const char *reply,
		   const char *reason)
{
	char quoted[2100];

	if (from == NULL && sess->tx != NULL)
		from = sess->tx->from;
	log_quote(reply, quoted, sizeof(quoted));
	log_msg(LOG_LEVEL_INFO, "%s smtp reject client=%s helo=%s from=%s%s%s%s%s%s reply=\"%s\" reason=%s",
		sess->id, sess->client_addr, sess->helo[0] != '\0' ? sess->helo : "-",
		from != NULL ? "<" : "-", from != NULL ? from : "", from != NULL ? ">" : "",
		rcpt != NULL ? " rcpt=<" : "", rcpt != NULL ? rcpt : "", rcpt != NULL ? ">" : "",
		quoted, reason);
}

/* Refuse a command: log it, then reply — through session_error (which
 * counts towards limits.errors_max) when the client is at fault, plainly
 * when it is not (a limit, a lookup failure). */
static void ATTR_PRINTF(6, 7)
session_refuse(struct session *sess, bool client_error, const char *from, const char *rcpt,
	       const char *reason, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	session_log_reject(sess, from, rcpt, line, reason);
	if (client_error)
		session_error(sess, "%s", line);
	else
		session_reply(sess, "%s", line);
}

/* "stage:NAME" for the stage that ended `phase` with a hard verdict (the
 * last one of the phase that rejected, tempfailed, timed out or failed). */
static void
session_stage_reason(const struct filter_tx *fx, enum phase phase, char *out, size_t outsz)
{
	const struct filter_stage_log *log;
	size_t n = filter_tx_stage_log(fx, &log);

	for (size_t i = n; i-- > 0;) {
		const char *r = log[i].result;
		if (log[i].phase != phase)
			continue;
		if (strcmp(r, "reject") == 0 || strcmp(r, "tempfail") == 0 ||
		    strcmp(r, "timeout") == 0 || strcmp(r, "error") == 0) {
			snprintf(out, outsz, "stage:%s", log[i].stage);
			return;
		}
	}
	str_copy(out, "stage", outsz);
}

/* ------------------------------------------------------ pipeline phases */

/*
 * ACCEPT, DISCARD and QUARANTINE from a phase before DATA do not end the
 * dialogue; they are remembered and applied when the message is complete.
 * The strongest wins: quarantine keeps a copy, so it beats discard, and
 * both beat accept.
 */
static void
verdict_stick(enum verdict *sticky, enum verdict v)
{
	static const int rank[] = {
		[VERDICT_CONTINUE] = 0, [VERDICT_ACCEPT] = 1, [VERDICT_DISCARD] = 2,
		[VERDICT_QUARANTINE] = 3, [VERDICT_REJECT] = 0, [VERDICT_TEMPFAIL] = 0,
	};
	if (rank[v] > rank[*sticky])
		*sticky = v;
}

/* Arm the read/write timeouts for what the session waits for now. None
 * while busy: stage timeouts and the worker pool bound those waits, and a
 * timeout then would answer the client behind the pending work's back. */
static void
session_arm_timeouts(struct session *sess)
{
	const struct smtp_settings *l = smtp_settings(sess->st->cfg);

	if (sess->flags & SESSION_F_BUSY)
		conn_set_timeout(sess->conn, 0);
	else if (sess->state == STATE_DATA)
		conn_set_timeout(sess->conn, l->timeout_data);
	else if (!(sess->flags & SESSION_F_FIRST_CMD))
		conn_set_timeout(sess->conn, conn_timeout_greeting(sess->conn));
	else
		conn_set_timeout(sess->conn, l->timeout_command);
}

static void
session_phase_done(void *ctx, const struct pipeline_outcome *out)
{
	struct session *sess = ctx;
	phase_cont_fn *cont = sess->cont;

	sess->run = NULL;
	sess->cont = NULL;
	sess->flags &= ~SESSION_F_BUSY;
	session_arm_timeouts(sess); /* before the continuation may close */
	cont(sess, out);
	session_arm_timeouts(sess);
	session_process(sess);
	conn_settle(sess->conn);
}

/* Run one phase; cont runs now or when the stages answer. */
static void
session_run_phase(struct session *sess, enum phase phase, struct filter_msg *msg,
		  struct filter_tx *fx, phase_cont_fn *cont)
{
	struct pipeline_outcome out;
	struct pipeline *pl = sess->st->pipeline;
	struct daemon_loop *loop = conn_loop(sess->conn);
	const struct stage_env env = {
		.loop_index = daemon_loop_index(loop),
		.base = conn_base(sess->conn),
		.workers = daemon_loop_workers(loop),
	};

	if (!pipeline_has_phase(pl, phase) && phase != PHASE_DATA) {
		memset(&out, 0, sizeof(out));
		cont(sess, &out);
		return;
	}
	if (pipeline_run(pl, phase, &env, msg, fx, session_phase_done,
			 sess, &out, &sess->run) == PIPELINE_DONE) {
		cont(sess, &out);
		return;
	}
	sess->cont = cont;
	sess->flags |= SESSION_F_BUSY;
	session_arm_timeouts(sess);
}

/* Send (and log) the reply a stage chose for a hard verdict at `phase`,
 * whose results are in fx; true if one was sent. */
static bool
session_reply_verdict(struct session *sess, const struct pipeline_outcome *out,
		      const struct filter_tx *fx, enum phase phase, const char *rcpt)
{
	const struct filter_result *r = &out->reply;

	switch (out->verdict) {
	case VERDICT_REJECT:
	case VERDICT_TEMPFAIL: {
		bool temp = out->verdict == VERDICT_TEMPFAIL;
		unsigned code = r->code != 0 ? r->code : (temp ? 451 : 550);
		const char *enh = r->enhanced[0] != '\0' ? r->enhanced : (temp ? "4.7.1" : "5.7.1");
		const char *text = r->text[0] != '\0' ? r->text : (temp ? "Try again later" : "Rejected");
		char reason[64];
		session_stage_reason(fx, phase, reason, sizeof(reason));
		session_refuse(sess, false, NULL, rcpt, reason, "%u %s %s", code, enh, text);
		return true;
	}
	default:
		return false;
	}
}

/* ----------------------------------------------------------- commands */


/* Back to not greeted, with nothing learned (after STARTTLS, RFC 3207):
 * MAIL gets 503 until a HELO/EHLO succeeds. */
static void
session_forget_helo(struct session *sess)
{
	session_tx_reset(sess);
	sess->state = STATE_CONNECTED;
	sess->helo[0] = '\0';
	sess->flags &= ~SESSION_F_ESMTP;
	filter_tx_free(&sess->fx);
	sess->fx = filter_tx_clone(sess->connect_fx);
	sess->sticky_helo = VERDICT_CONTINUE;
}

/* STARTTLS is offered (EHLO, HELP) only with a certificate and only once. */
static bool
session_starttls_offered(const struct session *sess)
{
	return sess->st->ssl_ctx != NULL && !(sess->flags & SESSION_F_TLS);
}

static void
cmd_helo_cont(struct session *sess, const struct pipeline_outcome *out)
{
	const struct mx_config *cfg = sess->st->cfg;

	if (session_reply_verdict(sess, out, sess->fx, PHASE_HELO, NULL)) {
		/* RFC 5321 4.1.4: a refused EHLO leaves the session in the state it
		 * was in — the previous name, its results, any transaction */
		str_copy(sess->helo, sess->prev_helo.helo, sizeof(sess->helo));
		if (sess->prev_helo.esmtp)
			sess->flags |= SESSION_F_ESMTP;
		else
			sess->flags &= ~SESSION_F_ESMTP;
		filter_tx_free(&sess->fx);
		sess->fx = sess->prev_helo.fx;
		sess->prev_helo.fx = NULL;
		sess->sticky_helo = sess->prev_helo.sticky;
		return;
	}
	filter_tx_free(&sess->prev_helo.fx);
	verdict_stick(&sess->sticky_helo, out->verdict);
	/* an accepted HELO/EHLO resets the transaction (RFC 5321 4.1.4) */
	session_tx_reset(sess);
	sess->state = STATE_HELO;
	if (!(sess->flags & SESSION_F_ESMTP)) {
		session_reply(sess, "250 %s", smtp_settings(cfg)->hostname);
		return;
	}
	/* the session's own extensions, then what the backend can take in a
	 * message (SIZE, 8BITMIME): a relay answers with its upstream's */
	const char *kw[16];
	size_t n = 0;
	kw[n++] = "PIPELINING";
	if (session_starttls_offered(sess))
		kw[n++] = "STARTTLS";
	kw[n++] = "ENHANCEDSTATUSCODES";
	if (session_xclient_trusted(sess))
		kw[n++] = "XCLIENT NAME ADDR PORT PROTO HELO LOGIN";
	const struct backend *be = sess->st->backend;
	for (const char *const *b = be->ops->ehlo(be); *b != NULL && n < N_ELEMENTS(kw); b++)
		kw[n++] = *b;
	session_reply(sess, "250-%s", smtp_settings(cfg)->hostname);
	for (size_t i = 0; i < n; i++)
		session_reply(sess, "250%c%s", i + 1 < n ? '-' : ' ', kw[i]);
}

static void
cmd_helo_common(struct session *sess, const char *args, size_t len, bool esmtp)
{
	const char *err;

	if (smtp_parse_helo(args, len, &err) < 0) {
		bool missing = true;
		for (size_t i = 0; i < len; i++)
			missing = missing && args[i] == ' ';
		/* logged with the name it replaced, then forgotten */
		if (missing)
			session_refuse(sess, true, NULL, NULL, "helo_syntax", "501 5.5.4 Syntax: %s hostname",
				       esmtp ? "EHLO" : "HELO");
		else
			session_refuse(sess, true, NULL, NULL, "helo_syntax", "501 5.5.4 %s", err);
		/* RFC 5321 4.1.4: the session stays in the state it was in */
		return;
	}
	/* the phase judges the new name; what it replaces comes back if the
	 * phase refuses it (cmd_helo_cont) */
	str_copy(sess->prev_helo.helo, sess->helo, sizeof(sess->prev_helo.helo));
	sess->prev_helo.esmtp = (sess->flags & SESSION_F_ESMTP) != 0;
	sess->prev_helo.fx = sess->fx;
	sess->prev_helo.sticky = sess->sticky_helo;
	memcpy(sess->helo, args, len);
	sess->helo[len] = '\0';
	if (esmtp)
		sess->flags |= SESSION_F_ESMTP;
	else
		sess->flags &= ~SESSION_F_ESMTP;
	/* a new HELO replaces what the previous one earned */
	sess->fx = filter_tx_clone(sess->connect_fx);
	sess->sticky_helo = VERDICT_CONTINUE;
	session_fill_msg(sess, &sess->msg);
	/* the phase sees the greeting, not a transaction it may end */
	sess->msg.txid = NULL;
	sess->msg.mail_from = NULL;
	sess->msg.rcpts = NULL;
	sess->msg.n_rcpts = 0;
	session_run_phase(sess, PHASE_HELO, &sess->msg, sess->fx, cmd_helo_cont);
}

static void
cmd_helo(struct session *sess, const char *args, size_t len)
{
	cmd_helo_common(sess, args, len, false);
}

static void
cmd_ehlo(struct session *sess, const char *args, size_t len)
{
	cmd_helo_common(sess, args, len, true);
}

static void
cmd_mail_cont(struct session *sess, const struct pipeline_outcome *out)
{
	if (session_reply_verdict(sess, out, sess->tx->fx, PHASE_MAIL, NULL)) {
		tx_free(&sess->tx);
		return;
	}
	verdict_stick(&sess->tx->sticky, out->verdict);
	struct tx *tx = sess->tx;
	const struct backend_env env = {
		.base = conn_base(sess->conn),
		.workers = daemon_loop_workers(conn_loop(sess->conn)),
	};
	const struct backend_txinfo info = {
		.id = tx->id, .from = tx->from, .body_8bit = tx->body_8bit,
		.size = tx->declared_size, .client_addr = sess->client_addr,
		.client_port = sess->client_port, .helo = sess->helo,
		.esmtp = (sess->flags & SESSION_F_ESMTP) != 0, .tls = (sess->flags & SESSION_F_TLS) != 0,
	};
	tx->btx = backend_tx_begin(tx->st->backend, &env, &info);
	sess->state = STATE_MAIL;
	sess->commands = 0; /* limits.commands_max counts commands between MAILs */
	session_reply(sess, "250 2.1.0 Ok");
}

static void
cmd_mail(struct session *sess, const char *args, size_t len)
{
	const struct mx_config *cfg;
	struct smtp_path path;
	const char *err;
	char from[SMTP_PATH_MAX + 1];

	if (smtp_parse_mail_args(args, len, "FROM:", true, &path, &err) < 0) {
		session_refuse(sess, true, NULL, NULL, "mail_syntax",
			       "501 5.1.7 Bad sender address syntax: %s", err);
		return;
	}
	smtp_path_format(&path, from, sizeof(from));
	/* a new transaction takes the newest shared state (after a reload) */
	sess->st = conn_state_update(sess->conn);
	cfg = sess->st->cfg;
	uint64_t declared = 0;
	bool body_8bit = false;
	for (size_t i = 0; i < path.n_params; i++) {
		const struct smtp_param *p = &path.params[i];
		if (strcmp(p->key, "SIZE") == 0 && p->has_value && sess->flags & SESSION_F_ESMTP) {
			char *end;
			errno = 0;
			unsigned long long v = strtoull(p->value, &end, 10);
			if (*end != '\0' || errno != 0 || p->value[0] == '-') {
				session_refuse(sess, true, from, NULL, "bad_param",
					       "501 5.5.4 Bad SIZE parameter");
				return;
			}
			declared = v;
		} else if (strcmp(p->key, "BODY") == 0 && p->has_value && sess->flags & SESSION_F_ESMTP) {
			if (strcasecmp(p->value, "7BIT") != 0 && strcasecmp(p->value, "8BITMIME") != 0) {
				session_refuse(sess, true, from, NULL, "bad_param",
					       "501 5.5.4 Unsupported BODY type");
				return;
			}
			body_8bit = strcasecmp(p->value, "8BITMIME") == 0;
		} else {
			session_refuse(sess, true, from, NULL, "bad_param",
				       "555 5.5.4 Unsupported parameter %s", p->key);
			return;
		}
	}
	if (declared > (uint64_t)backends_settings(cfg)->message_size_max) {
		session_refuse(sess, true, from, NULL, "size",
			       "552 5.3.4 Message size exceeds fixed maximum message size");
		return;
	}
	struct tx *tx = xcalloc(1, sizeof(*tx));
	id_new(tx->id);
	tx->session_handle = sess->handle;
	clock_gettime(CLOCK_MONOTONIC, &tx->start);
	str_copy(tx->from, from, sizeof(tx->from));
	str_copy(tx->msgid, "-", sizeof(tx->msgid));
	tx->declared_size = declared;
	tx->body_8bit = body_8bit;
	tx->st = server_state_ref(sess->st);
	tx->fx = filter_tx_clone(sess->fx);
	tx->sticky = sess->sticky_connect;
	verdict_stick(&tx->sticky, sess->sticky_helo);
	sess->tx = tx;
	session_fill_msg(sess, &tx->msg);
	session_run_phase(sess, PHASE_MAIL, &tx->msg, tx->fx, cmd_mail_cont);
}

static void
cmd_rcpt_cont(struct session *sess, const struct pipeline_outcome *out)
{
	struct tx *tx = sess->tx;

	if (session_reply_verdict(sess, out, tx->fx, PHASE_RCPT, sess->pending_arg)) {
		/* the backend said yes, a stage said no: hand it back */
		session_rcpt_abandon(sess);
		return;
	}
	verdict_stick(&tx->sticky, out->verdict);
	if (tx->n_rcpts == tx->n_rcpts_alloc) {
		tx->n_rcpts_alloc = tx->n_rcpts_alloc == 0 ? 4 : tx->n_rcpts_alloc * 2;
		tx->rcpts = xrealloc(tx->rcpts, (tx->n_rcpts_alloc + 1) * sizeof(char *));
		tx->brcpts = xrealloc(tx->brcpts, tx->n_rcpts_alloc * sizeof(*tx->brcpts));
	}
	tx->rcpts[tx->n_rcpts] = xstrdup(sess->pending_arg);
	tx->brcpts[tx->n_rcpts] = sess->pending_rcpt; /* moved */
	memset(&sess->pending_rcpt, 0, sizeof(sess->pending_rcpt));
	tx->n_rcpts++;
	tx->n_rcpt_cmds++;
	tx->rcpts[tx->n_rcpts] = NULL;
	tx->msg.rcpts = (const char *const *)tx->rcpts;
	tx->msg.n_rcpts = tx->n_rcpts;
	sess->state = STATE_RCPT;
	session_reply(sess, "250 2.1.5 Ok");
}

/* A recipient the backend took that the transaction will not keep. */
static void
session_rcpt_abandon(struct session *sess)
{
	if (sess->pending_rcpt.address != NULL && sess->tx != NULL)
		backend_tx_drop(sess->tx->btx, &sess->pending_rcpt, 1);
	backend_rcpt_clear(&sess->pending_rcpt);
}

/* The backend's answer for sess->pending_arg (in sess->pending_rcpt). */
static void
session_rcpt_answered(struct session *sess, const struct backend_reply *br)
{
	struct tx *tx = sess->tx;

	if (br->code / 100 != 2) {
		backend_rcpt_clear(&sess->pending_rcpt);
		session_refuse(sess, br->code / 100 == 5, NULL, sess->pending_arg, br->reason,
			       "%u %s %s", br->code, br->enhanced, br->text);
		return;
	}
	tx->msg.rcpt = sess->pending_arg;
	session_run_phase(sess, PHASE_RCPT, &tx->msg, tx->fx, cmd_rcpt_cont);
}

/* A backend that answered RCPT later: find the session by its handle (it
 * may be gone), then go on as if it had answered at once. */
static bool
session_rcpt_answer(void *ctx, const struct backend_reply *br, struct backend_rcpt *rcpt)
{
	uint64_t *waiter = ctx;
	struct session *sess = handle_lookup(*waiter);

	free(waiter);
	if (sess == NULL)
		return false; /* the backend undoes the recipient itself */
	sess->pending_rcpt = *rcpt; /* moved */
	memset(rcpt, 0, sizeof(*rcpt));
	sess->flags &= ~SESSION_F_BUSY;
	session_arm_timeouts(sess); /* before anything may close */
	session_rcpt_answered(sess, br);
	session_arm_timeouts(sess);
	session_process(sess);
	conn_settle(sess->conn);
	return true;
}

static void
cmd_rcpt(struct session *sess, const char *args, size_t len)
{
	const struct mx_config *cfg = sess->st->cfg;
	struct tx *tx = sess->tx;
	struct smtp_path *path = &sess->pending_path;
	const char *err;
	char addr[SMTP_PATH_MAX + 1];

	if (smtp_parse_mail_args(args, len, "TO:", false, path, &err) < 0) {
		session_refuse(sess, true, NULL, NULL, "rcpt_syntax",
			       "501 5.1.3 Bad recipient address syntax: %s", err);
		return;
	}
	smtp_path_format(path, addr, sizeof(addr));
	if (path->n_params > 0) {
		session_refuse(sess, true, NULL, addr, "bad_param", "555 5.5.4 Unsupported parameter %s",
			       path->params[0].key);
		return;
	}
	/* RCPT commands, not addresses, as Postfix counts: a client cannot
	 * make us answer without bound by repeating one address */
	if (tx->n_rcpt_cmds >= (size_t)smtp_settings(cfg)->recipients_max) {
		session_refuse(sess, false, NULL, addr, "too_many_recipients",
			       "452 4.5.3 Too many recipients");
		return;
	}
	if (path->address_literal || backends_route_of(cfg, path->domain) == NULL) {
		session_refuse(sess, true, NULL, addr, "relay", "550 5.7.1 <%s>: Relay access denied", addr);
		return;
	}
	if (path->quoted_local) {
		/* "alice" was already unquoted by the parser: this one needs
		 * its quotes, and no mailbox here has such a name */
		session_refuse(sess, true, NULL, addr, "quoted_local",
			       "553 5.1.3 <%s>: quoted local parts are not accepted", addr);
		return;
	}
	if (!smtp_path_is_simple_local(path)) {
		/* user%host@ and host!user@ are routing, i.e. relaying */
		session_refuse(sess, true, NULL, addr, "relay", "550 5.7.1 <%s>: Relay access denied", addr);
		return;
	}
	str_lower(path->local);
	smtp_path_format(path, addr, sizeof(addr));
	for (size_t i = 0; i < tx->n_rcpts; i++) {
		if (strcmp(tx->rcpts[i], addr) == 0) {
			/* duplicate: accept once, deliver once */
			tx->n_rcpt_cmds++;
			session_reply(sess, "250 2.1.5 Ok");
			return;
		}
	}
	/* the backend of the domain says whether it takes the recipient, in
	 * its own words, now or later; the phase runs only for the ones it
	 * takes */
	struct backend_reply br;
	uint64_t *waiter = xmalloc(sizeof(*waiter));
	*waiter = sess->handle;
	memset(&br, 0, sizeof(br));
	str_copy(sess->pending_arg, addr, sizeof(sess->pending_arg));
	if (backend_tx_rcpt(tx->btx, path->local, path->domain, &sess->pending_rcpt, &br,
			    session_rcpt_answer, waiter) == BACKEND_PENDING) {
		sess->flags |= SESSION_F_BUSY;
		session_arm_timeouts(sess);
		return;
	}
	free(waiter);
	session_rcpt_answered(sess, &br);
}

static void
cmd_data(struct session *sess, const char *args, size_t len)
{
	const struct mx_config *cfg = sess->st->cfg;
	struct tx *tx = sess->tx;

	if (len != 0) {
		session_refuse(sess, true, NULL, NULL, "data_syntax", "501 5.5.4 Syntax: DATA");
		return;
	}
	tx->body = msgbody_new(smtp_settings(cfg)->spool_dir, (size_t)smtp_settings(cfg)->spill_threshold);
	dot_reader_init(&tx->dr);
	sess->state = STATE_DATA;
	session_arm_timeouts(sess);
	session_reply(sess, "354 End data with <CR><LF>.<CR><LF>");
}

static void
cmd_rset(struct session *sess, const char *args, size_t len)
{
	session_tx_reset(sess);
	session_reply(sess, "250 2.0.0 Ok");
}

static void
cmd_noop(struct session *sess, const char *args, size_t len)
{
	session_reply(sess, "250 2.0.0 Ok");
}

static void
cmd_quit(struct session *sess, const char *args, size_t len)
{
	session_reply(sess, "221 2.0.0 Bye");
	session_close(sess, "quit");
}

static void cmd_help(struct session *sess, const char *args, size_t len);

static void
cmd_vrfy(struct session *sess, const char *args, size_t len)
{
	/* the same answer for every argument: reveals nothing */
	session_reply(sess, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static void
cmd_not_implemented(struct session *sess, const char *args, size_t len)
{
	session_refuse(sess, true, NULL, NULL, "not_implemented", "502 5.5.1 Command not implemented");
}

static void session_greet(struct session *sess);

static void
cmd_starttls(struct session *sess, const char *args, size_t len)
{
	if (sess->st->ssl_ctx == NULL) {
		session_refuse(sess, true, NULL, NULL, "not_implemented", "502 5.5.1 Command not implemented");
		return;
	}
	if (sess->flags & SESSION_F_TLS) {
		session_refuse(sess, true, NULL, NULL, "bad_sequence", "503 5.5.1 TLS already active");
		return;
	}
	if (len != 0) {
		session_refuse(sess, true, NULL, NULL, "starttls_syntax", "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	/* the conn layer discards what was pipelined after STARTTLS and
	 * switches once the 220 has left; session_tls_up resumes */
	if (conn_starttls(sess->conn, sess->st->ssl_ctx) < 0) {
		session_refuse(sess, false, NULL, NULL, "tls_unavailable",
			       "454 4.7.0 TLS not available due to local problem");
		return;
	}
	session_reply(sess, "220 2.0.0 Ready to start TLS");
	/* RFC 3207: forget everything learned before TLS */
	session_forget_helo(sess);
	sess->flags |= SESSION_F_BUSY;
}

/* ------------------------------------------------------------- XCLIENT */

/* May the connected peer (an MTA in front of us) name the client? */
static bool
session_xclient_trusted(const struct session *sess)
{
	const struct smtp_settings *ss = smtp_settings(sess->st->cfg);

	for (size_t i = 0; i < ss->n_xclient_trusted; i++) {
		struct net_cidr c;
		const char *err;
		if (net_cidr_parse(ss->xclient_trusted[i], &c, &err) == 0 &&
		    net_cidr_match(&c, sess->peer_addr))
			return true;
	}
	return false;
}

/* RFC 3461 xtext ("+2B" for '+'), into printable ASCII of at most outsz-1
 * octets; false for anything else. */
static bool
xtext_decode(const char *s, size_t n, char *out, size_t outsz)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '+') {
			unsigned v = 0;
			if (i + 2 >= n)
				return false;
			for (int k = 1; k <= 2; k++) {
				char h = s[i + (size_t)k];
				v <<= 4;
				if (h >= '0' && h <= '9')
					v |= (unsigned)(h - '0');
				else if (h >= 'A' && h <= 'F')
					v |= (unsigned)(h - 'A' + 10);
				else
					return false;
			}
			c = (unsigned char)v;
			i += 2;
		}
		if (c < 0x21 || c > 0x7e || o + 1 >= outsz)
			return false;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return true;
}

/*
 * XCLIENT (Postfix's): an MTA in front of mxguard says who its client is —
 * NAME, ADDR, PORT, PROTO, HELO, LOGIN (DESTADDR and DESTPORT are taken and
 * ignored). Only from xclient_trusted, only outside a transaction. On
 * success the session starts over as if that client had connected: what
 * stages hold for the old identity is given back, the connect phase runs
 * for the new one, and a new 220 greeting follows (the MTA then sends
 * EHLO again).
 */
static void
cmd_xclient(struct session *sess, const char *args, size_t len)
{
	char addr[64] = "", name[256] = "", helo[256] = "", login[256] = "", value[256];
	unsigned port = 0;
	bool have_addr = false, have_port = false, have_name = false, have_helo = false;
	bool have_login = false;
	int esmtp = -1;

	if (!session_xclient_trusted(sess)) {
		session_refuse(sess, true, NULL, NULL, "xclient_denied",
			       "550 5.7.0 Error: insufficient authorization");
		return;
	}
	if (len == 0) {
		session_refuse(sess, true, NULL, NULL, "xclient_syntax",
			       "501 5.5.4 Syntax: XCLIENT attribute=value...");
		return;
	}
	for (size_t i = 0; i < len;) {
		size_t j = i, eq;
		while (j < len && args[j] != ' ')
			j++;
		const char *item = args + i;
		size_t n = j - i;
		const char *e = memchr(item, '=', n);
		i = j;
		while (i < len && args[i] == ' ')
			i++;
		if (n == 0)
			continue;
		if (e == NULL || e == item) {
			session_refuse(sess, true, NULL, NULL, "xclient_syntax",
				       "501 5.5.4 Bad XCLIENT attribute: %.*s", (int)(n > 64 ? 64 : n), item);
			return;
		}
		eq = (size_t)(e - item);
		const char *v = e + 1;
		size_t vn = n - eq - 1;
		bool unavailable = (vn == 13 && strncasecmp(v, "[UNAVAILABLE]", 13) == 0) ||
				   (vn == 13 && strncasecmp(v, "[TEMPUNAVAIL]", 13) == 0);
		if (!unavailable && !xtext_decode(v, vn, value, sizeof(value))) {
			session_refuse(sess, true, NULL, NULL, "xclient_syntax",
				       "501 5.5.4 Bad XCLIENT attribute value: %.*s", (int)(n > 64 ? 64 : n),
				       item);
			return;
		}
		if (unavailable)
			value[0] = '\0';
		if (eq == 4 && strncasecmp(item, "ADDR", 4) == 0) {
			unsigned char bin[16];
			const char *a = value;
			int fam = AF_INET;
			if (strncasecmp(a, "IPV6:", 5) == 0) {
				a += 5;
				fam = AF_INET6;
			}
			if (!unavailable && inet_pton(fam, a, bin) != 1) {
				session_refuse(sess, true, NULL, NULL, "xclient_syntax",
					       "501 5.5.4 Bad XCLIENT ADDR: not a numeric address");
				return;
			}
			if (!unavailable)
				inet_ntop(fam, bin, addr, sizeof(addr));
			have_addr = !unavailable;
		} else if (eq == 4 && strncasecmp(item, "PORT", 4) == 0) {
			char *end;
			long p = strtol(value, &end, 10);
			if (!unavailable && (value[0] == '\0' || *end != '\0' || p < 0 || p > 65535)) {
				session_refuse(sess, true, NULL, NULL, "xclient_syntax",
					       "501 5.5.4 Bad XCLIENT PORT");
				return;
			}
			port = (unsigned)p;
			have_port = !unavailable;
		} else if (eq == 4 && strncasecmp(item, "NAME", 4) == 0) {
			str_copy(name, value, sizeof(name));
			have_name = true;
		} else if (eq == 4 && strncasecmp(item, "HELO", 4) == 0) {
			str_copy(helo, value, sizeof(helo));
			have_helo = true;
		} else if (eq == 5 && strncasecmp(item, "LOGIN", 5) == 0) {
			str_copy(login, value, sizeof(login));
			have_login = true;
		} else if (eq == 5 && strncasecmp(item, "PROTO", 5) == 0) {
			esmtp = strcasecmp(value, "ESMTP") == 0 ? 1 : strcasecmp(value, "SMTP") == 0 ? 0 : -1;
			if (!unavailable && esmtp < 0) {
				session_refuse(sess, true, NULL, NULL, "xclient_syntax",
					       "501 5.5.4 Bad XCLIENT PROTO: SMTP or ESMTP");
				return;
			}
		} else if ((eq == 8 && strncasecmp(item, "DESTADDR", 8) == 0) ||
			   (eq == 8 && strncasecmp(item, "DESTPORT", 8) == 0)) {
			/* where the client connected to the MTA: not used */
		} else {
			session_refuse(sess, true, NULL, NULL, "xclient_syntax",
				       "501 5.5.4 Bad XCLIENT attribute name: %.*s", (int)(eq > 32 ? 32 : eq),
				       item);
			return;
		}
	}
	/* what stages hold for the identity being replaced goes back first */
	if (sess->msg.session_id != NULL) {
		struct daemon_loop *loop = conn_loop(sess->conn);
		const struct stage_env env = {
			.loop_index = daemon_loop_index(loop),
			.base = conn_base(sess->conn),
			.workers = daemon_loop_workers(loop),
		};
		pipeline_session_end(sess->st->pipeline, &env, &sess->msg);
	}
	log_msg(LOG_LEVEL_INFO, "%s smtp xclient peer=%s client=%s port=%u name=%s helo=%s login=%s",
		sess->id, sess->peer_addr, have_addr ? addr : sess->client_addr,
		have_port ? port : sess->client_port, have_name && name[0] ? name : "-",
		have_helo && helo[0] ? helo : "-", have_login && login[0] ? login : "-");
	if (have_addr)
		str_copy(sess->client_addr, addr, sizeof(sess->client_addr));
	if (have_port)
		sess->client_port = port;
	if (have_name)
		str_copy(sess->client_name, name, sizeof(sess->client_name));
	if (have_login)
		str_copy(sess->login, login, sizeof(sess->login));
	session_forget_helo(sess);
	if (have_helo && helo[0] != '\0') {
		str_copy(sess->helo, helo, sizeof(sess->helo));
		sess->state = STATE_HELO;
		if (esmtp == 1)
			sess->flags |= SESSION_F_ESMTP;
	}
	filter_tx_free(&sess->connect_fx);
	sess->connect_fx = filter_tx_new();
	sess->sticky_connect = VERDICT_CONTINUE;
	session_greet(sess);
}

static const struct command commands[] = {
	{ SMTP_VERB_HELO, S_BIT(STATE_CONNECTED) | S_BIT(STATE_HELO) | S_BIT(STATE_MAIL) | S_BIT(STATE_RCPT), true, cmd_helo },
	{ SMTP_VERB_EHLO, S_BIT(STATE_CONNECTED) | S_BIT(STATE_HELO) | S_BIT(STATE_MAIL) | S_BIT(STATE_RCPT), true, cmd_ehlo },
	{ SMTP_VERB_MAIL, S_BIT(STATE_HELO), false, cmd_mail },
	{ SMTP_VERB_RCPT, S_BIT(STATE_MAIL) | S_BIT(STATE_RCPT), false, cmd_rcpt },
	{ SMTP_VERB_DATA, S_BIT(STATE_RCPT), false, cmd_data },
	{ SMTP_VERB_RSET, S_BIT(STATE_CONNECTED) | S_BIT(STATE_HELO) | S_BIT(STATE_MAIL) | S_BIT(STATE_RCPT), true, cmd_rset },
	{ SMTP_VERB_NOOP, S_BIT(STATE_CONNECTED) | S_BIT(STATE_HELO) | S_BIT(STATE_MAIL) | S_BIT(STATE_RCPT), true, cmd_noop },
	{ SMTP_VERB_QUIT, S_BIT(STATE_CONNECTED) | S_BIT(STATE_HELO) | S_BIT(STATE_MAIL) | S_BIT(STATE_RCPT), false, cmd_quit },
	{ SMTP_VERB_HELP, S_BIT(STATE_CONNECTED) | S_BIT(STATE_HELO) | S_BIT(STATE_MAIL) | S_BIT(STATE_RCPT), true, cmd_help },
	{ SMTP_VERB_VRFY, S_BIT(STATE_CONNECTED) | S_BIT(STATE_HELO) | S_BIT(STATE_MAIL) | S_BIT(STATE_RCPT), true, cmd_vrfy },
	{ SMTP_VERB_STARTTLS, S_BIT(STATE_HELO), true, cmd_starttls },
	{ SMTP_VERB_EXPN, ~0u, true, cmd_not_implemented },
	{ SMTP_VERB_AUTH, ~0u, true, cmd_not_implemented },
	{ SMTP_VERB_BDAT, ~0u, true, cmd_not_implemented },
	{ SMTP_VERB_TURN, ~0u, true, cmd_not_implemented },
	{ SMTP_VERB_ETRN, ~0u, true, cmd_not_implemented },
	{ SMTP_VERB_XCLIENT, S_BIT(STATE_CONNECTED) | S_BIT(STATE_HELO), true, cmd_xclient },
};

/* HELP lists what the table implements, so it cannot drift from it:
 * every verb with a real handler, STARTTLS only when it is offered. */
static void
cmd_help(struct session *sess, const char *args, size_t len)
{
	char verbs[256] = "";
	size_t n = 0;

	for (size_t i = 0; i < N_ELEMENTS(commands); i++) {
		const struct command *c = &commands[i];
		if (c->handler == cmd_not_implemented)
			continue;
		if (c->verb == SMTP_VERB_STARTTLS && !session_starttls_offered(sess))
			continue;
		if (c->verb == SMTP_VERB_XCLIENT && !session_xclient_trusted(sess))
			continue;
		n += (size_t)snprintf(verbs + n, sizeof(verbs) - n, " %s", smtp_verb_name(c->verb));
	}
	session_reply(sess, "214 2.0.0 Commands:%s", verbs);
}

static const struct command *
command_find(enum smtp_verb verb)
{
	for (size_t i = 0; i < N_ELEMENTS(commands); i++) {
		if (commands[i].verb == verb)
			return &commands[i];
	}
	return NULL;
}

static void
session_bad_sequence(struct session *sess, enum smtp_verb verb)
{
	const char *why;

	switch (verb) {
	case SMTP_VERB_MAIL:
		why = sess->state == STATE_CONNECTED ? "Error: send HELO/EHLO first"
						     : "Error: nested MAIL command";
		break;
	case SMTP_VERB_RCPT:
		why = "Error: need MAIL command";
		break;
	case SMTP_VERB_DATA:
		why = sess->state == STATE_MAIL ? "Error: need RCPT command" : "Error: need MAIL command";
		break;
	case SMTP_VERB_STARTTLS:
		why = sess->state == STATE_CONNECTED ? "Error: send EHLO first"
						     : "Error: STARTTLS not allowed during a transaction";
		break;
	default:
		why = "Bad sequence of commands";
		break;
	}
	session_refuse(sess, true, NULL, NULL, "bad_sequence", "503 5.5.1 %s", why);
}

static void
session_command(struct session *sess, const char *line, size_t len)
{
	const struct mx_config *cfg = sess->st->cfg;
	struct smtp_command cmd;
	const struct command *c;

	if (log_enabled(LOG_LEVEL_DEBUG))
		log_msg(LOG_LEVEL_DEBUG, "%s smtp command=\"%.*s\"", sess->id, (int)(len > 200 ? 200 : len), line);
	if (smtp_parse_command(line, len, &cmd) < 0) {
		session_refuse(sess, true, NULL, NULL, memchr(line, '\0', len) != NULL ? "nul" : "bad_syntax",
			       "500 5.5.2 Error: bad syntax");
		return;
	}
	c = command_find(cmd.verb);
	if (c == NULL) {
		session_refuse(sess, true, NULL, NULL, "unknown_command", "500 5.5.1 Error: command not recognized");
		return;
	}
	if (c->counts && ++sess->commands > smtp_settings(cfg)->commands_max) {
		session_refuse(sess, false, NULL, NULL, "too_many_commands",
			       "421 4.7.0 %s Error: too many commands", smtp_settings(cfg)->hostname);
		session_close(sess, "too_many_commands");
		return;
	}
	if (!(c->states & S_BIT(sess->state))) {
		session_bad_sequence(sess, cmd.verb);
		return;
	}
	c->handler(sess, cmd.args, cmd.args_len);
}

/* ------------------------------------------------------------ delivery */

/* Recipients named in full on the tx line; the rest are counted, so that
 * a 100-recipient message stays well inside a syslog line. */
#define TX_LOG_RCPTS 10

/*
 * The one line per message. action= says what was done with it (reject
 * and tempfail too, whoever decided), reason= why it was refused or
 * deferred ("-" otherwise), size= the octets the client sent, msgid= its
 * Message-ID header.
 */
static void
tx_log(struct tx *tx, const char *session_id, const char *client, const char *helo,
       const char *result, const char *dsn)
{
	struct timespec now;
	char *stages = filter_tx_format_stages(tx->fx);
	char *hits = filter_tx_format_hits(tx->fx);
	size_t shown = tx->n_rcpts < TX_LOG_RCPTS ? tx->n_rcpts : TX_LOG_RCPTS;
	size_t tolen = 32;
	char *to;
	/* from the transaction's own accumulator: the session may be gone */
	const char *rdns;
	enum rdns_status rdns_status = filter_tx_rdns(tx->fx, &rdns);

	for (size_t i = 0; i < shown; i++)
		tolen += strlen(tx->rcpts[i]) + 3;
	to = xcalloc(1, tolen + 1);
	for (size_t i = 0; i < shown; i++) {
		strcat(to, i == 0 ? "<" : ",<");
		strcat(to, tx->rcpts[i]);
		strcat(to, ">");
	}
	if (shown < tx->n_rcpts)
		snprintf(to + strlen(to), tolen + 1 - strlen(to), ",...(+%zu more)", tx->n_rcpts - shown);
	metrics_add_label(METRIC_SMTP_TRANSACTIONS, action_name(tx->outcome.action), 1);
	metrics_add(METRIC_SMTP_BYTES_RECEIVED, (int64_t)tx->smtp_size);
	clock_gettime(CLOCK_MONOTONIC, &now);
	double delay = (double)(now.tv_sec - tx->start.tv_sec) +
		       (double)(now.tv_nsec - tx->start.tv_nsec) / 1e9;
	log_msg(LOG_LEVEL_INFO,
		"%s smtp tx session=%s client=%s helo=%s from=<%s> to=%s nrcpt=%zu size=%llu "
		"msgid=%s verdict=%s action=%s score=%.1f stages=%s hits=%s result=%s dsn=%s "
		"reason=%s delay=%.3f%s%s%s%s%s%s",
		tx->id, session_id, client, helo[0] ? helo : "-", tx->from, to[0] ? to : "-",
		tx->n_rcpts, (unsigned long long)tx->smtp_size, tx->msgid,
		verdict_name(tx->outcome.verdict), action_name(tx->outcome.action),
		tx->outcome.score, stages && stages[0] ? stages : "-", hits && hits[0] ? hits : "-",
		result, dsn, tx->reason[0] ? tx->reason : "-", delay,
		rdns_status != RDNS_UNKNOWN ? " rdns=" : "",
		rdns_status != RDNS_UNKNOWN ? (rdns[0] != '\0' ? rdns : "-") : "",
		rdns_status != RDNS_UNKNOWN ? " rdns_status=" : "",
		rdns_status != RDNS_UNKNOWN ? rdns_status_name(rdns_status) : "",
		tx->quarantine[0] != '\0' ? " quarantine=" : "", tx->quarantine);
	/* the web admin's recent transactions: the same values as the line */
	txstats_record(&(struct txstats_in){
		.id = tx->id, .client = client, .from = tx->from,
		.rcpts = (const char *const *)tx->rcpts, .n_rcpts = tx->n_rcpts,
		.verdict = verdict_name(tx->outcome.verdict), .action = action_name(tx->outcome.action),
		.score = tx->outcome.score, .hits = hits && hits[0] ? hits : "-", .result = result });
	free(stages);
	free(hits);
	free(to);
}

/* The Message-ID header of the sealed body, for the log: unfolded, only
 * printable non-space ASCII, "-" when there is none. Only the header block
 * is looked at (and at most its first 64 KiB). */
static void
tx_find_msgid(struct tx *tx)
{
	static const char name[] = "Message-ID:";
	const size_t nlen = sizeof(name) - 1;
	size_t len, pos = 0, o = 0;
	const char *s;
	bool in_value = false;

	str_copy(tx->msgid, "-", sizeof(tx->msgid));
	if (tx->body == NULL || (s = msgbody_contents(tx->body, &len)) == NULL)
		return;
	if (len > 65536)
		len = 65536;
	while (pos < len) {
		const char *eol = memchr(s + pos, '\n', len - pos);
		size_t end = eol != NULL ? (size_t)(eol - s) : len, start = pos;

		if (end == pos || (end == pos + 1 && s[pos] == '\r'))
			break; /* the empty line: end of the header block */
		if (in_value && s[pos] != ' ' && s[pos] != '\t')
			break; /* the header ended */
		if (!in_value && end - pos > nlen && strncasecmp(s + pos, name, nlen) == 0) {
			in_value = true;
			start = pos + nlen;
		}
		if (in_value) {
			for (size_t i = start; i < end; i++) {
				unsigned char c = (unsigned char)s[i];
				if (c > 32 && c < 127 && o + 1 < sizeof(tx->msgid))
					tx->msgid[o++] = (char)c;
			}
		}
		pos = end + 1;
	}
	if (o > 0)
		tx->msgid[o] = '\0';
}

static void
session_tx_done_reply(struct session *sess)
{
	sess->state = STATE_HELO;
	sess->transactions++;
	tx_free(&sess->tx);
	session_arm_timeouts(sess);
	/* during shutdown, session_process answers 421 before the next command */
}

/* The backend answered the end of DATA (on this loop, exactly once). The
 * session may have gone meanwhile: the message was then never
 * acknowledged, so the sender retries — a copy already on disk becomes a
 * duplicate, never a loss. */
static void
delivery_done(void *arg, const struct backend_reply *r, const char *detail)
{
	struct tx *tx = arg;
	struct session *sess = handle_lookup(tx->session_handle);
	bool ok = r->code / 100 == 2;
	const char *result = ok ? (tx->outcome.action == ACTION_QUARANTINE ? "quarantined"
								  : "delivered")
				: r->code / 100 == 4 ? "deferred" : "rejected";

	tx->dreply = *r;
	if (!ok)
		tx->quarantine[0] = '\0'; /* not held after all */
	if (!ok) {
		str_copy(tx->reason, r->reason[0] ? r->reason : "delivery_error", sizeof(tx->reason));
		if (detail[0] != '\0')
			log_msg(LOG_LEVEL_ERR, "%s delivery failed: %s", tx->id, detail);
	}
	if (sess == NULL) {
		tx_log(tx, "-", "-", "", ok ? "delivered_unacknowledged" : result, r->enhanced);
		tx_free(&tx);
		return;
	}
	sess->tx = tx;
	sess->flags &= ~SESSION_F_BUSY;
	if (ok && conn_closing(sess->conn)) {
		tx_log(tx, sess->id, sess->client_addr, sess->helo, "delivered_unacknowledged",
		       r->enhanced);
	} else {
		session_reply(sess, "%u %s %s", r->code, r->enhanced, r->text);
		tx_log(tx, sess->id, sess->client_addr, sess->helo, result, r->enhanced);
	}
	session_tx_done_reply(sess);
	session_process(sess);
	conn_settle(sess->conn);
}

/* Received: and the pipeline's headers, common to every copy. */
static char *
session_build_prefix(struct session *sess, struct tx *tx, size_t *len_r)
{
	char date[64];
	time_t now = time(NULL);
	struct tm tm;
	char *buf = NULL;
	size_t len = 0;
	const char *proto;
	const struct filter_header *hdrs;
	size_t n;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		abort(); /* only fails without memory */
	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	if (sess->flags & SESSION_F_ESMTP)
		proto = (sess->flags & SESSION_F_TLS) ? "ESMTPS" : "ESMTP";
	else
		proto = (sess->flags & SESSION_F_TLS) ? "SMTPS" : "SMTP";
	/* "from HELO (RDNS [ADDR])": the client's reverse name when the dnsbl
	 * stage found it forward-confirmed, or the one a trusted MTA named
	 * with XCLIENT NAME, else "unknown" as Postfix says, rather than
	 * repeating the client's own claim where readers expect the DNS; an
	 * IPv6 address is an RFC 5321 address literal. A transaction needs a
	 * successful HELO/EHLO, so the name is never empty. */
	fprintf(f, "Received: from %s (%s [%s%s])\n\tby %s (mxguard) with %s id %s",
		sess->helo[0] != '\0' ? sess->helo : "unknown",
		sess->rdns_status == RDNS_CONFIRMED && sess->rdns[0] != '\0' ? sess->rdns :
		sess->client_name[0] != '\0' ? sess->client_name : "unknown",
		strchr(sess->client_addr, ':') != NULL ? "IPv6:" : "", sess->client_addr,
		smtp_settings(sess->st->cfg)->hostname, proto, tx->id);
	if (tx->n_rcpts == 1)
		fprintf(f, "\n\tfor <%s>", tx->rcpts[0]);
	fprintf(f, "; %s\n", date);
	n = filter_tx_headers(tx->fx, &hdrs);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s: %s\n", hdrs[i].name, hdrs[i].value);
	if (fclose(f) != 0)
		abort();
	*len_r = len;
	return buf;
}

/* Why the message is held, for the quarantine's metadata: the stage whose
 * verdict it was and that stage's last hit ("clamav:CLAMAV_Eicar-..."),
 * or the score threshold. */
static void
session_quarantine_reason(struct session *sess, struct tx *tx, char *out, size_t outsz)
{
	const struct filter_stage_log *log;
	const struct filter_hit *hits;
	size_t n = filter_tx_stage_log(tx->fx, &log);
	size_t nh = filter_tx_hits(tx->fx, &hits);

	for (size_t i = n; i-- > 0;) {
		if (strcmp(log[i].result, "quarantine") != 0)
			continue;
		for (size_t k = nh; k-- > 0;) {
			if (strcmp(hits[k].stage, log[i].stage) == 0) {
				snprintf(out, outsz, "%s:%s", log[i].stage, hits[k].rule);
				return;
			}
		}
		snprintf(out, outsz, "%s", log[i].stage);
		return;
	}
	snprintf(out, outsz, "score>=%.1f", pipeline_settings(sess->st->cfg)->quarantine_score);
}

/* "stage:rule=score,..." for the quarantine's metadata. */
static char *
session_format_hits(const struct filter_tx *fx)
{
	const struct filter_hit *hits;
	size_t n = filter_tx_hits(fx, &hits);
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		abort(); /* only fails without memory */
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s%s:%s=%.1f", i > 0 ? "," : "", hits[i].stage, hits[i].rule,
			hits[i].score);
	if (fclose(f) != 0)
		abort();
	return buf;
}

/* quarantine_to_junk: only when every recipient is a local user's. */
static bool
session_quarantine_to_junk(struct session *sess, const struct tx *tx)
{
	const struct mx_config *cfg = sess->st->cfg;

	if (!backends_settings(cfg)->quarantine_to_junk || tx->n_rcpts == 0)
		return false;
	for (size_t i = 0; i < tx->n_rcpts; i++) {
		const char *at = strrchr(tx->rcpts[i], '@');
		if (at == NULL || !backends_is_local_domain(cfg, at + 1))
			return false;
	}
	return true;
}

static void
session_deliver(struct session *sess)
{
	struct tx *tx = sess->tx;
	enum action action = tx->outcome.action;
	struct backend_message msg = {
		.id = tx->id,
		.from = tx->from,
		.rcpts = tx->brcpts,
		.n_rcpts = tx->n_rcpts,
		.folder = action == ACTION_QUARANTINE ? BACKEND_FOLDER_QUARANTINE :
			  action == ACTION_JUNK ? BACKEND_FOLDER_JUNK : BACKEND_FOLDER_INBOX,
		.body = tx->body,
		/* our authserv-id is the hostname (doc/auth.md) */
		.authserv_id = smtp_settings(sess->st->cfg)->hostname,
	};
	char reason[256];
	char *hits = NULL;
	struct backend_verdict why;
	char *prefix = session_build_prefix(sess, tx, &msg.prefix_len);

	if (action == ACTION_QUARANTINE && session_quarantine_to_junk(sess, tx)) {
		msg.folder = BACKEND_FOLDER_JUNK;
		str_copy(tx->quarantine, "junk", sizeof(tx->quarantine));
	} else if (action == ACTION_QUARANTINE) {
		session_quarantine_reason(sess, tx, reason, sizeof(reason));
		hits = session_format_hits(tx->fx);
		why = (struct backend_verdict){
			.verdict = verdict_name(tx->sticky == VERDICT_QUARANTINE ? VERDICT_QUARANTINE
										  : tx->outcome.verdict),
			.action = action_name(action),
			.score = tx->outcome.score,
			.hits = hits,
			.reason = reason,
		};
		msg.why = &why;
		str_copy(tx->quarantine, tx->id, sizeof(tx->quarantine));
	}
	msg.prefix = prefix;
	/* the delivery owns the tx until delivery_done */
	sess->tx = NULL;
	sess->flags |= SESSION_F_BUSY;
	session_arm_timeouts(sess);
	backend_tx_data(tx->btx, &msg, delivery_done, tx);
	free(hits);
	free(prefix);
}

static void
data_phase_cont(struct session *sess, const struct pipeline_outcome *out)
{
	struct tx *tx = sess->tx;

	tx->outcome = *out;
	if (out->verdict != VERDICT_REJECT && out->verdict != VERDICT_TEMPFAIL) {
		/* verdicts remembered from earlier phases; a hard one at DATA wins */
		switch (tx->sticky) {
		case VERDICT_QUARANTINE:
			tx->outcome.action = ACTION_QUARANTINE;
			break;
		case VERDICT_DISCARD:
			if (out->action != ACTION_QUARANTINE)
				tx->outcome.action = ACTION_DISCARD;
			break;
		case VERDICT_ACCEPT:
			/* accepted outright: the score neither files nor refuses it */
			if (out->verdict == VERDICT_CONTINUE)
				tx->outcome.action = ACTION_DELIVER;
			break;
		default:
			break;
		}
	}
	switch (tx->outcome.action) {
	case ACTION_REJECT:
	case ACTION_TEMPFAIL: {
		const struct filter_result *r = &out->reply;
		bool temp = tx->outcome.action == ACTION_TEMPFAIL;
		unsigned code = r->code != 0 ? r->code : (temp ? 451 : 550);
		const char *enh = r->enhanced[0] ? r->enhanced : (temp ? "4.7.1" : "5.7.1");
		const char *text = r->text[0] ? r->text : (temp ? "Try again later" : "Message rejected");
		char dsn[32];
		if (out->verdict == VERDICT_REJECT || out->verdict == VERDICT_TEMPFAIL)
			session_stage_reason(tx->fx, PHASE_DATA, tx->reason, sizeof(tx->reason));
		else
			str_copy(tx->reason, "score", sizeof(tx->reason));
		session_reply(sess, "%u %s %s", code, enh, text);
		snprintf(dsn, sizeof(dsn), "%s", enh);
		tx_log(tx, sess->id, sess->client_addr, sess->helo, temp ? "tempfailed" : "rejected", dsn);
		session_tx_done_reply(sess);
		return;
	}
	case ACTION_DISCARD:
		session_reply(sess, "250 2.0.0 Ok: queued as %s", tx->id);
		tx_log(tx, sess->id, sess->client_addr, sess->helo, "discarded", "2.0.0");
		session_tx_done_reply(sess);
		return;
	default:
		session_deliver(sess);
		return;
	}
}

/* Refuse the message at the end of DATA before any stage sees it. */
static void
session_data_refuse(struct session *sess, bool temp, const char *reason, const char *dsn,
		    const char *reply)
{
	struct tx *tx = sess->tx;

	session_reply(sess, "%s", reply);
	tx->outcome.action = temp ? ACTION_TEMPFAIL : ACTION_REJECT;
	str_copy(tx->reason, reason, sizeof(tx->reason));
	tx_log(tx, sess->id, sess->client_addr, sess->helo, temp ? "deferred" : "rejected", dsn);
	session_tx_done_reply(sess);
}

static void
session_data_end(struct session *sess)
{
	const struct mx_config *cfg = sess->st->cfg;
	struct tx *tx = sess->tx;
	char reply[128];

	if (tx->body_errno == 0 && msgbody_seal(tx->body) < 0)
		tx->body_errno = errno ? errno : EIO;
	if (tx->body_errno == 0)
		tx_find_msgid(tx);
	if (tx->too_big) {
		session_data_refuse(sess, false, "size", "5.3.4",
				    "552 5.3.4 Message size exceeds fixed maximum message size");
	} else if (tx->line_too_long) {
		snprintf(reply, sizeof(reply), "550 5.6.0 Message line too long (limit %ld octets)",
			 smtp_settings(cfg)->data_line_max);
		session_data_refuse(sess, false, "line_too_long", "5.6.0", reply);
	} else if (tx->body_errno != 0) {
		errno = tx->body_errno;
		log_errno(LOG_LEVEL_ERR, "%s spool write failed", tx->id);
		if (tx->body_errno == ENOSPC || tx->body_errno == EDQUOT)
			session_data_refuse(sess, true, "spool_error", "4.3.1",
					    "452 4.3.1 Insufficient system storage");
		else
			session_data_refuse(sess, true, "spool_error", "4.3.0",
					    "451 4.3.0 Error writing message to spool; try again later");
	} else if (tx->dr.bare_lf > 0 && smtp_settings(cfg)->bare_lf == BARE_LF_REJECT) {
		session_data_refuse(sess, false, "bare_lf", "5.6.0",
				    "550 5.6.0 Message contains bare LF; use CRLF line endings");
	} else {
		tx->msg.body = tx->body;
		tx->msg.rcpt = NULL;
		session_run_phase(sess, PHASE_DATA, &tx->msg, tx->fx, data_phase_cont);
	}
}

/* Feed buffered DATA input through the dot reader; true when the message
 * ended. Size and line length are measured on the octets as sent (RFC
 * 1870: CRLF is two octets, a stuffed dot is one) — the stored copy has
 * LF line ends and is smaller. Once a limit is passed the rest is read
 * and dropped, so memory and spool stay bounded. */
static bool
session_read_data(struct session *sess, struct evbuffer *in)
{
	struct tx *tx = sess->tx;
	const struct mx_config *cfg = sess->st->cfg;
	char out[DATA_CHUNK + 1];

	while (evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec vec;
		size_t consumed, out_len;
		bool end;

		if (evbuffer_peek(in, DATA_CHUNK, NULL, &vec, 1) < 1)
			break;
		if (vec.iov_len > DATA_CHUNK)
			vec.iov_len = DATA_CHUNK;
		end = dot_reader_feed(&tx->dr, vec.iov_base, vec.iov_len, &consumed, out, &out_len);
		evbuffer_drain(in, consumed);
		tx->smtp_size += consumed;
		if (end)
			tx->smtp_size -= 3; /* the ".\r\n" of the end marker is not the message's */
		/* before the end, up to 2 octets consumed may be a held ".\r" */
		if (tx->smtp_size > (uint64_t)backends_settings(cfg)->message_size_max + (end ? 0 : 2))
			tx->too_big = true;
		if (tx->dr.longest_line > (uint64_t)smtp_settings(cfg)->data_line_max)
			tx->line_too_long = true;
		if (!tx->too_big && !tx->line_too_long && tx->body_errno == 0 && out_len > 0 &&
		    msgbody_append(tx->body, out, out_len) < 0)
			tx->body_errno = errno ? errno : EIO;
		if (end)
			return true;
	}
	return false;
}

/* ------------------------------------------------------------- input */

static void
session_process(struct session *sess)
{
	while (!(sess->flags & SESSION_F_BUSY) && !conn_closing(sess->conn)) {
		/* not cached across commands: MAIL may switch to a reloaded state */
		const struct mx_config *cfg = sess->st->cfg;
		char *line;
		size_t len;

		if ((sess->flags & SESSION_F_SHUTDOWN) && sess->tx == NULL) {
			/* stopping: no new transaction starts */
			session_reply(sess, "421 4.3.2 %s Service shutting down", smtp_settings(cfg)->hostname);
			session_close(sess, "shutdown");
			break;
		}
		if (conn_output_len(sess->conn) > SESSION_OUTPUT_MAX)
			break; /* resumed when the output drains */
		if (sess->state == STATE_DATA) {
			if (!session_read_data(sess, conn_input(sess->conn)))
				break;
			session_data_end(sess);
			continue;
		}
		conn_set_lines(sess->conn, (size_t)smtp_settings(cfg)->line_max, false);
		enum conn_line got = conn_read_line(sess->conn, &line, &len);
		if (got == CONN_LINE_NONE)
			break;
		if (got == CONN_LINE_OVERFLOW) {
			session_refuse(sess, false, NULL, NULL, "line_too_long",
				       "500 5.5.6 Error: line too long");
			session_close(sess, "line_too_long");
			break;
		}
		if (!(sess->flags & SESSION_F_FIRST_CMD)) {
			/* timeout_greeting covers only the wait for the first command */
			sess->flags |= SESSION_F_FIRST_CMD;
			session_arm_timeouts(sess);
		}
		if (got == CONN_LINE_TOO_LONG) {
			session_refuse(sess, true, NULL, NULL, "line_too_long", "500 5.5.6 Error: line too long");
			continue;
		}
		session_command(sess, line, len);
		free(line);
	}
	/* a half-closed client gets the answers to everything it sent, then
	 * the close (a pending phase or delivery calls back in here) */
	if (conn_eof(sess->conn) && !(sess->flags & SESSION_F_BUSY) && !conn_closing(sess->conn) &&
	    conn_output_len(sess->conn) <= SESSION_OUTPUT_MAX)
		session_close(sess, "eof");
}

/* ------------------------------------------------- connection handler */

static void
session_ready(void *ctx)
{
	session_process(ctx);
}

static void
session_tls_up(void *ctx)
{
	struct session *sess = ctx;

	/* after STARTTLS: the dialogue starts again, inside TLS */
	sess->flags |= SESSION_F_TLS;
	sess->flags &= ~SESSION_F_BUSY;
	session_arm_timeouts(sess);
	session_process(sess);
}

static void
session_timeout(void *ctx)
{
	struct session *sess = ctx;

	session_reply(sess, "421 4.4.2 %s Error: timeout exceeded",
		      smtp_settings(sess->st->cfg)->hostname);
	session_close(sess, "timeout");
}

static void
session_eof(void *ctx)
{
	/* half-close: answer what was sent, finish pending work, then close */
	session_process(ctx);
}

/* The server is stopping: idle sessions get 421 now, busy ones finish
 * their transaction first (session_process answers 421 after it). */
static void
session_shutdown(void *ctx)
{
	struct session *sess = ctx;

	sess->flags |= SESSION_F_SHUTDOWN;
	if (sess->tx == NULL && !(sess->flags & SESSION_F_BUSY)) {
		session_reply(sess, "421 4.3.2 %s Service shutting down", smtp_settings(sess->st->cfg)->hostname);
		session_close(sess, "shutdown");
	}
}

/* The connection is going away: free everything of the session. A pending
 * delivery finds no session under its handle and cleans up itself
 * (unacknowledged); a pending pipeline run is cancelled here. */
static void
session_gone(void *ctx, const char *reason)
{
	struct session *sess = ctx;

	if (sess->run != NULL)
		pipeline_run_cancel(&sess->run);
	/* the connect phase ran (or began): stages let go of what they hold
	 * for the session, if session_close did not tell them already */
	session_end_stages(sess);
	if (sess->tx != NULL && sess->tx->body != NULL && sess->state == STATE_DATA)
		log_msg(LOG_LEVEL_INFO, "%s smtp lost connection during DATA session=%s client=%s "
			"helo=%s from=<%s> nrcpt=%zu octets=%llu", sess->tx->id, sess->id,
			sess->client_addr, sess->helo[0] != '\0' ? sess->helo : "-", sess->tx->from,
			sess->tx->n_rcpts, (unsigned long long)sess->tx->smtp_size);
	tx_free(&sess->tx);
	session_rcpt_abandon(sess); /* gone while the RCPT phase ran */
	filter_tx_free(&sess->fx);
	filter_tx_free(&sess->connect_fx);
	filter_tx_free(&sess->prev_helo.fx);
	handle_unregister(sess->handle);
	log_msg(LOG_LEVEL_INFO, "%s smtp disconnected client=%s transactions=%ld reason=%s",
		sess->id, sess->client_addr, sess->transactions, reason);
	free(sess);
}

static const struct conn_handler session_handler = {
	.ready = session_ready,
	.tls_up = session_tls_up,
	.timeout = session_timeout,
	.eof = session_eof,
	.shutdown = session_shutdown,
	.gone = session_gone,
};

/* ----------------------------------------------------------- greeting */

static void
session_greet_cont(struct session *sess, const struct pipeline_outcome *out)
{
	const struct mx_config *cfg = sess->st->cfg;

	if (out->verdict == VERDICT_REJECT || out->verdict == VERDICT_TEMPFAIL) {
		struct pipeline_outcome o = *out;
		/* RFC 5321 3.1: refuse with 554 (or 421) instead of the greeting */
		if (o.reply.code == 0 || o.reply.code / 100 == 5)
			o.reply.code = o.verdict == VERDICT_REJECT ? 554 : 421;
		else
			o.reply.code = 421;
		session_reply_verdict(sess, &o, sess->connect_fx, PHASE_CONNECT, NULL);
		session_close(sess, "connect_rejected");
		return;
	}
	verdict_stick(&sess->sticky_connect, out->verdict);
	{
		const char *rdns;
		sess->rdns_status = filter_tx_rdns(sess->connect_fx, &rdns);
		str_copy(sess->rdns, rdns, sizeof(sess->rdns));
	}
	filter_tx_free(&sess->fx);
	sess->fx = filter_tx_clone(sess->connect_fx);
	session_reply(sess, "220 %s ESMTP mxguard", smtp_settings(cfg)->hostname);
}

/* The connect phase, then the greeting. */
static void
session_greet(struct session *sess)
{
	session_fill_msg(sess, &sess->msg);
	session_run_phase(sess, PHASE_CONNECT, &sess->msg, sess->connect_fx, session_greet_cont);
}

/* The SMTP row of the service table: a new connection (inside TLS already
 * on an implicit-TLS listener). */
void
smtp_service_accept(struct conn *conn, const char *refusal)
{
	struct session *sess = xcalloc(1, sizeof(*sess));

	sess->conn = conn;
	sess->st = conn_state(conn);
	str_copy(sess->id, conn_id(conn), sizeof(sess->id));
	str_copy(sess->client_addr, conn_addr(conn), sizeof(sess->client_addr));
	str_copy(sess->peer_addr, conn_addr(conn), sizeof(sess->peer_addr));
	sess->client_port = conn_port(conn);
	if (conn_tls(conn))
		sess->flags |= SESSION_F_TLS;
	sess->handle = handle_register(sess);
	sess->connect_fx = filter_tx_new();
	sess->fx = filter_tx_new();
	conn_attach(conn, &session_handler, sess);
	session_arm_timeouts(sess);
	if (refusal != NULL) {
		const char *host = smtp_settings(sess->st->cfg)->hostname;
		if (strcmp(refusal, DAEMON_REFUSAL_SHUTDOWN) == 0) {
			session_reply(sess, "421 4.3.2 %s Service shutting down", host);
			session_close(sess, "shutdown");
		} else {
			session_reply(sess, "421 4.7.0 %s %s", host, refusal);
			session_close(sess, "too_many_connections");
		}
		return;
	}
	session_greet(sess);
}
