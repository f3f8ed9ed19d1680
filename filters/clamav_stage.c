/*
 * clamav_stage.c — the "clamav" stage: every message scanned for viruses
 * at the end of DATA, in process with libclamav or through a clamd.
 *
 *   clamav {
 *       mode = "libclamav"            # or "clamd"
 *       database_dir = "/var/lib/clamav"
 *       clamd_socket = "unix:/run/clamav/clamd.ctl"
 *       action = "reject"             # reject | quarantine | discard
 *       on_limit = "tempfail"         # accept | tempfail | reject
 *       on_error = "tempfail"         # accept | tempfail (every stage has it)
 *       max_scan_size = 104857600     # and max_file_size, max_recursion,
 *       db_check_interval = 300       # max_files, max_scan_time
 *   }
 *
 * libclamav mode. The signature database is loaded and compiled once into
 * an engine that every scan shares read-only. Engines live in a struct
 * clam_db — one per (database_dir, limits), shared by the pipelines of
 * successive reloads — so a reload whose database did not change reuses the
 * compiled engine instead of loading it again (a full ClamAV database takes
 * seconds and hundreds of MB). When the database did change (cl_statchkdir,
 * at a reload or every db_check_interval seconds on the db's own watcher
 * thread), a new engine is built aside, without any lock held, and swapped
 * in under the db's mutex; scans in flight hold a reference to the engine
 * they started with and finish on it, and the old engine is freed by the
 * last of them. A new database that does not load (broken, half-copied)
 * leaves the old engine in place, with an error in the log.
 *
 * A scan runs on the worker pool's scan lane and reads the message where it
 * already is — the body in memory or the mapping of its spill file — through
 * cl_fmap_open_memory(), with mail parsing, archives and every other parser
 * on, so an attachment in base64, a zip in it and a zip in that are found.
 * With the "exceeds max" heuristic, libclamav reports what it could not scan
 * whole (Heuristics.Limits.Exceeded.*): that decides on_limit; a scan that
 * ran out of time (max_scan_time) counts as an error, as does any other
 * failure: never pass unscanned mail unless on_error = accept says so.
 *
 * clamd mode. The message is sent with INSTREAM (4-octet big-endian chunk
 * lengths, a zero length to end) over a unix or TCP socket, on the scan
 * lane with blocking I/O bounded by clamd_timeout; the same verdicts,
 * limits and failure policy apply. clamd's own StreamMaxLength refusal
 * counts as a limit.
 *
 * Every scanned message gets an X-Virus-Scanned header that says what
 * scanned it and what came out; a virus adds the hit CLAMAV_<signature>
 * (the log line's hits=), and a rejection says 554 5.7.1 with its name.
 */
#include "config.h"

#include <clamav.h>
#include <confuse.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "filters/filters.h"
#include "lib/metrics.h"
#include "lib/lib.h"

#define CLAM_LIMIT_PREFIX "Heuristics.Limits.Exceeded"
#define CLAM_SCANTIME_NAME "Heuristics.Limits.Exceeded.MaxScanTime"
#define CLAMD_CHUNK 65536
#define CLAMD_REPLY_MAX 1024

enum clam_mode { CLAM_MODE_LIBCLAMAV, CLAM_MODE_CLAMD };
enum clam_action { CLAM_ACTION_REJECT, CLAM_ACTION_QUARANTINE, CLAM_ACTION_DISCARD };
enum clam_on_limit { CLAM_LIMIT_ACCEPT, CLAM_LIMIT_TEMPFAIL, CLAM_LIMIT_REJECT };

struct clam_limits {
	unsigned long long max_scan_size, max_file_size;
	unsigned max_recursion, max_files, max_scan_time;
};

/* One compiled engine; scans hold references. */
struct clam_engine {
	atomic_int refs;
	struct cl_engine *engine;
	unsigned sigs;
	unsigned version; /* CL_ENGINE_DB_VERSION: daily.cvd's, 0 for plain files */
};

/* The engine of one database directory with one set of limits, shared by
 * the pipelines that name them (see the top of the file). */
struct clam_db {
	struct clam_db *next;   /* clam_dbs, under clam_dbs_lock */
	unsigned holders;       /* stages using it, under clam_dbs_lock */
	atomic_int refs;        /* memory: holders' + the watcher's */
	char *dir;
	struct clam_limits lim;
	long check_interval;    /* seconds, 0 = only at reloads */

	pthread_mutex_t lock;   /* cur, stopping, watcher_started */
	pthread_cond_t cond;
	struct clam_engine *cur; /* NULL when none could be loaded */
	bool stopping, watcher_started;

	pthread_mutex_t refresh_lock; /* one refresh at a time: fp, fp_ok */
	uint64_t fp;            /* clam_dir_fingerprint() of the last load tried */
	bool fp_ok;
};

