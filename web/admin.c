/*
 * admin.c — the web service's admin calls (/api/admin/...) and every
 * user's "Held for you" (/api/held...), doc/web.md and ADMIN_API.md.
 *
 * service.c hands a request here (web_admin_handle) once its session,
 * CSRF token and JSON body are checked. The overview and the recent
 * transactions are memory only (lib/txstats.c, lib/metrics.c) and are
 * answered on the loop; everything that reads or writes the quarantine
 * store runs on the loop's worker pool, and a release (a whole delivery
 * on an event loop of its own, backends/quarantine_release.c) too. A
 * request waiting for a worker watches its connection, as service.c's
 * do: a client gone first has its answer dropped.
 *
 * Who may do what: the `web { admins }` users everything under
 * /api/admin/; any user their own held messages, and release or delete
 * them only with `user_release`. A held message of another user is a 404,
 * exactly as an unknown id: its existence is never revealed. Ids are
 * checked with quarantine_id_valid() (16 of [0-9A-Z]) before any path is
 * built from them. Two changes of one message at once are refused (its id
 * is marked busy while a release or delete runs: 409), so its metadata's
 * read-modify-write (an event) has one writer in this process
 * (mxguardctl, another process, may still race with it, as two mxguardctl
 * runs may). A release holds a worker of the scan lane while it delivers
 * (the relay's timeouts bound it).
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <glib.h>
#include <gmime/gmime.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "backends/backends.h"
#include "daemon/daemon.h"
#include "lib/lib.h"
#include "lib/metrics.h"
#include "lib/txstats.h"
#include "web/web.h"

#define ADMIN_LIST_MAX 1000      /* messages one list answers */
#define ADMIN_HEADER_MAX 65536   /* octets of a message's header block read */
#define ADMIN_FILTER_MAX 320     /* octets of a filter value */
#define ADMIN_TO_MAX 100         /* recipients of one release */
#define ADMIN_TOP_RULES 10

enum admin_op {
	AOP_QLIST,
	AOP_QSHOW,
	AOP_QRELEASE,
	AOP_QDELETE,
	AOP_HELD,
	AOP_HELD_RELEASE,
	AOP_HELD_DELETE,
};

struct admin_job {
	struct evhttp_request *req; /* NULL: the client went away */
	struct web_env env;
	enum admin_op op;
	char *user; /* the session's */
	char who[WEB_ADMIN_WHO_MAX];
	char *qdir;
	char id[MX_ID_LEN];
	char **to;
	size_t n_to;
	char *sender, *rcpt, *reason;
	long long since;
	bool all, can_release;
	int status;
	json_t *answer;
};

/* The ids being released or deleted now: a second change of the same
 * message meanwhile is refused (409) rather than waited for, so no
 * worker ever blocks behind another's delivery. */
#define ADMIN_BUSY_MAX 32
static pthread_mutex_t busy_lock = PTHREAD_MUTEX_INITIALIZER;
static char busy_ids[ADMIN_BUSY_MAX][MX_ID_LEN];

/* 1 claimed, 0 the id is busy, -1 too many at once */
static int
busy_claim(const char *id)
{
	int rc = -1;

	pthread_mutex_lock(&busy_lock);
	for (size_t i = 0; i < ADMIN_BUSY_MAX; i++)
		if (strcmp(busy_ids[i], id) == 0) {
			rc = 0;
			goto out;
		}
	for (size_t i = 0; i < ADMIN_BUSY_MAX; i++)
		if (busy_ids[i][0] == '\0') {
			memcpy(busy_ids[i], id, MX_ID_LEN);
			rc = 1;
			break;
		}
out:
	pthread_mutex_unlock(&busy_lock);
	return rc;
}

static void
busy_release(const char *id)
{
	pthread_mutex_lock(&busy_lock);
	for (size_t i = 0; i < ADMIN_BUSY_MAX; i++)
		if (strcmp(busy_ids[i], id) == 0)
			busy_ids[i][0] = '\0';
	pthread_mutex_unlock(&busy_lock);
}

/* ------------------------------------------------------------- helpers */

bool
web_admin_is(const struct mx_config *cfg, const char *user)
{
	const struct web_settings *ws = web_settings(cfg);

	for (size_t i = 0; i < ws->n_admins; i++)
		if (strcasecmp(ws->admins[i], user) == 0)
			return true;
	return false;
}

