/*
 * proxy.h — the SMTP front door: the server (threads, listeners, signals,
 * shared state) and the session state machine.
 *
 * One process runs N loop threads, each with its own event_base; every
 * listening socket is watched by every loop, and a session lives on the loop
 * that accepted it until it closes, so session code takes no locks. What the
 * sessions share — config, pipeline, user database, TLS context — is bundled
 * in a reference-counted struct server_state that a reload replaces whole.
 */
#ifndef MXGUARD_PROXY_H
#define MXGUARD_PROXY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "backends/backends.h"
#include "filters/filters.h"
#include "lib/lib.h"

struct event_base;
struct evconnlistener;
struct event;

/* Everything a session needs from the outside, swapped whole on reload. */
struct server_state {
	atomic_int refcount;
	struct mx_config *cfg;
	struct pipeline *pipeline;
	struct userdb *userdb;
	SSL_CTX *ssl_ctx; /* NULL without tls_cert */
	char *postmaster; /* mailbox for postmaster@<local domain>: cfg->postmaster,
			   * or the first passwd-file user of a local domain */
};

struct server_state *server_state_build(const char *config_path, char **error_r);
struct server_state *server_state_ref(struct server_state *st);
void server_state_unref(struct server_state **st);

struct server;

struct loop {
	struct server *srv;
	unsigned index;
	pthread_t thread;
	struct event_base *base;
	struct evconnlistener **listeners; /* one per server listen socket */
	struct session *sessions;          /* this loop's sessions, for shutdown */
	bool shutting_down;
	bool accept_paused;                /* after EMFILE: listeners off briefly */
};

struct listen_socket {
	int fd;
	bool implicit_tls;
	char *name;
	char *address;
};

struct server {
	char *config_path;
	bool foreground;
	pthread_mutex_t state_lock;
	struct server_state *state; /* current; take with server_get_state() */
	struct workers *workers;
	struct listen_socket *socks;
	size_t n_socks;
	struct loop *loops;
	unsigned n_loops;
	atomic_int n_sessions;
	atomic_int n_jobs;          /* blocking jobs in flight (deliveries) */
	/* connection counting per client address */
	pthread_mutex_t conn_lock;
	struct conn_count *conn_counts;
	long conn_total;
};

/* The current shared state, referenced: the caller unrefs it. */
struct server_state *server_get_state(struct server *srv);
/* Count a new connection from addr; false (and nothing counted) when the
 * total or per-client limit is reached. *reason_r says which. */
bool server_conn_acquire(struct server *srv, const char *addr, long per_client, long total,
			 const char **reason_r);
void server_conn_release(struct server *srv, const char *addr);

int server_run(const char *config_path, bool foreground);

/* session.c */
void session_accept(struct loop *loop, int fd, const struct sockaddr *sa, bool implicit_tls);
/* Called on the loop thread when the server stops: idle sessions get 421,
 * busy ones finish their transaction first. */
void session_shutdown_loop(struct loop *loop);

#endif
