/*
 * test_smtp_parse.c — unit tests for lib/smtp_parse.c (command lines,
 * MAIL/RCPT paths and parameters, HELO argument, path helpers) and the
 * two string helpers in lib/str.c that the parser's callers lean on.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "lib/lib.h"

static const struct {
	enum smtp_verb verb;
	const char *name;
} all_verbs[] = {
	{ SMTP_VERB_HELO, "HELO" }, { SMTP_VERB_EHLO, "EHLO" },
	{ SMTP_VERB_MAIL, "MAIL" }, { SMTP_VERB_RCPT, "RCPT" },
	{ SMTP_VERB_DATA, "DATA" }, { SMTP_VERB_RSET, "RSET" },
	{ SMTP_VERB_NOOP, "NOOP" }, { SMTP_VERB_QUIT, "QUIT" },
	{ SMTP_VERB_HELP, "HELP" }, { SMTP_VERB_VRFY, "VRFY" },
	{ SMTP_VERB_EXPN, "EXPN" }, { SMTP_VERB_STARTTLS, "STARTTLS" },
	{ SMTP_VERB_AUTH, "AUTH" }, { SMTP_VERB_BDAT, "BDAT" },
	{ SMTP_VERB_TURN, "TURN" }, { SMTP_VERB_ETRN, "ETRN" }, { SMTP_VERB_XCLIENT, "XCLIENT" },
};

static int parse_cmd(const char *line, struct smtp_command *cmd)
{
	return smtp_parse_command(line, strlen(line), cmd);
}

/* Parse MAIL/RCPT args expected to be valid. */
static void mail_ok(const char *args, const char *prefix, bool allow_null,
		    struct smtp_path *path)
{
	const char *error = "untouched";
	int ret = smtp_parse_mail_args(args, strlen(args), prefix, allow_null,
				       path, &error);

	if (ret != 0)
		fail_msg("\"%s\" should parse, got error: %s", args,
			 error != NULL ? error : "(null)");
}

/* Parse MAIL/RCPT args expected to fail; the error must mention `want`
 * (case-insensitively) when want is non-NULL. */
static void mail_err(const char *args, size_t len, const char *prefix,
		     bool allow_null, const char *want)
{
	struct smtp_path path;
	const char *error = NULL;
	int ret = smtp_parse_mail_args(args, len, prefix, allow_null, &path,
				       &error);

	if (ret != -1)
		fail_msg("\"%.*s\" should have been refused", (int)len, args);
	assert_non_null(error);
	assert_true(error[0] != '\0');
	if (want != NULL && strcasestr(error, want) == NULL)
		fail_msg("error for \"%.*s\" is \"%s\", expected it to mention \"%s\"",
			 (int)len, args, error, want);
}

static void mail_err_s(const char *args, const char *prefix, const char *want)
{
	mail_err(args, strlen(args), prefix, true, want);
}

/* ---------------------------------------------------------- commands */

static void test_every_verb_any_case(void **state)
{
	for (size_t i = 0; i < N_ELEMENTS(all_verbs); i++) {
		const char *name = all_verbs[i].name;
		size_t n = strlen(name);
		char variants[4][32];
		struct smtp_command cmd;

		/* upper, lower, alternating, alternating the other way */
		for (size_t k = 0; k <= n; k++) {
			char c = name[k];
			char lc = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);

			variants[0][k] = c;
			variants[1][k] = lc;
			variants[2][k] = k % 2 ? c : lc;
			variants[3][k] = k % 2 ? lc : c;
		}
		for (size_t v = 0; v < 4; v++) {
			char line[64];

			assert_int_equal(parse_cmd(variants[v], &cmd), 0);
			assert_int_equal(cmd.verb, all_verbs[i].verb);
			assert_int_equal(cmd.args_len, 0);

			snprintf(line, sizeof(line), "%s some args", variants[v]);
			assert_int_equal(parse_cmd(line, &cmd), 0);
			assert_int_equal(cmd.verb, all_verbs[i].verb);
			assert_int_equal(cmd.args_len, strlen("some args"));
			assert_memory_equal(cmd.args, "some args", cmd.args_len);
			assert_ptr_equal(cmd.args, line + n + 1);
		}
		assert_string_equal(smtp_verb_name(all_verbs[i].verb), name);
	}
	/* the table above covers every verb the enum has */
	assert_int_equal(N_ELEMENTS(all_verbs), SMTP_VERB_COUNT - 1);
}

