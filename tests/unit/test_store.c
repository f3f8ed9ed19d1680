/*
 * test_store.c — the Maildir store as a row of the backend table: found by
 * name, its EHLO keywords, its RCPT answers (users, unknown users,
 * postmaster@ every local domain), and DATA through the real worker pool
 * onto real files: one copy per mailbox, the junk folder, one quarantine
 * copy naming every recipient, and the 250 only after the files exist.
 */
#include "config.h"

#include <dirent.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "backends/backends.h"
#include "filters/filters.h"

struct fixture {
	char dir[64];
	struct mx_config *cfg;
	struct userdb *db;
	struct backend *be;
	struct event_base *base;
	struct workers *workers;
	struct backend_env env;
	struct backend_reply reply;
	int done;
};

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int
setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	char *error = NULL, *path, *conf;

	str_copy(f->dir, "/tmp/mxtest-store-XXXXXX", sizeof(f->dir));
	assert_non_null(mkdtemp(f->dir));
	/* the backends' own settings only: nothing else is registered */
	conf = xasprintf("mail_root = \"%s/mail\"\n"
			 "quarantine_dir = \"%s/quarantine\"\npasswd_file = \"%s/passwd\"\n"
			 "local_domains = {\"a.test\", \"b.test\"}\npostmaster = \"admin@a.test\"\n"
			 "limits {\n\tmessage_size_max = 123456\n}\n",
			 f->dir, f->dir, f->dir);
	path = xasprintf("%s/mxguard.conf", f->dir);
	write_file(path, conf);
	free(conf);
	char *pw = xasprintf("%s/passwd", f->dir);
	write_file(pw, "admin@a.test:{CRYPT}$6$x$y\nbob@b.test:{CRYPT}$6$x$y\n");
	if (config_load(path, &f->cfg, &error) < 0)
		fail_msg("%s", error);
	if (userdb_open(pw, &f->db, &error) < 0)
		fail_msg("%s", error);
	free(pw);
	free(path);
	if (backend_create("store", f->cfg, NULL, f->db, &f->be, &error) < 0)
		fail_msg("%s", error);
	f->base = event_base_new();
	f->workers = workers_create(1, 0, 0);
	f->env.base = f->base;
	f->env.workers = f->workers;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	char *cmd = xasprintf("rm -rf '%s'", f->dir);

	backend_destroy(&f->be);
	workers_destroy(&f->workers);
	event_base_free(f->base);
	userdb_close(&f->db);
	config_unref(&f->cfg);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	free(f);
	return 0;
}

static size_t
count_files(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t n = 0;

	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static char *
read_only_file(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char *text = NULL;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char *p = xasprintf("%s/%s", dir, e->d_name);
		FILE *fp = fopen(p, "r");
		assert_non_null(fp);
		text = xcalloc(1, 65536);
		size_t n = fread(text, 1, 65535, fp);
		text[n] = '\0';
		fclose(fp);
		free(p);
	}
	closedir(d);
	assert_non_null(text);
	return text;
}

/* A transaction of the store, as the session begins one at MAIL. */
static struct backend_tx *
store_tx(struct fixture *f)
{
	const struct backend_txinfo info = { .id = "TESTID0000000001", .from = "s@x.test" };

	return backend_tx_begin(f->be, &f->env, &info);
}

static enum backend_status
store_rcpt_now(struct fixture *f, const char *local, const char *domain, struct backend_rcpt *r,
	       struct backend_reply *br, backend_rcpt_cb *cb, void *ctx)
{
	struct backend_tx *tx = store_tx(f);
	enum backend_status st = backend_tx_rcpt(tx, local, domain, r, br, cb, ctx);

	backend_tx_end(&tx);
	return st;
}

static void
test_found_by_name(void **state)
{
	struct fixture *f = *state;

	assert_non_null(backends_find("store"));
	assert_null(backends_find("nonesuch"));
	assert_ptr_equal(f->be->ops, backends_find("store"));
	const char *const *kw = f->be->ops->ehlo(f->be);
	assert_string_equal(kw[0], "SIZE 123456");
	assert_string_equal(kw[1], "8BITMIME");
	assert_null(kw[2]);
}

