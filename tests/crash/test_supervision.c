/*
 * test_supervision — OTP's supervisor_SUITE scenarios against the real cqrsd:
 * real worker processes, real signals, the config file.
 *
 *   - a SIGKILLed child restarts alone; its aggregates are rebuilt from the
 *     logs; its sibling keeps its pid;
 *   - restart types permanent / transient / temporary, each after a normal
 *     exit (SIGTERM to the worker: it exits 0) and after SIGKILL;
 *   - strategies one_for_one, one_for_all, rest_for_one (first and last
 *     child killed), and a temporary sibling left stopped by one_for_all;
 *   - restart intensity: exceeded (exit 1, no worker left), the default
 *     5 in 10 s, restarts spaced wider than the period survived;
 *   - boot: children start in file order; one that fails fails the boot;
 *     a restarted child that never reports ready is killed and replaced;
 *   - config errors exit 78 and name file, line and key;
 *   - shutdown (SIGTERM, SIGINT): reverse order, SIGKILL after shutdown_ms
 *     for a child that ignores SIGTERM (SIGSTOPped), brutal_kill; SIGKILL
 *     of cqrsd itself leaves no worker (standby ones included) alive;
 *   - a hung (SIGSTOPped) worker is found by the heartbeat and replaced;
 *   - cqrsctl kill / restart / status.
 *
 * Timing is only ever a bounded poll with a generous limit; the two lower
 * or upper bounds on a shutdown's length tell "waited for shutdown_ms"
 * from "did not" with seconds of margin.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "account.pb-c.h"
#include "harness.h"
#include "wallet.pb-c.h"

#define RESTART_MS 10000     /* a restarted child must be running again within */
#define EXIT_MS 15000        /* cqrsd must exit by itself within */

/* A config file lists its children: without [child] sections cqrsd has
 * nothing to supervise (and refuses to start). */
#define TWO_CHILDREN "[child wallet]\n[child account]\n"

static struct daemon d;

static void teardown(void)
{
    daemon_cleanup(&d);
}

/* One suite with one fixture: criterion 2.4.1's runner leaks (and so fails
 * under ASan) with two suites that have fixtures under --jobs 2. */
TestSuite(supervision, .fini = teardown, .timeout = 120);

/* --- helpers ---------------------------------------------------------------- */

static void recv_timeout(struct cqrs_client *c, int seconds)
{
    struct timeval tv = { .tv_sec = seconds };
    cr_assert(setsockopt(cqrs_client_fd(c), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0,
              "SO_RCVTIMEO: %s", strerror(errno));
}

/* TopUp `amount` on wallet `id`: asserts OK at `version`; returns the
 * reply (caller frees). */
static Cqrs__Reply *topup(struct cqrs_client *c, const char *id, int64_t amount,
                          uint64_t version)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = amount;
    Cqrs__Reply *r = send_cmd(c, "wallet", id, &t.base, NULL, -1);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "TopUp %s: %s (%s)", id,
                 cqrs_status_name(r->status), r->error);
    cr_assert_eq(r->version, version, "TopUp %s: version %llu, expected %llu", id,
                 (unsigned long long)r->version, (unsigned long long)version);
    return r;
}

/* A TopUp whose WalletToppedUp must go from `from` to `to`: the decision was
 * made on the state before it. */
static void topup_from(struct cqrs_client *c, const char *id, int64_t amount, uint64_t version,
                       int64_t from)
{
    Cqrs__Reply *r = topup(c, id, amount, version);
    cr_assert_eq(r->n_events, 1, "TopUp %s: %zu events", id, r->n_events);
    Wallet__WalletToppedUp *e = wallet__wallet_topped_up__unpack(NULL, r->events[0]->data.len,
                                                                 r->events[0]->data.data);
    cr_assert(e, "WalletToppedUp does not decode");
    cr_assert(e->from == from && e->to == from + amount,
              "TopUp %s went from %lld to %lld, expected from %lld to %lld: the state was not "
              "rebuilt from the log", id, (long long)e->from, (long long)e->to, (long long)from,
              (long long)(from + amount));
    wallet__wallet_topped_up__free_unpacked(e, NULL);
    cqrs__reply__free_unpacked(r, NULL);
}

static Cqrs__Reply *state_of(struct cqrs_client *c, const char *type, const char *id)
{
    Cqrs__Reply *r = NULL;
    cr_assert(cqrs_client_state(c, type, id, &r) == 0, "STATE %s %s: %s", type, id,
              strerror(errno));
    cr_assert_eq(r->status, CQRS__STATUS__OK, "STATE %s %s: %s (%s)", type, id,
                 cqrs_status_name(r->status), r->error);
    return r;
}

static void same_state(const Cqrs__Reply *a, const Cqrs__Reply *b, const char *what)
{
    cr_assert_eq(a->version, b->version, "%s: version %llu before, %llu after", what,
                 (unsigned long long)a->version, (unsigned long long)b->version);
    cr_assert_str_eq(a->state_type, b->state_type, "%s: state type changed", what);
    cr_assert(a->state.len == b->state.len &&
              memcmp(a->state.data, b->state.data, a->state.len) == 0,
              "%s: the state after the restart differs from the state before", what);
}

static void open_account(struct cqrs_client *c, const char *id)
{
    Account__OpenAccount o = ACCOUNT__OPEN_ACCOUNT__INIT;
    o.owner = "ann";
    o.email = "ann@example.com";
    Cqrs__Reply *r = send_cmd(c, "account", id, &o.base, NULL, -1);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "OpenAccount %s: %s (%s)", id,
                 cqrs_status_name(r->status), r->error);
    cqrs__reply__free_unpacked(r, NULL);
}

