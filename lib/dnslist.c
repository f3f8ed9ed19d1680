/*
 * dnslist.c — the pure parts of DNS list lookups (see lib.h, "DNS lists").
 *
 * Everything a list is asked about comes from the client: its address, its
 * HELO name, its envelope sender, the message's From: and the URIs in its
 * body. So nothing is queried that dnsname_normalise() did not accept, and
 * every function here works on bounded buffers and never reads past a NUL.
 *
 * The registered domain of a URI's host is deliberately simple: the last
 * two labels, or three when the last two are one of the two-level public
 * suffixes below (the ones URI lists see most). The real Public Suffix List
 * would be better; SURBL publishes its own two- and three-level lists too.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"

/* ---------------------------------------------------------------- names */

int
dnsname_normalise(const char *in, size_t len, char *out)
{
	size_t o = 0, label = 0, labels = 0;

	if (len > 0 && in[len - 1] == '.')
		len--; /* one trailing dot: the root */
	if (len == 0 || len > DNSNAME_MAX)
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c == '.') {
			if (label == 0 || out[o - 1] == '-')
				return -1;
			label = 0;
			out[o++] = '.';
			continue;
		}
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
			return -1;
		if (c == '-' && label == 0)
			return -1;
		if (label == 0)
			labels++;
		if (++label > DNSLABEL_MAX)
			return -1;
		out[o++] = (char)c;
	}
	if (label == 0 || out[o - 1] == '-' || labels < 2)
		return -1;
	out[o] = '\0';
	return 0;
}

int
dnslist_reverse_addr(const char *addr, char *out)
{
	unsigned char b[16];
	size_t o = 0;

	if (inet_pton(AF_INET, addr, b) == 1) {
		snprintf(out, DNSNAME_BUF, "%u.%u.%u.%u", b[3], b[2], b[1], b[0]);
		return 4;
	}
	if (inet_pton(AF_INET6, addr, b) != 1)
		return -1;
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	if (memcmp(b, mapped, sizeof(mapped)) == 0) {
		snprintf(out, DNSNAME_BUF, "%u.%u.%u.%u", b[15], b[14], b[13], b[12]);
		return 4;
	}
	static const char hex[] = "0123456789abcdef";
	for (int i = 15; i >= 0; i--) {
		out[o++] = hex[b[i] & 0xf];
		out[o++] = '.';
		out[o++] = hex[b[i] >> 4];
		out[o++] = i > 0 ? '.' : '\0';
	}
	return 6;
}

int
dnslist_query_name(const char *subject, const char *zone, char *out)
{
	char buf[2 * DNSNAME_BUF];
	int n = snprintf(buf, sizeof(buf), "%s.%s", subject, zone);

	if (n < 0 || (size_t)n >= sizeof(buf))
		return -1;
	return dnsname_normalise(buf, (size_t)n, out);
}

int
dnslist_addr_domain(const char *addr, char *out)
{
	const char *at = strrchr(addr, '@');

	if (at == NULL)
		return -1;
	at++;
	return dnsname_normalise(at, strlen(at), out);
}

/* A dotted quad (or anything that inet_pton takes) is an address, not a
 * name a domain list knows. */
static bool
dnslist_is_ip(const char *host)
{
	unsigned char b[16];

	return inet_pton(AF_INET, host, b) == 1 || inet_pton(AF_INET6, host, b) == 1;
}

int
dnslist_uri_host(const char *uri, char *out)
{
	const char *p = uri, *end;
	char host[DNSNAME_BUF + 2];
	size_t n;

	if (strncasecmp(p, "mailto:", 7) == 0) {
		p += 7;
		end = p + strcspn(p, "?#,; >");
		const char *at = NULL;
		for (const char *q = p; q < end; q++) {
			if (*q == '@')
				at = q;
		}
		if (at == NULL)
			return -1;
		p = at + 1;
	} else {
		const char *colon = strstr(p, "://");
		if (colon != NULL && (size_t)(colon - p) <= 16)
			p = colon + 3;
		end = p + strcspn(p, "/?#\\ ");
		/* userinfo: the host is after the last '@' of the authority */
		for (const char *q = p; q < end; q++) {
			if (*q == '@')
				p = q + 1;
		}
		if (p < end && *p == '[')
			return -1; /* an IPv6 literal */
		const char *port = memchr(p, ':', (size_t)(end - p));
		if (port != NULL)
			end = port;
	}
	n = (size_t)(end - p);
	if (n == 0 || n > DNSNAME_BUF)
		return -1;
	memcpy(host, p, n);
	host[n] = '\0';
	if (dnslist_is_ip(host))
		return -1;
	return dnsname_normalise(host, n, out);
}

/* Two-level public suffixes under which names are registered one level
 * deeper (a short list: the commonest in mail; see the top of the file). */
