/*
 * daemon-internal.h — what daemon.c and conn.c share inside daemon/. Nothing
 * outside daemon/ includes this file; services use daemon.h.
 */
#ifndef MXGUARD_CORE_INTERNAL_H
#define MXGUARD_CORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "daemon/daemon.h"

struct event;
struct evconnlistener;

/* One `listen` section: its socket on every loop (SO_REUSEPORT). */
struct daemon_listener {
	char *name;
	char *address;
	bool implicit_tls;
	unsigned proxy_allowed;        /* PROXY_ALLOW_V1|V2; 0 = off */
	struct net_cidr *proxy_trusted;
	size_t n_proxy_trusted;
	long proxy_timeout;            /* seconds */
	const struct service *service;
	int *fds; /* n_loops of them */
};

/* Connections from one client address (for limits.connections_per_client). */
struct conn_count {
	struct conn_count *next;
	long count;
	char addr[64];
};

/* A state some of a loop's connections use, and how many of them. */
struct loop_state {
	struct loop_state *next;
	struct server_state *st; /* one reference */
	long users;
};

struct daemon {
	const struct daemon_app *app;
	char *config_path;
	bool foreground;
	pthread_mutex_t state_lock;
	struct server_state *state; /* newest; under state_lock */
	struct workers *workers;
	struct daemon_listener *listeners;
	size_t n_listeners;
	struct daemon_loop *loops;
	unsigned n_loops;
	atomic_int n_conns;
	/* the loops report their first state installed */
	pthread_mutex_t start_lock;
	pthread_cond_t start_cond;
	unsigned n_started;
	bool start_failed;
	/* connection counting per client address */
	pthread_mutex_t conn_lock;
	struct conn_count *conn_counts;
	long conn_total;
	/* services that own their socket (struct service.start) were started */
	bool owned_started;
};

struct daemon_loop {
	struct daemon *core;
	unsigned index;
	pthread_t thread;
	struct event_base *base;
	struct evconnlistener **evl; /* one per listener */
	void **serve_ctx;            /* per listener: a serve_start service's context */
	bool *serve_tls;             /* per listener: it called daemon_serve_evhttp_tls */
	struct conn *conns;          /* this loop's connections */
	struct loop_state *states;   /* every state in use here */
	struct loop_state *current;  /* the one new connections take */
	/* a state pushed by the main thread, taken by the loop */
	pthread_mutex_t push_lock;
	struct server_state *pushed;
	struct event *ev_push, *ev_shutdown, *ev_exit;
	bool shutting_down;
	bool accept_paused;
	bool forced;                 /* exit with connections still open */
};

/* conn.c */
struct conn *conn_new(struct daemon_loop *loop, const struct daemon_listener *l, int fd,
		      const struct sockaddr *sa);
/* Accept sequence after conn_new: the PROXY header when the listener
 * wants one from this peer, then conn_begin. */
void conn_accepted(struct conn *conn);
/* Accept sequence after the PROXY header: slot, TLS, then the service. */
void conn_begin(struct conn *conn);
/* Shutdown: tell every connection of the loop. */
void conn_shutdown_all(struct daemon_loop *loop);
/* Forced exit: drop every connection now (each still logs). */
void conn_drop_all(struct daemon_loop *loop, const char *reason);

/* states.c */
struct loop_state *daemon_loop_state_take(struct daemon_loop *loop);
void daemon_loop_state_release(struct daemon_loop *loop, struct loop_state **ls);
/* A state no connection of the loop uses (and not current): stop, free. */
void daemon_loop_state_drop(struct daemon_loop *loop, struct loop_state *ls);
/* On the loop thread: make st (one reference, handed over) current; -1
 * (st let go, logged) when the program's per-loop start failed. */
int daemon_loop_install(struct daemon_loop *loop, struct server_state *st);

#endif
