/*
 * backends.h — where accepted mail goes, and who it may go to.
 *
 * The user database (a passwd-file of "user@domain:{SCHEME}hash" lines with
 * crypt(3) hashes, the format Dovecot's passwd-file also reads) and the
 * Maildir store (Maildir++ folders under <mail_root>/<domain>/<user>/).
 * Delivery is blocking (it fsyncs) and runs on the worker pool; everything
 * else here is cheap.
 */
#ifndef MXGUARD_BACKENDS_H
#define MXGUARD_BACKENDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/lib.h"

/* ------------------------------------------------------------- settings */
/* The backends' rows (backends/settings.c), registered by
 * backends_register_config() before config_load(). */
struct backends_settings {
	char *mail_root;
	char *passwd_file;
	char **local_domains; /* lower-case, NULL-terminated */
	size_t n_local_domains;
	char *junk_folder;    /* Maildir++ folder name, e.g. "Junk" */
	char *quarantine_dir; /* Maildir holding quarantined mail (+ meta/) */
	long quarantine_retention; /* days (mxguardctl quarantine expire) */
	bool quarantine_to_junk;   /* local users' quarantine into their junk folder */
	char *postmaster;     /* "" or a lower-case mailbox "local@<local domain>" */
	long message_size_max; /* octets as sent, CRLF counted (SIZE) */
	struct backends_route *routes; /* `route NAME { ... }` sections, file order */
	size_t n_routes;
};

/* One upstream host of a route: "[PRIORITY ]ADDRESS", ADDRESS host:port,
 * [v6]:port or unix:/path. Lower priorities are tried first (MX style). */
struct backends_upstream {
	long priority;
	char *host;      /* "" for a unix socket */
	char *port;      /* the service, "25" */
	char *path;      /* unix socket path, or NULL */
	char *key;       /* "host:port" / "unix:/path" as written, for logs and caches */
};

enum route_protocol { ROUTE_SMTP, ROUTE_LMTP };
enum route_starttls { ROUTE_TLS_OFF, ROUTE_TLS_OPPORTUNISTIC, ROUTE_TLS_REQUIRED };

/* A `route NAME { ... }` section: mail for its domains is relayed. */
struct backends_route {
	char *name;
	int line;
	char **domains;            /* lower-case */
	size_t n_domains;
	int protocol;              /* enum route_protocol */
	char **hosts;              /* as written */
	size_t n_hosts;
	int starttls;              /* enum route_starttls */
	char *tls_ca_file;         /* "" = the system's CAs */
	char *tls_verify_name;     /* "" = the host's name as written */
	bool xclient, xforward;
	char *helo_name;           /* "" = hostname */
	long connect_timeout, command_timeout, data_timeout, reuse_time;
};
/* Parse one hosts item ("10 mx1.example:25", "[::1]:2525", "unix:/run/x").
 * 0, or -1 with *error_r malloc'd; backends_upstream_clear() frees. */
int backends_upstream_parse(const char *item, struct backends_upstream *u, char **error_r);
void backends_upstream_clear(struct backends_upstream *u);

void backends_register_config(void);
const struct backends_settings *backends_settings(const struct mx_config *cfg);
bool backends_is_local_domain(const struct mx_config *cfg, const char *domain);

/* --------------------------------------------------------------- userdb */
/*
 * A loaded passwd-file. userdb_* lookups are thread-safe; the file is
 * re-read when its mtime/size/inode change, so `mxguardctl user add` takes
 * effect without a restart.
 */
struct userdb;
int userdb_open(const char *path, struct userdb **db_r, char **error_r);
void userdb_close(struct userdb **db);
/* local and domain as normalised by the caller (domain lower-case; the
 * lookup lower-cases the local part too). Returns 1 found, 0 not found,
 * -1 the file could not be read (caller tempfails). */
