/*
 * settings.c — the IMAP service's settings module: the `imap { }`
 * section (plaintext logins, the timeouts before and after login, the
 * command, line and literal caps, the error cap and the login throttle,
 * whose table POP3 shares).
 */
#include "config.h"

#include <stddef.h>

#include "imap/imap.h"

/* in the order of enum imap_plaintext */
static const char *const plaintext_choices[] = { "tls-only", "loopback", "always", NULL };

#define OFF(field) offsetof(struct imap_settings, field)

static const struct setting_def imap_rows[] = {
	{ "imap", "plaintext_auth", SETTING_CHOICE, "tls-only", 0, 0, OFF(plaintext_auth), 0,
	  "LOGIN and AUTHENTICATE PLAIN without TLS: tls-only, loopback (also from 127.0.0.0/8 and ::1) or always",
	  .choices = plaintext_choices },
	{ "imap", "timeout_login", SETTING_INT, "60", 10, 3600, OFF(timeout_login), 0,
	  "seconds an IMAP session may be idle before it logged in", NULL, NULL },
	{ "imap", "timeout_idle", SETTING_INT, "1800", 1800, 86400, OFF(timeout_idle), 0,
	  "seconds a logged-in IMAP session may be idle (RFC 3501: at least 30 minutes)", NULL, NULL },
	{ "imap", "command_line_max", SETTING_INT, "65536", 1024, 1048576, OFF(command_line_max), 0,
	  "longest line of an IMAP command in octets, CRLF included", NULL, NULL },
	{ "imap", "command_max", SETTING_INT, "262144", 4096, 16777216, OFF(command_max), 0,
	  "longest IMAP command with its literals (but APPEND's message) in octets", NULL, NULL },
	{ "imap", "append_max", SETTING_INT, "67108864", 65536, 1073741824, OFF(append_max), 0,
	  "largest message APPEND takes, in octets (a larger literal is refused with [TOOBIG])", NULL, NULL },
	{ "imap", "bad_commands_max", SETTING_INT, "20", 1, 1000, OFF(bad_commands_max), 0,
	  "invalid, misplaced or malformed commands before the session is closed", NULL, NULL },
	{ "imap", "auth_failure_delay", SETTING_INT, "1500", 100, 60000, OFF(auth_failure_delay), 0,
	  "milliseconds before a failed login is answered", NULL, NULL },
	{ "imap", "auth_failures_max", SETTING_INT, "10", 1, 100000, OFF(auth_failures_max), 0,
	  "failed logins per client address, and per user, within auth_failure_window (POP3's count too)", NULL, NULL },
	{ "imap", "auth_failure_window", SETTING_INT, "300", 1, 86400, OFF(auth_failure_window), 0,
	  "seconds over which auth_failures_max counts", NULL, NULL },
};

static const struct settings_module imap_module = {
	.name = "imap",
	.rows = imap_rows,
	.n_rows = N_ELEMENTS(imap_rows),
	.size = sizeof(struct imap_settings),
};

void imap_register_config(void)
{
	config_register_module(&imap_module);
}

const struct imap_settings *imap_settings(const struct mx_config *cfg)
{
	return config_module_values(cfg, &imap_module);
}
