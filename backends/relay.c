/*
 * relay.c — the relay backend: a `route` section's mail goes on to an
 * upstream SMTP or LMTP server, before-queue and in lockstep.
 *
 * The upstream session opens when the client's transaction reaches this
 * route (at MAIL when it is the only destination, else at its first RCPT):
 * connect to the hosts in priority order (fail-over while nothing of the
 * transaction was said), EHLO/LHLO with our name, STARTTLS as the route
 * asks, XCLIENT or else XFORWARD with the real client, MAIL. Each RCPT is
 * asked upstream and the upstream's own answer is the client's. At the end
 * of DATA the message — our prefix, then the body from the spool (memory
 * or its mapping, never a second copy) with every line ending sent as
 * CRLF and dots stuffed — goes upstream and the upstream's reply becomes
 * the client's: 250 only after the upstream's 250.
 *
 * A bare CR or LF in the body is sent as CRLF, so no line end a lenient
 * upstream might see is one we did not dot-stuff (the upstream half of
 * CVE-2023-51764, "SMTP smuggling").
 *
 * LMTP answers DATA once per recipient: a route over LMTP takes one
 * recipient per transaction (452 4.5.3 for more: the client sends them
 * again), so that the client's one reply is never half true.
 *
 * A finished transaction leaves the connection in this loop thread's
 * cache for reuse_time seconds; the next transaction to the same upstream
 * takes it (XCLIENT again names its client).
 */
#include "config.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <confuse.h>
#include <arpa/inet.h>
#include <stdarg.h>

#include "backends/backends.h"
#include "lib/metrics.h"

#define RELAY_CAP_8BITMIME 0x01u
#define RELAY_CAP_SIZE 0x02u
#define RELAY_CAP_STARTTLS 0x04u
#define RELAY_CAP_XCLIENT 0x08u
#define RELAY_CAP_XFORWARD 0x10u
#define RELAY_CAP_ENHANCED 0x20u
#define RELAY_CAP_SMTPUTF8 0x40u
#define RELAY_REPLY_MAX 4096 /* octets of one reply line we read */
#define RELAY_CHUNK 65536

struct relay {
	struct backend hdr; /* must be first */
	char *name;
	int protocol;
	struct backends_upstream *ups; /* by priority, stable */
	size_t n_ups;
	int starttls;
	bool xclient, xforward;
	char *helo_name;
	char *verify_name;
	long connect_timeout, command_timeout, data_timeout, reuse_time;
	long size_max;      /* ours: limits.message_size_max */
	SSL_CTX *ssl_ctx;   /* client side, NULL with starttls = off */
};

/* ------------------------------------------------ what upstreams offer */
/* Learned from every EHLO an upstream answers (and probed at start), kept
 * across reloads: the EHLO we give clients offers what the route's
 * upstreams take. */
struct relay_caps {
	char key[300];
	unsigned caps;
	unsigned long long size; /* 0 = no limit given */
};
static pthread_mutex_t caps_lock = PTHREAD_MUTEX_INITIALIZER;
static struct relay_caps caps_cache[64];
static size_t n_caps_cache;

static void
caps_store(const char *key, unsigned caps, unsigned long long size)
{
	pthread_mutex_lock(&caps_lock);
	size_t i;
	for (i = 0; i < n_caps_cache; i++) {
		if (strcmp(caps_cache[i].key, key) == 0)
			break;
	}
	if (i == n_caps_cache) {
		if (n_caps_cache == N_ELEMENTS(caps_cache))
			i = 0; /* full: forget the oldest */
		else
			n_caps_cache++;
		str_copy(caps_cache[i].key, key, sizeof(caps_cache[i].key));
	}
	caps_cache[i].caps = caps;
	caps_cache[i].size = size;
	pthread_mutex_unlock(&caps_lock);
}

static bool
caps_find(const char *key, unsigned *caps_r, unsigned long long *size_r)
{
	bool found = false;

	pthread_mutex_lock(&caps_lock);
	for (size_t i = 0; i < n_caps_cache && !found; i++) {
		if (strcmp(caps_cache[i].key, key) == 0) {
			*caps_r = caps_cache[i].caps;
			*size_r = caps_cache[i].size;
			found = true;
		}
	}
	pthread_mutex_unlock(&caps_lock);
	return found;
}

/* One EHLO keyword line (without the code) into caps. */
static void
caps_parse_line(const char *line, unsigned *caps, unsigned long long *size, char *xclient_attrs,
		size_t xa_size)
{
	if (strcasecmp(line, "8BITMIME") == 0) {
		*caps |= RELAY_CAP_8BITMIME;
	} else if (strncasecmp(line, "SIZE", 4) == 0 && (line[4] == '\0' || line[4] == ' ')) {
		*caps |= RELAY_CAP_SIZE;
		*size = strtoull(line + 4, NULL, 10);
	} else if (strcasecmp(line, "STARTTLS") == 0) {
		*caps |= RELAY_CAP_STARTTLS;
	} else if (strncasecmp(line, "XCLIENT", 7) == 0 && (line[7] == '\0' || line[7] == ' ')) {
		*caps |= RELAY_CAP_XCLIENT;
		if (xclient_attrs != NULL)
			str_copy(xclient_attrs, line + 7, xa_size);
	} else if (strncasecmp(line, "XFORWARD", 8) == 0 && (line[8] == '\0' || line[8] == ' ')) {
		*caps |= RELAY_CAP_XFORWARD;
	} else if (strcasecmp(line, "ENHANCEDSTATUSCODES") == 0) {
		*caps |= RELAY_CAP_ENHANCED;
	} else if (strcasecmp(line, "SMTPUTF8") == 0) {
		*caps |= RELAY_CAP_SMTPUTF8;
	}
}

/* ---------------------------------------------------- reply reading */


/* ------------------------------------------------ upstream connection */

enum upconn_step {
	UP_CONNECT, UP_GREETING, UP_EHLO, UP_HELO, UP_STARTTLS, UP_TLS_EHLO, UP_XCLIENT,
	UP_XCLIENT_EHLO, UP_XFORWARD, UP_MAIL, UP_READY, UP_RCPT, UP_RSET_REPLAY, UP_MAIL_REPLAY,
	UP_RCPT_REPLAY, UP_DATA, UP_DATA_SEND, UP_DATA_REPLY, UP_RSET, UP_IDLE, UP_QUIT
};

struct relay_tx;

