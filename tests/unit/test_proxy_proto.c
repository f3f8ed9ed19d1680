/*
 * test_proxy_proto.c — unit tests for lib/proxy_proto.c, the PROXY protocol
 * header parser (v1 text, v2 binary) and proxy_header_start(): the headers
 * HAProxy sends, every prefix of them (always NEED_MORE, never a verdict
 * before the last octet), what must be refused, the allowed-version mask,
 * and h->length exactly the header so what follows stays the client's.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "lib/lib.h"

#define ANY (PROXY_ALLOW_V1 | PROXY_ALLOW_V2)

static const unsigned char sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a
};

static enum proxy_result
parse(const void *buf, size_t len, unsigned allowed, struct proxy_header *h, const char **err)
{
	/* an exact-size copy, so a sanitizer build sees a read past len */
	unsigned char *copy = malloc(len > 0 ? len : 1);
	enum proxy_result r;

	memcpy(copy, buf, len);
	r = proxy_header_parse(copy, len, allowed, h, err);
	free(copy);
	return r;
}

/* Every proper prefix is NEED_MORE; the whole is DONE with length == len. */
static void
assert_done_with_prefixes(const void *buf, size_t len, unsigned allowed, struct proxy_header *h)
{
	const char *err;

	for (size_t n = 1; n < len; n++) {
		enum proxy_result r = parse(buf, n, allowed, h, &err);
		if (r != PROXY_NEED_MORE)
			fail_msg("prefix of %zu/%zu octets gave %d (%s)", n, len, (int)r,
				 err != NULL ? err : "-");
	}
	assert_int_equal(parse(buf, 0, allowed, h, &err), PROXY_NEED_MORE);
	assert_int_equal(parse(buf, len, allowed, h, &err), PROXY_DONE);
	assert_null(err);
	assert_int_equal(h->length, len);
}

/* DONE with the header followed by client octets: h->length is the header. */
static void
assert_done_followed(const void *buf, size_t len, unsigned allowed, struct proxy_header *h)
{
	unsigned char more[2048];
	const char *err;
	const char *tail = "EHLO x\r\nMAIL FROM:<a@b>\r\n";

	assert_true(len + strlen(tail) <= sizeof(more));
	memcpy(more, buf, len);
	memcpy(more + len, tail, strlen(tail));
	assert_int_equal(parse(more, len + strlen(tail), allowed, h, &err), PROXY_DONE);
	assert_int_equal(h->length, len);
}

static void
assert_invalid(const void *buf, size_t len, unsigned allowed)
{
	struct proxy_header h;
	const char *err = NULL;

	assert_int_equal(parse(buf, len, allowed, &h, &err), PROXY_INVALID);
	assert_non_null(err);
	assert_true(strlen(err) > 0);
}

#define V1(s) (s), (sizeof(s) - 1)

static size_t
v2(unsigned char *out, unsigned char vc, unsigned char fam, const void *body, size_t n)
{
	memcpy(out, sig, 12);
	out[12] = vc;
	out[13] = fam;
	out[14] = (unsigned char)(n >> 8);
	out[15] = (unsigned char)(n & 0xff);
	if (n > 0)
		memcpy(out + 16, body, n);
	return 16 + n;
}

/* ------------------------------------------------------------------ v1 */

static void
test_v1_tcp4(void **state)
{
	struct proxy_header h;

	(void)state;
	assert_done_with_prefixes(V1("PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n"), ANY, &h);
	assert_int_equal(h.version, 1);
	assert_false(h.local);
	assert_int_equal(h.family, AF_INET);
	assert_string_equal(h.src_addr, "192.0.2.7");
	assert_string_equal(h.dst_addr, "198.51.100.1");
	assert_int_equal(h.src_port, 51234);
	assert_int_equal(h.dst_port, 25);
	assert_done_followed(V1("PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n"), ANY, &h);
	assert_done_with_prefixes(V1("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n"),
				  PROXY_ALLOW_V1, &h);
	assert_int_equal(h.src_port, 0);
	assert_int_equal(h.dst_port, 65535);
}

