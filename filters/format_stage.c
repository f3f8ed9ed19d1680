/*
 * format_stage.c — the "format" stage: what a receiving server checks of a
 * message's shape on arrival (RFC 5322), at the end of DATA.
 *
 *   format {
 *       max_header_size = 262144    # octets of the header section
 *       max_fields = 1000           # header fields
 *       scores = {"FORMAT_NO_DATE=0.5"}
 *       actions = {"FORMAT_NUL=reject", "FORMAT_MULTI_FROM=reject"}
 *   }
 *
 * The checks (each a hit of the stage, with a score and an action: score,
 * reject, quarantine or tempfail), from lib/msgformat.c's scan of the
 * message as received:
 *   FORMAT_NO_FROM, FORMAT_NO_DATE       a required field is missing (3.6)
 *   FORMAT_MULTI_FROM, _SENDER, _TO, _SUBJECT, _DATE, _MSGID
 *                                        a field that may occur once, twice
 *   FORMAT_BAD_FROM                      From is not a mailbox-list
 *   FORMAT_LONG_LINE                     a header line over 998 octets (2.1.1)
 *   FORMAT_8BIT_HEADER                   raw 8-bit octets in the header (the
 *                                        session offers no SMTPUTF8)
 *   FORMAT_HEADER_SIZE, FORMAT_MANY_FIELDS  over max_header_size, max_fields
 *   FORMAT_NUL                           a NUL octet anywhere
 *   FORMAT_NO_SEPARATOR                  no empty line after the header
 *   FORMAT_SIZE_LIMIT                    larger than a recipient's size_limits
 *                                        entry (at RCPT from MAIL's SIZE=, and at
 *                                        the end of DATA: 552 5.3.4)
 * Defaults are conservative: a score, never a refusal — except NUL octets,
 * refused (550 5.6.0) because they break the software downstream (IMAP
 * servers, MUAs, the relay's peers). The scan runs on the worker pool's
 * scan lane: a body may be spilled to disk, and the NUL check reads it all.
 */
#include "config.h"

#include <confuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "filters/filters.h"
#include "lib/lib.h"

enum fmt_act { FACT_SCORE, FACT_REJECT, FACT_QUARANTINE, FACT_TEMPFAIL };
static const char *const fmt_act_names[] = { "score", "reject", "quarantine", "tempfail", NULL };

enum fmt_check {
	F_NO_FROM, F_NO_DATE, F_MULTI_FROM, F_MULTI_SENDER, F_MULTI_TO, F_MULTI_SUBJECT,
	F_MULTI_DATE, F_MULTI_MSGID, F_BAD_FROM, F_LONG_LINE, F_8BIT_HEADER, F_HEADER_SIZE,
	F_MANY_FIELDS, F_NUL, F_NO_SEPARATOR, F_COUNT
};

static const struct {
	const char *name;
	double score;
	enum fmt_act act;
	const char *text; /* the refusal's text, and the hit's description */
} fmt_checks[F_COUNT] = {
	[F_NO_FROM] = { "FORMAT_NO_FROM", 1.0, FACT_SCORE, "Message has no From header field" },
	[F_NO_DATE] = { "FORMAT_NO_DATE", 0.5, FACT_SCORE, "Message has no Date header field" },
	[F_MULTI_FROM] = { "FORMAT_MULTI_FROM", 2.0, FACT_SCORE,
			   "Message has more than one From header field" },
	[F_MULTI_SENDER] = { "FORMAT_MULTI_SENDER", 1.0, FACT_SCORE,
			     "Message has more than one Sender header field" },
	[F_MULTI_TO] = { "FORMAT_MULTI_TO", 1.0, FACT_SCORE,
			 "Message has more than one To header field" },
	[F_MULTI_SUBJECT] = { "FORMAT_MULTI_SUBJECT", 1.0, FACT_SCORE,
			      "Message has more than one Subject header field" },
	[F_MULTI_DATE] = { "FORMAT_MULTI_DATE", 1.0, FACT_SCORE,
			   "Message has more than one Date header field" },
	[F_MULTI_MSGID] = { "FORMAT_MULTI_MSGID", 1.0, FACT_SCORE,
			    "Message has more than one Message-ID header field" },
	[F_BAD_FROM] = { "FORMAT_BAD_FROM", 1.5, FACT_SCORE,
			 "Message has a malformed From address" },
	[F_LONG_LINE] = { "FORMAT_LONG_LINE", 1.0, FACT_SCORE,
			  "Message has a header line longer than 998 octets" },
	[F_8BIT_HEADER] = { "FORMAT_8BIT_HEADER", 0.5, FACT_SCORE,
			    "Message has raw 8-bit octets in its header" },
	[F_HEADER_SIZE] = { "FORMAT_HEADER_SIZE", 2.0, FACT_SCORE,
			    "Message header section too large" },
	[F_MANY_FIELDS] = { "FORMAT_MANY_FIELDS", 2.0, FACT_SCORE,
			    "Message has too many header fields" },
	[F_NUL] = { "FORMAT_NUL", 3.0, FACT_REJECT, "Message contains NUL octets" },
	[F_NO_SEPARATOR] = { "FORMAT_NO_SEPARATOR", 1.0, FACT_SCORE,
			     "Message has no empty line after its header" },
};

