/*
 * log.c — one greppable line per event, to stderr in the foreground and to
 * syslog(3) otherwise.
 *
 * Lines are written with a single write(2) so that lines from several loop
 * threads never interleave mid-line.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "lib/lib.h"

static bool log_foreground = true;
static enum log_level log_current = LOG_LEVEL_INFO;
static const char *log_ident = "mxguard";
static int log_facility = LOG_MAIL;

static const char *const level_names[] = { "err", "warn", "info", "debug" };
static const int level_syslog[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

void
log_open(const char *ident, bool foreground, enum log_level level)
{
	log_ident = ident;
	log_foreground = foreground;
	log_current = level;
	if (!foreground)
		openlog(ident, LOG_PID | LOG_NDELAY, log_facility);
}

void
log_set_facility(enum log_facility facility)
{
	static const int facilities[] = {
		[LOG_FACILITY_MAIL] = LOG_MAIL, [LOG_FACILITY_DAEMON] = LOG_DAEMON,
		[LOG_FACILITY_USER] = LOG_USER, [LOG_FACILITY_LOCAL0] = LOG_LOCAL0,
		[LOG_FACILITY_LOCAL1] = LOG_LOCAL1, [LOG_FACILITY_LOCAL2] = LOG_LOCAL2,
		[LOG_FACILITY_LOCAL3] = LOG_LOCAL3, [LOG_FACILITY_LOCAL4] = LOG_LOCAL4,
		[LOG_FACILITY_LOCAL5] = LOG_LOCAL5, [LOG_FACILITY_LOCAL6] = LOG_LOCAL6,
		[LOG_FACILITY_LOCAL7] = LOG_LOCAL7,
	};

	if ((unsigned)facility < N_ELEMENTS(facilities))
		log_facility = facilities[facility];
}

/* The level changes on reload (main thread) while loops log: atomic. */
void
log_set_level(enum log_level level)
{
	__atomic_store_n(&log_current, level, __ATOMIC_RELAXED);
}

bool
log_enabled(enum log_level level)
{
	return level <= __atomic_load_n(&log_current, __ATOMIC_RELAXED);
}

int
log_level_parse(const char *s, enum log_level *level_r)
{
	for (size_t i = 0; i < N_ELEMENTS(level_names); i++) {
		if (strcasecmp(s, level_names[i]) == 0) {
			*level_r = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

static void
log_emit(enum log_level level, const char *fmt, va_list ap, int errnum)
{
	char line[4096];
	size_t len = 0;
	int n;

	if (!log_enabled(level))
		return;
	if (log_foreground) {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		len = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
		n = snprintf(line + len, sizeof(line) - len, ".%03ldZ %s[%d]: %s: ",
			     ts.tv_nsec / 1000000, log_ident, (int)getpid(), level_names[level]);
		if (n > 0)
			len += (size_t)n;
	}
	n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
	if (n > 0)
		len += (size_t)n;
	if (len >= sizeof(line) - 2)
		len = sizeof(line) - 2 - 1;
	if (errnum != 0) {
		n = snprintf(line + len, sizeof(line) - len - 1, ": %s", strerror(errnum));
		if (n > 0)
			len += (size_t)n;
		if (len >= sizeof(line) - 1)
			len = sizeof(line) - 2;
	}
	if (log_foreground) {
		line[len++] = '\n';
		ssize_t w = write(STDERR_FILENO, line, len);
		(void)w;
	} else {
		line[len] = '\0';
		syslog(level_syslog[level], "%s", line);
	}
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;
	int saved = errno;

	va_start(ap, fmt);
	log_emit(level, fmt, ap, 0);
	va_end(ap);
	errno = saved;
}

void
log_errno(enum log_level level, const char *fmt, ...)
{
	va_list ap;
	int saved = errno;

	va_start(ap, fmt);
	log_emit(level, fmt, ap, saved);
	va_end(ap);
	errno = saved;
}
