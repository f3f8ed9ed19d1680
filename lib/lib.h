/*
 * lib.h — the small runtime every other folder of mxguard uses.
 *
 * Nothing here knows about sessions, stages or mailboxes: allocation wrappers
 * that abort on out-of-memory, logging, the typed settings table and config
 * loader, the worker pool, per-thread handle tables (how asynchronous
 * completions find their owner by id), the SMTP command/path parsers and the
 * DATA reader (pure functions over bytes), TLS contexts and address helpers.
 */
#ifndef MXGUARD_LIB_H
#define MXGUARD_LIB_H

#include <stdarg.h>
#include <stdio.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define ATTR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define ATTR_NORETURN __attribute__((noreturn))
#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------ alloc */
/* All of these abort the process on out-of-memory: callers never see NULL. */
void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *ptr, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) ATTR_PRINTF(1, 2);

/* ---------------------------------------------------------------- logging */
enum log_level { LOG_LEVEL_ERR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

/* Log to stderr when foreground is true, otherwise to syslog(3). */
void log_open(const char *ident, bool foreground, enum log_level level);
/* The syslog facility of later log_open calls (without foreground); the
 * daemon's syslog_facility setting, in this order. */
enum log_facility {
	LOG_FACILITY_MAIL, LOG_FACILITY_DAEMON, LOG_FACILITY_USER, LOG_FACILITY_LOCAL0,
	LOG_FACILITY_LOCAL1, LOG_FACILITY_LOCAL2, LOG_FACILITY_LOCAL3, LOG_FACILITY_LOCAL4,
	LOG_FACILITY_LOCAL5, LOG_FACILITY_LOCAL6, LOG_FACILITY_LOCAL7,
};
void log_set_facility(enum log_facility facility);
void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) ATTR_PRINTF(2, 3);
/* Same, with ": strerror(errno)" appended. */
void log_errno(enum log_level level, const char *fmt, ...) ATTR_PRINTF(2, 3);
int log_level_parse(const char *s, enum log_level *level_r);

/* -------------------------------------------------------------------- ids */
/* A transaction/session id: 16 chars of [0-9A-Z], unique across threads
 * and restarts (time, pid, counter), plus NUL. */
#define MX_ID_LEN 17
void id_new(char out[MX_ID_LEN]);

/* ----------------------------------------------------------------- config */
/*
 * The generic settings machinery. lib/ knows no application setting: each
 * folder owns a settings module — a table of rows (section, name, type,
 * default, bounds, where the value lands in the module's own value struct,
 * one line of doc) and an optional cross-check — and registers it once at
 * start (config_register_module), before any config_load(). A loaded
 * struct mx_config holds one value block per module registered by then;
 * each folder reads its own through a typed accessor built on
 * config_module_values().
 */
struct cfg_t; /* libconfuse */

enum setting_type {
	SETTING_INT,     /* long */
	SETTING_STR,     /* char * (malloc'd, "" when empty) */
	SETTING_BOOL,    /* bool */
	SETTING_FLOAT,   /* double */
	SETTING_STRLIST, /* char ** (NULL-terminated) followed by a size_t count */
	SETTING_CHOICE,  /* int: the index of the value in the row's choices */
};
#define SETTING_F_PATH 0x1u    /* STR: a path, made absolute (relative to the cwd) */
#define SETTING_F_ANYCASE 0x2u /* CHOICE: the words match in any case */

struct setting_def {
	const char *section; /* NULL = top level, else the section's name */
	const char *name;
	enum setting_type type;
	const char *def;     /* default, as text */
	long min, max;       /* bounds for SETTING_INT (0,0 = none) */
	size_t offset;       /* where the value lands in the module's value struct
			      * (in the element struct, for its multi section) */
	unsigned flags;
	const char *doc;     /* one line */
	/* SETTING_CHOICE: the words allowed, NULL-terminated; a value outside
	 * them is an error "name = "v": expected a, b or c" at file:line */
	const char *const *choices;
	/* Optional, for STR and STRLIST rows: called while the value is parsed
	 * (n = 1 for a STR); NULL when it is fine, else a malloc'd message
	 * without file:line, which the loader adds. */
	char *(*valid)(const char *const *values, size_t n);
};

struct mx_config;

/* A repeatable, titled section ("listen NAME { ... }") owned by a module:
 * its rows (those with .section = section) land in an array of elements
 * of `size` bytes, one per section in the file, in file order. */
struct settings_multi {
	const char *section;
	size_t size;          /* of one element */
	size_t array_offset;  /* in the module's struct: the element array (void *,
			       * one spare zeroed element at the end) followed by
			       * a size_t count */
	size_t title_offset;  /* char * in the element: the section's title */
	size_t line_offset;   /* int in the element: the line line_row was set on,
			       * else the line the section ends on */
	const char *line_row;
};

