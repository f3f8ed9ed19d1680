/*
 * ratelimit_stage.c — the "ratelimit" stage: rate and concurrency limits and
 * greylisting, kept in Redis so that every mxguard instance in front of the
 * same MX enforces one limit together, or in process without Redis.
 *
 *   ratelimit {
 *       redis = "127.0.0.1:6379"      # "" = in process only
 *       limit per_client {            # as many as wanted
 *           key = "client"            # client helo sender sender_domain rcpt sender_rcpt
 *           phase = "mail"            # connect helo mail rcpt data
 *           type = "rate"             # or "concurrency" (connect, key client)
 *           count = 100
 *           period = 3600
 *       }
 *       greylist { domains = {"example.org"} }
 *   }
 *
 * Each limit's state is one Redis key, changed by one Lua script per check
 * (atomic; loaded once and called with EVALSHA, re-sent with EVAL after a
 * NOSCRIPT), the same algorithms as the in-process limiter (ratelimit.h):
 * GCRA for rates, a sorted set of session ids with deadlines for
 * concurrency (so a slot whose release was lost — a crashed instance —
 * expires by itself), a first-seen time per triplet for greylisting. The
 * scripts take the time from Redis (TIME), so instances with skewed clocks
 * agree.
 *
 * Each loop has its own hiredis connection (loop_init), on the loop's event
 * base through hiredis' libevent adapter. A phase's checks go out together
 * (pipelined) and one timer bounds them (redis_timeout). When Redis does
 * not answer in time, is unreachable or refuses, the connection is dropped
 * and re-made with backoff, and meanwhile every limit follows its on_error:
 * "accept" uses the in-process limiter (per instance: a Redis outage does
 * not open the floodgates), "tempfail" answers 451. The outage and the
 * recovery are logged once each.
 *
 * A concurrency slot is taken at connect and given back by session_end
 * (the stage interface's hook for the end of a session, however it ended);
 * its deadline (slot_ttl) is refreshed at every MAIL, so only a slot whose
 * release was lost lingers, and not beyond slot_ttl.
 */
#include "config.h"

#include <confuse.h>
#include <ctype.h>
#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "filters/filters.h"
#include "lib/metrics.h"
#include "filters/ratelimit.h"
#include "lib/lib.h"

#define RL_KEY_MAX 800
#define RL_BACKOFF_MIN_MS 100
#define RL_BACKOFF_MAX_MS 10000
#define RL_ITEMS_MAX 33 /* limits per stage + the greylist */

enum rl_keykind { RL_K_CLIENT, RL_K_HELO, RL_K_SENDER, RL_K_SENDER_DOMAIN, RL_K_RCPT,
		  RL_K_SENDER_RCPT };
static const char *const rl_key_names[] = { "client", "helo", "sender", "sender_domain",
					    "rcpt", "sender_rcpt" };
enum rl_type { RL_T_RATE, RL_T_CONCURRENCY };

struct rl_limit {
	char *name;
	enum rl_keykind key;
	enum phase phase;
	enum rl_type type;
	long count;
	long period;          /* seconds */
	long burst;
	bool bytes;
	int v4_prefix, v6_prefix;
	bool reject;          /* 550 instead of 451 */
	enum on_error on_error;
	bool shadow;
	char *text;
	double interval_ms, tolerance_ms;
};

struct rl_stage {
	struct stage hdr; /* must be first */
	struct rl_limit *limits;
	size_t n_limits;
	/* greylisting */
	char **grey_domains;
	size_t n_grey_domains;
	long grey_delay, grey_window, grey_expire, grey_auto_allow;
	int grey_v4_prefix, grey_v6_prefix;
	/* redis */
	bool redis;
	bool redis_unix;
	char redis_host[256];
	int redis_port;
	char *redis_text;
	char *redis_password;
	long redis_db;
	long redis_timeout_ms;
	long slot_ttl_ms;
	char *prefix;
	bool shadow;
};

/* The in-process table, shared by every pipeline (reloads keep the counts). */
static pthread_once_t rl_local_once = PTHREAD_ONCE_INIT;
static struct rl_local *rl_table;
static void
rl_local_init(void)
{
	rl_table = rl_local_new(200000);
}

/* Redis up (0) or down (1), for the once-per-outage log lines. */
static atomic_int rl_redis_down;

/* ---------------------------------------------------------- the scripts */

static const char rl_script_rate[] =
	"local t = redis.call('TIME')\n"
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
	"local interval, tolerance, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
	"local tat = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
	"if tat < now then tat = now end\n"
	"local new_tat = tat + interval * cost\n"
	"local allow_at = new_tat - tolerance\n"
	"if allow_at > now then return {0, math.ceil(allow_at - now)} end\n"
	"redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)\n"
	"return {1, 0}\n";

static const char rl_script_slot[] =
	"local t = redis.call('TIME')\n"
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
	"local max, ttl = tonumber(ARGV[1]), tonumber(ARGV[3])\n"
	"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
	"if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then\n"
	"  local n = redis.call('ZCARD', KEYS[1])\n"
	"  if n >= max then return {0, n} end\n"
	"end\n"
	"redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])\n"
	"redis.call('PEXPIRE', KEYS[1], ttl)\n"
	"return {1, redis.call('ZCARD', KEYS[1])}\n";

static const char rl_script_refresh[] =
	"local t = redis.call('TIME')\n"
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
	"local ttl = tonumber(ARGV[2])\n"
	"if redis.call('ZSCORE', KEYS[1], ARGV[1]) then\n"
	"  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])\n"
	"  redis.call('PEXPIRE', KEYS[1], ttl)\n"
	"end\n"
	"return {1, 0}\n";

