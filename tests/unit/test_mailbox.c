/*
 * test_mailbox.c — unit tests for mailbox/mailbox.c: the UID list
 * (stable, strictly ascending UIDs, UIDVALIDITY kept, a corrupt list
 * replaced under a new UIDVALIDITY, concurrent openers under the lock),
 * new/ moved to cur/, the CRLF size, flags by rename, expunge and the
 * POP3 maildrop lock.
 *
 * Every test works on real files under its own mkdtemp directory.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "lib/lib.h"
#include "mailbox/mailbox.h"

struct fixture {
	char dir[64];
};

static int setup_dir(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/mxguard-test-mailbox.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	*state = f;
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (type == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static int teardown_dir(void **state)
{
	struct fixture *f = *state;

	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void write_file(const char *path, const char *data)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, strlen(data), fp), strlen(data));
	assert_int_equal(fclose(fp), 0);
}

static char *read_file(const char *path)
{
	FILE *fp = fopen(path, "r");
	char *buf = calloc(1, 1 << 20);
	size_t n;

	assert_non_null(fp);
	n = fread(buf, 1, (1 << 20) - 1, fp);
	buf[n] = '\0';
	fclose(fp);
	return buf;
}

/* deliver a message into new/ as "<name>,S=<size>" */
static void deliver(const char *dir, const char *name, const char *data)
{
	char p[512];

	snprintf(p, sizeof(p), "%s/new", dir);
	mkdir(dir, 0700);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/cur", dir);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/tmp", dir);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/new/%s,S=%zu", dir, name, strlen(data));
	write_file(p, data);
}

static struct mailbox *open_ok(const char *dir)
{
	struct mailbox *mb = NULL;
	char *error = NULL;

	if (mailbox_open(dir, &mb, &error) < 0)
		fail_msg("mailbox_open: %s", error);
	assert_non_null(mb);
	return mb;
}

static const struct mailbox_msg *find_base(const struct mailbox *mb, const char *prefix)
{
	for (size_t i = 0; i < mb->n_msgs; i++)
		if (strncmp(mb->msgs[i].base, prefix, strlen(prefix)) == 0)
			return &mb->msgs[i];
	return NULL;
}

static void test_empty_creates_dirs(void **state)
{
	struct fixture *f = *state;
	char dir[128], p[256];
	struct stat sb;
	struct mailbox *mb;

	snprintf(dir, sizeof(dir), "%s/example.test/demo", f->dir);
	mb = open_ok(dir);
	assert_int_equal(mb->n_msgs, 0);
	assert_true(mb->uidvalidity != 0);
	assert_int_equal(mb->uidnext, 1);
	for (const char *const *s = (const char *const[]){ "tmp", "new", "cur", NULL }; *s; s++) {
		snprintf(p, sizeof(p), "%s/%s", dir, *s);
		assert_int_equal(stat(p, &sb), 0);
		assert_true(S_ISDIR(sb.st_mode));
	}
	mailbox_free(&mb);
	assert_null(mb);
}

static void test_stable_ascending_uids(void **state)
{
	struct fixture *f = *state;
	char dir[128];
	struct mailbox *mb;
	uint32_t validity, uid_a, uid_b;

	snprintf(dir, sizeof(dir), "%s/box", f->dir);
	deliver(dir, "1000.M1P1Q1.host", "Subject: a\n\nA\n");
	deliver(dir, "1000.M2P1Q2.host", "Subject: b\n\nB\n");
	mb = open_ok(dir);
	assert_int_equal(mb->n_msgs, 2);
	validity = mb->uidvalidity;
	/* delivery (name) order */
	assert_int_equal(mb->msgs[0].uid, 1);
	assert_int_equal(mb->msgs[1].uid, 2);
	assert_non_null(strstr(mb->msgs[0].base, "M1P1"));
	uid_a = mb->msgs[0].uid;
	uid_b = mb->msgs[1].uid;
	/* moved into cur/ with an empty info suffix */
	assert_non_null(strstr(mb->msgs[0].name, ":2,"));
	mailbox_free(&mb);

	/* a later message gets a higher UID; the old ones keep theirs */
	deliver(dir, "0999.M0P1Q0.host", "Subject: c\n\nC\n"); /* sorts first by name */
	mb = open_ok(dir);
	assert_int_equal(mb->n_msgs, 3);
	assert_int_equal(mb->uidvalidity, validity);
	assert_int_equal(find_base(mb, "1000.M1P1")->uid, uid_a);
	assert_int_equal(find_base(mb, "1000.M2P1")->uid, uid_b);
	assert_int_equal(find_base(mb, "0999.M0P1")->uid, 3);
	for (size_t i = 1; i < mb->n_msgs; i++)
		assert_true(mb->msgs[i].uid > mb->msgs[i - 1].uid);
	assert_int_equal(mb->uidnext, 4);

	/* expunge the highest: its UID is never given again */
	assert_int_equal(mailbox_msg_expunge(mb, 2), 0);
	mailbox_free(&mb);
	deliver(dir, "1001.M3P1Q3.host", "Subject: d\n\nD\n");
	mb = open_ok(dir);
	assert_int_equal(mb->n_msgs, 3);
	assert_int_equal(find_base(mb, "1001.M3P1")->uid, 4);
	assert_null(find_base(mb, "0999.M0P1"));
	assert_int_equal(mb->uidvalidity, validity);
	mailbox_free(&mb);
}

