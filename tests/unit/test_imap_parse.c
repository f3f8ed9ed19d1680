/*
 * test_imap_parse.c — the IMAP service's pure parsers (imap/parse.c) and
 * the folder names of mailbox/folders.c.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "imap/imap.h"
#include "mailbox/mailbox.h"

static void init(struct imap_parser *ps, const char *s)
{
	imap_parser_init(ps, s, strlen(s));
}

static void test_tag_atom_strings(void **state)
{
	struct imap_parser ps;
	char *s;
	size_t len;

	(void)state;
	init(&ps, "a001 LOGIN");
	assert_true(imap_parse_tag(&ps, &s));
	assert_string_equal(s, "a001");
	free(s);
	assert_true(imap_parse_sp(&ps));
	assert_true(imap_parse_atom(&ps, &s));
	assert_string_equal(s, "LOGIN");
	free(s);
	assert_true(imap_parse_end(&ps));

	init(&ps, "+x");
	assert_false(imap_parse_tag(&ps, &s));
	init(&ps, "(");
	assert_false(imap_parse_atom(&ps, &s));

	init(&ps, "\"a \\\"b\\\\ c\"");
	assert_true(imap_parse_astring(&ps, &s, &len));
	assert_string_equal(s, "a \"b\\ c");
	free(s);
	init(&ps, "\"bad \\x\"");
	assert_false(imap_parse_astring(&ps, &s, &len));
	init(&ps, "\"unterminated");
	assert_false(imap_parse_astring(&ps, &s, &len));

	init(&ps, "{5}\r\nhello rest");
	assert_true(imap_parse_astring(&ps, &s, &len));
	assert_int_equal(len, 5);
	assert_string_equal(s, "hello");
	free(s);
	init(&ps, "{5+}\r\nhel");
	assert_false(imap_parse_astring(&ps, &s, &len)); /* shorter than announced */
	init(&ps, "{3}\r\na\0b");
	imap_parser_init(&ps, "{3}\r\na\0b", 8);
	assert_true(imap_parse_astring(&ps, &s, &len));
	assert_int_equal(len, 3);
	assert_int_not_equal(strlen(s), len);
	free(s);
	init(&ps, "{99999999999}\r\n");
	assert_false(imap_parse_astring(&ps, &s, &len));
	/* ASTRING-CHAR takes "]" */
	init(&ps, "a]b");
	assert_true(imap_parse_astring(&ps, &s, &len));
	assert_string_equal(s, "a]b");
	free(s);
}

static void test_line_literal(void **state)
{
	uint64_t n;
	bool ns;

	(void)state;
	assert_true(imap_line_literal("a LOGIN {5}", 11, &n, &ns));
	assert_int_equal(n, 5);
	assert_false(ns);
	assert_true(imap_line_literal("a APPEND x {123+}", 17, &n, &ns));
	assert_int_equal(n, 123);
	assert_true(ns);
	assert_false(imap_line_literal("a NOOP", 6, &n, &ns));
	assert_false(imap_line_literal("a {}", 4, &n, &ns));
	assert_false(imap_line_literal("a {+}", 5, &n, &ns));
	assert_false(imap_line_literal("a 5}", 4, &n, &ns));
	assert_false(imap_line_literal("{12345678901}", 13, &n, &ns));
}

static void test_seqset(void **state)
{
	struct imap_parser ps;
	struct imap_seqset set;

	(void)state;
	init(&ps, "1,3:5,7:*,*");
	assert_true(imap_parse_seqset(&ps, &set));
	assert_int_equal(set.n, 4);
	assert_int_equal(set.r[1].lo, 3);
	assert_int_equal(set.r[1].hi, 5);
	assert_int_equal(set.r[2].hi, 0);
	assert_true(imap_seqset_contains(&set, 4, 10));
	assert_false(imap_seqset_contains(&set, 6, 10));
	assert_true(imap_seqset_contains(&set, 10, 10));
	assert_true(imap_seqset_contains(&set, 100, 100));
	imap_seqset_clear(&set);
	init(&ps, "5:2");
	assert_true(imap_parse_seqset(&ps, &set));
	assert_true(imap_seqset_contains(&set, 3, 10)); /* a:b is b:a */
	imap_seqset_clear(&set);
	static const char *const bads[] = { "0", "1,", ":3", "a", "1:0", "4294967296", "" };
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		init(&ps, bads[i]);
		assert_false(imap_parse_seqset(&ps, &set));
	}
}

