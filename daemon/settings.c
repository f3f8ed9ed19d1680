/*
 * settings.c — the daemon core's settings module: process shape (threads,
 * workers, user, log_level, state_dir), the TLS certificate every listener
 * uses, the `listen` sections and the limits the core enforces itself
 * (connections, the greeting/handshake wait, the shutdown grace).
 *
 * Also the checks that need several of these at once: at least one
 * listener, no two listeners whose binds would clash, tls_cert and tls_key
 * together, and an implicit-TLS listener only with a certificate.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "daemon/daemon.h"

/* The default paths follow the directories given to configure; Makefile.am
 * passes them (a build outside it gets the FHS ones). */
#ifndef RUNSTATEDIR
#define RUNSTATEDIR "/run"
#endif

/* in the order of enum log_level */
static const char *const log_levels[] = { "err", "warn", "info", "debug", NULL };
/* in the order of enum log_facility (lib/lib.h) */
static const char *const syslog_facilities[] = { "mail", "daemon", "user", "local0", "local1",
						  "local2", "local3", "local4", "local5",
						  "local6", "local7", NULL };
static const char *const tls_modes[] = { "none", "implicit", NULL };
static const char *const proxy_modes[] = { "off", "v1", "v2", "any", NULL };

/* Networks: "192.0.2.0/24", "2001:db8::/32", one address. */
static char *
daemon_valid_networks(const char *const *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct net_cidr c;
		const char *err;
		if (net_cidr_parse(v[i], &c, &err) < 0)
			return xasprintf("proxy_trusted = {... \"%s\" ...}: %s", v[i], err);
	}
	return NULL;
}

/* A listen address must parse as host:port or [v6]:port — or name a unix
 * socket, "unix:/absolute/path", which only a service that binds its socket
 * itself may use (the milter; daemon_check_services says so). */
static char *
daemon_valid_address(const char *const *v, size_t n)
{
	struct sockaddr_storage ss;
	socklen_t len;
	const char *err;

	if (strncmp(v[0], "unix:", 5) == 0) {
		if (v[0][5] == '/' && strlen(v[0] + 5) < 100 && strstr(v[0], "/../") == NULL)
			return NULL;
		return xasprintf("address = \"%s\": a unix socket is unix:/absolute/path "
				 "(under 100 octets)", v[0]);
	}
	if (net_parse_address(v[0], &ss, &len, &err) == 0)
		return NULL;
	return xasprintf("address = \"%s\": %s", v[0], err);
}

#define OFF(field) offsetof(struct daemon_settings, field)
#define LOFF(field) offsetof(struct listen_config, field)

