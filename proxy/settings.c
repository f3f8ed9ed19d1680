/*
 * settings.c — the SMTP service's settings module: the name it gives
 * itself, the bare-LF policy, where bodies spill, and the limits of an
 * SMTP session (line lengths, sizes, counts, the command and data waits).
 * Also mxguard_register_config(): every module the daemon's config has.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/proxy.h"
#include "web/web.h"

#ifndef LOCALSTATEDIR
#define LOCALSTATEDIR "/var"
#endif

/* in the order of enum bare_lf_policy */
static const char *const bare_lf_policies[] = { "reject", "accept", NULL };

/* Networks: "192.0.2.0/24", "2001:db8::/32", one address. */
static char *
smtp_valid_networks(const char *const *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct net_cidr c;
		const char *err;
		if (net_cidr_parse(v[i], &c, &err) < 0)
			return xasprintf("xclient_trusted = {... \"%s\" ...}: %s", v[i], err);
	}
	return NULL;
}

#define OFF(field) offsetof(struct smtp_settings, field)

static const struct setting_def smtp_rows[] = {
	{ NULL, "hostname", SETTING_STR, "", 0, 0, OFF(hostname), 0,
	  "name in the greeting, EHLO reply and Received: headers (\"\" = the system host name)", NULL, NULL },
	{ NULL, "spool_dir", SETTING_STR, LOCALSTATEDIR "/spool/mxguard", 0, 0, OFF(spool_dir), SETTING_F_PATH,
	  "where large message bodies are spooled while received", NULL, NULL },
	{ NULL, "bare_lf", SETTING_CHOICE, "reject", 0, 0, OFF(bare_lf), 0,
	  "message with a bare LF: reject (550 5.6.0 at end of DATA) or accept",
	  .choices = bare_lf_policies },

	{ NULL, "xclient_trusted", SETTING_STRLIST, "{}", 0, 0, OFF(xclient_trusted), 0,
	  "networks (MTAs in front of mxguard) that may name the real client with XCLIENT",
	  .valid = smtp_valid_networks },
	{ "limits", "line_max", SETTING_INT, "1000", 512, 65536, OFF(line_max), 0,
	  "SMTP command line length in octets, CRLF included", NULL, NULL },
	{ "limits", "recipients_max", SETTING_INT, "100", 100, 100000, OFF(recipients_max), 0,
	  "accepted RCPT commands per message (repeats count); more get 452 4.5.3", NULL, NULL },
	{ "limits", "commands_max", SETTING_INT, "100", 10, 100000, OFF(commands_max), 0,
	  "commands that move no mail (NOOP, RSET, VRFY, HELP...) before the next MAIL", NULL, NULL },
	{ "limits", "errors_max", SETTING_INT, "10", 1, 1000, OFF(errors_max), 0,
	  "protocol errors before the session is closed with 421", NULL, NULL },
	{ "limits", "timeout_command", SETTING_INT, "300", 1, 3600, OFF(timeout_command), 0,
	  "seconds to wait for the next command", NULL, NULL },
	{ "limits", "timeout_data", SETTING_INT, "180", 1, 3600, OFF(timeout_data), 0,
	  "seconds to wait for the next block of message data", NULL, NULL },
	{ "limits", "spill_threshold", SETTING_INT, "1048576", 4096, 1073741824L, OFF(spill_threshold), 0,
	  "body octets kept in memory; larger bodies go to spool_dir", NULL, NULL },
	{ "limits", "data_line_max", SETTING_INT, "65536", 1000, 1073741824L, OFF(data_line_max), 0,
	  "longest line of message data in octets, CRLF included; longer: 550 5.6.0 at end of DATA", NULL, NULL },
};

static int
smtp_settings_check(void *values, const struct mx_config *cfg, char **error_r)
{
	struct smtp_settings *ss = values;

	if (ss->hostname[0] == '\0') {
		char host[256];
		if (gethostname(host, sizeof(host)) != 0)
			str_copy(host, "localhost", sizeof(host));
		host[sizeof(host) - 1] = '\0';
		free(ss->hostname);
		ss->hostname = xstrdup(host);
	}
	if (ss->spool_dir[0] == '\0') {
		*error_r = xasprintf("%s: spool_dir must be set", cfg->path);
		return -1;
	}
	return 0;
}

static const struct settings_module smtp_module = {
	.name = "smtp",
	.rows = smtp_rows,
	.n_rows = N_ELEMENTS(smtp_rows),
	.size = sizeof(struct smtp_settings),
	.check = smtp_settings_check,
};

void
smtp_register_config(void)
{
	config_register_module(&smtp_module);
}

const struct smtp_settings *
smtp_settings(const struct mx_config *cfg)
{
	return config_module_values(cfg, &smtp_module);
}

void
mxguard_register_config(void)
{
	daemon_register_config();
	smtp_register_config();
	pop3_register_config();
	imap_register_config();
	web_register_config();
	backends_register_config();
	filters_register_config();
}
