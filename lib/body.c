/*
 * body.c — a message body being received, kept in memory up to a threshold
 * and spilled to an unlinked temp file in the spool directory beyond it.
 *
 * The session appends on its loop thread; once sealed the body is immutable
 * and may be read from any thread (stages, the worker pool doing a Maildir
 * delivery). A spilled body is mapped read-only the first time its contents
 * are asked for, under a mutex, so several workers asking at once share one
 * mapping. The spill file never has a name (O_TMPFILE, or mkstemp followed at
 * once by unlink), so a crash leaves nothing behind in the spool. Any write
 * error is sticky: a body that lost bytes must never be delivered, so every
 * later append and the seal fail with the same errno (ENOSPC lets the session
 * answer 452 4.3.1).
 *
 * The body is reference-counted (see lib.h): jobs on the worker pool hold
 * their own reference, so the last of the session, a delivery and a scan to
 * let go frees it. It also carries a few lazily built views — lib/mime.c's
 * parsed MIME tree, lib/msgtext.c's text views built from that tree — each
 * made once and freed with the body; body.c only knows them as pointers and
 * free functions, keyed by the function that builds them, so the body itself
 * does not depend on GMime.
 *
 * A view's build may ask for another view (the text views parse the MIME
 * tree first), so each view has its own lock: view_lock only guards the
 * table of slots and is never held while a build runs, and a slot's lock is
 * held while its view is built, which makes the others who ask for it wait.
 * A slot is never given back before the body is freed, so a pointer to it
 * stays good without view_lock.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lib/lib.h"

/* The first allocation: most bodies are a few kilobytes. */
#define BODY_INITIAL_CAP 4096
/* How many kinds of view a body can carry: the program has a fixed few
 * (the MIME tree, the text views), so running out is a programming error. */
#define BODY_VIEWS_MAX 4

struct body_view {
	void *(*build)(struct msgbody *b); /* the key; NULL while the slot is free */
	void (*free_view)(void *view);
	pthread_mutex_t lock;              /* held while the view is built */
	bool built;
	void *view;
};

struct msgbody {
	atomic_int refcount;
	char *spool_dir;
	size_t threshold;

	/* in memory: buf holds all `size` bytes; spilled: buf is NULL */
	char *buf;
	size_t cap;

	int fd;            /* the spill file, -1 while in memory */
	uint64_t size;
	bool sealed;
	int error;         /* sticky errno of a failed append/spill, 0 if none */

	/* a spilled body's read-only mapping, made once under map_lock */
	pthread_mutex_t map_lock;
	const char *map;
	size_t map_len;

	/* the lazily built views; view_lock guards which slot is whose */
	pthread_mutex_t view_lock;
	struct body_view views[BODY_VIEWS_MAX];
};

struct msgbody *msgbody_new(const char *spool_dir, size_t spill_threshold)
{
	struct msgbody *b = xcalloc(1, sizeof(*b));

	/* a missing spool dir is only an error once a spill is needed */
	b->spool_dir = xstrdup(spool_dir != NULL && *spool_dir != '\0' ? spool_dir : "/tmp");
	b->threshold = spill_threshold;
	b->fd = -1;
	atomic_init(&b->refcount, 1);
	pthread_mutex_init(&b->map_lock, NULL);
	pthread_mutex_init(&b->view_lock, NULL);
	for (size_t i = 0; i < BODY_VIEWS_MAX; i++)
		pthread_mutex_init(&b->views[i].lock, NULL);
	return b;
}

struct msgbody *msgbody_ref(struct msgbody *b)
{
	atomic_fetch_add_explicit(&b->refcount, 1, memory_order_relaxed);
	return b;
}

/* Write all of data, retrying after EINTR and short writes. */
static int body_write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			/* no progress and no reason given: treat as a full disk */
			errno = ENOSPC;
			return -1;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* An unnamed read-write file in dir, or -1 (errno). */
static int body_open_spill_file(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd >= 0)
		return fd;
	/* Only a file system or kernel without O_TMPFILE support deserves the
	 * fallback; a missing or unwritable directory fails the same way there. */
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
		return -1;

	char *path = xasprintf("%s/mxguard-body.XXXXXX", dir);

	fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0) {
		int saved = errno;

		free(path);
		errno = saved;
		return -1;
	}
	if (unlink(path) < 0) {
		int saved = errno;

		close(fd);
		free(path);
		errno = saved;
		return -1;
	}
	free(path);
	return fd;
}

/* Move what is in memory to a new spill file. */
static int body_spill(struct msgbody *b)
{
	int fd = body_open_spill_file(b->spool_dir);

	if (fd < 0)
		return -1;
	if (body_write_all(fd, b->buf, (size_t)b->size) < 0) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	b->fd = fd;
	free(b->buf);
	b->buf = NULL;
	b->cap = 0;
	return 0;
}

/* Make room for `need` bytes in memory; need never exceeds the threshold. */
static void body_reserve(struct msgbody *b, size_t need)
{
	if (need <= b->cap)
		return;

	size_t cap = b->cap > 0 ? b->cap : BODY_INITIAL_CAP;

	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	if (cap > b->threshold)
		cap = b->threshold;
	if (cap < need)
		cap = need;
	b->buf = xrealloc(b->buf, cap);
	b->cap = cap;
}

int msgbody_append(struct msgbody *b, const void *data, size_t len)
{
	if (b->error != 0) {
		errno = b->error;
		return -1;
	}
	if (b->sealed) {
		errno = EINVAL;
		return -1;
	}
	if (len == 0)
		return 0;
	if (len > UINT64_MAX - b->size) {
		errno = EFBIG;
		return -1;
	}

	if (b->fd < 0 && b->size + len <= b->threshold) {
		body_reserve(b, (size_t)b->size + len);
		memcpy(b->buf + b->size, data, len);
		b->size += len;
		return 0;
	}

	if (b->fd < 0 && body_spill(b) < 0) {
		b->error = errno;
		return -1;
	}
	if (body_write_all(b->fd, data, len) < 0) {
		/* part of data may be in the file: the body is now unusable */
		b->error = errno;
		return -1;
	}
	b->size += len;
	return 0;
}