static void expect_running(const struct child_status *s, const char *name)
{
    cr_assert(strcmp(s->state, "running") == 0 && s->pid > 0,
              "child %s: state \"%s\", pid %d; expected running", name, s->state, (int)s->pid);
}

/* The sibling was left alone: same pid, still running, not restarted. */
static void expect_untouched(const struct child_status *before, const char *name)
{
    struct child_status now = daemon_child(&d, name);
    expect_running(&now, name);
    cr_assert_eq(now.pid, before->pid, "child %s was restarted (pid %d → %d); it should have "
                 "kept its pid", name, (int)before->pid, (int)now.pid);
    cr_assert_eq(now.restarts, before->restarts, "child %s: restarts %u → %u", name,
                 before->restarts, now.restarts);
}

/* An old worker pid is reaped by cqrsd (polls: cqrsd may be about to). */
static void expect_reaped(pid_t pid, const char *what)
{
    int64_t deadline = harness_ms() + 5000;
    while (!pid_gone(pid) && harness_ms() < deadline)
        harness_sleep_ms(10);
    cr_assert(pid_gone(pid), "%s (pid %d) still exists: %s", what, (int)pid,
              pid_alive(pid) ? "alive" : "a zombie nobody reaped");
}

static void expect_exit_status(int st, int code, const char *what)
{
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == code))
        daemon_show_log(&d, what);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == code,
              "%s: cqrsd ended with %s %d, expected exit status %d", what,
              WIFEXITED(st) ? "exit status" : "signal",
              WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), code);
}

/* SIGTERM to cqrsd: it must exit 0. */
static void finish(void)
{
    int st = daemon_stop(&d);
    expect_exit_status(st, 0, "SIGTERM");
}

/* After cqrsd was reaped: no process of its group (its workers, standby
 * ones included) is alive. The supervised children must be gone entirely
 * (cqrsd stopped and reaped them); a standby worker may still be dying of
 * its parent-death signal, hence the short poll. */
static void expect_no_worker_left(const pid_t *pids, int n)
{
    for (int i = 0; i < n; i++)
        cr_assert(pid_gone(pids[i]), "worker pid %d is still there after cqrsd exited (%s)",
                  (int)pids[i], pid_alive(pids[i]) ? "alive" : "an unreaped zombie");
    pid_t left = 0;
    int alive = pgrp_wait_dead(daemon_last_pgid(&d), 1000, &left);
    cr_assert_eq(alive, 0, "%d process(es) of cqrsd's group outlived it, pid %d among them",
                 alive, (int)left);
}

/* Offset of `needle` in `hay`, or -1. */
static long find(const char *hay, const char *needle)
{
    const char *p = strstr(hay, needle);
    return p ? (long)(p - hay) : -1;
}

/* The log line holding `needle` names `also` too. */
static int line_has_both(const char *text, const char *needle, const char *also)
{
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p++) {
        const char *start = p;
        while (start > text && start[-1] != '\n')
            start--;
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - start) : strlen(start);
        char *line = strndup(start, len);
        cr_assert(line, "out of memory");
        int ok = strstr(line, also) != NULL;
        free(line);
        if (ok)
            return 1;
    }
    return 0;
}

/* The state letter of a process in /proc ('T' stopped, 'Z' zombie ...). */
static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return '?';
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

static void sigstop(pid_t pid)
{
    cr_assert(kill(pid, SIGSTOP) == 0, "SIGSTOP %d: %s", (int)pid, strerror(errno));
    int64_t deadline = harness_ms() + 5000;
    while (proc_state(pid) != 'T' && harness_ms() < deadline)
        harness_sleep_ms(5);
    cr_assert_eq(proc_state(pid), 'T', "pid %d did not stop", (int)pid);
}

/* --- one_for_one, without a config file: the built-in defaults ------------- */

Test(supervision, sigkill_restarts_only_that_child_and_rebuilds_its_state)
{
    daemon_start(&d, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 30);
    cqrs__reply__free_unpacked(topup(c, "w1", 100, 1), NULL);
    Wallet__RenameWallet rn = WALLET__RENAME_WALLET__INIT;
    rn.name = "Savings";
    Cqrs__Reply *r = send_cmd(c, "wallet", "w1", &rn.base, NULL, -1);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "RenameWallet: %s", r->error);
    cqrs__reply__free_unpacked(r, NULL);
    cqrs__reply__free_unpacked(topup(c, "w2", 7, 1), NULL);
    open_account(c, "a1");
    Cqrs__Reply *w1_before = state_of(c, "wallet", "w1");
    Cqrs__Reply *w2_before = state_of(c, "wallet", "w2");
    Cqrs__Reply *a1_before = state_of(c, "account", "a1");

    struct child_status w0 = daemon_child(&d, "wallet"), a0 = daemon_child(&d, "account");
    expect_running(&w0, "wallet");
    expect_running(&a0, "account");
    cr_assert_eq(w0.restarts, 0);

    cr_assert(kill(w0.pid, SIGKILL) == 0, "kill: %s", strerror(errno));
    struct child_status w1 = daemon_wait_new_pid(&d, "wallet", w0.pid, RESTART_MS);
    cr_assert_eq(w1.restarts, 1, "wallet restarts %u after one crash", w1.restarts);
    cr_assert_str_eq(w1.last_exit, "killed by signal 9");
    cr_assert(w1.started_at_us > w0.started_at_us, "started_at_us did not move on restart");
    expect_reaped(w0.pid, "the killed wallet worker");
    expect_untouched(&a0, "account");

    /* the same client connection goes on working; the states are rebuilt */
    Cqrs__Reply *w1_after = state_of(c, "wallet", "w1");
    Cqrs__Reply *w2_after = state_of(c, "wallet", "w2");
    Cqrs__Reply *a1_after = state_of(c, "account", "a1");
    same_state(w1_before, w1_after, "wallet w1");
    same_state(w2_before, w2_after, "wallet w2");
    same_state(a1_before, a1_after, "account a1");
    cqrs__reply__free_unpacked(w1_before, NULL);
    cqrs__reply__free_unpacked(w2_before, NULL);
    cqrs__reply__free_unpacked(a1_before, NULL);
    cqrs__reply__free_unpacked(w1_after, NULL);
    cqrs__reply__free_unpacked(w2_after, NULL);
    cqrs__reply__free_unpacked(a1_after, NULL);
    topup_from(c, "w1", 50, 3, 100);
    cqrs_client_free(c);
    finish();
}

