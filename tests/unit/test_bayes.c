/*
 * test_bayes.c — unit tests for the learning classifier: the tokeniser
 * (filters/bayes_tok.c) on real MIME (charsets, HTML, URLs, base64 and
 * quoted-printable parts, RFC 2047 subjects, Unicode folding, limits), the
 * maths (filters/bayes.c) against reference values computed independently
 * (Python's math module, the same formulas written out: the script is in
 * the comment above the values), the SQLite store (filters/bayes_store.c:
 * learn once, move, unlearn, expiry) and the moves-file line parser.
 */
#include "config.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "ctl/ctl.h"
#include "filters/bayes.h"
#include "lib/lib.h"

static struct msgbody *body_of(const char *msg)
{
	struct msgbody *b = msgbody_new("/tmp", 1 << 20);

	assert_int_equal(msgbody_append(b, msg, strlen(msg)), 0);
	assert_int_equal(msgbody_seal(b), 0);
	return b;
}

/* Tokens of msg; the caller frees them. */
static void toks_of(const char *msg, bool pairs, struct bayes_tokens *out)
{
	struct msgbody *b = body_of(msg);
	const struct msgtext *t = msgbody_text(b);
	struct bayes_tok_opts o = { .pairs = pairs };

	assert_non_null(t);
	bayes_tokenize(t, &o, out);
	msgbody_free(&b);
}

static bool has(const struct bayes_tokens *t, const char *tok)
{
	for (size_t i = 0; i < t->n; i++) {
		if (strcmp(t->tok[i], tok) == 0)
			return true;
	}
	return false;
}

#define assert_has(t, tok) do { if (!has((t), (tok))) fail_msg("missing token '%s'", (tok)); } while (0)
#define assert_hasnt(t, tok) do { if (has((t), (tok))) fail_msg("unexpected token '%s'", (tok)); } while (0)

static void test_plain_words(void **state)
{
	struct bayes_tokens t;

	(void)state;
	toks_of("From: Joe <joe@Mail.Example.ORG>\r\nTo: a@b.example, c@d.example\r\n"
		"Subject: Cheap Watches\r\nMessage-ID: <x@gen.example.net>\r\n"
		"X-Mailer: Foo Mailer 5.1\r\n"
		"\r\nBuy CHEAP watches now!!! Only $19.95, it's a deal... a an to of"
		" supercalifragilisticexpialidocious\r\n", false, &t);
	assert_has(&t, "buy");
	assert_has(&t, "cheap");       /* case folded */
	assert_has(&t, "watches");
	assert_has(&t, "now");         /* trailing ! dropped */
	assert_has(&t, "$19.95");
	assert_has(&t, "it's");
	assert_has(&t, "deal");
	assert_hasnt(&t, "an");        /* shorter than 3 */
	assert_hasnt(&t, "to");
	assert_has(&t, "sk:superca");  /* "sk:" + 7 characters */
	assert_has(&t, "S:cheap");
	assert_has(&t, "S:watches");
	assert_has(&t, "H:from:@mail.example.org");
	assert_has(&t, "H:to:@b.example");
	assert_has(&t, "H:to:@d.example");
	assert_has(&t, "H:from:joe@mail.example.org"); /* the address, lower-cased */
	assert_has(&t, "H:to:a@b.example");
	assert_has(&t, "H:to:c@d.example");          /* every one of the list */
	assert_has(&t, "H:fromname:joe");
	assert_has(&t, "H:mid:@gen.example.net");
	assert_has(&t, "H:xm1:foo");
	assert_has(&t, "H:xm:mailer");
	assert_has(&t, "H:ct:(none)");
	/* unique */
	for (size_t i = 0; i < t.n; i++) {
		for (size_t j = i + 1; j < t.n; j++)
			assert_string_not_equal(t.tok[i], t.tok[j]);
		assert_true(t.hash[i] == bayes_hash(t.tok[i]));
	}
	assert_false(t.truncated);
	bayes_tokens_free(&t);
}

