/*
 * pop3.h — the POP3 service (RFC 1939, 2449, 2595, 3206, 5034) over the
 * Maildir store's reading side (mailbox/).
 *
 * session.c is the service on the daemon core's connection layer: a
 * command table with the states each verb is allowed in, AUTHORIZATION /
 * TRANSACTION / UPDATE, STLS, and every blocking step (password check,
 * maildrop lock, the mailbox snapshot, reading a message, the flag
 * renames and the unlinks at QUIT) as a job on the worker pool. parse.c
 * holds the pure parts (command words, numbers (base64 and SASL PLAIN are lib/sasl.c's), the
 * CRLF/dot-stuffing converter RETR and TOP send through), so they can be
 * unit-tested and fuzzed; settings.c the `pop3 { }` section. The login
 * throttle is mailbox/throttle.c, shared with IMAP.
 *
 * The program (proxy/) owns the shared state; the service learns what it
 * needs of it through struct pop3_env at accept: the config, the user
 * database and the TLS context, all valid while the connection holds the
 * state it was accepted with.
 */
#ifndef MXGUARD_POP3_H
#define MXGUARD_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/lib.h"

struct conn;
struct userdb;
struct ssl_ctx_st;

/* ------------------------------------------------------------ settings */
/* in the order of the plaintext_auth choices */
enum pop3_plaintext { POP3_PLAINTEXT_TLS_ONLY, POP3_PLAINTEXT_LOOPBACK, POP3_PLAINTEXT_ALWAYS };

struct pop3_settings {
	int plaintext_auth;        /* enum pop3_plaintext */
	long timeout_idle;         /* seconds, >= 600 (RFC 1939's autologout) */
	long command_line_max;     /* octets incl. CRLF */
	long bad_commands_max;     /* before the session is closed */
	long auth_failure_delay;   /* milliseconds before a failure is answered */
	long auth_failures_max;    /* per client address, and per user, in a window */
	long auth_failure_window;  /* seconds */
};

void pop3_register_config(void);
const struct pop3_settings *pop3_settings(const struct mx_config *cfg);

/* ------------------------------------------------------------- service */
struct pop3_env {
	const struct mx_config *cfg;
	struct userdb *userdb;
	struct ssl_ctx_st *ssl_ctx; /* NULL: no STLS, no implicit TLS */
};

/* A new connection on a `protocol = "pop3"` listener (inside TLS already
 * on an implicit-TLS one); the service-table contract of daemon.h. */
void pop3_session_start(struct conn *conn, const char *refusal, const struct pop3_env *env);

/* ------------------------------------------------------ parse.c (pure) */
enum pop3_verb {
	POP3_CMD_UNKNOWN = 0,
	POP3_CMD_USER, POP3_CMD_PASS, POP3_CMD_APOP, POP3_CMD_AUTH, POP3_CMD_STLS, POP3_CMD_CAPA,
	POP3_CMD_STAT, POP3_CMD_LIST, POP3_CMD_RETR, POP3_CMD_DELE, POP3_CMD_NOOP, POP3_CMD_RSET,
	POP3_CMD_QUIT, POP3_CMD_TOP, POP3_CMD_UIDL,
	POP3_CMD_COUNT
};

/* Split a command line (without its line end): the keyword (case-
 * insensitive, 1..4 letters) and *args_r pointing after the one space
 * that follows it ("" when none). */
enum pop3_verb pop3_parse_verb(const char *line, size_t len, const char **args_r);
/* A message number or line count: digits only, no sign, at most 9
 * digits. Returns true and *n_r. allow_zero for TOP's line count. */
bool pop3_parse_number(const char *s, size_t len, bool allow_zero, unsigned long *n_r);
/* Split args at single spaces into at most max words (pointers into a
 * copy the caller frees with the returned buffer); -1 when there are more
 * or a word is empty. */
int pop3_split_args(const char *args, char **buf_r, const char **words, int max);


/*
 * What RETR and TOP send: the file's bytes with every bare LF made CRLF,
 * every line starting with "." stuffed with another, and for TOP only the
 * header, the blank line and `body_lines` lines of the body. Feed the
 * file in chunks; out must hold 2 * len + 2 octets. Returns the octets
 * written; *done_r once TOP has what it wants (the rest is not needed).
 * pop3_stuff_end gives what closes the message (a CRLF when the last
 * line had none, then ".\r\n"; out holds 5).
 */
struct pop3_stuff {
	bool top;              /* TOP: stop after body_lines lines of the body */
	unsigned long body_lines;
	/* state */
	bool mid_line;         /* not at the start of a line */
	bool prev_cr;
	size_t line_len;       /* octets of the current line so far */
	bool in_body;
	bool done;
};
void pop3_stuff_init(struct pop3_stuff *st, bool top, unsigned long body_lines);
size_t pop3_stuff_feed(struct pop3_stuff *st, const char *in, size_t len, char *out);
size_t pop3_stuff_end(struct pop3_stuff *st, char *out);

#endif
