/*
 * fuzz_bayes_tok.c — libFuzzer target for the learning classifier's
 * tokeniser (filters/bayes_tok.c) over the text views of lib/msgtext.c,
 * and the classifier's maths (filters/bayes.c) on what it made.
 *
 * The input is a whole message as received. Beyond "no crash, no
 * out-of-bounds access, no hang" it checks: at most BAYES_TOKENS_MAX
 * tokens (truncated set exactly when the limit was met), every token
 * non-empty, valid UTF-8 and unique, with its hash; header/URI tokens (the
 * prefixed ones) within BAYES_HDRTOK_MAX octets; the same input giving the
 * same tokens with pairs on (a superset) and the same digest twice; and the
 * classifier's probability, on counts derived from the hashes, a number
 * within [0, 1].
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "filters/bayes.h"
#include "lib/lib.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct msgbody *b = msgbody_new("/tmp", 1 << 20);
	const struct msgtext *t;
	struct bayes_tokens tk, tp;
	struct bayes_tok_opts pairs = { .pairs = true };
	unsigned char d1[32], d2[32];

	if (msgbody_append(b, data, size) < 0 || msgbody_seal(b) < 0) {
		msgbody_free(&b);
		return 0;
	}
	t = msgbody_text(b);
	bayes_tokenize(t, NULL, &tk);
	bayes_tokenize(t, &pairs, &tp);
	CHECK(tk.n <= BAYES_TOKENS_MAX && tp.n <= BAYES_TOKENS_MAX);
	CHECK(tk.truncated == false || tk.n == BAYES_TOKENS_MAX);
	GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
	for (size_t i = 0; i < tk.n; i++) {
		const char *s = tk.tok[i];
		CHECK(s[0] != '\0');
		CHECK(g_utf8_validate(s, -1, NULL));
		CHECK(!g_hash_table_contains(seen, s));
		g_hash_table_add(seen, (gpointer)s);
		CHECK(tk.hash[i] == bayes_hash(s));
		if ((s[0] == 'H' || s[0] == 'U' || s[0] == 'P') && strchr(s, ':') != NULL)
			CHECK(strlen(s) <= BAYES_HDRTOK_MAX);
	}
	/* pairs only add tokens: every plain token is there too, unless
	 * the pairs filled the set first */
	if (!tp.truncated) {
		GHashTable *sp = g_hash_table_new(g_str_hash, g_str_equal);
		for (size_t i = 0; i < tp.n; i++)
			g_hash_table_add(sp, tp.tok[i]);
		for (size_t i = 0; i < tk.n; i++)
			CHECK(g_hash_table_contains(sp, tk.tok[i]));
		g_hash_table_destroy(sp);
	}
	g_hash_table_destroy(seen);

	struct bayes_params p = BAYES_PARAMS_DEFAULT;
	struct bayes_count *c = xcalloc(tk.n + 1, sizeof(*c));
	for (size_t i = 0; i < tk.n; i++) {
		c[i].spam = (uint32_t)(tk.hash[i] & 0xff);
		c[i].ham = (uint32_t)((tk.hash[i] >> 8) & 0xff);
	}
	size_t used = 0;
	double r = bayes_classify(&p, c, tk.n, 300, 300, &used);
	CHECK(isfinite(r) && r >= 0.0 && r <= 1.0);
	CHECK(used <= p.max_tokens && used <= tk.n);
	free(c);

	bayes_digest(t, d1);
	bayes_digest(t, d2);
	CHECK(memcmp(d1, d2, 32) == 0);
	bayes_tokens_free(&tk);
	bayes_tokens_free(&tp);
	msgbody_free(&b);
	return 0;
}