struct upconn {
	struct upconn *next, *prev;  /* this thread's list of connections */
	struct bufferevent *bev;
	struct event_base *base;
	char *key;                   /* the upstream's key + TLS mode: what may reuse it */
	char *host;                  /* for TLS name checks */
	enum upconn_step step;
	bool lmtp, tls, reused, got_reply;
	unsigned caps;
	unsigned long long size_limit;
	char xclient_attrs[256];
	struct smtp_reply reply;    /* being read */
	struct relay_tx *owner;      /* NULL while idle */
	struct event *idle_ev;
	long command_timeout, data_timeout;
};

static __thread struct upconn *thread_conns;
/* the connection whose replies are being read: NULL once it was freed */
static __thread struct upconn *reading;

static void
upconn_link(struct upconn *c)
{
	c->next = thread_conns;
	c->prev = NULL;
	if (thread_conns != NULL)
		thread_conns->prev = c;
	thread_conns = c;
}

static void
upconn_free(struct upconn *c)
{
	if (c == NULL)
		return;
	if (reading == c)
		reading = NULL;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else if (thread_conns == c)
		thread_conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	if (c->idle_ev != NULL)
		event_free(c->idle_ev);
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	free(c->key);
	free(c->host);
	free(c);
}

/* ---------------------------------------------------------- transaction */

struct relay_tx {
	struct relay *relay;          /* NULL once the transaction ended */
	struct event_base *base;
	char *id, *from, *client_addr, *helo;
	unsigned client_port;
	bool esmtp, client_tls, body_8bit;
	uint64_t size;
	struct upconn *conn;
	size_t host;                  /* the upstream being tried */
	bool failed;                  /* no upstream session: fail is the answer */
	struct backend_reply fail;
	bool mail_ok;                 /* MAIL accepted upstream */
	/* the RCPT being asked (one at a time) */
	bool rcpt_waiting;
	char *rcpt_addr;
	backend_rcpt_cb *rcpt_cb;
	void *rcpt_ctx;
	/* recipients the upstream accepted (and whether a stage dropped one) */
	char **accepted;
	size_t n_accepted;
	bool trimmed;
	size_t replay_i;
	/* DATA */
	bool data_running;
	backend_done_cb *done;
	void *done_ctx;
	struct msgbody *body;
	char *prefix;
	size_t prefix_len;
	const char *src;              /* the bytes being sent: prefix, then body */
	size_t src_len, src_off;
	int part;                     /* 0 prefix, 1 body, 2 done */
	bool bol, pending_cr;
	char *authserv_id;            /* msg_forged_next's, or NULL */
	size_t skip[2], skip_pos;     /* the next field the sender may not bring */
	bool skip_more;
	size_t lmtp_left;             /* LMTP replies still to read */
	struct backend_reply data_reply;
};

static void relay_step(struct upconn *c);
static void relay_next_host(struct relay_tx *rt, const char *why);
static void relay_rcpt_send(struct relay_tx *rt);
static void relay_conn_release(struct relay_tx *rt);

static void
up_send(struct upconn *c, const char *fmt, ...) ATTR_PRINTF(2, 3);

static void
up_send(struct upconn *c, const char *fmt, ...)
{
	va_list ap;
	struct evbuffer *out = bufferevent_get_output(c->bev);

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
	smtp_reply_reset(&c->reply);
}

static void
up_timeouts(struct upconn *c, long secs)
{
	struct timeval tv = { secs, 0 };

	bufferevent_set_timeouts(c->bev, &tv, &tv);
}

/* The upstream's words for the client: its enhanced code, or one made
 * from the reply class. */
static void
reply_for_client(const struct smtp_reply *r, struct backend_reply *out, const char *dflt_enh)
{
	char enh[16];

	if (r->enhanced[0] != '\0')
		str_copy(enh, r->enhanced, sizeof(enh));
	else
		snprintf(enh, sizeof(enh), "%u.%s", r->code / 100, dflt_enh);
	backend_reply_set(out, r->code, enh, r->code / 100 == 2 ? "" : "upstream", "%s",
			  r->text[0] != '\0' ? r->text : (r->code / 100 == 2 ? "Ok" : "Refused"));
}

static void
relay_fail_reply(struct backend_reply *r, const struct relay *relay, const char *why)
{
	backend_reply_set(r, 451, "4.4.1", "upstream_unavailable",
			  "Upstream unavailable (route %s: %s); try again later",
			  relay != NULL ? relay->name : "-", why);
}

/* xtext (RFC 3461) for XCLIENT/XFORWARD values. */
static void
xtext(const char *in, char *out, size_t outsz)
{
	size_t o = 0;

	for (; *in != '\0' && o + 4 < outsz; in++) {
		unsigned char ch = (unsigned char)*in;
		if (ch < 33 || ch > 126 || ch == '+' || ch == '=')
			o += (size_t)snprintf(out + o, outsz - o, "+%02X", ch);
		else
			out[o++] = (char)ch;
	}
	out[o] = '\0';
}

/* --------------------------------------------------------- the RCPT side */

/* A recipient the upstream took that will not get the message: the
 * upstream transaction is given again without it before DATA. */
static void
relay_drop_one(struct relay_tx *rt, const struct backend_rcpt *r)
{
	for (size_t i = 0; i < rt->n_accepted; i++) {
		if (strcmp(rt->accepted[i], r->address) == 0) {
			free(rt->accepted[i]);
			rt->accepted[i] = rt->accepted[--rt->n_accepted];
			rt->trimmed = true;
			return;
		}
	}
}

/* Answer the RCPT being asked; the asker may be gone (returns false). */
static void
relay_rcpt_answer(struct relay_tx *rt, const struct backend_reply *reply)
{
	struct backend_rcpt rcpt;
	char *addr = rt->rcpt_addr;
	backend_rcpt_cb *cb = rt->rcpt_cb;
	void *ctx = rt->rcpt_ctx;
	bool ok = reply->code / 100 == 2;

	rt->rcpt_waiting = false;
	rt->rcpt_addr = NULL;
	memset(&rcpt, 0, sizeof(rcpt));
	if (ok) {
		rcpt.address = xstrdup(addr);
		rcpt.mailbox = xstrdup(addr);
		rcpt.where = xstrdup(rt->relay->name);
	}
	if (ok) {
		/* before the callback: the asker may drop() it at once (a stage) */
		rt->accepted = xrealloc(rt->accepted, (rt->n_accepted + 1) * sizeof(*rt->accepted));
		rt->accepted[rt->n_accepted++] = xstrdup(addr);
	}
	bool taken = cb(ctx, reply, &rcpt);
	if (ok && !taken && rt->relay != NULL) {
		struct backend_rcpt gone = { .address = addr };
		relay_drop_one(rt, &gone);
	}
	backend_rcpt_clear(&rcpt);
	free(addr);
}

/* ------------------------------------------------------------ DATA side */

