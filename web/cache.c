/*
 * cache.c — the web service's folder cache (cache.h): per Maildir folder
 * its snapshot, re-taken only when the folder's stamps changed, and the
 * list rows of the messages already read, keyed by the file's base name.
 *
 * Locking: cache->lock guards the table, the LRU list, the inotify
 * queue, each entry's `users`, `accounted`, `cached`, watches and event
 * state, and the totals; an entry's own mutex guards its snapshot, rows
 * and `bytes`. An entry is only freed with cache->lock held and
 * users == 0, so nobody holds or waits for its mutex then. A holder of
 * an entry's mutex may take cache->lock (to read the event queue); no
 * one takes an entry's mutex while holding cache->lock.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <gmime/gmime.h>

#include "lib/lib.h"
#include "mailbox/mailbox.h"
#include "web/cache.h"
#include "web/web.h"

#define WEB_SUMMARY_READ_MAX 65536 /* octets of a file read for its row */
/* what a row and a snapshot's message cost beyond their strings: the
 * structs, a hash node, malloc's headers (an estimate, for the bound) */
#define WEB_SUMMARY_OVERHEAD (sizeof(struct web_summary) + 64)
#define WEB_MSG_OVERHEAD (sizeof(struct mailbox_msg) + sizeof(void *) + 32)
#define WEB_PENDING_MAX 256 /* events kept for one change of the holder's */

/* the three watches of a folder: its directory (the UID list), new/, cur/ */
enum { W_DIR, W_NEW, W_CUR, W_N };
static const char *const watch_sub[W_N] = { "", "/new", "/cur" };
#define WATCH_MASK (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

struct pending {
	int which;      /* W_DIR, W_NEW, W_CUR */
	uint32_t mask;
	char *name;
};

struct web_folder {
	char *dir;
	pthread_mutex_t lock;
	/* under lock */
	struct mailbox *mb;          /* NULL until the first sync */
	struct web_summary **rows;   /* parallel to mb->msgs; NULL: not read yet */
	GHashTable *by_base;         /* base -> row (owned) */
	unsigned gen;
	size_t bytes;
	unsigned long reads;         /* rows read since the last close */
	bool clean;                  /* change_begin: unchanged since the snapshot (stamps) */
	struct web_cache *cache;
	/* under the cache's lock */
	unsigned users;              /* holders and waiters */
	size_t accounted;            /* bytes as last added to the total */
	bool cached;                 /* in the table (false: the cache is off) */
	int wd[W_N];                 /* inotify watches, -1 none */
	bool watched;                /* all three in place: events, not stamps, say "changed" */
	bool dirty;                  /* an event came that was not the holder's own */
	bool own;                    /* the holder is changing the folder: events go to pending */
	bool rewatch;                /* watch again after the next sync (the directories were missing or replaced) */
	struct pending *pending;
	size_t n_pending;
	TAILQ_ENTRY(web_folder) lru;
};

struct web_cache {
	pthread_mutex_t lock;
	GHashTable *by_dir; /* dir -> entry (the key is entry->dir) */
	TAILQ_HEAD(web_folder_lru, web_folder) lru; /* most recently used first */
	size_t n, bytes;
	size_t n_max, bytes_max;      /* the bounds the last open gave */
	unsigned long hits, scans, reads, evictions;
	int ifd;                      /* inotify (non-blocking), -1 none */
	GHashTable *by_wd;            /* wd -> entry */
};

static const struct web_summary empty_row = { .date = 0, .from = "", .subject = "" };

/* ------------------------------------------------------------- a row */

static GMimeMessage *
parse(const char *data, size_t len)
{
	GMimeStream *st = g_mime_stream_mem_new_with_buffer(data, len);
	GMimeParser *p = g_mime_parser_new_with_stream(st);
	GMimeMessage *m = g_mime_parser_construct_message(p, NULL);

	g_object_unref(p);
	g_object_unref(st);
	return m;
}

static void
attachment_cb(GMimeObject *parent, GMimeObject *part, gpointer data)
{
	(void)parent;
	if (GMIME_IS_PART(part) && g_mime_part_is_attachment(GMIME_PART(part)))
		*(bool *)data = true;
}