int msgbody_seal(struct msgbody *b)
{
	if (b->error != 0) {
		errno = b->error;
		return -1;
	}
	b->sealed = true;
	return 0;
}

uint64_t msgbody_size(const struct msgbody *b)
{
	return b->size;
}

bool msgbody_spilled(const struct msgbody *b)
{
	return b->fd >= 0;
}

const char *msgbody_contents(struct msgbody *b, size_t *len_r)
{
	*len_r = 0;
	if (b->error != 0) {
		errno = b->error;
		return NULL;
	}
	/* Reading while the owner still appends would race; the contract is
	 * "sealed first". */
	if (!b->sealed) {
		errno = EINVAL;
		return NULL;
	}
	if (b->size == 0)
		return "";
	if (b->fd < 0) {
		*len_r = (size_t)b->size;
		return b->buf;
	}
	if (b->size > SIZE_MAX) {
		errno = EFBIG;
		return NULL;
	}

	const char *map;
	int map_errno = 0;

	pthread_mutex_lock(&b->map_lock);
	if (b->map == NULL) {
		void *p = mmap(NULL, (size_t)b->size, PROT_READ, MAP_SHARED, b->fd, 0);

		/* a failure (ENOMEM) is not remembered: a later call may succeed */
		if (p != MAP_FAILED) {
			b->map = p;
			b->map_len = (size_t)b->size;
		} else {
			map_errno = errno;
		}
	}
	map = b->map;
	pthread_mutex_unlock(&b->map_lock);
	if (map == NULL) {
		errno = map_errno;
		return NULL;
	}
	*len_r = b->map_len;
	return map;
}

/* The slot of the view `build` makes: the one it already has, else a free
 * one given to it now. */
static struct body_view *body_view_slot(struct msgbody *b, void *(*build)(struct msgbody *b),
					bool claim)
{
	struct body_view *slot = NULL;

	pthread_mutex_lock(&b->view_lock);
	for (size_t i = 0; i < BODY_VIEWS_MAX && slot == NULL; i++) {
		if (b->views[i].build == build)
			slot = &b->views[i];
		else if (b->views[i].build == NULL && claim) {
			b->views[i].build = build;
			slot = &b->views[i];
		} else if (b->views[i].build == NULL)
			break;
	}
	pthread_mutex_unlock(&b->view_lock);
	if (slot == NULL && claim) {
		log_msg(LOG_LEVEL_ERR, "msgbody: more than %d kinds of view", BODY_VIEWS_MAX);
		abort();
	}
	return slot;
}

void *msgbody_view(struct msgbody *b, void *(*build)(struct msgbody *b),
		   void (*free_view)(void *view))
{
	struct body_view *slot;
	void *view;

	/* the view is of the finished message: asking early builds nothing
	 * (and remembers nothing) */
	if (!b->sealed || b->error != 0)
		return NULL;
	slot = body_view_slot(b, build, true);
	pthread_mutex_lock(&slot->lock);
	if (!slot->built) {
		slot->view = build(b);
		slot->free_view = free_view;
		slot->built = true;
	}
	view = slot->view;
	pthread_mutex_unlock(&slot->lock);
	return view;
}

bool msgbody_view_built_by(struct msgbody *b, void *(*build)(struct msgbody *b))
{
	struct body_view *slot = body_view_slot(b, build, false);
	bool built = false;

	if (slot != NULL) {
		pthread_mutex_lock(&slot->lock);
		built = slot->built;
		pthread_mutex_unlock(&slot->lock);
	}
	return built;
}

bool msgbody_view_built(struct msgbody *b)
{
	bool built = false;

	/* slots are claimed in order and never given back: the first free one
	 * ends the list */
	for (size_t i = 0; i < BODY_VIEWS_MAX && !built; i++) {
		void *(*build)(struct msgbody *b);

		pthread_mutex_lock(&b->view_lock);
		build = b->views[i].build;
		pthread_mutex_unlock(&b->view_lock);
		if (build == NULL)
			break;
		built = msgbody_view_built_by(b, build);
	}
	return built;
}

static void body_destroy(struct msgbody *b)
{
	/* views keep no pointers into each other (the text views copy what
	 * they keep of the MIME tree), so any order will do */
	for (size_t i = 0; i < BODY_VIEWS_MAX; i++) {
		struct body_view *v = &b->views[i];

		if (v->built && v->view != NULL && v->free_view != NULL)
			v->free_view(v->view);
		pthread_mutex_destroy(&v->lock);
	}
	if (b->map != NULL)
		munmap((void *)b->map, b->map_len);
	if (b->fd >= 0)
		close(b->fd);
	pthread_mutex_destroy(&b->map_lock);
	pthread_mutex_destroy(&b->view_lock);
	free(b->buf);
	free(b->spool_dir);
	free(b);
}

void msgbody_unref(struct msgbody **bp)
{
	struct msgbody *b = *bp;

	if (b == NULL)
		return;
	*bp = NULL;
	/* acq_rel: the thread that frees must see every other thread's last
	 * use of the body (a worker's read, the view it built) */
	if (atomic_fetch_sub_explicit(&b->refcount, 1, memory_order_acq_rel) == 1)
		body_destroy(b);
}

void msgbody_free(struct msgbody **bp)
{
	msgbody_unref(bp);
}
