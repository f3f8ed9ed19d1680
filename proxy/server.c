/*
 * server.c — threads, listeners, signals and the shared state.
 *
 * The main thread binds the listening sockets, starts the loop threads and
 * then only handles signals: SIGHUP builds a complete new server_state
 * (config, pipeline, user database, TLS context) aside and swaps it in only
 * if all of it is valid; SIGTERM/SIGINT stop accepting, let transactions in
 * flight finish (bounded by limits.timeout_shutdown) and exit.
 *
 * Listening sockets are shared by every loop (each loop has its own
 * evconnlistener on the same fd); the kernel wakes one or more loops and
 * the others see EAGAIN, which libevent ignores.
 */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <openssl/ssl.h>

#include "proxy/proxy.h"

/* ---------------------------------------------------------- shared state */

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
	if (st->cfg->tls_cert[0] != '\0') {
		st->ssl_ctx = tls_server_ctx_new(st->cfg->tls_cert, st->cfg->tls_key, error_r);
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
	userdb_close(&st->userdb);
	pipeline_unref(&st->pipeline);
	config_unref(&st->cfg);
	free(st);
}

struct server_state *
server_get_state(struct server *srv)
{
	struct server_state *st;

	pthread_mutex_lock(&srv->state_lock);
	st = server_state_ref(srv->state);
	pthread_mutex_unlock(&srv->state_lock);
	return st;
}

/* ---------------------------------------------------- connection counts */

struct conn_count {
	struct conn_count *next;
	long count;
	char addr[64];
};

bool
server_conn_acquire(struct server *srv, const char *addr, long per_client, long total,
		    const char **reason_r)
{
	struct conn_count *c;
	bool ok = false;

	pthread_mutex_lock(&srv->conn_lock);
	for (c = srv->conn_counts; c != NULL; c = c->next) {
		if (strcmp(c->addr, addr) == 0)
			break;
	}
	if (srv->conn_total >= total) {
		*reason_r = "Too many connections";
	} else if (c != NULL && c->count >= per_client) {
		*reason_r = "Too many connections from your host";
	} else {
		if (c == NULL) {
			c = xcalloc(1, sizeof(*c));
			str_copy(c->addr, addr, sizeof(c->addr));
			c->next = srv->conn_counts;
			srv->conn_counts = c;
		}
		c->count++;
		srv->conn_total++;
		ok = true;
	}
	pthread_mutex_unlock(&srv->conn_lock);
	return ok;
}

void
server_conn_release(struct server *srv, const char *addr)
{
	struct conn_count **cp, *c;

	pthread_mutex_lock(&srv->conn_lock);
	for (cp = &srv->conn_counts; (c = *cp) != NULL; cp = &c->next) {
		if (strcmp(c->addr, addr) == 0) {
			srv->conn_total--;
			if (--c->count == 0) {
				*cp = c->next;
				free(c);
			}
			break;
		}
	}
	pthread_mutex_unlock(&srv->conn_lock);
}

/* -------------------------------------------------------------- loops */

static void
loop_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
	       int salen, void *arg)
{
	struct loop *loop = arg;

	for (size_t i = 0; i < loop->srv->n_socks; i++) {
		if (loop->listeners[i] == lev) {
			session_accept(loop, fd, sa, loop->srv->socks[i].implicit_tls);
			return;
		}
	}
	evutil_closesocket(fd);
}

static void
loop_accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct loop *loop = arg;

	loop->accept_paused = false;
	if (loop->shutting_down)
		return;
	for (size_t i = 0; i < loop->srv->n_socks; i++) {
		if (loop->listeners[i] != NULL)
			evconnlistener_enable(loop->listeners[i]);
	}
}

/*
 * accept() failed. Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM) the listening socket stays readable, so a listener left on would
 * spin: pause this loop's listeners for a moment instead, and log at most
 * once per pause.
 */
static void
loop_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct loop *loop = arg;
	int err = EVUTIL_SOCKET_ERROR();
	static const struct timeval pause = { 0, 250000 };

	if (loop->accept_paused)
		return;
	log_msg(LOG_LEVEL_WARN, "smtp accept failed, pausing accepts for 250 ms: %s",
		evutil_socket_error_to_string(err));
	loop->accept_paused = true;
	for (size_t i = 0; i < loop->srv->n_socks; i++) {
		if (loop->listeners[i] != NULL)
			evconnlistener_disable(loop->listeners[i]);
	}
	event_base_once(loop->base, -1, EV_TIMEOUT, loop_accept_resume_cb, loop, &pause);
}

