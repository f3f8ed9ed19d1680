/*
 * mxguardctl.c — the admin's tool for the user database.
 *
 *   mxguardctl [-c CONFIG] [-p PASSWD_FILE] user add|del|passwd|list|check [USER]
 *   mxguardctl [-c CONFIG] rules lint|test ...   (ctl/rules_cmd.c)
 *   mxguardctl [-c CONFIG] quarantine list|show|release|delete|expire ...
 *                                                (ctl/quarantine_cmd.c)
 *   mxguardctl [-c CONFIG] status [--json]       (ctl/status_cmd.c)
 *
 * It reads the same configuration file as the daemon (through the same
 * loader, with the same stage sections registered) so that it edits the
 * passwd_file the daemon reads and only adds users of the configured local
 * domains. All editing goes through backends/userdb.c, which rewrites the
 * file atomically under a lock; the daemon notices the change on its next
 * lookup, so nothing needs a restart or a reload.
 *
 * A password is never taken from the command line, where other users could
 * read it in the process list and where it would land in shell history: it
 * is read from the terminal with echo off (twice, when setting one), or as
 * one line from standard input when that is not a terminal, for scripts.
 *
 * Exit status: 0 success, 1 failure (one "mxguardctl: ..." line on stderr),
 * 2 usage error.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "backends/backends.h"
#include "ctl/ctl.h"
#include "filters/filters.h"
#include "lib/lib.h"
#include "proxy/proxy.h" /* mxguard_register_config: the daemon's settings */

#define CTL_EXIT_OK 0
#define CTL_EXIT_FAIL 1
#define CTL_EXIT_USAGE 2

/* Longer than any passphrase a person types; a longer line is refused
 * rather than silently cut. */
#define CTL_PASSWORD_MAX 1024

#define CTL_DEFAULT_CONFIG SYSCONFDIR "/mxguard/mxguard.conf"

struct ctl {
	const char *config_path;
	const char *passwd_file; /* -p, or the config's passwd_file */
	struct mx_config *cfg;
	char *user;   /* lower-cased, validated */
	char *local;  /* parts of user */
	char *domain;
};

struct ctl_command {
	const char *name;
	bool needs_user;
	int (*run)(struct ctl *ctl);
};

static void ctl_usage(FILE *out)
{
	fprintf(out,
		"usage: mxguardctl [-c CONFIG] [-p PASSWD_FILE] user COMMAND [USER]\n"
		"\n"
		"commands:\n"
		"  user add USER      add USER (local@domain); asks for the password\n"
		"  user passwd USER   set a new password for an existing USER\n"
		"  user del USER      remove USER (the mail store is left alone)\n"
		"  user list          print every user, one per line\n"
		"  user check USER    read a password; exit 0 if it is USER's\n"
		"  rules lint FILE... check rule files: file:line:col: error|warning: ...\n"
		"  rules test [-r FILE]... [--summary] [--from A] [--rcpt A] [--helo H]\n"
		"             [--client IP] MESSAGE...   score messages with the rules\n"
		"  quarantine list [--since TIME] [--rcpt A] [--sender A] [--reason TEXT] [--all]\n"
		"  quarantine show ID             metadata and headers of a held message\n"
		"  quarantine release ID [--to A]...  deliver it (no filters) to its recipients\n"
		"  quarantine delete ID           remove it (recorded in its metadata)\n"
		"  quarantine expire              remove what is older than quarantine_retention\n"
		"  status [--json]    the running daemon's summary, read from its /metrics\n"
		"  learn spam|ham [--user U] FILE|MAILDIR...  teach the bayes stage (doc/learning.md)\n"
		"  unlearn [--user U] FILE|MAILDIR...         forget what was learnt from them\n"
		"  learn --moves FILE [--user U]  learn the Junk moves recorded in FILE\n"
		"  learn --stats [--user U]       what the store holds\n"
		"\n"
		"options:\n"
		"  -c CONFIG          configuration file (default %s)\n"
		"  -p PASSWD_FILE     user database to edit instead of the config's passwd_file\n"
		"  -h                 show this help\n"
		"\n"
		"Passwords are read from the terminal with echo off, or as one line\n"
		"from standard input when it is not a terminal.\n",
		CTL_DEFAULT_CONFIG);
}

