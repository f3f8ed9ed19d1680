/*
 * workers.c — a fixed pool of threads for blocking work, in two lanes.
 *
 * The delivery lane runs the fsyncs of Maildir deliveries; the scan lane
 * runs CPU-heavy stage work (a ClamAV scan, a large body regex). Each lane
 * has its own threads and its own FIFO, so a burst of scans can never make
 * a delivery — whose client is waiting for its 250 — queue behind them. The
 * scan lane's FIFO is bounded: a submit to a full scan lane fails at once
 * (EAGAIN) and the stage answers CHECK_FAILED, which its on_error policy
 * turns into a tempfail or an accept, instead of letting work pile up
 * without limit. The delivery lane is not bounded: a delivery is only ever
 * submitted for a message the session already holds, and dropping one would
 * lose it.
 *
 * A worker runs job->work, then posts job->done back to the event loop that
 * submitted it with event_base_once(), which libevent makes thread-safe once
 * evthread_use_pthreads() has been called (the daemon and the tests do that
 * first). The loop threads thus never block on disk or CPU.
 *
 * Every job is counted from submit until its done() returned (or, without
 * done, until work() returned): workers_pending() is what the daemon's
 * shutdown waits on before it lets its loops go.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/time.h>

#include <event2/event.h>

#include "lib/lib.h"

/* Scan jobs queued (not yet running) per scan thread when the caller did
 * not choose a bound. */
#define WORKERS_SCAN_QUEUE_PER_THREAD 16

struct job {
	struct job *next;
	struct workers *w;
	struct event_base *base;
	void (*work)(void *arg);
	void (*done)(void *arg);
	void *arg;
};

/* One lane: its threads share one FIFO. */
struct lane {
	struct workers *w;
	pthread_cond_t cond;
	struct job *head, *tail;
	size_t queued;
	size_t queue_max; /* 0: unbounded */
	unsigned n_threads;
	pthread_t *threads;
};

struct workers {
	pthread_mutex_t lock; /* both lanes' queues and `stopping` */
	bool stopping;
	struct lane lanes[WORKER_LANE_COUNT];
	atomic_size_t pending;
};

static void job_finish(struct job *job)
{
	struct workers *w = job->w;

	free(job);
	atomic_fetch_sub_explicit(&w->pending, 1, memory_order_acq_rel);
}

static void job_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct job *job = arg;

	job->done(job->arg);
	job_finish(job);
}

static void *workers_main(void *arg)
{
	struct lane *lane = arg;
	struct workers *w = lane->w;
	static const struct timeval now = { 0, 0 };

	for (;;) {
		pthread_mutex_lock(&w->lock);
		while (lane->head == NULL && !w->stopping)
			pthread_cond_wait(&lane->cond, &w->lock);
		struct job *job = lane->head;
		if (job == NULL) {
			pthread_mutex_unlock(&w->lock);
			return NULL;
		}
		lane->head = job->next;
		if (lane->head == NULL)
			lane->tail = NULL;
		lane->queued--;
		pthread_mutex_unlock(&w->lock);

		job->work(job->arg);
		if (job->done == NULL) {
			job_finish(job);
		} else if (event_base_once(job->base, -1, EV_TIMEOUT, job_done_cb, job, &now) != 0) {
			/* cannot post back: the owner's loop is gone, and running
			 * done here would race with it; this is a bug, stop loudly */
			log_msg(LOG_LEVEL_ERR, "workers: cannot post completion to its loop");
			abort();
		}
	}
}

static void lane_start(struct workers *w, struct lane *lane, unsigned n_threads,
		       size_t queue_max)
{
	lane->w = w;
	pthread_cond_init(&lane->cond, NULL);
	lane->n_threads = n_threads == 0 ? 1 : n_threads;
	lane->queue_max = queue_max;
	lane->threads = xcalloc(lane->n_threads, sizeof(pthread_t));
	for (unsigned i = 0; i < lane->n_threads; i++) {
		if (pthread_create(&lane->threads[i], NULL, workers_main, lane) != 0) {
			log_errno(LOG_LEVEL_ERR, "workers: pthread_create");
			abort();
		}
	}
}

struct workers *workers_create(unsigned n_delivery, unsigned n_scan, size_t scan_queue_max)
{
	struct workers *w = xcalloc(1, sizeof(*w));

	pthread_mutex_init(&w->lock, NULL);
	atomic_init(&w->pending, 0);
	if (n_scan == 0)
		n_scan = n_delivery == 0 ? 1 : n_delivery;
	if (scan_queue_max == 0)
		scan_queue_max = (size_t)n_scan * WORKERS_SCAN_QUEUE_PER_THREAD;
	lane_start(w, &w->lanes[WORKER_LANE_DELIVERY], n_delivery, 0);
	lane_start(w, &w->lanes[WORKER_LANE_SCAN], n_scan, scan_queue_max);
	return w;
}

int workers_submit(struct workers *w, enum worker_lane lane_id, struct event_base *base,
		   void (*work)(void *arg), void (*done)(void *arg), void *arg)
{
	struct lane *lane;
	struct job *job;

	if ((unsigned)lane_id >= WORKER_LANE_COUNT) {
		errno = EINVAL;
		return -1;
	}
	lane = &w->lanes[lane_id];
	job = xcalloc(1, sizeof(*job));
	job->w = w;
	job->base = base;
	job->work = work;
	job->done = done;
	job->arg = arg;
	pthread_mutex_lock(&w->lock);
	if (lane->queue_max != 0 && lane->queued >= lane->queue_max) {
		pthread_mutex_unlock(&w->lock);
		free(job);
		errno = EAGAIN;
		return -1;
	}
	/* counted before a worker can see it, so pending never dips below
	 * the truth */
	atomic_fetch_add_explicit(&w->pending, 1, memory_order_acq_rel);
	if (lane->tail != NULL)
		lane->tail->next = job;
	else
		lane->head = job;
	lane->tail = job;
	lane->queued++;
	pthread_cond_signal(&lane->cond);
	pthread_mutex_unlock(&w->lock);
	return 0;
}

size_t workers_pending(const struct workers *w)
{
	return atomic_load_explicit(&((struct workers *)w)->pending, memory_order_acquire);
}

void workers_destroy(struct workers **wp)
{
	struct workers *w = *wp;

	*wp = NULL;
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	for (unsigned l = 0; l < WORKER_LANE_COUNT; l++)
		pthread_cond_broadcast(&w->lanes[l].cond);
	pthread_mutex_unlock(&w->lock);
	for (unsigned l = 0; l < WORKER_LANE_COUNT; l++) {
		struct lane *lane = &w->lanes[l];

		for (unsigned i = 0; i < lane->n_threads; i++)
			pthread_join(lane->threads[i], NULL);
		pthread_cond_destroy(&lane->cond);
		free(lane->threads);
	}
	pthread_mutex_destroy(&w->lock);
	free(w);
}
