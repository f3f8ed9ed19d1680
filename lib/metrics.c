/*
 * metrics.c — the counters of lib/metrics.h: a static table of families,
 * each a fixed open-addressing hash table of label slots in static storage.
 *
 * A slot's label pointer is published (release) after the slot's value was
 * zeroed and its label copied, and read with acquire, so a reader that sees
 * the label sees a valid slot. Slots are claimed under one mutex (only the
 * first use of a label value), never freed while the process runs. The
 * table of a family with max labels has a power of two >= 2*max slots, so a
 * probe stays short; the extra slot at the end is "_other", where values go
 * once max labels are in use.
 */
#include "config.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/lib.h"
#include "lib/metrics.h"

enum metric_type { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM };

static const double stage_buckets[] = { METRICS_STAGE_BUCKETS };
#define N_BUCKETS (sizeof(stage_buckets) / sizeof(stage_buckets[0]))

struct metric_slot {
	_Atomic(const char *) label;  /* NULL: free */
	atomic_int_fast64_t value;    /* counter/gauge value, histogram count */
	atomic_uint_fast64_t sum_us;  /* histogram */
	atomic_uint_fast64_t bucket[N_BUCKETS]; /* histogram, not cumulative */
};

struct metric_family {
	const char *name;
	enum metric_type type;
	const char *label_name;      /* NULL: unlabelled (one slot) */
	size_t max_labels;
	size_t cap;                  /* hash slots (power of two); +1 for _other */
	const char *const *preset;   /* label values shown from the start */
	const char *help;
	struct metric_slot *slots;
	atomic_size_t n_labels;
};

static const char *const preset_result[] = { "ok", "failed", NULL };
static const char *const preset_verdict[] = { "deliver", "tag", "junk", "quarantine",
					      "discard", "reject", "tempfail", NULL };
static const char *const preset_refused[] = { "connections_max", "connections_per_client",
					      "shutdown", NULL };

/* name, type, label, max label values, hash slots (>= 2*max, power of two),
 * presets, help */