/* Append src[*off..] to out as SMTP data: CRLF line ends, dots stuffed. */
static size_t
relay_encode(struct relay_tx *rt, struct evbuffer *out, size_t max)
{
	char buf[RELAY_CHUNK * 2 + 8];
	size_t o = 0;

	while (rt->src_off < rt->src_len && o < sizeof(buf) - 8 && o < max) {
		if (rt->part == 1 && rt->skip_more && rt->src_off == rt->skip[0]) {
			/* a sender's X-Spam-* field, a forged Authentication-Results: left out */
			rt->src_off = rt->skip[1];
			rt->skip_more = msg_forged_next(rt->src, rt->src_len, rt->authserv_id,
							&rt->skip_pos, rt->skip);
			continue;
		}
		char ch = rt->src[rt->src_off];
		if (rt->pending_cr) {
			rt->pending_cr = false;
			buf[o++] = '\r';
			buf[o++] = '\n';
			rt->bol = true;
			if (ch == '\n') {
				rt->src_off++;
				continue;
			}
		}
		rt->src_off++;
		if (ch == '\r') {
			rt->pending_cr = true;
			continue;
		}
		if (ch == '\n') {
			buf[o++] = '\r';
			buf[o++] = '\n';
			rt->bol = true;
			continue;
		}
		if (rt->bol && ch == '.')
			buf[o++] = '.';
		buf[o++] = ch;
		rt->bol = false;
	}
	evbuffer_add(out, buf, o);
	return o;
}

static void
relay_data_feed(struct upconn *c)
{
	struct relay_tx *rt = c->owner;
	struct evbuffer *out = bufferevent_get_output(c->bev);

	while (evbuffer_get_length(out) < RELAY_CHUNK && rt->part < 2) {
		if (rt->src_off == rt->src_len) {
			if (rt->part == 0) {
				size_t len = 0;
				rt->part = 1;
				rt->src = msgbody_contents(rt->body, &len);
				rt->src_len = rt->src != NULL ? len : 0;
				rt->src_off = 0;
				rt->skip_pos = 0;
				rt->skip_more = rt->src != NULL &&
						msg_forged_next(rt->src, rt->src_len, rt->authserv_id,
								&rt->skip_pos, rt->skip);
				continue;
			}
			/* the end: a line end if the last one lacked it, then the dot */
			if (rt->pending_cr || !rt->bol)
				evbuffer_add(out, "\r\n", 2);
			rt->pending_cr = false;
			evbuffer_add(out, ".\r\n", 3);
			rt->part = 2;
			c->step = UP_DATA_REPLY;
			smtp_reply_reset(&c->reply);
			break;
		}
		relay_encode(rt, out, RELAY_CHUNK);
	}
}

static bool
relay_has_8bit(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)p[i] & 0x80)
			return true;
	}
	return false;
}

static void
relay_data_finish(struct relay_tx *rt, const struct backend_reply *reply, const char *detail)
{
	backend_done_cb *done = rt->done;
	void *ctx = rt->done_ctx;

	rt->data_running = false;
	rt->done = NULL;
	msgbody_unref(&rt->body);
	free(rt->prefix);
	rt->prefix = NULL;
	free(rt->authserv_id);
	rt->authserv_id = NULL;
	done(ctx, reply, detail);
}

static void
relay_data_start(struct relay_tx *rt)
{
	struct upconn *c = rt->conn;

	if (rt->trimmed) {
		/* a stage refused a recipient the upstream took: the upstream
		 * transaction is begun again with the kept ones */
		rt->trimmed = false;
		c->step = UP_RSET_REPLAY;
		up_timeouts(c, c->command_timeout);
		up_send(c, "RSET");
		return;
	}
	c->step = UP_DATA;
	up_timeouts(c, c->command_timeout);
	up_send(c, "DATA");
}

/* ----------------------------------------------------- the conversation */

/* The route's upstream health for /metrics: "upstream:NAME". */
static void
relay_health(const char *route, bool up)
{
	char dep[96];

	snprintf(dep, sizeof(dep), "upstream:%s", route);
	metrics_dependency(dep, up);
}

static void
upconn_lost(struct upconn *c, const char *why)
{
	struct relay_tx *rt = c->owner;

	if (rt == NULL) {
		upconn_free(c);
		return;
	}
	log_msg(LOG_LEVEL_DEBUG, "%s route %s: upstream connection lost at step %d: %s", rt->id,
		rt->relay->name, (int)c->step, why);
	rt->conn = NULL;
	c->owner = NULL;
	bool reused_first = c->reused && !c->got_reply;
	enum upconn_step step = c->step;
	upconn_free(c);
	if (!(step <= UP_MAIL && reused_first))
		relay_health(rt->relay->name, false);
	if (step <= UP_MAIL && reused_first) {
		/* a cached connection the upstream had closed: a fresh one */
		rt->host = 0;
		relay_next_host(rt, NULL);
		return;
	}
	if (step <= UP_MAIL) {
		relay_next_host(rt, why);
		return;
	}
	/* the upstream knows of this transaction: no second host for it */
	rt->failed = true;
	backend_reply_set(&rt->fail, 451, "4.4.2", "upstream_lost",
			  "Upstream connection lost (route %s); try again later", rt->relay->name);
	if (rt->data_running) {
		relay_data_finish(rt, &rt->fail, why);
		return;
	}
	if (rt->rcpt_waiting)
		relay_rcpt_answer(rt, &rt->fail);
}

static void
upconn_ehlo(struct upconn *c, struct relay_tx *rt)
{
	c->caps = 0;
	c->size_limit = 0;
	c->xclient_attrs[0] = '\0';
	up_send(c, "%s %s", c->lmtp ? "LHLO" : "EHLO", rt->relay->helo_name);
}