int userdb_exists(struct userdb *db, const char *local, const char *domain);
/* 1 password matches, 0 no such user or wrong password, -1 error. */
int userdb_verify(struct userdb *db, const char *user_at_domain, const char *password);
/*
 * A mail login (POP3, IMAP, web: on a worker thread): userdb_verify, the
 * password wiped afterwards (it is the caller's buffer), then the user's
 * Maildir root under mail_root with no trailing '/'. 1 with *root_r
 * (malloc'd), 0 bad credentials, -1 error with *error_r (malloc'd).
 */
int userdb_login(struct userdb *db, const char *mail_root, const char *user, char *password,
		 char **root_r, char **error_r);

/* Hash a password with yescrypt (falls back to SHA-512-crypt); returns a
 * malloc'd "{CRYPT}$y$..." string or NULL. */
char *userdb_hash_password(const char *password);
/* Editing the file (used by mxguardctl). All rewrite the file atomically
 * (temp file, fsync, rename) under an flock. Return 0 or -1 with *error_r
 * (malloc'd). user is "local@domain". */
int userdb_file_set(const char *path, const char *user, const char *hash, bool must_exist,
		    bool must_not_exist, char **error_r);
int userdb_file_delete(const char *path, const char *user, char **error_r);
/* Calls cb for each user in file order. */
int userdb_file_list(const char *path, void (*cb)(const char *user, void *ctx), void *ctx,
		     char **error_r);
/* Validates "local@domain" for the user database: dot-atom local part
 * without routing characters, a domain name. */
bool userdb_valid_user(const char *user);

/* -------------------------------------------------------------- maildir */
/* <mail_root>/<domain>/<local>/ built from validated, lower-cased parts
 * only. Returns 0 or -1 when the parts are not safe path components. */
int maildir_user_path(const char *mail_root, const char *local, const char *domain,
		      char *out, size_t outsz);

struct maildir_target {
	char *root;     /* the user's Maildir root, or a quarantine Maildir */
	char *folder;   /* NULL for INBOX, else a Maildir++ folder name ("Junk") */
	char *headers;  /* header lines for this copy only (Return-Path,
			 * Delivered-To), LF endings, written first; may be NULL */
	char *name;     /* NULL: a fresh unique name; else this one (the
			 * quarantine's id): tmp/NAME, new/NAME,S=<size>, and a
			 * file already there under it fails the delivery */
};

struct maildir_copy;
struct maildir_job {
	/* inputs */
	struct maildir_target *targets;
	size_t n_targets;
	const char *prefix;   /* headers common to every copy (Received, X-Spam-*),
			       * LF endings, written after each target's own headers */
	size_t prefix_len;
	/* the sender's Authentication-Results fields with this authserv-id are
	 * left out, with its X-Spam-* fields (msg_forged_next); NULL: none */
	const char *authserv_id;
	struct msgbody *body; /* sealed */
	bool fsync;           /* false only in tests that measure without it */
	/* outputs */
	int error;            /* 0, or an errno value */
	char error_text[256];
	char **paths;         /* final paths in new/, n_targets of them, on success */
	struct maildir_copy *copies; /* private: between prepare and commit */
};

/*
 * All-or-nothing delivery: for every target write a file into tmp/ (mode
 * 0600), fsync it, then rename each into new/ as "<unique>,S=<size>" (the
 * file's size in octets as stored; never replacing a file there) and fsync
 * the new/ dirs. On any
 * failure every file written is unlinked (renamed ones too) and job->error is
 * set. Creates missing Maildir directories. Blocking; call from the worker
 * pool. Returns 0 or -1.
 */
int maildir_deliver(struct maildir_job *job);
/* maildir_deliver in two steps: prepare writes and fsyncs every file in
 * tmp/ (nothing visible yet); commit(keep) renames them into new/ and
 * fsyncs the dirs, or with !keep unlinks them. A failed prepare leaves
 * nothing behind; a prepared job freed uncommitted is unlinked. */