bool
web_admin_path(const char *path)
{
	return strncmp(path, "/api/admin/", 11) == 0 || strcmp(path, "/api/held") == 0 ||
	       strncmp(path, "/api/held/", 10) == 0;
}

void
web_admin_who(const char *user, char *out, size_t outsz)
{
	char safe[WEB_ADMIN_WHO_MAX - 4];

	str_log_safe(user, safe, sizeof(safe));
	for (char *p = safe; *p != '\0'; p++)
		if (*p <= ' ' || *p == 0x7f)
			*p = '_';
	str_copy(out, "web:", outsz);
	if (outsz > 4)
		str_copy(out + 4, safe, outsz - 4);
}

static json_t *
jstr(const char *s)
{
	char *c = web_utf8_clean(s != NULL ? s : "", s != NULL ? strlen(s) : 0);
	json_t *j = json_string(c);

	free(c);
	return j != NULL ? j : json_string("");
}

static void
job_free(struct admin_job *job)
{
	free(job->user);
	free(job->qdir);
	for (size_t i = 0; i < job->n_to; i++)
		free(job->to[i]);
	free(job->to);
	free(job->sender);
	free(job->rcpt);
	free(job->reason);
	json_decref(job->answer);
	if (job->env.release != NULL)
		job->env.release(job->env.hold);
	free(job);
}

static void
job_conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct admin_job *job = arg;

	(void)evcon;
	job->req = NULL;
}

static void
job_answer(struct admin_job *job, int status, json_t *j)
{
	json_decref(job->answer);
	job->status = status;
	job->answer = j;
}

static void
job_error(struct admin_job *job, int status, const char *msg)
{
	job_answer(job, status, json_pack("{s:s}", "error", msg));
}

/* ----------------------------------------------------- quarantine reads */

static bool
meta_has_rcpt(const struct quarantine_meta *m, const char *addr)
{
	for (size_t i = 0; i < m->n_rcpts; i++)
		if (strcasecmp(m->rcpts[i], addr) == 0)
			return true;
	return false;
}

/* "TIME released by WHO to A,B as NEWID: ..." names addr among A,B */
static bool
event_released_to(const char *ev, const char *addr)
{
	const char *p = strstr(ev, " released by ");
	size_t alen = strlen(addr);

	if (p == NULL || (p = strstr(p, " to ")) == NULL)
		return false;
	p += 4;
	const char *end = strstr(p, " as ");
	if (end == NULL)
		return false;
	while (p < end) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *stop = comma != NULL ? comma : end;
		if ((size_t)(stop - p) == alen && strncasecmp(p, addr, alen) == 0)
			return true;
		p = stop + 1;
	}
	return false;
}

/* "TIME dismissed by WHO for ADDR" */
static bool
event_dismissed_for(const char *ev, const char *addr)
{
	const char *p = strchr(ev, ' ');

	if (p == NULL || strncmp(p + 1, "dismissed by ", 13) != 0)
		return false;
	p = strstr(p, " for ");
	return p != NULL && strcasecmp(p + 5, addr) == 0;
}

/* The message is still held for user: one of its recipients, neither
 * released to them nor dismissed by them, not deleted, its file there. */
static bool
held_for(const struct quarantine_meta *m, bool found, const char *user)
{
	if (!found || m->deleted || !meta_has_rcpt(m, user))
		return false;
	for (size_t i = 0; i < m->n_events; i++)
		if (event_released_to(m->events[i], user) || event_dismissed_for(m->events[i], user))
			return false;
	return true;
}

static const char *
meta_status(const struct quarantine_meta *m, bool found)
{
	return m->deleted ? "deleted" : !found ? "missing" : m->released ? "released" : "held";
}

/* The header block of the stored file (at most ADMIN_HEADER_MAX octets),
 * malloc'd, or NULL. */
static char *
read_header_block(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "re");
	char *buf, line[4096];
	size_t len = 0;

	*len_r = 0;
	if (f == NULL)
		return NULL;
	buf = xmalloc(ADMIN_HEADER_MAX + 1);
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t n = strlen(line);
		if (line[0] == '\n' || (line[0] == '\r' && line[1] == '\n'))
			break;
		if (len + n > ADMIN_HEADER_MAX)
			break;
		memcpy(buf + len, line, n);
		len += n;
	}
	fclose(f);
	buf[len] = '\0';
	*len_r = len;
	return buf;
}

