/*
 * test_userdb.c — unit tests for backends/userdb.c: hashing and verifying
 * with crypt(3), reading Dovecot-style passwd-file lines, reloading when the
 * file changes, and the atomic editors used by mxguardctl (which must keep
 * every line they were not asked to change).
 *
 * Every test works in a fresh temporary directory.
 */
#include "config.h"

#include <crypt.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "backends/backends.h"

struct fixture {
	char dir[64];
	char path[128];
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");

	snprintf(f->dir, sizeof(f->dir), "%s/userdb.XXXXXX",
		 tmp != NULL && strlen(tmp) < 40 ? tmp : "/tmp");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/passwd", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	struct dirent *de;
	DIR *d = opendir(f->dir);

	if (d != NULL) {
		while ((de = readdir(d)) != NULL) {
			char p[512];
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			snprintf(p, sizeof(p), "%s/%s", f->dir, de->d_name);
			unlink(p);
		}
		closedir(d);
	}
	rmdir(f->dir);
	free(f);
	return 0;
}

static void write_file(const char *path, const char *content)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	assert_int_equal(fputs(content, fp) >= 0, 1);
	assert_int_equal(fclose(fp), 0);
}

/* Replace path the way an editor would: new inode via rename. */
static void replace_file(const char *path, const char *content)
{
	char *tmp = xasprintf("%s.new", path);
	write_file(tmp, content);
	assert_int_equal(rename(tmp, path), 0);
	free(tmp);
}

static char *read_whole(const char *path)
{
	FILE *fp = fopen(path, "r");
	char *buf = xcalloc(1, 65536);
	size_t n;

	assert_non_null(fp);
	n = fread(buf, 1, 65535, fp);
	buf[n] = '\0';
	fclose(fp);
	return buf;
}

/* A SHA-512-crypt hash made directly with crypt(3), not by our code. */
static char *sha512_crypt(const char *password)
{
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	char *salt = crypt_gensalt_ra("$6$", 0, NULL, 0);
	char *out;

	assert_non_null(salt);
	assert_non_null(crypt_r(password, salt, cd));
	assert_true(strncmp(cd->output, "$6$", 3) == 0);
	out = xstrdup(cd->output);
	free(salt);
	free(cd);
	return out;
}

struct list_ctx {
	char users[16][300];
	size_t n;
};

static void list_cb(const char *user, void *ctx)
{
	struct list_ctx *l = ctx;
	if (l->n < N_ELEMENTS(l->users))
		str_copy(l->users[l->n], user, sizeof(l->users[0]));
	l->n++;
}

/* ------------------------------------------------------------------ tests */

static void test_hash_verify_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	char *error = NULL;
	char *hash = userdb_hash_password("correct horse");
	char *line;

	assert_non_null(hash);
	assert_true(strncmp(hash, "{CRYPT}$y$", 10) == 0);
	line = xasprintf("alice@example.test:%s\n", hash);
	write_file(f->path, line);

	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_int_equal(userdb_verify(db, "alice@example.test", "correct horse"), 1);
	assert_int_equal(userdb_exists(db, "alice", "example.test"), 1);

	/* two hashes of one password differ: the salt is random */
	char *hash2 = userdb_hash_password("correct horse");
	assert_non_null(hash2);
	assert_string_not_equal(hash, hash2);
	free(hash2);

	userdb_close(&db);
	assert_null(db);
	free(line);
	free(hash);
}

static void test_wrong_password(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	char *error = NULL;
	char *hash = userdb_hash_password("secret");
	char *line = xasprintf("alice@example.test:%s\n", hash);

	write_file(f->path, line);
	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_int_equal(userdb_verify(db, "alice@example.test", "Secret"), 0);
	assert_int_equal(userdb_verify(db, "alice@example.test", "secret "), 0);
	assert_int_equal(userdb_verify(db, "alice@example.test", ""), 0);
	/* right password, wrong or unknown user */
	assert_int_equal(userdb_verify(db, "bob@example.test", "secret"), 0);
	assert_int_equal(userdb_verify(db, "alice@example.org", "secret"), 0);
	assert_int_equal(userdb_verify(db, "alice", "secret"), 0);
	assert_int_equal(userdb_verify(db, "alice@example.test", "secret"), 1);
	userdb_close(&db);
	free(line);
	free(hash);
}

