/*
 * state.c — the daemon's shared state and what the core is told about it.
 *
 * A server_state bundles the config, the pipeline built from it, the user
 * database, the backend mail goes to and the TLS context, and names the
 * directories and files of the other folders' settings that the core
 * creates and checks (state_dirs, state_files). It is built completely (or
 * not at all) at start, at every reload and by `mxguard -t`, and is
 * reference-counted: sessions and deliveries finish with the state they
 * started with.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

#include "filters/bayes.h"
#include "proxy/proxy.h"
#include "web/web.h"

struct server_state *
server_state_build(const char *config_path, char **error_r)
{
	struct server_state *st = xcalloc(1, sizeof(*st));

	atomic_init(&st->refcount, 1);
	if (config_load(config_path, &st->cfg, error_r) < 0)
		goto fail;
	if (milter_check_config(st->cfg, error_r) < 0)
		goto fail;
	if (pipeline_create(st->cfg, &st->pipeline, error_r) < 0)
		goto fail;
	const struct backends_settings *bs = backends_settings(st->cfg);
	if (userdb_open(bs->passwd_file, &st->userdb, error_r) < 0)
		goto fail;
	/* where accepted mail goes: the Maildir store, for every local domain */
	if (backends_router_create(st->cfg, st->userdb, &st->backend, error_r) < 0)
		goto fail;
	if (daemon_tls_context(st->cfg, &st->ssl_ctx, error_r) < 0)
		goto fail;
	/* what the core creates and checks for us */
	st->dirs[0] = (struct daemon_path){ "mail_root", bs->mail_root };
	st->dirs[1] = (struct daemon_path){ "spool_dir", smtp_settings(st->cfg)->spool_dir };
	st->dirs[2] = (struct daemon_path){ "quarantine_dir", bs->quarantine_dir };
	st->files[0] = (struct daemon_path){ "passwd_file", bs->passwd_file };
	return st;
fail:
	server_state_unref(&st);
	return NULL;
}

struct server_state *
server_state_ref(struct server_state *st)
{
	atomic_fetch_add(&st->refcount, 1);
	return st;
}

void
server_state_unref(struct server_state **stp)
{
	struct server_state *st = *stp;

	*stp = NULL;
	if (st == NULL || atomic_fetch_sub(&st->refcount, 1) != 1)
		return;
	if (st->ssl_ctx != NULL)
		SSL_CTX_free(st->ssl_ctx);
	backend_destroy(&st->backend); /* before the user database it reads */
	userdb_close(&st->userdb);
	pipeline_unref(&st->pipeline);
	config_unref(&st->cfg);
	free(st);
}

static const struct mx_config *
state_config(const struct server_state *st)
{
	return st->cfg;
}

static SSL_CTX *
state_tls(const struct server_state *st)
{
	return st->ssl_ctx;
}

static const struct daemon_path *
state_dirs(const struct server_state *st)
{
	return st->dirs;
}

static const struct daemon_path *
state_files(const struct server_state *st)
{
	return st->files;
}

static char *
state_summary(const struct server_state *st)
{
	return xasprintf("%zu local domain(s), %zu route(s), %zu stage(s)",
			 backends_settings(st->cfg)->n_local_domains,
			 backends_settings(st->cfg)->n_routes,
			 pipeline_settings(st->cfg)->n_stages);
}

/* A loop starts using st: the pipeline's stages set up what they keep per
 * loop (an evdns base, a Redis context) on this loop's thread. */
static int
state_loop_start(struct server_state *st, struct daemon_loop *loop, char **error_r)
{
	const struct stage_env env = {
		.loop_index = daemon_loop_index(loop),
		.base = daemon_loop_base(loop),
		.workers = daemon_loop_workers(loop),
	};

	return pipeline_loop_start(st->pipeline, &env, error_r);
}

/* ... and its last session on this loop let go of st: torn down here. */
static void
state_loop_stop(struct server_state *st, struct daemon_loop *loop)
{
	pipeline_loop_stop(st->pipeline, daemon_loop_index(loop));
	backends_loop_stop(); /* the relay's idle upstream connections of this loop */
}

/* The POP3 service (pop3/) learns what it needs of the state it was
 * accepted with; the connection holds that state until it closes. */
static void
pop3_service_accept(struct conn *conn, const char *refusal)
{
	const struct server_state *st = conn_state(conn);
	const struct pop3_env env = {
		.cfg = st->cfg,
		.userdb = st->userdb,
		.ssl_ctx = st->ssl_ctx,
	};

	pop3_session_start(conn, refusal, &env);
}

/* The milter service (milter/) learns what it needs of the state a
 * session holds; libmilter owns the socket, so the row has start/stop
 * instead of accept. */
