/*
 * daemon.h — the daemon core: loop threads, listeners, signals, reload, the
 * service table and the connection layer.
 *
 * The core knows nothing of SMTP, stages or mailboxes. A program (the
 * mxguard daemon in proxy/main.c) hands daemon_run() a struct daemon_app: how to
 * build its shared state from a config file, and its table of services. A
 * service is one protocol (SMTP, POP3, the metrics endpoint): a name that
 * listeners refer to with `protocol = ...`, and an accept function that
 * turns a new connection into a session of that protocol — or, for a
 * server whose library serves its own sockets, one of two hooks instead:
 * serve_start/serve_stop when the core binds and the library serves the
 * listening socket on a loop (evhttp: the metrics endpoint), or
 * start/stop when the library must bind and accept itself on threads of
 * its own (libmilter), reaching the loops with daemon_post()/daemon_hold().
 *
 * Threads. The main thread binds, then only handles signals. N loop threads
 * each run their own event_base; every loop has its own listening socket per
 * listener (SO_REUSEPORT), so the kernel hands each connection to exactly
 * one loop and no loop wakes for another's connection. A connection lives
 * on the loop that accepted it until it closes: session code takes no locks.
 *
 * Shared state. What sessions share (config, pipeline, user database, TLS
 * context) is the program's `struct server_state`, opaque here and
 * reference-counted through the app's functions. Each loop holds the
 * current state; a reload builds a new one aside on the main thread and
 * pushes it to every loop, which switches to it on its own thread. A loop
 * counts how many of its sessions still use each older state and calls the
 * app's loop_stop for it on that loop once the last one lets go — that is
 * where per-loop resources of a pipeline (an evdns base, a Redis context)
 * are freed, on the thread that owns them.
 *
 * Connections. struct conn wraps a bufferevent once: line reading with the
 * length cap enforced before the newline arrives, timeouts, the switch to
 * TLS on the same socket (STARTTLS) or TLS from the first byte, half-close,
 * and the lingering close. A service sees "input ready", "TLS up",
 * "timeout", "peer half-closed", "shutting down" and "gone" through a
 * struct conn_handler, and never touches libevent's bufferevents itself.
 */
#ifndef MXGUARD_CORE_H
#define MXGUARD_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/lib.h"

struct event_base;
struct evbuffer;
struct daemon_loop;
struct conn;
struct server_state; /* the program's shared state, defined by the program */

/* ------------------------------------------------------------ settings */
/*
 * The daemon's own rows (daemon/settings.c): threads, workers, user,
 * log_level, state_dir, the TLS certificate (tls_cert, tls_key: every
 * listener's — implicit TLS is the conn layer's, STARTTLS any service's),
 * the `listen` sections and the connection limits (limits.connections_max,
 * connections_per_client, timeout_greeting — which also bounds the TLS
 * handshake —, timeout_shutdown). Registered by daemon_register_config().
 */

/* One listener: "listen smtp { address = ...; protocol = smtp; tls = implicit|none }" */
struct listen_config {
	char *name;     /* the section's title */
	char *address;  /* "127.0.0.1:2525", "[::1]:2525" */
	char *protocol; /* the service that speaks on it ("smtp") */
	int implicit_tls; /* the "tls" choice: 0 = none, 1 = implicit */
	int proxy_protocol; /* enum listen_proxy: off, v1, v2, any */
	char **proxy_trusted; /* networks that must (and alone may) send a PROXY header */
	size_t n_proxy_trusted;
	long proxy_timeout; /* seconds for the header to arrive */
	int line;       /* line of its address (or of its end, when left at the default) */
};
enum listen_proxy { LISTEN_PROXY_OFF, LISTEN_PROXY_V1, LISTEN_PROXY_V2, LISTEN_PROXY_ANY };