static void test_unicode_charsets(void **state)
{
	struct bayes_tokens t;

	(void)state;
	/* ISO-8859-1 quoted-printable, an RFC 2047 subject in UTF-8 base64,
	 * full-width letters (NFKC), Greek capitals (case folding) */
	toks_of("From: a@b.example\r\nSubject: =?UTF-8?B?w4l0w6kgR1LDnFNTRQ==?=\r\n"
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
		"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
		"Caf=E9 na=EFve =C9T=C9 \r\n", false, &t);
	assert_has(&t, "café");
	assert_has(&t, "naïve");
	assert_has(&t, "été");         /* ÉTÉ folded */
	assert_has(&t, "S:été");       /* the encoded word decoded, folded */
	assert_has(&t, "S:grüsse");
	assert_has(&t, "H:ct:text/plain");
	bayes_tokens_free(&t);

	toks_of("From: a@b.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
		"\xef\xbc\xa6\xef\xbc\xb2\xef\xbc\xa5\xef\xbc\xa5 \xce\x9a\xce\x91\xce\x9b\xce\x97"
		" \xd0\x9c\xd0\x98\xd0\xa0\r\n", false, &t);
	assert_has(&t, "free");         /* ＦＲＥＥ (full width) */
	assert_has(&t, "καλη");         /* ΚΑΛΗ */
	assert_has(&t, "мир");          /* МИР */
	bayes_tokens_free(&t);
}

static void test_html_and_urls(void **state)
{
	struct bayes_tokens t;

	(void)state;
	toks_of("From: a@b.example\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
		"Content-Type: multipart/alternative; boundary=XX\r\n\r\n"
		"--XX\r\nContent-Type: text/html; charset=utf-8\r\n"
		"Content-Transfer-Encoding: base64\r\n\r\n"
		/* <html><body><p>Click <a href="http://Www.Shop.Example.co.uk/x?y=1">here</a>
		 * for pills</p><div style="x">viagra</div></body></html> */
		"PGh0bWw+PGJvZHk+PHA+Q2xpY2sgPGEgaHJlZj0iaHR0cDovL1d3dy5TaG9wLkV4YW1wbGUu\r\n"
		"Y28udWsveD95PTEiPmhlcmU8L2E+IGZvciBwaWxsczwvcD48ZGl2IHN0eWxlPSJ4Ij52aWFn\r\n"
		"cmE8L2Rpdj48L2JvZHk+PC9odG1sPg==\r\n"
		"--XX\r\nContent-Type: application/pdf; name=\"Invoice.PDF\"\r\n"
		"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--XX--\r\n", false, &t);
	assert_has(&t, "click");
	assert_has(&t, "here");
	assert_has(&t, "pills");
	assert_has(&t, "viagra");
	assert_hasnt(&t, "href");       /* markup is not text */
	assert_hasnt(&t, "div");
	assert_hasnt(&t, "style");
	assert_has(&t, "U:www.shop.example.co.uk");
	assert_has(&t, "UD:example.co.uk");
	assert_has(&t, "H:ct:multipart/alternative");
	assert_has(&t, "P:ct:text/html");
	assert_has(&t, "P:ct:application/pdf");
	assert_has(&t, "P:ext:pdf");
	bayes_tokens_free(&t);

	/* the words of a link's path and query are body words (SpamAssassin's
	 * URI tokens); its scheme and host are not, they are U: and UD: */
	toks_of("Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n"
		"<p>Click <a href=\"http://promo.example/cheap-meds/order.php?ref=spamlist&amp;x=1\">"
		"here</a></p>\r\n", false, &t);
	assert_has(&t, "cheap-meds");
	assert_has(&t, "order.php");
	assert_has(&t, "spamlist");
	assert_has(&t, "ref");
	assert_hasnt(&t, "http");
	assert_hasnt(&t, "promo.example");
	assert_has(&t, "U:promo.example");
	bayes_tokens_free(&t);
}

