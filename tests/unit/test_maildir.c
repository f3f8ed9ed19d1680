/*
 * test_maildir.c — unit tests for backends/maildir.c: safe user paths,
 * folder creation, unique names, the ",S=<size>" field, the no-replace
 * rename and the all-or-nothing delivery.
 *
 * Every test works on real files under its own mkdtemp directory. The
 * full-disk case mounts a real 64 KiB tmpfs (the suite runs as root; without
 * the privilege that test is skipped), and the hostname escaping case sets a
 * hostname inside a private UTS namespace of a forked child.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "backends/backends.h"

struct fixture {
	char dir[64];
	char mnt[128];
	bool mounted;
};

static int setup_dir(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/mxguard-test-maildir.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	*state = f;
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	if (type == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static int teardown_dir(void **state)
{
	struct fixture *f = *state;

	/* lazy: a failed assertion may have left a file open in the tmpfs */
	if (f->mounted)
		umount2(f->mnt, MNT_DETACH);
	/* FTW_MOUNT: never wander into a tmpfs that failed to unmount */
	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
	free(f);
	return 0;
}

/* Mount a 64 KiB tmpfs at <dir>/small; returns false when not permitted. */
static bool mount_small_tmpfs(struct fixture *f)
{
	snprintf(f->mnt, sizeof(f->mnt), "%s/small", f->dir);
	assert_int_equal(mkdir(f->mnt, 0700), 0);
	if (mount("tmpfs", f->mnt, "tmpfs", 0, "size=64k,mode=0700") < 0) {
		print_message("cannot mount tmpfs (%s): skipped\n", strerror(errno));
		return false;
	}
	f->mounted = true;
	return true;
}

static char *path_join(const char *a, const char *b)
{
	return xasprintf("%s/%s", a, b);
}

/* A Maildir++ folder's directory, spelled the way deliveries report it. */
static char *folder_dir(const char *root, const char *folder)
{
	size_t n = strlen(root);

	while (n > 1 && root[n - 1] == '/')
		n--;
	return xasprintf("%.*s/.%s", (int)n, root, folder);
}

/* Entries in a directory, or -1 when it cannot be opened. */
static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			n++;
	}
	closedir(d);
	return n;
}

static int count_sub(const char *maildir, const char *sub)
{
	char *p = path_join(maildir, sub);
	int n = count_entries(p);

	free(p);
	return n;
}

static char *slurp(const char *path, size_t *len_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf;
	size_t off = 0;

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	buf = malloc((size_t)st.st_size + 1);
	assert_non_null(buf);
	while (off < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);

		assert_true(n > 0);
		off += (size_t)n;
	}
	close(fd);
	*len_r = off;
	return buf;
}

static void assert_file_is(const char *path, const char *a, const char *b, const char *c,
			   size_t c_len)
{
	size_t len, la = a ? strlen(a) : 0, lb = b ? strlen(b) : 0;
	char *got = slurp(path, &len);
	struct stat st;

	assert_int_equal(len, la + lb + c_len);
	if (la > 0)
		assert_memory_equal(got, a, la);
	if (lb > 0)
		assert_memory_equal(got + la, b, lb);
	if (c_len > 0)
		assert_memory_equal(got + la + lb, c, c_len);
	free(got);
	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
}

static struct msgbody *body_from(const char *spool, size_t threshold, const char *data,
				 size_t len)
{
	struct msgbody *b = msgbody_new(spool, threshold);

	assert_int_equal(msgbody_append(b, data, len), 0);
	assert_int_equal(msgbody_seal(b), 0);
	return b;
}

/* Pseudo-random bytes without CR: stored unchanged (the writer only turns
 * CRLF into LF, see test_crlf_stored_as_lf). */
static char *make_data(size_t len, unsigned seed)
{
	char *p = malloc(len > 0 ? len : 1);
	uint32_t x = seed * 2654435761u + 1;

	assert_non_null(p);
	for (size_t i = 0; i < len; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (char)(x >> 16);
		if (p[i] == '\r')
			p[i] = 'r';
	}
	return p;
}

/* A user's Maildir root below the fixture, built the way the session does. */
static char *user_root(const char *base, const char *local, const char *domain)
{
	char buf[512];

	assert_int_equal(maildir_user_path(base, local, domain, buf, sizeof(buf)), 0);
	return xstrdup(buf);
}

/* Path of the Maildir a final path lives in: strip "/new/<name>". */
static void assert_in_new_of(const char *path, const char *maildir)
{
	size_t n = strlen(maildir);

	while (n > 1 && maildir[n - 1] == '/')
		n--;
	assert_memory_equal(path, maildir, n);
	assert_memory_equal(path + n, "/new/", 5);
	assert_null(strchr(path + n + 5, '/'));
}

