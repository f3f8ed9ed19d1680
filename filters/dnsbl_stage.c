/*
 * dnsbl_stage.c — the "dnsbl" stage: DNS block- and allowlists asked about
 * the client, its names and the message's URIs, with libevent's evdns.
 *
 *   dnsbl {
 *       resolvers = {"127.0.0.1:53"}   # default: /etc/resolv.conf
 *       dns_timeout = 2000             # ms: the deadline of one phase's lookups
 *       threshold = 10                 # the sum of the stage's scores that refuses
 *       list "zen" {
 *           zone = "zen.spamhaus.org"
 *           type = "ip"                # ip | helo | sender | from | uri
 *           answers = {"127.0.0.2-127.0.0.3=4", "127.0.0.4-127.0.0.7=6"}
 *           action = "score"           # score | reject | tempfail
 *       }
 *   }
 *
 * What is asked when: ip lists (the client address, IPv4 reversed octets,
 * IPv6 reversed nibbles) and the client's reverse DNS at connect; helo lists
 * at HELO/EHLO; sender lists at MAIL (not for <>); from and uri lists at the
 * end of DATA, where the From: domain and the registered domains of the
 * body's URIs (lib/msgtext.c's view, built on the worker pool's scan lane
 * like the rules stage's) are collected first. Every name is checked by
 * lib/dnslist.c before it is queried. All lookups of a phase go out at once
 * and the phase waits for all of them, at most dns_timeout: a list that has
 * not answered by then (or answered SERVFAIL, REFUSED, ...) is skipped and
 * logged — a DNS list never delays mail by more than the deadline, and
 * never refuses it by failing, unless on_error = "tempfail" says that a
 * skipped list must defer the client (4xx). A late answer still fills the
 * cache.
 *
 * Results: each list that matched adds its score (filter_tx_add_score, the
 * list's name as the rule: the log line's hits=, X-Spam-Status tests=)
 * once per phase, the highest of its subjects; at DATA an X-Spam-DNSBL
 * header names every list that hit with the answer and what was looked up.
 * A list with action reject or tempfail refuses outright (554/550 5.7.1 or
 * 451 4.7.1 with reject_text) and the sum of the stage's scores reaching
 * threshold refuses too — both at the phase of the lookup, or at RCPT
 * when reject_at = "rcpt" (as postscreen at connect, or Postfix's
 * reject_rbl_client at RCPT, which logs the sender and recipient).
 *
 * Reverse DNS: the PTR of the client's address, then the A (AAAA for IPv6)
 * records of that name, which must contain the address (forward-confirmed,
 * FCrDNS). The result goes back to the session through
 * filter_tx_set_rdns() (the Received: header, the transaction log line,
 * filter_msg.client_rdns for later phases and other stages); "none" and
 * "unconfirmed" may be scored (rdns_none_score, rdns_unconfirmed_score, as
 * RDNS_NONE and RDNS_UNCONFIRMED).
 *
 * Threads and lifetimes. check() runs on every loop thread: each loop has
 * its own evdns base and cache (loop_init), so nothing of a loop is shared.
 * What is shared is read-only after create, except each list's health
 * (atomics). A query carries a handle id, not a pointer, to evdns; its
 * struct sits in the loop's in-flight list and names the call that waits
 * for it (owner) — set to NULL when that call ended first (deadline,
 * cancel), so late answers only fill the cache. loop_teardown frees every
 * query still in flight, and a callback that comes after finds no handle.
 *
 * List health (RFC 5782 section 5): an ip list must not list 127.0.0.1, a
 * domain list must not list "invalid". Each list's test point is asked with
 * the first lookups (and again every recheck_interval seconds) as part of
 * the same phase, so its answer is known when the phase's results are
 * counted; a list that says "listed" for it is disabled with an error in
 * the log — it is dead, or answers everything (a domain that expired and
 * was wildcarded) — and enabled again when a later check says NXDOMAIN.
 */
#include "config.h"

#include <arpa/inet.h>
#include <confuse.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "filters/filters.h"
#include "lib/metrics.h"
#include "lib/lib.h"

enum dnsbl_type { DNSBL_IP, DNSBL_HELO, DNSBL_SENDER, DNSBL_FROM, DNSBL_URI, DNSBL_N_TYPES };
static const char *const dnsbl_type_names[] = { "ip", "helo", "sender", "from", "uri", NULL };
enum dnsbl_action { DNSBL_SCORE, DNSBL_REJECT, DNSBL_TEMPFAIL };
static const char *const dnsbl_action_names[] = { "score", "reject", "tempfail", NULL };
enum dnsbl_when { DNSBL_AT_CONNECT, DNSBL_AT_RCPT };
static const char *const dnsbl_when_names[] = { "connect", "rcpt", NULL };

#define DNSBL_SUBJECTS_MAX 64    /* subjects of one phase (uri_max is bounded below it) */
#define DNSBL_PROBE_RETRY 30     /* seconds until a probe that failed is tried again */

struct dnsbl_list {
	char *name, *zone;
	enum dnsbl_type type;
	struct dnslist_filter *filters;
	size_t n_filters;
	enum dnsbl_action action;
	char *reject_text;
	/* health, shared by every loop */
	atomic_int disabled;
	atomic_llong next_check;  /* monotonic seconds; 0: at the first lookup */
};

struct dnsbl_stage {
	struct stage hdr; /* must be first */
	struct dnsbl_list *lists;
	size_t n_lists;
	unsigned types;          /* bit per enum dnsbl_type with a list */
	char **resolvers;
	size_t n_resolvers;
	long dns_timeout;        /* ms */
	double threshold;        /* 0: never */
	enum dnsbl_when reject_at;
	char *reject_text;
	long cache_size, min_ttl, max_ttl, negative_ttl, recheck_interval, uri_max;
	bool rdns, header;
	double rdns_none_score, rdns_unconfirmed_score;
};

struct dnsbl_query;

/* One loop's resolver and cache. */
struct dnsbl_loop {
	struct event_base *base;
	struct evdns_base *dns;
	struct dnscache *cache;
	struct dnsbl_query *queries; /* in flight */
};

enum dnsbl_qkind { Q_LIST, Q_PROBE, Q_PTR, Q_FWD };

struct dnsbl_call;

