/*
 * fuzz_imap_mime.c — libFuzzer target for imap/mime.c: the input as a
 * stored message through every function of imap/mime.h (ENVELOPE, BODY,
 * BODYSTRUCTURE, a set of BODY[section]s, the SEARCH matchers, the Date).
 *
 * Beyond "no crash, no read past the input, no leak": ENVELOPE, BODY and
 * BODYSTRUCTURE are well-formed IMAP (balanced lists of atoms, quoted
 * strings without CR/LF/8-bit, literals of the length they announce,
 * space-separated but for a multipart's parts);
 * ENVELOPE is a list of ten items; in every section each LF has its CR;
 * BODY[] is the message with LF made CRLF; the part-1 MIME
 * header and body of a message lie within BODY[]; ENVELOPE and the Date
 * need only the header section (the same answers over a copy cut after
 * it); an empty needle matches BODY and TEXT.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "imap/mime.h"
#include "tests/fuzz/fuzz.h"

/* the end of one IMAP value at s[i] (n octets), or 0 when malformed;
 * *items counts the values of a list at depth 1 */
static size_t value_end(const char *s, size_t n, size_t i, int depth, size_t *items)
{
	if (i >= n || depth > 400)
		return 0;
	if (s[i] == '(') {
		size_t count = 0;
		i++;
		for (;;) {
			if (i < n && s[i] == ')')
				break;
			if (count > 0) {
				/* a multipart's parts follow each other with no space */
				if (i < n && s[i] == '(' && s[i - 1] == ')')
					;
				else if (i >= n || s[i] != ' ')
					return 0;
				else
					i++;
			}
			i = value_end(s, n, i, depth + 1, NULL);
			if (i == 0)
				return 0;
			count++;
		}
		if (items != NULL)
			*items = count;
		return i + 1;
	}
	if (s[i] == '"') {
		for (i++; i < n; i++) {
			unsigned char c = (unsigned char)s[i];
			if (c == '\\') {
				if (i + 1 >= n || (s[i + 1] != '"' && s[i + 1] != '\\'))
					return 0;
				i++;
			} else if (c == '"') {
				return i + 1;
			} else if (c == '\r' || c == '\n' || c >= 0x80 || c == 0) {
				return 0;
			}
		}
		return 0;
	}
	if (s[i] == '{') {
		size_t len = 0, j = i + 1;
		while (j < n && s[j] >= '0' && s[j] <= '9' && j - i < 12)
			len = len * 10 + (size_t)(s[j++] - '0');
		if (j == i + 1 || j + 3 > n || s[j] != '}' || s[j + 1] != '\r' || s[j + 2] != '\n')
			return 0;
		j += 3;
		return len <= n - j ? j + len : 0;
	}
	{
		size_t j = i;
		while (j < n && s[j] != ' ' && s[j] != ')' && s[j] != '(' && s[j] != '"')
			j++;
		return j > i ? j : 0;
	}
}

static char *take(struct evbuffer *b, size_t *len)
{
	*len = evbuffer_get_length(b);
	char *s = malloc(*len + 1);
	evbuffer_remove(b, s, *len);
	s[*len] = '\0';
	return s;
}

static void check_imap(struct evbuffer *b, size_t want_items, char **keep, size_t *keep_len)
{
	size_t n, items = 0;
	char *s = take(b, &n);

	CHECK(n > 0 && s[0] == '(');
	CHECK(value_end(s, n, 0, 0, &items) == n);
	if (want_items > 0)
		CHECK(items == want_items);
	if (keep != NULL) {
		*keep = s;
		*keep_len = n;
	} else {
		free(s);
	}
}

