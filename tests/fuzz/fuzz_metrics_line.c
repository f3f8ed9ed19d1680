/*
 * fuzz_metrics_line.c — libFuzzer target for metrics_parse_line() (lib/
 * metrics.c), the reader of the exposition text that mxguardctl status
 * gets from the daemon's /metrics.
 *
 * Beyond "no crash, no read past the input": every string of a sample is
 * NUL-terminated within its buffer, a sample has a name, and a line over
 * METRICS_LINE_MAX is always refused.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/metrics.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so ASan sees a read past the input */
	char *line = malloc(size > 0 ? size : 1);
	struct metrics_sample s;
	int r;

	memcpy(line, data, size);
	r = metrics_parse_line(line, size, &s);
	CHECK(r >= -1 && r <= 1);
	CHECK(memchr(s.name, '\0', sizeof(s.name)) != NULL);
	CHECK(memchr(s.label, '\0', sizeof(s.label)) != NULL);
	CHECK(memchr(s.le, '\0', sizeof(s.le)) != NULL);
	if (r == 1)
		CHECK(s.name[0] != '\0');
	if (size > METRICS_LINE_MAX)
		CHECK(r == -1);
	free(line);
	return 0;
}
