/*
 * parse.c — the IMAP service's pure parsers (RFC 3501 section 9's
 * grammar): tags, atoms, quoted strings and literals, sequence sets, flag
 * lists, dates, the FETCH attributes with BODY[section]<partial>, the
 * SEARCH keys, LIST patterns, and the quoting of reply strings.
 *
 * No I/O and no globals: the session hands over a whole command (lines
 * and literals, see imap.h) and gets malloc'd results. Every loop is
 * bounded by the command's length, list nesting by IMAP_PARSE_DEPTH_MAX
 * and the number of SEARCH keys by IMAP_SEARCH_KEYS_MAX.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imap/imap.h"

void imap_parser_init(struct imap_parser *ps, const char *buf, size_t len)
{
	ps->p = buf;
	ps->end = buf + len;
	ps->error = NULL;
	ps->depth = 0;
}

static bool fail(struct imap_parser *ps, const char *why)
{
	if (ps->error == NULL)
		ps->error = why;
	return false;
}

bool imap_parse_at_end(const struct imap_parser *ps)
{
	return ps->p >= ps->end;
}

bool imap_parse_end(struct imap_parser *ps)
{
	return ps->p >= ps->end ? true : fail(ps, "Extra characters after the command");
}

bool imap_parse_peek(const struct imap_parser *ps, char c)
{
	return ps->p < ps->end && *ps->p == c;
}

bool imap_parse_sp(struct imap_parser *ps)
{
	if (ps->p < ps->end && *ps->p == ' ') {
		ps->p++;
		return true;
	}
	return fail(ps, "Missing space");
}

/* ATOM-CHAR: any CHAR except atom-specials ( ) { SP CTL % * " \ ] */
static bool atom_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '%' && c != '*' &&
	       c != '"' && c != '\\' && c != ']';
}

static bool astring_char(unsigned char c)
{
	return atom_char(c) || c == ']';
}

static size_t span(const struct imap_parser *ps, bool (*ok)(unsigned char))
{
	const char *q = ps->p;
	while (q < ps->end && ok((unsigned char)*q))
		q++;
	return (size_t)(q - ps->p);
}

bool imap_parse_tag(struct imap_parser *ps, char **tag_r)
{
	size_t n = 0;

	while (ps->p + n < ps->end && astring_char((unsigned char)ps->p[n]) && ps->p[n] != '+')
		n++;
	if (n == 0 || n > IMAP_TAG_MAX)
		return fail(ps, "Invalid tag");
	*tag_r = xstrndup(ps->p, n);
	ps->p += n;
	return true;
}

bool imap_parse_atom(struct imap_parser *ps, char **atom_r)
{
	size_t n = span(ps, atom_char);

	if (n == 0)
		return fail(ps, "Expected an atom");
	*atom_r = xstrndup(ps->p, n);
	ps->p += n;
	return true;
}

bool imap_line_literal(const char *line, size_t len, uint64_t *n_r, bool *nonsync_r)
{
	size_t i;
	uint64_t n = 0;

	if (len < 3 || line[len - 1] != '}')
		return false;
	i = len - 1;
	*nonsync_r = false;
	if (line[i - 1] == '+') {
		*nonsync_r = true;
		i--;
	}
	size_t digits_end = i;
	while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9')
		i--;
	if (i == 0 || line[i - 1] != '{' || i == digits_end || digits_end - i > 10)
		return false;
	for (size_t k = i; k < digits_end; k++)
		n = n * 10 + (uint64_t)(line[k] - '0');
	*n_r = n;
	return true;
}

/* "{N}" or "{N+}" CRLF and N octets */
static bool literal_ref(struct imap_parser *ps, const char **data_r, size_t *len_r)
{
	const char *q = ps->p;
	uint64_t n = 0;
	size_t digits = 0;

	if (q >= ps->end || *q != '{')
		return fail(ps, "Expected a literal");
	q++;
	while (q < ps->end && *q >= '0' && *q <= '9' && digits < 11) {
		n = n * 10 + (uint64_t)(*q - '0');
		q++;
		digits++;
	}
	if (digits == 0 || digits > 10)
		return fail(ps, "Invalid literal size");
	if (q < ps->end && *q == '+')
		q++;
	if (ps->end - q < 3 || q[0] != '}' || q[1] != '\r' || q[2] != '\n')
		return fail(ps, "Invalid literal");
	q += 3;
	if ((uint64_t)(ps->end - q) < n)
		return fail(ps, "Literal shorter than announced");
	*data_r = q;
	*len_r = (size_t)n;
	ps->p = q + n;
	return true;
}

