/*
 * proxy.h — the mxguard daemon: its shared state and the SMTP service.
 *
 * The daemon core (daemon/) runs loops, listeners, signals and reloads; this
 * folder gives it what is mxguard's own: the shared state every session
 * uses (config, pipeline, user database, TLS context — struct server_state,
 * built whole and swapped whole on reload, see state.c) and the services
 * listeners can name (SMTP, session.c; POP3, pop3/). main.c is the command line.
 */
#ifndef MXGUARD_PROXY_H
#define MXGUARD_PROXY_H

#include <stdatomic.h>
#include <stdbool.h>

#include "backends/backends.h"
#include "daemon/daemon.h"
#include "filters/filters.h"
#include "lib/lib.h"
#include "milter/milter.h"
#include "pop3/pop3.h"
#include "imap/imap.h"

/* The SMTP service's settings (settings.c). */
enum bare_lf_policy { BARE_LF_REJECT, BARE_LF_ACCEPT };

struct smtp_settings {
	char *hostname;            /* the system host name when set to "" */
	char *spool_dir;
	int bare_lf;               /* enum bare_lf_policy */
	long line_max;             /* octets incl. CRLF */
	long recipients_max;
	long commands_max;         /* non-transaction commands per session */
	long errors_max;           /* protocol errors before disconnect */
	long timeout_command;      /* seconds */
	long timeout_data;
	long spill_threshold;      /* octets of body kept in memory */
	long data_line_max;        /* longest message line, octets incl. CRLF */
	char **xclient_trusted;    /* networks that may send XCLIENT */
	size_t n_xclient_trusted;
};

void smtp_register_config(void);
const struct smtp_settings *smtp_settings(const struct mx_config *cfg);
/* Every settings module of the daemon's config file: the daemon core's,
 * the SMTP service's, the POP3 service's, the backends' and the filters'
 * (with every stage's section). Call once before config_load(); idempotent. */
void mxguard_register_config(void);

/* Everything a session needs from the outside, swapped whole on reload. */
struct server_state {
	atomic_int refcount;
	struct mx_config *cfg;
	struct pipeline *pipeline;
	struct userdb *userdb;
	SSL_CTX *ssl_ctx; /* NULL without tls_cert */
	struct backend *backend; /* where accepted mail goes (the store) */
	/* for the core (daemon_app.state_dirs/state_files), { NULL, NULL }-ended */
	struct daemon_path dirs[4];
	struct daemon_path files[2];
};

struct server_state *server_state_build(const char *config_path, char **error_r);
struct server_state *server_state_ref(struct server_state *st);
void server_state_unref(struct server_state **st);

/* The daemon as the core runs it: state functions and the service table. */
extern const struct daemon_app mxguard_app;

/* session.c: the SMTP service's accept (a row of the service table). */
void smtp_service_accept(struct conn *conn, const char *refusal);
/* metrics_http.c: the `metrics` service (GET /metrics), a row that serves
 * its listening socket itself (struct service.serve_start). */
void *metrics_serve_start(struct daemon_loop *loop, int fd, const char *listener, char **error_r);
void metrics_serve_stop(struct daemon_loop *loop, void *ctx);

#endif
