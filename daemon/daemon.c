/*
 * daemon.c — loop threads, listeners, signals, reload and the shared state.
 *
 * Start-up, in this order so that every error is seen on the terminal and
 * nothing is half-started: build the state (config, and whatever the
 * program puts in it), check the listeners name known services, create the
 * data directories that are missing (only those are handed to the run
 * user; existing ones with the wrong owner are an error), lock the pid
 * file, bind every listener once per loop (SO_REUSEPORT), drop privileges,
 * check that what reloads will read is readable, detach, write the pid,
 * start the worker pool and the loops.
 *
 * The main thread then only handles signals: SIGHUP builds a complete new
 * state aside and pushes it to every loop (changes that need a restart —
 * listeners, threads, workers — are logged loudly as not applied);
 * SIGTERM/SIGINT stop accepting, let the services finish what is in flight
 * (bounded by limits.timeout_shutdown) and exit.
 */
#include "config.h"

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "daemon/daemon-internal.h"
#include "lib/metrics.h"

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* -------------------------------------------------------------- systemd */
/* Tell the service manager (Type=notify) what happens: a no-op without
 * libsystemd or outside systemd (no NOTIFY_SOCKET). */
static void ATTR_PRINTF(1, 2)
daemon_notify(const char *fmt, ...)
{
#ifdef HAVE_SYSTEMD
	va_list ap;
	char *text;

	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	va_start(ap, fmt);
	if (vasprintf(&text, fmt, ap) < 0)
		text = NULL;
	va_end(ap);
	if (text != NULL) {
		(void)sd_notify(0, text);
		free(text);
	}
#else
	(void)fmt;
#endif
}

/* ---------------------------------------------------------- loop states */

struct event_base *daemon_loop_base(const struct daemon_loop *loop) { return loop->base; }
unsigned daemon_loop_index(const struct daemon_loop *loop) { return loop->index; }
struct workers *daemon_loop_workers(const struct daemon_loop *loop) { return loop->core->workers; }
struct server_state *
daemon_loop_state(const struct daemon_loop *loop)
{
	return loop->current != NULL ? loop->current->st : NULL;
}
/* the core's newest state: what serve_start reads (the loop has none yet) */
struct server_state *
daemon_loop_core_state(const struct daemon_loop *loop)
{
	return loop->core->state;
}

static void
loop_push_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon_loop *loop = arg;
	struct server_state *st;

	pthread_mutex_lock(&loop->push_lock);
	st = loop->pushed;
	loop->pushed = NULL;
	pthread_mutex_unlock(&loop->push_lock);
	if (st != NULL)
		(void)daemon_loop_install(loop, st);
}

/* From the main thread: hand st to a loop (one reference, taken here). */
static void
loop_push(struct daemon_loop *loop, struct server_state *st)
{
	const struct daemon_app *app = loop->core->app;
	struct server_state *prev;

	st = app->state_ref(st);
	pthread_mutex_lock(&loop->push_lock);
	prev = loop->pushed; /* two reloads before the loop ran: keep the newest */
	loop->pushed = st;
	pthread_mutex_unlock(&loop->push_lock);
	if (prev != NULL)
		app->state_unref(&prev);
	event_active(loop->ev_push, EV_TIMEOUT, 0);
}

/* ------------------------------------------------------------ accepting */

static void
loop_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
	       int salen, void *arg)
{
	struct daemon_loop *loop = arg;
	struct daemon *core = loop->core;

	for (size_t i = 0; i < core->n_listeners; i++) {
		if (loop->evl[i] == lev) {
			conn_accepted(conn_new(loop, &core->listeners[i], fd, sa));
			return;
		}
	}
	evutil_closesocket(fd);
}

static void
loop_accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon_loop *loop = arg;

	loop->accept_paused = false;
	if (loop->shutting_down)
		return;
	for (size_t i = 0; i < loop->core->n_listeners; i++) {
		if (loop->evl[i] != NULL)
			evconnlistener_enable(loop->evl[i]);
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
	struct daemon_loop *loop = arg;
	int err = EVUTIL_SOCKET_ERROR();
	static const struct timeval pause = { 0, 250000 };

	if (loop->accept_paused)
		return;
	log_msg(LOG_LEVEL_WARN, "accept failed, pausing accepts for 250 ms: %s",
		evutil_socket_error_to_string(err));
	loop->accept_paused = true;
	for (size_t i = 0; i < loop->core->n_listeners; i++) {
		if (loop->evl[i] != NULL)
			evconnlistener_disable(loop->evl[i]);
	}
	event_base_once(loop->base, -1, EV_TIMEOUT, loop_accept_resume_cb, loop, &pause);
}

static void
loop_close_listeners(struct daemon_loop *loop)
{
	for (size_t i = 0; i < loop->core->n_listeners; i++) {
		if (loop->evl[i] != NULL) {
			evconnlistener_free(loop->evl[i]); /* closes this loop's socket */
			loop->evl[i] = NULL;
			loop->core->listeners[i].fds[loop->index] = -1;
		}
		if (loop->serve_ctx != NULL && loop->serve_ctx[i] != NULL) {
			/* the service closes the socket it was handed */
			loop->core->listeners[i].service->serve_stop(loop, loop->serve_ctx[i]);
			loop->serve_ctx[i] = NULL;
			loop->core->listeners[i].fds[loop->index] = -1;
		}
	}
}

static void
loop_shutdown_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon_loop *loop = arg;

	loop->shutting_down = true;
	loop_close_listeners(loop);
	conn_shutdown_all(loop);
}

