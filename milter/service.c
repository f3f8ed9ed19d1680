/*
 * service.c — the milter service: libmilter's callbacks on the pipeline.
 *
 * Threads. libmilter's listener runs on a thread of ours (the milter
 * thread) and starts one thread per MTA connection; every callback of a
 * connection runs on that connection's thread, one at a time. A callback
 * that runs a phase (connect, helo, envfrom, envrcpt, eom) fills the
 * session's filter_msg, posts the phase to the session's loop
 * (daemon_post) and waits on its condition variable; on the loop the
 * phase runs like an SMTP session's (pipeline_run: now, or later from the
 * loop when DNS, Redis or the scan lane answer) and its outcome is handed
 * back under the session's mutex. Between phases nothing of the session
 * is touched by the loop, so header and body callbacks build the message
 * (msgbody: memory, spilled to spool_dir past spill_threshold) on the
 * libmilter thread, which may block on the spool file — it is not a loop.
 *
 * A session picks its loop round robin at connect and takes a hold of that
 * loop's current state there (daemon_hold): the pipeline of that state
 * serves the whole MTA connection, is kept started on that loop until the
 * close callback releases it on the same loop, and the daemon's shutdown
 * waits for the hold like for a connection.
 *
 * Signals: libmilter's smfi_main() would start a thread that sigwaits
 * SIGHUP, SIGTERM and SIGINT and stops the milter on any of them. The
 * daemon's main thread handles those signals (SIGHUP reloads), and a
 * process-directed signal goes to one thread only, so the two would race:
 * a SIGHUP could stop the milter instead of reloading. sigwait() takes a
 * signal even in a thread that blocks it, so masks do not help. This file
 * therefore runs the two steps of smfi_main() that are not the signal
 * thread: smfi_opensocket() (public) at start, on the main thread, so a
 * bind error stops the start-up, and libmilter's listener loop,
 * mi_listener(), on the milter thread. mi_listener is exported by
 * libmilter (every release since 8.12 with the same arguments; configure
 * checks it is there) but not declared in mfapi.h, so it is declared here.
 * smfi_stop() ends the listener as documented.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libmilter/mfapi.h>

#include "milter/milter.h"
#include "lib/txstats.h"

/* libmilter's listener (listener.c), what smfi_main() runs after it has
 * started its signal thread. */
extern int mi_listener(char *conn, int dbg, smfiDesc_ptr smfi, time_t timeout, int backlog);

#define MILTER_NAME "mxguard"
#define MILTER_BACKLOG 128
/* Bounds on what one transaction keeps (the MTA enforces its own too). */
#define MILTER_RCPTS_MAX 1000
#define MILTER_HEADERS_MAX 10000

static struct {
	struct daemon *core;
	milter_env_fn *env_of;
	char spec[300];
	pthread_t thread;
	bool started;
	atomic_bool stopping;
	atomic_uint next_loop;
} M;

/* A header field we must delete: its name and its 1-based index among
 * the fields of that name (smfi_chgheader). */
struct forged {
	char *name;
	int index;
};

enum req { REQ_PHASE, REQ_END };

struct msession {
	char id[MX_ID_LEN];
	unsigned loop_index;
	/* loop side: the held state (from the first phase to REQ_END) */
	struct daemon_hold *hold;
	struct milter_env env;
	bool held;
	/* the MTA's view of the client (macros, else the callback's) */
	char client_addr[64];
	unsigned client_port;
	char client_name[256];
	char helo[256];
	char rdns[256];
	enum rdns_status rdns_status;
	struct filter_tx *connect_fx; /* connect-phase results */
	struct filter_tx *fx;         /* + the current HELO's */
	enum verdict sticky_session;  /* ACCEPT/DISCARD/QUARANTINE before MAIL */
	/* the transaction (envfrom to eom/abort) */
	bool in_tx;
	char txid[MX_ID_LEN];
	char queue_id[64];
	char auth[256];
	char *from;
	char **rcpts;
	size_t n_rcpts;
	struct filter_tx *tx_fx;
	enum verdict sticky;
	struct msgbody *body;
	int body_errno;
	bool too_big;
	bool too_many_headers; /* past MILTER_HEADERS_MAX: refused at eom */
	uint64_t size;
	uint64_t declared_size;
	char **hnames; /* every header name so far, for the indexes */
	size_t n_hnames;
	struct forged *forged;
	size_t n_forged;
	struct filter_msg msg;
	/* the request in flight: written by the libmilter thread before the
	 * post, completed by the loop under mu */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done, failed;
	enum req req;
	enum phase phase;
	struct filter_tx *run_fx;
	struct pipeline_run *run;
	struct pipeline_outcome out;
};

