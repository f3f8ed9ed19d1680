/*
 * test_config.c — unit tests for the settings table and the config loader
 * (lib/config.c).
 *
 * Every test writes a real file into a private temporary directory (which
 * is also the working directory, so relative paths have a known anchor) and
 * runs config_load() on it. Wherever it can, a test walks settings_table[]
 * instead of naming settings: defaults, bounds and the documentation checks
 * then cover a setting added tomorrow without anyone touching this file —
 * and a setting added without docs in doc/mxguard.conf.5 and
 * etc/mxguard.conf makes the suite fail.
 *
 * The source tree is found through MX_SRCDIR (set by `make check`), or the
 * directory the test was started in.
 */
#include "config.h"

#include <confuse.h>
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "lib/lib.h"

/* A minimal valid config: four lines, so text appended to it starts on
 * line 5. */
#define BASE_CONF \
	"local_domains = {\"example.test\"}\n" \
	"listen smtp {\n" \
	"\taddress = \"127.0.0.1:2525\"\n" \
	"}\n"
#define BASE_LINES 4

static char srcdir[PATH_MAX];   /* absolute */
static char tmpdir[PATH_MAX];   /* absolute; the cwd while tests run */
static char startdir[PATH_MAX];

/* ---------------------------------------------------------------- helpers */

static char *
read_whole_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL;
	size_t len = 0, cap = 0, n;

	if (f == NULL)
		fail_msg("cannot open %s: %s", path, strerror(errno));
	do {
		if (cap - len < 4096) {
			cap = cap == 0 ? 8192 : cap * 2;
			buf = xrealloc(buf, cap);
		}
		n = fread(buf + len, 1, cap - len - 1, f);
		len += n;
	} while (n > 0);
	buf[len] = '\0';
	fclose(f);
	return buf;
}

static char *
src_path(const char *rel)
{
	return xasprintf("%s/%s", srcdir, rel);
}

/* Write text to <tmpdir>/<name>; returns the absolute path (caller frees). */
static char *
write_conf(const char *name, const char *text)
{
	char *path = xasprintf("%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");

	if (f == NULL)
		fail_msg("cannot create %s: %s", path, strerror(errno));
	fputs(text, f);
	fclose(f);
	return path;
}

static char *
vformat(const char *fmt, va_list ap)
{
	char *s;

	if (vasprintf(&s, fmt, ap) < 0)
		abort();
	return s;
}

/* Load the config text; it must succeed. */
static struct mx_config *
load_ok(const char *fmt, ...) ATTR_PRINTF(1, 2);
static struct mx_config *
load_ok(const char *fmt, ...)
{
	va_list ap;
	struct mx_config *cfg = NULL;
	char *error = NULL, *text, *path;

	va_start(ap, fmt);
	text = vformat(fmt, ap);
	va_end(ap);
	path = write_conf("test.conf", text);
	if (config_load(path, &cfg, &error) < 0)
		fail_msg("config_load failed: %s\n--- config ---\n%s", error, text);
	assert_non_null(cfg);
	assert_null(error);
	free(text);
	free(path);
	return cfg;
}

/* Load the config text; it must fail. Returns the error (caller frees).
 * If line > 0 the error must start with "<file>:<line>: ", otherwise with
 * "<file>:". If needle is set, the error must contain it. */
static char *
load_fail(int line, const char *needle, const char *fmt, ...) ATTR_PRINTF(3, 4);
static char *
load_fail(int line, const char *needle, const char *fmt, ...)
{
	va_list ap;
	struct mx_config *cfg = NULL;
	char *error = NULL, *text, *path, *prefix;

	va_start(ap, fmt);
	text = vformat(fmt, ap);
	va_end(ap);
	path = write_conf("test.conf", text);
	if (config_load(path, &cfg, &error) == 0)
		fail_msg("config_load accepted a bad config:\n%s", text);
	assert_null(cfg);
	assert_non_null(error);
	prefix = line > 0 ? xasprintf("%s:%d: ", path, line) : xasprintf("%s:", path);
	if (strncmp(error, prefix, strlen(prefix)) != 0)
		fail_msg("error \"%s\" does not start with \"%s\"\n--- config ---\n%s", error,
			 prefix, text);
	if (needle != NULL && strstr(error, needle) == NULL)
		fail_msg("error \"%s\" does not mention \"%s\"", error, needle);
	free(prefix);
	free(text);
	free(path);
	return error;
}

static void
load_fail_free(int line, const char *needle, const char *text)
{
	free(load_fail(line, needle, "%s", text));
}

/* Where a table row's value lands. INT/FLOAT/STR rows of the "listen"
 * section land in struct listen_config, all others in struct mx_config. */
static void *
setting_field(struct mx_config *cfg, const struct setting_def *s)
{
	assert_true(s->section == NULL || strcmp(s->section, "listen") != 0);
	return (char *)cfg + s->offset;
}

static bool
is_listen_row(const struct setting_def *s)
{
	return s->section != NULL && strcmp(s->section, "listen") == 0;
}

static const struct setting_def *
table_find(const char *section, const char *name)
{
	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *s = &settings_table[i];
		if (((s->section == NULL && section == NULL) ||
		     (s->section != NULL && section != NULL && strcmp(s->section, section) == 0)) &&
		    strcmp(s->name, name) == 0)
			return s;
	}
	return NULL;
}

/* The expected absolute form of a path setting's value. */
static char *
expected_abspath(const char *v)
{
	if (v[0] == '\0' || v[0] == '/')
		return xstrdup(v);
	if (v[0] == '.' && v[1] == '/')
		v += 2;
	return xasprintf("%s/%s", tmpdir, v);
}