/* where the header ends (after its blank line), or len */
static size_t
header_len(const char *data, size_t len)
{
	for (size_t i = 0; i + 1 < len; i++) {
		if (data[i] != '\n')
			continue;
		if (data[i + 1] == '\n')
			return i + 2;
		if (data[i + 1] == '\r' && i + 2 < len && data[i + 2] == '\n')
			return i + 3;
	}
	return len;
}

struct web_summary *
web_summary_read(const char *base, const char *data, size_t len, uint64_t size, int64_t mtime)
{
	char *from = NULL, *subject = NULL;
	int64_t date = mtime;
	bool att = false;
	size_t hl = header_len(data, len);

	mime_init_once();
	GMimeMessage *m = parse(data, hl);
	if (m != NULL) {
		InternetAddressList *l = g_mime_message_get_addresses(m, GMIME_ADDRESS_TYPE_FROM);
		char *f = l != NULL ? internet_address_list_to_string(l, NULL, FALSE) : NULL;
		if (f != NULL)
			from = web_utf8_clean(f, strlen(f));
		g_free(f);
		const char *s = g_mime_message_get_subject(m);
		if (s != NULL)
			subject = web_utf8_clean(s, strlen(s));
		GDateTime *d = g_mime_message_get_date(m);
		if (d != NULL)
			date = (int64_t)g_date_time_to_unix(d);
		GMimeObject *top = m->mime_part;
		GMimeContentType *ct = top != NULL ? g_mime_object_get_content_type(top) : NULL;
		if (ct != NULL && g_mime_content_type_is_type(ct, "multipart", "*")) {
			/* the parts: as many as the first octets hold */
			GMimeMessage *full = parse(data, len);
			if (full != NULL) {
				g_mime_message_foreach(full, attachment_cb, &att);
				g_object_unref(full);
			}
			if (!att && len < size && g_mime_content_type_is_type(ct, "multipart", "mixed"))
				att = true;
		} else if (top != NULL && GMIME_IS_PART(top)) {
			att = g_mime_part_is_attachment(GMIME_PART(top));
		}
		g_object_unref(m);
	}
	size_t bl = strlen(base), fl = from != NULL ? strlen(from) : 0, sl = subject != NULL ? strlen(subject) : 0;
	struct web_summary *row = xmalloc(sizeof(*row) + bl + fl + sl + 3);
	memset(row, 0, sizeof(*row));
	row->date = date;
	row->attachment = att;
	memcpy(row->text, base, bl + 1);
	char *p = row->text + bl + 1;
	memcpy(p, from != NULL ? from : "", fl + 1);
	row->from = p;
	p += fl + 1;
	memcpy(p, subject != NULL ? subject : "", sl + 1);
	row->subject = p;
	free(from);
	free(subject);
	return row;
}

static size_t
row_bytes(const struct web_summary *row)
{
	size_t bl = strlen(row->text);
	return WEB_SUMMARY_OVERHEAD + bl + strlen(row->from) + strlen(row->subject) + 3;
}

/* message i's row from its file (NULL: it cannot be read) */
static struct web_summary *
row_load(struct mailbox *mb, size_t i)
{
	int fd = mailbox_msg_open(mb, i); /* follows a rename */
	struct stat sb;
	size_t len = 0, cap;
	char *buf;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &sb) < 0) {
		close(fd);
		return NULL;
	}
	cap = (uint64_t)sb.st_size < WEB_SUMMARY_READ_MAX ? (size_t)sb.st_size : WEB_SUMMARY_READ_MAX;
	buf = fs_read_upto(fd, cap, &len);
	close(fd);
	struct web_summary *row = web_summary_read(mb->msgs[i].base, buf, len, (uint64_t)sb.st_size,
						   (int64_t)sb.st_mtime);
	free(buf);
	return row;
}

/* ---------------------------------------------------------- an entry */

static struct web_folder *
folder_new(const char *dir)
{
	struct web_folder *f = xcalloc(1, sizeof(*f));

	f->dir = xstrdup(dir);
	for (int w = 0; w < W_N; w++)
		f->wd[w] = -1;
	pthread_mutex_init(&f->lock, NULL);
	f->by_base = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, free);
	return f;
}

static void
folder_free(struct web_folder *f)
{
	if (f == NULL)
		return;
	mailbox_free(&f->mb);
	free(f->rows);
	for (size_t k = 0; k < f->n_pending; k++)
		free(f->pending[k].name);
	free(f->pending);
	g_hash_table_destroy(f->by_base);
	pthread_mutex_destroy(&f->lock);
	free(f->dir);
	free(f);
}

