/*
 * conn.c — the connection layer: one bufferevent wrapped once for every
 * service.
 *
 * A connection is accepted by the core (daemon.c); on a PROXY listener a
 * trusted balancer's header is read first (conn_accepted: from the socket,
 * never past the header) and its client address replaces the balancer's;
 * then the connection is counted against the
 * per-client and total limits, switched to TLS at once on implicit-TLS
 * listeners, and then handed to its service, which attaches a
 * struct conn_handler. From then on the service sees only the handler
 * calls and the conn_* functions; the state machine here is:
 *
 *   open ──conn_close──► closing ──output flushed──► lingering ──► freed
 *                 (TLS, or handshake pending: straight to freed)
 *
 * A connection is freed only from the top of an event callback — by the
 * layer itself after its own handler calls, or by conn_settle() at the end
 * of a service callback that came from elsewhere (a pipeline or delivery
 * completion) — never from deep inside a handler.
 *
 * TLS: the TLS bufferevent owns both the SSL object and the socket
 * (BEV_OPT_CLOSE_ON_FREE), so libevent frees them whenever it finalises the
 * bufferevent. The plaintext bufferevent owns nothing: STARTTLS frees it
 * and wraps the same socket.
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "daemon/daemon-internal.h"
#include "lib/metrics.h"

/* Input buffered while the service is busy (pipelined commands) before
 * reads pause. */
#define CONN_INPUT_MAX (128 * 1024)

enum conn_flags {
	CONN_F_TLS = 0x01,         /* TLS is spoken (or being negotiated) */
	CONN_F_TLS_PENDING = 0x02, /* handshake not finished */
	CONN_F_CLOSING = 0x04,     /* flush output, then go */
	CONN_F_LINGER = 0x08,      /* write side shut: drain input, then free */
	CONN_F_EOF = 0x10,         /* peer half-closed */
	CONN_F_STARTTLS = 0x20,    /* switch to TLS once the output is flushed */
	CONN_F_FREED = 0x40,
	CONN_F_SLOT = 0x80,        /* counted against the connection limits */
	CONN_F_STRICT = 0x100,     /* only CRLF ends a line */
	CONN_F_OWNS_FD = 0x200,    /* the bufferevent closes the socket */
	CONN_F_PROXY_WATCH = 0x400, /* untrusted peer on a PROXY listener: a header is refused */
};

struct conn {
	struct conn *next, *prev; /* the loop's list */
	char id[MX_ID_LEN];
	struct daemon_loop *loop;
	const struct daemon_listener *listener;
	struct loop_state *ls;
	struct bufferevent *bev;
	int fd;
	unsigned flags;
	char addr[64];
	unsigned port;
	size_t line_max;
	long timeout_greeting;
	struct timespec linger_end; /* a lingering close ends by then, whatever the peer sends */
	long timeout;
	const struct conn_handler *h;
	void *ctx;
	char *reason;
	SSL *starttls_ssl;     /* made by conn_starttls, used at the switch */
	/* the PROXY header being read (trusted peers of a PROXY listener) */
	struct event *proxy_ev;
	unsigned char *proxy_buf;
	size_t proxy_len;
	char via[64];          /* the balancer's address, once the header named the client */
	int proxy_version;
	struct timeval proxy_deadline; /* proxy_timeout is for the whole header */
};

/* ---------------------------------------------------- connection counts */

static bool
conn_slot_acquire(struct conn *conn, long per_client, long total, const char **reason_r)
{
	struct daemon *core = conn->loop->core;
	struct conn_count *c;
	bool ok = false;

	pthread_mutex_lock(&core->conn_lock);
	for (c = core->conn_counts; c != NULL; c = c->next) {
		if (strcmp(c->addr, conn->addr) == 0)
			break;
	}
	if (core->conn_total >= total) {
		*reason_r = "Too many connections";
	} else if (c != NULL && c->count >= per_client) {
		*reason_r = "Too many connections from your host";
	} else {
		if (c == NULL) {
			c = xcalloc(1, sizeof(*c));
			str_copy(c->addr, conn->addr, sizeof(c->addr));
			c->next = core->conn_counts;
			core->conn_counts = c;
		}
		c->count++;
		core->conn_total++;
		conn->flags |= CONN_F_SLOT;
		ok = true;
	}
	pthread_mutex_unlock(&core->conn_lock);
	return ok;
}

