/*
 * fuzz_imap_command.c — libFuzzer target for imap/parse.c (and the
 * folder names of mailbox/folders.c).
 *
 * The input is one command as the session assembles it (lines joined by
 * CRLF, literals inline). It is parsed the way the session does: a tag,
 * a command name, then the remainder is tried with every argument parser
 * (sequence set, FETCH items, SEARCH keys, flag lists, the bare flags of
 * STORE, astrings, dates and date-times, a literal reference), each from
 * the same start. Beyond what ASan/UBSan catch it checks what the session
 * relies on: a parser that fails consumed nothing and returns nothing to
 * free; one that succeeds moved forward and stays inside the buffer;
 * literal references lie inside it; flag letters are system flags, each
 * once; the names of FETCH sections are printable; a folder name that
 * passes the check has no "/" and no ".." and maps to one directory
 * right under the root; a quoted string from imap_quote parses back to
 * its input. The whole input is also tried as a line for
 * imap_line_literal and as base64 + SASL PLAIN.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap.h"
#include "mailbox/mailbox.h"
#include "tests/fuzz/fuzz.h"

static void try_astring(const char *s, size_t l)
{
	char *q = imap_quote(s, l);

	if (q[0] == '"') {
		struct imap_parser p2;
		char *back;
		size_t bl;
		imap_parser_init(&p2, q, strlen(q));
		CHECK(imap_parse_astring(&p2, &back, &bl));
		CHECK(bl == l && memcmp(back, s, l) == 0);
		CHECK(imap_parse_at_end(&p2));
		free(back);
	}
	free(q);
	if (mailbox_folder_name_ok(s)) {
		CHECK(strchr(s, '/') == NULL && strstr(s, "..") == NULL);
		CHECK(s[0] != '.' && s[l - 1] != '.');
		char *d = mailbox_folder_dir("/root", s);
		CHECK(d != NULL && strncmp(d, "/root", 5) == 0);
		CHECK(d[5] == '\0' || (d[5] == '/' && d[6] == '.' && strchr(d + 6, '/') == NULL));
		free(d);
	}
	(void)imap_list_match(s, "a.b.c");
	(void)imap_list_match("a%.*", s);
}

static void try_all(const char *buf, size_t len, const char *at)
{
	struct imap_parser ps;
	const char *end = buf + len;

#define START() (imap_parser_init(&ps, buf, len), ps.p = at)
	{
		struct imap_seqset set;
		START();
		if (imap_parse_seqset(&ps, &set)) {
			CHECK(ps.p > at && ps.p <= end && set.n > 0);
			for (size_t i = 0; i < set.n; i++)
				(void)imap_seqset_contains(&set, set.r[i].lo ? set.r[i].lo : 1, 10);
			imap_seqset_clear(&set);
		} else {
			CHECK(ps.p == at && set.n == 0 && set.r == NULL);
		}
	}
	{
		struct imap_fetch f;
		START();
		if (imap_parse_fetch(&ps, &f)) {
			CHECK(ps.p > at && ps.p <= end);
			CHECK(f.n > 0 && f.n <= IMAP_FETCH_ITEMS_MAX);
			for (size_t i = 0; i < f.n; i++) {
				CHECK(f.items[i].name != NULL);
				for (const char *q = f.items[i].name; *q; q++)
					CHECK((unsigned char)*q >= 0x20 && (unsigned char)*q < 0x7f);
				CHECK(f.items[i].sec.n_part <= IMAP_SECTION_DEPTH_MAX);
				CHECK(f.items[i].sec.n_fields <= IMAP_SECTION_FIELDS_MAX);
			}
			imap_fetch_clear(&f);
		} else {
			CHECK(f.n == 0 && f.items == NULL);
		}
	}
	{
		struct imap_search *s;
		char *cs;
		START();
		if (imap_parse_search(&ps, &cs, &s)) {
			CHECK(ps.p == end); /* SEARCH takes the rest */
			(void)imap_search_needs_content(s);
			imap_search_free(&s);
			free(cs);
		} else {
			CHECK(s == NULL && cs == NULL);
		}
	}
	for (int bare = 0; bare < 2; bare++) {
		struct imap_flags fl;
		START();
		if (imap_parse_flags(&ps, bare, &fl)) {
			CHECK(ps.p > at && ps.p <= end);
			CHECK(strlen(fl.letters) <= 5);
			for (const char *q = fl.letters; *q; q++) {
				CHECK(imap_flag_name(*q) != NULL);
				CHECK(strchr(q + 1, *q) == NULL);
			}
			CHECK(fl.n_keywords <= IMAP_KEYWORDS_MAX);
			imap_flags_clear(&fl);
		} else {
			CHECK(ps.p == at && fl.n_keywords == 0);
		}
	}
	{
		char *s;
		size_t l;
		START();
		if (imap_parse_astring(&ps, &s, &l)) {
			CHECK(ps.p > at && ps.p <= end && l <= len);
			if (strlen(s) == l && l > 0)
				try_astring(s, l);
			free(s);
		} else {
			CHECK(ps.p == at);
		}
	}
	{
		const char *d;
		size_t l;
		START();
		if (imap_parse_literal_ref(&ps, &d, &l))
			CHECK(d >= buf && d + l <= end && ps.p == d + l);
	}
	{
		long day;
		time_t t;
		char out[64];
		START();
		if (imap_parse_date(&ps, &day))
			CHECK(ps.p > at && ps.p <= end);
		START();
		if (imap_parse_datetime(&ps, &t)) {
			CHECK(ps.p > at && ps.p <= end);
			imap_format_datetime(t, out, sizeof(out));
		}
	}
	{
		uint64_t n;
		START();
		if (imap_parse_number(&ps, UINT32_MAX, &n))
			CHECK(n <= UINT32_MAX && ps.p > at);
	}
#undef START
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct imap_parser ps;
	char *tag = NULL, *name = NULL;

	{
		uint64_t n;
		bool ns;
		if (imap_line_literal(buf, size, &n, &ns))
			CHECK(n <= 9999999999ULL);
	}
	{
		char *out;
		size_t l;
		if (sasl_base64_decode(buf, size, &out, &l) == 0) {
			const char *a, *c, *p;
			CHECK(l <= size);
			if (sasl_plain_split(out, l, &a, &c, &p) == 0)
				CHECK(a == out && c > a && p > c && p <= out + l);
			free(out);
		}
	}
	try_all(buf, size, buf);
	imap_parser_init(&ps, buf, size);
	if (!imap_parse_tag(&ps, &tag))
		return 0;
	CHECK(strlen(tag) <= IMAP_TAG_MAX);
	if (imap_parse_sp(&ps) && imap_parse_atom(&ps, &name) && imap_parse_peek(&ps, ' '))
		try_all(buf, size, ps.p + 1);
	free(tag);
	free(name);
	return 0;
}
