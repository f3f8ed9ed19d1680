/*
 * config.c — the typed settings table and the config loader.
 *
 * One table (settings_table) says, for every setting: its section, name,
 * type, default, bounds, where the value lands in struct mx_config and a
 * line of documentation. The libconfuse option arrays are built from it, the
 * bounds are checked while parsing (so errors carry file:line), and
 * `mxguard --settings` prints it; the docs are tested against that output.
 *
 * Stages register the options of their own sections before a load
 * (config_register_section); they read those sections from cfg->cfg.
 * A loaded config is immutable and reference-counted: a reload builds a new
 * one aside and swaps it in.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <confuse.h>

#include "lib/lib.h"

/* The default paths follow the directories given to configure; Makefile.am
 * passes them (a build outside it gets the FHS ones). */
#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#ifndef LOCALSTATEDIR
#define LOCALSTATEDIR "/var"
#endif
#ifndef RUNSTATEDIR
#define RUNSTATEDIR "/run"
#endif

#define OFF(field) offsetof(struct mx_config, field)
#define LOFF(field) offsetof(struct listen_config, field)

const struct setting_def settings_table[] = {
	{ NULL, "hostname", SETTING_STR, "", 0, 0, OFF(hostname), 0,
	  "name in the greeting, EHLO reply and Received: headers (\"\" = the system host name)" },
	{ NULL, "threads", SETTING_INT, "0", 0, 256, OFF(threads), 0,
	  "event-loop threads (0 = one per CPU core)" },
	{ NULL, "workers", SETTING_INT, "4", 1, 256, OFF(workers), 0,
	  "worker-pool threads for blocking work (fsync)" },
	{ NULL, "user", SETTING_STR, "", 0, 0, OFF(run_user), 0,
	  "drop privileges to this user after binding (\"\" = stay)" },
	{ NULL, "log_level", SETTING_STR, "info", 0, 0, 0, 0,
	  "err, warn, info or debug" },
	{ NULL, "mail_root", SETTING_STR, LOCALSTATEDIR "/lib/mxguard/mail", 0, 0, OFF(mail_root), SETTING_F_PATH,
	  "root of the Maildir store: <mail_root>/<domain>/<user>/" },
	{ NULL, "spool_dir", SETTING_STR, LOCALSTATEDIR "/spool/mxguard", 0, 0, OFF(spool_dir), SETTING_F_PATH,
	  "where large message bodies are spooled while received" },
	{ NULL, "state_dir", SETTING_STR, RUNSTATEDIR "/mxguard", 0, 0, OFF(state_dir), SETTING_F_PATH,
	  "runtime state (pid file)" },
	{ NULL, "passwd_file", SETTING_STR, SYSCONFDIR "/mxguard/passwd", 0, 0, OFF(passwd_file), SETTING_F_PATH,
	  "users: user@domain:{CRYPT}hash lines (mxguardctl manages it)" },
	{ NULL, "local_domains", SETTING_STRLIST, "{}", 0, 0, OFF(local_domains), 0,
	  "domains mail is accepted for (at least one); nothing else is relayed" },
	{ NULL, "tls_cert", SETTING_STR, "", 0, 0, OFF(tls_cert), SETTING_F_PATH,
	  "PEM certificate chain for STARTTLS and implicit TLS (\"\" = no TLS)" },
	{ NULL, "tls_key", SETTING_STR, "", 0, 0, OFF(tls_key), SETTING_F_PATH,
	  "PEM private key for tls_cert" },
	{ NULL, "bare_lf", SETTING_STR, "reject", 0, 0, 0, 0,
	  "message with a bare LF: reject (550 5.6.0 at end of DATA) or accept" },
	{ NULL, "junk_folder", SETTING_STR, "Junk", 0, 0, OFF(junk_folder), 0,
	  "Maildir++ folder for mail scored at or above pipeline.junk_score" },
	{ NULL, "quarantine_dir", SETTING_STR, LOCALSTATEDIR "/lib/mxguard/quarantine", 0, 0, OFF(quarantine_dir), SETTING_F_PATH,
	  "Maildir that holds quarantined mail" },
	{ NULL, "postmaster", SETTING_STR, "", 0, 0, OFF(postmaster), 0,
	  "mailbox (user@local.domain) that receives postmaster@ every local domain (\"\" = first user of a local domain)" },

	{ "listen", "address", SETTING_STR, "127.0.0.1:2525", 0, 0, LOFF(address), 0,
	  "host:port or [v6]:port to listen on (section title names the listener)" },
	{ "listen", "protocol", SETTING_STR, "smtp", 0, 0, LOFF(protocol), 0,
	  "the service that speaks on this listener (this build: smtp)" },
	{ "listen", "tls", SETTING_STR, "none", 0, 0, 0, 0,
	  "none (STARTTLS offered when a certificate is set) or implicit (TLS from the first byte)" },

	{ "limits", "line_max", SETTING_INT, "1000", 512, 65536, OFF(limits.line_max), 0,
	  "SMTP command line length in octets, CRLF included" },
	{ "limits", "message_size_max", SETTING_INT, "26214400", 1024, 2147483647L, OFF(limits.message_size_max), 0,
	  "largest message in octets as sent, CRLF counted (advertised with SIZE)" },
	{ "limits", "recipients_max", SETTING_INT, "100", 100, 100000, OFF(limits.recipients_max), 0,
	  "accepted RCPT commands per message (repeats count); more get 452 4.5.3" },
	{ "limits", "commands_max", SETTING_INT, "100", 10, 100000, OFF(limits.commands_max), 0,
	  "commands that move no mail (NOOP, RSET, VRFY, HELP...) before the next MAIL" },
	{ "limits", "errors_max", SETTING_INT, "10", 1, 1000, OFF(limits.errors_max), 0,
	  "protocol errors before the session is closed with 421" },
	{ "limits", "connections_max", SETTING_INT, "1000", 1, 1000000, OFF(limits.connections_max), 0,
	  "simultaneous connections in total" },
	{ "limits", "connections_per_client", SETTING_INT, "20", 1, 1000000, OFF(limits.connections_per_client), 0,
	  "simultaneous connections from one client address" },
	{ "limits", "timeout_greeting", SETTING_INT, "300", 1, 3600, OFF(limits.timeout_greeting), 0,
	  "seconds to wait for the first command" },
	{ "limits", "timeout_command", SETTING_INT, "300", 1, 3600, OFF(limits.timeout_command), 0,
	  "seconds to wait for the next command" },
	{ "limits", "timeout_data", SETTING_INT, "180", 1, 3600, OFF(limits.timeout_data), 0,
	  "seconds to wait for the next block of message data" },
	{ "limits", "timeout_shutdown", SETTING_INT, "30", 1, 3600, OFF(limits.timeout_shutdown), 0,
	  "seconds SIGTERM waits for transactions in flight" },
	{ "limits", "spill_threshold", SETTING_INT, "1048576", 4096, 1073741824L, OFF(limits.spill_threshold), 0,
	  "body octets kept in memory; larger bodies go to spool_dir" },
	{ "limits", "data_line_max", SETTING_INT, "65536", 1000, 1073741824L, OFF(limits.data_line_max), 0,
	  "longest line of message data in octets, CRLF included; longer: 550 5.6.0 at end of DATA" },

	{ "pipeline", "stages", SETTING_STRLIST, "{}", 0, 0, OFF(pipeline.stages), 0,
	  "filter stages in the order they run; each has a section named after it" },
	{ "pipeline", "tag_score", SETTING_FLOAT, "5.0", 0, 0, OFF(pipeline.tag_score), 0,
	  "score at which mail is tagged (X-Spam-Flag: YES)" },
	{ "pipeline", "junk_score", SETTING_FLOAT, "8.0", 0, 0, OFF(pipeline.junk_score), 0,
	  "score at which mail goes to the junk folder" },
	{ "pipeline", "reject_score", SETTING_FLOAT, "15.0", 0, 0, OFF(pipeline.reject_score), 0,
	  "score at which mail is refused (550 5.7.1)" },
	{ "pipeline", "stage_timeout", SETTING_INT, "30000", 10, 600000, OFF(pipeline.stage_timeout), 0,
	  "default time limit of one stage check in milliseconds" },
};
const size_t settings_table_count = N_ELEMENTS(settings_table);

