/*
 * imap-mime-dump — what imap/mime.c answers for one message file, in IMAP
 * syntax, one item a line (values may hold literals):
 *
 *   ENVELOPE (...)
 *   BODYSTRUCTURE (...)
 *   BODY (...)
 *   BODY[section] {N}<CRLF><N octets>    (NIL when the part does not exist)
 *   SEARCH key [name] value: YES|NO
 *
 * usage: imap-mime-dump [--only] [--search KEY [NAME] VALUE]... FILE [SECTION...]
 *   SECTION is what goes between "BODY[" and "]": "", "1.2", "HEADER",
 *   "1.HEADER.FIELDS (FROM SUBJECT)", "2.MIME", "TEXT", ...
 *   --only: leave out ENVELOPE, BODYSTRUCTURE and BODY.
 *   KEY: BODY TEXT SUBJECT FROM TO CC BCC (VALUE), HEADER (NAME VALUE),
 *   SENTBEFORE SENTON SENTSINCE (VALUE = dd-Mon-yyyy).
 *
 * The differential test (tests/integration/test_imap_dovecot.py) compares
 * these lines with Dovecot's FETCH and SEARCH answers for the same file.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "imap/mime.h"

static int usage(void)
{
	fprintf(stderr, "usage: imap-mime-dump [--only] [--search KEY [NAME] VALUE]... FILE [SECTION...]\n");
	return 2;
}

static char *read_file(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0, n;

	if (f == NULL)
		return NULL;
	for (;;) {
		if (cap - len < 65536) {
			cap = cap ? cap * 2 : 131072;
			buf = realloc(buf, cap);
			if (buf == NULL)
				abort();
		}
		n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0)
			break;
	}
	fclose(f);
	*len_r = len;
	return buf;
}

/* "1.2.HEADER.FIELDS (A B)" into sec; false when it does not parse */
static bool parse_section(const char *s, struct imap_section *sec)
{
	memset(sec, 0, sizeof(*sec));
	while (isdigit((unsigned char)*s)) {
		char *end;
		unsigned long n = strtoul(s, &end, 10);
		if (sec->n_part >= IMAP_SECTION_DEPTH_MAX || n == 0 || n > 1000000)
			return false;
		sec->part[sec->n_part++] = (unsigned)n;
		s = end;
		if (*s == '.')
			s++;
		else if (*s != '\0')
			return false;
	}
	if (*s == '\0') {
		sec->kind = IMAP_SECTION_ALL;
		return true;
	}
	if (strcasecmp(s, "HEADER") == 0) {
		sec->kind = IMAP_SECTION_HEADER;
		return true;
	}
	if (strcasecmp(s, "TEXT") == 0) {
		sec->kind = IMAP_SECTION_TEXT;
		return true;
	}
	if (strcasecmp(s, "MIME") == 0) {
		sec->kind = IMAP_SECTION_MIME;
		return sec->n_part > 0;
	}
	if (strncasecmp(s, "HEADER.FIELDS.NOT ", 18) == 0) {
		sec->kind = IMAP_SECTION_HEADER_FIELDS_NOT;
		s += 18;
	} else if (strncasecmp(s, "HEADER.FIELDS ", 14) == 0) {
		sec->kind = IMAP_SECTION_HEADER_FIELDS;
		s += 14;
	} else {
		return false;
	}
	if (*s++ != '(')
		return false;
	for (;;) {
		const char *start;
		while (*s == ' ')
			s++;
		if (*s == ')')
			return sec->n_fields > 0 && s[1] == '\0';
		start = s;
		while (*s != '\0' && *s != ' ' && *s != ')')
			s++;
		if (*s == '\0' || sec->n_fields >= IMAP_SECTION_FIELDS_MAX)
			return false;
		sec->fields[sec->n_fields] = strndup(start, (size_t)(s - start));
		if (sec->fields[sec->n_fields] == NULL)
			abort();
		sec->n_fields++;
	}
}

static void put(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b);

	if (n == 0)
		return;
	fwrite(evbuffer_pullup(b, -1), 1, n, stdout);
	evbuffer_drain(b, n);
}

static const char *const months[12] = {"jan", "feb", "mar", "apr", "may", "jun",
				       "jul", "aug", "sep", "oct", "nov", "dec"};

/* dd-Mon-yyyy as a day number (days since 1970-01-01); false if bad */
static bool parse_day(const char *s, long *day_r)
{
	int d, y, mon = -1;
	char m[4];
	struct tm tm;

	if (sscanf(s, "%d-%3s-%d", &d, m, &y) != 3)
		return false;
	for (int i = 0; i < 12; i++)
		if (strcasecmp(m, months[i]) == 0)
			mon = i;
	if (mon < 0)
		return false;
	memset(&tm, 0, sizeof(tm));
	tm.tm_mday = d;
	tm.tm_mon = mon;
	tm.tm_year = y - 1900;
	*day_r = (long)(timegm(&tm) / 86400);
	return true;
}

