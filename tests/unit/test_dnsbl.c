/*
 * test_dnsbl.c — unit tests for lib/dnslist.c, the pure parts of the dnsbl
 * stage: address reversal (IPv4, IPv6, v4-mapped), name validation (what
 * may be queried), domains of addresses and URIs, registered domains,
 * answer filters (exact, range, bitmask, any) and scoring, reply templates,
 * and the TTL cache with a clock the test moves.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "filters/filters.h"
#include "lib/lib.h"

static void
test_reverse(void **state)
{
	char out[DNSNAME_BUF];

	(void)state;
	assert_int_equal(dnslist_reverse_addr("192.0.2.1", out), 4);
	assert_string_equal(out, "1.2.0.192");
	assert_int_equal(dnslist_reverse_addr("127.0.0.2", out), 4);
	assert_string_equal(out, "2.0.0.127");
	assert_int_equal(dnslist_reverse_addr("2001:db8::1", out), 6);
	assert_string_equal(out, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2");
	assert_int_equal(dnslist_reverse_addr("::1", out), 6);
	assert_int_equal(strlen(out), 63);
	assert_int_equal(out[0], '1');
	assert_int_equal(dnslist_reverse_addr("2001:DB8:abcd:12::ff00", out), 6);
	assert_string_equal(out, "0.0.f.f.0.0.0.0.0.0.0.0.0.0.0.0.2.1.0.0.d.c.b.a.8.b.d.0.1.0.0.2");
	/* v4-mapped: asked as the IPv4 address */
	assert_int_equal(dnslist_reverse_addr("::ffff:198.51.100.7", out), 4);
	assert_string_equal(out, "7.100.51.198");
	assert_int_equal(dnslist_reverse_addr("", out), -1);
	assert_int_equal(dnslist_reverse_addr("300.1.1.1", out), -1);
	assert_int_equal(dnslist_reverse_addr("example.org", out), -1);
	assert_int_equal(dnslist_reverse_addr("1.2.3", out), -1);
}

static void
test_names(void **state)
{
	char out[DNSNAME_BUF];
	char label63[64], label64[65], longname[300];

	(void)state;
	assert_int_equal(dnsname_normalise("Mail.Example.ORG", 16, out), 0);
	assert_string_equal(out, "mail.example.org");
	assert_int_equal(dnsname_normalise("example.org.", 12, out), 0);
	assert_string_equal(out, "example.org");
	assert_int_equal(dnsname_normalise("a-b.c0.example", 14, out), 0);
	/* refused */
	static const char *const bad[] = {
		"", ".", "localhost", "example..org", ".example.org", "example.org..",
		"-a.example", "a-.example", "under_score.example", "sp ace.example",
		"semi;colon.example", "[192.0.2.1]", "a@b.example", "a.b\nc.example",
		"ünicode.example", "example.-org", NULL,
	};
	for (size_t i = 0; bad[i] != NULL; i++) {
		if (dnsname_normalise(bad[i], strlen(bad[i]), out) == 0)
			fail_msg("accepted \"%s\"", bad[i]);
	}
	/* a NUL inside the length given is no host name character either */
	assert_int_equal(dnsname_normalise("a.b\0c.example", 13, out), -1);
	/* labels up to 63 octets, names up to 253 */
	memset(label63, 'a', 63);
	label63[63] = '\0';
	memset(label64, 'a', 64);
	label64[64] = '\0';
	snprintf(longname, sizeof(longname), "%s.example", label63);
	assert_int_equal(dnsname_normalise(longname, strlen(longname), out), 0);
	snprintf(longname, sizeof(longname), "%s.example", label64);
	assert_int_equal(dnsname_normalise(longname, strlen(longname), out), -1);
	snprintf(longname, sizeof(longname), "%s.%s.%s.%.61s", label63, label63, label63, label63);
	assert_int_equal(strlen(longname), 253);
	assert_int_equal(dnsname_normalise(longname, strlen(longname), out), 0);
	snprintf(longname, sizeof(longname), "%s.%s.%s.%.62s", label63, label63, label63, label63);
	assert_int_equal(dnsname_normalise(longname, strlen(longname), out), -1);

	/* query names: the subject and the zone must fit together */
	assert_int_equal(dnslist_query_name("2.0.0.127", "zen.spamhaus.org", out), 0);
	assert_string_equal(out, "2.0.0.127.zen.spamhaus.org");
	snprintf(longname, sizeof(longname), "%s.%s.%s.%.50s", label63, label63, label63, label63);
	assert_int_equal(dnslist_query_name(longname, "dbl.example", out), -1);
}

