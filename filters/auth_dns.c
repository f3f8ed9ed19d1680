/*
 * auth_dns.c — the auth stage's DNS: blocking queries on a worker thread,
 * bounded in time, with a TTL cache shared by every thread. See auth.h.
 */
#include "config.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <ctype.h>
#include <netdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "filters/auth.h"
#include "lib/lib.h"

__thread struct auth_dns_ctx *auth_dns_current;

struct auth_dns_entry {
	char *name;              /* lower case */
	int type;
	long long expires_ms;    /* monotonic */
	int herr;                /* NETDB_SUCCESS, HOST_NOT_FOUND, NO_DATA */
	unsigned char *msg;
	size_t len;
};

/* Direct-mapped: a name's slot is its hash; a newer answer replaces
 * whatever was there. Bounded by construction. */
struct auth_dns_cache {
	pthread_mutex_t lock;
	struct auth_dns_entry *slots;
	size_t n;
};

static long long
auth_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
auth_dns_parse_ns(const char *text, struct sockaddr_in *sin)
{
	char host[64];
	const char *colon = strrchr(text, ':');
	size_t hl = colon != NULL ? (size_t)(colon - text) : strlen(text);
	long port = 53;

	if (hl == 0 || hl >= sizeof(host))
		return -1;
	memcpy(host, text, hl);
	host[hl] = '\0';
	if (colon != NULL) {
		char *end;
		port = strtol(colon + 1, &end, 10);
		if (*end != '\0' || end == colon + 1 || port < 1 || port > 65535)
			return -1;
	}
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	return inet_pton(AF_INET, host, &sin->sin_addr) == 1 ? 0 : -1;
}

struct auth_dns *
auth_dns_new(long cache_size)
{
	struct auth_dns *dns = xcalloc(1, sizeof(*dns));

	if (cache_size > 0) {
		dns->cache = xcalloc(1, sizeof(*dns->cache));
		pthread_mutex_init(&dns->cache->lock, NULL);
		dns->cache->n = (size_t)cache_size;
		dns->cache->slots = xcalloc(dns->cache->n, sizeof(*dns->cache->slots));
	}
	return dns;
}

void
auth_dns_free(struct auth_dns **dnsp)
{
	struct auth_dns *dns = *dnsp;

	*dnsp = NULL;
	if (dns == NULL)
		return;
	if (dns->cache != NULL) {
		for (size_t i = 0; i < dns->cache->n; i++) {
			free(dns->cache->slots[i].name);
			free(dns->cache->slots[i].msg);
		}
		free(dns->cache->slots);
		pthread_mutex_destroy(&dns->cache->lock);
		free(dns->cache);
	}
	free(dns);
}

void
auth_dns_ctx_init(struct auth_dns_ctx *ctx, const struct auth_dns *dns)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->dns = dns;
	ctx->started_ms = auth_now_ms();
}

void
auth_dns_ctx_done(struct auth_dns_ctx *ctx)
{
	if (ctx->res_ok)
		res_nclose(&ctx->res);
	ctx->res_ok = false;
}

/* The resolver state, made at the first query that is not cached. */
static int
auth_dns_res(struct auth_dns_ctx *ctx)
{
	const struct auth_dns *dns = ctx->dns;

	if (ctx->res_ok)
		return 0;
	memset(&ctx->res, 0, sizeof(ctx->res));
	if (res_ninit(&ctx->res) < 0)
		return -1;
	ctx->res_ok = true;
	if (dns->n_ns > 0) {
		/* the configured servers replace resolv.conf's; its IPv6 ones
		 * sit in the extension, which would take precedence */
		for (int i = 0; i < MAXNS; i++) {
			free(ctx->res._u._ext.nsaddrs[i]);
			ctx->res._u._ext.nsaddrs[i] = NULL;
		}
		for (int i = 0; i < dns->n_ns; i++)
			ctx->res.nsaddr_list[i] = dns->ns[i];
		ctx->res.nscount = dns->n_ns;
	}
	ctx->res.retrans = (int)((dns->timeout_ms + 999) / 1000);
	ctx->res.retry = 1;
	ctx->res.options |= RES_USE_EDNS0;
	/* names are asked as given: no search list */
	ctx->res.options &= ~(unsigned long)(RES_DEFNAMES | RES_DNSRCH);
	return 0;
}

static size_t
auth_hash(const char *name, int type)
{
	uint64_t h = 14695981039346656037ULL ^ (uint64_t)type;

	for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++)
		h = (h ^ (uint64_t)tolower(*p)) * 1099511628211ULL;
	return (size_t)h;
}