/* --- restart types ------------------------------------------------------------ */

/* The wallet child has restart type `restart`; its worker gets `sig`
 * directly (SIGTERM: it exits 0, a normal exit; SIGKILL: abnormal). */
static void restart_type_case(const char *restart, int sig, int comes_back)
{
    char ini[256];
    snprintf(ini, sizeof ini,
             "[supervisor]\nstrategy = one_for_one\n\n[child wallet]\nrestart = %s\n\n"
             "[child account]\n", restart);
    daemon_start_conf(&d, ini, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 30);
    cqrs__reply__free_unpacked(topup(c, "w1", 10, 1), NULL);
    struct child_status w0 = daemon_child(&d, "wallet"), a0 = daemon_child(&d, "account");
    expect_running(&w0, "wallet");
    const char *words = sig == SIGKILL ? "killed by signal 9" : "exited with status 0";

    cr_assert(kill(w0.pid, sig) == 0, "kill: %s", strerror(errno));
    if (comes_back) {
        struct child_status w1 = daemon_wait_new_pid(&d, "wallet", w0.pid, RESTART_MS);
        cr_assert_eq(w1.restarts, 1, "restarts %u", w1.restarts);
        cr_assert_str_eq(w1.last_exit, words);
        expect_reaped(w0.pid, "the old wallet worker");
        topup_from(c, "w1", 5, 2, 10);
    } else {
        struct child_status w1 = daemon_wait_state(&d, "wallet", "stopped", RESTART_MS);
        cr_assert_eq(w1.pid, 0, "a stopped child shows pid %d", (int)w1.pid);
        cr_assert_str_eq(w1.last_exit, words);
        expect_reaped(w0.pid, "the wallet worker");
        /* and it stays down */
        harness_sleep_ms(1000);
        struct child_status w2 = daemon_child(&d, "wallet");
        cr_assert(strcmp(w2.state, "stopped") == 0 && w2.pid == 0,
                  "a %s child was started again after %s: state %s, pid %d", restart, words,
                  w2.state, (int)w2.pid);
        cr_assert_eq(w2.restarts, 0, "restarts %u", w2.restarts);

        /* requests for it are answered UNAVAILABLE at once, not held until
         * the wait limit (5 s): no answer within 3 s fails the recv */
        struct cqrs_client *raw = daemon_connect(&d);
        recv_timeout(raw, 3);
        Wallet__TopUp t = WALLET__TOP_UP__INIT;
        t.amount = 1;
        uint8_t payload[16];
        Cqrs__Command cmd = CQRS__COMMAND__INIT;
        cmd.aggregate_type = "wallet";
        cmd.aggregate_id = "w1";
        cmd.name = "TopUp";
        cmd.payload.len = wallet__top_up__pack(&t, payload);
        cmd.payload.data = payload;
        cmd.command_id = "after-stop";
        Cqrs__Request req = CQRS__REQUEST__INIT;
        req.body_case = CQRS__REQUEST__BODY_COMMAND;
        req.command = &cmd;
        Cqrs__Reply *r = NULL;
        cr_assert(cqrs_client_call(raw, &req, &r) == 0,
                  "a command for the stopped child got no answer within 3 s: %s",
                  strerror(errno));
        cr_assert_eq(r->status, CQRS__STATUS__UNAVAILABLE, "command for a stopped child: %s (%s)",
                     cqrs_status_name(r->status), r->error);
        cqrs__reply__free_unpacked(r, NULL);
        r = NULL;
        cr_assert(cqrs_client_state(raw, "wallet", "w1", &r) == 0,
                  "a query for the stopped child got no answer within 3 s: %s", strerror(errno));
        cr_assert_eq(r->status, CQRS__STATUS__UNAVAILABLE, "query for a stopped child: %s (%s)",
                     cqrs_status_name(r->status), r->error);
        cqrs__reply__free_unpacked(r, NULL);
        cqrs_client_free(raw);
    }
    expect_untouched(&a0, "account");
    /* the sibling still serves */
    open_account(c, "a1");
    cqrs_client_free(c);
    finish();
}

Test(supervision, permanent_restarts_after_normal_exit)
{
    restart_type_case("permanent", SIGTERM, 1);
}

Test(supervision, permanent_restarts_after_sigkill)
{
    restart_type_case("permanent", SIGKILL, 1);
}

Test(supervision, transient_stays_stopped_after_normal_exit)
{
    restart_type_case("transient", SIGTERM, 0);
}

Test(supervision, transient_restarts_after_sigkill)
{
    restart_type_case("transient", SIGKILL, 1);
}

Test(supervision, temporary_stays_stopped_after_normal_exit)
{
    restart_type_case("temporary", SIGTERM, 0);
}

Test(supervision, temporary_stays_stopped_after_sigkill)
{
    restart_type_case("temporary", SIGKILL, 0);
}

/* --- strategies --------------------------------------------------------------- */

