/*
 * msgtext.c — the text views SpamAssassin-style rules read (declared in lib.h),
 * built from the body's shared GMime tree.
 *
 * What it follows of SpamAssassin 4.0 (Mail::SpamAssassin::Message,
 * Message::Node, HTML, PerMsgStatus, RegistryBoundaries and Util, as Debian
 * ships them; checked against SpamAssassin itself on 1,360 messages of the
 * public SpamAssassin corpus: the same body but for the differences below):
 *
 *  - Header fields: raw is raw_header() (the text after the colon, folding
 *    kept), decoded is header(): a line break and the blanks after it one
 *    space, trimmed, RFC 2047 decoded but for the fields _decode_header()
 *    leaves alone; both without the "\n" SpamAssassin's get() appends.
 *    GMime files the Content-* fields of the top-level header with the top
 *    part, so the two lists are merged back into message order by offset.
 *  - body is get_rendered_body_text_array(): the leaves depth first
 *    (message/rfc822 parts are walked into, so their text is part of the
 *    body, their header is not; a multipart whose boundary never matches is
 *    one text/plain leaf), "\n" before every leaf but the first, text/plain
 *    and text/html rendered (text/html also when the file name ends in
 *    .htm, .html, .shtml), then a white-space run holding two line breaks
 *    or more becomes a paragraph break, any other run one space, NUL a line
 *    break; the Subject and "\n" go in front; the text is split after every
 *    "\n", and a line over 2048 octets after its last space before that
 *    (split_into_array_of_short_lines()).
 *  - rawbody is get_decoded_body_text_array(): the text and message
 *    leaves but text/calendar, decoded, each cut by
 *    split_into_array_of_short_paragraphs() (2-4 KiB, at "\n", ">" or " ").
 *    Quoted-printable is qp_decode()'s (blanks before a line end deleted,
 *    "=" runs read its way), and more than 20 blank lines in a row are 20
 *    as Message::new() leaves them.
 *  - HTML as HTML.pm renders it through HTML::Parser: the text between
 *    tags with white-space runs folded to one space, entities decoded
 *    (HTML::Parser's table: the Latin-1 ones also without ';' and as the
 *    start of a longer name, "&notit;" is "¬it;"), &nbsp; as a space, br
 *    and div as "\n", li, td, th, dt, dd, h1-h6 and embed as " ", p, hr,
 *    blockquote, pre, title, listing, plaintext and xmp as "\n\n" (start
 *    and end tags alike), a space next to those dropped as display_text()
 *    does; script and style content, comments, declarations, processing
 *    instructions and an unclosed tag at the end dropped; iframe, xmp and
 *    plaintext content as text as it is, textarea and title content as
 *    text; an attribute without a value has its name as value; curly
 *    double quotes read as '"'.
 *  - uris is get_uri_list(): _process_text_uri_list()'s scan of each body
 *    element (Thunderbird's delimiters; known schemes, www. and ftp.,
 *    addresses made mailto:, schemeless host names ending in a top-level
 *    domain; an unbalanced ')' and trailing punctuation dropped), then the
 *    URIs HTML.pm takes from tags (a, area, link href — an anchor's also as
 *    written; img, frame, iframe, embed, script, bgsound src; body, table,
 *    tr, td background; form action; base href, which later relative URIs
 *    are resolved against; meta refresh), each with what
 *    uri_list_canonicalize() adds: %-decoding, "\" as "/", a missing
 *    scheme, &#NN;, user@ and trailing junk off the host, default ports
 *    off, numeric hosts as dotted quads, the target of a redirector, and
 *    for mailto: the address without ?subject= and the like. A URI from
 *    the text is kept only when one of those has a valid domain, as
 *    add_uri_detail_list() does; the top-level domains are the public
 *    suffix list's (SpamAssassin's come with its rules updates).
 *  - :addr and :name are the addresses and display names of
 *    parse_header_addresses(), found with GMime's address parser.
 *
 * Where it differs, on purpose or for want of data:
 *  - Every view but the raw header values and `full` is UTF-8 (SpamAssassin
 *    converts only with normalize_charset): a declared charset through
 *    iconv, an octet it rejects as U+FFFD; no charset, US-ASCII or UTF-8 as
 *    UTF-8 with stray octets read as Windows-1252; C1 controls (from
 *    ISO-8859-1, or &#128;-&#159;) as Windows-1252, as browsers read them.
 *    White space is Unicode's (NBSP folds). NUL in rawbody is U+FFFD (in
 *    body it is a line break, as in SpamAssassin), so that no C string
 *    ends early. Long lines are split at a character boundary; CRLF is LF
 *    whatever the message's first line ends with.
 *  - Left out: the "http://foo is www.foo.com" guess, IDN conversion of
 *    URIs, redirector_patterns, the empty URI SpamAssassin lists for
 *    <a href="">, and HTML invisibility (colours, sizes), which in the body
 *    only ever decides a space more or less next to a block tag.
 *  - RFC 2047 base64 words are rewritten as the equivalent Q words before
 *    GMime decodes them: GMime 3.2 drops the text after a padded B word
 *    that another B word in the same charset follows ("=?utf-8?b?dmk=?=
 *    =?utf-8?b?YWdyYQ==?=" gives "vi"), which would hide words from rules.
 *    File names are parsed afresh from the raw Content-* fields for the
 *    same reason (GMime decoded those of the tree the buggy way).
 *  - A body GMime does not take for a message is one text/plain part of
 *    all its bytes without a header (SpamAssassin would drop up to three
 *    leading lines as broken header fields). The limits are lib.h's MSGTEXT_*;
 *    SpamAssassin cuts every part at body_part_scan_size (50,000) instead.
 *
 * Thread safety: the build reads the shared GMime tree only through calls
 * that do not change it. A part's content in particular is read through a
 * fresh substream of its own, never through the part's stream, whose
 * position any reader would move under the others' feet.
 */
#include "config.h"

#include <errno.h>
#include <iconv.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gmime/gmime.h>

#include "lib/lib.h"

/* How deep a redirector inside a URI is followed (each level is shorter,
 * so this only bounds the work). */
#define URI_REDIRECT_DEPTH 4
/* Raw URIs taken from the body text at most (they cost a canonicalisation
 * each, and those without a domain are never kept, so the count of kept
 * URIs alone would not bound the work). */
#define URI_TEXT_CANDIDATES_MAX (10 * MSGTEXT_URIS_MAX)
/* Attributes of one HTML tag that are looked at; more are parsed over. */
#define HTML_ATTRS_MAX 32

/* ----------------------------------------------------------- buffers */

struct tbuf {
	char *p;
	size_t len, cap;
};

/* Room for `more` octets and a NUL after them. */
static void tbuf_reserve(struct tbuf *t, size_t more)
{
	size_t cap;

	if (t->cap - t->len > more)
		return;
	cap = t->cap > 0 ? t->cap : 256;
	while (cap - t->len <= more)
		cap *= 2;
	t->p = xrealloc(t->p, cap);
	t->cap = cap;
}

static void tbuf_add(struct tbuf *t, const void *s, size_t n)
{
	tbuf_reserve(t, n);
	if (n > 0)
		memcpy(t->p + t->len, s, n);
	t->len += n;
}

static void tbuf_addc(struct tbuf *t, char c)
{
	if (t->cap - t->len > 1) { /* room for it and the NUL: the common case */
		t->p[t->len++] = c;
		return;
	}
	tbuf_add(t, &c, 1);
}

static void tbuf_adds(struct tbuf *t, const char *s)
{
	tbuf_add(t, s, strlen(s));
}

/* The contents as a malloc'd string; t is empty again. */
static char *tbuf_take(struct tbuf *t)
{
	char *s;

	tbuf_reserve(t, 0);
	t->p[t->len] = '\0';
	s = t->p;
	*t = (struct tbuf){ 0 };
	return s;
}

static void tbuf_free(struct tbuf *t)
{
	free(t->p);
	*t = (struct tbuf){ 0 };
}

struct strvec {
	char **v;
	size_t n, cap;
};

static void strvec_push(struct strvec *v, char *s)
{
	if (v->n == v->cap) {
		v->cap = v->cap > 0 ? v->cap * 2 : 16;
		v->v = xrealloc(v->v, v->cap * sizeof(*v->v));
	}
	v->v[v->n++] = s;
}

static void strvec_free(struct strvec *v)
{
	for (size_t i = 0; i < v->n; i++)
		free(v->v[i]);
	free(v->v);
	*v = (struct strvec){ 0 };
}

/* ---------------------------------------------------------------- text */