static pthread_mutex_t clam_dbs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct clam_db *clam_dbs;
static pthread_once_t clam_init_once = PTHREAD_ONCE_INIT;
static int clam_init_status;

struct clam_stage {
	struct stage hdr; /* must be first */
	enum clam_mode mode;
	enum clam_action action;
	enum clam_on_limit on_limit;
	struct clam_limits lim;
	bool add_header;
	/* libclamav */
	struct clam_db *db;
	/* clamd */
	char *clamd_socket;
	struct sockaddr_storage clamd_addr;
	socklen_t clamd_addr_len;
	long clamd_timeout; /* seconds */
};

enum clam_outcome { CLAM_CLEAN, CLAM_VIRUS, CLAM_LIMIT, CLAM_ERROR };

struct clam_job {
	const struct clam_stage *st;
	struct msgbody *body; /* the job's reference is the pipeline's */
	enum clam_outcome outcome;
	char name[160];       /* virus, limit or error text (clam_virus_found_cb's size) */
	char scanner[96];     /* for X-Virus-Scanned */
};

static cfg_opt_t clam_opts[] = {
	CFG_STR("mode", "libclamav", CFGF_NONE),
	CFG_STR("database_dir", "/var/lib/clamav", CFGF_NONE),
	CFG_STR("clamd_socket", "unix:/run/clamav/clamd.ctl", CFGF_NONE),
	CFG_INT("clamd_timeout", 60, CFGF_NONE),
	CFG_STR("action", "reject", CFGF_NONE),
	CFG_STR("on_limit", "tempfail", CFGF_NONE),
	CFG_INT("max_scan_size", 104857600, CFGF_NONE),
	CFG_INT("max_file_size", 26214400, CFGF_NONE),
	CFG_INT("max_recursion", 17, CFGF_NONE),
	CFG_INT("max_files", 10000, CFGF_NONE),
	CFG_INT("max_scan_time", 120000, CFGF_NONE),
	CFG_INT("db_check_interval", 300, CFGF_NONE),
	CFG_BOOL("header", cfg_true, CFGF_NONE),
	CFG_END()
};

/* ------------------------------------------------------------ libclamav */

/* libclamav's own messages, into our log (warnings and errors only: its
 * info level narrates every file of a load). */
static void
clam_msg_cb(enum cl_msg severity, const char *fullmsg, const char *msg, void *context)
{
	(void)fullmsg;
	(void)context;
	if (severity == CL_MSG_ERROR || severity == CL_MSG_WARN) {
		size_t n = strlen(msg);
		while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
			n--;
		log_msg(severity == CL_MSG_ERROR ? LOG_LEVEL_ERR : LOG_LEVEL_WARN,
			"clamav: libclamav: %.*s", (int)n, msg);
	}
}

static void
clam_init(void)
{
	cl_set_clcb_msg(clam_msg_cb);
	clam_init_status = cl_init(CL_INIT_DEFAULT);
}

static void
clam_engine_unref(struct clam_engine **ep)
{
	struct clam_engine *e = *ep;

	*ep = NULL;
	if (e == NULL || atomic_fetch_sub(&e->refs, 1) != 1)
		return;
	cl_engine_free(e->engine);
	free(e);
}

/* The name of what was found, as libclamav reports it to the callback
 * (context: the job's name buffer, when the scan passed it). The scan's own
 * virname is not set for every kind of alert (the limits heuristics). */
static void
clam_virus_found_cb(int fd, const char *virname, void *context)
{
	char *name = context;

	(void)fd;
	if (name != NULL && name[0] == '\0' && virname != NULL)
		str_copy(name, virname, 160);
}

/* Load and compile the database in dir: seconds for a full database, no
 * lock held. NULL with *error_r malloc'd. */
static struct clam_engine *
clam_engine_load(const char *dir, const struct clam_limits *lim, char **error_r)
{
	struct cl_engine *engine = cl_engine_new();
	unsigned sigs = 0;
	cl_error_t r;

	if (engine == NULL) {
		*error_r = xstrdup("cl_engine_new failed");
		return NULL;
	}
	/* limits first: they are fixed once the engine is shared */
	cl_engine_set_num(engine, CL_ENGINE_MAX_SCANSIZE, (long long)lim->max_scan_size);
	cl_engine_set_num(engine, CL_ENGINE_MAX_FILESIZE, (long long)lim->max_file_size);
	cl_engine_set_num(engine, CL_ENGINE_MAX_RECURSION, lim->max_recursion);
	cl_engine_set_num(engine, CL_ENGINE_MAX_FILES, lim->max_files);
	cl_engine_set_num(engine, CL_ENGINE_MAX_SCANTIME, lim->max_scan_time);
	cl_engine_set_clcb_virus_found(engine, clam_virus_found_cb);
	r = cl_load(dir, engine, &sigs, CL_DB_STDOPT);
	if (r != CL_SUCCESS) {
		*error_r = xasprintf("cannot load the database in %s: %s", dir, cl_strerror(r));
		cl_engine_free(engine);
		return NULL;
	}
	if (sigs == 0) {
		*error_r = xasprintf("the database in %s has no signatures", dir);
		cl_engine_free(engine);
		return NULL;
	}
	r = cl_engine_compile(engine);
	if (r != CL_SUCCESS) {
		*error_r = xasprintf("cannot compile the database in %s: %s", dir, cl_strerror(r));
		cl_engine_free(engine);
		return NULL;
	}
	struct clam_engine *e = xcalloc(1, sizeof(*e));
	int err = 0;
	atomic_init(&e->refs, 1);
	e->engine = engine;
	e->sigs = sigs;
	e->version = (unsigned)cl_engine_get_num(engine, CL_ENGINE_DB_VERSION, &err);
	return e;
}

