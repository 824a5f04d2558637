/*
 * test_systemd — cqrsd under systemd's protocols, with the real daemon, real
 * sockets and real signals, but without systemd itself:
 *
 *   - the notification protocol: the test binds the AF_UNIX datagram socket
 *     that NOTIFY_SOCKET names and reads what cqrsd sends: READY=1 only once
 *     both children run, STATUS= with the children count, WATCHDOG=1 at
 *     about half of WATCHDOG_USEC, STOPPING=1 on SIGTERM; none of these
 *     variables (nor LISTEN_*) reaches a worker's environment;
 *   - socket activation: systemd-socket-activate binds the socket and execs
 *     cqrsd on the first connection, which is then served; cqrsd says the
 *     socket is systemd's and leaves the file in place when it stops;
 *   - reload (cqrsctl reload, SIGHUP): children added, removed and changed
 *     by a new configuration file, a broken file refused with nothing
 *     changed, and RELOADING=1 then READY=1 on the notification socket;
 *   - READY=1 never before every child runs, even when a reload is asked
 *     for while cqrsd boots or reloads, and never after STOPPING=1 (the
 *     test holds workers with SIGSTOP so that "while" lasts).
 *
 * Every wait is a bounded poll; nothing asserts a speed, only the order of
 * what happens and (for the watchdog) a generous band.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "account.pb-c.h"
#include "harness.h"
#include "wallet.pb-c.h"

static struct daemon d;
static int nfd = -1;                 /* the notification socket, bound by the test */
static char npath[320];
static char *seen;                   /* every notification line received, in order */
static size_t seen_len, seen_cap;

/* What a test holds when an assertion ends it, freed by teardown. */
static struct cqrs_client *cl;
static Cqrs__Reply *rp;
static char *out_s, *err_s;

static void free_held_objects(void)
{
    cqrs_client_free(cl);
    cl = NULL;
    if (rp)
        cqrs__reply__free_unpacked(rp, NULL);
    rp = NULL;
    free(out_s);
    free(err_s);
    out_s = err_s = NULL;
}

static pid_t held[64];               /* workers SIGSTOPped by hold_new_workers */
static size_t n_held;

static void release_held(void)
{
    for (size_t i = 0; i < n_held; i++)
        kill(held[i], SIGCONT);
    n_held = 0;
}

static void teardown(void)
{
    release_held();
    free_held_objects();
    if (nfd >= 0)
        close(nfd);
    nfd = -1;
    free(seen);
    seen = NULL;
    seen_len = seen_cap = 0;
    daemon_cleanup(&d);
}

/* One suite with fixtures per test (criterion 2.4.1's runner leaks with two
 * suites that have fixtures under --jobs 2, see test_cqrsctl.c). */
TestSuite(systemd, .fini = teardown, .timeout = 120);

#define OK CQRS__STATUS__OK
#define INVALID CQRS__STATUS__INVALID

/* ---- the notification socket ---------------------------------------------- */

/* Binds <dir>/notify.sock; returns the "NOTIFY_SOCKET=..." string (static). */
static const char *notify_bind(void)
{
    static char env[400];
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(npath, sizeof npath, "%s/notify.sock", d.dir);
    cr_assert(strlen(npath) < sizeof sa.sun_path, "path too long: %s", npath);
    strcpy(sa.sun_path, npath);
    nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert(nfd >= 0, "socket: %s", strerror(errno));
    cr_assert(bind(nfd, (struct sockaddr *)&sa, sizeof sa) == 0, "bind %s: %s", npath,
              strerror(errno));
    snprintf(env, sizeof env, "NOTIFY_SOCKET=%s", npath);
    return env;
}

static void seen_add(const char *line, size_t len)
{
    if (seen_cap - seen_len < len + 2) {
        seen_cap = (seen_cap + len + 2) * 2;
        seen = realloc(seen, seen_cap);
        cr_assert(seen, "out of memory");
    }
    memcpy(seen + seen_len, line, len);
    seen_len += len;
    seen[seen_len++] = '\n';
    seen[seen_len] = '\0';
}

/* The last lines received, for messages (at most 1,500 bytes). */
static const char *seen_tail(void)
{
    if (!seen)
        return "(nothing)";
    return seen_len > 1500 ? seen + seen_len - 1500 : seen;
}

/* Reads one datagram, waiting up to `ms` (0: only what is queued); its
 * lines are appended to `seen`, and to `lines` (NUL-separated, `max`
 * bytes) when not NULL. 1 when one was read, 0 at the deadline. */
