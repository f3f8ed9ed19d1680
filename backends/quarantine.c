/*
 * quarantine.c — the quarantine store's metadata: what is kept beside each
 * held message, and how mxguardctl finds it again.
 *
 * Layout (doc/quarantine.md): the message is a Maildir file in
 * <quarantine_dir>/new/ named "<ID>,S=<size>" (the store writes it like any
 * delivery, backends/store.c); its metadata is <quarantine_dir>/meta/<ID>,
 * "key: value" lines:
 *
 *   mxguard-quarantine: 1
 *   id: 0ABCDEF123456789
 *   time: 1764640000
 *   client: 192.0.2.1
 *   client-port: 40000
 *   helo: mail.example.net
 *   from: sender@example.net
 *   rcpt: user@example.com        (one line per recipient)
 *   verdict: quarantine
 *   action: quarantine
 *   score: 1000.0
 *   hits: rules:GTUBE=1000.0
 *   reason: rules:GTUBE
 *   size: 1234
 *   event: 1764640100 released by root to user@example.com: 250 2.0.0 Ok
 *
 * A plain text block rather than JSON: every value is one line of
 * printable text (control characters are written as '?'), an admin can
 * read it with cat, and no library is needed. Unknown keys are ignored on
 * reading, so later versions can add some.
 *
 * The store writes the metadata (fsynced, renamed into meta/, meta/
 * fsynced) after the message is durable in tmp/ and before it is renamed
 * into new/: a message is never visible without its metadata.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backends/backends.h"

#define QUARANTINE_MAGIC "mxguard-quarantine"
#define QUARANTINE_META_MAX (1024 * 1024)

void quarantine_meta_clear(struct quarantine_meta *m)
{
	free(m->client_addr);
	free(m->helo);
	free(m->from);
	for (size_t i = 0; i < m->n_rcpts; i++)
		free(m->rcpts[i]);
	free(m->rcpts);
	free(m->verdict);
	free(m->action);
	free(m->hits);
	free(m->reason);
	for (size_t i = 0; i < m->n_events; i++)
		free(m->events[i]);
	free(m->events);
	memset(m, 0, sizeof(*m));
}

bool quarantine_id_valid(const char *id)
{
	size_t len = id != NULL ? strlen(id) : 0;

	return len == MX_ID_LEN - 1 &&
	       strspn(id, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == len;
}

/* One value on one line. */
static void meta_put(FILE *f, const char *key, const char *value)
{
	fprintf(f, "%s: ", key);
	for (const unsigned char *p = (const unsigned char *)(value != NULL ? value : ""); *p; p++)
		fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, f);
	fputc('\n', f);
}

char *quarantine_meta_format(const struct quarantine_meta *m)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	char num[64];

	if (f == NULL)
		abort(); /* only fails without memory */
	meta_put(f, QUARANTINE_MAGIC, "1");
	meta_put(f, "id", m->id);
	snprintf(num, sizeof(num), "%lld", m->time);
	meta_put(f, "time", num);
	meta_put(f, "client", m->client_addr);
	snprintf(num, sizeof(num), "%u", m->client_port);
	meta_put(f, "client-port", num);
	meta_put(f, "helo", m->helo);
	meta_put(f, "from", m->from);
	for (size_t i = 0; i < m->n_rcpts; i++)
		meta_put(f, "rcpt", m->rcpts[i]);
	meta_put(f, "verdict", m->verdict);
	meta_put(f, "action", m->action);
	snprintf(num, sizeof(num), "%.1f", m->score);
	meta_put(f, "score", num);
	meta_put(f, "hits", m->hits);
	meta_put(f, "reason", m->reason);
	snprintf(num, sizeof(num), "%llu", m->size);
	meta_put(f, "size", num);
	for (size_t i = 0; i < m->n_events; i++)
		meta_put(f, "event", m->events[i]);
	if (fclose(f) != 0)
		abort();
	return buf;
}

static void meta_push(char ***v, size_t *n, const char *s)
{
	*v = xrealloc(*v, (*n + 1) * sizeof(**v));
	(*v)[(*n)++] = xstrdup(s);
}

static void meta_note_event(struct quarantine_meta *m, const char *ev)
{
	const char *sp = strchr(ev, ' ');

	if (sp == NULL)
		return;
	if (strncmp(sp + 1, "released ", 9) == 0)
		m->released = true;
	else if (strncmp(sp + 1, "deleted ", 8) == 0)
		m->deleted = true;
}