static void
test_rcpt_answers(void **state)
{
	struct fixture *f = *state;
	struct backend_rcpt r = { 0 };
	struct backend_reply br;
	char *root;

	store_rcpt_now(f, "bob", "b.test", &r, &br, NULL, NULL);
	assert_int_equal(br.code, 250);
	assert_string_equal(br.enhanced, "2.1.5");
	assert_string_equal(r.mailbox, "bob@b.test");
	root = xasprintf("%s/mail/b.test/bob/", f->dir);
	assert_string_equal(r.where, root);
	free(root);
	backend_rcpt_clear(&r);

	store_rcpt_now(f, "nobody", "b.test", &r, &br, NULL, NULL);
	assert_int_equal(br.code, 550);
	assert_string_equal(br.enhanced, "5.1.1");
	assert_string_equal(br.reason, "unknown_user");
	assert_non_null(strstr(br.text, "<nobody@b.test>"));
	assert_null(r.mailbox);

	/* postmaster@ every local domain, without a passwd entry */
	store_rcpt_now(f, "postmaster", "b.test", &r, &br, NULL, NULL);
	assert_int_equal(br.code, 250);
	assert_string_equal(r.address, "postmaster@b.test");
	assert_string_equal(r.mailbox, "admin@a.test");
	backend_rcpt_clear(&r);
}

static void
done_cb(void *ctx, const struct backend_reply *reply, const char *detail)
{
	struct fixture *f = ctx;

	f->reply = *reply;
	f->done++;
}

/* what deliver() says of a quarantined message */
static const struct backend_verdict *deliver_why;

static void
deliver(struct fixture *f, const char *const *rcpts, size_t n, enum backend_folder folder)
{
	struct backend_rcpt r[8];
	struct backend_reply br;
	struct msgbody *body = msgbody_new(f->dir, 65536);
	static const char text[] = "Subject: s\r\n\r\nbody\r\n";

	assert_true(n <= 8);
	for (size_t i = 0; i < n; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		char *at = strchr(rcpts[i], '@');
		char *local = xstrndup(rcpts[i], (size_t)(at - rcpts[i]));
		store_rcpt_now(f, local, at + 1, &r[i], &br, NULL, NULL);
		assert_int_equal(br.code, 250);
		free(local);
	}
	assert_int_equal(msgbody_append(body, text, sizeof(text) - 1), 0);
	assert_int_equal(msgbody_seal(body), 0);
	struct backend_message msg = {
		.id = "TESTID0000000001", .from = "s@x.test", .rcpts = r, .n_rcpts = n,
		.folder = folder, .prefix = "Received: test\n", .prefix_len = 15, .body = body,
		.why = folder == BACKEND_FOLDER_QUARANTINE ? deliver_why : NULL,
	};
	f->done = 0;
	struct backend_tx *tx = store_tx(f);
	backend_tx_data(tx, &msg, done_cb, f);
	/* the caller may free what it passed at once */
	msgbody_free(&body);
	for (size_t i = 0; i < n; i++)
		backend_rcpt_clear(&r[i]);
	for (int i = 0; i < 2000 && f->done == 0; i++) {
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		usleep(1000);
	}
	assert_int_equal(f->done, 1);
	backend_tx_end(&tx);
}

static void
test_data_one_copy_per_mailbox(void **state)
{
	struct fixture *f = *state;
	const char *const rcpts[] = { "bob@b.test", "postmaster@a.test", "postmaster@b.test",
				      "admin@a.test" };
	char *admin = xasprintf("%s/mail/a.test/admin/new", f->dir);
	char *bob = xasprintf("%s/mail/b.test/bob/new", f->dir);

	deliver(f, rcpts, 4, BACKEND_FOLDER_INBOX);
	assert_int_equal(f->reply.code, 250);
	assert_string_equal(f->reply.text, "Ok: queued as TESTID0000000001");
	assert_int_equal(count_files(admin), 1);
	assert_int_equal(count_files(bob), 1);
	char *text = read_only_file(admin);
	assert_non_null(strstr(text, "Delivered-To: admin@a.test\nReceived: test\nSubject: s\n\nbody\n"));
	free(text);
	free(admin);
	free(bob);
}