static void *
loop_main(void *arg)
{
	struct loop *loop = arg;

	event_base_loop(loop->base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

static void
loop_shutdown_cb(evutil_socket_t fd, short what, void *arg)
{
	struct loop *loop = arg;

	loop->shutting_down = true;
	for (size_t i = 0; i < loop->srv->n_socks; i++) {
		if (loop->listeners[i] != NULL) {
			evconnlistener_free(loop->listeners[i]);
			loop->listeners[i] = NULL;
		}
	}
	session_shutdown_loop(loop);
}

static void
loop_exit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct loop *loop = arg;

	event_base_loopbreak(loop->base);
}

/* ------------------------------------------------------------ signals */

struct main_ctx {
	struct server *srv;
	struct event_base *base;
	struct event *ev_term, *ev_int, *ev_hup, *ev_wait;
	struct timespec deadline;
	bool stopping;
};

static void
server_reload(struct server *srv)
{
	char *error = NULL;
	struct server_state *st = server_state_build(srv->config_path, &error);

	if (st == NULL) {
		log_msg(LOG_LEVEL_ERR, "reload failed, keeping the running configuration: %s", error);
		free(error);
		return;
	}
	log_set_level(st->cfg->log_level);
	pthread_mutex_lock(&srv->state_lock);
	struct server_state *old = srv->state;
	srv->state = st;
	pthread_mutex_unlock(&srv->state_lock);
	server_state_unref(&old);
	log_msg(LOG_LEVEL_INFO, "reloaded configuration from %s", srv->config_path);
}

static void
main_wait_cb(evutil_socket_t fd, short what, void *arg)
{
	struct main_ctx *m = arg;
	struct timespec now;
	int sessions = atomic_load(&m->srv->n_sessions);
	int jobs = atomic_load(&m->srv->n_jobs);

	clock_gettime(CLOCK_MONOTONIC, &now);
	if ((sessions == 0 && jobs == 0) || now.tv_sec >= m->deadline.tv_sec) {
		if (sessions != 0 || jobs != 0)
			log_msg(LOG_LEVEL_WARN, "shutdown: timeout with %d sessions and %d deliveries "
				"in flight (none of them acknowledged)", sessions, jobs);
		event_base_loopbreak(m->base);
	}
}

static void
main_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct main_ctx *m = arg;
	static const struct timeval now = { 0, 0 };
	static const struct timeval tick = { 0, 50000 };

	if (sig == SIGHUP) {
		server_reload(m->srv);
		return;
	}
	if (m->stopping)
		return;
	m->stopping = true;
	log_msg(LOG_LEVEL_INFO, "stopping on signal %d: finishing transactions in flight", (int)sig);
	for (unsigned i = 0; i < m->srv->n_loops; i++)
		event_base_once(m->srv->loops[i].base, -1, EV_TIMEOUT, loop_shutdown_cb,
				&m->srv->loops[i], &now);
	struct server_state *st = server_get_state(m->srv);
	clock_gettime(CLOCK_MONOTONIC, &m->deadline);
	m->deadline.tv_sec += st->cfg->limits.timeout_shutdown;
	server_state_unref(&st);
	m->ev_wait = event_new(m->base, -1, EV_PERSIST, main_wait_cb, m);
	event_add(m->ev_wait, &tick);
}

/* -------------------------------------------------------------- setup */

static int
server_bind(struct server *srv, const struct mx_config *cfg)
{
	srv->n_socks = cfg->n_listeners;
	srv->socks = xcalloc(srv->n_socks, sizeof(*srv->socks));
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		const struct listen_config *lc = &cfg->listeners[i];
		struct sockaddr_storage ss;
		socklen_t len;
		const char *err;

		if (net_parse_address(lc->address, &ss, &len, &err) < 0) {
			log_msg(LOG_LEVEL_ERR, "listen %s: %s: %s", lc->name, lc->address, err);
			return -1;
		}
		srv->socks[i].fd = net_listen(&ss, len, 512);
		if (srv->socks[i].fd < 0) {
			log_errno(LOG_LEVEL_ERR, "listen %s: cannot listen on %s", lc->name, lc->address);
			return -1;
		}
		srv->socks[i].implicit_tls = lc->implicit_tls;
		srv->socks[i].name = xstrdup(lc->name);
		srv->socks[i].address = xstrdup(lc->address);
		log_msg(LOG_LEVEL_INFO, "listening name=%s address=%s tls=%s", lc->name, lc->address,
			lc->implicit_tls ? "implicit" : cfg->tls_cert[0] != '\0' ? "starttls" : "none");
	}
	return 0;
}