static void
loop_exit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon_loop *loop = arg;

	if (loop->conns != NULL) {
		/* the shutdown timeout passed: every session still logs its end */
		loop->forced = true;
		conn_drop_all(loop, "shutdown_timeout");
	}
	/* a state pushed too late, then every state this loop holds — but
	 * one still held by a session of a service that owns its socket
	 * (daemon_hold, only after the shutdown deadline): a phase may still
	 * be pending on it, so it is left to the process's exit */
	loop_push_cb(-1, 0, loop);
	loop->current = NULL;
	for (struct loop_state *ls = loop->states, *next; ls != NULL; ls = next) {
		next = ls->next;
		daemon_loop_state_drop(loop, ls); /* only when nobody uses it */
	}
	event_base_loopbreak(loop->base);
}

static void *
loop_main(void *arg)
{
	struct daemon_loop *loop = arg;
	struct daemon *core = loop->core;
	/* the first state starts on this thread, like every later one, so
	 * per-loop resources are made and freed on the loop that owns them */
	bool ok = daemon_loop_install(loop, core->app->state_ref(core->state)) == 0;

	pthread_mutex_lock(&core->start_lock);
	core->n_started++;
	core->start_failed = core->start_failed || !ok;
	pthread_cond_signal(&core->start_cond);
	pthread_mutex_unlock(&core->start_lock);
	if (ok)
		event_base_loop(loop->base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

/* ------------------------------------------------------------ signals */

struct main_ctx {
	struct daemon *core;
	struct event_base *base;
	struct event *ev_term, *ev_int, *ev_hup, *ev_wait;
	struct timespec deadline;
	bool stopping;
};

static const struct service *
daemon_find_service(const struct daemon_app *app, const char *name)
{
	for (size_t i = 0; i < app->n_services; i++) {
		if (strcmp(app->services[i].name, name) == 0)
			return &app->services[i];
	}
	return NULL;
}

/* Every listener must name a service this program has. */
static int
daemon_check_services(const struct daemon_app *app, const struct mx_config *cfg, char **error_r)
{
	const struct daemon_settings *ds = daemon_settings(cfg);

	for (size_t i = 0; i < ds->n_listeners; i++) {
		const struct listen_config *lc = &ds->listeners[i];
		if (daemon_find_service(app, lc->protocol) == NULL) {
			char names[256] = "";
			for (size_t j = 0; j < app->n_services; j++) {
				size_t used = strlen(names);
				snprintf(names + used, sizeof(names) - used, "%s%s", j ? ", " : "",
					 app->services[j].name);
			}
			*error_r = xasprintf("%s:%d: listen %s: protocol = \"%s\": no such service "
					     "(this build has: %s)", cfg->path, lc->line, lc->name,
					     lc->protocol, names);
			return -1;
		}
		if (strncmp(lc->address, "unix:", 5) == 0 &&
		    daemon_find_service(app, lc->protocol)->start == NULL) {
			*error_r = xasprintf("%s:%d: listen %s: address = \"%s\": protocol = \"%s\" "
					     "listens on host:port only", cfg->path, lc->line, lc->name,
					     lc->address, lc->protocol);
			return -1;
		}
		/* a service that serves its socket itself has no conn layer */
		if (daemon_find_service(app, lc->protocol)->serve_start != NULL &&
		    lc->proxy_protocol != LISTEN_PROXY_OFF) {
			*error_r = xasprintf("%s:%d: listen %s: protocol = \"%s\" does not take "
					     "proxy_protocol", cfg->path, lc->line, lc->name, lc->protocol);
			return -1;
		}
	}
	return 0;
}

static struct server_state *
daemon_build_state(const struct daemon_app *app, const char *path, char **error_r)
{
	struct server_state *st = app->state_build(path, error_r);

	if (st != NULL && daemon_check_services(app, app->state_config(st), error_r) < 0)
		app->state_unref(&st);
	return st;
}

static int daemon_make_dirs(const struct daemon_app *app, const struct server_state *st,
			    bool at_start, bool check_only);
static void daemon_stop_owned(struct daemon *core);

/* What a reload cannot change in a running process, said out loud. */
static void
daemon_log_restart_changes(struct daemon *core, const struct mx_config *old_cfg,
			   const struct mx_config *new_cfg)
{
	const struct daemon_settings *old = daemon_settings(old_cfg), *new = daemon_settings(new_cfg);
	bool same = old->n_listeners == new->n_listeners;

	for (size_t i = 0; same && i < old->n_listeners; i++) {
		const struct listen_config *a = &old->listeners[i], *b = &new->listeners[i];
		same = strcmp(a->name, b->name) == 0 && strcmp(a->address, b->address) == 0 &&
		       strcmp(a->protocol, b->protocol) == 0 && a->implicit_tls == b->implicit_tls &&
		       a->proxy_protocol == b->proxy_protocol && a->proxy_timeout == b->proxy_timeout &&
		       a->n_proxy_trusted == b->n_proxy_trusted;
		for (size_t k = 0; same && k < a->n_proxy_trusted; k++)
			same = strcmp(a->proxy_trusted[k], b->proxy_trusted[k]) == 0;
	}
	if (!same)
		log_msg(LOG_LEVEL_WARN, "reload: the listen sections changed; NOT applied until a "
			"restart (still listening as started)");
	if (old->threads != new->threads)
		log_msg(LOG_LEVEL_WARN, "reload: threads = %ld -> %ld NOT applied until a restart "
			"(running %u loop threads)", old->threads, new->threads, core->n_loops);
	if (old->workers != new->workers)
		log_msg(LOG_LEVEL_WARN, "reload: workers = %ld -> %ld NOT applied until a restart",
			old->workers, new->workers);
	if (strcmp(old->run_user, new->run_user) != 0)
		log_msg(LOG_LEVEL_WARN, "reload: user = \"%s\" -> \"%s\" NOT applied until a restart",
			old->run_user, new->run_user);
	if (strcmp(old->state_dir, new->state_dir) != 0)
		log_msg(LOG_LEVEL_WARN, "reload: state_dir NOT applied until a restart (pid file "
			"stays in %s)", old->state_dir);
}

static void
daemon_reload(struct daemon *core)
{
	const struct daemon_app *app = core->app;
	char *error = NULL;
	struct server_state *st;

	daemon_notify("RELOADING=1\nSTATUS=reloading %s", core->config_path);
	st = daemon_build_state(app, core->config_path, &error);
	if (st == NULL) {
		log_msg(LOG_LEVEL_ERR, "reload failed, keeping the running configuration: %s", error);
		metrics_add_label(METRIC_CONFIG_RELOADS, "failed", 1);
		/* one line: a newline would start another assignment */
		if (error != NULL)
			error[strcspn(error, "\n")] = '\0';
		daemon_notify("READY=1\nSTATUS=serving; the last reload failed: %.200s",
			      error != NULL ? error : "?");
		free(error);
		return;
	}
	const struct mx_config *cfg = app->state_config(st);
	if (daemon_make_dirs(app, st, false, false) < 0) {
		log_msg(LOG_LEVEL_ERR, "reload failed, keeping the running configuration");
		metrics_add_label(METRIC_CONFIG_RELOADS, "failed", 1);
		daemon_notify("READY=1\nSTATUS=serving; the last reload failed (directories)");
		app->state_unref(&st);
		return;
	}
	log_set_level((enum log_level)daemon_settings(cfg)->log_level);
	pthread_mutex_lock(&core->state_lock);
	struct server_state *old = core->state;
	core->state = st;
	pthread_mutex_unlock(&core->state_lock);
	daemon_log_restart_changes(core, app->state_config(old), cfg);
	for (unsigned i = 0; i < core->n_loops; i++)
		loop_push(&core->loops[i], st);
	app->state_unref(&old);
	metrics_add_label(METRIC_CONFIG_RELOADS, "ok", 1);
	metrics_set(METRIC_CONFIG_LOAD_TIME, (int64_t)time(NULL));
	log_msg(LOG_LEVEL_INFO, "reloaded configuration from %s", core->config_path);
	daemon_notify("READY=1\nSTATUS=serving (reloaded %s)", core->config_path);
}

static void
main_wait_cb(evutil_socket_t fd, short what, void *arg)
{
	struct main_ctx *m = arg;
	struct timespec now;
	int conns = atomic_load(&m->core->n_conns);
	/* the pool counts every job until its completion ran on its loop */
	size_t jobs = workers_pending(m->core->workers);

	clock_gettime(CLOCK_MONOTONIC, &now);
	if ((conns == 0 && jobs == 0) || now.tv_sec >= m->deadline.tv_sec) {
		if (conns != 0 || jobs != 0)
			log_msg(LOG_LEVEL_WARN, "shutdown: timeout with %d sessions and %zu jobs "
				"in flight (none of them acknowledged)", conns, jobs);
		event_base_loopbreak(m->base);
	}
}

static void
main_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct main_ctx *m = arg;
	struct daemon *core = m->core;
	static const struct timeval tick = { 0, 50000 };

	if (sig == SIGHUP) {
		daemon_reload(core);
		return;
	}
	if (m->stopping)
		return;
	m->stopping = true;
	log_msg(LOG_LEVEL_INFO, "stopping on signal %d: finishing transactions in flight", (int)sig);
	daemon_notify("STOPPING=1\nSTATUS=stopping: finishing transactions in flight");
	daemon_stop_owned(core);
	for (unsigned i = 0; i < core->n_loops; i++)
		event_active(core->loops[i].ev_shutdown, EV_TIMEOUT, 0);
	pthread_mutex_lock(&core->state_lock);
	long timeout = daemon_settings(core->app->state_config(core->state))->timeout_shutdown;
	pthread_mutex_unlock(&core->state_lock);
	clock_gettime(CLOCK_MONOTONIC, &m->deadline);
	m->deadline.tv_sec += timeout;
	m->ev_wait = event_new(m->base, -1, EV_PERSIST, main_wait_cb, m);
	event_add(m->ev_wait, &tick);
}

/* ------------------------------------- services that own their socket */

unsigned daemon_n_loops(const struct daemon *core) { return core->n_loops; }

/* Whether daemon_post may still reach the loops: process-wide, not in the
 * core, because a thread of such a service may post while daemon_run()
 * returns (its core is on daemon_run's stack). Closed for good before the
 * loops stop. */
static pthread_mutex_t post_lock = PTHREAD_MUTEX_INITIALIZER;
static bool posts_closed;

static void
daemon_close_posts(void)
{
	pthread_mutex_lock(&post_lock);
	posts_closed = true;
	pthread_mutex_unlock(&post_lock);
}

struct daemon_post {
	struct daemon_loop *loop;
	daemon_post_fn *fn;
	void *arg;
};

static void
daemon_post_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon_post p = *(struct daemon_post *)arg;

	free(arg);
	p.fn(p.loop, p.arg);
}

