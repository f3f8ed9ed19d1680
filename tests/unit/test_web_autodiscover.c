/*
 * test_web_autodiscover.c — unit tests for web/autodiscover_req.c (the
 * bounded scan of Outlook's autodiscover request, web_email_ok) and the
 * remote-image hint of web/http.c.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "web/web.h"

#define OUTLOOK_SCHEMA "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

static int
parse(const char *xml, char *email, size_t emailsz, const char **why)
{
	*why = NULL;
	return web_autodiscover_parse(xml, strlen(xml), email, emailsz, why);
}

static void test_parse_ok(void **state)
{
	char email[WEB_EMAIL_MAX + 1];
	const char *why;

	(void)state;
	assert_int_equal(parse("<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n"
			       "<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/"
			       "requestschema/2006\"><Request><EMailAddress>demo@example.test</EMailAddress>"
			       "<AcceptableResponseSchema>" OUTLOOK_SCHEMA "</AcceptableResponseSchema>"
			       "</Request></Autodiscover>\r\n",
			       email, sizeof(email), &why),
			 0);
	assert_string_equal(email, "demo@example.test");
	/* prefixes, whitespace, comments, a BOM, an empty element, attributes */
	assert_int_equal(parse("\xef\xbb\xbf<!-- x --><a:Autodiscover xmlns:a='u'>\n <a:Request>"
			       "<a:Other k = \"v\" />\n<a:EMailAddress>\n  x.y+z@Sub.Example-1.test \t"
			       "</a:EMailAddress></a:Request ></a:Autodiscover>",
			       email, sizeof(email), &why),
			 0);
	assert_string_equal(email, "x.y+z@Sub.Example-1.test");
	/* an EMailAddress outside Request is not the one */
	assert_int_equal(parse("<Autodiscover><EMailAddress>a@b.test</EMailAddress></Autodiscover>", email,
			       sizeof(email), &why),
			 -1);
	assert_string_equal(why, "no Request/EMailAddress");
}

static void test_parse_refused(void **state)
{
	static const struct {
		const char *xml, *why;
	} bad[] = {
		{ "", "the root element is not closed" },
		{ "text", "text outside the root element" },
		{ "<Other/>", "the root element is not Autodiscover" },
		{ "<Autodiscover><Request></Autodiscover>", "mismatched closing tag" },
		{ "<Autodiscover>", "the root element is not closed" },
		{ "<Autodiscover/><Autodiscover/>", "more than one root element" },
		{ "<!DOCTYPE x><Autodiscover/>", "no DOCTYPE, ENTITY or CDATA is taken" },
		{ "<Autodiscover><Request><EMailAddress><![CDATA[a@b.test]]></EMailAddress></Request></Autodiscover>",
		  "markup inside a value" },
		{ "<Autodiscover><Request><EMailAddress>a&amp;b@c.test</EMailAddress></Request></Autodiscover>",
		  "an entity in a value" },
		{ "<Autodiscover x=1/>", "an attribute value without quotes" },
		{ "<Autodiscover x/>", "an attribute without a value" },
		{ "<Autodiscover x='<'/>", "'<' in an attribute value" },
		{ "<Autodiscover x='1'y='2'/>", "bad attribute" },
		{ "<Autodiscover><?pi?></Autodiscover>", "a processing instruction inside an element" },
		{ "<Autodiscover><!-- open", "unterminated comment" },
		{ "<Autodiscover><1/></Autodiscover>", "bad tag name" },
		{ "<Autodiscover><Request><EMailAddress>nope</EMailAddress></Request></Autodiscover>",
		  "EMailAddress is not an address" },
		{ "<Autodiscover><Request><EMailAddress>a@b.test</EMailAddress><EMailAddress>c@d.test"
		  "</EMailAddress></Request></Autodiscover>",
		  "more than one EMailAddress" },
		{ "<Autodiscover><Request><EMailAddress>a@b.test</EMailAddress><AcceptableResponseSchema>"
		  "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
		  "</AcceptableResponseSchema></Request></Autodiscover>",
		  "only Outlook's response schema (2006a) is served" },
	};
	char email[WEB_EMAIL_MAX + 1];
	const char *why;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		email[0] = 'x';
		assert_int_equal(parse(bad[i].xml, email, sizeof(email), &why), -1);
		assert_non_null(why);
		if (strcmp(why, bad[i].why) != 0)
			fail_msg("case %zu: \"%s\", want \"%s\"", i, why, bad[i].why);
		assert_int_equal(email[0], '\0');
	}
}