static void test_flags(void **state)
{
	struct imap_parser ps;
	struct imap_flags f;

	(void)state;
	init(&ps, "(\\Seen \\flagged \\Deleted kw1 \\Recent)");
	assert_true(imap_parse_flags(&ps, false, &f));
	assert_string_equal(f.letters, "SFT");
	assert_true(f.recent);
	assert_int_equal(f.n_keywords, 1);
	assert_string_equal(f.keywords[0], "kw1");
	imap_flags_clear(&f);
	init(&ps, "()");
	assert_true(imap_parse_flags(&ps, false, &f));
	assert_string_equal(f.letters, "");
	imap_flags_clear(&f);
	init(&ps, "\\Answered \\Draft");
	assert_true(imap_parse_flags(&ps, true, &f));
	assert_string_equal(f.letters, "RD");
	imap_flags_clear(&f);
	init(&ps, "\\Answered");
	assert_false(imap_parse_flags(&ps, false, &f));
	init(&ps, "(\\Bogus)");
	assert_false(imap_parse_flags(&ps, false, &f));
	init(&ps, "(\\Seen");
	assert_false(imap_parse_flags(&ps, false, &f));
	assert_string_equal(imap_flag_name('T'), "\\Deleted");
	assert_null(imap_flag_name('x'));
}

static void test_dates(void **state)
{
	struct imap_parser ps;
	long day;
	time_t t;
	char buf[40];

	(void)state;
	init(&ps, "1-Feb-1994");
	assert_true(imap_parse_date(&ps, &day));
	assert_int_equal(day, 8797);
	init(&ps, "\"01-jan-1970\"");
	assert_true(imap_parse_date(&ps, &day));
	assert_int_equal(day, 0);
	init(&ps, "32-Jan-2000");
	assert_false(imap_parse_date(&ps, &day));
	init(&ps, "1-Foo-2000");
	assert_false(imap_parse_date(&ps, &day));
	init(&ps, "\"02-Jan-2020 10:11:12 +0100\"");
	assert_true(imap_parse_datetime(&ps, &t));
	assert_int_equal(t, 1577956272);
	init(&ps, "\" 2-Jan-2020 10:11:12 -0000\"");
	assert_true(imap_parse_datetime(&ps, &t));
	init(&ps, "\"02-Jan-2020 25:11:12 +0100\"");
	assert_false(imap_parse_datetime(&ps, &t));
	init(&ps, "\"02-Jan-2020 10:11:12\"");
	assert_false(imap_parse_datetime(&ps, &t));
	imap_format_datetime(1577956272, buf, sizeof(buf));
	assert_string_equal(buf, "02-Jan-2020 09:11:12 +0000");
}