#define METRICS_TABLE(X) \
	X(START_TIME, "mxguard_start_time_seconds", MT_GAUGE, NULL, 1, 1, NULL, \
	  "Unix time the daemon started") \
	X(CONFIG_INFO, "mxguard_config_info", MT_GAUGE, "path", 4, 8, NULL, \
	  "1 for the configuration file the daemon runs with") \
	X(BUILD_INFO, "mxguard_build_info", MT_GAUGE, "version", 1, 2, NULL, \
	  "1, labelled with the version of this build") \
	X(CONFIG_RELOADS, "mxguard_config_reloads_total", MT_COUNTER, "result", 2, 4, preset_result, \
	  "Reloads (SIGHUP) by result; a failed one keeps the running configuration") \
	X(CONFIG_LOAD_TIME, "mxguard_config_load_time_seconds", MT_GAUGE, NULL, 1, 1, NULL, \
	  "Unix time the configuration in use was loaded") \
	X(CONNECTIONS_CURRENT, "mxguard_connections_current", MT_GAUGE, "service", 16, 32, NULL, \
	  "Connections open now, by service") \
	X(CONNECTIONS, "mxguard_connections_total", MT_COUNTER, "service", 16, 32, NULL, \
	  "Connections accepted, by service (refused ones included)") \
	X(CONNECTIONS_REFUSED, "mxguard_connections_refused_total", MT_COUNTER, "reason", 8, 16, \
	  preset_refused, "Connections refused before their service ran, by reason") \
	X(SMTP_TRANSACTIONS, "mxguard_smtp_transactions_total", MT_COUNTER, "verdict", 8, 16, \
	  preset_verdict, "SMTP transactions that reached the end of DATA, by action") \
	X(SMTP_BYTES_RECEIVED, "mxguard_smtp_received_bytes_total", MT_COUNTER, NULL, 1, 1, NULL, \
	  "Message octets received at DATA") \
	X(MESSAGES_DELIVERED, "mxguard_messages_delivered_total", MT_COUNTER, NULL, 1, 1, NULL, \
	  "Messages written to the Maildir store (one per message, not per copy)") \
	X(MESSAGES_RELAYED, "mxguard_messages_relayed_total", MT_COUNTER, NULL, 1, 1, NULL, \
	  "Messages an upstream accepted") \
	X(MESSAGES_QUARANTINED, "mxguard_messages_quarantined_total", MT_COUNTER, NULL, 1, 1, NULL, \
	  "Messages written to the quarantine") \
	X(STAGE_DURATION, "mxguard_stage_duration_seconds", MT_HISTOGRAM, "stage", 32, 64, NULL, \
	  "Time of one stage check (any phase), by stage") \
	X(STAGE_ERRORS, "mxguard_stage_errors_total", MT_COUNTER, "stage", 32, 64, NULL, \
	  "Stage checks that failed or timed out (their on_error applied), by stage") \
	X(RULE_HITS, "mxguard_rule_hits_total", MT_COUNTER, "rule", 1024, 2048, NULL, \
	  "Rule hits, by rule name") \
	X(RULES_LOAD_TIME, "mxguard_rules_load_time_seconds", MT_GAUGE, NULL, 1, 1, NULL, \
	  "Unix time the rule set in use was built") \
	X(RULES_COUNT, "mxguard_rules_count", MT_GAUGE, NULL, 1, 1, NULL, \
	  "Rules in the rule set in use") \
	X(CLAMAV_DB_VERSION, "mxguard_clamav_db_version", MT_GAUGE, NULL, 1, 1, NULL, \
	  "Version of the virus database in use (libclamav engine)") \
	X(CLAMAV_DB_SIGNATURES, "mxguard_clamav_db_signatures", MT_GAUGE, NULL, 1, 1, NULL, \
	  "Signatures in the virus database in use") \
	X(CLAMAV_DB_LOAD_TIME, "mxguard_clamav_db_load_time_seconds", MT_GAUGE, NULL, 1, 1, NULL, \
	  "Unix time the virus database in use was loaded") \
	X(DEPENDENCY_UP, "mxguard_dependency_up", MT_GAUGE, "dependency", 64, 128, NULL, \
	  "1 when the dependency answered last time, 0 when it failed") \
	X(DEPENDENCY_ERRORS, "mxguard_dependency_errors_total", MT_COUNTER, "dependency", 64, 128, \
	  NULL, "Failures of a dependency (connect, timeout, error answer)") \
	X(DEPENDENCY_LAST_ERROR, "mxguard_dependency_last_error_time_seconds", MT_GAUGE, \
	  "dependency", 64, 128, NULL, "Unix time of the dependency's last failure") \
	X(POP3_SESSIONS, "mxguard_pop3_sessions_total", MT_COUNTER, NULL, 1, 1, NULL, \
	  "POP3 sessions started") \
	X(POP3_LOGINS, "mxguard_pop3_logins_total", MT_COUNTER, "result", 2, 4, preset_result, \
	  "POP3 logins (USER/PASS, APOP, AUTH) by result") \
	X(IMAP_SESSIONS, "mxguard_imap_sessions_total", MT_COUNTER, NULL, 1, 1, NULL, \
	  "IMAP sessions started") \
	X(IMAP_LOGINS, "mxguard_imap_logins_total", MT_COUNTER, "result", 2, 4, preset_result, \
	  "IMAP logins (LOGIN, AUTHENTICATE) by result")

#define X_SLOTS(id, name, type, label, max, cap, preset, help) \
	static struct metric_slot slots_##id[(cap) + 1];
METRICS_TABLE(X_SLOTS)
#undef X_SLOTS