int maildir_prepare(struct maildir_job *job);
int maildir_commit(struct maildir_job *job, bool keep);
void maildir_job_free_results(struct maildir_job *job);
/* Make <root>/{tmp,new,cur} (and a folder's .NAME/ with maildirfolder). */
int maildir_create(const char *root, const char *folder, char **error_r);
/* A unique Maildir file name: "<sec>.M<usec>P<pid>Q<seq>.<host>". */
void maildir_unique_name(char *out, size_t outsz);
/* Tests only: when set, maildir_deliver takes its names from this instead
 * of maildir_unique_name, so that a test can know (and pre-create) them. */
extern void (*maildir_unique_name_hook)(char *out, size_t outsz);

/*
 * rename(from, to) that never replaces an existing to: fails with EEXIST
 * instead. Uses renameat2(RENAME_NOREPLACE), and link()+unlink() where the
 * file system or kernel lacks it. On failure from is still in place.
 */
int maildir_rename_noreplace(const char *from, const char *to);
/* The link()+unlink() fallback of maildir_rename_noreplace, on its own so
 * that it can be tested on file systems that have renameat2. */
int maildir_link_noreplace(const char *from, const char *to);

/* ----------------------------------------------------------- quarantine */
/*
 * The quarantine store (backends/quarantine.c, doc/quarantine.md): each
 * held message is one file in the quarantine Maildir (new/<ID>,S=<size>,
 * written by the store like any delivery) and one metadata file
 * <quarantine_dir>/meta/<ID> of "key: value" lines — the envelope, the
 * time, the verdict, the score, the hits, the reason, and one "event:"
 * line per release or delete. The metadata is written and fsynced before
 * the message is renamed into new/, so a message is never visible without
 * it (a crash in between leaves metadata whose message is missing, which
 * list skips and expire removes). ID is the transaction id.
 */
struct quarantine_meta {
	char id[MX_ID_LEN];
	long long time;          /* seconds since the epoch, when it was held */
	char *client_addr;
	unsigned client_port;
	char *helo;
	char *from;              /* "" for <> */
	char **rcpts;
	size_t n_rcpts;
	char *verdict, *action;
	double score;
	char *hits;              /* "" when none */
	char *reason;
	unsigned long long size; /* octets received */
	char **events;           /* "TIME released by WHO to RCPTS: REPLY", "TIME deleted by WHO" */
	size_t n_events;
	bool released, deleted;  /* from the events */
};
void quarantine_meta_clear(struct quarantine_meta *m);
/* A quarantine id from the command line: 16 characters of [0-9A-Z] (as
 * id_new() makes them), so it is always one plain file name. */
bool quarantine_id_valid(const char *id);
/* The metadata as its file holds it (malloc'd); values are kept on one
 * line (control characters become '?'). */
char *quarantine_meta_format(const struct quarantine_meta *m);
/* Parse a metadata file's text into *m (cleared first). 0, or -1 with
 * *error_r malloc'd (not a metadata file, or no valid id). */
int quarantine_meta_parse(const char *text, size_t len, struct quarantine_meta *m,
			  char **error_r);
/* Write <qdir>/meta/<id> durably: tmp/<id>.meta, fsync, rename, fsync meta/
 * (made when missing; replaces an older version). 0, or -1 with errno and
 * *error_r malloc'd. */
int quarantine_meta_write(const char *qdir, const struct quarantine_meta *m, bool fsync,
			  char **error_r);
/* Read <qdir>/meta/<id> (id must be valid). 0, or -1 with errno (ENOENT: no
 * such entry) and *error_r malloc'd. */
int quarantine_meta_read(const char *qdir, const char *id, struct quarantine_meta *m,
			 char **error_r);
int quarantine_meta_remove(const char *qdir, const char *id);
/* The message file of id in <qdir>/new or cur: 1 found (*path_r malloc'd),
 * 0 none, -1 error (errno). */
int quarantine_message_path(const char *qdir, const char *id, char **path_r);
/* The ids that have metadata, sorted (oldest first). 0 or -1 with errno. */
int quarantine_list_ids(const char *qdir, char ***ids_r, size_t *n_r, char **error_r);
/* The recipients joined with "," (malloc'd), as the list and the log show them. */
char *quarantine_join_rcpts(char *const *rcpts, size_t n);
/* Add one "event:" line ("TIME TEXT") to id's metadata (rewritten durably). */
int quarantine_add_event(const char *qdir, const char *id, const char *text, char **error_r);

