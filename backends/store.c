/*
 * store.c — the Maildir store as a backend: mxguard's own mailboxes.
 *
 * RCPT: postmaster@ every local domain goes to the postmaster mailbox
 * (RFC 5321 4.5.1); any other recipient must be a user of the passwd-file;
 * its Maildir root is built from the validated parts only. DATA: one copy
 * per mailbox (postmaster@a and postmaster@b, or the postmaster's own
 * address, are one mailbox) into INBOX or the junk folder, or a single copy
 * into the quarantine Maildir with every recipient on its own
 * X-MXGuard-Recipient: line so that a release can reach all of them. The
 * delivery itself (maildir_deliver: write, fsync, rename, fsync the
 * directories) runs on the worker pool's delivery lane; its result becomes
 * the reply: 250 only when every copy is on disk.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/backends.h"
#include "lib/metrics.h"

struct store {
	struct backend hdr; /* must be first */
	struct userdb *db;  /* borrowed: outlives the store */
	char *mail_root;
	char *junk_folder;
	char *quarantine_dir;
	char *postmaster;   /* the mailbox postmaster@ goes to */
	char size_kw[48];
	const char *ehlo[3];
};

/* A delivery in flight: owned by the worker job until its completion; a
 * prepared one then waits in the transaction (tx->priv) for commit(). */
struct store_job {
	struct maildir_job job;
	backend_done_cb *done;
	void *ctx;
	char id[MX_ID_LEN];
	enum { STORE_DELIVER, STORE_PREPARE, STORE_COMMIT, STORE_DISCARD } step;
	struct backend_tx *tx;
	int rc;
	/* a quarantine copy: its metadata, written between prepare and commit */
	char *qdir;
	struct quarantine_meta *meta;
	bool meta_written;
};

#define store_reply backend_reply_set

/* ------------------------------------------------------------- create */

struct postmaster_find {
	const struct mx_config *cfg;
	char *found;
};

static void
postmaster_find_cb(const char *user, void *ctx)
{
	struct postmaster_find *pf = ctx;
	const char *at = strrchr(user, '@');

	if (pf->found == NULL && at != NULL && backends_is_local_domain(pf->cfg, at + 1))
		pf->found = xstrdup(user);
}

/* Who gets postmaster@<local domain>: the configured mailbox, else the
 * first passwd-file user of a local domain, else the config is refused. */
static char *
store_find_postmaster(const struct mx_config *cfg, char **error_r)
{
	struct postmaster_find pf = { cfg, NULL };

	const struct backends_settings *bs = backends_settings(cfg);

	if (bs->postmaster[0] != '\0')
		return xstrdup(bs->postmaster);
	if (bs->n_local_domains == 0)
		return xstrdup(""); /* relay only: postmaster@ goes upstream */
	if (userdb_file_list(bs->passwd_file, postmaster_find_cb, &pf, error_r) < 0)
		return NULL;
	if (pf.found == NULL)
		*error_r = xasprintf("%s: postmaster: no mailbox for postmaster@%s (%s has no user "
				     "of a local domain); set postmaster = \"user@%s\"",
				     cfg->path, bs->local_domains[0], bs->passwd_file,
				     bs->local_domains[0]);
	return pf.found;
}

static void
store_destroy(struct backend *be)
{
	struct store *s = (struct store *)be;

	free(s->mail_root);
	free(s->junk_folder);
	free(s->quarantine_dir);
	free(s->postmaster);
	free(s);
}

static int
store_create(const struct mx_config *cfg, const struct backends_route *route, struct userdb *db,
	     struct backend **be_r, char **error_r)
{
	struct store *s = xcalloc(1, sizeof(*s));

	(void)route;
	s->postmaster = store_find_postmaster(cfg, error_r);
	if (s->postmaster == NULL) {
		free(s);
		return -1;
	}
	s->db = db;
	const struct backends_settings *bs = backends_settings(cfg);
	s->mail_root = xstrdup(bs->mail_root);
	s->junk_folder = xstrdup(bs->junk_folder);
	s->quarantine_dir = xstrdup(bs->quarantine_dir);
	snprintf(s->size_kw, sizeof(s->size_kw), "SIZE %ld", bs->message_size_max);
	s->ehlo[0] = s->size_kw;
	s->ehlo[1] = "8BITMIME";
	s->ehlo[2] = NULL;
	*be_r = &s->hdr;
	return 0;
}

