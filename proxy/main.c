/*
 * main.c — the mxguard daemon's command line.
 *
 *   mxguard [-f] [-c FILE]      run (in the foreground with -f)
 *   mxguard -t [-c FILE]        check the configuration and exit
 *   mxguard --settings          print the settings table
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/proxy.h"

#define DEFAULT_CONFIG SYSCONFDIR "/mxguard/mxguard.conf"

static void
usage(FILE *f)
{
	fprintf(f,
		"usage: mxguard [-f] [-c FILE]     run the daemon (-f: foreground, log to stderr)\n"
		"       mxguard -t [-c FILE]       check the configuration and exit\n"
		"       mxguard --settings         print every setting with default and bounds\n"
		"       mxguard -V                 print the version\n"
		"default FILE: %s\n", DEFAULT_CONFIG);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "test", no_argument, NULL, 't' },
		{ "settings", no_argument, NULL, 'S' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config_path = DEFAULT_CONFIG;
	bool foreground = false, test = false;
	int c;

	while ((c = getopt_long(argc, argv, "c:ftVh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config_path = optarg;
			break;
		case 'f':
			foreground = true;
			break;
		case 't':
			test = true;
			break;
		case 'S':
			mxguard_register_config();
			config_print_settings(stdout);
			return 0;
		case 'V':
			printf("mxguard %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	mxguard_register_config();
	/* to the terminal until the core detaches (then syslog) */
	log_open("mxguard", true, LOG_LEVEL_INFO);
	if (test)
		return daemon_check(&mxguard_app, config_path);
	return daemon_run(&mxguard_app, config_path, foreground);
}
