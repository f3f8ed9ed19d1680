/*
 * fuzz_smtp_command.c — libFuzzer target for lib/smtp_parse.c.
 *
 * One input is tried as a whole command line, then its argument part (or
 * the raw input when the line was refused) as MAIL FROM and RCPT TO
 * arguments and as a HELO argument. Beyond "no crash, no out-of-bounds
 * access" (ASan/UBSan do that) it checks what the callers rely on: args
 * lie inside the line, refusals come with a reason, accepted paths obey
 * every length and character limit, and an accepted path formatted back
 * into "<local@domain>" parses to the same thing (so whatever we log or
 * hand to the backend means what the client sent).
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/lib.h"
#include "tests/fuzz/fuzz.h"

static bool has_byte_ge(const char *s, size_t len, unsigned char min)
{
	for (size_t i = 0; i < len; i++) {
		if ((unsigned char)s[i] >= min)
			return true;
	}
	return false;
}

static void check_command(const char *line, size_t len,
			  struct smtp_command *cmd, int ret)
{
	size_t verb_len = 0;

	if (ret < 0) {
		CHECK(len == 0 || memchr(line, '\0', len) != NULL ||
		      memchr(line, '\r', len) != NULL ||
		      memchr(line, '\n', len) != NULL);
		return;
	}
	CHECK(ret == 0);
	CHECK(len > 0);
	CHECK(memchr(line, '\0', len) == NULL);
	CHECK(memchr(line, '\r', len) == NULL);
	CHECK(memchr(line, '\n', len) == NULL);
	CHECK((unsigned)cmd->verb < SMTP_VERB_COUNT);
	CHECK(cmd->args >= line && cmd->args <= line + len);
	CHECK(cmd->args_len <= (size_t)(line + len - cmd->args));
	if (cmd->args_len > 0) {
		CHECK(cmd->args[0] != ' ');
		CHECK(cmd->args[cmd->args_len - 1] != ' ');
	}

	/* the verb agrees with a plain comparison against the names */
	while (verb_len < len && line[verb_len] != ' ')
		verb_len++;
	if (cmd->verb == SMTP_VERB_UNKNOWN) {
		for (int v = 1; v < SMTP_VERB_COUNT; v++) {
			const char *name = smtp_verb_name((enum smtp_verb)v);

			CHECK(!(strlen(name) == verb_len &&
				strncasecmp(name, line, verb_len) == 0));
		}
	} else {
		const char *name = smtp_verb_name(cmd->verb);

		CHECK(strlen(name) == verb_len);
		CHECK(strncasecmp(name, line, verb_len) == 0);
	}
}

static void check_format(const struct smtp_path *path)
{
	char full[SMTP_PATH_MAX + 8], small[9];

	smtp_path_format(path, full, sizeof(full));
	CHECK(strlen(full) < sizeof(full));
	if (path->null)
		CHECK(full[0] == '\0');
	for (size_t sz = 1; sz <= sizeof(small); sz++) {
		memset(small, 'Z', sizeof(small));
		smtp_path_format(path, small, sz);
		CHECK(memchr(small, '\0', sz) != NULL);
		CHECK(strncmp(small, full, strlen(small)) == 0);
		for (size_t k = sz; k < sizeof(small); k++)
			CHECK(small[k] == 'Z');
	}
}

/* Re-serialise an accepted path with its parameters and parse it again. */
static void check_round_trip(const struct smtp_path *path, const char *prefix,
			     bool allow_null)
{
	char buf[SMTP_PATH_MAX + 8 + SMTP_PARAMS_MAX * 162];
	struct smtp_path again;
	const char *error = NULL;
	size_t n;

	n = (size_t)snprintf(buf, sizeof(buf), "%s<", prefix);
	smtp_path_format(path, buf + n, sizeof(buf) - n);
	n += strlen(buf + n);
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, ">");
	for (size_t i = 0; i < path->n_params; i++) {
		const struct smtp_param *p = &path->params[i];

		n += (size_t)snprintf(buf + n, sizeof(buf) - n, " %s%s%s", p->key,
				      p->has_value ? "=" : "",
				      p->has_value ? p->value : "");
	}
	CHECK(n < sizeof(buf));
	if (smtp_parse_mail_args(buf, n, prefix, allow_null, &again, &error) != 0) {
		fprintf(stderr, "re-parse of \"%s\" failed: %s\n", buf, error);
		abort();
	}
	CHECK(again.null == path->null);
	CHECK(again.quoted_local == path->quoted_local);
	CHECK(again.address_literal == path->address_literal);
	CHECK(strcmp(again.local, path->local) == 0);
	CHECK(strcmp(again.domain, path->domain) == 0);
	CHECK(again.n_params == path->n_params);
	for (size_t i = 0; i < path->n_params; i++) {
		CHECK(strcmp(again.params[i].key, path->params[i].key) == 0);
		CHECK(strcmp(again.params[i].value, path->params[i].value) == 0);
		CHECK(again.params[i].has_value == path->params[i].has_value);
	}
}