static bool is_ascii_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool is_alnum(unsigned char c)
{
	return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

static bool is_alpha(unsigned char c)
{
	return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

static bool is_hex(unsigned char c)
{
	return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

static unsigned hex_value(unsigned char c)
{
	return c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

static bool starts_nocase(const char *s, size_t n, const char *prefix)
{
	size_t l = strlen(prefix);

	return n >= l && strncasecmp(s, prefix, l) == 0;
}

static bool contains_nocase(const char *s, const char *word)
{
	for (size_t l = strlen(word); *s != '\0'; s++)
		if (strncasecmp(s, word, l) == 0)
			return true;
	return false;
}

/* The length of the well-formed UTF-8 character at p (n octets there),
 * its code point in *cp; 0 when the octets there are not one. */
static size_t utf8_char(const unsigned char *p, size_t n, uint32_t *cp)
{
	uint32_t c;
	size_t len;

	if (n == 0)
		return 0;
	if (p[0] < 0x80) {
		*cp = p[0];
		return 1;
	}
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		len = 2;
		c = p[0] & 0x1f;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		len = 3;
		c = p[0] & 0x0f;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		len = 4;
		c = p[0] & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (p[i] & 0x3f);
	}
	/* overlong forms, surrogates and beyond U+10FFFF are not characters */
	if ((len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) ||
	    (len == 4 && (c < 0x10000 || c > 0x10ffff)))
		return 0;
	*cp = c;
	return len;
}

static void utf8_put(struct tbuf *t, uint32_t c)
{
	char b[4];
	size_t n;

	if (c < 0x80) {
		b[0] = (char)c;
		n = 1;
	} else if (c < 0x800) {
		b[0] = (char)(0xc0 | c >> 6);
		b[1] = (char)(0x80 | (c & 0x3f));
		n = 2;
	} else if (c < 0x10000) {
		b[0] = (char)(0xe0 | c >> 12);
		b[1] = (char)(0x80 | ((c >> 6) & 0x3f));
		b[2] = (char)(0x80 | (c & 0x3f));
		n = 3;
	} else {
		b[0] = (char)(0xf0 | c >> 18);
		b[1] = (char)(0x80 | ((c >> 12) & 0x3f));
		b[2] = (char)(0x80 | ((c >> 6) & 0x3f));
		b[3] = (char)(0x80 | (c & 0x3f));
		n = 4;
	}
	tbuf_add(t, b, n);
}

/* Windows-1252's characters for 0x80-0x9F (five unassigned ones as
 * themselves, as the WHATWG encoding standard has it). */
static const uint16_t cp1252_c1[32] = {
	0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021,
	0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008d, 0x017d, 0x008f,
	0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
	0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178,
};

static void cp1252_put(struct tbuf *t, unsigned char c)
{
	utf8_put(t, c >= 0x80 && c <= 0x9f ? cp1252_c1[c - 0x80] : c);
}

/* Append s as UTF-8 text: well-formed characters as they are, any other
 * octet read as Windows-1252 (what undeclared 8-bit text in mail mostly
 * is), and the C1 controls as Windows-1252 too — what text labelled
 * ISO-8859-1 means in mail, as in browsers ("\x92" is a quote). */
static void utf8_add_lenient(struct tbuf *t, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;

	while (i < n) {
		size_t run = i;
		uint32_t c;
		size_t l;

		while (run < n && p[run] < 0x80)
			run++;
		tbuf_add(t, p + i, run - i);
		i = run;
		if (i >= n)
			break;
		l = utf8_char(p + i, n - i, &c);
		if (l == 0) {
			cp1252_put(t, p[i]);
			i++;
		} else if (c >= 0x80 && c <= 0x9f) {
			cp1252_put(t, (unsigned char)c);
			i += l;
		} else {
			tbuf_add(t, p + i, l);
			i += l;
		}
	}
}

static char *utf8_dup_lenient(const char *s)
{
	struct tbuf t = { 0 };

	utf8_add_lenient(&t, s, strlen(s));
	return tbuf_take(&t);
}

/* The longest prefix of the UTF-8 text s (len octets) of at most max
 * octets that ends at a character boundary. */
static size_t utf8_floor(const char *s, size_t len, size_t max)
{
	if (len <= max)
		return len;
	while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
		max--;
	return max;
}

static size_t utf8_step(const char *s, size_t n)
{
	uint32_t c;
	size_t l = utf8_char((const unsigned char *)s, n, &c);

	return l > 0 ? l : 1;
}

/* Octets of the white-space character at p — Perl's \s on Unicode text,
 * which is what SpamAssassin folds — or 0. */
static size_t space_len(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	uint32_t c;
	size_t l;

	if (n == 0)
		return 0;
	if (p[0] < 0x80)
		return is_ascii_space(p[0]) ? 1 : 0;
	l = utf8_char(p, n, &c);
	if (l == 0)
		return 0;
	if (c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
	    c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000)
		return l;
	return 0;
}

/* Drop the CR of every CRLF from s[from..]. */
static void crlf_to_lf(struct tbuf *t, size_t from)
{
	size_t w = from;

	for (size_t r = from; r < t->len; r++) {
		if (t->p[r] == '\r' && r + 1 < t->len && t->p[r + 1] == '\n')
			continue;
		t->p[w++] = t->p[r];
	}
	t->len = w;
}

/* More than 20 blank (white-space only) lines in a row are 20 — the first
 * and the last 19: what SpamAssassin's Message::new() does to the lines of
 * a message before it takes it apart. */
#define BLANK_LINES_MAX 20

static size_t line_len(const struct tbuf *t, size_t from)
{
	const char *nl = memchr(t->p + from, '\n', t->len - from);

	return nl != NULL ? (size_t)(nl - (t->p + from)) + 1 : t->len - from;
}

static bool line_blank(const struct tbuf *t, size_t from, size_t len)
{
	for (size_t k = 0; k < len; k++)
		if (!is_ascii_space((unsigned char)t->p[from + k]))
			return false;
	return true;
}

/* Copy the run of `run` blank lines [from, to) to w, cut as above. */
static size_t blank_run_copy(struct tbuf *t, size_t w, size_t from, size_t to, size_t run)
{
	size_t first, tail = to;

	if (run <= BLANK_LINES_MAX) {
		memmove(t->p + w, t->p + from, to - from);
		return w + (to - from);
	}
	first = line_len(t, from);
	memmove(t->p + w, t->p + from, first);
	w += first;
	/* back over the last BLANK_LINES_MAX - 1 lines */
	for (size_t k = 0; k < BLANK_LINES_MAX - 1; k++) {
		tail--;
		while (tail > from && t->p[tail - 1] != '\n')
			tail--;
	}
	memmove(t->p + w, t->p + tail, to - tail);
	return w + (to - tail);
}

static void blank_lines_cap(struct tbuf *t)
{
	size_t r = 0, w = 0, run = 0, run_from = 0;

	while (r < t->len) {
		size_t l = line_len(t, r);

		if (line_blank(t, r, l)) {
			if (run++ == 0)
				run_from = r;
		} else {
			if (run > 0)
				w = blank_run_copy(t, w, run_from, r, run);
			run = 0;
			memmove(t->p + w, t->p + r, l);
			w += l;
		}
		r += l;
	}
	if (run > 0)
		w = blank_run_copy(t, w, run_from, r, run);
	t->len = w;
}

/* ------------------------------------------------------------- charsets */

/* Converts a part's decoded octets to UTF-8 piece by piece, so that the
 * output can stop at a limit without the whole part in memory. */
struct text_conv {
	iconv_t cd;       /* (iconv_t)-1: UTF-8 read leniently */
	struct tbuf in;   /* octets not converted yet (a character cut by a chunk) */
};

static bool charset_is_utf8(const char *charset)
{
	const char *canon;

	if (charset == NULL || *charset == '\0')
		return true;
	canon = g_mime_charset_canon_name(charset);
	return canon == NULL || strcasecmp(canon, "utf-8") == 0 ||
	       strcasecmp(canon, "us-ascii") == 0 || strcasecmp(canon, "ascii") == 0;
}

static void conv_init(struct text_conv *c, const char *charset)
{
	*c = (struct text_conv){ .cd = (iconv_t)-1 };
	/* an unknown charset is read like undeclared text */
	if (!charset_is_utf8(charset))
		c->cd = g_mime_iconv_open("UTF-8", charset);
}

static void conv_free(struct text_conv *c)
{
	if (c->cd != (iconv_t)-1)
		g_mime_iconv_close(c->cd);
	tbuf_free(&c->in);
}

/* How many octets at the end of p[0..n) may be the start of a UTF-8
 * character the next chunk completes. */
static size_t utf8_incomplete_tail(const unsigned char *p, size_t n)
{
	for (size_t back = 1; back <= 3 && back <= n; back++) {
		unsigned char c = p[n - back];
		size_t need;

		if ((c & 0xc0) == 0x80)
			continue;
		need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 1;
		return need > back && c <= 0xf4 ? back : 0;
	}
	return 0;
}

static void conv_lenient(struct text_conv *c, bool final, struct tbuf *out)
{
	size_t keep = final ? 0 : utf8_incomplete_tail((unsigned char *)c->in.p, c->in.len);

	utf8_add_lenient(out, c->in.p, c->in.len - keep);
	memmove(c->in.p, c->in.p + c->in.len - keep, keep);
	c->in.len = keep;
}

static void conv_iconv(struct text_conv *c, bool final, struct tbuf *out)
{
	char *inp = c->in.p;
	size_t inleft = c->in.len;

	while (inleft > 0) {
		char obuf[4096], *outp = obuf;
		size_t outleft = sizeof(obuf);
		size_t r = iconv(c->cd, &inp, &inleft, &outp, &outleft);
		int err = errno;

		utf8_add_lenient(out, obuf, sizeof(obuf) - outleft);
		if (r != (size_t)-1 || err == E2BIG)
			continue;
		if (err == EINVAL && !final)
			break;
		/* an octet the charset has no character for */
		utf8_put(out, 0xfffd);
		inp++;
		inleft--;
	}
	memmove(c->in.p, inp, inleft);
	c->in.len = inleft;
}

/* Convert what was fed so far; true once out reached limit (out is then
 * cut to it at a character boundary). */
static bool conv_feed(struct text_conv *c, const char *s, size_t n, bool final,
		      struct tbuf *out, size_t limit)
{
	tbuf_add(&c->in, s, n);
	if (c->cd == (iconv_t)-1)
		conv_lenient(c, final, out);
	else
		conv_iconv(c, final, out);
	if (out->len < limit)
		return false;
	out->len = utf8_floor(out->p, out->len, limit);
	return true;
}

/* ------------------------------------------------------ quoted-printable */

/* SpamAssassin's qp_decode(), as a stream: three passes in a row — blanks
 * before a line end deleted (RFC 2045), soft line breaks removed, then =XX
 * decoded — each carrying to the next chunk only what it must wait for.
 * Done here rather than by GMime, whose decoder keeps those blanks and
 * reads "=" runs differently. */
#define QP_BLANKS_MAX 4096   /* a longer run of blanks is let through */

struct qp_decoder {
	struct tbuf blanks;  /* pass 1: blanks that a line end may delete */
	bool cr;             /* pass 1: a CR after them, waiting for its LF */
	char soft[2];        /* pass 2: "=" or "=\r" waiting */
	size_t n_soft;
	char hex[2];         /* pass 3: "=" or "=X" waiting */
	size_t n_hex;
};

static void qp_pass3(struct qp_decoder *q, char c, struct tbuf *out)
{
	if (q->n_hex == 0) {
		if (c == '=')
			q->hex[q->n_hex++] = c;
		else
			tbuf_addc(out, c);
		return;
	}
	if (is_hex((unsigned char)c) && q->n_hex == 1) {
		q->hex[q->n_hex++] = c;
		return;
	}
	if (is_hex((unsigned char)c)) {
		tbuf_addc(out, (char)(hex_value((unsigned char)q->hex[1]) << 4 | hex_value((unsigned char)c)));
		q->n_hex = 0;
		return;
	}
	tbuf_add(out, q->hex, q->n_hex);
	q->n_hex = 0;
	qp_pass3(q, c, out);
}

static void qp_pass2(struct qp_decoder *q, char c, struct tbuf *out)
{
	if (q->n_soft == 0 && c == '=') {
		q->soft[q->n_soft++] = c;
		return;
	}
	if (q->n_soft == 0) {
		qp_pass3(q, c, out);
		return;
	}
	if (c == '\n') {
		q->n_soft = 0;   /* "=\n" or "=\r\n": a soft line break */
		return;
	}
	if (c == '\r' && q->n_soft == 1) {
		q->soft[q->n_soft++] = c;
		return;
	}
	for (size_t i = 0; i < q->n_soft; i++)
		qp_pass3(q, q->soft[i], out);
	q->n_soft = 0;
	qp_pass2(q, c, out);
}

static void qp_flush_blanks(struct qp_decoder *q, struct tbuf *out)
{
	for (size_t i = 0; i < q->blanks.len; i++)
		qp_pass2(q, q->blanks.p[i], out);
	q->blanks.len = 0;
	if (q->cr)
		qp_pass2(q, '\r', out);
	q->cr = false;
}

static void qp_feed(struct qp_decoder *q, const char *s, size_t n, bool final, struct tbuf *out)
{
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if ((c == ' ' || c == '\t') && !q->cr) {
			if (q->blanks.len >= QP_BLANKS_MAX)
				qp_flush_blanks(q, out);
			tbuf_addc(&q->blanks, c);
		} else if (c == '\r' && !q->cr) {
			q->cr = true;
		} else if (c == '\n') {
			q->blanks.len = 0;   /* the blanks before a line end go */
			if (q->cr)
				qp_pass2(q, '\r', out);
			q->cr = false;
			qp_pass2(q, c, out);
		} else if (q->cr && (c == ' ' || c == '\t' || c == '\r')) {
			qp_flush_blanks(q, out);   /* that CR ends no line */
			i--;                       /* again, now that nothing waits */
		} else {
			qp_flush_blanks(q, out);
			qp_pass2(q, c, out);
		}
	}
	if (!final)
		return;
	qp_flush_blanks(q, out);
	for (size_t i = 0; i < q->n_soft; i++)
		qp_pass3(q, q->soft[i], out);
	q->n_soft = 0;
	tbuf_add(out, q->hex, q->n_hex);
	q->n_hex = 0;
}

/* ------------------------------------------------------------- parts */

/* A leaf's content as UTF-8 text: transfer encoding undone, charset
 * converted, CRLF as LF; at most limit octets (*cut set when there were
 * more). The part's own stream is never read: a substream of the same
 * bytes is, so that threads reading the shared tree do not disturb each
 * other. */
static void part_decode(GMimeObject *obj, size_t limit, struct tbuf *out, bool *cut)
{
	GMimeDataWrapper *content;
	GMimeStream *stream, *sub, *in;
	GMimeContentEncoding enc;
	struct text_conv conv;
	struct qp_decoder qp = { 0 };
	struct tbuf plain = { 0 };
	char chunk[16384];
	ssize_t n;
	bool full = false, is_qp;

	if (!GMIME_IS_PART(obj))
		return;
	content = g_mime_part_get_content(GMIME_PART(obj));
	stream = content != NULL ? g_mime_data_wrapper_get_stream(content) : NULL;
	if (stream == NULL)
		return;
	sub = g_mime_stream_substream(stream, stream->bound_start, stream->bound_end);
	if (sub == NULL)
		return;
	in = sub;
	enc = g_mime_data_wrapper_get_encoding(content);
	is_qp = enc == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE;
	if (enc == GMIME_CONTENT_ENCODING_BASE64 || enc == GMIME_CONTENT_ENCODING_UUENCODE) {
		GMimeFilter *filter = g_mime_filter_basic_new(enc, FALSE);

		in = g_mime_stream_filter_new(sub);
		g_mime_stream_filter_add(GMIME_STREAM_FILTER(in), filter);
		g_object_unref(filter);
		g_object_unref(sub);
	}
	conv_init(&conv, g_mime_object_get_content_type_parameter(obj, "charset"));
	while (!full && (n = g_mime_stream_read(in, chunk, sizeof(chunk))) > 0) {
		if (!is_qp) {
			full = conv_feed(&conv, chunk, (size_t)n, false, out, limit);
			continue;
		}
		plain.len = 0;
		qp_feed(&qp, chunk, (size_t)n, false, &plain);
		full = conv_feed(&conv, plain.p, plain.len, false, out, limit);
	}
	if (!full && is_qp) {
		plain.len = 0;
		qp_feed(&qp, NULL, 0, true, &plain);
		full = conv_feed(&conv, plain.p, plain.len, false, out, limit);
	}
	if (!full)
		full = conv_feed(&conv, NULL, 0, true, out, limit);
	/* the limit reached: there may have been more */
	if (full)
		*cut = true;
	conv_free(&conv);
	tbuf_free(&plain);
	tbuf_free(&qp.blanks);
	g_object_unref(in);
	crlf_to_lf(out, 0);
	/* on the lines as they came: not inside base64 */
	if (enc != GMIME_CONTENT_ENCODING_BASE64 && enc != GMIME_CONTENT_ENCODING_UUENCODE)
		blank_lines_cap(out);
}

/* "type/subtype" in lower case. */
static char *object_mime_type(GMimeObject *obj)
{
	GMimeContentType *ct = g_mime_object_get_content_type(obj);
	char *s = ct != NULL ? g_mime_content_type_get_mime_type(ct) : NULL;
	char *type = utf8_dup_lenient(s != NULL ? s : "text/plain");

	g_free(s);
	str_lower(type);
	return type;
}

/* ------------------------------------------------------------ RFC 2047 */

/* If w starts a B encoded-word ("=?charset?B?text?="), append the same
 * word Q-encoded to out and return its length; else 0. */
static size_t rfc2047_b_word(const char *w, struct tbuf *out)
{
	const char *cs = w + 2, *p = cs, *text, *end;
	unsigned char *bin;
	int state = 0;
	guint32 save = 0;
	size_t n;

	while (*p != '\0' && *p != '?' && (unsigned char)*p > ' ' && p - cs < 64)
		p++;
	if (*p != '?' || p == cs || (p[1] != 'b' && p[1] != 'B') || p[2] != '?')
		return 0;
	text = p + 3;
	end = text;
	while (*end != '\0' && *end != '?' && !is_ascii_space((unsigned char)*end))
		end++;
	if (end[0] != '?' || end[1] != '=')
		return 0;
	bin = xmalloc((size_t)(end - text) / 4 * 3 + 4);
	n = g_mime_encoding_base64_decode_step((const unsigned char *)text, (size_t)(end - text),
						bin, &state, &save);
	tbuf_add(out, w, (size_t)(p - w));
	tbuf_add(out, "?Q?", 3);
	for (size_t i = 0; i < n; i++) {
		char hex[4];

		if (is_alnum(bin[i])) {
			tbuf_addc(out, (char)bin[i]);
			continue;
		}
		snprintf(hex, sizeof(hex), "=%02X", bin[i]);
		tbuf_add(out, hex, 3);
	}
	tbuf_add(out, "?=", 2);
	free(bin);
	return (size_t)(end + 2 - w);
}

/* s with its B encoded-words rewritten as Q words (see the file's
 * opening comment: GMime 3.2 mis-decodes some runs of B words). */
static char *rfc2047_b_to_q(const char *s)
{
	struct tbuf out = { 0 };
	const char *p = s;

	for (;;) {
		const char *w = strstr(p, "=?");
		size_t used;

		if (w == NULL) {
			tbuf_adds(&out, p);
			break;
		}
		tbuf_add(&out, p, (size_t)(w - p));
		used = rfc2047_b_word(w, &out);
		if (used == 0) {
			tbuf_add(&out, "=?", 2);
			used = 2;
		}
		p = w + used;
	}
	return tbuf_take(&out);
}

/* RFC 2047 decoding to UTF-8 (GMime's, loose: encoded words inside words
 * and 8-bit text are taken as mail readers take them). */
static char *rfc2047_decode(const char *s)
{
	char *q = rfc2047_b_to_q(s);
	char *d = g_mime_utils_header_decode_text(NULL, q);
	char *out = utf8_dup_lenient(d != NULL ? d : "");

	g_free(d);
	free(q);
	return out;
}

/* The fields _decode_header() leaves encoded (SpamAssassin bugs 6945,
 * 7249): their values are not text for people. */
static bool header_keeps_encoding(const char *name)
{
	static const char *const names[] = {
		"Received", "Message-ID", "Resent-Message-ID", "Date", "Resent-Date",
		"MIME-Version", "References", "In-Reply-To",
	};

	for (size_t i = 0; i < N_ELEMENTS(names); i++)
		if (strcasecmp(name, names[i]) == 0)
			return true;
	return strncasecmp(name, "List-", 5) == 0;
}

/* SpamAssassin's decoded value of a field from its raw one (LF line ends). */
static char *header_decode(const char *name, const char *raw)
{
	struct tbuf u = { 0 };
	size_t start, end;
	char *value, *decoded;

	/* a line break and the blanks after it are one space; a line break
	 * without blanks after it is dropped */
	for (const char *p = raw; *p != '\0'; p++) {
		if (*p != '\n') {
			tbuf_addc(&u, *p);
			continue;
		}
		if (p[1] == ' ' || p[1] == '\t') {
			while (p[1] == ' ' || p[1] == '\t')
				p++;
			tbuf_addc(&u, ' ');
		}
	}
	tbuf_reserve(&u, 0);
	u.p[u.len] = '\0';
	start = 0;
	end = u.len;
	while (start < end && is_ascii_space((unsigned char)u.p[start]))
		start++;
	while (end > start && is_ascii_space((unsigned char)u.p[end - 1]))
		end--;
	value = xstrndup(u.p + start, end - start);
	tbuf_free(&u);
	if (header_keeps_encoding(name))
		decoded = utf8_dup_lenient(value);
	else
		decoded = rfc2047_decode(value);
	free(value);
	decoded[utf8_floor(decoded, strlen(decoded), MSGTEXT_LINE_MAX)] = '\0';
	return decoded;
}

/* ------------------------------------------------------------- the build */

struct build {
	struct msgtext *t;
	size_t nodes;             /* MIME nodes walked */
	struct tbuf body;         /* the leaves' rendered text: SpamAssassin's $text */
	size_t rawbody_octets;
	struct strvec rawbody;
	struct strvec html_uris;  /* raw URIs from HTML, deduplicated, in order */
	GHashTable *html_seen;
	struct strvec uris;
	GHashTable *uri_seen;
	GHashTable *text_seen;    /* raw URIs from the text (SpamAssassin's %seen) */
};

static void truncated(struct build *bd)
{
	bd->t->truncated = true;
}

/* --------------------------------------------------------------- headers */

static void header_add(struct build *bd, GMimeHeader *h)
{
	struct msgtext *t = bd->t;
	struct msgtext_header *mh;
	const char *name = g_mime_header_get_name(h);
	const char *rawv = g_mime_header_get_raw_value(h);
	struct tbuf raw = { 0 };

	if (t->n_headers >= MSGTEXT_HEADERS_MAX) {
		truncated(bd);
		return;
	}
	tbuf_adds(&raw, rawv != NULL ? rawv : "");
	crlf_to_lf(&raw, 0);
	if (raw.len > 0 && raw.p[raw.len - 1] == '\n')
		raw.len--;
	if (raw.len > MSGTEXT_LINE_MAX) {
		raw.len = MSGTEXT_LINE_MAX;
		truncated(bd);
	}
	mh = &t->headers[t->n_headers++];
	mh->name = utf8_dup_lenient(name != NULL ? name : "");
	mh->raw = tbuf_take(&raw);
	mh->decoded = header_decode(mh->name, mh->raw);
}

/* The top-level header in message order: GMime keeps the message's fields
 * and its top part's Content-* fields in two lists, each in order. */
static void headers_collect(struct build *bd, GMimeMessage *m)
{
	GMimeObject *top = g_mime_message_get_mime_part(m);
	GMimeHeaderList *lists[2] = {
		g_mime_object_get_header_list(GMIME_OBJECT(m)),
		top != NULL ? g_mime_object_get_header_list(top) : NULL,
	};
	int count[2], pos[2] = { 0, 0 };

	for (int k = 0; k < 2; k++)
		count[k] = lists[k] != NULL ? g_mime_header_list_get_count(lists[k]) : 0;
	bd->t->headers = xcalloc(MSGTEXT_HEADERS_MAX, sizeof(*bd->t->headers));
	while (pos[0] < count[0] || pos[1] < count[1]) {
		GMimeHeader *h[2] = { NULL, NULL };
		int k;

		for (k = 0; k < 2; k++)
			if (pos[k] < count[k])
				h[k] = g_mime_header_list_get_header_at(lists[k], pos[k]);
		if (h[0] == NULL)
			k = 1;
		else if (h[1] == NULL)
			k = 0;
		else
			k = g_mime_header_get_offset(h[1]) < g_mime_header_get_offset(h[0]) ? 1 : 0;
		pos[k]++;
		/* a field GMime made up is not in the message */
		if (h[k] != NULL && (k == 0 || g_mime_header_get_offset(h[k]) >= 0))
			header_add(bd, h[k]);
	}
}

/* ----------------------------------------------------------- file names */

/* A parameter of a raw Content-* field, parsed afresh (B words as Q: see
 * the opening comment); NULL when the field or the parameter is not there. */
static char *header_param(GMimeObject *obj, const char *field, const char *param)
{
	GMimeHeaderList *list = g_mime_object_get_header_list(obj);
	GMimeHeader *h = list != NULL ? g_mime_header_list_get_header(list, field) : NULL;
	const char *raw = h != NULL ? g_mime_header_get_raw_value(h) : NULL;
	const char *value = NULL;
	char *q, *out = NULL;

	if (raw == NULL)
		return NULL;
	q = rfc2047_b_to_q(raw);
	if (strcasecmp(field, "Content-Disposition") == 0) {
		GMimeContentDisposition *d = g_mime_content_disposition_parse(NULL, q);

		if (d != NULL && (value = g_mime_content_disposition_get_parameter(d, param)) != NULL)
			out = utf8_dup_lenient(value);
		if (d != NULL)
			g_object_unref(d);
	} else {
		GMimeContentType *ct = g_mime_content_type_parse(NULL, q);

		if (ct != NULL && (value = g_mime_content_type_get_parameter(ct, param)) != NULL)
			out = utf8_dup_lenient(value);
		if (ct != NULL)
			g_object_unref(ct);
	}
	free(q);
	return out;
}

static char *part_filename(GMimeObject *obj)
{
	char *name = header_param(obj, "Content-Disposition", "filename");

	if (name == NULL)
		name = header_param(obj, "Content-Type", "name");
	if (name != NULL && strlen(name) > MSGTEXT_LINE_MAX)
		name[utf8_floor(name, strlen(name), MSGTEXT_LINE_MAX)] = '\0';
	return name;
}

/* SpamAssassin's effective_type(): a part named *.htm(l) or *.shtm(l) is
 * HTML, whatever its type says. */
static bool name_is_html(const char *name)
{
	static const char *const ends[] = { ".htm", ".html", ".shtm", ".shtml" };
	size_t n = name != NULL ? strlen(name) : 0;

	for (size_t i = 0; i < N_ELEMENTS(ends); i++) {
		size_t l = strlen(ends[i]);

		if (n >= l && strcasecmp(name + n - l, ends[i]) == 0)
			return true;
	}
	return false;
}

/* -------------------------------------------------------------- rawbody */

/* split_into_array_of_short_paragraphs(): text up to one line length is
 * one element; longer text is cut into pieces of one to two line lengths,
 * after a "\n", else a ">", else a " " (searched only where a cut may go,
 * so that the split stays linear), else at one line length. */
static void rawbody_split(struct build *bd, const char *s, size_t n)
{
	const size_t one = MSGTEXT_SA_LINE, two = 2 * MSGTEXT_SA_LINE;
	size_t ofs = 0;

	if (n <= one) {
		strvec_push(&bd->rawbody, xstrndup(s, n));
		return;
	}
	while (n - ofs > two) {
		static const char cuts[] = "\n> ";
		const char *win = s + ofs + one;
		size_t j = 0;
		const char *hit = NULL;

		for (size_t k = 0; k < 3 && hit == NULL; k++)
			hit = memchr(win, cuts[k], two - one);
		if (hit != NULL) {
			j = (size_t)(hit - s);
		} else {
			/* the piece ends with the octet at j: keep characters whole */
			j = ofs + one;
			while (j > ofs && ((unsigned char)s[j + 1] & 0xc0) == 0x80)
				j--;
		}
		strvec_push(&bd->rawbody, xstrndup(s + ofs, j - ofs + 1));
		ofs = j + 1;
	}
	if (ofs < n)
		strvec_push(&bd->rawbody, xstrndup(s + ofs, n - ofs));
}

static void rawbody_add(struct build *bd, const char *s, size_t n)
{
	size_t left = MSGTEXT_TEXT_MAX - bd->rawbody_octets, take;
	struct tbuf t = { 0 };

	/* no NUL inside a C string: it would hide the rest from rules */
	for (size_t i = 0; i < n; i++) {
		const char *nul = memchr(s + i, '\0', n - i);
		size_t run = nul != NULL ? (size_t)(nul - (s + i)) : n - i;

		tbuf_add(&t, s + i, run);
		i += run;
		if (i < n)
			utf8_put(&t, 0xfffd);
	}
	take = utf8_floor(t.p != NULL ? t.p : "", t.len, left);
	if (take < t.len)
		truncated(bd);
	bd->rawbody_octets += take;
	rawbody_split(bd, t.p != NULL ? t.p : "", take);
	tbuf_free(&t);
}

/* ---------------------------------------------------------------- HTML */

struct html_entity {
	const char *name;
	uint32_t cp;
	bool needs_semicolon;   /* HTML::Parser decodes the Latin-1 ones without ';' */
};

/* HTML::Entities' table (HTML 4 and &apos;), sorted for bsearch. */
static const struct html_entity html_entities[] = {
	{ "AElig", 0xC6, false }, { "Aacute", 0xC1, false }, { "Acirc", 0xC2, false },
	{ "Agrave", 0xC0, false }, { "Alpha", 0x391, true }, { "Aring", 0xC5, false },
	{ "Atilde", 0xC3, false }, { "Auml", 0xC4, false }, { "Beta", 0x392, true },
	{ "Ccedil", 0xC7, false }, { "Chi", 0x3A7, true }, { "Dagger", 0x2021, true },
	{ "Delta", 0x394, true }, { "ETH", 0xD0, false }, { "Eacute", 0xC9, false },
	{ "Ecirc", 0xCA, false }, { "Egrave", 0xC8, false }, { "Epsilon", 0x395, true },
	{ "Eta", 0x397, true }, { "Euml", 0xCB, false }, { "Gamma", 0x393, true },
	{ "Iacute", 0xCD, false }, { "Icirc", 0xCE, false }, { "Igrave", 0xCC, false },
	{ "Iota", 0x399, true }, { "Iuml", 0xCF, false }, { "Kappa", 0x39A, true },
	{ "Lambda", 0x39B, true }, { "Mu", 0x39C, true }, { "Ntilde", 0xD1, false }, { "Nu", 0x39D, true },
	{ "OElig", 0x152, true }, { "Oacute", 0xD3, false }, { "Ocirc", 0xD4, false },
	{ "Ograve", 0xD2, false }, { "Omega", 0x3A9, true }, { "Omicron", 0x39F, true },
	{ "Oslash", 0xD8, false }, { "Otilde", 0xD5, false }, { "Ouml", 0xD6, false },
	{ "Phi", 0x3A6, true }, { "Pi", 0x3A0, true }, { "Prime", 0x2033, true }, { "Psi", 0x3A8, true },
	{ "Rho", 0x3A1, true }, { "Scaron", 0x160, true }, { "Sigma", 0x3A3, true },
	{ "THORN", 0xDE, false }, { "Tau", 0x3A4, true }, { "Theta", 0x398, true },
	{ "Uacute", 0xDA, false }, { "Ucirc", 0xDB, false }, { "Ugrave", 0xD9, false },
	{ "Upsilon", 0x3A5, true }, { "Uuml", 0xDC, false }, { "Xi", 0x39E, true },
	{ "Yacute", 0xDD, false }, { "Yuml", 0x178, true }, { "Zeta", 0x396, true },
	{ "aacute", 0xE1, false }, { "acirc", 0xE2, false }, { "acute", 0xB4, false },
	{ "aelig", 0xE6, false }, { "agrave", 0xE0, false }, { "alefsym", 0x2135, true },
	{ "alpha", 0x3B1, true }, { "amp", 0x26, false }, { "and", 0x2227, true }, { "ang", 0x2220, true },
	{ "apos", 0x27, false }, { "aring", 0xE5, false }, { "asymp", 0x2248, true },
	{ "atilde", 0xE3, false }, { "auml", 0xE4, false }, { "bdquo", 0x201E, true },
	{ "beta", 0x3B2, true }, { "brvbar", 0xA6, false }, { "bull", 0x2022, true },
	{ "cap", 0x2229, true }, { "ccedil", 0xE7, false }, { "cedil", 0xB8, false },
	{ "cent", 0xA2, false }, { "chi", 0x3C7, true }, { "circ", 0x2C6, true },
	{ "clubs", 0x2663, true }, { "cong", 0x2245, true }, { "copy", 0xA9, false },
	{ "crarr", 0x21B5, true }, { "cup", 0x222A, true }, { "curren", 0xA4, false },
	{ "dArr", 0x21D3, true }, { "dagger", 0x2020, true }, { "darr", 0x2193, true },
	{ "deg", 0xB0, false }, { "delta", 0x3B4, true }, { "diams", 0x2666, true },
	{ "divide", 0xF7, false }, { "eacute", 0xE9, false }, { "ecirc", 0xEA, false },
	{ "egrave", 0xE8, false }, { "empty", 0x2205, true }, { "emsp", 0x2003, true },
	{ "ensp", 0x2002, true }, { "epsilon", 0x3B5, true }, { "equiv", 0x2261, true },
	{ "eta", 0x3B7, true }, { "eth", 0xF0, false }, { "euml", 0xEB, false }, { "euro", 0x20AC, true },
	{ "exist", 0x2203, true }, { "fnof", 0x192, true }, { "forall", 0x2200, true },
	{ "frac12", 0xBD, false }, { "frac14", 0xBC, false }, { "frac34", 0xBE, false },
	{ "frasl", 0x2044, true }, { "gamma", 0x3B3, true }, { "ge", 0x2265, true }, { "gt", 0x3E, false },
	{ "hArr", 0x21D4, true }, { "harr", 0x2194, true }, { "hearts", 0x2665, true },
	{ "hellip", 0x2026, true }, { "iacute", 0xED, false }, { "icirc", 0xEE, false },
	{ "iexcl", 0xA1, false }, { "igrave", 0xEC, false }, { "image", 0x2111, true },
	{ "infin", 0x221E, true }, { "int", 0x222B, true }, { "iota", 0x3B9, true },
	{ "iquest", 0xBF, false }, { "isin", 0x2208, true }, { "iuml", 0xEF, false },
	{ "kappa", 0x3BA, true }, { "lArr", 0x21D0, true }, { "lambda", 0x3BB, true },
	{ "lang", 0x2329, true }, { "laquo", 0xAB, false }, { "larr", 0x2190, true },
	{ "lceil", 0x2308, true }, { "ldquo", 0x201C, true }, { "le", 0x2264, true },
	{ "lfloor", 0x230A, true }, { "lowast", 0x2217, true }, { "loz", 0x25CA, true },
	{ "lrm", 0x200E, true }, { "lsaquo", 0x2039, true }, { "lsquo", 0x2018, true },
	{ "lt", 0x3C, false }, { "macr", 0xAF, false }, { "mdash", 0x2014, true }, { "micro", 0xB5, false },
	{ "middot", 0xB7, false }, { "minus", 0x2212, true }, { "mu", 0x3BC, true },
	{ "nabla", 0x2207, true }, { "nbsp", 0xA0, false }, { "ndash", 0x2013, true },
	{ "ne", 0x2260, true }, { "ni", 0x220B, true }, { "not", 0xAC, false }, { "notin", 0x2209, true },
	{ "nsub", 0x2284, true }, { "ntilde", 0xF1, false }, { "nu", 0x3BD, true },
	{ "oacute", 0xF3, false }, { "ocirc", 0xF4, false }, { "oelig", 0x153, true },
	{ "ograve", 0xF2, false }, { "oline", 0x203E, true }, { "omega", 0x3C9, true },
	{ "omicron", 0x3BF, true }, { "oplus", 0x2295, true }, { "or", 0x2228, true },
	{ "ordf", 0xAA, false }, { "ordm", 0xBA, false }, { "oslash", 0xF8, false },
	{ "otilde", 0xF5, false }, { "otimes", 0x2297, true }, { "ouml", 0xF6, false },
	{ "para", 0xB6, false }, { "part", 0x2202, true }, { "permil", 0x2030, true },
	{ "perp", 0x22A5, true }, { "phi", 0x3C6, true }, { "pi", 0x3C0, true }, { "piv", 0x3D6, true },
	{ "plusmn", 0xB1, false }, { "pound", 0xA3, false }, { "prime", 0x2032, true },
	{ "prod", 0x220F, true }, { "prop", 0x221D, true }, { "psi", 0x3C8, true },
	{ "quot", 0x22, false }, { "rArr", 0x21D2, true }, { "radic", 0x221A, true },
	{ "rang", 0x232A, true }, { "raquo", 0xBB, false }, { "rarr", 0x2192, true },
	{ "rceil", 0x2309, true }, { "rdquo", 0x201D, true }, { "real", 0x211C, true },
	{ "reg", 0xAE, false }, { "rfloor", 0x230B, true }, { "rho", 0x3C1, true },
	{ "rlm", 0x200F, true }, { "rsaquo", 0x203A, true }, { "rsquo", 0x2019, true },
	{ "sbquo", 0x201A, true }, { "scaron", 0x161, true }, { "sdot", 0x22C5, true },
	{ "sect", 0xA7, false }, { "shy", 0xAD, false }, { "sigma", 0x3C3, true },
	{ "sigmaf", 0x3C2, true }, { "sim", 0x223C, true }, { "spades", 0x2660, true },
	{ "sub", 0x2282, true }, { "sube", 0x2286, true }, { "sum", 0x2211, true },
	{ "sup", 0x2283, true }, { "sup1", 0xB9, false }, { "sup2", 0xB2, false }, { "sup3", 0xB3, false },
	{ "supe", 0x2287, true }, { "szlig", 0xDF, false }, { "tau", 0x3C4, true },
	{ "there4", 0x2234, true }, { "theta", 0x3B8, true }, { "thetasym", 0x3D1, true },
	{ "thinsp", 0x2009, true }, { "thorn", 0xFE, false }, { "tilde", 0x2DC, true },
	{ "times", 0xD7, false }, { "trade", 0x2122, true }, { "uArr", 0x21D1, true },
	{ "uacute", 0xFA, false }, { "uarr", 0x2191, true }, { "ucirc", 0xFB, false },
	{ "ugrave", 0xF9, false }, { "uml", 0xA8, false }, { "upsih", 0x3D2, true },
	{ "upsilon", 0x3C5, true }, { "uuml", 0xFC, false }, { "weierp", 0x2118, true },
	{ "xi", 0x3BE, true }, { "yacute", 0xFD, false }, { "yen", 0xA5, false }, { "yuml", 0xFF, false },
	{ "zeta", 0x3B6, true }, { "zwj", 0x200D, true }, { "zwnj", 0x200C, true },
};

struct entity_key {
	const char *s;
	size_t n;
};

static int entity_cmp(const void *k, const void *e)
{
	const struct entity_key *key = k;
	const struct html_entity *ent = e;
	int c = strncmp(key->s, ent->name, key->n);

	if (c != 0)
		return c;
	return ent->name[key->n] == '\0' ? 0 : -1;
}

/* Decode the entity at s[0] == '&' into out: the octets it took, 0 when
 * it is not one (the '&' is then text). */
static size_t html_entity(const char *s, size_t n, struct tbuf *out)
{
	const struct html_entity *e;
	struct entity_key key;
	size_t i = 1;
	bool semi;

	if (i < n && s[i] == '#') {
		bool hex = i + 1 < n && (s[i + 1] == 'x' || s[i + 1] == 'X');
		uint32_t v = 0;
		size_t digits = 0;

		i += hex ? 2 : 1;
		while (i < n && (hex ? is_hex((unsigned char)s[i]) : s[i] >= '0' && s[i] <= '9')) {
			if (v <= 0x10ffff)
				v = v * (hex ? 16 : 10) + hex_value((unsigned char)s[i]);
			digits++;
			i++;
		}
		if (digits == 0 || v == 0 || v > 0x10ffff)
			return 0;   /* HTML::Parser leaves those as they are */
		if (i < n && s[i] == ';')
			i++;
		if (v >= 0xd800 && v <= 0xdfff)
			v = 0xfffd;
		/* &#149; is a bullet to browsers (HTML5), not a C1 control */
		if (v >= 0x80 && v <= 0x9f)
			v = cp1252_c1[v - 0x80];
		utf8_put(out, v);
		return i;
	}
	while (i < n && is_alnum((unsigned char)s[i]))
		i++;
	if (i == 1)
		return 0;
	semi = i < n && s[i] == ';';
	/* HTML.pm turns "&nbsp;" into a space before parsing */
	if (semi && i == 5 && memcmp(s + 1, "nbsp", 4) == 0) {
		tbuf_addc(out, ' ');
		return i + 1;
	}
	key = (struct entity_key){ s + 1, i - 1 };
	e = i - 1 <= 8 ? bsearch(&key, html_entities, N_ELEMENTS(html_entities), sizeof(*e), entity_cmp) : NULL;
	if (e != NULL && (semi || !e->needs_semicolon)) {
		utf8_put(out, e->cp);
		return i + (semi ? 1 : 0);
	}
	/* else the longest entity the name starts with that needs no ';':
	 * HTML::Parser reads "&notit;" as "¬it;" */
	for (key.n = i - 2 < 8 ? i - 2 : 8; key.n >= 2; key.n--) {
		e = bsearch(&key, html_entities, N_ELEMENTS(html_entities), sizeof(*e), entity_cmp);
		if (e != NULL && !e->needs_semicolon) {
			utf8_put(out, e->cp);
			return 1 + key.n;
		}
	}
	return 0;
}

static void html_decode(const char *s, size_t n, struct tbuf *out)
{
	size_t i = 0;

	while (i < n) {
		const char *amp = memchr(s + i, '&', n - i);
		size_t used;

		if (amp == NULL) {
			tbuf_add(out, s + i, n - i);
			return;
		}
		tbuf_add(out, s + i, (size_t)(amp - (s + i)));
		i = (size_t)(amp - s);
		used = html_entity(s + i, n - i, out);
		if (used == 0) {
			tbuf_addc(out, '&');
			used = 1;
		}
		i += used;
	}
}

struct html_attr {
	const char *name, *value;
	size_t name_len, value_len;
};

struct html_tag {
	char name[16];   /* lower case; "" for a name too long to be one we know */
	bool end;
	struct html_attr attrs[HTML_ATTRS_MAX];
	size_t n_attrs;
};

/* The decoded value of the tag's first attribute named name (lower case)
 * in out; false when it has none. */
static bool html_attr(const struct html_tag *tag, const char *name, struct tbuf *out)
{
	size_t l = strlen(name);

	for (size_t i = 0; i < tag->n_attrs; i++) {
		const struct html_attr *a = &tag->attrs[i];

		if (a->name_len == l && strncasecmp(a->name, name, l) == 0 && a->value != NULL) {
			out->len = 0;
			html_decode(a->value, a->value_len, out);
			tbuf_reserve(out, 0);
			out->p[out->len] = '\0';
			return true;
		}
	}
	return false;
}

/* One attribute at p: its end in *end_r; false when the tag does not end
 * before the text does. */
static bool html_parse_attr(const char *p, const char *end, struct html_tag *tag,
			    const char **end_r)
{
	struct html_attr a = { .name = p };
	const char *q = p;

	while (q < end && !is_ascii_space((unsigned char)*q) && *q != '>' && *q != '=' && *q != '/')
		q++;
	if (q == p)
		q++;   /* a stray '=' */
	a.name_len = (size_t)(q - p);
	p = q;
	while (q < end && is_ascii_space((unsigned char)*q))
		q++;
	if (q < end && *q == '=' && a.name_len > 0 && *a.name != '=') {
		q++;
		while (q < end && is_ascii_space((unsigned char)*q))
			q++;
		if (q >= end)
			return false;
		if (*q == '"' || *q == '\'') {
			/* a quoted value runs to its quote, past any '>': an
			 * unclosed one leaves the tag unclosed */
			const char *close = memchr(q + 1, *q, (size_t)(end - q - 1));

			if (close == NULL)
				return false;
			a.value = q + 1;
			a.value_len = (size_t)(close - a.value);
			p = close + 1;
		} else {
			a.value = q;
			while (q < end && !is_ascii_space((unsigned char)*q) && *q != '>')
				q++;
			a.value_len = (size_t)(q - a.value);
			p = q;
		}
	}
	/* HTML::Parser gives an attribute without a value its own name */
	if (a.value == NULL) {
		a.value = a.name;
		a.value_len = a.name_len;
	}
	if (tag->n_attrs < HTML_ATTRS_MAX)
		tag->attrs[tag->n_attrs++] = a;
	*end_r = p;
	return true;
}

/* The start or end tag at p ("<a", "</a"): its end (after '>') in *end_r;
 * false when it has no '>' before the text ends. */
static bool html_parse_tag(const char *p, const char *end, struct html_tag *tag,
			   const char **end_r)
{
	const char *q = p + 1, *name;

	tag->end = *q == '/';
	if (tag->end)
		q++;
	name = q;
	while (q < end && (is_alnum((unsigned char)*q) || *q == '.' || *q == '-' || *q == '_' || *q == ':'))
		q++;
	tag->name[0] = '\0';
	if ((size_t)(q - name) < sizeof(tag->name)) {
		memcpy(tag->name, name, (size_t)(q - name));
		tag->name[q - name] = '\0';
		str_lower(tag->name);
	}
	tag->n_attrs = 0;
	for (;;) {
		while (q < end && (is_ascii_space((unsigned char)*q) || *q == '/'))
			q++;
		if (q >= end)
			return false;
		if (*q == '>') {
			*end_r = q + 1;
			return true;
		}
		if (!html_parse_attr(q, end, tag, &q))
			return false;
	}
}

struct html {
	struct build *bd;
	struct tbuf *out;
	size_t chunk_start;   /* where the last piece of text begins in out */
	bool have_chunk;
	bool last_space;      /* the last piece came from a block tag */
	char *base;           /* <base href>, as HTML.pm keeps it */
	struct tbuf scratch;
};

/* display_text() for text (entities decoded unless !decode): white-space
 * runs are one space, and the space that would follow a block tag's is
 * dropped. */
static void html_text(struct html *h, const char *s, size_t n, bool decode)
{
	size_t start = h->out->len;

	h->scratch.len = 0;
	if (decode)
		html_decode(s, n, &h->scratch);
	else
		tbuf_add(&h->scratch, s, n);
	for (size_t i = 0; i < h->scratch.len; i++) {
		if (!is_ascii_space((unsigned char)h->scratch.p[i])) {
			tbuf_addc(h->out, h->scratch.p[i]);
			continue;
		}
		while (i + 1 < h->scratch.len && is_ascii_space((unsigned char)h->scratch.p[i + 1]))
			i++;
		if (!(h->have_chunk && h->last_space && h->out->len == start))
			tbuf_addc(h->out, ' ');
	}
	h->chunk_start = start;
	h->have_chunk = true;
	h->last_space = false;
}

/* display_text() for a block tag's white space: it replaces a space that
 * ends the text before it. */
static void html_space(struct html *h, const char *space)
{
	if (h->have_chunk && !h->last_space && h->out->len > h->chunk_start &&
	    h->out->p[h->out->len - 1] == ' ')
		h->out->len--;
	h->chunk_start = h->out->len;
	tbuf_adds(h->out, space);
	h->have_chunk = true;
	h->last_space = true;
}

static const char *html_tag_space(const char *name)
{
	static const char *const nl[] = { "br", "div" };
	static const char *const sp[] = { "li", "th", "td", "dt", "dd", "embed",
					  "h1", "h2", "h3", "h4", "h5", "h6" };
	static const char *const para[] = { "p", "hr", "blockquote", "pre", "listing",
					    "plaintext", "xmp", "title" };

	for (size_t i = 0; i < N_ELEMENTS(nl); i++)
		if (strcmp(name, nl[i]) == 0)
			return "\n";
	for (size_t i = 0; i < N_ELEMENTS(sp); i++)
		if (strcmp(name, sp[i]) == 0)
			return " ";
	for (size_t i = 0; i < N_ELEMENTS(para); i++)
		if (strcmp(name, para[i]) == 0)
			return "\n\n";
	return NULL;
}

static bool name_in(const char *name, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(name, list[i]) == 0)
			return true;
	return false;
}

/* ------------------------------------------------------------ URI forms */

struct uri_split {
	const char *scheme, *auth, *path, *query, *frag;
	size_t scheme_len, auth_len, path_len, query_len, frag_len;
};

/* HTML.pm's _parse_uri(): scheme, authority, path, query, fragment
 * (NULL: not there). */
static void uri_split(const char *u, struct uri_split *s)
{
	const char *p = u, *q;

	*s = (struct uri_split){ 0 };
	q = p + strcspn(p, ":/?#");
	if (*q == ':' && q > p) {
		s->scheme = p;
		s->scheme_len = (size_t)(q - p);
		p = q + 1;
	}
	if (p[0] == '/' && p[1] == '/') {
		s->auth = p + 2;
		s->auth_len = strcspn(s->auth, "/?#");
		p = s->auth + s->auth_len;
	}
	s->path = p;
	s->path_len = strcspn(p, "?#");
	p += s->path_len;
	if (*p == '?') {
		s->query = p + 1;
		s->query_len = strcspn(s->query, "#");
		p = s->query + s->query_len;
	}
	if (*p == '#') {
		s->frag = p + 1;
		s->frag_len = strcspn(s->frag, "\n");
	}
}

/* HTML.pm's _remove_dot_segments(): "." and ".." segments resolved. */
static void uri_remove_dots(const char *in, size_t n, struct tbuf *out)
{
	struct tbuf t = { 0 };
	size_t i = 0;

	/* a leading "./" or "../" becomes "/" */
	if (n >= 2 && in[0] == '.' && in[1] == '/')
		i = 2;
	else if (n >= 3 && in[0] == '.' && in[1] == '.' && in[2] == '/')
		i = 3;
	if (i > 0)
		tbuf_addc(&t, '/');
	tbuf_add(&t, in + i, n - i);
	i = 0;
	while (i < t.len) {
		const char *r = t.p + i;
		size_t left = t.len - i, seg;

		if (left >= 2 && r[0] == '/' && r[1] == '.' && (left == 2 || r[2] == '/')) {
			/* "/." or "/./" -> "/" */
			i += left == 2 ? 1 : 2;
			t.p[i] = '/';
			continue;
		}
		if (left >= 3 && r[0] == '/' && r[1] == '.' && r[2] == '.' && (left == 3 || r[3] == '/')) {
			/* "/.." or "/../" -> "/", and the output's last segment goes */
			i += left == 3 ? 2 : 3;
			t.p[i] = '/';
			while (out->len > 0 && out->p[out->len - 1] != '/')
				out->len--;
			if (out->len > 0)
				out->len--;
			continue;
		}
		seg = r[0] == '/' ? 1 : 0;
		while (seg < left && r[seg] != '/')
			seg++;
		tbuf_add(out, r, seg);
		i += seg;
	}
	tbuf_free(&t);
}

/* HTML.pm's target_uri(): r resolved against base ("" for none). */
static char *uri_target(const char *base, const char *r)
{
	struct uri_split b, u;
	struct tbuf out = { 0 }, path = { 0 };
	const char *scheme = NULL, *auth = NULL, *query = NULL;
	size_t scheme_len = 0, auth_len = 0, query_len = 0;

	uri_split(base, &b);
	uri_split(r, &u);
	/* not strict: "http:foo" is relative to an http base */
	if (u.scheme != NULL && b.scheme != NULL && u.scheme_len == b.scheme_len &&
	    memcmp(u.scheme, b.scheme, u.scheme_len) == 0)
		u.scheme = NULL;
	if (u.scheme != NULL || u.auth != NULL) {
		scheme = u.scheme != NULL ? u.scheme : b.scheme;
		scheme_len = u.scheme != NULL ? u.scheme_len : b.scheme_len;
		auth = u.auth;
		auth_len = u.auth_len;
		uri_remove_dots(u.path, u.path_len, &path);
		query = u.query;
		query_len = u.query_len;
	} else {
		if (u.path_len == 0) {
			tbuf_add(&path, b.path, b.path_len);
			query = u.query != NULL ? u.query : b.query;
			query_len = u.query != NULL ? u.query_len : b.query_len;
		} else if (u.path[0] == '/') {
			uri_remove_dots(u.path, u.path_len, &path);
			query = u.query;
			query_len = u.query_len;
		} else {
			/* _merge_uri() */
			struct tbuf merged = { 0 };
			size_t keep = b.path_len;

			if (b.auth != NULL && b.path_len == 0) {
				tbuf_addc(&merged, '/');
			} else {
				while (keep > 0 && b.path[keep - 1] != '/')
					keep--;
				tbuf_add(&merged, b.path, keep);
			}
			tbuf_add(&merged, u.path, u.path_len);
			uri_remove_dots(merged.p, merged.len, &path);
			tbuf_free(&merged);
			query = u.query;
			query_len = u.query_len;
		}
		auth = b.auth;
		auth_len = b.auth_len;
		scheme = b.scheme;
		scheme_len = b.scheme_len;
	}
	if (scheme != NULL && scheme_len > 0) {
		tbuf_add(&out, scheme, scheme_len);
		tbuf_addc(&out, ':');
	} else if (auth != NULL) {
		/* not in the RFC: what mail readers make of "//www.example.com" */
		size_t d = 3;

		if (starts_nocase(auth, auth_len, "www") || starts_nocase(auth, auth_len, "ftp")) {
			while (d < auth_len && auth[d] >= '0' && auth[d] <= '9')
				d++;
			if (d < auth_len && auth[d] == '.')
				tbuf_adds(&out, starts_nocase(auth, auth_len, "www") ? "http:" : "ftp:");
		}
	}
	if (auth != NULL) {
		tbuf_add(&out, "//", 2);
		tbuf_add(&out, auth, auth_len);
	}
	tbuf_add(&out, path.p, path.len);
	if (query != NULL) {
		tbuf_addc(&out, '?');
		tbuf_add(&out, query, query_len);
	}
	if (u.frag != NULL) {
		tbuf_addc(&out, '#');
		tbuf_add(&out, u.frag, u.frag_len);
	}
	tbuf_free(&path);
	return tbuf_take(&out);
}

/* HTML.pm's push_uri(): trimmed, cut, resolved against <base> (unless
 * !resolve), kept once. */
static void html_push(struct html *h, const char *u, bool resolve)
{
	struct build *bd = h->bd;
	size_t n = strlen(u), l;
	char *s, *target;

	while (n > 0 && (l = space_len(u, n)) > 0) {
		u += l;
		n -= l;
	}
	while (n > 0) {
		size_t back = 1;

		while (back < n && back < 3 && ((unsigned char)u[n - back] & 0xc0) == 0x80)
			back++;
		if (space_len(u + n - back, back) != back)
			break;
		n -= back;
	}
	if (n > MSGTEXT_URI_LEN_MAX) {
		n = utf8_floor(u, n, MSGTEXT_URI_LEN_MAX);
		truncated(bd);
	}
	if (n == 0)
		return;
	s = xstrndup(u, n);
	if (!resolve || starts_nocase(s, n, "data:") || starts_nocase(s, n, "mailto:") ||
	    starts_nocase(s, n, "file:") || starts_nocase(s, n, "cid:") || starts_nocase(s, n, "tel:")) {
		target = s;
	} else {
		target = uri_target(h->base != NULL ? h->base : "", s);
		free(s);
	}
	if (*target == '\0' || g_hash_table_contains(bd->html_seen, target)) {
		free(target);
		return;
	}
	if (bd->html_uris.n >= MSGTEXT_URIS_MAX) {
		truncated(bd);
		free(target);
		return;
	}
	strvec_push(&bd->html_uris, target);
	g_hash_table_add(bd->html_seen, target);
}

static void html_push_uri(struct html *h, const char *u)
{
	html_push(h, u, true);
}

/* <base href>: kept for later relative URIs when it is http(s) or ftp,
 * a file name ("name.ext" ending it) dropped, ending in "/". */
static void html_set_base(struct html *h, const char *href)
{
	char *b;
	size_t n, i, host;

	while (*href != '\0' && space_len(href, strlen(href)) > 0)
		href += space_len(href, strlen(href));
	if (!starts_nocase(href, strlen(href), "http:") && !starts_nocase(href, strlen(href), "https:") &&
	    !starts_nocase(href, strlen(href), "ftp:"))
		return;
	b = xstrdup(href);
	n = strlen(b);
	while (n > 0 && is_ascii_space((unsigned char)b[n - 1]))
		n--;
	/* scheme ":" up to two "/", a host, "/": a file name may follow */
	i = strcspn(b, ":") + 1;
	for (int k = 0; k < 2 && i < n && b[i] == '/'; k++)
		i++;
	host = strcspn(b + i, "/");
	if (host > 0 && i + host < n) {
		size_t tail = i + host + 1, e = n, s;

		while (e > tail && b[e - 1] != '/' && b[e - 1] != '.')
			e--;
		if (n - e >= 2 && n - e <= 4 && e > tail && b[e - 1] == '.') {
			s = e - 1;
			while (s > tail && b[s - 1] != '/' && b[s - 1] != '.')
				s--;
			if (s < e - 1)
				n = s;
		}
	}
	b = xrealloc(b, n + 2);
	if (n == 0 || b[n - 1] != '/')
		b[n++] = '/';
	b[n] = '\0';
	free(h->base);
	h->base = b;
}

/* <meta http-equiv=refresh content="5; url=...">: the URL. */
static void html_meta_refresh(struct html *h, const char *content)
{
	const char *p = NULL;
	char *u;

	/* after the last "url =" (HTML.pm strips greedily up to it) */
	for (const char *s = content; *s != '\0'; s++) {
		const char *q = s + 3;

		if (strncasecmp(s, "url", 3) != 0 ||
		    (s > content && (is_alnum((unsigned char)s[-1]) || s[-1] == '_')))
			continue;
		while (is_ascii_space((unsigned char)*q))
			q++;
		if (*q != '=')
			continue;
		q++;
		while (is_ascii_space((unsigned char)*q))
			q++;
		p = q;
	}
	if (p == NULL)
		return;
	u = xstrdup(p);
	/* and up to a ';' */
	char *semi = strchr(u, ';');

	if (semi != NULL) {
		while (semi > u && is_ascii_space((unsigned char)semi[-1]))
			semi--;
		*semi = '\0';
	}
	html_push_uri(h, u);
	free(u);
}

/* HTML.pm's html_uri(), for a start tag. */
static void html_tag_uris(struct html *h, const struct html_tag *tag)
{
	static const char *const bg[] = { "body", "table", "tr", "td" };
	static const char *const href[] = { "a", "area", "link" };
	static const char *const src[] = { "img", "frame", "iframe", "embed", "script", "bgsound" };
	struct tbuf v = { 0 }, w = { 0 };
	const char *n = tag->name;

	if (name_in(n, bg, N_ELEMENTS(bg))) {
		if (html_attr(tag, "background", &v))
			html_push_uri(h, v.p);
	} else if (name_in(n, href, N_ELEMENTS(href))) {
		if (html_attr(tag, "href", &v)) {
			/* a byte-order mark inside the URL is not there for a reader */
			char *u;

			for (const char *p = v.p; *p != '\0'; p++) {
				if (strncmp(p, "\xef\xbb\xbf", 3) == 0)
					p += 2;
				else
					tbuf_addc(&w, *p);
			}
			u = tbuf_take(&w);
			html_push_uri(h, u);
			/* HTML.pm also files an anchor's href as it is, for its
			 * anchor text: uri rules see that too */
			if (strcmp(n, "a") == 0)
				html_push(h, u, false);
			free(u);
		}
		if (strcmp(n, "a") == 0 && html_attr(tag, "data-saferedirecturl", &v))
			html_push_uri(h, v.p);
	} else if (name_in(n, src, N_ELEMENTS(src))) {
		if (html_attr(tag, "src", &v))
			html_push_uri(h, v.p);
	} else if (strcmp(n, "form") == 0) {
		if (html_attr(tag, "action", &v))
			html_push_uri(h, v.p);
	} else if (strcmp(n, "base") == 0) {
		if (html_attr(tag, "href", &v) && *v.p != '\0') {
			html_push_uri(h, v.p);
			html_set_base(h, v.p);
		}
	} else if (strcmp(n, "meta") == 0) {
		if (html_attr(tag, "http-equiv", &w) && contains_nocase(w.p, "refresh") &&
		    html_attr(tag, "content", &v))
			html_meta_refresh(h, v.p);
	}
	tbuf_free(&v);
	tbuf_free(&w);
}

/* The elements whose content HTML::Parser reads as text, tags and all:
 * dropped (script, style), text with entities (textarea, title), text as
 * it is (iframe, xmp, and plaintext, which runs to the end). */
enum html_literal { HTML_NOT_LITERAL, HTML_LITERAL_DROP, HTML_LITERAL_TEXT, HTML_LITERAL_RAW };

static enum html_literal html_literal_kind(const char *name)
{
	if (strcmp(name, "script") == 0 || strcmp(name, "style") == 0)
		return HTML_LITERAL_DROP;
	if (strcmp(name, "textarea") == 0 || strcmp(name, "title") == 0)
		return HTML_LITERAL_TEXT;
	if (strcmp(name, "iframe") == 0 || strcmp(name, "xmp") == 0 || strcmp(name, "plaintext") == 0)
		return HTML_LITERAL_RAW;
	return HTML_NOT_LITERAL;
}

/* Where such content ends: at its end tag, or at the end of the text
 * (HTML.pm closes an open script or style there). */
static const char *html_skip_literal(const char *p, const char *end, const char *name)
{
	size_t l = strlen(name);

	while (p < end) {
		const char *lt = memchr(p, '<', (size_t)(end - p));

		if (lt == NULL)
			break;
		if ((size_t)(end - lt) >= l + 2 && lt[1] == '/' && strncasecmp(lt + 2, name, l) == 0 &&
		    ((size_t)(end - lt) == l + 2 || !is_alnum((unsigned char)lt[l + 2])))
			return lt;
		p = lt + 1;
	}
	return end;
}

/* Markup at p (p[0] == '<') that is not a tag: a comment, a declaration
 * or a processing instruction; its end in *end_r, or false when p is
 * text. */
static bool html_other_markup(const char *p, const char *end, const char **end_r)
{
	const char *q;

	if (end - p >= 4 && memcmp(p, "<!--", 4) == 0) {
		/* an unclosed comment hides the rest, as it does in a browser */
		for (q = p + 4; q + 3 <= end; q++)
			if (memcmp(q, "-->", 3) == 0) {
				*end_r = q + 3;
				return true;
			}
		*end_r = end;
		return true;
	}
	if (end - p >= 2 && (p[1] == '!' || p[1] == '?')) {
		q = memchr(p, '>', (size_t)(end - p));
		*end_r = q != NULL ? q + 1 : end;
		return true;
	}
	return false;
}

/* Render HTML text (UTF-8) as HTML.pm does, appending to out; its URIs go
 * to bd->html_uris. */
static void html_render(struct build *bd, const char *src, size_t n, struct tbuf *out)
{
	struct html h = { .bd = bd, .out = out };
	struct html_tag tag;
	struct tbuf in = { 0 };
	const char *p, *end, *text;

	/* curly double quotes would spoil attribute parsing (HTML.pm) */
	for (size_t i = 0; i < n; i++) {
		if (i + 2 < n && memcmp(src + i, "\xe2\x80", 2) == 0 &&
		    ((unsigned char)src[i + 2] == 0x9c || (unsigned char)src[i + 2] == 0x9d)) {
			tbuf_addc(&in, '"');
			i += 2;
		} else {
			tbuf_addc(&in, src[i]);
		}
	}
	p = text = in.p;
	end = in.p + in.len;
	while (p != NULL && p < end) {
		const char *lt = memchr(p, '<', (size_t)(end - p)), *next;
		bool is_tag;

		if (lt == NULL)
			break;
		is_tag = (lt + 1 < end && is_alpha((unsigned char)lt[1])) ||
			 (lt + 2 < end && lt[1] == '/' && is_alpha((unsigned char)lt[2]));
		if (is_tag) {
			/* an unclosed tag is the rest: HTML::Parser reports it
			 * as a comment at the end, which renders as nothing */
			if (!html_parse_tag(lt, end, &tag, &next)) {
				if (lt > text)
					html_text(&h, text, (size_t)(lt - text), true);
				text = p = end;
				break;
			}
		} else if (!html_other_markup(lt, end, &next)) {
			p = lt + 1;
			continue;
		}
		if (lt > text)
			html_text(&h, text, (size_t)(lt - text), true);
		text = p = next;
		if (!is_tag || tag.name[0] == '\0')
			continue;
		const char *space = html_tag_space(tag.name);

		if (space != NULL)
			html_space(&h, space);
		if (tag.end)
			continue;
		html_tag_uris(&h, &tag);
		enum html_literal lit = html_literal_kind(tag.name);

		if (lit == HTML_NOT_LITERAL)
			continue;
		next = strcmp(tag.name, "plaintext") == 0 ? end : html_skip_literal(p, end, tag.name);
		if (lit != HTML_LITERAL_DROP && next > p)
			html_text(&h, p, (size_t)(next - p), lit == HTML_LITERAL_TEXT);
		text = p = next;
	}
	if (text < end)
		html_text(&h, text, (size_t)(end - text), true);
	free(h.base);
	tbuf_free(&h.scratch);
	tbuf_free(&in);
}

/* ---------------------------------------------------------------- leaves */

/* A leaf part: listed, and its text added to body and rawbody. */
static void leaf_add(struct build *bd, GMimeObject *obj)
{
	struct msgtext *t = bd->t;
	struct msgtext_part *part = &t->parts[t->n_parts++];
	const char *type;
	bool render, raw, cut = false;
	size_t body_left, raw_left, limit;
	struct tbuf text = { 0 };

	part->type = object_mime_type(obj);
	part->filename = part_filename(obj);
	type = name_is_html(part->filename) ? "text/html" : part->type;
	render = strcmp(type, "text/plain") == 0 || strcmp(type, "text/html") == 0;
	raw = (strncmp(type, "text", 4) == 0 && !is_alnum((unsigned char)type[4]) && type[4] != '_') ||
	      (strncmp(type, "message", 7) == 0 && !is_alnum((unsigned char)type[7]) && type[7] != '_');
	raw = raw && strcmp(part->type, "text/calendar") != 0;
	/* SpamAssassin: a blank line between parts, whatever they are */
	if (bd->body.len > 0 && bd->body.len < MSGTEXT_TEXT_MAX)
		tbuf_addc(&bd->body, '\n');
	if (!render && !raw)
		return;
	body_left = render ? MSGTEXT_TEXT_MAX - bd->body.len : 0;
	raw_left = raw ? MSGTEXT_TEXT_MAX - bd->rawbody_octets : 0;
	limit = body_left > raw_left ? body_left : raw_left;
	if (limit == 0) {
		truncated(bd);
		return;
	}
	part_decode(obj, limit, &text, &cut);
	if (cut)
		truncated(bd);
	if (raw)
		rawbody_add(bd, text.p != NULL ? text.p : "", text.len);
	if (render && text.len > 0) {
		struct tbuf rendered = { 0 };
		const struct tbuf *from = &text;
		size_t take;

		if (strcmp(type, "text/html") == 0) {
			html_render(bd, text.p, text.len, &rendered);
			from = &rendered;
		}
		take = utf8_floor(from->p, from->len, body_left);
		if (take < from->len)
			truncated(bd);
		tbuf_add(&bd->body, from->p, take);
		tbuf_free(&rendered);
	}
	tbuf_free(&text);
}

/* A text/plain leaf of bytes GMime found no parts in: all of a body it
 * does not take for a message, or a multipart's text when no boundary
 * matched (SpamAssassin reads both as plain text too). */
static void leaf_add_bytes(struct build *bd, const char *data, size_t len)
{
	struct msgtext *t = bd->t;
	struct tbuf text = { 0 };
	struct text_conv conv;
	size_t body_left;

	t->parts[t->n_parts].type = xstrdup("text/plain");
	t->parts[t->n_parts++].filename = NULL;
	if (bd->body.len > 0 && bd->body.len < MSGTEXT_TEXT_MAX)
		tbuf_addc(&bd->body, '\n');
	body_left = MSGTEXT_TEXT_MAX - bd->body.len;
	conv_init(&conv, NULL);
	if (conv_feed(&conv, data, len, true, &text, MSGTEXT_TEXT_MAX))
		truncated(bd);
	conv_free(&conv);
	crlf_to_lf(&text, 0);
	blank_lines_cap(&text);
	rawbody_add(bd, text.p != NULL ? text.p : "", text.len);
	if (text.len > body_left)
		truncated(bd);
	tbuf_add(&bd->body, text.p, utf8_floor(text.p != NULL ? text.p : "", text.len, body_left));
	tbuf_free(&text);
}

/* Depth first, as SpamAssassin's find_parts(). */
static void walk(struct build *bd, GMimeObject *obj, unsigned depth)
{
	if (obj == NULL)
		return;
	if (bd->nodes >= MSGTEXT_PARTS_MAX) {
		truncated(bd);
		return;
	}
	bd->nodes++;
	if (GMIME_IS_MULTIPART(obj)) {
		GMimeMultipart *mp = GMIME_MULTIPART(obj);
		int n = g_mime_multipart_get_count(mp);

		if (depth >= MSGTEXT_DEPTH_MAX && n > 0) {
			truncated(bd);
			return;
		}
		if (n == 0) {
			const char *text = g_mime_multipart_get_prologue(mp);

			leaf_add_bytes(bd, text != NULL ? text : "", text != NULL ? strlen(text) : 0);
			return;
		}
		for (int i = 0; i < n; i++) {
			if (bd->nodes >= MSGTEXT_PARTS_MAX) {
				truncated(bd);
				return;
			}
			walk(bd, g_mime_multipart_get_part(mp, i), depth + 1);
		}
		return;
	}
	if (GMIME_IS_MESSAGE_PART(obj)) {
		GMimeMessage *inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));
		GMimeObject *top = inner != NULL ? g_mime_message_get_mime_part(inner) : NULL;

		if (top != NULL) {
			if (depth >= MSGTEXT_DEPTH_MAX) {
				truncated(bd);
				return;
			}
			walk(bd, top, depth + 1);
			return;
		}
	}
	leaf_add(bd, obj);
}

