/*
 * mailbox.c — a Maildir folder as a snapshot with stable UIDs (see
 * mailbox.h for the list file's format and its locking).
 *
 * Blocking by design: the POP3 service calls this from the worker pool.
 * Nothing here is global, so any number of worker threads may open
 * different (or the same) folders at once; the flock on the list's lock
 * file orders writers of one folder, also across processes.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"
#include "mailbox/mailbox.h"

#define UIDLIST_MAGIC "mxguard-uidlist 1"
/* longest file name we take from a directory listing */
#define MAILBOX_NAME_MAX 255

static void keywords_read(const char *dir, char **kw);

/* ------------------------------------------------------------ helpers */

static char *mailbox_err(const char *what, const char *path)
{
	int err = errno;
	char buf[128];
	char *s = xasprintf("%s %s: %s", what, path, strerror_r(err, buf, sizeof(buf)));
	errno = err;
	return s;
}

size_t mailbox_base_len(const char *name)
{
	const char *colon = strchr(name, ':');
	return colon != NULL ? (size_t)(colon - name) : strlen(name);
}

/* The flag letters of a name ("...:2,FS" gives "FS"), sorted, no repeats. */
static void mailbox_name_flags(const char *name, char *out, size_t outsz)
{
	const char *info = strstr(name, ":2,");
	size_t o = 0;

	out[0] = '\0';
	if (info == NULL)
		return;
	for (int c = 'A'; c <= 'z' && o + 1 < outsz; c++) {
		if (strchr(info + 3, c) != NULL && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
			out[o++] = (char)c;
	}
	out[o] = '\0';
}

static int fsync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	int err = errno;
	close(fd);
	errno = err;
	return rc;
}

int64_t mailbox_file_vsize(int fd)
{
	char buf[65536];
	int64_t total = 0;
	char prev = '\0';

	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		total += n;
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] == '\n' && (i > 0 ? buf[i - 1] : prev) != '\r')
				total++;
		}
		prev = buf[n - 1];
	}
	/* a last line without its line end is sent with one */
	if (total > 0 && prev == '\r')
		total += 1;
	else if (total > 0 && prev != '\n')
		total += 2;
	return total;
}

/* A name taken from a directory that may become a message: no dot
 * files, no slashes (readdir never gives one), not too long. */
static bool mailbox_name_ok(const char *name)
{
	size_t len = strlen(name);
	return name[0] != '.' && len > 0 && len <= MAILBOX_NAME_MAX && mailbox_base_len(name) > 0;
}

/* ------------------------------------------------------------- the list */

void mailbox_uidlist_clear(struct mailbox_uidlist *ul)
{
	for (size_t i = 0; i < ul->n; i++)
		free(ul->entries[i].base);
	free(ul->entries);
	memset(ul, 0, sizeof(*ul));
}

static bool parse_u64(const char **p, const char *end, uint64_t *v)
{
	const char *s = *p;
	uint64_t x = 0;

	if (s >= end || *s < '0' || *s > '9')
		return false;
	while (s < end && *s >= '0' && *s <= '9') {
		if (x > (UINT64_MAX - 9) / 10)
			return false;
		x = x * 10 + (uint64_t)(*s - '0');
		s++;
	}
	*p = s;
	*v = x;
	return true;
}

