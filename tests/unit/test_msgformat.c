/*
 * test_msgformat.c — unit tests for the pure parts of the format and auth
 * stages: the header-section scan (lib/msgformat.c) and From address
 * lists, the forged-field finder that drops a sender's X-Spam-* and
 * Authentication-Results claiming our authserv-id (lib/headers.c), and the
 * Authentication-Results value the auth stage writes (filters/auth_stage.c).
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "filters/auth.h"
#include "filters/filters.h"
#include "lib/lib.h"

static void
scan(const char *m, struct msg_format *f)
{
	msg_format_scan(m, strlen(m), f);
}

static void
test_scan_counts(void **state)
{
	struct msg_format f;
	const char *m = "From: a@b.example\r\nTo: c@d.example\r\nTo: e@f.example\r\n"
			"Subject: hi\r\n  folded\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
			"Message-ID: <1@b>\r\n\r\nbody\r\n";

	(void)state;
	scan(m, &f);
	assert_true(f.separator);
	assert_false(f.nul);
	assert_false(f.header_8bit);
	assert_int_equal(f.n_fields, 6);
	assert_int_equal(f.n_from, 1);
	assert_int_equal(f.n_to, 2);
	assert_int_equal(f.n_subject, 1);
	assert_int_equal(f.n_date, 1);
	assert_int_equal(f.n_msgid, 1);
	assert_false(f.from_malformed);
	assert_int_equal(f.header_len, strlen(m) - strlen("body\r\n"));
	assert_memory_equal(m + f.from_off, " a@b.example", f.from_len);
}

static void
test_scan_shapes(void **state)
{
	struct msg_format f;
	char big[1200];

	(void)state;
	scan("From: a@b.example\r\nSubject: no body", &f);
	assert_false(f.separator);
	assert_int_equal(f.n_date, 0);
	scan("From: a@b.example\nDate: x\n\nLF only\n", &f);
	assert_true(f.separator);
	assert_int_equal(f.n_fields, 2);
	scan("Subject: caf\xc3\xa9\r\n\r\n", &f);
	assert_true(f.header_8bit);
	assert_int_equal(f.n_from, 0);
	memset(big, 'x', sizeof(big));
	memcpy(big, "X-Long: ", 8);
	memcpy(big + 1100, "\r\n\r\n", 5);
	scan(big, &f);
	assert_int_equal(f.longest_line, 1100);
	f.nul = false;
	msg_format_scan("A: b\r\n\r\nx\0y", 11, &f);
	assert_true(f.nul);
	/* a From continued on the next line */
	scan("From: Someone\r\n <a@b.example>\r\nFrom: c@d.example\r\n\r\n", &f);
	assert_int_equal(f.n_from, 2);
	assert_false(f.from_malformed);
	scan("Not a field line\r\nFrom: x\r\n\r\n", &f);
	assert_int_equal(f.n_garbage, 1);
	assert_true(f.from_malformed);
}

static void
test_addr_list(void **state)
{
	static const char *const good[] = {
		"a@b.example", " Joe <joe@b.example>", "\"Doe, J\" <j@b.example>, k@c.example",
		"j@b.example (Joe)", "<j@[192.0.2.1]>", "=?utf-8?q?J=C3=B6?= <j@b.example>",
	};
	static const char *const bad[] = {
		"", "   ", "nobody", "a@", "@b.example", "a@b..example", "Joe <joe@b.example",
		"undisclosed-recipients:;", "a@b.example <c@d.example> x", "a b@c.example",
		"(only a comment)", "\"unterminated <a@b.example>",
	};

	(void)state;
	for (size_t i = 0; i < N_ELEMENTS(good); i++)
		assert_true(msg_addr_list_ok(good[i], strlen(good[i])));
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		if (msg_addr_list_ok(bad[i], strlen(bad[i])))
			fail_msg("accepted as a From: \"%s\"", bad[i]);
	}
}