/* KEYS[1] the triplet, KEYS[2] the client's passes (one hash slot: {net}) */
static const char rl_script_grey[] =
	"local t = redis.call('TIME')\n"
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
	"local delay, window, expire, auto = tonumber(ARGV[1]), tonumber(ARGV[2]), "
	"tonumber(ARGV[3]), tonumber(ARGV[4])\n"
	"local passes = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
	"if auto > 0 and passes >= auto then redis.call('PEXPIRE', KEYS[2], expire) return {1, 0} end\n"
	"local first = redis.call('GET', KEYS[1])\n"
	"if not first then\n"
	"  redis.call('SET', KEYS[1], now, 'PX', delay + window)\n"
	"  return {0, delay}\n"
	"end\n"
	"first = tonumber(first)\n"
	"if first < 0 then redis.call('PEXPIRE', KEYS[1], expire) return {1, 0} end\n"
	"if now - first < delay then return {0, delay - (now - first)} end\n"
	"redis.call('SET', KEYS[1], '-1', 'PX', expire)\n"
	"redis.call('INCR', KEYS[2])\n"
	"redis.call('PEXPIRE', KEYS[2], expire)\n"
	"return {1, 0}\n";

struct rl_script {
	const char *text;
	char sha[41];
};
enum { RL_S_RATE, RL_S_SLOT, RL_S_REFRESH, RL_S_GREY, RL_S_COUNT };
static struct rl_script rl_scripts[RL_S_COUNT] = {
	{ rl_script_rate, "" }, { rl_script_slot, "" }, { rl_script_refresh, "" },
	{ rl_script_grey, "" },
};
static pthread_once_t rl_sha_once = PTHREAD_ONCE_INIT;
static void
rl_sha_init(void)
{
	for (size_t i = 0; i < RL_S_COUNT; i++) {
		unsigned char md[SHA_DIGEST_LENGTH];
		SHA1((const unsigned char *)rl_scripts[i].text, strlen(rl_scripts[i].text), md);
		for (size_t k = 0; k < SHA_DIGEST_LENGTH; k++)
			snprintf(rl_scripts[i].sha + 2 * k, 3, "%02x", md[k]);
	}
}

/* ------------------------------------------------------------- config */

static cfg_opt_t rl_limit_opts[] = {
	CFG_STR("key", "client", CFGF_NONE),
	CFG_STR("phase", "mail", CFGF_NONE),
	CFG_STR("type", "rate", CFGF_NONE),
	CFG_INT("count", 100, CFGF_NONE),
	CFG_INT("period", 3600, CFGF_NONE),
	CFG_INT("burst", 0, CFGF_NONE),
	CFG_BOOL("bytes", cfg_false, CFGF_NONE),
	CFG_INT("ipv4_prefix", 32, CFGF_NONE),
	CFG_INT("ipv6_prefix", 64, CFGF_NONE),
	CFG_STR("action", "tempfail", CFGF_NONE),
	CFG_STR("on_error", "", CFGF_NONE),
	CFG_BOOL("shadow", cfg_false, CFGF_NONE),
	CFG_STR("text", "", CFGF_NONE),
	CFG_END()
};

static cfg_opt_t rl_grey_opts[] = {
	CFG_STR_LIST("domains", "{}", CFGF_NONE),
	CFG_INT("delay", 300, CFGF_NONE),
	CFG_INT("window", 14400, CFGF_NONE),
	CFG_INT("auto_allow", 5, CFGF_NONE),
	CFG_INT("expire", 3024000, CFGF_NONE),
	CFG_INT("ipv4_prefix", 24, CFGF_NONE),
	CFG_INT("ipv6_prefix", 64, CFGF_NONE),
	CFG_END()
};

static cfg_opt_t rl_opts[] = {
	CFG_STR("redis", "", CFGF_NONE),
	CFG_STR("redis_password", "", CFGF_NONE),
	CFG_INT("redis_db", 0, CFGF_NONE),
	CFG_INT("redis_timeout", 500, CFGF_NONE),
	CFG_STR("key_prefix", "mxguard:", CFGF_NONE),
	CFG_INT("slot_ttl", 900, CFGF_NONE),
	CFG_BOOL("shadow", cfg_false, CFGF_NONE),
	CFG_SEC("limit", rl_limit_opts, CFGF_MULTI | CFGF_TITLE),
	CFG_SEC("greylist", rl_grey_opts, CFGF_NONE),
	CFG_END()
};

static int
rl_pick(const char *what, const char *v, const char *const *names, size_t n, char **error_r)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v, names[i]) == 0)
			return (int)i;
	}
	*error_r = xasprintf("ratelimit: %s = \"%s\": unknown", what, v);
	return -1;
}

static int
rl_range(const char *what, long v, long min, long max, char **error_r)
{
	if (v < min || v > max) {
		*error_r = xasprintf("ratelimit: %s = %ld: out of range %ld..%ld", what, v, min, max);
		return -1;
	}
	return 0;
}

