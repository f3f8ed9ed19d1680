/*
 * maildir.c — the Maildir store's write side: safe paths, directory
 * creation, unique file names and the all-or-nothing delivery that lets the
 * SMTP session say 250.
 *
 * A delivery writes one file per target into tmp/, fsyncs each, renames them
 * all into new/ (as "<unique>,S=<size>", never over an existing file) and
 * fsyncs every new/ directory involved; only then has the
 * message been delivered. If any step fails for any target, every file of
 * this delivery is unlinked again — from tmp/ or from new/ — so the sender's
 * retry after our 4xx never produces a partial set of copies, and nothing
 * half-written is ever visible in new/. A crash between the steps can leave
 * a file in tmp/ (never seen by readers) or, at worst, a copy in new/ of a
 * message the sender will retry: a duplicate, never a loss.
 *
 * Paths come only from parts checked here (maildir_user_path) or from the
 * configuration; nothing here is global except the name counter, so any
 * number of worker threads may deliver at once.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "backends/backends.h"

/* Longest Maildir++ folder name we create (one path component, with ".") */
#define MAILDIR_FOLDER_MAX 200
/* Attempts at a fresh unique name when tmp/ already has the one we chose */
#define MAILDIR_OPEN_ATTEMPTS 4
/* ... and when new/ already has it (the file there is never replaced) */
#define MAILDIR_RENAME_ATTEMPTS 4

/* -------------------------------------------------------------- names */

static const char maildir_local_specials[] = ".!#$&'*+=?^_`{|}~-";

static bool maildir_local_char_ok(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       (c != '\0' && strchr(maildir_local_specials, c) != NULL);
}

static bool maildir_domain_char_ok(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
}

/*
 * Copy src lower-cased into dst when it is a safe single path component:
 * 1..max octets, only characters accepted by char_ok, no leading or trailing
 * dot and no "..". That refuses ".", "..", "/", NUL and control characters
 * by construction, and hidden names (".Junk" would be a folder).
 */
static bool maildir_copy_part(const char *src, bool (*char_ok)(unsigned char c), char *dst,
			      size_t max)
{
	size_t len = 0;

	if (src == NULL)
		return false;
	for (; src[len] != '\0'; len++) {
		unsigned char c = (unsigned char)src[len];

		/* ASCII only: tolower() would follow the locale */
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');

		if (len >= max || !char_ok(c))
			return false;
		if (c == '.' && (len == 0 || dst[len - 1] == '.'))
			return false;
		dst[len] = (char)c;
	}
	if (len == 0 || dst[len - 1] == '.')
		return false;
	dst[len] = '\0';
	return true;
}

/* Length of root without trailing slashes (but "/" stays "/"). */
static size_t maildir_root_len(const char *root)
{
	size_t len = strlen(root);

	while (len > 1 && root[len - 1] == '/')
		len--;
	return len;
}

int maildir_user_path(const char *mail_root, const char *local, const char *domain,
		      char *out, size_t outsz)
{
	char l[SMTP_LOCAL_MAX + 1], d[SMTP_DOMAIN_MAX + 1];

	if (outsz > 0)
		out[0] = '\0';
	if (mail_root == NULL || mail_root[0] == '\0' ||
	    !maildir_copy_part(local, maildir_local_char_ok, l, SMTP_LOCAL_MAX) ||
	    !maildir_copy_part(domain, maildir_domain_char_ok, d, SMTP_DOMAIN_MAX)) {
		errno = EINVAL;
		return -1;
	}

	size_t root_len = maildir_root_len(mail_root);
	const char *sep = mail_root[root_len - 1] == '/' ? "" : "/";
	int n = snprintf(out, outsz, "%.*s%s%s/%s/", (int)root_len, mail_root, sep, d, l);

	if (n < 0 || (size_t)n >= outsz) {
		if (outsz > 0)
			out[0] = '\0';
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

/* Maildir++ folder names are one hidden directory: ".Junk", ".Archive.2024". */
static bool maildir_folder_ok(const char *folder)
{
	size_t len = strlen(folder);

	if (len == 0 || len > MAILDIR_FOLDER_MAX || folder[0] == '.' || folder[len - 1] == '.' ||
	    strstr(folder, "..") != NULL)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)folder[i];

		if (c < 0x20 || c > 0x7e || c == '/')
			return false;
	}
	return true;
}

static atomic_uint_fast64_t maildir_seq;

void (*maildir_unique_name_hook)(char *out, size_t outsz);

