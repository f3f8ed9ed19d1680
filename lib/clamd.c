/*
 * clamd.c — what clamd answers a scan (see lib.h, "clamd reply").
 *
 * clamd ends its answer with a NUL for a "z" command (or a newline for an
 * "n" one): "stream: OK", "stream: NAME FOUND", "... ERROR". The reply comes
 * from a daemon we were configured to trust, but it is still bytes off a
 * socket: nothing here reads past len, and the text kept for the log is
 * printable ASCII only.
 */
#include "config.h"

#include <string.h>

#include "lib/lib.h"

static void
clamd_copy_printable(char *dst, size_t dstsz, const char *src, size_t n)
{
	size_t o = 0;

	for (size_t i = 0; i < n && o + 1 < dstsz; i++) {
		unsigned char c = (unsigned char)src[i];
		dst[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	dst[o] = '\0';
}

enum clamd_result
clamd_reply_parse(const char *reply, size_t len, char *name, size_t namesz)
{
	const char *nul = memchr(reply, '\0', len);
	size_t n = nul != NULL ? (size_t)(nul - reply) : len;
	const char *a = reply;

	name[0] = '\0';
	while (n > 0 && (a[n - 1] == '\n' || a[n - 1] == '\r' || a[n - 1] == ' '))
		n--;
	/* "stream: " (INSTREAM) or "<path>: " (SCAN): what follows the last
	 * ": " before the verdict word; a signature name has no ": " */
	for (size_t i = n; i >= 2; i--) {
		if (a[i - 2] == ':' && a[i - 1] == ' ') {
			a += i;
			n -= i;
			break;
		}
	}
	if (n == 2 && memcmp(a, "OK", 2) == 0)
		return CLAMD_CLEAN;
	if (n > 6 && memcmp(a + n - 6, " FOUND", 6) == 0) {
		clamd_copy_printable(name, namesz, a, n - 6);
		return CLAMD_FOUND;
	}
	clamd_copy_printable(name, namesz, a, n);
	if (n >= 6 && memcmp(a + n - 6, " ERROR", 6) == 0 &&
	    memmem(a, n, "size limit exceeded", 19) != NULL)
		return CLAMD_SIZE_LIMIT;
	return CLAMD_ERROR;
}
