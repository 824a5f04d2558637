/* sup — see sup.h. */
#include "sup.h"

#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "frame.h"
#include "pbwire.h"
#include "log.h"

#define SUP_MAX_FRAME (64u << 20)   /* workers are ours, but still bounded */

extern char **environ;

struct sup {
    struct event_base *base;
    struct cqrsd_config cfg;
    struct sup_options opt;
    struct sup_hooks hooks;
    struct child *children[2 * CONFIG_MAX_CHILDREN];   /* start order */
    size_t n;
    struct sup_policy policy;
    struct event *sigchld;
    struct event *heartbeat;
    struct child *stop_q[2 * CONFIG_MAX_CHILDREN];   /* the plan: stop these, */
    size_t n_stop;
    struct child *start_q[2 * CONFIG_MAX_CHILDREN];  /* then start these */
    size_t n_start;
    int booting;        /* the first start of every child */
    int reloading;      /* a reload's plan is being carried out */
    void (*reload_done)(void *arg);
    void *reload_arg;
    int stopping;
    int exit_code;
};

const char *sup_noun(const struct child *c)
{
    return c->cfg.kind == CHILD_PROJECTOR ? "projector" : "worker";
}

static int64_t sup_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t sup_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sup_arm(struct event *ev, unsigned ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(ev, &tv);
}

static void sup_step(struct sup *s);
static void sup_child_free(struct child *c);
static void sup_remove(struct sup *s, struct child *c);
static void sup_on_timer(evutil_socket_t fd, short what, void *arg);
static void sup_on_wait_timer(evutil_socket_t fd, short what, void *arg);
static void sup_standby_stop(struct standby *sb);

static int sup_find_ptr(const struct sup *s, const struct child *c)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->children[i] == c)
            return 1;
    return 0;
}

static int sup_queued_to_start(const struct sup *s, const struct child *c)
{
    for (size_t i = 0; i < s->n_start; i++)
        if (s->start_q[i] == c)
            return 1;
    return 0;
}

void sup_held_tags(struct child *c, void (*fn)(void *arg, uint64_t tag), void *arg)
{
    struct evbuffer_ptr pos;
    evbuffer_ptr_set(c->waiting, &pos, 0, EVBUFFER_PTR_SET);
    size_t len = evbuffer_get_length(c->waiting);
    while ((size_t)pos.pos + FRAME_HEADER_LEN + FRAME_TAG_LEN <= len) {
        uint8_t hdr[FRAME_HEADER_LEN + FRAME_TAG_LEN];
        if (evbuffer_copyout_from(c->waiting, &pos, hdr, sizeof hdr) != (ev_ssize_t)sizeof hdr)
            break;
        fn(arg, frame_get64(hdr + FRAME_HEADER_LEN));
        if (evbuffer_ptr_set(c->waiting, &pos, FRAME_HEADER_LEN + frame_get32(hdr),
                             EVBUFFER_PTR_ADD) < 0)
            break;
    }
}

const char *sup_state_name(const struct child *c)
{
    switch (c->state) {
    case CHILD_RUNNING: return "running";
    case CHILD_STARTING: return c->restarts ? "restarting" : "starting";
    default: return sup_queued_to_start(c->sup, c) ? "restarting" : "stopped";
    }
}

/* ---- the plan ------------------------------------------------------------- */

static void sup_plan_stop(struct sup *s, struct child *c)
{
    for (size_t i = 0; i < s->n_stop; i++)
        if (s->stop_q[i] == c)
            return;
    s->stop_q[s->n_stop++] = c;
}

static void sup_plan_start(struct sup *s, struct child *c)
{
    if (!sup_queued_to_start(s, c))
        s->start_q[s->n_start++] = c;
}

/* Gives up: stops everything and exits 1 (systemd decides what next). */
static void sup_give_up(struct sup *s)
{
    if (s->stopping)
        return;
    s->exit_code = 1;
    sup_stop(s);
}

/* A running worker gets "Q" in its socket, after every request already sent
 * to it (OTP's shutdown exit signal is a message too), so it answers all of
 * them before it exits; a starting one gets SIGTERM. Either way, SIGKILL
 * after its shutdown time; brutal_kill is SIGKILL at once. */
