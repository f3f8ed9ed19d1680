/*
 * proxy.h — the mxguard daemon: its shared state and the SMTP service.
 *
 * The daemon core (daemon/) runs loops, listeners, signals and reloads; this
 * folder gives it what is mxguard's own: the shared state every session
 * uses (config, pipeline, user database, TLS context — struct server_state,
 * built whole and swapped whole on reload, see state.c) and the services
 * listeners can name (SMTP, session.c). main.c is the command line.
 */
#ifndef MXGUARD_PROXY_H
#define MXGUARD_PROXY_H

#include <stdatomic.h>
#include <stdbool.h>

#include "backends/backends.h"
#include "daemon/daemon.h"
#include "filters/filters.h"
#include "lib/lib.h"

/* Everything a session needs from the outside, swapped whole on reload. */
struct server_state {
	atomic_int refcount;
	struct mx_config *cfg;
	struct pipeline *pipeline;
	struct userdb *userdb;
	SSL_CTX *ssl_ctx; /* NULL without tls_cert */
	struct backend *backend; /* where accepted mail goes (the store) */
};

struct server_state *server_state_build(const char *config_path, char **error_r);
struct server_state *server_state_ref(struct server_state *st);
void server_state_unref(struct server_state **st);

/* The daemon as the core runs it: state functions and the service table. */
extern const struct daemon_app mxguard_app;

/* session.c: the SMTP service's accept (a row of the service table). */
void smtp_service_accept(struct conn *conn, const char *refusal);

#endif