struct dnsbl_query {
	uint64_t id;                 /* handle: what evdns carries */
	struct dnsbl_query *prev, *next;
	struct dnsbl_loop *loop;
	const struct dnsbl_stage *st;
	struct dnsbl_call *owner;    /* NULL once the call ended */
	enum dnsbl_qkind kind;
	int qtype;                   /* DNS_IPv4_A, DNS_IPv6_AAAA, DNS_PTR */
	size_t idx;                  /* Q_LIST: result; Q_PROBE: list */
	char name[DNSNAME_BUF];
};

enum dnsbl_rstate { R_PENDING, R_LISTED, R_CLEAR, R_ERROR };

struct dnsbl_result {
	size_t list;
	enum dnsbl_rstate state;
	char subject[DNSNAME_BUF];  /* what was looked up: address or domain */
	uint32_t addrs[DNSCACHE_ADDRS_MAX];
	size_t n_addrs;
};

struct dnsbl_call {
	uint64_t call_id;
	struct dnsbl_stage *st;
	struct dnsbl_loop *loop;
	enum phase phase;
	struct dnsbl_result *res;
	size_t n_res;
	size_t pending;
	bool issuing;            /* lookups are being started: do not finish yet */
	struct event *deadline;
	/* reverse DNS (connect) */
	bool rdns_wanted;
	int family;
	unsigned char addr[16];
	enum rdns_status rdns;
	char rdns_name[DNSNAME_BUF];
};

/* the DATA phase's subjects, collected on the scan lane */
struct dnsbl_job {
	struct dnsbl_stage *st;
	struct msgbody *body;
	char (*from)[DNSNAME_BUF];
	size_t n_from;
	char (*uris)[DNSNAME_BUF];
	size_t n_uris;
};

static cfg_opt_t dnsbl_list_opts[] = {
	CFG_STR("zone", "", CFGF_NONE),
	CFG_STR("type", "ip", CFGF_NONE),
	CFG_STR_LIST("answers", "{}", CFGF_NONE),
	CFG_FLOAT("score", 1.0, CFGF_NONE),
	CFG_STR("action", "score", CFGF_NONE),
	CFG_STR("reject_text", "", CFGF_NONE),
	CFG_END()
};

static cfg_opt_t dnsbl_opts[] = {
	CFG_STR_LIST("resolvers", "{}", CFGF_NONE),
	CFG_INT("dns_timeout", 2000, CFGF_NONE),
	CFG_FLOAT("threshold", 0, CFGF_NONE),
	CFG_STR("reject_at", "connect", CFGF_NONE),
	CFG_STR("reject_text", "Service unavailable; %a blocked using %l", CFGF_NONE),
	CFG_INT("cache_size", 4096, CFGF_NONE),
	CFG_INT("min_ttl", 10, CFGF_NONE),
	CFG_INT("max_ttl", 86400, CFGF_NONE),
	CFG_INT("negative_ttl", 300, CFGF_NONE),
	CFG_INT("recheck_interval", 600, CFGF_NONE),
	CFG_INT("uri_max", 20, CFGF_NONE),
	CFG_BOOL("rdns", cfg_true, CFGF_NONE),
	CFG_FLOAT("rdns_none_score", 0, CFGF_NONE),
	CFG_FLOAT("rdns_unconfirmed_score", 0, CFGF_NONE),
	CFG_BOOL("header", cfg_true, CFGF_NONE),
	CFG_SEC("list", dnsbl_list_opts, CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES),
	CFG_END()
};

static long long
dnsbl_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec;
}

static int
dnsbl_choice(const char *const *names, const char *word)
{
	for (int i = 0; names[i] != NULL; i++) {
		if (strcmp(names[i], word) == 0)
			return i;
	}
	return -1;
}

/* ------------------------------------------------------------- create */

static void
dnsbl_free(struct dnsbl_stage *st)
{
	for (size_t i = 0; i < st->n_lists; i++) {
		free(st->lists[i].name);
		free(st->lists[i].zone);
		free(st->lists[i].filters);
		free(st->lists[i].reject_text);
	}
	free(st->lists);
	for (size_t i = 0; i < st->n_resolvers; i++)
		free(st->resolvers[i]);
	free(st->resolvers);
	free(st->reject_text);
	free(st);
}

static int
dnsbl_create_list(struct dnsbl_stage *st, cfg_t *sec, struct dnsbl_list *l, char **error_r)
{
	char zone[DNSNAME_BUF];
	const char *z = cfg_getstr(sec, "zone");
	int k;
	size_t n;

	l->name = xstrdup(cfg_title(sec));
	if (z == NULL || dnsname_normalise(z, strlen(z), zone) < 0) {
		*error_r = xasprintf("dnsbl: list \"%s\": zone \"%s\" is not a domain name",
				     l->name, z != NULL ? z : "");
		return -1;
	}
	l->zone = xstrdup(zone);
	if ((k = dnsbl_choice(dnsbl_type_names, cfg_getstr(sec, "type"))) < 0) {
		*error_r = xasprintf("dnsbl: list \"%s\": type must be ip, helo, sender, from "
				     "or uri, not \"%s\"", l->name, cfg_getstr(sec, "type"));
		return -1;
	}
	l->type = (enum dnsbl_type)k;
	if ((k = dnsbl_choice(dnsbl_action_names, cfg_getstr(sec, "action"))) < 0) {
		*error_r = xasprintf("dnsbl: list \"%s\": action must be score, reject or "
				     "tempfail, not \"%s\"", l->name, cfg_getstr(sec, "action"));
		return -1;
	}
	l->action = (enum dnsbl_action)k;
	n = cfg_size(sec, "answers");
	l->filters = xcalloc(n > 0 ? n : 1, sizeof(*l->filters));
	for (size_t i = 0; i < n; i++) {
		char *err = NULL;
		if (dnslist_filter_parse(cfg_getnstr(sec, "answers", i), cfg_getfloat(sec, "score"),
					 &l->filters[i], &err) < 0) {
			*error_r = xasprintf("dnsbl: list \"%s\": %s", l->name, err);
			free(err);
			return -1;
		}
	}
	l->n_filters = n;
	if (n == 0) {
		/* no answers given: any 127.0.0.0/8 answer counts */
		char *err = NULL;
		dnslist_filter_parse("*", cfg_getfloat(sec, "score"), &l->filters[0], &err);
		l->n_filters = 1;
	}
	l->reject_text = xstrdup(cfg_getstr(sec, "reject_text")[0] != '\0' ?
				 cfg_getstr(sec, "reject_text") : st->reject_text);
	atomic_init(&l->disabled, 0);
	atomic_init(&l->next_check, 0);
	st->types |= 1u << l->type;
	return 0;
}