static void test_sha512_crypt_and_schemes(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	char *error = NULL;
	char *h = sha512_crypt("pw512");
	char *content = xasprintf("a@example.test:{CRYPT}%s\n"
				  "b@example.test:{SHA512-CRYPT}%s\n"
				  "c@example.test:{sha512-crypt}%s\n"
				  "d@example.test:{SHA256-CRYPT}%s\n"   /* wrong family */
				  "e@example.test:{PLAIN}pw512\n"
				  "f@example.test:%s\n"                  /* no scheme */
				  "g@example.test:\n"                    /* empty */
				  "h@example.test:{CRYPT}\n"
				  "i@example.test:{MD5}%s\n",
				  h, h, h, h, h, h);

	write_file(f->path, content);
	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_int_equal(userdb_verify(db, "a@example.test", "pw512"), 1);
	assert_int_equal(userdb_verify(db, "b@example.test", "pw512"), 1);
	assert_int_equal(userdb_verify(db, "c@example.test", "pw512"), 1);
	assert_int_equal(userdb_verify(db, "a@example.test", "pw513"), 0);
	assert_int_equal(userdb_verify(db, "d@example.test", "pw512"), 0);
	assert_int_equal(userdb_verify(db, "e@example.test", "pw512"), 0);
	assert_int_equal(userdb_verify(db, "f@example.test", "pw512"), 0);
	assert_int_equal(userdb_verify(db, "g@example.test", ""), 0);
	assert_int_equal(userdb_verify(db, "g@example.test", "x"), 0);
	assert_int_equal(userdb_verify(db, "h@example.test", ""), 0);
	assert_int_equal(userdb_verify(db, "i@example.test", "pw512"), 0);
	/* the users exist even when their hash is unusable */
	assert_int_equal(userdb_exists(db, "e", "example.test"), 1);
	userdb_close(&db);
	free(content);
	free(h);
}

static void test_dovecot_extra_fields(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	char *error = NULL;
	char *h = sha512_crypt("dove");
	char *content = xasprintf("bob@example.test:{SHA512-CRYPT}%s:1000:1000::"
				  "/home/bob::userdb_mail=maildir:~/Maildir\r\n", h);

	write_file(f->path, content);
	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_int_equal(userdb_verify(db, "bob@example.test", "dove"), 1);
	assert_int_equal(userdb_verify(db, "bob@example.test", "dove:1000"), 0);
	userdb_close(&db);
	free(content);
	free(h);
}

static void test_comments_and_blank_lines(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	struct list_ctx l = { 0 };
	char *error = NULL;
	char *h = sha512_crypt("x");
	char *content = xasprintf("# users of example.test\n"
				  "\n"
				  "   \n"
				  "#old@example.test:{CRYPT}%s\n"
				  "\t# indented comment\n"
				  "real@example.test:{CRYPT}%s\n"
				  "garbage line without colon\n"
				  "not a user:{CRYPT}%s\n"
				  "last@example.test:{CRYPT}%s", /* no final newline */
				  h, h, h, h);

	write_file(f->path, content);
	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_int_equal(userdb_exists(db, "real", "example.test"), 1);
	assert_int_equal(userdb_exists(db, "last", "example.test"), 1);
	assert_int_equal(userdb_exists(db, "old", "example.test"), 0);
	assert_int_equal(userdb_verify(db, "old@example.test", "x"), 0);
	assert_int_equal(userdb_verify(db, "last@example.test", "x"), 1);
	userdb_close(&db);

	assert_int_equal(userdb_file_list(f->path, list_cb, &l, &error), 0);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.users[0], "real@example.test");
	assert_string_equal(l.users[1], "last@example.test");
	free(content);
	free(h);
}

static void test_case_insensitive_local(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	char *error = NULL;
	char *h = sha512_crypt("case");
	char *content = xasprintf("Carol.Smith@Example.TEST:{CRYPT}%s\n", h);

	write_file(f->path, content);
	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_int_equal(userdb_exists(db, "carol.smith", "example.test"), 1);
	assert_int_equal(userdb_exists(db, "CAROL.SMITH", "example.test"), 1);
	assert_int_equal(userdb_exists(db, "carol", "example.test"), 0);
	assert_int_equal(userdb_verify(db, "cArOl.SmItH@example.test", "case"), 1);
	assert_int_equal(userdb_verify(db, "carol.smith@example.test", "CASE"), 0);
	userdb_close(&db);
	free(content);
	free(h);
}

