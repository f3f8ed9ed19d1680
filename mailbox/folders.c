/*
 * folders.c — the Maildir++ side of the store that IMAP needs beyond
 * POP3's INBOX: folder names and their directories, listing, creating,
 * deleting and renaming folders, the subscription file, APPEND and COPY
 * with UIDs given under the destination's list lock, and the junk log.
 *
 * Names come from clients: mailbox_folder_name_ok is the only way from a
 * name to a path, and refuses anything that could leave the user's root
 * (a "/", a ".." level) or that Maildir++ cannot hold. Blocking: called
 * from the worker pool.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"
#include "mailbox/mailbox.h"

/* a folder being deleted: out of sight of LIST (and not a name a client
 * can create: mailbox_folder_name_ok refuses no "~", but this prefix is
 * skipped by the listing, and removed by the delete that made it) */
#define DELETED_PREFIX ".~deleted-"

static char *folder_err(const char *what, const char *path)
{
	int err = errno;
	char buf[128];
	char *s = xasprintf("%s %s: %s", what, path, strerror_r(err, buf, sizeof(buf)));
	errno = err;
	return s;
}

bool mailbox_folder_is_inbox(const char *name)
{
	return strcasecmp(name, "INBOX") == 0;
}

bool mailbox_folder_name_ok(const char *name)
{
	size_t len = strlen(name);
	const char *level = name;

	if (len == 0 || len > MAILBOX_FOLDER_NAME_MAX)
		return false;
	for (const char *p = name;; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '.' || c == '\0') {
			size_t l = (size_t)(p - level);
			if (l == 0 || (l == 2 && level[0] == '.' && level[1] == '.'))
				return false;
			if (c == '\0')
				break;
			level = p + 1;
			continue;
		}
		if (c < 0x20 || c >= 0x7f || c == '/' || c == '\\' || c == '%' || c == '*' || c == '"')
			return false;
	}
	return true;
}

char *mailbox_folder_dir(const char *root, const char *name)
{
	if (mailbox_folder_is_inbox(name))
		return xstrdup(root);
	if (!mailbox_folder_name_ok(name))
		return NULL;
	return xasprintf("%s/.%s", root, name);
}

