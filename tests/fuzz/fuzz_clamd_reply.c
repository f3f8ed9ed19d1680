/*
 * fuzz_clamd_reply.c — libFuzzer target for clamd_reply_parse() (lib/
 * clamd.c), the parser of what clamd answers the clamav stage's INSTREAM.
 *
 * Beyond "no crash, no read past the input": the name is NUL-terminated
 * within its buffer and printable ASCII only (it goes into a log line and,
 * for a virus, into our reply to the client), and FOUND/CLEAN come only
 * from answers that say so.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so ASan sees a read past the input */
	char *reply = malloc(size > 0 ? size : 1);
	char name[64];
	enum clamd_result r;

	memcpy(reply, data, size);
	memset(name, 'x', sizeof(name));
	r = clamd_reply_parse(reply, size, name, sizeof(name));
	CHECK(memchr(name, '\0', sizeof(name)) != NULL);
	for (const char *c = name; *c != '\0'; c++)
		CHECK(*c >= 0x20 && *c < 0x7f);
	if (r == CLAMD_CLEAN || r == CLAMD_FOUND) {
		const char *nul = memchr(reply, '\0', size);
		size_t n = nul != NULL ? (size_t)(nul - reply) : size;
		CHECK(memmem(reply, n, r == CLAMD_CLEAN ? "OK" : " FOUND",
			     r == CLAMD_CLEAN ? 2 : 6) != NULL);
	}
	if (r == CLAMD_CLEAN)
		CHECK(name[0] == '\0');
	free(reply);
	return 0;
}