/* ------------------------------------------------------------------ body */

/* SpamAssassin's white-space rules on $text: a run holding two or more
 * "\n" is a paragraph break (the run's blanks before its first and after
 * its last "\n" each one space), any other run one space; NUL a line
 * break. */
static void body_fold(const char *s, size_t n, struct tbuf *out)
{
	size_t i = 0;

	while (i < n) {
		size_t l = space_len(s + i, n - i), j, first = 0, last = 0, breaks = 0;

		if (l == 0) {
			/* a run of printable ASCII at once */
			for (j = i; j < n && (unsigned char)s[j] > ' ' && (unsigned char)s[j] < 0x80; j++)
				;
			if (j > i) {
				tbuf_add(out, s + i, j - i);
				i = j;
				continue;
			}
			tbuf_addc(out, s[i] == '\0' ? '\n' : s[i]);
			i++;
			continue;
		}
		for (j = i; j < n && (l = space_len(s + j, n - j)) > 0; j += l) {
			if (s[j] != '\n')
				continue;
			if (breaks++ == 0)
				first = j;
			last = j;
		}
		if (breaks < 2) {
			tbuf_addc(out, ' ');
		} else {
			if (first > i)
				tbuf_addc(out, ' ');
			tbuf_addc(out, '\n');
			if (last + 1 < j)
				tbuf_addc(out, ' ');
		}
		i = j;
	}
}

