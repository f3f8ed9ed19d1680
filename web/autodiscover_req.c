/*
 * autodiscover_req.c — the request of Outlook's autodiscover (the "POX"
 * protocol: POST /autodiscover/autodiscover.xml), read by a small bounded
 * scan instead of an XML library: the request is a handful of elements,
 * and all that is taken from it is the text of Request/EMailAddress (and
 * AcceptableResponseSchema, which must be Outlook's, when present).
 *
 * The scan still refuses what is not well-formed XML of that shape:
 * unbalanced or mismatched tags, more than AD_DEPTH_MAX levels, names
 * past AD_NAME_MAX, attributes without a quoted value, a '<' in
 * attribute values, text outside the one root element, and every
 * DOCTYPE, ENTITY or CDATA section (no entity is ever expanded: an '&' in
 * the address is refused rather than decoded). Pure: no I/O, no globals
 * (tests/fuzz/fuzz_web_autodiscover.c).
 */
#include "config.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "web/web.h"

#define AD_DEPTH_MAX 16
#define AD_NAME_MAX 64
#define AD_SCHEMA_OUTLOOK "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

struct ad_scan {
	const char *p, *end;
	const char *error;
	/* the open elements' local names */
	const char *name[AD_DEPTH_MAX];
	size_t name_len[AD_DEPTH_MAX];
	size_t depth;
	bool root_done;
};

static bool
name_start(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == ':';
}