void maildir_unique_name(char *out, size_t outsz)
{
	struct timespec ts;
	char host[256], esc[sizeof(host) * 4];
	size_t e = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	/* not cached: a hostname change must show in names made afterwards */
	if (gethostname(host, sizeof(host)) < 0 || host[0] == '\0')
		strcpy(host, "localhost");
	host[sizeof(host) - 1] = '\0';
	/* '/' would make a path and ':' starts the info suffix (maildir spec) */
	for (const char *h = host; *h != '\0'; h++) {
		if (*h == '/') {
			memcpy(esc + e, "\\057", 4);
			e += 4;
		} else if (*h == ':') {
			memcpy(esc + e, "\\072", 4);
			e += 4;
		} else {
			esc[e++] = *h;
		}
	}
	esc[e] = '\0';

	uint_fast64_t seq = atomic_fetch_add(&maildir_seq, 1);

	snprintf(out, outsz, "%lld.M%ldP%ldQ%llu.%s", (long long)ts.tv_sec, ts.tv_nsec / 1000,
		 (long)getpid(), (unsigned long long)seq, esc);
}

/* ------------------------------------------------------- directories */

static void maildir_set_error(char **error_r, const char *what, const char *path)
{
	int err = errno;
	char buf[128];

	if (error_r != NULL)
		*error_r = xasprintf("%s %s: %s", what, path, strerror_r(err, buf, sizeof(buf)));
	errno = err;
}

/* fsync a directory so that an entry just created in it survives a crash. */
static int maildir_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (fsync(fd) < 0) {
		int err = errno;

		close(fd);
		errno = err;
		return -1;
	}
	close(fd);
	return 0;
}

/* fsync the directory holding path (path has no trailing slash). */
static int maildir_fsync_parent(char *path, char **error_r)
{
	char *slash = strrchr(path, '/');
	int rc;

	if (slash == NULL)
		rc = maildir_fsync_dir(".");
	else if (slash == path)
		rc = maildir_fsync_dir("/");
	else {
		*slash = '\0';
		rc = maildir_fsync_dir(path);
		if (rc < 0)
			maildir_set_error(error_r, "fsync", path);
		*slash = '/';
		return rc;
	}
	if (rc < 0)
		maildir_set_error(error_r, "fsync parent of", path);
	return rc;
}

/*
 * mkdir(path, 0700); an existing entry is fine. A directory we create is
 * made durable in its parent at once, so a delivery acknowledged into a
 * brand-new Maildir cannot vanish with its directory after a crash.
 */
static int maildir_mkdir(char *path, bool *created_r, char **error_r)
{
	*created_r = false;
	if (mkdir(path, 0700) == 0) {
		*created_r = true;
		return maildir_fsync_parent(path, error_r);
	}
	if (errno == EEXIST)
		return 0;
	maildir_set_error(error_r, "mkdir", path);
	return -1;
}

/* mkdir -p: the common case (it exists) costs one system call. */
static int maildir_mkdir_p(char *path, char **error_r)
{
	bool created;

	if (mkdir(path, 0700) == 0)
		return maildir_fsync_parent(path, error_r);
	if (errno == EEXIST)
		return 0;
	if (errno != ENOENT) {
		maildir_set_error(error_r, "mkdir", path);
		return -1;
	}

	char *slash = strrchr(path, '/');

	if (slash == NULL || slash == path) {
		errno = ENOENT;
		maildir_set_error(error_r, "mkdir", path);
		return -1;
	}
	*slash = '\0';

	int rc = maildir_mkdir_p(path, error_r);

	*slash = '/';
	if (rc < 0)
		return -1;
	/* another thread may have made it meanwhile: maildir_mkdir allows that */
	return maildir_mkdir(path, &created, error_r);
}

/* The Maildir directory of a target: root, or root/.Folder. */
static char *maildir_dir_path(const char *root, const char *folder)
{
	size_t root_len = maildir_root_len(root);

	if (folder == NULL)
		return xstrndup(root, root_len);
	return xasprintf("%.*s%s.%s", (int)root_len, root, root[root_len - 1] == '/' ? "" : "/",
			 folder);
}

