/*
 * fuzz_smtp_reply.c — libFuzzer target for smtp_reply_feed() (lib/
 * smtp_parse.c), the parser of what an upstream SMTP/LMTP server answers
 * the relay.
 *
 * The input is split into lines at LF (a CR before it dropped, as
 * evbuffer_readln does) and fed one by one; a complete reply starts the
 * next one afresh, a malformed line ends the conversation. Beyond "no
 * crash, no out-of-bounds access" it checks what the relay relies on: a
 * reply's code is 200-599 and the same on every line, the line count stays
 * within SMTP_REPLY_LINES_MAX, the enhanced code (when there is one) has
 * the reply's class and fits, and the kept text is NUL-terminated within
 * its buffer and holds printable ASCII only (it goes into our reply to the
 * client: a bare CR there would be a reply line of the upstream's making).
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
	struct smtp_reply r;
	const char *p = (const char *)data, *end = p + size;

	smtp_reply_reset(&r);
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
		/* a copy of its own, so that reading past it is caught */
		char *line = malloc(len + 1);
		const char *text = NULL;

		if (line == NULL)
			return 0;
		memcpy(line, p, len);
		if (len > 0 && line[len - 1] == '\r')
			len--;
		line[len] = '\0';
		enum smtp_reply_status st = smtp_reply_feed(&r, line, len, &text);
		CHECK(text != NULL);
		if (st == SMTP_REPLY_BAD) {
			free(line);
			return 0;
		}
		CHECK(text[0] == '\0' || (text >= line + 4 && text <= line + len));
		CHECK(r.code >= 200 && r.code <= 599);
		CHECK(r.lines >= 1 && r.lines <= SMTP_REPLY_LINES_MAX);
		CHECK(memchr(r.text, '\0', sizeof(r.text)) != NULL);
		for (const char *t = r.text; *t != '\0'; t++)
			CHECK((unsigned char)*t >= 0x20 && (unsigned char)*t < 0x7f);
		CHECK(memchr(r.enhanced, '\0', sizeof(r.enhanced)) != NULL);
		if (r.enhanced[0] != '\0')
			CHECK((unsigned)(r.enhanced[0] - '0') == r.code / 100 && r.enhanced[1] == '.');
		free(line);
		if (st == SMTP_REPLY_DONE)
			smtp_reply_reset(&r);
		if (nl == NULL)
			break;
		p = nl + 1;
	}
	return 0;
}