static int
rl_limit_parse(cfg_t *sec, enum on_error stage_on_error, struct rl_limit *l, char **error_r)
{
	static const char *const phases[] = { "connect", "helo", "mail", "rcpt", "data" };
	static const char *const types[] = { "rate", "concurrency" };
	static const char *const actions[] = { "tempfail", "reject" };
	char what[128];
	int k, p, t, a;

	l->name = xstrdup(cfg_title(sec));
	for (const char *c = l->name; *c != '\0'; c++) {
		if (!isalnum((unsigned char)*c) && *c != '_' && *c != '-') {
			*error_r = xasprintf("ratelimit: limit \"%s\": a name of letters, digits, "
					     "'_' and '-'", l->name);
			return -1;
		}
	}
	snprintf(what, sizeof(what), "limit %s: key", l->name);
	if ((k = rl_pick(what, cfg_getstr(sec, "key"), rl_key_names, N_ELEMENTS(rl_key_names),
			 error_r)) < 0)
		return -1;
	snprintf(what, sizeof(what), "limit %s: phase", l->name);
	if ((p = rl_pick(what, cfg_getstr(sec, "phase"), phases, 5, error_r)) < 0)
		return -1;
	snprintf(what, sizeof(what), "limit %s: type", l->name);
	if ((t = rl_pick(what, cfg_getstr(sec, "type"), types, 2, error_r)) < 0)
		return -1;
	snprintf(what, sizeof(what), "limit %s: action", l->name);
	if ((a = rl_pick(what, cfg_getstr(sec, "action"), actions, 2, error_r)) < 0)
		return -1;
	l->key = (enum rl_keykind)k;
	l->phase = (enum phase)p;
	l->type = (enum rl_type)t;
	l->reject = a == 1;
	l->count = cfg_getint(sec, "count");
	l->period = cfg_getint(sec, "period");
	l->burst = cfg_getint(sec, "burst");
	l->bytes = cfg_getbool(sec, "bytes");
	l->v4_prefix = (int)cfg_getint(sec, "ipv4_prefix");
	l->v6_prefix = (int)cfg_getint(sec, "ipv6_prefix");
	l->shadow = cfg_getbool(sec, "shadow");
	l->text = xstrdup(cfg_getstr(sec, "text"));
	const char *oe = cfg_getstr(sec, "on_error");
	if (oe[0] == '\0')
		l->on_error = stage_on_error;
	else if (strcmp(oe, "accept") == 0)
		l->on_error = ON_ERROR_ACCEPT;
	else if (strcmp(oe, "tempfail") == 0)
		l->on_error = ON_ERROR_TEMPFAIL;
	else {
		*error_r = xasprintf("ratelimit: limit %s: on_error = \"%s\": accept or tempfail",
				     l->name, oe);
		return -1;
	}
	snprintf(what, sizeof(what), "limit %s: count", l->name);
	if (rl_range(what, l->count, 1, 1L << 40, error_r) < 0)
		return -1;
	snprintf(what, sizeof(what), "limit %s: period", l->name);
	if (rl_range(what, l->period, 1, 86400L * 366, error_r) < 0)
		return -1;
	snprintf(what, sizeof(what), "limit %s: burst", l->name);
	if (rl_range(what, l->burst, 0, 1L << 40, error_r) < 0)
		return -1;
	snprintf(what, sizeof(what), "limit %s: ipv4_prefix", l->name);
	if (rl_range(what, l->v4_prefix, 8, 32, error_r) < 0)
		return -1;
	snprintf(what, sizeof(what), "limit %s: ipv6_prefix", l->name);
	if (rl_range(what, l->v6_prefix, 16, 128, error_r) < 0)
		return -1;
	for (const char *c = l->text; *c != '\0'; c++) {
		if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e) {
			*error_r = xasprintf("ratelimit: limit %s: text: printable ASCII only", l->name);
			return -1;
		}
	}
	/* which keys exist in which phase */
	static const enum phase first_phase[] = {
		[RL_K_CLIENT] = PHASE_CONNECT, [RL_K_HELO] = PHASE_HELO, [RL_K_SENDER] = PHASE_MAIL,
		[RL_K_SENDER_DOMAIN] = PHASE_MAIL, [RL_K_RCPT] = PHASE_RCPT,
		[RL_K_SENDER_RCPT] = PHASE_RCPT,
	};
	if (l->phase < first_phase[l->key] ||
	    ((l->key == RL_K_RCPT || l->key == RL_K_SENDER_RCPT) && l->phase != PHASE_RCPT)) {
		*error_r = xasprintf("ratelimit: limit %s: key \"%s\" is not known at phase \"%s\"%s",
				     l->name, rl_key_names[l->key], phases[l->phase],
				     l->key == RL_K_RCPT || l->key == RL_K_SENDER_RCPT ?
				     " (recipient keys: phase \"rcpt\")" : "");
		return -1;
	}
	if (l->type == RL_T_CONCURRENCY && (l->phase != PHASE_CONNECT || l->key != RL_K_CLIENT)) {
		*error_r = xasprintf("ratelimit: limit %s: a concurrency limit counts connections: "
				     "phase \"connect\", key \"client\"", l->name);
		return -1;
	}
	if (l->bytes && l->phase != PHASE_DATA) {
		*error_r = xasprintf("ratelimit: limit %s: bytes = true needs phase \"data\"", l->name);
		return -1;
	}
	if (l->burst == 0)
		l->burst = l->count;
	l->interval_ms = (double)l->period * 1000.0 / (double)l->count;
	l->tolerance_ms = l->interval_ms * (double)l->burst;
	return 0;
}

static void
rl_free(struct rl_stage *st)
{
	for (size_t i = 0; i < st->n_limits; i++) {
		free(st->limits[i].name);
		free(st->limits[i].text);
	}
	free(st->limits);
	for (size_t i = 0; i < st->n_grey_domains; i++)
		free(st->grey_domains[i]);
	free(st->grey_domains);
	free(st->redis_text);
	free(st->redis_password);
	free(st->prefix);
	free(st);
}

static int
rl_parse_redis(struct rl_stage *st, char **error_r)
{
	const char *s = st->redis_text;

	if (s[0] == '\0')
		return 0;
	st->redis = true;
	if (strncmp(s, "unix:", 5) == 0) {
		if (s[5] != '/' || strlen(s + 5) >= 100) {
			*error_r = xasprintf("ratelimit: redis = \"%s\": unix:/absolute/path", s);
			return -1;
		}
		st->redis_unix = true;
		str_copy(st->redis_host, s + 5, sizeof(st->redis_host));
		return 0;
	}
	struct sockaddr_storage ss;
	socklen_t len;
	const char *why;
	if (net_parse_address(s, &ss, &len, &why) < 0) {
		*error_r = xasprintf("ratelimit: redis = \"%s\": %s (address:port, [v6]:port or "
				     "unix:/path)", s, why);
		return -1;
	}
	char host[INET6_ADDRSTRLEN];
	net_addr_str((const struct sockaddr *)&ss, host, sizeof(host));
	str_copy(st->redis_host, host, sizeof(st->redis_host));
	st->redis_port = ntohs(ss.ss_family == AF_INET6 ?
			       ((struct sockaddr_in6 *)&ss)->sin6_port :
			       ((struct sockaddr_in *)&ss)->sin_port);
	return 0;
}