struct settings_module {
	const char *name;                 /* for messages: "daemon", "smtp"... */
	const struct setting_def *rows;
	size_t n_rows;
	size_t size;                      /* of the module's value struct */
	const struct settings_multi *multi; /* may be NULL */
	/* Optional: after every module's values landed, in registration
	 * order. May adjust its own values (lower-case, fill in a default);
	 * cfg->path and config_setting_line() are there for the message.
	 * 0, or -1 with *error_r malloc'd ("file[:line]: message"). */
	int (*check)(void *values, const struct mx_config *cfg, char **error_r);
};

/* Add a module (a pointer to a static table; kept). Registering the same
 * module again does nothing; a row whose section and name another module
 * already has aborts (a programming error). Call at start, before any
 * thread runs and before config_load(). */
void config_register_module(const struct settings_module *m);

struct mx_config {
	int refcount;
	char *path;
	/* the parsed libconfuse tree: stages read their own sections from it */
	struct cfg_t *cfg;
};

/* Parse and validate FILE completely. On error returns -1 and sets *error_r
 * to a malloc'd "file:line: message" (caller frees). */
int config_load(const char *path, struct mx_config **cfg_r, char **error_r);
struct mx_config *config_ref(struct mx_config *cfg);
void config_unref(struct mx_config **cfg);
/* The value block of module m in cfg. m must have been registered before
 * cfg was loaded (aborts otherwise: a program that forgot to register). */
void *config_module_values(const struct mx_config *cfg, const struct settings_module *m);
/* The line of cfg->path a top-level setting (e.g. "tls_cert") was set on;
 * 0 when it was left at its default or is not a top-level setting. */
int config_setting_line(const struct mx_config *cfg, const char *name);

/* Every registered row as `mxguard --settings` lists it: top-level rows
 * first, then section by section (in the order sections first appear),
 * module registration order within each. Returns a malloc'd array of *n_r
 * pointers to the modules' rows (caller frees the array only); module_r,
 * if not NULL, gets a parallel malloc'd array of each row's module. */
const struct setting_def **config_settings(size_t *n_r, const struct settings_module ***module_r);
/* `mxguard --settings`: one line per row, in config_settings() order. */
void config_print_settings(FILE *f);

/* Stages add their own section options before config_load() runs; the
 * filters registry calls this once at start. opts is copied by reference. */
struct cfg_opt_t;
void config_register_section(const char *name, struct cfg_opt_t *opts);

/* --------------------------------------------------------------- workers */
/* A fixed pool of threads for blocking work, in two lanes with their own
 * threads and queues, so that scans can never starve delivery fsyncs:
 *   WORKER_LANE_DELIVERY  Maildir deliveries; unbounded queue (never drops)
 *   WORKER_LANE_SCAN      CPU-heavy stage work (ClamAV, body regexes); its
 *                         queue holds at most scan_queue_max waiting jobs
 * work() runs on a pool thread of the lane; done() (may be NULL) then runs
 * on the event loop `base` that submitted it. Both get `arg`. A job counts
 * in workers_pending() from submit until its done() returned (or its work()
 * returned, without done): the daemon's shutdown waits for 0 while its
 * loops still run. workers_destroy() drains both queues. */
struct event_base;
struct workers;
enum worker_lane { WORKER_LANE_DELIVERY = 0, WORKER_LANE_SCAN, WORKER_LANE_COUNT };
/* n_delivery threads (0 = 1), n_scan threads (0 = as many as delivery),
 * scan_queue_max queued scan jobs (0 = 16 per scan thread). */
struct workers *workers_create(unsigned n_delivery, unsigned n_scan, size_t scan_queue_max);
/* 0, or -1 with errno EAGAIN when the lane's queue is full (only the scan
 * lane is bounded; a delivery submit never fails) or EINVAL for a bad
 * lane. On failure nothing was queued and neither callback will run. */
int workers_submit(struct workers *w, enum worker_lane lane, struct event_base *base,
		   void (*work)(void *arg), void (*done)(void *arg), void *arg);
/* Jobs submitted whose done() has not returned yet (any thread). */
size_t workers_pending(const struct workers *w);
void workers_destroy(struct workers **w);

/* --------------------------------------------------------------- handles */
/* Per-thread table from a never-reused 64-bit id to a pointer. Asynchronous
 * completions carry the id, not the pointer, so a completion whose owner
 * went away finds NULL instead of freed memory. Only the owning thread
 * touches its table. */
uint64_t handle_register(void *ptr);
void *handle_lookup(uint64_t id);
void handle_unregister(uint64_t id);
size_t handle_count(void);