static void test_unknown_verbs(void **state)
{
	static const char *const lines[] = {
		"FOO bar", "MAILX FROM:<a@b>", "MAI", "STARTTLSX", "HELO:",
		"X", " HELO x", "HEL O", "EHLO\tname", "QUIT\x01",
	};
	struct smtp_command cmd;

	for (size_t i = 0; i < N_ELEMENTS(lines); i++) {
		assert_int_equal(parse_cmd(lines[i], &cmd), 0);
		assert_int_equal(cmd.verb, SMTP_VERB_UNKNOWN);
	}
	assert_string_equal(smtp_verb_name(SMTP_VERB_UNKNOWN), "UNKNOWN");
	assert_string_equal(smtp_verb_name(SMTP_VERB_COUNT), "UNKNOWN");
	assert_string_equal(smtp_verb_name((enum smtp_verb)-1), "UNKNOWN");
}

static void test_command_args(void **state)
{
	struct smtp_command cmd;
	const char *line;

	line = "MAIL FROM:<a@b.example>";
	assert_int_equal(parse_cmd(line, &cmd), 0);
	assert_int_equal(cmd.verb, SMTP_VERB_MAIL);
	assert_ptr_equal(cmd.args, line + 5);
	assert_int_equal(cmd.args_len, strlen("FROM:<a@b.example>"));

	/* lenient: several spaces before, trailing spaces dropped */
	line = "rcpt    TO:<a@b.example> NOTIFY=NEVER   ";
	assert_int_equal(parse_cmd(line, &cmd), 0);
	assert_int_equal(cmd.verb, SMTP_VERB_RCPT);
	assert_ptr_equal(cmd.args, line + 8);
	assert_int_equal(cmd.args_len, strlen("TO:<a@b.example> NOTIFY=NEVER"));

	line = "NOOP   ";
	assert_int_equal(parse_cmd(line, &cmd), 0);
	assert_int_equal(cmd.verb, SMTP_VERB_NOOP);
	assert_int_equal(cmd.args_len, 0);

	/* inner spaces inside the args are kept */
	line = "HELP a  b";
	assert_int_equal(parse_cmd(line, &cmd), 0);
	assert_int_equal(cmd.args_len, 4);
	assert_memory_equal(cmd.args, "a  b", 4);

	/* the length given wins over the NUL terminator */
	assert_int_equal(smtp_parse_command("DATAxyz", 4, &cmd), 0);
	assert_int_equal(cmd.verb, SMTP_VERB_DATA);
	assert_int_equal(cmd.args_len, 0);
}

static void test_command_bad_lines(void **state)
{
	struct smtp_command cmd;

	assert_int_equal(smtp_parse_command("", 0, &cmd), -1);
	assert_int_equal(smtp_parse_command("NOOP\0x", 6, &cmd), -1);
	assert_int_equal(smtp_parse_command("\0", 1, &cmd), -1);
	assert_int_equal(smtp_parse_command("NOOP\r", 5, &cmd), -1);
	assert_int_equal(smtp_parse_command("NOOP\n", 5, &cmd), -1);
	assert_int_equal(smtp_parse_command("NO\rOP", 5, &cmd), -1);
	assert_int_equal(smtp_parse_command("NOOP\r\nQUIT", 10, &cmd), -1);
	assert_int_equal(smtp_parse_command("MAIL FROM:<a\n@b>", 16, &cmd), -1);
	assert_int_equal(smtp_parse_command("\r\n", 2, &cmd), -1);
	/* the same lines without the bad byte are fine */
	assert_int_equal(smtp_parse_command("NOOP", 4, &cmd), 0);
	assert_int_equal(cmd.verb, SMTP_VERB_NOOP);
}

/* ------------------------------------------------------------- paths */

static void test_mail_valid(void **state)
{
	struct smtp_path path;
	char buf[SMTP_PATH_MAX + 1];

	mail_ok("FROM:<User.Name+tag@Example.COM>", "FROM:", true, &path);
	assert_false(path.null);
	assert_false(path.quoted_local);
	assert_false(path.address_literal);
	assert_string_equal(path.local, "User.Name+tag");
	assert_string_equal(path.domain, "example.com");
	assert_int_equal(path.n_params, 0);
	smtp_path_format(&path, buf, sizeof(buf));
	assert_string_equal(buf, "User.Name+tag@example.com");
	assert_true(smtp_path_is_simple_local(&path));

	/* prefix case-insensitive, spaces after the colon tolerated */
	mail_ok("from:<a@b>", "FROM:", false, &path);
	assert_string_equal(path.local, "a");
	assert_string_equal(path.domain, "b");
	mail_ok("FROM:   <a@b.c>", "FROM:", false, &path);
	assert_string_equal(path.domain, "b.c");
	mail_ok("tO:<x-y_z@sub-1.example.org>", "TO:", false, &path);
	assert_string_equal(path.local, "x-y_z");
	assert_string_equal(path.domain, "sub-1.example.org");
	/* every atext character */
	mail_ok("TO:<!#$%&'*+-/=?^_`{|}~.09AZaz@x.y>", "TO:", false, &path);
	assert_string_equal(path.local, "!#$%&'*+-/=?^_`{|}~.09AZaz");
	/* trailing spaces after the path are fine */
	mail_ok("TO:<a@b>  ", "TO:", false, &path);
	assert_int_equal(path.n_params, 0);
}