/* ------------------------------------------------------ the loop side */

static void
ms_complete(struct msession *ms, const struct pipeline_outcome *out, bool failed)
{
	pthread_mutex_lock(&ms->mu);
	if (out != NULL)
		ms->out = *out;
	ms->failed = failed;
	ms->done = true;
	pthread_cond_signal(&ms->cv);
	pthread_mutex_unlock(&ms->mu);
}

static void
ms_phase_done(void *ctx, const struct pipeline_outcome *out)
{
	struct msession *ms = ctx;

	ms->run = NULL;
	ms_complete(ms, out, false);
}

static void
ms_loop(struct daemon_loop *loop, void *arg)
{
	struct msession *ms = arg;
	struct pipeline_outcome out;
	const struct stage_env env = {
		.loop_index = daemon_loop_index(loop),
		.base = daemon_loop_base(loop),
		.workers = daemon_loop_workers(loop),
	};

	if (ms->req == REQ_END) {
		if (ms->held) {
			pipeline_session_end(ms->env.pipeline, &env, &ms->msg);
			daemon_release(loop, &ms->hold);
		}
		ms_complete(ms, NULL, false);
		return;
	}
	if (!ms->held) {
		/* the first phase: this session's state, for its whole life */
		ms->hold = daemon_hold(loop);
		if (ms->hold == NULL) {
			ms_complete(ms, NULL, true); /* the loop is shutting down */
			return;
		}
		ms->held = true;
		M.env_of(daemon_hold_state(ms->hold), &ms->env);
		ms->msg.hostname = ms->env.hostname;
	}
	if (!pipeline_has_phase(ms->env.pipeline, ms->phase) && ms->phase != PHASE_DATA) {
		memset(&out, 0, sizeof(out));
		ms_complete(ms, &out, false);
		return;
	}
	if (pipeline_run(ms->env.pipeline, ms->phase, &env, &ms->msg, ms->run_fx, ms_phase_done, ms,
			 &out, &ms->run) == PIPELINE_DONE)
		ms_complete(ms, &out, false);
}

/* ------------------------------------------------- the libmilter side */

/* Hand a request to the session's loop and wait for it. false: it could
 * not run (the daemon is stopping). */
static bool
ms_request(struct msession *ms, enum req req, enum phase phase, struct filter_tx *fx,
	   struct pipeline_outcome *out_r)
{
	ms->req = req;
	ms->phase = phase;
	ms->run_fx = fx;
	ms->done = ms->failed = false;
	if (daemon_post(M.core, ms->loop_index, ms_loop, ms) < 0)
		return false;
	pthread_mutex_lock(&ms->mu);
	while (!ms->done)
		pthread_cond_wait(&ms->cv, &ms->mu);
	pthread_mutex_unlock(&ms->mu);
	if (ms->failed)
		return false;
	if (out_r != NULL)
		*out_r = ms->out;
	return true;
}

/* smfi_setreply refuses CR and LF; keep the text one printable line. */
static void
reply_text(const char *in, char *out, size_t outsz)
{
	size_t o = 0;

	for (; *in != '\0' && o + 1 < outsz; in++)
		out[o++] = (*in == '\r' || *in == '\n') ? ' ' : *in;
	out[o] = '\0';
}

/* Answer a refusal with our code, enhanced code and text. */
static sfsistat
ms_refuse(SMFICTX *ctx, bool temp, unsigned code, const char *enh, const char *text)
{
	char c[16], t[512];

	if (code == 0 || code / 100 != (temp ? 4u : 5u))
		code = temp ? 451 : 550;
	snprintf(c, sizeof(c), "%u", code);
	reply_text(text, t, sizeof(t));
	if (smfi_setreply(ctx, c, (char *)enh, t) != MI_SUCCESS)
		(void)smfi_setreply(ctx, c, NULL, t); /* an enhanced code libmilter did not take */
	return temp ? SMFIS_TEMPFAIL : SMFIS_REJECT;
}

/* The daemon is stopping (or a loop could not take the session). */
static sfsistat
ms_unavailable(SMFICTX *ctx)
{
	return ms_refuse(ctx, true, 421, "4.3.2", "Service shutting down; try again later");
}

/* The strongest soft verdict wins (as in the SMTP session). */
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

/* A phase's outcome before the message: refusals now, soft verdicts
 * remembered for the end of the message. */
