/*
 * service.c — the `web` service's HTTP side: evhttp on loop 0, the
 * session table, login and logout, CSRF, security headers, the page's
 * static files, autoconfig, and the API's requests handed to the worker
 * pool (api.c does their Maildir work there).
 *
 * Everything here runs on loop 0's thread (the session table needs no
 * lock). A request waiting for a worker (or for the login failure delay)
 * watches its connection: when the client goes away first, the job's
 * answer is dropped (closecb clears job->req).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <glib.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backends/backends.h"
#include "daemon/daemon.h"
#include "imap/imap.h"
#include "lib/lib.h"
#include "lib/metrics.h"
#include "mailbox/mailbox.h"
#include "web/web.h"

#define WEB_USER_MAX 320
#define WEB_PASSWORD_MAX 1024
#define WEB_STATIC_MAX (4u << 20)
#define WEB_SEARCH_MAX 200

#define CSP_PAGE "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
/* a message's HTML: no scripts, nothing fetched, no forms, a sandbox */
#define CSP_MESSAGE                                                                              \
	"default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; " \
	"base-uri 'none'; form-action 'none'; sandbox"

struct web_sess {
	char id[WEB_TOKEN_HEX + 1];
	char csrf[WEB_TOKEN_HEX + 1];
	char *user;
	char *root;
	time_t created, last;
};

struct static_file {
	const char *path; /* as requested */
	const char *name; /* in static_dir */
	const char *type;
	char *data;
	size_t len;
};

struct web_server {
	struct evhttp *http;
	struct daemon_loop *loop;
	web_env_fn *env_of;
	char *listener;
	struct web_sess *sess;
	size_t n_sess, cap_sess;
	struct static_file files[3];
};

struct web_job {
	struct web_server *srv;
	struct evhttp_request *req; /* NULL: the client went away */
	struct web_env env;
	bool login;
	/* login */
	char *user, *password, *mail_root, *root, *error;
	char addr[64];
	int verdict; /* 1 ok, 0 bad credentials, -1 error */
	long delay_ms;
	/* api */
	struct web_call call;
	struct web_result res;
};

static time_t
now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

static int
random_token(char out[WEB_TOKEN_HEX + 1])
{
	unsigned char b[WEB_TOKEN_HEX / 2];
	static const char hex[] = "0123456789abcdef";

	if (RAND_bytes(b, sizeof(b)) != 1)
		return -1;
	for (size_t i = 0; i < sizeof(b); i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	out[WEB_TOKEN_HEX] = '\0';
	explicit_bzero(b, sizeof(b));
	return 0;
}

/* ------------------------------------------------------------ replies */

static void
security_headers(struct evhttp_request *req, bool message_html)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_add_header(h, "Content-Security-Policy", message_html ? CSP_MESSAGE : CSP_PAGE);
	evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(h, "X-Frame-Options", message_html ? "SAMEORIGIN" : "DENY");
	evhttp_add_header(h, "Referrer-Policy", "no-referrer");
	evhttp_add_header(h, "Cache-Control", "no-store");
	evhttp_add_header(h, "Cross-Origin-Opener-Policy", "same-origin");
}

static void
reply(struct evhttp_request *req, int status, const char *type, const char *body, size_t len,
      bool message_html)
{
	struct evbuffer *out = evbuffer_new();

	security_headers(req, message_html);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  type != NULL ? type : "application/json");
	if (out == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	evbuffer_add(out, body, len);
	evhttp_send_reply(req, status, status < 300 ? "OK" : status == 404 ? "Not Found" : "Error", out);
	evbuffer_free(out);
}

static void
reply_json(struct evhttp_request *req, int status, json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);

	json_decref(j);
	reply(req, status, NULL, s != NULL ? s : "{}", s != NULL ? strlen(s) : 2, false);
	free(s);
}

void
web_reply_json(struct evhttp_request *req, int status, json_t *j)
{
	reply_json(req, status, j);
}

static void
reply_error(struct evhttp_request *req, int status, const char *msg)
{
	reply_json(req, status, json_pack("{s:s}", "error", msg));
}

/* ----------------------------------------------------------- sessions */

static void
sess_clear(struct web_sess *s)
{
	explicit_bzero(s->id, sizeof(s->id));
	explicit_bzero(s->csrf, sizeof(s->csrf));
	free(s->user);
	free(s->root);
}