static void test_parse_limits(void **state)
{
	char email[WEB_EMAIL_MAX + 1], small[8];
	const char *why;
	char *deep = malloc(64 * 20 + 64);
	size_t o = 0;

	(void)state;
	o += (size_t)sprintf(deep + o, "<Autodiscover>");
	for (int i = 0; i < 20; i++)
		o += (size_t)sprintf(deep + o, "<a>");
	for (int i = 0; i < 20; i++)
		o += (size_t)sprintf(deep + o, "</a>");
	sprintf(deep + o, "</Autodiscover>");
	assert_int_equal(parse(deep, email, sizeof(email), &why), -1);
	assert_string_equal(why, "elements nested too deep");
	free(deep);
	/* a name past 64 octets */
	char name[200];
	memset(name, 'n', 100);
	name[100] = '\0';
	char xml[400];
	snprintf(xml, sizeof(xml), "<Autodiscover><%s/></Autodiscover>", name);
	assert_int_equal(parse(xml, email, sizeof(email), &why), -1);
	assert_string_equal(why, "bad tag name");
	/* the caller's buffer bounds the address */
	assert_int_equal(parse("<Autodiscover><Request><EMailAddress>abc@d.test</EMailAddress></Request>"
			       "</Autodiscover>",
			       small, sizeof(small), &why),
			 -1);
	assert_string_equal(why, "a value too long");
	/* and the input's length is capped before any scan */
	assert_int_equal(web_autodiscover_parse("<", WEB_AUTODISCOVER_MAX + 1, email, sizeof(email), &why), -1);
	assert_string_equal(why, "the request is too large");
}

static void test_email_ok(void **state)
{
	char local[80];

	(void)state;
	assert_true(web_email_ok("a@b"));
	assert_true(web_email_ok("o'brien+tag@example.test"));
	assert_false(web_email_ok("@b.test"));
	assert_false(web_email_ok("a@"));
	assert_false(web_email_ok("a"));
	assert_false(web_email_ok("a b@c.test"));
	assert_false(web_email_ok("a<b@c.test"));
	assert_false(web_email_ok("a&b@c.test"));
	assert_false(web_email_ok("a@c_d.test"));
	assert_false(web_email_ok("a@c.test>"));
	memset(local, 'l', 65);
	strcpy(local + 65, "@x.test");
	assert_false(web_email_ok(local));
	strcpy(local + 64, "@x.test"); /* 64 octets: the most a local part has */
	assert_true(web_email_ok(local));
}

static void test_remote_images(void **state)
{
	static const char *const yes[] = {
		"<img src=\"http://x.test/a.png\">",
		"<img alt=x SRC = 'HTTPS://x.test/a.png'>",
		"<img src=//x.test/a.png>",
		"<img srcset=\"https://x.test/a.png 2x\">",
		"<td background=\"http://x.test/bg.png\">",
		"<video poster=\"https://x.test/p.png\">",
		"<div style=\"background:url( 'http://x.test/a.png')\">",
		"<style>p{background:URL(https://x.test/a.png)}</style>",
	};
	static const char *const no[] = {
		"<a href=\"http://x.test/\">link</a>",
		"<img src=\"data:image/png;base64,AAAA\">",
		"<img src=\"cid:part1@x\">",
		"<p>see http://x.test/a.png</p>",
		"<img datasrc=\"http://x.test/a.png\">",
		"",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		if (!web_html_remote_images(yes[i], strlen(yes[i])))
			fail_msg("should be remote: %s", yes[i]);
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (web_html_remote_images(no[i], strlen(no[i])))
			fail_msg("should not be remote: %s", no[i]);
	/* the length is respected: the URL past it is not seen */
	const char *cut = "<img src=\"http://x.test/\">";
	assert_false(web_html_remote_images(cut, 12));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_ok),
		cmocka_unit_test(test_parse_refused),
		cmocka_unit_test(test_parse_limits),
		cmocka_unit_test(test_email_ok),
		cmocka_unit_test(test_remote_images),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
