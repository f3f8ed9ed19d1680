/*
 * milter.h — the milter service: the pipeline behind Postfix or Sendmail.
 *
 * libmilter owns the socket and runs one thread per MTA connection; its
 * callbacks (connect, helo, envfrom, envrcpt, header, eoh, body, eom,
 * abort, close) map onto the pipeline's phases. The pipeline and its
 * per-loop handles belong to the loop threads, so each callback that runs
 * a phase hands it to a loop with daemon_post() and waits on its own
 * libmilter thread until the loop reports the outcome; the loops never
 * block, and asynchronous stages (DNS, Redis) work unchanged. A milter
 * connection holds the loop's state for its life (daemon_hold), so the
 * core's reload and shutdown treat it like a connection of its own.
 *
 * libmilter's signal thread is never started: smfi_main() would spawn one
 * that sigwaits SIGHUP/SIGTERM/SIGINT and stops the milter on any of them,
 * racing the daemon's main thread for the same signals (sigwait takes a
 * signal even where it is blocked, so blocking them in our threads does
 * not help). The service runs libmilter's listener without it; see
 * doc/milter.md.
 *
 * The service row is in proxy/state.c, which hands this folder what it
 * needs of the shared state through milter_env_fn (this folder never sees
 * struct server_state).
 */
#ifndef MXGUARD_MILTER_H
#define MXGUARD_MILTER_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/daemon.h"
#include "filters/filters.h"

/* What a milter session uses of the state it holds; valid while held. */
struct milter_env {
	struct pipeline *pipeline;
	const char *hostname;       /* our name: the authserv-id we own */
	const char *spool_dir;      /* where a large body spills */
	size_t spill_threshold;     /* octets of body kept in memory */
	uint64_t message_size_max;  /* octets; 0 = no limit */
};
typedef void milter_env_fn(const struct server_state *st, struct milter_env *env_r);

/* The service's start and stop (struct service.start/stop), with the
 * program's env function. One milter listener per process (libmilter has
 * one listening socket): a second one is refused. */
int milter_service_start(struct daemon *core, const struct listen_config *lc,
			 milter_env_fn *env, char **error_r);
void milter_service_stop(void);

/*
 * libmilter's connection spec for a listen address: "127.0.0.1:8891" ->
 * "inet:8891@127.0.0.1", "[::1]:8891" -> "inet6:8891@::1",
 * "unix:/run/mxguard/milter.sock" as it is. 0, or -1 when the address is
 * none of these or does not fit in outsz.
 */
int milter_conn_spec(const char *address, char *out, size_t outsz);

/* The config's milter listeners: at most one, each address a spec. 0, or
 * -1 with *error_r ("file:line: listen NAME: ..."). For the program's
 * state build (start, reload, `mxguard -t`). */
int milter_check_config(const struct mx_config *cfg, char **error_r);

/*
 * The header field the MTA handed (libmilter's header callback: name and
 * value, NUL-terminated) as it stands in the message: "Name: value" and
 * CRLF, every bare LF of a folded value made CRLF (a control character
 * in the name becomes '_'). malloc'd, NUL-ended,
 * *len_r octets (at most strlen(name) + 2 * strlen(value) + 4).
 */
char *milter_header_field(const char *name, const char *value, size_t *len_r);

#endif
