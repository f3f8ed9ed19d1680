/*
 * fuzz_web_input.c — libFuzzer target for the web service's own input
 * parsing (web/http.c): the session cookie in a Cookie: header, tokens,
 * UIDs in a query, and text made valid UTF-8 for JSON.
 *
 * Beyond "no crash, no read past the input": a cookie value found is
 * NUL-terminated within its buffer and only [0-9a-f]; a UID parsed is the
 * input's decimal value; the cleaned text is valid UTF-8 (checked by an
 * independent decoder here) without NULs, and cleaning it again changes
 * nothing.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "web/web.h"

static size_t
utf8_valid_len(const unsigned char *p, size_t n)
{
	if (p[0] < 0x80)
		return 1;
	size_t len = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc0 ? 2 : 0;
	if (len == 0 || n < len)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	char out[WEB_TOKEN_HEX + 1];
	unsigned uid;

	memcpy(s, data, size);
	s[size] = '\0';
	/* the header as evhttp hands it over: a C string */
	if (web_cookie_get(s, WEB_COOKIE_NAME, out, sizeof(out))) {
		CHECK(memchr(out, '\0', sizeof(out)) != NULL);
		CHECK(out[0] != '\0');
		for (const char *p = out; *p != '\0'; p++)
			CHECK((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'));
	}
	if (web_token_ok(s)) {
		CHECK(strlen(s) == WEB_TOKEN_HEX);
		CHECK(web_token_equal(s, s));
	}
	if (web_parse_uid(s, &uid)) {
		CHECK(uid > 0);
		CHECK(strtoul(s, NULL, 10) == uid);
	}
	/* text from a message: any octets, NULs included */
	char *clean = web_utf8_clean((const char *)data, size);
	size_t cl = strlen(clean);
	for (size_t i = 0; i < cl;) {
		size_t n = utf8_valid_len((const unsigned char *)clean + i, cl - i);
		CHECK(n > 0);
		i += n;
	}
	char *again = web_utf8_clean(clean, cl);
	CHECK(strcmp(again, clean) == 0);
	free(again);
	free(clean);
	free(s);
	return 0;
}
