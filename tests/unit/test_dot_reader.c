/*
 * test_dot_reader.c — unit tests for lib/dot_reader.c, the DATA-phase
 * reader. Every case is run three ways — in one feed, one byte per feed,
 * and split in two at every possible offset — and all three must agree,
 * because the network decides where reads end. The SMTP-smuggling
 * variants get one test each; an exhaustive run over short strings of
 * "\r", "\n", "." and "a" compares the reader with a straightforward
 * look-ahead model of the same rules.
 *
 * The reader keeps line endings as received (CRLF stays CRLF, a bare LF or
 * bare CR stays bare), so every expected output below is the input minus
 * stuffed dots and the end marker.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/lib.h"
#include "tests/dot_model.h"

struct run_result {
	char out[1024];
	size_t out_len;
	size_t consumed;
	bool done;
	uint64_t size, bare_lf, bare_cr;
};

/* Feed one chunk; out is exactly in_len + 1 bytes from cmocka's allocator,
 * whose guard bytes catch any write past the documented capacity. */
static bool feed_chunk(struct dot_reader *r, const char *in, size_t len,
		       struct run_result *res)
{
	char *out = test_malloc(len + 1);
	size_t consumed = 12345, out_len = 12345;
	bool done;

	done = dot_reader_feed(r, in, len, &consumed, out, &out_len);
	assert_true(consumed <= len);
	assert_true(out_len <= len + 1);
	assert_true(res->out_len + out_len <= sizeof(res->out));
	memcpy(res->out + res->out_len, out, out_len);
	res->out_len += out_len;
	res->consumed += consumed;
	test_free(out);
	assert_int_equal(done, r->done);
	/* not done means everything offered was taken */
	if (!done)
		assert_int_equal(consumed, len);
	return done;
}

/* Feed `in` as consecutive chunks ending at the offsets in cuts[] (the
 * last chunk runs to len), stopping at the end marker like a session
 * does. */
static void run_cuts(const char *in, size_t len, const size_t *cuts,
		     size_t n_cuts, struct run_result *res)
{
	struct dot_reader r;
	size_t start = 0;

	memset(res, 0, sizeof(*res));
	dot_reader_init(&r);
	for (size_t k = 0; k <= n_cuts; k++) {
		size_t end = k < n_cuts ? cuts[k] : len;

		/* the reader stops at the marker, like the session does:
		 * the rest of the input is the next command's */
		if (feed_chunk(&r, in + start, end - start, res))
			break;
		start = end;
	}
	res->done = r.done;
	res->size = r.size;
	res->bare_lf = r.bare_lf;
	res->bare_cr = r.bare_cr;
	assert_int_equal(res->size, res->out_len);
}

static void assert_same(const struct run_result *a, const struct run_result *b,
			const char *how, size_t at)
{
	if (a->out_len != b->out_len || memcmp(a->out, b->out, a->out_len) != 0 ||
	    a->consumed != b->consumed || a->done != b->done ||
	    a->bare_lf != b->bare_lf || a->bare_cr != b->bare_cr)
		fail_msg("%s (at %zu) differs from one feed", how, at);
}

/* Run every way of chunking and check all agree; returns the one-feed
 * result. */
static void run_all_ways(const char *in, size_t len, struct run_result *res)
{
	struct run_result other;
	size_t *cuts = test_malloc((len + 1) * sizeof(*cuts));

	run_cuts(in, len, NULL, 0, res);

	for (size_t i = 0; i < len; i++)
		cuts[i] = i + 1;
	run_cuts(in, len, cuts, len > 0 ? len - 1 : 0, &other);
	assert_same(res, &other, "one byte per feed", 0);

	/* empty feeds change nothing */
	for (size_t i = 0; i <= len; i++)
		cuts[i] = i;
	run_cuts(in, len, cuts, len + 1, &other);
	assert_same(res, &other, "empty feed then bytes", 0);

	for (size_t at = 0; at <= len; at++) {
		run_cuts(in, len, &at, 1, &other);
		assert_same(res, &other, "two-way split", at);
	}
	test_free(cuts);
}