struct daemon_settings {
	long threads;   /* 0 = number of cores */
	long workers;
	char *run_user; /* drop privileges to this user, "" = stay */
	int log_level;  /* enum log_level (the choices are in its order) */
	bool run_as_root;   /* root with run_user "" is refused unless set */
	int syslog_facility; /* enum log_facility */
	char *state_dir;
	char *tls_cert; /* "" = no TLS */
	char *tls_key;
	struct listen_config *listeners;
	size_t n_listeners;
	long connections_max;        /* whole process */
	long connections_per_client;
	long timeout_greeting;       /* seconds: TLS handshake and first command */
	long timeout_shutdown;       /* seconds SIGTERM waits */
};

/* Register the daemon's settings module; before config_load(). Idempotent. */
void daemon_register_config(void);
const struct daemon_settings *daemon_settings(const struct mx_config *cfg);
/* The server TLS context for tls_cert and tls_key: 0 with *ctx_r NULL when
 * no certificate is configured, 0 with the context, or -1 with *error_r
 * (malloc'd, "file:line: tls_cert = ...: why"). For the program's
 * state_build; the state owns what it returns (state_tls). */
int daemon_tls_context(const struct mx_config *cfg, struct ssl_ctx_st **ctx_r, char **error_r);

/* ------------------------------------------------------------ services */

/*
 * One protocol the daemon speaks. accept() runs on the loop thread that
 * accepted the connection, with the loop's current state already attached
 * to the connection (conn_state). When `refusal` is not NULL the client may
 * not be served ("Too many connections", "Service shutting down"): the
 * service says so in its protocol and closes. Otherwise it creates its
 * session and calls conn_attach(). Either way it must end with
 * conn_settle() (or leave the conn closing).
 */
/* The refusal text while the daemon stops (a service may word it its own way). */
#define DAEMON_REFUSAL_SHUTDOWN "Service shutting down"

struct daemon; /* the running core, for services that own their socket */

struct service {
	const char *name; /* what `listen X { protocol = NAME }` says */
	void (*accept)(struct conn *conn, const char *refusal);
	/*
	 * Optional, instead of accept (1 of 2): a service that serves a
	 * listening socket the core bound (an evhttp server), where the core does no
	 * per-connection accept, no connection layer and no connection counting
	 * (limits.connections_* do not apply; the service bounds itself).
	 * serve_start runs on the main thread at start, before the loops run,
	 * once per loop that has a socket for the listener (every loop,
	 * SO_REUSEPORT like any other listener; loop 0 only when
	 * serve_one_loop); from then on it owns `fd` (nonblocking, listening)
	 * and serves it on `loop`'s event base, thread and worker pool — or on
	 * threads of its own. It returns its context, or NULL with *error_r
	 * malloc'd (the daemon does not start).
	 * serve_stop runs on the loop's thread when the daemon stops (or on the
	 * main thread if start-up failed): close fd and free everything.
	 * Listen sections are not re-read at a reload (like every listener);
	 * a service that needs the configuration asks daemon_loop_state().
	 * A listener of such a service may not ask for the PROXY protocol (a
	 * config error); on one with tls = implicit, serve_start must call
	 * daemon_serve_evhttp_tls() (the core refuses to start otherwise).
	 */
	void *(*serve_start)(struct daemon_loop *loop, int fd, const char *listener,
			     char **error_r);
	void (*serve_stop)(struct daemon_loop *loop, void *ctx);
	bool serve_one_loop;
	/*
	 * Optional, instead of accept (2 of 2): a service that binds its
	 * listening socket itself and serves it on threads of its own
	 * (the milter: libmilter listens and runs one thread per MTA
	 * connection). The core binds nothing for such a listener and never
	 * calls accept: start() runs once per listener on the main thread
	 * after the loops run (before that, nothing could serve a phase), with
	 * the listener's settings; -1 with *error_r stops the start-up.
	 * stop() runs once on the main thread when the daemon stops
	 * (SIGTERM/SIGINT, or a failed start): stop accepting, never block.
	 * Such a service reaches the loops with daemon_post() and holds a
	 * loop's state per session with daemon_hold(); the shutdown waits for
	 * the holds as for connections.
	 */
	int (*start)(struct daemon *core, const struct listen_config *lc, char **error_r);
	void (*stop)(void);
};