#define X_ROW(id, name, type, label, max, cap, preset, help) \
	[METRIC_##id] = { name, type, label, max, cap, preset, help, slots_##id, 0 },
static struct metric_family families[METRIC__COUNT] = { METRICS_TABLE(X_ROW) };
#undef X_ROW

/* a row per id, in the enum's order: a missing row is a compile error */
#define X_COUNT(id, name, type, label, max, cap, preset, help) +1
_Static_assert(0 METRICS_TABLE(X_COUNT) == METRIC__COUNT, "METRICS_TABLE and enum metric differ");
#undef X_COUNT

static pthread_mutex_t claim_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t preset_once = PTHREAD_ONCE_INIT;
static const char unlabelled[] = "";

static uint64_t
label_hash(const char *s, size_t len)
{
	uint64_t h = 14695981039346656037ULL;

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static struct metric_slot *
family_other(struct metric_family *f)
{
	struct metric_slot *s = &f->slots[f->cap];

	if (atomic_load_explicit(&s->label, memory_order_acquire) == NULL) {
		pthread_mutex_lock(&claim_lock);
		if (atomic_load_explicit(&s->label, memory_order_relaxed) == NULL) {
			atomic_store_explicit(&s->label, METRICS_LABEL_OTHER, memory_order_release);
			atomic_fetch_add(&f->n_labels, 1);
		}
		pthread_mutex_unlock(&claim_lock);
	}
	return s;
}

/* Find the slot of `label` (cut to METRICS_LABEL_MAX), claiming one when it
 * is new and there is room. */
static struct metric_slot *
family_slot_claim(struct metric_family *f, const char *label, size_t len, bool claim)
{
	size_t mask = f->cap - 1;
	size_t i = (size_t)label_hash(label, len) & mask;

	for (size_t probes = 0; probes < f->cap; probes++, i = (i + 1) & mask) {
		struct metric_slot *s = &f->slots[i];
		const char *l = atomic_load_explicit(&s->label, memory_order_acquire);

		if (l == NULL) {
			if (!claim)
				return NULL;
			pthread_mutex_lock(&claim_lock);
			l = atomic_load_explicit(&s->label, memory_order_relaxed);
			if (l == NULL) {
				if (atomic_load(&f->n_labels) -
				    (atomic_load(&f->slots[f->cap].label) != NULL) >= f->max_labels) {
					pthread_mutex_unlock(&claim_lock);
					return family_other(f);
				}
				atomic_store(&s->value, 0);
				atomic_store(&s->sum_us, 0);
				for (size_t b = 0; b < N_BUCKETS; b++)
					atomic_store(&s->bucket[b], 0);
				atomic_store_explicit(&s->label, xstrndup(label, len),
						      memory_order_release);
				atomic_fetch_add(&f->n_labels, 1);
				pthread_mutex_unlock(&claim_lock);
				return s;
			}
			pthread_mutex_unlock(&claim_lock);
		}
		/* claimed meanwhile (or before): compare */
		if (strncmp(l, label, len) == 0 && l[len] == '\0')
			return s;
	}
	return claim ? family_other(f) : NULL;
}

static void
metrics_presets(void)
{
	for (size_t m = 0; m < METRIC__COUNT; m++) {
		struct metric_family *f = &families[m];
		for (size_t i = 0; f->preset != NULL && f->preset[i] != NULL; i++)
			(void)family_slot_claim(f, f->preset[i], strlen(f->preset[i]), true);
	}
}

static struct metric_slot *
metric_slot(enum metric m, const char *label, bool claim)
{
	struct metric_family *f;

	if ((unsigned)m >= METRIC__COUNT)
		return NULL;
	f = &families[m];
	if (f->label_name == NULL) {
		struct metric_slot *s = &f->slots[0];
		if (atomic_load_explicit(&s->label, memory_order_relaxed) == NULL) {
			if (!claim)
				return NULL;
			atomic_store_explicit(&s->label, unlabelled, memory_order_release);
		}
		return s;
	}
	pthread_once(&preset_once, metrics_presets);
	if (label == NULL)
		label = "";
	if (strcmp(label, METRICS_LABEL_OTHER) == 0) {
		/* the overflow slot, also for a label that happens to say so */
		if (claim || atomic_load_explicit(&f->slots[f->cap].label, memory_order_acquire))
			return family_other(f);
		return NULL;
	}
	size_t len = strnlen(label, METRICS_LABEL_MAX);
	return family_slot_claim(f, label, len, claim);
}

void
metrics_add(enum metric m, int64_t n)
{
	metrics_add_label(m, NULL, n);
}

void
metrics_set(enum metric m, int64_t v)
{
	metrics_set_label(m, NULL, v);
}

void
metrics_add_label(enum metric m, const char *label, int64_t n)
{
	struct metric_slot *s = metric_slot(m, label, true);

	if (s != NULL)
		atomic_fetch_add_explicit(&s->value, n, memory_order_relaxed);
}

void
metrics_set_label(enum metric m, const char *label, int64_t v)
{
	struct metric_slot *s = metric_slot(m, label, true);

	if (s != NULL)
		atomic_store_explicit(&s->value, v, memory_order_relaxed);
}

void
metrics_observe(enum metric m, const char *label, uint64_t usec)
{
	struct metric_slot *s;

	if ((unsigned)m >= METRIC__COUNT || families[m].type != MT_HISTOGRAM)
		return;
	s = metric_slot(m, label, true);
	for (size_t b = 0; b < N_BUCKETS; b++) {
		/* a bucket's bound in microseconds, rounded: 0.0005 s is 500 */
		if ((double)usec <= stage_buckets[b] * 1e6 + 0.5) {
			atomic_fetch_add_explicit(&s->bucket[b], 1, memory_order_relaxed);
			break;
		}
	}
	atomic_fetch_add_explicit(&s->sum_us, usec, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->value, 1, memory_order_relaxed);
}

void
metrics_dependency(const char *name, bool up)
{
	metrics_set_label(METRIC_DEPENDENCY_UP, name, up ? 1 : 0);
	if (!up) {
		metrics_add_label(METRIC_DEPENDENCY_ERRORS, name, 1);
		metrics_set_label(METRIC_DEPENDENCY_LAST_ERROR, name, (int64_t)time(NULL));
	}
}

int64_t
metrics_get(enum metric m, const char *label)
{
	struct metric_slot *s = metric_slot(m, label, false);

	return s != NULL ? atomic_load(&s->value) : 0;
}

size_t
metrics_label_count(enum metric m)
{
	if ((unsigned)m >= METRIC__COUNT)
		return 0;
	pthread_once(&preset_once, metrics_presets);
	return atomic_load(&families[m].n_labels);
}

size_t
metrics_label_max(enum metric m)
{
	return (unsigned)m < METRIC__COUNT ? families[m].max_labels : 0;
}

const char *
metrics_name(enum metric m)
{
	return (unsigned)m < METRIC__COUNT ? families[m].name : NULL;
}

/* A label value in the exposition format: \ " and newline escaped. */
static void
put_label_value(FILE *out, const char *v)
{
	for (; *v != '\0'; v++) {
		if (*v == '\\')
			fputs("\\\\", out);
		else if (*v == '"')
			fputs("\\\"", out);
		else if (*v == '\n')
			fputs("\\n", out);
		else
			fputc(*v, out);
	}
}

static void
put_labels(FILE *out, const struct metric_family *f, const char *label, const char *le)
{
	bool any = false;

	if (f->label_name != NULL) {
		fprintf(out, "{%s=\"", f->label_name);
		put_label_value(out, label);
		fputc('"', out);
		any = true;
	}
	if (le != NULL) {
		fprintf(out, "%sle=\"%s\"", any ? "," : "{", le);
		any = true;
	}
	if (any)
		fputc('}', out);
}

static void
render_slot(FILE *out, const struct metric_family *f, struct metric_slot *s, const char *label)
{
	if (f->type != MT_HISTOGRAM) {
		fputs(f->name, out);
		put_labels(out, f, label, NULL);
		fprintf(out, " %" PRIdFAST64 "\n", atomic_load_explicit(&s->value,
									memory_order_relaxed));
		return;
	}
	/* read the buckets first and derive the count from them, so that a
	 * scrape racing an observation stays consistent (+Inf == _count) */
	uint_fast64_t cum = 0, sum = atomic_load_explicit(&s->sum_us, memory_order_relaxed);
	int_fast64_t total = atomic_load_explicit(&s->value, memory_order_relaxed);
	char le[32];

	for (size_t b = 0; b < N_BUCKETS; b++) {
		cum += atomic_load_explicit(&s->bucket[b], memory_order_relaxed);
		snprintf(le, sizeof(le), "%g", stage_buckets[b]);
		fprintf(out, "%s_bucket", f->name);
		put_labels(out, f, label, le);
		fprintf(out, " %" PRIuFAST64 "\n", cum);
	}
	if (total < 0 || (uint_fast64_t)total < cum)
		total = (int_fast64_t)cum;
	fprintf(out, "%s_bucket", f->name);
	put_labels(out, f, label, "+Inf");
	fprintf(out, " %" PRIdFAST64 "\n", total);
	fprintf(out, "%s_sum", f->name);
	put_labels(out, f, label, NULL);
	fprintf(out, " %" PRIuFAST64 ".%06" PRIuFAST64 "\n", sum / 1000000, sum % 1000000);
	fprintf(out, "%s_count", f->name);
	put_labels(out, f, label, NULL);
	fprintf(out, " %" PRIdFAST64 "\n", total);
}

char *
metrics_render(size_t *len_r)
{
	static const char *const type_names[] = { "counter", "gauge", "histogram" };
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	if (out == NULL)
		abort(); /* out of memory, like xmalloc */
	pthread_once(&preset_once, metrics_presets);
	for (size_t m = 0; m < METRIC__COUNT; m++) {
		struct metric_family *f = &families[m];

		fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
			type_names[f->type]);
		if (f->label_name == NULL) {
			/* an unlabelled value is always shown, 0 before its first use */
			render_slot(out, f, &f->slots[0], "");
			continue;
		}
		for (size_t i = 0; i <= f->cap; i++) {
			const char *l = atomic_load_explicit(&f->slots[i].label, memory_order_acquire);
			if (l != NULL)
				render_slot(out, f, &f->slots[i], l);
		}
	}
	if (fclose(out) != 0)
		abort();
	if (len_r != NULL)
		*len_r = len;
	return text;
}

void
metrics_reset(void)
{
	pthread_mutex_lock(&claim_lock);
	for (size_t m = 0; m < METRIC__COUNT; m++) {
		struct metric_family *f = &families[m];
		for (size_t i = 0; i <= f->cap; i++) {
			struct metric_slot *s = &f->slots[i];
			const char *l = atomic_load(&s->label);
			if (l != NULL && l != unlabelled && i != f->cap)
				free((char *)l);
			atomic_store(&s->label, NULL);
			atomic_store(&s->value, 0);
			atomic_store(&s->sum_us, 0);
			for (size_t b = 0; b < N_BUCKETS; b++)
				atomic_store(&s->bucket[b], 0);
		}
		atomic_store(&f->n_labels, 0);
	}
	pthread_mutex_unlock(&claim_lock);
	/* the presets again, now */
	metrics_presets();
}

/* ------------------------------------------------------------- parsing */

static bool
name_char(char c, bool first)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
	       (!first && c >= '0' && c <= '9');
}

