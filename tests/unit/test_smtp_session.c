/*
 * test_smtp_session.c — the SMTP session state machine driven by
 * transcripts, without the network.
 *
 * Each file in tests/transcripts/NAME.smtp is a dialogue:
 *
 *   # a comment
 *   C: EHLO client.example      a line the client sends (CRLF added)
 *   C\ raw\r\nbytes             raw bytes with \r \n \t \\ \xHH escapes, no CRLF added
 *   S: 250 2.1.0 Ok             a reply line the server must send, exactly
 *   S~ ^250 2\.0\.0 Ok: queued  a reply line matched by a POSIX extended regex
 *   S. <closed>                 the server closes the connection here
 *   F: new demo 1               demo's Maildir new/ holds exactly 1 file now
 *                               (each transcript starts with an empty store)
 *
 * Consecutive C lines are sent together before the next S line is read, so
 * a transcript pipelines exactly as a client would. The session runs inside
 * a standalone core loop (daemon_loop_standalone) on one end of a socketpair,
 * with the real state (config, pipeline, user database) built from a temp
 * config and the real worker pool for deliveries; the test runs the event
 * loop until the expected bytes arrive (bounded by a generous deadline that
 * only guards against a hang).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "proxy/proxy.h"

static char srcdir[PATH_MAX];
static char tmpdir[] = "/tmp/mxtest-session-XXXXXX";

struct harness {
	struct event_base *base;
	struct workers *workers;
	struct server_state *st;
	struct daemon_loop *loop;
	int client;         /* our end of the socketpair */
	char in[65536];     /* what the server sent, not yet matched */
	size_t in_len;
	bool closed;
};

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void
setup_config(void)
{
	char *path, *conf;

	assert_non_null(mkdtemp(tmpdir));
	conf = xasprintf("hostname = \"mx.example.test\"\n"
			 "mail_root = \"%s/mail\"\nspool_dir = \"%s/spool\"\n"
			 "state_dir = \"%s/state\"\nquarantine_dir = \"%s/quarantine\"\n"
			 "passwd_file = \"%s/passwd\"\n"
			 "local_domains = {\"example.test\"}\n"
			 "listen smtp {\n\taddress = \"127.0.0.1:2525\"\n}\n"
			 "limits {\n\terrors_max = 5\n}\n",
			 tmpdir, tmpdir, tmpdir, tmpdir, tmpdir);
	path = xasprintf("%s/mxguard.conf", tmpdir);
	write_file(path, conf);
	free(conf);
	free(path);
	char *hash = userdb_hash_password("demo");
	assert_non_null(hash);
	char *pw = xasprintf("demo@example.test:%s\nalice@example.test:%s\n", hash, hash);
	path = xasprintf("%s/passwd", tmpdir);
	write_file(path, pw);
	free(path);
	free(pw);
	free(hash);
}

static void
harness_start(struct harness *h)
{
	char *error = NULL, *conf = xasprintf("%s/mxguard.conf", tmpdir);
	int sv[2];

	memset(h, 0, sizeof(*h));
	/* every transcript starts with an empty store */
	char *rm = xasprintf("rm -rf '%s/mail'", tmpdir);
	assert_int_equal(system(rm), 0);
	free(rm);
	h->st = server_state_build(conf, &error);
	if (h->st == NULL)
		fail_msg("state: %s", error);
	free(conf);
	h->base = event_base_new();
	h->workers = workers_create(2, 0, 0);
	h->loop = daemon_loop_standalone(&mxguard_app, h->st, h->base, h->workers);
	assert_non_null(h->loop);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	h->client = sv[0];
	fcntl(h->client, F_SETFL, O_NONBLOCK);
	assert_int_equal(daemon_loop_adopt(h->loop, sv[1], "smtp"), 0);
}

static void
harness_stop(struct harness *h)
{
	close(h->client);
	/* let the server notice the close and finish what it has */
	for (int i = 0; i < 200 && daemon_loop_conn_count(h->loop) > 0; i++)
		event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	daemon_loop_standalone_free(&h->loop);
	workers_destroy(&h->workers);
	/* completions the pool posted after the loop let go */
	event_base_loop(h->base, EVLOOP_NONBLOCK);
	event_base_free(h->base);
	server_state_unref(&h->st);
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Run the loop and read until a full line (or the close) is there. */
static bool
harness_line(struct harness *h, char *line, size_t cap)
{
	double deadline = now_s() + 20.0; /* only a hang guard */

	for (;;) {
		char *nl = memchr(h->in, '\n', h->in_len);
		if (nl != NULL) {
			size_t n = (size_t)(nl - h->in) + 1;
			assert_true(n >= 2 && h->in[n - 2] == '\r'); /* replies end in CRLF */
			assert_true(n - 2 < cap);
			memcpy(line, h->in, n - 2);
			line[n - 2] = '\0';
			memmove(h->in, h->in + n, h->in_len - n);
			h->in_len -= n;
			return true;
		}
		if (h->closed || now_s() > deadline)
			return false;
		event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		ssize_t r = read(h->client, h->in + h->in_len, sizeof(h->in) - h->in_len);
		if (r > 0)
			h->in_len += (size_t)r;
		else if (r == 0)
			h->closed = true;
		else if (errno != EAGAIN)
			h->closed = true;
		else
			usleep(200);
	}
}

static void
harness_send(struct harness *h, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t w = write(h->client, data, len);
		if (w < 0 && errno == EAGAIN) {
			event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
			continue;
		}
		assert_true(w > 0);
		data += w;
		len -= (size_t)w;
	}
}

