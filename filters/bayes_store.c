/*
 * bayes_store.c — the classifier's local store: one SQLite database per
 * scope (the site's, or one user's).
 *
 *   tokens(tok INTEGER PRIMARY KEY, spam INTEGER, ham INTEGER, atime INTEGER)
 *   seen(digest BLOB PRIMARY KEY, class INTEGER) WITHOUT ROWID
 *   meta(k TEXT PRIMARY KEY, v INTEGER)     nspam, nham, counter
 *
 * No index on atime: measured, it was larger than the table itself (random
 * inserts leave its pages half full); expiry, which runs only when a
 * store holds more than max_tokens, sorts the table instead.
 * tok is the token's 64-bit hash (bayes_hash) as the rowid, so a token row
 * is the hash, two counts and the learn counter: measured in doc/learning.md.
 * atime is meta.counter (messages learnt so far) when the token was last
 * learnt; scoring does not write. WAL mode: the daemon's readers and a
 * writer (mxguardctl, autolearn) run at once; a writer waits up to 10 s for
 * another (busy timeout). Every learn is one transaction (BEGIN IMMEDIATE),
 * so counts and totals never disagree.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "filters/bayes.h"
#include "lib/lib.h"

struct bayes_store {
	struct bayes_redis *redis; /* set: the Redis store, db unused */
	sqlite3 *db;
	char *path;
	sqlite3_stmt *get_tok, *get_meta, *get_seen, *put_seen, *add_meta, *set_meta, *add_tok;
	bool batch;   /* inside bayes_store_batch(): learns are savepoints */
	unsigned n_batch;
	/* Count increments not yet written (learning adds 1 to a token's
	 * class count; a batch of messages shares most tokens, so each is
	 * written once per flush, in rowid order): an open-addressing table
	 * keyed by the token hash. Decrements (unlearn, relearn) flush first and go
	 * straight to SQLite, so the clamping at 0 is exact. */
	struct pending {
		uint64_t tok;
		uint32_t spam, ham;
		int64_t atime;
		bool used;
	} *pend;
	size_t pend_cap, pend_n;
	/* Counts read before, kept while nothing changed the database: the
	 * common words of one message are the common words of the next.
	 * Valid while SQLite's data_version (which moves when another
	 * connection commits) stays what it was and this handle wrote
	 * nothing; at most CACHE_MAX entries, then it starts again. */
	struct cached {
		uint64_t tok;
		uint32_t spam, ham;
		bool used;
	} *cache;
	size_t cache_cap, cache_n;
	int64_t cache_version;
	sqlite3_stmt *get_version;
};

#define CACHE_MAX (1u << 16) /* entries (24 octets each); 2^17 slots */

static const char schema[] =
	"PRAGMA journal_mode=WAL;"
	/* in WAL mode NORMAL loses at most the last learns at a power cut,
	 * never the database */
	"PRAGMA synchronous=NORMAL;"
	"CREATE TABLE IF NOT EXISTS tokens(tok INTEGER PRIMARY KEY, spam INTEGER NOT NULL,"
	" ham INTEGER NOT NULL, atime INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS seen(digest BLOB PRIMARY KEY, class INTEGER NOT NULL)"
	" WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
	"INSERT OR IGNORE INTO meta VALUES('nspam', 0), ('nham', 0), ('counter', 0),"
	" ('version', 1);";

static char *db_error(struct bayes_store *st, const char *what)
{
	return xasprintf("%s: %s: %s", st->path, what, sqlite3_errmsg(st->db));
}

struct bayes_store *bayes_store_open(const char *path, bool readonly, char **error_r)
{
	struct bayes_store *st = xcalloc(1, sizeof(*st));
	int flags = readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;