static int
dnsbl_create(cfg_t *section, const struct mx_config *cfg, struct stage **st_r, char **error_r)
{
	struct dnsbl_stage *st = xcalloc(1, sizeof(*st));
	static const struct { const char *name; long min, max; } bounds[] = {
		{ "dns_timeout", 50, 60000 }, { "cache_size", 0, 1000000 },
		{ "min_ttl", 0, 86400 }, { "max_ttl", 0, 604800 },
		{ "negative_ttl", 0, 86400 }, { "recheck_interval", 10, 86400 },
		{ "uri_max", 0, DNSBL_SUBJECTS_MAX / 2 },
	};
	int k;

	for (size_t i = 0; i < N_ELEMENTS(bounds); i++) {
		long v = cfg_getint(section, bounds[i].name);
		if (v < bounds[i].min || v > bounds[i].max) {
			*error_r = xasprintf("dnsbl: %s must be %ld..%ld, not %ld", bounds[i].name,
					     bounds[i].min, bounds[i].max, v);
			free(st);
			return -1;
		}
	}
	st->dns_timeout = cfg_getint(section, "dns_timeout");
	st->cache_size = cfg_getint(section, "cache_size");
	st->min_ttl = cfg_getint(section, "min_ttl");
	st->max_ttl = cfg_getint(section, "max_ttl");
	st->negative_ttl = cfg_getint(section, "negative_ttl");
	st->recheck_interval = cfg_getint(section, "recheck_interval");
	st->uri_max = cfg_getint(section, "uri_max");
	st->threshold = cfg_getfloat(section, "threshold");
	st->rdns = cfg_getbool(section, "rdns");
	st->header = cfg_getbool(section, "header");
	st->rdns_none_score = cfg_getfloat(section, "rdns_none_score");
	st->rdns_unconfirmed_score = cfg_getfloat(section, "rdns_unconfirmed_score");
	st->reject_text = xstrdup(cfg_getstr(section, "reject_text"));
	if ((k = dnsbl_choice(dnsbl_when_names, cfg_getstr(section, "reject_at"))) < 0) {
		*error_r = xasprintf("dnsbl: reject_at must be connect or rcpt, not \"%s\"",
				     cfg_getstr(section, "reject_at"));
		dnsbl_free(st);
		return -1;
	}
	st->reject_at = (enum dnsbl_when)k;
	/* the pipeline's limit must not cut the deadline short: the lists
	 * that did answer would be lost with those that did not */
	long stage_timeout = cfg_getint(section, "timeout") > 0 ? cfg_getint(section, "timeout") :
		pipeline_settings(cfg)->stage_timeout;
	if (st->dns_timeout >= stage_timeout) {
		*error_r = xasprintf("dnsbl: dns_timeout (%ld ms) must be below the stage's timeout "
				     "(%ld ms)", st->dns_timeout, stage_timeout);
		dnsbl_free(st);
		return -1;
	}
	if (st->min_ttl > st->max_ttl) {
		*error_r = xstrdup("dnsbl: min_ttl must not be above max_ttl");
		dnsbl_free(st);
		return -1;
	}
	st->n_resolvers = cfg_size(section, "resolvers");
	st->resolvers = xcalloc(st->n_resolvers + 1, sizeof(*st->resolvers));
	for (size_t i = 0; i < st->n_resolvers; i++) {
		const char *r = cfg_getnstr(section, "resolvers", i);
		struct sockaddr_storage ss;
		int len = (int)sizeof(ss);

		st->resolvers[i] = xstrdup(r);
		if (evutil_parse_sockaddr_port(r, (struct sockaddr *)&ss, &len) < 0) {
			*error_r = xasprintf("dnsbl: resolver \"%s\" is not ADDRESS, ADDRESS:PORT "
					     "or [IPv6]:PORT", r);
			st->n_resolvers = i + 1;
			dnsbl_free(st);
			return -1;
		}
	}
	st->n_lists = cfg_size(section, "list");
	st->lists = xcalloc(st->n_lists + 1, sizeof(*st->lists));
	for (size_t i = 0; i < st->n_lists; i++) {
		if (dnsbl_create_list(st, cfg_getnsec(section, "list", i), &st->lists[i],
				      error_r) < 0) {
			st->n_lists = i + 1;
			dnsbl_free(st);
			return -1;
		}
	}
	log_msg(LOG_LEVEL_INFO, "dnsbl: %zu lists, resolvers %s, deadline %ld ms, rdns %s",
		st->n_lists, st->n_resolvers > 0 ? "from the config" : "from /etc/resolv.conf",
		st->dns_timeout, st->rdns ? "on" : "off");
	*st_r = &st->hdr;
	return 0;
}

static void
dnsbl_destroy(struct stage *stage)
{
	dnsbl_free((struct dnsbl_stage *)stage);
}

/* -------------------------------------------------------------- loops */

/* evdns's own messages ("Nameserver 192.0.2.53:53 has failed: request
 * timed out."), into our log instead of libevent's stderr. The function is
 * process-wide, set once. */
static void
dnsbl_evdns_log(int is_warning, const char *msg)
{
	log_msg(is_warning ? LOG_LEVEL_WARN : LOG_LEVEL_DEBUG, "dnsbl: evdns: %s", msg);
}

static pthread_once_t dnsbl_log_once = PTHREAD_ONCE_INIT;

static void
dnsbl_log_init(void)
{
	evdns_set_log_fn(dnsbl_evdns_log);
}

static int
dnsbl_loop_init(struct stage *stage, const struct stage_env *env, void **loop_data_r,
		char **error_r)
{
	struct dnsbl_stage *st = (struct dnsbl_stage *)stage;
	struct dnsbl_loop *lp = xcalloc(1, sizeof(*lp));
	char val[32];

	pthread_once(&dnsbl_log_once, dnsbl_log_init);
	lp->base = env->base;
	lp->dns = evdns_base_new(env->base, 0);
	if (lp->dns == NULL) {
		free(lp);
		*error_r = xstrdup("dnsbl: cannot create a resolver (evdns_base_new)");
		return -1;
	}
	if (st->n_resolvers == 0) {
		int r = evdns_base_resolv_conf_parse(lp->dns, DNS_OPTION_NAMESERVERS |
						     DNS_OPTION_MISC, "/etc/resolv.conf");
		if (r != 0)
			log_msg(LOG_LEVEL_WARN, "dnsbl: loop %u: /etc/resolv.conf: evdns error %d "
				"(it falls back to 127.0.0.1)", env->loop_index, r);
	}
	for (size_t i = 0; i < st->n_resolvers; i++) {
		if (evdns_base_nameserver_ip_add(lp->dns, st->resolvers[i]) != 0) {
			*error_r = xasprintf("dnsbl: resolver \"%s\" cannot be used", st->resolvers[i]);
			evdns_base_free(lp->dns, 0);
			free(lp);
			return -1;
		}
	}
	/* one retransmission within the deadline; a zone that never answers
	 * must not mark the resolver as down for the other lists */
	snprintf(val, sizeof(val), "%.3f", (double)st->dns_timeout / 2000.0);
	evdns_base_set_option(lp->dns, "timeout:", val);
	evdns_base_set_option(lp->dns, "attempts:", "2");
	evdns_base_set_option(lp->dns, "max-timeouts:", "255");
	evdns_base_set_option(lp->dns, "max-inflight:", "256");
	lp->cache = dnscache_new(st->cache_size > 0 ? (size_t)st->cache_size : 1);
	*loop_data_r = lp;
	return 0;
}

