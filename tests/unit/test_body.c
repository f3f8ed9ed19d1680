/*
 * test_body.c — unit tests for lib/body.c, the message body that lives in
 * memory up to a threshold and in an unlinked spool file beyond it.
 *
 * Everything runs against real files under a mkdtemp directory; the
 * full-disk case uses a real 64 KiB tmpfs mounted for the test (the suite
 * runs as root; without the privilege that one test is skipped).
 *
 * Also here: the body's reference count (a job's reference keeps a body the
 * session dropped readable; under --enable-sanitizers ASan proves it) and
 * the parsed-MIME view of lib/mime.c — a real multipart message with a
 * base64 attachment, parsed once however many threads ask, never parsed
 * when nobody asks. g_mime_shutdown() runs at the end so LeakSanitizer sees
 * only our own allocations.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include <gmime/gmime.h>

#include "lib/lib.h"

struct fixture {
	char dir[64];     /* spool dir for the test */
	char mnt[80];     /* tmpfs mount point, "" when not mounted */
	bool mounted;
};

static int setup_dir(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/mxguard-test-body.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	*state = f;
	return 0;
}

/* Remove every entry of a flat directory, then the directory. */
static void remove_flat_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		char path[512];

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(dir);
}

static int teardown_dir(void **state)
{
	struct fixture *f = *state;

	/* lazy: a failed assertion may have left a file open in the tmpfs */
	if (f->mounted)
		umount2(f->mnt, MNT_DETACH);
	if (f->mnt[0] != '\0')
		rmdir(f->mnt);
	remove_flat_dir(f->dir);
	free(f);
	return 0;
}

static size_t count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t n = 0;

	assert_non_null(d);
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			n++;
	}
	closedir(d);
	return n;
}

/* Deterministic bytes covering all 256 values, including NUL and CR/LF. */
static char *make_data(size_t len, unsigned seed)
{
	char *p = malloc(len > 0 ? len : 1);
	uint32_t x = seed * 2654435761u + 1;

	assert_non_null(p);
	for (size_t i = 0; i < len; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (char)(x >> 16);
	}
	return p;
}

static void assert_contents(struct msgbody *b, const char *want, size_t want_len)
{
	size_t len = 12345;
	const char *got = msgbody_contents(b, &len);

	assert_non_null(got);
	assert_int_equal(len, want_len);
	assert_int_equal(msgbody_size(b), want_len);
	assert_memory_equal(got, want, want_len);
}

static void test_small_in_memory(void **state)
{
	struct fixture *f = *state;
	struct msgbody *b = msgbody_new(f->dir, 1024);
	const char text[] = "Subject: hi\n\nhello\n";

	assert_int_equal(msgbody_append(b, "Subject: hi\n", 12), 0);
	assert_int_equal(msgbody_append(b, "\nhello\n", 7), 0);
	assert_int_equal(msgbody_seal(b), 0);
	assert_false(msgbody_spilled(b));
	assert_contents(b, text, sizeof(text) - 1);
	/* asking twice gives the same region */
	size_t l1, l2;
	assert_ptr_equal(msgbody_contents(b, &l1), msgbody_contents(b, &l2));
	assert_int_equal(count_entries(f->dir), 0);
	msgbody_free(&b);
	assert_null(b);
}

static void test_exactly_threshold_stays_in_memory(void **state)
{
	struct fixture *f = *state;
	char *data = make_data(1025, 7);
	struct msgbody *b = msgbody_new(f->dir, 1024);

	assert_int_equal(msgbody_append(b, data, 1000), 0);
	assert_int_equal(msgbody_append(b, data + 1000, 24), 0);
	assert_false(msgbody_spilled(b));
	/* one byte more than the threshold moves everything to the file */
	assert_int_equal(msgbody_append(b, data + 1024, 1), 0);
	assert_true(msgbody_spilled(b));
	assert_int_equal(msgbody_seal(b), 0);
	assert_contents(b, data, 1025);
	msgbody_free(&b);
	free(data);
}

static void test_crossing_threshold(void **state)
{
	struct fixture *f = *state;
	const size_t total = 300 * 1000 + 17;
	char *data = make_data(total, 1);
	struct msgbody *b = msgbody_new(f->dir, 4096);
	size_t off = 0, step = 1;

	/* uneven chunk sizes so boundaries land everywhere */
	while (off < total) {
		size_t n = step < total - off ? step : total - off;

		assert_int_equal(msgbody_append(b, data + off, n), 0);
		off += n;
		step = (step * 7 + 3) % 5000 + 1;
	}
	assert_true(msgbody_spilled(b));
	assert_int_equal(msgbody_seal(b), 0);
	assert_contents(b, data, total);
	/* the spill file has no name: nothing appears in the spool dir */
	assert_int_equal(count_entries(f->dir), 0);
	msgbody_free(&b);
	assert_null(b);
	free(data);
}

