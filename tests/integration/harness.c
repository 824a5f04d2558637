/*
 * harness — see harness.h.
 *
 * Every test gets its own temporary directory /tmp/cqrsd-it.XXXXXX holding
 * the socket (cqrsd.sock), the data dir (data/) and the daemon's stdout and
 * stderr, workers' included (cqrsd.log, appended across restarts). That log
 * is printed whenever the daemon misbehaves, and a sanitizer report in it
 * fails the test: a daemon that corrupts memory or leaks is a failure even
 * when every reply looked right.
 *
 * cqrsd runs in its own process group, so that a daemon which has to be
 * SIGKILLed does not leave its workers behind.
 *
 * Waits are bounded polls (the harness is not an event loop): start-up
 * 10 s, SIGTERM 15 s, cqrsctl 30 s.
 */
#include "harness.h"
#include "wallet.pb-c.h"
#include "layout.h"
#include "evlog.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CQRSD_PATH
#error "CQRSD_PATH must be defined by the build"
#endif
#ifndef CQRSCTL_PATH
#error "CQRSCTL_PATH must be defined by the build"
#endif

#define HARNESS_START_MS 10000
#define HARNESS_STOP_MS 15000
#define HARNESS_CTL_MS 30000
#define HARNESS_MAX_EXTRA 32

/* Extra daemon arguments given to daemon_start, reused by daemon_restart.
 * Criterion runs each test in its own process, so one set per process. */
static char *harness_extra[HARNESS_MAX_EXTRA + 1];

static int64_t harness_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void harness_nap_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void harness_log_path(const struct daemon *d, char *buf, size_t len)
{
    snprintf(buf, len, "%s/cqrsd.log", d->dir);
}

/* Reads a whole file into a NUL-terminated malloc'd string ("" if absent). */
static char *harness_slurp(const char *path)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        for (;;) {
            if (cap - len < 4096) {
                cap = cap ? cap * 2 : 8192;
                char *n = realloc(buf, cap);
                if (!n)
                    break;
                buf = n;
            }
            ssize_t r = read(fd, buf + len, cap - len - 1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            len += (size_t)r;
        }
        close(fd);
    }
    if (!buf) {
        buf = malloc(1);
        if (!buf)
            abort();
    }
    buf[len] = '\0';
    return buf;
}

static void harness_dump_log(const struct daemon *d, const char *why)
{
    char path[320];
    harness_log_path(d, path, sizeof path);
    char *log = harness_slurp(path);
    fprintf(stderr, "---- %s; cqrsd log (%s) ----\n%s---- end of cqrsd log ----\n", why, path, log);
    free(log);
    /* stderr kept apart by daemon_run_until_exit */
    snprintf(path, sizeof path, "%s/cqrsd.err", d->dir);
    if (access(path, F_OK) == 0) {
        log = harness_slurp(path);
        fprintf(stderr, "---- cqrsd stderr (%s) ----\n%s---- end of cqrsd stderr ----\n", path, log);
        free(log);
    }
}

/* 1 if the daemon's log holds a sanitizer report (its or a worker's); also
 * looks in cqrsd.err, where daemon_run_until_exit sends stderr. */
static int harness_log_has_sanitizer_report(const struct daemon *d)
{
    char path[320];
    int found = 0;
    for (int i = 0; i < 2 && !found; i++) {
        if (i == 0)
            harness_log_path(d, path, sizeof path);
        else
            snprintf(path, sizeof path, "%s/cqrsd.err", d->dir);
        char *log = harness_slurp(path);
        found = strstr(log, "Sanitizer") != NULL || strstr(log, "runtime error:") != NULL;
        free(log);
    }
    return found;
}

/* Closes every fd from 3 up, in a child about to exec. */
static void harness_close_from_3(void)
{
    if (close_range(3, ~0u, 0) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = 3; fd < max; fd++)
        close(fd);
}

/* In a forked child: a clean signal state for the program it execs. */
static void harness_child_signals(void)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
}

/* Forks and execs argv[0] with stdin from /dev/null and stdout/stderr on
 * `outfd`/`errfd`; `envp` NULL keeps our environment; `own_group` puts it in
 * a process group of its own (so a SIGKILL of the group takes its workers). */
static pid_t harness_exec(const char *const *argv, const char *const *envp, int outfd, int errfd,
                          int own_group)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        if (own_group)
            setpgid(0, 0);
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0 || dup2(outfd, 1) < 0 || dup2(errfd, 2) < 0)
            _exit(126);
        harness_close_from_3();
        harness_child_signals();
        execve(argv[0], (char *const *)argv, envp ? (char *const *)envp : environ);
        dprintf(2, "harness: cannot exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (own_group)
        setpgid(pid, pid);   /* also here: no race with the child's own call */
    return pid;
}

