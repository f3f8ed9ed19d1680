/*
 * session.c — the POP3 session (RFC 1939 with RFC 2449 CAPA, RFC 2595
 * STLS, RFC 5034 SASL PLAIN and LOGIN, RFC 3206 response codes).
 *
 * A session lives on one loop thread on top of the connection layer
 * (daemon/conn.c: line caps, timeouts, TLS, lingering close). Commands are
 * read one line at a time and looked up in the command table, which says
 * in which states (AUTHORIZATION, TRANSACTION) a verb is allowed.
 *
 * Everything that blocks runs as a job on the worker pool, and the
 * session is busy (reads no further input, so pipelined commands are
 * answered in order) until its completion is back on the loop:
 *   - the login (scan lane: crypt(3) is CPU work): the password check,
 *     then the maildrop lock (mxguard-pop3.lock, [IN-USE] when another
 *     session holds it) and the mailbox snapshot (mailbox_open: new/ to
 *     cur/, the UID list);
 *   - RETR and TOP (delivery lane): set the seen flag (RETR only), open
 *     the file, and convert it in chunks (pop3_stuff: CRLF, dot-stuffing);
 *     the next chunk is read only while the output queue is short, so a
 *     slow client holds one chunk of memory, not the message;
 *   - QUIT in TRANSACTION (delivery lane): the UPDATE state, the unlinks.
 * A job owns the mailbox while it runs; a completion finds its session by
 * handle, and when the client went away it frees what it holds itself. A
 * dropped connection never reaches UPDATE, so it deletes nothing.
 *
 * A failed login is answered after auth_failure_delay by a timer on the
 * loop (never by sleeping), with the same words whether the user exists
 * or not; failures are counted per client address and per user
 * (auth.c), and beyond auth_failures_max the password is not even
 * checked. Plaintext logins follow pop3.plaintext_auth.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "backends/backends.h"
#include "daemon/daemon.h"
#include "lib/metrics.h"
#include "mailbox/mailbox.h"
#include "pop3/pop3.h"

/* Output queued beyond this stops command processing until it drains. It
 * is larger than a chunk, so that the next pipelined RETR reads its
 * message on the pool while the last one is still being sent. */
#define POP3_OUTPUT_MAX (384 * 1024)
/* A message is read and converted this much at a time ... */
#define POP3_CHUNK (256 * 1024)
/* ... and the next chunk is read while less than this is queued. */
#define POP3_XFER_QUEUE (512 * 1024)
#define POP3_USER_MAX (SMTP_LOCAL_MAX + 1 + SMTP_DOMAIN_MAX)

enum pop3_state { P_AUTHORIZATION = 0, P_TRANSACTION, P_UPDATE };
#define S_AUTH (1u << P_AUTHORIZATION)
#define S_TRANS (1u << P_TRANSACTION)

enum pop3_flags {
	P_F_BUSY = 0x01,     /* a job, a delayed reply or a handshake pending */
	P_F_TLS = 0x02,
	P_F_SHUTDOWN = 0x04,
	P_F_JOB = 0x08,      /* a job is in flight (it owns the mailbox) */
};

enum sasl_step { SASL_NONE, SASL_PLAIN, SASL_LOGIN_USER, SASL_LOGIN_PASS };

struct read_job;

struct pop3_session {
	uint64_t handle;
	char id[MX_ID_LEN];
	struct conn *conn;
	struct pop3_env env;
	enum pop3_state state;
	unsigned flags;
	char client_addr[64];
	long bad_commands;
	/* AUTHORIZATION */
	char user[POP3_USER_MAX + 1]; /* from USER, "" when none */
	enum sasl_step sasl;
	const char *sasl_mech;
	char *sasl_user;
	struct event *delay_ev;       /* a failed login's answer, later */
	char *delayed_reply;
	/* TRANSACTION */
	char login[POP3_USER_MAX + 1];
	const char *mech;
	struct mailbox *mb;           /* NULL while a job owns it */
	int lock_fd;
	bool *deleted;
	size_t n_deleted;
	long retrieved;
	struct read_job *xfer;        /* a RETR/TOP between two chunks */
};

static void pop3_process(struct pop3_session *s);
static void pop3_close(struct pop3_session *s, const char *reason);

/* ------------------------------------------------------------- replies */

static void ATTR_PRINTF(2, 3)
pop3_reply(struct pop3_session *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	conn_write_linev(s->conn, fmt, ap);
	va_end(ap);
}

static const struct pop3_settings *
pop3_cfg(const struct pop3_session *s)
{
	return pop3_settings(s->env.cfg);
}

/* A reply to a client error: counts towards bad_commands_max. */
static void
pop3_bad(struct pop3_session *s, const char *text)
{
	pop3_reply(s, "-ERR %s", text);
	if (++s->bad_commands >= pop3_cfg(s)->bad_commands_max) {
		pop3_reply(s, "-ERR Too many bad commands, closing connection.");
		log_msg(LOG_LEVEL_INFO, "%s pop3 too many bad commands client=%s", s->id, s->client_addr);
		pop3_close(s, "too_many_errors");
	}
}

static void
pop3_arm_timeouts(struct pop3_session *s)
{
	if (s->flags & P_F_JOB)
		conn_set_timeout(s->conn, 0); /* the worker pool bounds it */
	else
		conn_set_timeout(s->conn, pop3_cfg(s)->timeout_idle);
}


