/*
 * ratelimit_local.c — the in-process limiter (see ratelimit.h).
 *
 * One chained hash table of entries keyed by their full key string, under
 * one mutex: a lookup is a hash, a short chain walk and a few arithmetic
 * operations, so the lock is held for well under a microsecond. Every
 * entry has an expiry (when its state no longer matters); expired entries
 * are dropped when met in a chain and swept whole when the table is full.
 */
#include "config.h"

#include <arpa/inet.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filters/ratelimit.h"
#include "lib/lib.h"

#define RL_MEMBERS_MAX 4096 /* slots one concurrency key can hold */

struct rl_member {
	char *id;
	int64_t deadline;
};

enum rl_kind { RL_ENTRY_RATE, RL_ENTRY_SLOTS, RL_ENTRY_TRIPLET, RL_ENTRY_COUNT };

struct rl_entry {
	struct rl_entry *next;
	uint64_t hash;
	char *key;
	enum rl_kind kind;
	int64_t expires;
	double tat;                 /* rate */
	struct rl_member *members;  /* slots */
	size_t n_members;
	int64_t first;              /* triplet: first seen, -1 = passed */
	long count;                 /* count: triplets passed */
};

struct rl_local {
	pthread_mutex_t lock;
	struct rl_entry **buckets;
	size_t n_buckets, count, max_keys;
	unsigned sweep_cursor;
};