/* The decoded Subject of a header block ("" when none). */
static char *
header_subject(const char *hdr, size_t len)
{
	char *out = NULL;

	mime_init_once();
	/* a blank line ends the header for the parser */
	char *text = xmalloc(len + 2);
	memcpy(text, hdr, len);
	memcpy(text + len, "\n", 2);
	GMimeStream *st = g_mime_stream_mem_new_with_buffer(text, len + 1);
	GMimeParser *p = g_mime_parser_new_with_stream(st);
	GMimeMessage *m = g_mime_parser_construct_message(p, NULL);
	if (m != NULL) {
		const char *s = g_mime_message_get_subject(m);
		if (s != NULL)
			out = xstrdup(s);
		g_object_unref(m);
	}
	g_object_unref(p);
	g_object_unref(st);
	free(text);
	return out != NULL ? out : xstrdup("");
}

static json_t *
msg_object(const struct quarantine_meta *m, const char *path, const char *status)
{
	json_t *o = json_object(), *rc = json_array();
	char *subject = NULL;

	if (path != NULL) {
		size_t len;
		char *hdr = read_header_block(path, &len);
		if (hdr != NULL)
			subject = header_subject(hdr, len);
		free(hdr);
	}
	for (size_t i = 0; i < m->n_rcpts; i++)
		json_array_append_new(rc, jstr(m->rcpts[i]));
	json_object_set_new(o, "id", json_string(m->id));
	json_object_set_new(o, "time", json_integer((json_int_t)m->time));
	json_object_set_new(o, "from", jstr(m->from));
	json_object_set_new(o, "rcpts", rc);
	json_object_set_new(o, "subject", jstr(subject != NULL ? subject : ""));
	json_object_set_new(o, "reason", jstr(m->reason));
	json_object_set_new(o, "score", json_real(m->score));
	json_object_set_new(o, "hits", jstr(m->hits));
	json_object_set_new(o, "size", json_integer((json_int_t)m->size));
	json_object_set_new(o, "status", json_string(status));
	free(subject);
	return o;
}

static int
by_time_desc(const void *a, const void *b)
{
	json_int_t ta = json_integer_value(json_object_get(*(json_t *const *)a, "time"));
	json_int_t tb = json_integer_value(json_object_get(*(json_t *const *)b, "time"));
	int c = ta < tb ? 1 : ta > tb ? -1 : 0;

	if (c == 0)
		c = -strcmp(json_string_value(json_object_get(*(json_t *const *)a, "id")),
			    json_string_value(json_object_get(*(json_t *const *)b, "id")));
	return c;
}

/* the admin's search, or (user != NULL) the user's held messages */
static void
run_list(struct admin_job *job, const char *user)
{
	char **ids = NULL, *error = NULL;
	size_t n = 0, n_out = 0;
	json_t **out;

	if (quarantine_list_ids(job->qdir, &ids, &n, &error) < 0) {
		if (errno == ENOENT) {
			free(error);
			n = 0;
		} else {
			log_msg(LOG_LEVEL_ERR, "web quarantine list: %s", error);
			free(error);
			job_error(job, 500, "the quarantine cannot be read");
			return;
		}
	}
	out = xcalloc(ADMIN_LIST_MAX, sizeof(*out));
	/* newest ids last: read from the end, stop at the list's bound */
	for (size_t k = n; k-- > 0;) {
		struct quarantine_meta m = { 0 };
		char *path = NULL;

		if (n_out < ADMIN_LIST_MAX && quarantine_meta_read(job->qdir, ids[k], &m, &error) == 0) {
			bool found = quarantine_message_path(job->qdir, ids[k], &path) > 0;
			bool show;
			if (user != NULL)
				show = held_for(&m, found, user);
			else
				show = (job->all || (found && !m.deleted && !m.released)) &&
				       (job->since < 0 || m.time >= job->since) &&
				       (job->rcpt == NULL || meta_has_rcpt(&m, job->rcpt)) &&
				       (job->sender == NULL || strcasecmp(m.from, job->sender) == 0) &&
				       (job->reason == NULL || strcasestr(m.reason, job->reason) != NULL);
			if (show)
				out[n_out++] = msg_object(&m, found ? path : NULL,
							  user != NULL ? "held" : meta_status(&m, found));
		}
		free(error);
		error = NULL;
		free(path);
		quarantine_meta_clear(&m);
		free(ids[k]);
	}
	free(ids);
	qsort(out, n_out, sizeof(*out), by_time_desc);
	json_t *arr = json_array();
	for (size_t i = 0; i < n_out; i++)
		json_array_append_new(arr, out[i]);
	free(out);
	if (user != NULL)
		job_answer(job, 200, json_pack("{s:o,s:b}", "messages", arr, "can_release", job->can_release));
	else
		job_answer(job, 200, json_pack("{s:o}", "messages", arr));
}

