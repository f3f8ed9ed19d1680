/*
 * api.c — what the JSON API does in a user's Maildir, on the worker pool:
 * the folder list with counts, a page of a folder newest first, one
 * message (headers decoded by GMime, its text part; its HTML part as a
 * response of its own), flag changes and moves. It uses the mailbox/
 * layer exactly as IMAP does — the same folder-name check
 * (mailbox_folder_dir), the same UIDs and flag renames, mailbox_copy and
 * an expunge for a move, the junk log and the learning hook for a move
 * into or out of Junk — so an IMAP client sees a change at once.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gmime/gmime.h>
#include <jansson.h>

#include "backends/backends.h"
#include "daemon/daemon.h"
#include "lib/lib.h"
#include "mailbox/mailbox.h"
#include "web/cache.h"
#include "web/web.h"

#define WEB_MESSAGE_READ_MAX (64u << 20)   /* a larger message is not shown */
#define WEB_TEXT_MAX (1u << 20)            /* octets of a text part returned */

static void
result_json(struct web_result *res, int status, json_t *j)
{
	res->status = status;
	res->body = json_dumps(j, JSON_COMPACT);
	if (res->body == NULL)
		res->body = xstrdup("{}");
	res->len = strlen(res->body);
	json_decref(j);
}

static void
result_error(struct web_result *res, int status, const char *msg)
{
	result_json(res, status, json_pack("{s:s}", "error", msg));
}

static json_t *
jstr(const char *s, size_t len)
{
	char *c = web_utf8_clean(s != NULL ? s : "", s != NULL ? len : 0);
	json_t *j = json_string(c);
	free(c);
	return j != NULL ? j : json_string("");
}

static json_t *
jstr0(const char *s)
{
	return jstr(s, s != NULL ? strlen(s) : 0);
}

/* Read up to max octets of message i (a header only: stop at the blank line). */
static char *
read_msg(struct mailbox *mb, size_t i, size_t max, bool header_only, size_t *len_r, time_t *mtime_r)
{
	int fd = mailbox_msg_open(mb, i);
	struct stat sb;
	size_t cap, len = 0;
	char *buf;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &sb) < 0 || (!header_only && (uint64_t)sb.st_size > max)) {
		close(fd);
		return NULL;
	}
	*mtime_r = sb.st_mtime;
	cap = (size_t)sb.st_size < max ? (size_t)sb.st_size : max;
	buf = fs_read_upto(fd, cap, &len);
	close(fd);
	if (header_only) {
		char *e = strstr(buf, "\n\n");
		char *e2 = strstr(buf, "\r\n\r\n");
		if (e2 != NULL && (e == NULL || e2 < e))
			len = (size_t)(e2 - buf) + 4;
		else if (e != NULL)
			len = (size_t)(e - buf) + 2;
		buf[len] = '\0';
	}
	*len_r = len;
	return buf;
}

static GMimeMessage *
parse_msg(const char *data, size_t len)
{
	mime_init_once();
	GMimeStream *st = g_mime_stream_mem_new_with_buffer(data, len);
	GMimeParser *p = g_mime_parser_new_with_stream(st);
	GMimeMessage *m = g_mime_parser_construct_message(p, NULL);

	g_object_unref(p);
	g_object_unref(st);
	return m;
}

static json_t *
addresses(GMimeMessage *m, GMimeAddressType t)
{
	InternetAddressList *l = g_mime_message_get_addresses(m, t);
	char *s = l != NULL ? internet_address_list_to_string(l, NULL, FALSE) : NULL;
	json_t *j = jstr0(s);
	g_free(s);
	return j;
}

/* message i's list row: the cached header fields, the snapshot's flags */
static json_t *
msg_summary(struct web_folder *f, size_t i)
{
	struct mailbox *mb = web_folder_mailbox(f);
	const struct mailbox_msg *mm = &mb->msgs[i];
	const struct web_summary *row = web_folder_summary(f, i);

	return json_pack("{s:I,s:I,s:b,s:b,s:I,s:s,s:s,s:b}", "uid", (json_int_t)mm->uid, "size",
			 (json_int_t)mm->vsize, "seen", strchr(mm->flags, 'S') != NULL, "flagged",
			 strchr(mm->flags, 'F') != NULL, "date", (json_int_t)row->date, "from", row->from,
			 "subject", row->subject, "attachment", row->attachment);
}

