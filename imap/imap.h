/*
 * imap.h — the IMAP4rev1 service (RFC 3501) with the extensions real
 * clients rely on (IDLE, UIDPLUS, MOVE, NAMESPACE, ID, ENABLE, LITERAL+,
 * SPECIAL-USE, CHILDREN, UNSELECT, SASL-IR), over the Maildir store
 * (mailbox/).
 *
 * session.c is the service on the daemon core's connection layer: command
 * lines and their literals assembled under caps, a command table with
 * the states each command is allowed in, and every step that touches the
 * file system (login, SELECT, FETCH, STORE, SEARCH, COPY, APPEND, the
 * folder commands, the refresh that reports other sessions' changes) as a
 * job on the worker pool. parse.c holds the pure parsers (tags, atoms,
 * strings and literals, sequence sets, flag lists, the FETCH attribute
 * and SEARCH key syntax, dates), unit-tested and fuzzed. mime.h is the
 * message side (ENVELOPE, BODYSTRUCTURE, sections, content SEARCH), from
 * GMime. settings.c is the `imap { }` section.
 *
 * The program (proxy/) hands the service what it needs of the shared
 * state through struct imap_env at accept, like POP3's.
 */
#ifndef MXGUARD_IMAP_H
#define MXGUARD_IMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "lib/lib.h"
#include "imap/mime.h"

struct conn;
struct userdb;
struct ssl_ctx_st;

/* ------------------------------------------------------------ settings */
/* in the order of the plaintext_auth choices (POP3's) */
enum imap_plaintext { IMAP_PLAINTEXT_TLS_ONLY, IMAP_PLAINTEXT_LOOPBACK, IMAP_PLAINTEXT_ALWAYS };

struct imap_settings {
	int plaintext_auth;        /* enum imap_plaintext */
	long timeout_login;        /* seconds before login */
	long timeout_idle;         /* seconds after login, >= 1800 (RFC 3501 5.4) */
	long command_line_max;     /* one line of a command, octets incl. CRLF */
	long command_max;          /* a whole command with its literals (not APPEND's message) */
	long append_max;           /* an APPEND message literal */
	long bad_commands_max;     /* before the session is closed */
	long auth_failure_delay;   /* milliseconds before a failure is answered */
	long auth_failures_max;    /* per client address, and per user, in a window */
	long auth_failure_window;  /* seconds */
};

void imap_register_config(void);
const struct imap_settings *imap_settings(const struct mx_config *cfg);

/* ------------------------------------------------------------- service */
/*
 * Optional: a message the user copied or moved into the junk folder
 * (to_junk) or out of it, with its octets as stored; called on the worker
 * pool right after the copy (blocking allowed), with the config the
 * session was accepted with. The program learns from it (proxy/state.c:
 * the bayes stage, doc/learning.md); the junk log records the move either
 * way.
 */
typedef void imap_junk_moved_fn(const struct mx_config *cfg, const char *user, const char *data,
				size_t len, bool to_junk);

struct imap_env {
	const struct mx_config *cfg;
	struct userdb *userdb;
	struct ssl_ctx_st *ssl_ctx; /* NULL: no STARTTLS, no implicit TLS */
	imap_junk_moved_fn *junk_moved; /* NULL: nothing learns from moves */
};

void imap_session_start(struct conn *conn, const char *refusal, const struct imap_env *env);

/* ------------------------------------------------------ parse.c (pure) */
/*
 * A command as the session assembled it: its lines joined with CRLF, each
 * literal's octets right after the "{N}" (or "{N+}") CRLF that announced
 * it, no final CRLF. The parser walks it; every function returns false
 * with ps->error set on a syntax error (nothing is consumed then).
 */
struct imap_parser {
	const char *p, *end;
	const char *error;
	unsigned depth; /* of parenthesised lists, bounded */
};
#define IMAP_PARSE_DEPTH_MAX 32
#define IMAP_SEARCH_KEYS_MAX 1024
#define IMAP_TAG_MAX 64

void imap_parser_init(struct imap_parser *ps, const char *buf, size_t len);
bool imap_parse_at_end(const struct imap_parser *ps);
bool imap_parse_end(struct imap_parser *ps);  /* at end, else error */
bool imap_parse_sp(struct imap_parser *ps);
/* tag: ASTRING-CHARs but "+", 1..IMAP_TAG_MAX */
bool imap_parse_tag(struct imap_parser *ps, char **tag_r);
/* an atom (ATOM-CHARs), malloc'd */
bool imap_parse_atom(struct imap_parser *ps, char **atom_r);
/* astring: atom (ASTRING-CHARs, "]" included), quoted or literal;
 * malloc'd, NUL-terminated, *len_r its length (a literal may hold NUL:
 * callers that need a C string refuse len != strlen) */
bool imap_parse_astring(struct imap_parser *ps, char **s_r, size_t *len_r);
/* string: quoted or literal (APPEND's message, SEARCH values) */
bool imap_parse_string(struct imap_parser *ps, char **s_r, size_t *len_r);
/* a literal's octets without copying (APPEND): pointers into the buffer */
bool imap_parse_literal_ref(struct imap_parser *ps, const char **data_r, size_t *len_r);
bool imap_parse_number(struct imap_parser *ps, uint64_t max, uint64_t *n_r);
bool imap_parse_peek(const struct imap_parser *ps, char c);

