/*
 * registry.c — where stages are found by name.
 *
 * The built-in stages sit in one const table: adding a stage is one new
 * file in filters/ and one line here. Tests (and nothing else) add stages of
 * their own at run time with filters_register_stage(); a runtime stage with
 * the name of a built-in one shadows it, and re-registering a name replaces
 * the earlier entry.
 *
 * filters_register_config() gives every known stage its config section:
 * the stage's own options plus the two every stage has —
 *   on_error = "accept" | "tempfail"   (default: the stage's own choice)
 *   timeout  = milliseconds            (0 = pipeline.stage_timeout)
 * The merged option arrays are handed to the config loader by reference, so
 * they are kept for the life of the process; calling it again reuses the
 * array of a stage that did not change, which makes it idempotent.
 *
 * It also registers the filters' settings module: the pipeline section
 * (stages, the score thresholds, stage_timeout).
 *
 * Registration happens at start-up, before any loop thread runs, so the
 * registry takes no locks.
 */
#include "config.h"

#include <confuse.h>
#include <stdlib.h>
#include <string.h>

#include "filters/filters.h"

/* The built-in stages, one line each: &<name>_stage_ops, declared in
 * filters.h and defined in filters/<name>.c. */
extern const struct stage_ops rules_stage_ops;
extern const struct stage_ops clamav_stage_ops;
extern const struct stage_ops ratelimit_stage_ops;
extern const struct stage_ops dnsbl_stage_ops;
extern const struct stage_ops auth_stage_ops;
extern const struct stage_ops format_stage_ops;
extern const struct stage_ops bayes_stage_ops;

static const struct stage_ops *const stage_table[] = {
	&rules_stage_ops,
	&clamav_stage_ops,
	&ratelimit_stage_ops,
	&dnsbl_stage_ops,
	&auth_stage_ops,
	&format_stage_ops,
	&bayes_stage_ops,
	NULL /* end of table */
};

/* Stages registered at run time (tests). */
static const struct stage_ops **runtime_stages;
static size_t n_runtime_stages;

/* Merged section options already handed to the config loader. */
struct registry_section {
	const struct stage_ops *ops;
	cfg_opt_t *opts;
};
static struct registry_section *registry_sections;
static size_t n_registry_sections;

const struct stage_ops *filters_find_stage(const char *name)
{
	if (name == NULL)
		return NULL;
	for (size_t i = 0; i < n_runtime_stages; i++) {
		if (strcmp(runtime_stages[i]->name, name) == 0)
			return runtime_stages[i];
	}
	for (size_t i = 0; stage_table[i] != NULL; i++) {
		if (strcmp(stage_table[i]->name, name) == 0)
			return stage_table[i];
	}
	return NULL;
}

void filters_register_stage(const struct stage_ops *ops)
{
	for (size_t i = 0; i < n_runtime_stages; i++) {
		if (strcmp(runtime_stages[i]->name, ops->name) == 0) {
			runtime_stages[i] = ops;
			return;
		}
	}
	runtime_stages = xrealloc(runtime_stages,
				  (n_runtime_stages + 1) * sizeof(*runtime_stages));
	runtime_stages[n_runtime_stages++] = ops;
}

static bool registry_is_common_opt(const char *name)
{
	return strcmp(name, "on_error") == 0 || strcmp(name, "timeout") == 0;
}

/* The stage's own options followed by the common ones, CFG_END-terminated.
 * The stage's option structs are copied shallowly: libconfuse copies the
 * whole array again in cfg_init(), so nothing here is ever written to. */
static cfg_opt_t *registry_build_opts(const struct stage_ops *ops)
{
	size_t n_own = 0, n = 0;
	cfg_opt_t *opts;

	if (ops->opts != NULL) {
		while (ops->opts[n_own].name != NULL)
			n_own++;
	}
	opts = xcalloc(n_own + 3, sizeof(*opts));
	for (size_t i = 0; i < n_own; i++) {
		/* the common options are the registry's to define */
		if (!registry_is_common_opt(ops->opts[i].name))
			opts[n++] = ops->opts[i];
	}
	opts[n++] = (cfg_opt_t)CFG_STR("on_error",
				       ops->default_on_error == ON_ERROR_TEMPFAIL ?
				       "tempfail" : "accept", CFGF_NONE);
	opts[n++] = (cfg_opt_t)CFG_INT("timeout", 0, CFGF_NONE);
	opts[n] = (cfg_opt_t)CFG_END();
	return opts;
}

