/*
 * msgformat.c — the shape of a message's header section (RFC 5322), as
 * received: what the format stage checks and what the auth stage needs
 * (where the body starts, the From field). A pure function over bytes:
 * no allocation, no I/O; fuzzed by tests/fuzz/fuzz_msgformat.c.
 */
#include "config.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"

static bool
name_is(const char *name, size_t nl, const char *want)
{
	return strlen(want) == nl && strncasecmp(name, want, nl) == 0;
}

void
msg_format_scan(const char *data, size_t len, struct msg_format *f)
{
	const char *p = data, *end = data + len;
	bool in_from = false;

	memset(f, 0, sizeof(*f));
	f->nul = memchr(data, '\0', len) != NULL;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *next = nl != NULL ? nl + 1 : end;
		size_t ll = (size_t)((nl != NULL ? nl : end) - p);

		if (ll > 0 && p[ll - 1] == '\r')
			ll--;
		if (ll == 0 && nl != NULL) {
			f->separator = true;
			p = next;
			break;
		}
		if (ll > f->longest_line)
			f->longest_line = ll;
		for (size_t i = 0; i < ll; i++) {
			if ((unsigned char)p[i] >= 0x80) {
				f->header_8bit = true;
				break;
			}
		}
		if (p[0] == ' ' || p[0] == '\t') {
			/* a continuation line: part of the field before */
			if (in_from)
				f->from_len = (size_t)(p + ll - (data + f->from_off));
			p = next;
			continue;
		}
		in_from = false;
		const char *colon = memchr(p, ':', ll);
		size_t nlen = colon != NULL ? (size_t)(colon - p) : 0;
		while (nlen > 0 && (p[nlen - 1] == ' ' || p[nlen - 1] == '\t'))
			nlen--;
		if (colon == NULL || nlen == 0) {
			f->n_garbage++;
			p = next;
			continue;
		}
		f->n_fields++;
		if (name_is(p, nlen, "From")) {
			if (f->n_from++ == 0) {
				in_from = true;
				f->from_off = (size_t)(colon + 1 - data);
				f->from_len = (size_t)(p + ll - (colon + 1));
			}
		} else if (name_is(p, nlen, "Sender")) {
			f->n_sender++;
		} else if (name_is(p, nlen, "To")) {
			f->n_to++;
		} else if (name_is(p, nlen, "Subject")) {
			f->n_subject++;
		} else if (name_is(p, nlen, "Date")) {
			f->n_date++;
		} else if (name_is(p, nlen, "Message-ID")) {
			f->n_msgid++;
		}
		p = next;
	}
	f->header_len = (size_t)(p - data);
	if (f->n_from > 0)
		f->from_malformed = !msg_addr_list_ok(data + f->from_off, f->from_len);
}

/* A domain: dot-separated labels of letters, digits, '-' (no empty
 * label), or an address literal in brackets. */
static bool
domain_ok(const char *d, size_t n)
{
	size_t label = 0;

	if (n == 0)
		return false;
	if (d[0] == '[')
		return n > 2 && d[n - 1] == ']';
	for (size_t i = 0; i < n; i++) {
		char c = d[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || (unsigned char)c >= 0x80))
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0;
}

/* One addr-spec, blanks around it allowed: local@domain. */
static bool
addr_spec_ok(const char *a, size_t n)
{
	const char *at = NULL;
	bool quoted = false;

	while (n > 0 && (a[0] == ' ' || a[0] == '\t' || a[0] == '\r' || a[0] == '\n')) {
		a++;
		n--;
	}
	while (n > 0 && (a[n - 1] == ' ' || a[n - 1] == '\t' || a[n - 1] == '\r' ||
			 a[n - 1] == '\n'))
		n--;
	for (size_t i = 0; i < n; i++) {
		if (a[i] == '"')
			quoted = !quoted;
		else if (a[i] == '\\' && quoted)
			i++;
		else if (a[i] == '@' && !quoted)
			at = a + i;
		else if (!quoted && (a[i] == ' ' || a[i] == '<' || a[i] == '>' || a[i] == ','))
			return false;
	}
	return at != NULL && at > a && domain_ok(at + 1, (size_t)(a + n - at - 1));
}

/*
 * A From value: one or more mailboxes separated by commas, each
 * "addr-spec" or "[phrase] <addr-spec>", with comments anywhere (dropped).
 * Groups are not mailboxes: RFC 5322 3.6.2 wants From to be a
 * mailbox-list. Deliberately lenient about the phrase.
 */
bool
msg_addr_list_ok(const char *v, size_t len)
{
	char buf[2048];
	size_t n = 0, start = 0;
	int depth = 0;
	bool quoted = false, any = false;

	/* comments out, at most sizeof(buf) octets looked at */
	for (size_t i = 0; i < len; i++) {
		char c = v[i];
		if (quoted) {
			if (c == '\\' && i + 1 < len) {
				if (n + 2 >= sizeof(buf))
					return false;
				buf[n++] = c;
				buf[n++] = v[++i];
				continue;
			}
			if (c == '"')
				quoted = false;
		} else if (depth > 0) {
			if (c == '\\')
				i++;
			else if (c == '(')
				depth++;
			else if (c == ')')
				depth--;
			continue;
		} else if (c == '(') {
			depth++;
			continue;
		} else if (c == '"') {
			quoted = true;
		}
		if (n + 1 >= sizeof(buf))
			return false;
		buf[n++] = c;
	}
	if (quoted || depth > 0)
		return false;
	quoted = false;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && buf[i] == '"')
			quoted = !quoted;
		if (i < n && buf[i] == '\\' && quoted) {
			i++;
			continue;
		}
		if (i < n && (quoted || buf[i] != ','))
			continue;
		/* one mailbox: buf[start..i) */
		const char *m = buf + start;
		size_t ml = i - start;
		const char *lt = NULL, *gt = NULL;
		bool q2 = false, blank = true;
		for (size_t k = 0; k < ml; k++) {
			if (m[k] == '"')
				q2 = !q2;
			else if (!q2 && m[k] == '<' && lt == NULL)
				lt = m + k;
			else if (!q2 && m[k] == '>' && lt != NULL && gt == NULL)
				gt = m + k;
			else if (!q2 && (m[k] == ':' || m[k] == ';'))
				return false; /* a group */
			if (m[k] != ' ' && m[k] != '\t' && m[k] != '\r' && m[k] != '\n')
				blank = false;
		}
		start = i + 1;
		if (blank)
			continue; /* "a@b.c, , d@e.f": empty list elements are obsolete but harmless */
		if (lt != NULL) {
			if (gt == NULL || !addr_spec_ok(lt + 1, (size_t)(gt - lt - 1)))
				return false;
			for (const char *r = gt + 1; r < m + ml; r++) {
				if (*r != ' ' && *r != '\t' && *r != '\r' && *r != '\n')
					return false;
			}
		} else if (!addr_spec_ok(m, ml)) {
			return false;
		}
		any = true;
	}
	return any;
}
