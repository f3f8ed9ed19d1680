/*
 * userdb.c — the user database: a passwd-file of "local@domain:{SCHEME}hash"
 * lines, the format Dovecot's passwd-file driver also reads.
 *
 * The daemon side (userdb_open/exists/verify) keeps a sorted in-memory index
 * of the file behind a rwlock and stats the file on every lookup; when its
 * identity (device, inode, size, mtime, ctime) changes, the index is rebuilt,
 * so users added with mxguardctl take effect without a restart. A missing
 * file is an empty database: the daemon must be able to start before the
 * first user exists. Passwords are checked with crypt(3) from libxcrypt and
 * a constant-time comparison; only crypt(3) schemes are understood, anything
 * else never verifies.
 *
 * The editing side (userdb_file_*, used by mxguardctl) never edits in place:
 * under an flock on "<path>.lock" it reads the file, changes only the line of
 * the user concerned (comments, blank lines, other users and Dovecot's extra
 * fields are kept byte for byte), writes a 0600 temp file in the same
 * directory, fsyncs it, renames it over the old one and fsyncs the directory.
 * A reader therefore sees either the old or the new file, never half of one.
 */
#include "config.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/backends.h"

/* Longest user field we bother to look at: local (64) + '@' + domain (255). */
#define USERDB_USER_MAX (SMTP_LOCAL_MAX + 1 + SMTP_DOMAIN_MAX)

struct userdb_entry {
	char *user; /* lower-cased "local@domain" */
	char *hash; /* the password field as written, "{SCHEME}..." */
	size_t line;
};

/* What a stat(2) of the file told us; a change in any of these means the
 * file was replaced or edited. ctime is included because a rename or an
 * in-place edit within one mtime tick still moves it. */
struct userdb_ident {
	bool exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtim;
	struct timespec ctim;
};

struct userdb {
	char *path;
	pthread_rwlock_t lock;
	/* everything below is protected by lock */
	bool loaded;              /* index matches ident */
	struct userdb_ident ident;
	struct userdb_entry *entries; /* sorted by user, unique */
	size_t n_entries;
	/* a yescrypt setting hashed against when the user does not exist, so
	 * "no such user" costs about as much as "wrong password" */
	char *dummy_setting;
};

/* ------------------------------------------------------------ small bits */

struct userdb_buf {
	char *data;
	size_t len, cap;
};

static void userdb_buf_append(struct userdb_buf *b, const char *data, size_t len)
{
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (b->len + len + 1 > cap)
			cap *= 2;
		b->data = xrealloc(b->data, cap);
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
}

static void userdb_buf_append_str(struct userdb_buf *b, const char *s)
{
	userdb_buf_append(b, s, strlen(s));
}

static char *userdb_error(const char *what, const char *path, int err)
{
	return xasprintf("%s %s: %s", what, path, strerror(err));
}

static char *userdb_lower_dup(const char *s, size_t len)
{
	char *out = xstrndup(s, len);
	str_lower(out);
	return out;
}

/* ASCII only, whatever the locale: these names end up in paths and in
 * comparisons that must not change with LC_CTYPE. */
static bool userdb_is_alnum(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* Compare without an early exit, so the time taken does not tell an
 * attacker how many leading characters of a hash were right. */
static bool userdb_equal_ct(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char diff = (unsigned char)(la != lb);
	for (size_t i = 0; i < la; i++)
		diff |= (unsigned char)a[i] ^ (unsigned char)(i < lb ? b[i] : 0);
	return diff == 0;
}

/* ------------------------------------------------------------ validation */

/* RFC 5322 atext, minus the routing characters '%' and '!' (and '/', which
 * has no business in a name that becomes a directory). */
static bool userdb_local_char(unsigned char c)
{
	if (userdb_is_alnum(c))
		return true;
	return c != '\0' && strchr("#$&'*+-=?^_`{|}~", c) != NULL;
}

static bool userdb_valid_local(const char *s, size_t len)
{
	if (len == 0 || len > SMTP_LOCAL_MAX)
		return false;
	/* a line starting with '#' is a comment: such a user could be added
	 * but never found again */
	if (s[0] == '.' || s[len - 1] == '.' || s[0] == '#')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (s[i + 1] == '.')
				return false;
		} else if (!userdb_local_char(c)) {
			return false;
		}
	}
	return true;
}