/* id's metadata into *m and whether its file is there; false: answered */
static bool
load_meta(struct admin_job *job, struct quarantine_meta *m, char **path_r)
{
	char *error = NULL;

	if (quarantine_meta_read(job->qdir, job->id, m, &error) < 0) {
		int e = errno;
		if (e != ENOENT)
			log_msg(LOG_LEVEL_ERR, "web quarantine %s: %s", job->id, error);
		free(error);
		job_error(job, e == ENOENT ? 404 : 500,
			  e == ENOENT ? "no such quarantined message" : "the quarantine cannot be read");
		return false;
	}
	if (quarantine_message_path(job->qdir, job->id, path_r) <= 0) {
		free(*path_r);
		*path_r = NULL;
	}
	return true;
}

static void
run_show(struct admin_job *job)
{
	struct quarantine_meta m = { 0 };
	char *path = NULL;

	if (!load_meta(job, &m, &path))
		return;
	json_t *o = msg_object(&m, path, meta_status(&m, path != NULL));
	json_t *ev = json_array();
	for (size_t i = 0; i < m.n_events; i++)
		json_array_append_new(ev, jstr(m.events[i]));
	json_object_set_new(o, "events", ev);
	json_object_set_new(o, "client", jstr(m.client_addr));
	json_object_set_new(o, "helo", jstr(m.helo));
	size_t len = 0;
	char *hdr = path != NULL ? read_header_block(path, &len) : NULL;
	char *clean = web_utf8_clean(hdr != NULL ? hdr : "", len);
	json_object_set_new(o, "headers", json_string(clean));
	free(clean);
	free(hdr);
	free(path);
	quarantine_meta_clear(&m);
	log_msg(LOG_LEVEL_INFO, "web admin quarantine %s shown to %s", job->id, job->who);
	job_answer(job, 200, o);
}

static void
release_answer(struct admin_job *job, int rc, struct quarantine_released *r, char *error, bool list_to)
{
	if (rc == -1) {
		job_error(job, 502, error != NULL ? error : "release failed");
		free(error);
		return;
	}
	json_t *o = json_pack("{s:b,s:s,s:s}", "ok", 1, "id", job->id, "released_as", r->newid);
	if (list_to) {
		json_t *to = json_array();
		for (char *p = r->to, *c; p != NULL && *p != '\0'; p = c != NULL ? c + 1 : NULL) {
			c = strchr(p, ',');
			char *a = c != NULL ? xstrndup(p, (size_t)(c - p)) : xstrdup(p);
			json_array_append_new(to, jstr(a));
			free(a);
			if (c == NULL)
				break;
		}
		json_object_set_new(o, "to", to);
	}
	if (rc == -2) {
		/* delivered: the answer is still a success, the log says why */
		log_msg(LOG_LEVEL_ERR, "quarantine: %s released, but the metadata was not updated: %s",
			job->id, error != NULL ? error : "?");
		json_object_set_new(o, "warning", json_string("released, but the event was not recorded"));
	}
	free(error);
	job_answer(job, 200, o);
}

/* a message that can be released: answered and false when not */
static bool
check_releasable(struct admin_job *job)
{
	struct quarantine_meta m = { 0 };
	char *path = NULL;

	if (!load_meta(job, &m, &path))
		return false;
	bool ok = path != NULL && !m.deleted;
	if (!ok)
		job_error(job, 409, m.deleted ? "the message is deleted" : "the message file is missing");
	free(path);
	quarantine_meta_clear(&m);
	return ok;
}