static const char *const *
store_ehlo(const struct backend *be)
{
	return ((const struct store *)be)->ehlo;
}

/* --------------------------------------------------------------- RCPT */

static enum backend_status
store_rcpt(struct backend_tx *tx, const char *local, const char *domain,
	   struct backend_rcpt *rcpt, struct backend_reply *reply, backend_rcpt_cb *cb, void *ctx)
{
	struct store *s = (struct store *)tx->be;

	(void)cb;
	(void)ctx;
	char root[4096];
	char *address = xasprintf("%s@%s", local, domain);
	const char *mailbox = address;

	if (strcmp(local, "postmaster") == 0) {
		mailbox = s->postmaster;
	} else {
		int found = userdb_exists(s->db, local, domain);
		if (found < 0) {
			store_reply(reply, 451, "4.3.0", "lookup_failure",
				    "<%s>: Temporary lookup failure", address);
			free(address);
			return BACKEND_DONE;
		}
		if (found == 0) {
			store_reply(reply, 550, "5.1.1", "unknown_user",
				    "<%s>: Recipient address rejected: User unknown", address);
			free(address);
			return BACKEND_DONE;
		}
	}
	const char *at = strrchr(mailbox, '@');
	char *mlocal = at != NULL ? xstrndup(mailbox, (size_t)(at - mailbox)) : NULL;
	int bad = mlocal == NULL || mlocal[0] == '\0' ||
		  maildir_user_path(s->mail_root, mlocal, at + 1, root, sizeof(root)) < 0;
	free(mlocal);
	if (bad) {
		store_reply(reply, 550, "5.1.3", "bad_mailbox", "<%s>: Recipient address not accepted",
			    address);
		free(address);
		return BACKEND_DONE;
	}
	rcpt->address = address;
	rcpt->mailbox = xstrdup(mailbox);
	rcpt->where = xstrdup(root);
	store_reply(reply, 250, "2.1.5", "", "Ok");
	return BACKEND_DONE; /* a passwd-file lookup: never waits */
}

/* --------------------------------------------------------------- DATA */

static void
store_job_free(struct store_job *sj)
{
	for (size_t i = 0; i < sj->job.n_targets; i++) {
		free(sj->job.targets[i].root);
		free(sj->job.targets[i].folder);
		free(sj->job.targets[i].headers);
		free(sj->job.targets[i].name);
	}
	free(sj->job.targets);
	free((char *)sj->job.prefix);
	free((char *)sj->job.authserv_id);
	msgbody_unref(&sj->job.body);
	bool prepared = sj->job.copies != NULL;
	maildir_job_free_results(&sj->job);
	if (prepared && sj->meta_written)
		(void)quarantine_meta_remove(sj->qdir, sj->meta->id); /* never committed */
	if (sj->meta != NULL)
		quarantine_meta_clear(sj->meta);
	free(sj->meta);
	free(sj->qdir);
	free(sj);
}

/* The message is durable in tmp/: its metadata goes to meta/ (durable too)
 * before the message becomes visible in new/ — never a message without
 * metadata. */
static int
store_write_meta(struct store_job *sj)
{
	char *error = NULL;

	if (quarantine_meta_write(sj->qdir, sj->meta, sj->job.fsync, &error) < 0) {
		sj->job.error = errno != 0 ? errno : EIO;
		str_copy(sj->job.error_text, error != NULL ? error : "quarantine: metadata",
			 sizeof(sj->job.error_text));
		free(error);
		(void)quarantine_meta_remove(sj->qdir, sj->meta->id);
		return -1;
	}
	sj->meta_written = true;
	return 0;
}

static int
store_prepare_job(struct store_job *sj)
{
	if (maildir_prepare(&sj->job) < 0)
		return -1;
	if (sj->meta != NULL && store_write_meta(sj) < 0) {
		int err = sj->job.error;
		char text[sizeof(sj->job.error_text)];
		str_copy(text, sj->job.error_text, sizeof(text));
		(void)maildir_commit(&sj->job, false);
		sj->job.error = err;
		str_copy(sj->job.error_text, text, sizeof(sj->job.error_text));
		return -1;
	}
	return 0;
}