/* Given back as soon as the conversation is over (before the lingering
 * close), so a client that has seen our last reply and the close can
 * connect again at once. */
static void
conn_slot_release(struct conn *conn)
{
	struct daemon *core = conn->loop->core;
	struct conn_count **cp, *c;

	if (!(conn->flags & CONN_F_SLOT))
		return;
	conn->flags &= ~CONN_F_SLOT;
	pthread_mutex_lock(&core->conn_lock);
	for (cp = &core->conn_counts; (c = *cp) != NULL; cp = &c->next) {
		if (strcmp(c->addr, conn->addr) == 0) {
			core->conn_total--;
			if (--c->count == 0) {
				*cp = c->next;
				free(c);
			}
			break;
		}
	}
	pthread_mutex_unlock(&core->conn_lock);
}

/* ------------------------------------------------------------ accessors */

const char *conn_id(const struct conn *conn) { return conn->id; }
const char *conn_addr(const struct conn *conn) { return conn->addr; }
unsigned conn_port(const struct conn *conn) { return conn->port; }
const char *conn_listener(const struct conn *conn) { return conn->listener->name; }
bool conn_implicit_tls(const struct conn *conn) { return conn->listener->implicit_tls; }
bool conn_tls(const struct conn *conn) { return (conn->flags & CONN_F_TLS) != 0; }
bool conn_closing(const struct conn *conn) { return (conn->flags & CONN_F_CLOSING) != 0; }
bool conn_eof(const struct conn *conn) { return (conn->flags & CONN_F_EOF) != 0; }
struct daemon_loop *conn_loop(const struct conn *conn) { return conn->loop; }
struct event_base *conn_base(const struct conn *conn) { return conn->loop->base; }
struct server_state *conn_state(const struct conn *conn) { return conn->ls->st; }

struct server_state *
conn_state_update(struct conn *conn)
{
	if (conn->ls != conn->loop->current) {
		daemon_loop_state_release(conn->loop, &conn->ls);
		conn->ls = daemon_loop_state_take(conn->loop);
	}
	return conn->ls->st;
}

void
conn_attach(struct conn *conn, const struct conn_handler *h, void *ctx)
{
	conn->h = h;
	conn->ctx = ctx;
}

/* ---------------------------------------------------------------- output */

void
conn_set_nodelay(struct conn *conn)
{
	int one = 1;

	/* not a TCP socket (a socketpair in the standalone loop): nothing to do */
	if (conn->fd >= 0)
		(void)setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void
conn_write(struct conn *conn, const void *data, size_t len)
{
	if (conn->bev != NULL && !(conn->flags & CONN_F_LINGER))
		bufferevent_write(conn->bev, data, len);
}

void
conn_write_linev(struct conn *conn, const char *fmt, va_list ap)
{
	char line[1024];
	int n = vsnprintf(line, sizeof(line) - 2, fmt, ap);

	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 3)
		n = (int)sizeof(line) - 3;
	if (log_enabled(LOG_LEVEL_DEBUG))
		log_msg(LOG_LEVEL_DEBUG, "%s %s reply=\"%.*s\"", conn->id,
			conn->listener->service->name, n, line);
	line[n++] = '\r';
	line[n++] = '\n';
	conn_write(conn, line, (size_t)n);
}

size_t
conn_output_len(const struct conn *conn)
{
	return conn->bev != NULL ? evbuffer_get_length(bufferevent_get_output(conn->bev)) : 0;
}

