/*
 * ctl.h — what mxguardctl's command files share.
 */
#ifndef MXGUARD_CTL_H
#define MXGUARD_CTL_H

#include "filters/bayes.h"
#include "lib/lib.h"

/* `mxguardctl rules ...` (ctl/rules_cmd.c); cfg is the loaded config or
 * NULL when there is none. argv[0] is "rules". Returns the exit status. */
int ctl_rules_main(struct mx_config *cfg, int argc, char **argv);

/* `mxguardctl quarantine ...` (ctl/quarantine_cmd.c); cfg is the loaded
 * config. argv[0] is "quarantine". Returns the exit status. */
int ctl_quarantine_main(struct mx_config *cfg, int argc, char **argv);

/* `mxguardctl status [--json]` (ctl/status_cmd.c): the running daemon's
 * /metrics, read from the config's metrics listener and summed up. */
int ctl_status_main(struct mx_config *cfg, int argc, char **argv);
/* `mxguardctl learn ...` and `mxguardctl unlearn ...` (ctl/learn_cmd.c);
 * cfg is the loaded config. argv[0] is "learn" or "unlearn". */
int ctl_learn_main(struct mx_config *cfg, int argc, char **argv);
/* One line of a moves file ("TIME in|out PATH"): 0, or -1 when malformed.
 * *path_r points into line. cls is an enum bayes_class. */
int ctl_learn_parse_move(const char *line, long long *time_r, enum bayes_class *cls_r,
			 const char **path_r);

#endif
