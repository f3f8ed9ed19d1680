/*
 * settings.c — the backends' settings module: where mail is stored
 * (mail_root, junk_folder, quarantine_dir), who it may go to (passwd_file,
 * local_domains), who gets postmaster@ (postmaster) and the largest message
 * taken (limits.message_size_max: the store advertises it as SIZE and the
 * session enforces it), with the checks that tie them together.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "backends/backends.h"

/* The default paths follow the directories given to configure; Makefile.am
 * passes them (a build outside it gets the FHS ones). */
#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#ifndef LOCALSTATEDIR
#define LOCALSTATEDIR "/var"
#endif

static bool
backends_valid_domain(const char *d)
{
	size_t len = strlen(d);

	return len > 0 && len <= 253 && strspn(d, "abcdefghijklmnopqrstuvwxyz"
					       "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") == len &&
	       d[0] != '.' && d[0] != '-' && d[len - 1] != '.' && strstr(d, "..") == NULL;
}

/* While parsing: every item of local_domains a domain name. */
static char *
backends_valid_domains(const char *const *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!backends_valid_domain(v[i]))
			return xasprintf("local_domains: \"%s\" is not a domain name", v[i]);
	}
	return NULL;
}

#define OFF(field) offsetof(struct backends_settings, field)
#define ROFF(field) offsetof(struct backends_route, field)

static const char *const route_protocols[] = { "smtp", "lmtp", NULL };
static const char *const route_starttls[] = { "off", "opportunistic", "required", NULL };



