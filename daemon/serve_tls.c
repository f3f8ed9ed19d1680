/*
 * serve_tls.c — implicit TLS for the listeners whose service serves its
 * socket itself with evhttp (struct service.serve_start: metrics, web).
 *
 * evhttp makes each accepted connection's bufferevent through the
 * callback set with evhttp_set_bevcb; here it is an OpenSSL bufferevent
 * in the accepting state over the loop's current state's SSL_CTX — the
 * same certificate, protocol floor and options as the conn layer's
 * smtps/pop3s/imaps (lib/tls.c), taken again at every connection so a
 * reload's new certificate is used at once. evhttp's read timeout bounds
 * the handshake. A TLS listener never falls back to plain text: should
 * the current state have no certificate (a reload dropped tls_cert while
 * the listen sections, which need a restart, still ask for TLS), the
 * connection gets a context without one and its handshake fails.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <openssl/ssl.h>

#include "daemon/daemon-internal.h"

static SSL *
serve_tls_ssl(struct daemon_loop *loop)
{
	struct server_state *st = daemon_loop_state(loop);
	SSL_CTX *ctx;
	SSL *ssl;

	if (st == NULL)
		st = loop->core->state;
	ctx = st != NULL ? loop->core->app->state_tls(st) : NULL;
	if (ctx != NULL)
		return SSL_new(ctx);
	log_msg(LOG_LEVEL_WARN, "tls: no certificate in the current configuration; an implicit-TLS "
		"web/metrics connection is refused in its handshake");
	ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL)
		return NULL;
	ssl = SSL_new(ctx); /* holds its own reference to ctx */
	SSL_CTX_free(ctx);
	return ssl;
}

struct bufferevent *
daemon_serve_tls_bufferevent(struct event_base *base, struct daemon_loop *loop)
{
	SSL *ssl = serve_tls_ssl(loop);
	struct bufferevent *bev = NULL;

	/* NULL here would make evhttp speak plain text on a TLS port:
	 * out of memory ends the process, as the allocation wrappers do */
	if (ssl != NULL)
		bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
						     BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		log_msg(LOG_LEVEL_ERR, "tls: cannot make a TLS connection (out of memory)");
		abort();
	}
	/* a client that closes without close_notify ends its request, no error */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

bool
daemon_serve_tls(struct daemon_loop *loop, const char *listener)
{
	for (size_t j = 0; j < loop->core->n_listeners; j++) {
		const struct daemon_listener *l = &loop->core->listeners[j];
		if (strcmp(l->name, listener) != 0)
			continue;
		if (!l->implicit_tls)
			return false;
		if (loop->serve_tls != NULL)
			loop->serve_tls[j] = true;
		return true;
	}
	return false;
}

static struct bufferevent *
serve_tls_bev(struct event_base *base, void *arg)
{
	return daemon_serve_tls_bufferevent(base, arg);
}

bool
daemon_serve_evhttp_tls(struct daemon_loop *loop, struct evhttp *http, const char *listener)
{
	if (!daemon_serve_tls(loop, listener))
		return false;
	evhttp_set_bevcb(http, serve_tls_bev, loop);
	return true;
}