static int
rl_create(cfg_t *section, const struct mx_config *cfg, struct stage **st_r, char **error_r)
{
	struct rl_stage *st = xcalloc(1, sizeof(*st));
	const char *oe = cfg_getstr(section, "on_error");
	enum on_error stage_on_error = oe != NULL && strcmp(oe, "tempfail") == 0 ?
				       ON_ERROR_TEMPFAIL : ON_ERROR_ACCEPT;

	(void)cfg;
	pthread_once(&rl_local_once, rl_local_init);
	pthread_once(&rl_sha_once, rl_sha_init);
	st->redis_text = xstrdup(cfg_getstr(section, "redis"));
	st->redis_password = xstrdup(cfg_getstr(section, "redis_password"));
	st->redis_db = cfg_getint(section, "redis_db");
	st->redis_timeout_ms = cfg_getint(section, "redis_timeout");
	st->slot_ttl_ms = cfg_getint(section, "slot_ttl") * 1000;
	st->prefix = xstrdup(cfg_getstr(section, "key_prefix"));
	st->shadow = cfg_getbool(section, "shadow");
	if (rl_parse_redis(st, error_r) < 0 ||
	    rl_range("redis_db", st->redis_db, 0, 1000000, error_r) < 0 ||
	    rl_range("redis_timeout", st->redis_timeout_ms, 10, 60000, error_r) < 0 ||
	    rl_range("slot_ttl", st->slot_ttl_ms / 1000, 60, 86400, error_r) < 0)
		goto fail;
	size_t n = cfg_size(section, "limit");
	if (n > RL_ITEMS_MAX - 1) {
		*error_r = xasprintf("ratelimit: %zu limits: at most %d", n, RL_ITEMS_MAX - 1);
		goto fail;
	}
	st->limits = xcalloc(n + 1, sizeof(*st->limits));
	for (size_t i = 0; i < n; i++) {
		st->n_limits++;
		if (rl_limit_parse(cfg_getnsec(section, "limit", i), stage_on_error,
				   &st->limits[i], error_r) < 0)
			goto fail;
	}
	cfg_t *g = cfg_getsec(section, "greylist");
	if (g != NULL) {
		st->n_grey_domains = cfg_size(g, "domains");
		st->grey_domains = xcalloc(st->n_grey_domains + 1, sizeof(*st->grey_domains));
		for (size_t i = 0; i < st->n_grey_domains; i++) {
			char *d = xstrdup(cfg_getnstr(g, "domains", i));
			for (char *c = d; *c != '\0'; c++)
				*c = (char)tolower((unsigned char)*c);
			st->grey_domains[i] = d;
		}
		st->grey_delay = cfg_getint(g, "delay");
		st->grey_window = cfg_getint(g, "window");
		st->grey_auto_allow = cfg_getint(g, "auto_allow");
		st->grey_expire = cfg_getint(g, "expire");
		st->grey_v4_prefix = (int)cfg_getint(g, "ipv4_prefix");
		st->grey_v6_prefix = (int)cfg_getint(g, "ipv6_prefix");
		if (rl_range("greylist.delay", st->grey_delay, 1, 86400, error_r) < 0 ||
		    rl_range("greylist.window", st->grey_window, 60, 86400 * 7, error_r) < 0 ||
		    rl_range("greylist.auto_allow", st->grey_auto_allow, 0, 1000000, error_r) < 0 ||
		    rl_range("greylist.expire", st->grey_expire, 3600, 86400 * 366, error_r) < 0 ||
		    rl_range("greylist.ipv4_prefix", st->grey_v4_prefix, 8, 32, error_r) < 0 ||
		    rl_range("greylist.ipv6_prefix", st->grey_v6_prefix, 16, 128, error_r) < 0)
			goto fail;
	}
	for (size_t i = 0; i < st->n_limits; i++)
		st->hdr.phases |= PHASE_BIT(st->limits[i].phase);
	if (st->n_grey_domains > 0)
		st->hdr.phases |= PHASE_BIT(PHASE_RCPT);
	/* a concurrency slot's deadline is refreshed at MAIL */
	for (size_t i = 0; i < st->n_limits; i++) {
		if (st->limits[i].type == RL_T_CONCURRENCY)
			st->hdr.phases |= PHASE_BIT(PHASE_MAIL);
	}
	if (st->n_limits == 0 && st->n_grey_domains == 0) {
		*error_r = xstrdup("ratelimit: no limit sections and no greylist.domains: "
				   "nothing to do");
		goto fail;
	}
	*st_r = &st->hdr;
	return 0;
fail:
	rl_free(st);
	return -1;
}

/* --------------------------------------------------------------- keys */

static void
rl_lower_into(char *out, size_t outsz, const char *s)
{
	size_t o = 0;

	for (; *s != '\0' && o + 1 < outsz; s++)
		out[o++] = (char)tolower((unsigned char)*s);
	out[o] = '\0';
}

/* The key of limit l for this check, or false when the check has nothing
 * to key on (no HELO yet, say). */
static bool
rl_limit_key(const struct rl_stage *st, const struct rl_limit *l, const struct filter_msg *msg,
	     char *out, size_t outsz)
{
	char v[RL_KEY_MAX - 100];
	const char *from = msg->mail_from;

	switch (l->key) {
	case RL_K_CLIENT:
		if (msg->client_addr == NULL ||
		    !rl_addr_prefix(msg->client_addr, l->v4_prefix, l->v6_prefix, v, sizeof(v)))
			return false;
		break;
	case RL_K_HELO:
		if (msg->helo == NULL)
			return false;
		rl_lower_into(v, sizeof(v), msg->helo);
		break;
	case RL_K_SENDER:
		if (from == NULL)
			return false;
		rl_lower_into(v, sizeof(v), from[0] != '\0' ? from : "<>");
		break;
	case RL_K_SENDER_DOMAIN: {
		if (from == NULL)
			return false;
		const char *at = strrchr(from, '@');
		rl_lower_into(v, sizeof(v), at != NULL ? at + 1 : "<>");
		break;
	}
	case RL_K_RCPT:
		if (msg->rcpt == NULL)
			return false;
		rl_lower_into(v, sizeof(v), msg->rcpt);
		break;
	case RL_K_SENDER_RCPT: {
		char a[330], b[330];
		if (msg->rcpt == NULL || from == NULL)
			return false;
		rl_lower_into(a, sizeof(a), from[0] != '\0' ? from : "<>");
		rl_lower_into(b, sizeof(b), msg->rcpt);
		if ((size_t)snprintf(v, sizeof(v), "%s>%s", a, b) >= sizeof(v))
			return false;
		break;
	}
	}
	return (size_t)snprintf(out, outsz, "%srl:%s:%s", st->prefix, l->name, v) < outsz;
}

