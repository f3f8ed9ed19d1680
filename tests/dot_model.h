/*
 * dot_model.h — the DATA end-of-message rules of lib/dot_reader.c written a
 * second, independent way: as look-ahead over the whole input, the way a
 * reader of RFC 5321 would put them. The unit test compares the reader with
 * it exhaustively over short inputs, the fuzz target over random ones.
 *
 * The content is the input as received minus the stuffed dots and the end
 * marker: CRLF stays CRLF, bare CR and bare LF stay as they are.
 */
#ifndef MXGUARD_TESTS_DOT_MODEL_H
#define MXGUARD_TESTS_DOT_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Emits into out (capacity >= n) what the rules decide, counts bare LF and
 * bare CR, and returns the number of input bytes up to and including the
 * end marker, or 0 when the input does not end the message. */
static inline size_t
dot_model_run(const char *in, size_t n, char *out, size_t *out_len, uint64_t *bare_lf,
	      uint64_t *bare_cr)
{
	size_t i = 0;
	bool bol = true;

	*out_len = 0;
	*bare_lf = *bare_cr = 0;
	while (i < n) {
		char c = in[i];

		if (bol && c == '.') {
			if (i + 1 >= n)
				break;
			if (in[i + 1] == '\r') {
				if (i + 2 >= n)
					break;
				if (in[i + 2] == '\n') {
					return i + 3;
				}
				out[(*out_len)++] = '\r';
				(*bare_cr)++;
				i += 2;
				bol = false;
				continue;
			}
			i++; /* stuffed dot dropped */
			bol = false;
			continue;
		}
		bol = false;
		if (c == '\r') {
			if (i + 1 >= n)
				break;
			if (in[i + 1] == '\n') {
				out[(*out_len)++] = '\r';
				out[(*out_len)++] = '\n';
				i += 2;
				bol = true;
				continue;
			}
			out[(*out_len)++] = '\r';
			(*bare_cr)++;
			i++;
			continue;
		}
		if (c == '\n')
			(*bare_lf)++;
		out[(*out_len)++] = c;
		i++;
	}
	return 0;
}

#endif