static int notify_read(int ms, char *lines, size_t max)
{
    struct pollfd p = { .fd = nfd, .events = POLLIN };
    int rc;
    do
        rc = poll(&p, 1, ms);
    while (rc < 0 && errno == EINTR);
    cr_assert(rc >= 0, "poll: %s", strerror(errno));
    if (rc == 0)
        return 0;
    char buf[4096];
    ssize_t n = recv(nfd, buf, sizeof buf - 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    cr_assert(n >= 0, "recv: %s", strerror(errno));
    buf[n] = '\0';
    size_t used = 0;
    for (char *s = buf, *nl; *s; s = nl ? nl + 1 : s + strlen(s)) {
        nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        if (len)
            seen_add(s, len);
        if (lines && len && used + len + 2 <= max) {
            memcpy(lines + used, s, len);
            used += len;
            lines[used++] = '\0';
        }
        if (!nl)
            break;
    }
    if (lines)
        lines[used] = '\0';
    return 1;
}

/* The line of the NUL-separated `lines` that starts with `prefix`, or NULL. */
static const char *lines_find(const char *lines, const char *prefix)
{
    for (const char *l = lines; *l; l += strlen(l) + 1)
        if (strncmp(l, prefix, strlen(prefix)) == 0)
            return l;
    return NULL;
}

/* Fails (cqrsd's log shown) if cqrsd has exited. */
static void check_alive(const char *while_what)
{
    int status;
    if (d.pid > 0 && daemon_wait_exit(&d, 0, &status)) {
        daemon_show_log(&d, "cqrsd exited");
        cr_assert_fail("cqrsd exited (wait status 0x%x) while %s; notifications so far:\n%s",
                       status, while_what, seen_tail());
    }
}

/* Reads notifications until one line starts with `prefix` (copied into
 * `got` when not NULL), for up to `ms`; asserts otherwise. Lines before it
 * are put in `before` (NUL-separated) when not NULL. */
static void notify_wait(const char *prefix, int ms, char *got, size_t gotlen, char *before,
                        size_t beforelen)
{
    int64_t deadline = harness_ms() + ms;
    size_t bused = 0;
    if (before)
        before[0] = '\0';
    for (;;) {
        char lines[4096];
        int64_t left = deadline - harness_ms();
        if (left < 0)
            left = 0;
        if (notify_read(left > 100 ? 100 : (int)left, lines, sizeof lines)) {
            for (const char *l = lines; *l; l += strlen(l) + 1) {
                if (strncmp(l, prefix, strlen(prefix)) == 0) {
                    if (got)
                        snprintf(got, gotlen, "%s", l);
                    return;
                }
                size_t len = strlen(l);
                if (before && bused + len + 2 <= beforelen) {
                    memcpy(before + bused, l, len + 1);
                    bused += len + 1;
                    before[bused] = '\0';
                }
            }
            continue;
        }
        check_alive("waiting for a notification");
        if (harness_ms() >= deadline)
            break;
    }
    daemon_show_log(&d, "notification missing");
    cr_assert_fail("no notification \"%s...\" within %d ms; received so far:\n%s", prefix, ms,
                   seen_tail());
}

/* Reads whatever is queued. */
static void notify_drain(void)
{
    while (notify_read(0, NULL, 0))
        ;
}

/* ---- processes ------------------------------------------------------------- */

/* Up to `max` live processes of process group `pgid` other than `pgid`
 * itself: cqrsd's workers, standby ones included. */
static size_t group_members(pid_t pgid, pid_t *out, size_t max)
{
    size_t n = 0;
    DIR *dir = opendir("/proc");
    cr_assert(dir, "opendir /proc: %s", strerror(errno));
    for (struct dirent *e; (e = readdir(dir)) != NULL && n < max;) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == pgid)
            continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        const char *p = strrchr(buf, ')');
        char st = 0;
        int ppid = 0, pgrp = 0;
        if (p && sscanf(p + 1, " %c %d %d", &st, &ppid, &pgrp) == 3 && pgrp == pgid &&
            st != 'Z' && st != 'X')
            out[n++] = (pid_t)pid;
    }
    closedir(dir);
    return n;
}

/* /proc/<pid>/environ as NUL-separated strings ending with an empty one
 * (malloc'd); NULL when the process is gone. */
static char *read_environ(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t len = 0, cap = 8192;
    char *buf = malloc(cap);
    cr_assert(buf, "out of memory");
    for (;;) {
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert(buf, "out of memory");
        }
        ssize_t r = read(fd, buf + len, cap - len - 2);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    buf[len + 1] = '\0';
    return buf;
}

/* Asserts that worker `pid` (named `what`) has none of systemd's variables
 * meant for cqrsd. With `marker` (a "KEY=VALUE" given to cqrsd too), also
 * that it has that one: the environment was read and is inherited. A
 * process gone meanwhile (a standby worker replaced) counts when
 * `must_exist` is 0. */
static void check_worker_env(pid_t pid, const char *what, const char *marker, int must_exist)
{
    static const char *const forbidden[] = {
        "NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID=", "LISTEN_PID=", "LISTEN_FDS=",
        "LISTEN_FDNAMES=",
    };
    char *env = read_environ(pid);
    if (!env) {
        cr_assert(!must_exist, "cannot read /proc/%d/environ of %s: %s", (int)pid, what,
                  strerror(errno));
        return;
    }
    int has_marker = 0;
    char bad[300] = "";
    for (const char *e = env; *e; e += strlen(e) + 1) {
        for (size_t i = 0; i < sizeof forbidden / sizeof forbidden[0] && !bad[0]; i++)
            if (strncmp(e, forbidden[i], strlen(forbidden[i])) == 0)
                snprintf(bad, sizeof bad, "%s", e);
        if (marker && strcmp(e, marker) == 0)
            has_marker = 1;
    }
    int empty = env[0] == '\0';
    free(env);
    cr_assert(!bad[0], "%s (pid %d) inherited %s", what, (int)pid, bad);
    if (marker && (must_exist || !empty))
        cr_assert(has_marker, "%s (pid %d) lacks %s, which cqrsd was started with: its "
                  "environment was not read, or not inherited", what, (int)pid, marker);
}

/* Every worker of cqrsd (those STATUS lists, and any other process in its
 * group, standby workers included). */
static void check_workers_env(const char *marker)
{
    struct child_status st[HARNESS_MAX_CHILDREN];
    size_t n = daemon_status(&d, st, HARNESS_MAX_CHILDREN);
    cr_assert(n > 0, "STATUS lists no children");
    for (size_t i = 0; i < n && i < HARNESS_MAX_CHILDREN; i++) {
        cr_assert(st[i].pid > 0, "child %s has no pid", st[i].name);
        char what[100];
        snprintf(what, sizeof what, "the %.64s worker", st[i].name);
        check_worker_env(st[i].pid, what, marker, 1);
    }
    pid_t all[64];
    size_t m = group_members(d.pid, all, 64);
    cr_assert(m >= n, "cqrsd's process group holds %zu workers, STATUS lists %zu", m, n);
    for (size_t i = 0; i < m; i++)
        check_worker_env(all[i], "a worker in cqrsd's process group", marker, 0);
}