static int
store_commit_job(struct store_job *sj, bool keep)
{
	int rc = maildir_commit(&sj->job, keep);

	/* metadata whose message did not make it into new/ goes too */
	if ((rc < 0 || !keep) && sj->meta_written)
		(void)quarantine_meta_remove(sj->qdir, sj->meta->id);
	sj->meta_written = rc == 0 && keep;
	return rc;
}

static void
store_work(void *arg)
{
	struct store_job *sj = arg;

	switch (sj->step) {
	case STORE_DELIVER:
		sj->rc = store_prepare_job(sj);
		if (sj->rc == 0)
			sj->rc = store_commit_job(sj, true);
		break;
	case STORE_PREPARE:
		sj->rc = store_prepare_job(sj);
		break;
	case STORE_COMMIT:
	case STORE_DISCARD:
		sj->rc = store_commit_job(sj, sj->step == STORE_COMMIT);
		break;
	}
	if (sj->rc == 0 && (sj->step == STORE_DELIVER || sj->step == STORE_COMMIT))
		metrics_add(sj->meta != NULL ? METRIC_MESSAGES_QUARANTINED :
			    METRIC_MESSAGES_DELIVERED, 1);
}

static void
store_done(void *arg)
{
	struct store_job *sj = arg;
	struct backend_reply r;
	backend_done_cb *done = sj->done;
	void *ctx = sj->ctx;
	char detail[sizeof(sj->job.error_text)];

	memset(&r, 0, sizeof(r));
	str_copy(detail, sj->job.error != 0 ? sj->job.error_text : "", sizeof(detail));
	if (sj->job.error == 0)
		store_reply(&r, 250, "2.0.0", "", "Ok: queued as %s", sj->id);
	else if (sj->job.error == ENOSPC || sj->job.error == EDQUOT)
		store_reply(&r, 452, "4.3.1", "disk_full", "Insufficient system storage");
	else
		store_reply(&r, 451, "4.3.0", "delivery_error", "Local delivery failed; try again later");
	if (sj->step == STORE_PREPARE && sj->rc == 0)
		sj->tx->priv = sj; /* waits for commit() */
	else
		store_job_free(sj);
	done(ctx, &r, detail);
}

/* One copy, every recipient on its own line. */
static char *
store_quarantine_headers(const struct backend_message *msg)
{
	char *hdr = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&hdr, &len);

	if (f == NULL)
		abort(); /* only fails without memory */
	fprintf(f, "Return-Path: <%s>\n", msg->from);
	for (size_t i = 0; i < msg->n_rcpts; i++)
		fprintf(f, "X-MXGuard-Recipient: %s\n", msg->rcpts[i].address);
	if (fclose(f) != 0)
		abort();
	return hdr;
}

/* What the quarantine keeps beside the message (backends/quarantine.c). */
static struct quarantine_meta *
store_quarantine_meta(const struct backend_tx *tx, const struct backend_message *msg)
{
	struct quarantine_meta *m = xcalloc(1, sizeof(*m));
	const struct backend_verdict *why = msg->why;

	str_copy(m->id, msg->id, sizeof(m->id));
	m->time = (long long)time(NULL);
	m->client_addr = xstrdup(tx->client_addr != NULL ? tx->client_addr : "");
	m->client_port = tx->client_port;
	m->helo = xstrdup(tx->helo != NULL ? tx->helo : "");
	m->from = xstrdup(msg->from);
	m->rcpts = xcalloc(msg->n_rcpts + 1, sizeof(*m->rcpts));
	for (size_t i = 0; i < msg->n_rcpts; i++)
		m->rcpts[m->n_rcpts++] = xstrdup(msg->rcpts[i].address);
	m->verdict = xstrdup(why != NULL && why->verdict != NULL ? why->verdict : "quarantine");
	m->action = xstrdup(why != NULL && why->action != NULL ? why->action : "quarantine");
	m->score = why != NULL ? why->score : 0.0;
	m->hits = xstrdup(why != NULL && why->hits != NULL ? why->hits : "");
	m->reason = xstrdup(why != NULL && why->reason != NULL ? why->reason : "");
	m->size = msgbody_size(msg->body);
	return m;
}

