/*
 * test_crash_consistency — the wallet worker SIGKILLed at random moments
 * under load; afterwards nothing is lost, doubled or out of order.
 *
 * Load: CLIENTS threads, each with its own connection, send TopUp(1)
 * commands with unique command ids to random wallets among WALLETS, one at
 * a time; every non-OK reply is retried with the same command id until OK
 * (bounded). A command answered REJECTED "crashed the worker twice" (a
 * poison command, README: it was in flight at two consecutive crashes, as
 * happens when kills follow each other) is parked by cqrsd until it
 * restarts: the test sends it again, with its id, after restarting cqrsd.
 *
 * Kills: another thread SIGKILLs the wallet worker (its pid from STATUS)
 * 10 to 20 times, sleeping 5 to 100 ms between kills and waiting for the
 * worker to run again; every third kill hits the next worker as soon as
 * STATUS shows its pid (starting, or just adopted), during its recovery.
 * The seed is printed.
 *
 * Then cqrsd is stopped and started again (it must start), and:
 *   - each wallet's balance and version equal the number of distinct
 *     commands sent to it;
 *   - each wallet's log (every .log under <data>/wallet/ but the journal,
 *     read with evlog_open) holds versions 1..N contiguously, each command
 *     of that wallet exactly once, and no other;
 *   - the events' positions across all the logs are unique and are exactly
 *     1..total: the type's global order has no gap and no repeat.
 *
 * Run with standby workers (the default: a restart adopts a spare started
 * earlier) and without. A deterministic case comes first: one kill, one
 * append after it, the positions and a restart of cqrsd.
 *
 * Threads report failures in their structs; only the main thread asserts.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "evlog.h"
#include "harness.h"
#include "layout.h"
#include "wallet.pb-c.h"

#define CLIENTS 3
#define WALLETS 20
#define MAX_PER_CLIENT 5000       /* 15,000 over 20 wallets: each within its 1,000 ids */
#define THINK_US 500               /* between a client's commands */
#define MIN_KILLS 10
#define MAX_KILLS 20
#define RETRY_ATTEMPTS 400
#define RESTART_MS 10000
#define STANDBY_READY_MS 5000      /* a spare worker starts within this */

#define CONF_STANDBY                                                              \
    "[supervisor]\nintensity = 100\nperiod = 1\nstandby = true\n\n"               \
    "[storage]\nfsync = always\ncheckpoint_ms = 100\n\n[child wallet]\n"
#define CONF_NO_STANDBY                                                           \
    "[supervisor]\nintensity = 100\nperiod = 1\nstandby = false\n\n"              \
    "[storage]\nfsync = always\ncheckpoint_ms = 100\n\n[child wallet]\n"

static struct daemon d;
static int lock_fd = -1;

static void setup(void)
{
    lock_fd = open("/tmp/cqrsd-faults-crash-consistency.lock", O_RDWR | O_CREAT | O_CLOEXEC,
                   0600);
    cr_assert(lock_fd >= 0, "lock file: %s", strerror(errno));
    while (flock(lock_fd, LOCK_EX) < 0)
        cr_assert(errno == EINTR, "flock: %s", strerror(errno));
}

static void teardown(void)
{
    daemon_cleanup(&d);
    if (lock_fd >= 0)
        close(lock_fd);
    lock_fd = -1;
}

TestSuite(crash_consistency, .init = setup, .fini = teardown, .timeout = 240);

static void wallet_id(int w, char *buf, size_t len)
{
    snprintf(buf, len, "cc%02d", w);
}

static void finish(void)
{
    int st = daemon_stop(&d);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "cqrsd did not exit 0 on SIGTERM (wait status 0x%x)", st);
}

/* --- the logs ----------------------------------------------------------------------- */

struct scan {
    uint64_t total;              /* events expected in all */
    uint8_t *position_seen;      /* [1..total] */
    uint64_t *expected;          /* per wallet: distinct commands sent to it */
    uint8_t *cmd_seen[CLIENTS];  /* per client and command number */
    const uint8_t *wallet_of[CLIENTS];
    long sent[CLIENTS];
    int wallet;                  /* of the file being read */
    uint64_t records;
    int files;
    char err[600];
};