/* May a password cross this connection? */
static bool
pop3_plaintext_ok(const struct pop3_session *s)
{
	if (s->flags & P_F_TLS)
		return true;
	switch (pop3_cfg(s)->plaintext_auth) {
	case POP3_PLAINTEXT_ALWAYS:
		return true;
	case POP3_PLAINTEXT_LOOPBACK:
		return net_is_loopback(s->client_addr);
	default:
		return false;
	}
}

static bool
pop3_stls_ok(const struct pop3_session *s)
{
	return !(s->flags & P_F_TLS) && s->env.ssl_ctx != NULL;
}

/* Let go of the maildrop at once when the session ends (the connection
 * may linger a while before it is gone): the client that saw our last
 * reply can log in again straight away. A job in flight owns the mailbox
 * and frees it itself. */
static void
pop3_release(struct pop3_session *s)
{
	if (!(s->flags & P_F_JOB))
		mailbox_free(&s->mb);
	if (s->lock_fd >= 0) {
		close(s->lock_fd);
		s->lock_fd = -1;
	}
}

static void
pop3_close(struct pop3_session *s, const char *reason)
{
	conn_close(s->conn, reason);
	pop3_release(s);
}

/* Work that came from outside the connection layer is over: unbusy,
 * re-arm, take the next commands and settle the connection. */
static void
pop3_resume(struct pop3_session *s)
{
	s->flags &= ~P_F_BUSY;
	pop3_arm_timeouts(s);
	pop3_process(s);
	conn_settle(s->conn);
}

/* -------------------------------------------------------------- login */

struct login_job {
	uint64_t handle;
	struct userdb *userdb;
	char *user;
	char *password;
	char *mail_root;
	/* results */
	int result;            /* 1 ok, 0 bad credentials, -2 in use, -1 error */
	char *error;
	struct mailbox *mb;
	int lock_fd;
};

static void
login_job_free(struct login_job *job)
{
	if (job->password != NULL) {
		explicit_bzero(job->password, strlen(job->password));
		free(job->password);
	}
	free(job->user);
	free(job->mail_root);
	free(job->error);
	mailbox_free(&job->mb);
	if (job->lock_fd >= 0)
		close(job->lock_fd);
	free(job);
}

static void
login_work(void *arg)
{
	struct login_job *job = arg;
	char *root = NULL;
	int v = userdb_login(job->userdb, job->mail_root, job->user, job->password, &root,
			     &job->error);

	if (v <= 0) {
		job->result = v;
		return;
	}
	job->lock_fd = mailbox_pop3_lock(root);
	if (job->lock_fd == -2) {
		free(root);
		job->result = -2;
		return;
	}
	if (job->lock_fd < 0) {
		job->result = -1;
		job->error = xasprintf("lock %s/%s: %s", root, MAILBOX_POP3_LOCK, strerror(errno));
		free(root);
		return;
	}
	int rc = mailbox_open(root, &job->mb, &job->error);
	free(root);
	job->result = rc < 0 ? -1 : 1;
}

static void
pop3_delay_fire(evutil_socket_t fd, short what, void *arg)
{
	struct pop3_session *s = arg;

	(void)fd;
	(void)what;
	if (s->delayed_reply != NULL) {
		pop3_reply(s, "%s", s->delayed_reply);
		free(s->delayed_reply);
		s->delayed_reply = NULL;
	}
	pop3_resume(s);
}

/* Answer a failed login after the delay (the session stays busy). */
static void
pop3_fail_later(struct pop3_session *s, const char *reply)
{
	long ms = pop3_cfg(s)->auth_failure_delay;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	free(s->delayed_reply);
	s->delayed_reply = xstrdup(reply);
	if (s->delay_ev == NULL)
		s->delay_ev = evtimer_new(conn_base(s->conn), pop3_delay_fire, s);
	s->flags |= P_F_BUSY;
	pop3_arm_timeouts(s);
	evtimer_add(s->delay_ev, &tv);
}

static long
now_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec;
}

static void
throttle_keys(const struct pop3_session *s, const char *user, char *ka, size_t kasz, char *ku,
	      size_t kusz)
{
	snprintf(ka, kasz, "a:%s", s->client_addr);
	snprintf(ku, kusz, "u:%s", user);
	str_lower(ku);
}

