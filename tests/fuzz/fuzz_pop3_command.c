/*
 * fuzz_pop3_command.c — libFuzzer target for pop3/parse.c.
 *
 * The input is split at LF into lines; each is tried as a POP3 command
 * line (verb, arguments, message numbers, TOP's two words), as a SASL
 * response (base64, then PLAIN's three fields), and the whole input is
 * run through the RETR/TOP converter in chunks whose sizes come from the
 * first input byte. Beyond what ASan/UBSan catch it checks what the
 * session relies on: arguments lie inside the line, numbers are what the
 * digits say, base64 round-trips, PLAIN's fields lie inside the buffer;
 * the converter's output never overruns 2 * len + 2, has no bare LF, no
 * line "." before the terminator, is the same however the input is
 * chunked, and (RETR) has exactly the size mailbox_file_vsize counts plus
 * the stuffing dots.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop3/pop3.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "%s:%d: invariant failed: %s\n",     \
				__FILE__, __LINE__, #cond);                  \
			abort();                                             \
		}                                                            \
	} while (0)

static void fuzz_line(const char *line, size_t len)
{
	const char *args, *words[2];
	char *buf, *dec, *enc;
	size_t dlen;
	unsigned long n;
	enum pop3_verb v = pop3_parse_verb(line, len, &args);

	if (v != POP3_CMD_UNKNOWN) {
		CHECK(args >= line && args <= line + len);
		CHECK(args == line + len || args[-1] == ' ');
	}
	if (pop3_parse_number(line, len, true, &n)) {
		char out[16];
		CHECK(len <= 9);
		snprintf(out, sizeof(out), "%lu", n);
		/* leading zeros are the only other spelling */
		size_t z = 0;
		while (z + 1 < len && line[z] == '0')
			z++;
		CHECK(strlen(out) == len - z && memcmp(out, line + z, len - z) == 0);
	}
	char *copy = malloc(len + 1);
	memcpy(copy, line, len);
	copy[len] = '\0';
	int k = pop3_split_args(copy, &buf, words, 2);
	CHECK(k >= -1 && k <= 2);
	for (int i = 0; i < k; i++)
		CHECK(words[i] >= buf && words[i][0] != '\0' && strchr(words[i], ' ') == NULL);
	free(buf);
	free(copy);

	if (sasl_base64_decode(line, len, &dec, &dlen) == 0) {
		CHECK(dlen <= len / 4 * 3);
		enc = sasl_base64_encode(dec, dlen);
		/* canonical input (no stray bits in the padding) comes back */
		char *dec2;
		size_t dlen2;
		CHECK(sasl_base64_decode(enc, strlen(enc), &dec2, &dlen2) == 0);
		CHECK(dlen2 == dlen && memcmp(dec, dec2, dlen) == 0);
		free(dec2);
		free(enc);
		const char *z, *c, *p;
		if (sasl_plain_split(dec, dlen, &z, &c, &p) == 0) {
			CHECK(z == dec && c > z && c < dec + dlen && p > c && p <= dec + dlen);
			CHECK(c[0] != '\0');
		}
		free(dec);
	}
}

static size_t convert(const uint8_t *data, size_t size, size_t chunk, bool top,
		      unsigned long lines, char *out)
{
	struct pop3_stuff st;
	size_t o = 0;

	pop3_stuff_init(&st, top, lines);
	for (size_t i = 0; i < size && !st.done; i += chunk) {
		size_t n = size - i < chunk ? size - i : chunk;
		/* an input buffer of exactly n octets, so ASan sees overreads */
		char *in = malloc(n ? n : 1), *tmp = malloc(2 * n + 2);
		memcpy(in, data + i, n);
		size_t got = pop3_stuff_feed(&st, in, n, tmp);
		CHECK(got <= 2 * n + 2);
		memcpy(out + o, tmp, got);
		o += got;
		free(in);
		free(tmp);
	}
	char end[5];
	size_t e = pop3_stuff_end(&st, end);
	CHECK(e <= 5);
	memcpy(out + o, end, e);
	return o + e;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t start = 0;

	for (size_t i = 0; i <= size; i++) {
		if (i == size || data[i] == '\n') {
			size_t len = i - start;
			if (len > 0 && data[start + len - 1] == '\r')
				len--;
			char *line = malloc(len + 1);
			memcpy(line, data + start, len);
			line[len] = '\0';
			fuzz_line(line, len);
			free(line);
			start = i + 1;
		}
	}

	size_t chunk = size > 0 ? (size_t)data[0] % 64 + 1 : 1;
	char *a = malloc(2 * size + 8), *b = malloc(2 * size + 8);
	for (int mode = 0; mode < 2; mode++) {
		bool top = mode == 1;
		unsigned long lines = size > 1 ? data[1] % 8 : 0;
		size_t la = convert(data, size, size ? size : 1, top, lines, a);
		size_t lb = convert(data, size, chunk, top, lines, b);
		CHECK(la == lb && memcmp(a, b, la) == 0);
		CHECK(la >= 3 && memcmp(a + la - 3, ".\r\n", 3) == 0);
		size_t body = la - 3, crlf_size = 0;
		for (size_t i = 0; i < body; i++) {
			if (a[i] == '\n')
				CHECK(i > 0 && a[i - 1] == '\r');
			if ((i == 0 || a[i - 1] == '\n') && a[i] == '.') {
				/* a line starting with "." is always stuffed */
				CHECK(i + 1 < body && a[i + 1] == '.');
				i++;
			}
			crlf_size++;
		}
		/* the body ends with its line end before the terminator */
		CHECK(body == 0 || (body >= 2 && a[body - 2] == '\r' && a[body - 1] == '\n'));
		if (!top && size > 0) {
			/* what LIST says: the file with bare LFs as CRLF, and a
			 * line end after a last line without one */
			size_t want = 0;
			for (size_t i = 0; i < size; i++)
				want += 1 + (data[i] == '\n' && (i == 0 || data[i - 1] != '\r'));
			if (data[size - 1] == '\r')
				want += 1;
			else if (data[size - 1] != '\n')
				want += 2;
			CHECK(crlf_size == want);
		}
	}
	free(a);
	free(b);
	return 0;
}