/* A size limit: "example.org=10485760" (the domain's recipients) or
 * "vip@example.org=52428800" (one recipient, before its domain's). */
struct fmt_size {
	char *who; /* lower case */
	uint64_t max;
};

struct fmt_stage {
	struct stage hdr; /* must be first */
	size_t max_header_size, max_fields;
	struct fmt_size *sizes;
	size_t n_sizes;
	double score[F_COUNT];
	enum fmt_act act[F_COUNT];
};

struct fmt_job {
	const struct fmt_stage *st;
	struct msgbody *body;
	bool ok;
	bool found[F_COUNT];
};

static cfg_opt_t fmt_opts[] = {
	CFG_STR_LIST("size_limits", "{}", CFGF_NONE),
	CFG_INT("max_header_size", 262144, CFGF_NONE),
	CFG_INT("max_fields", 1000, CFGF_NONE),
	CFG_STR_LIST("scores", "{}", CFGF_NONE),
	CFG_STR_LIST("actions", "{}", CFGF_NONE),
	CFG_END()
};

static void
fmt_work(void *arg)
{
	struct fmt_job *j = arg;
	struct msg_format f;
	size_t len = 0;
	const char *data = msgbody_contents(j->body, &len);

	if (data == NULL)
		return;
	j->ok = true;
	msg_format_scan(data, len, &f);
	j->found[F_NO_FROM] = f.n_from == 0;
	j->found[F_NO_DATE] = f.n_date == 0;
	j->found[F_MULTI_FROM] = f.n_from > 1;
	j->found[F_MULTI_SENDER] = f.n_sender > 1;
	j->found[F_MULTI_TO] = f.n_to > 1;
	j->found[F_MULTI_SUBJECT] = f.n_subject > 1;
	j->found[F_MULTI_DATE] = f.n_date > 1;
	j->found[F_MULTI_MSGID] = f.n_msgid > 1;
	j->found[F_BAD_FROM] = f.n_from > 0 && f.from_malformed;
	j->found[F_LONG_LINE] = f.longest_line > 998;
	j->found[F_8BIT_HEADER] = f.header_8bit;
	j->found[F_HEADER_SIZE] = f.header_len > j->st->max_header_size;
	j->found[F_MANY_FIELDS] = f.n_fields > j->st->max_fields;
	j->found[F_NUL] = f.nul;
	j->found[F_NO_SEPARATOR] = !f.separator;
}