static void sup_terminate(struct child *c)
{
    c->terminating = 1;
    evtimer_del(c->timer);
    if (c->cfg.shutdown_ms == CONFIG_BRUTAL_KILL) {
        log_info("stopping child %s (pid %d): brutal_kill", c->name, (int)c->pid);
        kill(c->pid, SIGKILL);
        return;
    }
    uint64_t zero = 0;
    if (c->state == CHILD_RUNNING && c->bev &&
        frame_put_bytes(bufferevent_get_output(c->bev), &zero, "Q", 1) == 0) {
        log_info("stopping child %s (pid %d)", c->name, (int)c->pid);
    } else {
        log_info("stopping child %s (pid %d) with SIGTERM", c->name, (int)c->pid);
        kill(c->pid, SIGTERM);
    }
    sup_arm(c->timer, (unsigned)c->cfg.shutdown_ms);
}

static void sup_on_read(struct bufferevent *bev, void *arg);
static void sup_on_bev_event(struct bufferevent *bev, short what, void *arg);

/* posix_spawn (vfork-like: the daemon's size does not matter) of a worker
 * for `name` with its end of a socketpair as fd 3; *fd is the daemon's end.
 * The worker sets PR_SET_PDEATHSIG itself and checks that its parent is
 * still the pid it was given. */
static pid_t sup_launch(struct sup *s, const struct child *c, int standby, int *fd)
{
    const char *name = c->name;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        log_error("child %s: socketpair: %s", name, strerror(errno));
        return -1;
    }
    char ppid[16], buf[512];
    snprintf(ppid, sizeof ppid, "%d", (int)getpid());
    char *argv[11 + CONFIG_WORKER_ARGS] = { "cqrs-worker", "--type", (char *)name, "--data-dir",
                                            (char *)s->opt.data_dir, "--fd", "3",
                                            "--supervisor-pid", ppid };
    const char *path = s->opt.worker_path;
    size_t n = 9 + config_worker_args(&s->cfg.storage, argv + 9, buf, sizeof buf);
    if (standby)
        argv[n] = "--standby";
    if (c->cfg.kind == CHILD_PROJECTOR) {   /* the same, less the worker's own options */
        path = s->opt.projector_path;
        argv[0] = "cqrs-projector";
        memmove(argv + 1, argv + 3, 6 * sizeof *argv);
        argv[7] = NULL;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE);   /* ignored here, default in the worker */
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
    posix_spawnattr_init(&at);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &defaults);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawn(&pid, path, &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(sv[1]);
    if (rc != 0) {
        log_error("child %s: cannot run %s: %s", name, path, strerror(rc));
        close(sv[0]);
        return -1;
    }
    evutil_make_socket_nonblocking(sv[0]);
    *fd = sv[0];
    return pid;
}

static void sup_standby_on_read(struct bufferevent *bev, void *arg)
{
    struct standby *sb = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct frame f;
    enum frame_status st = frame_next(in, SUP_MAX_FRAME, &f);
    if (st == FRAME_OK && frame_untag(&f) == 0 && f.tag == 0 && f.len == 1 && f.body[0] == 'S' &&
        !sb->ready) {
        sb->ready = 1;
        frame_consume(in, &f);
        return;
    }
    if (st != FRAME_NEED_MORE && sb->pid > 0) {
        log_error("standby %s (pid %d) sent something unexpected; killing it", sb->child->name,
                  (int)sb->pid);
        bufferevent_disable(bev, EV_READ);
        kill(sb->pid, SIGKILL);
    }
}

/* Starts a standby worker for `c`, to be adopted at its next restart. */
static void sup_standby_start(struct child *c)
{
    struct sup *s = c->sup;
    struct standby *sb = &c->standby;
    int fd;
    if (!s->cfg.standby || s->stopping || sb->pid > 0 || c->cfg.kind != CHILD_WORKER)
        return;
    pid_t pid = sup_launch(s, c, 1, &fd);
    if (pid < 0)
        return;   /* restarts will spawn, as without standby */
    sb->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!sb->bev) {
        close(fd);
        kill(pid, SIGKILL);
        return;
    }
    bufferevent_setcb(sb->bev, sup_standby_on_read, NULL, sup_on_bev_event, sb);
    bufferevent_enable(sb->bev, EV_READ);
    sb->pid = pid;
    sb->ready = 0;
    sb->child = c;
    log_debug("child %s: standby worker started (pid %d)", c->name, (int)pid);
}