/* sections of the table, in order, and their libconfuse flags */
static const struct {
	const char *name;
	int flags;
} table_sections[] = {
	{ "listen", CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES },
	{ "limits", CFGF_NONE },
	{ "pipeline", CFGF_NONE },
};

struct registered_section {
	char *name;
	cfg_opt_t *opts;
};
static struct registered_section *registered;
static size_t n_registered;

void
config_register_section(const char *name, cfg_opt_t *opts)
{
	for (size_t i = 0; i < n_registered; i++) {
		if (strcmp(registered[i].name, name) == 0) {
			registered[i].opts = opts;
			return;
		}
	}
	registered = xrealloc(registered, (n_registered + 1) * sizeof(*registered));
	registered[n_registered].name = xstrdup(name);
	registered[n_registered].opts = opts;
	n_registered++;
}

static const struct setting_def *
setting_find(const char *section, const char *name)
{
	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *s = &settings_table[i];
		bool same_section = (s->section == NULL && section == NULL) ||
			(s->section != NULL && section != NULL && strcmp(s->section, section) == 0);
		if (same_section && strcmp(s->name, name) == 0)
			return s;
	}
	return NULL;
}

/* What one load collects while libconfuse parses: the first error with its
 * file and line, and the line each top-level setting was set on. */