static struct scan *the_scan;

static int scan_record(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset; (void)size;
    struct scan *s = arg;
    char id[16];
    wallet_id(s->wallet, id, sizeof id);
    s->records++;
    int t;
    long n;
    char tail;
    if (sscanf(rec->command_id, "cc-t%d-%ld%c", &t, &n, &tail) != 2 || t < 0 || t >= CLIENTS ||
        n < 0 || n >= s->sent[t]) {
        harness_fail_once(s->err, sizeof s->err, "%s: version %llu is of command \"%s\", which the test never sent", id,
                  (unsigned long long)rec->version, rec->command_id);
        return 1;
    }
    if (s->wallet_of[t][n] != s->wallet) {
        char other[16];
        wallet_id(s->wallet_of[t][n], other, sizeof other);
        harness_fail_once(s->err, sizeof s->err, "%s: version %llu is of command %s, which was sent to %s", id,
                  (unsigned long long)rec->version, rec->command_id, other);
        return 1;
    }
    if (s->cmd_seen[t][n]++) {
        harness_fail_once(s->err, sizeof s->err, "%s: command %s applied twice (again at version %llu)", id, rec->command_id,
                  (unsigned long long)rec->version);
        return 1;
    }
    if (rec->position == 0 || rec->position > s->total) {
        harness_fail_once(s->err, sizeof s->err, "%s: version %llu has position %llu, outside 1..%llu (the number of "
                  "events)", id, (unsigned long long)rec->version,
                  (unsigned long long)rec->position, (unsigned long long)s->total);
        return 1;
    }
    if (s->position_seen[rec->position]++) {
        harness_fail_once(s->err, sizeof s->err, "%s: version %llu has position %llu, which another event already has", id,
                  (unsigned long long)rec->version, (unsigned long long)rec->position);
        return 1;
    }
    return 0;
}

static int scan_file(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    struct scan *s = the_scan;
    const char *name = path + ftw->base;
    size_t len = strlen(name);
    if (flag != FTW_F || strstr(path, "/" LAYOUT_JOURNAL "/") || len < 5 ||
        strcmp(name + len - 4, ".log") != 0)
        return 0;
    int w;
    char tail;
    if (sscanf(name, "cc%d.lo%c", &w, &tail) != 2 || w < 0 || w >= WALLETS) {
        harness_fail_once(s->err, sizeof s->err, "a log file the test never wrote to: %s", path);
        return 1;
    }
    s->wallet = w;
    s->files++;
    uint64_t before = s->records;
    struct evlog *log = NULL;
    struct evlog_open_info info;
    int rc = evlog_open(path, EVLOG_READONLY, scan_record, s, &log, &info);
    if (s->err[0])
        return 1;
    if (rc != 0) {
        harness_fail_once(s->err, sizeof s->err, "%s: evlog_open %d (%s) %s: versions not 1..N contiguous, or damaged", path,
                  rc, rc == -1 ? strerror(errno) : "", info.detail);
        return 1;
    }
    evlog_free(log);
    uint64_t n = s->records - before;
    if (info.truncated_bytes || n != s->expected[w]) {
        harness_fail_once(s->err, sizeof s->err, "%s holds versions 1..%llu (%lld torn bytes), but %llu distinct commands "
                  "were sent to that wallet", path, (unsigned long long)n,
                  (long long)info.truncated_bytes, (unsigned long long)s->expected[w]);
        return 1;
    }
    return 0;
}

/* --- the load ---------------------------------------------------------------------- */

struct shared {
    atomic_int stop;
};

struct client {
    struct shared *sh;
    int index;
    unsigned seed;
    long sent;                       /* commands 0..sent-1 */
    uint8_t wallet_of[MAX_PER_CLIENT];
    long parked[MAX_PER_CLIENT];     /* poison: sent again after cqrsd restarts */
    long n_parked;
    long unavailable, internal, other_retries, reconnects;
    char err[512];
};

static void command_id(int client, long n, char *buf, size_t len)
{
    snprintf(buf, len, "cc-t%d-%ld", client, n);
}