static void
login_done(void *arg)
{
	struct login_job *job = arg;
	struct pop3_session *s = handle_lookup(job->handle);
	char who[128], ka[96], ku[96 + POP3_USER_MAX];

	if (s == NULL) {
		login_job_free(job);
		return;
	}
	s->flags &= ~P_F_JOB;
	str_log_safe(job->user, who, sizeof(who));
	switch (job->result) {
	case 1: {
		uint64_t octets = 0;
		s->mb = job->mb;
		job->mb = NULL;
		s->lock_fd = job->lock_fd;
		job->lock_fd = -1;
		str_copy(s->login, job->user, sizeof(s->login));
		s->state = P_TRANSACTION;
		s->n_deleted = s->mb->n_msgs;
		s->deleted = xcalloc(s->n_deleted + 1, sizeof(*s->deleted));
		for (size_t i = 0; i < s->mb->n_msgs; i++)
			octets += s->mb->msgs[i].vsize;
		log_msg(LOG_LEVEL_INFO, "%s pop3 login client=%s user=%s mech=%s tls=%s messages=%zu octets=%llu",
			s->id, s->client_addr, who, s->mech, (s->flags & P_F_TLS) ? "yes" : "no",
			s->mb->n_msgs, (unsigned long long)octets);
		metrics_add_label(METRIC_POP3_LOGINS, "ok", 1);
		pop3_reply(s, "+OK Logged in: %zu messages (%llu octets).", s->mb->n_msgs,
			   (unsigned long long)octets);
		break;
	}
	case 0:
		throttle_keys(s, job->user, ka, sizeof(ka), ku, sizeof(ku));
		mailbox_throttle_fail(ka, pop3_cfg(s)->auth_failure_window, now_sec());
		mailbox_throttle_fail(ku, pop3_cfg(s)->auth_failure_window, now_sec());
		log_msg(LOG_LEVEL_INFO, "%s pop3 auth failed client=%s user=%s mech=%s reason=bad_credentials",
			s->id, s->client_addr, who, s->mech);
		metrics_add_label(METRIC_POP3_LOGINS, "failed", 1);
		pop3_fail_later(s, "-ERR [AUTH] Authentication failed.");
		login_job_free(job);
		conn_settle(s->conn);
		return;
	case -2:
		log_msg(LOG_LEVEL_INFO, "%s pop3 auth failed client=%s user=%s mech=%s reason=in_use",
			s->id, s->client_addr, who, s->mech);
		pop3_reply(s, "-ERR [IN-USE] Mailbox is locked by another POP3 session.");
		break;
	default:
		log_msg(LOG_LEVEL_ERR, "%s pop3 auth failed client=%s user=%s mech=%s reason=error: %s",
			s->id, s->client_addr, who, s->mech, job->error ? job->error : "?");
		pop3_reply(s, "-ERR [SYS/TEMP] Temporary server error, try again later.");
		break;
	}
	login_job_free(job);
	pop3_resume(s);
}

/* Check user and password (on the pool), or refuse now when throttled. */
static void
pop3_login(struct pop3_session *s, const char *user, const char *password, const char *mech)
{
	const struct pop3_settings *ps = pop3_cfg(s);
	char ka[96], ku[96 + POP3_USER_MAX], who[128];
	long now = now_sec();
	struct login_job *job;

	s->user[0] = '\0';
	s->mech = mech;
	throttle_keys(s, user, ka, sizeof(ka), ku, sizeof(ku));
	if (mailbox_throttle_blocked(ka, ps->auth_failures_max, ps->auth_failure_window, now) ||
	    mailbox_throttle_blocked(ku, ps->auth_failures_max, ps->auth_failure_window, now)) {
		str_log_safe(user, who, sizeof(who));
		log_msg(LOG_LEVEL_INFO, "%s pop3 auth failed client=%s user=%s mech=%s reason=throttled",
			s->id, s->client_addr, who, mech);
		metrics_add_label(METRIC_POP3_LOGINS, "failed", 1);
		pop3_fail_later(s, "-ERR [SYS/TEMP] Too many failed logins, try again later.");
		return;
	}
	job = xcalloc(1, sizeof(*job));
	job->handle = s->handle;
	job->userdb = s->env.userdb;
	job->user = xstrdup(user);
	job->password = xstrdup(password);
	job->mail_root = xstrdup(backends_settings(s->env.cfg)->mail_root);
	job->lock_fd = -1;
	if (workers_submit(daemon_loop_workers(conn_loop(s->conn)), WORKER_LANE_SCAN, conn_base(s->conn),
			   login_work, login_done, job) < 0) {
		login_job_free(job);
		log_msg(LOG_LEVEL_WARN, "%s pop3 auth failed client=%s mech=%s reason=busy", s->id,
			s->client_addr, mech);
		pop3_reply(s, "-ERR [SYS/TEMP] Server busy, try again later.");
		return;
	}
	s->flags |= P_F_BUSY | P_F_JOB;
	pop3_arm_timeouts(s);
}

/* ------------------------------------------------------- AUTHORIZATION */

static void
cmd_user(struct pop3_session *s, const char *args)
{
	if (!pop3_plaintext_ok(s)) {
		pop3_reply(s, "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.");
		return;
	}
	if (args[0] == '\0' || strlen(args) > POP3_USER_MAX) {
		pop3_bad(s, "Invalid user name.");
		return;
	}
	str_copy(s->user, args, sizeof(s->user));
	pop3_reply(s, "+OK");
}

static void
cmd_pass(struct pop3_session *s, const char *args)
{
	char user[sizeof(s->user)];

	if (!pop3_plaintext_ok(s)) {
		pop3_reply(s, "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.");
		return;
	}
	if (s->user[0] == '\0') {
		pop3_bad(s, "No user name given (USER first).");
		return;
	}
	str_copy(user, s->user, sizeof(user));
	pop3_login(s, user, args, "USER");
}

static void
cmd_apop(struct pop3_session *s, const char *args)
{
	(void)args;
	/* APOP needs the password in the clear on the server side */
	pop3_bad(s, "APOP is not supported.");
}

static void
sasl_reset(struct pop3_session *s)
{
	s->sasl = SASL_NONE;
	if (s->sasl_user != NULL) {
		free(s->sasl_user);
		s->sasl_user = NULL;
	}
}

