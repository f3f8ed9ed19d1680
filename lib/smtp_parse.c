/*
 * smtp_parse.c — parsers for SMTP command lines, MAIL/RCPT paths with their
 * ESMTP parameters, and the HELO/EHLO argument.
 *
 * Everything here is a pure function over a byte range: no I/O, no globals,
 * no allocation, so the session can call it on untrusted input and the fuzz
 * targets can drive it directly. The grammar is RFC 5321 section 4.1.2 with
 * a few deliberate choices: the verb/argument separator is parsed leniently
 * (several spaces are fine, clients do send them), while the path itself is
 * strict — angle brackets required, no source routes, no SMTPUTF8, no
 * "<postmaster>" without a domain — because the path ends up naming files in
 * the Maildir store and being matched by policy, and every oddity we let in
 * here is one every later stage has to think about. Errors are static text
 * the session can put straight into its 501/553 reply.
 */
#include "config.h"

#include "lib/lib.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

static const char *const smtp_verb_names[SMTP_VERB_COUNT] = {
	[SMTP_VERB_UNKNOWN] = "UNKNOWN",
	[SMTP_VERB_HELO] = "HELO",
	[SMTP_VERB_EHLO] = "EHLO",
	[SMTP_VERB_MAIL] = "MAIL",
	[SMTP_VERB_RCPT] = "RCPT",
	[SMTP_VERB_DATA] = "DATA",
	[SMTP_VERB_RSET] = "RSET",
	[SMTP_VERB_NOOP] = "NOOP",
	[SMTP_VERB_QUIT] = "QUIT",
	[SMTP_VERB_HELP] = "HELP",
	[SMTP_VERB_VRFY] = "VRFY",
	[SMTP_VERB_EXPN] = "EXPN",
	[SMTP_VERB_STARTTLS] = "STARTTLS",
	[SMTP_VERB_AUTH] = "AUTH",
	[SMTP_VERB_BDAT] = "BDAT",
	[SMTP_VERB_TURN] = "TURN",
	[SMTP_VERB_ETRN] = "ETRN",
	[SMTP_VERB_XCLIENT] = "XCLIENT",
};