bool imap_parse_literal_ref(struct imap_parser *ps, const char **data_r, size_t *len_r)
{
	return literal_ref(ps, data_r, len_r);
}

static bool quoted(struct imap_parser *ps, char **s_r, size_t *len_r)
{
	const char *q = ps->p + 1;
	char *out;
	size_t o = 0;

	if (ps->p >= ps->end || *ps->p != '"')
		return fail(ps, "Expected a quoted string");
	out = xmalloc((size_t)(ps->end - ps->p) + 1);
	while (q < ps->end && *q != '"') {
		unsigned char c = (unsigned char)*q;
		if (c == '\\') {
			q++;
			if (q >= ps->end || (*q != '\\' && *q != '"')) {
				free(out);
				return fail(ps, "Invalid escape in a quoted string");
			}
			c = (unsigned char)*q;
		} else if (c == '\r' || c == '\n' || c == '\0') {
			free(out);
			return fail(ps, "Invalid character in a quoted string");
		}
		out[o++] = (char)c;
		q++;
	}
	if (q >= ps->end) {
		free(out);
		return fail(ps, "Unterminated quoted string");
	}
	out[o] = '\0';
	ps->p = q + 1;
	*s_r = out;
	*len_r = o;
	return true;
}

bool imap_parse_string(struct imap_parser *ps, char **s_r, size_t *len_r)
{
	const char *d;
	size_t n;

	if (imap_parse_peek(ps, '"'))
		return quoted(ps, s_r, len_r);
	if (imap_parse_peek(ps, '{')) {
		if (!literal_ref(ps, &d, &n))
			return false;
		*s_r = xstrndup(d, n);
		*len_r = n;
		return true;
	}
	return fail(ps, "Expected a string");
}

bool imap_parse_astring(struct imap_parser *ps, char **s_r, size_t *len_r)
{
	size_t n;

	if (imap_parse_peek(ps, '"') || imap_parse_peek(ps, '{'))
		return imap_parse_string(ps, s_r, len_r);
	n = span(ps, astring_char);
	if (n == 0)
		return fail(ps, "Expected a string");
	*s_r = xstrndup(ps->p, n);
	*len_r = n;
	ps->p += n;
	return true;
}

bool imap_parse_number(struct imap_parser *ps, uint64_t max, uint64_t *n_r)
{
	uint64_t n = 0;
	size_t digits = 0;
	const char *q = ps->p;

	while (q < ps->end && *q >= '0' && *q <= '9') {
		if (digits >= 19)
			return fail(ps, "Number too large");
		n = n * 10 + (uint64_t)(*q - '0');
		q++;
		digits++;
	}
	if (digits == 0)
		return fail(ps, "Expected a number");
	if (n > max)
		return fail(ps, "Number too large");
	ps->p = q;
	*n_r = n;
	return true;
}

/* ------------------------------------------------------ sequence sets */

static bool seq_number(struct imap_parser *ps, uint32_t *v)
{
	uint64_t n;

	if (imap_parse_peek(ps, '*')) {
		ps->p++;
		*v = 0;
		return true;
	}
	if (!imap_parse_number(ps, UINT32_MAX, &n) || n == 0)
		return fail(ps, "Invalid sequence set");
	*v = (uint32_t)n;
	return true;
}

bool imap_parse_seqset(struct imap_parser *ps, struct imap_seqset *set)
{
	const char *start = ps->p;
	size_t cap = 0;

	memset(set, 0, sizeof(*set));
	for (;;) {
		struct imap_range r;
		if (!seq_number(ps, &r.lo))
			goto bad;
		r.hi = r.lo;
		if (imap_parse_peek(ps, ':')) {
			ps->p++;
			if (!seq_number(ps, &r.hi))
				goto bad;
		}
		if (set->n >= IMAP_SEQSET_MAX) {
			fail(ps, "Sequence set too long");
			goto bad;
		}
		if (set->n == cap) {
			cap = cap ? cap * 2 : 8;
			set->r = xrealloc(set->r, cap * sizeof(*set->r));
		}
		set->r[set->n++] = r;
		if (!imap_parse_peek(ps, ','))
			break;
		ps->p++;
	}
	return true;
bad:
	ps->p = start;
	imap_seqset_clear(set);
	return fail(ps, "Invalid sequence set");
}

void imap_seqset_clear(struct imap_seqset *set)
{
	free(set->r);
	set->r = NULL;
	set->n = 0;
}