/* Is word in text, with no identifier character on either side? */
static bool
has_word(const char *text, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = strstr(text, word); p != NULL; p = strstr(p + 1, word)) {
		bool left = p == text || !(p[-1] == '_' || (p[-1] >= 'a' && p[-1] <= 'z') ||
					    (p[-1] >= 'A' && p[-1] <= 'Z') || (p[-1] >= '0' && p[-1] <= '9'));
		char r = p[n];
		bool right = !(r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') ||
			       (r >= '0' && r <= '9'));
		if (left && right)
			return true;
	}
	return false;
}

/* The value text of the first "name = value" line of a config file, with
 * surrounding quotes removed; NULL if there is none. Caller frees. */
static char *
conf_value(const char *text, const char *name)
{
	size_t n = strlen(name);

	for (const char *line = text; *line != '\0';) {
		const char *eol = strchr(line, '\n');
		const char *p = line;
		if (eol == NULL)
			eol = line + strlen(line);
		while (p < eol && (*p == ' ' || *p == '\t'))
			p++;
		if ((size_t)(eol - p) > n && strncmp(p, name, n) == 0 &&
		    (p[n] == ' ' || p[n] == '\t' || p[n] == '=')) {
			p += n;
			while (p < eol && (*p == ' ' || *p == '\t'))
				p++;
			if (p < eol && *p == '=') {
				const char *v = p + 1, *e = eol;
				while (v < e && (*v == ' ' || *v == '\t'))
					v++;
				while (e > v && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
					e--;
				if (e - v >= 2 && *v == '"' && e[-1] == '"') {
					v++;
					e--;
				}
				return xstrndup(v, (size_t)(e - v));
			}
		}
		line = *eol == '\n' ? eol + 1 : eol;
	}
	return NULL;
}

/* --------------------------------------------------------------- fixtures */

static int
group_setup(void **state)
{
	const char *env = getenv("MX_SRCDIR");
	char tmpl[] = "/tmp/test_config.XXXXXX";

	if (getcwd(startdir, sizeof(startdir)) == NULL)
		return -1;
	if (realpath(env != NULL && env[0] != '\0' ? env : ".", srcdir) == NULL)
		return -1;
	if (mkdtemp(tmpl) == NULL)
		return -1;
	if (chdir(tmpl) < 0)
		return -1;
	/* the loader anchors relative paths at getcwd(), so must we */
	if (getcwd(tmpdir, sizeof(tmpdir)) == NULL)
		return -1;
	return 0;
}

static int
group_teardown(void **state)
{
	char *path = xasprintf("%s/test.conf", tmpdir);

	unlink(path);
	free(path);
	if (chdir(startdir) < 0)
		return -1;
	rmdir(tmpdir);
	return 0;
}

/* ------------------------------------------------------------------ tests */

/* The shipped etc/mxguard.conf loads, and every value written in it lands
 * in struct mx_config. The expected values are read from the file itself,
 * so editing the shipped file does not break this test, but a value that
 * does not arrive does. */
static void
test_shipped_config(void **state)
{
	char *path = src_path("etc/mxguard.conf");
	char *text = read_whole_file(path);
	struct mx_config *cfg = NULL;
	char *error = NULL;
	size_t n_listen = 0;

	if (config_load(path, &cfg, &error) < 0)
		fail_msg("shipped config does not load: %s", error);
	assert_string_equal(cfg->path, path);
	assert_non_null(cfg->cfg);

	for (const char *p = text; p != NULL; p = strchr(p, '\n')) {
		if (*p == '\n')
			p++;
		if (strncmp(p, "listen ", 7) == 0)
			n_listen++;
	}
	assert_int_equal(cfg->n_listeners, n_listen);
	assert_true(n_listen >= 1);

	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *s = &settings_table[i];
		char *v = conf_value(text, s->name);

		if (v == NULL)
			fail_msg("etc/mxguard.conf does not set %s%s%s", s->section ? s->section : "",
				 s->section ? "." : "", s->name);
		if (is_listen_row(s)) {
			/* compared against the first listener */
			if (strcmp(s->name, "address") == 0)
				assert_string_equal(cfg->listeners[0].address, v);
			else if (strcmp(s->name, "tls") == 0)
				assert_int_equal(cfg->listeners[0].implicit_tls, strcmp(v, "implicit") == 0);
			free(v);
			continue;
		}
		switch (s->type) {
		case SETTING_INT:
			assert_int_equal(*(long *)setting_field(cfg, s), strtol(v, NULL, 10));
			break;
		case SETTING_FLOAT:
			assert_true(*(double *)setting_field(cfg, s) == strtod(v, NULL));
			break;
		case SETTING_BOOL:
			assert_int_equal(*(bool *)setting_field(cfg, s), strcmp(v, "true") == 0);
			break;
		case SETTING_STR:
			if (strcmp(s->name, "log_level") == 0) {
				enum log_level lvl;
				assert_int_equal(log_level_parse(v, &lvl), 0);
				assert_int_equal(cfg->log_level, lvl);
			} else if (strcmp(s->name, "bare_lf") == 0) {
				assert_int_equal(cfg->bare_lf,
						 strcmp(v, "accept") == 0 ? BARE_LF_ACCEPT : BARE_LF_REJECT);
			} else if (s->offset != 0 && (s->flags & SETTING_F_PATH)) {
				char *want = expected_abspath(v);
				assert_string_equal(*(char **)setting_field(cfg, s), want);
				free(want);
			} else if (s->offset != 0 && !(strcmp(s->name, "hostname") == 0 && v[0] == '\0')) {
				assert_string_equal(*(char **)setting_field(cfg, s), v);
			}
			break;
		case SETTING_STRLIST: {
			/* {"a", "b"}: count the quoted items and compare them */
			char **list = *(char ***)setting_field(cfg, s);
			size_t n = *(size_t *)((char *)setting_field(cfg, s) + sizeof(char **));
			size_t k = 0;
			for (const char *q = strchr(v, '"'); q != NULL; q = strchr(q, '"')) {
				const char *e = strchr(q + 1, '"');
				assert_non_null(e);
				char *item = xstrndup(q + 1, (size_t)(e - q - 1));
				if (strcmp(s->name, "local_domains") == 0)
					str_lower(item);
				assert_true(k < n);
				assert_string_equal(list[k], item);
				free(item);
				k++;
				q = e + 1;
			}
			assert_int_equal(n, k);
			assert_null(list[n]);
			break;
		}
		}
		free(v);
	}
	config_unref(&cfg);
	free(text);
	free(path);
}

