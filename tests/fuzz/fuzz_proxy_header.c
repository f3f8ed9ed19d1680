/*
 * fuzz_proxy_header.c — libFuzzer target for proxy_header_parse() and
 * proxy_header_start() (lib/proxy_proto.c), the PROXY protocol header a
 * load balancer sends before the client's first octet.
 *
 * The first input octet picks the allowed versions (v1, v2, both, none);
 * the rest is what the socket gave. Beyond "no crash, no read past the
 * input": a DONE header is at most len octets and at most its version's
 * maximum (107 for v1, PROXY_V2_MAX for v2), only of an allowed version; a
 * header naming a client has addresses that are valid numeric text of its
 * family (inet_pton takes them back, NUL-terminated within the buffer) and
 * ports up to 65535; an INVALID always says why; the verdict on the header's
 * own octets does not depend on what follows it; and every proper prefix of
 * a DONE header is NEED_MORE (a verdict never comes before the last octet).
 */
#include "config.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/lib.h"
#include "tests/fuzz/fuzz.h"

static void
check_addr(const char *a, int family)
{
	unsigned char bin[16];

	CHECK(memchr(a, '\0', 46) != NULL);
	CHECK(a[0] != '\0');
	CHECK(inet_pton(family, a, bin) == 1);
}

static enum proxy_result
parse(const uint8_t *buf, size_t len, unsigned allowed, struct proxy_header *h)
{
	/* an exact-size copy, so ASan sees a read past len */
	uint8_t *copy = malloc(len > 0 ? len : 1);
	const char *err;
	enum proxy_result r;

	memcpy(copy, buf, len);
	r = proxy_header_parse(copy, len, allowed, h, &err);
	CHECK(r == PROXY_NEED_MORE || r == PROXY_DONE || r == PROXY_INVALID);
	CHECK((r == PROXY_INVALID) == (err != NULL));
	if (err != NULL)
		CHECK(err[0] != '\0');
	(void)proxy_header_start(copy, len);
	free(copy);
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_header h, h2;
	unsigned allowed;
	enum proxy_result r;

	if (size == 0)
		return 0;
	allowed = data[0] & (PROXY_ALLOW_V1 | PROXY_ALLOW_V2);
	data++;
	size--;
	r = parse(data, size, allowed, &h);
	if (r == PROXY_NEED_MORE) {
		/* nothing wrong so far means nothing past a version's maximum */
		CHECK(size < PROXY_V2_MAX);
		CHECK(allowed != 0 || size == 0);
		return 0;
	}
	if (r != PROXY_DONE)
		return 0;
	CHECK(h.version == 1 || h.version == 2);
	CHECK(allowed & (h.version == 1 ? PROXY_ALLOW_V1 : PROXY_ALLOW_V2));
	CHECK(h.length > 0 && h.length <= size);
	CHECK(h.length <= (h.version == 1 ? (size_t)PROXY_V1_MAX : (size_t)PROXY_V2_MAX));
	if (h.version == 1)
		CHECK(h.length >= 15 && data[h.length - 2] == '\r' && data[h.length - 1] == '\n');
	else
		CHECK(h.length >= 16 && h.length == 16 + (((size_t)data[14] << 8) | data[15]));
	if (!h.local) {
		CHECK(h.family == AF_INET || h.family == AF_INET6);
		check_addr(h.src_addr, h.family);
		check_addr(h.dst_addr, h.family);
		CHECK(h.src_port <= 65535 && h.dst_port <= 65535);
	} else {
		CHECK(h.src_addr[0] == '\0' && h.dst_addr[0] == '\0');
	}
	/* the header alone gives the same header: what follows is not read */
	CHECK(parse(data, h.length, allowed, &h2) == PROXY_DONE);
	CHECK(memcmp(&h, &h2, sizeof(h)) == 0);
	/* and no verdict comes before its last octet */
	for (size_t n = 1; n < h.length; n++)
		CHECK(parse(data, n, allowed, &h2) == PROXY_NEED_MORE);
	return 0;
}
