/* sup — see sup.h. */
#include "sup.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "cqrs.pb-c.h"
#include "frame.h"
#include "log.h"

#define SUP_MAX_FRAME (64u << 20)   /* workers are ours, but still bounded */

struct sup {
    struct event_base *base;
    struct sup_config cfg;
    struct sup_hooks hooks;
    struct child *children;
    size_t n;
    struct sup_policy policy;
    struct event *sigchld;
    int booting;        /* children are being started for the first time */
    int stopping;
    int exit_code;
};

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

static int sup_spawn(struct child *c);
static void sup_stop_next(struct sup *s);

const char *sup_state_name(const struct child *c)
{
    switch (c->state) {
    case CHILD_RUNNING: return "running";
    case CHILD_STARTING: return c->restarts ? "restarting" : "starting";
    default: return "stopped";
    }
}

/* Gives up: stops everything and exits 1 (systemd decides what next). */
static void sup_give_up(struct sup *s)
{
    if (s->stopping)
        return;
    s->exit_code = 1;
    sup_stop(s);
}

static void sup_on_ready(struct child *c)
{
    struct sup *s = c->sup;
    c->state = CHILD_RUNNING;
    evtimer_del(c->timer);
    evtimer_del(c->wait_timer);
    log_info("child %s running (pid %d%s)", c->name, (int)c->pid,
             c->restarts ? ", restarted" : "");
    if (c->n_waiting) {
        evbuffer_add_buffer(bufferevent_get_output(c->bev), c->waiting);
        c->n_waiting = 0;
    }
    if (s->booting) {
        if ((size_t)c->index + 1 < s->n) {
            if (sup_spawn(&s->children[c->index + 1]) < 0)
                sup_give_up(s);
        } else {
            s->booting = 0;
            log_info("all %zu children running", s->n);
            if (s->hooks.booted)
                s->hooks.booted(s->hooks.arg);
        }
    }
}

static void sup_on_read(struct bufferevent *bev, void *arg)
{
    struct child *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct frame f;
    enum frame_status st;
    while ((st = frame_next(in, SUP_MAX_FRAME, &f)) == FRAME_OK) {
        if (frame_untag(&f) < 0) {
            st = FRAME_TOO_BIG;   /* malformed: treat like any bad frame */
            break;
        }
        if (f.tag == 0) {
            if (c->state == CHILD_STARTING)
                sup_on_ready(c);
        } else {
            c->sup->hooks.reply(c->sup->hooks.arg, c, f.tag, f.body, f.len);
        }
        frame_consume(in, &f);
        if (!c->bev)
            return;   /* the hook closed this child */
    }
    if (st == FRAME_TOO_BIG && c->pid > 0) {
        log_error("child %s (pid %d) sent a malformed frame; killing it", c->name, (int)c->pid);
        bufferevent_disable(bev, EV_READ);
        kill(c->pid, SIGKILL);
    }
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
    if (c->state == CHILD_STARTING && !c->sup->stopping) {
        log_error("child %s (pid %d) did not report ready within %u ms; killing it", c->name,
                  (int)c->pid, c->sup->cfg.start_timeout_ms);
        snprintf(c->last_exit, sizeof c->last_exit, "did not report ready within %u ms",
                 c->sup->cfg.start_timeout_ms);
        c->timed_out = 1;
    } else {
        log_warn("child %s (pid %d) still running %u ms after SIGTERM; sending SIGKILL", c->name,
                 (int)c->pid, c->sup->cfg.shutdown_timeout_ms);
    }
    kill(c->pid, SIGKILL);
}

static void sup_on_wait_timer(evutil_socket_t fd, short what, void *arg)
{
    struct child *c = arg;
    (void)fd;
    (void)what;
    if (c->n_waiting == 0)
        return;
    char reason[160];
    snprintf(reason, sizeof reason, "the %s worker was not ready within %u ms", c->name,
             c->sup->cfg.wait_timeout_ms);
    evbuffer_drain(c->waiting, evbuffer_get_length(c->waiting));
    c->n_waiting = 0;
    c->sup->hooks.expire(c->sup->hooks.arg, c, reason);
}

static int sup_spawn(struct child *c)
{
    struct sup *s = c->sup;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        log_error("child %s: socketpair: %s", c->name, strerror(errno));
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error("child %s: fork: %s", c->name, strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        /* the worker dies with cqrsd, even when cqrsd is SIGKILLed */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (dup2(sv[1], 3) < 0)
            _exit(127);
        execl(s->cfg.worker_path, "cqrs-worker", "--type", c->name, "--data-dir",
              s->cfg.data_dir, "--fd", "3", (char *)NULL);
        dprintf(2, "cqrsd: cannot run %s: %s\n", s->cfg.worker_path, strerror(errno));
        _exit(127);
    }
    close(sv[1]);
    evutil_make_socket_nonblocking(sv[0]);
    c->bev = bufferevent_socket_new(s->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        log_error("child %s: cannot set up its socket", c->name);
        close(sv[0]);
        kill(pid, SIGKILL);
        return -1;
    }
    bufferevent_set_max_single_read(c->bev, 1 << 20);
    bufferevent_setcb(c->bev, sup_on_read, NULL, sup_on_bev_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->pid = pid;
    c->state = CHILD_STARTING;
    c->started_at_us = sup_now_us();
    sup_arm(c->timer, s->cfg.start_timeout_ms);
    log_info("child %s starting (pid %d)", c->name, (int)pid);
    return 0;
}

static void sup_describe_exit(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "ended with wait status %d", status);
}