/* A setting that names a path, for the core's checks and messages. */
struct daemon_path {
	const char *setting; /* "mail_root" */
	const char *path;    /* absolute; "" = not set (skipped) */
};

/* What a program gives the core. The state functions are called from any
 * thread; ref/unref must be thread-safe. */
struct daemon_app {
	const char *ident;                /* "mxguard": syslog ident, log lines */
	const struct service *services;   /* table */
	size_t n_services;
	/* Build the complete shared state from a config file, or NULL with
	 * *error_r malloc'd. Run at start, at reload (on the main thread) and by
	 * `-t`. */
	struct server_state *(*state_build)(const char *config_path, char **error_r);
	struct server_state *(*state_ref)(struct server_state *st);
	void (*state_unref)(struct server_state **st);
	const struct mx_config *(*state_config)(const struct server_state *st);
	/* NULL when no certificate is configured */
	struct ssl_ctx_st *(*state_tls)(const struct server_state *st);
	/* Optional: settings of the program's own folders the core acts on,
	 * each list ended by { NULL, NULL } and valid while st is. state_dirs:
	 * the directories the state writes to — created when missing (at start
	 * handed to the run user, at a reload as the run user), refused when
	 * owned by someone else; state_files: what reloads and lookups read
	 * later, checked readable as the run user at start and by `-t`. */
	const struct daemon_path *(*state_dirs)(const struct server_state *st);
	const struct daemon_path *(*state_files)(const struct server_state *st);
	/* Optional: a few words for `-t`'s "FILE: ok (N listener(s), ...)"
	 * line ("1 local domain(s), 0 stage(s)"), malloc'd. */
	char *(*state_summary)(const struct server_state *st);
	/* Optional: on loop thread `loop`, before its first session uses st /
	 * after its last one let go. A failing loop_start on a reload keeps that
	 * loop on its old state (logged). */
	int (*state_loop_start)(struct server_state *st, struct daemon_loop *loop, char **error_r);
	void (*state_loop_stop)(struct server_state *st, struct daemon_loop *loop);
};

/*
 * Run the daemon: build the state, bind, create the data directories, drop
 * privileges, detach (unless foreground), start the loops and serve until
 * SIGTERM/SIGINT. Errors before detaching go to stderr; returns the exit
 * status.
 */
int daemon_run(const struct daemon_app *app, const char *config_path, bool foreground);
/* `mxguard -t`: every check start-up makes short of binding. 0 or 1. */
int daemon_check(const struct daemon_app *app, const char *config_path);

/*
 * A loop without threads, listeners or signals, for transcript tests and
 * fuzz targets: the caller runs `base` itself, hands connected sockets (one
 * end of a socketpair) to daemon_loop_adopt(), and they are served by the
 * named service with state st (referenced here) as if a client at
 * 192.0.2.1 had connected to a listener of that name. Freeing drops every
 * connection left (each logs its end).
 */
struct daemon_loop *daemon_loop_standalone(const struct daemon_app *app, struct server_state *st,
				       struct event_base *base, struct workers *workers);
int daemon_loop_adopt(struct daemon_loop *loop, int fd, const char *protocol);
size_t daemon_loop_conn_count(const struct daemon_loop *loop);
void daemon_loop_standalone_free(struct daemon_loop **loop);

/* --------------------------------------------------------------- loops */
/* The event base, index and worker pool of a loop (only on that loop's
 * thread). Shutdown waits for every job of the pool (workers_pending). */
struct event_base *daemon_loop_base(const struct daemon_loop *loop);
unsigned daemon_loop_index(const struct daemon_loop *loop);
struct workers *daemon_loop_workers(const struct daemon_loop *loop);
/* The loop's current shared state (only on that loop's thread; NULL before
 * its first state): what a serve_start service reads its settings from.
 * Borrowed: take app->state_ref for work that outlives the callback. */
