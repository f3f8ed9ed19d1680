/*
 * mime.c — a message's MIME structure as IMAP shows it (imap/mime.h):
 * ENVELOPE, BODY, BODYSTRUCTURE, BODY[section] and the content keys of
 * SEARCH, answering what Dovecot 2.3 answers for the same bytes.
 *
 * Two layers. The structure layer splits the stored bytes into parts the
 * way Dovecot's message parser does — the same boundary rules (a line
 * "--" + any open boundary as a prefix, the longest match, the newest
 * first; the [CR]LF before a boundary line belongs to the boundary; an
 * ancestor's boundary closes every part below it), the same defaults
 * (no Content-Type: text/plain, or message/rfc822 under multipart/digest;
 * a part without Mime-Version or Content-Type is not MIME) — because
 * IMAP's sizes, line counts and section octets are offsets into those
 * bytes and must agree to the octet with what clients cached from
 * another server. A part is a few offsets into the caller's buffer:
 * nothing is copied. The content layer is GMime 3, the parser the filters
 * use: RFC 2047 words, transfer encodings and charsets are decoded by it
 * for SEARCH. Address lists and dates are read with Dovecot's RFC 822
 * rules (its tokenizer, its leniencies), for the same reason as the parts.
 *
 * Header-only questions (ENVELOPE, HEADER*, the Date, header SEARCH keys)
 * scan the top-level header and never build the part tree. The tree is
 * built on the first structure question and kept until imap_msg_free().
 *
 * Limits, so that a hostile message costs bounded memory and time (the
 * first two are Dovecot's, and behave as there): parts nest at most
 * IMAP_MIME_DEPTH_MAX deep (a multipart or message/rfc822 below is a leaf,
 * shown as application/octet-stream) and a message has at most
 * IMAP_MIME_PARTS_MAX parts (the last one runs to the end of the
 * message); at most IMAP_MIME_HEADER_MAX octets of one part's header are
 * read as fields; MIME parameters beyond IMAP_MIME_PARAMS_MAX are
 * dropped; an address list stops after IMAP_MIME_ADDRS_MAX addresses;
 * SEARCH decodes at most IMAP_MIME_SEARCH_MAX octets of a part. Every
 * scan is linear in the input (a line is compared with at most
 * IMAP_MIME_DEPTH_MAX open boundaries).
 */
#include "config.h"

#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <gmime/gmime.h>

#include "imap/mime.h"
#include "lib/lib.h"

#define IMAP_MIME_DEPTH_MAX 100
#define IMAP_MIME_PARTS_MAX 10000
#define IMAP_MIME_HEADER_MAX (1024 * 1024)
#define IMAP_MIME_PARAMS_MAX 256
#define IMAP_MIME_ADDRS_MAX 10000
#define IMAP_MIME_SEARCH_MAX (64 * 1024 * 1024)

/* ------------------------------------------------------------ strings */
struct sbuf {
	char *s;
	size_t len, cap;
};

static void sb_grow(struct sbuf *b, size_t more)
{
	size_t cap;

	if (b->len + more + 1 <= b->cap)
		return;
	cap = b->cap ? b->cap : 64;
	while (cap < b->len + more + 1)
		cap *= 2;
	b->s = xrealloc(b->s, cap);
	b->cap = cap;
}

static void sb_addn(struct sbuf *b, const char *p, size_t n)
{
	sb_grow(b, n);
	if (n > 0)
		memcpy(b->s + b->len, p, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void sb_add(struct sbuf *b, const char *p)
{
	sb_addn(b, p, strlen(p));
}

static void sb_addc(struct sbuf *b, char c)
{
	sb_addn(b, &c, 1);
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) ATTR_PRINTF(2, 3);
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	sb_grow(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

/* empty, but a string ("" rather than NULL) */
static void sb_reset(struct sbuf *b)
{
	b->len = 0;
	sb_grow(b, 0);
	b->s[0] = '\0';
}

static void sb_free(struct sbuf *b)
{
	free(b->s);
	b->s = NULL;
	b->len = b->cap = 0;
}

static const char *sb_str(const struct sbuf *b)
{
	return b->s != NULL ? b->s : "";
}

static char *sdup(const struct sbuf *b)
{
	return xstrdup(sb_str(b));
}

/* ------------------------------------------------------ IMAP quoting */
/* Beyond this many quoted-specials a string is sent as a literal
 * (Dovecot's rule, so that our strings are the same bytes as its). */
#define QUOTED_ESCAPES_MAX 4

/* An nstring: NIL, "quoted", or a literal for CR, LF, 8-bit octets or
 * many escapes. A NUL ends s, as in Dovecot. */
static void imap_nstring(struct sbuf *out, const char *s)
{
	unsigned escapes = 0;
	size_t i;

	if (s == NULL) {
		sb_add(out, "NIL");
		return;
	}
	for (i = 0; s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c == '"' || c == '\\') && escapes++ < QUOTED_ESCAPES_MAX)
			continue;
		if (c == '"' || c == '\\' || c == '\r' || c == '\n' || c >= 0x80) {
			sb_printf(out, "{%zu}\r\n", strlen(s));
			sb_add(out, s);
			return;
		}
	}
	sb_addc(out, '"');
	for (i = 0; s[i] != '\0'; i++) {
		if (s[i] == '"' || s[i] == '\\')
			sb_addc(out, '\\');
		sb_addc(out, s[i]);
	}
	sb_addc(out, '"');
}

/* An nstring with CR and LF removed (a space where a line break was not
 * followed by white space). */
static void imap_nstring_nolf(struct sbuf *out, const char *s)
{
	struct sbuf t = {0};
	size_t i;

	if (s == NULL || strpbrk(s, "\r\n") == NULL) {
		imap_nstring(out, s);
		return;
	}
	sb_reset(&t);
	for (i = 0; s[i] != '\0'; i++) {
		if (s[i] != '\r' && s[i] != '\n')
			sb_addc(&t, s[i]);
		else if (s[i + 1] != ' ' && s[i + 1] != '\t' && s[i + 1] != '\0')
			sb_addc(&t, ' ');
	}
	imap_nstring(out, sb_str(&t));
	sb_free(&t);
}

/* A string for people to read (Subject, display names): runs of white
 * space become one space, CR/LF and outer white space go, NUL becomes
 * 0x80; a literal when anything had to change or needs escaping. */
static void imap_string_for_humans(struct sbuf *out, const char *src, size_t size)
{
	size_t i, removed = 0, start;
	bool ws_prefix = true, last_lwsp = true, modify = false;

	for (i = 0; i < size; i++) {
		switch (src[i]) {
		case '\0':
			last_lwsp = false;
			modify = true;
			break;
		case '\t':
			modify = true;
			/* fall through */
		case ' ':
			if (last_lwsp) {
				modify = true;
				removed++;
			}
			last_lwsp = true;
			break;
		case '\r':
		case '\n':
			removed++;
			modify = true;
			break;
		case '"':
		case '\\':
			modify = true;
			last_lwsp = false;
			break;
		default:
			if ((unsigned char)src[i] & 0x80)
				modify = true;
			last_lwsp = false;
			break;
		}
		if (!last_lwsp)
			ws_prefix = false;
	}
	if (last_lwsp && i > 0 && !ws_prefix) {
		modify = true;
		removed++;
	}
	if (!modify) {
		sb_addc(out, '"');
		sb_addn(out, src, size);
		sb_addc(out, '"');
		return;
	}
	if (size == removed) {
		sb_add(out, "\"\"");
		return;
	}
	sb_printf(out, "{%zu}\r\n", size - removed);
	start = out->len;
	last_lwsp = true;
	ws_prefix = true;
	for (i = 0; i < size; i++) {
		switch (src[i]) {
		case '\0':
			sb_addc(out, (char)0x80);
			last_lwsp = false;
			break;
		case '\t':
		case ' ':
			if (!last_lwsp)
				sb_addc(out, ' ');
			last_lwsp = true;
			break;
		case '\r':
		case '\n':
			break;
		default:
			last_lwsp = false;
			sb_addc(out, src[i]);
			break;
		}
		if (!last_lwsp)
			ws_prefix = false;
	}
	if (last_lwsp && i > 0 && !ws_prefix && out->len > start)
		out->s[--out->len] = '\0';
}

/* ---------------------------------------------- RFC 822 token parsing */
/* atext: 1; alnum and 8-bit: 2; atext that MIME calls tspecial: 4 */
static const unsigned char atext_chars[256] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 0, 4,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 4, 0, 4,
	0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 1, 1,
	1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 0,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};
#define IS_ATEXT(c) (atext_chars[(unsigned char)(c)] != 0)
#define IS_TOKEN(c) ((atext_chars[(unsigned char)(c)] & 3) != 0)

/* a cursor over a header value; comments are kept in last_comment */
struct rp {
	const char *p, *end;
	struct sbuf *last_comment;
};

/* Each returns -1 on a syntax error, 0 at the end of input, 1 when more
 * input follows. */
static int rp_skip_comment(struct rp *r)
{
	const char *start;
	int level = 1;

	if (r->last_comment != NULL)
		sb_reset(r->last_comment);
	start = ++r->p;
	for (; r->p != r->end; r->p++) {
		switch (*r->p) {
		case '(':
			level++;
			break;
		case ')':
			if (--level == 0) {
				if (r->last_comment != NULL)
					sb_addn(r->last_comment, start, (size_t)(r->p - start));
				r->p++;
				return r->p != r->end;
			}
			break;
		case '\\':
			if (r->last_comment != NULL)
				sb_addn(r->last_comment, start, (size_t)(r->p - start));
			start = r->p + 1;
			r->p++;
			if (r->p == r->end)
				return -1;
			break;
		}
	}
	return -1;
}

static int rp_skip_lwsp(struct rp *r)
{
	while (r->p != r->end) {
		char c = *r->p;
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			r->p++;
			continue;
		}
		if (c != '(')
			break;
		if (rp_skip_comment(r) < 0)
			return -1;
	}
	return r->p != r->end;
}

static int rp_atom(struct rp *r, struct sbuf *s)
{
	const char *start;

	if (r->p == r->end || !IS_ATEXT(*r->p))
		return -1;
	for (start = r->p++; r->p != r->end; r->p++) {
		if (IS_ATEXT(*r->p))
			continue;
		sb_addn(s, start, (size_t)(r->p - start));
		return rp_skip_lwsp(r);
	}
	sb_addn(s, start, (size_t)(r->p - start));
	return 0;
}

