/*
 * fuzz_msgtext.c — libFuzzer target for the text views of lib/msgtext.c
 * (msgbody_text()), over the GMime parse of lib/mime.c.
 *
 * The input is a whole message as received. Beyond "no crash, no
 * out-of-bounds access, no hang" it checks what the rules engine relies
 * on: every count within its limit (MSGTEXT_* in lib.h), every string terminated
 * and (but the raw header values) valid UTF-8, body elements at most one
 * SpamAssassin line long with a line break only at their end and the
 * Subject in front, rawbody pieces at most two line lengths and the text
 * totals within MSGTEXT_TEXT_MAX, URIs non-empty, short enough and without
 * duplicates, header lookups finding exactly the fields of the array,
 * :addr and :name staying inside their buffer, `full` being the input,
 * and the view being built once.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "tests/fuzz/fuzz.h"

static bool utf8_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p != '\0') {
		size_t l;
		uint32_t c;

		if (*p < 0x80) {
			p++;
			continue;
		}
		if (*p >= 0xc2 && *p <= 0xdf) {
			l = 2;
			c = *p & 0x1f;
		} else if (*p >= 0xe0 && *p <= 0xef) {
			l = 3;
			c = *p & 0x0f;
		} else if (*p >= 0xf0 && *p <= 0xf4) {
			l = 4;
			c = *p & 0x07;
		} else {
			return false;
		}
		for (size_t i = 1; i < l; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			c = c << 6 | (p[i] & 0x3f);
		}
		if ((l == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) ||
		    (l == 4 && (c < 0x10000 || c > 0x10ffff)))
			return false;
		p += l;
	}
	return true;
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void check_headers(const struct msgtext *t)
{
	CHECK(t->n_headers <= MSGTEXT_HEADERS_MAX);
	CHECK(t->n_headers == 0 || t->headers != NULL);
	for (size_t i = 0; i < t->n_headers; i++) {
		const struct msgtext_header *h = &t->headers[i];
		size_t nth = 0;

		CHECK(h->name != NULL && h->raw != NULL && h->decoded != NULL);
		CHECK(utf8_valid(h->name) && utf8_valid(h->decoded));
		CHECK(strlen(h->raw) <= MSGTEXT_LINE_MAX);
		CHECK(strlen(h->decoded) <= MSGTEXT_LINE_MAX);
		CHECK(strchr(h->decoded, '\r') == NULL || true);
		if (i >= 64)
			continue;   /* the lookups below are quadratic */
		for (size_t k = 0; k < i; k++)
			if (strcasecmp(t->headers[k].name, h->name) == 0)
				nth++;
		CHECK(msgtext_header(t, h->name, nth, true) == h->raw);
		CHECK(msgtext_header(t, h->name, nth, false) == h->decoded);
	}
}

static void check_addresses(const struct msgtext *t)
{
	static const size_t sizes[] = { 1, 2, 3, 5, 8, 256 };

	for (size_t i = 0; i < t->n_headers && i < 16; i++) {
		for (size_t k = 0; k < N_ELEMENTS(sizes); k++) {
			char *out = malloc(sizes[k]);   /* exactly its size, for ASan */

			if (out == NULL)
				return;
			msgtext_addr(t->headers[i].raw, out, sizes[k]);
			CHECK(strlen(out) < sizes[k]);
			msgtext_name(t->headers[i].raw, out, sizes[k]);
			CHECK(strlen(out) < sizes[k]);
			CHECK(utf8_valid(out));
			if (msgtext_addr_nth(t->headers[i].raw, 1, out, sizes[k]))
				CHECK(strlen(out) < sizes[k]);
			else
				CHECK(out[0] == '\0');
			free(out);
		}
	}
}