bool imap_seqset_contains(const struct imap_seqset *set, uint32_t v, uint32_t star)
{
	for (size_t i = 0; i < set->n; i++) {
		uint32_t a = set->r[i].lo ? set->r[i].lo : star;
		uint32_t b = set->r[i].hi ? set->r[i].hi : star;
		if (a > b) {
			uint32_t t = a;
			a = b;
			b = t;
		}
		if (v >= a && v <= b)
			return true;
	}
	return false;
}

/* -------------------------------------------------------------- flags */

static const struct {
	const char *name;
	char letter;
} system_flags[] = {
	{ "\\Seen", 'S' }, { "\\Answered", 'R' }, { "\\Flagged", 'F' },
	{ "\\Deleted", 'T' }, { "\\Draft", 'D' },
};

const char *imap_flag_name(char letter)
{
	for (size_t i = 0; i < N_ELEMENTS(system_flags); i++)
		if (system_flags[i].letter == letter)
			return system_flags[i].name;
	return NULL;
}

void imap_flags_clear(struct imap_flags *f)
{
	for (size_t i = 0; i < f->n_keywords; i++)
		free(f->keywords[i]);
	free(f->keywords);
	memset(f, 0, sizeof(*f));
}

static bool one_flag(struct imap_parser *ps, struct imap_flags *f)
{
	char *a;

	if (imap_parse_peek(ps, '\\')) {
		ps->p++;
		if (!imap_parse_atom(ps, &a))
			return fail(ps, "Invalid flag");
		if (strcasecmp(a, "Recent") == 0) {
			f->recent = true;
			free(a);
			return true;
		}
		for (size_t i = 0; i < N_ELEMENTS(system_flags); i++) {
			if (strcasecmp(a, system_flags[i].name + 1) == 0) {
				if (strchr(f->letters, system_flags[i].letter) == NULL) {
					size_t l = strlen(f->letters);
					f->letters[l] = system_flags[i].letter;
					f->letters[l + 1] = '\0';
				}
				free(a);
				return true;
			}
		}
		free(a);
		return fail(ps, "Invalid system flag");
	}
	if (!imap_parse_atom(ps, &a))
		return fail(ps, "Invalid flag");
	for (size_t i = 0; i < f->n_keywords; i++) {
		if (strcasecmp(f->keywords[i], a) == 0) {
			free(a);
			return true;
		}
	}
	if (f->n_keywords >= IMAP_KEYWORDS_MAX) {
		free(a);
		return fail(ps, "Too many keywords");
	}
	f->keywords = xrealloc(f->keywords, (f->n_keywords + 1) * sizeof(*f->keywords));
	f->keywords[f->n_keywords++] = a;
	return true;
}

bool imap_parse_flags(struct imap_parser *ps, bool bare_ok, struct imap_flags *f)
{
	const char *start = ps->p;

	memset(f, 0, sizeof(*f));
	if (imap_parse_peek(ps, '(')) {
		ps->p++;
		if (imap_parse_peek(ps, ')')) {
			ps->p++;
			return true;
		}
		for (;;) {
			if (!one_flag(ps, f))
				goto bad;
			if (imap_parse_peek(ps, ')')) {
				ps->p++;
				return true;
			}
			if (!imap_parse_sp(ps))
				goto bad;
		}
	}
	if (!bare_ok) {
		fail(ps, "Expected a flag list");
		goto bad;
	}
	for (;;) {
		if (!one_flag(ps, f))
			goto bad;
		if (imap_parse_at_end(ps))
			return true;
		if (!imap_parse_sp(ps))
			goto bad;
	}
bad:
	imap_flags_clear(f);
	ps->p = start;
	return false;
}

/* -------------------------------------------------------------- dates */

static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
				       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

static long days_from_civil(long y, unsigned m, unsigned d)
{
	y -= m <= 2;
	long era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? (unsigned)-3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (long)doe - 719468;
}

static bool date_text(const char *s, size_t len, long *day_r, size_t *used_r)
{
	size_t i = 0;
	unsigned d = 0, m = 0;
	long y = 0;

	while (i < len && i < 2 && s[i] >= '0' && s[i] <= '9')
		d = d * 10 + (unsigned)(s[i++] - '0');
	if (i == 0 || i >= len || s[i] != '-' || d < 1 || d > 31)
		return false;
	i++;
	if (len - i < 4)
		return false;
	for (unsigned k = 0; k < 12; k++)
		if (strncasecmp(s + i, months[k], 3) == 0)
			m = k + 1;
	if (m == 0 || s[i + 3] != '-')
		return false;
	i += 4;
	if (len - i < 4)
		return false;
	for (int k = 0; k < 4; k++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		y = y * 10 + (s[i++] - '0');
	}
	*day_r = days_from_civil(y, m, d);
	*used_r = i;
	return true;
}