static long floor_div(long long a, long b)
{
	long long q = a / b;
	if ((a % b != 0) && ((a < 0) != (b < 0)))
		q--;
	return (long)q;
}

/* SENT*: the Date header's day in its own zone against the given day */
static int search_sent(struct imap_msg *m, const char *key, const char *value)
{
	time_t t;
	int tz;
	long want, day;

	if (!parse_day(value, &want))
		return -1;
	if (!imap_msg_sent_date(m, &t, &tz)) {
		/* no (readable) Date: Dovecot takes 1970-01-01 */
		t = 0;
		tz = 0;
	}
	day = floor_div((long long)t + tz, 86400);
	if (strcasecmp(key, "SENTBEFORE") == 0)
		return day < want;
	if (strcasecmp(key, "SENTON") == 0)
		return day == want;
	return day >= want;
}

int main(int argc, char **argv)
{
	struct evbuffer *b;
	struct imap_msg *m;
	const char *path = NULL;
	char *data;
	size_t len;
	bool only = false;
	int i, first_section = -1, rc = 0;
	struct {
		const char *key, *name, *value;
	} searches[64];
	size_t n_searches = 0;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--only") == 0) {
			only = true;
		} else if (strcmp(argv[i], "--search") == 0) {
			if (i + 2 >= argc || n_searches >= 64)
				return usage();
			searches[n_searches].key = argv[++i];
			searches[n_searches].name = NULL;
			if (strcasecmp(searches[n_searches].key, "HEADER") == 0) {
				if (i + 2 >= argc)
					return usage();
				searches[n_searches].name = argv[++i];
			}
			searches[n_searches].value = argv[++i];
			n_searches++;
		} else if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		} else if (argv[i][0] == '-' && argv[i][1] != '\0') {
			return usage();
		} else {
			break;
		}
	}
	if (i >= argc)
		return usage();
	path = argv[i++];
	first_section = i;
	data = read_file(path, &len);
	if (data == NULL) {
		fprintf(stderr, "imap-mime-dump: %s: %s\n", path, strerror(errno));
		return 1;
	}
	b = evbuffer_new();
	m = imap_msg_new(data, len);
	if (!only) {
		fputs("ENVELOPE ", stdout);
		imap_msg_envelope(m, b);
		put(b);
		fputs("\r\nBODYSTRUCTURE ", stdout);
		imap_msg_bodystructure(m, true, b);
		put(b);
		fputs("\r\nBODY ", stdout);
		imap_msg_bodystructure(m, false, b);
		put(b);
		fputs("\r\n", stdout);
	}
	for (i = first_section; i < argc; i++) {
		struct imap_section sec;

		if (!parse_section(argv[i], &sec)) {
			fprintf(stderr, "imap-mime-dump: bad section %s\n", argv[i]);
			imap_section_clear(&sec);
			rc = 2;
			continue;
		}
		printf("BODY[%s] ", argv[i]);
		if (imap_msg_section(m, &sec, b)) {
			printf("{%zu}\r\n", evbuffer_get_length(b));
			put(b);
		} else {
			fputs("NIL", stdout);
		}
		fputs("\r\n", stdout);
		imap_section_clear(&sec);
	}
	for (size_t s = 0; s < n_searches; s++) {
		const char *key = searches[s].key, *value = searches[s].value;
		int hit;

		if (strcasecmp(key, "BODY") == 0)
			hit = imap_msg_body_contains(m, value);
		else if (strcasecmp(key, "TEXT") == 0)
			hit = imap_msg_text_contains(m, value);
		else if (strcasecmp(key, "HEADER") == 0)
			hit = imap_msg_header_contains(m, searches[s].name, value);
		else if (strcasecmp(key, "SUBJECT") == 0 || strcasecmp(key, "FROM") == 0 ||
			 strcasecmp(key, "TO") == 0 || strcasecmp(key, "CC") == 0 ||
			 strcasecmp(key, "BCC") == 0)
			hit = imap_msg_header_contains(m, key, value);
		else if (strncasecmp(key, "SENT", 4) == 0)
			hit = search_sent(m, key, value);
		else
			hit = -1;
		if (hit < 0) {
			fprintf(stderr, "imap-mime-dump: bad search %s %s\n", key, value);
			rc = 2;
			continue;
		}
		printf("SEARCH %s%s%s %s: %s\r\n", key, searches[s].name ? " " : "",
		       searches[s].name ? searches[s].name : "", value, hit ? "YES" : "NO");
	}
	imap_msg_free(&m);
	evbuffer_free(b);
	free(data);
	return rc;
}
