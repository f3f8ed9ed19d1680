/*
 * fuzz_session.h — what the whole-session fuzz targets share (SMTP, POP3,
 * IMAP): the real daemon code in a standalone core loop (daemon.h's
 * daemon_loop_standalone) built from a config written to a temp dir under
 * /dev/shm, a passwd file whose demo user has the password "demo" (a
 * SHA-512-crypt hash at its fewest rounds, so a login costs little), a
 * Maildir that can be topped up before every input, and the run: one
 * connection fed the input over a socketpair, the loop turned until the
 * server has closed, bounded (a session that never ends is a hang, and
 * aborts). Included by one target each, so its functions are static.
 */
#ifndef MXGUARD_FUZZ_SESSION_H
#define MXGUARD_FUZZ_SESSION_H

#include <crypt.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
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

static struct event_base *fs_base;
static struct workers *fs_workers;
static struct server_state *fs_state;
static struct daemon_loop *fs_loop;
static char *fs_topdir;
static char *fs_maildir; /* the demo user's */

static void
fs_cleanup(void)
{
	char *cmd = xasprintf("rm -rf '%s'", fs_topdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", fs_topdir);
	free(cmd);
}

static void
fs_write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		abort();
}

/* The daemon for one target: the common settings, then conf_tail (the
 * target's listener and sections; "%s" in it is not expanded). */
static void
fuzz_session_init(const char *name, const char *conf_tail)
{
	char dir[] = "/dev/shm/mxfuzz-XXXXXX", dir2[] = "/tmp/mxfuzz-XXXXXX";
	char *top = mkdtemp(dir);
	char *error = NULL;
	struct crypt_data cd;

	if (top == NULL)
		top = mkdtemp(dir2);
	if (top == NULL)
		abort();
	fs_topdir = xstrdup(top);
	atexit(fs_cleanup);
	char *conf = xasprintf("hostname = \"mx.example.test\"\n"
			       "mail_root = \"%s/mail\"\nspool_dir = \"%s\"\n"
			       "state_dir = \"%s\"\nquarantine_dir = \"%s/q\"\n"
			       "passwd_file = \"%s/passwd\"\n"
			       "local_domains = {\"example.test\"}\n%s",
			       top, top, top, top, top, conf_tail);
	char *path = xasprintf("%s/mxguard.conf", top);
	fs_write_file(path, conf);
	free(conf);
	char *pw = xasprintf("%s/passwd", top);
	memset(&cd, 0, sizeof(cd));
	const char *hash = crypt_r("demo", "$6$rounds=1000$fuzzsalt$", &cd);
	if (hash == NULL || hash[0] == '*')
		abort();
	char *line = xasprintf("demo@example.test:{CRYPT}%s\n", hash);
	fs_write_file(pw, line);
	free(line);
	free(pw);
	fs_maildir = xasprintf("%s/mail/example.test/demo", top);
	evthread_use_pthreads();
	mxguard_register_config();
	log_open(name, true, LOG_LEVEL_ERR);
	fs_state = server_state_build(path, &error);
	if (fs_state == NULL) {
		fprintf(stderr, "%s\n", error);
		abort();
	}
	free(path);
	fs_base = event_base_new();
	fs_workers = workers_create(1, 0, 0);
	fs_loop = daemon_loop_standalone(&mxguard_app, fs_state, fs_base, fs_workers);
	if (fs_loop == NULL)
		abort();
}

/* Three messages in the demo user's INBOX (new/ or cur/) before an input;
 * dirs: the Maildir's subdirectories to make, NULL-terminated (the SMTP
 * target has no use for it). */
static void __attribute__((unused))
fuzz_session_top_up(const char *const *dirs)
{
	static const char *const msgs[] = {
		"Subject: one\n\nbody\n.dot line\n",
		"Subject: two\r\nX: y\r\n\r\n..\r\nlast",
		"Subject: three\n\n",
	};
	static unsigned seq;
	size_t have = 0;

	for (const char *sub = "new"; sub != NULL; sub = strcmp(sub, "new") == 0 ? "cur" : NULL) {
		char *d = xasprintf("%s/%s", fs_maildir, sub);
		DIR *dir = opendir(d);
		struct dirent *de;
		while (dir != NULL && (de = readdir(dir)) != NULL)
			have += de->d_name[0] != '.';
		if (dir != NULL)
			closedir(dir);
		free(d);
	}
	for (size_t i = have; i < 3; i++) {
		char *root = xasprintf("%s/mail", fs_topdir);
		char *dom = xasprintf("%s/mail/example.test", fs_topdir);
		mkdir(root, 0700);
		mkdir(dom, 0700);
		mkdir(fs_maildir, 0700);
		free(root);
		free(dom);
		for (const char *const *sub = dirs; *sub != NULL; sub++) {
			char *d = xasprintf("%s/%s", fs_maildir, *sub);
			mkdir(d, 0700);
			free(d);
		}
		char *p = xasprintf("%s/new/%u.M%uP1.fuzz", fs_maildir, 1000 + seq, seq);
		fs_write_file(p, msgs[seq % 3]);
		seq++;
		free(p);
	}
}

/* One connection to the named service, fed the input, until it closes. */
static void
fuzz_session_run(const uint8_t *data, size_t size, const char *protocol)
{
	int sv[2];
	size_t off = 0;
	char sink[16384];
	bool half_closed = false;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	if (daemon_loop_adopt(fs_loop, sv[1], protocol) < 0)
		abort();
	/* bounded: every round either moves bytes or runs the loop once */
	for (int round = 0; round < 200000 && daemon_loop_conn_count(fs_loop) > 0; round++) {
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
		event_base_loop(fs_base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		while (read(sv[0], sink, sizeof(sink)) > 0)
			;
		if (round > 1000)
			usleep(100); /* a job on the worker pool, a failed login's timer */
	}
	if (daemon_loop_conn_count(fs_loop) > 0)
		abort(); /* the session never ended: a hang */
	close(sv[0]);
}

#endif
