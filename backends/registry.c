/*
 * registry.c — where backends are found by name: one line per backend.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backends.h"

extern const struct backend_ops store_backend_ops;
extern const struct backend_ops relay_backend_ops;

static const struct backend_ops *const backend_table[] = {
	&store_backend_ops,
	&relay_backend_ops,
	NULL /* end of table */
};

/* Registered at run time (tests), at start-up before any thread runs. */
static const struct backend_ops **runtime_backends;
static size_t n_runtime_backends;

void
backends_register(const struct backend_ops *ops)
{
	runtime_backends = xrealloc(runtime_backends,
				    (n_runtime_backends + 1) * sizeof(*runtime_backends));
	runtime_backends[n_runtime_backends++] = ops;
}

const struct backend_ops *
backends_find(const char *name)
{
	for (size_t i = n_runtime_backends; i-- > 0;) {
		if (strcmp(runtime_backends[i]->name, name) == 0)
			return runtime_backends[i];
	}
	for (size_t i = 0; backend_table[i] != NULL; i++) {
		if (strcmp(backend_table[i]->name, name) == 0)
			return backend_table[i];
	}
	return NULL;
}

int
backend_create(const char *name, const struct mx_config *cfg, const struct backends_route *route,
	       struct userdb *db, struct backend **be_r, char **error_r)
{
	const struct backend_ops *ops = backends_find(name);

	*be_r = NULL;
	if (ops == NULL) {
		*error_r = xasprintf("no backend named \"%s\"", name);
		return -1;
	}
	if (ops->create(cfg, route, db, be_r, error_r) < 0)
		return -1;
	(*be_r)->ops = ops;
	return 0;
}

void
backend_destroy(struct backend **bep)
{
	struct backend *be = *bep;

	*bep = NULL;
	if (be != NULL)
		be->ops->destroy(be);
}

void
backend_rcpt_clear(struct backend_rcpt *r)
{
	free(r->address);
	free(r->mailbox);
	free(r->where);
	r->address = r->mailbox = r->where = NULL;
	r->slot = 0;
}

void
backend_reply_set(struct backend_reply *r, unsigned code, const char *enh, const char *reason,
		  const char *fmt, ...)
{
	va_list ap;

	r->code = code;
	str_copy(r->enhanced, enh, sizeof(r->enhanced));
	str_copy(r->reason, reason, sizeof(r->reason));
	va_start(ap, fmt);
	vsnprintf(r->text, sizeof(r->text), fmt, ap);
	va_end(ap);
}

/* ---------------------------------------------------- a transaction */

struct backend_tx *
backend_tx_begin(struct backend *be, const struct backend_env *env,
		 const struct backend_txinfo *info)
{
	struct backend_tx *tx = xcalloc(1, sizeof(*tx));

	tx->be = be;
	tx->env = *env;
	tx->id = xstrdup(info->id != NULL ? info->id : "");
	tx->from = xstrdup(info->from != NULL ? info->from : "");
	tx->client_addr = xstrdup(info->client_addr != NULL ? info->client_addr : "");
	tx->helo = xstrdup(info->helo != NULL ? info->helo : "");
	tx->client_port = info->client_port;
	tx->body_8bit = info->body_8bit;
	tx->esmtp = info->esmtp;
	tx->tls = info->tls;
	tx->size = info->size;
	if (be->ops->tx_begin != NULL)
		be->ops->tx_begin(tx);
	return tx;
}

enum backend_status
backend_tx_rcpt(struct backend_tx *tx, const char *local, const char *domain,
		struct backend_rcpt *rcpt, struct backend_reply *reply, backend_rcpt_cb *cb,
		void *ctx)
{
	return tx->be->ops->rcpt(tx, local, domain, rcpt, reply, cb, ctx);
}

void
backend_tx_data(struct backend_tx *tx, const struct backend_message *msg, backend_done_cb *done,
		void *ctx)
{
	tx->be->ops->data(tx, msg, done, ctx);
}

void
backend_tx_drop(struct backend_tx *tx, const struct backend_rcpt *rcpts, size_t n)
{
	if (n > 0 && tx->be->ops->drop != NULL)
		tx->be->ops->drop(tx, rcpts, n);
}

void
backend_tx_end(struct backend_tx **txp)
{
	struct backend_tx *tx = *txp;

	*txp = NULL;
	if (tx == NULL)
		return;
	if (tx->be->ops->tx_end != NULL)
		tx->be->ops->tx_end(tx);
	free(tx->id);
	free(tx->from);
	free(tx->client_addr);
	free(tx->helo);
	free(tx);
}