int
daemon_post(struct daemon *core, unsigned index, daemon_post_fn *fn, void *arg)
{
	static const struct timeval now = { 0, 0 };
	struct daemon_post *p = xcalloc(1, sizeof(*p));
	int ret = -1;

	p->fn = fn;
	p->arg = arg;
	/* under the lock: the core and its loops' bases are not freed while
	 * we post */
	pthread_mutex_lock(&post_lock);
	if (!posts_closed) {
		p->loop = &core->loops[index % core->n_loops];
		if (p->loop->base != NULL &&
		    event_base_once(p->loop->base, -1, EV_TIMEOUT, daemon_post_cb, p, &now) == 0)
			ret = 0;
	}
	pthread_mutex_unlock(&post_lock);
	if (ret < 0)
		free(p);
	return ret;
}

/* After the loops run: each listener of a service that owns its socket. */
static int
daemon_start_owned(struct daemon *core, const struct mx_config *cfg)
{
	const struct daemon_settings *ds = daemon_settings(cfg);
	char *error = NULL;

	core->owned_started = true;
	for (size_t i = 0; i < core->n_listeners && i < ds->n_listeners; i++) {
		const struct service *svc = core->listeners[i].service;
		if (svc->start == NULL)
			continue;
		if (svc->start(core, &ds->listeners[i], &error) < 0) {
			log_msg(LOG_LEVEL_ERR, "listen %s: %s", ds->listeners[i].name, error);
			free(error);
			return -1;
		}
	}
	return 0;
}

