/*
 * throttle.c — the login throttle of POP3 and IMAP: failed logins counted
 * per client address and per user name, in a fixed window, process-wide
 * (a client's connections land on every loop, and on either service).
 *
 * A fixed table of MAILBOX_THROTTLE_SLOTS entries behind one mutex, so an
 * attacker who tries many addresses or names cannot grow our memory: when
 * the table is full, the entry whose window began longest ago is reused.
 * A lookup is a linear probe from the key's hash over a few slots, then
 * a scan for the oldest when none is free; failures are rare next to the
 * cost of the crypt(3) call each one already made.
 */
#include "config.h"

#include <pthread.h>
#include <string.h>

#include "lib/lib.h"
#include "mailbox/mailbox.h"

#define THROTTLE_KEY_MAX 96
#define THROTTLE_PROBE 16

struct throttle_slot {
	char key[THROTTLE_KEY_MAX];
	long window_start;
	long failures;
};

static pthread_mutex_t throttle_lock = PTHREAD_MUTEX_INITIALIZER;
static struct throttle_slot throttle_slots[MAILBOX_THROTTLE_SLOTS];

static size_t throttle_hash(const char *key)
{
	uint64_t h = UINT64_C(1469598103934665603);
	for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++)
		h = (h ^ *p) * UINT64_C(1099511628211);
	return (size_t)(h % MAILBOX_THROTTLE_SLOTS);
}

/* The slot of key (under the lock), or NULL when create is false and it
 * has none. Expired windows count as empty. */
static struct throttle_slot *throttle_find(const char *key, bool create, long window, long now)
{
	char k[THROTTLE_KEY_MAX];
	size_t h;
	struct throttle_slot *free_slot = NULL, *oldest = NULL;

	str_copy(k, key, sizeof(k));
	h = throttle_hash(k);
	for (size_t i = 0; i < THROTTLE_PROBE; i++) {
		struct throttle_slot *s = &throttle_slots[(h + i) % MAILBOX_THROTTLE_SLOTS];
		bool expired = s->key[0] == '\0' || now - s->window_start >= window;
		if (s->key[0] != '\0' && strcmp(s->key, k) == 0) {
			if (expired) {
				s->failures = 0;
				s->window_start = now;
			}
			return s;
		}
		if (expired && free_slot == NULL)
			free_slot = s;
		if (oldest == NULL || s->window_start < oldest->window_start)
			oldest = s;
	}
	if (!create)
		return NULL;
	if (free_slot == NULL)
		free_slot = oldest;
	str_copy(free_slot->key, k, sizeof(free_slot->key));
	free_slot->window_start = now;
	free_slot->failures = 0;
	return free_slot;
}

bool mailbox_throttle_blocked(const char *key, long max, long window, long now)
{
	bool blocked;

	pthread_mutex_lock(&throttle_lock);
	struct throttle_slot *s = throttle_find(key, false, window, now);
	blocked = s != NULL && s->failures >= max;
	pthread_mutex_unlock(&throttle_lock);
	return blocked;
}

void mailbox_throttle_fail(const char *key, long window, long now)
{
	pthread_mutex_lock(&throttle_lock);
	struct throttle_slot *s = throttle_find(key, true, window, now);
	s->failures++;
	pthread_mutex_unlock(&throttle_lock);
}

void mailbox_throttle_reset(void)
{
	pthread_mutex_lock(&throttle_lock);
	memset(throttle_slots, 0, sizeof(throttle_slots));
	pthread_mutex_unlock(&throttle_lock);
}