static void test_zero_length(void **state)
{
	struct fixture *f = *state;
	struct msgbody *b = msgbody_new(f->dir, 0);
	size_t len = 99;
	const char *p;

	assert_int_equal(msgbody_append(b, "", 0), 0);
	assert_int_equal(msgbody_seal(b), 0);
	assert_false(msgbody_spilled(b));
	assert_int_equal(msgbody_size(b), 0);
	p = msgbody_contents(b, &len);
	assert_non_null(p);
	assert_int_equal(len, 0);
	assert_int_equal(p[0], '\0');
	msgbody_free(&b);

	/* threshold 0: the first byte spills */
	b = msgbody_new(f->dir, 0);
	assert_int_equal(msgbody_append(b, "x", 1), 0);
	assert_true(msgbody_spilled(b));
	assert_int_equal(msgbody_seal(b), 0);
	assert_contents(b, "x", 1);
	msgbody_free(&b);
}

static void test_many_small_appends(void **state)
{
	struct fixture *f = *state;
	const size_t total = 100000;
	char *data = make_data(total, 3);
	size_t thresholds[] = { SIZE_MAX, 50000, 1 };

	for (size_t t = 0; t < N_ELEMENTS(thresholds); t++) {
		struct msgbody *b = msgbody_new(f->dir, thresholds[t]);

		for (size_t i = 0; i < total; i++)
			assert_int_equal(msgbody_append(b, data + i, 1), 0);
		assert_int_equal(msgbody_spilled(b), thresholds[t] < total);
		assert_int_equal(msgbody_seal(b), 0);
		assert_contents(b, data, total);
		msgbody_free(&b);
	}
	free(data);
}

static void test_contract_misuse(void **state)
{
	struct fixture *f = *state;
	struct msgbody *b = msgbody_new(f->dir, 16);
	size_t len;

	assert_int_equal(msgbody_append(b, "abc", 3), 0);
	errno = 0;
	assert_null(msgbody_contents(b, &len));
	assert_int_equal(errno, EINVAL);
	assert_int_equal(msgbody_seal(b), 0);
	errno = 0;
	assert_int_equal(msgbody_append(b, "d", 1), -1);
	assert_int_equal(errno, EINVAL);
	assert_contents(b, "abc", 3);
	msgbody_free(&b);
	msgbody_free(&b); /* NULL is fine */
}

static void test_spill_dir_missing(void **state)
{
	struct fixture *f = *state;
	char missing[128];
	struct msgbody *b;
	size_t len;

	snprintf(missing, sizeof(missing), "%s/no/such/dir", f->dir);
	b = msgbody_new(missing, 16);
	/* nothing touches the directory until a spill is needed */
	assert_int_equal(msgbody_append(b, "0123456789", 10), 0);
	errno = 0;
	assert_int_equal(msgbody_append(b, "0123456789", 10), -1);
	assert_int_equal(errno, ENOENT);
	assert_false(msgbody_spilled(b));
	/* the failure is sticky: a body that lost bytes is never usable */
	errno = 0;
	assert_int_equal(msgbody_append(b, "x", 1), -1);
	assert_int_equal(errno, ENOENT);
	errno = 0;
	assert_int_equal(msgbody_seal(b), -1);
	assert_int_equal(errno, ENOENT);
	assert_null(msgbody_contents(b, &len));
	msgbody_free(&b);
	assert_null(b);
}

static void test_spill_enospc(void **state)
{
	struct fixture *f = *state;
	const size_t chunk = 8192, total = 256 * 1024;
	char *data = make_data(chunk, 5);
	struct msgbody *b;
	size_t written = 0;
	int rc = 0, err = 0;

	snprintf(f->mnt, sizeof(f->mnt), "%s.mnt", f->dir);
	assert_int_equal(mkdir(f->mnt, 0700), 0);
	if (mount("tmpfs", f->mnt, "tmpfs", 0, "size=64k,mode=0700") < 0) {
		print_message("cannot mount tmpfs (%s): skipped\n", strerror(errno));
		free(data);
		skip();
	}
	f->mounted = true;

	b = msgbody_new(f->mnt, 1024);
	while (written < total) {
		rc = msgbody_append(b, data, chunk);
		if (rc < 0) {
			err = errno;
			break;
		}
		written += chunk;
	}
	assert_int_equal(rc, -1);
	assert_int_equal(err, ENOSPC);
	assert_true(written < total);
	errno = 0;
	assert_int_equal(msgbody_seal(b), -1);
	assert_int_equal(errno, ENOSPC);
	msgbody_free(&b);
	free(data);
	/* freeing the body released the space: the file had no name */
	assert_int_equal(count_entries(f->mnt), 0);
}

