/*
 * test_ratelimit.c — unit tests for the ratelimit stage's in-process
 * limiter (filters/ratelimit_local.c) with a clock of the test's own:
 * GCRA lets exactly `burst` through from idle, then one per interval, and
 * says when the next fits; a byte cost larger than the burst never fits;
 * concurrency slots are taken, refreshed, released and expire; greylisting
 * walks new → too early → passed → passed-at-once, and auto-allows a
 * client; the table stays within max_keys under a flood of keys; client
 * networks are cut at their prefix for IPv4 and IPv6.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "filters/ratelimit.h"

static void
test_gcra(void **state)
{
	struct rl_local *t = rl_local_new(100);
	int64_t retry, now = 1000000;
	/* 3 per 3 s, burst 3: interval 1000 ms, tolerance 3000 ms */
	(void)state;
	for (int i = 0; i < 3; i++)
		assert_true(rl_local_rate(t, "k", now, 1000, 3000, 1, &retry));
	assert_false(rl_local_rate(t, "k", now, 1000, 3000, 1, &retry));
	assert_int_equal(retry, 1000);
	assert_false(rl_local_rate(t, "k", now + 999, 1000, 3000, 1, &retry));
	assert_int_equal(retry, 1);
	assert_true(rl_local_rate(t, "k", now + 1000, 1000, 3000, 1, &retry));
	assert_false(rl_local_rate(t, "k", now + 1000, 1000, 3000, 1, &retry));
	/* idle long enough: the whole burst again, never more */
	now += 100000;
	for (int i = 0; i < 3; i++)
		assert_true(rl_local_rate(t, "k", now, 1000, 3000, 1, &retry));
	assert_false(rl_local_rate(t, "k", now, 1000, 3000, 1, &retry));
	/* another key is independent */
	assert_true(rl_local_rate(t, "other", now, 1000, 3000, 1, &retry));
	/* costs: 3000 octets per 3 s, interval 1 ms per octet */
	assert_true(rl_local_rate(t, "b", now, 1, 3000, 2000, &retry));
	assert_false(rl_local_rate(t, "b", now, 1, 3000, 2000, &retry));
	assert_int_equal(retry, 1000);
	/* larger than the burst: never, however long the wait */
	assert_false(rl_local_rate(t, "huge", now, 1, 3000, 5000, &retry));
	assert_int_equal(retry, 2000);
	rl_local_free(&t);
}

static void
test_slots(void **state)
{
	struct rl_local *t = rl_local_new(100);
	long held;
	int64_t now = 5000;

	(void)state;
	assert_true(rl_local_acquire(t, "c", "s1", 2, now, 1000, &held));
	assert_int_equal(held, 1);
	assert_true(rl_local_acquire(t, "c", "s2", 2, now, 1000, &held));
	assert_false(rl_local_acquire(t, "c", "s3", 2, now, 1000, &held));
	assert_int_equal(held, 2);
	/* a holder asking again keeps its slot */
	assert_true(rl_local_acquire(t, "c", "s1", 2, now, 1000, &held));
	assert_int_equal(held, 2);
	rl_local_release(t, "c", "s1");
	assert_true(rl_local_acquire(t, "c", "s3", 2, now, 1000, &held));
	/* releasing what is not held changes nothing */
	rl_local_release(t, "c", "nobody");
	rl_local_release(t, "missing-key", "s1");
	assert_false(rl_local_acquire(t, "c", "s4", 2, now, 1000, &held));
	/* s2 refreshed, s3 not: at +1000 s3's slot has expired */
	rl_local_refresh(t, "c", "s2", now + 900, 1000);
	assert_true(rl_local_acquire(t, "c", "s4", 2, now + 1000, 1000, &held));
	assert_int_equal(held, 2);
	assert_false(rl_local_acquire(t, "c", "s5", 2, now + 1000, 1000, &held));
	rl_local_free(&t);
}

static void
test_greylist(void **state)
{
	struct rl_local *t = rl_local_new(100);
	int64_t retry, now = 10000;

	(void)state;
	/* delay 300 ms, window 1000 ms, expire 100000 ms, auto-allow after 2 */
	assert_false(rl_local_greylist(t, "t1", "net", now, 300, 1000, 100000, 2, &retry));
	assert_int_equal(retry, 300);
	assert_false(rl_local_greylist(t, "t1", "net", now + 100, 300, 1000, 100000, 2, &retry));
	assert_int_equal(retry, 200);
	assert_true(rl_local_greylist(t, "t1", "net", now + 300, 300, 1000, 100000, 2, &retry));
	assert_true(rl_local_greylist(t, "t1", "net", now + 301, 300, 1000, 100000, 2, &retry));
	/* a retry after the window starts over */
	assert_false(rl_local_greylist(t, "t2", "net", now, 300, 1000, 100000, 2, &retry));
	assert_false(rl_local_greylist(t, "t2", "net", now + 1301, 300, 1000, 100000, 2, &retry));
	assert_int_equal(retry, 300);
	assert_true(rl_local_greylist(t, "t2", "net", now + 1601, 300, 1000, 100000, 2, &retry));
	/* two triplets passed: the client's other mail passes at once */
	assert_true(rl_local_greylist(t, "t3", "net", now + 1700, 300, 1000, 100000, 2, &retry));
	assert_false(rl_local_greylist(t, "t3", "othernet", now + 1700, 300, 1000, 100000, 2,
				       &retry));
	rl_local_free(&t);
}

static void
test_bounded(void **state)
{
	struct rl_local *t = rl_local_new(50);
	int64_t retry;
	char key[32];

	(void)state;
	for (int i = 0; i < 10000; i++) {
		snprintf(key, sizeof(key), "flood-%d", i);
		assert_true(rl_local_rate(t, key, 1000, 1000, 1000, 1, &retry));
		assert_true(rl_local_count(t) <= 50);
	}
	/* expired entries go first: after their time they make room */
	rl_local_free(&t);
}

static void
test_prefix(void **state)
{
	char out[64];

	(void)state;
	assert_true(rl_addr_prefix("192.0.2.77", 32, 64, out, sizeof(out)));
	assert_string_equal(out, "192.0.2.77");
	assert_true(rl_addr_prefix("192.0.2.77", 24, 64, out, sizeof(out)));
	assert_string_equal(out, "192.0.2.0/24");
	assert_true(rl_addr_prefix("192.0.2.77", 20, 64, out, sizeof(out)));
	assert_string_equal(out, "192.0.0.0/20");
	assert_true(rl_addr_prefix("2001:db8:1:2:3:4:5:6", 32, 64, out, sizeof(out)));
	assert_string_equal(out, "2001:db8:1:2::/64");
	assert_true(rl_addr_prefix("2001:db8:1:2:3:4:5:6", 32, 48, out, sizeof(out)));
	assert_string_equal(out, "2001:db8:1::/48");
	assert_true(rl_addr_prefix("::1", 32, 128, out, sizeof(out)));
	assert_string_equal(out, "::1");
	assert_false(rl_addr_prefix("not-an-address", 32, 64, out, sizeof(out)));
	assert_false(rl_addr_prefix("192.0.2.77", 24, 64, out, 8));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_gcra),
		cmocka_unit_test(test_slots),
		cmocka_unit_test(test_greylist),
		cmocka_unit_test(test_bounded),
		cmocka_unit_test(test_prefix),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
