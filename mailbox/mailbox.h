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

struct mailbox {
	char *dir;       /* the Maildir folder: it holds tmp/, new/, cur/ */
	uint32_t uidvalidity;
	uint32_t uidnext;
	struct mailbox_msg *msgs; /* ascending UIDs */
	size_t n_msgs;
	bool uidlist_rebuilt; /* the list was missing or corrupt (new UIDVALIDITY) */
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