static void
run_release(struct admin_job *job)
{
	struct quarantine_released r;
	char *error = NULL;

	if (!check_releasable(job))
		return;
	for (size_t i = 0; i < job->n_to; i++) {
		const char *at = strrchr(job->to[i], '@');
		if (backends_route_of(job->env.cfg, at + 1) == NULL) {
			char *e = xasprintf("%s: no destination: %s is neither a local domain nor a route's",
					    job->to[i], at + 1);
			job_error(job, 400, e);
			free(e);
			return;
		}
	}
	int rc = quarantine_release(job->env.cfg, job->qdir, job->id, (const char *const *)job->to,
				    job->n_to, job->who, &r, &error);
	release_answer(job, rc, &r, error, true);
	quarantine_released_clear(&r);
}

static void
run_delete(struct admin_job *job)
{
	struct quarantine_meta m = { 0 };
	char *path = NULL, *error = NULL;

	if (!load_meta(job, &m, &path))
		return;
	free(path);
	quarantine_meta_clear(&m);
	if (quarantine_delete(job->qdir, job->id, job->who, &error) < 0) {
		job_error(job, 409, error);
		free(error);
		return;
	}
	job_answer(job, 200, json_pack("{s:b,s:s}", "ok", 1, "id", job->id));
}

/* the user's own copy: 404 for anything that is not held for them */
static bool
check_held_for_user(struct admin_job *job, size_t *n_rcpts_r)
{
	struct quarantine_meta m = { 0 };
	char *path = NULL, *error = NULL;
	bool held = false;

	if (quarantine_meta_read(job->qdir, job->id, &m, &error) == 0) {
		bool found = quarantine_message_path(job->qdir, job->id, &path) > 0;
		held = held_for(&m, found, job->user);
		*n_rcpts_r = m.n_rcpts;
	}
	free(error);
	free(path);
	quarantine_meta_clear(&m);
	if (!held)
		job_error(job, 404, "no such held message");
	return held;
}

static void
run_held_release(struct admin_job *job)
{
	struct quarantine_released r;
	char *error = NULL;
	size_t n_rcpts = 0;

	if (!check_held_for_user(job, &n_rcpts))
		return;
	const char *to[1] = { job->user };
	int rc = quarantine_release(job->env.cfg, job->qdir, job->id, to, 1, job->who, &r, &error);
	release_answer(job, rc, &r, error, false);
	quarantine_released_clear(&r);
}

static void
run_held_delete(struct admin_job *job)
{
	char *error = NULL;
	size_t n_rcpts = 0;

	if (!check_held_for_user(job, &n_rcpts))
		return;
	if (n_rcpts <= 1) {
		/* the user's alone: the message goes */
		if (quarantine_delete(job->qdir, job->id, job->who, &error) < 0) {
			job_error(job, 409, error);
			free(error);
			return;
		}
	} else {
		char addr[WEB_ADMIN_WHO_MAX];
		str_log_safe(job->user, addr, sizeof(addr));
		char *ev = xasprintf("dismissed by %s for %s", job->who, addr);
		if (quarantine_add_event(job->qdir, job->id, ev, &error) < 0) {
			log_msg(LOG_LEVEL_ERR, "web quarantine %s: %s", job->id, error);
			free(error);
			free(ev);
			job_error(job, 500, "the quarantine cannot be written");
			return;
		}
		free(ev);
		log_msg(LOG_LEVEL_INFO, "quarantine: %s dismissed by %s for %s (held for the other recipients)",
			job->id, job->who, addr);
	}
	job_answer(job, 200, json_pack("{s:b,s:s}", "ok", 1, "id", job->id));
}

static void
admin_work(void *arg)
{
	struct admin_job *job = arg;

	switch (job->op) {
	case AOP_QLIST: run_list(job, NULL); break;
	case AOP_QSHOW: run_show(job); break;
	case AOP_HELD: run_list(job, job->user); break;
	case AOP_QRELEASE:
	case AOP_QDELETE:
	case AOP_HELD_RELEASE:
	case AOP_HELD_DELETE: {
		/* one change of a message at a time in this process */
		int claimed = busy_claim(job->id);
		if (claimed <= 0) {
			job_error(job, claimed == 0 ? 409 : 503,
				  claimed == 0 ? "another release or delete of this message is running"
					       : "too many releases at once, try again later");
			break;
		}
		if (job->op == AOP_QRELEASE)
			run_release(job);
		else if (job->op == AOP_QDELETE)
			run_delete(job);
		else if (job->op == AOP_HELD_RELEASE)
			run_held_release(job);
		else
			run_held_delete(job);
		busy_release(job->id);
		break;
	}
	}
	if (job->answer == NULL)
		job_error(job, 500, "internal error");
}

