/*
 * ratelimit.h — the ratelimit stage's in-process limiter (ratelimit_local.c)
 * and the key helpers the stage and its unit tests share.
 *
 * The same three algorithms as the Lua scripts the stage runs in Redis, so
 * that an instance without Redis (or with Redis down) limits the same way,
 * for itself alone:
 *   - rate: GCRA (the "generic cell rate algorithm"): a key's state is its
 *     theoretical arrival time (TAT). A request of cost c is allowed when
 *     TAT + c*interval - tolerance <= now, and then moves TAT on by
 *     c*interval; interval = period/count, tolerance = burst*interval, so
 *     `burst` requests pass at once from idle and then one every interval;
 *   - concurrency: the members (session ids) holding a slot, each with a
 *     deadline, so a slot whose release was lost expires by itself;
 *   - greylisting: a triplet's first-seen time (or "passed"), and per
 *     client network the number of triplets that passed.
 * Times are milliseconds, given by the caller (the stage passes the real
 * clock, the unit tests their own). The table is shared by every loop
 * thread under one mutex, bounded to max_keys entries: when it is full the
 * expired entries are swept, and if that is not enough, some live ones are
 * dropped (a key flood can make the in-process limits forget, never grow
 * memory without bound).
 */
#ifndef MXGUARD_RATELIMIT_H
#define MXGUARD_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rl_local;
struct rl_local *rl_local_new(size_t max_keys);
void rl_local_free(struct rl_local **t);
size_t rl_local_count(struct rl_local *t);

/* GCRA. true when allowed; else *retry_ms_r says when it would be. */
bool rl_local_rate(struct rl_local *t, const char *key, int64_t now_ms, double interval_ms,
		   double tolerance_ms, double cost, int64_t *retry_ms_r);
/* Take a slot for member (a session id) unless max are held; a member that
 * holds one already refreshes its deadline. *held_r: slots held after. */
bool rl_local_acquire(struct rl_local *t, const char *key, const char *member, long max,
		      int64_t now_ms, int64_t ttl_ms, long *held_r);
void rl_local_release(struct rl_local *t, const char *key, const char *member);
/* Refresh member's deadline if it holds a slot (a long session). */
void rl_local_refresh(struct rl_local *t, const char *key, const char *member, int64_t now_ms,
		      int64_t ttl_ms);
/* Greylisting: true when the triplet may pass (client allowed, or first
 * seen at least delay ago and no more than delay + window ago); else
 * *retry_ms_r is the time left. A triplet that passes is remembered for
 * expire_ms, and counts towards auto_allow for its client key. */
bool rl_local_greylist(struct rl_local *t, const char *triplet_key, const char *client_key,
		       int64_t now_ms, int64_t delay_ms, int64_t window_ms, int64_t expire_ms,
		       long auto_allow, int64_t *retry_ms_r);

/* "192.0.2.0/24" for "192.0.2.77" and prefix 24 (IPv4) or the /prefix of
 * an IPv6 address in its compressed text form. false for text that is not
 * an address. */
bool rl_addr_prefix(const char *addr, int v4_prefix, int v6_prefix, char *out, size_t outsz);

#endif
