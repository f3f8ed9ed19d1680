/*
 * fuzz_msgformat.c — libFuzzer target for the header-section scan of the
 * format and auth stages (lib/msgformat.c: msg_format_scan(),
 * msg_addr_list_ok()) and the finder of fields a sender may not bring
 * (lib/headers.c: msg_forged_next(), msg_authres_id_is()).
 *
 * Beyond "no crash, no read past the input": the header section lies in
 * the input, the first From value lies in it, the counts of single fields
 * are within the field count; every forged span lies in the header section,
 * starts a line, comes after the previous one, and is an X-Spam-* field or
 * an Authentication-Results field naming the id.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so ASan sees a read past the input */
	char *m = malloc(size > 0 ? size : 1);
	struct msg_format f;
	size_t pos = 0, span[2], last = 0;

	memcpy(m, data, size);
	msg_format_scan(m, size, &f);
	CHECK(f.header_len <= size);
	CHECK(f.n_from + f.n_sender + f.n_to + f.n_subject + f.n_date + f.n_msgid <= f.n_fields);
	if (f.n_from > 0)
		CHECK(f.from_off + f.from_len <= f.header_len);
	CHECK(f.longest_line <= size);
	(void)msg_addr_list_ok(m, size);
	while (msg_forged_next(m, size, "mx.example.test", &pos, span)) {
		CHECK(span[0] >= last && span[0] < span[1] && span[1] <= size);
		CHECK(span[0] == 0 || m[span[0] - 1] == '\n');
		CHECK((span[1] - span[0] > 7 && strncasecmp(m + span[0], "X-Spam-", 7) == 0) ||
		      msg_authres_id_is(m + span[0], span[1] - span[0], "mx.example.test"));
		last = span[1];
	}
	free(m);
	return 0;
}