static void test_received_and_own_headers(void **state)
{
	struct bayes_tokens t, t2;
	const char *m1 =
		"Received: from mx.sender.example (mx.sender.example [192.0.2.17])\r\n"
		"\tby mx.example.test with ESMTP\r\n"
		"From: a@b.example\r\nSubject: hello\r\nMessage-ID: <1@b.example>\r\n\r\n"
		"hello there friend\r\n";
	/* the same message as delivered: our headers on top */
	const char *m2 =
		"X-Spam-Status: Yes, score=9.9 tests=BAYES_99\r\nX-Spam-Bayes: 0.9999 BAYES_99\r\n"
		"X-Spam-Flag: YES\r\n"
		"Received: from mx.sender.example (mx.sender.example [192.0.2.17])\r\n"
		"\tby mx.example.test with ESMTP\r\n"
		"From: a@b.example\r\nSubject: hello\r\nMessage-ID: <1@b.example>\r\n\r\n"
		"hello there friend\r\n";
	unsigned char d1[32], d2[32];

	(void)state;
	toks_of(m1, false, &t);
	toks_of(m2, false, &t2);
	assert_has(&t, "H:rcvd:mx.sender.example");
	assert_has(&t, "H:rcvd:mx.example.test");
	assert_has(&t, "H:rcvdip:192.0.2");
	/* our headers change neither the tokens nor the digest */
	assert_int_equal(t.n, t2.n);
	for (size_t i = 0; i < t.n; i++)
		assert_string_equal(t.tok[i], t2.tok[i]);
	struct msgbody *b1 = body_of(m1), *b2 = body_of(m2);
	bayes_digest(msgbody_text(b1), d1);
	bayes_digest(msgbody_text(b2), d2);
	assert_memory_equal(d1, d2, 32);
	msgbody_free(&b1);
	msgbody_free(&b2);
	bayes_tokens_free(&t);
	bayes_tokens_free(&t2);
}

static void test_pairs_and_limits(void **state)
{
	struct bayes_tokens t;
	char *big;
	size_t n = 0, cap = 12 * 8000 + 200;

	(void)state;
	toks_of("From: a@b.example\r\nSubject: s\r\n\r\nfree money today\r\n", true, &t);
	assert_has(&t, "free money");
	assert_has(&t, "money today");
	bayes_tokens_free(&t);
	toks_of("From: a@b.example\r\nSubject: s\r\n\r\nfree money today\r\n", false, &t);
	assert_hasnt(&t, "free money");
	bayes_tokens_free(&t);

	/* 8,000 distinct words: the first BAYES_TOKENS_MAX kept */
	big = xmalloc(cap);
	n += (size_t)snprintf(big, cap, "Subject: s\r\n\r\n");
	for (int i = 0; i < 8000; i++)
		n += (size_t)snprintf(big + n, cap - n, "w%06d ", i);
	toks_of(big, false, &t);
	assert_int_equal(t.n, BAYES_TOKENS_MAX);
	assert_true(t.truncated);
	assert_has(&t, "w000000");
	bayes_tokens_free(&t);
	free(big);

	/* not a message at all, and an empty one: no crash, few tokens */
	toks_of("\x01\x02\xff\xfe garbage", false, &t);
	bayes_tokens_free(&t);
	toks_of("", false, &t);
	bayes_tokens_free(&t);
	bayes_tokenize(NULL, NULL, &t);
	assert_int_equal(t.n, 0);
}