static void
sess_remove(struct web_server *srv, size_t i)
{
	sess_clear(&srv->sess[i]);
	srv->sess[i] = srv->sess[--srv->n_sess];
}

static void
sess_expire(struct web_server *srv, const struct web_settings *ws)
{
	time_t now = now_mono();

	for (size_t i = 0; i < srv->n_sess;) {
		struct web_sess *s = &srv->sess[i];
		if (now - s->last > ws->session_idle || now - s->created > ws->session_max)
			sess_remove(srv, i);
		else
			i++;
	}
}

/* the request's session (its last use updated), or NULL */
static struct web_sess *
sess_find(struct web_server *srv, struct evhttp_request *req, const struct web_settings *ws)
{
	const char *cookie = evhttp_find_header(evhttp_request_get_input_headers(req), "Cookie");
	char id[WEB_TOKEN_HEX + 1];
	struct web_sess *found = NULL;

	sess_expire(srv, ws);
	if (cookie == NULL || !web_cookie_get(cookie, WEB_COOKIE_NAME, id, sizeof(id)) || !web_token_ok(id))
		return NULL;
	for (size_t i = 0; i < srv->n_sess; i++)
		if (web_token_equal(srv->sess[i].id, id))
			found = &srv->sess[i];
	if (found != NULL)
		found->last = now_mono();
	return found;
}

static struct web_sess *
sess_new(struct web_server *srv, const struct web_settings *ws, const char *user, const char *root)
{
	struct web_sess s = { 0 };

	if (random_token(s.id) < 0 || random_token(s.csrf) < 0)
		return NULL;
	s.user = xstrdup(user);
	s.root = xstrdup(root);
	s.created = s.last = now_mono();
	if (srv->n_sess >= (size_t)ws->sessions_max && srv->n_sess > 0) {
		size_t oldest = 0;
		for (size_t i = 1; i < srv->n_sess; i++)
			if (srv->sess[i].last < srv->sess[oldest].last)
				oldest = i;
		sess_remove(srv, oldest);
	}
	if (srv->n_sess == srv->cap_sess) {
		srv->cap_sess = srv->cap_sess ? srv->cap_sess * 2 : 16;
		srv->sess = xrealloc(srv->sess, srv->cap_sess * sizeof(*srv->sess));
	}
	srv->sess[srv->n_sess] = s;
	return &srv->sess[srv->n_sess++];
}

static void
set_cookie(struct evhttp_request *req, const char *value, bool expire)
{
	char buf[256];

	snprintf(buf, sizeof(buf), "%s=%s; Path=/; HttpOnly; SameSite=Strict%s", WEB_COOKIE_NAME, value,
		 expire ? "; Max-Age=0" : "");
	evhttp_add_header(evhttp_request_get_output_headers(req), "Set-Cookie", buf);
}

/* ------------------------------------------------------------ jobs */

static void
job_free(struct web_job *job)
{
	if (job->password != NULL) {
		explicit_bzero(job->password, strlen(job->password));
		free(job->password);
	}
	free(job->user);
	free(job->mail_root);
	free(job->root);
	free(job->error);
	free(job->call.user);
	free(job->call.root);
	free(job->call.folder);
	free(job->call.to);
	free(job->call.search);
	free(job->res.body);
	free(job->res.content_type);
	free(job->res.disposition);
	if (job->env.release != NULL)
		job->env.release(job->env.hold);
	free(job);
}

static void
job_conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct web_job *job = arg;

	(void)evcon;
	job->req = NULL;
}

static void
job_watch(struct web_job *job)
{
	evhttp_connection_set_closecb(evhttp_request_get_connection(job->req), job_conn_closed, job);
}

/* the client is still there: stop watching, true */
static bool
job_unwatch(struct web_job *job)
{
	if (job->req == NULL)
		return false;
	evhttp_connection_set_closecb(evhttp_request_get_connection(job->req), NULL, NULL);
	return true;
}

static void
api_done(void *arg)
{
	struct web_job *job = arg;

	if (job_unwatch(job)) {
		if (job->res.body == NULL)
			reply_error(job->req, 500, "internal error");
		else {
			if (job->res.disposition != NULL)
				evhttp_add_header(evhttp_request_get_output_headers(job->req),
						  "Content-Disposition", job->res.disposition);
			reply(job->req, job->res.status, job->res.content_type, job->res.body, job->res.len,
			      job->res.html_message);
		}
	}
	job_free(job);
}

