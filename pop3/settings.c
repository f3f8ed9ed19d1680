/*
 * settings.c — the POP3 service's settings module: the `pop3 { }`
 * section (when plaintext logins are allowed, the idle timeout, the
 * command line cap, the error cap and the login throttle).
 */
#include "config.h"

#include <stddef.h>

#include "pop3/pop3.h"

/* in the order of enum pop3_plaintext */
static const char *const plaintext_choices[] = { "tls-only", "loopback", "always", NULL };

#define OFF(field) offsetof(struct pop3_settings, field)

static const struct setting_def pop3_rows[] = {
	{ "pop3", "plaintext_auth", SETTING_CHOICE, "tls-only", 0, 0, OFF(plaintext_auth), 0,
	  "USER/PASS and SASL PLAIN/LOGIN without TLS: tls-only, loopback (also from 127.0.0.0/8 and ::1) or always",
	  .choices = plaintext_choices },
	{ "pop3", "timeout_idle", SETTING_INT, "600", 600, 86400, OFF(timeout_idle), 0,
	  "seconds a POP3 session may be idle (RFC 1939: at least 10 minutes)", NULL, NULL },
	{ "pop3", "command_line_max", SETTING_INT, "2048", 512, 65536, OFF(command_line_max), 0,
	  "longest POP3 command line (or SASL response) in octets, CRLF included", NULL, NULL },
	{ "pop3", "bad_commands_max", SETTING_INT, "10", 1, 1000, OFF(bad_commands_max), 0,
	  "unknown, misplaced or malformed commands before the session is closed", NULL, NULL },
	{ "pop3", "auth_failure_delay", SETTING_INT, "1500", 100, 60000, OFF(auth_failure_delay), 0,
	  "milliseconds before a failed login is answered", NULL, NULL },
	{ "pop3", "auth_failures_max", SETTING_INT, "10", 1, 100000, OFF(auth_failures_max), 0,
	  "failed logins per client address, and per user, within auth_failure_window", NULL, NULL },
	{ "pop3", "auth_failure_window", SETTING_INT, "300", 1, 86400, OFF(auth_failure_window), 0,
	  "seconds over which auth_failures_max counts", NULL, NULL },
};

static const struct settings_module pop3_module = {
	.name = "pop3",
	.rows = pop3_rows,
	.n_rows = N_ELEMENTS(pop3_rows),
	.size = sizeof(struct pop3_settings),
};

void pop3_register_config(void)
{
	config_register_module(&pop3_module);
}

const struct pop3_settings *pop3_settings(const struct mx_config *cfg)
{
	return config_module_values(cfg, &pop3_module);
}