/* After the EHLO that counts: XCLIENT, else XFORWARD, then MAIL. */
static void
relay_after_ehlo(struct upconn *c)
{
	struct relay_tx *rt = c->owner;
	const struct relay *relay = rt->relay;
	char addr[200], helo[600], name[] = "[UNAVAILABLE]";

	caps_store(c->key, c->caps, c->size_limit);
	xtext(rt->client_addr, addr, sizeof(addr));
	xtext(rt->helo, helo, sizeof(helo));
	if (c->step != UP_XCLIENT_EHLO && relay->xclient && (c->caps & RELAY_CAP_XCLIENT)) {
		char cmd[1024];
		size_t o = (size_t)snprintf(cmd, sizeof(cmd), "XCLIENT");
		const char *a = c->xclient_attrs;
		/* only the attributes the upstream named */
		if (strcasestr(a, "NAME") != NULL)
			o += (size_t)snprintf(cmd + o, sizeof(cmd) - o, " NAME=%s", name);
		if (strcasestr(a, "ADDR") != NULL)
			o += (size_t)snprintf(cmd + o, sizeof(cmd) - o, " ADDR=%s", addr);
		if (strcasestr(a, "PORT") != NULL)
			o += (size_t)snprintf(cmd + o, sizeof(cmd) - o, " PORT=%u", rt->client_port);
		if (strcasestr(a, "HELO") != NULL && rt->helo[0] != '\0')
			o += (size_t)snprintf(cmd + o, sizeof(cmd) - o, " HELO=%s", helo);
		if (strcasestr(a, "PROTO") != NULL)
			o += (size_t)snprintf(cmd + o, sizeof(cmd) - o, " PROTO=%s",
					      rt->esmtp ? "ESMTP" : "SMTP");
		(void)o;
		c->step = UP_XCLIENT;
		up_send(c, "%s", cmd);
		return;
	}
	if (c->step != UP_XCLIENT_EHLO && relay->xforward && (c->caps & RELAY_CAP_XFORWARD)) {
		c->step = UP_XFORWARD;
		up_send(c, "XFORWARD NAME=%s ADDR=%s PORT=%u HELO=%s PROTO=%s SOURCE=REMOTE IDENT=%s",
			name, addr, rt->client_port, rt->helo[0] ? helo : "[UNAVAILABLE]",
			rt->esmtp ? "ESMTP" : "SMTP", rt->id);
		return;
	}
	c->step = UP_MAIL;
	if (rt->body_8bit && !(c->caps & RELAY_CAP_8BITMIME)) {
		/* refuse at RCPT in clear words rather than mangle the message */
		rt->failed = true;
		backend_reply_set(&rt->fail, 550, "5.6.3", "upstream_7bit",
				  "The destination does not accept 8-bit mail (BODY=8BITMIME)");
		c->step = UP_READY;
		if (rt->rcpt_waiting)
			relay_rcpt_answer(rt, &rt->fail);
		return;
	}
	char params[96] = "";
	size_t o = 0;
	if (rt->body_8bit)
		o += (size_t)snprintf(params + o, sizeof(params) - o, " BODY=8BITMIME");
	if (rt->size > 0 && (c->caps & RELAY_CAP_SIZE))
		o += (size_t)snprintf(params + o, sizeof(params) - o, " SIZE=%llu",
				      (unsigned long long)rt->size);
	(void)o;
	up_send(c, "MAIL FROM:<%s>%s", rt->from, params);
}

static void
relay_tls_start(struct upconn *c)
{
	struct relay_tx *rt = c->owner;
	const struct relay *relay = rt->relay;
	SSL *ssl = SSL_new(relay->ssl_ctx);
	const char *name = relay->verify_name[0] != '\0' ? relay->verify_name : c->host;
	struct bufferevent *tls;

	if (ssl == NULL) {
		upconn_lost(c, "TLS setup failed");
		return;
	}
	if (name[0] != '\0') {
		struct in6_addr a6;
		struct in_addr a4;
		bool literal = inet_pton(AF_INET, name, &a4) == 1 || inet_pton(AF_INET6, name, &a6) == 1;
		if (!literal)
			SSL_set_tlsext_host_name(ssl, name);
		if (relay->starttls == ROUTE_TLS_REQUIRED) {
			X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
			if (literal)
				X509_VERIFY_PARAM_set1_ip_asc(vp, name);
			else
				SSL_set1_host(ssl, name);
		}
	}
	tls = bufferevent_openssl_filter_new(c->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
					     BEV_OPT_CLOSE_ON_FREE);
	if (tls == NULL) {
		SSL_free(ssl);
		upconn_lost(c, "TLS setup failed");
		return;
	}
	c->bev = tls;
	c->tls = true;
	c->step = UP_TLS_EHLO;
	relay_step(c); /* sets callbacks again, sends EHLO inside TLS */
}

static void up_read_cb(struct bufferevent *bev, void *arg);
static void up_write_cb(struct bufferevent *bev, void *arg);
static void up_event_cb(struct bufferevent *bev, short what, void *arg);

/* Sends what the step after `c->step` needs (a fresh connection, TLS). */
static void
relay_step(struct upconn *c)
{
	struct relay_tx *rt = c->owner;

	bufferevent_setcb(c->bev, up_read_cb, up_write_cb, up_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, RELAY_CHUNK / 2, 0);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (c->step == UP_TLS_EHLO) {
		up_timeouts(c, c->command_timeout);
		upconn_ehlo(c, rt);
	}
}

