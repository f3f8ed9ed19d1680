/*
 * mailbox.h — the reading side of the Maildir store, shared by the POP3
 * service (pop3/) and, later, IMAP.
 *
 * A mailbox is one Maildir folder (INBOX is the user's Maildir root;
 * Maildir++ folders "<root>/.NAME" later) as a snapshot: every message it
 * held when it was opened, each with a UID that is strictly ascending and
 * stable across sessions. UIDs live in a per-folder list file,
 * "mxguard-uidlist":
 *
 *   mxguard-uidlist 1 V<uidvalidity> N<next uid>
 *   <uid> W<octets with CRLF line ends> <base name>
 *   ...
 *
 * The base name is the Maildir file name without its ":2,FLAGS" info
 * suffix, so a flag change (a rename) keeps the message's identity. The
 * list is rewritten only under an flock on "mxguard-uidlist.lock" (a file
 * never renamed, so every process locks the same inode): a temp file,
 * fsynced, renamed over the old list, the directory fsynced. A list that
 * cannot be parsed (or whose UIDs do not ascend) is replaced by a fresh
 * one with a new UIDVALIDITY, which is what IMAP requires when old UIDs
 * can no longer be trusted.
 *
 * Opening moves new/ into cur/ (adding ":2,"), gives UIDs to messages
 * the list does not know yet (in delivery order: by the file's mtime,
 * ties by name) and drops entries whose files are gone. Everything here is
 * blocking file-system work: call it from the worker pool, never from a
 * loop thread. A struct mailbox is used by one thread at a time.
 */
#ifndef MXGUARD_MAILBOX_H
#define MXGUARD_MAILBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define MAILBOX_UIDLIST_NAME "mxguard-uidlist"
#define MAILBOX_UIDLIST_LOCK "mxguard-uidlist.lock"
#define MAILBOX_POP3_LOCK "mxguard-pop3.lock"
/* A folder with more messages than this is refused (bounded work per open). */
#define MAILBOX_MESSAGES_MAX 1000000u

struct mailbox_msg {
	uint32_t uid;
	uint64_t vsize;  /* octets as sent over POP3/IMAP: every line end CRLF */
	char *base;      /* file name without ":2,..." */
	char *name;      /* the file's current name in cur/ */
	char flags[32];  /* the letters after ":2," (sorted, e.g. "FS") */
};

/*
 * Keywords (IMAP's user flags) are the lower-case letters of the ":2,"
 * suffix, 'a' + i standing for the i-th name of the folder's keyword file
 * "mxguard-keywords" — Dovecot's dovecot-keywords format, one "<i> <name>"
 * line each, i from 0 to 25. Names are only ever added (under the list's
 * lock), so a letter keeps its meaning; a folder has at most 26.
 */
#define MAILBOX_KEYWORDS_NAME "mxguard-keywords"
#define MAILBOX_KEYWORDS_MAX 26

/* What a change to a folder touches (new/, cur/, the list), as stat
 * saw it: a folder whose stamp is unchanged needs no rescan. */
struct mailbox_stamp {
	struct timespec mtime[3], ctime[3];
	uint64_t ino[3], size[3];
	bool racy; /* taken in the tick of a change: the next check scans */
};

struct mailbox {
	char *dir;       /* the Maildir folder: it holds tmp/, new/, cur/ */
	uint32_t uidvalidity;
	uint32_t uidnext;
	struct mailbox_msg *msgs; /* ascending UIDs */
	size_t n_msgs;
	bool uidlist_rebuilt; /* the list was missing or corrupt (new UIDVALIDITY) */
	struct mailbox_stamp stamp; /* as the snapshot was taken */
	char *keywords[MAILBOX_KEYWORDS_MAX]; /* letter 'a' + i names keywords[i] (NULL: none) */
};

/*
 * Open the folder dir (made when missing: tmp/, new/, cur/), synchronise
 * its UID list and take a snapshot. 0, or -1 with *error_r malloc'd.
 */
int mailbox_open(const char *dir, struct mailbox **mb_r, char **error_r);
void mailbox_free(struct mailbox **mb);

/* Path of message i's file as last known (malloc'd). */
char *mailbox_msg_path(const struct mailbox *mb, size_t i);
/*
 * Open message i for reading, following a rename by another reader (a
 * flag change): when its file is gone under the known name, cur/ is
 * searched for the same base name. Returns the fd, or -1 with errno
 * (ENOENT: the message was expunged meanwhile).
 */
