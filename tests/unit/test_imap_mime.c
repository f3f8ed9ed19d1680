/*
 * test_imap_mime.c — unit tests for imap/mime.c: known messages against
 * known ENVELOPE / BODYSTRUCTURE / BODY strings (each one what Dovecot
 * 2.3 answered for the same bytes), sections, SEARCH matching over
 * encoded words, base64, quoted-printable and charsets, the Date, and
 * hostile input within the limits.
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

#include <event2/buffer.h>

#include "imap/mime.h"

/* the answers of one kind for msg, as a malloc'd string */
enum what { ENVELOPE, BODYSTRUCTURE, BODY };

static char *take(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b);
	char *s = malloc(n + 1);

	assert_non_null(s);
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	return s;
}

static char *answer(const char *msg, enum what w)
{
	struct evbuffer *b = evbuffer_new();
	struct imap_msg *m = imap_msg_new(msg, strlen(msg));
	char *s;

	if (w == ENVELOPE)
		imap_msg_envelope(m, b);
	else
		imap_msg_bodystructure(m, w == BODYSTRUCTURE, b);
	s = take(b);
	imap_msg_free(&m);
	assert_null(m);
	evbuffer_free(b);
	return s;
}

static void check(const char *msg, enum what w, const char *want)
{
	char *got = answer(msg, w);

	assert_string_equal(got, want);
	free(got);
}

/* BODY[spec] of msg; NULL when the part is not there */
static char *section(const char *msg, size_t len, const unsigned *parts, size_t n_parts,
		     enum imap_section_kind kind, const char *const *fields)
{
	struct evbuffer *b = evbuffer_new();
	struct imap_msg *m = imap_msg_new(msg, len);
	struct imap_section sec;
	char *s = NULL;

	memset(&sec, 0, sizeof(sec));
	for (size_t i = 0; i < n_parts; i++)
		sec.part[i] = parts[i];
	sec.n_part = n_parts;
	sec.kind = kind;
	for (; fields != NULL && *fields != NULL; fields++)
		sec.fields[sec.n_fields++] = strdup(*fields);
	if (imap_msg_section(m, &sec, b))
		s = take(b);
	else
		assert_int_equal(evbuffer_get_length(b), 0);
	imap_section_clear(&sec);
	assert_int_equal(sec.n_fields, 0);
	imap_msg_free(&m);
	evbuffer_free(b);
	return s;
}

static void check_section(const char *msg, const unsigned *parts, size_t n, enum imap_section_kind k,
			  const char *const *fields, const char *want)
{
	char *got = section(msg, strlen(msg), parts, n, k, fields);

	if (want == NULL) {
		assert_null(got);
		return;
	}
	assert_non_null(got);
	assert_string_equal(got, want);
	free(got);
}

static const char MIXED[] =
	"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: report\r\n"
	"Date: Thu, 22 Aug 2002 10:00:00 +0200\r\nMessage-ID: <m1@example.org>\r\n"
	"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
	"pre\r\n--XX\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 w=F6rld\r\n"
	"--XX\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\n"
	"Content-Disposition: attachment; filename=\"r.pdf\"\r\n"
	"Content-Transfer-Encoding: base64\r\nContent-ID: <a1@x>\r\n"
	"Content-Description: the report\r\nContent-MD5: Q2hlY2s=\r\n"
	"Content-Language: en, de\r\nContent-Location: http://example.org/r.pdf\r\n\r\n"
	"JVBERi0xLjQK\r\n--XX--\r\nepi\r\n";

static void test_mixed_attachment(void **state)
{
	(void)state;
	check(MIXED, ENVELOPE,
	      "(\"Thu, 22 Aug 2002 10:00:00 +0200\" \"report\" ((\"Alice\" NIL \"alice\" \"example.org\")) "
	      "((\"Alice\" NIL \"alice\" \"example.org\")) ((\"Alice\" NIL \"alice\" \"example.org\")) "
	      "((NIL NIL \"bob\" \"example.net\")) NIL NIL NIL \"<m1@example.org>\")");
	check(MIXED, BODYSTRUCTURE,
	      "((\"text\" \"plain\" (\"charset\" \"iso-8859-1\") NIL NIL \"quoted-printable\" 14 0 NIL NIL "
	      "NIL NIL)(\"application\" \"pdf\" (\"name\" \"r.pdf\") \"<a1@x>\" \"the report\" \"base64\" 12 "
	      "\"Q2hlY2s=\" (\"attachment\" (\"filename\" \"r.pdf\")) (\"en\" \"de\") "
	      "\"http://example.org/r.pdf\") \"mixed\" (\"boundary\" \"XX\") NIL NIL NIL)");
	check(MIXED, BODY,
	      "((\"text\" \"plain\" (\"charset\" \"iso-8859-1\") NIL NIL \"quoted-printable\" 14 0)"
	      "(\"application\" \"pdf\" (\"name\" \"r.pdf\") \"<a1@x>\" \"the report\" \"base64\" 12) "
	      "\"mixed\")");
}