/* Once per service, at the stop: no new sessions. */
static void
daemon_stop_owned(struct daemon *core)
{
	if (!core->owned_started)
		return;
	core->owned_started = false;
	for (size_t i = 0; i < core->n_listeners; i++) {
		const struct service *svc = core->listeners[i].service;
		bool seen = false;
		for (size_t j = 0; j < i; j++)
			seen = seen || core->listeners[j].service == svc;
		if (svc->stop != NULL && !seen)
			svc->stop();
	}
}

/* -------------------------------------------------------------- setup */

/* Bind every listener once per loop. */
static int
daemon_bind(struct daemon *core, const struct mx_config *cfg)
{
	const struct daemon_settings *ds = daemon_settings(cfg);

	core->n_listeners = ds->n_listeners;
	core->listeners = xcalloc(core->n_listeners, sizeof(*core->listeners));
	for (size_t i = 0; i < ds->n_listeners; i++) {
		const struct listen_config *lc = &ds->listeners[i];
		struct daemon_listener *l = &core->listeners[i];
		struct sockaddr_storage ss;
		socklen_t len;
		const char *err;

		l->name = xstrdup(lc->name);
		l->address = xstrdup(lc->address);
		l->implicit_tls = lc->implicit_tls;
		static const unsigned allowed[] = {
			[LISTEN_PROXY_OFF] = 0, [LISTEN_PROXY_V1] = PROXY_ALLOW_V1,
			[LISTEN_PROXY_V2] = PROXY_ALLOW_V2,
			[LISTEN_PROXY_ANY] = PROXY_ALLOW_V1 | PROXY_ALLOW_V2,
		};
		l->proxy_allowed = allowed[lc->proxy_protocol];
		l->proxy_timeout = lc->proxy_timeout;
		l->n_proxy_trusted = lc->n_proxy_trusted;
		l->proxy_trusted = xcalloc(lc->n_proxy_trusted + 1, sizeof(*l->proxy_trusted));
		for (size_t k = 0; k < lc->n_proxy_trusted; k++)
			(void)net_cidr_parse(lc->proxy_trusted[k], &l->proxy_trusted[k], &err);
		l->service = daemon_find_service(core->app, lc->protocol);
		l->fds = xcalloc(core->n_loops, sizeof(*l->fds));
		for (unsigned j = 0; j < core->n_loops; j++)
			l->fds[j] = -1;
		if (l->service->start != NULL)
			continue; /* the service binds it itself (daemon_start_owned) */
		if (net_parse_address(lc->address, &ss, &len, &err) < 0) {
			log_msg(LOG_LEVEL_ERR, "listen %s: %s: %s", lc->name, lc->address, err);
			return -1;
		}
		for (unsigned j = 0; j < core->n_loops; j++) {
			if (j > 0 && l->service->serve_start != NULL && l->service->serve_one_loop)
				break;
			l->fds[j] = net_listen(&ss, len, 512, true);
			if (l->fds[j] < 0) {
				log_errno(LOG_LEVEL_ERR, "listen %s: cannot listen on %s", lc->name,
					  lc->address);
				return -1;
			}
		}
		log_msg(LOG_LEVEL_INFO, "listening name=%s protocol=%s address=%s tls=%s%s%s", lc->name,
			lc->protocol, lc->address,
			lc->implicit_tls ? "implicit" : ds->tls_cert[0] != '\0' &&
			l->service->serve_start == NULL ? "starttls" : "none",
			lc->proxy_protocol != LISTEN_PROXY_OFF ? " proxy_protocol=" : "",
			lc->proxy_protocol == LISTEN_PROXY_V1 ? "v1" : lc->proxy_protocol == LISTEN_PROXY_V2 ?
			"v2" : lc->proxy_protocol == LISTEN_PROXY_ANY ? "any" : "");
	}
	return 0;
}

static int
daemon_drop_privileges(const char *user)
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

/*
 * mkdir -p that hands every directory it creates (and only those) to the
 * run user. An existing directory is never changed.
 */
