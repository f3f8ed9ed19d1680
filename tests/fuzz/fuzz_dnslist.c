/*
 * fuzz_dnslist.c — libFuzzer target for the name handling of lib/dnslist.c,
 * which turns what a client sends (HELO, envelope sender, From:, the URIs of
 * a body) into DNS names the dnsbl stage asks about, and for the answer
 * filter parser (admin input, but cheap to cover).
 *
 * The input, cut at its first NUL, goes through dnsname_normalise(),
 * dnslist_addr_domain(), dnslist_uri_host(), dnslist_registered_domain(),
 * dnslist_query_name(), dnslist_reverse_addr() and dnslist_filter_parse().
 * Beyond "no crash, no read past the input": every name accepted is one a
 * resolver may be asked — NUL-terminated within DNSNAME_BUF, at most 253
 * octets, only lower-case letters, digits, '-' and '.', labels of 1..63
 * octets not starting or ending with '-', at least two labels — and
 * normalising it again gives it back unchanged; a registered domain is a
 * suffix of its host; a reversed address is 7..15 (IPv4) or 63 (IPv6)
 * octets of digits, hex nibbles and dots.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"
#include "tests/fuzz/fuzz.h"

static void
check_name(const char *name)
{
	size_t len = strnlen(name, DNSNAME_BUF);
	size_t label = 0, labels = 0;
	char again[DNSNAME_BUF];

	CHECK(len < DNSNAME_BUF && len <= DNSNAME_MAX && len > 0);
	for (size_t i = 0; i <= len; i++) {
		char c = name[i];
		if (c == '.' || c == '\0') {
			CHECK(label >= 1 && label <= DNSLABEL_MAX);
			CHECK(name[i - 1] != '-');
			labels++;
			label = 0;
			continue;
		}
		CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-');
		CHECK(!(c == '-' && label == 0));
		label++;
	}
	CHECK(labels >= 2);
	CHECK(dnsname_normalise(name, len, again) == 0);
	CHECK(strcmp(again, name) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy, so ASan sees a read past the input */
	char *in = malloc(size + 1);
	char out[DNSNAME_BUF], reg[DNSNAME_BUF], q[DNSNAME_BUF];
	struct dnslist_filter f;
	char *err = NULL;
	size_t n;
	int fam;

	memcpy(in, data, size);
	in[size] = '\0';
	n = strlen(in);
	if (dnsname_normalise(in, n, out) == 0)
		check_name(out);
	if (dnslist_addr_domain(in, out) == 0)
		check_name(out);
	if (dnslist_uri_host(in, out) == 0) {
		check_name(out);
		if (dnslist_registered_domain(out, reg) == 0) {
			size_t lo = strlen(out), lr = strlen(reg);
			check_name(reg);
			CHECK(lr <= lo && strcmp(out + lo - lr, reg) == 0);
			CHECK(lr == lo || out[lo - lr - 1] == '.');
		}
		if (dnslist_query_name(out, "bl.example", q) == 0)
			check_name(q);
	}
	fam = dnslist_reverse_addr(in, out);
	if (fam == 4 || fam == 6) {
		size_t len = strlen(out);
		CHECK(fam == 4 ? (len >= 7 && len <= 15) : len == 63);
		for (size_t i = 0; i < len; i++)
			CHECK((out[i] >= '0' && out[i] <= '9') || (out[i] >= 'a' && out[i] <= 'f') ||
			      out[i] == '.');
	} else {
		CHECK(fam == -1);
	}
	if (dnslist_filter_parse(in, 1.0, &f, &err) == 0) {
		CHECK(err == NULL);
		CHECK(f.kind != DNSLIST_RANGE || f.lo <= f.hi);
		CHECK(f.kind != DNSLIST_MASK || (f.mask >= 1 && f.mask <= 255));
	} else {
		CHECK(err != NULL);
		free(err);
	}
	free(in);
	return 0;
}
