/*
 * proxy_proto.c — the PROXY protocol header a load balancer (HAProxy, a
 * cloud network load balancer) sends before the client's first byte, so
 * the server learns the client's real address (see lib.h, "PROXY").
 *
 * Version 1 is one text line of at most 107 octets:
 *   "PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n"
 *   "PROXY TCP6 2001:db8::7 2001:db8::1 51234 25\r\n"
 *   "PROXY UNKNOWN ...\r\n"            (the balancer's own connection)
 * Version 2 is binary: a 12-octet signature, a version/command octet (0x21
 * PROXY, 0x20 LOCAL — a health check), a family/transport octet (0x11
 * TCP over IPv4, 0x21 over IPv6, 0x00 unspecified), a 16-bit big-endian
 * length of what follows: the addresses and ports, then TLVs (skipped).
 *
 * The parser is a pure function over the octets read so far, strict about
 * everything (single spaces, numeric addresses of the family named, ports
 * in range, CRLF only): a header that is not exactly right is refused, and
 * the connection with it — it is never read as the protocol that follows.
 */
#include "config.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/lib.h"

static const unsigned char proxy_v2_sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a
};
static const char proxy_v1_sig[] = "PROXY ";

/* A decimal port: 1-5 digits, no leading zero (but "0"), at most 65535. */
static bool
proxy_port(const char *s, size_t n, unsigned *port_r)
{
	unsigned v = 0;

	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v > 65535)
		return false;
	*port_r = v;
	return true;
}

static bool
proxy_addr(const char *s, size_t n, int family, char *out, size_t outsz)
{
	char tmp[INET6_ADDRSTRLEN];
	unsigned char bin[16];

	if (n == 0 || n >= sizeof(tmp))
		return false;
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	if (inet_pton(family, tmp, bin) != 1)
		return false;
	/* the canonical text form, as the rest of mxguard writes addresses */
	return inet_ntop(family, bin, out, (socklen_t)outsz) != NULL;
}

static enum proxy_result
proxy_v1(const unsigned char *buf, size_t len, struct proxy_header *h, const char **error_r)
{
	const char *s = (const char *)buf;
	const char *crlf = NULL;
	size_t n = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\n') {
			if (i == 0 || s[i - 1] != '\r') {
				*error_r = "v1 line ended by a bare LF";
				return PROXY_INVALID;
			}
			crlf = s + i - 1;
			break;
		}
		if (s[i] == '\0' || (s[i] == '\r' && i + 1 < n && s[i + 1] != '\n')) {
			*error_r = "v1 line with a NUL or a bare CR";
			return PROXY_INVALID;
		}
	}
	if (crlf == NULL) {
		if (len >= PROXY_V1_MAX) {
			*error_r = "v1 line longer than 107 octets";
			return PROXY_INVALID;
		}
		return PROXY_NEED_MORE;
	}
	h->version = 1;
	h->length = (size_t)(crlf - s) + 2;
	/* the fields between "PROXY " and CRLF, split at single spaces:
	 * protocol, source, destination, source port, destination port */
	const char *f[5];
	size_t fl[5], nf = 0;
	const char *p = s + strlen(proxy_v1_sig);
	if (crlf - p >= 7 && memcmp(p, "UNKNOWN", 7) == 0 && (p + 7 == crlf || p[7] == ' ')) {
		/* "the balancer's own connection": the rest of the line is ignored */
		h->local = true;
		return PROXY_DONE;
	}
	while (p <= crlf) {
		const char *sp = p;
		while (sp < crlf && *sp != ' ')
			sp++;
		if (nf == 5) {
			*error_r = "v1 line with too many fields";
			return PROXY_INVALID;
		}
		f[nf] = p;
		fl[nf++] = (size_t)(sp - p);
		if (sp == crlf)
			break;
		p = sp + 1;
	}
	if (nf != 5) {
		*error_r = "v1 line needs 5 fields after PROXY";
		return PROXY_INVALID;
	}
	for (size_t i = 0; i < nf; i++) {
		if (fl[i] == 0) {
			*error_r = "v1 line with an empty field (two spaces?)";
			return PROXY_INVALID;
		}
	}
	if (fl[0] == 4 && memcmp(f[0], "TCP4", 4) == 0) {
		h->family = AF_INET;
	} else if (fl[0] == 4 && memcmp(f[0], "TCP6", 4) == 0) {
		h->family = AF_INET6;
	} else {
		*error_r = "v1 protocol is not TCP4, TCP6 or UNKNOWN";
		return PROXY_INVALID;
	}
	if (!proxy_addr(f[1], fl[1], h->family, h->src_addr, sizeof(h->src_addr)) ||
	    !proxy_addr(f[2], fl[2], h->family, h->dst_addr, sizeof(h->dst_addr))) {
		*error_r = "v1 address is not a numeric address of its family";
		return PROXY_INVALID;
	}
	if (!proxy_port(f[3], fl[3], &h->src_port) || !proxy_port(f[4], fl[4], &h->dst_port)) {
		*error_r = "v1 port is not a number from 0 to 65535";
		return PROXY_INVALID;
	}
	return PROXY_DONE;
}