/* ----------------------------------------------------------------- input */

void
conn_set_lines(struct conn *conn, size_t line_max, bool strict_crlf)
{
	conn->line_max = line_max;
	if (strict_crlf)
		conn->flags |= CONN_F_STRICT;
	else
		conn->flags &= ~CONN_F_STRICT;
}

struct evbuffer *
conn_input(struct conn *conn)
{
	return bufferevent_get_input(conn->bev);
}

size_t
conn_input_len(const struct conn *conn)
{
	return conn->bev != NULL ? evbuffer_get_length(bufferevent_get_input(conn->bev)) : 0;
}

long
conn_timeout_greeting(const struct conn *conn)
{
	return conn->timeout_greeting;
}

enum conn_line
conn_read_line(struct conn *conn, char **line_r, size_t *len_r)
{
	struct evbuffer *in;
	struct evbuffer_ptr eol;
	size_t eol_len = 0;
	enum evbuffer_eol_style style;

	*line_r = NULL;
	*len_r = 0;
	if (conn->bev == NULL || (conn->flags & (CONN_F_LINGER | CONN_F_TLS_PENDING)))
		return CONN_LINE_NONE;
	in = bufferevent_get_input(conn->bev);
	style = (conn->flags & CONN_F_STRICT) ? EVBUFFER_EOL_CRLF_STRICT : EVBUFFER_EOL_CRLF;
	eol = evbuffer_search_eol(in, NULL, &eol_len, style);
	if ((conn->flags & CONN_F_PROXY_WATCH) && (eol.pos >= 0 || evbuffer_get_length(in) >= 12)) {
		/* a peer not in proxy_trusted may not say who the client is:
		 * its header is never read as the protocol */
		size_t n = evbuffer_get_length(in) < 12 ? evbuffer_get_length(in) : 12;
		conn->flags &= ~CONN_F_PROXY_WATCH;
		if (proxy_header_start(evbuffer_pullup(in, (ev_ssize_t)n), n)) {
			log_msg(LOG_LEVEL_WARN, "%s %s proxy refused client=%s listener=%s "
				"reason=\"a PROXY header from a peer not in proxy_trusted\"", conn->id,
				conn->listener->service->name, conn->addr, conn->listener->name);
			evbuffer_drain(in, evbuffer_get_length(in));
			conn_close(conn, "proxy_untrusted");
			return CONN_LINE_NONE;
		}
	}
	if (eol.pos < 0) {
		/* the cap holds before the line end arrives */
		if (conn->line_max != 0 && evbuffer_get_length(in) > conn->line_max)
			return CONN_LINE_OVERFLOW;
		return CONN_LINE_NONE;
	}
	size_t len = (size_t)eol.pos;
	if (conn->line_max != 0 && len + 2 > conn->line_max) {
		evbuffer_drain(in, len + eol_len);
		*len_r = len;
		return CONN_LINE_TOO_LONG;
	}
	char *line = xmalloc(len + 1);
	evbuffer_remove(in, line, len);
	evbuffer_drain(in, eol_len);
	line[len] = '\0';
	*line_r = line;
	*len_r = len;
	return CONN_LINE;
}

/* -------------------------------------------------------------- timeouts */

static void
conn_apply_timeout(struct conn *conn)
{
	struct timeval tv = { conn->timeout, 0 };

	if (conn->bev == NULL || (conn->flags & CONN_F_LINGER))
		return;
	if (conn->timeout <= 0)
		bufferevent_set_timeouts(conn->bev, NULL, NULL);
	else /* the write timeout drops a client that stops reading our replies */
		bufferevent_set_timeouts(conn->bev, &tv, &tv);
}

void
conn_set_timeout(struct conn *conn, long seconds)
{
	if (conn->flags & (CONN_F_CLOSING | CONN_F_LINGER))
		return;
	conn->timeout = seconds;
	conn_apply_timeout(conn);
}