/* split_into_array_of_short_lines(): after every "\n", and a line longer
 * than MSGTEXT_SA_LINE after its last space at or before that length
 * (else at it, a character kept whole). */
static void body_split(struct strvec *v, const char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		const char *nl = memchr(s + i, '\n', n - i);
		size_t line = nl != NULL ? (size_t)(nl - (s + i)) + 1 : n - i;

		while (line > MSGTEXT_SA_LINE) {
			size_t k = MSGTEXT_SA_LINE + 1, take;

			while (k > 0 && s[i + k - 1] != ' ')
				k--;
			take = k > 0 ? k : utf8_floor(s + i, line, MSGTEXT_SA_LINE);
			if (take == 0)
				take = utf8_step(s + i, line);
			strvec_push(v, xstrndup(s + i, take));
			i += take;
			line -= take;
		}
		strvec_push(v, xstrndup(s + i, line));
		i += line;
	}
}

static const char *last_subject(const struct msgtext *t)
{
	const char *subject = "";

	for (size_t i = 0; i < t->n_headers; i++)
		if (strcasecmp(t->headers[i].name, "Subject") == 0)
			subject = t->headers[i].decoded;
	return subject;
}

static void body_finish(struct build *bd)
{
	struct tbuf all = { 0 };
	struct strvec v = { 0 };

	tbuf_adds(&all, last_subject(bd->t));
	tbuf_addc(&all, '\n');
	body_fold(bd->body.p != NULL ? bd->body.p : "", bd->body.len, &all);
	body_split(&v, all.p, all.len);
	tbuf_free(&all);
	bd->t->body = v.v;
	bd->t->n_body = v.n;
}