static void
dnsbl_query_unlink(struct dnsbl_query *q)
{
	if (q->prev != NULL)
		q->prev->next = q->next;
	else
		q->loop->queries = q->next;
	if (q->next != NULL)
		q->next->prev = q->prev;
	q->prev = q->next = NULL;
}

static void
dnsbl_loop_teardown(struct stage *stage, void *loop_data)
{
	struct dnsbl_loop *lp = loop_data;

	(void)stage;
	if (lp == NULL)
		return;
	/* answers that come after this find no handle */
	while (lp->queries != NULL) {
		struct dnsbl_query *q = lp->queries;
		dnsbl_query_unlink(q);
		handle_unregister(q->id);
		free(q);
	}
	evdns_base_free(lp->dns, 0);
	dnscache_free(&lp->cache);
	free(lp);
}

/* ------------------------------------------------------------ answers */

static void dnsbl_lookup(struct dnsbl_call *c, enum dnsbl_qkind kind, int qtype,
			 const char *name, size_t idx);
static void dnsbl_finish_async(struct dnsbl_call *c);

/* A list's test point answered (v NULL: no usable answer). */
static void
dnsbl_probe_answer(const struct dnsbl_stage *st, size_t idx, const struct dnscache_value *v)
{
	struct dnsbl_list *l = &st->lists[idx];
	long long now = dnsbl_now();

	if (v == NULL) {
		atomic_store(&l->next_check, now + DNSBL_PROBE_RETRY);
		return;
	}
	if (v->status == DNSCACHE_FOUND) {
		if (atomic_exchange(&l->disabled, 1) == 0)
			log_msg(LOG_LEVEL_ERR, "dnsbl: list %s (zone %s) answers \"listed\" for its "
				"test point %s, which no working list lists: DISABLED, checked "
				"again in %ld s", l->name, l->zone,
				l->type == DNSBL_IP ? "127.0.0.1" : "\"invalid\"",
				st->recheck_interval);
	} else if (atomic_exchange(&l->disabled, 0) == 1) {
		log_msg(LOG_LEVEL_WARN, "dnsbl: list %s (zone %s) answers its test point "
			"correctly again: enabled", l->name, l->zone);
	}
	atomic_store(&l->next_check, now + st->recheck_interval);
}

static bool
dnsbl_addr_in(const struct dnsbl_call *c, const struct dnscache_value *v)
{
	for (size_t i = 0; i < v->n_addrs; i++) {
		if (c->family == 4) {
			uint32_t a;
			memcpy(&a, c->addr, 4);
			if (v->addrs4[i] == ntohl(a))
				return true;
		} else if (memcmp(v->addrs6[i], c->addr, 16) == 0) {
			return true;
		}
	}
	return false;
}

/* An answer for the call (v NULL: an error or timeout). */
static void
dnsbl_answer(struct dnsbl_call *c, enum dnsbl_qkind kind, size_t idx,
	     const struct dnscache_value *v)
{
	switch (kind) {
	case Q_PROBE:
		break;
	case Q_LIST: {
		struct dnsbl_result *r = &c->res[idx];
		if (v == NULL) {
			r->state = R_ERROR;
		} else if (v->status == DNSCACHE_FOUND && v->n_addrs > 0) {
			r->state = R_LISTED;
			r->n_addrs = v->n_addrs;
			memcpy(r->addrs, v->addrs4, v->n_addrs * sizeof(r->addrs[0]));
			/* in order: resolvers rotate records, the header should not */
			for (size_t i = 1; i < r->n_addrs; i++) {
				for (size_t k = i; k > 0 && r->addrs[k - 1] > r->addrs[k]; k--) {
					uint32_t t = r->addrs[k];
					r->addrs[k] = r->addrs[k - 1];
					r->addrs[k - 1] = t;
				}
			}
		} else {
			r->state = R_CLEAR;
		}
		break;
	}
	case Q_PTR:
		if (v == NULL) {
			c->rdns = RDNS_TEMPFAIL;
		} else if (v->status != DNSCACHE_FOUND) {
			c->rdns = RDNS_NONE;
		} else if (dnsname_normalise(v->name, strlen(v->name), c->rdns_name) < 0) {
			/* a PTR that is no host name cannot be confirmed */
			c->rdns_name[0] = '\0';
			c->rdns = RDNS_UNCONFIRMED;
		} else {
			dnsbl_lookup(c, Q_FWD, c->family == 4 ? DNS_IPv4_A : DNS_IPv6_AAAA,
				     c->rdns_name, 0);
		}
		break;
	case Q_FWD:
		if (v == NULL)
			c->rdns = RDNS_TEMPFAIL;
		else if (v->status == DNSCACHE_FOUND && dnsbl_addr_in(c, v))
			c->rdns = RDNS_CONFIRMED;
		else
			c->rdns = RDNS_UNCONFIRMED;
		break;
	}
}

static long
dnsbl_clamp_ttl(const struct dnsbl_stage *st, long ttl)
{
	if (ttl < st->min_ttl)
		ttl = st->min_ttl;
	if (ttl > st->max_ttl)
		ttl = st->max_ttl;
	return ttl;
}