struct config_errors {
	char *first;
	cfg_t *root;
	const char *path;
	int *lines; /* settings_table_count entries, 0 = left at its default */
	/* the line of each listen section's address (cfg_t->line of a section
	 * is where it ends once parsed) */
	struct { cfg_t *sec; int line; } *addr_lines;
	size_t n_addr_lines;
};
static __thread struct config_errors *current_errors;

/* Called by libconfuse for every integer value while parsing: bounds. */
static int
config_validate_int(cfg_t *cfg, cfg_opt_t *opt)
{
	const char *section = strcmp(cfg->name, "root") == 0 ? NULL : cfg->name;
	const struct setting_def *s = setting_find(section, opt->name);
	long v = cfg_opt_getnint(opt, cfg_opt_size(opt) - 1);

	if (s == NULL || (s->min == 0 && s->max == 0))
		return 0;
	if (v < s->min || v > s->max) {
		cfg_error(cfg, "%s%s%s = %ld is out of range [%ld, %ld]",
			  section ? section : "", section ? "." : "", opt->name, v, s->min, s->max);
		return -1;
	}
	return 0;
}

static int
config_validate_choice(cfg_t *cfg, cfg_opt_t *opt)
{
	const char *v = cfg_opt_getnstr(opt, cfg_opt_size(opt) - 1);
	enum log_level lvl;

	if (strcmp(opt->name, "log_level") == 0) {
		if (log_level_parse(v, &lvl) == 0)
			return 0;
		cfg_error(cfg, "log_level = \"%s\": expected err, warn, info or debug", v);
		return -1;
	}
	if (strcmp(opt->name, "bare_lf") == 0) {
		if (strcmp(v, "reject") == 0 || strcmp(v, "accept") == 0)
			return 0;
		cfg_error(cfg, "bare_lf = \"%s\": expected reject or accept", v);
		return -1;
	}
	if (strcmp(opt->name, "tls") == 0) {
		if (strcmp(v, "none") == 0 || strcmp(v, "implicit") == 0)
			return 0;
		cfg_error(cfg, "tls = \"%s\": expected none or implicit", v);
		return -1;
	}
	if (strcmp(opt->name, "address") == 0) {
		struct sockaddr_storage ss;
		socklen_t len;
		const char *err;
		if (net_parse_address(v, &ss, &len, &err) == 0)
			return 0;
		cfg_error(cfg, "address = \"%s\": %s", v, err);
		return -1;
	}
	return 0;
}

static bool
config_valid_domain(const char *d)
{
	size_t len = strlen(d);

	return len > 0 && len <= 253 && strspn(d, "abcdefghijklmnopqrstuvwxyz"
					       "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") == len &&
	       d[0] != '.' && d[0] != '-' && d[len - 1] != '.' && strstr(d, "..") == NULL;
}

/* Lists: every domain a domain name, every stage one that exists (each
 * known stage has registered its section). */
static int
config_validate_list(cfg_t *cfg, cfg_opt_t *opt)
{
	for (unsigned i = 0; i < cfg_opt_size(opt); i++) {
		const char *v = cfg_opt_getnstr(opt, i);
		if (strcmp(opt->name, "local_domains") == 0 && !config_valid_domain(v)) {
			cfg_error(cfg, "local_domains: \"%s\" is not a domain name", v);
			return -1;
		}
		if (strcmp(opt->name, "stages") == 0) {
			bool known = false;
			for (size_t j = 0; j < n_registered; j++)
				known = known || strcmp(registered[j].name, v) == 0;
			if (!known) {
				cfg_error(cfg, "pipeline.stages: unknown stage '%s'", v);
				return -1;
			}
			for (unsigned j = 0; j < i; j++) {
				if (strcmp(cfg_opt_getnstr(opt, j), v) == 0) {
					cfg_error(cfg, "pipeline.stages: stage '%s' listed twice", v);
					return -1;
				}
			}
		}
	}
	return 0;
}