/* ------------------------------------------------------------ SMTP parse */
enum smtp_verb {
	SMTP_VERB_UNKNOWN = 0,
	SMTP_VERB_HELO, SMTP_VERB_EHLO, SMTP_VERB_MAIL, SMTP_VERB_RCPT,
	SMTP_VERB_DATA, SMTP_VERB_RSET, SMTP_VERB_NOOP, SMTP_VERB_QUIT,
	SMTP_VERB_HELP, SMTP_VERB_VRFY, SMTP_VERB_EXPN, SMTP_VERB_STARTTLS,
	SMTP_VERB_AUTH, SMTP_VERB_BDAT, SMTP_VERB_TURN, SMTP_VERB_ETRN,
	SMTP_VERB_XCLIENT,
	SMTP_VERB_COUNT
};

/* A command line without its CRLF. verb is matched case-insensitively;
 * args points into the line after the verb and one space (or at the end). */
struct smtp_command {
	enum smtp_verb verb;
	const char *args;
	size_t args_len;
};
/* Returns 0, or -1 for an empty line / a line containing NUL or bare CR/LF. */
int smtp_parse_command(const char *line, size_t len, struct smtp_command *cmd_r);
const char *smtp_verb_name(enum smtp_verb verb);

#define SMTP_LOCAL_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX 256
#define SMTP_PARAMS_MAX 8

struct smtp_param { char key[32]; char value[128]; bool has_value; };

/* A reverse- or forward-path. local keeps quoting as received, except that
 * a quoted string that needs no quotes ("alice") is stored as its dot-atom
 * (alice) with quoted_local false; domain is lower-cased. null is set for
 * "<>". */
struct smtp_path {
	bool null;
	bool quoted_local;  /* local part was a quoted-string */
	bool address_literal; /* domain was [1.2.3.4] */
	char local[SMTP_LOCAL_MAX * 2 + 3];
	char domain[SMTP_DOMAIN_MAX + 1];
	struct smtp_param params[SMTP_PARAMS_MAX];
	size_t n_params;
};

/* Parse "FROM:<path> params" (prefix "FROM:") or "TO:<path> params" (prefix
 * "TO:"). Source routes are refused. Returns 0 or -1 with *error_r set to a
 * static explanation. allow_null permits "<>". */
int smtp_parse_mail_args(const char *args, size_t len, const char *prefix,
			 bool allow_null, struct smtp_path *path_r,
			 const char **error_r);
/* HELO/EHLO argument: a domain or an address literal. */
int smtp_parse_helo(const char *args, size_t len, const char **error_r);
/* True when the path is a plain dot-atom local part with no routing
 * characters (%, !, @, quotes) — the only kind we deliver to. */
bool smtp_path_is_simple_local(const struct smtp_path *path);
/* Normalised "local@domain" (or "" for the null path). */
void smtp_path_format(const struct smtp_path *path, char *out, size_t outsz);

/* A reply an SMTP/LMTP server sends us (the relay's upstream), read one
 * line (without its CRLF) at a time. The first line's enhanced code
 * ("2.1.5 ", RFC 3463, class matching the code) and text are kept; a line
 * that is not "ddd", "ddd text" or "ddd-text", a code that changes between
 * lines, or more than SMTP_REPLY_LINES_MAX lines is malformed. */
#define SMTP_REPLY_LINES_MAX 100
struct smtp_reply {
	unsigned code;
	char enhanced[16];   /* "" when the reply has none */
	char text[256];      /* the first line's text after the enhanced code,
			      * controls and non-ASCII as '?' */
	size_t lines;
};
enum smtp_reply_status { SMTP_REPLY_MORE, SMTP_REPLY_DONE, SMTP_REPLY_BAD };
void smtp_reply_reset(struct smtp_reply *r);
/* *text_r: this line's text after "ddd-"/"ddd " (an EHLO keyword line). */
enum smtp_reply_status smtp_reply_feed(struct smtp_reply *r, const char *line, size_t len,
				       const char **text_r);

/* lib/headers.c: the next field of the top-level header block, from
 * *pos on, whose name starts with prefix (any case): its byte range
 * [span[0], span[1]) with its continuation lines and line ends. *pos moves
 * past it. False when the header block (or the first MSG_HEADER_SCAN_MAX
 * octets) ended without one. Start with *pos = 0. */
#define MSG_HEADER_SCAN_MAX (1024 * 1024)
bool msg_header_next(const char *data, size_t len, const char *prefix, size_t *pos,
		     size_t span[2]);
/* The fields a sender may not bring: mxguard writes its own verdict. */
#define MSG_FORGED_PREFIX "X-Spam-"
/* Whether field (a whole "Name: value" field, as msg_header_next gives
 * it) is an Authentication-Results field (RFC 8601) whose authserv-id is
 * authserv_id (any case; a token or a quoted-string after optional CFWS).
 * False for NULL or "" authserv_id. */
bool msg_authres_id_is(const char *field, size_t len, const char *authserv_id);
/* Like msg_header_next, for the fields a sender may not bring: every
 * X-Spam-* field, and an Authentication-Results field that claims our
 * authserv_id (NULL: none is dropped) — a sender cannot forge our verdict.
 * The Maildir writer and the relay leave these out. */