static int rp_dot_atom(struct rp *r, struct sbuf *s)
{
	const char *start;
	int ret;

	if (r->p == r->end || !IS_ATEXT(*r->p))
		return -1;
	for (start = r->p++; r->p != r->end;) {
		if (IS_ATEXT(*r->p)) {
			r->p++;
			continue;
		}
		sb_addn(s, start, (size_t)(r->p - start));
		if ((ret = rp_skip_lwsp(r)) <= 0)
			return ret;
		if (*r->p != '.')
			return 1;
		r->p++;
		sb_addc(s, '.');
		/* a dot must be followed by an atom (Dovecot 2.3: "b.c." and
		 * "b..c" are no domains) */
		if (rp_skip_lwsp(r) <= 0 || !IS_ATEXT(*r->p))
			return -1;
		start = r->p;
	}
	sb_addn(s, start, (size_t)(r->p - start));
	return 0;
}

/* a local part's dot-atom, dots anywhere (".a", "a..b", "x.", "....") */
static int rp_loose_dot_atom(struct rp *r, struct sbuf *s)
{
	int ret = -1;

	do {
		while (*r->p == '.') {
			sb_addc(s, '.');
			r->p++;
			if (r->p == r->end)
				return 0;
			ret = 1;
		}
		if (*r->p == '@')
			break;
		ret = rp_atom(r, s);
	} while (ret > 0 && *r->p == '.');
	return ret;
}

static int rp_mime_token(struct rp *r, struct sbuf *s)
{
	const char *start;

	for (start = r->p; r->p != r->end; r->p++) {
		if (IS_TOKEN(*r->p) || *r->p == '.')
			continue;
		sb_addn(s, start, (size_t)(r->p - start));
		return rp_skip_lwsp(r);
	}
	sb_addn(s, start, (size_t)(r->p - start));
	return 0;
}

static int rp_quoted_string(struct rp *r, struct sbuf *s)
{
	const char *start;
	size_t len;

	r->p++;
	for (start = r->p; r->p != r->end; r->p++) {
		switch (*r->p) {
		case '"':
			sb_addn(s, start, (size_t)(r->p - start));
			r->p++;
			return rp_skip_lwsp(r);
		case '\n':
			len = (size_t)(r->p - start);
			if (len > 0 && start[len - 1] == '\r')
				len--;
			sb_addn(s, start, len);
			start = r->p + 1;
			break;
		case '\\':
			r->p++;
			if (r->p == r->end)
				return -1;
			sb_addn(s, start, (size_t)(r->p - start - 1));
			start = r->p;
			break;
		}
	}
	return -1;
}

static int rp_atom_or_dot(struct rp *r, struct sbuf *s)
{
	const char *start;

	for (start = r->p; r->p != r->end; r->p++) {
		if (IS_ATEXT(*r->p) || *r->p == '.')
			continue;
		sb_addn(s, start, (size_t)(r->p - start));
		return rp_skip_lwsp(r);
	}
	sb_addn(s, start, (size_t)(r->p - start));
	return 0;
}

static int rp_phrase(struct rp *r, struct sbuf *s)
{
	int ret;

	if (r->p == r->end)
		return 0;
	if (*r->p == '.')
		return -1;
	for (;;) {
		if (*r->p == '"')
			ret = rp_quoted_string(r, s);
		else
			ret = rp_atom_or_dot(r, s);
		if (ret <= 0)
			return ret;
		if (!IS_ATEXT(*r->p) && *r->p != '"' && *r->p != '.')
			break;
		sb_addc(s, ' ');
	}
	return rp_skip_lwsp(r);
}

static int rp_domain_literal(struct rp *r, struct sbuf *s)
{
	const char *start;

	for (start = r->p; r->p != r->end; r->p++) {
		if (*r->p == '\\') {
			r->p++;
			if (r->p == r->end)
				break;
		} else if (*r->p == ']') {
			r->p++;
			sb_addn(s, start, (size_t)(r->p - start));
			return rp_skip_lwsp(r);
		}
	}
	return -1;
}

/* at '@' */
static int rp_domain(struct rp *r, struct sbuf *s)
{
	r->p++;
	if (rp_skip_lwsp(r) <= 0)
		return -1;
	if (*r->p == '[')
		return rp_domain_literal(r, s);
	return rp_dot_atom(r, s);
}

/* type "/" subtype into s. On a syntax error s keeps a lone type
 * ("text") but is emptied otherwise, and anything but a parameter list
 * after the subtype is an error: Dovecot 2.3's reading, which shows
 * such a part as ("" "" NIL ...). */
static int rp_content_type(struct rp *r, struct sbuf *s)
{
	size_t orig = s->len, after;
	int ret;

	if (rp_skip_lwsp(r) <= 0)
		return -1;
	if (rp_mime_token(r, s) <= 0 || s->len == orig)
		return -1;
	if (*r->p != '/')
		goto bad;
	r->p++;
	if (rp_skip_lwsp(r) <= 0)
		goto bad;
	sb_addc(s, '/');
	after = s->len;
	if ((ret = rp_mime_token(r, s)) < 0 || s->len == after)
		goto bad;
	if (ret > 0 && *r->p != ';')
		goto bad;
	return ret;
bad:
	s->len = orig;
	s->s[orig] = '\0';
	return -1;
}

/* one ";" key "=" value */
static int rp_content_param(struct rp *r, struct sbuf *key, struct sbuf *value)
{
	int ret;

	sb_reset(key);
	sb_reset(value);
	if (r->p == r->end)
		return 0;
	if (*r->p != ';')
		return -1;
	r->p++;
	if (rp_skip_lwsp(r) <= 0)
		return -1;
	if (rp_mime_token(r, key) <= 0)
		return -1;
	if (*r->p != '=')
		return -1;
	r->p++;
	if ((ret = rp_skip_lwsp(r)) <= 0) {
		/* broken or no value */
	} else if (*r->p == '"') {
		ret = rp_quoted_string(r, value);
	} else if (*r->p == '=') {
		/* name==?utf-8?b?...?= as some senders write it */
		while (r->p != r->end && *r->p != ';' && *r->p != ' ' && *r->p != '\t' &&
		       *r->p != '\r' && *r->p != '\n')
			sb_addc(value, *r->p++);
	} else {
		ret = rp_mime_token(r, value);
	}
	return ret < 0 ? -1 : 1;
}

/* ---------------------------------------------------------- parameters */
struct param {
	char *name, *value;
};

struct params {
	struct param *v;
	size_t n;
};

static void params_add(struct params *ps, const char *name, const char *value)
{
	if (ps->n >= IMAP_MIME_PARAMS_MAX)
		return;
	ps->v = xrealloc(ps->v, (ps->n + 1) * sizeof(*ps->v));
	ps->v[ps->n].name = xstrdup(name);
	ps->v[ps->n].value = xstrdup(value);
	ps->n++;
}

static void params_free(struct params *ps)
{
	for (size_t i = 0; i < ps->n; i++) {
		free(ps->v[i].name);
		free(ps->v[i].value);
	}
	free(ps->v);
	ps->v = NULL;
	ps->n = 0;
}

struct rfc2231_piece {
	char *key, *value;
	unsigned idx;
	bool extended;
	size_t order;
};