/* Every value of the table passes here while it is parsed (cfg->line is
 * then the value's line): remember where top-level settings were set, and
 * check the value. */
static int
config_validate(cfg_t *cfg, cfg_opt_t *opt)
{
	if (current_errors != NULL && current_errors->lines != NULL &&
	    strcmp(cfg->name, "root") == 0) {
		const struct setting_def *s = setting_find(NULL, opt->name);
		if (s != NULL)
			current_errors->lines[s - settings_table] = cfg->line;
	}
	if (current_errors != NULL && strcmp(cfg->name, "listen") == 0 &&
	    strcmp(opt->name, "address") == 0) {
		struct config_errors *e = current_errors;
		e->addr_lines = xrealloc(e->addr_lines, (e->n_addr_lines + 1) * sizeof(*e->addr_lines));
		e->addr_lines[e->n_addr_lines].sec = cfg;
		e->addr_lines[e->n_addr_lines].line = cfg->line;
		e->n_addr_lines++;
	}
	switch (opt->type) {
	case CFGT_INT:
		return config_validate_int(cfg, opt);
	case CFGT_STR:
		return (opt->flags & CFGF_LIST) ? config_validate_list(cfg, opt)
						: config_validate_choice(cfg, opt);
	default:
		return 0;
	}
}

static cfg_opt_t
config_make_opt(const struct setting_def *s)
{
	cfg_opt_t end = CFG_END();
	cfg_opt_t o = end;

	switch (s->type) {
	case SETTING_INT:
		o = (cfg_opt_t)CFG_INT(s->name, strtol(s->def, NULL, 10), CFGF_NONE);
		break;
	case SETTING_FLOAT:
		o = (cfg_opt_t)CFG_FLOAT(s->name, strtod(s->def, NULL), CFGF_NONE);
		break;
	case SETTING_BOOL:
		o = (cfg_opt_t)CFG_BOOL(s->name, strcmp(s->def, "true") == 0 ? cfg_true : cfg_false, CFGF_NONE);
		break;
	case SETTING_STR:
		o = (cfg_opt_t)CFG_STR(s->name, (char *)s->def, CFGF_NONE);
		break;
	case SETTING_STRLIST:
		o = (cfg_opt_t)CFG_STR_LIST(s->name, (char *)s->def, CFGF_NONE);
		break;
	}
	o.validcb = config_validate;
	return o;
}

/* Build the whole option tree. The arrays are allocated once per load and
 * freed with the config (libconfuse keeps pointers into them): one for the
 * top level and one per table section, however many there are. */
struct opt_arrays {
	cfg_opt_t **arrays;
	size_t n, cap;
};

static void
opt_arrays_add(struct opt_arrays *keep, cfg_opt_t *opts)
{
	if (keep->n == keep->cap) {
		keep->cap = keep->cap == 0 ? 8 : keep->cap * 2;
		keep->arrays = xrealloc(keep->arrays, keep->cap * sizeof(*keep->arrays));
	}
	keep->arrays[keep->n++] = opts;
}

static cfg_opt_t *
config_build_section_opts(const char *section, struct opt_arrays *keep)
{
	size_t n = 0;
	cfg_opt_t *opts = xcalloc(settings_table_count + 1, sizeof(*opts));
	cfg_opt_t end = CFG_END();

	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *s = &settings_table[i];
		if ((s->section == NULL) != (section == NULL))
			continue;
		if (section != NULL && strcmp(s->section, section) != 0)
			continue;
		opts[n++] = config_make_opt(s);
	}
	opts[n] = end;
	opt_arrays_add(keep, opts);
	return opts;
}