static int
daemon_mkdir_owned(const char *path, const struct passwd *pw)
{
	char *p = xstrdup(path);
	int ret = 0;

	for (char *s = p + 1;; s++) {
		bool last = *s == '\0';
		if (*s != '/' && !last)
			continue;
		*s = '\0';
		if (mkdir(p, 0750) == 0) {
			if (pw != NULL && chown(p, pw->pw_uid, pw->pw_gid) < 0) {
				log_errno(LOG_LEVEL_ERR, "cannot hand directory %s to user %s", p,
					  pw->pw_name);
				ret = -1;
				break;
			}
		} else if (errno != EEXIST) {
			log_errno(LOG_LEVEL_ERR, "cannot create directory %s", p);
			ret = -1;
			break;
		}
		if (last)
			break;
		*s = '/';
	}
	free(p);
	return ret;
}

/*
 * The directories the daemon writes to. Missing ones are created (at
 * start as root and handed to the run user; at a reload as the run user).
 * An existing one must belong to the run user: a spool_dir of /var/tmp is
 * refused, not taken over. One that others can read gets a warning.
 * check_only (`-t`) creates nothing.
 */
static int
daemon_make_dirs(const struct daemon_app *app, const struct server_state *state, bool at_start,
		 bool check_only)
{
	const struct mx_config *cfg = app->state_config(state);
	const struct daemon_settings *ds = daemon_settings(cfg);
	const struct daemon_path *theirs = app->state_dirs != NULL ? app->state_dirs(state) : NULL;
	struct daemon_path *dirs;
	size_t n_dirs = 0;
	struct passwd *pw = NULL;
	int ret = 0;

	if (ds->run_user[0] != '\0') {
		pw = getpwnam(ds->run_user);
		if (pw == NULL) {
			log_msg(LOG_LEVEL_ERR, "%s: user = \"%s\": no such user", cfg->path, ds->run_user);
			return -1;
		}
	}
	/* the program's directories, and the core's own state_dir */
	while (theirs != NULL && theirs[n_dirs].setting != NULL)
		n_dirs++;
	dirs = xcalloc(n_dirs + 1, sizeof(*dirs));
	if (n_dirs > 0)
		memcpy(dirs, theirs, n_dirs * sizeof(*dirs));
	dirs[n_dirs++] = (struct daemon_path){ "state_dir", ds->state_dir };
	for (size_t i = 0; i < n_dirs; i++) {
		struct stat st;

		if (dirs[i].path[0] == '\0')
			continue;
		if (stat(dirs[i].path, &st) < 0) {
			if (errno != ENOENT) {
				log_errno(LOG_LEVEL_ERR, "%s %s", dirs[i].setting, dirs[i].path);
				ret = -1;
			} else if (!check_only &&
				   daemon_mkdir_owned(dirs[i].path, at_start ? pw : NULL) < 0) {
				ret = -1;
			}
			continue;
		}
		if (!S_ISDIR(st.st_mode)) {
			log_msg(LOG_LEVEL_ERR, "%s %s is not a directory", dirs[i].setting, dirs[i].path);
			ret = -1;
			continue;
		}
		uid_t want = pw != NULL ? pw->pw_uid : geteuid();
		if (st.st_uid != want) {
			log_msg(LOG_LEVEL_ERR, "%s %s belongs to uid %u, not to %s (uid %u): chown it, or "
				"choose a directory of its own", dirs[i].setting, dirs[i].path,
				(unsigned)st.st_uid, pw != NULL ? pw->pw_name : "the daemon's user",
				(unsigned)want);
			ret = -1;
		} else if (st.st_mode & S_IWOTH) {
			log_msg(LOG_LEVEL_ERR, "%s %s is writable by everyone (mode %04o): chmod o-w",
				dirs[i].setting, dirs[i].path, (unsigned)(st.st_mode & 07777));
			ret = -1;
		} else if (st.st_mode & S_IROTH) {
			log_msg(LOG_LEVEL_WARN, "%s %s is readable by everyone (mode %04o); mail is "
				"private: chmod o-rwx", dirs[i].setting, dirs[i].path,
				(unsigned)(st.st_mode & 07777));
		}
	}
	free(dirs);
	return ret;
}

/*
 * What a reload or a user lookup reads later has to be readable by the run
 * user now, or the first reload (and every RCPT after the passwd-file
 * changes) would fail long after start. Run after dropping privileges.
 */
static int
daemon_check_readable(const struct daemon_app *app, const struct server_state *state)
{
	const struct mx_config *cfg = app->state_config(state);
	const struct daemon_settings *ds = daemon_settings(cfg);
	const struct daemon_path *theirs = app->state_files != NULL ? app->state_files(state) : NULL;
	const char *const own[] = { cfg->path, ds->tls_cert, ds->tls_key };
	int ret = 0;

	for (size_t i = 0; i < N_ELEMENTS(own) || (theirs != NULL && theirs->setting != NULL); i++) {
		const char *file = i < N_ELEMENTS(own) ? own[i] : (theirs++)->path;
		if (file[0] != '\0' && access(file, R_OK) < 0 && errno != ENOENT) {
			log_errno(LOG_LEVEL_ERR, "%s is not readable as user \"%s\" (needed for "
				  "reloads and user lookups)", file, ds->run_user);
			ret = -1;
		}
	}
	return ret;
}

/* `-t` as root with a run user: the readability check in a child that has
 * dropped privileges like the daemon will. */