/* ------------------------------------------------------------------ URIs */

/* One more variant of the URI being canonicalised (kept once later). */
static void uri_emit(struct strvec *out, const char *u, size_t n)
{
	if (n > 0)
		strvec_push(out, xstrndup(u, n));
}

static void uri_emit_str(struct strvec *out, const char *u)
{
	uri_emit(out, u, strlen(u));
}

/* Util.pm's url_encode() (which decodes, despite its name): %21-%7E
 * spelled out (but %20 and %7F), and outside %XX the octets 0x00-0x20,
 * 0x7F-0xFF, '"', '%', '<' and '>' %-encoded. */
static char *uri_percent_fold(const char *u)
{
	struct tbuf out = { 0 };

	for (const char *p = u; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '%' && is_hex((unsigned char)p[1]) && is_hex((unsigned char)p[2])) {
			unsigned v = hex_value((unsigned char)p[1]) << 4 | hex_value((unsigned char)p[2]);

			if (v > 0x20 && v < 0x7f)
				tbuf_addc(&out, (char)v);
			else
				tbuf_add(&out, p, 3);
			p += 2;
		} else if (c <= 0x20 || c >= 0x7f || c == '"' || c == '%' || c == '<' || c == '>') {
			char hex[4];

			snprintf(hex, sizeof(hex), "%%%02x", c);
			tbuf_add(&out, hex, 3);
		} else {
			tbuf_addc(&out, (char)c);
		}
	}
	return tbuf_take(&out);
}

static bool has_percent_hex(const char *u)
{
	for (const char *p = strchr(u, '%'); p != NULL; p = strchr(p + 1, '%'))
		if (is_hex((unsigned char)p[1]) && is_hex((unsigned char)p[2]))
			return true;
	return false;
}

/* uri_list_canonicalize()'s "&#NN;" rules: decimal 33-126 and hex
 * 21-29, 30-6F, 70-7E (its patterns, gaps and all) as the character, and
 * the Unicode full stops as ".". */
static char *uri_numeric_refs(const char *u)
{
	struct tbuf out = { 0 };

	for (const char *p = u; *p != '\0'; p++) {
		const char *q = p + 2;
		unsigned v = 0;
		size_t digits = 0;
		bool hex;

		if (p[0] != '&' || p[1] != '#') {
			tbuf_addc(&out, *p);
			continue;
		}
		hex = *q == 'x';
		if (hex)
			q++;
		while (*q == '0')
			q++;
		while (digits < 6 && (hex ? is_hex((unsigned char)*q) : *q >= '0' && *q <= '9')) {
			v = v * (hex ? 16 : 10) + hex_value((unsigned char)*q);
			q++;
			digits++;
		}
		if (*q == ';' && digits > 0 &&
		    ((!hex && v >= 33 && v <= 126) ||
		     (hex && ((v >= 0x21 && v <= 0x29) || (v >= 0x30 && v <= 0x7e))))) {
			tbuf_addc(&out, (char)v);
			p = q;
			continue;
		}
		/* the dots: &#x2e; &#12290; &#x3002; &#65294; &#xff0e; &#65377; &#xff61; */
		static const char *const dots[] = { "&#x2e;", "&#12290;", "&#x3002;", "&#65294;",
						    "&#xff0e;", "&#65377;", "&#xff61;" };
		size_t k;

		for (k = 0; k < N_ELEMENTS(dots); k++)
			if (strncasecmp(p, dots[k], strlen(dots[k])) == 0)
				break;
		if (k < N_ELEMENTS(dots)) {
			tbuf_addc(&out, '.');
			p += strlen(dots[k]) - 1;
			continue;
		}
		tbuf_addc(&out, *p);
	}
	return tbuf_take(&out);
}

static void uri_canon(struct strvec *out, const char *uri, unsigned depth);

/* decode_ulong_to_ip(): the first four octets of the number in hex. */
static void uri_ulong_ip(unsigned long long v, char out[16])
{
	char hex[24];
	unsigned o[4];

	snprintf(hex, sizeof(hex), "%08llx", v);
	for (int i = 0; i < 4; i++)
		o[i] = hex_value((unsigned char)hex[2 * i]) << 4 | hex_value((unsigned char)hex[2 * i + 1]);
	snprintf(out, 16, "%u.%u.%u.%u", o[0], o[1], o[2], o[3]);
}

static unsigned long long parse_ull(const char *s, size_t n, int base)
{
	unsigned long long v = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned d = hex_value((unsigned char)s[i]);

		if (v > (ULLONG_MAX - d) / (unsigned)base)
			return ULLONG_MAX;
		v = v * (unsigned)base + d;
	}
	return v;
}

/* One chunk of a numeric host ("0x7f." "010." "1") as
 * uri_list_canonicalize() rewrites it: hex as decimal, then a short octal
 * number as decimal, leading zeros off (its rules, "0." -> "." and all). */
static void uri_ip_chunk(const char *c, size_t n, struct tbuf *out)
{
	char buf[32];
	size_t dot = n > 0 && c[n - 1] == '.' ? 1 : 0, digits = n - dot, z = 0, o;
	const char *d = c;

	if (digits > 2 && c[0] == '0' && (c[1] | 0x20) == 'x') {
		snprintf(buf, sizeof(buf), "%llu", parse_ull(c + 2, digits - 2, 16));
		d = buf;
		digits = strlen(buf);
	}
	while (z < digits && d[z] == '0')
		z++;
	o = digits - z;
	if (z > 0 && o > 0 &&
	    ((o <= 3 && d[z] >= '1' && d[z] <= '3') || (o <= 2 && d[z] >= '4' && d[z] <= '7')) &&
	    strspn(d + z, "01234567") >= o) {
		char oct[32];

		snprintf(oct, sizeof(oct), "%llu", parse_ull(d + z, o, 8));
		tbuf_adds(out, oct);
	} else {
		tbuf_add(out, d + z, o);
	}
	tbuf_add(out, c + n - dot, dot);
}

/* A host of four numbers (decimal or 0x hex) with dots. */
static bool uri_host_four(const char *h, size_t n, size_t cut[4])
{
	size_t part = 0, i = 0;

	while (part < 4) {
		size_t s = i;

		if (i + 1 < n && h[i] == '0' && (h[i + 1] | 0x20) == 'x') {
			i += 2;
			while (i < n && is_hex((unsigned char)h[i]))
				i++;
			if (i == s + 2)
				return false;
		} else {
			while (i < n && h[i] >= '0' && h[i] <= '9')
				i++;
			if (i == s)
				return false;
		}
		if (part < 3) {
			if (i >= n || h[i] != '.')
				return false;
			i++;
		}
		cut[part++] = i;
	}
	return i == n;
}

/* The numeric host variants: dotted parts, one hex number, one decimal. */
static void uri_numeric_host(struct strvec *out, const char *proto, const char *host,
			     const char *rest)
{
	size_t n = strlen(host), cut[4];
	struct tbuf t = { 0 };
	char ip[16];

	tbuf_adds(&t, proto);
	if (uri_host_four(host, n, cut)) {
		size_t from = 0;

		for (int i = 0; i < 4; i++) {
			uri_ip_chunk(host + from, cut[i] - from, &t);
			from = cut[i];
		}
	} else if (n > 2 && host[0] == '0' && (host[1] | 0x20) == 'x' &&
		   strspn(host + 2, "0123456789abcdefABCDEF") == n - 2) {
		size_t digits = n - 2 > 8 ? 8 : n - 2;

		uri_ulong_ip(parse_ull(host + n - digits, digits, 16), ip);
		tbuf_adds(&t, ip);
	} else if (n > 0 && strspn(host, "0123456789") == n) {
		uri_ulong_ip(parse_ull(host, n, 10), ip);
		tbuf_adds(&t, ip);
	} else {
		tbuf_free(&t);
		return;
	}
	tbuf_adds(&t, rest);
	uri_emit(out, t.p, t.len);
	tbuf_free(&t);
}

static void uri_emit3(struct strvec *out, const char *a, const char *b, const char *c)
{
	char *s = xasprintf("%s%s%s", a, b, c);

	uri_emit_str(out, s);
	free(s);
}

/* The variants of an http(s) URI's host part. */
static void uri_canon_host(struct strvec *out, const char *nuri, unsigned depth)
{
	size_t plen = starts_nocase(nuri, strlen(nuri), "https://") ? 8 : 7;
	const char *a = nuri + plen, *hs = a, *he;
	char *proto, *host, *rest;
	size_t at = strcspn(a, "@/?#");

	/* ([^@/?#]*@)? then a host of [^/?#:]+ */
	if (a[at] == '@' && strcspn(a + at + 1, "/?#:") > 0)
		hs = a + at + 1;
	he = hs + strcspn(hs, "/?#:");
	if (he == hs)
		return;
	proto = xstrndup(nuri, plen);
	host = xstrndup(hs, (size_t)(he - hs));
	rest = xstrdup(he);
	if (rest[0] == ':') {
		bool http = plen == 7;
		const char *port = http ? ":80" : ":443";
		size_t pl = strlen(port);

		if (strncmp(rest, port, pl) == 0 && !is_alnum((unsigned char)rest[pl]) && rest[pl] != '_')
			uri_emit3(out, proto, host, rest + pl);
	}
	/* controls and spaces in the host, which browsers drop */
	size_t w = 0;

	for (size_t r = 0; host[r] != '\0'; r++)
		if ((unsigned char)host[r] > 0x20)
			host[w++] = host[r];
	if (host[w] != '\0') {
		host[w] = '\0';
		uri_emit3(out, proto, host, rest);
	}
	/* a redirector: the URI it sends to, one level down */
	for (const char *p = rest; *p != '\0' && depth < URI_REDIRECT_DEPTH; p++) {
		if (!starts_nocase(p, strlen(p), "http:") && !starts_nocase(p, strlen(p), "https:"))
			continue;
		char *target = xstrndup(p, strcspn(p, "&#"));

		if (strchr(target, '.') != NULL)
			uri_canon(out, target, depth + 1);
		free(target);
		break;
	}
	/* "www.example.com@evil.example" */
	char *hat = strchr(host, '@');

	if (hat != NULL && hat > host) {
		memmove(host, hat + 1, strlen(hat + 1) + 1);
		uri_emit3(out, proto, host, rest);
	}
	/* "visit http://example.com!" */
	size_t hl = strlen(host);

	while (hl > 0 && !is_alnum((unsigned char)host[hl - 1]))
		hl--;
	if (hl < strlen(host)) {
		host[hl] = '\0';
		uri_emit3(out, proto, host, rest);
	}
	uri_numeric_host(out, proto, host, rest);
	free(proto);
	free(host);
	free(rest);
}