/* A name in new/ ends in ",S=<size>" with the file's st_size; returns it. */
static long long assert_size_field(const char *path)
{
	const char *base = strrchr(path, '/');
	const char *field;
	struct stat st;
	char *end;
	long long size;

	assert_non_null(base);
	field = strstr(base, ",S=");
	assert_non_null(field);
	/* the only field, and the last thing in the name (no ":2," in new/) */
	assert_null(strstr(field + 1, ","));
	assert_null(strchr(base, ':'));
	assert_true(field[3] >= '0' && field[3] <= '9');
	errno = 0;
	size = strtoll(field + 3, &end, 10);
	assert_int_equal(errno, 0);
	assert_int_equal(*end, '\0');
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(size, st.st_size);
	return size;
}

static const char prefix[] =
	"Received: from client.example (client.example [192.0.2.1])\n"
	"\tby mx.example.test with ESMTP id 0123456789ABCDEF;\n"
	"X-Spam-Score: 1.5\n";

/* ----------------------------------------------------------------- tests */

static void test_deliver_one(void **state)
{
	struct fixture *f = *state;
	const char body[] = "Subject: hello\n\nline one\nline two\n";
	char *root = user_root(f->dir, "alice", "example.test");
	struct maildir_target t = {
		.root = root,
		.headers = (char *)"Return-Path: <s@x.example>\nDelivered-To: alice@example.test\n",
	};
	struct maildir_job job = {
		.targets = &t, .n_targets = 1, .prefix = prefix, .prefix_len = strlen(prefix),
		.body = body_from(f->dir, 1 << 20, body, strlen(body)), .fsync = true,
	};

	assert_int_equal(maildir_deliver(&job), 0);
	assert_int_equal(job.error, 0);
	assert_string_equal(job.error_text, "");
	assert_non_null(job.paths);
	assert_in_new_of(job.paths[0], root);
	assert_file_is(job.paths[0], t.headers, prefix, body, strlen(body));
	assert_int_equal(assert_size_field(job.paths[0]),
			 strlen(t.headers) + strlen(prefix) + strlen(body));
	assert_int_equal(count_sub(root, "new"), 1);
	assert_int_equal(count_sub(root, "tmp"), 0);
	assert_int_equal(count_sub(root, "cur"), 0);

	maildir_job_free_results(&job);
	assert_null(job.paths);
	msgbody_free(&job.body);
	free(root);
}

