/*
 * registry.c — where backends are found by name: one line per backend.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "backends/backends.h"

extern const struct backend_ops store_backend_ops;

static const struct backend_ops *const backend_table[] = {
	&store_backend_ops,
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
backend_create(const char *name, const struct mx_config *cfg, struct userdb *db,
	       struct backend **be_r, char **error_r)
{
	const struct backend_ops *ops = backends_find(name);

	*be_r = NULL;
	if (ops == NULL) {
		*error_r = xasprintf("no backend named \"%s\"", name);
		return -1;
	}
	if (ops->create(cfg, db, be_r, error_r) < 0)
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
}