/* The variants of a mailto: (or bare address) URI. */
static void uri_canon_mail(struct strvec *out, const char *u)
{
	const char *at = strchr(u, '@');
	size_t q;

	if (at == NULL || at == u)
		return;
	q = strcspn(at + 1, "?");
	if (at[1 + q] == '?' && q > 0)
		uri_emit(out, u, (size_t)(at + 1 + q - u));
	q = strcspn(at + 1, "?&");
	if (at[1 + q] == '&' && q > 0)
		uri_emit(out, u, (size_t)(at + 1 + q - u));
	if (strstr(u, "%20") != NULL) {
		const char *p = u;

		if (strncasecmp(p, "mailto:", 7) == 0)
			p += 7;
		while (strncmp(p, "%20", 3) == 0)
			p += 3;
		const char *pat = strchr(p, '@');
		size_t local = pat != NULL ? (size_t)(pat - p) : 0;
		size_t dom = pat != NULL ? strcspn(pat + 1, "?&%") : 0;

		if (local > 0 && dom > 0 && memchr(p, '@', local) == NULL) {
			char *s = xasprintf("mailto:%.*s", (int)(local + 1 + dom), p);

			uri_emit_str(out, s);
			free(s);
		}
	}
	/* mailto:"Foo Bar" <foo.bar@example.com> */
	const char *lt = u + strcspn(u, "?&<");

	if (*lt == '<') {
		const char *gt = strchr(lt, '>');
		const char *a2 = memchr(lt, '@', gt != NULL ? (size_t)(gt - lt) : 0);

		if (gt != NULL && a2 != NULL && a2 > lt + 1 && gt > a2 + 1 &&
		    memchr(lt + 1, '>', (size_t)(a2 - lt - 1)) == NULL) {
			char *s = xasprintf("mailto:%.*s", (int)(gt - lt - 1), lt + 1);

			uri_emit_str(out, s);
			free(s);
		}
	}
}

/* The URI without line breaks and surrounding white space, malloc'd. */
static char *uri_trimmed(const char *uri)
{
	struct tbuf t = { 0 };
	size_t s = 0, n;
	char *u;

	for (const char *p = uri; *p != '\0'; p++)
		if (*p != '\n' && *p != '\r')
			tbuf_addc(&t, *p);
	u = tbuf_take(&t);
	n = strlen(u);
	while (s < n && is_ascii_space((unsigned char)u[s]))
		s++;
	while (n > s && is_ascii_space((unsigned char)u[n - 1]))
		n--;
	memmove(u, u + s, n - s);
	u[n - s] = '\0';
	return u;
}

static void replace(char **s, char *with)
{
	free(*s);
	*s = with;
}

/* uri_list_canonicalize()'s cooked form of a (non-mail) URI, malloc'd:
 * "\" as "/", "http:/x" as "http://x", %-decoded, a default scheme,
 * "/" before a query on a bare host, &#NN; decoded. */
static char *uri_cooked(const char *u)
{
	char *c = xstrdup(u);
	size_t sl, sch;

	for (char *p = c; *p != '\0'; p++)
		if (*p == '\\')
			*p = '/';
	sl = starts_nocase(c, strlen(c), "https:") ? 6 : starts_nocase(c, strlen(c), "http:") ? 5 : 0;
	if (sl > 0) {
		size_t slashes = 0;

		while (slashes < 2 && c[sl + slashes] == '/')
			slashes++;
		replace(&c, xasprintf("%.*s//%s", (int)sl, c, c + sl + slashes));
	}
	if (has_percent_hex(c))
		replace(&c, uri_percent_fold(c));
	/* no scheme: http:// as mail readers assume (ftp:// for ftp.) */
	sch = strspn(c, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_");
	if (sch == 0 || c[sch] != ':')
		replace(&c, xasprintf("%s%s", strncmp(c, "ftp.", 4) == 0 ? "ftp://" : "http://", c));
	/* http://example.com?x -> http://example.com/?x */
	if (starts_nocase(c, strlen(c), "http://") || starts_nocase(c, strlen(c), "https://")) {
		size_t pl = starts_nocase(c, strlen(c), "https://") ? 8 : 7;
		size_t hl = strcspn(c + pl, "/?#");

		if (hl > 0 && (c[pl + hl] == '?' || c[pl + hl] == '#'))
			replace(&c, xasprintf("%.*s/%s", (int)(pl + hl), c, c + pl + hl));
	}
	replace(&c, uri_numeric_refs(c));
	return c;
}

/* uri_list_canonicalize() on one URI: the URI itself, then its variants. */
static void uri_canon(struct strvec *out, const char *uri, unsigned depth)
{
	char *u = uri_trimmed(uri), *nuri;
	size_t n = strlen(u);
	const char *colon, *at;

	uri_emit(out, u, n);
	/* "#abc", "?x", "/image.gif": nothing to canonicalise */
	if (n <= 1 || strchr("#?&", u[0]) != NULL || (u[0] == '/' && u[1] != '/')) {
		free(u);
		return;
	}
	colon = strchr(u, ':');
	at = strchr(u, '@');
	if (strncasecmp(u, "mailto:", 7) == 0 || (at != NULL && (colon == NULL || colon > at))) {
		uri_canon_mail(out, u);
		free(u);
		return;
	}
	nuri = uri_cooked(u);
	if (strcmp(nuri, u) != 0)
		uri_emit_str(out, nuri);
	if (starts_nocase(nuri, strlen(nuri), "http://") || starts_nocase(nuri, strlen(nuri), "https://"))
		uri_canon_host(out, nuri, depth);
	free(nuri);
	free(u);
}

/* The top-level domains, lower case, IDNs in their xn-- form, sorted: what
 * SpamAssassin's rules updates list as util_rb_tld. Made from the public
 * suffix list (publicsuffix 20230209: the last label of every ICANN rule):
 *   sed -n '/BEGIN ICANN/,/END ICANN/p' public_suffix_list.dat | grep -v '^//'
 * then each label's IDNA form, sorted and unique. */
static const char *const tlds[] = {
	"aaa", "aarp", "abarth", "abb", "abbott", "abbvie", "abc", "able", "abogado",
	"abudhabi", "ac", "academy", "accenture", "accountant", "accountants", "aco", "actor",
	"ad", "ads", "adult", "ae", "aeg", "aero", "aetna", "af", "afl", "africa", "ag",
	"agakhan", "agency", "ai", "aig", "airbus", "airforce", "airtel", "akdn", "al",
	"alfaromeo", "alibaba", "alipay", "allfinanz", "allstate", "ally", "alsace", "alstom",
	"am", "amazon", "americanexpress", "americanfamily", "amex", "amfam", "amica",
	"amsterdam", "analytics", "android", "anquan", "anz", "ao", "aol", "apartments",
	"app", "apple", "aq", "aquarelle", "ar", "arab", "aramco", "archi", "army", "arpa",
	"art", "arte", "as", "asda", "asia", "associates", "at", "athleta", "attorney", "au",
	"auction", "audi", "audible", "audio", "auspost", "author", "auto", "autos",
	"avianca", "aw", "aws", "ax", "axa", "az", "azure", "ba", "baby", "baidu", "banamex",
	"bananarepublic", "band", "bank", "bar", "barcelona", "barclaycard", "barclays",
	"barefoot", "bargains", "baseball", "basketball", "bauhaus", "bayern", "bb", "bbc",
	"bbt", "bbva", "bcg", "bcn", "bd", "be", "beats", "beauty", "beer", "bentley",
	"berlin", "best", "bestbuy", "bet", "bf", "bg", "bh", "bharti", "bi", "bible", "bid",
	"bike", "bing", "bingo", "bio", "biz", "bj", "black", "blackfriday", "blockbuster",
	"blog", "bloomberg", "blue", "bm", "bms", "bmw", "bn", "bnpparibas", "bo", "boats",
	"boehringer", "bofa", "bom", "bond", "boo", "book", "booking", "bosch", "bostik",
	"boston", "bot", "boutique", "box", "br", "bradesco", "bridgestone", "broadway",
	"broker", "brother", "brussels", "bs", "bt", "build", "builders", "business", "buy",
	"buzz", "bv", "bw", "by", "bz", "bzh", "ca", "cab", "cafe", "cal", "call",
	"calvinklein", "cam", "camera", "camp", "canon", "capetown", "capital", "capitalone",
	"car", "caravan", "cards", "care", "career", "careers", "cars", "casa", "case",
	"cash", "casino", "cat", "catering", "catholic", "cba", "cbn", "cbre", "cbs", "cc",
	"cd", "center", "ceo", "cern", "cf", "cfa", "cfd", "cg", "ch", "chanel", "channel",
	"charity", "chase", "chat", "cheap", "chintai", "christmas", "chrome", "church", "ci",
	"cipriani", "circle", "cisco", "citadel", "citi", "citic", "city", "cityeats", "ck",
	"cl", "claims", "cleaning", "click", "clinic", "clinique", "clothing", "cloud",
	"club", "clubmed", "cm", "cn", "co", "coach", "codes", "coffee", "college", "cologne",
	"com", "comcast", "commbank", "community", "company", "compare", "computer", "comsec",
	"condos", "construction", "consulting", "contact", "contractors", "cooking",
	"cookingchannel", "cool", "coop", "corsica", "country", "coupon", "coupons",
	"courses", "cpa", "cr", "credit", "creditcard", "creditunion", "cricket", "crown",
	"crs", "cruise", "cruises", "cu", "cuisinella", "cv", "cw", "cx", "cy", "cymru",
	"cyou", "cz", "dabur", "dad", "dance", "data", "date", "dating", "datsun", "day",
	"dclk", "dds", "de", "deal", "dealer", "deals", "degree", "delivery", "dell",
	"deloitte", "delta", "democrat", "dental", "dentist", "desi", "design", "dev", "dhl",
	"diamonds", "diet", "digital", "direct", "directory", "discount", "discover", "dish",
	"diy", "dj", "dk", "dm", "dnp", "do", "docs", "doctor", "dog", "domains", "dot",
	"download", "drive", "dtv", "dubai", "dunlop", "dupont", "durban", "dvag", "dvr",
	"dz", "earth", "eat", "ec", "eco", "edeka", "edu", "education", "ee", "eg", "email",
	"emerck", "energy", "engineer", "engineering", "enterprises", "epson", "equipment",
	"er", "ericsson", "erni", "es", "esq", "estate", "et", "etisalat", "eu", "eurovision",
	"eus", "events", "exchange", "expert", "exposed", "express", "extraspace", "fage",
	"fail", "fairwinds", "faith", "family", "fan", "fans", "farm", "farmers", "fashion",
	"fast", "fedex", "feedback", "ferrari", "ferrero", "fi", "fiat", "fidelity", "fido",
	"film", "final", "finance", "financial", "fire", "firestone", "firmdale", "fish",
	"fishing", "fit", "fitness", "fj", "fk", "flickr", "flights", "flir", "florist",
	"flowers", "fly", "fm", "fo", "foo", "food", "foodnetwork", "football", "ford",
	"forex", "forsale", "forum", "foundation", "fox", "fr", "free", "fresenius", "frl",
	"frogans", "frontdoor", "frontier", "ftr", "fujitsu", "fun", "fund", "furniture",
	"futbol", "fyi", "ga", "gal", "gallery", "gallo", "gallup", "game", "games", "gap",
	"garden", "gay", "gb", "gbiz", "gd", "gdn", "ge", "gea", "gent", "genting", "george",
	"gf", "gg", "ggee", "gh", "gi", "gift", "gifts", "gives", "giving", "gl", "glass",
	"gle", "global", "globo", "gm", "gmail", "gmbh", "gmo", "gmx", "gn", "godaddy",
	"gold", "goldpoint", "golf", "goo", "goodyear", "goog", "google", "gop", "got", "gov",
	"gp", "gq", "gr", "grainger", "graphics", "gratis", "green", "gripe", "grocery",
	"group", "gs", "gt", "gu", "guardian", "gucci", "guge", "guide", "guitars", "guru",
	"gw", "gy", "hair", "hamburg", "hangout", "haus", "hbo", "hdfc", "hdfcbank", "health",
	"healthcare", "help", "helsinki", "here", "hermes", "hgtv", "hiphop", "hisamitsu",
	"hitachi", "hiv", "hk", "hkt", "hm", "hn", "hockey", "holdings", "holiday",
	"homedepot", "homegoods", "homes", "homesense", "honda", "horse", "hospital", "host",
	"hosting", "hot", "hoteles", "hotels", "hotmail", "house", "how", "hr", "hsbc", "ht",
	"hu", "hughes", "hyatt", "hyundai", "ibm", "icbc", "ice", "icu", "id", "ie", "ieee",
	"ifm", "ikano", "il", "im", "imamat", "imdb", "immo", "immobilien", "in", "inc",
	"industries", "infiniti", "info", "ing", "ink", "institute", "insurance", "insure",
	"int", "international", "intuit", "investments", "io", "ipiranga", "iq", "ir",
	"irish", "is", "ismaili", "ist", "istanbul", "it", "itau", "itv", "jaguar", "java",
	"jcb", "je", "jeep", "jetzt", "jewelry", "jio", "jll", "jm", "jmp", "jnj", "jo",
	"jobs", "joburg", "jot", "joy", "jp", "jpmorgan", "jprs", "juegos", "juniper",
	"kaufen", "kddi", "ke", "kerryhotels", "kerrylogistics", "kerryproperties", "kfh",
	"kg", "kh", "ki", "kia", "kids", "kim", "kinder", "kindle", "kitchen", "kiwi", "km",
	"kn", "koeln", "komatsu", "kosher", "kp", "kpmg", "kpn", "kr", "krd", "kred",
	"kuokgroup", "kw", "ky", "kyoto", "kz", "la", "lacaixa", "lamborghini", "lamer",
	"lancaster", "lancia", "land", "landrover", "lanxess", "lasalle", "lat", "latino",
	"latrobe", "law", "lawyer", "lb", "lc", "lds", "lease", "leclerc", "lefrak", "legal",
	"lego", "lexus", "lgbt", "li", "lidl", "life", "lifeinsurance", "lifestyle",
	"lighting", "like", "lilly", "limited", "limo", "lincoln", "linde", "link", "lipsy",
	"live", "living", "lk", "llc", "llp", "loan", "loans", "locker", "locus", "lol",
	"london", "lotte", "lotto", "love", "lpl", "lplfinancial", "lr", "ls", "lt", "ltd",
	"ltda", "lu", "lundbeck", "luxe", "luxury", "lv", "ly", "ma", "macys", "madrid",
	"maif", "maison", "makeup", "man", "management", "mango", "map", "market",
	"marketing", "markets", "marriott", "marshalls", "maserati", "mattel", "mba", "mc",
	"mckinsey", "md", "me", "med", "media", "meet", "melbourne", "meme", "memorial",
	"men", "menu", "merckmsd", "mg", "mh", "miami", "microsoft", "mil", "mini", "mint",
	"mit", "mitsubishi", "mk", "ml", "mlb", "mls", "mm", "mma", "mn", "mo", "mobi",
	"mobile", "moda", "moe", "moi", "mom", "monash", "money", "monster", "mormon",
	"mortgage", "moscow", "moto", "motorcycles", "mov", "movie", "mp", "mq", "mr", "ms",
	"msd", "mt", "mtn", "mtr", "mu", "museum", "music", "mutual", "mv", "mw", "mx", "my",
	"mz", "na", "nab", "nagoya", "name", "natura", "navy", "nba", "nc", "ne", "nec",
	"net", "netbank", "netflix", "network", "neustar", "new", "news", "next",
	"nextdirect", "nexus", "nf", "nfl", "ng", "ngo", "nhk", "ni", "nico", "nike", "nikon",
	"ninja", "nissan", "nissay", "nl", "no", "nokia", "northwesternmutual", "norton",
	"now", "nowruz", "nowtv", "np", "nr", "nra", "nrw", "ntt", "nu", "nyc", "nz", "obi",
	"observer", "office", "okinawa", "olayan", "olayangroup", "oldnavy", "ollo", "om",
	"omega", "one", "ong", "onion", "onl", "online", "ooo", "open", "oracle", "orange",
	"org", "organic", "origins", "osaka", "otsuka", "ott", "ovh", "pa", "page",
	"panasonic", "paris", "pars", "partners", "parts", "party", "passagens", "pay",
	"pccw", "pe", "pet", "pf", "pfizer", "pg", "ph", "pharmacy", "phd", "philips",
	"phone", "photo", "photography", "photos", "physio", "pics", "pictet", "pictures",
	"pid", "pin", "ping", "pink", "pioneer", "pizza", "pk", "pl", "place", "play",
	"playstation", "plumbing", "plus", "pm", "pn", "pnc", "pohl", "poker", "politie",
	"porn", "post", "pr", "pramerica", "praxi", "press", "prime", "pro", "prod",
	"productions", "prof", "progressive", "promo", "properties", "property", "protection",
	"pru", "prudential", "ps", "pt", "pub", "pw", "pwc", "py", "qa", "qpon", "quebec",
	"quest", "racing", "radio", "re", "read", "realestate", "realtor", "realty",
	"recipes", "red", "redstone", "redumbrella", "rehab", "reise", "reisen", "reit",
	"reliance", "ren", "rent", "rentals", "repair", "report", "republican", "rest",
	"restaurant", "review", "reviews", "rexroth", "rich", "richardli", "ricoh", "ril",
	"rio", "rip", "ro", "rocher", "rocks", "rodeo", "rogers", "room", "rs", "rsvp", "ru",
	"rugby", "ruhr", "run", "rw", "rwe", "ryukyu", "sa", "saarland", "safe", "safety",
	"sakura", "sale", "salon", "samsclub", "samsung", "sandvik", "sandvikcoromant",
	"sanofi", "sap", "sarl", "sas", "save", "saxo", "sb", "sbi", "sbs", "sc", "sca",
	"scb", "schaeffler", "schmidt", "scholarships", "school", "schule", "schwarz",
	"science", "scot", "sd", "se", "search", "seat", "secure", "security", "seek",
	"select", "sener", "services", "seven", "sew", "sex", "sexy", "sfr", "sg", "sh",
	"shangrila", "sharp", "shaw", "shell", "shia", "shiksha", "shoes", "shop", "shopping",
	"shouji", "show", "showtime", "si", "silk", "sina", "singles", "site", "sj", "sk",
	"ski", "skin", "sky", "skype", "sl", "sling", "sm", "smart", "smile", "sn", "sncf",
	"so", "soccer", "social", "softbank", "software", "sohu", "solar", "solutions",
	"song", "sony", "soy", "spa", "space", "sport", "spot", "sr", "srl", "ss", "st",
	"stada", "staples", "star", "statebank", "statefarm", "stc", "stcgroup", "stockholm",
	"storage", "store", "stream", "studio", "study", "style", "su", "sucks", "supplies",
	"supply", "support", "surf", "surgery", "suzuki", "sv", "swatch", "swiss", "sx", "sy",
	"sydney", "systems", "sz", "tab", "taipei", "talk", "taobao", "target", "tatamotors",
	"tatar", "tattoo", "tax", "taxi", "tc", "tci", "td", "tdk", "team", "tech",
	"technology", "tel", "temasek", "tennis", "teva", "tf", "tg", "th", "thd", "theater",
	"theatre", "tiaa", "tickets", "tienda", "tiffany", "tips", "tires", "tirol", "tj",
	"tjmaxx", "tjx", "tk", "tkmaxx", "tl", "tm", "tmall", "tn", "to", "today", "tokyo",
	"tools", "top", "toray", "toshiba", "total", "tours", "town", "toyota", "toys", "tr",
	"trade", "trading", "training", "travel", "travelchannel", "travelers",
	"travelersinsurance", "trust", "trv", "tt", "tube", "tui", "tunes", "tushu", "tv",
	"tvs", "tw", "tz", "ua", "ubank", "ubs", "ug", "uk", "unicom", "university", "uno",
	"uol", "ups", "us", "uy", "uz", "va", "vacations", "vana", "vanguard", "vc", "ve",
	"vegas", "ventures", "verisign", "versicherung", "vet", "vg", "vi", "viajes", "video",
	"vig", "viking", "villas", "vin", "vip", "virgin", "visa", "vision", "viva", "vivo",
	"vlaanderen", "vn", "vodka", "volkswagen", "volvo", "vote", "voting", "voto",
	"voyage", "vu", "vuelos", "wales", "walmart", "walter", "wang", "wanggou", "watch",
	"watches", "weather", "weatherchannel", "webcam", "weber", "website", "wedding",
	"weibo", "weir", "wf", "whoswho", "wien", "wiki", "williamhill", "win", "windows",
	"wine", "winners", "wme", "wolterskluwer", "woodside", "work", "works", "world",
	"wow", "ws", "wtc", "wtf", "xbox", "xerox", "xfinity", "xihuan", "xin", "xn--11b4c3d",
	"xn--1ck2e1b", "xn--1qqw23a", "xn--2scrj9c", "xn--30rr7y", "xn--3bst00m",
	"xn--3ds443g", "xn--3e0b707e", "xn--3hcrj9c", "xn--3pxu8k", "xn--42c2d9a",
	"xn--45br5cyl", "xn--45brj9c", "xn--45q11c", "xn--4dbrk0ce", "xn--4gbrim",
	"xn--54b7fta0cc", "xn--55qw42g", "xn--55qx5d", "xn--5su34j936bgsg", "xn--5tzm5g",
	"xn--6frz82g", "xn--6qq986b3xl", "xn--80adxhks", "xn--80ao21a", "xn--80aqecdr1a",
	"xn--80asehdb", "xn--80aswg", "xn--8y0a063a", "xn--90a3ac", "xn--90ae", "xn--90ais",
	"xn--9dbq2a", "xn--9et52u", "xn--9krt00a", "xn--b4w605ferd", "xn--bck1b9a5dre4c",
	"xn--c1avg", "xn--c2br7g", "xn--cck2b3b", "xn--cckwcxetd", "xn--cg4bki",
	"xn--clchc0ea0b2g2a9gcd", "xn--czr694b", "xn--czrs0t", "xn--czru2d", "xn--d1acj3b",
	"xn--d1alf", "xn--e1a4c", "xn--eckvdtc9d", "xn--efvy88h", "xn--fct429k", "xn--fhbei",
	"xn--fiq228c5hs", "xn--fiq64b", "xn--fiqs8s", "xn--fiqz9s", "xn--fjq720a",
	"xn--flw351e", "xn--fpcrj9c3d", "xn--fzc2c9e2c", "xn--fzys8d69uvgm", "xn--g2xx48c",
	"xn--gckr3f0f", "xn--gecrj9c", "xn--gk3at1e", "xn--h2breg3eve", "xn--h2brj9c",
	"xn--h2brj9c8c", "xn--hxt814e", "xn--i1b6b1a6a2e", "xn--imr513n", "xn--io0a7i",
	"xn--j1aef", "xn--j1amh", "xn--j6w193g", "xn--jlq480n2rg", "xn--jvr189m",
	"xn--kcrx77d1x4a", "xn--kprw13d", "xn--kpry57d", "xn--kput3i", "xn--l1acc",
	"xn--lgbbat1ad8j", "xn--mgb2ddes", "xn--mgb9awbf", "xn--mgba3a3ejt",
	"xn--mgba3a4f16a", "xn--mgba3a4fra", "xn--mgba7c0bbn0a", "xn--mgbaakc7dvf",
	"xn--mgbaam7a8h", "xn--mgbab2bd", "xn--mgbah1a3hjkrd", "xn--mgbai9a5eva00b",
	"xn--mgbai9azgqp6j", "xn--mgbayh7gpa", "xn--mgbbh1a", "xn--mgbbh1a71e",
	"xn--mgbc0a9azcg", "xn--mgbca7dzdo", "xn--mgbcpq6gpa1a", "xn--mgberp4a5d4a87g",
	"xn--mgberp4a5d4ar", "xn--mgbgu82a", "xn--mgbi4ecexp", "xn--mgbpl2fh",
	"xn--mgbqly7c0a67fbc", "xn--mgbqly7cvafr", "xn--mgbt3dhd", "xn--mgbtf8fl",
	"xn--mgbtx2b", "xn--mgbx4cd0ab", "xn--mix082f", "xn--mix891f", "xn--mk1bu44c",
	"xn--mxtq1m", "xn--ngbc5azd", "xn--ngbe9e0a", "xn--ngbrx", "xn--nnx388a", "xn--node",
	"xn--nqv7f", "xn--nqv7fs00ema", "xn--nyqy26a", "xn--o3cw4h", "xn--ogbpf8fl",
	"xn--otu796d", "xn--p1acf", "xn--p1ai", "xn--pgbs0dh", "xn--pssy2u", "xn--q7ce6a",
	"xn--q9jyb4c", "xn--qcka1pmc", "xn--qxa6a", "xn--qxam", "xn--rhqv96g", "xn--rovu88b",
	"xn--rvc1e0am3e", "xn--s9brj9c", "xn--ses554g", "xn--t60b56a", "xn--tckwe",
	"xn--tiq49xqyj", "xn--unup4y", "xn--vermgensberater-ctb", "xn--vermgensberatung-pwb",
	"xn--vhquv", "xn--vuq861b", "xn--w4r85el8fhu5dnra", "xn--w4rs40l", "xn--wgbh1c",
	"xn--wgbl6a", "xn--xhq521b", "xn--xkc2al3hye2a", "xn--xkc2dl3a5ee0h", "xn--y9a3aq",
	"xn--yfro4i67o", "xn--ygbi2ammx", "xn--zfr164b", "xxx", "xyz", "yachts", "yahoo",
	"yamaxun", "yandex", "ye", "yodobashi", "yoga", "yokohama", "you", "youtube", "yt",
	"yun", "za", "zappos", "zara", "zero", "zip", "zm", "zone", "zuerich", "zw",
};

struct label_key {
	const char *s;
	size_t n;
};

static int tld_cmp(const void *k, const void *e)
{
	const struct label_key *key = k;
	const char *tld = *(const char *const *)e;

	for (size_t i = 0; i < key->n; i++) {
		int c = (unsigned char)key->s[i] | (is_alpha((unsigned char)key->s[i]) ? 0x20 : 0);

		if (tld[i] == '\0' || c != (unsigned char)tld[i])
			return tld[i] == '\0' ? 1 : c - (unsigned char)tld[i];
	}
	return tld[key->n] == '\0' ? 0 : -1;
}

/* An ASCII label that is a top-level domain (any case). */
static bool tld_valid(const char *s, size_t n)
{
	struct label_key key = { s, n };

	return n > 0 && bsearch(&key, tlds, N_ELEMENTS(tlds), sizeof(tlds[0]), tld_cmp) != NULL;
}

/* A host name in ASCII (the xn-- form for an IDN), malloc'd; NULL when it
 * has none. */
static char *host_ascii(const char *h, size_t n)
{
	char *s = xstrndup(h, n), *a;

	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80) {
			a = g_hostname_to_ascii(s);
			free(s);
			if (a == NULL)
				return NULL;
			s = xstrdup(a);
			g_free(a);
			break;
		}
	str_lower(s);
	return s;
}