static void test_null_path(void **state)
{
	struct smtp_path path;
	char buf[32];

	mail_ok("FROM:<>", "FROM:", true, &path);
	assert_true(path.null);
	assert_false(smtp_path_is_simple_local(&path));
	memset(buf, 'x', sizeof(buf));
	smtp_path_format(&path, buf, sizeof(buf));
	assert_string_equal(buf, "");

	mail_ok("FROM: <> SIZE=100", "FROM:", true, &path);
	assert_true(path.null);
	assert_int_equal(path.n_params, 1);
	assert_string_equal(path.params[0].key, "SIZE");

	mail_err("FROM:<>", 7, "FROM:", false, "null");
	mail_err("TO:<>", 5, "TO:", false, "null");
	mail_err("FROM:< >", 8, "FROM:", true, NULL);
}

static void test_quoted_local(void **state)
{
	struct smtp_path path;
	char buf[SMTP_PATH_MAX + 1];

	mail_ok("FROM:<\"john doe\"@Example.com>", "FROM:", false, &path);
	assert_true(path.quoted_local);
	assert_string_equal(path.local, "\"john doe\"");
	assert_string_equal(path.domain, "example.com");
	assert_false(smtp_path_is_simple_local(&path));
	smtp_path_format(&path, buf, sizeof(buf));
	assert_string_equal(buf, "\"john doe\"@example.com");

	/* escapes are kept as received, an escaped quote does not end it,
	 * and '>' or '@' inside quotes do not end the local part either */
	mail_ok("TO:<\"a\\\"b\\\\c>@d\"@x.org>", "TO:", false, &path);
	assert_string_equal(path.local, "\"a\\\"b\\\\c>@d\"");
	assert_true(path.quoted_local);

	mail_ok("TO:<\"\"@x.org>", "TO:", false, &path);
	assert_string_equal(path.local, "\"\"");

	/* a quoted string that needs no quotes is its dot-atom: "alice" is
	 * alice, quoted-pairs resolved; what really needs quotes stays */
	mail_ok("TO:<\"alice\"@X.org>", "TO:", false, &path);
	assert_false(path.quoted_local);
	assert_string_equal(path.local, "alice");
	assert_true(smtp_path_is_simple_local(&path));
	smtp_path_format(&path, buf, sizeof(buf));
	assert_string_equal(buf, "alice@x.org");
	mail_ok("TO:<\"first.last\"@x.org>", "TO:", false, &path);
	assert_false(path.quoted_local);
	assert_string_equal(path.local, "first.last");
	mail_ok("TO:<\"al\\ice\"@x.org>", "TO:", false, &path);
	assert_false(path.quoted_local);
	assert_string_equal(path.local, "alice");
	static const char *const need_quotes[] = {
		"TO:<\"a b\"@x.org>", "TO:<\"a..b\"@x.org>", "TO:<\".a\"@x.org>",
		"TO:<\"a.\"@x.org>", "TO:<\"a@b\"@x.org>", "TO:<\"a\\\"b\"@x.org>",
		"TO:<\"a,b\"@x.org>",
	};
	for (size_t i = 0; i < N_ELEMENTS(need_quotes); i++) {
		mail_ok(need_quotes[i], "TO:", false, &path);
		if (!path.quoted_local || path.local[0] != '"')
			fail_msg("%s: quotes dropped (%s)", need_quotes[i], path.local);
	}

	mail_err_s("TO:<\"abc@x.org>", "TO:", NULL);
	mail_err_s("TO:<\"a\tb\"@x.org>", "TO:", NULL);
	mail_err_s("TO:<\"a\x01\"@x.org>", "TO:", NULL);
	mail_err_s("TO:<\"a\\\x01\"@x.org>", "TO:", NULL);
	mail_err_s("TO:<\"a\\", "TO:", NULL);
	mail_err_s("TO:<\"a\"b@x.org>", "TO:", NULL);
	mail_err_s("TO:<a\"b\"@x.org>", "TO:", NULL);
	mail_err_s("TO:<\"a\"@x.org", "TO:", NULL);
}

