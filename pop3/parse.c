/*
 * parse.c — the pure parts of the POP3 service: command words and
 * numbers, base64 and SASL PLAIN, and the converter that turns a stored
 * message into what RETR and TOP send (CRLF line ends, dot-stuffing).
 * No I/O, no globals: unit tests and the fuzz target call these directly.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pop3/pop3.h"

static const char *const pop3_verbs[POP3_CMD_COUNT] = {
	[POP3_CMD_USER] = "USER", [POP3_CMD_PASS] = "PASS", [POP3_CMD_APOP] = "APOP",
	[POP3_CMD_AUTH] = "AUTH", [POP3_CMD_STLS] = "STLS", [POP3_CMD_CAPA] = "CAPA",
	[POP3_CMD_STAT] = "STAT", [POP3_CMD_LIST] = "LIST", [POP3_CMD_RETR] = "RETR",
	[POP3_CMD_DELE] = "DELE", [POP3_CMD_NOOP] = "NOOP", [POP3_CMD_RSET] = "RSET",
	[POP3_CMD_QUIT] = "QUIT", [POP3_CMD_TOP] = "TOP", [POP3_CMD_UIDL] = "UIDL",
};

enum pop3_verb pop3_parse_verb(const char *line, size_t len, const char **args_r)
{
	size_t k = 0;

	*args_r = "";
	while (k < len && line[k] != ' ')
		k++;
	if (k == 0 || k > 4)
		return POP3_CMD_UNKNOWN;
	for (int v = 1; v < POP3_CMD_COUNT; v++) {
		if (strlen(pop3_verbs[v]) == k && strncasecmp(line, pop3_verbs[v], k) == 0) {
			*args_r = k < len ? line + k + 1 : line + k;
			return (enum pop3_verb)v;
		}
	}
	return POP3_CMD_UNKNOWN;
}

bool pop3_parse_number(const char *s, size_t len, bool allow_zero, unsigned long *n_r)
{
	unsigned long n = 0;

	if (len == 0 || len > 9)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		n = n * 10 + (unsigned long)(s[i] - '0');
	}
	if (n == 0 && !allow_zero)
		return false;
	*n_r = n;
	return true;
}

int pop3_split_args(const char *args, char **buf_r, const char **words, int max)
{
	char *buf = xstrdup(args), *p = buf;
	int n = 0;

	*buf_r = buf;
	if (*p == '\0')
		return 0;
	for (;;) {
		char *sp = strchr(p, ' ');
		if (n >= max || p[0] == '\0' || p == sp)
			return -1;
		words[n++] = p;
		if (sp == NULL)
			return n;
		*sp = '\0';
		p = sp + 1;
	}
}

/* ---------------------------------------------------------- converter */

void pop3_stuff_init(struct pop3_stuff *st, bool top, unsigned long body_lines)
{
	memset(st, 0, sizeof(*st));
	st->top = top;
	st->body_lines = body_lines;
	if (top && body_lines == 0)
		st->body_lines = 0;
}

size_t pop3_stuff_feed(struct pop3_stuff *st, const char *in, size_t len, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < len && !st->done; i++) {
		char c = in[i];

		if (!st->mid_line) {
			if (st->top && st->in_body && st->body_lines == 0) {
				st->done = true;
				break;
			}
			if (c == '.')
				out[o++] = '.';
			st->mid_line = true;
		}
		if (c == '\n') {
			bool empty = st->line_len == 0 || (st->line_len == 1 && st->prev_cr);
			if (!st->prev_cr)
				out[o++] = '\r';
			out[o++] = '\n';
			st->mid_line = false;
			st->line_len = 0;
			st->prev_cr = false;
			if (!st->in_body) {
				if (empty)
					st->in_body = true;
			} else if (st->top && st->body_lines > 0) {
				st->body_lines--;
			}
			continue;
		}
		out[o++] = c;
		st->line_len++;
		st->prev_cr = c == '\r';
	}
	if (!st->mid_line && st->top && st->in_body && st->body_lines == 0)
		st->done = true;
	return o;
}

size_t pop3_stuff_end(struct pop3_stuff *st, char *out)
{
	size_t o = 0;

	if (st->mid_line) {
		/* the last line had no line end of its own */
		if (!st->prev_cr)
			out[o++] = '\r';
		out[o++] = '\n';
		st->mid_line = false;
	}
	out[o++] = '.';
	out[o++] = '\r';
	out[o++] = '\n';
	return o;
}