static cfg_opt_t *
config_build_opts(struct opt_arrays *keep)
{
	cfg_opt_t *top = config_build_section_opts(NULL, keep);
	size_t n = 0;
	cfg_opt_t end = CFG_END();

	while (top[n].type != CFGT_NONE)
		n++;
	top = xrealloc(top, (n + N_ELEMENTS(table_sections) + n_registered + 1) * sizeof(*top));
	keep->arrays[0] = top;
	for (size_t i = 0; i < N_ELEMENTS(table_sections); i++) {
		cfg_opt_t *sub = config_build_section_opts(table_sections[i].name, keep);
		top[n++] = (cfg_opt_t)CFG_SEC(table_sections[i].name, sub, table_sections[i].flags);
	}
	for (size_t i = 0; i < n_registered; i++)
		top[n++] = (cfg_opt_t)CFG_SEC(registered[i].name, registered[i].opts, CFGF_NONE);
	top[n] = end;
	return top;
}

/* libconfuse reports through this; we keep the first message with its
 * file and line. */
static void
config_errfunc(cfg_t *cfg, const char *fmt, va_list ap)
{
	char msg[1024];
	int line;

	if (current_errors == NULL || current_errors->first != NULL)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* sections know their line but not their file; cfg_parse_buf names
	 * the root "[buf]": the path is ours */
	line = cfg != NULL ? cfg->line : 0;
	if (line <= 0 && current_errors->root != NULL)
		line = current_errors->root->line;
	if (line > 0)
		current_errors->first = xasprintf("%s:%d: %s", current_errors->path, line, msg);
	else
		current_errors->first = xasprintf("%s: %s", current_errors->path, msg);
}

/*
 * libconfuse 3.3 counts lines wrongly after comments (each "#" comment
 * adds two), which would make every file:line error after a comment point
 * at the wrong line. So the file is read here and its comments (#, //,
 * and block comments) are blanked out — newlines kept — before
 * libconfuse sees it. Quoted strings are left alone.
 */
static char *
config_read_stripped(const char *path, int *open_brace_line_r)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL;
	size_t len = 0, cap = 0, n;
	char chunk[8192];

	if (f == NULL)
		return NULL;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
		if (len + n + 1 > cap) {
			cap = (len + n + 1) * 2;
			buf = xrealloc(buf, cap);
		}
		memcpy(buf + len, chunk, n);
		len += n;
	}
	if (ferror(f)) {
		int saved = errno;
		fclose(f);
		free(buf);
		errno = saved;
		return NULL;
	}
	fclose(f);
	if (buf == NULL)
		buf = xmalloc(1);
	buf[len] = '\0';

	char quote = 0;
	int line = 1, depth = 0;
	int open_lines[64];
	*open_brace_line_r = 0;
	for (size_t i = 0; i < len; i++) {
		char c = buf[i];
		if (c == '\n')
			line++;
		if (quote != 0) {
			if (c == '\\' && i + 1 < len)
				i++;
			else if (c == quote)
				quote = 0;
			continue;
		}
		if (c == '"' || c == '\'') {
			quote = c;
		} else if (c == '{') {
			if (depth < (int)N_ELEMENTS(open_lines))
				open_lines[depth] = line;
			depth++;
		} else if (c == '}') {
			depth--;
		} else if (c == '#' || (c == '/' && i + 1 < len && buf[i + 1] == '/')) {
			/* blank up to the newline but leave i before it, so the
			 * loop's own step sees the newline and counts the line */
			while (i + 1 < len && buf[i + 1] != '\n')
				buf[i++] = ' ';
			buf[i] = ' ';
		} else if (c == '/' && i + 1 < len && buf[i + 1] == '*') {
			buf[i] = buf[i + 1] = ' ';
			for (i += 2; i < len; i++) {
				if (buf[i] == '*' && i + 1 < len && buf[i + 1] == '/') {
					buf[i] = buf[i + 1] = ' ';
					i++;
					break;
				}
				if (buf[i] != '\n')
					buf[i] = ' ';
				else
					line++;
			}
		}
	}
	/* libconfuse 3.3 also accepts a file that ends inside a section */
	if (depth > 0)
		*open_brace_line_r = depth <= (int)N_ELEMENTS(open_lines) ? open_lines[depth - 1] : line;
	return buf;
}

static char *
config_abspath(const char *p)
{
	char cwd[PATH_MAX];

	if (p[0] == '\0' || p[0] == '/')
		return xstrdup(p);
	if (getcwd(cwd, sizeof(cwd)) == NULL)
		return xstrdup(p);
	if (p[0] == '.' && p[1] == '/')
		p += 2;
	return xasprintf("%s/%s", cwd, p);
}

