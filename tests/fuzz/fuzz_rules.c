/*
 * fuzz_rules.c — libFuzzer target for the rule-file parser (filters/rules.c).
 *
 * The input is written as a rule file (in /dev/shm, or /tmp) and loaded in
 * lint mode with errors allowed, so that every line is parsed and every
 * diagnostic made; a rule set that loads is then evaluated against a small
 * fixed message and an envelope, so meta expressions, tags and conditionals
 * built from arbitrary input are run too. Beyond what the sanitizers catch
 * it checks: every diagnostic names the file with a line within it, the
 * stats add up, and evaluation ends (the match limit bounds any pattern).
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rules/rules.h"
#include "lib/lib.h"
#include "tests/fuzz/fuzz.h"

static const char MESSAGE[] =
	"From: \"Joe\" <joe@example.org>\r\nTo: a@example.test\r\nSubject: =?UTF-8?Q?caf=C3=A9?=\r\n"
	"MIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n"
	"<p>Hello <a href=\"http://www.example.com/x\">there</a> FREE money</p>\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[64];
	static struct msgbody *body;
	FILE *f;

	if (path[0] == '\0') {
		snprintf(path, sizeof(path), "%s/fuzz_rules.%d.cf",
			 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
		body = msgbody_new("/tmp", 1 << 20);
		if (msgbody_append(body, MESSAGE, sizeof(MESSAGE) - 1) < 0 || msgbody_seal(body) < 0)
			abort();
	}
	f = fopen(path, "wb");
	if (f == NULL)
		abort();
	fwrite(data, 1, size, f);
	fclose(f);

	const char *files[] = { path };
	struct rules_load_opts opts = { .lint = true, .match_limit = 10000 };
	struct rules_diag *d = NULL;
	size_t nd = 0, lines = 1;
	char *err = NULL;
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	struct rule_set *rs = rules_load(files, 1, &opts, true, &d, &nd, &err);
	for (size_t i = 0; i < nd; i++) {
		CHECK(d[i].file != NULL && d[i].message != NULL);
		CHECK(d[i].line >= 0 && (size_t)d[i].line <= lines);
	}
	rules_diags_free(d, nd);
	if (rs == NULL) {
		CHECK(err != NULL);
		free(err);
		return 0;
	}
	struct rules_stats st;
	rules_get_stats(rs, &st);
	CHECK(st.loaded <= rules_count(rs));
	const char *rcpts[] = { "a@example.test" };
	const struct rules_envelope env = { .mail_from = "s@example.org", .rcpts = rcpts,
					    .n_rcpts = 1, .helo = "client.example", .client_addr = "192.0.2.1" };
	struct rules_result res;
	rules_eval(rs, msgbody_text(body), &env, false, &res);
	for (size_t i = 0; i < res.n_hits; i++)
		CHECK(res.hits[i].name != NULL && res.hits[i].count > 0);
	rules_result_clear(&res);
	rules_free(&rs);
	return 0;
}