static sfsistat
ms_phase_reply(struct msession *ms, SMFICTX *ctx, const struct pipeline_outcome *out,
	       enum verdict *sticky, const char *what)
{
	const struct filter_result *r = &out->reply;

	switch (out->verdict) {
	case VERDICT_REJECT:
	case VERDICT_TEMPFAIL: {
		bool temp = out->verdict == VERDICT_TEMPFAIL;
		const char *enh = r->enhanced[0] ? r->enhanced : (temp ? "4.7.1" : "5.7.1");
		const char *text = r->text[0] ? r->text : (temp ? "Try again later" : "Rejected");
		log_msg(LOG_LEVEL_INFO, "%s milter reject client=%s helo=%s phase=%s reply=\"%u %s %s\"",
			ms->id, ms->client_addr, ms->helo[0] ? ms->helo : "-", what,
			r->code ? r->code : (temp ? 451 : 550), enh, text);
		return ms_refuse(ctx, temp, r->code, enh, text);
	}
	default:
		verdict_stick(sticky, out->verdict);
		return SMFIS_CONTINUE;
	}
}

static void
ms_tx_end(struct msession *ms)
{
	free(ms->from);
	ms->from = NULL;
	for (size_t i = 0; i < ms->n_rcpts; i++)
		free(ms->rcpts[i]);
	free(ms->rcpts);
	ms->rcpts = NULL;
	ms->n_rcpts = 0;
	for (size_t i = 0; i < ms->n_hnames; i++)
		free(ms->hnames[i]);
	free(ms->hnames);
	ms->hnames = NULL;
	ms->n_hnames = 0;
	for (size_t i = 0; i < ms->n_forged; i++)
		free(ms->forged[i].name);
	free(ms->forged);
	ms->forged = NULL;
	ms->n_forged = 0;
	filter_tx_free(&ms->tx_fx);
	msgbody_free(&ms->body);
	ms->body_errno = 0;
	ms->too_big = false;
	ms->too_many_headers = false;
	ms->size = ms->declared_size = 0;
	ms->queue_id[0] = ms->auth[0] = '\0';
	ms->in_tx = false;
}

static void
ms_free(struct msession *ms)
{
	ms_tx_end(ms);
	filter_tx_free(&ms->fx);
	filter_tx_free(&ms->connect_fx);
	pthread_mutex_destroy(&ms->mu);
	pthread_cond_destroy(&ms->cv);
	free(ms);
}

/* Refresh what the stages see from the session and transaction. */
static void
ms_fill_msg(struct msession *ms)
{
	const char *hostname = ms->msg.hostname;

	memset(&ms->msg, 0, sizeof(ms->msg));
	ms->msg.hostname = hostname;
	ms->msg.session_id = ms->id;
	ms->msg.client_addr = ms->client_addr;
	ms->msg.client_port = ms->client_port;
	ms->msg.client_rdns = ms->rdns;
	ms->msg.client_rdns_status = ms->rdns_status;
	ms->msg.helo = ms->helo[0] ? ms->helo : NULL;
	if (ms->in_tx) {
		ms->msg.txid = ms->txid;
		ms->msg.mail_from = ms->from;
		ms->msg.rcpts = (const char *const *)ms->rcpts;
		ms->msg.n_rcpts = ms->n_rcpts;
		ms->msg.declared_size = ms->declared_size;
	}
}

static void
macro_copy(SMFICTX *ctx, const char *name, char *out, size_t outsz)
{
	const char *v = smfi_getsymval(ctx, (char *)name);

	if (v != NULL)
		str_copy(out, v, outsz);
}

/* "<a@b>" -> "a@b" (the MTA hands the envelope addresses with brackets). */
static char *
strip_brackets(const char *s)
{
	size_t n = strlen(s);

	if (n >= 2 && s[0] == '<' && s[n - 1] == '>')
		return xstrndup(s + 1, n - 2);
	return xstrdup(s);
}

/* The stages take numeric address text: an MTA's "IPv6:" prefix goes, and
 * anything else that is not an address is dropped (the socket's address
 * is used then). */
static void
ms_numeric_addr(char *addr)
{
	unsigned char bin[16];

	if (strncasecmp(addr, "IPv6:", 5) == 0)
		memmove(addr, addr + 5, strlen(addr + 5) + 1);
	if (addr[0] != '\0' && inet_pton(AF_INET, addr, bin) != 1 &&
	    inet_pton(AF_INET6, addr, bin) != 1)
		addr[0] = '\0';
}

static struct msession *
ms_of(SMFICTX *ctx)
{
	return smfi_getpriv(ctx);
}

