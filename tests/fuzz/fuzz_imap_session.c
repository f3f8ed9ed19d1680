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

#include "tests/fuzz/fuzz_session.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_session_init("fuzz_imap_session",
			  "listen imap {\n\taddress = \"127.0.0.1:1143\"\n\tprotocol = \"imap\"\n}\n"
			  "imap {\n\tplaintext_auth = \"always\"\n\tauth_failure_delay = 100\n"
			  "\tauth_failures_max = 100000\n\tauth_failure_window = 1\n"
			  "\tcommand_line_max = 1024\n\tcommand_max = 4096\n\tappend_max = 65536\n}\n");
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const dirs[] = { "tmp", "new", "cur", ".Junk", ".Junk/tmp",
					    ".Junk/new", ".Junk/cur", NULL };

	fuzz_session_top_up(dirs);
	fuzz_session_run(data, size, "imap");
	return 0;
}