bool msg_forged_next(const char *data, size_t len, const char *authserv_id, size_t *pos,
		     size_t span[2]);

/* lib/msgformat.c: the header section of a message as received (RFC
 * 5322), for the format stage's checks and the auth stage. */
struct msg_format {
	size_t header_len;    /* the header section with its empty line: where
			       * the body starts (len when there is none) */
	bool separator;       /* an empty line ends the header section */
	bool nul;             /* a NUL octet anywhere in the message */
	bool header_8bit;     /* an octet >= 0x80 in the header section */
	size_t n_fields;      /* header fields ("Name:" lines) */
	size_t n_garbage;     /* header lines that are neither a field nor a
			       * continuation */
	size_t longest_line;  /* the longest header line, its line end not counted */
	unsigned n_from, n_sender, n_to, n_subject, n_date, n_msgid;
	bool from_malformed;  /* the first From is not a mailbox-list */
	size_t from_off, from_len; /* the first From field's value (after ':') */
};
void msg_format_scan(const char *data, size_t len, struct msg_format *f);
/* A From value that is a mailbox-list (RFC 5322 3.6.2), comments allowed:
 * "a@b.example", "Name <a@b.example>, c@d.example". Not a group. */
bool msg_addr_list_ok(const char *v, size_t len);

/* ----------------------------------------------------------- clamd reply */
/*
 * clamd's answer to INSTREAM (lib/clamd.c), as read from its socket: the
 * octets up to the first NUL (or all of them), e.g. "stream: OK",
 * "stream: Win.Test.EICAR_HDB-1 FOUND", "INSTREAM size limit exceeded.
 * ERROR". Never reads past len. name gets the signature (FOUND), or the
 * error text (ERROR, or anything unexpected) made printable ASCII, always
 * NUL-terminated within namesz (namesz > 0).
 */
enum clamd_result { CLAMD_CLEAN, CLAMD_FOUND, CLAMD_SIZE_LIMIT, CLAMD_ERROR };
enum clamd_result clamd_reply_parse(const char *reply, size_t len, char *name, size_t namesz);

/* -------------------------------------------------------------- DNS lists */
/*
 * lib/dnslist.c: the pure parts of DNS list lookups (the dnsbl stage's):
 * query names built from hostile input, answer filters, reply templates and
 * a bounded TTL cache with the clock passed in. No I/O, no globals.
 *
 * Names: a name is queried only when dnsname_normalise() accepts it: LDH
 * labels of 1..63 octets (a hyphen neither first nor last; "_" refused),
 * at most 253 octets in all, at least two labels, lower-cased, one trailing
 * dot dropped. out gets at least DNSNAME_BUF octets.
 */
#define DNSNAME_MAX 253
#define DNSLABEL_MAX 63
#define DNSNAME_BUF 256
/* out = the normalised name (DNSNAME_BUF); -1 when in is not one */
int dnsname_normalise(const char *in, size_t len, char *out);
/* The reversed form of a numeric address a DNSBL is asked about:
 * "192.0.2.1" -> "1.2.0.192", an IPv6 address as 32 reversed nibbles
 * ("b.a.9.8....0.2"), an IPv4-mapped IPv6 address as its IPv4 form.
 * Returns 4 or 6 (the family), or -1 (not a numeric address). out has
 * room for DNSNAME_BUF. */
int dnslist_reverse_addr(const char *addr, char *out);
/* subject "." zone, normalised and checked as a whole; -1 when the result
 * is not a valid name (too long, bad labels). */
int dnslist_query_name(const char *subject, const char *zone, char *out);
/* The domain of an address "local@domain" (the last "@"; "" local part
 * allowed), normalised; -1 when there is none or it is not a valid name
 * (an address literal "[192.0.2.1]" is not). */
int dnslist_addr_domain(const char *addr, char *out);
/* The host of a URI as msgtext gives them ("http://user@Host:80/p",
 * "mailto:a@b.example?x", "www.example.org/..."), normalised; -1 when
 * there is none or it is an IP literal or not a valid name. */
int dnslist_uri_host(const char *uri, char *out);
/* The registered domain of a normalised host: its last two labels, or three
 * when the last two are a known two-level public suffix (co.uk, com.au, ...:
 * a short built-in list, not the Public Suffix List). -1 when host has a
 * single label or is itself such a suffix. */
int dnslist_registered_domain(const char *host, char *out);

/*
 * Answer filters: which A records of a list's answer count, and for how
 * much. The text of one filter is
 *   ADDR           exactly that address ("127.0.0.2")
 *   ADDR-ADDR      an inclusive range ("127.0.0.2-127.0.0.11")
 *   &MASK          any 127.0.0.x whose last octet has a bit of MASK set
 *                  (SURBL/URIBL style bitmasks, decimal or 0x hex: "&0x04")
 *   *              any address in 127.0.0.0/8 but 127.255.255.0/24 (the
 *                  error codes: Spamhaus answers 127.255.255.254 to a
 *                  public resolver)
 * optionally followed by "=SCORE" (else the list's score). A filter counts
 * once when any record of the answer matches it; a list's score is the sum
 * of its matching filters' (postscreen's site=filter*weight, each entry
 * counted once).
 */