static void sup_standby_stop(struct standby *sb)
{
    if (sb->pid > 0)
        kill(sb->pid, SIGKILL);   /* it holds nothing: no need to be gentle */
}

/* Starts `c`: adopts its standby worker if it has one, else spawns. */
static int sup_spawn(struct child *c)
{
    struct sup *s = c->sup;
    struct standby *sb = &c->standby;
    int adopted = sb->pid > 0;
    pid_t pid;
    if (adopted) {
        pid = sb->pid;
        c->bev = sb->bev;
        *sb = (struct standby){ 0 };
    } else {
        int fd;
        if ((pid = sup_launch(s, c, 0, &fd)) < 0)
            return -1;
        c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (!c->bev) {
            log_error("child %s: cannot set up its socket", c->name);
            close(fd);
            kill(pid, SIGKILL);
            return -1;
        }
    }
    bufferevent_set_max_single_read(c->bev, 1 << 20);
    bufferevent_setcb(c->bev, sup_on_read, NULL, sup_on_bev_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (s->opt.flusher)
        c->flush = flusher_watch(s->opt.flusher, c->bev);   /* NULL: it writes by itself */
    if (c->started)
        c->restarts++;
    c->started = 1;
    c->pid = pid;
    c->state = CHILD_STARTING;
    c->ping_out = 0;
    c->stats_len = 0;
    c->stats_seen = 0;
    c->exit_noted = 0;
    c->started_at_us = sup_now_us();
    log_info("child %s starting (pid %d%s)", c->name, (int)pid,
             adopted ? ", standby worker adopted" : "");
    if (adopted) {   /* it opens its storage now, then says ready */
        uint64_t zero = 0;
        frame_put_bytes(bufferevent_get_output(c->bev), &zero, "A", 1);
    }
    sup_arm(c->timer, s->cfg.start_timeout_ms);
    return 0;
}

/* Carries the plan out: one child stopping or starting at a time. */
static void sup_step(struct sup *s)
{
    for (;;) {
        for (size_t i = 0; i < s->n; i++) {
            struct child *c = s->children[i];
            if (c->pid > 0 && (c->terminating || (c->state == CHILD_STARTING && !s->stopping)))
                return;   /* wait for its exit, or its ready */
        }
        if (s->n_stop) {
            struct child *c = s->stop_q[0];
            memmove(s->stop_q, s->stop_q + 1, --s->n_stop * sizeof *s->stop_q);
            if (c->pid > 0) {
                sup_terminate(c);
                return;
            }
            continue;
        }
        if (s->n_start && !s->stopping) {
            struct child *c = s->start_q[0];
            memmove(s->start_q, s->start_q + 1, --s->n_start * sizeof *s->start_q);
            if (c->pid > 0)
                continue;
            if (sup_spawn(c) == 0)
                return;
            snprintf(c->last_exit, sizeof c->last_exit, "could not be started");
            sup_give_up(s);
            return;
        }
        break;
    }
    if (s->stopping) {
        /* Everything held can never be delivered now. */
        for (size_t i = 0; i < s->n; i++) {
            struct child *c = s->children[i];
            if (c->n_waiting) {
                evbuffer_drain(c->waiting, evbuffer_get_length(c->waiting));
                c->n_waiting = 0;
                s->hooks.expire(s->hooks.arg, c, "cqrsd is shutting down");
            }
        }
        event_base_loopexit(s->base, NULL);
    } else if (s->reloading) {
        s->reloading = 0;
        for (size_t i = s->n; i-- > 0;)
            if (s->children[i]->removing && s->children[i]->pid <= 0)
                sup_remove(s, s->children[i]);
        log_info("reload done: %zu children", s->n);
        if (s->reload_done)
            s->reload_done(s->reload_arg);
    } else if (s->booting) {
        s->booting = 0;
        log_info("all %zu children running (%s)", s->n, config_strategy_name(s->cfg.strategy));
        if (s->hooks.booted)
            s->hooks.booted(s->hooks.booted_arg);
    }
}

/* ---- events from children -------------------------------------------------- */

static void sup_on_ready(struct child *c)
{
    c->state = CHILD_RUNNING;
    evtimer_del(c->timer);
    evtimer_del(c->wait_timer);
    log_info("child %s running (pid %d%s)", c->name, (int)c->pid, c->restarts ? ", restarted" : "");
    if (c->n_waiting) {
        evbuffer_add_buffer(bufferevent_get_output(c->bev), c->waiting);
        c->n_waiting = 0;
    }
    sup_standby_start(c);
    if (c->sup->hooks.up)
        c->sup->hooks.up(c->sup->hooks.arg, c);
    sup_step(c->sup);
}

/* Handles the whole frames in `in` (from `c`'s socket). */
static void sup_dispatch(struct child *c, struct evbuffer *in)
{
    struct bufferevent *bev = c->bev;
    struct frame f;
    enum frame_status st;
    while ((st = frame_next(in, SUP_MAX_FRAME, &f)) == FRAME_OK) {
        if (frame_untag(&f) < 0) {
            st = FRAME_TOO_BIG;   /* malformed: treated like any bad frame */
            break;
        }
        if (f.tag == 0) {
            if (f.len == 1 && f.body[0] == 'S')
                ;   /* an adopted standby's own hello, arriving late */
            else if (c->state == CHILD_STARTING)
                sup_on_ready(c);
            else {
                c->ping_out = 0;   /* pong, with the worker's counters */
                c->stats_len = f.len <= sizeof c->stats ? f.len : 0;
                memcpy(c->stats, f.body, c->stats_len);
                c->stats_seen = 1;
            }
        } else if (f.tag == FRAME_TAG_COMMIT) {
            /* Commit.position, field 1 (absent: 0), read without decoding the events */
            uint64_t position = 0;
            if (c->cfg.kind != CHILD_WORKER) {
                st = FRAME_TOO_BIG;   /* only workers commit */
                frame_consume(in, &f);
                break;
            }
            if (pbwire_varint_field(f.body, f.len, 1, &position) < 0) {
                log_error("child %s sent a commit that is not well-formed protobuf; ignored "
                          "(the projector reads the journal)", c->name);
            } else {
                c->committed = position;
                if (c->sup->hooks.commit)
                    c->sup->hooks.commit(c->sup->hooks.arg, c, f.body, f.len);
            }
        } else if (c->state == CHILD_RUNNING &&
                   c->sup->hooks.reply(c->sup->hooks.arg, c, f.tag, f.body, f.len) < 0) {
            st = FRAME_TOO_BIG;   /* a reply to nothing: as bad as a malformed frame */
            frame_consume(in, &f);
            break;
        }
        frame_consume(in, &f);
        if (!c->bev)
            return;   /* a hook closed this child */
    }
    if (st == FRAME_TOO_BIG && c->pid > 0) {
        log_error("child %s (pid %d) sent a malformed or unexpected frame; killing it", c->name,
                  (int)c->pid);
        snprintf(c->last_exit, sizeof c->last_exit, "killed: sent a malformed or unexpected frame");
        c->exit_noted = 1;
        bufferevent_disable(bev, EV_READ);
        kill(c->pid, SIGKILL);
    }
}

static void sup_on_read(struct bufferevent *bev, void *arg)
{
    sup_dispatch(arg, bufferevent_get_input(bev));
}

/* A worker that has exited may have written replies the loop has not read
 * yet (SIGCHLD can come first): they are read and delivered before the
 * requests still pending are failed. */
static void sup_drain(struct child *c)
{
    struct evbuffer *in = evbuffer_new();
    if (!in)
        return;
    evbuffer_add_buffer(in, bufferevent_get_input(c->bev));   /* its end stays frozen */
    int fd = bufferevent_getfd(c->bev);
    while (evbuffer_read(in, fd, 1 << 20) > 0)
        ;
    if (c->state == CHILD_RUNNING)
        sup_dispatch(c, in);
    evbuffer_free(in);
}

static void sup_on_bev_event(struct bufferevent *bev, short what, void *arg)
{
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        bufferevent_disable(bev, EV_READ | EV_WRITE);   /* the exit comes via SIGCHLD */
}

static void sup_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct child *c = arg;
    (void)fd;
    (void)what;
    if (c->pid <= 0)
        return;
    if (c->terminating) {
        log_warn("child %s (pid %d) still running %d ms after it was asked to stop; sending "
                 "SIGKILL", c->name, (int)c->pid, c->cfg.shutdown_ms);
    } else if (c->state == CHILD_STARTING) {
        log_error("child %s (pid %d) did not report ready within %u ms; killing it", c->name,
                  (int)c->pid, c->sup->cfg.start_timeout_ms);
        snprintf(c->last_exit, sizeof c->last_exit, "did not report ready within %u ms",
                 c->sup->cfg.start_timeout_ms);
        c->exit_noted = 1;
    }
    kill(c->pid, SIGKILL);
}

