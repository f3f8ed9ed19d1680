/*
 * rules_stage.c — the "rules" stage: rule files scored at the end of DATA.
 *
 *   rules {
 *       files = {"rules/local.cf"}
 *       optional_files = {"/usr/share/spamassassin/50_scores.cf"}
 *       match_limit = 200000
 *   }
 *
 * The files (globs, each expanded in sorted order as SpamAssassin loads
 * its directory) are compiled when the pipeline is built — at start and at
 * every reload, aside, so a rule set with errors fails the reload and the
 * running one stays. At DATA the message's text views are built (GMime,
 * lib/msgtext.c) and the rules run on the worker pool's scan lane; every
 * rule that hit adds its score under its own name (the X-Spam-Status
 * tests= list and the log line's hits=), and an `action` rule that hit
 * decides the verdict. The hits of the stages before ("auth:DMARC_FAIL")
 * are handed to the rules for their `stage` lines. The pipeline maps the total to tag/junk/reject.
 */
#include "config.h"

#include <confuse.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "filters/filters.h"
#include "lib/metrics.h"
#include "rules/rules.h"
#include "lib/lib.h"

struct rules_stage {
	struct stage hdr; /* must be first */
	struct rule_set *rs;
};

/* A check on the scan lane; owns copies of what it reads. */
struct rules_job {
	const struct rules_stage *st;
	struct msgbody *body;      /* the job's reference is the pipeline's */
	char *mail_from, *helo, *client_addr, *client_rdns;
	char **stage_hits;      /* "stage:RULE" of the stages before */
	size_t n_stage_hits;
	char **rcpts;
	size_t n_rcpts;
	struct rules_result res;
	bool no_text;
};

static cfg_opt_t rules_opts[] = {
	CFG_STR_LIST("files", "{}", CFGF_NONE),
	CFG_STR_LIST("optional_files", "{}", CFGF_NONE),
	CFG_INT("match_limit", 200000, CFGF_NONE),
	CFG_END()
};

static int
rules_create(cfg_t *section, const struct mx_config *cfg, struct stage **st_r, char **error_r)
{
	struct rules_stage *st = xcalloc(1, sizeof(*st));
	size_t n = cfg_size(section, "files"), nf = 0;
	char **patterns = xcalloc(n + 1, sizeof(*patterns)), **files = NULL;
	struct rules_load_opts opts = { .match_limit = (unsigned long)cfg_getint(section,
										  "match_limit") };
	char *err = NULL;

	(void)cfg;
	for (size_t i = 0; i < n; i++)
		patterns[i] = cfg_getnstr(section, "files", i);
	if (cfg_getint(section, "match_limit") < 1000) {
		*error_r = xstrdup("rules: match_limit must be at least 1000");
		free(patterns);
		free(st);
		return -1;
	}
	if (n == 0 && cfg_size(section, "optional_files") == 0) {
		*error_r = xstrdup("rules: files is empty: name the rule files to load");
		free(patterns);
		free(st);
		return -1;
	}
	if (rules_expand_files(patterns, n, &files, &nf, error_r) < 0) {
		free(patterns);
		free(st);
		return -1;
	}
	free(patterns);
	/* optional_files: globs that may match nothing (a package's rules
	 * that may not be installed) */
	for (size_t i = 0; i < cfg_size(section, "optional_files"); i++) {
		glob_t g;
		if (glob(cfg_getnstr(section, "optional_files", i), 0, NULL, &g) == 0) {
			files = xrealloc(files, (nf + g.gl_pathc + 1) * sizeof(*files));
			for (size_t k = 0; k < g.gl_pathc; k++)
				files[nf++] = xstrdup(g.gl_pathv[k]);
			files[nf] = NULL;
		}
		globfree(&g);
	}
	st->rs = rules_load((const char *const *)files, nf, &opts, false, NULL, NULL, &err);
	for (size_t i = 0; i < nf; i++)
		free(files[i]);
	free(files);
	if (st->rs == NULL) {
		*error_r = xasprintf("rules: %s", err);
		free(err);
		free(st);
		return -1;
	}
	struct rules_stats s;
	rules_get_stats(st->rs, &s);
	/* the set built last (a reload that fails after this keeps the old
	 * pipeline: the gauges then name the set it did not install) */
	metrics_set(METRIC_RULES_LOAD_TIME, (int64_t)time(NULL));
	metrics_set(METRIC_RULES_COUNT, (int64_t)rules_count(st->rs));
	log_msg(LOG_LEVEL_INFO, "rules: %zu loaded, %zu skipped (eval %zu, plugins %zu, other %zu), "
		"%zu lines ignored, %zu warnings", s.loaded,
		s.skipped_eval + s.skipped_plugin + s.skipped_other, s.skipped_eval,
		s.skipped_plugin, s.skipped_other, s.ignored_lines, s.warnings);
	*st_r = &st->hdr;
	return 0;
}