int mailbox_msg_open(struct mailbox *mb, size_t i);
/* Add flag letter (e.g. 'S' seen) to message i by renaming its file;
 * already set is fine. 0 or -1 with errno. */
int mailbox_msg_add_flag(struct mailbox *mb, size_t i, char flag);
/* Make message i's flag letters exactly `letters` (any order; sorted
 * and deduplicated here) by renaming its file. 0 or -1 with errno. */
int mailbox_msg_set_flags(struct mailbox *mb, size_t i, const char *letters);
/* Add the letters of add and take away those of remove, from the flags
 * the file has now (following a rename by another session). */
int mailbox_msg_change_flags(struct mailbox *mb, size_t i, const char *add, const char *remove);
/* Unlink message i's file (a file already gone counts as done). */
int mailbox_msg_expunge(struct mailbox *mb, size_t i);
/* fsync the folder's cur/ after renames or unlinks. */
int mailbox_sync_dir(struct mailbox *mb);

/*
 * The POP3 maildrop lock of a folder: an flock(LOCK_EX|LOCK_NB) on
 * "<dir>/mxguard-pop3.lock", held until the fd is closed. It is a file
 * of its own, so it never blocks readers that only take the uidlist lock
 * (IMAP). Returns the fd (>= 0), -2 when another session holds it, -1 on
 * an error (errno).
 */
int mailbox_pop3_lock(const char *dir);

/*
 * Cheap change detection (IMAP's refresh of a selected folder): stat of
 * new/, cur/ and the list against the snapshot's stamp — three stats, not
 * a scan. mailbox_restamp takes the stamp again after the caller's own
 * renames or unlinks, so they do not cost a rescan.
 */
bool mailbox_changed(const struct mailbox *mb);
void mailbox_restamp(struct mailbox *mb);

/*
 * The list's lock (an fd, closed to unlock; create makes the folder's
 * directories first), and the snapshot taken with it held: what
 * mailbox_open does between the two. prefer lists base names of files
 * the caller just put into cur/: they get their UIDs first, in that
 * order (APPEND, COPY: UIDPLUS reports them).
 */
int mailbox_lock(const char *dir, bool create, char **error_r);
int mailbox_sync_locked(const char *dir, const char *const *prefer, size_t n_prefer,
			struct mailbox **mb_r, char **error_r);
/*
 * The letters of keyword names in folder dir (letters_r: at least n + 1
 * octets), adding the names the file lacks (takes the list's lock; the
 * _locked form when the caller holds it). A name that no longer fits
 * (26 in use) gets no letter. 0, or -1 on an error. mailbox_keywords_load
 * reads the file again into mb->keywords.
 */
int mailbox_keywords_letters(const char *dir, const char *const *names, size_t n, char *letters_r,
			     char **error_r);
int mailbox_keywords_letters_locked(const char *dir, const char *const *names, size_t n,
				    char *letters_r, char **error_r);
void mailbox_keywords_load(struct mailbox *mb);

/* index of uid in mb (binary search), or -1 */
long mailbox_find_uid(const struct mailbox *mb, uint32_t uid);

/* ------------------------------------------------------------ folders.c */
/*
 * Maildir++ folders under a user's root: INBOX is the root itself, a
 * folder NAME is "<root>/.NAME" with "." as the hierarchy separator both
 * in IMAP and on disk ("Lists.Work" is "<root>/.Lists.Work"). A name is
 * taken as the client wrote it (modified UTF-7 is not decoded) after
 * mailbox_folder_name_ok: 1..200 printable ASCII octets, no "/", "\",
 * "%", "*", no empty level (no leading, trailing or doubled "."), no
 * level "..". INBOX is matched without regard to case.
 */
#define MAILBOX_FOLDER_NAME_MAX 200
#define MAILBOX_SUBSCRIPTIONS "subscriptions"
#define MAILBOX_JUNK_LOG "mxguard-junk-moves.log"
bool mailbox_folder_name_ok(const char *name);
bool mailbox_folder_is_inbox(const char *name);
/* The folder's directory (malloc'd), or NULL for a name that is not ok. */
char *mailbox_folder_dir(const char *root, const char *name);
/* 1 the folder exists (it has cur/), 0 not, -1 on an error. */
int mailbox_folder_exists(const char *root, const char *name);
/* Every folder but INBOX (names malloc'd, sorted); 0 or -1. */
int mailbox_folder_list(const char *root, char ***names_r, size_t *n_r, char **error_r);
void mailbox_names_free(char **names, size_t n);
/* 0; -2 it exists already; -1 error. */
int mailbox_folder_create(const char *root, const char *name, char **error_r);
/* 0; -2 it does not exist; -1 error. Removes the folder's messages and
 * its directory; children stay. */