static void sup_on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    struct sup *s = arg;
    (void)fd;
    (void)what;
    int64_t now = sup_mono_us();
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = s->children[i];
        if (c->state != CHILD_RUNNING || c->terminating || !c->bev)
            continue;
        if (c->ping_out) {
            if (now - c->ping_sent_us >= (int64_t)s->cfg.heartbeat_timeout_ms * 1000) {
                log_error("child %s (pid %d) is hung: no heartbeat for %u ms; killing it", c->name,
                          (int)c->pid, s->cfg.heartbeat_timeout_ms);
                snprintf(c->last_exit, sizeof c->last_exit, "hung: no heartbeat for %u ms",
                         s->cfg.heartbeat_timeout_ms);
                c->exit_noted = 1;
                c->ping_out = 0;
                kill(c->pid, SIGKILL);
            }
        } else {
            uint64_t zero = 0;
            if (frame_put_bytes(bufferevent_get_output(c->bev), &zero, NULL, 0) == 0) {
                c->ping_out = 1;
                c->ping_sent_us = now;
            }
        }
    }
}

static void sup_on_wait_timer(evutil_socket_t fd, short what, void *arg)
{
    struct child *c = arg;
    (void)fd;
    (void)what;
    if (c->n_waiting == 0)
        return;
    char reason[160];
    snprintf(reason, sizeof reason, "the %s %s was not ready within %u ms", c->name, sup_noun(c),
             c->sup->opt.wait_timeout_ms);
    evbuffer_drain(c->waiting, evbuffer_get_length(c->waiting));
    c->n_waiting = 0;
    c->sup->hooks.expire(c->sup->hooks.arg, c, reason);
}