enum dnslist_filter_kind { DNSLIST_EXACT, DNSLIST_RANGE, DNSLIST_MASK, DNSLIST_ANY };
struct dnslist_filter {
	enum dnslist_filter_kind kind;
	uint32_t lo, hi;   /* host order; EXACT: lo == hi */
	uint32_t mask;     /* MASK: bits of the last octet */
	double score;
};
/* 0, or -1 with *error_r malloc'd (names the text) */
int dnslist_filter_parse(const char *text, double def_score, struct dnslist_filter *f,
			 char **error_r);
bool dnslist_filter_match(const struct dnslist_filter *f, uint32_t addr);
/* Sum of the scores of the filters any of addrs (host order) matches;
 * *matched_r (may be NULL) the number of such filters. */
double dnslist_score(const struct dnslist_filter *f, size_t n_f, const uint32_t *addrs,
		     size_t n_addrs, size_t *matched_r);

/* A reply text from a template: %l the list's name, %z its zone, %a what
 * was looked up (address or domain), %% a percent sign; anything else is
 * kept as it is. Control characters become spaces; out is always
 * NUL-terminated within outsz (outsz > 0). */
void dnslist_format(const char *tmpl, const char *list, const char *zone, const char *what,
		    char *out, size_t outsz);

/*
 * The cache of answers: keyed by (query type, name), bounded to max
 * entries (the oldest expiry goes first when full), each kept for its TTL
 * (clamped to [min_ttl, max_ttl] by the caller). Not thread-safe: one per
 * loop. `now` is seconds on any monotonic clock, passed in so tests can
 * move time.
 */
#define DNSCACHE_ADDRS_MAX 16
enum dnscache_status { DNSCACHE_FOUND, DNSCACHE_NONE };
struct dnscache_value {
	enum dnscache_status status;   /* NONE: NXDOMAIN or no records */
	size_t n_addrs;                /* A: IPv4 in addrs4; AAAA: IPv6 in addrs6 */
	union {
		uint32_t addrs4[DNSCACHE_ADDRS_MAX];   /* host order */
		uint8_t addrs6[DNSCACHE_ADDRS_MAX][16];
		char name[DNSNAME_BUF];        /* PTR */
	};
};
struct dnscache;
struct dnscache *dnscache_new(size_t max);
void dnscache_free(struct dnscache **c);
/* true with *v filled when an unexpired entry is there */
bool dnscache_get(struct dnscache *c, int qtype, const char *name, long long now,
		  struct dnscache_value *v);
void dnscache_put(struct dnscache *c, int qtype, const char *name,
		  const struct dnscache_value *v, long ttl, long long now);
size_t dnscache_count(const struct dnscache *c);

/* ------------------------------------------------------------ DATA reader */
/*
 * Incremental reader for the DATA phase: un-dot-stuffs and finds the end
 * marker, and otherwise keeps the bytes as received — CRLF stays CRLF, a
 * bare LF stays a bare LF, a bare CR a bare CR — so a relay can reproduce
 * the message and a consumer that wants LF (the Maildir writer) can tell
 * the two apart. Only CRLF "." CRLF ends the message (its CRLF "." CRLF is
 * not content; the CRLF ending the last line is); a "." next to a bare CR
 * or bare LF is message content. Bare LF and bare CR are counted so the
 * session can apply its policy.
 */
struct dot_reader {
	int state;
	uint64_t size;        /* octets of content emitted so far (as received) */
	uint64_t bare_lf;     /* LF not preceded by CR */
	uint64_t bare_cr;     /* CR not followed by LF */
	uint64_t line_len;    /* octets of the current line so far, as sent */
	uint64_t longest_line; /* longest line as sent, its CRLF included */
	bool done;
};
void dot_reader_init(struct dot_reader *r);
/* Consume up to in_len bytes; writes content to out (capacity out_cap,
 * which must be >= in_len + 1: a CR held back from the previous feed may
 * come out with this one). Sets *consumed and *out_len. Returns true
 * when the end marker was consumed (bytes after it are left unconsumed:
 * they are the next pipelined command). */
bool dot_reader_feed(struct dot_reader *r, const char *in, size_t in_len,
		     size_t *consumed, char *out, size_t *out_len);

