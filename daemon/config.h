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
 *   socket_mode = 0660            ; the client socket's mode (octal)
 *   socket_group =                ; its group (name or number); empty: unchanged
 *   allow_uids = 0                ; peers let in (SO_PEERCRED), besides cqrsd's own
 *   allow_gids =                  ;   user and group; comma-separated numbers
 *   admin_uids =                  ; if set, only these may kill, restart, reload
 *   max_connections = 1024        ; beyond: accepted and closed at once
 *   max_frame_bytes = 1048576     ; a larger frame: INVALID, connection closed
 *   max_inflight_per_conn = 1024  ; beyond: cqrsd stops reading that connection
 *   worker_queue = 10000          ; requests held per restarting worker (BUSY beyond)
 *   read_timeout_ms = 10000       ; a frame begun must complete within this
 *   max_string_bytes = 1024       ; aggregate type, id, command name, command_id
 *   max_metadata_entries = 32     ; per command
 *   max_metadata_bytes = 4096     ; keys and values of one command
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

/* What a child runs: a worker of the aggregate type named like the child,
 * or the projector (the read model and subscriptions, at most one). */
enum child_kind { CHILD_WORKER, CHILD_PROJECTOR };

struct child_config {
    char name[64];
    enum child_restart restart;
    int shutdown_ms;              /* CONFIG_BRUTAL_KILL: SIGKILL at once */
    enum child_kind kind;
};

#define CONFIG_PROJECTOR_NAME "readmodel"   /* the built-in projector child */

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

#define CONFIG_MAX_IDS 32

struct server_config {
    unsigned socket_mode;
    char socket_group[64];          /* "" : unchanged */
    unsigned allow_uids[CONFIG_MAX_IDS], allow_gids[CONFIG_MAX_IDS], admin_uids[CONFIG_MAX_IDS];
    size_t n_allow_uids, n_allow_gids, n_admin_uids;
    unsigned max_connections;
    unsigned max_frame_bytes;
    unsigned max_inflight_per_conn;
    unsigned worker_queue;
    unsigned read_timeout_ms;
    unsigned max_string_bytes;
    unsigned max_metadata_entries;
    unsigned max_metadata_bytes;
};

struct cqrsd_config {
    int log_level;                  /* enum log_level of lib/log.h */
    struct server_config server;
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
 * order (wallet, then account), then the projector "readmodel", with the
 * defaults above. */
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