/* ------------------------------------------------------------ callbacks */

static sfsistat
cb_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
	     unsigned long f3, unsigned long *pf0, unsigned long *pf1, unsigned long *pf2,
	     unsigned long *pf3)
{
	(void)f1;
	(void)f2;
	(void)f3;
	/* add and delete headers, quarantine; every step, each answered */
	*pf0 = f0 & (SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE | SMFIF_SETSYMLIST);
	*pf1 = 0;
	*pf2 = *pf3 = 0;
	/* the macros we use instead of guesses (Postfix: milter_*_macros
	 * must send them too; its defaults do) */
	if (f0 & SMFIF_SETSYMLIST) {
		(void)smfi_setsymlist(ctx, SMFIM_CONNECT, "{client_addr} {client_name} {client_port} j");
		(void)smfi_setsymlist(ctx, SMFIM_HELO, "{tls_version}");
		(void)smfi_setsymlist(ctx, SMFIM_ENVFROM, "i {auth_authen}");
		(void)smfi_setsymlist(ctx, SMFIM_EOM, "i");
	}
	return SMFIS_CONTINUE;
}

static sfsistat
cb_connect(SMFICTX *ctx, char *hostname, _SOCK_ADDR *sa)
{
	struct msession *ms = xcalloc(1, sizeof(*ms));
	struct pipeline_outcome out;
	char port[16] = "";

	pthread_mutex_init(&ms->mu, NULL);
	pthread_cond_init(&ms->cv, NULL);
	id_new(ms->id);
	ms->loop_index = atomic_fetch_add(&M.next_loop, 1) % daemon_n_loops(M.core);
	smfi_setpriv(ctx, ms);
	/* the client as the MTA saw it: {client_addr}, else the address the
	 * callback got; {client_name} (Postfix: the verified name or
	 * "unknown"), else the callback's host name */
	macro_copy(ctx, "{client_addr}", ms->client_addr, sizeof(ms->client_addr));
	ms_numeric_addr(ms->client_addr);
	if (ms->client_addr[0] == '\0' && sa != NULL) {
		if (sa->sa_family == AF_INET) {
			const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
			inet_ntop(AF_INET, &in->sin_addr, ms->client_addr, sizeof(ms->client_addr));
			ms->client_port = ntohs(in->sin_port);
		} else if (sa->sa_family == AF_INET6) {
			const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
			inet_ntop(AF_INET6, &in6->sin6_addr, ms->client_addr, sizeof(ms->client_addr));
			ms->client_port = ntohs(in6->sin6_port);
		}
	}
	if (ms->client_addr[0] == '\0')
		str_copy(ms->client_addr, "0.0.0.0", sizeof(ms->client_addr)); /* a local submission */
	macro_copy(ctx, "{client_port}", port, sizeof(port));
	if (port[0] != '\0')
		ms->client_port = (unsigned)strtoul(port, NULL, 10);
	macro_copy(ctx, "{client_name}", ms->client_name, sizeof(ms->client_name));
	if (ms->client_name[0] == '\0' && hostname != NULL)
		str_copy(ms->client_name, hostname, sizeof(ms->client_name));
	ms->connect_fx = filter_tx_new();
	log_msg(LOG_LEVEL_INFO, "%s milter connect client=%s port=%u name=%s", ms->id,
		ms->client_addr, ms->client_port, ms->client_name[0] ? ms->client_name : "-");
	if (atomic_load(&M.stopping))
		return ms_unavailable(ctx);
	ms_fill_msg(ms);
	if (!ms_request(ms, REQ_PHASE, PHASE_CONNECT, ms->connect_fx, &out))
		return ms_unavailable(ctx);
	/* the client's reverse DNS, as the dnsbl stage found it */
	const char *rdns;
	ms->rdns_status = filter_tx_rdns(ms->connect_fx, &rdns);
	str_copy(ms->rdns, rdns != NULL ? rdns : "", sizeof(ms->rdns));
	ms->fx = filter_tx_clone(ms->connect_fx);
	return ms_phase_reply(ms, ctx, &out, &ms->sticky_session, "connect");
}

static sfsistat
cb_helo(SMFICTX *ctx, char *helo)
{
	struct msession *ms = ms_of(ctx);
	struct pipeline_outcome out;

	if (ms == NULL || !ms->held)
		return SMFIS_TEMPFAIL;
	str_copy(ms->helo, helo != NULL ? helo : "", sizeof(ms->helo));
	/* a new HELO: the connect results plus this one's */
	filter_tx_free(&ms->fx);
	ms->fx = filter_tx_clone(ms->connect_fx);
	ms_fill_msg(ms);
	if (!ms_request(ms, REQ_PHASE, PHASE_HELO, ms->fx, &out))
		return ms_unavailable(ctx);
	return ms_phase_reply(ms, ctx, &out, &ms->sticky_session, "helo");
}