/* ------------------------------------------------------------- lifecycle */

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_proxy_end(struct conn *conn);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);

static void
conn_set_reason(struct conn *conn, const char *reason)
{
	if (conn->reason == NULL)
		conn->reason = xstrdup(reason);
}

static void
conn_setup_bev(struct conn *conn)
{
	bufferevent_setcb(conn->bev, conn_read_cb, conn_write_cb, conn_event_cb, conn);
	bufferevent_setwatermark(conn->bev, EV_READ, 0, CONN_INPUT_MAX);
	conn_apply_timeout(conn);
	bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
}

struct conn *
conn_new(struct daemon_loop *loop, const struct daemon_listener *l, int fd, const struct sockaddr *sa)
{
	struct conn *conn = xcalloc(1, sizeof(*conn));

	id_new(conn->id);
	conn->loop = loop;
	conn->listener = l;
	conn->fd = fd;
	conn->ls = daemon_loop_state_take(loop);
	net_addr_str(sa, conn->addr, sizeof(conn->addr));
	conn->port = sa->sa_family == AF_INET
		? ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port)
		: ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
	conn->next = loop->conns;
	if (loop->conns != NULL)
		loop->conns->prev = conn;
	loop->conns = conn;
	atomic_fetch_add(&loop->core->n_conns, 1);
	metrics_add_label(METRIC_CONNECTIONS, l->service->name, 1);
	metrics_add_label(METRIC_CONNECTIONS_CURRENT, l->service->name, 1);
	evutil_make_socket_nonblocking(fd);
	return conn;
}

static void
conn_free(struct conn *conn)
{
	struct daemon_loop *loop = conn->loop;

	conn->flags |= CONN_F_FREED;
	conn_proxy_end(conn);
	conn_slot_release(conn);
	if (conn->h != NULL)
		conn->h->gone(conn->ctx, conn->reason != NULL ? conn->reason : "unknown");
	else
		log_msg(LOG_LEVEL_INFO, "%s %s disconnected client=%s reason=%s", conn->id,
			conn->listener->service->name, conn->addr,
			conn->reason != NULL ? conn->reason : "unknown");
	if (conn->bev != NULL) {
		if ((conn->flags & CONN_F_TLS) && !(conn->flags & CONN_F_TLS_PENDING)) {
			SSL *ssl = bufferevent_openssl_get_ssl(conn->bev);
			if (ssl != NULL)
				(void)SSL_shutdown(ssl); /* best effort close_notify; never blocks */
			ERR_clear_error(); /* nothing of this one may reach the loop's next SSL call */
		}
		bufferevent_free(conn->bev); /* a TLS one frees its SSL and socket */
	}
	if (!(conn->flags & CONN_F_OWNS_FD) && conn->fd >= 0)
		close(conn->fd);
	if (conn->starttls_ssl != NULL)
		SSL_free(conn->starttls_ssl);
	if (conn->prev != NULL)
		conn->prev->next = conn->next;
	else
		loop->conns = conn->next;
	if (conn->next != NULL)
		conn->next->prev = conn->prev;
	daemon_loop_state_release(loop, &conn->ls);
	metrics_add_label(METRIC_CONNECTIONS_CURRENT, conn->listener->service->name, -1);
	free(conn->reason);
	free(conn);
	atomic_fetch_sub(&loop->core->n_conns, 1);
}

void
conn_close(struct conn *conn, const char *reason)
{
	if (conn->flags & CONN_F_CLOSING)
		return;
	conn->flags |= CONN_F_CLOSING;
	conn_set_reason(conn, reason);
	if (conn->bev != NULL) {
		bufferevent_disable(conn->bev, EV_READ);
		if (conn->timeout <= 0) {
			/* closed while busy (no timeouts then): the last reply must
			 * still drain within a bound, or a peer that stops reading
			 * would hold the connection forever */
			struct timeval tv = { conn->timeout_greeting > 0 ? conn->timeout_greeting : 30, 0 };
			bufferevent_set_timeouts(conn->bev, NULL, &tv);
		}
	}
}