/* The current engine with a reference, or NULL. */
static struct clam_engine *
clam_db_engine(struct clam_db *db)
{
	struct clam_engine *e;

	pthread_mutex_lock(&db->lock);
	e = db->cur;
	if (e != NULL)
		atomic_fetch_add(&e->refs, 1);
	pthread_mutex_unlock(&db->lock);
	return e;
}

/*
 * What the database directory holds: every file's name, size, inode and
 * modification and change times (to the nanosecond), combined so that the
 * order of readdir does not matter. cl_statchkdir() compares mtimes in
 * seconds, which misses a file replaced within the second it was loaded.
 * false when the directory cannot be read.
 */
static bool
clam_dir_fingerprint(const char *dir, uint64_t *fp_r)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	uint64_t fp = 0, n = 0;

	if (d == NULL)
		return false;
	while ((de = readdir(d)) != NULL) {
		struct stat sb;
		if (de->d_name[0] == '.' || fstatat(dirfd(d), de->d_name, &sb, 0) < 0)
			continue;
		uint64_t h = 14695981039346656037ULL;
		for (const unsigned char *c = (const unsigned char *)de->d_name; *c != '\0'; c++)
			h = (h ^ *c) * 1099511628211ULL;
		const uint64_t parts[] = {
			(uint64_t)sb.st_size, (uint64_t)sb.st_ino,
			(uint64_t)sb.st_mtim.tv_sec, (uint64_t)sb.st_mtim.tv_nsec,
			(uint64_t)sb.st_ctim.tv_sec, (uint64_t)sb.st_ctim.tv_nsec,
		};
		for (size_t i = 0; i < N_ELEMENTS(parts); i++)
			h = (h ^ parts[i]) * 1099511628211ULL;
		fp += h;
		n++;
	}
	closedir(d);
	*fp_r = fp ^ (n * 0x9e3779b97f4a7c15ULL);
	return true;
}

/*
 * Load the database again when its files changed since the last load tried
 * (or when there is no engine yet), and swap the new engine in. A load that
 * fails keeps the engine there was, and the same files are not tried again
 * until they change. Returns 0 when an engine is there afterwards, -1 (with
 * *error_r, when not NULL) when there is none.
 */
static int
clam_db_refresh(struct clam_db *db, bool force, char **error_r)
{
	struct clam_engine *old, *e;
	char *err = NULL;
	uint64_t fp = 0;
	bool had, fp_ok;

	pthread_mutex_lock(&db->refresh_lock);
	pthread_mutex_lock(&db->lock);
	had = db->cur != NULL;
	pthread_mutex_unlock(&db->lock);
	/* the files' identity before the load, so a change during it is seen
	 * at the next check */
	fp_ok = clam_dir_fingerprint(db->dir, &fp);
	if (!force && fp_ok == db->fp_ok && fp == db->fp) {
		pthread_mutex_unlock(&db->refresh_lock);
		return had ? 0 : -1; /* unchanged */
	}
	db->fp = fp;
	db->fp_ok = fp_ok;
	e = clam_engine_load(db->dir, &db->lim, &err);
	/* "clamav-db": whether the last load of a changed database worked */
	metrics_dependency("clamav-db", e != NULL);
	if (e == NULL) {
		if (had) {
			log_msg(LOG_LEVEL_ERR, "clamav: %s; keeping the engine loaded before", err);
			free(err);
			pthread_mutex_unlock(&db->refresh_lock);
			return 0;
		}
		if (error_r != NULL)
			*error_r = err;
		else
			free(err);
		pthread_mutex_unlock(&db->refresh_lock);
		return -1;
	}
	pthread_mutex_lock(&db->lock);
	if (db->stopping) {
		/* the last stage let go while this loaded: nobody will scan */
		pthread_mutex_unlock(&db->lock);
		clam_engine_unref(&e);
		pthread_mutex_unlock(&db->refresh_lock);
		return 0;
	}
	old = db->cur;
	db->cur = e;
	pthread_mutex_unlock(&db->lock);
	log_msg(LOG_LEVEL_INFO, "clamav: %s database in %s: %u signatures, version %u (ClamAV %s)",
		had ? "reloaded the" : "loaded the", db->dir, e->sigs, e->version, cl_retver());
	/* the engine loaded last (with two databases configured, the gauges
	 * follow whichever loaded last) */
	metrics_set(METRIC_CLAMAV_DB_VERSION, e->version);
	metrics_set(METRIC_CLAMAV_DB_SIGNATURES, e->sigs);
	metrics_set(METRIC_CLAMAV_DB_LOAD_TIME, (int64_t)time(NULL));
	clam_engine_unref(&old); /* scans in flight keep it until they end */
	pthread_mutex_unlock(&db->refresh_lock);
	return 0;
}