struct reader_arg {
	struct msgbody *b;
	pthread_barrier_t *barrier;
	const char *ptr;
	size_t len;
};

static void *reader_thread(void *p)
{
	struct reader_arg *a = p;

	pthread_barrier_wait(a->barrier);
	a->ptr = msgbody_contents(a->b, &a->len);
	return NULL;
}

static void test_contents_from_many_threads(void **state)
{
	struct fixture *f = *state;
	const size_t total = 200000;
	char *data = make_data(total, 9);
	struct msgbody *b = msgbody_new(f->dir, 1000);
	pthread_t th[8];
	struct reader_arg args[8];
	pthread_barrier_t barrier;

	assert_int_equal(msgbody_append(b, data, total), 0);
	assert_int_equal(msgbody_seal(b), 0);
	assert_true(msgbody_spilled(b));
	pthread_barrier_init(&barrier, NULL, N_ELEMENTS(th));
	for (size_t i = 0; i < N_ELEMENTS(th); i++) {
		args[i] = (struct reader_arg){ .b = b, .barrier = &barrier };
		assert_int_equal(pthread_create(&th[i], NULL, reader_thread, &args[i]), 0);
	}
	for (size_t i = 0; i < N_ELEMENTS(th); i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&barrier);
	/* one mapping, shared by every caller */
	for (size_t i = 0; i < N_ELEMENTS(th); i++) {
		assert_non_null(args[i].ptr);
		assert_ptr_equal(args[i].ptr, args[0].ptr);
		assert_int_equal(args[i].len, total);
	}
	assert_memory_equal(args[0].ptr, data, total);
	msgbody_free(&b);
	free(data);
}

static void test_refcount(void **state)
{
	struct fixture *f = *state;
	struct msgbody *b = msgbody_new(f->dir, 8), *job_ref;
	const char *p;
	size_t len;

	assert_int_equal(msgbody_append(b, "spilled body\r\n", 14), 0);
	assert_int_equal(msgbody_seal(b), 0);
	assert_true(msgbody_spilled(b));
	job_ref = msgbody_ref(b);
	assert_ptr_equal(job_ref, b);
	p = msgbody_contents(job_ref, &len);
	/* the owner lets go; the other reference still reads */
	msgbody_free(&b);
	assert_null(b);
	assert_int_equal(len, 14);
	assert_memory_equal(p, "spilled body\r\n", 14);
	assert_memory_equal(msgbody_contents(job_ref, &len), "spilled body\r\n", 14);
	msgbody_unref(&job_ref);
	assert_null(job_ref);
	msgbody_unref(&job_ref); /* NULL is fine */
}

/* A multipart/mixed message as it arrives: CRLF line endings, a text part
 * and a base64 attachment. */
static const char mime_message[] =
	"From: alice@example.org\r\n"
	"To: bob@example.test\r\n"
	"Subject: report\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n"
	"\r\n"
	"preamble\r\n"
	"--XYZ\r\n"
	"Content-Type: text/plain; charset=utf-8\r\n"
	"\r\n"
	"see attachment\r\n"
	"--XYZ\r\n"
	"Content-Type: application/octet-stream; name=\"report.bin\"\r\n"
	"Content-Disposition: attachment; filename=\"report.bin\"\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"SGVsbG8sIGF0dGFjaG1lbnQhAAEC/w==\r\n"
	"--XYZ--\r\n";
static const char mime_attachment[] = "Hello, attachment!\x00\x01\x02\xff";

static struct msgbody *mime_body(const char *dir, size_t threshold)
{
	struct msgbody *b = msgbody_new(dir, threshold);

	assert_int_equal(msgbody_append(b, mime_message, sizeof(mime_message) - 1), 0);
	assert_int_equal(msgbody_seal(b), 0);
	return b;
}

/* The decoded contents of a leaf part, malloc'd. */
static char *mime_decode(GMimePart *part, size_t *len_r)
{
	GMimeDataWrapper *content = g_mime_part_get_content(part);
	GMimeStream *mem = g_mime_stream_mem_new();
	GByteArray *bytes;
	char *out;

	assert_non_null(content);
	assert_true(g_mime_data_wrapper_write_to_stream(content, mem) >= 0);
	bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
	*len_r = bytes->len;
	out = malloc(bytes->len + 1);
	memcpy(out, bytes->data, bytes->len);
	g_object_unref(mem);
	return out;
}