/* A decoded PLAIN response: authzid, authcid, password. */
static void
sasl_plain_finish(struct pop3_session *s, char *buf, size_t len)
{
	const char *authz, *authc, *pass;

	if (sasl_plain_split(buf, len, &authz, &authc, &pass) < 0 ||
	    (authz[0] != '\0' && strcasecmp(authz, authc) != 0) || strlen(authc) > POP3_USER_MAX) {
		pop3_bad(s, "[AUTH] Invalid SASL PLAIN response.");
		return;
	}
	pop3_login(s, authc, pass, "PLAIN");
}

/* One SASL response line (or the initial response); line is base64. */
static void
sasl_step(struct pop3_session *s, const char *line, size_t len)
{
	char *buf;
	size_t blen;
	enum sasl_step step = s->sasl;

	s->sasl = SASL_NONE;
	if (len == 1 && line[0] == '*') {
		sasl_reset(s);
		pop3_bad(s, "Authentication aborted.");
		return;
	}
	if (len == 1 && line[0] == '=')
		len = 0; /* an empty initial response */
	if (sasl_base64_decode(line, len, &buf, &blen) < 0) {
		sasl_reset(s);
		pop3_bad(s, "[AUTH] Invalid base64 data.");
		return;
	}
	switch (step) {
	case SASL_PLAIN:
		sasl_plain_finish(s, buf, blen);
		break;
	case SASL_LOGIN_USER:
		if (blen == 0 || blen > POP3_USER_MAX || memchr(buf, '\0', blen) != NULL) {
			pop3_bad(s, "[AUTH] Invalid user name.");
			break;
		}
		free(s->sasl_user);
		s->sasl_user = xstrdup(buf);
		s->sasl = SASL_LOGIN_PASS;
		pop3_reply(s, "+ UGFzc3dvcmQ6"); /* "Password:" */
		break;
	case SASL_LOGIN_PASS:
		if (memchr(buf, '\0', blen) != NULL) {
			pop3_bad(s, "[AUTH] Invalid password.");
			break;
		}
		{
			char *user = s->sasl_user;
			s->sasl_user = NULL;
			pop3_login(s, user, buf, "LOGIN");
			free(user);
		}
		break;
	default:
		break;
	}
	if (s->sasl == SASL_NONE)
		sasl_reset(s);
	explicit_bzero(buf, blen);
	free(buf);
}

static void
cmd_auth(struct pop3_session *s, const char *args)
{
	const char *words[2];
	char *buf;
	int n = pop3_split_args(args, &buf, words, 2);

	if (n == 0) {
		/* the pre-RFC 5034 listing some clients ask for */
		if (pop3_plaintext_ok(s))
			conn_write(s->conn, "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n", 22);
		else
			conn_write(s->conn, "+OK\r\n.\r\n", 8);
		free(buf);
		return;
	}
	if (n < 0) {
		pop3_bad(s, "Invalid AUTH arguments.");
	} else if (strcasecmp(words[0], "PLAIN") != 0 && strcasecmp(words[0], "LOGIN") != 0) {
		pop3_bad(s, "Unsupported authentication mechanism.");
	} else if (!pop3_plaintext_ok(s)) {
		pop3_reply(s, "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.");
	} else if (strcasecmp(words[0], "PLAIN") == 0) {
		s->sasl = SASL_PLAIN;
		if (n == 2)
			sasl_step(s, words[1], strlen(words[1]));
		else
			pop3_reply(s, "+ ");
	} else {
		s->sasl = SASL_LOGIN_USER;
		if (n == 2)
			sasl_step(s, words[1], strlen(words[1]));
		else
			pop3_reply(s, "+ VXNlcm5hbWU6"); /* "Username:" */
	}
	explicit_bzero(buf, strlen(buf));
	free(buf);
}

static void
cmd_stls(struct pop3_session *s, const char *args)
{
	if (args[0] != '\0') {
		pop3_bad(s, "STLS takes no arguments.");
		return;
	}
	if (s->flags & P_F_TLS) {
		pop3_bad(s, "TLS is already active.");
		return;
	}
	if (s->env.ssl_ctx == NULL || conn_starttls(s->conn, s->env.ssl_ctx) < 0) {
		pop3_reply(s, "-ERR [SYS/TEMP] TLS is not available.");
		return;
	}
	pop3_reply(s, "+OK Begin TLS negotiation now.");
	s->flags |= P_F_BUSY; /* until tls_up */
}

static void
cmd_capa(struct pop3_session *s, const char *args)
{
	char buf[512];
	int n;

	(void)args;
	n = snprintf(buf, sizeof(buf),
		     "+OK Capability list follows\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n"
		     "PIPELINING\r\nAUTH-RESP-CODE\r\n%s%s%sIMPLEMENTATION mxguard\r\n.\r\n",
		     s->state == P_AUTHORIZATION && pop3_plaintext_ok(s) ? "USER\r\n" : "",
		     s->state == P_AUTHORIZATION && pop3_plaintext_ok(s) ? "SASL PLAIN LOGIN\r\n" : "",
		     s->state == P_AUTHORIZATION && pop3_stls_ok(s) ? "STLS\r\n" : "");
	conn_write(s->conn, buf, (size_t)n);
}