/* ------------------------------------------------------------ backends */
/*
 * Where accepted mail goes: a const table of backends found by name, like
 * the stages (backends/registry.c: one line per backend). A backend decides
 * at RCPT whether it takes a recipient, says which message extensions it
 * can honour (the session's EHLO lists them), and takes the message at the
 * end of DATA; its answers are the session's replies, so a backend that
 * relays can answer with its upstream's words and codes.
 *
 * Rows: the Maildir store ("store", backends/store.c) and the relay to an
 * upstream SMTP or LMTP server ("relay", backends/relay.c).
 */
struct event_base;
struct workers;

/* A reply for the client, and one word for the log. */
struct backend_reply {
	unsigned code;        /* 250, 451, 550 ... */
	char enhanced[16];    /* "2.1.5" */
	char text[256];
	char reason[32];      /* "" on success, else e.g. "unknown_user", "disk_full" */
};

/* A recipient a backend accepted: what it needs again at DATA. */
struct backend_rcpt {
	char *address;        /* as the client named it, normalised */
	char *mailbox;        /* whose copy it is (Delivered-To): postmaster@ maps */
	char *where;          /* the backend's own: the store's Maildir root */
	unsigned slot;        /* the router's: which destination took it */
};
void backend_rcpt_clear(struct backend_rcpt *r);

enum backend_folder { BACKEND_FOLDER_INBOX, BACKEND_FOLDER_JUNK, BACKEND_FOLDER_QUARANTINE };

/* Why a message is held: what the quarantine keeps beside it (the
 * session fills it from the transaction's filter_tx; doc/quarantine.md). */
struct backend_verdict {
	const char *verdict;  /* "quarantine", "continue" (the score decided) */
	const char *action;   /* "quarantine" */
	double score;
	const char *hits;     /* "STAGE:RULE=SCORE,..." ("" when none) */
	const char *reason;   /* "clamav:CLAMAV_Eicar-Signature", "score>=8.0" */
};

struct backend_message {
	const char *id;                   /* the transaction id (in the 250 text);
					   * a quarantined copy is kept under it */
	const char *from;                 /* "" for <> */
	const struct backend_rcpt *rcpts; /* accepted by this backend */
	size_t n_rcpts;
	enum backend_folder folder;
	const char *prefix;               /* Received: and filter headers, LF endings */
	size_t prefix_len;
	const char *authserv_id;          /* our Authentication-Results id (the
					   * hostname): a sender's field that
					   * claims it is left out; may be NULL */
	struct msgbody *body;             /* sealed; the backend holds a reference */
	/* with BACKEND_FOLDER_QUARANTINE: why (copied); NULL otherwise */
	const struct backend_verdict *why;
};

/* The loop a transaction lives on: answers come back there. */
struct backend_env {
	struct event_base *base;
	struct workers *workers;
};

/* What a backend may want to know of the transaction and its client (a
 * relay repeats the envelope upstream and names the client with XCLIENT or
 * XFORWARD). Copied by backend_tx_begin(). */
struct backend_txinfo {
	const char *id;          /* the transaction id */
	const char *from;        /* "" for <> */
	bool body_8bit;          /* MAIL ... BODY=8BITMIME */
	uint64_t size;           /* MAIL ... SIZE=, 0 when not given */
	const char *client_addr; /* "192.0.2.1", "2001:db8::1" */
	unsigned client_port;
	const char *helo;        /* the client's HELO/EHLO name */
	bool esmtp, tls;
};

/*
 * One transaction as a backend sees it: begun when the client's MAIL is
 * accepted, ended when the transaction is over — after data()'s answer, or
 * without data() (RSET, a new HELO, a refusal or a discard at DATA, the
 * client gone). A relay holds its upstream session here. The generic part
 * is filled by backend_tx_begin(); priv is the backend's own.
 */