/* evdns's callback: arg is the query's handle id. */
static void
dnsbl_dns_cb(int result, char type, int count, int ttl, void *addresses, void *arg)
{
	uint64_t id = (uint64_t)(uintptr_t)arg;
	struct dnsbl_query *q = handle_lookup(id);
	struct dnscache_value v;
	bool ok = true;
	long keep;

	if (q == NULL)
		return; /* its loop let go of it */
	handle_unregister(id);
	dnsbl_query_unlink(q);
	memset(&v, 0, sizeof(v));
	if (count < 0)
		count = 0;
	if (result == DNS_ERR_NONE && count > 0) {
		size_t n = (size_t)count < DNSCACHE_ADDRS_MAX ? (size_t)count : DNSCACHE_ADDRS_MAX;
		v.status = DNSCACHE_FOUND;
		if (type == DNS_IPv4_A && q->qtype == DNS_IPv4_A) {
			const uint32_t *a = addresses;
			for (size_t i = 0; i < n; i++)
				v.addrs4[i] = ntohl(a[i]);
			v.n_addrs = n;
		} else if (type == DNS_IPv6_AAAA && q->qtype == DNS_IPv6_AAAA) {
			memcpy(v.addrs6, addresses, n * 16);
			v.n_addrs = n;
		} else if (type == DNS_PTR && q->qtype == DNS_PTR) {
			const char *const *names = addresses;
			/* evdns keeps one name of at most HOST_NAME_MAX; cut anyway */
			str_copy(v.name, names[0] != NULL ? names[0] : "", sizeof(v.name));
			v.n_addrs = 0;
		} else {
			v.status = DNSCACHE_NONE; /* not what was asked */
		}
		keep = dnsbl_clamp_ttl(q->st, ttl);
	} else if (result == DNS_ERR_NONE || result == DNS_ERR_NOTEXIST ||
		   result == DNS_ERR_NODATA) {
		v.status = DNSCACHE_NONE;
		keep = q->st->negative_ttl;
	} else {
		ok = false; /* SERVFAIL, REFUSED, timeout, ...: skipped, not cached */
		keep = 0;
	}
	/* the resolver's health: it answered (even "no such name") or not */
	metrics_dependency("dns", ok);
	if (ok && q->st->cache_size > 0)
		dnscache_put(q->loop->cache, q->qtype, q->name, &v, keep, dnsbl_now());
	if (q->kind == Q_PROBE)
		dnsbl_probe_answer(q->st, q->idx, ok ? &v : NULL);
	if (q->owner != NULL) {
		struct dnsbl_call *c = q->owner;
		dnsbl_answer(c, q->kind, q->idx, ok ? &v : NULL);
		c->pending--;
		if (c->pending == 0 && !c->issuing)
			dnsbl_finish_async(c);
	}
	free(q);
}

/* Ask (or answer from the cache) one question for the call. */
static void
dnsbl_lookup(struct dnsbl_call *c, enum dnsbl_qkind kind, int qtype, const char *name,
	     size_t idx)
{
	struct dnsbl_loop *lp = c->loop;
	struct dnscache_value v;
	struct dnsbl_query *q;
	struct evdns_request *req = NULL;
	void *arg;

	if (c->st->cache_size > 0 && dnscache_get(lp->cache, qtype, name, dnsbl_now(), &v)) {
		if (kind == Q_PROBE)
			dnsbl_probe_answer(c->st, idx, &v);
		dnsbl_answer(c, kind, idx, &v);
		return;
	}
	q = xcalloc(1, sizeof(*q));
	q->loop = lp;
	q->st = c->st;
	q->owner = c;
	q->kind = kind;
	q->qtype = qtype;
	q->idx = idx;
	str_copy(q->name, name, sizeof(q->name));
	q->id = handle_register(q);
	arg = (void *)(uintptr_t)q->id;
	if (kind == Q_PTR && c->family == 4) {
		struct in_addr in;
		memcpy(&in, c->addr, 4);
		req = evdns_base_resolve_reverse(lp->dns, &in, DNS_QUERY_NO_SEARCH, dnsbl_dns_cb, arg);
	} else if (kind == Q_PTR) {
		struct in6_addr in6;
		memcpy(&in6, c->addr, 16);
		req = evdns_base_resolve_reverse_ipv6(lp->dns, &in6, DNS_QUERY_NO_SEARCH,
						      dnsbl_dns_cb, arg);
	} else if (qtype == DNS_IPv6_AAAA) {
		req = evdns_base_resolve_ipv6(lp->dns, name, DNS_QUERY_NO_SEARCH, dnsbl_dns_cb, arg);
	} else {
		req = evdns_base_resolve_ipv4(lp->dns, name, DNS_QUERY_NO_SEARCH, dnsbl_dns_cb, arg);
	}
	if (req == NULL) {
		handle_unregister(q->id);
		free(q);
		if (kind == Q_PROBE)
			dnsbl_probe_answer(c->st, idx, NULL);
		dnsbl_answer(c, kind, idx, NULL);
		return;
	}
	q->next = lp->queries;
	if (lp->queries != NULL)
		lp->queries->prev = q;
	lp->queries = q;
	c->pending++;
}

/* -------------------------------------------------------------- calls */

static void
dnsbl_call_free(struct dnsbl_call *c)
{
	/* queries still in flight only fill the cache now */
	for (struct dnsbl_query *q = c->loop->queries; q != NULL; q = q->next) {
		if (q->owner == c)
			q->owner = NULL;
	}
	if (c->deadline != NULL)
		event_free(c->deadline);
	free(c->res);
	free(c);
}

static double
dnsbl_stage_sum(const struct dnsbl_stage *st, const struct filter_tx *fx)
{
	const struct filter_hit *hits;
	size_t n = filter_tx_hits(fx, &hits);
	double sum = 0;

	for (size_t i = 0; i < n; i++) {
		if (strcmp(hits[i].stage, st->hdr.name) == 0)
			sum += hits[i].score;
	}
	return sum;
}

static const struct dnsbl_list *
dnsbl_list_named(const struct dnsbl_stage *st, const char *name)
{
	for (size_t i = 0; i < st->n_lists; i++) {
		if (strcmp(st->lists[i].name, name) == 0)
			return &st->lists[i];
	}
	return NULL;
}

static void
dnsbl_set_verdict(struct stage_call *call, enum verdict v, const char *text)
{
	memset(&call->result, 0, sizeof(call->result));
	call->result.verdict = v;
	if (v == VERDICT_REJECT) {
		call->result.code = call->phase == PHASE_CONNECT ? 554 : 550;
		str_copy(call->result.enhanced, "5.7.1", sizeof(call->result.enhanced));
	} else {
		call->result.code = 451;
		str_copy(call->result.enhanced, "4.7.1", sizeof(call->result.enhanced));
	}
	str_copy(call->result.text, text, sizeof(call->result.text));
}