static const struct setting_def backends_rows[] = {
	{ NULL, "mail_root", SETTING_STR, LOCALSTATEDIR "/lib/mxguard/mail", 0, 0, OFF(mail_root), SETTING_F_PATH,
	  "root of the Maildir store: <mail_root>/<domain>/<user>/", NULL, NULL },
	{ NULL, "passwd_file", SETTING_STR, SYSCONFDIR "/mxguard/passwd", 0, 0, OFF(passwd_file), SETTING_F_PATH,
	  "users: user@domain:{CRYPT}hash lines (mxguardctl manages it)", NULL, NULL },
	{ NULL, "local_domains", SETTING_STRLIST, "{}", 0, 0, OFF(local_domains), 0,
	  "domains mail is accepted for (at least one); nothing else is relayed",
	  .valid = backends_valid_domains },
	{ NULL, "junk_folder", SETTING_STR, "Junk", 0, 0, OFF(junk_folder), 0,
	  "Maildir++ folder for mail scored at or above pipeline.junk_score", NULL, NULL },
	{ NULL, "quarantine_dir", SETTING_STR, LOCALSTATEDIR "/lib/mxguard/quarantine", 0, 0, OFF(quarantine_dir), SETTING_F_PATH,
	  "Maildir that holds quarantined mail, with each message's metadata in its meta/ (doc/quarantine.md)", NULL, NULL },
	{ NULL, "quarantine_retention", SETTING_INT, "30", 1, 3650, OFF(quarantine_retention), 0,
	  "days a quarantined message is kept before mxguardctl quarantine expire removes it", NULL, NULL },
	{ NULL, "quarantine_to_junk", SETTING_BOOL, "false", 0, 0, OFF(quarantine_to_junk), 0,
	  "quarantine mail whose recipients are all local users into their junk_folder instead", NULL, NULL },
	{ NULL, "postmaster", SETTING_STR, "", 0, 0, OFF(postmaster), 0,
	  "mailbox (user@local.domain) that receives postmaster@ every local domain (\"\" = first user of a local domain)", NULL, NULL },

	{ "limits", "message_size_max", SETTING_INT, "26214400", 1024, 2147483647L, OFF(message_size_max), 0,
	  "largest message in octets as sent, CRLF counted (advertised with SIZE)", NULL, NULL },

	{ "route", "domains", SETTING_STRLIST, "{}", 0, 0, ROFF(domains), 0,
	  "domains whose mail this route relays (section title names the route)",
	  .valid = backends_valid_domains },
	{ "route", "protocol", SETTING_CHOICE, "smtp", 0, 0, ROFF(protocol), SETTING_F_ANYCASE,
	  "how the upstream is spoken to: smtp or lmtp (RFC 2033)", route_protocols, NULL },
	{ "route", "hosts", SETTING_STRLIST, "{}", 0, 0, ROFF(hosts), 0,
	  "upstreams, \"[PRIORITY ]host:port\", \"[v6]:port\" or \"unix:/path\"; lowest priority first", NULL, NULL },
	{ "route", "starttls", SETTING_CHOICE, "opportunistic", 0, 0, ROFF(starttls), SETTING_F_ANYCASE,
	  "TLS to the upstream: off, opportunistic (unverified) or required (verified)", route_starttls, NULL },
	{ "route", "tls_ca_file", SETTING_STR, "", 0, 0, ROFF(tls_ca_file), SETTING_F_PATH,
	  "CA certificates that verify the upstream (\"\" = the system's)", NULL, NULL },
	{ "route", "tls_verify_name", SETTING_STR, "", 0, 0, ROFF(tls_verify_name), 0,
	  "name the upstream's certificate must carry (\"\" = the host as written)", NULL, NULL },
	{ "route", "xclient", SETTING_BOOL, "true", 0, 0, ROFF(xclient), 0,
	  "tell the upstream the real client with XCLIENT when it offers it", NULL, NULL },
	{ "route", "xforward", SETTING_BOOL, "true", 0, 0, ROFF(xforward), 0,
	  "else with XFORWARD when it offers that", NULL, NULL },
	{ "route", "helo_name", SETTING_STR, "", 0, 0, ROFF(helo_name), 0,
	  "name given in EHLO/LHLO (\"\" = hostname)", NULL, NULL },
	{ "route", "connect_timeout", SETTING_INT, "10", 1, 3600, ROFF(connect_timeout), 0,
	  "seconds to connect and read the greeting", NULL, NULL },
	{ "route", "command_timeout", SETTING_INT, "60", 1, 3600, ROFF(command_timeout), 0,
	  "seconds for each command's reply", NULL, NULL },
	{ "route", "data_timeout", SETTING_INT, "600", 1, 7200, ROFF(data_timeout), 0,
	  "seconds for the message to be sent and its reply after the final dot", NULL, NULL },
	{ "route", "reuse_time", SETTING_INT, "5", 0, 3600, ROFF(reuse_time), 0,
	  "seconds an idle upstream connection is kept for the next transaction (0 = never reused)", NULL, NULL },
};

static const struct settings_multi backends_route_multi = {
	.section = "route",
	.size = sizeof(struct backends_route),
	.array_offset = OFF(routes),
	.title_offset = ROFF(name),
	.line_offset = ROFF(line),
	.line_row = "domains",
};

static bool
settings_is_local_domain(const struct backends_settings *bs, const char *domain)
{
	for (size_t i = 0; i < bs->n_local_domains; i++) {
		if (strcasecmp(bs->local_domains[i], domain) == 0)
			return true;
	}
	return false;
}

/* postmaster = "local@domain": a plain local part (no quotes, no routing
 * characters) in one of the local domains, stored in lower case. */
static int
backends_check_postmaster(struct backends_settings *bs, const char *path, char **error_r)
{
	char *pm = bs->postmaster, *at;

	str_lower(pm);
	at = strchr(pm, '@');
	if (at == NULL || at == pm || at[1] == '\0' || pm[0] == '.' || at[-1] == '.' ||
	    strstr(pm, "..") != NULL ||
	    strspn(pm, "abcdefghijklmnopqrstuvwxyz0123456789.-_+=") != (size_t)(at - pm) ||
	    at - pm > 64) {
		*error_r = xasprintf("%s: postmaster = \"%s\" is not a mailbox (user@domain)", path, pm);
		return -1;
	}
	if (!settings_is_local_domain(bs, at + 1)) {
		*error_r = xasprintf("%s: postmaster = \"%s\": %s is not in local_domains "
				     "(mxguard delivers only to local mailboxes)", path, pm, at + 1);
		return -1;
	}
	return 0;
}