static void registry_register_section(const struct stage_ops *ops)
{
	cfg_opt_t *opts = NULL;

	for (size_t i = 0; i < n_registry_sections; i++) {
		if (registry_sections[i].ops == ops) {
			opts = registry_sections[i].opts;
			break;
		}
	}
	if (opts == NULL) {
		opts = registry_build_opts(ops);
		registry_sections = xrealloc(registry_sections,
					     (n_registry_sections + 1) * sizeof(*registry_sections));
		registry_sections[n_registry_sections++] =
			(struct registry_section){ .ops = ops, .opts = opts };
	}
	config_register_section(ops->name, opts);
}

/* While parsing: every stage one that exists, none listed twice. */
static char *registry_valid_stages(const char *const *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (filters_find_stage(v[i]) == NULL)
			return xasprintf("pipeline.stages: unknown stage '%s'", v[i]);
		for (size_t j = 0; j < i; j++) {
			if (strcmp(v[j], v[i]) == 0)
				return xasprintf("pipeline.stages: stage '%s' listed twice", v[i]);
		}
	}
	return NULL;
}

#define OFF(field) offsetof(struct pipeline_settings, field)

static const struct setting_def pipeline_rows[] = {
	{ "pipeline", "stages", SETTING_STRLIST, "{}", 0, 0, OFF(stages), 0,
	  "filter stages in the order they run; each has a section named after it",
	  .valid = registry_valid_stages },
	{ "pipeline", "tag_score", SETTING_FLOAT, "5.0", 0, 0, OFF(tag_score), 0,
	  "score at which mail is tagged (X-Spam-Flag: YES)", NULL, NULL },
	{ "pipeline", "junk_score", SETTING_FLOAT, "8.0", 0, 0, OFF(junk_score), 0,
	  "score at which mail goes to the junk folder", NULL, NULL },
	{ "pipeline", "quarantine_score", SETTING_FLOAT, "0.0", 0, 0, OFF(quarantine_score), 0,
	  "score at which mail is held in quarantine_dir (0 = never)", NULL, NULL },
	{ "pipeline", "reject_score", SETTING_FLOAT, "15.0", 0, 0, OFF(reject_score), 0,
	  "score at which mail is refused (550 5.7.1)", NULL, NULL },
	{ "pipeline", "stage_timeout", SETTING_INT, "30000", 10, 600000, OFF(stage_timeout), 0,
	  "default time limit of one stage check in milliseconds", NULL, NULL },
};

static int registry_settings_check(void *values, const struct mx_config *cfg, char **error_r)
{
	const struct pipeline_settings *ps = values;

	if (!(ps->tag_score <= ps->junk_score && ps->junk_score <= ps->reject_score) ||
	    (ps->quarantine_score != 0 && !(ps->junk_score <= ps->quarantine_score &&
					    ps->quarantine_score <= ps->reject_score))) {
		*error_r = xasprintf("%s: pipeline: need tag_score <= junk_score <= reject_score "
				     "(and junk_score <= quarantine_score <= reject_score when set)",
				     cfg->path);
		return -1;
	}
	return 0;
}

static const struct settings_module pipeline_module = {
	.name = "filters",
	.rows = pipeline_rows,
	.n_rows = N_ELEMENTS(pipeline_rows),
	.size = sizeof(struct pipeline_settings),
	.check = registry_settings_check,
};

const struct pipeline_settings *pipeline_settings(const struct mx_config *cfg)
{
	return config_module_values(cfg, &pipeline_module);
}

void filters_register_config(void)
{
	config_register_module(&pipeline_module);
	for (size_t i = 0; stage_table[i] != NULL; i++) {
		/* shadowed by a runtime stage: that one is registered below */
		if (filters_find_stage(stage_table[i]->name) == stage_table[i])
			registry_register_section(stage_table[i]);
	}
	for (size_t i = 0; i < n_runtime_stages; i++)
		registry_register_section(runtime_stages[i]);
}