/* Settings left out take the table's default text. */
static void
test_defaults(void **state)
{
	struct mx_config *cfg = load_ok(BASE_CONF);
	size_t n_numeric = 0;

	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *s = &settings_table[i];

		if (is_listen_row(s))
			continue; /* see test_listen_defaults */
		switch (s->type) {
		case SETTING_INT:
			if (*(long *)setting_field(cfg, s) != strtol(s->def, NULL, 10))
				fail_msg("%s: default %ld, table says %s", s->name,
					 *(long *)setting_field(cfg, s), s->def);
			n_numeric++;
			break;
		case SETTING_FLOAT:
			if (*(double *)setting_field(cfg, s) != strtod(s->def, NULL))
				fail_msg("%s: default %g, table says %s", s->name,
					 *(double *)setting_field(cfg, s), s->def);
			n_numeric++;
			break;
		case SETTING_BOOL:
			assert_int_equal(*(bool *)setting_field(cfg, s), strcmp(s->def, "true") == 0);
			break;
		case SETTING_STR:
			if (s->offset == 0)
				break; /* enums: below */
			if (strcmp(s->name, "hostname") == 0 && s->def[0] == '\0') {
				/* "" means the system host name */
				assert_true(cfg->hostname[0] != '\0');
				break;
			}
			if (s->flags & SETTING_F_PATH) {
				char *want = expected_abspath(s->def);
				assert_string_equal(*(char **)setting_field(cfg, s), want);
				free(want);
			} else {
				assert_string_equal(*(char **)setting_field(cfg, s), s->def);
			}
			break;
		case SETTING_STRLIST:
			if (strcmp(s->name, "local_domains") == 0)
				break; /* required, set by BASE_CONF */
			assert_string_equal(s->def, "{}");
			assert_int_equal(*(size_t *)((char *)setting_field(cfg, s) + sizeof(char **)), 0);
			assert_null((*(char ***)setting_field(cfg, s))[0]);
			break;
		}
	}
	assert_true(n_numeric > 0);

	enum log_level lvl;
	assert_int_equal(log_level_parse(table_find(NULL, "log_level")->def, &lvl), 0);
	assert_int_equal(cfg->log_level, lvl);
	assert_int_equal(cfg->bare_lf, strcmp(table_find(NULL, "bare_lf")->def, "accept") == 0
					       ? BARE_LF_ACCEPT : BARE_LF_REJECT);
	config_unref(&cfg);
}

/* A listen section that sets nothing gets the table's defaults. */
static void
test_listen_defaults(void **state)
{
	struct mx_config *cfg = load_ok("local_domains = {\"example.test\"}\nlisten plain {\n}\n");
	const struct setting_def *addr = table_find("listen", "address");
	const struct setting_def *tls = table_find("listen", "tls");

	assert_non_null(addr);
	assert_non_null(tls);
	assert_int_equal(cfg->n_listeners, 1);
	assert_string_equal(cfg->listeners[0].name, "plain");
	assert_string_equal(cfg->listeners[0].address, addr->def);
	assert_int_equal(cfg->listeners[0].implicit_tls, strcmp(tls->def, "implicit") == 0);
	config_unref(&cfg);
}

/* Writes a config where row s is set to value on a known line, followed
 * by another valid line in the same section (so an error reported for the
 * line after the value would be caught). Returns the line of the value. */
static int
bound_config(const struct setting_def *s, const char *value, char **text_r)
{
	if (s->section == NULL) {
		*text_r = xasprintf(BASE_CONF "# top level\n%s = %s\nhostname = \"mx.example.test\"\n",
				    s->name, value);
		return BASE_LINES + 2;
	}
	/* another numeric row of the same section, at its default */
	const struct setting_def *other = NULL;
	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *o = &settings_table[i];
		if (o != s && o->section != NULL && strcmp(o->section, s->section) == 0 &&
		    (o->type == SETTING_INT || o->type == SETTING_FLOAT)) {
			other = o;
			break;
		}
	}
	*text_r = xasprintf(BASE_CONF "%s {\n\t# filler\n\t%s = %s\n\t%s = %s\n}\nhostname = \"h\"\n",
			    s->section, s->name, value, other ? other->name : "# no", other ? other->def : "other");
	return BASE_LINES + 3;
}

/* Every bounded integer: min and max load and land in the struct; min-1
 * and max+1 fail with an error naming the file and the line. */
static void
test_int_bounds(void **state)
{
	size_t n_bounded = 0;

	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *s = &settings_table[i];
		long edges[2], outside[2];
		char *text, *error, *value;
		int line;

		if (s->type != SETTING_INT || (s->min == 0 && s->max == 0))
			continue;
		assert_false(is_listen_row(s));
		assert_true(s->min <= strtol(s->def, NULL, 10));
		assert_true(strtol(s->def, NULL, 10) <= s->max);
		n_bounded++;
		edges[0] = s->min;
		edges[1] = s->max;
		outside[0] = s->min - 1;
		outside[1] = s->max + 1;
		for (int k = 0; k < 2; k++) {
			value = xasprintf("%ld", edges[k]);
			bound_config(s, value, &text);
			struct mx_config *cfg = load_ok("%s", text);
			assert_int_equal(*(long *)setting_field(cfg, s), edges[k]);
			config_unref(&cfg);
			free(text);
			free(value);

			value = xasprintf("%ld", outside[k]);
			line = bound_config(s, value, &text);
			error = load_fail(line, s->name, "%s", text);
			if (strstr(error, value) == NULL)
				fail_msg("error \"%s\" does not show the value %s", error, value);
			free(error);
			free(text);
			free(value);
		}
	}
	/* the table really has bounded integers: the loop above tested something */
	assert_true(n_bounded > 0);
}