static const char *const dnslist_two_level[] = {
	"co.uk", "org.uk", "me.uk", "ac.uk", "gov.uk", "ltd.uk", "plc.uk", "net.uk",
	"com.au", "net.au", "org.au", "edu.au", "gov.au", "id.au",
	"co.nz", "net.nz", "org.nz", "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp",
	"co.za", "org.za", "co.in", "net.in", "org.in", "co.kr", "or.kr",
	"com.br", "net.br", "org.br", "com.cn", "net.cn", "org.cn", "gov.cn",
	"com.mx", "com.ar", "com.tr", "com.tw", "com.hk", "com.sg", "com.my",
	"com.ru", "com.ua", "com.pl", "co.il", "co.id", "com.vn", "com.ph",
	"blogspot.com", "github.io", NULL,
};

int
dnslist_registered_domain(const char *host, char *out)
{
	size_t len = strlen(host);
	const char *dots[3] = { NULL, NULL, NULL }; /* last, second last, third last */
	size_t nd = 0;

	for (size_t i = len; i-- > 0 && nd < 3;) {
		if (host[i] == '.')
			dots[nd++] = host + i;
	}
	if (nd == 0 || len >= DNSNAME_BUF)
		return -1;
	const char *two = nd >= 2 ? dots[1] + 1 : host; /* last two labels */
	for (size_t i = 0; dnslist_two_level[i] != NULL; i++) {
		if (strcmp(two, dnslist_two_level[i]) == 0) {
			if (nd < 2)
				return -1; /* the suffix itself */
			str_copy(out, nd >= 3 ? dots[2] + 1 : host, DNSNAME_BUF);
			return 0;
		}
	}
	str_copy(out, two, DNSNAME_BUF);
	return 0;
}

/* -------------------------------------------------------------- answers */

static int
dnslist_parse_v4(const char *s, size_t n, uint32_t *out)
{
	char buf[INET_ADDRSTRLEN];
	struct in_addr a;

	if (n == 0 || n >= sizeof(buf))
		return -1;
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (inet_pton(AF_INET, buf, &a) != 1)
		return -1;
	*out = ntohl(a.s_addr);
	return 0;
}

int
dnslist_filter_parse(const char *text, double def_score, struct dnslist_filter *f,
		     char **error_r)
{
	const char *eq = strchr(text, '=');
	size_t n = eq != NULL ? (size_t)(eq - text) : strlen(text);
	const char *dash;

	memset(f, 0, sizeof(*f));
	f->score = def_score;
	if (eq != NULL) {
		char *end;
		errno = 0;
		f->score = strtod(eq + 1, &end);
		if (eq[1] == '\0' || *end != '\0' || errno != 0)
			goto bad;
	}
	if (n == 1 && text[0] == '*') {
		f->kind = DNSLIST_ANY;
		/* 127.255.255.x are error codes (Spamhaus: a refused
		 * resolver, a wrong zone), never listings */
		f->lo = 0x7f000000u;
		f->hi = 0x7ffffeffu;
		return 0;
	}
	if (n > 1 && text[0] == '&') {
		char buf[16], *end;
		if (n - 1 >= sizeof(buf))
			goto bad;
		memcpy(buf, text + 1, n - 1);
		buf[n - 1] = '\0';
		errno = 0;
		unsigned long m = strtoul(buf, &end, 0);
		if (*end != '\0' || errno != 0 || m == 0 || m > 255 || buf[0] == '-')
			goto bad;
		f->kind = DNSLIST_MASK;
		f->mask = (uint32_t)m;
		return 0;
	}
	dash = memchr(text, '-', n);
	if (dash != NULL) {
		if (dnslist_parse_v4(text, (size_t)(dash - text), &f->lo) < 0 ||
		    dnslist_parse_v4(dash + 1, n - (size_t)(dash - text) - 1, &f->hi) < 0 ||
		    f->lo > f->hi)
			goto bad;
		f->kind = DNSLIST_RANGE;
		return 0;
	}
	if (dnslist_parse_v4(text, n, &f->lo) < 0)
		goto bad;
	f->hi = f->lo;
	f->kind = DNSLIST_EXACT;
	return 0;
bad:
	*error_r = xasprintf("answer filter \"%s\": want ADDR, ADDR-ADDR, &MASK or *, "
			     "optionally =SCORE", text);
	return -1;
}

bool
dnslist_filter_match(const struct dnslist_filter *f, uint32_t addr)
{
	switch (f->kind) {
	case DNSLIST_EXACT:
	case DNSLIST_RANGE:
	case DNSLIST_ANY:
		return addr >= f->lo && addr <= f->hi;
	case DNSLIST_MASK:
		return (addr & 0xffffff00u) == 0x7f000000u && (addr & f->mask) != 0;
	}
	return false;
}

double
dnslist_score(const struct dnslist_filter *f, size_t n_f, const uint32_t *addrs,
	      size_t n_addrs, size_t *matched_r)
{
	double sum = 0;
	size_t matched = 0;

	for (size_t i = 0; i < n_f; i++) {
		for (size_t k = 0; k < n_addrs; k++) {
			if (dnslist_filter_match(&f[i], addrs[k])) {
				sum += f[i].score;
				matched++;
				break;
			}
		}
	}
	if (matched_r != NULL)
		*matched_r = matched;
	return sum;
}

