/*
 * router.c — the backend the session talks to: each recipient to its
 * destination, one transaction to several of them.
 *
 * Destinations are backends in slots: slot 0 is the Maildir store (local
 * domains, and quarantine for everyone), slot 1 + i the relay of the i-th
 * `route` section. A destination whose delivery can be undone (prepare/
 * commit: the store) may share a transaction with at most one destination
 * that cannot (a relay: once its upstream said 250 the copy is gone).
 * A recipient that would add a second one gets 452 4.5.3: the client sends
 * it again in another transaction (RFC 5321 4.5.3.1.10), so nothing is
 * lost and nothing is delivered twice.
 *
 * DATA with both kinds: the store prepares its copies (written and fsynced
 * in tmp/), then the relay sends the message, then the store commits
 * (renames into new/) if the relay said 2xx, or throws the copies away.
 * The one window left — a rename failing after the upstream's 250 — is
 * answered 451 and may give the relayed recipients a second copy when the
 * client retries: a duplicate, never a loss (doc/relay.md).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backends.h"

struct router {
	struct backend hdr; /* must be first */
	const struct mx_config *cfg; /* borrowed: the state's, outlives the router */
	struct backend **subs;
	size_t n_subs;
	unsigned eager_slot; /* the only destination, begun at MAIL; 0 = none */
};

struct router_tx {
	struct backend_tx **subs; /* begun lazily, per slot */
	size_t *n_rcpts;          /* accepted recipients per slot */
	size_t n_subs;
	bool ended;               /* tx_end ran while an RCPT was pending */
	bool rcpt_pending;
};

static bool
router_undoable(const struct backend *be)
{
	return be->ops->prepare != NULL && be->ops->commit != NULL;
}

/* ------------------------------------------------------------- create */

static void
router_destroy(struct backend *be)
{
	struct router *r = (struct router *)be;

	for (size_t i = 0; i < r->n_subs; i++)
		backend_destroy(&r->subs[i]);
	free(r->subs);
	free(r);
}

static int
router_create(const struct mx_config *cfg, const struct backends_route *route, struct userdb *db,
	      struct backend **be_r, char **error_r)
{
	const struct backends_settings *bs = backends_settings(cfg);
	struct router *r = xcalloc(1, sizeof(*r));

	(void)route;
	r->cfg = cfg;
	r->subs = xcalloc(bs->n_routes + 1, sizeof(*r->subs));
	if (backend_create("store", cfg, NULL, db, &r->subs[0], error_r) < 0)
		goto fail;
	r->n_subs = 1;
	for (size_t i = 0; i < bs->n_routes; i++) {
		if (backend_create("relay", cfg, &bs->routes[i], db, &r->subs[i + 1], error_r) < 0)
			goto fail;
		r->n_subs++;
	}
	if (bs->n_local_domains == 0 && bs->n_routes == 1)
		r->eager_slot = 1;
	*be_r = &r->hdr;
	return 0;
fail:
	router_destroy(&r->hdr);
	return -1;
}

/* --------------------------------------------------------------- EHLO */

/* What every destination takes: the smallest SIZE, 8BITMIME only when all
 * offer it (a client that is not offered 8BITMIME converts to 7 bit, as
 * RFC 6152 asks, instead of meeting a refusal later). */
static const char *const *
router_ehlo(const struct backend *be)
{
	static __thread char size_kw[48];
	static __thread const char *kw[4];
	const struct router *r = (const struct router *)be;
	unsigned long long size = 0;
	bool size_any = false, eight = true;
	size_t n = 0;

	for (size_t i = 0; i < r->n_subs; i++) {
		bool sub_eight = false;
		for (const char *const *k = r->subs[i]->ops->ehlo(r->subs[i]); *k != NULL; k++) {
			if (strncmp(*k, "SIZE", 4) == 0 && ((*k)[4] == ' ' || (*k)[4] == '\0')) {
				unsigned long long v = strtoull(*k + 4, NULL, 10);
				if (v > 0 && (!size_any || size == 0 || v < size))
					size = v;
				size_any = true;
			} else if (strcmp(*k, "8BITMIME") == 0) {
				sub_eight = true;
			}
		}
		eight = eight && sub_eight;
	}
	if (size_any) {
		if (size > 0)
			snprintf(size_kw, sizeof(size_kw), "SIZE %llu", size);
		else
			snprintf(size_kw, sizeof(size_kw), "SIZE");
		kw[n++] = size_kw;
	}
	if (eight)
		kw[n++] = "8BITMIME";
	kw[n] = NULL;
	return kw;
}