static bool
name_char(unsigned char c)
{
	return name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

static bool
is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void
skip_space(struct ad_scan *s)
{
	while (s->p < s->end && is_space((unsigned char)*s->p))
		s->p++;
}

/* a name at s->p: its length (s->p moved past it), or 0 */
static size_t
scan_name(struct ad_scan *s, const char **name_r)
{
	const char *start = s->p;

	if (s->p >= s->end || !name_start((unsigned char)*s->p))
		return 0;
	while (s->p < s->end && name_char((unsigned char)*s->p))
		s->p++;
	if ((size_t)(s->p - start) > AD_NAME_MAX)
		return 0;
	*name_r = start;
	return (size_t)(s->p - start);
}

/* the part of a qualified name after its prefix ("a:EMailAddress") */
static void
local_name(const char **name, size_t *len)
{
	for (size_t i = *len; i > 0; i--) {
		if ((*name)[i - 1] == ':') {
			*name += i;
			*len -= i;
			return;
		}
	}
}

static bool
name_is(const char *name, size_t len, const char *want)
{
	return len == strlen(want) && memcmp(name, want, len) == 0;
}

/* past the first occurrence of `what`; false when there is none */
static bool
skip_past(struct ad_scan *s, const char *what)
{
	size_t n = strlen(what);

	for (const char *q = s->p; (size_t)(s->end - q) >= n; q++) {
		if (memcmp(q, what, n) == 0) {
			s->p = q + n;
			return true;
		}
	}
	return false;
}

static bool
fail(struct ad_scan *s, const char *why)
{
	if (s->error == NULL)
		s->error = why;
	return false;
}

/* '<' seen at s->p: one markup construct; *opened_r when it opened an
 * element (its text follows), *closed_r when it closed one */
static bool
scan_markup(struct ad_scan *s, bool *opened_r, bool *closed_r)
{
	const char *name;
	size_t len;

	*opened_r = *closed_r = false;
	s->p++; /* '<' */
	if (s->p >= s->end)
		return fail(s, "truncated markup");
	if (*s->p == '?') {
		if (s->depth > 0)
			return fail(s, "a processing instruction inside an element");
		return skip_past(s, "?>") || fail(s, "unterminated processing instruction");
	}
	if (*s->p == '!') {
		if ((size_t)(s->end - s->p) >= 3 && memcmp(s->p, "!--", 3) == 0) {
			s->p += 3;
			return skip_past(s, "-->") || fail(s, "unterminated comment");
		}
		return fail(s, "no DOCTYPE, ENTITY or CDATA is taken");
	}
	if (*s->p == '/') {
		s->p++;
		if ((len = scan_name(s, &name)) == 0)
			return fail(s, "bad closing tag");
		local_name(&name, &len);
		skip_space(s);
		if (s->p >= s->end || *s->p != '>')
			return fail(s, "bad closing tag");
		s->p++;
		if (s->depth == 0 || s->name_len[s->depth - 1] != len ||
		    memcmp(s->name[s->depth - 1], name, len) != 0)
			return fail(s, "mismatched closing tag");
		s->depth--;
		if (s->depth == 0)
			s->root_done = true;
		*closed_r = true;
		return true;
	}
	if ((len = scan_name(s, &name)) == 0)
		return fail(s, "bad tag name");
	if (s->root_done)
		return fail(s, "more than one root element");
	local_name(&name, &len);
	if (s->depth == 0 && !name_is(name, len, "Autodiscover"))
		return fail(s, "the root element is not Autodiscover");
	for (;;) {
		const char *an;
		bool sp = s->p < s->end && is_space((unsigned char)*s->p);
		skip_space(s);
		if (s->p >= s->end)
			return fail(s, "truncated tag");
		if (*s->p == '>' || *s->p == '/')
			break;
		if (!sp || scan_name(s, &an) == 0)
			return fail(s, "bad attribute");
		skip_space(s);
		if (s->p >= s->end || *s->p != '=')
			return fail(s, "an attribute without a value");
		s->p++;
		skip_space(s);
		if (s->p >= s->end || (*s->p != '"' && *s->p != '\''))
			return fail(s, "an attribute value without quotes");
		char q = *s->p++;
		while (s->p < s->end && *s->p != q) {
			if (*s->p == '<')
				return fail(s, "'<' in an attribute value");
			s->p++;
		}
		if (s->p >= s->end)
			return fail(s, "unterminated attribute value");
		s->p++;
	}
	if (*s->p == '/') {
		s->p++;
		if (s->p >= s->end || *s->p != '>')
			return fail(s, "bad empty-element tag");
		s->p++;
		if (s->depth == 0)
			s->root_done = true;
		return true;
	}
	s->p++; /* '>' */
	if (s->depth == AD_DEPTH_MAX)
		return fail(s, "elements nested too deep");
	s->name[s->depth] = name;
	s->name_len[s->depth] = len;
	s->depth++;
	*opened_r = true;
	return true;
}

/* the text of the element just opened, trimmed, into out: it must be
 * plain text (no markup, no '&') of at most outsz - 1 octets */
static bool
element_text(struct ad_scan *s, char *out, size_t outsz)
{
	const char *start = s->p, *stop;

	while (s->p < s->end && *s->p != '<') {
		if (*s->p == '&')
			return fail(s, "an entity in a value");
		s->p++;
	}
	stop = s->p;
	while (start < stop && is_space((unsigned char)*start))
		start++;
	while (stop > start && is_space((unsigned char)stop[-1]))
		stop--;
	if ((size_t)(stop - start) >= outsz)
		return fail(s, "a value too long");
	memcpy(out, start, (size_t)(stop - start));
	out[stop - start] = '\0';
	/* its closing tag must follow: no child elements */
	if ((size_t)(s->end - s->p) < 2 || s->p[1] != '/')
		return fail(s, "markup inside a value");
	return true;
}

int
web_autodiscover_parse(const char *data, size_t len, char *email, size_t emailsz, const char **error_r)
{
	struct ad_scan s = { .p = data, .end = data + len };
	char schema[256];
	bool have_email = false, have_schema = false;

	if (emailsz == 0 || len > WEB_AUTODISCOVER_MAX) {
		*error_r = "the request is too large";
		return -1;
	}
	email[0] = '\0';
	if (len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0)
		s.p += 3;
	while (s.error == NULL && s.p < s.end) {
		if (*s.p != '<') {
			if (s.depth == 0 && !is_space((unsigned char)*s.p)) {
				fail(&s, "text outside the root element");
				break;
			}
			if (*s.p == '&' && !(s.depth > 0)) {
				fail(&s, "an entity outside the root element");
				break;
			}
			s.p++;
			continue;
		}
		bool opened, closed;
		if (!scan_markup(&s, &opened, &closed))
			break;
		if (!opened || s.depth != 3 || !name_is(s.name[1], s.name_len[1], "Request"))
			continue;
		if (name_is(s.name[2], s.name_len[2], "EMailAddress")) {
			if (have_email) {
				fail(&s, "more than one EMailAddress");
				break;
			}
			have_email = element_text(&s, email, emailsz);
		} else if (name_is(s.name[2], s.name_len[2], "AcceptableResponseSchema")) {
			have_schema = element_text(&s, schema, sizeof(schema));
		}
	}
	if (s.error == NULL && (s.depth > 0 || !s.root_done))
		fail(&s, "the root element is not closed");
	if (s.error == NULL && !have_email)
		fail(&s, "no Request/EMailAddress");
	if (s.error == NULL && have_schema && strcmp(schema, AD_SCHEMA_OUTLOOK) != 0)
		fail(&s, "only Outlook's response schema (2006a) is served");
	if (s.error == NULL && !web_email_ok(email))
		fail(&s, "EMailAddress is not an address");
	if (s.error != NULL) {
		email[0] = '\0';
		*error_r = s.error;
		return -1;
	}
	return 0;
}

bool
web_email_ok(const char *s)
{
	const char *at = strrchr(s, '@');
	size_t local;

	if (at == NULL || at == s || (local = (size_t)(at - s)) > 64 || strlen(at + 1) > 253 ||
	    at[1] == '\0')
		return false;
	for (size_t i = 0; i < local; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      (c != '\0' && strchr("!#$%'*+-/=?^_`{|}~.", c) != NULL)))
			return false;
	}
	for (const char *p = at + 1; *p != '\0'; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '.' || *p == '-'))
			return false;
	return true;
}

bool
web_autodiscover_path(const char *path)
{
	/* Outlook asks for both spellings (and others' case); a path has no
	 * meaning in its case here */
	return strcasecmp(path, "/autodiscover/autodiscover.xml") == 0;
}