void
backends_upstream_clear(struct backends_upstream *u)
{
	free(u->host);
	free(u->port);
	free(u->path);
	free(u->key);
	memset(u, 0, sizeof(*u));
}

int
backends_upstream_parse(const char *item, struct backends_upstream *u, char **error_r)
{
	const char *p = item;
	char *end;

	memset(u, 0, sizeof(*u));
	u->priority = 10;
	size_t digits = strspn(p, "0123456789");
	if (digits > 0 && p[digits] == ' ') {
		errno = 0;
		long prio = strtol(p, &end, 10);
		if (*end != ' ' || errno != 0 || prio > 65535) {
			*error_r = xasprintf("\"%s\": expected \"[PRIORITY ]ADDRESS\" with a priority "
					     "0-65535", item);
			return -1;
		}
		u->priority = prio;
		p = end;
		while (*p == ' ')
			p++;
	}
	if (strncmp(p, "unix:", 5) == 0) {
		if (p[5] != '/' || strlen(p + 5) >= 108) {
			*error_r = xasprintf("\"%s\": a unix socket needs an absolute path (shorter "
					     "than 108 octets)", item);
			return -1;
		}
		u->path = xstrdup(p + 5);
		u->host = xstrdup("");
		u->port = xstrdup("");
		u->key = xstrdup(p);
		return 0;
	}
	const char *host = p, *colon;
	size_t hlen;
	if (*p == '[') {
		const char *close = strchr(p, ']');
		if (close == NULL || close == p + 1 || (close[1] != ':' && close[1] != '\0')) {
			*error_r = xasprintf("\"%s\": expected [IPv6]:port", item);
			return -1;
		}
		host = p + 1;
		hlen = (size_t)(close - host);
		colon = close[1] == ':' ? close + 1 : NULL;
	} else {
		colon = strrchr(p, ':');
		hlen = colon != NULL ? (size_t)(colon - p) : strlen(p);
		if (colon != NULL && memchr(p, ':', hlen) != NULL) {
			*error_r = xasprintf("\"%s\": an IPv6 address goes in brackets: [::1]:25", item);
			return -1;
		}
	}
	const char *port = colon != NULL ? colon + 1 : "25";
	if (hlen == 0 || hlen > 253 || port[0] == '\0' || strspn(port, "0123456789") != strlen(port) ||
	    strtol(port, NULL, 10) < 1 || strtol(port, NULL, 10) > 65535 ||
	    strcspn(host, " \t/") < hlen) {
		*error_r = xasprintf("\"%s\": expected host:port, [IPv6]:port or unix:/path", item);
		return -1;
	}
	u->host = xstrndup(host, hlen);
	u->port = xstrdup(port);
	u->key = xstrdup(p);
	return 0;
}