/* -------------------------------------------------------- transaction */

static struct backend_tx *
router_sub(struct backend_tx *tx, unsigned slot)
{
	struct router *r = (struct router *)tx->be;
	struct router_tx *rt = tx->priv;

	if (rt->subs[slot] == NULL) {
		const struct backend_txinfo info = {
			.id = tx->id, .from = tx->from, .body_8bit = tx->body_8bit, .size = tx->size,
			.client_addr = tx->client_addr, .client_port = tx->client_port,
			.helo = tx->helo, .esmtp = tx->esmtp, .tls = tx->tls,
		};
		rt->subs[slot] = backend_tx_begin(r->subs[slot], &tx->env, &info);
	}
	return rt->subs[slot];
}

static void
router_tx_begin(struct backend_tx *tx)
{
	struct router *r = (struct router *)tx->be;
	struct router_tx *rt = xcalloc(1, sizeof(*rt));

	rt->n_subs = r->n_subs;
	rt->subs = xcalloc(r->n_subs, sizeof(*rt->subs));
	rt->n_rcpts = xcalloc(r->n_subs, sizeof(*rt->n_rcpts));
	tx->priv = rt;
	if (r->eager_slot != 0)
		(void)router_sub(tx, r->eager_slot); /* connect while the client sends RCPT */
}

static void
router_tx_free(struct router_tx *rt)
{
	free(rt->subs);
	free(rt->n_rcpts);
	free(rt);
}

static void
router_tx_end(struct backend_tx *tx)
{
	struct router_tx *rt = tx->priv;

	tx->priv = NULL;
	for (size_t i = 0; i < rt->n_subs; i++)
		backend_tx_end(&rt->subs[i]);
	if (rt->rcpt_pending)
		rt->ended = true; /* the answer frees it */
	else
		router_tx_free(rt);
}

/* The slot of a domain the session accepted. */
static unsigned
router_slot(const struct router *r, const char *domain)
{
	const char *name = backends_route_of(r->cfg, domain);
	const struct backends_settings *bs = backends_settings(r->cfg);

	if (name == NULL || strcmp(name, "store") == 0)
		return 0;
	for (size_t i = 0; i < bs->n_routes; i++) {
		if (strcmp(bs->routes[i].name, name) == 0)
			return (unsigned)i + 1;
	}
	return 0;
}

/* A pending sub-backend RCPT on its way back to the session. */
struct router_wait {
	struct router_tx *rt;
	unsigned slot;
	backend_rcpt_cb *cb;
	void *ctx;
};

static bool
router_rcpt_answer(void *arg, const struct backend_reply *reply, struct backend_rcpt *rcpt)
{
	struct router_wait *w = arg;
	struct router_tx *rt = w->rt;
	bool ok = reply->code / 100 == 2, taken;

	rt->rcpt_pending = false;
	if (ok)
		rcpt->slot = w->slot;
	taken = w->cb(w->ctx, reply, rcpt);
	if (ok && taken && !rt->ended)
		rt->n_rcpts[w->slot]++;
	if (rt->ended)
		router_tx_free(rt);
	free(w);
	return taken;
}

static enum backend_status
router_rcpt(struct backend_tx *tx, const char *local, const char *domain,
	    struct backend_rcpt *rcpt, struct backend_reply *reply, backend_rcpt_cb *cb, void *ctx)
{
	struct router *r = (struct router *)tx->be;
	struct router_tx *rt = tx->priv;
	unsigned slot = router_slot(r, domain);

	if (!router_undoable(r->subs[slot])) {
		for (size_t i = 0; i < r->n_subs; i++) {
			if (i != slot && rt->n_rcpts[i] > 0 && !router_undoable(r->subs[i])) {
				backend_reply_set(reply, 452, "4.5.3", "one_upstream_per_transaction",
						  "<%s@%s>: Too many recipients: send this one in "
						  "another transaction", local, domain);
				return BACKEND_DONE;
			}
		}
	}
	struct router_wait *w = xcalloc(1, sizeof(*w));
	w->rt = rt;
	w->slot = slot;
	w->cb = cb;
	w->ctx = ctx;
	rt->rcpt_pending = true;
	if (backend_tx_rcpt(router_sub(tx, slot), local, domain, rcpt, reply, router_rcpt_answer,
			    w) == BACKEND_PENDING)
		return BACKEND_PENDING;
	rt->rcpt_pending = false;
	free(w);
	if (reply->code / 100 == 2) {
		rcpt->slot = slot;
		rt->n_rcpts[slot]++;
	}
	return BACKEND_DONE;
}