static uint64_t
rl_hash(const char *s)
{
	uint64_t h = 14695981039346656037ULL;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

struct rl_local *
rl_local_new(size_t max_keys)
{
	struct rl_local *t = xcalloc(1, sizeof(*t));

	pthread_mutex_init(&t->lock, NULL);
	t->max_keys = max_keys > 0 ? max_keys : 1;
	t->n_buckets = 64;
	while (t->n_buckets < t->max_keys && t->n_buckets < (1u << 22))
		t->n_buckets <<= 1;
	t->buckets = xcalloc(t->n_buckets, sizeof(*t->buckets));
	return t;
}

static void
rl_entry_free(struct rl_entry *e)
{
	for (size_t i = 0; i < e->n_members; i++)
		free(e->members[i].id);
	free(e->members);
	free(e->key);
	free(e);
}

void
rl_local_free(struct rl_local **tp)
{
	struct rl_local *t = *tp;

	*tp = NULL;
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->n_buckets; i++) {
		struct rl_entry *e = t->buckets[i], *next;
		for (; e != NULL; e = next) {
			next = e->next;
			rl_entry_free(e);
		}
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

size_t
rl_local_count(struct rl_local *t)
{
	size_t n;

	pthread_mutex_lock(&t->lock);
	n = t->count;
	pthread_mutex_unlock(&t->lock);
	return n;
}

/* Drop the expired entries of one chain. */
static void
rl_sweep_bucket(struct rl_local *t, size_t b, int64_t now)
{
	struct rl_entry **pp = &t->buckets[b];

	while (*pp != NULL) {
		struct rl_entry *e = *pp;
		if (e->expires <= now) {
			*pp = e->next;
			rl_entry_free(e);
			t->count--;
		} else {
			pp = &e->next;
		}
	}
}

/* Room for one more entry: sweep everything expired; if that is not
 * enough, drop whole chains, round robin, until there is. */
static void
rl_make_room(struct rl_local *t, int64_t now)
{
	if (t->count < t->max_keys)
		return;
	for (size_t b = 0; b < t->n_buckets; b++)
		rl_sweep_bucket(t, b, now);
	while (t->count >= t->max_keys) {
		size_t b = t->sweep_cursor++ % t->n_buckets;
		struct rl_entry *e = t->buckets[b], *next;
		t->buckets[b] = NULL;
		for (; e != NULL; e = next) {
			next = e->next;
			rl_entry_free(e);
			t->count--;
		}
	}
}

/* The live entry for key (of that kind), or a new zeroed one when create. */
static struct rl_entry *
rl_get(struct rl_local *t, const char *key, enum rl_kind kind, int64_t now, bool create)
{
	uint64_t h = rl_hash(key) ^ (uint64_t)kind;
	size_t b = h & (t->n_buckets - 1);

	rl_sweep_bucket(t, b, now);
	for (struct rl_entry *e = t->buckets[b]; e != NULL; e = e->next) {
		if (e->hash == h && e->kind == kind && strcmp(e->key, key) == 0)
			return e;
	}
	if (!create)
		return NULL;
	rl_make_room(t, now);
	struct rl_entry *e = xcalloc(1, sizeof(*e));
	e->hash = h;
	e->key = xstrdup(key);
	e->kind = kind;
	e->next = t->buckets[b];
	t->buckets[b] = e;
	t->count++;
	return e;
}

bool
rl_local_rate(struct rl_local *t, const char *key, int64_t now, double interval,
	      double tolerance, double cost, int64_t *retry_ms_r)
{
	bool ok;

	pthread_mutex_lock(&t->lock);
	struct rl_entry *e = rl_get(t, key, RL_ENTRY_RATE, now, true);
	double tat = e->tat > (double)now ? e->tat : (double)now;
	double new_tat = tat + interval * cost;
	double allow_at = new_tat - tolerance;

	if (allow_at > (double)now) {
		ok = false;
		*retry_ms_r = (int64_t)ceil(allow_at - (double)now);
		if (e->tat == 0) /* a new entry that never passed: keep nothing */
			e->expires = now;
	} else {
		ok = true;
		*retry_ms_r = 0;
		e->tat = new_tat;
		e->expires = (int64_t)ceil(new_tat) + 1;
	}
	pthread_mutex_unlock(&t->lock);
	return ok;
}

bool
rl_local_acquire(struct rl_local *t, const char *key, const char *member, long max,
		 int64_t now, int64_t ttl, long *held_r)
{
	bool ok = false;

	pthread_mutex_lock(&t->lock);
	struct rl_entry *e = rl_get(t, key, RL_ENTRY_SLOTS, now, true);
	/* expired slots go first */
	size_t o = 0;
	for (size_t i = 0; i < e->n_members; i++) {
		if (e->members[i].deadline <= now)
			free(e->members[i].id);
		else
			e->members[o++] = e->members[i];
	}
	e->n_members = o;
	for (size_t i = 0; i < e->n_members; i++) {
		if (strcmp(e->members[i].id, member) == 0) {
			e->members[i].deadline = now + ttl;
			ok = true;
			break;
		}
	}
	if (!ok && (long)e->n_members < max && e->n_members < RL_MEMBERS_MAX) {
		e->members = xrealloc(e->members, (e->n_members + 1) * sizeof(*e->members));
		e->members[e->n_members].id = xstrdup(member);
		e->members[e->n_members].deadline = now + ttl;
		e->n_members++;
		ok = true;
	}
	*held_r = (long)e->n_members;
	int64_t last = now;
	for (size_t i = 0; i < e->n_members; i++) {
		if (e->members[i].deadline > last)
			last = e->members[i].deadline;
	}
	e->expires = last;
	pthread_mutex_unlock(&t->lock);
	return ok;
}

static void
rl_member_set(struct rl_local *t, const char *key, const char *member, bool release,
	      int64_t now, int64_t ttl)
{
	pthread_mutex_lock(&t->lock);
	/* an entry kept by expiry only: "now" 0 never sweeps a live one */
	struct rl_entry *e = rl_get(t, key, RL_ENTRY_SLOTS, release ? 0 : now, false);
	if (e != NULL) {
		for (size_t i = 0; i < e->n_members; i++) {
			if (strcmp(e->members[i].id, member) != 0)
				continue;
			if (release) {
				free(e->members[i].id);
				e->members[i] = e->members[--e->n_members];
			} else {
				e->members[i].deadline = now + ttl;
				if (e->expires < now + ttl)
					e->expires = now + ttl;
			}
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
}

void
rl_local_release(struct rl_local *t, const char *key, const char *member)
{
	rl_member_set(t, key, member, true, 0, 0);
}

void
rl_local_refresh(struct rl_local *t, const char *key, const char *member, int64_t now,
		 int64_t ttl)
{
	rl_member_set(t, key, member, false, now, ttl);
}

bool
rl_local_greylist(struct rl_local *t, const char *triplet_key, const char *client_key,
		  int64_t now, int64_t delay, int64_t window, int64_t expire, long auto_allow,
		  int64_t *retry_ms_r)
{
	bool ok;

	pthread_mutex_lock(&t->lock);
	*retry_ms_r = 0;
	struct rl_entry *c = rl_get(t, client_key, RL_ENTRY_COUNT, now, false);
	if (c != NULL && auto_allow > 0 && c->count >= auto_allow) {
		c->expires = now + expire;
		pthread_mutex_unlock(&t->lock);
		return true;
	}
	struct rl_entry *e = rl_get(t, triplet_key, RL_ENTRY_TRIPLET, now, true);
	if (e->first == 0) { /* new */
		e->first = now;
		e->expires = now + delay + window;
		*retry_ms_r = delay;
		ok = false;
	} else if (e->first < 0) { /* passed before */
		e->expires = now + expire;
		ok = true;
	} else if (now - e->first < delay) {
		*retry_ms_r = delay - (now - e->first);
		ok = false;
	} else {
		e->first = -1;
		e->expires = now + expire;
		c = rl_get(t, client_key, RL_ENTRY_COUNT, now, true);
		c->count++;
		c->expires = now + expire;
		ok = true;
	}
	pthread_mutex_unlock(&t->lock);
	return ok;
}

bool
rl_addr_prefix(const char *addr, int v4_prefix, int v6_prefix, char *out, size_t outsz)
{
	unsigned char a[16];
	char text[INET6_ADDRSTRLEN];
	int family, bits, prefix;

	if (inet_pton(AF_INET, addr, a) == 1) {
		family = AF_INET;
		bits = 32;
		prefix = v4_prefix;
	} else if (inet_pton(AF_INET6, addr, a) == 1) {
		family = AF_INET6;
		bits = 128;
		prefix = v6_prefix;
	} else {
		return false;
	}
	if (prefix < 0 || prefix > bits)
		prefix = bits;
	for (int i = 0; i < bits / 8; i++) {
		int keep = prefix - i * 8;
		if (keep >= 8)
			continue;
		a[i] &= keep <= 0 ? 0 : (unsigned char)(0xff << (8 - keep));
	}
	if (inet_ntop(family, a, text, sizeof(text)) == NULL)
		return false;
	if (prefix == bits)
		return (size_t)snprintf(out, outsz, "%s", text) < outsz;
	return (size_t)snprintf(out, outsz, "%s/%d", text, prefix) < outsz;
}
