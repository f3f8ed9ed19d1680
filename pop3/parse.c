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

/* ------------------------------------------------------------- base64 */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int pop3_base64_decode(const char *in, size_t len, char **out_r, size_t *len_r)
{
	char *out;
	size_t o = 0;

	*out_r = NULL;
	*len_r = 0;
	if (len % 4 != 0)
		return -1;
	out = xmalloc(len / 4 * 3 + 1);
	for (size_t i = 0; i < len; i += 4) {
		int v[4], pad = 0;
		for (int k = 0; k < 4; k++) {
			unsigned char c = (unsigned char)in[i + k];
			if (c == '=' && i + 4 == len && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0 || (v[k] = b64_value(c)) < 0) {
				free(out);
				return -1;
			}
		}
		unsigned long x = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12) |
				  ((unsigned long)v[2] << 6) | (unsigned long)v[3];
		out[o++] = (char)(x >> 16);
		if (pad < 2)
			out[o++] = (char)((x >> 8) & 0xff);
		if (pad < 1)
			out[o++] = (char)(x & 0xff);
	}
	out[o] = '\0';
	*out_r = out;
	*len_r = o;
	return 0;
}

char *pop3_base64_encode(const char *in, size_t len)
{
	char *out = xmalloc((len + 2) / 3 * 4 + 1);
	size_t o = 0;

	for (size_t i = 0; i < len; i += 3) {
		unsigned long x = (unsigned long)(unsigned char)in[i] << 16;
		if (i + 1 < len)
			x |= (unsigned long)(unsigned char)in[i + 1] << 8;
		if (i + 2 < len)
			x |= (unsigned long)(unsigned char)in[i + 2];
		out[o++] = b64[(x >> 18) & 63];
		out[o++] = b64[(x >> 12) & 63];
		out[o++] = i + 1 < len ? b64[(x >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? b64[x & 63] : '=';
	}
	out[o] = '\0';
	return out;
}

int pop3_sasl_plain(char *buf, size_t len, const char **authz_r, const char **authc_r,
		    const char **pass_r)
{
	char *nul1 = memchr(buf, '\0', len);
	char *nul2;

	if (nul1 == NULL)
		return -1;
	nul2 = memchr(nul1 + 1, '\0', len - (size_t)(nul1 + 1 - buf));
	if (nul2 == NULL || nul2 == nul1 + 1)
		return -1;
	/* the password runs to the end; a NUL inside it is not allowed */
	if (memchr(nul2 + 1, '\0', len - (size_t)(nul2 + 1 - buf)) != NULL)
		return -1;
	*authz_r = buf;
	*authc_r = nul1 + 1;
	*pass_r = nul2 + 1;
	return 0;
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