static void test_address_literals(void **state)
{
	struct smtp_path path;
	char buf[SMTP_PATH_MAX + 1];

	mail_ok("TO:<a@[192.0.2.1]>", "TO:", false, &path);
	assert_true(path.address_literal);
	assert_string_equal(path.domain, "[192.0.2.1]");
	assert_false(smtp_path_is_simple_local(&path));
	smtp_path_format(&path, buf, sizeof(buf));
	assert_string_equal(buf, "a@[192.0.2.1]");

	mail_ok("TO:<a@[IPv6:2001:DB8::1]>", "TO:", false, &path);
	assert_true(path.address_literal);
	assert_string_equal(path.domain, "[IPv6:2001:db8::1]");

	mail_ok("TO:<a@[ipv6:::1]> X=1", "TO:", false, &path);
	assert_string_equal(path.domain, "[IPv6:::1]");
	assert_int_equal(path.n_params, 1);

	mail_ok("TO:<a@[IPv6:::ffff:192.0.2.1]>", "TO:", false, &path);
	assert_string_equal(path.domain, "[IPv6:::ffff:192.0.2.1]");

	static const char *const bad[] = {
		"TO:<a@[300.1.1.1]>", "TO:<a@[1.2.3]>", "TO:<a@[1.2.3.4.5]>",
		"TO:<a@[]>", "TO:<a@[1.2.3.4>", "TO:<a@[1.2.3.4]x>",
		"TO:<a@[IPv6:]>", "TO:<a@[IPv6:1.2.3.4]>", "TO:<a@[IPv6:gg::1]>",
		"TO:<a@[IPv6:1:2:3:4:5:6:7:8:9]>", "TO:<a@[2001:db8::1]>",
		"TO:<a@[tag:content]>", "TO:<a@[ 1.2.3.4]>", "TO:<a@[1.2.3.4 ]>",
		"TO:<a@[IPv6: ::1]>", "TO:<a@[IPv4:1.2.3.4]>", "TO:<a@[-1.2.3.4]>",
		"TO:<a@[IPv6:::1%eth0]>",
		"TO:<a@[IPv6:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000]>",
	};
	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		mail_err_s(bad[i], "TO:", NULL);
	/* a NUL inside the brackets must not cut the check short (found by
	 * fuzz_smtp_command) */
	static const char nul4[] = "TO:<a@[192.0.2.1\0]>";
	static const char nul6[] = "TO:<a@[IPv6:::1\0\0]>";

	mail_err(nul4, sizeof(nul4) - 1, "TO:", false, "literal");
	mail_err(nul6, sizeof(nul6) - 1, "TO:", false, "literal");
}

static void test_missing_brackets(void **state)
{
	mail_err_s("FROM:a@b.example", "FROM:", "Syntax: MAIL FROM:<address>");
	mail_err_s("TO:a@b.example", "TO:", "Syntax: RCPT TO:<address>");
	mail_err_s("FROM:<a@b.example", "FROM:", NULL);
	mail_err_s("FROM:a@b.example>", "FROM:", NULL);
	mail_err_s("FROM:", "FROM:", "Syntax");
	mail_err_s("", "FROM:", "Syntax");
	mail_err_s("FROM", "FROM:", "Syntax");
	mail_err_s("FROM <a@b>", "FROM:", "Syntax");
	mail_err_s("FRM:<a@b>", "FROM:", "Syntax");
	mail_err_s("TO:<a@b>", "FROM:", "Syntax");
	mail_err_s("FROM:<a@b>", "TO:", "Syntax");
	mail_err_s("FROM:<", "FROM:", NULL);
	mail_err_s("FROM:<<a@b>>", "FROM:", NULL);
	mail_err_s("FROM:\t<a@b>", "FROM:", "Syntax");
}

static void test_source_routes(void **state)
{
	mail_err_s("FROM:<@a.example,@b.example:user@c.example>", "FROM:",
		   "source route");
	mail_err_s("TO:<@relay.example:user@c.example>", "TO:", "source route");
	mail_err_s("TO:<@>", "TO:", "source route");
}

static void test_no_domain(void **state)
{
	mail_err_s("TO:<postmaster>", "TO:", "domain");
	mail_err_s("TO:<Postmaster>", "TO:", "domain");
	mail_err_s("FROM:<user>", "FROM:", "domain");
	mail_err_s("TO:<user@>", "TO:", NULL);
	mail_err_s("TO:<user@@b>", "TO:", NULL);
	mail_err_s("TO:<a@b@c>", "TO:", NULL);
}

static void test_bad_local_parts(void **state)
{
	static const char *const bad[] = {
		"TO:<.a@b>", "TO:<a.@b>", "TO:<a..b@b>", "TO:<a b@c>",
		"TO:<a(b)@c>", "TO:<a,b@c>", "TO:<a[b]@c>", "TO:<a;b@c>",
		"TO:<a:b@c>", "TO:<a\\b@c>", "TO:<a\x7f@c>", "TO:<a\x01@c>",
		"TO:<a<b@c>",
	};

	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		mail_err_s(bad[i], "TO:", NULL);
}

static void test_bad_domains(void **state)
{
	static const char *const bad[] = {
		"TO:<a@-b.example>", "TO:<a@b-.example>", "TO:<a@b.-x>",
		"TO:<a@b..example>", "TO:<a@b.example.>", "TO:<a@.b>",
		"TO:<a@b_c.example>", "TO:<a@b c>", "TO:<a@b:25>",
		"TO:<a@b/c>", "TO:<a@b.example", "TO:<a@\"b\">",
	};
	struct smtp_path path;

	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		mail_err_s(bad[i], "TO:", NULL);
	/* inner hyphens and all-digit labels are fine */
	mail_ok("TO:<a@x--y.123>", "TO:", false, &path);
	assert_string_equal(path.domain, "x--y.123");
}