void
conn_settle(struct conn *conn)
{
	if (!(conn->flags & CONN_F_CLOSING) || (conn->flags & (CONN_F_LINGER | CONN_F_FREED)))
		return;
	if (conn->flags & CONN_F_TLS_PENDING) {
		/* nothing can be written before the handshake: just go */
		conn_free(conn);
		return;
	}
	if (conn_output_len(conn) > 0)
		return; /* the write callback comes back when it is flushed */
	if (!(conn->flags & CONN_F_TLS) && conn->fd >= 0 && conn->bev != NULL) {
		/* Lingering close: shut our write side and read (and discard) until
		 * the peer closes or 2 s pass, so that a close with unread input
		 * does not turn into a reset that destroys our last reply. */
		static const struct timeval linger = { 2, 0 };
		struct evbuffer *in = bufferevent_get_input(conn->bev);
		conn->flags |= CONN_F_LINGER;
		/* the read timeout restarts with every read: the deadline is
		 * what stops a peer that trickles bytes to keep us lingering */
		clock_gettime(CLOCK_MONOTONIC, &conn->linger_end);
		conn->linger_end.tv_sec += linger.tv_sec;
		conn_slot_release(conn);
		shutdown(conn->fd, SHUT_WR);
		evbuffer_drain(in, evbuffer_get_length(in));
		bufferevent_disable(conn->bev, EV_WRITE);
		bufferevent_set_timeouts(conn->bev, &linger, NULL);
		bufferevent_enable(conn->bev, EV_READ);
		return;
	}
	conn_free(conn);
}

/* Wrap the socket in a TLS bufferevent that owns it and the SSL object. */
static int
conn_tls_wrap(struct conn *conn, SSL *ssl)
{
	if (ssl == NULL)
		return -1;
	conn->bev = bufferevent_openssl_socket_new(conn->loop->base, conn->fd, ssl,
						   BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (conn->bev == NULL) {
		SSL_free(ssl);
		return -1;
	}
	conn->flags |= CONN_F_TLS | CONN_F_TLS_PENDING | CONN_F_OWNS_FD;
	conn_setup_bev(conn);
	return 0;
}

int
conn_starttls(struct conn *conn, SSL_CTX *ctx)
{
	struct evbuffer *in;

	if (ctx == NULL || (conn->flags & (CONN_F_TLS | CONN_F_STARTTLS)))
		return -1;
	/* made now, so that a failure changes nothing and can be answered */
	conn->starttls_ssl = SSL_new(ctx);
	if (conn->starttls_ssl == NULL)
		return -1;
	/* RFC 3207: throw away whatever the client pipelined after the command
	 * in plaintext, read nothing more until the handshake, and switch once
	 * the reply has left (conn_write_cb) */
	in = bufferevent_get_input(conn->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	bufferevent_disable(conn->bev, EV_READ);
	conn->flags |= CONN_F_STARTTLS;
	return 0;
}

/* ---------------------------------------------------- event callbacks */

static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *conn = arg;

	if (conn->flags & CONN_F_LINGER) {
		struct evbuffer *in = bufferevent_get_input(bev);
		struct timespec now;
		evbuffer_drain(in, evbuffer_get_length(in));
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > conn->linger_end.tv_sec ||
		    (now.tv_sec == conn->linger_end.tv_sec && now.tv_nsec >= conn->linger_end.tv_nsec))
			conn_free(conn);
		return;
	}
	if (conn->h != NULL && !(conn->flags & CONN_F_CLOSING))
		conn->h->ready(conn->ctx);
	conn_settle(conn);
}

