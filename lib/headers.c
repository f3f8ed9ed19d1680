/*
 * headers.c — finding header fields in a message as received.
 *
 * Only what delivery needs without parsing MIME: the byte ranges of the
 * top-level header block's fields with a given name prefix, so that the
 * Maildir writer and the relay can leave out the X-Spam-* fields a sender
 * put in (they would pass for mxguard's own verdict). A field is its
 * "Name:" line and every continuation line (starting with space or tab),
 * each with its line end (CRLF, or a bare LF as received). The header
 * block ends at the first empty line; a line that is not a field ("From "
 * mbox lines, garbage) is skipped over, as GMime does.
 */
#include "config.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"

/* The end of the line at p (after its LF), or end. */
static const char *
line_end(const char *p, const char *end)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));

	return nl != NULL ? nl + 1 : end;
}

bool
msg_header_next(const char *data, size_t len, const char *prefix, size_t *pos, size_t span[2])
{
	const char *p = data + *pos, *end = data + (len < MSG_HEADER_SCAN_MAX ? len : MSG_HEADER_SCAN_MAX);
	size_t plen = strlen(prefix);

	while (p < end) {
		if (*p == '\n' || (*p == '\r' && p + 1 < end && p[1] == '\n'))
			break; /* the empty line: the body starts */
		const char *next = line_end(p, end);
		bool match = (size_t)(next - p) > plen && strncasecmp(p, prefix, plen) == 0;
		if (match) {
			/* the name must end at ':' (optional spaces before it) */
			const char *q = p + plen;
			while (q < next && *q != ':' && *q != ' ' && *q != '\t' && *q != '\r' && *q != '\n')
				q++;
			while (q < next && (*q == ' ' || *q == '\t'))
				q++;
			match = q < next && *q == ':';
		}
		const char *field_end = next;
		while (field_end < end && (*field_end == ' ' || *field_end == '\t'))
			field_end = line_end(field_end, end);
		if (match) {
			span[0] = (size_t)(p - data);
			span[1] = (size_t)(field_end - data);
			*pos = span[1];
			return true;
		}
		p = field_end;
	}
	*pos = (size_t)(end - data);
	return false;
}

/* Skip CFWS (spaces, tabs, line ends, nested comments) from p. */
static const char *
skip_cfws(const char *p, const char *end)
{
	int depth = 0;

	while (p < end) {
		if (depth > 0 && *p == '\\' && p + 1 < end) {
			p += 2;
			continue;
		}
		if (*p == '(')
			depth++;
		else if (*p == ')' && depth > 0)
			depth--;
		else if (depth == 0 && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
			break;
		p++;
	}
	return p;
}

bool
msg_authres_id_is(const char *field, size_t len, const char *authserv_id)
{
	static const char name[] = "Authentication-Results";
	const char *p = field, *end = field + len;
	size_t nl = sizeof(name) - 1, idl;

	if (authserv_id == NULL || authserv_id[0] == '\0' || len <= nl ||
	    strncasecmp(field, name, nl) != 0)
		return false;
	p += nl;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	if (p == end || *p != ':')
		return false;
	p = skip_cfws(p + 1, end);
	idl = strlen(authserv_id);
	if (p < end && *p == '"') {
		/* a quoted-string: compare its contents (quoted-pairs undone) */
		size_t i = 0;
		for (p++; p < end && *p != '"'; p++) {
			if (*p == '\\' && p + 1 < end)
				p++;
			if (i >= idl || tolower((unsigned char)*p) !=
			    tolower((unsigned char)authserv_id[i]))
				return false;
			i++;
		}
		return p < end && i == idl;
	}
	if ((size_t)(end - p) < idl || strncasecmp(p, authserv_id, idl) != 0)
		return false;
	p += idl;
	/* the token ends here: CFWS, ";" (RFC 8601's version may follow) */
	return p == end || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == ';' ||
	       *p == '(';
}

bool
msg_forged_next(const char *data, size_t len, const char *authserv_id, size_t *pos,
		size_t span[2])
{
	size_t plen = strlen(MSG_FORGED_PREFIX);

	/* every field in turn: "" matches every name */
	while (msg_header_next(data, len, "", pos, span)) {
		const char *f = data + span[0];
		size_t fl = span[1] - span[0];
		if ((fl > plen && strncasecmp(f, MSG_FORGED_PREFIX, plen) == 0) ||
		    msg_authres_id_is(f, fl, authserv_id))
			return true;
	}
	return false;
}