static void
clam_db_unref(struct clam_db *db)
{
	if (atomic_fetch_sub(&db->refs, 1) != 1)
		return;
	clam_engine_unref(&db->cur);
	pthread_mutex_destroy(&db->lock);
	pthread_mutex_destroy(&db->refresh_lock);
	pthread_cond_destroy(&db->cond);
	free(db->dir);
	free(db);
}

/* The watcher: every check_interval seconds, a changed database is loaded
 * aside and swapped in. Detached; holds a reference to its db and ends
 * when the last stage using the db lets go. */
static void *
clam_db_watch(void *arg)
{
	struct clam_db *db = arg;

	pthread_mutex_lock(&db->lock);
	while (!db->stopping) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += db->check_interval;
		while (!db->stopping &&
		       pthread_cond_timedwait(&db->cond, &db->lock, &until) != ETIMEDOUT)
			;
		if (db->stopping)
			break;
		pthread_mutex_unlock(&db->lock);
		(void)clam_db_refresh(db, false, NULL);
		pthread_mutex_lock(&db->lock);
	}
	pthread_mutex_unlock(&db->lock);
	clam_db_unref(db);
	return NULL;
}

static bool
clam_limits_equal(const struct clam_limits *a, const struct clam_limits *b)
{
	return a->max_scan_size == b->max_scan_size && a->max_file_size == b->max_file_size &&
	       a->max_recursion == b->max_recursion && a->max_files == b->max_files &&
	       a->max_scan_time == b->max_scan_time;
}

/*
 * The db for (dir, lim): the one the running pipeline uses, refreshed if
 * its files changed, or a new one loaded now. With allow_empty, a database
 * that cannot be loaded gives a db without an engine (scans then fail and
 * on_error decides) instead of an error.
 */
static struct clam_db *
clam_db_acquire(const char *dir, const struct clam_limits *lim, long interval,
		bool allow_empty, char **error_r)
{
	struct clam_db *db;
	char *err = NULL;

	pthread_mutex_lock(&clam_dbs_lock);
	for (db = clam_dbs; db != NULL; db = db->next) {
		if (strcmp(db->dir, dir) == 0 && clam_limits_equal(&db->lim, lim) &&
		    db->check_interval == interval)
			break;
	}
	if (db != NULL) {
		db->holders++;
		atomic_fetch_add(&db->refs, 1);
		pthread_mutex_unlock(&clam_dbs_lock);
		if (clam_db_refresh(db, false, &err) < 0 && err != NULL) {
			log_msg(LOG_LEVEL_WARN, "clamav: %s", err);
			free(err);
		}
		return db;
	}
	pthread_mutex_unlock(&clam_dbs_lock);

	db = xcalloc(1, sizeof(*db));
	atomic_init(&db->refs, 1);
	db->holders = 1;
	db->dir = xstrdup(dir);
	db->lim = *lim;
	db->check_interval = interval;
	pthread_mutex_init(&db->lock, NULL);
	pthread_mutex_init(&db->refresh_lock, NULL);
	pthread_cond_init(&db->cond, NULL);
	if (clam_db_refresh(db, true, &err) < 0) {
		if (!allow_empty) {
			*error_r = err;
			clam_db_unref(db);
			return NULL;
		}
		log_msg(LOG_LEVEL_WARN, "clamav: %s; on_error = accept: starting WITHOUT "
			"virus scanning until a database loads", err);
		free(err);
	}
	pthread_mutex_lock(&clam_dbs_lock);
	db->next = clam_dbs;
	clam_dbs = db;
	pthread_mutex_unlock(&clam_dbs_lock);
	return db;
}

