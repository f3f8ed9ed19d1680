/*
 * test_pop3_parse.c — unit tests for pop3/parse.c (command words,
 * numbers, base64, SASL PLAIN, the RETR/TOP converter) and pop3/auth.c
 * (the throttle's counting, window and bounded table).
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "mailbox/mailbox.h"
#include "pop3/pop3.h"

static void test_verbs(void **state)
{
	const char *args;

	(void)state;
	assert_int_equal(pop3_parse_verb("USER demo", 9, &args), POP3_CMD_USER);
	assert_string_equal(args, "demo");
	assert_int_equal(pop3_parse_verb("retr 1", 6, &args), POP3_CMD_RETR);
	assert_string_equal(args, "1");
	assert_int_equal(pop3_parse_verb("QUIT", 4, &args), POP3_CMD_QUIT);
	assert_string_equal(args, "");
	assert_int_equal(pop3_parse_verb("Top 1 0", 7, &args), POP3_CMD_TOP);
	assert_string_equal(args, "1 0");
	assert_int_equal(pop3_parse_verb("QUITX", 5, &args), POP3_CMD_UNKNOWN);
	assert_int_equal(pop3_parse_verb("", 0, &args), POP3_CMD_UNKNOWN);
	assert_int_equal(pop3_parse_verb(" USER", 5, &args), POP3_CMD_UNKNOWN);
	assert_int_equal(pop3_parse_verb("XYZ", 3, &args), POP3_CMD_UNKNOWN);
}

static void test_numbers(void **state)
{
	unsigned long n;

	(void)state;
	assert_true(pop3_parse_number("1", 1, false, &n));
	assert_int_equal(n, 1);
	assert_true(pop3_parse_number("123456789", 9, false, &n));
	assert_false(pop3_parse_number("1234567890", 10, false, &n));
	assert_false(pop3_parse_number("0", 1, false, &n));
	assert_true(pop3_parse_number("0", 1, true, &n));
	assert_false(pop3_parse_number("-1", 2, true, &n));
	assert_false(pop3_parse_number("+1", 2, true, &n));
	assert_false(pop3_parse_number("1 ", 2, true, &n));
	assert_false(pop3_parse_number("", 0, true, &n));
}

static void test_split(void **state)
{
	const char *w[2];
	char *buf;

	(void)state;
	assert_int_equal(pop3_split_args("1 10", &buf, w, 2), 2);
	assert_string_equal(w[0], "1");
	assert_string_equal(w[1], "10");
	free(buf);
	assert_int_equal(pop3_split_args("", &buf, w, 2), 0);
	free(buf);
	assert_int_equal(pop3_split_args("1  10", &buf, w, 2), -1);
	free(buf);
	assert_int_equal(pop3_split_args("1 2 3", &buf, w, 2), -1);
	free(buf);
	assert_int_equal(pop3_split_args("1 ", &buf, w, 2), -1);
	free(buf);
}

static void test_base64(void **state)
{
	char *out, *enc;
	size_t len;

	(void)state;
	assert_int_equal(sasl_base64_decode("AGRlbW8AZGVtbw==", 16, &out, &len), 0);
	assert_int_equal(len, 10);
	assert_memory_equal(out, "\0demo\0demo", 10);
	free(out);
	assert_int_equal(sasl_base64_decode("", 0, &out, &len), 0);
	assert_int_equal(len, 0);
	free(out);
	assert_int_equal(sasl_base64_decode("YQ=", 3, &out, &len), -1);
	assert_int_equal(sasl_base64_decode("Y===", 4, &out, &len), -1);
	assert_int_equal(sasl_base64_decode("YQ==YQ==", 8, &out, &len), -1);
	assert_int_equal(sasl_base64_decode("Y!==", 4, &out, &len), -1);
	for (size_t n = 0; n < 7; n++) {
		const char *src = "abcdefg";
		enc = sasl_base64_encode(src, n);
		assert_int_equal(sasl_base64_decode(enc, strlen(enc), &out, &len), 0);
		assert_int_equal(len, n);
		assert_memory_equal(out, src, n);
		free(out);
		free(enc);
	}
}

static void test_sasl_plain(void **state)
{
	const char *z, *c, *p;
	char a[] = "\0demo@example.test\0pw";
	char b[] = "demo@example.test\0demo@example.test\0pw";
	char bad1[] = "demo\0pw";
	char bad2[] = "\0\0pw";
	char bad3[] = "\0u\0p\0w";

	(void)state;
	assert_int_equal(sasl_plain_split(a, sizeof(a) - 1, &z, &c, &p), 0);
	assert_string_equal(z, "");
	assert_string_equal(c, "demo@example.test");
	assert_string_equal(p, "pw");
	assert_int_equal(sasl_plain_split(b, sizeof(b) - 1, &z, &c, &p), 0);
	assert_string_equal(z, "demo@example.test");
	assert_int_equal(sasl_plain_split(bad1, sizeof(bad1) - 1, &z, &c, &p), -1);
	assert_int_equal(sasl_plain_split(bad2, sizeof(bad2) - 1, &z, &c, &p), -1);
	assert_int_equal(sasl_plain_split(bad3, sizeof(bad3) - 1, &z, &c, &p), -1);
}

/* Convert in one call and byte by byte; both must agree. */
static char *convert(const char *in, bool top, unsigned long lines)
{
	struct pop3_stuff st;
	size_t len = strlen(in), o = 0;
	char *out = malloc(2 * len + 16), *out2 = malloc(2 * len + 16);

	pop3_stuff_init(&st, top, lines);
	o = pop3_stuff_feed(&st, in, len, out);
	o += pop3_stuff_end(&st, out + o);
	out[o] = '\0';
	pop3_stuff_init(&st, top, lines);
	size_t o2 = 0;
	for (size_t i = 0; i < len && !st.done; i++)
		o2 += pop3_stuff_feed(&st, in + i, 1, out2 + o2);
	o2 += pop3_stuff_end(&st, out2 + o2);
	out2[o2] = '\0';
	assert_string_equal(out, out2);
	free(out2);
	return out;
}