static int
server_drop_privileges(const char *user)
{
	struct passwd *pw;

	if (user[0] == '\0')
		return 0;
	pw = getpwnam(user);
	if (pw == NULL) {
		log_msg(LOG_LEVEL_ERR, "user \"%s\" does not exist", user);
		return -1;
	}
	if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
	    setuid(pw->pw_uid) < 0) {
		log_errno(LOG_LEVEL_ERR, "cannot drop privileges to %s", user);
		return -1;
	}
	log_msg(LOG_LEVEL_INFO, "running as user=%s uid=%u", user, (unsigned)pw->pw_uid);
	return 0;
}

/* Create the directories the daemon writes to, so a fresh install works;
 * before dropping privileges, and handed to the run user. */
static int
server_make_dirs(const struct mx_config *cfg)
{
	const char *const dirs[] = { cfg->mail_root, cfg->spool_dir, cfg->state_dir,
				     cfg->quarantine_dir };
	struct passwd *pw = cfg->run_user[0] != '\0' ? getpwnam(cfg->run_user) : NULL;

	for (size_t i = 0; i < N_ELEMENTS(dirs); i++) {
		if (dirs[i][0] == '\0')
			continue;
		if (fs_mkdir_p(dirs[i], 0750) < 0) {
			log_errno(LOG_LEVEL_ERR, "cannot create directory %s", dirs[i]);
			return -1;
		}
		if (pw != NULL && chown(dirs[i], pw->pw_uid, pw->pw_gid) < 0) {
			log_errno(LOG_LEVEL_ERR, "cannot hand directory %s to user %s", dirs[i],
				  cfg->run_user);
			return -1;
		}
	}
	return 0;
}

/*
 * After dropping privileges: what a reload or a user lookup must read later
 * has to be readable now, or the first reload (and every RCPT after the
 * passwd-file changes) would fail long after start. Refuse to start instead.
 */
static int
server_check_readable(const struct mx_config *cfg)
{
	const char *const files[] = { cfg->path, cfg->passwd_file, cfg->tls_cert, cfg->tls_key };

	for (size_t i = 0; i < N_ELEMENTS(files); i++) {
		if (files[i][0] != '\0' && access(files[i], R_OK) < 0 && errno != ENOENT) {
			log_errno(LOG_LEVEL_ERR, "%s is not readable as user \"%s\" (needed for "
				  "reloads and user lookups)", files[i], cfg->run_user);
			return -1;
		}
	}
	return 0;
}

static void
server_write_pidfile(const struct mx_config *cfg)
{
	char *path;
	FILE *f;

	if (cfg->state_dir[0] == '\0')
		return;
	path = xasprintf("%s/mxguard.pid", cfg->state_dir);
	f = fopen(path, "w");
	if (f != NULL) {
		fprintf(f, "%d\n", (int)getpid());
		fclose(f);
	}
	free(path);
}

