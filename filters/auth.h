/*
 * auth.h — inside the "auth" stage (auth_stage.c): its blocking DNS client
 * with a shared TTL cache (auth_dns.c). Private to filters/.
 *
 * The sender-authentication libraries (libspf2, OpenDKIM, OpenDMARC) ask
 * DNS synchronously; the stage runs them on the worker pool's scan lane,
 * and every query they make goes through auth_dns_query(): libresolv's
 * res_nquery() on a resolver state of the job's own (the configured
 * nameservers, or /etc/resolv.conf's), with a per-query time limit and a
 * deadline for the whole job, and a cache of answers shared by every
 * thread (the raw DNS message, kept for the smallest TTL of its answer,
 * clamped to min_ttl..max_ttl; NXDOMAIN and no-data for negative_ttl).
 */
#ifndef MXGUARD_FILTERS_AUTH_H
#define MXGUARD_FILTERS_AUTH_H

#include <netinet/in.h>
#include <resolv.h>
#include <stdbool.h>
#include <stddef.h>

#define AUTH_DNS_BUF 8192 /* the largest answer kept (TCP answers may be larger: cut) */

struct auth_dns_cache;

/* What the stage configures: read-only after auth_dns_new(). */
struct auth_dns {
	struct sockaddr_in ns[MAXNS];
	int n_ns;                /* 0: /etc/resolv.conf's */
	long timeout_ms;         /* one query (rounded up to seconds: libresolv's unit) */
	long deadline_ms;        /* all queries of one job */
	long min_ttl, max_ttl, negative_ttl;
	struct auth_dns_cache *cache; /* NULL: no cache */
};

/* Parse "ADDRESS" or "ADDRESS:PORT" (IPv4; libresolv takes IPv4 servers
 * by address). 0, or -1. */
int auth_dns_parse_ns(const char *text, struct sockaddr_in *sin);
struct auth_dns *auth_dns_new(long cache_size);
void auth_dns_free(struct auth_dns **dns);

/* One job's resolver: on the job's thread only. */
struct auth_dns_ctx {
	const struct auth_dns *dns;
	struct __res_state res;
	bool res_ok;
	long long started_ms;    /* monotonic */
	unsigned queries, cached, failed;
};
void auth_dns_ctx_init(struct auth_dns_ctx *ctx, const struct auth_dns *dns);
void auth_dns_ctx_done(struct auth_dns_ctx *ctx);
/*
 * Ask name/type (ns_t_txt, ns_t_a, ...; class IN). Returns the length of
 * the answer message copied to buf (ns_initparse it), or -1 with *herr:
 * HOST_NOT_FOUND (NXDOMAIN), NO_DATA (the name exists, no such record),
 * TRY_AGAIN (no answer in time, SERVFAIL, the job's deadline passed) or
 * NO_RECOVERY (REFUSED, FORMERR, a name that cannot be asked).
 */
int auth_dns_query(struct auth_dns_ctx *ctx, const char *name, int type, unsigned char *buf,
		   size_t buflen, int *herr);
/* The thread's current job context, for the libraries' resolver hooks
 * that carry no pointer of ours (OpenDKIM's is per library handle). */
extern __thread struct auth_dns_ctx *auth_dns_current;

#endif

/* One DKIM signature for auth_format_results(). */
struct auth_ar_sig {
	const char *result;   /* pass fail policy neutral temperror permerror */
	const char *reason;   /* "" or NULL: none */
	const char *domain, *selector, *alg;
};
/*
 * The value of an Authentication-Results field (RFC 8601): "ID; spf=...
 * smtp.mailfrom=...; dkim=... header.d=... header.s=... header.a=...;
 * dmarc=... header.from=...", or "ID; none" when nothing was checked.
 * NULL results are left out; dkim=none when dkim_checked and no
 * signature. One line (the caller folds it); malloc'd.
 */
char *auth_format_results(const char *authserv_id, const char *spf_result,
			  const char *spf_identity, const struct auth_ar_sig *sigs, size_t n_sigs,
			  bool dkim_checked, const char *dmarc_result, const char *dmarc_domain,
			  const char *dmarc_reason);
/* text with every "%d" replaced by domain, into out (always terminated). */
void auth_format_text(const char *text, const char *domain, char *out, size_t outsz);