static size_t
snapshot_bytes(const struct mailbox *mb)
{
	size_t b = sizeof(*mb) + strlen(mb->dir);

	for (size_t i = 0; i < mb->n_msgs; i++)
		b += WEB_MSG_OVERHEAD + strlen(mb->msgs[i].base) + strlen(mb->msgs[i].name) + 2;
	return b;
}

static gboolean
row_stale(gpointer key, gpointer value, gpointer gen)
{
	(void)key;
	return ((struct web_summary *)value)->gen != *(unsigned *)gen;
}

/* A new snapshot of the folder: the rows of the messages it still has
 * carried over, the others dropped. */
static int
folder_sync(struct web_folder *f, bool *scanned_r, char **error_r)
{
	struct mailbox *nmb = NULL;

	*scanned_r = false;
	if (mailbox_open(f->dir, &nmb, error_r) < 0)
		return -1;
	*scanned_r = true;
	f->gen++;
	struct web_summary **rows = xcalloc(nmb->n_msgs + 1, sizeof(*rows));
	size_t bytes = snapshot_bytes(nmb) + nmb->n_msgs * sizeof(*rows);
	if (g_hash_table_size(f->by_base) > 0) {
		for (size_t i = 0; i < nmb->n_msgs; i++) {
			struct web_summary *row = g_hash_table_lookup(f->by_base, nmb->msgs[i].base);
			if (row != NULL) {
				row->gen = f->gen;
				rows[i] = row;
				bytes += row_bytes(row);
			}
		}
		g_hash_table_foreach_remove(f->by_base, row_stale, &f->gen);
	}
	mailbox_free(&f->mb);
	free(f->rows);
	f->mb = nmb;
	f->rows = rows;
	f->bytes = bytes;
	return 0;
}

struct mailbox *
web_folder_mailbox(struct web_folder *f)
{
	return f->mb;
}

const struct web_summary *
web_folder_summary(struct web_folder *f, size_t i)
{
	if (i >= f->mb->n_msgs)
		return &empty_row;
	if (f->rows[i] != NULL)
		return f->rows[i];
	struct web_summary *row = row_load(f->mb, i);
	if (row == NULL)
		return &empty_row;
	row->gen = f->gen;
	/* the key is the row's own copy of the base (text[0..]) */
	g_hash_table_replace(f->by_base, row->text, row);
	f->rows[i] = row;
	f->bytes += row_bytes(row);
	f->reads++;
	return row;
}

void
web_folder_set_attachment(struct web_folder *f, size_t i, bool attachment)
{
	if (i < f->mb->n_msgs && f->rows[i] != NULL)
		f->rows[i]->attachment = attachment;
}

void
web_folder_forget(struct web_folder *f, size_t i)
{
	struct mailbox *mb = f->mb;

	if (i >= mb->n_msgs)
		return;
	f->bytes -= WEB_MSG_OVERHEAD + strlen(mb->msgs[i].base) + strlen(mb->msgs[i].name) + 2;
	if (f->rows[i] != NULL) {
		f->bytes -= row_bytes(f->rows[i]);
		g_hash_table_remove(f->by_base, f->rows[i]->text); /* frees the row */
	}
	free(mb->msgs[i].base);
	free(mb->msgs[i].name);
	memmove(&mb->msgs[i], &mb->msgs[i + 1], (mb->n_msgs - i - 1) * sizeof(*mb->msgs));
	memmove(&f->rows[i], &f->rows[i + 1], (mb->n_msgs - i - 1) * sizeof(*f->rows));
	mb->n_msgs--;
}

/* ------------------------------------------------------------ watches */
/*
 * Why inotify as well as the stamps: a stamp taken in the file system
 * clock's tick of a change cannot tell a later change in that tick
 * (mailbox.h: "racy"), so after the web's own rename the stamps would
 * make the next request rescan the folder. Events are exact: every
 * rename, link and unlink in new/ and cur/ by anyone (IMAP, POP3, a
 * delivery, another process) is one; the holder's own changes are told
 * apart by their names (change_begin/end, and a sync's own moves from
 * new/ to cur/). A folder whose watches cannot be set (the kernel's
 * limit), or whose directories were removed or renamed, goes back to
 * the stamps.
 */