int mailbox_uidlist_parse(const char *text, size_t len, struct mailbox_uidlist *ul)
{
	const char *p = text, *end = text + len;
	size_t cap = 0;
	uint64_t v, n;

	memset(ul, 0, sizeof(*ul));
	size_t ml = strlen(UIDLIST_MAGIC);
	if (len < ml || memcmp(p, UIDLIST_MAGIC, ml) != 0)
		return -1;
	p += ml;
	if (p + 2 > end || p[0] != ' ' || p[1] != 'V')
		return -1;
	p += 2;
	if (!parse_u64(&p, end, &v) || v == 0 || v > UINT32_MAX)
		return -1;
	if (p + 2 > end || p[0] != ' ' || p[1] != 'N')
		return -1;
	p += 2;
	if (!parse_u64(&p, end, &n) || n == 0 || n > UINT32_MAX)
		return -1;
	if (p >= end || *p != '\n')
		return -1;
	p++;
	ul->uidvalidity = (uint32_t)v;
	ul->uidnext = (uint32_t)n;
	while (p < end) {
		uint64_t uid, vsize;
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *name;

		if (nl == NULL)
			goto bad; /* a torn last line */
		if (!parse_u64(&p, nl, &uid) || uid == 0 || uid >= ul->uidnext)
			goto bad;
		if (ul->n > 0 && uid <= ul->entries[ul->n - 1].uid)
			goto bad;
		if (p + 2 > nl || p[0] != ' ' || p[1] != 'W')
			goto bad;
		p += 2;
		if (!parse_u64(&p, nl, &vsize))
			goto bad;
		if (p >= nl || *p != ' ')
			goto bad;
		name = ++p;
		if (nl - name <= 0 || nl - name > MAILBOX_NAME_MAX || memchr(name, '/', (size_t)(nl - name)) ||
		    memchr(name, ':', (size_t)(nl - name)) || memchr(name, ' ', (size_t)(nl - name)) ||
		    memchr(name, '\0', (size_t)(nl - name)) || name[0] == '.')
			goto bad;
		if (ul->n >= MAILBOX_MESSAGES_MAX)
			goto bad;
		if (ul->n == cap) {
			cap = cap ? cap * 2 : 64;
			ul->entries = xrealloc(ul->entries, cap * sizeof(*ul->entries));
		}
		ul->entries[ul->n].uid = (uint32_t)uid;
		ul->entries[ul->n].vsize = vsize;
		ul->entries[ul->n].base = xstrndup(name, (size_t)(nl - name));
		ul->n++;
		p = nl + 1;
	}
	return 0;
bad:
	mailbox_uidlist_clear(ul);
	return -1;
}

/* Read the list file: 1 parsed, 0 missing, -2 corrupt (*validity_r the
 * old UIDVALIDITY when its header still parsed, else 0), -1 error. */
static int uidlist_read(const char *path, struct mailbox_uidlist *ul, uint32_t *validity_r,
			char **error_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat sb;
	char *buf;
	size_t got = 0;

	*validity_r = 0;
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		*error_r = mailbox_err("open", path);
		return -1;
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		*error_r = mailbox_err("fstat", path);
		close(fd);
		return -1;
	}
	if (sb.st_size > (off_t)MAILBOX_MESSAGES_MAX * (MAILBOX_NAME_MAX + 48)) {
		close(fd);
		return -2;
	}
	buf = xmalloc((size_t)sb.st_size + 1);
	while (got < (size_t)sb.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = '\0';
	if (mailbox_uidlist_parse(buf, got, ul) < 0) {
		unsigned long v;
		if (sscanf(buf, UIDLIST_MAGIC " V%lu", &v) == 1 && v <= UINT32_MAX)
			*validity_r = (uint32_t)v;
		free(buf);
		return -2;
	}
	free(buf);
	return 1;
}

static int uidlist_write(const char *dir, const struct mailbox *mb, char **error_r)
{
	char *tmp = xasprintf("%s/%s.tmp", dir, MAILBOX_UIDLIST_NAME);
	char *path = xasprintf("%s/%s", dir, MAILBOX_UIDLIST_NAME);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	FILE *f;
	int rc = -1;

	if (fd < 0) {
		*error_r = mailbox_err("create", tmp);
		goto out;
	}
	f = fdopen(fd, "w");
	if (f == NULL) {
		*error_r = mailbox_err("fdopen", tmp);
		close(fd);
		goto out_unlink;
	}
	fprintf(f, "%s V%u N%u\n", UIDLIST_MAGIC, mb->uidvalidity, mb->uidnext);
	for (size_t i = 0; i < mb->n_msgs; i++)
		fprintf(f, "%u W%llu %s\n", mb->msgs[i].uid, (unsigned long long)mb->msgs[i].vsize,
			mb->msgs[i].base);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		*error_r = mailbox_err("write", tmp);
		fclose(f);
		goto out_unlink;
	}
	if (fclose(f) != 0) {
		*error_r = mailbox_err("close", tmp);
		goto out_unlink;
	}
	if (rename(tmp, path) < 0) {
		*error_r = mailbox_err("rename", tmp);
		goto out_unlink;
	}
	if (fsync_path(dir) < 0) {
		*error_r = mailbox_err("fsync", dir);
		goto out;
	}
	rc = 0;
	goto out;