/* the folder's directory, checked as IMAP checks it (malloc'd), or NULL
 * with an error result */
static char *
folder_dir(const struct web_call *c, const char *name, struct web_result *res)
{
	char *dir;

	if (name == NULL || !mailbox_folder_name_ok(name)) {
		result_error(res, 400, "invalid folder name");
		return NULL;
	}
	if (mailbox_folder_is_inbox(name))
		return xstrdup(c->root);
	if (mailbox_folder_exists(c->root, name) != 1) {
		result_error(res, 404, "no such folder");
		return NULL;
	}
	dir = mailbox_folder_dir(c->root, name);
	if (dir == NULL)
		result_error(res, 400, "invalid folder name");
	return dir;
}

/* the folder held from the cache, current (web/cache.h), or an error
 * result; web_cache_close when done */
static struct web_folder *
open_folder(const struct web_call *c, const char *name, struct web_result *res)
{
	const struct web_settings *ws = web_settings(c->cfg);
	struct web_folder *f = NULL;
	char *err = NULL, *dir = folder_dir(c, name, res);

	if (dir == NULL)
		return NULL;
	if (web_cache_open(c->cache, dir, ws->cache_folders, ws->cache_size, &f, &err) < 0) {
		log_msg(LOG_LEVEL_ERR, "web cannot open %s: %s", dir, err != NULL ? err : "?");
		free(err);
		free(dir);
		result_error(res, 500, "cannot open the folder");
		return NULL;
	}
	free(dir);
	return f;
}

static void
op_folders(const struct web_call *c, struct web_result *res)
{
	char **names = NULL, *err = NULL;
	size_t n = 0;
	json_t *arr = json_array();

	if (mailbox_folder_list(c->root, &names, &n, &err) < 0) {
		log_msg(LOG_LEVEL_ERR, "web cannot list folders of %s: %s", c->root, err != NULL ? err : "?");
		free(err);
		json_decref(arr);
		result_error(res, 500, "cannot list folders");
		return;
	}
	for (size_t k = 0; k <= n; k++) {
		const char *name = k == 0 ? "INBOX" : names[k - 1];
		struct web_result r = { 0 };
		struct web_folder *f = open_folder(c, name, &r);
		if (f == NULL) {
			free(r.body);
			continue;
		}
		struct mailbox *mb = web_folder_mailbox(f);
		size_t unread = 0;
		for (size_t i = 0; i < mb->n_msgs; i++)
			if (strchr(mb->msgs[i].flags, 'S') == NULL)
				unread++;
		json_array_append_new(arr, json_pack("{s:o,s:I,s:I}", "name", jstr0(name), "total",
						     (json_int_t)mb->n_msgs, "unread", (json_int_t)unread));
		web_cache_close(c->cache, &f);
	}
	mailbox_names_free(names, n);
	result_json(res, 200, json_pack("{s:o,s:s}", "folders", arr, "junk",
					backends_settings(c->cfg)->junk_folder));
}

/* a row's From or Subject holds needle (ASCII case folded) */
static bool
summary_matches(const struct web_summary *row, const char *needle)
{
	return strcasestr(row->from, needle) != NULL || strcasestr(row->subject, needle) != NULL;
}

static void
op_list(const struct web_call *c, struct web_result *res)
{
	struct web_folder *f = open_folder(c, c->folder, res);
	struct mailbox *mb;
	json_t *arr;
	size_t total;

	if (f == NULL)
		return;
	mb = web_folder_mailbox(f);
	arr = json_array();
	/* newest first: UIDs ascend in delivery order */
	size_t start = (size_t)c->page * (size_t)c->per_page;
	if (c->search == NULL) {
		total = mb->n_msgs;
		for (size_t k = start; k < mb->n_msgs && k < start + (size_t)c->per_page; k++)
			json_array_append_new(arr, msg_summary(f, mb->n_msgs - 1 - k));
	} else {
		/* over every message's row (read once, then cached): the count
		 * of matches is the total */
		total = 0;
		for (size_t k = 0; k < mb->n_msgs; k++) {
			size_t i = mb->n_msgs - 1 - k;
			if (summary_matches(web_folder_summary(f, i), c->search)) {
				if (total >= start && total < start + (size_t)c->per_page)
					json_array_append_new(arr, msg_summary(f, i));
				total++;
			}
		}
	}
	result_json(res, 200, json_pack("{s:o,s:I,s:I,s:I}", "messages", arr, "total", (json_int_t)total,
					"page", (json_int_t)c->page, "per_page", (json_int_t)c->per_page));
	web_cache_close(c->cache, &f);
}