/* Util.pm's is_fqdn_valid(): two labels or more of 1-63 letters, digits,
 * '-' inside and '_' (not in the last two), 253 octets at most. */
static bool fqdn_valid(const char *h)
{
	size_t n = strlen(h), labels = 1, i = 0, k = 0;

	while (n > 0 && h[n - 1] == '.')
		n--;
	if (n == 0 || n > 253)
		return false;
	for (size_t j = 0; j < n; j++)
		labels += h[j] == '.';
	if (labels < 2)
		return false;
	while (i < n) {
		size_t l = 0;

		while (i + l < n && h[i + l] != '.')
			l++;
		k++;
		if (l == 0 || l > 63 || h[i] == '-' || h[i + l - 1] == '-')
			return false;
		for (size_t j = i; j < i + l; j++) {
			unsigned char c = (unsigned char)h[j];

			if (!(is_alnum(c) || c == '-' || (c == '_' && k + 2 <= labels)))
				return false;
		}
		i += l + 1;
	}
	return true;
}

/* RegistryBoundaries' is_domain_valid(): no white space, a dot, and a
 * last label that is a top-level domain. */
static bool domain_valid(const char *h, size_t n)
{
	char *a = host_ascii(h, n);
	const char *dot;
	bool ok;

	if (a == NULL)
		return false;
	dot = strrchr(a, '.');
	ok = dot != NULL && strpbrk(a, " \t\n\r\f\v") == NULL && tld_valid(dot + 1, strlen(dot + 1));
	free(a);
	return ok;
}

/* A dotted-quad IPv4 address. */
static bool uri_ipv4(const char *h, size_t n)
{
	size_t i = 0;

	for (int part = 0; part < 4; part++) {
		unsigned v = 0;
		size_t d = 0;

		while (i < n && h[i] >= '0' && h[i] <= '9' && d < 4) {
			v = v * 10 + (unsigned)(h[i++] - '0');
			d++;
		}
		if (d == 0 || d > 3 || v > 255)
			return false;
		if (part < 3 && (i >= n || h[i++] != '.'))
			return false;
	}
	return i == n;
}

/* Whether RegistryBoundaries' uri_to_domain() finds a domain (or an IPv4
 * address) in u. */
static bool uri_has_domain(const char *u)
{
	const char *h, *at, *end;
	size_t hl;
	char *a;
	bool ok;

	if (starts_nocase(u, strlen(u), "javascript:") || starts_nocase(u, strlen(u), "cid:") ||
	    starts_nocase(u, strlen(u), "file:"))
		return false;
	if (starts_nocase(u, strlen(u), "mailto:")) {
		h = u + 7;
		hl = strcspn(h, "?");
		at = memchr(h, '@', hl);
		if (at == NULL || memchr(at + 1, '@', hl - (size_t)(at + 1 - h)) != NULL)
			return false;
		hl -= (size_t)(at + 1 - h);
		h = at + 1;
	} else {
		h = u + strspn(u, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ");
		if (h == u || *h != ':')
			return false;
		h++;
		for (int k = 0; k < 2 && *h == '/'; k++)
			h++;
		hl = strcspn(h, "/?#");
		while ((at = memchr(h, '@', hl)) != NULL) {
			hl -= (size_t)(at + 1 - h);
			h = at + 1;
		}
		end = h + hl;
		while (end > h && end[-1] >= '0' && end[-1] <= '9')
			end--;
		if (end > h && end[-1] == ':')
			hl = (size_t)(end - 1 - h);
	}
	/* still %-encoded where it should not be: its decoded twin counts */
	for (size_t i = 0; i + 2 < hl; i++) {
		unsigned v;

		if (h[i] != '%' || !is_hex((unsigned char)h[i + 1]) || !is_hex((unsigned char)h[i + 2]))
			continue;
		v = hex_value((unsigned char)h[i + 1]) << 4 | hex_value((unsigned char)h[i + 2]);
		if (v > 0x20 && v < 0x7f)
			return false;
	}
	if (uri_ipv4(h, hl))
		return true;
	a = host_ascii(h, hl);
	ok = a != NULL && fqdn_valid(a) && domain_valid(a, strlen(a));
	free(a);
	return ok;
}

/* Keep one URI (cut to the length limit) once, within the count limit. */
static void uri_keep(struct build *bd, const char *u)
{
	size_t n = strlen(u);
	char *s;

	if (n > MSGTEXT_URI_LEN_MAX) {
		n = utf8_floor(u, n, MSGTEXT_URI_LEN_MAX);
		truncated(bd);
	}
	s = xstrndup(u, n);
	if (g_hash_table_contains(bd->uri_seen, s)) {
		free(s);
		return;
	}
	if (bd->uris.n >= MSGTEXT_URIS_MAX) {
		truncated(bd);
		free(s);
		return;
	}
	strvec_push(&bd->uris, s);
	g_hash_table_add(bd->uri_seen, s);
}

/* A URI and its canonical variants; with need_domain (URIs from text, as
 * add_uri_detail_list() with valid_domain), only when one of them has a
 * domain. */
static void uri_add(struct build *bd, const char *uri, bool need_domain)
{
	struct strvec v = { 0 };
	bool ok = !need_domain;

	uri_canon(&v, uri, 0);
	for (size_t i = 0; i < v.n && !ok; i++)
		ok = uri_has_domain(v.v[i]);
	for (size_t i = 0; i < v.n && ok; i++)
		uri_keep(bd, v.v[i]);
	strvec_free(&v);
}

enum uri_delims { DELIM_URI, DELIM_EMAIL, DELIM_LOCAL };

/* Octets of the character at s when it ends a URI (Thunderbird's end
 * delimiters), an e-mail address (also , ( ' and non-ASCII), or its local
 * part (also @); 0 when it does not. */
static size_t uri_delim(const char *s, size_t n, enum uri_delims kind)
{
	unsigned char c = (unsigned char)s[0];
	size_t l = c < 0x80 ? (n > 0 && is_ascii_space(c)) : space_len(s, n);

	if (l > 0)
		return l;
	switch (c) { /* (a switch: this runs for every character of the text) */
	case 0x1b: case '>': case '<': case '"': case '`': case '}': case ']': case '{':
	case '[': case '|':
		return 1;
	}
	if (kind == DELIM_URI)
		return 0;
	if (c == ',' || c == '(' || c == '\'' || (kind == DELIM_LOCAL && c == '@'))
		return 1;
	return c >= 0x80 ? utf8_step(s, n) : 0;
}

static size_t uri_run_end(const char *s, size_t n, size_t i, enum uri_delims kind)
{
	while (i < n) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x80) { /* (uri_delim() and utf8_step() for ASCII, inline) */
			if (is_ascii_space(c))
				break;
			switch (c) {
			case 0x1b: case '>': case '<': case '"': case '`': case '}': case ']':
			case '{': case '[': case '|':
				return i;
			case ',': case '(': case '\'':
				if (kind != DELIM_URI)
					return i;
				break;
			case '@':
				if (kind == DELIM_LOCAL)
					return i;
				break;
			}
			i++;
			continue;
		}
		if (uri_delim(s + i, n - i, kind) != 0)
			break;
		i += utf8_step(s + i, n - i);
	}
	return i;
}

static bool uri_word_char(const char *s, size_t n)
{
	unsigned char c = (unsigned char)s[0];

	if (c >= 0x80)
		return space_len(s, n) == 0;
	return is_alnum(c) || c == '_';
}

/* Where a URI may start: the line's start, after a start delimiter, or at
 * a word boundary. */
static bool uri_may_start(const char *s, size_t n, size_t i)
{
	size_t p;
	unsigned char c;

	if (i == 0)
		return true;
	p = i - 1;
	while (p > 0 && ((unsigned char)s[p] & 0xc0) == 0x80)
		p--;
	c = (unsigned char)s[p];
	switch (c) {
	case 0x1b: case '>': case '<': case '"': case '\'': case '`': case ',': case '{':
	case '[': case '(': case '|':
		return true;
	}
	if (space_len(s + p, n - p) > 0)
		return true;
	return uri_word_char(s + p, n - p) != uri_word_char(s + i, n - i);
}

/* The length of a known-scheme prefix at s: http:// https:// ftp:// www.
 * www1. ftp.; 0 if none. */
static size_t uri_scheme_prefix(const char *s, size_t n)
{
	static const char *const schemes[] = { "http://", "https://", "ftp://", "ftp." };
	size_t d = 3;
	unsigned char c0 = n > 0 ? (unsigned char)(s[0] | 0x20) : 0;

	if (c0 != 'h' && c0 != 'f' && c0 != 'w')
		return 0; /* (the common case, without the string compares) */
	for (size_t k = 0; k < N_ELEMENTS(schemes); k++)
		if (starts_nocase(s, n, schemes[k]))
			return strlen(schemes[k]);
	if (!starts_nocase(s, n, "www"))
		return 0;
	while (d < n && d < 5 && s[d] >= '0' && s[d] <= '9')
		d++;
	return d < n && s[d] == '.' ? d + 1 : 0;
}

enum uri_kind { URI_KIND_SCHEME, URI_KIND_MAIL, URI_KIND_SCHEMELESS };

/* A raw URI from the text trimmed as Thunderbird does: ")" ends it when
 * no "(" comes before (the last such ")"), trailing punctuation goes. */
static char *uri_text_trim(const char *m, size_t len)
{
	static const char trail[] = "-~!@#^&*()_+=:;'?,.";
	char *u = xstrndup(m, len);
	size_t n, open = strcspn(u, "(");

	for (size_t k = open; k > 0; k--)
		if (u[k - 1] == ')') {
			u[k - 1] = '\0';
			break;
		}
	n = strlen(u);
	while (n > 0 && strchr(trail, u[n - 1]) != NULL)
		u[--n] = '\0';
	return u;
}

/* A bare address from the text as mailto:, or NULL when it is none:
 * "foo@bar" with no dot after the @ is not, and the common misparses
 * (skype:, mail:, e-mail:) come off. */
static char *uri_text_mailto(const char *u)
{
	static const char *const junk[] = { "skype", "e-mail", "email", "-mail", "mail" };
	const char *at = strchr(u, '@'), *p = u;

	if (at[1] == '\0' || strchr(at + 2, '.') == NULL || strstr(u, "&nbsp;") != NULL)
		return NULL;
	for (size_t k = 0; k < N_ELEMENTS(junk); k++)
		if (starts_nocase(u, strlen(u), junk[k]) && u[strlen(junk[k])] == ':') {
			p = u + strlen(junk[k]);
			break;
		}
	while (*p == ':')
		p++;
	return xasprintf("mailto:%s", p);
}

/* The URI with the scheme a mail reader gives it (u itself when it has
 * one, else malloc'd), or NULL when it is not taken. */
