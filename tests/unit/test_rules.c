/*
 * test_rules.c — the rule language: every keyword, every error with its
 * line and column, conditionals, meta evaluation, scores, match limits,
 * and matching against real text views (lib/msgtext.c over GMime).
 */
#include "config.h"

#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "rules/rules.h"
#include "lib/lib.h"

static char tmpdir[PATH_MAX];

static char *
write_rules(const char *name, const char *text)
{
	char *path = xasprintf("%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return path;
}

/* Load text as one file; must succeed. */
static struct rule_set *
load_text(const char *text)
{
	char *path = write_rules("t.cf", text), *err = NULL;
	const char *files[] = { path };
	struct rule_set *rs = rules_load(files, 1, NULL, false, NULL, NULL, &err);

	if (rs == NULL)
		fail_msg("load failed: %s\n--- rules ---\n%s", err, text);
	free(path);
	return rs;
}

/* Load text; must fail with an error at line:col containing needle. */
static void
load_fails(const char *text, int line, int col, const char *needle)
{
	char *path = write_rules("bad.cf", text), *err = NULL;
	const char *files[] = { path };
	struct rule_set *rs = rules_load(files, 1, NULL, false, NULL, NULL, &err);

	if (rs != NULL)
		fail_msg("loaded, but should fail with \"%s\":\n%s", needle, text);
	/* line 0: any line; col 0: any column */
	char *want = line == 0 ? xasprintf("%s:", path)
		     : col > 0 ? xasprintf("%s:%d:%d: ", path, line, col)
			       : xasprintf("%s:%d:", path, line);
	if (strncmp(err, want, strlen(want)) != 0 || strstr(err, needle) == NULL)
		fail_msg("error \"%s\" is not at %s or lacks \"%s\"", err, want, needle);
	free(want);
	free(err);
	free(path);
}

static struct msgbody *
body_of(const char *text)
{
	struct msgbody *b = msgbody_new(tmpdir, 1 << 20);

	assert_int_equal(msgbody_append(b, text, strlen(text)), 0);
	assert_int_equal(msgbody_seal(b), 0);
	return b;
}

static bool
hit(const struct rules_result *res, const char *name, double *score_r)
{
	for (size_t i = 0; i < res->n_hits; i++) {
		if (strcmp(res->hits[i].name, name) == 0) {
			if (score_r != NULL)
				*score_r = res->hits[i].score;
			return true;
		}
	}
	return false;
}

/* Evaluate rules on a message text and an envelope. */
static void
eval(const struct rule_set *rs, const char *message, const struct rules_envelope *env,
     struct rules_result *res)
{
	struct msgbody *b = message != NULL ? body_of(message) : NULL;

	rules_eval(rs, b != NULL ? msgbody_text(b) : NULL, env, false, res);
	msgbody_free(&b);
}

static const char MSG[] =
	"From: \"Joe Example\" <joe@example.org>\r\n"
	"To: alice@example.test\r\n"
	"Cc: bob@example.test\r\n"
	"Subject: =?UTF-8?B?Q2Fmw6kgb2ZmZXI=?= today\r\n"
	"Message-ID: <1@example.org>\r\n"
	"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
	"X-Folded: first\r\n"
	"\tsecond\r\n"
	"\r\n"
	"Hello there,\r\n"
	"visit http://www.example.com/offer now.\r\n"
	"FREE money FREE money FREE money\r\n";

/* ------------------------------------------------------------- parsing */

static void
test_errors_have_positions(void **state)
{
	(void)state;
	load_fails("body A /unclosed\n", 1, 8, "not closed");
	load_fails("# comment\nbody A /a(/\n", 2, 11, "does not compile"); /* where the pattern ends */
	load_fails("body A /a/q\n", 1, 11, "unknown regex flag 'q'");
	load_fails("body A nope\n", 1, 8, "expected a regex");
	load_fails("header A Subject ~ /x/\n", 1, 18, "expected =~ or !~");
	load_fails("meta A (B && \n", 1, 0, "meta:");
	load_fails("meta A B C\n", 1, 0, "unexpected text");
	load_fails("score A abc\n", 1, 9, "expected a number");
	load_fails("score A 1 2\n", 1, 9, "one value or four");
	load_fails("body A /x/\naction A explode\n", 2, 0, "expected reject");
	load_fails("body A /x/\naction A reject \"451 4.7.1 no\"\n", 2, 0, "does not fit");
	load_fails("client A 10.0.0.0/33\n", 1, 10, "not an address");
	load_fails("if (version >= 3.0)\nbody A /x/\n", 0, 0, "without endif");
	load_fails("else\n", 1, 1, "else without if");
	load_fails("body 9-A /x/\n", 1, 6, "expected a rule name");
	load_fails("meta A B\nmeta B A\n", 0, 0, "depends on itself");
	load_fails("include missing.cf\n", 0, 0, "No such file");
}

static void
test_warnings_and_lint(void **state)
{
	char *path = write_rules("w.cf", "frobnicate X 1\nbody A /x/\nbody A /y/\nmeta M (A && NOPE)\n"
				 "score ONLY 2\n");
	const char *files[] = { path };
	struct rules_load_opts opts = { .lint = true };
	struct rules_diag *d = NULL;
	size_t nd = 0;
	char *err = NULL;
	struct rule_set *rs = rules_load(files, 1, &opts, false, &d, &nd, &err);
	bool unknown = false, again = false, nope = false, only = false;

	assert_non_null(rs);
	for (size_t i = 0; i < nd; i++) {
		assert_false(d[i].error);
		unknown = unknown || (strstr(d[i].message, "unknown keyword \"frobnicate\"") && d[i].line == 1);
		again = again || (strstr(d[i].message, "A: defined again") && d[i].line == 3);
		nope = nope || strstr(d[i].message, "names NOPE, which is not defined");
		only = only || strstr(d[i].message, "ONLY has a score");
	}
	assert_true(unknown && again && nope && only);
	rules_diags_free(d, nd);
	rules_free(&rs);
	free(path);
}

static void
test_conditionals(void **state)
{
	struct rule_set *rs = load_text(
		"if (version >= 3.004000)\nbody V_NEW /Hello/\nelse\nbody V_OLD /Hello/\nendif\n"
		"if version < 3.0\nbody V_ANCIENT /Hello/\nendif\n"
		"ifplugin Mail::SpamAssassin::Plugin::Bayes\nbody P_IN /Hello/\nheader P_EVAL eval:x()\nendif\n"
		"if !plugin(Mail::SpamAssassin::Plugin::Bayes)\nbody P_NOT /Hello/\nendif\n"
		"if !plugin(Mail::SpamAssassin::Plugin::ReplaceTags)\nbody P_RT_MISSING /Hello/\nendif\n"
		"ifplugin Mail::SpamAssassin::Plugin::ReplaceTags\nbody P_RT /Hello/\nendif\n"
		"if can(Mail::SpamAssassin::Conf::feature_bug6558_free)\nbody C_YES /Hello/\nendif\n"
		"if can(Mail::SpamAssassin::Conf::feature_not_here)\nbody C_NO /Hello/\nendif\n"
		"ifplugin Mail::SpamAssassin::Plugin::X\nif (version >= 3)\nbody NESTED /Hello/\nendif\n"
		"else\nbody ELSE_OF_PLUGIN /Hello/\nendif\n");
	struct rules_result res;
	struct rules_stats st;

	eval(rs, MSG, NULL, &res);
	assert_true(hit(&res, "V_NEW", NULL));
	assert_true(hit(&res, "P_NOT", NULL));
	assert_true(hit(&res, "C_YES", NULL));
	assert_true(hit(&res, "ELSE_OF_PLUGIN", NULL));
	assert_true(hit(&res, "P_RT", NULL)); /* mxguard does ReplaceTags */
	assert_false(hit(&res, "P_RT_MISSING", NULL));
	assert_false(hit(&res, "V_OLD", NULL));
	assert_false(hit(&res, "V_ANCIENT", NULL));
	assert_false(hit(&res, "P_IN", NULL));
	assert_false(hit(&res, "C_NO", NULL));
	assert_false(hit(&res, "NESTED", NULL));
	rules_get_stats(rs, &st);
	assert_int_equal(st.skipped_plugin, 3); /* P_IN, P_EVAL, NESTED */
	rules_result_clear(&res);
	rules_free(&rs);
}

/* SpamAssassin's ReplaceTags: <TAG> in the patterns replace_rules names,
 * with pre/post around each tag and inter between adjacent ones. */
static void
test_replace_tags(void **state)
{
	struct rule_set *rs = load_text(
		"replace_tag F (?:[fF]|ph)\nreplace_tag R [rR]\nreplace_tag E [eE3]\n"
		"replace_inter W1 \\W?\nreplace_post P2 {1,2}\n"
		"replace_tag FREE <F><R><E><E>\n" /* a tag made of tags: a second pass */
		"body FUZZY_FREE /<inter W1><post P2>\\b<F><R><E><E>\\b/\n"
		"body NESTED /\\b<FREE>\\b/\n"
		"body NOT_LISTED /<F><R><E><E>/\n"
		"replace_rules FUZZY_FREE NESTED\n");
	struct rules_result res;

	(void)state;
	eval(rs, "Subject: x\r\n\r\nget it ph-r.33 now\r\n", NULL, &res);
	assert_true(hit(&res, "FUZZY_FREE", NULL));
	assert_false(hit(&res, "NESTED", NULL));
	assert_false(hit(&res, "NOT_LISTED", NULL));
	rules_result_clear(&res);
	eval(rs, "Subject: x\r\n\r\nall phR3e here\r\n", NULL, &res);
	assert_true(hit(&res, "NESTED", NULL));
	rules_result_clear(&res);
	eval(rs, "Subject: x\r\n\r\n<F><R><E><E>\r\n", NULL, &res);
	assert_true(hit(&res, "NOT_LISTED", NULL)); /* no replace_rules: literal */
	rules_result_clear(&res);
	rules_free(&rs);
}

static void
test_include_and_comments(void **state)
{
	char *inc = write_rules("inc.cf", "body INCLUDED /there/ # trailing comment\n");
	struct rule_set *rs = load_text("  # indented comment\ninclude inc.cf\n"
					"body HASH /money \\# no/\n"); /* \# is a literal # */
	struct rules_result res;

	eval(rs, MSG, NULL, &res);
	assert_true(hit(&res, "INCLUDED", NULL));
	assert_false(hit(&res, "HASH", NULL));
	rules_result_clear(&res);
	rules_free(&rs);
	free(inc);
}

/* ------------------------------------------------------------ matching */

static void
test_header_rules(void **state)
{
	struct rule_set *rs = load_text(
		"header SUBJ_DECODED Subject =~ /^Caf\xc3\xa9 offer today$/\n"
		"header SUBJ_RAW Subject:raw =~ /=\\?UTF-8\\?B\\?/i\n"
		"header FROM_ADDR From:addr =~ /^joe\\@example\\.org$/\n"
		"header FROM_NAME From:name =~ /^Joe Example$/\n"
		"header HAS_DATE exists:Date\n"
		"header HAS_NOPE exists:X-Nope\n"
		"header HAS_TOCC exists:ToCc\n"
		"header MISSING_EMPTY X-Nope =~ /^$/\n"
		"header MISSING_UNSET X-Nope =~ /^fallback$/ [if-unset: fallback]\n"
		"header NEGATED X-Nope !~ /./\n"
		"header TOCC ToCc =~ /alice.*\\n.*bob/s\n"
		"header ALLH ALL =~ /^Message-ID: <1\\@example\\.org>$/m\n"
		"header MSGID MESSAGEID =~ /1\\@example/\n"
		"header ENVFROM EnvelopeFrom =~ /^bounce\\@example\\.net$/\n"
		"header FOLDED X-Folded =~ /^first\\s+second$/\n"
		"header FOLDED_RAW X-Folded:raw =~ /first\\r?\\n\\tsecond/\n"
		"header SA_MADE X-Spam-Relays-External =~ /./\n");
	const struct rules_envelope env = { .mail_from = "bounce@example.net" };
	struct rules_result res;
	struct rules_stats st;

	eval(rs, MSG, &env, &res);
	const char *want[] = { "SUBJ_DECODED", "SUBJ_RAW", "FROM_ADDR", "FROM_NAME", "HAS_DATE", "HAS_TOCC",
			       "MISSING_EMPTY", "MISSING_UNSET", "NEGATED", "TOCC", "ALLH", "MSGID",
			       "ENVFROM", "FOLDED", "FOLDED_RAW" };
	for (size_t i = 0; i < N_ELEMENTS(want); i++) {
		if (!hit(&res, want[i], NULL))
			fail_msg("%s did not hit", want[i]);
	}
	assert_false(hit(&res, "HAS_NOPE", NULL));
	assert_false(hit(&res, "SA_MADE", NULL));
	rules_get_stats(rs, &st);
	assert_int_equal(st.skipped_other, 1);
	rules_result_clear(&res);
	rules_free(&rs);
}

static void
test_body_uri_full_multiple(void **state)
{
	struct rule_set *rs = load_text(
		"body SUBJECT_IN_BODY /^Caf\xc3\xa9 offer today$/\n" /* Subject is the first paragraph */
		"body FREE /FREE money/\ntflags FREE multiple\nscore FREE 1.5\n"
		"body FREE2 /FREE money/\ntflags FREE2 maxhits=2\n"
		"body ANCHORED /^Hello there, visit http/\n" /* a paragraph is one line */
		"rawbody RAW /http:\\/\\/www/\n"
		"full FULL /^X-Folded: first\\r\\n\\tsecond/m\n"
		"uri URI m{^http://www\\.example\\.com/offer$}\n"
		"uri URI_NOPE /nothing/\n");
	struct rules_result res;
	double s = 0;

	eval(rs, MSG, NULL, &res);
	assert_true(hit(&res, "SUBJECT_IN_BODY", NULL));
	assert_true(hit(&res, "FREE", &s));
	assert_true(s > 4.49 && s < 4.51); /* three matches at 1.5 */
	assert_true(hit(&res, "FREE2", &s));
	assert_true(s > 1.99 && s < 2.01); /* capped at two, default score 1 */
	assert_true(hit(&res, "ANCHORED", NULL));
	assert_true(hit(&res, "RAW", NULL));
	assert_true(hit(&res, "FULL", NULL));
	assert_true(hit(&res, "URI", NULL));
	assert_false(hit(&res, "URI_NOPE", NULL));
	rules_result_clear(&res);
	rules_free(&rs);
}

static void
test_envelope_rules(void **state)
{
	struct rule_set *rs = load_text(
		"envfrom EF /\\@spam\\.example$/\n"
		"envrcpt ER /^postmaster\\@/\n"
		"envrcpt ER_COUNT /./\ntflags ER_COUNT multiple\nscore ER_COUNT 0.5\n"
		"helo HL /^localhost$/\n"
		"rdns RD /\\.dynamic\\.example$/\n"
		"rdns RD_NONE /^$/\n"
		"client NET4 192.0.2.0/24 198.51.100.7\n"
		"client NET6 2001:db8::/32\n"
		"client NET_MISS 10.0.0.0/8\n"
		"filename FN /\\.exe$/i\nmimetype MT m{^application/x-msdownload$}\n");
	const char *rcpts[] = { "alice@example.test", "postmaster@example.test", "bob@example.test" };
	struct rules_envelope env = { .mail_from = "a@spam.example", .rcpts = rcpts, .n_rcpts = 3,
				      .helo = "localhost", .client_addr = "192.0.2.44" };
	struct rules_result res;
	double s = 0;

	rules_eval(rs, NULL, &env, false, &res);
	assert_true(hit(&res, "EF", NULL));
	assert_true(hit(&res, "ER", NULL));
	assert_true(hit(&res, "ER_COUNT", &s));
	assert_true(s > 1.49 && s < 1.51);
	assert_true(hit(&res, "HL", NULL));
	/* no confirmed reverse name: "" */
	assert_false(hit(&res, "RD", NULL));
	assert_true(hit(&res, "RD_NONE", NULL));
	assert_true(hit(&res, "NET4", NULL));
	assert_false(hit(&res, "NET6", NULL));
	assert_false(hit(&res, "NET_MISS", NULL));
	rules_result_clear(&res);
	env.client_addr = "2001:db8:1::5";
	env.client_rdns = "host-5.dynamic.example";
	rules_eval(rs, NULL, &env, false, &res);
	assert_true(hit(&res, "RD", NULL));
	assert_false(hit(&res, "RD_NONE", NULL));
	assert_true(hit(&res, "NET6", NULL));
	assert_false(hit(&res, "NET4", NULL));
	rules_result_clear(&res);
	env.client_addr = "::ffff:198.51.100.7"; /* v4-mapped */
	rules_eval(rs, NULL, &env, false, &res);
	assert_true(hit(&res, "NET4", NULL));
	rules_result_clear(&res);

	eval(rs, "From: a@b.example\r\nMIME-Version: 1.0\r\n"
		 "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n"
		 "Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
		 "Content-Type: application/x-msdownload\r\n"
		 "Content-Disposition: attachment; filename=\"Invoice.EXE\"\r\n"
		 "Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--\r\n",
	     &env, &res);
	assert_true(hit(&res, "FN", NULL));
	assert_true(hit(&res, "MT", NULL));
	rules_result_clear(&res);
	rules_free(&rs);

	/* `stage`: what the stages before found, combined by a meta rule */
	rs = load_text("stage DMARC_BAD /^auth:DMARC_FAIL$/\n"
		       "stage ANY_LIST /^dnsbl:/\n"
		       "envfrom FROM_BANK /\\@bank\\.example$/\n"
		       "meta SPOOFED_BANK (DMARC_BAD && FROM_BANK)\nscore SPOOFED_BANK 6\n");
	const char *hits[] = { "format:FORMAT_NO_DATE", "auth:DMARC_FAIL" };
	struct rules_envelope env2 = { .mail_from = "x@bank.example", .stage_hits = hits,
				       .n_stage_hits = 2 };
	rules_eval(rs, NULL, &env2, false, &res);
	assert_true(hit(&res, "DMARC_BAD", NULL));
	assert_false(hit(&res, "ANY_LIST", NULL));
	assert_true(hit(&res, "SPOOFED_BANK", &s));
	assert_true(s > 5.99 && s < 6.01);
	rules_result_clear(&res);
	env2.n_stage_hits = 1; /* no DMARC_FAIL */
	rules_eval(rs, NULL, &env2, false, &res);
	assert_false(hit(&res, "DMARC_BAD", NULL));
	assert_false(hit(&res, "SPOOFED_BANK", NULL));
	rules_result_clear(&res);
	rules_free(&rs);
}

static void
test_meta_and_scores(void **state)
{
	struct rule_set *rs = load_text(
		"body __A /Hello/\nbody __B /FREE/\ntflags __B multiple\nbody __C /absent/\n"
		"meta M_AND (__A && __B)\nmeta M_OR (__C || __A)\nmeta M_NOT !__C\n"
		"meta M_ARITH (__A + __B + __C > 3)\nmeta M_ARITH2 (__B * 2 - 1 == 5)\n"
		"meta M_PREC __C || __A && __B\nmeta M_FALSE (__A && __C)\n"
		"meta M_UNKNOWN (__NOT_DEFINED || __A)\nmeta M_META (M_AND && M_NOT)\n"
		"score M_AND 2.5\nscore M_OR 1 2 3 4\nscore M_NOT 0\nscore M_ARITH -1.5\n"
		"body T_TEST /Hello/\nbody __SUB /Hello/\nscore __SUB 9\n"
		"header __EV eval:check_something()\nmeta M_NEEDS_EVAL (__EV || __A)\n"
		"describe M_AND Both things\n");
	struct rules_result res;
	double s = 0;

	eval(rs, MSG, NULL, &res);
	assert_true(hit(&res, "M_AND", &s));
	assert_true(s == 2.5);
	assert_int_equal(strcmp(res.hits[0].name, "M_AND") == 0 ? 0 : 0, 0);
	assert_true(hit(&res, "M_OR", &s));
	assert_true(s == 1.0); /* score set 0 of four */
	assert_false(hit(&res, "M_NOT", NULL)); /* score 0: disabled */
	assert_true(hit(&res, "M_ARITH", &s));  /* 1 + 3 + 0 > 3 */
	assert_true(s == -1.5);
	assert_true(hit(&res, "M_ARITH2", NULL)); /* 3 * 2 - 1 == 5 */
	assert_true(hit(&res, "M_PREC", NULL));
	assert_false(hit(&res, "M_FALSE", NULL));
	assert_true(hit(&res, "M_UNKNOWN", NULL));
	assert_false(hit(&res, "M_META", NULL)); /* M_NOT is disabled: counts 0 */
	assert_true(hit(&res, "T_TEST", &s));
	assert_true(s > 0.0099 && s < 0.0101);
	assert_false(hit(&res, "__SUB", NULL)); /* sub-rules are never listed */
	assert_false(hit(&res, "M_NEEDS_EVAL", NULL)); /* skipped with its eval */
	for (size_t i = 0; i < res.n_hits; i++) {
		if (strcmp(res.hits[i].name, "M_AND") == 0)
			assert_string_equal(res.hits[i].describe, "Both things");
	}
	rules_result_clear(&res);
	rules_free(&rs);
}

static void
test_actions(void **state)
{
	struct rule_set *rs = load_text(
		"envfrom BAD_SENDER /\\@bad\\.example$/\n"
		"action BAD_SENDER reject \"550 5.7.1 We do not take mail from bad.example\"\n"
		"envfrom SLOW /\\@slow\\.example$/\naction SLOW tempfail \"Try later\"\n"
		"envfrom HOLD /\\@hold\\.example$/\naction HOLD quarantine\n"
		"envfrom FRIEND /\\@friend\\.example$/\naction FRIEND accept\n"
		"score BAD_SENDER 0.1\n");
	struct rules_envelope env = { .mail_from = "x@bad.example" };
	struct rules_result res;

	rules_eval(rs, NULL, &env, false, &res);
	assert_int_equal(res.verdict, RULES_REJECT);
	assert_string_equal(res.action_rule, "BAD_SENDER");
	assert_int_equal(res.reply.code, 550);
	assert_string_equal(res.reply.enhanced, "5.7.1");
	assert_string_equal(res.reply.text, "We do not take mail from bad.example");
	rules_result_clear(&res);
	env.mail_from = "x@slow.example";
	rules_eval(rs, NULL, &env, false, &res);
	assert_int_equal(res.verdict, RULES_TEMPFAIL);
	assert_int_equal(res.reply.code, 0); /* the pipeline's default code */
	assert_string_equal(res.reply.text, "Try later");
	rules_result_clear(&res);
	env.mail_from = "x@hold.example";
	rules_eval(rs, NULL, &env, false, &res);
	assert_int_equal(res.verdict, RULES_QUARANTINE);
	rules_result_clear(&res);
	env.mail_from = "x@friend.example";
	rules_eval(rs, NULL, &env, false, &res);
	assert_int_equal(res.verdict, RULES_ACCEPT);
	rules_result_clear(&res);
	env.mail_from = "x@neutral.example";
	rules_eval(rs, NULL, &env, false, &res);
	assert_int_equal(res.verdict, RULES_CONTINUE);
	assert_null(res.action_rule);
	rules_result_clear(&res);
	rules_free(&rs);
}

/* A pattern that backtracks exponentially meets the match limit: no
 * match, counted, and the evaluation ends. */
static void
test_match_limit(void **state)
{
	char *path = write_rules("redos.cf", "body REDOS /^(a+)+$/\nbody FINE /a/\n");
	const char *files[] = { path };
	struct rules_load_opts opts = { .match_limit = 10000 };
	char *err = NULL;
	struct rule_set *rs = rules_load(files, 1, &opts, false, NULL, NULL, &err);
	char msg[200];
	struct rules_result res;

	assert_non_null(rs);
	snprintf(msg, sizeof(msg), "Subject: x\r\n\r\n%.*s!\r\n", 60,
		 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	eval(rs, msg, NULL, &res);
	assert_false(hit(&res, "REDOS", NULL));
	assert_true(hit(&res, "FINE", NULL));
	assert_true(res.limit_hits >= 1);
	assert_true(rules_limit_count(rs) >= 1);
	rules_result_clear(&res);
	rules_free(&rs);
	free(path);
}

static void
test_counters(void **state)
{
	struct rule_set *rs = load_text("body HELLO /Hello/\nbody NOPE /zzz/\n");
	struct rules_result res;
	uint64_t hits, usec;

	for (int i = 0; i < 3; i++) {
		struct msgbody *b = body_of(MSG);
		rules_eval(rs, msgbody_text(b), NULL, true, &res);
		rules_result_clear(&res);
		msgbody_free(&b);
	}
	for (size_t i = 0; i < rules_count(rs); i++) {
		rules_counters(rs, i, &hits, &usec);
		if (strcmp(rules_name(rs, i), "HELLO") == 0)
			assert_int_equal(hits, 3);
		else
			assert_int_equal(hits, 0);
	}
	rules_free(&rs);
}

/* Debian's SpamAssassin rules load, every unsupported one skipped. */
static void
test_spamassassin_files(void **state)
{
	char **files = NULL;
	size_t n = 0;
	char *err = NULL, *pattern = (char *)"/usr/share/spamassassin/*.cf";

	(void)state;
	if (access("/usr/share/spamassassin/50_scores.cf", R_OK) != 0)
		skip();
	assert_int_equal(rules_expand_files(&pattern, 1, &files, &n, &err), 0);
	struct rule_set *rs = rules_load((const char *const *)files, n, NULL, false, NULL, NULL, &err);
	if (rs == NULL)
		fail_msg("%s", err);
	struct rules_stats st;
	rules_get_stats(rs, &st);
	assert_true(st.loaded > 1000);
	assert_true(st.skipped_plugin > 0);
	assert_int_equal(st.errors, 0);
	struct rules_result res;
	eval(rs, "Subject: test\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n",
	     NULL, &res);
	assert_true(hit(&res, "GTUBE", NULL));
	assert_true(res.score >= 1000);
	rules_result_clear(&res);
	rules_free(&rs);
	for (size_t i = 0; i < n; i++)
		free(files[i]);
	free(files);
}

static int
setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_rules.XXXXXX");
	assert_non_null(mkdtemp(tmpdir));
	return 0;
}

static int
teardown(void **state)
{
	char *cmd = xasprintf("rm -rf '%s'", tmpdir);

	(void)state;
	if (system(cmd) != 0)
		return -1;
	free(cmd);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_errors_have_positions),
		cmocka_unit_test(test_warnings_and_lint),
		cmocka_unit_test(test_conditionals),
		cmocka_unit_test(test_include_and_comments),
		cmocka_unit_test(test_replace_tags),
		cmocka_unit_test(test_header_rules),
		cmocka_unit_test(test_body_uri_full_multiple),
		cmocka_unit_test(test_envelope_rules),
		cmocka_unit_test(test_meta_and_scores),
		cmocka_unit_test(test_actions),
		cmocka_unit_test(test_match_limit),
		cmocka_unit_test(test_counters),
		cmocka_unit_test(test_spamassassin_files),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
