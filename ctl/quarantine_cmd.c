/*
 * quarantine_cmd.c — `mxguardctl quarantine list|show|release|delete|expire`.
 *
 * Reads the quarantine store the daemon writes (backends/quarantine.c:
 * <quarantine_dir>/new/<ID>,S=<size> and meta/<ID>; doc/quarantine.md).
 *
 * release delivers without the filters and without the daemon, and delete
 * removes the message: both are backends/quarantine_release.c's
 * (quarantine_release, quarantine_delete), which the web admin shares.
 *
 * Every release and delete is logged (log_msg: syslog, ident mxguardctl)
 * and recorded in the message's metadata as an "event:" line naming who
 * did it (SUDO_USER, else the login name of the real uid) and when. A
 * deleted message's metadata stays (with its event) until expire.
 *
 * IDs from the command line are checked by quarantine_id_valid() (16
 * characters of [0-9A-Z]) before any path is built from them, so they can
 * never name a file outside the quarantine directory.
 */
#include "config.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <stdarg.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backends/backends.h"
#include "ctl/ctl.h"
#include "filters/filters.h"

#define Q_EXIT_OK 0
#define Q_EXIT_FAIL 1
#define Q_EXIT_USAGE 2

static void ATTR_PRINTF(1, 2) q_error(const char *fmt, ...)
{
	va_list ap;

	fputs("mxguardctl: quarantine: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int q_usage(const char *what)
{
	if (what != NULL)
		q_error("%s", what);
	fputs("usage: mxguardctl [-c CONFIG] quarantine list [--since TIME] [--rcpt ADDR] "
	      "[--sender ADDR] [--reason TEXT] [--all]\n"
	      "       mxguardctl [-c CONFIG] quarantine show ID\n"
	      "       mxguardctl [-c CONFIG] quarantine release ID [--to RCPT]...\n"
	      "       mxguardctl [-c CONFIG] quarantine delete ID\n"
	      "       mxguardctl [-c CONFIG] quarantine expire\n",
	      stderr);
	return Q_EXIT_USAGE;
}

/* Who is doing this, for the log and the metadata. */
static const char *q_who(void)
{
	static char who[64];
	const char *sudo = getenv("SUDO_USER");
	struct passwd *pw;

	if (who[0] != '\0')
		return who;
	if (sudo != NULL && sudo[0] != '\0')
		snprintf(who, sizeof(who), "%s", sudo);
	else if ((pw = getpwuid(getuid())) != NULL)
		snprintf(who, sizeof(who), "%s", pw->pw_name);
	else
		snprintf(who, sizeof(who), "uid%lu", (unsigned long)getuid());
	for (char *p = who; *p; p++) {
		if (*p <= ' ' || *p == 0x7f)
			*p = '_';
	}
	return who;
}

static void q_time(long long t, char *out, size_t outsz)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(out, outsz, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* TIME: seconds since the epoch, YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS] (UTC),
 * or an age: N followed by s, m, h or d. -1 when it is none of them. */
static long long q_parse_time(const char *s)
{
	struct tm tm;
	char *end;
	long long n;

	if (s[0] >= '0' && s[0] <= '9') {
		errno = 0;
		n = strtoll(s, &end, 10);
		if (errno == 0 && end != s) {
			long long unit = 0;
			if (*end == '\0')
				return n;
			if (end[1] == '\0')
				unit = *end == 's' ? 1 : *end == 'm' ? 60 : *end == 'h' ? 3600 :
				       *end == 'd' ? 86400 : 0;
			if (unit != 0)
				return (long long)time(NULL) - n * unit;
		}
	}
	static const char *const fmts[] = { "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d" };
	for (size_t i = 0; i < N_ELEMENTS(fmts); i++) {
		memset(&tm, 0, sizeof(tm));
		end = strptime(s, fmts[i], &tm);
		if (end != NULL && (*end == '\0' || (*end == 'Z' && end[1] == '\0')))
			return (long long)timegm(&tm);
	}
	return -1;
}

/* ------------------------------------------------------------------ list */

static bool q_has_rcpt(const struct quarantine_meta *m, const char *addr)
{
	for (size_t i = 0; i < m->n_rcpts; i++) {
		if (strcasecmp(m->rcpts[i], addr) == 0)
			return true;
	}
	return false;
}

static int q_list(const char *qdir, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "since", required_argument, NULL, 's' },
		{ "rcpt", required_argument, NULL, 'r' },
		{ "sender", required_argument, NULL, 'f' },
		{ "reason", required_argument, NULL, 'R' },
		{ "all", no_argument, NULL, 'a' },
		{ NULL, 0, NULL, 0 },
	};
	long long since = -1;
	const char *rcpt = NULL, *sender = NULL, *reason = NULL;
	bool all = false;
	char **ids = NULL, *error = NULL;
	size_t n = 0;
	int opt;

	optind = 0; /* 0: GNU getopt starts over */
	while ((opt = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			if ((since = q_parse_time(optarg)) < 0) {
				q_error("list: --since %s: expected seconds since the epoch, "
					"YYYY-MM-DD[THH:MM[:SS]] (UTC) or an age like 2d", optarg);
				return Q_EXIT_USAGE;
			}
			break;
		case 'r': rcpt = optarg; break;
		case 'f': sender = optarg; break;
		case 'R': reason = optarg; break;
		case 'a': all = true; break;
		default: return q_usage(NULL);
		}
	}
	if (optind != argc)
		return q_usage("list: too many arguments");
	if (quarantine_list_ids(qdir, &ids, &n, &error) < 0) {
		q_error("%s", error);
		free(error);
		return Q_EXIT_FAIL;
	}
	int ret = Q_EXIT_OK;
	for (size_t i = 0; i < n; i++) {
		struct quarantine_meta m = { 0 };
		char *path = NULL, when[32];

		if (quarantine_meta_read(qdir, ids[i], &m, &error) < 0) {
			q_error("%s: %s", ids[i], error);
			free(error);
			error = NULL;
			ret = Q_EXIT_FAIL;
			free(ids[i]);
			continue;
		}
		int found = quarantine_message_path(qdir, ids[i], &path);
		free(path);
		const char *status = m.deleted ? "deleted" : found <= 0 ? "missing" :
				     m.released ? "released" : "held";
		bool show = (all || (found > 0 && !m.deleted)) && (since < 0 || m.time >= since) &&
			    (rcpt == NULL || q_has_rcpt(&m, rcpt)) &&
			    (sender == NULL || strcasecmp(m.from, sender) == 0) &&
			    (reason == NULL || strcasestr(m.reason, reason) != NULL);
		if (show) {
			char *rcpts = quarantine_join_rcpts(m.rcpts, m.n_rcpts);
			q_time(m.time, when, sizeof(when));
			printf("%s\t%s\t<%s>\t%s\t%s\t%.1f\t%s\n", m.id, when, m.from,
			       rcpts[0] ? rcpts : "-", m.reason[0] ? m.reason : "-", m.score, status);
			free(rcpts);
		}
		quarantine_meta_clear(&m);
		free(ids[i]);
	}
	free(ids);
	return ret;
}

