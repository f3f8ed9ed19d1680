/*
 * reply.c — the web service's answers: the security headers every answer
 * carries (set when a request arrives, and added to the answers evhttp
 * writes itself), and the replies service.c and admin.c send with them.
 */
#include "config.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "web/web.h"

#define CSP_PAGE "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

/* Every answer's headers, set when the request arrives (an answer made
 * later, by a worker's job, keeps them); tls adds Strict-Transport-Security. */
void
web_security_headers(struct evhttp_request *req, bool tls)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_add_header(h, "Content-Security-Policy", CSP_PAGE);
	evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(h, "X-Frame-Options", "DENY");
	evhttp_add_header(h, "Referrer-Policy", "no-referrer");
	evhttp_add_header(h, "Cache-Control", "no-store");
	evhttp_add_header(h, "Cross-Origin-Opener-Policy", "same-origin");
	if (tls) /* a browser then refuses plain http for this host */
		evhttp_add_header(h, "Strict-Transport-Security", "max-age=31536000");
}

/*
 * The answers evhttp writes itself (400 for a malformed request, 413 past
 * headers_max or body_max, 501 for a method it does not know) never
 * reach web_request_cb, and libevent 2.1 has no hook for them. What it
 * does have is a callback on each connection's output buffer (evbuffer_add_cb
 * in web_bev_new): evhttp writes an answer's status line with one
 * evbuffer_add_printf, then its headers, synchronously, so when a status
 * line is the octets just added and the service is not sending an answer
 * of its own right now (`replying`, set around evhttp_send_reply below:
 * those carry their headers already), the security headers are added
 * right after it, before evhttp's own. Loop 0's thread only (every web
 * listener is served there), hence one flag per thread.
 */
static _Thread_local bool replying;

/* "HTTP/1.x NNN ...\r\n", one line, a final status */
static bool
status_line(const char *s, size_t n)
{
	if (n < 14 || memcmp(s, "HTTP/1.", 7) != 0 || s[8] != ' ' || s[9] < '2' || s[9] > '5' ||
	    s[n - 2] != '\r' || s[n - 1] != '\n')
		return false;
	for (size_t i = 0; i + 2 < n; i++)
		if (s[i] == '\r' || s[i] == '\n')
			return false;
	return true;
}

void
web_reply_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	const bool *tls = arg;
	static _Thread_local bool adding;
	char line[256];
	struct evbuffer_ptr pos;
	size_t total = evbuffer_get_length(buf);

	if (replying || adding || info->n_deleted != 0 || info->n_added < 14 ||
	    info->n_added > sizeof(line) || total < info->n_added)
		return;
	if (evbuffer_ptr_set(buf, &pos, total - info->n_added, EVBUFFER_PTR_SET) < 0 ||
	    evbuffer_copyout_from(buf, &pos, line, info->n_added) != (ev_ssize_t)info->n_added ||
	    !status_line(line, info->n_added))
		return;
	adding = true;
	evbuffer_add_printf(buf,
			    "Content-Security-Policy: " CSP_PAGE "\r\n"
			    "X-Content-Type-Options: nosniff\r\n"
			    "X-Frame-Options: DENY\r\n"
			    "Referrer-Policy: no-referrer\r\n"
			    "Cache-Control: no-store\r\n"
			    "Cross-Origin-Opener-Policy: same-origin\r\n%s",
			    *tls ? "Strict-Transport-Security: max-age=31536000\r\n" : "");
	adding = false;
}

/* csp: NULL for the page's, else a message's own (CSP_MESSAGE...) */
void
web_reply(struct evhttp_request *req, int status, const char *type, const char *body, size_t len,
      const char *csp)
{
	struct evbuffer *out = evbuffer_new();

	if (csp != NULL) {
		struct evkeyvalq *h = evhttp_request_get_output_headers(req);
		evhttp_remove_header(h, "Content-Security-Policy");
		evhttp_remove_header(h, "X-Frame-Options");
		evhttp_add_header(h, "Content-Security-Policy", csp);
		evhttp_add_header(h, "X-Frame-Options", "SAMEORIGIN");
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  type != NULL ? type : "application/json");
	if (out == NULL) {
		replying = true;
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		replying = false;
		return;
	}
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		/* evhttp 2.1 would send the body after a HEAD's headers (and no
		 * length): the length alone, as a GET's */
		char n[32];
		snprintf(n, sizeof(n), "%zu", len);
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", n);
	} else {
		evbuffer_add(out, body, len);
	}
	replying = true;
	evhttp_send_reply(req, status, status < 300 ? "OK" : status == 404 ? "Not Found" : "Error", out);
	replying = false;
	evbuffer_free(out);
}

void
web_reply_json(struct evhttp_request *req, int status, json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);

	json_decref(j);
	web_reply(req, status, NULL, s != NULL ? s : "{}", s != NULL ? strlen(s) : 2, NULL);
	free(s);
}

void
web_reply_error(struct evhttp_request *req, int status, const char *msg)
{
	web_reply_json(req, status, json_pack("{s:s}", "error", msg));
}