/* New messages are numbered in delivery order (the files' mtimes), not
 * by name: our names' microseconds are not zero-padded, so within one
 * second "M99999" sorts after "M123456". */
static void test_new_in_delivery_order(void **state)
{
	struct fixture *f = *state;
	char dir[128], p[512];
	struct mailbox *mb;
	static const char *const names[] = { "1000.M99999P1Q1.h", "1000.M123456P1Q2.h",
					     "1000.M5P1Q0.h" };

	snprintf(dir, sizeof(dir), "%s/box", f->dir);
	for (size_t i = 0; i < N_ELEMENTS(names); i++) {
		struct timespec ts[2] = { { 1000, (long)i * 1000 }, { 1000, (long)i * 1000 } };
		deliver(dir, names[i], "A: b\n\nx\n");
		snprintf(p, sizeof(p), "%s/new/%s,S=8", dir, names[i]);
		assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
	}
	mb = open_ok(dir);
	assert_int_equal(mb->n_msgs, 3);
	for (size_t i = 0; i < N_ELEMENTS(names); i++) {
		assert_int_equal(mb->msgs[i].uid, i + 1);
		assert_true(strncmp(mb->msgs[i].base, names[i], strlen(names[i])) == 0);
	}
	mailbox_free(&mb);
}

static void test_flags_keep_identity(void **state)
{
	struct fixture *f = *state;
	char dir[128], *p;
	struct mailbox *mb;
	uint32_t uid;
	int fd;

	snprintf(dir, sizeof(dir), "%s/box", f->dir);
	deliver(dir, "1.M1P1Q1.h", "Subject: a\n\nA\n");
	mb = open_ok(dir);
	uid = mb->msgs[0].uid;
	assert_int_equal(mailbox_msg_add_flag(mb, 0, 'S'), 0);
	assert_string_equal(mb->msgs[0].flags, "S");
	assert_int_equal(mailbox_msg_add_flag(mb, 0, 'F'), 0);
	assert_string_equal(mb->msgs[0].flags, "FS");
	assert_int_equal(mailbox_msg_add_flag(mb, 0, 'S'), 0); /* already set */
	p = mailbox_msg_path(mb, 0);
	assert_non_null(strstr(p, ":2,FS"));
	assert_int_equal(access(p, F_OK), 0);
	free(p);
	mailbox_free(&mb);
	mb = open_ok(dir);
	assert_int_equal(mb->n_msgs, 1);
	assert_int_equal(mb->msgs[0].uid, uid);
	assert_string_equal(mb->msgs[0].flags, "FS");

	/* another reader renames it: the snapshot still finds the file */
	{
		char from[512], to[512];
		snprintf(from, sizeof(from), "%s/cur/%s", dir, mb->msgs[0].name);
		snprintf(to, sizeof(to), "%s/cur/%s:2,RS", dir, mb->msgs[0].base);
		assert_int_equal(rename(from, to), 0);
	}
	fd = mailbox_msg_open(mb, 0);
	assert_true(fd >= 0);
	close(fd);
	assert_string_equal(mb->msgs[0].flags, "RS");
	mailbox_free(&mb);
}

