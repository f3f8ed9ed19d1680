/*
 * test_quarantine.c — the quarantine store's metadata (backends/quarantine.c):
 * ids from the command line (never a path out of the quarantine), the
 * "key: value" format written and read back, values kept on one line, files
 * written into meta/ through tmp/, the message found by id, events.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "backends/backends.h"

#define ID "0ABCDEFGHIJ12345"

static void
test_id_valid(void **state)
{
	(void)state;
	assert_true(quarantine_id_valid(ID));
	assert_true(quarantine_id_valid("0000000000000000"));
	char id[MX_ID_LEN];
	id_new(id);
	assert_true(quarantine_id_valid(id));

	static const char *const bad[] = {
		"", "0ABCDEFGHIJ1234", "0ABCDEFGHIJ123456", "0abcdefghij12345",
		"../../etc/passwd", "..", ".", "0ABCDEFGHIJ1234/", "/ABCDEFGHIJ12345",
		"0ABCDEFGHIJ1234.", "0ABCDEFG.IJ12345", "0ABCDEFGHIJ1234\n",
		"0ABCDEFGHIJ,S=12", "0ABCDEFGHIJ12 45", "0ABCDEFGHIJ1234-",
	};
	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		assert_false(quarantine_id_valid(bad[i]));
	assert_false(quarantine_id_valid(NULL));
}

static void
fill(struct quarantine_meta *m)
{
	memset(m, 0, sizeof(*m));
	str_copy(m->id, ID, sizeof(m->id));
	m->time = 1764640000;
	m->client_addr = xstrdup("192.0.2.1");
	m->client_port = 40000;
	m->helo = xstrdup("mail.example.net\nevent: 1 released by forged"); /* one line */
	m->from = xstrdup("");
	m->n_rcpts = 2;
	m->rcpts = xcalloc(2, sizeof(*m->rcpts));
	m->rcpts[0] = xstrdup("a@example.com");
	m->rcpts[1] = xstrdup("b@example.com");
	m->verdict = xstrdup("quarantine");
	m->action = xstrdup("quarantine");
	m->score = 12.5;
	m->hits = xstrdup("rules:GTUBE=1000.0,clamav:CLAMAV_X=0.0");
	m->reason = xstrdup("clamav:CLAMAV_X");
	m->size = 4242;
}

static void
test_format_parse(void **state)
{
	struct quarantine_meta m, back = { 0 };
	char *error = NULL;

	(void)state;
	fill(&m);
	char *text = quarantine_meta_format(&m);
	assert_non_null(strstr(text, "mxguard-quarantine: 1\nid: " ID "\ntime: 1764640000\n"));
	assert_non_null(strstr(text, "\nrcpt: a@example.com\nrcpt: b@example.com\n"));
	/* a control character in a value never starts a line of its own */
	assert_non_null(strstr(text, "helo: mail.example.net?event: 1 released by forged\n"));
	assert_null(strstr(text, "\nevent:"));
	if (quarantine_meta_parse(text, strlen(text), &back, &error) < 0)
		fail_msg("%s", error);
	assert_string_equal(back.id, ID);
	assert_int_equal(back.time, 1764640000);
	assert_string_equal(back.client_addr, "192.0.2.1");
	assert_int_equal(back.client_port, 40000);
	assert_string_equal(back.from, "");
	assert_int_equal(back.n_rcpts, 2);
	assert_string_equal(back.rcpts[1], "b@example.com");
	assert_string_equal(back.verdict, "quarantine");
	assert_true(back.score == 12.5);
	assert_string_equal(back.hits, "rules:GTUBE=1000.0,clamav:CLAMAV_X=0.0");
	assert_string_equal(back.reason, "clamav:CLAMAV_X");
	assert_int_equal(back.size, 4242);
	assert_int_equal(back.n_events, 0);
	assert_false(back.released);
	assert_false(back.deleted);
	free(text);
	quarantine_meta_clear(&back);
	quarantine_meta_clear(&m);

	/* not ours, or an id that could be a path: refused */
	static const char *const bad[] = {
		"id: " ID "\n",
		"mxguard-quarantine: 2\nid: " ID "\n",
		"mxguard-quarantine: 1\nid: ../x\n",
		"mxguard-quarantine: 1\n",
		"",
	};
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		assert_int_equal(quarantine_meta_parse(bad[i], strlen(bad[i]), &back, &error), -1);
		free(error);
		error = NULL;
	}
	/* unknown keys are ignored, missing strings are "" */
	static const char ok[] = "mxguard-quarantine: 1\nid: " ID "\nfuture-key: x\n"
				 "event: 5 released by root to a@b: 250 ok\n"
				 "event: 6 deleted by root\n";
	assert_int_equal(quarantine_meta_parse(ok, sizeof(ok) - 1, &back, &error), 0);
	assert_string_equal(back.reason, "");
	assert_int_equal(back.n_events, 2);
	assert_true(back.released);
	assert_true(back.deleted);
	quarantine_meta_clear(&back);
}