static void sup_on_exit(struct child *c, int status)
{
    struct sup *s = c->sup;
    enum child_state was = c->state;
    char reason[96];
    sup_describe_exit(status, reason, sizeof reason);
    if (c->timed_out)
        c->timed_out = 0;     /* keep the timeout as the reason */
    else
        snprintf(c->last_exit, sizeof c->last_exit, "%s", reason);
    log_info("child %s (pid %d) %s", c->name, (int)c->pid, c->last_exit);
    c->pid = 0;
    c->state = CHILD_STOPPED;
    evtimer_del(c->timer);
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (was == CHILD_RUNNING) {
        char why[200];
        snprintf(why, sizeof why, "the %s worker died (%s)", c->name, c->last_exit);
        s->hooks.down(s->hooks.arg, c, why);
    }
    if (s->stopping) {
        sup_stop_next(s);
        return;
    }
    if (s->booting) {
        log_error("child %s failed to start: %s", c->name, c->last_exit);
        sup_give_up(s);
        return;
    }
    if (!sup_policy_allow(&s->policy, sup_mono_us())) {
        log_error("more than %u restarts in %u s: giving up", s->cfg.intensity, s->cfg.period_s);
        sup_give_up(s);
        return;
    }
    c->restarts++;
    if (sup_spawn(c) < 0)
        sup_give_up(s);
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
            if (s->children[i].pid == pid) {
                sup_on_exit(&s->children[i], status);
                break;
            }
        }
    }
}

struct sup *sup_new(struct event_base *base, const struct sup_config *cfg,
                    const struct sup_hooks *hooks)
{
    struct sup *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->base = base;
    s->cfg = *cfg;
    s->hooks = *hooks;
    s->n = cfg->n_children;
    s->children = calloc(s->n, sizeof *s->children);
    s->sigchld = evsignal_new(base, SIGCHLD, sup_on_sigchld, s);
    if (!s->children || !s->sigchld) {
        sup_free(s);
        return NULL;
    }
    sup_policy_init(&s->policy, cfg->intensity, (int64_t)cfg->period_s * 1000000);
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = &s->children[i];
        snprintf(c->name, sizeof c->name, "%s", cfg->children[i]);
        c->index = (int)i;
        c->sup = s;
        c->timer = evtimer_new(base, sup_on_timer, c);
        c->wait_timer = evtimer_new(base, sup_on_wait_timer, c);
        c->waiting = evbuffer_new();
        if (!c->timer || !c->wait_timer || !c->waiting) {
            sup_free(s);
            return NULL;
        }
    }
    return s;
}

void sup_free(struct sup *s)
{
    if (!s)
        return;
    for (size_t i = 0; s->children && i < s->n; i++) {
        struct child *c = &s->children[i];
        if (c->bev)
            bufferevent_free(c->bev);
        if (c->timer)
            event_free(c->timer);
        if (c->wait_timer)
            event_free(c->wait_timer);
        if (c->waiting)
            evbuffer_free(c->waiting);
    }
    if (s->sigchld)
        event_free(s->sigchld);
    free(s->children);
    free(s);
}

int sup_start(struct sup *s)
{
    if (event_add(s->sigchld, NULL) < 0)
        return -1;
    if (s->n == 0) {
        if (s->hooks.booted)
            s->hooks.booted(s->hooks.arg);
        return 0;
    }
    s->booting = 1;
    return sup_spawn(&s->children[0]);
}

/* Stops the last child still alive; when none is, leaves the loop. */
static void sup_stop_next(struct sup *s)
{
    for (size_t i = s->n; i-- > 0;) {
        struct child *c = &s->children[i];
        if (c->pid > 0) {
            if (c->timer && !evtimer_pending(c->timer, NULL)) {
                log_info("stopping child %s (pid %d)", c->name, (int)c->pid);
                kill(c->pid, SIGTERM);
                sup_arm(c->timer, s->cfg.shutdown_timeout_ms);
            }
            return;
        }
    }
    /* Everything held can never be delivered now. */
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = &s->children[i];
        if (c->n_waiting) {
            evbuffer_drain(c->waiting, evbuffer_get_length(c->waiting));
            c->n_waiting = 0;
            s->hooks.expire(s->hooks.arg, c, "cqrsd is shutting down");
        }
    }
    event_base_loopexit(s->base, NULL);
}

void sup_stop(struct sup *s)
{
    if (s->stopping)
        return;
    s->stopping = 1;
    s->booting = 0;
    for (size_t i = 0; i < s->n; i++)
        evtimer_del(s->children[i].timer);   /* start timeouts no longer apply */
    sup_stop_next(s);
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
    return i < s->n ? &s->children[i] : NULL;
}

struct child *sup_find(struct sup *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->children[i].name, name) == 0)
            return &s->children[i];
    return NULL;
}

int sup_send(struct child *c, uint64_t tag, const uint8_t *body, size_t len)
{
    if (c->state == CHILD_RUNNING && c->bev)
        return frame_put_bytes(bufferevent_get_output(c->bev), &tag, body, len);
    if (c->sup->stopping || c->n_waiting >= c->sup->cfg.wait_limit) {
        errno = EBUSY;
        return -1;
    }
    if (frame_put_bytes(c->waiting, &tag, body, len) < 0)
        return -1;
    if (c->n_waiting++ == 0)
        sup_arm(c->wait_timer, c->sup->cfg.wait_timeout_ms);
    return 0;
}