static void test_vsize_crlf(void **state)
{
	struct fixture *f = *state;
	char dir[128];
	struct mailbox *mb;

	snprintf(dir, sizeof(dir), "%s/box", f->dir);
	deliver(dir, "1.M1.h", "A: b\n\nline\n");      /* 11 + 3 LF */
	deliver(dir, "2.M2.h", "A: b\r\n\r\nx\r\n");    /* already CRLF */
	deliver(dir, "3.M3.h", "A: b\n\nno end");       /* + CRLF at the end */
	mb = open_ok(dir);
	assert_int_equal(mb->n_msgs, 3);
	assert_int_equal(find_base(mb, "1.M1")->vsize, 14);
	assert_int_equal(find_base(mb, "2.M2")->vsize, 11);
	assert_int_equal(find_base(mb, "3.M3")->vsize, 12 + 2 + 2);
	mailbox_free(&mb);
}

static void test_parse(void **state)
{
	struct mailbox_uidlist ul;
	const char *good = "mxguard-uidlist 1 V77 N10\n3 W12 a.b.c\n9 W0 d\n";
	static const char *const bad[] = {
		"",
		"junk\n",
		"mxguard-uidlist 1 V0 N1\n",             /* validity 0 */
		"mxguard-uidlist 1 V7 N1",               /* no line end */
		"mxguard-uidlist 1 V7 N5\n5 W1 a\n",     /* uid >= next */
		"mxguard-uidlist 1 V7 N9\n3 W1 a\n3 W1 b\n", /* not ascending */
		"mxguard-uidlist 1 V7 N9\n3 W1 a\n2 W1 b\n",
		"mxguard-uidlist 1 V7 N9\n3 W1 a/b\n",   /* a slash */
		"mxguard-uidlist 1 V7 N9\n3 W1 a:2,S\n", /* an info suffix */
		"mxguard-uidlist 1 V7 N9\n3 W1 .hidden\n",
		"mxguard-uidlist 1 V7 N9\n3 W1 a",       /* torn line */
		"mxguard-uidlist 1 V7 N9\n3 X1 a\n",
		"mxguard-uidlist 1 V99999999999 N9\n",
		NULL,
	};

	(void)state;
	assert_int_equal(mailbox_uidlist_parse(good, strlen(good), &ul), 0);
	assert_int_equal(ul.uidvalidity, 77);
	assert_int_equal(ul.uidnext, 10);
	assert_int_equal(ul.n, 2);
	assert_int_equal(ul.entries[0].uid, 3);
	assert_int_equal(ul.entries[0].vsize, 12);
	assert_string_equal(ul.entries[0].base, "a.b.c");
	assert_string_equal(ul.entries[1].base, "d");
	mailbox_uidlist_clear(&ul);
	for (size_t i = 0; bad[i] != NULL; i++) {
		if (mailbox_uidlist_parse(bad[i], strlen(bad[i]), &ul) == 0)
			fail_msg("parsed a bad list: \"%s\"", bad[i]);
		assert_int_equal(ul.n, 0);
	}
}

static void test_corrupt_list_renumbers(void **state)
{
	struct fixture *f = *state;
	char dir[128], list[256], *text;
	struct mailbox *mb;
	uint32_t validity;

	snprintf(dir, sizeof(dir), "%s/box", f->dir);
	deliver(dir, "1.M1.h", "A: b\n\n1\n");
	deliver(dir, "2.M2.h", "A: b\n\n2\n");
	mb = open_ok(dir);
	validity = mb->uidvalidity;
	mailbox_free(&mb);
	snprintf(list, sizeof(list), "%s/%s", dir, MAILBOX_UIDLIST_NAME);
	text = read_file(list);
	assert_true(strncmp(text, "mxguard-uidlist 1 V", 19) == 0);
	free(text);

	/* a torn write (or a stray edit): the list cannot be trusted, so
	 * every message gets a new UID under a different UIDVALIDITY */
	write_file(list, "mxguard-uidlist 1 V5 N3\n2 W1 1.M1.h,S=8\n1 W1 2.M2.h,S=8\n");
	mb = open_ok(dir);
	assert_true(mb->uidlist_rebuilt);
	assert_int_equal(mb->n_msgs, 2);
	assert_true(mb->uidvalidity != 5);
	assert_int_equal(mb->msgs[0].uid, 1);
	assert_int_equal(mb->msgs[1].uid, 2);
	assert_int_equal(mb->uidnext, 3);
	validity = mb->uidvalidity;
	mailbox_free(&mb);
	/* ... and the rewritten list is good again */
	mb = open_ok(dir);
	assert_false(mb->uidlist_rebuilt);
	assert_int_equal(mb->uidvalidity, validity);
	mailbox_free(&mb);

	/* garbage and an empty file */
	write_file(list, "\x01\x02garbage");
	mb = open_ok(dir);
	assert_true(mb->uidlist_rebuilt);
	assert_int_equal(mb->n_msgs, 2);
	mailbox_free(&mb);
	write_file(list, "");
	mb = open_ok(dir);
	assert_true(mb->uidlist_rebuilt);
	mailbox_free(&mb);
}