static int
count(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static void
test_write_read_find(void **state)
{
	char dir[] = "/tmp/mxtest-quarantine-XXXXXX";
	struct quarantine_meta m, back = { 0 };
	char *error = NULL, *path = NULL, **ids = NULL;
	size_t n = 0;

	(void)state;
	assert_non_null(mkdtemp(dir));
	fill(&m);
	if (quarantine_meta_write(dir, &m, true, &error) < 0)
		fail_msg("%s", error);
	char *tmp = xasprintf("%s/tmp", dir), *meta = xasprintf("%s/meta", dir);
	assert_int_equal(count(tmp), 0); /* renamed out of tmp/ */
	assert_int_equal(count(meta), 1);
	if (quarantine_meta_read(dir, ID, &back, &error) < 0)
		fail_msg("%s", error);
	assert_string_equal(back.reason, "clamav:CLAMAV_X");
	quarantine_meta_clear(&back);

	/* an unknown id: ENOENT; an invalid one never reaches the file system */
	assert_int_equal(quarantine_meta_read(dir, "0000000000000000", &back, &error), -1);
	assert_int_equal(errno, ENOENT);
	free(error);
	assert_int_equal(quarantine_meta_read(dir, "../meta/" ID, &back, &error), -1);
	assert_int_equal(errno, EINVAL);
	free(error);
	assert_int_equal(quarantine_message_path(dir, "../x", &path), -1);
	assert_int_equal(quarantine_meta_remove(dir, ".."), -1);

	/* the message: new/ID,S=N or cur/ID:2,S; another id's prefix is not it */
	assert_int_equal(quarantine_message_path(dir, ID, &path), 0);
	char *cmd = xasprintf("mkdir -p %s/new %s/cur && touch %s/new/" ID "9,S=1 "
			      "%s/new/junk %s/meta/not-an-id", dir, dir, dir, dir, dir);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	assert_int_equal(quarantine_message_path(dir, ID, &path), 0);
	cmd = xasprintf("touch '%s/cur/" ID ":2,S'", dir);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	assert_int_equal(quarantine_message_path(dir, ID, &path), 1);
	char *want = xasprintf("%s/cur/" ID ":2,S", dir);
	assert_string_equal(path, want);
	free(want);
	free(path);

	/* list: only metadata files named by a valid id, sorted */
	str_copy(m.id, "0000000000000001", sizeof(m.id));
	assert_int_equal(quarantine_meta_write(dir, &m, false, &error), 0);
	assert_int_equal(quarantine_list_ids(dir, &ids, &n, &error), 0);
	assert_int_equal(n, 2);
	assert_string_equal(ids[0], "0000000000000001");
	assert_string_equal(ids[1], ID);
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
	free(ids);

	/* events are added, the rest kept */
	assert_int_equal(quarantine_add_event(dir, ID, "released by root to a@example.com: 250",
					      &error), 0);
	assert_int_equal(quarantine_meta_read(dir, ID, &back, &error), 0);
	assert_int_equal(back.n_events, 1);
	assert_true(back.released);
	assert_non_null(strstr(back.events[0], " released by root to a@example.com: 250"));
	assert_int_equal(back.n_rcpts, 2);
	quarantine_meta_clear(&back);

	assert_int_equal(quarantine_meta_remove(dir, ID), 0);
	assert_int_equal(quarantine_meta_read(dir, ID, &back, &error), -1);
	free(error);

	quarantine_meta_clear(&m);
	cmd = xasprintf("rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	free(tmp);
	free(meta);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_id_valid),
		cmocka_unit_test(test_format_parse),
		cmocka_unit_test(test_write_read_find),
	};

	log_open("test_quarantine", true, LOG_LEVEL_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