int mailbox_folder_delete(const char *root, const char *name, char **error_r);
/* 0; -2 from does not exist; -3 to exists; -1 error. Children move too. */
int mailbox_folder_rename(const char *root, const char *from, const char *to, char **error_r);
/* RENAME INBOX: a new folder `to` gets INBOX's messages (new UIDs there),
 * INBOX stays, empty. 0; -3 to exists; -1 error. */
int mailbox_folder_rename_inbox(const char *root, const char *to, char **error_r);
/* The subscription list (one name a line, "<root>/subscriptions"). */
int mailbox_subscriptions_read(const char *root, char ***names_r, size_t *n_r);
int mailbox_subscribe(const char *root, const char *name, bool subscribe, char **error_r);

/*
 * APPEND: the message (data as the client sent it, CRLF) written to
 * tmp/, fsynced, its mtime set to internaldate, renamed into cur/ with
 * flag letters under the list's lock, and given the next UID. 0 with
 * *uid_r and *uidvalidity_r, or -1.
 */
int mailbox_append(const char *dir, const char *data, size_t len, const char *flags,
		   const char *const *keywords, size_t n_keywords, time_t internaldate,
		   uint32_t *uid_r, uint32_t *uidvalidity_r, char **error_r);
/*
 * COPY: messages idx[0..n) of src hard-linked (or copied and fsynced,
 * across file systems) into dst's cur/ with their flags (keyword letters
 * translated to dst's), then given UIDs
 * in that order under dst's lock. uids_r[k] is the UID of idx[k] in dst
 * (0 when that message had gone meanwhile). 0 or -1.
 */
int mailbox_copy(struct mailbox *src, const size_t *idx, size_t n, const char *dst_dir,
		 uint32_t *uids_r, uint32_t *uidvalidity_r, char **error_r);

/*
 * The junk log ("<root>/mxguard-junk-moves.log"): one line appended per
 * message copied or moved into or out of the Junk folder, for a learner:
 *   <unix time> TAB <op: copy|move> TAB <direction: to-junk|from-junk>
 *   TAB <from folder> TAB <to folder> TAB <uid in to folder>
 *   TAB <Message-ID or "-"> TAB <file base name>
 * One write(2) with O_APPEND per line. 0 or -1.
 */
int mailbox_junk_log(const char *root, const char *op, bool to_junk, const char *from,
		     const char *to, uint32_t uid, const char *message_id, const char *base);

/* ----------------------------------------- throttle.c: the login throttle */
/* Failed logins per client address and per user, process-wide behind a
 * mutex, bounded (the oldest entry is reused when full), shared by POP3
 * and IMAP so one client's failures count together. Times are
 * CLOCK_MONOTONIC seconds. */
#define MAILBOX_THROTTLE_SLOTS 4096
/* true when key has had max failures within window seconds */
bool mailbox_throttle_blocked(const char *key, long max, long window, long now);
void mailbox_throttle_fail(const char *key, long window, long now);
/* tests */
void mailbox_throttle_reset(void);

/* ------------------------------------------------- the list, for tests */
struct mailbox_uid_entry {
	uint32_t uid;
	uint64_t vsize;
	char *base;
};
struct mailbox_uidlist {
	uint32_t uidvalidity, uidnext;
	struct mailbox_uid_entry *entries; /* ascending uid */
	size_t n;
};
/* Parse a list file's text. 0, or -1 when it is corrupt (bad header, a
 * bad line, UIDs not strictly ascending or not below the next UID). */
int mailbox_uidlist_parse(const char *text, size_t len, struct mailbox_uidlist *ul);
void mailbox_uidlist_clear(struct mailbox_uidlist *ul);
/* The octets of a file as POP3 sends it: every bare LF counted as CRLF, and
 * a CRLF added after a last line that has none. -1 on error. */
int64_t mailbox_file_vsize(int fd);
/* A base name is the part of a file name before ":2," (or ":"). */
size_t mailbox_base_len(const char *name);

#endif
