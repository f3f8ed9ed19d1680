/*
 * fuzz_pop3_session.c — libFuzzer target for the whole POP3 session: the
 * input is everything a client sends on one connection.
 *
 * As fuzz_smtp_session.c, with a pop3 listener: the real daemon code in a
 * standalone core loop, the connection layer, the command table and
 * states, SASL, the login on the worker pool against a passwd file whose
 * demo user has the password "demo" (a cheap SHA-512-crypt hash, so a
 * login costs little), the mailbox snapshot, RETR/TOP through the pool and
 * the deletions at QUIT, in a Maildir under /dev/shm that is topped up to
 * three messages before every input. A failed login waits for its
 * 100 ms timer. The loop runs until the server has closed, bounded.
 */
#include "config.h"

#include "tests/fuzz/fuzz_session.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_session_init("fuzz_pop3_session",
			  "listen pop3 {\n\taddress = \"127.0.0.1:1110\"\n\tprotocol = \"pop3\"\n}\n"
			  "pop3 {\n\tplaintext_auth = \"always\"\n\tauth_failure_delay = 100\n"
			  "\tauth_failures_max = 100000\n\tauth_failure_window = 1\n"
			  "\tcommand_line_max = 512\n}\n");
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const dirs[] = { "tmp", "new", "cur", NULL };

	fuzz_session_top_up(dirs);
	fuzz_session_run(data, size, "pop3");
	return 0;
}