/* cache lock held */
static void
watch_remove(struct web_cache *c, struct web_folder *f)
{
	for (int w = 0; w < W_N; w++) {
		if (f->wd[w] >= 0) {
			g_hash_table_remove(c->by_wd, GINT_TO_POINTER(f->wd[w]));
			(void)inotify_rm_watch(c->ifd, f->wd[w]);
			f->wd[w] = -1;
		}
	}
	f->watched = false;
}

/* cache lock held; the first sync follows (dirty) */
static void
watch_add(struct web_cache *c, struct web_folder *f)
{
	f->dirty = true;
	if (c->ifd < 0)
		return;
	for (int w = 0; w < W_N; w++) {
		char *p = xasprintf("%s%s", f->dir, watch_sub[w]);
		f->wd[w] = inotify_add_watch(c->ifd, p, WATCH_MASK);
		if (f->wd[w] < 0 && errno == ENOENT)
			f->rewatch = true; /* a folder the first sync makes (a new INBOX) */
		free(p);
		if (f->wd[w] < 0 || g_hash_table_contains(c->by_wd, GINT_TO_POINTER(f->wd[w]))) {
			/* no watch (a limit), or one inode watched twice: stamps */
			if (f->wd[w] >= 0 && g_hash_table_lookup(c->by_wd, GINT_TO_POINTER(f->wd[w])) != f)
				f->wd[w] = -1; /* another entry's: leave it */
			watch_remove(c, f);
			return;
		}
		g_hash_table_insert(c->by_wd, GINT_TO_POINTER(f->wd[w]), f);
	}
	f->watched = true;
}

/* a name in the folder's directory whose change is a change of the folder */
static bool
dir_name_matters(const char *name)
{
	return strcmp(name, MAILBOX_UIDLIST_NAME) == 0 || strcmp(name, MAILBOX_KEYWORDS_NAME) == 0 ||
	       strcmp(name, "new") == 0 || strcmp(name, "cur") == 0;
}

static void
pending_clear(struct web_folder *f)
{
	for (size_t k = 0; k < f->n_pending; k++)
		free(f->pending[k].name);
	f->n_pending = 0;
}

static void
all_dirty(struct web_cache *c)
{
	struct web_folder *f;

	TAILQ_FOREACH(f, &c->lru, lru)
		f->dirty = true;
}

/* Read every event queued (cache lock held): each marks its folder
 * dirty, or is kept for the holder that is changing the folder. */
static void
cache_drain(struct web_cache *c)
{
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));

	if (c->ifd < 0)
		return;
	for (;;) {
		ssize_t n = read(c->ifd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* EAGAIN: nothing more */
		for (char *p = buf; p + sizeof(struct inotify_event) <= buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			p += sizeof(*ev) + ev->len;
			if (ev->mask & IN_Q_OVERFLOW) {
				all_dirty(c);
				continue;
			}
			struct web_folder *f = g_hash_table_lookup(c->by_wd, GINT_TO_POINTER(ev->wd));
			if (f == NULL)
				continue; /* a watch removed meanwhile */
			int which = ev->wd == f->wd[W_DIR] ? W_DIR : ev->wd == f->wd[W_NEW] ? W_NEW : W_CUR;
			const char *name = ev->len > 0 ? ev->name : "";
			if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT)) {
				/* the directory went or moved: its inode no longer is
				 * the folder's (a new one may come): stamps from now */
				watch_remove(c, f);
				f->dirty = true;
				f->rewatch = true;
				continue;
			}
			if (which == W_DIR && !dir_name_matters(name))
				continue; /* the lock file, a temp file, a subfolder, the junk log */
			if (!f->own) {
				f->dirty = true;
			} else if (f->n_pending >= WEB_PENDING_MAX) {
				f->dirty = true;
			} else {
				if (f->pending == NULL)
					f->pending = xcalloc(WEB_PENDING_MAX, sizeof(*f->pending));
				f->pending[f->n_pending++] = (struct pending){ which, ev->mask, xstrdup(name) };
			}
		}
	}
}

/* the holder's sync has ended (cache lock held, drained): its own events
 * are the UID list and keywords written under the list's lock and the
 * moves from new/ to cur/ (X in new/ to X or X:2, in cur/); any other
 * event is someone else's change */