/* ------------------------------------------------------------------ show */

static int q_show(const char *qdir, const char *id)
{
	struct quarantine_meta m = { 0 };
	char *error = NULL, *path = NULL, *text;
	FILE *f;
	char line[4096];

	if (quarantine_meta_read(qdir, id, &m, &error) < 0) {
		q_error("%s", error);
		free(error);
		return Q_EXIT_FAIL;
	}
	text = quarantine_meta_format(&m);
	fputs(text, stdout);
	free(text);
	int found = quarantine_message_path(qdir, id, &path);
	printf("file: %s\n\n", found > 0 ? path : "-");
	if (found > 0 && (f = fopen(path, "re")) != NULL) {
		/* the header block */
		while (fgets(line, sizeof(line), f) != NULL) {
			if (line[0] == '\n' || (line[0] == '\r' && line[1] == '\n'))
				break;
			fputs(line, stdout);
		}
		fclose(f);
	}
	free(path);
	quarantine_meta_clear(&m);
	return Q_EXIT_OK;
}

/* ---------------------------------------------------------------- delete */

static int q_delete(const char *qdir, const char *id)
{
	char *error = NULL;

	if (quarantine_delete(qdir, id, q_who(), &error) < 0) {
		q_error("%s", error);
		free(error);
		return Q_EXIT_FAIL;
	}
	printf("deleted %s\n", id);
	return Q_EXIT_OK;
}

/* ---------------------------------------------------------------- expire */