static void
milter_env_of(const struct server_state *st, struct milter_env *env)
{
	const struct smtp_settings *ss = smtp_settings(st->cfg);

	*env = (struct milter_env){
		.pipeline = st->pipeline,
		.hostname = ss->hostname,
		.spool_dir = ss->spool_dir,
		.spill_threshold = (size_t)ss->spill_threshold,
		.message_size_max = (uint64_t)backends_settings(st->cfg)->message_size_max,
	};
}

static int
milter_service_start_row(struct daemon *core, const struct listen_config *lc, char **error_r)
{
	return milter_service_start(core, lc, milter_env_of, error_r);
}

/* A user's move into or out of Junk teaches the bayes stage (when it is
 * on): on the worker pool, after the copy. */
static void
imap_junk_moved(const struct mx_config *cfg, const char *user, const char *data, size_t len,
		bool to_junk)
{
	char *err = NULL;
	int r = bayes_learn_moved(cfg, user, data, len, to_junk, &err);

	if (r == 0)
		log_msg(LOG_LEVEL_INFO, "bayes learnt user=%s class=%s source=imap_move", user,
			to_junk ? "spam" : "ham");
	else if (r < 0)
		log_msg(LOG_LEVEL_WARN, "bayes cannot learn a move of user=%s: %s", user,
			err != NULL ? err : "?");
	free(err);
}

/* The web service's "Spam" / "Not spam" buttons and moves, the same
 * way (web/api.c calls it on the worker pool after the copy). */
static void
web_junk_moved(const struct mx_config *cfg, const char *user, const char *data, size_t len,
	       bool to_junk)
{
	char *err = NULL;
	int r = bayes_learn_moved(cfg, user, data, len, to_junk, &err);

	if (r == 0)
		log_msg(LOG_LEVEL_INFO, "bayes learnt user=%s class=%s source=web_move", user,
			to_junk ? "spam" : "ham");
	else if (r < 0)
		log_msg(LOG_LEVEL_WARN, "bayes cannot learn a web move of user=%s: %s", user,
			err != NULL ? err : "?");
	free(err);
}

/* The IMAP service (imap/), the same way as POP3. */
static void
imap_service_accept(struct conn *conn, const char *refusal)
{
	const struct server_state *st = conn_state(conn);
	const struct imap_env env = {
		.cfg = st->cfg,
		.userdb = st->userdb,
		.ssl_ctx = st->ssl_ctx,
		.junk_moved = imap_junk_moved,
	};

	imap_session_start(conn, refusal, &env);
}

/* The web service (web/): its env is asked for at each request, the
 * state it names held until release; moves into or out of Junk teach
 * the bayes stage as IMAP's do. */
static void
web_release(void *hold)
{
	struct server_state *st = hold;
	server_state_unref(&st);
}

static void
web_env_of(struct daemon_loop *loop, struct web_env *env)
{
	struct server_state *cur = daemon_loop_state(loop);
	struct server_state *st = server_state_ref(cur != NULL ? cur : daemon_loop_core_state(loop));

	*env = (struct web_env){
		.cfg = st->cfg,
		.userdb = st->userdb,
		.junk_moved = web_junk_moved,
		.hostname = smtp_settings(st->cfg)->hostname,
		.hold = st,
		.release = web_release,
	};
}

static void *
web_serve_start_row(struct daemon_loop *loop, int fd, const char *listener, char **error_r)
{
	return web_serve_start(loop, fd, listener, web_env_of, error_r);
}

/* The services listeners can name with `protocol = ...`: one row each. */
static const struct service services[] = {
	{ .name = "smtp", .accept = smtp_service_accept },
	{ .name = "pop3", .accept = pop3_service_accept },
	{ .name = "imap", .accept = imap_service_accept },
	/* GET /metrics (metrics_http.c): evhttp serves its socket, on loop 0 */
	{ .name = "metrics", .serve_start = metrics_serve_start, .serve_stop = metrics_serve_stop,
	  .serve_one_loop = true },
	/* the web page and its JSON API (web/): evhttp on loop 0 */
	{ .name = "web", .serve_start = web_serve_start_row, .serve_stop = web_serve_stop,
	  .serve_one_loop = true },
	{ .name = "milter", .start = milter_service_start_row, .stop = milter_service_stop },
};

const struct daemon_app mxguard_app = {
	.ident = "mxguard",
	.services = services,
	.n_services = N_ELEMENTS(services),
	.state_build = server_state_build,
	.state_ref = server_state_ref,
	.state_unref = server_state_unref,
	.state_config = state_config,
	.state_tls = state_tls,
	.state_dirs = state_dirs,
	.state_files = state_files,
	.state_summary = state_summary,
	.state_loop_start = state_loop_start,
	.state_loop_stop = state_loop_stop,
};