/* Queues the restart of `c` and of the siblings its strategy takes along. */
static void sup_plan_restart(struct sup *s, struct child *c)
{
    size_t first = 0;   /* one_for_all: everyone */
    switch (s->cfg.strategy) {
    case SUP_ONE_FOR_ONE:
        sup_plan_start(s, c);
        return;
    case SUP_REST_FOR_ONE:
        first = (size_t)c->index;
        break;
    case SUP_ONE_FOR_ALL:
        break;
    }
    for (size_t j = s->n; j-- > first;)
        if (s->children[j] != c && s->children[j]->pid > 0)
            sup_plan_stop(s, s->children[j]);
    for (size_t j = first; j < s->n; j++) {
        struct child *o = s->children[j];
        /* a temporary sibling stopped by the group restart stays stopped */
        if (o == c || o->cfg.restart != RESTART_TEMPORARY)
            sup_plan_start(s, o);
    }
}

static void sup_on_exit(struct child *c, int status)
{
    struct sup *s = c->sup;
    enum child_state was = c->state;
    int abnormal = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!c->exit_noted) {
        if (WIFEXITED(status))
            snprintf(c->last_exit, sizeof c->last_exit, "exited with status %d", WEXITSTATUS(status));
        else if (WIFSIGNALED(status))
            snprintf(c->last_exit, sizeof c->last_exit, "killed by signal %d", WTERMSIG(status));
        else
            snprintf(c->last_exit, sizeof c->last_exit, "ended with wait status %d", status);
    }
    c->exit_noted = 0;
    log_info("child %s (pid %d) %s", c->name, (int)c->pid, c->last_exit);
    if (c->bev && was == CHILD_RUNNING)
        sup_drain(c);
    c->pid = 0;
    c->state = CHILD_STOPPED;
    c->ping_out = 0;
    evtimer_del(c->timer);
    if (c->bev) {
        flusher_unwatch(c->flush);
        c->flush = NULL;
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (was == CHILD_RUNNING) {
        char why[200];
        snprintf(why, sizeof why, "the %s %s died (%s)", c->name, sup_noun(c), c->last_exit);
        s->hooks.down(s->hooks.arg, c, why);
    }
    if (c->terminating) {   /* we stopped it */
        c->terminating = 0;
        if (c->restart_requested && !s->stopping)
            sup_plan_start(s, c);
        c->restart_requested = 0;
        sup_step(s);
        return;
    }
    if (s->stopping || c->removing) {
        sup_step(s);
        return;
    }
    if (s->booting) {
        log_error("child %s failed to start: %s", c->name, c->last_exit);
        sup_give_up(s);
        return;
    }
    int restart = c->cfg.restart == RESTART_PERMANENT ||
                  (c->cfg.restart == RESTART_TRANSIENT && abnormal);
    if (!restart) {
        log_info("child %s is %s and %s: not restarted", c->name,
                 config_restart_name(c->cfg.restart), abnormal ? "died" : "exited normally");
        if (c->n_waiting) {
            char why[160];
            snprintf(why, sizeof why, "the %s %s is stopped", c->name, sup_noun(c));
            evbuffer_drain(c->waiting, evbuffer_get_length(c->waiting));
            c->n_waiting = 0;
            s->hooks.expire(s->hooks.arg, c, why);
        }
        sup_step(s);
        return;
    }
    if (!sup_policy_allow(&s->policy, sup_mono_us())) {
        log_error("more than %u restarts in %u s: giving up", s->cfg.intensity, s->cfg.period_s);
        sup_give_up(s);
        return;
    }
    sup_plan_restart(s, c);
    sup_step(s);
}