/* Greylisting applies to this recipient? Then the triplet and client keys
 * (one hash tag: the client network, so a cluster keeps both on one node). */
static bool
rl_grey_keys(const struct rl_stage *st, const struct filter_msg *msg, char *triplet,
	     size_t tsz, char *client, size_t csz)
{
	char net[64], a[330], b[330];
	const char *at;
	bool on = false;

	if (st->n_grey_domains == 0 || msg->rcpt == NULL || msg->mail_from == NULL ||
	    (at = strrchr(msg->rcpt, '@')) == NULL)
		return false;
	for (size_t i = 0; i < st->n_grey_domains && !on; i++)
		on = strcmp(st->grey_domains[i], "*") == 0 || strcasecmp(st->grey_domains[i], at + 1) == 0;
	if (!on || !rl_addr_prefix(msg->client_addr, st->grey_v4_prefix, st->grey_v6_prefix,
				   net, sizeof(net)))
		return false;
	rl_lower_into(a, sizeof(a), msg->mail_from[0] != '\0' ? msg->mail_from : "<>");
	rl_lower_into(b, sizeof(b), msg->rcpt);
	return (size_t)snprintf(triplet, tsz, "%sgl:{%s}:%s>%s", st->prefix, net, a, b) < tsz &&
	       (size_t)snprintf(client, csz, "%sgl:{%s}:passes", st->prefix, net) < csz;
}

static int64_t
rl_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ requests */

enum rl_item_state { RL_ITEM_PENDING, RL_ITEM_DONE, RL_ITEM_ERROR };

struct rl_req;
struct rl_item {
	struct rl_req *req;
	int limit;               /* index, or -1: the greylist */
	enum rl_item_state state;
	bool allowed;
	long long retry_ms;
	int script;
	double cost;             /* 1, or the message's octets for a bytes limit */
	char key[RL_KEY_MAX], key2[RL_KEY_MAX];
	char argv_buf[4][32];
	bool resent;             /* NOSCRIPT: sent again with EVAL */
};

struct rl_conn; /* a loop's Redis connection */
struct rl_req {
	uint64_t call_id;
	struct rl_conn *rc;
	const struct rl_stage *st;
	struct event *timer;
	char txid[40], session[40];
	unsigned outstanding;
	bool finished;           /* the call got its answer or was cancelled */
	size_t n_items;
	struct rl_item items[RL_ITEMS_MAX];
};

struct rl_conn {
	const struct rl_stage *st;
	struct event_base *base;
	redisAsyncContext *ac;
	struct event *retry_ev;
	long backoff_ms;
	bool tearing_down;
};

static void rl_conn_connect(struct rl_conn *rc);

static void
rl_mark_down(const struct rl_stage *st, const char *why)
{
	metrics_dependency("redis", false);
	if (atomic_exchange(&rl_redis_down, 1) == 0)
		log_msg(LOG_LEVEL_WARN, "ratelimit: redis at %s unavailable (%s): limits follow "
			"their on_error (accept: in-process limits) until it is back",
			st->redis_text, why);
}

static void
rl_mark_up(const struct rl_stage *st)
{
	metrics_set_label(METRIC_DEPENDENCY_UP, "redis", 1);
	if (atomic_exchange(&rl_redis_down, 0) == 1)
		log_msg(LOG_LEVEL_INFO, "ratelimit: redis at %s is back", st->redis_text);
}

/* Drop the connection (its pending replies come back NULL) and make a new
 * one after the backoff. */
static void
rl_conn_drop(struct rl_conn *rc, const char *why)
{
	redisAsyncContext *ac = rc->ac;

	rl_mark_down(rc->st, why);
	rc->ac = NULL;
	if (ac != NULL) {
		ac->data = NULL;
		redisAsyncFree(ac);
	}
	if (!rc->tearing_down && rc->retry_ev != NULL &&
	    !evtimer_pending(rc->retry_ev, NULL)) {
		struct timeval tv = { .tv_sec = rc->backoff_ms / 1000,
				      .tv_usec = (rc->backoff_ms % 1000) * 1000 };
		evtimer_add(rc->retry_ev, &tv);
		rc->backoff_ms = rc->backoff_ms * 2 > RL_BACKOFF_MAX_MS ? RL_BACKOFF_MAX_MS :
				 rc->backoff_ms * 2;
	}
}

static void
rl_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	rl_conn_connect(arg);
}

static void
rl_on_connect(const redisAsyncContext *ac, int status)
{
	struct rl_conn *rc = ac->data;

	if (rc == NULL || status == REDIS_OK)
		return;
	/* hiredis frees the context after this returns */
	rc->ac = NULL;
	rl_conn_drop(rc, ac->errstr[0] != '\0' ? ac->errstr : "connect failed");
}

static void
rl_on_disconnect(const redisAsyncContext *ac, int status)
{
	struct rl_conn *rc = ac->data;

	(void)status;
	if (rc == NULL)
		return;
	rc->ac = NULL;
	rl_conn_drop(rc, ac->errstr[0] != '\0' ? ac->errstr : "connection closed");
}

static void
rl_auth_cb(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *reply = r;
	struct rl_conn *rc = ac->data;

	(void)privdata;
	if (rc == NULL || reply == NULL)
		return;
	if (reply->type == REDIS_REPLY_ERROR) {
		char why[200];
		snprintf(why, sizeof(why), "AUTH/SELECT refused: %.150s", reply->str);
		/* not from inside the callback: the timeouts drop it */
		rl_mark_down(rc->st, why);
	}
}