static void ATTR_PRINTF(1, 2) ctl_error(const char *fmt, ...)
{
	va_list ap;

	fputs("mxguardctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ------------------------------------------------------------ passwords */

/* The terminal state to put back if a signal arrives while echo is off;
 * otherwise an interrupted prompt leaves the admin typing blind. */
static struct termios ctl_saved_termios;
static volatile sig_atomic_t ctl_termios_changed;

static void ctl_restore_on_signal(int sig)
{
	if (ctl_termios_changed)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &ctl_saved_termios);
	signal(sig, SIG_DFL);
	raise(sig);
}

static const int ctl_restore_signals[] = { SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGTSTP };

/* Read one line from fd with read(2), byte by byte, so no copy of the
 * password stays behind in a stdio buffer and nothing past the line is
 * consumed. Returns the length, -1 on error/EOF-before-anything, or -2
 * when the line is too long. The newline (and a CR before it) is dropped. */
static ssize_t ctl_read_line(int fd, char *buf, size_t cap)
{
	size_t len = 0;
	bool got_any = false;
	bool too_long = false;

	for (;;) {
		char c;
		ssize_t n = read(fd, &c, 1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0) {
			if (!got_any)
				return -1;
			break;
		}
		got_any = true;
		if (c == '\n')
			break;
		if (len + 1 >= cap) {
			too_long = true;
			continue; /* drain the rest of the line */
		}
		buf[len++] = c;
	}
	if (too_long)
		return -2;
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	return (ssize_t)len;
}

/* Prompt on stderr and read a line from the terminal on stdin with echo
 * off. */
static ssize_t ctl_read_tty(const char *prompt, char *buf, size_t cap)
{
	struct termios noecho;
	struct sigaction sa, old_sa[N_ELEMENTS(ctl_restore_signals)];
	ssize_t len;

	fputs(prompt, stderr);
	fflush(stderr);
	if (tcgetattr(STDIN_FILENO, &ctl_saved_termios) < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = ctl_restore_on_signal;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < N_ELEMENTS(ctl_restore_signals); i++)
		sigaction(ctl_restore_signals[i], &sa, &old_sa[i]);

	noecho = ctl_saved_termios;
	noecho.c_lflag &= ~(tcflag_t)ECHO;
	noecho.c_lflag |= ECHONL; /* the Enter still moves the cursor on */
	ctl_termios_changed = 1;
	if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &noecho) < 0) {
		ctl_termios_changed = 0;
		len = -1;
	} else {
		len = ctl_read_line(STDIN_FILENO, buf, cap);
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &ctl_saved_termios);
		ctl_termios_changed = 0;
	}
	for (size_t i = 0; i < N_ELEMENTS(ctl_restore_signals); i++)
		sigaction(ctl_restore_signals[i], &old_sa[i], NULL);
	return len;
}

/* Reads the password into buf (capacity CTL_PASSWORD_MAX + 1). confirm asks
 * twice on a terminal. Returns 0, or -1 after printing why. */
