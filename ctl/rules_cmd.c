/*
 * rules_cmd.c — `mxguardctl rules`: the policy author's tools.
 *
 *   mxguardctl [-c CONFIG] rules lint FILE...
 *   mxguardctl [-c CONFIG] rules test [-r FILE]... [--summary] [--list-loaded]
 *              [--from ADDR] [--rcpt ADDR]... [--helo NAME] [--client IP] [--rdns NAME]
 *              [--hit STAGE:RULE]... MESSAGE...
 *
 * lint compiles the files the way the daemon does and prints every error
 * and warning as "file:line:col: error|warning: message"; it exits 1 when
 * there is an error. test scores messages (files in RFC 5322 format) with
 * the rules named by -r (default: the config's `rules { files = ... }`)
 * and prints, per message, the rules that hit with their scores and the
 * text that matched, the total, the action the config's thresholds give
 * (pipeline.tag_score, junk_score, reject_score) and the time; then the
 * slowest rules. --summary prints one tab-separated line per message
 * ("path score action rules usec") and a "rules:" line, for scripts and
 * bench/rules. Exit status: 0, 1 failure, 2 usage.
 */
#include "config.h"

#include <confuse.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl/ctl.h"
#include "filters/filters.h"
#include "rules/rules.h"
#include "lib/lib.h"

static int
rules_usage(const char *what)
{
	fprintf(stderr, "mxguardctl: rules: %s\n"
		"usage: mxguardctl [-c CONFIG] rules lint FILE...\n"
		"       mxguardctl [-c CONFIG] rules test [-r FILE]... [--summary] [--list-loaded]\n"
		"                  [--from ADDR] [--rcpt ADDR]... [--helo NAME] [--client IP] [--rdns NAME]\n"
		"                  [--hit STAGE:RULE]... MESSAGE...\n",
		what);
	return 2;
}

static void
print_diags(const struct rules_diag *d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%s:%d:%d: %s: %s\n", d[i].file, d[i].line, d[i].col,
		       d[i].error ? "error" : "warning", d[i].message);
}

static void
print_stats(FILE *f, const struct rule_set *rs)
{
	struct rules_stats s;

	rules_get_stats(rs, &s);
	fprintf(f, "rules: %zu loaded, %zu skipped (eval %zu, plugins %zu, other %zu); "
		"%zu lines ignored; %zu errors, %zu warnings\n", s.loaded,
		s.skipped_eval + s.skipped_plugin + s.skipped_other, s.skipped_eval, s.skipped_plugin,
		s.skipped_other, s.ignored_lines, s.errors, s.warnings);
}

static int
rules_lint(int argc, char **argv)
{
	struct rules_load_opts opts = { .lint = true };
	struct rules_diag *d = NULL;
	size_t nd = 0;
	char *err = NULL;

	if (argc < 1)
		return rules_usage("lint: name the rule files");
	struct rule_set *rs = rules_load((const char *const *)argv, (size_t)argc, &opts, true, &d,
					 &nd, &err);
	print_diags(d, nd);
	if (rs == NULL) {
		fprintf(stderr, "mxguardctl: %s\n", err);
		free(err);
		rules_diags_free(d, nd);
		return 1;
	}
	struct rules_stats s;
	rules_get_stats(rs, &s);
	print_stats(stderr, rs);
	rules_diags_free(d, nd);
	rules_free(&rs);
	return s.errors > 0 ? 1 : 0;
}

static char *
read_file(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0;

	if (f == NULL)
		return NULL;
	for (;;) {
		if (len + 65536 > cap) {
			cap = (len + 65536) * 2;
			buf = xrealloc(buf, cap);
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0)
			break;
	}
	bool bad = ferror(f);
	fclose(f);
	if (bad) {
		free(buf);
		return NULL;
	}
	*len_r = len;
	return buf;
}

static const char *
action_of(double score, enum rules_verdict v, const double th[3])
{
	switch (v) {
	case RULES_REJECT: return "reject";
	case RULES_TEMPFAIL: return "tempfail";
	case RULES_QUARANTINE: return "quarantine";
	case RULES_DISCARD: return "discard";
	case RULES_ACCEPT: return "accept";
	default: break;
	}
	return score >= th[2] ? "reject" : score >= th[1] ? "junk" : score >= th[0] ? "tag" : "deliver";
}