static void check(const char *in, size_t len, const char *want_out,
		  size_t want_out_len, bool want_done, size_t want_consumed,
		  uint64_t want_bare_lf, uint64_t want_bare_cr)
{
	struct run_result res;

	run_all_ways(in, len, &res);
	if (res.out_len != want_out_len ||
	    memcmp(res.out, want_out, want_out_len) != 0) {
		fail_msg("output for %zu-byte input differs (got %zu bytes, want %zu)",
			 len, res.out_len, want_out_len);
	}
	assert_int_equal(res.done, want_done);
	assert_int_equal(res.consumed, want_consumed);
	assert_int_equal(res.bare_lf, want_bare_lf);
	assert_int_equal(res.bare_cr, want_bare_cr);
	assert_int_equal(res.size, want_out_len);
}

#define CHECK(in, out, done, consumed, lf, cr) \
	check(in, sizeof(in) - 1, out, sizeof(out) - 1, done, consumed, lf, cr)
/* Message that ends: everything consumed. */
#define CHECK_END(in, out, lf, cr) CHECK(in, out, true, sizeof(in) - 1, lf, cr)
/* Stream that does not end: everything consumed, not done. */
#define CHECK_OPEN(in, out, lf, cr) CHECK(in, out, false, sizeof(in) - 1, lf, cr)

static void test_simple_message(void **state)
{
	CHECK_END("Subject: hi\r\n\r\nhello world\r\n.\r\n",
		  "Subject: hi\r\n\r\nhello world\r\n", 0, 0);
	CHECK_END("a\r\n.\r\n", "a\r\n", 0, 0);
	/* the DATA line's CRLF counts: a leading blank line is content */
	CHECK_END("\r\n.\r\n", "\r\n", 0, 0);
	CHECK_END("a\0b\r\n.\r\n", "a\0b\r\n", 0, 0);
}

static void test_empty_message(void **state)
{
	CHECK_END(".\r\n", "", 0, 0);
}

static void test_unterminated(void **state)
{
	CHECK_OPEN("", "", 0, 0);
	CHECK_OPEN("hello", "hello", 0, 0);
	CHECK_OPEN("hello\r\n", "hello\r\n", 0, 0);
	/* a pending CR / ".\r" is consumed but not yet emitted */
	CHECK_OPEN("hello\r", "hello", 0, 0);
	CHECK_OPEN("hello\r\n.", "hello\r\n", 0, 0);
	CHECK_OPEN("hello\r\n.\r", "hello\r\n", 0, 0);
	CHECK_OPEN(".", "", 0, 0);
	CHECK_OPEN(".\r", "", 0, 0);
}

static void test_pipelined_rest_unconsumed(void **state)
{
	static const char in[] = "hi\r\n.\r\nQUIT\r\n";

	CHECK(in, "hi\r\n", true, 7, 0, 0);
	CHECK(".\r\nMAIL FROM:<a@b>\r\n", "", true, 3, 0, 0);
	/* a second marker right after the first belongs to the next command */
	CHECK("x\r\n.\r\n.\r\n", "x\r\n", true, 6, 0, 0);
}

static void test_done_consumes_nothing(void **state)
{
	struct dot_reader r;
	char out[16];
	size_t consumed, out_len;

	dot_reader_init(&r);
	assert_true(dot_reader_feed(&r, ".\r\n", 3, &consumed, out, &out_len));
	assert_int_equal(consumed, 3);
	assert_int_equal(out_len, 0);
	assert_true(r.done);
	consumed = out_len = 99;
	assert_true(dot_reader_feed(&r, "more\r\n", 6, &consumed, out, &out_len));
	assert_int_equal(consumed, 0);
	assert_int_equal(out_len, 0);
	assert_int_equal(r.size, 0);

	/* init resets a finished reader */
	dot_reader_init(&r);
	assert_false(r.done);
	assert_false(dot_reader_feed(&r, "x", 1, &consumed, out, &out_len));
	assert_int_equal(out_len, 1);
	assert_int_equal(r.size, 1);
}

static void test_dot_stuffing(void **state)
{
	CHECK_END("..leading dot\r\n...\r\n.x\r\n. \r\n..\r\n.\r\n",
		  ".leading dot\r\n..\r\nx\r\n \r\n.\r\n", 0, 0);
	/* dots elsewhere in a line are untouched */
	CHECK_END("a.b\r\n a.\r\nend.\r\n.\r\n", "a.b\r\n a.\r\nend.\r\n", 0, 0);
	/* a stuffed line right at the start */
	CHECK_END("..\r\n.\r\n", ".\r\n", 0, 0);
}

