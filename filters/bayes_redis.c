/*
 * bayes_redis.c — the classifier's store in Redis, so every instance
 * shares what was learnt (bayes section: redis = "host:port" |
 * "unix:/path"). A blocking hiredis context with a timeout, used on the
 * worker pool (the stage's scan-lane job) and by mxguardctl: the same
 * place the SQLite store does its blocking reads, which keeps the stage
 * one code path (documented in doc/learning.md).
 *
 * Keys, for a scope ("site", or "user:local@domain") under the prefix:
 *   PREFIX SCOPE ":s"     hash: token hash (8 octets, binary) -> spam count
 *   PREFIX SCOPE ":h"     hash: token hash -> ham count
 *   PREFIX SCOPE ":meta"  hash: nspam, nham, counter
 *   PREFIX SCOPE ":seen"  hash: digest (32 octets) -> class "0"/"1"
 * A learn is one Lua script (EVAL), so the digest check, the counts and the
 * totals change atomically, whichever instance learns. Redis 7.0 has no
 * per-field expiry: the store is bounded by bayes_store_expire() only in
 * SQLite; in Redis it grows with the vocabulary (doc/learning.md).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "filters/bayes.h"
#include "lib/lib.h"

struct bayes_redis {
	redisContext *rc;
	char *ks, *kh, *kmeta, *kseen;
	char *where;
};

static const char learn_lua[] =
	"local was = redis.call('HGET', KEYS[4], ARGV[1])\n"
	"local function apply(c, d)\n"
	"  local key = (c == '1') and KEYS[1] or KEYS[2]\n"
	"  for i = 4, #ARGV do\n"
	"    local v = redis.call('HINCRBY', key, ARGV[i], d)\n"
	"    if v <= 0 then redis.call('HDEL', key, ARGV[i]) end\n"
	"  end\n"
	"  local n = redis.call('HINCRBY', KEYS[3], (c == '1') and 'nspam' or 'nham', d)\n"
	"  if n < 0 then redis.call('HSET', KEYS[3], (c == '1') and 'nspam' or 'nham', 0) end\n"
	"end\n"
	"if ARGV[3] == '1' then\n"
	"  if not was then return 4 end\n"
	"  apply(was, -1)\n"
	"  redis.call('HDEL', KEYS[4], ARGV[1])\n"
	"  return 3\n"
	"end\n"
	"if was == ARGV[2] then return 2 end\n"
	"local r = 0\n"
	"if was then apply(was, -1); r = 1 end\n"
	"apply(ARGV[2], 1)\n"
	"redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])\n"
	"redis.call('HINCRBY', KEYS[3], 'counter', 1)\n"
	"return r\n";

struct bayes_redis *bayes_redis_open(const char *addr, const char *prefix, const char *scope,
				     long timeout_ms, char **error_r)
{
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	struct bayes_redis *r;
	redisContext *rc;

	if (strncmp(addr, "unix:", 5) == 0) {
		rc = redisConnectUnixWithTimeout(addr + 5, tv);
	} else {
		char host[256];
		const char *colon = strrchr(addr, ':');
		size_t hl = colon != NULL ? (size_t)(colon - addr) : 0;
		if (colon == NULL || hl == 0 || hl >= sizeof(host) || colon[1] == '\0') {
			*error_r = xasprintf("redis = \"%s\": address:port, [v6]:port or unix:/path",
					     addr);
			return NULL;
		}
		if (addr[0] == '[' && hl >= 2 && addr[hl - 1] == ']') {
			memcpy(host, addr + 1, hl - 2);
			host[hl - 2] = '\0';
		} else {
			memcpy(host, addr, hl);
			host[hl] = '\0';
		}
		rc = redisConnectWithTimeout(host, atoi(colon + 1), tv);
	}
	if (rc == NULL || rc->err) {
		*error_r = xasprintf("redis %s: %s", addr, rc != NULL ? rc->errstr : "out of memory");
		if (rc != NULL)
			redisFree(rc);
		return NULL;
	}
	redisSetTimeout(rc, tv);
	r = xcalloc(1, sizeof(*r));
	r->rc = rc;
	r->where = xasprintf("redis %s %s%s", addr, prefix, scope);
	r->ks = xasprintf("%s%s:s", prefix, scope);
	r->kh = xasprintf("%s%s:h", prefix, scope);
	r->kmeta = xasprintf("%s%s:meta", prefix, scope);
	r->kseen = xasprintf("%s%s:seen", prefix, scope);
	return r;
}

void bayes_redis_close(struct bayes_redis **rp)
{
	struct bayes_redis *r = *rp;

	if (r == NULL)
		return;
	redisFree(r->rc);
	free(r->where);
	free(r->ks);
	free(r->kh);
	free(r->kmeta);
	free(r->kseen);
	free(r);
	*rp = NULL;
}

bool bayes_redis_broken(const struct bayes_redis *r)
{
	return r->rc->err != 0;
}

static uint32_t reply_u32(const redisReply *e)
{
	if (e == NULL)
		return 0;
	if (e->type == REDIS_REPLY_STRING) {
		long long v = strtoll(e->str, NULL, 10);
		return v > 0 ? (uint32_t)(v > UINT32_MAX ? UINT32_MAX : v) : 0;
	}
	if (e->type == REDIS_REPLY_INTEGER)
		return e->integer > 0 ? (uint32_t)e->integer : 0;
	return 0;
}

int bayes_redis_totals(struct bayes_redis *r, uint32_t *n_spam, uint32_t *n_ham)
{
	redisReply *rep = redisCommand(r->rc, "HMGET %s nspam nham", r->kmeta);
	int ret = -1;

	if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2) {
		*n_spam = reply_u32(rep->element[0]);
		*n_ham = reply_u32(rep->element[1]);
		ret = 0;
	}
	if (rep != NULL)
		freeReplyObject(rep);
	return ret;
}

int bayes_redis_lookup(struct bayes_redis *r, const uint64_t *hash, size_t n,
		       struct bayes_count *out)
{
	const char **argv;
	size_t *lens;
	int ret = 0;

	if (n == 0)
		return 0;
	argv = xcalloc(n + 2, sizeof(*argv));
	lens = xcalloc(n + 2, sizeof(*lens));
	argv[0] = "HMGET";
	lens[0] = 5;
	for (size_t i = 0; i < n; i++) {
		argv[i + 2] = (const char *)&hash[i];
		lens[i + 2] = sizeof(hash[i]);
	}
	/* both hashes in one round trip */
	for (int k = 0; k < 2; k++) {
		argv[1] = k == 0 ? r->ks : r->kh;
		lens[1] = strlen(argv[1]);
		if (redisAppendCommandArgv(r->rc, (int)(n + 2), argv, lens) != REDIS_OK)
			ret = -1;
	}
	for (int k = 0; k < 2; k++) {
		redisReply *rep = NULL;
		if (redisGetReply(r->rc, (void **)&rep) != REDIS_OK || rep == NULL) {
			ret = -1;
			break;
		}
		if (rep->type == REDIS_REPLY_ARRAY && rep->elements == n) {
			for (size_t i = 0; i < n; i++) {
				if (k == 0)
					out[i].spam = reply_u32(rep->element[i]);
				else
					out[i].ham = reply_u32(rep->element[i]);
			}
		} else {
			ret = -1;
		}
		freeReplyObject(rep);
	}
	free(argv);
	free(lens);
	return ret;
}

