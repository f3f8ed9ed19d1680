/*
 * fuzz_web_autodiscover.c — libFuzzer target for the bounded scan of
 * Outlook's autodiscover request (web/autodiscover_req.c), and the
 * remote-image hint of a message's HTML (web/http.c).
 *
 * Beyond "no crash, no read past the input": an address found is
 * NUL-terminated within its buffer, passes web_email_ok and appears in
 * the input as it was given; a refusal says why and leaves the address
 * empty; a smaller buffer never gets a longer address; the same input
 * gives the same answer twice.
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "web/web.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char email[WEB_EMAIL_MAX + 1], again[WEB_EMAIL_MAX + 1], small[16];
	const char *why = NULL, *why2 = NULL;
	const char *s = (const char *)data;

	int rc = web_autodiscover_parse(s, size, email, sizeof(email), &why);
	if (rc == 0) {
		CHECK(memchr(email, '\0', sizeof(email)) != NULL);
		CHECK(web_email_ok(email));
		CHECK(memmem(data, size, email, strlen(email)) != NULL);
	} else {
		CHECK(rc == -1);
		CHECK(why != NULL && why[0] != '\0');
		CHECK(email[0] == '\0');
	}
	CHECK(web_autodiscover_parse(s, size, again, sizeof(again), &why2) == rc);
	CHECK(strcmp(again, email) == 0);
	if (web_autodiscover_parse(s, size, small, sizeof(small), &why2) == 0) {
		CHECK(rc == 0);
		CHECK(strcmp(small, email) == 0);
	}
	/* the hint is a pure function of the octets */
	CHECK(web_html_remote_images(s, size) == web_html_remote_images(s, size));
	return 0;
}