static int
daemon_check_readable_as_user(const struct daemon_app *app, const struct server_state *state)
{
	const struct daemon_settings *ds = daemon_settings(app->state_config(state));
	pid_t pid;
	int status;

	if (ds->run_user[0] == '\0' || geteuid() != 0)
		return 0;
	pid = fork();
	if (pid < 0) {
		log_errno(LOG_LEVEL_ERR, "fork");
		return -1;
	}
	if (pid == 0) {
		struct passwd *pw = getpwnam(ds->run_user);
		if (pw == NULL || initgroups(pw->pw_name, pw->pw_gid) < 0 ||
		    setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0)
			_exit(2);
		_exit(daemon_check_readable(app, state) < 0 ? 1 : 0);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return -1;
	}
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* The pid file is locked for the life of the process: a second daemon on
 * the same state_dir refuses to start (SO_REUSEPORT would otherwise let it
 * share our ports). Returns the locked fd, -1 on error, -2 without one. */
static int
daemon_lock_pidfile(const struct daemon_settings *ds, char **path_r)
{
	char *path;
	int fd;

	*path_r = NULL;
	if (ds->state_dir[0] == '\0')
		return -2;
	path = xasprintf("%s/mxguard.pid", ds->state_dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		log_errno(LOG_LEVEL_ERR, "cannot open pid file %s", path);
		free(path);
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		char buf[32] = "";
		ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
		buf[n > 0 ? n : 0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		log_msg(LOG_LEVEL_ERR, "another mxguard is running with state_dir %s (pid %s)",
			ds->state_dir, buf[0] ? buf : "?");
		close(fd);
		free(path);
		return -1;
	}
	*path_r = path;
	return fd;
}

static void
daemon_write_pid(int fd)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());

	if (fd < 0)
		return;
	if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n)
		log_errno(LOG_LEVEL_WARN, "cannot write the pid file");
}

/* Root with no user to drop to serves every client as root: refused
 * unless the config says run_as_root = true. */
static int
daemon_refuse_root(const struct mx_config *cfg)
{
	const struct daemon_settings *ds = daemon_settings(cfg);

	if (geteuid() != 0 || ds->run_user[0] != '\0' || ds->run_as_root)
		return 0;
	log_msg(LOG_LEVEL_ERR, "%s: started as root with user = \"\": refusing to serve as root; "
		"set user to an unprivileged user (mxguard binds its ports first), or "
		"run_as_root = true", cfg->path);
	return -1;
}

int
daemon_check(const struct daemon_app *app, const char *config_path)
{
	char *error = NULL;
	struct server_state *st = daemon_build_state(app, config_path, &error);
	int ret = 0;

	if (st == NULL) {
		fprintf(stderr, "%s\n", error);
		free(error);
		return 1;
	}
	const struct daemon_settings *ds = daemon_settings(app->state_config(st));
	/* the same checks start-up makes, short of binding and creating */
	if (daemon_refuse_root(app->state_config(st)) < 0 || daemon_make_dirs(app, st, true, true) < 0 ||
	    daemon_check_readable_as_user(app, st) < 0)
		ret = 1;
	if (ret == 0) {
		char *more = app->state_summary != NULL ? app->state_summary(st) : NULL;
		printf("%s: ok (%zu listener(s)%s%s)\n", config_path, ds->n_listeners,
		       more != NULL ? ", " : "", more != NULL ? more : "");
		free(more);
	}
	app->state_unref(&st);
	return ret;
}

static int
daemon_start_loops(struct daemon *core)
{
	for (unsigned i = 0; i < core->n_loops; i++) {
		struct daemon_loop *loop = &core->loops[i];

		for (size_t j = 0; j < core->n_listeners; j++) {
			const struct service *sv = core->listeners[j].service;
			if (core->listeners[j].fds[i] < 0)
				continue; /* a service that owns its socket; serve_one_loop off loop 0 */
			if (sv->serve_start != NULL) {
				char *error = NULL;
				loop->serve_ctx[j] = sv->serve_start(loop, core->listeners[j].fds[i],
								     core->listeners[j].name, &error);
				if (loop->serve_ctx[j] == NULL) {
					log_msg(LOG_LEVEL_ERR, "listen %s: %s", core->listeners[j].name,
						error != NULL ? error : "cannot serve");
					free(error);
					return -1;
				}
				/* never plain text on a port the config says is TLS */
				if (core->listeners[j].implicit_tls && !loop->serve_tls[j]) {
					log_msg(LOG_LEVEL_ERR, "listen %s: protocol = \"%s\" does not "
						"speak tls = implicit", core->listeners[j].name, sv->name);
					return -1;
				}
				continue;
			}
			loop->evl[j] = evconnlistener_new(loop->base, loop_accept_cb, loop,
							  LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_CLOSE_ON_FREE,
							  -1, core->listeners[j].fds[i]);
			if (loop->evl[j] == NULL) {
				log_msg(LOG_LEVEL_ERR, "evconnlistener_new failed");
				return -1;
			}
			evconnlistener_set_error_cb(loop->evl[j], loop_accept_error_cb);
		}
	}
	for (unsigned i = 0; i < core->n_loops; i++) {
		if (pthread_create(&core->loops[i].thread, NULL, loop_main, &core->loops[i]) != 0) {
			log_errno(LOG_LEVEL_ERR, "pthread_create");
			return -1;
		}
	}
	/* every loop has made its first state current (or failed to) */
	pthread_mutex_lock(&core->start_lock);
	while (core->n_started < core->n_loops)
		pthread_cond_wait(&core->start_cond, &core->start_lock);
	bool failed = core->start_failed;
	pthread_mutex_unlock(&core->start_lock);
	return failed ? -1 : 0;
}