static void
cmd_quit(struct pop3_session *s, const char *args);

/* --------------------------------------------------------- TRANSACTION */

/* The message a "msg" argument names: its index, or -1 after answering. */
static long
pop3_msg_arg(struct pop3_session *s, const char *arg, size_t len)
{
	unsigned long n;

	if (!pop3_parse_number(arg, len, false, &n)) {
		pop3_bad(s, "Invalid message number.");
		return -1;
	}
	if (n > s->mb->n_msgs || s->deleted[n - 1]) {
		pop3_reply(s, "-ERR No such message.");
		return -1;
	}
	return (long)n - 1;
}

static void
pop3_totals(const struct pop3_session *s, size_t *n_r, uint64_t *octets_r)
{
	*n_r = 0;
	*octets_r = 0;
	for (size_t i = 0; i < s->mb->n_msgs; i++) {
		if (!s->deleted[i]) {
			(*n_r)++;
			*octets_r += s->mb->msgs[i].vsize;
		}
	}
}

static void
cmd_stat(struct pop3_session *s, const char *args)
{
	size_t n;
	uint64_t octets;

	if (args[0] != '\0') {
		pop3_bad(s, "STAT takes no arguments.");
		return;
	}
	pop3_totals(s, &n, &octets);
	pop3_reply(s, "+OK %zu %llu", n, (unsigned long long)octets);
}

static void
pop3_uidl(const struct pop3_session *s, size_t i, char *out, size_t outsz)
{
	/* Dovecot's %08Xu%08Xv: unique per folder and UIDVALIDITY, the
	 * same identity IMAP gives the message */
	snprintf(out, outsz, "%08X%08X", s->mb->msgs[i].uid, s->mb->uidvalidity);
}

/* LIST and UIDL: one message, or the listing of all not deleted. */
static void
pop3_listing(struct pop3_session *s, const char *args, bool uidl)
{
	char line[64];

	if (args[0] != '\0') {
		long i = pop3_msg_arg(s, args, strlen(args));
		if (i < 0)
			return;
		if (uidl) {
			pop3_uidl(s, (size_t)i, line, sizeof(line));
			pop3_reply(s, "+OK %ld %s", i + 1, line);
		} else {
			pop3_reply(s, "+OK %ld %llu", i + 1, (unsigned long long)s->mb->msgs[i].vsize);
		}
		return;
	}
	size_t n;
	uint64_t octets;
	pop3_totals(s, &n, &octets);
	if (uidl)
		pop3_reply(s, "+OK");
	else
		pop3_reply(s, "+OK %zu messages (%llu octets)", n, (unsigned long long)octets);
	for (size_t i = 0; i < s->mb->n_msgs; i++) {
		int len;
		if (s->deleted[i])
			continue;
		if (uidl) {
			char u[32];
			pop3_uidl(s, i, u, sizeof(u));
			len = snprintf(line, sizeof(line), "%zu %s\r\n", i + 1, u);
		} else {
			len = snprintf(line, sizeof(line), "%zu %llu\r\n", i + 1,
				       (unsigned long long)s->mb->msgs[i].vsize);
		}
		conn_write(s->conn, line, (size_t)len);
	}
	conn_write(s->conn, ".\r\n", 3);
}

static void
cmd_list(struct pop3_session *s, const char *args)
{
	pop3_listing(s, args, false);
}

static void
cmd_uidl(struct pop3_session *s, const char *args)
{
	pop3_listing(s, args, true);
}

static void
cmd_dele(struct pop3_session *s, const char *args)
{
	unsigned long n;

	if (!pop3_parse_number(args, strlen(args), false, &n)) {
		pop3_bad(s, "Invalid message number.");
		return;
	}
	if (n > s->mb->n_msgs) {
		pop3_reply(s, "-ERR No such message.");
		return;
	}
	if (s->deleted[n - 1]) {
		pop3_reply(s, "-ERR Message %lu already deleted.", n);
		return;
	}
	s->deleted[n - 1] = true;
	pop3_reply(s, "+OK Marked to be deleted.");
}

static void
cmd_noop(struct pop3_session *s, const char *args)
{
	if (args[0] != '\0') {
		pop3_bad(s, "NOOP takes no arguments.");
		return;
	}
	pop3_reply(s, "+OK");
}

static void
cmd_rset(struct pop3_session *s, const char *args)
{
	size_t n;
	uint64_t octets;

	if (args[0] != '\0') {
		pop3_bad(s, "RSET takes no arguments.");
		return;
	}
	memset(s->deleted, 0, s->n_deleted * sizeof(*s->deleted));
	pop3_totals(s, &n, &octets);
	pop3_reply(s, "+OK %zu messages (%llu octets).", n, (unsigned long long)octets);
}

/* ------------------------------------------------------------ RETR, TOP */

struct read_job {
	uint64_t handle;
	struct mailbox *mb;     /* the session's, while the job runs */
	size_t index;
	bool first;             /* nothing sent yet: open (and flag) first */
	bool set_seen;
	int fd;
	struct pop3_stuff st;
	char *out;
	size_t out_len;
	bool finished;
	int err;                /* errno of a failed open or read */
	int flag_err;           /* errno of a failed seen-flag rename (logged) */
};

static void
read_job_free(struct read_job *job)
{
	if (job->fd >= 0)
		close(job->fd);
	mailbox_free(&job->mb);
	free(job->out);
	free(job);
}