#define WEB_ATTACHMENTS_MAX 100

struct parts {
	GMimeTextPart *text, *html;
	unsigned attachments;
	GMimePart *att[WEB_ATTACHMENTS_MAX];
};

static void
part_cb(GMimeObject *parent, GMimeObject *part, gpointer data)
{
	struct parts *p = data;

	(void)parent;
	if (!GMIME_IS_PART(part))
		return;
	if (g_mime_part_is_attachment(GMIME_PART(part))) {
		if (p->attachments < WEB_ATTACHMENTS_MAX)
			p->att[p->attachments] = GMIME_PART(part);
		p->attachments++;
		return;
	}
	if (!GMIME_IS_TEXT_PART(part))
		return;
	GMimeContentType *ct = g_mime_object_get_content_type(part);
	if (p->text == NULL && g_mime_content_type_is_type(ct, "text", "plain"))
		p->text = GMIME_TEXT_PART(part);
	else if (p->html == NULL && g_mime_content_type_is_type(ct, "text", "html"))
		p->html = GMIME_TEXT_PART(part);
}

static int
find_msg(struct mailbox *mb, unsigned uid, struct web_result *res)
{
	long i = mailbox_find_uid(mb, uid);

	if (i < 0)
		result_error(res, 404, "no such message");
	return (int)i;
}

static void attachment_result(struct parts *p, unsigned n, struct web_result *res);

static void
op_read(const struct web_call *c, struct web_result *res, bool html)
{
	struct web_folder *f = open_folder(c, c->folder, res);
	struct mailbox *mb;
	size_t len = 0;
	time_t mtime = 0;
	long i;

	if (f == NULL)
		return;
	mb = web_folder_mailbox(f);
	if ((i = find_msg(mb, c->uid, res)) < 0) {
		web_cache_close(c->cache, &f);
		return;
	}
	char *data = read_msg(mb, (size_t)i, WEB_MESSAGE_READ_MAX, false, &len, &mtime);
	if (data == NULL) {
		result_error(res, 404, "the message is gone or too large to show");
		web_cache_close(c->cache, &f);
		return;
	}
	GMimeMessage *m = parse_msg(data, len);
	struct parts p = { 0 };
	if (m != NULL && m->mime_part != NULL) {
		if (GMIME_IS_MULTIPART(m->mime_part))
			g_mime_multipart_foreach(GMIME_MULTIPART(m->mime_part), part_cb, &p);
		else
			part_cb(NULL, m->mime_part, &p);
	}
	if (c->op == WEB_OP_ATTACHMENT) {
		attachment_result(&p, c->part, res);
	} else if (html) {
		char *t = p.html != NULL ? g_mime_text_part_get_text(p.html) : NULL;
		if (t == NULL) {
			result_error(res, 404, "the message has no HTML part");
		} else {
			res->status = 200;
			res->content_type = xstrdup("text/html; charset=utf-8");
			res->body = web_utf8_clean(t, strlen(t));
			res->len = strlen(res->body);
			res->html_message = true;
		}
		g_free(t);
	} else {
		/* the whole message is here: the list's attachment mark exact */
		(void)web_folder_summary(f, (size_t)i);
		web_folder_set_attachment(f, (size_t)i, p.attachments > 0);
		json_t *o = msg_summary(f, (size_t)i);
		if (m != NULL) {
			json_object_set_new(o, "to", addresses(m, GMIME_ADDRESS_TYPE_TO));
			json_object_set_new(o, "cc", addresses(m, GMIME_ADDRESS_TYPE_CC));
		}
		char *t = p.text != NULL ? g_mime_text_part_get_text(p.text) : NULL;
		size_t tl = t != NULL ? strlen(t) : 0;
		json_object_set_new(o, "text", jstr(t, tl > WEB_TEXT_MAX ? WEB_TEXT_MAX : tl));
		g_free(t);
		json_object_set_new(o, "has_html", json_boolean(p.html != NULL));
		char *h = p.html != NULL ? g_mime_text_part_get_text(p.html) : NULL;
		json_object_set_new(o, "remote_images", json_boolean(h != NULL && web_html_remote_images(h, strlen(h))));
		g_free(h);
		json_t *atts = json_array();
		for (unsigned k = 0; k < p.attachments && k < WEB_ATTACHMENTS_MAX; k++) {
			GMimeContentType *ct = g_mime_object_get_content_type(GMIME_OBJECT(p.att[k]));
			char *type = ct != NULL ? g_mime_content_type_get_mime_type(ct) : NULL;
			json_array_append_new(atts, json_pack("{s:I,s:o,s:o}", "part", (json_int_t)k, "name",
							      jstr0(g_mime_part_get_filename(p.att[k])), "type",
							      jstr0(type)));
			g_free(type);
		}
		json_object_set_new(o, "attachments", atts);
		result_json(res, 200, o);
	}
	if (m != NULL)
		g_object_unref(m);
	free(data);
	web_cache_close(c->cache, &f);
}