static void
rl_conn_connect(struct rl_conn *rc)
{
	const struct rl_stage *st = rc->st;
	redisAsyncContext *ac;

	if (rc->tearing_down || rc->ac != NULL)
		return;
	ac = st->redis_unix ? redisAsyncConnectUnix(st->redis_host) :
			      redisAsyncConnect(st->redis_host, st->redis_port);
	if (ac == NULL) {
		rl_conn_drop(rc, "out of memory");
		return;
	}
	if (ac->err != 0) {
		char why[200];
		snprintf(why, sizeof(why), "%.150s", ac->errstr);
		redisAsyncFree(ac);
		rl_conn_drop(rc, why);
		return;
	}
	ac->data = rc;
	redisLibeventAttach(ac, rc->base);
	redisAsyncSetConnectCallback(ac, rl_on_connect);
	redisAsyncSetDisconnectCallback(ac, rl_on_disconnect);
	rc->ac = ac;
	/* queued now, sent once connected, answered before anything else */
	if (st->redis_password[0] != '\0') {
		const char *argv[] = { "AUTH", st->redis_password };
		redisAsyncCommandArgv(ac, rl_auth_cb, NULL, 2, argv, NULL);
	}
	if (st->redis_db != 0) {
		char db[24];
		snprintf(db, sizeof(db), "%ld", st->redis_db);
		const char *argv[] = { "SELECT", db };
		redisAsyncCommandArgv(ac, rl_auth_cb, NULL, 2, argv, NULL);
	}
}

static int
rl_loop_init(struct stage *stage, const struct stage_env *env, void **loop_data_r,
	     char **error_r)
{
	struct rl_stage *st = (struct rl_stage *)stage;
	struct rl_conn *rc;

	(void)error_r;
	*loop_data_r = NULL;
	if (!st->redis)
		return 0;
	rc = xcalloc(1, sizeof(*rc));
	rc->st = st;
	rc->base = env->base;
	rc->backoff_ms = RL_BACKOFF_MIN_MS;
	rc->retry_ev = evtimer_new(env->base, rl_retry_cb, rc);
	rl_conn_connect(rc);
	*loop_data_r = rc;
	return 0;
}

static void
rl_loop_teardown(struct stage *stage, void *loop_data)
{
	struct rl_conn *rc = loop_data;

	(void)stage;
	if (rc == NULL)
		return;
	rc->tearing_down = true;
	if (rc->ac != NULL) {
		redisAsyncContext *ac = rc->ac;
		rc->ac = NULL;
		ac->data = NULL;
		redisAsyncFree(ac); /* pending replies come back NULL: their requests are cancelled */
	}
	event_free(rc->retry_ev);
	free(rc);
}

static void rl_req_finish(struct rl_req *req);

static void
rl_req_free(struct rl_req *req)
{
	if (req->timer != NULL)
		event_free(req->timer);
	free(req);
}

static void rl_send_item(struct rl_item *it, bool eval);

static void
rl_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *reply = r;
	struct rl_item *it = privdata;
	struct rl_req *req = it->req;

	(void)ac;
	if (reply != NULL && reply->type == REDIS_REPLY_ERROR &&
	    strncmp(reply->str, "NOSCRIPT", 8) == 0 && !it->resent && !req->finished &&
	    req->rc->ac != NULL) {
		/* the server forgot (or never had) the script: send it whole once */
		it->resent = true;
		rl_send_item(it, true);
		return;
	}
	if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
	    reply->element[0]->type == REDIS_REPLY_INTEGER &&
	    reply->element[1]->type == REDIS_REPLY_INTEGER) {
		it->state = RL_ITEM_DONE;
		it->allowed = reply->element[0]->integer == 1;
		it->retry_ms = reply->element[1]->integer;
		rl_mark_up(req->st);
	} else {
		it->state = RL_ITEM_ERROR;
		if (reply != NULL) {
			/* an outage like any other: logged once, not per message */
			char why[200];
			snprintf(why, sizeof(why), "it answered %s%.150s",
				 reply->type == REDIS_REPLY_ERROR ? "an error: " : "an unexpected reply",
				 reply->type == REDIS_REPLY_ERROR ? reply->str : "");
			rl_mark_down(req->st, why);
		}
	}
	if (--req->outstanding > 0)
		return;
	if (req->finished)
		rl_req_free(req);
	else
		rl_req_finish(req);
}

static void
rl_send_item(struct rl_item *it, bool eval)
{
	struct rl_req *req = it->req;
	const struct rl_script *s = &rl_scripts[it->script];
	const char *argv[10];
	size_t argvlen[10];
	int argc = 0, nkeys = it->key2[0] != '\0' ? 2 : 1;
	char nk[4];

	snprintf(nk, sizeof(nk), "%d", nkeys);
	argv[argc++] = eval ? "EVAL" : "EVALSHA";
	argv[argc++] = eval ? s->text : s->sha;
	argv[argc++] = nk;
	argv[argc++] = it->key;
	if (nkeys == 2)
		argv[argc++] = it->key2;
	for (size_t i = 0; i < 4 && it->argv_buf[i][0] != '\0'; i++)
		argv[argc++] = it->argv_buf[i];
	for (int i = 0; i < argc; i++)
		argvlen[i] = strlen(argv[i]);
	if (redisAsyncCommandArgv(req->rc->ac, rl_reply_cb, it, argc, argv, argvlen) != REDIS_OK) {
		it->state = RL_ITEM_ERROR;
		/* counted as answered at once */
		if (--req->outstanding == 0 && req->finished)
			rl_req_free(req);
	}
}

/* Decide one item that Redis could not: its limit's on_error. */
static void
rl_item_fallback(struct rl_item *it, int64_t now)
{
	const struct rl_stage *st = it->req->st;
	int64_t retry = 0;

	if (it->limit < 0) {
		/* greylisting without its shared state: the in-process one */
		it->allowed = rl_local_greylist(rl_table, it->key, it->key2, now,
						st->grey_delay * 1000, st->grey_window * 1000,
						st->grey_expire * 1000, st->grey_auto_allow, &retry);
		it->retry_ms = retry;
		return;
	}
	const struct rl_limit *l = &st->limits[it->limit];
	if (l->type == RL_T_CONCURRENCY) {
		long held;
		it->allowed = rl_local_acquire(rl_table, it->key, it->req->session, l->count, now,
					       st->slot_ttl_ms, &held);
		it->retry_ms = 0;
	} else {
		it->allowed = rl_local_rate(rl_table, it->key, now, l->interval_ms, l->tolerance_ms,
					    it->cost, &retry);
		it->retry_ms = retry;
	}
}