static void
read_work(void *arg)
{
	struct read_job *job = arg;
	char *in;
	ssize_t n;

	job->out_len = 0;
	if (job->first) {
		if (job->set_seen && mailbox_msg_add_flag(job->mb, job->index, 'S') < 0)
			job->flag_err = errno;
		job->fd = mailbox_msg_open(job->mb, job->index);
		if (job->fd < 0) {
			job->err = errno;
			return;
		}
	}
	/* Fill the chunk or reach the end of the file: a message smaller than a
	 * chunk goes out in one job and one write — "+OK", the message and
	 * the final "." together. (A "." sent on its own after the rest would
	 * wait for the client's delayed ACK under Nagle's algorithm: 40 ms a
	 * message for a client that sends one command at a time.) */
	in = xmalloc(POP3_CHUNK);
	size_t got = 0;
	bool eof = false;
	while (got < POP3_CHUNK) {
		n = read(job->fd, in + got, POP3_CHUNK - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			job->err = errno;
			free(in);
			return;
		}
		if (n == 0) {
			eof = true;
			break;
		}
		got += (size_t)n;
	}
	job->out = xrealloc(job->out, 2 * got + 8);
	job->out_len = pop3_stuff_feed(&job->st, in, got, job->out);
	free(in);
	if (eof || job->st.done) {
		job->out_len += pop3_stuff_end(&job->st, job->out + job->out_len);
		job->finished = true;
		close(job->fd);
		job->fd = -1;
	}
}

static void read_done(void *arg);

static void
read_submit(struct pop3_session *s, struct read_job *job)
{
	job->mb = s->mb;
	s->mb = NULL;
	s->xfer = NULL;
	s->flags |= P_F_BUSY | P_F_JOB;
	pop3_arm_timeouts(s);
	(void)workers_submit(daemon_loop_workers(conn_loop(s->conn)), WORKER_LANE_DELIVERY,
			     conn_base(s->conn), read_work, read_done, job);
}

static void
read_done(void *arg)
{
	struct read_job *job = arg;
	struct pop3_session *s = handle_lookup(job->handle);

	if (s == NULL) {
		read_job_free(job);
		return;
	}
	s->flags &= ~P_F_JOB;
	s->mb = job->mb;
	job->mb = NULL;
	if (conn_closing(s->conn)) {
		/* timed out or stopped meanwhile: read no further */
		read_job_free(job);
		conn_settle(s->conn);
		return;
	}
	if (job->flag_err != 0) {
		errno = job->flag_err;
		log_errno(LOG_LEVEL_WARN, "%s pop3 cannot set the seen flag of %s", s->id,
			  s->mb->msgs[job->index].base);
		job->flag_err = 0;
	}
	if (job->err != 0) {
		if (job->first) {
			errno = job->err;
			log_errno(LOG_LEVEL_WARN, "%s pop3 cannot read message %s", s->id,
				  s->mb->msgs[job->index].base);
			if (job->err == ENOENT)
				pop3_reply(s, "-ERR Message was removed by another session.");
			else
				pop3_reply(s, "-ERR [SYS/TEMP] Cannot read the message.");
			read_job_free(job);
			pop3_resume(s);
		} else {
			/* the +OK is out: the reply cannot be finished */
			errno = job->err;
			log_errno(LOG_LEVEL_ERR, "%s pop3 read error in %s", s->id,
				  s->mb->msgs[job->index].base);
			read_job_free(job);
			pop3_close(s, "read_error");
			conn_settle(s->conn);
		}
		return;
	}
	if (job->first) {
		if (job->st.top)
			pop3_reply(s, "+OK");
		else
			pop3_reply(s, "+OK %llu octets", (unsigned long long)s->mb->msgs[job->index].vsize);
		job->first = false;
	}
	conn_write(s->conn, job->out, job->out_len);
	if (job->finished) {
		read_job_free(job);
		pop3_resume(s);
		return;
	}
	if (conn_output_len(s->conn) < POP3_XFER_QUEUE) {
		read_submit(s, job);
	} else {
		/* wait for the output to drain (pop3_ready); the idle timeout
		 * drops a client that stops reading */
		s->xfer = job;
		pop3_arm_timeouts(s);
	}
	conn_settle(s->conn);
}

static void
pop3_send_message(struct pop3_session *s, size_t index, bool top, unsigned long lines)
{
	struct read_job *job = xcalloc(1, sizeof(*job));

	job->handle = s->handle;
	job->index = index;
	job->first = true;
	job->set_seen = !top;
	job->fd = -1;
	pop3_stuff_init(&job->st, top, lines);
	if (!top)
		s->retrieved++;
	read_submit(s, job);
}

static void
cmd_retr(struct pop3_session *s, const char *args)
{
	long i = pop3_msg_arg(s, args, strlen(args));

	if (i >= 0)
		pop3_send_message(s, (size_t)i, false, 0);
}

static void
cmd_top(struct pop3_session *s, const char *args)
{
	const char *words[2];
	char *buf;
	unsigned long lines;
	int n = pop3_split_args(args, &buf, words, 2);

	if (n != 2 || !pop3_parse_number(words[1], strlen(words[1]), true, &lines)) {
		free(buf);
		pop3_bad(s, "Usage: TOP msg lines");
		return;
	}
	long i = pop3_msg_arg(s, words[0], strlen(words[0]));
	free(buf);
	if (i >= 0)
		pop3_send_message(s, (size_t)i, true, lines);
}