/* Reference values: Python 3, math module, the formulas of bayes.c:
 *   def chi2q(x2, v): m = x2/2; s = t = exp(-m)
 *       for i in range(1, v//2): t *= m/i; s += t
 *       return min(s, 1)
 *   comb(fs, Ns, Nh) = (1 + (1 - chi2q(-2 (log(Ns/N) + sum log(1-f)), 2n))
 *                         - (1 - chi2q(-2 (log(Nh/N) + sum log f), 2n))) / 2,
 *       N = Ns + Nh, the log(Ns/N) and log(Nh/N) terms left out for Ns = Nh = 0
 *   fw(s, h, Ns, Nh) = (0.03*0.538 + n*p) / (0.03 + n), p = (s/Ns) / (s/Ns + h/Nh)
 * and by hand: chi2q(3, 2) = exp(-1.5) = 0.22313016...; fw(10, 0, ...) =
 * (0.01614 + 10) / 10.03 = 0.99861814... */
static void test_maths(void **state)
{
	struct bayes_params p = BAYES_PARAMS_DEFAULT;
	const double f1[] = { 0.99, 0.99, 0.01 }, f2[] = { 0.9, 0.95, 0.99, 0.2 };
	const double f3[] = { 0.01, 0.01, 0.01, 0.01, 0.01 };

	(void)state;
	assert_true(fabs(bayes_chi2q(10.0, 10) - 0.4404932850652124) < 1e-12);
	assert_true(fabs(bayes_chi2q(3.0, 2) - 0.22313016014842982) < 1e-12);
	assert_true(fabs(bayes_chi2q(20.0, 6) - 0.0027693957155115762) < 1e-14);
	assert_true(bayes_chi2q(0, 4) == 1.0);
	assert_true(fabs(bayes_combine(f1, 3, 0, 0) - 0.577375112304056) < 1e-12);
	assert_true(fabs(bayes_combine(f2, 4, 0, 0) - 0.9428375133570415) < 1e-12);
	assert_true(fabs(bayes_combine(f3, 5, 0, 0) - 7.030980015421129e-07) < 1e-15);
	/* with the classes' shares */
	assert_true(fabs(bayes_combine(f1, 3, 1, 3) - 0.5652490408473669) < 1e-12);
	assert_true(fabs(bayes_combine(f2, 4, 300, 100) - 0.8016371746313524) < 1e-12);
	assert_true(fabs(bayes_combine(f3, 5, 1, 1) - 0.000512469807603777) < 1e-15);
	assert_true(bayes_combine(NULL, 0, 1, 1) == 0.5);
	assert_true(fabs(bayes_token_prob(&p, 10, 0, 100, 100) - 0.9986181455633102) < 1e-12);
	assert_true(fabs(bayes_token_prob(&p, 3, 7, 50, 200) - 0.6312990502177678) < 1e-12);
	assert_true(fabs(bayes_token_prob(&p, 0, 1, 10, 10) - 0.01566990291262136) < 1e-12);
	assert_true(bayes_token_prob(&p, 0, 0, 10, 10) == p.x);

	/* classify: unknown and weak tokens do not count; the strongest
	 * max_tokens do. 10/0 of 100/100 is 0.9986 (strong spam); 1/1 is 0.5
	 * (weak); 0/0 unknown */
	struct bayes_count c[] = { { 10, 0 }, { 1, 1 }, { 0, 0 }, { 10, 0 }, { 0, 10 } };
	size_t used;
	double r = bayes_classify(&p, c, 3, 100, 100, &used);
	assert_int_equal(used, 1);
	double one = 0.9986181455633102;
	assert_true(fabs(r - bayes_combine(&one, 1, 100, 100)) < 1e-12);
	r = bayes_classify(&p, c, 5, 100, 100, &used);
	assert_int_equal(used, 3);
	p.max_tokens = 2;
	r = bayes_classify(&p, c, 5, 100, 100, &used);
	assert_int_equal(used, 2);
	/* two spam tokens and no ham token: the stronger ones are equal (ties
	 * broken by f, the ham one first): one ham, one spam */
	double pair[2] = { 1 - one, one };
	/* (symmetry: f and 1 - f combine to one half) */
	assert_true(fabs(bayes_combine(pair, 2, 0, 0) - 0.5) < 1e-9);
	assert_true(fabs(bayes_combine(pair, 2, 7, 7) - 0.5) < 1e-9);
}

