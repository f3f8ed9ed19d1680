/*
 * test_txstats.c — lib/txstats.c: the ring of recent transactions (its
 * bound, newest first, the text and verdict filters, cut fields), the
 * verdict classes, the 5-minute buckets over 24 h (totals per hour and
 * day, the series, a slot reused a day later, a clock stepped back), and
 * recording from several threads at once.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include <cmocka.h>

#include "lib/lib.h"
#include "lib/txstats.h"

/* a fixed epoch on a bucket boundary: 2026-12-02T00:00:00Z */
#define T0 ((time_t)1764633600)

static int
setup(void **state)
{
	(void)state;
	txstats_reset();
	return 0;
}

static void
record(time_t t, const char *id, const char *from, const char *rcpt, const char *action)
{
	const char *rcpts[1] = { rcpt };
	struct txstats_in in = {
		.time = t, .id = id, .client = "192.0.2.7", .from = from,
		.rcpts = rcpts, .n_rcpts = rcpt != NULL ? 1 : 0,
		.verdict = strcmp(action, "reject") == 0 ? "reject" : "continue", .action = action,
		.score = 1.5, .hits = "rules:X=1.5", .result = "delivered",
	};
	txstats_record(&in);
}

static void
test_classes(void **state)
{
	(void)state;
	assert_int_equal(txstats_class_of("deliver"), TXSTATS_ACCEPT);
	assert_int_equal(txstats_class_of("tag"), TXSTATS_ACCEPT);
	assert_int_equal(txstats_class_of("junk"), TXSTATS_JUNK);
	assert_int_equal(txstats_class_of("quarantine"), TXSTATS_QUARANTINE);
	assert_int_equal(txstats_class_of("discard"), TXSTATS_DISCARD);
	assert_int_equal(txstats_class_of("reject"), TXSTATS_REJECT);
	assert_int_equal(txstats_class_of("tempfail"), TXSTATS_TEMPFAIL);
	assert_int_equal(txstats_class_of("nonsense"), TXSTATS_ACCEPT);
	assert_int_equal(txstats_class_of(NULL), TXSTATS_ACCEPT);
	assert_string_equal(txstats_class_name(TXSTATS_QUARANTINE), "quarantine");
}

static void
test_ring_newest_first_and_bounded(void **state)
{
	struct txstats_entry *e;
	char id[32];

	(void)state;
	assert_int_equal(txstats_query(NULL, NULL, 10, &e), 0);
	assert_null(e);
	for (int i = 0; i < TXSTATS_RING + 250; i++) {
		snprintf(id, sizeof(id), "ID%05d", i);
		record(T0 + i, id, "a@b.test", "x@y.test", "deliver");
	}
	size_t n = txstats_query(NULL, NULL, 5000, &e);
	assert_int_equal(n, TXSTATS_RING);
	snprintf(id, sizeof(id), "ID%05d", TXSTATS_RING + 249);
	assert_string_equal(e[0].id, id);
	snprintf(id, sizeof(id), "ID%05d", 250);
	assert_string_equal(e[n - 1].id, id); /* the oldest 250 are gone */
	for (size_t i = 1; i < n; i++)
		assert_true(e[i - 1].time > e[i].time);
	free(e);
	assert_int_equal(txstats_query(NULL, NULL, 3, &e), 3);
	free(e);
	assert_int_equal(txstats_query(NULL, NULL, 0, &e), 0);
}

static void
test_filters(void **state)
{
	struct txstats_entry *e;

	(void)state;
	record(T0 + 1, "AAAA000000000001", "alice@one.test", "bob@two.test", "deliver");
	record(T0 + 2, "AAAA000000000002", "carol@three.test", "dave@four.test", "reject");
	record(T0 + 3, "AAAA000000000003", "", NULL, "quarantine");
	assert_int_equal(txstats_query("ALICE", NULL, 10, &e), 1);
	assert_string_equal(e[0].id, "AAAA000000000001");
	free(e);
	assert_int_equal(txstats_query("four.TEST", NULL, 10, &e), 1);
	assert_string_equal(e[0].id, "AAAA000000000002");
	free(e);
	assert_int_equal(txstats_query("000003", NULL, 10, &e), 1);
	free(e);
	assert_int_equal(txstats_query("192.0.2.7", NULL, 10, &e), 3);
	free(e);
	assert_int_equal(txstats_query("nowhere", NULL, 10, &e), 0);
	/* verdict: the class, the verdict or the action name */
	assert_int_equal(txstats_query(NULL, "accept", 10, &e), 1);
	assert_string_equal(e[0].id, "AAAA000000000001");
	free(e);
	assert_int_equal(txstats_query(NULL, "continue", 10, &e), 2);
	free(e);
	assert_int_equal(txstats_query(NULL, "deliver", 10, &e), 1);
	free(e);
	assert_int_equal(txstats_query("carol", "reject", 10, &e), 1);
	assert_string_equal(e[0].verdict, "reject");
	assert_string_equal(e[0].action, "reject");
	assert_int_equal(e[0].cls, TXSTATS_REJECT);
	assert_int_equal(e[0].n_rcpts, 1);
	assert_string_equal(e[0].rcpts[0], "dave@four.test");
	assert_string_equal(e[0].hits, "rules:X=1.5");
	assert_string_equal(e[0].result, "delivered");
	free(e);
	assert_int_equal(txstats_query("alice", "reject", 10, &e), 0);
	assert_int_equal(txstats_query(NULL, "", 10, &e), 3);
	free(e);
}

