/*
 * config.c — the generic settings machinery and the config loader.
 *
 * Nothing here knows an application setting. Every folder registers a
 * settings module (config_register_module): a table of rows — section,
 * name, type, default, bounds, choices or a value check, where the value
 * lands in the module's own struct, one line of documentation — and an
 * optional cross-check. At each load the libconfuse option arrays are built
 * from every registered row; bounds, choices and the rows' own checks run
 * while parsing, so errors carry file:line; then the values land in one
 * block per module and the modules' checks run. `mxguard --settings`
 * prints the rows (config_print_settings) and the docs are tested against
 * them.
 *
 * Stages register the options of their own sections before a load
 * (config_register_section); they read those sections from cfg->cfg.
 * A loaded config is immutable and reference-counted: a reload builds a new
 * one aside and swaps it in.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <confuse.h>

#include "lib/lib.h"

/* ------------------------------------------------------------ registry */

static const struct settings_module **modules;
static size_t n_modules;

static bool
same_section(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* The module that declares section as its multi section, or NULL. */
static const struct settings_module *
multi_owner(const char *section)
{
	for (size_t i = 0; section != NULL && i < n_modules; i++) {
		if (modules[i]->multi != NULL && strcmp(modules[i]->multi->section, section) == 0)
			return modules[i];
	}
	return NULL;
}

static ATTR_NORETURN void
config_register_abort(const struct settings_module *m, const char *section, const char *name,
		      const char *why)
{
	fprintf(stderr, "settings module %s: %s%s%s: %s\n", m->name, section ? section : "",
		section ? "." : "", name, why);
	abort();
}

void
config_register_module(const struct settings_module *m)
{
	for (size_t i = 0; i < n_modules; i++) {
		if (modules[i] == m)
			return;
	}
	for (size_t r = 0; r < m->n_rows; r++) {
		const struct setting_def *s = &m->rows[r];
		if (multi_owner(s->section) != NULL)
			config_register_abort(m, s->section, s->name,
					      "rows of a multi section belong to the module that declares it");
		if (s->type == SETTING_CHOICE && (s->choices == NULL || s->choices[0] == NULL))
			config_register_abort(m, s->section, s->name, "a choice without choices");
		for (size_t i = 0; i < n_modules; i++) {
			for (size_t k = 0; k < modules[i]->n_rows; k++) {
				const struct setting_def *o = &modules[i]->rows[k];
				if (same_section(o->section, s->section) && strcmp(o->name, s->name) == 0)
					config_register_abort(m, s->section, s->name, "registered twice");
				if (m->multi != NULL && same_section(o->section, m->multi->section))
					config_register_abort(m, o->section, o->name,
							      "another module has rows in this multi section");
			}
		}
	}
	modules = xrealloc(modules, (n_modules + 1) * sizeof(*modules));
	modules[n_modules++] = m;
}

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

/* -------------------------------------------------------- the row list */

/* Every row of the registered modules, in --settings order: the top
 * level, then each section in the order it first appears. */
struct row_list {
	const struct setting_def **rows;
	const struct settings_module **mods;
	size_t n;
	const char **sections; /* distinct non-NULL sections, in order */
	size_t n_sections;
};

static void
row_list_build(struct row_list *rl)
{
	size_t total = 0;

	memset(rl, 0, sizeof(*rl));
	for (size_t i = 0; i < n_modules; i++)
		total += modules[i]->n_rows;
	rl->rows = xcalloc(total + 1, sizeof(*rl->rows));
	rl->mods = xcalloc(total + 1, sizeof(*rl->mods));
	rl->sections = xcalloc(total + 1, sizeof(*rl->sections));
	for (size_t i = 0; i < n_modules; i++) {
		for (size_t r = 0; r < modules[i]->n_rows; r++) {
			const char *sec = modules[i]->rows[r].section;
			bool seen = false;
			for (size_t k = 0; sec != NULL && k < rl->n_sections; k++)
				seen = seen || strcmp(rl->sections[k], sec) == 0;
			if (sec != NULL && !seen)
				rl->sections[rl->n_sections++] = sec;
		}
	}
	for (size_t k = 0; k <= rl->n_sections; k++) {
		const char *sec = k == 0 ? NULL : rl->sections[k - 1];
		for (size_t i = 0; i < n_modules; i++) {
			for (size_t r = 0; r < modules[i]->n_rows; r++) {
				if (!same_section(modules[i]->rows[r].section, sec))
					continue;
				rl->rows[rl->n] = &modules[i]->rows[r];
				rl->mods[rl->n] = modules[i];
				rl->n++;
			}
		}
	}
}

static void
row_list_free(struct row_list *rl)
{
	free(rl->rows);
	free(rl->mods);
	free(rl->sections);
	memset(rl, 0, sizeof(*rl));
}

static long
row_find(const struct row_list *rl, const char *section, const char *name)
{
	for (size_t i = 0; i < rl->n; i++) {
		if (same_section(rl->rows[i]->section, section) && strcmp(rl->rows[i]->name, name) == 0)
			return (long)i;
	}
	return -1;
}

const struct setting_def **
config_settings(size_t *n_r, const struct settings_module ***module_r)
{
	struct row_list rl;

	row_list_build(&rl);
	*n_r = rl.n;
	if (module_r != NULL)
		*module_r = rl.mods;
	else
		free(rl.mods);
	free(rl.sections);
	return rl.rows;
}

/* A stage section's options for --settings: "stage.option", and the
 * options of a section inside it (dnsbl's "list NAME { }") as
 * "stage.list.option". */
static void
config_print_section_opts(FILE *f, const char *prefix, const cfg_opt_t *opts)
{
	for (const cfg_opt_t *o = opts; o != NULL && o->name != NULL; o++) {
		char name[96], def[64];
		const char *type = "?";
		if (o->type == CFGT_SEC) {
			snprintf(name, sizeof(name), "%s.%s", prefix, o->name);
			config_print_section_opts(f, name, o->subopts);
			continue;
		}
		if (o->flags & CFGF_LIST) {
			type = "list";
			snprintf(def, sizeof(def), "%s", o->def.parsed != NULL ? o->def.parsed : "{}");
		} else if (o->type == CFGT_INT) {
			type = "int";
			snprintf(def, sizeof(def), "%ld", o->def.number);
		} else if (o->type == CFGT_FLOAT) {
			type = "float";
			snprintf(def, sizeof(def), "%g", o->def.fpnumber);
		} else if (o->type == CFGT_BOOL) {
			type = "bool";
			snprintf(def, sizeof(def), "%s", o->def.boolean ? "true" : "false");
		} else if (o->type == CFGT_STR) {
			type = "string";
			snprintf(def, sizeof(def), "%s",
				 o->def.string != NULL && o->def.string[0] ? o->def.string : "\"\"");
		} else {
			continue;
		}
		snprintf(name, sizeof(name), "%s.%s", prefix, o->name);
		fprintf(f, "%-32s %-6s default=%s  # stage option: mxguard.conf(5), STAGE SECTIONS\n",
			name, type, def);
	}
}

void
config_print_settings(FILE *f)
{
	static const char *const types[] = {
		[SETTING_INT] = "int", [SETTING_STR] = "string", [SETTING_BOOL] = "bool",
		[SETTING_FLOAT] = "float", [SETTING_STRLIST] = "list", [SETTING_CHOICE] = "string",
	};
	size_t n;
	const struct setting_def **rows = config_settings(&n, NULL);

	for (size_t i = 0; i < n; i++) {
		const struct setting_def *s = rows[i];
		char name[96];

		snprintf(name, sizeof(name), "%s%s%s", s->section ? s->section : "",
			 s->section ? "." : "", s->name);
		fprintf(f, "%-32s %-6s default=%s", name, types[s->type], s->def[0] ? s->def : "\"\"");
		if (s->min != 0 || s->max != 0)
			fprintf(f, " min=%ld max=%ld", s->min, s->max);
		fprintf(f, "  # %s\n", s->doc);
	}
	free(rows);
	/* the stages' own sections (config_register_section): their options,
	 * documented in mxguard.conf(5) under STAGE SECTIONS */
	for (size_t i = 0; i < n_registered; i++)
		config_print_section_opts(f, registered[i].name, registered[i].opts);
}

/* ------------------------------------------------------------- parsing */

/* What one load collects while libconfuse parses: the rows, the first
 * error with its file and line, and the line each setting was set on. */
struct config_errors {
	const struct row_list *rl;
	char *first;
	cfg_t *root;
	const char *path;
	int *lines; /* rl->n entries, 0 = left at its default (multi rows: unused) */
	/* the line of each multi section's line_row (cfg_t->line of a section
	 * is where it ends once parsed) */
	struct { cfg_t *sec; int line; } *multi_lines;
	size_t n_multi_lines;
};
static __thread struct config_errors *current_errors;

static const char *
cfg_section_name(cfg_t *cfg)
{
	return strcmp(cfg->name, "root") == 0 ? NULL : cfg->name;
}

/* Bounds of an integer row. */
static int
config_validate_int(cfg_t *cfg, cfg_opt_t *opt, const struct setting_def *s)
{
	const char *section = cfg_section_name(cfg);
	long v = cfg_opt_getnint(opt, cfg_opt_size(opt) - 1);

	if (s->min == 0 && s->max == 0)
		return 0;
	if (v < s->min || v > s->max) {
		cfg_error(cfg, "%s%s%s = %ld is out of range [%ld, %ld]",
			  section ? section : "", section ? "." : "", opt->name, v, s->min, s->max);
		return -1;
	}
	return 0;
}

static int
choice_index(const struct setting_def *s, const char *v)
{
	for (int i = 0; v != NULL && s->choices[i] != NULL; i++) {
		if ((s->flags & SETTING_F_ANYCASE) ? strcasecmp(v, s->choices[i]) == 0
						   : strcmp(v, s->choices[i]) == 0)
			return i;
	}
	return -1;
}

/* "expected a, b or c" */
static int
config_validate_choice(cfg_t *cfg, cfg_opt_t *opt, const struct setting_def *s)
{
	const char *v = cfg_opt_getnstr(opt, cfg_opt_size(opt) - 1);
	char words[512] = "";
	size_t n = 0;

	if (choice_index(s, v) >= 0)
		return 0;
	while (s->choices[n] != NULL)
		n++;
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(words);
		snprintf(words + len, sizeof(words) - len, "%s%s",
			 i == 0 ? "" : i + 1 == n ? " or " : ", ", s->choices[i]);
	}
	cfg_error(cfg, "%s = \"%s\": expected %s", opt->name, v ? v : "", words);
	return -1;
}

