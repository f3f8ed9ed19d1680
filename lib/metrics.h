/*
 * metrics.h — the process-wide counters every layer counts into, and their
 * Prometheus text exposition.
 *
 * Every metric is a row of the table in lib/metrics.c (METRICS_TABLE): an
 * id (enum metric), a name, a type (counter, gauge, histogram), at most one
 * label with a bounded number of values, and a line of help. Counting is
 * lock-free: a value is an atomic in static storage, so a loop thread, a
 * worker and the main thread count without taking a lock and the counters
 * need no set-up (they exist from the first instruction of main). Only the
 * first use of a new label value takes a mutex, to claim a slot in the
 * family's fixed hash table; when a family already has its maximum number
 * of label values, every new value is counted under the label value
 * "_other" — hostile or misconfigured input can never make the memory or
 * the scrape grow without bound.
 *
 * The text (metrics_render) is the Prometheus text exposition format 0.0.4:
 * "# HELP", "# TYPE", one line per label value, histograms as cumulative
 * _bucket{le=...}, _sum and _count. The HTTP side (the `metrics` service) is
 * the program's; this file knows no sockets.
 *
 * Adding a metric: a row in METRICS_TABLE (lib/metrics.c) and an id here, in
 * the same order. A service counts with metrics_add(METRIC_X, 1) or, for a
 * labelled family, metrics_add_label(METRIC_X, "value", 1); doc/operations.md
 * lists every metric.
 */
#ifndef MXGUARD_METRICS_H
#define MXGUARD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* In the order of the rows of METRICS_TABLE in lib/metrics.c. */
enum metric {
	METRIC_START_TIME,            /* gauge: unix time the daemon started */
	METRIC_CONFIG_INFO,           /* gauge{path}: 1 for the config file in use */
	METRIC_BUILD_INFO,            /* gauge{version} */
	METRIC_CONFIG_RELOADS,        /* counter{result: ok, failed} */
	METRIC_CONFIG_LOAD_TIME,      /* gauge: unix time of the config in use */
	METRIC_CONNECTIONS_CURRENT,   /* gauge{service} */
	METRIC_CONNECTIONS,           /* counter{service} */
	METRIC_CONNECTIONS_REFUSED,   /* counter{reason} */
	METRIC_SMTP_TRANSACTIONS,     /* counter{verdict: action names} */
	METRIC_SMTP_BYTES_RECEIVED,   /* counter: message octets accepted at DATA */
	METRIC_MESSAGES_DELIVERED,    /* counter: messages the store wrote */
	METRIC_MESSAGES_RELAYED,      /* counter: messages an upstream accepted */
	METRIC_MESSAGES_QUARANTINED,  /* counter */
	METRIC_STAGE_DURATION,        /* histogram{stage}: seconds per check */
	METRIC_STAGE_ERRORS,          /* counter{stage}: failed or timed out */
	METRIC_RULE_HITS,             /* counter{rule} */
	METRIC_RULES_LOAD_TIME,       /* gauge: unix time the rule set was built */
	METRIC_RULES_COUNT,           /* gauge: rules in the rule set in use */
	METRIC_CLAMAV_DB_VERSION,     /* gauge: daily.cvd version of the engine in use */
	METRIC_CLAMAV_DB_SIGNATURES,  /* gauge */
	METRIC_CLAMAV_DB_LOAD_TIME,   /* gauge: unix time the engine was loaded */
	METRIC_DEPENDENCY_UP,         /* gauge{dependency}: 1 answering, 0 failing */
	METRIC_DEPENDENCY_ERRORS,     /* counter{dependency} */
	METRIC_DEPENDENCY_LAST_ERROR, /* gauge{dependency}: unix time of the last error */
	METRIC_POP3_SESSIONS,         /* counter */
	METRIC_POP3_LOGINS,           /* counter{result: ok, failed} */
	METRIC_IMAP_SESSIONS,         /* counter */
	METRIC_IMAP_LOGINS,           /* counter{result: ok, failed} */
	METRIC__COUNT
};

/* The stage latency buckets (seconds; +Inf is implicit). */
#define METRICS_STAGE_BUCKETS 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, \
	0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
/* Longest label value kept (longer ones are cut there). */
#define METRICS_LABEL_MAX 128
/* What a family counts new values under once it is full. */
#define METRICS_LABEL_OTHER "_other"

/* Unlabelled counter or gauge: add n (may be negative for a gauge). */
void metrics_add(enum metric m, int64_t n);
/* Unlabelled gauge: set. */
void metrics_set(enum metric m, int64_t v);
/* Labelled counter or gauge. A NULL or empty label is "". */
void metrics_add_label(enum metric m, const char *label, int64_t n);
void metrics_set_label(enum metric m, const char *label, int64_t v);
/* Histogram: one observation of `usec` microseconds. */
void metrics_observe(enum metric m, const char *label, uint64_t usec);
/* A dependency (redis, dns, clamd, upstream:NAME...) answered or failed:
 * dependency_up, and on failure dependency_errors and last_error too. */
void metrics_dependency(const char *name, bool up);

/* Read back (tests, mxguardctl's checks): the value, or the histogram's
 * count; 0 for a label value never seen. */
int64_t metrics_get(enum metric m, const char *label);
/* How many label values the family holds (METRICS_LABEL_OTHER included). */
size_t metrics_label_count(enum metric m);
/* The family's bound on label values (before "_other"). */
size_t metrics_label_max(enum metric m);
const char *metrics_name(enum metric m);

/* The exposition text, malloc'd (*len_r its length). Safe while others
 * count: each value is read once, atomically. */
char *metrics_render(size_t *len_r);

/*
 * The reading side, for mxguardctl status: one line of exposition text.
 * Pure (no I/O, no globals); a line longer than METRICS_LINE_MAX, a name
 * longer than the buffer, more than METRICS_PARSE_LABELS labels or a bad
 * escape is malformed. label is the value of the first label that is not
 * `le` (unescaped, cut to its buffer), le the `le` label's ("" without).
 */
#define METRICS_LINE_MAX 2048
#define METRICS_PARSE_LABELS 4
struct metrics_sample {
	char name[128];
	char label[METRICS_LABEL_MAX + 1];
	char le[32];
	double value;
};
/* 1: a sample in *s; 0: a comment or an empty line; -1: malformed. */
int metrics_parse_line(const char *line, size_t len, struct metrics_sample *s);

/* Tests only, with nobody counting: zero every value, forget label values. */
void metrics_reset(void);

#endif