static void test_params(void **state)
{
	struct smtp_path path;

	mail_ok("FROM:<a@b> SIZE=1000 BODY=8BITMIME", "FROM:", false, &path);
	assert_int_equal(path.n_params, 2);
	assert_string_equal(path.params[0].key, "SIZE");
	assert_true(path.params[0].has_value);
	assert_string_equal(path.params[0].value, "1000");
	assert_string_equal(path.params[1].key, "BODY");
	assert_string_equal(path.params[1].value, "8BITMIME");

	/* keys upper-cased, values kept, keys without value, extra spaces */
	mail_ok("from:<a@b>   size=10  smtputf8 Env-Id=Ab+2Bc ", "FROM:", false,
		&path);
	assert_int_equal(path.n_params, 3);
	assert_string_equal(path.params[0].key, "SIZE");
	assert_string_equal(path.params[0].value, "10");
	assert_string_equal(path.params[1].key, "SMTPUTF8");
	assert_false(path.params[1].has_value);
	assert_string_equal(path.params[1].value, "");
	assert_string_equal(path.params[2].key, "ENV-ID");
	assert_string_equal(path.params[2].value, "Ab+2Bc");

	/* the whole visible ASCII range except '=' is a legal value */
	mail_ok("TO:<a@b> X=!\"#$%&'()*+,-./:;<>?@[\\]^_`{|}~", "TO:", false, &path);
	assert_string_equal(path.params[0].value, "!\"#$%&'()*+,-./:;<>?@[\\]^_`{|}~");

	/* longest key and value */
	{
		char args[256], key[32], value[128];

		memset(key, 'K', 31);
		key[31] = '\0';
		memset(value, 'v', 127);
		value[127] = '\0';
		snprintf(args, sizeof(args), "TO:<a@b> %s=%s", key, value);
		mail_ok(args, "TO:", false, &path);
		assert_string_equal(path.params[0].key, key);
		assert_string_equal(path.params[0].value, value);

		snprintf(args, sizeof(args), "TO:<a@b> %sK=1", key);
		mail_err_s(args, "TO:", "too long");
		snprintf(args, sizeof(args), "TO:<a@b> K=%sv", value);
		mail_err_s(args, "TO:", "too long");
	}

	static const char *const bad[] = {
		"TO:<a@b> KEY=", "TO:<a@b> =x", "TO:<a@b> -KEY", "TO:<a@b> K_Y=1",
		"TO:<a@b> KEY=a=b", "TO:<a@b> K\x01=1", "TO:<a@b> K=\x01",
		"TO:<a@b> K=a\x7f", "TO:<a@b> =", "TO:<a@b> K.Y",
		"TO:<a@b> SIZE=1\tBODY=7BIT",
	};
	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		mail_err_s(bad[i], "TO:", NULL);
}

static void test_too_many_params(void **state)
{
	char args[512];
	size_t n;
	struct smtp_path path;

	n = (size_t)snprintf(args, sizeof(args), "FROM:<a@b>");
	for (int i = 0; i < SMTP_PARAMS_MAX; i++)
		n += (size_t)snprintf(args + n, sizeof(args) - n, " P%d=%d", i, i);
	mail_ok(args, "FROM:", false, &path);
	assert_int_equal(path.n_params, SMTP_PARAMS_MAX);
	assert_string_equal(path.params[SMTP_PARAMS_MAX - 1].key, "P7");
	assert_string_equal(path.params[SMTP_PARAMS_MAX - 1].value, "7");

	snprintf(args + n, sizeof(args) - n, " ONE-MORE");
	mail_err_s(args, "FROM:", "too many");
}

static void test_8bit(void **state)
{
	mail_err_s("FROM:<j\xc3\xb6rg@example.com>", "FROM:", "8-bit");
	mail_err_s("FROM:<a@b\xc3\xa9.example>", "FROM:", "8-bit");
	mail_err_s("FROM:<\"\xc3\xa9\"@b.example>", "FROM:", "8-bit");
	mail_err_s("FROM:<a@b> ENVID=\xff", "FROM:", "8-bit");
	mail_err_s("FROM:<a@b>\x80", "FROM:", "8-bit");
}

static void test_nul_in_args(void **state)
{
	mail_err("TO:<a\0b@c>", 10, "TO:", false, NULL);
	mail_err("TO:<a@c\0d>", 10, "TO:", false, NULL);
	mail_err("TO:<a@c> K=\0", 12, "TO:", false, NULL);
	mail_err("TO:<a@c>\0", 9, "TO:", false, NULL);
}