int mailbox_folder_exists(const char *root, const char *name)
{
	char *dir = mailbox_folder_dir(root, name);
	struct stat sb;
	int rc;

	if (dir == NULL)
		return 0;
	if (mailbox_folder_is_inbox(name)) {
		free(dir);
		return 1; /* made at login */
	}
	char *cur = xasprintf("%s/cur", dir);
	rc = lstat(cur, &sb) == 0 && S_ISDIR(sb.st_mode) ? 1 : (errno == ENOENT || errno == ENOTDIR ? 0 : -1);
	free(cur);
	free(dir);
	return rc;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

void mailbox_names_free(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

int mailbox_folder_list(const char *root, char ***names_r, size_t *n_r, char **error_r)
{
	DIR *d = opendir(root);
	struct dirent *de;
	char **v = NULL;
	size_t n = 0, cap = 0;

	*names_r = NULL;
	*n_r = 0;
	if (d == NULL) {
		if (errno == ENOENT)
			return 0;
		*error_r = folder_err("opendir", root);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		struct stat sb;
		if (de->d_name[0] != '.' || !mailbox_folder_name_ok(de->d_name + 1) ||
		    mailbox_folder_is_inbox(de->d_name + 1) || strncmp(de->d_name, DELETED_PREFIX, strlen(DELETED_PREFIX)) == 0)
			continue;
		char *cur = xasprintf("%s/%s/cur", root, de->d_name);
		bool ok = lstat(cur, &sb) == 0 && S_ISDIR(sb.st_mode);
		free(cur);
		if (!ok)
			continue;
		if (n >= 100000)
			break; /* bounded */
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[n++] = xstrdup(de->d_name + 1);
	}
	closedir(d);
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_str);
	*names_r = v;
	*n_r = n;
	return 0;
}

static int fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

int mailbox_folder_create(const char *root, const char *name, char **error_r)
{
	char *dir = mailbox_folder_dir(root, name);
	int rc = -1;

	if (dir == NULL || mailbox_folder_is_inbox(name)) {
		free(dir);
		return -2;
	}
	if (fs_mkdir_p(root, 0700) < 0) {
		*error_r = folder_err("mkdir", root);
		free(dir);
		return -1;
	}
	if (mkdir(dir, 0700) < 0) {
		if (errno == EEXIST) {
			rc = mailbox_folder_exists(root, name) == 1 ? -2 : 0;
			if (rc == -2) {
				free(dir);
				return -2;
			}
		} else {
			*error_r = folder_err("mkdir", dir);
			free(dir);
			return -1;
		}
	}
	static const char *const subs[] = { "tmp", "new", "cur" };
	for (size_t i = 0; i < N_ELEMENTS(subs); i++) {
		char *p = xasprintf("%s/%s", dir, subs[i]);
		if (mkdir(p, 0700) < 0 && errno != EEXIST) {
			*error_r = folder_err("mkdir", p);
			free(p);
			free(dir);
			return -1;
		}
		free(p);
	}
	/* Maildir++ marks a folder with an empty "maildirfolder" file */
	char *mf = xasprintf("%s/maildirfolder", dir);
	int fd = open(mf, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd >= 0)
		close(fd);
	free(mf);
	(void)fsync_dir(dir);
	(void)fsync_dir(root);
	free(dir);
	return 0;
}

/* Remove a folder directory: its three subdirectories' files, its own
 * files, then the directories (a folder's children are siblings in
 * Maildir++, so nothing below is another folder). */
static int remove_folder_dir(const char *dir, char **error_r)
{
	static const char *const subs[] = { "tmp", "new", "cur", "" };
	for (size_t i = 0; i < N_ELEMENTS(subs); i++) {
		char *p = subs[i][0] ? xasprintf("%s/%s", dir, subs[i]) : xstrdup(dir);
		DIR *d = opendir(p);
		struct dirent *de;
		if (d == NULL) {
			free(p);
			continue;
		}
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			char *f = xasprintf("%s/%s", p, de->d_name);
			if (unlinkat(AT_FDCWD, f, 0) < 0 && errno != EISDIR && errno != ENOENT) {
				struct stat sb;
				if (lstat(f, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
					*error_r = folder_err("unlink", f);
					free(f);
					closedir(d);
					free(p);
					return -1;
				}
			}
			free(f);
		}
		closedir(d);
		if (subs[i][0] && rmdir(p) < 0 && errno != ENOENT) {
			*error_r = folder_err("rmdir", p);
			free(p);
			return -1;
		}
		free(p);
	}
	if (rmdir(dir) < 0 && errno != ENOENT) {
		*error_r = folder_err("rmdir", dir);
		return -1;
	}
	return 0;
}

int mailbox_folder_delete(const char *root, const char *name, char **error_r)
{
	char *dir, *gone;
	int rc;

	if (mailbox_folder_is_inbox(name) || mailbox_folder_exists(root, name) != 1)
		return -2;
	dir = mailbox_folder_dir(root, name);
	/* out of sight first (one rename), then removed at leisure: another
	 * session never sees half a folder */
	static unsigned long deletions;
	gone = xasprintf("%s/%s%ld-%d-%lu", root, DELETED_PREFIX, (long)time(NULL), (int)getpid(),
			 __atomic_add_fetch(&deletions, 1, __ATOMIC_RELAXED));
	if (rename(dir, gone) < 0) {
		*error_r = folder_err("rename", dir);
		free(dir);
		free(gone);
		return -1;
	}
	rc = remove_folder_dir(gone, error_r);
	(void)fsync_dir(root);
	free(dir);
	free(gone);
	return rc;
}

int mailbox_folder_rename(const char *root, const char *from, const char *to, char **error_r)
{
	char **names;
	size_t n, fl = strlen(from);
	int rc = 0;

	if (mailbox_folder_is_inbox(from) || mailbox_folder_is_inbox(to) || !mailbox_folder_name_ok(to))
		return -2;
	if (mailbox_folder_exists(root, from) != 1)
		return -2;
	if (mailbox_folder_exists(root, to) == 1)
		return -3;
	if (mailbox_folder_list(root, &names, &n, error_r) < 0)
		return -1;
	/* the folder and its children ("from.x"): each its own directory */
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (strncmp(names[i], from, fl) != 0 || (names[i][fl] != '\0' && names[i][fl] != '.'))
			continue;
		char *nn = xasprintf("%s%s", to, names[i] + fl);
		char *a = mailbox_folder_dir(root, names[i]), *b = mailbox_folder_dir(root, nn);
		if (b == NULL) {
			rc = -2;
		} else if (rename(a, b) < 0) {
			*error_r = folder_err("rename", a);
			rc = -1;
		}
		free(a);
		free(b);
		free(nn);
	}
	mailbox_names_free(names, n);
	(void)fsync_dir(root);
	return rc;
}