static void
test_authres_id(void **state)
{
	(void)state;
	const char *f1 = "Authentication-Results: mx.example.test; spf=pass\r\n";
	assert_true(msg_authres_id_is(f1, strlen(f1), "mx.example.test"));
	assert_true(msg_authres_id_is(f1, strlen(f1), "MX.Example.TEST"));
	assert_false(msg_authres_id_is(f1, strlen(f1), "mx.example"));
	assert_false(msg_authres_id_is(f1, strlen(f1), "other.test"));
	assert_false(msg_authres_id_is(f1, strlen(f1), ""));
	assert_false(msg_authres_id_is(f1, strlen(f1), NULL));
	const char *f2 = "authentication-results :\r\n (comment (nested)) \"mx.example.test\" 1;"
			 " dkim=pass\r\n";
	assert_true(msg_authres_id_is(f2, strlen(f2), "mx.example.test"));
	const char *f3 = "Authentication-Results: mx.example.test.evil; none\r\n";
	assert_false(msg_authres_id_is(f3, strlen(f3), "mx.example.test"));
	const char *f4 = "Authentication-Results-X: mx.example.test; none\r\n";
	assert_false(msg_authres_id_is(f4, strlen(f4), "mx.example.test"));
	const char *f5 = "Authentication-Results: mx.example.test";
	assert_true(msg_authres_id_is(f5, strlen(f5), "mx.example.test"));
}

static void
test_forged_next(void **state)
{
	const char *m = "Received: x\r\nAuthentication-Results: mx.example.test; spf=pass\r\n"
			"\tsmtp.mailfrom=a@b\r\nAuthentication-Results: other.example; spf=fail\r\n"
			"X-Spam-Flag: NO\r\nSubject: s\r\n\r\n"
			"Authentication-Results: mx.example.test; in the body\r\n";
	size_t pos = 0, span[2], n = 0;
	char got[3][128];

	(void)state;
	while (msg_forged_next(m, strlen(m), "mx.example.test", &pos, span)) {
		assert_true(n < 3);
		snprintf(got[n++], sizeof(got[0]), "%.*s", (int)(span[1] - span[0]), m + span[0]);
	}
	assert_int_equal(n, 2);
	assert_string_equal(got[0], "Authentication-Results: mx.example.test; spf=pass\r\n"
			    "\tsmtp.mailfrom=a@b\r\n");
	assert_string_equal(got[1], "X-Spam-Flag: NO\r\n");
	/* without an id only X-Spam-* */
	pos = 0;
	n = 0;
	while (msg_forged_next(m, strlen(m), NULL, &pos, span))
		n++;
	assert_int_equal(n, 1);
}

static void
test_ar_format(void **state)
{
	struct auth_ar_sig sigs[2] = {
		{ "pass", "", "example.org", "s1", "rsa-sha256" },
		{ "policy", "weak algorithm rsa-sha1", "example.net", "old", "rsa-sha1" },
	};
	char *v;
	char text[64];

	(void)state;
	v = auth_format_results("mx.example.test", "pass", "smtp.mailfrom=a@example.org", sigs,
				2, true, "pass", "example.org", "");
	assert_string_equal(v, "mx.example.test; spf=pass smtp.mailfrom=a@example.org;"
			    " dkim=pass header.d=example.org header.s=s1 header.a=rsa-sha256;"
			    " dkim=policy (weak algorithm rsa-sha1) header.d=example.net"
			    " header.s=old header.a=rsa-sha1; dmarc=pass header.from=example.org");
	free(v);
	v = auth_format_results("mx.example.test", NULL, NULL, NULL, 0, true, "fail",
				"example.com", "p=reject");
	assert_string_equal(v, "mx.example.test; dkim=none; dmarc=fail (p=reject)"
			    " header.from=example.com");
	free(v);
	v = auth_format_results("mx.example.test", NULL, NULL, NULL, 0, false, NULL, NULL, NULL);
	assert_string_equal(v, "mx.example.test; none");
	free(v);
	auth_format_text("DMARC policy of %d says reject", "example.com", text, sizeof(text));
	assert_string_equal(text, "DMARC policy of example.com says reject");
	auth_format_text("%d%d%d", "abcdefghij", text, 8);
	assert_string_equal(text, "abcdefg");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scan_counts),
		cmocka_unit_test(test_scan_shapes),
		cmocka_unit_test(test_addr_list),
		cmocka_unit_test(test_authres_id),
		cmocka_unit_test(test_forged_next),
		cmocka_unit_test(test_ar_format),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