static void
daemon_free(struct daemon *core)
{
	for (unsigned i = 0; core->loops != NULL && i < core->n_loops; i++) {
		struct daemon_loop *loop = &core->loops[i];
		for (size_t j = 0; j < core->n_listeners; j++) {
			if (loop->evl != NULL && loop->evl[j] != NULL)
				evconnlistener_free(loop->evl[j]);
			if (loop->serve_ctx != NULL && loop->serve_ctx[j] != NULL) {
				core->listeners[j].service->serve_stop(loop, loop->serve_ctx[j]);
				core->listeners[j].fds[i] = -1;
			}
		}
		free(loop->evl);
		free(loop->serve_ctx);
		free(loop->serve_tls);
		if (loop->ev_push != NULL)
			event_free(loop->ev_push);
		if (loop->ev_shutdown != NULL)
			event_free(loop->ev_shutdown);
		if (loop->ev_exit != NULL)
			event_free(loop->ev_exit);
		if (loop->base != NULL)
			event_base_free(loop->base);
		pthread_mutex_destroy(&loop->push_lock);
	}
	for (size_t j = 0; j < core->n_listeners; j++) {
		free(core->listeners[j].name);
		free(core->listeners[j].address);
		free(core->listeners[j].fds);
		free(core->listeners[j].proxy_trusted);
	}
	free(core->listeners);
	free(core->loops);
	workers_destroy(&core->workers);
	if (core->state != NULL)
		core->app->state_unref(&core->state);
	free(core->config_path);
	while (core->conn_counts != NULL) {
		struct conn_count *c = core->conn_counts;
		core->conn_counts = c->next;
		free(c);
	}
}

/* ------------------------------------------------------- standalone */

struct daemon_loop *
daemon_loop_standalone(const struct daemon_app *app, struct server_state *st,
		     struct event_base *base, struct workers *workers)
{
	struct daemon *core = xcalloc(1, sizeof(*core));
	struct daemon_loop *loop;

	core->app = app;
	core->workers = workers;
	pthread_mutex_init(&core->state_lock, NULL);
	pthread_mutex_init(&core->conn_lock, NULL);
	core->state = app->state_ref(st);
	core->n_listeners = app->n_services;
	core->listeners = xcalloc(core->n_listeners, sizeof(*core->listeners));
	for (size_t i = 0; i < core->n_listeners; i++) {
		core->listeners[i].name = xstrdup(app->services[i].name);
		core->listeners[i].address = xstrdup("standalone");
		core->listeners[i].service = &app->services[i];
	}
	core->n_loops = 1;
	core->loops = loop = xcalloc(1, sizeof(*loop));
	loop->core = core;
	loop->base = base;
	pthread_mutex_init(&loop->push_lock, NULL);
	if (daemon_loop_install(loop, app->state_ref(st)) < 0) {
		core->loops = NULL;
		free(loop);
		daemon_free(core);
		free(core);
		return NULL;
	}
	return loop;
}

int
daemon_loop_adopt(struct daemon_loop *loop, int fd, const char *protocol)
{
	struct daemon *core = loop->core;
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(12345);
	sin.sin_addr.s_addr = htonl(0xc0000201); /* 192.0.2.1, TEST-NET-1 */
	for (size_t i = 0; i < core->n_listeners; i++) {
		if (strcmp(core->listeners[i].service->name, protocol) == 0 &&
		    core->listeners[i].service->accept != NULL) { /* not one that serves its socket */
			conn_begin(conn_new(loop, &core->listeners[i], fd,
					    (const struct sockaddr *)&sin));
			return 0;
		}
	}
	return -1;
}

size_t
daemon_loop_conn_count(const struct daemon_loop *loop)
{
	return (size_t)atomic_load(&loop->core->n_conns);
}

void
daemon_loop_standalone_free(struct daemon_loop **loopp)
{
	struct daemon_loop *loop = *loopp;
	struct daemon *core;

	*loopp = NULL;
	if (loop == NULL)
		return;
	core = loop->core;
	conn_drop_all(loop, "standalone_end");
	loop_push_cb(-1, 0, loop);
	loop->current = NULL;
	while (loop->states != NULL)
		daemon_loop_state_drop(loop, loop->states);
	loop->base = NULL;      /* the caller's */
	core->workers = NULL;   /* the caller's */
	daemon_free(core);
	free(core);
}