static sfsistat
cb_envfrom(SMFICTX *ctx, char **argv)
{
	struct msession *ms = ms_of(ctx);
	struct pipeline_outcome out;

	if (ms == NULL || !ms->held)
		return SMFIS_TEMPFAIL;
	if (atomic_load(&M.stopping))
		return ms_unavailable(ctx);
	ms_tx_end(ms);
	ms->in_tx = true;
	id_new(ms->txid);
	ms->from = strip_brackets(argv[0] != NULL ? argv[0] : "");
	for (size_t i = 1; argv[i] != NULL; i++) {
		if (strncasecmp(argv[i], "SIZE=", 5) == 0)
			ms->declared_size = strtoull(argv[i] + 5, NULL, 10);
	}
	macro_copy(ctx, "i", ms->queue_id, sizeof(ms->queue_id));
	macro_copy(ctx, "{auth_authen}", ms->auth, sizeof(ms->auth));
	ms->tx_fx = filter_tx_clone(ms->fx != NULL ? ms->fx : ms->connect_fx);
	ms->sticky = ms->sticky_session;
	ms_fill_msg(ms);
	if (!ms_request(ms, REQ_PHASE, PHASE_MAIL, ms->tx_fx, &out))
		return ms_unavailable(ctx);
	return ms_phase_reply(ms, ctx, &out, &ms->sticky, "mail");
}

static sfsistat
cb_envrcpt(SMFICTX *ctx, char **argv)
{
	struct msession *ms = ms_of(ctx);
	struct pipeline_outcome out;
	sfsistat r;
	char *rcpt;

	if (ms == NULL || !ms->in_tx)
		return SMFIS_TEMPFAIL;
	if (ms->n_rcpts >= MILTER_RCPTS_MAX)
		return ms_refuse(ctx, true, 452, "4.5.3", "Too many recipients");
	rcpt = strip_brackets(argv[0] != NULL ? argv[0] : "");
	ms_fill_msg(ms);
	ms->msg.rcpt = rcpt;
	if (!ms_request(ms, REQ_PHASE, PHASE_RCPT, ms->tx_fx, &out)) {
		free(rcpt);
		return ms_unavailable(ctx);
	}
	r = ms_phase_reply(ms, ctx, &out, &ms->sticky, "rcpt");
	if (r != SMFIS_CONTINUE) {
		free(rcpt);
		return r;
	}
	ms->rcpts = xrealloc(ms->rcpts, (ms->n_rcpts + 1) * sizeof(*ms->rcpts));
	ms->rcpts[ms->n_rcpts++] = rcpt;
	return SMFIS_CONTINUE;
}

/* Append to the body, up to the size limit (then only counted). */
static void
ms_append(struct msession *ms, const void *data, size_t len)
{
	ms->size += len;
	if (ms->env.message_size_max > 0 && ms->size > ms->env.message_size_max)
		ms->too_big = true;
	if (ms->too_big || ms->body_errno != 0)
		return;
	if (ms->body == NULL)
		ms->body = msgbody_new(ms->env.spool_dir, ms->env.spill_threshold);
	if (msgbody_append(ms->body, data, len) < 0)
		ms->body_errno = errno ? errno : EIO;
}

/* An X-Spam-* field, or an Authentication-Results that claims our
 * authserv-id: a sender may not bring our verdict (lib/headers.c). */
static bool
ms_is_forged(const struct msession *ms, const char *field, size_t len)
{
	size_t plen = strlen(MSG_FORGED_PREFIX);

	return strncasecmp(field, MSG_FORGED_PREFIX, plen) == 0 ||
	       msg_authres_id_is(field, len, ms->env.hostname);
}

