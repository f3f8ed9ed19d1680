/*
 * settings.c — the backends' settings module: where mail is stored
 * (mail_root, junk_folder, quarantine_dir), who it may go to (passwd_file,
 * local_domains), who gets postmaster@ (postmaster) and the largest message
 * taken (limits.message_size_max: the store advertises it as SIZE and the
 * session enforces it), with the checks that tie them together.
 */
#include "config.h"

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
	  "Maildir that holds quarantined mail", NULL, NULL },
	{ NULL, "postmaster", SETTING_STR, "", 0, 0, OFF(postmaster), 0,
	  "mailbox (user@local.domain) that receives postmaster@ every local domain (\"\" = first user of a local domain)", NULL, NULL },

	{ "limits", "message_size_max", SETTING_INT, "26214400", 1024, 2147483647L, OFF(message_size_max), 0,
	  "largest message in octets as sent, CRLF counted (advertised with SIZE)", NULL, NULL },
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

static int
backends_settings_check(void *values, const struct mx_config *cfg, char **error_r)
{
	struct backends_settings *bs = values;

	if (bs->n_local_domains == 0) {
		*error_r = xasprintf("%s: local_domains must name at least one domain", cfg->path);
		return -1;
	}
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