static bool userdb_valid_domain(const char *s, size_t len)
{
	size_t label = 0;

	if (len == 0 || len > SMTP_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
		} else if (userdb_is_alnum(c) || c == '-') {
			if (c == '-' && label == 0)
				return false;
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return label > 0 && s[len - 1] != '-';
}

bool userdb_valid_user(const char *user)
{
	const char *at;

	if (user == NULL)
		return false;
	at = strchr(user, '@');
	if (at == NULL || strchr(at + 1, '@') != NULL)
		return false;
	return userdb_valid_local(user, (size_t)(at - user)) &&
	       userdb_valid_domain(at + 1, strlen(at + 1));
}

/* --------------------------------------------------------- line parsing */

/* One line of the file, split into the pieces the editor and the loader
 * need. All pointers point into the file buffer. */
struct userdb_line {
	const char *start;     /* first byte of the line */
	const char *end;       /* '\n' or end of data */
	const char *content_end; /* end, minus a trailing '\r' */
	bool entry;            /* not blank, not a comment, has a ':' */
	const char *user;
	size_t user_len;
	const char *pass;      /* password field */
	size_t pass_len;       /* runs to the next ':' or content_end */
};

static void userdb_line_parse(const char *start, const char *end, struct userdb_line *l)
{
	const char *p, *colon;

	memset(l, 0, sizeof(*l));
	l->start = start;
	l->end = end;
	l->content_end = end;
	if (l->content_end > start && l->content_end[-1] == '\r')
		l->content_end--;

	for (p = start; p < l->content_end && (*p == ' ' || *p == '\t'); p++)
		;
	if (p == l->content_end || *p == '#')
		return;
	colon = memchr(start, ':', (size_t)(l->content_end - start));
	if (colon == NULL)
		return;
	l->entry = true;
	l->user = start;
	l->user_len = (size_t)(colon - start);
	l->pass = colon + 1;
	p = memchr(l->pass, ':', (size_t)(l->content_end - l->pass));
	l->pass_len = (size_t)((p != NULL ? p : l->content_end) - l->pass);
}

/* Iterate over the lines of data[0..len): returns false when done. */
static bool userdb_line_next(const char *data, size_t len, size_t *pos, struct userdb_line *l)
{
	const char *start, *nl, *end = data + len;

	if (*pos >= len)
		return false;
	start = data + *pos;
	nl = memchr(start, '\n', (size_t)(end - start));
	if (nl == NULL)
		nl = end;
	userdb_line_parse(start, nl, l);
	*pos = (size_t)(nl - data) + (nl < end ? 1 : 0);
	return true;
}

/* The lower-cased user of an entry line, or NULL when the line is not an
 * entry or its user is not one we accept. */
static char *userdb_line_user(const struct userdb_line *l)
{
	char *user;

	if (!l->entry || l->user_len == 0 || l->user_len > USERDB_USER_MAX)
		return NULL;
	user = userdb_lower_dup(l->user, l->user_len);
	if (!userdb_valid_user(user)) {
		free(user);
		return NULL;
	}
	return user;
}

/* ----------------------------------------------------------- file reading */

static void userdb_ident_from_stat(struct userdb_ident *id, const struct stat *st)
{
	memset(id, 0, sizeof(*id));
	id->exists = true;
	id->dev = st->st_dev;
	id->ino = st->st_ino;
	id->size = st->st_size;
	id->mtim = st->st_mtim;
	id->ctim = st->st_ctim;
}

static bool userdb_ident_equal(const struct userdb_ident *a, const struct userdb_ident *b)
{
	if (a->exists != b->exists)
		return false;
	if (!a->exists)
		return true;
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec &&
	       a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

/* Read the whole file. A missing file reads as empty with ident->exists
 * false. The ident comes from fstat of the descriptor we read, so it
 * describes exactly the contents returned. */
static int userdb_read_file(const char *path, char **data_r, size_t *len_r,
			    struct stat *st_r, struct userdb_ident *ident_r, char **error_r)
{
	struct userdb_buf buf = { 0 };
	struct stat st;
	char chunk[8192];
	ssize_t n;
	int fd;

	memset(ident_r, 0, sizeof(*ident_r));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT) {
			*data_r = xstrdup("");
			*len_r = 0;
			if (st_r != NULL)
				memset(st_r, 0, sizeof(*st_r));
			return 0;
		}
		*error_r = userdb_error("cannot open", path, errno);
		return -1;
	}
	if (fstat(fd, &st) < 0) {
		*error_r = userdb_error("cannot stat", path, errno);
		close(fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		*error_r = xasprintf("%s: not a regular file", path);
		close(fd);
		return -1;
	}
	userdb_buf_append(&buf, "", 0);
	for (;;) {
		n = read(fd, chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			*error_r = userdb_error("cannot read", path, errno);
			close(fd);
			free(buf.data);
			return -1;
		}
		if (n == 0)
			break;
		userdb_buf_append(&buf, chunk, (size_t)n);
	}
	close(fd);
	userdb_ident_from_stat(ident_r, &st);
	if (st_r != NULL)
		*st_r = st;
	*data_r = buf.data;
	*len_r = buf.len;
	return 0;
}

/* ------------------------------------------------------------ the index */

static int userdb_entry_cmp(const void *a, const void *b)
{
	const struct userdb_entry *ea = a, *eb = b;
	int r = strcmp(ea->user, eb->user);
	if (r != 0)
		return r;
	return ea->line < eb->line ? -1 : ea->line > eb->line;
}

static void userdb_entries_free(struct userdb_entry *entries, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(entries[i].user);
		if (entries[i].hash != NULL) {
			explicit_bzero(entries[i].hash, strlen(entries[i].hash));
			free(entries[i].hash);
		}
	}
	free(entries);
}

