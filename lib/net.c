/*
 * net.c — listening sockets and address text.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/lib.h"

int
net_parse_address(const char *s, struct sockaddr_storage *ss, socklen_t *len_r,
		  const char **error_r)
{
	char host[256];
	const char *colon, *port_s;
	char *end;
	long port;

	memset(ss, 0, sizeof(*ss));
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (close == NULL || close[1] != ':') {
			*error_r = "expected [address]:port";
			return -1;
		}
		if ((size_t)(close - s - 1) >= sizeof(host)) {
			*error_r = "address too long";
			return -1;
		}
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = '\0';
		port_s = close + 2;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL) {
			*error_r = "expected host:port";
			return -1;
		}
		if ((size_t)(colon - s) >= sizeof(host)) {
			*error_r = "address too long";
			return -1;
		}
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		port_s = colon + 1;
	}
	errno = 0;
	port = strtol(port_s, &end, 10);
	if (port_s[0] == '\0' || *end != '\0' || errno != 0 || port < 1 || port > 65535) {
		*error_r = "port must be a number from 1 to 65535";
		return -1;
	}
	if (strcmp(host, "*") == 0 || host[0] == '\0') {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr = in6addr_any;
		sin6->sin6_port = htons((uint16_t)port);
		*len_r = sizeof(*sin6);
		return 0;
	}
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		*len_r = sizeof(*sin);
		return 0;
	}
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		*len_r = sizeof(*sin6);
		return 0;
	}
	*error_r = "not a numeric IPv4 or IPv6 address";
	return -1;
}

int
net_listen(const struct sockaddr_storage *ss, socklen_t len, int backlog, bool reuseport)
{
	int fd, on = 1;

	fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0)
		goto fail;
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) < 0)
		goto fail;
	if (ss->ss_family == AF_INET6) {
		int off = 0;
		/* "*:port" means both families */
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	}
	if (bind(fd, (const struct sockaddr *)ss, len) < 0)
		goto fail;
	if (listen(fd, backlog) < 0)
		goto fail;
	return fd;
fail:;
	int saved = errno;
	close(fd);
	errno = saved;
	return -1;
}

void
net_addr_str(const struct sockaddr *sa, char *out, size_t outsz)
{
	if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out, (socklen_t)outsz);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
			inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], out, (socklen_t)outsz);
		else
			inet_ntop(AF_INET6, &sin6->sin6_addr, out, (socklen_t)outsz);
	} else {
		str_copy(out, "unknown", outsz);
	}
}

int
net_cidr_parse(const char *s, struct net_cidr *c, const char **error_r)
{
	char host[INET6_ADDRSTRLEN];
	const char *slash = strchr(s, '/');
	size_t n = slash != NULL ? (size_t)(slash - s) : strlen(s);
	int bits;

	memset(c, 0, sizeof(*c));
	if (n == 0 || n >= sizeof(host)) {
		*error_r = "expected address or address/prefix";
		return -1;
	}
	memcpy(host, s, n);
	host[n] = '\0';
	if (inet_pton(AF_INET, host, c->addr) == 1) {
		c->family = AF_INET;
		bits = 32;
	} else if (inet_pton(AF_INET6, host, c->addr) == 1) {
		c->family = AF_INET6;
		bits = 128;
	} else {
		*error_r = "not a numeric IPv4 or IPv6 address";
		return -1;
	}
	c->prefix = bits;
	if (slash != NULL) {
		char *end;
		long p = strtol(slash + 1, &end, 10);
		if (slash[1] == '\0' || *end != '\0' || p < 0 || p > bits) {
			*error_r = "prefix length out of range";
			return -1;
		}
		c->prefix = (int)p;
	}
	return 0;
}

bool
net_cidr_match(const struct net_cidr *c, const char *addr)
{
	unsigned char a[16];
	const unsigned char *p = a;
	int family;

	if (inet_pton(AF_INET, addr, a) == 1) {
		family = AF_INET;
	} else if (inet_pton(AF_INET6, addr, a) == 1) {
		family = AF_INET6;
		static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
		if (c->family == AF_INET && memcmp(a, mapped, 12) == 0) {
			family = AF_INET;
			p = a + 12;
		}
	} else {
		return false;
	}
	if (family != c->family)
		return false;
	int full = c->prefix / 8, rest = c->prefix % 8;
	if (memcmp(p, c->addr, (size_t)full) != 0)
		return false;
	if (rest == 0)
		return true;
	unsigned char mask = (unsigned char)(0xff << (8 - rest));
	return (p[full] & mask) == (c->addr[full] & mask);
}

bool net_is_loopback(const char *addr)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (inet_pton(AF_INET, addr, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, addr, &a6) == 1) {
		if (IN6_IS_ADDR_LOOPBACK(&a6))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
	}
	return false;
}