static int rfc2231_cmp(const void *a, const void *b)
{
	const struct rfc2231_piece *x = a, *y = b;
	int r = strcmp(x->key, y->key);

	if (r != 0)
		return r;
	if (x->idx != y->idx)
		return x->idx < y->idx ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

/* The parameters after a Content-Type or Content-Disposition value, with
 * RFC 2231 continuations (key*0, key*1*, ...) joined into key or key*; a
 * set with a missing index stays as its pieces. Plain ones come first. */
static void parse_params(struct rp *r, struct params *out)
{
	struct sbuf key = {0}, value = {0}, joined = {0};
	struct rfc2231_piece *pieces = NULL;
	size_t n_pieces = 0, next;
	int ret;

	while ((ret = rp_content_param(r, &key, &value)) != 0) {
		const char *k, *star, *p;
		unsigned idx = 0;
		bool extended = false;

		if (ret < 0) {
			if (r->p == r->end)
				break;
			r->p++;
			continue;
		}
		if (out->n + n_pieces >= IMAP_MIME_PARAMS_MAX)
			continue;
		k = sb_str(&key);
		star = strchr(k, '*');
		if (star != NULL) {
			p = star;
			if (p[1] != '\0') {
				p++;
				for (; *p >= '0' && *p <= '9'; p++)
					idx = idx * 10 + (unsigned)(*p - '0');
			}
			if (*p == '*') {
				extended = true;
				p++;
			}
			if (*p != '\0')
				star = NULL;
		}
		if (star == NULL) {
			params_add(out, k, sb_str(&value));
			continue;
		}
		pieces = xrealloc(pieces, (n_pieces + 1) * sizeof(*pieces));
		pieces[n_pieces].key = xstrndup(k, (size_t)(star - k));
		pieces[n_pieces].value = sdup(&value);
		pieces[n_pieces].idx = idx;
		pieces[n_pieces].extended = extended;
		pieces[n_pieces].order = n_pieces;
		n_pieces++;
	}
	if (n_pieces > 0)
		qsort(pieces, n_pieces, sizeof(*pieces), rfc2231_cmp);
	for (size_t i = 0; i < n_pieces; i = next) {
		bool ok = true, have_ext = false;
		unsigned want = 0;
		size_t j;
		char *k;

		for (j = i; j < n_pieces; j++) {
			if (strcasecmp(pieces[i].key, pieces[j].key) != 0)
				break;
			if (pieces[j].idx != want)
				ok = false;
			if (pieces[j].extended)
				have_ext = true;
			want++;
		}
		next = j;
		if (!ok) {
			for (j = i; j < next; j++) {
				k = xasprintf(pieces[j].extended ? "%s*%u*" : "%s*%u", pieces[j].key,
					      pieces[j].idx);
				params_add(out, k, pieces[j].value);
				free(k);
			}
			continue;
		}
		sb_reset(&joined);
		if (!pieces[i].extended && have_ext)
			sb_add(&joined, "''");
		for (j = i; j < next; j++) {
			if (!pieces[j].extended && have_ext) {
				for (const char *q = pieces[j].value; *q != '\0'; q++) {
					if (*q == '%')
						sb_add(&joined, "%25");
					else
						sb_addc(&joined, *q);
				}
			} else {
				sb_add(&joined, pieces[j].value);
			}
		}
		k = xasprintf("%s%s", pieces[i].key, have_ext ? "*" : "");
		params_add(out, k, sb_str(&joined));
		free(k);
	}
	for (size_t i = 0; i < n_pieces; i++) {
		free(pieces[i].key);
		free(pieces[i].value);
	}
	free(pieces);
	sb_free(&joined);
	sb_free(&key);
	sb_free(&value);
}

/* -------------------------------------------------------------- headers */
/*
 * A header field as Dovecot's header parser sees it: the name up to the
 * colon (white space before the colon dropped), the value from after the
 * colon and its white space through the last continuation line. A line
 * without a colon is a field with that name and no value.
 */
struct hfield {
	const char *start, *end; /* the raw field, through its last LF */
	const char *name;
	size_t name_len;
	const char *value;       /* after the colon */
	bool has_colon;
};

/* The next field of the header section at *pp (before end): true with f
 * filled and *pp past it; false at the blank line or the end. */
static bool header_next(const char **pp, const char *end, struct hfield *f)
{
	const char *p = *pp, *eol, *colon;

	if (p >= end)
		return false;
	if (*p == '\n' || (*p == '\r' && p + 1 < end && p[1] == '\n'))
		return false;
	f->start = p;
	eol = memchr(p, '\n', (size_t)(end - p));
	eol = eol != NULL ? eol + 1 : end;
	colon = memchr(p, ':', (size_t)(eol - p));
	if (colon != NULL) {
		const char *ne = colon;
		while (ne > p && (ne[-1] == ' ' || ne[-1] == '\t'))
			ne--;
		f->name = p;
		f->name_len = (size_t)(ne - p);
		f->value = colon + 1;
		f->has_colon = true;
	} else {
		const char *ne = eol;
		while (ne > p && (ne[-1] == '\n' || ne[-1] == '\r'))
			ne--;
		f->name = p;
		f->name_len = (size_t)(ne - p);
		f->value = ne;
		f->has_colon = false;
	}
	while (eol < end && (*eol == ' ' || *eol == '\t')) {
		const char *n = memchr(eol, '\n', (size_t)(end - eol));
		eol = n != NULL ? n + 1 : end;
	}
	f->end = eol;
	*pp = eol;
	return true;
}

/* Where the header section starting at p ends (after its blank line). */
static const char *header_end(const char *p, const char *end)
{
	struct hfield f;

	while (header_next(&p, end, &f))
		;
	if (p < end)
		p += *p == '\r' ? 2 : 1;
	return p;
}

static bool name_is(const char *name, size_t len, const char *want)
{
	size_t n = strlen(want);
	return len == n && strncasecmp(name, want, n) == 0;
}

static bool field_is(const struct hfield *f, const char *want)
{
	return name_is(f->name, f->name_len, want);
}

/* The field's full value: leading white space skipped, lines joined with
 * "\n" (the CR before each LF dropped). */
static void field_value(const struct hfield *f, struct sbuf *out)
{
	const char *p = f->value, *end = f->end;

	sb_reset(out);
	if (!f->has_colon)
		return;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	while (p < end) {
		const char *lf = memchr(p, '\n', (size_t)(end - p));
		const char *ce = lf != NULL ? lf : end;
		if (lf != NULL && ce > p && ce[-1] == '\r')
			ce--;
		sb_addn(out, p, (size_t)(ce - p));
		if (lf == NULL || lf + 1 >= end)
			break;
		sb_addc(out, '\n');
		p = lf + 1;
	}
}

/* ------------------------------------------------------------- addresses */
/* One entry of an ENVELOPE address list: a mailbox, or the start (mailbox
 * = group name, no domain) or end (all NULL) of a group. */
struct addr {
	char *name, *route, *mailbox, *domain;
	struct addr *next;
};

struct addr_ctx {
	struct rp r;
	struct sbuf str, comment;
	struct addr cur;
	struct addr *first, *last;
	size_t count;
	bool at_seen; /* the addr-spec had an "@domain" (even a broken one) */
};

static void addr_clear(struct addr *a)
{
	free(a->name);
	free(a->route);
	free(a->mailbox);
	free(a->domain);
	memset(a, 0, sizeof(*a));
}

static void addr_set(char **field, char *value)
{
	free(*field);
	*field = value;
}

static void addr_push(struct addr_ctx *c)
{
	struct addr *a = xcalloc(1, sizeof(*a));

	*a = c->cur;
	memset(&c->cur, 0, sizeof(c->cur));
	a->next = NULL;
	if (c->first == NULL)
		c->first = a;
	else
		c->last->next = a;
	c->last = a;
	c->count++;
}

static int addr_local_part(struct addr_ctx *c)
{
	int ret;

	sb_reset(&c->str);
	if (*c->r.p == '"')
		ret = rp_quoted_string(&c->r, &c->str);
	else
		ret = rp_loose_dot_atom(&c->r, &c->str);
	if (ret < 0)
		return -1;
	addr_set(&c->cur.mailbox, sdup(&c->str));
	return ret;
}

static int addr_domain(struct addr_ctx *c)
{
	int ret;

	sb_reset(&c->str);
	if ((ret = rp_domain(&c->r, &c->str)) < 0)
		return -1;
	addr_set(&c->cur.domain, sdup(&c->str));
	return ret;
}

static int addr_domain_list(struct addr_ctx *c)
{
	int ret;

	sb_reset(&c->str);
	for (;;) {
		if (c->r.p >= c->r.end)
			return 0;
		if (*c->r.p != '@')
			break;
		if (c->str.len > 0)
			sb_addc(&c->str, ',');
		sb_addc(&c->str, '@');
		if ((ret = rp_domain(&c->r, &c->str)) <= 0)
			return ret;
		while (rp_skip_lwsp(&c->r) > 0 && *c->r.p == ',')
			c->r.p++;
	}
	addr_set(&c->cur.route, sdup(&c->str));
	return 1;
}

static int addr_angle(struct addr_ctx *c)
{
	c->r.p++;
	if (rp_skip_lwsp(&c->r) <= 0)
		return -1;
	if (*c->r.p == '@') {
		if (addr_domain_list(c) > 0 && *c->r.p == ':') {
			c->r.p++;
		} else {
			addr_set(&c->cur.route, xstrdup("INVALID_ROUTE"));
			if (c->r.p >= c->r.end)
				return -1;
		}
		if (rp_skip_lwsp(&c->r) <= 0)
			return -1;
	}
	if (*c->r.p != '>') {
		if (addr_local_part(c) <= 0)
			return -1;
		if (*c->r.p == '@') {
			if (addr_domain(c) <= 0)
				return -1;
		}
	}
	if (*c->r.p != '>')
		return -1;
	c->r.p++;
	return rp_skip_lwsp(&c->r);
}

static int addr_name_addr(struct addr_ctx *c)
{
	sb_reset(&c->str);
	if (rp_phrase(&c->r, &c->str) <= 0 || *c->r.p != '<')
		return -1;
	if (c->str.len > 0)
		addr_set(&c->cur.name, sdup(&c->str));
	if (addr_angle(c) < 0)
		addr_set(&c->cur.domain, xstrdup("SYNTAX_ERROR"));
	return c->r.p < c->r.end ? 1 : 0;
}

static int addr_spec(struct addr_ctx *c)
{
	int ret, ret2 = -2;
	bool quoted;

	sb_reset(&c->comment);
	quoted = *c->r.p == '"';
	c->at_seen = false;
	ret = addr_local_part(c);
	if (ret != 0 && c->r.p < c->r.end && *c->r.p == '@') {
		c->at_seen = true;
		ret2 = addr_domain(c);
		if (ret2 <= 0)
			ret = ret2;
	}
	if (c->comment.len > 0) {
		addr_set(&c->cur.name, sdup(&c->comment));
	} else if (ret2 == -2) {
		/* "user" alone is a mailbox; "user more words" a display name */
		size_t before;

		sb_addc(&c->str, ' ');
		before = c->str.len;
		(void)rp_phrase(&c->r, &c->str);
		if (c->str.len != before) {
			addr_set(&c->cur.mailbox, NULL);
			addr_set(&c->cur.name, sdup(&c->str));
		} else if (!quoted) {
			addr_set(&c->cur.domain, xstrdup(""));
		}
		ret = -1;
	}
	return ret;
}

static void addr_push_fixed(struct addr_ctx *c)
{
	if (c->cur.mailbox == NULL)
		c->cur.mailbox = xstrdup("MISSING_MAILBOX");
	if (c->cur.domain == NULL || c->cur.domain[0] == '\0')
		addr_set(&c->cur.domain, xstrdup("MISSING_DOMAIN"));
	addr_push(c);
}

static int addr_mailbox(struct addr_ctx *c)
{
	const char *start = c->r.p;
	int ret;

	if ((ret = addr_name_addr(c)) < 0) {
		c->r.p = start;
		addr_clear(&c->cur);
		ret = addr_spec(c);
		if (ret < 0 && !c->at_seen && c->cur.name == NULL && c->cur.mailbox != NULL &&
		    c->cur.domain == NULL) {
			c->cur.name = c->cur.mailbox;
			c->cur.mailbox = NULL;
		}
	}
	addr_push_fixed(c);
	return ret;
}

static int addr_group(struct addr_ctx *c)
{
	int ret;

	sb_reset(&c->str);
	if (rp_phrase(&c->r, &c->str) <= 0 || *c->r.p != ':')
		return -1;
	c->r.p++;
	ret = rp_skip_lwsp(&c->r);
	addr_clear(&c->cur);
	c->cur.mailbox = sdup(&c->str);
	addr_push(c);
	if (ret > 0 && *c->r.p != ';') {
		while (c->count < IMAP_MIME_ADDRS_MAX) {
			(void)addr_mailbox(c);
			if (c->r.p >= c->r.end || *c->r.p != ',')
				break;
			c->r.p++;
			if (rp_skip_lwsp(&c->r) <= 0) {
				ret = -1;
				break;
			}
		}
	}
	if (ret >= 0) {
		if (c->r.p >= c->r.end || *c->r.p != ';') {
			ret = -1;
		} else {
			c->r.p++;
			ret = rp_skip_lwsp(&c->r);
		}
	}
	addr_clear(&c->cur);
	addr_push(c); /* the group's end: all NIL */
	return ret == 0 ? 0 : 1;
}

static int addr_address(struct addr_ctx *c)
{
	const char *start = c->r.p;
	int ret;

	if ((ret = addr_group(c)) < 0) {
		c->r.p = start;
		addr_clear(&c->cur);
		ret = addr_mailbox(c);
	}
	return ret;
}

/* Appends the addresses of value to the list (first, last): a repeated
 * address field adds to the ones before, as in Dovecot. */
static void addr_parse(const char *value, size_t len, struct addr **first, struct addr **last,
		       size_t *count)
{
	struct addr_ctx c;
	int ret;

	memset(&c, 0, sizeof(c));
	c.r.p = value;
	c.r.end = value + len;
	c.r.last_comment = &c.comment;
	c.count = *count;
	sb_reset(&c.comment);
	if (rp_skip_lwsp(&c.r) > 0) {
		while (c.count < IMAP_MIME_ADDRS_MAX) {
			if (addr_address(&c) == 0)
				break;
			if (c.r.p >= c.r.end || *c.r.p != ',')
				break;
			c.r.p++;
			if ((ret = rp_skip_lwsp(&c.r)) <= 0) {
				if (ret < 0)
					addr_push_fixed(&c);
				break;
			}
		}
	}
	addr_clear(&c.cur);
	sb_free(&c.str);
	sb_free(&c.comment);
	if (c.first != NULL) {
		if (*first == NULL)
			*first = c.first;
		else
			(*last)->next = c.first;
		*last = c.last;
	}
	*count = c.count;
}

static void addr_free(struct addr **list)
{
	struct addr *a = *list, *next;

	for (; a != NULL; a = next) {
		next = a->next;
		addr_clear(a);
		free(a);
	}
	*list = NULL;
}

static void write_addresses(struct sbuf *out, const struct addr *a)
{
	if (a == NULL) {
		sb_add(out, "NIL");
		return;
	}
	sb_addc(out, '(');
	for (; a != NULL; a = a->next) {
		sb_addc(out, '(');
		if (a->name == NULL)
			sb_add(out, "NIL");
		else
			imap_string_for_humans(out, a->name, strlen(a->name));
		sb_addc(out, ' ');
		imap_nstring_nolf(out, a->route);
		sb_addc(out, ' ');
		imap_nstring_nolf(out, a->mailbox);
		sb_addc(out, ' ');
		imap_nstring_nolf(out, a->domain);
		sb_addc(out, ')');
	}
	sb_addc(out, ')');
}

/* ------------------------------------------------------------ envelope */
enum env_field {
	ENV_DATE, ENV_SUBJECT, ENV_FROM, ENV_SENDER, ENV_REPLY_TO, ENV_TO, ENV_CC,
	ENV_BCC, ENV_IN_REPLY_TO, ENV_MESSAGE_ID, ENV_N
};
static const char *const env_names[ENV_N] = {
	"Date", "Subject", "From", "Sender", "Reply-To", "To", "Cc", "Bcc",
	"In-Reply-To", "Message-ID",
};

/* ENVELOPE of the header section over [p, end), parenthesised */
static void write_envelope(struct sbuf *out, const char *p, const char *end)
{
	struct sbuf str[ENV_N], v = {0};
	bool have[ENV_N] = {false};
	struct addr *first[ENV_N] = {NULL}, *last[ENV_N] = {NULL};
	size_t count[ENV_N] = {0};
	const char *hstart = p;
	struct hfield f;
	int i;

	memset(str, 0, sizeof(str));
	while ((size_t)(p - hstart) < IMAP_MIME_HEADER_MAX && header_next(&p, end, &f)) {
		if (!f.has_colon)
			continue;
		for (i = 0; i < ENV_N; i++)
			if (field_is(&f, env_names[i]))
				break;
		if (i == ENV_N)
			continue;
		field_value(&f, &v);
		switch (i) {
		case ENV_DATE:
		case ENV_SUBJECT:
		case ENV_IN_REPLY_TO:
		case ENV_MESSAGE_ID:
			/* the last one counts; a NUL becomes U+FFFD, as in Dovecot */
			sb_reset(&str[i]);
			for (size_t k = 0; k < v.len; k++) {
				if (v.s[k] == '\0')
					sb_add(&str[i], "\xef\xbf\xbd");
				else
					sb_addc(&str[i], v.s[k]);
			}
			have[i] = true;
			break;
		default:
			addr_parse(sb_str(&v), v.len, &first[i], &last[i], &count[i]);
			break;
		}
	}
	sb_addc(out, '(');
	imap_nstring_nolf(out, have[ENV_DATE] ? sb_str(&str[ENV_DATE]) : NULL);
	sb_addc(out, ' ');
	if (have[ENV_SUBJECT])
		imap_string_for_humans(out, sb_str(&str[ENV_SUBJECT]), str[ENV_SUBJECT].len);
	else
		sb_add(out, "NIL");
	sb_addc(out, ' ');
	write_addresses(out, first[ENV_FROM]);
	sb_addc(out, ' ');
	write_addresses(out, first[ENV_SENDER] != NULL ? first[ENV_SENDER] : first[ENV_FROM]);
	sb_addc(out, ' ');
	write_addresses(out, first[ENV_REPLY_TO] != NULL ? first[ENV_REPLY_TO] : first[ENV_FROM]);
	sb_addc(out, ' ');
	write_addresses(out, first[ENV_TO]);
	sb_addc(out, ' ');
	write_addresses(out, first[ENV_CC]);
	sb_addc(out, ' ');
	write_addresses(out, first[ENV_BCC]);
	sb_addc(out, ' ');
	imap_nstring_nolf(out, have[ENV_IN_REPLY_TO] ? sb_str(&str[ENV_IN_REPLY_TO]) : NULL);
	sb_addc(out, ' ');
	imap_nstring_nolf(out, have[ENV_MESSAGE_ID] ? sb_str(&str[ENV_MESSAGE_ID]) : NULL);
	sb_addc(out, ')');
	for (i = 0; i < ENV_N; i++) {
		sb_free(&str[i]);
		addr_free(&first[i]);
	}
	sb_free(&v);
}

/* ------------------------------------------------------------ structure */
enum {
	PART_TEXT = 1 << 0,
	PART_MULTIPART = 1 << 1,
	PART_RFC822 = 1 << 2,
	PART_IS_MIME = 1 << 3,
	PART_DIGEST = 1 << 4,
	/* a multipart or message/rfc822 past the limits: a leaf, shown as
	 * application/octet-stream as Dovecot does */
	PART_OVERFLOW = 1 << 5,
};

/* A part: offsets into the message. The header section [hdr_start,
 * hdr_end) includes its blank line; a message/rfc822 part has one child
 * (the message), a multipart its parts. */
struct part {
	struct part *parent, *children, *next;
	size_t hdr_start, hdr_end;
	size_t body_start, body_end;
	unsigned flags;
	unsigned depth;
};

struct boundary {
	struct boundary *next; /* the older one */
	struct part *part;
	char *str;
	size_t len;
	bool epilogue; /* the last match was "--boundary--" */
};

struct imap_msg {
	const char *data;
	size_t len;
	struct part *root;
	size_t n_parts;
	const char *top_hdr_end;
};

struct imap_msg *imap_msg_new(const char *data, size_t len)
{
	struct imap_msg *m = xcalloc(1, sizeof(*m));

	m->data = data != NULL ? data : "";
	m->len = data != NULL ? len : 0;
	return m;
}

static void part_free(struct part *p)
{
	while (p != NULL) {
		struct part *next = p->next;
		part_free(p->children);
		free(p);
		p = next;
	}
}

void imap_msg_free(struct imap_msg **mp)
{
	struct imap_msg *m = *mp;

	if (m == NULL)
		return;
	part_free(m->root);
	free(m);
	*mp = NULL;
}

void imap_section_clear(struct imap_section *sec)
{
	for (size_t i = 0; i < sec->n_fields && i < IMAP_SECTION_FIELDS_MAX; i++)
		free(sec->fields[i]);
	memset(sec, 0, sizeof(*sec));
}

struct parser {
	struct imap_msg *m;
	const char *d;
	size_t len;
	struct boundary *bounds; /* the open boundaries, newest first */
};

static struct part *part_new(struct parser *ps, struct part *parent, size_t pos)
{
	struct part *p = xcalloc(1, sizeof(*p));

	p->parent = parent;
	p->hdr_start = p->hdr_end = p->body_start = p->body_end = pos;
	p->depth = parent != NULL ? parent->depth + 1 : 0;
	if (parent != NULL) {
		struct part **l = &parent->children;
		while (*l != NULL)
			l = &(*l)->next;
		*l = p;
	}
	ps->m->n_parts++;
	return p;
}

/* The boundary whose line starts at d[pos]: "--" and an open boundary as
 * a prefix (the longest; the newest of equals), or NULL. */
static struct boundary *boundary_at(struct parser *ps, size_t pos)
{
	struct boundary *b, *best = NULL;
	size_t rest;

	if (ps->bounds == NULL || pos + 2 > ps->len || ps->d[pos] != '-' || ps->d[pos + 1] != '-')
		return NULL;
	pos += 2;
	rest = ps->len - pos;
	for (b = ps->bounds; b != NULL; b = b->next) {
		if (b->len <= rest && memcmp(b->str, ps->d + pos, b->len) == 0 &&
		    (best == NULL || best->len < b->len))
			best = b;
	}
	if (best != NULL)
		best->epilogue =
			rest >= best->len + 2 && memcmp(ps->d + pos + best->len, "--", 2) == 0;
	return best;
}

/* Reads the header of p starting at pos: p's flags, and its boundary
 * opened when the header ends with a blank line. Returns where the body
 * starts. */
static size_t parse_header(struct parser *ps, struct part *p, size_t pos)
{
	const char *d = ps->d, *cur = d + pos, *end = d + ps->len;
	struct sbuf v = {0}, type = {0};
	char *boundary = NULL;
	bool seen_ct = false, blank = false;
	size_t prev_nl = 0;

	p->hdr_start = pos;
	for (;;) {
		size_t at = (size_t)(cur - d);
		struct hfield f;

		if (at >= ps->len)
			break;
		if (boundary_at(ps, at) != NULL) {
			/* the newline before the boundary line is the boundary's */
			p->hdr_end = at - prev_nl;
			p->body_start = p->body_end = at;
			goto done;
		}
		if (!header_next(&cur, end, &f)) {
			cur += *cur == '\r' ? 2 : 1;
			blank = true;
			break;
		}
		prev_nl = 0;
		if (f.end[-1] == '\n')
			prev_nl = f.end - f.start >= 2 && f.end[-2] == '\r' ? 2 : 1;
		if ((size_t)(f.start - (d + p->hdr_start)) > IMAP_MIME_HEADER_MAX || !f.has_colon)
			continue;
		if (field_is(&f, "Mime-Version")) {
			p->flags |= PART_IS_MIME;
		} else if (field_is(&f, "Content-Type")) {
			struct params params = {0};
			struct rp r;
			const char *t;
			bool ok;

			p->flags |= PART_IS_MIME;
			if (seen_ct)
				continue;
			seen_ct = true;
			field_value(&f, &v);
			sb_reset(&type);
			r.p = sb_str(&v);
			r.end = r.p + v.len;
			r.last_comment = NULL;
			rp_skip_lwsp(&r);
			ok = rp_content_type(&r, &type) >= 0;
			t = sb_str(&type);
			if (strcasecmp(t, "message/rfc822") == 0) {
				p->flags |= PART_RFC822;
			} else if (strncasecmp(t, "text", 4) == 0 && (t[4] == '\0' || t[4] == '/')) {
				p->flags |= PART_TEXT;
			} else if (strncasecmp(t, "multipart/", 10) == 0) {
				p->flags |= PART_MULTIPART;
				if (strcasecmp(t + 10, "digest") == 0)
					p->flags |= PART_DIGEST;
			}
			if (ok && (p->flags & PART_MULTIPART)) {
				parse_params(&r, &params);
				for (size_t i = 0; i < params.n; i++) {
					if (strcasecmp(params.v[i].name, "boundary") == 0) {
						boundary = xstrdup(params.v[i].value);
						break;
					}
				}
				params_free(&params);
			}
		}
	}
	p->hdr_end = p->body_start = p->body_end = (size_t)(cur - d);
	if (boundary != NULL && (p->flags & PART_IS_MIME) && blank) {
		struct boundary *b = xcalloc(1, sizeof(*b));
		b->part = p;
		b->str = boundary;
		b->len = strlen(boundary);
		b->next = ps->bounds;
		ps->bounds = b;
		boundary = NULL;
	}
done:
	free(boundary);
	if (!(p->flags & PART_IS_MIME))
		p->flags = 0;
	if (!seen_ct || !(p->flags & PART_IS_MIME)) {
		if (p->parent != NULL && (p->parent->flags & PART_DIGEST))
			p->flags |= PART_RFC822;
		else
			p->flags |= PART_TEXT;
	}
	sb_free(&v);
	sb_free(&type);
	return p->body_start;
}

/* drops the open boundaries newer than keep (keep stays) */
static void bounds_pop_to(struct parser *ps, struct boundary *keep)
{
	while (ps->bounds != NULL && ps->bounds != keep) {
		struct boundary *b = ps->bounds;
		ps->bounds = b->next;
		free(b->str);
		free(b);
	}
}

/* the bodies of from and its ancestors below to end at end */
static void close_parts(struct part *from, const struct part *to, size_t end)
{
	for (struct part *p = from; p != NULL && p != to; p = p->parent)
		p->body_end = end;
}

static bool too_deep(const struct parser *ps, const struct part *p)
{
	return p->depth + 1 >= IMAP_MIME_DEPTH_MAX || ps->m->n_parts >= IMAP_MIME_PARTS_MAX;
}

static void build_tree(struct imap_msg *m)
{
	struct parser ps = {m, m->data, m->len, NULL};
	struct part *cur;
	size_t pos = 0;
	bool header = true;

	m->root = cur = part_new(&ps, NULL, 0);
	for (;;) {
		struct boundary *b = NULL;
		size_t ls, end = 0;
		const char *lf;

		if (header) {
			bool own;

			pos = parse_header(&ps, cur, pos);
			own = ps.bounds != NULL && ps.bounds->part == cur;
			if ((cur->flags & (PART_MULTIPART | PART_RFC822)) && too_deep(&ps, cur)) {
				/* past the limits: a leaf */
				if (own)
					bounds_pop_to(&ps, ps.bounds->next);
				own = false;
				cur->flags &= ~(unsigned)(PART_MULTIPART | PART_RFC822 | PART_DIGEST);
				cur->flags |= PART_OVERFLOW;
			}
			if (!own && (cur->flags & PART_RFC822)) {
				cur = part_new(&ps, cur, pos);
				continue;
			}
			header = false;
			if (ps.bounds == NULL) {
				close_parts(cur, NULL, ps.len);
				break;
			}
		}
		/* the body up to the next boundary line; pos is at a line start */
		for (ls = pos;;) {
			if ((b = boundary_at(&ps, ls)) != NULL) {
				end = ls;
				if (ls > pos) {
					/* the [CR]LF before the line is the boundary's */
					end = ls - 1;
					if (end > pos && ps.d[end - 1] == '\r')
						end--;
				}
				break;
			}
			lf = memchr(ps.d + ls, '\n', ps.len - ls);
			if (lf == NULL)
				break;
			ls = (size_t)(lf - ps.d) + 1;
		}
		if (b == NULL) {
			close_parts(cur, NULL, ps.len);
			break;
		}
		close_parts(cur, b->part, end);
		cur = b->part;
		/* a closing boundary is done with; an inner one forgets the
		 * boundaries opened after it */
		bounds_pop_to(&ps, b->epilogue ? b->next : b);
		lf = memchr(ps.d + ls, '\n', ps.len - ls);
		if (lf == NULL) {
			close_parts(cur, NULL, ps.len);
			break;
		}
		pos = (size_t)(lf - ps.d) + 1;
		if (ps.bounds != NULL && ps.bounds->part == cur) {
			cur = part_new(&ps, cur, pos);
			cur->flags = PART_IS_MIME;
			header = true;
			/* the last part allowed: it runs to the end, boundaries
			 * and all (Dovecot's behaviour at its limit) */
			if (m->n_parts >= IMAP_MIME_PARTS_MAX)
				bounds_pop_to(&ps, NULL);
		} else if (ps.bounds == NULL) {
			close_parts(cur, NULL, ps.len);
			break;
		}
	}
	bounds_pop_to(&ps, NULL);
}

static void ensure_tree(struct imap_msg *m)
{
	if (m->root == NULL)
		build_tree(m);
}

/* octets with LF counted as CRLF, and lines, of d[start, end) */
static void range_size(const char *d, size_t start, size_t end, size_t *vsize, size_t *lines)
{
	size_t v = end - start, l = 0;
	const char *p = d + start, *e = d + end, *lf;

	while (p < e && (lf = memchr(p, '\n', (size_t)(e - p))) != NULL) {
		l++;
		if (lf == d + start || lf[-1] != '\r')
			v++;
		p = lf + 1;
	}
	*vsize = v;
	*lines = l;
}

/* ------------------------------------------------------- BODYSTRUCTURE */
/* what a part's Content-* fields say (the first of each counts) */
struct part_data {
	bool have_type, have_id, have_description, have_encoding, have_md5, have_location,
		have_disposition;
	struct sbuf type, subtype, id, description, encoding, md5, location, disposition;
	struct params type_params, disp_params;
	char **langs;
	size_t n_langs;
};

static void part_data_free(struct part_data *pd)
{
	sb_free(&pd->type);
	sb_free(&pd->subtype);
	sb_free(&pd->id);
	sb_free(&pd->description);
	sb_free(&pd->encoding);
	sb_free(&pd->md5);
	sb_free(&pd->location);
	sb_free(&pd->disposition);
	params_free(&pd->type_params);
	params_free(&pd->disp_params);
	for (size_t i = 0; i < pd->n_langs; i++)
		free(pd->langs[i]);
	free(pd->langs);
}

static void part_data_read(const struct imap_msg *m, const struct part *p, struct part_data *pd)
{
	const char *cur = m->data + p->hdr_start, *end = m->data + p->hdr_end;
	struct sbuf v = {0}, t = {0};
	struct hfield f;

	memset(pd, 0, sizeof(*pd));
	/* not MIME: the Content-* fields do not count */
	if (!(p->flags & PART_IS_MIME))
		return;
	while ((size_t)(cur - (m->data + p->hdr_start)) < IMAP_MIME_HEADER_MAX &&
	       header_next(&cur, end, &f)) {
		const char *n = f.name + 8;
		size_t nl = f.name_len - 8;
		struct rp r;

		if (!f.has_colon || f.name_len < 8 || strncasecmp(f.name, "Content-", 8) != 0)
			continue;
		field_value(&f, &v);
		r.p = sb_str(&v);
		r.end = r.p + v.len;
		r.last_comment = NULL;
		sb_reset(&t);
		if (name_is(n, nl, "ID") && !pd->have_id) {
			sb_reset(&pd->id);
			sb_add(&pd->id, sb_str(&v));
			pd->have_id = true;
		} else if (name_is(n, nl, "MD5") && !pd->have_md5) {
			sb_reset(&pd->md5);
			sb_add(&pd->md5, sb_str(&v));
			pd->have_md5 = true;
		} else if (name_is(n, nl, "Type") && !pd->have_type) {
			const char *ts, *slash;
			int ret;

			pd->have_type = true;
			rp_skip_lwsp(&r);
			ret = rp_content_type(&r, &t);
			ts = sb_str(&t);
			slash = strchr(ts, '/');
			sb_reset(&pd->type);
			sb_reset(&pd->subtype);
			if (slash != NULL) {
				sb_addn(&pd->type, ts, (size_t)(slash - ts));
				sb_add(&pd->subtype, slash + 1);
			} else {
				sb_add(&pd->type, ts);
			}
			if (ret >= 0)
				parse_params(&r, &pd->type_params);
		} else if (name_is(n, nl, "Transfer-Encoding") && !pd->have_encoding) {
			rp_skip_lwsp(&r);
			if (rp_mime_token(&r, &t) >= 0 && rp_skip_lwsp(&r) == 0 && t.len > 0) {
				sb_reset(&pd->encoding);
				sb_add(&pd->encoding, sb_str(&t));
				pd->have_encoding = true;
			}
		} else if (name_is(n, nl, "Language") && pd->n_langs == 0) {
			rp_skip_lwsp(&r);
			while (pd->n_langs < IMAP_MIME_PARAMS_MAX && rp_atom(&r, &t) >= 0) {
				pd->langs = xrealloc(pd->langs, (pd->n_langs + 1) * sizeof(char *));
				pd->langs[pd->n_langs++] = sdup(&t);
				sb_reset(&t);
				if (r.p == r.end || *r.p != ',')
					break;
				r.p++;
				rp_skip_lwsp(&r);
			}
		} else if (name_is(n, nl, "Location") && !pd->have_location) {
			sb_reset(&pd->location);
			sb_add(&pd->location, sb_str(&v));
			pd->have_location = true;
		} else if (name_is(n, nl, "Description") && !pd->have_description) {
			sb_reset(&pd->description);
			sb_add(&pd->description, sb_str(&v));
			pd->have_description = true;
		} else if (name_is(n, nl, "Disposition") && pd->disp_params.n == 0) {
			/* Dovecot reads a later one while the earlier had no parameters */
			rp_skip_lwsp(&r);
			if (rp_mime_token(&r, &t) >= 0) {
				sb_reset(&pd->disposition);
				sb_add(&pd->disposition, sb_str(&t));
				pd->have_disposition = true;
				parse_params(&r, &pd->disp_params);
			}
		}
	}
	sb_free(&v);
	sb_free(&t);
}

static void write_params(struct sbuf *out, const struct params *ps, bool default_charset)
{
	bool seen_charset = false;

	if (!default_charset && ps->n == 0) {
		sb_add(out, "NIL");
		return;
	}
	sb_addc(out, '(');
	for (size_t i = 0; i < ps->n; i++) {
		if (i > 0)
			sb_addc(out, ' ');
		if (default_charset && strcasecmp(ps->v[i].name, "charset") == 0)
			seen_charset = true;
		imap_nstring(out, ps->v[i].name);
		sb_addc(out, ' ');
		imap_nstring(out, ps->v[i].value);
	}
	if (default_charset && !seen_charset) {
		if (ps->n > 0)
			sb_addc(out, ' ');
		sb_add(out, "\"charset\" \"us-ascii\"");
	}
	sb_addc(out, ')');
}

/* disposition, language, location */
static void write_common_ext(struct sbuf *out, const struct part_data *pd)
{
	sb_addc(out, ' ');
	if (!pd->have_disposition) {
		sb_add(out, "NIL");
	} else {
		sb_addc(out, '(');
		imap_nstring(out, sb_str(&pd->disposition));
		sb_addc(out, ' ');
		write_params(out, &pd->disp_params, false);
		sb_addc(out, ')');
	}
	sb_addc(out, ' ');
	if (pd->n_langs == 0) {
		sb_add(out, "NIL");
	} else {
		sb_addc(out, '(');
		for (size_t i = 0; i < pd->n_langs; i++) {
			if (i > 0)
				sb_addc(out, ' ');
			imap_nstring(out, pd->langs[i]);
		}
		sb_addc(out, ')');
	}
	sb_addc(out, ' ');
	imap_nstring_nolf(out, pd->have_location ? sb_str(&pd->location) : NULL);
}

#define EMPTY_BODY "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)"
#define EMPTY_BODYSTRUCTURE \
	"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0 NIL NIL NIL NIL)"

static void write_part(const struct imap_msg *m, const struct part *p, bool ext, struct sbuf *out);

static void write_siblings(const struct imap_msg *m, const struct part *p, bool ext,
			   struct sbuf *out)
{
	for (; p != NULL; p = p->next) {
		sb_addc(out, '(');
		write_part(m, p, ext, out);
		sb_addc(out, ')');
	}
}

static void write_part(const struct imap_msg *m, const struct part *p, bool ext, struct sbuf *out)
{
	struct part_data pd;
	size_t vsize, lines;
	bool text;

	part_data_read(m, p, &pd);
	if (p->flags & PART_MULTIPART) {
		if (p->children != NULL)
			write_siblings(m, p->children, ext, out);
		else
			/* a multipart without parts: one empty text/plain */
			sb_add(out, ext ? EMPTY_BODYSTRUCTURE : EMPTY_BODY);
		sb_addc(out, ' ');
		imap_nstring(out, sb_str(&pd.subtype));
		if (ext) {
			sb_addc(out, ' ');
			write_params(out, &pd.type_params, false);
			write_common_ext(out, &pd);
		}
		part_data_free(&pd);
		return;
	}
	if (p->flags & PART_RFC822) {
		sb_add(out, "\"message\" \"rfc822\"");
		text = false;
	} else if (p->flags & PART_OVERFLOW) {
		sb_add(out, "\"application\" \"octet-stream\"");
		text = false;
	} else if (!pd.have_type) {
		text = true;
		sb_add(out, "\"text\" \"plain\"");
	} else {
		/* the flags the structure parser set win over the field */
		text = (p->flags & PART_TEXT) != 0;
		imap_nstring(out, sb_str(&pd.type));
		sb_addc(out, ' ');
		imap_nstring(out, sb_str(&pd.subtype));
	}
	sb_addc(out, ' ');
	write_params(out, &pd.type_params, text);
	sb_addc(out, ' ');
	imap_nstring_nolf(out, pd.have_id ? sb_str(&pd.id) : NULL);
	sb_addc(out, ' ');
	imap_nstring_nolf(out, pd.have_description ? sb_str(&pd.description) : NULL);
	sb_addc(out, ' ');
	if (pd.have_encoding)
		imap_nstring(out, sb_str(&pd.encoding));
	else
		sb_add(out, "\"7bit\"");
	range_size(m->data, p->body_start, p->body_end, &vsize, &lines);
	sb_printf(out, " %zu", vsize);
	if (text) {
		sb_printf(out, " %zu", lines);
	} else if (p->flags & PART_RFC822) {
		const struct part *c = p->children;

		sb_addc(out, ' ');
		if (c != NULL)
			write_envelope(out, m->data + c->hdr_start, m->data + c->hdr_end);
		else
			sb_add(out, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
		sb_addc(out, ' ');
		if (c != NULL)
			write_siblings(m, c, ext, out);
		else
			sb_add(out, ext ? EMPTY_BODYSTRUCTURE : EMPTY_BODY);
		sb_printf(out, " %zu", lines);
	}
	if (ext) {
		sb_addc(out, ' ');
		imap_nstring_nolf(out, pd.have_md5 ? sb_str(&pd.md5) : NULL);
		write_common_ext(out, &pd);
	}
	part_data_free(&pd);
}

static void flush_out(struct sbuf *b, struct evbuffer *out)
{
	if (b->len > 0)
		evbuffer_add(out, b->s, b->len);
	sb_free(b);
}

/* Dovecot's test for a message that is one plain 7-bit text/plain part
 * with no parameter but charset=us-ascii, whose BODY it writes in a
 * canonical form (the charset in lower case). */
static bool plain_7bit(const struct imap_msg *m)
{
	const struct part *p = m->root;
	struct part_data pd;
	bool plain;

	if (!(p->flags & PART_TEXT) || p->children != NULL)
		return false;
	part_data_read(m, p, &pd);
	plain = (!pd.have_type || strcasecmp(sb_str(&pd.subtype), "plain") == 0) &&
		(pd.type_params.n == 0 ||
		 (pd.type_params.n == 1 && strcasecmp(pd.type_params.v[0].name, "charset") == 0 &&
		  strcasecmp(pd.type_params.v[0].value, "us-ascii") == 0)) &&
		!pd.have_id && !pd.have_description &&
		(!pd.have_encoding || strcasecmp(sb_str(&pd.encoding), "7bit") == 0) &&
		!pd.have_md5 && !pd.have_disposition && pd.n_langs == 0 && !pd.have_location;
	part_data_free(&pd);
	return plain;
}

void imap_msg_bodystructure(struct imap_msg *m, bool extended, struct evbuffer *out)
{
	struct sbuf b = {0};

	ensure_tree(m);
	sb_addc(&b, '(');
	if (!extended && plain_7bit(m)) {
		size_t vsize, lines;

		range_size(m->data, m->root->body_start, m->root->body_end, &vsize, &lines);
		sb_printf(&b, "\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" %zu %zu)",
			  vsize, lines);
		flush_out(&b, out);
		return;
	}
	write_part(m, m->root, extended, &b);
	sb_addc(&b, ')');
	flush_out(&b, out);
}

static const char *top_header_end(struct imap_msg *m)
{
	if (m->top_hdr_end == NULL)
		m->top_hdr_end = header_end(m->data, m->data + m->len);
	return m->top_hdr_end;
}

void imap_msg_envelope(struct imap_msg *m, struct evbuffer *out)
{
	struct sbuf b = {0};

	write_envelope(&b, m->data, top_header_end(m));
	flush_out(&b, out);
}

/* ------------------------------------------------------------- sections */
/* d[start, end) to out with NULs made 0x80 (Dovecot, without BINARY) */
static void add_octets(struct evbuffer *out, const char *p, size_t n)
{
	const char *nul;

	while (n > 0 && (nul = memchr(p, '\0', n)) != NULL) {
		evbuffer_add(out, p, (size_t)(nul - p));
		evbuffer_add(out, "\x80", 1);
		n -= (size_t)(nul - p) + 1;
		p = nul + 1;
	}
	if (n > 0)
		evbuffer_add(out, p, n);
}

/* d[start, end) to out, every bare LF made CRLF */
static void add_crlf(struct evbuffer *out, const char *d, size_t start, size_t end)
{
	const char *p = d + start, *e = d + end, *lf;

	while (p < e && (lf = memchr(p, '\n', (size_t)(e - p))) != NULL) {
		if (lf > d + start && lf[-1] == '\r') {
			add_octets(out, p, (size_t)(lf + 1 - p));
		} else {
			add_octets(out, p, (size_t)(lf - p));
			evbuffer_add(out, "\r\n", 2);
		}
		p = lf + 1;
	}
	if (p < e)
		add_octets(out, p, (size_t)(e - p));
}

static bool name_listed(const struct hfield *f, const struct imap_section *sec)
{
	for (size_t i = 0; i < sec->n_fields && i < IMAP_SECTION_FIELDS_MAX; i++) {
		if (sec->fields[i] != NULL && field_is(f, sec->fields[i]))
			return true;
	}
	return false;
}

/* HEADER / HEADER.FIELDS (.NOT) of the header section [hs, he) */
static void add_header(struct evbuffer *out, const struct imap_msg *m, size_t hs, size_t he,
		       const struct imap_section *sec)
{
	const char *cur = m->data + hs, *end = m->data + he;
	bool unterminated = false, cut = false;
	struct hfield f;

	if (sec->kind == IMAP_SECTION_HEADER) {
		add_crlf(out, m->data, hs, he);
		return;
	}
	while (header_next(&cur, end, &f)) {
		bool listed = f.has_colon && name_listed(&f, sec);
		size_t fe = (size_t)(f.end - m->data);

		unterminated = f.end[-1] != '\n';
		if (listed != (sec->kind == IMAP_SECTION_HEADER_FIELDS))
			continue;
		if (sec->kind == IMAP_SECTION_HEADER_FIELDS && unterminated) {
			/* a last line cut by the end: its CR (if any) and a CRLF */
			if (m->data[fe - 1] == '\r')
				fe--;
			add_crlf(out, m->data, (size_t)(f.start - m->data), fe);
			evbuffer_add(out, "\r\n", 2);
			cut = true;
		} else {
			add_crlf(out, m->data, (size_t)(f.start - m->data), fe);
		}
	}
	/* Dovecot: HEADER.FIELDS ends with a blank line, unless the last line
	 * it wrote was one cut by the end of the message (whose CRLF stands
	 * for it); the .NOT form only when the header has a blank line */
	if (sec->kind == IMAP_SECTION_HEADER_FIELDS ? !cut : cur < end)
		evbuffer_add(out, "\r\n", 2);
}

/* Where a part's header is to end in HEADER and MIME sections: without
 * its blank line when a boundary line follows that directly (Dovecot
 * gives that line end to the boundary there, not in the sizes). */
static size_t header_out_end(const struct imap_msg *m, const struct part *p)
{
	const char *d = m->data;
	size_t he = p->hdr_end, blank;

	/* the body is empty and the boundary line starts right there */
	if (p->body_end != p->body_start || p->body_start != he || he + 2 > m->len ||
	    d[he] != '-' || d[he + 1] != '-' || he <= p->hdr_start || d[he - 1] != '\n')
		return he;
	blank = he - p->hdr_start >= 2 && d[he - 2] == '\r' ? 2 : 1;
	/* the header ends with an empty line: a lone line end after a line
	 * end, or the whole header */
	if (he - blank == p->hdr_start || d[he - blank - 1] == '\n')
		return he - blank;
	return he;
}

bool imap_msg_section(struct imap_msg *m, const struct imap_section *sec, struct evbuffer *out)
{
	const struct part *p;
	size_t he;

	if (sec->n_part == 0) {
		he = (size_t)(top_header_end(m) - m->data);
		switch (sec->kind) {
		case IMAP_SECTION_ALL:
			add_crlf(out, m->data, 0, m->len);
			return true;
		case IMAP_SECTION_HEADER:
		case IMAP_SECTION_HEADER_FIELDS:
		case IMAP_SECTION_HEADER_FIELDS_NOT:
			add_header(out, m, 0, he, sec);
			return true;
		case IMAP_SECTION_TEXT:
			add_crlf(out, m->data, he, m->len);
			return true;
		case IMAP_SECTION_MIME:
			return false;
		}
		return false;
	}
	ensure_tree(m);
	p = m->root;
	/* Dovecot's walk: a multipart's n-th part; a message's (or a leaf's)
	 * own "1" once — the body of a non-multipart message is its part 1,
	 * but 1.1 is not there; a message/rfc822 part with numbers after it
	 * stands for the message it holds. */
	bool stayed = false;
	for (size_t i = 0; i < sec->n_part && i < IMAP_SECTION_DEPTH_MAX; i++) {
		unsigned n = sec->part[i];
		const struct part *c;

		if (n == 0)
			return false;
		if (p->flags & PART_MULTIPART) {
			for (c = p->children; c != NULL && n > 1; c = c->next)
				n--;
			if (c == NULL)
				return false;
			p = c;
			stayed = false;
		} else if (n != 1 || stayed) {
			return false;
		} else {
			stayed = true;
		}
		if (i + 1 < sec->n_part && (p->flags & PART_RFC822) && p->children != NULL) {
			p = p->children;
			stayed = false;
		}
	}
	switch (sec->kind) {
	case IMAP_SECTION_ALL:
		add_crlf(out, m->data, p->body_start, p->body_end);
		return true;
	case IMAP_SECTION_MIME:
		add_crlf(out, m->data, p->hdr_start, header_out_end(m, p));
		return true;
	case IMAP_SECTION_HEADER:
	case IMAP_SECTION_HEADER_FIELDS:
	case IMAP_SECTION_HEADER_FIELDS_NOT:
	case IMAP_SECTION_TEXT:
		if (!(p->flags & PART_RFC822) || p->children == NULL)
			return false;
		p = p->children;
		if (sec->kind == IMAP_SECTION_TEXT)
			add_crlf(out, m->data, p->body_start, p->body_end);
		else
			add_header(out, m, p->hdr_start,
				   sec->kind == IMAP_SECTION_HEADER_FIELDS ? p->hdr_end
									   : header_out_end(m, p),
				   sec);
		return true;
	}
	return false;
}

/* --------------------------------------------------------------- SEARCH */
/* needle in hay (UTF-8), case-insensitively */
static bool text_has(const char *hay, size_t hay_len, const char *needle)
{
	gchar *h, *n;
	bool found;

	if (*needle == '\0')
		return true;
	h = g_utf8_casefold(hay, (gssize)hay_len);
	n = g_utf8_casefold(needle, -1);
	found = strstr(h, n) != NULL;
	g_free(h);
	g_free(n);
	return found;
}

/* a header value with its RFC 2047 words decoded, in UTF-8 */
static bool value_has(const char *value, const char *needle)
{
	char *dec;
	bool found;

	mime_init_once();
	dec = g_mime_utils_header_decode_text(NULL, value);
	found = dec != NULL && text_has(dec, strlen(dec), needle);
	g_free(dec);
	return found;
}

/* An address list written back the way Dovecot normalises it before
 * matching FROM/TO/CC/BCC: "Name <box@domain>", "group: a@b;", comments
 * that did not become names gone. */
static void append_maybe_quoted(struct sbuf *out, const char *s, bool escape_dot)
{
	const char *p;
	bool escape = false;

	for (p = s; *p != '\0'; p++)
		if (!IS_ATEXT(*p) && (escape_dot || *p != '.'))
			break;
	if (*p == '\0') {
		sb_add(out, s);
		return;
	}
	for (p = s; *p != '\0'; p++)
		if (*p == '"' || *p == '\\' || *p == '\'')
			escape = true;
	sb_addc(out, '"');
	for (p = s; *p != '\0'; p++) {
		if (escape && (*p == '"' || *p == '\\' || *p == '\''))
			sb_addc(out, '\\');
		sb_addc(out, *p);
	}
	sb_addc(out, '"');
}

static void addresses_string(const struct addr *a, struct sbuf *out)
{
	bool first = true, in_group = false;

	sb_reset(out);
	for (; a != NULL; a = a->next) {
		if (!first)
			sb_add(out, ", ");
		first = false;
		if (a->domain == NULL) {
			if (!in_group) {
				if (a->mailbox != NULL && *a->mailbox != '\0') {
					if (strstr(a->mailbox, "=?") != NULL)
						sb_add(out, a->mailbox);
					else
						append_maybe_quoted(out, a->mailbox, true);
				} else {
					sb_add(out, "\"\"");
				}
				sb_add(out, ": ");
				first = true;
			} else {
				/* the group's end: drop the ", " (or the space after ':') */
				if (out->len >= 2 && out->s[out->len - 2] == ',')
					out->len -= 2;
				else if (out->len >= 1 && out->s[out->len - 1] == ' ')
					out->len -= 1;
				out->s[out->len] = '\0';
				sb_addc(out, ';');
			}
			in_group = !in_group;
			continue;
		}
		if (a->name != NULL) {
			if (strstr(a->name, "=?") != NULL)
				sb_add(out, a->name);
			else
				append_maybe_quoted(out, a->name, true);
		}
		if (a->route != NULL || a->mailbox[0] != '\0' || a->domain[0] != '\0') {
			if (a->name != NULL && a->name[0] != '\0')
				sb_addc(out, ' ');
			sb_addc(out, '<');
			if (a->route != NULL) {
				sb_add(out, a->route);
				sb_addc(out, ':');
			}
			if (a->mailbox[0] == '\0')
				sb_add(out, "\"\"");
			else
				append_maybe_quoted(out, a->mailbox, false);
			if (a->domain[0] != '\0') {
				sb_addc(out, '@');
				sb_add(out, a->domain);
			}
			sb_addc(out, '>');
		}
	}
}

static bool is_address_field(const struct hfield *f)
{
	return field_is(f, "From") || field_is(f, "To") || field_is(f, "Cc") ||
	       field_is(f, "Bcc") || field_is(f, "Sender") || field_is(f, "Reply-To");
}

/* any field of the header [hs, he) (named name, or any) holding needle;
 * with_names: "Name: value" is matched (TEXT), else the value */
static bool header_has(const struct imap_msg *m, size_t hs, size_t he, const char *name,
		       const char *needle, bool with_names)
{
	const char *cur = m->data + hs, *end = m->data + he;
	struct sbuf v = {0}, t = {0};
	struct hfield f;
	bool found = false;

	while (!found && (size_t)(cur - (m->data + hs)) < IMAP_MIME_HEADER_MAX &&
	       header_next(&cur, end, &f)) {
		if (!f.has_colon || (name != NULL && !field_is(&f, name)))
			continue;
		field_value(&f, &v);
		if (!with_names && is_address_field(&f)) {
			struct addr *first = NULL, *last = NULL;
			size_t count = 0;

			addr_parse(sb_str(&v), v.len, &first, &last, &count);
			addresses_string(first, &t);
			addr_free(&first);
			sb_reset(&v);
			sb_add(&v, sb_str(&t));
		}
		if (with_names) {
			sb_reset(&t);
			sb_addn(&t, f.name, f.name_len);
			sb_add(&t, ": ");
			sb_add(&t, sb_str(&v));
			found = value_has(sb_str(&t), needle);
		} else {
			found = value_has(sb_str(&v), needle);
		}
	}
	sb_free(&v);
	sb_free(&t);
	return found;
}

bool imap_msg_header_contains(struct imap_msg *m, const char *field, const char *needle)
{
	return header_has(m, 0, (size_t)(top_header_end(m) - m->data), field, needle, false);
}

/* a text part's body decoded (transfer encoding, charset) to UTF-8 */
static void body_text(const struct imap_msg *m, const struct part *p, struct sbuf *out)
{
	GMimeContentEncoding enc = GMIME_CONTENT_ENCODING_DEFAULT;
	GMimeStream *mem, *filtered;
	const char *charset = NULL;
	struct part_data pd;
	GByteArray *arr;
	size_t len;

	part_data_read(m, p, &pd);
	if (pd.have_encoding)
		enc = g_mime_content_encoding_from_string(sb_str(&pd.encoding));
	for (size_t i = 0; i < pd.type_params.n; i++)
		if (strcasecmp(pd.type_params.v[i].name, "charset") == 0)
			charset = pd.type_params.v[i].value;
	mem = g_mime_stream_mem_new();
	filtered = g_mime_stream_filter_new(mem);
	if (enc == GMIME_CONTENT_ENCODING_BASE64 || enc == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE ||
	    enc == GMIME_CONTENT_ENCODING_UUENCODE) {
		GMimeFilter *f = g_mime_filter_basic_new(enc, FALSE);
		g_mime_stream_filter_add(GMIME_STREAM_FILTER(filtered), f);
		g_object_unref(f);
	}
	if (charset != NULL && *charset != '\0' && strcasecmp(charset, "utf-8") != 0 &&
	    strcasecmp(charset, "us-ascii") != 0) {
		GMimeFilter *f = g_mime_filter_charset_new(charset, "UTF-8");
		if (f != NULL) {
			g_mime_stream_filter_add(GMIME_STREAM_FILTER(filtered), f);
			g_object_unref(f);
		}
	}
	len = p->body_end - p->body_start;
	if (len > IMAP_MIME_SEARCH_MAX)
		len = IMAP_MIME_SEARCH_MAX;
	g_mime_stream_write(filtered, m->data + p->body_start, len);
	g_mime_stream_flush(filtered);
	arr = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
	sb_reset(out);
	sb_addn(out, (const char *)arr->data, arr->len);
	g_object_unref(filtered);
	g_object_unref(mem);
	part_data_free(&pd);
}

/* Which leaves SEARCH reads, as Dovecot: those without a Content-Type
 * and those of a text/ or message/ type (a message/rfc822 past the
 * limits too; not a multipart past them). */
static bool searchable(const struct imap_msg *m, const struct part *p)
{
	const char *cur = m->data + p->hdr_start, *end = m->data + p->hdr_end;
	struct sbuf v = {0}, t = {0};
	struct hfield f;
	bool found = false, yes = true;

	while (!found && header_next(&cur, end, &f)) {
		struct rp r;

		if (!f.has_colon || !field_is(&f, "Content-Type"))
			continue;
		found = true;
		field_value(&f, &v);
		r.p = sb_str(&v);
		r.end = r.p + v.len;
		r.last_comment = NULL;
		sb_reset(&t);
		rp_skip_lwsp(&r);
		(void)rp_content_type(&r, &t);
		yes = strncasecmp(sb_str(&t), "text/", 5) == 0 ||
		      strncasecmp(sb_str(&t), "message/", 8) == 0;
	}
	sb_free(&v);
	sb_free(&t);
	return yes;
}

/* needle in the text parts under p (and in their headers, with headers) */
static bool parts_have(const struct imap_msg *m, const struct part *p, const char *needle,
		       bool headers, struct sbuf *tmp)
{
	for (; p != NULL; p = p->next) {
		if (headers && p->parent != NULL &&
		    header_has(m, p->hdr_start, p->hdr_end, NULL, needle, true))
			return true;
		if (p->children != NULL) {
			if (parts_have(m, p->children, needle, headers, tmp))
				return true;
		} else if (searchable(m, p)) {
			body_text(m, p, tmp);
			if (text_has(sb_str(tmp), tmp->len, needle))
				return true;
		}
	}
	return false;
}

bool imap_msg_body_contains(struct imap_msg *m, const char *needle)
{
	struct sbuf tmp = {0};
	bool found;

	/* "" matches every message, with text parts or not (Dovecot) */
	if (*needle == '\0')
		return true;
	mime_init_once();
	ensure_tree(m);
	found = parts_have(m, m->root, needle, false, &tmp);
	sb_free(&tmp);
	return found;
}

bool imap_msg_text_contains(struct imap_msg *m, const char *needle)
{
	struct sbuf tmp = {0};
	bool found;

	if (*needle == '\0')
		return true;
	if (header_has(m, 0, (size_t)(top_header_end(m) - m->data), NULL, needle, true))
		return true;
	mime_init_once();
	ensure_tree(m);
	found = parts_have(m, m->root, needle, true, &tmp);
	sb_free(&tmp);
	return found;
}

/* ----------------------------------------------------------------- Date */
/* A Date: value as Dovecot reads it: [weekday ","] d month [yy]yy
 * h[h]:mm[:ss] [zone], tokens being RFC 822 atoms; an unknown zone is
 * +0000. Anything else (asctime's format too) is no date. */
static int date_token(struct rp *r, struct sbuf *t)
{
	int ret;

	sb_reset(t);
	ret = r->p == r->end ? 0 : rp_atom(r, t);
	return ret < 0 ? -1 : t->len > 0;
}

static int date_zone(const char *z, size_t len)
{
	int off;

	if (len == 5 && (z[0] == '+' || z[0] == '-')) {
		for (int i = 1; i < 5; i++)
			if (z[i] < '0' || z[i] > '9')
				return 0;
		off = ((z[1] - '0') * 10 + (z[2] - '0')) * 60 + (z[3] - '0') * 10 + (z[4] - '0');
		return z[0] == '+' ? off : -off;
	}
	if (len == 1) {
		/* military zones, the way they were meant */
		char c = (char)toupper((unsigned char)z[0]);
		if (c < 'J')
			return (z[0] - 'A' + 1) * 60;
		if (c == 'J')
			return 0;
		if (c <= 'M')
			return (z[0] - 'A') * 60;
		if (c < 'Z')
			return ('M' - z[0]) * 60;
		return 0;
	}
	if (len == 3 && z[2] == 'T') {
		switch (toupper((unsigned char)z[0])) {
		case 'E':
			off = -5 * 60;
			break;
		case 'C':
			off = -6 * 60;
			break;
		case 'M':
			off = -7 * 60;
			break;
		case 'P':
			off = -8 * 60;
			break;
		default:
			return 0;
		}
		if (toupper((unsigned char)z[1]) == 'D')
			return off + 60;
		if (toupper((unsigned char)z[1]) == 'S')
			return off;
	}
	return 0;
}

static bool digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

static bool parse_date(const char *v, size_t vlen, time_t *t_r, int *tz_r)
{
	static const char *const months[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct rp r = {v, v + vlen, NULL};
	struct sbuf t = {0};
	struct tm tm;
	const char *s;
	bool ok = false;
	int ret, zone = 0, i;
	time_t when;

	memset(&tm, 0, sizeof(tm));
	rp_skip_lwsp(&r);
	if (date_token(&r, &t) <= 0)
		goto out;
	if (t.len == 3) {
		if (r.p == r.end || *r.p != ',')
			goto out;
		r.p++;
		rp_skip_lwsp(&r);
		if (date_token(&r, &t) <= 0)
			goto out;
	}
	s = sb_str(&t);
	if (t.len < 1 || t.len > 2 || !digits(s, t.len))
		goto out;
	tm.tm_mday = t.len == 1 ? s[0] - '0' : (s[0] - '0') * 10 + (s[1] - '0');
	if (date_token(&r, &t) <= 0 || t.len < 3)
		goto out;
	for (i = 0; i < 12; i++)
		if (strncasecmp(months[i], sb_str(&t), 3) == 0)
			break;
	if (i == 12)
		goto out;
	tm.tm_mon = i;
	if (date_token(&r, &t) <= 0 || (t.len != 2 && t.len != 4) || !digits(sb_str(&t), t.len))
		goto out;
	tm.tm_year = atoi(sb_str(&t));
	if (t.len == 2) {
		if (tm.tm_year < 70)
			tm.tm_year += 100;
	} else {
		if (tm.tm_year < 1900)
			goto out;
		tm.tm_year -= 1900;
	}
	if (date_token(&r, &t) <= 0 || t.len < 1 || t.len > 2 || !digits(sb_str(&t), t.len))
		goto out;
	tm.tm_hour = atoi(sb_str(&t));
	if (r.p == r.end || (*r.p != ':' && *r.p != '.'))
		goto out;
	r.p++;
	rp_skip_lwsp(&r);
	if (date_token(&r, &t) < 0 || t.len != 2 || !digits(sb_str(&t), 2))
		goto out;
	tm.tm_min = atoi(sb_str(&t));
	if (r.p != r.end && (*r.p == ':' || *r.p == '.')) {
		r.p++;
		rp_skip_lwsp(&r);
		if (date_token(&r, &t) <= 0 || t.len != 2 || !digits(sb_str(&t), 2))
			goto out;
		tm.tm_sec = atoi(sb_str(&t));
	}
	if ((ret = date_token(&r, &t)) < 0)
		goto out;
	if (ret > 0)
		zone = date_zone(sb_str(&t), t.len);
	when = timegm(&tm);
	if (when == (time_t)-1)
		goto out;
	*t_r = when - zone * 60;
	*tz_r = zone * 60;
	ok = true;
out:
	sb_free(&t);
	return ok;
}

bool imap_msg_sent_date(struct imap_msg *m, time_t *t_r, int *tz_offset_r)
{
	const char *cur = m->data, *end = top_header_end(m);
	struct sbuf v = {0};
	struct hfield f;
	bool have = false, ok;

	while (!have && header_next(&cur, end, &f)) {
		if (f.has_colon && field_is(&f, "Date")) {
			field_value(&f, &v);
			have = true;
		}
	}
	ok = have && parse_date(sb_str(&v), v.len, t_r, tz_offset_r);
	sb_free(&v);
	return ok;
}