static void
admin_done(void *arg)
{
	struct admin_job *job = arg;

	if (job->req != NULL) {
		evhttp_connection_set_closecb(evhttp_request_get_connection(job->req), NULL, NULL);
		web_reply_json(job->req, job->status, job->answer);
		job->answer = NULL;
	}
	job_free(job);
}

/* ------------------------------------------------------- memory only */

static json_t *
verdict_counts(const unsigned totals[TXSTATS__CLASSES])
{
	json_t *v = json_object();

	for (unsigned c = 0; c < TXSTATS__CLASSES; c++)
		json_object_set_new(v, txstats_class_name(c), json_integer(totals[c]));
	return v;
}

struct rule_hit {
	char rule[METRICS_LABEL_MAX + 1];
	double hits;
};

static int
by_hits_desc(const void *a, const void *b)
{
	const struct rule_hit *x = a, *y = b;

	if (x->hits != y->hits)
		return x->hits < y->hits ? 1 : -1;
	return strcmp(x->rule, y->rule);
}

static json_t *
overview(void)
{
	time_t now = time(NULL);
	unsigned hour[TXSTATS__CLASSES], day[TXSTATS__CLASSES];
	unsigned hour_total = txstats_totals(now, 3600, hour);
	unsigned day_total = txstats_totals(now, 86400, day);
	unsigned series[TXSTATS__CLASSES][TXSTATS_BUCKETS];
	time_t start;

	txstats_series(now, &start, series);
	json_t *sv = json_object();
	for (unsigned c = 0; c < TXSTATS__CLASSES; c++) {
		json_t *a = json_array();
		for (size_t i = 0; i < TXSTATS_BUCKETS; i++)
			json_array_append_new(a, json_integer(series[c][i]));
		json_object_set_new(sv, txstats_class_name(c), a);
	}

	/* the /metrics text, read back: rule hits, dependencies, connections */
	size_t len = 0;
	char *text = metrics_render(&len);
	struct rule_hit *rules = NULL;
	size_t n_rules = 0, cap_rules = 0;
	json_t *health = json_array();
	double connections = 0;
	for (char *p = text, *nl; p != NULL && p < text + len; p = nl + 1) {
		struct metrics_sample s;
		nl = memchr(p, '\n', (size_t)(text + len - p));
		if (nl == NULL)
			nl = text + len;
		if (metrics_parse_line(p, (size_t)(nl - p), &s) != 1)
			continue;
		if (strcmp(s.name, "mxguard_rule_hits_total") == 0 && s.value > 0) {
			if (n_rules == cap_rules) {
				cap_rules = cap_rules ? cap_rules * 2 : 64;
				rules = xrealloc(rules, cap_rules * sizeof(*rules));
			}
			str_copy(rules[n_rules].rule, s.label, sizeof(rules[n_rules].rule));
			rules[n_rules++].hits = s.value;
		} else if (strcmp(s.name, "mxguard_dependency_up") == 0) {
			json_array_append_new(health, json_pack("{s:o,s:b}", "name", jstr(s.label), "up",
								s.value > 0));
		} else if (strcmp(s.name, "mxguard_connections_total") == 0) {
			connections += s.value;
		}
	}
	free(text);
	if (n_rules > 0)
		qsort(rules, n_rules, sizeof(*rules), by_hits_desc);
	json_t *top = json_array();
	for (size_t i = 0; i < n_rules && i < ADMIN_TOP_RULES; i++)
		json_array_append_new(top, json_pack("{s:o,s:I}", "rule", jstr(rules[i].rule), "hits",
						     (json_int_t)rules[i].hits));
	free(rules);

	int64_t started = metrics_get(METRIC_START_TIME, NULL);
	json_t *counters = json_pack(
		"{s:I,s:I,s:I,s:I,s:I}", "connections", (json_int_t)connections, "delivered",
		(json_int_t)metrics_get(METRIC_MESSAGES_DELIVERED, NULL), "relayed",
		(json_int_t)metrics_get(METRIC_MESSAGES_RELAYED, NULL), "quarantined",
		(json_int_t)metrics_get(METRIC_MESSAGES_QUARANTINED, NULL), "rejected",
		(json_int_t)metrics_get(METRIC_SMTP_TRANSACTIONS, "reject"));
	return json_pack("{s:I,s:{s:i,s:o},s:{s:i,s:o},s:{s:i,s:I,s:o},s:o,s:o,s:o}", "uptime",
			 (json_int_t)(started > 0 && now > started ? now - started : 0), "hour", "total",
			 (int)hour_total, "verdicts", verdict_counts(hour), "day", "total", (int)day_total,
			 "verdicts", verdict_counts(day), "series", "step", (int)TXSTATS_STEP, "start",
			 (json_int_t)start, "verdicts", sv, "top_rules", top, "health", health,
			 "counters", counters);
}