static size_t
unescape(const char *s, char *out)
{
	size_t n = 0;

	while (*s != '\0') {
		if (*s != '\\') {
			out[n++] = *s++;
			continue;
		}
		s++;
		switch (*s) {
		case 'r': out[n++] = '\r'; s++; break;
		case 'n': out[n++] = '\n'; s++; break;
		case 't': out[n++] = '\t'; s++; break;
		case 'x': {
			char hex[3] = { s[1], s[2], 0 };
			out[n++] = (char)strtol(hex, NULL, 16);
			s += 3;
			break;
		}
		default: out[n++] = *s++; break;
		}
	}
	return n;
}

static size_t
count_files(const char *sub, const char *user)
{
	char *path = xasprintf("%s/mail/example.test/%s/%s", tmpdir, user, sub);
	DIR *d = opendir(path);
	struct dirent *e;
	size_t n = 0;

	free(path);
	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.')
			n++;
	}
	closedir(d);
	return n;
}

static void
run_transcript(const char *file)
{
	char *path = xasprintf("%s/tests/transcripts/%s", srcdir, file);
	FILE *f = fopen(path, "r");
	char buf[8192], got[4096];
	struct harness h;
	unsigned lineno = 0;

	if (f == NULL)
		fail_msg("%s: %s", path, strerror(errno));
	harness_start(&h);
	while (fgets(buf, sizeof(buf), f) != NULL) {
		size_t len = strlen(buf);
		lineno++;
		if (len > 0 && buf[len - 1] == '\n')
			buf[--len] = '\0';
		if (len == 0 || buf[0] == '#')
			continue;
		if (len < 3)
			fail_msg("%s:%u: short line", file, lineno);
		const char *arg = buf + 3;
		if (strncmp(buf, "C: ", 3) == 0) {
			harness_send(&h, arg, strlen(arg));
			harness_send(&h, "\r\n", 2);
		} else if (strncmp(buf, "C\\ ", 3) == 0) {
			char raw[8192];
			size_t n = unescape(arg, raw);
			harness_send(&h, raw, n);
		} else if (strncmp(buf, "S: ", 3) == 0 || strncmp(buf, "S~ ", 3) == 0) {
			if (!harness_line(&h, got, sizeof(got)))
				fail_msg("%s:%u: expected \"%s\", got %s", file, lineno, arg,
					 h.closed ? "the close" : "nothing");
			if (buf[1] == ':') {
				if (strcmp(got, arg) != 0)
					fail_msg("%s:%u: expected \"%s\", got \"%s\"", file, lineno, arg, got);
			} else {
				regex_t rx;
				assert_int_equal(regcomp(&rx, arg, REG_EXTENDED | REG_NOSUB), 0);
				int m = regexec(&rx, got, 0, NULL, 0);
				regfree(&rx);
				if (m != 0)
					fail_msg("%s:%u: expected /%s/, got \"%s\"", file, lineno, arg, got);
			}
		} else if (strncmp(buf, "S. ", 3) == 0) {
			if (harness_line(&h, got, sizeof(got)))
				fail_msg("%s:%u: expected the close, got \"%s\"", file, lineno, got);
			if (!h.closed)
				fail_msg("%s:%u: expected the close, the connection stayed open", file, lineno);
		} else if (strncmp(buf, "F: ", 3) == 0) {
			char sub[16], user[64];
			size_t want;
			if (sscanf(arg, "%15s %63s %zu", sub, user, &want) != 3)
				fail_msg("%s:%u: bad F: line", file, lineno);
			size_t n = count_files(sub, user);
			if (n != want)
				fail_msg("%s:%u: %s/%s holds %zu files, expected %zu", file, lineno, user, sub,
					 n, want);
		} else {
			fail_msg("%s:%u: unknown line kind", file, lineno);
		}
	}
	fclose(f);
	free(path);
	harness_stop(&h);
}

static void
test_transcript(void **state)
{
	run_transcript(*state);
}

/* One test per transcript file, named after it. */
int
main(void)
{
	const char *env = getenv("MX_SRCDIR");
	struct CMUnitTest *tests;
	struct dirent **names;
	size_t n_tests = 0;
	int n;

	if (realpath(env != NULL && env[0] != '\0' ? env : ".", srcdir) == NULL)
		return 1;
	char *dir = xasprintf("%s/tests/transcripts", srcdir);
	n = scandir(dir, &names, NULL, alphasort);
	if (n < 0) {
		perror(dir);
		return 1;
	}
	free(dir);
	tests = xcalloc((size_t)n + 1, sizeof(*tests));
	for (int i = 0; i < n; i++) {
		size_t len = strlen(names[i]->d_name);
		if (len > 5 && strcmp(names[i]->d_name + len - 5, ".smtp") == 0) {
			tests[n_tests].name = xstrdup(names[i]->d_name);
			tests[n_tests].test_func = test_transcript;
			tests[n_tests].initial_state = (void *)tests[n_tests].name;
			n_tests++;
		}
		free(names[i]);
	}
	free(names);
	if (n_tests < 5) {
		fprintf(stderr, "only %zu transcripts found\n", n_tests);
		return 1;
	}
	evthread_use_pthreads();
	mxguard_register_config();
	log_open("test_smtp_session", true, LOG_LEVEL_WARN);
	setup_config();
	int ret = _cmocka_run_group_tests("smtp_session", tests, n_tests, NULL, NULL);
	for (size_t i = 0; i < n_tests; i++)
		free((char *)tests[i].name);
	free(tests);
	char *cmd = xasprintf("rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		ret = 1;
	free(cmd);
	return ret;
}