out_unlink:
	unlink(tmp);
out:
	free(tmp);
	free(path);
	return rc;
}

/* ------------------------------------------------------------ scanning */

struct scan_entry {
	char *name;
	size_t base_len;
};

static int cmp_scan(const void *a, const void *b)
{
	const struct scan_entry *x = a, *y = b;
	size_t n = x->base_len < y->base_len ? x->base_len : y->base_len;
	int c = memcmp(x->name, y->name, n);
	if (c != 0)
		return c;
	return x->base_len < y->base_len ? -1 : x->base_len > y->base_len;
}

/* Move every message of new/ into cur/ with an empty info suffix. */
static int mailbox_move_new(const char *dir, char **error_r)
{
	char *newdir = xasprintf("%s/new", dir);
	DIR *d = opendir(newdir);
	struct dirent *de;
	int rc = 0;
	bool moved = false;

	if (d == NULL) {
		*error_r = mailbox_err("opendir", newdir);
		free(newdir);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (!mailbox_name_ok(de->d_name))
			continue;
		char *from = xasprintf("%s/%s", newdir, de->d_name);
		char *to = strchr(de->d_name, ':') != NULL ? xasprintf("%s/cur/%s", dir, de->d_name)
							     : xasprintf("%s/cur/%s:2,", dir, de->d_name);
		if (rename(from, to) < 0 && errno != ENOENT) {
			*error_r = mailbox_err("rename", from);
			rc = -1;
		} else {
			moved = true;
		}
		free(from);
		free(to);
		if (rc < 0)
			break;
	}
	closedir(d);
	if (rc == 0 && moved) {
		char *cur = xasprintf("%s/cur", dir);
		if (fsync_path(cur) < 0 || fsync_path(newdir) < 0) {
			*error_r = mailbox_err("fsync", cur);
			rc = -1;
		}
		free(cur);
	}
	free(newdir);
	return rc;
}

static int mailbox_scan_cur(const char *dir, struct scan_entry **out, size_t *n_r, char **error_r)
{
	char *curdir = xasprintf("%s/cur", dir);
	DIR *d = opendir(curdir);
	struct dirent *de;
	struct scan_entry *v = NULL;
	size_t n = 0, cap = 0;

	*out = NULL;
	*n_r = 0;
	if (d == NULL) {
		*error_r = mailbox_err("opendir", curdir);
		free(curdir);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (!mailbox_name_ok(de->d_name))
			continue;
		if (n >= MAILBOX_MESSAGES_MAX) {
			*error_r = xasprintf("%s: more than %u messages", curdir, MAILBOX_MESSAGES_MAX);
			for (size_t i = 0; i < n; i++)
				free(v[i].name);
			free(v);
			closedir(d);
			free(curdir);
			return -1;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[n].name = xstrdup(de->d_name);
		v[n].base_len = mailbox_base_len(de->d_name);
		n++;
	}
	closedir(d);
	free(curdir);
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_scan);
	*out = v;
	*n_r = n;
	return 0;
}

static int cmp_entry_base(const void *a, const void *b)
{
	const struct mailbox_uid_entry *const *x = a, *const *y = b;
	return strcmp((*x)->base, (*y)->base);
}

