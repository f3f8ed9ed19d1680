/*
 * test_metrics.c — lib/metrics.c: counting, labels and their bound, the
 * histogram buckets, the text exposition format (escaping included), and
 * counting from several threads at once.
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
#include "lib/metrics.h"

static int
setup(void **state)
{
	(void)state;
	metrics_reset();
	return 0;
}

/* The text of one sample line "NAME{...} VALUE" (NULL when absent). */
static bool
has_line(const char *text, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = text; (p = strstr(p, line)) != NULL; p += n) {
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return true;
	}
	return false;
}

static void
test_counter_and_gauge(void **state)
{
	(void)state;
	metrics_add(METRIC_MESSAGES_DELIVERED, 1);
	metrics_add(METRIC_MESSAGES_DELIVERED, 2);
	assert_int_equal(metrics_get(METRIC_MESSAGES_DELIVERED, NULL), 3);
	metrics_set(METRIC_RULES_COUNT, 42);
	metrics_set(METRIC_RULES_COUNT, 41);
	assert_int_equal(metrics_get(METRIC_RULES_COUNT, NULL), 41);
	metrics_add_label(METRIC_CONNECTIONS_CURRENT, "smtp", 1);
	metrics_add_label(METRIC_CONNECTIONS_CURRENT, "smtp", 1);
	metrics_add_label(METRIC_CONNECTIONS_CURRENT, "smtp", -1);
	assert_int_equal(metrics_get(METRIC_CONNECTIONS_CURRENT, "smtp"), 1);
	assert_int_equal(metrics_get(METRIC_CONNECTIONS_CURRENT, "pop3"), 0);

	char *text = metrics_render(NULL);
	assert_true(has_line(text, "mxguard_messages_delivered_total 3"));
	assert_true(has_line(text, "mxguard_rules_count 41"));
	assert_true(has_line(text, "mxguard_connections_current{service=\"smtp\"} 1"));
	assert_true(has_line(text, "# TYPE mxguard_messages_delivered_total counter"));
	assert_true(has_line(text, "# TYPE mxguard_rules_count gauge"));
	/* an unlabelled value is there from the start; presets too */
	assert_true(has_line(text, "mxguard_messages_relayed_total 0"));
	assert_true(has_line(text, "mxguard_smtp_transactions_total{verdict=\"reject\"} 0"));
	assert_true(has_line(text, "mxguard_pop3_logins_total{result=\"failed\"} 0"));
	free(text);
}

static void
test_every_family_has_help_and_type(void **state)
{
	(void)state;
	char *text = metrics_render(NULL);

	for (int m = 0; m < METRIC__COUNT; m++) {
		char line[200];
		snprintf(line, sizeof(line), "# HELP %s ", metrics_name((enum metric)m));
		assert_non_null(strstr(text, line));
		snprintf(line, sizeof(line), "# TYPE %s ", metrics_name((enum metric)m));
		assert_non_null(strstr(text, line));
	}
	/* every line is a comment or "name[{labels}] value" */
	for (char *p = text; *p != '\0';) {
		char *nl = strchr(p, '\n');
		assert_non_null(nl);
		if (*p != '#') {
			char *sp = memchr(p, ' ', (size_t)(nl - p));
			assert_non_null(sp);
			assert_true(sp > p);
			char *end;
			(void)strtod(sp + 1, &end);
			assert_ptr_equal(end, nl);
		}
		p = nl + 1;
	}
	free(text);
}

static void
test_label_bound(void **state)
{
	(void)state;
	size_t max = metrics_label_max(METRIC_STAGE_ERRORS);
	char name[32];

	assert_true(max > 0);
	for (size_t i = 0; i < max + 50; i++) {
		snprintf(name, sizeof(name), "stage%zu", i);
		metrics_add_label(METRIC_STAGE_ERRORS, name, 1);
	}
	/* max values, then everything else under _other */
	assert_int_equal(metrics_label_count(METRIC_STAGE_ERRORS), max + 1);
	assert_int_equal(metrics_get(METRIC_STAGE_ERRORS, METRICS_LABEL_OTHER), 50);
	assert_int_equal(metrics_get(METRIC_STAGE_ERRORS, "stage0"), 1);
	/* a value already known still counts as itself */
	metrics_add_label(METRIC_STAGE_ERRORS, "stage1", 1);
	assert_int_equal(metrics_get(METRIC_STAGE_ERRORS, "stage1"), 2);
	char *text = metrics_render(NULL);
	assert_true(has_line(text, "mxguard_stage_errors_total{stage=\"_other\"} 50"));
	snprintf(name, sizeof(name), "stage%zu\"", max);
	assert_null(strstr(text, name));
	free(text);
}

