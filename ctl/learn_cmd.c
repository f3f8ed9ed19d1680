/*
 * learn_cmd.c — `mxguardctl learn` and `mxguardctl unlearn`: teach the
 * learning classifier (doc/learning.md) from message files.
 *
 *   mxguardctl learn spam|ham [--user USER] FILE|MAILDIR|DIR...
 *   mxguardctl unlearn [--user USER] FILE|MAILDIR|DIR...
 *   mxguardctl learn --moves FILE [--user USER]
 *   mxguardctl learn --stats [--user USER]
 *   mxguardctl learn --score [--user USER] FILE|MAILDIR|DIR...
 *   mxguardctl learn --tokens FILE...
 *
 * --score prints "PROBABILITY BAND TOKENS_USED PATH" per message as the
 * stage would score it ("none" while the store has learnt too little);
 * --tokens prints a message's tokens, one a line (what the tokeniser
 * makes of it).
 * The store is the bayes section's path, or with --user that user's store
 * (user_dir/USER.db). A Maildir argument means its cur/ and new/; another
 * directory, the regular files in it; each in name order. Each message is
 * learnt once (its digest is kept): learning it again as the same class
 * does nothing, as the other class moves it.
 *
 * The moves file (written by the IMAP side when a user moves mail into or
 * out of Junk): one move a line, "TIME DIRECTION PATH", TIME the Unix time,
 * DIRECTION "in" (into Junk: learn as spam) or "out" (out of Junk: learn
 * as ham), PATH the message file, relative to the moves file's directory or
 * absolute, to the end of the line (spaces allowed). Blank lines and "#"
 * lines are skipped; a malformed line is reported and skipped. Reading the
 * same file again learns nothing twice.
 */
#include "config.h"

#include <confuse.h>
#include <dirent.h>
#include <errno.h>
#include <pwd.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ctl/ctl.h"
#include "daemon/daemon.h"
#include "filters/bayes.h"
#include "lib/lib.h"

#define LEARN_FILE_MAX (64u << 20)

struct learn_ctx {
	struct bayes_conf conf;
	struct bayes_store *store;
	char *path;
	bool quiet;
	unsigned long n[6]; /* by enum bayes_learn_result */
	enum { MODE_LEARN, MODE_SCORE, MODE_TOKENS } mode;
	uint32_t n_spam, n_ham;
	unsigned long errors;
	double secs;
};

static int learn_usage(const char *what)
{
	fprintf(stderr, "mxguardctl: %s\n"
		"usage: mxguardctl learn spam|ham [--user USER] FILE|MAILDIR...\n"
		"       mxguardctl unlearn [--user USER] FILE|MAILDIR...\n"
		"       mxguardctl learn --moves FILE [--user USER]\n"
		"       mxguardctl learn --stats [--user USER]\n"
		"       mxguardctl learn --score [--user USER] FILE|MAILDIR...\n"
		"       mxguardctl learn --tokens FILE...\n", what);
	return 2;
}

