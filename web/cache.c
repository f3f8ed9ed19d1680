/*
 * cache.c — the web service's folder cache (cache.h): per Maildir folder
 * its snapshot, re-taken only when the folder's stamps changed, and the
 * list rows of the messages already read, keyed by the file's base name.
 *
 * Locking: cache->lock guards the table, the LRU list, each entry's
 * `users`, `accounted` and `cached`, and the totals; an entry's own
 * mutex guards its snapshot, rows and `bytes`. An entry is only freed
 * with cache->lock held and users == 0, so nobody holds or waits for its
 * mutex then. The order is always cache->lock, then (not nested: released
 * first) the entry's mutex — never both at once in the other order.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
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
	/* under the cache's lock */
	unsigned users;              /* holders and waiters */
	size_t accounted;            /* bytes as last added to the total */
	bool cached;                 /* in the table (false: the cache is off) */
	TAILQ_ENTRY(web_folder) lru;
};

struct web_cache {
	pthread_mutex_t lock;
	GHashTable *by_dir; /* dir -> entry (the key is entry->dir) */
	TAILQ_HEAD(web_folder_lru, web_folder) lru; /* most recently used first */
	size_t n, bytes;
	size_t n_max, bytes_max;      /* the bounds the last open gave */
	unsigned long hits, scans, reads, evictions;
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
	buf = xmalloc(cap + 1);
	while (len < cap) {
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
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

/* The folder current: a new snapshot when its stamps changed, the rows
 * of the messages it still has carried over, the others dropped. */
static int
folder_sync(struct web_folder *f, bool *scanned_r, char **error_r)
{
	struct mailbox *nmb = NULL;

	*scanned_r = false;
	if (f->mb != NULL && !mailbox_changed(f->mb))
		return 0;
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

bool
web_folder_clean(struct web_folder *f)
{
	return !mailbox_changed(f->mb);
}

void
web_folder_restamp(struct web_folder *f)
{
	mailbox_restamp(f->mb);
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

/* ------------------------------------------------------------ the cache */

struct web_cache *
web_cache_new(void)
{
	struct web_cache *c = xcalloc(1, sizeof(*c));

	pthread_mutex_init(&c->lock, NULL);
	c->by_dir = g_hash_table_new(g_str_hash, g_str_equal);
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
		folder_free(f);
	}
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
		if (folders_max > 0) {
			f->cached = true;
			g_hash_table_insert(c->by_dir, f->dir, f);
			TAILQ_INSERT_HEAD(&c->lru, f, lru);
			c->n++;
		}
	}
	f->users++;
	pthread_mutex_unlock(&c->lock);

	pthread_mutex_lock(&f->lock);
	if (folder_sync(f, &scanned, error_r) < 0) {
		web_cache_close(c, &f);
		return -1;
	}
	pthread_mutex_lock(&c->lock);
	if (scanned)
		c->scans++;
	else
		c->hits++;
	pthread_mutex_unlock(&c->lock);
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
	pthread_mutex_unlock(&c->lock);
}