static void
test_long_label_is_cut(void **state)
{
	(void)state;
	char big[METRICS_LABEL_MAX * 3];

	memset(big, 'r', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	metrics_add_label(METRIC_RULE_HITS, big, 1);
	big[METRICS_LABEL_MAX + 5] = '\0'; /* the same first METRICS_LABEL_MAX octets */
	metrics_add_label(METRIC_RULE_HITS, big, 1);
	assert_int_equal(metrics_label_count(METRIC_RULE_HITS), 1);
	big[METRICS_LABEL_MAX] = '\0';
	assert_int_equal(metrics_get(METRIC_RULE_HITS, big), 2);
}

static void
test_escaping(void **state)
{
	(void)state;
	metrics_add_label(METRIC_RULE_HITS, "a\"b\\c\nd", 7);
	char *text = metrics_render(NULL);
	assert_true(has_line(text, "mxguard_rule_hits_total{rule=\"a\\\"b\\\\c\\nd\"} 7"));
	free(text);
}

static void
test_histogram(void **state)
{
	(void)state;
	metrics_observe(METRIC_STAGE_DURATION, "rules", 400);     /* <= 0.0005 */
	metrics_observe(METRIC_STAGE_DURATION, "rules", 500);     /* == 0.0005 */
	metrics_observe(METRIC_STAGE_DURATION, "rules", 3000);    /* <= 0.005 */
	metrics_observe(METRIC_STAGE_DURATION, "rules", 60000000); /* over 10 s: +Inf only */
	/* a histogram only observes */
	metrics_observe(METRIC_MESSAGES_DELIVERED, NULL, 5);
	assert_int_equal(metrics_get(METRIC_MESSAGES_DELIVERED, NULL), 0);
	assert_int_equal(metrics_get(METRIC_STAGE_DURATION, "rules"), 4);

	char *text = metrics_render(NULL);
	const char *p = "mxguard_stage_duration_seconds_bucket{stage=\"rules\",le=\"0.0005\"} 2";
	assert_true(has_line(text, p));
	assert_true(has_line(text, "mxguard_stage_duration_seconds_bucket{stage=\"rules\","
			     "le=\"0.001\"} 2"));
	assert_true(has_line(text, "mxguard_stage_duration_seconds_bucket{stage=\"rules\","
			     "le=\"0.005\"} 3"));
	assert_true(has_line(text, "mxguard_stage_duration_seconds_bucket{stage=\"rules\","
			     "le=\"10\"} 3"));
	assert_true(has_line(text, "mxguard_stage_duration_seconds_bucket{stage=\"rules\","
			     "le=\"+Inf\"} 4"));
	assert_true(has_line(text, "mxguard_stage_duration_seconds_count{stage=\"rules\"} 4"));
	assert_true(has_line(text, "mxguard_stage_duration_seconds_sum{stage=\"rules\"} 60.003900"));
	assert_true(has_line(text, "# TYPE mxguard_stage_duration_seconds histogram"));
	free(text);
}

static void
test_dependency(void **state)
{
	(void)state;
	metrics_dependency("redis", true);
	assert_int_equal(metrics_get(METRIC_DEPENDENCY_UP, "redis"), 1);
	assert_int_equal(metrics_get(METRIC_DEPENDENCY_ERRORS, "redis"), 0);
	metrics_dependency("redis", false);
	metrics_dependency("redis", false);
	assert_int_equal(metrics_get(METRIC_DEPENDENCY_UP, "redis"), 0);
	assert_int_equal(metrics_get(METRIC_DEPENDENCY_ERRORS, "redis"), 2);
	assert_true(metrics_get(METRIC_DEPENDENCY_LAST_ERROR, "redis") > 1700000000);
}

/* What the daemon renders, mxguardctl reads back: every line parses, and
 * the values and labels come back as they were counted. */
static void
test_parse_round_trip(void **state)
{
	(void)state;
	metrics_add_label(METRIC_RULE_HITS, "we\"ird\\name\n", 5);
	metrics_observe(METRIC_STAGE_DURATION, "rules", 700);
	metrics_add(METRIC_SMTP_BYTES_RECEIVED, 12345);
	char *text = metrics_render(NULL);
	size_t samples = 0;
	bool weird = false, inf = false, bytes = false;

	for (char *p = text; *p != '\0';) {
		char *nl = strchr(p, '\n');
		struct metrics_sample s;
		int r = metrics_parse_line(p, (size_t)(nl - p + 1), &s);
		assert_int_not_equal(r, -1);
		if (r == 1) {
			samples++;
			if (strcmp(s.name, "mxguard_rule_hits_total") == 0 &&
			    strcmp(s.label, "we\"ird\\name\n") == 0 && s.value == 5)
				weird = true;
			if (strcmp(s.name, "mxguard_stage_duration_seconds_bucket") == 0 &&
			    strcmp(s.label, "rules") == 0 && strcmp(s.le, "+Inf") == 0 && s.value == 1)
				inf = true;
			if (strcmp(s.name, "mxguard_smtp_received_bytes_total") == 0 && s.value == 12345)
				bytes = true;
		}
		p = nl + 1;
	}
	assert_true(samples > 20);
	assert_true(weird && inf && bytes);
	free(text);
}

static void
test_parse_malformed(void **state)
{
	static const char *const bad[] = {
		"", /* (a comment-free empty line is 0, checked below) */
		"{a=\"b\"} 1", "x{a=\"b} 1", "x{a=b} 1", "x{a=\"\\q\"} 1", "x 1x",
		"x", "x ", "x{a=\"1\",b=\"2\",c=\"3\",d=\"4\",e=\"5\"} 1", "9x 1",
		"x{a=\"1\" 1",
	};
	struct metrics_sample s;

	assert_int_equal(metrics_parse_line("", 0, &s), 0);
	assert_int_equal(metrics_parse_line("# HELP x y\n", 11, &s), 0);
	for (size_t i = 1; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(metrics_parse_line(bad[i], strlen(bad[i]), &s), -1);
	const char *ok = "x{le=\"0.5\",a=\"v\",} 2 1700000000";
	assert_int_equal(metrics_parse_line(ok, strlen(ok), &s), 1);
	assert_true(s.value == 2);
	assert_string_equal(s.label, "v");
	assert_string_equal(s.le, "0.5");
	char *big = xmalloc(METRICS_LINE_MAX + 10);
	memset(big, 'a', METRICS_LINE_MAX + 10);
	assert_int_equal(metrics_parse_line(big, METRICS_LINE_MAX + 10, &s), -1);
	free(big);
}

#define THREADS 4
#define ROUNDS 20000

static void *
count_thread(void *arg)
{
	char label[16];

	for (int i = 0; i < ROUNDS; i++) {
		snprintf(label, sizeof(label), "r%d", i % 8);
		metrics_add_label(METRIC_RULE_HITS, label, 1);
		metrics_add(METRIC_SMTP_BYTES_RECEIVED, 2);
		metrics_observe(METRIC_STAGE_DURATION, "x", (uint64_t)i);
	}
	return arg;
}

static void
test_threads(void **state)
{
	pthread_t t[THREADS];

	(void)state;
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, count_thread, NULL), 0);
	for (int i = 0; i < THREADS; i++) {
		char *text = metrics_render(NULL); /* while they count */
		free(text);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(metrics_label_count(METRIC_RULE_HITS), 8);
	int64_t sum = 0;
	for (int i = 0; i < 8; i++) {
		char label[16];
		snprintf(label, sizeof(label), "r%d", i);
		sum += metrics_get(METRIC_RULE_HITS, label);
	}
	assert_int_equal(sum, THREADS * ROUNDS);
	assert_int_equal(metrics_get(METRIC_SMTP_BYTES_RECEIVED, NULL), 2 * THREADS * ROUNDS);
	assert_int_equal(metrics_get(METRIC_STAGE_DURATION, "x"), THREADS * ROUNDS);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_counter_and_gauge, setup),
		cmocka_unit_test_setup(test_every_family_has_help_and_type, setup),
		cmocka_unit_test_setup(test_label_bound, setup),
		cmocka_unit_test_setup(test_long_label_is_cut, setup),
		cmocka_unit_test_setup(test_escaping, setup),
		cmocka_unit_test_setup(test_histogram, setup),
		cmocka_unit_test_setup(test_dependency, setup),
		cmocka_unit_test_setup(test_parse_round_trip, setup),
		cmocka_unit_test_setup(test_parse_malformed, setup),
		cmocka_unit_test_setup(test_threads, setup),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