static char *tmp_db(void)
{
	char tmpl[] = "/tmp/test_bayes.XXXXXX";
	char *d = mkdtemp(tmpl);

	assert_non_null(d);
	return xasprintf("%s/site.db", d);
}

static void rm_db(char *path)
{
	char *p;

	unlink(path);
	p = xasprintf("%s-wal", path);
	unlink(p);
	free(p);
	p = xasprintf("%s-shm", path);
	unlink(p);
	free(p);
	p = strrchr(path, '/');
	*p = '\0';
	rmdir(path);
	free(path);
}

static void test_store(void **state)
{
	char *path = tmp_db(), *err = NULL;
	struct bayes_store *st = bayes_store_open(path, false, &err);
	struct bayes_tokens t;
	unsigned char d[32] = { 1 }, d2[32] = { 2 };
	struct bayes_count c[3];
	uint32_t ns, nh;
	struct bayes_store_stats s;

	(void)state;
	assert_non_null(st);
	toks_of("From: a@b.example\r\nSubject: s\r\n\r\nalpha beta gamma\r\n", false, &t);
	assert_int_equal(bayes_store_learn(st, d, &t, BAYES_SPAM, false, &err), BAYES_LEARNT);
	assert_int_equal(bayes_store_learn(st, d, &t, BAYES_SPAM, false, &err), BAYES_ALREADY);
	assert_int_equal(bayes_store_learn(st, d2, &t, BAYES_SPAM, false, &err), BAYES_LEARNT);
	assert_int_equal(bayes_store_totals(st, &ns, &nh), 0);
	assert_int_equal(ns, 2);
	assert_int_equal(nh, 0);
	uint64_t h[3] = { bayes_hash("alpha"), bayes_hash("beta"), bayes_hash("nope") };
	assert_int_equal(bayes_store_lookup(st, h, 3, c), 0);
	assert_int_equal(c[0].spam, 2);
	assert_int_equal(c[0].ham, 0);
	assert_int_equal(c[2].spam + c[2].ham, 0);
	/* relearn as ham moves it */
	assert_int_equal(bayes_store_learn(st, d, &t, BAYES_HAM, false, &err), BAYES_RELEARNT);
	assert_int_equal(bayes_store_totals(st, &ns, &nh), 0);
	assert_int_equal(ns, 1);
	assert_int_equal(nh, 1);
	assert_int_equal(bayes_store_lookup(st, h, 3, c), 0);
	assert_int_equal(c[1].spam, 1);
	assert_int_equal(c[1].ham, 1);
	/* unlearn both: the tokens go */
	assert_int_equal(bayes_store_learn(st, d, &t, BAYES_SPAM, true, &err), BAYES_UNLEARNT);
	assert_int_equal(bayes_store_learn(st, d, &t, BAYES_SPAM, true, &err), BAYES_NOT_LEARNT);
	assert_int_equal(bayes_store_learn(st, d2, &t, BAYES_HAM, true, &err), BAYES_UNLEARNT);
	assert_int_equal(bayes_store_stats(st, &s), 0);
	assert_int_equal(s.n_spam, 0);
	assert_int_equal(s.n_ham, 0);
	assert_int_equal(s.n_tokens, 0);
	assert_int_equal(s.n_seen, 0);
	bayes_tokens_free(&t);

	/* expiry: 3,000 messages of fresh words, max 2,000 tokens: the
	 * oldest go down to 1,500 and the newest stay */
	for (int i = 0; i < 1500; i++) {
		char msg[128];
		unsigned char dg[32] = { 0 };
		snprintf(msg, sizeof(msg), "Subject: s\r\n\r\nxa%05d xb%05d\r\n", i, i);
		memcpy(dg, &i, sizeof(i));
		dg[31] = 9;
		toks_of(msg, false, &t);
		assert_int_equal(bayes_store_learn(st, dg, &t, BAYES_HAM, false, &err), BAYES_LEARNT);
		bayes_tokens_free(&t);
	}
	assert_int_equal(bayes_store_stats(st, &s), 0);
	assert_true(s.n_tokens > 3000); /* xa, xb, and the few shared ones */
	long dropped = bayes_store_expire(st, 2000);
	assert_true(dropped > 0);
	assert_int_equal(bayes_store_stats(st, &s), 0);
	assert_int_equal(s.n_tokens, 1500);
	uint64_t hn[2] = { bayes_hash("xa01499"), bayes_hash("xa00000") };
	assert_int_equal(bayes_store_lookup(st, hn, 2, c), 0);
	assert_int_equal(c[0].ham, 1);  /* the newest kept */
	assert_int_equal(c[1].ham, 0);  /* the oldest gone */
	assert_int_equal(bayes_store_expire(st, 2000), 0);
	bayes_store_close(&st);

	/* read-only opening of an existing store sees the same */
	st = bayes_store_open(path, true, &err);
	assert_non_null(st);
	assert_int_equal(bayes_store_totals(st, &ns, &nh), 0);
	assert_int_equal(nh, 1500);
	bayes_store_close(&st);
	/* and a missing one is an error, not a new file */
	char *missing = xasprintf("%s.missing", path);
	assert_null(bayes_store_open(missing, true, &err));
	assert_non_null(err);
	free(err);
	assert_int_not_equal(access(missing, F_OK), 0);
	free(missing);
	rm_db(path);
}