/* --------------------------------------------------------------- UPDATE */

struct update_job {
	uint64_t handle;
	struct mailbox *mb;
	bool *deleted;
	size_t n_deleted;
	size_t removed, failed;
};

static void
update_work(void *arg)
{
	struct update_job *job = arg;

	for (size_t i = 0; i < job->mb->n_msgs; i++) {
		if (!job->deleted[i])
			continue;
		if (mailbox_msg_expunge(job->mb, i) == 0)
			job->removed++;
		else
			job->failed++;
	}
	if (job->removed > 0)
		(void)mailbox_sync_dir(job->mb);
}

static void
update_done(void *arg)
{
	struct update_job *job = arg;
	struct pop3_session *s = handle_lookup(job->handle);

	if (s != NULL) {
		s->flags &= ~P_F_JOB;
		if (job->failed > 0) {
			log_msg(LOG_LEVEL_ERR, "%s pop3 %zu deleted message(s) could not be removed", s->id,
				job->failed);
			pop3_reply(s, "-ERR [SYS/TEMP] Some deleted messages were not removed.");
		} else {
			pop3_reply(s, "+OK Logging out, %zu messages deleted.", job->removed);
		}
		s->n_deleted = job->removed; /* for the logout line */
		pop3_close(s, "quit");
		conn_settle(s->conn);
	}
	mailbox_free(&job->mb);
	free(job->deleted);
	free(job);
}

static void
cmd_quit(struct pop3_session *s, const char *args)
{
	(void)args;
	if (s->state == P_AUTHORIZATION) {
		pop3_reply(s, "+OK Logging out.");
		pop3_close(s, "quit");
		return;
	}
	struct update_job *job = xcalloc(1, sizeof(*job));
	bool any = false;

	for (size_t i = 0; i < s->n_deleted; i++)
		any |= s->deleted[i];
	if (!any) {
		free(job);
		s->state = P_UPDATE;
		s->n_deleted = 0;
		pop3_reply(s, "+OK Logging out.");
		pop3_close(s, "quit");
		return;
	}
	s->state = P_UPDATE;
	job->handle = s->handle;
	job->mb = s->mb;
	s->mb = NULL;
	job->deleted = s->deleted;
	job->n_deleted = s->n_deleted;
	s->deleted = NULL;
	s->n_deleted = 0;
	s->flags |= P_F_BUSY | P_F_JOB;
	pop3_arm_timeouts(s);
	(void)workers_submit(daemon_loop_workers(conn_loop(s->conn)), WORKER_LANE_DELIVERY,
			     conn_base(s->conn), update_work, update_done, job);
}

/* -------------------------------------------------------- command table */

struct pop3_command {
	enum pop3_verb verb;
	unsigned states;
	void (*handler)(struct pop3_session *s, const char *args);
};

static const struct pop3_command pop3_commands[] = {
	{ POP3_CMD_USER, S_AUTH, cmd_user },
	{ POP3_CMD_PASS, S_AUTH, cmd_pass },
	{ POP3_CMD_APOP, S_AUTH, cmd_apop },
	{ POP3_CMD_AUTH, S_AUTH, cmd_auth },
	{ POP3_CMD_STLS, S_AUTH, cmd_stls },
	{ POP3_CMD_CAPA, S_AUTH | S_TRANS, cmd_capa },
	{ POP3_CMD_QUIT, S_AUTH | S_TRANS, cmd_quit },
	{ POP3_CMD_STAT, S_TRANS, cmd_stat },
	{ POP3_CMD_LIST, S_TRANS, cmd_list },
	{ POP3_CMD_RETR, S_TRANS, cmd_retr },
	{ POP3_CMD_DELE, S_TRANS, cmd_dele },
	{ POP3_CMD_NOOP, S_TRANS, cmd_noop },
	{ POP3_CMD_RSET, S_TRANS, cmd_rset },
	{ POP3_CMD_TOP, S_TRANS, cmd_top },
	{ POP3_CMD_UIDL, S_TRANS, cmd_uidl },
};

static void
pop3_command(struct pop3_session *s, const char *line, size_t len)
{
	const char *args;
	enum pop3_verb verb = pop3_parse_verb(line, len, &args);

	if (memchr(line, '\0', len) != NULL) {
		pop3_bad(s, "Invalid command.");
		return;
	}
	if (log_enabled(LOG_LEVEL_DEBUG)) /* the verb only: arguments may hold a password */
		log_msg(LOG_LEVEL_DEBUG, "%s pop3 command=\"%.*s\"", s->id,
			(int)(verb != POP3_CMD_UNKNOWN ? (size_t)(args - line) : 0), line);
	for (size_t i = 0; i < N_ELEMENTS(pop3_commands); i++) {
		const struct pop3_command *c = &pop3_commands[i];
		if (c->verb != verb)
			continue;
		if (!(c->states & (1u << s->state))) {
			pop3_bad(s, s->state == P_AUTHORIZATION ? "Not logged in." :
				    "Command not valid in this state.");
			return;
		}
		c->handler(s, args);
		return;
	}
	pop3_bad(s, "Unknown command.");
}