static void
test_int_not_a_number(void **state)
{
	load_fail_free(BASE_LINES + 2, NULL,
		       BASE_CONF "limits {\n\tline_max = lots\n\terrors_max = 10\n}\n");
	load_fail_free(BASE_LINES + 1, NULL, BASE_CONF "workers = 2.5\nthreads = 1\n");
}

static void
test_bad_choices(void **state)
{
	load_fail_free(BASE_LINES + 2, "log_level",
		       BASE_CONF "# x\nlog_level = \"verbose\"\nthreads = 1\n");
	load_fail_free(BASE_LINES + 1, "bare_lf", BASE_CONF "bare_lf = \"fix\"\nthreads = 1\n");
	load_fail_free(BASE_LINES + 3, "tls",
		       BASE_CONF "listen other {\n\taddress = \"127.0.0.1:2526\"\n\ttls = \"starttls\"\n"
				 "\taddress = \"127.0.0.1:2527\"\n}\n");
	load_fail_free(BASE_LINES + 2, "address",
		       BASE_CONF "listen other {\n\taddress = \"localhost:25\"\n\ttls = \"none\"\n}\n");
	load_fail_free(BASE_LINES + 2, "address",
		       BASE_CONF "listen other {\n\taddress = \"127.0.0.1:0\"\n\ttls = \"none\"\n}\n");
	load_fail_free(BASE_LINES + 2, "address",
		       BASE_CONF "listen other {\n\taddress = \"[::1:25\"\n\ttls = \"none\"\n}\n");
	load_fail_free(BASE_LINES + 2, "address",
		       BASE_CONF "listen other {\n\taddress = \"127.0.0.1\"\n\ttls = \"none\"\n}\n");

	/* and the good values of the same settings load */
	for (const char *const *lvl = (const char *const[]){ "err", "warn", "info", "debug", NULL };
	     *lvl != NULL; lvl++) {
		enum log_level want;
		struct mx_config *cfg = load_ok(BASE_CONF "log_level = \"%s\"\n", *lvl);
		assert_int_equal(log_level_parse(*lvl, &want), 0);
		assert_int_equal(cfg->log_level, want);
		config_unref(&cfg);
	}
	struct mx_config *cfg = load_ok(BASE_CONF "bare_lf = \"accept\"\n");
	assert_int_equal(cfg->bare_lf, BARE_LF_ACCEPT);
	config_unref(&cfg);
	cfg = load_ok(BASE_CONF "bare_lf = \"reject\"\n");
	assert_int_equal(cfg->bare_lf, BARE_LF_REJECT);
	config_unref(&cfg);
}

static void
test_unknown_option(void **state)
{
	load_fail_free(BASE_LINES + 2, "frobnicate", BASE_CONF "threads = 1\nfrobnicate = 1\n");
	load_fail_free(BASE_LINES + 3, "frobnicate",
		       BASE_CONF "limits {\n\tline_max = 1000\n\tfrobnicate = 1\n}\n");
	load_fail_free(BASE_LINES + 1, "frobsection", BASE_CONF "frobsection {\n\tx = 1\n}\n");
	/* a setting of another section is unknown where it does not belong */
	load_fail_free(BASE_LINES + 1, "line_max", BASE_CONF "line_max = 1000\n");
}

static void
test_syntax_and_file_errors(void **state)
{
	struct mx_config *cfg = NULL;
	char *error = NULL;
	char *path = xasprintf("%s/does-not-exist.conf", tmpdir);

	load_fail_free(BASE_LINES + 2, NULL, BASE_CONF "threads = 1\nworkers = = 2\n");
	/* a section that is never closed is named by the line it opens on */
	load_fail_free(BASE_LINES + 2, "never closed",
		       BASE_CONF "threads = 1\nlimits {\n\tline_max = 1000\n");
	/* ... also after comments, and with comments inside it: a comment
	 * ends with its newline, which must still count as a line */
	load_fail_free(BASE_LINES + 6, "never closed",
		       BASE_CONF "# one\n# two\n// three\nthreads = 1 # trailing\n\n"
				 "limits {\n\t# inside\n\tline_max = 1000 # trailing\n"
				 "\t/* block\n\t   comment */\n\t# last\n");
	load_fail_free(BASE_LINES + 3, "never closed",
		       BASE_CONF "#\n#\nlimits {\n#\n\tline_max = 1000\n#\n#\n#\n");
	/* an include directive is not supported */
	load_fail_free(BASE_LINES + 1, NULL, BASE_CONF "include(\"other.conf\")\n");

	assert_int_equal(config_load(path, &cfg, &error), -1);
	assert_null(cfg);
	assert_non_null(error);
	assert_true(strncmp(error, path, strlen(path)) == 0);
	assert_non_null(strstr(error, strerror(ENOENT)));
	free(error);
	free(path);
}

/* Comments of every kind are ignored and do not shift the line numbers
 * of later errors; a # inside a quoted string is not a comment. */
static void
test_comments(void **state)
{
	load_fail_free(BASE_LINES + 4, "threads",
		       BASE_CONF "# one\n# two\n# three\nthreads = -1\n");
	load_fail_free(BASE_LINES + 3, "threads",
		       BASE_CONF "// one\nworkers = 2 # trailing\nthreads = -1\n");
	load_fail_free(BASE_LINES + 4, "threads",
		       BASE_CONF "/* a block\n   comment */\nworkers = 2\nthreads = -1\n");
	load_fail_free(BASE_LINES + 4, "line_max",
		       BASE_CONF "limits {\n\t# inside a section\n\t# twice\n\tline_max = 1\n}\n");

	struct mx_config *cfg = load_ok(BASE_CONF "# hostname = \"commented.example\"\n"
						  "hostname = \"a#b//c\" # real\n"
						  "junk_folder = \"Spam\" /* block */\n");
	assert_string_equal(cfg->hostname, "a#b//c");
	assert_string_equal(cfg->junk_folder, "Spam");
	config_unref(&cfg);
}