static void
api_work(void *arg)
{
	struct web_job *job = arg;

	web_api_run(&job->call, &job->res);
}

static void
job_submit(struct web_job *job, void (*work)(void *), void (*done)(void *))
{
	struct daemon_loop *loop = job->srv->loop;

	if (workers_submit(daemon_loop_workers(loop), WORKER_LANE_SCAN, daemon_loop_base(loop), work, done,
			   job) < 0) {
		reply_error(job->req, 503, "server busy, try again later");
		job_free(job);
		return;
	}
	job_watch(job);
}

/* -------------------------------------------------------------- login */

static void
throttle_keys(const char *addr, const char *user, char *ka, size_t kasz, char *ku, size_t kusz)
{
	/* the keys POP3 and IMAP use: one client's failures count on all */
	snprintf(ka, kasz, "a:%s", addr);
	snprintf(ku, kusz, "u:%s", user);
	str_lower(ku);
}

static void
login_work(void *arg)
{
	struct web_job *job = arg;
	char path[4096];
	int v = userdb_verify(job->env.userdb, job->user, job->password);
	const char *at;

	explicit_bzero(job->password, strlen(job->password));
	if (v <= 0) {
		job->verdict = v < 0 ? -1 : 0;
		if (v < 0)
			job->error = xstrdup("user database unreadable");
		return;
	}
	at = strrchr(job->user, '@');
	if (at == NULL) {
		job->verdict = 0;
		return;
	}
	char *local = xstrndup(job->user, (size_t)(at - job->user));
	int rc = maildir_user_path(job->mail_root, local, at + 1, path, sizeof(path));
	free(local);
	if (rc < 0) {
		job->verdict = -1;
		job->error = xasprintf("no safe Maildir path for the user");
		return;
	}
	size_t len = strlen(path);
	while (len > 1 && path[len - 1] == '/')
		path[--len] = '\0';
	int fd = mailbox_lock(path, true, &job->error); /* makes INBOX */
	if (fd < 0) {
		job->verdict = -1;
		return;
	}
	close(fd);
	job->root = xstrdup(path);
	job->verdict = 1;
}

static void
login_fail_fire(evutil_socket_t fd, short what, void *arg)
{
	struct web_job *job = arg;

	(void)fd;
	(void)what;
	if (job_unwatch(job))
		reply_error(job->req, job->verdict == -2 ? 429 : 401,
			    job->verdict == -2 ? "too many failed logins, try again later"
					       : "authentication failed");
	job_free(job);
}

/* answer a failed login after the configured delay */
static void
login_fail_later(struct web_job *job)
{
	struct timeval tv = { job->delay_ms / 1000, (job->delay_ms % 1000) * 1000 };

	if (event_base_once(daemon_loop_base(job->srv->loop), -1, EV_TIMEOUT, login_fail_fire, job, &tv) < 0) {
		if (job_unwatch(job))
			reply_error(job->req, 401, "authentication failed");
		job_free(job);
		return;
	}
	if (job->req != NULL)
		job_watch(job);
}

static void
login_done(void *arg)
{
	struct web_job *job = arg;
	const struct web_settings *ws = web_settings(job->env.cfg);
	const struct imap_settings *is = imap_settings(job->env.cfg);
	char who[128], ka[96], ku[96 + WEB_USER_MAX];

	str_log_safe(job->user, who, sizeof(who));
	if (job->req == NULL) {
		job_free(job);
		return;
	}
	if (job->verdict == 0) {
		throttle_keys(job->addr, job->user, ka, sizeof(ka), ku, sizeof(ku));
		mailbox_throttle_fail(ka, is->auth_failure_window, (long)now_mono());
		mailbox_throttle_fail(ku, is->auth_failure_window, (long)now_mono());
		log_msg(LOG_LEVEL_INFO, "web auth failed client=%s user=%s reason=bad_credentials", job->addr, who);
		job_unwatch(job);
		login_fail_later(job);
		return;
	}
	job_unwatch(job);
	if (job->verdict < 0) {
		log_msg(LOG_LEVEL_ERR, "web auth failed client=%s user=%s reason=error: %s", job->addr, who,
			job->error != NULL ? job->error : "?");
		reply_error(job->req, 503, "temporary server error, try again later");
		job_free(job);
		return;
	}
	struct web_sess *s = sess_new(job->srv, ws, job->user, job->root);
	if (s == NULL) {
		reply_error(job->req, 503, "temporary server error, try again later");
		job_free(job);
		return;
	}
	log_msg(LOG_LEVEL_INFO, "web login client=%s user=%s", job->addr, who);
	set_cookie(job->req, s->id, false);
	reply_json(job->req, 200, json_pack("{s:s,s:s,s:b,s:b}", "user", s->user, "csrf", s->csrf, "admin",
					    web_admin_is(job->env.cfg, s->user), "user_release",
					    ws->user_release));
	job_free(job);
}