static void
pop3_process(struct pop3_session *s)
{
	while (!(s->flags & P_F_BUSY) && !conn_closing(s->conn)) {
		char *line;
		size_t len;
		enum conn_line got;

		if (s->flags & P_F_SHUTDOWN) {
			pop3_reply(s, "-ERR [SYS/TEMP] Server shutting down.");
			pop3_close(s, "shutdown");
			break;
		}
		if (conn_output_len(s->conn) > POP3_OUTPUT_MAX)
			break; /* resumed when the output drains */
		got = conn_read_line(s->conn, &line, &len);
		if (got == CONN_LINE_NONE)
			break;
		if (got == CONN_LINE_OVERFLOW) {
			pop3_reply(s, "-ERR Line too long.");
			log_msg(LOG_LEVEL_INFO, "%s pop3 line too long client=%s", s->id, s->client_addr);
			pop3_close(s, "line_too_long");
			break;
		}
		if (got == CONN_LINE_TOO_LONG) {
			sasl_reset(s);
			pop3_bad(s, "Line too long.");
			continue;
		}
		if (s->sasl != SASL_NONE)
			sasl_step(s, line, len);
		else
			pop3_command(s, line, len);
		explicit_bzero(line, len); /* it may have held a password */
		free(line);
	}
	if (conn_eof(s->conn) && !(s->flags & P_F_BUSY) && !conn_closing(s->conn) &&
	    conn_output_len(s->conn) <= POP3_OUTPUT_MAX)
		pop3_close(s, "eof");
}

/* ------------------------------------------------------------- handler */

static void
pop3_ready(void *ctx)
{
	struct pop3_session *s = ctx;

	if (s->xfer != NULL) {
		/* a RETR waits for the output to drain */
		if (conn_output_len(s->conn) < POP3_XFER_QUEUE)
			read_submit(s, s->xfer);
		return;
	}
	pop3_process(s);
}

static void
pop3_tls_up(void *ctx)
{
	struct pop3_session *s = ctx;

	/* after STLS: AUTHORIZATION again, nothing from before kept */
	s->flags |= P_F_TLS;
	s->flags &= ~P_F_BUSY;
	s->user[0] = '\0';
	sasl_reset(s);
	pop3_arm_timeouts(s);
	pop3_process(s);
}

static void
pop3_timeout(void *ctx)
{
	struct pop3_session *s = ctx;

	pop3_reply(s, "-ERR Disconnected for inactivity.");
	pop3_close(s, "timeout");
}

static void
pop3_eof(void *ctx)
{
	pop3_process(ctx);
}

static void
pop3_shutdown(void *ctx)
{
	struct pop3_session *s = ctx;

	s->flags |= P_F_SHUTDOWN;
	if (!(s->flags & P_F_BUSY))
		pop3_process(s);
}

static void
pop3_gone(void *ctx, const char *reason)
{
	struct pop3_session *s = ctx;
	char who[128];

	if (s->delay_ev != NULL)
		event_free(s->delay_ev);
	free(s->delayed_reply);
	sasl_reset(s);
	if (s->xfer != NULL)
		read_job_free(s->xfer);
	handle_unregister(s->handle); /* a job in flight frees what it holds */
	if (s->login[0] != '\0') {
		size_t deleted = s->state == P_UPDATE ? s->n_deleted : 0;
		str_log_safe(s->login, who, sizeof(who));
		log_msg(LOG_LEVEL_INFO, "%s pop3 logout client=%s user=%s retrieved=%ld deleted=%zu reason=%s",
			s->id, s->client_addr, who, s->retrieved, deleted, reason);
	} else {
		log_msg(LOG_LEVEL_INFO, "%s pop3 disconnected client=%s reason=%s", s->id, s->client_addr,
			reason);
	}
	pop3_release(s);
	free(s->deleted);
	free(s);
}

static const struct conn_handler pop3_handler = {
	.ready = pop3_ready,
	.tls_up = pop3_tls_up,
	.timeout = pop3_timeout,
	.eof = pop3_eof,
	.shutdown = pop3_shutdown,
	.gone = pop3_gone,
};

void
pop3_session_start(struct conn *conn, const char *refusal, const struct pop3_env *env)
{
	struct pop3_session *s = xcalloc(1, sizeof(*s));

	s->conn = conn;
	s->env = *env;
	s->lock_fd = -1;
	str_copy(s->id, conn_id(conn), sizeof(s->id));
	str_copy(s->client_addr, conn_addr(conn), sizeof(s->client_addr));
	if (conn_tls(conn))
		s->flags |= P_F_TLS;
	s->handle = handle_register(s);
	conn_attach(conn, &pop3_handler, s);
	metrics_add(METRIC_POP3_SESSIONS, 1);
	conn_set_nodelay(conn); /* RETR replies end in a partial segment */
	conn_set_lines(conn, (size_t)pop3_cfg(s)->command_line_max, false);
	pop3_arm_timeouts(s);
	if (refusal != NULL) {
		pop3_reply(s, "-ERR [SYS/TEMP] %s", refusal);
		pop3_close(s, strcmp(refusal, DAEMON_REFUSAL_SHUTDOWN) == 0 ? "shutdown"
									 : "too_many_connections");
		return;
	}
	pop3_reply(s, "+OK mxguard POP3 ready.");
}
