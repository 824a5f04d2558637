/*
 * sup — the supervisor: OTP's supervisor semantics for worker processes.
 *
 * Children (one per aggregate type) start in order, each ready before the
 * next (start_link). When one exits, its restart type decides whether it
 * comes back (permanent: always; transient: after an abnormal exit;
 * temporary: never) and the strategy decides who restarts with it
 * (one_for_one: itself; one_for_all: everyone; rest_for_one: itself and the
 * children started after it). More than `intensity` restarts within
 * `period` seconds: stop everything and exit 1. Shutdown stops children in
 * reverse start order: SIGTERM, then SIGKILL after the child's shutdown
 * time (brutal_kill: SIGKILL at once).
 *
 * Every change of who runs goes through one plan: a queue of children to
 * stop (in that order) and then a queue of children to start (in order,
 * each waiting for ready). Boot, group restarts, operator restarts and
 * shutdown are all plans; sup_step carries the plan out one child at a time.
 *
 * A child's life:  stopped → starting → running → (exit) → stopped …
 * Requests for a child that is starting wait in its queue (bounded, with a
 * timeout) and go out when it reports ready. A heartbeat pings each running
 * child; one that does not answer within heartbeat_timeout is hung: it is
 * SIGKILLed and handled like any crash.
 *
 * With `standby` on, each running child also has a standby worker already
 * started and initialised; a restart adopts it, and a new standby is started
 * once the adopted worker is running.
 *
 * The daemon end of each child's socketpair carries tagged frames (see
 * lib/frame.h); tag-0 frames are the supervisor channel (ready, ping/pong),
 * FRAME_TAG_COMMIT frames a worker's committed events, the rest are
 * replies; commits and replies go to the router through the hooks. A child
 * of kind projector runs cqrs-projector (no standby) and speaks the same.
 */
#ifndef CQRS_SUP_H
#define CQRS_SUP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "config.h"
#include "flush.h"
#include "sup_policy.h"

enum child_state { CHILD_STOPPED, CHILD_STARTING, CHILD_RUNNING };

/* A worker process started ahead of need: when its child must (re)start,
 * the standby is adopted instead of spawning, so a restart does not wait
 * for exec and initialisation. It receives nothing until adopted. */
struct standby {
    pid_t pid;                      /* 0: none */
    struct bufferevent *bev;
    int ready;
    struct child *child;
};

struct child {
    struct child_config cfg;
    const char *name;               /* = cfg.name */
    int index;                      /* start order */
    pid_t pid;                      /* 0 when not running */
    enum child_state state;
    struct bufferevent *bev;        /* daemon end of the socketpair */
    struct flush_out *flush;        /* bev's output, watched by opt.flusher */
    struct event *timer;            /* start or shutdown timeout */
    uint32_t restarts;              /* starts after the first */
    int started;                    /* has been started at least once */
    int64_t started_at_us;
    char last_exit[96];
    int exit_noted;                 /* last_exit already says why we killed it */
    int terminating;                /* we asked it to stop */
    int restart_requested;          /* start it again once stopped */
    int removing;                   /* a reload removed it: gone once stopped */
    int reload_start, reload_restart;
    int ping_out;                   /* heartbeat sent, no answer yet */
    uint8_t stats[64];              /* the last heartbeat answer (a packed WorkerStats) */
    size_t stats_len;
    int stats_seen;                 /* it has answered a heartbeat (all-zero stats pack to nothing) */
    uint64_t committed;             /* a worker: the position its last commit frame announced
                                       (kept across its restarts until the next says more) */
    int64_t ping_sent_us;
    struct standby standby;
    struct evbuffer *waiting;       /* tagged requests held until ready */
    size_t n_waiting;
    struct event *wait_timer;       /* held requests time out */
    struct sup *sup;
};

struct sup_hooks {
    void *arg;
    /* A reply frame body (tag removed) from `c`; -1 when `tag` answers no
     * request of `c` (the worker is confused: it is killed). */
    int (*reply)(void *arg, struct child *c, uint64_t tag, const uint8_t *body, size_t len);
    /* `c` died while running: answer what it had in hand. */
    void (*down)(void *arg, struct child *c, const char *reason);
    /* `c`'s held requests timed out, or will never be delivered. */
    void (*expire)(void *arg, struct child *c, const char *reason);
    /* `c` reported ready (it is running). May be NULL. */
    void (*up)(void *arg, struct child *c);
    /* A worker's committed batch (a packed cqrs.Commit; c->committed is set
     * already). May be NULL. */
    void (*commit)(void *arg, struct child *c, const uint8_t *body, size_t len);
    /* Every child is running for the first time (called with booted_arg). */
    void (*booted)(void *arg);
    void *booted_arg;
};

struct sup_options {
    const char *worker_path;
    const char *projector_path;     /* for children of kind projector */
    const char *data_dir;
    struct flusher *flusher;        /* writes the children's channels once a turn */
    unsigned wait_timeout_ms;       /* how long a held request waits */
    size_t wait_limit;              /* held requests per child */
};

struct sup;

struct sup *sup_new(struct event_base *base, const struct cqrsd_config *cfg,
                    const struct sup_options *opt, const struct sup_hooks *hooks);
void sup_free(struct sup *s);

/* Starts the children in order. */
void sup_start(struct sup *s);
/* Stops every child in reverse order, then leaves the event loop. */
void sup_stop(struct sup *s);
/* 0 after a clean stop; 1 after giving up (boot failure or intensity). */
int sup_exit_code(const struct sup *s);

/* Applies a new configuration (reload): supervisor values at once; a child
 * no longer listed is stopped and removed, a new one started, a changed
 * one (restart type, shutdown, or any [storage] value) restarted; the rest
 * keep running untouched. `done` is called once the plan is carried out.
 * -1 with errno EBUSY while booting, stopping or already reloading. */
int sup_reload(struct sup *s, const struct cqrsd_config *cfg, void (*done)(void *arg), void *arg);

/* Booting, stopping or reloading: no reload now. */
int sup_busy(const struct sup *s);

/* Stops `c` gracefully and starts it again (terminate_child +
 * restart_child): whatever its restart type, not counted as a crash. */
void sup_restart_child(struct child *c);

size_t sup_count(const struct sup *s);
struct child *sup_child(struct sup *s, size_t i);
struct child *sup_find(struct sup *s, const char *name);

/* Hands a tagged request to `c`: sent at once when it is running, held
 * while it starts. -1 with errno EBUSY when the hold queue is full, or
 * ESRCH when the child is stopped for good (temporary, or shutting down). */
int sup_send(struct child *c, uint64_t tag, const uint8_t *body, size_t len);

/* Calls `fn` with the tag of every request held for `c` (not yet sent to
 * any worker: it survives the death of the current one). */
void sup_held_tags(struct child *c, void (*fn)(void *arg, uint64_t tag), void *arg);

/* What the child runs, for sentences: "worker" or "projector". */
const char *sup_noun(const struct child *c);

/* The state as shown by STATUS: "starting", "running", "restarting", "stopped". */
const char *sup_state_name(const struct child *c);

#endif