static void
fmt_done(struct stage_call *call, void *arg)
{
	struct fmt_job *j = arg;
	const struct fmt_stage *st = j->st;
	struct filter_result *res;

	if (call == NULL) {
		free(j);
		return;
	}
	res = &call->result;
	memset(res, 0, sizeof(*res));
	res->verdict = VERDICT_CONTINUE;
	if (!j->ok) {
		free(j);
		str_copy(res->text, "Message cannot be read, try again later", sizeof(res->text));
		stage_call_done(call, CHECK_FAILED);
		return;
	}
	for (int i = 0; i < F_COUNT; i++) {
		if (!j->found[i])
			continue;
		filter_tx_add_score(call->fx, st->hdr.name, fmt_checks[i].name, st->score[i],
				    fmt_checks[i].text);
		if (st->act[i] == FACT_SCORE || res->verdict != VERDICT_CONTINUE)
			continue;
		switch (st->act[i]) {
		case FACT_REJECT:
			res->verdict = VERDICT_REJECT;
			res->code = 550;
			str_copy(res->enhanced, i == F_HEADER_SIZE ? "5.3.4" : "5.6.0",
				 sizeof(res->enhanced));
			str_copy(res->text, fmt_checks[i].text, sizeof(res->text));
			break;
		case FACT_QUARANTINE:
			res->verdict = VERDICT_QUARANTINE;
			break;
		case FACT_TEMPFAIL:
			res->verdict = VERDICT_TEMPFAIL;
			res->code = 451;
			str_copy(res->enhanced, "4.6.0", sizeof(res->enhanced));
			snprintf(res->text, sizeof(res->text), "%s, try again later",
				 fmt_checks[i].text);
			break;
		case FACT_SCORE:
			break;
		}
	}
	free(j);
	stage_call_done(call, CHECK_DONE);
}

/* The size limit of a recipient: its own entry, else its domain's; 0 = none. */
static uint64_t
fmt_size_limit(const struct fmt_stage *st, const char *rcpt)
{
	const char *at = strrchr(rcpt, '@');
	uint64_t domain = 0;

	for (size_t i = 0; i < st->n_sizes; i++) {
		if (strcasecmp(st->sizes[i].who, rcpt) == 0)
			return st->sizes[i].max;
		if (at != NULL && strcasecmp(st->sizes[i].who, at + 1) == 0)
			domain = st->sizes[i].max;
	}
	return domain;
}

/* Over a recipient's limit: the hit, and 552 5.3.4 (RFC 1870). */
static void
fmt_size_refuse(struct stage_call *call, const char *rcpt, uint64_t limit)
{
	struct filter_result *res = &call->result;

	filter_tx_add_score(call->fx, call->stage->name, "FORMAT_SIZE_LIMIT", 0.0,
			    "Message larger than the recipient's size limit");
	res->verdict = VERDICT_REJECT;
	res->code = 552;
	str_copy(res->enhanced, "5.3.4", sizeof(res->enhanced));
	snprintf(res->text, sizeof(res->text), "Message size exceeds the limit of %.200s "
		 "(%llu octets)", rcpt, (unsigned long long)limit);
}

static enum check_status
fmt_check(struct stage *stage, struct stage_call *call)
{
	const struct fmt_stage *st = (const struct fmt_stage *)stage;
	struct fmt_job *j;

	memset(&call->result, 0, sizeof(call->result));
	if (call->phase == PHASE_RCPT) {
		/* what the client declared (SIZE=) against this recipient */
		uint64_t limit = call->msg->rcpt != NULL ? fmt_size_limit(st, call->msg->rcpt) : 0;
		if (limit != 0 && call->msg->declared_size > limit)
			fmt_size_refuse(call, call->msg->rcpt, limit);
		return CHECK_DONE;
	}
	if (call->phase != PHASE_DATA || call->msg->body == NULL)
		return CHECK_DONE;
	/* what arrived, against every recipient: the end of DATA answers for
	 * the whole message, so one recipient over its limit refuses it */
	for (size_t i = 0; i < call->msg->n_rcpts; i++) {
		uint64_t limit = fmt_size_limit(st, call->msg->rcpts[i]);
		if (limit != 0 && msgbody_size(call->msg->body) > limit) {
			fmt_size_refuse(call, call->msg->rcpts[i], limit);
			return CHECK_DONE;
		}
	}
	j = xcalloc(1, sizeof(*j));
	j->st = (const struct fmt_stage *)stage;
	j->body = call->msg->body;
	if (stage_submit_job(call, fmt_work, fmt_done, j) < 0) {
		free(j);
		str_copy(call->result.text, "Format check busy, try again later",
			 sizeof(call->result.text));
		return CHECK_FAILED;
	}
	return CHECK_PENDING;
}

static void
fmt_free(struct fmt_stage *st)
{
	for (size_t i = 0; i < st->n_sizes; i++)
		free(st->sizes[i].who);
	free(st->sizes);
	free(st);
}