static void
router_drop(struct backend_tx *tx, const struct backend_rcpt *rcpts, size_t n)
{
	struct router_tx *rt = tx->priv;

	for (size_t i = 0; i < n; i++) {
		unsigned slot = rcpts[i].slot;
		if (slot < rt->n_subs && rt->subs[slot] != NULL) {
			backend_tx_drop(rt->subs[slot], &rcpts[i], 1);
			if (rt->n_rcpts[slot] > 0)
				rt->n_rcpts[slot]--;
		}
	}
}

/* --------------------------------------------------------------- DATA */

/* One message on its way to its destinations: undoable ones prepare, the
 * final one (if any) delivers, then the undoable ones commit or discard. */
struct router_run {
	struct backend_tx *tx;
	struct backend_message msg;  /* strings and body owned here */
	char *prefix;
	struct backend_rcpt **rcpts; /* per slot, shallow copies */
	size_t *n_rcpts;
	size_t n_subs;
	int final_slot;              /* -1 when every destination is undoable */
	size_t step;                 /* next slot of the current stage */
	size_t cur;                  /* the slot answering now */
	bool *prepared;              /* per slot: copies waiting for commit */
	enum { RUN_PREPARE, RUN_FINAL, RUN_COMMIT } stage;
	bool keep;
	struct backend_reply reply;  /* the answer for the client */
	char detail[256];
	backend_done_cb *done;
	void *ctx;
};

static void router_run_next(struct router_run *run);

static void
router_run_finish(struct router_run *run)
{
	backend_done_cb *done = run->done;
	void *ctx = run->ctx;
	struct backend_reply reply = run->reply;
	char detail[sizeof(run->detail)];

	str_copy(detail, run->detail, sizeof(detail));
	for (size_t i = 0; i < run->n_subs; i++)
		free(run->rcpts[i]);
	free(run->rcpts);
	free(run->n_rcpts);
	free(run->prepared);
	free(run->prefix);
	free((char *)run->msg.id);
	free((char *)run->msg.from);
	free((char *)run->msg.authserv_id);
	msgbody_unref(&run->msg.body);
	free(run);
	done(ctx, &reply, detail);
}

static void
router_step_done(void *arg, const struct backend_reply *reply, const char *detail)
{
	struct router_run *run = arg;
	bool ok = reply->code / 100 == 2;

	switch (run->stage) {
	case RUN_PREPARE:
		if (ok)
			run->prepared[run->cur] = true;
		if (!ok) {
			/* nothing went out: every prepared copy is discarded */
			run->reply = *reply;
			str_copy(run->detail, detail, sizeof(run->detail));
			run->keep = false;
			run->stage = RUN_COMMIT;
			run->step = 0;
		}
		break;
	case RUN_FINAL:
		run->reply = *reply;
		str_copy(run->detail, detail, sizeof(run->detail));
		run->keep = ok;
		run->stage = RUN_COMMIT;
		run->step = 0;
		break;
	case RUN_COMMIT:
		if (!ok && run->keep) {
			/* the upstream has its copy and ours could not be made
			 * visible: a retry may duplicate the relayed one, but
			 * nothing acknowledged is lost */
			run->reply = *reply;
			snprintf(run->detail, sizeof(run->detail), "%s (after the upstream took "
				 "its copy: a retry may duplicate it)", detail);
		}
		break;
	}
	router_run_next(run);
}

