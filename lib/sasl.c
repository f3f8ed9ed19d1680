/*
 * sasl.c — what the mail clients' services (POP3, IMAP) share of SASL:
 * standard base64 with padding, and the PLAIN mechanism's message
 * (RFC 4616: authzid NUL authcid NUL password). Pure, bounded by the
 * input; unit-tested in test_pop3_parse and test_imap_parse, fuzzed by
 * fuzz_pop3_command and fuzz_imap_command.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"

/* ------------------------------------------------------------- base64 */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int sasl_base64_decode(const char *in, size_t len, char **out_r, size_t *len_r)
{
	char *out;
	size_t o = 0;

	*out_r = NULL;
	*len_r = 0;
	if (len % 4 != 0)
		return -1;
	out = xmalloc(len / 4 * 3 + 1);
	for (size_t i = 0; i < len; i += 4) {
		int v[4], pad = 0;
		for (int k = 0; k < 4; k++) {
			unsigned char c = (unsigned char)in[i + k];
			if (c == '=' && i + 4 == len && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0 || (v[k] = b64_value(c)) < 0) {
				free(out);
				return -1;
			}
		}
		unsigned long x = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12) |
				  ((unsigned long)v[2] << 6) | (unsigned long)v[3];
		out[o++] = (char)(x >> 16);
		if (pad < 2)
			out[o++] = (char)((x >> 8) & 0xff);
		if (pad < 1)
			out[o++] = (char)(x & 0xff);
	}
	out[o] = '\0';
	*out_r = out;
	*len_r = o;
	return 0;
}

char *sasl_base64_encode(const char *in, size_t len)
{
	char *out = xmalloc((len + 2) / 3 * 4 + 1);
	size_t o = 0;

	for (size_t i = 0; i < len; i += 3) {
		unsigned long x = (unsigned long)(unsigned char)in[i] << 16;
		if (i + 1 < len)
			x |= (unsigned long)(unsigned char)in[i + 1] << 8;
		if (i + 2 < len)
			x |= (unsigned long)(unsigned char)in[i + 2];
		out[o++] = b64[(x >> 18) & 63];
		out[o++] = b64[(x >> 12) & 63];
		out[o++] = i + 1 < len ? b64[(x >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? b64[x & 63] : '=';
	}
	out[o] = '\0';
	return out;
}

int sasl_plain_split(char *buf, size_t len, const char **authz_r, const char **authc_r,
		    const char **pass_r)
{
	char *nul1 = memchr(buf, '\0', len);
	char *nul2;

	if (nul1 == NULL)
		return -1;
	nul2 = memchr(nul1 + 1, '\0', len - (size_t)(nul1 + 1 - buf));
	if (nul2 == NULL || nul2 == nul1 + 1)
		return -1;
	/* the password runs to the end; a NUL inside it is not allowed */
	if (memchr(nul2 + 1, '\0', len - (size_t)(nul2 + 1 - buf)) != NULL)
		return -1;
	*authz_r = buf;
	*authc_r = nul1 + 1;
	*pass_r = nul2 + 1;
	return 0;
}
