/*
 * status_cmd.c — `mxguardctl status [--json]`: what the running daemon
 * says about itself, summed up for a person (or as one JSON object).
 *
 * It reads the daemon's own /metrics over HTTP, from the address of the
 * config's `listen` section with protocol = "metrics" (a wildcard address
 * is asked on loopback), so it shows exactly what a Prometheus scrape
 * sees and needs no second interface into the daemon: no status file to
 * keep fresh, no control socket. Without a metrics listener there is no
 * status (the error says so). The text is read whole (at most
 * STATUS_BODY_MAX octets, STATUS_TIMEOUT seconds) and parsed line by line
 * with metrics_parse_line(); a line it cannot parse is an error, not
 * skipped.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl/ctl.h"
#include "daemon/daemon.h"
#include "lib/lib.h"
#include "lib/metrics.h"

#define STATUS_BODY_MAX (16u << 20)
#define STATUS_TIMEOUT 10

struct status {
	struct metrics_sample *s;
	size_t n, cap;
};

static void ATTR_PRINTF(1, 2)
status_error(const char *fmt, ...)
{
	va_list ap;

	fputs("mxguardctl: status: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* The metrics listener's address, as a place to connect to. */
static const struct listen_config *
status_listener(const struct mx_config *cfg)
{
	const struct daemon_settings *ds = daemon_settings(cfg);

	for (size_t i = 0; i < ds->n_listeners; i++) {
		if (strcmp(ds->listeners[i].protocol, "metrics") == 0)
			return &ds->listeners[i];
	}
	return NULL;
}