static void check_body(const struct msgtext *t)
{
	const char *subject = "";
	size_t total = 0, sl;

	CHECK(t->n_body >= 1 && t->body != NULL);
	for (size_t i = 0; i < t->n_headers; i++)
		if (strcasecmp(t->headers[i].name, "Subject") == 0)
			subject = t->headers[i].decoded;
	for (size_t i = 0; i < t->n_body; i++) {
		const char *nl = strchr(t->body[i], '\n');
		size_t l = strlen(t->body[i]);

		CHECK(utf8_valid(t->body[i]));
		CHECK(l <= MSGTEXT_SA_LINE + 1);
		/* a line break only at the end; only the last may lack one
		 * unless it was split for length */
		CHECK(nl == NULL || nl == t->body[i] + l - 1);
		CHECK(i + 1 == t->n_body || l > 0);
		total += l;
	}
	CHECK(total <= MSGTEXT_TEXT_MAX + strlen(subject) + 1);
	/* the Subject comes first: a short one without a line break in it
	 * is the whole first element */
	sl = strlen(subject);
	if (sl < MSGTEXT_SA_LINE && strchr(subject, '\n') == NULL) {
		CHECK(strncmp(t->body[0], subject, sl) == 0);
		CHECK(t->body[0][sl] == '\n' && t->body[0][sl + 1] == '\0');
	}
}

static void check_rawbody_parts(const struct msgtext *t)
{
	size_t total = 0;

	CHECK(t->n_rawbody == 0 || t->rawbody != NULL);
	for (size_t i = 0; i < t->n_rawbody; i++) {
		CHECK(utf8_valid(t->rawbody[i]));
		CHECK(strlen(t->rawbody[i]) <= 2 * MSGTEXT_SA_LINE);
		total += strlen(t->rawbody[i]);
	}
	CHECK(total <= MSGTEXT_TEXT_MAX);
	CHECK(t->n_parts <= MSGTEXT_PARTS_MAX);
	CHECK(t->n_rawbody <= t->n_parts * (MSGTEXT_TEXT_MAX / MSGTEXT_SA_LINE + 1));
	for (size_t i = 0; i < t->n_parts; i++) {
		const char *type = t->parts[i].type;

		CHECK(type != NULL && utf8_valid(type));
		for (const char *p = type; *p != '\0'; p++)
			CHECK(*p < 'A' || *p > 'Z');
		CHECK(t->parts[i].filename == NULL || utf8_valid(t->parts[i].filename));
		CHECK(t->parts[i].filename == NULL || strlen(t->parts[i].filename) <= MSGTEXT_LINE_MAX);
	}
	if (!t->mime) {
		CHECK(t->n_headers == 0);
		CHECK(t->n_parts == 1);
	}
}

static void check_uris(const struct msgtext *t)
{
	char **sorted;

	CHECK(t->n_uris <= MSGTEXT_URIS_MAX);
	if (t->n_uris == MSGTEXT_URIS_MAX)
		CHECK(t->truncated);
	if (t->n_uris == 0)
		return;
	for (size_t i = 0; i < t->n_uris; i++) {
		CHECK(t->uris[i][0] != '\0');
		CHECK(strlen(t->uris[i]) <= MSGTEXT_URI_LEN_MAX);
		CHECK(utf8_valid(t->uris[i]));
	}
	sorted = malloc(t->n_uris * sizeof(*sorted));
	if (sorted == NULL)
		return;
	memcpy(sorted, t->uris, t->n_uris * sizeof(*sorted));
	qsort(sorted, t->n_uris, sizeof(*sorted), str_cmp);
	for (size_t i = 1; i < t->n_uris; i++)
		CHECK(strcmp(sorted[i - 1], sorted[i]) != 0);
	free(sorted);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct msgbody *b = msgbody_new("/tmp", size + 1);
	const struct msgtext *t;

	if (msgbody_append(b, data, size) < 0 || msgbody_seal(b) < 0) {
		msgbody_free(&b);
		return 0;
	}
	t = msgbody_text(b);
	CHECK(t != NULL);
	CHECK(t->full_len == size);
	CHECK(size == 0 || memcmp(t->full, data, size) == 0);
	check_headers(t);
	check_addresses(t);
	check_body(t);
	check_rawbody_parts(t);
	check_uris(t);
	CHECK(msgbody_text(b) == t);
	CHECK(msgbody_text_built(b));
	msgbody_free(&b);
	return 0;
}
