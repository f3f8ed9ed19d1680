/*
 * fuzz_dot_reader.c — libFuzzer target for lib/dot_reader.c.
 *
 * The first four input bytes seed the chunking (sizes from 0 up to a
 * seed-chosen maximum, so the fuzzer explores both byte-at-a-time and
 * large reads); the rest is the DATA stream. Each chunk is copied into a
 * buffer of exactly its size and given an output buffer of exactly
 * in_len + 1 bytes, so ASan catches any read or write past the contract.
 * Invariants checked: consumed <= in_len, out_len <= in_len + 1, the total
 * emitted equals r.size, the message ends exactly after the first
 * CRLF "." CRLF of the stream (counting the DATA line's CRLF) and never
 * otherwise, nothing is consumed once done, and the chunked run produces
 * the same bytes and counters as a single feed and as an independent
 * look-ahead model of the rules. Line endings pass through as received:
 * every LF consumed is emitted (but the end marker's), and an input
 * without a "." comes out byte for byte (less a CR still held back).
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "tests/dot_model.h"
#include "tests/fuzz/fuzz.h"

struct result {
	char *out;
	size_t out_len;
	size_t consumed;
	bool done;
	uint64_t bare_lf, bare_cr;
};

static uint32_t next_rand(uint32_t *s)
{
	/* xorshift32: deterministic for a given input, so crashes replay */
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* Feed msg in chunks drawn from seed; one_read feeds it all at once. */
static void run_chunked(const char *msg, size_t len, uint32_t seed,
			bool one_read, struct result *res)
{
	struct dot_reader r;
	uint32_t rng = seed | 1;
	size_t max_chunk = 1 + (seed >> 24) % 64, pos = 0;

	if ((seed & 0xff) < 16)
		max_chunk = len; /* sometimes very large reads too */
	dot_reader_init(&r);
	res->out_len = 0;
	res->consumed = 0;
	while (pos < len && !r.done) {
		size_t want = next_rand(&rng) % (max_chunk + 1), consumed, out_len;
		char *in, *out;
		bool done;

		if (one_read || want > len - pos)
			want = len - pos;
		in = malloc(want > 0 ? want : 1);
		out = malloc(want + 1);
		CHECK(in != NULL && out != NULL);
		memcpy(in, msg + pos, want);
		consumed = out_len = SIZE_MAX;
		done = dot_reader_feed(&r, in, want, &consumed, out, &out_len);
		CHECK(consumed <= want);
		CHECK(out_len <= want + 1);
		CHECK(done == r.done);
		CHECK(done || consumed == want);
		memcpy(res->out + res->out_len, out, out_len);
		res->out_len += out_len;
		pos += consumed;
		free(in);
		free(out);
		CHECK(r.size == res->out_len);
	}
	if (r.done) {
		char out[1];
		size_t consumed = 1, out_len = 1;

		CHECK(dot_reader_feed(&r, msg + pos, len - pos, &consumed, out,
				      &out_len));
		CHECK(consumed == 0 && out_len == 0);
	}
	res->consumed = pos;
	res->done = r.done;
	res->bare_lf = r.bare_lf;
	res->bare_cr = r.bare_cr;
	CHECK(r.size == res->out_len);
}

static void check_same(const struct result *a, const struct result *b)
{
	CHECK(a->done == b->done);
	CHECK(a->consumed == b->consumed);
	CHECK(a->out_len == b->out_len);
	CHECK(memcmp(a->out, b->out, a->out_len) == 0);
	CHECK(a->bare_lf == b->bare_lf);
	CHECK(a->bare_cr == b->bare_cr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t seed = 0;
	const char *msg = (const char *)data;
	size_t len = size;
	struct result chunked, whole, model;
	char *framed;
	const char *hit;

	if (size >= 4) {
		seed = (uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 |
		       (uint32_t)data[2] << 8 | data[3];
		msg += 4;
		len -= 4;
	}
	chunked.out = malloc(len + 1);
	whole.out = malloc(len + 1);
	model.out = malloc(len + 1);
	framed = malloc(len + 2);
	CHECK(chunked.out && whole.out && model.out && framed);

	run_chunked(msg, len, seed, false, &chunked);
	run_chunked(msg, len, 0, true, &whole);
	size_t end = dot_model_run(msg, len, model.out, &model.out_len, &model.bare_lf,
				   &model.bare_cr);
	model.done = end != 0;
	model.consumed = end != 0 ? end : len;
	check_same(&chunked, &whole);
	check_same(&chunked, &model);

	/* line endings are kept: LFs in = LFs out, the marker's aside */
	{
		size_t lf_in = 0, lf_out = 0;

		for (size_t i = 0; i < chunked.consumed; i++)
			lf_in += msg[i] == '\n';
		for (size_t i = 0; i < chunked.out_len; i++)
			lf_out += chunked.out[i] == '\n';
		CHECK(lf_out + (chunked.done ? 1 : 0) == lf_in);
	}
	if (memchr(msg, '.', len) == NULL) {
		size_t keep = len > 0 && msg[len - 1] == '\r' ? len - 1 : len;

		CHECK(!chunked.done);
		CHECK(chunked.out_len == keep && memcmp(chunked.out, msg, keep) == 0);
	}

	/* the end is the first CRLF.CRLF of the stream, DATA's CRLF included */
	framed[0] = '\r';
	framed[1] = '\n';
	memcpy(framed + 2, msg, len);
	hit = memmem(framed, len + 2, "\r\n.\r\n", 5);
	if (hit == NULL) {
		CHECK(!chunked.done);
		CHECK(chunked.consumed == len);
	} else {
		CHECK(chunked.done);
		CHECK(chunked.consumed == (size_t)(hit - framed) + 5 - 2);
	}

	free(chunked.out);
	free(whole.out);
	free(model.out);
	free(framed);
	return 0;
}