struct backend;
struct backend_tx {
	struct backend *be;
	struct backend_env env;
	char *id, *from, *client_addr, *helo;
	unsigned client_port;
	bool body_8bit, esmtp, tls;
	uint64_t size;
	void *priv;
};

/* data()'s completion: exactly once, on env->base, even when the session
 * that asked is gone by then. detail is for the log ("" when none). */
typedef void backend_done_cb(void *ctx, const struct backend_reply *reply, const char *detail);
/* A later RCPT answer: exactly once, on env->base. On 2xx *rcpt is handed
 * over: the callback returns true when the asker took the recipient, false
 * when it has gone meanwhile — the backend then undoes that recipient
 * itself, as drop() would have (and clears *rcpt). */
typedef bool backend_rcpt_cb(void *ctx, const struct backend_reply *reply, struct backend_rcpt *rcpt);
enum backend_status { BACKEND_DONE, BACKEND_PENDING };

struct userdb;
struct backend_ops {
	const char *name;
	/* Build an instance from the config (users from db, which outlives it).
	 * route is the `route` section it is made for (a relay's), else NULL.
	 * 0, or -1 with *error_r malloc'd. */
	int (*create)(const struct mx_config *cfg, const struct backends_route *route,
		      struct userdb *db, struct backend **be_r, char **error_r);
	void (*destroy)(struct backend *be);
	/* The EHLO keywords about messages this backend takes ("SIZE 26214400",
	 * "8BITMIME"), NULL-terminated; valid until the next call on the same
	 * thread (a relay's change as it learns its upstream's). The session
	 * adds its own (PIPELINING, STARTTLS, ENHANCEDSTATUSCODES). */
	const char *const *(*ehlo)(const struct backend *be);
	/* Optional: set tx->priv up (no I/O needed yet; a relay may start
	 * connecting). NULL: the backend keeps nothing per transaction. */
	void (*tx_begin)(struct backend_tx *tx);
	/* Does the backend take local@domain (normalised, lower-case, domain
	 * accepted)? Either BACKEND_DONE with *reply (and on 2xx *rcpt, freed
	 * with backend_rcpt_clear) filled now, or BACKEND_PENDING and
	 * cb(ctx, ...) later on env->base — a relay asks its upstream. At most
	 * one RCPT is pending per transaction. */
	enum backend_status (*rcpt)(struct backend_tx *tx, const char *local, const char *domain,
				    struct backend_rcpt *rcpt, struct backend_reply *reply,
				    backend_rcpt_cb *cb, void *ctx);
	/* Take the message; done() follows on env->base. Everything in msg is
	 * copied or referenced: the caller may free it when data() returns.
	 * Called at most once per transaction. */
	void (*data)(struct backend_tx *tx, const struct backend_message *msg,
		     backend_done_cb *done, void *ctx);
	/* Optional, for a backend whose delivery can be undone (the store):
	 * prepare() does all of data()'s work that can fail but makes nothing
	 * visible (the files fsynced in tmp/), answering like data(); commit()
	 * then makes it visible (keep) or throws it away (!keep), answering
	 * once more. The router uses them to deliver one transaction to the
	 * store and to a relay with nothing duplicated (doc/relay.md). */
	void (*prepare)(struct backend_tx *tx, const struct backend_message *msg,
			backend_done_cb *done, void *ctx);
	void (*commit)(struct backend_tx *tx, bool keep, backend_done_cb *done, void *ctx);
	/* Optional: recipients this backend took that will not get the message
	 * after all — a stage refused them after the backend said yes (a relay
	 * trims its upstream transaction). NULL: nothing to undo (the store). */
	void (*drop)(struct backend_tx *tx, const struct backend_rcpt *rcpts, size_t n);
	/* Optional: the transaction is over; free tx->priv. A relay resets
	 * or keeps its upstream session. An RCPT still pending is answered
	 * later as promised (its asker, gone, refuses the recipient). */
	void (*tx_end)(struct backend_tx *tx);
};

