/*
 * states.c — which shared states a loop uses, and for how many of its
 * connections.
 *
 * A loop makes each state current on its own thread (daemon_loop_install:
 * the program's per-loop start hook runs here), new connections take the
 * current one, and a state nobody on the loop uses any more — and that is
 * no longer current — is stopped on this loop (the per-loop stop hook) and
 * let go. Only the loop's own thread touches its list; no locks.
 *
 * The connection layer (conn.c) and the loops (daemon.c) both use this
 * file; it uses neither.
 */
#include "config.h"

#include <stdlib.h>

#include "daemon/daemon-internal.h"

struct loop_state *
daemon_loop_state_take(struct daemon_loop *loop)
{
	loop->current->users++;
	return loop->current;
}

/* Drop one user; a state nobody on this loop uses any more (and that is
 * not the current one) is stopped on this loop and let go. */
void
daemon_loop_state_drop(struct daemon_loop *loop, struct loop_state *ls)
{
	const struct daemon_app *app = loop->core->app;
	struct loop_state **pp;

	if (ls->users > 0 || ls == loop->current)
		return;
	for (pp = &loop->states; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == ls) {
			*pp = ls->next;
			break;
		}
	}
	if (app->state_loop_stop != NULL)
		app->state_loop_stop(ls->st, loop);
	app->state_unref(&ls->st);
	free(ls);
}

void
daemon_loop_state_release(struct daemon_loop *loop, struct loop_state **lsp)
{
	struct loop_state *ls = *lsp;

	*lsp = NULL;
	if (ls == NULL)
		return;
	ls->users--;
	daemon_loop_state_drop(loop, ls);
}

/* On the loop thread: make st (one reference, handed over) current. */
int
daemon_loop_install(struct daemon_loop *loop, struct server_state *st)
{
	const struct daemon_app *app = loop->core->app;
	struct loop_state *ls, *old = loop->current;
	char *error = NULL;

	if (app->state_loop_start != NULL && app->state_loop_start(st, loop, &error) < 0) {
		log_msg(LOG_LEVEL_ERR, "loop %u keeps its running configuration: %s", loop->index,
			error);
		free(error);
		app->state_unref(&st);
		return -1;
	}
	ls = xcalloc(1, sizeof(*ls));
	ls->st = st;
	ls->next = loop->states;
	loop->states = ls;
	loop->current = ls;
	if (old != NULL)
		daemon_loop_state_drop(loop, old);
	return 0;
}

/* ------------------------------- holds (services that own their socket) */

struct daemon_hold {
	struct loop_state *ls;
};

struct daemon_hold *
daemon_hold(struct daemon_loop *loop)
{
	struct daemon_hold *h;

	if (loop->shutting_down || loop->current == NULL)
		return NULL;
	h = xcalloc(1, sizeof(*h));
	h->ls = daemon_loop_state_take(loop);
	/* counted like a connection: the shutdown waits for it */
	atomic_fetch_add(&loop->core->n_conns, 1);
	return h;
}

struct server_state *
daemon_hold_state(const struct daemon_hold *h)
{
	return h->ls->st;
}

void
daemon_release(struct daemon_loop *loop, struct daemon_hold **hp)
{
	struct daemon_hold *h = *hp;

	*hp = NULL;
	if (h == NULL)
		return;
	daemon_loop_state_release(loop, &h->ls);
	atomic_fetch_sub(&loop->core->n_conns, 1);
	free(h);
}