/* The row's own check over the value (a STR) or every item (a STRLIST). */
static int
config_validate_values(cfg_t *cfg, cfg_opt_t *opt, const struct setting_def *s)
{
	unsigned n = cfg_opt_size(opt);
	const char **values;
	char *msg;

	if (s->valid == NULL || n == 0)
		return 0;
	values = xcalloc(n + 1, sizeof(*values));
	if (opt->flags & CFGF_LIST) {
		for (unsigned i = 0; i < n; i++)
			values[i] = cfg_opt_getnstr(opt, i);
	} else {
		values[0] = cfg_opt_getnstr(opt, n - 1);
		n = 1;
	}
	msg = s->valid(values, n);
	free(values);
	if (msg == NULL)
		return 0;
	cfg_error(cfg, "%s", msg);
	free(msg);
	return -1;
}

/* Every value of a row passes here while it is parsed (cfg->line is then
 * the value's line): remember where it was set, and check it. */
static int
config_validate(cfg_t *cfg, cfg_opt_t *opt)
{
	struct config_errors *e = current_errors;
	const char *section = cfg_section_name(cfg);
	long idx;
	const struct setting_def *s;

	if (e == NULL || e->rl == NULL || (idx = row_find(e->rl, section, opt->name)) < 0)
		return 0;
	s = e->rl->rows[idx];
	if (multi_owner(section) == NULL) {
		if (e->lines != NULL)
			e->lines[idx] = cfg->line;
	} else if (strcmp(multi_owner(section)->multi->line_row, opt->name) == 0) {
		e->multi_lines = xrealloc(e->multi_lines, (e->n_multi_lines + 1) * sizeof(*e->multi_lines));
		e->multi_lines[e->n_multi_lines].sec = cfg;
		e->multi_lines[e->n_multi_lines].line = cfg->line;
		e->n_multi_lines++;
	}
	switch (s->type) {
	case SETTING_INT:
		return config_validate_int(cfg, opt, s);
	case SETTING_CHOICE:
		return config_validate_choice(cfg, opt, s);
	case SETTING_STR:
	case SETTING_STRLIST:
		return config_validate_values(cfg, opt, s);
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
	case SETTING_CHOICE:
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
 * top level and one per section, however many there are. */
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
config_build_section_opts(const struct row_list *rl, const char *section, size_t extra,
			  struct opt_arrays *keep)
{
	size_t n = 0;
	cfg_opt_t *opts = xcalloc(rl->n + extra + 1, sizeof(*opts));
	cfg_opt_t end = CFG_END();

	for (size_t i = 0; i < rl->n; i++) {
		if (same_section(rl->rows[i]->section, section))
			opts[n++] = config_make_opt(rl->rows[i]);
	}
	opts[n] = end;
	opt_arrays_add(keep, opts);
	return opts;
}

static cfg_opt_t *
config_build_opts(const struct row_list *rl, struct opt_arrays *keep)
{
	cfg_opt_t *top = config_build_section_opts(rl, NULL, rl->n_sections + n_registered, keep);
	size_t n = 0;
	cfg_opt_t end = CFG_END();

	while (top[n].type != CFGT_NONE)
		n++;
	for (size_t i = 0; i < rl->n_sections; i++) {
		const char *name = rl->sections[i];
		cfg_opt_t *sub = config_build_section_opts(rl, name, 0, keep);
		int flags = multi_owner(name) != NULL ? CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES
						      : CFGF_NONE;
		top[n++] = (cfg_opt_t)CFG_SEC(name, sub, flags);
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


/* ------------------------------------------------------------- storing */

/* Copy one row's value from the parsed section into its struct. */
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
	case SETTING_CHOICE: {
		int i = choice_index(s, cfg_getstr(sec, s->name));
		*(int *)(void *)field = i < 0 ? 0 : i; /* < 0 only for a bad default */
		break;
	}
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
config_unstore(const struct setting_def *s, void *base)
{
	char *field = (char *)base + s->offset;

	if (s->type == SETTING_STR) {
		free(*(char **)(void *)field);
	} else if (s->type == SETTING_STRLIST) {
		char **list = *(char ***)(void *)field;
		for (size_t j = 0; list != NULL && list[j] != NULL; j++)
			free(list[j]);
		free(list);
	}
}

/* The option arrays must outlive c->cfg; they hang off the config, as do
 * the value blocks of the modules registered when it was loaded and the
 * lines the settings were read from. */
struct config_private {
	struct mx_config pub;
	struct opt_arrays *keep;
	struct row_list rl;
	int *lines; /* per rl row; 0 = default */
	const struct settings_module **mods;
	void **values; /* one block per mods[i]; NULL until stored */
	size_t n_mods;
};

/*
 * libconfuse's scanner is flex's, with global state: cfg_init (which parses
 * list defaults), cfg_parse_buf and cfg_free (which tears the scanner down)
 * must never run at the same time on two threads. They do: a reload parses
 * on the main thread while a loop thread drops the last reference to an
 * old config. One lock around each of them.
 */
static pthread_mutex_t confuse_lock = PTHREAD_MUTEX_INITIALIZER;

/* Element i of module m's multi section. */
static void *
multi_element(const struct settings_module *m, void *values, size_t i)
{
	char *array = *(char **)(void *)((char *)values + m->multi->array_offset);
	return array + i * m->multi->size;
}

static size_t *
multi_count(const struct settings_module *m, void *values)
{
	return (size_t *)(void *)((char *)values + m->multi->array_offset + sizeof(void *));
}

static void
config_free_values(const struct settings_module *m, void *values)
{
	if (values == NULL)
		return;
	for (size_t r = 0; r < m->n_rows; r++) {
		if (m->multi == NULL || !same_section(m->rows[r].section, m->multi->section))
			config_unstore(&m->rows[r], values);
	}
	if (m->multi != NULL) {
		for (size_t i = 0; i < *multi_count(m, values); i++) {
			char *el = multi_element(m, values, i);
			free(*(char **)(void *)(el + m->multi->title_offset));
			for (size_t r = 0; r < m->n_rows; r++) {
				if (same_section(m->rows[r].section, m->multi->section))
					config_unstore(&m->rows[r], el);
			}
		}
		free(*(void **)(void *)((char *)values + m->multi->array_offset));
	}
	free(values);
}

static void
config_free(struct config_private *priv)
{
	struct mx_config *c = &priv->pub;
	struct opt_arrays *keep = priv->keep;

	for (size_t i = 0; i < priv->n_mods; i++)
		config_free_values(priv->mods[i], priv->values[i]);
	free(priv->mods);
	free(priv->values);
	free(c->path);
	if (c->cfg != NULL) {
		pthread_mutex_lock(&confuse_lock);
		cfg_free(c->cfg);
		pthread_mutex_unlock(&confuse_lock);
	}
	if (keep != NULL) {
		for (size_t i = 0; i < keep->n; i++)
			free(keep->arrays[i]);
		free(keep->arrays);
		free(keep);
	}
	row_list_free(&priv->rl);
	free(priv->lines);
	free(priv);
}

int
config_setting_line(const struct mx_config *cfg, const char *name)
{
	const struct config_private *priv = (const struct config_private *)(const void *)cfg;
	long i = row_find(&priv->rl, NULL, name);

	return i >= 0 && priv->lines != NULL ? priv->lines[i] : 0;
}

void *
config_module_values(const struct mx_config *cfg, const struct settings_module *m)
{
	const struct config_private *priv = (const struct config_private *)(const void *)cfg;

	for (size_t i = 0; i < priv->n_mods; i++) {
		if (priv->mods[i] == m)
			return priv->values[i];
	}
	fprintf(stderr, "settings module %s was not registered before %s was loaded\n", m->name,
		cfg->path);
	abort();
}

/* Module m's values from the parsed tree: its plain rows, then one
 * element per multi section in the file. */
static void *
config_store_module(const struct settings_module *m, cfg_t *root, const struct config_errors *errs)
{
	void *values = xcalloc(1, m->size);

	for (size_t r = 0; r < m->n_rows; r++) {
		const struct setting_def *s = &m->rows[r];
		if (m->multi != NULL && same_section(s->section, m->multi->section))
			continue;
		config_store(s, s->section == NULL ? root : cfg_getsec(root, s->section), values);
	}
	if (m->multi != NULL) {
		size_t n = cfg_size(root, m->multi->section);
		*(void **)(void *)((char *)values + m->multi->array_offset) = xcalloc(n + 1, m->multi->size);
		*multi_count(m, values) = n;
		for (size_t i = 0; i < n; i++) {
			cfg_t *sec = cfg_getnsec(root, m->multi->section, (unsigned)i);
			char *el = multi_element(m, values, i);
			int line = sec->line;

			*(char **)(void *)(el + m->multi->title_offset) = xstrdup(cfg_title(sec));
			for (size_t r = 0; r < m->n_rows; r++) {
				if (same_section(m->rows[r].section, m->multi->section))
					config_store(&m->rows[r], sec, el);
			}
			for (size_t j = 0; j < errs->n_multi_lines; j++) {
				if (errs->multi_lines[j].sec == sec)
					line = errs->multi_lines[j].line;
			}
			*(int *)(void *)(el + m->multi->line_offset) = line;
		}
	}
	return values;
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
	row_list_build(&priv->rl);
	priv->lines = xcalloc(priv->rl.n + 1, sizeof(*priv->lines));
	priv->n_mods = n_modules;
	priv->mods = xcalloc(n_modules + 1, sizeof(*priv->mods));
	memcpy(priv->mods, modules, n_modules * sizeof(*modules));
	priv->values = xcalloc(n_modules + 1, sizeof(*priv->values));
	*cfg_r = NULL;
	*error_r = NULL;
	c->refcount = 1;
	c->path = xstrdup(path);

	errs.rl = &priv->rl;
	errs.path = path;
	pthread_mutex_lock(&confuse_lock);
	cfg = cfg_init(config_build_opts(&priv->rl, priv->keep), CFGF_NONE);
	pthread_mutex_unlock(&confuse_lock);
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
	errs.lines = priv->lines;
	current_errors = &errs;
	pthread_mutex_lock(&confuse_lock);
	ret = cfg_parse_buf(cfg, text);
	pthread_mutex_unlock(&confuse_lock);
	current_errors = NULL;
	free(text);
	if (ret != CFG_SUCCESS) {
		*error_r = errs.first != NULL ? errs.first : xasprintf("%s: parse error", path);
		goto fail;
	}
	free(errs.first);
	errs.first = NULL;

	for (size_t i = 0; i < priv->n_mods; i++)
		priv->values[i] = config_store_module(priv->mods[i], cfg, &errs);
	for (size_t i = 0; i < priv->n_mods; i++) {
		if (priv->mods[i]->check != NULL &&
		    priv->mods[i]->check(priv->values[i], c, error_r) < 0)
			goto fail;
	}
	free(errs.multi_lines);
	*cfg_r = c;
	return 0;
fail:
	free(errs.multi_lines);
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
