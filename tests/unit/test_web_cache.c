/*
 * test_web_cache.c — unit tests for web/cache.c: a message's list row
 * from its first octets (decoded From and Subject, the Date or the
 * mtime, the attachment mark, invalid UTF-8 cleaned), and the folder
 * cache on real Maildir folders under a mkdtemp directory: rows read
 * once and kept across flag renames and new snapshots, a delivery
 * rescanned, an expunge forgotten, the folder and octet bounds, the
 * holder's own changes costing no rescan while someone else's in the
 * same instant is seen (inotify), a folder replaced under its path and
 * one the first open makes (watched again once they exist), and
 * threads opening the same and different folders at once.
 */
#include "config.h"

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
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include <glib.h>

#include "lib/lib.h"
#include "mailbox/mailbox.h"
#include "web/cache.h"

/* ------------------------------------------------------------- rows */

static struct web_summary *
row_of(const char *text, uint64_t size)
{
	return web_summary_read("1.M1P1.test", text, strlen(text), size ? size : strlen(text), 12345);
}

static void
test_row_decoded(void **state)
{
	(void)state;
	struct web_summary *r = row_of("From: =?UTF-8?B?SsO8cmdlbg==?= <j@b.test>\r\n"
				       "Subject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\n"
				       "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nbody\r\n",
				       0);
	assert_string_equal(r->text, "1.M1P1.test");
	assert_non_null(strstr(r->from, "J\xc3\xbcrgen"));
	assert_non_null(strstr(r->from, "j@b.test"));
	assert_string_equal(r->subject, "Gr\xc3\xbc\xc3\x9f" "e");
	assert_int_equal(r->date, 1767225600);
	assert_false(r->attachment);
	free(r);
}

static void
test_row_no_header_fields(void **state)
{
	(void)state;
	/* no Date: the mtime; no From or Subject: empty strings */
	struct web_summary *r = row_of("X-Other: 1\n\nbody\n", 0);
	assert_int_equal(r->date, 12345);
	assert_string_equal(r->from, "");
	assert_string_equal(r->subject, "");
	free(r);
	/* nothing but octets that are no header at all */
	r = row_of("", 0);
	assert_string_equal(r->subject, "");
	free(r);
}

static void
test_row_utf8_cleaned(void **state)
{
	(void)state;
	struct web_summary *r = row_of("Subject: caf\xe9 \xff\xfe\x01 end\n\n", 0);
	assert_true(g_utf8_validate(r->subject, -1, NULL));
	assert_non_null(strstr(r->subject, "end"));
	assert_null(strchr(r->subject, '\x01'));
	free(r);
}

#define MIXED "MIME-Version: 1.0\nSubject: m\nContent-Type: multipart/mixed; boundary=\"b\"\n\n"
#define TEXT_PART "--b\nContent-Type: text/plain\n\nhello\n"
#define FILE_PART                                                                     \
	"--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=a.pdf\n" \
	"Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n"

static void
test_row_attachment(void **state)
{
	(void)state;
	struct web_summary *r;

	r = row_of(MIXED TEXT_PART FILE_PART "--b--\n", 0);
	assert_true(r->attachment);
	free(r);
	r = row_of(MIXED TEXT_PART TEXT_PART "--b--\n", 0);
	assert_false(r->attachment);
	free(r);
	/* the whole message is not here: a mixed one is guessed to carry a file */
	r = row_of(MIXED TEXT_PART, 1000000);
	assert_true(r->attachment);
	free(r);
	/* alternative parts are never files */
	r = row_of("Content-Type: multipart/alternative; boundary=\"b\"\n\n" TEXT_PART "--b--\n", 1000000);
	assert_false(r->attachment);
	free(r);
	/* a single part that is an attachment itself */
	r = row_of("Content-Type: application/zip\nContent-Disposition: attachment; filename=x.zip\n\nUEsD\n", 0);
	assert_true(r->attachment);
	free(r);
}

/* ------------------------------------------------------------ folders */

struct fixture {
	char dir[64];
	struct web_cache *cache;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/mxguard-test-webcache.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->cache = web_cache_new();
	*state = f;
	return 0;
}

