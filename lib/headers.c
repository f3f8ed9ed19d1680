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