static void sup_on_sigchld(evutil_socket_t sig, short what, void *arg)
{
    struct sup *s = arg;
    (void)sig;
    (void)what;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (size_t i = 0; i < s->n; i++) {
            struct child *c = s->children[i];
            if (c->pid == pid) {
                sup_on_exit(c, status);
                break;
            }
            if (c->standby.pid == pid) {   /* a new one comes with the next start */
                if (!s->stopping)
                    log_warn("child %s: standby worker (pid %d) ended", c->name, (int)pid);
                bufferevent_free(c->standby.bev);
                c->standby = (struct standby){ 0 };
                break;
            }
        }
    }
}

/* ---- the API ---------------------------------------------------------------- */

static struct child *sup_child_new(struct sup *s, const struct child_config *cfg)
{
    struct child *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cfg = *cfg;
    c->name = c->cfg.name;
    c->sup = s;
    c->timer = evtimer_new(s->base, sup_on_timer, c);
    c->wait_timer = evtimer_new(s->base, sup_on_wait_timer, c);
    c->waiting = evbuffer_new();
    if (!c->timer || !c->wait_timer || !c->waiting) {
        sup_child_free(c);
        return NULL;
    }
    return c;
}

static void sup_child_free(struct child *c)
{
    if (!c)
        return;
    if (c->bev) {
        flusher_unwatch(c->flush);
        bufferevent_free(c->bev);
    }
    if (c->standby.bev)
        bufferevent_free(c->standby.bev);
    if (c->timer)
        event_free(c->timer);
    if (c->wait_timer)
        event_free(c->wait_timer);
    if (c->waiting)
        evbuffer_free(c->waiting);
    free(c);
}

static void sup_reindex(struct sup *s)
{
    for (size_t i = 0; i < s->n; i++)
        s->children[i]->index = (int)i;
}