static void
conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *conn = arg;

	if ((conn->flags & CONN_F_STARTTLS) && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		SSL *ssl = conn->starttls_ssl;
		conn->flags &= ~CONN_F_STARTTLS;
		conn->starttls_ssl = NULL;
		bufferevent_free(conn->bev); /* the plaintext one owns nothing */
		conn->bev = NULL;
		if (conn_tls_wrap(conn, ssl) < 0) {
			conn_set_reason(conn, "tls_error");
			conn->flags |= CONN_F_CLOSING;
			conn_free(conn);
		}
		return;
	}
	if (conn->h != NULL && !(conn->flags & CONN_F_CLOSING))
		conn->h->ready(conn->ctx);
	conn_settle(conn);
}

static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *conn = arg;

	if (conn->flags & CONN_F_LINGER) {
		conn_free(conn);
		return;
	}
	if (what & BEV_EVENT_CONNECTED) {
		if (conn->flags & CONN_F_TLS_PENDING) {
			SSL *ssl = bufferevent_openssl_get_ssl(bev);
			conn->flags &= ~CONN_F_TLS_PENDING;
			log_msg(LOG_LEVEL_INFO, "%s %s tls client=%s protocol=%s cipher=%s", conn->id,
				conn->listener->service->name, conn->addr, SSL_get_version(ssl),
				SSL_get_cipher_name(ssl));
			if (conn->h == NULL)
				conn->listener->service->accept(conn, NULL); /* implicit TLS */
			else if (!(conn->flags & CONN_F_CLOSING))
				conn->h->tls_up(conn->ctx);
		}
		conn_settle(conn);
		return;
	}
	if (conn->flags & CONN_F_TLS_PENDING) {
		/* handshake failed, stalled or the peer left: no protocol was spoken */
		conn_set_reason(conn, what & BEV_EVENT_TIMEOUT ? "tls_timeout" : "tls_error");
		conn_free(conn);
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) &&
	    !(conn->flags & (CONN_F_CLOSING | CONN_F_EOF))) {
		/* half-close: the service answers what was sent, then closes */
		conn->flags |= CONN_F_EOF;
		if (conn->h != NULL)
			conn->h->eof(conn->ctx);
		else
			conn_close(conn, "eof");
		conn_settle(conn);
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && !(what & BEV_EVENT_WRITING)) {
		if (!(conn->flags & CONN_F_CLOSING)) {
			if (conn->h != NULL)
				conn->h->timeout(conn->ctx);
			conn_close(conn, "timeout");
			/* writes still flow; only reading timed out */
			bufferevent_enable(bev, EV_WRITE);
		}
		conn_settle(conn);
		return;
	}
	/* EOF, error, or a peer that stopped reading: nothing more can be written */
	conn_set_reason(conn, what & BEV_EVENT_EOF ? "eof" :
			      what & BEV_EVENT_TIMEOUT ? "write_timeout" : "error");
	conn->flags |= CONN_F_CLOSING;
	evbuffer_drain(bufferevent_get_output(bev), evbuffer_get_length(bufferevent_get_output(bev)));
	conn_free(conn);
}

/* ----------------------------------------------------------------- PROXY */

static void
conn_proxy_end(struct conn *conn)
{
	if (conn->proxy_ev != NULL)
		event_free(conn->proxy_ev);
	conn->proxy_ev = NULL;
	free(conn->proxy_buf);
	conn->proxy_buf = NULL;
}

static void
conn_proxy_fail(struct conn *conn, const char *why)
{
	log_msg(LOG_LEVEL_WARN, "%s %s proxy refused client=%s listener=%s reason=\"%s\"",
		conn->id, conn->listener->service->name, conn->addr, conn->listener->name, why);
	conn_proxy_end(conn);
	conn_set_reason(conn, "proxy_error");
	conn_free(conn);
}

