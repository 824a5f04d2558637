/*
 * harness — starts the real cqrsd (built by this project) in a fresh
 * temporary directory for integration and crash tests, and runs the real
 * cqrsctl against it.
 */
#ifndef CQRS_TEST_HARNESS_H
#define CQRS_TEST_HARNESS_H

#include <stddef.h>
#include <sys/types.h>
#include "client.h"

struct daemon {
    pid_t pid;
    char dir[256];        /* temp dir, removed by daemon_cleanup */
    char sock[300];       /* <dir>/cqrsd.sock */
    char data[300];       /* <dir>/data */
};

/* Makes a temp dir and starts cqrsd on it; returns once the socket accepts
 * connections and STATUS shows every child running (criterion-asserts on
 * failure). Extra argv entries may follow (NULL-terminated). */
void daemon_start(struct daemon *d, ...);
/* Starts cqrsd again on the same dir (after daemon_stop). */
void daemon_restart(struct daemon *d);
/* SIGTERM, waits; returns the exit status as from waitpid. */
int daemon_stop(struct daemon *d);
/* Stops if running and removes the temp dir. */
void daemon_cleanup(struct daemon *d);

/* A connected client (criterion-asserts on failure). */
struct cqrs_client *daemon_connect(const struct daemon *d);

/* Raw socket connected to the daemon, for hostile-input tests. */
int daemon_connect_raw(const struct daemon *d);

/* Runs cqrsctl with -s <sock> and the given args (NULL-terminated); stdout
 * and stderr are captured into malloc'd strings (caller frees). Returns the
 * exit code. */
int run_cqrsctl(const struct daemon *d, char **out, char **err, ...);

/* Sends a command with the payload built from `msg` (packed here). */
Cqrs__Reply *send_cmd(struct cqrs_client *c, const char *type, const char *id,
                      const ProtobufCMessage *msg, const char *command_id,
                      long long expected_version);

#endif
