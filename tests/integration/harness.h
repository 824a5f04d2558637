/*
 * harness — starts the real cqrsd (built by this project) in a fresh
 * temporary directory for integration and crash tests, and runs the real
 * cqrsctl against it.
 */
#ifndef CQRS_TEST_HARNESS_H
#define CQRS_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "client.h"
#include "evlog.h"

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

/* Asserts (criterion) that reply r has status st; `what` names the call. */
#define check_status(r, st, what)                                                      \
    cr_assert_eq((r)->status, (st), "%s: expected %s, got %s (%s)", (what),            \
                 cqrs_status_name(st), cqrs_status_name((r)->status), (r)->error)

/* Keeps the first failure of a thread in err (later ones are its
 * consequences): only the main thread asserts. */
void harness_fail_once(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A wallet TopUp(amount) request to `id` for the pipelined calls
 * (cqrs_client_send, _queue): the id is pointed to, not copied, so a
 * caller may change it between sends. */
struct topup_request {
    Cqrs__Request req;
    Cqrs__Command cmd;
    uint8_t payload[16];
};
void topup_request_init(struct topup_request *tr, const char *id, int64_t amount);

/* Sends a command with the payload built from `msg` (packed here). */
Cqrs__Reply *send_cmd(struct cqrs_client *c, const char *type, const char *id,
                      const ProtobufCMessage *msg, const char *command_id,
                      long long expected_version);

/* --- supervision and crash tests --------------------------------------------
 *
 * A cqrsd that is expected to die is reaped without killing its process
 * group, so that a test can check that no worker outlived it;
 * daemon_cleanup kills whatever is left.
 *
 * PID 1 in the test containers does not reap orphans: a worker that dies
 * after cqrsd stays a zombie. pid_alive counts a zombie as dead; pid_gone
 * asks for the pid to be gone entirely (reaped by cqrsd). */

#define HARNESS_MAX_CHILDREN 16

/* One child as STATUS shows it. */
struct child_status {
    char name[64];
    pid_t pid;
    char state[16];             /* "starting", "running", "restarting", "stopped" */
    unsigned restarts;
    int64_t started_at_us;
    char last_exit[160];
};

/* Monotonic milliseconds; a sleep that resumes after signals. */
int64_t harness_ms(void);
void harness_sleep_ms(long ms);

/* Makes the temp dir and fills `d` as daemon_start does, without starting
 * cqrsd. When `ini` is not NULL it is written to <dir>/cqrsd.conf, and the
 * next start passes --config <that file> before any extra arguments. */
void daemon_prepare(struct daemon *d, const char *ini);
/* The config file written by daemon_prepare ("" when none). */
const char *daemon_conf_path(const struct daemon *d);
/* Starts cqrsd on a prepared dir and waits until it is ready, as
 * daemon_start does. Extra argv entries may follow (NULL-terminated). */
void daemon_launch(struct daemon *d, ...);
/* daemon_prepare(d, ini) then daemon_launch(d, ...). */
void daemon_start_conf(struct daemon *d, const char *ini, ...);
/* Starts cqrsd on a prepared dir expecting it to exit by itself within `ms`
 * (criterion-asserts if it does not); returns its wait status. Its stderr
 * goes to <dir>/cqrsd.err (daemon_stderr), its stdout to cqrsd.log. Extra
 * argv entries may follow (NULL-terminated). */
int daemon_run_until_exit(struct daemon *d, int ms, ...);
/* Waits up to `ms` for cqrsd to exit and reaps it, without touching its
 * process group: 1 with *status set, 0 if it still runs. */
int daemon_wait_exit(struct daemon *d, int ms, int *status);
/* The process group (= pid) of the cqrsd last reaped by daemon_wait_exit or
 * daemon_run_until_exit. */
pid_t daemon_last_pgid(const struct daemon *d);

/* cqrsd.log and cqrsd.err (malloc'd; "" when absent). */
char *daemon_log(const struct daemon *d);
char *daemon_stderr(const struct daemon *d);
/* Prints cqrsd.log on stderr with a heading (its first 32 KiB and last
 * 16 KiB when it is larger). */
void daemon_show_log(const struct daemon *d, const char *why);

/* STATUS on a fresh connection: copies up to `max` children, returns how
 * many there are (criterion-asserts on failure). */
size_t daemon_status(const struct daemon *d, struct child_status *out, size_t max);
/* The child named `name` (asserts that STATUS lists it). */
struct child_status daemon_child(const struct daemon *d, const char *name);
/* The same without asserting (for threads): 0, or -1 when STATUS cannot be
 * had or does not list `name`. */
int daemon_child_try(const struct daemon *d, const char *name, struct child_status *out);
/* Its pid; asserts that it is running. */
pid_t daemon_child_pid(const struct daemon *d, const char *name);
/* Polls STATUS up to `ms` until `name` is running with a pid other than
 * `old_pid`; asserts (cqrsd.log shown) otherwise, or if cqrsd exits. */
struct child_status daemon_wait_new_pid(struct daemon *d, const char *name, pid_t old_pid, int ms);
/* Polls STATUS up to `ms` until `name` is in `state`; asserts otherwise. */
struct child_status daemon_wait_state(struct daemon *d, const char *name, const char *state,
                                      int ms);

/* 1 if `pid` is a live process (a zombie is dead). */
int pid_alive(pid_t pid);
/* 1 if `pid` is no process at all: kill(pid, 0) fails with ESRCH. */
int pid_gone(pid_t pid);
/* Polls up to `ms` until !pid_alive(pid); returns 1 then, 0 at the deadline. */
int pid_wait_dead(pid_t pid, int ms);
/* How many live (not zombie) processes are in process group `pgid` (cqrsd's
 * group holds its workers, standby ones included); *first gets one of them. */
int pgrp_alive(pid_t pgid, pid_t *first);
/* Polls up to `ms` until pgrp_alive is 0; returns the last count. */
int pgrp_wait_dead(pid_t pgid, int ms, pid_t *first);

/* Asserts that wallet `id`'s log holds exactly versions 1..n of
 * WalletToppedUp(1) events, each going on from the one before (0 → n). */
void daemon_check_topup_chain(const struct daemon *d, const char *id, uint64_t n);

/* Replays every record of the journal of `type` in `d`'s data directory
 * through `fn` (checkpoint records included), segment by segment in
 * position order; *first is set, before any record is replayed, to the
 * first segment's first position (0: no segment). `live`: cqrsd runs, so a
 * segment deleted between listing and opening is skipped. Returns the number
 * of segments; asserts on anything else. */
int daemon_journal_replay(const struct daemon *d, const char *type, int live,
                          evlog_replay_fn fn, void *arg, uint64_t *first);

#endif

/* --- environment and wrappers (systemd tests) -------------------------------
 *
 * daemon_spawn_with starts cqrsd on a prepared dir (daemon_prepare) the way
 * daemon_launch does — --socket, --data-dir, --config when prepared, then
 * the extra arguments (NULL-terminated) — with two differences:
 *   - `env` (NULL-terminated "KEY=VALUE" strings, or NULL) is added to its
 *     environment, replacing a variable of the same name;
 *   - `wrapper` (NULL-terminated argv, or NULL) is put before cqrsd's own
 *     argv: the wrapper is run, and is expected to exec cqrsd (d->pid is the
 *     wrapper's pid, and cqrsd's once it has exec'd);
 * and it returns at once, without waiting for cqrsd to be ready (call
 * daemon_wait_ready for that). stdout and stderr go to cqrsd.log. */
void daemon_spawn_with(struct daemon *d, const char *const *env, const char *const *wrapper,
                       ...);
/* Waits until the socket accepts and STATUS shows every child running, as
 * daemon_start does (asserts, with the log shown, otherwise). */
void daemon_wait_ready(struct daemon *d);