/* STATUS shows `name` running; its pid. */
static pid_t running_pid(const char *name)
{
    return daemon_child_pid(&d, name);
}

/* Polls cqrsd.log for up to `ms` for a line holding `a` and (when not NULL)
 * `b`, both lower case, compared without regard to case; returns that line
 * (malloc'd) or NULL. */
static char *log_line_with(const char *a, const char *b, int ms)
{
    int64_t deadline = harness_ms() + ms;
    for (;;) {
        char *log = daemon_log(&d);
        char *lower = strdup(log);
        cr_assert(lower, "out of memory");
        for (char *p = lower; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        char *hit = NULL;
        for (char *l = lower, *nl; *l && !hit; l = nl ? nl + 1 : l + strlen(l)) {
            nl = strchr(l, '\n');
            if (nl)
                *nl = '\0';
            if (strstr(l, a) && (!b || strstr(l, b))) {
                hit = strdup(log + (l - lower));
                cr_assert(hit, "out of memory");
                char *end = strchr(hit, '\n');
                if (end)
                    *end = '\0';
            }
        }
        free(lower);
        free(log);
        if (hit || harness_ms() >= deadline)
            return hit;
        harness_sleep_ms(20);
    }
}

static void write_file(const char *path, const char *text)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "w");
    cr_assert(f, "cannot create %s: %s", tmp, strerror(errno));
    int ok = fputs(text, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    cr_assert(ok, "cannot write %s", tmp);
    cr_assert(rename(tmp, path) == 0, "rename %s: %s", tmp, strerror(errno));
}

static Cqrs__Reply *topup(struct cqrs_client *c, const char *id, int64_t amount)
{
    Wallet__TopUp m = WALLET__TOP_UP__INIT;
    m.amount = amount;
    return send_cmd(c, "wallet", id, &m.base, NULL, -1);
}

static Cqrs__Reply *open_account(struct cqrs_client *c, const char *id)
{
    Account__OpenAccount m = ACCOUNT__OPEN_ACCOUNT__INIT;
    m.owner = (char *)"Ada";
    m.email = (char *)"ada@example.org";
    return send_cmd(c, "account", id, &m.base, NULL, -1);
}

/* A command through a fresh connection: must be answered OK. */
static void expect_topup_ok(const char *id, int64_t amount, const char *when)
{
    cl = daemon_connect(&d);
    rp = topup(cl, id, amount);
    check_status(rp, OK, when);
    free_held_objects();
}

static void expect_open_ok(const char *id, const char *when)
{
    cl = daemon_connect(&d);
    rp = open_account(cl, id);
    check_status(rp, OK, when);
    free_held_objects();
}