static void
router_run_next(struct router_run *run)
{
	struct router *r = (struct router *)run->tx->be;
	struct router_tx *rt = run->tx->priv;

	for (;;) {
		if (run->stage == RUN_PREPARE) {
			while (run->step < run->n_subs &&
			       (run->n_rcpts[run->step] == 0 || (int)run->step == run->final_slot))
				run->step++;
			if (run->step == run->n_subs) {
				run->stage = RUN_FINAL;
				continue;
			}
			size_t slot = run->step++;
			struct backend_message m = run->msg;
			m.rcpts = run->rcpts[slot];
			m.n_rcpts = run->n_rcpts[slot];
			run->cur = slot;
			r->subs[slot]->ops->prepare(rt->subs[slot], &m, router_step_done, run);
			return;
		}
		if (run->stage == RUN_FINAL) {
			if (run->final_slot < 0) {
				run->keep = true;
				backend_reply_set(&run->reply, 250, "2.0.0", "", "Ok: queued as %s",
						  run->msg.id);
				run->stage = RUN_COMMIT;
				run->step = 0;
				continue;
			}
			size_t slot = (size_t)run->final_slot;
			struct backend_message m = run->msg;
			m.rcpts = run->rcpts[slot];
			m.n_rcpts = run->n_rcpts[slot];
			run->step = run->n_subs; /* once */
			backend_tx_data(rt->subs[slot], &m, router_step_done, run);
			return;
		}
		/* RUN_COMMIT */
		while (run->step < run->n_subs && !run->prepared[run->step])
			run->step++;
		if (run->step == run->n_subs) {
			router_run_finish(run);
			return;
		}
		size_t slot = run->step++;
		run->prepared[slot] = false;
		run->cur = slot;
		r->subs[slot]->ops->commit(rt->subs[slot], run->keep, router_step_done, run);
		return;
	}
}

static void
router_data(struct backend_tx *tx, const struct backend_message *msg, backend_done_cb *done,
	    void *ctx)
{
	struct router *r = (struct router *)tx->be;
	struct router_tx *rt = tx->priv;

	if (msg->folder == BACKEND_FOLDER_QUARANTINE) {
		/* one copy in mxguard's quarantine, whoever the recipients'
		 * destinations are; upstreams are reset at the end */
		backend_tx_data(router_sub(tx, 0), msg, done, ctx);
		return;
	}
	size_t used = 0, last = 0;
	for (size_t i = 0; i < msg->n_rcpts; i++) {
		unsigned slot = msg->rcpts[i].slot < r->n_subs ? msg->rcpts[i].slot : 0;
		if (i == 0 || slot != last)
			used++;
		last = slot;
	}
	if (used == 1) {
		/* one destination (the common case): it answers on its own */
		backend_tx_data(router_sub(tx, last), msg, done, ctx);
		return;
	}
	struct router_run *run = xcalloc(1, sizeof(*run));
	run->tx = tx;
	run->done = done;
	run->ctx = ctx;
	run->n_subs = r->n_subs;
	run->final_slot = -1;
	run->rcpts = xcalloc(r->n_subs, sizeof(*run->rcpts));
	run->n_rcpts = xcalloc(r->n_subs, sizeof(*run->n_rcpts));
	run->prepared = xcalloc(r->n_subs, sizeof(*run->prepared));
	for (size_t i = 0; i < msg->n_rcpts; i++) {
		unsigned slot = msg->rcpts[i].slot < r->n_subs ? msg->rcpts[i].slot : 0;
		if (run->rcpts[slot] == NULL)
			run->rcpts[slot] = xcalloc(msg->n_rcpts, sizeof(**run->rcpts));
		run->rcpts[slot][run->n_rcpts[slot]++] = msg->rcpts[i];
		if (!router_undoable(r->subs[slot]))
			run->final_slot = (int)slot; /* at most one: router_rcpt saw to it */
		(void)router_sub(tx, slot);
	}
	run->msg = *msg;
	run->msg.id = xstrdup(msg->id);
	run->msg.from = xstrdup(msg->from);
	run->msg.authserv_id = msg->authserv_id != NULL ? xstrdup(msg->authserv_id) : NULL;
	run->prefix = xstrndup(msg->prefix, msg->prefix_len);
	run->msg.prefix = run->prefix;
	run->msg.rcpts = NULL;
	run->msg.n_rcpts = 0;
	run->msg.body = msgbody_ref(msg->body);
	run->msg.why = NULL; /* only quarantine has one, and it never gets here */
	run->stage = RUN_PREPARE;
	(void)rt;
	router_run_next(run);
}

static const struct backend_ops router_backend_ops = {
	.name = "router",
	.create = router_create,
	.destroy = router_destroy,
	.ehlo = router_ehlo,
	.tx_begin = router_tx_begin,
	.rcpt = router_rcpt,
	.data = router_data,
	.drop = router_drop,
	.tx_end = router_tx_end,
};

int
backends_router_create(const struct mx_config *cfg, struct userdb *db, struct backend **be_r,
		       char **error_r)
{
	*be_r = NULL;
	if (router_create(cfg, NULL, db, be_r, error_r) < 0)
		return -1;
	(*be_r)->ops = &router_backend_ops;
	return 0;
}