static int
rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (type == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	web_cache_free(&f->cache);
	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static char *
folder(struct fixture *fx, const char *name)
{
	char *d = xasprintf("%s/%s", fx->dir, name);
	char *p;

	mkdir(d, 0700);
	for (int i = 0; i < 3; i++) {
		p = xasprintf("%s/%s", d, i == 0 ? "new" : i == 1 ? "cur" : "tmp");
		mkdir(p, 0700);
		free(p);
	}
	return d;
}

static void
deliver(const char *dir, int n)
{
	char *p = xasprintf("%s/new/%d.M%dP1.test", dir, 1000000 + n, n);
	FILE *fp = fopen(p, "w");

	assert_non_null(fp);
	fprintf(fp, "From: s%d@b.test\nSubject: message %d\n\nbody %d\n", n, n, n);
	fclose(fp);
	free(p);
}

static struct web_folder *
open_ok(struct fixture *fx, const char *dir, long folders_max, long bytes_max)
{
	struct web_folder *f = NULL;
	char *err = NULL;

	if (web_cache_open(fx->cache, dir, folders_max, bytes_max, &f, &err) < 0)
		fail_msg("web_cache_open %s: %s", dir, err);
	return f;
}

static void
test_rows_kept(void **state)
{
	struct fixture *fx = *state;
	struct web_cache_stats st;
	char *dir = folder(fx, "a");

	for (int i = 0; i < 3; i++)
		deliver(dir, i);
	struct web_folder *f = open_ok(fx, dir, 10, 1 << 20);
	struct mailbox *mb = web_folder_mailbox(f);
	assert_int_equal(mb->n_msgs, 3);
	for (size_t i = 0; i < 3; i++)
		assert_non_null(strstr(web_folder_summary(f, i)->subject, "message"));
	/* a flag change by someone else: a rename in cur/ */
	char *from = mailbox_msg_path(mb, 1);
	char *to = xasprintf("%s/cur/%s:2,S", dir, mb->msgs[1].base);
	assert_int_equal(rename(from, to), 0);
	free(from);
	free(to);
	web_cache_close(fx->cache, &f);
	assert_null(f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.reads, 3);
	assert_int_equal(st.folders, 1);

	/* the new snapshot has the flag, the rows were not read again */
	f = open_ok(fx, dir, 10, 1 << 20);
	mb = web_folder_mailbox(f);
	assert_string_equal(mb->msgs[1].flags, "S");
	for (size_t i = 0; i < 3; i++)
		(void)web_folder_summary(f, i);
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.reads, 3);
	assert_true(st.scans >= 2);

	/* a delivery: one more row read, the others kept */
	deliver(dir, 3);
	f = open_ok(fx, dir, 10, 1 << 20);
	mb = web_folder_mailbox(f);
	assert_int_equal(mb->n_msgs, 4);
	for (size_t i = 0; i < 4; i++)
		(void)web_folder_summary(f, i);
	assert_string_equal(web_folder_summary(f, 3)->subject, "message 3");
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.reads, 4);
	/* one scan for the delivery: the scan's own move out of new/ and
	 * its write of the UID list are not taken for another change */
	unsigned long scans = st.scans;
	f = open_ok(fx, dir, 10, 1 << 20);
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.scans, scans);
	free(dir);
}

static void
test_unchanged_is_a_hit(void **state)
{
	struct fixture *fx = *state;
	struct web_cache_stats st;
	char *dir = folder(fx, "b");

	deliver(dir, 1);
	struct web_folder *f = open_ok(fx, dir, 10, 1 << 20);
	web_cache_close(fx->cache, &f);
	/* the first stamp may be racy (taken in the tick of the delivery):
	 * then the next open scans once more; after that, nothing changes */
	f = open_ok(fx, dir, 10, 1 << 20);
	web_cache_close(fx->cache, &f);
	struct timespec ts = { 0, 30 * 1000 * 1000 };
	nanosleep(&ts, NULL); /* past the file system clock's tick: a stamp that is not racy */
	f = open_ok(fx, dir, 10, 1 << 20);
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	unsigned long scans = st.scans;
	for (int i = 0; i < 5; i++) {
		f = open_ok(fx, dir, 10, 1 << 20);
		web_cache_close(fx->cache, &f);
	}
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.scans, scans);
	assert_true(st.hits >= 5);
	free(dir);
}

static void
test_forget(void **state)
{
	struct fixture *fx = *state;
	char *dir = folder(fx, "c");

	for (int i = 0; i < 3; i++)
		deliver(dir, i);
	struct web_folder *f = open_ok(fx, dir, 10, 1 << 20);
	struct mailbox *mb = web_folder_mailbox(f);
	uint32_t last = mb->msgs[2].uid;
	(void)web_folder_summary(f, 1);
	(void)web_folder_summary(f, 2);
	assert_int_equal(mailbox_msg_expunge(mb, 1), 0);
	web_folder_forget(f, 1);
	assert_int_equal(mb->n_msgs, 2);
	assert_int_equal(mb->msgs[1].uid, last);
	/* the row that moved down is the message's own */
	assert_string_equal(web_folder_summary(f, 1)->subject, "message 2");
	web_cache_close(fx->cache, &f);
	f = open_ok(fx, dir, 10, 1 << 20);
	assert_int_equal(web_folder_mailbox(f)->n_msgs, 2);
	web_cache_close(fx->cache, &f);
	free(dir);
}

