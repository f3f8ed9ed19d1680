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

#include "tests/fuzz/fuzz_session.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_session_init("fuzz_smtp_session",
			  "listen smtp {\n\taddress = \"127.0.0.1:2525\"\n}\n"
			  "limits {\n\tmessage_size_max = 65536\n\tspill_threshold = 4096\n}\n");
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_session_run(data, size, "smtp");
	return 0;
}