static void
own_sync_settle(struct web_folder *f)
{
	for (size_t k = 0; k < f->n_pending && !f->dirty; k++) {
		const struct pending *e = &f->pending[k];
		if (e->which == W_DIR && (e->mask & (IN_MOVED_TO | IN_CREATE)) &&
		    (strcmp(e->name, MAILBOX_UIDLIST_NAME) == 0 || strcmp(e->name, MAILBOX_KEYWORDS_NAME) == 0))
			continue;
		if (e->which == W_NEW && (e->mask & IN_MOVED_FROM))
			continue;
		if (e->which == W_CUR && (e->mask & IN_MOVED_TO)) {
			bool from_new = false;
			for (size_t j = 0; j < f->n_pending && !from_new; j++) {
				const struct pending *o = &f->pending[j];
				size_t ol = strlen(o->name);
				from_new = o->which == W_NEW && (o->mask & IN_MOVED_FROM) &&
					   strncmp(e->name, o->name, ol) == 0 &&
					   (e->name[ol] == '\0' || strcmp(e->name + ol, ":2,") == 0);
			}
			if (from_new)
				continue;
		}
		f->dirty = true;
	}
	pending_clear(f);
	f->own = false;
}

void
web_folder_change_begin(struct web_folder *f)
{
	struct web_cache *c = f->cache;

	pthread_mutex_lock(&c->lock);
	cache_drain(c); /* what came before is someone else's */
	bool watched = f->watched;
	if (watched) {
		f->own = true;
		pending_clear(f);
	}
	pthread_mutex_unlock(&c->lock);
	/* without watches, as IMAP's STORE: our change need not cost a
	 * rescan when nobody else changed the folder since the snapshot */
	f->clean = !watched && !mailbox_changed(f->mb);
}

void
web_folder_change_end(struct web_folder *f, const char *from, const char *to)
{
	struct web_cache *c = f->cache;
	bool watched;

	pthread_mutex_lock(&c->lock);
	cache_drain(c);
	watched = f->watched;
	if (f->own) {
		/* ours: cur/from renamed to cur/to, or cur/from unlinked (to NULL) */
		for (size_t k = 0; k < f->n_pending && !f->dirty; k++) {
			const struct pending *e = &f->pending[k];
			bool mine = e->which == W_CUR && from != NULL &&
				    (((e->mask & (IN_MOVED_FROM | IN_DELETE)) && strcmp(e->name, from) == 0) ||
				     ((e->mask & IN_MOVED_TO) && to != NULL && strcmp(e->name, to) == 0));
			if (!mine)
				f->dirty = true;
		}
		pending_clear(f);
		f->own = false;
	}
	pthread_mutex_unlock(&c->lock);
	if (!watched && f->clean)
		mailbox_restamp(f->mb);
	f->clean = false;
}

/* ------------------------------------------------------------ the cache */

struct web_cache *
web_cache_new(void)
{
	struct web_cache *c = xcalloc(1, sizeof(*c));

	pthread_mutex_init(&c->lock, NULL);
	c->by_dir = g_hash_table_new(g_str_hash, g_str_equal);
	c->by_wd = g_hash_table_new(g_direct_hash, g_direct_equal);
	c->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (c->ifd < 0)
		log_errno(LOG_LEVEL_WARN, "web cache: no inotify, folders are checked by their stamps only");
	TAILQ_INIT(&c->lru);
	return c;
}