static void test_deliver_several_with_folder(void **state)
{
	struct fixture *f = *state;
	const char body[] = "Subject: spammy\n\nbuy now\n";
	char *alice = user_root(f->dir, "Alice", "Example.Test");
	char *bob = user_root(f->dir, "bob", "example.test");
	struct maildir_target t[3] = {
		{ .root = alice, .headers = (char *)"Delivered-To: alice@example.test\n" },
		{ .root = bob, .headers = NULL },
		{ .root = alice, .folder = (char *)"Junk",
		  .headers = (char *)"Delivered-To: alice+junk@example.test\n" },
	};
	struct maildir_job job = {
		.targets = t, .n_targets = 3, .prefix = prefix, .prefix_len = strlen(prefix),
		.body = body_from(f->dir, 1 << 20, body, strlen(body)), .fsync = true,
	};
	char *junk = folder_dir(alice, "Junk");
	char *marker = path_join(junk, "maildirfolder");
	struct stat st;

	/* the user path is lower-cased */
	assert_non_null(strstr(alice, "/example.test/alice/"));
	assert_int_equal(maildir_deliver(&job), 0);
	assert_in_new_of(job.paths[0], alice);
	assert_in_new_of(job.paths[1], bob);
	assert_in_new_of(job.paths[2], junk);
	long long sizes[3];

	for (int i = 0; i < 3; i++) {
		assert_file_is(job.paths[i], t[i].headers, prefix, body, strlen(body));
		/* each copy has its own headers, so its own size */
		sizes[i] = assert_size_field(job.paths[i]);
		assert_int_equal(sizes[i], (t[i].headers ? strlen(t[i].headers) : 0) +
					   strlen(prefix) + strlen(body));
		for (int j = 0; j < i; j++) {
			assert_string_not_equal(job.paths[i], job.paths[j]);
			assert_true(sizes[i] != sizes[j]);
		}
	}
	assert_int_equal(count_sub(alice, "new"), 1);
	assert_int_equal(count_sub(alice, "tmp"), 0);
	assert_int_equal(count_sub(bob, "new"), 1);
	assert_int_equal(count_sub(bob, "tmp"), 0);
	assert_int_equal(count_sub(junk, "new"), 1);
	assert_int_equal(count_sub(junk, "tmp"), 0);
	assert_int_equal(count_sub(junk, "cur"), 0);
	assert_int_equal(stat(marker, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_size, 0);
	assert_int_equal(stat(junk, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);

	maildir_job_free_results(&job);
	msgbody_free(&job.body);
	free(marker);
	free(junk);
	free(alice);
	free(bob);
}

static void test_empty_body_and_no_headers(void **state)
{
	struct fixture *f = *state;
	char *root = user_root(f->dir, "carol", "example.test");
	struct maildir_target t = { .root = root };
	struct maildir_job job = {
		.targets = &t, .n_targets = 1,
		.body = msgbody_new(f->dir, 1024), .fsync = true,
	};

	assert_int_equal(msgbody_seal(job.body), 0);
	assert_int_equal(maildir_deliver(&job), 0);
	assert_file_is(job.paths[0], NULL, NULL, NULL, 0);
	assert_int_equal(assert_size_field(job.paths[0]), 0);
	maildir_job_free_results(&job);
	msgbody_free(&job.body);
	free(root);
}

/* The body keeps the CRLF it arrived with; the file has LF endings, and a
 * bare LF or bare CR is stored as it is — in memory, and spilled with CRLF
 * pairs straddling the writer's 64 KiB chunks. */
static void test_crlf_stored_as_lf(void **state)
{
	struct fixture *f = *state;
	static const char body[] = "Subject: x\r\n\r\ncrlf\r\nlf\ncr\rcrcrlf\r\r\n\r\nend\r\n";
	static const char want[] = "Subject: x\n\ncrlf\nlf\ncr\rcrcrlf\r\n\nend\n";
	char *root = user_root(f->dir, "dave", "example.test");
	struct maildir_target t = { .root = root };
	struct maildir_job job = {
		.targets = &t, .n_targets = 1, .prefix = prefix, .prefix_len = strlen(prefix),
		.body = body_from(f->dir, 1 << 20, body, sizeof(body) - 1), .fsync = false,
	};
	const size_t lines = 70000; /* "x\r\n" each: crosses 64 KiB many times */
	char *big = malloc(lines * 3), *big_want = malloc(lines * 2);

	assert_int_equal(maildir_deliver(&job), 0);
	assert_file_is(job.paths[0], NULL, prefix, want, sizeof(want) - 1);
	maildir_job_free_results(&job);
	msgbody_free(&job.body);

	assert_non_null(big);
	assert_non_null(big_want);
	for (size_t i = 0; i < lines; i++) {
		memcpy(big + 3 * i, "x\r\n", 3);
		memcpy(big_want + 2 * i, "x\n", 2);
	}
	job.body = body_from(f->dir, 4096, big, lines * 3);
	assert_true(msgbody_spilled(job.body));
	assert_int_equal(maildir_deliver(&job), 0);
	assert_file_is(job.paths[0], NULL, prefix, big_want, lines * 2);
	maildir_job_free_results(&job);
	msgbody_free(&job.body);
	free(big);
	free(big_want);
	free(root);
}

static void test_spilled_body_identical(void **state)
{
	struct fixture *f = *state;
	const size_t len = 300 * 1024 + 5;
	char *data = make_data(len, 11);
	char *r1 = user_root(f->dir, "mem", "example.test");
	char *r2 = user_root(f->dir, "spill", "example.test");
	struct maildir_target t1 = { .root = r1 }, t2 = { .root = r2 };
	struct maildir_job j1 = {
		.targets = &t1, .n_targets = 1, .prefix = prefix, .prefix_len = strlen(prefix),
		.body = body_from(f->dir, len, data, len), .fsync = true,
	};
	struct maildir_job j2 = {
		.targets = &t2, .n_targets = 1, .prefix = prefix, .prefix_len = strlen(prefix),
		.body = body_from(f->dir, 4096, data, len), .fsync = true,
	};
	size_t l1, l2;
	char *c1, *c2;

	assert_false(msgbody_spilled(j1.body));
	assert_true(msgbody_spilled(j2.body));
	assert_int_equal(maildir_deliver(&j1), 0);
	assert_int_equal(maildir_deliver(&j2), 0);
	assert_file_is(j2.paths[0], NULL, prefix, data, len);
	assert_int_equal(assert_size_field(j1.paths[0]), strlen(prefix) + len);
	assert_int_equal(assert_size_field(j2.paths[0]), strlen(prefix) + len);
	c1 = slurp(j1.paths[0], &l1);
	c2 = slurp(j2.paths[0], &l2);
	assert_int_equal(l1, l2);
	assert_memory_equal(c1, c2, l1);

	free(c1);
	free(c2);
	maildir_job_free_results(&j1);
	maildir_job_free_results(&j2);
	msgbody_free(&j1.body);
	msgbody_free(&j2.body);
	free(r1);
	free(r2);
	free(data);
}

struct names_arg {
	char (*names)[128];
	size_t n;
};

static void *names_thread(void *p)
{
	struct names_arg *a = p;

	for (size_t i = 0; i < a->n; i++)
		maildir_unique_name(a->names[i], sizeof(a->names[i]));
	return NULL;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void test_unique_names_threads(void **state)
{
	enum { THREADS = 4, PER_THREAD = 500, TOTAL = THREADS * PER_THREAD };
	char (*names)[128] = calloc(TOTAL, sizeof(*names));
	pthread_t th[THREADS];
	struct names_arg args[THREADS];
	char host[256];

	assert_non_null(names);
	assert_int_equal(gethostname(host, sizeof(host)), 0);
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct names_arg){ .names = names + i * PER_THREAD, .n = PER_THREAD };
		assert_int_equal(pthread_create(&th[i], NULL, names_thread, &args[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);

	for (int i = 0; i < TOTAL; i++) {
		long long sec;
		long usec, pid;
		unsigned long long seq;
		int used = 0;

		assert_int_equal(sscanf(names[i], "%lld.M%ldP%ldQ%llu.%n", &sec, &usec, &pid, &seq,
					&used), 4);
		assert_true(used > 0);
		assert_true(usec >= 0 && usec < 1000000);
		assert_int_equal(pid, getpid());
		/* this machine's hostname has neither '/' nor ':' to escape */
		assert_string_equal(names[i] + used, host);
	}
	qsort(names, TOTAL, sizeof(*names), cmp_name);
	for (int i = 1; i < TOTAL; i++)
		assert_string_not_equal(names[i - 1], names[i]);
	free(names);
}

static void test_unique_name_escapes_host(void **state)
{
	int fds[2];
	pid_t pid;
	char buf[256] = "";
	ssize_t n;
	int status;
	const char want[] = ".mx\\057a\\072b";

	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char name[256];

		close(fds[0]);
		if (unshare(CLONE_NEWUTS) < 0 || sethostname("mx/a:b", 6) < 0)
			_exit(2);
		maildir_unique_name(name, sizeof(name));
		if (write(fds[1], name, strlen(name)) < 0)
			_exit(1);
		_exit(0);
	}
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == 2) {
		print_message("no UTS namespace here: skipped\n");
		skip();
	}
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_true(n > (ssize_t)strlen(want));
	buf[n] = '\0';
	assert_string_equal(buf + n - strlen(want), want);
	assert_null(strchr(buf, '/'));
	assert_null(strchr(buf, ':'));
}

static void test_user_path(void **state)
{
	char out[512];
	static const char *const bad_local[] = {
		"", ".", "..", "../x", "a/b", "/", ".alice", "alice.", "a..b", "al ice",
		"al\x01ice", "al\x7fice", "al\\ice", "al\"ice", "al@ice", "al%ice", "al:ice",
		"alic\xc3\xa9", "a,b", "(x)",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", /* 65 */
	};
	static const char *const bad_domain[] = {
		"", ".", "..", "../etc", "exa/mple.test", ".example.test", "example.test.",
		"example..test", "ex_ample.test", "[192.0.2.1]", "exa mple", "ex\nample",
		"ex:ample",
	};

	assert_int_equal(maildir_user_path("/var/mail", "Alice", "Example.TEST", out, sizeof(out)), 0);
	assert_string_equal(out, "/var/mail/example.test/alice/");
	assert_int_equal(maildir_user_path("/var/mail//", "bob", "example.test", out, sizeof(out)), 0);
	assert_string_equal(out, "/var/mail/example.test/bob/");
	assert_int_equal(maildir_user_path("./var/mail", "a.b+tag", "mx-1.example.test", out,
					   sizeof(out)), 0);
	assert_string_equal(out, "./var/mail/mx-1.example.test/a.b+tag/");
	assert_int_equal(maildir_user_path("/m", "x!#$&'*+=?^_`{|}~-y", "d", out, sizeof(out)), 0);
	assert_string_equal(out, "/m/d/x!#$&'*+=?^_`{|}~-y/");
	/* 64 octets is the longest local part */
	assert_int_equal(maildir_user_path("/m", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
					   "d", out, sizeof(out)), 0);

	for (size_t i = 0; i < N_ELEMENTS(bad_local); i++) {
		strcpy(out, "untouched");
		if (maildir_user_path("/var/mail", bad_local[i], "example.test", out, sizeof(out)) != -1)
			fail_msg("local part \"%s\" was accepted as %s", bad_local[i], out);
		assert_string_equal(out, "");
	}
	for (size_t i = 0; i < N_ELEMENTS(bad_domain); i++) {
		if (maildir_user_path("/var/mail", "alice", bad_domain[i], out, sizeof(out)) != -1)
			fail_msg("domain \"%s\" was accepted as %s", bad_domain[i], out);
	}
	assert_int_equal(maildir_user_path("/var/mail", NULL, "example.test", out, sizeof(out)), -1);
	assert_int_equal(maildir_user_path("/var/mail", "alice", NULL, out, sizeof(out)), -1);
	assert_int_equal(maildir_user_path("", "alice", "example.test", out, sizeof(out)), -1);
	/* a buffer too small is refused, never truncated */
	assert_int_equal(maildir_user_path("/var/mail", "alice", "example.test", out, 29), -1);
	assert_int_equal(maildir_user_path("/var/mail", "alice", "example.test", out, 30), 0);
}

static void test_create_folders(void **state)
{
	struct fixture *f = *state;
	char *root = path_join(f->dir, "deep/er/maildir");
	char *err = NULL;
	static const char *const bad[] = { "", ".Junk", "a/b", "Ju\x01nk", "Ju\tnk", "..", "a..b",
					   "Junk.", "Ju\xc3\xa9nk" };
	struct stat st;

	assert_int_equal(maildir_create(root, NULL, &err), 0);
	assert_null(err);
	assert_int_equal(count_sub(root, "tmp"), 0);
	assert_int_equal(count_sub(root, "new"), 0);
	assert_int_equal(count_sub(root, "cur"), 0);
	assert_int_equal(stat(root, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
	/* again: everything exists already, still fine */
	assert_int_equal(maildir_create(root, NULL, &err), 0);
	assert_int_equal(maildir_create(root, "Sent Items", &err), 0);
	assert_int_equal(maildir_create(root, "Archive.2024", &err), 0);
	assert_int_equal(count_sub(root, ".Sent Items/cur"), 0);
	assert_int_equal(count_sub(root, ".Archive.2024"), 4);

	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		err = NULL;
		errno = 0;
		if (maildir_create(root, bad[i], &err) != -1)
			fail_msg("folder \"%s\" was accepted", bad[i]);
		assert_int_equal(errno, EINVAL);
		assert_non_null(err);
		free(err);
	}
	/* only the two good folders and tmp/new/cur exist */
	assert_int_equal(count_entries(root), 5);
	free(root);
}

/* Two steps: prepare leaves the copies in tmp/ only; commit(true) makes
 * them visible, commit(false) and an uncommitted free leave nothing. */
static void test_prepare_commit(void **state)
{
	struct fixture *f = *state;
	const char body[] = "Subject: two steps\n\nbody\n";
	char *root = user_root(f->dir, "alice", "example.test");
	struct maildir_target t = { .root = root, .headers = (char *)"Delivered-To: alice@example.test\n" };

	for (int how = 0; how < 3; how++) {
		struct maildir_job job = {
			.targets = &t, .n_targets = 1, .prefix = prefix, .prefix_len = strlen(prefix),
			.body = body_from(f->dir, 1 << 20, body, strlen(body)), .fsync = true,
		};
		assert_int_equal(maildir_prepare(&job), 0);
		assert_int_equal(count_sub(root, "tmp"), 1);
		assert_int_equal(count_sub(root, "new"), how == 0 ? 0 : 1);
		if (how == 0) {
			/* kept */
			assert_int_equal(maildir_commit(&job, true), 0);
			assert_non_null(job.paths);
			assert_in_new_of(job.paths[0], root);
			assert_file_is(job.paths[0], t.headers, prefix, body, strlen(body));
		} else if (how == 1) {
			/* thrown away */
			assert_int_equal(maildir_commit(&job, false), 0);
			assert_int_equal(job.error, 0);
			assert_null(job.paths);
		}
		/* how == 2: freed without a commit */
		maildir_job_free_results(&job);
		assert_int_equal(count_sub(root, "tmp"), 0);
		assert_int_equal(count_sub(root, "new"), 1);
		msgbody_free(&job.body);
	}
	/* a commit with nothing prepared is an error, not a crash */
	struct maildir_job none = { .targets = &t, .n_targets = 1 };
	assert_int_equal(maildir_commit(&none, true), -1);
	assert_int_equal(none.error, EINVAL);
	free(root);
}

/* A sender's X-Spam-* fields (any case, folded ones whole) are left out of
 * the stored copy; everything else, the body too, is kept. */
static void test_forged_spam_headers_dropped(void **state)
{
	struct fixture *f = *state;
	const char body[] =
		"X-Spam-Status: No, score=-100\r\n"
		"Subject: hi\r\n"
		"x-spam-flag:\r\n NO\r\n"
		"X-Spamish: kept\r\n"
		"X-Spam-Score : -5\r\n"
		"\r\n"
		"X-Spam-Status: in the body stays\r\n";
	const char want[] =
		"Subject: hi\n"
		"X-Spamish: kept\n"
		"\n"
		"X-Spam-Status: in the body stays\n";
	char *root = user_root(f->dir, "alice", "example.test");
	struct maildir_target t = { .root = root };
	struct maildir_job job = {
		.targets = &t, .n_targets = 1, .prefix = "", .prefix_len = 0,
		.body = body_from(f->dir, 1 << 20, body, strlen(body)), .fsync = false,
	};

	assert_int_equal(maildir_deliver(&job), 0);
	assert_file_is(job.paths[0], "", "", want, strlen(want));
	maildir_job_free_results(&job);
	msgbody_free(&job.body);
	free(root);
}

/* Nothing of a failed delivery may remain in any tmp/ or new/. */
static void assert_maildir_empty(const char *maildir)
{
	assert_int_equal(count_sub(maildir, "tmp"), 0);
	assert_int_equal(count_sub(maildir, "new"), 0);
	assert_int_equal(count_sub(maildir, "cur"), 0);
}

static void test_all_or_nothing_enospc(void **state)
{
	struct fixture *f = *state;
	const size_t len = 40 * 1024;
	char *data = make_data(len, 21);
	char *r1, *r2, *r3;

	if (!mount_small_tmpfs(f)) {
		free(data);
		skip();
	}
	r1 = user_root(f->mnt, "alice", "example.test");
	r2 = user_root(f->mnt, "bob", "example.test");
	r3 = user_root(f->mnt, "alice", "example.test");

	/* the first copy fits, the second does not */
	struct maildir_target t[3] = { { .root = r1 }, { .root = r2 }, { .root = r3, .folder = (char *)"Junk" } };
	struct maildir_job job = {
		.targets = t, .n_targets = 3, .prefix = prefix, .prefix_len = strlen(prefix),
		.body = body_from(f->dir, 1 << 20, data, len), .fsync = true,
	};
	char *junk = folder_dir(r3, "Junk");

	assert_int_equal(maildir_deliver(&job), -1);
	assert_int_equal(errno, ENOSPC);
	assert_int_equal(job.error, ENOSPC);
	assert_null(job.paths);
	assert_non_null(strstr(job.error_text, "write "));
	assert_non_null(strstr(job.error_text, f->mnt));
	assert_non_null(strstr(job.error_text, "No space left on device"));
	assert_maildir_empty(r1);
	assert_maildir_empty(r2);
	/* the third target was never reached */
	assert_int_equal(count_entries(junk), -1);

	/* the space came back: a small message now goes through */
	msgbody_free(&job.body);
	job.body = body_from(f->dir, 1 << 20, "small\n", 6);
	assert_int_equal(maildir_deliver(&job), 0);
	assert_int_equal(job.error, 0);
	assert_int_equal(count_sub(r1, "new"), 1);
	assert_int_equal(count_sub(r2, "new"), 1);
	assert_int_equal(count_sub(junk, "new"), 1);
	maildir_job_free_results(&job);
	msgbody_free(&job.body);
	free(junk);
	free(r1);
	free(r2);
	free(r3);
	free(data);
}

static void test_all_or_nothing_enospc_single(void **state)
{
	struct fixture *f = *state;
	const size_t len = 200 * 1024;
	char *data = make_data(len, 22);
	char *r1;

	if (!mount_small_tmpfs(f)) {
		free(data);
		skip();
	}
	r1 = user_root(f->mnt, "alice", "example.test");

	struct maildir_target t = { .root = r1 };
	/* spilled body: the same failure from an mmap'd source */
	struct maildir_job job = {
		.targets = &t, .n_targets = 1,
		.body = body_from(f->dir, 1024, data, len), .fsync = true,
	};

	assert_int_equal(maildir_deliver(&job), -1);
	assert_int_equal(job.error, ENOSPC);
	assert_non_null(strstr(job.error_text, r1));
	assert_maildir_empty(r1);
	msgbody_free(&job.body);
	free(r1);
	free(data);
}

static void test_all_or_nothing_enotdir(void **state)
{
	struct fixture *f = *state;
	char *r1 = user_root(f->dir, "alice", "example.test");
	char *blocker = path_join(f->dir, "blocked.test");
	char *r2 = user_root(f->dir, "bob", "blocked.test");
	struct maildir_target t[2] = { { .root = r1 }, { .root = r2 } };
	struct maildir_job job = {
		.targets = t, .n_targets = 2, .prefix = prefix, .prefix_len = strlen(prefix),
		.body = body_from(f->dir, 1 << 20, "hi\n", 3), .fsync = true,
	};
	int fd;

	/* a regular file where the second user's domain directory must be */
	fd = open(blocker, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	close(fd);

	assert_int_equal(maildir_deliver(&job), -1);
	assert_int_equal(job.error, ENOTDIR);
	assert_int_equal(errno, ENOTDIR);
	assert_null(job.paths);
	assert_non_null(strstr(job.error_text, blocker));
	assert_non_null(strstr(job.error_text, "Not a directory"));
	/* the first copy was written to tmp/ and then taken back */
	assert_maildir_empty(r1);

	free(blocker);
	free(r1);
	free(r2);
	msgbody_free(&job.body);
}

static void test_all_or_nothing_after_rename(void **state)
{
	struct fixture *f = *state;
	char *r1 = user_root(f->dir, "alice", "example.test");
	char *r2 = user_root(f->dir, "bob", "example.test");
	char *r2new = xasprintf("%snew", r2); /* r2 ends in '/' */
	struct maildir_target t[2] = { { .root = r1 }, { .root = r2 } };
	struct maildir_job job = {
		.targets = t, .n_targets = 2,
		.body = body_from(f->dir, 1 << 20, "hi\n", 3), .fsync = true,
	};
	char *err = NULL;
	int fd;

	/* bob's new/ is a regular file: both copies reach tmp/, alice's is
	 * renamed into new/, then bob's rename fails */
	assert_int_equal(maildir_create(r1, NULL, &err), 0);
	assert_int_equal(maildir_create(r2, NULL, &err), 0);
	assert_int_equal(rmdir(r2new), 0);
	fd = open(r2new, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	close(fd);

	assert_int_equal(maildir_deliver(&job), -1);
	assert_int_equal(job.error, ENOTDIR);
	assert_non_null(strstr(job.error_text, r2new));
	assert_maildir_empty(r1);
	assert_int_equal(count_sub(r2, "tmp"), 0);

	msgbody_free(&job.body);
	free(r2new);
	free(r1);
	free(r2);
}

static void test_invalid_jobs(void **state)
{
	struct fixture *f = *state;
	struct maildir_target t = { .root = NULL };
	struct maildir_job job = { .targets = &t, .n_targets = 0 };
	struct msgbody *unsealed = msgbody_new(f->dir, 100);

	job.body = body_from(f->dir, 100, "x", 1);
	assert_int_equal(maildir_deliver(&job), -1);
	assert_int_equal(job.error, EINVAL);
	assert_true(job.error_text[0] != '\0');
	job.n_targets = 1;
	assert_int_equal(maildir_deliver(&job), -1);
	assert_int_equal(job.error, EINVAL);
	msgbody_free(&job.body);

	/* a body still being received is refused, not read half-way */
	t.root = path_join(f->dir, "u");
	job.body = unsealed;
	assert_int_equal(msgbody_append(unsealed, "abc", 3), 0);
	assert_int_equal(maildir_deliver(&job), -1);
	assert_int_equal(job.error, EINVAL);
	assert_non_null(strstr(job.error_text, "body"));
	/* a bad folder name never becomes a directory */
	assert_int_equal(msgbody_seal(unsealed), 0);
	t.folder = (char *)"../../etc";
	assert_int_equal(maildir_deliver(&job), -1);
	assert_int_equal(job.error, EINVAL);
	assert_int_equal(count_entries(f->dir), 0);
	free(t.root);
	msgbody_free(&job.body);
}

struct deliver_arg {
	const char *root;
	struct msgbody *body;
	int failures;
};

static void *deliver_thread(void *p)
{
	struct deliver_arg *a = p;

	for (int i = 0; i < 50; i++) {
		struct maildir_target t = { .root = (char *)a->root, .folder = i % 2 ? (char *)"Junk" : NULL };
		struct maildir_job job = { .targets = &t, .n_targets = 1, .body = a->body, .fsync = false };

		if (maildir_deliver(&job) < 0)
			a->failures++;
		maildir_job_free_results(&job);
	}
	return NULL;
}

static void test_concurrent_deliveries(void **state)
{
	struct fixture *f = *state;
	char *root = user_root(f->dir, "busy", "example.test");
	char *junk = folder_dir(root, "Junk");
	const char text[] = "Subject: x\n\nshared spilled body, longer than the threshold\n";
	struct msgbody *body = body_from(f->dir, 16, text, strlen(text));
	pthread_t th[4];
	struct deliver_arg args[4];

	/* the Maildir does not exist yet: the threads race to create it */
	for (int i = 0; i < 4; i++) {
		args[i] = (struct deliver_arg){ .root = root, .body = body };
		assert_int_equal(pthread_create(&th[i], NULL, deliver_thread, &args[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(args[i].failures, 0);
	}
	assert_int_equal(count_sub(root, "new"), 100);
	assert_int_equal(count_sub(junk, "new"), 100);
	assert_int_equal(count_sub(root, "tmp"), 0);
	msgbody_free(&body);
	free(junk);
	free(root);
}

/* ------------------------------------------------ names already taken */

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(close(fd), 0);
}

static void assert_contents(const char *path, const char *text)
{
	size_t len;
	char *got = slurp(path, &len);

	assert_int_equal(len, strlen(text));
	assert_memory_equal(got, text, len);
	free(got);
}

static void check_noreplace(const char *dir, int (*fn)(const char *, const char *))
{
	char *from = path_join(dir, "from");
	char *to = path_join(dir, "to");
	struct stat st;

	write_file(from, "new mail");
	write_file(to, "somebody's mail");
	errno = 0;
	assert_int_equal(fn(from, to), -1);
	assert_int_equal(errno, EEXIST);
	assert_contents(to, "somebody's mail");
	assert_contents(from, "new mail");

	assert_int_equal(unlink(to), 0);
	assert_int_equal(fn(from, to), 0);
	assert_contents(to, "new mail");
	assert_int_equal(stat(to, &st), 0);
	assert_int_equal(st.st_nlink, 1);
	assert_int_equal(access(from, F_OK), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(unlink(to), 0);

	/* a missing source fails and creates nothing */
	assert_int_equal(fn(from, to), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(access(to, F_OK), -1);
	free(from);
	free(to);
}

static void test_rename_noreplace(void **state)
{
	struct fixture *f = *state;

	check_noreplace(f->dir, maildir_rename_noreplace);
	check_noreplace(f->dir, maildir_link_noreplace);
}

/* The names maildir_deliver will use, one per call; the last one repeats. */
static const char *const *scripted_names;
static size_t scripted_next;

static void scripted_name(char *out, size_t outsz)
{
	const char *name = scripted_names[scripted_next];

	if (scripted_names[scripted_next + 1] != NULL)
		scripted_next++;
	snprintf(out, outsz, "%s", name);
}

static void script_names(const char *const *names)
{
	scripted_names = names;
	scripted_next = 0;
	maildir_unique_name_hook = scripted_name;
}

static int teardown_names(void **state)
{
	maildir_unique_name_hook = NULL;
	return teardown_dir(state);
}

/* The file name in new/ a copy named name of len octets gets. */
static char *taken_path(const char *root, const char *name, size_t len)
{
	return xasprintf("%snew/%s,S=%zu", root, name, len);
}

static void test_deliver_never_replaces(void **state)
{
	struct fixture *f = *state;
	static const char *const names[] = { "1.M1P1Q1.taken", "1.M1P1Q2.free", NULL };
	const char body[] = "Subject: second\n\nsecond message\n";
	char *root = user_root(f->dir, "alice", "example.test");
	struct maildir_target t = { .root = root };
	struct maildir_job job = {
		.targets = &t, .n_targets = 1,
		.body = body_from(f->dir, 1 << 20, body, strlen(body)), .fsync = true,
	};
	char *err = NULL, *taken, *fresh;

	assert_int_equal(maildir_create(root, NULL, &err), 0);
	taken = taken_path(root, names[0], strlen(body));
	fresh = taken_path(root, names[1], strlen(body));
	write_file(taken, "an earlier message under the same name\n");

	script_names(names);
	assert_int_equal(maildir_deliver(&job), 0);
	assert_contents(taken, "an earlier message under the same name\n");
	assert_string_equal(job.paths[0], fresh);
	assert_file_is(job.paths[0], NULL, NULL, body, strlen(body));
	assert_int_equal(count_sub(root, "new"), 2);
	assert_int_equal(count_sub(root, "tmp"), 0);
	maildir_job_free_results(&job);

	/* every name taken: a bounded number of attempts, then a clean failure */
	static const char *const same[] = { "1.M1P1Q1.taken", NULL };

	script_names(same);
	assert_int_equal(maildir_deliver(&job), -1);
	assert_int_equal(job.error, EEXIST);
	assert_non_null(strstr(job.error_text, "rename to"));
	assert_null(job.paths);
	assert_contents(taken, "an earlier message under the same name\n");
	assert_int_equal(count_sub(root, "new"), 2);
	assert_int_equal(count_sub(root, "tmp"), 0);

	msgbody_free(&job.body);
	free(taken);
	free(fresh);
	free(root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_deliver_one, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_prepare_commit, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_forged_spam_headers_dropped, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_deliver_several_with_folder, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_empty_body_and_no_headers, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_spilled_body_identical, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_crlf_stored_as_lf, setup_dir, teardown_dir),
		cmocka_unit_test(test_unique_names_threads),
		cmocka_unit_test(test_unique_name_escapes_host),
		cmocka_unit_test(test_user_path),
		cmocka_unit_test_setup_teardown(test_create_folders, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_all_or_nothing_enospc, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_all_or_nothing_enospc_single, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_all_or_nothing_enotdir, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_all_or_nothing_after_rename, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_invalid_jobs, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_concurrent_deliveries, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_rename_noreplace, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_deliver_never_replaces, setup_dir, teardown_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
