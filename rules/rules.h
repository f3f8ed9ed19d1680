/*
 * rules.h — the policy author's language: rule files in SpamAssassin's
 * syntax (plus mxguard's own lines), compiled with PCRE2 and evaluated
 * against a message's text views (lib/lib.h, lib/msgtext.c). rules/ is the language
 * (this header, rules.c) and the stock rule files (*.cf); it uses lib/ only.
 * Used by the "rules" stage (filters/rules_stage.c) and by `mxguardctl
 * rules lint|test` (ctl/rules_cmd.c).
 *
 * A rule set is built once (start-up, reload) from a list of files and is
 * then read-only but for its atomic counters: every loop and worker thread
 * evaluates messages against it at once. doc/rules.md is the language
 * reference.
 */
#ifndef MXGUARD_RULES_H
#define MXGUARD_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "lib/lib.h"

struct rule_set;
struct msgtext;

/* What an `action` line decides (the stage maps it to a pipeline verdict). */
enum rules_verdict {
	RULES_CONTINUE = 0, /* no action rule hit */
	RULES_ACCEPT, RULES_REJECT, RULES_TEMPFAIL, RULES_DISCARD, RULES_QUARANTINE,
};

/* An action's reply: 0 / "" mean the pipeline's defaults. */
struct rules_reply {
	unsigned code;
	char enhanced[16];
	char text[256];
};

/* What a load or lint says, one line each: "file:line:col: message". */
struct rules_diag {
	char *file;
	int line, col;
	bool error;      /* else a warning */
	char *message;
};

struct rules_load_opts {
	bool lint;               /* also warn about what a load skips quietly */
	unsigned long match_limit; /* PCRE2 match limit per match (0 = default) */
};

/* Per rule kind: how many rules were loaded, and skipped with why. */
struct rules_stats {
	size_t loaded;
	size_t skipped_eval;     /* eval: tests (SpamAssassin's Perl functions) */
	size_t skipped_plugin;   /* inside ifplugin blocks of plugins we lack */
	size_t skipped_other;    /* other constructs we cannot support */
	size_t ignored_lines;    /* directives that do not define rules (lang, report, ...) */
	size_t errors, warnings;
};

/*
 * Compile the files (each may `include` more, relative to itself) into a
 * rule set. Errors (a bad regex, an unknown keyword, a meta naming itself
 * in a loop, a line that does not parse) make it fail unless
 * allow_errors: then the rule is dropped and counted. Returns the set, or
 * NULL with *error_r (the first error, "file:line:col: message"). diags,
 * if not NULL, receives every diagnostic (rules_diags_free).
 */
struct rule_set *rules_load(const char *const *files, size_t n_files,
			    const struct rules_load_opts *opts, bool allow_errors,
			    struct rules_diag **diags, size_t *n_diags, char **error_r);
void rules_free(struct rule_set **rs);
void rules_diags_free(struct rules_diag *d, size_t n);
void rules_get_stats(const struct rule_set *rs, struct rules_stats *st);
size_t rules_count(const struct rule_set *rs);
const char *rules_name(const struct rule_set *rs, size_t i);
/* A rule that is defined and runs (not skipped, not only a score line). */
bool rules_is_loaded(const struct rule_set *rs, size_t i);

/* The envelope and client, for mxguard's own rule kinds. */
struct rules_envelope {
	const char *mail_from;      /* "" for <> */
	const char *const *rcpts;
	size_t n_rcpts;
	const char *helo;
	const char *client_addr;
	/* the client's forward-confirmed reverse DNS name; NULL or "" when
	 * there is none (no PTR, not confirmed, not looked up) */
	const char *client_rdns;
	/* what the stages before the rules found, "stage:RULE" each
	 * ("auth:DMARC_FAIL", "dnsbl:zen"): the `stage` rule lines match these */
	const char *const *stage_hits;
	size_t n_stage_hits;
};

/* One rule that hit. */
struct rules_hit {
	size_t rule;        /* index, for rules_name() */
	const char *name;
	double score;
	const char *describe; /* may be NULL */
	unsigned count;     /* matches counted (tflags multiple) */
	char match[80];     /* the text that matched (first match), printable */
};

struct rules_result {
	double score;
	struct rules_hit *hits;  /* in rule order; __ sub-rules not listed */
	size_t n_hits;
	enum rules_verdict verdict; /* from action lines: RULES_CONTINUE when none hit */
	const char *action_rule;    /* the rule whose action decided, or NULL */
	struct rules_reply reply;   /* for REJECT/TEMPFAIL */
	unsigned long limit_hits;   /* matches stopped by the match limit */
	uint64_t usec;
};

/* Evaluate; thread-safe. t may be NULL (a body that does not parse): then
 * only the envelope rules run. Free the result with rules_result_clear. */
void rules_eval(const struct rule_set *rs, const struct msgtext *t,
		const struct rules_envelope *env, bool timing, struct rules_result *res);
void rules_result_clear(struct rules_result *res);

/* Counters since load, per rule: hits and cumulative microseconds. */
void rules_counters(const struct rule_set *rs, size_t i, uint64_t *hits, uint64_t *usec);
/* Matches stopped by the match limit, over every rule. */
uint64_t rules_limit_count(const struct rule_set *rs);

/* Expand the `files` globs (sorted per pattern); a pattern that names no
 * file is an error. Returns 0 or -1 with *error_r; *files_r is
 * NULL-terminated, each string and the array malloc'd. */
int rules_expand_files(char *const *patterns, size_t n, char ***files_r, size_t *n_files_r,
		       char **error_r);

#endif