static void
rules_job_free(struct rules_job *j)
{
	free(j->mail_from);
	free(j->helo);
	free(j->client_addr);
	free(j->client_rdns);
	for (size_t i = 0; i < j->n_stage_hits; i++)
		free(j->stage_hits[i]);
	free(j->stage_hits);
	for (size_t i = 0; i < j->n_rcpts; i++)
		free(j->rcpts[i]);
	free(j->rcpts);
	rules_result_clear(&j->res);
	free(j);
}

static void
rules_work(void *arg)
{
	struct rules_job *j = arg;
	const struct msgtext *t = msgbody_text(j->body);
	const struct rules_envelope env = {
		.mail_from = j->mail_from, .rcpts = (const char *const *)j->rcpts,
		.n_rcpts = j->n_rcpts, .helo = j->helo, .client_addr = j->client_addr,
		.client_rdns = j->client_rdns,
		.stage_hits = (const char *const *)j->stage_hits, .n_stage_hits = j->n_stage_hits,
	};

	j->no_text = t == NULL;
	rules_eval(j->st->rs, t, &env, true, &j->res);
}

static void
rules_done(struct stage_call *call, void *arg)
{
	struct rules_job *j = arg;

	if (call != NULL) {
		for (size_t i = 0; i < j->res.n_hits; i++) {
			const struct rules_hit *h = &j->res.hits[i];
			filter_tx_add_score(call->fx, call->stage->name, h->name, h->score, h->describe);
			metrics_add_label(METRIC_RULE_HITS, h->name, 1);
		}
		static const enum verdict verdicts[] = {
			[RULES_CONTINUE] = VERDICT_CONTINUE, [RULES_ACCEPT] = VERDICT_ACCEPT,
			[RULES_REJECT] = VERDICT_REJECT, [RULES_TEMPFAIL] = VERDICT_TEMPFAIL,
			[RULES_DISCARD] = VERDICT_DISCARD, [RULES_QUARANTINE] = VERDICT_QUARANTINE,
		};
		memset(&call->result, 0, sizeof(call->result));
		call->result.verdict = verdicts[j->res.verdict];
		if (j->res.verdict == RULES_REJECT || j->res.verdict == RULES_TEMPFAIL) {
			call->result.code = j->res.reply.code;
			str_copy(call->result.enhanced, j->res.reply.enhanced,
				 sizeof(call->result.enhanced));
			str_copy(call->result.text, j->res.reply.text, sizeof(call->result.text));
		}
		stage_call_done(call, CHECK_DONE);
	}
	rules_job_free(j);
}

static enum check_status
rules_check(struct stage *stage, struct stage_call *call)
{
	const struct rules_stage *st = (const struct rules_stage *)stage;
	const struct filter_msg *msg = call->msg;
	struct rules_job *j = xcalloc(1, sizeof(*j));

	j->st = st;
	j->body = msg->body;
	j->mail_from = xstrdup(msg->mail_from != NULL ? msg->mail_from : "");
	j->helo = xstrdup(msg->helo != NULL ? msg->helo : "");
	j->client_addr = xstrdup(msg->client_addr != NULL ? msg->client_addr : "");
	j->client_rdns = xstrdup(msg->client_rdns_status == RDNS_CONFIRMED &&
				 msg->client_rdns != NULL ? msg->client_rdns : "");
	/* what the stages before found (auth's DMARC_FAIL, dnsbl's lists,
	 * format's checks): `stage` rules match them, meta rules combine them */
	const struct filter_hit *hits;
	size_t n_hits = filter_tx_hits(call->fx, &hits);
	j->stage_hits = xcalloc(n_hits + 1, sizeof(*j->stage_hits));
	for (size_t i = 0; i < n_hits; i++) {
		if (strcmp(hits[i].stage, call->stage->name) != 0)
			j->stage_hits[j->n_stage_hits++] = xasprintf("%s:%s", hits[i].stage,
								     hits[i].rule);
	}
	j->rcpts = xcalloc(msg->n_rcpts + 1, sizeof(*j->rcpts));
	for (size_t i = 0; i < msg->n_rcpts; i++)
		j->rcpts[i] = xstrdup(msg->rcpts[i]);
	j->n_rcpts = msg->n_rcpts;
	if (stage_submit_job(call, rules_work, rules_done, j) < 0) {
		rules_job_free(j);
		return CHECK_FAILED;
	}
	return CHECK_PENDING;
}

static void
rules_destroy(struct stage *stage)
{
	struct rules_stage *st = (struct rules_stage *)stage;

	rules_free(&st->rs);
	free(st);
}

const struct stage_ops rules_stage_ops = {
	.name = "rules",
	.phases = PHASE_BIT(PHASE_DATA),
	.default_on_error = ON_ERROR_ACCEPT,
	.opts = rules_opts,
	.create = rules_create,
	.check = rules_check,
	.destroy = rules_destroy,
};