static void
op_flags(const struct web_call *c, struct web_result *res)
{
	struct web_folder *f = open_folder(c, c->folder, res);
	struct mailbox *mb;
	char add[4] = "", rem[4] = "";
	size_t na = 0, nr = 0;
	long i;

	if (f == NULL)
		return;
	mb = web_folder_mailbox(f);
	if ((i = find_msg(mb, c->uid, res)) < 0) {
		web_cache_close(c->cache, &f);
		return;
	}
	if (c->seen == 1)
		add[na++] = 'S';
	else if (c->seen == 0)
		rem[nr++] = 'S';
	if (c->flagged == 1)
		add[na++] = 'F';
	else if (c->flagged == 0)
		rem[nr++] = 'F';
	/* our own rename costs no rescan (web/cache.h) */
	char *from = xstrdup(mb->msgs[i].name);
	web_folder_change_begin(f);
	int rc = mailbox_msg_change_flags(mb, (size_t)i, add, rem);
	int err = errno;
	web_folder_change_end(f, rc == 0 ? from : NULL, rc == 0 ? mb->msgs[i].name : NULL);
	free(from);
	errno = err;
	if (rc < 0 || mailbox_sync_dir(mb) < 0) {
		log_errno(LOG_LEVEL_ERR, "web cannot change the flags of uid %u in %s", c->uid, mb->dir);
		result_error(res, errno == ENOENT ? 404 : 500, "cannot change the flags");
	} else {
		result_json(res, 200, json_pack("{s:b,s:b}", "seen", strchr(mb->msgs[i].flags, 'S') != NULL,
						"flagged", strchr(mb->msgs[i].flags, 'F') != NULL));
	}
	web_cache_close(c->cache, &f);
}

static bool
type_token_ok(const char *t)
{
	size_t slash = 0;

	if (t == NULL || t[0] == '\0' || strlen(t) > 100)
		return false;
	for (const char *q = t; *q != '\0'; q++) {
		if (*q == '/')
			slash++;
		else if (!((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '.' || *q == '+' ||
			   *q == '-'))
			return false;
	}
	return slash == 1;
}

/* attachment n, decoded, as a download: its type when it is a plain
 * token (else application/octet-stream), its name percent-encoded */
static void
attachment_result(struct parts *p, unsigned n, struct web_result *res)
{
	if (n >= p->attachments || n >= WEB_ATTACHMENTS_MAX) {
		result_error(res, 404, "no such attachment");
		return;
	}
	GMimePart *part = p->att[n];
	GMimeDataWrapper *w = g_mime_part_get_content(part);
	GMimeStream *mem = g_mime_stream_mem_new();
	if (w != NULL)
		g_mime_data_wrapper_write_to_stream(w, mem);
	GByteArray *ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
	res->status = 200;
	res->len = ba->len;
	res->body = xmalloc(ba->len + 1);
	memcpy(res->body, ba->data, ba->len);
	g_object_unref(mem);
	GMimeContentType *ct = g_mime_object_get_content_type(GMIME_OBJECT(part));
	char *type = ct != NULL ? g_mime_content_type_get_mime_type(ct) : NULL;
	if (type != NULL)
		for (char *q = type; *q != '\0'; q++)
			if (*q >= 'A' && *q <= 'Z')
				*q = (char)(*q - 'A' + 'a');
	res->content_type = xstrdup(type_token_ok(type) ? type : "application/octet-stream");
	g_free(type);
	const char *name = g_mime_part_get_filename(part);
	if (name == NULL || name[0] == '\0')
		name = "attachment";
	GString *d = g_string_new("attachment; filename*=UTF-8''");
	for (const unsigned char *q = (const unsigned char *)name; *q != '\0' && d->len < 600; q++) {
		if ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
		    *q == '.' || *q == '-' || *q == '_')
			g_string_append_c(d, (char)*q);
		else
			g_string_append_printf(d, "%%%02X", *q);
	}
	res->disposition = xstrdup(d->str);
	g_string_free(d, TRUE);
	res->html_message = true; /* the sandboxing CSP: it never runs as a page */
}