static void
test_bounds(void **state)
{
	struct fixture *fx = *state;
	struct web_cache_stats st;
	char *dirs[3];

	for (int k = 0; k < 3; k++) {
		char name[8];
		snprintf(name, sizeof(name), "f%d", k);
		dirs[k] = folder(fx, name);
		deliver(dirs[k], k);
	}
	for (int k = 0; k < 3; k++) {
		struct web_folder *f = open_ok(fx, dirs[k], 2, 1 << 20);
		(void)web_folder_summary(f, 0);
		web_cache_close(fx->cache, &f);
	}
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.folders, 2);
	assert_int_equal(st.evictions, 1);
	assert_true(st.bytes > 0);
	/* the least recently used went: f0 is read again, f2 is not */
	unsigned long reads = st.reads;
	struct web_folder *f = open_ok(fx, dirs[2], 2, 1 << 20);
	(void)web_folder_summary(f, 0);
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.reads, reads);
	f = open_ok(fx, dirs[0], 2, 1 << 20);
	(void)web_folder_summary(f, 0);
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.reads, reads + 1);
	/* one octet: nothing stays */
	f = open_ok(fx, dirs[1], 2, 1);
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.folders, 0);
	assert_int_equal(st.bytes, 0);
	/* off: nothing is kept, every open works */
	f = open_ok(fx, dirs[1], 0, 1 << 20);
	assert_int_equal(web_folder_mailbox(f)->n_msgs, 1);
	assert_string_equal(web_folder_summary(f, 0)->subject, "message 1");
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.folders, 0);
	for (int k = 0; k < 3; k++)
		free(dirs[k]);
}

/* rename message i's file to flags `letters` as someone else would */
static void
foreign_flags(struct mailbox *mb, size_t i, const char *letters)
{
	char *from = mailbox_msg_path(mb, i);
	char *to = xasprintf("%s/cur/%s:2,%s", mb->dir, mb->msgs[i].base, letters);
	assert_int_equal(rename(from, to), 0);
	free(from);
	free(to);
}

static void
test_own_change_no_rescan(void **state)
{
	struct fixture *fx = *state;
	struct web_cache_stats st;
	char *dir = folder(fx, "own");

	for (int i = 0; i < 3; i++)
		deliver(dir, i);
	struct web_folder *f = open_ok(fx, dir, 10, 1 << 20);
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	unsigned long scans = st.scans;
	assert_int_equal(st.watched, 1);

	/* the holder's own rename and unlink: no rescan after */
	f = open_ok(fx, dir, 10, 1 << 20);
	struct mailbox *mb = web_folder_mailbox(f);
	char *from = xstrdup(mb->msgs[0].name);
	web_folder_change_begin(f);
	assert_int_equal(mailbox_msg_change_flags(mb, 0, "S", ""), 0);
	web_folder_change_end(f, from, mb->msgs[0].name);
	free(from);
	from = xstrdup(mb->msgs[2].name);
	web_folder_change_begin(f);
	assert_int_equal(mailbox_msg_expunge(mb, 2), 0);
	web_folder_change_end(f, from, NULL);
	web_folder_forget(f, 2);
	free(from);
	web_cache_close(fx->cache, &f);
	f = open_ok(fx, dir, 10, 1 << 20);
	mb = web_folder_mailbox(f);
	assert_int_equal(mb->n_msgs, 2);
	assert_string_equal(mb->msgs[0].flags, "S");
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.scans, scans);

	/* someone else's rename right after the holder's own, in the same
	 * instant: seen by the next open (stamps could not tell) */
	f = open_ok(fx, dir, 10, 1 << 20);
	mb = web_folder_mailbox(f);
	from = xstrdup(mb->msgs[0].name);
	web_folder_change_begin(f);
	assert_int_equal(mailbox_msg_change_flags(mb, 0, "F", ""), 0);
	foreign_flags(mb, 1, "T");
	web_folder_change_end(f, from, mb->msgs[0].name);
	free(from);
	web_cache_close(fx->cache, &f);
	f = open_ok(fx, dir, 10, 1 << 20);
	mb = web_folder_mailbox(f);
	assert_string_equal(mb->msgs[0].flags, "FS");
	assert_string_equal(mb->msgs[1].flags, "T");
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.scans, scans + 1);

	/* and a change with nobody holding the folder */
	f = open_ok(fx, dir, 10, 1 << 20);
	mb = web_folder_mailbox(f);
	foreign_flags(mb, 1, "");
	web_cache_close(fx->cache, &f);
	f = open_ok(fx, dir, 10, 1 << 20);
	assert_string_equal(web_folder_mailbox(f)->msgs[1].flags, "");
	web_cache_close(fx->cache, &f);
	free(dir);
}