static char *uri_text_scheme(char *u)
{
	size_t n = strlen(u);
	const char *slash = strchr(u, '/');

	if (starts_nocase(u, n, "http:") || starts_nocase(u, n, "https:") ||
	    starts_nocase(u, n, "ftp:") || starts_nocase(u, n, "mailto:"))
		return u;
	if (starts_nocase(u, n, "ftp."))
		return xasprintf("ftp://%s", u);
	if (uri_scheme_prefix(u, n) > 0 && starts_nocase(u, n, "www"))
		return xasprintf("http://%s", u);
	/* a "/" before the "@": no address */
	if (slash != NULL && slash[1] != '\0' && strchr(slash + 2, '@') != NULL)
		return xasprintf("http://%s", u);
	if (strchr(u, '@') != NULL)
		return uri_text_mailto(u);
	/* a host name alone, one that mail readers do not link */
	return strchr(u, '.') != NULL ? xasprintf("http://%s", u) : NULL;
}

/* A mailto: from the text is kept when its domain is valid (after
 * %-decoding, and a trailing %20 off). */
static bool uri_text_mailto_ok(char **u)
{
	const char *at;
	size_t hl;

	if (has_percent_hex(*u)) {
		char *folded = uri_percent_fold(*u);

		free(*u);
		*u = folded;
	}
	at = strchr(*u, '@');
	if (at == NULL)
		return false;
	hl = strcspn(at + 1, "?&>");
	while (hl >= 3 && strncmp(at + 1 + hl - 3, "%20", 3) == 0)
		hl -= 3;
	return domain_valid(at + 1, hl);
}

/* A URI found in the body text, as _process_text_uri_list() takes it. */
static void uri_from_text(struct build *bd, const char *m, size_t len, enum uri_kind kind,
			  size_t host_len)
{
	char *u = uri_text_trim(m, len), *with;
	size_t n = strlen(u), sch;

	/* each raw URI once: a text repeating one link is canonicalised once */
	if (g_hash_table_contains(bd->text_seen, u))
		goto out;
	if (g_hash_table_size(bd->text_seen) >= URI_TEXT_CANDIDATES_MAX) {
		truncated(bd);
		goto out;
	}
	g_hash_table_add(bd->text_seen, xstrdup(u));
	if ((kind == URI_KIND_MAIL && strchr(u, '@') == NULL) || starts_nocase(u, n, "cid:") ||
	    starts_nocase(u, n, "mid:"))
		goto out;
	if (kind == URI_KIND_SCHEMELESS) {
		/* the host the match found, before punctuation came off */
		char *host = host_ascii(m, host_len);
		bool ok = host != NULL && fqdn_valid(host);

		free(host);
		if (!ok)
			goto out;
	}
	/* "http://" and nothing */
	sch = strspn(u, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
	if (sch > 0 && u[sch] == ':' && strspn(u + sch + 1, "/") == n - sch - 1 && n - sch - 1 <= 2)
		goto out;
	with = uri_text_scheme(u);
	if (with != u) {
		free(u);
		u = with;
	}
	if (u == NULL || (starts_nocase(u, strlen(u), "mailto:") && !uri_text_mailto_ok(&u)))
		goto out;
	uri_add(bd, u, true);
out:
	free(u);
}

/* Where runs of non-delimiters end: the end of the run from i is the same
 * for every i inside that run, so it is remembered and the scan of a line
 * stays linear. */
struct uri_scan {
	size_t run_end[3];        /* per enum uri_delims; SIZE_MAX: not known */
	size_t dom_from, dom_end; /* the run after an '@' */
};

/* Where a schemeless URI may start: the line's start or after most
 * punctuation and white space. */
static bool uri_schemeless_start(const char *s, size_t n, size_t i)
{
	size_t p;
	unsigned char c;

	if (i == 0)
		return true;
	p = i - 1;
	while (p > 0 && ((unsigned char)s[p] & 0xc0) == 0x80)
		p--;
	c = (unsigned char)s[p];
	return space_len(s + p, n - p) > 0 || c == 0x1b ||
	       (c != '\0' && strchr("!\"#$&'()*+,/:;<=>?@[\\]^`{|}~", c) != NULL);
}

static bool host_char(unsigned char c)
{
	return is_alnum(c) || c == '.' || c == '_' || c == '-';
}

/* What may follow a schemeless host: ":port" and "/path", each left out
 * when that is what makes it end at a delimiter; its end, or 0. run_end
 * is where the non-delimiters from the host on end. */
static size_t uri_schemeless_tail(const char *s, size_t n, size_t p, size_t run_end)
{
	size_t port = p;

	if (p < n && s[p] == ':') {
		size_t q = p + 1;

		while (q < n && q - p - 1 < 5 && s[q] >= '0' && s[q] <= '9')
			q++;
		if (q > p + 1)
			port = q;
	}
	for (int with_port = port > p; with_port >= 0; with_port--) {
		size_t q = with_port ? port : p;

		if (q < n && s[q] == '/' && run_end > q + 1 && run_end - (q + 1) <= 2048)
			return run_end;
		if (q == n || uri_delim(s + q, n - q, DELIM_URI) > 0)
			return q;
	}
	return 0;
}

/* PerMsgStatus' $urischemeless at s[i]: a host ending in a top-level
 * domain (the longest that works), then maybe ".", ":port", "/path", then
 * a delimiter. Its end, or 0; *host_len_r the host's length. */
static size_t uri_schemeless_at(const char *s, size_t n, size_t i, size_t run_end,
				size_t *host_len_r)
{
	size_t r = i;

	if (!is_alnum((unsigned char)s[i]))
		return 0;
	while (r < n && r - i < 400 && host_char((unsigned char)s[r]))
		r++;
	for (size_t d = r; d-- > i + 1;) {
		size_t l = d + 1, e;

		if (s[d] != '.' || d - i > 252)
			continue;
		while (l < n && (is_alnum((unsigned char)s[l]) || s[l] == '-'))
			l++;
		/* the domain's last label, whole */
		if (!tld_valid(s + d + 1, l - d - 1) ||
		    (l + 1 < n && s[l] == '.' && is_alnum((unsigned char)s[l + 1])))
			continue;
		for (int dot = l < n && s[l] == '.'; dot >= 0; dot--) {
			e = uri_schemeless_tail(s, n, l + (size_t)dot, run_end);
			if (e > 0) {
				*host_len_r = l - i;
				return e;
			}
		}
	}
	return 0;
}

/* The URI that starts at s[i], if one does: its end and kind; 0 when
 * none. Tried in PerMsgStatus' order: a known scheme, an address, a
 * schemeless host. */
/* sc's run end of kind k from i, computed when it is needed (the same
 * for every i inside a run, so computing it later changes nothing). */
static size_t sc_run(struct uri_scan *sc, const char *s, size_t n, size_t i, enum uri_delims k)
{
	if (sc->run_end[k] == SIZE_MAX || sc->run_end[k] <= i)
		sc->run_end[k] = uri_run_end(s, n, i, k);
	return sc->run_end[k];
}

/* Whether uri_schemeless_at() can find anything at s[i]: an alphanumeric
 * start and a dot among the host characters after it. */
static bool schemeless_may(const char *s, size_t n, size_t i)
{
	size_t r = i + 1;

	if (!is_alnum((unsigned char)s[i]))
		return false;
	while (r < n && r - i < 400 && host_char((unsigned char)s[r])) {
		if (s[r] == '.')
			return true;
		r++;
	}
	return false;
}

static size_t uri_match_at(const char *s, size_t n, size_t i, struct uri_scan *sc,
			   enum uri_kind *kind, size_t *host_len)
{
	size_t pre = uri_scheme_prefix(s + i, n - i), e;

	*kind = URI_KIND_SCHEME;
	if (pre > 0) {
		e = sc_run(sc, s, n, i, DELIM_URI);
		if (e > i + pre && e - (i + pre) <= 2048)
			return e;
	}
	*kind = URI_KIND_MAIL;
	if ((s[i] | 0x20) == 'm' && starts_nocase(s + i, n - i, "mailto:")) {
		e = sc_run(sc, s, n, i, DELIM_EMAIL);
		if (e > i + 7 && e - (i + 7) <= 2048)
			return e;
	}
	e = sc_run(sc, s, n, i, DELIM_LOCAL);
	if (e > i && e - i <= 251 && e < n && s[e] == '@') {
		/* any start inside a run ends where the run does */
		if (sc->dom_from == SIZE_MAX || e + 1 < sc->dom_from || e + 1 >= sc->dom_end) {
			sc->dom_from = e + 1;
			sc->dom_end = uri_run_end(s, n, e + 1, DELIM_EMAIL);
		}
		if (sc->dom_end > e + 1 && sc->dom_end - (e + 1) <= 251)
			return sc->dom_end;
	}
	*kind = URI_KIND_SCHEMELESS;
	if (uri_schemeless_start(s, n, i) && schemeless_may(s, n, i))
		return uri_schemeless_at(s, n, i, sc_run(sc, s, n, i, DELIM_URI), host_len);
	return 0;
}

static void uri_scan_text(struct build *bd, const char *s, size_t n)
{
	struct uri_scan sc = { { SIZE_MAX, SIZE_MAX, SIZE_MAX }, SIZE_MAX, 0 };
	size_t i = 0;

	while (i < n && bd->uris.n < MSGTEXT_URIS_MAX &&
	       g_hash_table_size(bd->text_seen) < URI_TEXT_CANDIDATES_MAX) {
		enum uri_kind kind;
		size_t e = 0, host_len = 0;
		unsigned char c = (unsigned char)s[i], b = i > 0 ? (unsigned char)s[i - 1] : 0;

		/* inside an ASCII word no URI starts (uri_may_start() says so;
		 * this is most characters, so without the call) */
		if (i > 0 && (is_alnum(c) || c == '_') && (is_alnum(b) || b == '_')) {
			i++;
			continue;
		}
		if (uri_may_start(s, n, i))
			e = uri_match_at(s, n, i, &sc, &kind, &host_len);
		if (e > i) {
			uri_from_text(bd, s + i, e - i, kind, host_len);
			i = e;
			continue;
		}
		i += utf8_step(s + i, n - i);
	}
}

static void uris_finish(struct build *bd)
{
	for (size_t i = 0; i < bd->t->n_body && bd->uris.n < MSGTEXT_URIS_MAX; i++)
		uri_scan_text(bd, bd->t->body[i], strlen(bd->t->body[i]));
	for (size_t i = 0; i < bd->html_uris.n && bd->uris.n < MSGTEXT_URIS_MAX; i++)
		uri_add(bd, bd->html_uris.v[i], false);
	if (bd->uris.n >= MSGTEXT_URIS_MAX ||
	    g_hash_table_size(bd->text_seen) >= URI_TEXT_CANDIDATES_MAX)
		truncated(bd);
	bd->t->uris = bd->uris.v;
	bd->t->n_uris = bd->uris.n;
	bd->uris = (struct strvec){ 0 };
}

/* ------------------------------------------------------------ the view */

static void msgtext_free(void *view)
{
	struct msgtext *t = view;

	for (size_t i = 0; i < t->n_headers; i++) {
		free(t->headers[i].name);
		free(t->headers[i].raw);
		free(t->headers[i].decoded);
	}
	free(t->headers);
	for (size_t i = 0; i < t->n_body; i++)
		free(t->body[i]);
	free(t->body);
	for (size_t i = 0; i < t->n_rawbody; i++)
		free(t->rawbody[i]);
	free(t->rawbody);
	for (size_t i = 0; i < t->n_uris; i++)
		free(t->uris[i]);
	free(t->uris);
	for (size_t i = 0; i < t->n_parts; i++) {
		free(t->parts[i].type);
		free(t->parts[i].filename);
	}
	free(t->parts);
	free(t);
}

static void *msgtext_build(struct msgbody *b)
{
	GMimeMessage *m = msgbody_mime(b);
	struct build bd = { 0 };
	const char *data;
	size_t len;

	data = msgbody_contents(b, &len);
	if (data == NULL)
		return NULL;
	bd.t = xcalloc(1, sizeof(*bd.t));
	bd.t->full = data;
	bd.t->full_len = len;
	bd.t->parts = xcalloc(MSGTEXT_PARTS_MAX, sizeof(*bd.t->parts));
	bd.html_seen = g_hash_table_new(g_str_hash, g_str_equal);
	bd.uri_seen = g_hash_table_new(g_str_hash, g_str_equal);
	bd.text_seen = g_hash_table_new_full(g_str_hash, g_str_equal, free, NULL);
	if (m != NULL) {
		bd.t->mime = true;
		headers_collect(&bd, m);
		walk(&bd, g_mime_message_get_mime_part(m), 0);
	} else {
		leaf_add_bytes(&bd, data, len);
	}
	body_finish(&bd);
	bd.t->rawbody = bd.rawbody.v;
	bd.t->n_rawbody = bd.rawbody.n;
	uris_finish(&bd);
	g_hash_table_destroy(bd.html_seen);
	g_hash_table_destroy(bd.uri_seen);
	g_hash_table_destroy(bd.text_seen);
	strvec_free(&bd.html_uris);
	tbuf_free(&bd.body);
	return bd.t;
}

const struct msgtext *msgbody_text(struct msgbody *b)
{
	return msgbody_view(b, msgtext_build, msgtext_free);
}

bool msgbody_text_built(struct msgbody *b)
{
	return msgbody_view_built_by(b, msgtext_build);
}

const char *msgtext_header(const struct msgtext *t, const char *name, size_t nth, bool raw)
{
	for (size_t i = 0; i < t->n_headers; i++) {
		if (strcasecmp(t->headers[i].name, name) != 0)
			continue;
		if (nth-- == 0)
			return raw ? t->headers[i].raw : t->headers[i].decoded;
	}
	return NULL;
}

/* ------------------------------------------------------------ addresses */

static pthread_once_t gmime_once = PTHREAD_ONCE_INIT;

/* GMime's address parser needs g_mime_init(), which lib/mime.c runs once
 * on its first use: asking it for the view of a body that is not sealed
 * makes it run and builds nothing. */
static void gmime_ready_once(void)
{
	struct msgbody *b = msgbody_new(NULL, 0);

	(void)msgbody_mime(b);
	msgbody_free(&b);
}

static void copy_out(const char *s, size_t n, char *out, size_t outsz)
{
	if (outsz == 0)
		return;
	n = utf8_floor(s, n, outsz - 1);
	memcpy(out, s, n);
	out[n] = '\0';
}

struct addr_walk {
	bool want_name;
	size_t nth;
	char *out;
	size_t outsz;
	bool found;
	size_t max_all, n_all; /* msgtext_addrs(): every address, into out[i * outsz] */
};

/* PerMsgStatus::get()'s :name clean-up: white space folded and trimmed,
 * one level of single quotes off. */
static void name_out(const char *name, struct addr_walk *w)
{
	struct tbuf t = { 0 };
	size_t s = 0, n;
	const char *p = name;

	for (; *p != '\0'; p++) {
		if (!is_ascii_space((unsigned char)*p)) {
			tbuf_addc(&t, *p);
			continue;
		}
		while (is_ascii_space((unsigned char)p[1]))
			p++;
		tbuf_addc(&t, ' ');
	}
	n = t.len;
	if (n > 0 && t.p[0] == ' ')
		s = 1;
	if (n > s && t.p[n - 1] == ' ')
		n--;
	if (n >= s + 2 && t.p[s] == '\'' && t.p[n - 1] == '\'') {
		s++;
		n--;
	}
	copy_out(t.p != NULL ? t.p + s : "", n > s ? n - s : 0, w->out, w->outsz);
	tbuf_free(&t);
}

static bool addr_parse(const char *value, struct addr_walk *wp);

static void addr_visit(InternetAddressList *list, struct addr_walk *w, unsigned depth)
{
	int n = list != NULL ? internet_address_list_length(list) : 0;

	for (int i = 0; i < n && !w->found; i++) {
		InternetAddress *a = internet_address_list_get_address(list, i);
		const char *name, *addr;

		if (INTERNET_ADDRESS_IS_GROUP(a)) {
			if (depth < 4)
				addr_visit(internet_address_group_get_members(INTERNET_ADDRESS_GROUP(a)),
					   w, depth + 1);
			continue;
		}
		if (!INTERNET_ADDRESS_IS_MAILBOX(a))
			continue;
		name = internet_address_get_name(a);
		addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a));
		/* "Joe" alone is a phrase without an address to SpamAssassin */
		if (addr != NULL && strchr(addr, '@') == NULL) {
			if (name == NULL || *name == '\0')
				name = addr;
			addr = NULL;
		}
		if (w->want_name ? name == NULL || *name == '\0' : addr == NULL || *addr == '\0')
			continue;
		if (w->max_all > 0) {
			copy_out(addr, strlen(addr), w->out + w->n_all * w->outsz, w->outsz);
			if (++w->n_all == w->max_all)
				w->found = true;
			continue;
		}
		if (w->nth-- > 0)
			continue;
		w->found = true;
		if (w->want_name)
			name_out(name, w);
		else
			copy_out(addr, strlen(addr), w->out, w->outsz);
	}
}

static bool addr_find(const char *value, size_t nth, bool want_name, char *out, size_t outsz)
{
	struct addr_walk w = { want_name, nth, out, outsz, false, 0, 0 };

	return addr_parse(value, &w);
}

size_t msgtext_addrs(const char *value, char *out, size_t outsz, size_t max)
{
	struct addr_walk w = { false, 0, out, outsz, false, max, 0 };

	if (max == 0 || outsz == 0)
		return 0;
	(void)addr_parse(value, &w);
	return w.n_all;
}

static bool addr_parse(const char *value, struct addr_walk *wp)
{
	struct addr_walk w = *wp;
	char *out = w.out;
	size_t outsz = w.outsz;
	struct tbuf u = { 0 };
	InternetAddressList *list;
	char *q;

	if (outsz > 0)
		out[0] = '\0';
	if (value == NULL)
		return false;
	pthread_once(&gmime_once, gmime_ready_once);
	/* unfolded, B words as Q words (see the opening comment) */
	for (const char *p = value; *p != '\0'; p++)
		tbuf_addc(&u, *p == '\r' || *p == '\n' ? ' ' : *p);
	tbuf_reserve(&u, 0);
	u.p[u.len] = '\0';
	q = rfc2047_b_to_q(u.p);
	tbuf_free(&u);
	list = internet_address_list_parse(NULL, q);
	free(q);
	addr_visit(list, &w, 0);
	if (list != NULL)
		g_object_unref(list);
	*wp = w;
	return w.found;
}

bool msgtext_addr_nth(const char *value, size_t nth, char *out, size_t outsz)
{
	return addr_find(value, nth, false, out, outsz);
}

bool msgtext_name_nth(const char *value, size_t nth, char *out, size_t outsz)
{
	return addr_find(value, nth, true, out, outsz);
}

void msgtext_addr(const char *value, char *out, size_t outsz)
{
	(void)addr_find(value, 0, false, out, outsz);
}

void msgtext_name(const char *value, char *out, size_t outsz)
{
	(void)addr_find(value, 0, true, out, outsz);
}