static void
test_v1_tcp6(void **state)
{
	struct proxy_header h;

	(void)state;
	assert_done_with_prefixes(V1("PROXY TCP6 2001:db8::7 2001:db8::1 51234 25\r\n"), ANY, &h);
	assert_int_equal(h.family, AF_INET6);
	assert_string_equal(h.src_addr, "2001:db8::7");
	assert_string_equal(h.dst_addr, "2001:db8::1");
	assert_int_equal(h.src_port, 51234);
	/* the canonical text form */
	assert_done_with_prefixes(V1("PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0007 ::1 1 2\r\n"),
				  ANY, &h);
	assert_string_equal(h.src_addr, "2001:db8::7");
	assert_done_followed(V1("PROXY TCP6 2001:db8::7 2001:db8::1 51234 25\r\n"), ANY, &h);
	const char *full = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
			   "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	assert_done_with_prefixes(full, strlen(full), ANY, &h);
	assert_string_equal(h.dst_addr, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	/* the longest line the protocol allows: 107 octets */
	const char *longest = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
			      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	assert_int_equal(strlen(longest), PROXY_V1_MAX);
	assert_done_with_prefixes(longest, strlen(longest), ANY, &h);
	assert_true(h.local);
}

static void
test_v1_unknown(void **state)
{
	struct proxy_header h;

	(void)state;
	assert_done_with_prefixes(V1("PROXY UNKNOWN\r\n"), ANY, &h);
	assert_true(h.local);
	assert_int_equal(h.version, 1);
	assert_string_equal(h.src_addr, "");
	assert_done_followed(V1("PROXY UNKNOWN\r\n"), ANY, &h);
	/* whatever follows UNKNOWN is ignored */
	assert_done_with_prefixes(V1("PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"), ANY, &h);
	assert_true(h.local);
	assert_done_with_prefixes(V1("PROXY UNKNOWN a b c d e f\r\n"), ANY, &h);
	assert_true(h.local);
	assert_invalid(V1("PROXY UNKNOWNX\r\n"), ANY);
}

static void
test_v1_invalid(void **state)
{
	(void)state;
	/* spacing */
	assert_invalid(V1("PROXY TCP4  192.0.2.7 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7  198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 51234 25 \r\n"), ANY);
	assert_invalid(V1("PROXY  TCP4 192.0.2.7 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1  25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4\t192.0.2.7 198.51.100.1 51234 25\r\n"), ANY);
	/* fields */
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 51234 25 extra\r\n"), ANY);
	assert_invalid(V1("PROXY \r\n"), ANY);
	assert_invalid(V1("PROXY TCP5 192.0.2.7 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY tcp4 192.0.2.7 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY UDP4 192.0.2.7 198.51.100.1 51234 25\r\n"), ANY);
	/* ports */
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 51234 65536\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 051234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 01 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 00 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 +1 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 99999 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 1a 25\r\n"), ANY);
	/* addresses */
	assert_invalid(V1("PROXY TCP4 2001:db8::7 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP6 192.0.2.7 2001:db8::1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP6 2001:db8::7 192.0.2.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.07 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.256 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 host.example 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXY TCP6 [2001:db8::7] 2001:db8::1 51234 25\r\n"), ANY);
	/* line ends and octets */
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\r\n"), ANY);
	assert_invalid(V1("PROXY TCP4 192.0.2.7\r198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid("PROXY TCP4 192.0.2.7\0 198.51.100.1 51234 25\r\n", 45, ANY);
	/* the signature */
	assert_invalid(V1("proxy TCP4 192.0.2.7 198.51.100.1 51234 25\r\n"), ANY);
	assert_invalid(V1("PROXy"), ANY);
	assert_invalid(V1("PROXY\r\n"), ANY);
	assert_invalid(V1("EHLO x\r\n"), ANY);
	assert_invalid(V1(" PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n"), ANY);
}

static void
test_v1_too_long(void **state)
{
	char line[200];
	struct proxy_header h;
	const char *err;

	(void)state;
	memset(line, '1', sizeof(line));
	memcpy(line, "PROXY TCP4 ", 11);
	/* 107 octets without CRLF: refused at once */
	assert_int_equal(parse(line, 106, ANY, &h, &err), PROXY_NEED_MORE);
	assert_int_equal(parse(line, 107, ANY, &h, &err), PROXY_INVALID);
	assert_int_equal(parse(line, 108, ANY, &h, &err), PROXY_INVALID);
	assert_int_equal(parse(line, sizeof(line), ANY, &h, &err), PROXY_INVALID);
	/* 108 octets ending in CRLF: one too many */
	line[106] = '\r';
	line[107] = '\n';
	assert_int_equal(parse(line, 108, ANY, &h, &err), PROXY_INVALID);
	/* a CR as the 107th octet: no room is left for its LF */
	assert_int_equal(parse(line, 107, ANY, &h, &err), PROXY_INVALID);
}

/* ------------------------------------------------------------------ v2 */

static void
test_v2_tcp4(void **state)
{
	unsigned char buf[128];
	const unsigned char body[] = { 192, 0, 2, 7, 198, 51, 100, 1, 0xc8, 0x22, 0, 25 };
	struct proxy_header h;
	size_t n;

	(void)state;
	n = v2(buf, 0x21, 0x11, body, sizeof(body));
	assert_done_with_prefixes(buf, n, ANY, &h);
	assert_int_equal(h.version, 2);
	assert_false(h.local);
	assert_int_equal(h.family, AF_INET);
	assert_string_equal(h.src_addr, "192.0.2.7");
	assert_string_equal(h.dst_addr, "198.51.100.1");
	assert_int_equal(h.src_port, 51234);
	assert_int_equal(h.dst_port, 25);
	assert_done_followed(buf, n, PROXY_ALLOW_V2, &h);

	/* with TLVs (ALPN, authority, a NOOP): skipped, counted in the length */
	unsigned char tlv[64];
	memcpy(tlv, body, sizeof(body));
	const unsigned char t[] = { 0x01, 0x00, 0x02, 'h', '2', 0x02, 0x00, 0x03, 'a', '.', 'b',
				    0x04, 0x00, 0x00 };
	memcpy(tlv + sizeof(body), t, sizeof(t));
	n = v2(buf, 0x21, 0x11, tlv, sizeof(body) + sizeof(t));
	assert_done_with_prefixes(buf, n, ANY, &h);
	assert_string_equal(h.src_addr, "192.0.2.7");
	assert_int_equal(h.length, 16 + 12 + sizeof(t));
	assert_done_followed(buf, n, ANY, &h);

	/* too short an address block */
	n = v2(buf, 0x21, 0x11, body, 11);
	assert_invalid(buf, n, ANY);
}

static void
test_v2_tcp6(void **state)
{
	unsigned char buf[128], body[36 + 8];
	struct proxy_header h;
	size_t n;

	(void)state;
	memset(body, 0, sizeof(body));
	body[0] = 0x20, body[1] = 0x01, body[2] = 0x0d, body[3] = 0xb8, body[15] = 7;
	body[16] = 0x20, body[17] = 0x01, body[18] = 0x0d, body[19] = 0xb8, body[31] = 1;
	body[32] = 0xc8, body[33] = 0x22, body[34] = 0, body[35] = 25;
	n = v2(buf, 0x21, 0x21, body, 36);
	assert_done_with_prefixes(buf, n, ANY, &h);
	assert_int_equal(h.family, AF_INET6);
	assert_string_equal(h.src_addr, "2001:db8::7");
	assert_string_equal(h.dst_addr, "2001:db8::1");
	assert_int_equal(h.src_port, 51234);
	assert_int_equal(h.dst_port, 25);
	assert_done_followed(buf, n, ANY, &h);
	/* with a TLV */
	body[36] = 0x04, body[37] = 0x00, body[38] = 0x05;
	n = v2(buf, 0x21, 0x21, body, 36 + 8);
	assert_done_with_prefixes(buf, n, ANY, &h);
	assert_string_equal(h.src_addr, "2001:db8::7");
	assert_int_equal(h.length, 16 + 44);
	/* too short */
	n = v2(buf, 0x21, 0x21, body, 35);
	assert_invalid(buf, n, ANY);
	/* 12 octets of v4 block under a TCP6 family */
	n = v2(buf, 0x21, 0x21, body, 12);
	assert_invalid(buf, n, ANY);
}

static void
test_v2_local_unspec(void **state)
{
	unsigned char buf[128], body[12] = { 192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 2 };
	struct proxy_header h;
	size_t n;

	(void)state;
	/* LOCAL, nothing after it */
	n = v2(buf, 0x20, 0x00, NULL, 0);
	assert_done_with_prefixes(buf, n, ANY, &h);
	assert_true(h.local);
	assert_int_equal(h.version, 2);
	assert_int_equal(h.length, 16);
	assert_done_followed(buf, n, ANY, &h);
	/* LOCAL with addresses: they are ignored */
	n = v2(buf, 0x20, 0x11, body, sizeof(body));
	assert_done_with_prefixes(buf, n, ANY, &h);
	assert_true(h.local);
	assert_string_equal(h.src_addr, "");
	/* PROXY over UNSPEC: the balancer does not know */
	n = v2(buf, 0x21, 0x00, NULL, 0);
	assert_done_with_prefixes(buf, n, ANY, &h);
	assert_true(h.local);
	n = v2(buf, 0x21, 0x00, body, sizeof(body));
	assert_done_with_prefixes(buf, n, ANY, &h);
	assert_true(h.local);
	assert_int_equal(h.length, 28);
}

static void
test_v2_invalid(void **state)
{
	unsigned char buf[PROXY_V2_MAX + 64], body[216];

	(void)state;
	memset(body, 0, sizeof(body));
	/* UDP over IPv4 and IPv6, unix stream and datagram, other families */
	static const unsigned char fams[] = { 0x12, 0x22, 0x31, 0x32, 0x10, 0x20, 0x01, 0x41 };
	for (size_t i = 0; i < sizeof(fams); i++)
		assert_invalid(buf, v2(buf, 0x21, fams[i], body, sizeof(body)), ANY);
	/* version 1 (and others) in the version octet */
	assert_invalid(buf, v2(buf, 0x11, 0x11, body, 12), ANY);
	assert_invalid(buf, v2(buf, 0x31, 0x11, body, 12), ANY);
	assert_invalid(buf, v2(buf, 0x01, 0x11, body, 12), ANY);
	/* neither LOCAL nor PROXY */
	assert_invalid(buf, v2(buf, 0x22, 0x11, body, 12), ANY);
	assert_invalid(buf, v2(buf, 0x2f, 0x11, body, 12), ANY);
	/* the version is judged as soon as its octet is there */
	v2(buf, 0x11, 0x11, body, 12);
	assert_invalid(buf, 16, ANY);
	/* longer than PROXY_V2_MAX: refused from the length field alone */
	struct proxy_header h;
	const char *err;
	memset(buf + 16, 0, PROXY_V2_MAX);
	memcpy(buf, sig, 12);
	buf[12] = 0x21, buf[13] = 0x11;
	size_t body_max = PROXY_V2_MAX - 16;
	buf[14] = (unsigned char)(body_max >> 8), buf[15] = (unsigned char)body_max;
	assert_int_equal(parse(buf, 16, ANY, &h, &err), PROXY_NEED_MORE);
	assert_int_equal(parse(buf, PROXY_V2_MAX, ANY, &h, &err), PROXY_DONE);
	assert_int_equal(h.length, PROXY_V2_MAX);
	body_max++;
	buf[14] = (unsigned char)(body_max >> 8), buf[15] = (unsigned char)body_max;
	assert_invalid(buf, 16, ANY);
	buf[14] = 0xff, buf[15] = 0xff;
	assert_invalid(buf, 16, ANY);
	/* a broken signature */
	v2(buf, 0x21, 0x11, body, 12);
	buf[11] = 0x0b;
	assert_invalid(buf, 28, ANY);
	v2(buf, 0x21, 0x11, body, 12);
	buf[4] = 0x01;
	assert_invalid(buf, 5, ANY);
}

/* --------------------------------------------------------------- masks */

static void
test_allowed(void **state)
{
	unsigned char buf[64];
	const unsigned char body[] = { 192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 2 };
	const char *v1 = "PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n";
	size_t n = v2(buf, 0x21, 0x11, body, sizeof(body));
	struct proxy_header h;
	const char *err;

	(void)state;
	assert_int_equal(parse(v1, strlen(v1), PROXY_ALLOW_V1, &h, &err), PROXY_DONE);
	assert_int_equal(parse(v1, strlen(v1), PROXY_ALLOW_V2, &h, &err), PROXY_INVALID);
	assert_string_equal(err, "no PROXY v2 header");
	assert_int_equal(parse(v1, 1, PROXY_ALLOW_V2, &h, &err), PROXY_INVALID);
	assert_int_equal(parse(buf, n, PROXY_ALLOW_V2, &h, &err), PROXY_DONE);
	assert_int_equal(parse(buf, n, PROXY_ALLOW_V1, &h, &err), PROXY_INVALID);
	assert_string_equal(err, "no PROXY v1 header");
	assert_int_equal(parse(buf, 1, PROXY_ALLOW_V1, &h, &err), PROXY_INVALID);
	assert_int_equal(parse(buf, n, ANY, &h, &err), PROXY_DONE);
	assert_int_equal(parse(v1, strlen(v1), ANY, &h, &err), PROXY_DONE);
	assert_int_equal(parse("EHLO x\r\n", 8, ANY, &h, &err), PROXY_INVALID);
	assert_string_equal(err, "no PROXY header (v1 or v2)");
	/* neither allowed: nothing is a header */
	assert_int_equal(parse(v1, strlen(v1), 0, &h, &err), PROXY_INVALID);
	assert_int_equal(parse(buf, n, 0, &h, &err), PROXY_INVALID);
}

static void
test_start(void **state)
{
	unsigned char buf[64];
	const unsigned char body[] = { 192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 2 };
	size_t n = v2(buf, 0x21, 0x11, body, sizeof(body));

	(void)state;
	assert_true(proxy_header_start((const unsigned char *)"PROXY ", 6));
	assert_true(proxy_header_start((const unsigned char *)"PROXY TCP4 1.2.3.4", 18));
	assert_false(proxy_header_start((const unsigned char *)"PROXY", 5));
	assert_false(proxy_header_start((const unsigned char *)"PROXYX", 6));
	assert_false(proxy_header_start((const unsigned char *)"proxy ", 6));
	assert_false(proxy_header_start((const unsigned char *)"EHLO x\r\n", 8));
	assert_false(proxy_header_start((const unsigned char *)"\r\n", 2));
	assert_false(proxy_header_start((const unsigned char *)"", 0));
	/* v2: from the NUL on */
	assert_false(proxy_header_start(buf, 4));
	for (size_t k = 5; k <= n; k++)
		assert_true(proxy_header_start(buf, k));
	buf[7] = 'X';
	assert_false(proxy_header_start(buf, 12));
	/* a blank line then text is not a header */
	assert_false(proxy_header_start((const unsigned char *)"\r\n\r\nEHLO", 8));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_v1_tcp4),
		cmocka_unit_test(test_v1_tcp6),
		cmocka_unit_test(test_v1_unknown),
		cmocka_unit_test(test_v1_invalid),
		cmocka_unit_test(test_v1_too_long),
		cmocka_unit_test(test_v2_tcp4),
		cmocka_unit_test(test_v2_tcp6),
		cmocka_unit_test(test_v2_local_unspec),
		cmocka_unit_test(test_v2_invalid),
		cmocka_unit_test(test_allowed),
		cmocka_unit_test(test_start),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