/* Locale-independent: protocol text is ASCII whatever LC_CTYPE says. */
static bool is_alpha(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alnum(unsigned char c)
{
	return is_alpha(c) || is_digit(c);
}

static char to_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static char to_upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/* RFC 5321 atext (from RFC 5322): the characters of an unquoted local part. */
static bool is_atext(unsigned char c)
{
	if (is_alnum(c))
		return true;
	return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* qtextSMTP: printable ASCII except '"' and '\'. */
static bool is_qtext(unsigned char c)
{
	return c >= 32 && c <= 126 && c != '"' && c != '\\';
}

const char *smtp_verb_name(enum smtp_verb verb)
{
	if ((unsigned)verb >= SMTP_VERB_COUNT)
		return "UNKNOWN";
	return smtp_verb_names[verb];
}

int smtp_parse_command(const char *line, size_t len, struct smtp_command *cmd_r)
{
	size_t verb_len, pos, end;

	cmd_r->verb = SMTP_VERB_UNKNOWN;
	cmd_r->args = line;
	cmd_r->args_len = 0;
	if (len == 0)
		return -1;
	/* The line reader already split at CRLF; a CR, LF or NUL left inside
	 * means the client is playing games with line ends. */
	for (size_t i = 0; i < len; i++) {
		if (line[i] == '\0' || line[i] == '\r' || line[i] == '\n')
			return -1;
	}

	for (verb_len = 0; verb_len < len && line[verb_len] != ' '; verb_len++)
		;
	for (pos = verb_len; pos < len && line[pos] == ' '; pos++)
		;
	for (end = len; end > pos && line[end - 1] == ' '; end--)
		;
	cmd_r->args = line + pos;
	cmd_r->args_len = end - pos;

	for (int v = SMTP_VERB_UNKNOWN + 1; v < SMTP_VERB_COUNT; v++) {
		const char *name = smtp_verb_names[v];

		if (strlen(name) == verb_len &&
		    strncasecmp(name, line, verb_len) == 0) {
			cmd_r->verb = (enum smtp_verb)v;
			break;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------ paths */

/* Parse state for one MAIL/RCPT argument string. */
struct path_parser {
	const char *s;
	size_t len;
	size_t pos;
};

static bool pp_peek(const struct path_parser *p, char c)
{
	return p->pos < p->len && p->s[p->pos] == c;
}

/* The content of a quoted string (between the quotes, len octets) with
 * its quoted-pairs resolved, if that is a dot-atom: atext+ *("." atext+).
 * Writes it NUL-terminated to out (room for len + 1) and returns true;
 * false (out undefined) when the quotes are really needed. */
static bool unquote_dot_atom(const char *s, size_t len, char *out)
{
	size_t o = 0;
	bool need_atext = true;

	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (c == '\\' && i + 1 < len)
			c = s[++i];
		if (c == '.') {
			if (need_atext)
				return false;
			need_atext = true;
		} else if (is_atext((unsigned char)c)) {
			need_atext = false;
		} else {
			return false;
		}
		out[o++] = c;
	}
	out[o] = '\0';
	return !need_atext;
}

/* Local part at p->pos: dot-atom or quoted-string. Copies it as received
 * into path->local, except that a quoted string that needs no quotes
 * becomes its dot-atom. */
static int parse_local_part(struct path_parser *p, struct smtp_path *path,
			    const char **error_r)
{
	size_t start = p->pos, n;

	if (pp_peek(p, '"')) {
		p->pos++;
		for (;;) {
			unsigned char c;

			if (p->pos >= p->len) {
				*error_r = "Unterminated quoted local part";
				return -1;
			}
			c = (unsigned char)p->s[p->pos];
			if (c == '"')
				break;
			if (c == '\\') {
				/* quoted-pairSMTP: backslash + printable ASCII */
				if (p->pos + 1 >= p->len ||
				    (unsigned char)p->s[p->pos + 1] < 32 ||
				    (unsigned char)p->s[p->pos + 1] > 126) {
					*error_r = "Invalid escape in quoted local part";
					return -1;
				}
				p->pos += 2;
				continue;
			}
			if (!is_qtext(c)) {
				*error_r = "Invalid character in quoted local part";
				return -1;
			}
			p->pos++;
		}
		p->pos++; /* closing quote */
		path->quoted_local = true;
		n = p->pos - start;
		if (n > SMTP_LOCAL_MAX) {
			*error_r = "Local part too long";
			return -1;
		}
		/* "alice" means alice (RFC 5321 4.1.2: a quoted string that
		 * needs no quoting is the same mailbox): store the canonical
		 * dot-atom, so every later check sees one spelling */
		if (unquote_dot_atom(p->s + start + 1, n - 2, path->local)) {
			path->quoted_local = false;
			return 0;
		}
	} else {
		/* dot-atom: atext+ *("." atext+) */
		for (;;) {
			size_t atom = p->pos;

			while (p->pos < p->len &&
			       is_atext((unsigned char)p->s[p->pos]))
				p->pos++;
			if (p->pos == atom) {
				*error_r = "Invalid character in local part";
				return -1;
			}
			if (!pp_peek(p, '.'))
				break;
			p->pos++;
		}
	}
	n = p->pos - start;
	if (n > SMTP_LOCAL_MAX) {
		*error_r = "Local part too long";
		return -1;
	}
	memcpy(path->local, p->s + start, n);
	path->local[n] = '\0';
	return 0;
}

/* Address literal "[1.2.3.4]" or "[IPv6:...]" at p->pos. Stored in a
 * normal form: the "IPv6:" tag spelled that way, hex digits lower-case. */
static int parse_address_literal(struct path_parser *p, struct smtp_path *path,
				 const char **error_r)
{
	/* "IPv6:" + the longest textual IPv6 address (45) with room to spare */
	char buf[64];
	unsigned char addr[16];
	size_t start = ++p->pos, n;
	bool v6 = false;
	const char *ip;

	while (p->pos < p->len && p->s[p->pos] != ']')
		p->pos++;
	if (p->pos >= p->len) {
		*error_r = "Unterminated address literal";
		return -1;
	}
	n = p->pos - start;
	p->pos++; /* ']' */
	if (n == 0 || n >= sizeof(buf)) {
		*error_r = "Invalid address literal";
		return -1;
	}
	memcpy(buf, p->s + start, n);
	buf[n] = '\0';
	ip = buf;
	if (n > 5 && strncasecmp(buf, "IPv6:", 5) == 0) {
		v6 = true;
		ip = buf + 5;
	}
	/* Check every byte up to n, not up to a NUL: inet_pton() stops at
	 * the first NUL and would accept "1.2.3.4\0junk". The check also
	 * keeps zone ids ("%eth0") and spaces out. */
	for (size_t i = (size_t)(ip - buf); i < n; i++) {
		char c = to_lower(buf[i]);

		if (!(is_digit((unsigned char)c) || c == '.' ||
		      (v6 && (c == ':' || (c >= 'a' && c <= 'f'))))) {
			*error_r = "Invalid address literal";
			return -1;
		}
	}
	if (inet_pton(v6 ? AF_INET6 : AF_INET, ip, addr) != 1) {
		*error_r = "Invalid address literal";
		return -1;
	}
	path->address_literal = true;
	if (v6) {
		size_t i = 0;

		path->domain[i++] = '[';
		memcpy(path->domain + i, "IPv6:", 5);
		i += 5;
		for (const char *c = ip; *c != '\0'; c++)
			path->domain[i++] = to_lower(*c);
		path->domain[i++] = ']';
		path->domain[i] = '\0';
	} else {
		path->domain[0] = '[';
		memcpy(path->domain + 1, ip, n);
		path->domain[n + 1] = ']';
		path->domain[n + 2] = '\0';
	}
	return 0;
}

/* Hostname: LDH labels separated by dots, lower-cased into path->domain. */
static int parse_hostname(struct path_parser *p, struct smtp_path *path,
			  const char **error_r)
{
	size_t start = p->pos, n;

	for (;;) {
		size_t label = p->pos;

		while (p->pos < p->len &&
		       (is_alnum((unsigned char)p->s[p->pos]) ||
			p->s[p->pos] == '-'))
			p->pos++;
		n = p->pos - label;
		if (n == 0) {
			*error_r = "Invalid domain";
			return -1;
		}
		if (p->s[label] == '-' || p->s[p->pos - 1] == '-') {
			*error_r = "Domain label starts or ends with a hyphen";
			return -1;
		}
		if (n > 63) {
			*error_r = "Domain label too long";
			return -1;
		}
		if (!pp_peek(p, '.'))
			break;
		p->pos++;
	}
	n = p->pos - start;
	if (n > SMTP_DOMAIN_MAX) {
		*error_r = "Domain too long";
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		path->domain[i] = to_lower(p->s[start + i]);
	path->domain[n] = '\0';
	return 0;
}

/* One "KEY[=VALUE]" token of length n at s. */
static int parse_param(const char *s, size_t n, struct smtp_param *param,
		       const char **error_r)
{
	size_t klen = 0, vlen;

	while (klen < n && s[klen] != '=')
		klen++;
	if (klen == 0 || !is_alnum((unsigned char)s[0])) {
		*error_r = "Invalid parameter name";
		return -1;
	}
	for (size_t i = 1; i < klen; i++) {
		if (!is_alnum((unsigned char)s[i]) && s[i] != '-') {
			*error_r = "Invalid parameter name";
			return -1;
		}
	}
	if (klen >= sizeof(param->key)) {
		*error_r = "Parameter name too long";
		return -1;
	}
	for (size_t i = 0; i < klen; i++)
		param->key[i] = to_upper(s[i]);
	param->key[klen] = '\0';
	param->value[0] = '\0';
	param->has_value = false;
	if (klen == n)
		return 0;

	s += klen + 1;
	vlen = n - klen - 1;
	if (vlen == 0) {
		*error_r = "Empty parameter value";
		return -1;
	}
	if (vlen >= sizeof(param->value)) {
		*error_r = "Parameter value too long";
		return -1;
	}
	for (size_t i = 0; i < vlen; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 33 || c > 126 || c == '=') {
			*error_r = "Invalid character in parameter value";
			return -1;
		}
	}
	memcpy(param->value, s, vlen);
	param->value[vlen] = '\0';
	param->has_value = true;
	return 0;
}

static int parse_params(struct path_parser *p, struct smtp_path *path,
			const char **error_r)
{
	for (;;) {
		size_t start;

		while (pp_peek(p, ' '))
			p->pos++;
		if (p->pos >= p->len)
			return 0;
		start = p->pos;
		while (p->pos < p->len && p->s[p->pos] != ' ')
			p->pos++;
		if (path->n_params >= SMTP_PARAMS_MAX) {
			*error_r = "Too many parameters";
			return -1;
		}
		if (parse_param(p->s + start, p->pos - start,
				&path->params[path->n_params], error_r) < 0)
			return -1;
		path->n_params++;
	}
}

int smtp_parse_mail_args(const char *args, size_t len, const char *prefix,
			 bool allow_null, struct smtp_path *path_r,
			 const char **error_r)
{
	struct path_parser p = { .s = args, .len = len, .pos = 0 };
	size_t plen = strlen(prefix), path_start;
	const char *syntax = to_upper(prefix[0]) == 'F' ?
		"Syntax: MAIL FROM:<address>" : "Syntax: RCPT TO:<address>";

	memset(path_r, 0, sizeof(*path_r));
	*error_r = NULL;

	for (size_t i = 0; i < len; i++) {
		if ((unsigned char)args[i] >= 0x80) {
			*error_r = "8-bit characters in address or parameters are not supported";
			return -1;
		}
	}
	if (len < plen || strncasecmp(args, prefix, plen) != 0) {
		*error_r = syntax;
		return -1;
	}
	p.pos = plen;
	while (pp_peek(&p, ' '))
		p.pos++;
	if (!pp_peek(&p, '<')) {
		*error_r = syntax;
		return -1;
	}
	path_start = p.pos++;

	if (pp_peek(&p, '>')) {
		if (!allow_null) {
			*error_r = "Null path not allowed here";
			return -1;
		}
		p.pos++;
		path_r->null = true;
	} else {
		if (pp_peek(&p, '@')) {
			*error_r = "Syntax: source routes are not supported";
			return -1;
		}
		if (parse_local_part(&p, path_r, error_r) < 0)
			return -1;
		if (!pp_peek(&p, '@')) {
			*error_r = p.pos < p.len && p.s[p.pos] == '>' ?
				"Address has no domain" :
				"Invalid character in local part";
			return -1;
		}
		p.pos++;
		if (pp_peek(&p, '[')) {
			if (parse_address_literal(&p, path_r, error_r) < 0)
				return -1;
		} else if (parse_hostname(&p, path_r, error_r) < 0) {
			return -1;
		}
		if (!pp_peek(&p, '>')) {
			*error_r = p.pos >= p.len ? syntax :
				"Invalid character in domain";
			return -1;
		}
		p.pos++;
		if (p.pos - path_start > SMTP_PATH_MAX) {
			*error_r = "Path too long";
			return -1;
		}
	}

	if (p.pos < p.len && p.s[p.pos] != ' ') {
		*error_r = "Unexpected characters after address";
		return -1;
	}
	return parse_params(&p, path_r, error_r);
}

int smtp_parse_helo(const char *args, size_t len, const char **error_r)
{
	size_t start = 0, end = len;

	*error_r = NULL;
	while (start < end && args[start] == ' ')
		start++;
	while (end > start && args[end - 1] == ' ')
		end--;
	if (start == end) {
		*error_r = "Missing hostname";
		return -1;
	}
	if (end - start > SMTP_DOMAIN_MAX) {
		*error_r = "Hostname too long";
		return -1;
	}
	for (size_t i = start; i < end; i++) {
		unsigned char c = (unsigned char)args[i];

		if (c == ' ') {
			*error_r = "Only one hostname is allowed";
			return -1;
		}
		if (c < 33 || c > 126) {
			*error_r = "Invalid character in hostname";
			return -1;
		}
	}
	return 0;
}

bool smtp_path_is_simple_local(const struct smtp_path *path)
{
	const char *s = path->local;
	bool need_atext = true;

	if (path->null || path->quoted_local || path->address_literal ||
	    s[0] == '\0' || path->domain[0] == '\0')
		return false;
	/* '%' and '!' are legal atext but are old routing syntax
	 * (user%host@relay, host!user): never deliver on them. */
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '.') {
			if (need_atext)
				return false;
			need_atext = true;
			continue;
		}
		if (!is_atext(c) || c == '%' || c == '!')
			return false;
		need_atext = false;
	}
	return !need_atext;
}

void smtp_path_format(const struct smtp_path *path, char *out, size_t outsz)
{
	size_t llen, dlen, i = 0;

	if (outsz == 0)
		return;
	if (path->null) {
		out[0] = '\0';
		return;
	}
	/* Byte by byte rather than snprintf so the domain is lower-cased even
	 * when a caller filled the struct by hand. */
	llen = strnlen(path->local, sizeof(path->local));
	dlen = strnlen(path->domain, sizeof(path->domain));
	for (size_t k = 0; k < llen && i + 1 < outsz; k++)
		out[i++] = path->local[k];
	if (i + 1 < outsz)
		out[i++] = '@';
	for (size_t k = 0; k < dlen && i + 1 < outsz; k++)
		out[i++] = to_lower(path->domain[k]);
	out[i] = '\0';
}

/* ------------------------------------------------------------- replies */

void smtp_reply_reset(struct smtp_reply *r)
{
	memset(r, 0, sizeof(*r));
}

enum smtp_reply_status smtp_reply_feed(struct smtp_reply *r, const char *line, size_t len,
				       const char **text_r)
{
	bool ok = len >= 3 && line[0] >= '2' && line[0] <= '5' && is_digit((unsigned char)line[1]) &&
		  is_digit((unsigned char)line[2]) &&
		  (len == 3 || line[3] == ' ' || line[3] == '-');
	const char *text = len > 4 ? line + 4 : "";
	size_t tlen = len > 4 ? len - 4 : 0;

	*text_r = "";
	if (!ok || memchr(line, '\0', len) != NULL)
		return SMTP_REPLY_BAD;
	unsigned code = (unsigned)(line[0] - '0') * 100 + (unsigned)(line[1] - '0') * 10 +
			(unsigned)(line[2] - '0');
	if ((r->lines > 0 && code != r->code) || r->lines >= SMTP_REPLY_LINES_MAX)
		return SMTP_REPLY_BAD;
	r->lines++;
	*text_r = text;
	if (r->lines == 1) {
		r->code = code;
		r->enhanced[0] = '\0';
		/* "x.y.z " with x the reply's class leads the text */
		size_t el = 0;
		while (el < tlen && (is_digit((unsigned char)text[el]) || text[el] == '.'))
			el++;
		if (el >= 5 && el < sizeof(r->enhanced) && text[0] == line[0] && text[1] == '.' &&
		    (el == tlen || text[el] == ' ')) {
			memcpy(r->enhanced, text, el);
			r->enhanced[el] = '\0';
			while (el < tlen && text[el] == ' ')
				el++;
			text += el;
			tlen -= el;
		}
		if (tlen >= sizeof(r->text))
			tlen = sizeof(r->text) - 1;
		/* the text goes into our own reply to the client: control
		 * octets (a bare CR would start a reply line of its own) and
		 * non-ASCII become '?' */
		for (size_t i = 0; i < tlen; i++) {
			unsigned char ch = (unsigned char)text[i];
			r->text[i] = ch < 0x20 || ch >= 0x7f ? '?' : (char)ch;
		}
		r->text[tlen] = '\0';
	}
	return len == 3 || line[3] == ' ' ? SMTP_REPLY_DONE : SMTP_REPLY_MORE;
}