static void test_first_duplicate_wins(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	char *error = NULL;
	char *h1 = sha512_crypt("first"), *h2 = sha512_crypt("second");
	char *content = xasprintf("z@example.test:{CRYPT}%s\nm@example.test:{CRYPT}%s\n"
				  "Z@example.test:{CRYPT}%s\n", h1, h1, h2);

	write_file(f->path, content);
	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_int_equal(userdb_verify(db, "z@example.test", "first"), 1);
	assert_int_equal(userdb_verify(db, "z@example.test", "second"), 0);
	assert_int_equal(userdb_exists(db, "m", "example.test"), 1);
	userdb_close(&db);
	free(content);
	free(h1);
	free(h2);
}

static void test_missing_file_is_empty(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	struct list_ctx l = { 0 };
	char *error = NULL;
	char *h = sha512_crypt("later");
	char *content = xasprintf("new@example.test:{CRYPT}%s\n", h);

	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_null(error);
	assert_int_equal(userdb_exists(db, "new", "example.test"), 0);
	assert_int_equal(userdb_verify(db, "new@example.test", "later"), 0);
	assert_int_equal(userdb_file_list(f->path, list_cb, &l, &error), 0);
	assert_int_equal(l.n, 0);

	/* the file appears later: the open database notices */
	write_file(f->path, content);
	assert_int_equal(userdb_exists(db, "new", "example.test"), 1);
	assert_int_equal(userdb_verify(db, "new@example.test", "later"), 1);

	/* and disappears again: empty, not an error */
	assert_int_equal(unlink(f->path), 0);
	assert_int_equal(userdb_exists(db, "new", "example.test"), 0);
	userdb_close(&db);
	free(content);
	free(h);
}

static void test_unreadable_is_error(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	char *error = NULL;

	/* a directory where the file should be cannot be read as one */
	assert_int_equal(mkdir(f->path, 0700), 0);
	assert_int_equal(userdb_open(f->path, &db, &error), -1);
	assert_null(db);
	assert_non_null(error);
	assert_non_null(strstr(error, f->path));
	free(error);
	error = NULL;
	assert_int_equal(rmdir(f->path), 0);

	/* open fine, then the file turns unreadable: lookups report -1 */
	write_file(f->path, "a@example.test:{CRYPT}x\n");
	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_int_equal(userdb_exists(db, "a", "example.test"), 1);
	assert_int_equal(unlink(f->path), 0);
	assert_int_equal(mkdir(f->path, 0700), 0);
	assert_int_equal(userdb_exists(db, "a", "example.test"), -1);
	assert_int_equal(userdb_verify(db, "a@example.test", "x"), -1);
	assert_int_equal(rmdir(f->path), 0);
	write_file(f->path, "b@example.test:{CRYPT}x\n");
	assert_int_equal(userdb_exists(db, "b", "example.test"), 1);
	userdb_close(&db);
}

static void test_reload_on_change(void **state)
{
	struct fixture *f = *state;
	struct userdb *db = NULL;
	char *error = NULL;
	char *h = sha512_crypt("r");
	char *one = xasprintf("alice@example.test:{CRYPT}%s\n", h);
	char *two = xasprintf("alice@example.test:{CRYPT}%s\nbob@example.test:{CRYPT}%s\n", h, h);

	write_file(f->path, one);
	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	assert_int_equal(userdb_exists(db, "bob", "example.test"), 0);

	/* replaced by rename: a new inode */
	replace_file(f->path, two);
	assert_int_equal(userdb_exists(db, "bob", "example.test"), 1);
	assert_int_equal(userdb_verify(db, "bob@example.test", "r"), 1);

	/* rewritten in place: a new size */
	write_file(f->path, one);
	assert_int_equal(userdb_exists(db, "bob", "example.test"), 0);
	assert_int_equal(userdb_exists(db, "alice", "example.test"), 1);

	/* written through the editor */
	char *hash = userdb_hash_password("carol-pw");
	assert_int_equal(userdb_file_set(f->path, "carol@example.test", hash, false, true, &error), 0);
	assert_int_equal(userdb_verify(db, "carol@example.test", "carol-pw"), 1);
	assert_int_equal(userdb_file_delete(f->path, "carol@example.test", &error), 0);
	assert_int_equal(userdb_exists(db, "carol", "example.test"), 0);

	userdb_close(&db);
	free(hash);
	free(one);
	free(two);
	free(h);
}