	st->path = xstrdup(path);
	flags |= SQLITE_OPEN_NOMUTEX; /* one thread at a time per handle */
	if (sqlite3_open_v2(path, &st->db, flags, NULL) != SQLITE_OK) {
		*error_r = st->db != NULL ? db_error(st, "open") :
			   xasprintf("%s: open: out of memory", path);
		goto fail;
	}
	sqlite3_busy_timeout(st->db, 10000);
	if (!readonly && sqlite3_exec(st->db, schema, NULL, NULL, NULL) != SQLITE_OK) {
		*error_r = db_error(st, "schema");
		goto fail;
	}
	if (sqlite3_prepare_v2(st->db, "SELECT spam, ham FROM tokens WHERE tok = ?", -1,
			       &st->get_tok, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(st->db, "SELECT v FROM meta WHERE k = ?", -1,
			       &st->get_meta, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(st->db, "SELECT class FROM seen WHERE digest = ?", -1,
			       &st->get_seen, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(st->db, "PRAGMA data_version", -1, &st->get_version,
			       NULL) != SQLITE_OK) {
		*error_r = db_error(st, "prepare");
		goto fail;
	}
	if (!readonly &&
	    (sqlite3_prepare_v2(st->db, "INSERT OR REPLACE INTO seen(digest, class) VALUES(?, ?)",
				-1, &st->put_seen, NULL) != SQLITE_OK ||
	     sqlite3_prepare_v2(st->db, "UPDATE meta SET v = max(v + ?2, 0) WHERE k = ?1", -1,
				&st->add_meta, NULL) != SQLITE_OK ||
	     sqlite3_prepare_v2(st->db, "UPDATE meta SET v = ?2 WHERE k = ?1", -1,
				&st->set_meta, NULL) != SQLITE_OK ||
	     sqlite3_prepare_v2(st->db, "INSERT INTO tokens(tok, spam, ham, atime)"
				" VALUES(?1, ?2, ?3, ?4) ON CONFLICT(tok) DO UPDATE SET"
				" spam = spam + ?2, ham = ham + ?3, atime = ?4", -1,
				&st->add_tok, NULL) != SQLITE_OK)) {
		*error_r = db_error(st, "prepare");
		goto fail;
	}
	return st;
fail:
	bayes_store_close(&st);
	return NULL;
}

struct bayes_store *bayes_store_open_redis(const char *addr, const char *prefix,
					   const char *scope, long timeout_ms, char **error_r)
{
	struct bayes_redis *r = bayes_redis_open(addr, prefix, scope, timeout_ms, error_r);
	struct bayes_store *st;

	if (r == NULL)
		return NULL;
	st = xcalloc(1, sizeof(*st));
	st->redis = r;
	st->path = xasprintf("redis:%s", scope);
	return st;
}

bool bayes_store_broken(const struct bayes_store *st)
{
	return st->redis != NULL && bayes_redis_broken(st->redis);
}

void bayes_store_close(struct bayes_store **stp)
{
	struct bayes_store *st = *stp;

	if (st == NULL)
		return;
	bayes_redis_close(&st->redis);
	sqlite3_finalize(st->get_tok);
	sqlite3_finalize(st->get_meta);
	sqlite3_finalize(st->get_seen);
	sqlite3_finalize(st->get_version);
	free(st->cache);
	sqlite3_finalize(st->put_seen);
	sqlite3_finalize(st->add_meta);
	sqlite3_finalize(st->set_meta);
	sqlite3_finalize(st->add_tok);
	sqlite3_close(st->db);
	free(st->pend);
	free(st->path);
	free(st);
	*stp = NULL;
}

static int meta_get(struct bayes_store *st, const char *k, int64_t *v)
{
	int rc;

	sqlite3_reset(st->get_meta);
	sqlite3_bind_text(st->get_meta, 1, k, -1, SQLITE_STATIC);
	rc = sqlite3_step(st->get_meta);
	*v = rc == SQLITE_ROW ? sqlite3_column_int64(st->get_meta, 0) : 0;
	sqlite3_reset(st->get_meta);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

int bayes_store_totals(struct bayes_store *st, uint32_t *n_spam, uint32_t *n_ham)
{
	int64_t s = 0, h = 0;

	if (st->redis != NULL)
		return bayes_redis_totals(st->redis, n_spam, n_ham);
	if (sqlite3_exec(st->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		return -1;
	int r = meta_get(st, "nspam", &s) < 0 || meta_get(st, "nham", &h) < 0 ? -1 : 0;
	sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL);
	*n_spam = s > 0 ? (uint32_t)s : 0;
	*n_ham = h > 0 ? (uint32_t)h : 0;
	return r;
}

static void cache_clear(struct bayes_store *st)
{
	if (st->cache != NULL && st->cache_n > 0)
		memset(st->cache, 0, st->cache_cap * sizeof(*st->cache));
	st->cache_n = 0;
}

static struct cached *cache_slot(struct bayes_store *st, uint64_t tok)
{
	size_t mask = st->cache_cap - 1, i = (size_t)(tok ^ (tok >> 31)) & mask;

	while (st->cache[i].used && st->cache[i].tok != tok)
		i = (i + 1) & mask;
	return &st->cache[i];
}

static void cache_put(struct bayes_store *st, uint64_t tok, uint32_t spam, uint32_t ham)
{
	struct cached *e;

	if (st->cache_n >= CACHE_MAX)
		cache_clear(st);
	if ((st->cache_n + 1) * 2 > st->cache_cap) {
		struct cached *old = st->cache;
		size_t oldcap = st->cache_cap;
		st->cache_cap = oldcap == 0 ? 4096 : oldcap * 2;
		st->cache = xcalloc(st->cache_cap, sizeof(*st->cache));
		for (size_t i = 0; i < oldcap; i++) {
			if (old[i].used)
				*cache_slot(st, old[i].tok) = old[i];
		}
		free(old);
	}
	e = cache_slot(st, tok);
	if (!e->used)
		st->cache_n++;
	*e = (struct cached){ .tok = tok, .spam = spam, .ham = ham, .used = true };
}

/* The database's data_version, read inside the caller's read
 * transaction; -1 on error. */
static int64_t data_version(struct bayes_store *st)
{
	int64_t v = -1;

	if (sqlite3_step(st->get_version) == SQLITE_ROW)
		v = sqlite3_column_int64(st->get_version, 0);
	sqlite3_reset(st->get_version);
	return v;
}

int bayes_store_lookup(struct bayes_store *st, const uint64_t *hash, size_t n,
		       struct bayes_count *out)
{
	int ret = 0;
	int64_t meta = 0;

	if (st->redis != NULL)
		return bayes_redis_lookup(st->redis, hash, n, out);
	/* one read transaction: one snapshot, one lock (measured, no faster:
	 * the tokens in rowid order; one "tok IN (64 values)" statement per
	 * 64 tokens instead of one run per token). A first read opens the
	 * snapshot, then data_version says whether the cache is still it. */
	if (sqlite3_exec(st->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		return -1;
	int64_t v = meta_get(st, "counter", &meta) < 0 ? -1 : data_version(st);
	if (v < 0) {
		sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL);
		return -1;
	}
	if (v != st->cache_version) {
		cache_clear(st);
		st->cache_version = v;
	}
	for (size_t i = 0; i < n; i++) {
		int rc;
		if (st->cache_n > 0) {
			struct cached *e = cache_slot(st, hash[i]);
			if (e->used) {
				out[i].spam = e->spam;
				out[i].ham = e->ham;
				continue;
			}
		}
		sqlite3_reset(st->get_tok);
		sqlite3_bind_int64(st->get_tok, 1, (sqlite3_int64)hash[i]);
		rc = sqlite3_step(st->get_tok);
		if (rc == SQLITE_ROW) {
			out[i].spam = (uint32_t)sqlite3_column_int64(st->get_tok, 0);
			out[i].ham = (uint32_t)sqlite3_column_int64(st->get_tok, 1);
		} else if (rc == SQLITE_DONE) {
			out[i].spam = out[i].ham = 0;
		} else {
			ret = -1;
			break;
		}
		cache_put(st, hash[i], out[i].spam, out[i].ham);
	}
	if (ret < 0)
		cache_clear(st);
	sqlite3_reset(st->get_tok);
	sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL);
	return ret;
}

static int exec1(struct bayes_store *st, const char *sql, int64_t a, int64_t b)
{
	sqlite3_stmt *s;
	int rc;

	if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK)
		return -1;
	if (sqlite3_bind_parameter_count(s) >= 1)
		sqlite3_bind_int64(s, 1, a);
	if (sqlite3_bind_parameter_count(s) >= 2)
		sqlite3_bind_int64(s, 2, b);
	rc = sqlite3_step(s);
	sqlite3_finalize(s);
	return rc == SQLITE_DONE ? 0 : -1;
}

/* Run a prepared statement (bound by the caller) to its end. */
static int step_done(sqlite3_stmt *s)
{
	int rc = sqlite3_step(s);

	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return rc == SQLITE_DONE ? 0 : -1;
}

static int meta_add(struct bayes_store *st, const char *k, int64_t delta)
{
	sqlite3_bind_text(st->add_meta, 1, k, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st->add_meta, 2, delta);
	return step_done(st->add_meta);
}

static int tok_write(struct bayes_store *st, uint64_t tok, uint32_t spam, uint32_t ham,
		     int64_t atime)
{
	sqlite3_bind_int64(st->add_tok, 1, (sqlite3_int64)tok);
	sqlite3_bind_int64(st->add_tok, 2, spam);
	sqlite3_bind_int64(st->add_tok, 3, ham);
	sqlite3_bind_int64(st->add_tok, 4, atime);
	return step_done(st->add_tok);
}

static size_t pend_slot(const struct bayes_store *st, uint64_t tok)
{
	size_t mask = st->pend_cap - 1, i = (size_t)(tok ^ (tok >> 29)) & mask;

	while (st->pend[i].used && st->pend[i].tok != tok)
		i = (i + 1) & mask;
	return i;
}

static void pend_grow(struct bayes_store *st)
{
	struct pending *old = st->pend;
	size_t oldcap = st->pend_cap;

	st->pend_cap = oldcap == 0 ? 4096 : oldcap * 2;
	st->pend = xcalloc(st->pend_cap, sizeof(*st->pend));
	for (size_t i = 0; i < oldcap; i++) {
		if (old[i].used)
			st->pend[pend_slot(st, old[i].tok)] = old[i];
	}
	free(old);
}

/* Remember +1 for cls on every token (written by pend_flush()). */
static void pend_add(struct bayes_store *st, const struct bayes_tokens *toks,
		     enum bayes_class cls, int64_t now)
{
	for (size_t i = 0; i < toks->n; i++) {
		uint64_t h = toks->hash[i];
		if ((st->pend_n + 1) * 2 > st->pend_cap)
			pend_grow(st);
		struct pending *e = &st->pend[pend_slot(st, h)];
		if (!e->used) {
			*e = (struct pending){ .tok = h, .used = true };
			st->pend_n++;
		}
		if (cls == BAYES_SPAM)
			e->spam++;
		else
			e->ham++;
		e->atime = now;
	}
}

static int by_tok(const void *a, const void *b)
{
	const struct pending *x = a, *y = b;
	int64_t u = (int64_t)x->tok, v = (int64_t)y->tok; /* rowid order */

	return u < v ? -1 : u > v ? 1 : 0;
}

/* Write the pending increments (inside the caller's transaction), in
 * rowid order so the B-tree is walked once; all or nothing (a
 * savepoint): on failure they stay pending. */
static int pend_flush(struct bayes_store *st)
{
	size_t m = 0;
	int ret = 0;

	if (st->pend_n == 0)
		return 0;
	for (size_t i = 0; i < st->pend_cap; i++) {
		if (st->pend[i].used)
			st->pend[m++] = st->pend[i];
	}
	qsort(st->pend, m, sizeof(*st->pend), by_tok);
	if (sqlite3_exec(st->db, "SAVEPOINT flush", NULL, NULL, NULL) != SQLITE_OK)
		ret = -1;
	for (size_t i = 0; i < m && ret == 0; i++)
		ret = tok_write(st, st->pend[i].tok, st->pend[i].spam, st->pend[i].ham,
				st->pend[i].atime);
	if (ret == 0 && sqlite3_exec(st->db, "RELEASE flush", NULL, NULL, NULL) != SQLITE_OK)
		ret = -1;
	if (ret < 0) {
		sqlite3_exec(st->db, "ROLLBACK TO flush; RELEASE flush", NULL, NULL, NULL);
		/* keep them: put the table back together */
		struct pending *keep = xmalloc((m + 1) * sizeof(*keep));
		memcpy(keep, st->pend, m * sizeof(*keep));
		memset(st->pend, 0, st->pend_cap * sizeof(*st->pend));
		for (size_t i = 0; i < m; i++)
			st->pend[pend_slot(st, keep[i].tok)] = keep[i];
		free(keep);
		return -1;
	}
	memset(st->pend, 0, st->pend_cap * sizeof(*st->pend));
	st->pend_n = 0;
	return 0;
}

static void pend_drop(struct bayes_store *st)
{
	if (st->pend != NULL)
		memset(st->pend, 0, st->pend_cap * sizeof(*st->pend));
	st->pend_n = 0;
}

/* Subtract 1 from the class column of every token (not below 0); rows
 * that reach 0/0 go. Rare (unlearn, relearn): one statement a token. */
static int untoken(struct bayes_store *st, const struct bayes_tokens *toks,
		   enum bayes_class cls)
{
	const char *down = cls == BAYES_SPAM ?
		"UPDATE tokens SET spam = spam - 1 WHERE tok = ?1 AND spam > 0" :
		"UPDATE tokens SET ham = ham - 1 WHERE tok = ?1 AND ham > 0";
	sqlite3_stmt *s, *del = NULL;
	int ret = 0;

	if (sqlite3_prepare_v2(st->db, down, -1, &s, NULL) != SQLITE_OK)
		return -1;
	if (sqlite3_prepare_v2(st->db, "DELETE FROM tokens WHERE tok = ?1 AND"
			       " spam = 0 AND ham = 0", -1, &del, NULL) != SQLITE_OK) {
		sqlite3_finalize(s);
		return -1;
	}
	for (size_t i = 0; i < toks->n && ret == 0; i++) {
		sqlite3_reset(s);
		sqlite3_bind_int64(s, 1, (sqlite3_int64)toks->hash[i]);
		if (sqlite3_step(s) != SQLITE_DONE)
			ret = -1;
		if (ret == 0) {
			sqlite3_reset(del);
			sqlite3_bind_int64(del, 1, (sqlite3_int64)toks->hash[i]);
			if (sqlite3_step(del) != SQLITE_DONE)
				ret = -1;
		}
	}
	sqlite3_finalize(s);
	sqlite3_finalize(del);
	return ret;
}

static const char *class_key(enum bayes_class cls)
{
	return cls == BAYES_SPAM ? "nspam" : "nham";
}

/* The class the digest was learnt as, -1 for none, -2 on error. */
static int64_t seen_class(struct bayes_store *st, const unsigned char digest[32])
{
	int64_t was = -1;
	int rc;

	sqlite3_bind_blob(st->get_seen, 1, digest, 32, SQLITE_STATIC);
	rc = sqlite3_step(st->get_seen);
	if (rc == SQLITE_ROW)
		was = sqlite3_column_int64(st->get_seen, 0);
	else if (rc != SQLITE_DONE)
		was = -2;
	sqlite3_reset(st->get_seen);
	sqlite3_clear_bindings(st->get_seen);
	return was;
}

enum bayes_learn_result bayes_store_learn(struct bayes_store *st, const unsigned char digest[32],
					  const struct bayes_tokens *toks, enum bayes_class cls,
					  bool unlearn, char **error_r)
{
	sqlite3_stmt *s = NULL;
	enum bayes_learn_result res;
	int64_t was, counter = 0;
	bool add = false;

	if (st->redis != NULL)
		return bayes_redis_learn(st->redis, digest, toks, cls, unlearn, error_r);
	if (st->put_seen == NULL) {
		*error_r = xasprintf("%s: opened read-only", st->path);
		return BAYES_ERROR;
	}
	cache_clear(st); /* this handle's own writes do not move data_version */
	if (!st->batch &&
	    sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
		*error_r = db_error(st, "begin");
		return BAYES_ERROR;
	}
	/* (read before the savepoint: a decrement must first write what a
	 * batch has pending, and that must not be undone with this learn) */
	if ((was = seen_class(st, digest)) == -2)
		goto fail_nosp;
	if ((unlearn ? was >= 0 : was >= 0 && was != (int64_t)cls) && pend_flush(st) < 0)
		goto fail_nosp;
	if (st->batch && sqlite3_exec(st->db, "SAVEPOINT learn", NULL, NULL, NULL) != SQLITE_OK)
		goto fail_nosp;
	if (meta_get(st, "counter", &counter) < 0)
		goto fail;

	if (unlearn) {
		if (was < 0) {
			res = BAYES_NOT_LEARNT;
			goto commit;
		}
		cls = was == BAYES_SPAM ? BAYES_SPAM : BAYES_HAM;
		if (untoken(st, toks, cls) < 0 || meta_add(st, class_key(cls), -1) < 0)
			goto fail;
		if (sqlite3_prepare_v2(st->db, "DELETE FROM seen WHERE digest = ?", -1, &s,
				       NULL) != SQLITE_OK)
			goto fail;
		sqlite3_bind_blob(s, 1, digest, 32, SQLITE_STATIC);
		if (sqlite3_step(s) != SQLITE_DONE)
			goto fail;
		res = BAYES_UNLEARNT;
		goto commit;
	}
	if (was == (int64_t)cls) {
		res = BAYES_ALREADY;
		goto commit;
	}
	counter++;
	if (was >= 0) {
		/* learnt as the other class: move it */
		enum bayes_class other = cls == BAYES_SPAM ? BAYES_HAM : BAYES_SPAM;
		if (untoken(st, toks, other) < 0 || meta_add(st, class_key(other), -1) < 0)
			goto fail;
	}
	if (meta_add(st, class_key(cls), 1) < 0)
		goto fail;
	sqlite3_bind_text(st->set_meta, 1, "counter", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st->set_meta, 2, counter);
	if (step_done(st->set_meta) < 0)
		goto fail;
	sqlite3_bind_blob(st->put_seen, 1, digest, 32, SQLITE_STATIC);
	sqlite3_bind_int(st->put_seen, 2, (int)cls);
	if (step_done(st->put_seen) < 0)
		goto fail;
	add = true; /* the counts: once nothing else can fail */
	res = was >= 0 ? BAYES_RELEARNT : BAYES_LEARNT;
commit:
	sqlite3_finalize(s);
	if (st->batch) {
		if (sqlite3_exec(st->db, "RELEASE learn", NULL, NULL, NULL) != SQLITE_OK) {
			*error_r = db_error(st, "commit");
			sqlite3_exec(st->db, "ROLLBACK TO learn; RELEASE learn", NULL, NULL, NULL);
			return BAYES_ERROR;
		}
		if (add)
			pend_add(st, toks, cls, counter);
	} else {
		if (add)
			pend_add(st, toks, cls, counter);
		if (pend_flush(st) < 0 ||
		    sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
			*error_r = db_error(st, "commit");
			sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
			pend_drop(st);
			return BAYES_ERROR;
		}
	}
	/* a batch commits every BAYES_BATCH learns, so a long run neither
	 * holds the write lock for long nor keeps everything in its log */
	if (st->batch && ++st->n_batch >= BAYES_BATCH) {
		if (bayes_store_batch(st, false) < 0 || bayes_store_batch(st, true) < 0) {
			*error_r = db_error(st, "commit");
			return BAYES_ERROR;
		}
	}
	return res;
fail:
	*error_r = db_error(st, "learn");
	sqlite3_finalize(s);
	if (st->batch)
		sqlite3_exec(st->db, "ROLLBACK TO learn; RELEASE learn", NULL, NULL, NULL);
	else
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return BAYES_ERROR;
fail_nosp:
	*error_r = db_error(st, "learn");
	if (!st->batch)
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return BAYES_ERROR;
}

int bayes_store_batch(struct bayes_store *st, bool on)
{
	if (st->redis != NULL || st->batch == on)
		return 0;
	if ((!on && pend_flush(st) < 0) ||
	    sqlite3_exec(st->db, on ? "BEGIN IMMEDIATE" : "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
		if (!on)
			sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
		pend_drop(st);
		st->batch = false;
		return -1;
	}
	st->batch = on;
	st->n_batch = 0;
	return 0;
}

static int64_t count_rows(struct bayes_store *st, const char *sql)
{
	sqlite3_stmt *s;
	int64_t n = -1;

	if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK)
		return -1;
	if (sqlite3_step(s) == SQLITE_ROW)
		n = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return n;
}

long bayes_store_expire(struct bayes_store *st, uint64_t max_tokens)
{
	int64_t n, drop;

	if (st->redis != NULL)
		return 0; /* no per-field expiry in Redis 7.0: doc/learning.md */
	n = count_rows(st, "SELECT count(*) FROM tokens");

	if (n < 0)
		return -1;
	if ((uint64_t)n <= max_tokens)
		return 0;
	cache_clear(st);
	drop = n - (int64_t)(max_tokens / 4 * 3);
	if (exec1(st, "DELETE FROM tokens WHERE tok IN (SELECT tok FROM tokens ORDER BY atime"
		  " LIMIT ?1)", drop, 0) < 0)
		return -1;
	return (long)drop;
}

int bayes_store_stats(struct bayes_store *st, struct bayes_store_stats *out)
{
	int64_t c = 0;
	struct stat sb;

	if (st->redis != NULL)
		return bayes_redis_stats(st->redis, out);
	memset(out, 0, sizeof(*out));
	if (bayes_store_totals(st, &out->n_spam, &out->n_ham) < 0 || meta_get(st, "counter", &c) < 0)
		return -1;
	out->learn_counter = (uint64_t)c;
	int64_t nt = count_rows(st, "SELECT count(*) FROM tokens");
	int64_t ns = count_rows(st, "SELECT count(*) FROM seen");
	if (nt < 0 || ns < 0)
		return -1;
	out->n_tokens = (uint64_t)nt;
	out->n_seen = (uint64_t)ns;
	/* the database and its write-ahead log */
	if (stat(st->path, &sb) == 0)
		out->file_bytes = (uint64_t)sb.st_size;
	char *wal = xasprintf("%s-wal", st->path);
	if (stat(wal, &sb) == 0)
		out->file_bytes += (uint64_t)sb.st_size;
	free(wal);
	return 0;
}