/* The smallest TTL of the answer section, or -1. */
static long
auth_min_ttl(const unsigned char *msg, size_t len)
{
	ns_msg m;
	ns_rr rr;
	long ttl = -1;

	if (ns_initparse(msg, (int)len, &m) < 0)
		return -1;
	for (int i = 0; i < ns_msg_count(m, ns_s_an); i++) {
		if (ns_parserr(&m, ns_s_an, i, &rr) < 0)
			return -1;
		if (ttl < 0 || (long)ns_rr_ttl(rr) < ttl)
			ttl = (long)ns_rr_ttl(rr);
	}
	return ttl;
}

static bool
auth_cache_get(const struct auth_dns *dns, const char *name, int type, unsigned char *buf,
	       size_t buflen, int *len_r, int *herr)
{
	struct auth_dns_cache *c = dns->cache;
	bool hit = false;

	if (c == NULL)
		return false;
	pthread_mutex_lock(&c->lock);
	struct auth_dns_entry *e = &c->slots[auth_hash(name, type) % c->n];
	if (e->name != NULL && e->type == type && strcasecmp(e->name, name) == 0 &&
	    e->expires_ms > auth_now_ms()) {
		hit = true;
		*herr = e->herr;
		*len_r = -1;
		if (e->herr == NETDB_SUCCESS && e->len <= buflen) {
			memcpy(buf, e->msg, e->len);
			*len_r = (int)e->len;
		} else if (e->herr == NETDB_SUCCESS) {
			hit = false;
		}
	}
	pthread_mutex_unlock(&c->lock);
	return hit;
}

static void
auth_cache_put(const struct auth_dns *dns, const char *name, int type, int herr,
	       const unsigned char *msg, size_t len)
{
	struct auth_dns_cache *c = dns->cache;
	long ttl;

	if (c == NULL)
		return;
	if (herr == NETDB_SUCCESS) {
		ttl = auth_min_ttl(msg, len);
		if (ttl < 0)
			return;
	} else {
		ttl = dns->negative_ttl;
	}
	if (ttl < dns->min_ttl)
		ttl = dns->min_ttl;
	if (ttl > dns->max_ttl)
		ttl = dns->max_ttl;
	if (ttl <= 0)
		return;
	pthread_mutex_lock(&c->lock);
	struct auth_dns_entry *e = &c->slots[auth_hash(name, type) % c->n];
	free(e->name);
	free(e->msg);
	e->name = xstrdup(name);
	e->type = type;
	e->herr = herr;
	e->expires_ms = auth_now_ms() + ttl * 1000;
	e->msg = NULL;
	if (herr == NETDB_SUCCESS) {
		e->msg = xmalloc(len);
		memcpy(e->msg, msg, len);
	}
	e->len = herr == NETDB_SUCCESS ? len : 0;
	pthread_mutex_unlock(&c->lock);
}

int
auth_dns_query(struct auth_dns_ctx *ctx, const char *name, int type, unsigned char *buf,
	       size_t buflen, int *herr)
{
	int len;

	*herr = NO_RECOVERY;
	if (name == NULL || name[0] == '\0' || strlen(name) > 253)
		return -1;
	if (auth_cache_get(ctx->dns, name, type, buf, buflen, &len, herr)) {
		ctx->cached++;
		return len;
	}
	if (auth_now_ms() - ctx->started_ms >= ctx->dns->deadline_ms) {
		*herr = TRY_AGAIN;
		ctx->failed++;
		return -1;
	}
	if (auth_dns_res(ctx) < 0) {
		*herr = TRY_AGAIN;
		ctx->failed++;
		return -1;
	}
	ctx->queries++;
	len = res_nquery(&ctx->res, name, ns_c_in, type, buf, (int)buflen);
	if (len > (int)buflen)
		len = (int)buflen; /* TC-free but cut: libresolv says how much it had */
	if (len >= 0) {
		ns_msg m;
		if (ns_initparse(buf, len, &m) < 0) {
			*herr = NO_RECOVERY;
			ctx->failed++;
			return -1;
		}
		if (ns_msg_count(m, ns_s_an) == 0) {
			*herr = NO_DATA;
			auth_cache_put(ctx->dns, name, type, NO_DATA, NULL, 0);
			return -1;
		}
		*herr = NETDB_SUCCESS;
		auth_cache_put(ctx->dns, name, type, NETDB_SUCCESS, buf, (size_t)len);
		return len;
	}
	*herr = ctx->res.res_h_errno;
	if (*herr == HOST_NOT_FOUND || *herr == NO_DATA)
		auth_cache_put(ctx->dns, name, type, *herr, NULL, 0);
	else
		ctx->failed++;
	if (*herr != HOST_NOT_FOUND && *herr != NO_DATA && *herr != NO_RECOVERY)
		*herr = TRY_AGAIN;
	return -1;
}