/* A batch (mxguardctl's runs) keeps its increments in memory until it
 * commits: the counts afterwards are the ones learning one message at a
 * time gives, also when a message of the batch is moved (relearnt) or
 * unlearnt before the commit, and across the BAYES_BATCH commits. */
static void test_store_batch(void **state)
{
	char *p1 = tmp_db(), *p2 = tmp_db(), *err = NULL;
	struct bayes_store *one = bayes_store_open(p1, false, &err);
	struct bayes_store *bat = bayes_store_open(p2, false, &err);
	static const char *const words[] = { "alpha", "beta", "gamma", "delta", "omega" };
	struct bayes_tokens t;

	(void)state;
	assert_non_null(one);
	assert_non_null(bat);
	assert_int_equal(bayes_store_batch(bat, true), 0);
	for (int i = 0; i < BAYES_BATCH + 37; i++) {
		char msg[160];
		unsigned char dg[32] = { 7 };
		enum bayes_class cls = i % 3 == 0 ? BAYES_SPAM : BAYES_HAM;
		snprintf(msg, sizeof(msg), "Subject: s\r\n\r\n%s %s w%03d\r\n", words[i % 5],
			 words[(i / 5) % 5], i % 50);
		memcpy(dg + 1, &i, sizeof(i));
		toks_of(msg, false, &t);
		for (int k = 0; k < 2; k++) {
			struct bayes_store *st = k == 0 ? one : bat;
			assert_int_equal(bayes_store_learn(st, dg, &t, cls, false, &err), BAYES_LEARNT);
			if (i % 7 == 0) /* moved to the other class at once */
				assert_int_equal(bayes_store_learn(st, dg, &t, !cls, false, &err),
						 BAYES_RELEARNT);
			if (i % 11 == 0)
				assert_int_equal(bayes_store_learn(st, dg, &t, cls, true, &err),
						 BAYES_UNLEARNT);
			if (i % 13 == 0) /* learnt again: as new */
				assert_true(bayes_store_learn(st, dg, &t, cls, false, &err) >= 0);
		}
		bayes_tokens_free(&t);
	}
	assert_int_equal(bayes_store_batch(bat, false), 0);
	uint64_t h[60];
	struct bayes_count c1[60], c2[60];
	for (int i = 0; i < 50; i++) {
		char w[8];
		snprintf(w, sizeof(w), "w%03d", i);
		h[i] = bayes_hash(w);
	}
	for (int i = 0; i < 5; i++)
		h[50 + i] = bayes_hash(words[i]);
	h[55] = bayes_hash("S:s");
	assert_int_equal(bayes_store_lookup(one, h, 56, c1), 0);
	assert_int_equal(bayes_store_lookup(bat, h, 56, c2), 0);
	for (int i = 0; i < 56; i++) {
		assert_int_equal(c1[i].spam, c2[i].spam);
		assert_int_equal(c1[i].ham, c2[i].ham);
	}
	assert_true(c1[50].spam > 0 && c1[50].ham > 0);
	struct bayes_store_stats s1, s2;
	assert_int_equal(bayes_store_stats(one, &s1), 0);
	assert_int_equal(bayes_store_stats(bat, &s2), 0);
	assert_int_equal(s1.n_spam, s2.n_spam);
	assert_int_equal(s1.n_ham, s2.n_ham);
	assert_int_equal(s1.n_tokens, s2.n_tokens);
	assert_int_equal(s1.n_seen, s2.n_seen);
	assert_int_equal(s1.learn_counter, s2.learn_counter);
	bayes_store_close(&one);
	bayes_store_close(&bat);
	rm_db(p1);
	rm_db(p2);
}