/* One complete reply for the step c->step. */
static void
relay_on_reply(struct upconn *c, const struct smtp_reply *r)
{
	struct relay_tx *rt = c->owner;
	unsigned cls = r->code / 100;
	struct backend_reply br;
	char why[400];

	c->got_reply = true;
	if (rt == NULL) {
		/* idle or resetting for the cache */
		if (c->step == UP_RSET && cls == 2) {
			c->step = UP_IDLE;
			return;
		}
		upconn_free(c);
		return;
	}
	snprintf(why, sizeof(why), "%u %s", r->code, r->text);
	switch (c->step) {
	case UP_GREETING:
		if (cls != 2) {
			upconn_lost(c, why);
			return;
		}
		if (c->owner != NULL)
			relay_health(c->owner->relay->name, true);
		c->step = UP_EHLO;
		up_timeouts(c, c->command_timeout);
		upconn_ehlo(c, rt);
		return;
	case UP_EHLO:
		if (cls != 2 && !c->lmtp) {
			c->step = UP_HELO;
			up_send(c, "HELO %s", rt->relay->helo_name);
			return;
		}
		/* fall through */
	case UP_HELO:
	case UP_TLS_EHLO:
	case UP_XCLIENT_EHLO:
		if (cls != 2) {
			upconn_lost(c, why);
			return;
		}
		if (c->step != UP_TLS_EHLO && c->step != UP_XCLIENT_EHLO && !c->tls &&
		    rt->relay->starttls != ROUTE_TLS_OFF) {
			if (c->caps & RELAY_CAP_STARTTLS) {
				c->step = UP_STARTTLS;
				up_send(c, "STARTTLS");
				return;
			}
			if (rt->relay->starttls == ROUTE_TLS_REQUIRED) {
				upconn_lost(c, "no STARTTLS offered (starttls = required)");
				return;
			}
		}
		relay_after_ehlo(c);
		return;
	case UP_STARTTLS:
		if (cls != 2) {
			if (rt->relay->starttls == ROUTE_TLS_REQUIRED) {
				upconn_lost(c, why);
				return;
			}
			relay_after_ehlo(c);
			return;
		}
		relay_tls_start(c);
		return;
	case UP_XCLIENT:
		if (cls != 2) {
			/* refused: the session is as it was; go on without */
			log_msg(LOG_LEVEL_WARN, "%s route %s: XCLIENT refused: %s", rt->id,
				rt->relay->name, why);
			c->step = UP_XCLIENT_EHLO;
			relay_after_ehlo(c);
			return;
		}
		/* XCLIENT answers with a new greeting: EHLO again */
		c->step = UP_XCLIENT_EHLO;
		upconn_ehlo(c, rt);
		return;
	case UP_XFORWARD:
		if (cls != 2)
			log_msg(LOG_LEVEL_WARN, "%s route %s: XFORWARD refused: %s", rt->id,
				rt->relay->name, why);
		c->step = UP_XCLIENT_EHLO; /* so that MAIL comes next */
		relay_after_ehlo(c);
		return;
	case UP_MAIL:
		c->step = UP_READY;
		if (cls != 2) {
			/* the upstream refused the sender: every RCPT hears why */
			rt->failed = true;
			reply_for_client(r, &rt->fail, "1.0");
			str_copy(rt->fail.reason, "upstream_mail", sizeof(rt->fail.reason));
		} else {
			rt->mail_ok = true;
		}
		if (rt->rcpt_waiting) {
			if (rt->failed)
				relay_rcpt_answer(rt, &rt->fail);
			else
				relay_rcpt_send(rt);
		}
		return;
	case UP_RCPT:
		c->step = UP_READY;
		reply_for_client(r, &br, cls == 2 ? "1.5" : "1.0");
		relay_rcpt_answer(rt, &br);
		return;
	case UP_RSET_REPLAY:
		if (cls != 2)
			goto replay_failed;
		c->step = UP_MAIL_REPLAY;
		up_send(c, "MAIL FROM:<%s>%s", rt->from, rt->body_8bit ? " BODY=8BITMIME" : "");
		return;
	case UP_MAIL_REPLAY:
		if (cls != 2)
			goto replay_failed;
		rt->replay_i = 0;
		/* fall through */
	case UP_RCPT_REPLAY:
		if (c->step == UP_RCPT_REPLAY && cls != 2)
			goto replay_failed;
		if (rt->replay_i < rt->n_accepted) {
			c->step = UP_RCPT_REPLAY;
			up_send(c, "RCPT TO:<%s>", rt->accepted[rt->replay_i++]);
			return;
		}
		c->step = UP_DATA;
		up_send(c, "DATA");
		return;
	case UP_DATA:
		if (cls != 3) {
			c->step = UP_READY;
			reply_for_client(r, &br, "0.0");
			relay_data_finish(rt, &br, why);
			return;
		}
		c->step = UP_DATA_SEND;
		up_timeouts(c, c->data_timeout);
		rt->part = 0;
		rt->src = rt->prefix;
		rt->src_len = rt->prefix_len;
		rt->src_off = 0;
		rt->bol = true;
		rt->pending_cr = false;
		rt->lmtp_left = c->lmtp ? rt->n_accepted : 1;
		relay_data_feed(c);
		return;
	case UP_DATA_REPLY:
		/* LMTP: one per recipient (one recipient per transaction here) */
		if (rt->lmtp_left-- > 1) {
			if (rt->data_reply.code == 0 || cls != 2)
				reply_for_client(r, &rt->data_reply, "0.0");
			return;
		}
		if (rt->data_reply.code == 0 || cls != 2)
			reply_for_client(r, &rt->data_reply, "0.0");
		c->step = UP_READY;
		rt->mail_ok = false;
		br = rt->data_reply;
		if (br.code / 100 == 2)
			metrics_add(METRIC_MESSAGES_RELAYED, 1);
		relay_data_finish(rt, &br, br.code / 100 == 2 ? "" : why);
		return;
	default:
		upconn_lost(c, "unexpected reply");
		return;
	}
replay_failed:
	c->step = UP_READY;
	reply_for_client(r, &br, "0.0");
	if (br.code / 100 == 2)
		backend_reply_set(&br, 451, "4.4.2", "upstream", "Upstream refused the replayed "
				  "transaction; try again later");
	relay_data_finish(rt, &br, why);
}

static void
up_read_cb(struct bufferevent *bev, void *arg)
{
	struct upconn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	for (;;) {
		size_t len;
		char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
		if (line == NULL) {
			if (evbuffer_get_length(in) > RELAY_REPLY_MAX) {
				upconn_lost(c, "reply line too long");
				return;
			}
			return;
		}
		if (c->step == UP_IDLE) {
			free(line); /* a 421 of an idle connection, or noise */
			upconn_free(c);
			return;
		}
		const char *text;
		enum smtp_reply_status st = smtp_reply_feed(&c->reply, line, len, &text);
		if (st == SMTP_REPLY_BAD) {
			free(line);
			upconn_lost(c, "malformed reply");
			return;
		}
		bool last = st == SMTP_REPLY_DONE;
		if (c->step == UP_EHLO || c->step == UP_TLS_EHLO || c->step == UP_XCLIENT_EHLO) {
			if (c->reply.lines > 1)
				caps_parse_line(text, &c->caps, &c->size_limit, c->xclient_attrs,
						sizeof(c->xclient_attrs));
		}
		free(line);
		if (last) {
			/* the next reply starts afresh (LMTP sends several) */
			struct smtp_reply done = c->reply;
			smtp_reply_reset(&c->reply);
			reading = c;
			relay_on_reply(c, &done);
			if (reading != c)
				return; /* freed by what the reply did */
			reading = NULL;
		}
	}
}

static void
up_write_cb(struct bufferevent *bev, void *arg)
{
	struct upconn *c = arg;

	(void)bev;
	if (c->step == UP_DATA_SEND && c->owner != NULL)
		relay_data_feed(c);
}

static void
up_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct upconn *c = arg;
	char why[256];

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		if (c->step == UP_CONNECT) {
			c->step = UP_GREETING;
			up_timeouts(c, c->command_timeout);
		}
		return;
	}
	if (what & BEV_EVENT_TIMEOUT)
		snprintf(why, sizeof(why), "timed out");
	else if (what & BEV_EVENT_EOF)
		snprintf(why, sizeof(why), "connection closed by the upstream");
	else {
		unsigned long e = bufferevent_get_openssl_error(bev);
		if (e != 0)
			snprintf(why, sizeof(why), "TLS: %s", ERR_reason_error_string(e));
		else
			snprintf(why, sizeof(why), "%s", strerror(EVUTIL_SOCKET_ERROR()));
	}
	upconn_lost(c, why);
}

/* --------------------------------------------------- connecting, reuse */

