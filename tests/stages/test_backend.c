/*
 * test_backend.c — a backend for the integration tests that shadows the
 * Maildir store in the test daemon (tests/mxguard-teststage).
 *
 * It delegates everything to the real store, but can answer RCPT later,
 * from a timer on the transaction's loop (`testbackend { rcpt_delay_ms =
 * N }`), the way a relay answers after asking its upstream; and it logs
 * every abort() ("testbackend abort n=K rcpts=<a>,<b>") so the tests can
 * see that a transaction which ended without DATA was handed back. With the
 * default delay of 0 it behaves exactly like the store.
 */
#include "config.h"

#include <confuse.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backends.h"
#include "lib/lib.h"

extern const struct backend_ops store_backend_ops;

struct testbackend {
	struct backend hdr; /* must be first */
	struct backend *store;
	long rcpt_delay_ms;
};

/* A later RCPT answer, owned by its timer. */
struct testbackend_wait {
	struct event *ev;
	struct backend_reply reply;
	struct backend_rcpt rcpt;
	backend_rcpt_cb *cb;
	void *ctx;
};

static cfg_opt_t testbackend_opts[] = {
	CFG_INT("rcpt_delay_ms", 0, CFGF_NONE),
	CFG_END()
};

static int testbackend_create(const struct mx_config *cfg, struct userdb *db,
			      struct backend **be_r, char **error_r)
{
	struct testbackend *tb = xcalloc(1, sizeof(*tb));
	cfg_t *sec = cfg_getsec(cfg->cfg, "testbackend");

	if (store_backend_ops.create(cfg, db, &tb->store, error_r) < 0) {
		free(tb);
		return -1;
	}
	tb->store->ops = &store_backend_ops;
	tb->rcpt_delay_ms = sec != NULL ? cfg_getint(sec, "rcpt_delay_ms") : 0;
	*be_r = &tb->hdr;
	return 0;
}

static void testbackend_destroy(struct backend *be)
{
	struct testbackend *tb = (struct testbackend *)be;

	backend_destroy(&tb->store);
	free(tb);
}

static const char *const *testbackend_ehlo(const struct backend *be)
{
	const struct testbackend *tb = (const struct testbackend *)be;

	return tb->store->ops->ehlo(tb->store);
}

static void testbackend_answer(evutil_socket_t fd, short what, void *arg)
{
	struct testbackend_wait *w = arg;

	log_msg(LOG_LEVEL_INFO, "testbackend rcpt answer code=%u", w->reply.code);
	if (!w->cb(w->ctx, &w->reply, &w->rcpt) && w->reply.code / 100 == 2)
		log_msg(LOG_LEVEL_INFO, "testbackend abort n=1 rcpts=<%s> (the asker left)",
			w->rcpt.address);
	backend_rcpt_clear(&w->rcpt); /* empty unless the asker left it to us */
	event_free(w->ev);
	free(w);
}

static enum backend_status testbackend_rcpt(struct backend *be, const struct backend_env *env,
					    const char *local, const char *domain,
					    struct backend_rcpt *rcpt, struct backend_reply *reply,
					    backend_rcpt_cb *cb, void *ctx)
{
	struct testbackend *tb = (struct testbackend *)be;
	struct testbackend_wait *w;
	struct timeval tv;

	if (tb->rcpt_delay_ms == 0)
		return tb->store->ops->rcpt(tb->store, env, local, domain, rcpt, reply, cb, ctx);
	w = xcalloc(1, sizeof(*w));
	(void)tb->store->ops->rcpt(tb->store, env, local, domain, &w->rcpt, &w->reply, NULL, NULL);
	w->cb = cb;
	w->ctx = ctx;
	w->ev = evtimer_new(env->base, testbackend_answer, w);
	tv.tv_sec = tb->rcpt_delay_ms / 1000;
	tv.tv_usec = (tb->rcpt_delay_ms % 1000) * 1000;
	evtimer_add(w->ev, &tv);
	log_msg(LOG_LEVEL_INFO, "testbackend rcpt pending <%s@%s>", local, domain);
	return BACKEND_PENDING;
}

static void testbackend_data(struct backend *be, const struct backend_env *env,
			     const struct backend_message *msg, backend_done_cb *done, void *ctx)
{
	struct testbackend *tb = (struct testbackend *)be;

	tb->store->ops->data(tb->store, env, msg, done, ctx);
}

static void testbackend_abort(struct backend *be, const struct backend_rcpt *rcpts, size_t n)
{
	char list[1024] = "";
	size_t len = 0;

	for (size_t i = 0; i < n && len < sizeof(list) - 1; i++) {
		int w = snprintf(list + len, sizeof(list) - len, "%s<%s>", i ? "," : "",
				 rcpts[i].address);
		if (w < 0)
			break;
		len += (size_t)w;
	}
	log_msg(LOG_LEVEL_INFO, "testbackend abort n=%zu rcpts=%s", n, list);
}

static const struct backend_ops testbackend_ops = {
	.name = "store", /* shadows the built-in store in the test daemon */
	.create = testbackend_create,
	.destroy = testbackend_destroy,
	.ehlo = testbackend_ehlo,
	.rcpt = testbackend_rcpt,
	.data = testbackend_data,
	.abort = testbackend_abort,
};

static void testbackend_register(void) __attribute__((constructor));
static void testbackend_register(void)
{
	backends_register(&testbackend_ops);
	config_register_section("testbackend", testbackend_opts);
}
