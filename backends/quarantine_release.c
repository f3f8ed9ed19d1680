/*
 * quarantine_release.c — releasing and deleting a held message
 * (backends/backends.h, doc/quarantine.md), for `mxguardctl quarantine`
 * and the web admin alike.
 *
 * A release delivers without the filters: it builds the daemon's own
 * router from the config (backends_router_create: the Maildir store for
 * local users, the relay of a route section for its domains) and runs one
 * backend transaction on an event loop and a worker pool of its own,
 * exactly as a session would after the filters said "deliver".
 * Submitting the message to the daemon over SMTP would run the filters
 * again and hold it again.
 *
 * It blocks, and everything it touches is its own or safe from any
 * thread: the event base and the worker pool are made here; the relay's
 * cached upstream connections are per thread (backends/relay.c keeps
 * them in a __thread list, and only takes one made on the same event
 * base), so backends_loop_stop() at the end frees exactly the ones this
 * call made on the calling thread — in mxguardctl the main thread, in the
 * daemon a worker of the web's pool; the relay's capability cache has
 * its own mutex; the metrics are atomics. The daemon's loops and their
 * router are never touched.
 */
#include "config.h"

#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "backends/backends.h"

struct q_wait {
	bool done;
	struct backend_reply reply;
	char detail[256];
	struct backend_rcpt rcpt;
};

void
quarantine_released_clear(struct quarantine_released *r)
{
	free(r->to);
	free(r->reply);
	memset(r, 0, sizeof(*r));
}

static bool
q_rcpt_cb(void *ctx, const struct backend_reply *reply, struct backend_rcpt *rcpt)
{
	struct q_wait *w = ctx;

	w->reply = *reply;
	if (reply->code / 100 == 2) {
		w->rcpt = *rcpt;
		memset(rcpt, 0, sizeof(*rcpt));
	}
	w->done = true;
	return true;
}

static void
q_data_cb(void *ctx, const struct backend_reply *reply, const char *detail)
{
	struct q_wait *w = ctx;

	w->reply = *reply;
	snprintf(w->detail, sizeof(w->detail), "%s", detail != NULL ? detail : "");
	w->done = true;
}

static void
q_wait(struct event_base *base, struct q_wait *w)
{
	while (!w->done) {
		int rc = event_base_loop(base, EVLOOP_ONCE);
		if (rc < 0)
			break;
		if (rc == 1)
			usleep(1000); /* nothing added yet: a worker's completion is on its way */
	}
}

char *
quarantine_join_rcpts(char *const *rcpts, size_t n)
{
	size_t len = 1;
	char *s;

	for (size_t i = 0; i < n; i++)
		len += strlen(rcpts[i]) + 1;
	s = xcalloc(1, len);
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			strcat(s, ",");
		strcat(s, rcpts[i]);
	}
	return s;
}

/* The stored file without the quarantine's own first lines (Return-Path,
 * X-MXGuard-Recipient): Received:, mxguard's headers and the message. */
static struct msgbody *
q_load_body(const char *path, bool *eightbit_r, char **error_r)
{
	FILE *f = fopen(path, "re");
	struct msgbody *b;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	bool top = true;

	*eightbit_r = false;
	if (f == NULL) {
		*error_r = xasprintf("open %s: %s", path, strerror(errno));
		return NULL;
	}
	b = msgbody_new(NULL, (size_t)64 * 1024 * 1024);
	while ((len = getline(&line, &cap, f)) > 0) {
		if (top && (strncasecmp(line, "Return-Path:", 12) == 0 ||
			    strncasecmp(line, "X-MXGuard-Recipient:", 20) == 0))
			continue;
		top = false;
		for (ssize_t i = 0; i < len && !*eightbit_r; i++)
			*eightbit_r = (unsigned char)line[i] >= 0x80;
		if (msgbody_append(b, line, (size_t)len) < 0) {
			*error_r = xasprintf("read %s: %s", path, strerror(errno));
			goto fail;
		}
	}
	if (ferror(f)) {
		*error_r = xasprintf("read %s: %s", path, strerror(errno));
		goto fail;
	}
	if (msgbody_seal(b) < 0) {
		*error_r = xasprintf("%s: cannot seal the message", path);
		goto fail;
	}
	free(line);
	fclose(f);
	return b;
fail:
	free(line);
	fclose(f);
	msgbody_unref(&b);
	return NULL;
}