static void
client_addr(struct evhttp_request *req, char *out, size_t outsz)
{
	const struct sockaddr *sa = evhttp_connection_get_addr(evhttp_request_get_connection(req));
	char host[64] = "?";

	if (sa != NULL)
		net_addr_str(sa, host, sizeof(host));
	str_copy(out, host, outsz);
}

/* the request's JSON body (an object), or NULL (answered) */
static json_t *
body_json(struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	json_error_t jerr;

	/* a cross-site form cannot send application/json without a preflight */
	if (ct == NULL || strncasecmp(ct, "application/json", 16) != 0) {
		reply_error(req, 415, "the body must be application/json");
		return NULL;
	}
	json_t *j = json_loadb((const char *)evbuffer_pullup(in, -1), len, JSON_REJECT_DUPLICATES, &jerr);
	if (j == NULL || !json_is_object(j)) {
		json_decref(j);
		reply_error(req, 400, "the body is not a JSON object");
		return NULL;
	}
	return j;
}

static void
do_login(struct web_server *srv, struct evhttp_request *req, struct web_env *env)
{
	const struct imap_settings *is = imap_settings(env->cfg);
	json_t *j = body_json(req);
	char ka[96], ku[96 + WEB_USER_MAX], addr[64], who[128];
	long now = (long)now_mono();

	if (j == NULL)
		goto out;
	const char *user = json_string_value(json_object_get(j, "user"));
	const char *password = json_string_value(json_object_get(j, "password"));
	if (user == NULL || password == NULL || user[0] == '\0' || strlen(user) > WEB_USER_MAX ||
	    strlen(password) > WEB_PASSWORD_MAX) {
		json_decref(j);
		reply_error(req, 400, "user and password are needed");
		goto out;
	}
	client_addr(req, addr, sizeof(addr));
	struct web_job *job = xcalloc(1, sizeof(*job));
	job->srv = srv;
	job->req = req;
	job->env = *env;
	env->release = NULL; /* the job holds it now */
	job->login = true;
	job->user = xstrdup(user);
	job->password = xstrdup(password);
	json_decref(j); /* the password's copy in j is freed with it */
	str_copy(job->addr, addr, sizeof(job->addr));
	job->delay_ms = is->auth_failure_delay;
	throttle_keys(addr, job->user, ka, sizeof(ka), ku, sizeof(ku));
	if (mailbox_throttle_blocked(ka, is->auth_failures_max, is->auth_failure_window, now) ||
	    mailbox_throttle_blocked(ku, is->auth_failures_max, is->auth_failure_window, now)) {
		str_log_safe(job->user, who, sizeof(who));
		log_msg(LOG_LEVEL_INFO, "web auth failed client=%s user=%s reason=throttled", addr, who);
		job->verdict = -2;
		login_fail_later(job);
		goto out;
	}
	job->mail_root = xstrdup(backends_settings(env->cfg)->mail_root);
	job_submit(job, login_work, login_done);
out:
	return;
}

/* ---------------------------------------------------------------- API */

static const char *
query_get(struct evkeyvalq *q, const char *key)
{
	return evhttp_find_header(q, key);
}

static bool
is_post(struct evhttp_request *req)
{
	return evhttp_request_get_command(req) == EVHTTP_REQ_POST;
}

static void
do_api(struct web_server *srv, struct evhttp_request *req, const char *path, struct evkeyvalq *q,
       struct web_env *env)
{
	const struct web_settings *ws = web_settings(env->cfg);