/* The generic header: the first member of every backend's own struct. */
struct backend {
	const struct backend_ops *ops;
};

const struct backend_ops *backends_find(const char *name);
/* Tests add backends of their own before building a state; one with the
 * name of a built-in one shadows it. */
void backends_register(const struct backend_ops *ops);
int backend_create(const char *name, const struct mx_config *cfg,
		   const struct backends_route *route, struct userdb *db, struct backend **be_r,
		   char **error_r);
void backend_destroy(struct backend **be);

/* A transaction's life (the session calls these; the router calls them on
 * the backends it routes to). */
struct backend_tx *backend_tx_begin(struct backend *be, const struct backend_env *env,
				    const struct backend_txinfo *info);
enum backend_status backend_tx_rcpt(struct backend_tx *tx, const char *local, const char *domain,
				    struct backend_rcpt *rcpt, struct backend_reply *reply,
				    backend_rcpt_cb *cb, void *ctx);
void backend_tx_data(struct backend_tx *tx, const struct backend_message *msg,
		     backend_done_cb *done, void *ctx);
void backend_tx_drop(struct backend_tx *tx, const struct backend_rcpt *rcpts, size_t n);
/* Ends the transaction and frees tx; NULL is fine. */
void backend_tx_end(struct backend_tx **tx);
void backend_reply_set(struct backend_reply *r, unsigned code, const char *enh,
		       const char *reason, const char *fmt, ...) ATTR_PRINTF(5, 6);

/* ----------------------------------------------------------- the router */
/*
 * The backend the session talks to (backends/router.c): it sends each
 * recipient domain to its destination — the store for local_domains, a
 * relay for the domains of each `route` section — and delivers one
 * transaction to several of them with nothing lost and nothing duplicated
 * (doc/relay.md). Built by the server state on every (re)load.
 */
int backends_router_create(const struct mx_config *cfg, struct userdb *db, struct backend **be_r,
			   char **error_r);
/* Which destination takes mail for domain: "store", a route's name, or
 * NULL when none (the session refuses to relay). */
const char *backends_route_of(const struct mx_config *cfg, const char *domain);

/* Each loop thread, when its loop stops: closes the relay's cached
 * upstream connections of that loop. */
void backends_loop_stop(void);

/* ------------------------------------------------- quarantine release */
/*
 * Releasing and deleting a held message (backends/quarantine_release.c),
 * shared by `mxguardctl quarantine` and the web admin. Both block: the
 * release builds the daemon's router from cfg and runs one backend
 * transaction on an event loop and a one-thread worker pool of its own
 * (never the caller's loop), so the web calls it on its worker pool. who
 * names the person for the log, the event and X-MXGuard-Released ("root",
 * "web:USER"); it must be one printable word. Each logs its own line
 * ("quarantine: ID released by WHO to ... as NEWID: REPLY", "quarantine:
 * ID deleted by WHO") and records its event in the metadata.
 */
struct quarantine_released {
	char newid[MX_ID_LEN]; /* the released copy's transaction id */
	char *to;              /* the recipients, comma-separated (malloc'd) */
	char *reply;           /* the destination's "250 2.0.0 ..." (malloc'd) */
};
void quarantine_released_clear(struct quarantine_released *r);
/*
 * Deliver id's message to to[0..n_to) (lower-cased copies are used), or
 * to its original recipients when n_to is 0, without the filters.
 * 0 done; -1 nothing was delivered (*error_r); -2 delivered, but the
 * event could not be recorded (*error_r; *out filled). error_r malloc'd.
 */
int quarantine_release(const struct mx_config *cfg, const char *qdir, const char *id,
		       const char *const *to, size_t n_to, const char *who,
		       struct quarantine_released *out, char **error_r);
/* Record "deleted by WHO", then remove the message file (the metadata
 * stays until expire). 0, or -1 with *error_r (unknown id, deleted already,
 * an I/O error). */
int quarantine_delete(const char *qdir, const char *id, const char *who, char **error_r);

#endif