/* GET /metrics: the body, malloc'd, or NULL (error printed). */
static char *
status_fetch(const char *address, size_t *len_r)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	const char *why;
	struct timeval tv = { .tv_sec = STATUS_TIMEOUT };
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int fd;

	if (net_parse_address(address, &ss, &sslen, &why) < 0) {
		status_error("metrics listener %s: %s", address, why);
		return NULL;
	}
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		if (sin->sin_addr.s_addr == htonl(INADDR_ANY))
			sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		if (IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr))
			sin6->sin6_addr = in6addr_loopback;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		status_error("socket: %s", strerror(errno));
		return NULL;
	}
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&ss, sslen) < 0) {
		status_error("cannot connect to the metrics listener at %s: %s (is mxguard "
			     "running with this config?)", address, strerror(errno));
		close(fd);
		return NULL;
	}
	static const char req[] = "GET /metrics HTTP/1.0\r\nHost: mxguard\r\n"
				  "User-Agent: mxguardctl\r\n\r\n";
	if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof(req) - 1)) {
		status_error("cannot send to %s: %s", address, strerror(errno));
		close(fd);
		return NULL;
	}
	for (;;) {
		if (len + 65536 + 1 > cap) {
			if (cap >= STATUS_BODY_MAX) {
				status_error("%s: answer longer than %u octets", address,
					     STATUS_BODY_MAX);
				goto fail;
			}
			cap = cap == 0 ? 131072 : cap * 2;
			buf = xrealloc(buf, cap);
		}
		ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			status_error("reading from %s: %s", address, strerror(errno));
			goto fail;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	fd = -1;
	buf[len] = '\0';
	if (strncmp(buf, "HTTP/1.", 7) != 0 || len < 12 || strncmp(buf + 9, "200", 3) != 0) {
		char *nl = strchr(buf, '\r');
		if (nl != NULL)
			*nl = '\0';
		status_error("%s: GET /metrics answered \"%.80s\"", address, buf);
		goto fail;
	}
	char *body = strstr(buf, "\r\n\r\n");
	if (body == NULL) {
		status_error("%s: no end of the HTTP header", address);
		goto fail;
	}
	body += 4;
	*len_r = len - (size_t)(body - buf);
	memmove(buf, body, *len_r + 1);
	return buf;
fail:
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

static int
status_parse(struct status *st, const char *text, size_t len)
{
	size_t lineno = 0;

	for (size_t off = 0; off < len;) {
		const char *nl = memchr(text + off, '\n', len - off);
		size_t n = nl != NULL ? (size_t)(nl - (text + off)) + 1 : len - off;
		struct metrics_sample s;
		int r = metrics_parse_line(text + off, n, &s);

		lineno++;
		if (r < 0) {
			status_error("/metrics line %zu is malformed", lineno);
			return -1;
		}
		if (r == 1) {
			if (st->n == st->cap) {
				st->cap = st->cap == 0 ? 256 : st->cap * 2;
				st->s = xrealloc(st->s, st->cap * sizeof(*st->s));
			}
			st->s[st->n++] = s;
		}
		off += n;
	}
	return 0;
}

/* The value of name{label} (label NULL: any, the first), or NAN. */
static double
get(const struct status *st, const char *name, const char *label)
{
	for (size_t i = 0; i < st->n; i++) {
		if (strcmp(st->s[i].name, name) == 0 &&
		    (label == NULL || strcmp(st->s[i].label, label) == 0))
			return st->s[i].value;
	}
	return NAN;
}

static double
get0(const struct status *st, const char *name, const char *label)
{
	double v = get(st, name, label);
	return isnan(v) ? 0 : v;
}

static const char *
label_of(const struct status *st, const char *name)
{
	for (size_t i = 0; i < st->n; i++) {
		if (strcmp(st->s[i].name, name) == 0)
			return st->s[i].label;
	}
	return "";
}

static void
fmt_time(double t, char *out, size_t outsz)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (!(t > 0) || gmtime_r(&tt, &tm) == NULL)
		str_copy(out, "never", outsz);
	else
		strftime(out, outsz, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

static void
fmt_duration(double secs, char *out, size_t outsz)
{
	long s = secs > 0 ? (long)secs : 0;

	if (s >= 86400)
		snprintf(out, outsz, "%ldd %ldh %ldm", s / 86400, s % 86400 / 3600, s % 3600 / 60);
	else if (s >= 3600)
		snprintf(out, outsz, "%ldh %ldm %lds", s / 3600, s % 3600 / 60, s % 60);
	else
		snprintf(out, outsz, "%ldm %lds", s / 60, s % 60);
}

/* "a 1, b 2" for every label of a family (only non-zero ones when
 * nonzero), or "-". */
static void
print_family(const struct status *st, const char *name, bool nonzero)
{
	bool any = false;

	for (size_t i = 0; i < st->n; i++) {
		if (strcmp(st->s[i].name, name) != 0 || (nonzero && st->s[i].value == 0))
			continue;
		printf("%s%s %.0f", any ? ", " : "", st->s[i].label, st->s[i].value);
		any = true;
	}
	fputs(any ? "\n" : "-\n", stdout);
}

static json_t *
json_family(const struct status *st, const char *name)
{
	json_t *o = json_object();

	for (size_t i = 0; i < st->n; i++) {
		if (strcmp(st->s[i].name, name) == 0)
			json_object_set_new(o, st->s[i].label, json_integer((json_int_t)st->s[i].value));
	}
	return o;
}

static void
status_text(const struct status *st)
{
	char a[64], b[64];
	double now = (double)time(NULL);
	double start = get0(st, "mxguard_start_time_seconds", NULL);

	fmt_time(start, a, sizeof(a));
	fmt_duration(now - start, b, sizeof(b));
	printf("mxguard %s, running since %s (up %s)\n", label_of(st, "mxguard_build_info"), a, b);
	fmt_time(get0(st, "mxguard_config_load_time_seconds", NULL), a, sizeof(a));
	printf("config:        %s (loaded %s; reloads: %.0f ok, %.0f failed)\n",
	       label_of(st, "mxguard_config_info"), a,
	       get0(st, "mxguard_config_reloads_total", "ok"),
	       get0(st, "mxguard_config_reloads_total", "failed"));
	double rules = get0(st, "mxguard_rules_count", NULL);
	fmt_time(get0(st, "mxguard_rules_load_time_seconds", NULL), a, sizeof(a));
	if (rules > 0)
		printf("rule set:      %.0f rules, built %s\n", rules, a);
	else
		printf("rule set:      none (no rules stage)\n");
	double sigs = get0(st, "mxguard_clamav_db_signatures", NULL);
	fmt_time(get0(st, "mxguard_clamav_db_load_time_seconds", NULL), a, sizeof(a));
	if (sigs > 0)
		printf("virus db:      version %.0f, %.0f signatures, loaded %s\n",
		       get0(st, "mxguard_clamav_db_version", NULL), sigs, a);
	else
		printf("virus db:      none loaded (no libclamav engine)\n");
	printf("connections:   open: ");
	print_family(st, "mxguard_connections_current", false);
	printf("               total: ");
	print_family(st, "mxguard_connections_total", false);
	printf("               refused: ");
	print_family(st, "mxguard_connections_refused_total", true);
	printf("transactions:  ");
	print_family(st, "mxguard_smtp_transactions_total", true);
	printf("messages:      %.0f delivered, %.0f relayed, %.0f quarantined; %.0f octets received\n",
	       get0(st, "mxguard_messages_delivered_total", NULL),
	       get0(st, "mxguard_messages_relayed_total", NULL),
	       get0(st, "mxguard_messages_quarantined_total", NULL),
	       get0(st, "mxguard_smtp_received_bytes_total", NULL));
	printf("stages:");
	bool any = false;
	for (size_t i = 0; i < st->n; i++) {
		if (strcmp(st->s[i].name, "mxguard_stage_duration_seconds_count") != 0)
			continue;
		double count = st->s[i].value;
		double sum = get0(st, "mxguard_stage_duration_seconds_sum", st->s[i].label);
		printf("%s%s %.0f checks, %.2f ms average, %.0f errors", any ? "\n               " :
		       "        ", st->s[i].label, count, count > 0 ? sum * 1000 / count : 0.0,
		       get0(st, "mxguard_stage_errors_total", st->s[i].label));
		any = true;
	}
	printf("%s\n", any ? "" : "        -");
	printf("logins:        pop3 %.0f ok, %.0f failed (%.0f sessions); imap %.0f ok, %.0f failed "
	       "(%.0f sessions)\n", get0(st, "mxguard_pop3_logins_total", "ok"),
	       get0(st, "mxguard_pop3_logins_total", "failed"),
	       get0(st, "mxguard_pop3_sessions_total", NULL),
	       get0(st, "mxguard_imap_logins_total", "ok"),
	       get0(st, "mxguard_imap_logins_total", "failed"),
	       get0(st, "mxguard_imap_sessions_total", NULL));
	printf("dependencies:");
	any = false;
	for (size_t i = 0; i < st->n; i++) {
		if (strcmp(st->s[i].name, "mxguard_dependency_up") != 0)
			continue;
		const char *dep = st->s[i].label;
		fmt_time(get0(st, "mxguard_dependency_last_error_time_seconds", dep), a, sizeof(a));
		printf("%s%s %s (%.0f errors, last %s)", any ? "\n              " : "  ", dep,
		       st->s[i].value == 1 ? "up" : "DOWN",
		       get0(st, "mxguard_dependency_errors_total", dep), a);
		any = true;
	}
	printf("%s\n", any ? "" : "  - (none used yet)");
	printf("rule hits:     ");
	print_family(st, "mxguard_rule_hits_total", true);
}

static int
status_json(const struct status *st)
{
	json_t *o = json_object(), *stages = json_object(), *deps = json_object();
	double start = get0(st, "mxguard_start_time_seconds", NULL);

	json_object_set_new(o, "version", json_string(label_of(st, "mxguard_build_info")));
	json_object_set_new(o, "config", json_string(label_of(st, "mxguard_config_info")));
	json_object_set_new(o, "start_time", json_integer((json_int_t)start));
	json_object_set_new(o, "uptime_seconds", json_integer((json_int_t)(time(NULL) - (time_t)start)));
	json_object_set_new(o, "config_load_time",
			    json_integer((json_int_t)get0(st, "mxguard_config_load_time_seconds", NULL)));
	json_object_set_new(o, "reloads", json_family(st, "mxguard_config_reloads_total"));
	json_object_set_new(o, "rules", json_pack("{s:I,s:I}",
		"count", (json_int_t)get0(st, "mxguard_rules_count", NULL),
		"load_time", (json_int_t)get0(st, "mxguard_rules_load_time_seconds", NULL)));
	json_object_set_new(o, "virus_db", json_pack("{s:I,s:I,s:I}",
		"version", (json_int_t)get0(st, "mxguard_clamav_db_version", NULL),
		"signatures", (json_int_t)get0(st, "mxguard_clamav_db_signatures", NULL),
		"load_time", (json_int_t)get0(st, "mxguard_clamav_db_load_time_seconds", NULL)));
	json_object_set_new(o, "connections", json_pack("{s:o,s:o,s:o}",
		"current", json_family(st, "mxguard_connections_current"),
		"total", json_family(st, "mxguard_connections_total"),
		"refused", json_family(st, "mxguard_connections_refused_total")));
	json_object_set_new(o, "transactions", json_family(st, "mxguard_smtp_transactions_total"));
	json_object_set_new(o, "messages", json_pack("{s:I,s:I,s:I}",
		"delivered", (json_int_t)get0(st, "mxguard_messages_delivered_total", NULL),
		"relayed", (json_int_t)get0(st, "mxguard_messages_relayed_total", NULL),
		"quarantined", (json_int_t)get0(st, "mxguard_messages_quarantined_total", NULL)));
	json_object_set_new(o, "received_bytes",
			    json_integer((json_int_t)get0(st, "mxguard_smtp_received_bytes_total", NULL)));
	for (size_t i = 0; i < st->n; i++) {
		if (strcmp(st->s[i].name, "mxguard_stage_duration_seconds_count") != 0)
			continue;
		const char *name = st->s[i].label;
		json_object_set_new(stages, name, json_pack("{s:I,s:f,s:I}",
			"checks", (json_int_t)st->s[i].value,
			"seconds", get0(st, "mxguard_stage_duration_seconds_sum", name),
			"errors", (json_int_t)get0(st, "mxguard_stage_errors_total", name)));
	}
	json_object_set_new(o, "stages", stages);
	json_object_set_new(o, "rule_hits", json_family(st, "mxguard_rule_hits_total"));
	json_object_set_new(o, "pop3", json_pack("{s:I,s:o}",
		"sessions", (json_int_t)get0(st, "mxguard_pop3_sessions_total", NULL),
		"logins", json_family(st, "mxguard_pop3_logins_total")));
	json_object_set_new(o, "imap", json_pack("{s:I,s:o}",
		"sessions", (json_int_t)get0(st, "mxguard_imap_sessions_total", NULL),
		"logins", json_family(st, "mxguard_imap_logins_total")));
	for (size_t i = 0; i < st->n; i++) {
		if (strcmp(st->s[i].name, "mxguard_dependency_up") != 0)
			continue;
		const char *dep = st->s[i].label;
		json_object_set_new(deps, dep, json_pack("{s:b,s:I,s:I}",
			"up", st->s[i].value == 1,
			"errors", (json_int_t)get0(st, "mxguard_dependency_errors_total", dep),
			"last_error", (json_int_t)get0(st, "mxguard_dependency_last_error_time_seconds",
						       dep)));
	}
	json_object_set_new(o, "dependencies", deps);
	int r = json_dumpf(o, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
	fputc('\n', stdout);
	json_decref(o);
	return r == 0 ? 0 : 1;
}

int
ctl_status_main(struct mx_config *cfg, int argc, char **argv)
{
	bool json = false;
	struct status st = { 0 };
	size_t len = 0;
	char *text;
	int ret = 1;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0) {
			json = true;
		} else {
			fprintf(stderr, "mxguardctl: status: unknown option %s\n"
				"usage: mxguardctl [-c CONFIG] status [--json]\n", argv[i]);
			return 2;
		}
	}
	const struct listen_config *lc = status_listener(cfg);
	if (lc == NULL) {
		status_error("%s has no listen section with protocol = \"metrics\": the status "
			     "is read from /metrics (doc/operations.md)", cfg->path);
		return 1;
	}
	text = status_fetch(lc->address, &len);
	if (text == NULL)
		return 1;
	if (status_parse(&st, text, len) == 0) {
		if (json) {
			ret = status_json(&st);
		} else {
			status_text(&st);
			ret = 0;
		}
	}
	free(text);
	free(st.s);
	return ret;
}
