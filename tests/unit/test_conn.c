/*
 * test_conn.c — the daemon core's connection layer on its own, with a
 * service of the test's own: "echo" answers every command line with
 * "LINE <octets> <text>", a discarded overlong line with "TOO_LONG", and a
 * flood without a line end with "OVERFLOW" and a close; "echo-strict" is
 * the same with strict CRLF line ends. The service runs in a standalone
 * loop (daemon_loop_standalone) on socketpairs: no network, no SMTP — the
 * layer a POP3 or IMAP service will sit on.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
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

#include "daemon/daemon.h"

/* This program's shared state: just a config. */
struct server_state {
	int refs;
	struct mx_config *cfg;
};

struct echo {
	struct conn *conn;
	bool strict;
	char gone_reason[32];
};

static char last_gone[32];

static void
echo_ready(void *ctx)
{
	struct echo *e = ctx;
	char *line, out[300];
	size_t len;

	conn_set_lines(e->conn, 64, e->strict);
	for (;;) {
		enum conn_line got = conn_read_line(e->conn, &line, &len);
		if (got == CONN_LINE_NONE)
			break;
		if (got == CONN_LINE_OVERFLOW) {
			conn_write(e->conn, "OVERFLOW\r\n", 10);
			conn_close(e->conn, "overflow");
			break;
		}
		if (got == CONN_LINE_TOO_LONG) {
			conn_write(e->conn, "TOO_LONG\r\n", 10);
			continue;
		}
		int n = snprintf(out, sizeof(out), "LINE %zu %s\r\n", len, line);
		for (int i = 0; i < n - 2; i++) {
			if (out[i] == '\n')
				out[i] = '|'; /* show a bare LF kept inside the line */
		}
		conn_write(e->conn, out, (size_t)n);
		if (strcmp(line, "QUIT") == 0)
			conn_close(e->conn, "quit");
		free(line);
		if (conn_closing(e->conn))
			break;
	}
	if (conn_eof(e->conn) && !conn_closing(e->conn))
		conn_close(e->conn, "eof");
}

static void echo_tls_up(void *ctx) { echo_ready(ctx); }
static void echo_timeout(void *ctx) { conn_close(((struct echo *)ctx)->conn, "timeout"); }
static void echo_eof(void *ctx) { echo_ready(ctx); }
static void echo_shutdown(void *ctx) { conn_close(((struct echo *)ctx)->conn, "shutdown"); }

static void
echo_gone(void *ctx, const char *reason)
{
	str_copy(last_gone, reason, sizeof(last_gone));
	free(ctx);
}

static const struct conn_handler echo_handler = {
	.ready = echo_ready, .tls_up = echo_tls_up, .timeout = echo_timeout,
	.eof = echo_eof, .shutdown = echo_shutdown, .gone = echo_gone,
};

static void
echo_accept_mode(struct conn *conn, const char *refusal, bool strict)
{
	struct echo *e = xcalloc(1, sizeof(*e));

	e->conn = conn;
	e->strict = strict;
	conn_attach(conn, &echo_handler, e);
	conn_set_timeout(conn, 30);
	conn_write(conn, "HELLO\r\n", 7);
}

static void echo_accept(struct conn *c, const char *r) { echo_accept_mode(c, r, false); }
static void echo_strict_accept(struct conn *c, const char *r) { echo_accept_mode(c, r, true); }

static const struct service services[] = {
	{ .name = "echo", .accept = echo_accept },
	{ .name = "echo-strict", .accept = echo_strict_accept },
};

static struct server_state *st_ref(struct server_state *st) { st->refs++; return st; }
static void st_unref(struct server_state **st) { (*st)->refs--; *st = NULL; }
static const struct mx_config *st_config(const struct server_state *st) { return st->cfg; }
static struct ssl_ctx_st *st_tls(const struct server_state *st) { return NULL; }

static const struct daemon_app app = {
	.ident = "test_conn", .services = services, .n_services = N_ELEMENTS(services),
	.state_ref = st_ref, .state_unref = st_unref, .state_config = st_config,
	.state_tls = st_tls,
};

struct harness {
	struct server_state st;
	struct event_base *base;
	struct daemon_loop *loop;
	int client;
	char in[4096];
	size_t in_len;
};

static int
setup(void **state)
{
	struct harness *h = xcalloc(1, sizeof(*h));
	char dir[] = "/tmp/mxtest-conn-XXXXXX";
	char *error = NULL;

	assert_non_null(mkdtemp(dir));
	char *path = xasprintf("%s/mxguard.conf", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "state_dir = \"%s\"\nlisten echo {\n\taddress = \"127.0.0.1:2525\"\n"
		"\tprotocol = \"echo\"\n}\n", dir);
	fclose(f);
	if (config_load(path, &h->st.cfg, &error) < 0)
		fail_msg("%s", error);
	unlink(path);
	rmdir(dir);
	free(path);
	h->st.refs = 1;
	h->base = event_base_new();
	h->loop = daemon_loop_standalone(&app, &h->st, h->base, NULL);
	assert_non_null(h->loop);
	*state = h;
	return 0;
}

