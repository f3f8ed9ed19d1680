/*
 * session.c — the IMAP4rev1 session (RFC 3501) with IDLE (2177), UIDPLUS
 * (4315), MOVE (6851), NAMESPACE (2342), ID (2971), ENABLE (5161),
 * LITERAL+ (7888), SPECIAL-USE (6154), CHILDREN (3348), UNSELECT (3691)
 * and SASL-IR (4959).
 *
 * A session lives on one loop thread over the connection layer. A
 * command is assembled from its lines and literals under caps
 * (command_line_max a line, command_max a command, append_max an APPEND
 * message; a synchronising literal over its cap is refused before the
 * client sends it, a LITERAL+ one ends the session), then parsed by
 * parse.c and looked up in the command table, which says in which states
 * it is allowed.
 *
 * Everything that touches the file system is a job on the worker pool
 * (the password check on the scan lane, the rest on the delivery lane),
 * and the session is busy until its completion is back on the loop, so
 * commands are answered in order. A job builds its whole reply (untagged
 * and tagged lines) in an evbuffer and owns the selected mailbox while it
 * runs. FETCH goes in batches of about FETCH_BATCH octets, the next only
 * while the client keeps up, so a FETCH 1:* BODY[] holds one batch of
 * memory.
 *
 * Other sessions' changes and new deliveries: at the end of every job
 * that may report expunges (all but FETCH, STORE, SEARCH and COPY by
 * sequence number, RFC 3501 7.4.1), the selected folder's stamp (three
 * stats: new/, cur/, the UID list) is compared with the snapshot's; only
 * when it differs is the folder scanned again and the difference
 * reported (EXPUNGE, EXISTS, FETCH FLAGS). Our own renames and unlinks
 * take the stamp again when nothing else had changed before them, so a
 * STORE does not cost a rescan. During IDLE an inotify watch on new/ and
 * cur/ wakes the session at once.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "backends/backends.h"
#include "daemon/daemon.h"
#include "imap/imap.h"
#include "lib/metrics.h"
#include "mailbox/mailbox.h"

/* Output queued beyond this stops command processing until it drains. */
#define IMAP_OUTPUT_MAX (512 * 1024)
/* A FETCH batch: about this much reply per job ... */
#define FETCH_BATCH (256 * 1024)
/* ... and the next batch while less than this is queued. */
#define FETCH_QUEUE (512 * 1024)
#define IMAP_USER_MAX (SMTP_LOCAL_MAX + 1 + SMTP_DOMAIN_MAX)

enum imap_state { I_NOTAUTH = 0, I_AUTH, I_SELECTED, I_LOGOUT };
#define S_NA (1u << I_NOTAUTH)
#define S_AU (1u << I_AUTH)
#define S_SE (1u << I_SELECTED)
#define S_ANY (S_NA | S_AU | S_SE)

enum imap_flags_bits {
	I_F_BUSY = 0x01,
	I_F_TLS = 0x02,
	I_F_SHUTDOWN = 0x04,
	I_F_JOB = 0x08,
	I_F_IDLE = 0x10,
	I_F_SASL = 0x20,
	I_F_IDLE_DIRTY = 0x40, /* inotify fired while a job ran */
};

static const char capability_common[] =
	"IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE UIDPLUS MOVE CHILDREN UNSELECT SPECIAL-USE";

/* the selected mailbox */
struct imap_sel {
	struct mailbox *mb;
	char *name;
	bool readonly;
};

struct imap_job;

struct imap_session {
	uint64_t handle;
	char id[MX_ID_LEN];
	struct conn *conn;
	struct imap_env env;
	enum imap_state state;
	unsigned flags;
	char client_addr[64];
	long bad_commands;
	/* the command being assembled */
	char *cmd;
	size_t cmd_len, cmd_cap;
	uint64_t lit_left;
	size_t cmd_exempt;        /* octets of APPEND's message literal: not held to command_max */
	bool cmd_append;
	/* AUTHENTICATE waiting for its response; IDLE's tag */
	char *wait_tag;
	struct event *delay_ev;
	char *delayed_reply;
	/* after login */
	char login[IMAP_USER_MAX + 1];
	char *root;
	struct imap_sel *sel;      /* NULL while a job owns it, or none */
	bool selected;             /* state I_SELECTED, even while a job owns sel */
	struct imap_job *xfer;     /* a FETCH between two batches */
	int ino_fd;
	struct event *ino_ev;
	long commands;
};

static void imap_process(struct imap_session *s);
static void imap_close(struct imap_session *s, const char *reason);

/* ------------------------------------------------------------- replies */

static void ATTR_PRINTF(2, 3)
imap_reply(struct imap_session *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	conn_write_linev(s->conn, fmt, ap);
	va_end(ap);
}

static const struct imap_settings *
imap_cfg(const struct imap_session *s)
{
	return imap_settings(s->env.cfg);
}

static void
imap_bad(struct imap_session *s, const char *tag, const char *text)
{
	imap_reply(s, "%s BAD %s", tag != NULL ? tag : "*", text);
	if (++s->bad_commands >= imap_cfg(s)->bad_commands_max) {
		imap_reply(s, "* BYE Too many invalid commands.");
		log_msg(LOG_LEVEL_INFO, "%s imap too many bad commands client=%s", s->id, s->client_addr);
		imap_close(s, "too_many_errors");
	}
}

static void
imap_arm_timeouts(struct imap_session *s)
{
	if (s->flags & I_F_JOB)
		conn_set_timeout(s->conn, 0);
	else if (s->state == I_NOTAUTH)
		conn_set_timeout(s->conn, imap_cfg(s)->timeout_login);
	else
		conn_set_timeout(s->conn, imap_cfg(s)->timeout_idle);
}


static bool
imap_plaintext_ok(const struct imap_session *s)
{
	if (s->flags & I_F_TLS)
		return true;
	switch (imap_cfg(s)->plaintext_auth) {
	case IMAP_PLAINTEXT_ALWAYS:
		return true;
	case IMAP_PLAINTEXT_LOOPBACK:
		return net_is_loopback(s->client_addr);
	default:
		return false;
	}
}

static char *
imap_capability(const struct imap_session *s)
{
	if (s->state != I_NOTAUTH)
		return xstrdup(capability_common);
	return xasprintf("%s%s%s", capability_common,
			 !(s->flags & I_F_TLS) && s->env.ssl_ctx != NULL ? " STARTTLS" : "",
			 imap_plaintext_ok(s) ? " AUTH=PLAIN" : " LOGINDISABLED");
}

static void
sel_free(struct imap_sel **selp)
{
	struct imap_sel *sel = *selp;

	*selp = NULL;
	if (sel == NULL)
		return;
	mailbox_free(&sel->mb);
	free(sel->name);
	free(sel);
}

static void
idle_stop(struct imap_session *s)
{
	if (s->ino_ev != NULL) {
		event_free(s->ino_ev);
		s->ino_ev = NULL;
	}
	if (s->ino_fd >= 0) {
		close(s->ino_fd);
		s->ino_fd = -1;
	}
	s->flags &= ~(I_F_IDLE | I_F_IDLE_DIRTY);
}

static void
imap_release(struct imap_session *s)
{
	if (!(s->flags & I_F_JOB))
		sel_free(&s->sel);
	idle_stop(s);
}

static void
imap_close(struct imap_session *s, const char *reason)
{
	conn_close(s->conn, reason);
	imap_release(s);
}

static void
imap_resume(struct imap_session *s)
{
	s->flags &= ~I_F_BUSY;
	imap_arm_timeouts(s);
	imap_process(s);
	conn_settle(s->conn);
}

/* ---------------------------------------------------------------- jobs */

struct imap_job;
typedef void (*imap_work_fn)(struct imap_job *job);

enum store_mode { STORE_SET, STORE_ADD, STORE_REMOVE };

struct imap_job {
	uint64_t handle;
	imap_work_fn work;
	char *tag;
	char *root;
	char *junk;           /* the junk folder's name */
	struct imap_sel *sel; /* the session's, lent */
	struct evbuffer *out;
	struct evbuffer *tagged; /* the tagged line: after the refresh's news */
	bool refresh;         /* may report expunges: refresh at the end */
	bool uid;             /* a UID command */
	/* results */
	struct imap_sel *new_sel;
	bool deselect;
	bool finished;        /* false: a FETCH batch, more to come */
	bool bye;             /* the refresh found UIDVALIDITY changed: end the session */
	/* arguments */
	char *name, *name2;
	struct imap_seqset set;
	struct imap_fetch fetch;
	struct imap_search *search;
	struct imap_flags flags;
	enum store_mode store_mode;
	bool silent, readonly, is_move, expunge_quietly;
	char *data;           /* APPEND: the whole command buffer ... */
	const char *msg;      /* ... and the message in it */
	size_t msg_len;
	time_t date;
	unsigned status_items;
	int ino_fd;           /* IDLE: the inotify fd the job set up */
	/* COPY/MOVE: who learns from moves into or out of Junk */
	imap_junk_moved_fn *junk_moved;
	struct mx_config *cfg; /* referenced while junk_moved is set */
	char *user;
	/* FETCH progress */
	size_t *idx;
	size_t n_idx, pos;
	bool some_gone;
};

static void
job_free(struct imap_job *job)
{
	free(job->tag);
	free(job->root);
	free(job->junk);
	if (job->cfg != NULL)
		config_unref(&job->cfg);
	free(job->user);
	sel_free(&job->sel);
	sel_free(&job->new_sel);
	if (job->out != NULL)
		evbuffer_free(job->out);
	if (job->tagged != NULL)
		evbuffer_free(job->tagged);
	free(job->name);
	free(job->name2);
	imap_seqset_clear(&job->set);
	imap_fetch_clear(&job->fetch);
	imap_search_free(&job->search);
	imap_flags_clear(&job->flags);
	free(job->data);
	free(job->idx);
	if (job->ino_fd >= 0)
		close(job->ino_fd);
	free(job);
}

static struct imap_job *
job_new(struct imap_session *s, const char *tag, imap_work_fn work)
{
	struct imap_job *job = xcalloc(1, sizeof(*job));

	job->handle = s->handle;
	job->work = work;
	job->tag = xstrdup(tag);
	job->root = s->root != NULL ? xstrdup(s->root) : NULL;
	job->junk = xstrdup(backends_settings(s->env.cfg)->junk_folder);
	job->out = evbuffer_new();
	job->tagged = evbuffer_new();
	job->finished = true;
	job->ino_fd = -1;
	return job;
}

static void job_done(void *arg);
static void work_nothing(struct imap_job *job);
static void work_idle_start(struct imap_job *job);
static void ino_read(evutil_socket_t fd, short what, void *arg);

/* the flags of a message in IMAP form, appended to out: the system
 * flags, then the keywords its lower-case letters name in mb */
static void
out_flags(struct evbuffer *out, const struct mailbox *mb, const struct mailbox_msg *m)
{
	bool first = true;

	evbuffer_add(out, "(", 1);
	for (const char *f = m->flags; *f != '\0'; f++) {
		const char *n = imap_flag_name(*f);
		if (n == NULL && *f >= 'a' && *f <= 'z')
			n = mb->keywords[*f - 'a'];
		if (n == NULL)
			continue;
		evbuffer_add_printf(out, "%s%s", first ? "" : " ", n);
		first = false;
	}
	evbuffer_add(out, ")", 1);
}

/* the system flags and the folder's keywords, for FLAGS and PERMANENTFLAGS */
static void
out_flag_list(struct evbuffer *out, const struct mailbox *mb, bool star)
{
	evbuffer_add_printf(out, "(\\Answered \\Flagged \\Deleted \\Seen \\Draft");
	for (size_t k = 0; k < MAILBOX_KEYWORDS_MAX; k++)
		if (mb->keywords[k] != NULL)
			evbuffer_add_printf(out, " %s", mb->keywords[k]);
	evbuffer_add_printf(out, "%s)", star ? " \\*" : "");
}

/* Compare the folder with the snapshot; when it changed, take a new one
 * and report the difference. */
static void
job_refresh(struct imap_job *job)
{
	struct imap_sel *sel = job->sel;
	struct mailbox *nmb;
	char *err = NULL;

	if (sel == NULL || !mailbox_changed(sel->mb))
		return;
	if (mailbox_open(sel->mb->dir, &nmb, &err) < 0) {
		log_msg(LOG_LEVEL_WARN, "imap refresh of %s failed: %s", sel->mb->dir, err);
		free(err);
		return;
	}
	struct mailbox *omb = sel->mb;
	if (nmb->uidvalidity != omb->uidvalidity) {
		/* UIDs renumbered under us: the session cannot go on */
		evbuffer_add_printf(job->out, "* BYE Mailbox UIDVALIDITY changed.\r\n");
		job->bye = true;
		mailbox_free(&nmb);
		return;
	}
	/* expunged: in the old snapshot, not in the new; highest first so
	 * the lower sequence numbers stay valid */
	size_t j = nmb->n_msgs;
	for (size_t i = omb->n_msgs; i-- > 0;) {
		while (j > 0 && nmb->msgs[j - 1].uid > omb->msgs[i].uid)
			j--;
		if (j == 0 || nmb->msgs[j - 1].uid != omb->msgs[i].uid)
			evbuffer_add_printf(job->out, "* %zu EXPUNGE\r\n", i + 1);
	}
	size_t kept = 0;
	for (size_t i = 0, k = 0; i < nmb->n_msgs; i++) {
		while (k < omb->n_msgs && omb->msgs[k].uid < nmb->msgs[i].uid)
			k++;
		if (k < omb->n_msgs && omb->msgs[k].uid == nmb->msgs[i].uid)
			kept++;
	}
	for (size_t k = 0; k < MAILBOX_KEYWORDS_MAX; k++) {
		if ((nmb->keywords[k] == NULL) != (omb->keywords[k] == NULL)) {
			evbuffer_add_printf(job->out, "* FLAGS ");
			out_flag_list(job->out, nmb, false);
			evbuffer_add(job->out, "\r\n", 2);
			break;
		}
	}
	if (nmb->n_msgs != kept || nmb->n_msgs != omb->n_msgs)
		evbuffer_add_printf(job->out, "* %zu EXISTS\r\n* 0 RECENT\r\n", nmb->n_msgs);
	for (size_t i = 0, k = 0; i < nmb->n_msgs; i++) {
		while (k < omb->n_msgs && omb->msgs[k].uid < nmb->msgs[i].uid)
			k++;
		if (k < omb->n_msgs && omb->msgs[k].uid == nmb->msgs[i].uid &&
		    strcmp(omb->msgs[k].flags, nmb->msgs[i].flags) != 0) {
			evbuffer_add_printf(job->out, "* %zu FETCH (UID %u FLAGS ", i + 1, nmb->msgs[i].uid);
			out_flags(job->out, nmb, &nmb->msgs[i]);
			evbuffer_add(job->out, ")\r\n", 3);
		}
	}
	mailbox_free(&sel->mb);
	sel->mb = nmb;
}