static void test_trailing_junk(void **state)
{
	mail_err_s("FROM:<a@b>x", "FROM:", NULL);
	mail_err_s("FROM:<a@b>>", "FROM:", NULL);
	mail_err_s("FROM:<a@b><c@d>", "FROM:", NULL);
	mail_err_s("FROM:<>x", "FROM:", NULL);
	mail_err_s("FROM:<a@b>,", "FROM:", NULL);
	mail_err_s("FROM:<a@b>\tSIZE=1", "FROM:", NULL);
}

static void test_lengths(void **state)
{
	char local[80], domain[300], args[700];
	struct smtp_path path;

	/* local part: 64 fine, 65 refused */
	memset(local, 'l', 64);
	local[64] = '\0';
	snprintf(args, sizeof(args), "TO:<%s@b.example>", local);
	mail_ok(args, "TO:", false, &path);
	assert_string_equal(path.local, local);
	snprintf(args, sizeof(args), "TO:<%sl@b.example>", local);
	mail_err_s(args, "TO:", "local part too long");
	/* quoted: the quotes count (a space keeps the quotes needed) */
	memset(local + 1, 'q', 62);
	local[1] = ' ';
	local[0] = '"';
	local[63] = '"';
	local[64] = '\0';
	snprintf(args, sizeof(args), "TO:<%s@b.example>", local);
	mail_ok(args, "TO:", false, &path);
	assert_string_equal(path.local, local);
	snprintf(args, sizeof(args), "TO:<\"q%s@b.example>", local + 1);
	mail_err_s(args, "TO:", "local part too long");

	/* label: 63 fine, 64 refused */
	memset(domain, 'D', 63);
	strcpy(domain + 63, ".example");
	snprintf(args, sizeof(args), "TO:<a@%s>", domain);
	mail_ok(args, "TO:", false, &path);
	assert_int_equal(strlen(path.domain), 63 + 8);
	assert_int_equal(path.domain[0], 'd');
	memset(domain, 'd', 64);
	strcpy(domain + 64, ".example");
	snprintf(args, sizeof(args), "TO:<a@%s>", domain);
	mail_err_s(args, "TO:", "label too long");

	/* domain: 255 fine as far as the domain goes (the path is then too
	 * long), 256 refused as a domain */
	for (int i = 0; i < 4; i++) {
		memset(domain + i * 64, 'a' + i, 63);
		domain[i * 64 + 63] = '.';
	}
	domain[255] = '\0'; /* 4 labels of 63, 3 dots */
	assert_int_equal(strlen(domain), 255);
	snprintf(args, sizeof(args), "TO:<a@%s>", domain);
	mail_err_s(args, "TO:", "path too long");
	domain[254] = '.';
	domain[255] = 'x';
	domain[256] = '\0'; /* 62-char last label + ".x": 256 */
	snprintf(args, sizeof(args), "TO:<a@%s>", domain);
	mail_err_s(args, "TO:", "domain too long");

	/* whole path: 256 with the brackets fine, 257 refused */
	for (int i = 0; i < 3; i++) {
		memset(domain + i * 64, 'a' + i, 63);
		domain[i * 64 + 63] = '.';
	}
	domain[191] = '\0'; /* 3 labels of 63: 191 */
	memset(local, 'l', 62);
	local[62] = '\0';
	snprintf(args, sizeof(args), "TO:<%s@%s>", local, domain);
	assert_int_equal(strlen(args) - 3, 256);
	mail_ok(args, "TO:", false, &path);
	snprintf(args, sizeof(args), "TO:<%sl@%s>", local, domain);
	mail_err_s(args, "TO:", "path too long");
}

static void test_routing_chars(void **state)
{
	struct smtp_path path;

	mail_ok("TO:<user%host@example.com>", "TO:", false, &path);
	assert_string_equal(path.local, "user%host");
	assert_false(smtp_path_is_simple_local(&path));

	mail_ok("TO:<host!user@example.com>", "TO:", false, &path);
	assert_string_equal(path.local, "host!user");
	assert_false(smtp_path_is_simple_local(&path));

	mail_ok("TO:<\"a@b\"@example.com>", "TO:", false, &path);
	assert_false(smtp_path_is_simple_local(&path));

	mail_ok("TO:<first.last@example.com>", "TO:", false, &path);
	assert_true(smtp_path_is_simple_local(&path));

	/* hand-filled structs: the helper checks the local part itself */
	memset(&path, 0, sizeof(path));
	strcpy(path.local, "a");
	strcpy(path.domain, "b");
	assert_true(smtp_path_is_simple_local(&path));
	static const char *const not_simple[] = {
		"", "a@b", "a\"b", "a\\b", ".a", "a.", "a..b", "a b", "a%b", "a!b",
	};
	for (size_t i = 0; i < N_ELEMENTS(not_simple); i++) {
		strcpy(path.local, not_simple[i]);
		if (smtp_path_is_simple_local(&path))
			fail_msg("\"%s\" is not a simple local part", not_simple[i]);
	}
	strcpy(path.local, "a");
	path.domain[0] = '\0';
	assert_false(smtp_path_is_simple_local(&path));
	strcpy(path.domain, "b");
	path.quoted_local = true;
	assert_false(smtp_path_is_simple_local(&path));
	path.quoted_local = false;
	path.address_literal = true;
	assert_false(smtp_path_is_simple_local(&path));
	path.address_literal = false;
	path.null = true;
	assert_false(smtp_path_is_simple_local(&path));
}