	if (strcmp(path, "/api/login") == 0) {
		if (!is_post(req)) {
			reply_error(req, 405, "POST only");
			return;
		}
		do_login(srv, req, env);
		return;
	}
	struct web_sess *s = sess_find(srv, req, ws);
	if (s == NULL) {
		reply_error(req, 401, "not logged in");
		return;
	}
	json_t *body = NULL;
	if (is_post(req)) {
		const char *tok = evhttp_find_header(evhttp_request_get_input_headers(req), "X-CSRF-Token");
		if (tok == NULL || !web_token_ok(tok) || !web_token_equal(tok, s->csrf)) {
			reply_error(req, 403, "missing or wrong CSRF token");
			return;
		}
		if ((body = body_json(req)) == NULL)
			return;
	}
	if (strcmp(path, "/api/session") == 0) {
		reply_json(req, 200, json_pack("{s:s,s:s,s:b,s:b}", "user", s->user, "csrf", s->csrf, "admin",
					       web_admin_is(env->cfg, s->user), "user_release",
					       ws->user_release));
		goto out;
	}
	if (web_admin_path(path)) { /* admin.c: /api/admin/..., /api/held... */
		web_admin_handle(srv->loop, req, path, q, body, env, s->user);
		goto out;
	}
	if (strcmp(path, "/api/logout") == 0 && body != NULL) {
		char who[128];
		str_log_safe(s->user, who, sizeof(who));
		log_msg(LOG_LEVEL_INFO, "web logout user=%s", who);
		sess_remove(srv, (size_t)(s - srv->sess));
		set_cookie(req, "", true);
		reply_json(req, 200, json_pack("{s:b}", "ok", 1));
		goto out;
	}
	struct web_call c = { .seen = -1, .flagged = -1 };
	const char *folder = NULL, *uid = NULL;
	if (body == NULL && strcmp(path, "/api/folders") == 0) {
		c.op = WEB_OP_FOLDERS;
	} else if (body == NULL && strcmp(path, "/api/messages") == 0) {
		c.op = WEB_OP_LIST;
		folder = query_get(q, "folder");
		const char *page = query_get(q, "page"), *per = query_get(q, "per_page");
		unsigned v;
		c.page = 0;
		c.per_page = 50;
		if (page != NULL && strcmp(page, "0") != 0) {
			if (!web_parse_uid(page, &v) || v > 1000000) {
				reply_error(req, 400, "bad page");
				goto out;
			}
			c.page = v;
		}
		if (per != NULL) {
			if (!web_parse_uid(per, &v) || v > (unsigned)ws->page_size_max) {
				reply_error(req, 400, "bad per_page");
				goto out;
			}
			c.per_page = v;
		}
		const char *search = query_get(q, "q");
		if (search != NULL && search[0] != '\0') {
			if (strlen(search) > WEB_SEARCH_MAX) {
				reply_error(req, 400, "search text too long");
				goto out;
			}
			c.search = xstrdup(search);
		}
	} else if (body == NULL && strcmp(path, "/api/message") == 0) {
		c.op = WEB_OP_READ;
		folder = query_get(q, "folder");
		uid = query_get(q, "uid");
	} else if (body == NULL && strcmp(path, "/api/message.html") == 0) {
		c.op = WEB_OP_HTML;
		folder = query_get(q, "folder");
		uid = query_get(q, "uid");
	} else if (body == NULL && strcmp(path, "/api/attachment") == 0) {
		const char *part = query_get(q, "part");
		unsigned v;
		c.op = WEB_OP_ATTACHMENT;
		folder = query_get(q, "folder");
		uid = query_get(q, "uid");
		if (part == NULL || (strcmp(part, "0") != 0 && !web_parse_uid(part, &v))) {
			reply_error(req, 400, "bad part");
			goto out;
		}
		c.part = strcmp(part, "0") == 0 ? 0 : v;
	} else if (body != NULL &&
		   (strcmp(path, "/api/flags") == 0 || strcmp(path, "/api/move") == 0 ||
		    strcmp(path, "/api/delete") == 0 || strcmp(path, "/api/spam") == 0 ||
		    strcmp(path, "/api/notspam") == 0)) {
		json_t *ju = json_object_get(body, "uid");
		folder = json_string_value(json_object_get(body, "folder"));
		if (!json_is_integer(ju) || json_integer_value(ju) < 1 ||
		    json_integer_value(ju) > (json_int_t)UINT32_MAX) {
			reply_error(req, 400, "bad uid");
			goto out;
		}
		c.uid = (unsigned)json_integer_value(ju);
		if (strcmp(path, "/api/flags") == 0) {
			json_t *se = json_object_get(body, "seen"), *fl = json_object_get(body, "flagged");
			c.op = WEB_OP_FLAGS;
			c.seen = json_is_boolean(se) ? json_is_true(se) : -1;
			c.flagged = json_is_boolean(fl) ? json_is_true(fl) : -1;
		} else {
			const char *to;
			c.op = WEB_OP_MOVE;
			if (strcmp(path, "/api/move") == 0)
				to = json_string_value(json_object_get(body, "to"));
			else if (strcmp(path, "/api/delete") == 0)
				to = "Trash";
			else if (strcmp(path, "/api/spam") == 0)
				to = backends_settings(env->cfg)->junk_folder;
			else
				to = "INBOX";
			if (to == NULL) {
				reply_error(req, 400, "bad destination folder");
				goto out;
			}
			c.to = xstrdup(to);
		}
	} else {
		reply_error(req, 404, "no such API call");
		goto out;
	}
	if (c.op != WEB_OP_FOLDERS) {
		if (folder == NULL || !mailbox_folder_name_ok(folder)) {
			free(c.to);
			free(c.search);
			reply_error(req, 400, "invalid folder name");
			goto out;
		}
		c.folder = xstrdup(folder);
	}
	if ((c.op == WEB_OP_READ || c.op == WEB_OP_HTML || c.op == WEB_OP_ATTACHMENT) &&
	    !web_parse_uid(uid, &c.uid)) {
		free(c.to);
		free(c.folder);
		reply_error(req, 400, "bad uid");
		goto out;
	}
	struct web_job *job = xcalloc(1, sizeof(*job));
	job->srv = srv;
	job->req = req;
	job->env = *env;
	env->release = NULL;
	c.cfg = env->cfg;
	c.junk_moved = env->junk_moved;
	c.user = xstrdup(s->user);
	c.root = xstrdup(s->root);
	job->call = c;
	job_submit(job, api_work, api_done);
out:
	json_decref(body);
}