static void test_fetch(void **state)
{
	struct imap_parser ps;
	struct imap_fetch f;

	(void)state;
	init(&ps, "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (From Subject)] BODY[1.2.MIME] BODY[]<10.20> BODY BODYSTRUCTURE RFC822.HEADER)");
	assert_true(imap_parse_fetch(&ps, &f));
	assert_true(imap_parse_end(&ps));
	assert_int_equal(f.n, 9);
	assert_int_equal(f.items[0].kind, IMAP_FETCH_UID);
	assert_int_equal(f.items[3].kind, IMAP_FETCH_SECTION);
	assert_true(f.items[3].peek);
	assert_int_equal(f.items[3].sec.kind, IMAP_SECTION_HEADER_FIELDS);
	assert_int_equal(f.items[3].sec.n_fields, 2);
	assert_string_equal(f.items[3].name, "BODY[HEADER.FIELDS (From Subject)]");
	assert_int_equal(f.items[4].sec.n_part, 2);
	assert_int_equal(f.items[4].sec.part[1], 2);
	assert_int_equal(f.items[4].sec.kind, IMAP_SECTION_MIME);
	assert_false(f.items[4].peek);
	assert_string_equal(f.items[4].name, "BODY[1.2.MIME]");
	assert_true(f.items[5].partial);
	assert_int_equal(f.items[5].partial_off, 10);
	assert_int_equal(f.items[5].partial_len, 20);
	assert_string_equal(f.items[5].name, "BODY[]<10>");
	assert_int_equal(f.items[6].kind, IMAP_FETCH_BODY);
	assert_int_equal(f.items[7].kind, IMAP_FETCH_BODYSTRUCTURE);
	assert_int_equal(f.items[8].kind, IMAP_FETCH_RFC822_HEADER);
	imap_fetch_clear(&f);
	init(&ps, "ALL");
	assert_true(imap_parse_fetch(&ps, &f));
	assert_int_equal(f.n, 4);
	imap_fetch_clear(&f);
	init(&ps, "body[3]");
	assert_true(imap_parse_fetch(&ps, &f));
	assert_int_equal(f.items[0].sec.part[0], 3);
	assert_int_equal(f.items[0].sec.kind, IMAP_SECTION_ALL);
	imap_fetch_clear(&f);
	static const char *const bads[] = { "BODY.PEEK", "BODY[MIME]", "BODY[1.X]", "BODY[]<1.0>", "BODY[]<1>",
					    "(FLAGS", "BOGUS", "BODY[HEADER.FIELDS ()]", "BODY[HEADER.FIELDS]",
					    "BODY[0]", "FLAGSX", "()" };
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		init(&ps, bads[i]);
		if (imap_parse_fetch(&ps, &f)) {
			bool end = imap_parse_end(&ps);
			imap_fetch_clear(&f);
			assert_false(end);
		}
	}
}

static void test_search(void **state)
{
	struct imap_parser ps;
	struct imap_search *s;
	char *cs;

	(void)state;
	init(&ps, "CHARSET UTF-8 OR SEEN NOT (FLAGGED UID 1:*) SUBJECT \"x y\" HEADER X-A b 2,4 LARGER 10 SINCE 1-Jan-2020");
	assert_true(imap_parse_search(&ps, &cs, &s));
	assert_string_equal(cs, "UTF-8");
	free(cs);
	assert_int_equal(s->kind, IMAP_SK_AND);
	struct imap_search *k = s->kids;
	assert_int_equal(k->kind, IMAP_SK_OR);
	assert_int_equal(k->kids->kind, IMAP_SK_FLAG);
	assert_int_equal(k->kids->flag, 'S');
	assert_int_equal(k->kids->next->kind, IMAP_SK_NOT);
	assert_int_equal(k->kids->next->kids->kind, IMAP_SK_AND);
	k = k->next;
	assert_int_equal(k->kind, IMAP_SK_HEADER);
	assert_string_equal(k->field, "SUBJECT");
	assert_string_equal(k->value, "x y");
	k = k->next;
	assert_string_equal(k->field, "X-A");
	k = k->next;
	assert_int_equal(k->kind, IMAP_SK_SEQSET);
	k = k->next;
	assert_int_equal(k->kind, IMAP_SK_LARGER);
	assert_int_equal(k->n, 10);
	k = k->next;
	assert_int_equal(k->kind, IMAP_SK_SINCE);
	assert_true(imap_search_needs_content(s));
	imap_search_free(&s);
	init(&ps, "UNSEEN SMALLER 5 KEYWORD $x UNKEYWORD y");
	assert_true(imap_parse_search(&ps, &cs, &s));
	assert_false(imap_search_needs_content(s));
	assert_int_equal(s->kids->next->kind, IMAP_SK_SMALLER);
	assert_int_equal(s->kids->next->next->kind, IMAP_SK_KEYWORD);
	assert_int_equal(s->kids->next->next->next->kind, IMAP_SK_UNKEYWORD);
	imap_search_free(&s);
	static const char *const bads[] = { "", "OR SEEN", "NOT", "(SEEN", "BOGUS", "LARGER x", "SINCE 1-Foo-2000",
					    "HEADER X", "SEEN  UNSEEN", "UID" };
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		init(&ps, bads[i]);
		assert_false(imap_parse_search(&ps, &cs, &s));
	}
	/* nesting and key counts are bounded */
	char deep[400];
	memset(deep, '(', 100);
	strcpy(deep + 100, "ALL");
	memset(deep + 103, ')', 100);
	deep[203] = '\0';
	init(&ps, deep);
	assert_false(imap_parse_search(&ps, &cs, &s));
	size_t n = IMAP_SEARCH_KEYS_MAX + 10;
	char *many = malloc(n * 4 + 1);
	for (size_t i = 0; i < n; i++)
		memcpy(many + i * 4, "ALL ", 4);
	many[n * 4 - 1] = '\0';
	init(&ps, many);
	assert_false(imap_parse_search(&ps, &cs, &s));
	free(many);
}