/* Many threads (and a forked process) open the same folder while
 * messages arrive: every message ends up with one UID, the same for
 * every opener, all distinct. */
struct opener {
	const char *dir;
	int rounds;
	int failures;
};

static void *opener_main(void *arg)
{
	struct opener *o = arg;

	for (int i = 0; i < o->rounds; i++) {
		struct mailbox *mb = NULL;
		char *error = NULL;
		if (mailbox_open(o->dir, &mb, &error) < 0) {
			free(error);
			o->failures++;
			continue;
		}
		for (size_t k = 1; k < mb->n_msgs; k++)
			if (mb->msgs[k].uid <= mb->msgs[k - 1].uid)
				o->failures++;
		mailbox_free(&mb);
	}
	return NULL;
}

static void test_concurrent_update(void **state)
{
	struct fixture *f = *state;
	char dir[128], name[64];
	struct opener o[4];
	pthread_t t[4];
	pid_t child;
	struct mailbox *mb;
	int status;

	snprintf(dir, sizeof(dir), "%s/box", f->dir);
	deliver(dir, "0.seed.h", "A: b\n\n0\n");
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		struct opener co = { dir, 30, 0 };
		opener_main(&co);
		_exit(co.failures == 0 ? 0 : 1);
	}
	for (int i = 0; i < 4; i++) {
		o[i] = (struct opener){ dir, 30, 0 };
		assert_int_equal(pthread_create(&t[i], NULL, opener_main, &o[i]), 0);
	}
	for (int i = 0; i < 60; i++) {
		snprintf(name, sizeof(name), "%d.M%dP1.h", 100 + i, i);
		deliver(dir, name, "A: b\n\nx\n");
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(o[i].failures, 0);
	}
	assert_int_equal(waitpid(child, &status, 0), child);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	mb = open_ok(dir);
	assert_int_equal(mb->n_msgs, 61);
	assert_false(mb->uidlist_rebuilt);
	for (size_t k = 1; k < mb->n_msgs; k++)
		assert_true(mb->msgs[k].uid > mb->msgs[k - 1].uid);
	assert_true(mb->uidnext > mb->msgs[mb->n_msgs - 1].uid);
	/* the seed came first */
	assert_int_equal(find_base(mb, "0.seed")->uid, 1);
	{
		/* a second opener agrees on every UID */
		struct mailbox *mb2 = open_ok(dir);
		assert_int_equal(mb2->n_msgs, mb->n_msgs);
		for (size_t k = 0; k < mb->n_msgs; k++) {
			assert_int_equal(mb2->msgs[k].uid, mb->msgs[k].uid);
			assert_string_equal(mb2->msgs[k].base, mb->msgs[k].base);
		}
		mailbox_free(&mb2);
	}
	mailbox_free(&mb);
}

static void test_pop3_lock(void **state)
{
	struct fixture *f = *state;
	char dir[128];
	int fd1, fd2, fd3;
	struct mailbox *mb;

	snprintf(dir, sizeof(dir), "%s/box", f->dir);
	fd1 = mailbox_pop3_lock(dir);
	assert_true(fd1 >= 0);
	fd2 = mailbox_pop3_lock(dir);
	assert_int_equal(fd2, -2); /* in use, also within one process */
	/* a reader that only takes the uidlist lock is not blocked */
	mb = open_ok(dir);
	mailbox_free(&mb);
	close(fd1);
	fd3 = mailbox_pop3_lock(dir);
	assert_true(fd3 >= 0);
	close(fd3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_empty_creates_dirs, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_stable_ascending_uids, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_new_in_delivery_order, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_flags_keep_identity, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_vsize_crlf, setup_dir, teardown_dir),
		cmocka_unit_test(test_parse),
		cmocka_unit_test_setup_teardown(test_corrupt_list_renumbers, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_concurrent_update, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_pop3_lock, setup_dir, teardown_dir),
	};

	log_open("test_mailbox", true, LOG_LEVEL_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