static struct store_job *
store_job_new(struct backend_tx *tx, const struct backend_message *msg, backend_done_cb *done,
	      void *ctx)
{
	struct store *s = (struct store *)tx->be;
	struct store_job *sj = xcalloc(1, sizeof(*sj));
	struct maildir_job *job = &sj->job;

	sj->tx = tx;
	sj->done = done;
	sj->ctx = ctx;
	str_copy(sj->id, msg->id, sizeof(sj->id));
	if (msg->folder == BACKEND_FOLDER_QUARANTINE) {
		job->n_targets = 1;
		job->targets = xcalloc(1, sizeof(*job->targets));
		job->targets[0].root = xstrdup(s->quarantine_dir);
		job->targets[0].headers = store_quarantine_headers(msg);
		job->targets[0].name = xstrdup(msg->id);
		sj->qdir = xstrdup(s->quarantine_dir);
		sj->meta = store_quarantine_meta(tx, msg);
	} else {
		job->targets = xcalloc(msg->n_rcpts, sizeof(*job->targets));
		for (size_t i = 0; i < msg->n_rcpts; i++) {
			bool seen = false;
			for (size_t k = 0; k < i && !seen; k++)
				seen = strcmp(msg->rcpts[k].mailbox, msg->rcpts[i].mailbox) == 0;
			if (seen)
				continue;
			struct maildir_target *t = &job->targets[job->n_targets++];
			t->root = xstrdup(msg->rcpts[i].where);
			t->folder = msg->folder == BACKEND_FOLDER_JUNK ? xstrdup(s->junk_folder) : NULL;
			t->headers = xasprintf("Return-Path: <%s>\nDelivered-To: %s\n", msg->from,
					       msg->rcpts[i].mailbox);
		}
	}
	job->prefix = xstrndup(msg->prefix, msg->prefix_len);
	job->prefix_len = msg->prefix_len;
	job->authserv_id = msg->authserv_id != NULL ? xstrdup(msg->authserv_id) : NULL;
	job->body = msgbody_ref(msg->body);
	job->fsync = true;
	return sj;
}

static void
store_submit(struct store_job *sj)
{
	const struct backend_env *env = &sj->tx->env;

	/* the delivery lane never refuses a job */
	(void)workers_submit(env->workers, WORKER_LANE_DELIVERY, env->base, store_work, store_done,
			     sj);
}

static void
store_data(struct backend_tx *tx, const struct backend_message *msg, backend_done_cb *done,
	   void *ctx)
{
	struct store_job *sj = store_job_new(tx, msg, done, ctx);

	sj->step = STORE_DELIVER;
	store_submit(sj);
}

static void
store_prepare(struct backend_tx *tx, const struct backend_message *msg, backend_done_cb *done,
	      void *ctx)
{
	struct store_job *sj = store_job_new(tx, msg, done, ctx);

	sj->step = STORE_PREPARE;
	store_submit(sj);
}

static void
store_commit(struct backend_tx *tx, bool keep, backend_done_cb *done, void *ctx)
{
	struct store_job *sj = tx->priv;

	tx->priv = NULL;
	sj->step = keep ? STORE_COMMIT : STORE_DISCARD;
	sj->done = done;
	sj->ctx = ctx;
	store_submit(sj);
}

/* A prepared delivery never committed is thrown away (its tmp/ files). */
static void
store_tx_end(struct backend_tx *tx)
{
	struct store_job *sj = tx->priv;

	if (sj != NULL)
		store_job_free(sj);
	tx->priv = NULL;
}

const struct backend_ops store_backend_ops = {
	.name = "store",
	.create = store_create,
	.destroy = store_destroy,
	.ehlo = store_ehlo,
	.rcpt = store_rcpt,
	.data = store_data,
	.prepare = store_prepare,
	.commit = store_commit,
	.tx_end = store_tx_end,
};