/*
 * Does a command line end with a literal announcement "{N}" or "{N+}"?
 * (Only a line's end can: a literal is followed by CRLF.)
 */
bool imap_line_literal(const char *line, size_t len, uint64_t *n_r, bool *nonsync_r);

/* Sequence sets: ranges with 0 standing for "*". */
struct imap_range {
	uint32_t lo, hi;
};
struct imap_seqset {
	struct imap_range *r;
	size_t n;
};
#define IMAP_SEQSET_MAX 100000
bool imap_parse_seqset(struct imap_parser *ps, struct imap_seqset *set);
void imap_seqset_clear(struct imap_seqset *set);
/* Does set contain v, with "*" meaning star? (a range a:b is b:a too) */
bool imap_seqset_contains(const struct imap_seqset *set, uint32_t v, uint32_t star);

/* Flags: the system flags' letters and keywords (atoms). */
struct imap_flags {
	char letters[8];        /* of \Seen \Answered \Flagged \Deleted \Draft: S R F T D */
	bool recent;            /* \Recent named (ignored in STORE) */
	char **keywords;
	size_t n_keywords;
};
#define IMAP_KEYWORDS_MAX 64
/* a flag list "(\Seen kw)" or, when bare_ok, flags separated by spaces
 * up to the end (STORE's form without parentheses) */
bool imap_parse_flags(struct imap_parser *ps, bool bare_ok, struct imap_flags *f);
void imap_flags_clear(struct imap_flags *f);
/* The system flag a letter stands for ("\\Seen"), NULL for others. */
const char *imap_flag_name(char letter);

/* Dates. */
/* date (SEARCH): "1-Feb-1994", quoted or not: days since 1970-01-01 */
bool imap_parse_date(struct imap_parser *ps, long *day_r);
/* date-time (APPEND): "dd-Mon-yyyy hh:mm:ss +zzzz" */
bool imap_parse_datetime(struct imap_parser *ps, time_t *t_r);
/* INTERNALDATE's form, into out (at least 32 octets) */
void imap_format_datetime(time_t t, char *out, size_t outsz);

/* FETCH attributes */
enum imap_fetch_kind {
	IMAP_FETCH_FLAGS, IMAP_FETCH_UID, IMAP_FETCH_INTERNALDATE, IMAP_FETCH_RFC822_SIZE,
	IMAP_FETCH_ENVELOPE, IMAP_FETCH_BODY, IMAP_FETCH_BODYSTRUCTURE,
	IMAP_FETCH_RFC822, IMAP_FETCH_RFC822_HEADER, IMAP_FETCH_RFC822_TEXT,
	IMAP_FETCH_SECTION, /* BODY[...] and BODY.PEEK[...] */
};
struct imap_fetch_item {
	enum imap_fetch_kind kind;
	bool peek;
	struct imap_section sec;
	bool partial;
	uint32_t partial_off, partial_len;
	char *name; /* how the response names it: "BODY[1.HEADER]<0>" */
};
struct imap_fetch {
	struct imap_fetch_item *items;
	size_t n;
};
#define IMAP_FETCH_ITEMS_MAX 64
/* "ALL" | "FULL" | "FAST" | att | "(" att *(SP att) ")" */
bool imap_parse_fetch(struct imap_parser *ps, struct imap_fetch *f);
void imap_fetch_clear(struct imap_fetch *f);

/* SEARCH keys, a tree */
enum imap_search_kind {
	IMAP_SK_ALL, IMAP_SK_AND, IMAP_SK_OR, IMAP_SK_NOT,
	IMAP_SK_SEQSET, IMAP_SK_UID,
	IMAP_SK_FLAG, IMAP_SK_UNFLAG,       /* letter in flag */
	IMAP_SK_KEYWORD, IMAP_SK_UNKEYWORD, /* value */
	IMAP_SK_NEW, IMAP_SK_OLD, IMAP_SK_RECENT,
	IMAP_SK_BEFORE, IMAP_SK_ON, IMAP_SK_SINCE,             /* day */
	IMAP_SK_SENTBEFORE, IMAP_SK_SENTON, IMAP_SK_SENTSINCE, /* day */
	IMAP_SK_LARGER, IMAP_SK_SMALLER,                       /* n */
	IMAP_SK_HEADER, /* field, value (FROM, TO, CC, BCC, SUBJECT, HEADER) */
	IMAP_SK_BODY, IMAP_SK_TEXT, /* value */
};
struct imap_search {
	enum imap_search_kind kind;
	char flag;
	char *field, *value;
	long day;
	uint64_t n;
	struct imap_seqset set;
	struct imap_search *kids; /* AND: the list; OR: two; NOT: one */
	struct imap_search *next;
};
/* the keys up to the end of the command (after an optional CHARSET,
 * which *charset_r returns malloc'd, or NULL) */
bool imap_parse_search(struct imap_parser *ps, char **charset_r, struct imap_search **s_r);
void imap_search_free(struct imap_search **s);
/* Does the tree need the message's content (mime.h)? Its dates? */
bool imap_search_needs_content(const struct imap_search *s);

/* Match a LIST pattern ("*" any, "%" any but the separator ".") */
bool imap_list_match(const char *pattern, const char *name);
/* A quoted string for a reply (escapes \ and "), or a literal when it
 * holds CR, LF, NUL or 8-bit octets; malloc'd. */
char *imap_quote(const char *s, size_t len);


#endif
