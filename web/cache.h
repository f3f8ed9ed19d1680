/*
 * cache.h — the web service's folder cache (internal to web/, doc/web.md
 * "The folder cache").
 *
 * A list, an open, a flag change or a move on a folder of 100,000
 * messages should cost what its page costs, not what the folder costs.
 * Without a cache every request would take a full snapshot of the folder
 * (mailbox_open: the directory read, the UID list parsed and sorted) and
 * read the header of every message it lists. The cache keeps, per Maildir
 * folder directory:
 *
 *   - the folder's snapshot (struct mailbox), checked at every request
 *     and taken again only when the folder changed — a delivery, or
 *     IMAP/POP3 changing or expunging something: inotify watches on the
 *     folder's directory, new/ and cur/ say so (the holder's own changes
 *     told apart: web_folder_change_begin/end), else, where no watch can
 *     be set, mailbox_changed (the stamps IMAP uses);
 *   - the list rows (struct web_summary: Date, From, Subject, attachment
 *     mark) of the messages already read, keyed by the file's base name
 *     (the name before ":2,"), so a flag change (a rename) or a new
 *     snapshot keeps them: after a rescan only new files are read.
 *
 * Flags, size and UID are never cached here: they come from the snapshot,
 * which is current at every request.
 *
 * Bounded: at most folders_max entries and bytes_max octets (an estimate
 * of what the snapshots and rows hold), the least recently used entry
 * that nobody holds is dropped first; a folder larger than bytes_max on
 * its own is dropped as soon as its request is done (it behaves as
 * without a cache). folders_max 0 turns the cache off: every open takes
 * a fresh snapshot that close frees.
 *
 * Threads: any number of worker threads may open folders at once; a
 * folder is held by one thread at a time (its own mutex, taken by
 * web_cache_open and released by web_cache_close), the table and the LRU
 * order behind the cache's mutex. Blocking file-system work: call it from
 * the worker pool only.
 */
#ifndef MXGUARD_WEB_CACHE_H
#define MXGUARD_WEB_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mailbox;

/* one message's list row, as its header says */
struct web_summary {
	int64_t date;       /* the Date: header (Unix time), else the file's mtime */
	const char *from;   /* decoded From: (valid UTF-8), "" when none */
	const char *subject;
	bool attachment;    /* a part is an attachment (see web_summary_read) */
	unsigned gen;       /* cache.c: the snapshot that last saw it */
	char text[];        /* base NUL from NUL subject NUL */
};

struct web_cache;
struct web_folder;

struct web_cache *web_cache_new(void);
/* Frees every entry; nobody may hold a folder. */
void web_cache_free(struct web_cache **cache);

/*
 * The folder in directory dir (which must exist: mailbox_open would make
 * it), held and current: its snapshot taken again when mailbox_changed
 * says so. folders_max and bytes_max are the bounds (the web section's
 * cache_folders and cache_size, read at each call so a reload applies).
 * 0 with *folder_r, or -1 with *error_r malloc'd.
 */
int web_cache_open(struct web_cache *cache, const char *dir, long folders_max, long bytes_max,
		   struct web_folder **folder_r, char **error_r);
/* Let the folder go (its mutex released, the bounds applied); *folder = NULL. */
void web_cache_close(struct web_cache *cache, struct web_folder **folder);

/* The held folder's snapshot (valid until web_cache_close). */
struct mailbox *web_folder_mailbox(struct web_folder *f);
/*
 * Message i's row: cached, or its header read now (and kept). A message
 * that cannot be read (gone meanwhile) gets an empty row, not kept.
 */
const struct web_summary *web_folder_summary(struct web_folder *f, size_t i);
/* The whole message was read: its exact attachment mark. */
void web_folder_set_attachment(struct web_folder *f, size_t i, bool attachment);
/*
 * Around the holder's own change of the folder, so that it does not
 * cost a rescan: change_begin before; change_end after with the file's
 * name in cur/ before (from) and after (to: NULL for an unlink; from
 * NULL: the change did not happen). Any other change made meanwhile (by
 * IMAP, a delivery...) still marks the folder changed. Without watches
 * it is IMAP's rule: the stamps are taken again when nobody else had
 * changed the folder since the snapshot.
 */
void web_folder_change_begin(struct web_folder *f);
void web_folder_change_end(struct web_folder *f, const char *from, const char *to);
/* Message i was expunged by the holder: drop it from the snapshot. */
void web_folder_forget(struct web_folder *f, size_t i);

/* Counters (for the tests): opens without a scan, scans, rows read,
 * folders dropped; what is held now. */
struct web_cache_stats {
	unsigned long hits, scans, reads, evictions;
	size_t folders, bytes;
	size_t watched; /* folders with their inotify watches in place */
};
void web_cache_stats(struct web_cache *cache, struct web_cache_stats *st);

/*
 * One message's row from its first octets (data[0..len), at least the
 * header; size the file's full size, mtime its mtime): pure, for the
 * tests. The attachment mark is exact when the whole message is in data;
 * for a longer multipart/mixed message whose first octets show no
 * attachment it is a guess (true: a large mixed message almost always
 * carries a file). Returns a malloc'd row keyed by base.
 */
struct web_summary *web_summary_read(const char *base, const char *data, size_t len, uint64_t size,
				     int64_t mtime);

#endif