/* Build a sorted, duplicate-free index. When a user appears twice the
 * first line wins, as in Dovecot. */
static void userdb_index_build(const char *data, size_t len,
			       struct userdb_entry **entries_r, size_t *n_r)
{
	struct userdb_entry *entries = NULL;
	size_t n = 0, cap = 0, pos = 0, line_no = 0, out;
	struct userdb_line l;

	while (userdb_line_next(data, len, &pos, &l)) {
		char *user;

		line_no++;
		if ((user = userdb_line_user(&l)) == NULL)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			entries = xrealloc(entries, cap * sizeof(*entries));
		}
		entries[n].user = user;
		entries[n].hash = xstrndup(l.pass, l.pass_len);
		entries[n].line = line_no;
		n++;
	}
	if (n > 1)
		qsort(entries, n, sizeof(*entries), userdb_entry_cmp);
	for (size_t i = out = 0; i < n; i++) {
		if (out > 0 && strcmp(entries[out - 1].user, entries[i].user) == 0) {
			free(entries[i].user);
			explicit_bzero(entries[i].hash, strlen(entries[i].hash));
			free(entries[i].hash);
			continue;
		}
		entries[out++] = entries[i];
	}
	*entries_r = entries;
	*n_r = out;
}

/* Make the index match the file on disk. Called without the lock held. */
static int userdb_refresh(struct userdb *db, char **error_r)
{
	struct userdb_ident now, read_ident;
	struct userdb_entry *entries;
	struct stat st;
	size_t n, len;
	char *data;
	bool fresh;

	memset(&now, 0, sizeof(now));
	if (stat(db->path, &st) == 0) {
		userdb_ident_from_stat(&now, &st);
	} else if (errno != ENOENT) {
		*error_r = userdb_error("cannot stat", db->path, errno);
		return -1;
	}

	pthread_rwlock_rdlock(&db->lock);
	fresh = db->loaded && userdb_ident_equal(&db->ident, &now);
	pthread_rwlock_unlock(&db->lock);
	if (fresh)
		return 0;

	pthread_rwlock_wrlock(&db->lock);
	/* another thread may have reloaded while we waited */
	if (db->loaded && userdb_ident_equal(&db->ident, &now)) {
		pthread_rwlock_unlock(&db->lock);
		return 0;
	}
	if (userdb_read_file(db->path, &data, &len, NULL, &read_ident, error_r) < 0) {
		/* keep serving nothing stale: the next lookup tries again */
		db->loaded = false;
		pthread_rwlock_unlock(&db->lock);
		return -1;
	}
	userdb_index_build(data, len, &entries, &n);
	explicit_bzero(data, len);
	free(data);
	userdb_entries_free(db->entries, db->n_entries);
	db->entries = entries;
	db->n_entries = n;
	db->ident = read_ident;
	db->loaded = true;
	pthread_rwlock_unlock(&db->lock);
	return 0;
}