static void
test_required_and_consistency(void **state)
{
	/* local_domains missing or empty */
	load_fail_free(0, "local_domains", "listen smtp {\n\taddress = \"127.0.0.1:2525\"\n}\n");
	load_fail_free(0, "local_domains",
		       "local_domains = {}\nlisten smtp {\n\taddress = \"127.0.0.1:2525\"\n}\n");
	/* a bad domain is caught on its line */
	load_fail_free(BASE_LINES + 1, "exa mple.test",
		       BASE_CONF "local_domains = {\"exa mple.test\"}\nthreads = 1\n");
	load_fail_free(BASE_LINES + 1, "a..b", BASE_CONF "local_domains = {\"a..b\"}\nthreads = 1\n");
	load_fail_free(BASE_LINES + 1, "local_domains", BASE_CONF "local_domains = {\"\"}\nthreads = 1\n");
	/* no listener */
	load_fail_free(0, "listen", "local_domains = {\"example.test\"}\n");
	/* TLS: cert and key together; implicit TLS needs them */
	load_fail_free(0, "tls_cert", BASE_CONF "tls_cert = \"/etc/ssl/c.pem\"\n");
	load_fail_free(0, "tls_key", BASE_CONF "tls_key = \"/etc/ssl/k.pem\"\n");
	load_fail_free(0, "implicit",
		       BASE_CONF "listen smtps {\n\taddress = \"127.0.0.1:4465\"\n\ttls = \"implicit\"\n}\n");
	/* score thresholds must not decrease */
	load_fail_free(0, "tag_score", BASE_CONF "pipeline {\n\ttag_score = 9\n\tjunk_score = 8\n}\n");
	load_fail_free(0, "junk_score",
		       BASE_CONF "pipeline {\n\tjunk_score = 20\n\treject_score = 15\n}\n");
	/* junk_folder must be a plain folder name */
	load_fail_free(0, "junk_folder", BASE_CONF "junk_folder = \"a/b\"\n");
	load_fail_free(0, "junk_folder", BASE_CONF "junk_folder = \"\"\n");
	/* the places mail lives cannot be empty */
	load_fail_free(0, "mail_root", BASE_CONF "mail_root = \"\"\n");

	/* equal thresholds are allowed */
	struct mx_config *cfg = load_ok(BASE_CONF "pipeline {\n\ttag_score = 7\n\tjunk_score = 7\n"
						  "\treject_score = 7\n}\n");
	assert_true(cfg->pipeline.tag_score == 7.0 && cfg->pipeline.reject_score == 7.0);
	config_unref(&cfg);
	/* a certificate and key (not opened by the loader) with an implicit listener */
	cfg = load_ok(BASE_CONF "tls_cert = \"/etc/ssl/c.pem\"\ntls_key = \"/etc/ssl/k.pem\"\n"
				"listen smtps {\n\taddress = \"127.0.0.1:4465\"\n\ttls = \"implicit\"\n}\n");
	assert_string_equal(cfg->tls_cert, "/etc/ssl/c.pem");
	assert_string_equal(cfg->tls_key, "/etc/ssl/k.pem");
	assert_int_equal(cfg->n_listeners, 2);
	assert_false(cfg->listeners[0].implicit_tls);
	assert_true(cfg->listeners[1].implicit_tls);
	config_unref(&cfg);
}

/* Every path setting given relatively ends up absolute under the cwd;
 * absolute ones stay as written. */
static void
test_relative_paths(void **state)
{
	size_t n_paths = 0;

	for (int absolute = 0; absolute < 2; absolute++) {
		char *text = xstrdup(BASE_CONF);

		for (size_t i = 0; i < settings_table_count; i++) {
			const struct setting_def *s = &settings_table[i];
			char *more;
			if (!(s->flags & SETTING_F_PATH))
				continue;
			assert_int_equal(s->type, SETTING_STR);
			assert_null(s->section);
			/* "./x" and "x" both count as relative */
			more = xasprintf("%s%s = \"%s%s%s\"\n", text, s->name,
					 absolute ? "/abs/" : (i % 2 ? "./" : ""), "rel/", s->name);
			free(text);
			text = more;
		}
		struct mx_config *cfg = load_ok("%s", text);
		for (size_t i = 0; i < settings_table_count; i++) {
			const struct setting_def *s = &settings_table[i];
			char *want;
			if (!(s->flags & SETTING_F_PATH))
				continue;
			want = absolute ? xasprintf("/abs/rel/%s", s->name)
					: xasprintf("%s/rel/%s", tmpdir, s->name);
			assert_string_equal(*(char **)setting_field(cfg, s), want);
			free(want);
			n_paths++;
		}
		config_unref(&cfg);
		free(text);
	}
	assert_true(n_paths > 0);
}

static void
test_local_domains(void **state)
{
	struct mx_config *cfg = load_ok(
		"local_domains = {\"Example.TEST\", \"MAIL.Other-Domain.example\", \"x.example\"}\n"
		"listen smtp {\n\taddress = \"127.0.0.1:2525\"\n}\n");

	assert_int_equal(cfg->n_local_domains, 3);
	assert_string_equal(cfg->local_domains[0], "example.test");
	assert_string_equal(cfg->local_domains[1], "mail.other-domain.example");
	assert_string_equal(cfg->local_domains[2], "x.example");
	assert_null(cfg->local_domains[3]);
	assert_true(config_is_local_domain(cfg, "example.test"));
	assert_true(config_is_local_domain(cfg, "EXAMPLE.test"));
	assert_true(config_is_local_domain(cfg, "mail.other-domain.EXAMPLE"));
	assert_false(config_is_local_domain(cfg, "other-domain.example"));
	assert_false(config_is_local_domain(cfg, "example.test.evil"));
	assert_false(config_is_local_domain(cfg, ""));
	config_unref(&cfg);
}