static void start_strategy(const char *strategy)
{
    char ini[200];
    snprintf(ini, sizeof ini, "[supervisor]\nstrategy = %s\n\n[child wallet]\n[child account]\n",
             strategy);
    daemon_start_conf(&d, ini, NULL);
}

/* Both children were started again, wallet (first) before account. */
static void expect_both_restarted(const struct child_status *w0, const struct child_status *a0)
{
    daemon_wait_new_pid(&d, "wallet", w0->pid, RESTART_MS);
    struct child_status a1 = daemon_wait_new_pid(&d, "account", a0->pid, RESTART_MS);
    struct child_status w1 = daemon_child(&d, "wallet");   /* after account's restart */
    expect_running(&w1, "wallet");
    cr_assert_neq(w1.pid, w0->pid, "wallet kept its pid");
    cr_assert(w1.started_at_us <= a1.started_at_us,
              "account (second) was started before wallet (first): %lld > %lld",
              (long long)w1.started_at_us, (long long)a1.started_at_us);
    expect_reaped(w0->pid, "the old wallet worker");
    expect_reaped(a0->pid, "the old account worker");
}

Test(supervision, one_for_one_restarts_only_the_dead_child)
{
    start_strategy("one_for_one");
    struct cqrs_client *c = daemon_connect(&d);
    cqrs__reply__free_unpacked(topup(c, "w1", 3, 1), NULL);
    struct child_status w0 = daemon_child(&d, "wallet"), a0 = daemon_child(&d, "account");

    kill(w0.pid, SIGKILL);
    struct child_status w1 = daemon_wait_new_pid(&d, "wallet", w0.pid, RESTART_MS);
    expect_untouched(&a0, "account");

    kill(a0.pid, SIGKILL);
    struct child_status a1 = daemon_wait_new_pid(&d, "account", a0.pid, RESTART_MS);
    cr_assert_eq(a1.restarts, 1);
    expect_untouched(&w1, "wallet");
    topup_from(c, "w1", 4, 2, 3);
    cqrs_client_free(c);
    finish();
}

Test(supervision, one_for_all_restarts_every_child)
{
    start_strategy("one_for_all");
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 30);
    cqrs__reply__free_unpacked(topup(c, "w1", 3, 1), NULL);
    struct child_status w0 = daemon_child(&d, "wallet"), a0 = daemon_child(&d, "account");

    /* the last child dies: the first is restarted too */
    kill(a0.pid, SIGKILL);
    expect_both_restarted(&w0, &a0);
    struct child_status a1 = daemon_child(&d, "account");
    cr_assert_str_eq(a1.last_exit, "killed by signal 9");

    /* the first child dies: the last is restarted too */
    struct child_status w1 = daemon_child(&d, "wallet");
    kill(w1.pid, SIGKILL);
    expect_both_restarted(&w1, &a1);
    struct child_status w2 = daemon_child(&d, "wallet");
    cr_assert_str_eq(w2.last_exit, "killed by signal 9");

    topup_from(c, "w1", 4, 2, 3);
    open_account(c, "a1");
    cqrs_client_free(c);
    finish();
}

Test(supervision, rest_for_one_first_child_restarts_those_after_it)
{
    start_strategy("rest_for_one");
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 30);
    cqrs__reply__free_unpacked(topup(c, "w1", 3, 1), NULL);
    struct child_status w0 = daemon_child(&d, "wallet"), a0 = daemon_child(&d, "account");
    kill(w0.pid, SIGKILL);
    expect_both_restarted(&w0, &a0);
    topup_from(c, "w1", 4, 2, 3);
    open_account(c, "a1");
    cqrs_client_free(c);
    finish();
}

Test(supervision, rest_for_one_last_child_restarts_alone)
{
    start_strategy("rest_for_one");
    struct child_status w0 = daemon_child(&d, "wallet"), a0 = daemon_child(&d, "account");
    kill(a0.pid, SIGKILL);
    struct child_status a1 = daemon_wait_new_pid(&d, "account", a0.pid, RESTART_MS);
    cr_assert_eq(a1.restarts, 1);
    expect_untouched(&w0, "wallet");
    expect_reaped(a0.pid, "the old account worker");
    finish();
}

Test(supervision, one_for_all_leaves_a_temporary_sibling_stopped)
{
    daemon_start_conf(&d,
                      "[supervisor]\nstrategy = one_for_all\n\n"
                      "[child wallet]\nrestart = permanent\n\n"
                      "[child account]\nrestart = temporary\n", NULL);
    struct child_status w0 = daemon_child(&d, "wallet"), a0 = daemon_child(&d, "account");
    expect_running(&a0, "account");
    kill(w0.pid, SIGKILL);
    daemon_wait_new_pid(&d, "wallet", w0.pid, RESTART_MS);
    struct child_status a1 = daemon_wait_state(&d, "account", "stopped", RESTART_MS);
    cr_assert_eq(a1.pid, 0);
    expect_reaped(a0.pid, "the temporary account worker");
    harness_sleep_ms(500);
    a1 = daemon_child(&d, "account");
    cr_assert(strcmp(a1.state, "stopped") == 0 && a1.pid == 0,
              "the temporary sibling was started again: %s, pid %d", a1.state, (int)a1.pid);
    struct child_status w1 = daemon_child(&d, "wallet");
    expect_running(&w1, "wallet");
    finish();
}

/* --- restart intensity -------------------------------------------------------- */

/* Kills the wallet worker `n` times, each time waiting for its successor;
 * appends every pid seen to `pids`. */
static void kill_wallet_times(int n, pid_t *pids, int *np)
{
    for (int i = 0; i < n; i++) {
        pid_t p = daemon_child_pid(&d, "wallet");
        pids[(*np)++] = p;
        kill(p, SIGKILL);
        daemon_wait_new_pid(&d, "wallet", p, RESTART_MS);
    }
}

