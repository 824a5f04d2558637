/*
 * config — cqrsd's configuration: built-in defaults, or an INI file.
 *
 *   [supervisor]
 *   strategy = one_for_one        ; one_for_one | one_for_all | rest_for_one
 *   intensity = 5                 ; more than `intensity` restarts ...
 *   period = 10                   ; ... within `period` seconds: give up
 *   shutdown_timeout_ms = 5000    ; default per child
 *   start_timeout_ms = 5000       ; a child must report ready within this
 *   heartbeat_ms = 1000           ; supervisor pings each worker; 0 = off
 *   heartbeat_timeout_ms = 3000   ; no answer in time: the worker is hung
 *   standby = true                ; keep a started spare worker per child
 *
 *   [server]
 *   log_level = info              ; error | warning | info | debug
 *
 *   [storage]                     ; handed to every worker
 *   fsync = always                ; always | batch | never
 *   batch_interval_ms = 10        ; fsync = batch: sync the journal this often
 *   checkpoint_ms = 1000          ; sync stream files, checkpoint the journal
 *   journal_segment_mb = 64       ; journal segment size
 *   journal_retention_mb = 256    ; checkpointed segments kept up to this size ...
 *   journal_retention_s = 3600    ; ... or this age
 *   snapshot_every = 1000         ; events between snapshots of a stream; 0 = off
 *   open_files = 1024             ; stream log files a worker keeps open
 *   max_aggregates = 1000000      ; aggregates a worker keeps in memory (LRU)
 *   idle_timeout_s = 3600         ; an aggregate unused this long is evicted; 0 = never
 *
 *   [child wallet]                ; in start order; NAME is an aggregate type
 *   restart = permanent           ; permanent | transient | temporary
 *   shutdown_ms = 5000            ; or brutal_kill
 *
 * Anything else — an unknown section or key, a bad value, an unknown or
 * repeated aggregate type — is an error that names the file, line and key.
 */
#ifndef CQRS_CONFIG_H
#define CQRS_CONFIG_H

#include <stddef.h>

#define CONFIG_MAX_CHILDREN 32
#define CONFIG_BRUTAL_KILL (-1)

enum sup_strategy { SUP_ONE_FOR_ONE, SUP_ONE_FOR_ALL, SUP_REST_FOR_ONE };
enum child_restart { RESTART_PERMANENT, RESTART_TRANSIENT, RESTART_TEMPORARY };

struct child_config {
    char name[64];
    enum child_restart restart;
    int shutdown_ms;              /* CONFIG_BRUTAL_KILL: SIGKILL at once */
};

enum storage_fsync { FSYNC_ALWAYS, FSYNC_BATCH, FSYNC_NEVER };

struct storage_config {
    enum storage_fsync fsync;
    unsigned batch_interval_ms;
    unsigned checkpoint_ms;
    unsigned segment_mb;
    unsigned retention_mb;
    unsigned retention_s;
    unsigned snapshot_every;
    unsigned open_files;
    unsigned max_aggregates;
    unsigned idle_timeout_s;
};

struct cqrsd_config {
    int log_level;                  /* enum log_level of lib/log.h */
    enum sup_strategy strategy;
    unsigned intensity;
    unsigned period_s;
    unsigned shutdown_timeout_ms;
    unsigned start_timeout_ms;
    unsigned heartbeat_ms;
    unsigned heartbeat_timeout_ms;
    int standby;
    struct storage_config storage;
    struct child_config children[CONFIG_MAX_CHILDREN];
    size_t n_children;
};

/* The built-in configuration: every registered aggregate type, in registry
 * order (wallet, then account), with the defaults above. */
void config_defaults(struct cqrsd_config *cfg);

/* Reads `path` into `cfg`. 0, or -1 with one line in `err`
 * ("FILE:LINE: what is wrong"). */
int config_load(const char *path, struct cqrsd_config *cfg, char *err, size_t errlen);

const char *config_strategy_name(enum sup_strategy s);
const char *config_restart_name(enum child_restart r);
const char *config_fsync_name(enum storage_fsync f);

/* The worker's command-line options for `storage` into argv (at most
 * CONFIG_WORKER_ARGS entries, strings in `buf`); returns the count. */
#define CONFIG_WORKER_ARGS 20
size_t config_worker_args(const struct storage_config *storage, char **argv, char *buf, size_t len);

#endif
