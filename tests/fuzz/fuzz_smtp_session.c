/*
 * fuzz_smtp_session.c — libFuzzer target for the whole SMTP session: the
 * input is everything a client sends on one connection.
 *
 * The real daemon code runs in a standalone core loop (no threads of its
 * own, no listeners) with the real state built from a config written at
 * start: the connection layer, the command table and state machine, the
 * DATA reader, the pipeline (empty) and Maildir delivery through the worker
 * pool, into a store under /dev/shm when there is one. The client end of a
 * socketpair sends the input, half-closes, and the loop runs until the
 * server has closed — bounded, so a hang shows up as a timeout, and the
 * sanitizers catch memory errors and leaks.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "proxy/proxy.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;
static struct workers *workers;
static struct server_state *state;
static struct daemon_loop *loop;
static char *topdir;

static void
cleanup(void)
{
	char *cmd = xasprintf("rm -rf '%s'", topdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", topdir);
	free(cmd);
}

static void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		abort();
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char dir[] = "/dev/shm/mxfuzz-XXXXXX", dir2[] = "/tmp/mxfuzz-XXXXXX";
	char *top = mkdtemp(dir);
	char *error = NULL;

	if (top == NULL)
		top = mkdtemp(dir2);
	if (top == NULL)
		abort();
	topdir = xstrdup(top);
	atexit(cleanup);
	char *conf = xasprintf("hostname = \"mx.example.test\"\n"
			       "mail_root = \"%s/mail\"\nspool_dir = \"%s\"\n"
			       "state_dir = \"%s\"\nquarantine_dir = \"%s/q\"\n"
			       "passwd_file = \"%s/passwd\"\n"
			       "local_domains = {\"example.test\"}\n"
			       "listen smtp {\n\taddress = \"127.0.0.1:2525\"\n}\n"
			       "limits {\n\tmessage_size_max = 65536\n\tspill_threshold = 4096\n}\n",
			       top, top, top, top, top);
	char *path = xasprintf("%s/mxguard.conf", top);
	write_file(path, conf);
	free(conf);
	char *pw = xasprintf("%s/passwd", top);
	/* a fixed crypt hash: no hashing per run */
	write_file(pw, "demo@example.test:{CRYPT}$6$salt$x\n");
	free(pw);
	evthread_use_pthreads();
	mxguard_register_config();
	log_open("fuzz_smtp_session", true, LOG_LEVEL_ERR);
	state = server_state_build(path, &error);
	if (state == NULL) {
		fprintf(stderr, "%s\n", error);
		abort();
	}
	free(path);
	base = event_base_new();
	workers = workers_create(1, 0, 0);
	loop = daemon_loop_standalone(&mxguard_app, state, base, workers);
	if (loop == NULL)
		abort();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int sv[2];
	size_t off = 0;
	char sink[16384];
	bool half_closed = false;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	if (daemon_loop_adopt(loop, sv[1], "smtp") < 0)
		abort();
	/* bounded: every round either moves bytes or runs the loop once */
	for (int round = 0; round < 200000 && daemon_loop_conn_count(loop) > 0; round++) {
		if (off < size) {
			ssize_t w = write(sv[0], data + off, size - off);
			if (w > 0)
				off += (size_t)w;
			else if (w < 0 && errno != EAGAIN)
				off = size; /* the server closed: the rest is never read */
		} else if (!half_closed) {
			shutdown(sv[0], SHUT_WR);
			half_closed = true;
		}
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		while (read(sv[0], sink, sizeof(sink)) > 0)
			;
		if (round > 1000)
			usleep(100); /* a delivery on the worker pool */
	}
	if (daemon_loop_conn_count(loop) > 0)
		abort(); /* the session never ended: a hang */
	close(sv[0]);
	return 0;
}