/* The names of the stage's hits so far, "a, b", for a threshold refusal. */
static void
dnsbl_hit_names(const struct dnsbl_stage *st, const struct filter_tx *fx, char *out, size_t outsz)
{
	const struct filter_hit *hits;
	size_t n = filter_tx_hits(fx, &hits), o = 0;

	out[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (strcmp(hits[i].stage, st->hdr.name) != 0)
			continue;
		int w = snprintf(out + o, outsz - o, "%s%s", o > 0 ? ", " : "", hits[i].rule);
		if (w < 0 || (size_t)w >= outsz - o)
			break;
		o += (size_t)w;
	}
}

/* The threshold (at this phase, if reject_at says so). */
static void
dnsbl_check_threshold(const struct dnsbl_stage *st, struct stage_call *call, const char *what)
{
	char names[200], text[256];

	if (st->threshold <= 0 || call->result.verdict != VERDICT_CONTINUE ||
	    dnsbl_stage_sum(st, call->fx) < st->threshold)
		return;
	dnsbl_hit_names(st, call->fx, names, sizeof(names));
	dnslist_format(st->reject_text, names, "", what, text, sizeof(text));
	dnsbl_set_verdict(call, VERDICT_REJECT, text);
}

static bool
dnsbl_log_skipped(const struct dnsbl_call *c, const struct stage_call *call)
{
	char buf[512];
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < c->n_res; i++) {
		const struct dnsbl_result *r = &c->res[i];
		const char *why = r->state == R_PENDING ? "timeout" :
			r->state == R_ERROR ? "error" : NULL;
		if (why == NULL)
			continue;
		int w = snprintf(buf + o, sizeof(buf) - o, "%s%s:%s", o > 0 ? "," : "",
				 c->st->lists[r->list].name, why);
		if (w < 0 || (size_t)w >= sizeof(buf) - o)
			break;
		o += (size_t)w;
	}
	if (o > 0)
		log_msg(LOG_LEVEL_INFO, "%s dnsbl skipped phase=%s lists=%s",
			call->msg->session_id != NULL ? call->msg->session_id : "-",
			phase_name(c->phase), buf);
	return o > 0;
}

/* Count what came back (everything, or what came by the deadline) into
 * the transaction and the call's result. CHECK_FAILED when a list was
 * skipped and on_error = "tempfail" (and no list refused outright). */
static enum check_status
dnsbl_finish(struct dnsbl_call *c, struct stage_call *call)
{
	const struct dnsbl_stage *st = c->st;
	const char *what = call->msg->client_addr != NULL ? call->msg->client_addr : "";

	memset(&call->result, 0, sizeof(call->result));
	call->result.verdict = VERDICT_CONTINUE;
	bool skipped = dnsbl_log_skipped(c, call);
	/* each list once: its best subject */
	for (size_t li = 0; li < st->n_lists; li++) {
		const struct dnsbl_list *l = &st->lists[li];
		const struct dnsbl_result *best = NULL;
		double best_score = 0;

		if (atomic_load(&l->disabled))
			continue;
		for (size_t i = 0; i < c->n_res; i++) {
			const struct dnsbl_result *r = &c->res[i];
			size_t matched;
			double s;

			if (r->list != li || r->state != R_LISTED)
				continue;
			s = dnslist_score(l->filters, l->n_filters, r->addrs, r->n_addrs, &matched);
			if (matched > 0 && (best == NULL || s > best_score)) {
				best = r;
				best_score = s;
			}
		}
		if (best == NULL)
			continue;
		char desc[DNSNAME_BUF + 80], text[256], abuf[4 * INET_ADDRSTRLEN];
		size_t ao = 0;
		abuf[0] = '\0';
		/* the answers (up to four), as the list gave them */
		for (size_t i = 0; i < best->n_addrs && i < 4; i++) {
			struct in_addr a = { .s_addr = htonl(best->addrs[i]) };
			char one[INET_ADDRSTRLEN];
			inet_ntop(AF_INET, &a, one, sizeof(one));
			ao += (size_t)snprintf(abuf + ao, sizeof(abuf) - ao, "%s%s",
					       i > 0 ? "," : "", one);
		}
		snprintf(desc, sizeof(desc), "%s [%s]", abuf, best->subject);
		filter_tx_add_score(call->fx, st->hdr.name, l->name, best_score, desc);
		log_msg(LOG_LEVEL_INFO, "%s dnsbl hit phase=%s list=%s zone=%s subject=%s "
			"answer=%s score=%.1f action=%s",
			call->msg->session_id != NULL ? call->msg->session_id : "-",
			phase_name(c->phase), l->name, l->zone, best->subject, abuf, best_score,
			dnsbl_action_names[l->action]);
		if (l->action != DNSBL_SCORE && call->result.verdict == VERDICT_CONTINUE &&
		    (st->reject_at == DNSBL_AT_CONNECT || c->phase == PHASE_DATA)) {
			dnslist_format(l->reject_text, l->name, l->zone, best->subject, text,
				       sizeof(text));
			dnsbl_set_verdict(call, l->action == DNSBL_REJECT ? VERDICT_REJECT :
					  VERDICT_TEMPFAIL, text);
		}
	}
	/* after the lists: their hits come first in the header and tests= */
	if (c->phase == PHASE_CONNECT && c->rdns_wanted) {
		if (c->rdns == RDNS_UNKNOWN)
			c->rdns = RDNS_TEMPFAIL; /* not back by the deadline */
		filter_tx_set_rdns(call->fx, c->rdns_name, c->rdns);
		log_msg(LOG_LEVEL_INFO, "%s dnsbl rdns client=%s name=%s status=%s",
			call->msg->session_id != NULL ? call->msg->session_id : "-", what,
			c->rdns_name[0] != '\0' ? c->rdns_name : "-", rdns_status_name(c->rdns));
		if (c->rdns == RDNS_NONE && st->rdns_none_score != 0)
			filter_tx_add_score(call->fx, st->hdr.name, "RDNS_NONE", st->rdns_none_score,
					    "no PTR record");
		if (c->rdns == RDNS_UNCONFIRMED && st->rdns_unconfirmed_score != 0)
			filter_tx_add_score(call->fx, st->hdr.name, "RDNS_UNCONFIRMED",
					    st->rdns_unconfirmed_score, "PTR not forward-confirmed");
	}
	if (st->reject_at == DNSBL_AT_CONNECT && c->phase != PHASE_DATA)
		dnsbl_check_threshold(st, call, what);
	if (c->phase == PHASE_DATA && st->header) {
		const struct filter_hit *hits;
		size_t n = filter_tx_hits(call->fx, &hits);
		char *value = NULL;
		for (size_t i = 0; i < n; i++) {
			if (strcmp(hits[i].stage, st->hdr.name) != 0)
				continue;
			char *next = xasprintf("%s%s%s=%s", value != NULL ? value : "",
					       value != NULL ? ", " : "", hits[i].rule,
					       hits[i].desc != NULL ? hits[i].desc : "");
			free(value);
			value = next;
		}
		if (value != NULL)
			filter_tx_add_header(call->fx, "X-Spam-DNSBL", value);
		free(value);
	}
	return skipped && st->hdr.on_error == ON_ERROR_TEMPFAIL &&
		call->result.verdict == VERDICT_CONTINUE ? CHECK_FAILED : CHECK_DONE;
}