/* Copy one setting's value from the parsed section into its struct. */
static void
config_store(const struct setting_def *s, cfg_t *sec, void *base)
{
	char *field = (char *)base + s->offset;

	switch (s->type) {
	case SETTING_INT:
		*(long *)(void *)field = cfg_getint(sec, s->name);
		break;
	case SETTING_FLOAT:
		*(double *)(void *)field = cfg_getfloat(sec, s->name);
		break;
	case SETTING_BOOL:
		*(bool *)(void *)field = cfg_getbool(sec, s->name) == cfg_true;
		break;
	case SETTING_STR: {
		const char *v = cfg_getstr(sec, s->name);
		*(char **)(void *)field = (s->flags & SETTING_F_PATH) ? config_abspath(v ? v : "")
								       : xstrdup(v ? v : "");
		break;
	}
	case SETTING_STRLIST: {
		size_t n = cfg_size(sec, s->name);
		char **list = xcalloc(n + 1, sizeof(char *));
		for (size_t i = 0; i < n; i++)
			list[i] = xstrdup(cfg_getnstr(sec, s->name, (unsigned)i));
		*(char ***)(void *)field = list;
		*(size_t *)(void *)(field + sizeof(char **)) = n;
		break;
	}
	}
}

static void
config_store_section(cfg_t *sec, const char *section, void *base)
{
	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *s = &settings_table[i];
		if ((s->section == NULL) != (section == NULL))
			continue;
		if (section != NULL && strcmp(s->section, section) != 0)
			continue;
		if (s->offset == 0 && s->type == SETTING_STR)
			continue; /* an enum: converted by the caller */
		config_store(s, sec, base);
	}
}

/* The option arrays must outlive c->cfg; they hang off the config, as do
 * the lines the top-level settings were read from. */
struct config_private {
	struct mx_config pub;
	struct opt_arrays *keep;
	int *lines; /* per settings_table row; 0 = default */
};

static void
config_free(struct config_private *priv)
{
	struct mx_config *c = &priv->pub;
	struct opt_arrays *keep = priv->keep;

	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *s = &settings_table[i];
		if (s->section != NULL && strcmp(s->section, "listen") == 0)
			continue;
		if (s->offset == 0 && s->type == SETTING_STR)
			continue;
		char *field = (char *)c + s->offset;
		if (s->type == SETTING_STR) {
			free(*(char **)(void *)field);
		} else if (s->type == SETTING_STRLIST) {
			char **list = *(char ***)(void *)field;
			for (size_t j = 0; list != NULL && list[j] != NULL; j++)
				free(list[j]);
			free(list);
		}
	}
	for (size_t i = 0; i < c->n_listeners; i++) {
		free(c->listeners[i].name);
		free(c->listeners[i].address);
		free(c->listeners[i].protocol);
	}
	free(c->listeners);
	free(c->path);
	if (c->cfg != NULL)
		cfg_free(c->cfg);
	if (keep != NULL) {
		for (size_t i = 0; i < keep->n; i++)
			free(keep->arrays[i]);
		free(keep->arrays);
		free(keep);
	}
	free(priv->lines);
	free(priv);
}

int
config_setting_line(const struct mx_config *cfg, const char *name)
{
	const struct config_private *priv = (const struct config_private *)(const void *)cfg;
	const struct setting_def *s = setting_find(NULL, name);

	return s != NULL && priv->lines != NULL ? priv->lines[s - settings_table] : 0;
}

/* One listening address, reduced to what decides whether two binds clash:
 * IPv4 as v4-mapped IPv6; "*" / "[::]" are bound dual-stack by net_listen,
 * so they cover every address, and 0.0.0.0 covers every IPv4 address. */
struct bind_key {
	unsigned char addr[16];
	uint16_t port;
	bool any_v6, any_v4;
};

/* postmaster = "local@domain": a plain local part (no quotes, no routing
 * characters) in one of the local domains, stored in lower case. */
static int
config_check_postmaster(struct mx_config *c, char **error_r)
{
	char *at;

	str_lower(c->postmaster);
	at = strchr(c->postmaster, '@');
	if (at == NULL || at == c->postmaster || at[1] == '\0' || c->postmaster[0] == '.' ||
	    at[-1] == '.' || strstr(c->postmaster, "..") != NULL ||
	    strspn(c->postmaster, "abcdefghijklmnopqrstuvwxyz0123456789.-_+=") !=
	    (size_t)(at - c->postmaster) || at - c->postmaster > 64) {
		*error_r = xasprintf("%s: postmaster = \"%s\" is not a mailbox (user@domain)",
				     c->path, c->postmaster);
		return -1;
	}
	if (!config_is_local_domain(c, at + 1)) {
		*error_r = xasprintf("%s: postmaster = \"%s\": %s is not in local_domains "
				     "(mxguard delivers only to local mailboxes)", c->path,
				     c->postmaster, at + 1);
		return -1;
	}
	return 0;
}