static int cmp_msg_uid(const void *a, const void *b)
{
	const struct mailbox_msg *x = a, *y = b;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

struct new_order {
	size_t rank;
	struct timespec mtime;
	struct mailbox_msg *msg;
};

static int cmp_new_order(const void *a, const void *b)
{
	const struct new_order *x = a, *y = b;

	if (x->rank != y->rank)
		return x->rank < y->rank ? -1 : 1;
	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	if (x->mtime.tv_nsec != y->mtime.tv_nsec)
		return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
	return strcmp(x->msg->base, y->msg->base);
}

static int mkdir_ok(const char *path)
{
	return mkdir(path, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

int mailbox_lock(const char *dir, bool create, char **error_r)
{
	char *lock_path;
	int lock_fd, r;

	if (create) {
		static const char *const subs[] = { "", "/tmp", "/new", "/cur" };
		for (size_t i = 0; i < N_ELEMENTS(subs); i++) {
			char *p = xasprintf("%s%s", dir, subs[i]);
			int rc = i == 0 ? fs_mkdir_p(p, 0700) : mkdir_ok(p);
			if (rc < 0)
				*error_r = mailbox_err("mkdir", p);
			free(p);
			if (rc < 0)
				return -1;
		}
	}
	lock_path = xasprintf("%s/%s", dir, MAILBOX_UIDLIST_LOCK);
	lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (lock_fd < 0) {
		*error_r = mailbox_err("open", lock_path);
		free(lock_path);
		return -1;
	}
	while ((r = flock(lock_fd, LOCK_EX)) < 0 && errno == EINTR)
		;
	if (r < 0) {
		*error_r = mailbox_err("flock", lock_path);
		close(lock_fd);
		free(lock_path);
		return -1;
	}
	free(lock_path);
	return lock_fd;
}

/* stat stamps of what a change touches: new/, cur/ and the list (from
 * index `from` on: the sync takes the directories before it scans them
 * and the list after it wrote it) */
static void mailbox_stamp_part(const char *dir, struct mailbox_stamp *st, size_t from, size_t to)
{
	static const char *const subs[] = { "new", "cur", MAILBOX_UIDLIST_NAME };
	struct stat sb;
	struct timespec now;

	clock_gettime(CLOCK_REALTIME_COARSE, &now);
	for (size_t i = from; i < to && i < N_ELEMENTS(subs); i++) {
		char *p = xasprintf("%s/%s", dir, subs[i]);
		memset(&st->mtime[i], 0, sizeof(st->mtime[i]));
		memset(&st->ctime[i], 0, sizeof(st->ctime[i]));
		st->ino[i] = st->size[i] = 0;
		if (stat(p, &sb) == 0) {
			st->mtime[i] = sb.st_mtim;
			st->ctime[i] = sb.st_ctim;
			st->ino[i] = (uint64_t)sb.st_ino;
			st->size[i] = (uint64_t)sb.st_size;
			/* a directory changed within the file system clock's current
			 * tick may change again with the same time: the stamp cannot
			 * tell, so the next check scans (once) */
			if (i < 2 && (sb.st_ctim.tv_sec > now.tv_sec ||
				      (sb.st_ctim.tv_sec == now.tv_sec && sb.st_ctim.tv_nsec >= now.tv_nsec)))
				st->racy = true;
		}
		free(p);
	}
}

static void mailbox_take_stamp(const char *dir, struct mailbox_stamp *st)
{
	memset(st, 0, sizeof(*st));
	mailbox_stamp_part(dir, st, 0, 3);
}

bool mailbox_changed(const struct mailbox *mb)
{
	struct mailbox_stamp now;

	if (mb->stamp.racy)
		return true;
	mailbox_take_stamp(mb->dir, &now);
	return memcmp(&now, &mb->stamp, offsetof(struct mailbox_stamp, racy)) != 0;
}

void mailbox_restamp(struct mailbox *mb)
{
	mailbox_take_stamp(mb->dir, &mb->stamp);
}

int mailbox_open(const char *dir, struct mailbox **mb_r, char **error_r)
{
	int lock_fd = mailbox_lock(dir, true, error_r);
	int rc;

	*mb_r = NULL;
	if (lock_fd < 0)
		return -1;
	rc = mailbox_sync_locked(dir, NULL, 0, mb_r, error_r);
	close(lock_fd); /* unlocks */
	return rc;
}

/* rank of a base name in the caller's preferred order (SIZE_MAX: none) */
static size_t prefer_rank(const char *base, const char *const *prefer, size_t n_prefer)
{
	for (size_t i = 0; i < n_prefer; i++)
		if (strcmp(prefer[i], base) == 0)
			return i;
	return SIZE_MAX;
}

int mailbox_sync_locked(const char *dir, const char *const *prefer, size_t n_prefer,
			struct mailbox **mb_r, char **error_r)
{
	struct mailbox *mb = xcalloc(1, sizeof(*mb));
	struct mailbox_uidlist ul = { 0 };
	struct mailbox_uid_entry **index = NULL;
	struct scan_entry *files = NULL;
	size_t n_files = 0, cap = 0;
	char *list_path = NULL;
	int r;
	uint32_t old_validity = 0;
	bool dirty = false;
	size_t first_new = 0, new_cap = 0;
	struct timespec *new_mtime = NULL;

	*mb_r = NULL;
	mb->dir = xstrdup(dir);
	list_path = xasprintf("%s/%s", dir, MAILBOX_UIDLIST_NAME);
	r = uidlist_read(list_path, &ul, &old_validity, error_r);
	if (r == -1)
		goto fail;
	if (r <= 0 || ul.uidnext == UINT32_MAX) {
		/* no list, or one we cannot trust: new UIDs under a new
		 * UIDVALIDITY that differs from whatever the old one was */
		uint32_t v = (uint32_t)time(NULL);
		if (r == -2 || ul.uidnext == UINT32_MAX)
			log_msg(LOG_LEVEL_WARN, "mailbox %s: %s is corrupt or exhausted, UIDs renumbered",
				dir, MAILBOX_UIDLIST_NAME);
		if (v == old_validity || v == ul.uidvalidity)
			v++;
		if (v == 0)
			v = 1;
		mailbox_uidlist_clear(&ul);
		ul.uidvalidity = v;
		ul.uidnext = 1;
		mb->uidlist_rebuilt = true;
		dirty = true;
	}
	if (mailbox_move_new(dir, error_r) < 0)
		goto fail;
	/* new/ and cur/ as they are before the scan: a change during it
	 * shows in the next check (taken after, it would hide it) */
	mailbox_stamp_part(dir, &mb->stamp, 0, 2);
	if (mailbox_scan_cur(dir, &files, &n_files, error_r) < 0)
		goto fail;

	/* two names for one message (a rename seen half-way): keep one */
	for (size_t i = 1; i < n_files; i++) {
		if (cmp_scan(&files[i - 1], &files[i]) == 0) {
			free(files[i - 1].name);
			files[i - 1].name = NULL;
		}
	}
	index = xcalloc(ul.n + 1, sizeof(*index));
	for (size_t i = 0; i < ul.n; i++)
		index[i] = &ul.entries[i];
	if (ul.n > 1)
		qsort(index, ul.n, sizeof(*index), cmp_entry_base);

	mb->uidvalidity = ul.uidvalidity;
	mb->uidnext = ul.uidnext;
	/* known files first; the new ones get UIDs after, in delivery order */
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 1)
			first_new = mb->n_msgs;
		for (size_t i = 0; i < n_files; i++) {
			struct scan_entry *f = &files[i];
			struct mailbox_uid_entry key, *kp = &key, **hit;
			struct mailbox_msg *m;

			if (f->name == NULL)
				continue;
			key.base = xstrndup(f->name, f->base_len);
			hit = bsearch(&kp, index, ul.n, sizeof(*index), cmp_entry_base);
			if ((pass == 0) != (hit != NULL)) {
				free(key.base);
				continue;
			}
			if (mb->n_msgs == cap) {
				cap = cap ? cap * 2 : 64;
				mb->msgs = xrealloc(mb->msgs, cap * sizeof(*mb->msgs));
			}
			m = &mb->msgs[mb->n_msgs];
			memset(m, 0, sizeof(*m));
			m->base = key.base;
			m->name = f->name;
			f->name = NULL;
			mailbox_name_flags(m->name, m->flags, sizeof(m->flags));
			if (hit != NULL) {
				m->uid = (*hit)->uid;
				m->vsize = (*hit)->vsize;
			} else {
				char *p = xasprintf("%s/cur/%s", dir, m->name);
				int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
				struct stat sb;
				int64_t vs = fd >= 0 && fstat(fd, &sb) == 0 ? mailbox_file_vsize(fd) : -1;
				if (fd >= 0)
					close(fd);
				free(p);
				if (vs < 0) {
					/* gone meanwhile (another reader expunged it) */
					free(m->base);
					free(m->name);
					continue;
				}
				m->uid = 0; /* below, in delivery order */
				m->vsize = (uint64_t)vs;
				if (mb->n_msgs - first_new >= new_cap) {
					new_cap = new_cap ? new_cap * 2 : 64;
					new_mtime = xrealloc(new_mtime, new_cap * sizeof(*new_mtime));
				}
				new_mtime[mb->n_msgs - first_new] = sb.st_mtim;
				dirty = true;
			}
			mb->n_msgs++;
		}
	}
	/* A delivery's file gets its mtime when it is written, before it is
	 * renamed into new/: the oldest first, ties by name. (Not by name
	 * alone: the microseconds in our names are not zero-padded.) */
	if (mb->n_msgs > first_new) {
		size_t n_new = mb->n_msgs - first_new;
		struct new_order *order = xcalloc(n_new, sizeof(*order));
		for (size_t k = 0; k < n_new; k++) {
			order[k].mtime = new_mtime[k];
			order[k].msg = &mb->msgs[first_new + k];
			order[k].rank = prefer_rank(order[k].msg->base, prefer, n_prefer);
		}
		if (n_new > 1)
			qsort(order, n_new, sizeof(*order), cmp_new_order);
		for (size_t k = 0; k < n_new; k++) {
			if (mb->uidnext == UINT32_MAX) {
				free(order);
				*error_r = xasprintf("%s: UIDs exhausted", dir);
				goto fail;
			}
			order[k].msg->uid = mb->uidnext++;
		}
		free(order);
	}
	free(new_mtime);
	new_mtime = NULL;
	if (mb->n_msgs != ul.n)
		dirty = true; /* entries whose files are gone are dropped */
	if (mb->n_msgs > 1)
		qsort(mb->msgs, mb->n_msgs, sizeof(*mb->msgs), cmp_msg_uid);
	if (dirty && uidlist_write(dir, mb, error_r) < 0)
		goto fail;
	for (size_t i = 0; i < n_files; i++)
		free(files[i].name);
	free(files);
	free(index);
	mailbox_uidlist_clear(&ul);
	free(list_path);
	mailbox_stamp_part(dir, &mb->stamp, 2, 3); /* the list as we left it (we hold its lock) */
	keywords_read(dir, mb->keywords);
	*mb_r = mb;
	return 0;
fail:
	free(new_mtime);
	for (size_t i = 0; i < n_files; i++)
		free(files[i].name);
	free(files);
	free(index);
	mailbox_uidlist_clear(&ul);
	free(list_path);
	mailbox_free(&mb);
	return -1;
}

void mailbox_free(struct mailbox **mbp)
{
	struct mailbox *mb = *mbp;

	*mbp = NULL;
	if (mb == NULL)
		return;
	for (size_t i = 0; i < mb->n_msgs; i++) {
		free(mb->msgs[i].base);
		free(mb->msgs[i].name);
	}
	free(mb->msgs);
	free(mb->dir);
	for (size_t k = 0; k < MAILBOX_KEYWORDS_MAX; k++)
		free(mb->keywords[k]);
	free(mb);
}

/* ------------------------------------------------------------ keywords */

static void keywords_read(const char *dir, char **kw)
{
	char *path = xasprintf("%s/%s", dir, MAILBOX_KEYWORDS_NAME);
	FILE *f = fopen(path, "re");
	char line[256];

	free(path);
	for (size_t k = 0; k < MAILBOX_KEYWORDS_MAX; k++) {
		free(kw[k]);
		kw[k] = NULL;
	}
	if (f == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL) {
		char *end;
		unsigned long i = strtoul(line, &end, 10);
		if (end == line || *end != ' ' || i >= MAILBOX_KEYWORDS_MAX || kw[i] != NULL)
			continue;
		end++;
		end[strcspn(end, "\r\n")] = '\0';
		/* an atom: no spaces, controls or specials */
		bool ok = *end != '\0';
		for (const char *c = end; *c && ok; c++)
			ok = (unsigned char)*c > 0x20 && (unsigned char)*c < 0x7f && strchr("(){%*\"\\]", *c) == NULL;
		if (ok)
			kw[i] = xstrdup(end);
	}
	fclose(f);
}

void mailbox_keywords_load(struct mailbox *mb)
{
	keywords_read(mb->dir, mb->keywords);
}

int mailbox_keywords_letters_locked(const char *dir, const char *const *names, size_t n,
				    char *letters_r, char **error_r)
{
	char *kw[MAILBOX_KEYWORDS_MAX] = { 0 };
	bool added = false;
	size_t o = 0;
	int rc = 0;

	keywords_read(dir, kw);
	for (size_t i = 0; i < n; i++) {
		size_t k;
		for (k = 0; k < MAILBOX_KEYWORDS_MAX; k++)
			if (kw[k] != NULL && strcasecmp(kw[k], names[i]) == 0)
				break;
		if (k == MAILBOX_KEYWORDS_MAX) {
			for (k = 0; k < MAILBOX_KEYWORDS_MAX && kw[k] != NULL; k++)
				;
			if (k == MAILBOX_KEYWORDS_MAX)
				continue; /* full */
			kw[k] = xstrdup(names[i]);
			added = true;
		}
		letters_r[o++] = (char)('a' + k);
	}
	letters_r[o] = '\0';
	if (added) {
		char *path = xasprintf("%s/%s", dir, MAILBOX_KEYWORDS_NAME);
		char *tmp = xasprintf("%s.tmp", path);
		FILE *f = fopen(tmp, "we");
		if (f == NULL) {
			*error_r = mailbox_err("create", tmp);
			rc = -1;
		} else {
			for (size_t k = 0; k < MAILBOX_KEYWORDS_MAX; k++)
				if (kw[k] != NULL)
					fprintf(f, "%zu %s\n", k, kw[k]);
			if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0 || rename(tmp, path) < 0) {
				*error_r = mailbox_err("write", tmp);
				unlink(tmp);
				rc = -1;
			}
		}
		free(path);
		free(tmp);
	}
	for (size_t k = 0; k < MAILBOX_KEYWORDS_MAX; k++)
		free(kw[k]);
	return rc;
}