static void check_crlf(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		/* (a bare CR stays what it is, as in Dovecot) */
		if (s[i] == '\n')
			CHECK(i > 0 && s[i - 1] == '\r');
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct {
		unsigned part[3];
		size_t n;
		enum imap_section_kind kind;
		const char *field;
	} specs[] = {
		{{0}, 0, IMAP_SECTION_ALL, NULL},
		{{0}, 0, IMAP_SECTION_HEADER, NULL},
		{{0}, 0, IMAP_SECTION_TEXT, NULL},
		{{0}, 0, IMAP_SECTION_HEADER_FIELDS, "Subject"},
		{{0}, 0, IMAP_SECTION_HEADER_FIELDS_NOT, "received"},
		{{1}, 1, IMAP_SECTION_ALL, NULL},
		{{1}, 1, IMAP_SECTION_MIME, NULL},
		{{2}, 1, IMAP_SECTION_ALL, NULL},
		{{1, 1}, 2, IMAP_SECTION_ALL, NULL},
		{{2, 1}, 2, IMAP_SECTION_MIME, NULL},
		{{1}, 1, IMAP_SECTION_HEADER, NULL},
		{{2}, 1, IMAP_SECTION_TEXT, NULL},
		{{1, 2, 1}, 3, IMAP_SECTION_HEADER_FIELDS, "From"},
	};
	/* an exact-size copy, so ASan sees a read past the input */
	char *m = malloc(size > 0 ? size : 1);
	struct evbuffer *b = evbuffer_new();
	struct imap_msg *msg;
	char *env = NULL, *all = NULL;
	size_t env_len = 0, all_len = 0, crlf_len = size, hdr_len = size;
	time_t t1 = 0, t2 = 0;
	int z1 = 0, z2 = 0;
	bool d1, d2;

	memcpy(m, data, size);
	for (size_t i = 0; i < size; i++)
		if (m[i] == '\n' && (i == 0 || m[i - 1] != '\r'))
			crlf_len++;
	msg = imap_msg_new(m, size);

	imap_msg_envelope(msg, b);
	check_imap(b, 10, &env, &env_len);
	imap_msg_bodystructure(msg, true, b);
	check_imap(b, 0, NULL, NULL);
	imap_msg_bodystructure(msg, false, b);
	check_imap(b, 0, NULL, NULL);

	for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
		struct imap_section sec;
		size_t n;
		char *s;

		memset(&sec, 0, sizeof(sec));
		memcpy(sec.part, specs[i].part, sizeof(specs[i].part));
		sec.n_part = specs[i].n;
		sec.kind = specs[i].kind;
		if (specs[i].field != NULL) {
			sec.fields[0] = strdup(specs[i].field);
			sec.n_fields = 1;
		}
		if (imap_msg_section(msg, &sec, b)) {
			s = take(b, &n);
			if (sec.kind != IMAP_SECTION_HEADER_FIELDS_NOT &&
			    sec.kind != IMAP_SECTION_HEADER_FIELDS)
				check_crlf(s, n);
			if (i == 0) {
				CHECK(n == crlf_len);
				all = s;
				all_len = n;
				continue;
			}
			if (sec.kind == IMAP_SECTION_ALL || sec.kind == IMAP_SECTION_MIME ||
			    sec.kind == IMAP_SECTION_HEADER || sec.kind == IMAP_SECTION_TEXT)
				CHECK(all != NULL && n <= all_len &&
				      (n == 0 || memmem(all, all_len, s, n) != NULL));
			free(s);
		} else {
			CHECK(evbuffer_get_length(b) == 0);
			CHECK(i != 0 && sec.n_part > 0);
		}
		imap_section_clear(&sec);
	}

	(void)imap_msg_header_contains(msg, "Subject", "a");
	(void)imap_msg_header_contains(msg, "from", "\xc3\xa9");
	(void)imap_msg_body_contains(msg, "the");
	(void)imap_msg_text_contains(msg, "\xc3\x96");
	CHECK(imap_msg_body_contains(msg, "") && imap_msg_text_contains(msg, ""));
	d1 = imap_msg_sent_date(msg, &t1, &z1);
	imap_msg_free(&msg);
	CHECK(msg == NULL);

	/* header-only answers over the header section alone */
	for (size_t i = 0; i < size; i++) {
		if (m[i] == '\n' && ((i + 1 < size && m[i + 1] == '\n') ||
				     (i + 2 < size && m[i + 1] == '\r' && m[i + 2] == '\n'))) {
			hdr_len = i + (m[i + 1] == '\n' ? 2 : 3);
			break;
		}
		if (i == 0 && (m[0] == '\n' || (size > 1 && m[0] == '\r' && m[1] == '\n'))) {
			hdr_len = m[0] == '\n' ? 1 : 2;
			break;
		}
	}
	{
		char *h = malloc(hdr_len > 0 ? hdr_len : 1);
		char *env2;
		size_t env2_len;

		memcpy(h, m, hdr_len);
		msg = imap_msg_new(h, hdr_len);
		imap_msg_envelope(msg, b);
		env2 = take(b, &env2_len);
		CHECK(env2_len == env_len && memcmp(env, env2, env_len) == 0);
		d2 = imap_msg_sent_date(msg, &t2, &z2);
		CHECK(d1 == d2 && (!d1 || (t1 == t2 && z1 == z2)));
		imap_msg_free(&msg);
		free(env2);
		free(h);
	}
	free(env);
	free(all);
	evbuffer_free(b);
	free(m);
	return 0;
}