static void test_stuff(void **state)
{
	char *o;

	(void)state;
	o = convert("A: b\n\n.x\n..\n.\nend\n", false, 0);
	assert_string_equal(o, "A: b\r\n\r\n..x\r\n...\r\n..\r\nend\r\n.\r\n");
	free(o);
	o = convert("A: b\r\n\r\nx\r\n", false, 0);
	assert_string_equal(o, "A: b\r\n\r\nx\r\n.\r\n");
	free(o);
	o = convert("A: b\n\nno end", false, 0);
	assert_string_equal(o, "A: b\r\n\r\nno end\r\n.\r\n");
	free(o);
	o = convert("", false, 0);
	assert_string_equal(o, ".\r\n");
	free(o);
	/* TOP */
	o = convert("A: b\nC: d\n\n1\n2\n3\n", true, 0);
	assert_string_equal(o, "A: b\r\nC: d\r\n\r\n.\r\n");
	free(o);
	o = convert("A: b\n\n1\n.2\n3\n", true, 2);
	assert_string_equal(o, "A: b\r\n\r\n1\r\n..2\r\n.\r\n");
	free(o);
	o = convert("A: b\r\n\r\n1\r\n2\r\n", true, 1);
	assert_string_equal(o, "A: b\r\n\r\n1\r\n.\r\n");
	free(o);
	o = convert("A: b\n\n1\n", true, 10);
	assert_string_equal(o, "A: b\r\n\r\n1\r\n.\r\n");
	free(o);
	o = convert("only: header\n", true, 3);
	assert_string_equal(o, "only: header\r\n.\r\n");
	free(o);
}

static void test_throttle(void **state)
{
	(void)state;
	mailbox_throttle_reset();
	assert_false(mailbox_throttle_blocked("a:192.0.2.1", 3, 60, 1000));
	mailbox_throttle_fail("a:192.0.2.1", 60, 1000);
	mailbox_throttle_fail("a:192.0.2.1", 60, 1001);
	assert_false(mailbox_throttle_blocked("a:192.0.2.1", 3, 60, 1002));
	mailbox_throttle_fail("a:192.0.2.1", 60, 1002);
	assert_true(mailbox_throttle_blocked("a:192.0.2.1", 3, 60, 1003));
	assert_false(mailbox_throttle_blocked("a:192.0.2.2", 3, 60, 1003));
	/* the window passes */
	assert_false(mailbox_throttle_blocked("a:192.0.2.1", 3, 60, 1060));
	/* many keys: bounded, and the newest still counts */
	for (int i = 0; i < 3 * MAILBOX_THROTTLE_SLOTS; i++) {
		char k[32];
		snprintf(k, sizeof(k), "u:user%d", i);
		mailbox_throttle_fail(k, 60, 2000 + i / 100);
	}
	mailbox_throttle_fail("u:last", 60, 3000);
	assert_true(mailbox_throttle_blocked("u:last", 1, 60, 3000));
	mailbox_throttle_reset();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_verbs),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_split),
		cmocka_unit_test(test_base64),
		cmocka_unit_test(test_sasl_plain),
		cmocka_unit_test(test_stuff),
		cmocka_unit_test(test_throttle),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