struct sup *sup_new(struct event_base *base, const struct cqrsd_config *cfg,
                    const struct sup_options *opt, const struct sup_hooks *hooks)
{
    struct sup *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->base = base;
    s->cfg = *cfg;
    s->opt = *opt;
    s->hooks = *hooks;
    s->sigchld = evsignal_new(base, SIGCHLD, sup_on_sigchld, s);
    s->heartbeat = event_new(base, -1, EV_PERSIST, sup_on_heartbeat, s);
    if (!s->sigchld || !s->heartbeat) {
        sup_free(s);
        return NULL;
    }
    sup_policy_init(&s->policy, cfg->intensity, (int64_t)cfg->period_s * 1000000);
    for (size_t i = 0; i < cfg->n_children; i++) {
        if (!(s->children[s->n] = sup_child_new(s, &cfg->children[i]))) {
            sup_free(s);
            return NULL;
        }
        s->n++;
    }
    sup_reindex(s);
    return s;
}

void sup_free(struct sup *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        sup_child_free(s->children[i]);
    if (s->sigchld)
        event_free(s->sigchld);
    if (s->heartbeat)
        event_free(s->heartbeat);
    free(s);
}

/* A child removed by a reload is gone once it has stopped. */
static void sup_remove(struct sup *s, struct child *c)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->children[i] == c) {
            memmove(&s->children[i], &s->children[i + 1], (s->n - i - 1) * sizeof *s->children);
            s->n--;
            break;
        }
    sup_reindex(s);
    log_info("child %s removed", c->name);
    if (c->n_waiting) {
        char why[160];
        snprintf(why, sizeof why, "the %s %s was removed by a reload", c->name, sup_noun(c));
        evbuffer_drain(c->waiting, evbuffer_get_length(c->waiting));
        c->n_waiting = 0;
        s->hooks.expire(s->hooks.arg, c, why);
    }
    sup_child_free(c);
}

static int sup_child_config_equal(const struct child_config *a, const struct child_config *b)
{
    return a->restart == b->restart && a->shutdown_ms == b->shutdown_ms && a->kind == b->kind;
}

int sup_busy(const struct sup *s)
{
    return s->stopping || s->booting || s->reloading;
}

int sup_reload(struct sup *s, const struct cqrsd_config *cfg, void (*done)(void *arg), void *arg)
{
    if (s->stopping || s->booting || s->reloading) {
        errno = EBUSY;
        return -1;
    }
    int storage_changed = memcmp(&s->cfg.storage, &cfg->storage, sizeof cfg->storage) != 0;
    struct child *next[CONFIG_MAX_CHILDREN];
    size_t n = 0;
    for (size_t i = 0; i < cfg->n_children; i++) {
        struct child *c = sup_find(s, cfg->children[i].name);
        if (c && c->removing)
            c = NULL;   /* removed by an earlier reload and still stopping */
        if (!c) {
            if (!(c = sup_child_new(s, &cfg->children[i]))) {
                for (size_t j = 0; j < n; j++)
                    if (!next[j]->started && next[j]->pid == 0 && !sup_find_ptr(s, next[j]))
                        sup_child_free(next[j]);
                errno = ENOMEM;
                return -1;
            }
            log_info("reload: child %s added", c->name);
            c->reload_start = 1;
        } else if (!sup_child_config_equal(&c->cfg, &cfg->children[i]) || storage_changed) {
            log_info("reload: child %s changed: restarting it", c->name);
            c->cfg = cfg->children[i];
            c->name = c->cfg.name;
            c->reload_restart = 1;
        }
        next[n++] = c;
    }
    /* children no longer configured are stopped, then removed */
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = s->children[i];
        int kept = 0;
        for (size_t j = 0; j < n; j++)
            kept |= next[j] == c;
        if (!kept) {
            if (!c->removing)
                log_info("reload: child %s removed from the configuration: stopping it", c->name);
            c->removing = 1;
            next[n++] = c;   /* stays listed until it has stopped */
        }
    }
    memcpy(s->children, next, n * sizeof *next);
    s->n = n;
    sup_reindex(s);

    unsigned old_intensity = s->cfg.intensity, old_period = s->cfg.period_s;
    s->cfg = *cfg;
    if (cfg->intensity != old_intensity || cfg->period_s != old_period)
        sup_policy_init(&s->policy, cfg->intensity, (int64_t)cfg->period_s * 1000000);
    event_del(s->heartbeat);
    if (cfg->heartbeat_ms) {
        struct timeval tv = { cfg->heartbeat_ms / 1000, (cfg->heartbeat_ms % 1000) * 1000 };
        event_add(s->heartbeat, &tv);
    }

    /* the plan: removed ones stop, changed ones stop and start, new ones start */
    for (size_t i = s->n; i-- > 0;) {
        struct child *c = s->children[i];
        if (c->removing) {
            sup_standby_stop(&c->standby);
            if (c->pid > 0)
                sup_plan_stop(s, c);
        } else if (c->reload_restart) {
            sup_standby_stop(&c->standby);   /* started with the old storage options */
            if (c->pid > 0) {
                c->restart_requested = 1;
                sup_plan_stop(s, c);
            } else {
                sup_plan_start(s, c);
            }
        }
    }
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = s->children[i];
        if (c->reload_start)
            sup_plan_start(s, c);
        c->reload_start = c->reload_restart = 0;
    }
    s->reloading = 1;
    s->reload_done = done;
    s->reload_arg = arg;
    sup_step(s);
    return 0;
}