enum outcome { CMD_OK, CMD_PARKED, CMD_FAILED };

/* Sends command `n` until OK (bounded). `parking`: a poison REJECTED is
 * parked instead of failing. */
static enum outcome client_send(struct client *k, struct cqrs_client **c, long n, int parking,
                                const char *sock)
{
    char cid[48], wid[16];
    command_id(k->index, n, cid, sizeof cid);
    wallet_id(k->wallet_of[n], wid, sizeof wid);
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    uint8_t payload[16];
    size_t len = wallet__top_up__pack(&t, payload);
    for (int attempt = 0; attempt < RETRY_ATTEMPTS; attempt++) {
        if (!*c) {
            *c = cqrs_client_connect(sock);
            if (!*c) {
                harness_sleep_ms(20);
                continue;
            }
            cqrs_client_set_retries(*c, 0);
            k->reconnects++;
        }
        Cqrs__Reply *r = NULL;
        if (cqrs_client_command(*c, "wallet", wid, "TopUp", payload, len, cid, -1, &r) < 0) {
            cqrs_client_free(*c);     /* the connection broke: a new one */
            *c = NULL;
            continue;
        }
        Cqrs__Status st = r->status;
        if (st == CQRS__STATUS__OK) {
            int good = r->n_events == 1 && r->events[0]->version == r->version &&
                       strcmp(r->events[0]->command_id, cid) == 0;
            if (!good)
                harness_fail_once(k->err, sizeof k->err, "%s to %s: OK with %zu events, not its one event", cid, wid,
                            r->n_events);
            cqrs__reply__free_unpacked(r, NULL);
            return good ? CMD_OK : CMD_FAILED;
        }
        if (st == CQRS__STATUS__REJECTED && strstr(r->error, "crashed the worker twice") &&
            parking) {
            cqrs__reply__free_unpacked(r, NULL);
            return CMD_PARKED;
        }
        if (st == CQRS__STATUS__UNAVAILABLE)
            k->unavailable++;
        else if (st == CQRS__STATUS__INTERNAL)
            k->internal++;
        else if (st == CQRS__STATUS__BUSY)
            k->other_retries++;
        else {
            harness_fail_once(k->err, sizeof k->err, "%s to %s: %s (%s)", cid, wid, cqrs_status_name(st), r->error);
            cqrs__reply__free_unpacked(r, NULL);
            return CMD_FAILED;
        }
        cqrs__reply__free_unpacked(r, NULL);
        harness_sleep_ms(5 + rand_r(&k->seed) % 16);
    }
    harness_fail_once(k->err, sizeof k->err, "%s to %s: still not OK after %d attempts", cid, wid, RETRY_ATTEMPTS);
    return CMD_FAILED;
}

static void *client_run(void *arg)
{
    struct client *k = arg;
    struct cqrs_client *c = NULL;
    while (!atomic_load(&k->sh->stop) && k->sent < MAX_PER_CLIENT && !k->err[0]) {
        long n = k->sent++;
        k->wallet_of[n] = (uint8_t)(rand_r(&k->seed) % WALLETS);
        enum outcome o = client_send(k, &c, n, 1, d.sock);
        if (o == CMD_PARKED)
            k->parked[k->n_parked++] = n;
        else if (o == CMD_FAILED)
            break;
        struct timespec ts = { 0, THINK_US * 1000L };
        nanosleep(&ts, NULL);
    }
    cqrs_client_free(c);
    return NULL;
}

struct killer {
    unsigned seed;
    int kills, during_recovery;
    char err[512];
};

/* Polls STATUS until the wallet worker has a pid other than `old` (and, when
 * `running`, is running). 0 and its pid, or -1. */
static int wait_worker(pid_t old, int running, pid_t *pid)
{
    int64_t deadline = harness_ms() + RESTART_MS;
    while (harness_ms() < deadline) {
        struct child_status s;
        if (daemon_child_try(&d, "wallet", &s) == 0 && s.pid > 0 && s.pid != old &&
            (!running || strcmp(s.state, "running") == 0)) {
            *pid = s.pid;
            return 0;
        }
        harness_sleep_ms(2);
    }
    return -1;
}