int maildir_create(const char *root, const char *folder, char **error_r)
{
	static const char *const subdirs[] = { "tmp", "new", "cur" };
	char *base, *dir, *path;
	bool created;
	int rc = -1;

	if (root == NULL || root[0] == '\0') {
		errno = EINVAL;
		if (error_r != NULL)
			*error_r = xstrdup("maildir: empty root path");
		return -1;
	}
	if (folder != NULL && !maildir_folder_ok(folder)) {
		errno = EINVAL;
		if (error_r != NULL)
			*error_r = xasprintf("maildir: invalid folder name \"%s\"", folder);
		return -1;
	}

	base = maildir_dir_path(root, NULL);
	dir = maildir_dir_path(root, folder);
	if (maildir_mkdir_p(base, error_r) < 0)
		goto out;
	if (folder != NULL && maildir_mkdir(dir, &created, error_r) < 0)
		goto out;

	for (size_t i = 0; i < N_ELEMENTS(subdirs); i++) {
		path = xasprintf("%s/%s", dir, subdirs[i]);
		if (maildir_mkdir(path, &created, error_r) < 0) {
			free(path);
			goto out;
		}
		free(path);
	}

	if (folder != NULL) {
		/* Maildir++: marks the directory as a folder for readers (IMAP) */
		path = xasprintf("%s/maildirfolder", dir);

		int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);

		if (fd < 0) {
			maildir_set_error(error_r, "create", path);
			free(path);
			goto out;
		}
		close(fd);
		free(path);
	}
	rc = 0;
out:
	{
		int err = errno;

		free(base);
		free(dir);
		errno = err;
	}
	return rc;
}

/* ------------------------------------------------- no-replace rename */

int maildir_link_noreplace(const char *from, const char *to)
{
	if (link(from, to) < 0)
		return -1;
	if (unlink(from) < 0) {
		int err = errno;

		/* one file, two names: take the new one back so that the caller
		 * still owns exactly the file at from */
		(void)unlink(to);
		errno = err;
		return -1;
	}
	return 0;
}

int maildir_rename_noreplace(const char *from, const char *to)
{
#ifdef RENAME_NOREPLACE
	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
		return 0;
	/* EINVAL: this file system has no RENAME_NOREPLACE; ENOSYS: nor has
	 * the kernel. Every other error (EEXIST among them) is the answer. */
	if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
		return -1;
#endif
	return maildir_link_noreplace(from, to);
}

/* ---------------------------------------------------------- delivery */

struct maildir_copy {
	char *dir;      /* the Maildir this copy goes to (root or root/.Folder) */
	char *tmp_path;
	char *new_path;
	bool in_tmp;    /* our file exists at tmp_path */
	bool in_new;    /* our file has been renamed to new_path */
	bool fixed;     /* the target named the file: never renamed to another name */
	long long size; /* octets in the file as stored */
};

/*
 * The name in new/: "<unique>,S=<size>", Dovecot's convention, with the
 * file's size as stored so that IMAP and POP3 can answer sizes without a
 * stat; the ":2,<flags>" info is added on the move to cur/.
 */
static char *maildir_new_path(const struct maildir_copy *copy, const char *name)
{
	return xasprintf("%s/new/%s,S=%lld", copy->dir, name, copy->size);
}

/* Record the first failure of a delivery: "<what> <path>: <strerror>". */
static void maildir_job_fail(struct maildir_job *job, int err, const char *what,
			     const char *path)
{
	char buf[128];

	if (job->error != 0)
		return;
	job->error = err;
	snprintf(job->error_text, sizeof(job->error_text), "%s %s: %s", what, path,
		 strerror_r(err, buf, sizeof(buf)));
}

static void maildir_job_fail_text(struct maildir_job *job, int err, const char *text)
{
	if (job->error != 0)
		return;
	job->error = err;
	snprintf(job->error_text, sizeof(job->error_text), "%s", text);
}

/* writev all of iov, retrying after EINTR and short writes. */
static int maildir_writev_all(int fd, struct iovec *iov, int iovcnt)
{
	while (iovcnt > 0) {
		if (iov->iov_len == 0) {
			iov++;
			iovcnt--;
			continue;
		}

		ssize_t n = writev(fd, iov, iovcnt);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			/* no progress and no reason given: treat as a full disk */
			errno = ENOSPC;
			return -1;
		}
		size_t done = (size_t)n;

		while (iovcnt > 0 && done >= iov->iov_len) {
			done -= iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (char *)iov->iov_base + done;
			iov->iov_len -= done;
		}
	}
	return 0;
}

/* Octets of LF-converted body written per write() call. */
#define MAILDIR_LF_CHUNK 65536

/*
 * Write the body with each CRLF turned into LF. The body keeps the line
 * endings it arrived with (lib/dot_reader.c); files in the store have LF
 * endings, as mail clients reading a Maildir expect. A bare LF stays LF and
 * a bare CR stays CR, so the file is byte for byte what the reader made
 * before it started keeping CRLF. The file's size is body_len minus the
 * number of CRLF pairs in it.
 */