static void
job_run(void *arg)
{
	struct imap_job *job = arg;

	job->work(job);
	if (job->finished && job->refresh)
		job_refresh(job);
	if (job->finished)
		evbuffer_add_buffer(job->out, job->tagged);
}

static void
job_submit(struct imap_session *s, struct imap_job *job, enum worker_lane lane)
{
	if (job->sel == NULL && !(s->flags & I_F_JOB)) {
		job->sel = s->sel;
		s->sel = NULL;
	}
	s->xfer = NULL;
	s->flags |= I_F_BUSY | I_F_JOB;
	imap_arm_timeouts(s);
	if (workers_submit(daemon_loop_workers(conn_loop(s->conn)), lane, conn_base(s->conn), job_run,
			   job_done, job) < 0) {
		/* the scan lane is full */
		s->flags &= ~I_F_JOB;
		s->sel = job->sel;
		job->sel = NULL;
		imap_reply(s, "%s NO [UNAVAILABLE] Server busy, try again later.", job->tag);
		job_free(job);
		s->flags &= ~I_F_BUSY;
		imap_arm_timeouts(s);
	}
}

static void
job_done(void *arg)
{
	struct imap_job *job = arg;
	struct imap_session *s = handle_lookup(job->handle);

	if (s == NULL) {
		job_free(job);
		return;
	}
	s->flags &= ~I_F_JOB;
	if (job->new_sel != NULL || job->deselect) {
		sel_free(&job->sel);
		job->sel = job->new_sel;
		job->new_sel = NULL;
		s->selected = job->sel != NULL;
		s->state = s->selected ? I_SELECTED : I_AUTH;
	}
	if (conn_closing(s->conn)) {
		job_free(job);
		conn_settle(s->conn);
		return;
	}
	size_t len = evbuffer_get_length(job->out);
	if (len > 0) {
		conn_write(s->conn, evbuffer_pullup(job->out, -1), len);
		evbuffer_drain(job->out, len);
	}
	if (job->bye) {
		log_msg(LOG_LEVEL_WARN, "%s imap uidvalidity changed under a selected session", s->id);
		s->sel = job->sel;
		job->sel = NULL;
		job_free(job);
		imap_close(s, "uidvalidity_changed");
		conn_settle(s->conn);
		return;
	}
	if (!job->finished) {
		/* a FETCH batch: the next one while the client keeps up */
		if (conn_output_len(s->conn) < FETCH_QUEUE) {
			job_submit(s, job, WORKER_LANE_DELIVERY);
		} else {
			s->xfer = job;
			imap_arm_timeouts(s);
		}
		conn_settle(s->conn);
		return;
	}
	s->sel = job->sel;
	job->sel = NULL;
	if (job->ino_fd >= 0 && (s->flags & I_F_IDLE) && s->ino_fd < 0) {
		s->ino_fd = job->ino_fd;
		job->ino_fd = -1;
		s->ino_ev = event_new(conn_base(s->conn), s->ino_fd, EV_READ | EV_PERSIST, ino_read, s);
		event_add(s->ino_ev, NULL);
	}
	job_free(job);
	if (s->flags & I_F_IDLE) {
		/* an IDLE wake-up: keep idling */
		s->flags &= ~I_F_BUSY;
		imap_arm_timeouts(s);
		if (s->flags & I_F_IDLE_DIRTY) {
			s->flags &= ~I_F_IDLE_DIRTY;
			struct imap_job *j = job_new(s, "*", work_nothing);
			j->refresh = true;
			job_submit(s, j, WORKER_LANE_DELIVERY);
			conn_settle(s->conn);
			return;
		}
		imap_process(s);
		conn_settle(s->conn);
		return;
	}
	imap_resume(s);
}

/* IDLE's start: an inotify watch on the folder's new/ and cur/ (the
 * session adopts the fd on the loop), then the refresh at the end */
static void
work_idle_start(struct imap_job *job)
{
	char *n, *cu;
	uint32_t mask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB;

	job->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (job->ino_fd < 0) {
		log_errno(LOG_LEVEL_WARN, "imap inotify_init1");
		return;
	}
	n = xasprintf("%s/new", job->sel->mb->dir);
	cu = xasprintf("%s/cur", job->sel->mb->dir);
	if (inotify_add_watch(job->ino_fd, n, mask) < 0 || inotify_add_watch(job->ino_fd, cu, mask) < 0)
		log_errno(LOG_LEVEL_WARN, "imap inotify on %s", job->sel->mb->dir);
	free(n);
	free(cu);
}

/* IDLE's wake-up: only the refresh at the end */
static void
work_nothing(struct imap_job *job)
{
	(void)job;
}

/* ----------------------------------------------------- message access */

/* The message's octets with CRLF line ends (what IMAP counts), the way
 * mailbox_file_vsize counts them. NULL with errno when unreadable. */