void
dnslist_format(const char *tmpl, const char *list, const char *zone, const char *what,
	       char *out, size_t outsz)
{
	size_t o = 0;

	for (const char *p = tmpl; *p != '\0' && o + 1 < outsz; p++) {
		const char *ins = NULL;

		if (*p == '%' && p[1] != '\0') {
			switch (p[1]) {
			case 'l': ins = list; break;
			case 'z': ins = zone; break;
			case 'a': ins = what; break;
			case '%': ins = "%"; break;
			default: break;
			}
		}
		if (ins != NULL) {
			p++;
			for (; *ins != '\0' && o + 1 < outsz; ins++)
				out[o++] = *ins;
			continue;
		}
		out[o++] = *p;
	}
	out[o] = '\0';
	for (size_t i = 0; i < o; i++) {
		if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
			out[i] = ' ';
	}
}

/* ---------------------------------------------------------------- cache */

struct dnscache_entry {
	struct dnscache_entry *next;  /* hash chain */
	long long expires;
	int qtype;
	struct dnscache_value v;
	char name[DNSNAME_BUF];
};

struct dnscache {
	struct dnscache_entry **buckets;
	size_t n_buckets, count, max;
};

static size_t
dnscache_hash(const struct dnscache *c, int qtype, const char *name)
{
	uint64_t h = 1469598103934665603ull ^ (uint64_t)qtype;

	for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++) {
		h ^= *p;
		h *= 1099511628211ull;
	}
	return (size_t)(h % c->n_buckets);
}

struct dnscache *
dnscache_new(size_t max)
{
	struct dnscache *c = xcalloc(1, sizeof(*c));

	c->max = max > 0 ? max : 1;
	c->n_buckets = c->max < 16 ? 16 : c->max;
	c->buckets = xcalloc(c->n_buckets, sizeof(*c->buckets));
	return c;
}

void
dnscache_free(struct dnscache **cp)
{
	struct dnscache *c = *cp;

	*cp = NULL;
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->n_buckets; i++) {
		while (c->buckets[i] != NULL) {
			struct dnscache_entry *e = c->buckets[i];
			c->buckets[i] = e->next;
			free(e);
		}
	}
	free(c->buckets);
	free(c);
}

static struct dnscache_entry **
dnscache_find(struct dnscache *c, int qtype, const char *name)
{
	struct dnscache_entry **ep = &c->buckets[dnscache_hash(c, qtype, name)];

	for (; *ep != NULL; ep = &(*ep)->next) {
		if ((*ep)->qtype == qtype && strcmp((*ep)->name, name) == 0)
			return ep;
	}
	return ep;
}

static void
dnscache_unlink(struct dnscache *c, struct dnscache_entry **ep)
{
	struct dnscache_entry *e = *ep;

	*ep = e->next;
	free(e);
	c->count--;
}

/* Make room for one: drop what expired, else the entry that expires first.
 * A full walk, but only when the cache is full. */
static void
dnscache_evict(struct dnscache *c, long long now)
{
	struct dnscache_entry **oldest = NULL;

	for (size_t i = 0; i < c->n_buckets; i++) {
		struct dnscache_entry **ep = &c->buckets[i];
		while (*ep != NULL) {
			if ((*ep)->expires <= now) {
				dnscache_unlink(c, ep);
				continue;
			}
			if (oldest == NULL || (*ep)->expires < (*oldest)->expires)
				oldest = ep;
			ep = &(*ep)->next;
		}
	}
	if (c->count >= c->max && oldest != NULL)
		dnscache_unlink(c, oldest);
}

bool
dnscache_get(struct dnscache *c, int qtype, const char *name, long long now,
	     struct dnscache_value *v)
{
	struct dnscache_entry **ep = dnscache_find(c, qtype, name);

	if (*ep == NULL)
		return false;
	if ((*ep)->expires <= now) {
		dnscache_unlink(c, ep);
		return false;
	}
	*v = (*ep)->v;
	return true;
}

void
dnscache_put(struct dnscache *c, int qtype, const char *name,
	     const struct dnscache_value *v, long ttl, long long now)
{
	struct dnscache_entry **ep;
	struct dnscache_entry *e;

	if (ttl <= 0 || strlen(name) >= DNSNAME_BUF)
		return;
	ep = dnscache_find(c, qtype, name);
	if (*ep != NULL) {
		(*ep)->v = *v;
		(*ep)->expires = now + ttl;
		return;
	}
	if (c->count >= c->max) {
		dnscache_evict(c, now);
		ep = dnscache_find(c, qtype, name); /* the chain may have changed */
	}
	e = xcalloc(1, sizeof(*e));
	e->qtype = qtype;
	e->v = *v;
	e->expires = now + ttl;
	str_copy(e->name, name, sizeof(e->name));
	*ep = e;
	c->count++;
}

size_t
dnscache_count(const struct dnscache *c)
{
	return c->count;
}