static void
clam_db_release(struct clam_db *db)
{
	bool last;

	pthread_mutex_lock(&clam_dbs_lock);
	last = --db->holders == 0;
	if (last) {
		for (struct clam_db **p = &clam_dbs; *p != NULL; p = &(*p)->next) {
			if (*p == db) {
				*p = db->next;
				break;
			}
		}
	}
	pthread_mutex_unlock(&clam_dbs_lock);
	if (last) {
		struct clam_engine *e;
		pthread_mutex_lock(&db->lock);
		db->stopping = true;
		e = db->cur;
		db->cur = NULL;
		pthread_cond_broadcast(&db->cond);
		pthread_mutex_unlock(&db->lock);
		/* the engine goes here and now, on the thread that let go — at
		 * exit, the main thread, before the process ends — not on the
		 * watcher whenever it wakes (scans in flight keep their own
		 * reference) */
		clam_engine_unref(&e);
	}
	clam_db_unref(db);
}

/* Started from the first loop that uses the stage: after the daemon
 * detached (a thread made before its fork would not survive it), never in
 * `mxguard -t`. */
static void
clam_db_start_watcher(struct clam_db *db)
{
	pthread_t t;
	pthread_attr_t attr;
	bool start;

	if (db->check_interval <= 0)
		return;
	pthread_mutex_lock(&db->lock);
	start = !db->watcher_started && !db->stopping;
	db->watcher_started = true;
	pthread_mutex_unlock(&db->lock);
	if (!start)
		return;
	atomic_fetch_add(&db->refs, 1);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, clam_db_watch, db) != 0) {
		log_msg(LOG_LEVEL_ERR, "clamav: cannot start the database watcher: %s",
			strerror(errno));
		clam_db_unref(db);
	}
	pthread_attr_destroy(&attr);
}

static void
clam_scan_libclamav(struct clam_job *j, const char *data, size_t len)
{
	struct clam_engine *e = clam_db_engine(j->st->db);
	struct cl_scan_options o;
	const char *virname = NULL;
	unsigned long scanned = 0;
	cl_fmap_t *map;
	cl_error_t r;

	if (e == NULL) {
		j->outcome = CLAM_ERROR;
		snprintf(j->name, sizeof(j->name), "no database loaded from %s", j->st->db->dir);
		snprintf(j->scanner, sizeof(j->scanner), "ClamAV %s", cl_retver());
		return;
	}
	snprintf(j->scanner, sizeof(j->scanner), "ClamAV %s/%u", cl_retver(), e->version);
	map = cl_fmap_open_memory(data, len);
	if (map == NULL) {
		j->outcome = CLAM_ERROR;
		str_copy(j->name, "cl_fmap_open_memory failed", sizeof(j->name));
		clam_engine_unref(&e);
		return;
	}
	memset(&o, 0, sizeof(o));
	o.parse = ~0u;                         /* archives, mail, documents, ... */
	o.general = CL_SCAN_GENERAL_HEURISTICS; /* ... and say what exceeded the limits */
	o.heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;
	j->name[0] = '\0';
	r = cl_scanmap_callback(map, NULL, &virname, &scanned, e->engine, &o, j->name);
	cl_fmap_close(map);
	if (r == CL_VIRUS && (virname != NULL || j->name[0] != '\0')) {
		if (virname == NULL)
			virname = j->name;
		if (strcmp(virname, CLAM_SCANTIME_NAME) == 0) {
			j->outcome = CLAM_ERROR;
			str_copy(j->name, "scan time limit (max_scan_time) reached", sizeof(j->name));
		} else if (strncmp(virname, CLAM_LIMIT_PREFIX, strlen(CLAM_LIMIT_PREFIX)) == 0) {
			j->outcome = CLAM_LIMIT;
			if (virname != j->name)
				str_copy(j->name, virname, sizeof(j->name));
		} else {
			j->outcome = CLAM_VIRUS;
			if (virname != j->name)
				str_copy(j->name, virname, sizeof(j->name));
		}
	} else if (r == CL_CLEAN) {
		j->outcome = CLAM_CLEAN;
	} else if (r == CL_ETIMEOUT) {
		j->outcome = CLAM_ERROR;
		str_copy(j->name, "scan time limit (max_scan_time) reached", sizeof(j->name));
	} else {
		j->outcome = CLAM_ERROR;
		snprintf(j->name, sizeof(j->name), "scan failed: %s", cl_strerror(r));
	}
	clam_engine_unref(&e);
}

/* ---------------------------------------------------------------- clamd */