/* The held-back CR is what needs out capacity in_len + 1. */
static void test_pending_cr_across_feeds(void **state)
{
	struct dot_reader r;
	char out[2];
	size_t consumed, out_len;

	dot_reader_init(&r);
	assert_false(dot_reader_feed(&r, "a\r", 2, &consumed, out, &out_len));
	assert_int_equal(consumed, 2);
	assert_int_equal(out_len, 1);
	assert_int_equal(r.bare_cr, 0);
	assert_false(dot_reader_feed(&r, "x", 1, &consumed, out, &out_len));
	assert_int_equal(out_len, 2);
	assert_memory_equal(out, "\rx", 2);
	assert_int_equal(r.bare_cr, 1);
	assert_int_equal(r.size, 3);

	/* ".\r" at BOL held, resolved by a non-LF byte: dot dropped */
	dot_reader_init(&r);
	assert_false(dot_reader_feed(&r, ".\r", 2, &consumed, out, &out_len));
	assert_int_equal(out_len, 0);
	assert_false(dot_reader_feed(&r, "y", 1, &consumed, out, &out_len));
	assert_int_equal(out_len, 2);
	assert_memory_equal(out, "\ry", 2);
	assert_int_equal(r.bare_cr, 1);

	/* ... or by LF: the end */
	dot_reader_init(&r);
	assert_false(dot_reader_feed(&r, ".\r", 2, &consumed, out, &out_len));
	assert_true(dot_reader_feed(&r, "\nZ", 2, &consumed, out, &out_len));
	assert_int_equal(consumed, 1);
	assert_int_equal(out_len, 0);
}

/* Line endings come out as they went in, and the two kinds stay apart. */
static void test_line_endings_as_received(void **state)
{
	struct dot_reader r;
	char out[2];
	size_t consumed, out_len;

	CHECK_END("crlf\r\nlf\nboth\r\n\n\r\n.\r\n",
		  "crlf\r\nlf\nboth\r\n\n\r\n", 2, 0);
	CHECK_OPEN("no dots here\r\n\r\rx\n\n", "no dots here\r\n\r\rx\n\n", 2, 2);

	/* a CR held from the last feed comes out with its LF: two bytes for
	 * a one-byte feed, the documented in_len + 1 */
	dot_reader_init(&r);
	assert_false(dot_reader_feed(&r, "\r", 1, &consumed, out, &out_len));
	assert_int_equal(out_len, 0);
	assert_false(dot_reader_feed(&r, "\n", 1, &consumed, out, &out_len));
	assert_int_equal(out_len, 2);
	assert_memory_equal(out, "\r\n", 2);
	assert_int_equal(r.size, 2);
	assert_int_equal(r.bare_cr, 0);
	assert_int_equal(r.bare_lf, 0);
}

/* ---------------------------------------------------- smuggling */

static void test_smuggle_lf_dot_lf(void **state)
{
	CHECK_OPEN("a\n.\n", "a\n.\n", 2, 0);
	CHECK_OPEN("\n.\n", "\n.\n", 2, 0);
	CHECK_END("a\n.\nMAIL FROM:<x@y>\r\n.\r\n",
		  "a\n.\nMAIL FROM:<x@y>\r\n", 2, 0);
}

static void test_smuggle_lf_dot_crlf(void **state)
{
	/* a bare LF does not start a line: the dot is content, not stuffing */
	CHECK_OPEN("a\n.\r\n", "a\n.\r\n", 1, 0);
	CHECK_OPEN("\n.\r\n", "\n.\r\n", 1, 0);
	CHECK_OPEN("a\n..\r\n", "a\n..\r\n", 1, 0);
	CHECK_END("a\n.\r\nRSET\r\n.\r\n", "a\n.\r\nRSET\r\n", 1, 0);
}