static void
test_several_listeners(void **state)
{
	struct mx_config *cfg = load_ok(
		"local_domains = {\"example.test\"}\n"
		"tls_cert = \"cert.pem\"\n"
		"tls_key = \"key.pem\"\n"
		"listen smtp {\n\taddress = \"127.0.0.1:2525\"\n}\n"
		"listen v6 {\n\taddress = \"[::1]:2526\"\n\ttls = \"none\"\n}\n"
		"listen everywhere {\n\taddress = \"*:2527\"\n}\n"
		"listen \"smtps\" {\n\taddress = \"0.0.0.0:4465\"\n\ttls = \"implicit\"\n}\n");
	static const struct {
		const char *name, *address;
		bool implicit;
	} want[] = {
		{ "smtp", "127.0.0.1:2525", false },
		{ "v6", "[::1]:2526", false },
		{ "everywhere", "*:2527", false },
		{ "smtps", "0.0.0.0:4465", true },
	};

	assert_int_equal(cfg->n_listeners, N_ELEMENTS(want));
	for (size_t i = 0; i < N_ELEMENTS(want); i++) {
		assert_string_equal(cfg->listeners[i].name, want[i].name);
		assert_string_equal(cfg->listeners[i].address, want[i].address);
		assert_int_equal(cfg->listeners[i].implicit_tls, want[i].implicit);
	}
	/* relative certificate paths are anchored too */
	char *cert = expected_abspath("cert.pem");
	assert_string_equal(cfg->tls_cert, cert);
	free(cert);
	config_unref(&cfg);

	/* two listeners with the same title are refused */
	load_fail_free(0, "smtp", BASE_CONF "listen smtp {\n\taddress = \"127.0.0.1:2526\"\n}\n");
	/* a listener needs a title */
	load_fail_free(BASE_LINES + 1, NULL, BASE_CONF "listen {\n\taddress = \"127.0.0.1:2526\"\n}\n");
}

/* Two listeners that cannot both be bound are refused at the address of
 * the second one; different ports, or distinct addresses, are fine. */
static void
test_listener_overlap(void **state)
{
	static const struct {
		const char *first, *second;
		bool clash;
	} cases[] = {
		{ "127.0.0.1:2525", "127.0.0.1:2525", true },
		{ "127.0.0.1:2525", "*:2525", true },
		{ "*:2525", "127.0.0.1:2525", true },
		{ "0.0.0.0:2525", "127.0.0.1:2525", true },
		{ "127.0.0.1:2525", "0.0.0.0:2525", true },
		{ "[::]:2525", "[::1]:2525", true },
		{ "[::]:2525", "0.0.0.0:2525", true },
		{ "*:2525", "*:2525", true },
		{ "127.0.0.1:2525", "[::ffff:127.0.0.1]:2525", true },
		{ "127.0.0.1:2525", "127.0.0.1:2526", false },
		{ "*:2525", "127.0.0.1:2526", false },
		{ "127.0.0.1:2525", "127.0.0.2:2525", false },
		{ "127.0.0.1:2525", "[::1]:2525", false },
		{ "0.0.0.0:2525", "[::1]:2525", false },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		/* comments in between: the line named must be the second address's */
		char *text = xasprintf("local_domains = {\"example.test\"}\n"
				       "listen one {\n\taddress = \"%s\"\n}\n"
				       "# the other one\n"
				       "listen two {\n\t# here\n\ttls = \"none\"\n\taddress = \"%s\"\n}\n",
				       cases[i].first, cases[i].second);
		if (cases[i].clash) {
			char *error = load_fail(9, "overlaps", "%s", text);
			if (strstr(error, "listen two") == NULL || strstr(error, "listen one") == NULL ||
			    strstr(error, cases[i].second) == NULL)
				fail_msg("error \"%s\" does not name both listeners", error);
			free(error);
		} else {
			struct mx_config *cfg = load_ok("%s", text);
			assert_int_equal(cfg->n_listeners, 2);
			assert_int_equal(cfg->listeners[0].line, 3);
			assert_int_equal(cfg->listeners[1].line, 9);
			config_unref(&cfg);
		}
		free(text);
	}
	/* a listener left at the default address clashes with one set to it */
	const struct setting_def *addr = table_find("listen", "address");
	char *text = xasprintf(BASE_CONF "listen other {\n\taddress = \"%s\"\n}\n", addr->def);
	load_fail_free(BASE_LINES + 2, "overlaps", text);
	free(text);
}

/* The loader remembers the line each top-level setting was set on. */
static void
test_setting_lines(void **state)
{
	struct mx_config *cfg = load_ok(BASE_CONF "# comment\nthreads = 2\n\n"
						  "tls_cert = \"c.pem\" # trailing\n"
						  "/* block\n */ tls_key = \"k.pem\"\n"
						  "limits {\n\tline_max = 1000\n}\npipeline {\n\ttag_score = 1.0\n}\n");

	assert_int_equal(config_setting_line(cfg, "local_domains"), 1);
	assert_int_equal(config_setting_line(cfg, "threads"), BASE_LINES + 2);
	assert_int_equal(config_setting_line(cfg, "tls_cert"), BASE_LINES + 4);
	assert_int_equal(config_setting_line(cfg, "tls_key"), BASE_LINES + 6);
	/* left at the default, or not a top-level setting */
	assert_int_equal(config_setting_line(cfg, "workers"), 0);
	assert_int_equal(config_setting_line(cfg, "line_max"), 0);
	assert_int_equal(config_setting_line(cfg, "no_such_setting"), 0);
	config_unref(&cfg);
}