int mailbox_folder_rename_inbox(const char *root, const char *to, char **error_r)
{
	char *dst;
	int rc = mailbox_folder_create(root, to, error_r);

	if (rc < 0)
		return rc == -2 ? -3 : -1;
	dst = mailbox_folder_dir(root, to);
	/* INBOX's messages move; INBOX stays, empty (RFC 3501 6.3.5) */
	int lock_fd = mailbox_lock(root, false, error_r);
	if (lock_fd < 0) {
		free(dst);
		return -1;
	}
	rc = 0;
	for (int k = 0; k < 2 && rc == 0; k++) {
		const char *sub = k == 0 ? "cur" : "new";
		char *d = xasprintf("%s/%s", root, sub);
		DIR *dir = opendir(d);
		struct dirent *de;
		while (dir != NULL && (de = readdir(dir)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			char *from = xasprintf("%s/%s", d, de->d_name);
			char *into = strchr(de->d_name, ':') != NULL ? xasprintf("%s/cur/%s", dst, de->d_name)
								    : xasprintf("%s/cur/%s:2,", dst, de->d_name);
			if (rename(from, into) < 0 && errno != ENOENT) {
				*error_r = folder_err("rename", from);
				rc = -1;
			}
			free(from);
			free(into);
			if (rc < 0)
				break;
		}
		if (dir != NULL)
			closedir(dir);
		(void)fsync_dir(d);
		free(d);
	}
	char *c = xasprintf("%s/cur", dst);
	(void)fsync_dir(c);
	free(c);
	close(lock_fd);
	free(dst);
	return rc;
}

int mailbox_subscriptions_read(const char *root, char ***names_r, size_t *n_r)
{
	char *path = xasprintf("%s/%s", root, MAILBOX_SUBSCRIPTIONS);
	FILE *f = fopen(path, "re");
	char line[MAILBOX_FOLDER_NAME_MAX + 8];
	char **v = NULL;
	size_t n = 0, cap = 0;

	free(path);
	*names_r = NULL;
	*n_r = 0;
	if (f == NULL)
		return errno == ENOENT ? 0 : -1;
	while (fgets(line, sizeof(line), f) != NULL && n < 100000) {
		line[strcspn(line, "\r\n")] = '\0';
		if (!mailbox_folder_is_inbox(line) && !mailbox_folder_name_ok(line))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[n++] = xstrdup(line);
	}
	fclose(f);
	*names_r = v;
	*n_r = n;
	return 0;
}

int mailbox_subscribe(const char *root, const char *name, bool subscribe, char **error_r)
{
	char **names;
	size_t n;
	char *path, *tmp;
	FILE *f;
	int lock_fd;
	bool have = false;

	if (!mailbox_folder_is_inbox(name) && !mailbox_folder_name_ok(name))
		return -2;
	/* the root's list lock orders writers of the file */
	lock_fd = mailbox_lock(root, true, error_r);
	if (lock_fd < 0)
		return -1;
	if (mailbox_subscriptions_read(root, &names, &n) < 0) {
		*error_r = folder_err("read", MAILBOX_SUBSCRIPTIONS);
		close(lock_fd);
		return -1;
	}
	path = xasprintf("%s/%s", root, MAILBOX_SUBSCRIPTIONS);
	tmp = xasprintf("%s.tmp", path);
	f = fopen(tmp, "we");
	if (f == NULL) {
		*error_r = folder_err("create", tmp);
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(names[i], name) == 0) {
			have = true;
			if (!subscribe)
				continue;
		}
		fprintf(f, "%s\n", names[i]);
	}
	if (subscribe && !have)
		fprintf(f, "%s\n", name);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0 || rename(tmp, path) < 0) {
		*error_r = folder_err("write", tmp);
		unlink(tmp);
		goto fail;
	}
	close(lock_fd);
	mailbox_names_free(names, n);
	free(path);
	free(tmp);
	return 0;