/* A handle remembers the counts it read; what another connection (the
 * daemon's readers and mxguardctl are different processes) or the handle
 * itself writes afterwards is seen all the same. */
static void test_store_cache(void **state)
{
	char *path = tmp_db(), *err = NULL;
	struct bayes_store *w = bayes_store_open(path, false, &err);
	struct bayes_store *r;
	struct bayes_tokens t;
	struct bayes_count c[2];
	unsigned char d1[32] = { 1 }, d2[32] = { 2 }, d3[32] = { 3 };
	uint64_t h[2] = { bayes_hash("cachedword"), bayes_hash("otherword") };

	(void)state;
	assert_non_null(w);
	toks_of("Subject: s\r\n\r\ncachedword\r\n", false, &t);
	assert_int_equal(bayes_store_learn(w, d1, &t, BAYES_SPAM, false, &err), BAYES_LEARNT);
	r = bayes_store_open(path, true, &err);
	assert_non_null(r);
	for (int k = 0; k < 2; k++) { /* the second time from the cache */
		assert_int_equal(bayes_store_lookup(r, h, 2, c), 0);
		assert_int_equal(c[0].spam, 1);
		assert_int_equal(c[1].spam + c[1].ham, 0);
	}
	/* another connection learns: the reader sees it */
	assert_int_equal(bayes_store_learn(w, d2, &t, BAYES_HAM, false, &err), BAYES_LEARNT);
	assert_int_equal(bayes_store_lookup(r, h, 2, c), 0);
	assert_int_equal(c[0].spam, 1);
	assert_int_equal(c[0].ham, 1);
	/* the writer itself, after reading: it sees its own learn */
	assert_int_equal(bayes_store_lookup(w, h, 2, c), 0);
	assert_int_equal(c[0].ham, 1);
	assert_int_equal(bayes_store_learn(w, d3, &t, BAYES_HAM, false, &err), BAYES_LEARNT);
	assert_int_equal(bayes_store_lookup(w, h, 2, c), 0);
	assert_int_equal(c[0].ham, 2);
	assert_int_equal(bayes_store_lookup(r, h, 2, c), 0);
	assert_int_equal(c[0].ham, 2);
	/* and an unlearn */
	assert_int_equal(bayes_store_learn(w, d1, &t, BAYES_SPAM, true, &err), BAYES_UNLEARNT);
	assert_int_equal(bayes_store_lookup(r, h, 2, c), 0);
	assert_int_equal(c[0].spam, 0);
	assert_int_equal(c[0].ham, 2);
	bayes_tokens_free(&t);
	bayes_store_close(&r);
	bayes_store_close(&w);
	rm_db(path);
}