/* A TLS file that is missing, a directory, or not PEM: the error names the
 * config file, the line of the setting, the setting, the path and why. */
static void
test_tls_context_errors(void **state)
{
	char *junk = write_conf("junk.pem", "not a certificate\n");
	char *fakecert = write_conf("fake-cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n"
						     "-----END CERTIFICATE-----\n");
	char *enckey = write_conf("enc-key.pem", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
						 "-----END ENCRYPTED PRIVATE KEY-----\n");
	char *missing = xasprintf("%s/missing.pem", tmpdir);
	static const struct {
		const char *cert, *key; /* file names in tmpdir, or "." for the directory */
		const char *setting, *reason;
	} cases[] = {
		{ "missing.pem", "junk.pem", "tls_cert", "No such file or directory" },
		{ ".", "junk.pem", "tls_cert", "is a directory" },
		{ "junk.pem", "junk.pem", "tls_cert", "no PEM certificate" },
		{ "fake-cert.pem", "missing.pem", "tls_key", "No such file or directory" },
		{ "fake-cert.pem", "junk.pem", "tls_key", "no PEM private key" },
		{ "fake-cert.pem", "enc-key.pem", "tls_key", "encrypted" },
		{ "fake-cert.pem", "fake-cert.pem", "tls_key", "no PEM private key" },
		{ "fake-cert.pem", "enc-key.pem", "tls_cert", "not a valid PEM certificate" },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		/* the last case: the key is checked first once the cert is fine,
		 * so make the key good-looking but the cert unparsable */
		bool cert_parse = i == N_ELEMENTS(cases) - 1;
		char *keyfile = cert_parse ? write_conf("plain-key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n"
									"-----END PRIVATE KEY-----\n")
					   : xasprintf("%s/%s", tmpdir, cases[i].key);
		char *certfile = strcmp(cases[i].cert, ".") == 0 ? xstrdup(tmpdir)
								 : xasprintf("%s/%s", tmpdir, cases[i].cert);
		struct mx_config *cfg = load_ok(BASE_CONF "# tls\ntls_cert = \"%s\"\n\ntls_key = \"%s\"\n",
						certfile, keyfile);
		char *error = NULL;
		const char *path = strcmp(cases[i].setting, "tls_cert") == 0 ? certfile : keyfile;
		int line = strcmp(cases[i].setting, "tls_cert") == 0 ? BASE_LINES + 2 : BASE_LINES + 4;
		char *want = xasprintf("%s:%d: %s = \"%s\": ", cfg->path, line, cases[i].setting, path);

		assert_null(tls_server_ctx_from_config(cfg, &error));
		assert_non_null(error);
		if (strncmp(error, want, strlen(want)) != 0 || strstr(error, cases[i].reason) == NULL)
			fail_msg("case %zu: error \"%s\" does not start with \"%s\" and say \"%s\"", i,
				 error, want, cases[i].reason);
		free(want);
		free(error);
		free(certfile);
		free(keyfile);
		config_unref(&cfg);
	}
	unlink(junk);
	unlink(fakecert);
	unlink(enckey);
	free(junk);
	free(fakecert);
	free(enckey);
	free(missing);
	char *plain = xasprintf("%s/plain-key.pem", tmpdir);
	unlink(plain);
	free(plain);
}

/* Many more sections than the loader ever had fixed room for: every one is
 * accepted and keeps its own values. */
static cfg_opt_t many_opts[] = {
	CFG_INT("n", 0, CFGF_NONE),
	CFG_END()
};

static void
test_many_sections(void **state)
{
	enum { N_MANY = 20 };
	char *text = xstrdup(BASE_CONF);
	char names[N_MANY][16];

	for (int i = 0; i < N_MANY; i++) {
		snprintf(names[i], sizeof(names[i]), "many%d", i);
		config_register_section(names[i], many_opts);
		char *more = xasprintf("%s%s {\n\tn = %d\n}\n", text, names[i], i + 100);
		free(text);
		text = more;
	}
	/* loaded twice: the second load builds its option tree again */
	for (int k = 0; k < 2; k++) {
		struct mx_config *cfg = load_ok("%s", text);
		for (int i = 0; i < N_MANY; i++)
			assert_int_equal(cfg_getint(cfg_getsec(cfg->cfg, names[i]), "n"), i + 100);
		config_unref(&cfg);
	}
	/* an error in the last one still carries its line */
	char *bad = xasprintf("%s%s {\n\tbogus = 1\n}\n", text, names[N_MANY - 1]);
	load_fail_free(BASE_LINES + 3 * N_MANY + 2, "bogus", bad);
	free(bad);
	free(text);
}

/* A section registered by a stage before the load is accepted and
 * readable; re-registering a name replaces its options. */
static cfg_opt_t teststage_opts[] = {
	CFG_INT("depth", 3, CFGF_NONE),
	CFG_STR("mode", "fast", CFGF_NONE),
	CFG_END()
};
static cfg_opt_t teststage_opts2[] = {
	CFG_INT("width", 5, CFGF_NONE),
	CFG_END()
};