static int ctl_read_password(bool confirm, char *buf)
{
	char again[CTL_PASSWORD_MAX + 1];
	bool tty = isatty(STDIN_FILENO);
	ssize_t len;
	int ret = -1;

	if (tty)
		len = ctl_read_tty(confirm ? "New password: " : "Password: ", buf,
				   CTL_PASSWORD_MAX + 1);
	else
		len = ctl_read_line(STDIN_FILENO, buf, CTL_PASSWORD_MAX + 1);

	if (len == -2) {
		ctl_error("password too long (more than %d octets)", CTL_PASSWORD_MAX);
		goto out;
	}
	if (len < 0) {
		ctl_error("no password given on %s", tty ? "the terminal" : "standard input");
		goto out;
	}
	if (len == 0) {
		ctl_error("empty password refused");
		goto out;
	}
	if (strlen(buf) != (size_t)len) {
		ctl_error("password contains a NUL octet");
		goto out;
	}
	if (tty && confirm) {
		len = ctl_read_tty("Retype new password: ", again, sizeof(again));
		if (len < 0 || strcmp(buf, again) != 0) {
			ctl_error("passwords do not match");
			goto out;
		}
	}
	ret = 0;
out:
	explicit_bzero(again, sizeof(again));
	if (ret < 0)
		explicit_bzero(buf, CTL_PASSWORD_MAX + 1);
	return ret;
}

/* ------------------------------------------------------------- commands */

/* 1 exists, 0 not, -1 after printing an error. */
static int ctl_user_exists(struct ctl *ctl)
{
	struct userdb *db = NULL;
	char *error = NULL;
	int ret;

	if (userdb_open(ctl->passwd_file, &db, &error) < 0) {
		ctl_error("%s", error);
		free(error);
		return -1;
	}
	ret = userdb_exists(db, ctl->local, ctl->domain);
	if (ret < 0)
		ctl_error("cannot read %s", ctl->passwd_file);
	userdb_close(&db);
	return ret;
}

static int ctl_set_password(struct ctl *ctl, bool must_exist, bool must_not_exist)
{
	char password[CTL_PASSWORD_MAX + 1];
	char *hash, *error = NULL;
	int ret = CTL_EXIT_FAIL;

	if (ctl_read_password(true, password) < 0)
		return CTL_EXIT_FAIL;
	hash = userdb_hash_password(password);
	explicit_bzero(password, sizeof(password));
	if (hash == NULL) {
		ctl_error("cannot hash the password: crypt(3) failed");
		return CTL_EXIT_FAIL;
	}
	if (userdb_file_set(ctl->passwd_file, ctl->user, hash, must_exist, must_not_exist,
			    &error) < 0) {
		ctl_error("%s", error);
		free(error);
	} else {
		ret = CTL_EXIT_OK;
	}
	free(hash);
	return ret;
}

static int ctl_cmd_add(struct ctl *ctl)
{
	int exists;

	if (!backends_is_local_domain(ctl->cfg, ctl->domain)) {
		ctl_error("%s is not one of the local_domains in %s", ctl->domain,
			  ctl->config_path);
		return CTL_EXIT_FAIL;
	}
	/* ask before prompting; userdb_file_set checks again under its lock */
	if ((exists = ctl_user_exists(ctl)) < 0)
		return CTL_EXIT_FAIL;
	if (exists > 0) {
		ctl_error("user already exists: %s", ctl->user);
		return CTL_EXIT_FAIL;
	}
	return ctl_set_password(ctl, false, true);
}

static int ctl_cmd_passwd(struct ctl *ctl)
{
	int exists;

	if ((exists = ctl_user_exists(ctl)) < 0)
		return CTL_EXIT_FAIL;
	if (exists == 0) {
		ctl_error("no such user: %s", ctl->user);
		return CTL_EXIT_FAIL;
	}
	return ctl_set_password(ctl, true, false);
}

static int ctl_cmd_del(struct ctl *ctl)
{
	char *error = NULL;

	if (userdb_file_delete(ctl->passwd_file, ctl->user, &error) < 0) {
		ctl_error("%s", error);
		free(error);
		return CTL_EXIT_FAIL;
	}
	return CTL_EXIT_OK;
}

static void ctl_print_user(const char *user, void *ctx)
{
	printf("%s\n", user);
}