static int
clamd_write_all(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static void
clam_scan_clamd(struct clam_job *j, const char *data, size_t len)
{
	const struct clam_stage *st = j->st;
	struct timeval tv = { .tv_sec = st->clamd_timeout };
	char reply[CLAMD_REPLY_MAX];
	size_t got = 0;
	int fd;

	snprintf(j->scanner, sizeof(j->scanner), "ClamAV (clamd)");
	fd = socket(st->clamd_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	/* connect(2) honours SO_SNDTIMEO on Linux */
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (const struct sockaddr *)&st->clamd_addr, st->clamd_addr_len) < 0)
		goto fail;
	if (clamd_write_all(fd, "zINSTREAM", sizeof("zINSTREAM")) < 0)
		goto fail;
	for (size_t off = 0; off < len;) {
		size_t n = len - off > CLAMD_CHUNK ? CLAMD_CHUNK : len - off;
		unsigned char hdr[4] = { (unsigned char)(n >> 24), (unsigned char)(n >> 16),
					 (unsigned char)(n >> 8), (unsigned char)n };
		if (clamd_write_all(fd, hdr, sizeof(hdr)) < 0) {
			/* clamd closes early when StreamMaxLength is passed:
			 * its answer may still be there to read */
			break;
		}
		if (clamd_write_all(fd, data + off, n) < 0)
			break;
		off += n;
	}
	static const unsigned char end[4] = { 0, 0, 0, 0 };
	(void)clamd_write_all(fd, end, sizeof(end));
	while (got < sizeof(reply) - 1) {
		ssize_t r = recv(fd, reply + got, sizeof(reply) - 1 - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
		if (memchr(reply, '\0', got) != NULL)
			break;
	}
	close(fd);
	fd = -1;
	if (got == 0) {
		j->outcome = CLAM_ERROR;
		snprintf(j->name, sizeof(j->name), "clamd at %s gave no answer", st->clamd_socket);
		metrics_dependency("clamd", false);
		return;
	}
	metrics_dependency("clamd", true); /* it answered, whatever it said */
	switch (clamd_reply_parse(reply, got, j->name, sizeof(j->name))) {
	case CLAMD_CLEAN:
		j->outcome = CLAM_CLEAN;
		break;
	case CLAMD_FOUND:
		if (strcmp(j->name, CLAM_SCANTIME_NAME) == 0) {
			j->outcome = CLAM_ERROR;
			str_copy(j->name, "scan time limit reached in clamd", sizeof(j->name));
		} else {
			j->outcome = strncmp(j->name, CLAM_LIMIT_PREFIX,
					     strlen(CLAM_LIMIT_PREFIX)) == 0 ? CLAM_LIMIT : CLAM_VIRUS;
		}
		break;
	case CLAMD_SIZE_LIMIT:
		j->outcome = CLAM_LIMIT;
		str_copy(j->name, "clamd StreamMaxLength", sizeof(j->name));
		break;
	case CLAMD_ERROR: {
		char text[sizeof(j->name)];
		str_copy(text, j->name, sizeof(text));
		j->outcome = CLAM_ERROR;
		snprintf(j->name, sizeof(j->name), "clamd: %.140s", text);
		break;
	}
	}
	return;
fail:
	j->outcome = CLAM_ERROR;
	snprintf(j->name, sizeof(j->name), "clamd at %s: %s", st->clamd_socket, strerror(errno));
	metrics_dependency("clamd", false);
	if (fd >= 0)
		close(fd);
}

/* ---------------------------------------------------------------- stage */

static int
clam_choice(cfg_t *section, const char *opt, const char *const *names, size_t n,
	    int *out, char **error_r)
{
	const char *v = cfg_getstr(section, opt);

	for (size_t i = 0; i < n; i++) {
		if (strcmp(v, names[i]) == 0) {
			*out = (int)i;
			return 0;
		}
	}
	*error_r = xasprintf("clamav: %s = \"%s\": expected one of %s%s%s%s%s", opt, v,
			     names[0], n > 1 ? ", " : "", n > 1 ? names[1] : "",
			     n > 2 ? ", " : "", n > 2 ? names[2] : "");
	return -1;
}

static int
clam_parse_socket(struct clam_stage *st, char **error_r)
{
	const char *s = st->clamd_socket;
	const char *why = NULL;

	if (strncmp(s, "unix:", 5) == 0) {
		struct sockaddr_un *un = (struct sockaddr_un *)&st->clamd_addr;
		if (s[5] != '/' || strlen(s + 5) >= sizeof(un->sun_path)) {
			*error_r = xasprintf("clamav: clamd_socket = \"%s\": expected "
					     "unix:/absolute/path", s);
			return -1;
		}
		memset(&st->clamd_addr, 0, sizeof(st->clamd_addr));
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, s + 5);
		st->clamd_addr_len = sizeof(*un);
		return 0;
	}
	if (net_parse_address(s, &st->clamd_addr, &st->clamd_addr_len, &why) < 0) {
		*error_r = xasprintf("clamav: clamd_socket = \"%s\": %s (expected "
				     "unix:/path, address:port or [v6]:port)", s, why);
		return -1;
	}
	return 0;
}