/* ------------------------------------------------------------- msg body */
/*
 * A message body being received: kept in memory up to a threshold, then
 * spilled to an unlinked temp file in the spool directory. Appends happen on
 * the session's loop; once sealed, the body is immutable and may be read
 * from any thread (worker pool, stages). The bytes are the message as
 * received after un-dot-stuffing: CRLF line endings (bare LF/CR kept as
 * they came).
 *
 * Reference-counted: the session holds one reference, and every job that
 * reads the body on another thread (a delivery, a scan) holds its own, so
 * a transaction that goes away never frees what a running job still reads.
 * msgbody_new() returns the first reference; msgbody_free() is
 * msgbody_unref() (a single owner's free); the last unref frees the body,
 * its spill file and mapping, and its parsed MIME view, on whichever
 * thread drops it.
 */
struct msgbody;
struct msgbody *msgbody_new(const char *spool_dir, size_t spill_threshold);
/* Another reference (any thread); returns b. */
struct msgbody *msgbody_ref(struct msgbody *b);
/* Drop a reference and set *b to NULL; NULL is fine. */
void msgbody_unref(struct msgbody **b);
void msgbody_free(struct msgbody **b);
/* Returns 0 or -1 (errno set: a spill write failed, e.g. ENOSPC). */
int msgbody_append(struct msgbody *b, const void *data, size_t len);
/* Finish writing. Returns 0 or -1 (errno). */
int msgbody_seal(struct msgbody *b);
uint64_t msgbody_size(const struct msgbody *b);
bool msgbody_spilled(const struct msgbody *b);
/* Whole sealed contents as one read-only region (memory, or an mmap of the
 * spill file made once). NULL with errno on failure; *len_r set. */
const char *msgbody_contents(struct msgbody *b, size_t *len_r);

/* For lib/mime.c and lib/msgtext.c: lazily built views of a sealed body
 * (NULL, and nothing built, while the body is not sealed or failed), one
 * per build function — a body carries up to 4 kinds. The first call for a
 * given build runs build(b) under that view's own lock — so callers on
 * several threads at once build it once — and later calls return what it
 * returned (NULL included); free_view(view) runs when the body is freed.
 * A build may ask for another kind of view (never for its own). */
void *msgbody_view(struct msgbody *b, void *(*build)(struct msgbody *b),
		   void (*free_view)(void *view));
/* True once the view that build makes was built (tests and metrics). */
bool msgbody_view_built_by(struct msgbody *b, void *(*build)(struct msgbody *b));
/* True once any view was built (what mime.c asks: its view is the first
 * any other is built from). */
bool msgbody_view_built(struct msgbody *b);

/* ------------------------------------------------------------ MIME view */
/*
 * The parsed-MIME view of a sealed body that rules and the virus scanner
 * share (lib/mime.c, GMime 3): parsed on first use, once, however many
 * threads ask at once; owned by the body and freed with it (callers must
 * not unref it, and must hold a body reference while they use it). NULL
 * when the body is not sealed, cannot be read or does not parse as a
 * message. GMime objects are not locked: the view is read-only by contract,
 * so threads may walk it at once but nobody may change it.
 */
struct _GMimeMessage;
struct _GMimeMessage *msgbody_mime(struct msgbody *b);
/* True once the body's view was parsed (a body never asked is never parsed). */
bool msgbody_mime_parsed(struct msgbody *b);
/* How many bodies this process has parsed (tests: "parsed once"). */
unsigned long msgbody_mime_parse_count(void);
/* g_mime_init() runs once per process on first use; mime_shutdown() is for
 * tests that want a clean leak report at exit (no view may be alive). */
void mime_shutdown(void);
/* The same one-time g_mime_init(), for code that uses GMime over bytes of
 * its own rather than a body's view (imap/mime.c): thread-safe, and one
 * guard for the whole process, so two first users never race. */
void mime_init_once(void);

/* ---------------------------------------------------------------- PROXY */
/*
 * The PROXY protocol header of a load balancer (lib/proxy_proto.c): v1
 * text, v2 binary. proxy_header_parse() looks at the first len octets of a
 * connection: PROXY_NEED_MORE (nothing wrong so far: read more, up to the
 * version's maximum), PROXY_DONE (*h filled; h->length octets are the
 * header, what follows is the client's), or PROXY_INVALID (*error_r: a
 * static text). allowed: PROXY_ALLOW_V1 | PROXY_ALLOW_V2.
 */
#define PROXY_V1_MAX 107
#define PROXY_V2_MAX (16 + 1024) /* addresses and TLVs: HAProxy sends far less */
#define PROXY_ALLOW_V1 1u
#define PROXY_ALLOW_V2 2u
enum proxy_result { PROXY_NEED_MORE, PROXY_DONE, PROXY_INVALID };
struct proxy_header {
	int version;           /* 1 or 2 */
	bool local;            /* v2 LOCAL/UNSPEC or v1 UNKNOWN: no client address */
	int family;            /* AF_INET or AF_INET6 when not local */
	char src_addr[46], dst_addr[46];
	unsigned src_port, dst_port;
	size_t length;         /* octets of the header */
};
enum proxy_result proxy_header_parse(const unsigned char *buf, size_t len, unsigned allowed,
				     struct proxy_header *h, const char **error_r);