int
metrics_parse_line(const char *line, size_t len, struct metrics_sample *s)
{
	size_t i = 0, n;

	memset(s, 0, sizeof(*s));
	if (len > METRICS_LINE_MAX)
		return -1;
	if (len > 0 && line[len - 1] == '\n')
		len--;
	if (len == 0 || line[0] == '#')
		return 0;
	for (n = 0; i < len && name_char(line[i], n == 0); i++, n++) {
		if (n + 1 >= sizeof(s->name))
			return -1;
		s->name[n] = line[i];
	}
	if (n == 0)
		return -1;
	if (i < len && line[i] == '{') {
		unsigned labels = 0;
		i++;
		while (i < len && line[i] != '}') {
			char lname[64];
			size_t ln = 0, vn = 0;
			bool is_le, is_first;
			char *dst;
			size_t dstsz;

			if (++labels > METRICS_PARSE_LABELS)
				return -1;
			for (; i < len && name_char(line[i], ln == 0); i++, ln++) {
				if (ln + 1 >= sizeof(lname))
					return -1;
				lname[ln] = line[i];
			}
			lname[ln] = '\0';
			if (ln == 0 || i + 1 >= len || line[i] != '=' || line[i + 1] != '"')
				return -1;
			i += 2;
			is_le = strcmp(lname, "le") == 0;
			is_first = !is_le && s->label[0] == '\0';
			dst = is_le ? s->le : is_first ? s->label : NULL;
			dstsz = is_le ? sizeof(s->le) : sizeof(s->label);
			for (;;) {
				char c;
				if (i >= len)
					return -1;
				c = line[i++];
				if (c == '"')
					break;
				if (c == '\\') {
					if (i >= len)
						return -1;
					c = line[i++];
					if (c == 'n')
						c = '\n';
					else if (c != '\\' && c != '"')
						return -1;
				}
				if (dst != NULL && vn + 1 < dstsz)
					dst[vn++] = c;
			}
			if (i < len && line[i] == ',')
				i++;
			else if (i >= len || line[i] != '}')
				return -1;
		}
		if (i >= len)
			return -1;
		i++; /* } */
	}
	if (i >= len || line[i] != ' ')
		return -1;
	i++;
	/* the value: up to a space (a timestamp may follow) or the end */
	char num[64];
	size_t k = 0;
	for (; i < len && line[i] != ' '; i++) {
		if (k + 1 >= sizeof(num))
			return -1;
		num[k++] = line[i];
	}
	num[k] = '\0';
	if (k == 0)
		return -1;
	char *end;
	s->value = strtod(num, &end);
	if (*end != '\0')
		return -1;
	return 1;
}
