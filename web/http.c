/*
 * http.c — the web service's own parsing of request input: the session
 * cookie, tokens, UIDs in a query, and text made valid UTF-8 for JSON.
 * Pure functions (tests/fuzz/fuzz_web_input.c); evhttp parses the rest.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "web/web.h"

static bool
is_hex_lower(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

bool
web_cookie_get(const char *header, const char *name, char *out, size_t outsz)
{
	size_t nlen = strlen(name);
	const char *p = header;

	if (outsz == 0)
		return false;
	out[0] = '\0';
	while (p != NULL && *p != '\0') {
		while (*p == ' ' || *p == '\t' || *p == ';')
			p++;
		const char *end = strchr(p, ';');
		size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
		if (len > nlen && memcmp(p, name, nlen) == 0 && p[nlen] == '=') {
			const char *v = p + nlen + 1;
			size_t vlen = len - nlen - 1;
			while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
				vlen--;
			if (vlen == 0 || vlen >= outsz)
				return false;
			for (size_t i = 0; i < vlen; i++)
				if (!is_hex_lower((unsigned char)v[i]))
					return false;
			memcpy(out, v, vlen);
			out[vlen] = '\0';
			return true;
		}
		p = end;
	}
	return false;
}

bool
web_token_ok(const char *s)
{
	size_t i;

	if (s == NULL)
		return false;
	for (i = 0; s[i] != '\0'; i++)
		if (i >= WEB_TOKEN_HEX || !is_hex_lower((unsigned char)s[i]))
			return false;
	return i == WEB_TOKEN_HEX;
}

bool
web_token_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char d = la != lb;
	size_t n = la < lb ? la : lb;

	for (size_t i = 0; i < n; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

bool
web_parse_uid(const char *s, unsigned *uid_r)
{
	uint64_t v = 0;
	size_t i;

	if (s == NULL || s[0] < '1' || s[0] > '9')
		return false;
	for (i = 0; s[i] != '\0'; i++) {
		if (s[i] < '0' || s[i] > '9' || i >= 10)
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > UINT32_MAX)
		return false;
	*uid_r = (unsigned)v;
	return true;
}

/* the length of a valid UTF-8 sequence at p (at most n octets), or 0 */
static size_t
utf8_seq(const unsigned char *p, size_t n)
{
	unsigned c = p[0];
	size_t len;
	unsigned cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

char *
web_utf8_clean(const char *data, size_t len)
{
	/* every octet becomes at most 3 (U+FFFD) */
	char *out = xmalloc(len * 3 + 1);
	const unsigned char *p = (const unsigned char *)data;
	size_t o = 0, i = 0;

	while (i < len) {
		size_t n = utf8_seq(p + i, len - i);
		if (n == 1 && p[i] < 0x20 && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
			n = 0;
		if (n == 1 && p[i] == 0x7f)
			n = 0;
		if (n == 0) {
			memcpy(out + o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
			continue;
		}
		memcpy(out + o, p + i, n);
		o += n;
		i += n;
	}
	out[o] = '\0';
	return out;
}

/* ASCII case-insensitive: does p[0..n) start with lowercase `want`? */
static bool
starts_ci(const char *p, size_t n, const char *want)
{
	size_t wl = strlen(want);

	if (n < wl)
		return false;
	for (size_t i = 0; i < wl; i++) {
		char c = p[i];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (c != want[i])
			return false;
	}
	return true;
}

/* a URL at p that would be fetched from the network */
static bool
remote_url(const char *p, size_t n)
{
	while (n > 0 && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == '"' || *p == '\'')) {
		p++;
		n--;
	}
	return starts_ci(p, n, "http:") || starts_ci(p, n, "https:") || starts_ci(p, n, "//");
}

bool
web_html_remote_images(const char *html, size_t len)
{
	static const char *const attrs[] = { "src", "srcset", "background", "poster" };

	for (size_t i = 0; i < len; i++) {
		const char *p = html + i;
		size_t n = len - i;
		if (starts_ci(p, n, "url(") && remote_url(p + 4, n - 4))
			return true;
		/* an attribute name after a space, then '=' */
		if (i == 0 || !(html[i - 1] == ' ' || html[i - 1] == '\t' || html[i - 1] == '\n' ||
				html[i - 1] == '\r' || html[i - 1] == '"' || html[i - 1] == '\''))
			continue;
		for (size_t a = 0; a < sizeof(attrs) / sizeof(attrs[0]); a++) {
			size_t al = strlen(attrs[a]);
			if (!starts_ci(p, n, attrs[a]))
				continue;
			size_t k = al;
			while (k < n && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r' || p[k] == '\n'))
				k++;
			if (k < n && p[k] == '=' && remote_url(p + k + 1, n - k - 1))
				return true;
		}
	}
	return false;
}
