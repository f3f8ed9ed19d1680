/*
 * settings.c — the web service's settings module: the `web { }` section
 * (session expiry, request limits, the page's directory).
 */
#include "config.h"

#include <stddef.h>

#include "lib/lib.h"
#include "web/web.h"

#ifndef MX_WEB_STATIC_DIR
#define MX_WEB_STATIC_DIR "/usr/share/mxguard/web"
#endif

#define OFF(field) offsetof(struct web_settings, field)

static const struct setting_def web_rows[] = {
	{ "web", "session_idle", SETTING_INT, "1800", 1, 86400, OFF(session_idle), 0,
	  "seconds a web session may go without a request before it ends", NULL, NULL },
	{ "web", "session_max", SETTING_INT, "43200", 1, 604800, OFF(session_max), 0,
	  "seconds after its login a web session ends however busy it is", NULL, NULL },
	{ "web", "sessions_max", SETTING_INT, "10000", 1, 1000000, OFF(sessions_max), 0,
	  "web sessions held at once (a new login past it drops the oldest)", NULL, NULL },
	{ "web", "headers_max", SETTING_INT, "8192", 1024, 65536, OFF(headers_max), 0,
	  "octets of a web request's header section", NULL, NULL },
	{ "web", "body_max", SETTING_INT, "16384", 1024, 1048576, OFF(body_max), 0,
	  "octets of a web request's body (the API's JSON)", NULL, NULL },
	{ "web", "timeout", SETTING_INT, "30", 1, 3600, OFF(timeout), 0,
	  "seconds a web request may take to arrive, and an idle keep-alive connection stays open", NULL, NULL },
	{ "web", "page_size_max", SETTING_INT, "200", 10, 1000, OFF(page_size_max), 0,
	  "most messages one page of a web message list holds", NULL, NULL },
	{ "web", "static_dir", SETTING_STR, MX_WEB_STATIC_DIR, 0, 0, OFF(static_dir), 0,
	  "directory of the web page's files (index.html, app.js, style.css)", NULL, NULL },
	{ "web", "admins", SETTING_STRLIST, "{}", 0, 0, OFF(admins), 0,
	  "passwd-file users (user@domain, any case) who see the admin pages: overview, transactions, the whole quarantine",
	  NULL, NULL },
	{ "web", "user_release", SETTING_BOOL, "false", 0, 0, OFF(user_release), 0,
	  "users may release or delete their own held messages (\"Held for you\")", NULL, NULL },
};

static const struct settings_module web_module = {
	.name = "web",
	.rows = web_rows,
	.n_rows = N_ELEMENTS(web_rows),
	.size = sizeof(struct web_settings),
};

void
web_register_config(void)
{
	config_register_module(&web_module);
}

const struct web_settings *
web_settings(const struct mx_config *cfg)
{
	return config_module_values(cfg, &web_module);
}