fail:
	close(lock_fd);
	mailbox_names_free(names, n);
	free(path);
	free(tmp);
	return -1;
}

/* ------------------------------------------------------ APPEND, COPY */

/* A file name of our own for a new message: unique per host and process. */
static char *unique_base(void)
{
	static unsigned long counter;
	struct timespec ts;
	char host[64];

	clock_gettime(CLOCK_REALTIME, &ts);
	if (gethostname(host, sizeof(host)) < 0)
		str_copy(host, "localhost", sizeof(host));
	host[sizeof(host) - 1] = '\0';
	for (char *p = host; *p; p++)
		if (*p == '/' || *p == ':' || *p == '.')
			*p = '_';
	unsigned long c = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
	return xasprintf("%lld.M%09ldP%dQ%lu.%s", (long long)ts.tv_sec, ts.tv_nsec, (int)getpid(), c, host);
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int mailbox_append(const char *dir, const char *data, size_t len, const char *flags,
		   const char *const *keywords, size_t n_keywords, time_t internaldate,
		   uint32_t *uid_r, uint32_t *uidvalidity_r, char **error_r)
{
	char all[64];
	char *base = unique_base();
	char *tmp = xasprintf("%s/tmp/%s", dir, base);
	char *cur = NULL;
	struct mailbox *mb = NULL;
	int fd, lock_fd = -1, rc = -1;

	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		*error_r = folder_err("create", tmp);
		goto out;
	}
	/* stored with LF line ends, like the delivery side writes them */
	{
		char *buf = xmalloc(len + 1);
		size_t o = 0;
		for (size_t i = 0; i < len; i++) {
			if (data[i] == '\r' && i + 1 < len && data[i + 1] == '\n')
				continue;
			buf[o++] = data[i];
		}
		int w = write_all(fd, buf, o);
		free(buf);
		if (w < 0 || fsync(fd) < 0) {
			*error_r = folder_err("write", tmp);
			close(fd);
			unlink(tmp);
			goto out;
		}
	}
	{
		struct timespec times[2] = { { internaldate, 0 }, { internaldate, 0 } };
		(void)futimens(fd, times);
	}
	close(fd);
	lock_fd = mailbox_lock(dir, true, error_r);
	if (lock_fd < 0) {
		unlink(tmp);
		goto out;
	}
	/* the keywords' letters, given under the lock */
	{
		char kl[MAILBOX_KEYWORDS_MAX + 1];
		size_t nk = n_keywords > MAILBOX_KEYWORDS_MAX ? MAILBOX_KEYWORDS_MAX : n_keywords;
		if (mailbox_keywords_letters_locked(dir, keywords, nk, kl, error_r) < 0) {
			unlink(tmp);
			goto out;
		}
		snprintf(all, sizeof(all), "%s%s", flags, kl);
		flags = all;
	}
	{
		/* the letters sorted, as the Maildir spec has them */
		char sorted[32];
		size_t o = 0;
		for (int c = 'A'; c <= 'z' && o + 1 < sizeof(sorted); c++)
			if (((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) && strchr(flags, c) != NULL)
				sorted[o++] = (char)c;
		sorted[o] = '\0';
		cur = xasprintf("%s/cur/%s:2,%s", dir, base, sorted);
	}
	if (rename(tmp, cur) < 0) {
		*error_r = folder_err("rename", tmp);
		unlink(tmp);
		goto out;
	}
	{
		char *c = xasprintf("%s/cur", dir);
		(void)fsync_dir(c);
		free(c);
	}
	const char *prefer[1] = { base };
	if (mailbox_sync_locked(dir, prefer, 1, &mb, error_r) < 0)
		goto out;
	*uid_r = 0;
	for (size_t i = mb->n_msgs; i-- > 0;) {
		if (strcmp(mb->msgs[i].base, base) == 0) {
			*uid_r = mb->msgs[i].uid;
			break;
		}
	}
	*uidvalidity_r = mb->uidvalidity;
	rc = *uid_r != 0 ? 0 : -1;
	if (rc < 0)
		*error_r = xasprintf("%s: appended message vanished", dir);
out:
	if (lock_fd >= 0)
		close(lock_fd);
	mailbox_free(&mb);
	free(base);
	free(tmp);
	free(cur);
	return rc;
}

/* Copy a file's bytes (a link across file systems cannot be made). */
static int copy_file(const char *from, const char *to)
{
	int in = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	int out, rc = -1;
	char buf[65536];
	struct stat sb;

	if (in < 0)
		return -1;
	out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (out < 0) {
		close(in);
		return -1;
	}
	for (;;) {
		ssize_t n = read(in, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto done;
		if (n == 0)
			break;
		if (write_all(out, buf, (size_t)n) < 0)
			goto done;
	}
	if (fsync(out) < 0)
		goto done;
	if (fstat(in, &sb) == 0) {
		struct timespec times[2] = { sb.st_atim, sb.st_mtim };
		(void)futimens(out, times);
	}
	rc = 0;
done:
	close(in);
	close(out);
	if (rc < 0)
		unlink(to);
	return rc;
}

int mailbox_copy(struct mailbox *src, const size_t *idx, size_t n, const char *dst_dir,
		 uint32_t *uids_r, uint32_t *uidvalidity_r, char **error_r)
{
	char **bases = xcalloc(n + 1, sizeof(*bases));
	struct mailbox *mb = NULL;
	int lock_fd, rc = -1;

	lock_fd = mailbox_lock(dst_dir, true, error_r);
	if (lock_fd < 0) {
		free(bases);
		return -1;
	}
	/* the source's keyword letters in the destination's terms */
	char map[MAILBOX_KEYWORDS_MAX];
	memset(map, 0, sizeof(map));
	{
		const char *names[MAILBOX_KEYWORDS_MAX];
		size_t idx_of[MAILBOX_KEYWORDS_MAX], nn = 0;
		char letters[MAILBOX_KEYWORDS_MAX + 1];
		/* only the keywords the copied messages carry */
		bool used[MAILBOX_KEYWORDS_MAX] = { false };
		for (size_t j = 0; j < n; j++)
			for (const char *f = src->msgs[idx[j]].flags; *f; f++)
				if (*f >= 'a' && *f <= 'z')
					used[*f - 'a'] = true;
		for (size_t k = 0; k < MAILBOX_KEYWORDS_MAX; k++) {
			if (used[k] && src->keywords[k] != NULL) {
				idx_of[nn] = k;
				names[nn++] = src->keywords[k];
			}
		}
		if (nn > 0 && mailbox_keywords_letters_locked(dst_dir, names, nn, letters, error_r) == 0) {
			for (size_t j = 0; j < nn && letters[j] != '\0'; j++)
				map[idx_of[j]] = letters[j];
		}
	}
	for (size_t k = 0; k < n; k++) {
		struct mailbox_msg *m = &src->msgs[idx[k]];
		int fd = mailbox_msg_open(src, idx[k]); /* follows a rename */
		uids_r[k] = 0;
		if (fd < 0)
			continue; /* expunged meanwhile */
		close(fd);
		char *from = mailbox_msg_path(src, idx[k]);
		char *base = unique_base();
		char fl[64];
		size_t o = 0;
		for (const char *f = m->flags; *f && o + 1 < sizeof(fl); f++) {
			if (*f >= 'a' && *f <= 'z') {
				if (map[*f - 'a'] != 0)
					fl[o++] = map[*f - 'a'];
			} else {
				fl[o++] = *f;
			}
		}
		fl[o] = '\0';
		/* sorted again: translated letters may be out of order */
		char sfl[64];
		size_t so = 0;
		for (int c = 'A'; c <= 'z'; c++)
			if (((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) && strchr(fl, c) != NULL)
				sfl[so++] = (char)c;
		sfl[so] = '\0';
		char *to = xasprintf("%s/cur/%s:2,%s", dst_dir, base, sfl);
		int r = link(from, to);
		if (r < 0 && errno != ENOENT)
			r = copy_file(from, to);
		free(from);
		free(to);
		if (r < 0) {
			free(base);
			continue;
		}
		bases[k] = base;
	}
	{
		char *c = xasprintf("%s/cur", dst_dir);
		(void)fsync_dir(c);
		free(c);
	}
	{
		const char **prefer = xcalloc(n + 1, sizeof(*prefer));
		size_t np = 0;
		for (size_t k = 0; k < n; k++)
			if (bases[k] != NULL)
				prefer[np++] = bases[k];
		rc = mailbox_sync_locked(dst_dir, prefer, np, &mb, error_r);
		free(prefer);
	}
	if (rc == 0) {
		*uidvalidity_r = mb->uidvalidity;
		/* the copies are the newest: search from the end */
		for (size_t k = 0; k < n; k++) {
			if (bases[k] == NULL)
				continue;
			for (size_t i = mb->n_msgs; i-- > 0;) {
				if (strcmp(mb->msgs[i].base, bases[k]) == 0) {
					uids_r[k] = mb->msgs[i].uid;
					break;
				}
			}
		}
	}
	close(lock_fd);
	mailbox_free(&mb);
	for (size_t k = 0; k < n; k++)
		free(bases[k]);
	free(bases);
	return rc;
}

int mailbox_junk_log(const char *root, const char *op, bool to_junk, const char *from,
		     const char *to, uint32_t uid, const char *message_id, const char *base)
{
	char *path = xasprintf("%s/%s", root, MAILBOX_JUNK_LOG);
	char mid[256];
	size_t o = 0;
	int fd, rc;

	/* one field: no tabs or line ends of the message's own */
	for (const char *p = message_id != NULL && *message_id ? message_id : "-"; *p && o + 1 < sizeof(mid); p++)
		mid[o++] = ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e) ? '_' : *p;
	mid[o] = '\0';
	char *line = xasprintf("%lld\t%s\t%s\t%s\t%s\t%u\t%s\t%s\n", (long long)time(NULL), op,
			       to_junk ? "to-junk" : "from-junk", from, to, uid, mid, base);
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	free(path);
	if (fd < 0) {
		free(line);
		return -1;
	}
	rc = write_all(fd, line, strlen(line));
	close(fd);
	free(line);
	return rc;
}
