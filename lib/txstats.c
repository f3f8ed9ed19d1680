/*
 * txstats.c — the recent transactions and the verdicts over time
 * (lib/txstats.h): a ring of the last TXSTATS_RING transactions and, per
 * verdict class, a ring of TXSTATS_BUCKETS counters of TXSTATS_STEP
 * seconds, each slot stamped with the step it counts (a slot whose stamp
 * is old reads as 0 and is zeroed when counted into again). All of it in
 * static storage under one mutex: the memory never grows.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "lib/txstats.h"

static pthread_mutex_t tx_lock = PTHREAD_MUTEX_INITIALIZER;
static struct txstats_entry ring[TXSTATS_RING];
static size_t ring_next;  /* where the next one goes */
static size_t ring_count; /* how many are kept */
static long long bucket_step[TXSTATS_BUCKETS]; /* the step (time / STEP) a slot counts */
static unsigned bucket_count[TXSTATS_BUCKETS][TXSTATS__CLASSES];

static const char *const class_names[TXSTATS__CLASSES] = {
	"accept", "reject", "quarantine", "tempfail", "junk", "discard",
};

const char *
txstats_class_name(enum txstats_class c)
{
	return (unsigned)c < TXSTATS__CLASSES ? class_names[c] : "accept";
}

enum txstats_class
txstats_class_of(const char *action)
{
	if (action == NULL)
		return TXSTATS_ACCEPT;
	for (unsigned c = 0; c < TXSTATS__CLASSES; c++)
		if (strcmp(action, class_names[c]) == 0)
			return (enum txstats_class)c;
	return TXSTATS_ACCEPT; /* deliver, tag */
}

static void
copy_field(char *dst, size_t dstsz, const char *src)
{
	str_copy(dst, src != NULL ? src : "", dstsz);
}

void
txstats_record(const struct txstats_in *in)
{
	time_t t = in->time != 0 ? in->time : time(NULL);
	long long step = (long long)t / TXSTATS_STEP;
	size_t slot = (size_t)(step % TXSTATS_BUCKETS);
	enum txstats_class cls = txstats_class_of(in->action);

	pthread_mutex_lock(&tx_lock);
	struct txstats_entry *e = &ring[ring_next];
	e->time = t;
	copy_field(e->id, sizeof(e->id), in->id);
	copy_field(e->client, sizeof(e->client), in->client);
	copy_field(e->from, sizeof(e->from), in->from);
	e->n_rcpts_total = in->n_rcpts;
	e->n_rcpts = in->n_rcpts < TXSTATS_RCPTS ? in->n_rcpts : TXSTATS_RCPTS;
	for (size_t i = 0; i < e->n_rcpts; i++)
		copy_field(e->rcpts[i], sizeof(e->rcpts[i]), in->rcpts[i]);
	copy_field(e->verdict, sizeof(e->verdict), in->verdict);
	copy_field(e->action, sizeof(e->action), in->action);
	copy_field(e->result, sizeof(e->result), in->result);
	copy_field(e->hits, sizeof(e->hits), in->hits);
	e->score = in->score;
	e->cls = cls;
	ring_next = (ring_next + 1) % TXSTATS_RING;
	if (ring_count < TXSTATS_RING)
		ring_count++;
	if (bucket_step[slot] != step) {
		/* a slot only moves forward: a record for an older step than
		 * the slot's (a clock stepped back) is not counted over time */
		if (bucket_step[slot] > step)
			goto out;
		bucket_step[slot] = step;
		memset(bucket_count[slot], 0, sizeof(bucket_count[slot]));
	}
	bucket_count[slot][cls]++;
out:
	pthread_mutex_unlock(&tx_lock);
}

static bool
matches(const struct txstats_entry *e, const char *q, const char *verdict)
{
	if (verdict != NULL && verdict[0] != '\0' && strcmp(verdict, e->verdict) != 0 &&
	    strcmp(verdict, e->action) != 0 && strcmp(verdict, txstats_class_name(e->cls)) != 0)
		return false;
	if (q == NULL || q[0] == '\0')
		return true;
	if (strcasestr(e->id, q) != NULL || strcasestr(e->client, q) != NULL ||
	    strcasestr(e->from, q) != NULL)
		return true;
	for (size_t i = 0; i < e->n_rcpts; i++)
		if (strcasestr(e->rcpts[i], q) != NULL)
			return true;
	return false;
}

size_t
txstats_query(const char *q, const char *verdict, size_t max, struct txstats_entry **out_r)
{
	size_t n = 0;

	if (max > TXSTATS_RING)
		max = TXSTATS_RING;
	*out_r = NULL;
	if (max == 0)
		return 0;
	/* the copy is made outside the lock's hot path: one allocation first */
	struct txstats_entry *out = xcalloc(max, sizeof(*out));
	pthread_mutex_lock(&tx_lock);
	for (size_t k = 0; k < ring_count && n < max; k++) {
		size_t i = (ring_next + TXSTATS_RING - 1 - k) % TXSTATS_RING;
		if (matches(&ring[i], q, verdict))
			out[n++] = ring[i];
	}
	pthread_mutex_unlock(&tx_lock);
	if (n == 0) {
		free(out);
		return 0;
	}
	*out_r = out;
	return n;
}

void
txstats_series(time_t now, time_t *start_r, unsigned series[TXSTATS__CLASSES][TXSTATS_BUCKETS])
{
	long long last = (long long)now / TXSTATS_STEP;
	long long first = last - (TXSTATS_BUCKETS - 1);

	*start_r = (time_t)(first * TXSTATS_STEP);
	pthread_mutex_lock(&tx_lock);
	for (size_t i = 0; i < TXSTATS_BUCKETS; i++) {
		long long step = first + (long long)i;
		size_t slot = (size_t)(((step % TXSTATS_BUCKETS) + TXSTATS_BUCKETS) % TXSTATS_BUCKETS);
		bool live = bucket_step[slot] == step;
		for (unsigned c = 0; c < TXSTATS__CLASSES; c++)
			series[c][i] = live ? bucket_count[slot][c] : 0;
	}
	pthread_mutex_unlock(&tx_lock);
}

unsigned
txstats_totals(time_t now, long seconds, unsigned totals[TXSTATS__CLASSES])
{
	long long last = (long long)now / TXSTATS_STEP;
	long long k = (seconds + TXSTATS_STEP - 1) / TXSTATS_STEP;
	unsigned total = 0;

	if (k < 1)
		k = 1;
	if (k > TXSTATS_BUCKETS)
		k = TXSTATS_BUCKETS;
	memset(totals, 0, TXSTATS__CLASSES * sizeof(*totals));
	pthread_mutex_lock(&tx_lock);
	for (long long step = last - k + 1; step <= last; step++) {
		size_t slot = (size_t)(((step % TXSTATS_BUCKETS) + TXSTATS_BUCKETS) % TXSTATS_BUCKETS);
		if (bucket_step[slot] != step)
			continue;
		for (unsigned c = 0; c < TXSTATS__CLASSES; c++) {
			totals[c] += bucket_count[slot][c];
			total += bucket_count[slot][c];
		}
	}
	pthread_mutex_unlock(&tx_lock);
	return total;
}

void
txstats_reset(void)
{
	pthread_mutex_lock(&tx_lock);
	memset(ring, 0, sizeof(ring));
	ring_next = ring_count = 0;
	memset(bucket_step, 0, sizeof(bucket_step));
	memset(bucket_count, 0, sizeof(bucket_count));
	pthread_mutex_unlock(&tx_lock);
}