static void test_file_set_keeps_other_lines(void **state)
{
	struct fixture *f = *state;
	struct list_ctx l = { 0 };
	struct stat st;
	char *error = NULL;
	char *content, *expect;
	const char *head = "# mxguard users\n"
			   "\n"
			   "bob@example.test:{CRYPT}$6$bobsalt$bobhash:1000:1000::/home/bob::\n"
			   "#disabled@example.test:{CRYPT}$6$x$y\n"
			   "dave@example.test:{CRYPT}$6$d$d"; /* no final newline */

	write_file(f->path, head);
	assert_int_equal(chmod(f->path, 0644), 0);

	/* add: appended after a newline is supplied, nothing else touched */
	assert_int_equal(userdb_file_set(f->path, "Carol@Example.test", "{CRYPT}$6$c$c1",
					 false, true, &error), 0);
	assert_null(error);
	content = read_whole(f->path);
	expect = xasprintf("%s\ncarol@example.test:{CRYPT}$6$c$c1\n", head);
	assert_string_equal(content, expect);
	free(content);
	free(expect);
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);

	/* passwd: only the password field changes; extra fields stay */
	assert_int_equal(userdb_file_set(f->path, "BOB@example.test", "{CRYPT}$6$new$bob2",
					 true, false, &error), 0);
	content = read_whole(f->path);
	assert_string_equal(content,
			    "# mxguard users\n"
			    "\n"
			    "bob@example.test:{CRYPT}$6$new$bob2:1000:1000::/home/bob::\n"
			    "#disabled@example.test:{CRYPT}$6$x$y\n"
			    "dave@example.test:{CRYPT}$6$d$d\n"
			    "carol@example.test:{CRYPT}$6$c$c1\n");
	free(content);

	/* neither must_exist nor must_not_exist: replace or add */
	assert_int_equal(userdb_file_set(f->path, "dave@example.test", "{CRYPT}$6$d$d2",
					 false, false, &error), 0);
	assert_int_equal(userdb_file_set(f->path, "erin@example.test", "{CRYPT}$6$e$e",
					 false, false, &error), 0);

	/* del */
	assert_int_equal(userdb_file_delete(f->path, "bob@EXAMPLE.test", &error), 0);
	content = read_whole(f->path);
	assert_string_equal(content,
			    "# mxguard users\n"
			    "\n"
			    "#disabled@example.test:{CRYPT}$6$x$y\n"
			    "dave@example.test:{CRYPT}$6$d$d2\n"
			    "carol@example.test:{CRYPT}$6$c$c1\n"
			    "erin@example.test:{CRYPT}$6$e$e\n");
	free(content);
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);

	/* list, in file order */
	assert_int_equal(userdb_file_list(f->path, list_cb, &l, &error), 0);
	assert_int_equal(l.n, 3);
	assert_string_equal(l.users[0], "dave@example.test");
	assert_string_equal(l.users[1], "carol@example.test");
	assert_string_equal(l.users[2], "erin@example.test");

	/* the lock file exists and no temp file was left behind */
	char *lock = xasprintf("%s.lock", f->path);
	assert_int_equal(access(lock, F_OK), 0);
	free(lock);
	DIR *d = opendir(f->dir);
	struct dirent *de;
	size_t n = 0;
	assert_non_null(d);
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] != '.')
			n++;
	}
	closedir(d);
	assert_int_equal(n, 2); /* passwd, passwd.lock */
}

static void test_file_set_creates_file(void **state)
{
	struct fixture *f = *state;
	struct stat st;
	char *error = NULL, *content;
	mode_t old = umask(0);

	assert_int_equal(userdb_file_set(f->path, "first@example.test", "{CRYPT}$6$a$b",
					 false, true, &error), 0);
	umask(old);
	content = read_whole(f->path);
	assert_string_equal(content, "first@example.test:{CRYPT}$6$a$b\n");
	free(content);
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
}

/* A passwd-file that is a symlink (shared with Dovecot, say) stays one:
 * the file it points to is the one rewritten. */