static json_t *
transactions(const char *q, const char *verdict, size_t limit)
{
	struct txstats_entry *e = NULL;
	size_t n = txstats_query(q, verdict, limit, &e);
	json_t *arr = json_array();

	for (size_t i = 0; i < n; i++) {
		json_t *to = json_array();
		for (size_t k = 0; k < e[i].n_rcpts; k++)
			json_array_append_new(to, jstr(e[i].rcpts[k]));
		json_t *o = json_pack("{s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:f,s:o,s:o}", "time",
				      (json_int_t)e[i].time, "id", jstr(e[i].id), "client", jstr(e[i].client),
				      "from", jstr(e[i].from), "to", to, "verdict", jstr(e[i].verdict),
				      "action", jstr(e[i].action), "score", e[i].score, "hits",
				      jstr(e[i].hits), "result", jstr(e[i].result));
		if (e[i].n_rcpts_total > e[i].n_rcpts)
			json_object_set_new(o, "nrcpt", json_integer((json_int_t)e[i].n_rcpts_total));
		json_array_append_new(arr, o);
	}
	free(e);
	return json_pack("{s:o}", "transactions", arr);
}

/* ------------------------------------------------------------ requests */

/* an address a release may name: local@domain, printable, no list
 * separators (the event line joins them with ',') */
static bool
address_ok(const char *a)
{
	const char *at = strrchr(a, '@');

	if (strlen(a) > ADMIN_FILTER_MAX || at == NULL || at == a || at[1] == '\0')
		return false;
	for (const char *p = a; *p != '\0'; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f || strchr("<>,\"\\", *p) != NULL)
			return false;
	return true;
}

/* a filter value from the query: NULL when absent or empty; false: bad */
static bool
query_filter(struct evkeyvalq *q, const char *key, char **out)
{
	const char *v = evhttp_find_header(q, key);

	*out = NULL;
	if (v == NULL || v[0] == '\0')
		return true;
	if (strlen(v) > ADMIN_FILTER_MAX)
		return false;
	*out = xstrdup(v);
	return true;
}

static bool
parse_count(const char *s, long long max, long long *out)
{
	char *end;
	long long v;

	if (s == NULL || s[0] < '0' || s[0] > '9' || strlen(s) > 18)
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max)
		return false;
	*out = v;
	return true;
}

/* the id of a body ({"id": "..."}); false: answered 400 */
static bool
body_id(struct evhttp_request *req, json_t *body, char out[MX_ID_LEN])
{
	const char *id = json_string_value(json_object_get(body, "id"));

	if (id == NULL || !quarantine_id_valid(id)) {
		web_reply_json(req, 400, json_pack("{s:s}", "error", "invalid id"));
		return false;
	}
	memcpy(out, id, MX_ID_LEN);
	return true;
}

static void
reply_error(struct evhttp_request *req, int status, const char *msg)
{
	web_reply_json(req, status, json_pack("{s:s}", "error", msg));
}

void
web_admin_handle(struct daemon_loop *loop, struct evhttp_request *req, const char *path,
		 struct evkeyvalq *q, struct json_t *body, struct web_env *env, const char *user)
{
	const struct web_settings *ws = web_settings(env->cfg);
	bool post = body != NULL;
	struct admin_job job0 = { .since = -1 };
	struct admin_job *job;