static enum proxy_result
proxy_v2(const unsigned char *buf, size_t len, struct proxy_header *h, const char **error_r)
{
	if (len < 16)
		return PROXY_NEED_MORE;
	unsigned ver = buf[12] >> 4, cmd = buf[12] & 0x0f, fam = buf[13];
	size_t body = ((size_t)buf[14] << 8) | buf[15];

	if (ver != 2) {
		*error_r = "v2 header of another version";
		return PROXY_INVALID;
	}
	if (cmd > 1) {
		*error_r = "v2 command is neither LOCAL nor PROXY";
		return PROXY_INVALID;
	}
	if (16 + body > PROXY_V2_MAX) {
		*error_r = "v2 header longer than the limit";
		return PROXY_INVALID;
	}
	if (len < 16 + body)
		return PROXY_NEED_MORE;
	h->version = 2;
	h->length = 16 + body;
	if (cmd == 0) { /* LOCAL: a health check of the balancer's own */
		h->local = true;
		return PROXY_DONE;
	}
	const unsigned char *a = buf + 16;
	switch (fam) {
	case 0x00: /* UNSPEC: the balancer does not know; keep our own view */
		h->local = true;
		return PROXY_DONE;
	case 0x11: /* TCP over IPv4: 4 + 4 + 2 + 2 */
		if (body < 12) {
			*error_r = "v2 TCP4 address block too short";
			return PROXY_INVALID;
		}
		h->family = AF_INET;
		inet_ntop(AF_INET, a, h->src_addr, sizeof(h->src_addr));
		inet_ntop(AF_INET, a + 4, h->dst_addr, sizeof(h->dst_addr));
		h->src_port = ((unsigned)a[8] << 8) | a[9];
		h->dst_port = ((unsigned)a[10] << 8) | a[11];
		return PROXY_DONE;
	case 0x21: /* TCP over IPv6: 16 + 16 + 2 + 2 */
		if (body < 36) {
			*error_r = "v2 TCP6 address block too short";
			return PROXY_INVALID;
		}
		h->family = AF_INET6;
		inet_ntop(AF_INET6, a, h->src_addr, sizeof(h->src_addr));
		inet_ntop(AF_INET6, a + 16, h->dst_addr, sizeof(h->dst_addr));
		h->src_port = ((unsigned)a[32] << 8) | a[33];
		h->dst_port = ((unsigned)a[34] << 8) | a[35];
		return PROXY_DONE;
	default:
		*error_r = "v2 transport is not TCP (UDP and unix sockets are not served)";
		return PROXY_INVALID;
	}
}

enum proxy_result
proxy_header_parse(const unsigned char *buf, size_t len, unsigned allowed,
		   struct proxy_header *h, const char **error_r)
{
	size_t n;

	memset(h, 0, sizeof(*h));
	*error_r = NULL;
	if (len == 0)
		return PROXY_NEED_MORE;
	/* which version: as far as the octets so far allow telling */
	n = len < sizeof(proxy_v2_sig) ? len : sizeof(proxy_v2_sig);
	if ((allowed & PROXY_ALLOW_V2) && memcmp(buf, proxy_v2_sig, n) == 0)
		return n < sizeof(proxy_v2_sig) ? PROXY_NEED_MORE : proxy_v2(buf, len, h, error_r);
	n = len < strlen(proxy_v1_sig) ? len : strlen(proxy_v1_sig);
	if ((allowed & PROXY_ALLOW_V1) && memcmp(buf, proxy_v1_sig, n) == 0)
		return n < strlen(proxy_v1_sig) ? PROXY_NEED_MORE : proxy_v1(buf, len, h, error_r);
	*error_r = (allowed & PROXY_ALLOW_V1) && (allowed & PROXY_ALLOW_V2) ?
		   "no PROXY header (v1 or v2)" : (allowed & PROXY_ALLOW_V2) ?
		   "no PROXY v2 header" : "no PROXY v1 header";
	return PROXY_INVALID;
}

bool
proxy_header_start(const unsigned char *buf, size_t len)
{
	size_t n = len < sizeof(proxy_v2_sig) ? len : sizeof(proxy_v2_sig);

	/* the v2 signature's first five octets hold a NUL, which no client of
	 * a line protocol sends; v1's "PROXY " is a whole word */
	if (n >= 5 && memcmp(buf, proxy_v2_sig, n) == 0)
		return true;
	return len >= strlen(proxy_v1_sig) && memcmp(buf, proxy_v1_sig, strlen(proxy_v1_sig)) == 0;
}