/* Looks user up after a refresh. Returns 1 with *hash_r (malloc'd, may be
 * NULL when the caller only asks about existence), 0 not found, -1 error. */
static int userdb_lookup(struct userdb *db, const char *user, char **hash_r)
{
	struct userdb_entry *e = NULL;
	char *error = NULL;
	int ret = 0;

	if (userdb_refresh(db, &error) < 0) {
		free(error);
		return -1;
	}
	pthread_rwlock_rdlock(&db->lock);
	if (!db->loaded) {
		ret = -1;
	} else {
		/* the index is unique per user, so a plain binary search on
		 * the user alone finds the one entry */
		size_t lo = 0, hi = db->n_entries;
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			int r = strcmp(user, db->entries[mid].user);
			if (r == 0) {
				e = &db->entries[mid];
				break;
			}
			if (r < 0)
				hi = mid;
			else
				lo = mid + 1;
		}
		if (e != NULL) {
			ret = 1;
			if (hash_r != NULL)
				*hash_r = xstrdup(e->hash);
		}
	}
	pthread_rwlock_unlock(&db->lock);
	return ret;
}

/* ----------------------------------------------------------------- public */

int userdb_open(const char *path, struct userdb **db_r, char **error_r)
{
	struct userdb *db = xcalloc(1, sizeof(*db));

	db->path = xstrdup(path);
	pthread_rwlock_init(&db->lock, NULL);
	db->dummy_setting = crypt_gensalt_ra("$y$", 0, NULL, 0);
	if (db->dummy_setting == NULL)
		db->dummy_setting = crypt_gensalt_ra("$6$", 0, NULL, 0);
	if (userdb_refresh(db, error_r) < 0) {
		userdb_close(&db);
		return -1;
	}
	*db_r = db;
	return 0;
}

void userdb_close(struct userdb **dbp)
{
	struct userdb *db = *dbp;

	if (db == NULL)
		return;
	*dbp = NULL;
	userdb_entries_free(db->entries, db->n_entries);
	pthread_rwlock_destroy(&db->lock);
	free(db->dummy_setting);
	free(db->path);
	free(db);
}

int userdb_exists(struct userdb *db, const char *local, const char *domain)
{
	char *user;
	int ret;

	if (local == NULL || domain == NULL)
		return 0;
	user = xasprintf("%s@%s", local, domain);
	str_lower(user);
	if (!userdb_valid_user(user)) {
		free(user);
		return 0;
	}
	ret = userdb_lookup(db, user, NULL);
	free(user);
	return ret;
}

/* The crypt(3) schemes we understand, with the prefix their hashes must
 * carry ("" = any crypt(3) setting). */
static const struct {
	const char *name;
	const char *prefix;
} userdb_schemes[] = {
	{ "CRYPT", "" },
	{ "BLF-CRYPT", "$2" },
	{ "SHA512-CRYPT", "$6$" },
	{ "SHA256-CRYPT", "$5$" },
};