static void *killer_run(void *arg)
{
    struct killer *k = arg;
    int total = MIN_KILLS + (int)(rand_r(&k->seed) % (MAX_KILLS - MIN_KILLS + 1));
    pid_t pid = 0, old;
    if (wait_worker(0, 1, &pid) < 0) {
        snprintf(k->err, sizeof k->err, "the wallet worker is not running");
        return NULL;
    }
    harness_sleep_ms(50);          /* let the load start */
    for (int i = 0; i < total; i++) {
        if (kill(pid, SIGKILL) < 0) {
            snprintf(k->err, sizeof k->err, "kill %d: %s", (int)pid, strerror(errno));
            return NULL;
        }
        k->kills++;
        old = pid;
        int at_once = i % 3 == 2 && i + 1 < total;
        if (wait_worker(old, !at_once, &pid) < 0) {
            snprintf(k->err, sizeof k->err, "kill %d: the wallet worker did not come back "
                     "within %d ms", i + 1, RESTART_MS);
            return NULL;
        }
        if (at_once) {
            k->during_recovery++;
            continue;              /* the next kill hits it straight away */
        }
        harness_sleep_ms(5 + (long)(rand_r(&k->seed) % 96));
    }
    return NULL;   /* the last kill was waited for: the worker runs again */
}