int
daemon_run(const struct daemon_app *app, const char *config_path, bool foreground)
{
	struct daemon core;
	struct main_ctx m;
	char *error = NULL, *pidpath = NULL;
	int pidfd;

	memset(&core, 0, sizeof(core));
	memset(&m, 0, sizeof(m));
	core.app = app;
	core.config_path = xstrdup(config_path);
	core.foreground = foreground;
	pthread_mutex_init(&core.state_lock, NULL);
	pthread_mutex_init(&core.conn_lock, NULL);
	pthread_mutex_init(&core.start_lock, NULL);
	pthread_cond_init(&core.start_cond, NULL);

	/* errors up to the detach go to stderr (log_open comes after) */
	if (evthread_use_pthreads() != 0) {
		log_msg(LOG_LEVEL_ERR, "libevent threading support missing");
		return 1;
	}
	core.state = daemon_build_state(app, config_path, &error);
	if (core.state == NULL) {
		log_msg(LOG_LEVEL_ERR, "%s", error);
		free(error);
		free(core.config_path);
		return 1;
	}
	const struct mx_config *cfg = app->state_config(core.state);
	const struct daemon_settings *ds = daemon_settings(cfg);
	log_set_level((enum log_level)ds->log_level);
	signal(SIGPIPE, SIG_IGN);

	long n = ds->threads;
	if (n == 0) {
		long cores = sysconf(_SC_NPROCESSORS_ONLN);
		n = cores > 0 ? cores : 1;
	}
	core.n_loops = (unsigned)n;
	core.loops = xcalloc(core.n_loops, sizeof(*core.loops));

	if (daemon_refuse_root(cfg) < 0)
		return 1;
	if (daemon_make_dirs(app, core.state, true, false) < 0)
		return 1;
	pidfd = daemon_lock_pidfile(ds, &pidpath);
	if (pidfd == -1)
		return 1;
	if (daemon_bind(&core, cfg) < 0)
		return 1;
	if (daemon_drop_privileges(ds->run_user) < 0)
		return 1;
	if (ds->run_user[0] != '\0' && daemon_check_readable(app, core.state) < 0)
		return 1;
	if (!foreground) {
		if (daemon(1, 0) < 0) {
			log_errno(LOG_LEVEL_ERR, "daemon");
			return 1;
		}
		log_set_facility((enum log_facility)ds->syslog_facility);
		log_open(app->ident, false, (enum log_level)ds->log_level);
	}
	/* signals are caught from before the pid is out: a SIGTERM sent as soon
	 * as the pid file names us waits for the main loop, never kills */
	m.core = &core;
	m.base = event_base_new();
	m.ev_term = evsignal_new(m.base, SIGTERM, main_signal_cb, &m);
	m.ev_int = evsignal_new(m.base, SIGINT, main_signal_cb, &m);
	m.ev_hup = evsignal_new(m.base, SIGHUP, main_signal_cb, &m);
	event_add(m.ev_term, NULL);
	event_add(m.ev_int, NULL);
	event_add(m.ev_hup, NULL);
	daemon_write_pid(pidfd);

	core.workers = workers_create((unsigned)ds->workers, 0, 0);
	for (unsigned i = 0; i < core.n_loops; i++) {
		struct daemon_loop *loop = &core.loops[i];
		loop->core = &core;
		loop->index = i;
		pthread_mutex_init(&loop->push_lock, NULL);
		loop->base = event_base_new();
		if (loop->base == NULL) {
			log_msg(LOG_LEVEL_ERR, "event_base_new failed");
			return 1;
		}
		loop->evl = xcalloc(core.n_listeners, sizeof(*loop->evl));
		loop->serve_ctx = xcalloc(core.n_listeners, sizeof(*loop->serve_ctx));
		loop->serve_tls = xcalloc(core.n_listeners, sizeof(*loop->serve_tls));
		loop->ev_push = event_new(loop->base, -1, 0, loop_push_cb, loop);
		loop->ev_shutdown = event_new(loop->base, -1, 0, loop_shutdown_cb, loop);
		loop->ev_exit = event_new(loop->base, -1, 0, loop_exit_cb, loop);
	}
	if (daemon_start_loops(&core) < 0)
		return 1;
	metrics_set(METRIC_START_TIME, (int64_t)time(NULL));
	metrics_set(METRIC_CONFIG_LOAD_TIME, (int64_t)time(NULL));
	metrics_set_label(METRIC_CONFIG_INFO, cfg->path, 1);
	metrics_set_label(METRIC_BUILD_INFO, PACKAGE_VERSION, 1);
	/* a service that owns its socket failed to start: the loops run, so
	 * stop them the normal way, with exit status 1 */
	int status = daemon_start_owned(&core, cfg) < 0 ? 1 : 0;
	if (status == 0) {
		log_msg(LOG_LEVEL_INFO, "started version=%s threads=%u workers=%ld config=%s",
			PACKAGE_VERSION, core.n_loops, ds->workers, config_path);
		daemon_notify("READY=1\nMAINPID=%d\nSTATUS=serving: %zu listener(s), %u loop(s)",
			      (int)getpid(), core.n_listeners, core.n_loops);
		event_base_loop(m.base, EVLOOP_NO_EXIT_ON_EMPTY);
	}

	/* sessions are done (or the deadline passed): stop the loops; a
	 * service that owns its socket can no longer reach them */
	daemon_stop_owned(&core);
	daemon_close_posts();
	for (unsigned i = 0; i < core.n_loops; i++)
		event_active(core.loops[i].ev_exit, EV_TIMEOUT, 0);
	for (unsigned i = 0; i < core.n_loops; i++)
		pthread_join(core.loops[i].thread, NULL);
	if (pidpath != NULL) {
		(void)unlink(pidpath);
		free(pidpath);
	}
	if (workers_pending(core.workers) != 0) {
		/* deliveries still running own their transactions: leave without
		 * tearing anything down; nothing unacknowledged is lost by this */
		log_msg(LOG_LEVEL_INFO, "stopped (forced)");
		_exit(status);
	}
	event_free(m.ev_term);
	event_free(m.ev_int);
	event_free(m.ev_hup);
	if (m.ev_wait != NULL)
		event_free(m.ev_wait);
	event_base_free(m.base);
	daemon_free(&core);
	if (pidfd >= 0)
		close(pidfd);
	log_msg(LOG_LEVEL_INFO, "stopped");
	return status;
}