/* the Message-ID header of a file's header, for the junk log */
static void
message_id(struct mailbox *mb, size_t i, char *out, size_t outsz)
{
	size_t len = 0;
	time_t mt;
	char *hdr = read_msg(mb, i, 16384, true, &len, &mt);

	str_copy(out, "-", outsz);
	if (hdr == NULL)
		return;
	GMimeMessage *m = parse_msg(hdr, len);
	const char *id = m != NULL ? g_mime_message_get_message_id(m) : NULL;
	if (id != NULL && id[0] != '\0' && strcspn(id, "\t\r\n") == strlen(id))
		snprintf(out, outsz, "<%s>", id);
	if (m != NULL)
		g_object_unref(m);
	free(hdr);
}

static void
op_move(const struct web_call *c, struct web_result *res)
{
	const char *junk = backends_settings(c->cfg)->junk_folder;
	char *dst = NULL, *err = NULL;
	uint32_t duid = 0, validity = 0;
	long i;

	if (c->to == NULL || !mailbox_folder_name_ok(c->to)) {
		result_error(res, 400, "invalid folder name");
		return;
	}
	struct web_folder *f = open_folder(c, c->folder, res);
	if (f == NULL)
		return;
	struct mailbox *mb = web_folder_mailbox(f);
	if ((i = find_msg(mb, c->uid, res)) < 0)
		goto out;
	bool to_inbox = mailbox_folder_is_inbox(c->to);
	bool same = to_inbox ? mailbox_folder_is_inbox(c->folder) : strcmp(c->to, c->folder) == 0;
	if (same) {
		result_error(res, 400, "the message is in that folder already");
		goto out;
	}
	if (!to_inbox && mailbox_folder_exists(c->root, c->to) != 1) {
		/* Trash and Junk are made on first use, as a client would */
		if (strcmp(c->to, "Trash") != 0 && strcmp(c->to, junk) != 0) {
			result_error(res, 404, "no such folder");
			goto out;
		}
		if (mailbox_folder_create(c->root, c->to, &err) == -1) {
			log_msg(LOG_LEVEL_ERR, "web cannot create %s: %s", c->to, err != NULL ? err : "?");
			result_error(res, 500, "cannot create the folder");
			goto out;
		}
	}
	dst = to_inbox ? xstrdup(c->root) : mailbox_folder_dir(c->root, c->to);
	size_t idx = (size_t)i;
	if (dst == NULL || mailbox_copy(mb, &idx, 1, dst, &duid, &validity, &err) < 0) {
		log_msg(LOG_LEVEL_ERR, "web move into %s failed: %s", c->to, err != NULL ? err : "?");
		result_error(res, 500, "the move failed");
		goto out;
	}
	if (duid == 0) {
		result_error(res, 404, "no such message");
		goto out;
	}
	const char *from_name = mailbox_folder_is_inbox(c->folder) ? "INBOX" : c->folder;
	const char *to_name = to_inbox ? "INBOX" : c->to;
	bool from_junk = strcmp(from_name, junk) == 0, to_junk = strcmp(to_name, junk) == 0;
	if (from_junk != to_junk) {
		char mid[256];
		message_id(mb, idx, mid, sizeof(mid));
		if (mailbox_junk_log(c->root, "move", to_junk, from_name, to_name, duid, mid,
				     mb->msgs[idx].base) < 0)
			log_errno(LOG_LEVEL_WARN, "web cannot write %s/%s", c->root, MAILBOX_JUNK_LOG);
		if (c->junk_moved != NULL) {
			size_t len = 0;
			time_t mt;
			char *data = read_msg(mb, idx, WEB_MESSAGE_READ_MAX, false, &len, &mt);
			if (data != NULL)
				c->junk_moved(c->cfg, c->user, data, len, to_junk);
			free(data);
		}
	}
	/* our own unlink costs no rescan (web/cache.h): the message leaves
	 * the snapshot */
	char *from = xstrdup(mb->msgs[idx].name);
	web_folder_change_begin(f);
	int rc = mailbox_msg_expunge(mb, idx);
	web_folder_change_end(f, rc == 0 ? from : NULL, NULL);
	free(from);
	if (rc < 0) {
		log_errno(LOG_LEVEL_ERR, "web cannot remove uid %u from %s after a copy", c->uid, mb->dir);
	} else {
		web_folder_forget(f, idx);
		if (mailbox_sync_dir(mb) < 0)
			log_errno(LOG_LEVEL_ERR, "web cannot fsync %s/cur", mb->dir);
	}
	result_json(res, 200, json_pack("{s:s,s:I}", "folder", to_name, "uid", (json_int_t)duid));
out:
	free(err);
	free(dst);
	web_cache_close(c->cache, &f);
}