/* The next kill must make cqrsd give up: exit 1, every worker gone. */
static void kill_wallet_expect_give_up(pid_t *pids, int *np)
{
    pids[(*np)++] = daemon_child_pid(&d, "wallet");
    pids[(*np)++] = daemon_child_pid(&d, "account");
    kill(pids[*np - 2], SIGKILL);
    int st = 0;
    int exited = daemon_wait_exit(&d, EXIT_MS, &st);
    if (!exited)
        daemon_show_log(&d, "cqrsd did not give up");
    cr_assert(exited, "cqrsd still runs %d ms after one restart too many", EXIT_MS);
    expect_exit_status(st, 1, "restart intensity exceeded");
    expect_no_worker_left(pids, *np);
}

Test(supervision, intensity_exceeded_stops_everything_and_exits_1)
{
    daemon_start_conf(&d, "[supervisor]\nintensity = 2\nperiod = 60\n\n" TWO_CHILDREN, NULL);
    pid_t pids[16];
    int np = 0;
    kill_wallet_times(2, pids, &np);     /* two restarts: allowed */
    struct child_status w = daemon_child(&d, "wallet");
    expect_running(&w, "wallet");
    cr_assert_eq(w.restarts, 2);
    kill_wallet_expect_give_up(pids, &np);
}

/* The README's defaults: 5 restarts in 10 s are fine, the 6th is not (six
 * restarts take well under a second or two; 10 s is the margin). */
Test(supervision, default_intensity_is_five_restarts_in_ten_seconds)
{
    daemon_start(&d, NULL);
    pid_t pids[16];
    int np = 0;
    kill_wallet_times(5, pids, &np);
    cr_assert_eq(daemon_child(&d, "wallet").restarts, 5);
    kill_wallet_expect_give_up(pids, &np);
}

Test(supervision, restarts_spaced_wider_than_the_period_are_survived)
{
    daemon_start_conf(&d, "[supervisor]\nintensity = 1\nperiod = 1\n\n" TWO_CHILDREN, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 30);
    cqrs__reply__free_unpacked(topup(c, "w1", 1, 1), NULL);
    for (int i = 0; i < 3; i++) {
        pid_t p = daemon_child_pid(&d, "wallet");
        kill(p, SIGKILL);
        daemon_wait_new_pid(&d, "wallet", p, RESTART_MS);
        harness_sleep_ms(1500);   /* the restart leaves the 1 s window */
    }
    int st;
    cr_assert(!daemon_wait_exit(&d, 0, &st), "cqrsd exited (wait status 0x%x) although no two "
              "restarts fell within the 1 s period", st);
    struct child_status w = daemon_child(&d, "wallet");
    expect_running(&w, "wallet");
    cr_assert_eq(w.restarts, 3);
    topup_from(c, "w1", 1, 2, 1);
    cqrs_client_free(c);
    finish();
}

/* --- boot ------------------------------------------------------------------- */

Test(supervision, children_start_in_file_order_and_stop_in_reverse)
{
    daemon_start_conf(&d, "[child account]\n[child wallet]\n", NULL);
    struct child_status all[HARNESS_MAX_CHILDREN];
    size_t n = daemon_status(&d, all, HARNESS_MAX_CHILDREN);
    cr_assert_eq(n, 2, "STATUS lists %zu children", n);
    cr_assert_str_eq(all[0].name, "account", "STATUS lists %s first", all[0].name);
    cr_assert_str_eq(all[1].name, "wallet");
    cr_assert(all[0].started_at_us <= all[1].started_at_us,
              "wallet was started before account");
    pid_t a = all[0].pid, w = all[1].pid;
    kill(d.pid, SIGTERM);
    int st = 0;
    cr_assert(daemon_wait_exit(&d, EXIT_MS, &st), "cqrsd ignored SIGTERM");
    expect_exit_status(st, 0, "SIGTERM");
    char *log = daemon_log(&d);
    long lw = find(log, "stopping child wallet"), la = find(log, "stopping child account");
    cr_assert(lw >= 0 && la >= 0 && lw < la,
              "the log does not show wallet (started last) stopped before account:\n%s", log);
    free(log);
    pid_t pids[] = { a, w };
    expect_no_worker_left(pids, 2);
}

Test(supervision, a_child_that_fails_at_boot_fails_the_boot)
{
    daemon_prepare(&d, NULL);
    cr_assert(mkdir(d.data, 0700) == 0, "mkdir %s: %s", d.data, strerror(errno));
    char path[400];
    snprintf(path, sizeof path, "%s/account", d.data);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    cr_assert(fd >= 0, "create %s: %s", path, strerror(errno));
    close(fd);

    int st = daemon_run_until_exit(&d, EXIT_MS, NULL);
    expect_exit_status(st, 1, "a child that cannot start");
    char *err = daemon_stderr(&d), *log = daemon_log(&d);
    int named = line_has_both(err, "account", "status 1") || line_has_both(log, "account", "status 1");
    cr_assert(named, "no log line names the account child and why it failed (exited with "
              "status 1); stderr:\n%s\nstdout:\n%s", err, log);
    /* the wallet worker, started first, was stopped */
    cr_assert(line_has_both(err, "stopping child", "wallet") ||
              line_has_both(log, "stopping child", "wallet"),
              "the log does not show the wallet child being stopped; stderr:\n%s", err);
    free(err);
    free(log);
    expect_no_worker_left(NULL, 0);
}

/* --- config errors ------------------------------------------------------------ */

