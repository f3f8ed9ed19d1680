/*
 * filter_tx.c — the side-effect accumulator of a transaction.
 *
 * Stages never return scores or headers: they call filter_tx_add_score() and
 * filter_tx_add_header() on the transaction's filter_tx, and the pipeline
 * adds one stage-log row per stage it ran. Everything a stage hands in is
 * copied, so a stage may pass stack buffers or strings from a reply that is
 * freed right after. The session keeps one filter_tx for the connect and
 * helo phases and starts every transaction from a clone of it, so a
 * transaction's score and log include what was learnt about the client.
 *
 * The two formatters build the fields of the one-line transaction log:
 *
 *   filter_tx_format_stages: "stage:result:usec" per stage run, in the order
 *     they ran, comma-separated, e.g. "dnsbl:hit:1200,rules:ok:300".
 *     result is the pipeline's word for the outcome ("ok", "hit", "accept",
 *     "reject", "tempfail", "discard", "quarantine", "error", "timeout");
 *     usec is the stage's wall time in microseconds.
 *   filter_tx_format_hits: the rule names that hit, in the order they were
 *     recorded, comma-separated, e.g. "RULE_A,RULE_B".
 *
 * Both return "" (malloc'd) when there is nothing to report. Stage and rule
 * names come from config and rule files; any ',', ':', '=' or whitespace in
 * them is replaced by '_' so the fields stay parseable in a key=value line.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filters/filters.h"

struct filter_tx {
	double score;
	struct filter_hit *hits;
	size_t n_hits, cap_hits;
	struct filter_header *headers;
	size_t n_headers, cap_headers;
	struct filter_stage_log *log;
	size_t n_log, cap_log;
};

/* Grow *arr (of elem-sized items) so that it holds at least n+1 items. */
static void filter_tx_reserve(void **arr, size_t *cap, size_t n, size_t elem)
{
	if (n < *cap)
		return;
	*cap = *cap == 0 ? 8 : *cap * 2;
	*arr = xrealloc(*arr, *cap * elem);
}

static char *filter_tx_strdup_or_null(const char *s)
{
	return s == NULL ? NULL : xstrdup(s);
}

struct filter_tx *filter_tx_new(void)
{
	return xcalloc(1, sizeof(struct filter_tx));
}

struct filter_tx *filter_tx_clone(const struct filter_tx *src)
{
	struct filter_tx *fx = filter_tx_new();

	fx->score = src->score;
	for (size_t i = 0; i < src->n_hits; i++) {
		const struct filter_hit *h = &src->hits[i];

		filter_tx_reserve((void **)&fx->hits, &fx->cap_hits, fx->n_hits,
				  sizeof(*fx->hits));
		fx->hits[fx->n_hits++] = (struct filter_hit){
			.stage = filter_tx_strdup_or_null(h->stage),
			.rule = filter_tx_strdup_or_null(h->rule),
			.score = h->score,
			.desc = filter_tx_strdup_or_null(h->desc),
		};
	}
	for (size_t i = 0; i < src->n_headers; i++)
		filter_tx_add_header(fx, src->headers[i].name, src->headers[i].value);
	for (size_t i = 0; i < src->n_log; i++) {
		const struct filter_stage_log *l = &src->log[i];

		filter_tx_add_stage_log(fx, l->stage, l->phase, l->result, l->usec);
	}
	return fx;
}

void filter_tx_free(struct filter_tx **fxp)
{
	struct filter_tx *fx = *fxp;

	if (fx == NULL)
		return;
	*fxp = NULL;
	for (size_t i = 0; i < fx->n_hits; i++) {
		free((char *)fx->hits[i].stage);
		free((char *)fx->hits[i].rule);
		free((char *)fx->hits[i].desc);
	}
	for (size_t i = 0; i < fx->n_headers; i++) {
		free((char *)fx->headers[i].name);
		free((char *)fx->headers[i].value);
	}
	for (size_t i = 0; i < fx->n_log; i++) {
		free((char *)fx->log[i].stage);
		free((char *)fx->log[i].result);
	}
	free(fx->hits);
	free(fx->headers);
	free(fx->log);
	free(fx);
}