static void
test_domains(void **state)
{
	char out[DNSNAME_BUF];

	(void)state;
	assert_int_equal(dnslist_addr_domain("joe@Example.ORG", out), 0);
	assert_string_equal(out, "example.org");
	assert_int_equal(dnslist_addr_domain("\"a@b\"@mail.example", out), 0);
	assert_string_equal(out, "mail.example");
	assert_int_equal(dnslist_addr_domain("", out), -1);
	assert_int_equal(dnslist_addr_domain("joe", out), -1);
	assert_int_equal(dnslist_addr_domain("joe@[192.0.2.1]", out), -1);
	assert_int_equal(dnslist_addr_domain("joe@localhost", out), -1);

	assert_int_equal(dnslist_uri_host("http://www.Example.com/path?q=1", out), 0);
	assert_string_equal(out, "www.example.com");
	assert_int_equal(dnslist_uri_host("https://user:pw@shop.example.net:8443/x", out), 0);
	assert_string_equal(out, "shop.example.net");
	assert_int_equal(dnslist_uri_host("mailto:someone@lists.example.org?subject=hi", out), 0);
	assert_string_equal(out, "lists.example.org");
	assert_int_equal(dnslist_uri_host("www.example.org/page", out), 0);
	assert_string_equal(out, "www.example.org");
	assert_int_equal(dnslist_uri_host("http://192.0.2.1/x", out), -1);
	assert_int_equal(dnslist_uri_host("http://[2001:db8::1]/x", out), -1);
	assert_int_equal(dnslist_uri_host("http:///nohost", out), -1);
	assert_int_equal(dnslist_uri_host("mailto:nobody", out), -1);
	assert_int_equal(dnslist_uri_host("http://bad_host.example/", out), -1);

	assert_int_equal(dnslist_registered_domain("www.shop.example.com", out), 0);
	assert_string_equal(out, "example.com");
	assert_int_equal(dnslist_registered_domain("example.com", out), 0);
	assert_string_equal(out, "example.com");
	assert_int_equal(dnslist_registered_domain("a.b.evil.co.uk", out), 0);
	assert_string_equal(out, "evil.co.uk");
	assert_int_equal(dnslist_registered_domain("evil.co.uk", out), 0);
	assert_string_equal(out, "evil.co.uk");
	assert_int_equal(dnslist_registered_domain("co.uk", out), -1);
	assert_int_equal(dnslist_registered_domain("shop.example.com.au", out), 0);
	assert_string_equal(out, "example.com.au");
	assert_int_equal(dnslist_registered_domain("com", out), -1);
}

static uint32_t
ip(unsigned a, unsigned b, unsigned c, unsigned d)
{
	return (uint32_t)a << 24 | (uint32_t)b << 16 | (uint32_t)c << 8 | d;
}

static void
test_filters(void **state)
{
	struct dnslist_filter f;
	char *err = NULL;

	(void)state;
	assert_int_equal(dnslist_filter_parse("127.0.0.2", 1.5, &f, &err), 0);
	assert_int_equal(f.kind, DNSLIST_EXACT);
	assert_true(f.score == 1.5);
	assert_true(dnslist_filter_match(&f, ip(127, 0, 0, 2)));
	assert_false(dnslist_filter_match(&f, ip(127, 0, 0, 3)));

	assert_int_equal(dnslist_filter_parse("127.0.0.2-127.0.0.11=4", 1, &f, &err), 0);
	assert_int_equal(f.kind, DNSLIST_RANGE);
	assert_true(f.score == 4);
	assert_true(dnslist_filter_match(&f, ip(127, 0, 0, 2)));
	assert_true(dnslist_filter_match(&f, ip(127, 0, 0, 11)));
	assert_false(dnslist_filter_match(&f, ip(127, 0, 0, 12)));
	assert_false(dnslist_filter_match(&f, ip(127, 0, 0, 1)));

	assert_int_equal(dnslist_filter_parse("&0x04=-2.5", 1, &f, &err), 0);
	assert_int_equal(f.kind, DNSLIST_MASK);
	assert_true(f.score == -2.5);
	assert_true(dnslist_filter_match(&f, ip(127, 0, 0, 4)));
	assert_true(dnslist_filter_match(&f, ip(127, 0, 0, 6)));
	assert_false(dnslist_filter_match(&f, ip(127, 0, 0, 8)));
	/* a bitmask speaks of 127.0.0.x only */
	assert_false(dnslist_filter_match(&f, ip(127, 0, 1, 4)));
	assert_false(dnslist_filter_match(&f, ip(10, 0, 0, 4)));
	assert_int_equal(dnslist_filter_parse("&64", 1, &f, &err), 0);
	assert_true(dnslist_filter_match(&f, ip(127, 0, 0, 64)));

	assert_int_equal(dnslist_filter_parse("*", 2, &f, &err), 0);
	assert_true(dnslist_filter_match(&f, ip(127, 0, 0, 2)));
	assert_true(dnslist_filter_match(&f, ip(127, 255, 0, 9)));
	assert_true(dnslist_filter_match(&f, ip(127, 255, 254, 255)));
	/* Spamhaus' "your resolver is refused" (and its other error codes) */
	assert_false(dnslist_filter_match(&f, ip(127, 255, 255, 254)));
	assert_false(dnslist_filter_match(&f, ip(127, 255, 255, 252)));
	/* an answer outside 127/8 (a wildcard pointing at a web server) is
	 * no listing */
	assert_false(dnslist_filter_match(&f, ip(192, 0, 2, 1)));

	static const char *const bad[] = {
		"", "127.0.0", "127.0.0.2-", "127.0.0.9-127.0.0.2", "&0", "&256", "&x",
		"127.0.0.2=", "127.0.0.2=abc", "*=1=2", "&-1", "127.0.0.2 ", NULL,
	};
	for (size_t i = 0; bad[i] != NULL; i++) {
		err = NULL;
		if (dnslist_filter_parse(bad[i], 1, &f, &err) == 0)
			fail_msg("accepted filter \"%s\"", bad[i]);
		assert_non_null(err);
		assert_non_null(strstr(err, bad[i]));
		free(err);
	}
}