static void
idle_expire(evutil_socket_t fd, short what, void *arg)
{
	struct upconn *c = arg;

	(void)fd;
	(void)what;
	if (c->step == UP_IDLE)
		up_send(c, "QUIT");
	upconn_free(c);
}

/* The transaction lets go of its connection: into the cache when clean. */
static void
relay_conn_release(struct relay_tx *rt)
{
	struct upconn *c = rt->conn;
	long reuse = rt->relay != NULL ? rt->relay->reuse_time : 0;

	if (c == NULL)
		return;
	rt->conn = NULL;
	c->owner = NULL;
	if (c->step != UP_READY || reuse == 0) {
		upconn_free(c);
		return;
	}
	if (rt->mail_ok) {
		c->step = UP_RSET; /* a transaction that ended without DATA */
		up_send(c, "RSET");
	} else {
		c->step = UP_IDLE;
	}
	struct timeval tv = { reuse, 0 };
	bufferevent_set_timeouts(c->bev, NULL, NULL);
	c->idle_ev = evtimer_new(c->base, idle_expire, c);
	evtimer_add(c->idle_ev, &tv);
}

static bool
relay_take_cached(struct relay_tx *rt, const char *key)
{
	for (struct upconn *c = thread_conns; c != NULL; c = c->next) {
		if (c->owner == NULL && c->step == UP_IDLE && c->base == rt->base &&
		    strcmp(c->key, key) == 0) {
			event_free(c->idle_ev);
			c->idle_ev = NULL;
			c->owner = rt;
			c->reused = true;
			c->got_reply = false;
			rt->conn = c;
			up_timeouts(c, c->command_timeout);
			relay_step(c);
			/* the session is greeted and clean: name the client again */
			c->step = UP_EHLO;
			relay_after_ehlo(c);
			return true;
		}
	}
	return false;
}

/* Where an upstream is: its unix socket, or its host resolved (numeric
 * service). 0, or -1 with why. */
static int
upstream_address(const struct backends_upstream *u, struct sockaddr_storage *ss, socklen_t *len_r,
		 char *why, size_t wsz)
{
	memset(ss, 0, sizeof(*ss));
	if (u->path != NULL) {
		struct sockaddr_un *sun = (struct sockaddr_un *)ss;
		sun->sun_family = AF_UNIX;
		str_copy(sun->sun_path, u->path, sizeof(sun->sun_path));
		*len_r = sizeof(*sun);
		return 0;
	}
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	int rc = getaddrinfo(u->host, u->port, &hints, &res);
	if (rc != 0 || res == NULL) {
		snprintf(why, wsz, "%s: %s", u->key, gai_strerror(rc));
		return -1;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len_r = (socklen_t)res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static char *
relay_conn_key(const struct relay *relay, const struct backends_upstream *u)
{
	return xasprintf("%s %s tls=%d", relay->protocol == ROUTE_LMTP ? "lmtp" : "smtp", u->key,
			 relay->starttls);
}

static bool
relay_connect(struct relay_tx *rt, const struct backends_upstream *u, char *why, size_t wsz)
{
	const struct relay *relay = rt->relay;
	struct upconn *c = xcalloc(1, sizeof(*c));
	struct sockaddr_storage ss;
	socklen_t sl = 0;

	c->key = relay_conn_key(relay, u);
	if (relay_take_cached(rt, c->key)) {
		free(c->key);
		free(c);
		return true;
	}
	if (upstream_address(u, &ss, &sl, why, wsz) < 0) {
		free(c->key);
		free(c);
		return false;
	}
	c->base = rt->base;
	c->host = xstrdup(u->host);
	c->lmtp = relay->protocol == ROUTE_LMTP;
	c->command_timeout = relay->command_timeout;
	c->data_timeout = relay->data_timeout;
	c->owner = rt;
	c->step = UP_CONNECT;
	c->bev = bufferevent_socket_new(rt->base, -1, BEV_OPT_CLOSE_ON_FREE);
	upconn_link(c);
	rt->conn = c;
	bufferevent_setcb(c->bev, up_read_cb, up_write_cb, up_event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, RELAY_CHUNK / 2, 0);
	up_timeouts(c, relay->connect_timeout);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ss, (int)sl) < 0) {
		snprintf(why, wsz, "%s: connect: %s", u->key, strerror(errno));
		rt->conn = NULL;
		upconn_free(c);
		return false;
	}
	return true;
}

/* Try rt->host, then the hosts after it; with none left, fail. */
static void
relay_next_host(struct relay_tx *rt, const char *why)
{
	char buf[400];
	const struct relay *relay = rt->relay;

	if (why != NULL) {
		log_msg(LOG_LEVEL_WARN, "%s route %s: upstream %s: %s", rt->id, relay->name,
			relay->ups[rt->host].key, why);
		rt->host++;
	}
	if (why == NULL && rt->host == 0) {
		/* a cached connection to any of the hosts first */
		for (size_t i = 0; i < relay->n_ups; i++) {
			char *key = relay_conn_key(relay, &relay->ups[i]);
			bool taken = relay_take_cached(rt, key);
			free(key);
			if (taken) {
				rt->host = i;
				return;
			}
		}
	}
	while (rt->host < relay->n_ups) {
		buf[0] = '\0';
		if (relay_connect(rt, &relay->ups[rt->host], buf, sizeof(buf)))
			return;
		log_msg(LOG_LEVEL_WARN, "%s route %s: %s", rt->id, relay->name, buf);
		rt->host++;
	}
	rt->failed = true;
	relay_fail_reply(&rt->fail, relay, why != NULL ? why : buf);
	if (rt->rcpt_waiting)
		relay_rcpt_answer(rt, &rt->fail);
}

/* ------------------------------------------------------------ the ops */

static void
relay_tx_begin(struct backend_tx *tx)
{
	struct relay_tx *rt = xcalloc(1, sizeof(*rt));

	rt->relay = (struct relay *)tx->be;
	rt->base = tx->env.base;
	rt->id = xstrdup(tx->id);
	rt->from = xstrdup(tx->from);
	rt->client_addr = xstrdup(tx->client_addr);
	rt->helo = xstrdup(tx->helo);
	rt->client_port = tx->client_port;
	rt->esmtp = tx->esmtp;
	rt->client_tls = tx->tls;
	rt->body_8bit = tx->body_8bit;
	rt->size = tx->size;
	tx->priv = rt;
	relay_next_host(rt, NULL);
}

static void
relay_rcpt_send(struct relay_tx *rt)
{
	rt->conn->step = UP_RCPT;
	up_send(rt->conn, "RCPT TO:<%s>", rt->rcpt_addr);
}