/* cqrsd with `ini` exits 78 at once, its stderr naming FILE:LINE: and, on
 * that line, `key`; no worker ever ran. */
static void expect_config_error(const char *ini, int line, const char *key)
{
    daemon_prepare(&d, ini);
    int st = daemon_run_until_exit(&d, EXIT_MS, NULL);
    char *err = daemon_stderr(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 78,
              "config\n%s\ncqrsd ended with wait status 0x%x, expected exit 78; stderr:\n%s", ini,
              st, err);
    char where[400];
    snprintf(where, sizeof where, "%s:%d:", daemon_conf_path(&d), line);
    cr_assert(find(err, where) >= 0, "stderr does not name \"%s\":\n%s", where, err);
    cr_assert(line_has_both(err, where, key), "the line naming %s does not name \"%s\":\n%s",
              where, key, err);
    free(err);
    char dir[400];
    struct stat sb;
    snprintf(dir, sizeof dir, "%s/wallet", d.data);
    cr_assert(stat(dir, &sb) < 0 && errno == ENOENT, "a wallet worker ran (%s exists)", dir);
}

Test(supervision, config_unknown_key)
{
    expect_config_error("[supervisor]\nstrategy = one_for_one\nfoo = 1\n", 3, "foo");
}

Test(supervision, config_unknown_key_in_child)
{
    expect_config_error("[child wallet]\nrestrat = permanent\n", 2, "restrat");
}

Test(supervision, config_bad_intensity)
{
    expect_config_error("; a comment\n[supervisor]\nintensity = abc\n", 3, "intensity");
}

Test(supervision, config_bad_restart_type)
{
    expect_config_error("[supervisor]\nstrategy = one_for_all\n\n[child wallet]\nrestart = sometimes\n",
                        5, "restart");
}

Test(supervision, config_bad_strategy)
{
    expect_config_error("[supervisor]\nstrategy = one_for_none\n", 2, "strategy");
}

Test(supervision, config_bad_shutdown_ms)
{
    expect_config_error("[child wallet]\nshutdown_ms = soon\n", 2, "shutdown_ms");
}

Test(supervision, config_unknown_aggregate_type)
{
    expect_config_error("[child wallet]\n[child nope]\n", 2, "nope");
}

Test(supervision, config_duplicate_child)
{
    expect_config_error("[child wallet]\nrestart = permanent\n[child account]\n[child wallet]\n", 4,
                        "wallet");
}

/* --- shutdown ------------------------------------------------------------------ */

/* SIGTERM to cqrsd; returns how long it took to exit (asserts exit 0). */
static int64_t sigterm_and_time(void)
{
    int64_t t0 = harness_ms();
    cr_assert(kill(d.pid, SIGTERM) == 0, "kill: %s", strerror(errno));
    int st = 0;
    int exited = daemon_wait_exit(&d, 20000, &st);
    int64_t took = harness_ms() - t0;
    if (!exited)
        daemon_show_log(&d, "cqrsd did not stop");
    cr_assert(exited, "cqrsd did not exit within 20 s of SIGTERM");
    expect_exit_status(st, 0, "SIGTERM");
    return took;
}

Test(supervision, shutdown_stops_children_in_reverse_order)
{
    daemon_start(&d, NULL);
    pid_t w = daemon_child_pid(&d, "wallet"), a = daemon_child_pid(&d, "account");
    sigterm_and_time();
    char *log = daemon_log(&d);
    long la = find(log, "stopping child account"), lw = find(log, "stopping child wallet");
    cr_assert(la >= 0 && lw >= 0 && la < lw,
              "the log does not show account (started last) stopped before wallet:\n%s", log);
    free(log);
    pid_t pids[] = { w, a };
    expect_no_worker_left(pids, 2);
}

Test(supervision, sigint_stops_like_sigterm)
{
    daemon_start(&d, NULL);
    pid_t w = daemon_child_pid(&d, "wallet"), a = daemon_child_pid(&d, "account");
    cr_assert(kill(d.pid, SIGINT) == 0, "kill: %s", strerror(errno));
    int st = 0;
    cr_assert(daemon_wait_exit(&d, EXIT_MS, &st), "cqrsd ignored SIGINT");
    expect_exit_status(st, 0, "SIGINT");
    char *log = daemon_log(&d);
    long la = find(log, "stopping child account"), lw = find(log, "stopping child wallet");
    cr_assert(la >= 0 && lw >= 0 && la < lw,
              "the log does not show account stopped before wallet:\n%s", log);
    free(log);
    pid_t pids[] = { w, a };
    expect_no_worker_left(pids, 2);
}

Test(supervision, shutdown_sigkills_a_child_that_ignores_sigterm_after_shutdown_ms)
{
    daemon_start_conf(&d,
                      "[supervisor]\nheartbeat_ms = 0\n\n"
                      "[child wallet]\nshutdown_ms = 300\n\n[child account]\n", NULL);
    pid_t w = daemon_child_pid(&d, "wallet"), a = daemon_child_pid(&d, "account");
    sigstop(w);
    int64_t took = sigterm_and_time();
    cr_assert(took >= 250, "cqrsd exited %lld ms after SIGTERM: it cannot have waited "
              "shutdown_ms (300) for the stopped wallet worker", (long long)took);
    cr_assert(took < 5000, "cqrsd took %lld ms to exit: shutdown_ms = 300 was not applied",
              (long long)took);
    pid_t pids[] = { w, a };
    expect_no_worker_left(pids, 2);
    char *log = daemon_log(&d);
    long la = find(log, "stopping child account"), lw = find(log, "stopping child wallet");
    cr_assert(la >= 0 && lw >= 0 && la < lw,
              "the log does not show account stopped before wallet:\n%s", log);
    free(log);
}

