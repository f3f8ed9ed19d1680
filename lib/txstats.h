/*
 * txstats.h — the process-wide record of recent transactions and of
 * verdicts over time, for the web admin's overview (doc/web.md).
 *
 * Fed at the one place each transaction's log line is written (the SMTP
 * session's tx_log, the milter's ms_tx_log) with the values of that line;
 * read by the web service's admin calls. Bounded: the last
 * TXSTATS_RING transactions, and per verdict class one counter per
 * TXSTATS_STEP seconds over the last TXSTATS_BUCKETS steps (24 h). One
 * mutex guards both; a record is a few string copies under it, so loop
 * threads may call it.
 */
#ifndef MXGUARD_TXSTATS_H
#define MXGUARD_TXSTATS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define TXSTATS_RING 1000
#define TXSTATS_STEP 300
#define TXSTATS_BUCKETS 288 /* 24 h of 5 minutes */
#define TXSTATS_RCPTS 10    /* recipients kept per transaction (the log line's) */
#define TXSTATS_FIELD 256   /* longest id, client, from or recipient kept (cut there) */
#define TXSTATS_HITS 512    /* longest hits text kept (cut there) */

/* The verdict classes counted over time (the overview's keys). */
enum txstats_class {
	TXSTATS_ACCEPT,
	TXSTATS_REJECT,
	TXSTATS_QUARANTINE,
	TXSTATS_TEMPFAIL,
	TXSTATS_JUNK,
	TXSTATS_DISCARD,
	TXSTATS__CLASSES
};
const char *txstats_class_name(enum txstats_class c);
/* A transaction's class from its action name (action_name(): deliver and
 * tag are "accept"); an unknown name is "accept". */
enum txstats_class txstats_class_of(const char *action);

/* What is recorded (copied: the caller keeps its strings). */
struct txstats_in {
	time_t time;             /* 0: now */
	const char *id, *client, *from;
	const char *const *rcpts;
	size_t n_rcpts;          /* all of them; the first TXSTATS_RCPTS are kept */
	const char *verdict;     /* verdict_name() */
	const char *action;      /* action_name() */
	double score;
	const char *hits;        /* "stage:RULE=score,..." or "-" */
	const char *result;      /* delivered, rejected, quarantined, ... */
};
void txstats_record(const struct txstats_in *in);

/* One kept transaction (a copy: the reader owns it). */
struct txstats_entry {
	time_t time;
	char id[TXSTATS_FIELD], client[TXSTATS_FIELD], from[TXSTATS_FIELD];
	char rcpts[TXSTATS_RCPTS][TXSTATS_FIELD];
	size_t n_rcpts;          /* kept (at most TXSTATS_RCPTS) */
	size_t n_rcpts_total;    /* the transaction's */
	char verdict[16], action[16], result[40];
	double score;
	char hits[TXSTATS_HITS];
	enum txstats_class cls;
};
/*
 * Copy the kept transactions, newest first, that match: q (NULL/"": all)
 * a case-insensitive substring of id, client, from or any kept recipient;
 * verdict (NULL/"": all) equal to the entry's verdict, action or class
 * name. At most max into out (malloc'd array in *out_r, free()); returns
 * the count.
 */
size_t txstats_query(const char *q, const char *verdict, size_t max, struct txstats_entry **out_r);

/* Counts per class: series[c][i] is bucket i (oldest first) of the
 * TXSTATS_BUCKETS ending with the one holding now; *start_r the epoch
 * of bucket 0. */
void txstats_series(time_t now, time_t *start_r, unsigned series[TXSTATS__CLASSES][TXSTATS_BUCKETS]);
/* Totals per class over the last `seconds` (whole buckets: the current
 * one and the ones before it that end after now - seconds). */
unsigned txstats_totals(time_t now, long seconds, unsigned totals[TXSTATS__CLASSES]);

/* Tests only: forget everything. */
void txstats_reset(void);

#endif