static enum backend_status
relay_rcpt(struct backend_tx *tx, const char *local, const char *domain,
	   struct backend_rcpt *rcpt, struct backend_reply *reply, backend_rcpt_cb *cb, void *ctx)
{
	struct relay_tx *rt = tx->priv;
	const struct relay *relay = rt->relay;

	if (rt->failed) {
		*reply = rt->fail;
		return BACKEND_DONE;
	}
	if (relay->protocol == ROUTE_LMTP && rt->n_accepted > 0) {
		/* LMTP answers DATA per recipient; the client hears one reply */
		backend_reply_set(reply, 452, "4.5.3", "lmtp_one_recipient",
				  "<%s@%s>: Too many recipients: send this one in another "
				  "transaction", local, domain);
		return BACKEND_DONE;
	}
	(void)rcpt;
	rt->rcpt_waiting = true;
	rt->rcpt_addr = xasprintf("%s@%s", local, domain);
	rt->rcpt_cb = cb;
	rt->rcpt_ctx = ctx;
	if (rt->conn != NULL && rt->conn->step == UP_READY)
		relay_rcpt_send(rt);
	/* else MAIL's answer sends it */
	return BACKEND_PENDING;
}

static void
relay_drop(struct backend_tx *tx, const struct backend_rcpt *rcpts, size_t n)
{
	struct relay_tx *rt = tx->priv;

	for (size_t k = 0; k < n; k++)
		relay_drop_one(rt, &rcpts[k]);
}

static void
relay_data(struct backend_tx *tx, const struct backend_message *msg, backend_done_cb *done,
	   void *ctx)
{
	struct relay_tx *rt = tx->priv;
	struct backend_reply r;

	if (rt->failed || rt->conn == NULL || rt->conn->step != UP_READY || !rt->mail_ok) {
		if (rt->failed)
			r = rt->fail;
		else
			relay_fail_reply(&r, rt->relay, "no upstream session");
		done(ctx, &r, "");
		return;
	}
	if (!(rt->conn->caps & RELAY_CAP_8BITMIME)) {
		size_t len = 0;
		const char *b = msgbody_contents(msg->body, &len);
		if ((b != NULL && relay_has_8bit(b, len)) || relay_has_8bit(msg->prefix, msg->prefix_len)) {
			backend_reply_set(&r, 554, "5.6.3", "upstream_7bit",
					  "Message has 8-bit content and the destination takes "
					  "7-bit mail only");
			done(ctx, &r, "");
			return;
		}
	}
	rt->data_running = true;
	rt->done = done;
	rt->done_ctx = ctx;
	rt->body = msgbody_ref(msg->body);
	rt->prefix = xstrndup(msg->prefix, msg->prefix_len);
	rt->prefix_len = msg->prefix_len;
	free(rt->authserv_id);
	rt->authserv_id = msg->authserv_id != NULL ? xstrdup(msg->authserv_id) : NULL;
	memset(&rt->data_reply, 0, sizeof(rt->data_reply));
	relay_data_start(rt);
}

static void
relay_tx_free(struct relay_tx *rt)
{
	for (size_t i = 0; i < rt->n_accepted; i++)
		free(rt->accepted[i]);
	free(rt->accepted);
	free(rt->id);
	free(rt->from);
	free(rt->client_addr);
	free(rt->helo);
	free(rt->rcpt_addr);
	free(rt->authserv_id);
	free(rt);
}

/* The transaction ended with its RCPT unanswered (the client left): the
 * upstream session is dropped and the promised answer comes from the
 * loop, not from inside tx_end. */
static void
relay_late_answer(evutil_socket_t fd, short what, void *arg)
{
	struct relay_tx *rt = arg;
	struct backend_reply r;
	struct backend_rcpt rcpt;

	(void)fd;
	(void)what;
	memset(&rcpt, 0, sizeof(rcpt));
	backend_reply_set(&r, 451, "4.4.1", "transaction_ended",
			  "Transaction ended before the upstream answered");
	(void)rt->rcpt_cb(rt->rcpt_ctx, &r, &rcpt);
	relay_tx_free(rt);
}

static void
relay_tx_end(struct backend_tx *tx)
{
	struct relay_tx *rt = tx->priv;
	const struct timeval now = { 0, 0 };

	tx->priv = NULL;
	if (rt->rcpt_waiting) {
		upconn_free(rt->conn);
		rt->conn = NULL;
		rt->relay = NULL;
		event_base_once(rt->base, -1, EV_TIMEOUT, relay_late_answer, rt, &now);
		return;
	}
	relay_conn_release(rt);
	relay_tx_free(rt);
}

/* -------------------------------------------------------- create, EHLO */

static const char *const *
relay_ehlo(const struct backend *be)
{
	static __thread char size_kw[48];
	static __thread const char *kw[3];
	const struct relay *relay = (const struct relay *)be;
	unsigned long long size = (unsigned long long)relay->size_max;
	bool eight = true;
	size_t n = 0;

	for (size_t i = 0; i < relay->n_ups; i++) {
		unsigned caps;
		unsigned long long sz;
		char *key = relay_conn_key(relay, &relay->ups[i]);
		if (caps_find(key, &caps, &sz)) {
			if (!(caps & RELAY_CAP_8BITMIME))
				eight = false;
			if ((caps & RELAY_CAP_SIZE) && sz > 0 && sz < size)
				size = sz;
		}
		free(key);
	}
	snprintf(size_kw, sizeof(size_kw), "SIZE %llu", size);
	kw[n++] = size_kw;
	if (eight)
		kw[n++] = "8BITMIME";
	kw[n] = NULL;
	return kw;
}

/* At start and reload: ask each upstream not heard from yet what it
 * offers (blocking, bounded by connect_timeout; a failure is only logged —
 * the first transaction tries again). */