/*
 * The header is read straight from the socket, before any bufferevent (or
 * TLS) exists, and never an octet past it: what follows belongs to the
 * protocol (or the TLS handshake). The shortest header is 15 octets
 * ("PROXY UNKNOWN\r\n"), so that much is read blind; then v2 says its
 * length, and a v1 line is peeked for its LF and read up to it — all that
 * is available when there is none yet, since it is all header.
 */
static void
conn_proxy_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *conn = arg;
	unsigned allowed = conn->listener->proxy_allowed;
	struct proxy_header h;
	const char *err;
	size_t want;
	ssize_t n;

	struct timeval now, left;
	evutil_gettimeofday(&now, NULL);
	if (!(what & EV_TIMEOUT) && evutil_timercmp(&now, &conn->proxy_deadline, <)) {
		/* a persistent event's timeout restarts at every read: put it back
		 * to what is left, so octets trickling in do not extend it */
		evutil_timersub(&conn->proxy_deadline, &now, &left);
		event_add(conn->proxy_ev, &left);
	} else {
		what |= EV_TIMEOUT;
	}
	if (what & EV_TIMEOUT) {
		conn_proxy_fail(conn, conn->proxy_len == 0 ? "no PROXY header in time" :
				"PROXY header not complete in time");
		return;
	}
	if (conn->proxy_len < 15) {
		want = 15 - conn->proxy_len;
	} else if (conn->proxy_buf[0] == '\r') {
		size_t total = conn->proxy_len < 16 ? 16 :
			       16 + (((size_t)conn->proxy_buf[14] << 8) | conn->proxy_buf[15]);
		want = total > conn->proxy_len ? total - conn->proxy_len : 1;
	} else {
		unsigned char peek[PROXY_V1_MAX];
		size_t room = PROXY_V1_MAX - conn->proxy_len;
		n = recv(fd, peek, room, MSG_PEEK);
		if (n <= 0) {
			want = 1; /* let recv below report it */
		} else {
			const unsigned char *lf = memchr(peek, '\n', (size_t)n);
			want = lf != NULL ? (size_t)(lf - peek) + 1 : (size_t)n;
		}
	}
	if (conn->proxy_len + want > PROXY_V2_MAX)
		want = PROXY_V2_MAX - conn->proxy_len;
	n = recv(fd, conn->proxy_buf + conn->proxy_len, want, 0);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {
		conn_proxy_fail(conn, n == 0 ? "closed before its PROXY header ended" : strerror(errno));
		return;
	}
	conn->proxy_len += (size_t)n;
	switch (proxy_header_parse(conn->proxy_buf, conn->proxy_len, allowed, &h, &err)) {
	case PROXY_NEED_MORE:
		if (conn->proxy_len >= PROXY_V2_MAX)
			conn_proxy_fail(conn, "PROXY header too long");
		return;
	case PROXY_INVALID:
		conn_proxy_fail(conn, err);
		return;
	case PROXY_DONE:
		break;
	}
	conn->proxy_version = h.version;
	str_copy(conn->via, conn->addr, sizeof(conn->via));
	if (!h.local) {
		str_copy(conn->addr, h.src_addr, sizeof(conn->addr));
		conn->port = h.src_port;
	}
	conn_proxy_end(conn);
	conn_begin(conn);
}

void
conn_accepted(struct conn *conn)
{
	const struct daemon_listener *l = conn->listener;
	bool trusted = false;

	if (l->proxy_allowed == 0) {
		conn_begin(conn);
		return;
	}
	for (size_t i = 0; i < l->n_proxy_trusted && !trusted; i++)
		trusted = net_cidr_match(&l->proxy_trusted[i], conn->addr);
	if (!trusted) {
		conn->flags |= CONN_F_PROXY_WATCH;
		conn_begin(conn);
		return;
	}
	struct timeval tv = { .tv_sec = l->proxy_timeout }, now;
	evutil_gettimeofday(&now, NULL);
	evutil_timeradd(&now, &tv, &conn->proxy_deadline);
	conn->proxy_buf = xmalloc(PROXY_V2_MAX);
	conn->proxy_ev = event_new(conn->loop->base, conn->fd, EV_READ | EV_PERSIST,
				   conn_proxy_cb, conn);
	event_add(conn->proxy_ev, &tv);
}

