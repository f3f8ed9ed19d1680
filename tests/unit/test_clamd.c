/*
 * test_clamd.c — unit tests for lib/clamd.c, the parser of clamd's answer
 * to INSTREAM: the answers clamd 1.x gives (as seen from the real clamd in
 * tests/integration/test_clamav.py), the NUL and newline terminators, and
 * what must never happen with odd input (a read past len, control
 * characters in the kept text, a verdict nobody said).
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "lib/lib.h"

static enum clamd_result
parse(const char *s, size_t len, char *name, size_t namesz)
{
	return clamd_reply_parse(s, len, name, namesz);
}

static void
test_answers(void **state)
{
	char name[128];

	(void)state;
	assert_int_equal(parse("stream: OK", 11, name, sizeof(name)), CLAMD_CLEAN);
	assert_string_equal(name, "");
	assert_int_equal(parse("stream: OK\n", 11, name, sizeof(name)), CLAMD_CLEAN);
	assert_int_equal(parse("stream: Win.Test.EICAR_HDB-1 FOUND", 35, name, sizeof(name)),
			 CLAMD_FOUND);
	assert_string_equal(name, "Win.Test.EICAR_HDB-1");
	assert_int_equal(parse("stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND\n", 53,
			       name, sizeof(name)), CLAMD_FOUND);
	assert_string_equal(name, "Heuristics.Limits.Exceeded.MaxFileSize");
	assert_int_equal(parse("INSTREAM size limit exceeded. ERROR", 36, name, sizeof(name)),
			 CLAMD_SIZE_LIMIT);
	assert_int_equal(parse("stream: lstat() failed: No such file. ERROR", 44, name,
			       sizeof(name)), CLAMD_ERROR);
	assert_string_equal(name, "No such file. ERROR");
	assert_int_equal(parse("", 0, name, sizeof(name)), CLAMD_ERROR);
	assert_string_equal(name, "");
}

static void
test_hostile(void **state)
{
	char name[8];
	/* no terminator, and what follows len must not be read */
	const char buf[] = "stream: OKXXXX";

	(void)state;
	assert_int_equal(parse(buf, 10, name, sizeof(name)), CLAMD_CLEAN);
	/* only the octets before the first NUL count */
	assert_int_equal(parse("stream: OK\0 FOUND", 17, name, sizeof(name)), CLAMD_CLEAN);
	/* a long name is cut, control characters replaced */
	assert_int_equal(parse("stream: A\rB\x01VeryLongName FOUND", 31, name, sizeof(name)),
			 CLAMD_FOUND);
	assert_string_equal(name, "A?B?Ver");
	/* " FOUND" alone names nothing: not a verdict */
	assert_int_equal(parse(" FOUND", 6, name, sizeof(name)), CLAMD_ERROR);
	assert_int_equal(parse("OKAY", 4, name, sizeof(name)), CLAMD_ERROR);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_answers),
		cmocka_unit_test(test_hostile),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
