/*
 * id.c — session and transaction ids.
 *
 * 16 characters of [0-9A-Z]: the time in microseconds, the process id and a
 * process-wide counter, mixed so that ids are unique across threads and
 * restarts and still sort roughly by time (like Postfix's long queue ids).
 */
#include "config.h"

#include <stdatomic.h>
#include <sys/time.h>
#include <unistd.h>

#include "lib/lib.h"

static atomic_uint_fast32_t id_counter;

static void
id_encode(char *out, size_t n, uint64_t v)
{
	static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
	for (size_t i = n; i > 0; i--) {
		out[i - 1] = digits[v % 36];
		v /= 36;
	}
}

void
id_new(char out[MX_ID_LEN])
{
	struct timeval tv;
	uint64_t usec, tail;

	gettimeofday(&tv, NULL);
	usec = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
	/* 10 base-36 digits hold microseconds for ~115 years */
	id_encode(out, 10, usec);
	/* 6 digits (~2.1e9): pid in the high part, counter in the low part */
	tail = ((uint64_t)(getpid() & 0x7ff) << 20) |
	       (atomic_fetch_add(&id_counter, 1) & 0xfffff);
	id_encode(out + 10, 6, tail);
	out[16] = '\0';
}