static int
clam_create(cfg_t *section, const struct mx_config *cfg, struct stage **st_r, char **error_r)
{
	static const char *const modes[] = { "libclamav", "clamd" };
	static const char *const actions[] = { "reject", "quarantine", "discard" };
	static const char *const on_limits[] = { "accept", "tempfail", "reject" };
	struct clam_stage *st = xcalloc(1, sizeof(*st));
	int mode = 0, action = 0, on_limit = 0;

	(void)cfg;
	if (clam_choice(section, "mode", modes, 2, &mode, error_r) < 0 ||
	    clam_choice(section, "action", actions, 3, &action, error_r) < 0 ||
	    clam_choice(section, "on_limit", on_limits, 3, &on_limit, error_r) < 0)
		goto fail;
	st->mode = (enum clam_mode)mode;
	st->action = (enum clam_action)action;
	st->on_limit = (enum clam_on_limit)on_limit;
	st->add_header = cfg_getbool(section, "header");
	struct {
		const char *name;
		long min, max;
	} bounds[] = {
		{ "max_scan_size", 1024, 4L << 30 }, { "max_file_size", 1024, 4L << 30 },
		{ "max_recursion", 1, 100 }, { "max_files", 1, 1000000 },
		{ "max_scan_time", 100, 3600000 }, { "db_check_interval", 0, 86400 },
		{ "clamd_timeout", 1, 3600 },
	};
	for (size_t i = 0; i < N_ELEMENTS(bounds); i++) {
		long v = cfg_getint(section, bounds[i].name);
		if (v < bounds[i].min || v > bounds[i].max) {
			*error_r = xasprintf("clamav: %s = %ld: out of range %ld..%ld",
					     bounds[i].name, v, bounds[i].min, bounds[i].max);
			goto fail;
		}
	}
	st->lim.max_scan_size = (unsigned long long)cfg_getint(section, "max_scan_size");
	st->lim.max_file_size = (unsigned long long)cfg_getint(section, "max_file_size");
	st->lim.max_recursion = (unsigned)cfg_getint(section, "max_recursion");
	st->lim.max_files = (unsigned)cfg_getint(section, "max_files");
	st->lim.max_scan_time = (unsigned)cfg_getint(section, "max_scan_time");
	st->clamd_socket = xstrdup(cfg_getstr(section, "clamd_socket"));
	st->clamd_timeout = cfg_getint(section, "clamd_timeout");

	if (st->mode == CLAM_MODE_CLAMD) {
		if (clam_parse_socket(st, error_r) < 0)
			goto fail;
		*st_r = &st->hdr;
		return 0;
	}
	pthread_once(&clam_init_once, clam_init);
	if (clam_init_status != CL_SUCCESS) {
		*error_r = xasprintf("clamav: cl_init: %s", cl_strerror(clam_init_status));
		goto fail;
	}
	/* the pipeline fills hdr.on_error after create: read the section */
	const char *on_error = cfg_getstr(section, "on_error");
	bool allow_empty = on_error != NULL && strcmp(on_error, "accept") == 0;
	char *err = NULL;
	st->db = clam_db_acquire(cfg_getstr(section, "database_dir"), &st->lim,
				 cfg_getint(section, "db_check_interval"), allow_empty, &err);
	if (st->db == NULL) {
		*error_r = xasprintf("clamav: %s (mode = \"libclamav\" needs a signature "
				     "database: install clamav-freshclam, point database_dir at "
				     "one, or use mode = \"clamd\")", err);
		free(err);
		goto fail;
	}
	*st_r = &st->hdr;
	return 0;
fail:
	free(st->clamd_socket);
	free(st);
	return -1;
}

static int
clam_loop_init(struct stage *stage, const struct stage_env *env, void **loop_data_r,
	       char **error_r)
{
	struct clam_stage *st = (struct clam_stage *)stage;

	(void)env;
	(void)error_r;
	*loop_data_r = NULL;
	if (st->db != NULL)
		clam_db_start_watcher(st->db);
	return 0;
}

static void
clam_work(void *arg)
{
	struct clam_job *j = arg;
	size_t len = 0;
	const char *data = msgbody_contents(j->body, &len);

	if (data == NULL) {
		j->outcome = CLAM_ERROR;
		snprintf(j->name, sizeof(j->name), "cannot read the message: %s", strerror(errno));
		return;
	}
	if (len > j->st->lim.max_scan_size) {
		/* what libclamav would skip whole: no need to ask it */
		j->outcome = CLAM_LIMIT;
		snprintf(j->name, sizeof(j->name), "message larger than max_scan_size");
		snprintf(j->scanner, sizeof(j->scanner), "ClamAV");
		return;
	}
	if (j->st->mode == CLAM_MODE_CLAMD)
		clam_scan_clamd(j, data, len);
	else
		clam_scan_libclamav(j, data, len);
}

static void
clam_header(struct filter_tx *fx, const struct clam_job *j, const char *what)
{
	char *v;

	if (!j->st->add_header)
		return;
	v = xasprintf("%s (mxguard); %s", j->scanner[0] != '\0' ? j->scanner : "ClamAV", what);
	(void)filter_tx_add_header(fx, "X-Virus-Scanned", v);
	free(v);
}