/* Each route: domains and hosts given and valid, no domain in two places. */
static int
backends_check_routes(struct backends_settings *bs, const char *path, char **error_r)
{
	for (size_t r = 0; r < bs->n_routes; r++) {
		struct backends_route *rt = &bs->routes[r];
		if (rt->n_domains == 0 || rt->n_hosts == 0) {
			*error_r = xasprintf("%s:%d: route %s: needs domains and hosts", path, rt->line,
					     rt->name);
			return -1;
		}
		for (size_t h = 0; h < rt->n_hosts; h++) {
			struct backends_upstream u;
			char *err = NULL;
			if (backends_upstream_parse(rt->hosts[h], &u, &err) < 0) {
				*error_r = xasprintf("%s:%d: route %s: hosts: %s", path, rt->line,
						     rt->name, err);
				free(err);
				return -1;
			}
			backends_upstream_clear(&u);
		}
		for (size_t d = 0; d < rt->n_domains; d++) {
			str_lower(rt->domains[d]);
			if (settings_is_local_domain(bs, rt->domains[d])) {
				*error_r = xasprintf("%s:%d: route %s: %s is in local_domains too: "
						     "a domain is either stored or relayed", path,
						     rt->line, rt->name, rt->domains[d]);
				return -1;
			}
			for (size_t r2 = 0; r2 <= r; r2++) {
				const struct backends_route *o = &bs->routes[r2];
				for (size_t d2 = 0; d2 < (r2 == r ? d : o->n_domains); d2++) {
					if (strcmp(o->domains[d2], rt->domains[d]) == 0) {
						*error_r = xasprintf("%s:%d: route %s: %s is routed by "
								     "route %s already", path, rt->line,
								     rt->name, rt->domains[d], o->name);
						return -1;
					}
				}
			}
		}
	}
	return 0;
}

static int
backends_settings_check(void *values, const struct mx_config *cfg, char **error_r)
{
	struct backends_settings *bs = values;

	if (bs->n_local_domains == 0 && bs->n_routes == 0) {
		*error_r = xasprintf("%s: local_domains or a route section must name at least one "
				     "domain", cfg->path);
		return -1;
	}
	if (backends_check_routes(bs, cfg->path, error_r) < 0)
		return -1;
	for (size_t i = 0; i < bs->n_local_domains; i++) {
		str_lower(bs->local_domains[i]);
		const char *d = bs->local_domains[i];
		if (d[0] == '\0' || strspn(d, "abcdefghijklmnopqrstuvwxyz0123456789.-") != strlen(d) ||
		    d[0] == '.' || d[0] == '-' || strstr(d, "..") != NULL || strlen(d) > 253) {
			*error_r = xasprintf("%s: local_domains: \"%s\" is not a domain name", cfg->path, d);
			return -1;
		}
	}
	if (bs->junk_folder[0] == '\0' || bs->junk_folder[0] == '.' ||
	    strchr(bs->junk_folder, '/') != NULL) {
		*error_r = xasprintf("%s: junk_folder \"%s\" is not a folder name", cfg->path,
				     bs->junk_folder);
		return -1;
	}
	if (bs->postmaster[0] != '\0' && backends_check_postmaster(bs, cfg->path, error_r) < 0)
		return -1;
	if (bs->mail_root[0] == '\0' || bs->passwd_file[0] == '\0') {
		*error_r = xasprintf("%s: mail_root and passwd_file must be set", cfg->path);
		return -1;
	}
	return 0;
}

static const struct settings_module backends_module = {
	.name = "backends",
	.rows = backends_rows,
	.n_rows = N_ELEMENTS(backends_rows),
	.size = sizeof(struct backends_settings),
	.multi = &backends_route_multi,
	.check = backends_settings_check,
};

void
backends_register_config(void)
{
	config_register_module(&backends_module);
}

const struct backends_settings *
backends_settings(const struct mx_config *cfg)
{
	return config_module_values(cfg, &backends_module);
}

bool
backends_is_local_domain(const struct mx_config *cfg, const char *domain)
{
	return settings_is_local_domain(backends_settings(cfg), domain);
}

const char *
backends_route_of(const struct mx_config *cfg, const char *domain)
{
	const struct backends_settings *bs = backends_settings(cfg);

	if (settings_is_local_domain(bs, domain))
		return "store";
	for (size_t r = 0; r < bs->n_routes; r++) {
		for (size_t d = 0; d < bs->routes[r].n_domains; d++) {
			if (strcasecmp(bs->routes[r].domains[d], domain) == 0)
				return bs->routes[r].name;
		}
	}
	return NULL;
}