bool imap_parse_date(struct imap_parser *ps, long *day_r)
{
	size_t used;
	bool q = imap_parse_peek(ps, '"');
	const char *s = ps->p + (q ? 1 : 0);

	if (!date_text(s, (size_t)(ps->end - s), day_r, &used))
		return fail(ps, "Invalid date");
	s += used;
	if (q) {
		if (s >= ps->end || *s != '"')
			return fail(ps, "Invalid date");
		s++;
	}
	ps->p = s;
	return true;
}

bool imap_parse_datetime(struct imap_parser *ps, time_t *t_r)
{
	char *v;
	size_t len, used;
	long day;
	const char *start = ps->p;
	int hh, mm, ss, zh, zm;
	char sign;

	if (!imap_parse_peek(ps, '"') || !quoted(ps, &v, &len))
		return fail(ps, "Invalid date-time");
	/* date-day-fixed: a space instead of a leading zero */
	const char *s = v[0] == ' ' ? v + 1 : v;
	size_t sl = strlen(s);
	if (!date_text(s, sl, &day, &used) || sl - used != 15 ||
	    sscanf(s + used, " %2d:%2d:%2d %c%2d%2d", &hh, &mm, &ss, &sign, &zh, &zm) != 6 ||
	    (sign != '+' && sign != '-') || hh > 23 || mm > 59 || ss > 60 || zm > 59) {
		free(v);
		ps->p = start;
		return fail(ps, "Invalid date-time");
	}
	free(v);
	long off = (zh * 3600L + zm * 60L) * (sign == '-' ? -1 : 1);
	*t_r = (time_t)(day * 86400L + hh * 3600L + mm * 60L + ss - off);
	return true;
}