static int q_expire(const struct mx_config *cfg, const char *qdir)
{
	long days = backends_settings(cfg)->quarantine_retention;
	long long cutoff = (long long)time(NULL) - (long long)days * 86400;
	char **ids = NULL, *error = NULL;
	size_t n = 0, removed = 0;
	int ret = Q_EXIT_OK;

	if (quarantine_list_ids(qdir, &ids, &n, &error) < 0) {
		q_error("%s", error);
		free(error);
		return Q_EXIT_FAIL;
	}
	for (size_t i = 0; i < n; i++) {
		struct quarantine_meta m = { 0 };
		char *path = NULL;
		long long held;

		if (quarantine_meta_read(qdir, ids[i], &m, &error) == 0) {
			held = m.time;
		} else {
			/* unreadable metadata: its file's age decides */
			struct stat st;
			char *mp = xasprintf("%s/meta/%s", qdir, ids[i]);
			held = stat(mp, &st) == 0 ? (long long)st.st_mtime : (long long)time(NULL);
			free(mp);
			free(error);
			error = NULL;
		}
		quarantine_meta_clear(&m);
		if (held >= cutoff) {
			free(ids[i]);
			continue;
		}
		/* the message first, then its metadata: never a message without it */
		if (quarantine_message_path(qdir, ids[i], &path) > 0 && unlink(path) < 0 &&
		    errno != ENOENT) {
			q_error("unlink %s: %s", path, strerror(errno));
			ret = Q_EXIT_FAIL;
		} else if (quarantine_meta_remove(qdir, ids[i]) < 0 && errno != ENOENT) {
			q_error("%s: remove metadata: %s", ids[i], strerror(errno));
			ret = Q_EXIT_FAIL;
		} else {
			log_msg(LOG_LEVEL_INFO, "quarantine: %s expired (older than %ld days)", ids[i],
				days);
			printf("expired %s\n", ids[i]);
			removed++;
		}
		free(path);
		free(ids[i]);
	}
	free(ids);
	log_msg(LOG_LEVEL_INFO, "quarantine: expire removed %zu of %zu (retention %ld days)",
		removed, n, days);
	return ret;
}

/* --------------------------------------------------------------- release */

static int q_release(const struct mx_config *cfg, const char *qdir, const char *id,
		     char **to, size_t n_to)
{
	struct quarantine_released out;
	char *error = NULL;
	int rc = quarantine_release(cfg, qdir, id, (const char *const *)to, n_to, q_who(), &out,
				    &error);

	if (rc == -1) {
		q_error("%s", error);
		free(error);
		return Q_EXIT_FAIL;
	}
	printf("released %s to %s as %s\n", id, out.to, out.newid);
	quarantine_released_clear(&out);
	if (rc == -2) {
		q_error("%s: released, but the metadata was not updated: %s", id, error);
		free(error);
		return Q_EXIT_FAIL;
	}
	return Q_EXIT_OK;
}

/* ------------------------------------------------------------------ main */

static bool q_check_id(const char *id)
{
	if (quarantine_id_valid(id))
		return true;
	q_error("invalid id \"%s\" (16 characters of 0-9 and A-Z, as list shows them)", id);
	return false;
}

int ctl_quarantine_main(struct mx_config *cfg, int argc, char **argv)
{
	const char *qdir = backends_settings(cfg)->quarantine_dir;
	const char *sub;

	if (argc < 2)
		return q_usage("missing subcommand");
	sub = argv[1];
	log_open("mxguardctl", false, LOG_LEVEL_INFO);
	if (strcmp(sub, "list") == 0)
		return q_list(qdir, argc - 1, argv + 1);
	if (strcmp(sub, "expire") == 0) {
		if (argc != 2)
			return q_usage("expire: too many arguments");
		return q_expire(cfg, qdir);
	}
	if (strcmp(sub, "show") == 0 || strcmp(sub, "delete") == 0) {
		if (argc != 3)
			return q_usage(argc < 3 ? "missing ID" : "too many arguments");
		if (!q_check_id(argv[2]))
			return Q_EXIT_FAIL;
		return sub[0] == 's' ? q_show(qdir, argv[2]) : q_delete(qdir, argv[2]);
	}
	if (strcmp(sub, "release") == 0) {
		static const struct option opts[] = {
			{ "to", required_argument, NULL, 't' },
			{ NULL, 0, NULL, 0 },
		};
		char **to = NULL;
		size_t n_to = 0;
		int opt, ret;

		optind = 0; /* 0: GNU getopt starts over (main used "+" ordering) */
		while ((opt = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
			if (opt != 't') {
				for (size_t i = 0; i < n_to; i++)
					free(to[i]);
				free(to);
				return q_usage(NULL);
			}
			to = xrealloc(to, (n_to + 1) * sizeof(*to));
			to[n_to++] = xstrdup(optarg);
		}
		if (optind + 1 != argc - 1) {
			for (size_t i = 0; i < n_to; i++)
				free(to[i]);
			free(to);
			return q_usage(optind + 1 > argc - 1 ? "release: missing ID" :
				       "release: too many arguments");
		}
		const char *id = argv[1 + optind];
		ret = q_check_id(id) ? Q_EXIT_OK : Q_EXIT_FAIL;
		if (ret == Q_EXIT_OK) {
			evthread_use_pthreads();
			ret = q_release(cfg, qdir, id, to, n_to);
		}
		for (size_t i = 0; i < n_to; i++)
			free(to[i]);
		free(to);
		return ret;
	}
	q_error("unknown subcommand: %s", sub);
	return q_usage(NULL);
}