int
quarantine_release(const struct mx_config *cfg, const char *qdir, const char *id,
		   const char *const *to, size_t n_to, const char *who,
		   struct quarantine_released *out, char **error_r)
{
	const struct backends_settings *bs = backends_settings(cfg);
	struct quarantine_meta m = { 0 };
	char *error = NULL, *path = NULL;
	char **rcpts = NULL;
	size_t n_rcpts = 0;
	int ret = -1;
	struct userdb *db = NULL;
	struct backend *be = NULL;
	struct event_base *base = NULL;
	struct workers *workers = NULL;
	struct backend_tx *btx = NULL;
	struct backend_rcpt *brcpts = NULL;
	size_t n_brcpts = 0;
	struct msgbody *body = NULL;
	char newid[MX_ID_LEN];
	bool eightbit;

	memset(out, 0, sizeof(*out));
	if (!quarantine_id_valid(id)) {
		error = xasprintf("invalid id \"%s\"", id);
		goto fail;
	}
	if (quarantine_meta_read(qdir, id, &m, &error) < 0)
		goto fail;
	if (m.deleted || quarantine_message_path(qdir, id, &path) <= 0) {
		error = xasprintf("%s: the message is %s", id, m.deleted ? "deleted" : "missing");
		goto fail;
	}
	n_rcpts = n_to > 0 ? n_to : m.n_rcpts;
	if (n_rcpts == 0) {
		error = xasprintf("%s: no recipients", id);
		goto fail;
	}
	rcpts = xcalloc(n_rcpts, sizeof(*rcpts));
	for (size_t i = 0; i < n_rcpts; i++)
		rcpts[i] = xstrdup(n_to > 0 ? to[i] : m.rcpts[i]);
	for (size_t i = 0; i < n_rcpts; i++) {
		const char *at = strrchr(rcpts[i], '@');
		str_lower(rcpts[i]);
		if (at == NULL || at == rcpts[i] || at[1] == '\0' ||
		    strpbrk(rcpts[i], " \t<>\r\n") != NULL) {
			error = xasprintf("%s: not an address (local@domain)", rcpts[i]);
			goto fail;
		}
		if (backends_route_of(cfg, at + 1) == NULL) {
			error = xasprintf("%s: no destination: %s is neither a local domain nor a "
					  "route's", rcpts[i], at + 1);
			goto fail;
		}
	}
	if ((body = q_load_body(path, &eightbit, &error)) == NULL)
		goto fail;
	if (userdb_open(bs->passwd_file, &db, &error) < 0)
		goto fail;
	if (backends_router_create(cfg, db, &be, &error) < 0)
		goto fail;
	base = event_base_new();
	if (base == NULL) {
		error = xstrdup("cannot create an event loop");
		goto fail;
	}
	workers = workers_create(1, 0, 0);

	id_new(newid);
	struct backend_env env = { .base = base, .workers = workers };
	struct backend_txinfo info = {
		.id = newid,
		.from = m.from,
		.body_8bit = eightbit,
		.size = msgbody_size(body),
		.client_addr = m.client_addr[0] ? m.client_addr : "127.0.0.1",
		.client_port = m.client_port,
		.helo = m.helo[0] ? m.helo : "localhost",
		.esmtp = true,
		.tls = false,
	};
	btx = backend_tx_begin(be, &env, &info);
	brcpts = xcalloc(n_rcpts, sizeof(*brcpts));
	for (size_t i = 0; i < n_rcpts; i++) {
		struct q_wait w = { 0 };
		const char *at = strrchr(rcpts[i], '@');
		char *local = xstrndup(rcpts[i], (size_t)(at - rcpts[i]));

		if (backend_tx_rcpt(btx, local, at + 1, &w.rcpt, &w.reply, q_rcpt_cb, &w) ==
		    BACKEND_PENDING)
			q_wait(base, &w);
		free(local);
		if (w.reply.code / 100 != 2) {
			backend_rcpt_clear(&w.rcpt);
			error = xasprintf("<%s>: %u %s %s", rcpts[i], w.reply.code, w.reply.enhanced,
					  w.reply.text);
			goto fail;
		}
		brcpts[n_brcpts++] = w.rcpt;
	}