static void
test_registered_section(void **state)
{
	struct mx_config *cfg;
	cfg_t *sec;

	/* a stage nobody registered cannot be listed */
	load_fail_free(BASE_LINES + 2, "teststage",
		       BASE_CONF "pipeline {\n\tstages = {\"teststage\"}\n}\n");
	/* unknown before it is registered */
	load_fail_free(BASE_LINES + 1, "teststage", BASE_CONF "teststage {\n\tdepth = 7\n}\n");

	config_register_section("teststage", teststage_opts);
	cfg = load_ok(BASE_CONF "pipeline {\n\tstages = {\"teststage\"}\n}\n"
				"teststage {\n\tdepth = 7\n}\n");
	sec = cfg_getsec(cfg->cfg, "teststage");
	assert_non_null(sec);
	assert_int_equal(cfg_getint(sec, "depth"), 7);
	assert_string_equal(cfg_getstr(sec, "mode"), "fast");
	assert_int_equal(cfg->pipeline.n_stages, 1);
	assert_string_equal(cfg->pipeline.stages[0], "teststage");
	assert_null(cfg->pipeline.stages[1]);
	config_unref(&cfg);
	/* listed twice */
	load_fail_free(BASE_LINES + 2, "twice",
		       BASE_CONF "pipeline {\n\tstages = {\"teststage\", \"teststage\"}\n}\n");

	/* left out: the section's defaults */
	cfg = load_ok(BASE_CONF);
	sec = cfg_getsec(cfg->cfg, "teststage");
	assert_non_null(sec);
	assert_int_equal(cfg_getint(sec, "depth"), 3);
	config_unref(&cfg);

	/* its own errors carry file:line */
	load_fail_free(BASE_LINES + 3, "bogus",
		       BASE_CONF "teststage {\n\tdepth = 7\n\tbogus = 1\n}\n");

	/* registered again under the same name: the new options replace the old */
	config_register_section("teststage", teststage_opts2);
	cfg = load_ok(BASE_CONF "teststage {\n\twidth = 9\n}\n");
	assert_int_equal(cfg_getint(cfg_getsec(cfg->cfg, "teststage"), "width"), 9);
	config_unref(&cfg);
	load_fail_free(BASE_LINES + 2, "depth", BASE_CONF "teststage {\n\tdepth = 7\n}\n");
	config_register_section("teststage", teststage_opts);
}

static void
test_refcount(void **state)
{
	struct mx_config *cfg = load_ok(BASE_CONF "hostname = \"ref.example\"\n");
	struct mx_config *second;

	assert_int_equal(cfg->refcount, 1);
	second = config_ref(cfg);
	assert_ptr_equal(second, cfg);
	assert_int_equal(cfg->refcount, 2);
	config_unref(&second);
	assert_null(second);
	/* still alive for the other holder */
	assert_int_equal(cfg->refcount, 1);
	assert_string_equal(cfg->hostname, "ref.example");
	config_unref(&cfg);
	assert_null(cfg);
	/* unref of NULL is harmless */
	config_unref(&cfg);
	assert_null(cfg);
}

/* Every row of the settings table is documented in doc/mxguard.conf.5 and
 * shown in etc/mxguard.conf; in the man page each setting has an entry
 * (".TP" then ".B name") that states its default and, for bounded
 * integers, both bounds. A new setting without docs fails here. */
static void
test_docs_cover_settings(void **state)
{
	char *man_path = src_path("doc/mxguard.conf.5");
	char *conf_path = src_path("etc/mxguard.conf");
	char *man = read_whole_file(man_path);
	char *conf = read_whole_file(conf_path);

	for (size_t i = 0; i < settings_table_count; i++) {
		const struct setting_def *s = &settings_table[i];
		char *head = xasprintf("\n.TP\n.B %s\n", s->name);
		const char *entry, *end;
		char *para;

		if (!has_word(man, s->name))
			fail_msg("doc/mxguard.conf.5 does not mention setting %s", s->name);
		if (!has_word(conf, s->name))
			fail_msg("etc/mxguard.conf does not mention setting %s", s->name);
		if (s->section != NULL && !has_word(man, s->section))
			fail_msg("doc/mxguard.conf.5 does not mention section %s", s->section);
		if (s->section != NULL && !has_word(conf, s->section))
			fail_msg("etc/mxguard.conf does not mention section %s", s->section);

		entry = strstr(man, head);
		if (entry == NULL)
			fail_msg("doc/mxguard.conf.5 has no entry \".TP\\n.B %s\"", s->name);
		if (strstr(entry + 1, head) != NULL)
			fail_msg("doc/mxguard.conf.5 has two entries \".TP\\n.B %s\"", s->name);
		entry += strlen(head);
		end = entry;
		while ((end = strchr(end, '\n')) != NULL) {
			end++;
			if (strncmp(end, ".TP", 3) == 0 || strncmp(end, ".SS", 3) == 0 ||
			    strncmp(end, ".SH", 3) == 0)
				break;
		}
		para = end != NULL ? xstrndup(entry, (size_t)(end - entry)) : xstrdup(entry);
		if (strstr(para, "efault") == NULL || strstr(para, s->def[0] ? s->def : "\"\"") == NULL)
			fail_msg("doc/mxguard.conf.5: entry %s does not state its default %s", s->name,
				 s->def[0] ? s->def : "\"\"");
		if (s->type == SETTING_INT && (s->min != 0 || s->max != 0)) {
			char *lo = xasprintf("%ld", s->min), *hi = xasprintf("%ld", s->max);
			if (!has_word(para, lo) || !has_word(para, hi))
				fail_msg("doc/mxguard.conf.5: entry %s does not state its bounds %s..%s",
					 s->name, lo, hi);
			free(lo);
			free(hi);
		}
		free(para);
		free(head);
	}
	free(man);
	free(conf);
	free(man_path);
	free(conf_path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shipped_config),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_listen_defaults),
		cmocka_unit_test(test_int_bounds),
		cmocka_unit_test(test_int_not_a_number),
		cmocka_unit_test(test_bad_choices),
		cmocka_unit_test(test_unknown_option),
		cmocka_unit_test(test_syntax_and_file_errors),
		cmocka_unit_test(test_comments),
		cmocka_unit_test(test_required_and_consistency),
		cmocka_unit_test(test_relative_paths),
		cmocka_unit_test(test_local_domains),
		cmocka_unit_test(test_several_listeners),
		cmocka_unit_test(test_listener_overlap),
		cmocka_unit_test(test_setting_lines),
		cmocka_unit_test(test_tls_context_errors),
		cmocka_unit_test(test_registered_section),
		cmocka_unit_test(test_many_sections),
		cmocka_unit_test(test_refcount),
		cmocka_unit_test(test_docs_cover_settings),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