static void test_path_format(void **state)
{
	struct smtp_path path;
	char buf[64];

	mail_ok("FROM:<Ab@EXAMPLE.Com>", "FROM:", false, &path);
	smtp_path_format(&path, buf, sizeof(buf));
	assert_string_equal(buf, "Ab@example.com");

	/* truncation always terminates and never writes past outsz */
	memset(buf, 'Z', sizeof(buf));
	smtp_path_format(&path, buf, 5);
	assert_string_equal(buf, "Ab@e");
	assert_int_equal(buf[5], 'Z');
	memset(buf, 'Z', sizeof(buf));
	smtp_path_format(&path, buf, 3);
	assert_string_equal(buf, "Ab");
	memset(buf, 'Z', sizeof(buf));
	smtp_path_format(&path, buf, 1);
	assert_int_equal(buf[0], '\0');
	assert_int_equal(buf[1], 'Z');
	memset(buf, 'Z', sizeof(buf));
	smtp_path_format(&path, buf, 0);
	assert_int_equal(buf[0], 'Z');

	/* domain is lower-cased even in a hand-filled struct */
	memset(&path, 0, sizeof(path));
	strcpy(path.local, "X");
	strcpy(path.domain, "MiXeD.Example");
	smtp_path_format(&path, buf, sizeof(buf));
	assert_string_equal(buf, "X@mixed.example");
}

static void test_helo(void **state)
{
	const char *error;
	char name[300];

	static const char *const good[] = {
		"mail.example.com", "[192.0.2.1]", "x", "  padded.example  ",
		"[IPv6:2001:db8::1]", "under_score.example", "!#~",
	};
	for (size_t i = 0; i < N_ELEMENTS(good); i++) {
		error = "untouched";
		if (smtp_parse_helo(good[i], strlen(good[i]), &error) != 0)
			fail_msg("HELO \"%s\" refused: %s", good[i], error);
	}

	static const char *const bad[] = {
		"", "   ", "a b", "a\tb", "a\x01", "caf\xc3\xa9", "a\x7f",
		"two  names",
	};
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		error = NULL;
		if (smtp_parse_helo(bad[i], strlen(bad[i]), &error) != -1)
			fail_msg("HELO \"%s\" accepted", bad[i]);
		assert_non_null(error);
	}
	/* the error says what is wrong with the name, without the verb (the
	 * session adds "Syntax: HELO hostname" only when there is none) */
	assert_int_equal(smtp_parse_helo("", 0, &error), -1);
	assert_string_equal(error, "Missing hostname");
	assert_int_equal(smtp_parse_helo("a b", 3, &error), -1);
	assert_null(strstr(error, "HELO"));
	error = NULL;
	assert_int_equal(smtp_parse_helo("a\0b", 3, &error), -1);
	assert_non_null(error);

	memset(name, 'h', 255);
	name[255] = '\0';
	assert_int_equal(smtp_parse_helo(name, 255, &error), 0);
	name[255] = 'h';
	name[256] = '\0';
	error = NULL;
	assert_int_equal(smtp_parse_helo(name, 256, &error), -1);
	assert_non_null(error);
}

/* ----------------------------------------------------------- strings */

static void test_str_lower(void **state)
{
	char s[] = "HeLLo-World_09 \xc3\x89\xff[Z]@";

	str_lower(s);
	assert_string_equal(s, "hello-world_09 \xc3\x89\xff[z]@");
	char empty[] = "";
	str_lower(empty);
	assert_string_equal(empty, "");
}

static void test_str_copy(void **state)
{
	char buf[8];

	memset(buf, 'Z', sizeof(buf));
	assert_int_equal(str_copy(buf, "abc", sizeof(buf)), 3);
	assert_string_equal(buf, "abc");

	memset(buf, 'Z', sizeof(buf));
	assert_int_equal(str_copy(buf, "abcdefg", sizeof(buf)), 7);
	assert_string_equal(buf, "abcdefg");

	memset(buf, 'Z', sizeof(buf));
	assert_int_equal(str_copy(buf, "abcdefghij", sizeof(buf)), 10);
	assert_string_equal(buf, "abcdefg");

	memset(buf, 'Z', sizeof(buf));
	assert_int_equal(str_copy(buf, "abcdef", 3), 6);
	assert_string_equal(buf, "ab");
	assert_int_equal(buf[3], 'Z');

	memset(buf, 'Z', sizeof(buf));
	assert_int_equal(str_copy(buf, "abc", 1), 3);
	assert_int_equal(buf[0], '\0');
	assert_int_equal(buf[1], 'Z');

	memset(buf, 'Z', sizeof(buf));
	assert_int_equal(str_copy(buf, "abc", 0), 3);
	assert_int_equal(buf[0], 'Z');

	assert_int_equal(str_copy(buf, "", sizeof(buf)), 0);
	assert_string_equal(buf, "");
}