void filter_tx_add_score(struct filter_tx *fx, const char *stage, const char *rule,
			 double score, const char *desc)
{
	fx->score += score;
	/* A stage may add to the score without naming a rule; only named
	 * rules are hits worth reporting. */
	if (rule == NULL || *rule == '\0')
		return;
	filter_tx_reserve((void **)&fx->hits, &fx->cap_hits, fx->n_hits,
			  sizeof(*fx->hits));
	fx->hits[fx->n_hits++] = (struct filter_hit){
		.stage = xstrdup(stage != NULL ? stage : ""),
		.rule = xstrdup(rule),
		.score = score,
		.desc = filter_tx_strdup_or_null(desc),
	};
}

void filter_tx_add_header(struct filter_tx *fx, const char *name, const char *value)
{
	filter_tx_reserve((void **)&fx->headers, &fx->cap_headers, fx->n_headers,
			  sizeof(*fx->headers));
	fx->headers[fx->n_headers++] = (struct filter_header){
		.name = xstrdup(name),
		.value = xstrdup(value),
	};
}

void filter_tx_add_stage_log(struct filter_tx *fx, const char *stage,
			     enum phase phase, const char *result, long usec)
{
	filter_tx_reserve((void **)&fx->log, &fx->cap_log, fx->n_log,
			  sizeof(*fx->log));
	fx->log[fx->n_log++] = (struct filter_stage_log){
		.stage = xstrdup(stage),
		.phase = phase,
		.result = xstrdup(result),
		.usec = usec < 0 ? 0 : usec,
	};
}

double filter_tx_score(const struct filter_tx *fx)
{
	return fx->score;
}

size_t filter_tx_hits(const struct filter_tx *fx, const struct filter_hit **hits_r)
{
	if (hits_r != NULL)
		*hits_r = fx->hits;
	return fx->n_hits;
}

size_t filter_tx_headers(const struct filter_tx *fx, const struct filter_header **hdrs_r)
{
	if (hdrs_r != NULL)
		*hdrs_r = fx->headers;
	return fx->n_headers;
}

size_t filter_tx_stage_log(const struct filter_tx *fx, const struct filter_stage_log **log_r)
{
	if (log_r != NULL)
		*log_r = fx->log;
	return fx->n_log;
}

/* A growing string for the formatters. */
struct filter_tx_buf {
	char *s;
	size_t len, cap;
};

static void filter_tx_buf_append(struct filter_tx_buf *b, const char *s, bool field)
{
	size_t n = strlen(s);

	if (b->len + n + 1 > b->cap) {
		while (b->len + n + 1 > b->cap)
			b->cap = b->cap == 0 ? 64 : b->cap * 2;
		b->s = xrealloc(b->s, b->cap);
	}
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		/* keep separators unambiguous in the log line */
		if (field && (c == ',' || c == ':' || c == ' ' || c == '\t' ||
			      c == '\r' || c == '\n' || c == '='))
			c = '_';
		b->s[b->len++] = c;
	}
	b->s[b->len] = '\0';
}

static char *filter_tx_buf_finish(struct filter_tx_buf *b)
{
	return b->s != NULL ? b->s : xstrdup("");
}

char *filter_tx_format_stages(const struct filter_tx *fx)
{
	struct filter_tx_buf b = { 0 };
	char num[32];

	for (size_t i = 0; i < fx->n_log; i++) {
		if (i > 0)
			filter_tx_buf_append(&b, ",", false);
		filter_tx_buf_append(&b, fx->log[i].stage, true);
		filter_tx_buf_append(&b, ":", false);
		filter_tx_buf_append(&b, fx->log[i].result, true);
		snprintf(num, sizeof(num), ":%ld", fx->log[i].usec);
		filter_tx_buf_append(&b, num, false);
	}
	return filter_tx_buf_finish(&b);
}

char *filter_tx_format_hits(const struct filter_tx *fx)
{
	struct filter_tx_buf b = { 0 };

	for (size_t i = 0; i < fx->n_hits; i++) {
		if (i > 0)
			filter_tx_buf_append(&b, ",", false);
		filter_tx_buf_append(&b, fx->hits[i].rule, true);
	}
	return filter_tx_buf_finish(&b);
}