static int ctl_cmd_list(struct ctl *ctl)
{
	char *error = NULL;

	if (userdb_file_list(ctl->passwd_file, ctl_print_user, NULL, &error) < 0) {
		ctl_error("%s", error);
		free(error);
		return CTL_EXIT_FAIL;
	}
	return CTL_EXIT_OK;
}

static int ctl_cmd_check(struct ctl *ctl)
{
	char password[CTL_PASSWORD_MAX + 1];
	struct userdb *db = NULL;
	char *error = NULL;
	int exists, ok;

	if ((exists = ctl_user_exists(ctl)) < 0)
		return CTL_EXIT_FAIL;
	if (exists == 0) {
		ctl_error("no such user: %s", ctl->user);
		return CTL_EXIT_FAIL;
	}
	if (ctl_read_password(false, password) < 0)
		return CTL_EXIT_FAIL;
	if (userdb_open(ctl->passwd_file, &db, &error) < 0) {
		explicit_bzero(password, sizeof(password));
		ctl_error("%s", error);
		free(error);
		return CTL_EXIT_FAIL;
	}
	ok = userdb_verify(db, ctl->user, password);
	explicit_bzero(password, sizeof(password));
	userdb_close(&db);
	if (ok < 0) {
		ctl_error("cannot read %s", ctl->passwd_file);
		return CTL_EXIT_FAIL;
	}
	if (ok == 0) {
		ctl_error("wrong password for %s", ctl->user);
		return CTL_EXIT_FAIL;
	}
	return CTL_EXIT_OK;
}

static const struct ctl_command ctl_user_commands[] = {
	{ "add", true, ctl_cmd_add },
	{ "del", true, ctl_cmd_del },
	{ "passwd", true, ctl_cmd_passwd },
	{ "list", false, ctl_cmd_list },
	{ "check", true, ctl_cmd_check },
};

static const struct ctl_command *ctl_find_command(const char *name)
{
	for (size_t i = 0; i < N_ELEMENTS(ctl_user_commands); i++) {
		if (strcmp(ctl_user_commands[i].name, name) == 0)
			return &ctl_user_commands[i];
	}
	return NULL;
}

/* ----------------------------------------------------------------- main */

static int ATTR_PRINTF(1, 2) ctl_usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("mxguardctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nusage: mxguardctl [-c CONFIG] [-p PASSWD_FILE] user add|del|passwd|list|check [USER]\n"
	      "       mxguardctl [-c CONFIG] rules lint|test ...\n"
	      "       mxguardctl [-c CONFIG] quarantine list|show|release|delete|expire ...\n"
	      "Try 'mxguardctl -h' for more.\n", stderr);
	return CTL_EXIT_USAGE;
}