/* SIGTERM must end cqrsd with exit 0 within 15 s. */
static void stop_expect_0(void)
{
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

/* ---- 1. notifications ------------------------------------------------------ */

#define MARKER "CQRS_SYSTEMD_TEST_MARKER=inherited"

Test(systemd, notify_ready_status_watchdog_stopping)
{
    daemon_prepare(&d, NULL);
    const char *ns = notify_bind();
    /* LISTEN_* meant for another process (pid 1): cqrsd must ignore them
     * and still keep them from its workers. */
    const char *env[] = { ns, "WATCHDOG_USEC=200000", "LISTEN_PID=1", "LISTEN_FDS=1",
                          "LISTEN_FDNAMES=stale", MARKER, NULL };
    daemon_spawn_with(&d, env, NULL, NULL);

    /* READY=1, and at that moment every child is up: the log says so and
     * STATUS (the socket accepts already) shows both running. */
    char before[8192];
    notify_wait("READY=1", 15000, NULL, 0, before, sizeof before);
    char *log = daemon_log(&d);
    int booted = strstr(log, "all 3 children running") != NULL;
    free(log);
    if (!booted)
        daemon_show_log(&d, "READY=1 came before the children ran");
    cr_assert(booted, "READY=1 arrived before cqrsd logged \"all 3 children running\"");
    cr_assert(!lines_find(before, "READY="), "a READY before the one after boot: %s",
              lines_find(before, "READY="));
    cr_assert(!lines_find(before, "STOPPING="), "STOPPING before READY: %s",
              lines_find(before, "STOPPING="));
    struct child_status st[HARNESS_MAX_CHILDREN];
    size_t n = daemon_status(&d, st, HARNESS_MAX_CHILDREN);
    cr_assert_eq(n, 3, "STATUS lists %zu children right after READY=1, expected 3", n);
    cr_assert_str_eq(st[0].name, "wallet");
    cr_assert_str_eq(st[1].name, "account");
    cr_assert_str_eq(st[2].name, "readmodel");
    for (size_t i = 0; i < 3; i++)
        cr_assert(strcmp(st[i].state, "running") == 0 && st[i].pid > 0,
                  "right after READY=1, %s is %s (pid %d)", st[i].name, st[i].state,
                  (int)st[i].pid);

    /* STATUS= names how many children run (sent with READY=1, then every 5 s). */
    char status_line[600];
    notify_wait("STATUS=", 7000, status_line, sizeof status_line, NULL, 0);
    cr_assert(strstr(status_line, "3/3 children running"),
              "STATUS= line does not say \"3/3 children running\": %s", status_line);

    /* WATCHDOG=1 every WATCHDOG_USEC/2 (100 ms): over one second, at least
     * 5 and (not a speed check, a flood check) at most 50. */
    notify_drain();
    int watchdogs = 0;
    int64_t end = harness_ms() + 1000;
    for (int64_t now; (now = harness_ms()) < end;) {
        char lines[4096];
        if (notify_read((int)(end - now), lines, sizeof lines))
            for (const char *l = lines; *l; l += strlen(l) + 1)
                watchdogs += strcmp(l, "WATCHDOG=1") == 0;
    }
    check_alive("counting WATCHDOG=1");
    cr_assert(watchdogs >= 5 && watchdogs <= 50,
              "%d WATCHDOG=1 in one second with WATCHDOG_USEC=200000 (expected about 10)",
              watchdogs);

    /* None of NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_* reached a worker. */
    check_workers_env(MARKER);

    /* SIGTERM: STOPPING=1, then exit 0. */
    notify_drain();
    cr_assert(!seen || !strstr(seen, "STOPPING="), "STOPPING before SIGTERM:\n%s", seen_tail());
    cr_assert(kill(d.pid, SIGTERM) == 0, "kill: %s", strerror(errno));
    notify_wait("STOPPING=1", 15000, NULL, 0, NULL, 0);
    int status = -1;
    int exited = daemon_wait_exit(&d, 15000, &status);
    if (!exited || !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        daemon_show_log(&d, "cqrsd did not exit 0 after STOPPING=1");
    cr_assert(exited, "cqrsd still runs 15 s after SIGTERM and STOPPING=1");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", status);
    cr_assert(!log_line_with("sanitizer", NULL, 0), "a sanitizer report in cqrsd.log");
}

/* Without NOTIFY_SOCKET, WATCHDOG_USEC alone must neither break anything
 * nor reach the workers; a WATCHDOG_PID naming another process turns the
 * watchdog off (nothing to check from here but that cqrsd runs). */
Test(systemd, watchdog_without_notify_socket)
{
    daemon_prepare(&d, NULL);
    const char *env[] = { "WATCHDOG_USEC=200000", "WATCHDOG_PID=1", MARKER, NULL };
    daemon_spawn_with(&d, env, NULL, NULL);
    daemon_wait_ready(&d);
    expect_topup_ok("w1", 5, "TopUp without NOTIFY_SOCKET");
    check_workers_env(MARKER);
    stop_expect_0();
}

/* ---- 2. socket activation -------------------------------------------------- */

/* systemd-socket-activate, from PATH or /usr/bin; "" when absent. */
static const char *find_activator(void)
{
    static char found[PATH_MAX];
    const char *path = getenv("PATH");
    char *copy = strdup(path && *path ? path : "/usr/bin:/bin");
    cr_assert(copy, "out of memory");
    found[0] = '\0';
    for (char *save = NULL, *dir = strtok_r(copy, ":", &save); dir && !found[0];
         dir = strtok_r(NULL, ":", &save)) {
        snprintf(found, sizeof found, "%s/systemd-socket-activate", dir);
        if (access(found, X_OK) != 0)
            found[0] = '\0';
    }
    free(copy);
    if (!found[0] && access("/usr/bin/systemd-socket-activate", X_OK) == 0)
        snprintf(found, sizeof found, "/usr/bin/systemd-socket-activate");
    return found;
}

Test(systemd, socket_activation)
{
    const char *activator = find_activator();
    if (!activator[0])
        cr_skip("systemd-socket-activate is not installed (neither in PATH nor /usr/bin)");
    daemon_prepare(&d, NULL);
    /* The activator execs cqrsd with only LISTEN_* and its -E variables in
     * the environment: the marker comes through -E. */
    const char *wrapper_e[] = { activator, "-l", d.sock, "-E", MARKER, NULL };
    daemon_spawn_with(&d, NULL, wrapper_e, NULL);

    /* The activator binds the socket and waits for a connection. */
    int64_t deadline = harness_ms() + 10000;
    struct stat sb;
    while (!(stat(d.sock, &sb) == 0 && S_ISSOCK(sb.st_mode))) {
        check_alive("waiting for systemd-socket-activate to bind the socket");
        cr_assert(harness_ms() < deadline, "systemd-socket-activate did not bind %s in 10 s",
                  d.sock);
        harness_sleep_ms(10);
    }
    char exe[PATH_MAX], cqrsd_real[PATH_MAX];
    cr_assert(realpath(CQRSD_PATH, cqrsd_real), "realpath %s: %s", CQRSD_PATH, strerror(errno));

    /* The first connection starts cqrsd; a command on it is served. */
    cl = daemon_connect(&d);
    rp = topup(cl, "w1", 100);
    check_status(rp, OK, "TopUp on the connection that activated cqrsd");
    cr_assert_eq(rp->version, 1, "TopUp: version %llu, expected 1",
                 (unsigned long long)rp->version);
    free_held_objects();

    /* The activator's process is now cqrsd (exec, no fork). */
    char link[64];
    snprintf(link, sizeof link, "/proc/%d/exe", (int)d.pid);
    ssize_t n = readlink(link, exe, sizeof exe - 1);
    cr_assert(n > 0, "readlink %s: %s", link, strerror(errno));
    exe[n] = '\0';
    cr_assert_str_eq(exe, cqrsd_real, "the activated process runs %s, not cqrsd", exe);

    struct child_status st[HARNESS_MAX_CHILDREN];
    size_t k = daemon_status(&d, st, HARNESS_MAX_CHILDREN);
    cr_assert_eq(k, 3, "STATUS lists %zu children, expected 3 (wallet, account, readmodel)", k);
    cr_assert(strcmp(st[0].name, "wallet") == 0 && strcmp(st[0].state, "running") == 0,
              "first child: %s %s", st[0].name, st[0].state);
    cr_assert(strcmp(st[1].name, "account") == 0 && strcmp(st[1].state, "running") == 0,
              "second child: %s %s", st[1].name, st[1].state);
    expect_open_ok("a1", "OpenAccount on a second connection");

    char *line = log_line_with("(socket from systemd)", NULL, 0);
    if (!line)
        daemon_show_log(&d, "no \"(socket from systemd)\"");
    cr_assert(line, "cqrsd.log does not say \"(socket from systemd)\"");
    free(line);

    check_workers_env(MARKER);

    /* SIGTERM: exit 0, and the socket file is systemd's: still there. */
    stop_expect_0();
    cr_assert(stat(d.sock, &sb) == 0 && S_ISSOCK(sb.st_mode),
              "cqrsd removed the socket file %s it got from systemd (%s)", d.sock,
              strerror(errno));
}

/* ---- 3. reload ------------------------------------------------------------- */

/* Runs `cqrsctl reload`; its exit code, its output in out_s and err_s. */
static int ctl_reload(void)
{
    free(out_s);
    free(err_s);
    out_s = err_s = NULL;
    return run_cqrsctl(&d, &out_s, &err_s, "reload", (char *)NULL);
}

static void expect_reload_ok(const char *when)
{
    int rc = ctl_reload();
    if (rc != 0)
        daemon_show_log(&d, "cqrsctl reload failed");
    cr_assert_eq(rc, 0, "%s: cqrsctl reload exited %d\nstdout: %s\nstderr: %s", when, rc,
                 out_s, err_s);
    cr_assert(strstr(out_s, "OK"), "%s: cqrsctl reload printed: %s", when, out_s);
    free_held_objects();
}

static int status_lists(const char *name)
{
    struct child_status s;
    return daemon_child_try(&d, name, &s) == 0;
}

Test(systemd, reload_adds_removes_and_restarts_children)
{
    daemon_start_conf(&d, "[child wallet]\n", NULL);
    const char *conf = daemon_conf_path(&d);
    struct child_status st[HARNESS_MAX_CHILDREN];
    size_t n = daemon_status(&d, st, HARNESS_MAX_CHILDREN);
    cr_assert_eq(n, 1, "STATUS lists %zu children, the file names 1", n);
    pid_t wallet = running_pid("wallet");
    expect_topup_ok("w1", 10, "TopUp before any reload");

    /* Adding a child: started by the time reload returns; wallet untouched. */
    write_file(conf, "[child wallet]\n[child account]\n");
    expect_reload_ok("adding account");
    n = daemon_status(&d, st, HARNESS_MAX_CHILDREN);
    cr_assert_eq(n, 2, "STATUS lists %zu children after adding account, expected 2", n);
    pid_t account = running_pid("account");
    cr_assert_eq(running_pid("wallet"), wallet, "wallet was restarted by a reload that only "
                 "added account (pid %d, was %d)", (int)running_pid("wallet"), (int)wallet);
    expect_open_ok("a1", "OpenAccount after account was added");
    expect_topup_ok("w1", 10, "TopUp after account was added");

    /* Removing a child, by SIGHUP: wallet goes, account keeps its pid. */
    write_file(conf, "[child account]\n");
    cr_assert(kill(d.pid, SIGHUP) == 0, "kill SIGHUP: %s", strerror(errno));
    int64_t deadline = harness_ms() + 10000;
    while (status_lists("wallet")) {
        check_alive("waiting for SIGHUP to remove wallet");
        if (harness_ms() >= deadline) {
            daemon_show_log(&d, "wallet still listed");
            cr_assert_fail("wallet still in STATUS 10 s after SIGHUP with a file without it");
        }
        harness_sleep_ms(20);
    }
    n = daemon_status(&d, st, HARNESS_MAX_CHILDREN);
    cr_assert_eq(n, 1, "STATUS lists %zu children after removing wallet, expected 1", n);
    cr_assert_eq(running_pid("account"), account, "account was restarted by a reload that "
                 "only removed wallet");
    cr_assert(pid_wait_dead(wallet, 10000), "the removed wallet worker (pid %d) still runs",
              (int)wallet);
    cl = daemon_connect(&d);
    rp = topup(cl, "w1", 10);
    check_status(rp, INVALID, "TopUp after wallet was removed");
    cr_assert(strstr(rp->error, "unknown aggregate type"),
              "TopUp after wallet was removed: error \"%s\"", rp->error);
    free_held_objects();
    expect_open_ok("a2", "OpenAccount after wallet was removed");

    /* Changing a child (its restart type): it is restarted, new pid. */
    write_file(conf, "[child account]\nrestart = transient\n");
    expect_reload_ok("changing account's restart type");
    struct child_status a = daemon_child(&d, "account");
    cr_assert(strcmp(a.state, "running") == 0 && a.pid > 0 && a.pid != account,
              "right after a reload that changed account: %s with pid %d (was %d), expected "
              "running with a new pid", a.state, (int)a.pid, (int)account);
    cr_assert(pid_wait_dead(account, 10000), "the old account worker (pid %d) still runs",
              (int)account);
    expect_open_ok("a3", "OpenAccount after account was changed");

    /* Bringing wallet back: its events are still there. */
    write_file(conf, "[child account]\nrestart = transient\n[child wallet]\n");
    expect_reload_ok("adding wallet back");
    cr_assert_eq(running_pid("account"), a.pid, "account restarted by adding wallet");
    cl = daemon_connect(&d);
    rp = topup(cl, "w1", 1);
    check_status(rp, OK, "TopUp after wallet came back");
    cr_assert_eq(rp->version, 3, "w1 at version %llu after coming back, expected 3",
                 (unsigned long long)rp->version);
    free_held_objects();
    stop_expect_0();
}

/* A child whose settings did not change keeps running through a reload of
 * an identical file. */
Test(systemd, reload_unchanged_file_restarts_nothing)
{
    daemon_start_conf(&d, "[child wallet]\n[child account]\n", NULL);
    pid_t wallet = running_pid("wallet"), account = running_pid("account");
    expect_reload_ok("the same file");
    cr_assert_eq(running_pid("wallet"), wallet, "wallet restarted by a no-op reload");
    cr_assert_eq(running_pid("account"), account, "account restarted by a no-op reload");
    expect_topup_ok("w1", 1, "TopUp after a no-op reload");
    stop_expect_0();
}

/* Compares two STATUS snapshots: same children, order, pids and states. */
static void expect_same_status(const struct child_status *a, size_t na,
                               const struct child_status *b, size_t nb, const char *when)
{
    cr_assert_eq(na, nb, "%s: STATUS lists %zu children, before %zu", when, nb, na);
    for (size_t i = 0; i < na; i++) {
        cr_assert_str_eq(a[i].name, b[i].name, "%s: child %zu is %s, was %s", when, i,
                         b[i].name, a[i].name);
        cr_assert_eq(a[i].pid, b[i].pid, "%s: %s has pid %d, was %d", when, a[i].name,
                     (int)b[i].pid, (int)a[i].pid);
        cr_assert_str_eq(a[i].state, b[i].state, "%s: %s is %s, was %s", when, a[i].name,
                         b[i].state, a[i].state);
        cr_assert_eq(a[i].restarts, b[i].restarts, "%s: %s has %u restarts, had %u", when,
                     a[i].name, b[i].restarts, a[i].restarts);
    }
}

Test(systemd, reload_of_a_broken_file_is_refused)
{
    daemon_start_conf(&d, "[child wallet]\n[child account]\n", NULL);
    const char *conf = daemon_conf_path(&d);
    struct child_status before[HARNESS_MAX_CHILDREN], after[HARNESS_MAX_CHILDREN];
    size_t nb = daemon_status(&d, before, HARNESS_MAX_CHILDREN);
    cr_assert_eq(nb, 2);

    write_file(conf, "[supervisor]\nintensity = abc\n");
    int rc = ctl_reload();
    cr_assert_eq(rc, 65, "cqrsctl reload of a broken file exited %d, expected 65\nstdout: %s\n"
                 "stderr: %s", rc, out_s, err_s);
    char where[PATH_MAX + 8];
    snprintf(where, sizeof where, "%s:2", conf);
    cr_assert(strstr(err_s, where), "cqrsctl's message does not name %s: %s", where, err_s);
    free_held_objects();

    char *line = log_line_with("reload", "refus", 5000);
    if (!line)
        daemon_show_log(&d, "no log line refusing the reload");
    cr_assert(line, "cqrsd.log has no line saying the reload was refused");
    free(line);

    size_t na = daemon_status(&d, after, HARNESS_MAX_CHILDREN);
    expect_same_status(before, nb, after, na, "after a refused reload");
    expect_topup_ok("w1", 7, "TopUp after a refused reload");
    expect_open_ok("a1", "OpenAccount after a refused reload");

    /* The same by SIGHUP: refused, cqrsd goes on. */
    cr_assert(kill(d.pid, SIGHUP) == 0, "kill SIGHUP: %s", strerror(errno));
    int64_t deadline = harness_ms() + 5000;
    int refusals = 0;
    while (refusals < 2 && harness_ms() < deadline) {
        char *log = daemon_log(&d);
        refusals = 0;
        for (char *l = log; *l; l++)
            *l = (char)tolower((unsigned char)*l);
        for (char *l = log, *nl; l && *l; l = nl ? nl + 1 : NULL) {
            nl = strchr(l, '\n');
            if (nl)
                *nl = '\0';
            refusals += strstr(l, "reload") && strstr(l, "refus");
        }
        free(log);
        check_alive("waiting for a refused SIGHUP reload");
        if (refusals < 2)
            harness_sleep_ms(20);
    }
    if (refusals < 2)
        daemon_show_log(&d, "SIGHUP with a broken file");
    cr_assert(refusals >= 2, "no second refusal logged within 5 s of SIGHUP with a broken "
              "file");
    na = daemon_status(&d, after, HARNESS_MAX_CHILDREN);
    expect_same_status(before, nb, after, na, "after a refused SIGHUP");
    expect_topup_ok("w1", 7, "TopUp after a refused SIGHUP");

    /* A good file is taken again. */
    write_file(conf, "[child wallet]\n[child account]\n");
    expect_reload_ok("a good file after a broken one");
    na = daemon_status(&d, after, HARNESS_MAX_CHILDREN);
    expect_same_status(before, nb, after, na, "after reloading the original file");
    stop_expect_0();
}

Test(systemd, reload_notifies_reloading_then_ready)
{
    daemon_prepare(&d, "[child wallet]\n");
    const char *ns = notify_bind();
    const char *env[] = { ns, NULL };
    daemon_spawn_with(&d, env, NULL, NULL);
    notify_wait("READY=1", 15000, NULL, 0, NULL, 0);
    daemon_wait_ready(&d);
    notify_drain();

    write_file(daemon_conf_path(&d), "[child wallet]\n[child account]\n");
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long t0 = (unsigned long long)ts.tv_sec * 1000000ull +
                            (unsigned long long)ts.tv_nsec / 1000;
    expect_reload_ok("adding account, with NOTIFY_SOCKET");
    /* RELOADING=1 first (with its MONOTONIC_USEC when sent), then READY=1. */
    char got[600], before[8192];
    notify_wait("RELOADING=1", 5000, got, sizeof got, before, sizeof before);
    cr_assert(!lines_find(before, "READY="), "READY before RELOADING=1: %s",
              lines_find(before, "READY="));
    /* MONOTONIC_USEC travels in the same datagram as RELOADING=1: find it
     * among the lines received last. */
    const char *mono = seen ? strstr(seen, "MONOTONIC_USEC=") : NULL;
    if (mono) {
        unsigned long long us = strtoull(mono + strlen("MONOTONIC_USEC="), NULL, 10);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        unsigned long long t1 = (unsigned long long)ts.tv_sec * 1000000ull +
                                (unsigned long long)ts.tv_nsec / 1000;
        cr_assert(us >= t0 && us <= t1, "MONOTONIC_USEC=%llu is not between %llu and %llu",
                  us, t0, t1);
    }
    notify_wait("READY=1", 5000, NULL, 0, NULL, 0);
    cr_assert(strcmp(daemon_child(&d, "account").state, "running") == 0,
              "account not running after the reload's READY=1");

    /* A refused reload must not leave systemd waiting: RELOADING=1, when
     * sent, is followed by READY=1 as well. */
    notify_drain();
    size_t mark = seen_len;
    write_file(daemon_conf_path(&d), "[supervisor]\nintensity = abc\n");
    int rc = ctl_reload();
    cr_assert_eq(rc, 65, "cqrsctl reload of a broken file exited %d\nstderr: %s", rc, err_s);
    free_held_objects();
    notify_drain();
    harness_sleep_ms(200);
    notify_drain();
    const char *after = seen ? seen + mark : "";
    const char *rl = strstr(after, "RELOADING=1");
    if (rl)
        cr_assert(strstr(rl, "READY=1"), "a refused reload sent RELOADING=1 but no READY=1 "
                  "after it:\n%s", after);
    expect_topup_ok("w1", 1, "TopUp after a refused reload");
    stop_expect_0();
}

/* ---- READY=1 and reloads that cannot be carried out now --------------------
 *
 * A reload asked for while cqrsd boots, or while another reload is being
 * carried out, must not tell systemd READY=1 before every child runs. To
 * make "while" last, the test SIGSTOPs the workers cqrsd starts, before
 * they say ready, and SIGCONTs them afterwards. */

/* A configuration that lets a worker be held stopped: no standby workers,
 * and timeouts far beyond the test's. */
#define HOLD_SUP "[supervisor]\nstandby = false\nstart_timeout_ms = 60000\n" \
                 "heartbeat_timeout_ms = 60000\n"

/* 1 if cqrsd.log says the child with `pid` runs. */
static int logged_running(pid_t pid)
{
    char what[64];
    snprintf(what, sizeof what, "running (pid %d", (int)pid);
    char *line = log_line_with(what, NULL, 0);
    free(line);
    return line != NULL;
}

/* SIGSTOPs every process that appears in cqrsd's group and is not in
 * `known`, for up to `ms`, until one of them is held: stopped before it
 * said ready (300 ms later cqrsd still has not logged it running). 1 then;
 * 0 when `missed` shows up in the log first (the workers were faster than
 * the test) or at the deadline. */
static int hold_new_workers(const pid_t *known, size_t n_known, const char *missed, int ms)
{
    int64_t deadline = harness_ms() + ms, last_stop = 0;
    while (harness_ms() < deadline) {
        pid_t all[64];
        size_t m = group_members(d.pid, all, 64);
        for (size_t i = 0; i < m; i++) {
            int old = 0;
            for (size_t j = 0; j < n_known && !old; j++)
                old = all[i] == known[j];
            for (size_t j = 0; j < n_held && !old; j++)
                old = all[i] == held[j];
            if (!old && n_held < sizeof held / sizeof held[0] && kill(all[i], SIGSTOP) == 0) {
                held[n_held++] = all[i];
                last_stop = harness_ms();
            }
        }
        if (n_held && harness_ms() - last_stop >= 300) {
            char *line = log_line_with(missed, NULL, 0);
            free(line);
            if (line)
                return 0;
            for (size_t j = 0; j < n_held; j++)
                if (!logged_running(held[j]))
                    return 1;
        }
        check_alive("holding workers");
        harness_sleep_ms(1);
    }
    return 0;
}

/* Reads notifications for `ms`; fails if READY=1 comes while cqrsd.log
 * lacks `needed` (the line that says every child runs). */
static void no_ready_without(const char *needed, int ms, const char *when)
{
    int64_t end = harness_ms() + ms;
    for (int64_t now; (now = harness_ms()) < end;) {
        char lines[4096];
        if (!notify_read((int)(end - now), lines, sizeof lines) || !lines_find(lines, "READY=1"))
            continue;
        char *line = log_line_with(needed, NULL, 0);
        free(line);
        if (!line)
            daemon_show_log(&d, "READY=1 too early");
        cr_assert(line, "%s: READY=1 arrived while cqrsd.log does not yet say \"%s\" (a worker "
                  "is held stopped before it is ready); notifications:\n%s", when, needed,
                  seen_tail());
    }
}

Test(systemd, sighup_while_booting_sends_no_early_ready)
{
    daemon_prepare(&d, HOLD_SUP "[child wallet]\n[child account]\n");
    const char *ns = notify_bind();
    const char *env[] = { ns, NULL };
    daemon_spawn_with(&d, env, NULL, NULL);
    /* SIGHUP is handled once cqrsd logs that it starts (its default action
     * would kill cqrsd before) */
    char *line = log_line_with(" starting: ", NULL, 0);
    for (int64_t deadline = harness_ms() + 10000; !line && harness_ms() < deadline;) {
        check_alive("waiting for cqrsd to start");
        harness_sleep_ms(1);
        line = log_line_with(" starting: ", NULL, 0);
    }
    cr_assert(line, "cqrsd did not log that it starts within 10 s");
    free(line);
    if (!hold_new_workers(NULL, 0, "all 2 children running", 10000))
        cr_skip("the workers said ready before the test could hold one stopped");

    cr_assert(kill(d.pid, SIGHUP) == 0, "kill SIGHUP: %s", strerror(errno));
    no_ready_without("all 2 children running", 1000, "SIGHUP while booting");
    check_alive("after SIGHUP while booting");

    release_held();
    if (!strstr(seen ? seen : "", "READY=1"))
        notify_wait("READY=1", 15000, NULL, 0, NULL, 0);
    line = log_line_with("all 2 children running", NULL, 0);
    cr_assert(line, "READY=1 arrived before \"all 2 children running\"");
    free(line);
    daemon_wait_ready(&d);
    expect_topup_ok("w1", 1, "TopUp after a SIGHUP during boot");
    stop_expect_0();
}

/* The first reload (SIGHUP) adds account, whose worker is held stopped;
 * a second one (RELOAD from a client) arrives meanwhile. Whatever cqrsd
 * answers it (wait, or refuse), READY=1 must wait for account to run. */
Test(systemd, reload_during_a_reload_sends_no_early_ready)
{
    daemon_prepare(&d, HOLD_SUP "[child wallet]\n");
    const char *ns = notify_bind();
    const char *env[] = { ns, NULL };
    daemon_spawn_with(&d, env, NULL, NULL);
    notify_wait("READY=1", 15000, NULL, 0, NULL, 0);
    daemon_wait_ready(&d);
    pid_t known[64];
    size_t n_known = group_members(d.pid, known, 64);
    notify_drain();

    write_file(daemon_conf_path(&d), HOLD_SUP "[child wallet]\n[child account]\n");
    cr_assert(kill(d.pid, SIGHUP) == 0, "kill SIGHUP: %s", strerror(errno));
    if (!hold_new_workers(known, n_known, "child account running", 10000))
        cr_skip("the account worker said ready before the test could hold it stopped");
    notify_wait("RELOADING=1", 5000, NULL, 0, NULL, 0);

    /* RELOAD through a raw client: a cqrsd that makes it wait for the
     * first reload must not block the test. */
    cl = daemon_connect(&d);
    Cqrs__Control ctl = CQRS__CONTROL__INIT;
    ctl.op = CQRS__CONTROL__OP__RELOAD;
    Cqrs__Request req = CQRS__REQUEST__INIT;
    req.body_case = CQRS__REQUEST__BODY_CONTROL;
    req.control = &ctl;
    uint64_t id = 0;
    cr_assert(cqrs_client_send(cl, &req, &id) == 0, "RELOAD: %s", strerror(errno));
    no_ready_without("child account running", 1000, "a RELOAD during a SIGHUP reload");

    release_held();
    cr_assert(cqrs_client_recv(cl, id, &rp) == 0, "no reply to RELOAD: %s", strerror(errno));
    cr_log_info("the second reload was answered %s%s%s", cqrs_status_name(rp->status),
                rp->error[0] ? ": " : "", rp->error);
    free_held_objects();
    daemon_wait_state(&d, "account", "running", 15000);
    expect_open_ok("a1", "OpenAccount after the reloads");
    stop_expect_0();
}

/* After STOPPING=1, a SIGHUP (say `systemctl kill -s HUP` racing a stop)
 * must not make cqrsd tell systemd it is reloading or ready again. The
 * workers are held stopped so that the shutdown lasts. */
Test(systemd, sighup_while_stopping_sends_no_ready)
{
    daemon_prepare(&d, HOLD_SUP "[child wallet]\n[child account]\n");
    const char *ns = notify_bind();
    const char *env[] = { ns, NULL };
    daemon_spawn_with(&d, env, NULL, NULL);
    notify_wait("READY=1", 15000, NULL, 0, NULL, 0);
    daemon_wait_ready(&d);
    pid_t workers[] = { running_pid("wallet"), running_pid("account") };
    for (size_t i = 0; i < 2; i++) {
        cr_assert(kill(workers[i], SIGSTOP) == 0, "SIGSTOP %d: %s", (int)workers[i],
                  strerror(errno));
        held[n_held++] = workers[i];
    }
    notify_drain();

    cr_assert(kill(d.pid, SIGTERM) == 0, "kill SIGTERM: %s", strerror(errno));
    notify_wait("STOPPING=1", 5000, NULL, 0, NULL, 0);
    size_t mark = seen_len;
    cr_assert(kill(d.pid, SIGHUP) == 0, "kill SIGHUP: %s", strerror(errno));
    int64_t end = harness_ms() + 1000;
    for (int64_t now; (now = harness_ms()) < end;)
        notify_read((int)(end - now), NULL, 0);
    const char *after = seen + mark;
    cr_assert(!strstr(after, "READY=1") && !strstr(after, "RELOADING=1"),
              "after STOPPING=1, a SIGHUP made cqrsd send:\n%s", after);

    release_held();
    int status = -1;
    int exited = daemon_wait_exit(&d, 15000, &status);
    if (!exited || !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        daemon_show_log(&d, "cqrsd did not exit 0");
    cr_assert(exited, "cqrsd still runs 15 s after SIGTERM");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", status);
}