void
web_api_run(const struct web_call *c, struct web_result *res)
{
	switch (c->op) {
	case WEB_OP_FOLDERS:
		op_folders(c, res);
		break;
	case WEB_OP_LIST:
		op_list(c, res);
		break;
	case WEB_OP_READ:
		op_read(c, res, false);
		break;
	case WEB_OP_HTML:
		op_read(c, res, true);
		break;
	case WEB_OP_ATTACHMENT:
		op_read(c, res, false);
		break;
	case WEB_OP_FLAGS:
		op_flags(c, res);
		break;
	case WEB_OP_MOVE:
		op_move(c, res);
		break;
	}
}

/* ---------------------------------------------------------- autoconfig */
/* Thunderbird's config-v1.1.xml for the imap, pop3 and smtp listeners of
 * cfg; domain is checked by the caller ([A-Za-z0-9.-] only). */
char *
web_autoconfig(const struct mx_config *cfg, const char *hostname, const char *domain, size_t *len_r)
{
	const struct daemon_settings *ds = daemon_settings(cfg);
	bool tls = ds->tls_cert != NULL && ds->tls_cert[0] != '\0';
	GString *x = g_string_new(NULL);

	g_string_append_printf(x,
			       "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
			       "<clientConfig version=\"1.1\">\n"
			       "  <emailProvider id=\"%s\">\n"
			       "    <domain>%s</domain>\n"
			       "    <displayName>%s</displayName>\n",
			       domain, domain, domain);
	for (int pass = 0; pass < 2; pass++) {
		for (size_t k = 0; k < ds->n_listeners; k++) {
			const struct listen_config *lc = &ds->listeners[k];
			bool in = strcmp(lc->protocol, "imap") == 0 || strcmp(lc->protocol, "pop3") == 0;
			bool out = strcmp(lc->protocol, "smtp") == 0;
			if ((pass == 0 && !in) || (pass == 1 && !out))
				continue;
			const char *colon = strrchr(lc->address, ':');
			if (colon == NULL)
				continue;
			const char *sock = lc->implicit_tls ? "SSL" : tls ? "STARTTLS" : "plain";
			g_string_append_printf(x,
					       "    <%sServer type=\"%s\">\n"
					       "      <hostname>%s</hostname>\n"
					       "      <port>%s</port>\n"
					       "      <socketType>%s</socketType>\n"
					       "      <authentication>password-cleartext</authentication>\n"
					       "      <username>%%EMAILADDRESS%%</username>\n"
					       "    </%sServer>\n",
					       in ? "incoming" : "outgoing", lc->protocol, hostname, colon + 1, sock,
					       in ? "incoming" : "outgoing");
		}
	}
	g_string_append(x, "  </emailProvider>\n</clientConfig>\n");
	*len_r = x->len;
	return g_string_free(x, FALSE);
}