/* Replies an upstream sends the relay. */
static void test_reply_feed(void **state)
{
	struct smtp_reply r;
	const char *text;

	(void)state;
	smtp_reply_reset(&r);
	assert_int_equal(smtp_reply_feed(&r, "250-up.test Hello", 17, &text), SMTP_REPLY_MORE);
	assert_string_equal(text, "up.test Hello");
	assert_int_equal(smtp_reply_feed(&r, "250-SIZE 1000", 13, &text), SMTP_REPLY_MORE);
	assert_string_equal(text, "SIZE 1000");
	assert_int_equal(smtp_reply_feed(&r, "250 8BITMIME", 12, &text), SMTP_REPLY_DONE);
	assert_int_equal(r.code, 250);
	assert_int_equal(r.lines, 3);
	assert_string_equal(r.enhanced, "");
	assert_string_equal(r.text, "up.test Hello");

	smtp_reply_reset(&r);
	assert_int_equal(smtp_reply_feed(&r, "550 5.1.1 <x@y>: unknown", 24, &text), SMTP_REPLY_DONE);
	assert_string_equal(r.enhanced, "5.1.1");
	assert_string_equal(r.text, "<x@y>: unknown");
	/* an enhanced code of another class is text */
	smtp_reply_reset(&r);
	assert_int_equal(smtp_reply_feed(&r, "250 5.1.1 odd", 13, &text), SMTP_REPLY_DONE);
	assert_string_equal(r.enhanced, "");
	assert_string_equal(r.text, "5.1.1 odd");
	/* bare code */
	smtp_reply_reset(&r);
	assert_int_equal(smtp_reply_feed(&r, "354", 3, &text), SMTP_REPLY_DONE);
	assert_int_equal(r.code, 354);
	/* controls in the text never reach our reply */
	smtp_reply_reset(&r);
	assert_int_equal(smtp_reply_feed(&r, "451 4.3.0 a\rb\x01" "c\xff", 16, &text), SMTP_REPLY_DONE);
	assert_string_equal(r.text, "a?b?c?");
	/* malformed: no code, a changed code, a wrong separator, too many lines */
	smtp_reply_reset(&r);
	assert_int_equal(smtp_reply_feed(&r, "hello", 5, &text), SMTP_REPLY_BAD);
	assert_int_equal(smtp_reply_feed(&r, "25", 2, &text), SMTP_REPLY_BAD);
	assert_int_equal(smtp_reply_feed(&r, "250x", 4, &text), SMTP_REPLY_BAD);
	assert_int_equal(smtp_reply_feed(&r, "650 no", 6, &text), SMTP_REPLY_BAD);
	smtp_reply_reset(&r);
	assert_int_equal(smtp_reply_feed(&r, "250-a", 5, &text), SMTP_REPLY_MORE);
	assert_int_equal(smtp_reply_feed(&r, "251 b", 5, &text), SMTP_REPLY_BAD);
	smtp_reply_reset(&r);
	for (int i = 0; i < SMTP_REPLY_LINES_MAX; i++)
		assert_int_equal(smtp_reply_feed(&r, "250-x", 5, &text), SMTP_REPLY_MORE);
	assert_int_equal(smtp_reply_feed(&r, "250 x", 5, &text), SMTP_REPLY_BAD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_verb_any_case),
		cmocka_unit_test(test_unknown_verbs),
		cmocka_unit_test(test_command_args),
		cmocka_unit_test(test_command_bad_lines),
		cmocka_unit_test(test_mail_valid),
		cmocka_unit_test(test_null_path),
		cmocka_unit_test(test_quoted_local),
		cmocka_unit_test(test_address_literals),
		cmocka_unit_test(test_missing_brackets),
		cmocka_unit_test(test_source_routes),
		cmocka_unit_test(test_no_domain),
		cmocka_unit_test(test_bad_local_parts),
		cmocka_unit_test(test_bad_domains),
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_too_many_params),
		cmocka_unit_test(test_8bit),
		cmocka_unit_test(test_nul_in_args),
		cmocka_unit_test(test_trailing_junk),
		cmocka_unit_test(test_lengths),
		cmocka_unit_test(test_routing_chars),
		cmocka_unit_test(test_path_format),
		cmocka_unit_test(test_helo),
		cmocka_unit_test(test_str_lower),
		cmocka_unit_test(test_str_copy),
		cmocka_unit_test(test_reply_feed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