static void test_smuggle_crlf_dot_lf(void **state)
{
	/* at BOL the dot is removed as stuffing; the LF stays bare */
	CHECK_OPEN("a\r\n.\n", "a\r\n\n", 1, 0);
	CHECK_OPEN("a\r\n.\nb\r\n", "a\r\n\nb\r\n", 1, 0);
	CHECK_OPEN(".\n", "\n", 1, 0);
	CHECK_END("a\r\n.\nb\r\n.\r\n", "a\r\n\nb\r\n", 1, 0);
}

static void test_smuggle_cr_dot_crlf(void **state)
{
	CHECK_OPEN("a\r.\r\n", "a\r.\r\n", 0, 1);
	CHECK_OPEN("\r.\r\n", "\r.\r\n", 0, 1);
	CHECK_END("a\r.\r\nb\r\n.\r\n", "a\r.\r\nb\r\n", 0, 1);
}

static void test_smuggle_crlf_dot_cr(void **state)
{
	CHECK_OPEN("a\r\n.\rb", "a\r\n\rb", 0, 1);
	CHECK_OPEN("a\r\n.\r.", "a\r\n\r.", 0, 1);
	CHECK_END("a\r\n.\rb\r\n.\r\n", "a\r\n\rb\r\n", 0, 1);
}

static void test_smuggle_crlf_dot_cr_crlf(void **state)
{
	/* ".\r" then CR: dot dropped, bare CR, then a real CRLF */
	CHECK_OPEN("a\r\n.\r\r\n", "a\r\n\r\r\n", 0, 1);
	CHECK_END("a\r\n.\r\r\nb\r\n.\r\n", "a\r\n\r\r\nb\r\n", 0, 1);
	/* the real CRLF does reach BOL, so a marker right after it ends */
	CHECK(".\r\r\n.\r\nX", "\r\r\n", true, 7, 0, 1);
}

static void test_smuggle_other_variants(void **state)
{
	CHECK_OPEN("a\r\r.\r\r", "a\r\r.\r", 0, 3);
	CHECK_OPEN("a\n\r.\n", "a\n\r.\n", 2, 1);
	CHECK_OPEN("a\r\n.\n\r\n", "a\r\n\n\r\n", 1, 0);
	CHECK_OPEN("a\r\n\n.\r\n", "a\r\n\n.\r\n", 1, 0);
	CHECK_OPEN("a\n\r\n", "a\n\r\n", 1, 0);
	CHECK_OPEN("a\r\n .\r\n", "a\r\n .\r\n", 0, 0);
	/* only the real CRLF "." CRLF ends, wherever it hides */
	CHECK("a\r\r\n.\r\nX", "a\r\r\n", true, 7, 0, 1);
	CHECK("a\n\r\n.\r\nX", "a\n\r\n", true, 7, 1, 0);
	CHECK("a\n.\n\r\n.\r\nX", "a\n.\n\r\n", true, 9, 2, 0);
}

/* ------------------------------------------------------ line lengths */

/* longest_line of `in` fed whole, byte by byte and split at every offset:
 * all must agree (the session refuses on it at end of DATA). */
static uint64_t longest_all_ways(const char *in, size_t len)
{
	struct dot_reader r;
	char out[4096];
	size_t consumed, out_len, pos;
	uint64_t whole;

	assert_true(len < sizeof(out));
	dot_reader_init(&r);
	dot_reader_feed(&r, in, len, &consumed, out, &out_len);
	whole = r.longest_line;
	dot_reader_init(&r);
	for (pos = 0; pos < len && !r.done; pos += consumed)
		dot_reader_feed(&r, in + pos, 1, &consumed, out, &out_len);
	assert_int_equal(r.longest_line, whole);
	for (size_t cut = 0; cut <= len; cut++) {
		dot_reader_init(&r);
		dot_reader_feed(&r, in, cut, &consumed, out, &out_len);
		if (!r.done)
			dot_reader_feed(&r, in + cut, len - cut, &consumed, out, &out_len);
		assert_int_equal(r.longest_line, whole);
	}
	return whole;
}

#define LONGEST(lit) longest_all_ways(lit, sizeof(lit) - 1)