static int
teardown(void **state)
{
	struct harness *h = *state;

	daemon_loop_standalone_free(&h->loop);
	assert_int_equal(h->st.refs, 1); /* every reference the loop took was given back */
	event_base_free(h->base);
	config_unref(&h->st.cfg);
	free(h);
	return 0;
}

static void
connect_to(struct harness *h, const char *protocol)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	h->client = sv[0];
	fcntl(h->client, F_SETFL, O_NONBLOCK);
	h->in_len = 0;
	assert_int_equal(daemon_loop_adopt(h->loop, sv[1], protocol), 0);
}

static void
send_str(struct harness *h, const char *s)
{
	size_t len = strlen(s);
	assert_int_equal(write(h->client, s, len), (ssize_t)len);
}

/* Run the loop until a full reply line is there (NULL: the close). */
static const char *
reply(struct harness *h)
{
	static char line[512];

	for (int round = 0; round < 20000; round++) {
		char *nl = memchr(h->in, '\n', h->in_len);
		if (nl != NULL) {
			size_t n = (size_t)(nl - h->in) + 1;
			memcpy(line, h->in, n - 2);
			line[n - 2] = '\0';
			memmove(h->in, h->in + n, h->in_len - n);
			h->in_len -= n;
			return line;
		}
		event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		ssize_t r = read(h->client, h->in + h->in_len, sizeof(h->in) - h->in_len);
		if (r > 0)
			h->in_len += (size_t)r;
		else if (r == 0 || errno != EAGAIN)
			return NULL;
		else
			usleep(100);
	}
	fail_msg("no reply and no close");
	return NULL;
}

/* Close our end and run the loop until the server let the connection go. */
static void
hang_up(struct harness *h)
{
	close(h->client);
	for (int i = 0; i < 100000 && daemon_loop_conn_count(h->loop) > 0; i++) {
		event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		usleep(50);
	}
	assert_int_equal(daemon_loop_conn_count(h->loop), 0);
}

static void
test_lines_end_at_crlf_or_bare_lf(void **state)
{
	struct harness *h = *state;

	connect_to(h, "echo");
	assert_string_equal(reply(h), "HELLO");
	send_str(h, "one\r\ntwo\nthree\r\n");
	assert_string_equal(reply(h), "LINE 3 one");
	assert_string_equal(reply(h), "LINE 3 two");
	assert_string_equal(reply(h), "LINE 5 three");
	send_str(h, "QUIT\r\n");
	assert_string_equal(reply(h), "LINE 4 QUIT");
	assert_null(reply(h));
	hang_up(h);
	assert_string_equal(last_gone, "quit");
}

static void
test_strict_lines_end_only_at_crlf(void **state)
{
	struct harness *h = *state;

	connect_to(h, "echo-strict");
	assert_string_equal(reply(h), "HELLO");
	send_str(h, "two\nparts\r\n");
	assert_string_equal(reply(h), "LINE 9 two|parts"); /* the LF stays inside */
	close(h->client);
}

static void
test_caps_before_and_after_the_line_end(void **state)
{
	struct harness *h = *state;
	char big[200];

	connect_to(h, "echo");
	assert_string_equal(reply(h), "HELLO");
	/* a complete line over the cap (64 with its CRLF): discarded, the
	 * session goes on */
	memset(big, 'x', 70);
	memcpy(big + 70, "\r\nok\r\n", 7);
	send_str(h, big);
	assert_string_equal(reply(h), "TOO_LONG");
	assert_string_equal(reply(h), "LINE 2 ok");
	/* more than the cap without any line end: refused before it ends */
	memset(big, 'y', 100);
	big[100] = '\0';
	send_str(h, big);
	assert_string_equal(reply(h), "OVERFLOW");
	assert_null(reply(h));
	hang_up(h);
	assert_string_equal(last_gone, "overflow");
}

static void
test_half_close_is_answered_then_closed(void **state)
{
	struct harness *h = *state;

	connect_to(h, "echo");
	assert_string_equal(reply(h), "HELLO");
	send_str(h, "last words\r\n");
	shutdown(h->client, SHUT_WR);
	assert_string_equal(reply(h), "LINE 10 last words");
	assert_null(reply(h));
	hang_up(h);
	assert_string_equal(last_gone, "eof");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_lines_end_at_crlf_or_bare_lf, setup, teardown),
		cmocka_unit_test_setup_teardown(test_strict_lines_end_only_at_crlf, setup, teardown),
		cmocka_unit_test_setup_teardown(test_caps_before_and_after_the_line_end, setup, teardown),
		cmocka_unit_test_setup_teardown(test_half_close_is_answered_then_closed, setup, teardown),
	};

	evthread_use_pthreads();
	daemon_register_config();
	log_open("test_conn", true, LOG_LEVEL_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