static void
relay_probe(const struct relay *relay)
{
	for (size_t i = 0; i < relay->n_ups; i++) {
		const struct backends_upstream *u = &relay->ups[i];
		char *key = relay_conn_key(relay, u);
		unsigned caps = 0;
		unsigned long long size = 0;
		if (caps_find(key, &caps, &size)) {
			free(key);
			continue;
		}
		int fd = -1;
		struct sockaddr_storage ss;
		socklen_t sl;
		char why[400] = "";
		struct timeval tv = { relay->connect_timeout < 3 ? relay->connect_timeout : 3, 0 };
		if (upstream_address(u, &ss, &sl, why, sizeof(why)) == 0 &&
		    (fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0) {
			setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
			setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
			if (connect(fd, (struct sockaddr *)&ss, sl) < 0) {
				snprintf(why, sizeof(why), "%s", strerror(errno));
				close(fd);
				fd = -1;
			}
		}
		if (fd < 0) {
			log_msg(LOG_LEVEL_WARN, "route %s: upstream %s not reachable now: %s",
				relay->name, u->key, why[0] != '\0' ? why : strerror(errno));
			free(key);
			continue;
		}
		char buf[8192];
		size_t have = 0;
		bool sent = false, done = false, ok = false;
		while (!done && have < sizeof(buf) - 1) {
			ssize_t k = read(fd, buf + have, sizeof(buf) - 1 - have);
			if (k <= 0)
				break;
			have += (size_t)k;
			buf[have] = '\0';
			/* a complete reply: its last line has a space after the code */
			char *last = buf;
			for (char *p = buf; (p = strstr(p, "\r\n")) != NULL; p += 2) {
				if (p + 2 <= buf + have && p[2] != '\0')
					last = p + 2;
				else
					break;
			}
			if (strstr(buf, "\r\n") == NULL || strlen(last) < 4 || last[3] != ' ' ||
			    strstr(last, "\r\n") == NULL)
				continue;
			if (!sent) {
				if (buf[0] != '2')
					break;
				char cmd[300];
				int l = snprintf(cmd, sizeof(cmd), "%s %s\r\n",
						 relay->protocol == ROUTE_LMTP ? "LHLO" : "EHLO",
						 relay->helo_name);
				if (write(fd, cmd, (size_t)l) != l)
					break;
				sent = true;
				have = 0;
				continue;
			}
			ok = buf[0] == '2';
			done = true;
		}
		if (ok) {
			char *save = NULL;
			bool first = true;
			for (char *line = strtok_r(buf, "\r\n", &save); line != NULL;
			     line = strtok_r(NULL, "\r\n", &save)) {
				if (!first && strlen(line) > 4)
					caps_parse_line(line + 4, &caps, &size, NULL, 0);
				first = false;
			}
			caps_store(key, caps, size);
			log_msg(LOG_LEVEL_INFO, "route %s: upstream %s offers%s%s%s%s", relay->name,
				u->key, caps & RELAY_CAP_8BITMIME ? " 8BITMIME" : "",
				caps & RELAY_CAP_STARTTLS ? " STARTTLS" : "",
				caps & RELAY_CAP_XCLIENT ? " XCLIENT" : "",
				caps & RELAY_CAP_XFORWARD ? " XFORWARD" : "");
		}
		if (write(fd, "QUIT\r\n", 6) < 0) {
			/* closing anyway */
		}
		close(fd);
		free(key);
	}
}

static void
relay_destroy(struct backend *be)
{
	struct relay *relay = (struct relay *)be;

	for (size_t i = 0; i < relay->n_ups; i++)
		backends_upstream_clear(&relay->ups[i]);
	free(relay->ups);
	free(relay->name);
	free(relay->helo_name);
	free(relay->verify_name);
	if (relay->ssl_ctx != NULL)
		SSL_CTX_free(relay->ssl_ctx);
	free(relay);
}

static int
relay_create(const struct mx_config *cfg, const struct backends_route *route, struct userdb *db,
	     struct backend **be_r, char **error_r)
{
	struct relay *relay = xcalloc(1, sizeof(*relay));
	const char *hostname = cfg_getstr(cfg->cfg, "hostname");

	(void)db;
	if (route == NULL) {
		*error_r = xstrdup("relay: a route section is needed");
		free(relay);
		return -1;
	}
	relay->name = xstrdup(route->name);
	relay->protocol = route->protocol;
	relay->starttls = route->starttls;
	relay->xclient = route->xclient;
	relay->xforward = route->xforward;
	relay->helo_name = xstrdup(route->helo_name[0] != '\0' ? route->helo_name
				   : hostname != NULL ? hostname : "localhost");
	relay->verify_name = xstrdup(route->tls_verify_name);
	relay->connect_timeout = route->connect_timeout;
	relay->command_timeout = route->command_timeout;
	relay->data_timeout = route->data_timeout;
	relay->reuse_time = route->reuse_time;
	relay->size_max = backends_settings(cfg)->message_size_max;
	relay->ups = xcalloc(route->n_hosts, sizeof(*relay->ups));
	for (size_t i = 0; i < route->n_hosts; i++) {
		struct backends_upstream u;
		char *err = NULL;
		if (backends_upstream_parse(route->hosts[i], &u, &err) < 0) {
			*error_r = xasprintf("route %s: %s", route->name, err);
			free(err);
			relay_destroy(&relay->hdr);
			return -1;
		}
		/* insertion by priority, stable for equal ones */
		size_t at = relay->n_ups;
		while (at > 0 && relay->ups[at - 1].priority > u.priority) {
			relay->ups[at] = relay->ups[at - 1];
			at--;
		}
		relay->ups[at] = u;
		relay->n_ups++;
	}
	if (relay->starttls != ROUTE_TLS_OFF) {
		relay->ssl_ctx = SSL_CTX_new(TLS_client_method());
		if (relay->ssl_ctx == NULL) {
			*error_r = xasprintf("route %s: cannot make a TLS context", route->name);
			relay_destroy(&relay->hdr);
			return -1;
		}
		SSL_CTX_set_min_proto_version(relay->ssl_ctx, TLS1_2_VERSION);
		if (relay->starttls == ROUTE_TLS_REQUIRED) {
			int ok = route->tls_ca_file[0] != '\0'
					 ? SSL_CTX_load_verify_locations(relay->ssl_ctx,
									 route->tls_ca_file, NULL)
					 : SSL_CTX_set_default_verify_paths(relay->ssl_ctx);
			if (ok != 1) {
				*error_r = xasprintf("route %s: tls_ca_file \"%s\": cannot load it",
						     route->name, route->tls_ca_file);
				relay_destroy(&relay->hdr);
				return -1;
			}
			SSL_CTX_set_verify(relay->ssl_ctx, SSL_VERIFY_PEER, NULL);
		} else {
			SSL_CTX_set_verify(relay->ssl_ctx, SSL_VERIFY_NONE, NULL);
		}
	}
	relay_probe(relay);
	*be_r = &relay->hdr;
	return 0;
}

void
backends_loop_stop(void)
{
	/* idle ones only: a connection in use belongs to a transaction of
	 * the state that replaced this one, and ends with it */
	struct upconn *c = thread_conns;
	while (c != NULL) {
		struct upconn *next = c->next;
		if (c->owner == NULL)
			upconn_free(c);
		c = next;
	}
}

const struct backend_ops relay_backend_ops = {
	.name = "relay",
	.create = relay_create,
	.destroy = relay_destroy,
	.ehlo = relay_ehlo,
	.tx_begin = relay_tx_begin,
	.rcpt = relay_rcpt,
	.data = relay_data,
	.drop = relay_drop,
	.tx_end = relay_tx_end,
};