static void test_alternative(void **state)
{
	static const char msg[] =
		"From: b@example.org\r\nSubject: alt\r\nMIME-Version: 1.0\r\n"
		"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n"
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
		"SGVsbG8gd8O2cmxkCg==\r\n--a\r\nContent-Type: text/html\r\n\r\n<p>Hi</p>\r\n--a--\r\n";

	(void)state;
	check(msg, ENVELOPE,
	      "(NIL \"alt\" ((NIL NIL \"b\" \"example.org\")) ((NIL NIL \"b\" \"example.org\")) "
	      "((NIL NIL \"b\" \"example.org\")) NIL NIL NIL NIL NIL)");
	check(msg, BODYSTRUCTURE,
	      "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"base64\" 20 0 NIL NIL NIL NIL)"
	      "(\"text\" \"html\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 9 0 NIL NIL NIL NIL) "
	      "\"alternative\" (\"boundary\" \"a\") NIL NIL NIL)");
}

static const char RFC822[] =
	"From: e@example.org\r\nSubject: msg\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n"
	"\r\nFrom: f@example.org\r\nSubject: inside\r\n\r\nbody of the inside\r\nline 2\r\n";

static void test_message_rfc822(void **state)
{
	(void)state;
	check(RFC822, BODYSTRUCTURE,
	      "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 68 (NIL \"inside\" ((NIL NIL \"f\" "
	      "\"example.org\")) ((NIL NIL \"f\" \"example.org\")) ((NIL NIL \"f\" \"example.org\")) NIL NIL "
	      "NIL NIL NIL) (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 28 2 NIL NIL NIL "
	      "NIL) 5 NIL NIL NIL NIL)");
	check(RFC822, BODY,
	      "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 68 (NIL \"inside\" ((NIL NIL \"f\" "
	      "\"example.org\")) ((NIL NIL \"f\" \"example.org\")) ((NIL NIL \"f\" \"example.org\")) NIL NIL "
	      "NIL NIL NIL) (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 28 2) 5)");
}

static void test_groups(void **state)
{
	static const char msg[] =
		"From: \"Doe, John\" <john@example.org>\r\nSender: s@example.org\r\n"
		"To: undisclosed-recipients:;\r\nCc: friends: a@b.c, \"Bee\" <b@c.d>;, other@x.y\r\n"
		"Bcc: bcc@example.org (Real Name)\r\nSubject: groups\r\n\r\nbody\r\n";

	(void)state;
	check(msg, ENVELOPE,
	      "(NIL \"groups\" ((\"Doe, John\" NIL \"john\" \"example.org\")) ((NIL NIL \"s\" "
	      "\"example.org\")) ((\"Doe, John\" NIL \"john\" \"example.org\")) ((NIL NIL "
	      "\"undisclosed-recipients\" NIL)(NIL NIL NIL NIL)) ((NIL NIL \"friends\" NIL)(NIL NIL \"a\" "
	      "\"b.c\")(\"Bee\" NIL \"b\" \"c.d\")(NIL NIL NIL NIL)(NIL NIL \"other\" \"x.y\")) "
	      "((\"Real Name\" NIL \"bcc\" \"example.org\")) NIL NIL)");
}