static void
config_bind_key(const char *address, struct bind_key *k)
{
	struct sockaddr_storage ss;
	socklen_t len;
	const char *err;

	memset(k, 0, sizeof(*k));
	if (net_parse_address(address, &ss, &len, &err) < 0)
		return; /* cannot happen: the address was validated while parsing */
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
config_binds_clash(const struct bind_key *a, const struct bind_key *b)
{
	static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (a->port != b->port)
		return false;
	if (a->any_v6 || b->any_v6 || memcmp(a->addr, b->addr, 16) == 0)
		return true;
	if (a->any_v4 && memcmp(b->addr, v4mapped, 12) == 0)
		return true;
	return b->any_v4 && memcmp(a->addr, v4mapped, 12) == 0;
}

/* Two listeners whose binds would clash: the second one is named. */
static int
config_check_listeners(const struct mx_config *c, char **error_r)
{
	struct bind_key *keys = xcalloc(c->n_listeners, sizeof(*keys));
	int ret = 0;

	for (size_t i = 0; i < c->n_listeners && ret == 0; i++) {
		const struct listen_config *l = &c->listeners[i];
		config_bind_key(l->address, &keys[i]);
		for (size_t j = 0; j < i; j++) {
			const struct listen_config *first = &c->listeners[j];
			if (!config_binds_clash(&keys[j], &keys[i]))
				continue;
			*error_r = xasprintf("%s:%d: listen %s: address \"%s\" overlaps listen %s "
					     "(\"%s\", line %d): both cannot be bound",
					     c->path, l->line, l->name, l->address, first->name,
					     first->address, first->line);
			ret = -1;
			break;
		}
	}
	free(keys);
	return ret;
}

static int
config_check(struct mx_config *c, char **error_r)
{
	if (c->n_local_domains == 0) {
		*error_r = xasprintf("%s: local_domains must name at least one domain", c->path);
		return -1;
	}
	for (size_t i = 0; i < c->n_local_domains; i++) {
		str_lower(c->local_domains[i]);
		const char *d = c->local_domains[i];
		if (d[0] == '\0' || strspn(d, "abcdefghijklmnopqrstuvwxyz0123456789.-") != strlen(d) ||
		    d[0] == '.' || d[0] == '-' || strstr(d, "..") != NULL || strlen(d) > 253) {
			*error_r = xasprintf("%s: local_domains: \"%s\" is not a domain name", c->path, d);
			return -1;
		}
	}
	if (c->n_listeners == 0) {
		*error_r = xasprintf("%s: at least one listen section is needed", c->path);
		return -1;
	}
	if (config_check_listeners(c, error_r) < 0)
		return -1;
	if ((c->tls_cert[0] == '\0') != (c->tls_key[0] == '\0')) {
		*error_r = xasprintf("%s: tls_cert and tls_key must be set together", c->path);
		return -1;
	}
	for (size_t i = 0; i < c->n_listeners; i++) {
		if (c->listeners[i].implicit_tls && c->tls_cert[0] == '\0') {
			*error_r = xasprintf("%s: listen %s: tls = \"implicit\" needs tls_cert and tls_key",
					     c->path, c->listeners[i].name);
			return -1;
		}
	}
	if (!(c->pipeline.tag_score <= c->pipeline.junk_score &&
	      c->pipeline.junk_score <= c->pipeline.reject_score)) {
		*error_r = xasprintf("%s: pipeline: need tag_score <= junk_score <= reject_score", c->path);
		return -1;
	}
	if (c->junk_folder[0] == '\0' || c->junk_folder[0] == '.' || strchr(c->junk_folder, '/') != NULL) {
		*error_r = xasprintf("%s: junk_folder \"%s\" is not a folder name", c->path, c->junk_folder);
		return -1;
	}
	if (c->postmaster[0] != '\0' && config_check_postmaster(c, error_r) < 0)
		return -1;
	if (c->mail_root[0] == '\0' || c->spool_dir[0] == '\0' || c->passwd_file[0] == '\0') {
		*error_r = xasprintf("%s: mail_root, spool_dir and passwd_file must be set", c->path);
		return -1;
	}
	return 0;
}

int
config_load(const char *path, struct mx_config **cfg_r, char **error_r)
{
	struct config_private *priv = xcalloc(1, sizeof(*priv));
	struct mx_config *c = &priv->pub;
	struct config_errors errs = { NULL };
	cfg_t *cfg;
	int ret;

	priv->keep = xcalloc(1, sizeof(*priv->keep));
	priv->lines = xcalloc(settings_table_count, sizeof(*priv->lines));
	*cfg_r = NULL;
	*error_r = NULL;
	c->refcount = 1;
	c->path = xstrdup(path);

	cfg = cfg_init(config_build_opts(priv->keep), CFGF_NONE);
	cfg_set_error_function(cfg, config_errfunc);
	c->cfg = cfg;
	int open_line;
	char *text = config_read_stripped(path, &open_line);
	if (text == NULL) {
		*error_r = xasprintf("%s: %s", path, strerror(errno ? errno : ENOENT));
		goto fail;
	}
	if (open_line > 0) {
		free(text);
		*error_r = xasprintf("%s:%d: '{' is never closed", path, open_line);
		goto fail;
	}
	errs.root = cfg;
	errs.path = path;
	errs.lines = priv->lines;
	current_errors = &errs;
	ret = cfg_parse_buf(cfg, text);
	current_errors = NULL;
	free(text);
	if (ret != CFG_SUCCESS) {
		*error_r = errs.first != NULL ? errs.first : xasprintf("%s: parse error", path);
		goto fail;
	}
	free(errs.first);
	errs.first = NULL;

	config_store_section(cfg, NULL, c);
	config_store_section(cfg_getsec(cfg, "limits"), "limits", c);
	config_store_section(cfg_getsec(cfg, "pipeline"), "pipeline", c);
	log_level_parse(cfg_getstr(cfg, "log_level"), &c->log_level);
	c->bare_lf = strcmp(cfg_getstr(cfg, "bare_lf"), "accept") == 0 ? BARE_LF_ACCEPT : BARE_LF_REJECT;
	c->n_listeners = cfg_size(cfg, "listen");
	c->listeners = xcalloc(c->n_listeners + 1, sizeof(*c->listeners));
	for (size_t i = 0; i < c->n_listeners; i++) {
		cfg_t *l = cfg_getnsec(cfg, "listen", (unsigned)i);
		c->listeners[i].name = xstrdup(cfg_title(l));
		c->listeners[i].address = xstrdup(cfg_getstr(l, "address"));
		c->listeners[i].protocol = xstrdup(cfg_getstr(l, "protocol"));
		c->listeners[i].implicit_tls = strcmp(cfg_getstr(l, "tls"), "implicit") == 0;
		c->listeners[i].line = l->line;
		for (size_t j = 0; j < errs.n_addr_lines; j++) {
			if (errs.addr_lines[j].sec == l)
				c->listeners[i].line = errs.addr_lines[j].line;
		}
	}
	if (c->hostname[0] == '\0') {
		char host[256];
		if (gethostname(host, sizeof(host)) != 0)
			str_copy(host, "localhost", sizeof(host));
		host[sizeof(host) - 1] = '\0';
		free(c->hostname);
		c->hostname = xstrdup(host);
	}
	if (config_check(c, error_r) < 0)
		goto fail;
	free(errs.addr_lines);
	*cfg_r = c;
	return 0;
fail:
	free(errs.addr_lines);
	config_free(priv);
	return -1;
}

struct mx_config *
config_ref(struct mx_config *cfg)
{
	__atomic_add_fetch(&cfg->refcount, 1, __ATOMIC_RELAXED);
	return cfg;
}

void
config_unref(struct mx_config **cfgp)
{
	struct mx_config *c = *cfgp;

	*cfgp = NULL;
	if (c == NULL)
		return;
	if (__atomic_sub_fetch(&c->refcount, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	config_free((struct config_private *)(void *)c);
}

bool
config_is_local_domain(const struct mx_config *cfg, const char *domain)
{
	for (size_t i = 0; i < cfg->n_local_domains; i++) {
		if (strcasecmp(cfg->local_domains[i], domain) == 0)
			return true;
	}
	return false;
}