static void test_list_match_quote(void **state)
{
	char *q;

	(void)state;
	assert_true(imap_list_match("*", "a.b.c"));
	assert_true(imap_list_match("%", "abc"));
	assert_false(imap_list_match("%", "a.b"));
	assert_true(imap_list_match("a.%", "a.b"));
	assert_false(imap_list_match("a.%", "a.b.c"));
	assert_true(imap_list_match("a*c", "a.b.c"));
	assert_true(imap_list_match("inbox", "INBOX"));
	assert_false(imap_list_match("junk", "Junk"));
	q = imap_quote("a\"b\\", 4);
	assert_string_equal(q, "\"a\\\"b\\\\\"");
	free(q);
	q = imap_quote("a\nb", 3);
	assert_string_equal(q, "{3}\r\na\nb");
	free(q);
}

static void test_sasl_base64(void **state)
{
	char *out;
	size_t len;
	const char *a, *c, *p;

	(void)state;
	assert_int_equal(sasl_base64_decode("AGRlbW8AcHc=", 12, &out, &len), 0);
	assert_int_equal(len, 8);
	assert_int_equal(sasl_plain_split(out, len, &a, &c, &p), 0);
	assert_string_equal(a, "");
	assert_string_equal(c, "demo");
	assert_string_equal(p, "pw");
	free(out);
	assert_int_equal(sasl_base64_decode("abc", 3, &out, &len), -1);
	assert_int_equal(sasl_base64_decode("a=bc", 4, &out, &len), -1);
	assert_int_equal(sasl_base64_decode("!!!!", 4, &out, &len), -1);
	char nonul[] = "abc";
	assert_int_equal(sasl_plain_split(nonul, 3, &a, &c, &p), -1);
	char empty[] = { 'x', 0, 0, 'p' };
	assert_int_equal(sasl_plain_split(empty, 4, &a, &c, &p), -1);
}

static void test_folder_names(void **state)
{
	char *d;

	(void)state;
	static const char *const good[] = { "Junk", "Lists.Work", "a b", "&AOQ-", "x~y" };
	static const char *const bad[] = { "", ".", "..", "a..b", ".a", "a.", "a/b", "/abs", "a\\b", "a*",
					   "a%", "tab\t", "\x80x", "a.....", "x.." };
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_true(mailbox_folder_name_ok(good[i]));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_false(mailbox_folder_name_ok(bad[i]));
	d = mailbox_folder_dir("/r", "inbox");
	assert_string_equal(d, "/r");
	free(d);
	d = mailbox_folder_dir("/r", "Lists.Work");
	assert_string_equal(d, "/r/.Lists.Work");
	free(d);
	assert_null(mailbox_folder_dir("/r", "../x"));
	char long_name[MAILBOX_FOLDER_NAME_MAX + 2];
	memset(long_name, 'a', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	assert_false(mailbox_folder_name_ok(long_name));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tag_atom_strings),
		cmocka_unit_test(test_line_literal),
		cmocka_unit_test(test_seqset),
		cmocka_unit_test(test_flags),
		cmocka_unit_test(test_dates),
		cmocka_unit_test(test_fetch),
		cmocka_unit_test(test_search),
		cmocka_unit_test(test_list_match_quote),
		cmocka_unit_test(test_sasl_base64),
		cmocka_unit_test(test_folder_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