/* Every item decided (or failed): the call's answer. */
static void
rl_req_answer(struct rl_req *req, struct stage_call *call)
{
	const struct rl_stage *st = req->st;
	struct filter_result *res = &call->result;
	int64_t now = rl_now_ms();
	bool refused = false;

	memset(res, 0, sizeof(*res));
	res->verdict = VERDICT_CONTINUE;
	for (size_t i = 0; i < req->n_items; i++) {
		struct rl_item *it = &req->items[i];
		const struct rl_limit *l = it->limit >= 0 ? &st->limits[it->limit] : NULL;
		enum on_error oe = l != NULL ? l->on_error : st->hdr.on_error;
		bool shadow = st->shadow || (l != NULL && l->shadow);
		const char *name = l != NULL ? l->name : "greylist";

		if (it->state != RL_ITEM_DONE) {
			if (oe == ON_ERROR_TEMPFAIL) {
				if (!shadow && !refused) {
					refused = true;
					res->verdict = VERDICT_TEMPFAIL;
					res->code = 451;
					str_copy(res->enhanced, "4.7.1", sizeof(res->enhanced));
					str_copy(res->text, "Rate limit service unavailable, try again later",
						 sizeof(res->text));
				}
				continue;
			}
			rl_item_fallback(it, now);
		}
		if (it->allowed)
			continue;
		long secs = (long)((it->retry_ms + 999) / 1000);
		char rule[96];
		snprintf(rule, sizeof(rule), "%s_%s", l != NULL ? "RATELIMIT" : "GREYLIST",
			 l != NULL ? l->name : "TRIPLET");
		filter_tx_add_score(call->fx, call->stage->name, rule, 0.0, NULL);
		if (shadow) {
			log_msg(LOG_LEVEL_INFO, "ratelimit: %s: shadow: would refuse (%s, key %s%s)",
				req->txid[0] != '\0' ? req->txid : req->session, name, it->key,
				it->state == RL_ITEM_DONE ? "" : ", in-process");
			continue;
		}
		if (refused)
			continue;
		refused = true;
		log_msg(LOG_LEVEL_INFO, "ratelimit: %s: over %s (key %s%s), retry in %lds",
			req->txid[0] != '\0' ? req->txid : req->session, name, it->key,
			it->state == RL_ITEM_DONE ? "" : ", in-process", secs);
		if (l == NULL) {
			res->verdict = VERDICT_TEMPFAIL;
			res->code = 451;
			str_copy(res->enhanced, "4.7.1", sizeof(res->enhanced));
			if (secs < 1)
				secs = 1;
			snprintf(res->text, sizeof(res->text),
				 "Greylisted: please try again in %ld second%s", secs, secs == 1 ? "" : "s");
			continue;
		}
		res->verdict = l->reject ? VERDICT_REJECT : VERDICT_TEMPFAIL;
		res->code = l->reject ? 550 : 451;
		str_copy(res->enhanced, l->reject ? "5.7.1" : "4.7.1", sizeof(res->enhanced));
		if (l->text[0] != '\0')
			str_copy(res->text, l->text, sizeof(res->text));
		else if (l->type == RL_T_CONCURRENCY)
			snprintf(res->text, sizeof(res->text), "Too many connections (%s), try again later",
				 l->name);
		else if (l->reject)
			snprintf(res->text, sizeof(res->text), "Rate limit exceeded (%s)", l->name);
		else
			snprintf(res->text, sizeof(res->text),
				 "Rate limit exceeded (%s), try again in %ld second%s", l->name,
				 secs > 0 ? secs : 1, secs > 1 ? "s" : "");
	}
}

static void
rl_req_finish(struct rl_req *req)
{
	struct stage_call *call = stage_call_find(req->call_id);

	req->finished = true;
	if (req->timer != NULL)
		evtimer_del(req->timer);
	if (call != NULL) {
		rl_req_answer(req, call);
		call->stage_data = NULL;
		stage_call_done(call, CHECK_DONE);
	}
	if (req->outstanding == 0)
		rl_req_free(req);
}

static void
rl_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rl_req *req = arg;
	struct rl_conn *rc = req->rc;

	(void)fd;
	(void)what;
	/* answer now with what is known (the rest by on_error), then drop
	 * the slow connection: its pending replies come back NULL and the
	 * last one frees req */
	req->outstanding++; /* keep req across the drop */
	rl_req_finish(req);
	rl_conn_drop(rc, "timeout");
	if (--req->outstanding == 0)
		rl_req_free(req);
}

/* ------------------------------------------------------------- checks */

static void
rl_item_args(struct rl_item *it, const struct rl_stage *st, const struct rl_limit *l, double cost,
	     const char *session)
{
	memset(it->argv_buf, 0, sizeof(it->argv_buf));
	if (l == NULL) {
		it->script = RL_S_GREY;
		snprintf(it->argv_buf[0], 32, "%ld", st->grey_delay * 1000);
		snprintf(it->argv_buf[1], 32, "%ld", st->grey_window * 1000);
		snprintf(it->argv_buf[2], 32, "%ld", st->grey_expire * 1000);
		snprintf(it->argv_buf[3], 32, "%ld", st->grey_auto_allow);
	} else if (l->type == RL_T_CONCURRENCY) {
		it->script = RL_S_SLOT;
		snprintf(it->argv_buf[0], 32, "%ld", l->count);
		snprintf(it->argv_buf[1], 32, "%.31s", session);
		snprintf(it->argv_buf[2], 32, "%ld", st->slot_ttl_ms);
	} else {
		it->script = RL_S_RATE;
		snprintf(it->argv_buf[0], 32, "%.6f", l->interval_ms);
		snprintf(it->argv_buf[1], 32, "%.6f", l->tolerance_ms);
		snprintf(it->argv_buf[2], 32, "%.0f", cost);
	}
}

/* Fire and forget: a command whose answer nobody waits for. */
static void
rl_ignore_cb(redisAsyncContext *ac, void *r, void *privdata)
{
	(void)ac;
	(void)r;
	(void)privdata;
}