	if (strncmp(path, "/api/admin/", 11) == 0) {
		if (!web_admin_is(env->cfg, user)) {
			reply_error(req, 403, "admins only");
			return;
		}
		const char *call = path + 11;
		if (!post && strcmp(call, "overview") == 0) {
			web_reply_json(req, 200, overview());
			return;
		}
		if (!post && strcmp(call, "transactions") == 0) {
			char *qs = NULL, *verdict = NULL;
			long long limit = 100;
			const char *l = evhttp_find_header(q, "limit");
			if (!query_filter(q, "q", &qs) || !query_filter(q, "verdict", &verdict) ||
			    (l != NULL && (!parse_count(l, TXSTATS_RING, &limit) || limit < 1))) {
				free(qs);
				free(verdict);
				reply_error(req, 400, "bad q, verdict or limit (1 to 1000)");
				return;
			}
			web_reply_json(req, 200, transactions(qs, verdict, (size_t)limit));
			free(qs);
			free(verdict);
			return;
		}
		if (!post && strcmp(call, "quarantine") == 0) {
			const char *since = evhttp_find_header(q, "since");
			const char *all = evhttp_find_header(q, "all");
			job0.op = AOP_QLIST;
			if (!query_filter(q, "sender", &job0.sender) || !query_filter(q, "rcpt", &job0.rcpt) ||
			    !query_filter(q, "reason", &job0.reason) ||
			    (since != NULL && since[0] != '\0' && !parse_count(since, 1LL << 40, &job0.since))) {
				free(job0.sender);
				free(job0.rcpt);
				free(job0.reason);
				reply_error(req, 400, "bad sender, rcpt, reason or since");
				return;
			}
			job0.all = all != NULL && strcmp(all, "1") == 0;
		} else if (!post && strcmp(call, "quarantine/message") == 0) {
			const char *id = evhttp_find_header(q, "id");
			if (id == NULL || !quarantine_id_valid(id)) {
				reply_error(req, 400, "invalid id");
				return;
			}
			job0.op = AOP_QSHOW;
			memcpy(job0.id, id, MX_ID_LEN);
		} else if (post && strcmp(call, "quarantine/release") == 0) {
			json_t *to = json_object_get(body, "to");
			if (!body_id(req, body, job0.id))
				return;
			if (to != NULL && (!json_is_array(to) || json_array_size(to) > ADMIN_TO_MAX)) {
				reply_error(req, 400, "to must be a list of at most 100 addresses");
				return;
			}
			for (size_t i = 0; to != NULL && i < json_array_size(to); i++) {
				const char *a = json_string_value(json_array_get(to, i));
				if (a == NULL || !address_ok(a)) {
					for (size_t k = 0; k < job0.n_to; k++)
						free(job0.to[k]);
					free(job0.to);
					reply_error(req, 400, "to: not an address (local@domain)");
					return;
				}
				job0.to = xrealloc(job0.to, (job0.n_to + 1) * sizeof(*job0.to));
				job0.to[job0.n_to] = xstrdup(a);
				str_lower(job0.to[job0.n_to++]);
			}
			job0.op = AOP_QRELEASE;
		} else if (post && strcmp(call, "quarantine/delete") == 0) {
			if (!body_id(req, body, job0.id))
				return;
			job0.op = AOP_QDELETE;
		} else {
			reply_error(req, 404, "no such API call");
			return;
		}
	} else if (!post && strcmp(path, "/api/held") == 0) {
		job0.op = AOP_HELD;
		job0.can_release = ws->user_release;
	} else if (post && (strcmp(path, "/api/held/release") == 0 || strcmp(path, "/api/held/delete") == 0)) {
		if (!ws->user_release) {
			reply_error(req, 403, "releasing is not allowed");
			return;
		}
		if (!body_id(req, body, job0.id))
			return;
		job0.op = path[10] == 'r' ? AOP_HELD_RELEASE : AOP_HELD_DELETE;
	} else {
		reply_error(req, 404, "no such API call");
		return;
	}

	job = xcalloc(1, sizeof(*job));
	*job = job0;
	job->req = req;
	job->env = *env;
	env->release = NULL; /* the job holds it now */
	job->user = xstrdup(user);
	str_lower(job->user);
	web_admin_who(job->user, job->who, sizeof(job->who));
	job->qdir = xstrdup(backends_settings(env->cfg)->quarantine_dir);
	if (workers_submit(daemon_loop_workers(loop), WORKER_LANE_SCAN, daemon_loop_base(loop), admin_work,
			   admin_done, job) < 0) {
		reply_error(req, 503, "server busy, try again later");
		job_free(job);
		return;
	}
	evhttp_connection_set_closecb(evhttp_request_get_connection(req), job_conn_closed, job);
}