static void
test_score(void **state)
{
	struct dnslist_filter f[3];
	char *err = NULL;
	size_t matched;

	(void)state;
	assert_int_equal(dnslist_filter_parse("127.0.0.2=3", 1, &f[0], &err), 0);
	assert_int_equal(dnslist_filter_parse("127.0.0.4-127.0.0.7=2", 1, &f[1], &err), 0);
	assert_int_equal(dnslist_filter_parse("&0x08=0.5", 1, &f[2], &err), 0);

	uint32_t one[] = { ip(127, 0, 0, 2) };
	assert_true(dnslist_score(f, 3, one, 1, &matched) == 3);
	assert_int_equal(matched, 1);
	/* two answers, two filters */
	uint32_t two[] = { ip(127, 0, 0, 2), ip(127, 0, 0, 4) };
	assert_true(dnslist_score(f, 3, two, 2, &matched) == 5);
	assert_int_equal(matched, 2);
	/* two answers for one filter: counted once */
	uint32_t same[] = { ip(127, 0, 0, 5), ip(127, 0, 0, 6) };
	assert_true(dnslist_score(f, 3, same, 2, &matched) == 2);
	assert_int_equal(matched, 1);
	/* a range and a bitmask on one answer (127.0.0.12: bit 8, not in range) */
	uint32_t twelve[] = { ip(127, 0, 0, 12) };
	assert_true(dnslist_score(f, 3, twelve, 1, &matched) == 0.5);
	uint32_t none[] = { ip(127, 0, 0, 3) };
	assert_true(dnslist_score(f, 3, none, 1, &matched) == 0);
	assert_int_equal(matched, 0);
	assert_true(dnslist_score(f, 3, NULL, 0, NULL) == 0);
}

static void
test_format(void **state)
{
	char out[128];

	(void)state;
	dnslist_format("Service unavailable; client [%a] blocked using %l (%z) 100%%",
		       "zen", "zen.spamhaus.org", "192.0.2.1", out, sizeof(out));
	assert_string_equal(out, "Service unavailable; client [192.0.2.1] blocked using zen "
			    "(zen.spamhaus.org) 100%");
	dnslist_format("%x %", "l", "z", "a", out, sizeof(out));
	assert_string_equal(out, "%x %");
	/* controls never reach a reply line; short buffers are cut */
	dnslist_format("a\r\nb %l", "x\ty", "", "", out, sizeof(out));
	assert_string_equal(out, "a  b x y");
	dnslist_format("%a%a%a", "", "", "abcdef", out, 8);
	assert_string_equal(out, "abcdefa");
}