static void kills_under_load(const char *conf)
{
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    cr_log_info("seed %u", seed);
    daemon_start_conf(&d, conf, NULL);

    struct shared sh;
    atomic_init(&sh.stop, 0);
    struct client *cl = calloc(CLIENTS, sizeof *cl);
    cr_assert(cl, "out of memory");
    pthread_t th[CLIENTS], kt;
    for (int i = 0; i < CLIENTS; i++) {
        cl[i].sh = &sh;
        cl[i].index = i;
        cl[i].seed = seed + (unsigned)i * 7919u;
        cr_assert(pthread_create(&th[i], NULL, client_run, &cl[i]) == 0, "pthread_create");
    }
    struct killer k = { .seed = seed ^ 0x5a5a5a5au };
    cr_assert(pthread_create(&kt, NULL, killer_run, &k) == 0, "pthread_create");
    pthread_join(kt, NULL);
    harness_sleep_ms(200);         /* a little load on the last worker */
    atomic_store(&sh.stop, 1);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(th[i], NULL);

    long sent = 0, parked = 0, unavailable = 0, internal = 0;
    for (int i = 0; i < CLIENTS; i++) {
        cr_assert(!cl[i].err[0], "client %d: %s", i, cl[i].err);
        sent += cl[i].sent;
        parked += cl[i].n_parked;
        unavailable += cl[i].unavailable;
        internal += cl[i].internal;
    }
    cr_assert(!k.err[0], "killer: %s (after %d kills)", k.err, k.kills);
    cr_assert(k.kills >= MIN_KILLS, "only %d kills", k.kills);
    cr_log_info("%d kills (%d of them during the next worker's start); %ld commands, %ld "
                "UNAVAILABLE and %ld INTERNAL replies retried, %ld parked as poison", k.kills,
                k.during_recovery, sent, unavailable, internal, parked);
    cr_assert(unavailable > 0, "no command was ever answered UNAVAILABLE: the kills hit nothing "
              "in flight, and the test proved little");
    {
        char *log = daemon_log(&d);
        int adopted = 0;
        for (const char *p = log; (p = strstr(p, "standby worker adopted")) != NULL; p++)
            adopted++;
        cr_log_info("restarts that adopted a standby worker (cqrsd.log): %d", adopted);
        free(log);
    }

    /* cqrsd must start again on this data dir */
    finish();
    daemon_restart(&d);
    for (int i = 0; i < CLIENTS; i++) {
        struct cqrs_client *c = NULL;
        for (long j = 0; j < cl[i].n_parked; j++)
            client_send(&cl[i], &c, cl[i].parked[j], 0, d.sock);
        cqrs_client_free(c);
        cr_assert(!cl[i].err[0], "client %d, a parked command after the restart: %s", i,
                  cl[i].err);
    }

    struct scan s;
    memset(&s, 0, sizeof s);
    s.expected = calloc(WALLETS, sizeof *s.expected);
    cr_assert(s.expected, "out of memory");
    for (int i = 0; i < CLIENTS; i++) {
        s.sent[i] = cl[i].sent;
        s.wallet_of[i] = cl[i].wallet_of;
        s.cmd_seen[i] = calloc((size_t)cl[i].sent + 1, 1);
        cr_assert(s.cmd_seen[i], "out of memory");
        for (long n = 0; n < cl[i].sent; n++)
            s.expected[cl[i].wallet_of[n]]++;
    }
    s.total = (uint64_t)sent;

    struct cqrs_client *c = daemon_connect(&d);
    for (int w = 0; w < WALLETS; w++) {
        char id[16];
        wallet_id(w, id, sizeof id);
        Cqrs__Reply *r = NULL;
        cr_assert(cqrs_client_state(c, "wallet", id, &r) == 0, "STATE: %s", strerror(errno));
        if (s.expected[w] == 0) {
            cr_assert_eq(r->status, CQRS__STATUS__NOT_FOUND, "STATE %s: %s, but nothing was "
                         "sent to it", id, cqrs_status_name(r->status));
            cqrs__reply__free_unpacked(r, NULL);
            continue;
        }
        cr_assert_eq(r->status, CQRS__STATUS__OK, "STATE %s: %s (%s)", id,
                     cqrs_status_name(r->status), r->error);
        Wallet__WalletState *ws = wallet__wallet_state__unpack(NULL, r->state.len,
                                                               r->state.data);
        cr_assert(ws, "STATE does not decode");
        cr_assert(ws->balance == (int64_t)s.expected[w] && r->version == s.expected[w],
                  "%s: balance %lld at version %llu, but %llu distinct TopUps of 1 were sent to "
                  "it", id, (long long)ws->balance, (unsigned long long)r->version,
                  (unsigned long long)s.expected[w]);
        wallet__wallet_state__free_unpacked(ws, NULL);
        cqrs__reply__free_unpacked(r, NULL);
    }
    cqrs_client_free(c);
    finish();

    s.position_seen = calloc(s.total + 1, 1);
    cr_assert(s.position_seen, "out of memory");
    the_scan = &s;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/wallet", d.data);
    int rc = nftw(dir, scan_file, 16, FTW_PHYS);
    cr_assert(!s.err[0], "%s", s.err);
    cr_assert(rc == 0, "reading the logs under %s: %s", dir, strerror(errno));
    cr_assert_eq(s.records, s.total, "the logs hold %llu events, but %llu distinct commands were "
                 "sent", (unsigned long long)s.records, (unsigned long long)s.total);
    for (uint64_t p = 1; p <= s.total; p++)
        cr_assert(s.position_seen[p], "no event has position %llu (positions 1..%llu expected)",
                  (unsigned long long)p, (unsigned long long)s.total);
    for (int i = 0; i < CLIENTS; i++) {
        for (long n = 0; n < cl[i].sent; n++) {
            char cid[48];
            command_id(i, n, cid, sizeof cid);
            cr_assert(s.cmd_seen[i][n] == 1, "command %s is in no log", cid);
        }
        free(s.cmd_seen[i]);
    }
    free(s.position_seen);
    free(s.expected);
    free(cl);
}

/* --- the tests ------------------------------------------------------------------------ */

/* Positions of the events of every wallet log under the data dir. */
struct positions {
    uint64_t seen[64];
    size_t n;
};

static int positions_cb(void *arg, const Cqrs__EventRecord *rec, off_t offset, size_t size)
{
    (void)offset; (void)size;
    struct positions *p = arg;
    if (p->n < 64)
        p->seen[p->n] = rec->position;
    p->n++;
    return 0;
}