void imap_format_datetime(time_t t, char *out, size_t outsz)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	snprintf(out, outsz, "%02d-%s-%04d %02d:%02d:%02d +0000", tm.tm_mday, months[tm.tm_mon],
		 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ------------------------------------------------------------- FETCH */

static bool word_is(struct imap_parser *ps, const char *w)
{
	size_t n = strlen(w);

	if ((size_t)(ps->end - ps->p) < n || strncasecmp(ps->p, w, n) != 0)
		return false;
	/* the word must end here */
	if (ps->p + n < ps->end) {
		unsigned char c = (unsigned char)ps->p[n];
		if (atom_char(c) && c != '.' && c != '[')
			return false;
		if (c == '.' && w[n - 1] != '.')
			return false;
	}
	ps->p += n;
	return true;
}

static void fetch_add(struct imap_fetch *f, enum imap_fetch_kind k, const char *name)
{
	f->items = xrealloc(f->items, (f->n + 1) * sizeof(*f->items));
	memset(&f->items[f->n], 0, sizeof(f->items[0]));
	f->items[f->n].kind = k;
	f->items[f->n].name = xstrdup(name);
	f->n++;
}

static bool section_spec(struct imap_parser *ps, struct imap_fetch_item *it)
{
	struct imap_section *sec = &it->sec;
	const char *start = ps->p;

	sec->kind = IMAP_SECTION_ALL;
	/* part numbers */
	while (ps->p < ps->end && *ps->p >= '1' && *ps->p <= '9') {
		uint64_t n;
		if (sec->n_part >= IMAP_SECTION_DEPTH_MAX || !imap_parse_number(ps, 1000000, &n))
			return fail(ps, "Invalid section");
		sec->part[sec->n_part++] = (unsigned)n;
		if (!imap_parse_peek(ps, '.'))
			break;
		ps->p++;
		if (!(ps->p < ps->end && *ps->p >= '1' && *ps->p <= '9'))
			break;
	}
	if (sec->n_part > 0 && ps->p[-1] != '.' && !imap_parse_peek(ps, ']'))
		return fail(ps, "Invalid section");
	if (!imap_parse_peek(ps, ']')) {
		if (word_is(ps, "HEADER.FIELDS.NOT"))
			sec->kind = IMAP_SECTION_HEADER_FIELDS_NOT;
		else if (word_is(ps, "HEADER.FIELDS"))
			sec->kind = IMAP_SECTION_HEADER_FIELDS;
		else if (word_is(ps, "HEADER"))
			sec->kind = IMAP_SECTION_HEADER;
		else if (word_is(ps, "TEXT"))
			sec->kind = IMAP_SECTION_TEXT;
		else if (sec->n_part > 0 && word_is(ps, "MIME"))
			sec->kind = IMAP_SECTION_MIME;
		else
			return fail(ps, "Invalid section");
		if (sec->kind == IMAP_SECTION_HEADER_FIELDS || sec->kind == IMAP_SECTION_HEADER_FIELDS_NOT) {
			if (!imap_parse_sp(ps) || !imap_parse_peek(ps, '('))
				return fail(ps, "Invalid header list");
			ps->p++;
			for (;;) {
				char *s;
				size_t l;
				if (sec->n_fields >= IMAP_SECTION_FIELDS_MAX)
					return fail(ps, "Too many header fields");
				if (!imap_parse_astring(ps, &s, &l))
					return false;
				if (l == 0 || strlen(s) != l || strpbrk(s, ": \t") != NULL) {
					free(s);
					return fail(ps, "Invalid header field name");
				}
				sec->fields[sec->n_fields++] = s;
				if (imap_parse_peek(ps, ')')) {
					ps->p++;
					break;
				}
				if (!imap_parse_sp(ps))
					return false;
			}
		}
	}
	if (!imap_parse_peek(ps, ']'))
		return fail(ps, "Invalid section");
	(void)start;
	ps->p++;
	return true;
}

/* the response's name of a section item */
static char *section_name(const struct imap_fetch_item *it)
{
	const struct imap_section *sec = &it->sec;
	char buf[8192];
	size_t o = 0;

	o += (size_t)snprintf(buf + o, sizeof(buf) - o, "BODY[");
	for (size_t i = 0; i < sec->n_part && o < sizeof(buf) - 64; i++)
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%u", i ? "." : "", sec->part[i]);
	static const char *const kinds[] = { "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME" };
	if (sec->kind != IMAP_SECTION_ALL)
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s", sec->n_part ? "." : "", kinds[sec->kind]);
	if (sec->n_fields > 0) {
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, " (");
		for (size_t i = 0; i < sec->n_fields && o < sizeof(buf) - 300; i++)
			o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s", i ? " " : "", sec->fields[i]);
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, ")");
	}
	o += (size_t)snprintf(buf + o, sizeof(buf) - o, "]");
	if (it->partial)
		snprintf(buf + o, sizeof(buf) - o, "<%u>", it->partial_off);
	return xstrdup(buf);
}

static bool fetch_att(struct imap_parser *ps, struct imap_fetch *f)
{
	if (f->n >= IMAP_FETCH_ITEMS_MAX)
		return fail(ps, "Too many FETCH items");
	if (word_is(ps, "FLAGS"))
		fetch_add(f, IMAP_FETCH_FLAGS, "FLAGS");
	else if (word_is(ps, "UID"))
		fetch_add(f, IMAP_FETCH_UID, "UID");
	else if (word_is(ps, "INTERNALDATE"))
		fetch_add(f, IMAP_FETCH_INTERNALDATE, "INTERNALDATE");
	else if (word_is(ps, "RFC822.SIZE"))
		fetch_add(f, IMAP_FETCH_RFC822_SIZE, "RFC822.SIZE");
	else if (word_is(ps, "RFC822.HEADER"))
		fetch_add(f, IMAP_FETCH_RFC822_HEADER, "RFC822.HEADER");
	else if (word_is(ps, "RFC822.TEXT"))
		fetch_add(f, IMAP_FETCH_RFC822_TEXT, "RFC822.TEXT");
	else if (word_is(ps, "RFC822"))
		fetch_add(f, IMAP_FETCH_RFC822, "RFC822");
	else if (word_is(ps, "ENVELOPE"))
		fetch_add(f, IMAP_FETCH_ENVELOPE, "ENVELOPE");
	else if (word_is(ps, "BODYSTRUCTURE"))
		fetch_add(f, IMAP_FETCH_BODYSTRUCTURE, "BODYSTRUCTURE");
	else if (word_is(ps, "BODY.PEEK") || word_is(ps, "BODY")) {
		bool peek = ps->p[-1] == 'K' || ps->p[-1] == 'k';
		if (!imap_parse_peek(ps, '[')) {
			if (peek)
				return fail(ps, "BODY.PEEK needs a section");
			fetch_add(f, IMAP_FETCH_BODY, "BODY");
			return true;
		}
		ps->p++;
		fetch_add(f, IMAP_FETCH_SECTION, "");
		struct imap_fetch_item *it = &f->items[f->n - 1];
		it->peek = peek;
		if (!section_spec(ps, it))
			return false;
		if (imap_parse_peek(ps, '<')) {
			uint64_t a, b;
			ps->p++;
			if (!imap_parse_number(ps, UINT32_MAX, &a) || !imap_parse_peek(ps, '.'))
				return fail(ps, "Invalid partial");
			ps->p++;
			if (!imap_parse_number(ps, UINT32_MAX, &b) || b == 0 || !imap_parse_peek(ps, '>'))
				return fail(ps, "Invalid partial");
			ps->p++;
			it->partial = true;
			it->partial_off = (uint32_t)a;
			it->partial_len = (uint32_t)b;
		}
		free(it->name);
		it->name = section_name(it);
	} else {
		return fail(ps, "Invalid FETCH item");
	}
	return true;
}