static void
dnsbl_finish_async(struct dnsbl_call *c)
{
	struct stage_call *call = stage_call_find(c->call_id);

	if (call != NULL && call->stage_data == c) {
		enum check_status status = dnsbl_finish(c, call);
		call->stage_data = NULL;
		dnsbl_call_free(c);
		stage_call_done(call, status);
		return;
	}
	/* the call is gone without a cancel: cannot happen, but never leak */
	dnsbl_call_free(c);
}

static void
dnsbl_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dnsbl_call *c = arg;

	(void)fd;
	(void)what;
	dnsbl_finish_async(c);
}

/* Start the lookups of subjects for every list of type t. */
static void
dnsbl_add_subjects(struct dnsbl_call *c, enum dnsbl_type t, char (*subjects)[DNSNAME_BUF],
		   size_t n_subjects)
{
	const struct dnsbl_stage *st = c->st;
	long long now = dnsbl_now();

	for (size_t li = 0; li < st->n_lists; li++) {
		struct dnsbl_list *l = &st->lists[li];
		long long due = atomic_load(&l->next_check);
		char name[DNSNAME_BUF];

		if (l->type != t || n_subjects == 0)
			continue;
		/* the test point, with the first lookups and then now and then;
		 * whoever moves next_check first asks it */
		if (due <= now && atomic_compare_exchange_strong(&l->next_check, &due,
								 now + st->recheck_interval)) {
			if (dnslist_query_name(t == DNSBL_IP ? "1.0.0.127" : "invalid", l->zone,
					       name) == 0)
				dnsbl_lookup(c, Q_PROBE, DNS_IPv4_A, name, li);
		}
		for (size_t i = 0; i < n_subjects; i++) {
			const char *subject = subjects[i];
			char rev[DNSNAME_BUF];

			if (t == DNSBL_IP) {
				if (dnslist_reverse_addr(subjects[i], rev) < 0)
					continue;
				subject = rev;
			}
			if (dnslist_query_name(subject, l->zone, name) < 0)
				continue;
			c->res = xrealloc(c->res, (c->n_res + 1) * sizeof(*c->res));
			struct dnsbl_result *r = &c->res[c->n_res];
			memset(r, 0, sizeof(*r));
			r->list = li;
			r->state = R_PENDING;
			str_copy(r->subject, subjects[i], sizeof(r->subject));
			c->n_res++;
			dnsbl_lookup(c, Q_LIST, DNS_IPv4_A, name, c->n_res - 1);
		}
	}
}

static struct dnsbl_call *
dnsbl_call_new(struct dnsbl_stage *st, struct stage_call *call)
{
	struct dnsbl_call *c = xcalloc(1, sizeof(*c));

	c->call_id = call->id;
	c->st = st;
	c->loop = call->loop_data;
	c->phase = call->phase;
	c->issuing = true;
	return c;
}

/* All lookups started: done now (everything came from the cache) or
 * pending with the deadline armed. */
static enum check_status
dnsbl_issued(struct dnsbl_call *c, struct stage_call *call)
{
	c->issuing = false;
	if (c->pending == 0) {
		enum check_status status = dnsbl_finish(c, call);
		dnsbl_call_free(c);
		return status;
	}
	struct timeval tv = { .tv_sec = c->st->dns_timeout / 1000,
			      .tv_usec = (c->st->dns_timeout % 1000) * 1000 };
	c->deadline = evtimer_new(c->loop->base, dnsbl_deadline_cb, c);
	evtimer_add(c->deadline, &tv);
	call->stage_data = c;
	return CHECK_PENDING;
}

/* ------------------------------------------------------------- phases */

static enum check_status
dnsbl_check_connect(struct dnsbl_stage *st, struct stage_call *call)
{
	struct dnsbl_call *c = dnsbl_call_new(st, call);
	char subj[1][DNSNAME_BUF];
	const char *addr = call->msg->client_addr != NULL ? call->msg->client_addr : "";
	char rev[DNSNAME_BUF];

	str_copy(subj[0], addr, sizeof(subj[0]));
	dnsbl_add_subjects(c, DNSBL_IP, subj, 1);
	c->family = dnslist_reverse_addr(addr, rev);
	if (st->rdns && c->family > 0) {
		char name[DNSNAME_BUF + 16]; /* 72 octets for IPv6: never cut */
		if (c->family == 4) {
			struct in_addr a;
			struct in6_addr a6;
			if (inet_pton(AF_INET, addr, &a) != 1) { /* v4-mapped */
				inet_pton(AF_INET6, addr, &a6);
				memcpy(&a, &a6.s6_addr[12], 4);
			}
			memcpy(c->addr, &a, 4);
			snprintf(name, sizeof(name), "%s.in-addr.arpa", rev);
		} else {
			inet_pton(AF_INET6, addr, c->addr);
			snprintf(name, sizeof(name), "%s.ip6.arpa", rev);
		}
		c->rdns_wanted = true;
		dnsbl_lookup(c, Q_PTR, DNS_PTR, name, 0);
	}
	return dnsbl_issued(c, call);
}

static enum check_status
dnsbl_check_name(struct dnsbl_stage *st, struct stage_call *call, enum dnsbl_type t,
		 const char *value)
{
	char subj[1][DNSNAME_BUF];
	int r;

	if (value == NULL || (st->types & (1u << t)) == 0)
		return CHECK_DONE;
	r = t == DNSBL_HELO ? dnsname_normalise(value, strlen(value), subj[0]) :
		dnslist_addr_domain(value, subj[0]);
	if (r < 0)
		return CHECK_DONE; /* an address literal, a bounce, no valid name */
	struct dnsbl_call *c = dnsbl_call_new(st, call);
	dnsbl_add_subjects(c, t, subj, 1);
	return dnsbl_issued(c, call);
}