int mailbox_keywords_letters(const char *dir, const char *const *names, size_t n, char *letters_r,
			     char **error_r)
{
	int fd = mailbox_lock(dir, false, error_r);
	int rc;

	if (fd < 0)
		return -1;
	rc = mailbox_keywords_letters_locked(dir, names, n, letters_r, error_r);
	close(fd);
	return rc;
}

long mailbox_find_uid(const struct mailbox *mb, uint32_t uid)
{
	size_t lo = 0, hi = mb->n_msgs;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (mb->msgs[mid].uid == uid)
			return (long)mid;
		if (mb->msgs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

char *mailbox_msg_path(const struct mailbox *mb, size_t i)
{
	return xasprintf("%s/cur/%s", mb->dir, mb->msgs[i].name);
}

/* The message's file was renamed by someone else: find its new name. */
static int mailbox_msg_relocate(struct mailbox *mb, size_t i)
{
	struct mailbox_msg *m = &mb->msgs[i];
	char *curdir = xasprintf("%s/cur", mb->dir);
	DIR *d = opendir(curdir);
	struct dirent *de;
	size_t bl = strlen(m->base);
	int rc = -1;

	free(curdir);
	if (d == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (mailbox_base_len(de->d_name) == bl && memcmp(de->d_name, m->base, bl) == 0) {
			free(m->name);
			m->name = xstrdup(de->d_name);
			mailbox_name_flags(m->name, m->flags, sizeof(m->flags));
			rc = 0;
			break;
		}
	}
	closedir(d);
	if (rc < 0)
		errno = ENOENT;
	return rc;
}

int mailbox_msg_open(struct mailbox *mb, size_t i)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		char *p = mailbox_msg_path(mb, i);
		int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		free(p);
		if (fd >= 0 || errno != ENOENT)
			return fd;
		if (attempt == 0 && mailbox_msg_relocate(mb, i) < 0)
			return -1;
	}
	errno = ENOENT;
	return -1;
}