static void test_file_set_through_symlink(void **state)
{
	struct fixture *f = *state;
	char *real = xasprintf("%s/real-passwd", f->dir);
	char *content;
	char *error = NULL;
	struct stat st;

	write_file(real, "a@example.test:{CRYPT}$6$a$a\n");
	assert_int_equal(symlink("real-passwd", f->path), 0);
	assert_int_equal(userdb_file_set(f->path, "b@example.test", "{CRYPT}$6$b$b",
					 false, true, &error), 0);
	assert_int_equal(lstat(f->path, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	content = read_whole(real);
	assert_string_equal(content, "a@example.test:{CRYPT}$6$a$a\nb@example.test:{CRYPT}$6$b$b\n");
	free(content);
	free(real);
}

static void test_file_set_errors(void **state)
{
	struct fixture *f = *state;
	const char *start = "# keep\nann@example.test:{CRYPT}$6$a$a\n";
	char *error = NULL, *content;

	write_file(f->path, start);

	assert_int_equal(userdb_file_set(f->path, "ann@example.test", "{CRYPT}$6$b$b",
					 false, true, &error), -1);
	assert_non_null(error);
	assert_non_null(strstr(error, "already exists"));
	free(error);
	error = NULL;
	/* also when the existing line differs only in case */
	assert_int_equal(userdb_file_set(f->path, "ANN@example.test", "{CRYPT}$6$b$b",
					 false, true, &error), -1);
	free(error);
	error = NULL;

	assert_int_equal(userdb_file_set(f->path, "nobody@example.test", "{CRYPT}$6$b$b",
					 true, false, &error), -1);
	assert_non_null(strstr(error, "no such user"));
	free(error);
	error = NULL;

	assert_int_equal(userdb_file_delete(f->path, "nobody@example.test", &error), -1);
	assert_non_null(strstr(error, "no such user"));
	free(error);
	error = NULL;

	assert_int_equal(userdb_file_set(f->path, "bad%user@example.test", "{CRYPT}$6$b$b",
					 false, false, &error), -1);
	assert_non_null(error);
	free(error);
	error = NULL;

	/* a hash that would break the line format */
	assert_int_equal(userdb_file_set(f->path, "new@example.test", "{CRYPT}a:b",
					 false, false, &error), -1);
	free(error);
	error = NULL;
	assert_int_equal(userdb_file_set(f->path, "new@example.test", "{CRYPT}a\nx@y:z",
					 false, false, &error), -1);
	free(error);
	error = NULL;
	assert_int_equal(userdb_file_set(f->path, "new@example.test", "",
					 false, false, &error), -1);
	free(error);
	error = NULL;

	/* nothing was changed by any of the failures */
	content = read_whole(f->path);
	assert_string_equal(content, start);
	free(content);
}

static void test_valid_user(void **state)
{
	char local64[65], local65[66], domain[300];

	assert_true(userdb_valid_user("alice@example.test"));
	assert_true(userdb_valid_user("first.last+tag@mail.example.test"));
	assert_true(userdb_valid_user("o'brien@example.test"));
	assert_true(userdb_valid_user("a@localhost"));
	assert_true(userdb_valid_user("a@xn--bcher-kva.example"));

	assert_false(userdb_valid_user("user%x@example.test"));
	assert_false(userdb_valid_user("user!x@example.test"));
	assert_false(userdb_valid_user("\"quoted\"@example.test"));
	assert_false(userdb_valid_user("\"a b\"@example.test"));
	assert_false(userdb_valid_user("noat"));
	assert_false(userdb_valid_user("a@b@example.test"));
	assert_false(userdb_valid_user("@example.test"));
	assert_false(userdb_valid_user("alice@"));
	assert_false(userdb_valid_user(".alice@example.test"));
	assert_false(userdb_valid_user("alice.@example.test"));
	assert_false(userdb_valid_user("al..ice@example.test"));
	assert_false(userdb_valid_user("al ice@example.test"));
	assert_false(userdb_valid_user("al:ice@example.test"));
	assert_false(userdb_valid_user("../x@example.test"));
	assert_false(userdb_valid_user("a/b@example.test"));
	assert_false(userdb_valid_user("#a@example.test"));
	assert_false(userdb_valid_user("alice@-example.test"));
	assert_false(userdb_valid_user("alice@example-.test"));
	assert_false(userdb_valid_user("alice@example..test"));
	assert_false(userdb_valid_user("alice@.example.test"));
	assert_false(userdb_valid_user("alice@example.test."));
	assert_false(userdb_valid_user("alice@[192.0.2.1]"));
	assert_false(userdb_valid_user("alice@exa_mple.test"));
	assert_false(userdb_valid_user(""));
	assert_false(userdb_valid_user(NULL));

	memset(local64, 'a', 64);
	local64[64] = '\0';
	memset(local65, 'a', 65);
	local65[65] = '\0';
	char *u = xasprintf("%s@example.test", local64);
	assert_true(userdb_valid_user(u));
	free(u);
	u = xasprintf("%s@example.test", local65);
	assert_false(userdb_valid_user(u));
	free(u);

	/* a 64-octet label is too long; a 255-octet domain is fine, 256 not */
	memset(domain, 'b', 64);
	strcpy(domain + 64, ".test");
	u = xasprintf("a@%s", domain);
	assert_false(userdb_valid_user(u));
	free(u);
	/* 127 labels "b." and one more: 255 octets, every label short, so
	 * only the total length decides */
	for (size_t i = 0; i < 127; i++) {
		domain[2 * i] = 'b';
		domain[2 * i + 1] = '.';
	}
	domain[254] = 'c';
	domain[255] = '\0';
	u = xasprintf("a@%s", domain);
	assert_true(userdb_valid_user(u));
	free(u);
	domain[255] = 'c';
	domain[256] = '\0';
	u = xasprintf("a@%s", domain);
	assert_false(userdb_valid_user(u));
	free(u);
}

struct reader_arg {
	struct userdb *db;
	atomic_int stop;
	int bad;
	long lookups;
};

static void *reader_thread(void *p)
{
	struct reader_arg *a = p;

	while (!atomic_load(&a->stop)) {
		if (userdb_exists(a->db, "stay", "example.test") != 1)
			a->bad++;
		a->lookups++;
	}
	return NULL;
}

/* Lookups from several threads while the file is rewritten: the user who
 * is never touched must be found every single time. */
static void test_concurrent_reload(void **state)
{
	struct fixture *f = *state;
	struct reader_arg args[3];
	pthread_t th[3];
	struct userdb *db = NULL;
	char *error = NULL;

	write_file(f->path, "stay@example.test:{CRYPT}$6$s$s\n");
	assert_int_equal(userdb_open(f->path, &db, &error), 0);
	for (size_t i = 0; i < N_ELEMENTS(th); i++) {
		args[i] = (struct reader_arg){ .db = db };
		atomic_init(&args[i].stop, 0);
		assert_int_equal(pthread_create(&th[i], NULL, reader_thread, &args[i]), 0);
	}
	for (int i = 0; i < 40; i++) {
		char local[16], user[64];
		snprintf(local, sizeof(local), "u%d", i);
		snprintf(user, sizeof(user), "%s@example.test", local);
		assert_int_equal(userdb_file_set(f->path, user, "{CRYPT}$6$u$u", false, true,
						 &error), 0);
		assert_int_equal(userdb_exists(db, local, "example.test"), 1);
		if (i % 2 == 0)
			assert_int_equal(userdb_file_delete(f->path, user, &error), 0);
	}
	for (size_t i = 0; i < N_ELEMENTS(th); i++) {
		atomic_store(&args[i].stop, 1);
		pthread_join(th[i], NULL);
		assert_int_equal(args[i].bad, 0);
		assert_true(args[i].lookups > 0);
	}
	assert_int_equal(userdb_exists(db, "u39", "example.test"), 1);
	assert_int_equal(userdb_exists(db, "u38", "example.test"), 0);
	userdb_close(&db);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_hash_verify_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_password, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sha512_crypt_and_schemes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dovecot_extra_fields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_comments_and_blank_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_case_insensitive_local, setup, teardown),
		cmocka_unit_test_setup_teardown(test_first_duplicate_wins, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_file_is_empty, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unreadable_is_error, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reload_on_change, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_set_keeps_other_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_set_creates_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_set_through_symlink, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_set_errors, setup, teardown),
		cmocka_unit_test(test_valid_user),
		cmocka_unit_test_setup_teardown(test_concurrent_reload, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