Test(supervision, brutal_kill_does_not_wait)
{
    daemon_start_conf(&d,
                      "[supervisor]\nheartbeat_ms = 0\nshutdown_timeout_ms = 10000\n\n"
                      "[child wallet]\nshutdown_ms = brutal_kill\n\n[child account]\n", NULL);
    pid_t w = daemon_child_pid(&d, "wallet"), a = daemon_child_pid(&d, "account");
    sigstop(w);
    int64_t took = sigterm_and_time();
    cr_assert(took < 3000, "cqrsd took %lld ms to stop a brutal_kill child that ignores SIGTERM "
              "(the 10 s shutdown timeout would be waited without brutal_kill)", (long long)took);
    pid_t pids[] = { w, a };
    expect_no_worker_left(pids, 2);
}

Test(supervision, sigkill_of_cqrsd_leaves_no_worker_alive)
{
    daemon_start(&d, NULL);
    pid_t w = daemon_child_pid(&d, "wallet"), a = daemon_child_pid(&d, "account");
    cr_assert(kill(d.pid, SIGKILL) == 0, "kill: %s", strerror(errno));   /* not the group */
    int st = 0;
    cr_assert(daemon_wait_exit(&d, 5000, &st), "cqrsd survived SIGKILL?");
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "wait status 0x%x", st);
    /* nobody is left to reap them: dead means gone or a zombie */
    cr_assert(pid_wait_dead(w, 3000), "the wallet worker (pid %d) outlived a SIGKILLed cqrsd",
              (int)w);
    cr_assert(pid_wait_dead(a, 3000), "the account worker (pid %d) outlived a SIGKILLed cqrsd",
              (int)a);
    pid_t left = 0;
    int alive = pgrp_wait_dead(daemon_last_pgid(&d), 3000, &left);
    cr_assert_eq(alive, 0, "%d process(es) of cqrsd's group (standby workers?) outlived a "
                 "SIGKILLed cqrsd, pid %d among them", alive, (int)left);
}

/* --- hung workers ----------------------------------------------------------------- */

Test(supervision, a_hung_worker_is_killed_and_replaced)
{
    daemon_start_conf(&d, "[supervisor]\nheartbeat_ms = 100\nheartbeat_timeout_ms = 500\n\n" TWO_CHILDREN, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 30);
    cqrs__reply__free_unpacked(topup(c, "w1", 8, 1), NULL);
    struct child_status w0 = daemon_child(&d, "wallet"), a0 = daemon_child(&d, "account");

    /* a healthy idle worker answers the heartbeat: three timeouts pass */
    harness_sleep_ms(1500);
    expect_untouched(&w0, "wallet");
    expect_untouched(&a0, "account");

    sigstop(w0.pid);
    struct child_status w1 = daemon_wait_new_pid(&d, "wallet", w0.pid, 5000);
    cr_assert_eq(w1.restarts, 1);
    cr_assert_str_eq(w1.last_exit, "hung: no heartbeat for 500 ms");
    expect_reaped(w0.pid, "the hung wallet worker");
    expect_untouched(&a0, "account");
    topup_from(c, "w1", 2, 2, 8);
    cqrs_client_free(c);
    finish();
}

/* --- start timeout ------------------------------------------------------------------ */

Test(supervision, a_restarted_child_that_does_not_report_ready_is_killed_and_started_again)
{
    /* no standby worker: a restart spawns, and the new worker can be
     * SIGSTOPped before it reports ready (tried a few times: it may be
     * ready before the test sees its pid) */
    daemon_start_conf(&d,
                      "[supervisor]\nstandby = false\nheartbeat_ms = 0\nstart_timeout_ms = 1000\n"
                      "intensity = 20\nperiod = 60\n\n" TWO_CHILDREN, NULL);
    struct child_status a0 = daemon_child(&d, "account");
    pid_t stopped = 0;
    for (int attempt = 0; attempt < 5 && !stopped; attempt++) {
        pid_t old = daemon_child_pid(&d, "wallet");
        kill(old, SIGKILL);
        struct child_status s;
        int64_t deadline = harness_ms() + RESTART_MS;
        do {
            cr_assert(harness_ms() < deadline, "the wallet worker was not replaced");
            cr_assert(daemon_child_try(&d, "wallet", &s) == 0, "STATUS failed");
        } while (s.pid == old || s.pid == 0);
        if (strcmp(s.state, "restarting") != 0)
            continue;   /* already ready */
        kill(s.pid, SIGSTOP);
        harness_sleep_ms(200);
        struct child_status again = daemon_child(&d, "wallet");
        if (again.pid == s.pid && strcmp(again.state, "running") == 0) {
            kill(s.pid, SIGCONT);   /* it was ready just before the stop */
            continue;
        }
        stopped = s.pid;
    }
    cr_assert(stopped, "could not stop a restarted wallet worker before it reported ready");
    struct child_status w = daemon_wait_new_pid(&d, "wallet", stopped, RESTART_MS);
    cr_assert_str_eq(w.last_exit, "did not report ready within 1000 ms");
    expect_reaped(stopped, "the worker that never reported ready");
    expect_untouched(&a0, "account");
    finish();
}

/* --- cqrsctl kill / restart / status ---------------------------------------------- */

static char *ctl_out, *ctl_err;

static int ctl(const char *a, const char *b, const char *c)
{
    free(ctl_out);
    free(ctl_err);
    ctl_out = ctl_err = NULL;
    return run_cqrsctl(&d, &ctl_out, &ctl_err, a, b, c, (char *)NULL);
}

static void ctl_free(void)
{
    free(ctl_out);
    free(ctl_err);
    ctl_out = ctl_err = NULL;
}

