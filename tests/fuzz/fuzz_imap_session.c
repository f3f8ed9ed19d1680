/*
 * fuzz_imap_session.c — libFuzzer target for the whole IMAP session: the
 * input is everything a client sends on one connection.
 *
 * As fuzz_pop3_session.c, with an imap listener: the real daemon code in
 * a standalone core loop, the connection layer, command assembly with
 * literals, the command table and states, AUTHENTICATE and LOGIN on the
 * worker pool against a passwd file whose demo user has the password
 * "demo", and every folder command, FETCH, STORE, SEARCH, COPY/MOVE,
 * APPEND, EXPUNGE and IDLE on the pool, in a Maildir under /dev/shm that
 * is topped up to three messages in INBOX before every input (a Junk
 * folder exists). Folders the input creates stay (bounded by the names
 * the input can spell). The loop runs until the server has closed,
 * bounded. The message side (imap/mime.c) is linked as it is.
 */
#include "config.h"

#include <crypt.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
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
static char *maildir;

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
			       "listen imap {\n\taddress = \"127.0.0.1:1143\"\n\tprotocol = \"imap\"\n}\n"
			       "imap {\n\tplaintext_auth = \"always\"\n\tauth_failure_delay = 100\n"
			       "\tauth_failures_max = 100000\n\tauth_failure_window = 1\n"
			       "\tcommand_line_max = 1024\n\tcommand_max = 4096\n\tappend_max = 65536\n}\n",
			       top, top, top, top, top);
	char *path = xasprintf("%s/mxguard.conf", top);
	write_file(path, conf);
	free(conf);
	char *pw = xasprintf("%s/passwd", top);
	/* SHA-512-crypt at its fewest rounds: a login costs little */
	struct crypt_data cd;
	memset(&cd, 0, sizeof(cd));
	const char *hash = crypt_r("demo", "$6$rounds=1000$fuzzsalt$", &cd);
	if (hash == NULL || hash[0] == '*')
		abort();
	char *line = xasprintf("demo@example.test:{CRYPT}%s\n", hash);
	write_file(pw, line);
	free(line);
	free(pw);
	maildir = xasprintf("%s/mail/example.test/demo", top);
	evthread_use_pthreads();
	mxguard_register_config();
	log_open("fuzz_imap_session", true, LOG_LEVEL_ERR);
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

/* Three messages in the maildrop (new/ or cur/) before every input. */
static void
top_up(void)
{
	static const char *const msgs[] = {
		"Subject: one\n\nbody\n.dot line\n",
		"Subject: two\r\nX: y\r\n\r\n..\r\nlast",
		"Subject: three\n\n",
	};
	static unsigned seq;
	size_t have = 0;

	for (const char *sub = "new"; sub != NULL; sub = strcmp(sub, "new") == 0 ? "cur" : NULL) {
		char *d = xasprintf("%s/%s", maildir, sub);
		DIR *dir = opendir(d);
		struct dirent *de;
		while (dir != NULL && (de = readdir(dir)) != NULL)
			have += de->d_name[0] != '.';
		if (dir != NULL)
			closedir(dir);
		free(d);
	}
	for (size_t i = have; i < 3; i++) {
		char *root = xasprintf("%s/mail", topdir);
		char *dom = xasprintf("%s/mail/example.test", topdir);
		mkdir(root, 0700);
		mkdir(dom, 0700);
		mkdir(maildir, 0700);
		free(root);
		free(dom);
		for (const char *const *sub = (const char *const[]){ "tmp", "new", "cur", ".Junk", ".Junk/tmp",
								      ".Junk/new", ".Junk/cur", NULL };
		     *sub; sub++) {
			char *d = xasprintf("%s/%s", maildir, *sub);
			mkdir(d, 0700);
			free(d);
		}
		char *p = xasprintf("%s/new/%u.M%uP1.fuzz", maildir, 1000 + seq, seq);
		write_file(p, msgs[seq % 3]);
		seq++;
		free(p);
	}
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
	top_up();
	if (daemon_loop_adopt(loop, sv[1], "imap") < 0)
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
			usleep(100); /* a job on the worker pool, a failed login's timer */
	}
	if (daemon_loop_conn_count(loop) > 0)
		abort(); /* the session never ended: a hang */
	close(sv[0]);
	return 0;
}