	char date[64];
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	char *prefix = xasprintf("X-MXGuard-Released: %s by %s as %s; %s\n", id, who, newid, date);
	struct backend_message msg = {
		.id = newid,
		.from = m.from,
		.rcpts = brcpts,
		.n_rcpts = n_brcpts,
		.folder = BACKEND_FOLDER_INBOX,
		.prefix = prefix,
		.prefix_len = strlen(prefix),
		.body = body,
	};
	struct q_wait w = { 0 };
	backend_tx_data(btx, &msg, q_data_cb, &w);
	free(prefix);
	q_wait(base, &w);
	char *joined = quarantine_join_rcpts(rcpts, n_rcpts);
	if (w.reply.code / 100 != 2) {
		log_msg(LOG_LEVEL_ERR, "quarantine: %s release by %s to %s failed: %u %s %s%s%s", id,
			who, joined, w.reply.code, w.reply.enhanced, w.reply.text,
			w.detail[0] ? ": " : "", w.detail);
		error = xasprintf("release to %s failed: %u %s %s%s%s", joined, w.reply.code,
				  w.reply.enhanced, w.reply.text, w.detail[0] ? ": " : "", w.detail);
		free(joined);
		goto fail;
	}
	char *ev = xasprintf("released by %s to %s as %s: %u %s %s", who, joined, newid,
			     w.reply.code, w.reply.enhanced, w.reply.text);
	log_msg(LOG_LEVEL_INFO, "quarantine: %s released by %s to %s as %s: %u %s %s", id, who,
		joined, newid, w.reply.code, w.reply.enhanced, w.reply.text);
	memcpy(out->newid, newid, sizeof(out->newid));
	out->to = joined;
	out->reply = xasprintf("%u %s %s", w.reply.code, w.reply.enhanced, w.reply.text);
	ret = 0;
	if (quarantine_add_event(qdir, id, ev, &error) < 0)
		ret = -2;
	free(ev);
fail:
	if (error != NULL)
		*error_r = error;
	backend_tx_end(&btx);
	for (size_t i = 0; i < n_brcpts; i++)
		backend_rcpt_clear(&brcpts[i]);
	free(brcpts);
	if (base != NULL) {
		/* the relay's cached upstream connections this call made (on
		 * this thread, on this base) */
		backends_loop_stop();
		event_base_loop(base, EVLOOP_NONBLOCK);
	}
	if (workers != NULL)
		workers_destroy(&workers);
	if (be != NULL)
		backend_destroy(&be);
	if (base != NULL)
		event_base_free(base);
	userdb_close(&db);
	msgbody_unref(&body);
	free(path);
	for (size_t i = 0; i < n_rcpts && rcpts != NULL; i++)
		free(rcpts[i]);
	free(rcpts);
	quarantine_meta_clear(&m);
	return ret;
}

int
quarantine_delete(const char *qdir, const char *id, const char *who, char **error_r)
{
	struct quarantine_meta m = { 0 };
	char *path = NULL;
	int found;

	if (!quarantine_id_valid(id)) {
		*error_r = xasprintf("invalid id \"%s\"", id);
		return -1;
	}
	if (quarantine_meta_read(qdir, id, &m, error_r) < 0)
		return -1;
	found = quarantine_message_path(qdir, id, &path);
	if (m.deleted && found <= 0) {
		*error_r = xasprintf("%s was deleted already", id);
		quarantine_meta_clear(&m);
		free(path);
		return -1;
	}
	bool deleted = m.deleted;
	quarantine_meta_clear(&m);
	/* recorded first: a crash in between leaves a message marked deleted,
	 * which list hides and a second delete or expire removes */
	char *ev = xasprintf("deleted by %s", who);
	if (!deleted && quarantine_add_event(qdir, id, ev, error_r) < 0) {
		free(ev);
		free(path);
		return -1;
	}
	free(ev);
	if (found > 0 && unlink(path) < 0 && errno != ENOENT) {
		*error_r = xasprintf("unlink %s: %s", path, strerror(errno));
		free(path);
		return -1;
	}
	free(path);
	log_msg(LOG_LEVEL_INFO, "quarantine: %s deleted by %s", id, who);
	return 0;
}