static void
test_long_fields_cut_and_many_rcpts(void **state)
{
	char big[4000];
	const char *rcpts[25];
	struct txstats_entry *e;

	(void)state;
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	for (size_t i = 0; i < 25; i++)
		rcpts[i] = i == 3 ? "needle@rcpt.test" : i == 20 ? "hidden@rcpt.test" : big;
	struct txstats_in in = {
		.time = T0, .id = big, .client = big, .from = big, .rcpts = rcpts, .n_rcpts = 25,
		.verdict = big, .action = big, .score = 0, .hits = big, .result = big,
	};
	txstats_record(&in);
	assert_int_equal(txstats_query("needle@", NULL, 10, &e), 1);
	assert_int_equal(strlen(e[0].id), TXSTATS_FIELD - 1);
	assert_int_equal(strlen(e[0].hits), TXSTATS_HITS - 1);
	assert_int_equal(strlen(e[0].verdict), sizeof(e[0].verdict) - 1);
	assert_int_equal(e[0].n_rcpts, TXSTATS_RCPTS);
	assert_int_equal(e[0].n_rcpts_total, 25);
	assert_int_equal(e[0].cls, TXSTATS_ACCEPT);
	free(e);
	/* only the kept recipients are searched */
	assert_int_equal(txstats_query("hidden@", NULL, 10, &e), 0);
}

static void
test_buckets_totals_and_series(void **state)
{
	unsigned totals[TXSTATS__CLASSES];
	static unsigned series[TXSTATS__CLASSES][TXSTATS_BUCKETS];
	time_t start;
	time_t now = T0 + 86400 + 150; /* in the middle of a bucket */

	(void)state;
	record(now, "A", "", NULL, "deliver");
	record(now - 10, "B", "", NULL, "reject");
	record(now - 3000, "C", "", NULL, "quarantine");   /* 50 min ago: in the hour */
	record(now - 3900, "D", "", NULL, "junk");         /* 65 min ago: in the day only */
	record(now - 86400 + 300, "E", "", NULL, "tag");   /* in the oldest bucket of the day */
	assert_int_equal(txstats_totals(now, 3600, totals), 3);
	assert_int_equal(totals[TXSTATS_ACCEPT], 1);
	assert_int_equal(totals[TXSTATS_REJECT], 1);
	assert_int_equal(totals[TXSTATS_QUARANTINE], 1);
	assert_int_equal(totals[TXSTATS_JUNK], 0);
	assert_int_equal(txstats_totals(now, 86400, totals), 5);
	assert_int_equal(totals[TXSTATS_ACCEPT], 2);
	assert_int_equal(totals[TXSTATS_JUNK], 1);

	txstats_series(now, &start, series);
	assert_int_equal(start % TXSTATS_STEP, 0);
	assert_int_equal(start, (now / TXSTATS_STEP - (TXSTATS_BUCKETS - 1)) * TXSTATS_STEP);
	assert_int_equal(series[TXSTATS_ACCEPT][TXSTATS_BUCKETS - 1], 1);
	assert_int_equal(series[TXSTATS_REJECT][TXSTATS_BUCKETS - 1], 1);
	assert_int_equal(series[TXSTATS_ACCEPT][0], 1); /* E */
	assert_int_equal(series[TXSTATS_QUARANTINE][TXSTATS_BUCKETS - 1 - 10], 1);
	unsigned sum = 0;
	for (unsigned c = 0; c < TXSTATS__CLASSES; c++)
		for (size_t i = 0; i < TXSTATS_BUCKETS; i++)
			sum += series[c][i];
	assert_int_equal(sum, 5);

	/* a day later the same slots count anew: the old counts are gone */
	time_t later = now + 86400;
	assert_int_equal(txstats_totals(later, 86400, totals), 0);
	record(later, "F", "", NULL, "discard");
	assert_int_equal(txstats_totals(later, 86400, totals), 1);
	assert_int_equal(totals[TXSTATS_DISCARD], 1);
	assert_int_equal(totals[TXSTATS_ACCEPT], 0);
	/* a clock stepped back a day: kept in the ring, not counted over time */
	record(now, "G", "", NULL, "deliver");
	assert_int_equal(txstats_totals(later, 86400, totals), 1);
	struct txstats_entry *e;
	assert_int_equal(txstats_query("G", NULL, 1, &e), 1);
	free(e);
}

#define THREADS 4
#define PER_THREAD 5000

static void *
recorder(void *arg)
{
	(void)arg;
	for (int i = 0; i < PER_THREAD; i++)
		record(T0, "T", "t@t.test", "r@r.test", (i & 1) ? "reject" : "deliver");
	return NULL;
}

static void
test_threads(void **state)
{
	pthread_t th[THREADS];
	unsigned totals[TXSTATS__CLASSES];
	struct txstats_entry *e;

	(void)state;
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, recorder, NULL), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(txstats_totals(T0, 300, totals), THREADS * PER_THREAD);
	assert_int_equal(totals[TXSTATS_REJECT], THREADS * PER_THREAD / 2);
	assert_int_equal(txstats_query(NULL, NULL, TXSTATS_RING, &e), TXSTATS_RING);
	free(e);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_classes, setup),
		cmocka_unit_test_setup(test_ring_newest_first_and_bounded, setup),
		cmocka_unit_test_setup(test_filters, setup),
		cmocka_unit_test_setup(test_long_fields_cut_and_many_rcpts, setup),
		cmocka_unit_test_setup(test_buckets_totals_and_series, setup),
		cmocka_unit_test_setup(test_threads, setup),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
