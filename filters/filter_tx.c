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
 *
 * Headers are checked before they are kept, because their values often come
 * from the network (a DNS TXT record, a scanner's virus name) and the
 * session writes them into the message verbatim: a name outside RFC 5322
 * ftext or a value with CR, LF or another control character could inject a
 * header or end the header block and start a body. Such a header is
 * refused whole — never "repaired", which would put text in the message the
 * stage did not ask for — and recorded with the name of the stage the
 * pipeline says is running. Accepted values are folded (RFC 5322 2.2.3: a
 * line break inserted before existing whitespace, so unfolding gives the
 * value back exactly) to keep lines within 78 columns where a break exists,
 * and a value that would need a line over 998 octets is refused too.
 */
#include "config.h"

#include <stdint.h>
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
	struct filter_refusal *refusals;
	size_t n_refusals, cap_refusals;
	const char *stage_now; /* whose side effects these are; NULL: pipeline */
	char *rdns;            /* NULL: none */
	enum rdns_status rdns_status;
};

/* RFC 5322 2.1.1: at most 998 octets per line, 78 recommended. */
#define HEADER_LINE_MAX 998
#define HEADER_LINE_SOFT 78
/* Longest name: "Name: " plus a word must fit in a recommended line. */
#define HEADER_NAME_MAX 76

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
	fx->rdns = filter_tx_strdup_or_null(src->rdns);
	fx->rdns_status = src->rdns_status;
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
	/* already checked and folded: copied as they are */
	for (size_t i = 0; i < src->n_headers; i++) {
		filter_tx_reserve((void **)&fx->headers, &fx->cap_headers, fx->n_headers,
				  sizeof(*fx->headers));
		fx->headers[fx->n_headers++] = (struct filter_header){
			.name = xstrdup(src->headers[i].name),
			.value = xstrdup(src->headers[i].value),
		};
	}
	for (size_t i = 0; i < src->n_refusals; i++) {
		const struct filter_refusal *r = &src->refusals[i];

		filter_tx_reserve((void **)&fx->refusals, &fx->cap_refusals,
				  fx->n_refusals, sizeof(*fx->refusals));
		fx->refusals[fx->n_refusals++] = (struct filter_refusal){
			.stage = xstrdup(r->stage), .name = xstrdup(r->name),
			.reason = r->reason,
		};
	}
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
	for (size_t i = 0; i < fx->n_refusals; i++) {
		free((char *)fx->refusals[i].stage);
		free((char *)fx->refusals[i].name);
	}
	free(fx->rdns);
	free(fx->refusals);
	free(fx->hits);
	free(fx->headers);
	free(fx->log);
	free(fx);
}

void filter_tx_set_rdns(struct filter_tx *fx, const char *name, enum rdns_status st)
{
	free(fx->rdns);
	fx->rdns = name != NULL && name[0] != '\0' ? xstrdup(name) : NULL;
	fx->rdns_status = st;
}

enum rdns_status filter_tx_rdns(const struct filter_tx *fx, const char **name_r)
{
	if (name_r != NULL)
		*name_r = fx->rdns != NULL ? fx->rdns : "";
	return fx->rdns_status;
}

const char *rdns_status_name(enum rdns_status st)
{
	switch (st) {
	case RDNS_UNKNOWN: return "unknown";
	case RDNS_CONFIRMED: return "confirmed";
	case RDNS_UNCONFIRMED: return "unconfirmed";
	case RDNS_NONE: return "none";
	case RDNS_TEMPFAIL: return "tempfail";
	}
	return "unknown";
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

void filter_tx_set_stage(struct filter_tx *fx, const char *stage)
{
	fx->stage_now = stage;
}

size_t filter_tx_refusals(const struct filter_tx *fx, const struct filter_refusal **r)
{
	if (r != NULL)
		*r = fx->refusals;
	return fx->n_refusals;
}

static bool header_is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* NULL when the name is RFC 5322 ftext of a sane length, else why not. */
static const char *header_check_name(const char *name)
{
	size_t len = strlen(name);

	if (len == 0)
		return "empty name";
	if (len > HEADER_NAME_MAX)
		return "name too long";
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c < 33 || c > 126 || c == ':')
			return "name not ftext";
	}
	return NULL;
}