static char *slurp(const char *path, size_t *len_r, char **error_r)
{
	FILE *f = fopen(path, "rb");
	struct stat sb;
	char *buf;
	size_t len;

	if (f == NULL) {
		*error_r = xasprintf("%s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &sb) < 0 || !S_ISREG(sb.st_mode) ||
	    (uint64_t)sb.st_size > LEARN_FILE_MAX) {
		*error_r = xasprintf("%s: not a regular file of at most %u MiB", path,
				     LEARN_FILE_MAX >> 20);
		fclose(f);
		return NULL;
	}
	buf = xmalloc((size_t)sb.st_size + 1);
	len = fread(buf, 1, (size_t)sb.st_size, f);
	if (ferror(f)) {
		*error_r = xasprintf("%s: %s", path, strerror(errno));
		fclose(f);
		free(buf);
		return NULL;
	}
	fclose(f);
	*len_r = len;
	return buf;
}

static const char *const result_names[] = {
	[BAYES_LEARNT] = "learnt", [BAYES_RELEARNT] = "relearnt", [BAYES_ALREADY] = "already",
	[BAYES_UNLEARNT] = "unlearnt", [BAYES_NOT_LEARNT] = "not-learnt",
};

/* One message file. */
static void learn_file(struct learn_ctx *lc, const char *path, enum bayes_class cls,
		       bool unlearn)
{
	char *err = NULL, *data;
	size_t len;
	struct msgbody *b;
	const struct msgtext *t;
	struct bayes_tokens toks;
	unsigned char dg[32];
	enum bayes_learn_result r;

	if ((data = slurp(path, &len, &err)) == NULL) {
		fprintf(stderr, "mxguardctl: %s\n", err);
		free(err);
		lc->errors++;
		return;
	}
	b = msgbody_new("/tmp", SIZE_MAX / 2);
	if (msgbody_append(b, data, len) < 0 || msgbody_seal(b) < 0 ||
	    (t = msgbody_text(b)) == NULL) {
		fprintf(stderr, "mxguardctl: %s: cannot read the message\n", path);
		free(data);
		msgbody_free(&b);
		lc->errors++;
		return;
	}
	free(data);
	bayes_tokenize(t, &lc->conf.tok, &toks);
	if (lc->mode != MODE_LEARN) {
		if (lc->mode == MODE_TOKENS) {
			for (size_t i = 0; i < toks.n; i++)
				printf("%s\n", toks.tok[i]);
		} else if (lc->n_spam < (uint32_t)lc->conf.min_spam ||
			   lc->n_ham < (uint32_t)lc->conf.min_ham) {
			printf("none - 0 %s\n", path);
		} else {
			struct bayes_count *cnt = xcalloc(toks.n + 1, sizeof(*cnt));
			size_t used = 0;
			if (bayes_store_lookup(lc->store, toks.hash, toks.n, cnt) < 0) {
				fprintf(stderr, "mxguardctl: %s: cannot read the store\n", path);
				lc->errors++;
			} else {
				double p = bayes_classify(&lc->conf.params, cnt, toks.n, lc->n_spam,
							  lc->n_ham, &used);
				printf("%.9f %s %zu %s\n", p, bayes_band_of(&lc->conf, p)->name,
				       used, path);
			}
			free(cnt);
		}
		bayes_tokens_free(&toks);
		msgbody_free(&b);
		return;
	}
	bayes_digest(t, dg);
	r = bayes_store_learn(lc->store, dg, &toks, cls, unlearn, &err);
	bayes_tokens_free(&toks);
	msgbody_free(&b);
	if (r == BAYES_ERROR) {
		fprintf(stderr, "mxguardctl: %s: %s\n", path, err);
		free(err);
		lc->errors++;
		return;
	}
	lc->n[r]++;
	if (!lc->quiet)
		printf("%s %s\n", result_names[r], path);
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The regular files of dir, sorted. */
static void learn_dir(struct learn_ctx *lc, const char *dir, enum bayes_class cls, bool unlearn)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **names = NULL;
	size_t n = 0, cap = 0;

	if (d == NULL) {
		fprintf(stderr, "mxguardctl: %s: %s\n", dir, strerror(errno));
		lc->errors++;
		return;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			cap = cap == 0 ? 64 : cap * 2;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = xasprintf("%s/%s", dir, de->d_name);
	}
	closedir(d);
	if (n > 0)
		qsort(names, n, sizeof(*names), name_cmp);
	for (size_t i = 0; i < n; i++) {
		struct stat sb;
		if (stat(names[i], &sb) == 0 && S_ISREG(sb.st_mode))
			learn_file(lc, names[i], cls, unlearn);
		free(names[i]);
	}
	free(names);
}

static void learn_arg(struct learn_ctx *lc, const char *arg, enum bayes_class cls, bool unlearn)
{
	struct stat sb;

	if (stat(arg, &sb) < 0) {
		fprintf(stderr, "mxguardctl: %s: %s\n", arg, strerror(errno));
		lc->errors++;
		return;
	}
	if (!S_ISDIR(sb.st_mode)) {
		learn_file(lc, arg, cls, unlearn);
		return;
	}
	char *cur = xasprintf("%s/cur", arg), *nw = xasprintf("%s/new", arg);
	bool maildir = stat(cur, &sb) == 0 && S_ISDIR(sb.st_mode);
	if (maildir) {
		learn_dir(lc, cur, cls, unlearn);
		if (stat(nw, &sb) == 0 && S_ISDIR(sb.st_mode))
			learn_dir(lc, nw, cls, unlearn);
	} else {
		learn_dir(lc, arg, cls, unlearn);
	}
	free(cur);
	free(nw);
}

int ctl_learn_parse_move(const char *line, long long *time_r, enum bayes_class *cls_r,
			 const char **path_r)
{
	char *end;
	const char *p = line;

	errno = 0;
	*time_r = strtoll(p, &end, 10);
	if (end == p || errno != 0 || *time_r < 0 || (*end != ' ' && *end != '\t'))
		return -1;
	p = end;
	while (*p == ' ' || *p == '\t')
		p++;
	if (strncmp(p, "in", 2) == 0 && (p[2] == ' ' || p[2] == '\t')) {
		*cls_r = BAYES_SPAM;
		p += 2;
	} else if (strncmp(p, "out", 3) == 0 && (p[3] == ' ' || p[3] == '\t')) {
		*cls_r = BAYES_HAM;
		p += 3;
	} else {
		return -1;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0')
		return -1;
	*path_r = p;
	return 0;
}

static void learn_moves(struct learn_ctx *lc, const char *file)
{
	FILE *f = fopen(file, "r");
	char *line = NULL, *base;
	size_t cap = 0;
	ssize_t n;
	unsigned long lineno = 0;

	if (f == NULL) {
		fprintf(stderr, "mxguardctl: %s: %s\n", file, strerror(errno));
		lc->errors++;
		return;
	}
	const char *slash = strrchr(file, '/');
	base = slash != NULL ? xstrndup(file, (size_t)(slash - file)) : xstrdup(".");
	while ((n = getline(&line, &cap, f)) >= 0) {
		long long tm;
		enum bayes_class cls;
		const char *path;

		lineno++;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0 || line[0] == '#')
			continue;
		if ((size_t)n != strlen(line) || ctl_learn_parse_move(line, &tm, &cls, &path) < 0) {
			fprintf(stderr, "mxguardctl: %s:%lu: not TIME in|out PATH\n", file, lineno);
			lc->errors++;
			continue;
		}
		char *full = path[0] == '/' ? xstrdup(path) : xasprintf("%s/%s", base, path);
		learn_file(lc, full, cls, false);
		free(full);
	}
	free(line);
	free(base);
	fclose(f);
}

/* Run as root for a daemon that runs as `user`: the SQLite store (its
 * directory, the file, its log and index) must stay the daemon's, or it
 * could not read what was learnt. */
static void give_to_run_user(const struct mx_config *cfg, const char *path)
{
	const char *user = daemon_settings(cfg)->run_user;
	struct passwd *pw;

	if (geteuid() != 0 || user == NULL || user[0] == '\0' || strncmp(path, "redis:", 6) == 0 ||
	    (pw = getpwnam(user)) == NULL)
		return;
	char *dir = xstrdup(path), *sl = strrchr(dir, '/');
	if (sl != NULL && sl != dir) {
		*sl = '\0';
		if (chown(dir, pw->pw_uid, pw->pw_gid) < 0 && errno != ENOENT)
			fprintf(stderr, "mxguardctl: chown %s: %s\n", dir, strerror(errno));
	}
	free(dir);
	static const char *const sfx[] = { "", "-wal", "-shm" };
	for (size_t k = 0; k < N_ELEMENTS(sfx); k++) {
		char *f = xasprintf("%s%s", path, sfx[k]);
		if (chown(f, pw->pw_uid, pw->pw_gid) < 0 && errno != ENOENT)
			fprintf(stderr, "mxguardctl: chown %s: %s\n", f, strerror(errno));
		free(f);
	}
}

static int print_stats(struct learn_ctx *lc)
{
	struct bayes_store_stats s;

	if (bayes_store_stats(lc->store, &s) < 0) {
		fprintf(stderr, "mxguardctl: %s: cannot read the store\n", lc->path);
		return 1;
	}
	printf("store: %s\nspam: %u\nham: %u\ntokens: %llu\nmessages: %llu\n"
	       "learn_counter: %llu\nbytes: %llu\nbytes_per_token: %.1f\n"
	       "min_spam: %ld\nmin_ham: %ld\nready: %s\n",
	       lc->path, s.n_spam, s.n_ham, (unsigned long long)s.n_tokens,
	       (unsigned long long)s.n_seen, (unsigned long long)s.learn_counter,
	       (unsigned long long)s.file_bytes,
	       s.n_tokens > 0 ? (double)s.file_bytes / (double)s.n_tokens : 0.0,
	       lc->conf.min_spam, lc->conf.min_ham,
	       s.n_spam >= (uint32_t)lc->conf.min_spam && s.n_ham >= (uint32_t)lc->conf.min_ham ?
	       "yes" : "no");
	return 0;
}

int ctl_learn_main(struct mx_config *cfg, int argc, char **argv)
{
	struct learn_ctx lc = { 0 };
	bool unlearn = strcmp(argv[0], "unlearn") == 0, stats = false;
	const char *user = NULL, *moves = NULL;
	enum bayes_class cls = BAYES_SPAM;
	char *err = NULL;
	int i = 1, ret;

	if (!unlearn) {
		if (i < argc && strcmp(argv[i], "spam") == 0) {
			i++;
		} else if (i < argc && strcmp(argv[i], "ham") == 0) {
			cls = BAYES_HAM;
			i++;
		} else if (i < argc && strcmp(argv[i], "--stats") == 0) {
			stats = true;
			i++;
		} else if (i < argc && strcmp(argv[i], "--score") == 0) {
			lc.mode = MODE_SCORE;
			i++;
		} else if (i < argc && strcmp(argv[i], "--tokens") == 0) {
			lc.mode = MODE_TOKENS;
			i++;
		} else if (i + 1 < argc && strcmp(argv[i], "--moves") == 0) {
			moves = argv[i + 1];
			i += 2;
		} else {
			return learn_usage("learn: spam, ham, --stats or --moves FILE");
		}
	}
	for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
		if (strcmp(argv[i], "--user") == 0 && i + 1 < argc) {
			user = argv[++i];
		} else if (strcmp(argv[i], "--quiet") == 0) {
			lc.quiet = true;
		} else if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		} else {
			return learn_usage("unknown option");
		}
	}
	if ((stats || moves != NULL) ? i != argc : i == argc)
		return learn_usage(stats || moves != NULL ? "too many arguments" :
				   "name the messages (files, Maildirs, directories)");

	if (bayes_conf_load(cfg_getsec(cfg->cfg, "bayes"), &lc.conf, &err) < 0) {
		fprintf(stderr, "mxguardctl: %s\n", err);
		free(err);
		return 1;
	}
	if (lc.mode == MODE_TOKENS) {
		for (; i < argc; i++)
			learn_arg(&lc, argv[i], cls, false);
		bayes_conf_clear(&lc.conf);
		return lc.errors > 0 ? 1 : 0;
	}
	/* --score and --stats read; a missing SQLite store is made empty */
	lc.store = bayes_conf_open(&lc.conf, user, lc.mode == MODE_SCORE, lc.mode != MODE_SCORE,
				   &lc.path, &err);
	if (lc.store == NULL) {
		if (err != NULL)
			fprintf(stderr, "mxguardctl: %s\n", err);
		else
			fprintf(stderr, "mxguardctl: %s: no store (nothing learnt yet)\n", lc.path);
		free(err);
		free(lc.path);
		bayes_conf_clear(&lc.conf);
		return 1;
	}
	if (stats) {
		ret = print_stats(&lc);
	} else if (lc.mode == MODE_SCORE) {
		if (bayes_store_totals(lc.store, &lc.n_spam, &lc.n_ham) < 0) {
			fprintf(stderr, "mxguardctl: %s: cannot read the store\n", lc.path);
			lc.errors++;
		}
		for (; i < argc && lc.errors == 0; i++)
			learn_arg(&lc, argv[i], cls, false);
		ret = lc.errors > 0 ? 1 : 0;
	} else {
		if (bayes_store_batch(lc.store, true) < 0) {
			fprintf(stderr, "mxguardctl: %s: cannot begin\n", lc.path);
			lc.errors++;
		}
		if (moves != NULL) {
			learn_moves(&lc, moves);
		} else {
			for (; i < argc; i++)
				learn_arg(&lc, argv[i], cls, unlearn);
		}
		if (bayes_store_batch(lc.store, false) < 0) {
			fprintf(stderr, "mxguardctl: %s: cannot commit\n", lc.path);
			lc.errors++;
		}
		long dropped = bayes_store_expire(lc.store, (uint64_t)lc.conf.max_tokens);
		printf("%s: learnt %lu, relearnt %lu, already %lu, unlearnt %lu, not-learnt %lu, "
		       "errors %lu", lc.path, lc.n[BAYES_LEARNT], lc.n[BAYES_RELEARNT],
		       lc.n[BAYES_ALREADY], lc.n[BAYES_UNLEARNT], lc.n[BAYES_NOT_LEARNT],
		       lc.errors);
		if (dropped > 0)
			printf(", expired %ld tokens", dropped);
		printf("\n");
		ret = lc.errors > 0 ? 1 : 0;
	}
	bayes_store_close(&lc.store);
	give_to_run_user(cfg, lc.path);
	free(lc.path);
	bayes_conf_clear(&lc.conf);
	return ret;
}