static void wallet_log_positions(const char *id, struct positions *p)
{
    char type_dir[PATH_MAX], path[PATH_MAX];
    snprintf(type_dir, sizeof type_dir, "%s/wallet", d.data);
    layout_stream_file(path, sizeof path, type_dir, id, ".log");
    struct evlog *log = NULL;
    struct evlog_open_info info;
    int rc = evlog_open(path, EVLOG_READONLY, positions_cb, p, &log, &info);
    cr_assert(rc == 0, "evlog_open %s: %d %s", path, rc, info.detail);
    evlog_free(log);
}

static uint64_t topup_position(struct cqrs_client *c, const char *id, uint64_t version)
{
    Wallet__TopUp t = WALLET__TOP_UP__INIT;
    t.amount = 1;
    Cqrs__Reply *r = send_cmd(c, "wallet", id, &t.base, NULL, -1);
    cr_assert_eq(r->status, CQRS__STATUS__OK, "TopUp %s: %s (%s)", id,
                 cqrs_status_name(r->status), r->error);
    cr_assert(r->version == version && r->n_events == 1, "TopUp %s: version %llu, expected %llu",
              id, (unsigned long long)r->version, (unsigned long long)version);
    uint64_t p = r->events[0]->position;
    cqrs__reply__free_unpacked(r, NULL);
    return p;
}

Test(crash_consistency, the_worker_after_a_kill_goes_on_with_the_journal)
{
    daemon_start_conf(&d, CONF_STANDBY, NULL);
    /* the spare worker is up: cqrsd, the worker and the spare in its group */
    int64_t deadline = harness_ms() + STANDBY_READY_MS;
    int n;
    while ((n = pgrp_alive(d.pid, NULL)) < 3 && harness_ms() < deadline)
        harness_sleep_ms(10);
    cr_assert(n >= 3, "standby = true, but cqrsd's process group holds %d processes after %d ms "
              "(cqrsd, the wallet worker and its spare expected)", n, STANDBY_READY_MS);
    struct cqrs_client *c = daemon_connect(&d);
    for (uint64_t v = 1; v <= 3; v++) {
        uint64_t p = topup_position(c, "before", v);
        cr_assert_eq(p, v, "event %llu got position %llu", (unsigned long long)v,
                     (unsigned long long)p);
    }
    cqrs_client_free(c);
    pid_t old = daemon_child_pid(&d, "wallet");
    cr_assert(kill(old, SIGKILL) == 0, "kill: %s", strerror(errno));
    struct child_status s = daemon_wait_new_pid(&d, "wallet", old, RESTART_MS);
    c = daemon_connect(&d);
    uint64_t p = topup_position(c, "after", 1);
    cr_assert_eq(p, 4, "the first event after the kill (the restarted worker: \"%s\", pid %d) "
                 "got position %llu, but the journal already held positions 1..3",
                 s.last_exit, (int)s.pid, (unsigned long long)p);
    cqrs_client_free(c);
    finish();

    daemon_restart(&d);       /* the journal must still be readable */
    c = daemon_connect(&d);
    uint64_t q = topup_position(c, "after", 2);
    cr_assert_eq(q, 5, "after a restart of cqrsd the next event got position %llu, expected 5",
                 (unsigned long long)q);
    cqrs_client_free(c);
    finish();
    struct positions a = { .n = 0 }, b = { .n = 0 };
    wallet_log_positions("before", &a);
    wallet_log_positions("after", &b);
    cr_assert(a.n == 3 && b.n == 2 && a.seen[0] == 1 && a.seen[1] == 2 && a.seen[2] == 3 &&
              b.seen[0] == 4 && b.seen[1] == 5,
              "positions in the logs: before %llu %llu %llu, after %llu %llu; expected 1 2 3 "
              "and 4 5", (unsigned long long)a.seen[0], (unsigned long long)a.seen[1],
              (unsigned long long)a.seen[2], (unsigned long long)b.seen[0],
              (unsigned long long)b.seen[1]);
}

Test(crash_consistency, random_kills_under_load_lose_and_double_nothing_with_standby)
{
    kills_under_load(CONF_STANDBY);
}

Test(crash_consistency, random_kills_under_load_lose_and_double_nothing_without_standby)
{
    kills_under_load(CONF_NO_STANDBY);
}