static void
rl_refresh_slots(const struct rl_stage *st, struct rl_conn *rc, const struct filter_msg *msg)
{
	int64_t now = rl_now_ms();

	for (size_t i = 0; i < st->n_limits; i++) {
		const struct rl_limit *l = &st->limits[i];
		char key[RL_KEY_MAX], ttl[24];

		if (l->type != RL_T_CONCURRENCY || !rl_limit_key(st, l, msg, key, sizeof(key)))
			continue;
		rl_local_refresh(rl_table, key, msg->session_id, now, st->slot_ttl_ms);
		if (rc == NULL || rc->ac == NULL)
			continue;
		snprintf(ttl, sizeof(ttl), "%ld", st->slot_ttl_ms);
		const char *argv[] = { "EVAL", rl_script_refresh, "1", key, msg->session_id, ttl };
		redisAsyncCommandArgv(rc->ac, rl_ignore_cb, NULL, 6, argv, NULL);
	}
}

static enum check_status
rl_check(struct stage *stage, struct stage_call *call)
{
	const struct rl_stage *st = (const struct rl_stage *)stage;
	const struct filter_msg *msg = call->msg;
	struct rl_conn *rc = call->loop_data;
	struct rl_req *req = xcalloc(1, sizeof(*req));

	req->st = st;
	req->rc = rc;
	req->call_id = call->id;
	str_copy(req->txid, msg->txid != NULL ? msg->txid : "", sizeof(req->txid));
	str_copy(req->session, msg->session_id != NULL ? msg->session_id : "", sizeof(req->session));
	if (call->phase == PHASE_MAIL)
		rl_refresh_slots(st, rc, msg);
	for (size_t i = 0; i < st->n_limits; i++) {
		const struct rl_limit *l = &st->limits[i];
		struct rl_item *it = &req->items[req->n_items];

		if (l->phase != call->phase || !rl_limit_key(st, l, msg, it->key, sizeof(it->key)))
			continue;
		it->req = req;
		it->limit = (int)i;
		it->cost = l->bytes && msg->body != NULL ? (double)msgbody_size(msg->body) : 1.0;
		rl_item_args(it, st, l, it->cost, req->session);
		req->n_items++;
	}
	if (call->phase == PHASE_RCPT) {
		struct rl_item *it = &req->items[req->n_items];
		if (rl_grey_keys(st, msg, it->key, sizeof(it->key), it->key2, sizeof(it->key2))) {
			it->req = req;
			it->limit = -1;
			it->cost = 1;
			rl_item_args(it, st, NULL, 1, req->session);
			req->n_items++;
		}
	}
	if (req->n_items == 0) {
		free(req);
		return CHECK_DONE;
	}
	if (rc == NULL || rc->ac == NULL) {
		/* in process: no Redis configured, or it is down */
		for (size_t i = 0; i < req->n_items; i++)
			req->items[i].state = st->redis ? RL_ITEM_ERROR : RL_ITEM_PENDING;
		if (!st->redis) {
			int64_t now = rl_now_ms();
			for (size_t i = 0; i < req->n_items; i++) {
				rl_item_fallback(&req->items[i], now);
				req->items[i].state = RL_ITEM_DONE;
			}
		}
		rl_req_answer(req, call);
		free(req);
		return CHECK_DONE;
	}
	req->timer = evtimer_new(call->base, rl_timeout_cb, req);
	struct timeval tv = { .tv_sec = st->redis_timeout_ms / 1000,
			      .tv_usec = (st->redis_timeout_ms % 1000) * 1000 };
	evtimer_add(req->timer, &tv);
	req->outstanding = (unsigned)req->n_items;
	for (size_t i = 0; i < req->n_items; i++)
		rl_send_item(&req->items[i], false);
	if (req->outstanding == 0) {
		/* nothing could be queued: on_error for all */
		req->outstanding = 1;
		rl_req_answer(req, call);
		rl_req_free(req);
		return CHECK_DONE;
	}
	call->stage_data = req;
	return CHECK_PENDING;
}

static void
rl_cancel(struct stage *stage, struct stage_call *call)
{
	struct rl_req *req = call->stage_data;

	(void)stage;
	call->stage_data = NULL;
	if (req == NULL)
		return;
	req->finished = true;
	if (req->timer != NULL)
		evtimer_del(req->timer);
	/* replies still to come free it */
}

static void
rl_session_end(struct stage *stage, const struct stage_env *env, void *loop_data,
	       const struct filter_msg *msg)
{
	const struct rl_stage *st = (const struct rl_stage *)stage;
	struct rl_conn *rc = loop_data;

	(void)env;
	if (msg->session_id == NULL)
		return;
	for (size_t i = 0; i < st->n_limits; i++) {
		const struct rl_limit *l = &st->limits[i];
		char key[RL_KEY_MAX];

		if (l->type != RL_T_CONCURRENCY || !rl_limit_key(st, l, msg, key, sizeof(key)))
			continue;
		rl_local_release(rl_table, key, msg->session_id);
		if (rc != NULL && rc->ac != NULL) {
			const char *argv[] = { "ZREM", key, msg->session_id };
			redisAsyncCommandArgv(rc->ac, rl_ignore_cb, NULL, 3, argv, NULL);
		}
	}
}

static void
rl_destroy(struct stage *stage)
{
	rl_free((struct rl_stage *)stage);
}

const struct stage_ops ratelimit_stage_ops = {
	.name = "ratelimit",
	.phases = PHASE_BIT(PHASE_CONNECT) | PHASE_BIT(PHASE_HELO) | PHASE_BIT(PHASE_MAIL) |
		  PHASE_BIT(PHASE_RCPT) | PHASE_BIT(PHASE_DATA),
	.default_on_error = ON_ERROR_ACCEPT,
	.opts = rl_opts,
	.create = rl_create,
	.loop_init = rl_loop_init,
	.loop_teardown = rl_loop_teardown,
	.check = rl_check,
	.cancel = rl_cancel,
	.session_end = rl_session_end,
	.destroy = rl_destroy,
};