/* The crypt(3) setting inside a "{SCHEME}hash" field, or NULL when the
 * scheme is one we do not understand. */
static const char *userdb_crypt_setting(const char *field)
{
	const char *close;
	size_t name_len;

	if (field[0] != '{' || (close = strchr(field, '}')) == NULL)
		return NULL;
	name_len = (size_t)(close - field - 1);
	for (size_t i = 0; i < N_ELEMENTS(userdb_schemes); i++) {
		const char *hash = close + 1;
		if (strlen(userdb_schemes[i].name) != name_len ||
		    strncasecmp(field + 1, userdb_schemes[i].name, name_len) != 0)
			continue;
		if (strncmp(hash, userdb_schemes[i].prefix, strlen(userdb_schemes[i].prefix)) != 0)
			return NULL;
		/* an empty hash must never mean "any password"; "*" and "!"
		 * style locked entries are not valid settings either */
		if (hash[0] == '\0' || hash[0] == '*' || hash[0] == '!')
			return NULL;
		return hash;
	}
	return NULL;
}

/* 1 match, 0 no match (including an unusable setting), -1 out of memory. */
static int userdb_crypt_check(const char *password, const char *setting)
{
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	const char *out;
	int ret;

	errno = 0;
	out = crypt_rn(password, setting, cd, (int)sizeof(*cd));
	if (out == NULL || out[0] == '*')
		ret = errno == ENOMEM ? -1 : 0;
	else
		ret = userdb_equal_ct(out, setting) ? 1 : 0;
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return ret;
}

int userdb_verify(struct userdb *db, const char *user_at_domain, const char *password)
{
	const char *setting;
	char *user, *hash = NULL;
	int ret;

	if (user_at_domain == NULL || password == NULL)
		return 0;
	user = xstrdup(user_at_domain);
	str_lower(user);
	ret = userdb_valid_user(user) ? userdb_lookup(db, user, &hash) : 0;
	free(user);
	if (ret < 0)
		return -1;
	if (ret == 0) {
		/* spend the same kind of work as for a real user, so the
		 * answer time does not reveal which users exist */
		if (db->dummy_setting != NULL)
			(void)userdb_crypt_check(password, db->dummy_setting);
		return 0;
	}
	setting = userdb_crypt_setting(hash);
	ret = setting != NULL ? userdb_crypt_check(password, setting) : 0;
	explicit_bzero(hash, strlen(hash));
	free(hash);
	return ret;
}

int userdb_login(struct userdb *db, const char *mail_root, const char *user, char *password,
		 char **root_r, char **error_r)
{
	char path[4096];
	const char *at;
	int v = userdb_verify(db, user, password);

	explicit_bzero(password, strlen(password));
	*root_r = NULL;
	if (v <= 0) {
		if (v < 0)
			*error_r = xstrdup("user database unreadable");
		return v;
	}
	at = strrchr(user, '@');
	if (at == NULL)
		return 0;
	char *local = xstrndup(user, (size_t)(at - user));
	int rc = maildir_user_path(mail_root, local, at + 1, path, sizeof(path));
	free(local);
	if (rc < 0) {
		*error_r = xasprintf("no safe Maildir path for %s", user);
		return -1;
	}
	size_t len = strlen(path);
	while (len > 1 && path[len - 1] == '/')
		path[--len] = '\0';
	*root_r = xstrdup(path);
	return 1;
}

char *userdb_hash_password(const char *password)
{
	static const char *const prefixes[] = { "$y$", "$6$" };
	char *result = NULL;

	if (password == NULL)
		return NULL;
	for (size_t i = 0; i < N_ELEMENTS(prefixes) && result == NULL; i++) {
		struct crypt_data *cd;
		const char *out;
		char *salt = crypt_gensalt_ra(prefixes[i], 0, NULL, 0);

		if (salt == NULL)
			continue;
		cd = xcalloc(1, sizeof(*cd));
		out = crypt_rn(password, salt, cd, (int)sizeof(*cd));
		if (out != NULL && out[0] != '*' && strncmp(out, prefixes[i], 3) == 0)
			result = xasprintf("{CRYPT}%s", out);
		explicit_bzero(cd, sizeof(*cd));
		free(cd);
		free(salt);
	}
	return result;
}