struct server_state *daemon_loop_state(const struct daemon_loop *loop);
/* The core's newest state (borrowed), for serve_start: it runs before the
 * loop has a state of its own (daemon_loop_state is NULL then). */
struct server_state *daemon_loop_core_state(const struct daemon_loop *loop);

/*
 * For a serve_start service that serves with evhttp, at serve_start: when
 * `listener` (its name) has tls = implicit, every connection `http`
 * accepts speaks TLS from the first byte (evhttp_set_bevcb: an OpenSSL
 * bufferevent over the loop's current certificate, taken at each
 * connection, as the conn layer's smtps/imaps). true when it does — the
 * service then marks its answers as sent over TLS (Secure cookies, HSTS).
 */
struct evhttp;
struct bufferevent;
bool daemon_serve_evhttp_tls(struct daemon_loop *loop, struct evhttp *http, const char *listener);
/* The same in two steps, for a service that makes its connections'
 * bufferevents itself (evhttp_set_bevcb of its own, to watch what evhttp
 * writes): daemon_serve_tls() says whether `listener` has tls = implicit
 * (and counts as the call the core checks for); then, per connection,
 * daemon_serve_tls_bufferevent() is the OpenSSL bufferevent (fd -1, in
 * the accepting state) to hand evhttp. Never NULL (out of memory ends the
 * process: NULL would let evhttp speak plain text on a TLS port). */
bool daemon_serve_tls(struct daemon_loop *loop, const char *listener);
struct bufferevent *daemon_serve_tls_bufferevent(struct event_base *base, struct daemon_loop *loop);

/* ------------------------------------- services that own their socket */
/*
 * From any thread: run fn(loop, arg) on the thread of loop number
 * index % (number of loops), soon, once. Never blocks on the loop. -1 when
 * the loops are stopping for good (after the shutdown's wait, or the
 * deadline): fn will not run then, and the caller answers by itself.
 */
typedef void daemon_post_fn(struct daemon_loop *loop, void *arg);
int daemon_post(struct daemon *core, unsigned index, daemon_post_fn *fn, void *arg);
unsigned daemon_n_loops(const struct daemon *core);
/*
 * On a loop thread: hold the loop's current state for a session the core
 * did not accept, as a connection holds it — the state stays started on
 * this loop until daemon_release(), and the shutdown waits for every hold
 * (bounded by limits.timeout_shutdown). NULL while the loop is shutting
 * down (refuse the session). daemon_release() runs on the same loop.
 */
struct daemon_hold;
struct daemon_hold *daemon_hold(struct daemon_loop *loop);
struct server_state *daemon_hold_state(const struct daemon_hold *h);
void daemon_release(struct daemon_loop *loop, struct daemon_hold **h);

/* ---------------------------------------------------------- connections */

enum conn_line {
	CONN_LINE_NONE = 0,  /* no complete line buffered yet */
	CONN_LINE,           /* *line_r is a malloc'd line without its line end */
	CONN_LINE_TOO_LONG,  /* a complete line longer than the cap: discarded */
	CONN_LINE_OVERFLOW,  /* more than the cap buffered without a line end:
			      * the peer is flooding; the caller should close */
};

struct conn_handler {
	/* Input arrived, or output drained below the cap: process what can be
	 * processed. */
	void (*ready)(void *ctx);
	/* The TLS handshake completed (implicit TLS or after conn_starttls). */
	void (*tls_up)(void *ctx);
	/* Nothing arrived within the timeout: answer, then conn_close(). */
	void (*timeout)(void *ctx);
	/* The peer half-closed: answer what it sent, then close. conn_eof()
	 * is true from now on. */
	void (*eof)(void *ctx);
	/* The daemon is stopping: idle sessions say goodbye and close, busy
	 * ones finish their work first. */
	void (*shutdown)(void *ctx);
	/* The connection is gone (closed, reset, failed TLS): free the
	 * session. reason says why ("quit", "timeout", "eof", "tls_error"...).
	 * The conn is freed right after this returns. */
	void (*gone)(void *ctx, const char *reason);
};