/* --------------------------------------------------------- the page */

static void
serve_static(struct web_server *srv, struct evhttp_request *req, const char *path)
{
	if (strcmp(path, "/") == 0)
		path = "/index.html";
	for (size_t i = 0; i < N_ELEMENTS(srv->files); i++) {
		struct static_file *f = &srv->files[i];
		if (strcmp(path, f->path) != 0)
			continue;
		if (f->data == NULL)
			break;
		reply(req, 200, f->type, f->data, f->len, false);
		return;
	}
	reply(req, 404, "text/plain; charset=utf-8", "Not Found\n", 10, false);
}

static bool
domain_ok(const char *d)
{
	if (d == NULL || d[0] == '\0' || strlen(d) > 253)
		return false;
	for (const char *p = d; *p != '\0'; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '.' || *p == '-'))
			return false;
	return true;
}

static void
serve_autoconfig(struct evhttp_request *req, struct evkeyvalq *q, const struct web_env *env)
{
	const char *email = query_get(q, "emailaddress");
	const char *at = email != NULL ? strrchr(email, '@') : NULL;
	const char *domain = at != NULL ? at + 1 : NULL;
	const struct backends_settings *bs = backends_settings(env->cfg);
	size_t len;

	if (domain == NULL && bs->n_local_domains > 0)
		domain = bs->local_domains[0];
	if (!domain_ok(domain)) {
		reply(req, 400, "text/plain; charset=utf-8", "bad emailaddress\n", 17, false);
		return;
	}
	char *x = web_autoconfig(env->cfg, env->hostname, domain, &len);
	reply(req, 200, "application/xml; charset=utf-8", x, len, false);
	g_free(x);
}

