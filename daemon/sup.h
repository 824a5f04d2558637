/*
 * sup — the supervisor: one worker process per child (an aggregate type),
 * started in order, each ready before the next starts (OTP's start_link);
 * reaped through SIGCHLD on the event loop; restarted alone when it dies
 * (one_for_one, permanent), within OTP's restart intensity; stopped in
 * reverse order (SIGTERM, then SIGKILL after the shutdown timeout).
 *
 * A child's life:  stopped → starting → running → (exit) → starting …
 * Requests for a child that is not running wait in its queue (bounded,
 * with a timeout) and go out when it reports ready.
 *
 * The daemon end of each child's socketpair carries tagged frames (see
 * lib/frame.h); tag-0 frames are the supervisor channel (the worker's ready
 * message), the rest are replies, handed to the router through the hooks.
 */
#ifndef CQRS_SUP_H
#define CQRS_SUP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <event2/event.h>
#include <event2/bufferevent.h>

#include "sup_policy.h"

enum child_state { CHILD_STOPPED, CHILD_STARTING, CHILD_RUNNING };

struct child {
    char name[64];                  /* the aggregate type */
    int index;                      /* start order */
    pid_t pid;                      /* 0 when not running */
    enum child_state state;
    struct bufferevent *bev;        /* daemon end of the socketpair */
    struct event *timer;            /* start or shutdown timeout */
    uint32_t restarts;
    int64_t started_at_us;
    char last_exit[96];
    int timed_out;                  /* killed for not reporting ready */
    struct evbuffer *waiting;       /* tagged requests held until ready */
    size_t n_waiting;
    struct event *wait_timer;       /* held requests time out */
    struct sup *sup;
};

struct sup_hooks {
    void *arg;
    /* A reply frame body (tag removed) from `c`. */
    void (*reply)(void *arg, struct child *c, uint64_t tag, const uint8_t *body, size_t len);
    /* `c` died: answer what it had in hand. */
    void (*down)(void *arg, struct child *c, const char *reason);
    /* `c`'s held requests timed out, or will never be delivered. */
    void (*expire)(void *arg, struct child *c, const char *reason);
    /* Every child is running for the first time. */
    void (*booted)(void *arg);
};

struct sup_config {
    const char *worker_path;
    const char *data_dir;
    const char *const *children;    /* names, in start order */
    size_t n_children;
    unsigned intensity;             /* restarts allowed ... */
    unsigned period_s;              /* ... within this many seconds */
    unsigned start_timeout_ms;
    unsigned shutdown_timeout_ms;
    unsigned wait_timeout_ms;       /* how long a held request waits */
    size_t wait_limit;              /* held requests per child */
};

struct sup;

struct sup *sup_new(struct event_base *base, const struct sup_config *cfg,
                    const struct sup_hooks *hooks);
void sup_free(struct sup *s);

/* Starts the children in order. */
int sup_start(struct sup *s);
/* Stops every child in reverse order, then leaves the event loop. */
void sup_stop(struct sup *s);
/* 0 after a clean stop; 1 after giving up (boot failure or intensity). */
int sup_exit_code(const struct sup *s);

size_t sup_count(const struct sup *s);
struct child *sup_child(struct sup *s, size_t i);
struct child *sup_find(struct sup *s, const char *name);

/* Hands a tagged request to `c`: sent at once when it is running, else held.
 * Returns 0, or -1 when the hold queue is full (BUSY). */
int sup_send(struct child *c, uint64_t tag, const uint8_t *body, size_t len);

/* The state as shown by STATUS: "starting", "running", "restarting", "stopped". */
const char *sup_state_name(const struct child *c);

#endif