static sfsistat
cb_header(SMFICTX *ctx, char *name, char *value)
{
	struct msession *ms = ms_of(ctx);
	char *field;
	size_t len;
	int index = 1;

	if (ms == NULL || !ms->in_tx)
		return SMFIS_TEMPFAIL;
	if (name == NULL)
		return SMFIS_CONTINUE;
	if (value == NULL)
		value = "";
	field = milter_header_field(name, value, &len);
	ms_append(ms, field, len);
	if (ms->n_hnames >= MILTER_HEADERS_MAX) {
		ms->too_many_headers = true; /* a forged one could not be removed */
	} else {
		for (size_t i = 0; i < ms->n_hnames; i++)
			index += strcasecmp(ms->hnames[i], name) == 0;
		ms->hnames = xrealloc(ms->hnames, (ms->n_hnames + 1) * sizeof(*ms->hnames));
		ms->hnames[ms->n_hnames++] = xstrdup(name);
		if (ms_is_forged(ms, field, len)) {
			ms->forged = xrealloc(ms->forged, (ms->n_forged + 1) * sizeof(*ms->forged));
			ms->forged[ms->n_forged].name = xstrdup(name);
			ms->forged[ms->n_forged++].index = index;
		}
	}
	free(field);
	return SMFIS_CONTINUE;
}

static sfsistat
cb_eoh(SMFICTX *ctx)
{
	struct msession *ms = ms_of(ctx);

	if (ms == NULL || !ms->in_tx)
		return SMFIS_TEMPFAIL;
	ms_append(ms, "\r\n", 2);
	return SMFIS_CONTINUE;
}

static sfsistat
cb_body(SMFICTX *ctx, unsigned char *data, size_t len)
{
	struct msession *ms = ms_of(ctx);

	if (ms == NULL || !ms->in_tx)
		return SMFIS_TEMPFAIL;
	ms_append(ms, data, len);
	return SMFIS_CONTINUE;
}

/* The one line per message, as the SMTP service's (doc/milter.md). */
static void
ms_tx_log(struct msession *ms, const struct pipeline_outcome *o, enum action action,
	  const char *result)
{
	char *stages = filter_tx_format_stages(ms->tx_fx);
	char *hits = filter_tx_format_hits(ms->tx_fx);

	log_msg(LOG_LEVEL_INFO,
		"%s milter tx session=%s queue_id=%s client=%s helo=%s from=<%s> nrcpt=%zu "
		"size=%llu verdict=%s action=%s score=%.1f stages=%s hits=%s result=%s%s%s",
		ms->txid, ms->id, ms->queue_id[0] ? ms->queue_id : "-", ms->client_addr,
		ms->helo[0] ? ms->helo : "-", ms->from != NULL ? ms->from : "", ms->n_rcpts,
		(unsigned long long)ms->size, verdict_name(o->verdict), action_name(action),
		o->score, stages && stages[0] ? stages : "-", hits && hits[0] ? hits : "-", result,
		ms->auth[0] ? " auth=" : "", ms->auth);
	/* the web admin's recent transactions: the same values as the line */
	txstats_record(&(struct txstats_in){
		.id = ms->txid, .client = ms->client_addr, .from = ms->from != NULL ? ms->from : "",
		.rcpts = (const char *const *)ms->rcpts, .n_rcpts = ms->n_rcpts,
		.verdict = verdict_name(o->verdict), .action = action_name(action), .score = o->score,
		.hits = hits && hits[0] ? hits : "-", .result = result });
	free(stages);
	free(hits);
}

/* Delete the sender's forged fields, add the pipeline's. */
static void
ms_edit_headers(struct msession *ms, SMFICTX *ctx)
{
	const struct filter_header *hdrs;
	size_t n = filter_tx_headers(ms->tx_fx, &hdrs);

	/* from the last: deleting one shifts the indexes of those after it */
	for (size_t i = ms->n_forged; i-- > 0;)
		(void)smfi_chgheader(ctx, ms->forged[i].name, ms->forged[i].index, NULL);
	for (size_t i = 0; i < n; i++) {
		if (smfi_addheader(ctx, (char *)hdrs[i].name, (char *)hdrs[i].value) != MI_SUCCESS)
			log_msg(LOG_LEVEL_WARN, "%s milter: the MTA did not take header %s",
				ms->txid, hdrs[i].name);
	}
}