/* Do these first octets of a connection start a PROXY header (v1's
 * "PROXY ", or v2's signature as far as its NUL)? */
bool proxy_header_start(const unsigned char *buf, size_t len);

/* ------------------------------------------------------------------ net */
/* "host:port", "[v6]:port", "*:port". Returns 0 or -1 with *error_r. */
int net_parse_address(const char *s, struct sockaddr_storage *ss,
		      socklen_t *len_r, const char **error_r);
/* Bound, listening, non-blocking, close-on-exec socket or -1 (errno).
 * reuseport: SO_REUSEPORT, so several sockets (one per loop thread) share
 * the address and the kernel spreads connections over them. */
int net_listen(const struct sockaddr_storage *ss, socklen_t len, int backlog, bool reuseport);
/* Numeric host text for an address. */
void net_addr_str(const struct sockaddr *sa, char *out, size_t outsz);
/* A network "192.0.2.0/24", "2001:db8::/32", or one address (a /32 or
 * /128). An IPv4 network also matches the v4-mapped IPv6 form. */
struct net_cidr {
	int family;
	unsigned char addr[16];
	int prefix;
};
/* 0, or -1 with *error_r (static text). */
int net_cidr_parse(const char *s, struct net_cidr *c, const char **error_r);
/* Is the numeric address text in the network? */
bool net_cidr_match(const struct net_cidr *c, const char *addr);
/* A numeric address in 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104. */
bool net_is_loopback(const char *addr);

/* ------------------------------------------------------------------ tls */
typedef struct ssl_ctx_st SSL_CTX;
/* A server context for a certificate chain and its key, given by the
 * top-level settings cert_setting and key_setting of cfg (both set). On
 * failure returns NULL and sets *error_r (malloc'd, caller frees) to
 *   "file:line: <cert_setting> = \"/path\": reason (OpenSSL: detail)"
 * naming the setting, the line it was set on, and why: the file cannot be
 * opened (strerror), holds no PEM certificate / key, the key is encrypted,
 * or the key does not match the certificate. With cfg NULL (paths outside
 * any config) errors start "<cert_setting> \"/path\": ". */
SSL_CTX *tls_server_ctx_new(const struct mx_config *cfg, const char *cert_setting,
			    const char *cert, const char *key_setting, const char *key,
			    char **error_r);

/* ------------------------------------------------------------------- fs */
/* mkdir -p: 0, or -1 with errno. */
int fs_mkdir_p(const char *path, mode_t mode);
/* Read up to cap octets of fd into a malloc'd, NUL-terminated buffer
 * (*len_r octets: fewer at end of file or on a read error); fd stays open. */
char *fs_read_upto(int fd, size_t cap, size_t *len_r);

/* -------------------------------------------------------------- strings */
void str_lower(char *s);
/* Constant-length safe copy; always NUL-terminates; returns strlen(src). */
size_t str_copy(char *dst, const char *src, size_t dstsz);
/* A name a client sent (a login), fit for a log line: printable ASCII
 * without quotes, spaces, backslashes or '=' (each one '?'), cut to 96
 * octets; "-" when empty. */
void str_log_safe(const char *in, char *out, size_t outsz);

/* ----------------------------------------------------------------- sasl */
/* Standard base64 with padding (lib/sasl.c): *out_r malloc'd and
 * NUL-terminated; -1 on a bad length, character or padding. */
int sasl_base64_decode(const char *in, size_t len, char **out_r, size_t *len_r);
char *sasl_base64_encode(const char *in, size_t len);
/* SASL PLAIN's message (RFC 4616), split in place at its NULs: authzid
 * (maybe ""), authcid (not empty), password (no NUL in it). 0 or -1. */
int sasl_plain_split(char *buf, size_t len, const char **authz_r, const char **authc_r,
		     const char **pass_r);

/* ------------------------------------------------------------ text views */
/*
 * lib/msgtext.c: the text views of a message that SpamAssassin-style rules
 * read: the top-level header (raw and decoded), SpamAssassin's "body"
 * (rendered text, one element per line of paragraphs), "rawbody" (decoded
 * but not rendered), "full" (the message as received), the URIs that "uri"
 * rules see, and the type and file name of every leaf MIME part.
 *
 * The views are built from the body's shared GMime tree (msgbody_mime())
 * on first use, once, however many threads ask, and belong to the body:
 * they are freed with it, and callers must hold a body reference while they
 * read them. They are read-only. lib/msgtext.c's opening comment says which
 * SpamAssassin behaviour each view follows and where it differs.
 *
 * Every string is NUL-terminated; all but the raw header values and `full`
 * are valid UTF-8. Hostile input is bounded by the limits below; hitting
 * one sets `truncated` and leaves the views partial but consistent.
 */