/* ----------------------------------------------------------- file editing */

/* Take the editors' lock: an flock on "<path>.lock", a file that is never
 * renamed, so every editor locks the same inode. Returns the fd or -1. */
static int userdb_lock_file(const char *path, char **error_r)
{
	char *lock_path = xasprintf("%s.lock", path);
	int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);

	if (fd < 0) {
		*error_r = userdb_error("cannot open lock file", lock_path, errno);
		free(lock_path);
		return -1;
	}
	while (flock(fd, LOCK_EX) < 0) {
		if (errno == EINTR)
			continue;
		*error_r = userdb_error("cannot lock", lock_path, errno);
		close(fd);
		free(lock_path);
		return -1;
	}
	free(lock_path);
	return fd;
}

static char *userdb_dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (slash == NULL)
		return xstrdup(".");
	if (slash == path)
		return xstrdup("/");
	return xstrndup(path, (size_t)(slash - path));
}

static int userdb_write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Replace path with data: temp file (0600) in the same directory, fsync,
 * rename, fsync the directory. old_st (when the file existed) supplies the
 * owner to keep, so a file chowned to the daemon's user stays readable by
 * it after root edits it. */
static int userdb_write_atomic(const char *path, const char *data, size_t len,
			       const struct stat *old_st, char **error_r)
{
	char *tmp = xasprintf("%s.tmp.XXXXXX", path);
	char *dir = NULL;
	int fd, dfd, err;

	fd = mkstemp(tmp);
	if (fd < 0) {
		*error_r = userdb_error("cannot create temp file", tmp, errno);
		free(tmp);
		return -1;
	}
	(void)fcntl(fd, F_SETFD, FD_CLOEXEC);
	if (fchmod(fd, 0600) < 0) {
		*error_r = userdb_error("cannot chmod", tmp, errno);
		goto fail_fd;
	}
	if (old_st != NULL && (old_st->st_uid != geteuid() || old_st->st_gid != getegid()) &&
	    fchown(fd, old_st->st_uid, old_st->st_gid) < 0) {
		*error_r = userdb_error("cannot keep the owner of", path, errno);
		goto fail_fd;
	}
	if (userdb_write_all(fd, data, len) < 0) {
		*error_r = userdb_error("cannot write", tmp, errno);
		goto fail_fd;
	}
	if (fsync(fd) < 0) {
		*error_r = userdb_error("cannot fsync", tmp, errno);
		goto fail_fd;
	}
	if (close(fd) < 0) {
		fd = -1;
		*error_r = userdb_error("cannot close", tmp, errno);
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		*error_r = userdb_error("cannot rename temp file to", path, errno);
		goto fail;
	}
	free(tmp);
	tmp = NULL;

	/* the rename is only durable once the directory is */
	dir = userdb_dir_of(path);
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0) {
		err = errno;
		if (dfd >= 0)
			close(dfd);
		*error_r = userdb_error("cannot fsync directory", dir, err);
		free(dir);
		return -1;
	}
	close(dfd);
	free(dir);
	return 0;

fail_fd:
	close(fd);
fail:
	if (tmp != NULL) {
		unlink(tmp);
		free(tmp);
	}
	return -1;
}

/* The one editor behind set and delete: hash NULL deletes every line of
 * the user, otherwise the first line's password field is replaced (extra
 * fields kept) or a line is appended. */