static int maildir_write_body_lf(int fd, const char *body, size_t body_len)
{
	char buf[MAILDIR_LF_CHUNK];
	size_t n = 0;

	for (size_t i = 0; i < body_len; i++) {
		if (body[i] == '\r' && i + 1 < body_len && body[i + 1] == '\n')
			continue; /* the LF comes next */
		buf[n++] = body[i];
		if (n == sizeof(buf) || i + 1 == body_len) {
			struct iovec iov = { .iov_base = buf, .iov_len = n };

			if (maildir_writev_all(fd, &iov, 1) < 0)
				return -1;
			n = 0;
		}
	}
	return 0;
}

/* The message without the X-Spam-* fields its sender put in its header,
 * nor an Authentication-Results claiming our authserv-id (mxguard's own
 * come in the prefix): they would pass for our verdict. */
static int maildir_write_message(int fd, const char *body, size_t body_len,
				 const char *authserv_id)
{
	size_t pos = 0, done = 0, span[2];

	while (msg_forged_next(body, body_len, authserv_id, &pos, span)) {
		if (maildir_write_body_lf(fd, body + done, span[0] - done) < 0)
			return -1;
		done = span[1];
	}
	return maildir_write_body_lf(fd, body + done, body_len - done);
}

/* A fresh unique name (the test hook's, when a test set one). */
static void maildir_next_name(char *out, size_t outsz)
{
	if (maildir_unique_name_hook != NULL)
		maildir_unique_name_hook(out, outsz);
	else
		maildir_unique_name(out, outsz);
}

/* Write one target's copy into its tmp/ and make it durable there. */
static int maildir_write_copy(struct maildir_job *job, const struct maildir_target *target,
			      struct maildir_copy *copy, const char *body, size_t body_len)
{
	char name[512];
	char *err_text = NULL;
	int fd = -1;

	if (target->root == NULL || target->root[0] == '\0') {
		maildir_job_fail_text(job, EINVAL, "maildir: target without a root path");
		return -1;
	}
	if (maildir_create(target->root, target->folder, &err_text) < 0) {
		maildir_job_fail_text(job, errno, err_text != NULL ? err_text : "maildir: create failed");
		free(err_text);
		return -1;
	}
	copy->dir = maildir_dir_path(target->root, target->folder);

	for (int attempt = 1;; attempt++) {
		if (target->name != NULL)
			str_copy(name, target->name, sizeof(name));
		else
			maildir_next_name(name, sizeof(name));
		copy->tmp_path = xasprintf("%s/tmp/%s", copy->dir, name);
		fd = open(copy->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0)
			break;
		/* EEXIST: a stale file from a clock step back; pick another name */
		if (errno != EEXIST || attempt == MAILDIR_OPEN_ATTEMPTS || target->name != NULL) {
			maildir_job_fail(job, errno, "open", copy->tmp_path);
			return -1;
		}
		free(copy->tmp_path);
		copy->tmp_path = NULL;
	}
	copy->in_tmp = true;
	copy->fixed = target->name != NULL;

	struct iovec iov[2] = {
		{ .iov_base = target->headers, .iov_len = target->headers ? strlen(target->headers) : 0 },
		{ .iov_base = (void *)job->prefix, .iov_len = job->prefix ? job->prefix_len : 0 },
	};

	if (maildir_writev_all(fd, iov, N_ELEMENTS(iov)) < 0 ||
	    maildir_write_message(fd, body, body_len, job->authserv_id) < 0) {
		maildir_job_fail(job, errno, "write", copy->tmp_path);
		close(fd);
		return -1;
	}
	if (job->fsync && fsync(fd) < 0) {
		maildir_job_fail(job, errno, "fsync", copy->tmp_path);
		close(fd);
		return -1;
	}
	/* the size as stored, whatever the writing above turned the body into */
	struct stat st;

	if (fstat(fd, &st) < 0) {
		maildir_job_fail(job, errno, "fstat", copy->tmp_path);
		close(fd);
		return -1;
	}
	copy->size = (long long)st.st_size;
	copy->new_path = maildir_new_path(copy, name);
	/* Linux releases the descriptor even when close() reports EINTR */
	if (close(fd) < 0 && errno != EINTR) {
		maildir_job_fail(job, errno, "close", copy->tmp_path);
		return -1;
	}
	return 0;
}

static void maildir_copies_free(struct maildir_copy *copies, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(copies[i].dir);
		free(copies[i].tmp_path);
		free(copies[i].new_path);
	}
	free(copies);
}

/*
 * Move a copy from tmp/ into new/. A file already in new/ under the chosen
 * name is someone's mail and is never replaced: the copy gets a fresh name
 * instead, a bounded number of times (a taken name means a clock stepped
 * back or a second host shares the Maildir under our hostname).
 */
