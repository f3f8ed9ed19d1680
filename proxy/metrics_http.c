/*
 * metrics_http.c — the `metrics` service: GET /metrics in the Prometheus
 * text format (lib/metrics.h), served by libevent's evhttp on its own
 * listener (`listen metrics { address = "127.0.0.1:9025"; protocol =
 * "metrics" }`), loopback by convention: the counters say what the
 * server sees, and it has no authentication.
 *
 * It is the first row of the service table that serves a listening socket
 * itself (struct service.serve_start): evhttp accepts and parses, the core
 * only binds. It runs on loop 0 only (serve_one_loop) — a scrape every few
 * seconds needs no more — and renders the counters on that loop's thread
 * (a few hundred lines of snprintf; no file system, nothing that blocks).
 * Hostile input is bounded by evhttp: 8 KB of headers, no body, GET and
 * HEAD only, 10 s per request. With tls = implicit the core makes each
 * connection TLS (daemon_serve_evhttp_tls).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "daemon/daemon.h"
#include "lib/metrics.h"
#include "proxy/proxy.h"

#define METRICS_HEADERS_MAX 8192
#define METRICS_TIMEOUT 10

static void
metrics_request_cb(struct evhttp_request *req, void *arg)
{
	const char *uri = evhttp_request_get_uri(req);
	struct evhttp_uri *parsed = evhttp_uri_parse(uri);
	const char *path = parsed != NULL ? evhttp_uri_get_path(parsed) : NULL;
	struct evbuffer *out;

	if (path == NULL || strcmp(path, "/metrics") != 0) {
		if (parsed != NULL)
			evhttp_uri_free(parsed);
		evhttp_send_error(req, HTTP_NOTFOUND, "Not Found (try /metrics)");
		return;
	}
	evhttp_uri_free(parsed);
	out = evbuffer_new();
	if (out == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	size_t len;
	char *text = metrics_render(&len);
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		/* evhttp 2.1 would send the body after a HEAD's headers, with no
		 * length, and a kept-alive connection would read it as the next
		 * answer: the length alone */
		char n[32];
		snprintf(n, sizeof(n), "%zu", len);
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", n);
	} else {
		evbuffer_add(out, text, len);
	}
	free(text);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, HTTP_OK, "OK", out);
	evbuffer_free(out);
}

void *
metrics_serve_start(struct daemon_loop *loop, int fd, const char *listener, char **error_r)
{
	struct evhttp *http = evhttp_new(daemon_loop_base(loop));

	if (http == NULL) {
		*error_r = xstrdup("evhttp_new failed");
		return NULL;
	}
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_max_headers_size(http, METRICS_HEADERS_MAX);
	evhttp_set_max_body_size(http, 0);
	evhttp_set_timeout(http, METRICS_TIMEOUT);
	evhttp_set_gencb(http, metrics_request_cb, NULL);
	bool tls = daemon_serve_evhttp_tls(loop, http, listener);
	if (evhttp_accept_socket_with_handle(http, fd) == NULL) {
		evhttp_free(http);
		*error_r = xstrdup("evhttp cannot take the listening socket");
		return NULL;
	}
	log_msg(LOG_LEVEL_INFO, "metrics name=%s serving /metrics%s", listener, tls ? " over TLS" : "");
	return http;
}

void
metrics_serve_stop(struct daemon_loop *loop, void *ctx)
{
	/* closes the bound socket (evhttp took it with CLOSE_ON_FREE) and
	 * every request connection */
	evhttp_free(ctx);
}