bool imap_parse_fetch(struct imap_parser *ps, struct imap_fetch *f)
{
	memset(f, 0, sizeof(*f));
	if (word_is(ps, "ALL")) {
		fetch_add(f, IMAP_FETCH_FLAGS, "FLAGS");
		fetch_add(f, IMAP_FETCH_INTERNALDATE, "INTERNALDATE");
		fetch_add(f, IMAP_FETCH_RFC822_SIZE, "RFC822.SIZE");
		fetch_add(f, IMAP_FETCH_ENVELOPE, "ENVELOPE");
		return true;
	}
	if (word_is(ps, "FAST")) {
		fetch_add(f, IMAP_FETCH_FLAGS, "FLAGS");
		fetch_add(f, IMAP_FETCH_INTERNALDATE, "INTERNALDATE");
		fetch_add(f, IMAP_FETCH_RFC822_SIZE, "RFC822.SIZE");
		return true;
	}
	if (word_is(ps, "FULL")) {
		fetch_add(f, IMAP_FETCH_FLAGS, "FLAGS");
		fetch_add(f, IMAP_FETCH_INTERNALDATE, "INTERNALDATE");
		fetch_add(f, IMAP_FETCH_RFC822_SIZE, "RFC822.SIZE");
		fetch_add(f, IMAP_FETCH_ENVELOPE, "ENVELOPE");
		fetch_add(f, IMAP_FETCH_BODY, "BODY");
		return true;
	}
	if (imap_parse_peek(ps, '(')) {
		ps->p++;
		for (;;) {
			if (!fetch_att(ps, f))
				goto bad;
			if (imap_parse_peek(ps, ')')) {
				ps->p++;
				return true;
			}
			if (!imap_parse_sp(ps))
				goto bad;
		}
	}
	if (fetch_att(ps, f))
		return true;
bad:
	imap_fetch_clear(f);
	return fail(ps, "Invalid FETCH items");
}

void imap_fetch_clear(struct imap_fetch *f)
{
	for (size_t i = 0; i < f->n; i++) {
		/* the section's names by hand, not imap_section_clear (mime.c):
		 * the parser links without the MIME side */
		for (size_t k = 0; k < f->items[i].sec.n_fields; k++)
			free(f->items[i].sec.fields[k]);
		f->items[i].sec.n_fields = 0;
		free(f->items[i].name);
	}
	free(f->items);
	f->items = NULL;
	f->n = 0;
}

/* ------------------------------------------------------------ SEARCH */

struct search_ctx {
	struct imap_parser *ps;
	size_t keys;
};

static struct imap_search *sk_new(enum imap_search_kind k)
{
	struct imap_search *s = xcalloc(1, sizeof(*s));
	s->kind = k;
	return s;
}

void imap_search_free(struct imap_search **sp)
{
	struct imap_search *s = *sp;

	while (s != NULL) {
		struct imap_search *next = s->next;
		imap_search_free(&s->kids);
		free(s->field);
		free(s->value);
		imap_seqset_clear(&s->set);
		free(s);
		s = next;
	}
	*sp = NULL;
}

static bool search_key(struct search_ctx *c, struct imap_search **out);

static bool sk_string(struct imap_parser *ps, char **v)
{
	size_t l;
	if (!imap_parse_sp(ps) || !imap_parse_astring(ps, v, &l))
		return false;
	if (strlen(*v) != l) {
		free(*v);
		*v = NULL;
		return fail(ps, "NUL in a search string");
	}
	return true;
}