int quarantine_meta_parse(const char *text, size_t len, struct quarantine_meta *m,
			  char **error_r)
{
	size_t pos = 0;
	bool magic = false;

	quarantine_meta_clear(m);
	while (pos < len) {
		const char *eol = memchr(text + pos, '\n', len - pos);
		size_t end = eol != NULL ? (size_t)(eol - text) : len;
		char *line = xstrndup(text + pos, end - pos);
		char *colon = strstr(line, ": ");
		pos = end + 1;
		if (colon == NULL) {
			free(line);
			continue;
		}
		*colon = '\0';
		const char *k = line, *v = colon + 2;
		char **slot = NULL;

		if (strcmp(k, QUARANTINE_MAGIC) == 0)
			magic = strcmp(v, "1") == 0;
		else if (strcmp(k, "id") == 0)
			str_copy(m->id, strlen(v) < sizeof(m->id) ? v : "", sizeof(m->id));
		else if (strcmp(k, "time") == 0)
			m->time = strtoll(v, NULL, 10);
		else if (strcmp(k, "client-port") == 0)
			m->client_port = (unsigned)strtoul(v, NULL, 10);
		else if (strcmp(k, "score") == 0)
			m->score = strtod(v, NULL);
		else if (strcmp(k, "size") == 0)
			m->size = strtoull(v, NULL, 10);
		else if (strcmp(k, "rcpt") == 0)
			meta_push(&m->rcpts, &m->n_rcpts, v);
		else if (strcmp(k, "event") == 0) {
			meta_push(&m->events, &m->n_events, v);
			meta_note_event(m, v);
		} else if (strcmp(k, "client") == 0)
			slot = &m->client_addr;
		else if (strcmp(k, "helo") == 0)
			slot = &m->helo;
		else if (strcmp(k, "from") == 0)
			slot = &m->from;
		else if (strcmp(k, "verdict") == 0)
			slot = &m->verdict;
		else if (strcmp(k, "action") == 0)
			slot = &m->action;
		else if (strcmp(k, "hits") == 0)
			slot = &m->hits;
		else if (strcmp(k, "reason") == 0)
			slot = &m->reason;
		if (slot != NULL) {
			free(*slot);
			*slot = xstrdup(v);
		}
		free(line);
	}
	if (!magic || !quarantine_id_valid(m->id)) {
		*error_r = xstrdup(!magic ? "not a quarantine metadata file" : "no valid id");
		quarantine_meta_clear(m);
		return -1;
	}
	/* every string present, so callers need no NULL checks */
	char **strs[] = { &m->client_addr, &m->helo, &m->from, &m->verdict,
			  &m->action, &m->hits, &m->reason };
	for (size_t i = 0; i < N_ELEMENTS(strs); i++) {
		if (*strs[i] == NULL)
			*strs[i] = xstrdup("");
	}
	return 0;
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	int saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

static int fail_errno(char **error_r, const char *what, const char *path)
{
	int saved = errno;

	*error_r = xasprintf("quarantine: %s %s: %s", what, path, strerror(saved));
	errno = saved;
	return -1;
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int quarantine_meta_write(const char *qdir, const struct quarantine_meta *m, bool do_fsync,
			  char **error_r)
{
	char *tmpdir = xasprintf("%s/tmp", qdir);
	char *metadir = xasprintf("%s/meta", qdir);
	char *tmp = xasprintf("%s/%s.meta", tmpdir, m->id);
	char *final = xasprintf("%s/%s", metadir, m->id);
	char *text = NULL;
	int fd = -1, rc = -1;

	if (!quarantine_id_valid(m->id)) {
		errno = EINVAL;
		*error_r = xasprintf("quarantine: invalid id \"%s\"", m->id);
		goto out;
	}
	if (fs_mkdir_p(tmpdir, 0700) < 0) {
		fail_errno(error_r, "mkdir", tmpdir);
		goto out;
	}
	if (fs_mkdir_p(metadir, 0700) < 0) {
		fail_errno(error_r, "mkdir", metadir);
		goto out;
	}
	text = quarantine_meta_format(m);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		fail_errno(error_r, "open", tmp);
		goto out;
	}
	if (write_all(fd, text, strlen(text)) < 0 || (do_fsync && fsync(fd) < 0)) {
		fail_errno(error_r, "write", tmp);
		goto out_unlink;
	}
	if (close(fd) < 0 && errno != EINTR) {
		fd = -1;
		fail_errno(error_r, "close", tmp);
		goto out_unlink;
	}
	fd = -1;
	if (rename(tmp, final) < 0) {
		fail_errno(error_r, "rename to", final);
		goto out_unlink;
	}
	if (do_fsync && fsync_dir(metadir) < 0) {
		fail_errno(error_r, "fsync", metadir);
		goto out; /* renamed: the caller decides what a failure means */
	}
	rc = 0;
	goto out;
out_unlink:
	{
		int saved = errno;
		if (fd >= 0)
			close(fd);
		fd = -1;
		unlink(tmp);
		errno = saved;
	}
out:
	if (fd >= 0)
		close(fd);
	free(text);
	free(tmp);
	free(final);
	free(tmpdir);
	free(metadir);
	return rc;
}

int quarantine_meta_read(const char *qdir, const char *id, struct quarantine_meta *m,
			 char **error_r)
{
	char *path;
	FILE *f;
	char *text;
	size_t len;
	int rc;

	quarantine_meta_clear(m);
	if (!quarantine_id_valid(id)) {
		*error_r = xasprintf("invalid quarantine id \"%s\"", id);
		errno = EINVAL;
		return -1;
	}
	path = xasprintf("%s/meta/%s", qdir, id);
	f = fopen(path, "re");
	if (f == NULL) {
		int saved = errno;
		if (saved == ENOENT)
			*error_r = xasprintf("no quarantined message %s", id);
		else
			fail_errno(error_r, "open", path);
		free(path);
		errno = saved;
		return -1;
	}
	text = xmalloc(QUARANTINE_META_MAX);
	len = fread(text, 1, QUARANTINE_META_MAX, f);
	if (ferror(f)) {
		fail_errno(error_r, "read", path);
		fclose(f);
		free(text);
		free(path);
		return -1;
	}
	fclose(f);
	rc = quarantine_meta_parse(text, len, m, error_r);
	if (rc == 0 && strcmp(m->id, id) != 0) {
		*error_r = xasprintf("%s: names id %s", path, m->id);
		quarantine_meta_clear(m);
		rc = -1;
	}
	if (rc < 0)
		errno = EINVAL;
	free(text);
	free(path);
	return rc;
}

int quarantine_meta_remove(const char *qdir, const char *id)
{
	if (!quarantine_id_valid(id)) {
		errno = EINVAL;
		return -1;
	}
	char *path = xasprintf("%s/meta/%s", qdir, id);
	char *metadir = xasprintf("%s/meta", qdir);
	int rc = unlink(path);

	if (rc == 0)
		(void)fsync_dir(metadir);
	free(path);
	free(metadir);
	return rc;
}

/* "<ID>" alone or followed by ',' (",S=size") or ':' (":2,flags"). */
static bool name_is_id(const char *name, const char *id)
{
	size_t n = strlen(id);

	return strncmp(name, id, n) == 0 && (name[n] == '\0' || name[n] == ',' || name[n] == ':');
}

int quarantine_message_path(const char *qdir, const char *id, char **path_r)
{
	static const char *const subs[] = { "new", "cur" };

	*path_r = NULL;
	if (!quarantine_id_valid(id)) {
		errno = EINVAL;
		return -1;
	}
	for (size_t i = 0; i < N_ELEMENTS(subs); i++) {
		char *dir = xasprintf("%s/%s", qdir, subs[i]);
		DIR *d = opendir(dir);
		struct dirent *de;

		if (d == NULL) {
			int saved = errno;
			free(dir);
			if (saved == ENOENT)
				continue;
			errno = saved;
			return -1;
		}
		while ((de = readdir(d)) != NULL) {
			if (name_is_id(de->d_name, id)) {
				*path_r = xasprintf("%s/%s", dir, de->d_name);
				break;
			}
		}
		closedir(d);
		free(dir);
		if (*path_r != NULL)
			return 1;
	}
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int quarantine_list_ids(const char *qdir, char ***ids_r, size_t *n_r, char **error_r)
{
	char *metadir = xasprintf("%s/meta", qdir);
	DIR *d = opendir(metadir);
	struct dirent *de;
	char **ids = NULL;
	size_t n = 0;

	*ids_r = NULL;
	*n_r = 0;
	if (d == NULL) {
		int rc = errno == ENOENT ? 0 : fail_errno(error_r, "open", metadir);
		free(metadir);
		return rc;
	}
	while ((de = readdir(d)) != NULL) {
		if (quarantine_id_valid(de->d_name))
			meta_push(&ids, &n, de->d_name);
	}
	closedir(d);
	free(metadir);
	/* ids begin with the time in base 36, fixed width: sorting them sorts by time */
	if (n > 0)
		qsort(ids, n, sizeof(*ids), cmp_str);
	*ids_r = ids;
	*n_r = n;
	return 0;
}

int quarantine_add_event(const char *qdir, const char *id, const char *text, char **error_r)
{
	struct quarantine_meta m = { 0 };
	char *ev;
	int rc;

	if (quarantine_meta_read(qdir, id, &m, error_r) < 0)
		return -1;
	ev = xasprintf("%lld %s", (long long)time(NULL), text);
	meta_push(&m.events, &m.n_events, ev);
	free(ev);
	rc = quarantine_meta_write(qdir, &m, true, error_r);
	quarantine_meta_clear(&m);
	return rc;
}