int
server_run(const char *config_path, bool foreground)
{
	struct server srv;
	struct main_ctx m;
	char *error = NULL;
	unsigned n_loops;

	memset(&srv, 0, sizeof(srv));
	memset(&m, 0, sizeof(m));
	srv.config_path = xstrdup(config_path);
	srv.foreground = foreground;
	pthread_mutex_init(&srv.state_lock, NULL);
	pthread_mutex_init(&srv.conn_lock, NULL);

	if (evthread_use_pthreads() != 0) {
		log_msg(LOG_LEVEL_ERR, "libevent threading support missing");
		return 1;
	}
	srv.state = server_state_build(config_path, &error);
	if (srv.state == NULL) {
		log_msg(LOG_LEVEL_ERR, "%s", error);
		free(error);
		return 1;
	}
	const struct mx_config *cfg = srv.state->cfg;
	log_open("mxguard", foreground, cfg->log_level);
	signal(SIGPIPE, SIG_IGN);

	if (server_bind(&srv, cfg) < 0)
		return 1;
	if (server_make_dirs(cfg) < 0)
		return 1;
	if (server_drop_privileges(cfg->run_user) < 0)
		return 1;
	if (cfg->run_user[0] != '\0' && server_check_readable(cfg) < 0)
		return 1;
	server_write_pidfile(cfg);

	srv.workers = workers_create((unsigned)cfg->workers, 0, 0);
	n_loops = (unsigned)cfg->threads;
	if (n_loops == 0) {
		long cores = sysconf(_SC_NPROCESSORS_ONLN);
		n_loops = cores > 0 ? (unsigned)cores : 1;
	}
	srv.n_loops = n_loops;
	srv.loops = xcalloc(n_loops, sizeof(*srv.loops));
	for (unsigned i = 0; i < n_loops; i++) {
		struct loop *loop = &srv.loops[i];
		loop->srv = &srv;
		loop->index = i;
		loop->base = event_base_new();
		if (loop->base == NULL) {
			log_msg(LOG_LEVEL_ERR, "event_base_new failed");
			return 1;
		}
		loop->listeners = xcalloc(srv.n_socks, sizeof(*loop->listeners));
		for (size_t j = 0; j < srv.n_socks; j++) {
			loop->listeners[j] = evconnlistener_new(loop->base, loop_accept_cb, loop,
								LEV_OPT_CLOSE_ON_EXEC, -1,
								srv.socks[j].fd);
			if (loop->listeners[j] == NULL) {
				log_msg(LOG_LEVEL_ERR, "evconnlistener_new failed");
				return 1;
			}
			evconnlistener_set_error_cb(loop->listeners[j], loop_accept_error_cb);
		}
	}
	for (unsigned i = 0; i < n_loops; i++) {
		if (pthread_create(&srv.loops[i].thread, NULL, loop_main, &srv.loops[i]) != 0) {
			log_errno(LOG_LEVEL_ERR, "pthread_create");
			return 1;
		}
	}
	log_msg(LOG_LEVEL_INFO, "started version=%s threads=%u workers=%ld config=%s",
		PACKAGE_VERSION, n_loops, cfg->workers, config_path);

	m.srv = &srv;
	m.base = event_base_new();
	m.ev_term = evsignal_new(m.base, SIGTERM, main_signal_cb, &m);
	m.ev_int = evsignal_new(m.base, SIGINT, main_signal_cb, &m);
	m.ev_hup = evsignal_new(m.base, SIGHUP, main_signal_cb, &m);
	event_add(m.ev_term, NULL);
	event_add(m.ev_int, NULL);
	event_add(m.ev_hup, NULL);
	event_base_loop(m.base, EVLOOP_NO_EXIT_ON_EMPTY);

	/* sessions are done (or the deadline passed): stop the loops */
	static const struct timeval now = { 0, 0 };
	bool clean = atomic_load(&srv.n_sessions) == 0 && atomic_load(&srv.n_jobs) == 0;
	for (unsigned i = 0; i < n_loops; i++)
		event_base_once(srv.loops[i].base, -1, EV_TIMEOUT, loop_exit_cb, &srv.loops[i], &now);
	for (unsigned i = 0; i < n_loops; i++)
		pthread_join(srv.loops[i].thread, NULL);
	if (!clean) {
		/* deliveries still running reference session memory: leave without
		 * tearing anything down; nothing unacknowledged is lost by this */
		log_msg(LOG_LEVEL_INFO, "stopped (forced)");
		_exit(0);
	}
	workers_destroy(&srv.workers);
	for (unsigned i = 0; i < n_loops; i++) {
		free(srv.loops[i].listeners);
		event_base_free(srv.loops[i].base);
	}
	for (size_t j = 0; j < srv.n_socks; j++) {
		close(srv.socks[j].fd);
		free(srv.socks[j].name);
		free(srv.socks[j].address);
	}
	free(srv.socks);
	free(srv.loops);
	event_free(m.ev_term);
	event_free(m.ev_int);
	event_free(m.ev_hup);
	if (m.ev_wait != NULL)
		event_free(m.ev_wait);
	event_base_free(m.base);
	server_state_unref(&srv.state);
	free(srv.config_path);
	log_msg(LOG_LEVEL_INFO, "stopped");
	return 0;
}