static const struct {
	const char *word;
	enum imap_search_kind kind;
	char flag;
} sk_simple[] = {
	{ "ALL", IMAP_SK_ALL, 0 },
	{ "ANSWERED", IMAP_SK_FLAG, 'R' }, { "DELETED", IMAP_SK_FLAG, 'T' },
	{ "DRAFT", IMAP_SK_FLAG, 'D' }, { "FLAGGED", IMAP_SK_FLAG, 'F' },
	{ "SEEN", IMAP_SK_FLAG, 'S' },
	{ "UNANSWERED", IMAP_SK_UNFLAG, 'R' }, { "UNDELETED", IMAP_SK_UNFLAG, 'T' },
	{ "UNDRAFT", IMAP_SK_UNFLAG, 'D' }, { "UNFLAGGED", IMAP_SK_UNFLAG, 'F' },
	{ "UNSEEN", IMAP_SK_UNFLAG, 'S' },
	{ "NEW", IMAP_SK_NEW, 0 }, { "OLD", IMAP_SK_OLD, 0 }, { "RECENT", IMAP_SK_RECENT, 0 },
};

static const struct {
	const char *word;
	enum imap_search_kind kind;
} sk_dates[] = {
	{ "BEFORE", IMAP_SK_BEFORE }, { "ON", IMAP_SK_ON }, { "SINCE", IMAP_SK_SINCE },
	{ "SENTBEFORE", IMAP_SK_SENTBEFORE }, { "SENTON", IMAP_SK_SENTON }, { "SENTSINCE", IMAP_SK_SENTSINCE },
};

static const char *const sk_headers[] = { "FROM", "TO", "CC", "BCC", "SUBJECT" };