/* ---------------------------------------------------------------- accept */

void
conn_begin(struct conn *conn)
{
	struct daemon_loop *loop = conn->loop;
	const struct daemon_app *app = loop->core->app;
	const struct daemon_settings *ds = daemon_settings(app->state_config(conn->ls->st));
	SSL_CTX *ctx = app->state_tls(conn->ls->st);
	const char *refusal = NULL;
	bool implicit = conn->listener->implicit_tls;

	char via[100] = "";
	if (conn->proxy_version != 0)
		snprintf(via, sizeof(via), " via=%s proxy=v%d", conn->via, conn->proxy_version);
	log_msg(LOG_LEVEL_INFO, "%s %s connect client=%s port=%u listener=%s tls=%s loop=%u%s",
		conn->id, conn->listener->service->name, conn->addr, conn->port,
		conn->listener->name, implicit ? "implicit" : "no", loop->index, via);
	if (implicit && ctx == NULL) {
		/* a reload removed the certificate: never speak plaintext on a
		 * port that clients trust to be TLS */
		conn_set_reason(conn, "no_tls_certificate");
		conn_free(conn);
		return;
	}
	if (loop->shutting_down)
		refusal = DAEMON_REFUSAL_SHUTDOWN;
	else if (!conn_slot_acquire(conn, ds->connections_per_client, ds->connections_max,
				    &refusal))
		metrics_add_label(METRIC_CONNECTIONS_REFUSED, strstr(refusal, "your host") != NULL ?
				  "connections_per_client" : "connections_max", 1);
	if (loop->shutting_down)
		metrics_add_label(METRIC_CONNECTIONS_REFUSED, "shutdown", 1);
	if (refusal != NULL && implicit) {
		/* a refusal can only be said inside TLS; do not spend a handshake */
		log_msg(LOG_LEVEL_INFO, "%s %s refused client=%s reason=\"%s\"", conn->id,
			conn->listener->service->name, conn->addr, refusal);
		conn_set_reason(conn, "refused");
		conn_free(conn);
		return;
	}
	/* the handshake (or the first command) must come within this */
	conn->timeout = ds->timeout_greeting;
	conn->timeout_greeting = ds->timeout_greeting;
	if (implicit) {
		if (conn_tls_wrap(conn, SSL_new(ctx)) < 0) {
			conn_set_reason(conn, "tls_error");
			conn_free(conn);
		}
		return; /* the service gets it once the handshake is done */
	}
	conn->bev = bufferevent_socket_new(loop->base, conn->fd, 0);
	conn_setup_bev(conn);
	conn->listener->service->accept(conn, refusal);
	conn_settle(conn);
}

void
conn_shutdown_all(struct daemon_loop *loop)
{
	struct conn *conn, *next;

	for (conn = loop->conns; conn != NULL; conn = next) {
		next = conn->next;
		if (conn->flags & (CONN_F_CLOSING | CONN_F_FREED))
			continue;
		if (conn->h == NULL) {
			conn_close(conn, "shutdown"); /* still in its TLS handshake */
		} else {
			conn->h->shutdown(conn->ctx);
		}
		conn_settle(conn);
	}
}

void
conn_drop_all(struct daemon_loop *loop, const char *reason)
{
	while (loop->conns != NULL) {
		struct conn *conn = loop->conns;
		if (!(conn->flags & CONN_F_LINGER)) { /* a lingering one had ended already */
			free(conn->reason);
			conn->reason = xstrdup(reason);
		}
		conn->flags |= CONN_F_CLOSING;
		conn_free(conn);
	}
}