static char *
read_crlf(struct mailbox *mb, size_t i, size_t *len_r, struct stat *sb_r)
{
	int fd = mailbox_msg_open(mb, i);
	struct stat sb;
	char *raw, *out;
	size_t got = 0, o = 0;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &sb) < 0 || sb.st_size > (off_t)1 << 31) {
		close(fd);
		errno = EFBIG;
		return NULL;
	}
	raw = xmalloc((size_t)sb.st_size + 1);
	while (got < (size_t)sb.st_size) {
		ssize_t n = read(fd, raw + got, (size_t)sb.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	out = xmalloc(2 * got + 3);
	for (size_t k = 0; k < got; k++) {
		if (raw[k] == '\n' && (k == 0 || raw[k - 1] != '\r'))
			out[o++] = '\r';
		out[o++] = raw[k];
	}
	if (got > 0 && raw[got - 1] == '\r')
		out[o++] = '\n';
	else if (got > 0 && raw[got - 1] != '\n') {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	free(raw);
	out[o] = '\0';
	*len_r = o;
	if (sb_r != NULL)
		*sb_r = sb;
	return out;
}

/* Only the header section (through its blank line), CRLF, for FETCH
 * items that need no more: read in chunks until the blank line, so a
 * header FETCH does not read whole messages. */
static char *
read_crlf_header(struct mailbox *mb, size_t i, size_t *len_r, struct stat *sb_r)
{
	int fd = mailbox_msg_open(mb, i);
	struct stat sb;
	size_t got = 0, cap = 16384, o = 0, hend = 0;
	char *raw, *out;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &sb) < 0) {
		close(fd);
		return NULL;
	}
	raw = xmalloc(cap + 1);
	for (;;) {
		if (got == cap) {
			if (cap >= (size_t)8 << 20)
				break; /* a header this long: what we have */
			cap *= 2;
			raw = xrealloc(raw, cap + 1);
		}
		ssize_t n = read(fd, raw + got, cap - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size_t from = got > 2 ? got - 2 : 0;
		got += (size_t)n;
		/* the blank line: LF LF or LF CR LF (or an empty first line) */
		for (size_t k = from; k < got && hend == 0; k++) {
			if (k == 0 && (raw[0] == '\n' || (got > 1 && raw[0] == '\r' && raw[1] == '\n')))
				hend = raw[0] == '\n' ? 1 : 2;
			else if (raw[k] == '\n' && k + 1 < got && raw[k + 1] == '\n')
				hend = k + 2;
			else if (raw[k] == '\n' && k + 2 < got && raw[k + 1] == '\r' && raw[k + 2] == '\n')
				hend = k + 3;
		}
		if (hend > 0)
			break;
	}
	close(fd);
	if (hend == 0) {
		/* no body: the whole file, as read_crlf would give it */
		hend = got;
	}
	out = xmalloc(2 * hend + 3);
	for (size_t k = 0; k < hend; k++) {
		if (raw[k] == '\n' && (k == 0 || raw[k - 1] != '\r'))
			out[o++] = '\r';
		out[o++] = raw[k];
	}
	if (hend == got && got > 0 && raw[got - 1] == '\r')
		out[o++] = '\n';
	else if (hend == got && got > 0 && raw[got - 1] != '\n') {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	free(raw);
	out[o] = '\0';
	*len_r = o;
	if (sb_r != NULL)
		*sb_r = sb;
	return out;
}

/* where the header ends (after its blank line) */
static size_t
header_len(const char *d, size_t len)
{
	if (len >= 2 && d[0] == '\r' && d[1] == '\n')
		return 2;
	for (size_t k = 0; k + 3 < len; k++)
		if (d[k] == '\r' && d[k + 1] == '\n' && d[k + 2] == '\r' && d[k + 3] == '\n')
			return k + 4;
	return len;
}

/* A literal of message octets: a NUL is sent as 0x80, as Dovecot does
 * (RFC 3501 allows no NUL in a literal), the length unchanged. */
static void
out_literal(struct evbuffer *out, const char *d, size_t len)
{
	evbuffer_add_printf(out, "{%zu}\r\n", len);
	while (len > 0) {
		const char *nul = memchr(d, '\0', len);
		size_t run = nul != NULL ? (size_t)(nul - d) : len;
		evbuffer_add(out, d, run);
		if (nul == NULL)
			break;
		evbuffer_add(out, "\x80", 1);
		d += run + 1;
		len -= run + 1;
	}
}

/* ------------------------------------------------------- set resolution */

/* The indexes a set names, ascending, each once (*n_r may be 0). */
static size_t *
resolve_set(const struct mailbox *mb, const struct imap_seqset *set, bool uid, size_t *n_r)
{
	size_t n = mb->n_msgs, k = 0;
	bool *in;
	size_t *idx;

	*n_r = 0;
	if (n == 0)
		return xcalloc(1, sizeof(size_t));
	in = xcalloc(n, sizeof(*in));
	for (size_t r = 0; r < set->n; r++) {
		uint32_t a = set->r[r].lo, b = set->r[r].hi;
		if (uid) {
			uint32_t star = mb->msgs[n - 1].uid;
			a = a ? a : star;
			b = b ? b : star;
			if (a > b) {
				uint32_t t = a;
				a = b;
				b = t;
			}
			/* first index with uid >= a */
			size_t lo = 0, hi = n;
			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;
				if (mb->msgs[mid].uid < a)
					lo = mid + 1;
				else
					hi = mid;
			}
			for (size_t i = lo; i < n && mb->msgs[i].uid <= b; i++)
				in[i] = true;
		} else {
			uint64_t x = a ? a : n, y = b ? b : n;
			if (x > y) {
				uint64_t t = x;
				x = y;
				y = t;
			}
			if (y > n)
				y = n;
			for (uint64_t i = x; i <= y; i++)
				in[i - 1] = true;
		}
	}
	idx = xmalloc((n + 1) * sizeof(*idx));
	for (size_t i = 0; i < n; i++)
		if (in[i])
			idx[k++] = i;
	free(in);
	*n_r = k;
	return idx;
}

/* Is every sequence number of the set within the mailbox? (RFC 3501: a
 * number beyond EXISTS is an error; "*" on an empty mailbox too.) */
static bool
seqset_valid(const struct mailbox *mb, const struct imap_seqset *set)
{
	for (size_t r = 0; r < set->n; r++) {
		if ((set->r[r].lo == 0 || set->r[r].hi == 0) && mb->n_msgs == 0)
			return false;
		if (set->r[r].lo > mb->n_msgs || set->r[r].hi > mb->n_msgs)
			return false;
	}
	return true;
}

/* ---------------------------------------------------------------- FETCH */

static bool
fetch_wants_content(const struct imap_fetch *f)
{
	for (size_t i = 0; i < f->n; i++) {
		switch (f->items[i].kind) {
		case IMAP_FETCH_FLAGS:
		case IMAP_FETCH_UID:
		case IMAP_FETCH_RFC822_SIZE:
		case IMAP_FETCH_INTERNALDATE:
			break;
		default:
			return true;
		}
	}
	return false;
}

/* Do the items need only the message's own header (read no further)?
 * ENVELOPE and the top-level HEADER.FIELDS(.NOT) go to mime.c with just
 * the header, which imap/mime.h allows for header-only questions. */
static bool
fetch_header_only(const struct imap_fetch *f)
{
	for (size_t i = 0; i < f->n; i++) {
		const struct imap_fetch_item *it = &f->items[i];
		switch (it->kind) {
		case IMAP_FETCH_FLAGS:
		case IMAP_FETCH_UID:
		case IMAP_FETCH_RFC822_SIZE:
		case IMAP_FETCH_INTERNALDATE:
		case IMAP_FETCH_RFC822_HEADER:
		case IMAP_FETCH_ENVELOPE: /* mime.h: header-only data is enough */
			break;
		case IMAP_FETCH_SECTION:
			if (it->sec.n_part == 0 && (it->sec.kind == IMAP_SECTION_HEADER ||
						    it->sec.kind == IMAP_SECTION_HEADER_FIELDS ||
						    it->sec.kind == IMAP_SECTION_HEADER_FIELDS_NOT))
				break;
			return false;
		default:
			return false;
		}
	}
	return true;
}

static bool
fetch_sets_seen(const struct imap_fetch *f)
{
	for (size_t i = 0; i < f->n; i++) {
		enum imap_fetch_kind k = f->items[i].kind;
		if ((k == IMAP_FETCH_SECTION && !f->items[i].peek) || k == IMAP_FETCH_RFC822 ||
		    k == IMAP_FETCH_RFC822_TEXT)
			return true;
	}
	return false;
}

static void
fetch_one(struct imap_job *job, size_t i)
{
	struct mailbox *mb = job->sel->mb;
	struct mailbox_msg *m = &mb->msgs[i];
	const struct imap_fetch *f = &job->fetch;
	struct evbuffer *out = job->out;
	char *data = NULL;
	size_t len = 0;
	struct stat sb;
	struct imap_msg *im = NULL;
	bool have_stat = false, flags_sent = false, first = true, seen_added = false;

	if (fetch_sets_seen(f) && !job->sel->readonly && strchr(m->flags, 'S') == NULL) {
		bool clean = !mailbox_changed(mb);
		if (mailbox_msg_add_flag(mb, i, 'S') == 0) {
			seen_added = true;
			if (clean)
				mailbox_restamp(mb);
		}
	}
	if (fetch_wants_content(f)) {
		data = fetch_header_only(f) ? read_crlf_header(mb, i, &len, &sb) : read_crlf(mb, i, &len, &sb);
		if (data == NULL) {
			job->some_gone = true;
			return;
		}
		have_stat = true;
	}
	evbuffer_add_printf(out, "* %zu FETCH (", i + 1);
	if (job->uid) {
		bool asked = false;
		for (size_t k = 0; k < f->n; k++)
			asked |= f->items[k].kind == IMAP_FETCH_UID;
		if (!asked) {
			evbuffer_add_printf(out, "UID %u", m->uid);
			first = false;
		}
	}
	for (size_t k = 0; k < f->n; k++) {
		const struct imap_fetch_item *it = &f->items[k];
		if (!first)
			evbuffer_add(out, " ", 1);
		first = false;
		switch (it->kind) {
		case IMAP_FETCH_FLAGS:
			evbuffer_add_printf(out, "FLAGS ");
			out_flags(out, mb, m);
			flags_sent = true;
			break;
		case IMAP_FETCH_UID:
			evbuffer_add_printf(out, "UID %u", m->uid);
			break;
		case IMAP_FETCH_RFC822_SIZE:
			evbuffer_add_printf(out, "RFC822.SIZE %llu", (unsigned long long)m->vsize);
			break;
		case IMAP_FETCH_INTERNALDATE: {
			char d[40];
			if (!have_stat) {
				int fd = mailbox_msg_open(mb, i);
				if (fd >= 0) {
					have_stat = fstat(fd, &sb) == 0;
					close(fd);
				}
			}
			imap_format_datetime(have_stat ? sb.st_mtim.tv_sec : 0, d, sizeof(d));
			evbuffer_add_printf(out, "INTERNALDATE \"%s\"", d);
			break;
		}
		case IMAP_FETCH_ENVELOPE:
			if (im == NULL)
				im = imap_msg_new(data, len);
			evbuffer_add_printf(out, "ENVELOPE ");
			imap_msg_envelope(im, out);
			break;
		case IMAP_FETCH_BODY:
		case IMAP_FETCH_BODYSTRUCTURE:
			if (im == NULL)
				im = imap_msg_new(data, len);
			evbuffer_add_printf(out, "%s ", it->kind == IMAP_FETCH_BODY ? "BODY" : "BODYSTRUCTURE");
			imap_msg_bodystructure(im, it->kind == IMAP_FETCH_BODYSTRUCTURE, out);
			break;
		case IMAP_FETCH_RFC822:
			evbuffer_add_printf(out, "RFC822 ");
			out_literal(out, data, len);
			break;
		case IMAP_FETCH_RFC822_HEADER:
			evbuffer_add_printf(out, "RFC822.HEADER ");
			out_literal(out, data, header_len(data, len));
			break;
		case IMAP_FETCH_RFC822_TEXT: {
			size_t h = header_len(data, len);
			evbuffer_add_printf(out, "RFC822.TEXT ");
			out_literal(out, data + h, len - h);
			break;
		}
		case IMAP_FETCH_SECTION: {
			const char *d = NULL;
			size_t dl = 0;
			struct evbuffer *tmp = NULL;
			bool ok = true;
			/* the message's own header and text are its octets as
			 * stored; parts and header fields are the MIME side's */
			if (it->sec.n_part == 0 && it->sec.kind == IMAP_SECTION_ALL) {
				d = data;
				dl = len;
			} else if (it->sec.n_part == 0 && it->sec.kind == IMAP_SECTION_HEADER) {
				d = data;
				dl = header_len(data, len);
			} else if (it->sec.n_part == 0 && it->sec.kind == IMAP_SECTION_TEXT) {
				size_t h = header_len(data, len);
				d = data + h;
				dl = len - h;
			} else {
				if (im == NULL)
					im = imap_msg_new(data, len);
				tmp = evbuffer_new();
				ok = imap_msg_section(im, &it->sec, tmp);
				dl = evbuffer_get_length(tmp);
				d = dl > 0 ? (const char *)evbuffer_pullup(tmp, -1) : "";
			}
			evbuffer_add_printf(out, "%s ", it->name);
			if (it->partial) {
				if (it->partial_off >= dl) {
					dl = 0;
				} else {
					d += it->partial_off;
					dl -= it->partial_off;
					if (dl > it->partial_len)
						dl = it->partial_len;
				}
			}
			if (!ok)
				dl = 0;
			out_literal(out, d, dl);
			if (tmp != NULL)
				evbuffer_free(tmp);
			break;
		}
		}
	}
	if (seen_added && !flags_sent) {
		evbuffer_add_printf(out, " FLAGS ");
		out_flags(out, mb, m);
	}
	evbuffer_add(out, ")\r\n", 3);
	imap_msg_free(&im);
	free(data);
}

static void
work_fetch(struct imap_job *job)
{
	struct mailbox *mb = job->sel->mb;

	if (job->idx == NULL) {
		if (!job->uid && !seqset_valid(mb, &job->set)) {
			evbuffer_add_printf(job->tagged, "%s BAD Invalid message sequence number.\r\n", job->tag);
			return;
		}
		job->idx = resolve_set(mb, &job->set, job->uid, &job->n_idx);
	}
	job->finished = false;
	while (job->pos < job->n_idx && evbuffer_get_length(job->out) < FETCH_BATCH)
		fetch_one(job, job->idx[job->pos++]);
	if (job->pos < job->n_idx)
		return;
	job->finished = true;
	if (job->some_gone)
		evbuffer_add_printf(job->tagged, "%s NO Some messages were expunged meanwhile.\r\n", job->tag);
	else
		evbuffer_add_printf(job->tagged, "%s OK Fetch completed.\r\n", job->tag);
}

/* ---------------------------------------------------------------- STORE */

static void
work_store(struct imap_job *job)
{
	struct mailbox *mb = job->sel->mb;
	size_t n;
	size_t *idx;
	bool clean, failed = false;

	if (job->sel->readonly) {
		evbuffer_add_printf(job->tagged, "%s NO Mailbox is read-only.\r\n", job->tag);
		return;
	}
	if (!job->uid && !seqset_valid(mb, &job->set)) {
		evbuffer_add_printf(job->tagged, "%s BAD Invalid message sequence number.\r\n", job->tag);
		return;
	}
	/* keywords: their letters in this folder (new names get one) */
	char kl[MAILBOX_KEYWORDS_MAX + 1] = "", letters[MAILBOX_KEYWORDS_MAX + 8];
	if (job->flags.n_keywords > 0) {
		char *err = NULL;
		size_t nk = job->flags.n_keywords > MAILBOX_KEYWORDS_MAX ? MAILBOX_KEYWORDS_MAX : job->flags.n_keywords;
		if (mailbox_keywords_letters(mb->dir, (const char *const *)job->flags.keywords, nk, kl, &err) < 0) {
			log_msg(LOG_LEVEL_ERR, "imap keywords of %s: %s", mb->dir, err);
			free(err);
			evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot store keywords.\r\n", job->tag);
			return;
		}
		mailbox_keywords_load(mb);
	}
	snprintf(letters, sizeof(letters), "%s%s", job->flags.letters, kl);
	idx = resolve_set(mb, &job->set, job->uid, &n);
	clean = !mailbox_changed(mb);
	for (size_t k = 0; k < n; k++) {
		struct mailbox_msg *m = &mb->msgs[idx[k]];
		int rc;
		switch (job->store_mode) {
		case STORE_SET: /* the flags and keywords become these */
			rc = mailbox_msg_change_flags(mb, idx[k], letters, "DFRSTabcdefghijklmnopqrstuvwxyz");
			break;
		case STORE_ADD:
			rc = mailbox_msg_change_flags(mb, idx[k], letters, "");
			break;
		default:
			rc = mailbox_msg_change_flags(mb, idx[k], "", letters);
			break;
		}
		if (rc < 0) {
			failed = true;
			continue;
		}
		if (!job->silent) {
			evbuffer_add_printf(job->out, "* %zu FETCH (", idx[k] + 1);
			if (job->uid)
				evbuffer_add_printf(job->out, "UID %u ", m->uid);
			evbuffer_add_printf(job->out, "FLAGS ");
			out_flags(job->out, mb, m);
			evbuffer_add(job->out, ")\r\n", 3);
		}
	}
	if (clean)
		mailbox_restamp(mb);
	free(idx);
	if (failed)
		evbuffer_add_printf(job->tagged, "%s NO Some messages were expunged meanwhile.\r\n", job->tag);
	else
		evbuffer_add_printf(job->tagged, "%s OK Store completed.\r\n", job->tag);
}

/* -------------------------------------------------------------- SEARCH */

struct search_msg {
	struct mailbox *mb;
	size_t i;
	bool loaded, stat_ok, gone;
	char *data;
	size_t len;
	struct stat sb;
	struct imap_msg *im;
};

static bool
sm_stat(struct search_msg *sm)
{
	if (!sm->loaded && !sm->stat_ok) {
		int fd = mailbox_msg_open(sm->mb, sm->i);
		if (fd >= 0) {
			sm->stat_ok = fstat(fd, &sm->sb) == 0;
			close(fd);
		}
	}
	return sm->stat_ok;
}

static struct imap_msg *
sm_mime(struct search_msg *sm)
{
	if (!sm->loaded) {
		sm->loaded = true;
		sm->data = read_crlf(sm->mb, sm->i, &sm->len, &sm->sb);
		if (sm->data == NULL) {
			sm->gone = true;
			return NULL;
		}
		sm->stat_ok = true;
		sm->im = imap_msg_new(sm->data, sm->len);
	}
	return sm->im;
}

static bool
search_match(const struct imap_search *k, struct search_msg *sm, const struct mailbox *mb)
{
	const struct mailbox_msg *m = &mb->msgs[sm->i];
	struct imap_msg *im;

	switch (k->kind) {
	case IMAP_SK_ALL:
	case IMAP_SK_OLD:
		return true;
	case IMAP_SK_NEW:
	case IMAP_SK_RECENT:
		return false; /* \Recent is not kept */
	case IMAP_SK_AND:
		for (const struct imap_search *c = k->kids; c != NULL; c = c->next)
			if (!search_match(c, sm, mb))
				return false;
		return true;
	case IMAP_SK_OR:
		return search_match(k->kids, sm, mb) || search_match(k->kids->next, sm, mb);
	case IMAP_SK_NOT:
		return !search_match(k->kids, sm, mb);
	case IMAP_SK_SEQSET:
		return imap_seqset_contains(&k->set, (uint32_t)(sm->i + 1), (uint32_t)mb->n_msgs);
	case IMAP_SK_UID:
		return imap_seqset_contains(&k->set, m->uid, mb->msgs[mb->n_msgs - 1].uid);
	case IMAP_SK_FLAG:
		return strchr(m->flags, k->flag) != NULL;
	case IMAP_SK_UNFLAG:
		return strchr(m->flags, k->flag) == NULL;
	case IMAP_SK_KEYWORD:
	case IMAP_SK_UNKEYWORD: {
		bool has = false;
		for (size_t kk = 0; kk < MAILBOX_KEYWORDS_MAX; kk++)
			if (mb->keywords[kk] != NULL && strcasecmp(mb->keywords[kk], k->value) == 0)
				has = strchr(m->flags, (int)('a' + kk)) != NULL;
		return k->kind == IMAP_SK_KEYWORD ? has : !has;
	}
	case IMAP_SK_LARGER:
		return m->vsize > k->n;
	case IMAP_SK_SMALLER:
		return m->vsize < k->n;
	case IMAP_SK_BEFORE:
	case IMAP_SK_ON:
	case IMAP_SK_SINCE: {
		if (!sm_stat(sm))
			return false;
		long day = (long)(sm->sb.st_mtim.tv_sec / 86400);
		return k->kind == IMAP_SK_BEFORE ? day < k->day : k->kind == IMAP_SK_ON ? day == k->day : day >= k->day;
	}
	case IMAP_SK_SENTBEFORE:
	case IMAP_SK_SENTON:
	case IMAP_SK_SENTSINCE: {
		time_t t;
		int tz;
		if ((im = sm_mime(sm)) == NULL)
			return false;
		/* no readable Date: sent on 1970-01-01, as Dovecot has it (so
		 * SENTBEFORE matches such a message; test_imap_dovecot) */
		if (!imap_msg_sent_date(im, &t, &tz)) {
			t = 0;
			tz = 0;
		}
		long day = (long)((t + tz) / 86400);
		return k->kind == IMAP_SK_SENTBEFORE ? day < k->day
		       : k->kind == IMAP_SK_SENTON   ? day == k->day
						     : day >= k->day;
	}
	case IMAP_SK_HEADER:
		return (im = sm_mime(sm)) != NULL && imap_msg_header_contains(im, k->field, k->value);
	case IMAP_SK_BODY:
		return (im = sm_mime(sm)) != NULL && imap_msg_body_contains(im, k->value);
	case IMAP_SK_TEXT:
		return (im = sm_mime(sm)) != NULL && imap_msg_text_contains(im, k->value);
	}
	return false;
}

static void
work_search(struct imap_job *job)
{
	struct mailbox *mb = job->sel->mb;

	evbuffer_add_printf(job->out, "* SEARCH");
	for (size_t i = 0; i < mb->n_msgs; i++) {
		struct search_msg sm = { .mb = mb, .i = i };
		if (search_match(job->search, &sm, mb)) {
			if (job->uid)
				evbuffer_add_printf(job->out, " %u", mb->msgs[i].uid);
			else
				evbuffer_add_printf(job->out, " %zu", i + 1);
		}
		imap_msg_free(&sm.im);
		free(sm.data);
	}
	evbuffer_add_printf(job->out, "\r\n");
	evbuffer_add_printf(job->tagged, "%s OK Search completed.\r\n", job->tag);
}

/* ------------------------------------------------------------- EXPUNGE */

/* Remove the \Deleted messages (of the set, for UID EXPUNGE); report
 * them unless quietly (CLOSE). */
static void
expunge_messages(struct imap_job *job, const bool *only)
{
	struct mailbox *mb = job->sel->mb;
	bool clean = !mailbox_changed(mb);
	bool *gone = xcalloc(mb->n_msgs + 1, sizeof(*gone));
	size_t any = 0;

	for (size_t i = 0; i < mb->n_msgs; i++) {
		if (only != NULL ? !only[i] : strchr(mb->msgs[i].flags, 'T') == NULL)
			continue;
		if (mailbox_msg_expunge(mb, i) == 0) {
			gone[i] = true;
			any++;
		}
	}
	if (any > 0) {
		(void)mailbox_sync_dir(mb);
		for (size_t i = mb->n_msgs; i-- > 0;)
			if (gone[i] && !job->expunge_quietly)
				evbuffer_add_printf(job->out, "* %zu EXPUNGE\r\n", i + 1);
		size_t o = 0;
		for (size_t i = 0; i < mb->n_msgs; i++) {
			if (gone[i]) {
				free(mb->msgs[i].base);
				free(mb->msgs[i].name);
				continue;
			}
			mb->msgs[o++] = mb->msgs[i];
		}
		mb->n_msgs = o;
		if (clean)
			mailbox_restamp(mb);
	}
	free(gone);
}

static void
work_expunge(struct imap_job *job)
{
	bool *only = NULL;

	if (job->sel->readonly) {
		evbuffer_add_printf(job->tagged, "%s NO Mailbox is read-only.\r\n", job->tag);
		return;
	}
	if (job->uid) {
		struct mailbox *mb = job->sel->mb;
		size_t n, *idx = resolve_set(mb, &job->set, true, &n);
		only = xcalloc(mb->n_msgs + 1, sizeof(*only));
		for (size_t k = 0; k < n; k++)
			only[idx[k]] = strchr(mb->msgs[idx[k]].flags, 'T') != NULL;
		free(idx);
	}
	expunge_messages(job, only);
	free(only);
	evbuffer_add_printf(job->tagged, "%s OK Expunge completed.\r\n", job->tag);
}

static void
work_close(struct imap_job *job)
{
	if (!job->sel->readonly) {
		job->expunge_quietly = true;
		expunge_messages(job, NULL);
	}
	job->deselect = true;
	evbuffer_add_printf(job->tagged, "%s OK Close completed.\r\n", job->tag);
}

/* ---------------------------------------------------------- COPY, MOVE */

/* "1,3:5" of a list of UIDs (in the order given) */
static void
out_uidset(struct evbuffer *out, const uint32_t *u, size_t n)
{
	for (size_t k = 0; k < n;) {
		size_t e = k;
		while (e + 1 < n && u[e + 1] == u[e] + 1)
			e++;
		evbuffer_add_printf(out, "%s%u", k ? "," : "", u[k]);
		if (e > k)
			evbuffer_add_printf(out, ":%u", u[e]);
		k = e + 1;
	}
}

/* The Message-ID of a message file (for the junk log), or "" */
static void
message_id(struct mailbox *mb, size_t i, char *out, size_t outsz)
{
	int fd = mailbox_msg_open(mb, i);
	char buf[16384];
	ssize_t n;

	out[0] = '\0';
	if (fd < 0)
		return;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	for (char *line = buf; line != NULL && *line != '\0' && *line != '\n' && *line != '\r';) {
		if (strncasecmp(line, "Message-ID:", 11) == 0) {
			char *v = line + 11;
			while (*v == ' ' || *v == '\t')
				v++;
			size_t l = strcspn(v, "\r\n");
			if (l >= outsz)
				l = outsz - 1;
			memcpy(out, v, l);
			out[l] = '\0';
			return;
		}
		line = strchr(line, '\n');
		if (line != NULL)
			line++;
	}
}


/* Hand a message copied into or out of Junk to whoever learns from it
 * (the bayes stage): its octets as stored, read from the source. */
static void
junk_learn(struct imap_job *job, struct mailbox *mb, size_t i, bool to_junk)
{
	struct stat sb;
	size_t len;
	char *data = read_crlf(mb, i, &len, &sb);

	if (data == NULL)
		return;
	job->junk_moved(job->cfg, job->user, data, len, to_junk);
	free(data);
}

static void
work_copy(struct imap_job *job)
{
	struct mailbox *mb = job->sel->mb;
	char *dst = NULL, *err = NULL;
	size_t n, *idx;
	uint32_t *uids, validity = 0;

	if (!job->uid && !seqset_valid(mb, &job->set)) {
		evbuffer_add_printf(job->tagged, "%s BAD Invalid message sequence number.\r\n", job->tag);
		return;
	}
	if (job->is_move && job->sel->readonly) {
		evbuffer_add_printf(job->tagged, "%s NO Mailbox is read-only.\r\n", job->tag);
		return;
	}
	dst = mailbox_folder_dir(job->root, job->name);
	if (dst == NULL) {
		evbuffer_add_printf(job->tagged, "%s NO Invalid mailbox name.\r\n", job->tag);
		return;
	}
	if (mailbox_folder_exists(job->root, job->name) != 1) {
		evbuffer_add_printf(job->tagged, "%s NO [TRYCREATE] Mailbox does not exist.\r\n", job->tag);
		free(dst);
		return;
	}
	idx = resolve_set(mb, &job->set, job->uid, &n);
	if (n == 0) {
		evbuffer_add_printf(job->tagged, "%s OK %s completed.\r\n", job->tag, job->is_move ? "Move" : "Copy");
		free(idx);
		free(dst);
		return;
	}
	uids = xcalloc(n, sizeof(*uids));
	if (mailbox_copy(mb, idx, n, dst, uids, &validity, &err) < 0) {
		log_msg(LOG_LEVEL_ERR, "imap copy into %s failed: %s", dst, err);
		evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Copy failed.\r\n", job->tag);
		free(err);
		free(uids);
		free(idx);
		free(dst);
		return;
	}
	/* the junk log: into or out of the junk folder */
	const char *from = job->sel->name;
	bool from_junk = strcmp(from, job->junk) == 0, to_junk = strcmp(job->name, job->junk) == 0;
	if (from_junk != to_junk) {
		for (size_t k = 0; k < n; k++) {
			char mid[256];
			if (uids[k] == 0)
				continue;
			message_id(mb, idx[k], mid, sizeof(mid));
			if (mailbox_junk_log(job->root, job->is_move ? "move" : "copy", to_junk, from, job->name,
					     uids[k], mid, mb->msgs[idx[k]].base) < 0)
				log_errno(LOG_LEVEL_WARN, "imap cannot write %s/%s", job->root, MAILBOX_JUNK_LOG);
			if (job->junk_moved != NULL)
				junk_learn(job, mb, idx[k], to_junk);
		}
	}
	/* COPYUID: the pairs of messages that were copied */
	uint32_t *su = xcalloc(n, sizeof(*su)), *du = xcalloc(n, sizeof(*du));
	size_t np = 0;
	for (size_t k = 0; k < n; k++) {
		if (uids[k] == 0)
			continue;
		su[np] = mb->msgs[idx[k]].uid;
		du[np++] = uids[k];
	}
	struct evbuffer *code = evbuffer_new();
	if (np > 0) {
		evbuffer_add_printf(code, "[COPYUID %u ", validity);
		out_uidset(code, su, np);
		evbuffer_add(code, " ", 1);
		out_uidset(code, du, np);
		evbuffer_add(code, "] ", 2);
	}
	size_t cl = evbuffer_get_length(code);
	const char *cs = cl > 0 ? (const char *)evbuffer_pullup(code, -1) : "";
	if (job->is_move) {
		bool *only = xcalloc(mb->n_msgs + 1, sizeof(*only));
		for (size_t k = 0; k < n; k++)
			only[idx[k]] = uids[k] != 0;
		evbuffer_add_printf(job->out, "* OK %.*sMoved.\r\n", (int)cl, cs);
		expunge_messages(job, only);
		free(only);
		evbuffer_add_printf(job->tagged, "%s OK Move completed.\r\n", job->tag);
	} else {
		evbuffer_add_printf(job->tagged, "%s OK %.*sCopy completed.\r\n", job->tag, (int)cl, cs);
	}
	evbuffer_free(code);
	free(su);
	free(du);
	free(uids);
	free(idx);
	free(dst);
}

/* --------------------------------------------------- mailbox commands */

static void
special_use(const char *junk, const char *name, struct evbuffer *out)
{
	if (strcmp(name, junk) == 0)
		evbuffer_add_printf(out, " \\Junk");
	else if (strcmp(name, "Sent") == 0)
		evbuffer_add_printf(out, " \\Sent");
	else if (strcmp(name, "Drafts") == 0)
		evbuffer_add_printf(out, " \\Drafts");
	else if (strcmp(name, "Trash") == 0)
		evbuffer_add_printf(out, " \\Trash");
}

static void
out_name(struct evbuffer *out, const char *name)
{
	char *q = imap_quote(name, strlen(name));
	evbuffer_add(out, q, strlen(q));
	free(q);
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
work_list(struct imap_job *job)
{
	char **names;
	size_t n;
	char *err = NULL;
	bool lsub = job->is_move; /* reused: LSUB */
	char *pattern;

	if (job->name2[0] == '\0' && !lsub) {
		evbuffer_add_printf(job->out, "* LIST (\\Noselect) \".\" \"\"\r\n");
		evbuffer_add_printf(job->tagged, "%s OK List completed.\r\n", job->tag);
		return;
	}
	pattern = xasprintf("%s%s", job->name, job->name2);
	if (mailbox_folder_list(job->root, &names, &n, &err) < 0) {
		log_msg(LOG_LEVEL_ERR, "imap list %s: %s", job->root, err);
		free(err);
		evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot list mailboxes.\r\n", job->tag);
		free(pattern);
		return;
	}
	/* every name and its implied parents (no folder of their own) */
	size_t cap = n * 2 + 2, m = 0;
	struct entry {
		char *name;
		bool exists;
	} *e = xcalloc(cap, sizeof(*e));
	char **all = xcalloc(cap, sizeof(*all));
	for (size_t i = 0; i < n; i++) {
		all[m++] = xstrdup(names[i]);
		for (char *dot = strrchr(names[i], '.'); dot != NULL; dot = strrchr(names[i], '.')) {
			*dot = '\0';
			if (m == cap) {
				cap *= 2;
				all = xrealloc(all, cap * sizeof(*all));
			}
			all[m++] = xasprintf("\x01%s", names[i]); /* implied */
		}
	}
	mailbox_names_free(names, n);
	for (size_t i = 0; i < m; i++) {
		if (all[i][0] == '\x01')
			memmove(all[i], all[i] + 1, strlen(all[i]));
	}
	/* (an implied name that also exists is found by the exists check) */
	if (m > 1)
		qsort(all, m, sizeof(*all), cmp_str);
	size_t ne = 0;
	e = xrealloc(e, (m + 1) * sizeof(*e));
	for (size_t i = 0; i < m; i++) {
		if (ne > 0 && strcmp(e[ne - 1].name, all[i]) == 0) {
			free(all[i]);
			continue;
		}
		e[ne].name = all[i];
		e[ne].exists = mailbox_folder_exists(job->root, all[i]) == 1;
		ne++;
	}
	free(all);
	char **subs = NULL;
	size_t nsubs = 0;
	if (lsub)
		(void)mailbox_subscriptions_read(job->root, &subs, &nsubs);
	const char *verb = lsub ? "LSUB" : "LIST";
	/* INBOX first */
	if (imap_list_match(pattern, "INBOX")) {
		bool sub = !lsub;
		for (size_t k = 0; k < nsubs; k++)
			sub |= mailbox_folder_is_inbox(subs[k]);
		if (sub)
			evbuffer_add_printf(job->out, "* %s (\\HasNoChildren) \".\" INBOX\r\n", verb);
	}
	for (size_t i = 0; i < ne; i++) {
		if (!imap_list_match(pattern, e[i].name))
			continue;
		if (lsub) {
			bool sub = false;
			for (size_t k = 0; k < nsubs; k++)
				sub |= strcmp(subs[k], e[i].name) == 0;
			if (!sub)
				continue;
		}
		size_t l = strlen(e[i].name);
		bool kids = i + 1 < ne && strncmp(e[i + 1].name, e[i].name, l) == 0 && e[i + 1].name[l] == '.';
		evbuffer_add_printf(job->out, "* %s (%s%s", verb, e[i].exists ? "" : "\\Noselect ",
				    kids ? "\\HasChildren" : "\\HasNoChildren");
		special_use(job->junk, e[i].name, job->out);
		evbuffer_add_printf(job->out, ") \".\" ");
		out_name(job->out, e[i].name);
		evbuffer_add(job->out, "\r\n", 2);
	}
	for (size_t i = 0; i < ne; i++)
		free(e[i].name);
	free(e);
	mailbox_names_free(subs, nsubs);
	free(pattern);
	evbuffer_add_printf(job->tagged, "%s OK %s completed.\r\n", job->tag, lsub ? "Lsub" : "List");
}

static void
work_create(struct imap_job *job)
{
	char *err = NULL;
	size_t l = strlen(job->name);

	if (l > 0 && job->name[l - 1] == '.')
		job->name[l - 1] = '\0'; /* "a." asks for a folder that will have children */
	if (mailbox_folder_is_inbox(job->name)) {
		evbuffer_add_printf(job->tagged, "%s NO [ALREADYEXISTS] Mailbox already exists.\r\n", job->tag);
		return;
	}
	if (!mailbox_folder_name_ok(job->name)) {
		evbuffer_add_printf(job->tagged, "%s NO Invalid mailbox name.\r\n", job->tag);
		return;
	}
	int rc = mailbox_folder_create(job->root, job->name, &err);
	if (rc == -2)
		evbuffer_add_printf(job->tagged, "%s NO [ALREADYEXISTS] Mailbox already exists.\r\n", job->tag);
	else if (rc < 0) {
		log_msg(LOG_LEVEL_ERR, "imap create %s: %s", job->name, err);
		evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot create the mailbox.\r\n", job->tag);
	} else
		evbuffer_add_printf(job->tagged, "%s OK Create completed.\r\n", job->tag);
	free(err);
}

static void
work_delete(struct imap_job *job)
{
	char *err = NULL;
	int rc;

	if (mailbox_folder_is_inbox(job->name)) {
		evbuffer_add_printf(job->tagged, "%s NO INBOX cannot be deleted.\r\n", job->tag);
		return;
	}
	if (job->sel != NULL && strcmp(job->sel->name, job->name) == 0) {
		evbuffer_add_printf(job->tagged, "%s NO Cannot delete the selected mailbox.\r\n", job->tag);
		return;
	}
	rc = mailbox_folder_delete(job->root, job->name, &err);
	if (rc == -2)
		evbuffer_add_printf(job->tagged, "%s NO [NONEXISTENT] Mailbox does not exist.\r\n", job->tag);
	else if (rc < 0) {
		log_msg(LOG_LEVEL_ERR, "imap delete %s: %s", job->name, err);
		evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot delete the mailbox.\r\n", job->tag);
	} else
		evbuffer_add_printf(job->tagged, "%s OK Delete completed.\r\n", job->tag);
	free(err);
}

static void
work_rename(struct imap_job *job)
{
	char *err = NULL;
	int rc;

	if (mailbox_folder_is_inbox(job->name2)) {
		evbuffer_add_printf(job->tagged, "%s NO [ALREADYEXISTS] INBOX exists.\r\n", job->tag);
		return;
	}
	if (mailbox_folder_is_inbox(job->name)) {
		/* INBOX's messages move to the new folder, INBOX stays (RFC 3501 6.3.5) */
		if (!mailbox_folder_name_ok(job->name2)) {
			evbuffer_add_printf(job->tagged, "%s NO Invalid mailbox name.\r\n", job->tag);
			return;
		}
		if (job->sel != NULL && strcmp(job->sel->name, "INBOX") == 0) {
			evbuffer_add_printf(job->tagged, "%s NO Cannot rename the selected mailbox.\r\n", job->tag);
			return;
		}
		rc = mailbox_folder_rename_inbox(job->root, job->name2, &err);
		if (rc == -3)
			evbuffer_add_printf(job->tagged, "%s NO [ALREADYEXISTS] Target mailbox already exists.\r\n", job->tag);
		else if (rc < 0) {
			log_msg(LOG_LEVEL_ERR, "imap rename INBOX: %s", err);
			evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot rename INBOX.\r\n", job->tag);
		} else
			evbuffer_add_printf(job->tagged, "%s OK Rename completed.\r\n", job->tag);
		free(err);
		return;
	}
	if (!mailbox_folder_name_ok(job->name2) || !mailbox_folder_name_ok(job->name)) {
		evbuffer_add_printf(job->tagged, "%s NO Invalid mailbox name.\r\n", job->tag);
		return;
	}
	if (job->sel != NULL && strcmp(job->sel->name, job->name) == 0) {
		evbuffer_add_printf(job->tagged, "%s NO Cannot rename the selected mailbox.\r\n", job->tag);
		return;
	}
	rc = mailbox_folder_rename(job->root, job->name, job->name2, &err);
	if (rc == -2)
		evbuffer_add_printf(job->tagged, "%s NO [NONEXISTENT] Mailbox does not exist.\r\n", job->tag);
	else if (rc == -3)
		evbuffer_add_printf(job->tagged, "%s NO [ALREADYEXISTS] Target mailbox already exists.\r\n", job->tag);
	else if (rc < 0) {
		log_msg(LOG_LEVEL_ERR, "imap rename %s: %s", job->name, err);
		evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot rename the mailbox.\r\n", job->tag);
	} else
		evbuffer_add_printf(job->tagged, "%s OK Rename completed.\r\n", job->tag);
	free(err);
}

static void
work_subscribe(struct imap_job *job)
{
	char *err = NULL;
	int rc = mailbox_subscribe(job->root, job->name, !job->is_move, &err);

	if (rc == -2)
		evbuffer_add_printf(job->tagged, "%s NO Invalid mailbox name.\r\n", job->tag);
	else if (rc < 0) {
		log_msg(LOG_LEVEL_ERR, "imap subscribe %s: %s", job->name, err);
		evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot change subscriptions.\r\n", job->tag);
	} else
		evbuffer_add_printf(job->tagged, "%s OK %s completed.\r\n", job->tag,
				    job->is_move ? "Unsubscribe" : "Subscribe");
	free(err);
}

enum { ST_MESSAGES = 1, ST_RECENT = 2, ST_UIDNEXT = 4, ST_UIDVALIDITY = 8, ST_UNSEEN = 16 };

static void
work_status(struct imap_job *job)
{
	struct mailbox *mb = NULL;
	char *dir, *err = NULL;
	int ex = mailbox_folder_exists(job->root, job->name);

	if (ex != 1) {
		evbuffer_add_printf(job->tagged, "%s NO [NONEXISTENT] Mailbox does not exist.\r\n", job->tag);
		return;
	}
	dir = mailbox_folder_dir(job->root, job->name);
	if (mailbox_open(dir, &mb, &err) < 0) {
		log_msg(LOG_LEVEL_ERR, "imap status %s: %s", dir, err);
		evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot open the mailbox.\r\n", job->tag);
		free(err);
		free(dir);
		return;
	}
	size_t unseen = 0;
	for (size_t i = 0; i < mb->n_msgs; i++)
		unseen += strchr(mb->msgs[i].flags, 'S') == NULL;
	evbuffer_add_printf(job->out, "* STATUS ");
	out_name(job->out, job->name);
	evbuffer_add_printf(job->out, " (");
	const char *sp = "";
	if (job->status_items & ST_MESSAGES) {
		evbuffer_add_printf(job->out, "%sMESSAGES %zu", sp, mb->n_msgs);
		sp = " ";
	}
	if (job->status_items & ST_RECENT) {
		evbuffer_add_printf(job->out, "%sRECENT 0", sp);
		sp = " ";
	}
	if (job->status_items & ST_UIDNEXT) {
		evbuffer_add_printf(job->out, "%sUIDNEXT %u", sp, mb->uidnext);
		sp = " ";
	}
	if (job->status_items & ST_UIDVALIDITY) {
		evbuffer_add_printf(job->out, "%sUIDVALIDITY %u", sp, mb->uidvalidity);
		sp = " ";
	}
	if (job->status_items & ST_UNSEEN)
		evbuffer_add_printf(job->out, "%sUNSEEN %zu", sp, unseen);
	evbuffer_add_printf(job->out, ")\r\n");
	evbuffer_add_printf(job->tagged, "%s OK Status completed.\r\n", job->tag);
	mailbox_free(&mb);
	free(dir);
}

static void
work_select(struct imap_job *job)
{
	struct mailbox *mb = NULL;
	char *dir, *err = NULL;
	int ex;

	/* the old one goes whatever happens (RFC 3501 6.3.1) */
	job->deselect = true;
	ex = mailbox_folder_exists(job->root, job->name);
	if (ex != 1) {
		evbuffer_add_printf(job->tagged, "%s NO [NONEXISTENT] Mailbox does not exist.\r\n", job->tag);
		return;
	}
	dir = mailbox_folder_dir(job->root, job->name);
	if (mailbox_open(dir, &mb, &err) < 0) {
		log_msg(LOG_LEVEL_ERR, "imap select %s: %s", dir, err);
		evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot open the mailbox.\r\n", job->tag);
		free(err);
		free(dir);
		return;
	}
	free(dir);
	size_t first_unseen = 0;
	for (size_t i = 0; i < mb->n_msgs && first_unseen == 0; i++)
		if (strchr(mb->msgs[i].flags, 'S') == NULL)
			first_unseen = i + 1;
	evbuffer_add_printf(job->out, "* FLAGS ");
	out_flag_list(job->out, mb, false);
	evbuffer_add(job->out, "\r\n", 2);
	if (job->readonly) {
		evbuffer_add_printf(job->out, "* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n");
	} else {
		evbuffer_add_printf(job->out, "* OK [PERMANENTFLAGS ");
		out_flag_list(job->out, mb, true);
		evbuffer_add_printf(job->out, "] Flags permitted.\r\n");
	}
	evbuffer_add_printf(job->out, "* %zu EXISTS\r\n* 0 RECENT\r\n", mb->n_msgs);
	if (first_unseen > 0)
		evbuffer_add_printf(job->out, "* OK [UNSEEN %zu] First unseen.\r\n", first_unseen);
	evbuffer_add_printf(job->out, "* OK [UIDVALIDITY %u] UIDs valid\r\n* OK [UIDNEXT %u] Predicted next UID\r\n",
			    mb->uidvalidity, mb->uidnext);
	evbuffer_add_printf(job->tagged, "%s OK [%s] %s completed.\r\n", job->tag,
			    job->readonly ? "READ-ONLY" : "READ-WRITE", job->readonly ? "Examine" : "Select");
	job->new_sel = xcalloc(1, sizeof(*job->new_sel));
	job->new_sel->mb = mb;
	job->new_sel->name = mailbox_folder_is_inbox(job->name) ? xstrdup("INBOX") : xstrdup(job->name);
	job->new_sel->readonly = job->readonly;
}

static void
work_append(struct imap_job *job)
{
	char *dir, *err = NULL;
	uint32_t uid, validity;

	if (mailbox_folder_exists(job->root, job->name) != 1) {
		evbuffer_add_printf(job->tagged, "%s NO [TRYCREATE] Mailbox does not exist.\r\n", job->tag);
		return;
	}
	dir = mailbox_folder_dir(job->root, job->name);
	if (mailbox_append(dir, job->msg, job->msg_len, job->flags.letters,
			   (const char *const *)job->flags.keywords, job->flags.n_keywords, job->date, &uid,
			   &validity, &err) < 0) {
		log_msg(LOG_LEVEL_ERR, "imap append to %s: %s", dir, err);
		evbuffer_add_printf(job->tagged, "%s NO [SERVERBUG] Cannot store the message.\r\n", job->tag);
		free(err);
		free(dir);
		return;
	}
	free(dir);
	evbuffer_add_printf(job->tagged, "%s OK [APPENDUID %u %u] Append completed.\r\n", job->tag, validity, uid);
}

static void
work_noop(struct imap_job *job)
{
	evbuffer_add_printf(job->tagged, "%s OK %s completed.\r\n", job->tag, job->name != NULL ? job->name : "NOOP");
}

/* -------------------------------------------------------------- login */

struct login_job {
	uint64_t handle;
	struct userdb *userdb;
	char *tag;
	char *user;
	char *password;
	char *mail_root;
	int result;  /* 1 ok, 0 bad credentials, -1 error */
	char *error;
	char *root;
};

static void
login_job_free(struct login_job *job)
{
	if (job->password != NULL) {
		explicit_bzero(job->password, strlen(job->password));
		free(job->password);
	}
	free(job->tag);
	free(job->user);
	free(job->mail_root);
	free(job->error);
	free(job->root);
	free(job);
}

static void
login_work(void *arg)
{
	struct login_job *job = arg;
	char *root = NULL;
	int v = userdb_login(job->userdb, job->mail_root, job->user, job->password, &root,
			     &job->error);

	if (v <= 0) {
		job->result = v;
		return;
	}
	int fd = mailbox_lock(root, true, &job->error); /* makes INBOX */
	if (fd < 0) {
		free(root);
		job->result = -1;
		return;
	}
	close(fd);
	job->root = root;
	job->result = 1;
}

static void
imap_delay_fire(evutil_socket_t fd, short what, void *arg)
{
	struct imap_session *s = arg;

	(void)fd;
	(void)what;
	if (s->delayed_reply != NULL) {
		imap_reply(s, "%s", s->delayed_reply);
		free(s->delayed_reply);
		s->delayed_reply = NULL;
	}
	imap_resume(s);
}

static void
imap_fail_later(struct imap_session *s, char *reply)
{
	long ms = imap_cfg(s)->auth_failure_delay;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	free(s->delayed_reply);
	s->delayed_reply = reply;
	if (s->delay_ev == NULL)
		s->delay_ev = evtimer_new(conn_base(s->conn), imap_delay_fire, s);
	s->flags |= I_F_BUSY;
	imap_arm_timeouts(s);
	evtimer_add(s->delay_ev, &tv);
}

static long
now_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec;
}

/* the keys POP3 uses too: one client's failures count on both services */
static void
throttle_keys(const struct imap_session *s, const char *user, char *ka, size_t kasz, char *ku, size_t kusz)
{
	snprintf(ka, kasz, "a:%s", s->client_addr);
	snprintf(ku, kusz, "u:%s", user);
	str_lower(ku);
}

static void
login_done(void *arg)
{
	struct login_job *job = arg;
	struct imap_session *s = handle_lookup(job->handle);
	char who[128], ka[96], ku[96 + IMAP_USER_MAX];

	if (s == NULL) {
		login_job_free(job);
		return;
	}
	s->flags &= ~I_F_JOB;
	str_log_safe(job->user, who, sizeof(who));
	switch (job->result) {
	case 1: {
		s->root = job->root;
		job->root = NULL;
		str_copy(s->login, job->user, sizeof(s->login));
		s->state = I_AUTH;
		log_msg(LOG_LEVEL_INFO, "%s imap login client=%s user=%s tls=%s", s->id, s->client_addr, who,
			(s->flags & I_F_TLS) ? "yes" : "no");
		metrics_add_label(METRIC_IMAP_LOGINS, "ok", 1);
		char *cap = imap_capability(s);
		imap_reply(s, "%s OK [CAPABILITY %s] Logged in.", job->tag, cap);
		free(cap);
		break;
	}
	case 0:
		throttle_keys(s, job->user, ka, sizeof(ka), ku, sizeof(ku));
		mailbox_throttle_fail(ka, imap_cfg(s)->auth_failure_window, now_sec());
		mailbox_throttle_fail(ku, imap_cfg(s)->auth_failure_window, now_sec());
		log_msg(LOG_LEVEL_INFO, "%s imap auth failed client=%s user=%s reason=bad_credentials", s->id,
			s->client_addr, who);
		metrics_add_label(METRIC_IMAP_LOGINS, "failed", 1);
		imap_fail_later(s, xasprintf("%s NO [AUTHENTICATIONFAILED] Authentication failed.", job->tag));
		login_job_free(job);
		conn_settle(s->conn);
		return;
	default:
		log_msg(LOG_LEVEL_ERR, "%s imap auth failed client=%s user=%s reason=error: %s", s->id,
			s->client_addr, who, job->error ? job->error : "?");
		imap_reply(s, "%s NO [UNAVAILABLE] Temporary server error, try again later.", job->tag);
		break;
	}
	login_job_free(job);
	imap_resume(s);
}

static void
imap_login(struct imap_session *s, const char *tag, const char *user, const char *password)
{
	const struct imap_settings *is = imap_cfg(s);
	char ka[96], ku[96 + IMAP_USER_MAX], who[128];
	long now = now_sec();
	struct login_job *job;

	if (strlen(user) == 0 || strlen(user) > IMAP_USER_MAX) {
		imap_fail_later(s, xasprintf("%s NO [AUTHENTICATIONFAILED] Authentication failed.", tag));
		return;
	}
	throttle_keys(s, user, ka, sizeof(ka), ku, sizeof(ku));
	if (mailbox_throttle_blocked(ka, is->auth_failures_max, is->auth_failure_window, now) ||
	    mailbox_throttle_blocked(ku, is->auth_failures_max, is->auth_failure_window, now)) {
		str_log_safe(user, who, sizeof(who));
		log_msg(LOG_LEVEL_INFO, "%s imap auth failed client=%s user=%s reason=throttled", s->id,
			s->client_addr, who);
		metrics_add_label(METRIC_IMAP_LOGINS, "failed", 1);
		imap_fail_later(s, xasprintf("%s NO [UNAVAILABLE] Too many failed logins, try again later.", tag));
		return;
	}
	job = xcalloc(1, sizeof(*job));
	job->handle = s->handle;
	job->userdb = s->env.userdb;
	job->tag = xstrdup(tag);
	job->user = xstrdup(user);
	job->password = xstrdup(password);
	job->mail_root = xstrdup(backends_settings(s->env.cfg)->mail_root);
	if (workers_submit(daemon_loop_workers(conn_loop(s->conn)), WORKER_LANE_SCAN, conn_base(s->conn),
			   login_work, login_done, job) < 0) {
		login_job_free(job);
		imap_reply(s, "%s NO [UNAVAILABLE] Server busy, try again later.", tag);
		return;
	}
	s->flags |= I_F_BUSY | I_F_JOB;
	imap_arm_timeouts(s);
}

/* ------------------------------------------------------------ commands */

struct cmd_ctx {
	struct imap_session *s;
	const char *tag;
	struct imap_parser *ps;
	bool uid;
	char *buf; /* the command buffer: APPEND keeps it */
};

static void
syntax_error(struct cmd_ctx *c)
{
	char msg[160];

	snprintf(msg, sizeof(msg), "Error in IMAP command: %s.",
		 c->ps->error != NULL ? c->ps->error : "invalid arguments");
	imap_bad(c->s, c->tag, msg);
}

/* A mailbox name argument: astring, no NUL, INBOX normalised. */
static bool
arg_mailbox(struct cmd_ctx *c, char **name_r)
{
	size_t len;

	*name_r = NULL;
	if (!imap_parse_sp(c->ps) || !imap_parse_astring(c->ps, name_r, &len))
		return false;
	if (strlen(*name_r) != len) {
		free(*name_r);
		*name_r = NULL;
		c->ps->error = "NUL in a mailbox name";
		return false;
	}
	if (mailbox_folder_is_inbox(*name_r)) {
		free(*name_r);
		*name_r = xstrdup("INBOX");
	}
	return true;
}

static void
cmd_capability(struct cmd_ctx *c)
{
	char *cap;

	if (!imap_parse_end(c->ps)) {
		syntax_error(c);
		return;
	}
	cap = imap_capability(c->s);
	imap_reply(c->s, "* CAPABILITY %s", cap);
	imap_reply(c->s, "%s OK Capability completed.", c->tag);
	free(cap);
}

static void
cmd_noop(struct cmd_ctx *c)
{
	if (!imap_parse_end(c->ps)) {
		syntax_error(c);
		return;
	}
	if (c->s->selected) {
		struct imap_job *job = job_new(c->s, c->tag, work_noop);
		job->refresh = true;
		job_submit(c->s, job, WORKER_LANE_DELIVERY);
		return;
	}
	imap_reply(c->s, "%s OK NOOP completed.", c->tag);
}

static void
cmd_check(struct cmd_ctx *c)
{
	struct imap_job *job;

	if (!imap_parse_end(c->ps)) {
		syntax_error(c);
		return;
	}
	job = job_new(c->s, c->tag, work_noop);
	job->name = xstrdup("Check");
	job->refresh = true;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
}

static void
cmd_logout(struct cmd_ctx *c)
{
	if (!imap_parse_end(c->ps)) {
		syntax_error(c);
		return;
	}
	imap_reply(c->s, "* BYE Logging out.");
	imap_reply(c->s, "%s OK Logout completed.", c->tag);
	c->s->state = I_LOGOUT;
	imap_close(c->s, "logout");
}

static void
cmd_starttls(struct cmd_ctx *c)
{
	struct imap_session *s = c->s;

	if (!imap_parse_end(c->ps)) {
		syntax_error(c);
		return;
	}
	if (s->flags & I_F_TLS) {
		imap_bad(s, c->tag, "TLS is already active.");
		return;
	}
	if (s->env.ssl_ctx == NULL || conn_starttls(s->conn, s->env.ssl_ctx) < 0) {
		imap_reply(s, "%s NO TLS is not available.", c->tag);
		return;
	}
	imap_reply(s, "%s OK Begin TLS negotiation now.", c->tag);
	s->flags |= I_F_BUSY; /* until tls_up */
}

static void
cmd_login(struct cmd_ctx *c)
{
	char *user = NULL, *pass = NULL;
	size_t ul, pl;

	if (!imap_parse_sp(c->ps) || !imap_parse_astring(c->ps, &user, &ul) || !imap_parse_sp(c->ps) ||
	    !imap_parse_astring(c->ps, &pass, &pl) || !imap_parse_end(c->ps)) {
		free(user);
		if (pass != NULL)
			explicit_bzero(pass, strlen(pass));
		free(pass);
		syntax_error(c);
		return;
	}
	if (!imap_plaintext_ok(c->s)) {
		imap_reply(c->s, "%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.", c->tag);
	} else if (strlen(user) != ul || strlen(pass) != pl) {
		imap_bad(c->s, c->tag, "NUL in the user name or password.");
	} else {
		imap_login(c->s, c->tag, user, pass);
	}
	explicit_bzero(pass, pl);
	free(pass);
	free(user);
}

/* a PLAIN response (base64) */
static void
sasl_plain(struct imap_session *s, const char *tag, const char *b64, size_t len)
{
	char *buf;
	size_t blen;
	const char *authz, *authc, *pass;

	if (len == 1 && b64[0] == '*') {
		imap_bad(s, tag, "Authentication aborted.");
		return;
	}
	if (len == 1 && b64[0] == '=')
		len = 0;
	if (sasl_base64_decode(b64, len, &buf, &blen) < 0) {
		imap_bad(s, tag, "Invalid base64 data.");
		return;
	}
	if (sasl_plain_split(buf, blen, &authz, &authc, &pass) < 0 ||
	    (authz[0] != '\0' && strcasecmp(authz, authc) != 0)) {
		imap_bad(s, tag, "Invalid SASL PLAIN response.");
	} else {
		imap_login(s, tag, authc, pass);
	}
	explicit_bzero(buf, blen);
	free(buf);
}

static void
cmd_authenticate(struct cmd_ctx *c)
{
	char *mech = NULL, *ir = NULL;

	if (!imap_parse_sp(c->ps) || !imap_parse_atom(c->ps, &mech)) {
		syntax_error(c);
		return;
	}
	if (imap_parse_peek(c->ps, ' ')) {
		size_t l;
		c->ps->p++;
		if (!imap_parse_atom(c->ps, &ir) && !imap_parse_peek(c->ps, '=')) {
			free(mech);
			syntax_error(c);
			return;
		}
		if (ir == NULL) {
			c->ps->p++;
			ir = xstrdup("=");
		}
		(void)l;
	}
	if (!imap_parse_end(c->ps)) {
		free(mech);
		free(ir);
		syntax_error(c);
		return;
	}
	if (strcasecmp(mech, "PLAIN") != 0) {
		imap_reply(c->s, "%s NO Unsupported authentication mechanism.", c->tag);
	} else if (!imap_plaintext_ok(c->s)) {
		imap_reply(c->s, "%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.", c->tag);
	} else if (ir != NULL) {
		sasl_plain(c->s, c->tag, ir, strlen(ir));
	} else {
		free(c->s->wait_tag);
		c->s->wait_tag = xstrdup(c->tag);
		c->s->flags |= I_F_SASL;
		imap_reply(c->s, "+ ");
	}
	if (ir != NULL)
		explicit_bzero(ir, strlen(ir));
	free(ir);
	free(mech);
}

static void
cmd_id(struct cmd_ctx *c)
{
	/* "NIL" or a list of string pairs: read and ignored (the reply is ours) */
	const char *p = c->ps->p;
	(void)p;
	if (!imap_parse_sp(c->ps)) {
		syntax_error(c);
		return;
	}
	imap_reply(c->s, "* ID (\"name\" \"mxguard\" \"vendor\" \"mxguard\")");
	imap_reply(c->s, "%s OK ID completed.", c->tag);
}

static void
cmd_enable(struct cmd_ctx *c)
{
	if (!imap_parse_sp(c->ps)) {
		syntax_error(c);
		return;
	}
	/* none of the extensions this server has needs enabling */
	imap_reply(c->s, "* ENABLED");
	imap_reply(c->s, "%s OK Enabled.", c->tag);
}

static void
cmd_namespace(struct cmd_ctx *c)
{
	if (!imap_parse_end(c->ps)) {
		syntax_error(c);
		return;
	}
	imap_reply(c->s, "* NAMESPACE ((\"\" \".\")) NIL NIL");
	imap_reply(c->s, "%s OK Namespace completed.", c->tag);
}

static void
cmd_select_common(struct cmd_ctx *c, bool readonly)
{
	char *name;
	struct imap_job *job;

	if (!arg_mailbox(c, &name) || !imap_parse_end(c->ps)) {
		free(name);
		syntax_error(c);
		return;
	}
	job = job_new(c->s, c->tag, work_select);
	job->name = name;
	job->readonly = readonly;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
}

static void
cmd_select(struct cmd_ctx *c)
{
	cmd_select_common(c, false);
}

static void
cmd_examine(struct cmd_ctx *c)
{
	cmd_select_common(c, true);
}

static void
cmd_one_mailbox(struct cmd_ctx *c, imap_work_fn work, bool flag)
{
	char *name;
	struct imap_job *job;

	if (!arg_mailbox(c, &name) || !imap_parse_end(c->ps)) {
		free(name);
		syntax_error(c);
		return;
	}
	job = job_new(c->s, c->tag, work);
	job->name = name;
	job->is_move = flag;
	job->refresh = true;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
}

static void
cmd_create(struct cmd_ctx *c)
{
	cmd_one_mailbox(c, work_create, false);
}

static void
cmd_delete(struct cmd_ctx *c)
{
	cmd_one_mailbox(c, work_delete, false);
}

static void
cmd_subscribe(struct cmd_ctx *c)
{
	cmd_one_mailbox(c, work_subscribe, false);
}

static void
cmd_unsubscribe(struct cmd_ctx *c)
{
	cmd_one_mailbox(c, work_subscribe, true);
}

static void
cmd_rename(struct cmd_ctx *c)
{
	char *a = NULL, *b = NULL;
	struct imap_job *job;

	if (!arg_mailbox(c, &a) || !arg_mailbox(c, &b) || !imap_parse_end(c->ps)) {
		free(a);
		free(b);
		syntax_error(c);
		return;
	}
	job = job_new(c->s, c->tag, work_rename);
	job->name = a;
	job->name2 = b;
	job->refresh = true;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
}

/* LIST's pattern: a list-mailbox is an astring that may also hold % and * */
static bool
arg_pattern(struct imap_parser *ps, char **out)
{
	size_t l;
	const char *q = ps->p;

	if (imap_parse_peek(ps, '"') || imap_parse_peek(ps, '{'))
		return imap_parse_string(ps, out, &l) && strlen(*out) == l;
	while (q < ps->end && (unsigned char)*q > 0x20 && (unsigned char)*q < 0x7f && *q != '(' && *q != ')' &&
	       *q != '{' && *q != '"' && *q != '\\')
		q++;
	if (q == ps->p)
		return false;
	*out = xstrndup(ps->p, (size_t)(q - ps->p));
	ps->p = q;
	return true;
}

static void
cmd_list_common(struct cmd_ctx *c, bool lsub)
{
	char *ref = NULL, *pat = NULL;
	size_t l;
	struct imap_job *job;

	if (!imap_parse_sp(c->ps) || !imap_parse_astring(c->ps, &ref, &l) || strlen(ref) != l ||
	    !imap_parse_sp(c->ps) || !arg_pattern(c->ps, &pat) || !imap_parse_end(c->ps)) {
		free(ref);
		free(pat);
		syntax_error(c);
		return;
	}
	job = job_new(c->s, c->tag, work_list);
	job->name = ref;
	job->name2 = pat;
	job->is_move = lsub;
	job->refresh = true;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
}

static void
cmd_list(struct cmd_ctx *c)
{
	cmd_list_common(c, false);
}

static void
cmd_lsub(struct cmd_ctx *c)
{
	cmd_list_common(c, true);
}

static void
cmd_status(struct cmd_ctx *c)
{
	char *name;
	unsigned items = 0;
	struct imap_job *job;

	if (!arg_mailbox(c, &name))
		goto bad;
	if (!imap_parse_sp(c->ps) || !imap_parse_peek(c->ps, '('))
		goto bad_name;
	c->ps->p++;
	for (;;) {
		char *a;
		if (!imap_parse_atom(c->ps, &a))
			goto bad_name;
		if (strcasecmp(a, "MESSAGES") == 0)
			items |= ST_MESSAGES;
		else if (strcasecmp(a, "RECENT") == 0)
			items |= ST_RECENT;
		else if (strcasecmp(a, "UIDNEXT") == 0)
			items |= ST_UIDNEXT;
		else if (strcasecmp(a, "UIDVALIDITY") == 0)
			items |= ST_UIDVALIDITY;
		else if (strcasecmp(a, "UNSEEN") == 0)
			items |= ST_UNSEEN;
		else {
			free(a);
			c->ps->error = "Unknown STATUS item";
			goto bad_name;
		}
		free(a);
		if (imap_parse_peek(c->ps, ')')) {
			c->ps->p++;
			break;
		}
		if (!imap_parse_sp(c->ps))
			goto bad_name;
	}
	if (!imap_parse_end(c->ps))
		goto bad_name;
	job = job_new(c->s, c->tag, work_status);
	job->name = name;
	job->status_items = items;
	job->refresh = true;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
	return;
bad_name:
	free(name);
bad:
	syntax_error(c);
}

static void
cmd_append(struct cmd_ctx *c)
{
	char *name;
	struct imap_flags flags = { 0 };
	time_t date = time(NULL);
	const char *msg;
	size_t len;
	struct imap_job *job;

	if (!arg_mailbox(c, &name))
		goto bad;
	if (!imap_parse_sp(c->ps))
		goto bad_name;
	if (imap_parse_peek(c->ps, '(')) {
		if (!imap_parse_flags(c->ps, false, &flags) || !imap_parse_sp(c->ps))
			goto bad_name;
	}
	if (imap_parse_peek(c->ps, '"')) {
		if (!imap_parse_datetime(c->ps, &date) || !imap_parse_sp(c->ps))
			goto bad_name;
	}
	if (!imap_parse_literal_ref(c->ps, &msg, &len) || !imap_parse_end(c->ps))
		goto bad_name;
	if (len == 0) {
		imap_reply(c->s, "%s NO Empty message.", c->tag);
		free(name);
		imap_flags_clear(&flags);
		return;
	}
	job = job_new(c->s, c->tag, work_append);
	job->name = name;
	job->flags = flags;
	job->date = date;
	job->data = c->buf; /* msg points into it */
	c->buf = NULL;
	job->msg = msg;
	job->msg_len = len;
	job->refresh = true;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
	return;
bad_name:
	free(name);
	imap_flags_clear(&flags);
bad:
	syntax_error(c);
}

static void
cmd_close(struct cmd_ctx *c)
{
	if (!imap_parse_end(c->ps)) {
		syntax_error(c);
		return;
	}
	job_submit(c->s, job_new(c->s, c->tag, work_close), WORKER_LANE_DELIVERY);
}

static void
cmd_unselect(struct cmd_ctx *c)
{
	if (!imap_parse_end(c->ps)) {
		syntax_error(c);
		return;
	}
	sel_free(&c->s->sel);
	c->s->selected = false;
	c->s->state = I_AUTH;
	imap_reply(c->s, "%s OK Unselect completed.", c->tag);
}

static void
cmd_expunge(struct cmd_ctx *c)
{
	struct imap_job *job = job_new(c->s, c->tag, work_expunge);

	job->uid = c->uid;
	if (c->uid && (!imap_parse_sp(c->ps) || !imap_parse_seqset(c->ps, &job->set))) {
		job_free(job);
		syntax_error(c);
		return;
	}
	if (!imap_parse_end(c->ps)) {
		job_free(job);
		syntax_error(c);
		return;
	}
	job->refresh = true;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
}

static void
cmd_search(struct cmd_ctx *c)
{
	struct imap_job *job = job_new(c->s, c->tag, work_search);
	char *charset = NULL;

	job->uid = c->uid;
	if (!imap_parse_sp(c->ps) || !imap_parse_search(c->ps, &charset, &job->search)) {
		job_free(job);
		syntax_error(c);
		return;
	}
	if (charset != NULL && strcasecmp(charset, "US-ASCII") != 0 && strcasecmp(charset, "UTF-8") != 0) {
		imap_reply(c->s, "%s NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset.", c->tag);
		free(charset);
		job_free(job);
		return;
	}
	free(charset);
	job->refresh = c->uid;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
}

static void
cmd_fetch(struct cmd_ctx *c)
{
	struct imap_job *job = job_new(c->s, c->tag, work_fetch);

	job->uid = c->uid;
	if (!imap_parse_sp(c->ps) || !imap_parse_seqset(c->ps, &job->set) || !imap_parse_sp(c->ps) ||
	    !imap_parse_fetch(c->ps, &job->fetch) || !imap_parse_end(c->ps)) {
		job_free(job);
		syntax_error(c);
		return;
	}
	job->refresh = c->uid;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
}

static void
cmd_store(struct cmd_ctx *c)
{
	struct imap_job *job = job_new(c->s, c->tag, work_store);
	char *item = NULL;

	job->uid = c->uid;
	if (!imap_parse_sp(c->ps) || !imap_parse_seqset(c->ps, &job->set) || !imap_parse_sp(c->ps))
		goto bad;
	job->store_mode = STORE_SET;
	if (imap_parse_peek(c->ps, '+') || imap_parse_peek(c->ps, '-')) {
		job->store_mode = *c->ps->p == '+' ? STORE_ADD : STORE_REMOVE;
		c->ps->p++;
	}
	if (!imap_parse_atom(c->ps, &item))
		goto bad;
	if (strcasecmp(item, "FLAGS.SILENT") == 0)
		job->silent = true;
	else if (strcasecmp(item, "FLAGS") != 0) {
		c->ps->error = "Invalid STORE item";
		goto bad;
	}
	if (!imap_parse_sp(c->ps) || !imap_parse_flags(c->ps, true, &job->flags) || !imap_parse_end(c->ps))
		goto bad;
	free(item);
	job->refresh = c->uid;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
	return;
bad:
	free(item);
	job_free(job);
	syntax_error(c);
}

static void
cmd_copy_common(struct cmd_ctx *c, bool move)
{
	struct imap_job *job = job_new(c->s, c->tag, work_copy);

	job->uid = c->uid;
	job->is_move = move;
	if (c->s->env.junk_moved != NULL) {
		/* the session may end while the job runs: the job keeps its own */
		job->junk_moved = c->s->env.junk_moved;
		job->cfg = config_ref((struct mx_config *)c->s->env.cfg);
		job->user = xstrdup(c->s->login);
	}
	if (!imap_parse_sp(c->ps) || !imap_parse_seqset(c->ps, &job->set) || !arg_mailbox(c, &job->name) ||
	    !imap_parse_end(c->ps)) {
		job_free(job);
		syntax_error(c);
		return;
	}
	job->refresh = c->uid || move;
	job_submit(c->s, job, WORKER_LANE_DELIVERY);
}

static void
cmd_copy(struct cmd_ctx *c)
{
	cmd_copy_common(c, false);
}

static void
cmd_move(struct cmd_ctx *c)
{
	cmd_copy_common(c, true);
}

static void
cmd_idle(struct cmd_ctx *c)
{
	struct imap_session *s = c->s;

	if (!imap_parse_end(c->ps)) {
		syntax_error(c);
		return;
	}
	free(s->wait_tag);
	s->wait_tag = xstrdup(c->tag);
	s->flags |= I_F_IDLE;
	imap_reply(s, "+ idling");
	/* the watch is set up on the pool (path lookups may block), then a
	 * refresh reports anything that changed before it began */
	if (s->selected) {
		struct imap_job *job = job_new(s, "*", work_idle_start);
		job->refresh = true;
		job_submit(s, job, WORKER_LANE_DELIVERY);
	}
}

static void
ino_read(evutil_socket_t fd, short what, void *arg)
{
	struct imap_session *s = arg;
	char buf[4096];

	(void)what;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	if (!(s->flags & I_F_IDLE) || conn_closing(s->conn))
		return;
	if (s->flags & I_F_BUSY) {
		s->flags |= I_F_IDLE_DIRTY;
		return;
	}
	struct imap_job *job = job_new(s, "*", work_nothing);
	job->refresh = true;
	job_submit(s, job, WORKER_LANE_DELIVERY);
	conn_settle(s->conn);
}

/* -------------------------------------------------------- command table */

struct imap_command {
	const char *name;
	unsigned states;
	bool uid_ok;  /* may follow UID */
	void (*handler)(struct cmd_ctx *c);
};

static const struct imap_command imap_commands[] = {
	{ "CAPABILITY", S_ANY, false, cmd_capability },
	{ "NOOP", S_ANY, false, cmd_noop },
	{ "LOGOUT", S_ANY, false, cmd_logout },
	{ "ID", S_ANY, false, cmd_id },
	{ "STARTTLS", S_NA, false, cmd_starttls },
	{ "AUTHENTICATE", S_NA, false, cmd_authenticate },
	{ "LOGIN", S_NA, false, cmd_login },
	{ "ENABLE", S_AU | S_SE, false, cmd_enable },
	{ "NAMESPACE", S_AU | S_SE, false, cmd_namespace },
	{ "SELECT", S_AU | S_SE, false, cmd_select },
	{ "EXAMINE", S_AU | S_SE, false, cmd_examine },
	{ "CREATE", S_AU | S_SE, false, cmd_create },
	{ "DELETE", S_AU | S_SE, false, cmd_delete },
	{ "RENAME", S_AU | S_SE, false, cmd_rename },
	{ "SUBSCRIBE", S_AU | S_SE, false, cmd_subscribe },
	{ "UNSUBSCRIBE", S_AU | S_SE, false, cmd_unsubscribe },
	{ "LIST", S_AU | S_SE, false, cmd_list },
	{ "LSUB", S_AU | S_SE, false, cmd_lsub },
	{ "STATUS", S_AU | S_SE, false, cmd_status },
	{ "APPEND", S_AU | S_SE, false, cmd_append },
	{ "IDLE", S_AU | S_SE, false, cmd_idle },
	{ "CHECK", S_SE, false, cmd_check },
	{ "CLOSE", S_SE, false, cmd_close },
	{ "UNSELECT", S_SE, false, cmd_unselect },
	{ "EXPUNGE", S_SE, true, cmd_expunge },
	{ "SEARCH", S_SE, true, cmd_search },
	{ "FETCH", S_SE, true, cmd_fetch },
	{ "STORE", S_SE, true, cmd_store },
	{ "COPY", S_SE, true, cmd_copy },
	{ "MOVE", S_SE, true, cmd_move },
};

static const struct imap_command *
command_find(const char *name)
{
	for (size_t i = 0; i < N_ELEMENTS(imap_commands); i++)
		if (strcasecmp(imap_commands[i].name, name) == 0)
			return &imap_commands[i];
	return NULL;
}

static void
imap_command(struct imap_session *s, char *buf, size_t len)
{
	struct imap_parser ps;
	char *tag = NULL, *name = NULL;
	const struct imap_command *cmd;
	struct cmd_ctx c = { .s = s, .ps = &ps, .buf = buf };

	imap_parser_init(&ps, buf, len);
	if (!imap_parse_tag(&ps, &tag)) {
		imap_bad(s, NULL, "Error in IMAP command: invalid tag.");
		free(buf);
		return;
	}
	c.tag = tag;
	if (!imap_parse_sp(&ps) || !imap_parse_atom(&ps, &name)) {
		imap_bad(s, tag, "Error in IMAP command: missing command.");
		goto out;
	}
	if (strcasecmp(name, "UID") == 0) {
		free(name);
		name = NULL;
		if (!imap_parse_sp(&ps) || !imap_parse_atom(&ps, &name)) {
			imap_bad(s, tag, "Error in IMAP command: UID needs a command.");
			goto out;
		}
		c.uid = true;
	}
	s->commands++;
	if (log_enabled(LOG_LEVEL_DEBUG))
		log_msg(LOG_LEVEL_DEBUG, "%s imap command=\"%s%s\"", s->id, c.uid ? "UID " : "", name);
	cmd = command_find(name);
	if (cmd == NULL || (c.uid && !cmd->uid_ok)) {
		imap_bad(s, tag, "Error in IMAP command: unknown command.");
		goto out;
	}
	if (!(cmd->states & (1u << s->state))) {
		if (s->state == I_NOTAUTH)
			imap_bad(s, tag, "Not logged in.");
		else if (cmd->states == S_NA)
			imap_bad(s, tag, "Already logged in.");
		else
			imap_bad(s, tag, "No mailbox selected.");
		goto out;
	}
	cmd->handler(&c);
out:
	free(name);
	free(tag);
	free(c.buf);
}

/* ------------------------------------------------- reading the commands */

static void
cmd_reset(struct imap_session *s)
{
	free(s->cmd);
	s->cmd = NULL;
	s->cmd_len = s->cmd_cap = 0;
	s->lit_left = 0;
	s->cmd_exempt = 0;
	s->cmd_append = false;
}

static void
cmd_append_bytes(struct imap_session *s, const char *p, size_t n)
{
	if (s->cmd_len + n + 1 > s->cmd_cap) {
		s->cmd_cap = (s->cmd_len + n + 1) * 2;
		s->cmd = xrealloc(s->cmd, s->cmd_cap);
	}
	memcpy(s->cmd + s->cmd_len, p, n);
	s->cmd_len += n;
	s->cmd[s->cmd_len] = '\0';
}

/* the tag of the command being assembled, for a refusal */
static char *
cmd_tag(const struct imap_session *s)
{
	size_t n = 0;

	while (n < s->cmd_len && n < IMAP_TAG_MAX && s->cmd[n] != ' ')
		n++;
	return n > 0 ? xstrndup(s->cmd, n) : xstrdup("*");
}

/* Is the command being assembled an APPEND (its message gets append_max)? */
static bool
cmd_is_append(const char *line, size_t len)
{
	const char *sp = memchr(line, ' ', len);

	if (sp == NULL)
		return false;
	size_t rest = len - (size_t)(sp + 1 - line);
	return rest >= 7 && strncasecmp(sp + 1, "APPEND ", 7) == 0;
}

static void
imap_line(struct imap_session *s, char *line, size_t len)
{
	uint64_t n;
	bool nonsync;
	const struct imap_settings *is = imap_cfg(s);

	if (s->flags & I_F_IDLE) {
		if (len == 4 && strncasecmp(line, "DONE", 4) == 0) {
			char *tag = s->wait_tag;
			s->wait_tag = NULL;
			idle_stop(s);
			imap_reply(s, "%s OK Idle completed.", tag);
			free(tag);
		} else {
			idle_stop(s);
			imap_bad(s, s->wait_tag, "Expected DONE.");
			free(s->wait_tag);
			s->wait_tag = NULL;
		}
		return;
	}
	if (s->flags & I_F_SASL) {
		char *tag = s->wait_tag;
		s->wait_tag = NULL;
		s->flags &= ~I_F_SASL;
		sasl_plain(s, tag, line, len);
		free(tag);
		return;
	}
	if (s->cmd_len == 0)
		s->cmd_append = cmd_is_append(line, len);
	if (s->cmd_len - s->cmd_exempt + len + 2 > (size_t)is->command_max) {
		char *tag;
		cmd_append_bytes(s, line, len < 80 ? len : 80);
		tag = cmd_tag(s);
		cmd_reset(s);
		imap_bad(s, tag, "Command too long.");
		free(tag);
		return;
	}
	cmd_append_bytes(s, line, len);
	if (memchr(line, '\0', len) != NULL) {
		char *tag = cmd_tag(s);
		cmd_reset(s);
		imap_bad(s, tag, "NUL in a command line.");
		free(tag);
		return;
	}
	if (imap_line_literal(line, len, &n, &nonsync)) {
		uint64_t cap = s->cmd_append ? (uint64_t)is->append_max
					     : (uint64_t)is->command_max - (s->cmd_len - s->cmd_exempt);
		if (n > cap) {
			char *tag = cmd_tag(s);
			cmd_reset(s);
			if (nonsync) {
				/* the client sends it anyway: nothing to do but go */
				imap_reply(s, "* BYE [TOOBIG] Literal too large.");
				imap_close(s, "literal_too_large");
			} else {
				imap_reply(s, "%s NO [TOOBIG] Literal too large.", tag);
			}
			free(tag);
			return;
		}
		cmd_append_bytes(s, "\r\n", 2);
		if (s->cmd_len + n + 1 > s->cmd_cap) {
			s->cmd_cap = s->cmd_len + (size_t)n + 256;
			s->cmd = xrealloc(s->cmd, s->cmd_cap);
		}
		s->lit_left = n;
		if (s->cmd_append)
			s->cmd_exempt += (size_t)n;
		if (!nonsync)
			imap_reply(s, "+ Ready for literal data");
		return;
	}
	/* complete: the command owns the buffer from here */
	char *buf = s->cmd;
	size_t blen = s->cmd_len;
	s->cmd = NULL;
	s->cmd_len = s->cmd_cap = 0;
	s->cmd_exempt = 0;
	s->cmd_append = false;
	imap_command(s, buf, blen);
}

static void
imap_process(struct imap_session *s)
{
	while (!(s->flags & I_F_BUSY) && !conn_closing(s->conn)) {
		char *line;
		size_t len;
		enum conn_line got;

		if ((s->flags & I_F_SHUTDOWN) && !(s->flags & I_F_IDLE)) {
			imap_reply(s, "* BYE Server shutting down.");
			imap_close(s, "shutdown");
			break;
		}
		if (s->flags & I_F_SHUTDOWN) {
			imap_reply(s, "* BYE Server shutting down.");
			imap_close(s, "shutdown");
			break;
		}
		if (conn_output_len(s->conn) > IMAP_OUTPUT_MAX)
			break;
		if (s->lit_left > 0) {
			size_t avail = conn_input_len(s->conn);
			if (avail == 0)
				break;
			size_t take = avail < s->lit_left ? avail : (size_t)s->lit_left;
			int got_n = evbuffer_remove(conn_input(s->conn), s->cmd + s->cmd_len, take);
			if (got_n <= 0)
				break;
			s->cmd_len += (size_t)got_n;
			s->cmd[s->cmd_len] = '\0';
			s->lit_left -= (uint64_t)got_n;
			continue;
		}
		got = conn_read_line(s->conn, &line, &len);
		if (got == CONN_LINE_NONE)
			break;
		if (got == CONN_LINE_OVERFLOW) {
			imap_reply(s, "* BYE Line too long.");
			log_msg(LOG_LEVEL_INFO, "%s imap line too long client=%s", s->id, s->client_addr);
			imap_close(s, "line_too_long");
			break;
		}
		if (got == CONN_LINE_TOO_LONG) {
			char *tag = s->cmd_len > 0 ? cmd_tag(s) : NULL;
			cmd_reset(s);
			imap_bad(s, tag, "Line too long.");
			free(tag);
			continue;
		}
		imap_line(s, line, len);
		explicit_bzero(line, len); /* it may have held a password */
		free(line);
	}
	if (conn_eof(s->conn) && !(s->flags & I_F_BUSY) && !conn_closing(s->conn) &&
	    conn_output_len(s->conn) <= IMAP_OUTPUT_MAX)
		imap_close(s, "eof");
}

/* ------------------------------------------------------------- handler */

static void
imap_ready(void *ctx)
{
	struct imap_session *s = ctx;

	if (s->xfer != NULL) {
		if (conn_output_len(s->conn) < FETCH_QUEUE)
			job_submit(s, s->xfer, WORKER_LANE_DELIVERY);
		return;
	}
	imap_process(s);
}

static void
imap_tls_up(void *ctx)
{
	struct imap_session *s = ctx;

	s->flags |= I_F_TLS;
	s->flags &= ~I_F_BUSY;
	cmd_reset(s);
	imap_arm_timeouts(s);
	imap_process(s);
}

static void
imap_timeout(void *ctx)
{
	struct imap_session *s = ctx;

	imap_reply(s, "* BYE Disconnected for inactivity.");
	imap_close(s, "timeout");
}

static void
imap_eof(void *ctx)
{
	imap_process(ctx);
}

static void
imap_shutdown(void *ctx)
{
	struct imap_session *s = ctx;

	s->flags |= I_F_SHUTDOWN;
	if (!(s->flags & I_F_BUSY))
		imap_process(s);
}

static void
imap_gone(void *ctx, const char *reason)
{
	struct imap_session *s = ctx;
	char who[128];

	if (s->delay_ev != NULL)
		event_free(s->delay_ev);
	free(s->delayed_reply);
	if (s->xfer != NULL)
		job_free(s->xfer);
	handle_unregister(s->handle);
	if (s->login[0] != '\0') {
		str_log_safe(s->login, who, sizeof(who));
		log_msg(LOG_LEVEL_INFO, "%s imap logout client=%s user=%s commands=%ld reason=%s", s->id,
			s->client_addr, who, s->commands, reason);
	} else {
		log_msg(LOG_LEVEL_INFO, "%s imap disconnected client=%s reason=%s", s->id, s->client_addr, reason);
	}
	imap_release(s);
	cmd_reset(s);
	free(s->wait_tag);
	free(s->root);
	free(s);
}

static const struct conn_handler imap_handler = {
	.ready = imap_ready,
	.tls_up = imap_tls_up,
	.timeout = imap_timeout,
	.eof = imap_eof,
	.shutdown = imap_shutdown,
	.gone = imap_gone,
};

void
imap_session_start(struct conn *conn, const char *refusal, const struct imap_env *env)
{
	struct imap_session *s = xcalloc(1, sizeof(*s));

	s->conn = conn;
	s->env = *env;
	s->ino_fd = -1;
	str_copy(s->id, conn_id(conn), sizeof(s->id));
	str_copy(s->client_addr, conn_addr(conn), sizeof(s->client_addr));
	if (conn_tls(conn))
		s->flags |= I_F_TLS;
	s->handle = handle_register(s);
	conn_attach(conn, &imap_handler, s);
	metrics_add(METRIC_IMAP_SESSIONS, 1);
	conn_set_nodelay(conn);
	conn_set_lines(conn, (size_t)imap_cfg(s)->command_line_max, false);
	imap_arm_timeouts(s);
	if (refusal != NULL) {
		imap_reply(s, "* BYE [UNAVAILABLE] %s", refusal);
		imap_close(s, strcmp(refusal, DAEMON_REFUSAL_SHUTDOWN) == 0 ? "shutdown" : "too_many_connections");
		return;
	}
	char *cap = imap_capability(s);
	imap_reply(s, "* OK [CAPABILITY %s] mxguard IMAP ready.", cap);
	free(cap);
}