static int
fmt_named(const char *name, size_t n)
{
	for (int i = 0; i < F_COUNT; i++) {
		if (strlen(fmt_checks[i].name) == n && strncasecmp(fmt_checks[i].name, name, n) == 0)
			return i;
	}
	return -1;
}

static int
fmt_create(cfg_t *section, const struct mx_config *cfg, struct stage **st_r, char **error_r)
{
	struct fmt_stage *st = xcalloc(1, sizeof(*st));
	long mh = cfg_getint(section, "max_header_size"), mf = cfg_getint(section, "max_fields");

	(void)cfg;
	if (mh < 1024 || mh > 64L << 20 || mf < 10 || mf > 1000000) {
		*error_r = xstrdup("format: max_header_size must be 1024..67108864 and max_fields "
				   "10..1000000");
		free(st);
		return -1;
	}
	st->max_header_size = (size_t)mh;
	st->max_fields = (size_t)mf;
	st->n_sizes = cfg_size(section, "size_limits");
	st->sizes = xcalloc(st->n_sizes + 1, sizeof(*st->sizes));
	for (size_t i = 0; i < st->n_sizes; i++) {
		const char *v = cfg_getnstr(section, "size_limits", i), *eq = strrchr(v, '=');
		char *end = NULL;
		unsigned long long max = eq != NULL ? strtoull(eq + 1, &end, 10) : 0;
		if (eq == NULL || eq == v || end == eq + 1 || *end != '\0' || max < 1024 ||
		    eq[1] == '-') {
			*error_r = xasprintf("format: size_limits: \"%s\" is not DOMAIN=OCTETS or "
					     "ADDRESS=OCTETS (at least 1024)", v);
			fmt_free(st);
			return -1;
		}
		st->sizes[i].who = xstrndup(v, (size_t)(eq - v));
		for (char *c = st->sizes[i].who; *c != '\0'; c++)
			*c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
		st->sizes[i].max = max;
	}
	st->hdr.phases = PHASE_BIT(PHASE_DATA) | (st->n_sizes > 0 ? PHASE_BIT(PHASE_RCPT) : 0);
	for (int i = 0; i < F_COUNT; i++) {
		st->score[i] = fmt_checks[i].score;
		st->act[i] = fmt_checks[i].act;
	}
	for (size_t i = 0; i < cfg_size(section, "scores"); i++) {
		const char *v = cfg_getnstr(section, "scores", i), *eq = strchr(v, '=');
		char *end = NULL;
		int k = eq != NULL ? fmt_named(v, (size_t)(eq - v)) : -1;
		double s = eq != NULL ? strtod(eq + 1, &end) : 0;
		if (k < 0 || end == eq + 1 || *end != '\0') {
			*error_r = xasprintf("format: scores: \"%s\" is not CHECK=SCORE with a check "
					     "such as FORMAT_NO_DATE", v);
			fmt_free(st);
			return -1;
		}
		st->score[k] = s;
	}
	for (size_t i = 0; i < cfg_size(section, "actions"); i++) {
		const char *v = cfg_getnstr(section, "actions", i), *eq = strchr(v, '=');
		int k = eq != NULL ? fmt_named(v, (size_t)(eq - v)) : -1, a = -1;
		for (int x = 0; k >= 0 && fmt_act_names[x] != NULL; x++) {
			if (strcmp(fmt_act_names[x], eq + 1) == 0)
				a = x;
		}
		if (k < 0 || a < 0) {
			*error_r = xasprintf("format: actions: \"%s\" is not CHECK=ACTION (score, "
					     "reject, quarantine or tempfail)", v);
			fmt_free(st);
			return -1;
		}
		st->act[k] = (enum fmt_act)a;
	}
	*st_r = &st->hdr;
	return 0;
}

static void
fmt_destroy(struct stage *stage)
{
	fmt_free((struct fmt_stage *)stage);
}

const struct stage_ops format_stage_ops = {
	.name = "format",
	.phases = PHASE_BIT(PHASE_RCPT) | PHASE_BIT(PHASE_DATA),
	.default_on_error = ON_ERROR_ACCEPT,
	.opts = fmt_opts,
	.create = fmt_create,
	.check = fmt_check,
	.destroy = fmt_destroy,
};