static bool search_key(struct search_ctx *c, struct imap_search **out)
{
	struct imap_parser *ps = c->ps;
	struct imap_search *s = NULL;
	const char *start = ps->p;

	if (++c->keys > IMAP_SEARCH_KEYS_MAX)
		return fail(ps, "Too many search keys");
	if (imap_parse_peek(ps, '(')) {
		if (++ps->depth > IMAP_PARSE_DEPTH_MAX)
			return fail(ps, "Search keys nested too deep");
		ps->p++;
		s = sk_new(IMAP_SK_AND);
		struct imap_search **tail = &s->kids;
		for (;;) {
			if (!search_key(c, tail))
				goto bad;
			tail = &(*tail)->next;
			if (imap_parse_peek(ps, ')')) {
				ps->p++;
				break;
			}
			if (!imap_parse_sp(ps))
				goto bad;
		}
		ps->depth--;
		*out = s;
		return true;
	}
	if ((ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') || imap_parse_peek(ps, '*')) {
		s = sk_new(IMAP_SK_SEQSET);
		if (!imap_parse_seqset(ps, &s->set))
			goto bad;
		*out = s;
		return true;
	}
	for (size_t i = 0; i < N_ELEMENTS(sk_simple); i++) {
		if (word_is(ps, sk_simple[i].word)) {
			s = sk_new(sk_simple[i].kind);
			s->flag = sk_simple[i].flag;
			*out = s;
			return true;
		}
	}
	for (size_t i = 0; i < N_ELEMENTS(sk_dates); i++) {
		if (word_is(ps, sk_dates[i].word)) {
			s = sk_new(sk_dates[i].kind);
			if (!imap_parse_sp(ps) || !imap_parse_date(ps, &s->day))
				goto bad;
			*out = s;
			return true;
		}
	}
	for (size_t i = 0; i < N_ELEMENTS(sk_headers); i++) {
		if (word_is(ps, sk_headers[i])) {
			s = sk_new(IMAP_SK_HEADER);
			s->field = xstrdup(sk_headers[i]);
			if (!sk_string(ps, &s->value))
				goto bad;
			*out = s;
			return true;
		}
	}
	if (word_is(ps, "HEADER")) {
		s = sk_new(IMAP_SK_HEADER);
		if (!sk_string(ps, &s->field) || !sk_string(ps, &s->value))
			goto bad;
	} else if (word_is(ps, "BODY")) {
		s = sk_new(IMAP_SK_BODY);
		if (!sk_string(ps, &s->value))
			goto bad;
	} else if (word_is(ps, "TEXT")) {
		s = sk_new(IMAP_SK_TEXT);
		if (!sk_string(ps, &s->value))
			goto bad;
	} else if (word_is(ps, "KEYWORD") || word_is(ps, "UNKEYWORD")) {
		/* which one: the word just taken is 7 or 9 octets long */
		s = sk_new(ps->p - start == 9 ? IMAP_SK_UNKEYWORD : IMAP_SK_KEYWORD);
		if (!imap_parse_sp(ps) || !imap_parse_atom(ps, &s->value))
			goto bad;
	} else if (word_is(ps, "LARGER") || word_is(ps, "SMALLER")) {
		s = sk_new(ps->p - start == 6 ? IMAP_SK_LARGER : IMAP_SK_SMALLER);
		if (!imap_parse_sp(ps) || !imap_parse_number(ps, UINT64_MAX >> 1, &s->n))
			goto bad;
	} else if (word_is(ps, "UID")) {
		s = sk_new(IMAP_SK_UID);
		if (!imap_parse_sp(ps) || !imap_parse_seqset(ps, &s->set))
			goto bad;
	} else if (word_is(ps, "NOT")) {
		s = sk_new(IMAP_SK_NOT);
		if (!imap_parse_sp(ps) || !search_key(c, &s->kids))
			goto bad;
	} else if (word_is(ps, "OR")) {
		s = sk_new(IMAP_SK_OR);
		if (!imap_parse_sp(ps) || !search_key(c, &s->kids) || !imap_parse_sp(ps) ||
		    !search_key(c, &s->kids->next))
			goto bad;
	} else {
		return fail(ps, "Unknown search key");
	}
	*out = s;
	return true;
bad:
	imap_search_free(&s);
	return fail(ps, "Invalid search key");
}

bool imap_parse_search(struct imap_parser *ps, char **charset_r, struct imap_search **s_r)
{
	struct search_ctx c = { ps, 0 };
	struct imap_search *root = sk_new(IMAP_SK_AND), **tail = &root->kids;

	*charset_r = NULL;
	*s_r = NULL;
	if (word_is(ps, "CHARSET")) {
		size_t l;
		if (!imap_parse_sp(ps) || !imap_parse_astring(ps, charset_r, &l) || !imap_parse_sp(ps))
			goto bad;
	}
	for (;;) {
		if (!search_key(&c, tail))
			goto bad;
		tail = &(*tail)->next;
		if (imap_parse_at_end(ps))
			break;
		if (!imap_parse_sp(ps))
			goto bad;
	}
	*s_r = root;
	return true;
bad:
	free(*charset_r);
	*charset_r = NULL;
	imap_search_free(&root);
	return fail(ps, "Invalid search");
}

bool imap_search_needs_content(const struct imap_search *s)
{
	for (; s != NULL; s = s->next) {
		switch (s->kind) {
		case IMAP_SK_HEADER:
		case IMAP_SK_BODY:
		case IMAP_SK_TEXT:
		case IMAP_SK_SENTBEFORE:
		case IMAP_SK_SENTON:
		case IMAP_SK_SENTSINCE:
			return true;
		default:
			break;
		}
		if (imap_search_needs_content(s->kids))
			return true;
	}
	return false;
}

/* ------------------------------------------------------ LIST, quoting */

static bool match_from(const char *p, const char *n, unsigned depth)
{
	if (depth > 64)
		return false;
	for (; *p != '\0'; p++, n++) {
		if (*p == '*' || *p == '%') {
			for (const char *k = n;; k++) {
				if (match_from(p + 1, k, depth + 1))
					return true;
				if (*k == '\0' || (*p == '%' && *k == '.'))
					return false;
			}
		}
		if (*n == '\0' || *p != *n)
			return false;
	}
	return *n == '\0';
}

bool imap_list_match(const char *pattern, const char *name)
{
	/* INBOX matches without regard to case */
	if (strcasecmp(name, "INBOX") == 0 && strncasecmp(pattern, "INBOX", 5) == 0)
		return match_from(pattern + 5, name + 5, 0);
	return match_from(pattern, name, 0);
}

char *imap_quote(const char *s, size_t len)
{
	bool lit = false;
	char *out, *o;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\r' || c == '\n' || c == '\0' || c >= 0x80)
			lit = true;
	}
	if (lit) {
		char *r = xmalloc(len + 32);
		int n = snprintf(r, 32, "{%zu}\r\n", len);
		memcpy(r + n, s, len);
		r[(size_t)n + len] = '\0';
		return r;
	}
	out = o = xmalloc(2 * len + 3);
	*o++ = '"';
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '"' || s[i] == '\\')
			*o++ = '\\';
		*o++ = s[i];
	}
	*o++ = '"';
	*o = '\0';
	return out;
}

