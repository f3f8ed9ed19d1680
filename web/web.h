/*
 * web.h — the `web` service: a user's mail in a browser (doc/web.md).
 *
 * A row of the service table that serves its listening socket itself
 * (struct service.serve_start, like `metrics`): evhttp parses HTTP on
 * loop 0; every Maildir or passwd-file access runs on that loop's worker
 * pool, never on the loop. The page (web/static/: HTML, CSS, plain
 * JavaScript) talks to a JSON API under /api/ (jansson).
 *
 * Sessions live in this process only (a daemon restart logs everyone
 * out): a 256-bit random id (RAND_bytes) in an HttpOnly, SameSite=Strict
 * cookie, a second random CSRF token the page sends in X-CSRF-Token on
 * every POST, idle and absolute expiry.
 */
#ifndef MXGUARD_WEB_H
#define MXGUARD_WEB_H

#include <stdbool.h>
#include <stddef.h>

struct mx_config;
struct userdb;
struct daemon_loop;

/* ------------------------------------------------------------ settings */
struct web_settings {
	long session_idle;     /* seconds without a request before a session ends */
	long session_max;      /* seconds after login a session ends regardless */
	long sessions_max;     /* sessions held at once (the oldest is dropped) */
	long headers_max;      /* octets of a request's headers */
	long body_max;         /* octets of a request's body */
	long timeout;          /* seconds for a request to arrive */
	long page_size_max;    /* messages per page of a list */
	char *static_dir;      /* the page's files */
	char **admins;         /* passwd-file users with the admin pages (web/admin.c) */
	size_t n_admins;
	bool user_release;     /* users may release/delete their own held messages */
};
void web_register_config(void);
const struct web_settings *web_settings(const struct mx_config *cfg);

/* ------------------------------------------------------------- service */
/*
 * What the service needs of the daemon's current state, asked for each
 * request (the state changes at a reload): cfg and userdb stay valid
 * until release(hold) is called.
 */
typedef void web_junk_moved_fn(const struct mx_config *cfg, const char *user, const char *data,
			       size_t len, bool to_junk);
struct web_env {
	const struct mx_config *cfg;
	struct userdb *userdb;
	web_junk_moved_fn *junk_moved; /* NULL: nothing learns from moves */
	const char *hostname; /* the server's name, for autoconfig */
	void *hold;
	void (*release)(void *hold);
};
typedef void web_env_fn(struct daemon_loop *loop, struct web_env *env);

void *web_serve_start(struct daemon_loop *loop, int fd, const char *listener, web_env_fn *env_of,
		      char **error_r);
void web_serve_stop(struct daemon_loop *loop, void *ctx);

/* ------------------------------------------- http.c: pure input helpers */
#define WEB_COOKIE_NAME "mxguard_session"
#define WEB_TOKEN_HEX 64 /* 32 random octets */
/*
 * The value of cookie `name` in a Cookie: header ("a=1; b=2"), copied to
 * out (outsz octets, NUL-terminated). Only values of [0-9a-f] up to
 * outsz - 1 octets are taken. true when found.
 */
bool web_cookie_get(const char *header, const char *name, char *out, size_t outsz);
/* A token as the server makes them: exactly WEB_TOKEN_HEX of [0-9a-f]. */
bool web_token_ok(const char *s);
/* Constant-time comparison of two NUL-terminated tokens. */
bool web_token_equal(const char *a, const char *b);
/*
 * data[0..len) as valid UTF-8 (malloc'd, NUL-terminated): invalid
 * sequences, NULs and C0 controls other than TAB/LF/CR become U+FFFD.
 */
char *web_utf8_clean(const char *data, size_t len);
/* A message's UID in a query ("1".."4294967295", no sign, no leading
 * zero): true with *uid_r. */
bool web_parse_uid(const char *s, unsigned *uid_r);

/* ------------------------------------------------------ api.c: Maildir */
struct web_result {
	int status;          /* HTTP status */
	char *content_type;  /* malloc'd; NULL: application/json */
	char *body;          /* malloc'd */
	size_t len;
	bool html_message;   /* a message's HTML part: its own sandboxing CSP */
	char *disposition;   /* malloc'd Content-Disposition (an attachment), or NULL */
};
enum web_op {
	WEB_OP_FOLDERS,
	WEB_OP_LIST,
	WEB_OP_READ,
	WEB_OP_HTML,
	WEB_OP_FLAGS,
	WEB_OP_MOVE,
	WEB_OP_ATTACHMENT,
};
struct web_call {
	enum web_op op;
	const struct mx_config *cfg;
	web_junk_moved_fn *junk_moved;
	char *user;
	char *root;     /* the user's Maildir root */
	char *folder;   /* validated by the caller? no: api.c validates */
	char *to;       /* MOVE: the destination folder */
	unsigned uid;
	long page, per_page;
	char *search;   /* LIST: only messages whose From or Subject holds it (NULL: all) */
	int seen, flagged; /* FLAGS: -1 unchanged, 0 clear, 1 set */
	unsigned part;     /* ATTACHMENT: its index among the message's attachments */
};
/* Run one call (on the worker pool: blocking file-system work). */
void web_api_run(const struct web_call *call, struct web_result *res);
/* Autoconfig XML (g_malloc'd: g_free) for the listeners of cfg (pure). */
char *web_autoconfig(const struct mx_config *cfg, const char *hostname, const char *domain, size_t *len_r);

/* ------------------------------------- admin.c: admins, "Held for you" */
struct evhttp_request;
struct evkeyvalq;
struct json_t;
#define WEB_ADMIN_WHO_MAX 400
/* user is one of `web { admins }` (any case). */
bool web_admin_is(const struct mx_config *cfg, const char *user);
/* path is one of admin.c's: /api/admin/..., /api/held, /api/held/... */
bool web_admin_path(const char *path);
/* "web:USER" (log-safe, one word) for the log and the quarantine's events */
void web_admin_who(const char *user, char *out, size_t outsz);
/*
 * Answer an admin.c call, on loop 0 (service.c's do_api, after the
 * session, the CSRF token and the body are checked). body: the POST's
 * JSON object, NULL for a GET (not taken). Work on the quarantine goes to
 * the loop's worker pool; the job then holds env (env->release is set to
 * NULL), else the caller still releases it.
 */
void web_admin_handle(struct daemon_loop *loop, struct evhttp_request *req, const char *path,
		      struct evkeyvalq *q, struct json_t *body, struct web_env *env, const char *user);
/* service.c: answer j (taken) as JSON with the service's headers. */
void web_reply_json(struct evhttp_request *req, int status, struct json_t *j);

#endif