static void
test_cache(void **state)
{
	struct dnscache *c = dnscache_new(3);
	struct dnscache_value v, got;

	(void)state;
	memset(&v, 0, sizeof(v));
	v.status = DNSCACHE_FOUND;
	v.n_addrs = 1;
	v.addrs4[0] = ip(127, 0, 0, 2);
	dnscache_put(c, 1, "2.0.0.127.bl.example", &v, 300, 1000);
	assert_true(dnscache_get(c, 1, "2.0.0.127.bl.example", 1000, &got));
	assert_int_equal(got.addrs4[0], ip(127, 0, 0, 2));
	assert_true(dnscache_get(c, 1, "2.0.0.127.bl.example", 1299, &got));
	/* another type is another question */
	assert_false(dnscache_get(c, 28, "2.0.0.127.bl.example", 1000, &got));
	/* the TTL is over */
	assert_false(dnscache_get(c, 1, "2.0.0.127.bl.example", 1300, &got));
	assert_int_equal(dnscache_count(c), 0);

	/* a negative answer and a PTR */
	memset(&v, 0, sizeof(v));
	v.status = DNSCACHE_NONE;
	dnscache_put(c, 1, "9.0.0.127.bl.example", &v, 60, 2000);
	memset(&v, 0, sizeof(v));
	v.status = DNSCACHE_FOUND;
	str_copy(v.name, "host.example", sizeof(v.name));
	dnscache_put(c, 12, "5.0.0.127.in-addr.arpa", &v, 100, 2000);
	assert_true(dnscache_get(c, 1, "9.0.0.127.bl.example", 2059, &got));
	assert_int_equal(got.status, DNSCACHE_NONE);
	assert_true(dnscache_get(c, 12, "5.0.0.127.in-addr.arpa", 2050, &got));
	assert_string_equal(got.name, "host.example");
	/* a TTL of 0 is not kept */
	dnscache_put(c, 1, "zero.example", &v, 0, 2000);
	assert_false(dnscache_get(c, 1, "zero.example", 2000, &got));

	/* bounded: full, the entry that expires first makes room */
	memset(&v, 0, sizeof(v));
	v.status = DNSCACHE_NONE;
	dnscache_put(c, 1, "a.example", &v, 500, 2000);
	assert_int_equal(dnscache_count(c), 3);
	dnscache_put(c, 1, "b.example", &v, 500, 2000);
	assert_int_equal(dnscache_count(c), 3);
	assert_false(dnscache_get(c, 1, "9.0.0.127.bl.example", 2001, &got));
	assert_true(dnscache_get(c, 12, "5.0.0.127.in-addr.arpa", 2001, &got));
	assert_true(dnscache_get(c, 1, "a.example", 2001, &got));
	assert_true(dnscache_get(c, 1, "b.example", 2001, &got));
	/* ... and what has expired goes first of all */
	dnscache_put(c, 1, "c.example", &v, 500, 2200);
	assert_int_equal(dnscache_count(c), 3);
	assert_false(dnscache_get(c, 12, "5.0.0.127.in-addr.arpa", 2200, &got));
	assert_true(dnscache_get(c, 1, "c.example", 2200, &got));
	/* a second put replaces, with the new TTL */
	dnscache_put(c, 1, "c.example", &v, 10, 2200);
	assert_int_equal(dnscache_count(c), 3);
	assert_false(dnscache_get(c, 1, "c.example", 2210, &got));
	/* many more than fit: never more than max */
	for (int i = 0; i < 100; i++) {
		char name[32];
		snprintf(name, sizeof(name), "n%d.example", i);
		dnscache_put(c, 1, name, &v, 100 + i, 3000);
		assert_true(dnscache_count(c) <= 3);
	}
	assert_true(dnscache_get(c, 1, "n99.example", 3000, &got));
	dnscache_free(&c);
	assert_null(c);
	dnscache_free(&c);
}

/* The reverse DNS a connect-phase stage hands back rides in the
 * accumulator, and every transaction's clone keeps it. */
static void
test_rdns_in_filter_tx(void **state)
{
	struct filter_tx *fx = filter_tx_new(), *clone;
	const char *name;

	(void)state;
	assert_int_equal(filter_tx_rdns(fx, &name), RDNS_UNKNOWN);
	assert_string_equal(name, "");
	filter_tx_set_rdns(fx, "mail.example.org", RDNS_CONFIRMED);
	clone = filter_tx_clone(fx);
	filter_tx_set_rdns(fx, NULL, RDNS_NONE);
	assert_int_equal(filter_tx_rdns(fx, &name), RDNS_NONE);
	assert_string_equal(name, "");
	assert_int_equal(filter_tx_rdns(clone, &name), RDNS_CONFIRMED);
	assert_string_equal(name, "mail.example.org");
	assert_string_equal(rdns_status_name(RDNS_UNCONFIRMED), "unconfirmed");
	assert_string_equal(rdns_status_name(RDNS_TEMPFAIL), "tempfail");
	filter_tx_free(&clone);
	filter_tx_free(&fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reverse),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_domains),
		cmocka_unit_test(test_filters),
		cmocka_unit_test(test_score),
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_cache),
		cmocka_unit_test(test_rdns_in_filter_tx),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