static int maildir_publish_copy(struct maildir_job *job, struct maildir_copy *copy)
{
	char name[512];

	for (int attempt = 1;; attempt++) {
		if (maildir_rename_noreplace(copy->tmp_path, copy->new_path) == 0)
			break;
		if (errno != EEXIST || attempt == MAILDIR_RENAME_ATTEMPTS || copy->fixed) {
			maildir_job_fail(job, errno, "rename to", copy->new_path);
			return -1;
		}
		maildir_next_name(name, sizeof(name));
		free(copy->new_path);
		copy->new_path = maildir_new_path(copy, name);
	}
	copy->in_tmp = false;
	copy->in_new = true;
	return 0;
}

/* Take back every file of the job: all or nothing. */
static void maildir_unwind(struct maildir_job *job)
{
	struct maildir_copy *copies = job->copies;

	if (copies != NULL) {
		for (size_t i = 0; i < job->n_targets; i++) {
			if (copies[i].in_new)
				unlink(copies[i].new_path);
			else if (copies[i].in_tmp)
				unlink(copies[i].tmp_path);
		}
		maildir_copies_free(copies, job->n_targets);
		job->copies = NULL;
	}
	if (job->error == 0) {
		job->error = EIO;
		snprintf(job->error_text, sizeof(job->error_text), "maildir: delivery failed");
	}
	errno = job->error;
}

int maildir_prepare(struct maildir_job *job)
{
	const char *body;
	size_t body_len = 0, i;

	/* outputs start clean; results of an earlier call on this job are freed */
	job->error = 0;
	job->error_text[0] = '\0';
	maildir_job_free_results(job);

	if (job->targets == NULL || job->n_targets == 0) {
		maildir_job_fail_text(job, EINVAL, "maildir: no delivery targets");
		goto fail;
	}
	if (job->body == NULL) {
		maildir_job_fail_text(job, EINVAL, "maildir: no message body");
		goto fail;
	}
	body = msgbody_contents(job->body, &body_len);
	if (body == NULL) {
		char buf[128];
		int err = errno != 0 ? errno : EIO;

		job->error = err;
		snprintf(job->error_text, sizeof(job->error_text), "read message body: %s",
			 strerror_r(err, buf, sizeof(buf)));
		goto fail;
	}

	job->copies = xcalloc(job->n_targets, sizeof(*job->copies));
	for (i = 0; i < job->n_targets; i++) {
		if (maildir_write_copy(job, &job->targets[i], &job->copies[i], body, body_len) < 0)
			goto fail;
	}
	return 0;

fail:
	maildir_unwind(job);
	return -1;
}

int maildir_commit(struct maildir_job *job, bool keep)
{
	struct maildir_copy *copies = job->copies;
	size_t i;

	if (copies == NULL) {
		maildir_job_fail_text(job, EINVAL, "maildir: nothing prepared");
		errno = job->error;
		return -1;
	}
	if (!keep) {
		maildir_unwind(job);
		job->error = 0;
		job->error_text[0] = '\0';
		return 0;
	}
	/* Every copy is durable in tmp/; now publish them all. */
	for (i = 0; i < job->n_targets; i++) {
		if (maildir_publish_copy(job, &copies[i]) < 0)
			goto fail;
	}

	if (job->fsync) {
		for (i = 0; i < job->n_targets; i++) {
			bool seen = false;

			for (size_t j = 0; j < i && !seen; j++)
				seen = strcmp(copies[j].dir, copies[i].dir) == 0;
			if (seen)
				continue;

			char *new_dir = xasprintf("%s/new", copies[i].dir);

			if (maildir_fsync_dir(new_dir) < 0) {
				maildir_job_fail(job, errno, "fsync", new_dir);
				free(new_dir);
				goto fail;
			}
			free(new_dir);
		}
	}

	job->paths = xcalloc(job->n_targets, sizeof(*job->paths));
	for (i = 0; i < job->n_targets; i++) {
		job->paths[i] = copies[i].new_path;
		copies[i].new_path = NULL;
	}
	maildir_copies_free(copies, job->n_targets);
	job->copies = NULL;
	return 0;

fail:
	maildir_unwind(job);
	return -1;
}

int maildir_deliver(struct maildir_job *job)
{
	if (maildir_prepare(job) < 0)
		return -1;
	return maildir_commit(job, true);
}

void maildir_job_free_results(struct maildir_job *job)
{
	if (job->copies != NULL) {
		/* prepared and never committed: nothing of it stays */
		int error = job->error;
		maildir_unwind(job);
		job->error = error;
	}
	if (job->paths == NULL)
		return;
	for (size_t i = 0; i < job->n_targets; i++)
		free(job->paths[i]);
	free(job->paths);
	job->paths = NULL;
}
