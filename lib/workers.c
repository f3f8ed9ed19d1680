/*
 * workers.c — a fixed pool of threads for blocking work.
 *
 * Jobs go into one FIFO; a worker runs job->work, then posts job->done back
 * to the event loop that submitted it with event_base_once(), which libevent
 * makes thread-safe once evthread_use_pthreads() has been called (the
 * daemon and the tests do that first). The loop threads thus never block on
 * disk: an fsync happens here and its completion arrives as a loop event.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/time.h>

#include <event2/event.h>

#include "lib/lib.h"

struct job {
	struct job *next;
	struct event_base *base;
	void (*work)(void *arg);
	void (*done)(void *arg);
	void *arg;
};

struct workers {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, *tail;
	bool stopping;
	unsigned n_threads;
	pthread_t *threads;
};

static void
job_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct job *job = arg;

	job->done(job->arg);
	free(job);
}

static void *
workers_main(void *arg)
{
	struct workers *w = arg;
	static const struct timeval now = { 0, 0 };

	for (;;) {
		pthread_mutex_lock(&w->lock);
		while (w->head == NULL && !w->stopping)
			pthread_cond_wait(&w->cond, &w->lock);
		struct job *job = w->head;
		if (job == NULL) {
			pthread_mutex_unlock(&w->lock);
			return NULL;
		}
		w->head = job->next;
		if (w->head == NULL)
			w->tail = NULL;
		pthread_mutex_unlock(&w->lock);

		job->work(job->arg);
		if (job->done == NULL) {
			free(job);
		} else if (event_base_once(job->base, -1, EV_TIMEOUT, job_done_cb, job, &now) != 0) {
			/* cannot post back: the owner's loop is gone, and running
			 * done here would race with it; this is a bug, stop loudly */
			log_msg(LOG_LEVEL_ERR, "workers: cannot post completion to its loop");
			abort();
		}
	}
}

struct workers *
workers_create(unsigned n_threads)
{
	struct workers *w = xcalloc(1, sizeof(*w));

	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	w->n_threads = n_threads == 0 ? 1 : n_threads;
	w->threads = xcalloc(w->n_threads, sizeof(pthread_t));
	for (unsigned i = 0; i < w->n_threads; i++) {
		if (pthread_create(&w->threads[i], NULL, workers_main, w) != 0) {
			log_errno(LOG_LEVEL_ERR, "workers: pthread_create");
			abort();
		}
	}
	return w;
}

void
workers_submit(struct workers *w, struct event_base *base,
	       void (*work)(void *arg), void (*done)(void *arg), void *arg)
{
	struct job *job = xcalloc(1, sizeof(*job));

	job->base = base;
	job->work = work;
	job->done = done;
	job->arg = arg;
	pthread_mutex_lock(&w->lock);
	if (w->tail != NULL)
		w->tail->next = job;
	else
		w->head = job;
	w->tail = job;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

void
workers_destroy(struct workers **wp)
{
	struct workers *w = *wp;

	*wp = NULL;
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	for (unsigned i = 0; i < w->n_threads; i++)
		pthread_join(w->threads[i], NULL);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	free(w->threads);
	free(w);
}