static void test_moves_lines(void **state)
{
	long long tm;
	enum bayes_class cls;
	const char *path;

	(void)state;
	assert_int_equal(ctl_learn_parse_move("1764633600 in cur/1.M2:2,S", &tm, &cls, &path), 0);
	assert_int_equal(tm, 1764633600);
	assert_int_equal(cls, BAYES_SPAM);
	assert_string_equal(path, "cur/1.M2:2,S");
	assert_int_equal(ctl_learn_parse_move("5\tout  .Junk/cur/a b", &tm, &cls, &path), 0);
	assert_int_equal(cls, BAYES_HAM);
	assert_string_equal(path, ".Junk/cur/a b");
	assert_int_equal(ctl_learn_parse_move("x in a", &tm, &cls, &path), -1);
	assert_int_equal(ctl_learn_parse_move("5 sideways a", &tm, &cls, &path), -1);
	assert_int_equal(ctl_learn_parse_move("5 in", &tm, &cls, &path), -1);
	assert_int_equal(ctl_learn_parse_move("5 in   ", &tm, &cls, &path), -1);
	assert_int_equal(ctl_learn_parse_move("-5 in a", &tm, &cls, &path), -1);
	assert_int_equal(ctl_learn_parse_move("", &tm, &cls, &path), -1);
	assert_int_equal(ctl_learn_parse_move("99999999999999999999999 in a", &tm, &cls, &path), -1);
}

/* The default bands are SpamAssassin's, and a probability falls in the
 * last band whose lower bound it reaches. */
static void test_bands(void **state)
{
	struct bayes_conf c;
	char *err = NULL;

	(void)state;
	assert_int_equal(bayes_conf_load(NULL, &c, &err), 0);
	assert_int_equal(c.n_bands, 9);
	assert_string_equal(bayes_band_of(&c, 0.0)->name, "BAYES_00");
	assert_string_equal(bayes_band_of(&c, 0.0099)->name, "BAYES_00");
	assert_string_equal(bayes_band_of(&c, 0.01)->name, "BAYES_05");
	assert_string_equal(bayes_band_of(&c, 0.5)->name, "BAYES_50");
	assert_string_equal(bayes_band_of(&c, 0.95)->name, "BAYES_95");
	assert_string_equal(bayes_band_of(&c, 0.9899)->name, "BAYES_95");
	assert_string_equal(bayes_band_of(&c, 0.99)->name, "BAYES_99");
	assert_string_equal(bayes_band_of(&c, 1.0)->name, "BAYES_99");
	assert_true(bayes_band_of(&c, 1.0)->score == 3.5);
	assert_true(bayes_band_of(&c, 0.0)->score == -1.9);
	assert_int_equal(c.min_spam, 200);
	assert_false(c.autolearn);
	assert_false(c.tok.pairs);
	/* user store paths: plain local@domain only, lower-cased */
	char *p = bayes_user_path(&c, "Demo@Example.TEST");
	assert_string_equal(p, "./var/bayes/users/demo@example.test.db");
	free(p);
	assert_null(bayes_user_path(&c, "../x@y"));
	assert_null(bayes_user_path(&c, ".x@y"));
	assert_null(bayes_user_path(&c, "nobody"));
	assert_null(bayes_user_path(&c, ""));
	bayes_conf_clear(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_words),
		cmocka_unit_test(test_unicode_charsets),
		cmocka_unit_test(test_html_and_urls),
		cmocka_unit_test(test_received_and_own_headers),
		cmocka_unit_test(test_pairs_and_limits),
		cmocka_unit_test(test_maths),
		cmocka_unit_test(test_store),
		cmocka_unit_test(test_store_batch),
		cmocka_unit_test(test_store_cache),
		cmocka_unit_test(test_moves_lines),
		cmocka_unit_test(test_bands),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);

	mime_shutdown();
	return r;
}