static const struct setting_def daemon_rows[] = {
	{ NULL, "threads", SETTING_INT, "0", 0, 256, OFF(threads), 0,
	  "event-loop threads (0 = one per CPU core)", NULL, NULL },
	{ NULL, "workers", SETTING_INT, "4", 1, 256, OFF(workers), 0,
	  "worker-pool threads for blocking work (fsync)", NULL, NULL },
	{ NULL, "user", SETTING_STR, "", 0, 0, OFF(run_user), 0,
	  "drop privileges to this user after binding (\"\" = stay)", NULL, NULL },
	{ NULL, "log_level", SETTING_CHOICE, "info", 0, 0, OFF(log_level), SETTING_F_ANYCASE,
	  "err, warn, info or debug", .choices = log_levels },
	{ NULL, "run_as_root", SETTING_BOOL, "false", 0, 0, OFF(run_as_root), 0,
	  "start as root with user = \"\" (refused unless true)", NULL, NULL },
	{ NULL, "syslog_facility", SETTING_CHOICE, "mail", 0, 0, OFF(syslog_facility),
	  SETTING_F_ANYCASE, "mail, daemon, user or local0 to local7 (without -f)",
	  .choices = syslog_facilities },
	{ NULL, "state_dir", SETTING_STR, RUNSTATEDIR "/mxguard", 0, 0, OFF(state_dir), SETTING_F_PATH,
	  "runtime state (pid file)", NULL, NULL },
	{ NULL, "tls_cert", SETTING_STR, "", 0, 0, OFF(tls_cert), SETTING_F_PATH,
	  "PEM certificate chain for STARTTLS and implicit TLS (\"\" = no TLS)", NULL, NULL },
	{ NULL, "tls_key", SETTING_STR, "", 0, 0, OFF(tls_key), SETTING_F_PATH,
	  "PEM private key for tls_cert", NULL, NULL },

	{ "listen", "address", SETTING_STR, "127.0.0.1:2525", 0, 0, LOFF(address), 0,
	  "host:port or [v6]:port to listen on (section title names the listener)",
	  .valid = daemon_valid_address },
	{ "listen", "protocol", SETTING_STR, "smtp", 0, 0, LOFF(protocol), 0,
	  "the service that speaks on this listener (this build: smtp, pop3, imap, milter, metrics)", NULL, NULL },
	{ "listen", "tls", SETTING_CHOICE, "none", 0, 0, LOFF(implicit_tls), 0,
	  "none (STARTTLS offered when a certificate is set) or implicit (TLS from the first byte)",
	  .choices = tls_modes },
	{ "listen", "proxy_protocol", SETTING_CHOICE, "off", 0, 0, LOFF(proxy_protocol), 0,
	  "off, v1, v2 or any: the PROXY header connections from proxy_trusted must start with",
	  .choices = proxy_modes },
	{ "listen", "proxy_trusted", SETTING_STRLIST, "{}", 0, 0, LOFF(proxy_trusted), 0,
	  "networks of the load balancers that send the PROXY header", .valid = daemon_valid_networks },
	{ "listen", "proxy_timeout", SETTING_INT, "10", 1, 300, LOFF(proxy_timeout), 0,
	  "seconds a trusted connection has to send its PROXY header", NULL, NULL },

	{ "limits", "connections_max", SETTING_INT, "1000", 1, 1000000, OFF(connections_max), 0,
	  "simultaneous connections in total", NULL, NULL },
	{ "limits", "connections_per_client", SETTING_INT, "20", 1, 1000000, OFF(connections_per_client), 0,
	  "simultaneous connections from one client address", NULL, NULL },
	{ "limits", "timeout_greeting", SETTING_INT, "300", 1, 3600, OFF(timeout_greeting), 0,
	  "seconds to wait for the first command", NULL, NULL },
	{ "limits", "timeout_shutdown", SETTING_INT, "30", 1, 3600, OFF(timeout_shutdown), 0,
	  "seconds SIGTERM waits for transactions in flight", NULL, NULL },
};

static const struct settings_multi daemon_listen = {
	.section = "listen",
	.size = sizeof(struct listen_config),
	.array_offset = OFF(listeners),
	.title_offset = LOFF(name),
	.line_offset = LOFF(line),
	.line_row = "address",
};

/* One listening address, reduced to what decides whether two binds clash:
 * IPv4 as v4-mapped IPv6; "*" / "[::]" are bound dual-stack by net_listen,
 * so they cover every address, and 0.0.0.0 covers every IPv4 address. */
struct bind_key {
	unsigned char addr[16];
	uint16_t port;
	bool any_v6, any_v4;
};

static void
daemon_bind_key(const char *address, struct bind_key *k)
{
	struct sockaddr_storage ss;
	socklen_t len;
	const char *err;

	memset(k, 0, sizeof(*k));
	if (net_parse_address(address, &ss, &len, &err) < 0)
		return; /* a unix socket (port 0: never clashes with an IP bind) */
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)&ss;
		k->addr[10] = k->addr[11] = 0xff;
		memcpy(k->addr + 12, &sin->sin_addr, 4);
		k->port = ntohs(sin->sin_port);
		k->any_v4 = sin->sin_addr.s_addr == htonl(INADDR_ANY);
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)&ss;
		memcpy(k->addr, &sin6->sin6_addr, 16);
		k->port = ntohs(sin6->sin6_port);
		k->any_v6 = IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr);
		k->any_v4 = IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) &&
			    memcmp(k->addr + 12, "\0\0\0\0", 4) == 0;
	}
}