static void test_longest_line(void **state)
{
	char big[3000];

	/* CRLF counted, as sent; the end marker's ".\r\n" is a line of 3 */
	assert_int_equal(LONGEST("ab\r\nabcd\r\n.\r\n"), 6);
	assert_int_equal(LONGEST(".\r\n"), 3);
	/* a stuffed dot is an octet that was sent */
	assert_int_equal(LONGEST("..abc\r\n.\r\n"), 7);
	/* a bare LF ends a line too, a bare CR does not */
	assert_int_equal(LONGEST("abc\ndefgh\r\n.\r\n"), 7);
	assert_int_equal(LONGEST("abc\rdefgh\r\n.\r\n"), 11);
	/* bytes after the end marker are the next command, not content */
	assert_int_equal(LONGEST("a\r\n.\r\nQUIT-QUIT-QUIT\r\n"), 3);
	/* a line without an end yet still counts: it can be refused
	 * without ever being held anywhere */
	memset(big, 'x', sizeof(big));
	assert_int_equal(longest_all_ways(big, sizeof(big) - 1), sizeof(big) - 1);
	memcpy(big + 2000, "\r\n.\r\n", 5);
	assert_int_equal(longest_all_ways(big, 2005), 2002);
}

/* ------------------------------------------------ exhaustive model */

static void test_exhaustive_against_model(void **state)
{
	static const char alphabet[] = { '\r', '\n', '.', 'a' };
	char in[9], framed[12];
	size_t ended = 0, total = 0;

	for (size_t len = 0; len <= 8; len++) {
		size_t count = 1;

		for (size_t k = 0; k < len; k++)
			count *= 4;
		for (size_t v = 0; v < count; v++) {
			struct run_result got, want;
			size_t x = v, end;
			const char *hit;

			for (size_t k = 0; k < len; k++, x /= 4)
				in[k] = alphabet[x % 4];
			memset(&want, 0, sizeof(want));
			end = dot_model_run(in, len, want.out, &want.out_len, &want.bare_lf,
					    &want.bare_cr);
			want.done = end != 0;
			run_all_ways(in, len, &got);
			if (got.done != want.done ||
			    got.out_len != want.out_len ||
			    memcmp(got.out, want.out, got.out_len) != 0 ||
			    got.bare_lf != want.bare_lf ||
			    got.bare_cr != want.bare_cr ||
			    got.consumed != (want.done ? end : len))
				fail_msg("reader and model disagree on input #%zu of length %zu",
					 v, len);

			/* the end is exactly the first CRLF.CRLF of the
			 * stream, counting the DATA line's CRLF */
			framed[0] = '\r';
			framed[1] = '\n';
			memcpy(framed + 2, in, len);
			hit = memmem(framed, len + 2, "\r\n.\r\n", 5);
			if (hit == NULL)
				assert_false(got.done);
			else
				assert_int_equal(got.consumed,
						 (size_t)(hit - framed) + 5 - 2);
			/* without a dot there is nothing to drop: the content
			 * is the input, less a final CR still held back */
			if (memchr(in, '.', len) == NULL) {
				size_t keep = len > 0 && in[len - 1] == '\r' ? len - 1 : len;

				assert_int_equal(got.out_len, keep);
				assert_memory_equal(got.out, in, keep);
			}
			ended += got.done;
			total++;
		}
	}
	/* the alphabet reaches both outcomes */
	assert_true(ended > 0);
	assert_true(ended < total);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_simple_message),
		cmocka_unit_test(test_empty_message),
		cmocka_unit_test(test_unterminated),
		cmocka_unit_test(test_pipelined_rest_unconsumed),
		cmocka_unit_test(test_done_consumes_nothing),
		cmocka_unit_test(test_dot_stuffing),
		cmocka_unit_test(test_pending_cr_across_feeds),
		cmocka_unit_test(test_line_endings_as_received),
		cmocka_unit_test(test_smuggle_lf_dot_lf),
		cmocka_unit_test(test_smuggle_lf_dot_crlf),
		cmocka_unit_test(test_smuggle_crlf_dot_lf),
		cmocka_unit_test(test_smuggle_cr_dot_crlf),
		cmocka_unit_test(test_smuggle_crlf_dot_cr),
		cmocka_unit_test(test_smuggle_crlf_dot_cr_crlf),
		cmocka_unit_test(test_smuggle_other_variants),
		cmocka_unit_test(test_longest_line),
		cmocka_unit_test(test_exhaustive_against_model),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
