/*
 * fuzz_milter_parse.c — libFuzzer target for the milter service's pure
 * functions (milter/parse.c): milter_conn_spec() on a listen address and
 * milter_header_field() on a header name and value as libmilter hands them.
 *
 * The input is the address; split at its first NUL it is also a header
 * name and value. Beyond "no crash, no read past the input": a spec is
 * "inet:PORT@HOST" or "inet6:PORT@HOST" with a port 1..65535 and fits its
 * buffer (a too small buffer is refused, never overrun); a header field is
 * "NAME: " (controls in the name made '_') and the value with every LF
 * preceded by CR, ends in CRLF, has no bare LF and stays within its
 * stated bound.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "milter/milter.h"
#include "tests/fuzz/fuzz.h"

static void
check_spec(const char *addr)
{
	char out[300], tiny[8];

	if (milter_conn_spec(addr, out, sizeof(out)) == 0 && strncmp(out, "unix:", 5) == 0) {
		/* a unix socket: the address as it was, an absolute path, one line */
		CHECK(strcmp(out, addr) == 0 && out[5] == '/');
		CHECK(strchr(out, '\n') == NULL && strchr(out, '\r') == NULL);
	} else if (milter_conn_spec(addr, out, sizeof(out)) == 0) {
		CHECK(strncmp(out, "inet:", 5) == 0 || strncmp(out, "inet6:", 6) == 0);
		const char *port = strchr(out, ':') + 1;
		const char *at = strchr(port, '@');
		CHECK(at != NULL && at > port && at[1] != '\0');
		long p = strtol(port, NULL, 10);
		CHECK(p >= 1 && p <= 65535);
		CHECK(strlen(out) < sizeof(out));
	}
	if (milter_conn_spec(addr, tiny, sizeof(tiny)) == 0)
		CHECK(strlen(tiny) < sizeof(tiny));
}

static void
check_field(const char *name, const char *value)
{
	size_t len, nlen = strlen(name), vlen = strlen(value);
	char *f = milter_header_field(name, value, &len);

	CHECK(len <= nlen + 2 * vlen + 4);
	CHECK(strlen(f) == len || memchr(f, '\0', len) != NULL);
	for (size_t i = 0; i < nlen; i++)
		CHECK(f[i] == name[i] || (f[i] == '_' && ((unsigned char)name[i] < 32 || name[i] == 127)));
	CHECK(memcmp(f + nlen, ": ", 2) == 0);
	CHECK(len >= nlen + 4 && f[len - 2] == '\r' && f[len - 1] == '\n');
	for (size_t i = 0; i < len; i++) {
		if (f[i] == '\n')
			CHECK(i > 0 && f[i - 1] == '\r');
	}
	free(f);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	const char *value;

	memcpy(s, data, size);
	s[size] = '\0';
	check_spec(s);
	value = memchr(s, '\0', size) != NULL ? s + strlen(s) + 1 : "";
	check_field(s, value);
	free(s);
	return 0;
}