/* Starts cqrsd; its stdout and stderr go to cqrsd.log, or its stderr to
 * `errpath` when that is not NULL. */
static void harness_spawn_to(struct daemon *d, const char *errpath)
{
    char log[320];
    harness_log_path(d, log, sizeof log);
    int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    cr_assert(logfd >= 0, "cannot open %s: %s", log, strerror(errno));
    int errfd = logfd;
    if (errpath) {
        errfd = open(errpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        cr_assert(errfd >= 0, "cannot open %s: %s", errpath, strerror(errno));
    }

    const char *argv[6 + HARNESS_MAX_EXTRA + 1];
    int n = 0;
    argv[n++] = CQRSD_PATH;
    argv[n++] = "--socket";
    argv[n++] = d->sock;
    argv[n++] = "--data-dir";
    argv[n++] = d->data;
    for (int i = 0; harness_extra[i]; i++)
        argv[n++] = harness_extra[i];
    argv[n] = NULL;

    pid_t pid = harness_exec(argv, NULL, logfd, errfd, 1);
    close(logfd);
    if (errfd != logfd)
        close(errfd);
    d->pid = pid;
}

static void harness_spawn(struct daemon *d)
{
    harness_spawn_to(d, NULL);
}

/* 1 when `c` answers STATUS with at least one child, every one "running". */
static int harness_all_running(struct cqrs_client *c, char *why, size_t whylen)
{
    Cqrs__Reply *r = NULL;
    if (cqrs_client_control(c, CQRS__CONTROL__OP__STATUS, NULL, &r) < 0) {
        snprintf(why, whylen, "STATUS failed: %s", strerror(errno));
        return 0;
    }
    int ok = r->status == CQRS__STATUS__OK && r->n_children > 0;
    if (r->status != CQRS__STATUS__OK)
        snprintf(why, whylen, "STATUS answered %s: %s", cqrs_status_name(r->status), r->error);
    else if (r->n_children == 0)
        snprintf(why, whylen, "STATUS lists no children");
    for (size_t i = 0; ok && i < r->n_children; i++) {
        if (strcmp(r->children[i]->state, "running") != 0) {
            snprintf(why, whylen, "child %s is %s", r->children[i]->name, r->children[i]->state);
            ok = 0;
        }
    }
    cqrs__reply__free_unpacked(r, NULL);
    return ok;
}

/* Reaps the daemon if it has exited; returns 1 then, with its status. */
static int harness_reaped(struct daemon *d, int *status)
{
    pid_t w = waitpid(d->pid, status, WNOHANG);
    if (w == d->pid || (w < 0 && errno == ECHILD)) {
        if (w < 0)
            *status = -1;
        kill(-d->pid, SIGKILL);   /* workers left behind by a dead daemon */
        d->pid = 0;
        return 1;
    }
    return 0;
}

static void harness_wait_ready(struct daemon *d)
{
    int64_t deadline = harness_now_ms() + HARNESS_START_MS;
    char why[400] = "the socket never accepted a connection";
    for (;;) {
        int status;
        if (harness_reaped(d, &status)) {
            harness_dump_log(d, "cqrsd exited during start-up");
            cr_assert_fail("cqrsd exited during start-up (wait status 0x%x)", status);
        }
        struct cqrs_client *c = cqrs_client_connect(d->sock);
        if (c) {
            int ok = harness_all_running(c, why, sizeof why);
            cqrs_client_free(c);
            if (ok)
                return;
        }
        if (harness_now_ms() > deadline)
            break;
        harness_nap_ms(20);
    }
    harness_dump_log(d, "cqrsd did not become ready");
    kill(-d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
    cr_assert_fail("cqrsd not ready after %d ms: %s", HARNESS_START_MS, why);
}

static void harness_free_extra(void)
{
    for (int i = 0; harness_extra[i]; i++) {
        free(harness_extra[i]);
        harness_extra[i] = NULL;
    }
}

void daemon_start(struct daemon *d, ...)
{
    memset(d, 0, sizeof *d);
    /* Writes to a connection the daemon closed must fail with EPIPE, not
     * kill the test. */
    signal(SIGPIPE, SIG_IGN);

    harness_free_extra();
    va_list ap;
    va_start(ap, d);
    int n = 0;
    for (const char *a; (a = va_arg(ap, const char *)) != NULL;) {
        cr_assert(n < HARNESS_MAX_EXTRA, "too many extra daemon arguments");
        harness_extra[n] = strdup(a);
        cr_assert(harness_extra[n], "out of memory");
        n++;
    }
    va_end(ap);

    strcpy(d->dir, "/tmp/cqrsd-it.XXXXXX");
    cr_assert(mkdtemp(d->dir), "mkdtemp: %s", strerror(errno));
    snprintf(d->sock, sizeof d->sock, "%s/cqrsd.sock", d->dir);
    snprintf(d->data, sizeof d->data, "%s/data", d->dir);
    harness_spawn(d);
    harness_wait_ready(d);
}

void daemon_restart(struct daemon *d)
{
    cr_assert(d->pid == 0, "daemon_restart: cqrsd is still running (call daemon_stop first)");
    cr_assert(d->dir[0], "daemon_restart: no daemon_start before");
    harness_spawn(d);
    harness_wait_ready(d);
}

/* SIGTERM, then waits up to `ms`; SIGKILLs the group if it does not go. */
static int harness_terminate(struct daemon *d, int64_t ms)
{
    int status = -1;
    if (d->pid <= 0)
        return status;
    if (harness_reaped(d, &status))
        return status;
    kill(d->pid, SIGTERM);
    int64_t deadline = harness_now_ms() + ms;
    while (harness_now_ms() < deadline) {
        if (harness_reaped(d, &status))
            return status;
        harness_nap_ms(10);
    }
    harness_dump_log(d, "cqrsd ignored SIGTERM");
    kill(-d->pid, SIGKILL);
    while (waitpid(d->pid, &status, 0) < 0 && errno == EINTR)
        ;
    d->pid = 0;
    return status;
}

int daemon_stop(struct daemon *d)
{
    cr_assert(d->pid > 0, "daemon_stop: cqrsd is not running");
    int status = harness_terminate(d, HARNESS_STOP_MS);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        harness_dump_log(d, "cqrsd did not exit 0 on SIGTERM");
    if (harness_log_has_sanitizer_report(d)) {
        harness_dump_log(d, "sanitizer report");
        cr_assert_fail("cqrsd or a worker reported a sanitizer error (log above)");
    }
    return status;
}

static int harness_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    if (remove(path) < 0)
        fprintf(stderr, "harness: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

/* The process group of a daemon reaped by daemon_wait_exit, which leaves
 * its workers for the test to look at; daemon_cleanup kills what is left. */
static pid_t harness_left_pgid;

void daemon_cleanup(struct daemon *d)
{
    int bad = 0;
    if (d->pid > 0)
        harness_terminate(d, 5000);
    if (harness_left_pgid > 0) {
        kill(-harness_left_pgid, SIGKILL);
        harness_left_pgid = 0;
    }
    if (d->dir[0]) {
        if (harness_log_has_sanitizer_report(d)) {
            harness_dump_log(d, "sanitizer report");
            bad = 1;
        }
        nftw(d->dir, harness_rm, 16, FTW_DEPTH | FTW_PHYS);
    }
    harness_free_extra();
    memset(d, 0, sizeof *d);
    /* Teardown assertions do not fail a criterion test; a crash does. */
    if (bad) {
        fprintf(stderr, "harness: failing the test: cqrsd or a worker reported a sanitizer error\n");
        abort();
    }
}

struct cqrs_client *daemon_connect(const struct daemon *d)
{
    struct cqrs_client *c = cqrs_client_connect(d->sock);
    cr_assert(c, "cannot connect to %s: %s", d->sock, strerror(errno));
    return c;
}

int daemon_connect_raw(const struct daemon *d)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    cr_assert(strlen(d->sock) < sizeof sa.sun_path, "socket path too long: %s", d->sock);
    strcpy(sa.sun_path, d->sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        cr_assert_fail("cannot connect to %s: %s", d->sock, strerror(e));
    }
    return fd;
}

/* A temp file in the test's dir for a captured stream; its fd. */
static int harness_capture_file(const struct daemon *d, const char *what, char *path, size_t len)
{
    snprintf(path, len, "%s/cqrsctl-%s.XXXXXX", d->dir, what);
    int fd = mkostemp(path, O_CLOEXEC);
    cr_assert(fd >= 0, "mkostemp %s: %s", path, strerror(errno));
    return fd;
}

int run_cqrsctl(const struct daemon *d, char **out, char **err, ...)
{
    size_t n = 0, cap = 8;
    const char **argv = malloc(cap * sizeof *argv);
    cr_assert(argv, "out of memory");
    argv[n++] = CQRSCTL_PATH;
    argv[n++] = "-s";
    argv[n++] = d->sock;
    va_list ap;
    va_start(ap, err);
    for (const char *a;; ) {
        a = va_arg(ap, const char *);
        if (n + 1 >= cap) {
            cap *= 2;
            const char **na = realloc(argv, cap * sizeof *argv);
            cr_assert(na, "out of memory");
            argv = na;
        }
        argv[n++] = a;
        if (!a)
            break;
    }
    va_end(ap);

    char out_path[400], err_path[400];
    int out_fd = harness_capture_file(d, "out", out_path, sizeof out_path);
    int err_fd = harness_capture_file(d, "err", err_path, sizeof err_path);

    pid_t pid = harness_exec((const char *const *)argv, NULL, out_fd, err_fd, 0);
    close(out_fd);
    close(err_fd);
    free(argv);

    int status = 0, done = 0;
    int64_t deadline = harness_now_ms() + HARNESS_CTL_MS;
    while (!done && harness_now_ms() < deadline) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            done = 1;
        else
            harness_nap_ms(5);
    }
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    char *o = harness_slurp(out_path), *e = harness_slurp(err_path);
    unlink(out_path);
    unlink(err_path);
    cr_assert(done, "cqrsctl did not finish within %d ms; stdout:\n%s\nstderr:\n%s",
              HARNESS_CTL_MS, o, e);
    if (out)
        *out = o;
    else
        free(o);
    if (err)
        *err = e;
    else
        free(e);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

void harness_fail_once(char *err, size_t len, const char *fmt, ...)
{
    if (err[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

void topup_request_init(struct topup_request *tr, const char *id, int64_t amount)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = amount;
    cqrs__request__init(&tr->req);
    cqrs__command__init(&tr->cmd);
    tr->req.body_case = CQRS__REQUEST__BODY_COMMAND;
    tr->req.command = &tr->cmd;
    tr->cmd.aggregate_type = "wallet";
    tr->cmd.aggregate_id = (char *)id;
    tr->cmd.name = "TopUp";
    tr->cmd.payload.data = tr->payload;
    tr->cmd.payload.len = wallet__top_up__pack(&t, tr->payload);
}

Cqrs__Reply *send_cmd(struct cqrs_client *c, const char *type, const char *id,
                      const ProtobufCMessage *msg, const char *command_id,
                      long long expected_version)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len ? len : 1);
    cr_assert(buf, "out of memory");
    protobuf_c_message_pack(msg, buf);
    Cqrs__Reply *r = NULL;
    int rc = cqrs_client_command(c, type, id, msg->descriptor->short_name, buf, len,
                                 command_id, (int64_t)expected_version, &r);
    int e = errno;
    free(buf);
    cr_assert(rc == 0, "%s %s %s: no reply: %s", msg->descriptor->short_name, type, id,
              strerror(e));
    return r;
}

/* --- supervision and crash tests ------------------------------------------- */

/* The config file given by daemon_prepare ("" when none); daemon_launch and
 * daemon_run_until_exit pass it first as --config PATH. */
static char harness_conf[320];

int64_t harness_ms(void)
{
    return harness_now_ms();
}

void harness_sleep_ms(long ms)
{
    harness_nap_ms(ms);
}

void daemon_prepare(struct daemon *d, const char *ini)
{
    memset(d, 0, sizeof *d);
    signal(SIGPIPE, SIG_IGN);
    harness_free_extra();
    harness_conf[0] = '\0';
    strcpy(d->dir, "/tmp/cqrsd-it.XXXXXX");
    cr_assert(mkdtemp(d->dir), "mkdtemp: %s", strerror(errno));
    snprintf(d->sock, sizeof d->sock, "%s/cqrsd.sock", d->dir);
    snprintf(d->data, sizeof d->data, "%s/data", d->dir);
    if (!ini)
        return;
    snprintf(harness_conf, sizeof harness_conf, "%s/cqrsd.conf", d->dir);
    FILE *f = fopen(harness_conf, "w");
    cr_assert(f, "cannot create %s: %s", harness_conf, strerror(errno));
    int ok = fputs(ini, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    cr_assert(ok, "cannot write %s", harness_conf);
}

const char *daemon_conf_path(const struct daemon *d)
{
    (void)d;
    return harness_conf;
}

/* Sets the extra arguments: --config first (when prepared), then `ap`. */
static void harness_set_extra(va_list ap)
{
    harness_free_extra();
    int n = 0;
    if (harness_conf[0]) {
        harness_extra[n++] = strdup("--config");
        harness_extra[n++] = strdup(harness_conf);
        cr_assert(harness_extra[0] && harness_extra[1], "out of memory");
    }
    for (const char *a; (a = va_arg(ap, const char *)) != NULL;) {
        cr_assert(n < HARNESS_MAX_EXTRA, "too many extra daemon arguments");
        harness_extra[n] = strdup(a);
        cr_assert(harness_extra[n], "out of memory");
        n++;
    }
}

void daemon_launch(struct daemon *d, ...)
{
    cr_assert(d->dir[0] && d->pid == 0, "daemon_launch: call daemon_prepare first");
    va_list ap;
    va_start(ap, d);
    harness_set_extra(ap);
    va_end(ap);
    harness_spawn(d);
    harness_wait_ready(d);
}

void daemon_start_conf(struct daemon *d, const char *ini, ...)
{
    daemon_prepare(d, ini);
    va_list ap;
    va_start(ap, ini);
    harness_set_extra(ap);
    va_end(ap);
    harness_spawn(d);
    harness_wait_ready(d);
}

int daemon_wait_exit(struct daemon *d, int ms, int *status)
{
    cr_assert(d->pid > 0, "daemon_wait_exit: cqrsd is not running");
    int64_t deadline = harness_now_ms() + ms;
    for (;;) {
        pid_t w = waitpid(d->pid, status, WNOHANG);
        if (w == d->pid) {
            harness_left_pgid = d->pid;
            d->pid = 0;
            return 1;
        }
        cr_assert(w == 0, "waitpid %d: %s", (int)d->pid, strerror(errno));
        if (harness_now_ms() >= deadline)
            return 0;
        harness_nap_ms(5);
    }
}

int daemon_run_until_exit(struct daemon *d, int ms, ...)
{
    cr_assert(d->dir[0] && d->pid == 0, "daemon_run_until_exit: call daemon_prepare first");
    va_list ap;
    va_start(ap, ms);
    harness_set_extra(ap);
    va_end(ap);
    char errpath[320];
    snprintf(errpath, sizeof errpath, "%s/cqrsd.err", d->dir);
    harness_spawn_to(d, errpath);
    int status = -1;
    if (!daemon_wait_exit(d, ms, &status)) {
        char *err = daemon_stderr(d);
        daemon_show_log(d, "cqrsd did not exit by itself");
        kill(-d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
        cr_assert_fail("cqrsd was expected to exit by itself within %d ms, but still ran; "
                       "its stderr:\n%s", ms, err);
    }
    return status;
}

pid_t daemon_last_pgid(const struct daemon *d)
{
    (void)d;
    return harness_left_pgid;
}

char *daemon_log(const struct daemon *d)
{
    char path[320];
    harness_log_path(d, path, sizeof path);
    return harness_slurp(path);
}

char *daemon_stderr(const struct daemon *d)
{
    char path[320];
    snprintf(path, sizeof path, "%s/cqrsd.err", d->dir);
    return harness_slurp(path);
}

void daemon_show_log(const struct daemon *d, const char *why)
{
    char path[320];
    harness_log_path(d, path, sizeof path);
    char *log = harness_slurp(path);
    size_t len = strlen(log), head = 32768, tail = 16384;
    if (len <= head + tail) {
        fprintf(stderr, "---- %s; cqrsd log (%s) ----\n%s---- end of cqrsd log ----\n", why,
                path, log);
    } else {
        /* a flood of one line must not drown the test report */
        fprintf(stderr, "---- %s; cqrsd log (%s), %zu bytes: the first %zu ----\n%.*s\n"
                "---- ... %zu bytes skipped ... ----\n%s---- end of cqrsd log ----\n", why, path,
                len, head, (int)head, log, len - head - tail, log + len - tail);
    }
    free(log);
}

/* STATUS over `c`; 0 and the children copied, or -1 with `why` set. */
static int harness_status_on(struct cqrs_client *c, struct child_status *out, size_t max,
                             size_t *n, char *why, size_t whylen)
{
    Cqrs__Reply *r = NULL;
    if (cqrs_client_control(c, CQRS__CONTROL__OP__STATUS, NULL, &r) < 0) {
        snprintf(why, whylen, "STATUS failed: %s", strerror(errno));
        return -1;
    }
    if (r->status != CQRS__STATUS__OK) {
        snprintf(why, whylen, "STATUS answered %s: %s", cqrs_status_name(r->status), r->error);
        cqrs__reply__free_unpacked(r, NULL);
        return -1;
    }
    *n = r->n_children;
    for (size_t i = 0; i < r->n_children && i < max; i++) {
        const Cqrs__ChildInfo *ci = r->children[i];
        struct child_status *s = &out[i];
        memset(s, 0, sizeof *s);
        snprintf(s->name, sizeof s->name, "%s", ci->name);
        s->pid = (pid_t)ci->pid;
        snprintf(s->state, sizeof s->state, "%s", ci->state);
        s->restarts = ci->restarts;
        s->started_at_us = ci->started_at_us;
        snprintf(s->last_exit, sizeof s->last_exit, "%s", ci->last_exit);
    }
    cqrs__reply__free_unpacked(r, NULL);
    return 0;
}

/* One child from a fresh STATUS; 0, or -1 with `why` (not listed, no answer). */
static int harness_child_try(const struct daemon *d, const char *name, struct child_status *out,
                             char *why, size_t whylen)
{
    struct cqrs_client *c = cqrs_client_connect(d->sock);
    if (!c) {
        snprintf(why, whylen, "cannot connect to %s: %s", d->sock, strerror(errno));
        return -1;
    }
    struct child_status all[HARNESS_MAX_CHILDREN];
    size_t n = 0;
    int rc = harness_status_on(c, all, HARNESS_MAX_CHILDREN, &n, why, whylen);
    cqrs_client_free(c);
    if (rc < 0)
        return -1;
    for (size_t i = 0; i < n && i < HARNESS_MAX_CHILDREN; i++) {
        if (strcmp(all[i].name, name) == 0) {
            *out = all[i];
            return 0;
        }
    }
    snprintf(why, whylen, "STATUS does not list a child named %s", name);
    return -1;
}

int daemon_child_try(const struct daemon *d, const char *name, struct child_status *out)
{
    char why[400];
    return harness_child_try(d, name, out, why, sizeof why);
}

size_t daemon_status(const struct daemon *d, struct child_status *out, size_t max)
{
    struct cqrs_client *c = daemon_connect(d);
    char why[400];
    size_t n = 0;
    int rc = harness_status_on(c, out, max, &n, why, sizeof why);
    cqrs_client_free(c);
    cr_assert(rc == 0, "%s", why);
    return n;
}

struct child_status daemon_child(const struct daemon *d, const char *name)
{
    struct child_status s;
    char why[400];
    cr_assert(harness_child_try(d, name, &s, why, sizeof why) == 0, "%s", why);
    return s;
}

pid_t daemon_child_pid(const struct daemon *d, const char *name)
{
    struct child_status s = daemon_child(d, name);
    cr_assert(strcmp(s.state, "running") == 0 && s.pid > 0,
              "child %s is %s with pid %d, expected running", name, s.state, (int)s.pid);
    return s.pid;
}

/* Polls STATUS until `done` says yes; asserts (log shown) at the deadline or
 * when cqrsd exits. */
static struct child_status harness_wait_child(struct daemon *d, const char *name, int ms,
                                              int (*done)(const struct child_status *,
                                                          const void *),
                                              const void *arg, const char *what)
{
    int64_t deadline = harness_now_ms() + ms;
    struct child_status s;
    char why[400] = "";
    memset(&s, 0, sizeof s);
    for (;;) {
        int status;
        if (d->pid > 0 && waitpid(d->pid, &status, WNOHANG) == d->pid) {
            kill(-d->pid, SIGKILL);
            d->pid = 0;
            daemon_show_log(d, "cqrsd exited");
            cr_assert_fail("waiting for child %s to be %s: cqrsd exited (wait status 0x%x)",
                           name, what, status);
        }
        int got = harness_child_try(d, name, &s, why, sizeof why) == 0;
        if (got && done(&s, arg))
            return s;
        if (harness_now_ms() >= deadline)
            break;
        harness_nap_ms(10);
    }
    daemon_show_log(d, "child did not reach the expected state");
    cr_assert_fail("child %s not %s after %d ms; last seen: state \"%s\", pid %d, restarts %u, "
                   "last_exit \"%s\"%s%s", name, what, ms, s.state, (int)s.pid, s.restarts,
                   s.last_exit, why[0] ? "; " : "", why);
    return s;   /* not reached */
}

static int harness_is_new_running(const struct child_status *s, const void *arg)
{
    pid_t old = *(const pid_t *)arg;
    return strcmp(s->state, "running") == 0 && s->pid > 0 && s->pid != old;
}

struct child_status daemon_wait_new_pid(struct daemon *d, const char *name, pid_t old_pid, int ms)
{
    char what[80];
    snprintf(what, sizeof what, "running with a pid other than %d", (int)old_pid);
    return harness_wait_child(d, name, ms, harness_is_new_running, &old_pid, what);
}

static int harness_is_state(const struct child_status *s, const void *arg)
{
    return strcmp(s->state, (const char *)arg) == 0;
}

struct child_status daemon_wait_state(struct daemon *d, const char *name, const char *state, int ms)
{
    char what[80];
    snprintf(what, sizeof what, "in state \"%s\"", state);
    return harness_wait_child(d, name, ms, harness_is_state, state, what);
}

int pid_alive(pid_t pid)
{
    if (pid <= 0)
        return 0;
    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *stat = harness_slurp(path);
    /* "pid (comm) S ...": the state follows the last ')' */
    const char *p = strrchr(stat, ')');
    int zombie = p && (p[1] == ' ') && (p[2] == 'Z' || p[2] == 'X');
    int gone = stat[0] == '\0';   /* vanished between kill and open */
    free(stat);
    return !zombie && !gone;
}

int pid_gone(pid_t pid)
{
    return pid > 0 && kill(pid, 0) < 0 && errno == ESRCH;
}

int pid_wait_dead(pid_t pid, int ms)
{
    int64_t deadline = harness_now_ms() + ms;
    while (pid_alive(pid)) {
        if (harness_now_ms() >= deadline)
            return 0;
        harness_nap_ms(10);
    }
    return 1;
}

int pgrp_alive(pid_t pgid, pid_t *first)
{
    int n = 0;
    DIR *dir = opendir("/proc");
    cr_assert(dir, "opendir /proc: %s", strerror(errno));
    for (struct dirent *e; (e = readdir(dir)) != NULL;) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0)
            continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        char *stat = harness_slurp(path);
        /* "pid (comm) S ppid pgrp ..." */
        const char *p = strrchr(stat, ')');
        char st = 0;
        int ppid = 0, pgrp = 0;
        if (p && sscanf(p + 1, " %c %d %d", &st, &ppid, &pgrp) == 3 && pgrp == pgid &&
            st != 'Z' && st != 'X') {
            if (n++ == 0 && first)
                *first = (pid_t)pid;
        }
        free(stat);
    }
    closedir(dir);
    return n;
}

int pgrp_wait_dead(pid_t pgid, int ms, pid_t *first)
{
    int64_t deadline = harness_now_ms() + ms;
    int n;
    while ((n = pgrp_alive(pgid, first)) > 0 && harness_now_ms() < deadline)
        harness_nap_ms(10);
    return n;
}

/* --- environment and wrappers (systemd tests) ------------------------------ */

extern char **environ;

/* 1 if "KEY=..." entry `e` sets the same variable as "KEY=..." entry `s`. */
static int harness_same_var(const char *e, const char *s)
{
    const char *eq = strchr(s, '=');
    size_t klen = eq ? (size_t)(eq - s) : strlen(s);
    return strncmp(e, s, klen) == 0 && e[klen] == '=';
}

void daemon_spawn_with(struct daemon *d, const char *const *env, const char *const *wrapper, ...)
{
    cr_assert(d->dir[0] && d->pid == 0, "daemon_spawn_with: call daemon_prepare first");
    va_list ap;
    va_start(ap, wrapper);
    harness_set_extra(ap);
    va_end(ap);

    /* argv: wrapper, then cqrsd's as harness_spawn_to builds it */
    size_t nw = 0;
    while (wrapper && wrapper[nw])
        nw++;
    const char **argv = calloc(nw + 6 + HARNESS_MAX_EXTRA + 1, sizeof *argv);
    cr_assert(argv, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < nw; i++)
        argv[n++] = wrapper[i];
    argv[n++] = CQRSD_PATH;
    argv[n++] = "--socket";
    argv[n++] = d->sock;
    argv[n++] = "--data-dir";
    argv[n++] = d->data;
    for (int i = 0; harness_extra[i]; i++)
        argv[n++] = harness_extra[i];
    argv[n] = NULL;

    /* envp: ours without the variables `env` sets, then `env` */
    size_t ne = 0, nadd = 0;
    while (environ[ne])
        ne++;
    while (env && env[nadd])
        nadd++;
    const char **envp = calloc(ne + nadd + 1, sizeof *envp);
    cr_assert(envp, "out of memory");
    size_t m = 0;
    for (size_t i = 0; i < ne; i++) {
        int replaced = 0;
        for (size_t j = 0; j < nadd && !replaced; j++)
            replaced = harness_same_var(environ[i], env[j]);
        if (!replaced)
            envp[m++] = environ[i];
    }
    for (size_t j = 0; j < nadd; j++)
        envp[m++] = env[j];
    envp[m] = NULL;

    char log[320];
    harness_log_path(d, log, sizeof log);
    int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    cr_assert(logfd >= 0, "cannot open %s: %s", log, strerror(errno));

    pid_t pid = harness_exec((const char *const *)argv, envp, logfd, logfd, 1);
    close(logfd);
    free(argv);
    free(envp);
    d->pid = pid;
}

void daemon_wait_ready(struct daemon *d)
{
    cr_assert(d->pid > 0, "daemon_wait_ready: cqrsd is not running");
    harness_wait_ready(d);
}

/* ---- a wallet's log of TopUp(1) events -------------------------------------------- */

struct harness_chain {
    uint64_t records;
    int64_t last_to;
    char err[256];
};

static int harness_chain_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset;
    (void)size;
    struct harness_chain *ch = arg;
    if (rec->version != ch->records + 1) {
        snprintf(ch->err, sizeof ch->err, "record %llu has version %llu",
                 (unsigned long long)ch->records + 1, (unsigned long long)rec->version);
        return 1;
    }
    Wallet__WalletToppedUp *t = strcmp(rec->type, "WalletToppedUp") == 0
        ? wallet__wallet_topped_up__unpack(NULL, rec->data.len, rec->data.data) : NULL;
    if (!t) {
        snprintf(ch->err, sizeof ch->err, "record %llu is a %s that does not decode as "
                 "WalletToppedUp", (unsigned long long)rec->version, rec->type);
        return 1;
    }
    int good = t->from == ch->last_to && t->to == t->from + 1;
    if (!good)
        snprintf(ch->err, sizeof ch->err,
                 "record %llu goes from %lld to %lld, but the one before ended at %lld",
                 (unsigned long long)rec->version, (long long)t->from, (long long)t->to,
                 (long long)ch->last_to);
    ch->last_to = t->to;
    wallet__wallet_topped_up__free_unpacked(t, NULL);
    if (!good)
        return 1;
    ch->records++;
    return 0;
}

void daemon_check_topup_chain(const struct daemon *d, const char *id, uint64_t n)
{
    char type_dir[PATH_MAX], path[PATH_MAX];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", d->data);
    layout_stream_file(path, sizeof path, type_dir, id, ".log");
    struct harness_chain ch = { 0, 0, "" };
    struct evlog *log = NULL;
    struct evlog_open_info info;
    int rc = evlog_open(path, 0, harness_chain_cb, &ch, &log, &info);
    cr_assert(!ch.err[0], "%s: %s", path, ch.err);
    cr_assert(rc == 0, "evlog_open %s: %d (%s) %s", path, rc, rc == -1 ? strerror(errno) : "",
              info.detail);
    cr_assert_eq(ch.records, n, "%s holds %llu records, expected versions 1..%llu", path,
                 (unsigned long long)ch.records, (unsigned long long)n);
    cr_assert_eq(ch.last_to, (int64_t)n, "the last record of %s ends at balance %lld", path,
                 (long long)ch.last_to);
    evlog_free(log);
}

static int harness_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int daemon_journal_replay(const struct daemon *d, const char *type, int live,
                          evlog_replay_fn fn, void *arg, uint64_t *first)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%s/%s", d->data, type, LAYOUT_JOURNAL);
    DIR *dp = opendir(dir);
    cr_assert(dp, "opendir %s: %s", dir, strerror(errno));
    char *names[512];
    int n = 0;
    for (struct dirent *e; (e = readdir(dp)) != NULL;) {
        size_t len = strlen(e->d_name);
        if (len > 4 && strcmp(e->d_name + len - 4, ".wal") == 0 && n < 512)
            names[n++] = strdup(e->d_name);
    }
    closedir(dp);
    qsort(names, (size_t)n, sizeof *names, harness_name_cmp);   /* zero-padded positions */
    *first = n ? strtoull(names[0], NULL, 10) : 0;
    for (int i = 0; i < n; i++) {
        char path[PATH_MAX + 256];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        free(names[i]);
        struct evlog *log = NULL;
        struct evlog_open_info info;
        int rc = evlog_open(path, EVLOG_READONLY | EVLOG_ANY_VERSIONS, fn, arg, &log, &info);
        cr_assert(rc == 0 || (live && rc == -1 && errno == ENOENT), "journal segment %s: %d %s",
                  path, rc, info.detail);
        evlog_free(log);
    }
    return n;
}