static void test_mime_view(void **state)
{
	struct fixture *f = *state;
	/* spilled too: the view must not depend on where the bytes live */
	size_t thresholds[] = { 1 << 20, 64 };

	for (size_t k = 0; k < N_ELEMENTS(thresholds); k++) {
		struct msgbody *b = mime_body(f->dir, thresholds[k]);
		unsigned long before = msgbody_mime_parse_count();
		GMimeMessage *m;
		GMimeObject *top;
		GMimeMultipart *mp;
		GMimeObject *text, *att;
		char *data;
		size_t len;

		assert_false(msgbody_mime_parsed(b));
		m = msgbody_mime(b);
		assert_non_null(m);
		assert_true(msgbody_mime_parsed(b));
		assert_string_equal(g_mime_message_get_subject(m), "report");
		top = g_mime_message_get_mime_part(m);
		assert_true(GMIME_IS_MULTIPART(top));
		mp = GMIME_MULTIPART(top);
		assert_int_equal(g_mime_multipart_get_count(mp), 2);
		text = g_mime_multipart_get_part(mp, 0);
		att = g_mime_multipart_get_part(mp, 1);
		assert_true(GMIME_IS_TEXT_PART(text));
		assert_true(GMIME_IS_PART(att));
		assert_string_equal(g_mime_part_get_filename(GMIME_PART(att)), "report.bin");
		assert_int_equal(g_mime_part_get_content_encoding(GMIME_PART(att)),
				 GMIME_CONTENT_ENCODING_BASE64);
		data = mime_decode(GMIME_PART(att), &len);
		assert_int_equal(len, sizeof(mime_attachment) - 1);
		assert_memory_equal(data, mime_attachment, len);
		free(data);
		/* asked again: the same view, no second parse */
		assert_ptr_equal(msgbody_mime(b), m);
		assert_int_equal(msgbody_mime_parse_count(), before + 1);
		msgbody_free(&b); /* frees the view too (LSan checks) */
	}
}

static void test_mime_not_parsed_unless_asked(void **state)
{
	struct fixture *f = *state;
	unsigned long before = msgbody_mime_parse_count();
	struct msgbody *b = mime_body(f->dir, 1 << 20), *unsealed = msgbody_new(f->dir, 1024);
	size_t len;

	/* reading the bytes is not parsing */
	assert_non_null(msgbody_contents(b, &len));
	assert_false(msgbody_mime_parsed(b));
	msgbody_free(&b);
	assert_int_equal(msgbody_mime_parse_count(), before);
	/* an unsealed body has no view */
	assert_int_equal(msgbody_append(unsealed, "x", 1), 0);
	assert_null(msgbody_mime(unsealed));
	assert_int_equal(msgbody_mime_parse_count(), before);
	msgbody_free(&unsealed);
}

struct mime_thread_arg {
	struct msgbody *b;
	pthread_barrier_t *barrier;
	GMimeMessage *m;
	int parts;
};

static void *mime_thread(void *p)
{
	struct mime_thread_arg *a = p;

	pthread_barrier_wait(a->barrier);
	a->m = msgbody_mime(a->b);
	if (a->m != NULL && GMIME_IS_MULTIPART(g_mime_message_get_mime_part(a->m)))
		a->parts = g_mime_multipart_get_count(
			GMIME_MULTIPART(g_mime_message_get_mime_part(a->m)));
	return NULL;
}

static void test_mime_parsed_once_from_threads(void **state)
{
	struct fixture *f = *state;
	struct msgbody *b = mime_body(f->dir, 1 << 20);
	unsigned long before = msgbody_mime_parse_count();
	pthread_t th[2];
	struct mime_thread_arg args[2];
	pthread_barrier_t barrier;

	pthread_barrier_init(&barrier, NULL, N_ELEMENTS(th));
	for (size_t i = 0; i < N_ELEMENTS(th); i++) {
		args[i] = (struct mime_thread_arg){ .b = b, .barrier = &barrier };
		assert_int_equal(pthread_create(&th[i], NULL, mime_thread, &args[i]), 0);
	}
	for (size_t i = 0; i < N_ELEMENTS(th); i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&barrier);
	assert_non_null(args[0].m);
	assert_ptr_equal(args[0].m, args[1].m);
	assert_int_equal(args[0].parts, 2);
	assert_int_equal(args[1].parts, 2);
	assert_int_equal(msgbody_mime_parse_count(), before + 1);
	msgbody_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_small_in_memory, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_exactly_threshold_stays_in_memory, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_crossing_threshold, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_zero_length, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_many_small_appends, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_contract_misuse, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_spill_dir_missing, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_spill_enospc, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_contents_from_many_threads, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_refcount, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_mime_view, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_mime_not_parsed_unless_asked, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_mime_parsed_once_from_threads, setup_dir,
						teardown_dir),
	};
	int failed = cmocka_run_group_tests(tests, NULL, NULL);

	/* GLib's and GMime's global state, so LSan reports only ours */
	mime_shutdown();
	return failed;
}