int main(int argc, char **argv)
{
	struct ctl ctl = { .config_path = CTL_DEFAULT_CONFIG };
	const struct ctl_command *cmd;
	char *error = NULL;
	int opt, ret;

	while ((opt = getopt(argc, argv, "+c:p:h")) != -1) {
		switch (opt) {
		case 'c':
			ctl.config_path = optarg;
			break;
		case 'p':
			ctl.passwd_file = optarg;
			break;
		case 'h':
			ctl_usage(stdout);
			return CTL_EXIT_OK;
		default:
			ctl_usage(stderr);
			return CTL_EXIT_USAGE;
		}
	}
	argc -= optind;
	argv += optind;

	if (argc == 0)
		return ctl_usage_error("missing command");
	if (strcmp(argv[0], "rules") == 0) {
		/* the config is optional here: it gives the thresholds and the
		 * rules section's files; a named one must load */
		bool named = ctl.config_path != NULL && strcmp(ctl.config_path, CTL_DEFAULT_CONFIG) != 0;
		mxguard_register_config();
		if (named || access(ctl.config_path, R_OK) == 0) {
			if (config_load(ctl.config_path, &ctl.cfg, &error) < 0) {
				ctl_error("%s", error != NULL ? error : ctl.config_path);
				free(error);
				return CTL_EXIT_FAIL;
			}
		}
		ret = ctl_rules_main(ctl.cfg, argc, argv);
		config_unref(&ctl.cfg);
		return ret;
	}
	if (strcmp(argv[0], "status") == 0) {
		mxguard_register_config();
		if (config_load(ctl.config_path, &ctl.cfg, &error) < 0) {
			ctl_error("%s", error != NULL ? error : ctl.config_path);
			free(error);
			return CTL_EXIT_FAIL;
		}
		ret = ctl_status_main(ctl.cfg, argc, argv);
		if (fflush(stdout) != 0 || ferror(stdout)) {
			ctl_error("cannot write to standard output: %s", strerror(errno));
			ret = CTL_EXIT_FAIL;
		}
		config_unref(&ctl.cfg);
		return ret;
	}
	if (strcmp(argv[0], "quarantine") == 0) {
		mxguard_register_config();
		if (config_load(ctl.config_path, &ctl.cfg, &error) < 0) {
			ctl_error("%s", error != NULL ? error : ctl.config_path);
			free(error);
			return CTL_EXIT_FAIL;
		}
		ret = ctl_quarantine_main(ctl.cfg, argc, argv);
		if (fflush(stdout) != 0 || ferror(stdout)) {
			ctl_error("cannot write to standard output: %s", strerror(errno));
			ret = CTL_EXIT_FAIL;
		}
		config_unref(&ctl.cfg);
		return ret;
	}
	if (strcmp(argv[0], "learn") == 0 || strcmp(argv[0], "unlearn") == 0) {
		mxguard_register_config();
		if (config_load(ctl.config_path, &ctl.cfg, &error) < 0) {
			ctl_error("%s", error != NULL ? error : ctl.config_path);
			free(error);
			return CTL_EXIT_FAIL;
		}
		ret = ctl_learn_main(ctl.cfg, argc, argv);
		config_unref(&ctl.cfg);
		return ret;
	}
	if (strcmp(argv[0], "user") != 0)
		return ctl_usage_error("unknown command: %s", argv[0]);
	if (argc < 2)
		return ctl_usage_error("user: missing subcommand");
	if ((cmd = ctl_find_command(argv[1])) == NULL)
		return ctl_usage_error("user: unknown subcommand: %s", argv[1]);
	if (cmd->needs_user && argc != 3)
		return ctl_usage_error(argc < 3 ? "user %s: missing USER" :
				       "user %s: too many arguments", cmd->name);
	if (!cmd->needs_user && argc != 2)
		return ctl_usage_error("user %s: too many arguments", cmd->name);

	if (cmd->needs_user) {
		char *at;

		if (!userdb_valid_user(argv[2])) {
			ctl_error("invalid user name: %s (expected local@domain)", argv[2]);
			return CTL_EXIT_FAIL;
		}
		ctl.user = xstrdup(argv[2]);
		str_lower(ctl.user);
		at = strchr(ctl.user, '@');
		ctl.local = xstrndup(ctl.user, (size_t)(at - ctl.user));
		ctl.domain = xstrdup(at + 1);
	}

	/* the daemon's own loader, with every module's settings and every
	 * stage's section known, so any file the daemon accepts is accepted
	 * here too */
	mxguard_register_config();
	if (config_load(ctl.config_path, &ctl.cfg, &error) < 0) {
		ctl_error("%s", error != NULL ? error : ctl.config_path);
		free(error);
		ret = CTL_EXIT_FAIL;
		goto out;
	}
	if (ctl.passwd_file == NULL)
		ctl.passwd_file = backends_settings(ctl.cfg)->passwd_file;

	ret = cmd->run(&ctl);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		ctl_error("cannot write to standard output: %s", strerror(errno));
		ret = CTL_EXIT_FAIL;
	}
out:
	config_unref(&ctl.cfg);
	free(ctl.user);
	free(ctl.local);
	free(ctl.domain);
	return ret;
}