/* letters sorted (the Maildir spec's order), no repeats, letters only */
static void flags_normalise(const char *in, char *out, size_t outsz)
{
	size_t o = 0;

	for (int c = 'A'; c <= 'z' && o + 1 < outsz; c++)
		if (((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) && strchr(in, c) != NULL)
			out[o++] = (char)c;
	out[o] = '\0';
}

/* one rename to base:2,flags (flags normalised already) */
static int msg_rename_flags(struct mailbox *mb, size_t i, const char *flags)
{
	struct mailbox_msg *m = &mb->msgs[i];
	char *from, *to, *newname;

	if (strcmp(m->flags, flags) == 0 && strstr(m->name, ":2,") != NULL)
		return 0;
	newname = xasprintf("%s:2,%s", m->base, flags);
	from = mailbox_msg_path(mb, i);
	to = xasprintf("%s/cur/%s", mb->dir, newname);
	int rc = rename(from, to);
	int err = errno;
	free(from);
	free(to);
	if (rc == 0) {
		free(m->name);
		m->name = newname;
		str_copy(m->flags, flags, sizeof(m->flags));
		return 0;
	}
	free(newname);
	errno = err;
	return -1;
}

int mailbox_msg_change_flags(struct mailbox *mb, size_t i, const char *add, const char *remove)
{
	struct mailbox_msg *m = &mb->msgs[i];

	/* computed from the name as it is now: a rename by someone else
	 * (found by relocating) is kept, not overwritten */
	for (int attempt = 0; attempt < 2; attempt++) {
		char want[sizeof(m->flags) * 2 + 8], flags[sizeof(m->flags)];
		size_t o = 0;
		for (const char *f = m->flags; *f != '\0' && o + 1 < sizeof(want); f++)
			if (strchr(remove, *f) == NULL)
				want[o++] = *f;
		for (const char *f = add; *f != '\0' && o + 1 < sizeof(want); f++)
			want[o++] = *f;
		want[o] = '\0';
		flags_normalise(want, flags, sizeof(flags));
		if (msg_rename_flags(mb, i, flags) == 0)
			return 0;
		if (errno != ENOENT || attempt > 0 || mailbox_msg_relocate(mb, i) < 0)
			return -1;
	}
	return -1;
}

int mailbox_msg_set_flags(struct mailbox *mb, size_t i, const char *letters)
{
	/* every letter goes, the given ones come */
	return mailbox_msg_change_flags(mb, i, letters,
					"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz");
}

int mailbox_msg_add_flag(struct mailbox *mb, size_t i, char flag)
{
	char add[2] = { flag, '\0' };

	return mailbox_msg_change_flags(mb, i, add, "");
}

int mailbox_msg_expunge(struct mailbox *mb, size_t i)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		char *p = mailbox_msg_path(mb, i);
		int rc = unlink(p);
		free(p);
		if (rc == 0)
			return 0;
		if (errno != ENOENT)
			return -1;
		if (attempt == 0 && mailbox_msg_relocate(mb, i) < 0)
			return 0; /* gone already */
	}
	return 0;
}

int mailbox_sync_dir(struct mailbox *mb)
{
	char *cur = xasprintf("%s/cur", mb->dir);
	int rc = fsync_path(cur);
	free(cur);
	return rc;
}

int mailbox_pop3_lock(const char *dir)
{
	char *path = xasprintf("%s/%s", dir, MAILBOX_POP3_LOCK);
	int fd, r;

	if (fs_mkdir_p(dir, 0700) < 0) {
		free(path);
		return -1;
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	free(path);
	if (fd < 0)
		return -1;
	while ((r = flock(fd, LOCK_EX | LOCK_NB)) < 0 && errno == EINTR)
		;
	if (r < 0) {
		int err = errno;
		close(fd);
		errno = err;
		return err == EWOULDBLOCK ? -2 : -1;
	}
	return fd;
}