Test(supervision, cqrsctl_kill_then_status_json)
{
    daemon_start(&d, NULL);
    struct child_status w0 = daemon_child(&d, "wallet"), a0 = daemon_child(&d, "account");
    int rc = ctl("kill", "wallet", NULL);
    cr_assert_eq(rc, 0, "cqrsctl kill wallet: %d\n%s%s", rc, ctl_out, ctl_err);
    struct child_status w1 = daemon_wait_new_pid(&d, "wallet", w0.pid, RESTART_MS);

    rc = ctl("--json", "status", NULL);
    cr_assert_eq(rc, 0, "cqrsctl --json status: %d\n%s", rc, ctl_err);
    json_error_t je;
    json_t *doc = json_loads(ctl_out, 0, &je);
    cr_assert(doc, "not JSON (%s): %s", je.text, ctl_out);
    json_t *list = json_object_get(doc, "children");
    cr_assert(json_is_array(list) && json_array_size(list) == 3, "children: %s", ctl_out);
    int seen = 0;
    for (size_t i = 0; i < 3; i++) {
        json_t *ch = json_array_get(list, i);
        const char *name = json_string_value(json_object_get(ch, "name"));
        const char *state = json_string_value(json_object_get(ch, "state"));
        const char *last = json_string_value(json_object_get(ch, "last_exit"));
        json_int_t pid = json_integer_value(json_object_get(ch, "pid"));
        json_int_t restarts = json_integer_value(json_object_get(ch, "restarts"));
        cr_assert(name && state && last, "a child lacks name/state/last_exit: %s", ctl_out);
        cr_assert_str_eq(state, "running", "%s", ctl_out);
        cr_assert(json_integer_value(json_object_get(ch, "started_at_us")) > 0, "%s", ctl_out);
        if (strcmp(name, "wallet") == 0) {
            seen |= 1;
            cr_assert_eq(pid, w1.pid, "%s", ctl_out);
            cr_assert_eq(restarts, 1, "%s", ctl_out);
            cr_assert_str_eq(last, "killed by signal 9", "%s", ctl_out);
        } else if (strcmp(name, "account") == 0) {
            seen |= 2;
            cr_assert_eq(pid, a0.pid, "%s", ctl_out);
            cr_assert_eq(restarts, 0, "%s", ctl_out);
        } else if (strcmp(name, "readmodel") == 0) {
            seen |= 4;
            cr_assert_eq(restarts, 0, "the projector restarted with the wallet worker: %s",
                         ctl_out);
        }
    }
    cr_assert_eq(seen, 7, "%s", ctl_out);
    json_decref(doc);

    rc = ctl("status", NULL, NULL);
    cr_assert_eq(rc, 0);
    cr_assert(line_has_both(ctl_out, "wallet", "killed by signal 9"), "%s", ctl_out);
    ctl_free();
    finish();
}

Test(supervision, cqrsctl_restart_is_graceful_and_not_a_crash)
{
    /* intensity 1: were operator restarts counted as crashes, the second
     * would make cqrsd give up */
    daemon_start_conf(&d, "[supervisor]\nintensity = 1\nperiod = 60\n\n" TWO_CHILDREN, NULL);
    struct cqrs_client *c = daemon_connect(&d);
    recv_timeout(c, 30);
    cqrs__reply__free_unpacked(topup(c, "w1", 5, 1), NULL);
    struct child_status a0 = daemon_child(&d, "account");
    for (int i = 0; i < 3; i++) {
        struct child_status w0 = daemon_child(&d, "wallet");
        expect_running(&w0, "wallet");
        int rc = ctl("restart", "wallet", NULL);
        cr_assert_eq(rc, 0, "cqrsctl restart wallet: %d\n%s%s", rc, ctl_out, ctl_err);
        struct child_status w1 = daemon_wait_new_pid(&d, "wallet", w0.pid, RESTART_MS);
        /* graceful: the worker was asked to stop, it exited 0 */
        cr_assert_str_eq(w1.last_exit, "exited with status 0");
        /* documented (README, sup.h): restarts counts every start after
         * the first, operator restarts included */
        cr_assert_eq(w1.restarts, w0.restarts + 1, "restarts %u → %u", w0.restarts, w1.restarts);
        expect_reaped(w0.pid, "the restarted wallet worker");
    }
    expect_untouched(&a0, "account");
    topup_from(c, "w1", 5, 2, 5);
    /* a real crash is still within intensity 1 */
    pid_t p = daemon_child_pid(&d, "wallet");
    kill(p, SIGKILL);
    daemon_wait_new_pid(&d, "wallet", p, RESTART_MS);
    ctl_free();
    cqrs_client_free(c);
    finish();
}

Test(supervision, cqrsctl_restart_works_for_a_temporary_child)
{
    daemon_start_conf(&d, "[child wallet]\nrestart = temporary\n\n[child account]\n", NULL);
    struct child_status w0 = daemon_child(&d, "wallet");
    int rc = ctl("restart", "wallet", NULL);
    cr_assert_eq(rc, 0, "cqrsctl restart wallet: %d\n%s%s", rc, ctl_out, ctl_err);
    struct child_status w1 = daemon_wait_new_pid(&d, "wallet", w0.pid, RESTART_MS);
    expect_reaped(w0.pid, "the restarted wallet worker");
    harness_sleep_ms(300);
    struct child_status w2 = daemon_child(&d, "wallet");
    expect_running(&w2, "wallet");
    cr_assert_eq(w2.pid, w1.pid);
    /* and it is temporary indeed: a normal exit leaves it stopped */
    kill(w1.pid, SIGTERM);
    daemon_wait_state(&d, "wallet", "stopped", RESTART_MS);
    ctl_free();
    finish();
}