static void
test_data_junk_and_quarantine(void **state)
{
	struct fixture *f = *state;
	const char *const rcpts[] = { "bob@b.test", "admin@a.test" };
	char *junk = xasprintf("%s/mail/b.test/bob/.Junk/new", f->dir);
	char *q = xasprintf("%s/quarantine/new", f->dir);

	deliver(f, rcpts, 1, BACKEND_FOLDER_JUNK);
	assert_int_equal(f->reply.code, 250);
	assert_int_equal(count_files(junk), 1);

	deliver(f, rcpts, 2, BACKEND_FOLDER_QUARANTINE);
	assert_int_equal(f->reply.code, 250);
	assert_int_equal(count_files(q), 1);
	char *text = read_only_file(q);
	assert_non_null(strstr(text, "Return-Path: <s@x.test>\nX-MXGuard-Recipient: bob@b.test\n"
				     "X-MXGuard-Recipient: admin@a.test\nReceived: test\n"));
	free(text);
	free(junk);
	free(q);
}

static void
test_data_failure_is_a_temporary_reply(void **state)
{
	struct fixture *f = *state;
	const char *const rcpts[] = { "bob@b.test" };
	char *root = xasprintf("%s/mail/b.test", f->dir);
	char *cmd = xasprintf("mkdir -p '%s' && touch '%s/bob'", root, root);

	/* a file where the Maildir should be: the delivery fails */
	assert_int_equal(system(cmd), 0);
	deliver(f, rcpts, 1, BACKEND_FOLDER_INBOX);
	assert_int_equal(f->reply.code, 451);
	assert_string_equal(f->reply.enhanced, "4.3.0");
	assert_string_equal(f->reply.reason, "delivery_error");
	free(cmd);
	free(root);
}

/* A quarantined copy: new/<ID>,S=<size> and meta/<ID> with the envelope
 * and the why, as the session passed them. */
static void
test_quarantine_metadata(void **state)
{
	struct fixture *f = *state;
	const char *const rcpts[] = { "bob@b.test", "admin@a.test" };
	const struct backend_verdict why = { .verdict = "quarantine", .action = "quarantine",
					     .score = 7.5, .hits = "rules:X=7.5",
					     .reason = "rules:X" };
	char *qdir = xasprintf("%s/quarantine", f->dir);
	struct quarantine_meta m = { 0 };
	char *error = NULL, *path = NULL;

	deliver_why = &why;
	deliver(f, rcpts, 2, BACKEND_FOLDER_QUARANTINE);
	deliver_why = NULL;
	assert_int_equal(f->reply.code, 250);
	if (quarantine_meta_read(qdir, "TESTID0000000001", &m, &error) < 0)
		fail_msg("%s", error);
	assert_string_equal(m.from, "s@x.test");
	assert_int_equal(m.n_rcpts, 2);
	assert_string_equal(m.rcpts[0], "bob@b.test");
	assert_string_equal(m.rcpts[1], "admin@a.test");
	assert_string_equal(m.reason, "rules:X");
	assert_string_equal(m.hits, "rules:X=7.5");
	assert_true(m.score == 7.5);
	assert_true(m.size > 0);
	assert_int_equal(quarantine_message_path(qdir, "TESTID0000000001", &path), 1);
	char *want = xasprintf("%s/new/TESTID0000000001,S=", qdir);
	assert_memory_equal(path, want, strlen(want));
	free(want);
	free(path);
	quarantine_meta_clear(&m);
	free(qdir);
}

/* The metadata cannot be written (meta is a file): the delivery fails with
 * a 4xx and no message is left in new/ (nor in tmp/) — never a message
 * without its metadata. */
static void
test_quarantine_no_message_without_metadata(void **state)
{
	struct fixture *f = *state;
	const char *const rcpts[] = { "bob@b.test" };
	char *qdir = xasprintf("%s/quarantine", f->dir);
	char *cmd = xasprintf("mkdir -p '%s' && touch '%s/meta'", qdir, qdir);
	char *newdir = xasprintf("%s/new", qdir), *tmpdir = xasprintf("%s/tmp", qdir);

	assert_int_equal(system(cmd), 0);
	deliver(f, rcpts, 1, BACKEND_FOLDER_QUARANTINE);
	assert_int_equal(f->reply.code / 100, 4);
	assert_int_equal(count_files(newdir), 0);
	assert_int_equal(count_files(tmpdir), 0);
	free(cmd);
	free(newdir);
	free(tmpdir);
	free(qdir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_found_by_name, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rcpt_answers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_one_copy_per_mailbox, setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_junk_and_quarantine, setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_failure_is_a_temporary_reply, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quarantine_metadata, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quarantine_no_message_without_metadata, setup,
						teardown),
	};

	evthread_use_pthreads();
	backends_register_config();
	log_open("test_store", true, LOG_LEVEL_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