void conn_attach(struct conn *conn, const struct conn_handler *h, void *ctx);

/* What the connection is. */
const char *conn_id(const struct conn *conn);          /* unique, for logs */
const char *conn_addr(const struct conn *conn);        /* numeric client address */
unsigned conn_port(const struct conn *conn);
const char *conn_listener(const struct conn *conn);    /* listen section title */
bool conn_implicit_tls(const struct conn *conn);       /* accepted on a TLS port */
bool conn_tls(const struct conn *conn);                /* TLS is (being) spoken */
bool conn_closing(const struct conn *conn);
bool conn_eof(const struct conn *conn);
struct daemon_loop *conn_loop(const struct conn *conn);
struct event_base *conn_base(const struct conn *conn);
/* The state the connection was accepted with, and the loop's newest state
 * (a session switches at a transaction boundary with conn_state_update). */
struct server_state *conn_state(const struct conn *conn);
struct server_state *conn_state_update(struct conn *conn);

/* Output. Never blocks; conn_output_len says how much is queued. */
void conn_write(struct conn *conn, const void *data, size_t len);
/* One reply line of a line protocol (SMTP, POP3): formatted, cut to 1021
 * octets, logged at debug level as "<id> <service> reply=...", and
 * written with CRLF. */
void conn_write_linev(struct conn *conn, const char *fmt, va_list ap) ATTR_PRINTF(2, 0);
size_t conn_output_len(const struct conn *conn);
/* TCP_NODELAY, for a service whose replies are bulk data (a POP3 RETR):
 * the last partial segment of a reply is sent at once instead of waiting
 * for the ACK of the one before it, which a client that reads the whole
 * reply before it answers delays by its delayed-ACK time (40 ms on Linux).
 * Each reply must then be queued whole in one callback, as the services
 * do, or it goes out in small segments. */
void conn_set_nodelay(struct conn *conn);

/*
 * Input. conn_read_line takes the next command line: ended by CRLF, or also
 * by a bare LF unless the connection is strict (conn_set_lines). Lines
 * longer than line_max octets (line end included) are never buffered whole:
 * a complete one is discarded (CONN_LINE_TOO_LONG); more than line_max
 * octets without a line end is CONN_LINE_OVERFLOW. The cap is the
 * service's (its own line_max setting): set it before the first read; until
 * then there is none.
 */
void conn_set_lines(struct conn *conn, size_t line_max, bool strict_crlf);
/* limits.timeout_greeting of the state the connection was accepted with:
 * the core waits that long for the TLS handshake, a service for its first
 * command. */
long conn_timeout_greeting(const struct conn *conn);
enum conn_line conn_read_line(struct conn *conn, char **line_r, size_t *len_r);
/* Raw input, for message bodies read with their own parser. */
struct evbuffer *conn_input(struct conn *conn);
size_t conn_input_len(const struct conn *conn);

/* Read/write timeout in seconds from now on; 0 = none (while busy). */
void conn_set_timeout(struct conn *conn, long seconds);

/*
 * STARTTLS: call it before queueing the "go ahead" reply. Everything the
 * client pipelined after the command is discarded, nothing more is read,
 * and once the output (the reply) is flushed the connection switches to
 * TLS on the same socket; tls_up() follows the handshake. -1 when TLS
 * cannot start (no certificate, already TLS, no memory for the SSL object):
 * nothing changed, so the caller answers with an error instead.
 */
int conn_starttls(struct conn *conn, struct ssl_ctx_st *ctx);

/* Close after the queued output is flushed (lingering on plain TCP, so the
 * last reply is not destroyed by a reset). Idempotent; reason is kept. */
void conn_close(struct conn *conn, const char *reason);
/*
 * Call at the end of every callback into the service that did not come
 * from the conn layer (a pipeline or delivery completion): frees the
 * connection (calling gone()) if it is closed and flushed. After it, the
 * session may be gone. The conn layer settles by itself after its own
 * handler calls.
 */
void conn_settle(struct conn *conn);

#endif