static bool
daemon_binds_clash(const struct bind_key *a, const struct bind_key *b)
{
	static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (a->port != b->port || a->port == 0)
		return false;
	if (a->any_v6 || b->any_v6 || memcmp(a->addr, b->addr, 16) == 0)
		return true;
	if (a->any_v4 && memcmp(b->addr, v4mapped, 12) == 0)
		return true;
	return b->any_v4 && memcmp(a->addr, v4mapped, 12) == 0;
}

/* Two listeners whose binds would clash: the second one is named. */
static int
daemon_check_listeners(const struct daemon_settings *ds, const char *path, char **error_r)
{
	struct bind_key *keys = xcalloc(ds->n_listeners, sizeof(*keys));
	int ret = 0;

	for (size_t i = 0; i < ds->n_listeners && ret == 0; i++) {
		const struct listen_config *l = &ds->listeners[i];
		daemon_bind_key(l->address, &keys[i]);
		for (size_t j = 0; j < i; j++) {
			const struct listen_config *first = &ds->listeners[j];
			if (!daemon_binds_clash(&keys[j], &keys[i]))
				continue;
			*error_r = xasprintf("%s:%d: listen %s: address \"%s\" overlaps listen %s "
					     "(\"%s\", line %d): both cannot be bound",
					     path, l->line, l->name, l->address, first->name,
					     first->address, first->line);
			ret = -1;
			break;
		}
	}
	free(keys);
	return ret;
}

static int
daemon_settings_check(void *values, const struct mx_config *cfg, char **error_r)
{
	const struct daemon_settings *ds = values;

	if (ds->n_listeners == 0) {
		*error_r = xasprintf("%s: at least one listen section is needed", cfg->path);
		return -1;
	}
	if (daemon_check_listeners(ds, cfg->path, error_r) < 0)
		return -1;
	if ((ds->tls_cert[0] == '\0') != (ds->tls_key[0] == '\0')) {
		*error_r = xasprintf("%s: tls_cert and tls_key must be set together", cfg->path);
		return -1;
	}
	for (size_t i = 0; i < ds->n_listeners; i++) {
		const struct listen_config *l = &ds->listeners[i];
		if ((l->proxy_protocol != LISTEN_PROXY_OFF) != (l->n_proxy_trusted > 0)) {
			*error_r = xasprintf("%s:%d: listen %s: proxy_protocol and proxy_trusted go "
					     "together (which balancers may say who the client is)",
					     cfg->path, l->line, l->name);
			return -1;
		}
		if (ds->listeners[i].implicit_tls && ds->tls_cert[0] == '\0') {
			*error_r = xasprintf("%s: listen %s: tls = \"implicit\" needs tls_cert and tls_key",
					     cfg->path, ds->listeners[i].name);
			return -1;
		}
	}
	return 0;
}

static const struct settings_module daemon_module = {
	.name = "daemon",
	.rows = daemon_rows,
	.n_rows = N_ELEMENTS(daemon_rows),
	.size = sizeof(struct daemon_settings),
	.multi = &daemon_listen,
	.check = daemon_settings_check,
};

void
daemon_register_config(void)
{
	config_register_module(&daemon_module);
}

const struct daemon_settings *
daemon_settings(const struct mx_config *cfg)
{
	return config_module_values(cfg, &daemon_module);
}

int
daemon_tls_context(const struct mx_config *cfg, struct ssl_ctx_st **ctx_r, char **error_r)
{
	const struct daemon_settings *ds = daemon_settings(cfg);

	*ctx_r = NULL;
	if (ds->tls_cert[0] == '\0')
		return 0;
	*ctx_r = tls_server_ctx_new(cfg, "tls_cert", ds->tls_cert, "tls_key", ds->tls_key, error_r);
	return *ctx_r != NULL ? 0 : -1;
}