enum bayes_learn_result bayes_redis_learn(struct bayes_redis *r, const unsigned char digest[32],
					  const struct bayes_tokens *toks, enum bayes_class cls,
					  bool unlearn, char **error_r)
{
	size_t argc = 3 + 4 + 3 + toks->n;
	const char **argv = xcalloc(argc, sizeof(*argv));
	size_t *lens = xcalloc(argc, sizeof(*lens)), a = 0;
	enum bayes_learn_result res = BAYES_ERROR;
	static const enum bayes_learn_result codes[] = {
		BAYES_LEARNT, BAYES_RELEARNT, BAYES_ALREADY, BAYES_UNLEARNT, BAYES_NOT_LEARNT,
	};

#define ARG(s, l) do { argv[a] = (s); lens[a] = (l); a++; } while (0)
	ARG("EVAL", 4);
	ARG(learn_lua, strlen(learn_lua));
	ARG("4", 1);
	ARG(r->ks, strlen(r->ks));
	ARG(r->kh, strlen(r->kh));
	ARG(r->kmeta, strlen(r->kmeta));
	ARG(r->kseen, strlen(r->kseen));
	ARG((const char *)digest, 32);
	ARG(cls == BAYES_SPAM ? "1" : "0", 1);
	ARG(unlearn ? "1" : "0", 1);
	for (size_t i = 0; i < toks->n; i++)
		ARG((const char *)&toks->hash[i], sizeof(toks->hash[i]));
#undef ARG
	redisReply *rep = redisCommandArgv(r->rc, (int)a, argv, lens);
	if (rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer >= 0 &&
	    rep->integer < (long long)N_ELEMENTS(codes))
		res = codes[rep->integer];
	else
		*error_r = xasprintf("%s: learn: %s", r->where,
				     rep != NULL && rep->type == REDIS_REPLY_ERROR ? rep->str :
				     r->rc->err ? r->rc->errstr : "unexpected reply");
	if (rep != NULL)
		freeReplyObject(rep);
	free(argv);
	free(lens);
	return res;
}

static long long int_cmd(struct bayes_redis *r, const char *cmd, const char *key)
{
	redisReply *rep = redisCommand(r->rc, "%s %s", cmd, key);
	long long v = -1;

	if (rep != NULL && rep->type == REDIS_REPLY_INTEGER)
		v = rep->integer;
	if (rep != NULL)
		freeReplyObject(rep);
	return v;
}

static long long mem_usage(struct bayes_redis *r, const char *key)
{
	redisReply *rep = redisCommand(r->rc, "MEMORY USAGE %s SAMPLES 0", key);
	long long v = 0;

	if (rep != NULL && rep->type == REDIS_REPLY_INTEGER)
		v = rep->integer;
	if (rep != NULL)
		freeReplyObject(rep);
	return v;
}

int bayes_redis_stats(struct bayes_redis *r, struct bayes_store_stats *out)
{
	redisReply *rep;

	memset(out, 0, sizeof(*out));
	if (bayes_redis_totals(r, &out->n_spam, &out->n_ham) < 0)
		return -1;
	rep = redisCommand(r->rc, "HGET %s counter", r->kmeta);
	out->learn_counter = reply_u32(rep);
	if (rep != NULL)
		freeReplyObject(rep);
	long long s = int_cmd(r, "HLEN", r->ks), h = int_cmd(r, "HLEN", r->kh);
	long long n = int_cmd(r, "HLEN", r->kseen);
	if (s < 0 || h < 0 || n < 0)
		return -1;
	/* a token in both hashes counts twice here: the fields Redis holds */
	out->n_tokens = (uint64_t)(s + h);
	out->n_seen = (uint64_t)n;
	out->file_bytes = (uint64_t)(mem_usage(r, r->ks) + mem_usage(r, r->kh) +
				     mem_usage(r, r->kmeta) + mem_usage(r, r->kseen));
	return 0;
}