/* NULL when the value has no CR, LF or other control characters but HTAB
 * (8-bit octets, UTF-8 text, are fine), else why not. */
static const char *header_check_value(const char *value)
{
	for (const char *p = value; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '\r' || c == '\n')
			return "CR or LF in value";
		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return "control character in value";
	}
	return NULL;
}

/*
 * Fold value for a header named name_len octets (written as "Name: value").
 * The value is cut into segments, each a run of whitespace followed by the
 * word after it; a line break may go before any segment that has a word
 * and is not the first of its line. A segment is moved to a new line when
 * it would end past column 78 and the line already holds something. NULL
 * when some line still ends up longer than 998 octets (a word that long).
 */
static char *header_fold(size_t name_len, const char *value)
{
	size_t len = strlen(value);
	/* at worst one "\n" per whitespace octet */
	char *out = xmalloc(len * 2 + 1);
	size_t o = 0, col = name_len + 2, i = 0;
	bool first = true;

	while (i < len) {
		size_t start = i, word;

		while (i < len && header_is_wsp(value[i]))
			i++;
		word = i;
		while (i < len && !header_is_wsp(value[i]))
			i++;
		/* [start, i) is the segment; [word, i) its word */
		if (!first && i > word && start < word &&
		    col + (i - start) > HEADER_LINE_SOFT) {
			out[o++] = '\n';
			col = 0;
		}
		memcpy(out + o, value + start, i - start);
		o += i - start;
		col += i - start;
		if (col > HEADER_LINE_MAX) {
			free(out);
			return NULL;
		}
		first = false;
	}
	out[o] = '\0';
	return out;
}

/* Keep a printable copy of a refused name for the log and the record. */
static char *header_printable(const char *s)
{
	size_t len = strnlen(s, 64);
	char *out = xmalloc(len + 1);

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		out[i] = c >= 33 && c <= 126 ? (char)c : '?';
	}
	out[len] = '\0';
	return out;
}

static void filter_tx_refuse(struct filter_tx *fx, const char *name, const char *reason)
{
	const char *stage = fx->stage_now != NULL ? fx->stage_now : "pipeline";
	char *printable = header_printable(name);

	log_msg(LOG_LEVEL_WARN, "filters header refused stage=%s name=%s reason=\"%s\"",
		stage, printable, reason);
	filter_tx_reserve((void **)&fx->refusals, &fx->cap_refusals, fx->n_refusals,
			  sizeof(*fx->refusals));
	fx->refusals[fx->n_refusals++] = (struct filter_refusal){
		.stage = xstrdup(stage),
		.name = printable,
		.reason = reason,
	};
}

int filter_tx_add_header(struct filter_tx *fx, const char *name, const char *value)
{
	const char *why;
	char *folded;

	if (name == NULL || value == NULL) {
		filter_tx_refuse(fx, name != NULL ? name : "", "missing name or value");
		return -1;
	}
	why = header_check_name(name);
	if (why == NULL)
		why = header_check_value(value);
	if (why != NULL) {
		filter_tx_refuse(fx, name, why);
		return -1;
	}
	folded = header_fold(strlen(name), value);
	if (folded == NULL) {
		filter_tx_refuse(fx, name, "line longer than 998 octets");
		return -1;
	}
	filter_tx_reserve((void **)&fx->headers, &fx->cap_headers, fx->n_headers,
			  sizeof(*fx->headers));
	fx->headers[fx->n_headers++] = (struct filter_header){
		.name = xstrdup(name),
		.value = folded,
	};
	return 0;
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