#define MSGTEXT_PARTS_MAX 100          /* MIME nodes walked (containers count) */
#define MSGTEXT_DEPTH_MAX 20           /* multipart / message/rfc822 levels */
#define MSGTEXT_TEXT_MAX (4u << 20)    /* decoded octets in body, and in rawbody */
#define MSGTEXT_URIS_MAX 1000
#define MSGTEXT_URI_LEN_MAX 8192       /* longer URIs are cut (SA: MAX_URI_LENGTH) */
#define MSGTEXT_LINE_MAX (64u << 10)   /* a header value; body lines are far shorter */
#define MSGTEXT_HEADERS_MAX 1000
/* SpamAssassin's MAX_BODY_LINE_LENGTH: body lines are split near it, and
 * rawbody into chunks of one to two times it. */
#define MSGTEXT_SA_LINE 2048

struct msgbody;

struct msgtext_header {
	char *name;    /* as in the message, e.g. "Subject" */
	/* the value as SpamAssassin's :raw gives it: everything after the
	 * colon, leading white space and folding line breaks kept, line
	 * endings as LF, without the final line ending */
	char *raw;
	/* unfolded (a line break and the blanks after it are one space),
	 * trimmed, RFC 2047 decoded to UTF-8 (not for Received, Date,
	 * Message-ID, References, In-Reply-To, MIME-Version, List-*:
	 * SpamAssassin leaves those encoded) */
	char *decoded;
};

struct msgtext_part {
	char *type;     /* lower-case "type/subtype" of a leaf part */
	/* Content-Disposition filename, else Content-Type name, decoded
	 * (RFC 2231, RFC 2047); NULL when the part has none */
	char *filename;
};

struct msgtext {
	/* the top-level header fields, in message order */
	struct msgtext_header *headers;
	size_t n_headers;
	/* SpamAssassin's "body": the decoded Subject and "\n", then the text
	 * of the text/plain and text/html parts (HTML rendered), white space
	 * folded as SpamAssassin does — a paragraph per line — and split into
	 * elements of at most MSGTEXT_SA_LINE + 1 octets; every element but
	 * the last ends in "\n", as SpamAssassin's do */
	char **body;
	size_t n_body;
	/* SpamAssassin's "rawbody": each text/... and message/... leaf
	 * (not text/calendar) decoded to UTF-8, HTML not rendered, in chunks of
	 * up to 2 * MSGTEXT_SA_LINE octets broken at a line end when possible */
	char **rawbody;
	size_t n_rawbody;
	/* the whole message as received, borrowed from the body: NOT
	 * NUL-terminated, may hold NUL octets */
	const char *full;
	size_t full_len;
	/* what "uri" rules see: URIs from the body text (http, https, ftp,
	 * www., ftp., mailto:, bare e-mail addresses as mailto:, host names
	 * ending in a top-level domain as http://) and from HTML attributes,
	 * each followed by its canonicalised variants; no duplicates, in order
	 * of appearance (body text first) */
	char **uris;
	size_t n_uris;
	struct msgtext_part *parts;
	size_t n_parts;
	/* GMime parsed the body as a message; false: it did not, and the views
	 * show the bytes as one text/plain part without a header */
	bool mime;
	bool truncated;  /* a limit was hit: the views are partial */
};

/* The text views of a sealed body, built on first use (see above). NULL
 * when the body is not sealed or its bytes cannot be read. */
const struct msgtext *msgbody_text(struct msgbody *b);
/* True once the body's text views were built (tests, metrics). */
bool msgbody_text_built(struct msgbody *b);

/* The nth (0-based) header field named name (any case): its decoded or
 * its raw value; NULL when there is none. */
const char *msgtext_header(const struct msgtext *t, const char *name, size_t nth, bool raw);

/* SpamAssassin's :addr and :name on a header value (raw preferably, as
 * SpamAssassin parses the raw one): the first address ("user@example.org",
 * group members included) and the first display name (a comment when there
 * is no phrase: "joe@example.org (Joe)" gives "Joe"; RFC 2047 decoded, white
 * space folded, one level of single quotes dropped); "" when there is none.
 * out gets at most outsz - 1 octets, cut at a character boundary. */
void msgtext_addr(const char *value, char *out, size_t outsz);
void msgtext_name(const char *value, char *out, size_t outsz);
/* The same for the nth (0-based) address or name — SpamAssassin 4 matches
 * a rule against all of them. False (and "" in out) when there is none. */
bool msgtext_addr_nth(const char *value, size_t nth, char *out, size_t outsz);
/* msgtext_addr_nth() for nth = 0, 1, ... at once (one parse): the
 * addresses, at most max, into out + i * outsz; how many. */
size_t msgtext_addrs(const char *value, char *out, size_t outsz, size_t max);
bool msgtext_name_nth(const char *value, size_t nth, char *out, size_t outsz);

#endif