static void
clam_done(struct stage_call *call, void *arg)
{
	struct clam_job *j = arg;
	struct filter_result *res;
	enum check_status status = CHECK_DONE;
	char what[220];

	if (call == NULL) {
		free(j);
		return;
	}
	res = &call->result;
	memset(res, 0, sizeof(*res));
	res->verdict = VERDICT_CONTINUE;
	switch (j->outcome) {
	case CLAM_CLEAN:
		clam_header(call->fx, j, "clean");
		break;
	case CLAM_VIRUS: {
		char *rule = xasprintf("CLAMAV_%s", j->name);
		filter_tx_add_score(call->fx, call->stage->name, rule, 0.0, j->name);
		free(rule);
		snprintf(what, sizeof(what), "infected (%s)", j->name);
		clam_header(call->fx, j, what);
		log_msg(LOG_LEVEL_INFO, "clamav: %s: virus %s (%s)", call->msg->txid, j->name,
			j->st->action == CLAM_ACTION_REJECT ? "rejected" :
			j->st->action == CLAM_ACTION_QUARANTINE ? "quarantined" : "discarded");
		if (j->st->action == CLAM_ACTION_REJECT) {
			res->verdict = VERDICT_REJECT;
			res->code = 554;
			str_copy(res->enhanced, "5.7.1", sizeof(res->enhanced));
			snprintf(res->text, sizeof(res->text), "Virus found: %s", j->name);
		} else {
			res->verdict = j->st->action == CLAM_ACTION_QUARANTINE ?
				       VERDICT_QUARANTINE : VERDICT_DISCARD;
		}
		break;
	}
	case CLAM_LIMIT:
		snprintf(what, sizeof(what), "not scanned completely (%s)", j->name);
		log_msg(LOG_LEVEL_INFO, "clamav: %s: over a scan limit: %s (on_limit = %s)",
			call->msg->txid, j->name,
			j->st->on_limit == CLAM_LIMIT_ACCEPT ? "accept" :
			j->st->on_limit == CLAM_LIMIT_TEMPFAIL ? "tempfail" : "reject");
		if (j->st->on_limit == CLAM_LIMIT_ACCEPT) {
			clam_header(call->fx, j, what);
		} else if (j->st->on_limit == CLAM_LIMIT_TEMPFAIL) {
			res->verdict = VERDICT_TEMPFAIL;
			res->code = 452;
			str_copy(res->enhanced, "4.3.4", sizeof(res->enhanced));
			snprintf(res->text, sizeof(res->text),
				 "Message cannot be scanned for viruses now (%s)", j->name);
		} else {
			res->verdict = VERDICT_REJECT;
			res->code = 552;
			str_copy(res->enhanced, "5.3.4", sizeof(res->enhanced));
			snprintf(res->text, sizeof(res->text),
				 "Message too large or too deep to scan for viruses (%s)", j->name);
		}
		break;
	case CLAM_ERROR:
		/* the pipeline applies on_error: tempfail, or accept unscanned */
		log_msg(LOG_LEVEL_WARN, "clamav: %s: scan failed: %s (on_error = %s)",
			call->msg->txid, j->name,
			call->stage->on_error == ON_ERROR_ACCEPT ? "accept" : "tempfail");
		if (call->stage->on_error == ON_ERROR_ACCEPT) {
			snprintf(what, sizeof(what), "NOT scanned (%s)", j->name);
			clam_header(call->fx, j, what);
		}
		res->code = 451;
		str_copy(res->enhanced, "4.3.0", sizeof(res->enhanced));
		str_copy(res->text, "Virus scanner unavailable, try again later",
			 sizeof(res->text));
		status = CHECK_FAILED;
		break;
	}
	free(j);
	stage_call_done(call, status);
}

static enum check_status
clam_check(struct stage *stage, struct stage_call *call)
{
	const struct clam_stage *st = (const struct clam_stage *)stage;
	struct clam_job *j = xcalloc(1, sizeof(*j));

	j->st = st;
	j->body = call->msg->body;
	if (stage_submit_job(call, clam_work, clam_done, j) < 0) {
		free(j);
		str_copy(call->result.text, "Virus scanner busy, try again later",
			 sizeof(call->result.text));
		return CHECK_FAILED;
	}
	return CHECK_PENDING;
}

static void
clam_destroy(struct stage *stage)
{
	struct clam_stage *st = (struct clam_stage *)stage;

	if (st->db != NULL)
		clam_db_release(st->db);
	free(st->clamd_socket);
	free(st);
}

const struct stage_ops clamav_stage_ops = {
	.name = "clamav",
	.phases = PHASE_BIT(PHASE_DATA),
	.default_on_error = ON_ERROR_TEMPFAIL,
	.opts = clam_opts,
	.create = clam_create,
	.loop_init = clam_loop_init,
	.check = clam_check,
	.destroy = clam_destroy,
};