static void test_missing_headers(void **state)
{
	(void)state;
	check("X-Only: this\r\n\r\nno envelope\r\n", ENVELOPE,
	      "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
	check("X-Only: this\r\n\r\nno envelope\r\n", BODYSTRUCTURE,
	      "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 13 1 NIL NIL NIL NIL)");
	/* an empty message is an empty text/plain */
	check("", BODYSTRUCTURE,
	      "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0 NIL NIL NIL NIL)");
	check("", ENVELOPE, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
}

static void test_escaping(void **state)
{
	static const char msg[] =
		"From: \"Quote \\\"this\\\" and \\\\ back\" <q@example.org>\r\n"
		"Subject: a \"quoted\" subject with \\ backslash\r\n"
		"Message-ID: <a\"b\"c\"d\"e@x>\r\nIn-Reply-To: <a\"b@x>\r\n\r\nbody\r\n";
	static const char lit[] =
		"Message-ID: <a\"b\"c\"d\"e\"f@x>\r\nSubject: Gr\xc3\xbc\xc3\x9f" "e\r\n"
		"Date: Thu, 22 Aug 2002 23:30:00 -0500\r\n\r\nb\r\n";

	(void)state;
	/* Subject and names are "for humans": a literal as soon as anything
	 * needs escaping; other strings get a literal past 4 escapes, 8-bit
	 * or CR/LF */
	check(msg, ENVELOPE,
	      "(NIL {35}\r\na \"quoted\" subject with \\ backslash (({23}\r\nQuote \"this\" and \\ back NIL "
	      "\"q\" \"example.org\")) (({23}\r\nQuote \"this\" and \\ back NIL \"q\" \"example.org\")) "
	      "(({23}\r\nQuote \"this\" and \\ back NIL \"q\" \"example.org\")) NIL NIL NIL \"<a\\\"b@x>\" "
	      "\"<a\\\"b\\\"c\\\"d\\\"e@x>\")");
	check(lit, ENVELOPE,
	      "(\"Thu, 22 Aug 2002 23:30:00 -0500\" {7}\r\nGr\xc3\xbc\xc3\x9f" "e NIL NIL NIL NIL NIL NIL "
	      "NIL {15}\r\n<a\"b\"c\"d\"e\"f@x>)");
}

static void test_folding(void **state)
{
	static const char msg[] =
		"Message-ID:   <a@b>  \r\n\t<c@d> \r\nDate:  x\r\nSubject: hello\r\n\tworld  \r\n"
		"From: a@b\r\nFrom: c@d\r\nTo: \r\n\r\nbody\r\n";

	(void)state;
	/* folds unfolded, repeated address fields joined, empty To is NIL */
	check(msg, ENVELOPE,
	      "(\"x\" {11}\r\nhello world ((NIL NIL \"a\" \"b\")(NIL NIL \"c\" \"d\")) ((NIL NIL \"a\" "
	      "\"b\")(NIL NIL \"c\" \"d\")) ((NIL NIL \"a\" \"b\")(NIL NIL \"c\" \"d\")) NIL NIL NIL NIL "
	      "\"<a@b>  \t<c@d> \")");
}

static void test_lf_sizes(void **state)
{
	static const char lf[] =
		"From: lf@example.org\nSubject: lf\nMIME-Version: 1.0\n"
		"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
		"line1\nline2\n\n--b\nContent-Type: text/plain\n\nsecond\n--b--\n";
	static const unsigned one[] = {1};
	char *crlf;
	size_t n = 0;

	(void)state;
	/* sizes count LF as CRLF: the same as the CRLF form of the message */
	check(lf, BODYSTRUCTURE,
	      "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 14 2 NIL NIL NIL NIL)"
	      "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 6 0 NIL NIL NIL NIL) "
	      "\"mixed\" (\"boundary\" \"b\") NIL NIL NIL)");
	crlf = malloc(2 * sizeof(lf));
	assert_non_null(crlf);
	for (const char *p = lf; *p != '\0'; p++) {
		if (*p == '\n')
			crlf[n++] = '\r';
		crlf[n++] = *p;
	}
	crlf[n] = '\0';
	{
		char *a = answer(lf, BODYSTRUCTURE), *b = answer(crlf, BODYSTRUCTURE);
		assert_string_equal(a, b);
		free(a);
		free(b);
	}
	/* and sections come out with CRLF */
	check_section(lf, one, 1, IMAP_SECTION_ALL, NULL, "line1\r\nline2\r\n");
	free(crlf);
}

static void test_sections(void **state)
{
	static const unsigned p1[] = {1}, p2[] = {2}, p3[] = {3}, p11[] = {1, 1}, p21[] = {2, 1};
	static const char *const from_subject[] = {"FROM", "subject", NULL};
	static const char *const not_fields[] = {"Content-Type", "MIME-VERSION", "date", "message-id",
						 NULL};

	(void)state;
	check_section(MIXED, p1, 1, IMAP_SECTION_ALL, NULL, "Caf=E9 w=F6rld");
	check_section(MIXED, p2, 1, IMAP_SECTION_ALL, NULL, "JVBERi0xLjQK");
	check_section(MIXED, p3, 1, IMAP_SECTION_ALL, NULL, NULL);
	check_section(MIXED, p1, 1, IMAP_SECTION_MIME, NULL,
		      "Content-Type: text/plain; charset=iso-8859-1\r\n"
		      "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
	/* a leaf's "1" is itself once, never twice */
	check_section(MIXED, p11, 2, IMAP_SECTION_ALL, NULL, "Caf=E9 w=F6rld");
	check_section(MIXED, NULL, 0, IMAP_SECTION_HEADER_FIELDS, from_subject,
		      "From: Alice <alice@example.org>\r\nSubject: report\r\n\r\n");
	check_section(MIXED, NULL, 0, IMAP_SECTION_HEADER_FIELDS_NOT, not_fields,
		      "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: report\r\n\r\n");
	check_section(MIXED, NULL, 0, IMAP_SECTION_MIME, NULL, NULL);
	/* HEADER/TEXT of a part that is not a message/rfc822 */
	check_section(MIXED, p1, 1, IMAP_SECTION_TEXT, NULL, NULL);
	/* into a message/rfc822 */
	check_section(RFC822, p1, 1, IMAP_SECTION_HEADER, NULL,
		      "From: f@example.org\r\nSubject: inside\r\n\r\n");
	check_section(RFC822, p1, 1, IMAP_SECTION_TEXT, NULL, "body of the inside\r\nline 2\r\n");
	check_section(RFC822, p11, 2, IMAP_SECTION_ALL, NULL, "body of the inside\r\nline 2\r\n");
	check_section(RFC822, p21, 2, IMAP_SECTION_ALL, NULL, NULL);
	/* a non-multipart message's part 1 is its body, 1.1 is not there */
	check_section("Subject: x\r\n\r\nhello\r\n", p1, 1, IMAP_SECTION_ALL, NULL, "hello\r\n");
	check_section("Subject: x\r\n\r\nhello\r\n", p11, 2, IMAP_SECTION_ALL, NULL, NULL);
	check_section("Subject: x\r\n\r\nhello\r\n", NULL, 0, IMAP_SECTION_TEXT, NULL, "hello\r\n");
	/* a last line cut by the end: its CRLF ends .FIELDS */
	check_section("From: a@b\r\nSubject: s", NULL, 0, IMAP_SECTION_HEADER_FIELDS, from_subject,
		      "From: a@b\r\nSubject: s\r\n");
	check_section("From: a@b\r\nSubject: s\r\n", NULL, 0, IMAP_SECTION_HEADER_FIELDS,
		      from_subject, "From: a@b\r\nSubject: s\r\n\r\n");
	check_section("From: a@b\r\nSubject: s\r\n", NULL, 0, IMAP_SECTION_HEADER_FIELDS_NOT,
		      from_subject, "");
	/* a blank line right before a boundary is the boundary's in MIME */
	check_section("Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n"
		      "Content-Type: text/plain\r\n\r\n--q\r\nX-A: 1\r\n\r\n",
		      p1, 1, IMAP_SECTION_MIME, NULL, "Content-Type: text/plain\r\n");
	check_section("Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n"
		      "Content-Type: text/plain\r\n\r\n--q\r\nX-A: 1\r\n\r\n",
		      p2, 1, IMAP_SECTION_MIME, NULL, "X-A: 1\r\n\r\n");
}

static void test_nul(void **state)
{
	static const char msg[] = "Subject: a\0b\r\n\r\nbo\0dy\r\n";
	static const unsigned p1[] = {1};
	char *s;

	(void)state;
	/* NUL is 0x80 in sections, U+FFFD in ENVELOPE strings (Dovecot) */
	s = section(msg, sizeof(msg) - 1, p1, 1, IMAP_SECTION_ALL, NULL);
	assert_non_null(s);
	assert_memory_equal(s, "bo\x80" "dy\r\n", 7);
	free(s);
	{
		struct evbuffer *b = evbuffer_new();
		struct imap_msg *m = imap_msg_new(msg, sizeof(msg) - 1);
		imap_msg_envelope(m, b);
		s = take(b);
		assert_string_equal(s, "(NIL {5}\r\na\xef\xbf\xbd" "b NIL NIL NIL NIL NIL NIL NIL NIL)");
		free(s);
		imap_msg_free(&m);
		evbuffer_free(b);
	}
}

static bool search(const char *msg, const char *key, const char *field, const char *needle)
{
	struct imap_msg *m = imap_msg_new(msg, strlen(msg));
	bool hit;

	if (strcmp(key, "BODY") == 0)
		hit = imap_msg_body_contains(m, needle);
	else if (strcmp(key, "TEXT") == 0)
		hit = imap_msg_text_contains(m, needle);
	else
		hit = imap_msg_header_contains(m, field, needle);
	imap_msg_free(&m);
	return hit;
}

static void test_search(void **state)
{
	static const char enc[] =
		"From: =?utf-8?q?Caf=C3=A9_Owner?= <cafe@example.fr>\r\n"
		"Subject: =?utf-8?b?SsO2cmcgc2F5cyBoZWxsbw==?= =?iso-8859-1?q?_and_caf=E9?=\r\n"
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n"
		"Content-Type: text/plain; charset=\"iso-8859-1\"\r\n"
		"Content-Transfer-Encoding: quoted-printable\r\n\r\nb=F6rd w=F6rld =\r\nsoft break\r\n"
		"--z\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
		"SGVsbG8gd8O2cmxkLCBjbGljayBoZXJlCg==\r\n--z\r\nContent-Type: text/plain; charset=koi8-r\r\n"
		"\r\n\xf0\xd2\xc9\xd7\xc5\xd4\r\n--z\r\nContent-Type: application/octet-stream\r\n\r\n"
		"secretbinaryword\r\n--z--\r\n";

	(void)state;
	/* RFC 2047 in headers, case-insensitive, across charsets */
	assert_true(search(enc, "HEADER", "Subject", "J\xc3\x96RG SAYS"));
	assert_true(search(enc, "HEADER", "subject", "and caf\xc3\xa9"));
	assert_true(search(enc, "HEADER", "From", "caf\xc3\xa9 owner"));
	assert_true(search(enc, "HEADER", "From", "cafe@example.fr"));
	assert_false(search(enc, "HEADER", "Subject", "=?utf-8?"));
	assert_true(search(enc, "HEADER", "Subject", ""));
	assert_false(search(enc, "HEADER", "X-Missing", ""));
	/* quoted-printable (with a soft break), base64, koi8-r */
	assert_true(search(enc, "BODY", NULL, "B\xc3\x96RD"));
	assert_true(search(enc, "BODY", NULL, "w\xc3\xb6rld soft break"));
	assert_true(search(enc, "BODY", NULL, "click here"));
	assert_true(search(enc, "BODY", NULL, "\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82"));
	assert_false(search(enc, "BODY", NULL, "SGVsbG8"));
	/* not a text part; not the top-level header */
	assert_false(search(enc, "BODY", NULL, "secretbinaryword"));
	assert_false(search(enc, "BODY", NULL, "Owner"));
	/* TEXT: the headers (names too) and the bodies */
	assert_true(search(enc, "TEXT", NULL, "owner"));
	assert_true(search(enc, "TEXT", NULL, "content-transfer-encoding"));
	assert_true(search(enc, "TEXT", NULL, "click"));
	assert_false(search(enc, "TEXT", NULL, "nowhere-to-be-found"));
}

static void test_sent_date(void **state)
{
	struct imap_msg *m;
	time_t t;
	int tz;
	static const char d1[] = "Date: Thu, 22 Aug 2002 23:30:00 -0500\r\n\r\n";
	static const char d2[] = "Date: 1 Jan 70 00:00 EDT\r\n\r\n";
	static const char d3[] = "Date: Sat Sep 21 08:18:08 2002\r\n\r\n";

	(void)state;
	m = imap_msg_new(d1, strlen(d1));
	assert_true(imap_msg_sent_date(m, &t, &tz));
	assert_int_equal(t, 1030077000);
	assert_int_equal(tz, -5 * 3600);
	imap_msg_free(&m);
	m = imap_msg_new(d2, strlen(d2));
	assert_true(imap_msg_sent_date(m, &t, &tz));
	assert_int_equal(t, 4 * 3600);
	assert_int_equal(tz, -4 * 3600);
	imap_msg_free(&m);
	/* asctime's format is no RFC 822 date (Dovecot agrees) */
	m = imap_msg_new(d3, strlen(d3));
	assert_false(imap_msg_sent_date(m, &t, &tz));
	imap_msg_free(&m);
	m = imap_msg_new("Subject: x\r\n\r\n", 14);
	assert_false(imap_msg_sent_date(m, &t, &tz));
	imap_msg_free(&m);
}

/* header-only questions need only the header: data may end after it */
static void test_header_only(void **state)
{
	static const char hdr[] = "From: a@b.c\r\nSubject: s\r\n\r\n";
	struct evbuffer *b = evbuffer_new();
	struct imap_msg *m = imap_msg_new(hdr, strlen(hdr));
	char *s;

	(void)state;
	imap_msg_envelope(m, b);
	s = take(b);
	assert_string_equal(s, "(NIL \"s\" ((NIL NIL \"a\" \"b.c\")) ((NIL NIL \"a\" \"b.c\")) "
			       "((NIL NIL \"a\" \"b.c\")) NIL NIL NIL NIL NIL)");
	free(s);
	assert_true(imap_msg_header_contains(m, "subject", "S"));
	imap_msg_free(&m);
	evbuffer_free(b);
}

/* hostile input: deep nesting, many parts, huge headers stay bounded */
static void test_limits(void **state)
{
	struct evbuffer *b = evbuffer_new();
	struct imap_msg *m;
	size_t cap = 4 * 1024 * 1024, n = 0;
	char *msg = malloc(cap);
	char *s;

	(void)state;
	assert_non_null(msg);
	n += (size_t)snprintf(msg + n, cap - n, "MIME-Version: 1.0\r\n");
	for (int i = 0; i < 500; i++)
		n += (size_t)snprintf(msg + n, cap - n,
				      "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i);
	n += (size_t)snprintf(msg + n, cap - n, "\r\ndeep\r\n");
	m = imap_msg_new(msg, n);
	imap_msg_bodystructure(m, true, b);
	s = take(b);
	/* nesting stops at the limit: far fewer than 500 levels */
	{
		size_t depth = 0;
		for (const char *p = s; *p == '('; p++)
			depth++;
		assert_true(depth > 10 && depth <= 101);
	}
	free(s);
	/* the innermost text is below a part past the limit, shown as
	 * application/octet-stream and not searched (Dovecot agrees) */
	assert_false(imap_msg_text_contains(m, "deep"));
	imap_msg_free(&m);

	/* 50,000 parts: at most the limit is built */
	n = (size_t)snprintf(msg, cap, "Content-Type: multipart/mixed; boundary=x\r\n\r\n");
	for (int i = 0; i < 50000 && n + 16 < cap; i++)
		n += (size_t)snprintf(msg + n, cap - n, "--x\r\n\r\nz\r\n");
	m = imap_msg_new(msg, n);
	imap_msg_bodystructure(m, false, b);
	s = take(b);
	assert_true(strlen(s) < 10001 * 70);
	free(s);
	imap_msg_free(&m);

	/* one megabyte-long header line of garbage addresses */
	n = (size_t)snprintf(msg, cap, "To: ");
	while (n + 8 < cap / 2)
		n += (size_t)snprintf(msg + n, cap - n, "a@, <(\",");
	n += (size_t)snprintf(msg + n, cap - n, "\r\n\r\n");
	m = imap_msg_new(msg, n);
	imap_msg_envelope(m, b);
	assert_true(evbuffer_get_length(b) > 0);
	evbuffer_drain(b, evbuffer_get_length(b));
	imap_msg_free(&m);
	free(msg);
	evbuffer_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mixed_attachment),
		cmocka_unit_test(test_alternative),
		cmocka_unit_test(test_message_rfc822),
		cmocka_unit_test(test_groups),
		cmocka_unit_test(test_missing_headers),
		cmocka_unit_test(test_escaping),
		cmocka_unit_test(test_folding),
		cmocka_unit_test(test_lf_sizes),
		cmocka_unit_test(test_sections),
		cmocka_unit_test(test_nul),
		cmocka_unit_test(test_search),
		cmocka_unit_test(test_sent_date),
		cmocka_unit_test(test_header_only),
		cmocka_unit_test(test_limits),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