static sfsistat
cb_eom(SMFICTX *ctx)
{
	struct msession *ms = ms_of(ctx);
	struct pipeline_outcome out;
	enum action action;
	sfsistat r;

	if (ms == NULL || !ms->in_tx)
		return SMFIS_TEMPFAIL;
	macro_copy(ctx, "i", ms->queue_id, sizeof(ms->queue_id));
	if (ms->too_big) {
		memset(&out, 0, sizeof(out));
		ms_tx_log(ms, &out, ACTION_REJECT, "rejected");
		r = ms_refuse(ctx, false, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		ms_tx_end(ms);
		return r;
	}
	if (ms->too_many_headers) {
		memset(&out, 0, sizeof(out));
		ms_tx_log(ms, &out, ACTION_REJECT, "rejected");
		r = ms_refuse(ctx, false, 552, "5.3.4", "Too many header fields");
		ms_tx_end(ms);
		return r;
	}
	if (ms->body == NULL)
		ms->body = msgbody_new(ms->env.spool_dir, ms->env.spill_threshold);
	if (ms->body_errno == 0 && msgbody_seal(ms->body) < 0)
		ms->body_errno = errno ? errno : EIO;
	if (ms->body_errno != 0) {
		errno = ms->body_errno;
		log_errno(LOG_LEVEL_ERR, "%s milter: spool write failed", ms->txid);
		ms_tx_end(ms);
		return ms_refuse(ctx, true, 451, "4.3.0", "Error writing message to spool; try again later");
	}
	ms_fill_msg(ms);
	ms->msg.body = ms->body;
	if (!ms_request(ms, REQ_PHASE, PHASE_DATA, ms->tx_fx, &out)) {
		ms_tx_end(ms);
		return ms_unavailable(ctx);
	}
	action = out.action;
	if (out.verdict != VERDICT_REJECT && out.verdict != VERDICT_TEMPFAIL) {
		/* verdicts remembered from earlier phases; a hard one at DATA wins */
		if (ms->sticky == VERDICT_QUARANTINE)
			action = ACTION_QUARANTINE;
		else if (ms->sticky == VERDICT_DISCARD && action != ACTION_QUARANTINE)
			action = ACTION_DISCARD;
		else if (ms->sticky == VERDICT_ACCEPT && out.verdict == VERDICT_CONTINUE)
			action = ACTION_DELIVER;
	}
	switch (action) {
	case ACTION_REJECT:
	case ACTION_TEMPFAIL: {
		bool temp = action == ACTION_TEMPFAIL;
		const struct filter_result *rp = &out.reply;
		ms_tx_log(ms, &out, action, temp ? "tempfailed" : "rejected");
		r = ms_refuse(ctx, temp, rp->code, rp->enhanced[0] ? rp->enhanced : (temp ? "4.7.1" : "5.7.1"),
			      rp->text[0] ? rp->text : (temp ? "Try again later" : "Message rejected"));
		break;
	}
	case ACTION_DISCARD:
		ms_tx_log(ms, &out, action, "discarded");
		r = SMFIS_DISCARD;
		break;
	case ACTION_QUARANTINE: {
		/* the MTA holds it (Postfix: the hold queue), with our headers */
		char reason[128];
		snprintf(reason, sizeof(reason), "mxguard %s score=%.1f", ms->txid, out.score);
		ms_edit_headers(ms, ctx);
		if (smfi_quarantine(ctx, reason) != MI_SUCCESS)
			log_msg(LOG_LEVEL_WARN, "%s milter: the MTA refused to quarantine", ms->txid);
		ms_tx_log(ms, &out, action, "quarantined");
		r = SMFIS_ACCEPT;
		break;
	}
	default:
		/* deliver, tag and junk: the MTA delivers, tagged by our headers
		 * (X-Spam-Flag says junk; the MTA has no folder of ours) */
		ms_edit_headers(ms, ctx);
		ms_tx_log(ms, &out, action, "accepted");
		r = SMFIS_ACCEPT;
		break;
	}
	ms_tx_end(ms);
	return r;
}

static sfsistat
cb_abort(SMFICTX *ctx)
{
	struct msession *ms = ms_of(ctx);

	if (ms != NULL)
		ms_tx_end(ms);
	return SMFIS_CONTINUE;
}

static sfsistat
cb_close(SMFICTX *ctx)
{
	struct msession *ms = ms_of(ctx);

	if (ms == NULL)
		return SMFIS_CONTINUE;
	smfi_setpriv(ctx, NULL);
	ms_tx_end(ms);
	ms_fill_msg(ms);
	/* session_end, and the hold let go, on the session's loop; when the
	 * loops are gone the core let go of the holds itself */
	if (ms->held)
		(void)ms_request(ms, REQ_END, PHASE_CONNECT, NULL, NULL);
	log_msg(LOG_LEVEL_DEBUG, "%s milter close client=%s", ms->id, ms->client_addr);
	ms_free(ms);
	return SMFIS_CONTINUE;
}

static struct smfiDesc milter_desc = {
	.xxfi_name = MILTER_NAME,
	.xxfi_version = SMFI_VERSION,
	.xxfi_flags = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE,
	.xxfi_connect = cb_connect,
	.xxfi_helo = cb_helo,
	.xxfi_envfrom = cb_envfrom,
	.xxfi_envrcpt = cb_envrcpt,
	.xxfi_header = cb_header,
	.xxfi_eoh = cb_eoh,
	.xxfi_body = cb_body,
	.xxfi_eom = cb_eom,
	.xxfi_abort = cb_abort,
	.xxfi_close = cb_close,
	.xxfi_negotiate = cb_negotiate,
};

/* ------------------------------------------------------------- service */
int
milter_check_config(const struct mx_config *cfg, char **error_r)
{
	const struct daemon_settings *ds = daemon_settings(cfg);
	const struct listen_config *first = NULL;
	char spec[300];

	for (size_t i = 0; i < ds->n_listeners; i++) {
		const struct listen_config *lc = &ds->listeners[i];
		if (strcmp(lc->protocol, "milter") != 0)
			continue;
		if (first != NULL) {
			*error_r = xasprintf("%s:%d: listen %s: only one milter listener per process "
					     "(libmilter has one socket; listen %s has it)", cfg->path,
					     lc->line, lc->name, first->name);
			return -1;
		}
		if (milter_conn_spec(lc->address, spec, sizeof(spec)) < 0) {
			*error_r = xasprintf("%s:%d: listen %s: address = \"%s\": not a numeric host:port or unix:/path",
					     cfg->path, lc->line, lc->name, lc->address);
			return -1;
		}
		first = lc;
	}
	return 0;
}


/* Seconds libmilter waits for the MTA's next command (libmilter's own
 * default): the MTA keeps a milter connection for a whole SMTP session. */
static const long milter_timeout = 7210;

static void *
milter_thread(void *arg)
{
	(void)arg;
	/* libmilter's session threads inherit this mask: the daemon's main
	 * thread alone takes SIGHUP, SIGTERM and SIGINT */
	if (mi_listener(M.spec, 0, &milter_desc, (time_t)milter_timeout, MILTER_BACKLOG) != MI_SUCCESS)
		log_msg(LOG_LEVEL_ERR, "milter: libmilter's listener on %s failed", M.spec);
	else
		log_msg(LOG_LEVEL_DEBUG, "milter: listener on %s stopped", M.spec);
	return NULL;
}

int
milter_service_start(struct daemon *core, const struct listen_config *lc, milter_env_fn *env,
		     char **error_r)
{
	sigset_t set, old;
	pthread_attr_t attr;
	int err;

	if (M.started) {
		*error_r = xasprintf("only one milter listener per process (libmilter has one socket)");
		return -1;
	}
	if (milter_conn_spec(lc->address, M.spec, sizeof(M.spec)) < 0) {
		*error_r = xasprintf("address = \"%s\": not host:port or unix:/path", lc->address);
		return -1;
	}
	M.core = core;
	M.env_of = env;
	atomic_store(&M.stopping, false);
	if (smfi_setconn(M.spec) != MI_SUCCESS || smfi_register(milter_desc) != MI_SUCCESS) {
		*error_r = xasprintf("libmilter refused %s", M.spec);
		return -1;
	}
	/* bound here, on the main thread, so that an error stops the start */
	/* a unix socket left by an earlier run is removed first (rmsocket) */
	if (smfi_opensocket(strncmp(M.spec, "unix:", 5) == 0) != MI_SUCCESS) {
		*error_r = xasprintf("libmilter cannot listen on %s", M.spec);
		return -1;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	pthread_attr_init(&attr);
	/* detached: after smfi_stop the listener notices within its poll
	 * (5 s); the daemon does not wait for that */
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	err = pthread_create(&M.thread, &attr, milter_thread, NULL);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err != 0) {
		*error_r = xasprintf("cannot start the milter thread: %s", strerror(err));
		return -1;
	}
	M.started = true;
	log_msg(LOG_LEVEL_INFO, "listening name=%s protocol=milter address=%s spec=%s", lc->name,
		lc->address, M.spec);
	return 0;
}

/* smfi_stop() closes the listening socket under the lock libmilter's
 * listener holds while it polls (up to 5 s): on a thread of its own, so
 * the main thread's shutdown never waits for that. */
static void *
milter_stop_thread(void *arg)
{
	(void)arg;
	(void)smfi_stop();
	return NULL;
}

void
milter_service_stop(void)
{
	pthread_attr_t attr;
	pthread_t t;

	if (!M.started || atomic_exchange(&M.stopping, true))
		return;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, milter_stop_thread, NULL) != 0)
		(void)smfi_stop(); /* no thread: wait here then */
	pthread_attr_destroy(&attr);
}
