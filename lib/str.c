/*
 * str.c — the few string helpers mxguard needs beyond libc.
 *
 * Protocol text is ASCII and compared case-insensitively, so lower-casing is
 * done byte by byte without consulting the locale (a Turkish locale must not
 * turn "I" into a dotless i inside a domain name). str_copy() is strlcpy():
 * it never overflows, always terminates, and returns the length it wanted so
 * callers can detect truncation.
 */
#include "config.h"

#include "lib/lib.h"

#include <string.h>

void str_lower(char *s)
{
	for (; *s != '\0'; s++) {
		if (*s >= 'A' && *s <= 'Z')
			*s = (char)(*s - 'A' + 'a');
	}
}

size_t str_copy(char *dst, const char *src, size_t dstsz)
{
	size_t len = strlen(src);

	if (dstsz > 0) {
		size_t n = len < dstsz - 1 ? len : dstsz - 1;

		memcpy(dst, src, n);
		dst[n] = '\0';
	}
	return len;
}

void str_log_safe(const char *in, char *out, size_t outsz)
{
	size_t o = 0;

	for (; *in != '\0' && o + 1 < outsz && o < 96; in++) {
		unsigned char c = (unsigned char)*in;
		out[o++] = (c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '=') ? (char)c : '?';
	}
	if (o == 0 && outsz > 1)
		out[o++] = '-';
	out[o] = '\0';
}