static void check_mail(const char *args, size_t len, const char *prefix,
		       bool allow_null)
{
	struct smtp_path path;
	const char *error = NULL;
	int ret;

	ret = smtp_parse_mail_args(args, len, prefix, allow_null, &path, &error);
	if (ret != 0) {
		CHECK(ret == -1);
		CHECK(error != NULL && error[0] != '\0');
		return;
	}
	CHECK(!has_byte_ge(args, len, 0x80));
	CHECK(len >= strlen(prefix) && strncasecmp(args, prefix, strlen(prefix)) == 0);
	CHECK(path.n_params <= SMTP_PARAMS_MAX);
	CHECK(strnlen(path.local, sizeof(path.local)) <= SMTP_LOCAL_MAX);
	CHECK(strnlen(path.domain, sizeof(path.domain)) <= SMTP_DOMAIN_MAX);
	if (path.null) {
		CHECK(allow_null);
		CHECK(path.local[0] == '\0' && path.domain[0] == '\0');
		CHECK(!smtp_path_is_simple_local(&path));
	} else {
		size_t llen = strlen(path.local), dlen = strlen(path.domain);

		CHECK(llen > 0 && dlen > 0);
		CHECK(llen + dlen + 3 <= SMTP_PATH_MAX);
		CHECK(!has_byte_ge(path.local, llen, 0x7f));
		for (size_t i = 0; i < dlen; i++)
			CHECK(!(path.domain[i] >= 'A' && path.domain[i] <= 'Z') ||
			      (path.address_literal && i >= 1 && i <= 4));
		CHECK(path.quoted_local == (path.local[0] == '"'));
		CHECK(path.address_literal == (path.domain[0] == '['));
		if (smtp_path_is_simple_local(&path)) {
			CHECK(!path.quoted_local && !path.address_literal);
			CHECK(strpbrk(path.local, "%!@\"\\ ") == NULL);
			CHECK(path.local[0] != '.' && path.local[llen - 1] != '.');
			CHECK(strstr(path.local, "..") == NULL);
		}
	}
	for (size_t i = 0; i < path.n_params; i++) {
		const struct smtp_param *p = &path.params[i];
		size_t klen = strnlen(p->key, sizeof(p->key));

		CHECK(klen > 0 && klen < sizeof(p->key));
		CHECK(strnlen(p->value, sizeof(p->value)) < sizeof(p->value));
		for (size_t k = 0; k < klen; k++)
			CHECK(!(p->key[k] >= 'a' && p->key[k] <= 'z'));
		CHECK(p->has_value == (p->value[0] != '\0'));
		CHECK(strchr(p->value, '=') == NULL);
	}
	check_format(&path);
	check_round_trip(&path, prefix, allow_null);
}

static void check_helo(const char *args, size_t len)
{
	const char *error = NULL;
	size_t start = 0, end = len;

	if (smtp_parse_helo(args, len, &error) != 0) {
		CHECK(error != NULL && error[0] != '\0');
		return;
	}
	while (start < end && args[start] == ' ')
		start++;
	while (end > start && args[end - 1] == ' ')
		end--;
	CHECK(end > start && end - start <= SMTP_DOMAIN_MAX);
	for (size_t i = start; i < end; i++)
		CHECK((unsigned char)args[i] >= 33 && (unsigned char)args[i] <= 126);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;
	struct smtp_command cmd;
	int ret;

	ret = smtp_parse_command(line, size, &cmd);
	check_command(line, size, &cmd, ret);
	if (ret == 0) {
		check_mail(cmd.args, cmd.args_len, "FROM:", true);
		check_mail(cmd.args, cmd.args_len, "TO:", false);
		check_helo(cmd.args, cmd.args_len);
	}
	check_mail(line, size, "FROM:", true);
	check_mail(line, size, "TO:", false);
	check_helo(line, size);
	return 0;
}