void
web_cache_free(struct web_cache **cp)
{
	struct web_cache *c = *cp;
	struct web_folder *f;

	*cp = NULL;
	if (c == NULL)
		return;
	while ((f = TAILQ_FIRST(&c->lru)) != NULL) {
		TAILQ_REMOVE(&c->lru, f, lru);
		watch_remove(c, f);
		folder_free(f);
	}
	if (c->ifd >= 0)
		close(c->ifd);
	g_hash_table_destroy(c->by_wd);
	g_hash_table_destroy(c->by_dir);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* drop entry f (cache lock held, nobody holds f) */
static void
cache_drop(struct web_cache *c, struct web_folder *f)
{
	TAILQ_REMOVE(&c->lru, f, lru);
	g_hash_table_remove(c->by_dir, f->dir);
	watch_remove(c, f);
	c->n--;
	c->bytes -= f->accounted;
	c->evictions++;
	folder_free(f);
}

/* the bounds, least recently used first, sparing held entries */
static void
cache_trim(struct web_cache *c, size_t folders_max, size_t bytes_max)
{
	struct web_folder *f = TAILQ_LAST(&c->lru, web_folder_lru), *prev;

	for (; f != NULL && (c->n > folders_max || c->bytes > bytes_max); f = prev) {
		prev = TAILQ_PREV(f, web_folder_lru, lru);
		if (f->users == 0)
			cache_drop(c, f);
	}
}

int
web_cache_open(struct web_cache *c, const char *dir, long folders_max, long bytes_max,
	       struct web_folder **folder_r, char **error_r)
{
	struct web_folder *f = NULL;
	bool scanned = false;

	*folder_r = NULL;
	pthread_mutex_lock(&c->lock);
	c->n_max = folders_max > 0 ? (size_t)folders_max : 0;
	c->bytes_max = bytes_max > 0 ? (size_t)bytes_max : 0;
	if (folders_max > 0)
		f = g_hash_table_lookup(c->by_dir, dir);
	if (f != NULL) {
		TAILQ_REMOVE(&c->lru, f, lru);
		TAILQ_INSERT_HEAD(&c->lru, f, lru);
	} else {
		f = folder_new(dir);
		f->cache = c;
		if (folders_max > 0) {
			f->cached = true;
			g_hash_table_insert(c->by_dir, f->dir, f);
			TAILQ_INSERT_HEAD(&c->lru, f, lru);
			c->n++;
			watch_add(c, f); /* before the first snapshot: nothing after it is missed */
		}
	}
	f->users++;
	pthread_mutex_unlock(&c->lock);

	pthread_mutex_lock(&f->lock);
	pthread_mutex_lock(&c->lock);
	cache_drain(c);
	bool watched = f->watched;
	bool need = f->mb == NULL || (watched && f->dirty);
	if (watched && need) {
		f->dirty = false;
		f->own = true; /* the sync's own moves and list writes */
		pending_clear(f);
	}
	pthread_mutex_unlock(&c->lock);
	if (!watched && f->mb != NULL)
		need = mailbox_changed(f->mb);
	int rc = need ? folder_sync(f, &scanned, error_r) : 0;
	pthread_mutex_lock(&c->lock);
	if (watched && need) {
		cache_drain(c);
		if (f->own)
			own_sync_settle(f);
		if (rc < 0)
			f->dirty = true;
	}
	if (rc == 0 && f->rewatch && f->cached) {
		/* the directories are there now: watches on them, and one more
		 * scan (what changed between this one and the watches is unseen) */
		f->rewatch = false;
		watch_add(c, f);
	}
	if (rc == 0 && scanned)
		c->scans++;
	else if (rc == 0)
		c->hits++;
	pthread_mutex_unlock(&c->lock);
	if (rc < 0) {
		web_cache_close(c, &f);
		return -1;
	}
	*folder_r = f;
	return 0;
}
void
web_cache_close(struct web_cache *c, struct web_folder **fp)
{
	struct web_folder *f = *fp;

	*fp = NULL;
	if (f == NULL)
		return;
	size_t bytes = f->bytes;
	unsigned long reads = f->reads;
	f->reads = 0;
	pthread_mutex_unlock(&f->lock);

	pthread_mutex_lock(&c->lock);
	c->reads += reads;
	f->users--;
	if (!f->cached) {
		pthread_mutex_unlock(&c->lock);
		folder_free(f);
		return;
	}
	c->bytes += bytes;
	c->bytes -= f->accounted;
	f->accounted = bytes;
	/* the limits as the last open gave them (a reload applies at once) */
	cache_trim(c, c->n_max, c->bytes_max);
	pthread_mutex_unlock(&c->lock);
}

void
web_cache_stats(struct web_cache *c, struct web_cache_stats *st)
{
	pthread_mutex_lock(&c->lock);
	st->hits = c->hits;
	st->scans = c->scans;
	st->reads = c->reads;
	st->evictions = c->evictions;
	st->folders = c->n;
	st->bytes = c->bytes;
	st->watched = 0;
	struct web_folder *f;
	TAILQ_FOREACH(f, &c->lru, lru)
		st->watched += f->watched;
	pthread_mutex_unlock(&c->lock);
}