static void
web_request_cb(struct evhttp_request *req, void *arg)
{
	struct web_server *srv = arg;
	struct evhttp_uri *uri = evhttp_uri_parse_with_flags(evhttp_request_get_uri(req), 0);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	const char *qs = uri != NULL ? evhttp_uri_get_query(uri) : NULL;
	struct evkeyvalq q;
	struct web_env env = { 0 };

	TAILQ_INIT(&q);
	if (path == NULL || (qs != NULL && evhttp_parse_query_str(qs, &q) < 0)) {
		reply(req, 400, "text/plain; charset=utf-8", "Bad Request\n", 12, false);
		goto out;
	}
	srv->env_of(srv->loop, &env);
	if (strncmp(path, "/api/", 5) == 0) {
		do_api(srv, req, path, &q, &env);
	} else if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
		   evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
		reply(req, 405, "text/plain; charset=utf-8", "Method Not Allowed\n", 19, false);
	} else if (strcmp(path, "/.well-known/autoconfig/mail/config-v1.1.xml") == 0 ||
		   strcmp(path, "/mail/config-v1.1.xml") == 0) {
		serve_autoconfig(req, &q, &env);
	} else {
		serve_static(srv, req, path);
	}
	if (env.release != NULL)
		env.release(env.hold);
out:
	evhttp_clear_headers(&q);
	if (uri != NULL)
		evhttp_uri_free(uri);
}

/* ------------------------------------------------------ start, stop */

static void
load_static(struct static_file *f, const char *dir)
{
	/* at start, on the main thread: the loops do not run yet */
	char *path = xasprintf("%s/%s", dir, f->name);
	FILE *fp = fopen(path, "rb");
	size_t len = 0;

	f->data = NULL;
	if (fp != NULL) {
		char *buf = xmalloc(WEB_STATIC_MAX + 1);
		len = fread(buf, 1, WEB_STATIC_MAX + 1, fp);
		if (ferror(fp) || len > WEB_STATIC_MAX) {
			free(buf);
		} else {
			f->data = buf;
			f->len = len;
		}
		fclose(fp);
	}
	if (f->data == NULL)
		log_msg(LOG_LEVEL_WARN, "web cannot read %s (its page answers 404)", path);
	free(path);
}

void *
web_serve_start(struct daemon_loop *loop, int fd, const char *listener, web_env_fn *env_of,
		char **error_r)
{
	struct web_server *srv = xcalloc(1, sizeof(*srv));
	struct web_env env = { 0 };

	srv->loop = loop;
	srv->env_of = env_of;
	srv->listener = xstrdup(listener);
	srv->files[0] = (struct static_file){ "/index.html", "index.html", "text/html; charset=utf-8", NULL, 0 };
	srv->files[1] = (struct static_file){ "/app.js", "app.js", "text/javascript; charset=utf-8", NULL, 0 };
	srv->files[2] = (struct static_file){ "/style.css", "style.css", "text/css; charset=utf-8", NULL, 0 };
	env_of(loop, &env);
	const struct web_settings *ws = web_settings(env.cfg);
	for (size_t i = 0; i < N_ELEMENTS(srv->files); i++)
		load_static(&srv->files[i], ws->static_dir);
	srv->http = evhttp_new(daemon_loop_base(loop));
	if (srv->http == NULL) {
		*error_r = xstrdup("evhttp_new failed");
		goto fail;
	}
	evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
	evhttp_set_max_headers_size(srv->http, (ev_ssize_t)ws->headers_max);
	evhttp_set_max_body_size(srv->http, (ev_ssize_t)ws->body_max);
	evhttp_set_timeout(srv->http, (int)ws->timeout);
	evhttp_set_gencb(srv->http, web_request_cb, srv);
	if (evhttp_accept_socket_with_handle(srv->http, fd) == NULL) {
		*error_r = xstrdup("evhttp cannot take the listening socket");
		goto fail;
	}
	log_msg(LOG_LEVEL_INFO, "web name=%s serving the web page and /api/ (static_dir=%s)", listener,
		ws->static_dir);
	if (env.release != NULL)
		env.release(env.hold);
	return srv;
fail:
	if (env.release != NULL)
		env.release(env.hold);
	web_serve_stop(loop, srv);
	return NULL;
}

void
web_serve_stop(struct daemon_loop *loop, void *ctx)
{
	struct web_server *srv = ctx;

	(void)loop;
	if (srv == NULL)
		return;
	if (srv->http != NULL)
		evhttp_free(srv->http); /* closes the socket and every connection */
	for (size_t i = 0; i < srv->n_sess; i++)
		sess_clear(&srv->sess[i]);
	free(srv->sess);
	for (size_t i = 0; i < N_ELEMENTS(srv->files); i++)
		free(srv->files[i].data);
	free(srv->listener);
	free(srv);
}
