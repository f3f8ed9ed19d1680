/*
 * test_milter_parse.c — unit tests for milter/parse.c: a listen address as
 * libmilter's connection spec, and a header field as libmilter hands it
 * turned back into the message's own octets.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "milter/milter.h"

static void test_conn_spec(void **state)
{
	char out[128], tiny[12];

	(void)state;
	assert_int_equal(milter_conn_spec("127.0.0.1:8891", out, sizeof(out)), 0);
	assert_string_equal(out, "inet:8891@127.0.0.1");
	assert_int_equal(milter_conn_spec("[::1]:10025", out, sizeof(out)), 0);
	assert_string_equal(out, "inet6:10025@::1");
	assert_int_equal(milter_conn_spec("0.0.0.0:1", out, sizeof(out)), 0);
	assert_string_equal(out, "inet:1@0.0.0.0");
	/* not host:port, a bad port, a name, or too small a buffer */
	assert_int_equal(milter_conn_spec("unix:/run/mxguard/milter.sock", out, sizeof(out)), 0);
	assert_string_equal(out, "unix:/run/mxguard/milter.sock");
	assert_int_equal(milter_conn_spec("unix:relative.sock", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("unix:/a\nb", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("127.0.0.1", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("127.0.0.1:", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("127.0.0.1:0", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("127.0.0.1:65536", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("127.0.0.1:88x", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec(":8891", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("::1:8891", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("[::1]8891", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("[]:8891", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("localhost:8891", out, sizeof(out)), -1);
	assert_int_equal(milter_conn_spec("127.0.0.1:8891", tiny, sizeof(tiny)), -1);
}

static void test_header_field(void **state)
{
	size_t len;
	char *f;

	(void)state;
	f = milter_header_field("Subject", "hello", &len);
	assert_string_equal(f, "Subject: hello\r\n");
	assert_int_equal(len, strlen(f));
	free(f);
	/* a folded value comes with bare LFs between its lines */
	f = milter_header_field("X-Long", "one\n\ttwo\r\n three", &len);
	assert_string_equal(f, "X-Long: one\r\n\ttwo\r\n three\r\n");
	free(f);
	f = milter_header_field("X-Empty", "", &len);
	assert_string_equal(f, "X-Empty: \r\n");
	free(f);
	f = milter_header_field("X-\nInjected", "v", &len);
	assert_string_equal(f, "X-_Injected: v\r\n");
	free(f);
	f = milter_header_field("X", "\n", &len);
	assert_string_equal(f, "X: \r\n\r\n");
	assert_int_equal(len, 7);
	free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_conn_spec),
		cmocka_unit_test(test_header_field),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