static int
rules_test(struct mx_config *cfg, int argc, char **argv)
{
	const char **files = NULL;
	size_t n_files = 0;
	const char **rcpts = NULL, **hits = NULL;
	size_t n_rcpts = 0, n_hits = 0;
	const char *from = "", *helo = "", *client = "", *rdns = "";
	bool summary = false, list_loaded = false;
	double th[3] = { 5.0, 8.0, 15.0 };
	int i;

	for (i = 0; i < argc; i++) {
		const char *a = argv[i];
		bool has_next = i + 1 < argc;
		if (strcmp(a, "-r") == 0 && has_next) {
			files = xrealloc(files, (n_files + 1) * sizeof(*files));
			files[n_files++] = argv[++i];
		} else if (strcmp(a, "--summary") == 0) {
			summary = true;
		} else if (strcmp(a, "--list-loaded") == 0) {
			list_loaded = true;
		} else if (strcmp(a, "--from") == 0 && has_next) {
			from = argv[++i];
		} else if (strcmp(a, "--rcpt") == 0 && has_next) {
			rcpts = xrealloc(rcpts, (n_rcpts + 1) * sizeof(*rcpts));
			rcpts[n_rcpts++] = argv[++i];
		} else if (strcmp(a, "--helo") == 0 && has_next) {
			helo = argv[++i];
		} else if (strcmp(a, "--client") == 0 && has_next) {
			client = argv[++i];
		} else if (strcmp(a, "--rdns") == 0 && has_next) {
			rdns = argv[++i];
		} else if (strcmp(a, "--hit") == 0 && has_next) {
			/* a hit an earlier stage would have made, for `stage` rules */
			hits = xrealloc(hits, (n_hits + 1) * sizeof(*hits));
			hits[n_hits++] = argv[++i];
		} else if (a[0] == '-' && a[1] != '\0') {
			free(files);
			free(rcpts);
			free(hits);
			return rules_usage("test: unknown option or missing value");
		} else {
			break;
		}
	}
	char **expanded = NULL;
	size_t n_expanded = 0;
	char *err = NULL;
	if (cfg != NULL) {
		const struct pipeline_settings *ps = pipeline_settings(cfg);
		th[0] = ps->tag_score;
		th[1] = ps->junk_score;
		th[2] = ps->reject_score;
		cfg_t *sec = cfg_getsec(cfg->cfg, "rules");
		if (n_files == 0 && sec != NULL && cfg_size(sec, "files") > 0) {
			size_t n = cfg_size(sec, "files");
			char **pat = xcalloc(n + 1, sizeof(*pat));
			for (size_t k = 0; k < n; k++)
				pat[k] = cfg_getnstr(sec, "files", k);
			int rc = rules_expand_files(pat, n, &expanded, &n_expanded, &err);
			free(pat);
			if (rc < 0) {
				fprintf(stderr, "mxguardctl: %s\n", err);
				free(err);
				free(files);
				free(rcpts);
				free(hits);
				return 1;
			}
			files = xrealloc(files, (n_expanded + 1) * sizeof(*files));
			for (size_t k = 0; k < n_expanded; k++)
				files[n_files++] = expanded[k];
		}
	}
	if (n_files == 0) {
		free(files);
		free(rcpts);
		free(hits);
		return rules_usage("test: no rule files (-r FILE, or a config with rules { files })");
	}
	if (i == argc && !list_loaded) {
		free(files);
		free(rcpts);
		free(hits);
		return rules_usage("test: name the messages");
	}
	struct rules_diag *d = NULL;
	size_t nd = 0;
	struct rule_set *rs = rules_load(files, n_files, NULL, false, &d, &nd, &err);
	int ret = 0;
	if (rs == NULL) {
		print_diags(d, nd);
		fprintf(stderr, "mxguardctl: %s\n", err);
		free(err);
		ret = 1;
		goto out;
	}
	if (list_loaded) {
		for (size_t k = 0; k < rules_count(rs); k++) {
			if (rules_is_loaded(rs, k))
				printf("%s\n", rules_name(rs, k));
		}
		goto out;
	}
	uint64_t total_usec = 0;
	size_t n_msgs = 0;
	const struct rules_envelope env = {
		.mail_from = from, .rcpts = rcpts, .n_rcpts = n_rcpts, .helo = helo,
		.client_addr = client, .client_rdns = rdns,
		.stage_hits = hits, .n_stage_hits = n_hits,
	};
	for (; i < argc; i++) {
		size_t len = 0;
		char *data = read_file(argv[i], &len);
		if (data == NULL) {
			fprintf(stderr, "mxguardctl: %s: %s\n", argv[i], strerror(errno));
			ret = 1;
			continue;
		}
		struct msgbody *b = msgbody_new("/tmp", SIZE_MAX / 2);
		if (msgbody_append(b, data, len) < 0 || msgbody_seal(b) < 0) {
			fprintf(stderr, "mxguardctl: %s: %s\n", argv[i], strerror(errno));
			free(data);
			msgbody_free(&b);
			ret = 1;
			continue;
		}
		free(data);
		struct rules_result res;
		struct timespec t0, t1;
		/* the time counts the MIME parse and the text views too */
		clock_gettime(CLOCK_MONOTONIC, &t0);
		const struct msgtext *t = msgbody_text(b);
		rules_eval(rs, t, &env, true, &res);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		res.usec = (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000);
		total_usec += res.usec;
		n_msgs++;
		const char *action = action_of(res.score, res.verdict, th);
		if (summary) {
			printf("%s\t%.1f\t%s\t", argv[i], res.score, action);
			for (size_t k = 0; k < res.n_hits; k++)
				printf("%s%s", k ? "," : "", res.hits[k].name);
			printf("%s\t%llu\n", res.n_hits == 0 ? "-" : "", (unsigned long long)res.usec);
		} else {
			printf("%s\n", argv[i]);
			for (size_t k = 0; k < res.n_hits; k++) {
				const struct rules_hit *h = &res.hits[k];
				printf("  %-28s %7.2f", h->name, h->score);
				if (h->count > 1)
					printf(" x%u", h->count);
				if (h->match[0] != '\0')
					printf("  \"%s\"", h->match);
				if (h->describe != NULL)
					printf("  %s", h->describe);
				printf("\n");
			}
			printf("  total %.2f, action %s", res.score, action);
			if (res.action_rule != NULL)
				printf(" (rule %s)", res.action_rule);
			if (res.limit_hits > 0)
				printf(", %lu matches stopped at the match limit", res.limit_hits);
			printf(", %.3f ms%s\n", (double)res.usec / 1000.0,
			       t == NULL ? " (not parsed as a message)" : "");
		}
		rules_result_clear(&res);
		msgbody_free(&b);
	}
	if (summary) {
		struct rules_stats s;
		rules_get_stats(rs, &s);
		printf("rules: %zu loaded, %zu skipped; messages: %zu; usec: %llu\n", s.loaded,
		       s.skipped_eval + s.skipped_plugin + s.skipped_other, n_msgs,
		       (unsigned long long)total_usec);
	} else {
		/* the slowest rules over these messages */
		size_t n = rules_count(rs), top[10];
		size_t nt = 0;
		for (size_t k = 0; k < n; k++) {
			uint64_t h, u;
			rules_counters(rs, k, &h, &u);
			size_t pos = nt;
			while (pos > 0) {
				uint64_t h2, u2;
				rules_counters(rs, top[pos - 1], &h2, &u2);
				if (u2 >= u)
					break;
				pos--;
			}
			if (pos < 10) {
				if (nt < 10)
					nt++;
				memmove(&top[pos + 1], &top[pos], (nt - 1 - pos) * sizeof(*top));
				top[pos] = k;
			}
		}
		printf("slowest rules (cumulative):\n");
		for (size_t k = 0; k < nt; k++) {
			uint64_t h, u;
			rules_counters(rs, top[k], &h, &u);
			if (u == 0)
				break;
			printf("  %-28s %8.3f ms  %llu hits\n", rules_name(rs, top[k]), (double)u / 1000.0,
			       (unsigned long long)h);
		}
		print_stats(stdout, rs);
	}
out:
	rules_diags_free(d, nd);
	rules_free(&rs);
	for (size_t k = 0; k < n_expanded; k++)
		free(expanded[k]);
	free(expanded);
	free(files);
	free(rcpts);
	free(hits);
	return ret;
}

int
ctl_rules_main(struct mx_config *cfg, int argc, char **argv)
{
	if (argc < 2)
		return rules_usage("missing subcommand (lint, test)");
	if (strcmp(argv[1], "lint") == 0)
		return rules_lint(argc - 2, argv + 2);
	if (strcmp(argv[1], "test") == 0)
		return rules_test(cfg, argc - 2, argv + 2);
	return rules_usage("unknown subcommand");
}