static void
test_folder_made_by_first_open(void **state)
{
	struct fixture *fx = *state;
	struct web_cache_stats st;
	/* a user's INBOX before its first delivery: mailbox_open makes it */
	char *dir = xasprintf("%s/fresh", fx->dir);
	struct web_folder *f = open_ok(fx, dir, 10, 1 << 20);
	assert_int_equal(web_folder_mailbox(f)->n_msgs, 0);
	web_cache_close(fx->cache, &f);
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.watched, 1);
	deliver(dir, 1);
	f = open_ok(fx, dir, 10, 1 << 20);
	assert_int_equal(web_folder_mailbox(f)->n_msgs, 1);
	web_cache_close(fx->cache, &f);
	free(dir);
}

static void
test_folder_replaced(void **state)
{
	struct fixture *fx = *state;
	char *dir = folder(fx, "old");

	deliver(dir, 1);
	struct web_folder *f = open_ok(fx, dir, 10, 1 << 20);
	assert_int_equal(web_folder_mailbox(f)->n_msgs, 1);
	web_cache_close(fx->cache, &f);
	/* renamed away (IMAP RENAME) and a new, empty folder made at its path */
	char *gone = xasprintf("%s/moved-away", fx->dir);
	assert_int_equal(rename(dir, gone), 0);
	free(dir);
	dir = folder(fx, "old");
	deliver(dir, 7);
	deliver(dir, 8);
	f = open_ok(fx, dir, 10, 1 << 20);
	assert_int_equal(web_folder_mailbox(f)->n_msgs, 2);
	assert_string_equal(web_folder_summary(f, 0)->subject, "message 7");
	web_cache_close(fx->cache, &f);
	/* and changed again: the entry (watching the new directories again
	 * after one more scan) sees it */
	deliver(dir, 9);
	f = open_ok(fx, dir, 10, 1 << 20);
	assert_int_equal(web_folder_mailbox(f)->n_msgs, 3);
	web_cache_close(fx->cache, &f);
	struct web_cache_stats st;
	web_cache_stats(fx->cache, &st);
	assert_int_equal(st.watched, 1);
	deliver(dir, 10);
	f = open_ok(fx, dir, 10, 1 << 20);
	assert_int_equal(web_folder_mailbox(f)->n_msgs, 4);
	web_cache_close(fx->cache, &f);
	free(gone);
	free(dir);
}

struct thread_arg {
	struct fixture *fx;
	char **dirs;
	int seed;
};

static void *
thread_main(void *p)
{
	struct thread_arg *a = p;
	char *err = NULL;

	for (int r = 0; r < 200; r++) {
		const char *dir = a->dirs[(a->seed + r) % 3];
		struct web_folder *f = NULL;
		/* small bounds: evictions race with opens */
		if (web_cache_open(a->fx->cache, dir, 2, 1 << 20, &f, &err) < 0) {
			free(err);
			return (void *)1;
		}
		struct mailbox *mb = web_folder_mailbox(f);
		for (size_t i = 0; i < mb->n_msgs; i++)
			if (strncmp(web_folder_summary(f, i)->subject, "message ", 8) != 0) {
				web_cache_close(a->fx->cache, &f);
				return (void *)1;
			}
		web_cache_close(a->fx->cache, &f);
	}
	return NULL;
}

static void
test_threads(void **state)
{
	struct fixture *fx = *state;
	char *dirs[3];
	pthread_t t[4];
	struct thread_arg args[4];

	for (int k = 0; k < 3; k++) {
		char name[8];
		snprintf(name, sizeof(name), "t%d", k);
		dirs[k] = folder(fx, name);
		for (int i = 0; i < 5; i++)
			deliver(dirs[k], k * 10 + i);
	}
	for (int i = 0; i < 4; i++) {
		args[i] = (struct thread_arg){ fx, dirs, i };
		assert_int_equal(pthread_create(&t[i], NULL, thread_main, &args[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		void *rv;
		pthread_join(t[i], &rv);
		assert_null(rv);
	}
	struct web_cache_stats st;
	web_cache_stats(fx->cache, &st);
	assert_true(st.folders <= 2);
	assert_int_equal(st.hits + st.scans, 800);
	for (int k = 0; k < 3; k++)
		free(dirs[k]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_row_decoded),
		cmocka_unit_test(test_row_no_header_fields),
		cmocka_unit_test(test_row_utf8_cleaned),
		cmocka_unit_test(test_row_attachment),
		cmocka_unit_test_setup_teardown(test_rows_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unchanged_is_a_hit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_forget, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_own_change_no_rescan, setup, teardown),
		cmocka_unit_test_setup_teardown(test_folder_replaced, setup, teardown),
		cmocka_unit_test_setup_teardown(test_folder_made_by_first_open, setup, teardown),
		cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
	};

	log_open("test_web_cache", true, LOG_LEVEL_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