static int userdb_file_edit(const char *path_in, const char *user_in, const char *hash,
			    bool must_exist, bool must_not_exist, char **error_r)
{
	/* a symlinked passwd-file (shared with Dovecot, say) is edited where
	 * it really lives; renaming over the link would replace it instead */
	char *path = realpath(path_in, NULL);
	struct userdb_buf out = { 0 };
	struct userdb_ident ident;
	struct userdb_line l;
	struct stat st;
	size_t len, pos = 0, found = 0;
	char *data, *user;
	int lock_fd, ret = -1;

	if (path == NULL)
		path = xstrdup(path_in); /* not there yet: created below */
	if (!userdb_valid_user(user_in)) {
		*error_r = xasprintf("invalid user name: %s", user_in);
		free(path);
		return -1;
	}
	if (hash != NULL && (hash[0] == '\0' || strpbrk(hash, ":\r\n") != NULL)) {
		*error_r = xstrdup("invalid password hash");
		free(path);
		return -1;
	}
	user = xstrdup(user_in);
	str_lower(user);

	if ((lock_fd = userdb_lock_file(path, error_r)) < 0) {
		free(user);
		free(path);
		return -1;
	}
	if (userdb_read_file(path, &data, &len, &st, &ident, error_r) < 0)
		goto out_unlock;

	userdb_buf_append(&out, "", 0);
	while (userdb_line_next(data, len, &pos, &l)) {
		char *line_user = userdb_line_user(&l);
		bool match = line_user != NULL && strcmp(line_user, user) == 0;

		free(line_user);
		if (match && found++ == 0 && hash != NULL) {
			userdb_buf_append_str(&out, user);
			userdb_buf_append(&out, ":", 1);
			userdb_buf_append_str(&out, hash);
			/* extra fields and the original line ending stay */
			userdb_buf_append(&out, l.pass + l.pass_len,
					  (size_t)(l.end - (l.pass + l.pass_len)));
		} else if (match && hash == NULL) {
			continue; /* drop the line with its newline */
		} else {
			userdb_buf_append(&out, l.start, (size_t)(l.end - l.start));
		}
		if (l.end < data + len)
			userdb_buf_append(&out, "\n", 1);
	}

	if (found == 0 && (must_exist || hash == NULL)) {
		*error_r = xasprintf("no such user: %s", user);
		goto out_free;
	}
	if (found > 0 && must_not_exist) {
		*error_r = xasprintf("user already exists: %s", user);
		goto out_free;
	}
	if (found == 0) {
		if (out.len > 0 && out.data[out.len - 1] != '\n')
			userdb_buf_append(&out, "\n", 1);
		userdb_buf_append_str(&out, user);
		userdb_buf_append(&out, ":", 1);
		userdb_buf_append_str(&out, hash);
		userdb_buf_append(&out, "\n", 1);
	}
	ret = userdb_write_atomic(path, out.data, out.len, ident.exists ? &st : NULL, error_r);

out_free:
	explicit_bzero(out.data, out.len);
	free(out.data);
	explicit_bzero(data, len);
	free(data);
out_unlock:
	close(lock_fd); /* releases the flock */
	free(user);
	free(path);
	return ret;
}

int userdb_file_set(const char *path, const char *user, const char *hash, bool must_exist,
		    bool must_not_exist, char **error_r)
{
	if (hash == NULL) {
		*error_r = xstrdup("invalid password hash");
		return -1;
	}
	return userdb_file_edit(path, user, hash, must_exist, must_not_exist, error_r);
}

int userdb_file_delete(const char *path, const char *user, char **error_r)
{
	return userdb_file_edit(path, user, NULL, true, false, error_r);
}

int userdb_file_list(const char *path, void (*cb)(const char *user, void *ctx), void *ctx,
		     char **error_r)
{
	struct userdb_ident ident;
	struct userdb_line l;
	size_t len, pos = 0;
	char *data;

	/* no lock needed: editors replace the file by rename, so we read
	 * either the old or the new one in full */
	if (userdb_read_file(path, &data, &len, NULL, &ident, error_r) < 0)
		return -1;
	while (userdb_line_next(data, len, &pos, &l)) {
		char *user = userdb_line_user(&l);
		if (user != NULL)
			cb(user, ctx);
		free(user);
	}
	explicit_bzero(data, len);
	free(data);
	return 0;
}
