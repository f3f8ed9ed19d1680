/*
 * test_backend.c — a backend for the integration tests that shadows the
 * Maildir store in the test daemon (tests/mxguard-teststage).
 *
 * It delegates everything to the real store, but can answer RCPT later,
 * from a timer on the transaction's loop (`testbackend { rcpt_delay_ms =
 * N }`), the way a relay answers after asking its upstream; and it logs
 * every recipient handed back ("testbackend abort n=K rcpts=<a>,<b>": a
 * drop(), or a transaction that ended without DATA) so the tests can see
 * it. With the
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
	struct testbackend_tx *t; /* NULL once the transaction ended */
};

static cfg_opt_t testbackend_opts[] = {
	CFG_INT("rcpt_delay_ms", 0, CFGF_NONE),
	CFG_END()
};

/* What the store's transaction is, and the recipients it took. */
struct testbackend_tx {
	struct backend_tx *store;
	char **rcpts;
	size_t n_rcpts;
	bool data;
	struct testbackend_wait *wait; /* the RCPT being answered later */
};

static int testbackend_create(const struct mx_config *cfg, const struct backends_route *route,
			      struct userdb *db, struct backend **be_r, char **error_r)
{
	struct testbackend *tb = xcalloc(1, sizeof(*tb));
	cfg_t *sec = cfg_getsec(cfg->cfg, "testbackend");

	if (store_backend_ops.create(cfg, route, db, &tb->store, error_r) < 0) {
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

static void testbackend_note(struct testbackend_tx *t, const char *address);

static void testbackend_answer(evutil_socket_t fd, short what, void *arg)
{
	struct testbackend_wait *w = arg;

	log_msg(LOG_LEVEL_INFO, "testbackend rcpt answer code=%u", w->reply.code);
	if (w->t != NULL)
		w->t->wait = NULL;
	char *address = w->rcpt.address != NULL ? xstrdup(w->rcpt.address) : NULL;
	if (!w->cb(w->ctx, &w->reply, &w->rcpt) && w->reply.code / 100 == 2)
		log_msg(LOG_LEVEL_INFO, "testbackend abort n=1 rcpts=<%s> (the asker left)",
			address);
	else if (w->reply.code / 100 == 2 && w->t != NULL)
		testbackend_note(w->t, address);
	free(address);
	backend_rcpt_clear(&w->rcpt); /* empty unless the asker left it to us */
	event_free(w->ev);
	free(w);
}

static void testbackend_tx_begin(struct backend_tx *tx)
{
	struct testbackend *tb = (struct testbackend *)tx->be;
	struct testbackend_tx *t = xcalloc(1, sizeof(*t));
	const struct backend_txinfo info = { .id = tx->id, .from = tx->from };

	t->store = backend_tx_begin(tb->store, &tx->env, &info);
	tx->priv = t;
}

static void testbackend_note(struct testbackend_tx *t, const char *address)
{
	t->rcpts = xrealloc(t->rcpts, (t->n_rcpts + 1) * sizeof(*t->rcpts));
	t->rcpts[t->n_rcpts++] = xstrdup(address);
}

static enum backend_status testbackend_rcpt(struct backend_tx *tx, const char *local,
					    const char *domain, struct backend_rcpt *rcpt,
					    struct backend_reply *reply, backend_rcpt_cb *cb,
					    void *ctx)
{
	struct testbackend *tb = (struct testbackend *)tx->be;
	struct testbackend_tx *t = tx->priv;
	struct testbackend_wait *w;
	struct timeval tv;

	if (tb->rcpt_delay_ms == 0) {
		enum backend_status st = backend_tx_rcpt(t->store, local, domain, rcpt, reply, cb, ctx);
		if (reply->code / 100 == 2)
			testbackend_note(t, rcpt->address);
		return st;
	}
	w = xcalloc(1, sizeof(*w));
	(void)backend_tx_rcpt(t->store, local, domain, &w->rcpt, &w->reply, NULL, NULL);
	w->cb = cb;
	w->ctx = ctx;
	w->t = t;
	t->wait = w;
	w->ev = evtimer_new(tx->env.base, testbackend_answer, w);
	tv.tv_sec = tb->rcpt_delay_ms / 1000;
	tv.tv_usec = (tb->rcpt_delay_ms % 1000) * 1000;
	evtimer_add(w->ev, &tv);
	log_msg(LOG_LEVEL_INFO, "testbackend rcpt pending <%s@%s>", local, domain);
	return BACKEND_PENDING;
}

static void testbackend_data(struct backend_tx *tx, const struct backend_message *msg,
			     backend_done_cb *done, void *ctx)
{
	struct testbackend_tx *t = tx->priv;

	t->data = true;
	backend_tx_data(t->store, msg, done, ctx);
}

static void testbackend_log_abort(const char *const *addrs, size_t n)
{
	char list[1024] = "";
	size_t len = 0;

	for (size_t i = 0; i < n && len < sizeof(list) - 1; i++) {
		int w = snprintf(list + len, sizeof(list) - len, "%s<%s>", i ? "," : "", addrs[i]);
		if (w < 0)
			break;
		len += (size_t)w;
	}
	log_msg(LOG_LEVEL_INFO, "testbackend abort n=%zu rcpts=%s", n, list);
}

/* A stage refused a recipient the backend took. */
static void testbackend_drop(struct backend_tx *tx, const struct backend_rcpt *rcpts, size_t n)
{
	struct testbackend_tx *t = tx->priv;
	const char *addrs[64];

	for (size_t i = 0; i < n && i < 64; i++) {
		addrs[i] = rcpts[i].address;
		for (size_t k = 0; k < t->n_rcpts; k++) {
			if (strcmp(t->rcpts[k], rcpts[i].address) == 0) {
				free(t->rcpts[k]);
				t->rcpts[k] = t->rcpts[--t->n_rcpts];
				break;
			}
		}
	}
	testbackend_log_abort(addrs, n < 64 ? n : 64);
}

/* Over: recipients that got no DATA are handed back. */
static void testbackend_tx_end(struct backend_tx *tx)
{
	struct testbackend_tx *t = tx->priv;

	if (t->wait != NULL)
		t->wait->t = NULL; /* its answer still comes, to nobody */
	if (!t->data && t->n_rcpts > 0)
		testbackend_log_abort((const char *const *)t->rcpts, t->n_rcpts);
	for (size_t i = 0; i < t->n_rcpts; i++)
		free(t->rcpts[i]);
	free(t->rcpts);
	backend_tx_end(&t->store);
	free(t);
	tx->priv = NULL;
}

static const struct backend_ops testbackend_ops = {
	.name = "store", /* shadows the built-in store in the test daemon */
	.create = testbackend_create,
	.destroy = testbackend_destroy,
	.ehlo = testbackend_ehlo,
	.tx_begin = testbackend_tx_begin,
	.rcpt = testbackend_rcpt,
	.data = testbackend_data,
	.drop = testbackend_drop,
	.tx_end = testbackend_tx_end,
};

static void testbackend_register(void) __attribute__((constructor));
static void testbackend_register(void)
{
	backends_register(&testbackend_ops);
	config_register_section("testbackend", testbackend_opts);
}