void sup_start(struct sup *s)
{
    event_add(s->sigchld, NULL);
    if (s->cfg.heartbeat_ms) {
        struct timeval tv = { s->cfg.heartbeat_ms / 1000, (s->cfg.heartbeat_ms % 1000) * 1000 };
        event_add(s->heartbeat, &tv);
    }
    s->booting = 1;
    for (size_t i = 0; i < s->n; i++)
        sup_plan_start(s, s->children[i]);
    sup_step(s);
}

void sup_stop(struct sup *s)
{
    if (s->stopping)
        return;
    s->stopping = 1;
    s->booting = 0;
    s->n_start = 0;
    s->n_stop = 0;
    event_del(s->heartbeat);
    for (size_t i = 0; i < s->n; i++)
        sup_standby_stop(&s->children[i]->standby);
    for (size_t i = s->n; i-- > 0;) {
        struct child *c = s->children[i];
        if (c->pid > 0 && !c->terminating) {
            evtimer_del(c->timer);   /* start timeouts no longer apply */
            sup_plan_stop(s, c);
        }
    }
    sup_step(s);
}

void sup_restart_child(struct child *c)
{
    struct sup *s = c->sup;
    if (s->stopping)
        return;
    if (c->pid > 0) {
        c->restart_requested = 1;
        sup_plan_stop(s, c);
    } else {
        sup_plan_start(s, c);
    }
    sup_step(s);
}

int sup_exit_code(const struct sup *s)
{
    return s->exit_code;
}

size_t sup_count(const struct sup *s)
{
    return s->n;
}

struct child *sup_child(struct sup *s, size_t i)
{
    return i < s->n ? s->children[i] : NULL;
}

struct child *sup_find(struct sup *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (!s->children[i]->removing && strcmp(s->children[i]->name, name) == 0)
            return s->children[i];
    return NULL;
}

int sup_send(struct child *c, uint64_t tag, const uint8_t *body, size_t len)
{
    struct sup *s = c->sup;
    if (c->state == CHILD_RUNNING && c->bev && !c->terminating)
        return frame_put_bytes(bufferevent_get_output(c->bev), &tag, body, len);
    if (s->stopping || (c->pid <= 0 && !sup_queued_to_start(s, c) && !c->restart_requested)) {
        errno = ESRCH;
        return -1;
    }
    if (c->n_waiting >= s->opt.wait_limit) {
        errno = EBUSY;
        return -1;
    }
    if (frame_put_bytes(c->waiting, &tag, body, len) < 0)
        return -1;
    if (c->n_waiting++ == 0)
        sup_arm(c->wait_timer, s->opt.wait_timeout_ms);
    return 0;
}
