/*
 * state.c — the daemon's shared state and what the core is told about it.
 *
 * A server_state bundles the config, the pipeline built from it, the user
 * database and the TLS context. It is built completely (or not at all) at
 * start, at every reload and by `mxguard -t`, and is reference-counted:
 * sessions and deliveries finish with the state they started with.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

#include "proxy/proxy.h"

struct postmaster_find {
	const struct mx_config *cfg;
	char *found;
};

static void
postmaster_find_cb(const char *user, void *ctx)
{
	struct postmaster_find *pf = ctx;
	const char *at = strrchr(user, '@');

	if (pf->found == NULL && at != NULL && config_is_local_domain(pf->cfg, at + 1))
		pf->found = xstrdup(user);
}

/* Who gets postmaster@<local domain> (RFC 5321 4.5.1 requires it to work):
 * the configured mailbox, else the first passwd-file user of a local
 * domain, else the configuration is refused. */
static int
server_state_postmaster(struct server_state *st, char **error_r)
{
	struct postmaster_find pf = { st->cfg, NULL };

	if (st->cfg->postmaster[0] != '\0') {
		st->postmaster = xstrdup(st->cfg->postmaster);
		return 0;
	}
	if (userdb_file_list(st->cfg->passwd_file, postmaster_find_cb, &pf, error_r) < 0)
		return -1;
	if (pf.found == NULL) {
		*error_r = xasprintf("%s: postmaster: no mailbox for postmaster@%s (%s has no user "
				     "of a local domain); set postmaster = \"user@%s\"",
				     st->cfg->path, st->cfg->local_domains[0], st->cfg->passwd_file,
				     st->cfg->local_domains[0]);
		return -1;
	}
	st->postmaster = pf.found;
	return 0;
}

struct server_state *
server_state_build(const char *config_path, char **error_r)
{
	struct server_state *st = xcalloc(1, sizeof(*st));

	atomic_init(&st->refcount, 1);
	if (config_load(config_path, &st->cfg, error_r) < 0)
		goto fail;
	if (pipeline_create(st->cfg, &st->pipeline, error_r) < 0)
		goto fail;
	if (userdb_open(st->cfg->passwd_file, &st->userdb, error_r) < 0)
		goto fail;
	if (server_state_postmaster(st, error_r) < 0)
		goto fail;
	if (st->cfg->tls_cert[0] != '\0') {
		st->ssl_ctx = tls_server_ctx_from_config(st->cfg, error_r);
		if (st->ssl_ctx == NULL)
			goto fail;
	}
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
	free(st->postmaster);
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
}

/* The services listeners can name with `protocol = ...`: one row each. */
static const struct service services[] = {
	{ "smtp", smtp_service_accept },
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
	.state_loop_start = state_loop_start,
	.state_loop_stop = state_loop_stop,
};