/* RCPT: what reject_at = "rcpt" kept for now. */
static enum check_status
dnsbl_check_rcpt(struct dnsbl_stage *st, struct stage_call *call)
{
	const struct filter_hit *hits;
	size_t n;
	char text[256];

	memset(&call->result, 0, sizeof(call->result));
	if (st->reject_at != DNSBL_AT_RCPT)
		return CHECK_DONE;
	n = filter_tx_hits(call->fx, &hits);
	for (size_t i = 0; i < n; i++) {
		const struct dnsbl_list *l;
		if (strcmp(hits[i].stage, st->hdr.name) != 0 ||
		    (l = dnsbl_list_named(st, hits[i].rule)) == NULL || l->action == DNSBL_SCORE)
			continue;
		/* the subject is in the desc, after the answer: "127.0.0.2 [subject]" */
		const char *subject = hits[i].desc != NULL ? strchr(hits[i].desc, '[') : NULL;
		char subj[DNSNAME_BUF];
		str_copy(subj, subject != NULL ? subject + 1 : "", sizeof(subj));
		subj[strcspn(subj, "]")] = '\0';
		dnslist_format(l->reject_text, l->name, l->zone, subj, text, sizeof(text));
		dnsbl_set_verdict(call, l->action == DNSBL_REJECT ? VERDICT_REJECT :
				  VERDICT_TEMPFAIL, text);
		return CHECK_DONE;
	}
	dnsbl_check_threshold(st, call, call->msg->client_addr != NULL ?
			      call->msg->client_addr : "");
	return CHECK_DONE;
}

static void
dnsbl_job_free(struct dnsbl_job *j)
{
	free(j->from);
	free(j->uris);
	free(j);
}

/* On the scan lane: the From: domain and the URIs' registered domains. */
static void
dnsbl_job_work(void *arg)
{
	struct dnsbl_job *j = arg;
	const struct msgtext *t = msgbody_text(j->body);
	char host[DNSNAME_BUF], reg[DNSNAME_BUF];

	if (t == NULL)
		return;
	if (j->st->types & (1u << DNSBL_FROM)) {
		const char *v = msgtext_header(t, "From", 0, true);
		char addr[512];
		j->from = xcalloc(1, sizeof(*j->from));
		if (v != NULL) {
			msgtext_addr(v, addr, sizeof(addr));
			if (dnslist_addr_domain(addr, j->from[0]) == 0)
				j->n_from = 1;
		}
	}
	if (j->st->types & (1u << DNSBL_URI)) {
		size_t max = (size_t)j->st->uri_max;
		j->uris = xcalloc(max + 1, sizeof(*j->uris));
		for (size_t i = 0; i < t->n_uris && j->n_uris < max; i++) {
			bool seen = false;
			if (dnslist_uri_host(t->uris[i], host) < 0 ||
			    dnslist_registered_domain(host, reg) < 0)
				continue;
			for (size_t k = 0; k < j->n_uris && !seen; k++)
				seen = strcmp(j->uris[k], reg) == 0;
			if (!seen)
				str_copy(j->uris[j->n_uris++], reg, sizeof(j->uris[0]));
		}
	}
}

static void
dnsbl_job_done(struct stage_call *call, void *arg)
{
	struct dnsbl_job *j = arg;

	if (call != NULL) {
		struct dnsbl_call *c = dnsbl_call_new(j->st, call);
		dnsbl_add_subjects(c, DNSBL_FROM, j->from, j->n_from);
		dnsbl_add_subjects(c, DNSBL_URI, j->uris, j->n_uris);
		enum check_status status = dnsbl_issued(c, call);
		if (status != CHECK_PENDING)
			stage_call_done(call, status);
	}
	dnsbl_job_free(j);
}

static enum check_status
dnsbl_check_data(struct dnsbl_stage *st, struct stage_call *call)
{
	if ((st->types & ((1u << DNSBL_FROM) | (1u << DNSBL_URI))) == 0 || call->msg->body == NULL) {
		/* nothing to ask: only the header of what earlier phases found */
		struct dnsbl_call *c = dnsbl_call_new(st, call);
		return dnsbl_issued(c, call);
	}
	struct dnsbl_job *j = xcalloc(1, sizeof(*j));
	j->st = st;
	j->body = call->msg->body;
	if (stage_submit_job(call, dnsbl_job_work, dnsbl_job_done, j) < 0) {
		dnsbl_job_free(j);
		return CHECK_FAILED;
	}
	return CHECK_PENDING;
}

static enum check_status
dnsbl_check(struct stage *stage, struct stage_call *call)
{
	struct dnsbl_stage *st = (struct dnsbl_stage *)stage;

	memset(&call->result, 0, sizeof(call->result));
	call->stage_data = NULL;
	if (call->loop_data == NULL)
		return CHECK_FAILED;
	switch (call->phase) {
	case PHASE_CONNECT:
		return dnsbl_check_connect(st, call);
	case PHASE_HELO:
		return dnsbl_check_name(st, call, DNSBL_HELO, call->msg->helo);
	case PHASE_MAIL:
		return dnsbl_check_name(st, call, DNSBL_SENDER, call->msg->mail_from);
	case PHASE_RCPT:
		return dnsbl_check_rcpt(st, call);
	case PHASE_DATA:
		return dnsbl_check_data(st, call);
	case PHASE_COUNT:
		break;
	}
	return CHECK_DONE;
}

static void
dnsbl_cancel(struct stage *stage, struct stage_call *call)
{
	struct dnsbl_call *c = call->stage_data;

	(void)stage;
	/* at DATA before the job came back there is no call state: the
	 * job's completion gets NULL and only frees */
	if (c != NULL) {
		call->stage_data = NULL;
		dnsbl_call_free(c);
	}
}

const struct stage_ops dnsbl_stage_ops = {
	.name = "dnsbl",
	.phases = PHASE_BIT(PHASE_CONNECT) | PHASE_BIT(PHASE_HELO) | PHASE_BIT(PHASE_MAIL) |
		PHASE_BIT(PHASE_RCPT) | PHASE_BIT(PHASE_DATA),
	.default_on_error = ON_ERROR_ACCEPT,
	.opts = dnsbl_opts,
	.create = dnsbl_create,
	.loop_init = dnsbl_loop_init,
	.loop_teardown = dnsbl_loop_teardown,
	.check = dnsbl_check,
	.cancel = dnsbl_cancel,
	.destroy = dnsbl_destroy,
};
